//! The notifier task: every few seconds, delivers the outbox's due notices beside the loop, so a slow or dead webhook never holds a cycle up.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Runtime;
use crate::execute::notify::{Delivery, Notifier};

/// How often the outbox is looked at.
const EVERY: Duration = Duration::from_secs(5);
/// Notices delivered per look, at most.
const BATCH: i64 = 20;

pub async fn notifier_task(rt: Arc<Runtime>, notifier: Arc<Notifier>, stop: CancellationToken) {
    let mut interval = tokio::time::interval(EVERY);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = interval.tick() => {}
        }
        let delivered = tokio::select! {
            _ = stop.cancelled() => break,
            d = notifier.deliver_due(&rt.store, &rt.key, rt.clock.now_ms(), BATCH) => d,
        };
        match delivered {
            Ok(done) => {
                for (n, d) in done {
                    let label = match &d {
                        Delivery::Delivered => "delivered",
                        Delivery::Retry { .. } => "retry",
                        Delivery::Failed { .. } => "failed",
                    };
                    rt.metrics.notices.with_label_values(&[label]).inc();
                    match d {
                        Delivery::Delivered => {
                            tracing::info!(remediation = %n.id, "notice delivered")
                        }
                        Delivery::Retry { error, next_at } => {
                            tracing::warn!(remediation = %n.id, %error, next = %crate::clock::rfc3339(next_at), "notice not delivered; tried again later")
                        }
                        Delivery::Failed { error } => {
                            tracing::error!(remediation = %n.id, %error, tries = n.tries + 1, "notice given up on")
                        }
                    }
                }
            }
            Err(error) => {
                rt.metrics.stage_errors.with_label_values(&["notify"]).inc();
                tracing::error!(%error, "the outbox cannot be read; tried again shortly");
            }
        }
    }
}
