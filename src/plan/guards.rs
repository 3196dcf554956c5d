//! Global guards (`policies/guards.toml`) and the circuit breaker they open.

use serde::{Deserialize, Serialize};
use std::path::Path;

use super::policy::PolicyError;
use super::window::Window;
use crate::located::{line_of, toml_error};

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 86_400_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    guards: RawGuards,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGuards {
    max_actions_per_cycle: Option<u32>,
    max_actions_per_hour: Option<u32>,
    max_registry_fraction_per_day: Option<toml::Spanned<f64>>,
    #[serde(default)]
    min_packages_per_day: u64,
    #[serde(default)]
    freeze: Vec<toml::Spanned<String>>,
    #[serde(default)]
    dry_run: bool,
}

/// The limits on the whole daemon. Without a `guards.toml` there are none.
#[derive(Debug, Clone, Default)]
pub struct Guards {
    pub max_actions_per_cycle: Option<u32>,
    pub max_actions_per_hour: Option<u32>,
    pub max_registry_fraction_per_day: Option<f64>,
    /// The share guard never allows fewer packages a day than this (a mapek extension, so that
    /// a small registry is not frozen by a percentage).
    pub min_packages_per_day: u64,
    pub freeze: Vec<Window>,
    pub dry_run: bool,
}

impl Guards {
    pub fn parse(file: &Path, src: &str) -> Result<Self, Vec<PolicyError>> {
        let err = |line: usize, field: &str, reason: String| PolicyError {
            file: file.to_path_buf(),
            line,
            field: field.into(),
            reason,
        };
        let raw: RawFile = toml::from_str(src).map_err(|e| {
            let (line, reason) = toml_error(src, &e);
            vec![err(
                line,
                &crate::located::field_at(src, line, &reason),
                reason,
            )]
        })?;
        let g = raw.guards;
        let mut errors = Vec::new();
        if let Some(f) = &g.max_registry_fraction_per_day {
            if !(0.0..=1.0).contains(f.get_ref()) {
                errors.push(err(
                    line_of(src, f.span().start),
                    "max_registry_fraction_per_day",
                    format!("{} is not a fraction between 0 and 1", f.get_ref()),
                ));
            }
        }
        let mut freeze = Vec::new();
        for f in &g.freeze {
            match Window::parse(f.get_ref()) {
                Ok(w) => freeze.push(w),
                Err(reason) => errors.push(err(line_of(src, f.span().start), "freeze", reason)),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Self {
            max_actions_per_cycle: g.max_actions_per_cycle,
            max_actions_per_hour: g.max_actions_per_hour,
            max_registry_fraction_per_day: g.max_registry_fraction_per_day.map(|f| f.into_inner()),
            min_packages_per_day: g.min_packages_per_day,
            freeze,
            dry_run: g.dry_run,
        })
    }

    /// The freeze window `now` lies in, if any.
    pub fn frozen(&self, now: i64) -> Option<&Window> {
        self.freeze.iter().find(|w| w.contains(now))
    }

    /// The first guard one more action would break, with how long it must stay quiet to close.
    pub fn over(&self, load: &Load, package_is_new_today: bool) -> Option<Trip> {
        if let Some(max) = self.max_actions_per_cycle {
            if load.this_cycle >= u64::from(max) {
                return Some(Trip {
                    guard: "max_actions_per_cycle".into(),
                    reason: format!("{} actions this cycle, the limit is {max}", load.this_cycle),
                    quiet_ms: HOUR_MS,
                });
            }
        }
        if let Some(max) = self.max_actions_per_hour {
            if load.last_hour >= u64::from(max) {
                return Some(Trip {
                    guard: "max_actions_per_hour".into(),
                    reason: format!(
                        "{} actions in the last hour, the limit is {max}",
                        load.last_hour
                    ),
                    quiet_ms: HOUR_MS,
                });
            }
        }
        if let Some(fraction) = self.max_registry_fraction_per_day {
            let allowed = ((fraction * load.registry_packages as f64).floor() as u64)
                .max(self.min_packages_per_day);
            if package_is_new_today && load.packages_today >= allowed {
                return Some(Trip {
                    guard: "max_registry_fraction_per_day".into(),
                    reason: format!(
                        "{} of {} packages remediated in the last day, the limit is {allowed} ({:.1} %)",
                        load.packages_today,
                        load.registry_packages,
                        fraction * 100.0
                    ),
                    quiet_ms: DAY_MS,
                });
            }
        }
        None
    }
}

/// What the daemon has done recently, as the guards count it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Load {
    pub this_cycle: u64,
    pub last_hour: u64,
    pub packages_today: u64,
    pub registry_packages: u64,
}

