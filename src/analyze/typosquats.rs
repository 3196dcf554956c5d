//! Typosquat suspects: new packages confusable with, or a small edit away from, a popular package by another author; judged from scratch or kept up to date from what the facts say changed.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::checks::{condition, package_subject, Labels};
use super::lifecycle::Condition;
use super::settings::Settings;
use crate::model::{FindingKind, Severity};
use crate::monitor::facts::{Facts, PackageFacts};

/// A name with the look-alikes of the spec folded: `_` as `-`, `1` as `l`, `rn` as `m`.
pub fn fold_confusables(name: &str) -> String {
    name.to_lowercase()
        .replace('_', "-")
        .replace('1', "l")
        .replace("rn", "m")
}

/// How far a name may be from a popular one to be suspect: the setting, but at most a quarter
/// of its length, so that short names (`cli`, `api`) are only suspect when confusable.
fn allowed_distance(len: usize, max: usize) -> usize {
    max.min(len / 4)
}

fn author_of(p: &PackageFacts) -> Option<&str> {
    p.record
        .author
        .as_deref()
        .map(str::trim)
        .filter(|a| !a.is_empty())
}

fn is_popular(p: &PackageFacts, s: &Settings) -> bool {
    p.record.downloads >= s.typosquat_popular_downloads
}

/// New: created within `typosquat_new_within_ms` of `now` (or after it).
fn is_new(created_at: i64, s: &Settings, now: i64) -> bool {
    created_at.saturating_add(s.typosquat_new_within_ms) >= now
}

/// The condition on the new package `p`, if its folded name is near a popular package's:
/// `near(len)` gives the popular packages whose folded names have `len` characters, with those
/// names, in the facts' order (the first of equally near and equally popular ones is named).
fn judge<'a, I>(p: &PackageFacts, s: &Settings, near: impl Fn(usize) -> I) -> Option<Condition>
where
    I: Iterator<Item = (&'a str, &'a PackageFacts)>,
{
    let folded = fold_confusables(&p.record.name);
    let len = folded.chars().count();
    let d_max = allowed_distance(len, s.typosquat_max_distance);
    let mut best: Option<(usize, &PackageFacts)> = None;
    for l in len.saturating_sub(d_max)..=len + d_max {
        for (other, q) in near(l) {
            if q.record.name == p.record.name {
                continue;
            }
            let same_author = matches!((author_of(p), author_of(q)), (Some(a), Some(b)) if a == b);
            if same_author {
                continue;
            }
            let d = strsim::damerau_levenshtein(&folded, other);
            if d <= d_max
                && best.is_none_or(|(bd, bq)| {
                    (d, std::cmp::Reverse(q.record.downloads))
                        < (bd, std::cmp::Reverse(bq.record.downloads))
                })
            {
                best = Some((d, q));
            }
        }
    }
    let (d, q) = best?;
    let why = if d == 0 {
        "confusable with".to_string()
    } else {
        format!("{d} edit(s) from")
    };
    let mut labels = Labels::new();
    labels.insert("similar_to".into(), q.record.name.clone().into());
    labels.insert("distance".into(), d.into());
    labels.insert("similar_downloads".into(), q.record.downloads.into());
    Some(condition(
        FindingKind::TyposquatSuspect,
        Severity::Warning,
        package_subject(&p.record.name),
        d as f64,
        format!(
            "{}: new package {why} popular `{}` ({} downloads) by another author",
            p.record.name, q.record.name, q.record.downloads
        ),
        labels,
    ))
}

/// Every typosquat suspect of these facts at `now`, from a pass over every package (in the
/// facts' order). [`Typosquats`] keeps the same answer up to date without that pass.
pub fn typosquats(facts: &Facts, s: &Settings, now: i64) -> Vec<Condition> {
    let mut popular: HashMap<usize, Vec<(String, &PackageFacts)>> = HashMap::new();
    for p in facts.packages.iter().filter(|p| is_popular(p, s)) {
        let folded = fold_confusables(&p.record.name);
        popular
            .entry(folded.chars().count())
            .or_default()
            .push((folded, p));
    }
    if popular.is_empty() {
        return Vec::new();
    }
    let near = |l: usize| {
        popular
            .get(&l)
            .into_iter()
            .flatten()
            .map(|(f, q)| (f.as_str(), *q))
    };
    facts
        .packages
        .iter()
        .filter(|p| is_new(p.record.created_at, s, now))
        .filter_map(|p| judge(p, s, near))
        .collect()
}

