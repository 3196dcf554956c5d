//! Full scans of a registry whose artifacts are kept in memory (the simulator's): bytes vouched unchanged are not read again, tampered ones are, and records that follow the change sequence are not re-read.

mod common;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use common::{store, NOW};
use mapek::model::Integrity;
use mapek::monitor::{self, MonitorState};
use mapek::registry::artifacts::MemoryArtifacts;
use mapek::registry::generate::{self, GenerateSpec};
use mapek::registry::{Registry, SqlRegistry};
use mapek::sim::registry::SimRegistry;

const HOUR: i64 = 3_600_000;

#[tokio::test]
async fn a_full_scan_reads_only_the_bytes_the_registry_cannot_vouch_for() {
    let t = store().await;
    let inner = SqlRegistry::in_memory(t.store.clone(), Arc::new(MemoryArtifacts::default()));
    let spec = GenerateSpec {
        packages: 20,
        publishers: 3,
        seed: 5,
        ..GenerateSpec::default()
    };
    let g = generate::generate(&inner, &spec, NOW).await.unwrap();
    let trust = Arc::new(g.trust);
    let registry = Arc::new(SimRegistry::new(
        inner.clone(),
        Arc::new(AtomicBool::new(false)),
        None,
    ));
    let mut state = MonitorState::new();
    let mut pass = async |now: i64| {
        monitor::cycle(&mut state, &registry, &t.store, &trust, now, HOUR)
            .await
            .unwrap()
    };
    let first = pass(NOW).await;
    assert_eq!(
        first.verified, first.scanned,
        "every signature checked once"
    );
    // An hour on: a full scan of everything, in which no release is observed again (no
    // verification, not even a cache lookup), and nothing is handed to analysis.
    let again = pass(NOW + HOUR).await;
    assert!(again.full_scan);
    assert_eq!(again.scanned, first.scanned);
    assert_eq!((again.verified, again.cache_hits), (0, 0));
    assert!(again.observations.is_empty());
    // Bytes changed behind the registry's back: the next full scan observes that release alone.
    let r = inner.release("pkg-00004", "1.0.0").await.unwrap().unwrap();
    inner
        .tamper_artifact(r.artifact.as_deref().unwrap())
        .unwrap();
    let tampered = pass(NOW + 2 * HOUR).await;
    assert_eq!(tampered.verified + tampered.cache_hits, 1);
    assert_eq!(tampered.observations.len(), 1);
    assert!(matches!(
        tampered.observations[0].integrity,
        Integrity::Mismatch { .. }
    ));
    // A row changed without moving the sequence is never looked for in a registry whose
    // records follow it; the artifact stays flagged at every full scan.
    sqlx::query("UPDATE releases SET signature = '00' WHERE package = 'pkg-00007'")
        .execute(t.store.raw_pool())
        .await
        .unwrap();
    let day = pass(NOW + 25 * HOUR).await;
    assert!(day.full_scan);
    let handed: Vec<&str> = day
        .observations
        .iter()
        .map(|o| o.package.as_str())
        .collect();
    assert_eq!(handed, ["pkg-00004"]);
}
