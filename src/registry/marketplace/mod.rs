//! The ggen-marketplace backend: a checkout of the marketplace's repository as the registry of record, mirrored into the store for the loop, and the catalog ggen clients install from published as a projection of it and the remediations in force.

pub mod archive;
pub mod catalog;
mod from_tree;
pub mod generate;
mod mirror;
pub mod overlay;
mod projection;
pub mod publish;
mod registry_impl;
pub mod sense;
pub mod tree;
pub mod watch;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

pub use from_tree::catalog_from_tree;

use catalog::Catalog;
use publish::Published;
use sense::ArchiveSeen;
use tree::PackTree;

use super::fetch::{is_url, FetchLimits, Fetcher};
use super::{Problem, Refreshed, Registry, RegistryError, SqlRegistry};
use crate::keys::KeyPair;
use crate::model::FindingKind;

/// The kinds this backend judges on every refresh, completely.
pub const JUDGED: [FindingKind; 3] = [
    FindingKind::ContentMismatch,
    FindingKind::PackRefused,
    FindingKind::SuccessorMissing,
];

/// Where the archives users download are: a folder, or an `http(s)://` base URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Archives {
    Dir(PathBuf),
    Url(String),
}

impl Archives {
    pub fn parse(s: &str, base: &Path) -> Self {
        if is_url(s) {
            Self::Url(s.trim_end_matches('/').to_string())
        } else {
            let p = PathBuf::from(s);
            Self::Dir(if p.is_absolute() { p } else { base.join(p) })
        }
    }
}

/// The `[registry]` section for `kind = "ggen-marketplace"`: plain data.
#[derive(Debug, Clone, PartialEq)]
pub struct MarketplaceConfig {
    /// The repository's working tree; mapek never writes it.
    pub checkout: PathBuf,
    /// The catalog the marketplace's tool built (default `<checkout>/dist/site/index.json`).
    pub catalog: PathBuf,
    pub archives: Archives,
    /// The catalog users read, written by mapek; None: served over HTTP only.
    pub publish: Option<PathBuf>,
    /// Unsigned archives are judged `signature_missing` (false: only signed ones are checked).
    pub require_signatures: bool,
    pub fetch: FetchLimits,
    /// Filesystem notifications (off: only the periodic full scan notices changes).
    pub watch: bool,
}

impl MarketplaceConfig {
    /// The defaults for a checkout: the catalog and archives where the marketplace's tool puts them.
    pub fn at(checkout: impl Into<PathBuf>) -> Self {
        let checkout = checkout.into();
        Self {
            catalog: checkout.join("dist/site/index.json"),
            archives: Archives::Dir(checkout.join("dist/packs")),
            checkout,
            publish: None,
            require_signatures: false,
            fetch: FetchLimits::default(),
            watch: true,
        }
    }

    /// The GitHub repository download URLs name (`[source_authority] repository`).
    pub fn repository(&self) -> String {
        std::fs::read_to_string(self.checkout.join("marketplace.toml"))
            .ok()
            .and_then(|s| toml::from_str::<toml::Table>(&s).ok())
            .and_then(|t| {
                t.get("source_authority")?
                    .get("repository")?
                    .as_str()
                    .map(str::to_string)
            })
            .unwrap_or_else(|| "seanchatmangpt/ggen-marketplace".into())
    }
}

/// What the sensors know of the checkout between refreshes.
#[derive(Debug, Default)]
struct State {
    catalog_sha: Option<[u8; 32]>,
    catalog: Option<Arc<Catalog>>,
    /// By pack directory.
    trees: BTreeMap<String, PackTree>,
    /// By pack name, for the catalog's version.
    archives: HashMap<String, ArchiveSeen>,
    /// Content and admission problems, by pack.
    problems: BTreeMap<String, Vec<Problem>>,
    mirror: Option<mirror::Mirror>,
    /// What was last published, and the records already rendered.
    projection: projection::Projection,
    /// The dangling successors, as of the last change to any tree.
    successors: Vec<Problem>,
    /// (registry change sequence, input catalog) of the last publication: while both stay, the
    /// remediations in force are the same and nothing is read to know it.
    published_for: Option<(i64, [u8; 32])>,
}

