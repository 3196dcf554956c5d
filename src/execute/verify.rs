//! Verification: after `verify_after`, has the remediation's finding cleared? If not, another attempt, then `escalate_to`, then give up and hold the subject for a person.

use crate::keys::KeyPair;
use crate::knowledge::audit::{self, NewEntry};
use crate::knowledge::findings::{self, Finding, FindingState};
use crate::knowledge::remediations::Remediation;
use crate::knowledge::standing;
use crate::knowledge::{Conn, Store, StoreError};
use crate::model::{FindingKind, Verification};
use crate::plan::policy::PolicySet;

/// What verification decided for one remediation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Its finding cleared.
    Effective,
    /// Its finding is no longer recorded, or it had none: nothing to judge it by.
    Unverifiable,
    /// Not cleared: the same policy tries again (attempt `next`).
    Retry { next: i64 },
    /// Not cleared after `max_attempts`: handed to the policy's `escalate_to`.
    Escalated { to: String },
    /// Not cleared and nothing left to try: the daemon stops acting on the subject.
    GaveUp { reason: String },
}

impl Verdict {
    /// The remediation's stored verdict.
    pub fn stored(&self) -> Verification {
        match self {
            Self::Effective => Verification::Effective,
            Self::Unverifiable => Verification::Unverifiable,
            _ => Verification::Ineffective,
        }
    }
    /// The verdict with what followed, as counted and audited.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Effective => "effective",
            Self::Unverifiable => "unverifiable",
            Self::Retry { .. } => "retry",
            Self::Escalated { .. } => "escalated",
            Self::GaveUp { .. } => "gave_up",
        }
    }
}

#[derive(Debug, Default)]
pub struct VerifyOutput {
    pub verdicts: Vec<(Remediation, Verdict)>,
    /// Packages whose hold ended because the finding it was about resolved.
    pub released: Vec<String>,
    /// When the next executed remediation is due for verification, if any is waiting.
    pub next_due: Option<i64>,
}

/// The verdict on `r`, given its finding as it is now and the policies in force.
pub fn judge(r: &Remediation, finding: Option<&Finding>, policies: &PolicySet) -> Verdict {
    let Some(f) = finding else {
        return Verdict::Unverifiable;
    };
    if f.state == FindingState::Resolved || f.cleared_at.is_some() {
        return Verdict::Effective;
    }
    let Some(p) = policies.get(&r.policy) else {
        return Verdict::GaveUp {
            reason: format!("policy `{}` is no longer loaded", r.policy),
        };
    };
    if r.attempt < i64::from(p.max_attempts) {
        return Verdict::Retry {
            next: r.attempt + 1,
        };
    }
    match p.escalate_to.as_deref() {
        Some(to) if policies.get(to).is_some_and(|e| e.enabled) => {
            Verdict::Escalated { to: to.to_string() }
        }
        Some(to) => Verdict::GaveUp {
            reason: format!(
                "{} attempts of `{}` did not clear it, and `{to}` is not loaded or not enabled",
                r.attempt, r.policy
            ),
        },
        None => Verdict::GaveUp {
            reason: format!(
                "{} attempts of `{}` did not clear it, and it escalates to nothing",
                r.attempt, r.policy
            ),
        },
    }
}

