//! The intake writer: accepted events of concurrent requests committed together (group commit), each request answered only once its events are durable.

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::events::Batch;
use crate::knowledge::Store;

/// Several requests are folded into one transaction up to this many events.
const MAX_EVENTS_PER_COMMIT: u64 = 200_000;

#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    #[error("the intake is shutting down")]
    Closed,
    #[error("the knowledge store refused the write: {0}")]
    Store(String),
}

struct Job {
    batch: Batch,
    done: oneshot::Sender<Result<(), String>>,
}

/// A handle to the writer; cheap to clone, one per request handler.
#[derive(Clone)]
pub struct Intake {
    tx: mpsc::Sender<Job>,
}

impl Intake {
    /// Starts the writer. It runs until `stop` fires, then writes what it already holds and ends.
    pub fn start(store: Store, stop: CancellationToken) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(256);
        let task = tokio::spawn(writer(store, rx, stop));
        (Self { tx }, task)
    }

    /// Hands a batch to the writer and waits until it is committed. An error means none of the
    /// batch is stored.
    pub async fn submit(&self, batch: Batch) -> Result<(), IntakeError> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Job { batch, done })
            .await
            .map_err(|_| IntakeError::Closed)?;
        match wait.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(IntakeError::Store(e)),
            Err(_) => Err(IntakeError::Closed),
        }
    }
}

async fn writer(store: Store, mut rx: mpsc::Receiver<Job>, stop: CancellationToken) {
    loop {
        let first = tokio::select! {
            j = rx.recv() => j,
            _ = stop.cancelled() => {
                rx.close();
                rx.recv().await
            }
        };
        let Some(first) = first else { break };
        let mut batch = first.batch;
        let mut waiting = vec![first.done];
        while batch.events < MAX_EVENTS_PER_COMMIT {
            match rx.try_recv() {
                Ok(job) => {
                    batch.merge(job.batch);
                    waiting.push(job.done);
                }
                Err(_) => break,
            }
        }
        let result = store
            .write_telemetry(&batch)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string());
        if let Err(error) = &result {
            tracing::error!(%error, events = batch.events, "telemetry write failed; the requests are answered 503");
        }
        for done in waiting {
            let _ = done.send(result.clone());
        }
    }
}
