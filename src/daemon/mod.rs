//! The daemon: each stage a task under one supervisor, joined by bounded channels, woken by a ticker.

pub mod admin;
pub mod explain;
pub mod health;
pub mod http;
pub mod lead;
pub mod metrics;
mod notifier;
pub mod notify;
pub mod page;
pub mod reload;
pub mod retention;
mod stages;
pub mod status;
pub mod supervise;
pub mod wake;

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
use crate::registry::Managed;
use metrics::Metrics;
pub use stages::{reload_policies, settings};

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
    /// The knowledge store's last known state, for `/readyz` and to refuse calls at once.
    pub store_health: Arc<health::StoreHealth>,
    /// Rung by whatever the loop should look at now (telemetry, a registry change, an admin
    /// call, a reload); the ticker is only the safety net.
    pub wake: Arc<wake::Wake>,
}

/// How many cycles to run (None: until cancelled) and how often.
#[derive(Debug, Clone, Copy)]
pub struct RunOptions {
    pub cycles: Option<u64>,
    pub interval: Duration,
    /// After cancellation, how long the stages may take to finish what they are doing.
    pub grace: Duration,
}

/// The tasks still running, and the stage the loop task is in, so that a shutdown that runs out
/// of grace can name them.
#[derive(Clone, Default)]
struct Running(
    Arc<std::sync::Mutex<std::collections::BTreeSet<&'static str>>>,
    Arc<std::sync::Mutex<&'static str>>,
);

/// Removes its stage from [`Running`] when the stage's task ends, however it ends.
struct Entered(Running, &'static str);

impl Running {
    fn enter(&self, stage: &'static str) -> Entered {
        if let Ok(mut s) = self.0.lock() {
            s.insert(stage);
        }
        Entered(self.clone(), stage)
    }
    /// The loop task is in `stage` now (`loop` between cycles).
    fn set_stage(&self, stage: &'static str) {
        if let Ok(mut s) = self.1.lock() {
            *s = stage;
        }
    }
    /// The running tasks, the loop task named by the stage it is in.
    fn names(&self) -> Vec<&'static str> {
        let stage = self.1.lock().map(|s| *s).unwrap_or("loop");
        self.0
            .lock()
            .map(|s| {
                s.iter()
                    .map(|t| {
                        if *t == "loop" && !stage.is_empty() {
                            stage
                        } else {
                            t
                        }
                    })
                    .collect()
            })
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
    /// When the earliest event this cycle answers arrived (None: woken by a timer).
    arrived: Option<Instant>,
    /// The cycle's trace: every stage's span is its child.
    span: tracing::Span,
    started: Instant,
    _done: Option<oneshot::Sender<()>>,
}

/// Spawns `make()`'s task, supervised and marked as running under `name`.
fn spawn_supervised<F, Fut>(
    tracker: &TaskTracker,
    running: &Running,
    rt: &Arc<Runtime>,
    failure: &supervise::Failure,
    cancel: &CancellationToken,
    name: &'static str,
    make: F,
) where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let task = supervise::supervised(rt.clone(), name, failure.clone(), cancel.clone(), make);
    tracker.spawn(staged(running.enter(name), task));
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
    running.set_stage("loop");
    let failure = supervise::Failure::default();
    let shared = Arc::new(stages::Shared {
        errors: Arc::new(AtomicU64::new(0)),
        completed: Arc::new(AtomicU64::new(0)),
        running: running.clone(),
        failure: failure.clone(),
        due: Arc::default(),
        summary: Default::default(),
    });
    let (tick_tx, tick_rx) = mpsc::channel::<Cycle>(1);
    tracker.spawn(staged(
        running.enter("ticker"),
        ticker(
            rt.clone(),
            shared.due.clone(),
            opts,
            tick_tx,
            cancel.clone(),
        ),
    ));
    // The notifier and compaction run beside the loop and stop with it (also after a counted run).
    let side_stop = cancel.child_token();
    if let Some(n) = rt.notifier.clone() {
        let (r, stop) = (rt.clone(), side_stop.clone());
        spawn_supervised(
            &tracker,
            &running,
            &rt,
            &failure,
            &cancel,
            "notify",
            move || notifier::notifier_task(r.clone(), n.clone(), stop.clone()),
        );
    }
    let (r, stop) = (rt.clone(), side_stop.clone());
    spawn_supervised(
        &tracker,
        &running,
        &rt,
        &failure,
        &cancel,
        "retention",
        move || retention::retention_task(r.clone(), stop.clone()),
    );
    let input = supervise::input(tick_rx);
    let (r, s, c) = (rt.clone(), shared.clone(), cancel.clone());
    let looped = supervise::supervised(
        rt.clone(),
        "loop",
        failure.clone(),
        cancel.clone(),
        move || stages::loop_task(r.clone(), input.clone(), s.clone(), c.clone()),
    );
    tracker.spawn(staged(running.enter("loop"), async move {
        looped.await;
        side_stop.cancel();
    }));
    tracker.close();
    notify::ready(&format!(
        "watching the registry; {} policies",
        rt.policies.get().policies.len()
    ));
    let cut_off = wait(&tracker, &running, &cancel, opts.grace).await;
    notify::stopping();
    if let Some(why) = failure.failure.lock().ok().and_then(|f| f.clone()) {
        anyhow::bail!("{why}; the daemon stops (on_task_failure = \"stop\")");
    }
    Ok(RunSummary {
        cycles: shared.completed.load(Ordering::SeqCst),
        stage_errors: shared.errors.load(Ordering::SeqCst),
        cut_off,
    })
}

/// Waits for every task to end; after cancellation, at most `grace`: then the names of the ones
/// still at work.
async fn wait(
    tracker: &TaskTracker,
    running: &Running,
    cancel: &CancellationToken,
    grace: Duration,
) -> Vec<&'static str> {
    tokio::select! {
        _ = tracker.wait() => Vec::new(),
        _ = async {
            cancel.cancelled().await;
            tokio::time::sleep(grace).await;
        } => {
            let cut_off = running.names();
            tracing::error!(
                still_running = ?cut_off,
                grace = ?grace,
                "the grace period is over: stopping without waiting for these stages"
            );
            cut_off
        }
    }
}

/// Sends a cycle when something rings the loop's bell (events within [`wake::COALESCE`] make
/// one cycle), when the next thing due by time is due, and at least every `interval` (the
/// safety net: a lost wake-up is made good there, since each stage reads from its cursors).
async fn ticker(
    rt: Arc<Runtime>,
    due: Arc<stages::Due>,
    opts: RunOptions,
    tx: mpsc::Sender<Cycle>,
    cancel: CancellationToken,
) {
    let mut interval = tokio::time::interval(opts.interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n = 0;
    loop {
        if opts.cycles.is_some_and(|max| n >= max) {
            break;
        }
        let until_due = due.wait(rt.clock.now_ms());
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = interval.tick() => {}
            _ = rt.wake.rung() => {
                tokio::time::sleep(wake::COALESCE).await;
                rt.metrics.wakeups.with_label_values(&["event"]).inc();
            }
            _ = tokio::time::sleep(until_due) => {
                rt.metrics.wakeups.with_label_values(&["due"]).inc();
            }
            // A cycle ended and set the next time due: sleep until that one instead.
            _ = due.changed() => continue,
        }
        n += 1;
        let (done_tx, done_rx) = oneshot::channel();
        let cycle = Cycle {
            n,
            arrived: rt.wake.take_arrival(),
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
