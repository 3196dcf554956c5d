//! Detectors on the registry's facts alone: unmaintained packages, unavailable dependencies, dependency cycles (typosquats are in `typosquats.rs`).

use petgraph::algo::tarjan_scc;
use petgraph::graph::DiGraph;
use std::collections::BTreeSet;

use super::lifecycle::Condition;
use super::settings::Settings;
use crate::model::{FindingKind, Severity, Subject};
use crate::monitor::facts::Facts;

const DAY_MS: f64 = 86_400_000.0;

pub(super) type Labels = serde_json::Map<String, serde_json::Value>;

pub fn condition(
    kind: FindingKind,
    severity: Severity,
    subject: Subject,
    value: f64,
    message: String,
    labels: Labels,
) -> Condition {
    Condition {
        kind,
        severity,
        subject,
        value,
        message,
        labels,
    }
}

pub(super) fn package_subject(name: &str) -> Subject {
    Subject {
        package: name.to_string(),
        version: None,
    }
}

/// No release for longer than the setting while others depend on it. Deprecated and quarantined
/// packages are already flagged and are left alone.
///
/// The packages that can be unmaintained (active, depended on, released at least once) ordered
/// by their last release, kept up to date from the packages the facts say changed: a cycle then
/// looks only at the ones whose last release is old enough instead of at every package.
#[derive(Debug, Default)]
pub struct Unmaintained {
    /// The facts' build and change sequence this was brought up to.
    at: Option<(u64, i64)>,
    /// (last release, facts index), oldest first.
    by_last: BTreeSet<(i64, usize)>,
    /// The last release each package is ordered by (None: it cannot be unmaintained).
    last: Vec<Option<i64>>,
}

impl Unmaintained {
    fn eligible(facts: &Facts, i: usize) -> Option<i64> {
        let p = &facts.packages[i];
        if facts.dependents[i] > 0 && p.record.status == "active" {
            p.last_release_at()
        } else {
            None
        }
    }

    fn update(&mut self, facts: &Facts) {
        let since = match self.at {
            Some((build, seq)) if build == facts.build && seq == facts.change_seq => return,
            Some((build, seq)) if build == facts.build && seq < facts.change_seq => Some(seq),
            _ => None,
        };
        if since.is_none() {
            self.by_last.clear();
            self.last.clear();
        }
        self.last.resize(facts.packages.len(), None);
        for (i, &t) in facts.touched.iter().enumerate() {
            if since.is_some_and(|s| t <= s) {
                continue;
            }
            if let Some(old) = self.last[i].take() {
                self.by_last.remove(&(old, i));
            }
            self.last[i] = Self::eligible(facts, i);
            if let Some(last) = self.last[i] {
                self.by_last.insert((last, i));
            }
        }
        self.at = Some((facts.build, facts.change_seq));
    }

    pub fn conditions(&mut self, facts: &Facts, s: &Settings, now: i64) -> Vec<Condition> {
        self.update(facts);
        let cutoff = now.saturating_sub(s.unmaintained_after_ms);
        // In the facts' order, as a pass over every package lists them.
        let mut due: Vec<(usize, i64)> = self
            .by_last
            .range(..(cutoff, 0))
            .map(|&(l, i)| (i, l))
            .collect();
        due.sort_unstable();
        let mut out = Vec::new();
        for (i, last) in due {
            let p = &facts.packages[i];
            let dependents = facts.dependents[i];
            let days = ((now - last) as f64 / DAY_MS).floor();
            let mut labels = Labels::new();
            labels.insert("dependents".into(), dependents.into());
            labels.insert("last_release".into(), crate::clock::rfc3339(last).into());
            out.push(condition(
                FindingKind::Unmaintained,
                Severity::Warning,
                package_subject(&p.record.name),
                days,
                format!(
                    "{}: no release for {days} days, and {dependents} packages depend on it",
                    p.record.name
                ),
                labels,
            ));
        }
        out
    }
}

/// Why a dependency of a release cannot be installed, if it cannot.
fn unavailable(facts: &Facts, name: &str, requirement: &str) -> Option<&'static str> {
    let Some(dep) = facts.package(name) else {
        return Some("missing");
    };
    if dep.record.status == "quarantined" {
        return Some("quarantined");
    }
    let req = semver::VersionReq::parse(requirement).ok();
    let matches = |v: &str| match (&req, semver::Version::parse(v)) {
        (Some(req), Ok(v)) => req.matches(&v),
        // An odd version or requirement (real data has them) is not held against the package.
        _ => true,
    };
    let candidates: Vec<_> = dep
        .releases
        .iter()
        .filter(|r| matches(&r.version))
        .collect();
    if candidates.is_empty() {
        return Some("no release matches the requirement");
    }
    if candidates.iter().all(|r| !r.available()) {
        return Some(if candidates.iter().all(|r| r.quarantined) {
            "every matching release is quarantined"
        } else {
            "every matching release is yanked or quarantined"
        });
    }
    None
}

/// The latest release of an active package depends on something missing, quarantined or yanked.
pub fn dependency_unavailable(facts: &Facts) -> Vec<Condition> {
    (0..facts.packages.len())
        .filter_map(|i| unavailable_dependencies(facts, i))
        .collect()
}

