//! Plan: match firing findings against policies (CEL), resolve conflicts, pass the gates, sign remediations.

pub mod facts;
pub mod gates;
pub mod policy;

use petgraph::graphmap::DiGraphMap;
use petgraph::visit::{Bfs, Reversed};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::keys::KeyPair;
use crate::knowledge::audit::{self, NewEntry};
use crate::knowledge::findings::{self, Finding, PlanState};
use crate::knowledge::remediations::{self, Remediation, Status};
use crate::knowledge::{Store, StoreError};
use crate::model::Subject;
use crate::registry::{Registry, RegistryError};
use policy::{Policy, PolicySet};

const POLICY_DIGEST: &str = "plan.policy_digest";

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// A condition that failed at run time (counted as false).
#[derive(Debug, Clone)]
pub struct EvalError {
    pub policy: String,
    pub finding: String,
    pub reason: String,
}

#[derive(Debug, Default)]
pub struct PlanOutput {
    /// Every remediation recorded this cycle, whatever its status.
    pub remediations: Vec<Remediation>,
    pub unmatched: usize,
    pub eval_errors: Vec<EvalError>,
}

/// The number of packages that depend on each package directly, and transitively.
pub struct DependencyGraph {
    graph: DiGraphMap<u32, ()>,
    ids: HashMap<String, u32>,
}

impl DependencyGraph {
    pub fn build(edges: &[(String, String)]) -> Self {
        let mut ids = HashMap::new();
        let mut graph = DiGraphMap::new();
        for (from, to) in edges {
            let n = ids.len() as u32;
            let a = *ids.entry(from.clone()).or_insert(n);
            let n = ids.len() as u32;
            let b = *ids.entry(to.clone()).or_insert(n);
            graph.add_edge(a, b, ());
        }
        Self { graph, ids }
    }

    /// (direct, transitive) dependents of `package`.
    pub fn dependents(&self, package: &str) -> (i64, i64) {
        let Some(&node) = self.ids.get(package) else {
            return (0, 0);
        };
        let direct = self
            .graph
            .neighbors_directed(node, petgraph::Direction::Incoming)
            .count() as i64;
        let reversed = Reversed(&self.graph);
        let mut bfs = Bfs::new(reversed, node);
        let mut transitive = -1; // the start node itself
        while bfs.next(reversed).is_some() {
            transitive += 1;
        }
        (direct, transitive.max(0))
    }
}

/// A candidate: one policy matched one finding.
struct Match<'p> {
    policy: &'p Policy,
    finding: Finding,
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

