//! Conditions on the registry's dependencies kept up to date from what the facts say changed: unavailable dependencies recomputed for the packages touched and their dependents, cycles only when an edge changed.

use std::collections::{BTreeMap, BTreeSet};

use super::checks;
use super::lifecycle::Condition;
use crate::monitor::facts::Facts;

/// `dependency_unavailable` and `dependency_cycle` conditions of the last facts seen.
#[derive(Debug, Default)]
pub struct DependencyConditions {
    /// The facts' build and change sequence these were brought up to.
    at: Option<(u64, i64)>,
    /// By package index (the facts' order).
    unavailable: BTreeMap<usize, Condition>,
    cycles: Vec<Condition>,
}

impl DependencyConditions {
    /// Brings the conditions up to these facts: within one build of the facts, only packages
    /// touched since the last update and the packages depending on them are judged again (a
    /// package's dependencies are available or not by the package and the ones it names), and
    /// cycles are found again only when an edge changed; otherwise everything is.
    pub fn update(&mut self, facts: &Facts) {
        let since = match self.at {
            Some((build, seq)) if build == facts.build && seq == facts.change_seq => return,
            Some((build, seq)) if build == facts.build && seq < facts.change_seq => Some(seq),
            _ => None,
        };
        match since {
            Some(seq) => {
                let mut again = BTreeSet::new();
                for (i, &t) in facts.touched.iter().enumerate() {
                    if t > seq {
                        again.insert(i);
                        again.extend(facts.depended_by[i].iter().map(|&a| a as usize));
                    }
                }
                for i in again {
                    match checks::unavailable_dependencies(facts, i) {
                        Some(c) => self.unavailable.insert(i, c),
                        None => self.unavailable.remove(&i),
                    };
                }
                if facts.edges_changed > seq {
                    self.cycles = checks::dependency_cycles(facts);
                }
            }
            None => {
                self.unavailable = (0..facts.packages.len())
                    .filter_map(|i| Some((i, checks::unavailable_dependencies(facts, i)?)))
                    .collect();
                self.cycles = checks::dependency_cycles(facts);
            }
        }
        self.at = Some((facts.build, facts.change_seq));
    }

    pub fn unavailable(&self) -> Vec<Condition> {
        self.unavailable.values().cloned().collect()
    }

    pub fn cycles(&self) -> Vec<Condition> {
        self.cycles.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyze::settings::Settings;
    use crate::monitor::facts::{next_build, ReleaseFacts};
    use crate::registry::{Dependency, PackageRecord};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    const NAMES: [&str; 8] = ["a", "b", "c", "d", "e", "f", "g", "h"];

    fn record(name: &str, rng: &mut ChaCha8Rng) -> PackageRecord {
        let mut p = crate::monitor::facts::testing::package(name, 0).record;
        p.status = ["active", "active", "active", "quarantined"][rng.random_range(0..4)].into();
        p
    }

    fn releases(rng: &mut ChaCha8Rng) -> Vec<ReleaseFacts> {
        (0..rng.random_range(0..3))
            .map(|r| ReleaseFacts {
                version: format!("1.{r}.0"),
                published_at: rng.random_range(0..1000) * 86_400_000,
                yanked: rng.random_range(0..4) == 0,
                quarantined: rng.random_range(0..5) == 0,
                dependencies: (0..rng.random_range(0..3))
                    .map(|_| Dependency {
                        name: NAMES[rng.random_range(0..NAMES.len())].into(),
                        requirement: ["^1", "^2"][rng.random_range(0..2)].into(),
                    })
                    .collect(),
            })
            .collect()
    }

    fn key(c: &Condition) -> String {
        format!("{:?} {:?} {} {}", c.kind, c.subject, c.value, c.message)
    }

    /// After any sequence of changes, the conditions kept up to date are the ones a pass over
    /// every package finds (unavailable dependencies, cycles, unmaintained packages).
    #[test]
    fn conditions_kept_up_to_date_equal_the_ones_found_from_scratch() {
        let s = Settings::default();
        let now = 1_500 * 86_400_000;
        let mut updated_in_part = 0;
        for seed in 0..200u64 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut facts = Facts::default();
            facts.build = next_build();
            let mut kept = DependencyConditions::default();
            let mut unmaintained = checks::Unmaintained::default();
            for seq in 1..60 {
                let name = NAMES[rng.random_range(0..NAMES.len())];
                let record = (rng.random_range(0..3) == 0 || !facts.index.contains_key(name))
                    .then(|| record(name, &mut rng));
                let rel = (rng.random_range(0..3) > 0).then(|| releases(&mut rng));
                facts.update(name, record, rel, seq);
                facts.change_seq = seq;
                let before = kept.at;
                kept.update(&facts);
                updated_in_part += before.is_some() as u32;
                let mut rebuilt = facts.clone();
                rebuilt.build = next_build();
                let mut fresh = DependencyConditions::default();
                fresh.update(&rebuilt);
                let keys = |v: Vec<Condition>| v.iter().map(key).collect::<Vec<_>>();
                assert_eq!(
                    keys(kept.unavailable()),
                    keys(fresh.unavailable()),
                    "seed {seed} seq {seq}"
                );
                assert_eq!(
                    keys(kept.cycles()),
                    keys(fresh.cycles()),
                    "seed {seed} seq {seq}"
                );
                let mut fresh_unmaintained = checks::Unmaintained::default();
                assert_eq!(
                    keys(unmaintained.conditions(&facts, &s, now)),
                    keys(fresh_unmaintained.conditions(&rebuilt, &s, now)),
                    "seed {seed} seq {seq}"
                );
            }
        }
        assert!(updated_in_part > 10_000);
    }
}
