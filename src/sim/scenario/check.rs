//! A scenario's text checked into a `Scenario`: every problem with its line and field, sizes held to documented limits, events inside the scenario's time, `[config]` read as the daemon reads mapek.toml.

use std::path::Path;

use super::raw::{self, Raw};
use super::{
    duration_ms, Event, ExpectAction, ExpectFinal, ExpectFinding, Generate, Scenario,
    ScenarioError, Source,
};
use crate::located::{line_of, toml_error};

type S<T> = toml::Spanned<T>;

/// How big a scenario may be (docs/simulation.md); `mapek simulate --max-packages N --max-ticks N`
/// raises them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Packages of a generated registry.
    pub max_packages: usize,
    /// Cycles a run makes (duration / tick).
    pub max_ticks: i64,
    /// The shortest tick.
    pub min_tick_ms: i64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_packages: 1_000_000,
            max_ticks: 1_000_000,
            min_tick_ms: 1_000,
        }
    }
}

/// Where the problems go.
struct Check<'a> {
    file: &'a Path,
    src: &'a str,
    errors: Vec<ScenarioError>,
}

impl Check<'_> {
    fn err(&mut self, line: usize, field: &str, reason: String) {
        self.errors.push(ScenarioError {
            file: self.file.to_path_buf(),
            line,
            field: field.into(),
            reason,
        });
    }

    fn line(&self, start: usize) -> usize {
        line_of(self.src, start)
    }

    /// A duration longer than zero; 1 ms (the problem noted) otherwise.
    fn duration(&mut self, field: &str, v: &S<String>) -> i64 {
        let line = self.line(v.span().start);
        match duration_ms(v.get_ref()) {
            Ok(ms) if ms > 0 => ms,
            Ok(_) => {
                self.err(line, field, "must be longer than zero".into());
                1
            }
            Err(reason) => {
                self.err(line, field, reason);
                1
            }
        }
    }

    /// The run's length and tick, within the limits.
    fn times(&mut self, raw: &Raw, limits: &Limits) -> (i64, i64) {
        let duration = self.duration("scenario.duration", &raw.scenario.duration);
        let tick = match &raw.scenario.tick {
            Some(t) => {
                let ms = self.duration("scenario.tick", t);
                if ms < limits.min_tick_ms {
                    let line = self.line(t.span().start);
                    self.err(
                        line,
                        "scenario.tick",
                        format!(
                            "{ms} ms is shorter than the shortest tick, {} ms",
                            limits.min_tick_ms
                        ),
                    );
                }
                ms
            }
            None => 60_000,
        };
        let ticks = duration / tick.max(1);
        if ticks > limits.max_ticks {
            let line = self.line(raw.scenario.duration.span().start);
            self.err(
                line,
                "scenario.duration",
                format!(
                    "{ticks} ticks of {tick} ms is more than the limit of {} (raise it with --max-ticks)",
                    limits.max_ticks
                ),
            );
        }
        (duration, tick)
    }

    /// Where the registry comes from, within the limits.
    fn source(&mut self, raw: &Raw, base: &Path, limits: &Limits) -> Source {
        if let Some(b) = &raw.registry.background {
            let bad = |r: f64| !(0.0..=1e9).contains(&r) || r.is_nan();
            if bad(b.get_ref().downloads_per_hour) || bad(b.get_ref().installs_per_hour) {
                let line = self.line(b.span().start);
                self.err(
                    line,
                    "registry.background",
                    "rates are between 0 and 1e9 an hour".into(),
                );
            }
        }
        let registry_line = self.line(self.src.find("[registry]").unwrap_or(0));
        match (&raw.registry.generate, &raw.registry.import) {
            (Some(g), None) => {
                if g.packages > limits.max_packages {
                    self.err(
                        registry_line,
                        "registry.generate.packages",
                        format!(
                            "{} packages is more than the limit of {} (raise it with --max-packages)",
                            g.packages, limits.max_packages
                        ),
                    );
                }
                Source::Generate(g.clone())
            }
            (None, Some(i)) => Source::Import(base.join(i.get_ref())),
            _ => {
                self.err(
                    registry_line,
                    "registry",
                    "give exactly one of `generate` and `import`".into(),
                );
                Source::Generate(Generate {
                    packages: 0,
                    mean_dependencies: 0.0,
                    publishers: 1,
                    max_releases: 1,
                    signed_fraction: 1.0,
                    unmaintained_fraction: 0.0,
                    cycles: 0,
                })
            }
        }
    }

    /// The events, in time order; one outside the scenario's time is refused.
    fn events(&mut self, raw: &Raw, duration: i64) -> Vec<Event> {
        let mut events = Vec::new();
        for e in &raw.event {
            let line = self.line(e.span().start);
            match raw::event(e.get_ref()) {
                Ok(kind) => match duration_ms(&e.get_ref().at) {
                    Ok(at_ms) if at_ms > duration => self.err(
                        line,
                        "event.at",
                        format!(
                            "`{}` is after the scenario's end ({} ms): it would never happen",
                            e.get_ref().at,
                            duration
                        ),
                    ),
                    Ok(at_ms) => events.push(Event { at_ms, kind, line }),
                    Err(reason) => self.err(line, "event.at", reason),
                },
                Err((field, reason)) => self.err(line, &format!("event.{field}"), reason),
            }
        }
        events.sort_by_key(|e| (e.at_ms, e.line));
        events
    }

    fn expect_actions(&mut self, raw: &Raw) -> Vec<(usize, ExpectAction)> {
        let all: Vec<(usize, ExpectAction)> = raw
            .expect
            .action
            .iter()
            .map(|a| (self.line(a.span().start), a.get_ref().clone()))
            .collect();
        for (line, a) in &all {
            for (field, d) in [("after", Some(&a.after)), ("within", a.within.as_ref())] {
                if let Some(Err(reason)) = d.map(|d| duration_ms(d)) {
                    self.err(*line, &format!("expect.action.{field}"), reason);
                }
            }
            if !["executed", "dry_run", "pending", "suppressed"].contains(&a.mode.as_str()) {
                self.err(
                    *line,
                    "expect.action.mode",
                    format!(
                        "`{}` is not executed, dry_run, pending or suppressed",
                        a.mode
                    ),
                );
            }
            if a.action != "*" && crate::model::Action::parse(&a.action).is_none() {
                self.err(
                    *line,
                    "expect.action.action",
                    format!("unknown action `{}`", a.action),
                );
            }
        }
        all
    }

    fn expect_findings(&mut self, raw: &Raw) -> Vec<(usize, ExpectFinding)> {
        let all: Vec<(usize, ExpectFinding)> = raw
            .expect
            .finding
            .iter()
            .map(|a| (self.line(a.span().start), a.get_ref().clone()))
            .collect();
        for (line, f) in &all {
            if crate::model::FindingKind::parse(&f.kind).is_none() {
                self.err(
                    *line,
                    "expect.finding.kind",
                    format!("unknown finding kind `{}`", f.kind),
                );
            }
            for (field, d) in [("after", Some(&f.after)), ("within", f.within.as_ref())] {
                if let Some(Err(reason)) = d.map(|d| duration_ms(d)) {
                    self.err(*line, &format!("expect.finding.{field}"), reason);
                }
            }
        }
        all
    }

    fn expect_finals(&mut self, raw: &Raw) -> Vec<(usize, ExpectFinal)> {
        let all: Vec<(usize, ExpectFinal)> = raw
            .expect
            .final_
            .iter()
            .map(|a| (self.line(a.span().start), a.get_ref().clone()))
            .collect();
        for (line, f) in &all {
            for (field, q) in [
                ("quality_min", f.quality_min),
                ("quality_max", f.quality_max),
            ] {
                if q.is_some_and(|q| !(0.0..=100.0).contains(&q)) {
                    self.err(
                        *line,
                        &format!("expect.final.{field}"),
                        "a quality score is between 0 and 100".into(),
                    );
                }
            }
        }
        all
    }

    /// `[config]`, read as the daemon reads mapek.toml, over the defaults.
    fn config(&mut self, raw: &mut Raw, base: &Path) -> crate::config::Config {
        let defaults = crate::config::Config::defaults(base);
        let Some(f) = raw.config.take() else {
            return defaults;
        };
        let (config, problems) = defaults.with_file(f, self.file, self.src);
        for p in problems {
            match p {
                crate::config::ConfigError::Invalid {
                    line,
                    field,
                    reason,
                    ..
                } => self.err(line, &format!("config.{field}"), reason),
                other => self.err(0, "config", other.to_string()),
            }
        }
        config
    }
}