/// The ggen-marketplace registry.
pub struct Marketplace {
    /// The mirror of the catalog's packs and releases the loop reads, and where remediations land.
    pub sql: SqlRegistry,
    pub config: MarketplaceConfig,
    /// The GitHub repository of the marketplace (`owner/name`).
    repository: String,
    fetcher: Option<Fetcher>,
    key: Option<Arc<KeyPair>>,
    state: tokio::sync::Mutex<State>,
    published: RwLock<Option<Arc<Published>>>,
    pub changes: Arc<watch::Changes>,
    watcher: std::sync::Mutex<Option<notify::RecommendedWatcher>>,
    /// Each archive's SHA-256 as last read, by location.
    digests: RwLock<HashMap<String, [u8; 32]>>,
}

impl std::fmt::Debug for Marketplace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Marketplace")
            .field("config", &self.config)
            .finish()
    }
}

impl Marketplace {
    /// A marketplace registry mirrored in `sql`'s store; `key` signs the published catalog.
    pub fn new(
        sql: SqlRegistry,
        config: MarketplaceConfig,
        key: Option<Arc<KeyPair>>,
    ) -> Result<Self, RegistryError> {
        let fetcher = match &config.archives {
            Archives::Url(_) => {
                Some(Fetcher::new(config.fetch).map_err(RegistryError::Unavailable)?)
            }
            Archives::Dir(_) => None,
        };
        if let Some(p) = &config.publish {
            publish::remove_leftovers(p);
        }
        let m = Self {
            sql,
            fetcher,
            key,
            state: Default::default(),
            published: RwLock::new(None),
            changes: Arc::default(),
            watcher: std::sync::Mutex::new(None),
            digests: RwLock::default(),
            repository: config.repository(),
            config,
        };
        if m.config.watch {
            m.start_watching();
        }
        Ok(m)
    }

    /// Starts the filesystem watcher; without one, changes are noticed at full scans.
    fn start_watching(&self) {
        let watched = watch::Watched {
            packs: self.config.checkout.join("packs"),
            catalog: self.config.catalog.clone(),
            archives: match &self.config.archives {
                Archives::Dir(d) => Some(d.clone()),
                Archives::Url(_) => None,
            },
        };
        match watch::start(watched, self.changes.clone()) {
            Ok(w) => {
                if let Ok(mut slot) = self.watcher.lock() {
                    *slot = Some(w);
                }
            }
            Err(error) => tracing::warn!(
                %error,
                checkout = %self.config.checkout.display(),
                "cannot watch the checkout; changes are noticed at the next full scan"
            ),
        }
    }

    /// Whether filesystem notifications are on.
    pub fn watching(&self) -> bool {
        self.watcher.lock().map(|w| w.is_some()).unwrap_or(false)
    }

    /// The catalog as last published, for `GET /catalog/index.json`.
    pub fn published(&self) -> Option<Arc<Published>> {
        self.published.read().ok().and_then(|p| p.clone())
    }

    fn location(&self, record: &catalog::Record) -> String {
        sense::location(&self.config.archives, record)
    }

