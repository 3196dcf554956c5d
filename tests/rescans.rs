//! Full scans of a file-backed registry: what they hash, read and write again, and how analysis takes a finding that only stays; a restart rewrites nothing unchanged.

mod common;

use common::{world, World, NOW};
use mapek::analyze::{self, Rules};
use mapek::monitor::{self, MonitorState};
use mapek::registry::Registry;

/// (package, observed_at, signature state) of each stored observation of release 1.0.0.
async fn stored_observations(w: &World) -> Vec<(String, i64, String)> {
    use sqlx::Row;
    sqlx::query(
        "SELECT package, observed_at, signature_state FROM release_observations \
         WHERE version = '1.0.0' ORDER BY package",
    )
    .fetch_all(w.t.store.raw_pool())
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

#[tokio::test]
async fn a_full_scan_writes_only_the_observations_that_changed() {
    let w = world(30).await;
    let mut state = MonitorState::new();
    // Every pass is a full scan (interval 0): every release is hashed and judged each time.
    let mut scan = async |now: i64| {
        let m = monitor::cycle(&mut state, &w.registry, &w.t.store, &w.trust, now, 0)
            .await
            .unwrap();
        assert!(m.full_scan);
        let handed: Vec<String> = m.observations.iter().map(|o| o.package.clone()).collect();
        (m.scanned, handed)
    };
    let (seen, handed) = scan(NOW).await;
    assert_eq!(
        handed.len(),
        seen,
        "the first pass hands analysis everything"
    );
    let before = stored_observations(&w).await;
    assert_eq!(before.len(), 30);
    assert!(before.iter().all(|o| o.1 == NOW), "{before:?}");
    // Nothing changed: a full scan sees every release again, writes none of them, and hands
    // analysis none of them (they are healthy and unchanged).
    assert_eq!(scan(NOW + 60_000).await, (seen, vec![]));
    assert_eq!(stored_observations(&w).await, before);
    // Three releases go bad: their observations alone are written, at the time they were seen,
    // and handed to analysis; the next full scan hands them again (they are not healthy).
    w.plant_problems().await;
    let bad = ["pkg-00002", "pkg-00003", "pkg-00004"]
        .map(String::from)
        .to_vec();
    assert_eq!(scan(NOW + 120_000).await, (seen, bad.clone()));
    assert_eq!(scan(NOW + 180_000).await, (seen, bad));
    let after = stored_observations(&w).await;
    let moved: Vec<&str> = after
        .iter()
        .filter(|o| o.1 == NOW + 120_000)
        .map(|o| o.0.as_str())
        .collect();
    assert_eq!(moved, ["pkg-00002", "pkg-00003", "pkg-00004"]);
    for o in after.iter().filter(|o| o.1 == NOW) {
        assert!(before.contains(o), "{o:?} is as it was");
    }
}

#[tokio::test]
async fn an_observation_the_store_failed_to_write_is_written_at_the_next_pass() {
    let w = world(30).await;
    let mut state = MonitorState::new();
    let pool = w.t.store.raw_pool();
    monitor::cycle(&mut state, &w.registry, &w.t.store, &w.trust, NOW, 0)
        .await
        .unwrap();
    w.plant_problems().await;
    // The observations' table is away: the pass that finds the three bad releases fails to
    // write them, and must not take them as written.
    sqlx::query("ALTER TABLE release_observations RENAME TO release_observations_away")
        .execute(pool)
        .await
        .unwrap();
    let failed = monitor::cycle(
        &mut state,
        &w.registry,
        &w.t.store,
        &w.trust,
        NOW + 60_000,
        0,
    )
    .await;
    assert!(failed.is_err(), "the write failed, so the pass did");
    sqlx::query("ALTER TABLE release_observations_away RENAME TO release_observations")
        .execute(pool)
        .await
        .unwrap();
    monitor::cycle(
        &mut state,
        &w.registry,
        &w.t.store,
        &w.trust,
        NOW + 120_000,
        0,
    )
    .await
    .unwrap();
    let written: Vec<String> = stored_observations(&w)
        .await
        .into_iter()
        .filter(|o| o.1 == NOW + 120_000)
        .map(|o| o.0)
        .collect();
    assert_eq!(written, ["pkg-00002", "pkg-00003", "pkg-00004"]);
}

#[tokio::test]
async fn a_restart_on_an_unchanged_store_rewrites_no_observation() {
    let w = world(30).await;
    let mut first = MonitorState::new();
    monitor::cycle(&mut first, &w.registry, &w.t.store, &w.trust, NOW, 0)
        .await
        .unwrap();
    let before = stored_observations(&w).await;
    assert_eq!(before.len(), 30);
    // A new process: its monitor remembers nothing of what it recorded, and its first pass is
    // a full scan an hour later. The store already holds each release as it still is.
    let mut restarted = MonitorState::new();
    let later = NOW + 3_600_000;
    monitor::cycle(&mut restarted, &w.registry, &w.t.store, &w.trust, later, 0)
        .await
        .unwrap();
    assert_eq!(
        stored_observations(&w).await,
        before,
        "no observation was rewritten (observed_at stays when each was first seen as it is)"
    );
    // A release that did change is still written.
    w.plant_problems().await;
    let mut again = MonitorState::new();
    monitor::cycle(
        &mut again,
        &w.registry,
        &w.t.store,
        &w.trust,
        later + 60_000,
        0,
    )
    .await
    .unwrap();
    let moved = stored_observations(&w)
        .await
        .into_iter()
        .filter(|o| o.1 == later + 60_000)
        .count();
    assert_eq!(moved, 3);
}

#[tokio::test]
async fn full_scans_hash_every_known_release_and_reread_every_record_once_a_day() {
    let w = world(10).await;
    let mut state = MonitorState::new();
    const HOUR: i64 = 3_600_000;
    let signature_of = |m: &monitor::MonitorOutput, package: &str| {
        m.observations
            .iter()
            .find(|o| o.package == package && o.version == "1.0.0")
            .map(|o| o.signature)
    };
    let m = monitor::cycle(&mut state, &w.registry, &w.t.store, &w.trust, NOW, HOUR)
        .await
        .unwrap();
    let releases = m.scanned;
    assert!(releases >= 10, "{releases}");
    // Bytes changed behind the registry's back: the next full scan hashes them again, though
    // the change sequence did not move.
    w.plant_problems().await;
    // And a row rewritten without moving the change sequence (by hand, say).
    sqlx::query(
        "UPDATE releases SET signature = '00' WHERE package = 'pkg-00007' AND version = '1.0.0'",
    )
    .execute(w.t.store.raw_pool())
    .await
    .unwrap();
    let m = monitor::cycle(
        &mut state,
        &w.registry,
        &w.t.store,
        &w.trust,
        NOW + HOUR,
        HOUR,
    )
    .await
    .unwrap();
    assert!(m.full_scan);
    assert_eq!(m.scanned, releases, "every known release");
    let tampered = m
        .observations
        .iter()
        .find(|o| o.package == "pkg-00002" && o.version == "1.0.0")
        .unwrap();
    assert!(
        matches!(tampered.integrity, mapek::model::Integrity::Mismatch { .. }),
        "{tampered:?}"
    );
    assert_eq!(
        signature_of(&m, "pkg-00007"),
        None,
        "the hand-made change is not seen before the day's full read: unchanged, not handed on"
    );
    let m = monitor::cycle(
        &mut state,
        &w.registry,
        &w.t.store,
        &w.trust,
        NOW + 24 * HOUR,
        HOUR,
    )
    .await
    .unwrap();
    assert_eq!(
        signature_of(&m, "pkg-00007"),
        Some(mapek::model::SignatureState::Invalid),
        "the day's full read sees it"
    );
}

#[tokio::test]
async fn bytes_tampered_behind_the_registry_lower_the_quality_score_at_the_next_full_scan() {
    let w = world(10).await;
    let mut state = MonitorState::new();
    let mut analyzer = analyze::Analyzer::new(Rules::default());
    const HOUR: i64 = 3_600_000;
    let mut pass = async |now: i64| {
        let m = monitor::cycle(&mut state, &w.registry, &w.t.store, &w.trust, now, HOUR)
            .await
            .unwrap();
        analyzer
            .cycle(&w.t.store, analyze::AnalyzeInput::from_monitor(&m), now)
            .await
            .unwrap();
    };
    pass(NOW).await;
    let before = w.t.store.quality_states().await.unwrap()["pkg-00005"].clone();
    assert!(
        !before.failed.contains(&"checksum".to_string()),
        "{before:?}"
    );
    // The latest release's bytes change; the registry's change sequence does not move, so the
    // facts are the same and only the observation tells the quality pass.
    let latest = w
        .registry
        .package("pkg-00005")
        .await
        .unwrap()
        .and_then(|p| p.latest)
        .unwrap();
    common::tamper_release(&w.registry, "pkg-00005", &latest).await;
    pass(NOW + 60_000).await;
    pass(NOW + HOUR).await;
    let after = w.t.store.quality_states().await.unwrap()["pkg-00005"].clone();
    assert!(after.failed.contains(&"checksum".to_string()), "{after:?}");
    assert!(after.score < before.score, "{before:?} -> {after:?}");
}

/// A monitor pass (a full scan every minute) and the analyzer's pass on it.
async fn judged(
    w: &World,
    state: &mut MonitorState,
    analyzer: &mut analyze::Analyzer,
    now: i64,
) -> analyze::AnalyzeOutput {
    let m = monitor::cycle(state, &w.registry, &w.t.store, &w.trust, now, 60_000)
        .await
        .unwrap();
    analyzer
        .cycle(&w.t.store, analyze::AnalyzeInput::from_monitor(&m), now)
        .await
        .unwrap()
}

async fn mismatch_last_seen(w: &World) -> Option<i64> {
    let open = w.t.store.open_findings().await.unwrap();
    open.into_iter()
        .find(|f| f.kind.as_str() == "checksum_mismatch")
        .map(|f| f.last_seen)
}

#[tokio::test]
async fn a_finding_that_only_stays_is_refreshed_in_the_store_without_counting_as_a_change() {
    let w = world(10).await;
    let path = w.artifact_path("pkg-00002", "1.0.0").await;
    let original = std::fs::read(&path).unwrap();
    std::fs::write(&path, b"tampered").unwrap();
    let mut state = MonitorState::new();
    let mut analyzer = analyze::Analyzer::new(Rules::default());
    let first = judged(&w, &mut state, &mut analyzer, NOW).await;
    assert!(first.changed, "the mismatch is a new finding");
    assert_eq!(mismatch_last_seen(&w).await, Some(NOW));
    // A minute later it still holds: nothing is written.
    let again = judged(&w, &mut state, &mut analyzer, NOW + 60_000).await;
    assert!(!again.changed);
    assert_eq!(mismatch_last_seen(&w).await, Some(NOW));
    // Past the refresh interval its last_seen is written, and that is not a change a later
    // stage would act on.
    let later = NOW + 11 * 60_000;
    let refreshed = judged(&w, &mut state, &mut analyzer, later).await;
    assert!(!refreshed.changed);
    assert_eq!(mismatch_last_seen(&w).await, Some(later));
    // Restored, the finding starts to clear: that is a change.
    std::fs::write(&path, original).unwrap();
    let cleared = judged(&w, &mut state, &mut analyzer, later + 60_000).await;
    assert!(cleared.changed);
}
