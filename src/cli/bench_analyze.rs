//! `mapek bench --analyze`: the analyze stage over a generated registry with a day of aggregated telemetry, cold (after a restart) and in steady state.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use super::bench::median;

use crate::analyze::{AnalyzeInput, Analyzer, Rules};
use crate::clock::{Clock, SystemClock};
use crate::knowledge::Store;
use crate::monitor::events::{Batch, Counts, Event, HOUR, MINUTE};
use crate::monitor::{self, MonitorState};
use crate::registry::generate::{self, GenerateSpec};
use crate::registry::{Registry, SqlRegistry};

/// Writes a day of telemetry for one release of every package: in each hour, two active minutes
/// of 20 good installs, 1 failed and 30 downloads; registry-wide lookups every minute. Minute
/// buckets older than 7 hours are then dropped, as retention does.
async fn a_day_of_telemetry(
    store: &Store,
    releases: &[(String, String)],
    now: i64,
) -> anyhow::Result<usize> {
    let hour0 = now.div_euclid(HOUR) * HOUR - 23 * HOUR;
    let mut rows = 0;
    for chunk in releases.chunks(2_000) {
        let mut b = Batch::default();
        for (i, (p, v)) in chunk.iter().enumerate() {
            for h in 0..24 {
                for m in [(i as i64) % 60, (i as i64 + 30) % 60] {
                    let at = hour0 + h * HOUR + m * MINUTE;
                    if at > now {
                        continue;
                    }
                    b.releases.insert(
                        (p.as_str().into(), v.as_str().into(), at),
                        Counts {
                            installs_ok: 20,
                            installs_failed: 1,
                            downloads: 30,
                        },
                    );
                }
            }
        }
        rows += b.releases.len();
        store.write_telemetry(&b).await?;
    }
    let mut b = Batch::default();
    let mut t = hour0;
    while t <= now {
        for i in 0..50 {
            b.add(Event::Lookup {
                latency_ms: (i * 7 % 120) as f64,
                at: t,
            });
        }
        t += MINUTE;
    }
    store.write_telemetry(&b).await?;
    store
        .prune_telemetry(now - 7 * HOUR, now - 96 * HOUR, now - 30 * 24 * HOUR)
        .await?;
    Ok(rows)
}

pub async fn bench(packages: usize, max_releases: usize, runs: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(&dir.path().join("bench.db").display().to_string()).await?;
    let registry = Arc::new(SqlRegistry::new(
        store.clone(),
        dir.path().join("artifacts"),
    ));
    let now = SystemClock.now_ms();
    let spec = GenerateSpec {
        packages,
        max_releases,
        ..GenerateSpec::default()
    };
    let g = generate::generate(&registry, &spec, now).await?;
    let trust = Arc::new(g.trust);
    let (all, _) = registry.releases_since(0).await?;
    let mut first: HashMap<String, String> = HashMap::new();
    for r in &all {
        first.entry(r.package.clone()).or_insert(r.version.clone());
    }
    let releases: Vec<(String, String)> = first.into_iter().collect();
    let t = Instant::now();
    let rows = a_day_of_telemetry(&store, &releases, now).await?;
    println!(
        "registry: {packages} packages, {} releases; a day of telemetry: {rows} minute buckets written ({:.1} s), minute buckets of the last 7 h and hour buckets kept",
        all.len(),
        t.elapsed().as_secs_f64()
    );
    let mut cold = Vec::new();
    let mut steady = Vec::new();
    for run in 0..runs {
        // A restart: fresh monitor and analyzer memory; the store keeps what they learned.
        let mut state = MonitorState::new();
        let mut analyzer = Analyzer::new(Rules::default());
        let m = monitor::cycle(&mut state, &registry, &store, &trust, now, i64::MAX).await?;
        let t = Instant::now();
        let out = analyzer
            .cycle(&store, AnalyzeInput::from_monitor(&m), now)
            .await?;
        cold.push(t.elapsed());
        let open: i64 = out.open_by_kind.values().sum();
        for i in 1..=5 {
            let at = now + i * MINUTE;
            let mut b = Batch::default();
            for (p, v) in releases.iter().take(1_000) {
                b.add(Event::Download {
                    package: p.clone(),
                    version: v.clone(),
                    at,
                });
            }
            store.write_telemetry(&b).await?;
            let m = monitor::cycle(&mut state, &registry, &store, &trust, at, i64::MAX).await?;
            let t = Instant::now();
            analyzer
                .cycle(&store, AnalyzeInput::from_monitor(&m), at)
                .await?;
            steady.push(t.elapsed());
        }
        println!(
            "run {}: analyze after a restart {:.3} s, open findings {open}",
            run + 1,
            cold[run].as_secs_f64()
        );
    }
    println!(
        "analyze stage, {packages} packages with a day of telemetry: after a restart (reads every bucket kept) median {:.3} s over {runs} runs; steady cycle (1,000 new events) median {:.3} s over {} cycles",
        median(cold).as_secs_f64(),
        median(steady.clone()).as_secs_f64(),
        steady.len()
    );
    store.close().await;
    Ok(())
}
