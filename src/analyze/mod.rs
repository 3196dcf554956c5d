//! Analyze: turn observations, registry facts and telemetry into findings, deduplicated by fingerprint, through the lifecycle.

pub mod checks;
mod incremental;
mod integrity;
pub mod learning;
pub mod lifecycle;
pub mod quality;
pub mod regression;
pub mod settings;
pub mod typosquats;
pub mod windows;

use std::collections::{BTreeMap, HashMap, HashSet};

pub use integrity::{integrity_conditions, Judgement};
use lifecycle::{judge, Condition, Timing, Transition};
use quality::{Evidence, QualityModel};
use settings::Settings;
use windows::{Tally, Windows};

use crate::knowledge::findings::{self, Finding, FindingState};
use crate::knowledge::telemetry::TelemetryDelta;
use crate::knowledge::{Store, StoreError};
use crate::model::{FindingKind, Integrity, ReleaseObservation, Severity, SignatureState, Subject};
use crate::monitor::facts::Facts;
use crate::monitor::MonitorOutput;

/// The kinds the integrity detector owns.
pub const INTEGRITY_KINDS: [FindingKind; 4] = [
    FindingKind::ChecksumMismatch,
    FindingKind::SignatureInvalid,
    FindingKind::SignatureMissing,
    FindingKind::SignerUntrusted,
];

/// The kinds judged on the registry's facts: frozen while the registry cannot be read.
pub const FACT_KINDS: [FindingKind; 5] = [
    FindingKind::QualityRegression,
    FindingKind::Unmaintained,
    FindingKind::DependencyUnavailable,
    FindingKind::DependencyCycle,
    FindingKind::TyposquatSuspect,
];

/// The kinds a registry backend judges by its own rules (see `Registry::refresh`): frozen, like
/// the fact kinds, while the registry cannot be read.
pub const REGISTRY_KINDS: [FindingKind; 3] = [
    FindingKind::ContentMismatch,
    FindingKind::PackRefused,
    FindingKind::SuccessorMissing,
];

/// How analysis judges: detector settings (with each kind's lifecycle timing) and the quality model.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    pub settings: Settings,
    pub quality: QualityModel,
}

impl Rules {
    pub fn timing(&self, kind: FindingKind) -> Timing {
        self.settings.timing(kind)
    }
}

/// What changed in one analysis pass.
#[derive(Debug, Default, Clone)]
pub struct AnalyzeOutput {
    pub fired: Vec<Finding>,
    pub resolved: Vec<Finding>,
    pub open_by_kind: BTreeMap<FindingKind, i64>,
    /// The registry could not be read: facts are stale and nothing may be planned on them.
    pub stale: bool,
    /// Whether any finding changed (opened, updated, fired or resolved) beyond the periodic
    /// refresh of a held finding's `last_seen`, which is written but changes nothing a later
    /// stage reads.
    pub changed: bool,
    /// When an open finding next changes by time alone (a `for` or a `keep_firing_for` ends).
    pub next_due: Option<i64>,
}

/// What one pass judges. Anything absent is not judged: its open findings stay as they are.
#[derive(Debug, Default, Clone, Copy)]
pub struct AnalyzeInput<'a> {
    pub observations: &'a [ReleaseObservation],
    pub facts: Option<&'a Facts>,
    pub telemetry: Option<&'a TelemetryDelta>,
    pub unreachable: Option<&'a str>,
    /// What the registry's backend judged by its own rules, and the releases that left it.
    pub registry: Option<&'a crate::registry::Refreshed>,
    /// Nothing but this analyzer wrote findings since its last pass (the simulator knows; the
    /// daemon does not): the open findings that pass left are still what the store holds, and
    /// are not read again.
    pub findings_untouched: bool,
}

impl<'a> AnalyzeInput<'a> {
    pub fn from_monitor(m: &'a MonitorOutput) -> Self {
        Self {
            observations: &m.observations,
            facts: m.facts.as_deref(),
            telemetry: Some(&m.telemetry),
            unreachable: m.unreachable.as_deref(),
            registry: Some(&m.registry),
            findings_untouched: false,
        }
    }
}

