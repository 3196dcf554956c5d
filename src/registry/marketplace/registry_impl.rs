//! The marketplace as a `Registry`: records from the store it keeps, artifacts from the archives, refresh and publication from the checkout.

use super::{Marketplace, PublishReport};
use crate::knowledge::Conn;
use crate::registry::fetch::read_artifact;
use crate::registry::{
    Applied, Change, Dependency, PackageRecord, Refreshed, Registry, RegistryCounts, RegistryError,
    ReleaseRecord,
};
use std::path::Path;

impl Registry for Marketplace {
    async fn releases_since(
        &self,
        cursor: i64,
    ) -> Result<(Vec<ReleaseRecord>, i64), RegistryError> {
        self.sql.releases_since(cursor).await
    }

    fn read_artifact(&self, location: &str) -> Result<Vec<u8>, RegistryError> {
        read_artifact(self.fetcher.as_ref(), location, Path::new(location))
    }

    fn artifact_digest(&self, location: &str) -> Option<[u8; 32]> {
        self.digests.read().ok()?.get(location).copied()
    }

    fn records_follow_sequence(&self) -> bool {
        true
    }

    fn signatures_required(&self) -> bool {
        self.config.require_signatures
    }

    async fn package(&self, name: &str) -> Result<Option<PackageRecord>, RegistryError> {
        self.sql.package(name).await
    }

    async fn packages(&self) -> Result<Vec<PackageRecord>, RegistryError> {
        self.sql.packages().await
    }

    async fn packages_since(
        &self,
        cursor: i64,
    ) -> Result<Option<Vec<PackageRecord>>, RegistryError> {
        self.sql.packages_since(cursor).await
    }

    async fn release(
        &self,
        package: &str,
        version: &str,
    ) -> Result<Option<ReleaseRecord>, RegistryError> {
        self.sql.release(package, version).await
    }

    async fn counts(&self) -> Result<RegistryCounts, RegistryError> {
        self.sql.counts().await
    }

    async fn change_seq(&self) -> Result<i64, RegistryError> {
        self.sql.change_seq().await
    }

    async fn dependency_edges(&self) -> Result<Vec<(String, String)>, RegistryError> {
        self.sql.dependency_edges().await
    }

    async fn release_dependencies(
        &self,
    ) -> Result<Vec<(String, String, Dependency)>, RegistryError> {
        self.sql.release_dependencies().await
    }

    async fn apply(
        &self,
        conn: &mut Conn,
        change: &Change,
        now: i64,
    ) -> Result<Applied, RegistryError> {
        self.sql.apply(conn, change, now).await
    }

    async fn refresh(&self, full: bool, now: i64) -> Result<Refreshed, RegistryError> {
        self.refresh_now(full, now).await
    }

    async fn publish(&self) -> Result<Option<PublishReport>, RegistryError> {
        let mut st = self.state.lock().await;
        if st.catalog.is_none() {
            // A process that never refreshed (`mapek rollback`): the input catalog is all it needs.
            self.read_catalog(&mut st)?;
        }
        self.publish_now(&mut st).await
    }
}
