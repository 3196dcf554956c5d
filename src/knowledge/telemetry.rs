//! Telemetry in the knowledge store: each intake commit is one row holding its counts (a batch), read back by sequence; old minute batches are folded into hour batches.

use serde::{Deserialize, Serialize};
use sqlx::{Executor, Row};
use std::collections::HashMap;
use std::sync::Arc;

use super::series::{self, SeriesName, SeriesNames, SharedSeries};
use super::{insert_rows, Backend, Conn, Param, Store, StoreError};
use crate::model::telemetry::{Batch, Counts, Report, HOUR, LATENCY_BOUNDS, MINUTE};

/// One release's counts in one bucket, as one batch added them (a delta: several batches may
/// add to the same bucket).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketRow {
    /// The release's series number (its names: [`TelemetryDelta::name`]).
    pub series: i64,
    /// `MINUTE` for what the intake wrote; `HOUR` for minutes folded by retention, which a
    /// reader that already read the minutes must not count again.
    pub width: i64,
    pub bucket: i64,
    pub counts: Counts,
}

/// Lookups of one latency bound in one bucket, as one batch added them (a delta).
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
    /// The names of every series the rows name.
    names: SharedSeries,
}

impl TelemetryDelta {
    /// Rows of series named here, as a store would read them (for tests of what reads them).
    pub fn of(
        buckets: Vec<BucketRow>,
        lookups: Vec<LookupRow>,
        names: &[(i64, &str, &str)],
    ) -> Self {
        let mut known = SeriesNames::default();
        known.learn(
            names
                .iter()
                .map(|(id, p, v)| (*id, p.to_string(), v.to_string()))
                .collect(),
        );
        Self {
            buckets,
            lookups,
            names: Arc::new(std::sync::Mutex::new(known)),
            ..Default::default()
        }
    }

    /// The names of a series of these rows.
    pub fn name(&self, series: i64) -> Option<Arc<SeriesName>> {
        let names = self.names.lock().ok()?;
        names.name(series).cloned()
    }
}

/// A batch's counts as stored in `telemetry_batches.body` (postcard, a compact binary form with
/// varint integers): per release and bucket `(series, bucket, installs_ok, installs_failed,
/// downloads)` (the series by its number in `telemetry_series`) and per latency bound
/// `(bucket, bound_ms, lookups)`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct Body {
    #[serde(rename = "r", default)]
    pub releases: Vec<(i64, i64, i64, i64, i64)>,
    #[serde(rename = "l", default)]
    pub lookups: Vec<(i64, i64, i64)>,
}

impl Body {
    pub fn span(&self) -> Option<(i64, i64)> {
        let times = self
            .releases
            .iter()
            .map(|r| r.1)
            .chain(self.lookups.iter().map(|l| l.0));
        times.fold(None, |acc, t| match acc {
            None => Some((t, t)),
            Some((lo, hi)) => Some((lo.min(t), hi.max(t))),
        })
    }

    pub fn events(&self) -> i64 {
        self.releases
            .iter()
            .map(|r| r.2 + r.3 + r.4)
            .chain(self.lookups.iter().map(|l| l.2))
            .sum()
    }

    fn decode(seq: i64, bytes: &[u8]) -> Result<Self, StoreError> {
        postcard::from_bytes(bytes)
            .map_err(|e| StoreError::Corrupt(format!("telemetry_batches seq {seq}: the body: {e}")))
    }

    fn encode(&self) -> Result<Vec<u8>, StoreError> {
        postcard::to_allocvec(self)
            .map_err(|e| StoreError::Corrupt(format!("encoding a telemetry batch: {e}")))
    }

    /// Inserts this body as a batch of `width` in the caller's transaction.
    pub async fn insert(
        &self,
        conn: &mut Conn,
        width: i64,
        reports: i64,
    ) -> Result<i64, StoreError> {
        let (first, last) = self.span().unwrap_or((0, 0));
        Ok(conn
            .fetch_one(insert_batch(
                width,
                first,
                last,
                self.events(),
                reports,
                self.encode()?,
            ))
            .await?
            .try_get(0)?)
    }
}

fn insert_batch<'q>(
    width: i64,
    first: i64,
    last: i64,
    events: i64,
    reports: i64,
    body: Vec<u8>,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO telemetry_batches (seq, width, first_bucket, last_bucket, events, reports, body) \
         SELECT {NEXT_SEQ}, $1, $2, $3, $4, $5, $6 RETURNING seq"
    )))
    .bind(width)
    .bind(first)
    .bind(last)
    .bind(events)
    .bind(reports)
    .bind(body)
}

