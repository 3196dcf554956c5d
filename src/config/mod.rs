//! The daemon's configuration file (`mapek.toml`): plain data, validated into a `Config` in one step.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::analyze::settings::{self, DetectorFile, Settings};
use crate::execute::learn::LearningSettings;
use crate::execute::notify::NotifySettings;
use crate::knowledge::retention::RetentionSettings;
use crate::located::{line_of, toml_error};
use crate::monitor::events::Horizon;
use std::collections::HashMap;

pub mod env;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("environment variable {var}: field `{field}`: {reason}")]
    Env {
        var: String,
        field: String,
        reason: String,
    },
    #[error("{file}:{line}: field `{field}`: {reason}")]
    Invalid {
        file: PathBuf,
        line: usize,
        field: String,
        reason: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Pretty,
    Json,
}

/// The file as written. Every field is optional; relative paths are relative to the file.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    /// `sqlite://path` (or a plain path) or `postgres://...`; holds the registry and the knowledge.
    database_url: Option<String>,
    /// Directory of policy files.
    policies: Option<PathBuf>,
    /// ggen `trusted-keys.toml`.
    trusted_keys: Option<PathBuf>,
    /// The daemon's Ed25519 secret key (hex).
    key_file: Option<PathBuf>,
    /// Where relative artifact paths of releases are resolved.
    artifact_root: Option<PathBuf>,
    /// The cycle interval.
    interval: Option<toml::Spanned<String>>,
    /// How often every artifact is hashed again, not only the changed ones.
    full_scan_interval: Option<toml::Spanned<String>>,
    /// HTTP listener for `/metrics` and `/healthz`.
    listen: Option<toml::Spanned<String>>,
    log_format: Option<LogFormat>,
    /// Plan and record, never execute.
    dry_run: Option<bool>,
    /// Refuse a policy set unless every file is signed by a maintainer key.
    require_signed_policies: Option<bool>,
    /// On SIGTERM, how long the stages may take to finish their current work.
    shutdown_grace: Option<toml::Spanned<String>>,
    /// What a failed (panicked) task does: `restart` (with backoff) or `stop` the daemon.
    on_task_failure: Option<OnFailure>,
    /// OTLP/HTTP collector for traces (else OTEL_EXPORTER_OTLP_ENDPOINT; none: no export).
    otlp_endpoint: Option<toml::Spanned<String>>,
    /// How long the leader's lease lasts without a renewal (PostgreSQL, several replicas).
    lease_ttl: Option<toml::Spanned<String>>,
    /// File holding the bearer token of `POST /v1/events` (without one, the intake is off).
    intake_token_file: Option<PathBuf>,
    /// File holding the admin API's bearer token (without one, the admin API is off).
    admin_token_file: Option<PathBuf>,
    /// Where `mapek status` and `mapek plans` reach a running daemon's admin API.
    admin_url: Option<toml::Spanned<String>>,
    /// The largest request body the intake reads, in bytes.
    intake_max_body: Option<toml::Spanned<i64>>,
    /// Events older than this are refused.
    intake_max_age: Option<toml::Spanned<String>>,
    /// How long hour buckets of telemetry are kept (at least 73h: the longest burn window).
    telemetry_retention: Option<toml::Spanned<String>>,
    /// `[detectors.KIND]`: thresholds and lifecycle of each finding kind.
    detectors: Option<HashMap<String, toml::Spanned<DetectorFile>>>,
    /// `[learning]`: when a policy whose remediations do not help is demoted to dry run.
    learning: Option<LearningFile>,
    /// `[retention]`: when compaction runs, and how long resolved findings and notices are kept.
    retention: Option<RetentionFile>,
    /// Where `notify` posts when the policy names no `params.webhook`.
    notify_webhook: Option<toml::Spanned<String>>,
    /// Each webhook POST's time limit.
    notify_timeout: Option<toml::Spanned<String>>,
    /// Tries before a notice is given up on.
    notify_max_tries: Option<toml::Spanned<i64>>,
    /// `[registry]`: which backend is the registry of record, and where it is.
    registry: Option<RegistryFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetentionFile {
    schedule: Option<toml::Spanned<String>>,
    resolved_findings: Option<toml::Spanned<String>>,
    notices: Option<toml::Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LearningFile {
    window: Option<toml::Spanned<String>>,
    min_judged: Option<toml::Spanned<i64>>,
    max_bad_fraction: Option<toml::Spanned<f64>>,
    demote: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistryFile {
    kind: Option<toml::Spanned<String>>,
    checkout: Option<PathBuf>,
    catalog: Option<PathBuf>,
    archives: Option<String>,
    publish: Option<PathBuf>,
    require_signatures: Option<bool>,
    watch: Option<bool>,
    fetch: Option<FetchFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FetchFile {
    connect_timeout: Option<toml::Spanned<String>>,
    timeout: Option<toml::Spanned<String>>,
    max_bytes: Option<toml::Spanned<i64>>,
    concurrency: Option<toml::Spanned<i64>>,
}

/// Which backend is the registry of record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RegistryKind {
    /// mapek's own SQL registry, in the store.
    #[default]
    Sql,
    /// A ggen marketplace checkout (`checkout`), whose catalog mapek publishes.
    GgenMarketplace,
}

/// The `[registry]` section, validated; paths resolved against the file.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RegistrySettings {
    pub kind: RegistryKind,
    pub checkout: Option<PathBuf>,
    pub catalog: Option<PathBuf>,
    pub archives: Option<crate::registry::marketplace::Archives>,
    pub publish: Option<PathBuf>,
    pub require_signatures: bool,
    pub watch: Option<bool>,
    /// HTTP(S) artifacts, for both backends.
    pub fetch: crate::registry::fetch::FetchLimits,
}

impl RegistrySettings {
    /// The marketplace backend's configuration; None for the SQL registry. A marketplace
    /// without a checkout is refused.
    pub fn marketplace(
        &self,
    ) -> Result<Option<crate::registry::marketplace::MarketplaceConfig>, String> {
        if self.kind == RegistryKind::Sql {
            return Ok(None);
        }
        let Some(checkout) = &self.checkout else {
            return Err("[registry] kind = \"ggen-marketplace\" needs `checkout` (the repository's working tree)".into());
        };
        let mut m = crate::registry::marketplace::MarketplaceConfig::at(checkout);
        if let Some(c) = &self.catalog {
            m.catalog = c.clone();
        }
        if let Some(a) = &self.archives {
            m.archives = a.clone();
        }
        m.publish = self.publish.clone();
        m.require_signatures = self.require_signatures;
        m.fetch = self.fetch;
        if let Some(w) = self.watch {
            m.watch = w;
        }
        Ok(Some(m))
    }
}

/// What a failed task does to the daemon (`on_task_failure` in the configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// Restart it after 1 s, doubling up to 60 s while it keeps failing.
    #[default]
    Restart,
    /// Stop the daemon with an error naming the task (systemd's `Restart=on-failure` then
    /// restarts the whole service).
    Stop,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub database_url: String,
    pub policies: PathBuf,
    pub trusted_keys: PathBuf,
    pub key_file: PathBuf,
    pub artifact_root: PathBuf,
    pub interval: Duration,
    pub full_scan_interval: Duration,
    pub listen: Option<SocketAddr>,
    pub log_format: LogFormat,
    pub dry_run: bool,
    pub require_signed_policies: bool,
    pub shutdown_grace: Duration,
    pub lease_ttl: Duration,
    /// Where traces go (OTLP over HTTP); None: `OTEL_EXPORTER_OTLP_ENDPOINT`, or nowhere.
    pub otlp_endpoint: Option<String>,
    pub on_task_failure: OnFailure,
    /// The intake's bearer token, read from `intake_token_file`; None: the intake is off.
    pub intake_token: Option<String>,
    pub intake_max_body: usize,
    /// The admin API's bearer token, read from `admin_token_file`; None: the admin API is off.
    pub admin_token: Option<String>,
    /// A running daemon's address for the command line (`http://127.0.0.1:9700`).
    pub admin_url: Option<String>,
    pub horizon: Horizon,
    pub telemetry_retention: Duration,
    pub detectors: Settings,
    pub learning: LearningSettings,
    pub notify: NotifySettings,
    pub compaction: RetentionSettings,
    pub registry: RegistrySettings,
}

