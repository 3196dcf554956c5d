//! The daemon: each stage a task under one supervisor, joined by bounded channels, woken by a ticker.

pub mod http;
pub mod metrics;
mod notifier;
pub mod notify;
pub mod reload;
pub mod retention;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::analyze::{self, Rules};
use crate::clock::Clock;
use crate::execute::{self, Outcome};
use crate::keys::{KeyPair, TrustStore};
use crate::knowledge::Store;
use crate::monitor::{self, MonitorOutput, MonitorState};
use crate::plan::{self, CircuitChange, PlanContext, Planner};
use crate::registry::SqlRegistry;
use metrics::Metrics;
use reload::{Reload, Watch};

/// Everything the stages share.
pub struct Runtime {
    pub store: Store,
    pub registry: Arc<SqlRegistry>,
    pub key: KeyPair,
    pub policies: reload::PolicySource,
    pub trust: Arc<TrustStore>,
    pub trust_path: Option<PathBuf>,
    pub clock: Arc<dyn Clock>,
    pub metrics: Arc<Metrics>,
    pub dry_run: bool,
    pub full_scan_every: Duration,
    pub rules: Rules,
    /// How long telemetry is kept.
    pub retention: crate::monitor::Retention,
    /// `POST /v1/events`: the writer, the bearer token and the limits; None: the intake is off.
    pub intake: Option<http::IntakeConfig>,
    /// When an ineffective policy is demoted.
    pub learning: crate::execute::learn::LearningSettings,
    /// When compaction runs and what it keeps of findings and notices.
    pub compaction: crate::knowledge::retention::RetentionSettings,
    /// Delivers `notify` notices beside the loop; None: they stay queued in the outbox.
    pub notifier: Option<Arc<crate::execute::notify::Notifier>>,
}

/// How many cycles to run (None: until cancelled) and how often.
#[derive(Debug, Clone, Copy)]
pub struct RunOptions {
    pub cycles: Option<u64>,
    pub interval: Duration,
    /// After cancellation, how long the stages may take to finish what they are doing.
    pub grace: Duration,
}

