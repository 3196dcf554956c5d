//! Supervision of the daemon's tasks: a task that fails (panics) is restarted with backoff, or stops the daemon with a clear error, as configured; none dies silently.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Runtime;

pub use crate::config::OnFailure;

/// A stage's input, kept outside the task so that a restarted task reads on where the failed
/// one stopped.
pub type Input<T> = Arc<tokio::sync::Mutex<mpsc::Receiver<T>>>;

pub fn input<T>(rx: mpsc::Receiver<T>) -> Input<T> {
    Arc::new(tokio::sync::Mutex::new(rx))
}

pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// What the supervisors share: the first failure that stopped the daemon.
#[derive(Debug, Default)]
pub struct Shared {
    pub failure: std::sync::Mutex<Option<String>>,
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
        if !failed(
            &rt,
            task,
            error.into_panic(),
            &failure,
            &cancel,
            &mut backoff,
        )
        .await
        {
            return;
        }
    }
}

/// A task (or a stage of the loop task) panicked with `payload`: counted and logged, then either
/// a backoff waited out (true: carry on) or the failure recorded and the daemon cancelled (false),
/// by `rt.on_task_failure`.
pub async fn failed(
    rt: &Runtime,
    task: &str,
    payload: Box<dyn std::any::Any + Send>,
    failure: &Failure,
    cancel: &CancellationToken,
    backoff: &mut Duration,
) -> bool {
    let what = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into());
    match rt.on_task_failure {
        OnFailure::Restart => {
            rt.metrics.task_restarts.with_label_values(&[task]).inc();
            tracing::error!(task, reason = %what, backoff = ?*backoff, "task failed: restarting it");
            let wait = *backoff;
            *backoff = (*backoff * 2).min(MAX_BACKOFF);
            tokio::select! {
                _ = cancel.cancelled() => false,
                _ = tokio::time::sleep(wait) => true,
            }
        }
        OnFailure::Stop => {
            tracing::error!(task, reason = %what, "task failed: stopping the daemon (on_task_failure = \"stop\")");
            if let Ok(mut f) = failure.failure.lock() {
                f.get_or_insert_with(|| format!("the {task} task failed: {what}"));
            }
            cancel.cancel();
            false
        }
    }
}
