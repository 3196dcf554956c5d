//! Execute: verify each remediation's signature, write its intent, apply it with its audit entry in one transaction.

pub mod learn;
pub mod notify;
pub mod rollback;
pub mod verify;

use std::sync::Arc;

use crate::faults;
use crate::keys::{verify_hex, KeyPair};
use crate::knowledge::audit::{self, NewEntry};
use crate::knowledge::remediations::{self, Remediation, Status};
use crate::knowledge::{outbox, standing};
use crate::knowledge::{Store, StoreError};
use crate::model::Action;
use crate::registry::{Change, Registry, RegistryError};

#[derive(Debug, thiserror::Error)]
pub enum ExecuteError {
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The reason of the `Retry` an executor gets when another took the remediation before it.
pub const TAKEN: &str = "another executor took it";

/// The reason an executed remediation records when it changed the registry.
pub const APPLIED: &str = "applied";

/// What happened to one remediation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Applied; `changed` is false when the registry already was in the wanted state.
    Executed { changed: bool },
    /// The daemon's signature did not verify: nothing was applied.
    Refused,
    /// The registry refused it for good (the subject is gone); recorded as failed.
    Failed(String),
    /// A transient error; the remediation stays in `executing` and is tried again next cycle.
    Retry(String),
}

#[derive(Debug, Default)]
pub struct ExecuteOutput {
    pub results: Vec<(Remediation, Outcome)>,
    /// Nothing was ready or left executing: until the planner readies something, another
    /// pass would do nothing.
    pub idle: bool,
    /// What users read was published again after this pass changed the registry (a
    /// marketplace's catalog), or why it could not be; None: nothing to publish.
    pub published: Option<Result<crate::registry::PublishReport, String>>,
}

/// The registry change a remediation makes: its action on its subject with its params, or, for
/// a rollback, the recorded inverse it carries in `params.change`.
pub fn change_for(r: &Remediation) -> Result<Change, String> {
    if let Some(c) = r.params.get("change") {
        return serde_json::from_value(c.clone()).map_err(|e| format!("params.change: {e}"));
    }
    let package = r.subject.package.clone();
    let text = |k: &str| r.params.get(k).and_then(|v| v.as_str()).map(str::to_string);
    let number = |k: &str| r.params.get(k).and_then(|v| v.as_f64());
    let release = |what: &str| {
        r.subject.version.clone().ok_or_else(|| {
            format!(
                "`{what}` acts on a release, and {} is a whole package",
                r.subject
            )
        })
    };
    Ok(match r.action {
        Action::Quarantine => match &r.subject.version {
            Some(v) => Change::QuarantineRelease {
                package,
                version: v.clone(),
            },
            None => Change::QuarantinePackage { package },
        },
        Action::ReleaseQuarantine => match &r.subject.version {
            Some(v) => Change::UnquarantineRelease {
                package,
                version: v.clone(),
            },
            None => Change::UnquarantinePackage { package },
        },
        Action::Yank => Change::YankRelease {
            version: release("yank")?,
            package,
        },
        Action::Unyank => Change::UnyankRelease {
            version: release("unyank")?,
            package,
        },
        Action::RestoreLatest => Change::RestoreLatest { package },
        Action::Deprecate => Change::Deprecate {
            package,
            reason: text("reason").unwrap_or_else(|| "deprecated by policy".into()),
            successor: text("successor"),
        },
        Action::Undeprecate => Change::Undeprecate { package },
        Action::SetQuality => Change::SetQuality {
            package,
            score: Some(number("score").ok_or("`set_quality` needs params.score")?),
        },
        Action::AdjustQuality => Change::AdjustQuality {
            package,
            delta: number("delta").ok_or("`adjust_quality` needs params.delta")?,
        },
        Action::Reindex => Change::Reindex,
        Action::Notify => {
            return Err("`notify` is not a registry change: it queues a notice".into())
        }
    })
}

/// Remediations applied per transaction when all of them go the common way.
const GROUP: usize = 64;

