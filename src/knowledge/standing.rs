//! What verification and learning keep: findings handed to a policy for another attempt, remediations due for verification, and each policy's standing and outcomes.

use std::collections::{HashMap, HashSet};

use serde::Serialize;
use sqlx::{Executor, Row};

use super::remediations::{decode_row, Remediation, COLUMNS};
use super::{Conn, Store, StoreError};

/// How a policy's remediations turned out, counted since its standing was last reset.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Outcomes {
    pub policy: String,
    /// Applied (and not rolled back since).
    pub executed: i64,
    /// Verified: their finding cleared. Without `verify_after`, a quarantine or yank in force
    /// (executed, not rolled back) counts: it handles its finding by taking the subject out of
    /// users' reach.
    pub effective: i64,
    /// Verified: their finding had not cleared.
    pub failed_verification: i64,
    /// Undone by a person with `mapek rollback`.
    pub rolled_back: i64,
    /// Lost to a higher-priority policy on the same subject.
    pub superseded: i64,
    /// Demoted to dry run, and why; None while it may act.
    pub demoted: Option<String>,
}

impl Outcomes {
    /// Remediations whose fate says something about the policy: verified either way, or
    /// rolled back.
    pub fn judged(&self) -> i64 {
        self.effective + self.failed_verification + self.rolled_back
    }
    pub fn bad(&self) -> i64 {
        self.failed_verification + self.rolled_back
    }
}

impl Store {
    /// Firing findings handed back to a policy by verification, not yet planned again:
    /// finding id -> (policy, attempts it already made).
    pub async fn handovers(&self) -> Result<HashMap<String, (String, i64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, handed_to, attempt FROM findings \
             WHERE state = 'firing' AND plan_state = 'new' AND handed_to IS NOT NULL",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, (r.try_get(1)?, r.try_get(2)?))))
            .collect()
    }

    /// Packages the daemon gave up on: a firing `policy_ineffective` finding holds them.
    pub async fn held_packages(&self) -> Result<HashSet<String>, StoreError> {
        let rows = sqlx::query(
            "SELECT package FROM findings \
             WHERE kind = 'policy_ineffective' AND state = 'firing' AND package <> '*'",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
    }

    /// Executed remediations whose verification is due at `now`, oldest first.
    pub async fn due_verifications(&self, now: i64) -> Result<Vec<Remediation>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM remediations WHERE status = 'executed' AND verdict IS NULL \
             AND verify_at IS NOT NULL AND verify_at <= $1 ORDER BY verify_at, id"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(now)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(decode_row).collect()
    }

    /// When the next executed remediation is due for verification, if any is waiting.
    pub async fn next_verification(&self) -> Result<Option<i64>, StoreError> {
        let row = sqlx::query(
            "SELECT MIN(verify_at) FROM remediations WHERE status = 'executed' \
             AND verdict IS NULL AND verify_at IS NOT NULL",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get(0)?)
    }

    /// Policies demoted to dry run.
    pub async fn demoted_policies(&self) -> Result<HashSet<String>, StoreError> {
        let rows = sqlx::query("SELECT policy FROM policy_standing WHERE demoted_at IS NOT NULL")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
    }

    /// Every policy's outcomes over remediations created since `since` (and since its standing
    /// was last reset), by policy id. Rollbacks themselves are not a policy's.
    pub async fn policy_outcomes(&self, since: i64) -> Result<Vec<Outcomes>, StoreError> {
        let rows = sqlx::query(
            "SELECT r.policy, \
               SUM(CASE WHEN r.status = 'executed' THEN 1 ELSE 0 END), \
               SUM(CASE WHEN r.verdict = 'effective' OR (r.verify_after_ms IS NULL \
                 AND r.status = 'executed' AND r.action IN ('quarantine', 'yank')) \
                 THEN 1 ELSE 0 END), \
               SUM(CASE WHEN r.verdict = 'ineffective' THEN 1 ELSE 0 END), \
               SUM(CASE WHEN r.status = 'rolled_back' THEN 1 ELSE 0 END), \
               SUM(CASE WHEN r.status = 'superseded' THEN 1 ELSE 0 END) \
             FROM remediations r LEFT JOIN policy_standing s ON s.policy = r.policy \
             WHERE r.created_at >= $1 AND r.created_at >= COALESCE(s.counted_from, 0) \
               AND r.policy <> 'rollback' \
             GROUP BY r.policy ORDER BY r.policy",
        )
        .bind(since)
        .fetch_all(&self.pool)
        .await?;
        let demoted: HashMap<String, String> =
            sqlx::query("SELECT policy, reason FROM policy_standing WHERE demoted_at IS NOT NULL")
                .fetch_all(&self.pool)
                .await?
                .iter()
                .map(|r| {
                    Ok((
                        r.try_get(0)?,
                        r.try_get::<Option<String>, _>(1)?.unwrap_or_default(),
                    ))
                })
                .collect::<Result<_, StoreError>>()?;
        let mut out: Vec<Outcomes> = rows
            .iter()
            .map(|r| {
                let policy: String = r.try_get(0)?;
                Ok(Outcomes {
                    demoted: demoted.get(&policy).cloned(),
                    policy,
                    executed: r.try_get(1)?,
                    effective: r.try_get(2)?,
                    failed_verification: r.try_get(3)?,
                    rolled_back: r.try_get(4)?,
                    superseded: r.try_get(5)?,
                })
            })
            .collect::<Result<_, StoreError>>()?;
        // A demoted policy with nothing counted in the period is still shown.
        for (policy, reason) in demoted {
            if !out.iter().any(|o| o.policy == policy) {
                out.push(Outcomes {
                    policy,
                    demoted: Some(reason),
                    ..Outcomes::default()
                });
            }
        }
        out.sort_by(|a, b| a.policy.cmp(&b.policy));
        Ok(out)
    }
}

