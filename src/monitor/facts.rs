//! Registry facts for analysis: every package with its releases, receipts and dependency edges, updated from what changed when the registry's change sequence moves.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use crate::registry::{
    Dependency, PackageRecord, Registry, RegistryCounts, RegistryError, ReleaseRecord,
};

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
    /// Guard results of the imported ggen receipt.
    pub receipt: Receipt,
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

/// The registry at one change sequence, kept up to date from what changed (see [`FactsCache`]).
/// Packages are never removed between rebuilds: a registry does not delete package records.
#[derive(Debug, Default, Clone)]
pub struct Facts {
    pub packages: Vec<PackageFacts>,
    pub index: HashMap<String, usize>,
    /// Direct dependents of each package (by index), from every release's dependencies.
    pub dependents: Vec<u32>,
    /// The packages each package depends on (by index, existing packages only), sorted, once each.
    pub depends_on: Vec<Vec<u32>>,
    /// The packages that depend on each package: `depends_on` reversed, in no order.
    pub depended_by: Vec<Vec<u32>>,
    /// The change sequence at which each package's facts last changed: its record, its
    /// releases, or the packages it depends on.
    pub touched: Vec<i64>,
    /// The change sequence at which a dependency edge last appeared or went.
    pub edges_changed: i64,
    /// Which build these facts are an update of: package indices hold within one build, so
    /// what is derived from them by index can be updated rather than derived again.
    pub build: u64,
    pub change_seq: i64,
    /// Dependency names that name no package yet, with the packages (by index) naming them.
    unresolved: HashMap<String, BTreeSet<u32>>,
    /// Quarantined packages plus quarantined releases, kept as packages change (what the
    /// registry's `counts` says, without counting a million rows each planning pass).
    quarantined: i64,
}

impl Facts {
    pub fn package(&self, name: &str) -> Option<&PackageFacts> {
        self.index.get(name).map(|&i| &self.packages[i])
    }

    /// The registry's counts as these facts hold them: every package, and the quarantined
    /// packages and releases (as [`crate::registry::Registry::counts`] counts them).
    pub fn counts(&self) -> RegistryCounts {
        RegistryCounts {
            packages: self.packages.len() as i64,
            quarantined: self.quarantined,
        }
    }

    /// What package `i` adds to the quarantined count.
    fn quarantine_weight(&self, i: usize) -> i64 {
        let p = &self.packages[i];
        i64::from(p.record.status == "quarantined")
            + p.releases.iter().filter(|r| r.quarantined).count() as i64
    }

    /// Every package-level dependency edge (dependent, dependency).
    pub fn edges(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.depends_on
            .iter()
            .enumerate()
            .flat_map(|(a, bs)| bs.iter().map(move |&b| (a, b as usize)))
    }

    /// Takes in what changed of one package at `seq`: its record (None: unchanged) and its
    /// releases (None: unchanged). A package not known yet needs its record; releases of a
    /// package with no record are not a package, as a rebuild sees it.
    pub fn update(
        &mut self,
        name: &str,
        record: Option<PackageRecord>,
        releases: Option<Vec<ReleaseFacts>>,
        seq: i64,
    ) {
        let i = match self.index.get(name) {
            Some(&i) => i,
            None => {
                let Some(record) = record.clone() else { return };
                self.insert(record, seq)
            }
        };
        let before = self.quarantine_weight(i);
        self.change(i, record, releases, seq);
        self.quarantined += self.quarantine_weight(i) - before;
    }

