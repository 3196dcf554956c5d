//! `mapek bench --marketplace`: a generated ggen-marketplace checkout; its first full cycle, a one-pack change to the republished catalog, and a publication of the whole catalog, timed, with peak memory.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::bench::{median, peak_rss_mib, reset_peak_rss};
use crate::analyze::Rules;
use crate::clock::{Clock, SystemClock};
use crate::cycle::{self, Context, Loop, Observer};
use crate::keys::{KeyPair, TrustStore};
use crate::knowledge::Store;
use crate::plan::policy::PolicySet;
use crate::registry::marketplace::{self, catalog, publish, Marketplace, MarketplaceConfig};
use crate::registry::{Managed, SqlRegistry};

/// The time of the monitor and of the whole cycle, and a failure to publish.
#[derive(Default)]
struct Clocked {
    monitor: Duration,
    publish_error: Option<String>,
}

impl Observer for Clocked {
    fn monitored(&mut self, _: &crate::monitor::MonitorOutput, took: Duration) {
        self.monitor = took;
    }
    fn executed(&mut self, out: &crate::execute::ExecuteOutput, _: Duration) {
        if let Some(Err(e)) = &out.published {
            self.publish_error = Some(e.clone());
        }
    }
}

/// The daemon's cycle, once, on the marketplace (a full scan when `full`); (monitor, whole cycle).
async fn cycle(
    l: &mut Loop,
    registry: &Arc<Managed>,
    store: &Store,
    policies: &PolicySet,
    key: &KeyPair,
    full: bool,
) -> anyhow::Result<(Duration, Duration)> {
    let trust = Arc::new(TrustStore::default());
    l.settings.full_scan_every_ms = if full { 1 } else { i64::MAX };
    let ctx = Context {
        store,
        registry,
        policies,
        trust: &trust,
        key,
        now: SystemClock.now_ms(),
    };
    let t = Instant::now();
    let mut clocked = Clocked::default();
    let step = l.step(&ctx, &mut clocked).await;
    if let Some((stage, error)) = step.failed {
        anyhow::bail!("{stage}: {error}");
    }
    anyhow::ensure!(!step.stale, "the registry could not be read");
    if let Some(e) = clocked.publish_error {
        anyhow::bail!("publishing: {e}");
    }
    Ok((clocked.monitor, t.elapsed()))
}

fn withheld(path: &Path) -> usize {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|d| d["withheld"].as_array().map(|a| a.len()))
        .unwrap_or(0)
}

