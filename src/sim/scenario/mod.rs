//! Scenario files (`simulations/*.toml`): the format of spec/scenarios.md, refused with file, line and field.

use serde::Deserialize;
use std::path::{Path, PathBuf};

mod check;
mod raw;

pub use check::Limits;

/// A problem in a scenario file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {}{reason}", crate::located::about(.field))]
pub struct ScenarioError {
    pub file: PathBuf,
    pub line: usize,
    pub field: String,
    pub reason: String,
}

/// `[registry] background`: ordinary traffic over the whole registry (an extension of the
/// format, see docs/simulation.md).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct Background {
    #[serde(default)]
    pub downloads_per_hour: f64,
    #[serde(default)]
    pub installs_per_hour: f64,
}

/// The `generate` table.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Generate {
    pub packages: usize,
    #[serde(default = "mean_dependencies")]
    pub mean_dependencies: f64,
    #[serde(default = "publishers")]
    pub publishers: usize,
    #[serde(default = "max_releases")]
    pub max_releases: usize,
    #[serde(default = "one")]
    pub signed_fraction: f64,
    #[serde(default)]
    pub unmaintained_fraction: f64,
    #[serde(default)]
    pub cycles: usize,
}

fn mean_dependencies() -> f64 {
    2.5
}
fn publishers() -> usize {
    10
}
fn max_releases() -> usize {
    3
}
fn one() -> f64 {
    1.0
}

/// `[[expect.action]]`
#[derive(Debug, Clone, Deserialize, PartialEq, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectAction {
    pub action: String,
    pub package: String,
    pub version: Option<String>,
    #[serde(default = "executed")]
    pub mode: String,
    #[serde(default = "zero")]
    pub after: String,
    pub within: Option<String>,
    /// Default 1, or 0 when `max = 0` ("never").
    pub min: Option<u64>,
    pub max: Option<u64>,
}

/// `[[expect.finding]]`
#[derive(Debug, Clone, Deserialize, PartialEq, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectFinding {
    pub kind: String,
    pub package: Option<String>,
    #[serde(default = "zero")]
    pub after: String,
    pub within: Option<String>,
    /// Default 1, or 0 when `max = 0` ("never").
    pub min: Option<u64>,
    pub max: Option<u64>,
}

/// The least count an expectation asks for: `min`, else 1, except that `max = 0` means never.
pub fn least(min: Option<u64>, max: Option<u64>) -> u64 {
    min.unwrap_or(if max == Some(0) { 0 } else { 1 })
}

/// `[[expect.final]]`
#[derive(Debug, Clone, Deserialize, PartialEq, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectFinal {
    pub package: String,
    pub version: Option<String>,
    pub status: Option<String>,
    pub latest: Option<String>,
    pub quality_min: Option<f64>,
    pub quality_max: Option<f64>,
}

/// `[expect.totals]`
#[derive(Debug, Clone, Deserialize, PartialEq, serde::Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ExpectTotals {
    pub max_actions: Option<u64>,
    pub max_quarantined: Option<u64>,
    pub max_registry_fraction: Option<f64>,
}

fn executed() -> String {
    "executed".into()
}
fn zero() -> String {
    "0s".into()
}

/// Where the registry comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    Generate(Generate),
    Import(PathBuf),
}

/// One event, validated.
#[derive(Debug, Clone, PartialEq)]
pub enum EventKind {
    Publish {
        package: String,
        version: String,
        signed: bool,
        signer: Option<String>,
        dependencies: Vec<String>,
        license: bool,
        readme: bool,
        tests: bool,
    },
    /// Install telemetry for `version` of `package` during `for_ms`.
    InstallOutcomes {
        package: String,
        version: String,
        per_hour: f64,
        failure_ratio: f64,
        for_ms: i64,
    },
    Downloads {
        package: String,
        per_hour: f64,
        for_ms: i64,
    },
    LookupLatency {
        p99_ms: f64,
        for_ms: i64,
    },
    Report {
        package: String,
        version: String,
        reporter: String,
        category: String,
    },
    TamperArtifact {
        package: String,
        version: String,
    },
    CorruptSignature {
        package: String,
        version: String,
    },
    RevokeKey {
        key: String,
    },
    RotateKey {
        key: String,
        new_key: String,
    },
    TrustKey {
        key: String,
    },
    RegistryOutage {
        for_ms: i64,
    },
    StoreOutage {
        for_ms: i64,
    },
    Approve {
        policy: String,
        package: String,
        key: String,
    },
    /// Execution paused through the admin API, by `by` (an extension of the format).
    Pause {
        by: String,
    },
    /// Execution resumed.
    Resume,
}

