//! Scenario files (`simulations/*.toml`): the format of spec/scenarios.md, refused with file, line and field.

use serde::Deserialize;
use std::path::{Path, PathBuf};

use crate::located::field_of;
use crate::located::{line_of, toml_error};

/// A problem in a scenario file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: field `{field}`: {reason}")]
pub struct ScenarioError {
    pub file: PathBuf,
    pub line: usize,
    pub field: String,
    pub reason: String,
}

type S<T> = toml::Spanned<T>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    scenario: RawScenario,
    registry: RawRegistry,
    guards: Option<toml::Table>,
    #[serde(default)]
    policy: Vec<toml::Table>,
    #[serde(default)]
    event: Vec<S<RawEvent>>,
    #[serde(default)]
    expect: RawExpect,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    seed: u64,
    duration: S<String>,
    tick: Option<S<String>>,
    policies: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegistry {
    generate: Option<Generate>,
    import: Option<S<String>>,
    background: Option<S<Background>>,
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

/// Every field an event of the format may carry.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEvent {
    at: String,
    kind: String,
    package: Option<String>,
    version: Option<String>,
    key: Option<String>,
    new_key: Option<String>,
    policy: Option<String>,
    signed: Option<bool>,
    signer: Option<String>,
    #[serde(default)]
    dependencies: Vec<String>,
    license: Option<bool>,
    readme: Option<bool>,
    tests: Option<bool>,
    #[serde(rename = "for")]
    for_: Option<String>,
    per_hour: Option<f64>,
    failure_ratio: Option<f64>,
    p99_ms: Option<f64>,
    reporter: Option<String>,
    category: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawExpect {
    #[serde(default)]
    action: Vec<S<ExpectAction>>,
    #[serde(default)]
    finding: Vec<S<ExpectFinding>>,
    #[serde(default, rename = "final")]
    final_: Vec<S<ExpectFinal>>,
    totals: Option<ExpectTotals>,
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
    pub expect_totals: Option<ExpectTotals>,
}

/// A duration of the format (`90s`, `15m`, `6h`, `7d`) in milliseconds.
pub fn duration_ms(s: &str) -> Result<i64, String> {
    humantime::parse_duration(s.trim())
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .map_err(|e| format!("`{s}` is not a duration (90s, 15m, 6h, 7d): {e}"))
}

impl Scenario {
    pub fn load(file: &Path) -> Result<Self, Vec<ScenarioError>> {
        let src = std::fs::read_to_string(file).map_err(|e| {
            vec![ScenarioError {
                file: file.to_path_buf(),
                line: 0,
                field: "-".into(),
                reason: format!("cannot read: {e}"),
            }]
        })?;
        Self::parse(file, &src)
    }

    pub fn parse(file: &Path, src: &str) -> Result<Self, Vec<ScenarioError>> {
        let err = |line: usize, field: &str, reason: String| ScenarioError {
            file: file.to_path_buf(),
            line,
            field: field.into(),
            reason,
        };
        let raw: Raw = toml::from_str(src).map_err(|e| {
            let (line, reason) = toml_error(src, &e);
            vec![err(line, &field_of(&reason), reason)]
        })?;
        let mut errors = Vec::new();
        let base = file.parent().unwrap_or(Path::new("."));
        let span_line = |start: usize| line_of(src, start);
        let mut dur = |field: &str, v: &S<String>| match duration_ms(v.get_ref()) {
            Ok(ms) if ms > 0 => ms,
            Ok(_) => {
                errors.push(err(
                    span_line(v.span().start),
                    field,
                    "must be longer than zero".into(),
                ));
                1
            }
            Err(reason) => {
                errors.push(err(span_line(v.span().start), field, reason));
                1
            }
        };
        let duration_ms_v = dur("scenario.duration", &raw.scenario.duration);
        let tick_ms = raw
            .scenario
            .tick
            .as_ref()
            .map(|t| dur("scenario.tick", t))
            .unwrap_or(60_000);
        let policies_dir = match &raw.scenario.policies {
            Some(p) => base.join(p),
            None => Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"),
        };
        let background = raw.registry.background.as_ref().map(|b| *b.get_ref());
        if let Some(b) = &raw.registry.background {
            let bad = |r: f64| !(0.0..=1e9).contains(&r) || r.is_nan();
            if bad(b.get_ref().downloads_per_hour) || bad(b.get_ref().installs_per_hour) {
                errors.push(err(
                    span_line(b.span().start),
                    "registry.background",
                    "rates are between 0 and 1e9 an hour".into(),
                ));
            }
        }
        let source = match (raw.registry.generate, raw.registry.import) {
            (Some(g), None) => Source::Generate(g),
            (None, Some(i)) => Source::Import(base.join(i.get_ref())),
            _ => {
                errors.push(err(
                    line_of(src, src.find("[registry]").unwrap_or(0)),
                    "registry",
                    "give exactly one of `generate` and `import`".into(),
                ));
                Source::Generate(Generate {
                    packages: 0,
                    mean_dependencies: 0.0,
                    publishers: 1,
                    max_releases: 1,
                    signed_fraction: 1.0,
                    unmaintained_fraction: 0.0,
                    cycles: 0,
                })
            }
        };
        let mut events = Vec::new();
        for e in &raw.event {
            let line = span_line(e.span().start);
            match event(e.get_ref()) {
                Ok(kind) => match duration_ms(&e.get_ref().at) {
                    Ok(at_ms) => events.push(Event { at_ms, kind, line }),
                    Err(reason) => errors.push(err(line, "event.at", reason)),
                },
                Err((field, reason)) => errors.push(err(line, &format!("event.{field}"), reason)),
            }
        }
        events.sort_by_key(|e| (e.at_ms, e.line));
        let expect_action: Vec<(usize, ExpectAction)> = raw
            .expect
            .action
            .iter()
            .map(|a| (span_line(a.span().start), a.get_ref().clone()))
            .collect();
        for (line, a) in &expect_action {
            for (field, d) in [("after", Some(&a.after)), ("within", a.within.as_ref())] {
                if let Some(Err(reason)) = d.map(|d| duration_ms(d)) {
                    errors.push(err(*line, &format!("expect.action.{field}"), reason));
                }
            }
            if !["executed", "dry_run", "pending", "suppressed"].contains(&a.mode.as_str()) {
                errors.push(err(
                    *line,
                    "expect.action.mode",
                    format!(
                        "`{}` is not executed, dry_run, pending or suppressed",
                        a.mode
                    ),
                ));
            }
            if a.action != "*" && crate::model::Action::parse(&a.action).is_none() {
                errors.push(err(
                    *line,
                    "expect.action.action",
                    format!("unknown action `{}`", a.action),
                ));
            }
        }
        let expect_finding: Vec<(usize, ExpectFinding)> = raw
            .expect
            .finding
            .iter()
            .map(|a| (span_line(a.span().start), a.get_ref().clone()))
            .collect();
        for (line, f) in &expect_finding {
            if crate::model::FindingKind::parse(&f.kind).is_none() {
                errors.push(err(
                    *line,
                    "expect.finding.kind",
                    format!("unknown finding kind `{}`", f.kind),
                ));
            }
            for (field, d) in [("after", Some(&f.after)), ("within", f.within.as_ref())] {
                if let Some(Err(reason)) = d.map(|d| duration_ms(d)) {
                    errors.push(err(*line, &format!("expect.finding.{field}"), reason));
                }
            }
        }
        let expect_final: Vec<(usize, ExpectFinal)> = raw
            .expect
            .final_
            .iter()
            .map(|a| (span_line(a.span().start), a.get_ref().clone()))
            .collect();
        for (line, f) in &expect_final {
            for (field, q) in [
                ("quality_min", f.quality_min),
                ("quality_max", f.quality_max),
            ] {
                if q.is_some_and(|q| !(0.0..=100.0).contains(&q)) {
                    errors.push(err(
                        *line,
                        &format!("expect.final.{field}"),
                        "a quality score is between 0 and 100".into(),
                    ));
                }
            }
        }
        let guards = raw.guards.map(|g| {
            let mut t = toml::Table::new();
            t.insert("guards".into(), toml::Value::Table(g));
            toml::to_string(&t).unwrap_or_default()
        });
        let policies = (!raw.policy.is_empty()).then(|| {
            let mut t = toml::Table::new();
            t.insert(
                "policy".into(),
                toml::Value::Array(raw.policy.into_iter().map(toml::Value::Table).collect()),
            );
            toml::to_string(&t).unwrap_or_default()
        });
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Self {
            file: file.to_path_buf(),
            name: raw.scenario.name,
            description: raw.scenario.description,
            seed: raw.scenario.seed,
            duration_ms: duration_ms_v,
            tick_ms,
            policies_dir,
            source,
            background,
            guards,
            policies,
            events,
            expect_action,
            expect_finding,
            expect_final,
            expect_totals: raw.expect.totals,
        })
    }
}

