//! Simulated telemetry: a scenario's install, download and lookup streams, its reports and the registry's background traffic, folded into the intake's minute buckets.

use compact_str::CompactString;

use crate::monitor::events::{Batch, Counts, Report, HOUR, LATENCY_BOUNDS, MINUTE};

/// Lookups a `lookup_latency` event produces each minute (registry-wide).
pub const LOOKUPS_PER_MINUTE: usize = 1_000;

/// Telemetry older than this when the store can take it again is dropped, as the daemon's
/// intake refuses events older than its horizon.
const HORIZON_MS: i64 = 3_600_000;

#[derive(Debug, Clone)]
enum Flow {
    Installs {
        package: String,
        version: String,
        per_minute: f64,
        failure_ratio: f64,
    },
    Downloads {
        package: String,
        version: String,
        per_minute: f64,
    },
    /// Lookups per latency bucket each minute.
    Lookups([i64; LATENCY_BOUNDS.len()]),
}

#[derive(Debug, Clone)]
struct Stream {
    from: i64,
    until: i64,
    flow: Flow,
    /// Fractional events carried to the next minute (all, failed), so rates are exact over time.
    carry: (f64, f64),
}

/// The registry's ordinary traffic: downloads and successful installs spread over every package
/// by popularity (weight `1 / (rank + 1)`), on each package's latest release.
#[derive(Debug, Clone, Default)]
pub struct Background {
    /// Package name and its latest release, most popular first.
    packages: Vec<(CompactString, Option<CompactString>)>,
    weights: Vec<f64>,
    /// Each package's downloads and installs a minute (none while it has no latest release, so
    /// that nothing accumulates), and what has accumulated short of a whole event: arrays of
    /// their own, for the minute's pass over every package.
    download_rate: Vec<f64>,
    install_rate: Vec<f64>,
    download_carry: Vec<f64>,
    install_carry: Vec<f64>,
    downloads_per_minute: f64,
    installs_per_minute: f64,
}

impl Background {
    pub fn new(
        packages: Vec<(String, Option<String>)>,
        downloads_per_hour: f64,
        installs_per_hour: f64,
    ) -> Self {
        let harmonic: f64 = (0..packages.len()).map(|i| 1.0 / (i as f64 + 1.0)).sum();
        let weights: Vec<f64> = (0..packages.len())
            .map(|i| 1.0 / (i as f64 + 1.0) / harmonic.max(f64::MIN_POSITIVE))
            .collect();
        let packages: Vec<(CompactString, Option<CompactString>)> = packages
            .into_iter()
            .map(|(p, v)| (p.into(), v.map(Into::into)))
            .collect();
        let mut b = Self {
            download_rate: vec![0.0; packages.len()],
            install_rate: vec![0.0; packages.len()],
            download_carry: vec![0.0; packages.len()],
            install_carry: vec![0.0; packages.len()],
            packages,
            weights,
            downloads_per_minute: downloads_per_hour / 60.0,
            installs_per_minute: installs_per_hour / 60.0,
        };
        for i in 0..b.packages.len() {
            b.set_rates(i);
        }
        b
    }

    fn set_rates(&mut self, i: usize) {
        let live = self.packages[i].1.is_some();
        let w = self.weights[i];
        self.download_rate[i] = if live {
            self.downloads_per_minute * w
        } else {
            0.0
        };
        self.install_rate[i] = if live {
            self.installs_per_minute * w
        } else {
            0.0
        };
    }

    /// Points a package's traffic at its current latest release (after a publish or a
    /// `restore_latest`).
    pub fn set_latest(&mut self, package: String, latest: Option<String>) {
        let latest = latest.map(CompactString::from);
        let i = match self.packages.iter().position(|(p, _)| *p == package) {
            Some(i) => {
                self.packages[i].1 = latest;
                i
            }
            None => {
                // A new package: the least popular.
                self.packages.push((package.into(), latest));
                let n = self.packages.len() as f64;
                let w = self.weights.last().copied().unwrap_or(1.0) * (n - 1.0) / n;
                self.weights.push(w);
                self.download_rate.push(0.0);
                self.install_rate.push(0.0);
                self.download_carry.push(0.0);
                self.install_carry.push(0.0);
                self.packages.len() - 1
            }
        };
        self.set_rates(i);
    }

