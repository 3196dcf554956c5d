//! The configuration file as written (plain data, every field optional), read with every unknown key named with its line, and nothing read beyond the file itself.

use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::{ConfigError, LogFormat, OnFailure};
use crate::analyze::settings::DetectorFile;
use crate::located::{line_of, toml_error};

/// The file as written. Every field is optional; relative paths are relative to the file.
#[derive(Debug, Deserialize, Default)]
pub(crate) struct ConfigFile {
    /// `sqlite://path` (or a plain path) or `postgres://...`; holds the registry and the knowledge.
    pub(crate) database_url: Option<String>,
    /// Directory of policy files.
    pub(crate) policies: Option<PathBuf>,
    /// ggen `trusted-keys.toml`.
    pub(crate) trusted_keys: Option<PathBuf>,
    /// The daemon's Ed25519 secret key (hex).
    pub(crate) key_file: Option<PathBuf>,
    /// Where relative artifact paths of releases are resolved.
    pub(crate) artifact_root: Option<PathBuf>,
    /// The cycle interval.
    pub(crate) interval: Option<toml::Spanned<String>>,
    /// How often every artifact is hashed again, not only the changed ones.
    pub(crate) full_scan_interval: Option<toml::Spanned<String>>,
    /// HTTP listener for `/metrics` and `/healthz`.
    pub(crate) listen: Option<toml::Spanned<String>>,
    pub(crate) log_format: Option<LogFormat>,
    /// Plan and record, never execute.
    pub(crate) dry_run: Option<bool>,
    /// Refuse a policy set unless every file is signed by a maintainer key.
    pub(crate) require_signed_policies: Option<bool>,
    /// On SIGTERM, how long the stages may take to finish their current work.
    pub(crate) shutdown_grace: Option<toml::Spanned<String>>,
    /// What a failed (panicked) task does: `restart` (with backoff) or `stop` the daemon.
    pub(crate) on_task_failure: Option<OnFailure>,
    /// OTLP/HTTP collector for traces (else OTEL_EXPORTER_OTLP_ENDPOINT; none: no export).
    pub(crate) otlp_endpoint: Option<toml::Spanned<String>>,
    /// How long the leader's lease lasts without a renewal (PostgreSQL, several replicas).
    pub(crate) lease_ttl: Option<toml::Spanned<String>>,
    /// File holding the bearer token of `POST /v1/events` (without one, the intake is off).
    pub(crate) intake_token_file: Option<PathBuf>,
    /// File holding the admin API's bearer token (without one, the admin API is off).
    pub(crate) admin_token_file: Option<PathBuf>,
    /// Where `mapek status` and `mapek plans` reach a running daemon's admin API.
    pub(crate) admin_url: Option<toml::Spanned<String>>,
    /// The largest request body the intake reads, in bytes.
    pub(crate) intake_max_body: Option<toml::Spanned<i64>>,
    /// Events older than this are refused.
    pub(crate) intake_max_age: Option<toml::Spanned<String>>,
    /// How long hour buckets of telemetry are kept (at least 73h: the longest burn window).
    pub(crate) telemetry_retention: Option<toml::Spanned<String>>,
    /// `[detectors.KIND]`: thresholds and lifecycle of each finding kind.
    pub(crate) detectors: Option<HashMap<String, toml::Spanned<DetectorFile>>>,
    /// `[learning]`: when a policy whose remediations do not help is demoted to dry run.
    pub(crate) learning: Option<LearningFile>,
    /// `[retention]`: when compaction runs, and how long resolved findings and notices are kept.
    pub(crate) retention: Option<RetentionFile>,
    /// Where `notify` posts when the policy names no `params.webhook`.
    pub(crate) notify_webhook: Option<toml::Spanned<String>>,
    /// Each webhook POST's time limit.
    pub(crate) notify_timeout: Option<toml::Spanned<String>>,
    /// Tries before a notice is given up on.
    pub(crate) notify_max_tries: Option<toml::Spanned<i64>>,
    /// `[registry]`: which backend is the registry of record, and where it is.
    pub(crate) registry: Option<RegistryFile>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct RetentionFile {
    pub(crate) schedule: Option<toml::Spanned<String>>,
    pub(crate) resolved_findings: Option<toml::Spanned<String>>,
    pub(crate) notices: Option<toml::Spanned<String>>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct LearningFile {
    pub(crate) window: Option<toml::Spanned<String>>,
    pub(crate) min_judged: Option<toml::Spanned<i64>>,
    pub(crate) max_bad_fraction: Option<toml::Spanned<f64>>,
    pub(crate) demote: Option<bool>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct RegistryFile {
    pub(crate) kind: Option<toml::Spanned<String>>,
    pub(crate) checkout: Option<PathBuf>,
    pub(crate) catalog: Option<PathBuf>,
    pub(crate) archives: Option<String>,
    pub(crate) publish: Option<PathBuf>,
    pub(crate) require_signatures: Option<bool>,
    pub(crate) watch: Option<bool>,
    pub(crate) fetch: Option<FetchFile>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct FetchFile {
    pub(crate) connect_timeout: Option<toml::Spanned<String>>,
    pub(crate) timeout: Option<toml::Spanned<String>>,
    pub(crate) max_bytes: Option<toml::Spanned<i64>>,
    pub(crate) concurrency: Option<toml::Spanned<i64>>,
}

/// Reads a configuration's text: its settings, and every key it does not know (each an error
/// with its line), or the syntax error that stops it.
pub(crate) fn read(path: &Path, src: &str) -> Result<(ConfigFile, Vec<ConfigError>), ConfigError> {
    let syntax = |e: toml::de::Error| {
        let (line, reason) = toml_error(src, &e);
        ConfigError::Invalid {
            file: path.to_path_buf(),
            line,
            field: crate::located::field_at(src, line, &reason),
            reason,
        }
    };
    let de = toml::Deserializer::parse(src).map_err(syntax)?;
    let mut unknown = Vec::new();
    let file: ConfigFile = serde_ignored::deserialize(de, |p| {
        // serde_ignored writes an `Option`'s `Some` as `?`.
        let path = p.to_string().replace(".?", "").replace("?.", "");
        unknown.push(path)
    })
    .map_err(syntax)?;
    let table = toml::de::DeTable::parse(src).ok();
    let errors = unknown
        .into_iter()
        .map(|key| ConfigError::Invalid {
            file: path.to_path_buf(),
            line: table
                .as_ref()
                .and_then(|t| key_offset(t.get_ref(), &key))
                .map(|at| line_of(src, at))
                .unwrap_or(1),
            field: key.clone(),
            reason: format!("unknown setting `{key}`"),
        })
        .collect();
    Ok((file, errors))
}

/// Where the key at `path` (`learning.windw`) is in the text.
fn key_offset(table: &toml::de::DeTable<'_>, path: &str) -> Option<usize> {
    let (first, rest) = match path.split_once('.') {
        Some((f, r)) => (f, Some(r)),
        None => (path, None),
    };
    let (key, value) = table.iter().find(|(k, _)| k.get_ref().as_ref() == first)?;
    match (rest, value.get_ref()) {
        (Some(rest), toml::de::DeValue::Table(inner)) => key_offset(inner, rest),
        _ => Some(key.span().start),
    }
}
