//! Remediations as stored: what the planner decided, signed, and where each one is in its life.

use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::{Executor, Row};

use super::{Conn, Store, StoreError};
use crate::model::{Action, Gate, Mode, Subject, Verification};

/// Where a remediation is. `Ready` waits for the executor; `Executing` means the intent is written
/// and the effect has not committed yet.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    serde::Deserialize,
    strum::Display,
    strum::EnumString,
    strum::IntoStaticStr,
    strum::VariantArray,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Status {
    Ready,
    Executing,
    Executed,
    DryRun,
    Pending,
    Suppressed,
    Superseded,
    Refused,
    Failed,
    Abandoned,
    Expired,
    /// Undone by `mapek rollback`: its inverse was applied as a remediation of its own.
    RolledBack,
}
crate::model::vocabulary::words!(Status);

#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Remediation {
    pub id: String,
    pub idempotency_key: String,
    pub finding_id: Option<String>,
    pub policy: String,
    pub action: Action,
    pub params: serde_json::Value,
    pub subject: Subject,
    /// The policy's mode when planned.
    pub mode: Mode,
    pub status: Status,
    pub reason: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub signature: String,
    pub inverse: Option<serde_json::Value>,
    /// The gate that stopped or holds it (`window`, `cooldown`, `approval`, ...); None once past every gate.
    pub gate: Option<Gate>,
    /// While it waits for approvals: when it expires.
    pub expires_at: Option<i64>,
    /// Which attempt of its policy on its finding this is (1 for the first).
    pub attempt: i64,
    /// The policy's `verify_after` when planned: executed, it is checked again this long after.
    pub verify_after_ms: Option<i64>,
    /// When the executor applied it and it waits for verification: when it is due.
    pub verify_at: Option<i64>,
    /// What verification found.
    pub verdict: Option<Verification>,
}

/// The fields the daemon signs, in a fixed order (serde_json keeps struct order and sorts maps).
#[derive(Serialize)]
struct Signed<'a> {
    id: &'a str,
    idempotency_key: &'a str,
    finding_id: Option<&'a str>,
    policy: &'a str,
    action: &'a str,
    params: &'a serde_json::Value,
    package: &'a str,
    version: Option<&'a str>,
    mode: &'a str,
    created_at: i64,
}

impl Remediation {
    /// The canonical bytes the daemon's signature covers.
    pub fn signing_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(&Signed {
            id: &self.id,
            idempotency_key: &self.idempotency_key,
            finding_id: self.finding_id.as_deref(),
            policy: &self.policy,
            action: self.action.as_str(),
            params: &self.params,
            package: &self.subject.package,
            version: self.subject.version.as_deref(),
            mode: self.mode.as_str(),
            created_at: self.created_at,
        })
        .unwrap_or_default()
    }
}

pub(super) const COLUMNS: &str =
    "id, idempotency_key, finding_id, policy, action, params, package, version, \
    mode, status, reason, created_at, updated_at, signature, inverse, gate, expires_at, attempt, \
    verify_after_ms, verify_at, verdict";

/// A column holding one of the vocabulary's words; another value is a corrupt row.
fn word<T: std::str::FromStr>(row: &AnyRow, column: &str) -> Result<T, StoreError> {
    let v: String = row.try_get(column)?;
    v.parse()
        .map_err(|_| StoreError::Corrupt(format!("remediation {column} `{v}`")))
}

/// A nullable column holding one of the vocabulary's words.
fn maybe_word<T: std::str::FromStr>(row: &AnyRow, column: &str) -> Result<Option<T>, StoreError> {
    let v: Option<String> = row.try_get(column)?;
    v.map(|v| {
        v.parse()
            .map_err(|_| StoreError::Corrupt(format!("remediation {column} `{v}`")))
    })
    .transpose()
}

