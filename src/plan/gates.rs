//! Gates between a matched policy and execution, applied in the spec's order; each verdict names its gate.
//!
//! The order: `window` (outside it, wait); `cooldown` and `max_per_hour` (suppressed);
//! `max_blast_radius` (over it, approval needed); the global guards (`dry_run`, `freeze`, the
//! circuit breaker and the rate guards that open it); `mode` (dry run, approval, enforce).
//! Rate limits and guards count only remediations that would execute now.

use foldhash::{HashMap, HashSet};

use super::guards::{Circuit, Guards, Load};
use super::policy::{Mode, Policy};
use crate::knowledge::remediations::{Acted, Status};
use crate::model::{Action, Gate, Subject};

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 86_400_000;

/// Maintainers' valid decisions on one remediation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Approvals {
    /// Distinct approvers' keys with a good signature.
    pub approved_by: Vec<String>,
    pub rejected_by: Option<String>,
}

/// One remediation at the gates.
#[derive(Debug, Clone, Copy)]
pub struct GateInput<'a> {
    pub policy: &'a Policy,
    pub subject: &'a Subject,
    /// Packages that transitively depend on the subject's package.
    pub radius: i64,
    pub approvals: &'a Approvals,
    /// When the remediation was first planned (approval expiry counts from here).
    pub created_at: i64,
    pub now: i64,
    /// Another attempt after a failed verification: `cooldown` does not hold it (`max_attempts`
    /// bounds retries; the cooldown keeps a policy from repeating on fresh findings).
    pub retry: bool,
}

/// What the gates say of a remediation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub status: Status,
    pub gate: Option<Gate>,
    pub reason: String,
    pub expires_at: Option<i64>,
}

fn stop(status: Status, gate: Gate, reason: String) -> Verdict {
    Verdict {
        status,
        gate: Some(gate),
        reason,
        expires_at: None,
    }
}

/// Recent actions, as rate limits, cooldowns and guards count them.
#[derive(Debug, Clone, Default)]
pub struct Ledger {
    last: HashMap<String, HashMap<Subject, i64>>,
    per_policy_hour: HashMap<String, u64>,
    hour: u64,
    packages_day: HashSet<String>,
    this_cycle: u64,
}

impl Ledger {
    /// From what acted in the last day (and earlier for long cooldowns).
    pub fn from_acted(acted: &[Acted], now: i64) -> Self {
        let mut l = Self::default();
        for a in acted {
            let last = l
                .last
                .entry(a.policy.clone())
                .or_default()
                .entry(a.subject.clone())
                .or_insert(a.at);
            *last = (*last).max(a.at);
            if now - a.at < HOUR_MS {
                *l.per_policy_hour.entry(a.policy.clone()).or_default() += 1;
                l.hour += u64::from(!a.notice);
            }
            if now - a.at < DAY_MS && !a.notice {
                l.packages_day.insert(a.subject.package.clone());
            }
        }
        l
    }

    /// A notice (`notify`) counts for its policy's cooldown and rate limit only: it changes
    /// nothing in the registry, so the global guards neither stop nor count it.
    fn record(&mut self, policy: &str, subject: &Subject, now: i64, notice: bool) {
        self.last
            .entry(policy.to_string())
            .or_default()
            .insert(subject.clone(), now);
        *self.per_policy_hour.entry(policy.to_string()).or_default() += 1;
        if notice {
            return;
        }
        self.hour += 1;
        self.packages_day.insert(subject.package.clone());
        self.this_cycle += 1;
    }
}

/// The gates with what they count, for one planning pass.
#[derive(Debug)]
pub struct Gatekeeper<'g> {
    pub guards: &'g Guards,
    /// `--dry-run` or the configuration's `dry_run`.
    pub daemon_dry_run: bool,
    pub ledger: Ledger,
    pub circuit: Circuit,
    pub registry_packages: u64,
    /// Window answers for the instant being decided (every decision of a pass has the same one).
    pub memo: Memo,
    /// Policies demoted to dry run for being ineffective, until a maintainer re-enables them.
    pub demoted: HashSet<String>,
}

