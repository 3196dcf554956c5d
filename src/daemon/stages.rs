//! The daemon's loop task: each cycle the ticker sends runs the one `cycle::Loop` step, with the policies and trust store reloaded first, a panicking stage caught and supervised, and what each stage did logged and counted.

use futures_util::FutureExt as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::reload::{Reload, Watch};
use super::{notify, supervise, Cycle, Running, Runtime};
use crate::analyze::AnalyzeOutput;
use crate::cycle::{self, Context, Loop, Observer, Stage};
use crate::execute::learn::LearnOutput;
use crate::execute::verify::{Verdict, VerifyOutput};
use crate::execute::{ExecuteOutput, Outcome};
use crate::keys::TrustStore;
use crate::knowledge::control::Paused;
use crate::monitor::MonitorOutput;
use crate::plan::{self, CircuitChange, PlanOutput};

fn observe(rt: &Runtime, stage: &str, took: Duration) {
    rt.metrics
        .stage_duration
        .with_label_values(&[stage])
        .observe(took.as_secs_f64());
}

/// Reloads the trust store when its file changed; a bad file keeps the last good store.
fn refresh_trust(rt: &Runtime, current: &mut Arc<TrustStore>) {
    let Some(path) = &rt.trust_path else { return };
    match TrustStore::load(path) {
        Ok(t) if t.digest != current.digest => {
            tracing::info!(file = %path.display(), keys = t.keys.len(), "trust store reloaded");
            *current = Arc::new(t);
        }
        Ok(_) => {}
        Err(error) => {
            tracing::warn!(%error, "trust store unreadable; keeping the last good one");
        }
    }
}

/// Reloads the policies when asked (SIGHUP) or when their directory changed; logs and counts it.
pub fn reload_policies(rt: &Runtime, watch: &mut Watch) {
    if !watch.due(&rt.policies) {
        return;
    }
    notify::reloading();
    let result = rt.policies.reload();
    notify::ready("policies reloaded or kept");
    match result {
        Some(Reload::Loaded { policies }) => {
            rt.metrics
                .policy_reloads
                .with_label_values(&["success"])
                .inc();
            rt.metrics.policies_loaded.set(policies as i64);
            tracing::info!(policies, "policy set reloaded");
        }
        Some(Reload::Refused(errors)) => {
            rt.metrics
                .policy_reloads
                .with_label_values(&["failure"])
                .inc();
            for e in &errors {
                tracing::error!(error = %e, "policy reload refused");
            }
            tracing::error!(
                errors = errors.len(),
                "the new policy set is refused; the last good set stays in force"
            );
        }
        None => {}
    }
}

/// The loop's settings as the daemon runs it: every stage in every cycle.
pub fn settings(rt: &Runtime) -> cycle::Settings {
    cycle::Settings {
        full_scan_every_ms: rt.full_scan_every.as_millis() as i64,
        dry_run: rt.dry_run,
        learning: rt.learning.clone(),
        retention: rt.retention,
        schedule: cycle::Schedule::EveryCycle,
    }
}

/// What the daemon does with each stage's outcome: metrics, logs, and the fault hook of tests.
struct Reporter<'a> {
    rt: &'a Runtime,
    errors: &'a AtomicU64,
    running: &'a Running,
    n: u64,
    /// The stage under way (to name it when it panics).
    stage: Option<Stage>,
    /// When the earliest event this cycle answers arrived.
    arrived: Option<Instant>,
}

