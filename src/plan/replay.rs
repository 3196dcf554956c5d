//! Replay (backtesting): a proposed policy set run over the findings that fired in a period, each of its decisions set beside what the daemon actually did.
//!
//! Each finding is judged as it was recorded (kind, severity, value, labels, subject) at the
//! time it fired (so conditions on its age read as they did then), against the registry's
//! package and release records and dependency graph as they are now: the registry keeps no
//! history of its records. The gates that depend on the order of events (rate limits,
//! cooldowns, windows, the circuit) are not replayed; a policy's `mode` is.

use std::collections::HashMap;

use super::decide::{matching, rank, Candidate};
use super::policy::PolicySet;
use super::{DependencyGraph, EvalError, PlanError};
use crate::knowledge::findings::Finding;
use crate::knowledge::remediations::{Remediation, Status};
use crate::knowledge::Store;
use crate::model::{Action, Gate, Mode};
use crate::registry::Registry;

/// What the daemon did about a finding: its (first, not superseded) remediation.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Actual {
    pub id: String,
    pub policy: String,
    pub action: Action,
    pub status: Status,
    pub gate: Option<Gate>,
}

/// What the proposed set would do.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Proposed {
    pub policy: String,
    pub action: Action,
    pub mode: Mode,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Line {
    pub finding: String,
    pub kind: String,
    pub subject: String,
    pub fired_at: i64,
    pub actual: Option<Actual>,
    pub proposed: Option<Proposed>,
    /// Why the two differ; None when they agree.
    pub differs: Option<String>,
}

#[derive(Debug, Default)]
pub struct Replay {
    pub lines: Vec<Line>,
    pub eval_errors: Vec<EvalError>,
}

impl Replay {
    pub fn differing(&self) -> impl Iterator<Item = &Line> {
        self.lines.iter().filter(|l| l.differs.is_some())
    }
}

/// How a recorded remediation acted, in the terms of a policy's mode; None when a gate stopped
/// it before its mode could show.
fn acted_as(r: &Actual) -> Option<Mode> {
    match r.status {
        Status::DryRun => Some(Mode::DryRun),
        Status::Pending if r.gate == Some(Gate::Approval) => Some(Mode::Approve),
        Status::Expired => Some(Mode::Approve),
        Status::Suppressed | Status::Pending | Status::Superseded => None,
        _ => Some(Mode::Enforce),
    }
}

fn compare(actual: &Option<Actual>, proposed: &Option<Proposed>) -> Option<String> {
    match (actual, proposed) {
        (None, None) => None,
        (None, Some(p)) => Some(format!("would act: {} by `{}`", p.action, p.policy)),
        (Some(a), None) => Some(format!(
            "would not act (no policy matches); did {} by `{}`",
            a.action, a.policy
        )),
        (Some(a), Some(p)) if a.policy != p.policy || a.action != p.action => Some(format!(
            "{} by `{}` instead of {} by `{}`",
            p.action, p.policy, a.action, a.policy
        )),
        (Some(a), Some(p)) => {
            let did = acted_as(a)?;
            (did != p.mode).then(|| format!("mode {} instead of {did}", p.mode))
        }
    }
}