    /// Reads what changed (everything when `full`, on the first refresh, or when notifications
    /// were lost), judges it, brings the mirror up to date and publishes if the projection moved.
    async fn refresh_now(&self, full: bool, now: i64) -> Result<Refreshed, RegistryError> {
        let mut st = self.state.lock().await;
        let (names, everything) = self.to_read(&mut st, full)?;
        let Some(catalog) = st.catalog.clone() else {
            return Err(RegistryError::Unavailable("no catalog read yet".into()));
        };
        let t_read = std::time::Instant::now();
        let read = self
            .read_packs(&catalog, names.clone(), &st.archives)
            .await?;
        let read_count = read.len();
        let changed = self.take_in(&mut st, &catalog, read);
        let read_s = t_read.elapsed().as_secs_f64();
        if !names.is_empty() {
            tree::refuse_duplicates(&mut st.trees);
            self.judge(&mut st, &catalog, &names);
            st.successors = st
                .trees
                .values()
                .filter_map(|t| sense::successor_problem(t, |s| st.trees.contains_key(s)))
                .collect();
        }
        let t_mirror = std::time::Instant::now();
        let removed = self
            .sync_mirror(&mut st, &catalog, &names, everything, now)
            .await?;
        let mirror_s = t_mirror.elapsed().as_secs_f64();
        let mut problems: Vec<Problem> = st.problems.values().flatten().cloned().collect();
        problems.extend(st.successors.iter().cloned());
        // A catalog that cannot be written is reported, not a failure of the sensors: what
        // they saw stands, and the next cycle publishes again.
        let t_publish = std::time::Instant::now();
        let published = self
            .publish_now(&mut st)
            .await
            .map_err(|e| e.to_string())
            .transpose();
        tracing::debug!(
            packs = read_count,
            read_s,
            mirror_s,
            publish_s = t_publish.elapsed().as_secs_f64(),
            "marketplace refresh timings"
        );
        Ok(Refreshed {
            judged: JUDGED.to_vec(),
            problems,
            removed,
            changed,
            read: read_count,
            published,
        })
    }

    /// The packs to read in this refresh, and whether that is every pack: the ones notifications
    /// named (their folders, their archives, their catalog records), or all of them.
    fn to_read(
        &self,
        st: &mut State,
        full: bool,
    ) -> Result<(BTreeSet<String>, bool), RegistryError> {
        let dirty = self.changes.take();
        let everything = full || dirty.all || st.catalog.is_none();
        let mut names: BTreeSet<String> = dirty.packs;
        if everything || dirty.catalog {
            names.extend(self.read_catalog(st)?);
        }
        let Some(catalog) = st.catalog.clone() else {
            return Ok((names, everything));
        };
        // `<name>-<version>`: the name is what comes before one of the dashes.
        for stem in &dirty.archives {
            let found = stem.match_indices('-').find_map(|(i, _)| {
                let r = catalog.get(&stem[..i])?;
                (r.version == stem[i + 1..]).then(|| r.name.clone())
            });
            names.extend(found);
        }
        if everything {
            let dirs = tree::pack_dirs(&self.config.checkout).map_err(|e| {
                RegistryError::Unavailable(format!(
                    "{}: {e}",
                    self.config.checkout.join("packs").display()
                ))
            })?;
            st.trees.retain(|d, _| dirs.contains(d));
            names.extend(dirs);
            names.extend(catalog.packs.iter().map(|r| r.name.clone()));
        }
        Ok((names, everything))
    }

    /// Keeps what was read; the releases whose archive's bytes changed under the same record.
    fn take_in(
        &self,
        st: &mut State,
        catalog: &Catalog,
        read: Vec<(String, PackRead)>,
    ) -> Vec<(String, String)> {
        let mut changed = Vec::new();
        for (name, (tree, archive)) in read {
            match tree {
                Some(t) => {
                    st.trees.insert(name.clone(), t);
                }
                None => {
                    st.trees.remove(&name);
                }
            }
            let Some((location, a)) = archive else {
                st.archives.remove(&name);
                continue;
            };
            let before = st.archives.get(&name).and_then(sha_of);
            let after = sha_of(&a);
            if let (Some(b), Some(x), Some(r)) = (before, after, catalog.get(&name)) {
                if b != x {
                    changed.push((r.name.clone(), r.version.clone()));
                }
            }
            if let (Ok(mut d), Some(x)) = (self.digests.write(), after) {
                d.insert(location, x);
            }
            st.archives.insert(name, a);
        }
        changed
    }

