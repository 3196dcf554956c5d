//! The finding lifecycle: pending until the condition held for `for`, firing, resolved after `keep_firing_for` clear.

use super::Judgement;
use crate::knowledge::findings::{Finding, FindingState, PlanState};
use crate::model::{FindingKind, Severity, Subject};

/// How long a condition must hold before firing, and stay clear before resolving.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timing {
    pub for_ms: i64,
    pub keep_firing_for_ms: i64,
}

/// A condition that holds now on a subject.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    pub kind: FindingKind,
    pub severity: Severity,
    pub subject: Subject,
    pub value: f64,
    pub message: String,
    pub labels: serde_json::Map<String, serde_json::Value>,
}

/// What happened to a finding in one step. `Opened` is a new row (pending, or firing at once
/// when its `for` is zero); `Fired` is an existing pending finding that started firing.
#[derive(Debug, Clone, PartialEq)]
pub enum Transition {
    Opened(Finding),
    Fired(Finding),
    Updated(Finding),
    Resolved(Finding),
}

/// A new finding for a condition seen for the first time.
pub fn open(c: Condition, timing: Timing, now: i64) -> Transition {
    let fingerprint = Finding::fingerprint_of(c.kind, &c.subject);
    let firing = timing.for_ms <= 0;
    let f = Finding {
        id: format!("{fingerprint}#{now}"),
        fingerprint,
        kind: c.kind,
        severity: c.severity,
        subject: c.subject,
        state: if firing {
            FindingState::Firing
        } else {
            FindingState::Pending
        },
        value: c.value,
        message: c.message,
        labels: c.labels,
        first_seen: now,
        fired_at: firing.then_some(now),
        last_seen: now,
        cleared_at: None,
        resolved_at: None,
        plan_state: PlanState::New,
    };
    Transition::Opened(f)
}

/// The condition still holds on an open finding.
pub fn holds(mut f: Finding, c: Condition, timing: Timing, now: i64) -> Transition {
    f.last_seen = now;
    f.cleared_at = None;
    if f.state == FindingState::Firing && c.severity > f.severity {
        // Worse than when the planner last looked (a second malware reporter, a faster burn):
        // it looks again, and policies that want the higher severity can now match.
        f.plan_state = PlanState::New;
    }
    f.severity = c.severity;
    f.value = c.value;
    f.message = c.message;
    f.labels = c.labels;
    if f.state == FindingState::Pending && now - f.first_seen >= timing.for_ms {
        f.state = FindingState::Firing;
        f.fired_at = Some(now);
        return Transition::Fired(f);
    }
    Transition::Updated(f)
}

/// The condition no longer holds on an open finding.
pub fn clears(mut f: Finding, timing: Timing, now: i64) -> Transition {
    if f.state == FindingState::Pending {
        f.state = FindingState::Resolved;
        f.resolved_at = Some(now);
        return Transition::Resolved(f);
    }
    let since = *f.cleared_at.get_or_insert(now);
    if now - since >= timing.keep_firing_for_ms {
        f.state = FindingState::Resolved;
        f.resolved_at = Some(now);
        return Transition::Resolved(f);
    }
    Transition::Updated(f)
}

/// Time alone moves an open finding that was not observed this cycle: a pending one whose
/// condition was last seen holding fires after `for`; a cleared one resolves after
/// `keep_firing_for`.
pub fn tick(f: &Finding, timing: Timing, now: i64) -> Option<Transition> {
    match (f.state, f.cleared_at) {
        (FindingState::Firing, Some(since)) if now - since >= timing.keep_firing_for_ms => {
            let mut f = f.clone();
            f.state = FindingState::Resolved;
            f.resolved_at = Some(now);
            Some(Transition::Resolved(f))
        }
        (FindingState::Pending, None) if now - f.first_seen >= timing.for_ms => {
            let mut f = f.clone();
            f.state = FindingState::Firing;
            f.fired_at = Some(now);
            Some(Transition::Fired(f))
        }
        _ => None,
    }
}

/// A finding whose only change is `last_seen` is written at most this often.
const LAST_SEEN_REFRESH_MS: i64 = 10 * 60_000;

