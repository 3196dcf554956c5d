//! Compaction on a schedule: resolved findings, old telemetry and reports, and delivered notices are removed; the audit log and remediations never are.

use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;
use sqlx::Executor;

use super::{Store, StoreError};

/// What is kept, and when compaction runs (`[retention]` in the configuration).
#[derive(Debug, Clone)]
pub struct RetentionSettings {
    /// When compaction runs (cron: sec min hour day-of-month month day-of-week, UTC).
    pub schedule: cron::Schedule,
    /// Resolved findings are removed this long after they resolved.
    pub resolved_findings: Duration,
    /// Delivered or given-up notices are removed this long after their last try.
    pub notices: Duration,
}

pub const DEFAULT_SCHEDULE: &str = "0 30 3 * * *";

impl Default for RetentionSettings {
    fn default() -> Self {
        Self {
            schedule: cron::Schedule::from_str(DEFAULT_SCHEDULE)
                .expect("the default schedule parses"),
            resolved_findings: Duration::from_secs(90 * 86_400),
            notices: Duration::from_secs(30 * 86_400),
        }
    }
}

impl RetentionSettings {
    /// The next run strictly after `now` (ms), if the schedule has one.
    pub fn next_after(&self, now: i64) -> Option<i64> {
        let at = chrono::DateTime::from_timestamp_millis(now)?;
        self.schedule
            .after(&at)
            .next()
            .map(|t| t.timestamp_millis())
    }
}

/// Rows removed by one compaction.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Compacted {
    pub resolved_findings: u64,
    pub notices: u64,
    pub telemetry_rows: u64,
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Store {
    /// Removes resolved findings and finished notices older than the settings keep (telemetry
    /// is pruned by `prune_telemetry`). Findings of remediations still waiting or due for
    /// verification are kept.
    pub async fn compact(
        &self,
        settings: &RetentionSettings,
        now: i64,
    ) -> Result<Compacted, StoreError> {
        let mut tx = self.begin().await?;
        let resolved_findings = tx
            .execute(
                sqlx::query(
                    "DELETE FROM findings WHERE state = 'resolved' AND resolved_at < $1 \
                     AND id NOT IN (SELECT finding_id FROM remediations WHERE finding_id IS NOT NULL \
                       AND (status IN ('pending', 'ready', 'executing') \
                         OR (status = 'executed' AND verify_at IS NOT NULL AND verdict IS NULL)))",
                )
                .bind(now.saturating_sub(ms(settings.resolved_findings))),
            )
            .await?
            .rows_affected();
        let notices = tx
            .execute(
                sqlx::query("DELETE FROM outbox WHERE status <> 'pending' AND updated_at < $1")
                    .bind(now.saturating_sub(ms(settings.notices))),
            )
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(Compacted {
            resolved_findings,
            notices,
            telemetry_rows: 0,
        })
    }
}
