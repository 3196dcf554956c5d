//! The notifier: delivers the outbox's notices to their webhooks with a timeout, retries with exponential backoff, and gives up after a bounded number of tries; it runs beside the loop, never in it.

use std::time::Duration;

use crate::keys::KeyPair;
use crate::knowledge::audit::{self, NewEntry};
use crate::knowledge::outbox::{self, Notice};
use crate::knowledge::{Store, StoreError};

/// How notices are delivered (`notify_*` in the configuration).
#[derive(Debug, Clone, PartialEq)]
pub struct NotifySettings {
    /// Where a `notify` without `params.webhook` posts; None: such notices fail with that reason.
    pub default_webhook: Option<String>,
    /// Each POST's limit, connecting included.
    pub timeout: Duration,
    /// Tries before a notice is given up on.
    pub max_tries: i64,
    /// The wait after the first failed try; doubled after each further one, at most an hour.
    pub first_backoff: Duration,
}

impl Default for NotifySettings {
    fn default() -> Self {
        Self {
            default_webhook: None,
            timeout: Duration::from_secs(10),
            max_tries: 8,
            first_backoff: Duration::from_secs(30),
        }
    }
}

impl NotifySettings {
    /// The wait after `tries` failed tries.
    pub fn backoff_ms(&self, tries: i64) -> i64 {
        let first = self.first_backoff.as_millis() as i64;
        let shift = tries.clamp(1, 20) - 1;
        first.saturating_mul(1 << shift).min(3_600_000)
    }
}

/// What one delivery attempt did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    Delivered,
    /// Failed; tried again at `next_at`.
    Retry {
        error: String,
        next_at: i64,
    },
    /// Failed for the last time.
    Failed {
        error: String,
    },
}

pub struct Notifier {
    client: reqwest::Client,
    pub settings: NotifySettings,
}

impl Notifier {
    pub fn new(settings: NotifySettings) -> Result<Self, String> {
        // reqwest is built without a TLS provider of its own: rustls with ring.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            .user_agent(concat!("mapek/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("the webhook client: {e}"))?;
        Ok(Self { client, settings })
    }

    async fn post(&self, n: &Notice) -> Result<(), String> {
        let url = n
            .url
            .as_deref()
            .or(self.settings.default_webhook.as_deref())
            .ok_or(
                "no webhook: the policy has no params.webhook and notify_webhook is not configured",
            )?;
        let response = self
            .client
            .post(url)
            .header("content-type", "application/json")
            .body(n.body.clone())
            .send()
            .await
            .map_err(|e| describe(&e))?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("HTTP {status}"))
        }
    }

    /// Delivers up to `limit` notices due at `now`; each outcome is recorded, and the last word
    /// on a notice (delivered, or given up) is audited.
    pub async fn deliver_due(
        &self,
        store: &Store,
        key: &KeyPair,
        now: i64,
        limit: i64,
    ) -> Result<Vec<(Notice, Delivery)>, StoreError> {
        let lease = (self.settings.timeout.as_millis() as i64).saturating_mul(2);
        let mut out = Vec::new();
        for n in store.claim_notices(now, lease, limit).await? {
            let nowhere = n.url.is_none() && self.settings.default_webhook.is_none();
            let delivery = match self.post(&n).await {
                Ok(()) => Delivery::Delivered,
                // No webhook is a configuration, not an outage: trying again cannot help. The
                // notice stays in the outbox (`mapek status`, the status page) as failed.
                Err(error) if nowhere || n.tries + 1 >= self.settings.max_tries => {
                    Delivery::Failed { error }
                }
                Err(error) => Delivery::Retry {
                    error,
                    next_at: now + self.settings.backoff_ms(n.tries + 1),
                },
            };
            let mut tx = store.begin().await?;
            let (status, next_at, error) = match &delivery {
                Delivery::Delivered => ("delivered", now, None),
                Delivery::Retry { error, next_at } => ("pending", *next_at, Some(error.as_str())),
                Delivery::Failed { error } => ("failed", now, Some(error.as_str())),
            };
            outbox::record_try(&mut tx, &n.id, status, next_at, error, now).await?;
            if status != "pending" {
                audit::append(
                    &mut tx,
                    key,
                    NewEntry {
                        at: now,
                        kind: if status == "delivered" {
                            crate::model::AuditKind::NoticeDelivered
                        } else {
                            crate::model::AuditKind::NoticeFailed
                        },
                        actor: "daemon".into(),
                        subject: n.url.clone().unwrap_or_else(|| "notify_webhook".into()),
                        remediation_id: Some(n.id.clone()),
                        detail: serde_json::json!({ "tries": n.tries + 1, "error": error }),
                    },
                )
                .await?;
            }
            tx.commit().await?;
            out.push((n, delivery));
        }
        Ok(out)
    }
}

/// A request error with its causes, without the URL's query (which may hold a token).
fn describe(e: &reqwest::Error) -> String {
    let mut text = if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "cannot connect".to_string()
    } else {
        "request failed".to_string()
    };
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_first_wait_and_stops_at_an_hour() {
        let s = NotifySettings::default();
        assert_eq!(s.backoff_ms(1), 30_000);
        assert_eq!(s.backoff_ms(2), 60_000);
        assert_eq!(s.backoff_ms(4), 240_000);
        assert_eq!(s.backoff_ms(12), 3_600_000);
    }
}
