//! The upgrade of telemetry stored by version 5 (a row per release and bucket, minute and hour) into batches: run once when a store opens, then those tables are dropped.

use sqlx::{Executor, Row};

use super::series;
use super::telemetry::{Body, NEXT_SEQ};
use super::{Backend, Store, StoreError};
use crate::model::telemetry::{HOUR, MINUTE};

impl Store {
    /// Converts the bucket tables of schema version 5, if this store still has them, into two
    /// batches: an hour batch of the hours before the first whole hour the minute buckets cover
    /// (minute buckets are kept 7 hours, longer than any window reads minutes, so the partial
    /// hour at their edge is taken from its hour bucket), and a minute batch of the rest. Then
    /// drops the old tables. Nothing is counted twice: an hour is taken from one width only.
    /// Returns whether anything was converted: a new store's tables (created empty by the
    /// earlier migrations) are only dropped.
    pub async fn adopt_bucket_tables(&self) -> Result<bool, StoreError> {
        let exists_sql = match self.backend {
            Backend::Sqlite => {
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'telemetry_buckets'"
            }
            Backend::Postgres => {
                "SELECT COUNT(*) FROM information_schema.tables \
                 WHERE table_schema = current_schema() AND table_name = 'telemetry_buckets'"
            }
        };
        let exists = |n: i64| n > 0;
        let n: i64 = sqlx::query(exists_sql)
            .fetch_one(&self.pool)
            .await?
            .try_get(0)?;
        if !exists(n) {
            return Ok(false);
        }
        let mut tx = self.begin_unfenced().await?;
        if self.backend == Backend::Postgres {
            tx.execute("LOCK TABLE telemetry_batches IN EXCLUSIVE MODE")
                .await?;
            // Another replica may have converted it while this one waited for the lock.
            let n: i64 = tx.fetch_one(sqlx::query(exists_sql)).await?.try_get(0)?;
            if !exists(n) {
                return Ok(false);
            }
        }
        let first_minute: Option<i64> = tx
            .fetch_one(
                sqlx::query(
                    "SELECT MIN(m) FROM (SELECT MIN(bucket) AS m FROM telemetry_buckets WHERE width = $1 \
                     UNION ALL SELECT MIN(bucket) AS m FROM lookup_buckets WHERE width = $1) AS t",
                )
                .bind(MINUTE),
            )
            .await?
            .try_get(0)?;
        // The first whole hour the minutes cover; without minutes, every hour bucket is used.
        let split = first_minute.map_or(i64::MAX, |m| (m + HOUR - 1).div_euclid(HOUR) * HOUR);
        let (learnt, hours, minutes) = self.old_buckets(&mut tx, split).await?;
        let mut converted = false;
        for (width, body) in [(HOUR, hours), (MINUTE, minutes)] {
            if body.span().is_some() {
                body.insert(&mut tx, width, 0).await?;
                converted = true;
            }
        }
        // Reports keep their table; their batch sequence starts again from the new batches.
        tx.execute(sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE reports SET seq = {NEXT_SEQ} - 1"
        ))))
        .await?;
        for table in ["telemetry_buckets", "lookup_buckets", "intake_seq"] {
            tx.execute(sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP TABLE {table}"
            ))))
            .await?;
        }
        tx.commit().await?;
        self.learn_series(learnt);
        Ok(converted)
    }

    /// The old tables' rows as batch bodies (hours before `split`, minutes from it), with the
    /// series they numbered.
    async fn old_buckets(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        split: i64,
    ) -> Result<(Vec<(i64, String, String)>, Body, Body), StoreError> {
        let mut hours = Body::default();
        let mut minutes = Body::default();
        let rows = tx
            .fetch_all(sqlx::query(
                "SELECT package, version, width, bucket, installs_ok, installs_failed, downloads \
                 FROM telemetry_buckets ORDER BY package, version, width, bucket",
            ))
            .await?;
        let mut kept = Vec::new();
        for r in rows {
            let (width, bucket): (i64, i64) = (r.try_get(2)?, r.try_get(3)?);
            let keep = match width {
                HOUR => bucket < split,
                MINUTE => bucket >= split,
                _ => false,
            };
            if keep {
                let name: (String, String) = (r.try_get(0)?, r.try_get(1)?);
                let counts: (i64, i64, i64) = (r.try_get(4)?, r.try_get(5)?, r.try_get(6)?);
                kept.push((name, width, bucket, counts));
            }
        }
        let mut names: Vec<(&str, &str)> = kept
            .iter()
            .map(|(n, ..)| (n.0.as_str(), n.1.as_str()))
            .collect();
        names.dedup();
        let known = self.series_names(|s| s.max());
        let learnt = series::register(tx, self.backend, known, &names).await?;
        let ids: std::collections::HashMap<(&str, &str), i64> = learnt
            .iter()
            .map(|(id, p, v)| ((p.as_str(), v.as_str()), *id))
            .collect();
        for ((p, v), width, bucket, (ok, failed, downloads)) in &kept {
            let id = ids
                .get(&(p.as_str(), v.as_str()))
                .copied()
                .or_else(|| self.series_names(|s| s.id(p, v)))
                .ok_or_else(|| StoreError::Corrupt(format!("no series number for {p}@{v}")))?;
            let entry = (id, *bucket, *ok, *failed, *downloads);
            if *width == HOUR {
                hours.releases.push(entry);
            } else {
                minutes.releases.push(entry);
            }
        }
        let rows = tx
            .fetch_all(sqlx::query(
                "SELECT width, bucket, bound, lookups FROM lookup_buckets ORDER BY width, bucket, bound",
            ))
            .await?;
        for r in rows {
            let (width, bucket): (i64, i64) = (r.try_get(0)?, r.try_get(1)?);
            let entry = (bucket, r.try_get(2)?, r.try_get(3)?);
            match width {
                HOUR if bucket < split => hours.lookups.push(entry),
                MINUTE if bucket >= split => minutes.lookups.push(entry),
                _ => {}
            }
        }
        Ok((learnt, hours, minutes))
    }
}
