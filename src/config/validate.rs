//! A configuration file's settings checked and applied, every problem collected with its line and field: durations, URLs, limits, sections.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::file::{ConfigFile, FetchFile, LearningFile, RegistryFile, RetentionFile};
use super::{Config, ConfigError, RegistryKind, RegistrySettings};
use crate::analyze::settings;
use crate::located::line_of;

/// Where the problems go, and what names their place.
struct Check<'a> {
    path: &'a Path,
    src: &'a str,
    problems: Vec<ConfigError>,
}

type Spanned<T> = toml::Spanned<T>;

impl Check<'_> {
    fn invalid(&mut self, field: &str, span: Range<usize>, reason: String) {
        self.problems.push(ConfigError::Invalid {
            file: self.path.to_path_buf(),
            line: line_of(self.src, span.start),
            field: field.into(),
            reason,
        });
    }

    /// A relative path resolved against the file's directory.
    fn rel(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.path.parent().unwrap_or(Path::new(".")).join(p)
        }
    }

    /// A duration within `min..=max`, or None (the problem noted).
    fn duration(
        &mut self,
        field: &str,
        v: &Spanned<String>,
        min: Duration,
        max: Duration,
        bounds: &str,
    ) -> Option<Duration> {
        match humantime::parse_duration(v.get_ref()) {
            Err(e) => self.invalid(field, v.span(), format!("not a duration: {e}")),
            Ok(d) if d < min || d > max => self.invalid(field, v.span(), bounds.into()),
            Ok(d) => return Some(d),
        }
        None
    }

    fn url(&mut self, field: &str, v: &Spanned<String>) -> Option<String> {
        let url = v.get_ref().trim_end_matches('/');
        if url.starts_with("http://") || url.starts_with("https://") {
            return Some(url.to_string());
        }
        self.invalid(
            field,
            v.span(),
            format!("`{url}` is not an http:// or https:// URL"),
        );
        None
    }

    fn int(&mut self, field: &str, v: &Spanned<i64>, range: Range<i64>) -> Option<i64> {
        let n = *v.get_ref();
        if range.contains(&n) {
            return Some(n);
        }
        self.invalid(
            field,
            v.span(),
            format!("{n} is outside {}..={}", range.start, range.end - 1),
        );
        None
    }
}

const SECOND: Duration = Duration::from_secs(1);
const HOUR: Duration = Duration::from_secs(3600);
const FOREVER: Duration = Duration::from_secs(u64::MAX / 4);

/// Applies a file's settings onto `config`; every problem, each with its line and field.
pub(super) fn apply(
    mut config: Config,
    f: ConfigFile,
    path: &Path,
    src: &str,
) -> (Config, Vec<ConfigError>) {
    let mut c = Check {
        path,
        src,
        problems: Vec::new(),
    };
    paths(&mut c, &mut config, &f);
    loop_settings(&mut c, &mut config, &f);
    listener(&mut c, &mut config, &f);
    telemetry(&mut c, &mut config, &f);
    if let Some(d) = &f.detectors {
        if let Err((at, field, reason)) = settings::apply(d, &mut config.detectors) {
            c.invalid(&field, at..at, reason);
        }
    }
    if let Some(l) = &f.learning {
        learning(&mut c, &mut config, l);
    }
    if let Some(r) = &f.retention {
        retention(&mut c, &mut config, r);
    }
    notify(&mut c, &mut config, &f);
    if let Some(r) = &f.registry {
        registry(&mut c, &mut config.registry, r);
    }
    if let Some(v) = f.on_task_failure {
        config.on_task_failure = v;
    }
    if let Some(v) = f.log_format {
        config.log_format = v;
    }
    if let Some(v) = f.dry_run {
        config.dry_run = v;
    }
    if let Some(v) = f.require_signed_policies {
        config.require_signed_policies = v;
    }
    (config, c.problems)
}

