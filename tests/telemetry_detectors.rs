//! The detectors fed by telemetry, over virtual time: install and latency burn rates, reports, download baselines.

mod common;

use common::store;
use mapek::analyze::{AnalyzeInput, Analyzer, Rules};
use mapek::knowledge::findings::{Finding, FindingState};
use mapek::knowledge::Store;
use mapek::model::{FindingKind, Severity};
use mapek::monitor::events::{Batch, Event, Report, HOUR, MINUTE};

/// Writes `ok` and `failed` installs of `package@1.0.0` in every minute of [from, to).
async fn installs(store: &Store, package: &str, from: i64, to: i64, ok: i64, failed: i64) {
    let mut b = Batch::default();
    let mut t = from;
    while t < to {
        for i in 0..(ok + failed) {
            b.add(Event::Install {
                package: package.into(),
                version: "1.0.0".into(),
                ok: i >= failed,
                at: t,
            });
        }
        t += MINUTE;
    }
    store.write_telemetry(&b).await.unwrap();
}

async fn judge(a: &mut Analyzer, store: &Store, since: &mut i64, now: i64) -> Vec<Finding> {
    let delta = store.telemetry_since(*since).await.unwrap();
    *since = delta.head;
    let input = AnalyzeInput {
        telemetry: Some(&delta),
        ..Default::default()
    };
    let out = a.cycle(store, input, now).await.unwrap();
    let open = store.open_findings().await.unwrap();
    // The stage counts what is open without asking the store again: the same as the store's.
    let mut counted = std::collections::BTreeMap::new();
    for f in &open {
        *counted.entry(f.kind).or_insert(0) += 1;
    }
    assert_eq!(out.open_by_kind, counted);
    open
}

fn of<'a>(open: &'a [Finding], kind: FindingKind, package: &str) -> Option<&'a Finding> {
    open.iter()
        .find(|f| f.kind == kind && f.subject.package == package)
}

const T0: i64 = 1_795_000_000_000 - 1_795_000_000_000 % HOUR;

#[tokio::test]
async fn install_burn_pages_just_over_14_4x_and_only_tickets_just_under() {
    let t = store().await;
    let mut a = Analyzer::new(Rules::default());
    let mut since = 0;
    // Five clean hours, then an hour failing 71 % (14.2x) for `under` and 73 % (14.6x) for `over`.
    for p in ["under", "over"] {
        installs(&t.store, p, T0, T0 + 5 * HOUR, 100, 0).await;
    }
    installs(&t.store, "under", T0 + 5 * HOUR, T0 + 6 * HOUR, 29, 71).await;
    installs(&t.store, "over", T0 + 5 * HOUR, T0 + 6 * HOUR, 27, 73).await;
    let open = judge(&mut a, &t.store, &mut since, T0 + 6 * HOUR).await;
    let under = of(&open, FindingKind::InstallFailureBurn, "under").expect("3d/6h pair burns");
    assert_eq!(under.severity, Severity::Warning);
    let over = of(&open, FindingKind::InstallFailureBurn, "over").expect("1h/5m pair burns");
    assert_eq!(over.severity, Severity::Critical);
    assert_eq!(over.state, FindingState::Firing);
    assert!((over.value - 14.6).abs() < 1e-6, "{}", over.value);
}

#[tokio::test]
async fn install_burn_needs_the_minimum_volume() {
    let t = store().await;
    let mut a = Analyzer::new(Rules::default());
    let mut since = 0;
    // Every install fails, but 19 in the whole window are too few to judge; 20 are enough.
    let mut b = Batch::default();
    for (p, n) in [("few", 19), ("enough", 20)] {
        for i in 0..n {
            b.add(Event::Install {
                package: p.into(),
                version: "1.0.0".into(),
                ok: false,
                at: T0 + 59 * MINUTE + i,
            });
        }
    }
    t.store.write_telemetry(&b).await.unwrap();
    let open = judge(&mut a, &t.store, &mut since, T0 + HOUR).await;
    assert!(of(&open, FindingKind::InstallFailureBurn, "few").is_none());
    assert!(of(&open, FindingKind::InstallFailureBurn, "enough").is_some());
}

