//! The timeline's samples: the registry's health, open findings and actions at a moment of virtual time.

use super::report::Sample;
use super::world::World;
use crate::registry::Registry;

pub(super) async fn sample(w: &World, now: i64, t: i64) -> Sample {
    use sqlx::Row as _;
    let pool = &w.store.pool;
    let counts = w.registry.inner.counts().await.ok();
    let open = w.store.open_findings().await.map(|f| f.len() as i64).ok();
    let deprecated = sqlx::query("SELECT COUNT(*) FROM packages WHERE status = 'deprecated'")
        .fetch_one(pool)
        .await
        .and_then(|r| r.try_get::<i64, _>(0))
        .ok();
    let mut actions = std::collections::BTreeMap::new();
    if let Ok(rows) = sqlx::query(
        "SELECT action, COUNT(*) FROM remediations WHERE status = 'executed' GROUP BY action",
    )
    .fetch_all(pool)
    .await
    {
        for r in rows {
            if let (Ok(a), Ok(n)) = (r.try_get::<String, _>(0), r.try_get::<i64, _>(1)) {
                actions.insert(a, n);
            }
        }
    }
    // Two decimals, so the report stays byte-identical across platforms' float printing.
    let round = |x: f64| (x * 100.0).round() / 100.0;
    let mean_quality = sqlx::query("SELECT AVG(score) FROM quality_scores")
        .fetch_one(pool)
        .await
        .ok()
        .and_then(|r| r.try_get::<Option<f64>, _>(0).ok().flatten())
        .map(round);
    let install_failure_ratio = Some(round(w.telemetry.install_failure_ratio(now)));
    Sample {
        t_s: t / 1000,
        quarantined: counts.map(|c| c.quarantined),
        deprecated,
        mean_quality,
        install_failure_ratio,
        open_findings: open,
        actions: (!actions.is_empty() || counts.is_some()).then_some(actions),
    }
}