/// The stores, keys and folders, and the token files (named, not read).
fn paths(c: &mut Check<'_>, config: &mut Config, f: &ConfigFile) {
    if let Some(url) = &f.database_url {
        config.database_url = if url.starts_with("postgres") || url.starts_with("sqlite:") {
            url.clone()
        } else {
            c.rel(Path::new(url)).display().to_string()
        };
    }
    for (value, slot) in [
        (&f.policies, &mut config.policies),
        (&f.trusted_keys, &mut config.trusted_keys),
        (&f.key_file, &mut config.key_file),
        (&f.artifact_root, &mut config.artifact_root),
    ] {
        if let Some(p) = value {
            *slot = c.rel(p);
        }
    }
    if let Some(p) = &f.intake_token_file {
        config.intake_token_file = Some(c.rel(p));
    }
    if let Some(p) = &f.admin_token_file {
        config.admin_token_file = Some(c.rel(p));
    }
}

/// The cycle's timing, shutdown and the lease.
fn loop_settings(c: &mut Check<'_>, config: &mut Config, f: &ConfigFile) {
    for (field, value, slot, min) in [
        (
            "interval",
            &f.interval,
            &mut config.interval,
            Duration::ZERO,
        ),
        (
            "full_scan_interval",
            &f.full_scan_interval,
            &mut config.full_scan_interval,
            Duration::ZERO,
        ),
        (
            "shutdown_grace",
            &f.shutdown_grace,
            &mut config.shutdown_grace,
            Duration::ZERO,
        ),
        ("lease_ttl", &f.lease_ttl, &mut config.lease_ttl, SECOND),
    ] {
        let Some(v) = value else { continue };
        let bounds = if min.is_zero() {
            "must be more than zero"
        } else {
            "must be at least 1s"
        };
        let floor = min.max(Duration::from_nanos(1));
        if let Some(d) = c.duration(field, v, floor, FOREVER, bounds) {
            *slot = d;
        }
    }
}

/// The HTTP listener, the admin API's address, traces.
fn listener(c: &mut Check<'_>, config: &mut Config, f: &ConfigFile) {
    if let Some(v) = &f.admin_url {
        if let Some(url) = c.url("admin_url", v) {
            config.admin_url = Some(url);
        }
    }
    if let Some(l) = &f.listen {
        match l.get_ref().parse() {
            Ok(a) => config.listen = Some(a),
            Err(e) => c.invalid("listen", l.span(), format!("not a socket address: {e}")),
        }
    }
    if let Some(v) = &f.otlp_endpoint {
        if let Some(url) = c.url("otlp_endpoint", v) {
            config.otlp_endpoint = Some(url);
        }
    }
}

/// The intake's limits and telemetry retention.
fn telemetry(c: &mut Check<'_>, config: &mut Config, f: &ConfigFile) {
    if let Some(n) = &f.intake_max_body {
        if let Some(v) = c.int("intake_max_body", n, 1024..(1 << 30) + 1) {
            config.intake_max_body = v as usize;
        }
    }
    if let Some(v) = &f.intake_max_age {
        let six_hours = Duration::from_secs(6 * 3600);
        let bounds = "must be between 1m and 6h";
        if let Some(d) = c.duration(
            "intake_max_age",
            v,
            Duration::from_secs(60),
            six_hours,
            bounds,
        ) {
            config.horizon.max_age_ms = d.as_millis() as i64;
        }
    }
    if let Some(v) = &f.telemetry_retention {
        let floor = Duration::from_secs(73 * 3600);
        let bounds = "must be at least 73h: the longest burn-rate window is 3 days";
        if let Some(d) = c.duration("telemetry_retention", v, floor, FOREVER, bounds) {
            config.telemetry_retention = d;
        }
    }
}

fn learning(c: &mut Check<'_>, config: &mut Config, l: &LearningFile) {
    if let Some(v) = &l.window {
        if let Some(d) = c.duration("learning.window", v, HOUR, FOREVER, "must be at least 1h") {
            config.learning.window = d;
        }
    }
    if let Some(v) = &l.min_judged {
        if let Some(n) = c.int("learning.min_judged", v, 1..i64::MAX) {
            config.learning.min_judged = n;
        }
    }
    if let Some(v) = &l.max_bad_fraction {
        let f = *v.get_ref();
        if f > 0.0 && f <= 1.0 {
            config.learning.max_bad_fraction = f;
        } else {
            c.invalid(
                "learning.max_bad_fraction",
                v.span(),
                format!("{f} is not in (0, 1]"),
            );
        }
    }
    if let Some(d) = l.demote {
        config.learning.demote = d;
    }
}

