//! The outbox of webhook notices: written with the `notify` remediation that queues them, delivered later by the notifier with retries, so a dead webhook never blocks the loop.

use serde::Serialize;
use sqlx::{Executor, Row};

use super::{Conn, Store, StoreError};

/// One notice waiting, delivered or given up on.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Notice {
    /// The remediation that queued it.
    pub id: String,
    /// None: the configured `notify_webhook`.
    pub url: Option<String>,
    pub body: String,
    /// `pending`, `delivered` or `failed`.
    pub status: String,
    pub tries: i64,
    pub next_at: i64,
    pub last_error: Option<String>,
}

/// A notice from its row (`id, url, body, status, tries, next_at, last_error`).
fn decode(r: &sqlx::any::AnyRow) -> Result<Notice, StoreError> {
    Ok(Notice {
        id: r.try_get(0)?,
        url: r.try_get(1)?,
        body: r.try_get(2)?,
        status: r.try_get(3)?,
        tries: r.try_get(4)?,
        next_at: r.try_get(5)?,
        last_error: r.try_get(6)?,
    })
}

/// Queues a notice inside the remediation's own transaction.
pub async fn enqueue(
    conn: &mut Conn,
    id: &str,
    url: Option<&str>,
    body: &str,
    now: i64,
) -> Result<(), StoreError> {
    conn.execute(
        sqlx::query(
            "INSERT INTO outbox (id, url, body, status, tries, next_at, last_error, created_at, updated_at) \
             VALUES ($1, $2, $3, 'pending', 0, $4, NULL, $4, $4) ON CONFLICT (id) DO NOTHING",
        )
        .bind(id.to_string())
        .bind(url.map(str::to_string))
        .bind(body.to_string())
        .bind(now),
    )
    .await?;
    Ok(())
}

impl Store {
    /// Claims up to `limit` notices due at `now`: each is pushed `lease_ms` into the future
    /// first, so a notifier that dies mid-delivery leaves it to be tried again, not lost.
    pub async fn claim_notices(
        &self,
        now: i64,
        lease_ms: i64,
        limit: i64,
    ) -> Result<Vec<Notice>, StoreError> {
        let mut tx = self.begin().await?;
        let rows = tx
            .fetch_all(
                sqlx::query(
                    "SELECT id, url, body, status, tries, next_at, last_error FROM outbox \
                     WHERE status = 'pending' AND next_at <= $1 ORDER BY next_at, id LIMIT $2",
                )
                .bind(now)
                .bind(limit),
            )
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let n = decode(r)?;
            let claimed = tx
                .execute(
                    sqlx::query(
                        "UPDATE outbox SET next_at = $3 WHERE id = $1 AND next_at = $2 AND status = 'pending'",
                    )
                    .bind(n.id.clone())
                    .bind(n.next_at)
                    .bind(now + lease_ms),
                )
                .await?
                .rows_affected();
            if claimed == 1 {
                out.push(n);
            }
        }
        tx.commit().await?;
        Ok(out)
    }

    pub async fn notice(&self, id: &str) -> Result<Option<Notice>, StoreError> {
        let row = sqlx::query(
            "SELECT id, url, body, status, tries, next_at, last_error FROM outbox WHERE id = $1",
        )
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(decode).transpose()
    }

    /// Notices by status, for `mapek status`.
    pub async fn notice_counts(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let rows =
            sqlx::query("SELECT status, COUNT(*) FROM outbox GROUP BY status ORDER BY status")
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }
}

/// Records a delivery attempt: `status` is `delivered`, `pending` (tried again at `next_at`) or
/// `failed` (given up).
pub async fn record_try(
    conn: &mut Conn,
    id: &str,
    status: &str,
    next_at: i64,
    error: Option<&str>,
    now: i64,
) -> Result<(), StoreError> {
    conn.execute(
        sqlx::query(
            "UPDATE outbox SET status = $2, tries = tries + 1, next_at = $3, last_error = $4, \
             updated_at = $5 WHERE id = $1",
        )
        .bind(id.to_string())
        .bind(status.to_string())
        .bind(next_at)
        .bind(error.map(str::to_string))
        .bind(now),
    )
    .await?;
    Ok(())
}
