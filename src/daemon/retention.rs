//! The retention task: at each time of the configured cron schedule, compacts telemetry, reports, resolved findings and finished notices, and records what it removed in the audit log (which is never compacted).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Runtime;
use crate::knowledge::audit::{self, NewEntry};
use crate::knowledge::retention::Compacted;
use crate::knowledge::StoreError;

/// One compaction, as the schedule runs it.
pub async fn compact_once(rt: &Runtime, now: i64) -> Result<Compacted, StoreError> {
    let t = rt.retention;
    let telemetry_rows = rt
        .store
        .prune_telemetry(now - t.minutes_ms, now - t.hours_ms, now - t.reports_ms)
        .await?;
    let mut done = rt.store.compact(&rt.compaction, now).await?;
    done.telemetry_rows = telemetry_rows;
    let mut tx = rt.store.begin().await?;
    audit::append(
        &mut tx,
        &rt.key,
        NewEntry {
            at: now,
            kind: crate::model::AuditKind::RetentionCompacted,
            actor: "daemon".into(),
            subject: "*".into(),
            remediation_id: None,
            detail: serde_json::to_value(&done).unwrap_or_default(),
        },
    )
    .await?;
    tx.commit().await?;
    Ok(done)
}

pub async fn retention_task(rt: Arc<Runtime>, stop: CancellationToken) {
    loop {
        let now = rt.clock.now_ms();
        let Some(next) = rt.compaction.next_after(now) else {
            tracing::warn!("the retention schedule has no future time: compaction stops");
            break;
        };
        let wait = Duration::from_millis((next - now).max(0) as u64);
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
        }
        match compact_once(&rt, rt.clock.now_ms()).await {
            Ok(c) => tracing::info!(
                resolved_findings = c.resolved_findings,
                notices = c.notices,
                telemetry_rows = c.telemetry_rows,
                "compacted"
            ),
            Err(error) => {
                rt.metrics
                    .stage_errors
                    .with_label_values(&["retention"])
                    .inc();
                tracing::error!(%error, "compaction failed; it runs again at the next scheduled time");
            }
        }
    }
}
