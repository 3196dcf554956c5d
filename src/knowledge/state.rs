//! Small durable state of the loop: cursors, the signature verification cache, the latest observations.

use sqlx::{Executor, Row};
use std::collections::HashMap;

use super::{insert_rows, Conn, Param, Store, StoreError};
use crate::model::ReleaseObservation;

/// The key of a cached signature check: SHA-256 over the artifact's checksum, the signature and
/// the public key (each followed by a zero byte).
pub type VerificationKey = [u8; 32];

/// The cache key of (checksum of the actual bytes, signature, public key).
pub fn verification_key(checksum: &str, signature: &str, public_key: &str) -> VerificationKey {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for part in [checksum, signature, public_key] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    h.finalize().into()
}

/// Rows whose bound values are built at once when writing many.
const WRITE_SLICE: usize = 2_000;

impl Store {
    pub async fn cursor(&self, name: &str) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT value FROM cursors WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.get::<String, _>(0)))
    }

    /// Sets a cursor in a transaction of its own (fenced: a deposed leader cannot move one).
    pub async fn set_cursor(&self, name: &str, value: &str) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        set_cursor(&mut tx, name, value).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Every cached signature verdict, for the monitor to keep in memory.
    pub async fn verification_cache(&self) -> Result<HashMap<VerificationKey, bool>, StoreError> {
        let rows = sqlx::query("SELECT key, valid FROM verification_cache")
            .fetch_all(&self.pool)
            .await?;
        let mut out = HashMap::with_capacity(rows.len());
        for r in rows {
            let key: String = r.try_get(0)?;
            let mut k = [0u8; 32];
            // A row that is not a digest is skipped: the check is simply done again.
            if hex::decode_to_slice(&key, &mut k).is_ok() {
                out.insert(k, r.try_get::<i64, _>(1)? != 0);
            }
        }
        Ok(out)
    }

    pub async fn cache_verifications(
        &self,
        entries: &[(VerificationKey, bool)],
        at: i64,
    ) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        // In key order: each insert lands at the end of the primary key's index, not at random.
        let mut sorted: Vec<&(VerificationKey, bool)> = entries.iter().collect();
        sorted.sort_unstable_by_key(|e| e.0);
        let mut tx = self.begin().await?;
        for part in sorted.chunks(WRITE_SLICE) {
            let rows: Vec<Vec<Param>> = part
                .iter()
                .map(|(key, valid)| {
                    vec![
                        Param::Text(hex::encode(key)),
                        Param::Int(i64::from(*valid)),
                        Param::Int(at),
                    ]
                })
                .collect();
            insert_rows(
                &mut tx,
                "verification_cache",
                &["key", "valid", "verified_at"],
                &rows,
                "ON CONFLICT (key) DO NOTHING",
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Records the latest observation of each release (replacing the previous one).
    pub async fn record_observations(
        &self,
        observations: &[&ReleaseObservation],
    ) -> Result<(), StoreError> {
        if observations.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin().await?;
        // Bound values are built a slice at a time, not for 100,000 releases at once.
        for part in observations.chunks(WRITE_SLICE) {
            let rows: Vec<Vec<Param>> = part
                .iter()
                .map(|o| {
                    vec![
                        Param::Text(o.package.clone()),
                        Param::Text(o.version.clone()),
                        Param::Int(o.observed_at),
                        Param::Text(serde_json::to_string(&o.integrity).unwrap_or_default()),
                        Param::Text(o.signature.as_str().to_string()),
                        Param::OptText(o.signer.clone()),
                    ]
                })
                .collect();
            insert_rows(
                &mut tx,
                "release_observations",
                &[
                    "package",
                    "version",
                    "observed_at",
                    "integrity",
                    "signature_state",
                    "signer",
                ],
                &rows,
                // Only a release whose state changed is written: a restart's first full scan
                // (whose memory of what was recorded is empty) rewrites nothing unchanged.
                "ON CONFLICT (package, version) DO UPDATE SET observed_at = excluded.observed_at, \
                 integrity = excluded.integrity, signature_state = excluded.signature_state, \
                 signer = excluded.signer \
                 WHERE release_observations.integrity IS DISTINCT FROM excluded.integrity \
                 OR release_observations.signature_state IS DISTINCT FROM excluded.signature_state \
                 OR release_observations.signer IS DISTINCT FROM excluded.signer",
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

pub async fn set_cursor(conn: &mut Conn, name: &str, value: &str) -> Result<(), StoreError> {
    conn.execute(
        sqlx::query(
            "INSERT INTO cursors (name, value) VALUES ($1, $2) \
             ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        )
        .bind(name)
        .bind(value),
    )
    .await?;
    Ok(())
}