/// Verifies every remediation that is due, then ends the holds whose finding resolved.
pub async fn cycle(
    store: &Store,
    policies: &PolicySet,
    key: &KeyPair,
    now: i64,
) -> Result<VerifyOutput, StoreError> {
    let mut out = VerifyOutput::default();
    for r in store.due_verifications(now).await? {
        let finding = match &r.finding_id {
            Some(id) => store.finding(id).await?,
            None => None,
        };
        let verdict = judge(&r, finding.as_ref(), policies);
        let mut tx = store.begin().await?;
        standing::set_verdict(&mut tx, &r.id, verdict.stored()).await?;
        if let Some(f) = &finding {
            match &verdict {
                Verdict::Retry { .. } => {
                    standing::hand_over(&mut tx, &f.id, &r.policy, r.attempt).await?
                }
                Verdict::Escalated { to } => standing::hand_over(&mut tx, &f.id, to, 0).await?,
                Verdict::GaveUp { reason } => give_up(&mut tx, store, f, &r, reason, now).await?,
                Verdict::Effective | Verdict::Unverifiable => {}
            }
        }
        audit::append(
            &mut tx,
            key,
            NewEntry::about(
                &r,
                now,
                crate::model::AuditKind::RemediationVerified,
                serde_json::json!({
                    "policy": r.policy,
                    "action": r.action.as_str(),
                    "finding": r.finding_id,
                    "attempt": r.attempt,
                    "verdict": verdict.label(),
                    "next": match &verdict {
                        Verdict::Retry { next } => serde_json::json!({ "attempt": next }),
                        Verdict::Escalated { to } => serde_json::json!({ "policy": to }),
                        Verdict::GaveUp { reason } => serde_json::json!({ "gave_up": reason }),
                        _ => serde_json::Value::Null,
                    },
                }),
            ),
        )
        .await?;
        tx.commit().await?;
        out.verdicts.push((r, verdict));
    }
    out.released = release_holds(store, key, now).await?;
    out.next_due = store.next_verification().await?;
    Ok(out)
}

/// The fingerprint of the hold on a subject.
fn hold_fingerprint(f: &Finding) -> String {
    Finding::fingerprint_of(FindingKind::PolicyIneffective, &f.subject)
}

/// Stops acting on the finding and raises a `policy_ineffective` finding on its subject for a
/// person; while it fires, the subject's package is held.
async fn give_up(
    tx: &mut Conn,
    store: &Store,
    f: &Finding,
    r: &Remediation,
    reason: &str,
    now: i64,
) -> Result<(), StoreError> {
    standing::exhaust(tx, &f.id).await?;
    let fingerprint = hold_fingerprint(f);
    let already = store
        .open_findings_of(FindingKind::PolicyIneffective)
        .await?
        .into_iter()
        .any(|h| h.fingerprint == fingerprint);
    if already {
        return Ok(());
    }
    let mut labels = serde_json::Map::new();
    labels.insert("policy".into(), r.policy.clone().into());
    labels.insert("finding".into(), f.id.clone().into());
    labels.insert("finding_kind".into(), f.kind.as_str().into());
    labels.insert("remediation".into(), r.id.clone().into());
    labels.insert("attempts".into(), r.attempt.into());
    let hold = Finding::raised(
        FindingKind::PolicyIneffective,
        f.subject.clone(),
        fingerprint,
        format!(
            "remediations did not clear {} on {}: {reason}; the daemon stops acting on {} until a person does",
            f.kind.as_str(),
            f.subject,
            f.subject.package
        ),
        labels,
        now,
    );
    findings::insert(tx, &hold).await
}

/// Holds whose finding resolved (a person fixed it, or it cleared late) end: the hold resolves
/// and the package's held findings go back to the planner.
async fn release_holds(store: &Store, key: &KeyPair, now: i64) -> Result<Vec<String>, StoreError> {
    let mut released = Vec::new();
    for mut hold in store
        .open_findings_of(FindingKind::PolicyIneffective)
        .await?
    {
        if hold.subject.package == "*" {
            continue;
        }
        let Some(about) = hold
            .labels
            .get("finding")
            .and_then(|v| v.as_str())
            .map(str::to_string)
        else {
            continue;
        };
        let open = match store.finding(&about).await? {
            Some(f) => f.state != FindingState::Resolved,
            None => false,
        };
        if open {
            continue;
        }
        hold.resolve(now);
        let mut tx = store.begin().await?;
        findings::update(&mut tx, &hold).await?;
        standing::release_held(&mut tx, &hold.subject.package).await?;
        audit::append(
            &mut tx,
            key,
            NewEntry {
                at: now,
                kind: crate::model::AuditKind::HoldReleased,
                actor: "daemon".into(),
                subject: hold.subject.to_string(),
                remediation_id: None,
                detail: serde_json::json!({ "finding": about, "reason": "the finding resolved" }),
            },
        )
        .await?;
        tx.commit().await?;
        released.push(hold.subject.package.clone());
    }
    Ok(released)
}
