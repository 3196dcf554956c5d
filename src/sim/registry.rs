//! The simulated registry: the real SQL registry behind the same `Registry` trait, which an outage event can make unreachable.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

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
}

impl SimRegistry {
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

    async fn package(&self, name: &str) -> Result<Option<PackageRecord>, RegistryError> {
        self.check()?;
        self.inner.package(name).await
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
        self.inner.change_seq().await
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
        self.inner.apply(conn, change, now).await
    }
}
