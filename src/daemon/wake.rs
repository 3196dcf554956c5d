//! What wakes the loop: telemetry committed by the intake, a registry or store change (file
//! notifications, PostgreSQL `NOTIFY`), an admin call, a reload, and the time of the next
//! thing due; coalesced, so that a burst of events makes one cycle.

use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Events arriving within this long of the first one wake one cycle together.
pub const COALESCE: Duration = Duration::from_millis(2);

/// Why the loop was woken, for the metrics' label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The intake committed telemetry.
    Intake,
    /// The registry's records or artifacts changed (file notifications, `NOTIFY`).
    Registry,
    /// An admin call: an approval, a rejection, a rollback, pause or resume, the circuit.
    Admin,
    /// The policies or the trust store were reloaded.
    Reload,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Intake => "intake",
            Self::Registry => "registry",
            Self::Admin => "admin",
            Self::Reload => "reload",
        }
    }
}

/// The loop's doorbell: any task rings it; the ticker waits on it.
#[derive(Debug, Default)]
pub struct Wake {
    notify: Notify,
    /// When the first event not yet taken by a cycle arrived.
    first: Mutex<Option<Instant>>,
}

impl Wake {
    /// Something happened that the loop should look at now.
    pub fn ring(&self, _why: Reason) {
        if let Ok(mut first) = self.first.lock() {
            first.get_or_insert_with(Instant::now);
        }
        self.notify.notify_one();
    }

    /// Waits for a ring (one stored permit: rings while nobody waits make one wake-up).
    pub async fn rung(&self) {
        self.notify.notified().await;
    }

    /// The arrival time of the earliest event not yet taken, left in place (an event that
    /// arrived while a cycle ran and was acted on in it).
    pub fn arrival(&self) -> Option<Instant> {
        self.first.lock().ok().and_then(|f| *f)
    }

    /// Takes the arrival time of the earliest event not yet taken: the cycle starting now
    /// answers it.
    pub fn take_arrival(&self) -> Option<Instant> {
        self.first.lock().ok().and_then(|mut f| f.take())
    }
}

/// What the daemon watches besides its own calls, to ring the bell.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// The knowledge store: on PostgreSQL its `NOTIFY` channel, on SQLite its file.
    pub database_url: String,
    /// Files and folders whose change is a reload (the policies, the trust store).
    pub reloads: Vec<std::path::PathBuf>,
}

/// The watchers started by [`start`]: they stop when this is dropped.
pub struct Watching {
    _files: Vec<notify::RecommendedWatcher>,
}

/// Starts every wake-up source the runtime has: the registry's own notifications (artifact
/// writes, a marketplace checkout), the store's (PostgreSQL `LISTEN`, the SQLite file), the
/// policy directory and the trust store. A source that cannot start is logged: the ticker still
/// covers what it would have noticed.
pub fn start(
    rt: &std::sync::Arc<super::Runtime>,
    sources: &Sources,
    cancel: &tokio_util::sync::CancellationToken,
) -> Watching {
    let mut files = Vec::new();
    if let crate::registry::Managed::Sql(sql) = rt.registry.as_ref() {
        if sql.memory.is_none() && sql.artifact_root.is_dir() {
            if let Err(error) = sql.watch_artifacts() {
                tracing::warn!(%error, root = %sql.artifact_root.display(), "cannot watch artifact_root; a changed artifact is found at the next full scan");
            }
        }
    }
    forward_registry(rt.clone(), cancel.clone());
    if sources.database_url.starts_with("postgres") {
        tokio::spawn(listen(
            rt.clone(),
            sources.database_url.clone(),
            cancel.clone(),
        ));
    } else if let Some(w) = watch_sqlite(rt, &sources.database_url, cancel) {
        files.push(w);
    }
    for path in &sources.reloads {
        let wake = rt.wake.clone();
        let watched = notify::recommended_watcher(move |e: notify::Result<notify::Event>| {
            if e.is_ok_and(|e| !matches!(e.kind, notify::EventKind::Access(_))) {
                wake.ring(Reason::Reload);
            }
        })
        .and_then(|mut w| {
            use notify::Watcher as _;
            w.watch(path, notify::RecursiveMode::Recursive).map(|()| w)
        });
        match watched {
            Ok(w) => files.push(w),
            Err(error) => {
                tracing::warn!(%error, path = %path.display(), "cannot watch for reloads; they are noticed at the next cycle")
            }
        }
    }
    Watching { _files: files }
}

/// Rings on every change the registry's backend notices by itself.
fn forward_registry(
    rt: std::sync::Arc<super::Runtime>,
    cancel: tokio_util::sync::CancellationToken,
) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = rt.registry.changed() => rt.wake.ring(Reason::Registry),
            }
        }
    });
}

/// PostgreSQL: rings on each `NOTIFY mapek_registry` (sent in the transaction of every registry
/// change, by whichever process made it), reconnecting after a lost connection.
async fn listen(
    rt: std::sync::Arc<super::Runtime>,
    url: String,
    cancel: tokio_util::sync::CancellationToken,
) {
    let mut backoff = Duration::from_millis(250);
    loop {
        let listened = async {
            let mut l = sqlx::postgres::PgListener::connect(&url).await?;
            l.listen(crate::registry::NOTIFY_CHANNEL).await?;
            tracing::debug!("listening for registry changes");
            loop {
                l.recv().await?;
                rt.wake.ring(Reason::Registry);
            }
            #[allow(unreachable_code)]
            Ok::<(), sqlx::Error>(())
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = listened => if let Err(error) = r {
                tracing::debug!(%error, "registry notifications lost; listening again");
            },
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// SQLite: another process (`mapek registry import`, `mapek plans approve`, `mapek pause`)
/// wrote the store file; rings when the registry's change sequence, the maintainers' decisions
/// or the pause moved (the loop's own writes of other tables ring nothing).
fn watch_sqlite(
    rt: &std::sync::Arc<super::Runtime>,
    url: &str,
    cancel: &tokio_util::sync::CancellationToken,
) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher as _;
    let path = std::path::PathBuf::from(
        url.strip_prefix("sqlite://")
            .unwrap_or(url)
            .split('?')
            .next()
            .unwrap_or_default(),
    );
    let dir = path.parent().filter(|d| d.is_dir())?.to_path_buf();
    let name = path.file_name()?.to_string_lossy().into_owned();
    let touched = std::sync::Arc::new(Notify::new());
    let t = touched.clone();
    let mut w = notify::recommended_watcher(move |e: notify::Result<notify::Event>| {
        let ours = e.is_ok_and(|e| {
            !matches!(e.kind, notify::EventKind::Access(_))
                && e.paths.iter().any(|p| {
                    p.file_name()
                        .is_some_and(|f| f.to_string_lossy().starts_with(&name))
                })
        });
        if ours {
            t.notify_one();
        }
    })
    .ok()?;
    w.watch(&dir, notify::RecursiveMode::NonRecursive).ok()?;
    let (rt, cancel) = (rt.clone(), cancel.clone());
    tokio::spawn(async move {
        let mut seen = rt.store.wake_marks().await.ok();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = touched.notified() => {}
            }
            tokio::time::sleep(COALESCE).await;
            if let Ok(marks) = rt.store.wake_marks().await {
                if seen.as_ref() != Some(&marks) {
                    seen = Some(marks);
                    rt.wake.ring(Reason::Registry);
                }
            }
        }
    });
    Some(w)
}