impl EventKind {
    /// A short label for the timeline's event markers.
    pub fn marker(&self) -> String {
        match self {
            Self::Publish {
                package, version, ..
            } => format!("publish {package}@{version}"),
            Self::InstallOutcomes {
                package,
                failure_ratio,
                ..
            } => format!("installs {package} ({:.0} % fail)", failure_ratio * 100.0),
            Self::Downloads {
                package, per_hour, ..
            } => format!("downloads {package} {per_hour}/h"),
            Self::LookupLatency { p99_ms, .. } => format!("lookups p99 {p99_ms} ms"),
            Self::Report {
                package, category, ..
            } => format!("report {package} ({category})"),
            Self::TamperArtifact { package, .. } => format!("tamper {package}"),
            Self::CorruptSignature { package, .. } => format!("bad signature {package}"),
            Self::RevokeKey { key } => format!("revoke {key}"),
            Self::RotateKey { key, .. } => format!("rotate {key}"),
            Self::TrustKey { key } => format!("trust {key}"),
            Self::RegistryOutage { .. } => "registry outage".into(),
            Self::StoreOutage { .. } => "store outage".into(),
            Self::Approve { package, .. } => format!("approve {package}"),
            Self::Pause { .. } => "pause".into(),
            Self::Resume => "resume".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub at_ms: i64,
    pub kind: EventKind,
    pub line: usize,
}

/// A scenario, checked.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub file: PathBuf,
    pub name: String,
    pub description: String,
    pub seed: u64,
    pub duration_ms: i64,
    pub tick_ms: i64,
    pub policies_dir: PathBuf,
    pub source: Source,
    pub background: Option<Background>,
    /// `[guards]`, as a guards.toml would hold it.
    pub guards: Option<String>,
    /// `[[policy]]` tables, as a policy file would hold them.
    pub policies: Option<String>,
    pub events: Vec<Event>,
    pub expect_action: Vec<(usize, ExpectAction)>,
    pub expect_finding: Vec<(usize, ExpectFinding)>,
    pub expect_final: Vec<(usize, ExpectFinal)>,
    /// `[expect.totals]` and its line.
    pub expect_totals: Option<(usize, ExpectTotals)>,
    /// `[config]`: the daemon's settings for this run (full-scan interval, dry run, detectors,
    /// learning, telemetry retention), over the defaults.
    pub config: crate::config::Config,
}

/// A duration of the format (`90s`, `15m`, `6h`, `7d`) in milliseconds.
pub fn duration_ms(s: &str) -> Result<i64, String> {
    humantime::parse_duration(s.trim())
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .map_err(|e| format!("`{s}` is not a duration (90s, 15m, 6h, 7d): {e}"))
}

impl Scenario {
    pub fn load(file: &Path) -> Result<Self, Vec<ScenarioError>> {
        Self::load_with(file, &Limits::default())
    }

    /// Loads a scenario within `limits` (the documented ones by default, `--max-*` to raise them).
    pub fn load_with(file: &Path, limits: &Limits) -> Result<Self, Vec<ScenarioError>> {
        let src = std::fs::read_to_string(file).map_err(|e| {
            vec![ScenarioError {
                file: file.to_path_buf(),
                line: 0,
                field: "-".into(),
                reason: format!("cannot read: {e}"),
            }]
        })?;
        check::parse(file, &src, limits)
    }

    pub fn parse(file: &Path, src: &str) -> Result<Self, Vec<ScenarioError>> {
        check::parse(file, src, &Limits::default())
    }
}