/// One analysis pass over the observations of this cycle alone (no facts, no telemetry): the
/// integrity kinds, plus the passage of time for open findings.
pub async fn cycle(
    store: &Store,
    observations: &[ReleaseObservation],
    rules: &Rules,
    now: i64,
) -> Result<AnalyzeOutput, StoreError> {
    let input = AnalyzeInput {
        observations,
        ..Default::default()
    };
    Analyzer::new(rules.clone()).cycle(store, input, now).await
}

/// Conditions derived from the facts alone: dependency conditions kept up to date from what
/// changed; typosquats kept up to date from the packages touched and the passing of time.
#[derive(Debug, Default)]
struct FactConditions {
    dependencies: incremental::DependencyConditions,
    typosquats: typosquats::Typosquats,
}

/// The analyze stage's memory: telemetry windows, what it learned, what it last observed.
#[derive(Debug, Default)]
pub struct Analyzer {
    pub rules: Rules,
    windows: Windows,
    downloads: learning::Downloads,
    quality: regression::Quality,
    reports: learning::Reports,
    /// package -> (version, checksum matches, signature valid) as last observed, by version: a
    /// sorted list per package (a map per package cost twice as much at a million packages).
    integrity: HashMap<String, Vec<(Box<str>, bool, bool)>>,
    /// Packages whose integrity changed since the quality pass last ran.
    integrity_changed: HashSet<String>,
    /// Packages whose install success the last quality pass judged (a failure in 3 days).
    judged_installs: Vec<String>,
    cached: FactConditions,
    unmaintained: checks::Unmaintained,
    loaded: bool,
    /// The open findings as the last pass left them (by id), for a pass that may reuse them.
    open: Option<Vec<Finding>>,
}

/// Per kind judged completely, what holds; then whether the baselines are due to be saved, and
/// the packages whose quality state changed (to be saved).
type Judgements = (Vec<(FindingKind, Vec<Condition>)>, bool, Vec<String>);

impl Analyzer {
    pub fn new(rules: Rules) -> Self {
        Self {
            rules,
            ..Default::default()
        }
    }

    /// Everything that holds now, per kind judged completely this pass.
    fn complete_judgements(&mut self, input: &AnalyzeInput<'_>, now: i64) -> Judgements {
        let s = &self.rules.settings;
        let mut complete = Vec::new();
        let (mut save_baselines, mut scores) = (false, Vec::new());
        let registry = Subject {
            package: "*".into(),
            version: None,
        };
        complete.push((
            FindingKind::RegistryUnreachable,
            input
                .unreachable
                .map(|why| {
                    checks::condition(
                        FindingKind::RegistryUnreachable,
                        Severity::Critical,
                        registry.clone(),
                        1.0,
                        format!("the registry cannot be read: {why}; findings on its facts are frozen and nothing is planned"),
                        Default::default(),
                    )
                })
                .into_iter()
                .collect(),
        ));
        if let Some(t) = input.telemetry {
            self.windows.apply(t);
            self.windows.prune(now);
            self.reports.apply(&t.reports);
            complete.push((FindingKind::InstallFailureBurn, self.install_burn(now)));
            complete.push((
                FindingKind::LookupLatencyBurn,
                self.latency_burn(now, &registry),
            ));
            complete.push((FindingKind::Reported, self.reports.cycle(s, now)));
            let (anomalies, save) = self.downloads.cycle(&self.windows, s, now);
            save_baselines = save;
            complete.push((FindingKind::DownloadAnomaly, anomalies));
        }
        if let (Some(r), None) = (input.registry, input.unreachable) {
            for kind in &r.judged {
                let holding = r
                    .problems
                    .iter()
                    .filter(|p| p.kind == *kind)
                    .map(|p| {
                        checks::condition(
                            p.kind,
                            p.severity,
                            p.subject.clone(),
                            p.value,
                            p.message.clone(),
                            p.labels.clone(),
                        )
                    })
                    .collect();
                complete.push((*kind, holding));
            }
        }
        if let (Some(facts), None) = (input.facts, input.unreachable) {
            let c = &mut self.cached;
            c.dependencies.update(facts);
            c.typosquats.update(facts, s, now);
            complete.push((
                FindingKind::DependencyUnavailable,
                c.dependencies.unavailable(),
            ));
            complete.push((FindingKind::DependencyCycle, c.dependencies.cycles()));
            complete.push((FindingKind::TyposquatSuspect, c.typosquats.conditions()));
            complete.push((
                FindingKind::Unmaintained,
                self.unmaintained.conditions(facts, s, now),
            ));
            let (regressions, changed) = self.quality_pass(facts, now);
            scores = changed;
            complete.push((FindingKind::QualityRegression, regressions));
        }
        (complete, save_baselines, scores)
    }

