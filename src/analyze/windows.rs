//! Rolling telemetry windows in memory (minute buckets for 6 h, hour buckets for 3 days) and the SRE workbook's multiwindow burn rates over them.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

use std::sync::Arc;

use compact_str::CompactString;

use crate::knowledge::series::SeriesName;
use crate::knowledge::telemetry::TelemetryDelta;
use crate::monitor::events::{Counts, HOUR, LATENCY_BOUNDS, MINUTE};

/// Minute buckets are kept this long: the longest window read from them is 6 h.
pub const MINUTES_KEPT: i64 = 6 * HOUR + MINUTE;
/// Hour buckets are kept this long: the longest window is 3 days.
pub const HOURS_KEPT: i64 = 72 * HOUR + HOUR;

/// Buckets of one width, oldest first, each the sum of what the batches added to it.
#[derive(Debug, Clone)]
struct Buckets<T> {
    width: i64,
    slots: VecDeque<(i64, T)>,
}

impl<T: Copy + Default> Buckets<T> {
    fn new(width: i64) -> Self {
        Self {
            width,
            slots: VecDeque::new(),
        }
    }

    /// The bucket starting at `bucket`, created empty where missing (batches mostly add to
    /// the newest bucket, so the search starts from the back).
    fn at(&mut self, bucket: i64) -> &mut T {
        let i = match self.slots.back() {
            Some((b, _)) if *b == bucket => self.slots.len() - 1,
            Some((b, _)) if *b < bucket => {
                self.slots.push_back((bucket, T::default()));
                self.slots.len() - 1
            }
            _ => match self.slots.binary_search_by_key(&bucket, |s| s.0) {
                Ok(i) => i,
                Err(i) => {
                    self.slots.insert(i, (bucket, T::default()));
                    i
                }
            },
        };
        &mut self.slots[i].1
    }

    fn prune(&mut self, before: i64) {
        while self.slots.front().is_some_and(|s| s.0 < before) {
            self.slots.pop_front();
        }
    }

    /// Sum over the window (now - w, now], each bucket weighted by the share of its time span
    /// (up to now, for the current bucket) that lies in the window.
    fn sum(&self, now: i64, w: i64, mut add: impl FnMut(&T, f64)) {
        let from = now - w;
        for (b, v) in self.slots.iter().rev() {
            let end = (*b + self.width).min(now);
            if end <= from {
                break;
            }
            if *b > now {
                continue;
            }
            let span = (end - b).max(1);
            let inside = end - (*b).max(from);
            add(v, inside as f64 / span as f64);
        }
    }
}

/// Good and bad events over a window.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Tally {
    pub good: f64,
    pub bad: f64,
}

impl Tally {
    pub fn total(&self) -> f64 {
        self.good + self.bad
    }
    /// How fast the error budget burns: the error ratio over the budget (1 - SLO).
    pub fn burn(&self, slo: f64) -> f64 {
        if self.total() <= 0.0 {
            return 0.0;
        }
        (self.bad / self.total()) / (1.0 - slo)
    }
}

/// One release's install and download counts.
#[derive(Debug, Clone)]
pub struct Series {
    /// The release's names.
    pub name: Arc<SeriesName>,
    /// Its package's name, kept inline (short names need no allocation) for the per-row
    /// download sums.
    package: CompactString,
    minutes: Buckets<Counts>,
    hours: Buckets<Counts>,
    /// The latest bucket start with a failed install: a series without one in a window has
    /// nothing to burn there, and is not summed at all.
    last_failure: Option<i64>,
}

impl Series {
    fn new(name: Arc<SeriesName>) -> Self {
        Self {
            package: CompactString::new(&name.package),
            name,
            minutes: Buckets::new(MINUTE),
            hours: Buckets::new(HOUR),
            last_failure: None,
        }
    }
}

fn pick(w: i64) -> bool {
    // Windows up to 6 h are read from minute buckets, longer ones from hour buckets.
    w <= 6 * HOUR
}

impl Series {
    /// Whether a failed install may fall in the window of length `w` ending at `now` (an hour
    /// bucket that starts before the window may reach into it).
    pub fn failed_within(&self, now: i64, w: i64) -> bool {
        self.last_failure.is_some_and(|t| t + HOUR > now - w)
    }

    pub fn installs(&self, now: i64, w: i64) -> Tally {
        let mut t = Tally::default();
        let b = if pick(w) { &self.minutes } else { &self.hours };
        b.sum(now, w, |c, f| {
            t.good += c.installs_ok as f64 * f;
            t.bad += c.installs_failed as f64 * f;
        });
        t
    }