impl Observer for Reporter<'_> {
    fn entering(&mut self, stage: Stage) {
        self.stage = Some(stage);
        self.running.set_stage(stage.as_str());
        if let Some(fault) = &self.rt.fault {
            fault(stage.as_str());
        }
    }

    fn monitored(&mut self, out: &MonitorOutput, took: Duration) {
        report_monitor(self.rt, self.n, out, took);
    }

    fn analyzed(&mut self, out: &AnalyzeOutput, took: Duration) {
        report_analyze(self.rt, out, took);
    }

    fn planned(&mut self, out: &PlanOutput, took: Duration) {
        observe(self.rt, "plan", took);
        report_plan(self.rt, out);
    }

    fn paused(&mut self, paused: Option<&Paused>) {
        self.rt.metrics.paused.set(i64::from(paused.is_some()));
        if let Some(p) = paused {
            tracing::info!(by = %p.by, "execution is paused: nothing is applied this cycle");
        }
    }

    fn executed(&mut self, out: &ExecuteOutput, took: Duration) {
        observe(self.rt, "execute", took);
        report_execute(self.rt, out);
        // The event this cycle was woken by, or one that arrived while it ran (its write was
        // seen by this cycle's monitor).
        if let Some(arrived) = self.arrived.or_else(|| self.rt.wake.arrival()) {
            let since = arrived.elapsed().as_secs_f64();
            for (_, outcome) in &out.results {
                if matches!(outcome, crate::execute::Outcome::Executed { .. }) {
                    self.rt.metrics.event_to_remediation.observe(since);
                }
            }
        }
    }

    fn verified(&mut self, out: &VerifyOutput, _took: Duration) {
        report_verify(self.rt, out);
    }

    fn learned(&mut self, out: &LearnOutput, _took: Duration) {
        self.rt.metrics.set_outcomes(&out.outcomes);
        for p in &out.demoted {
            tracing::error!(policy = %p, "policy demoted to dry run: its remediations keep failing or being rolled back; `mapek policy enable {p}` re-enables it");
        }
    }

    fn failed(&mut self, stage: Stage, error: &str) {
        self.errors.fetch_add(1, Ordering::SeqCst);
        self.rt
            .metrics
            .stage_errors
            .with_label_values(&[stage.as_str()])
            .inc();
        tracing::error!(stage = stage.as_str(), %error, "stage failed; the cycle ends here and the next one retries");
    }
}

fn report_monitor(rt: &Runtime, n: u64, out: &MonitorOutput, took: Duration) {
    observe(rt, "monitor", took);
    let scan = if out.full_scan { "full" } else { "incremental" };
    rt.metrics
        .releases_scanned
        .with_label_values(&[scan])
        .inc_by(out.scanned as u64);
    rt.metrics
        .observations
        .with_label_values(&["registry"])
        .inc_by(out.scanned as u64);
    rt.metrics
        .signature_checks
        .with_label_values(&["verified"])
        .inc_by(out.verified as u64);
    rt.metrics
        .signature_checks
        .with_label_values(&["cache"])
        .inc_by(out.cache_hits as u64);
    rt.metrics.source_reads.inc_by(out.registry.read as u64);
    rt.metrics.published(&out.registry.published);
    if let Some(why) = &out.unreachable {
        tracing::error!(cycle = n, reason = %why, "registry unreachable: its findings are frozen and nothing is planned this cycle");
    }
    tracing::debug!(
        cycle = n,
        scan,
        releases = out.scanned,
        verified = out.verified,
        "monitor pass"
    );
}

fn report_analyze(rt: &Runtime, out: &AnalyzeOutput, took: Duration) {
    observe(rt, "analyze", took);
    for f in &out.fired {
        rt.metrics
            .findings_fired
            .with_label_values(&[f.kind.as_str(), f.severity.as_str()])
            .inc();
        tracing::warn!(kind = %f.kind, severity = f.severity.as_str(), subject = %f.subject, message = %f.message, "finding fired");
    }
    for f in &out.resolved {
        tracing::info!(kind = %f.kind, subject = %f.subject, "finding resolved");
    }
    for kind in crate::model::FindingKind::ALL {
        let n = out.open_by_kind.get(&kind).copied().unwrap_or(0);
        rt.metrics
            .findings_open
            .with_label_values(&[kind.as_str()])
            .set(n);
    }
}

fn report_plan(rt: &Runtime, out: &plan::PlanOutput) {
    for e in &out.eval_errors {
        rt.metrics
            .policy_eval_errors
            .with_label_values(&[e.policy.as_str()])
            .inc();
        tracing::warn!(policy = %e.policy, finding = %e.finding, reason = %e.reason, "policy condition failed; counted as false");
    }
    for r in &out.remediations {
        rt.metrics
            .remediations
            .with_label_values(&[r.policy.as_str(), r.action.as_str(), r.status.as_str()])
            .inc();
        if let Some(gate) = &r.gate {
            rt.metrics
                .gate_stops
                .with_label_values(&[gate.as_str(), r.status.as_str()])
                .inc();
        }
        let _remediation = tracing::info_span!("remediation", id = %r.id, finding = r.finding_id.as_deref().unwrap_or("-"), policy = %r.policy, action = %r.action).entered();
        tracing::info!(id = %r.id, policy = %r.policy, action = %r.action, subject = %r.subject, status = r.status.as_str(), gate = r.gate.map_or("-", crate::model::Gate::as_str), reason = %r.reason, "remediation planned");
    }
    match &out.circuit {
        Some(CircuitChange::Opened(c)) => {
            tracing::error!(guard = %c.guard, reason = %c.reason, "circuit open: nothing executes until it closes")
        }
        Some(CircuitChange::Closed { reason }) => tracing::warn!(%reason, "circuit closed"),
        None => {}
    }
    rt.metrics.circuit_open.set(i64::from(out.circuit_open));
}