    /// Adds minute `m` of the traffic to `batch`; returns the installs it made.
    fn minute(&mut self, m: i64, batch: &mut Batch) -> i64 {
        // First every package's accumulation (a pass the compiler can vectorize)...
        for (c, r) in self.download_carry.iter_mut().zip(&self.download_rate) {
            *c += r;
        }
        for (c, r) in self.install_carry.iter_mut().zip(&self.install_rate) {
            *c += r;
        }
        // ...then the few that reached a whole event.
        let mut made = 0;
        for i in 0..self.packages.len() {
            let (d, n) = (self.download_carry[i], self.install_carry[i]);
            if d < 1.0 && n < 1.0 {
                continue;
            }
            let (downloads, installs) = (d.floor(), n.floor());
            self.download_carry[i] = d - downloads;
            self.install_carry[i] = n - installs;
            let (package, Some(version)) = &self.packages[i] else {
                continue;
            };
            let c = batch
                .releases
                .entry((package.as_str().into(), version.as_str().into(), m))
                .or_default();
            c.downloads += downloads as i64;
            c.installs_ok += installs as i64;
            made += installs as i64;
            batch.events += (downloads + installs) as u64;
        }
        made
    }
}

/// The lookups of one minute whose 99th percentile is `p99_ms`: 99 % spread log-uniformly from
/// a quarter of `p99_ms` up to it, the slowest 1 % up to twice it.
fn lookup_histogram(p99_ms: f64) -> [i64; LATENCY_BOUNDS.len()] {
    let mut h = [0i64; LATENCY_BOUNDS.len()];
    for i in 0..LOOKUPS_PER_MINUTE {
        let q = (i as f64 + 0.5) / LOOKUPS_PER_MINUTE as f64;
        let ms = if q <= 0.99 {
            p99_ms * 4f64.powf((q - 0.99) / 0.99)
        } else {
            p99_ms * (1.0 + (q - 0.99) / 0.01)
        };
        let b = LATENCY_BOUNDS
            .iter()
            .position(|b| ms <= *b as f64)
            .unwrap_or(LATENCY_BOUNDS.len() - 1);
        h[b] += 1;
    }
    h
}

/// Every telemetry source of a run, and what is produced but not yet written.
#[derive(Debug, Default)]
pub struct Telemetry {
    streams: Vec<Stream>,
    pub background: Option<Background>,
    pending: Batch,
    /// Installs produced in each of the last 60 minutes: (minute, ok, failed).
    installs: std::collections::VecDeque<(i64, i64, i64)>,
}

impl Telemetry {
    pub fn installs(
        &mut self,
        package: &str,
        version: &str,
        per_hour: f64,
        failure_ratio: f64,
        from: i64,
        for_ms: i64,
    ) {
        self.push(
            from,
            for_ms,
            Flow::Installs {
                package: package.into(),
                version: version.into(),
                per_minute: per_hour / 60.0,
                failure_ratio,
            },
        );
    }

    pub fn downloads(
        &mut self,
        package: &str,
        version: &str,
        per_hour: f64,
        from: i64,
        for_ms: i64,
    ) {
        self.push(
            from,
            for_ms,
            Flow::Downloads {
                package: package.into(),
                version: version.into(),
                per_minute: per_hour / 60.0,
            },
        );
    }

    pub fn lookups(&mut self, p99_ms: f64, from: i64, for_ms: i64) {
        self.push(from, for_ms, Flow::Lookups(lookup_histogram(p99_ms)));
    }

    fn push(&mut self, from: i64, for_ms: i64, flow: Flow) {
        self.streams.push(Stream {
            from,
            until: from.saturating_add(for_ms),
            flow,
            carry: (0.0, 0.0),
        });
    }

    pub fn report(&mut self, r: Report) {
        self.pending.events += 1;
        self.pending.reports.push(r);
    }

    /// Produces the minutes in `[from, to)` of every source.
    pub fn advance(&mut self, from: i64, to: i64) {
        let mut m = from.div_euclid(MINUTE) * MINUTE;
        while m < to {
            self.minute(m);
            m += MINUTE;
        }
        self.streams.retain(|s| s.until > to);
    }

    /// The share of the installs produced in the hour before `now` that failed (0 without
    /// installs).
    pub fn install_failure_ratio(&self, now: i64) -> f64 {
        let (ok, failed) = self
            .installs
            .iter()
            .filter(|(m, _, _)| *m >= now - HOUR && *m < now)
            .fold((0, 0), |(o, f), (_, ok, failed)| (o + ok, f + failed));
        failed as f64 / (ok + failed).max(1) as f64
    }

    fn minute(&mut self, m: i64) {
        let (ok, failed) = self.produce(m);
        self.installs.push_back((m, ok, failed));
        while self.installs.front().is_some_and(|(t, _, _)| *t < m - HOUR) {
            self.installs.pop_front();
        }
    }