/// A guard that one more action would break.
#[derive(Debug, Clone, PartialEq)]
pub struct Trip {
    pub guard: String,
    pub reason: String,
    /// How long without new pressure before the circuit closes by itself.
    pub quiet_ms: i64,
}

/// The circuit breaker, kept in the knowledge store. Open: nothing executes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Circuit {
    pub open: bool,
    pub guard: String,
    pub reason: String,
    pub opened_at: i64,
    /// The last time an action was held back by the open circuit (or tripped it).
    pub last_pressure: i64,
    pub quiet_ms: i64,
}

impl Circuit {
    pub fn open(trip: &Trip, now: i64) -> Self {
        Self {
            open: true,
            guard: trip.guard.clone(),
            reason: trip.reason.clone(),
            opened_at: now,
            last_pressure: now,
            quiet_ms: trip.quiet_ms,
        }
    }

    /// Whether an open circuit has been quiet long enough to close by itself.
    pub fn quiet_enough(&self, now: i64) -> bool {
        self.open && now - self.last_pressure >= self.quiet_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guards(src: &str) -> Result<Guards, Vec<PolicyError>> {
        Guards::parse(Path::new("guards.toml"), src)
    }

    #[test]
    fn the_spec_example_loads() {
        let g = guards(
            "[guards]\nmax_actions_per_cycle = 50\nmax_actions_per_hour = 200\n\
             max_registry_fraction_per_day = 0.02\nfreeze = [\"0 0 0 24 12 *\"]\ndry_run = false\n",
        )
        .expect("loads");
        assert_eq!(g.max_actions_per_cycle, Some(50));
        assert_eq!(g.freeze.len(), 1);
    }

    #[test]
    fn errors_name_the_line_and_field() {
        let e =
            guards("[guards]\nmax_actions_per_cycle = 5\nfreeze = [\"not cron\"]\n").unwrap_err();
        assert_eq!((e[0].line, e[0].field.as_str()), (3, "freeze"));
        let e = guards("[guards]\nmax_registry_fraction_per_day = 2.0\n").unwrap_err();
        assert_eq!(e[0].field, "max_registry_fraction_per_day");
        let e = guards("[guards]\nmax_actions = 5\n").unwrap_err();
        assert!(e[0].reason.contains("unknown field"), "{:?}", e);
    }

    #[test]
    fn each_guard_trips_at_its_limit() {
        let g = guards(
            "[guards]\nmax_actions_per_cycle = 3\nmax_actions_per_hour = 10\nmax_registry_fraction_per_day = 0.1\n",
        )
        .expect("loads");
        let load = Load {
            this_cycle: 2,
            last_hour: 9,
            packages_today: 9,
            registry_packages: 100,
        };
        assert_eq!(g.over(&load, true), None);
        let t = g
            .over(
                &Load {
                    this_cycle: 3,
                    ..load
                },
                true,
            )
            .expect("trips");
        assert_eq!(t.guard, "max_actions_per_cycle");
        let t = g
            .over(
                &Load {
                    last_hour: 10,
                    ..load
                },
                true,
            )
            .expect("trips");
        assert_eq!(t.guard, "max_actions_per_hour");
        let t = g
            .over(
                &Load {
                    packages_today: 10,
                    ..load
                },
                true,
            )
            .expect("trips");
        assert_eq!(t.guard, "max_registry_fraction_per_day");
        // A package already remediated today does not add to the share.
        assert_eq!(
            g.over(
                &Load {
                    packages_today: 10,
                    ..load
                },
                false
            ),
            None
        );
    }

    #[test]
    fn an_open_circuit_closes_only_after_a_quiet_window() {
        let trip = Trip {
            guard: "max_actions_per_hour".into(),
            reason: String::new(),
            quiet_ms: HOUR_MS,
        };
        let mut c = Circuit::open(&trip, 0);
        assert!(!c.quiet_enough(HOUR_MS - 1));
        c.last_pressure = 1_000;
        assert!(!c.quiet_enough(HOUR_MS));
        assert!(c.quiet_enough(HOUR_MS + 1_000));
    }
}
