//! The leader's lease in the store: acquired when free or expired, renewed by its holder, and a fencing token that grows with every new holder.
//!
//! Several replicas share one PostgreSQL database; exactly one holds the lease `leader` and
//! acts. Every transaction the holder begins checks, under a shared row lock, that the lease's
//! token is still its own ([`Store::begin`]), so a holder that lost the lease while it was
//! paused can never commit an action: the new holder's acquisition and the old holder's
//! transaction are ordered by that row lock, and the old one finds a larger token.

use sqlx::Row;

use super::{Store, StoreError};

/// The one lease the daemon uses.
pub const LEADER: &str = "leader";

/// The token of a store that holds no lease: every fenced transaction is refused.
pub const NOT_LEADING: i64 = -1;

/// Who holds a lease, and until when.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Holder {
    pub holder: String,
    pub token: i64,
    pub expires_at: i64,
    pub acquired_at: i64,
}

impl Store {
    /// Takes the lease for `holder` when nobody holds it or its holder let it expire; returns
    /// the new fencing token, or None while another holder's lease runs.
    pub async fn try_acquire(
        &self,
        name: &str,
        holder: &str,
        now: i64,
        ttl_ms: i64,
    ) -> Result<Option<i64>, StoreError> {
        let mut tx = self.begin_unfenced().await?;
        sqlx::query(
            "INSERT INTO lease (name, holder, token, expires_at, acquired_at) VALUES ($1, '', 0, 0, 0) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(name.to_string())
        .execute(&mut *tx)
        .await?;
        if self.backend == super::Backend::Postgres {
            // A paused holder's open transaction keeps its share lock until the server ends
            // that session; do not wait on it for longer than a poll.
            sqlx::query("SET LOCAL lock_timeout = '2s'")
                .execute(&mut *tx)
                .await?;
        }
        let row = sqlx::query(
            "UPDATE lease SET holder = $2, token = token + 1, expires_at = $3, acquired_at = $4 \
             WHERE name = $1 AND (expires_at <= $4 OR holder = '') RETURNING token",
        )
        .bind(name.to_string())
        .bind(holder.to_string())
        .bind(now.saturating_add(ttl_ms))
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(match row {
            Some(r) => Some(r.try_get::<i64, _>(0)?),
            None => None,
        })
    }

    /// Extends the lease while `holder` still has it under `token`; false: it was lost.
    pub async fn renew(
        &self,
        name: &str,
        holder: &str,
        token: i64,
        now: i64,
        ttl_ms: i64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE lease SET expires_at = $4 WHERE name = $1 AND holder = $2 AND token = $3",
        )
        .bind(name.to_string())
        .bind(holder.to_string())
        .bind(token)
        .bind(now.saturating_add(ttl_ms))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Gives the lease up at once (a clean shutdown), so a standby need not wait for it to expire.
    pub async fn release(&self, name: &str, holder: &str, token: i64) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE lease SET expires_at = 0 WHERE name = $1 AND holder = $2 AND token = $3",
        )
        .bind(name.to_string())
        .bind(holder.to_string())
        .bind(token)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The lease's current holder, if it was ever taken.
    pub async fn lease(&self, name: &str) -> Result<Option<Holder>, StoreError> {
        let row = sqlx::query(
            "SELECT holder, token, expires_at, acquired_at FROM lease WHERE name = $1 AND holder <> ''",
        )
        .bind(name.to_string())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(Holder {
                holder: r.try_get(0)?,
                token: r.try_get(1)?,
                expires_at: r.try_get(2)?,
                acquired_at: r.try_get(3)?,
            })
        })
        .transpose()
    }
}
