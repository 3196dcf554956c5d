//! The status report: one typed shape that the admin API answers, `mapek status` prints, and
//! the command line builds from the store when no daemon answers.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::knowledge::control::Paused;
use crate::knowledge::findings::FindingState;
use crate::knowledge::lease::{Holder, LEADER};
use crate::knowledge::remediations::Remediation;
use crate::knowledge::standing::Outcomes;
use crate::knowledge::{Store, StoreError};
use crate::model::{FindingKind, Severity};
use crate::plan::guards::Circuit;

/// How many open findings a report lists one by one (all are counted).
const LISTED_FINDINGS: usize = 20;
/// How many of the latest remediations a report lists.
const RECENT_REMEDIATIONS: i64 = 10;

/// Who answers a status request: the daemon, or the command line reading the store itself.
pub struct StatusView<'a> {
    pub role: &'a str,
    pub holder: &'a str,
    pub policies: usize,
    pub dry_run: bool,
    pub window_ms: i64,
    pub now: i64,
}

/// One open finding, as the report lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpenFinding {
    pub kind: FindingKind,
    pub severity: Severity,
    pub state: FindingState,
    pub subject: String,
    /// The remediation in force that handles it (an executed quarantine or yank of its
    /// subject): still firing, but out of users' reach.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handled_by: Option<String>,
}

impl OpenFinding {
    /// `pending`, `firing`, or `handled` when a remediation in force handles it.
    pub fn state_word(&self) -> &'static str {
        match (&self.handled_by, self.state) {
            (Some(_), FindingState::Firing) => "handled",
            _ => self.state.as_str(),
        }
    }
}

/// Everything `mapek status` shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    pub role: String,
    pub holder: String,
    pub lease: Option<Holder>,
    pub paused: Option<Paused>,
    pub circuit: Circuit,
    pub policies: usize,
    pub dry_run: bool,
    pub findings_open_total: usize,
    /// Open findings counted by kind.
    pub findings_open: BTreeMap<String, i64>,
    pub findings: Vec<OpenFinding>,
    /// Remediations counted by status.
    pub remediations: BTreeMap<String, i64>,
    /// Notices (the notify action) counted by delivery status.
    pub notices: BTreeMap<String, i64>,
    pub learning_window_ms: i64,
    pub policy_outcomes: Vec<Outcomes>,
    pub recent: Vec<Remediation>,
}

impl StatusReport {
    /// Reads the report from the store.
    pub async fn read(store: &Store, v: StatusView<'_>) -> Result<Self, StoreError> {
        let open = store.open_findings().await?;
        let handled = store.handled_findings(None).await?;
        let mut by_kind = BTreeMap::<String, i64>::new();
        for f in &open {
            *by_kind.entry(f.kind.as_str().to_string()).or_default() += 1;
        }
        let findings = open
            .iter()
            .take(LISTED_FINDINGS)
            .map(|f| OpenFinding {
                kind: f.kind,
                severity: f.severity,
                state: f.state,
                subject: f.subject.to_string(),
                handled_by: handled.get(&f.id).cloned(),
            })
            .collect();
        Ok(Self {
            role: v.role.to_string(),
            holder: v.holder.to_string(),
            lease: store.lease(LEADER).await?,
            paused: store.paused().await?,
            circuit: crate::plan::circuit(store).await?,
            policies: v.policies,
            dry_run: v.dry_run,
            findings_open_total: open.len(),
            findings_open: by_kind,
            findings,
            remediations: store.remediation_counts().await?.into_iter().collect(),
            notices: store.notice_counts().await?.into_iter().collect(),
            learning_window_ms: v.window_ms,
            policy_outcomes: store
                .policy_outcomes(v.now.saturating_sub(v.window_ms))
                .await?,
            recent: store.recent_remediations(RECENT_REMEDIATIONS).await?,
        })
    }
}

/// RFC 3339 of a millisecond timestamp, or nothing when it is out of range.
fn at(ms: i64) -> String {
    crate::clock::rfc3339(ms)
}

impl std::fmt::Display for StatusReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.write_control(f)?;
        self.write_findings(f)?;
        self.write_outcomes(f)?;
        self.write_recent(f)
    }
}

impl StatusReport {
    fn write_control(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "role: {}", self.role)?;
        if let Some(l) = &self.lease {
            let until = at(l.expires_at);
            writeln!(
                f,
                "leader: {} (token {}, lease until {until})",
                l.holder, l.token
            )?;
        }
        if let Some(p) = &self.paused {
            writeln!(f, "EXECUTION PAUSED by {} since {}", p.by, at(p.at))?;
        }
        if self.circuit.open {
            let c = &self.circuit;
            writeln!(f, "CIRCUIT OPEN by guard {}: {}", c.guard, c.reason)?;
        }
        let dry = if self.dry_run { " (dry run)" } else { "" };
        writeln!(f, "policies: {}{dry}", self.policies)
    }

    fn write_findings(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "open findings: {}", self.findings_open_total)?;
        for x in &self.findings {
            let by = x
                .handled_by
                .as_deref()
                .map(|id| format!("  (by {id})"))
                .unwrap_or_default();
            writeln!(
                f,
                "  {:<20} {:<9} {:<8} {}{by}",
                x.kind.as_str(),
                x.severity.as_str(),
                x.state_word(),
                x.subject
            )?;
        }
        writeln!(f, "remediations by status:")?;
        for (status, n) in &self.remediations {
            writeln!(f, "  {status:<12} {n}")?;
        }
        if !self.notices.is_empty() {
            writeln!(f, "notices (notify) by status:")?;
            for (status, n) in &self.notices {
                writeln!(f, "  {status:<12} {n}")?;
            }
        }
        Ok(())
    }

    fn write_outcomes(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let window =
            std::time::Duration::from_millis(self.learning_window_ms.max(0).unsigned_abs());
        writeln!(
            f,
            "policies over the last {} (executed, effective, failed verification, rolled back, superseded; DEMOTED when demoted to dry run):",
            humantime::format_duration(window)
        )?;
        for o in &self.policy_outcomes {
            let demoted = o
                .demoted
                .as_deref()
                .map(|r| format!("  DEMOTED to dry_run: {r}"))
                .unwrap_or_default();
            writeln!(
                f,
                "  {:<32} {:>5} {:>5} {:>5} {:>5} {:>5}{demoted}",
                o.policy,
                o.executed,
                o.effective,
                o.failed_verification,
                o.rolled_back,
                o.superseded
            )?;
        }
        Ok(())
    }

    fn write_recent(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "latest remediations:")?;
        for r in &self.recent {
            writeln!(
                f,
                "  {}  {}  {:<28} {:<12} {:<10} {}",
                r.id,
                at(r.created_at),
                r.subject.to_string(),
                r.action.as_str(),
                r.status.as_str(),
                r.policy
            )?;
        }
        Ok(())
    }
}