/// One planning pass over the firing findings not yet planned.
pub async fn cycle<R: Registry>(
    store: &Store,
    registry: &Arc<R>,
    policies: &PolicySet,
    key: &KeyPair,
    daemon_dry_run: bool,
    now: i64,
) -> Result<PlanOutput, PlanError> {
    if store.cursor(POLICY_DIGEST).await?.as_deref() != Some(policies.digest.as_str()) {
        store.replan_unmatched().await?;
        store.set_cursor(POLICY_DIGEST, &policies.digest).await?;
    }
    let candidates = store.unplanned_findings().await?;
    let mut out = PlanOutput::default();
    if candidates.is_empty() {
        return Ok(out);
    }
    let counts = registry.counts().await?;
    let graph = DependencyGraph::build(&registry.dependency_edges().await?);

    // Match every candidate against every policy, grouped by subject.
    let mut by_subject: BTreeMap<Subject, Vec<Match<'_>>> = BTreeMap::new();
    let mut unmatched = Vec::new();
    for finding in candidates {
        let package = registry.package(&finding.subject.package).await?;
        let release = match &finding.subject.version {
            Some(v) => registry.release(&finding.subject.package, v).await?,
            None => None,
        };
        let (dependents, transitive_dependents) = graph.dependents(&finding.subject.package);
        let facts = facts::Facts {
            finding: &finding,
            package: package.as_ref(),
            release: release.as_ref(),
            dependents,
            transitive_dependents,
            registry: counts,
            now,
        };
        let mut matched = Vec::new();
        for p in &policies.policies {
            if !p.on.contains(&finding.kind) {
                continue;
            }
            let ok = match &p.program {
                None => true,
                Some(program) => match facts::evaluate(&policies.env, program, &facts) {
                    Ok(b) => b,
                    Err(reason) => {
                        out.eval_errors.push(EvalError {
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
        if matched.is_empty() {
            unmatched.push(finding);
        } else {
            for p in matched {
                by_subject
                    .entry(finding.subject.clone())
                    .or_default()
                    .push(Match {
                        policy: p,
                        finding: finding.clone(),
                    });
            }
        }
    }

    let mut tx = store.begin().await?;
    for f in &unmatched {
        findings::set_plan_state(&mut tx, &f.id, PlanState::Unmatched).await?;
    }
    out.unmatched = unmatched.len();
    for (subject, mut matches) in by_subject {
        // Highest priority wins; on a tie the more severe action; then the policy id, for determinism.
        matches.sort_by(|a, b| {
            b.policy
                .priority
                .cmp(&a.policy.priority)
                .then(
                    b.policy
                        .action
                        .severity_rank()
                        .cmp(&a.policy.action.severity_rank()),
                )
                .then(a.policy.id.cmp(&b.policy.id))
                .then(a.finding.id.cmp(&b.finding.id))
        });
        let winner = matches[0].policy.id.clone();
        for (i, m) in matches.iter().enumerate() {
            let (status, reason) = if i == 0 {
                let input = gates::GateInput {
                    policy: m.policy,
                    daemon_dry_run,
                };
                let (status, reason, _) = gates::decide(&input);
                (status, reason)
            } else {
                (
                    Status::Superseded,
                    format!("superseded by policy `{winner}` on {subject}"),
                )
            };
            let key_hex = idempotency_key(m.policy, &subject, &m.finding.id);
            let mut r = Remediation {
                id: format!("rem-{}", &key_hex[..16]),
                idempotency_key: key_hex,
                finding_id: Some(m.finding.id.clone()),
                policy: m.policy.id.clone(),
                action: m.policy.action,
                params: m.policy.params.clone(),
                subject: subject.clone(),
                mode: m.policy.mode.as_str().into(),
                status,
                reason,
                created_at: now,
                updated_at: now,
                signature: String::new(),
                inverse: None,
            };
            r.signature = key.sign(&r.signing_bytes());
            if remediations::insert(&mut tx, &r).await? {
                if status == Status::DryRun {
                    audit::append(
                        &mut tx,
                        key,
                        NewEntry {
                            at: now,
                            kind: "remediation.dry_run".into(),
                            actor: "daemon".into(),
                            subject: subject.to_string(),
                            remediation_id: Some(r.id.clone()),
                            detail: serde_json::json!({
                                "policy": r.policy,
                                "action": r.action.as_str(),
                                "finding": r.finding_id,
                                "reason": r.reason,
                            }),
                        },
                    )
                    .await?;
                }
                out.remediations.push(r);
            }
            findings::set_plan_state(&mut tx, &m.finding.id, PlanState::Planned).await?;
        }
    }
    tx.commit().await.map_err(StoreError::from)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::DependencyGraph;

    #[test]
    fn transitive_dependents_count_every_package_upstream_once() {
        // c -> b -> a, d -> a, e -> c
        let edges: Vec<(String, String)> = [("b", "a"), ("c", "b"), ("d", "a"), ("e", "c")]
            .iter()
            .map(|(x, y)| (x.to_string(), y.to_string()))
            .collect();
        let g = DependencyGraph::build(&edges);
        assert_eq!(g.dependents("a"), (2, 4));
        assert_eq!(g.dependents("c"), (1, 1));
        assert_eq!(g.dependents("e"), (0, 0));
        assert_eq!(g.dependents("missing"), (0, 0));
    }
}