fn report_execute(rt: &Runtime, out: &ExecuteOutput) {
    rt.metrics.published(&out.published);
    for (r, outcome) in &out.results {
        // A span per remediation, carrying its id (the audit entry's remediation_id).
        let _remediation =
            tracing::info_span!("remediation", id = %r.id, policy = %r.policy, action = %r.action)
                .entered();
        let label = match outcome {
            Outcome::Executed { .. } => "executed",
            Outcome::Refused => "refused",
            Outcome::Failed(_) => "failed",
            Outcome::Retry(_) => "retry",
        };
        rt.metrics
            .remediations
            .with_label_values(&[r.policy.as_str(), r.action.as_str(), label])
            .inc();
        match outcome {
            Outcome::Executed { changed } => {
                tracing::warn!(id = %r.id, policy = %r.policy, action = %r.action, subject = %r.subject, changed, "remediation executed")
            }
            other => {
                tracing::error!(id = %r.id, policy = %r.policy, action = %r.action, subject = %r.subject, outcome = ?other, "remediation not executed")
            }
        }
    }
}

fn report_verify(rt: &Runtime, out: &VerifyOutput) {
    for (r, v) in &out.verdicts {
        rt.metrics
            .verifications
            .with_label_values(&[v.label()])
            .inc();
        match v {
            Verdict::Effective => {
                tracing::info!(id = %r.id, policy = %r.policy, subject = %r.subject, "remediation verified: its finding cleared")
            }
            other => {
                tracing::warn!(id = %r.id, policy = %r.policy, subject = %r.subject, attempt = r.attempt, verdict = ?other, "remediation verified: its finding has not cleared")
            }
        }
    }
    for p in &out.released {
        tracing::info!(package = %p, "hold released: its finding resolved");
    }
}

/// What the loop task shares with the daemon around it.
/// When the next thing due by time is (a verification, a full scan, a held plan): the loop
/// sets it after each cycle, the ticker sleeps until it.
#[derive(Debug, Default)]
pub(super) struct Due(std::sync::Mutex<Option<i64>>, tokio::sync::Notify);

impl Due {
    /// The longest the ticker sleeps when nothing is due (its interval still wakes it).
    const NEVER: Duration = Duration::from_secs(24 * 3600);

    fn set(&self, at: Option<i64>) {
        if let Ok(mut d) = self.0.lock() {
            *d = at;
        }
        self.1.notify_one();
    }

    /// Waits until the time due was set again (the ticker then sleeps until the new one).
    pub async fn changed(&self) {
        self.1.notified().await;
    }

    /// A time already past (a stage that failed left it due) is looked at again after this
    /// long, not at once: a failing stage must not make the loop spin.
    const PAST: Duration = Duration::from_millis(250);

    /// How long from `now` until the next thing is due.
    pub fn wait(&self, now: i64) -> Duration {
        match self.0.lock().ok().and_then(|d| *d) {
            Some(at) if at > now => Duration::from_millis(u64::try_from(at - now).unwrap_or(0)),
            Some(_) => Self::PAST,
            None => Self::NEVER,
        }
    }
}

/// What the periodic summary line says: since when, and what happened since.
#[derive(Debug)]
pub(super) struct Summary {
    since: Instant,
    cycles: u64,
    slowest: Duration,
}

impl Default for Summary {
    fn default() -> Self {
        Self {
            since: Instant::now(),
            cycles: 0,
            slowest: Duration::ZERO,
        }
    }
}

/// How often the loop says at info that it is alive and what it did, when nothing else is said.
const SUMMARY_EVERY: Duration = Duration::from_secs(300);

pub(super) struct Shared {
    pub due: Arc<Due>,
    pub summary: std::sync::Mutex<Summary>,
    pub errors: Arc<AtomicU64>,
    pub completed: Arc<AtomicU64>,
    pub running: Running,
    pub failure: supervise::Failure,
}