/// The line of `[expect.totals]` (or of `totals =` inside `[expect]`), for reports.
fn totals_line(src: &str) -> usize {
    src.lines()
        .position(|l| {
            let l = l.trim_start();
            l.starts_with("[expect.totals]") || l.starts_with("totals")
        })
        .map_or(1, |i| i + 1)
}

/// Parses and checks a scenario's text within `limits`: the scenario, or every problem.
pub(super) fn parse(
    file: &Path,
    src: &str,
    limits: &Limits,
) -> Result<Scenario, Vec<ScenarioError>> {
    let mut raw: Raw = toml::from_str(src).map_err(|e| {
        let (line, reason) = toml_error(src, &e);
        vec![ScenarioError {
            file: file.to_path_buf(),
            line,
            field: crate::located::field_at(src, line, &reason),
            reason,
        }]
    })?;
    let mut c = Check {
        file,
        src,
        errors: Vec::new(),
    };
    let base = file.parent().unwrap_or(Path::new("."));
    let (duration_ms_v, tick_ms) = c.times(&raw, limits);
    let policies_dir = match &raw.scenario.policies {
        Some(p) => base.join(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"),
    };
    let background = raw.registry.background.as_ref().map(|b| *b.get_ref());
    let source = c.source(&raw, base, limits);
    let events = c.events(&raw, duration_ms_v);
    let expect_action = c.expect_actions(&raw);
    let expect_finding = c.expect_findings(&raw);
    let expect_final = c.expect_finals(&raw);
    let config = c.config(&mut raw, base);
    let guards = raw.guards.map(|g| {
        let mut t = toml::Table::new();
        t.insert("guards".into(), toml::Value::Table(g));
        toml::to_string(&t).unwrap_or_default()
    });
    let policies = (!raw.policy.is_empty()).then(|| {
        let mut t = toml::Table::new();
        t.insert(
            "policy".into(),
            toml::Value::Array(raw.policy.into_iter().map(toml::Value::Table).collect()),
        );
        toml::to_string(&t).unwrap_or_default()
    });
    if !c.errors.is_empty() {
        return Err(c.errors);
    }
    Ok(Scenario {
        file: file.to_path_buf(),
        name: raw.scenario.name,
        description: raw.scenario.description,
        seed: raw.scenario.seed,
        duration_ms: duration_ms_v,
        tick_ms,
        policies_dir,
        source,
        background,
        guards,
        policies,
        events,
        expect_action,
        expect_finding,
        expect_final,
        expect_totals: raw.expect.totals.map(|t| (totals_line(src), t)),
        config,
    })
}