    /// Reads the input catalog if its bytes changed; the packs whose records changed.
    fn read_catalog(&self, st: &mut State) -> Result<Vec<String>, RegistryError> {
        let path = &self.config.catalog;
        let unavailable =
            |why: String| RegistryError::Unavailable(format!("catalog {}: {why}", path.display()));
        let bytes = std::fs::read(path).map_err(|e| unavailable(e.to_string()))?;
        let sha: [u8; 32] =
            sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(&bytes)).into();
        if st.catalog_sha == Some(sha) {
            return Ok(Vec::new());
        }
        let parsed = catalog::parse(&bytes).map_err(|e| unavailable(e.to_string()))?;
        let old: HashMap<&str, &catalog::Record> = st
            .catalog
            .as_deref()
            .map(|c| c.packs.iter().map(|r| (r.name.as_str(), r)).collect())
            .unwrap_or_default();
        let mut changed: Vec<String> = parsed
            .packs
            .iter()
            .filter(|r| old.get(r.name.as_str()) != Some(r))
            .map(|r| r.name.clone())
            .collect();
        let now: BTreeSet<&str> = parsed.packs.iter().map(|r| r.name.as_str()).collect();
        changed.extend(
            old.keys()
                .filter(|n| !now.contains(*n))
                .map(|n| n.to_string()),
        );
        st.catalog = Some(Arc::new(parsed));
        st.catalog_sha = Some(sha);
        Ok(changed)
    }

    /// Reads the trees and archives of `names` on worker threads. An unreachable archive host
    /// fails the whole refresh: nothing is judged on stale facts.
    async fn read_packs(
        &self,
        catalog: &Arc<Catalog>,
        names: BTreeSet<String>,
        before: &HashMap<String, ArchiveSeen>,
    ) -> Result<Vec<(String, PackRead)>, RegistryError> {
        let jobs: Vec<Job> = names
            .into_iter()
            .map(|n| {
                let r = catalog.get(&n).cloned();
                let before = before.get(&n).cloned();
                (n, r, before)
            })
            .collect();
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let packs = self.config.checkout.join("packs");
        let archives = self.config.archives.clone();
        let fetcher = self.fetcher.clone();
        let max = self.config.fetch.max_bytes;
        tokio::task::spawn_blocking(move || {
            read_all(&packs, &archives, fetcher.as_ref(), max, jobs)
        })
        .await
        .map_err(|e| RegistryError::Unavailable(format!("reading the checkout: {e}")))?
    }

    /// Judges content and admission for the packs read.
    fn judge(&self, st: &mut State, catalog: &Catalog, names: &BTreeSet<String>) {
        for name in names {
            let mut found = Vec::new();
            let tree = st.trees.get(name);
            if let Some(t) = tree {
                found.extend(sense::refused_problem(t));
            }
            let record = catalog.get(name);
            if let (Some(r), Some(t), Some(a)) = (record, tree, st.archives.get(name)) {
                found.extend(sense::content_problem(r, t, a));
            }
            if found.is_empty() {
                st.problems.remove(name);
            } else {
                st.problems.insert(name.clone(), found);
            }
        }
    }

    /// Publishes the projection when the input catalog or the overlay of the remediations in
    /// force moved since the last publication.
    async fn publish_now(&self, st: &mut State) -> Result<Option<PublishReport>, RegistryError> {
        let (Some(catalog), Some(sha)) = (st.catalog.clone(), st.catalog_sha) else {
            return Ok(None);
        };
        // The remediations in force change only with the registry's change sequence.
        let seq = self.sql.change_seq().await?;
        if st.published_for == Some((seq, sha)) {
            return Ok(None);
        }
        let started = std::time::Instant::now();
        let path = self.config.publish.clone();
        let failed = |e: std::io::Error| {
            RegistryError::Unavailable(format!(
                "publishing {}: {e}",
                path.as_deref().unwrap_or(Path::new("-")).display()
            ))
        };
        // The daemon and `mapek rollback` both publish: one at a time, each from the state it
        // reads under the lock, so the file is never left older than the last change (the
        // daemon's cycle used to write what it read before a rollback, after the rollback's).
        let _lock = match &path {
            Some(p) => Some(publish::lock(p).await.map_err(failed)?),
            None => None,
        };
        let overlay = overlay::read(&self.sql.store).await?;
        let overlay_s = started.elapsed().as_secs_f64();
        let Some(key) = self.key.clone() else {
            return Err(RegistryError::Unavailable(
                "no key to sign the published catalog with".into(),
            ));
        };
        let Some((published, mut report)) = st
            .projection
            .prepare(&catalog, sha, overlay, &key)
            .await
            .map_err(failed)?
        else {
            st.published_for = Some((seq, sha));
            return Ok(None);
        };
        // Served at once; the file follows (a start converges it if this process dies first).
        if let Ok(mut slot) = self.published.write() {
            *slot = Some(published.clone());
        }
        let served_s = started.elapsed().as_secs_f64();
        if let Some(p) = &path {
            report.written = st.projection.write(&published, p).await.map_err(failed)?;
        }
        st.published_for = Some((seq, sha));
        tracing::debug!(
            overlay_s,
            served_s,
            written_s = started.elapsed().as_secs_f64(),
            bytes = report.bytes,
            "catalog publication timings"
        );
        if report.written {
            tracing::info!(
                file = %path.as_deref().unwrap_or(Path::new("-")).display(),
                packs = report.packs,
                withheld = report.withheld,
                bytes = report.bytes,
                "catalog published"
            );
        }
        Ok(Some(report))
    }
}