/// Cached window answers, valid for one instant.
#[derive(Debug, Default)]
pub struct Memo {
    windows: HashMap<String, (i64, bool)>,
    frozen: Option<(i64, Option<usize>)>,
}

fn when(ms: i64) -> String {
    crate::clock::rfc3339(ms)
}

impl Gatekeeper<'_> {
    /// The policy's mode in force: `dry_run` while it is demoted.
    pub fn mode_of(&self, p: &Policy) -> Mode {
        if self.demoted.contains(&p.id) {
            Mode::DryRun
        } else {
            p.mode
        }
    }

    /// Runs the gates in order; a `Ready` verdict is counted against the limits at once.
    pub fn decide(&mut self, input: &GateInput<'_>) -> Verdict {
        let p = input.policy;
        if let Some(v) = self.window(input).or_else(|| self.limits(input)) {
            return v;
        }
        let approved = input.approvals.approved_by.len() >= p.min_approvals as usize;
        if let Some(who) = &input.approvals.rejected_by {
            return stop(
                Status::Refused,
                Gate::Approval,
                format!("rejected by `{who}`"),
            );
        }
        let mode = self.mode_of(p);
        let (needs_approval, why_approval) = approval_needed(input, mode);
        if self.daemon_dry_run || self.guards.dry_run {
            return stop(
                Status::DryRun,
                Gate::DryRun,
                "the daemon runs in dry-run mode".into(),
            );
        }
        let would_execute = mode != Mode::DryRun && (!needs_approval || approved);
        // A notice is how a person hears of a freeze or an open circuit: those stop changes to
        // the registry, never the word that they happened.
        let notice = p.action == Action::Notify;
        if would_execute && !notice {
            if let Some(v) = self.execution(input) {
                return v;
            }
        }
        match mode {
            Mode::DryRun => self.dry_run(p, needs_approval.then_some(why_approval)),
            _ if needs_approval && !approved => awaiting_approval(input, why_approval),
            _ => {
                self.ledger.record(&p.id, input.subject, input.now, notice);
                let reason = if needs_approval {
                    format!("approved by {}", input.approvals.approved_by.join(", "))
                } else {
                    "all gates passed".into()
                };
                Verdict {
                    status: Status::Ready,
                    gate: None,
                    reason,
                    expires_at: None,
                }
            }
        }
    }

    /// Outside the policy's window, a remediation waits for it to open.
    fn window(&mut self, input: &GateInput<'_>) -> Option<Verdict> {
        let (p, now) = (input.policy, input.now);
        let w = p.window.as_ref()?;
        let open = match self.memo.windows.get(p.id.as_str()) {
            Some((at, open)) if *at == now => *open,
            _ => {
                let open = w.contains(now);
                self.memo.windows.insert(p.id.clone(), (now, open));
                open
            }
        };
        if open {
            return None;
        }
        let opens = w
            .next_open(now)
            .map(|t| format!("; it opens at {}", when(t)))
            .unwrap_or_default();
        Some(stop(
            Status::Pending,
            Gate::Window,
            format!("outside the policy's window `{}`{opens}", w.source()),
        ))
    }

    /// The policy's cooldown on this subject (not for a retry) and its rate limit.
    fn limits(&self, input: &GateInput<'_>) -> Option<Verdict> {
        let (p, now) = (input.policy, input.now);
        if let Some(cooldown) = p.cooldown_ms.filter(|_| !input.retry) {
            let last = self
                .ledger
                .last
                .get(p.id.as_str())
                .and_then(|m| m.get(input.subject));
            if let Some(last) = last.filter(|last| now - **last < cooldown) {
                return Some(stop(
                    Status::Suppressed,
                    Gate::Cooldown,
                    format!(
                        "cooldown: policy acted on {} at {}, less than {} ago",
                        input.subject,
                        when(*last),
                        humantime::format_duration(std::time::Duration::from_millis(
                            cooldown as u64
                        ))
                    ),
                ));
            }
        }
        let max = p.max_per_hour?;
        let n = self.ledger.per_policy_hour.get(&p.id).copied().unwrap_or(0);
        (n >= u64::from(max)).then(|| {
            stop(
                Status::Suppressed,
                Gate::MaxPerHour,
                format!(
                    "rate limit: the policy acted {n} times in the last hour, its limit is {max}"
                ),
            )
        })
    }

    /// What stops a remediation that would execute: a freeze, the open circuit, a global guard
    /// (which opens the circuit).
    fn execution(&mut self, input: &GateInput<'_>) -> Option<Verdict> {
        let now = input.now;
        let frozen = match self.memo.frozen {
            Some((at, frozen)) if at == now => frozen,
            _ => {
                let frozen = self.guards.freeze.iter().position(|w| w.contains(now));
                self.memo.frozen = Some((now, frozen));
                frozen
            }
        };
        if let Some(w) = frozen.and_then(|i| self.guards.freeze.get(i)) {
            return Some(stop(
                Status::Pending,
                Gate::Freeze,
                format!("inside the freeze window `{}`", w.source()),
            ));
        }
        if self.circuit.open {
            self.circuit.last_pressure = now;
            return Some(stop(
                Status::Suppressed,
                Gate::Circuit,
                format!(
                    "the circuit is open since {} ({}: {})",
                    when(self.circuit.opened_at),
                    self.circuit.guard,
                    self.circuit.reason
                ),
            ));
        }
        let load = Load {
            this_cycle: self.ledger.this_cycle,
            last_hour: self.ledger.hour,
            packages_today: self.ledger.packages_day.len() as u64,
            registry_packages: self.registry_packages,
        };
        let new_today = !self.ledger.packages_day.contains(&input.subject.package);
        let trip = self.guards.over(&load, new_today)?;
        self.circuit = Circuit::open(&trip, now);
        Some(stop(
            Status::Suppressed,
            Gate::Guards,
            format!(
                "guard {}: {}; the circuit is now open",
                trip.guard, trip.reason
            ),
        ))
    }

    /// A dry run: the policy's mode, or its demotion.
    fn dry_run(&self, p: &Policy, why_approval: Option<String>) -> Verdict {
        let note = why_approval.map(|w| format!(" ({w})")).unwrap_or_default();
        if self.demoted.contains(&p.id) {
            return stop(
                Status::DryRun,
                Gate::Demoted,
                format!("the policy is demoted to dry_run for being ineffective, until a maintainer runs `mapek policy enable {}`{note}", p.id),
            );
        }
        stop(
            Status::DryRun,
            Gate::DryRun,
            format!("policy mode is dry_run{note}"),
        )
    }
}