    pub fn is_empty(&self) -> bool {
        self.minutes.slots.is_empty() && self.hours.slots.is_empty()
    }
}

/// The registry-wide lookup latency histogram.
#[derive(Debug, Clone)]
pub struct Latency {
    minutes: Buckets<[i64; LATENCY_BOUNDS.len()]>,
    hours: Buckets<[i64; LATENCY_BOUNDS.len()]>,
}

impl Default for Latency {
    fn default() -> Self {
        Self {
            minutes: Buckets::new(MINUTE),
            hours: Buckets::new(HOUR),
        }
    }
}

impl Latency {
    /// Lookups within `threshold_ms` are good, slower ones bad.
    pub fn tally(&self, now: i64, w: i64, threshold_ms: i64) -> Tally {
        let mut t = Tally::default();
        let b = if pick(w) { &self.minutes } else { &self.hours };
        b.sum(now, w, |hist, f| {
            for (i, n) in hist.iter().enumerate() {
                if LATENCY_BOUNDS[i] <= threshold_ms {
                    t.good += *n as f64 * f;
                } else {
                    t.bad += *n as f64 * f;
                }
            }
        });
        t
    }
}

/// All telemetry windows.
#[derive(Debug, Default)]
pub struct Windows {
    /// Each release's series, by its number in the store.
    releases: foldhash::HashMap<i64, Series>,
    pub latency: Latency,
    /// The series with a failed install in the windows, in order: the only ones that can burn
    /// (most series have none, and are not looked at).
    failing: BTreeSet<i64>,
    /// Per hour, each package's downloads in it (every release together), for the download
    /// baselines; packages without downloads in an hour are absent.
    downloaded: BTreeMap<i64, foldhash::HashMap<CompactString, i64>>,
    last_prune: Option<i64>,
}

/// Buckets that no window reaches any more are forgotten this often (sums never read them).
const PRUNE_EVERY: i64 = HOUR;

impl Windows {
    /// Adds what batches wrote: a minute row counts in its minute and in its hour; an hour row
    /// (minutes folded by retention, read only after a restart) in its hour.
    pub fn apply(&mut self, delta: &TelemetryDelta) {
        for r in &delta.buckets {
            if r.width != MINUTE && r.width != HOUR {
                continue;
            }
            let s = match self.releases.entry(r.series) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(e) => match delta.name(r.series) {
                    Some(name) => e.insert(Series::new(name)),
                    // Not named by the store: nothing to judge it as.
                    None => continue,
                },
            };
            let hour = r.bucket.div_euclid(HOUR) * HOUR;
            if r.width == MINUTE {
                s.minutes.at(r.bucket).add(&r.counts);
            }
            s.hours.at(hour).add(&r.counts);
            if r.counts.downloads > 0 {
                let packages = self.downloaded.entry(hour).or_default();
                match packages.get_mut(s.package.as_str()) {
                    Some(n) => *n += r.counts.downloads,
                    None => {
                        packages.insert(s.package.clone(), r.counts.downloads);
                    }
                }
            }
            if r.counts.installs_failed > 0 {
                s.last_failure = Some(s.last_failure.map_or(r.bucket, |t| t.max(r.bucket)));
                self.failing.insert(r.series);
            }
        }
        let lookups = &delta.lookups;
        for l in lookups {
            if l.width != MINUTE && l.width != HOUR {
                continue;
            }
            if l.width == MINUTE {
                self.latency.minutes.at(l.bucket)[l.bound] += l.lookups;
            }
            self.latency.hours.at(l.bucket.div_euclid(HOUR) * HOUR)[l.bound] += l.lookups;
        }
    }

    /// Series with a failed install that may fall in a window of length `w` ending at `now`.
    pub fn failing_within(&self, now: i64, w: i64) -> impl Iterator<Item = &Series> {
        self.failing.iter().filter_map(move |k| {
            let s = self.releases.get(k)?;
            s.failed_within(now, w).then_some(s)
        })
    }

    /// The series of a release, if it has one.
    pub fn series(&self, package: &str, version: &str) -> Option<&Series> {
        self.releases
            .values()
            .find(|s| s.name.package == package && s.name.version == version)
    }

    /// Downloads per (package, hour) of the hours from `first` to `last`, every release of a
    /// package together; packages without downloads in an hour are absent.
    pub fn downloads_between(&self, first: i64, last: i64) -> foldhash::HashMap<(&str, i64), i64> {
        let mut out: foldhash::HashMap<(&str, i64), i64> = Default::default();
        for (h, packages) in self.downloaded.range(first..=last) {
            out.extend(packages.iter().map(|(p, n)| ((p.as_str(), *h), *n)));
        }
        out
    }

    /// Forgets buckets no window reaches any more (at most every hour: a sum stops at the
    /// window's edge, so what is kept beyond it changes no result).
    pub fn prune(&mut self, now: i64) {
        if self
            .last_prune
            .is_some_and(|t| now - t < PRUNE_EVERY && now >= t)
        {
            return;
        }
        self.last_prune = Some(now);
        self.releases.retain(|_, s| {
            s.minutes.prune(now - MINUTES_KEPT);
            s.hours.prune(now - HOURS_KEPT);
            !s.is_empty()
        });
        let releases = &self.releases;
        self.failing.retain(|id| {
            releases
                .get(id)
                .is_some_and(|s| s.failed_within(now, HOURS_KEPT))
        });
        self.downloaded = self.downloaded.split_off(&(now - HOURS_KEPT));
        self.latency.minutes.prune(now - MINUTES_KEPT);
        self.latency.hours.prune(now - HOURS_KEPT);
    }
}

