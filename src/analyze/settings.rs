//! Detector settings (`[detectors.KIND]` in mapek.toml): thresholds and each kind's `for` / `keep_firing_for`, with their defaults.

use serde::Deserialize;
use std::collections::HashMap;
use toml::Spanned;

use super::lifecycle::Timing;
use crate::model::FindingKind;
use crate::monitor::events::LATENCY_BOUNDS;

const MIN: i64 = 60_000;
const HOUR: i64 = 60 * MIN;
const DAY: i64 = 24 * HOUR;

/// The validated settings of every detector.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub timing: HashMap<FindingKind, Timing>,
    /// Fraction of installs that must succeed.
    pub install_slo: f64,
    /// Fewer installs than this in a pair's long window: no judgement (one failure of two is
    /// not a burn).
    pub install_min_events: i64,
    pub latency_slo: f64,
    pub latency_threshold_ms: i64,
    pub latency_min_events: i64,
    /// A drop of more than this many points below the window's best score is a regression.
    pub quality_drop_points: f64,
    pub quality_window_ms: i64,
    pub unmaintained_after_ms: i64,
    pub download_alpha: f64,
    pub download_z: f64,
    pub download_min_per_hour: f64,
    pub download_warmup_hours: i64,
    pub typosquat_new_within_ms: i64,
    pub typosquat_popular_downloads: i64,
    pub typosquat_max_distance: usize,
    pub report_window_ms: i64,
    pub report_corroboration: usize,
}

impl Default for Settings {
    fn default() -> Self {
        use FindingKind::*;
        let t = |for_ms, keep_firing_for_ms| Timing {
            for_ms,
            keep_firing_for_ms,
        };
        let timing = HashMap::from([
            (InstallFailureBurn, t(0, 15 * MIN)),
            (LookupLatencyBurn, t(0, 15 * MIN)),
            (QualityRegression, t(0, HOUR)),
            (Unmaintained, t(0, DAY)),
            (DependencyUnavailable, t(5 * MIN, 10 * MIN)),
            (DependencyCycle, t(0, 0)),
            (DownloadAnomaly, t(0, HOUR)),
            (TyposquatSuspect, t(0, 0)),
            (Reported, t(0, HOUR)),
            (RegistryUnreachable, t(2 * MIN, 5 * MIN)),
        ]);
        Self {
            timing,
            install_slo: 0.95,
            install_min_events: 20,
            latency_slo: 0.99,
            latency_threshold_ms: 100,
            latency_min_events: 100,
            quality_drop_points: 10.0,
            quality_window_ms: 7 * DAY,
            unmaintained_after_ms: 730 * DAY,
            download_alpha: 0.05,
            download_z: 4.0,
            download_min_per_hour: 100.0,
            download_warmup_hours: 24,
            typosquat_new_within_ms: 30 * DAY,
            typosquat_popular_downloads: 1_000,
            typosquat_max_distance: 2,
            report_window_ms: 30 * DAY,
            report_corroboration: 2,
        }
    }
}

impl Settings {
    pub fn timing(&self, kind: FindingKind) -> Timing {
        self.timing.get(&kind).copied().unwrap_or_default()
    }
}

/// One `[detectors.KIND]` table as written; which keys apply depends on the kind (a key no kind
/// has is reported by the configuration's reader).
#[derive(Debug, Deserialize, Default)]
pub struct DetectorFile {
    #[serde(rename = "for")]
    for_: Option<Spanned<String>>,
    keep_firing_for: Option<Spanned<String>>,
    slo: Option<Spanned<f64>>,
    min_events: Option<Spanned<i64>>,
    threshold_ms: Option<Spanned<i64>>,
    drop_points: Option<Spanned<f64>>,
    window: Option<Spanned<String>>,
    after: Option<Spanned<String>>,
    alpha: Option<Spanned<f64>>,
    z: Option<Spanned<f64>>,
    min_per_hour: Option<Spanned<f64>>,
    warmup_hours: Option<Spanned<i64>>,
    new_within: Option<Spanned<String>>,
    popular_downloads: Option<Spanned<i64>>,
    max_distance: Option<Spanned<i64>>,
    corroboration: Option<Spanned<i64>>,
}

/// A setting that is wrong: the byte offset of its value, the key, and why.
pub type Invalid = (usize, String, String);

fn duration(v: &Spanned<String>, key: &str) -> Result<i64, Invalid> {
    humantime::parse_duration(v.get_ref())
        .map(|d| d.as_millis() as i64)
        .map_err(|e| (v.span().start, key.into(), format!("not a duration: {e}")))
}

fn ranged<T: PartialOrd + Copy + std::fmt::Display>(
    v: &Spanned<T>,
    key: &str,
    lo: T,
    hi: T,
) -> Result<T, Invalid> {
    let x = *v.get_ref();
    if x < lo || x > hi {
        return Err((
            v.span().start,
            key.into(),
            format!("{x} is outside {lo}..={hi}"),
        ));
    }
    Ok(x)
}