#[tokio::test]
async fn a_burn_survives_a_restart_and_a_gap_resolves_it_only_after_keep_firing_for() {
    let t = store().await;
    let mut a = Analyzer::new(Rules::default());
    let mut since = 0;
    installs(&t.store, "bad", T0, T0 + 30 * MINUTE, 10, 10).await;
    let open = judge(&mut a, &t.store, &mut since, T0 + 30 * MINUTE).await;
    let first = of(&open, FindingKind::InstallFailureBurn, "bad")
        .unwrap()
        .clone();
    assert_eq!(first.severity, Severity::Critical);

    // Restart in the middle of the window: a new analyzer reads the stored buckets again.
    let mut a = Analyzer::new(Rules::default());
    let mut since = 0;
    let open = judge(&mut a, &t.store, &mut since, T0 + 31 * MINUTE).await;
    let again = of(&open, FindingKind::InstallFailureBurn, "bad").unwrap();
    assert_eq!(again.id, first.id, "the same finding, not a new one");

    // A gap in telemetry: three hours on, the 3d/6h pair still burns (a ticket now, not a page).
    let open = judge(&mut a, &t.store, &mut since, T0 + 3 * HOUR).await;
    let f = of(&open, FindingKind::InstallFailureBurn, "bad").unwrap();
    assert_eq!((f.severity, f.cleared_at), (Severity::Warning, None));
    // Once the 6 h window has emptied the condition clears, but the finding keeps firing for
    // keep_firing_for (15 minutes by default), then resolves.
    let clear_from = T0 + 6 * HOUR + 30 * MINUTE + 1;
    let open = judge(&mut a, &t.store, &mut since, clear_from).await;
    let f = of(&open, FindingKind::InstallFailureBurn, "bad").expect("still firing while clear");
    assert_eq!(f.cleared_at, Some(clear_from));
    let open = judge(&mut a, &t.store, &mut since, clear_from + 15 * MINUTE - 1).await;
    assert!(of(&open, FindingKind::InstallFailureBurn, "bad").is_some());
    let open = judge(&mut a, &t.store, &mut since, clear_from + 15 * MINUTE).await;
    assert!(of(&open, FindingKind::InstallFailureBurn, "bad").is_none());
}

#[tokio::test]
async fn lookup_latency_burns_against_its_own_slo() {
    let t = store().await;
    let mut a = Analyzer::new(Rules::default());
    let mut since = 0;
    let mut b = Batch::default();
    // One hour, 100 lookups a minute; 20 % over 100 ms: 20x the 1 % budget.
    for m in 0..60 {
        for i in 0..100 {
            b.add(Event::Lookup {
                latency_ms: if i < 20 { 150.0 } else { 100.0 },
                at: T0 + m * MINUTE,
            });
        }
    }
    t.store.write_telemetry(&b).await.unwrap();
    let open = judge(&mut a, &t.store, &mut since, T0 + HOUR).await;
    let f = of(&open, FindingKind::LookupLatencyBurn, "*").expect("burning");
    assert_eq!(f.severity, Severity::Critical);
    assert!((f.value - 20.0).abs() < 1e-6);

    // The same traffic judged against a 150 ms threshold is within its SLO.
    let mut rules = Rules::default();
    rules.settings.latency_threshold_ms = 150;
    let t2 = store().await;
    t2.store.write_telemetry(&b).await.unwrap();
    let mut a = Analyzer::new(rules);
    let mut since = 0;
    let open = judge(&mut a, &t2.store, &mut since, T0 + HOUR).await;
    assert!(of(&open, FindingKind::LookupLatencyBurn, "*").is_none());
}

fn report(reporter: &str, category: &str, at: i64) -> Event {
    Event::Report(Report {
        package: "sparql-cli".into(),
        version: "1.0.0".into(),
        reporter: reporter.into(),
        category: category.into(),
        at,
    })
}

