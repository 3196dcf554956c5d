//! The world a scenario runs in: its private store, the simulated registry (generated or imported), the trust store, the policies and the telemetry sources.

use anyhow::Context as _;
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use super::registry::SimRegistry;
use super::scenario::{EventKind, Scenario, Source};
use super::telemetry::{Background, Telemetry};
use super::START_MS;
use crate::keys::{KeyPair, Role, TrustStore};
use crate::knowledge::Store;
use crate::plan::facts::Uses;
use crate::plan::policy::{policy_files, read_bounded, PolicySet};
use crate::registry::artifacts::MemoryArtifacts;
use crate::registry::generate::{self, derived_key, GenerateSpec};
use crate::registry::{Registry, SqlRegistry};

/// The loop's world during a run.
pub(super) struct World {
    /// Holds the store's directory: removed when the run ends.
    pub(super) _dir: tempfile::TempDir,
    pub(super) url: String,
    pub(super) store: Store,
    pub(super) registry: Arc<SimRegistry>,
    pub(super) trust: Arc<TrustStore>,
    pub(super) key: KeyPair,
    pub(super) policies: PolicySet,
    pub(super) seed: u64,
    pub(super) notes: Vec<String>,
    pub(super) telemetry: Telemetry,
    /// The registry's change sequence when the background traffic last learnt each latest.
    pub(super) background_seq: i64,
}

pub(super) fn digest(trust: &mut TrustStore) {
    trust.digest = hex::encode(Sha256::digest(trust.to_toml().as_bytes()));
}

/// The policy set of a scenario: its directory, `[guards]` instead of guards.toml when given,
/// and its own `[[policy]]` tables, which replace loaded policies of the same id.
pub fn policies_of(s: &Scenario) -> anyhow::Result<PolicySet> {
    let files = policy_files(&s.policies_dir).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut sources = Vec::new();
    for f in files {
        let is_guards = f.file_name().is_some_and(|n| n == "guards.toml");
        if is_guards && s.guards.is_some() {
            continue;
        }
        sources.push((
            f.clone(),
            read_bounded(&f).map_err(|e| anyhow::anyhow!("{e}"))?,
        ));
    }
    if let Some(g) = &s.guards {
        sources.push((PathBuf::from("guards.toml"), g.clone()));
    }
    let refused = |e: Vec<crate::plan::policy::PolicyError>| {
        anyhow::anyhow!(
            "the policy set is refused:\n  {}",
            e.iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("\n  ")
        )
    };
    let mut set = PolicySet::from_sources(&sources).map_err(refused)?;
    if let Some(extra) = &s.policies {
        let own = PolicySet::from_sources(&[(s.file.clone(), extra.clone())]).map_err(refused)?;
        set.policies
            .retain(|p| !own.policies.iter().any(|o| o.id == p.id));
        set.policies.extend(own.policies);
        set.uses = Uses::of(set.policies.iter().filter_map(|p| p.program.as_ref()));
        set.digest = format!("{}+{}", set.digest, own.digest);
    }
    Ok(set)
}

pub(super) async fn setup(s: &Scenario) -> anyhow::Result<World> {
    let policies = policies_of(s)?;
    let dir = private_dir()?;
    let url = dir.path().join("sim.db").display().to_string();
    let store = Store::open(&url).await?;
    let artifacts = Arc::new(MemoryArtifacts::default());
    let inner = SqlRegistry::in_memory(store.clone(), artifacts.clone());
    let mut trust = match &s.source {
        Source::Generate(g) => {
            let spec = GenerateSpec {
                packages: g.packages,
                mean_dependencies: g.mean_dependencies,
                publishers: g.publishers,
                max_releases: g.max_releases,
                signed_fraction: g.signed_fraction,
                unmaintained_fraction: g.unmaintained_fraction,
                cycles: g.cycles,
                seed: s.seed,
                shard_artifacts: false,
            };
            generate::generate(&inner, &spec, START_MS).await?.trust
        }
        Source::Import(path) => {
            let report = crate::registry::import::import(&store, path, START_MS)
                .await
                .with_context(|| format!("importing {}", path.display()))?;
            anyhow::ensure!(
                report.packages_seen > 0,
                "{}: importing {} found no package",
                s.file.display(),
                path.display()
            );
            TrustStore::default()
        }
    };
    let virtual_artifacts = matches!(s.source, Source::Import(_))
        .then(|| Arc::new(std::sync::Mutex::new(std::collections::BTreeSet::new())));
    // Every approver named by a policy or an approve event is a trusted maintainer.
    let mut approvers: Vec<String> = policies
        .policies
        .iter()
        .flat_map(|p| p.approvers.clone())
        .collect();
    approvers.extend(s.events.iter().filter_map(|e| match &e.kind {
        EventKind::Approve { key, .. } => Some(key.clone()),
        _ => None,
    }));
    approvers.sort();
    approvers.dedup();
    for a in approvers {
        trust.add(
            &derived_key(s.seed, &a),
            "simulated maintainer",
            vec![Role::Maintainer],
        );
    }
    digest(&mut trust);
    let mut telemetry = Telemetry::default();
    if let Some(b) = s.background {
        telemetry.background = Some(Background::new(
            by_popularity(inner.packages().await?),
            b.downloads_per_hour,
            b.installs_per_hour,
        ));
    }
    let background_seq = inner.change_seq().await?;
    Ok(World {
        registry: Arc::new(SimRegistry::new(
            inner,
            Arc::new(AtomicBool::new(false)),
            virtual_artifacts,
        )),
        _dir: dir,
        url,
        store,
        trust: Arc::new(trust),
        key: derived_key(s.seed, "daemon"),
        policies,
        seed: s.seed,
        notes: Vec::new(),
        telemetry,
        background_seq,
    })
}

/// A private directory for the run's store: in memory (`/dev/shm`) where there is one, since
/// nothing of it outlives the run; otherwise the system's temporary directory.
fn private_dir() -> std::io::Result<tempfile::TempDir> {
    let shm = std::path::Path::new("/dev/shm");
    let builder = || {
        let mut b = tempfile::Builder::new();
        b.prefix("mapek-sim");
        b
    };
    if shm.is_dir() {
        if let Ok(dir) = builder().tempdir_in(shm) {
            return Ok(dir);
        }
    }
    builder().tempdir()
}

/// Packages with their latest release, most downloaded first (by name on a tie).
fn by_popularity(
    mut packages: Vec<crate::registry::PackageRecord>,
) -> Vec<(String, Option<String>)> {
    packages.sort_by(|a, b| b.downloads.cmp(&a.downloads).then(a.name.cmp(&b.name)));
    packages.into_iter().map(|p| (p.name, p.latest)).collect()
}

/// Background traffic follows `latest` as the daemon's actions and publications move it.
pub(super) async fn follow_latest(w: &mut World) -> anyhow::Result<()> {
    let Some(b) = &mut w.telemetry.background else {
        return Ok(());
    };
    let seq = w.registry.current_seq().await?;
    if seq != w.background_seq {
        for (name, latest) in w.registry.inner.latest_since(w.background_seq).await? {
            b.set_latest(name, latest);
        }
        w.background_seq = seq;
    }
    Ok(())
}
