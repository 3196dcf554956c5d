//! One cycle of the loop: the stages in their order and every rule between them (stale facts stop planning, a pause stops execution, when a full scan is due, which stages have work, when learning runs), driven alike by the daemon, the simulator, the benches and the tests.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::Instrument as _;

use crate::analyze::{AnalyzeInput, AnalyzeOutput, Analyzer, Rules};
use crate::execute::learn::{LearnOutput, LearningSettings};
use crate::execute::verify::VerifyOutput;
use crate::execute::{self, ExecuteOutput};
use crate::keys::{KeyPair, TrustStore};
use crate::knowledge::control::Paused;
use crate::knowledge::Store;
use crate::monitor::facts::Facts;
use crate::monitor::{self, MonitorOutput, MonitorState, Retention};
use crate::plan::policy::PolicySet;
use crate::plan::{PlanContext, PlanOutput, Planner};
use crate::registry::Registry;

/// The stages of a cycle, in their order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stage {
    Monitor,
    Analyze,
    Plan,
    Execute,
    Verify,
    Learn,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Monitor => "monitor",
            Self::Analyze => "analyze",
            Self::Plan => "plan",
            Self::Execute => "execute",
            Self::Verify => "verify",
            Self::Learn => "learn",
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which of the stages after analysis a cycle calls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Schedule {
    /// Planning, execution and verification are called when what they read may have changed (a
    /// finding, a remediation, a write from outside the loop) or a time they wait for has come,
    /// and until they say they have nothing left: a quiet cycle costs the monitor and analysis.
    #[default]
    OnChange,
    /// Every stage in every cycle: the same decisions, more work.
    EveryCycle,
}

/// How the loop runs: the settings every driver takes from the same configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Every artifact hashed again at least this often, not only the changed ones.
    pub full_scan_every_ms: i64,
    /// Plan and record, never execute (`dry_run`).
    pub dry_run: bool,
    pub learning: LearningSettings,
    /// How long telemetry is kept.
    pub retention: Retention,
    pub schedule: Schedule,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            full_scan_every_ms: 3_600_000,
            dry_run: false,
            learning: LearningSettings::default(),
            retention: Retention::default(),
            schedule: Schedule::OnChange,
        }
    }
}

/// What one cycle acts on: the stores, the policies and keys in force, and the time.
pub struct Context<'a, R> {
    pub store: &'a Store,
    pub registry: &'a Arc<R>,
    pub policies: &'a PolicySet,
    pub trust: &'a Arc<TrustStore>,
    pub key: &'a KeyPair,
    pub now: i64,
}

/// What a driver wants to know of a cycle as it goes: each stage as it starts (to name it if it
/// hangs or fails) and what each one did, with how long it took. Every method does nothing by
/// default.
pub trait Observer {
    fn entering(&mut self, _stage: Stage) {}
    fn monitored(&mut self, _out: &MonitorOutput, _took: Duration) {}
    fn analyzed(&mut self, _out: &AnalyzeOutput, _took: Duration) {}
    fn planned(&mut self, _out: &PlanOutput, _took: Duration) {}
    fn paused(&mut self, _paused: Option<&Paused>) {}
    fn executed(&mut self, _out: &ExecuteOutput, _took: Duration) {}
    fn verified(&mut self, _out: &VerifyOutput, _took: Duration) {}
    fn learned(&mut self, _out: &LearnOutput, _took: Duration) {}
    fn failed(&mut self, _stage: Stage, _error: &str) {}
}

/// An observer that wants nothing.
impl Observer for () {}

/// How a cycle ended.
#[derive(Debug, Default, Clone)]
pub struct Step {
    /// The registry could not be read: nothing was planned, executed or verified.
    pub stale: bool,
    /// Execution was due and paused.
    pub paused: bool,
    /// The stage that failed, and why: the cycle ended there, and the next one retries.
    pub failed: Option<(Stage, String)>,
    /// The stages that ran.
    pub ran: Vec<Stage>,
}

/// What the stages after analysis wait for (with [`Schedule::OnChange`]).
#[derive(Debug, Clone, Copy)]
struct Wakes {
    plan: bool,
    execute: bool,
    verify: bool,
    learn: bool,
    /// When the next executed remediation is due for verification.
    verify_at: Option<i64>,
    /// When an open finding next changes by time alone.
    finding_at: Option<i64>,
}

impl Wakes {
    fn all() -> Self {
        Self {
            plan: true,
            execute: true,
            verify: true,
            learn: true,
            verify_at: None,
            finding_at: None,
        }
    }
}

