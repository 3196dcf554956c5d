//! The knowledge store: one sqlx pool (SQLite or PostgreSQL) holding the registry and everything the loop knows.

pub mod approvals;
pub mod audit;
mod batch;
pub mod chain;
pub mod control;
pub mod findings;
pub mod learned;
pub mod lease;
mod migrations;
pub mod outbox;
pub mod remediations;
pub mod retention;
pub mod series;
pub mod standing;
pub mod state;
pub mod summary;
pub mod telemetry;
mod telemetry_upgrade;

pub use batch::{insert_rows, Param};

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::ConnectOptions as _;

/// The level at which sqlx logs a statement slower than a second.
pub const SLOW_STATEMENT_LEVEL: log::LevelFilter = log::LevelFilter::Debug;
use sqlx::{AnyConnection, AnyPool, Connection, Executor};
use std::str::FromStr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::sync::Once;

/// A fenced transaction's bound with the default lease (15 s).
const DEFAULT_TX_TIMEOUT_MS: u64 = 7_500;
/// The shortest bound, whatever the lease.
const MIN_TX_TIMEOUT_MS: u64 = 500;

/// The PostgreSQL channel on which a change that the loop should look at now is announced (a
/// registry change, a maintainer's decision, pause or resume), in the transaction that makes it,
/// so that every replica's daemon wakes whichever process wrote it.
pub const NOTIFY_CHANNEL: &str = "mapek_registry";

/// Announces a change on [`NOTIFY_CHANNEL`] inside the caller's transaction (delivered when it
/// commits, once per transaction); nothing on SQLite, whose file is watched instead.
pub async fn announce(conn: &mut Conn) -> Result<(), sqlx::Error> {
    if conn.backend_name() == "PostgreSQL" {
        conn.execute(sqlx::query("SELECT pg_notify($1, '')").bind(NOTIFY_CHANNEL))
            .await?;
    }
    Ok(())
}

/// A database name the benches make: letters, digits and `_` only (it is spliced into DDL).
fn plain_name(name: &str) -> Result<&str, StoreError> {
    if !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        Ok(name)
    } else {
        Err(StoreError::Corrupt(format!(
            "`{name}` is not a plain database name"
        )))
    }
}

/// A connection to the server for creating and dropping a bench's database: a `CREATE
/// DATABASE` over a second is logged at debug as the store's slow statements are, not warned
/// into the bench's output.
async fn admin(server: &str) -> Result<AnyConnection, StoreError> {
    DRIVERS.call_once(sqlx::any::install_default_drivers);
    let options = AnyConnectOptions::from_str(server)?
        .log_slow_statements(SLOW_STATEMENT_LEVEL, std::time::Duration::from_secs(1));
    Ok(options.connect().await?)
}

/// Creates (after dropping any leftover) a database `name` on the PostgreSQL server of `server`
/// (a URL of one of its databases), for a bench's run.
pub async fn create_database(server: &str, name: &str) -> Result<(), StoreError> {
    let name = plain_name(name)?;
    let mut conn = admin(server).await?;
    for ddl in [
        format!("DROP DATABASE IF EXISTS {name}"),
        format!("CREATE DATABASE {name}"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(ddl))
            .execute(&mut conn)
            .await?;
    }
    Ok(())
}

/// Drops a database [`create_database`] made, closing what is still connected to it (a bench
/// interrupted with its pool still open); PostgreSQL 13 or later.
pub async fn drop_database(server: &str, name: &str) -> Result<(), StoreError> {
    let name = plain_name(name)?;
    let mut conn = admin(server).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&mut conn)
    .await?;
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database `{url}`: {source}")]
    Connect { url: String, source: sqlx::Error },
    #[error("migrating the schema: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("stored row is invalid: {0}")]
    Corrupt(String),
    #[error("fenced: {0}; nothing was written")]
    Fenced(String),
    /// A call that got no answer in its time (the network to the store is cut, say).
    #[error("no answer from the knowledge store: {0}")]
    TimedOut(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The shared pool and which backend it talks to. The pool is private: writes go through
/// [`Store::begin`], whose transaction exists only while this handle holds the leader's lease
/// (on a fenced handle); reads through [`Store::reads`], which runs nothing but reads.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    pub backend: Backend,
    /// The fencing token every transaction must still hold (see [`lease`]); None: unfenced
    /// (the command line, the intake, a single SQLite replica).
    fence: Option<Arc<AtomicI64>>,
    /// On PostgreSQL, how long a fenced transaction may sit idle or run one statement before
    /// the server ends it: shorter than the lease, so that a paused leader's open transaction
    /// (holding the lease row's share lock) cannot hold up the takeover.
    tx_timeout_ms: u64,
    /// The telemetry series this process has read or numbered.
    series: series::SharedSeries,
    /// On SQLite, how many more released connections to check for a transaction left open
    /// (see [`suspect_connections`]); raised when a commit or a begin fails.
    suspect: Arc<std::sync::atomic::AtomicU32>,
}