    /// [`Facts::update`] of the known package `i`.
    fn change(
        &mut self,
        i: usize,
        record: Option<PackageRecord>,
        releases: Option<Vec<ReleaseFacts>>,
        seq: i64,
    ) {
        if let Some(record) = record {
            if record != self.packages[i].record {
                self.packages[i].receipt = receipt_guards(record.quality_detail.as_deref());
                self.packages[i].record = record;
                self.touched[i] = seq;
            }
        }
        let Some(mut releases) = releases else { return };
        // Oldest first; releases published at the same time by version.
        releases.sort_by(|a, b| (a.published_at, &a.version).cmp(&(b.published_at, &b.version)));
        if releases == self.packages[i].releases {
            return;
        }
        let before = dependency_names(&self.packages[i].releases);
        let after = dependency_names(&releases);
        self.packages[i].releases = releases;
        self.touched[i] = seq;
        if before == after {
            return;
        }
        let a = i as u32;
        for gone in before.difference(&after) {
            match self.index.get(gone) {
                Some(&b) => self.unlink(a, b as u32, seq),
                None => {
                    if let Some(waiting) = self.unresolved.get_mut(gone) {
                        waiting.remove(&a);
                        if waiting.is_empty() {
                            self.unresolved.remove(gone);
                        }
                    }
                }
            }
        }
        for new in after.difference(&before) {
            match self.index.get(new) {
                Some(&b) => self.link(a, b as u32, seq),
                None => {
                    self.unresolved.entry(new.clone()).or_default().insert(a);
                }
            }
        }
    }

    /// A new package, with no releases yet; those that named it before it existed now depend on it.
    fn insert(&mut self, record: PackageRecord, seq: i64) -> usize {
        let i = self.packages.len();
        self.index.insert(record.name.clone(), i);
        let waiting = self.unresolved.remove(&record.name);
        self.packages.push(PackageFacts {
            receipt: receipt_guards(record.quality_detail.as_deref()),
            record,
            releases: Vec::new(),
        });
        self.dependents.push(0);
        self.depends_on.push(Vec::new());
        self.depended_by.push(Vec::new());
        self.touched.push(seq);
        self.quarantined += self.quarantine_weight(i);
        for a in waiting.into_iter().flatten() {
            self.link(a, i as u32, seq);
        }
        i
    }

    /// `a` depends on `b` now; both are touched at `seq` (`b`'s dependents changed).
    fn link(&mut self, a: u32, b: u32, seq: i64) {
        if let Err(at) = self.depends_on[a as usize].binary_search(&b) {
            self.depends_on[a as usize].insert(at, b);
            // Unordered: a popular package has many thousands of dependents.
            self.depended_by[b as usize].push(a);
            self.dependents[b as usize] += 1;
            self.touched[a as usize] = seq;
            self.touched[b as usize] = seq;
            self.edges_changed = seq;
        }
    }

    /// `a` no longer depends on `b`; both are touched at `seq`.
    fn unlink(&mut self, a: u32, b: u32, seq: i64) {
        if let Ok(at) = self.depends_on[a as usize].binary_search(&b) {
            self.depends_on[a as usize].remove(at);
            let by = &mut self.depended_by[b as usize];
            if let Some(at) = by.iter().position(|&x| x == a) {
                by.swap_remove(at);
            }
            self.dependents[b as usize] -= 1;
            self.touched[a as usize] = seq;
            self.touched[b as usize] = seq;
            self.edges_changed = seq;
        }
    }
}