/// Keys a kind does not use are refused, so a misplaced key is not silently ignored.
fn only(kind: &str, d: &DetectorFile, allowed: &[&str]) -> Result<(), Invalid> {
    let present: [(&str, Option<usize>); 14] = [
        ("slo", d.slo.as_ref().map(|s| s.span().start)),
        ("min_events", d.min_events.as_ref().map(|s| s.span().start)),
        (
            "threshold_ms",
            d.threshold_ms.as_ref().map(|s| s.span().start),
        ),
        (
            "drop_points",
            d.drop_points.as_ref().map(|s| s.span().start),
        ),
        ("window", d.window.as_ref().map(|s| s.span().start)),
        ("after", d.after.as_ref().map(|s| s.span().start)),
        ("alpha", d.alpha.as_ref().map(|s| s.span().start)),
        ("z", d.z.as_ref().map(|s| s.span().start)),
        (
            "min_per_hour",
            d.min_per_hour.as_ref().map(|s| s.span().start),
        ),
        (
            "warmup_hours",
            d.warmup_hours.as_ref().map(|s| s.span().start),
        ),
        ("new_within", d.new_within.as_ref().map(|s| s.span().start)),
        (
            "popular_downloads",
            d.popular_downloads.as_ref().map(|s| s.span().start),
        ),
        (
            "max_distance",
            d.max_distance.as_ref().map(|s| s.span().start),
        ),
        (
            "corroboration",
            d.corroboration.as_ref().map(|s| s.span().start),
        ),
    ];
    for (key, at) in present {
        if let Some(at) = at {
            if !allowed.contains(&key) {
                return Err((
                    at,
                    key.into(),
                    format!(
                        "`{kind}` has no setting `{key}` (it has: for, keep_firing_for{}{})",
                        if allowed.is_empty() { "" } else { ", " },
                        allowed.join(", ")
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Applies the `[detectors]` tables over the defaults.
pub fn apply(
    files: &HashMap<String, Spanned<DetectorFile>>,
    s: &mut Settings,
) -> Result<(), Invalid> {
    for (name, d) in files {
        let Some(kind) = FindingKind::parse(name) else {
            return Err((
                d.span().start,
                format!("detectors.{name}"),
                "no such finding kind".into(),
            ));
        };
        let d = d.get_ref();
        let mut timing = s.timing(kind);
        if let Some(v) = &d.for_ {
            timing.for_ms = duration(v, "for")?;
        }
        if let Some(v) = &d.keep_firing_for {
            timing.keep_firing_for_ms = duration(v, "keep_firing_for")?;
        }
        s.timing.insert(kind, timing);
        apply_kind(kind, name, d, s)?;
    }
    Ok(())
}

/// The settings of one kind's table beyond its lifecycle timing.
fn apply_kind(
    kind: FindingKind,
    name: &str,
    d: &DetectorFile,
    s: &mut Settings,
) -> Result<(), Invalid> {
    use FindingKind::*;
    match kind {
        InstallFailureBurn => {
            only(name, d, &["slo", "min_events"])?;
            if let Some(v) = &d.slo {
                s.install_slo = ranged(v, "slo", 0.5, 0.99999)?;
            }
            if let Some(v) = &d.min_events {
                s.install_min_events = ranged(v, "min_events", 0, i64::MAX)?;
            }
        }
        LookupLatencyBurn => {
            only(name, d, &["slo", "min_events", "threshold_ms"])?;
            if let Some(v) = &d.slo {
                s.latency_slo = ranged(v, "slo", 0.5, 0.99999)?;
            }
            if let Some(v) = &d.min_events {
                s.latency_min_events = ranged(v, "min_events", 0, i64::MAX)?;
            }
            if let Some(v) = &d.threshold_ms {
                let t = *v.get_ref();
                let bounds = &LATENCY_BOUNDS[..LATENCY_BOUNDS.len() - 1];
                if !bounds.contains(&t) {
                    return Err((
                        v.span().start,
                        "threshold_ms".into(),
                        format!(
                            "{t} is not a bound of the latency histogram (one of {})",
                            bounds
                                .iter()
                                .map(|b| b.to_string())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    ));
                }
                s.latency_threshold_ms = t;
            }
        }
        QualityRegression => {
            only(name, d, &["drop_points", "window"])?;
            if let Some(v) = &d.drop_points {
                s.quality_drop_points = ranged(v, "drop_points", 0.0, 100.0)?;
            }
            if let Some(v) = &d.window {
                s.quality_window_ms = duration(v, "window")?;
            }
        }
        Unmaintained => {
            only(name, d, &["after"])?;
            if let Some(v) = &d.after {
                s.unmaintained_after_ms = duration(v, "after")?;
            }
        }
        DownloadAnomaly => {
            only(name, d, &["alpha", "z", "min_per_hour", "warmup_hours"])?;
            if let Some(v) = &d.alpha {
                s.download_alpha = ranged(v, "alpha", 0.001, 1.0)?;
            }
            if let Some(v) = &d.z {
                s.download_z = ranged(v, "z", 0.5, 1e6)?;
            }
            if let Some(v) = &d.min_per_hour {
                s.download_min_per_hour = ranged(v, "min_per_hour", 0.0, 1e12)?;
            }
            if let Some(v) = &d.warmup_hours {
                s.download_warmup_hours = ranged(v, "warmup_hours", 1, 24 * 365)?;
            }
        }
        TyposquatSuspect => {
            only(
                name,
                d,
                &["new_within", "popular_downloads", "max_distance"],
            )?;
            if let Some(v) = &d.new_within {
                s.typosquat_new_within_ms = duration(v, "new_within")?;
            }
            if let Some(v) = &d.popular_downloads {
                s.typosquat_popular_downloads = ranged(v, "popular_downloads", 0, i64::MAX)?;
            }
            if let Some(v) = &d.max_distance {
                s.typosquat_max_distance = ranged(v, "max_distance", 0, 3)? as usize;
            }
        }
        Reported => {
            only(name, d, &["window", "corroboration"])?;
            if let Some(v) = &d.window {
                s.report_window_ms = duration(v, "window")?;
            }
            if let Some(v) = &d.corroboration {
                s.report_corroboration = ranged(v, "corroboration", 1, 100)? as usize;
            }
        }
        _ => only(name, d, &[])?,
    }
    Ok(())
}
