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

/// What the runs measured.
#[derive(Default)]
struct Figures {
    firsts: Vec<Duration>,
    monitors: Vec<Duration>,
    unchanged: Vec<Duration>,
    one_pack: Vec<Duration>,
    /// (render, sign and hash, write and fsync, bytes)
    publishes: Vec<(Duration, Duration, Duration, usize)>,
    peaks: Vec<f64>,
}

/// What every run shares: the generated checkout, the policies, the key, the store's server.
struct Bench<'a> {
    dir: &'a Path,
    checkout: &'a Path,
    packs: usize,
    changes: usize,
    policies: &'a PolicySet,
    key: &'a KeyPair,
    pg: Option<&'a str>,
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
    let b = Bench {
        dir: dir.path(),
        checkout: &checkout,
        packs,
        changes: runs.clamp(1, 20),
        policies: &policies,
        key: &key,
        pg,
    };
    let mut f = Figures::default();
    for run in 0..runs.max(1) {
        b.run(run, &mut f).await?;
    }
    print(&f, packs, pg.is_some());
    Ok(())
}

impl Bench<'_> {
    /// One run on a fresh store and a fresh copy of the checkout.
    async fn run(&self, run: usize, f: &mut Figures) -> anyhow::Result<()> {
        let run_dir = self.dir.join(format!("store-{run}"));
        std::fs::create_dir_all(&run_dir)?;
        let (store, name) = super::bench_execute::fresh_store(&run_dir, self.pg, run).await?;
        // Every archive as generated, before this run tampers with some.
        let run_checkout = self.dir.join(format!("run-{run}"));
        copy(self.checkout, &run_checkout)?;
        let mut config = MarketplaceConfig::at(&run_checkout);
        let published = self.dir.join(format!("www-{run}/index.json"));
        config.publish = Some(published.clone());
        let m = Marketplace::new(
            SqlRegistry::new(store.clone(), self.dir),
            config,
            Some(Arc::new(self.key.clone())),
        )?;
        let registry = Arc::new(Managed::from(m));
        let mut l = Loop::new(
            Rules::default(),
            cycle::Settings {
                schedule: cycle::Schedule::EveryCycle,
                ..Default::default()
            },
        );
        let reset = reset_peak_rss();
        let (mon, first) = cycle(&mut l, &registry, &store, self.policies, self.key, true).await?;
        f.firsts.push(first);
        f.monitors.push(mon);
        let (_, quiet) = cycle(&mut l, &registry, &store, self.policies, self.key, false).await?;
        f.unchanged.push(quiet);
        for k in 0..self.changes {
            let t = self
                .one_pack(k, &mut l, &registry, &store, &run_checkout, &published)
                .await?;
            f.one_pack.push(t);
        }
        if reset {
            f.peaks.extend(peak_rss_mib());
        }
        self.publish_whole(run, &run_checkout, &store, f).await?;
        eprintln!(
            "run {}: first full cycle {:?} (monitor {:?}), unchanged {:?}",
            run + 1,
            first,
            mon,
            quiet
        );
        drop(registry);
        super::bench_execute::drop_store(store, self.pg, name).await?;
        std::fs::remove_dir_all(&run_checkout)?;
        Ok(())
    }

    /// The `k`-th pack's archive changed: the notification waited for (as the daemon is woken
    /// by it), then the cycle that judges it, quarantines it and publishes the catalog.
    async fn one_pack(
        &self,
        k: usize,
        l: &mut Loop,
        registry: &Arc<Managed>,
        store: &Store,
        checkout: &Path,
        published: &Path,
    ) -> anyhow::Result<Duration> {
        let name = marketplace::generate::pack_name(k * 7919 % self.packs);
        let file = std::fs::read_dir(checkout.join("dist/packs"))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{name}-")))
            })
            .ok_or_else(|| anyhow::anyhow!("no archive of {name}"))?;
        let m = registry
            .marketplace()
            .ok_or_else(|| anyhow::anyhow!("not a marketplace"))?;
        let events = || m.changes.events.load(std::sync::atomic::Ordering::SeqCst);
        let before = events();
        let mut bytes = std::fs::read(&file)?;
        bytes[30] ^= 0x01;
        std::fs::write(&file, bytes)?;
        let waited = Instant::now();
        while m.watching() && events() == before && waited.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let (_, t) = cycle(l, registry, store, self.policies, self.key, !m.watching()).await?;
        anyhow::ensure!(
            withheld(published) == k + 1,
            "after changing {name}, the published catalog withholds {} packs, not {}",
            withheld(published),
            k + 1
        );
        Ok(t)
    }

    /// The whole catalog rendered, signed and written from nothing, three times.
    async fn publish_whole(
        &self,
        run: usize,
        checkout: &Path,
        store: &Store,
        f: &mut Figures,
    ) -> anyhow::Result<()> {
        let bytes = std::fs::read(checkout.join("dist/site/index.json"))?;
        let parsed = catalog::parse(&bytes).map_err(|e| anyhow::anyhow!("{e}"))?;
        let overlay = marketplace::overlay::read(store).await?;
        let target = self.dir.join(format!("www-{run}/whole.json"));
        for _ in 0..3 {
            let t = Instant::now();
            let out = catalog::render(&parsed, &overlay);
            let rendered = t.elapsed();
            let p = publish::Published::new(out, self.key);
            let signed = t.elapsed();
            publish::write_both(&target, &p)?;
            f.publishes.push((
                rendered,
                signed - rendered,
                t.elapsed() - signed,
                p.bytes.len(),
            ));
            std::fs::remove_file(&target)?;
        }
        Ok(())
    }
}

fn print(f: &Figures, packs: usize, pg: bool) {
    let backend = if pg { "PostgreSQL" } else { "SQLite" };
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("packs: {packs}, store: {backend}, runs: {}", f.firsts.len());
    println!(
        "first full cycle (every tree and archive read, hashed and compared; the mirror written; the catalog published): median {:.2} s (the monitor's part {:.2} s)",
        median(f.firsts.clone()).as_secs_f64(),
        median(f.monitors.clone()).as_secs_f64()
    );
    println!(
        "unchanged cycle: median {:.1} ms",
        ms(median(f.unchanged.clone()))
    );
    println!(
        "one pack's archive changed -> judged, quarantined, catalog republished: median {:.1} ms of {} changes",
        ms(median(f.one_pack.clone())),
        f.one_pack.len()
    );
    let size = f.publishes.first().map(|p| p.3).unwrap_or(0);
    println!(
        "publishing the whole catalog ({:.1} MiB) from nothing: render {:.1} ms, sign and hash {:.1} ms, write and fsync {:.1} ms (medians)",
        size as f64 / (1 << 20) as f64,
        ms(median(f.publishes.iter().map(|p| p.0).collect())),
        ms(median(f.publishes.iter().map(|p| p.1).collect())),
        ms(median(f.publishes.iter().map(|p| p.2).collect())),
    );
    if let Some(p) = f.peaks.iter().copied().reduce(f64::max) {
        println!("peak resident memory during the cycles: {p:.0} MiB");
    }
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
