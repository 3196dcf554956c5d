//! The simulator: the daemon's own stages against a simulated registry on a virtual clock, checked against a scenario's expectations.

mod events;
pub mod expect;
pub mod registry;
pub mod report;
pub mod scenario;
pub mod telemetry;
mod tick;
mod timeline;
mod world;

pub use world::policies_of;

use std::time::{Duration, Instant};

use crate::analyze::{self, Rules};
pub use crate::cycle::Schedule;
use crate::cycle::{Loop, Observer};
use crate::execute;
use crate::monitor;
use report::Report;
use scenario::Scenario;

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

pub(super) fn timed<T>(into: &mut Duration, started: Instant, value: T) -> T {
    *into += started.elapsed();
    value
}

/// Where each stage's time goes: the first cycle apart (everything hashed and verified).
pub(super) struct Clocked<'a> {
    pub timings: &'a mut Timings,
    pub first: bool,
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
    let w = world::setup(s).await?;
    timings.setup = started.elapsed();
    // The scenario's `[config]`, as the daemon reads its mapek.toml.
    let rules = Rules {
        settings: s.config.detectors.clone(),
        quality: crate::analyze::quality::QualityModel::load(&s.policies_dir)?,
    };
    let l = Loop::new(rules, s.config.loop_settings(schedule));
    let mut run = tick::Run::new(s, w, l);
    let ticks = (s.duration_ms / s.tick_ms).max(1);
    let sample_every = (ticks / 240).max(1);
    for tick in 0..=ticks {
        let sample = tick % sample_every == 0 || tick == ticks;
        run.tick(tick, sample, &mut timings).await?;
        progress(tick as f64 / ticks as f64);
    }
    let started = Instant::now();
    let w = &run.w;
    let judged = expect::judge(s, &w.store, &w.registry.inner, START_MS).await?;
    let report = Report::new(
        s,
        ticks as u64 + 1,
        run.stage_errors,
        judged,
        std::mem::take(&mut run.samples),
        w.notes.clone(),
    );
    w.store.close().await;
    timed(&mut timings.report, started, ());
    Ok((report, timings))
}