pub(super) fn decode_row(row: &AnyRow) -> Result<Remediation, StoreError> {
    let corrupt = |what: &str, v: &str| StoreError::Corrupt(format!("remediation {what} `{v}`"));
    let action: String = row.try_get("action")?;
    let status: String = row.try_get("status")?;
    let params: String = row.try_get("params")?;
    let inverse: Option<String> = row.try_get("inverse")?;
    Ok(Remediation {
        id: row.try_get("id")?,
        idempotency_key: row.try_get("idempotency_key")?,
        finding_id: row.try_get("finding_id")?,
        policy: row.try_get("policy")?,
        action: Action::parse(&action).ok_or_else(|| corrupt("action", &action))?,
        params: serde_json::from_str(&params).map_err(|_| corrupt("params", &params))?,
        subject: Subject {
            package: row.try_get("package")?,
            version: row.try_get("version")?,
        },
        mode: word(row, "mode")?,
        status: Status::parse(&status).ok_or_else(|| corrupt("status", &status))?,
        reason: row.try_get("reason")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        signature: row.try_get("signature")?,
        inverse: match inverse {
            Some(s) => Some(serde_json::from_str(&s).map_err(|_| corrupt("inverse", &s))?),
            None => None,
        },
        gate: maybe_word(row, "gate")?,
        expires_at: row.try_get("expires_at")?,
        attempt: row.try_get("attempt")?,
        verify_after_ms: row.try_get("verify_after_ms")?,
        verify_at: row.try_get("verify_at")?,
        verdict: maybe_word(row, "verdict")?,
    })
}

