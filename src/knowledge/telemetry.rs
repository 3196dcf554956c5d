//! Telemetry in the knowledge store: buckets written by the intake in one transaction per batch, read back by sequence.

use sqlx::{Executor, Row};
use std::collections::HashMap;

use super::{insert_rows, Backend, Param, Store, StoreError};
use crate::monitor::events::{Batch, Counts, Report, HOUR, LATENCY_BOUNDS, MINUTE};

/// One release's counts in one bucket, as stored (absolute, not a delta).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketRow {
    pub package: String,
    pub version: String,
    pub width: i64,
    pub bucket: i64,
    pub counts: Counts,
}

/// The lookups of one latency bound in one bucket, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LookupRow {
    pub width: i64,
    pub bucket: i64,
    pub bound: usize,
    pub lookups: i64,
}

/// What was written since a sequence number, and the sequence to ask from next time.
#[derive(Debug, Default, Clone)]
pub struct TelemetryDelta {
    pub buckets: Vec<BucketRow>,
    pub lookups: Vec<LookupRow>,
    pub reports: Vec<Report>,
    pub head: i64,
}

const BUCKET_COLUMNS: [&str; 8] = [
    "package",
    "version",
    "width",
    "bucket",
    "installs_ok",
    "installs_failed",
    "downloads",
    "seq",
];

impl Store {
    /// Writes a batch of accepted events in one transaction; returns its intake sequence number.
    /// Once this returns, every event of the batch is durable.
    pub async fn write_telemetry(&self, batch: &Batch) -> Result<i64, StoreError> {
        let mut tx = self.begin().await?;
        let seq: i64 =
            sqlx::query("UPDATE intake_seq SET value = value + 1 WHERE id = 1 RETURNING value")
                .fetch_one(&mut *tx)
                .await?
                .try_get(0)?;
        let mut hours: HashMap<(&str, &str, i64), Counts> = HashMap::new();
        let mut rows = Vec::with_capacity(batch.releases.len() * 2);
        for ((p, v, minute), c) in &batch.releases {
            hours
                .entry((p.as_str(), v.as_str(), minute.div_euclid(HOUR) * HOUR))
                .or_default()
                .add(c);
            rows.push(bucket_params(p, v, MINUTE, *minute, c, seq));
        }
        for ((p, v, hour), c) in &hours {
            rows.push(bucket_params(p, v, HOUR, *hour, c, seq));
        }
        insert_rows(
            &mut tx,
            "telemetry_buckets",
            &BUCKET_COLUMNS,
            &rows,
            "ON CONFLICT (package, version, width, bucket) DO UPDATE SET \
             installs_ok = telemetry_buckets.installs_ok + excluded.installs_ok, \
             installs_failed = telemetry_buckets.installs_failed + excluded.installs_failed, \
             downloads = telemetry_buckets.downloads + excluded.downloads, \
             seq = excluded.seq",
        )
        .await?;
        let mut lookups: HashMap<(i64, i64, usize), i64> = HashMap::new();
        for ((minute, bound), n) in &batch.lookups {
            *lookups.entry((MINUTE, *minute, *bound)).or_default() += n;
            *lookups
                .entry((HOUR, minute.div_euclid(HOUR) * HOUR, *bound))
                .or_default() += n;
        }
        let rows: Vec<Vec<Param>> = lookups
            .into_iter()
            .map(|((w, b, bound), n)| {
                vec![
                    Param::Int(w),
                    Param::Int(b),
                    Param::Int(LATENCY_BOUNDS[bound]),
                    Param::Int(n),
                    Param::Int(seq),
                ]
            })
            .collect();
        insert_rows(
            &mut tx,
            "lookup_buckets",
            &["width", "bucket", "bound", "lookups", "seq"],
            &rows,
            "ON CONFLICT (width, bucket, bound) DO UPDATE SET \
             lookups = lookup_buckets.lookups + excluded.lookups, seq = excluded.seq",
        )
        .await?;
        // One row per (release, reporter, category): a repeated report refreshes its time.
        let mut reports: HashMap<(&str, &str, &str, &str), i64> = HashMap::new();
        for r in &batch.reports {
            let at = reports
                .entry((&r.package, &r.version, &r.reporter, &r.category))
                .or_insert(r.at);
            *at = (*at).max(r.at);
        }
        let rows: Vec<Vec<Param>> = reports
            .into_iter()
            .map(|((p, v, who, cat), at)| {
                vec![
                    Param::Text(p.into()),
                    Param::Text(v.into()),
                    Param::Text(who.into()),
                    Param::Text(cat.into()),
                    Param::Int(at),
                    Param::Int(seq),
                ]
            })
            .collect();
        insert_rows(
            &mut tx,
            "reports",
            &["package", "version", "reporter", "category", "at", "seq"],
            &rows,
            "ON CONFLICT (package, version, reporter, category) DO UPDATE SET \
             at = excluded.at, seq = excluded.seq",
        )
        .await?;
        tx.commit().await?;
        Ok(seq)
    }