/// The loop task: a cycle per tick, one at a time. A stage that panics ends its cycle; the
/// loop's memory starts over and the task waits out a backoff (or stops the daemon, as
/// configured), as a restarted stage task did.
pub(super) async fn loop_task(
    rt: Arc<Runtime>,
    rx: supervise::Input<Cycle>,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) {
    let mut rx = rx.lock().await;
    let mut l = Loop::new(rt.rules.clone(), settings(&rt));
    let mut watch = Watch::start(&rt.policies);
    let mut trust = rt.trust.clone();
    let mut backoff = supervise::FIRST_BACKOFF;
    rt.metrics
        .policies_loaded
        .set(rt.policies.get().policies.len() as i64);
    loop {
        let cycle = tokio::select! {
            _ = cancel.cancelled() => break,
            c = rx.recv() => match c { Some(c) => c, None => break },
        };
        refresh_trust(&rt, &mut trust);
        reload_policies(&rt, &mut watch);
        let policies = rt.policies.get();
        let ctx = Context {
            store: &rt.store,
            registry: &rt.registry,
            policies: &policies,
            trust: &trust,
            key: &rt.key,
            now: rt.clock.now_ms(),
        };
        let mut reporter = Reporter {
            rt: &rt,
            errors: &shared.errors,
            running: &shared.running,
            n: cycle.n,
            stage: None,
            arrived: cycle.arrived,
        };
        let stepped = std::panic::AssertUnwindSafe(
            l.step(&ctx, &mut reporter).instrument(cycle.span.clone()),
        )
        .catch_unwind()
        .await;
        let stage = reporter.stage;
        shared.running.set_stage("loop");
        let failed = match &stepped {
            Ok(step) => step
                .failed
                .as_ref()
                .map(|(stage, error)| format!("{}: {error}", stage.as_str())),
            Err(_) => None,
        };
        if let Err(payload) = stepped {
            let task = stage.map(Stage::as_str).unwrap_or("loop");
            if !supervise::failed(&rt, task, payload, &shared.failure, &cancel, &mut backoff).await
            {
                break;
            }
            l.restart();
            tracing::warn!("a stage failed: the loop starts over with a full scan");
            continue;
        }
        backoff = supervise::FIRST_BACKOFF;
        shared.due.set(l.next_due(rt.clock.now_ms()));
        end_cycle(&rt, &cycle, failed).await;
        summarize(&rt, &shared.summary, cycle.n, cycle.started.elapsed());
        shared.completed.fetch_add(1, Ordering::SeqCst);
    }
}

/// A line per cycle at debug; every five minutes a summary at info, so that a quiet daemon's log
/// still says it is alive and what it did.
fn summarize(rt: &Runtime, summary: &std::sync::Mutex<Summary>, n: u64, took: Duration) {
    tracing::debug!(cycle = n, took_ms = took.as_millis() as u64, "cycle done");
    let Ok(mut s) = summary.lock() else { return };
    s.cycles += 1;
    s.slowest = s.slowest.max(took);
    if s.since.elapsed() < SUMMARY_EVERY {
        return;
    }
    let open: i64 = {
        use prometheus::core::Collector as _;
        rt.metrics
            .findings_open
            .collect()
            .iter()
            .flat_map(|m| m.get_metric())
            .map(|m| m.get_gauge().get_value() as i64)
            .sum()
    };
    tracing::info!(
        cycles = s.cycles,
        slowest_ms = s.slowest.as_millis() as u64,
        findings_open = open,
        remediations_total = rt.metrics.remediations_count(),
        "still watching"
    );
    *s = Summary::default();
}

/// After a cycle: the store's probe, the cycle's metrics, the watchdog.
async fn end_cycle(rt: &Runtime, cycle: &Cycle, failed: Option<String>) {
    let probe = Instant::now();
    match rt.store.ping().await {
        Ok(()) => rt
            .metrics
            .store_latency
            .observe(probe.elapsed().as_secs_f64()),
        Err(_) => rt.metrics.store_errors.inc(),
    }
    rt.metrics.cycles.inc();
    rt.metrics.last_cycle.set(rt.clock.now_ms() as f64 / 1000.0);
    observe(rt, "cycle", cycle.started.elapsed());
    if let Ok(mut last) = rt.metrics.last.lock() {
        *last = Some(super::metrics::LastCycle {
            at_ms: rt.clock.now_ms(),
            duration_ms: cycle.started.elapsed().as_millis() as u64,
            failed,
        });
    }
    notify::watchdog();
}