impl Config {
    /// Defaults relative to `base`: everything in the working directory.
    pub fn defaults(base: &Path) -> Self {
        Self {
            database_url: base.join("mapek.db").display().to_string(),
            policies: base.join("policies"),
            trusted_keys: base.join("trusted-keys.toml"),
            key_file: base.join("daemon.key"),
            artifact_root: base.to_path_buf(),
            interval: Duration::from_secs(60),
            full_scan_interval: Duration::from_secs(3600),
            listen: None,
            log_format: LogFormat::Pretty,
            dry_run: false,
            require_signed_policies: false,
            shutdown_grace: Duration::from_secs(30),
            lease_ttl: Duration::from_secs(15),
            otlp_endpoint: None,
            on_task_failure: Default::default(),
            intake_token: None,
            admin_token: None,
            admin_url: None,
            intake_max_body: 16 << 20,
            horizon: Horizon::default(),
            telemetry_retention: Duration::from_secs(4 * 86_400),
            detectors: Settings::default(),
            learning: LearningSettings::default(),
            notify: NotifySettings::default(),
            compaction: RetentionSettings::default(),
            registry: RegistrySettings::default(),
        }
    }

    /// The demo's embedded configuration, rooted at `dir` (`./mapek-demo`).
    pub fn demo(dir: &Path) -> Self {
        Self {
            database_url: dir.join("mapek.db").display().to_string(),
            policies: dir.join("policies"),
            trusted_keys: dir.join("trusted-keys.toml"),
            key_file: dir.join("daemon.key"),
            artifact_root: dir.join("artifacts"),
            interval: Duration::from_secs(10),
            full_scan_interval: Duration::from_secs(300),
            listen: "127.0.0.1:9700".parse().ok(),
            ..Self::defaults(dir)
        }
    }

