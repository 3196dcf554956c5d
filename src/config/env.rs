//! `MAPEK_*` environment variables: every setting of `mapek.toml` overridden from the environment, with `__` between a section and its key.
//!
//! `MAPEK_INTERVAL=30s` sets `interval`; `MAPEK_LEARNING__WINDOW=7d` sets `window` in
//! `[learning]`; `MAPEK_DETECTORS__INSTALL_FAILURE_BURN__FOR=5m` sets `for` in
//! `[detectors.install_failure_burn]`. A value that reads as a TOML boolean, number or array
//! is taken as one, anything else as a string. The variables are applied after the file, so
//! they win; a bad one is refused with its name, like a bad line of the file.

use std::path::Path;

use super::{Config, ConfigError};

/// Variables of the same prefix that are not settings.
fn ignored(name: &str) -> bool {
    matches!(name, "LOG" | "PG_URL") || name.starts_with("TEST_")
}

/// The `MAPEK_*` settings among `vars`, as (variable, dotted key, TOML value).
fn settings(vars: impl Iterator<Item = (String, String)>) -> Vec<(String, Vec<String>, String)> {
    let mut out: Vec<_> = vars
        .filter_map(|(name, value)| {
            let rest = name.strip_prefix("MAPEK_")?;
            if rest.is_empty() || ignored(rest) {
                return None;
            }
            let key: Vec<String> = rest.split("__").map(|p| p.to_ascii_lowercase()).collect();
            Some((name, key, literal(&value)))
        })
        .collect();
    out.sort();
    out
}

/// `value` as a TOML value: itself when it reads as a boolean, number or array, else quoted.
fn literal(value: &str) -> String {
    let parsed = toml::from_str::<toml::Table>(&format!("v = {value}"));
    match parsed.ok().and_then(|t| t.get("v").cloned()) {
        Some(
            toml::Value::Boolean(_)
            | toml::Value::Integer(_)
            | toml::Value::Float(_)
            | toml::Value::Array(_),
        ) => value.trim().to_string(),
        _ => toml::Value::String(value.to_string()).to_string(),
    }
}

/// Applies the `MAPEK_*` variables of `vars` onto `config`; relative paths resolve against the
/// working directory.
pub fn apply(
    config: Config,
    vars: impl Iterator<Item = (String, String)>,
) -> Result<Config, ConfigError> {
    let settings = settings(vars);
    let mut config = config;
    // One variable at a time, so that a refusal names the variable it comes from.
    for (name, key, value) in settings {
        let (section, field) = key.split_at(key.len() - 1);
        let doc = if section.is_empty() {
            format!("{} = {value}\n", field[0])
        } else {
            format!("[{}]\n{} = {value}\n", section.join("."), field[0])
        };
        let pseudo = Path::new(".").join(format!("${name}"));
        config = config.apply(&pseudo, &doc).map_err(|e| match e {
            ConfigError::Invalid { field, reason, .. } => ConfigError::Env {
                var: name.clone(),
                field: if field == "-" { key.join(".") } else { field },
                reason,
            },
            other => other,
        })?;
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn vars(list: &[(&str, &str)]) -> impl Iterator<Item = (String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn variables_override_the_file_and_reach_into_sections() {
        let file = Config::parse(
            Path::new("/etc/mapek/mapek.toml"),
            "interval = \"10s\"\n[learning]\nmin_judged = 7\n",
        )
        .expect("file");
        let c = apply(
            file,
            vars(&[
                ("MAPEK_INTERVAL", "30s"),
                ("MAPEK_DRY_RUN", "true"),
                ("MAPEK_NOTIFY_MAX_TRIES", "3"),
                ("MAPEK_LEARNING__WINDOW", "7d"),
                ("MAPEK_LISTEN", "127.0.0.1:9801"),
                ("MAPEK_LOG", "debug"),
                ("MAPEK_TEST_DATABASE_URL", "postgres://x"),
                ("HOME", "/root"),
            ]),
        )
        .expect("applies");
        assert_eq!(c.interval, Duration::from_secs(30));
        assert!(c.dry_run);
        assert_eq!(c.notify.max_tries, 3);
        assert_eq!(c.learning.window, Duration::from_secs(7 * 86400));
        assert_eq!(c.learning.min_judged, 7, "the file's other keys stay");
        assert_eq!(c.listen, "127.0.0.1:9801".parse().ok());
        // The file's relative paths still resolve against the file.
        assert_eq!(c.policies, Path::new("/etc/mapek/policies"));
    }

    #[test]
    fn a_bad_or_unknown_variable_is_refused_by_name() {
        let base = Config::defaults(Path::new("."));
        let e = apply(base.clone(), vars(&[("MAPEK_INTERVAL", "soon")])).expect_err("bad");
        let text = e.to_string();
        assert!(
            text.contains("MAPEK_INTERVAL") && text.contains("not a duration"),
            "{text}"
        );
        let e = apply(base, vars(&[("MAPEK_INTERVALL", "30s")])).expect_err("unknown");
        assert!(e.to_string().contains("MAPEK_INTERVALL"), "{e}");
        assert!(e.to_string().contains("intervall"), "{e}");
    }
}
