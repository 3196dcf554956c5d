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
    /// Set when verification handed the finding back for another attempt: only this policy
    /// acts on it, whatever its `on` and `when`.
    pub handover: Option<Handover>,
}

/// A finding handed to a policy after a failed verification: the same policy again (a retry)
/// or its `escalate_to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handover {
    pub policy: String,
    /// Attempts that policy already made on the finding.
    pub attempts: i64,
}

impl Candidate {
    /// The facts its conditions read, at `now`.
    pub fn facts(&self, registry: RegistryCounts, now: i64) -> Facts<'_> {
        Facts {
            finding: &self.finding,
            package: self.package.as_ref(),
            release: self.release.as_ref(),
            dependents: self.dependents,
            transitive_dependents: self.transitive_dependents,
            registry,
            now,
        }
    }
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
    pub mode: crate::model::Mode,
    pub verdict: Verdict,
    /// Which attempt of the policy on this finding it is (1 for the first).
    pub attempt: i64,
    pub verify_after_ms: Option<i64>,
}

#[derive(Debug, Default)]
pub struct Decided {
    pub decisions: Vec<Decision>,
    /// Findings that no policy matched.
    pub unmatched: Vec<String>,
    pub eval_errors: Vec<EvalError>,
}

fn idempotency_key(policy: &Policy, subject: &Subject, finding_id: &str, attempt: i64) -> String {
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
    // A first attempt keeps the key it always had; each retry is a remediation of its own.
    if attempt > 1 {
        h.update(attempt.to_string().as_bytes());
    }
    let mut out = [0u8; 64];
    // encode_to_slice cannot fail: 32 bytes always fit 64 hex digits.
    let _ = hex::encode_to_slice(h.finalize(), &mut out);
    out.iter().map(|&b| char::from(b)).collect()
}

/// The enabled policies whose `on` and `when` match these facts; conditions that fail at run
/// time count as false and are returned as errors.
pub fn matching<'p>(policies: &'p PolicySet, f: &Facts<'_>) -> (Vec<&'p Policy>, Vec<EvalError>) {
    let mut ctx = None;
    matching_in(policies, f.finding.kind, &f.finding.id, |program| {
        let ctx = ctx.get_or_insert_with(|| facts::context_for(&policies.env, f, &policies.uses));
        facts::run(program, ctx)
    })
}