/// Hands a firing finding to `policy` for another attempt: the planner takes it up again.
pub async fn hand_over(
    conn: &mut Conn,
    finding: &str,
    policy: &str,
    attempts: i64,
) -> Result<(), StoreError> {
    conn.execute(
        sqlx::query(
            "UPDATE findings SET handed_to = $2, attempt = $3, plan_state = 'new' WHERE id = $1",
        )
        .bind(finding.to_string())
        .bind(policy.to_string())
        .bind(attempts),
    )
    .await?;
    Ok(())
}

/// Every attempt failed: the planner does not take the finding up again.
pub async fn exhaust(conn: &mut Conn, finding: &str) -> Result<(), StoreError> {
    conn.execute(
        sqlx::query(
            "UPDATE findings SET handed_to = NULL, attempt = 0, plan_state = 'exhausted' WHERE id = $1",
        )
        .bind(finding.to_string()),
    )
    .await?;
    Ok(())
}

/// Records verification's verdict on an executed remediation (its `updated_at` stays the time
/// it executed: rate limits and cooldowns count from that).
pub async fn set_verdict(
    conn: &mut Conn,
    id: &str,
    verdict: crate::model::Verification,
) -> Result<(), StoreError> {
    conn.execute(
        sqlx::query("UPDATE remediations SET verdict = $2 WHERE id = $1")
            .bind(id.to_string())
            .bind(verdict.as_str()),
    )
    .await?;
    Ok(())
}

/// Schedules an executed remediation's verification.
pub async fn schedule_verification(conn: &mut Conn, id: &str, at: i64) -> Result<(), StoreError> {
    conn.execute(
        sqlx::query("UPDATE remediations SET verify_at = $2 WHERE id = $1")
            .bind(id.to_string())
            .bind(at),
    )
    .await?;
    Ok(())
}

/// Findings held while their package was given up on go back to the planner.
pub async fn release_held(conn: &mut Conn, package: &str) -> Result<u64, StoreError> {
    Ok(conn
        .execute(
            sqlx::query(
                "UPDATE findings SET plan_state = 'new' \
                 WHERE package = $1 AND plan_state = 'held' AND state = 'firing'",
            )
            .bind(package.to_string()),
        )
        .await?
        .rows_affected())
}

/// Demotes a policy to dry run.
pub async fn demote(
    conn: &mut Conn,
    policy: &str,
    reason: &str,
    now: i64,
) -> Result<(), StoreError> {
    conn.execute(
        sqlx::query(
            "INSERT INTO policy_standing (policy, demoted_at, reason, counted_from) \
             VALUES ($1, $2, $3, 0) \
             ON CONFLICT (policy) DO UPDATE SET demoted_at = $2, reason = $3",
        )
        .bind(policy.to_string())
        .bind(now)
        .bind(reason.to_string()),
    )
    .await?;
    Ok(())
}

/// A maintainer re-enables a policy: it may act again, and its outcomes count afresh from now.
pub async fn enable(conn: &mut Conn, policy: &str, now: i64) -> Result<bool, StoreError> {
    let done = conn
        .execute(
            sqlx::query(
                "UPDATE policy_standing SET demoted_at = NULL, reason = NULL, counted_from = $2 \
                 WHERE policy = $1 AND demoted_at IS NOT NULL",
            )
            .bind(policy.to_string())
            .bind(now),
        )
        .await?;
    Ok(done.rows_affected() == 1)
}