fn need<'a>(
    v: &'a Option<String>,
    field: &'static str,
) -> Result<&'a String, (&'static str, String)> {
    v.as_ref()
        .ok_or((field, "is required for this kind of event".to_string()))
}

fn rate(v: Option<f64>, field: &'static str) -> Result<f64, (&'static str, String)> {
    match v {
        Some(r) if r >= 0.0 && r.is_finite() && r <= 1e9 => Ok(r),
        Some(_) => Err((field, "is a rate between 0 and 1e9 an hour".into())),
        None => Err((field, "is required for this kind of event".into())),
    }
}

fn event(e: &RawEvent) -> Result<EventKind, (&'static str, String)> {
    let for_ms = || -> Result<i64, (&'static str, String)> {
        duration_ms(need(&e.for_, "for")?).map_err(|r| ("for", r))
    };
    let version = || e.version.clone().unwrap_or_else(|| "latest".into());
    Ok(match e.kind.as_str() {
        "publish" => EventKind::Publish {
            package: need(&e.package, "package")?.clone(),
            version: need(&e.version, "version")?.clone(),
            signed: e.signed.unwrap_or(true),
            signer: e.signer.clone(),
            dependencies: e.dependencies.clone(),
            license: e.license.unwrap_or(true),
            readme: e.readme.unwrap_or(true),
            tests: e.tests.unwrap_or(true),
        },
        "install_outcomes" => EventKind::InstallOutcomes {
            package: need(&e.package, "package")?.clone(),
            version: version(),
            per_hour: rate(e.per_hour, "per_hour")?,
            failure_ratio: match e.failure_ratio {
                Some(r) if (0.0..=1.0).contains(&r) => r,
                Some(_) => return Err(("failure_ratio", "is a share between 0 and 1".into())),
                None => 0.0,
            },
            for_ms: for_ms()?,
        },
        "downloads" => EventKind::Downloads {
            package: need(&e.package, "package")?.clone(),
            per_hour: rate(e.per_hour, "per_hour")?,
            for_ms: for_ms()?,
        },
        "lookup_latency" => EventKind::LookupLatency {
            p99_ms: match e.p99_ms {
                Some(p) if p > 0.0 && p.is_finite() => p,
                Some(_) => return Err(("p99_ms", "is a positive number of milliseconds".into())),
                None => return Err(("p99_ms", "is required for this kind of event".into())),
            },
            for_ms: for_ms()?,
        },
        "report" => EventKind::Report {
            package: need(&e.package, "package")?.clone(),
            version: version(),
            reporter: need(&e.reporter, "reporter")?.clone(),
            category: match need(&e.category, "category")?.as_str() {
                c @ ("malware" | "spam" | "license") => c.to_string(),
                other => {
                    return Err((
                        "category",
                        format!("`{other}` is not one of malware, spam, license"),
                    ))
                }
            },
        },
        "tamper_artifact" => EventKind::TamperArtifact {
            package: need(&e.package, "package")?.clone(),
            version: version(),
        },
        "corrupt_signature" => EventKind::CorruptSignature {
            package: need(&e.package, "package")?.clone(),
            version: version(),
        },
        "revoke_key" => EventKind::RevokeKey {
            key: need(&e.key, "key")?.clone(),
        },
        "rotate_key" => EventKind::RotateKey {
            key: need(&e.key, "key")?.clone(),
            new_key: need(&e.new_key, "new_key")?.clone(),
        },
        "trust_key" => EventKind::TrustKey {
            key: need(&e.key, "key")?.clone(),
        },
        "registry_outage" => EventKind::RegistryOutage { for_ms: for_ms()? },
        "store_outage" => EventKind::StoreOutage { for_ms: for_ms()? },
        "approve" => EventKind::Approve {
            policy: need(&e.policy, "policy")?.clone(),
            package: need(&e.package, "package")?.clone(),
            key: need(&e.key, "key")?.clone(),
        },
        other => return Err(("kind", format!("unknown event kind `{other}`"))),
    })
}
