//! `mapek rollback ID`: apply the recorded inverse of an executed remediation, as a signed, audited remediation of its own.

use sha2::{Digest, Sha256};
use std::sync::Arc;

use super::{execute_one, ExecuteError, Outcome};
use crate::keys::KeyPair;
use crate::knowledge::audit::{self, NewEntry};
use crate::knowledge::remediations::{self, Remediation, Status};
use crate::knowledge::{Store, StoreError};
use crate::model::{Action, Subject};
use crate::registry::{Change, Registry};

/// Why a rollback was refused.
#[derive(Debug, thiserror::Error)]
pub enum RollbackError {
    #[error("no remediation `{0}`")]
    NoSuchRemediation(String),
    #[error("remediation `{id}` was already rolled back ({reason})")]
    AlreadyRolledBack { id: String, reason: String },
    #[error("remediation `{id}` is {status}: only an executed remediation can be rolled back")]
    NotExecuted { id: String, status: String },
    #[error("remediation `{0}` changed nothing when it ran, so there is nothing to undo")]
    NothingToUndo(String),
    #[error("remediation `{id}` has an inverse this version cannot read: {reason}")]
    BadInverse { id: String, reason: String },
    #[error(transparent)]
    Execute(#[from] ExecuteError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The action and subject a remediation applying `change` is shown with; the change itself
/// travels in its params (see `change_for`).
fn action_of(change: &Change) -> (Action, Subject) {
    let release = |package: &String, version: &String| Subject {
        package: package.clone(),
        version: Some(version.clone()),
    };
    let whole = |package: &String| Subject {
        package: package.clone(),
        version: None,
    };
    match change {
        Change::QuarantineRelease { package, version } => {
            (Action::Quarantine, release(package, version))
        }
        Change::UnquarantineRelease { package, version } => {
            (Action::ReleaseQuarantine, release(package, version))
        }
        Change::QuarantinePackage { package } => (Action::Quarantine, whole(package)),
        Change::UnquarantinePackage { package } => (Action::ReleaseQuarantine, whole(package)),
        Change::YankRelease { package, version } => (Action::Yank, release(package, version)),
        Change::UnyankRelease { package, version } => (Action::Unyank, release(package, version)),
        Change::RestoreLatest { package } | Change::SetLatest { package, .. } => {
            (Action::RestoreLatest, whole(package))
        }
        Change::Deprecate { package, .. } => (Action::Deprecate, whole(package)),
        Change::Undeprecate { package } => (Action::Undeprecate, whole(package)),
        Change::SetQuality { package, .. } => (Action::SetQuality, whole(package)),
        Change::AdjustQuality { package, .. } => (Action::AdjustQuality, whole(package)),
        Change::Reindex => (Action::Reindex, crate::model::daemon_subject()),
    }
}

/// Rolls back remediation `id` on behalf of `actor`; returns the rollback remediation and how
/// its execution went.
pub async fn rollback<R: Registry>(
    store: &Store,
    registry: &Arc<R>,
    key: &KeyPair,
    id: &str,
    actor: &str,
    now: i64,
) -> Result<(Remediation, Outcome), RollbackError> {
    let original = store
        .remediation(id)
        .await?
        .ok_or_else(|| RollbackError::NoSuchRemediation(id.into()))?;
    match original.status {
        Status::Executed => {}
        Status::RolledBack => {
            return Err(RollbackError::AlreadyRolledBack {
                id: id.into(),
                reason: original.reason,
            })
        }
        other => {
            return Err(RollbackError::NotExecuted {
                id: id.into(),
                status: other.as_str().into(),
            })
        }
    }
    let inverse = match &original.inverse {
        None | Some(serde_json::Value::Null) => {
            return Err(RollbackError::NothingToUndo(id.into()))
        }
        Some(v) => {
            serde_json::from_value::<Change>(v.clone()).map_err(|e| RollbackError::BadInverse {
                id: id.into(),
                reason: e.to_string(),
            })?
        }
    };
    let (action, subject) = action_of(&inverse);
    let key_hex = hex::encode(Sha256::digest(format!("rollback\0{id}").as_bytes()));
    let mut r = Remediation {
        id: format!("rem-{}", &key_hex[..16]),
        idempotency_key: key_hex,
        finding_id: original.finding_id.clone(),
        policy: "rollback".into(),
        action,
        params: serde_json::json!({ "rollback_of": id, "by": actor, "change": inverse }),
        subject,
        mode: crate::model::Mode::Enforce,
        status: Status::Ready,
        reason: format!("rollback of {id} by {actor}"),
        created_at: now,
        updated_at: now,
        signature: String::new(),
        inverse: None,
        gate: None,
        expires_at: None,
        attempt: 1,
        verify_after_ms: None,
        verify_at: None,
        verdict: None,
    };
    r.signature = key.sign(&r.signing_bytes());
    let mut tx = store.begin().await?;
    let moved = remediations::transition(
        &mut tx,
        id,
        Status::Executed,
        Status::RolledBack,
        &format!("rolled back by {actor} as {}", r.id),
        None,
        now,
    )
    .await?;
    if !moved || !remediations::insert(&mut tx, &r).await? {
        return Err(RollbackError::AlreadyRolledBack {
            id: id.into(),
            reason: "rolled back concurrently".into(),
        });
    }
    audit::append(
        &mut tx,
        key,
        NewEntry {
            at: now,
            kind: crate::model::AuditKind::RemediationRollback,
            actor: actor.into(),
            subject: r.subject.to_string(),
            remediation_id: Some(r.id.clone()),
            detail: serde_json::json!({
                "rollback_of": id,
                "policy": original.policy,
                "action": r.action.as_str(),
            }),
        },
    )
    .await?;
    tx.commit().await.map_err(StoreError::from)?;
    let outcome = execute_one(store, registry.as_ref(), key, &r, now).await?;
    if matches!(outcome, Outcome::Executed { changed: true }) {
        // What users read follows at once (a marketplace's catalog); a failure here is caught up
        // by the daemon's next cycle, which publishes whatever differs.
        if let Err(error) = registry.publish().await {
            tracing::error!(%error, "rolled back, but the catalog could not be published again yet");
        }
    }
    Ok((r, outcome))
}
