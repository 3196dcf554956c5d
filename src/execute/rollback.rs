//! `mapek rollback ID`: apply the recorded inverse of an executed remediation, as a signed, audited remediation of its own.

use sha2::{Digest, Sha256};
use std::sync::Arc;

use super::{execute_one, ExecuteError, Outcome, APPLIED, TAKEN};
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

/// How long `finish` waits for another executor that took the rollback first.
const SETTLE: std::time::Duration = std::time::Duration::from_secs(30);

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
    let r = record(store, key, id, actor, now).await?;
    let outcome = finish(store, registry, key, &r, now).await?;
    Ok((r, outcome))
}

/// The first half of a rollback: its remediation recorded `ready`, signed, with its audit
/// entry, and the original marked rolled back, in one transaction.
pub async fn record(
    store: &Store,
    key: &KeyPair,
    id: &str,
    actor: &str,
    now: i64,
) -> Result<Remediation, RollbackError> {
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
    Ok(r)
}

/// The second half: executes the recorded rollback `r` and publishes what users read. A
/// running daemon, woken by the record, may take it first; then this waits for its outcome
/// (up to 30 s) and publishes after it, so that when `mapek rollback` returns, the catalog
/// users read has moved (it used to return at once, before the daemon had published).
pub async fn finish<R: Registry>(
    store: &Store,
    registry: &Arc<R>,
    key: &KeyPair,
    r: &Remediation,
    now: i64,
) -> Result<Outcome, RollbackError> {
    let mut outcome = execute_one(store, registry.as_ref(), key, r, now).await?;
    if matches!(&outcome, Outcome::Retry(why) if why == TAKEN) {
        if let Some(settled) = settled(store, &r.id).await? {
            outcome = settled;
        }
    }
    if matches!(outcome, Outcome::Executed { changed: true }) {
        // What users read follows at once (a marketplace's catalog); a failure here is caught up
        // by the daemon's next cycle, which publishes whatever differs. (Publications take a
        // lock and read the state under it: this one and the daemon's cannot undo each other.)
        if let Err(error) = registry.publish().await {
            tracing::error!(%error, "rolled back, but the catalog could not be published again yet");
        }
    }
    Ok(outcome)
}

/// The outcome another executor gave remediation `id`, once it has one; None if it has none
/// within `SETTLE` (it stays `executing`, and the daemon finishes it).
async fn settled(store: &Store, id: &str) -> Result<Option<Outcome>, StoreError> {
    let deadline = tokio::time::Instant::now() + SETTLE;
    loop {
        let Some(r) = store.remediation(id).await? else {
            return Ok(None);
        };
        match r.status {
            Status::Ready | Status::Executing => {}
            // Rolled back in turn: only a remediation that changed something can be.
            Status::RolledBack => return Ok(Some(Outcome::Executed { changed: true })),
            Status::Executed => {
                return Ok(Some(Outcome::Executed {
                    changed: r.reason == APPLIED,
                }))
            }
            Status::Refused => return Ok(Some(Outcome::Refused)),
            _ => return Ok(Some(Outcome::Failed(r.reason))),
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
