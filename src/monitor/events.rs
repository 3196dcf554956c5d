//! Telemetry events as clients send them (`POST /v1/events`, newline-delimited JSON): parsing, validation, aggregation into buckets.

use serde::Deserialize;

pub use crate::model::telemetry::{
    Batch, Counts, Event, Report, EVENT_TYPES, HOUR, LATENCY_BOUNDS, MINUTE,
};
use crate::registry::valid_package_name;

/// Events may arrive late or with a skewed clock, within these limits.
#[derive(Debug, Clone, Copy)]
pub struct Horizon {
    /// An event older than this is refused: the windows it would count in are already judged.
    pub max_age_ms: i64,
    /// An event further in the future than this is refused.
    pub max_skew_ms: i64,
}

impl Default for Horizon {
    fn default() -> Self {
        Self {
            max_age_ms: HOUR,
            max_skew_ms: 5 * MINUTE,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Wire {
    Install {
        package: String,
        version: String,
        ok: bool,
        #[serde(default)]
        #[allow(dead_code)]
        error: Option<String>,
        at: Option<String>,
    },
    Download {
        package: String,
        version: String,
        at: Option<String>,
    },
    Lookup {
        latency_ms: f64,
        at: Option<String>,
    },
    Report {
        package: String,
        version: String,
        reporter: String,
        category: String,
        at: Option<String>,
    },
}

/// A line that was not taken, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Refusal {
    pub line: usize,
    pub reason: String,
}

fn text(field: &str, value: String, max: usize) -> Result<String, String> {
    if value.is_empty() {
        return Err(format!("field `{field}`: empty"));
    }
    if value.len() > max {
        return Err(format!("field `{field}`: longer than {max} bytes"));
    }
    if value.chars().any(char::is_control) {
        return Err(format!("field `{field}`: contains control characters"));
    }
    Ok(value)
}

fn package(value: String) -> Result<String, String> {
    if valid_package_name(&value) {
        Ok(value)
    } else {
        Err(format!(
            "field `package`: `{}` is not a package name (lower case [a-z0-9_-], 1-200 chars)",
            value.chars().take(80).collect::<String>()
        ))
    }
}

fn time(at: Option<String>, now: i64, horizon: Horizon) -> Result<i64, String> {
    let Some(at) = at else { return Ok(now) };
    let t = chrono::DateTime::parse_from_rfc3339(&at)
        .map_err(|e| format!("field `at`: not an RFC 3339 time: {e}"))?
        .timestamp_millis();
    if t < now - horizon.max_age_ms {
        return Err(format!(
            "field `at`: {at} is older than the intake accepts ({}s)",
            horizon.max_age_ms / 1000
        ));
    }
    if t > now + horizon.max_skew_ms {
        return Err(format!(
            "field `at`: {at} is in the future (more than {}s ahead)",
            horizon.max_skew_ms / 1000
        ));
    }
    Ok(t)
}

/// Parses and checks one line.
pub fn parse_line(line: &str, now: i64, horizon: Horizon) -> Result<Event, String> {
    let wire: Wire = serde_json::from_str(line).map_err(|e| {
        let s = e.to_string();
        // serde's "at line 1 column N" is about the line itself: keep the column only.
        match s.rsplit_once(" at line 1 column ") {
            Some((msg, col)) => format!("{msg} (column {col})"),
            None => s,
        }
    })?;
    Ok(match wire {
        Wire::Install {
            package: p,
            version,
            ok,
            at,
            ..
        } => Event::Install {
            package: package(p)?,
            version: text("version", version, 100)?,
            ok,
            at: time(at, now, horizon)?,
        },
        Wire::Download {
            package: p,
            version,
            at,
        } => Event::Download {
            package: package(p)?,
            version: text("version", version, 100)?,
            at: time(at, now, horizon)?,
        },
        Wire::Lookup { latency_ms, at } => {
            if !latency_ms.is_finite() || !(0.0..=3_600_000.0).contains(&latency_ms) {
                return Err(format!(
                    "field `latency_ms`: {latency_ms} is not between 0 and 3600000"
                ));
            }
            Event::Lookup {
                latency_ms,
                at: time(at, now, horizon)?,
            }
        }
        Wire::Report {
            package: p,
            version,
            reporter,
            category,
            at,
        } => Event::Report(Report {
            package: package(p)?,
            version: text("version", version, 100)?,
            reporter: text("reporter", reporter, 200)?,
            category: text("category", category, 64)?.to_lowercase(),
            at: time(at, now, horizon)?,
        }),
    })
}

/// Parses a request body: the valid lines as a batch, the others refused with their line number
/// (1-based). Blank lines are neither.
pub fn parse_body(body: &str, now: i64, horizon: Horizon) -> (Batch, Vec<Refusal>) {
    let (events, refused) = parse_lines(body, now, horizon);
    let mut batch = Batch::default();
    for (_, e) in events {
        batch.add(e);
    }
    (batch, refused)
}

/// Parses a request body into its valid events, each with its line number (1-based), and the
/// refused lines.
pub fn parse_lines(body: &str, now: i64, horizon: Horizon) -> (Vec<(usize, Event)>, Vec<Refusal>) {
    let mut events = Vec::new();
    let mut refused = Vec::new();
    for (i, line) in body.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        match parse_line(line, now, horizon) {
            Ok(e) => events.push((i + 1, e)),
            Err(reason) => refused.push(Refusal {
                line: i + 1,
                reason,
            }),
        }
    }
    (events, refused)
}

/// The release an event is about (a lookup is about the registry as a whole: None).
pub fn release_of(e: &Event) -> Option<(&str, &str)> {
    match e {
        Event::Install {
            package, version, ..
        }
        | Event::Download {
            package, version, ..
        } => Some((package, version)),
        Event::Report(r) => Some((&r.package, &r.version)),
        Event::Lookup { .. } => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::telemetry::minute_of;

    const NOW: i64 = 1_795_000_000_000;

    fn at(offset_ms: i64) -> String {
        crate::clock::rfc3339(NOW + offset_ms)
    }

    #[test]
    fn valid_lines_are_kept_and_invalid_ones_named_by_line() {
        let body = format!(
            "{{\"type\":\"install\",\"package\":\"rest-api\",\"version\":\"1.0.0\",\"ok\":false,\"error\":\"checksum\",\"at\":\"{}\"}}\n\
             \n\
             {{\"type\":\"download\",\"package\":\"Rest Api\",\"version\":\"1.0.0\"}}\n\
             {{\"type\":\"lookup\",\"latency_ms\":12.5}}\n\
             not json\n\
             {{\"type\":\"teleport\"}}\n\
             {{\"type\":\"report\",\"package\":\"sparql-cli\",\"version\":\"1.0.0\",\"reporter\":\"alice\",\"category\":\"Malware\"}}\n\
             {{\"type\":\"lookup\",\"latency_ms\":-1}}\n",
            at(-1000)
        );
        let (batch, refused) = parse_body(&body, NOW, Horizon::default());
        assert_eq!(batch.events, 3);
        let lines: Vec<usize> = refused.iter().map(|r| r.line).collect();
        assert_eq!(lines, vec![3, 5, 6, 8]);
        assert!(refused[0].reason.contains("field `package`"), "{refused:?}");
        assert!(refused[2].reason.contains("unknown variant `teleport`"));
        assert!(refused[3].reason.contains("latency_ms"));
        assert_eq!(batch.reports[0].category, "malware");
        let c = batch
            .releases
            .get(&("rest-api".into(), "1.0.0".into(), minute_of(NOW - 1000)))
            .copied()
            .unwrap_or_default();
        assert_eq!(c.installs_failed, 1);
        assert_eq!(
            batch.lookups.get(&(minute_of(NOW), 2)),
            Some(&1),
            "12.5 ms is within 25"
        );
    }

    #[test]
    fn events_outside_the_horizon_are_refused() {
        let h = Horizon::default();
        let line = |off: i64| {
            format!(
                "{{\"type\":\"download\",\"package\":\"p\",\"version\":\"1\",\"at\":\"{}\"}}",
                at(off)
            )
        };
        assert!(parse_line(&line(-HOUR), NOW, h).is_ok());
        assert!(parse_line(&line(-HOUR - 1000), NOW, h)
            .unwrap_err()
            .contains("older"));
        assert!(parse_line(&line(5 * MINUTE), NOW, h).is_ok());
        assert!(parse_line(&line(5 * MINUTE + 1000), NOW, h)
            .unwrap_err()
            .contains("future"));
    }

    #[test]
    fn latency_falls_in_the_first_bound_it_does_not_exceed() {
        let mut b = Batch::default();
        for ms in [100.0, 100.5, 99_999.0] {
            b.add(Event::Lookup {
                latency_ms: ms,
                at: NOW,
            });
        }
        let m = minute_of(NOW);
        assert_eq!(b.lookups.get(&(m, 5)), Some(&1), "100 ms is within 100");
        assert_eq!(b.lookups.get(&(m, 6)), Some(&1), "100.5 ms is over 100");
        assert_eq!(b.lookups.get(&(m, 16)), Some(&1));
    }
}
