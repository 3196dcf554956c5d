//! Counts across the store for reports and status pages: deprecated packages, executed remediations by action, the mean quality score.

use std::collections::BTreeMap;

use sqlx::Row;

use super::{Store, StoreError};

impl Store {
    /// Packages flagged deprecated.
    pub async fn deprecated_packages(&self) -> Result<i64, StoreError> {
        let row = self
            .reads()
            .query("SELECT COUNT(*) FROM packages WHERE status = 'deprecated'")
            .fetch_one()
            .await?;
        Ok(row.try_get(0)?)
    }

    /// Executed remediations, by action.
    pub async fn executed_by_action(&self) -> Result<BTreeMap<String, i64>, StoreError> {
        let rows = self
            .reads()
            .query("SELECT action, COUNT(*) FROM remediations WHERE status = 'executed' GROUP BY action")
            .fetch_all()
            .await?;
        let mut out = BTreeMap::new();
        for r in rows {
            out.insert(r.try_get::<String, _>(0)?, r.try_get::<i64, _>(1)?);
        }
        Ok(out)
    }

    /// The mean of the packages' quality scores; None without any.
    pub async fn mean_quality(&self) -> Result<Option<f64>, StoreError> {
        let row = self
            .reads()
            .query("SELECT AVG(score) FROM quality_scores")
            .fetch_one()
            .await?;
        Ok(row.try_get::<Option<f64>, _>(0)?)
    }
}
