//! Cron windows (`window` of a policy, `freeze` of the guards): when a time lies inside one.

use chrono::{DateTime, Timelike, Utc};
use cron::Schedule;
use std::str::FromStr;

/// A cron expression read as a span of time rather than as instants.
///
/// Cron names instants to the second; a window is a span. The rule: a literal `0` in the
/// seconds field, and then in minutes and hours while they are `0` too, means "from the start
/// of" rather than "only at". So `0 * 8-18 * * Mon-Fri` is every minute from 08:00 to 18:59 on
/// weekdays, and `0 0 0 24 12 *` is the whole of 24 December. Times are UTC.
#[derive(Debug, Clone)]
pub struct Window {
    schedule: Schedule,
    /// How many of seconds, minutes, hours are spans (0 to 3).
    spans: usize,
}

impl Window {
    pub fn parse(src: &str) -> Result<Self, String> {
        let fields: Vec<&str> = src.split_whitespace().collect();
        if !(6..=7).contains(&fields.len()) {
            return Err(format!(
                "`{src}` has {} fields; a window is `sec min hour day-of-month month day-of-week [year]`",
                fields.len()
            ));
        }
        let schedule = Schedule::from_str(src)
            .map_err(|e| format!("`{src}` is not a cron expression: {e}"))?;
        let spans = fields.iter().take(3).take_while(|f| **f == "0").count();
        Ok(Self { schedule, spans })
    }

    pub fn source(&self) -> &str {
        self.schedule.source()
    }

    /// Whether the instant `ms` (milliseconds since the epoch) lies inside the window.
    pub fn contains(&self, ms: i64) -> bool {
        let Some(t) = DateTime::<Utc>::from_timestamp_millis(ms) else {
            return false;
        };
        let mut t = t.with_nanosecond(0).unwrap_or(t);
        if self.spans >= 1 {
            t = t.with_second(0).unwrap_or(t);
        }
        if self.spans >= 2 {
            t = t.with_minute(0).unwrap_or(t);
        }
        if self.spans >= 3 {
            t = t.with_hour(0).unwrap_or(t);
        }
        self.schedule.includes(t)
    }

    /// The next instant at or after `ms` inside the window (searched a year ahead at most).
    pub fn next_open(&self, ms: i64) -> Option<i64> {
        if self.contains(ms) {
            return Some(ms);
        }
        let t = DateTime::<Utc>::from_timestamp_millis(ms)?;
        let next = self.schedule.after(&t).next()?;
        Some(next.timestamp_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::Window;
    use chrono::{TimeZone, Utc};

    fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> i64 {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s)
            .single()
            .map(|t| t.timestamp_millis())
            .unwrap_or_default()
    }

    #[test]
    fn office_hours_window_spans_whole_minutes_on_weekdays() {
        let w = Window::parse("0 * 8-18 * * Mon-Fri").expect("parses");
        // 2026-11-20 is a Friday.
        assert!(w.contains(at(2026, 11, 20, 8, 0, 0)));
        assert!(w.contains(at(2026, 11, 20, 12, 34, 56)));
        assert!(w.contains(at(2026, 11, 20, 18, 59, 59)));
        assert!(!w.contains(at(2026, 11, 20, 19, 0, 0)));
        assert!(!w.contains(at(2026, 11, 20, 7, 59, 59)));
        assert!(!w.contains(at(2026, 11, 21, 12, 0, 0)), "Saturday");
        assert_eq!(
            w.next_open(at(2026, 11, 21, 12, 0, 0)),
            Some(at(2026, 11, 23, 8, 0, 0))
        );
    }

    #[test]
    fn freeze_on_a_day_covers_the_whole_day() {
        let w = Window::parse("0 0 0 24 12 *").expect("parses");
        assert!(w.contains(at(2026, 12, 24, 0, 0, 0)));
        assert!(w.contains(at(2026, 12, 24, 23, 59, 59)));
        assert!(!w.contains(at(2026, 12, 25, 0, 0, 0)));
        assert!(!w.contains(at(2026, 12, 23, 23, 59, 59)));
    }

    #[test]
    fn bad_expressions_are_refused_with_a_reason() {
        assert!(Window::parse("* * *").is_err());
        assert!(Window::parse("0 * 25 * * *").is_err());
        assert!(Window::parse("").is_err());
    }
}
