//! Operator controls kept in the store, so they hold across restarts and failovers: whether execution is paused, by whom, since when.

use serde::{Deserialize, Serialize};

use super::state::set_cursor;
use super::{Store, StoreError};

const PAUSED: &str = "execution.paused";

/// Execution is paused: plans are still made and recorded, nothing is applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Paused {
    pub by: String,
    pub at: i64,
}

impl Store {
    /// Whether execution is paused (an unreadable value counts as paused: the safe side).
    pub async fn paused(&self) -> Result<Option<Paused>, StoreError> {
        Ok(match self.cursor(PAUSED).await?.as_deref() {
            None | Some("") => None,
            Some(v) => Some(serde_json::from_str(v).unwrap_or(Paused {
                by: format!("unreadable pause record `{v}`"),
                at: 0,
            })),
        })
    }
}

/// Pauses (`Some`) or resumes (`None`) execution inside the caller's transaction.
pub async fn set_paused(
    conn: &mut sqlx::AnyConnection,
    paused: Option<&Paused>,
) -> Result<(), StoreError> {
    let value = match paused {
        Some(p) => serde_json::to_string(p).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        None => String::new(),
    };
    set_cursor(conn, PAUSED, &value).await?;
    super::announce(conn).await?;
    Ok(())
}

impl Store {
    /// What another process may have changed that the loop should look at now: the registry's
    /// change sequence, the maintainers' decisions, the pause. Equal marks: nothing of that moved.
    pub async fn wake_marks(&self) -> Result<(i64, i64, String), StoreError> {
        use sqlx::Row as _;
        let row = self
            .reads()
            .query(
                "SELECT (SELECT value FROM registry_seq WHERE id = 1), \
                 (SELECT COUNT(*) FROM approvals), \
                 (SELECT COALESCE(MAX(value), '') FROM cursors WHERE name = $1)",
            )
            .bind(PAUSED)
            .fetch_one()
            .await?;
        Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?))
    }
}
