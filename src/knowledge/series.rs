//! Telemetry series by number: each release whose installs or downloads are counted gets a number once, batches name it by that number, and every reader keeps the names it has seen.

use compact_str::CompactString;
use sqlx::{Executor, Row};
use std::sync::{Arc, Mutex};

use super::{Backend, Conn, Store, StoreError};

/// A series' names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SeriesName {
    pub package: String,
    pub version: String,
}

/// The series a store holds, as far as this process has read them: every number from 1 to
/// `max`, so that anything above it is new.
#[derive(Debug, Default)]
pub struct SeriesNames {
    /// By (package, version), kept inline where short: a lookup reads one slot.
    ids: foldhash::HashMap<(CompactString, CompactString), i64>,
    names: foldhash::HashMap<i64, Arc<SeriesName>>,
    max: i64,
}

/// Shared by every handle on one store.
pub type SharedSeries = Arc<Mutex<SeriesNames>>;

impl SeriesNames {
    pub fn id(&self, package: &str, version: &str) -> Option<i64> {
        self.ids
            .get(&(CompactString::new(package), CompactString::new(version)))
            .copied()
    }

    pub fn name(&self, id: i64) -> Option<&Arc<SeriesName>> {
        self.names.get(&id)
    }

    pub fn max(&self) -> i64 {
        self.max
    }

    pub(super) fn learn(&mut self, rows: Vec<(i64, String, String)>) {
        for (id, package, version) in rows {
            self.max = self.max.max(id);
            self.ids
                .insert((package.as_str().into(), version.as_str().into()), id);
            self.names
                .insert(id, Arc::new(SeriesName { package, version }));
        }
    }
}

/// The series numbered above `max`, in the caller's connection.
async fn read_above(conn: &mut Conn, max: i64) -> Result<Vec<(i64, String, String)>, StoreError> {
    let rows = conn
        .fetch_all(
            sqlx::query(
                "SELECT id, package, version FROM telemetry_series WHERE id > $1 ORDER BY id",
            )
            .bind(max),
        )
        .await?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
        .collect()
}

/// Numbers new series in the caller's transaction (the next numbers after the highest stored;
/// a series another writer numbered first keeps its number) and returns every series numbered
/// above `known_max`, to be learnt once the transaction commits.
pub(super) async fn register(
    conn: &mut Conn,
    backend: Backend,
    known_max: i64,
    new: &[(&str, &str)],
) -> Result<Vec<(i64, String, String)>, StoreError> {
    // Under both backends' bind-parameter limits.
    for chunk in new.chunks(1_000) {
        let mut sql = String::from("WITH fresh (n, package, version) AS (VALUES ");
        for i in 0..chunk.len() {
            if i > 0 {
                sql.push(',');
            }
            if backend == Backend::Postgres {
                let k = 3 * i;
                sql.push_str(&format!(
                    "(CAST(${} AS BIGINT), CAST(${} AS TEXT), CAST(${} AS TEXT))",
                    k + 1,
                    k + 2,
                    k + 3
                ));
            } else {
                sql.push_str("(?, ?, ?)");
            }
        }
        // (SQLite needs the WHERE to read ON CONFLICT as an upsert, not as a join's ON.)
        sql.push_str(
            ") INSERT INTO telemetry_series (id, package, version) \
             SELECT (SELECT COALESCE(MAX(id), 0) FROM telemetry_series) + n, package, version \
             FROM fresh WHERE true ON CONFLICT (package, version) DO NOTHING",
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (i, (p, v)) in chunk.iter().enumerate() {
            q = q.bind(i as i64 + 1).bind(p.to_string()).bind(v.to_string());
        }
        conn.execute(q).await?;
    }
    read_above(conn, known_max).await
}

impl Store {
    /// Learns the series numbered above what this process knows (another writer's, or all of
    /// them on the first read).
    pub(super) async fn refresh_series(&self) -> Result<(), StoreError> {
        let max = self.series_names(|s| s.max());
        let mut conn = self.pool.acquire().await?;
        let rows = read_above(&mut conn, max).await?;
        if !rows.is_empty() {
            self.learn_series(rows);
        }
        Ok(())
    }

    pub(super) fn learn_series(&self, rows: Vec<(i64, String, String)>) {
        if let Ok(mut s) = self.series.lock() {
            s.learn(rows);
        }
    }

    /// Reads the series this process knows.
    pub(super) fn series_names<T>(&self, f: impl FnOnce(&SeriesNames) -> T) -> T {
        match self.series.lock() {
            Ok(s) => f(&s),
            Err(poisoned) => f(&poisoned.into_inner()),
        }
    }
}
