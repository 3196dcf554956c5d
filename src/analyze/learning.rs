//! Detectors that learn: download baselines (EWMA of hourly downloads) and corroborated reports.

use std::collections::{BTreeMap, HashMap};

use super::checks::condition;
use super::lifecycle::Condition;
use super::settings::Settings;
use super::windows::{Windows, HOURS_KEPT};
use crate::knowledge::learned::Baseline;
use crate::model::{FindingKind, Severity, Subject};
use crate::monitor::events::{Report, HOUR};

type Labels = serde_json::Map<String, serde_json::Value>;

/// At most this many empty hours are folded one by one after a gap; a longer gap has decayed
/// the baseline to nothing anyway.
const MAX_CATCH_UP_HOURS: i64 = 24 * 14;

/// West's update of an exponentially weighted mean and variance.
pub fn fold(b: &mut Baseline, x: f64, alpha: f64) {
    let diff = x - b.mean;
    let incr = alpha * diff;
    b.mean += incr;
    b.var = (1.0 - alpha) * (b.var + diff * incr);
    b.samples += 1;
}

/// How unusual `x` is against the baseline: its distance from the mean in standard deviations,
/// with the deviation at least that of a Poisson count of the mean (downloads are counts).
pub fn z_score(b: &Baseline, x: f64) -> f64 {
    let sd = b.var.sqrt().max(b.mean.max(1.0).sqrt());
    (x - b.mean) / sd
}

#[derive(Debug, Default)]
pub struct Downloads {
    pub baselines: HashMap<String, Baseline>,
    /// The last complete hour already folded, under which settings, and the anomalies it gave:
    /// until the next hour completes (or the settings change) there is nothing new to fold.
    folded: Option<(i64, [f64; 4], Vec<Condition>)>,
    /// Whether a baseline changed since the last save, and when that was.
    unsaved: bool,
    saved_at: Option<i64>,
}

/// Baselines are saved this often, not at every hour's fold: after a restart, the hours since
/// the last save are folded again from the telemetry the store keeps (at least 73 hours).
pub const SAVE_BASELINES_EVERY: i64 = 24 * HOUR;

impl Downloads {
    /// Folds every complete hour not yet folded, judging the last against the baseline before
    /// it; returns the anomalies of the last complete hour and whether the baselines are due to
    /// be saved (every `SAVE_BASELINES_EVERY`). Within an hour the work is done once, at its
    /// first cycle: a package first seen with downloads later in that hour gets its baseline at
    /// the next hour's fold. Hours missed (a restart, a gap) are folded from the windows where
    /// they hold them, as zeros before that.
    pub fn cycle(&mut self, w: &Windows, s: &Settings, now: i64) -> (Vec<Condition>, bool) {
        let last_complete = now.div_euclid(HOUR) * HOUR - HOUR;
        let settings = [
            s.download_alpha,
            s.download_z,
            s.download_min_per_hour,
            s.download_warmup_hours as f64,
        ];
        if let Some((hour, under, out)) = &self.folded {
            if *hour == last_complete && *under == settings {
                return (out.clone(), self.due_for_saving(now));
            }
        }
        // The hours to fold: from the oldest baseline's next hour (at most what the windows
        // hold) to the last complete one.
        let first = self
            .baselines
            .values()
            .map(|b| b.last_hour + HOUR)
            .min()
            .unwrap_or(last_complete)
            .clamp(
                last_complete - (HOURS_KEPT / HOUR - 1) * HOUR,
                last_complete,
            );
        let hourly = w.downloads_between(first, last_complete);
        let x_of = |p: &str, h: i64| hourly.get(&(p, h)).copied().unwrap_or(0) as f64;
        // A package without a baseline gets one from its first hour with downloads.
        let mut new: BTreeMap<&str, i64> = BTreeMap::new();
        for ((p, h), x) in &hourly {
            if *x > 0 && !self.baselines.contains_key(*p) {
                let at = new.entry(p).or_insert(*h);
                *at = (*at).min(*h);
            }
        }
        self.unsaved |= !new.is_empty();
        for (p, h) in new {
            self.baselines.insert(
                p.to_string(),
                Baseline {
                    mean: x_of(p, h),
                    var: 0.0,
                    samples: 1,
                    last_hour: h,
                },
            );
        }
        let mut out = Vec::new();
        for (p, b) in self.baselines.iter_mut() {
            if b.last_hour >= last_complete {
                continue;
            }
            self.unsaved = true;
            let gap = (last_complete - b.last_hour) / HOUR;
            let start = last_complete - (gap.min(MAX_CATCH_UP_HOURS) - 1) * HOUR;
            let mut h = start;
            while h <= last_complete {
                let x = x_of(p, h);
                if h == last_complete {
                    let z = if b.samples >= s.download_warmup_hours {
                        z_score(b, x)
                    } else {
                        0.0
                    };
                    if z.abs() >= s.download_z && x.max(b.mean) >= s.download_min_per_hour {
                        out.push(anomaly(p, h, x, b.mean, z));
                    }
                }
                fold(b, x, s.download_alpha);
                h += HOUR;
            }
            b.last_hour = last_complete;
        }
        self.folded = Some((last_complete, settings, out.clone()));
        (out, self.due_for_saving(now))
    }

