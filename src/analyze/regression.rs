//! Quality scores against their recent peak, per package, kept up to date by scoring only the packages whose inputs changed or whose time came.
//!
//! A package's score depends on its facts (record, latest release, dependents), the integrity of
//! its latest release, its install success over 3 days, and the time since its last release. The
//! analyzer says which packages it saw change ("touched"); a change of the facts, the model or
//! the settings scores every package again. What time alone moves has a deadline: the moment the
//! `maintained` guard flips, and the end of a lowered score's peak window.
//!
//! A peak holds for as long as the score stays at it: a score scored again at its peak has held
//! it all along, so `peak_at` is the moment the score last left it (or first reached it), and the
//! peak expires `quality_window` after that.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};

use super::checks::condition;
use super::lifecycle::Condition;
use super::quality::{check_passed, Check, Evidence, QualityModel};
use super::settings::Settings;
use crate::knowledge::learned::QualityState;
use crate::model::{FindingKind, Severity, Subject};
use crate::monitor::facts::Facts;

type Labels = serde_json::Map<String, serde_json::Value>;

/// Quality scores and their peaks, per package.
#[derive(Debug, Default)]
pub struct Quality {
    pub states: HashMap<String, QualityState>,
    /// What the last pass scored against: the facts' build and change sequence, the model and the
    /// settings. Another build, model or settings scores every package again; a later change
    /// sequence of the same build, the packages touched since.
    scored: Option<(u64, i64, QualityModel, Settings)>,
    /// When each package (by facts index) must be scored again though nothing it is scored on
    /// changed; `i64::MAX` for never.
    next_due: Vec<i64>,
    /// The same deadlines, soonest first; an entry that no longer matches `next_due` is stale.
    due: BinaryHeap<Reverse<(i64, usize)>>,
    /// The regressions that hold, by facts index (so listed in the facts' order).
    regressions: BTreeMap<usize, Condition>,
}

impl Quality {
    /// Scores the packages that need it; returns every regression that holds, and the packages
    /// whose state must be saved. `touched` are facts indices whose evidence may have changed.
    pub fn cycle(
        &mut self,
        model: &QualityModel,
        facts: &Facts,
        evidence: impl Fn(usize) -> Evidence,
        s: &Settings,
        now: i64,
        touched: impl IntoIterator<Item = usize>,
    ) -> (Vec<Condition>, Vec<String>) {
        let n = facts.packages.len();
        // Within one build of the facts, under the same model and settings, only the packages
        // the facts say changed since the last pass are scored again (with those whose evidence
        // changed and those due); otherwise every package is.
        let since = match &self.scored {
            Some((build, seq, m, st)) if *build == facts.build && m == model && st == s => {
                Some(*seq)
            }
            _ => None,
        };
        let mut todo: Vec<usize> = if let Some(seq) = since {
            self.next_due.resize(n, i64::MAX);
            let mut todo: Vec<usize> = touched.into_iter().filter(|&i| i < n).collect();
            if seq != facts.change_seq {
                todo.extend(
                    facts
                        .touched
                        .iter()
                        .enumerate()
                        .filter(|(_, &t)| t > seq)
                        .map(|(i, _)| i),
                );
            }
            while let Some(&Reverse((at, i))) = self.due.peek() {
                if at > now {
                    break;
                }
                self.due.pop();
                if self.next_due.get(i) == Some(&at) {
                    todo.push(i);
                }
            }
            todo
        } else {
            self.next_due = vec![i64::MAX; n];
            self.due.clear();
            self.regressions.clear();
            (0..n).collect()
        };
        match &mut self.scored {
            Some((_, seq, _, _)) if since.is_some() => *seq = facts.change_seq,
            _ => self.scored = Some((facts.build, facts.change_seq, model.clone(), s.clone())),
        }
        todo.sort_unstable();
        todo.dedup();
        let checks = model.checks();
        let maintained = checks.contains(&Check::Maintained);
        let mut changed = Vec::new();
        for i in todo {
            let (saved, due) = self.score(model, &checks, facts, i, &evidence(i), s, now);
            if saved {
                changed.push(facts.packages[i].record.name.clone());
            }
            let edge = facts.packages[i]
                .last_release_at()
                .map(|t| t.saturating_add(s.unmaintained_after_ms).saturating_add(1))
                .filter(|&edge| maintained && edge > now);
            let next = [due, edge].into_iter().flatten().min().unwrap_or(i64::MAX);
            if self.next_due[i] != next {
                self.next_due[i] = next;
                if next != i64::MAX {
                    self.due.push(Reverse((next, i)));
                }
            }
        }
        (self.regressions.values().cloned().collect(), changed)
    }