/// Whether the latest release of package `i` depends on something missing, quarantined or
/// yanked: it depends on nothing but the package and the ones it names.
pub fn unavailable_dependencies(facts: &Facts, i: usize) -> Option<Condition> {
    let p = &facts.packages[i];
    if p.record.status == "quarantined" {
        return None;
    }
    let latest = p.latest()?;
    let mut broken = Vec::new();
    for d in &latest.dependencies {
        if let Some(why) = unavailable(facts, &d.name, &d.requirement) {
            broken.push((d, why));
        }
    }
    if broken.is_empty() {
        return None;
    }
    let list: Vec<String> = broken
        .iter()
        .map(|(d, why)| format!("{} {} ({why})", d.name, d.requirement))
        .collect();
    let mut labels = Labels::new();
    labels.insert(
        "dependencies".into(),
        broken
            .iter()
            .map(|(d, _)| serde_json::Value::from(d.name.clone()))
            .collect::<Vec<_>>()
            .into(),
    );
    labels.insert(
        "reasons".into(),
        broken
            .iter()
            .map(|(_, w)| serde_json::Value::from(*w))
            .collect::<Vec<_>>()
            .into(),
    );
    Some(condition(
        FindingKind::DependencyUnavailable,
        Severity::Warning,
        Subject {
            package: p.record.name.clone(),
            version: Some(latest.version.clone()),
        },
        broken.len() as f64,
        format!(
            "{}@{}: cannot be installed: {}",
            p.record.name,
            latest.version,
            list.join(", ")
        ),
        labels,
    ))
}

/// Every dependency cycle (a strongly connected component of more than one package, or a
/// package depending on itself), reported once, on its first package by name.
pub fn dependency_cycles(facts: &Facts) -> Vec<Condition> {
    let mut g: DiGraph<usize, ()> =
        DiGraph::with_capacity(facts.packages.len(), facts.edges().count());
    let nodes: Vec<_> = (0..facts.packages.len()).map(|i| g.add_node(i)).collect();
    let mut self_loops = Vec::new();
    for (a, b) in facts.edges() {
        if a == b {
            self_loops.push(a);
        } else {
            g.add_edge(nodes[a], nodes[b], ());
        }
    }
    let mut cycles: Vec<Vec<&str>> = tarjan_scc(&g)
        .into_iter()
        .filter(|scc| scc.len() > 1)
        .map(|scc| {
            scc.iter()
                .map(|n| facts.packages[g[*n]].record.name.as_str())
                .collect()
        })
        .collect();
    cycles.extend(
        self_loops
            .into_iter()
            .map(|i| vec![facts.packages[i].record.name.as_str()]),
    );
    cycles
        .into_iter()
        .map(|mut members| {
            members.sort_unstable();
            members.dedup();
            let first = members[0];
            let mut labels = Labels::new();
            labels.insert(
                "members".into(),
                members
                    .iter()
                    .map(|m| serde_json::Value::from(*m))
                    .collect::<Vec<_>>()
                    .into(),
            );
            condition(
                FindingKind::DependencyCycle,
                Severity::Warning,
                package_subject(first),
                members.len() as f64,
                format!("dependency cycle: {}", members.join(" -> ")),
                labels,
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::monitor::facts::testing::{facts, package};
    use crate::monitor::facts::PackageFacts;

    /// Which packages a pass over every package finds unmaintained, with their day counts.
    fn every_package(f: &Facts, s: &Settings, now: i64) -> Vec<(String, f64)> {
        f.packages
            .iter()
            .enumerate()
            .filter(|(i, p)| f.dependents[*i] > 0 && p.record.status == "active")
            .filter_map(|(_, p)| Some((p, p.last_release_at()?)))
            .filter(|(_, last)| now - last > s.unmaintained_after_ms)
            .map(|(p, last)| {
                (
                    p.record.name.clone(),
                    ((now - last) as f64 / DAY_MS).floor(),
                )
            })
            .collect()
    }

    #[test]
    fn the_sorted_index_finds_what_a_pass_over_every_package_finds() {
        const HOUR: i64 = 3_600_000;
        let s = Settings::default();
        let released = 1_800_000_000_000;
        // Released 10 hours before to 23 hours after `released`, out of name order.
        let mut packages: Vec<PackageFacts> = (0..12)
            .map(|i| {
                package(
                    &format!("p{i:02}"),
                    released - 10 * HOUR + (i * 7 % 12) * 3 * HOUR,
                )
            })
            .collect();
        packages[3].record.status = "deprecated".into();
        let dependents = (0..12).map(|i| u32::from(i % 4 != 1)).collect();
        let mut f = facts(packages, dependents, 1);
        let mut index = Unmaintained::default();
        let mut grew = 0;
        for hour in 0..80 {
            let now = released + s.unmaintained_after_ms + hour * HOUR;
            if hour == 40 {
                // A new release of the oldest: the facts change, touching it, and the index is
                // updated for it.
                f.packages[0].releases[0].published_at = now;
                f.touched[0] = 2;
                f.change_seq = 2;
            }
            let got: Vec<(String, f64)> = index
                .conditions(&f, &s, now)
                .into_iter()
                .map(|c| (c.subject.package, c.value))
                .collect();
            let want = every_package(&f, &s, now);
            assert_eq!(got, want, "hour {hour}");
            grew = grew.max(got.len());
        }
        assert!(grew >= 6, "packages crossed the threshold: {grew}");
    }
}
