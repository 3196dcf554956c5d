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
use crate::execute;
use crate::execute::learn::LearningSettings;
use crate::knowledge::Store;
use crate::monitor::{self, MonitorState};
use crate::plan::{PlanContext, Planner};
use crate::registry::SqlRegistry;
use registry::SimRegistry;
use report::Report;
use scenario::{EventKind, Scenario};

/// Virtual time zero: 2026-01-05T00:00:00Z, a Monday.
pub const START_MS: i64 = 1_767_571_200_000;

/// When the driver calls the stages after analysis.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Schedule {
    /// The planner, the executor and verification are called when what they read may have
    /// changed (a finding, a remediation, an event) or a time they wait for has come, and until
    /// they say they have nothing left: a quiet cycle costs the monitor and analysis alone.
    #[default]
    OnChange,
    /// Every stage in every cycle, as the daemon runs them: the same report, more slowly.
    EveryCycle,
}

/// What the stages after analysis wait for.
#[derive(Debug, Clone, Copy)]
struct Wakes {
    plan: bool,
    execute: bool,
    verify: bool,
    /// When the next executed remediation is due for verification.
    verify_at: Option<i64>,
}

impl Wakes {
    fn all() -> Self {
        Self {
            plan: true,
            execute: true,
            verify: true,
            verify_at: None,
        }
    }
}

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
    let mut monitor_state = MonitorState::new();
    let mut planner = Planner::default();
    let rules = Rules {
        quality: crate::analyze::quality::QualityModel::load(&s.policies_dir)?,
        ..Rules::default()
    };
    let mut analyzer = analyze::Analyzer::new(rules);
    let ticks = (s.duration_ms / s.tick_ms).max(1);
    let sample_every = (ticks / 240).max(1);
    let mut next_event = 0;
    let (mut registry_back, mut store_back) = (i64::MIN, i64::MIN);
    let mut store_down = false;
    let mut stage_errors = 0u64;
    let mut samples = Vec::new();
    let every = schedule == Schedule::EveryCycle;
    let mut wakes = Wakes::all();
    // Whether anything but the analyzer may have written findings since its last pass (then it
    // reads the open ones again; the daemon always does).
    let mut findings_touched = true;
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
                    findings_touched = true;
                    wakes.plan = true;
                    wakes.verify = true;
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
            wakes = Wakes::all();
            findings_touched = true;
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
        // The daemon's stages, in its order; a failed stage ends the cycle, as in the daemon.
        let cycle = async {
            let started = Instant::now();
            let m = monitor::cycle(
                &mut monitor_state,
                &w.registry,
                &w.store,
                &w.trust,
                now,
                3_600_000,
            )
            .await;
            if tick > 0 && m.as_ref().is_ok_and(|m| m.full_scan) {
                timings.full_scans += started.elapsed();
            }
            let into = if tick == 0 {
                &mut timings.first_cycle
            } else {
                &mut timings.monitor
            };
            let m = timed(into, started, m)?;
            let started = Instant::now();
            let input = analyze::AnalyzeInput {
                findings_untouched: !every && !findings_touched,
                ..analyze::AnalyzeInput::from_monitor(&m)
            };
            let judged = analyzer.cycle(&w.store, input, now).await;
            findings_touched = false;
            let into = if tick == 0 {
                &mut timings.first_cycle
            } else {
                &mut timings.analyze
            };
            let judged = timed(into, started, judged)?;
            if judged.changed {
                wakes.plan = true;
                wakes.verify = true;
            }
            if judged.stale {
                // As in the daemon: nothing is planned or executed on stale facts.
                return anyhow::Ok(());
            }
            if every || wakes.plan {
                let started = Instant::now();
                let ctx = PlanContext {
                    policies: &w.policies,
                    trust: &w.trust,
                    key: &w.key,
                    daemon_dry_run: false,
                    now,
                };
                let planned = planner.cycle(&w.store, &w.registry, ctx).await;
                findings_touched = true;
                let planned = timed(&mut timings.plan, started, planned)?;
                timings.plans += 1;
                wakes.plan = !planned.idle;
                if !planned.remediations.is_empty() || planned.circuit.is_some() {
                    wakes.execute = true;
                    wakes.verify = true;
                }
            }
            if every || wakes.execute {
                let started = Instant::now();
                let done = execute::cycle(&w.store, &w.registry, &w.key, now).await;
                findings_touched = true;
                let done = timed(&mut timings.execute, started, done)?;
                timings.executions += 1;
                wakes.execute = !done.idle;
                if !done.results.is_empty() {
                    wakes.plan = true;
                    wakes.verify = true;
                }
            }
            if every || wakes.verify || wakes.verify_at.is_some_and(|at| at <= now) {
                let started = Instant::now();
                let verified = execute::verify::cycle(&w.store, &w.policies, &w.key, now).await;
                findings_touched = true;
                let verified = timed(&mut timings.verify, started, verified)?;
                timings.verifications += 1;
                wakes.verify_at = verified.next_due;
                wakes.verify = !(verified.verdicts.is_empty() && verified.released.is_empty());
                if wakes.verify {
                    wakes.plan = true;
                }
                if !verified.verdicts.is_empty() {
                    let started = Instant::now();
                    let learned =
                        execute::learn::cycle(&w.store, &w.key, &LearningSettings::default(), now)
                            .await;
                    timed(&mut timings.verify, started, learned)?;
                }
            }
            anyhow::Ok(())
        };
        if cycle.await.is_err() {
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
