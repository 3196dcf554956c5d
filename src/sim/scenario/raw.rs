//! The scenario file as written (plain data), and each event's table turned into a typed event.

use serde::Deserialize;

use super::{duration_ms, EventKind, ExpectAction, ExpectFinal, ExpectFinding, ExpectTotals};
use super::{Background, Generate};

type S<T> = toml::Spanned<T>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Raw {
    pub(super) scenario: RawScenario,
    pub(super) registry: RawRegistry,
    pub(super) guards: Option<toml::Table>,
    #[serde(default)]
    pub(super) policy: Vec<toml::Table>,
    #[serde(default)]
    pub(super) event: Vec<S<RawEvent>>,
    #[serde(default)]
    pub(super) expect: RawExpect,
    /// `[config]`: settings of mapek.toml for this run (an extension of the format).
    pub(super) config: Option<crate::config::file::ConfigFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawScenario {
    pub(super) name: String,
    #[serde(default)]
    pub(super) description: String,
    #[serde(default)]
    pub(super) seed: u64,
    pub(super) duration: S<String>,
    pub(super) tick: Option<S<String>>,
    pub(super) policies: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRegistry {
    pub(super) generate: Option<Generate>,
    pub(super) import: Option<S<String>>,
    pub(super) background: Option<S<Background>>,
}

/// Every field an event of the format may carry.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEvent {
    pub(super) at: String,
    pub(super) kind: String,
    pub(super) package: Option<String>,
    pub(super) version: Option<String>,
    pub(super) key: Option<String>,
    pub(super) new_key: Option<String>,
    pub(super) policy: Option<String>,
    pub(super) signed: Option<bool>,
    pub(super) signer: Option<String>,
    #[serde(default)]
    pub(super) dependencies: Vec<String>,
    pub(super) license: Option<bool>,
    pub(super) readme: Option<bool>,
    pub(super) tests: Option<bool>,
    #[serde(rename = "for")]
    pub(super) for_: Option<String>,
    pub(super) per_hour: Option<f64>,
    pub(super) failure_ratio: Option<f64>,
    p99_ms: Option<f64>,
    pub(super) reporter: Option<String>,
    pub(super) by: Option<String>,
    pub(super) category: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawExpect {
    #[serde(default)]
    pub(super) action: Vec<S<ExpectAction>>,
    #[serde(default)]
    pub(super) finding: Vec<S<ExpectFinding>>,
    #[serde(default, rename = "final")]
    pub(super) final_: Vec<S<ExpectFinal>>,
    pub(super) totals: Option<ExpectTotals>,
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

pub(super) fn event(e: &RawEvent) -> Result<EventKind, (&'static str, String)> {
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
        "pause" => EventKind::Pause {
            by: e.by.clone().unwrap_or_else(|| "scenario".into()),
        },
        "resume" => EventKind::Resume,
        "store_outage" => EventKind::StoreOutage { for_ms: for_ms()? },
        "approve" => EventKind::Approve {
            policy: need(&e.policy, "policy")?.clone(),
            package: need(&e.package, "package")?.clone(),
            key: need(&e.key, "key")?.clone(),
        },
        other => return Err(("kind", format!("unknown event kind `{other}`"))),
    })
}
