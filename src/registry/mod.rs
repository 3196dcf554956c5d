//! The managed registry: the one narrow interface through which sensors read it and effectors change it.

pub mod artifact_watch;
pub mod artifacts;
pub mod changes;
pub mod fetch;
pub mod generate;
pub mod import;
mod managed;
pub mod marketplace;
mod release_pages;
mod since;
mod sql;

pub use managed::Managed;
pub use marketplace::PublishReport;
pub use release_pages::release_page_sql;
pub use since::PACKAGES_SINCE;
#[cfg(test)]
pub(crate) use sql::next_seq;
pub use sql::SqlRegistry;

use serde::{Deserialize, Serialize};
use std::future::Future;

use crate::knowledge::{Conn, StoreError};
use crate::model::{FindingKind, Severity, Subject};

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("registry store: {0}")]
    Store(#[from] StoreError),
    #[error("artifact `{location}`: {reason}")]
    Artifact { location: String, reason: String },
    #[error("no such {what} `{name}` in the registry")]
    NotFound { what: &'static str, name: String },
    #[error("registry unavailable: {0}")]
    Unavailable(String),
}

impl From<sqlx::Error> for RegistryError {
    fn from(e: sqlx::Error) -> Self {
        Self::Store(StoreError::Sql(e))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PackageRecord {
    pub name: String,
    pub description: String,
    pub category: Option<String>,
    pub author: Option<String>,
    pub license: Option<String>,
    pub repository: Option<String>,
    pub tags: Vec<String>,
    pub keywords: Vec<String>,
    pub downloads: i64,
    pub stars: i64,
    pub status: String,
    pub latest: Option<String>,
    pub quality: Option<f64>,
    pub quality_detail: Option<String>,
    pub production_ready: bool,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dependency {
    pub name: String,
    pub requirement: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReleaseRecord {
    pub package: String,
    pub version: String,
    pub published_at: i64,
    pub checksum: Option<String>,
    pub artifact: Option<String>,
    pub signature: Option<String>,
    pub signer: Option<String>,
    pub yanked: bool,
    pub quarantined: bool,
    pub dependencies: Vec<Dependency>,
}

/// Registry-wide figures for policy conditions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RegistryCounts {
    pub packages: i64,
    pub quarantined: i64,
}

/// A change an effector makes. Each has an inverse, recorded when it is applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum Change {
    QuarantineRelease {
        package: String,
        version: String,
    },
    UnquarantineRelease {
        package: String,
        version: String,
    },
    QuarantinePackage {
        package: String,
    },
    UnquarantinePackage {
        package: String,
    },
    YankRelease {
        package: String,
        version: String,
    },
    UnyankRelease {
        package: String,
        version: String,
    },
    /// `latest` back to the newest release that is neither yanked nor quarantined.
    RestoreLatest {
        package: String,
    },
    /// `latest` set to exactly this (the inverse of a restore).
    SetLatest {
        package: String,
        latest: Option<String>,
    },
    Deprecate {
        package: String,
        reason: String,
        successor: Option<String>,
    },
    Undeprecate {
        package: String,
    },
    SetQuality {
        package: String,
        score: Option<f64>,
    },
    AdjustQuality {
        package: String,
        delta: f64,
    },
    /// Rebuild the search index from the packages as they are (quarantined ones left out).
    Reindex,
}

impl Change {
    /// Whether undoing it means anything (a rebuilt search index has nothing to undo).
    pub fn reversible(&self) -> bool {
        !matches!(self, Change::Reindex)
    }
}

/// The outcome of applying a change: whether anything moved, and the change that undoes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Applied {
    pub changed: bool,
    pub inverse: Change,
}

/// Something a backend judges by its own format's rules (a marketplace pack its admission rules
/// refuse), handed to analysis as a finding's condition.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub kind: FindingKind,
    pub severity: Severity,
    pub subject: Subject,
    pub value: f64,
    pub message: String,
    pub labels: serde_json::Map<String, serde_json::Value>,
}

/// What a backend's refresh found.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Refreshed {
    /// The kinds the backend judges: `problems` is everything that holds of them now, and an
    /// open finding of one of them that is not there has cleared.
    pub judged: Vec<FindingKind>,
    pub problems: Vec<Problem>,
    /// Releases that left the registry since the last refresh (package, version).
    pub removed: Vec<(String, String)>,
    /// Releases whose artifact's bytes changed though their record did not: the monitor looks
    /// at them again in this pass (package, version).
    pub changed: Vec<(String, String)>,
    /// Packs (or packages) read again from the source of record in this refresh.
    pub read: usize,
    /// What users read was published again (the projection moved), or why it could not be;
    /// None: nothing to publish.
    pub published: Option<Result<PublishReport, String>>,
}

pub use crate::knowledge::NOTIFY_CHANNEL;

