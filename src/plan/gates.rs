//! Gates between a matched policy and execution, applied in the spec's order; each verdict is recorded.

use super::policy::{Mode, Policy};
use crate::knowledge::remediations::Status;

/// What a gate says of a remediation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// On to the next gate.
    Pass,
    /// Stops here with this status and reason (dry run, suppressed, waiting).
    Stop(Status, String),
}

/// Facts the gates decide on.
#[derive(Debug, Clone, Copy)]
pub struct GateInput<'a> {
    pub policy: &'a Policy,
    /// The whole daemon plans but never executes (`--dry-run` or `dry_run = true`).
    pub daemon_dry_run: bool,
}

/// A gate: plain function from facts to verdict, so later gates (windows, rate limits, blast
/// radius, guards, approvals) slot in as more entries of [`GATES`].
pub type Gate = fn(&GateInput<'_>) -> Verdict;

fn enabled(input: &GateInput<'_>) -> Verdict {
    if input.policy.enabled {
        Verdict::Pass
    } else {
        Verdict::Stop(Status::Suppressed, "policy is disabled".into())
    }
}

fn daemon_dry_run(input: &GateInput<'_>) -> Verdict {
    if input.daemon_dry_run {
        Verdict::Stop(Status::DryRun, "the daemon runs in dry-run mode".into())
    } else {
        Verdict::Pass
    }
}

fn mode(input: &GateInput<'_>) -> Verdict {
    match input.policy.mode {
        Mode::Enforce => Verdict::Pass,
        Mode::DryRun => Verdict::Stop(Status::DryRun, "policy mode is dry_run".into()),
        Mode::Approve => Verdict::Stop(Status::Pending, "waiting for approval".into()),
    }
}

/// The gates in the order they apply.
pub const GATES: [(&str, Gate); 3] = [
    ("enabled", enabled),
    ("dry_run", daemon_dry_run),
    ("mode", mode),
];

/// Runs the gates; `Ready` with the name of no gate when every gate passes.
pub fn decide(input: &GateInput<'_>) -> (Status, String, Option<&'static str>) {
    for (name, gate) in GATES {
        if let Verdict::Stop(status, reason) = gate(input) {
            return (status, reason, Some(name));
        }
    }
    (Status::Ready, "all gates passed".into(), None)
}