impl Store {
    pub async fn remediation(&self, id: &str) -> Result<Option<Remediation>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM remediations WHERE id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(decode_row).transpose()
    }

    pub async fn remediations_with_status(
        &self,
        status: Status,
    ) -> Result<Vec<Remediation>, StoreError> {
        let sql =
            format!("SELECT {COLUMNS} FROM remediations WHERE status = $1 ORDER BY created_at, id");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(status.as_str())
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(decode_row).collect()
    }

    /// Every remediation planned for a finding, oldest first (for `mapek explain`).
    pub async fn remediations_of_finding(
        &self,
        finding_id: &str,
    ) -> Result<Vec<Remediation>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM remediations WHERE finding_id = $1 ORDER BY created_at, id"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(finding_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(decode_row).collect()
    }

    /// Remediations created at or after `since`, oldest first (for `mapek replay`).
    pub async fn remediations_since(&self, since: i64) -> Result<Vec<Remediation>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM remediations WHERE created_at >= $1 ORDER BY created_at, id"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(since)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(decode_row).collect()
    }

    pub async fn recent_remediations(&self, limit: i64) -> Result<Vec<Remediation>, StoreError> {
        let sql =
            format!("SELECT {COLUMNS} FROM remediations ORDER BY created_at DESC, id LIMIT $1");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(decode_row).collect()
    }

    /// Counts by status, for `mapek status`.
    /// Open findings handled by a remediation in force: an executed quarantine or yank (not
    /// rolled back) of the finding's release, or a quarantine of its whole package, took what it
    /// is about out of users' reach, though the condition itself (a tampered artifact, say)
    /// still holds. Whichever finding that remediation answered: a superseded finding on the
    /// same release is handled too. Finding id to remediation id; `only` narrows it to one.
    pub async fn handled_findings(
        &self,
        only: Option<&str>,
    ) -> Result<std::collections::HashMap<String, String>, StoreError> {
        let rows = sqlx::query(
            "SELECT f.id, MIN(r.id) FROM findings f JOIN remediations r \
               ON r.package = f.package AND (r.version = f.version OR r.version IS NULL) \
             WHERE f.state <> 'resolved' AND ($1 IS NULL OR f.id = $1) \
               AND r.status = 'executed' AND r.action IN ('quarantine', 'yank') \
             GROUP BY f.id",
        )
        .bind(only)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    pub async fn remediation_counts(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT status, COUNT(*) FROM remediations GROUP BY status ORDER BY status",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }
}

/// Inserts a remediation unless one with the same idempotency key exists; true when inserted.
pub async fn insert(conn: &mut Conn, r: &Remediation) -> Result<bool, StoreError> {
    let sql = format!(
        "INSERT INTO remediations ({COLUMNS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17,$18,$19,$20,$21) \
         ON CONFLICT (idempotency_key) DO NOTHING"
    );
    let done = conn
        .execute(
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(r.id.clone())
                .bind(r.idempotency_key.clone())
                .bind(r.finding_id.clone())
                .bind(r.policy.clone())
                .bind(r.action.as_str())
                .bind(r.params.to_string())
                .bind(r.subject.package.clone())
                .bind(r.subject.version.clone())
                .bind(r.mode.as_str())
                .bind(r.status.as_str())
                .bind(r.reason.clone())
                .bind(r.created_at)
                .bind(r.updated_at)
                .bind(r.signature.clone())
                .bind(r.inverse.as_ref().map(|v| v.to_string()))
                .bind(r.gate.map(Gate::as_str))
                .bind(r.expires_at)
                .bind(r.attempt)
                .bind(r.verify_after_ms)
                .bind(r.verify_at)
                .bind(r.verdict.map(Verification::as_str)),
        )
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Moves a remediation from `from` to `to`; false if it was not in `from` (someone else moved it).
pub async fn transition(
    conn: &mut Conn,
    id: &str,
    from: Status,
    to: Status,
    reason: &str,
    inverse: Option<&serde_json::Value>,
    now: i64,
) -> Result<bool, StoreError> {
    let done = conn
        .execute(
            sqlx::query(
                "UPDATE remediations SET status = $3, reason = $4, \
                 inverse = COALESCE($5, inverse), updated_at = $6 WHERE id = $1 AND status = $2",
            )
            .bind(id.to_string())
            .bind(from.as_str())
            .bind(to.as_str())
            .bind(reason.to_string())
            .bind(inverse.map(|v| v.to_string()))
            .bind(now),
        )
        .await?;
    Ok(done.rows_affected() == 1)
}

/// A remediation that acted (or is about to): what rate limits, cooldowns and guards count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acted {
    pub policy: String,
    pub subject: Subject,
    pub at: i64,
    /// A `notify`: counted by its policy's cooldown and rate limit, not by the global guards.
    pub notice: bool,
}

impl Store {
    /// Remediations ready, executing or executed since `since`, oldest first.
    pub async fn acted_since(&self, since: i64) -> Result<Vec<Acted>, StoreError> {
        let rows = sqlx::query(
            "SELECT policy, package, version, updated_at, action FROM remediations \
             WHERE status IN ('ready', 'executing', 'executed') AND updated_at >= $1 \
             ORDER BY updated_at, id",
        )
        .bind(since)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Acted {
                    policy: r.try_get(0)?,
                    subject: Subject {
                        package: r.try_get(1)?,
                        version: r.try_get(2)?,
                    },
                    at: r.try_get(3)?,
                    notice: r.try_get::<String, _>(4)? == "notify",
                })
            })
            .collect()
    }
}

/// A new verdict on a waiting remediation: its status, the gate, the reason and the expiry.
pub async fn regate(
    conn: &mut Conn,
    r: &Remediation,
    from: Status,
    now: i64,
) -> Result<bool, StoreError> {
    let done = conn
        .execute(
            sqlx::query(
                "UPDATE remediations SET status = $3, reason = $4, gate = $5, expires_at = $6, \
                 updated_at = $7 WHERE id = $1 AND status = $2",
            )
            .bind(r.id.clone())
            .bind(from.as_str())
            .bind(r.status.as_str())
            .bind(r.reason.clone())
            .bind(r.gate.map(Gate::as_str))
            .bind(r.expires_at)
            .bind(now),
        )
        .await?;
    Ok(done.rows_affected() == 1)
}
