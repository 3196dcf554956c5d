//! `mapek bench`: a generated registry, one full cycle and one unchanged cycle, timed, with peak memory.

use clap::Args;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::analyze::Rules;
use crate::clock::{Clock, SystemClock};
use crate::cycle::{self, Context, Loop, Observer, Stage};
use crate::keys::KeyPair;
use crate::monitor::MonitorOutput;
use crate::plan::policy::PolicySet;
use crate::registry::generate::{self, GenerateSpec};
use crate::registry::SqlRegistry;

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// `latency`: drive a running daemon with `--events` events (tampered artifacts and
    /// corroborated malware reports, alternately) and print the quantiles of the time from each
    /// event's arrival to its remediation's commit. Without it: the cycle bench.
    #[arg(value_parser = ["latency"])]
    pub what: Option<String>,
    /// Events for `latency`.
    #[arg(long, default_value_t = 1000)]
    pub events: usize,
    /// Print `latency`'s figures as JSON.
    #[arg(long)]
    pub json: bool,
    /// Packages in the generated registry.
    #[arg(long, default_value_t = 50_000)]
    pub packages: usize,
    /// Releases per package at most (1 to this many, uniformly).
    #[arg(long, default_value_t = 3)]
    pub max_releases: usize,
    /// How many times to repeat the measurement (each on a fresh store); medians are reported.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Measure the analyze stage with a day of aggregated telemetry instead of the whole cycle.
    #[arg(long)]
    pub analyze: bool,
    /// Measure the executor: `--packages` quarantines executed with signatures and audit entries.
    #[arg(long)]
    pub execute: bool,
    /// Measure `audit verify` over a log of this many entries.
    #[arg(long)]
    pub audit: Option<usize>,
    /// Measure a generated ggen-marketplace checkout of `--packages` packs: its first full
    /// cycle, a one-pack change to the republished catalog, a publication of the whole catalog.
    #[arg(long)]
    pub marketplace: bool,
    /// Run `--execute`, `--audit` or `--marketplace` on a new database of this PostgreSQL server
    /// instead of SQLite.
    #[arg(long)]
    pub pg: Option<String>,
}

/// Resets the peak resident memory counter (Linux: `5` to /proc/self/clear_refs), so the peak
/// of the cycles can be told from the peak of generating the registry. False where unsupported.
pub(super) fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Peak resident memory of this process, from /proc (Linux), in MiB.
pub(super) fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

pub(super) fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Where a cycle's time went, stage by stage, and the monitor's registry pass step by step.
#[derive(Default)]
struct Stages {
    parts: Vec<(Stage, Duration)>,
    scanned: usize,
    verified: usize,
    pass: crate::monitor::PassTimings,
    /// Releases observed with an invalid signature.
    invalid: Vec<(String, String)>,
    /// The process's peak resident memory (MiB) when each stage ended.
    peaks: Vec<(Stage, f64)>,
}

impl Observer for Stages {
    fn monitored(&mut self, out: &MonitorOutput, took: Duration) {
        self.scanned = out.scanned;
        self.verified = out.verified;
        self.pass = out.timings;
        self.invalid = out
            .observations
            .iter()
            .filter(|o| o.signature == crate::model::SignatureState::Invalid)
            .map(|o| (o.package.clone(), o.version.clone()))
            .collect();
        self.parts.push((Stage::Monitor, took));
        self.peaks
            .extend(peak_rss_mib().map(|m| (Stage::Monitor, m)));
    }
    fn analyzed(&mut self, _: &crate::analyze::AnalyzeOutput, took: Duration) {
        self.parts.push((Stage::Analyze, took));
        self.peaks
            .extend(peak_rss_mib().map(|m| (Stage::Analyze, m)));
    }
    fn planned(&mut self, _: &crate::plan::PlanOutput, took: Duration) {
        self.parts.push((Stage::Plan, took));
        self.peaks.extend(peak_rss_mib().map(|m| (Stage::Plan, m)));
    }
    fn executed(&mut self, _: &crate::execute::ExecuteOutput, took: Duration) {
        self.parts.push((Stage::Execute, took));
        self.peaks
            .extend(peak_rss_mib().map(|m| (Stage::Execute, m)));
    }
}

impl Stages {
    fn took(&self, stage: Stage) -> Duration {
        self.parts
            .iter()
            .filter(|(s, _)| *s == stage)
            .map(|(_, d)| *d)
            .sum()
    }