    /// Scores package `i`: updates its state and its regression. Returns whether the state must
    /// be saved, and when its peak window ends (if its score is below its peak).
    #[allow(clippy::too_many_arguments)]
    fn score(
        &mut self,
        model: &QualityModel,
        checks: &[Check],
        facts: &Facts,
        i: usize,
        e: &Evidence,
        s: &Settings,
        now: i64,
    ) -> (bool, Option<i64>) {
        let unmaintained_days = s.unmaintained_after_ms as f64 / 86_400_000.0;
        let p = &facts.packages[i];
        let t = model.tally(|g| {
            check_passed(
                &model.guards[g].0,
                checks[g],
                p,
                e,
                s.install_slo,
                unmaintained_days,
            )
        });
        let band = model.band_name(t.band);
        let name = &p.record.name;
        let mut saved = false;
        let state = match self.states.get_mut(name.as_str()) {
            Some(state) => state,
            None => {
                saved = true;
                self.states.entry(name.clone()).or_insert(QualityState {
                    score: t.score,
                    band: band.to_string(),
                    failed: model.failed_names(t.failed),
                    peak: t.score,
                    peak_band: band.to_string(),
                    peak_at: now,
                    computed_at: now,
                })
            }
        };
        // The score was at its peak until now: the peak held all along.
        let held = state.score >= state.peak;
        let expired = !held && now - state.peak_at > s.quality_window_ms;
        let new_peak = t.score > state.peak
            || expired
            || (t.score == state.peak && (!held || state.peak_band != band));
        if new_peak {
            state.peak = t.score;
            if state.peak_band != band {
                state.peak_band = band.to_string();
            }
            state.peak_at = now;
            saved = true;
        } else if held && t.score < state.peak {
            // It leaves the peak now: the window runs from here.
            state.peak_at = now;
            saved = true;
        }
        if state.score != t.score || state.band != band {
            saved = true;
        }
        state.score = t.score;
        if state.band != band {
            state.band = band.to_string();
        }
        if !model.failed_are(t.failed, &state.failed) {
            state.failed = model.failed_names(t.failed);
        }
        if saved {
            state.computed_at = now;
        }
        let dropped = state.peak - state.score;
        let band_fell = t.band > model.band_rank(&state.peak_band);
        if dropped > s.quality_drop_points || band_fell {
            let mut labels = Labels::new();
            labels.insert("score".into(), state.score.into());
            labels.insert("band".into(), state.band.clone().into());
            labels.insert("peak".into(), state.peak.into());
            labels.insert("failed".into(), state.failed.clone().into());
            self.regressions.insert(
                i,
                condition(
                    FindingKind::QualityRegression,
                    Severity::Warning,
                    Subject {
                        package: name.clone(),
                        version: None,
                    },
                    state.score,
                    format!(
                        "{name}: quality {:.1} ({}), down from {:.1}; failing: {}",
                        state.score,
                        state.band,
                        state.peak,
                        state.failed.join(", ")
                    ),
                    labels,
                ),
            );
        } else {
            self.regressions.remove(&i);
        }
        let window_ends = (state.score < state.peak).then(|| {
            state
                .peak_at
                .saturating_add(s.quality_window_ms)
                .saturating_add(1)
        });
        (saved, window_ends)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::monitor::facts::testing::{facts as facts_of, package};
    use std::path::Path;

    const HOUR: i64 = 3_600_000;
    const DAY: i64 = 24 * HOUR;
    const T0: i64 = 1_800_000_000_000;

    /// Scoring only what was touched and what fell due gives, cycle after cycle, what scoring
    /// every package gives: across a `maintained` edge, a drop, and the end of its window.
    #[test]
    fn scoring_what_changed_and_what_fell_due_equals_scoring_everything() {
        let model = QualityModel::parse(
            Path::new("q.toml"),
            "[quality]\nguards = { signed = 20, maintained = 10, license = 5 }\n",
        )
        .unwrap();
        let s = Settings::default();
        let packages = vec![
            // Its last release turns two years old 5 hours in: `maintained` fails from then on.
            package("aging", T0 + 5 * HOUR - s.unmaintained_after_ms),
            // Its signature stops verifying at hour 10: 20 points down, a regression until the
            // week's window has passed.
            package("dropping", T0 - DAY),
            package("steady", T0 - DAY),
        ];
        let n = packages.len();
        let facts = facts_of(packages, vec![0; n], 7);
        let (mut incremental, mut everything) = (Quality::default(), Quality::default());
        let mut saw_regression = false;
        for hour in 0..(10 * 24) {
            let now = T0 + hour * HOUR + 17;
            let signed = |i: usize| !(i == 1 && hour >= 10);
            let evidence = |i: usize| Evidence {
                signed: Some(signed(i)),
                checksum: Some(true),
                dependents: 0,
                days_since_release: facts.packages[i]
                    .last_release_at()
                    .map(|t| (now - t) as f64 / DAY as f64),
                install_success: None,
            };
            let touched: Vec<usize> = if hour == 10 { vec![1] } else { vec![] };
            let a = incremental.cycle(&model, &facts, evidence, &s, now, touched);
            let b = everything.cycle(&model, &facts, evidence, &s, now, 0..n);
            assert_eq!(a.0, b.0, "regressions at hour {hour}");
            assert_eq!(
                incremental.states, everything.states,
                "states at hour {hour}"
            );
            saw_regression |= !a.0.is_empty();
            // A score that holds its peak is not written again (no hourly refresh of 50,000 rows).
            if hour > 0 {
                assert!(!a.1.iter().any(|p| p == "steady"), "hour {hour}: {:?}", a.1);
            }
        }
        assert!(saw_regression, "the drop was a regression for a while");
        assert!(
            incremental.regressions.is_empty(),
            "the window ended: {:?}",
            incremental.regressions
        );
        assert!(
            incremental.states["aging"].score < incremental.states["steady"].score,
            "`maintained` failed in time: {:?}",
            incremental.states
        );
    }
}