#[tokio::test]
async fn a_report_warns_and_only_distinct_malware_reporters_make_it_critical() {
    let t = store().await;
    let mut a = Analyzer::new(Rules::default());
    let mut since = 0;
    let mut b = Batch::default();
    b.add(report("alice", "malware", T0));
    b.add(report("alice", "malware", T0 + 1));
    b.add(report("bob", "spam", T0 + 2));
    t.store.write_telemetry(&b).await.unwrap();
    let open = judge(&mut a, &t.store, &mut since, T0 + MINUTE).await;
    let f = of(&open, FindingKind::Reported, "sparql-cli").unwrap();
    assert_eq!(
        f.severity,
        Severity::Warning,
        "one malware reporter, however often"
    );
    let mut b = Batch::default();
    b.add(report("carol", "malware", T0 + 3));
    t.store.write_telemetry(&b).await.unwrap();
    let open = judge(&mut a, &t.store, &mut since, T0 + 2 * MINUTE).await;
    let f = of(&open, FindingKind::Reported, "sparql-cli").unwrap();
    assert_eq!(f.severity, Severity::Critical);
    assert_eq!(f.labels["malware_reporters"], 2);
    // Reports older than the window (30 days) no longer count; the finding resolves after
    // keep_firing_for (1 hour).
    let later = T0 + 30 * 24 * HOUR + HOUR;
    judge(&mut a, &t.store, &mut since, later).await;
    let open = judge(&mut a, &t.store, &mut since, later + HOUR).await;
    assert!(of(&open, FindingKind::Reported, "sparql-cli").is_none());
}

/// `per_hour(h)` downloads of `package` in hour `h` after T0.
async fn downloads(
    store: &Store,
    package: &str,
    hours: std::ops::Range<i64>,
    per_hour: impl Fn(i64) -> i64,
) {
    let mut b = Batch::default();
    for h in hours {
        for i in 0..per_hour(h) {
            b.add(Event::Download {
                package: package.into(),
                version: "1.0.0".into(),
                at: T0 + h * HOUR + i % HOUR,
            });
        }
    }
    store.write_telemetry(&b).await.unwrap();
}

#[tokio::test]
async fn a_download_spike_against_the_learned_baseline_fires_and_small_packages_do_not_page() {
    // Two stores with the same traffic: one analyzer runs throughout, the other is restarted
    // before the spike, and must judge it as the first does.
    let (t, t2) = (store().await, store().await);
    let mut a = Analyzer::new(Rules::default());
    let mut a2 = Analyzer::new(Rules::default());
    let (mut since, mut since2) = (0, 0);
    // 30 hours of a steady 200 an hour (a little noise), and of 5 an hour for a small package.
    for s in [&t.store, &t2.store] {
        downloads(s, "big", 0..30, |h| 200 + (h % 3) * 5).await;
        downloads(s, "small", 0..30, |_| 5).await;
    }
    for h in 1..=30 {
        let open = judge(&mut a, &t.store, &mut since, T0 + h * HOUR + MINUTE).await;
        assert!(
            of(&open, FindingKind::DownloadAnomaly, "big").is_none(),
            "hour {h}"
        );
        judge(&mut a2, &t2.store, &mut since2, T0 + h * HOUR + MINUTE).await;
    }
    // Baselines are saved once a day (at the first fold and a day later), not at every fold.
    let learned = t2.store.baselines().await.unwrap();
    let samples = learned["big"].samples;
    assert!((20..28).contains(&samples), "{learned:?}");
    // Restart: the baseline comes back from the store and the hours since its save are folded
    // again from the stored telemetry.
    let mut a2 = Analyzer::new(Rules::default());
    let mut since2 = 0;
    for s in [&t.store, &t2.store] {
        downloads(s, "big", 30..31, |_| 2_000).await;
        downloads(s, "small", 30..31, |_| 60).await;
    }
    let now = T0 + 31 * HOUR + MINUTE;
    let open = judge(&mut a, &t.store, &mut since, now).await;
    let open2 = judge(&mut a2, &t2.store, &mut since2, now).await;
    let f = of(&open, FindingKind::DownloadAnomaly, "big").expect("a tenfold hour");
    assert_eq!(f.labels["direction"], "spike");
    let f2 = of(&open2, FindingKind::DownloadAnomaly, "big").expect("after the restart too");
    assert_eq!(
        (&f2.labels["baseline"], &f2.labels["z"]),
        (&f.labels["baseline"], &f.labels["z"]),
        "the restarted analyzer's baseline is the one that never stopped"
    );
    assert!(
        of(&open, FindingKind::DownloadAnomaly, "small").is_none(),
        "60 downloads an hour are under the minimum volume"
    );
    // Later in the same hour the hour is not folded again, but its anomaly still holds: the
    // finding is seen again (its last_seen moves on), not left to resolve.
    let later = T0 + 31 * HOUR + 20 * MINUTE;
    let open = judge(&mut a, &t.store, &mut since, later).await;
    let again = of(&open, FindingKind::DownloadAnomaly, "big").expect("still open");
    assert_eq!(again.last_seen, later);
}