/// A SQLite connection whose COMMIT failed (a full disk, a read-only file) keeps, inside sqlx,
/// a transaction depth that nothing undoes: every later begin on it fails with "attempted to
/// call begin_with at non-zero transaction depth", and the pool hands it out for ever. After a
/// failed commit or begin, the next this many released connections are checked (a BEGIN and a
/// ROLLBACK) and a broken one is closed instead of returned to the pool.
const SUSPECT_CHECKS: u32 = 16;

fn suspect_connections(suspect: &std::sync::atomic::AtomicU32) {
    suspect.store(SUSPECT_CHECKS, Ordering::SeqCst);
}

static DRIVERS: Once = Once::new();

/// Turns a plain path into a SQLite URL that creates the file when missing.
pub fn normalize_url(url: &str) -> String {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return url.to_string();
    }
    let path = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url);
    if path.contains('?') {
        format!("sqlite://{path}")
    } else {
        format!("sqlite://{path}?mode=rwc")
    }
}

impl Store {
    /// Connects and brings the schema up to date.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        DRIVERS.call_once(sqlx::any::install_default_drivers);
        let url = normalize_url(url);
        let backend = if url.starts_with("sqlite:") {
            if let Some(parent) = sqlite_path(&url).and_then(|p| p.parent().map(|p| p.to_owned())) {
                if !parent.as_os_str().is_empty() {
                    let _ = std::fs::create_dir_all(parent);
                }
            }
            Backend::Sqlite
        } else {
            Backend::Postgres
        };
        let options = AnyConnectOptions::from_str(&url)
            .map_err(|source| StoreError::Connect {
                url: redact(&url),
                source,
            })?
            // A statement over a second is worth knowing when tracing a slow cycle, not a warning
            // in every bench and every full scan of a large registry (the cycle's own timings
            // and metrics say when it is slow).
            .log_slow_statements(SLOW_STATEMENT_LEVEL, std::time::Duration::from_secs(1));
        let suspect = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let checks = suspect.clone();
        let pool = AnyPoolOptions::new()
            .max_connections(if backend == Backend::Sqlite { 4 } else { 8 })
            .after_release(move |conn, _| {
                let checks = checks.clone();
                Box::pin(async move {
                    let due = checks
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                        .is_ok();
                    if !due {
                        return Ok(true);
                    }
                    Ok(match sqlx::Connection::begin_with(&mut *conn, "BEGIN").await {
                        Ok(tx) => tx.rollback().await.is_ok(),
                        Err(_) => false,
                    })
                })
            })
            // A SQLite connection is a file handle that does not go stale; pinging it before
            // every use doubled the round trips of each query. A PostgreSQL server may drop a
            // connection (a restart, a proxy), so those are checked.
            .test_before_acquire(backend == Backend::Postgres)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        conn.execute("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=10000;")
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await
            .map_err(|source| StoreError::Connect {
                url: redact(&url),
                source,
            })?;
        migrations::migrator().run(&pool).await?;
        let store = Self {
            pool,
            backend,
            fence: None,
            tx_timeout_ms: DEFAULT_TX_TIMEOUT_MS,
            series: Default::default(),
            suspect,
        };
        if store.adopt_bucket_tables().await? {
            tracing::info!("telemetry buckets of an earlier version converted into batches");
        }
        Ok(store)
    }

    /// A handle on the same pool whose transactions are fenced by the leader's lease: refused
    /// until [`Store::set_fence`] gives it a token, and refused once the lease has moved on.
    pub fn fenced(&self) -> Self {
        Self {
            fence: Some(Arc::new(AtomicI64::new(lease::NOT_LEADING))),
            ..self.clone()
        }
    }

    /// Bounds this handle's fenced transactions on PostgreSQL by half the lease: idle in a
    /// transaction or in one statement longer than that, the server ends the transaction.
    pub fn with_lease_ttl(mut self, ttl: std::time::Duration) -> Self {
        let half = u64::try_from(ttl.as_millis() / 2).unwrap_or(u64::MAX);
        self.tx_timeout_ms = half.max(MIN_TX_TIMEOUT_MS);
        self
    }

    /// The token this handle's transactions must hold; [`lease::NOT_LEADING`] refuses them all.
    pub fn set_fence(&self, token: i64) {
        if let Some(f) = &self.fence {
            f.store(token, Ordering::SeqCst);
        }
    }

    /// The schema version of the database at `url` and the version this build migrates to,
    /// without changing anything (`mapek validate`); None: no schema yet (a new database).
    pub async fn schema_version(url: &str) -> Result<(Option<i64>, i64), StoreError> {
        DRIVERS.call_once(sqlx::any::install_default_drivers);
        let url = normalize_url(url).replace("mode=rwc", "mode=rw");
        let latest = migrations::migrator()
            .migrations
            .iter()
            .map(|m| m.version)
            .max()
            .unwrap_or(0);
        let mut conn =
            AnyConnection::connect(&url)
                .await
                .map_err(|source| StoreError::Connect {
                    url: redact(&url),
                    source,
                })?;
        let found = sqlx::query("SELECT MAX(version) FROM _sqlx_migrations")
            .fetch_optional(&mut conn)
            .await
            .ok()
            .flatten()
            .and_then(|r| sqlx::Row::try_get::<i64, _>(&r, 0).ok());
        let _ = conn.close().await;
        Ok((found, latest))
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Begins a transaction, fenced or not. On SQLite it takes the write lock when it begins
    /// (BEGIN IMMEDIATE), where the busy timeout waits for another writer. A deferred one that
    /// read first could not wait when it came to write: with another connection writing
    /// meanwhile (the intake, a transaction just dropped and still rolling back) SQLite
    /// refuses the upgrade at once with "database is locked".
    pub(crate) async fn begin_unfenced(
        &self,
    ) -> Result<sqlx::Transaction<'static, sqlx::Any>, StoreError> {
        Ok(match self.backend {
            Backend::Sqlite => match self.pool.begin_with("BEGIN IMMEDIATE").await {
                Ok(tx) => tx,
                Err(e) => {
                    suspect_connections(&self.suspect);
                    return Err(e.into());
                }
            },
            Backend::Postgres => self.pool.begin().await?,
        })
    }

    /// The pool itself, for tests and offline tools that inspect or corrupt a store on purpose.
    /// The loop never uses it (`tests/layers.rs` checks that nothing under `src/` outside the
    /// knowledge store does).
    #[doc(hidden)]
    pub fn raw_pool(&self) -> &AnyPool {
        &self.pool
    }

    /// A handle that runs reads (`SELECT`, `WITH`) on the pool and refuses anything else.
    pub fn reads(&self) -> Reads<'_> {
        Reads(&self.pool)
    }

    /// Begins a transaction; on a fenced handle, only while the lease's token is still ours
    /// (checked under a share lock that the next holder's acquisition must wait for). It is the
    /// only way to write.
    pub async fn begin(&self) -> Result<Tx, StoreError> {
        let mut tx = self.begin_unfenced().await?;
        let suspect = (self.backend == Backend::Sqlite).then(|| self.suspect.clone());
        let Some(fence) = &self.fence else {
            return Ok(Tx(tx, suspect));
        };
        let token = fence.load(Ordering::SeqCst);
        if token == lease::NOT_LEADING {
            return Err(StoreError::Fenced(
                "this replica does not hold the leader's lease".into(),
            ));
        }
        if self.backend == Backend::Postgres {
            // A paused holder must not keep the lease row locked for ever.
            let ms = self.tx_timeout_ms;
            for setting in ["idle_in_transaction_session_timeout", "statement_timeout"] {
                let bound = format!("SET LOCAL {setting} = {ms}");
                tx.execute(sqlx::AssertSqlSafe(bound)).await?;
            }
            let row = sqlx::query("SELECT token FROM lease WHERE name = $1 FOR SHARE")
                .bind(lease::LEADER)
                .fetch_optional(&mut *tx)
                .await?;
            let current: Option<i64> = row.map(|r| sqlx::Row::try_get(&r, 0)).transpose()?;
            if current != Some(token) {
                return Err(StoreError::Fenced(format!(
                    "the leader's lease moved on (token {}, ours {token})",
                    current
                        .map(|t| t.to_string())
                        .unwrap_or_else(|| "none".into())
                )));
            }
        }
        Ok(Tx(tx, suspect))
    }

    /// Checks that the store answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await?;
        conn.ping().await?;
        Ok(())
    }

    /// Whether the store takes a write: one row of `store_probe` written outside any fence. A
    /// SQLite file on a full disk or a read-only mount answers reads and refuses this.
    pub async fn probe_write(&self, now: i64) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO store_probe (id, at) VALUES (1, $1) \
             ON CONFLICT (id) DO UPDATE SET at = excluded.at",
        )
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

