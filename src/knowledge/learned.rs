//! What analysis learns and must keep across restarts: download baselines and each package's quality score with its recent peak.

use sqlx::{Executor, Row};
use std::collections::HashMap;

use super::{insert_rows, Param, Store, StoreError};

/// An exponentially weighted mean and variance of a package's hourly downloads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Baseline {
    pub mean: f64,
    pub var: f64,
    pub samples: i64,
    /// The last hour (start, ms) folded in.
    pub last_hour: i64,
}

/// A package's last computed quality, and the best score of the regression window.
#[derive(Debug, Clone, PartialEq)]
pub struct QualityState {
    pub score: f64,
    pub band: String,
    pub failed: Vec<String>,
    pub peak: f64,
    pub peak_band: String,
    pub peak_at: i64,
    pub computed_at: i64,
}

/// The name of the baselines' snapshot in `learned_snapshots`.
const BASELINES: &str = "download_baselines";

impl Store {
    /// The download baselines: the latest snapshot, or, in a store of an earlier version that
    /// has none yet, the rows it kept one per package.
    pub async fn baselines(&self) -> Result<HashMap<String, Baseline>, StoreError> {
        let snapshot = sqlx::query("SELECT body FROM learned_snapshots WHERE name = $1")
            .bind(BASELINES)
            .fetch_optional(&self.pool)
            .await?;
        if let Some(row) = snapshot {
            let body: String = row.try_get(0)?;
            let entries: HashMap<String, (f64, f64, i64, i64)> = serde_json::from_str(&body)
                .map_err(|e| {
                    StoreError::Corrupt(format!("learned_snapshots `{BASELINES}`: {e}"))
                })?;
            return Ok(entries
                .into_iter()
                .map(|(p, (mean, var, samples, last_hour))| {
                    (
                        p,
                        Baseline {
                            mean,
                            var,
                            samples,
                            last_hour,
                        },
                    )
                })
                .collect());
        }
        let rows =
            sqlx::query("SELECT package, mean, var, samples, last_hour FROM download_baselines")
                .fetch_all(&self.pool)
                .await?;
        let mut out = HashMap::with_capacity(rows.len());
        for r in rows {
            out.insert(
                r.try_get(0)?,
                Baseline {
                    mean: r.try_get(1)?,
                    var: r.try_get(2)?,
                    samples: r.try_get(3)?,
                    last_hour: r.try_get(4)?,
                },
            );
        }
        Ok(out)
    }

    /// Saves every baseline as one snapshot (each package's `[mean, var, samples, last_hour]`):
    /// one row written, however many packages, instead of one row each.
    pub async fn save_baselines(
        &self,
        baselines: &HashMap<String, Baseline>,
        now: i64,
    ) -> Result<(), StoreError> {
        let entries: std::collections::BTreeMap<&str, (f64, f64, i64, i64)> = baselines
            .iter()
            .map(|(p, b)| (p.as_str(), (b.mean, b.var, b.samples, b.last_hour)))
            .collect();
        let body = serde_json::to_string(&entries)
            .map_err(|e| StoreError::Corrupt(format!("encoding the baselines: {e}")))?;
        let mut tx = self.begin().await?;
        tx.execute(
            sqlx::query(
                "INSERT INTO learned_snapshots (name, taken_at, body) VALUES ($1, $2, $3) \
                 ON CONFLICT (name) DO UPDATE SET taken_at = excluded.taken_at, body = excluded.body",
            )
            .bind(BASELINES)
            .bind(now)
            .bind(body),
        )
        .await?;
        // The rows of an earlier version, superseded by the snapshot.
        tx.execute(sqlx::query("DELETE FROM download_baselines"))
            .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn quality_states(&self) -> Result<HashMap<String, QualityState>, StoreError> {
        let rows = sqlx::query(
            "SELECT package, score, band, failed, peak, peak_band, peak_at, computed_at FROM quality_scores",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut out = HashMap::with_capacity(rows.len());
        for r in rows {
            let failed: String = r.try_get(3)?;
            out.insert(
                r.try_get(0)?,
                QualityState {
                    score: r.try_get(1)?,
                    band: r.try_get(2)?,
                    failed: serde_json::from_str(&failed).unwrap_or_default(),
                    peak: r.try_get(4)?,
                    peak_band: r.try_get(5)?,
                    peak_at: r.try_get(6)?,
                    computed_at: r.try_get(7)?,
                },
            );
        }
        Ok(out)
    }

    pub async fn save_quality_states(
        &self,
        rows: &[(&str, &QualityState)],
    ) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let params: Vec<Vec<Param>> = rows
            .iter()
            .map(|(p, q)| {
                vec![
                    Param::Text(p.to_string()),
                    Param::Float(q.score),
                    Param::Text(q.band.clone()),
                    Param::Text(serde_json::to_string(&q.failed).unwrap_or_else(|_| "[]".into())),
                    Param::Float(q.peak),
                    Param::Text(q.peak_band.clone()),
                    Param::Int(q.peak_at),
                    Param::Int(q.computed_at),
                ]
            })
            .collect();
        let mut tx = self.begin().await?;
        insert_rows(
            &mut tx,
            "quality_scores",
            &[
                "package",
                "score",
                "band",
                "failed",
                "peak",
                "peak_band",
                "peak_at",
                "computed_at",
            ],
            &params,
            "ON CONFLICT (package) DO UPDATE SET score = excluded.score, band = excluded.band, \
             failed = excluded.failed, peak = excluded.peak, peak_band = excluded.peak_band, peak_at = excluded.peak_at, \
             computed_at = excluded.computed_at",
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
}