fn retention(c: &mut Check<'_>, config: &mut Config, r: &RetentionFile) {
    if let Some(v) = &r.schedule {
        match <cron::Schedule as std::str::FromStr>::from_str(v.get_ref()) {
            Ok(s) => config.compaction.schedule = s,
            Err(e) => c.invalid(
                "retention.schedule",
                v.span(),
                format!("not a cron expression (sec min hour dom mon dow): {e}"),
            ),
        }
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
        let Some(v) = value else { continue };
        if let Some(d) = c.duration(field, v, HOUR, FOREVER, "must be at least 1h") {
            *slot = d;
        }
    }
}

fn notify(c: &mut Check<'_>, config: &mut Config, f: &ConfigFile) {
    if let Some(v) = &f.notify_webhook {
        if c.url("notify_webhook", v).is_some() {
            config.notify.default_webhook = Some(v.get_ref().clone());
        }
    }
    if let Some(v) = &f.notify_timeout {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(120));
        let bounds = "must be between 100ms and 2m";
        if let Some(d) = c.duration("notify_timeout", v, min, max, bounds) {
            config.notify.timeout = d;
        }
    }
    if let Some(v) = &f.notify_max_tries {
        if let Some(n) = c.int("notify_max_tries", v, 1..51) {
            config.notify.max_tries = n;
        }
    }
}

/// The `[registry]` section onto `settings`.
fn registry(c: &mut Check<'_>, settings: &mut RegistrySettings, r: &RegistryFile) {
    if let Some(k) = &r.kind {
        match k.get_ref().as_str() {
            "sql" => settings.kind = RegistryKind::Sql,
            "ggen-marketplace" => settings.kind = RegistryKind::GgenMarketplace,
            other => c.invalid(
                "registry.kind",
                k.span(),
                format!("`{other}` is not a registry kind (`sql` or `ggen-marketplace`)"),
            ),
        }
    }
    for (value, slot) in [
        (&r.checkout, &mut settings.checkout),
        (&r.catalog, &mut settings.catalog),
        (&r.publish, &mut settings.publish),
    ] {
        if let Some(p) = value {
            *slot = Some(c.rel(p));
        }
    }
    if let Some(a) = &r.archives {
        let base = c.rel(Path::new("."));
        settings.archives = Some(crate::registry::marketplace::Archives::parse(a, &base));
    }
    if let Some(b) = r.require_signatures {
        settings.require_signatures = b;
    }
    if let Some(b) = r.watch {
        settings.watch = Some(b);
    }
    if let Some(f) = &r.fetch {
        fetch(c, settings, f);
    }
}

/// `[registry.fetch]`: the limits of every HTTP(S) artifact fetch.
fn fetch(c: &mut Check<'_>, settings: &mut RegistrySettings, f: &FetchFile) {
    let (min, max) = (Duration::from_millis(100), HOUR);
    let bounds = "must be between 100ms and 1h";
    if let Some(v) = &f.connect_timeout {
        if let Some(d) = c.duration("registry.fetch.connect_timeout", v, min, max, bounds) {
            settings.fetch.connect_timeout = d;
        }
    }
    if let Some(v) = &f.timeout {
        if let Some(d) = c.duration("registry.fetch.timeout", v, min, max, bounds) {
            settings.fetch.timeout = d;
        }
    }
    if let Some(v) = &f.max_bytes {
        if let Some(n) = c.int("registry.fetch.max_bytes", v, 1024..(1 << 32) + 1) {
            settings.fetch.max_bytes = n as u64;
        }
    }
    if let Some(v) = &f.concurrency {
        if let Some(n) = c.int("registry.fetch.concurrency", v, 1..257) {
            settings.fetch.concurrency = n as usize;
        }
    }
}
