//! The simulator: the daemon's own stages against a simulated registry on a virtual clock, checked against a scenario's expectations.

mod events;
pub mod expect;
pub mod registry;
pub mod report;
pub mod scenario;
pub mod telemetry;
mod timeline;
mod world;

pub use world::policies_of;

use anyhow::Context as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::analyze::{self, Rules};
pub use crate::cycle::Schedule;
use crate::cycle::{self, Context, Loop, Observer};
use crate::execute;
use crate::knowledge::Store;
use crate::monitor;
use crate::registry::SqlRegistry;
use registry::SimRegistry;
use report::Report;
use scenario::{EventKind, Scenario};

/// Virtual time zero: 2026-01-05T00:00:00Z, a Monday.
pub const START_MS: i64 = 1_767_571_200_000;

/// Where a run's wall time went.
#[derive(Debug, Default, Clone)]
pub struct Timings {
    pub setup: Duration,
    /// The first cycle: every artifact hashed, every signature verified, every package scored.
    pub first_cycle: Duration,
    pub events: Duration,
    /// Producing the telemetry and writing it as the intake does.
    pub telemetry: Duration,
    pub monitor: Duration,
    /// Of which the hourly full scans (every release looked at again).
    pub full_scans: Duration,
    pub analyze: Duration,
    pub plan: Duration,
    pub execute: Duration,
    /// Verification and learning.
    pub verify: Duration,
    /// The timeline's samples, following `latest`, and judging the expectations at the end.
    pub report: Duration,
    pub cycles: u64,
    /// Calls of the planner, the executor and verification.
    pub plans: u64,
    pub executions: u64,
    pub verifications: u64,
}

impl Timings {
    /// One line a part, for stderr.
    pub fn render(&self) -> String {
        let parts = [
            ("setup (generate or import)", self.setup),
            ("first cycle (all verified)", self.first_cycle),
            ("events", self.events),
            ("telemetry written", self.telemetry),
            ("monitor", self.monitor),
            ("  of which full scans", self.full_scans),
            ("analyze", self.analyze),
            ("plan", self.plan),
            ("execute", self.execute),
            ("verify and learn", self.verify),
            ("timeline and report", self.report),
        ];
        let total: Duration = parts
            .iter()
            .filter(|p| !p.0.starts_with(' '))
            .map(|p| p.1)
            .sum();
        let mut out = format!(
            "{} cycles; plan called {} times, execute {}, verify {}\n",
            self.cycles, self.plans, self.executions, self.verifications
        );
        for (name, d) in parts {
            out.push_str(&format!("  {name:<32} {:>9.3} s\n", d.as_secs_f64()));
        }
        out.push_str(&format!("  {:<32} {:>9.3} s", "total", total.as_secs_f64()));
        out
    }
}

fn timed<T>(into: &mut Duration, started: Instant, value: T) -> T {
    *into += started.elapsed();
    value
}

/// Where each stage's time goes: the first cycle apart (everything hashed and verified).
struct Clocked<'a> {
    timings: &'a mut Timings,
    first: bool,
}

impl Observer for Clocked<'_> {
    fn monitored(&mut self, out: &monitor::MonitorOutput, took: Duration) {
        if self.first {
            self.timings.first_cycle += took;
            return;
        }
        self.timings.monitor += took;
        if out.full_scan {
            self.timings.full_scans += took;
        }
    }
    fn analyzed(&mut self, _: &analyze::AnalyzeOutput, took: Duration) {
        if self.first {
            self.timings.first_cycle += took;
        } else {
            self.timings.analyze += took;
        }
    }
    fn planned(&mut self, _: &crate::plan::PlanOutput, took: Duration) {
        self.timings.plan += took;
        self.timings.plans += 1;
    }
    fn executed(&mut self, _: &execute::ExecuteOutput, took: Duration) {
        self.timings.execute += took;
        self.timings.executions += 1;
    }
    fn verified(&mut self, _: &execute::verify::VerifyOutput, took: Duration) {
        self.timings.verify += took;
        self.timings.verifications += 1;
    }
    fn learned(&mut self, _: &execute::learn::LearnOutput, took: Duration) {
        self.timings.verify += took;
    }
}

/// Runs one scenario to its end and judges it. `progress` is called with the share done.
pub async fn run(s: &Scenario, progress: impl FnMut(f64)) -> anyhow::Result<Report> {
    Ok(run_with(s, Schedule::default(), progress).await?.0)
}

