//! The knowledge store: one sqlx pool (SQLite or PostgreSQL) holding the registry and everything the loop knows.

pub mod approvals;
pub mod audit;
mod batch;
pub mod findings;
pub mod learned;
mod migrations;
pub mod outbox;
pub mod remediations;
pub mod retention;
pub mod standing;
pub mod state;
pub mod telemetry;

pub use batch::{insert_rows, Param};

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyConnection, AnyPool, Connection, Executor};
use std::str::FromStr;
use std::sync::Once;

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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The shared pool and which backend it talks to.
#[derive(Debug, Clone)]
pub struct Store {
    pub pool: AnyPool,
    pub backend: Backend,
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
        let options = AnyConnectOptions::from_str(&url).map_err(|source| StoreError::Connect {
            url: redact(&url),
            source,
        })?;
        let pool = AnyPoolOptions::new()
            .max_connections(if backend == Backend::Sqlite { 4 } else { 8 })
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
        Ok(Self { pool, backend })
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    pub async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, StoreError> {
        Ok(self.pool.begin().await?)
    }

    /// Checks that the store answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await?;
        conn.ping().await?;
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
