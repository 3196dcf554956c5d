//! Findings as stored: one row per episode of a condition, deduplicated by fingerprint.

use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::{Executor, Row};

use super::{Conn, Store, StoreError};
use crate::model::{FindingKind, Severity, Subject};

/// pending (condition holds, not yet for its `for`) -> firing -> resolved (clear for `keep_firing_for`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingState {
    Pending,
    Firing,
    Resolved,
}

impl FindingState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Firing => "firing",
            Self::Resolved => "resolved",
        }
    }
    fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(Self::Pending),
            "firing" => Some(Self::Firing),
            "resolved" => Some(Self::Resolved),
            _ => None,
        }
    }
}

/// Whether the planner has looked at a firing finding yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlanState {
    New,
    Planned,
    Unmatched,
    /// Its package is held: the daemon gave up on it and waits for a person.
    Held,
    /// Every attempt and escalation failed verification: the daemon acts on it no more.
    Exhausted,
}

impl PlanState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::New => "new",
            Self::Planned => "planned",
            Self::Unmatched => "unmatched",
            Self::Held => "held",
            Self::Exhausted => "exhausted",
        }
    }
    fn parse(s: &str) -> Option<Self> {
        match s {
            "new" => Some(Self::New),
            "planned" => Some(Self::Planned),
            "unmatched" => Some(Self::Unmatched),
            "held" => Some(Self::Held),
            "exhausted" => Some(Self::Exhausted),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Finding {
    pub id: String,
    pub fingerprint: String,
    pub kind: FindingKind,
    pub severity: Severity,
    pub subject: Subject,
    pub state: FindingState,
    pub value: f64,
    pub message: String,
    pub labels: serde_json::Map<String, serde_json::Value>,
    pub first_seen: i64,
    pub fired_at: Option<i64>,
    pub last_seen: i64,
    pub cleared_at: Option<i64>,
    pub resolved_at: Option<i64>,
    pub plan_state: PlanState,
}

impl Finding {
    /// A finding the daemon raises about itself or its work (firing at once, never judged by
    /// the analyzer): an open circuit, a policy or remediation that did not help.
    pub fn raised(
        kind: FindingKind,
        subject: Subject,
        fingerprint: String,
        message: String,
        labels: serde_json::Map<String, serde_json::Value>,
        now: i64,
    ) -> Self {
        Finding {
            id: format!("{fingerprint}#{now}"),
            fingerprint,
            kind,
            severity: Severity::Critical,
            subject,
            state: FindingState::Firing,
            value: 1.0,
            message,
            labels,
            first_seen: now,
            fired_at: Some(now),
            last_seen: now,
            cleared_at: None,
            resolved_at: None,
            plan_state: PlanState::New,
        }
    }

    /// Resolves it now (a daemon-raised finding whose cause is gone, or that a person closed).
    pub fn resolve(&mut self, now: i64) {
        self.state = FindingState::Resolved;
        self.cleared_at = Some(now);
        self.resolved_at = Some(now);
        self.last_seen = now;
    }

    /// The identity of a condition on a subject: the same problem on the same release is one finding.
    pub fn fingerprint_of(kind: FindingKind, subject: &Subject) -> String {
        format!("{}:{}", kind.as_str(), subject)
    }
}

const COLUMNS: &str = "id, fingerprint, kind, severity, package, version, state, value, message, \
    labels, first_seen, fired_at, last_seen, cleared_at, resolved_at, plan_state";

fn decode(row: &AnyRow) -> Result<Finding, StoreError> {
    let corrupt = |what: &str, v: &str| StoreError::Corrupt(format!("finding {what} `{v}`"));
    let kind: String = row.try_get("kind")?;
    let severity: String = row.try_get("severity")?;
    let state: String = row.try_get("state")?;
    let plan: String = row.try_get("plan_state")?;
    let labels: String = row.try_get("labels")?;
    Ok(Finding {
        id: row.try_get("id")?,
        fingerprint: row.try_get("fingerprint")?,
        kind: FindingKind::parse(&kind).ok_or_else(|| corrupt("kind", &kind))?,
        severity: Severity::parse(&severity).ok_or_else(|| corrupt("severity", &severity))?,
        subject: Subject {
            package: row.try_get("package")?,
            version: row.try_get("version")?,
        },
        state: FindingState::parse(&state).ok_or_else(|| corrupt("state", &state))?,
        value: row.try_get("value")?,
        message: row.try_get("message")?,
        labels: serde_json::from_str(&labels).map_err(|_| corrupt("labels", &labels))?,
        first_seen: row.try_get("first_seen")?,
        fired_at: row.try_get("fired_at")?,
        last_seen: row.try_get("last_seen")?,
        cleared_at: row.try_get("cleared_at")?,
        resolved_at: row.try_get("resolved_at")?,
        plan_state: PlanState::parse(&plan).ok_or_else(|| corrupt("plan_state", &plan))?,
    })
}

impl Store {
    /// Findings that are pending or firing.
    pub async fn open_findings(&self) -> Result<Vec<Finding>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM findings WHERE state <> 'resolved' ORDER BY id");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(decode).collect()
    }

    /// Open findings of one kind.
    pub async fn open_findings_of(&self, kind: FindingKind) -> Result<Vec<Finding>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM findings WHERE state <> 'resolved' AND kind = $1 ORDER BY id"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(kind.as_str())
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(decode).collect()
    }

    /// Firing findings the planner has not decided on yet.
    pub async fn unplanned_findings(&self) -> Result<Vec<Finding>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM findings WHERE state = 'firing' AND plan_state = 'new' ORDER BY id"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(decode).collect()
    }

    /// Findings that fired at or after `since`, oldest first (for `mapek replay`).
    pub async fn fired_since(&self, since: i64) -> Result<Vec<Finding>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM findings WHERE fired_at IS NOT NULL AND fired_at >= $1 ORDER BY fired_at, id"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(since)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(decode).collect()
    }

    /// All findings, newest first, for the CLI.
    pub async fn recent_findings(&self, limit: i64) -> Result<Vec<Finding>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM findings ORDER BY first_seen DESC, id LIMIT $1");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(decode).collect()
    }

    pub async fn finding(&self, id: &str) -> Result<Option<Finding>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM findings WHERE id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(decode).transpose()
    }

    /// After a policy change, findings no policy matched are looked at again.
    /// A new policy set (`digest`): firing findings no policy matched are planned again, and the
    /// digest noted, in one fenced transaction.
    pub async fn replan_unmatched(&self, digest: &str) -> Result<u64, StoreError> {
        let mut tx = self.begin().await?;
        let n = tx
            .execute(sqlx::query(
                "UPDATE findings SET plan_state = 'new' WHERE plan_state = 'unmatched' AND state = 'firing'",
            ))
            .await?
            .rows_affected();
        super::state::set_cursor(&mut tx, "plan.policy_digest", digest).await?;
        tx.commit().await?;
        Ok(n)
    }
}