    /// read, facts, hash and verify (worker time), write; analyze, plan, execute; the peak
    /// resident memory when each stage ended.
    fn line(&self) -> String {
        let p = &self.pass;
        let s = |d: Duration| format!("{:.3}", d.as_secs_f64());
        let peaks: Vec<String> = self
            .peaks
            .iter()
            .map(|(stage, m)| format!("{stage} {m:.0}"))
            .collect();
        format!(
            "read {} s, facts {} s, check {} s (workers: read+hash {} s, verify {} s), write {} s; analyze {} s, plan {} s, execute {} s; peak MiB after {}",
            s(p.read),
            s(p.facts),
            s(p.check),
            s(p.read_hash_cpu),
            s(p.verify_cpu),
            s(p.write),
            s(self.took(Stage::Analyze)),
            s(self.took(Stage::Plan)),
            s(self.took(Stage::Execute)),
            peaks.join(", "),
        )
    }
}

/// One full loop cycle, the daemon's own, with every stage called.
async fn one_cycle<R: crate::registry::Registry>(
    l: &mut Loop,
    ctx: &Context<'_, R>,
) -> anyhow::Result<Stages> {
    let mut stages = Stages::default();
    let step = l.step(ctx, &mut stages).await;
    if let Some((stage, error)) = step.failed {
        anyhow::bail!("{stage}: {error}");
    }
    eprintln!("  {}", stages.line());
    Ok(stages)
}