pub async fn bench(packs: usize, runs: usize, pg: Option<&str>) -> anyhow::Result<()> {
    let policies = PolicySet::from_sources(
        &super::demo::DEFAULT_POLICIES
            .iter()
            .map(|(n, t)| (std::path::PathBuf::from(n), t.to_string()))
            .collect::<Vec<_>>(),
    )
    .map_err(|e| anyhow::anyhow!("embedded policies: {e:?}"))?;
    let key = KeyPair::from_seed("daemon", [7; 32]);
    let dir = tempfile::Builder::new().prefix("mapek-bench").tempdir()?;
    let checkout = dir.path().join("checkout");
    let t = Instant::now();
    marketplace::generate::generate(&checkout, packs)?;
    println!(
        "generated a checkout of {packs} packs (trees, archives, catalog) in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let changes = runs.clamp(1, 20);
    let (mut firsts, mut monitors, mut unchanged, mut one_pack, mut publishes) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut peaks = Vec::new();
    for run in 0..runs.max(1) {
        let run_dir = dir.path().join(format!("store-{run}"));
        std::fs::create_dir_all(&run_dir)?;
        let (store, name) = super::bench_execute::fresh_store(&run_dir, pg, run).await?;
        // Every archive as generated, before this run tampers with some.
        let run_checkout = dir.path().join(format!("run-{run}"));
        copy(&checkout, &run_checkout)?;
        let mut config = MarketplaceConfig::at(&run_checkout);
        let published = dir.path().join(format!("www-{run}/index.json"));
        config.publish = Some(published.clone());
        let m = Marketplace::new(
            SqlRegistry::new(store.clone(), dir.path()),
            config,
            Some(Arc::new(key.clone())),
        )?;
        let watching = m.watching();
        let registry = Arc::new(Managed::from(m));
        let mut stages = Loop::new(
            Rules::default(),
            cycle::Settings {
                schedule: cycle::Schedule::EveryCycle,
                ..Default::default()
            },
        );
        let reset = reset_peak_rss();
        let (mon, first) = cycle(&mut stages, &registry, &store, &policies, &key, true).await?;
        firsts.push(first);
        monitors.push(mon);
        let (_, quiet) = cycle(&mut stages, &registry, &store, &policies, &key, false).await?;
        unchanged.push(quiet);
        // One pack's archive changed at a time: judged, quarantined and published.
        for k in 0..changes {
            let name = marketplace::generate::pack_name(k * 7919 % packs);
            let file = std::fs::read_dir(run_checkout.join("dist/packs"))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .find(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{name}-")))
                })
                .ok_or_else(|| anyhow::anyhow!("no archive of {name}"))?;
            let events = registry
                .marketplace()
                .map(|m| m.changes.events.load(std::sync::atomic::Ordering::SeqCst))
                .unwrap_or(0);
            let mut bytes = std::fs::read(&file)?;
            bytes[30] ^= 0x01;
            std::fs::write(&file, bytes)?;
            // The notification, as the daemon would be woken by it.
            let waited = Instant::now();
            while watching
                && registry
                    .marketplace()
                    .map(|m| m.changes.events.load(std::sync::atomic::Ordering::SeqCst))
                    .unwrap_or(0)
                    == events
                && waited.elapsed() < Duration::from_secs(5)
            {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let (_, t) = cycle(&mut stages, &registry, &store, &policies, &key, !watching).await?;
            anyhow::ensure!(
                withheld(&published) == k + 1,
                "after changing {name}, the published catalog withholds {} packs, not {}",
                withheld(&published),
                k + 1
            );
            one_pack.push(t);
        }
        if reset {
            peaks.extend(peak_rss_mib());
        }
        // The whole catalog rendered, signed and written from nothing.
        let bytes = std::fs::read(run_checkout.join("dist/site/index.json"))?;
        let parsed = catalog::parse(&bytes).map_err(|e| anyhow::anyhow!("{e}"))?;
        let overlay = marketplace::overlay::read(&store).await?;
        let target = dir.path().join(format!("www-{run}/whole.json"));
        for _ in 0..3 {
            let t = Instant::now();
            let out = catalog::render(&parsed, &overlay);
            let rendered = t.elapsed();
            let p = publish::Published::new(out, &key);
            let signed = t.elapsed();
            publish::write_both(&target, &p)?;
            publishes.push((
                rendered,
                signed - rendered,
                t.elapsed() - signed,
                p.bytes.len(),
            ));
            std::fs::remove_file(&target)?;
        }
        eprintln!(
            "run {}: first full cycle {:?} (monitor {:?}), unchanged {:?}",
            run + 1,
            firsts[run],
            monitors[run],
            unchanged[run]
        );
        drop(registry);
        super::bench_execute::drop_store(store, pg, name).await?;
        std::fs::remove_dir_all(&run_checkout)?;
    }
    let backend = if pg.is_some() { "PostgreSQL" } else { "SQLite" };
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("packs: {packs}, store: {backend}, runs: {}", firsts.len());
    println!(
        "first full cycle (every tree and archive read, hashed and compared; the mirror written; the catalog published): median {:.2} s (the monitor's part {:.2} s)",
        median(firsts).as_secs_f64(),
        median(monitors).as_secs_f64()
    );
    println!("unchanged cycle: median {:.1} ms", ms(median(unchanged)));
    println!(
        "one pack's archive changed -> judged, quarantined, catalog republished: median {:.1} ms of {} changes",
        ms(median(one_pack.clone())),
        one_pack.len()
    );
    let size = publishes.first().map(|p| p.3).unwrap_or(0);
    println!(
        "publishing the whole catalog ({:.1} MiB) from nothing: render {:.1} ms, sign and hash {:.1} ms, write and fsync {:.1} ms (medians)",
        size as f64 / (1 << 20) as f64,
        ms(median(publishes.iter().map(|p| p.0).collect())),
        ms(median(publishes.iter().map(|p| p.1).collect())),
        ms(median(publishes.iter().map(|p| p.2).collect())),
    );
    if let Some(p) = peaks.iter().copied().reduce(f64::max) {
        println!("peak resident memory during the cycles: {p:.0} MiB");
    }
    Ok(())
}

fn copy(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let target = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy(&e.path(), &target)?;
        } else {
            std::fs::copy(e.path(), target)?;
        }
    }
    Ok(())
}
