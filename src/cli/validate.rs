//! `mapek validate`: checks a configuration, the policies, keys and stores it names, and reports every problem found, not only the first.

use std::path::Path;
use std::process::ExitCode;

use super::Global;
use crate::analyze::quality::QualityModel;
use crate::config::{self, Config};
use crate::daemon::reload::PolicySource;
use crate::keys::{KeyPair, TrustStore};
use crate::knowledge::{redact, Store};

/// Every problem of a configuration file (each with its line and field, from the parser's
/// spans), and the configuration made of the settings that are sound.
fn file_problems(path: &Path, problems: &mut Vec<String>) -> Config {
    let base = path.parent().unwrap_or(Path::new("."));
    let defaults = Config::defaults(base);
    let src = match std::fs::read_to_string(path) {
        Ok(s) => s,
        Err(e) => {
            problems.push(format!("{}: cannot read: {e}", path.display()));
            return defaults;
        }
    };
    let (config, found) = defaults.validated(path, &src);
    problems.extend(found.iter().map(|e| e.to_string()));
    config
}

pub async fn validate(global: &Global) -> anyhow::Result<ExitCode> {
    let mut problems = Vec::new();
    let config = match (&global.config, global.demo || global.demo_marketplace) {
        (Some(path), false) => file_problems(path, &mut problems),
        _ => global.config().unwrap_or_else(|e| {
            problems.push(e.to_string());
            Config::defaults(Path::new("."))
        }),
    };
    // The environment, one variable at a time.
    let mut config = config;
    for var in std::env::vars().filter(|(k, _)| k.starts_with("MAPEK_")) {
        match config::env::apply(config.clone(), std::iter::once(var)) {
            Ok(c) => config = c,
            Err(e) => problems.push(e.to_string()),
        }
    }
    if let Some(url) = &global.database_url {
        config.database_url = url.clone();
    }
    // Then what the configuration names: the token files.
    if let Err(errors) = config.load_secrets() {
        problems.extend(errors.0.iter().map(|e| e.to_string()));
    }

    let policies = match PolicySource::load(
        &config.policies,
        &config.trusted_keys,
        config.require_signed_policies,
    ) {
        Ok(set) => set.policies.len(),
        Err(errors) => {
            problems.extend(errors.iter().map(|e| format!("policy: {e}")));
            0
        }
    };
    if let Err(e) = QualityModel::load(&config.policies) {
        problems.push(format!("quality model: {e}"));
    }
    let trusted = match TrustStore::load(&config.trusted_keys) {
        Ok(t) => t.keys.len(),
        Err(e) => {
            problems.push(format!("trust store: {e}"));
            0
        }
    };
    let key = match KeyPair::load(&config.key_file) {
        Ok(k) => k.key_id,
        Err(e) => {
            problems.push(format!("daemon key: {e}"));
            String::new()
        }
    };
    if !config.artifact_root.is_dir() {
        problems.push(format!(
            "artifact_root {}: not a readable directory",
            config.artifact_root.display()
        ));
    }
    if config.admin_url.is_some() && config.admin_token.is_none() {
        problems.push(
            "admin_url is set but admin_token_file is not: the command line could not call the daemon"
                .into(),
        );
    }
    let store = match Store::schema_version(&config.database_url).await {
        Ok((Some(found), latest)) if found > latest => {
            problems.push(format!(
                "database {}: its schema (version {found}) is newer than this build's ({latest}): upgrade mapek",
                redact(&config.database_url)
            ));
            String::new()
        }
        Ok((Some(found), latest)) if found < latest => {
            format!("schema version {found}; the daemon migrates it to {latest} when it starts")
        }
        Ok((Some(found), _)) => format!("schema version {found}"),
        Ok((None, latest)) => {
            format!("no schema yet; the daemon creates it (version {latest}) when it starts")
        }
        Err(e) => {
            problems.push(format!("database: {e}"));
            String::new()
        }
    };

    if problems.is_empty() {
        println!(
            "valid: {policies} policies, {trusted} trusted keys, daemon key `{key}`, database {} ({store})",
            redact(&config.database_url)
        );
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("{} problem(s):", problems.len());
        for p in &problems {
            eprintln!("  {p}");
        }
        Ok(ExitCode::from(1))
    }
}