/// One finding's step: `Some(Some(c))` holds, `Some(None)` is clear, `None` cannot tell. An
/// update that changes nothing but `last_seen` is written only every few minutes, and marked as
/// such a refresh (`true`).
pub fn judge(
    existing: Option<Finding>,
    judgement: Judgement,
    timing: Timing,
    now: i64,
) -> Option<(Transition, bool)> {
    match (existing, judgement) {
        (Some(f), Some(Some(c))) => {
            let before = f.clone();
            match holds(f, c, timing, now) {
                Transition::Updated(after)
                    if Finding {
                        last_seen: before.last_seen,
                        ..after.clone()
                    } == before =>
                {
                    (now - before.last_seen >= LAST_SEEN_REFRESH_MS)
                        .then_some((Transition::Updated(after), true))
                }
                t => Some((t, false)),
            }
        }
        (None, Some(Some(c))) => Some((open(c, timing, now), false)),
        (Some(f), Some(None)) => {
            let before = f.clone();
            match clears(f, timing, now) {
                Transition::Updated(after) if after == before => None,
                t => Some((t, false)),
            }
        }
        // Cannot tell: the finding stays as it is.
        (Some(_), None) | (None, _) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cond() -> Condition {
        Condition {
            kind: FindingKind::ChecksumMismatch,
            severity: Severity::Critical,
            subject: Subject {
                package: "p".into(),
                version: Some("1.0.0".into()),
            },
            value: 1.0,
            message: "m".into(),
            labels: Default::default(),
        }
    }

    fn finding(t: Transition) -> Finding {
        match t {
            Transition::Opened(f)
            | Transition::Fired(f)
            | Transition::Updated(f)
            | Transition::Resolved(f) => f,
        }
    }

    #[test]
    fn a_condition_fires_only_after_it_held_for_its_for_period() {
        let timing = Timing {
            for_ms: 60_000,
            keep_firing_for_ms: 0,
        };
        let f = finding(open(cond(), timing, 0));
        assert_eq!(f.state, FindingState::Pending);
        let f = finding(holds(f, cond(), timing, 30_000));
        assert_eq!(f.state, FindingState::Pending);
        let t = holds(f, cond(), timing, 60_000);
        assert!(matches!(t, Transition::Fired(_)));
    }

    #[test]
    fn a_flapping_signal_keeps_firing_until_clear_for_keep_firing_for() {
        let timing = Timing {
            for_ms: 0,
            keep_firing_for_ms: 600_000,
        };
        let f = finding(open(cond(), timing, 0));
        assert_eq!(f.state, FindingState::Firing);
        let f = finding(clears(f, timing, 60_000));
        assert_eq!(f.state, FindingState::Firing);
        let f = finding(holds(f, cond(), timing, 120_000));
        assert_eq!(f.cleared_at, None, "holding again resets the clear timer");
        let f = finding(clears(f, timing, 180_000));
        assert!(tick(&f, timing, 700_000).is_none());
        let resolved = tick(&f, timing, 780_000);
        assert!(matches!(resolved, Some(Transition::Resolved(_))));
    }

    #[test]
    fn a_pending_finding_that_clears_resolves_without_firing() {
        let timing = Timing {
            for_ms: 60_000,
            keep_firing_for_ms: 60_000,
        };
        let f = finding(open(cond(), timing, 0));
        let f = finding(clears(f, timing, 10_000));
        assert_eq!(f.state, FindingState::Resolved);
        assert_eq!(f.fired_at, None);
    }

    #[test]
    fn a_firing_finding_that_gets_worse_is_planned_again() {
        let timing = Timing {
            for_ms: 0,
            keep_firing_for_ms: 0,
        };
        let warning = Condition {
            severity: Severity::Warning,
            ..cond()
        };
        let mut f = finding(open(warning.clone(), timing, 0));
        f.plan_state = PlanState::Planned;
        let f = finding(holds(f, warning, timing, 60_000));
        assert_eq!(f.plan_state, PlanState::Planned, "unchanged: not again");
        let f = finding(holds(f, cond(), timing, 120_000));
        assert_eq!(f.plan_state, PlanState::New, "warning to critical");
        let mut f = f;
        f.plan_state = PlanState::Planned;
        let f = finding(holds(f, cond(), timing, 180_000));
        assert_eq!(f.plan_state, PlanState::Planned);
    }
}
