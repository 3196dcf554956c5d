//! The daemon's configuration file (`mapek.toml`): plain data, validated into a `Config` in one step.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::analyze::settings::Settings;
use crate::execute::learn::LearningSettings;
use crate::execute::notify::NotifySettings;
use crate::knowledge::retention::RetentionSettings;
use crate::monitor::events::Horizon;

pub mod env;
pub(crate) mod file;
mod validate;

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
    #[error("field `{field}`: {reason}")]
    Secret { field: String, reason: String },
    #[error("{file}:{line}: {}{reason}", crate::located::about(.field))]
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
    /// `intake_token_file`: where the intake's bearer token is.
    pub intake_token_file: Option<PathBuf>,
    /// The intake's bearer token, read from `intake_token_file`; None: the intake is off.
    pub intake_token: Option<String>,
    pub intake_max_body: usize,
    /// `admin_token_file`: where the admin API's bearer token is.
    pub admin_token_file: Option<PathBuf>,
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
            intake_token_file: None,
            admin_token: None,
            admin_token_file: None,
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

    /// Reads, parses and validates a configuration file: every problem at once. Token files
    /// are not read: [`Config::load_secrets`] does that.
    pub fn load(path: &Path) -> Result<Self, ConfigErrors> {
        let src = std::fs::read_to_string(path).map_err(|source| {
            ConfigErrors(vec![ConfigError::Read {
                file: path.to_path_buf(),
                source,
            }])
        })?;
        Self::parse(path, &src)
    }

    /// Parses and validates a configuration's text: every problem at once, or the configuration.
    pub fn parse(path: &Path, src: &str) -> Result<Self, ConfigErrors> {
        let base = path.parent().unwrap_or(Path::new("."));
        let (config, problems) = Self::defaults(base).validated(path, src);
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(problems))
        }
    }

    /// Applies the settings `src` names onto this configuration (the others stay as they are);
    /// relative paths resolve against `path`'s directory. The first problem refuses it.
    pub fn apply(self, path: &Path, src: &str) -> Result<Self, ConfigError> {
        let (config, mut problems) = self.validated(path, src);
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(problems.remove(0))
        }
    }

    /// The settings `src` names applied, and every problem found (nothing read but `src`).
    pub fn validated(self, path: &Path, src: &str) -> (Self, Vec<ConfigError>) {
        match file::read(path, src) {
            Err(e) => (self, vec![e]),
            Ok((f, mut problems)) => {
                let (config, more) = validate::apply(self, f, path, src);
                problems.extend(more);
                (config, problems)
            }
        }
    }

    /// The loop's settings this configuration gives, with a driver's schedule.
    pub fn loop_settings(&self, schedule: crate::cycle::Schedule) -> crate::cycle::Settings {
        crate::cycle::Settings {
            full_scan_every_ms: self.full_scan_interval.as_millis() as i64,
            dry_run: self.dry_run,
            learning: self.learning.clone(),
            retention: self.retention(),
            schedule,
        }
    }

    /// How long telemetry is kept.
    pub fn retention(&self) -> crate::monitor::Retention {
        crate::monitor::Retention {
            hours_ms: self.telemetry_retention.as_millis() as i64,
            reports_ms: self.detectors.report_window_ms,
            ..crate::monitor::Retention::default()
        }
    }

    /// A file's settings, already read (a scenario's `[config]`), applied onto this
    /// configuration: every problem, each with its line in `src`.
    pub(crate) fn with_file(
        self,
        f: file::ConfigFile,
        path: &Path,
        src: &str,
    ) -> (Self, Vec<ConfigError>) {
        validate::apply(self, f, path, src)
    }

    /// Reads the token files the configuration names (`intake_token_file`, `admin_token_file`).
    pub fn load_secrets(&mut self) -> Result<(), ConfigErrors> {
        let mut problems = Vec::new();
        for (field, file, slot) in [
            (
                "intake_token_file",
                &self.intake_token_file,
                &mut self.intake_token,
            ),
            (
                "admin_token_file",
                &self.admin_token_file,
                &mut self.admin_token,
            ),
        ] {
            let Some(f) = file else { continue };
            match read_token(f) {
                Ok(t) => *slot = Some(t),
                Err(reason) => problems.push(ConfigError::Secret {
                    field: field.into(),
                    reason,
                }),
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(problems))
        }
    }
}

/// A bearer token from its file: trimmed, at least 16 characters.
fn read_token(path: &Path) -> Result<String, String> {
    let token = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let token = token.trim().to_string();
    if token.len() < 16 {
        return Err(format!(
            "the token in {} is shorter than 16 characters",
            path.display()
        ));
    }
    Ok(token)
}

/// Every problem of a configuration, one a line.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let lines: Vec<String> = self.0.iter().map(|e| e.to_string()).collect();
        f.write_str(&lines.join("\n"))
    }
}

impl std::error::Error for ConfigErrors {}

pub use crate::located::field_of;

#[cfg(test)]
mod tests;