/// Executes every `ready` remediation, and first finishes any whose intent was written but whose
/// effect never committed (a crash between the two).
pub async fn cycle<R: Registry>(
    store: &Store,
    registry: &Arc<R>,
    key: &KeyPair,
    now: i64,
) -> Result<ExecuteOutput, ExecuteError> {
    let mut out = ExecuteOutput::default();
    let work = store.remediations_with_status(Status::Executing).await?;
    let mut ready = store.remediations_with_status(Status::Ready).await?;
    if work.is_empty() && ready.is_empty() {
        out.idle = true;
        return Ok(out);
    }
    if let Some(why) = faults::fails("execute") {
        return Err(StoreError::Sql(sqlx::Error::Protocol(why)).into());
    }
    // A `restore_latest` planned with the yank of the bad release must see that yank.
    ready.sort_by_key(|r| r.action.execution_order());
    // Intents first, all of them in one transaction, before any effect: each is then applied
    // with its audit entry in a transaction of its own. (A crash in between leaves them
    // `executing`, which the next cycle finishes.)
    let mut intended = Vec::with_capacity(ready.len());
    let mut tx = store.begin().await?;
    // (Signatures are checked just before each effect; a remediation whose signature fails
    // goes from `executing` to `refused` with nothing applied.)
    for mut r in ready {
        if write_intent(&mut tx, &r, now).await? {
            r.status = Status::Executing;
            intended.push(r);
        } else {
            out.results.push((r, Outcome::Retry(TAKEN.into())));
        }
    }
    tx.commit().await.map_err(StoreError::from)?;
    faults::point("intents");
    faults::stall("intents").await;
    let all: Vec<Remediation> = work.into_iter().chain(intended).collect();
    for group in all.chunks(GROUP) {
        match execute_group(store, registry.as_ref(), key, group, now).await? {
            Some(outcomes) => out.results.extend(group.iter().cloned().zip(outcomes)),
            None => {
                for r in group {
                    let outcome = execute_one(store, registry.as_ref(), key, r, now).await?;
                    out.results.push((r.clone(), outcome));
                }
            }
        }
    }
    if out
        .results
        .iter()
        .any(|(_, o)| matches!(o, Outcome::Executed { changed: true }))
    {
        out.published = registry
            .publish()
            .await
            .map_err(|e| e.to_string())
            .transpose();
    }
    Ok(out)
}

pub(crate) async fn execute_one<R: Registry>(
    store: &Store,
    registry: &R,
    key: &KeyPair,
    r: &Remediation,
    now: i64,
) -> Result<Outcome, ExecuteError> {
    let entry = |kind: crate::model::AuditKind, detail: serde_json::Value| {
        NewEntry::about(r, now, kind, detail)
    };
    if !verify_hex(&key.public(), &r.signing_bytes(), &r.signature) {
        let mut tx = store.begin().await?;
        if remediations::transition(
            &mut tx,
            &r.id,
            r.status,
            Status::Refused,
            "the daemon's signature does not verify",
            None,
            now,
        )
        .await?
        {
            audit::append(
                &mut tx,
                key,
                entry(
                    crate::model::AuditKind::RemediationRefused,
                    serde_json::json!({"policy": r.policy, "action": r.action.as_str(), "reason": "bad signature"}),
                ),
            )
            .await?;
        }
        tx.commit().await.map_err(StoreError::from)?;
        return Ok(Outcome::Refused);
    }
    if r.action == Action::Notify && r.params.get("change").is_none() {
        return queue_notice(store, key, r, now).await;
    }
    let change = match change_for(r) {
        Ok(c) => c,
        Err(reason) => {
            let mut tx = store.begin().await?;
            remediations::transition(&mut tx, &r.id, r.status, Status::Failed, &reason, None, now)
                .await?;
            tx.commit().await.map_err(StoreError::from)?;
            return Ok(Outcome::Failed(reason));
        }
    };
    // The intent, committed on its own before any effect.
    if r.status == Status::Ready {
        let mut tx = store.begin().await?;
        let moved = write_intent(&mut tx, r, now).await?;
        tx.commit().await.map_err(StoreError::from)?;
        if !moved {
            return Ok(Outcome::Retry(TAKEN.into()));
        }
    }
    // The effect, its audit entry and the outcome, together.
    let mut tx = store.begin().await?;
    let applied = match registry.apply(&mut tx, &change, now).await {
        Ok(a) => a,
        Err(RegistryError::NotFound { what, name }) => {
            drop(tx);
            let reason = format!("no such {what} `{name}`");
            let mut tx = store.begin().await?;
            remediations::transition(
                &mut tx,
                &r.id,
                Status::Executing,
                Status::Failed,
                &reason,
                None,
                now,
            )
            .await?;
            audit::append(
                &mut tx,
                key,
                entry(
                    crate::model::AuditKind::RemediationFailed,
                    serde_json::json!({"policy": r.policy, "action": r.action.as_str(), "reason": reason}),
                ),
            )
            .await?;
            tx.commit().await.map_err(StoreError::from)?;
            return Ok(Outcome::Failed(reason));
        }
        Err(e) => return Ok(Outcome::Retry(e.to_string())),
    };
    record_applied(&mut tx, key, r, &change, &applied, now).await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(Outcome::Executed {
        changed: applied.changed,
    })
}