    fn install_burn(&self, now: i64) -> Vec<Condition> {
        let s = &self.rules.settings;
        let mut out = Vec::new();
        // The longest window is 3 days: a series without a failure in it cannot burn.
        let longest = windows::PAIRS.iter().map(|p| p.long_ms).max().unwrap_or(0);
        for series in self.windows.failing_within(now, longest) {
            let (p, v) = (&series.name.package, &series.name.version);
            let burning = windows::burning(
                |w| series.installs(now, w),
                s.install_slo,
                s.install_min_events,
            );
            if let Some((pair, long, short, events)) = burning {
                out.push(burn_condition(
                    FindingKind::InstallFailureBurn,
                    Subject {
                        package: p.clone(),
                        version: Some(v.clone()),
                    },
                    pair,
                    (long, short, events),
                    format!("installs of {p}@{v} fail"),
                ));
            }
        }
        out
    }

    fn latency_burn(&self, now: i64, registry: &Subject) -> Vec<Condition> {
        let s = &self.rules.settings;
        let burning = windows::burning(
            |w| self.windows.latency.tally(now, w, s.latency_threshold_ms),
            s.latency_slo,
            s.latency_min_events,
        );
        burning
            .map(|(pair, long, short, events)| {
                burn_condition(
                    FindingKind::LookupLatencyBurn,
                    registry.clone(),
                    pair,
                    (long, short, events),
                    format!("lookups slower than {} ms", s.latency_threshold_ms),
                )
            })
            .into_iter()
            .collect()
    }

    fn quality_pass(&mut self, facts: &Facts, now: i64) -> (Vec<Condition>, Vec<String>) {
        // Only packages with a failed install in the 3 days can fail the install guard; the
        // others pass it whether or not they had installs, and are not summed.
        let mut installs: HashMap<&str, Tally> = HashMap::new();
        for series in self.windows.failing_within(now, 72 * 3_600_000) {
            let p = &series.name.package;
            let t = series.installs(now, 72 * 3_600_000);
            let e = installs.entry(p.as_str()).or_default();
            e.good += t.good;
            e.bad += t.bad;
        }
        // Scored again: packages whose integrity changed, whose install success is judged now,
        // and those judged last time (their failures may have left the window).
        let touched: Vec<usize> = self
            .integrity_changed
            .drain()
            .chain(self.judged_installs.drain(..))
            .filter_map(|p| facts.index.get(&p).copied())
            .chain(installs.keys().filter_map(|p| facts.index.get(*p).copied()))
            .collect();
        self.judged_installs = installs.keys().map(|p| p.to_string()).collect();
        let integrity = &self.integrity;
        let evidence = |i: usize| {
            let p = &facts.packages[i];
            let observed = p.latest().and_then(|r| {
                let of = integrity.get(p.record.name.as_str())?;
                let at = of
                    .binary_search_by(|e| e.0.as_ref().cmp(r.version.as_str()))
                    .ok()?;
                Some((of[at].1, of[at].2))
            });
            Evidence {
                signed: observed.map(|o| o.1),
                checksum: observed.map(|o| o.0),
                dependents: facts.dependents[i],
                days_since_release: p.last_release_at().map(|t| (now - t) as f64 / 86_400_000.0),
                install_success: installs
                    .get(p.record.name.as_str())
                    .filter(|t| t.total() > 0.0)
                    .map(|t| t.good / t.total()),
            }
        };
        self.quality.cycle(
            &self.rules.quality,
            facts,
            evidence,
            &self.rules.settings,
            now,
            touched,
        )
    }

