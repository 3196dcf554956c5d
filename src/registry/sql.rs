//! The registry in SQL (the same sqlx store as the knowledge): scans by change sequence, effectors, upserts.

use sqlx::any::AnyRow;
use sqlx::{Executor, Row};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::artifacts::MemoryArtifacts;
use super::fetch::{self, is_url, FetchLimits, Fetcher};
use super::{
    Applied, Change, Dependency, PackageRecord, Refreshed, Registry, RegistryCounts, RegistryError,
    ReleaseRecord,
};
use crate::knowledge::{Conn, Fetch, Store};

mod writes;

/// Releases are read this many at a time.
const RELEASE_PAGE: i64 = 20_000;

/// The registry held in the store's `packages`, `releases` and `dependencies` tables. Artifacts
/// are `file://` URLs or paths; relative paths resolve against `artifact_root`; or, for a
/// registry that lives only in the process, they are kept in memory.
#[derive(Debug, Clone)]
pub struct SqlRegistry {
    pub store: Store,
    pub artifact_root: PathBuf,
    pub memory: Option<Arc<MemoryArtifacts>>,
    /// Fetches `http(s)://` artifacts; None: they cannot be read.
    pub fetcher: Option<Fetcher>,
    /// Artifacts written since the last refresh (by this registry, or seen by its watcher).
    pub artifact_changes: Arc<super::artifact_watch::ArtifactChanges>,
}

const RELEASE_COLUMNS: &str =
    "package, version, published_at, checksum, artifact, signature, signer, yanked, quarantined";

pub(super) const PACKAGE_COLUMNS: &str =
    "name, description, category, author, license, repository, tags, \
    keywords, downloads, stars, status, latest, quality, quality_detail, production_ready, \
    created_at, updated_at";

/// Decodes a row selected with [`RELEASE_COLUMNS`], by position (in that order).
fn decode_release(row: &AnyRow) -> Result<ReleaseRecord, sqlx::Error> {
    Ok(ReleaseRecord {
        package: row.try_get(0)?,
        version: row.try_get(1)?,
        published_at: row.try_get(2)?,
        checksum: row.try_get(3)?,
        artifact: row.try_get(4)?,
        signature: row.try_get(5)?,
        signer: row.try_get(6)?,
        yanked: row.try_get::<i64, _>(7)? != 0,
        quarantined: row.try_get::<i64, _>(8)? != 0,
        dependencies: Vec::new(),
    })
}