    /// Everything written after `since` (0: everything kept).
    pub async fn telemetry_since(&self, since: i64) -> Result<TelemetryDelta, StoreError> {
        let head: i64 = sqlx::query("SELECT value FROM intake_seq WHERE id = 1")
            .fetch_one(&self.pool)
            .await?
            .try_get(0)?;
        let mut delta = TelemetryDelta {
            head,
            ..Default::default()
        };
        if head <= since {
            return Ok(delta);
        }
        // The buckets come back as one JSON array: a third of the cost of decoding each row
        // through sqlx, and every cycle reads a minute's worth of them.
        let sql = match self.backend {
            Backend::Sqlite => {
                "SELECT json_group_array(json_array(package, version, width, bucket, installs_ok, \
                 installs_failed, downloads)) FROM telemetry_buckets WHERE seq > $1 AND seq <= $2"
            }
            Backend::Postgres => {
                "SELECT COALESCE(json_agg(json_build_array(package, version, width, bucket, \
                 installs_ok, installs_failed, downloads)), '[]'::json)::text \
                 FROM telemetry_buckets WHERE seq > $1 AND seq <= $2"
            }
        };
        let text: String = sqlx::query(sql)
            .bind(since)
            .bind(head)
            .fetch_one(&self.pool)
            .await?
            .try_get(0)?;
        let rows: Vec<(String, String, i64, i64, i64, i64, i64)> = serde_json::from_str(&text)
            .map_err(|e| {
                StoreError::Corrupt(format!(
                    "telemetry_buckets after intake seq {since}: the buckets: {e}"
                ))
            })?;
        for (package, version, width, bucket, installs_ok, installs_failed, downloads) in rows {
            delta.buckets.push(BucketRow {
                package,
                version,
                width,
                bucket,
                counts: Counts {
                    installs_ok,
                    installs_failed,
                    downloads,
                },
            });
        }
        let rows = sqlx::query(
            "SELECT width, bucket, bound, lookups FROM lookup_buckets WHERE seq > $1 AND seq <= $2",
        )
        .bind(since)
        .bind(head)
        .fetch_all(&self.pool)
        .await?;
        for r in rows {
            let bound: i64 = r.try_get(2)?;
            // A bound this build does not know cannot be judged against the SLO: skipped.
            let Some(i) = LATENCY_BOUNDS.iter().position(|b| *b == bound) else {
                continue;
            };
            delta.lookups.push(LookupRow {
                width: r.try_get(0)?,
                bucket: r.try_get(1)?,
                bound: i,
                lookups: r.try_get(3)?,
            });
        }
        let rows = sqlx::query(
            "SELECT package, version, reporter, category, at FROM reports \
             WHERE seq > $1 AND seq <= $2",
        )
        .bind(since)
        .bind(head)
        .fetch_all(&self.pool)
        .await?;
        for r in rows {
            delta.reports.push(Report {
                package: r.try_get(0)?,
                version: r.try_get(1)?,
                reporter: r.try_get(2)?,
                category: r.try_get(3)?,
                at: r.try_get(4)?,
            });
        }
        Ok(delta)
    }

    /// Drops minute buckets before `minutes_from`, hour buckets before `hours_from` and reports
    /// before `reports_from`. Returns the rows removed.
    pub async fn prune_telemetry(
        &self,
        minutes_from: i64,
        hours_from: i64,
        reports_from: i64,
    ) -> Result<u64, StoreError> {
        let mut tx = self.begin().await?;
        let mut n = 0;
        for (sql, width, from) in [
            (
                "DELETE FROM telemetry_buckets WHERE width = $1 AND bucket < $2",
                MINUTE,
                minutes_from,
            ),
            (
                "DELETE FROM telemetry_buckets WHERE width = $1 AND bucket < $2",
                HOUR,
                hours_from,
            ),
            (
                "DELETE FROM lookup_buckets WHERE width = $1 AND bucket < $2",
                MINUTE,
                minutes_from,
            ),
            (
                "DELETE FROM lookup_buckets WHERE width = $1 AND bucket < $2",
                HOUR,
                hours_from,
            ),
        ] {
            n += tx
                .execute(sqlx::query(sql).bind(width).bind(from))
                .await?
                .rows_affected();
        }
        n += tx
            .execute(sqlx::query("DELETE FROM reports WHERE at < $1").bind(reports_from))
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(n)
    }
}

fn bucket_params(p: &str, v: &str, width: i64, bucket: i64, c: &Counts, seq: i64) -> Vec<Param> {
    vec![
        Param::Text(p.to_string()),
        Param::Text(v.to_string()),
        Param::Int(width),
        Param::Int(bucket),
        Param::Int(c.installs_ok),
        Param::Int(c.installs_failed),
        Param::Int(c.downloads),
        Param::Int(seq),
    ]
}