/// What a publication did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishReport {
    pub bytes: usize,
    pub packs: usize,
    pub withheld: usize,
    /// The file on disk was written (it differed).
    pub written: bool,
}

fn sha_of(a: &ArchiveSeen) -> Option<[u8; 32]> {
    match a {
        ArchiveSeen::Read { sha256, .. } => Some(*sha256),
        ArchiveSeen::Unreadable(_) => None,
    }
}

/// A pack as read: its tree (None: no directory) and its archive with its location (None: the
/// catalog does not list it).
type PackRead = (Option<PackTree>, Option<(String, ArchiveSeen)>);

/// A pack to read: its name, its catalog record, what its archive was last seen as.
type Job = (String, Option<catalog::Record>, Option<ArchiveSeen>);

fn read_all(
    packs: &Path,
    archives: &Archives,
    fetcher: Option<&Fetcher>,
    max: u64,
    jobs: Vec<Job>,
) -> Result<Vec<(String, PackRead)>, RegistryError> {
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 8);
    let chunk = jobs.len().div_ceil(workers).max(1);
    let one = |(name, record, before): &Job| -> Result<(String, PackRead), RegistryError> {
        let dir = packs.join(name);
        let tree = if std::fs::symlink_metadata(&dir).is_ok() && tree::safe_dir(name) {
            match tree::read_pack_or_link(&dir, name) {
                Ok(t) => Some(t),
                // Gone between listing and reading: judged at the next change.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => {
                    return Err(RegistryError::Unavailable(format!(
                        "{}: {e}",
                        dir.display()
                    )))
                }
            }
        } else {
            None
        };
        let archive = match record {
            Some(r) => {
                let seen = sense::read_archive(
                    archives,
                    fetcher,
                    r,
                    max,
                    Default::default(),
                    before.as_ref(),
                )
                .map_err(|e| RegistryError::Unavailable(e.to_string()))?;
                Some((sense::location(archives, r), seen))
            }
            None => None,
        };
        Ok((name.clone(), (tree, archive)))
    };
    std::thread::scope(|scope| {
        let handles: Vec<_> = jobs
            .chunks(chunk)
            .map(|part| {
                let one = &one;
                scope.spawn(move || part.iter().map(one).collect::<Result<Vec<_>, _>>())
            })
            .collect();
        let mut out = Vec::with_capacity(jobs.len());
        for h in handles {
            match h.join() {
                Ok(r) => out.extend(r?),
                Err(_) => {
                    return Err(RegistryError::Unavailable(
                        "a checkout reader panicked".into(),
                    ))
                }
            }
        }
        Ok(out)
    })
}