    /// One analysis pass.
    pub async fn cycle(
        &mut self,
        store: &Store,
        input: AnalyzeInput<'_>,
        now: i64,
    ) -> Result<AnalyzeOutput, StoreError> {
        if !self.loaded {
            self.downloads.baselines = store.baselines().await?;
            self.quality.states = store.quality_states().await?;
            self.loaded = true;
        }
        let stale = input.unreachable.is_some();
        self.note_integrity(input.observations);
        let (complete, save_baselines, scores) = self.complete_judgements(&input, now);
        let open = match (input.findings_untouched, self.open.take()) {
            (true, Some(open)) => open,
            _ => store.open_findings().await?,
        };
        let mut open_by_kind: BTreeMap<FindingKind, i64> = BTreeMap::new();
        for f in &open {
            *open_by_kind.entry(f.kind).or_default() += 1;
        }
        let mut after: BTreeMap<String, Finding> =
            open.iter().map(|f| (f.id.clone(), f.clone())).collect();
        let transitions = self.transitions(open, &input, complete, stale, now);
        let mut out = AnalyzeOutput {
            stale,
            changed: transitions.iter().any(|(_, refresh)| !refresh),
            ..Default::default()
        };
        write_transitions(store, transitions, &mut out, &mut open_by_kind, &mut after).await?;
        if save_baselines {
            store.save_baselines(&self.downloads.baselines, now).await?;
            self.downloads.saved(now);
        }
        let saved: Vec<_> = scores
            .iter()
            .filter_map(|p| Some((p.as_str(), self.quality.states.get(p)?)))
            .collect();
        store.save_quality_states(&saved).await?;
        open_by_kind.retain(|_, n| *n > 0);
        out.open_by_kind = open_by_kind;
        out.next_due = after.values().filter_map(|f| self.due(f)).min();
        self.open = Some(after.into_values().collect());
        Ok(out)
    }

    /// When an open finding next changes by time alone: a pending one fires once its `for`
    /// has passed, a cleared one resolves once its `keep_firing_for` has.
    fn due(&self, f: &Finding) -> Option<i64> {
        let t = self.rules.timing(f.kind);
        match (f.state, f.cleared_at) {
            (FindingState::Pending, _) => Some(f.first_seen.saturating_add(t.for_ms)),
            (FindingState::Firing, Some(cleared)) => {
                Some(cleared.saturating_add(t.keep_firing_for_ms))
            }
            _ => None,
        }
    }

    /// Keeps what the observations say of each release's integrity; a package whose integrity
    /// changed is scored again.
    fn note_integrity(&mut self, observations: &[ReleaseObservation]) {
        for o in observations {
            let checksum = matches!(o.integrity, Integrity::Ok);
            let signed = o.signature == SignatureState::Valid;
            let of = match self.integrity.get_mut(o.package.as_str()) {
                Some(of) => of,
                None => self.integrity.entry(o.package.clone()).or_default(),
            };
            let before = match of.binary_search_by(|e| e.0.as_ref().cmp(o.version.as_str())) {
                Ok(at) => {
                    let e = &mut of[at];
                    let before = (e.1, e.2);
                    (e.1, e.2) = (checksum, signed);
                    Some(before)
                }
                Err(at) => {
                    of.insert(at, (o.version.as_str().into(), checksum, signed));
                    None
                }
            };
            if before != Some((checksum, signed)) {
                self.integrity_changed.insert(o.package.clone());
            }
        }
    }