fn sqlite_path(url: &str) -> Option<std::path::PathBuf> {
    let rest = url.strip_prefix("sqlite://")?;
    let path = rest.split('?').next()?;
    Some(std::path::PathBuf::from(path))
}

/// Hides a password in a database URL before it is shown.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// A connection borrowed from a pool or a transaction.
pub type Conn = AnyConnection;

/// A transaction of the store, which only [`Store::begin`] makes: on a fenced handle, it exists
/// only while the leader's lease is this replica's, so a deposed leader cannot write.
#[derive(Debug)]
pub struct Tx(
    sqlx::Transaction<'static, sqlx::Any>,
    Option<Arc<std::sync::atomic::AtomicU32>>,
);

impl Tx {
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        let suspect = self.1;
        let done = self.0.commit().await;
        if let (Err(_), Some(s)) = (&done, suspect) {
            suspect_connections(&s);
        }
        done
    }
}

impl std::ops::Deref for Tx {
    type Target = AnyConnection;
    fn deref(&self) -> &AnyConnection {
        &self.0
    }
}

impl std::ops::DerefMut for Tx {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        &mut self.0
    }
}

/// Reads on the store's pool: a statement that is not a read is refused, not run.
#[derive(Debug, Clone, Copy)]
pub struct Reads<'a>(&'a AnyPool);

