//! Approvals: maintainers sign a decision on a waiting remediation; only the policy's approvers count, each once.

use super::gates::Approvals;
use super::policy::PolicySet;
use crate::keys::{verify_hex, KeyPair, Role, Trust, TrustStore};
use crate::knowledge::approvals::{self, Approval, Decision};
use crate::knowledge::audit::{self, NewEntry};
use crate::knowledge::remediations::{Remediation, Status};
use crate::knowledge::{Store, StoreError};

/// Why a decision was not recorded.
#[derive(Debug, thiserror::Error)]
pub enum ApprovalError {
    #[error("no remediation `{0}`")]
    NoSuchRemediation(String),
    #[error("remediation `{id}` is {status}, not waiting for approval")]
    NotWaiting { id: String, status: String },
    #[error("remediation `{id}` belongs to policy `{policy}`, which is not loaded")]
    NoPolicy { id: String, policy: String },
    #[error("key `{key}` is not among the approvers of policy `{policy}` ({approvers})")]
    NotAnApprover {
        key: String,
        policy: String,
        approvers: String,
    },
    #[error("key `{0}` is not a trusted maintainer key (unknown, revoked, or without the maintainer role)")]
    Untrusted(String),
    #[error("the key file's public key does not match the trusted key `{0}`")]
    WrongKey(String),
    #[error("the signature of key `{0}` does not hold for this decision on this remediation")]
    BadSignature(String),
    #[error("key `{key}` already decided on remediation `{id}`")]
    AlreadyDecided { key: String, id: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The decisions that count for `r`: by a trusted maintainer key among the policy's approvers,
/// with a good signature; each key once.
pub fn valid(
    r: &Remediation,
    approvers: &[String],
    list: &[Approval],
    trust: &TrustStore,
) -> Approvals {
    let mut out = Approvals::default();
    for a in list {
        if !approvers.contains(&a.key_id) || out.approved_by.contains(&a.key_id) {
            continue;
        }
        let Trust::Trusted(key) = trust.trust(&a.key_id) else {
            continue;
        };
        if !key.has_role(Role::Maintainer) {
            continue;
        }
        let msg = Approval::signing_bytes(a.decision, &r.id, &r.signature, &a.key_id, a.at);
        if !verify_hex(&key.public, &msg, &a.signature) {
            continue;
        }
        match a.decision {
            Decision::Approve => out.approved_by.push(a.key_id.clone()),
            Decision::Reject => {
                if out.rejected_by.is_none() {
                    out.rejected_by = Some(a.key_id.clone());
                }
            }
        }
    }
    out
}

/// Signs a maintainer's decision on a waiting remediation with its key file and records it.
#[allow(clippy::too_many_arguments)]
pub async fn decide(
    store: &Store,
    policies: &PolicySet,
    trust: &TrustStore,
    daemon_key: &KeyPair,
    maintainer: &KeyPair,
    id: &str,
    decision: Decision,
    now: i64,
) -> Result<Approval, ApprovalError> {
    let r = waiting(store, id).await?;
    if let Trust::Trusted(k) = trust.trust(&maintainer.key_id) {
        if k.has_role(Role::Maintainer) && k.public != maintainer.public() {
            return Err(ApprovalError::WrongKey(maintainer.key_id.clone()));
        }
    }
    let msg = Approval::signing_bytes(decision, &r.id, &r.signature, &maintainer.key_id, now);
    let approval = Approval {
        remediation_id: r.id.clone(),
        key_id: maintainer.key_id.clone(),
        decision,
        at: now,
        signature: maintainer.sign(&msg),
    };
    record(store, policies, trust, daemon_key, approval).await
}

/// The remediation `id`, if it waits for approval.
pub async fn waiting(store: &Store, id: &str) -> Result<Remediation, ApprovalError> {
    let r = store
        .remediation(id)
        .await?
        .ok_or_else(|| ApprovalError::NoSuchRemediation(id.into()))?;
    if r.status != Status::Pending || r.gate != Some(crate::model::Gate::Approval) {
        return Err(ApprovalError::NotWaiting {
            id: id.into(),
            status: match r.gate {
                Some(g) if r.status == Status::Pending => format!("pending at gate `{g}`"),
                _ => r.status.as_str().into(),
            },
        });
    }
    Ok(r)
}

/// Records a decision signed elsewhere (by `mapek plans approve` through the admin API, say)
/// once its key is a trusted maintainer among the policy's approvers and its signature holds;
/// with its audit entry.
pub async fn record(
    store: &Store,
    policies: &PolicySet,
    trust: &TrustStore,
    daemon_key: &KeyPair,
    approval: Approval,
) -> Result<Approval, ApprovalError> {
    let id = approval.remediation_id.clone();
    let r = waiting(store, &id).await?;
    let policy = policies
        .get(&r.policy)
        .ok_or_else(|| ApprovalError::NoPolicy {
            id: id.clone(),
            policy: r.policy.clone(),
        })?;
    let key_id = approval.key_id.clone();
    if !policy.approvers.contains(&key_id) {
        return Err(ApprovalError::NotAnApprover {
            key: key_id,
            policy: policy.id.clone(),
            approvers: policy.approvers.join(", "),
        });
    }
    let decision = approval.decision;
    match trust.trust(&key_id) {
        Trust::Trusted(k) if k.has_role(Role::Maintainer) => {
            let msg = Approval::signing_bytes(decision, &r.id, &r.signature, &key_id, approval.at);
            if !verify_hex(&k.public, &msg, &approval.signature) {
                return Err(ApprovalError::BadSignature(key_id));
            }
        }
        _ => return Err(ApprovalError::Untrusted(key_id)),
    }
    let now = approval.at;
    let mut tx = store.begin().await?;
    if !approvals::insert(&mut tx, &approval).await? {
        return Err(ApprovalError::AlreadyDecided {
            key: key_id,
            id: id.clone(),
        });
    }
    audit::append(
        &mut tx,
        daemon_key,
        NewEntry {
            at: now,
            kind: match decision {
                Decision::Approve => crate::model::AuditKind::RemediationApprove,
                Decision::Reject => crate::model::AuditKind::RemediationReject,
            },
            actor: key_id.clone(),
            subject: r.subject.to_string(),
            remediation_id: Some(r.id.clone()),
            detail: serde_json::json!({
                "policy": r.policy,
                "action": r.action.as_str(),
                "decision": decision.as_str(),
                "signature": approval.signature,
            }),
        },
    )
    .await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(approval)
}
