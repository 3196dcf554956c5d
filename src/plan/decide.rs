//! The pure core of planning: findings with their facts in, decisions out (matching, conflicts, gates).

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

use super::facts::{self, Facts};
use super::gates::{Approvals, GateInput, Gatekeeper, Verdict};
use super::policy::{Policy, PolicySet};
use super::EvalError;
use crate::knowledge::findings::Finding;
use crate::knowledge::remediations::Status;
use crate::model::{Action, Subject};
use crate::registry::{PackageRecord, RegistryCounts, ReleaseRecord};

/// A firing finding with the registry facts its conditions may read.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub finding: Finding,
    pub package: Option<PackageRecord>,
    pub release: Option<ReleaseRecord>,
    pub dependents: i64,
    pub transitive_dependents: i64,
}

/// One policy's remediation of one finding, with what the gates said.
#[derive(Debug, Clone)]
pub struct Decision {
    pub finding_id: String,
    pub idempotency_key: String,
    pub policy: String,
    pub action: Action,
    pub params: serde_json::Value,
    pub subject: Subject,
    pub mode: &'static str,
    pub verdict: Verdict,
}

#[derive(Debug, Default)]
pub struct Decided {
    pub decisions: Vec<Decision>,
    /// Findings that no policy matched.
    pub unmatched: Vec<String>,
    pub eval_errors: Vec<EvalError>,
}

fn idempotency_key(policy: &Policy, subject: &Subject, finding_id: &str) -> String {
    let mut h = Sha256::new();
    for part in [
        policy.id.as_str(),
        policy.action.as_str(),
        &subject.to_string(),
        finding_id,
    ] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    hex::encode(h.finalize())
}

/// The enabled policies whose `on` and `when` match these facts; conditions that fail at run
/// time count as false and are returned as errors.
pub fn matching<'p>(policies: &'p PolicySet, f: &Facts<'_>) -> (Vec<&'p Policy>, Vec<EvalError>) {
    matching_with(policies, f.finding, || {
        facts::context_for(&policies.env, f, &policies.uses)
    })
}

/// [`matching`] with the evaluation context built by the caller, only if a condition needs it.
pub fn matching_with<'p, 'v>(
    policies: &'p PolicySet,
    finding: &Finding,
    context: impl FnOnce() -> cel::Context<'v, 'v>,
) -> (Vec<&'p Policy>, Vec<EvalError>) {
    let mut matched = Vec::new();
    let mut errors = Vec::new();
    let mut ctx = None;
    let mut context = Some(context);
    for p in &policies.policies {
        if !p.enabled || !p.on.contains(&finding.kind) {
            continue;
        }
        let ok = match &p.program {
            None => true,
            Some(program) => match facts::run(
                program,
                ctx.get_or_insert_with(|| match context.take() {
                    Some(make) => make(),
                    None => cel::Context::default(),
                }),
            ) {
                Ok(b) => b,
                Err(reason) => {
                    errors.push(EvalError {
                        policy: p.id.clone(),
                        finding: finding.id.clone(),
                        reason,
                    });
                    false
                }
            },
        };
        if ok {
            matched.push(p);
        }
    }
    (matched, errors)
}

/// The spec's conflict rule: highest priority first; on a tie the more severe action; then the
/// policy id, for determinism. The first after sorting wins.
pub fn rank(policies: &mut [(&Policy, &Finding)]) {
    policies.sort_by(|(a, fa), (b, fb)| {
        b.priority
            .cmp(&a.priority)
            .then(b.action.severity_rank().cmp(&a.action.severity_rank()))
            .then(a.id.cmp(&b.id))
            .then(fa.id.cmp(&fb.id))
    });
}

/// Decides every candidate: match, group by subject, rank, and put the winner through the gates.
pub fn decide(
    policies: &PolicySet,
    candidates: &[Candidate],
    counts: RegistryCounts,
    keeper: &mut Gatekeeper<'_>,
    now: i64,
) -> Decided {
    let mut out = Decided::default();
    let mut by_subject: BTreeMap<&Subject, Vec<(&Policy, &Finding)>> = BTreeMap::new();
    for c in candidates {
        let f = Facts {
            finding: &c.finding,
            package: c.package.as_ref(),
            release: c.release.as_ref(),
            dependents: c.dependents,
            transitive_dependents: c.transitive_dependents,
            registry: counts,
            now,
        };
        let (matched, mut errors) = matching(policies, &f);
        out.eval_errors.append(&mut errors);
        if matched.is_empty() {
            out.unmatched.push(c.finding.id.clone());
        }
        for p in matched {
            by_subject
                .entry(&c.finding.subject)
                .or_default()
                .push((p, &c.finding));
        }
    }
    let radius: BTreeMap<&str, i64> = candidates
        .iter()
        .map(|c| (c.finding.subject.package.as_str(), c.transitive_dependents))
        .collect();
    let none = Approvals::default();
    for (subject, mut matches) in by_subject {
        rank(&mut matches);
        let winner = matches[0].0.id.clone();
        for (i, (p, finding)) in matches.into_iter().enumerate() {
            let verdict = if i == 0 {
                keeper.decide(&GateInput {
                    policy: p,
                    subject,
                    radius: radius.get(subject.package.as_str()).copied().unwrap_or(0),
                    approvals: &none,
                    created_at: now,
                    now,
                })
            } else {
                Verdict {
                    status: Status::Superseded,
                    gate: None,
                    reason: format!("superseded by policy `{winner}` on {subject}"),
                    expires_at: None,
                }
            };
            out.decisions.push(Decision {
                finding_id: finding.id.clone(),
                idempotency_key: idempotency_key(p, subject, &finding.id),
                policy: p.id.clone(),
                action: p.action,
                params: p.params.clone(),
                subject: subject.clone(),
                mode: p.mode.as_str(),
                verdict,
            });
        }
    }
    out
}
