//! Registry facts for analysis: every package with its releases, receipts and dependency edges, rebuilt only when the registry's change sequence moves.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::registry::{Dependency, PackageRecord, Registry, RegistryError, ReleaseRecord};

/// What analysis needs of one release (no artifact, checksum or signature: those are observed).
#[derive(Debug, Clone, PartialEq)]
pub struct ReleaseFacts {
    pub version: String,
    pub published_at: i64,
    pub yanked: bool,
    pub quarantined: bool,
    pub dependencies: Vec<Dependency>,
}

impl From<&ReleaseRecord> for ReleaseFacts {
    fn from(r: &ReleaseRecord) -> Self {
        Self {
            version: r.version.clone(),
            published_at: r.published_at,
            yanked: r.yanked,
            quarantined: r.quarantined,
            dependencies: r.dependencies.clone(),
        }
    }
}

impl ReleaseFacts {
    /// Installable: neither yanked nor quarantined.
    pub fn available(&self) -> bool {
        !self.yanked && !self.quarantined
    }
}

/// One package as analysis sees it.
#[derive(Debug, Clone)]
pub struct PackageFacts {
    pub record: PackageRecord,
    /// Guard results of the imported ggen receipt (`guard_type` -> passed).
    pub receipt: HashMap<String, bool>,
    /// Oldest first.
    pub releases: Vec<ReleaseFacts>,
}

impl PackageFacts {
    /// The release `latest` names, or the newest one.
    pub fn latest(&self) -> Option<&ReleaseFacts> {
        self.record
            .latest
            .as_ref()
            .and_then(|v| self.releases.iter().find(|r| &r.version == v))
            .or_else(|| self.releases.last())
    }
    pub fn last_release_at(&self) -> Option<i64> {
        self.releases.iter().map(|r| r.published_at).max()
    }
}

/// The registry at one change sequence.
#[derive(Debug, Default)]
pub struct Facts {
    pub packages: Vec<PackageFacts>,
    pub index: HashMap<String, usize>,
    /// Direct dependents of each package (by index), from every release's dependencies.
    pub dependents: Vec<u32>,
    /// Package-level dependency edges (dependent, dependency) between existing packages.
    pub edges: Vec<(usize, usize)>,
    pub change_seq: i64,
}

impl Facts {
    pub fn package(&self, name: &str) -> Option<&PackageFacts> {
        self.index.get(name).map(|&i| &self.packages[i])
    }
}

/// Reads ggen's receipt guard results out of a package's stored `quality_detail`.
pub fn receipt_guards(detail: Option<&str>) -> HashMap<String, bool> {
    let Some(detail) = detail else {
        return HashMap::new();
    };
    let Ok(serde_json::Value::Array(guards)) = serde_json::from_str(detail) else {
        return HashMap::new();
    };
    guards
        .iter()
        .filter_map(|g| {
            Some((
                g.get("guard_type")?.as_str()?.to_string(),
                g.get("passed")?.as_bool()?,
            ))
        })
        .collect()
}

/// Keeps the releases seen so far (updated from every monitor pass) and the last facts built.
#[derive(Debug, Default)]
pub struct FactsCache {
    releases: HashMap<String, BTreeMap<String, ReleaseFacts>>,
    facts: Option<Arc<Facts>>,
}

impl FactsCache {
    /// Takes in the releases a monitor pass read.
    pub fn note_releases(&mut self, releases: &[ReleaseRecord]) {
        for r in releases {
            self.releases
                .entry(r.package.clone())
                .or_default()
                .insert(r.version.clone(), r.into());
        }
    }

    /// Facts at `seq`; rebuilt from the registry's packages and edges only when `seq` moved.
    pub async fn facts<R: Registry>(
        &mut self,
        registry: &R,
        seq: i64,
    ) -> Result<Arc<Facts>, RegistryError> {
        if let Some(f) = &self.facts {
            if f.change_seq == seq {
                return Ok(Arc::clone(f));
            }
        }
        let records = registry.packages().await?;
        let mut deps: HashMap<(String, String), Vec<Dependency>> = HashMap::new();
        for (p, v, d) in registry.release_dependencies().await? {
            deps.entry((p, v)).or_default().push(d);
        }
        let mut facts = Facts {
            change_seq: seq,
            ..Default::default()
        };
        for record in records {
            let mut releases: Vec<ReleaseFacts> = self
                .releases
                .get(&record.name)
                .map(|m| m.values().cloned().collect())
                .unwrap_or_default();
            for r in &mut releases {
                if let Some(d) = deps.remove(&(record.name.clone(), r.version.clone())) {
                    r.dependencies = d;
                }
            }
            releases.sort_by_key(|r| r.published_at);
            facts
                .index
                .insert(record.name.clone(), facts.packages.len());
            facts.packages.push(PackageFacts {
                receipt: receipt_guards(record.quality_detail.as_deref()),
                record,
                releases,
            });
        }
        facts.dependents = vec![0; facts.packages.len()];
        let mut edges = std::collections::HashSet::new();
        for (a, p) in facts.packages.iter().enumerate() {
            for d in p.releases.iter().flat_map(|r| &r.dependencies) {
                if let Some(&b) = facts.index.get(&d.name) {
                    if edges.insert((a, b)) {
                        facts.dependents[b] += 1;
                        facts.edges.push((a, b));
                    }
                }
            }
        }
        let facts = Arc::new(facts);
        self.facts = Some(Arc::clone(&facts));
        Ok(facts)
    }
}

/// Hand-made facts for unit tests.
#[cfg(test)]
pub mod testing {
    use super::*;

    /// An active package with a licence and one release, 1.0.0, published at `released`.
    pub fn package(name: &str, released: i64) -> PackageFacts {
        PackageFacts {
            record: PackageRecord {
                name: name.into(),
                description: "d".into(),
                category: None,
                author: None,
                license: Some("MIT".into()),
                repository: None,
                tags: vec![],
                keywords: vec![],
                downloads: 0,
                stars: 0,
                status: "active".into(),
                latest: Some("1.0.0".into()),
                quality: None,
                quality_detail: None,
                production_ready: false,
                created_at: released,
                updated_at: released,
            },
            receipt: HashMap::new(),
            releases: vec![ReleaseFacts {
                version: "1.0.0".into(),
                published_at: released,
                yanked: false,
                quarantined: false,
                dependencies: vec![],
            }],
        }
    }

    /// Facts of these packages, with these numbers of dependents, at change sequence `seq`.
    pub fn facts(packages: Vec<PackageFacts>, dependents: Vec<u32>, seq: i64) -> Facts {
        Facts {
            index: packages
                .iter()
                .enumerate()
                .map(|(i, p)| (p.record.name.clone(), i))
                .collect(),
            dependents,
            packages,
            edges: vec![],
            change_seq: seq,
        }
    }
}