/// A number for each rebuild of the facts, never the same twice in a process.
pub fn next_build() -> u64 {
    static BUILDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    BUILDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// The names a package's releases depend on, once each.
fn dependency_names(releases: &[ReleaseFacts]) -> BTreeSet<String> {
    releases
        .iter()
        .flat_map(|r| &r.dependencies)
        .map(|d| d.name.clone())
        .collect()
}

/// The guard results of a ggen receipt (`guard_type`, passed), in the receipt's order: a
/// package has a handful, and a map of them per package cost more than the package's record.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Receipt(Vec<(Box<str>, bool)>);

impl Receipt {
    /// Whether `guard` passed (the last result for it, where the receipt repeats one).
    pub fn get(&self, guard: &str) -> Option<bool> {
        self.0
            .iter()
            .rev()
            .find(|(g, _)| g.as_ref() == guard)
            .map(|&(_, passed)| passed)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Reads ggen's receipt guard results out of a package's stored `quality_detail`.
pub fn receipt_guards(detail: Option<&str>) -> Receipt {
    let Some(detail) = detail else {
        return Receipt::default();
    };
    let Ok(serde_json::Value::Array(guards)) = serde_json::from_str(detail) else {
        return Receipt::default();
    };
    Receipt(
        guards
            .iter()
            .filter_map(|g| {
                Some((
                    g.get("guard_type")?.as_str()?.into(),
                    g.get("passed")?.as_bool()?,
                ))
            })
            .collect(),
    )
}

/// Above this share of the registry's packages changed at once, the facts are rebuilt rather
/// than updated package by package (one read of everything beats many reads by name).
const REBUILD_ABOVE_SHARE: usize = 10;

/// Keeps the facts up to date from what each monitor pass read: the package records changed
/// since their change sequence and the releases read (or gone) since. Each release's facts are
/// held once, in the facts (or, for a package with no record yet, aside until its record
/// comes). The facts are rebuilt from every record on a full read, when the registry cannot say
/// what changed, or when most changed.
#[derive(Debug, Default)]
pub struct FactsCache {
    facts: Option<Arc<Facts>>,
    /// Releases read (Some) or gone (None) since the facts were last brought up to date, by
    /// version, in the order seen (a later one wins). A list, not a map, per package: at a first
    /// read of a million packages a map per package (a leaf node of eleven slots) was estimated at a
    /// gigabyte for a moment.
    changes: HashMap<String, Vec<(String, Option<ReleaseFacts>)>>,
    /// Releases of packages the facts do not hold (no record yet).
    orphans: HashMap<String, Vec<ReleaseFacts>>,
    /// How the last call brought the facts up to date, for the logs and the bench.
    pub last: Option<Updated>,
}

/// How the facts were brought up to date.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Updated {
    Unchanged,
    Rebuilt,
    /// Updated in place: this many packages changed.
    Incremental(usize),
}

/// A package's releases with these changes applied (in no particular order: [`Facts::update`]
/// orders them).
fn apply(
    mut releases: Vec<ReleaseFacts>,
    changes: Vec<(String, Option<ReleaseFacts>)>,
) -> Vec<ReleaseFacts> {
    if releases.len() + changes.len() > 32 {
        // Many: by version, so that each change finds its release at once.
        let mut by: BTreeMap<String, ReleaseFacts> = releases
            .into_iter()
            .map(|r| (r.version.clone(), r))
            .collect();
        for (version, change) in changes {
            match change {
                Some(r) => by.insert(version, r),
                None => by.remove(&version),
            };
        }
        return by.into_values().collect();
    }
    for (version, change) in changes {
        let at = releases.iter().position(|r| r.version == version);
        match (at, change) {
            (Some(i), Some(r)) => releases[i] = r,
            (None, Some(r)) => releases.push(r),
            (Some(i), None) => {
                releases.swap_remove(i);
            }
            (None, None) => {}
        }
    }
    releases
}

impl FactsCache {
    /// Takes in the releases a monitor pass read, with their dependencies, which are moved
    /// here (the monitor keeps the records without them).
    pub fn note_releases(&mut self, releases: &mut [ReleaseRecord]) {
        for r in releases {
            let mut facts = ReleaseFacts::from(&*r);
            facts.dependencies = std::mem::take(&mut r.dependencies);
            self.changes
                .entry(r.package.clone())
                .or_default()
                .push((r.version.clone(), Some(facts)));
        }
    }

    /// Forgets releases that left the registry.
    pub fn forget(&mut self, removed: &[(String, String)]) {
        for (p, v) in removed {
            self.changes
                .entry(p.clone())
                .or_default()
                .push((v.clone(), None));
        }
    }

    /// Facts at `seq`: unchanged while `seq` stays and no release changed; rebuilt from every
    /// record when `full` (or the registry cannot say what changed); otherwise updated in place.
    pub async fn facts<R: Registry>(
        &mut self,
        registry: &R,
        seq: i64,
        full: bool,
    ) -> Result<Arc<Facts>, RegistryError> {
        let current = match &self.facts {
            Some(f) if !full => Arc::clone(f),
            _ => return self.rebuild(registry, seq).await,
        };
        if current.change_seq == seq && self.changes.is_empty() {
            self.last = Some(Updated::Unchanged);
            return Ok(current);
        }
        let Some(records) = registry.packages_since(current.change_seq).await? else {
            return self.rebuild(registry, seq).await;
        };
        if self.changes.len() + records.len()
            > (current.packages.len() / REBUILD_ABOVE_SHARE).max(1_000)
        {
            return self.rebuild(registry, seq).await;
        }
        drop(current);
        let Some(f) = self.facts.as_mut() else {
            return self.rebuild(registry, seq).await;
        };
        let mut changes = std::mem::take(&mut self.changes);
        let mut records: BTreeMap<String, PackageRecord> =
            records.into_iter().map(|r| (r.name.clone(), r)).collect();
        let mut names: BTreeSet<String> = records.keys().cloned().collect();
        names.extend(changes.keys().cloned());
        let facts = Arc::make_mut(f);
        for name in &names {
            let record = records.remove(name);
            let held = facts.index.get(name).copied();
            // A package new to the facts brings the releases seen before its record.
            let orphaned = held.is_none().then(|| self.orphans.remove(name)).flatten();
            let change = changes.remove(name);
            let releases = match (held, change, orphaned) {
                (Some(i), Some(change), _) => {
                    Some(apply(facts.packages[i].releases.clone(), change))
                }
                (Some(_), None, _) => None,
                (None, change, orphaned) => Some(apply(
                    orphaned.unwrap_or_default(),
                    change.unwrap_or_default(),
                )),
            };
            if held.is_none() && record.is_none() {
                // Still no record: the releases wait aside for it.
                if let Some(releases) = releases.filter(|r| !r.is_empty()) {
                    self.orphans.insert(name.clone(), releases);
                }
                continue;
            }
            facts.update(name, record, releases, seq);
        }
        facts.change_seq = seq;
        self.last = Some(Updated::Incremental(names.len()));
        Ok(Arc::clone(f))
    }

    /// Facts rebuilt from every package record and dependency row, with the releases the facts
    /// held (moved out of them, not copied, when nothing else holds them), those held aside and
    /// those that changed since.
    async fn rebuild<R: Registry>(
        &mut self,
        registry: &R,
        seq: i64,
    ) -> Result<Arc<Facts>, RegistryError> {
        let started = std::time::Instant::now();
        let records = registry.packages().await?;
        let packages_s = started.elapsed().as_secs_f64();
        let mut releases = std::mem::take(&mut self.orphans);
        match self.facts.take().map(Arc::try_unwrap) {
            Some(Ok(old)) => {
                for p in old.packages {
                    releases.insert(p.record.name, p.releases);
                }
            }
            // Still read by someone: only the releases are copied.
            Some(Err(shared)) => {
                for p in &shared.packages {
                    releases.insert(p.record.name.clone(), p.releases.clone());
                }
            }
            None => {}
        }
        for (name, change) in std::mem::take(&mut self.changes) {
            let held = releases.remove(&name).unwrap_or_default();
            releases.insert(name, apply(held, change));
        }
        let mut facts = Facts {
            change_seq: seq,
            edges_changed: seq,
            build: next_build(),
            ..Default::default()
        };
        for record in records {
            let name = record.name.clone();
            let of = releases.remove(&name).unwrap_or_default();
            facts.update(&name, Some(record), Some(of), seq);
        }
        releases.retain(|_, r| !r.is_empty());
        self.orphans = releases;
        tracing::debug!(
            packages_s,
            built_s = started.elapsed().as_secs_f64() - packages_s,
            "facts rebuilt"
        );
        let facts = Arc::new(facts);
        self.facts = Some(Arc::clone(&facts));
        self.last = Some(Updated::Rebuilt);
        Ok(facts)
    }
}

#[cfg(test)]
#[path = "facts_tests.rs"]
mod incremental;

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
            receipt: Receipt::default(),
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
        let mut facts = Facts {
            index: packages
                .iter()
                .enumerate()
                .map(|(i, p)| (p.record.name.clone(), i))
                .collect(),
            depends_on: vec![Vec::new(); packages.len()],
            depended_by: vec![Vec::new(); packages.len()],
            touched: vec![seq; packages.len()],
            edges_changed: seq,
            build: super::next_build(),
            dependents,
            packages,
            change_seq: seq,
            unresolved: HashMap::new(),
            quarantined: 0,
        };
        facts.quarantined = (0..facts.packages.len())
            .map(|i| facts.quarantine_weight(i))
            .sum();
        facts
    }
}