pub(super) fn decode_package(row: &AnyRow) -> Result<PackageRecord, sqlx::Error> {
    let list = |s: String| serde_json::from_str::<Vec<String>>(&s).unwrap_or_default();
    Ok(PackageRecord {
        name: row.try_get("name")?,
        description: row.try_get("description")?,
        category: row.try_get("category")?,
        author: row.try_get("author")?,
        license: row.try_get("license")?,
        repository: row.try_get("repository")?,
        tags: list(row.try_get("tags")?),
        keywords: list(row.try_get("keywords")?),
        downloads: row.try_get("downloads")?,
        stars: row.try_get("stars")?,
        status: row.try_get("status")?,
        latest: row.try_get("latest")?,
        quality: row.try_get("quality")?,
        quality_detail: row.try_get("quality_detail")?,
        production_ready: row.try_get::<i64, _>("production_ready")? != 0,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

/// Takes the next registry change sequence number inside the caller's transaction.
pub(crate) async fn next_seq(conn: &mut Conn) -> Result<i64, sqlx::Error> {
    conn.execute(sqlx::query(
        "UPDATE registry_seq SET value = value + 1 WHERE id = 1",
    ))
    .await?;
    let row = conn
        .fetch_one(sqlx::query("SELECT value FROM registry_seq WHERE id = 1"))
        .await?;
    crate::knowledge::announce(conn).await?;
    row.try_get(0)
}

impl SqlRegistry {
    pub fn new(store: Store, artifact_root: impl Into<PathBuf>) -> Self {
        Self {
            store,
            artifact_root: artifact_root.into(),
            memory: None,
            fetcher: None,
            artifact_changes: Arc::default(),
        }
    }

    /// Reads `http(s)://` artifacts with these limits (made inside the runtime it fetches on).
    pub fn with_fetcher(mut self, limits: FetchLimits) -> Result<Self, String> {
        self.fetcher = Some(Fetcher::new(limits)?);
        Ok(self)
    }

    /// A registry whose artifacts are kept in `memory` rather than in files.
    pub fn in_memory(store: Store, memory: Arc<MemoryArtifacts>) -> Self {
        Self {
            store,
            artifact_root: PathBuf::new(),
            memory: Some(memory),
            fetcher: None,
            artifact_changes: Arc::default(),
        }
    }

    /// Stores an artifact's bytes at `location` (a file under `artifact_root`, or in memory).
    pub fn write_artifact(&self, location: &str, bytes: Vec<u8>) -> Result<(), RegistryError> {
        if let Some(m) = &self.memory {
            m.write(location, bytes);
            self.artifact_changes.note(location);
            return Ok(());
        }
        let path = self.artifact_path(location)?;
        let failed = |e: std::io::Error| RegistryError::Artifact {
            location: location.into(),
            reason: e.to_string(),
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(failed)?;
        }
        std::fs::write(&path, bytes).map_err(failed)?;
        self.artifact_changes.note(location);
        Ok(())
    }

    /// Watches `artifact_root` for writes, so that a changed file is hashed in the cycle its
    /// write wakes rather than at the next full scan.
    pub fn watch_artifacts(&self) -> notify::Result<()> {
        self.artifact_changes.watch(self.artifact_root.clone())
    }

    /// The releases whose artifact was written since the last refresh (none at a full scan,
    /// which looks at every release anyway).
    async fn written_releases(&self, full: bool) -> Result<Vec<(String, String)>, RegistryError> {
        let written = self.artifact_changes.take();
        if full || written.all || written.locations.is_empty() {
            return Ok(Vec::new());
        }
        let mut found = Vec::new();
        let locations: Vec<String> = written.locations.into_iter().collect();
        for part in locations.chunks(500) {
            let marks = (1..=part.len())
                .map(|i| format!("${i}"))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!("SELECT package, version FROM releases WHERE artifact IN ({marks})");
            let mut q = self.store.reads().query_owned(sql);
            for l in part {
                q = q.bind(l.clone());
            }
            for row in q.fetch_all().await? {
                found.push((row.try_get(0)?, row.try_get(1)?));
            }
        }
        Ok(found)
    }

    /// Changes an artifact's bytes behind the registry's back, as an attacker would: the
    /// recorded checksum no longer matches (a scenario's `tamper_artifact`, the demo, tests).
    pub fn tamper_artifact(&self, location: &str) -> Result<(), RegistryError> {
        let mut bytes = self.read_artifact(location)?;
        bytes.extend_from_slice(b"\n# injected by an attacker\n");
        self.write_artifact(location, bytes)
    }

    fn artifact_path(&self, location: &str) -> Result<PathBuf, RegistryError> {
        if is_url(location) {
            return Err(RegistryError::Artifact {
                location: location.into(),
                reason: "an http(s) artifact is fetched, not written".into(),
            });
        }
        let path = Path::new(location.strip_prefix("file://").unwrap_or(location));
        Ok(if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.artifact_root.join(path)
        })
    }

    /// Each package whose record changed after sequence `seq`, with its `latest`.
    pub async fn latest_since(
        &self,
        seq: i64,
    ) -> Result<Vec<(String, Option<String>)>, RegistryError> {
        let rows = self
            .store
            .reads()
            .query("SELECT name, latest FROM packages WHERE change_seq > $1")
            .bind(seq)
            .fetch_all()
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    pub async fn package_names(&self) -> Result<Vec<String>, RegistryError> {
        let rows = self
            .store
            .reads()
            .query("SELECT name FROM packages ORDER BY name")
            .fetch_all()
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }
}

async fn load_dependencies(
    conn: &mut impl Fetch,
    package: &str,
    version: &str,
) -> Result<Vec<Dependency>, sqlx::Error> {
    let rows = conn
        .fetch_rows(
            crate::knowledge::read(
                "SELECT dependency, requirement FROM dependencies \
                 WHERE package = $1 AND version = $2 ORDER BY dependency",
            )
            .bind(package.to_string())
            .bind(version.to_string()),
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(Dependency {
                name: r.try_get(0)?,
                requirement: r.try_get(1)?,
            })
        })
        .collect()
}

impl Registry for SqlRegistry {
    async fn releases_since(
        &self,
        cursor: i64,
    ) -> Result<(Vec<ReleaseRecord>, i64), RegistryError> {
        let mut conn = self.store.reads().acquire().await?;
        let head: i64 = conn
            .fetch_row(crate::knowledge::read(
                "SELECT value FROM registry_seq WHERE id = 1",
            ))
            .await?
            .try_get(0)?;
        if head <= cursor {
            return Ok((Vec::new(), head));
        }
        let releases = self
            .releases_between(&mut conn, cursor, head, RELEASE_PAGE)
            .await?;
        Ok((releases, head))
    }

    fn read_artifact(&self, location: &str) -> Result<Vec<u8>, RegistryError> {
        if let Some(m) = &self.memory {
            return m
                .read(location)
                .map(|b| b.to_vec())
                .ok_or_else(|| RegistryError::Artifact {
                    location: location.into(),
                    reason: "no such artifact".into(),
                });
        }
        if is_url(location) {
            return fetch::read_artifact(self.fetcher.as_ref(), location, Path::new(location));
        }
        let path = self.artifact_path(location)?;
        fetch::read_artifact(None, location, &path)
    }

    fn artifact_digest(&self, location: &str) -> Option<[u8; 32]> {
        self.memory.as_ref()?.digest(location)
    }

    fn artifacts_generation(&self) -> Option<u64> {
        Some(self.memory.as_ref()?.generation())
    }

    async fn refresh(&self, full: bool, _now: i64) -> Result<Refreshed, RegistryError> {
        Ok(Refreshed {
            changed: self.written_releases(full).await?,
            ..Default::default()
        })
    }

    async fn package(&self, name: &str) -> Result<Option<PackageRecord>, RegistryError> {
        let sql = format!("SELECT {PACKAGE_COLUMNS} FROM packages WHERE name = $1");
        let row = self
            .store
            .reads()
            .query_owned(sql)
            .bind(name.to_string())
            .fetch_optional()
            .await?;
        Ok(row.as_ref().map(decode_package).transpose()?)
    }

    async fn release(
        &self,
        package: &str,
        version: &str,
    ) -> Result<Option<ReleaseRecord>, RegistryError> {
        let mut conn = self.store.reads().acquire().await?;
        let sql =
            format!("SELECT {RELEASE_COLUMNS} FROM releases WHERE package = $1 AND version = $2");
        let row = conn
            .fetch_maybe(
                crate::knowledge::read_owned(sql)
                    .bind(package.to_string())
                    .bind(version.to_string()),
            )
            .await?;
        let Some(row) = row else { return Ok(None) };
        let mut release = decode_release(&row)?;
        release.dependencies = load_dependencies(&mut conn, package, version).await?;
        Ok(Some(release))
    }

    async fn change_seq(&self) -> Result<i64, RegistryError> {
        let row = self
            .store
            .reads()
            .query("SELECT value FROM registry_seq WHERE id = 1")
            .fetch_one()
            .await?;
        Ok(row.try_get(0)?)
    }

    async fn counts(&self) -> Result<RegistryCounts, RegistryError> {
        let row = self
            .store
            .reads()
            .query(
                "SELECT (SELECT COUNT(*) FROM packages), \
             (SELECT COUNT(*) FROM packages WHERE status = 'quarantined') + \
             (SELECT COUNT(*) FROM releases WHERE quarantined = 1)",
            )
            .fetch_one()
            .await?;
        Ok(RegistryCounts {
            packages: row.try_get(0)?,
            quarantined: row.try_get(1)?,
        })
    }

    async fn packages(&self) -> Result<Vec<PackageRecord>, RegistryError> {
        self.all_packages().await
    }

    async fn packages_since(
        &self,
        cursor: i64,
    ) -> Result<Option<Vec<PackageRecord>>, RegistryError> {
        Ok(Some(self.packages_changed_since(cursor).await?))
    }

    async fn release_dependencies(
        &self,
    ) -> Result<Vec<(String, String, Dependency)>, RegistryError> {
        let rows = self
            .store
            .reads()
            .query("SELECT package, version, dependency, requirement FROM dependencies")
            .fetch_all()
            .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get(0)?,
                    r.try_get(1)?,
                    Dependency {
                        name: r.try_get(2)?,
                        requirement: r.try_get(3)?,
                    },
                ))
            })
            .collect()
    }

    async fn dependency_edges(&self) -> Result<Vec<(String, String)>, RegistryError> {
        let rows = self
            .store
            .reads()
            .query("SELECT DISTINCT package, dependency FROM dependencies")
            .fetch_all()
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    async fn apply(
        &self,
        conn: &mut Conn,
        change: &Change,
        _now: i64,
    ) -> Result<Applied, RegistryError> {
        super::changes::apply(conn, change).await
    }
}