    /// Each open finding's step and each new one's, from this pass's judgements.
    fn transitions(
        &self,
        open: Vec<Finding>,
        input: &AnalyzeInput<'_>,
        complete: Vec<(FindingKind, Vec<Condition>)>,
        stale: bool,
        now: i64,
    ) -> Vec<(Transition, bool)> {
        let mut by_fingerprint: HashMap<String, Finding> = open
            .into_iter()
            .map(|f| (f.fingerprint.clone(), f))
            .collect();
        let mut transitions = Vec::new();
        let mut step = |kind: FindingKind,
                        subject: &Subject,
                        j: Judgement,
                        by: &mut HashMap<String, Finding>| {
            let existing = by.remove(&Finding::fingerprint_of(kind, subject));
            transitions.extend(judge(existing, j, self.rules.timing(kind), now));
        };
        for o in input.observations {
            let subject = Subject {
                package: o.package.clone(),
                version: Some(o.version.clone()),
            };
            for (kind, judgement) in integrity_conditions(o) {
                step(kind, &subject, judgement, &mut by_fingerprint);
            }
        }
        // Releases that left the registry: nothing of their artifacts holds any more.
        for (package, version) in input
            .registry
            .map(|r| r.removed.as_slice())
            .unwrap_or_default()
        {
            let subject = Subject {
                package: package.clone(),
                version: Some(version.clone()),
            };
            for kind in INTEGRITY_KINDS {
                if by_fingerprint.contains_key(&Finding::fingerprint_of(kind, &subject)) {
                    step(kind, &subject, Some(None), &mut by_fingerprint);
                }
            }
        }
        let judged: HashSet<FindingKind> = complete.iter().map(|(k, _)| *k).collect();
        for (kind, conditions) in complete {
            for c in conditions {
                let subject = c.subject.clone();
                step(kind, &subject, Some(Some(c)), &mut by_fingerprint);
            }
        }
        // What is left: findings of completely judged kinds whose condition is gone, findings
        // that move with time only, and, while the registry cannot be read, frozen ones.
        for f in by_fingerprint.values() {
            let timing = self.rules.timing(f.kind);
            let frozen = stale
                && (INTEGRITY_KINDS.contains(&f.kind)
                    || FACT_KINDS.contains(&f.kind)
                    || REGISTRY_KINDS.contains(&f.kind));
            if frozen {
                continue;
            }
            if judged.contains(&f.kind) {
                transitions.extend(judge(Some(f.clone()), Some(None), timing, now));
            } else {
                transitions.extend(lifecycle::tick(f, timing, now).map(|t| (t, false)));
            }
        }
        transitions
    }
}

/// Writes a pass's transitions in one transaction, and keeps the counts and the open findings
/// they leave.
async fn write_transitions(
    store: &Store,
    transitions: Vec<(Transition, bool)>,
    out: &mut AnalyzeOutput,
    open_by_kind: &mut BTreeMap<FindingKind, i64>,
    after: &mut BTreeMap<String, Finding>,
) -> Result<(), StoreError> {
    if transitions.is_empty() {
        return Ok(());
    }
    let mut tx = store.begin().await?;
    for (t, _) in transitions {
        match &t {
            Transition::Opened(f) => *open_by_kind.entry(f.kind).or_default() += 1,
            Transition::Resolved(f) => *open_by_kind.entry(f.kind).or_default() -= 1,
            Transition::Fired(_) | Transition::Updated(_) => {}
        }
        match &t {
            Transition::Resolved(f) => {
                after.remove(&f.id);
            }
            Transition::Opened(f) | Transition::Fired(f) | Transition::Updated(f) => {
                after.insert(f.id.clone(), f.clone());
            }
        }
        match t {
            Transition::Opened(f) => {
                findings::insert(&mut tx, &f).await?;
                if f.state == FindingState::Firing {
                    out.fired.push(f);
                }
            }
            Transition::Fired(f) => {
                findings::update(&mut tx, &f).await?;
                out.fired.push(f);
            }
            Transition::Updated(f) => findings::update(&mut tx, &f).await?,
            Transition::Resolved(f) => {
                findings::update(&mut tx, &f).await?;
                out.resolved.push(f);
            }
        }
    }
    tx.commit().await?;
    Ok(())
}

fn burn_condition(
    kind: FindingKind,
    subject: Subject,
    pair: windows::Pair,
    (long, short, events): (f64, f64, f64),
    what: String,
) -> Condition {
    let hours = |ms: i64| humantime::format_duration(std::time::Duration::from_millis(ms as u64));
    let mut labels = serde_json::Map::new();
    labels.insert("long_window".into(), hours(pair.long_ms).to_string().into());
    labels.insert(
        "short_window".into(),
        hours(pair.short_ms).to_string().into(),
    );
    labels.insert("burn_long".into(), long.into());
    labels.insert("burn_short".into(), short.into());
    labels.insert("events".into(), events.round().into());
    checks::condition(
        kind,
        if pair.critical {
            Severity::Critical
        } else {
            Severity::Warning
        },
        subject,
        long,
        format!(
            "{what}: the error budget burns {long:.1}x over {} and {short:.1}x over {} (threshold {}x)",
            hours(pair.long_ms),
            hours(pair.short_ms),
            pair.factor
        ),
        labels,
    )
}