    /// Produces minute `m` of every source; returns the installs produced (ok, failed).
    fn produce(&mut self, m: i64) -> (i64, i64) {
        let batch = &mut self.pending;
        let mut installs = (0, 0);
        if let Some(b) = &mut self.background {
            installs.0 += b.minute(m, batch);
        }
        for s in self
            .streams
            .iter_mut()
            .filter(|s| s.from <= m && m < s.until)
        {
            match &s.flow {
                Flow::Installs {
                    package,
                    version,
                    per_minute,
                    failure_ratio,
                } => {
                    s.carry.0 += per_minute;
                    let n = s.carry.0.floor();
                    s.carry.0 -= n;
                    s.carry.1 += n * failure_ratio;
                    let failed = s.carry.1.floor().min(n);
                    s.carry.1 -= failed;
                    let c = batch
                        .releases
                        .entry((package.as_str().into(), version.as_str().into(), m))
                        .or_default();
                    c.add(&Counts {
                        installs_ok: (n - failed) as i64,
                        installs_failed: failed as i64,
                        downloads: 0,
                    });
                    installs.0 += (n - failed) as i64;
                    installs.1 += failed as i64;
                    batch.events += n as u64;
                }
                Flow::Downloads {
                    package,
                    version,
                    per_minute,
                } => {
                    s.carry.0 += per_minute;
                    let n = s.carry.0.floor();
                    s.carry.0 -= n;
                    batch
                        .releases
                        .entry((package.as_str().into(), version.as_str().into(), m))
                        .or_default()
                        .downloads += n as i64;
                    batch.events += n as u64;
                }
                Flow::Lookups(h) => {
                    for (i, n) in h.iter().enumerate().filter(|(_, n)| **n > 0) {
                        *batch.lookups.entry((m, i)).or_default() += n;
                    }
                    batch.events += LOOKUPS_PER_MINUTE as u64;
                }
            }
        }
        installs
    }

    /// What is ready to be written, without what has grown older than the intake's horizon
    /// while the store was down (counted in the second value).
    pub fn take(&mut self, now: i64) -> (Batch, u64) {
        let mut b = std::mem::take(&mut self.pending);
        let before = b.releases.len() + b.lookups.len() + b.reports.len();
        let oldest = now - HORIZON_MS;
        b.releases.retain(|(_, _, m), _| *m >= oldest);
        b.lookups.retain(|(m, _), _| *m >= oldest);
        b.reports.retain(|r| r.at >= oldest);
        let dropped = before - (b.releases.len() + b.lookups.len() + b.reports.len());
        (b, dropped as u64)
    }

    /// Keeps a batch the store could not take, for the next attempt.
    pub fn keep(&mut self, batch: Batch) {
        self.pending.merge(batch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_exact_over_time_and_failures_follow_the_ratio() {
        let mut t = Telemetry::default();
        t.installs("a", "1.0.0", 90.0, 0.25, 0, 2 * 3_600_000);
        let (mut ok, mut failed) = (0, 0);
        for hour in 0..3 {
            t.advance(hour * 3_600_000, (hour + 1) * 3_600_000);
            let (b, dropped) = t.take((hour + 1) * 3_600_000);
            assert_eq!(dropped, 0);
            assert!(b.releases.keys().all(|(_, _, m)| *m < 2 * 3_600_000));
            for c in b.releases.values() {
                ok += c.installs_ok;
                failed += c.installs_failed;
            }
        }
        assert_eq!(ok + failed, 180);
        assert_eq!(failed, 45);
    }

    #[test]
    fn the_lookup_histogram_has_its_99th_percentile_where_asked() {
        let h = lookup_histogram(800.0);
        assert_eq!(h.iter().sum::<i64>(), LOOKUPS_PER_MINUTE as i64);
        // Cumulative share up to each bound: 99 % at or under 800 ms, not 99 % under 500 ms.
        let upto = |bound: i64| -> i64 {
            LATENCY_BOUNDS
                .iter()
                .zip(h)
                .filter(|(b, _)| **b <= bound)
                .map(|(_, n)| n)
                .sum()
        };
        assert!(upto(1000) >= 990, "{h:?}");
        assert!(upto(500) < 990, "{h:?}");
        assert_eq!(upto(100), 0, "a quarter of 800 ms is 200 ms: {h:?}");
    }

    #[test]
    fn background_follows_popularity_and_old_minutes_are_dropped() {
        let mut t = Telemetry {
            background: Some(Background::new(
                (0..100)
                    .map(|i| (format!("p{i}"), Some("1.0.0".into())))
                    .collect(),
                6_000.0,
                0.0,
            )),
            ..Default::default()
        };
        t.advance(0, 60 * MINUTE);
        let (b, dropped) = t.take(60 * MINUTE);
        assert_eq!(dropped, 0);
        let of = |p: &str| -> i64 {
            b.releases
                .iter()
                .filter(|((n, _, _), _)| n == p)
                .map(|(_, c)| c.downloads)
                .sum()
        };
        let total: i64 = b.releases.values().map(|c| c.downloads).sum();
        assert!((5_900..=6_000).contains(&total), "{total}");
        assert!(of("p0") > 10 * of("p20"), "{} {}", of("p0"), of("p20"));
        t.keep(b);
        let (b, dropped) = t.take(3 * 60 * MINUTE);
        assert!(b.releases.is_empty());
        assert!(dropped > 0);
    }
}