/// Adds `body` to `delta` as rows of `width`; a series the store does not know makes the batch
/// corrupt.
fn unpack(
    seq: i64,
    body: Body,
    width: i64,
    names: &SeriesNames,
    delta: &mut TelemetryDelta,
) -> Result<(), StoreError> {
    for (series, bucket, installs_ok, installs_failed, downloads) in body.releases {
        if series > names.max() {
            return Err(StoreError::Corrupt(format!(
                "telemetry_batches seq {seq}: series {series} is not in telemetry_series"
            )));
        }
        delta.buckets.push(BucketRow {
            series,
            width,
            bucket,
            counts: Counts {
                installs_ok,
                installs_failed,
                downloads,
            },
        });
    }
    for (bucket, bound_ms, lookups) in body.lookups {
        // A bound this build does not know cannot be judged against the SLO: skipped.
        let Some(bound) = LATENCY_BOUNDS.iter().position(|b| *b == bound_ms) else {
            continue;
        };
        delta.lookups.push(LookupRow {
            width,
            bucket,
            bound,
            lookups,
        });
    }
    Ok(())
}

fn row(series: i64, bucket: i64, c: &Counts) -> (i64, i64, i64, i64, i64) {
    (
        series,
        bucket,
        c.installs_ok,
        c.installs_failed,
        c.downloads,
    )
}

/// The next batch sequence: one more than the highest stored. Retention never removes the
/// highest row, so the sequence never goes back.
pub(super) const NEXT_SEQ: &str = "(SELECT COALESCE(MAX(seq), 0) + 1 FROM telemetry_batches)";

impl Store {
    /// Writes a batch of accepted events as one row (its reports, and the numbers of series
    /// seen for the first time, in the same transaction); returns its sequence number. Once
    /// this returns, every event of the batch is durable.
    pub async fn write_telemetry(&self, batch: &Batch) -> Result<i64, StoreError> {
        if self.series_names(|s| s.max()) == 0 {
            self.refresh_series().await?;
        }
        // Every row with its series number where this process knows it; the others are
        // numbered in the transaction below.
        let mut body = Body {
            releases: Vec::with_capacity(batch.releases.len()),
            lookups: batch
                .lookups
                .iter()
                .map(|((m, b), n)| (*m, LATENCY_BOUNDS[*b], *n))
                .collect(),
        };
        let mut unnumbered: Vec<(&str, &str, i64, &Counts)> = Vec::new();
        self.series_names(|names| {
            for ((p, v, m), c) in &batch.releases {
                match names.id(p, v) {
                    Some(id) => body.releases.push(row(id, *m, c)),
                    None => unnumbered.push((p, v, *m, c)),
                }
            }
        });
        // SQLite runs one writer at a time, so a lone statement takes the next number safely,
        // and costs one round trip: the common case, every series already numbered and no
        // report. Otherwise a transaction; on PostgreSQL the table lock makes concurrent
        // writers take their numbers in commit order, so a reader never skips a batch
        // committed late.
        if self.backend == Backend::Sqlite && batch.reports.is_empty() && unnumbered.is_empty() {
            let (first, last) = body.span().unwrap_or((0, 0));
            let insert = insert_batch(MINUTE, first, last, batch.events as i64, 0, body.encode()?);
            return Ok(insert.fetch_one(&self.pool).await?.try_get(0)?);
        }
        let mut tx = self.begin().await?;
        if self.backend == Backend::Postgres {
            tx.execute("LOCK TABLE telemetry_batches IN EXCLUSIVE MODE")
                .await?;
        }
        let learnt = if unnumbered.is_empty() {
            Vec::new()
        } else {
            let mut names: Vec<(&str, &str)> = unnumbered.iter().map(|u| (u.0, u.1)).collect();
            names.sort_unstable();
            names.dedup();
            let known = self.series_names(|s| s.max());
            series::register(&mut tx, self.backend, known, &names).await?
        };
        let fresh: foldhash::HashMap<(&str, &str), i64> = learnt
            .iter()
            .map(|(id, p, v)| ((p.as_str(), v.as_str()), *id))
            .collect();
        for (p, v, m, c) in unnumbered {
            let id = fresh
                .get(&(p, v))
                .copied()
                .or_else(|| self.series_names(|s| s.id(p, v)))
                .ok_or_else(|| StoreError::Corrupt(format!("no series number for {p}@{v}")))?;
            body.releases.push(row(id, m, c));
        }
        let (first, last) = body.span().unwrap_or((0, 0));
        let seq: i64 = tx
            .fetch_one(insert_batch(
                MINUTE,
                first,
                last,
                batch.events as i64,
                batch.reports.len() as i64,
                body.encode()?,
            ))
            .await?
            .try_get(0)?;
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
        self.learn_series(learnt);
        Ok(seq)
    }

