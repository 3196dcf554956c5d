//! What analysis learns and must keep across restarts: download baselines and each package's quality score with its recent peak.

use sqlx::Row;
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

impl Store {
    pub async fn baselines(&self) -> Result<HashMap<String, Baseline>, StoreError> {
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

    pub async fn save_baselines(&self, rows: &[(&str, Baseline)]) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let params: Vec<Vec<Param>> = rows
            .iter()
            .map(|(p, b)| {
                vec![
                    Param::Text(p.to_string()),
                    Param::Float(b.mean),
                    Param::Float(b.var),
                    Param::Int(b.samples),
                    Param::Int(b.last_hour),
                ]
            })
            .collect();
        let mut tx = self.begin().await?;
        insert_rows(
            &mut tx,
            "download_baselines",
            &["package", "mean", "var", "samples", "last_hour"],
            &params,
            "ON CONFLICT (package) DO UPDATE SET mean = excluded.mean, var = excluded.var, \
             samples = excluded.samples, last_hour = excluded.last_hour",
        )
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