/// The settings that judge typosquats.
type Key = (i64, i64, usize);

fn key(s: &Settings) -> Key {
    (
        s.typosquat_new_within_ms,
        s.typosquat_popular_downloads,
        s.typosquat_max_distance,
    )
}

/// Typosquat suspects kept up to date: the popular packages by folded name length and the new
/// packages by creation time are updated for the packages the facts say were touched since the
/// last pass; a package stops being new as time passes; and only the new packages are judged,
/// against the popular ones of a similar length. Rebuilt when the facts are rebuilt, the
/// settings change, or time goes back.
#[derive(Debug, Default)]
pub struct Typosquats {
    /// The facts' build and change sequence, the settings and the time these are of.
    at: Option<(u64, i64, Key, i64)>,
    /// Popular packages by folded name length: package index -> folded name.
    popular: HashMap<usize, BTreeMap<usize, String>>,
    /// Each popular package's key in `popular`.
    popular_len: HashMap<usize, usize>,
    /// The packages new at the last pass, by (creation time, index).
    recent: BTreeSet<(i64, usize)>,
    /// Each new package's creation time, its key in `recent`.
    created: HashMap<usize, i64>,
    conditions: Vec<Condition>,
}

impl Typosquats {
    /// Brings the suspects up to these facts, settings and time.
    pub fn update(&mut self, facts: &Facts, s: &Settings, now: i64) {
        let k = key(s);
        let mut changed = match self.at {
            Some((build, seq, was, then)) if build == facts.build && was == k && then <= now => {
                // Same sequence: nothing touched, only time may have moved (below).
                let touched: Vec<usize> = if seq == facts.change_seq {
                    Vec::new()
                } else {
                    facts
                        .touched
                        .iter()
                        .enumerate()
                        .filter(|(_, &t)| t > seq)
                        .map(|(i, _)| i)
                        .collect()
                };
                for &i in &touched {
                    self.index(facts, i, s, now);
                }
                !touched.is_empty()
            }
            _ => {
                *self = Self::default();
                for i in 0..facts.packages.len() {
                    self.index(facts, i, s, now);
                }
                true
            }
        };
        while let Some(&(created, i)) = self.recent.first() {
            if is_new(created, s, now) {
                break;
            }
            self.recent.pop_first();
            self.created.remove(&i);
            changed = true;
        }
        if changed {
            self.judge_all(facts, s);
        }
        self.at = Some((facts.build, facts.change_seq, k, now));
    }

    /// The suspects as of the last [`Typosquats::update`].
    pub fn conditions(&self) -> Vec<Condition> {
        self.conditions.clone()
    }

    /// Files package `i` again: popular or not, new or not.
    fn index(&mut self, facts: &Facts, i: usize, s: &Settings, now: i64) {
        if let Some(len) = self.popular_len.remove(&i) {
            if let Some(names) = self.popular.get_mut(&len) {
                names.remove(&i);
            }
        }
        if let Some(created) = self.created.remove(&i) {
            self.recent.remove(&(created, i));
        }
        let Some(p) = facts.packages.get(i) else {
            return;
        };
        if is_popular(p, s) {
            let folded = fold_confusables(&p.record.name);
            let len = folded.chars().count();
            self.popular.entry(len).or_default().insert(i, folded);
            self.popular_len.insert(i, len);
        }
        let created = p.record.created_at;
        if is_new(created, s, now) {
            self.recent.insert((created, i));
            self.created.insert(i, created);
        }
    }

    /// Judges every new package against the popular ones, in the facts' order.
    fn judge_all(&mut self, facts: &Facts, s: &Settings) {
        let mut new: Vec<usize> = self.created.keys().copied().collect();
        new.sort_unstable();
        let popular = &self.popular;
        let near = |l: usize| {
            popular
                .get(&l)
                .into_iter()
                .flatten()
                .filter_map(|(&q, f)| Some((f.as_str(), facts.packages.get(q)?)))
        };
        self.conditions = if popular.values().all(BTreeMap::is_empty) {
            Vec::new()
        } else {
            new.iter()
                .filter_map(|&i| judge(facts.packages.get(i)?, s, near))
                .collect()
        };
    }
}

#[cfg(test)]
#[path = "typosquats_tests.rs"]
mod tests;