pub async fn bench(args: BenchArgs, database_url: Option<&str>) -> anyhow::Result<ExitCode> {
    super::init_logging(crate::config::LogFormat::Pretty);
    // `--database-url postgres://…` runs on a new database of that server, as `--pg` does.
    let pg = args
        .pg
        .as_deref()
        .or(database_url.filter(|u| u.starts_with("postgres")))
        .map(str::to_string);
    let work = async {
        let pg = pg.as_deref();
        if args.what.as_deref() == Some("latency") {
            super::bench_latency::latency(args.events, pg, args.json).await
        } else if args.execute {
            super::bench_execute::execute(args.packages, args.runs, pg).await
        } else if let Some(n) = args.audit {
            super::bench_execute::audit(n, args.runs, pg).await
        } else if args.marketplace {
            super::bench_marketplace::bench(args.packages, args.runs, pg).await
        } else if args.analyze {
            if let Some(url) = pg {
                // Refused rather than ignored: it measures analysis over a private SQLite store.
                anyhow::bail!(
                    "{url}: `--analyze` runs on a temporary SQLite store; the cycle bench (without `--analyze`) runs on PostgreSQL"
                );
            }
            super::bench_analyze::bench(args.packages, args.max_releases, args.runs).await
        } else {
            cycles(&args, pg).await
        }
    };
    tokio::select! {
        done = work => done?,
        _ = tokio::signal::ctrl_c() => {
            // The bench's future is dropped by now, and its temporary folders with it.
            super::bench_execute::drop_bench_databases().await;
            eprintln!("interrupted: the temporary folders and databases of the bench are removed");
            return Ok(ExitCode::from(130));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What one run of the cycle bench measured.
struct Run {
    releases: usize,
    generation: Duration,
    full: Duration,
    unchanged: Duration,
    changed: Duration,
    cycle_peak: Option<f64>,
    generation_peak: Option<f64>,
}

/// A bulk load leaves PostgreSQL without statistics until autovacuum gets to the tables; a
/// registry that has been running has them, and the planner needs them to choose the indexes
/// (without, a full read of 200k packages took twice as long).
async fn analyze_tables(store: &crate::knowledge::Store, postgres: bool) -> anyhow::Result<()> {
    if !postgres {
        return Ok(());
    }
    let mut tx = store.begin_unfenced().await?;
    sqlx::Executor::execute(&mut *tx, "ANALYZE").await?;
    tx.commit().await?;
    Ok(())
}

/// A fresh store and generated registry; its first full cycle, an unchanged one, and one after
/// a single release's signature was replaced by a bad one (which that cycle must find).
async fn run_once(
    args: &BenchArgs,
    policies: &PolicySet,
    key: &KeyPair,
    pg: Option<&str>,
    run: usize,
) -> anyhow::Result<Run> {
    let dir = tempfile::Builder::new().prefix("mapek-bench").tempdir()?;
    let (store, database) = super::bench_execute::fresh_store(dir.path(), pg, run).await?;
    let registry = Arc::new(SqlRegistry::new(
        store.clone(),
        dir.path().join("artifacts"),
    ));
    let spec = GenerateSpec {
        packages: args.packages,
        max_releases: args.max_releases,
        seed: 1,
        shard_artifacts: true,
        ..GenerateSpec::default()
    };
    let t = Instant::now();
    let generated = generate::generate(&registry, &spec, SystemClock.now_ms()).await?;
    let generation = t.elapsed();
    analyze_tables(&store, pg.is_some()).await?;
    let releases = generated.releases;
    let trust = Arc::new(generated.trust);
    let generation_peak = peak_rss_mib();
    let reset = reset_peak_rss();
    let mut l = Loop::new(
        Rules::default(),
        cycle::Settings {
            full_scan_every_ms: i64::MAX,
            schedule: cycle::Schedule::EveryCycle,
            ..Default::default()
        },
    );
    let ctx = Context {
        store: &store,
        registry: &registry,
        policies,
        trust: &trust,
        key,
        now: SystemClock.now_ms(),
    };
    eprintln!(
        "  generated {} packages, {releases} releases in {:.1} s",
        args.packages,
        generation.as_secs_f64()
    );
    let t = Instant::now();
    let first = one_cycle(&mut l, &ctx).await?;
    let full = t.elapsed();
    anyhow::ensure!(
        first.scanned == releases && first.verified == releases,
        "first cycle saw {} and verified {} of {releases} releases",
        first.scanned,
        first.verified
    );
    let t = Instant::now();
    let again = one_cycle(&mut l, &ctx).await?;
    let unchanged = t.elapsed();
    anyhow::ensure!(
        again.scanned == 0,
        "unchanged cycle rescanned {} releases",
        again.scanned
    );
    // One release of a package in the middle of the registry gets a signature over other bytes.
    let package = generate::package_name(args.packages / 2, args.packages);
    let publisher = generated
        .publishers
        .first()
        .ok_or_else(|| anyhow::anyhow!("the generated registry has no publisher"))?;
    registry
        .set_signature(
            &package,
            "1.0.0",
            &publisher.sign(b"other bytes"),
            &publisher.key_id,
        )
        .await?;
    let ctx = Context {
        now: SystemClock.now_ms(),
        ..ctx
    };
    let t = Instant::now();
    let after = one_cycle(&mut l, &ctx).await?;
    let changed = t.elapsed();
    anyhow::ensure!(
        after
            .invalid
            .iter()
            .any(|(p, v)| *p == package && v == "1.0.0"),
        "the cycle after {package}@1.0.0 got a bad signature did not find it"
    );
    let cycle_peak = if reset { peak_rss_mib() } else { None };
    super::bench_execute::drop_store(store, pg, database).await?;
    Ok(Run {
        releases,
        generation,
        full,
        unchanged,
        changed,
        cycle_peak,
        generation_peak,
    })
}

/// `mapek bench`: the first full cycle, an unchanged one and a one-release change, `--runs`
/// times; medians.
async fn cycles(args: &BenchArgs, pg: Option<&str>) -> anyhow::Result<()> {
    let policies = PolicySet::from_sources(
        &super::demo::DEFAULT_POLICIES
            .iter()
            .map(|(n, t)| (std::path::PathBuf::from(n), t.to_string()))
            .collect::<Vec<_>>(),
    )
    .map_err(|e| anyhow::anyhow!("embedded policies: {e:?}"))?;
    let key = KeyPair::from_seed("daemon", [7; 32]);
    let mut runs = Vec::new();
    for n in 0..args.runs.max(1) {
        let r = run_once(args, &policies, &key, pg, n).await?;
        eprintln!(
            "run {}: full {:?}, unchanged {:?}, one release changed {:?}",
            n + 1,
            r.full,
            r.unchanged,
            r.changed
        );
        runs.push(r);
    }
    let releases = runs.last().map(|r| r.releases).unwrap_or(0);
    println!(
        "packages: {}, releases: {releases}, runs: {}, store: {}",
        args.packages,
        runs.len(),
        if pg.is_some() { "PostgreSQL" } else { "SQLite" }
    );
    let med = |f: fn(&Run) -> Duration| median(runs.iter().map(f).collect()).as_secs_f64();
    println!(
        "generating the registry: median {:.3} s",
        med(|r| r.generation)
    );
    println!(
        "first full cycle (every signature verified): median {:.3} s",
        med(|r| r.full)
    );
    println!("unchanged cycle: median {:.3} s", med(|r| r.unchanged));
    println!(
        "cycle after one release changed (found and judged): median {:.3} s",
        med(|r| r.changed)
    );
    print_memory(&runs);
    Ok(())
}

fn print_memory(runs: &[Run]) {
    let cycle_peaks: Vec<f64> = runs.iter().filter_map(|r| r.cycle_peak).collect();
    if cycle_peaks.is_empty() {
        println!("peak resident memory during the cycles: unavailable (no /proc/self/clear_refs)");
    } else {
        let mut sorted = cycle_peaks.clone();
        sorted.sort_by(f64::total_cmp);
        let all: Vec<String> = cycle_peaks.iter().map(|m| format!("{m:.0}")).collect();
        println!(
            "peak resident memory during the cycles: median {:.0} MiB (runs: {} MiB)",
            sorted[sorted.len() / 2],
            all.join(", ")
        );
    }
    let generation = runs
        .iter()
        .filter_map(|r| r.generation_peak)
        .reduce(f64::max);
    match (generation, peak_rss_mib()) {
        (Some(g), Some(all)) => println!(
            "peak resident memory of the whole process, generating the registry included: {:.0} MiB",
            g.max(all)
        ),
        _ => println!("peak resident memory: unavailable on this platform"),
    }
}
