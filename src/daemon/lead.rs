//! Leadership: on PostgreSQL, replicas stand by until they hold the leader's lease and run the loop only while they keep it; on SQLite, one replica, kept alone by a file lock.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use super::{notify, RunOptions, RunSummary, Runtime};
use crate::knowledge::audit::NewEntry;
use crate::knowledge::lease::{LEADER, NOT_LEADING};
use crate::knowledge::Backend;

/// What this replica is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Starting = 0,
    Standby = 1,
    Leader = 2,
    /// The one replica of a SQLite store.
    Standalone = 3,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Starting => "starting",
            Role::Standby => "standby",
            Role::Leader => "leader",
            Role::Standalone => "standalone",
        }
    }
}

/// This replica's name in the lease and its current role, shared with the HTTP listener.
#[derive(Debug)]
pub struct Leadership {
    pub holder: String,
    pub ttl: Duration,
    role: AtomicU8,
}

impl Leadership {
    pub fn new(ttl: Duration) -> Self {
        let host = std::fs::read_to_string("/etc/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".into());
        let mut nonce = [0u8; 4];
        let _ = getrandom::fill(&mut nonce);
        Self {
            holder: format!("{host}:{}:{}", std::process::id(), hex::encode(nonce)),
            ttl,
            role: AtomicU8::new(Role::Starting as u8),
        }
    }

    pub fn role(&self) -> Role {
        match self.role.load(Ordering::SeqCst) {
            1 => Role::Standby,
            2 => Role::Leader,
            3 => Role::Standalone,
            _ => Role::Starting,
        }
    }

    pub fn set(&self, role: Role) {
        self.role.store(role as u8, Ordering::SeqCst);
    }

    /// Whether this replica may act (and so whether its admin API may change anything).
    pub fn acting(&self) -> bool {
        matches!(self.role(), Role::Leader | Role::Standalone)
    }
}

/// Holds the SQLite store's lock file for the life of the process.
#[derive(Debug)]
pub struct SingleReplica {
    _file: std::fs::File,
    pub path: PathBuf,
}

/// On SQLite, takes `<database>.lock` so that a second daemon on the same file refuses to start.
pub fn single_replica(database_url: &str) -> anyhow::Result<Option<SingleReplica>> {
    let url = crate::knowledge::normalize_url(database_url);
    let Some(rest) = url.strip_prefix("sqlite://") else {
        return Ok(None);
    };
    let db = rest.split('?').next().unwrap_or(rest);
    if db.is_empty() || db == ":memory:" {
        return Ok(None);
    }
    let path = PathBuf::from(format!("{db}.lock"));
    if let Some(dir) = Path::new(db).parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("creating {}: {e}", dir.display()))?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| anyhow::anyhow!("cannot open the lock file {}: {e}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(SingleReplica { _file: file, path })),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "another mapek daemon is running on the SQLite store {db} (it holds {}): SQLite \
             takes one replica; for several, use PostgreSQL, where they share a leader's lease",
            path.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            anyhow::bail!("cannot lock {}: {e}", path.display())
        }
    }
}

/// How often a standby asks for the lease: often enough to take over well within the lease
/// period after the leader's last renewal.
fn poll_interval(ttl: Duration) -> Duration {
    (ttl / 10).clamp(Duration::from_millis(100), Duration::from_secs(2))
}

/// Runs the loop as this replica's role allows: on SQLite at once; on PostgreSQL each time it
/// holds the lease, standing by in between, until `cancel` fires.
pub async fn run(
    rt: Arc<Runtime>,
    opts: RunOptions,
    cancel: CancellationToken,
) -> anyhow::Result<RunSummary> {
    let lead = rt.leadership.clone();
    if rt.store.backend == Backend::Sqlite {
        lead.set(Role::Standalone);
        rt.metrics.leader.set(1);
        return super::run(rt, opts, cancel).await;
    }
    let ttl_ms = i64::try_from(lead.ttl.as_millis()).unwrap_or(i64::MAX);
    let mut total = RunSummary::default();
    loop {
        lead.set(Role::Standby);
        rt.metrics.leader.set(0);
        rt.store.set_fence(NOT_LEADING);
        // A counted run (`--once`, `--cycles`, e.g. from cron) does not stand by for ever
        // behind a running daemon: it waits at most two lease periods.
        let patience = opts.cycles.map(|_| lead.ttl * 2);
        let token = match acquire(&rt, ttl_ms, &cancel, patience).await {
            Acquired::Token(t) => t,
            Acquired::Cancelled => break,
            Acquired::GaveUp(leader) => anyhow::bail!(
                "another replica leads ({leader}): a counted run does not wait for the lease; \
                 use the running daemon, or stop it first"
            ),
        };
        rt.store.set_fence(token);
        lead.set(Role::Leader);
        rt.metrics.leader.set(1);
        rt.metrics.lease_acquisitions.inc();
        tracing::warn!(holder = %lead.holder, token, "this replica leads: it holds the lease and acts");
        record_term(&rt, token).await;
        let term = cancel.child_token();
        let keeper = tokio::spawn(keep(rt.clone(), token, ttl_ms, term.clone()));
        let summary = super::run(rt.clone(), opts, term.clone()).await;
        term.cancel();
        let _ = keeper.await;
        rt.store.set_fence(NOT_LEADING);
        // Stopping (told to, done counting, or a failed task with on_task_failure = "stop"):
        // the lease is handed back at once rather than left to expire under a standby.
        let stopping = cancel.is_cancelled() || opts.cycles.is_some() || summary.is_err();
        if stopping {
            if let Err(error) = rt.store.release(LEADER, &lead.holder, token).await {
                tracing::warn!(%error, "could not release the lease; it expires by itself");
            }
        }
        let summary = summary?;
        total.cycles += summary.cycles;
        total.stage_errors += summary.stage_errors;
        total.cut_off.extend(summary.cut_off);
        if stopping {
            break;
        }
        tracing::error!(holder = %lead.holder, token, "the lease was lost: this replica stops acting and stands by");
    }
    lead.set(Role::Standby);
    rt.metrics.leader.set(0);
    Ok(total)
}