type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>;

/// Whether `sql` only reads (`SELECT` or `WITH`).
fn is_read(sql: &str) -> bool {
    let sql = sql.trim_start().to_ascii_uppercase();
    sql.starts_with("SELECT") || sql.starts_with("WITH")
}

fn refused() -> sqlx::Error {
    sqlx::Error::Protocol("only reads run outside a fenced transaction".into())
}

impl<'a> Reads<'a> {
    /// A read of a fixed text.
    pub fn query(self, sql: &'static str) -> ReadQuery<'a, 'static> {
        ReadQuery {
            pool: Some(self.0),
            q: is_read(sql).then(|| sqlx::query(sql)).ok_or_else(refused),
        }
    }

    /// A read of a text built at run time (its parts never come from outside).
    pub fn query_owned(self, sql: String) -> ReadQuery<'a, 'static> {
        let read = is_read(&sql);
        ReadQuery {
            pool: Some(self.0),
            q: read
                .then(|| sqlx::query(sqlx::AssertSqlSafe(sql)))
                .ok_or_else(refused),
        }
    }

    /// A connection of the pool for a run of reads.
    pub async fn acquire(self) -> Result<ReadConn, sqlx::Error> {
        Ok(ReadConn(self.0.acquire().await?))
    }
}

/// A read being built: its text checked, its parameters bound, then run on the pool (or, with
/// [`ReadQuery::on`], on a read connection).
pub struct ReadQuery<'p, 'q> {
    pool: Option<&'p AnyPool>,
    q: Result<AnyQuery<'q>, sqlx::Error>,
}

