//! The timeline's samples: the registry's health, open findings and actions at a moment of virtual time.

use super::report::Sample;
use super::world::World;
use crate::registry::Registry;

pub(super) async fn sample(w: &World, now: i64, t: i64) -> Sample {
    let counts = w.registry.inner.counts().await.ok();
    let open = w.store.open_findings().await.map(|f| f.len() as i64).ok();
    let deprecated = w.store.deprecated_packages().await.ok();
    let actions = w.store.executed_by_action().await.unwrap_or_default();
    // Two decimals, so the report stays byte-identical across platforms' float printing.
    let round = |x: f64| (x * 100.0).round() / 100.0;
    let mean_quality = w.store.mean_quality().await.ok().flatten().map(round);
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
