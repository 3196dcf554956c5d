//! The simulated registry: the real SQL registry behind the same `Registry` trait, which an outage event can make unreachable.

use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use crate::knowledge::Conn;
use crate::registry::{
    Applied, Change, PackageRecord, Registry, RegistryCounts, RegistryError, ReleaseRecord,
    SqlRegistry,
};

/// A registry the simulator can take down.
#[derive(Debug, Clone)]
pub struct SimRegistry {
    pub inner: SqlRegistry,
    pub down: Arc<AtomicBool>,
    /// An imported registry has no artifact bytes: each release hashes to its recorded
    /// checksum until a `tamper_artifact` event (listed here) changes that.
    pub virtual_artifacts: Option<Tampered>,
    /// The change sequence as last read (`UNKNOWN`: read it): nothing but this registry and the
    /// simulator's events write the store, so it holds until `apply` or [`SimRegistry::changed`].
    seq: Arc<AtomicI64>,
}

const UNKNOWN: i64 = i64::MIN;

/// The (package, version) of imported releases whose artifact a scenario tampered with.
pub type Tampered = Arc<Mutex<BTreeSet<(String, String)>>>;

impl SimRegistry {
    pub fn new(
        inner: SqlRegistry,
        down: Arc<AtomicBool>,
        virtual_artifacts: Option<Tampered>,
    ) -> Self {
        Self {
            inner,
            down,
            virtual_artifacts,
            seq: Arc::new(AtomicI64::new(UNKNOWN)),
        }
    }

    /// Something wrote to `inner` directly (a scenario's event): the change sequence is read
    /// again.
    pub fn changed(&self) {
        self.seq.store(UNKNOWN, Ordering::SeqCst);
    }

    /// The change sequence, read only when something wrote since it was last read; outages
    /// aside (the simulator looking at its own world, not the daemon at the registry).
    pub async fn current_seq(&self) -> Result<i64, RegistryError> {
        let known = self.seq.load(Ordering::SeqCst);
        if known != UNKNOWN {
            return Ok(known);
        }
        let seq = self.inner.change_seq().await?;
        self.seq.store(seq, Ordering::SeqCst);
        Ok(seq)
    }

    fn check(&self) -> Result<(), RegistryError> {
        if self.down.load(Ordering::SeqCst) {
            Err(RegistryError::Unavailable(
                "simulated registry outage".into(),
            ))
        } else {
            Ok(())
        }
    }
}

impl Registry for SimRegistry {
    async fn releases_since(
        &self,
        cursor: i64,
    ) -> Result<(Vec<ReleaseRecord>, i64), RegistryError> {
        self.check()?;
        self.inner.releases_since(cursor).await
    }

    fn read_artifact(&self, location: &str) -> Result<Vec<u8>, RegistryError> {
        self.check()?;
        self.inner.read_artifact(location)
    }

    /// The artifacts written since the last pass (a `tamper_artifact` event), judged in the
    /// tick they were written in.
    async fn refresh(
        &self,
        full: bool,
        now: i64,
    ) -> Result<crate::registry::Refreshed, RegistryError> {
        self.check()?;
        self.inner.refresh(full, now).await
    }

    fn vouched_digest(&self, release: &ReleaseRecord) -> Option<String> {
        let tampered = self.virtual_artifacts.as_ref()?;
        let recorded = release.checksum.clone().unwrap_or_default();
        let key = (release.package.clone(), release.version.clone());
        let changed = tampered.lock().map(|t| t.contains(&key)).unwrap_or(false);
        Some(if changed {
            hex::encode(Sha256::digest(format!("tampered:{recorded}").as_bytes()))
        } else {
            recorded
        })
    }

    fn artifact_digest(&self, location: &str) -> Option<[u8; 32]> {
        // A registry that is down vouches for nothing: the scan reads, and fails, as it would.
        self.check().ok()?;
        self.inner.artifact_digest(location)
    }

    fn artifacts_generation(&self) -> Option<u64> {
        self.check().ok()?;
        self.inner.artifacts_generation()
    }

    /// The simulation's store is its own: every change to a record goes through the registry
    /// and moves its change sequence.
    fn records_follow_sequence(&self) -> bool {
        true
    }

    async fn package(&self, name: &str) -> Result<Option<PackageRecord>, RegistryError> {
        self.check()?;
        self.inner.package(name).await
    }

    async fn packages_since(
        &self,
        cursor: i64,
    ) -> Result<Option<Vec<PackageRecord>>, RegistryError> {
        self.check()?;
        self.inner.packages_since(cursor).await
    }

    async fn packages(&self) -> Result<Vec<PackageRecord>, RegistryError> {
        self.check()?;
        self.inner.packages().await
    }

    async fn release(
        &self,
        package: &str,
        version: &str,
    ) -> Result<Option<ReleaseRecord>, RegistryError> {
        self.check()?;
        self.inner.release(package, version).await
    }

    async fn counts(&self) -> Result<RegistryCounts, RegistryError> {
        self.check()?;
        self.inner.counts().await
    }

    async fn change_seq(&self) -> Result<i64, RegistryError> {
        self.check()?;
        self.current_seq().await
    }

    async fn release_dependencies(
        &self,
    ) -> Result<Vec<(String, String, crate::registry::Dependency)>, RegistryError> {
        self.check()?;
        self.inner.release_dependencies().await
    }

    async fn dependency_edges(&self) -> Result<Vec<(String, String)>, RegistryError> {
        self.check()?;
        self.inner.dependency_edges().await
    }

    async fn apply(
        &self,
        conn: &mut Conn,
        change: &Change,
        now: i64,
    ) -> Result<Applied, RegistryError> {
        self.check()?;
        // Forgotten before and after: the change commits with the caller's transaction.
        self.changed();
        let applied = self.inner.apply(conn, change, now).await;
        self.changed();
        applied
    }
}