/// Replays `proposed` over the findings that fired at or after `since`.
pub async fn replay<R: Registry>(
    store: &Store,
    registry: &R,
    proposed: &PolicySet,
    since: i64,
) -> Result<Replay, PlanError> {
    let findings = store.fired_since(since).await?;
    let mut done: HashMap<String, Vec<Remediation>> = HashMap::new();
    for r in store.remediations_since(since).await? {
        if let Some(f) = r.finding_id.clone() {
            done.entry(f).or_default().push(r);
        }
    }
    let graph = DependencyGraph::build(&registry.dependency_edges().await?);
    let counts = registry.counts().await?;
    let mut out = Replay::default();
    for finding in findings {
        let actual = done.get(&finding.id).and_then(|list| {
            let first = list
                .iter()
                .filter(|r| r.status != Status::Superseded)
                .min_by_key(|r| r.attempt)
                .or_else(|| list.first())?;
            Some(Actual {
                id: first.id.clone(),
                policy: first.policy.clone(),
                action: first.action,
                status: first.status,
                gate: first.gate,
            })
        });
        let proposed_for = decide_one(registry, &graph, counts, proposed, &finding).await?;
        out.eval_errors.extend(proposed_for.1);
        let proposed_for = proposed_for.0;
        out.lines.push(Line {
            finding: finding.id.clone(),
            kind: finding.kind.as_str().into(),
            subject: finding.subject.to_string(),
            fired_at: finding.fired_at.unwrap_or(finding.first_seen),
            differs: compare(&actual, &proposed_for),
            actual,
            proposed: proposed_for,
        });
    }
    Ok(out)
}

async fn decide_one<R: Registry>(
    registry: &R,
    graph: &DependencyGraph,
    counts: crate::registry::RegistryCounts,
    proposed: &PolicySet,
    finding: &Finding,
) -> Result<(Option<Proposed>, Vec<EvalError>), PlanError> {
    let name = finding.subject.package.clone();
    let release = match &finding.subject.version {
        Some(v) => registry.release(&name, v).await?,
        None => None,
    };
    let (dependents, transitive_dependents) = graph.dependents(&name);
    let candidate = Candidate {
        package: registry.package(&name).await?,
        release,
        dependents,
        transitive_dependents,
        handover: None,
        finding: finding.clone(),
    };
    let at = finding.fired_at.unwrap_or(finding.first_seen);
    let facts = candidate.facts(counts, at);
    let (matched, errors) = matching(proposed, &facts);
    let mut ranked: Vec<_> = matched.into_iter().map(|p| (p, finding)).collect();
    rank(&mut ranked);
    Ok((
        ranked.first().map(|(p, _)| Proposed {
            policy: p.id.clone(),
            action: p.action,
            mode: p.mode,
        }),
        errors,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn actual(policy: &str, action: &str, status: &str, gate: Option<&str>) -> Option<Actual> {
        Some(Actual {
            id: "rem-1".into(),
            policy: policy.into(),
            action: Action::parse(action).unwrap_or(Action::Notify),
            status: Status::parse(status).unwrap_or(Status::Failed),
            gate: gate.and_then(Gate::parse),
        })
    }

    fn proposed(policy: &str, action: &str, mode: &str) -> Option<Proposed> {
        Some(Proposed {
            policy: policy.into(),
            action: Action::parse(action).unwrap_or(Action::Notify),
            mode: Mode::parse(mode).unwrap_or(Mode::Enforce),
        })
    }

    #[test]
    fn decisions_differ_by_policy_action_or_mode_and_not_by_a_gate() {
        let q = actual("q", "quarantine", "executed", None);
        assert_eq!(compare(&q, &proposed("q", "quarantine", "enforce")), None);
        assert!(compare(&q, &proposed("y", "yank", "enforce"))
            .is_some_and(|w| w.contains("yank by `y` instead of quarantine by `q`")));
        assert!(compare(&q, &proposed("q", "quarantine", "dry_run"))
            .is_some_and(|w| w.contains("mode dry_run instead of enforce")));
        assert!(compare(&q, &None).is_some_and(|w| w.contains("would not act")));
        assert!(compare(&None, &proposed("q", "quarantine", "enforce"))
            .is_some_and(|w| w.contains("would act")));
        let waiting = actual("q", "quarantine", "pending", Some("approval"));
        assert_eq!(
            compare(&waiting, &proposed("q", "quarantine", "approve")),
            None
        );
        // A remediation a gate stopped says nothing about the mode.
        let gated = actual("q", "quarantine", "suppressed", Some("max_per_hour"));
        assert_eq!(
            compare(&gated, &proposed("q", "quarantine", "enforce")),
            None
        );
    }
}
