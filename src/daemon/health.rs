//! What the daemon last knew of its knowledge store: `/readyz` answers from it within a
//! second, and calls that need the store are refused at once (503) while it is unreachable,
//! instead of waiting for the pool's acquire timeout.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::knowledge::Store;

/// How long a known state is taken as current.
const FRESH: Duration = Duration::from_millis(1_000);
/// The longest a probe of the store may take before the store counts as unreachable.
const PROBE: Duration = Duration::from_millis(800);
/// How often the daemon's listener refreshes the state in the background.
pub const REFRESH: Duration = Duration::from_millis(500);

/// The store's last known state: when it was probed and what was found.
#[derive(Debug, Default)]
pub struct StoreHealth {
    last: Mutex<Option<(Instant, Result<(), String>)>>,
}

impl StoreHealth {
    /// The state, probed again when it is older than a second; answers within a second.
    pub async fn check(&self, store: &Store) -> Result<(), String> {
        if let Some(known) = self.known() {
            return known;
        }
        self.refresh(store).await
    }

    /// Probes the store now (at most 800 ms) and keeps what it found.
    pub async fn refresh(&self, store: &Store) -> Result<(), String> {
        self.refresh_with(store, None).await
    }

    /// As [`Self::refresh`], and with `write_at` also writes the probe row: a store that answers
    /// reads but refuses writes (a full disk, a read-only file) is not ready either. The
    /// listener asks for it on SQLite while the loop's last cycle failed, so a healthy store
    /// is never made to wait for the probe's write beside the loop's.
    pub async fn refresh_with(&self, store: &Store, write_at: Option<i64>) -> Result<(), String> {
        let probe = async {
            store.ping().await?;
            if let Some(now) = write_at {
                store.probe_write(now).await?;
            }
            Ok::<(), crate::knowledge::StoreError>(())
        };
        let found = match tokio::time::timeout(PROBE, probe).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("it did not answer within {} ms", PROBE.as_millis())),
        };
        if let Ok(mut last) = self.last.lock() {
            *last = Some((Instant::now(), found.clone()));
        }
        found
    }

    /// The last state while it is fresh.
    fn known(&self) -> Option<Result<(), String>> {
        let last = self.last.lock().ok()?;
        let (at, found) = last.as_ref()?;
        (at.elapsed() < FRESH).then(|| found.clone())
    }

    /// Whether the last probe found the store unreachable (fresh or not): calls that need
    /// the store are refused at once then, until a probe finds it again.
    pub fn down(&self) -> Option<String> {
        let last = self.last.lock().ok()?;
        match last.as_ref()? {
            (_, Err(why)) => Some(why.clone()),
            (_, Ok(())) => None,
        }
    }
}