enum Acquired {
    Token(i64),
    Cancelled,
    /// `patience` ran out; the current holder.
    GaveUp(String),
}

/// Waits for the lease (at most `patience`, when given). Pings the watchdog while it waits,
/// since a standby's loop is this one.
async fn acquire(
    rt: &Runtime,
    ttl_ms: i64,
    cancel: &CancellationToken,
    patience: Option<Duration>,
) -> Acquired {
    let lead = &rt.leadership;
    let mut said = false;
    let started = std::time::Instant::now();
    loop {
        match rt
            .store
            .try_acquire(LEADER, &lead.holder, rt.clock.now_ms(), ttl_ms)
            .await
        {
            Ok(Some(token)) => return Acquired::Token(token),
            Ok(None) if patience.is_some_and(|p| started.elapsed() >= p) => {
                let holder = rt.store.lease(LEADER).await.ok().flatten();
                return Acquired::GaveUp(holder.map(|h| h.holder).unwrap_or_default());
            }
            Ok(None) => {
                if !said {
                    let holder = rt.store.lease(LEADER).await.ok().flatten();
                    let leader = holder.map(|h| h.holder).unwrap_or_default();
                    tracing::info!(%leader, "standing by: another replica holds the lease");
                    notify::ready(&format!("standing by; the leader is {leader}"));
                    said = true;
                }
            }
            Err(error) => tracing::warn!(%error, "cannot ask for the lease; asking again"),
        }
        notify::watchdog();
        tokio::select! {
            _ = cancel.cancelled() => return Acquired::Cancelled,
            _ = tokio::time::sleep(poll_interval(lead.ttl)) => {}
        }
    }
}

/// Renews the lease every third of its period; cancels `term` once it is lost, or once it has
/// expired without a renewal getting through.
async fn keep(rt: Arc<Runtime>, token: i64, ttl_ms: i64, term: CancellationToken) {
    let lead = &rt.leadership;
    let every = lead.ttl / 3;
    let mut valid_until = rt.clock.now_ms().saturating_add(ttl_ms);
    loop {
        tokio::select! {
            _ = term.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let now = rt.clock.now_ms();
        // Each try is bounded: cut off from PostgreSQL, a renewal on an open connection waits
        // for an answer that never comes, and the term must still end when the lease does.
        let renewal = tokio::time::timeout(
            every,
            rt.store.renew(LEADER, &lead.holder, token, now, ttl_ms),
        )
        .await
        .unwrap_or_else(|_| {
            Err(crate::knowledge::StoreError::TimedOut(format!(
                "no answer within {every:?}"
            )))
        });
        match renewal {
            Ok(true) => valid_until = now.saturating_add(ttl_ms),
            Ok(false) => {
                tracing::error!(token, "the lease has another holder now");
                rt.store.set_fence(NOT_LEADING);
                term.cancel();
                return;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot renew the lease");
                if rt.clock.now_ms() >= valid_until {
                    tracing::error!("the lease expired without a renewal: standing down");
                    rt.store.set_fence(NOT_LEADING);
                    term.cancel();
                    return;
                }
            }
        }
    }
}

/// Each term starts with an audit entry, written under the new token: the log shows who led when.
async fn record_term(rt: &Runtime, token: i64) {
    let entry = NewEntry {
        at: rt.clock.now_ms(),
        kind: crate::model::AuditKind::LeaderAcquired,
        actor: "daemon".into(),
        subject: rt.leadership.holder.clone(),
        remediation_id: None,
        detail: serde_json::json!({ "token": token, "holder": rt.leadership.holder }),
    };
    if let Err(error) = rt.store.record(&rt.key, entry).await {
        tracing::error!(%error, "could not record the new term in the audit log");
    }
}