    /// Everything written after `since`. With `since` 0, everything kept: the minute batches,
    /// the hour batches folded from older ones, and every report. Otherwise the minute batches
    /// written since (an hour batch only holds minutes already read) and their reports.
    pub async fn telemetry_since(&self, since: i64) -> Result<TelemetryDelta, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, width, reports, body FROM telemetry_batches \
             WHERE seq > $1 AND (width = $2 OR $1 = 0) ORDER BY seq",
        )
        .bind(since)
        .bind(MINUTE)
        .fetch_all(&self.pool)
        .await?;
        let mut delta = TelemetryDelta {
            head: since,
            ..Default::default()
        };
        let mut with_reports = since == 0;
        let mut bodies = Vec::with_capacity(rows.len());
        for r in rows {
            let seq: i64 = r.try_get(0)?;
            let width: i64 = r.try_get(1)?;
            with_reports |= r.try_get::<i64, _>(2)? > 0;
            bodies.push((seq, width, Body::decode(seq, &r.try_get::<Vec<u8>, _>(3)?)?));
            delta.head = delta.head.max(seq);
        }
        // Series numbered since this process last looked (by another writer, or all of them
        // on the first read) are learnt first.
        let known = self.series_names(|s| s.max());
        if bodies
            .iter()
            .any(|(_, _, b)| b.releases.iter().any(|r| r.0 > known))
        {
            self.refresh_series().await?;
        }
        self.series_names(|names| -> Result<(), StoreError> {
            for (seq, width, body) in bodies {
                unpack(seq, body, width, names, &mut delta)?;
            }
            Ok(())
        })?;
        delta.names = Arc::clone(&self.series);
        if with_reports {
            let rows = sqlx::query(
                "SELECT package, version, reporter, category, at FROM reports \
                 WHERE (seq > $1 OR $1 = 0) AND seq <= $2 \
                 ORDER BY seq, package, version, reporter, category",
            )
            .bind(since)
            .bind(delta.head)
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
        }
        Ok(delta)
    }

    /// Folds minute batches wholly before `minutes_from` into one hour batch, drops hour
    /// batches wholly before `hours_from` and reports before `reports_from`. Returns the rows
    /// removed.
    pub async fn prune_telemetry(
        &self,
        minutes_from: i64,
        hours_from: i64,
        reports_from: i64,
    ) -> Result<u64, StoreError> {
        let mut tx = self.begin().await?;
        if self.backend == Backend::Postgres {
            tx.execute("LOCK TABLE telemetry_batches IN EXCLUSIVE MODE")
                .await?;
        }
        let old = tx
            .fetch_all(
                sqlx::query(
                    "SELECT seq, body FROM telemetry_batches WHERE width = $1 AND last_bucket < $2 \
                     ORDER BY seq",
                )
                .bind(MINUTE)
                .bind(minutes_from),
            )
            .await?;
        let mut n = 0;
        if let Some(last) = old.last() {
            let last: i64 = last.try_get(0)?;
            let mut releases: foldhash::HashMap<(i64, i64), Counts> = Default::default();
            let mut lookups: foldhash::HashMap<(i64, i64), i64> = Default::default();
            for r in &old {
                let body = Body::decode(r.try_get(0)?, &r.try_get::<Vec<u8>, _>(1)?)?;
                for (series, b, ok, failed, downloads) in body.releases {
                    releases
                        .entry((series, b.div_euclid(HOUR) * HOUR))
                        .or_default()
                        .add(&Counts {
                            installs_ok: ok,
                            installs_failed: failed,
                            downloads,
                        });
                }
                for (b, bound, k) in body.lookups {
                    *lookups
                        .entry((b.div_euclid(HOUR) * HOUR, bound))
                        .or_default() += k;
                }
            }
            let folded = Body {
                releases: releases
                    .into_iter()
                    .map(|((series, h), c)| {
                        (series, h, c.installs_ok, c.installs_failed, c.downloads)
                    })
                    .collect(),
                lookups: lookups.into_iter().map(|((h, b), k)| (h, b, k)).collect(),
            };
            if !folded.releases.is_empty() || !folded.lookups.is_empty() {
                folded.insert(&mut tx, HOUR, 0).await?;
            }
            n += tx
                .execute(
                    sqlx::query(
                        "DELETE FROM telemetry_batches WHERE width = $1 AND last_bucket < $2 AND seq <= $3 \
                         AND seq < (SELECT MAX(seq) FROM telemetry_batches)",
                    )
                    .bind(MINUTE)
                    .bind(minutes_from)
                    .bind(last),
                )
                .await?
                .rows_affected();
        }
        n += tx
            .execute(
                sqlx::query(
                    "DELETE FROM telemetry_batches WHERE width = $1 AND last_bucket < $2 \
                     AND seq < (SELECT MAX(seq) FROM telemetry_batches)",
                )
                .bind(HOUR)
                .bind(hours_from),
            )
            .await?
            .rows_affected();
        n += tx
            .execute(sqlx::query("DELETE FROM reports WHERE at < $1").bind(reports_from))
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(n)
    }
}