/// The stages still running, so a shutdown that runs out of grace can name them.
#[derive(Clone, Default)]
struct Running(Arc<std::sync::Mutex<std::collections::BTreeSet<&'static str>>>);

/// Removes its stage from [`Running`] when the stage's task ends, however it ends.
struct Entered(Running, &'static str);

impl Running {
    fn enter(&self, stage: &'static str) -> Entered {
        if let Ok(mut s) = self.0.lock() {
            s.insert(stage);
        }
        Entered(self.clone(), stage)
    }
    fn names(&self) -> Vec<&'static str> {
        self.0
            .lock()
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default()
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        if let Ok(mut s) = (self.0).0.lock() {
            s.remove(self.1);
        }
    }
}

/// What a run did, for `--once` and tests.
#[derive(Debug, Default)]
pub struct RunSummary {
    pub cycles: u64,
    pub stage_errors: u64,
}

/// Runs a stage's task, marked as running until it ends.
async fn staged(entered: Entered, task: impl std::future::Future<Output = ()>) {
    task.await;
    drop(entered);
}

/// One cycle travelling down the pipeline; dropping `done` tells the ticker it is over.
struct Cycle {
    n: u64,
    started: Instant,
    _done: Option<oneshot::Sender<()>>,
}

/// Runs the loop until `cancel` fires or the requested cycles are done, then waits for every
/// task to finish its current work.
pub async fn run(
    rt: Arc<Runtime>,
    opts: RunOptions,
    cancel: CancellationToken,
) -> anyhow::Result<RunSummary> {
    let tracker = TaskTracker::new();
    let running = Running::default();
    let grace = opts.grace;
    let errors = Arc::new(AtomicU64::new(0));
    let completed = Arc::new(AtomicU64::new(0));
    let (tick_tx, tick_rx) = mpsc::channel::<Cycle>(1);
    let (mon_tx, mon_rx) = mpsc::channel::<(Cycle, MonitorOutput)>(1);
    let (ana_tx, ana_rx) = mpsc::channel::<(Cycle, bool)>(1);
    let (plan_tx, plan_rx) = mpsc::channel::<(Cycle, bool)>(1);

    let entered = running.enter("ticker");
    tracker.spawn(staged(entered, ticker(opts, tick_tx, cancel.clone())));
    let entered = running.enter("monitor");
    tracker.spawn(staged(
        entered,
        monitor_task(rt.clone(), tick_rx, mon_tx, errors.clone(), cancel.clone()),
    ));
    let entered = running.enter("analyze");
    tracker.spawn(staged(
        entered,
        analyze_task(rt.clone(), mon_rx, ana_tx, errors.clone(), cancel.clone()),
    ));
    let entered = running.enter("plan");
    tracker.spawn(staged(
        entered,
        plan_task(rt.clone(), ana_rx, plan_tx, errors.clone(), cancel.clone()),
    ));
    // The notifier and compaction run beside the loop and stop with it (also after a counted run).
    let notifier_stop = cancel.child_token();
    if let Some(n) = rt.notifier.clone() {
        let entered = running.enter("notify");
        tracker.spawn(staged(
            entered,
            notifier::notifier_task(rt.clone(), n, notifier_stop.clone()),
        ));
    }
    let entered = running.enter("retention");
    tracker.spawn(staged(
        entered,
        retention::retention_task(rt.clone(), notifier_stop.clone()),
    ));
    let entered = running.enter("execute");
    let execute = execute_task(
        rt.clone(),
        plan_rx,
        errors.clone(),
        completed.clone(),
        cancel.clone(),
    );
    tracker.spawn(staged(entered, async move {
        execute.await;
        notifier_stop.cancel();
    }));
    tracker.close();
    notify::ready(&format!(
        "watching the registry; {} policies",
        rt.policies.get().policies.len()
    ));
    tokio::select! {
        _ = tracker.wait() => {}
        _ = async {
            cancel.cancelled().await;
            tokio::time::sleep(grace).await;
        } => {
            tracing::error!(
                still_running = ?running.names(),
                grace = ?grace,
                "the grace period is over: stopping without waiting for these stages"
            );
        }
    }
    notify::stopping();
    Ok(RunSummary {
        cycles: completed.load(Ordering::SeqCst),
        stage_errors: errors.load(Ordering::SeqCst),
    })
}

async fn ticker(opts: RunOptions, tx: mpsc::Sender<Cycle>, cancel: CancellationToken) {
    let mut interval = tokio::time::interval(opts.interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n = 0;
    loop {
        if opts.cycles.is_some_and(|max| n >= max) {
            break;
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = interval.tick() => {}
        }
        n += 1;
        let (done_tx, done_rx) = oneshot::channel();
        let cycle = Cycle {
            n,
            started: Instant::now(),
            _done: Some(done_tx),
        };
        tokio::select! {
            _ = cancel.cancelled() => break,
            sent = tx.send(cycle) => if sent.is_err() { break },
        }
        if opts.cycles.is_some() {
            // Counted runs go one cycle at a time, so `--cycles N` means N whole cycles.
            let _ = done_rx.await;
        }
    }
}

fn stage_failed(rt: &Runtime, errors: &AtomicU64, stage: &str, error: &dyn std::fmt::Display) {
    errors.fetch_add(1, Ordering::SeqCst);
    rt.metrics.stage_errors.with_label_values(&[stage]).inc();
    tracing::error!(stage, %error, "stage failed; the cycle ends here and the next one retries");
}

fn observe(rt: &Runtime, stage: &str, started: Instant) {
    rt.metrics
        .stage_duration
        .with_label_values(&[stage])
        .observe(started.elapsed().as_secs_f64());
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

async fn monitor_task(
    rt: Arc<Runtime>,
    mut rx: mpsc::Receiver<Cycle>,
    tx: mpsc::Sender<(Cycle, MonitorOutput)>,
    errors: Arc<AtomicU64>,
    cancel: CancellationToken,
) {
    let mut state = MonitorState::new();
    state.retention = rt.retention;
    let mut trust = rt.trust.clone();
    loop {
        let cycle = tokio::select! {
            _ = cancel.cancelled() => break,
            c = rx.recv() => match c { Some(c) => c, None => break },
        };
        let started = Instant::now();
        refresh_trust(&rt, &mut trust);
        let every = rt.full_scan_every.as_millis() as i64;
        match monitor::cycle(
            &mut state,
            &rt.registry,
            &rt.store,
            &trust,
            rt.clock.now_ms(),
            every,
        )
        .await
        {
            Ok(out) => {
                observe(&rt, "monitor", started);
                let scan = if out.full_scan { "full" } else { "incremental" };
                rt.metrics
                    .releases_scanned
                    .with_label_values(&[scan])
                    .inc_by(out.observations.len() as u64);
                rt.metrics
                    .signature_checks
                    .with_label_values(&["verified"])
                    .inc_by(out.verified as u64);
                rt.metrics
                    .signature_checks
                    .with_label_values(&["cache"])
                    .inc_by(out.cache_hits as u64);
                if let Some(why) = &out.unreachable {
                    tracing::error!(cycle = cycle.n, reason = %why, "registry unreachable: its findings are frozen and nothing is planned this cycle");
                }
                tracing::debug!(
                    cycle = cycle.n,
                    scan,
                    releases = out.observations.len(),
                    verified = out.verified,
                    "monitor pass"
                );
                if tx.send((cycle, out)).await.is_err() {
                    break;
                }
            }
            Err(e) => stage_failed(&rt, &errors, "monitor", &e),
        }
    }
}

async fn analyze_task(
    rt: Arc<Runtime>,
    mut rx: mpsc::Receiver<(Cycle, MonitorOutput)>,
    tx: mpsc::Sender<(Cycle, bool)>,
    errors: Arc<AtomicU64>,
    cancel: CancellationToken,
) {
    let mut analyzer = analyze::Analyzer::new(rt.rules.clone());
    loop {
        let (cycle, input) = tokio::select! {
            _ = cancel.cancelled() => break,
            c = rx.recv() => match c { Some(c) => c, None => break },
        };
        let started = Instant::now();
        let judged = analyzer
            .cycle(
                &rt.store,
                analyze::AnalyzeInput::from_monitor(&input),
                rt.clock.now_ms(),
            )
            .await;
        match judged {
            Ok(out) => {
                observe(&rt, "analyze", started);
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
                if tx.send((cycle, out.stale)).await.is_err() {
                    break;
                }
            }
            Err(e) => stage_failed(&rt, &errors, "analyze", &e),
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

async fn plan_task(
    rt: Arc<Runtime>,
    mut rx: mpsc::Receiver<(Cycle, bool)>,
    tx: mpsc::Sender<(Cycle, bool)>,
    errors: Arc<AtomicU64>,
    cancel: CancellationToken,
) {
    let mut planner = Planner::default();
    let mut watch = Watch::default();
    watch.due(&rt.policies);
    let mut trust = rt.trust.clone();
    rt.metrics
        .policies_loaded
        .set(rt.policies.get().policies.len() as i64);
    loop {
        let (cycle, stale) = tokio::select! {
            _ = cancel.cancelled() => break,
            c = rx.recv() => match c { Some(c) => c, None => break },
        };
        if stale {
            // Never plan on stale facts; the cycle still ends (and is counted) in execute.
            if tx.send((cycle, true)).await.is_err() {
                break;
            }
            continue;
        }
        let started = Instant::now();
        reload_policies(&rt, &mut watch);
        refresh_trust(&rt, &mut trust);
        let policies = rt.policies.get();
        let ctx = PlanContext {
            policies: &policies,
            trust: &trust,
            key: &rt.key,
            daemon_dry_run: rt.dry_run,
            now: rt.clock.now_ms(),
        };
        match planner.cycle(&rt.store, &rt.registry, ctx).await {
            Ok(out) => {
                observe(&rt, "plan", started);
                report_plan(&rt, &out);
                if tx.send((cycle, false)).await.is_err() {
                    break;
                }
            }
            Err(e) => stage_failed(&rt, &errors, "plan", &e),
        }
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
        tracing::info!(id = %r.id, policy = %r.policy, action = %r.action, subject = %r.subject, status = r.status.as_str(), gate = r.gate.as_deref().unwrap_or("-"), reason = %r.reason, "remediation planned");
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

/// After execution: verify what is due, then count every policy's outcomes and demote those
/// that keep failing.
async fn follow_up(rt: &Runtime, errors: &AtomicU64) {
    let now = rt.clock.now_ms();
    let policies = rt.policies.get();
    match execute::verify::cycle(&rt.store, &policies, &rt.key, now).await {
        Ok(out) => {
            for (r, v) in &out.verdicts {
                rt.metrics
                    .verifications
                    .with_label_values(&[v.label()])
                    .inc();
                match v {
                    execute::verify::Verdict::Effective => {
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
        Err(e) => stage_failed(rt, errors, "verify", &e),
    }
    match execute::learn::cycle(&rt.store, &rt.key, &rt.learning, now).await {
        Ok(out) => {
            rt.metrics.set_outcomes(&out.outcomes);
            for p in &out.demoted {
                tracing::error!(policy = %p, "policy demoted to dry run: its remediations keep failing or being rolled back; `mapek policy enable {p}` re-enables it");
            }
        }
        Err(e) => stage_failed(rt, errors, "learn", &e),
    }
}

async fn execute_task(
    rt: Arc<Runtime>,
    mut rx: mpsc::Receiver<(Cycle, bool)>,
    errors: Arc<AtomicU64>,
    completed: Arc<AtomicU64>,
    cancel: CancellationToken,
) {
    loop {
        let (cycle, stale) = tokio::select! {
            _ = cancel.cancelled() => break,
            c = rx.recv() => match c { Some(c) => c, None => break },
        };
        let started = Instant::now();
        let executed = if stale {
            // The registry cannot be read: nothing is applied to it either.
            Ok(execute::ExecuteOutput::default())
        } else {
            execute::cycle(&rt.store, &rt.registry, &rt.key, rt.clock.now_ms()).await
        };
        match executed {
            Ok(out) => {
                observe(&rt, "execute", started);
                for (r, outcome) in &out.results {
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
            Err(e) => stage_failed(&rt, &errors, "execute", &e),
        }
        if !stale {
            follow_up(&rt, &errors).await;
        }
        rt.metrics.cycles.inc();
        observe(&rt, "cycle", cycle.started);
        notify::watchdog();
        completed.fetch_add(1, Ordering::SeqCst);
    }
}