    /// The marketplace demo's configuration, rooted at `dir` (`./mapek-demo-marketplace`): a
    /// generated checkout under `dir/checkout`, its catalog published to `dir/www/index.json`.
    pub fn demo_marketplace(dir: &Path) -> Self {
        let mut c = Self::demo(dir);
        c.registry = RegistrySettings {
            kind: RegistryKind::GgenMarketplace,
            checkout: Some(dir.join("checkout")),
            publish: Some(dir.join("www").join("index.json")),
            ..Default::default()
        };
        c
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let src = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &src)
    }

    pub fn parse(path: &Path, src: &str) -> Result<Self, ConfigError> {
        let base = path.parent().unwrap_or(Path::new("."));
        Self::defaults(base).apply(path, src)
    }

    /// Applies the settings `src` names onto this configuration; the others stay as they are.
    /// Relative paths resolve against `path`'s directory.
    pub fn apply(self, path: &Path, src: &str) -> Result<Self, ConfigError> {
        let file: ConfigFile = toml::from_str(src).map_err(|e| {
            let (line, reason) = toml_error(src, &e);
            ConfigError::Invalid {
                file: path.to_path_buf(),
                line,
                field: field_of(&reason),
                reason,
            }
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut config = self;
        let rel = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        let invalid =
            |field: &str, span: std::ops::Range<usize>, reason: String| ConfigError::Invalid {
                file: path.to_path_buf(),
                line: line_of(src, span.start),
                field: field.into(),
                reason,
            };
        if let Some(url) = file.database_url {
            config.database_url = if url.starts_with("postgres") || url.starts_with("sqlite:") {
                url
            } else {
                rel(PathBuf::from(url)).display().to_string()
            };
        }
        if let Some(p) = file.policies {
            config.policies = rel(p);
        }
        if let Some(p) = file.trusted_keys {
            config.trusted_keys = rel(p);
        }
        if let Some(p) = file.key_file {
            config.key_file = rel(p);
        }
        if let Some(p) = file.artifact_root {
            config.artifact_root = rel(p);
        }
        for (field, value, slot) in [
            ("interval", file.interval, &mut config.interval),
            (
                "full_scan_interval",
                file.full_scan_interval,
                &mut config.full_scan_interval,
            ),
            (
                "shutdown_grace",
                file.shutdown_grace,
                &mut config.shutdown_grace,
            ),
            ("lease_ttl", file.lease_ttl, &mut config.lease_ttl),
        ] {
            if let Some(v) = value {
                let d = humantime::parse_duration(v.get_ref())
                    .map_err(|e| invalid(field, v.span(), format!("not a duration: {e}")))?;
                if d.is_zero() {
                    return Err(invalid(field, v.span(), "must be more than zero".into()));
                }
                if field == "lease_ttl" && d < Duration::from_secs(1) {
                    return Err(invalid(field, v.span(), "must be at least 1s".into()));
                }
                *slot = d;
            }
        }
        let token_of = |field: &str, p: PathBuf| -> Result<String, ConfigError> {
            let p = rel(p);
            let at = line_of(src, src.find(field).unwrap_or(0));
            let token = std::fs::read_to_string(&p).map_err(|e| ConfigError::Invalid {
                file: path.to_path_buf(),
                line: at,
                field: field.into(),
                reason: format!("cannot read {}: {e}", p.display()),
            })?;
            let token = token.trim().to_string();
            if token.len() < 16 {
                return Err(ConfigError::Invalid {
                    file: path.to_path_buf(),
                    line: at,
                    field: field.into(),
                    reason: format!("the token in {} is shorter than 16 characters", p.display()),
                });
            }
            Ok(token)
        };
        if let Some(p) = file.intake_token_file {
            config.intake_token = Some(token_of("intake_token_file", p)?);
        }
        if let Some(p) = file.admin_token_file {
            config.admin_token = Some(token_of("admin_token_file", p)?);
        }
        if let Some(v) = &file.admin_url {
            let url = v.get_ref().trim_end_matches('/');
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(invalid(
                    "admin_url",
                    v.span(),
                    format!("`{url}` is not an http:// or https:// URL"),
                ));
            }
            config.admin_url = Some(url.to_string());
        }
        if let Some(n) = file.intake_max_body {
            let v = *n.get_ref();
            if !(1024..=1 << 30).contains(&v) {
                return Err(invalid(
                    "intake_max_body",
                    n.span(),
                    format!("{v} is outside 1024..=1073741824 bytes"),
                ));
            }
            config.intake_max_body = v as usize;
        }
        let retention_floor = Duration::from_secs(73 * 3600);
        for (field, value, slot) in [
            ("intake_max_age", &file.intake_max_age, None),
            ("telemetry_retention", &file.telemetry_retention, Some(())),
        ] {
            let Some(v) = value else { continue };
            let d = humantime::parse_duration(v.get_ref())
                .map_err(|e| invalid(field, v.span(), format!("not a duration: {e}")))?;
            match slot {
                None => {
                    if d < Duration::from_secs(60) || d > Duration::from_secs(6 * 3600) {
                        return Err(invalid(field, v.span(), "must be between 1m and 6h".into()));
                    }
                    config.horizon.max_age_ms = d.as_millis() as i64;
                }
                Some(()) => {
                    if d < retention_floor {
                        return Err(invalid(
                            field,
                            v.span(),
                            "must be at least 73h: the longest burn-rate window is 3 days".into(),
                        ));
                    }
                    config.telemetry_retention = d;
                }
            }
        }
        if let Some(d) = &file.detectors {
            settings::apply(d, &mut config.detectors).map_err(|(at, field, reason)| {
                ConfigError::Invalid {
                    file: path.to_path_buf(),
                    line: line_of(src, at),
                    field,
                    reason,
                }
            })?;
        }
        if let Some(l) = &file.learning {
            if let Some(v) = &l.window {
                let d = humantime::parse_duration(v.get_ref()).map_err(|e| {
                    invalid("learning.window", v.span(), format!("not a duration: {e}"))
                })?;
                if d < Duration::from_secs(3600) {
                    return Err(invalid(
                        "learning.window",
                        v.span(),
                        "must be at least 1h".into(),
                    ));
                }
                config.learning.window = d;
            }
            if let Some(v) = &l.min_judged {
                if *v.get_ref() < 1 {
                    return Err(invalid(
                        "learning.min_judged",
                        v.span(),
                        "must be at least 1".into(),
                    ));
                }
                config.learning.min_judged = *v.get_ref();
            }
            if let Some(v) = &l.max_bad_fraction {
                let f = *v.get_ref();
                if !(f > 0.0 && f <= 1.0) {
                    return Err(invalid(
                        "learning.max_bad_fraction",
                        v.span(),
                        format!("{f} is not in (0, 1]"),
                    ));
                }
                config.learning.max_bad_fraction = f;
            }
            if let Some(d) = l.demote {
                config.learning.demote = d;
            }
        }
        if let Some(r) = &file.retention {
            if let Some(v) = &r.schedule {
                config.compaction.schedule =
                    <cron::Schedule as std::str::FromStr>::from_str(v.get_ref()).map_err(|e| {
                        invalid(
                            "retention.schedule",
                            v.span(),
                            format!("not a cron expression (sec min hour dom mon dow): {e}"),
                        )
                    })?;
            }
            for (field, value, slot) in [
                (
                    "retention.resolved_findings",
                    &r.resolved_findings,
                    &mut config.compaction.resolved_findings,
                ),
                (
                    "retention.notices",
                    &r.notices,
                    &mut config.compaction.notices,
                ),
            ] {
                if let Some(v) = value {
                    let d = humantime::parse_duration(v.get_ref())
                        .map_err(|e| invalid(field, v.span(), format!("not a duration: {e}")))?;
                    if d < Duration::from_secs(3600) {
                        return Err(invalid(field, v.span(), "must be at least 1h".into()));
                    }
                    *slot = d;
                }
            }
        }
        if let Some(v) = &file.notify_webhook {
            let url = v.get_ref();
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(invalid(
                    "notify_webhook",
                    v.span(),
                    format!("`{url}` is not an http:// or https:// URL"),
                ));
            }
            config.notify.default_webhook = Some(url.clone());
        }
        if let Some(v) = &file.notify_timeout {
            let d = humantime::parse_duration(v.get_ref())
                .map_err(|e| invalid("notify_timeout", v.span(), format!("not a duration: {e}")))?;
            if d < Duration::from_millis(100) || d > Duration::from_secs(120) {
                return Err(invalid(
                    "notify_timeout",
                    v.span(),
                    "must be between 100ms and 2m".into(),
                ));
            }
            config.notify.timeout = d;
        }
        if let Some(v) = &file.notify_max_tries {
            let n = *v.get_ref();
            if !(1..=50).contains(&n) {
                return Err(invalid(
                    "notify_max_tries",
                    v.span(),
                    format!("{n} is outside 1..=50"),
                ));
            }
            config.notify.max_tries = n;
        }
        if let Some(l) = file.listen {
            config.listen =
                Some(l.get_ref().parse().map_err(|e| {
                    invalid("listen", l.span(), format!("not a socket address: {e}"))
                })?);
        }
        if let Some(v) = &file.otlp_endpoint {
            let url = v.get_ref();
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(invalid(
                    "otlp_endpoint",
                    v.span(),
                    format!("`{url}` is not an http:// or https:// URL"),
                ));
            }
            config.otlp_endpoint = Some(url.clone());
        }
        if let Some(r) = &file.registry {
            apply_registry(r, &mut config.registry, &rel, &invalid)?;
        }
        if let Some(f) = file.on_task_failure {
            config.on_task_failure = f;
        }
        if let Some(f) = file.log_format {
            config.log_format = f;
        }
        if let Some(d) = file.dry_run {
            config.dry_run = d;
        }
        if let Some(r) = file.require_signed_policies {
            config.require_signed_policies = r;
        }
        Ok(config)
    }
}

