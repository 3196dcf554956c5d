//! Telemetry as the loop counts it: valid events, their minute buckets and the batch the intake commits, shared by the intake, the knowledge store and analysis.

use compact_str::CompactString;

/// Minute and hour buckets, in milliseconds: counts are kept per bucket, never per event.
pub const MINUTE: i64 = 60_000;
pub const HOUR: i64 = 3_600_000;

/// Upper bounds (ms) of the lookup latency histogram; the last one is "everything slower".
/// A latency SLO's threshold must be one of them, so "under the threshold" is exact.
pub const LATENCY_BOUNDS: [i64; 17] = [
    5,
    10,
    25,
    50,
    75,
    100,
    150,
    200,
    250,
    300,
    400,
    500,
    750,
    1_000,
    2_000,
    5_000,
    i64::MAX,
];

/// One valid event.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Install {
        package: String,
        version: String,
        ok: bool,
        at: i64,
    },
    Download {
        package: String,
        version: String,
        at: i64,
    },
    Lookup {
        latency_ms: f64,
        at: i64,
    },
    Report(Report),
}

/// A user's report that a release is bad.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub package: String,
    pub version: String,
    pub reporter: String,
    pub category: String,
    pub at: i64,
}

/// Install and download counts of one release in one bucket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub installs_ok: i64,
    pub installs_failed: i64,
    pub downloads: i64,
}

impl Counts {
    pub fn add(&mut self, o: &Counts) {
        self.installs_ok += o.installs_ok;
        self.installs_failed += o.installs_failed;
        self.downloads += o.downloads;
    }
}

/// Accepted events folded into minute buckets, ready to be written in one transaction.
#[derive(Debug, Default, Clone)]
pub struct Batch {
    /// (package, version, minute) -> counts
    pub releases: foldhash::HashMap<(CompactString, CompactString, i64), Counts>,
    /// (minute, index into LATENCY_BOUNDS) -> lookups
    pub lookups: foldhash::HashMap<(i64, usize), i64>,
    pub reports: Vec<Report>,
    pub events: u64,
    /// Events by type (install, download, lookup, report), for the metrics.
    pub by_type: [u64; 4],
}

/// The event types, in the order of [`Batch::by_type`].
pub const EVENT_TYPES: [&str; 4] = ["install", "download", "lookup", "report"];

/// The start of the minute bucket `at` falls in.
pub fn minute_of(at: i64) -> i64 {
    at.div_euclid(MINUTE) * MINUTE
}

impl Batch {
    pub fn add(&mut self, e: Event) {
        self.events += 1;
        self.by_type[match &e {
            Event::Install { .. } => 0,
            Event::Download { .. } => 1,
            Event::Lookup { .. } => 2,
            Event::Report(_) => 3,
        }] += 1;
        match e {
            Event::Install {
                package,
                version,
                ok,
                at,
            } => {
                let c = self
                    .releases
                    .entry((package.into(), version.into(), minute_of(at)))
                    .or_default();
                if ok {
                    c.installs_ok += 1;
                } else {
                    c.installs_failed += 1;
                }
            }
            Event::Download {
                package,
                version,
                at,
            } => {
                self.releases
                    .entry((package.into(), version.into(), minute_of(at)))
                    .or_default()
                    .downloads += 1;
            }
            Event::Lookup { latency_ms, at } => {
                let i = LATENCY_BOUNDS
                    .iter()
                    .position(|b| latency_ms <= *b as f64)
                    .unwrap_or(LATENCY_BOUNDS.len() - 1);
                *self.lookups.entry((minute_of(at), i)).or_default() += 1;
            }
            Event::Report(r) => self.reports.push(r),
        }
    }

    /// Folds another batch in (the intake writer commits several requests at once).
    pub fn merge(&mut self, other: Batch) {
        self.events += other.events;
        for (mine, theirs) in self.by_type.iter_mut().zip(other.by_type) {
            *mine += theirs;
        }
        for (k, c) in other.releases {
            self.releases.entry(k).or_default().add(&c);
        }
        for (k, n) in other.lookups {
            *self.lookups.entry(k).or_default() += n;
        }
        self.reports.extend(other.reports);
    }
}
