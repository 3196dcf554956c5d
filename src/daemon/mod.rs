//! The daemon: each stage a task under one supervisor, joined by bounded channels, woken by a ticker.

pub mod admin;
pub mod http;
pub mod lead;
pub mod metrics;
mod notifier;
pub mod notify;
pub mod reload;
pub mod retention;
mod stages;
pub mod supervise;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::analyze::Rules;
use crate::clock::Clock;
use crate::keys::{KeyPair, TrustStore};
use crate::knowledge::Store;
use crate::monitor::MonitorOutput;
use crate::registry::Managed;
use metrics::Metrics;
pub use stages::reload_policies;
use stages::{analyze_task, execute_task, monitor_task, plan_task};

/// Everything the stages share.
pub struct Runtime {
    pub store: Store,
    pub registry: Arc<Managed>,
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
    /// This replica's name in the leader's lease and its role (leader, standby, standalone).
    pub leadership: Arc<lead::Leadership>,
    /// The admin API's bearer token; None: the admin API answers 401 to everyone.
    pub admin_token: Option<String>,
    /// What a failed (panicked) task does: restarted with backoff, or the daemon stops.
    pub on_task_failure: supervise::OnFailure,
    /// Fault injection for tests: called with the stage's name as each stage takes a cycle.
    pub fault: Option<Arc<dyn Fn(&'static str) + Send + Sync>>,
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
    /// The stages still at work when the grace period ran out, left unfinished.
    pub cut_off: Vec<&'static str>,
}

/// Runs a stage's task, marked as running until it ends.
async fn staged(entered: Entered, task: impl std::future::Future<Output = ()>) {
    task.await;
    drop(entered);
}

/// One cycle travelling down the pipeline; dropping `done` tells the ticker it is over.
struct Cycle {
    n: u64,
    /// The cycle's trace: every stage's span is its child.
    span: tracing::Span,
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

    let failure = supervise::Failure::default();
    let (mon_in, ana_in, plan_in, exe_in) = (
        supervise::input(tick_rx),
        supervise::input(mon_rx),
        supervise::input(ana_rx),
        supervise::input(plan_rx),
    );
    let entered = running.enter("ticker");
    tracker.spawn(staged(entered, ticker(opts, tick_tx, cancel.clone())));
    let supervise = |task: &'static str| (rt.clone(), task, failure.clone(), cancel.clone());
    let (r, e, c) = (rt.clone(), errors.clone(), cancel.clone());
    let resync = failure.clone();
    let (s0, s1, s2, s3) = supervise("monitor");
    tracker.spawn(staged(
        running.enter("monitor"),
        supervise::supervised(s0, s1, s2, s3, move || {
            monitor_task(
                r.clone(),
                mon_in.clone(),
                mon_tx.clone(),
                e.clone(),
                c.clone(),
                resync.clone(),
            )
        }),
    ));
    let (r, e, c) = (rt.clone(), errors.clone(), cancel.clone());
    let (s0, s1, s2, s3) = supervise("analyze");
    tracker.spawn(staged(
        running.enter("analyze"),
        supervise::supervised(s0, s1, s2, s3, move || {
            analyze_task(
                r.clone(),
                ana_in.clone(),
                ana_tx.clone(),
                e.clone(),
                c.clone(),
            )
        }),
    ));
    let (r, e, c) = (rt.clone(), errors.clone(), cancel.clone());
    let (s0, s1, s2, s3) = supervise("plan");
    tracker.spawn(staged(
        running.enter("plan"),
        supervise::supervised(s0, s1, s2, s3, move || {
            plan_task(
                r.clone(),
                plan_in.clone(),
                plan_tx.clone(),
                e.clone(),
                c.clone(),
            )
        }),
    ));
    // The notifier and compaction run beside the loop and stop with it (also after a counted run).
    let notifier_stop = cancel.child_token();
    if let Some(n) = rt.notifier.clone() {
        let (r, stop) = (rt.clone(), notifier_stop.clone());
        let (s0, s1, s2, s3) = supervise("notify");
        tracker.spawn(staged(
            running.enter("notify"),
            supervise::supervised(s0, s1, s2, s3, move || {
                notifier::notifier_task(r.clone(), n.clone(), stop.clone())
            }),
        ));
    }
    let (r, stop) = (rt.clone(), notifier_stop.clone());
    let (s0, s1, s2, s3) = supervise("retention");
    tracker.spawn(staged(
        running.enter("retention"),
        supervise::supervised(s0, s1, s2, s3, move || {
            retention::retention_task(r.clone(), stop.clone())
        }),
    ));
    let (r, e, done, c) = (
        rt.clone(),
        errors.clone(),
        completed.clone(),
        cancel.clone(),
    );
    let (s0, s1, s2, s3) = supervise("execute");
    let execute = supervise::supervised(s0, s1, s2, s3, move || {
        execute_task(
            r.clone(),
            exe_in.clone(),
            e.clone(),
            done.clone(),
            c.clone(),
        )
    });
    tracker.spawn(staged(running.enter("execute"), async move {
        execute.await;
        notifier_stop.cancel();
    }));
    tracker.close();
    notify::ready(&format!(
        "watching the registry; {} policies",
        rt.policies.get().policies.len()
    ));
    let mut cut_off = Vec::new();
    tokio::select! {
        _ = tracker.wait() => {}
        _ = async {
            cancel.cancelled().await;
            tokio::time::sleep(grace).await;
        } => {
            cut_off = running.names();
            tracing::error!(
                still_running = ?cut_off,
                grace = ?grace,
                "the grace period is over: stopping without waiting for these stages"
            );
        }
    }
    notify::stopping();
    if let Some(why) = failure.failure.lock().ok().and_then(|f| f.clone()) {
        anyhow::bail!("{why}; the daemon stops (on_task_failure = \"stop\")");
    }
    Ok(RunSummary {
        cycles: completed.load(Ordering::SeqCst),
        stage_errors: errors.load(Ordering::SeqCst),
        cut_off,
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
            span: tracing::info_span!("cycle", cycle = n),
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