/// Runs one scenario with the given schedule; the report, and where the time went.
pub async fn run_with(
    s: &Scenario,
    schedule: Schedule,
    mut progress: impl FnMut(f64),
) -> anyhow::Result<(Report, Timings)> {
    let mut timings = Timings::default();
    let started = Instant::now();
    let mut w = world::setup(s).await?;
    timings.setup = started.elapsed();
    let rules = Rules {
        quality: crate::analyze::quality::QualityModel::load(&s.policies_dir)?,
        ..Rules::default()
    };
    let mut l = Loop::new(
        rules,
        cycle::Settings {
            schedule,
            ..cycle::Settings::default()
        },
    );
    let ticks = (s.duration_ms / s.tick_ms).max(1);
    let sample_every = (ticks / 240).max(1);
    let mut next_event = 0;
    let (mut registry_back, mut store_back) = (i64::MIN, i64::MIN);
    let mut store_down = false;
    let mut stage_errors = 0u64;
    let mut samples = Vec::new();
    for tick in 0..=ticks {
        let t = tick * s.tick_ms;
        let now = START_MS + t;
        let started = Instant::now();
        while next_event < s.events.len() && s.events[next_event].at_ms <= t {
            let e = s.events[next_event].clone();
            next_event += 1;
            match &e.kind {
                EventKind::RegistryOutage { for_ms } => {
                    registry_back = registry_back.max(t + for_ms);
                    w.registry.down.store(true, Ordering::SeqCst);
                }
                EventKind::StoreOutage { for_ms } => {
                    store_back = store_back.max(t + for_ms);
                    if !store_down {
                        w.store.close().await;
                        store_down = true;
                    }
                }
                kind if !store_down => {
                    events::apply(&mut w, kind, now)
                        .await
                        .with_context(|| format!("{}:{}: event", s.file.display(), e.line))?;
                    // The event wrote to the registry or the store behind the stages' backs.
                    w.registry.changed();
                    l.touched();
                }
                _ => w.notes.push(format!(
                    "{}: event of line {} not applied: the store is down",
                    crate::clock::rfc3339(now),
                    e.line
                )),
            }
        }
        if w.registry.down.load(Ordering::SeqCst) && t >= registry_back {
            w.registry.down.store(false, Ordering::SeqCst);
        }
        let started = timed(&mut timings.events, started, Instant::now());
        if t > 0 {
            w.telemetry.advance(now - s.tick_ms, now);
        }
        if store_down && t >= store_back {
            w.store = Store::open(&w.url).await?;
            let inner = SqlRegistry {
                store: w.store.clone(),
                ..w.registry.inner.clone()
            };
            w.registry = Arc::new(SimRegistry::new(
                inner,
                w.registry.down.clone(),
                w.registry.virtual_artifacts.clone(),
            ));
            store_down = false;
            l.touched();
        }
        if !store_down {
            // What the intake would have committed during the tick, written as it writes it.
            let (batch, dropped) = w.telemetry.take(now);
            if dropped > 0 {
                w.notes.push(format!(
                    "{}: {dropped} telemetry buckets older than the intake's horizon dropped after the store outage",
                    crate::clock::rfc3339(now)
                ));
            }
            if batch.events > 0 {
                if let Err(e) = w.store.write_telemetry(&batch).await {
                    w.notes.push(format!(
                        "{}: telemetry not written, kept for the next tick: {e}",
                        crate::clock::rfc3339(now)
                    ));
                    w.telemetry.keep(batch);
                }
            }
        }
        timed(&mut timings.telemetry, started, ());
        // The daemon's own cycle; a failed stage ends it, as in the daemon.
        let ctx = Context {
            store: &w.store,
            registry: &w.registry,
            policies: &w.policies,
            trust: &w.trust,
            key: &w.key,
            now,
        };
        let step = l
            .step(
                &ctx,
                &mut Clocked {
                    timings: &mut timings,
                    first: tick == 0,
                },
            )
            .await;
        if step.failed.is_some() {
            stage_errors += 1;
        }
        timings.cycles += 1;
        let started = Instant::now();
        if !store_down {
            world::follow_latest(&mut w).await?;
        }
        if (tick % sample_every == 0 || tick == ticks) && !store_down {
            samples.push(timeline::sample(&w, now, t).await);
        }
        timed(&mut timings.report, started, ());
        progress(tick as f64 / ticks as f64);
    }
    let started = Instant::now();
    let judged = expect::judge(s, &w.store, &w.registry.inner, START_MS).await?;
    let report = Report::new(
        s,
        ticks as u64 + 1,
        stage_errors,
        judged,
        samples,
        w.notes.clone(),
    );
    w.store.close().await;
    timed(&mut timings.report, started, ());
    Ok((report, timings))
}
