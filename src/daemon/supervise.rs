//! Supervision of the daemon's tasks: a task that fails (panics) is restarted with backoff, or stops the daemon with a clear error, as configured; none dies silently.

use serde::Deserialize;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Runtime;

/// What a failed task does to the daemon (`on_task_failure` in the configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// Restart it after 1 s, doubling up to 60 s while it keeps failing.
    #[default]
    Restart,
    /// Stop the daemon with an error naming the task (systemd's `Restart=on-failure` then
    /// restarts the whole service).
    Stop,
}

/// A stage's input, kept outside the task so that a restarted task reads on where the failed
/// one stopped.
pub type Input<T> = Arc<tokio::sync::Mutex<mpsc::Receiver<T>>>;

pub fn input<T>(rx: mpsc::Receiver<T>) -> Input<T> {
    Arc::new(tokio::sync::Mutex::new(rx))
}

const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// What the supervisors share: the first failure that stopped the daemon, and whether the
/// monitor must start over (a restarted stage lost the cycle in flight and its memory).
#[derive(Debug, Default)]
pub struct Shared {
    pub failure: std::sync::Mutex<Option<String>>,
    pub resync: std::sync::atomic::AtomicBool,
}

pub type Failure = Arc<Shared>;

/// Runs `make()`'s task until it ends by itself; when it panics, restarts it with backoff or
/// records the failure and cancels the daemon, by `rt.on_task_failure`.
pub async fn supervised<F, Fut>(
    rt: Arc<Runtime>,
    task: &'static str,
    failure: Failure,
    cancel: CancellationToken,
    make: F,
) where
    F: Fn() -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut backoff = FIRST_BACKOFF;
    loop {
        let joined = tokio::spawn(make()).await;
        let Err(error) = joined else { return };
        if !error.is_panic() {
            return;
        }
        let payload = error.into_panic();
        let what = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".into());
        match rt.on_task_failure {
            OnFailure::Restart => {
                rt.metrics.task_restarts.with_label_values(&[task]).inc();
                failure
                    .resync
                    .store(true, std::sync::atomic::Ordering::SeqCst);
                tracing::error!(task, reason = %what, ?backoff, "task failed: restarting it");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            OnFailure::Stop => {
                tracing::error!(task, reason = %what, "task failed: stopping the daemon (on_task_failure = \"stop\")");
                if let Ok(mut f) = failure.failure.lock() {
                    f.get_or_insert_with(|| format!("the {task} task failed: {what}"));
                }
                cancel.cancel();
                return;
            }
        }
    }
}
