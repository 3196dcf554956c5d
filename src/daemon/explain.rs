//! `mapek explain ID`: why mapek did what it did about a finding, a remediation or an audit entry — what was observed, the finding's life, the policy and its condition, the gate that held or passed it, the decisions, the signatures, the audit entries and the verification.

use serde::{Deserialize, Serialize};

use crate::clock::rfc3339;
use crate::keys::verify_hex;
use crate::knowledge::approvals::Approval;
use crate::knowledge::audit::AuditEntry;
use crate::knowledge::findings::Finding;
use crate::knowledge::remediations::Remediation;
use crate::knowledge::{Store, StoreError};
use crate::plan::policy::PolicySet;
use ed25519_dalek::VerifyingKey;

/// The policy as it stands now, as far as it explains a decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyView {
    pub id: String,
    pub description: String,
    pub on: Vec<String>,
    /// The CEL condition, as written.
    pub when: Option<String>,
    pub mode: String,
    /// Its gates as configured: cooldown, rate limit, blast radius, window, approvals.
    pub gates: Vec<String>,
    pub file: String,
}

/// One remediation, with what decided and followed it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RemediationStory {
    pub remediation: Remediation,
    /// Whether the daemon's signature over it verifies (None: no key to check it with).
    pub signature_valid: Option<bool>,
    /// The policy that planned it, as loaded now (None: no longer loaded).
    pub policy: Option<PolicyView>,
    pub approvals: Vec<Approval>,
    pub audit: Vec<AuditEntry>,
}

/// Everything `mapek explain` shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Explanation {
    /// What was asked about.
    pub id: String,
    pub finding: Option<Finding>,
    pub remediations: Vec<RemediationStory>,
    /// The audit entry asked about, when an entry's number was given.
    pub entry: Option<AuditEntry>,
    /// The remediation in force that handles the open finding (an executed quarantine or yank
    /// of its subject, not rolled back), as `mapek status` says "handled".
    #[serde(default)]
    pub handled_by: Option<String>,
}

/// Why an explanation cannot be given.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("no finding, remediation or audit entry has the id `{0}`")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn policy_view(policies: &PolicySet, id: &str) -> Option<PolicyView> {
    let p = policies.get(id)?;
    let dur = |ms: i64| {
        humantime::format_duration(std::time::Duration::from_millis(ms.max(0).unsigned_abs()))
            .to_string()
    };
    let mut gates = Vec::new();
    if let Some(c) = p.cooldown_ms {
        gates.push(format!("cooldown {}", dur(c)));
    }
    if let Some(n) = p.max_per_hour {
        gates.push(format!("at most {n} an hour"));
    }
    if let Some(n) = p.max_blast_radius {
        gates.push(format!("approval above {n} transitive dependents"));
    }
    if p.window.is_some() {
        gates.push("a maintenance window".into());
    }
    if !p.approvers.is_empty() {
        gates.push(format!(
            "{} approval(s) of {} when approval is needed",
            p.min_approvals,
            p.approvers.join(", ")
        ));
    }
    if let Some(v) = p.verify_after_ms {
        gates.push(format!(
            "verified {} after, {} attempt(s)",
            dur(v),
            p.max_attempts
        ));
    }
    Some(PolicyView {
        id: p.id.clone(),
        description: p.description.clone(),
        on: p.on.iter().map(|k| k.as_str().to_string()).collect(),
        when: p.when.clone(),
        mode: p.mode.as_str().to_string(),
        gates,
        file: p.file.display().to_string(),
    })
}

impl Explanation {
    /// Reads what the store knows about `id`: a remediation (`rem-…`), an audit entry (its
    /// number) or a finding.
    pub async fn read(
        store: &Store,
        policies: &PolicySet,
        key: Option<&VerifyingKey>,
        id: &str,
    ) -> Result<Self, ExplainError> {
        let mut x = Self {
            id: id.to_string(),
            finding: None,
            remediations: Vec::new(),
            entry: None,
            handled_by: None,
        };
        let mut rems = Vec::new();
        if let Ok(seq) = id.parse::<i64>() {
            let entry = store.audit_entry(seq).await?;
            let Some(entry) = entry else {
                return Err(ExplainError::NotFound(id.into()));
            };
            if let Some(r) = &entry.remediation_id {
                rems.extend(store.remediation(r).await?);
            }
            x.entry = Some(entry);
        } else if let Some(r) = store.remediation(id).await? {
            rems.push(r);
        } else if let Some(f) = store.finding(id).await? {
            rems = store.remediations_of_finding(&f.id).await?;
            x.finding = Some(f);
        } else {
            return Err(ExplainError::NotFound(id.into()));
        }
        if x.finding.is_none() {
            if let Some(fid) = rems.first().and_then(|r| r.finding_id.clone()) {
                x.finding = store.finding(&fid).await?;
            }
        }
        if let Some(f) = &x.finding {
            x.handled_by = store.handled_findings(Some(&f.id)).await?.remove(&f.id);
        }
        for r in rems {
            x.remediations.push(RemediationStory {
                signature_valid: key.map(|k| verify_hex(k, &r.signing_bytes(), &r.signature)),
                policy: policy_view(policies, &r.policy),
                approvals: store.approvals_of(&r.id).await?,
                audit: store.audit_entries_of(&r.id).await?,
                remediation: r,
            });
        }
        Ok(x)
    }
}