impl<'p, 'q> ReadQuery<'p, 'q> {
    pub fn bind<T>(self, value: T) -> Self
    where
        T: 'q + sqlx::Encode<'q, sqlx::Any> + sqlx::Type<sqlx::Any>,
    {
        Self {
            q: self.q.map(|q| q.bind(value)),
            ..self
        }
    }

    pub async fn fetch_all(self) -> Result<Vec<sqlx::any::AnyRow>, sqlx::Error> {
        let pool = self.pool.ok_or_else(refused)?;
        self.q?.fetch_all(pool).await
    }

    pub async fn fetch_optional(self) -> Result<Option<sqlx::any::AnyRow>, sqlx::Error> {
        let pool = self.pool.ok_or_else(refused)?;
        self.q?.fetch_optional(pool).await
    }

    pub async fn fetch_one(self) -> Result<sqlx::any::AnyRow, sqlx::Error> {
        let pool = self.pool.ok_or_else(refused)?;
        self.q?.fetch_one(pool).await
    }

    /// The query, checked, for a read connection.
    fn checked(self) -> Result<AnyQuery<'q>, sqlx::Error> {
        self.q
    }
}

/// A read to run on a connection ([`Fetch`]), its text checked.
pub fn read(sql: &'static str) -> ReadQuery<'static, 'static> {
    ReadQuery {
        pool: None,
        q: is_read(sql).then(|| sqlx::query(sql)).ok_or_else(refused),
    }
}

/// A read of a text built at run time (its parts never come from outside), for a [`Fetch`].
pub fn read_owned(sql: String) -> ReadQuery<'static, 'static> {
    let read = is_read(&sql);
    ReadQuery {
        pool: None,
        q: read
            .then(|| sqlx::query(sqlx::AssertSqlSafe(sql)))
            .ok_or_else(refused),
    }
}

/// What can run a read: a transaction's connection, or a connection that runs only reads.
pub trait Fetch: Send {
    fn fetch_rows<'q>(
        &mut self,
        q: ReadQuery<'_, 'q>,
    ) -> impl std::future::Future<Output = Result<Vec<sqlx::any::AnyRow>, sqlx::Error>> + Send;
    fn fetch_row<'q>(
        &mut self,
        q: ReadQuery<'_, 'q>,
    ) -> impl std::future::Future<Output = Result<sqlx::any::AnyRow, sqlx::Error>> + Send;
    fn fetch_maybe<'q>(
        &mut self,
        q: ReadQuery<'_, 'q>,
    ) -> impl std::future::Future<Output = Result<Option<sqlx::any::AnyRow>, sqlx::Error>> + Send;
}

impl Fetch for AnyConnection {
    async fn fetch_rows<'q>(
        &mut self,
        q: ReadQuery<'_, 'q>,
    ) -> Result<Vec<sqlx::any::AnyRow>, sqlx::Error> {
        q.checked()?.fetch_all(self).await
    }
    async fn fetch_row<'q>(
        &mut self,
        q: ReadQuery<'_, 'q>,
    ) -> Result<sqlx::any::AnyRow, sqlx::Error> {
        q.checked()?.fetch_one(self).await
    }
    async fn fetch_maybe<'q>(
        &mut self,
        q: ReadQuery<'_, 'q>,
    ) -> Result<Option<sqlx::any::AnyRow>, sqlx::Error> {
        q.checked()?.fetch_optional(self).await
    }
}

impl Fetch for ReadConn {
    async fn fetch_rows<'q>(
        &mut self,
        q: ReadQuery<'_, 'q>,
    ) -> Result<Vec<sqlx::any::AnyRow>, sqlx::Error> {
        q.checked()?.fetch_all(&mut *self.0).await
    }
    async fn fetch_row<'q>(
        &mut self,
        q: ReadQuery<'_, 'q>,
    ) -> Result<sqlx::any::AnyRow, sqlx::Error> {
        q.checked()?.fetch_one(&mut *self.0).await
    }
    async fn fetch_maybe<'q>(
        &mut self,
        q: ReadQuery<'_, 'q>,
    ) -> Result<Option<sqlx::any::AnyRow>, sqlx::Error> {
        q.checked()?.fetch_optional(&mut *self.0).await
    }
}

/// A pooled connection that runs only reads ([`Fetch`]).
pub struct ReadConn(sqlx::pool::PoolConnection<sqlx::Any>);
