//! The registry a daemon manages: one of the backends, chosen by the configuration.

use super::marketplace::Marketplace;
use super::{
    Applied, Change, Dependency, PackageRecord, PublishReport, Refreshed, Registry, RegistryCounts,
    RegistryError, ReleaseRecord, SqlRegistry,
};
use crate::knowledge::{Conn, Store};

/// mapek's own SQL registry, or a ggen marketplace checkout mirrored in the store.
#[derive(Debug)]
pub enum Managed {
    Sql(SqlRegistry),
    Marketplace(Box<Marketplace>),
}

impl From<SqlRegistry> for Managed {
    fn from(r: SqlRegistry) -> Self {
        Self::Sql(r)
    }
}

impl From<Marketplace> for Managed {
    fn from(m: Marketplace) -> Self {
        Self::Marketplace(Box::new(m))
    }
}

impl Managed {
    /// The store the registry's records live in.
    pub fn store(&self) -> &Store {
        &self.sql().store
    }

    /// The SQL registry itself, or the marketplace's mirror.
    pub fn sql(&self) -> &SqlRegistry {
        match self {
            Self::Sql(r) => r,
            Self::Marketplace(m) => &m.sql,
        }
    }

    /// Waits for the backend to notice a change by itself (a watched artifact or checkout file).
    pub async fn changed(&self) {
        match self {
            Self::Sql(r) => r.artifact_changes.wake.notified().await,
            Self::Marketplace(m) => m.changes.wake.notified().await,
        }
    }

    pub fn marketplace(&self) -> Option<&Marketplace> {
        match self {
            Self::Marketplace(m) => Some(m),
            Self::Sql(_) => None,
        }
    }
}

/// Each call goes to the backend.
macro_rules! each {
    ($self:ident, $r:ident => $e:expr) => {
        match $self {
            Managed::Sql($r) => $e,
            Managed::Marketplace($r) => $e,
        }
    };
}

impl Registry for Managed {
    async fn releases_since(
        &self,
        cursor: i64,
    ) -> Result<(Vec<ReleaseRecord>, i64), RegistryError> {
        each!(self, r => r.releases_since(cursor).await)
    }
    fn read_artifact(&self, location: &str) -> Result<Vec<u8>, RegistryError> {
        each!(self, r => r.read_artifact(location))
    }
    fn vouched_digest(&self, release: &ReleaseRecord) -> Option<String> {
        each!(self, r => r.vouched_digest(release))
    }
    fn artifact_digest(&self, location: &str) -> Option<[u8; 32]> {
        each!(self, r => r.artifact_digest(location))
    }
    fn artifacts_generation(&self) -> Option<u64> {
        each!(self, r => r.artifacts_generation())
    }
    fn records_follow_sequence(&self) -> bool {
        each!(self, r => r.records_follow_sequence())
    }
    fn signatures_required(&self) -> bool {
        each!(self, r => r.signatures_required())
    }
    async fn refresh(&self, full: bool, now: i64) -> Result<Refreshed, RegistryError> {
        each!(self, r => r.refresh(full, now).await)
    }
    async fn publish(&self) -> Result<Option<PublishReport>, RegistryError> {
        each!(self, r => r.publish().await)
    }
    async fn package(&self, name: &str) -> Result<Option<PackageRecord>, RegistryError> {
        each!(self, r => r.package(name).await)
    }
    async fn packages(&self) -> Result<Vec<PackageRecord>, RegistryError> {
        each!(self, r => r.packages().await)
    }
    async fn release(
        &self,
        package: &str,
        version: &str,
    ) -> Result<Option<ReleaseRecord>, RegistryError> {
        each!(self, r => r.release(package, version).await)
    }
    async fn counts(&self) -> Result<RegistryCounts, RegistryError> {
        each!(self, r => r.counts().await)
    }
    async fn change_seq(&self) -> Result<i64, RegistryError> {
        each!(self, r => r.change_seq().await)
    }
    async fn dependency_edges(&self) -> Result<Vec<(String, String)>, RegistryError> {
        each!(self, r => r.dependency_edges().await)
    }
    async fn packages_since(
        &self,
        cursor: i64,
    ) -> Result<Option<Vec<PackageRecord>>, RegistryError> {
        each!(self, r => r.packages_since(cursor).await)
    }
    async fn release_dependencies(
        &self,
    ) -> Result<Vec<(String, String, Dependency)>, RegistryError> {
        each!(self, r => r.release_dependencies().await)
    }
    async fn apply(
        &self,
        conn: &mut Conn,
        change: &Change,
        now: i64,
    ) -> Result<Applied, RegistryError> {
        each!(self, r => r.apply(conn, change, now).await)
    }
}