/// The `[registry]` section onto `settings`.
fn apply_registry(
    r: &RegistryFile,
    settings: &mut RegistrySettings,
    rel: &dyn Fn(PathBuf) -> PathBuf,
    invalid: &dyn Fn(&str, std::ops::Range<usize>, String) -> ConfigError,
) -> Result<(), ConfigError> {
    if let Some(k) = &r.kind {
        settings.kind = match k.get_ref().as_str() {
            "sql" => RegistryKind::Sql,
            "ggen-marketplace" => RegistryKind::GgenMarketplace,
            other => {
                return Err(invalid(
                    "registry.kind",
                    k.span(),
                    format!("`{other}` is not a registry kind (`sql` or `ggen-marketplace`)"),
                ))
            }
        };
    }
    if let Some(p) = &r.checkout {
        settings.checkout = Some(rel(p.clone()));
    }
    if let Some(p) = &r.catalog {
        settings.catalog = Some(rel(p.clone()));
    }
    if let Some(a) = &r.archives {
        let base = rel(PathBuf::from("."));
        settings.archives = Some(crate::registry::marketplace::Archives::parse(a, &base));
    }
    if let Some(p) = &r.publish {
        settings.publish = Some(rel(p.clone()));
    }
    if let Some(b) = r.require_signatures {
        settings.require_signatures = b;
    }
    if let Some(b) = r.watch {
        settings.watch = Some(b);
    }
    let Some(f) = &r.fetch else { return Ok(()) };
    for (field, value, slot) in [
        (
            "registry.fetch.connect_timeout",
            &f.connect_timeout,
            &mut settings.fetch.connect_timeout,
        ),
        (
            "registry.fetch.timeout",
            &f.timeout,
            &mut settings.fetch.timeout,
        ),
    ] {
        if let Some(v) = value {
            let d = humantime::parse_duration(v.get_ref())
                .map_err(|e| invalid(field, v.span(), format!("not a duration: {e}")))?;
            if d < Duration::from_millis(100) || d > Duration::from_secs(3600) {
                return Err(invalid(
                    field,
                    v.span(),
                    "must be between 100ms and 1h".into(),
                ));
            }
            *slot = d;
        }
    }
    if let Some(v) = &f.max_bytes {
        let n = *v.get_ref();
        if !(1024..=1 << 32).contains(&n) {
            return Err(invalid(
                "registry.fetch.max_bytes",
                v.span(),
                format!("{n} is outside 1024..=4294967296 bytes"),
            ));
        }
        settings.fetch.max_bytes = n as u64;
    }
    if let Some(v) = &f.concurrency {
        let n = *v.get_ref();
        if !(1..=256).contains(&n) {
            return Err(invalid(
                "registry.fetch.concurrency",
                v.span(),
                format!("{n} is outside 1..=256"),
            ));
        }
        settings.fetch.concurrency = n as usize;
    }
    Ok(())
}

pub use crate::located::field_of;

#[cfg(test)]
mod tests;