/// The matching loop, with conditions run by `eval` (which prepares its context on first use).
pub fn matching_in<'p>(
    policies: &'p PolicySet,
    kind: crate::model::FindingKind,
    finding_id: &str,
    mut eval: impl FnMut(&cel::Program) -> Result<bool, String>,
) -> (Vec<&'p Policy>, Vec<EvalError>) {
    let mut matched = Vec::new();
    let mut errors = Vec::new();
    for p in &policies.policies {
        if !p.enabled || !p.on.contains(&kind) {
            continue;
        }
        let ok = match &p.program {
            None => true,
            Some(program) => eval(program).unwrap_or_else(|reason| {
                errors.push(EvalError {
                    policy: p.id.clone(),
                    finding: finding_id.to_string(),
                    reason,
                });
                false
            }),
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
    // Grouped by what each action works on: a yank of a release and a `restore_latest` of its
    // package do not compete, two actions on one package do.
    let mut by_subject: BTreeMap<Subject, Vec<(&Policy, &Candidate)>> = BTreeMap::new();
    // One evaluation context for the whole pass: each finding's facts replace the last ones.
    let mut ctx: Option<cel::Context<'_, '_>> = None;
    for c in candidates {
        if let Some(h) = &c.handover {
            match policies.get(&h.policy).filter(|p| p.enabled) {
                Some(p) => by_subject
                    .entry(p.action.target(&c.finding.subject))
                    .or_default()
                    .push((p, c)),
                None => out.unmatched.push(c.finding.id.clone()),
            }
            continue;
        }
        let f = c.facts(counts, now);
        let mut bound = false;
        let (matched, mut errors) =
            matching_in(policies, c.finding.kind, &c.finding.id, |program| {
                let ctx = ctx.get_or_insert_with(|| cel::Context::with_env(policies.env.clone()));
                if !bound {
                    facts::bind(ctx, &f, &policies.uses);
                    bound = true;
                }
                facts::run(program, ctx)
            });
        out.eval_errors.append(&mut errors);
        if matched.is_empty() {
            out.unmatched.push(c.finding.id.clone());
        }
        for p in matched {
            by_subject
                .entry(p.action.target(&c.finding.subject))
                .or_default()
                .push((p, c));
        }
    }
    let radius: BTreeMap<&str, i64> = candidates
        .iter()
        .map(|c| (c.finding.subject.package.as_str(), c.transitive_dependents))
        .collect();
    let none = Approvals::default();
    for (subject, matches) in by_subject {
        let mut ranked: Vec<(&Policy, &Finding)> =
            matches.iter().map(|(p, c)| (*p, &c.finding)).collect();
        rank(&mut ranked);
        let winner = ranked[0].0.id.clone();
        for (i, (p, finding)) in ranked.into_iter().enumerate() {
            let handover = matches
                .iter()
                .find(|(_, c)| c.finding.id == finding.id)
                .and_then(|(_, c)| c.handover.as_ref());
            let attempt = handover.map_or(1, |h| h.attempts + 1);
            let verdict = if i == 0 {
                keeper.decide(&GateInput {
                    policy: p,
                    subject: &subject,
                    radius: radius.get(subject.package.as_str()).copied().unwrap_or(0),
                    approvals: &none,
                    created_at: now,
                    now,
                    retry: attempt > 1,
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
                idempotency_key: idempotency_key(p, &subject, &finding.id, attempt),
                policy: p.id.clone(),
                action: p.action,
                params: p.params.clone(),
                subject: subject.clone(),
                mode: keeper.mode_of(p),
                verdict,
                attempt,
                verify_after_ms: p.verify_after_ms,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::gates::{Gatekeeper, Ledger};
    use crate::plan::guards::Guards;

    fn candidate(name: &str, downloads: i64, signed: Option<bool>) -> Candidate {
        use crate::plan::facts::{sample_finding, sample_package, sample_release};
        let subject = Subject {
            package: name.into(),
            version: signed.map(|_| "1.0.0".into()),
        };
        Candidate {
            finding: Finding {
                id: format!("f-{name}"),
                subject: subject.clone(),
                ..sample_finding()
            },
            package: Some(crate::registry::PackageRecord {
                name: name.into(),
                downloads,
                ..sample_package()
            }),
            release: signed.map(|s| ReleaseRecord {
                package: name.into(),
                signature: s.then(String::new),
                ..sample_release()
            }),
            dependents: 0,
            transitive_dependents: 0,
            handover: None,
        }
    }

    #[test]
    fn each_finding_is_judged_on_its_own_facts_in_one_pass() {
        let set = PolicySet::from_sources(&[(
            std::path::PathBuf::from("p.toml"),
            "[[policy]]\nid = \"q\"\non = \"checksum_mismatch\"\naction = \"quarantine\"\nmode = \"enforce\"\n\
             when = \"package.downloads > 100 && release != null && release.signed\"\n"
                .into(),
        )])
        .expect("loads");
        let cands = vec![
            candidate("a", 500, Some(true)),
            candidate("b", 5, Some(true)),
            candidate("c", 500, None),
            candidate("d", 500, Some(false)),
            candidate("e", 900, Some(true)),
        ];
        let guards = Guards::default();
        let mut keeper = Gatekeeper {
            guards: &guards,
            daemon_dry_run: false,
            ledger: Ledger::default(),
            circuit: Default::default(),
            demoted: Default::default(),
            registry_packages: 5,
            memo: Default::default(),
        };
        let out = decide(&set, &cands, RegistryCounts::default(), &mut keeper, 0);
        let planned: Vec<&str> = out
            .decisions
            .iter()
            .map(|d| d.subject.package.as_str())
            .collect();
        assert_eq!(planned, vec!["a", "e"]);
        assert_eq!(out.unmatched, vec!["f-b", "f-c", "f-d"]);
    }
}