    /// Whether the baselines changed and a save is due.
    fn due_for_saving(&self, now: i64) -> bool {
        self.unsaved
            && !self
                .saved_at
                .is_some_and(|t| now - t < SAVE_BASELINES_EVERY && now >= t)
    }

    /// The baselines as they are were saved at `now`. Until this is called, a due save stays
    /// due: a save that failed is tried again at the next cycle.
    pub fn saved(&mut self, now: i64) {
        self.saved_at = Some(now);
        self.unsaved = false;
    }
}

/// The anomaly of `p`'s downloads in `hour`: `x` against a baseline of `mean`, `z` apart.
fn anomaly(p: &str, hour: i64, x: f64, mean: f64, z: f64) -> Condition {
    let dir = if z > 0.0 { "spike" } else { "drop" };
    let mut labels = Labels::new();
    labels.insert("downloads".into(), x.into());
    labels.insert("baseline".into(), mean.into());
    labels.insert("z".into(), z.into());
    labels.insert("direction".into(), dir.into());
    condition(
        FindingKind::DownloadAnomaly,
        Severity::Warning,
        Subject {
            package: p.to_string(),
            version: None,
        },
        z,
        format!(
            "{p}: {x} downloads in the hour from {}, against a baseline of {mean:.1} ({dir}, z = {z:.1})",
            crate::clock::rfc3339(hour),
        ),
        labels,
    )
}

/// Reports of the window, per release: (reporter, category) -> when.
#[derive(Debug, Default)]
pub struct Reports {
    by_release: HashMap<(String, String), HashMap<(String, String), i64>>,
}

impl Reports {
    pub fn apply(&mut self, reports: &[Report]) {
        for r in reports {
            self.by_release
                .entry((r.package.clone(), r.version.clone()))
                .or_default()
                .insert((r.reporter.clone(), r.category.clone()), r.at);
        }
    }

    /// Warning on any report in the window; critical when enough distinct reporters call the
    /// same release malware.
    pub fn cycle(&mut self, s: &Settings, now: i64) -> Vec<Condition> {
        let from = now - s.report_window_ms;
        self.by_release.retain(|_, m| {
            m.retain(|_, at| *at >= from);
            !m.is_empty()
        });
        let mut out = Vec::new();
        for ((p, v), m) in &self.by_release {
            let mut reporters: Vec<&str> = m.keys().map(|k| k.0.as_str()).collect();
            reporters.sort_unstable();
            reporters.dedup();
            let mut malware: Vec<&str> = m
                .keys()
                .filter(|k| k.1 == "malware")
                .map(|k| k.0.as_str())
                .collect();
            malware.sort_unstable();
            malware.dedup();
            let critical = malware.len() >= s.report_corroboration;
            let mut categories: Vec<&str> = m.keys().map(|k| k.1.as_str()).collect();
            categories.sort_unstable();
            categories.dedup();
            let mut labels = Labels::new();
            labels.insert("reporters".into(), reporters.len().into());
            labels.insert("malware_reporters".into(), malware.len().into());
            labels.insert("categories".into(), categories.join(",").into());
            out.push(condition(
                FindingKind::Reported,
                if critical {
                    Severity::Critical
                } else {
                    Severity::Warning
                },
                Subject {
                    package: p.clone(),
                    version: Some(v.clone()),
                },
                reporters.len() as f64,
                format!(
                    "{p}@{v}: reported by {} reporter(s) ({}){}",
                    reporters.len(),
                    categories.join(", "),
                    if critical {
                        format!("; {} independently report malware", malware.len())
                    } else {
                        String::new()
                    }
                ),
                labels,
            ));
        }
        out
    }
}