fn at(ms: Option<i64>) -> String {
    ms.map(rfc3339).unwrap_or_else(|| "-".into())
}

impl std::fmt::Display for Explanation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(e) = &self.entry {
            writeln!(
                f,
                "audit entry {}: {} by {} on {} at {}",
                e.seq,
                e.kind,
                e.actor,
                e.subject,
                rfc3339(e.at)
            )?;
            writeln!(f, "  detail: {}", e.detail)?;
        }
        match &self.finding {
            Some(x) => {
                write_finding(f, x)?;
                if let Some(by) = &self.handled_by {
                    writeln!(
                        f,
                        "  handled: {by} (a quarantine or yank of its subject) is in force: the finding fires on, but nobody installs what it is about"
                    )?;
                }
            }
            None => writeln!(f, "finding: none recorded")?,
        }
        for s in &self.remediations {
            write_story(f, s)?;
        }
        Ok(())
    }
}

fn write_finding(f: &mut std::fmt::Formatter<'_>, x: &Finding) -> std::fmt::Result {
    writeln!(f, "finding {}", x.id)?;
    writeln!(
        f,
        "  observed: {} ({}) on {}: {}",
        x.kind.as_str(),
        x.severity.as_str(),
        x.subject,
        x.message
    )?;
    writeln!(f, "  value: {}", x.value)?;
    for (k, v) in &x.labels {
        writeln!(f, "  fact {k}: {v}")?;
    }
    writeln!(
        f,
        "  life: first seen {}, fired {}, last seen {}, cleared {}, resolved {} (now {}; planner: {})",
        rfc3339(x.first_seen),
        at(x.fired_at),
        rfc3339(x.last_seen),
        at(x.cleared_at),
        at(x.resolved_at),
        x.state.as_str(),
        x.plan_state.as_str()
    )
}

fn write_story(f: &mut std::fmt::Formatter<'_>, s: &RemediationStory) -> std::fmt::Result {
    let r = &s.remediation;
    writeln!(f, "remediation {} (attempt {})", r.id, r.attempt)?;
    writeln!(
        f,
        "  {} {} by policy `{}` in mode {}, params {}",
        r.action.as_str(),
        r.subject,
        r.policy,
        r.mode.as_str(),
        r.params
    )?;
    match &s.policy {
        Some(p) => {
            writeln!(
                f,
                "  policy on [{}] when {} ({})",
                p.on.join(", "),
                p.when.as_deref().unwrap_or("(always)"),
                p.file
            )?;
            if !p.gates.is_empty() {
                writeln!(f, "  policy gates: {}", p.gates.join("; "))?;
            }
        }
        None => writeln!(f, "  policy `{}` is no longer loaded", r.policy)?,
    }
    let gate = r
        .gate
        .map(|g| g.as_str())
        .unwrap_or("none (every gate passed)");
    writeln!(
        f,
        "  status {}; gate {gate}; {}",
        r.status.as_str(),
        r.reason
    )?;
    writeln!(
        f,
        "  planned {}, last changed {}",
        rfc3339(r.created_at),
        rfc3339(r.updated_at)
    )?;
    for a in &s.approvals {
        writeln!(
            f,
            "  decision: {} by {} at {}",
            a.decision.as_str(),
            a.key_id,
            rfc3339(a.at)
        )?;
    }
    let signature = match s.signature_valid {
        Some(true) => "the daemon's signature verifies",
        Some(false) => "the daemon's signature does NOT verify",
        None => "signature not checked (no daemon key)",
    };
    writeln!(f, "  {signature}")?;
    let verdict = r.verdict.map(|v| v.as_str()).unwrap_or("-");
    writeln!(
        f,
        "  verification: due {}, verdict {verdict}",
        at(r.verify_at)
    )?;
    for e in &s.audit {
        writeln!(
            f,
            "  audit {} {} {} by {}: {}",
            e.seq,
            rfc3339(e.at),
            e.kind,
            e.actor,
            e.detail
        )?;
    }
    Ok(())
}