pub async fn insert(conn: &mut Conn, f: &Finding) -> Result<(), StoreError> {
    let sql = format!(
        "INSERT INTO findings ({COLUMNS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16)"
    );
    conn.execute(
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(f.id.clone())
            .bind(f.fingerprint.clone())
            .bind(f.kind.as_str())
            .bind(f.severity.as_str())
            .bind(f.subject.package.clone())
            .bind(f.subject.version.clone())
            .bind(f.state.as_str())
            .bind(f.value)
            .bind(f.message.clone())
            .bind(serde_json::Value::Object(f.labels.clone()).to_string())
            .bind(f.first_seen)
            .bind(f.fired_at)
            .bind(f.last_seen)
            .bind(f.cleared_at)
            .bind(f.resolved_at)
            .bind(f.plan_state.as_str()),
    )
    .await?;
    Ok(())
}

/// Writes back a finding's lifecycle fields.
pub async fn update(conn: &mut Conn, f: &Finding) -> Result<(), StoreError> {
    conn.execute(
        sqlx::query(
            "UPDATE findings SET severity = $2, state = $3, value = $4, message = $5, labels = $6, \
             fired_at = $7, last_seen = $8, cleared_at = $9, resolved_at = $10, plan_state = $11 \
             WHERE id = $1",
        )
        .bind(f.id.clone())
        .bind(f.severity.as_str())
        .bind(f.state.as_str())
        .bind(f.value)
        .bind(f.message.clone())
        .bind(serde_json::Value::Object(f.labels.clone()).to_string())
        .bind(f.fired_at)
        .bind(f.last_seen)
        .bind(f.cleared_at)
        .bind(f.resolved_at)
        .bind(f.plan_state.as_str()),
    )
    .await?;
    Ok(())
}

pub async fn set_plan_state(conn: &mut Conn, id: &str, state: PlanState) -> Result<(), StoreError> {
    conn.execute(
        sqlx::query("UPDATE findings SET plan_state = $2 WHERE id = $1")
            .bind(id.to_string())
            .bind(state.as_str()),
    )
    .await?;
    Ok(())
}