/// What the loop needs of a registry. A second backend implements this and nothing else changes.
pub trait Registry: Send + Sync + 'static {
    /// Releases changed after `cursor` (0: all of them), with their dependencies, and the cursor
    /// to pass next time.
    fn releases_since(
        &self,
        cursor: i64,
    ) -> impl Future<Output = Result<(Vec<ReleaseRecord>, i64), RegistryError>> + Send;

    /// The artifact's bytes. Blocking: called from worker threads.
    fn read_artifact(&self, location: &str) -> Result<Vec<u8>, RegistryError>;

    /// What the release's artifact hashes to, when the registry can vouch for it without its
    /// bytes (a simulated registry's imported releases, which have none); None: read and hash.
    fn vouched_digest(&self, _release: &ReleaseRecord) -> Option<String> {
        None
    }

    /// The SHA-256 of the artifact's current bytes when the registry took it as they were
    /// written (artifacts kept in memory), so that a scan need not read them to know they are
    /// unchanged; None: read and hash. The bytes are still read to verify a signature.
    fn artifact_digest(&self, _location: &str) -> Option<[u8; 32]> {
        None
    }

    /// A number that moves whenever the bytes of any artifact change, for a registry that sees
    /// every write to them (artifacts in memory); None: it cannot tell, and a full scan reads
    /// every artifact.
    fn artifacts_generation(&self) -> Option<u64> {
        None
    }

    /// True when nothing can change a release record without moving the change sequence (the
    /// registry's store is private to the process): the monitor then never needs to read every
    /// record again to catch a change made by hand.
    fn records_follow_sequence(&self) -> bool {
        false
    }

    /// Whether a release without a signature is judged `signature_missing` (a registry whose
    /// publishers do not all sign says no, and only the signatures there are are checked).
    fn signatures_required(&self) -> bool {
        true
    }

    /// Brings the registry's records up to date with its source of record, if it has one other
    /// than the store (a marketplace checkout): everything when `full`, otherwise what changed.
    fn refresh(
        &self,
        _full: bool,
        _now: i64,
    ) -> impl Future<Output = Result<Refreshed, RegistryError>> + Send {
        async { Ok(Refreshed::default()) }
    }

    /// Brings what users read (a published catalog) in line with the registry's state, after
    /// remediations or rollbacks changed it; None when there is nothing to publish.
    fn publish(&self) -> impl Future<Output = Result<Option<PublishReport>, RegistryError>> + Send {
        async { Ok(None) }
    }

    fn package(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<PackageRecord>, RegistryError>> + Send;

    /// Every package, for the registry facts of analysis (licence, authors, ages, receipts).
    fn packages(&self) -> impl Future<Output = Result<Vec<PackageRecord>, RegistryError>> + Send;

    fn release(
        &self,
        package: &str,
        version: &str,
    ) -> impl Future<Output = Result<Option<ReleaseRecord>, RegistryError>> + Send;

    fn counts(&self) -> impl Future<Output = Result<RegistryCounts, RegistryError>> + Send;

    /// The registry's change sequence: it moves whenever anything in the registry changes, so
    /// what is derived from the registry (the dependency graph) is rebuilt only when it does.
    fn change_seq(&self) -> impl Future<Output = Result<i64, RegistryError>> + Send;

    /// Every dependency edge (dependent package, dependency name), for the dependency graph.
    fn dependency_edges(
        &self,
    ) -> impl Future<Output = Result<Vec<(String, String)>, RegistryError>> + Send;

    /// Every release's dependencies: (package, version, dependency).
    fn release_dependencies(
        &self,
    ) -> impl Future<Output = Result<Vec<(String, String, Dependency)>, RegistryError>> + Send;

    /// The package records changed after change sequence `cursor`, for facts kept up to date
    /// instead of rebuilt; None: the registry cannot tell, and every package is read again.
    fn packages_since(
        &self,
        _cursor: i64,
    ) -> impl Future<Output = Result<Option<Vec<PackageRecord>>, RegistryError>> + Send {
        async { Ok(None) }
    }

    /// Applies a change inside the caller's transaction (which also holds its audit entry).
    fn apply(
        &self,
        conn: &mut Conn,
        change: &Change,
        now: i64,
    ) -> impl Future<Output = Result<Applied, RegistryError>> + Send;
}

/// ggen's package-name rule (spec/registry.md): lower case `[a-z0-9._-]`, 1 to 200 chars, no
/// leading or trailing `-` or `.`, no `..`; reverse-domain names (`io.ggen.nextjs.ontology-crud`)
/// are valid.
pub fn valid_package_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-' || b == b'.'
        })
        && !name.starts_with(['-', '.'])
        && !name.ends_with(['-', '.'])
        && !name.contains("..")
}

#[cfg(test)]
mod tests {
    use super::valid_package_name;

    #[test]
    fn package_names_follow_ggen_rules() {
        assert!(valid_package_name("rest-api-template"));
        assert!(valid_package_name("a_b-9"));
        assert!(!valid_package_name(""));
        assert!(!valid_package_name("-lead"));
        assert!(!valid_package_name("trail-"));
        assert!(!valid_package_name("Upper"));
        assert!(!valid_package_name("has space"));
        assert!(!valid_package_name(&"x".repeat(201)));
        assert!(valid_package_name("io.ggen.nextjs.ontology-crud"));
        assert!(!valid_package_name(".hidden"));
        assert!(!valid_package_name("trail."));
        assert!(!valid_package_name("a..b"));
        assert!(!valid_package_name("../etc"));
    }
}