/// Whether the remediation needs a maintainer's approval (the policy's mode, or a blast radius
/// over its limit whatever the mode), and why.
fn approval_needed(input: &GateInput<'_>, mode: Mode) -> (bool, String) {
    let p = input.policy;
    match p.max_blast_radius {
        Some(max) if input.radius > i64::from(max) => (
            true,
            format!(
                "blast radius {} is over the policy's {max}: approval needed",
                input.radius
            ),
        ),
        _ => (
            mode == Mode::Approve,
            "the policy's mode is approve".to_string(),
        ),
    }
}

/// Waiting for approvals until they expire.
fn awaiting_approval(input: &GateInput<'_>, why_approval: String) -> Verdict {
    let p = input.policy;
    let expires = input.created_at.saturating_add(p.approval_ttl_ms);
    if input.now >= expires {
        return stop(
            Status::Expired,
            Gate::Approval,
            format!(
                "approval expired at {} with {} of {} approvals",
                when(expires),
                input.approvals.approved_by.len(),
                p.min_approvals
            ),
        );
    }
    Verdict {
        status: Status::Pending,
        gate: Some(Gate::Approval),
        reason: format!(
            "{why_approval}; {} of {} approvals from {}",
            input.approvals.approved_by.len(),
            p.min_approvals,
            p.approvers.join(", ")
        ),
        expires_at: Some(expires),
    }
}

#[cfg(test)]
mod tests;