/// A pair of windows of the SRE workbook: both must burn faster than `factor`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pair {
    pub long_ms: i64,
    pub short_ms: i64,
    pub factor: f64,
    pub critical: bool,
}

/// 1 h with 5 m at 14.4x and 6 h with 30 m at 6x page; 3 d with 6 h at 1x is a ticket.
pub const PAIRS: [Pair; 3] = [
    Pair {
        long_ms: HOUR,
        short_ms: 5 * MINUTE,
        factor: 14.4,
        critical: true,
    },
    Pair {
        long_ms: 6 * HOUR,
        short_ms: 30 * MINUTE,
        factor: 6.0,
        critical: true,
    },
    Pair {
        long_ms: 72 * HOUR,
        short_ms: 6 * HOUR,
        factor: 1.0,
        critical: false,
    },
];

/// The most severe pair burning now: (pair, long burn, short burn, events in the long window).
pub fn burning(
    tally: impl Fn(i64) -> Tally,
    slo: f64,
    min_events: i64,
) -> Option<(Pair, f64, f64, f64)> {
    for pair in PAIRS {
        let long = tally(pair.long_ms);
        if long.total() < min_events as f64 || long.total() <= 0.0 {
            continue;
        }
        let (bl, bs) = (long.burn(slo), tally(pair.short_ms).burn(slo));
        if bl >= pair.factor && bs >= pair.factor {
            return Some((pair, bl, bs, long.total()));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::knowledge::telemetry::BucketRow;

    fn apply(w: &mut Windows, rows: &[BucketRow]) {
        w.apply(&TelemetryDelta::of(
            rows.to_vec(),
            vec![],
            &[(1, "p", "1.0.0")],
        ));
    }

    fn row(bucket: i64, width: i64, ok: i64, failed: i64) -> BucketRow {
        BucketRow {
            series: 1,
            width,
            bucket,
            counts: Counts {
                installs_ok: ok,
                installs_failed: failed,
                downloads: 0,
            },
        }
    }

    #[test]
    fn downloads_are_summed_per_package_and_hour_over_its_releases_and_both_widths() {
        let mut w = Windows::default();
        let t0 = 100 * HOUR;
        let dl = |series: i64, width: i64, bucket: i64, downloads: i64| BucketRow {
            series,
            width,
            bucket,
            counts: Counts {
                downloads,
                ..Counts::default()
            },
        };
        w.apply(&TelemetryDelta::of(
            vec![
                dl(1, MINUTE, t0 + MINUTE, 3),
                dl(1, MINUTE, t0 + 2 * MINUTE, 4),
                dl(2, MINUTE, t0 + 59 * MINUTE, 5),
                dl(3, MINUTE, t0, 7),
                dl(1, HOUR, t0 + HOUR, 11),
                dl(1, MINUTE, t0 + 2 * HOUR, 13),
                dl(3, MINUTE, t0 + MINUTE, 0),
            ],
            vec![],
            &[(1, "p", "1.0.0"), (2, "p", "2.0.0"), (3, "q", "1.0.0")],
        ));
        let between = w.downloads_between(t0, t0 + HOUR);
        let mut got: Vec<_> = between.iter().map(|((p, h), n)| (*p, *h, *n)).collect();
        got.sort();
        assert_eq!(
            got,
            [("p", t0, 12), ("p", t0 + HOUR, 11), ("q", t0, 7)],
            "both releases of p in its hour, an hour row in its hour, the third hour left out"
        );
        // Pruning forgets the hours no window reaches.
        w.prune(t0 + 2 * HOUR + HOURS_KEPT);
        assert!(w.downloads_between(t0, t0 + HOUR).is_empty());
        assert_eq!(w.downloads_between(t0 + 2 * HOUR, t0 + 2 * HOUR).len(), 1);
    }

    #[test]
    fn a_series_is_skipped_only_when_no_failure_can_fall_in_the_window() {
        let mut w = Windows::default();
        let t0 = 100 * HOUR;
        apply(
            &mut w,
            &[row(t0, HOUR, 50, 0), row(t0 + 5 * HOUR, HOUR, 50, 0)],
        );
        let s = &w.series("p", "1.0.0").unwrap();
        assert!(
            !s.failed_within(t0 + 6 * HOUR, 72 * HOUR),
            "no failure at all"
        );
        apply(&mut w, &[row(t0, HOUR, 40, 10)]);
        let s = &w.series("p", "1.0.0").unwrap();
        let w3d = 72 * HOUR;
        // The hour bucket at t0 reaches into a window that starts before t0 + 1h.
        assert!(s.failed_within(t0 + w3d, w3d));
        assert!(s.failed_within(t0 + w3d + HOUR - 1, w3d));
        assert!(!s.failed_within(t0 + w3d + HOUR, w3d));
        // Where it is skipped, the sum it stands for has indeed no failure.
        assert_eq!(s.installs(t0 + w3d + HOUR, w3d).bad, 0.0);
        assert!(s.installs(t0 + w3d + HOUR - MINUTE, w3d).bad > 0.0);
    }

    #[test]
    fn a_window_weighs_the_bucket_at_its_edge_by_the_share_inside() {
        let mut w = Windows::default();
        let t0 = 100 * HOUR;
        // Ten minutes of 10 installs each, one failure per minute.
        let rows: Vec<_> = (0..10)
            .map(|i| row(t0 + i * MINUTE, MINUTE, 9, 1))
            .collect();
        apply(&mut w, &rows);
        let s = &w.series("p", "1.0.0").unwrap();
        let now = t0 + 10 * MINUTE;
        let five = s.installs(now, 5 * MINUTE);
        assert_eq!(five.total(), 50.0);
        let half = s.installs(now, 5 * MINUTE + 30_000);
        assert!((half.total() - 55.0).abs() < 1e-9, "{half:?}");
        // A later batch adds to the bucket (rows are deltas), and to its hour.
        apply(&mut w, &[row(t0 + 9 * MINUTE, MINUTE, 0, 10)]);
        let s = &w.series("p", "1.0.0").unwrap();
        assert_eq!(s.installs(now, MINUTE).bad, 11.0);
        assert_eq!(s.installs(now, 72 * HOUR).total(), 110.0);
    }

    #[test]
    fn an_hour_row_counts_in_its_hour_only_and_a_minute_row_in_both() {
        let mut w = Windows::default();
        let t0 = 100 * HOUR;
        apply(
            &mut w,
            &[row(t0, HOUR, 60, 0), row(t0 + HOUR + MINUTE, MINUTE, 5, 0)],
        );
        let s = &w.series("p", "1.0.0").unwrap();
        let now = t0 + 2 * HOUR;
        assert_eq!(s.installs(now, 6 * HOUR).total(), 5.0, "minutes only");
        assert_eq!(s.installs(now, 72 * HOUR).total(), 65.0, "both hours");
    }

    #[test]
    fn both_windows_of_a_pair_must_burn() {
        let slo = 0.95;
        // Long window burning at 15x, short at 14x: not enough for the 14.4x pair.
        let t = |long: Tally, short: Tally| {
            move |w: i64| match w {
                HOUR => long,
                w if w == 5 * MINUTE => short,
                _ => Tally::default(),
            }
        };
        let at = |bad: f64| Tally {
            good: 100.0 - bad,
            bad,
        };
        assert!(burning(t(at(75.0), at(70.0)), slo, 20).is_none());
        let (pair, bl, _, _) = burning(t(at(75.0), at(73.0)), slo, 20).unwrap();
        assert!(pair.critical && (bl - 15.0).abs() < 1e-9);
        // Too few events in the long window: no judgement.
        assert!(burning(t(at(75.0), at(75.0)), slo, 101).is_none());
    }
}