/// The loop: the stages' memory between cycles, and the rules that join them.
#[derive(Debug)]
pub struct Loop {
    pub settings: Settings,
    rules: Rules,
    monitor: MonitorState,
    analyzer: Analyzer,
    planner: Planner,
    wakes: Wakes,
    /// Whether anything but the analyzer may have written findings since its last pass.
    findings_touched: bool,
}

/// How soon a cycle whose planner left something held (a window, an approval, a cooldown, a
/// finding's `for`) runs again without another wake-up.
pub const HELD_RECHECK_MS: i64 = 10_000;

/// A stage that failed: which one, and why.
type Failed = (Stage, String);

impl Loop {
    pub fn new(rules: Rules, settings: Settings) -> Self {
        let mut monitor = MonitorState::new();
        monitor.retention = settings.retention;
        Self {
            analyzer: Analyzer::new(rules.clone()),
            rules,
            settings,
            monitor,
            planner: Planner::default(),
            wakes: Wakes::all(),
            findings_touched: true,
        }
    }

    /// Forgets everything the stages kept, as at start-up (after a stage failed mid-way): the
    /// next cycle is a full scan and reads everything again.
    pub fn restart(&mut self) {
        *self = Self::new(self.rules.clone(), self.settings.clone());
    }

    /// When the loop should next run for something due by time, with nothing else happening:
    /// a verification, the next full scan, a finding's `for` or `keep_firing_for` ending, or a
    /// held plan (a window, an approval, a `for`
    /// period, a cooldown) looked at again within [`HELD_RECHECK_MS`].
    pub fn next_due(&self, now: i64) -> Option<i64> {
        let scan = self
            .monitor
            .next_full_scan(self.settings.full_scan_every_ms);
        let held = self.wakes.plan.then(|| now.saturating_add(HELD_RECHECK_MS));
        [
            Some(scan),
            self.wakes.verify_at,
            self.wakes.finding_at,
            held,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Something outside the loop wrote to the registry or the store (an event of a scenario, an
    /// approval, a rollback, a reload): every stage after analysis looks again.
    pub fn touched(&mut self) {
        self.wakes = Wakes::all();
        self.findings_touched = true;
    }

    /// One cycle: monitor, analyze, then, unless the facts are stale, plan, execute (unless
    /// paused) and verify, and learning after verification. A failed stage ends the cycle.
    pub async fn step<R: Registry>(
        &mut self,
        ctx: &Context<'_, R>,
        obs: &mut impl Observer,
    ) -> Step {
        let mut step = Step::default();
        if let Err((stage, error)) = self.stages(ctx, obs, &mut step).await {
            obs.failed(stage, &error);
            step.failed = Some((stage, error));
        }
        step
    }

    async fn stages<R: Registry>(
        &mut self,
        ctx: &Context<'_, R>,
        obs: &mut impl Observer,
        step: &mut Step,
    ) -> Result<(), Failed> {
        let every = self.settings.schedule == Schedule::EveryCycle;
        let (judged, facts) = self.sense(ctx, obs, step).await?;
        self.wakes.finding_at = judged.next_due;
        if judged.changed {
            self.wakes.plan = true;
            self.wakes.verify = true;
        }
        if judged.stale {
            // Nothing is planned, executed or verified on stale facts.
            step.stale = true;
            return Ok(());
        }
        if every || self.wakes.plan {
            self.plan(ctx, obs, step, facts).await?;
        }
        if every || self.wakes.execute {
            self.execute(ctx, obs, step).await?;
        }
        let due = self.wakes.verify_at.is_some_and(|at| at <= ctx.now);
        if every || self.wakes.verify || due {
            self.verify(ctx, obs, step).await?;
        }
        if every || self.wakes.learn {
            self.learn(ctx, obs, step).await?;
        }
        Ok(())
    }

    /// Monitor and analysis, which run in every cycle.
    async fn sense<R: Registry>(
        &mut self,
        ctx: &Context<'_, R>,
        obs: &mut impl Observer,
        step: &mut Step,
    ) -> Result<(AnalyzeOutput, Option<Arc<Facts>>), Failed> {
        obs.entering(Stage::Monitor);
        step.ran.push(Stage::Monitor);
        let started = Instant::now();
        let m = monitor::cycle(
            &mut self.monitor,
            ctx.registry,
            ctx.store,
            ctx.trust,
            ctx.now,
            self.settings.full_scan_every_ms,
        )
        .instrument(tracing::info_span!("monitor"))
        .await
        .map_err(|e| (Stage::Monitor, e.to_string()))?;
        obs.monitored(&m, started.elapsed());
        obs.entering(Stage::Analyze);
        step.ran.push(Stage::Analyze);
        let started = Instant::now();
        let every = self.settings.schedule == Schedule::EveryCycle;
        let input = AnalyzeInput {
            findings_untouched: !every && !self.findings_touched,
            ..AnalyzeInput::from_monitor(&m)
        };
        let span = tracing::info_span!("analyze");
        let judged = self
            .analyzer
            .cycle(ctx.store, input, ctx.now)
            .instrument(span.clone())
            .await
            .map_err(|e| (Stage::Analyze, e.to_string()))?;
        self.findings_touched = false;
        span.in_scope(|| obs.analyzed(&judged, started.elapsed()));
        Ok((judged, m.facts))
    }

    async fn plan<R: Registry>(
        &mut self,
        ctx: &Context<'_, R>,
        obs: &mut impl Observer,
        step: &mut Step,
        facts: Option<Arc<Facts>>,
    ) -> Result<(), Failed> {
        obs.entering(Stage::Plan);
        step.ran.push(Stage::Plan);
        let started = Instant::now();
        let plan_ctx = PlanContext {
            policies: ctx.policies,
            trust: ctx.trust,
            key: ctx.key,
            daemon_dry_run: self.settings.dry_run,
            now: ctx.now,
            facts,
        };
        let span = tracing::info_span!("plan");
        let planned = self
            .planner
            .cycle(ctx.store, ctx.registry, plan_ctx)
            .instrument(span.clone())
            .await;
        self.findings_touched = true;
        let planned = planned.map_err(|e| (Stage::Plan, e.to_string()))?;
        span.in_scope(|| obs.planned(&planned, started.elapsed()));
        self.wakes.plan = !planned.idle;
        if !planned.remediations.is_empty() || planned.circuit.is_some() {
            self.wakes.execute = true;
            self.wakes.verify = true;
        }
        Ok(())
    }

    async fn execute<R: Registry>(
        &mut self,
        ctx: &Context<'_, R>,
        obs: &mut impl Observer,
        step: &mut Step,
    ) -> Result<(), Failed> {
        obs.entering(Stage::Execute);
        step.ran.push(Stage::Execute);
        let started = Instant::now();
        let paused = ctx
            .store
            .paused()
            .await
            .map_err(|e| (Stage::Execute, e.to_string()))?;
        obs.paused(paused.as_ref());
        if paused.is_some() {
            // Nothing is applied while paused; what is ready stays ready.
            step.paused = true;
            return Ok(());
        }
        let span = tracing::info_span!("execute");
        let done = execute::cycle(ctx.store, ctx.registry, ctx.key, ctx.now)
            .instrument(span.clone())
            .await;
        self.findings_touched = true;
        let done = done.map_err(|e| (Stage::Execute, e.to_string()))?;
        span.in_scope(|| obs.executed(&done, started.elapsed()));
        self.wakes.execute = !done.idle;
        if !done.results.is_empty() {
            self.wakes.plan = true;
            self.wakes.verify = true;
        }
        Ok(())
    }

    async fn verify<R: Registry>(
        &mut self,
        ctx: &Context<'_, R>,
        obs: &mut impl Observer,
        step: &mut Step,
    ) -> Result<(), Failed> {
        obs.entering(Stage::Verify);
        step.ran.push(Stage::Verify);
        let started = Instant::now();
        let verified = execute::verify::cycle(ctx.store, ctx.policies, ctx.key, ctx.now)
            .instrument(tracing::info_span!("verify"))
            .await;
        self.findings_touched = true;
        let verified = verified.map_err(|e| (Stage::Verify, e.to_string()))?;
        obs.verified(&verified, started.elapsed());
        self.wakes.verify_at = verified.next_due;
        self.wakes.verify = !(verified.verdicts.is_empty() && verified.released.is_empty());
        if self.wakes.verify {
            self.wakes.plan = true;
        }
        if !verified.verdicts.is_empty() {
            self.wakes.learn = true;
        }
        Ok(())
    }

    async fn learn<R: Registry>(
        &mut self,
        ctx: &Context<'_, R>,
        obs: &mut impl Observer,
        step: &mut Step,
    ) -> Result<(), Failed> {
        obs.entering(Stage::Learn);
        step.ran.push(Stage::Learn);
        let started = Instant::now();
        let learned = execute::learn::cycle(ctx.store, ctx.key, &self.settings.learning, ctx.now)
            .instrument(tracing::info_span!("learn"))
            .await
            .map_err(|e| (Stage::Learn, e.to_string()))?;
        obs.learned(&learned, started.elapsed());
        self.wakes.learn = false;
        Ok(())
    }
}