/// An audit entry of the daemon about `r`.
/// Writes remediation `r`'s intent (`ready` -> `executing`) in the caller's transaction;
/// false when another executor took it first.
async fn write_intent(
    conn: &mut crate::knowledge::Conn,
    r: &Remediation,
    now: i64,
) -> Result<bool, StoreError> {
    remediations::transition(
        conn,
        &r.id,
        Status::Ready,
        Status::Executing,
        "intent written",
        None,
        now,
    )
    .await
}
/// After the registry applied `change`: the audit entry, the outcome with its inverse, and the
/// verification's due time, in the caller's transaction.
async fn record_applied(
    tx: &mut crate::knowledge::Conn,
    key: &KeyPair,
    r: &Remediation,
    change: &Change,
    applied: &crate::registry::Applied,
    now: i64,
) -> Result<(), ExecuteError> {
    // A remediation that changed nothing has nothing to undo: its recorded inverse is null.
    let inverse = if applied.changed && change.reversible() {
        serde_json::to_value(&applied.inverse).unwrap_or_default()
    } else {
        serde_json::Value::Null
    };
    audit::append(
        tx,
        key,
        NewEntry::about(
            r,
            now,
            crate::model::AuditKind::RemediationExecuted,
            serde_json::json!({
                "policy": r.policy,
                "action": r.action.as_str(),
                "finding": r.finding_id,
                "changed": applied.changed,
                "inverse": inverse,
            }),
        ),
    )
    .await?;
    let reason = if applied.changed {
        APPLIED
    } else {
        "already in effect: nothing changed"
    };
    remediations::transition(
        tx,
        &r.id,
        Status::Executing,
        Status::Executed,
        reason,
        Some(&inverse),
        now,
    )
    .await?;
    if let (Some(after), Some(_)) = (r.verify_after_ms, &r.finding_id) {
        standing::schedule_verification(tx, &r.id, now.saturating_add(after)).await?;
    }
    Ok(())
}

/// Applies a group of remediations in one transaction (each with its audit entry and outcome,
/// as one at a time would); None, with nothing applied, when one of them cannot go the common
/// way (a bad signature, a notice, a registry error): the caller then takes them one by one.
async fn execute_group<R: Registry>(
    store: &Store,
    registry: &R,
    key: &KeyPair,
    group: &[Remediation],
    now: i64,
) -> Result<Option<Vec<Outcome>>, ExecuteError> {
    let mut tx = store.begin().await?;
    let mut out = Vec::with_capacity(group.len());
    for r in group {
        if r.status != Status::Executing
            || r.action == Action::Notify
            || !verify_hex(&key.public(), &r.signing_bytes(), &r.signature)
        {
            return Ok(None);
        }
        let Ok(change) = change_for(r) else {
            return Ok(None);
        };
        let Ok(applied) = registry.apply(&mut tx, &change, now).await else {
            return Ok(None);
        };
        record_applied(&mut tx, key, r, &change, &applied, now).await?;
        out.push(Outcome::Executed {
            changed: applied.changed,
        });
    }
    faults::point("before_commit");
    tx.commit().await.map_err(StoreError::from)?;
    faults::point("after_commit");
    Ok(Some(out))
}

/// The JSON a `notify` remediation posts: what happened, to what, and why.
pub fn notice_body(
    r: &Remediation,
    finding: Option<&crate::knowledge::findings::Finding>,
    now: i64,
) -> String {
    serde_json::json!({
        "source": "mapek",
        "remediation": r.id,
        "policy": r.policy,
        "subject": r.subject.to_string(),
        "at": crate::clock::rfc3339(now),
        "message": r.params.get("message").cloned().unwrap_or(serde_json::Value::Null),
        "finding": finding.map(|f| serde_json::json!({
            "id": f.id,
            "kind": f.kind.as_str(),
            "severity": f.severity.as_str(),
            "message": f.message,
            "labels": f.labels,
        })),
    })
    .to_string()
}

/// `notify`: the notice goes into the outbox with the remediation's outcome and audit entry,
/// in one transaction; the notifier delivers it later, so a dead webhook never blocks the loop.
async fn queue_notice(
    store: &Store,
    key: &KeyPair,
    r: &Remediation,
    now: i64,
) -> Result<Outcome, ExecuteError> {
    let finding = match &r.finding_id {
        Some(id) => store.finding(id).await?,
        None => None,
    };
    let url = r.params.get("webhook").and_then(|v| v.as_str());
    let body = notice_body(r, finding.as_ref(), now);
    let mut tx = store.begin().await?;
    if r.status == Status::Ready && !write_intent(&mut tx, r, now).await? {
        return Ok(Outcome::Retry(TAKEN.into()));
    }
    outbox::enqueue(&mut tx, &r.id, url, &body, now).await?;
    audit::append(
        &mut tx,
        key,
        NewEntry::about(
            r,
            now,
            crate::model::AuditKind::RemediationExecuted,
            serde_json::json!({
                "policy": r.policy,
                "action": r.action.as_str(),
                "finding": r.finding_id,
                "changed": true,
                "inverse": null,
                "notice": { "webhook": url.unwrap_or("(notify_webhook)"), "queued": true },
            }),
        ),
    )
    .await?;
    remediations::transition(
        &mut tx,
        &r.id,
        Status::Executing,
        Status::Executed,
        "notice queued for delivery",
        Some(&serde_json::Value::Null),
        now,
    )
    .await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(Outcome::Executed { changed: true })
}
