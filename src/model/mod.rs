//! The values that flow between stages: observations, findings, actions and their subjects.

pub mod telemetry;
pub mod vocabulary;

pub use vocabulary::{AdminCall, AuditKind, Gate, Mode, Verification};

use serde::{Deserialize, Serialize};
use std::fmt;

/// What the monitor saw of one release's artifact and signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseObservation {
    pub package: String,
    pub version: String,
    pub observed_at: i64,
    pub integrity: Integrity,
    pub signature: SignatureState,
    pub signer: Option<String>,
}

/// Whether the artifact's bytes still hash to the recorded checksum.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Integrity {
    Ok,
    Mismatch {
        recorded: String,
        computed: String,
    },
    /// No checksum was recorded for the release.
    NoChecksum,
    /// The artifact could not be read; no judgement is made on stale or missing bytes.
    Unreadable {
        reason: String,
    },
}

/// The outcome of checking a release's signature against the trust store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignatureState {
    Valid,
    Invalid,
    Missing,
    UnknownKey,
    RevokedKey,
    /// The artifact could not be read, so the signature could not be checked.
    Unverifiable,
    /// No signature, in a registry that does not require one (a ggen marketplace whose packs
    /// are not all signed): nothing to judge.
    Unsigned,
}

impl SignatureState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Valid => "valid",
            Self::Invalid => "invalid",
            Self::Missing => "missing",
            Self::UnknownKey => "unknown_key",
            Self::RevokedKey => "revoked_key",
            Self::Unverifiable => "unverifiable",
            Self::Unsigned => "unsigned",
        }
    }
}

/// Every finding kind of DESIGN.md; the foundation detects the integrity ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    ChecksumMismatch,
    SignatureInvalid,
    SignatureMissing,
    SignerUntrusted,
    InstallFailureBurn,
    LookupLatencyBurn,
    QualityRegression,
    Unmaintained,
    DependencyUnavailable,
    DependencyCycle,
    DownloadAnomaly,
    TyposquatSuspect,
    Reported,
    RegistryUnreachable,
    CircuitOpen,
    PolicyIneffective,
    /// A published release whose content no longer matches its source (a ggen marketplace
    /// archive that differs from the pack's files at the same version, or a catalog record whose
    /// manifest or ontology fingerprint the tree no longer gives).
    ContentMismatch,
    /// A pack the marketplace's admission rules refuse.
    PackRefused,
    /// A pack whose `superseded_by` names no pack.
    SuccessorMissing,
}

impl FindingKind {
    pub const ALL: [FindingKind; 19] = [
        Self::ChecksumMismatch,
        Self::SignatureInvalid,
        Self::SignatureMissing,
        Self::SignerUntrusted,
        Self::InstallFailureBurn,
        Self::LookupLatencyBurn,
        Self::QualityRegression,
        Self::Unmaintained,
        Self::DependencyUnavailable,
        Self::DependencyCycle,
        Self::DownloadAnomaly,
        Self::TyposquatSuspect,
        Self::Reported,
        Self::RegistryUnreachable,
        Self::CircuitOpen,
        Self::PolicyIneffective,
        Self::ContentMismatch,
        Self::PackRefused,
        Self::SuccessorMissing,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::ChecksumMismatch => "checksum_mismatch",
            Self::SignatureInvalid => "signature_invalid",
            Self::SignatureMissing => "signature_missing",
            Self::SignerUntrusted => "signer_untrusted",
            Self::InstallFailureBurn => "install_failure_burn",
            Self::LookupLatencyBurn => "lookup_latency_burn",
            Self::QualityRegression => "quality_regression",
            Self::Unmaintained => "unmaintained",
            Self::DependencyUnavailable => "dependency_unavailable",
            Self::DependencyCycle => "dependency_cycle",
            Self::DownloadAnomaly => "download_anomaly",
            Self::TyposquatSuspect => "typosquat_suspect",
            Self::Reported => "reported",
            Self::RegistryUnreachable => "registry_unreachable",
            Self::CircuitOpen => "circuit_open",
            Self::PolicyIneffective => "policy_ineffective",
            Self::ContentMismatch => "content_mismatch",
            Self::PackRefused => "pack_refused",
            Self::SuccessorMissing => "successor_missing",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for FindingKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Info => "info",
            Self::Warning => "warning",
            Self::Critical => "critical",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "info" => Some(Self::Info),
            "warning" => Some(Self::Warning),
            "critical" => Some(Self::Critical),
            _ => None,
        }
    }
}

/// What a remediation acts on: a release, a whole package, or the registry.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Subject {
    pub package: String,
    pub version: Option<String>,
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.version {
            Some(v) => write!(f, "{}@{}", self.package, v),
            None => f.write_str(&self.package),
        }
    }
}

/// The subject of the daemon's findings about itself and of registry-wide actions (no package
/// name can be `*`).
pub fn daemon_subject() -> Subject {
    Subject {
        package: "*".into(),
        version: None,
    }
}

/// The action catalogue of the policy format; all but `reindex` and `notify` are executed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Quarantine,
    ReleaseQuarantine,
    Yank,
    Unyank,
    RestoreLatest,
    Deprecate,
    Undeprecate,
    SetQuality,
    AdjustQuality,
    Reindex,
    Notify,
}

impl Action {
    pub const ALL: [Action; 11] = [
        Self::Quarantine,
        Self::ReleaseQuarantine,
        Self::Yank,
        Self::Unyank,
        Self::RestoreLatest,
        Self::Deprecate,
        Self::Undeprecate,
        Self::SetQuality,
        Self::AdjustQuality,
        Self::Reindex,
        Self::Notify,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Quarantine => "quarantine",
            Self::ReleaseQuarantine => "release_quarantine",
            Self::Yank => "yank",
            Self::Unyank => "unyank",
            Self::RestoreLatest => "restore_latest",
            Self::Deprecate => "deprecate",
            Self::Undeprecate => "undeprecate",
            Self::SetQuality => "set_quality",
            Self::AdjustQuality => "adjust_quality",
            Self::Reindex => "reindex",
            Self::Notify => "notify",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == s)
    }

    /// What the action works on, given the subject of the finding it answers: the actions of
    /// the catalogue whose subject is a package (`restore_latest`, `deprecate`, `undeprecate`,
    /// the quality actions) take the finding's package, the others its subject as it is.
    pub fn target(self, finding: &Subject) -> Subject {
        match self {
            Self::RestoreLatest
            | Self::Deprecate
            | Self::Undeprecate
            | Self::SetQuality
            | Self::AdjustQuality => Subject {
                package: finding.package.clone(),
                version: None,
            },
            // One search index: every reindex of a cycle is the same work.
            Self::Reindex => Subject {
                package: "*".into(),
                version: None,
            },
            _ => finding.clone(),
        }
    }

    /// When it runs among the remediations of one cycle: what changes a release's availability
    /// first, then `restore_latest` (which reads it), then the rest.
    pub fn execution_order(self) -> u8 {
        match self {
            Self::Quarantine | Self::ReleaseQuarantine | Self::Yank | Self::Unyank => 0,
            Self::RestoreLatest => 1,
            Self::Notify => 3,
            _ => 2,
        }
    }

    /// The spec's tie-break order: the more severe action wins a priority tie.
    pub fn severity_rank(self) -> u8 {
        match self {
            Self::Quarantine => 6,
            Self::Yank => 5,
            Self::RestoreLatest => 4,
            Self::Deprecate => 3,
            Self::SetQuality | Self::AdjustQuality => 2,
            Self::Notify => 1,
            _ => 0,
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