#[tokio::test]
async fn baselines_are_one_snapshot_and_an_earlier_versions_rows_are_read_until_it_is_taken() {
    let t = store().await;
    sqlx::query(
        "INSERT INTO download_baselines (package, mean, var, samples, last_hour) \
         VALUES ('old', 12.5, 3.0, 40, 7)",
    )
    .execute(t.store.raw_pool())
    .await
    .unwrap();
    let mut b = t.store.baselines().await.unwrap();
    assert_eq!(b["old"].samples, 40, "the rows of an earlier version");
    b.get_mut("old").unwrap().samples = 41;
    b.insert(
        "new".into(),
        mapek::knowledge::learned::Baseline {
            mean: 0.1 + 0.2,
            var: 1e-300,
            samples: 1,
            last_hour: T0,
        },
    );
    t.store.save_baselines(&b, T0).await.unwrap();
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM download_baselines")
        .fetch_one(t.store.raw_pool())
        .await
        .unwrap();
    assert_eq!(rows, 0, "superseded by the snapshot");
    assert_eq!(
        t.store.baselines().await.unwrap(),
        b,
        "exact, floats included"
    );
}

#[tokio::test]
async fn a_baseline_save_that_fails_is_tried_again_at_the_next_cycle() {
    let t = store().await;
    let mut a = Analyzer::new(Rules::default());
    // A first pass before any hour is complete: nothing learnt, nothing to save.
    let none = t.store.telemetry_since(0).await.unwrap();
    let input = AnalyzeInput {
        telemetry: Some(&none),
        ..Default::default()
    };
    a.cycle(&t.store, input, T0 + MINUTE).await.unwrap();
    downloads(&t.store, "big", 0..2, |_| 200).await;
    let delta = t.store.telemetry_since(none.head).await.unwrap();
    // The hours complete and the first baseline is due to be saved, on a store that is gone.
    let gone = Store::open(&t.url).await.unwrap();
    gone.close().await;
    let input = AnalyzeInput {
        telemetry: Some(&delta),
        findings_untouched: true,
        ..Default::default()
    };
    assert!(a.cycle(&gone, input, T0 + 2 * HOUR + MINUTE).await.is_err());
    assert!(t.store.baselines().await.unwrap().is_empty());
    // The next cycle, on the store that is back, saves it; not a day later.
    let empty = t.store.telemetry_since(delta.head).await.unwrap();
    let input = AnalyzeInput {
        telemetry: Some(&empty),
        ..Default::default()
    };
    a.cycle(&t.store, input, T0 + 2 * HOUR + 2 * MINUTE)
        .await
        .unwrap();
    let saved = t.store.baselines().await.unwrap();
    assert!(saved.contains_key("big"), "{saved:?}");
}
