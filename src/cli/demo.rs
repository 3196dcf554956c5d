//! The demo: a generated registry under ./mapek-demo with real artifacts and signatures, and three planted problems.

use anyhow::Context as _;
use std::path::Path;

use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::keys::{KeyPair, Role};
use crate::knowledge::Store;
use crate::registry::generate::{self, GenerateSpec};
use crate::registry::{Registry, SqlRegistry};

/// The default policy library, embedded so the demo needs nothing but the binary.
pub const DEFAULT_POLICIES: [(&str, &str); 13] = [
    (
        "integrity.toml",
        include_str!("../../policies/integrity.toml"),
    ),
    (
        "integrity.test.toml",
        include_str!("../../policies/integrity.test.toml"),
    ),
    ("reports.toml", include_str!("../../policies/reports.toml")),
    (
        "reports.test.toml",
        include_str!("../../policies/reports.test.toml"),
    ),
    (
        "availability.toml",
        include_str!("../../policies/availability.toml"),
    ),
    (
        "availability.test.toml",
        include_str!("../../policies/availability.test.toml"),
    ),
    (
        "quality-policies.toml",
        include_str!("../../policies/quality-policies.toml"),
    ),
    (
        "quality-policies.test.toml",
        include_str!("../../policies/quality-policies.test.toml"),
    ),
    (
        "supply-chain.toml",
        include_str!("../../policies/supply-chain.toml"),
    ),
    (
        "supply-chain.test.toml",
        include_str!("../../policies/supply-chain.test.toml"),
    ),
    ("daemon.toml", include_str!("../../policies/daemon.toml")),
    (
        "daemon.test.toml",
        include_str!("../../policies/daemon.test.toml"),
    ),
    ("guards.toml", include_str!("../../policies/guards.toml")),
];

/// The demo's folder, with its daemon key and default policies (written on first use).
fn prepare_dir(config: &Config) -> anyhow::Result<std::path::PathBuf> {
    let dir = config
        .key_file
        .parent()
        .unwrap_or(Path::new("."))
        .to_path_buf();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    if !config.key_file.exists() {
        KeyPair::generate("daemon")?.save(&dir)?;
    }
    if !config.policies.exists() {
        std::fs::create_dir_all(&config.policies)?;
        for (name, text) in DEFAULT_POLICIES {
            std::fs::write(config.policies.join(name), text)?;
        }
    }
    Ok(dir)
}

/// The pack whose archive the marketplace demo tampers with.
pub const DEMO_TAMPERED_PACK: &str = "gen-pack-000007";

/// Creates the marketplace demo on first use: keys, policies, a trust store, and a generated
/// checkout of 40 packs (archives and catalog) with one archive tampered with after its catalog
/// was built. Later runs reuse it.
pub async fn prepare_marketplace(config: &Config) -> anyhow::Result<()> {
    let dir = prepare_dir(config)?;
    if !config.trusted_keys.exists() {
        let mut trust = crate::keys::TrustStore::default();
        let maintainer = KeyPair::generate("maint-alice")?;
        std::fs::create_dir_all(dir.join("keys"))?;
        maintainer.save(&dir.join("keys"))?;
        trust.add(&maintainer, "demo maintainer", vec![Role::Maintainer]);
        std::fs::write(&config.trusted_keys, trust.to_toml())?;
    }
    let Some(checkout) = &config.registry.checkout else {
        anyhow::bail!("the marketplace demo's configuration names no checkout");
    };
    if checkout.join("packs").exists() {
        return Ok(());
    }
    tracing::info!(dir = %checkout.display(), "creating the demo marketplace");
    crate::registry::marketplace::generate::generate(checkout, 40)?;
    let archives = checkout.join("dist/packs");
    let archive = std::fs::read_dir(&archives)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(DEMO_TAMPERED_PACK))
        })
        .context("the demo's archive to tamper with")?;
    let mut bytes = std::fs::read(&archive)?;
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(&archive, bytes)?;
    tracing::info!(
        archive = %archive.display(),
        "demo marketplace ready: 40 packs, one archive tampered with after the catalog was built"
    );
    Ok(())
}

/// Creates the demo's store, keys, policies and registry on first use; later runs reuse them.
pub async fn prepare(config: &Config) -> anyhow::Result<()> {
    let dir = prepare_dir(config)?;
    let store = Store::open(&config.database_url).await?;
    let registry = SqlRegistry::new(store.clone(), config.artifact_root.clone());
    if registry.counts().await?.packages > 0 {
        store.close().await;
        return Ok(());
    }
    tracing::info!(dir = %dir.display(), "creating the demo registry");
    let spec = GenerateSpec {
        packages: 300,
        publishers: 5,
        seed: 42,
        ..GenerateSpec::default()
    };
    let generated = generate::generate(&registry, &spec, SystemClock.now_ms()).await?;
    // A maintainer key for `mapek plans approve` and `mapek policy sign` in the demo.
    let mut trust = generated.trust.clone();
    let maintainer = KeyPair::generate("maint-alice")?;
    std::fs::create_dir_all(dir.join("keys"))?;
    maintainer.save(&dir.join("keys"))?;
    trust.add(&maintainer, "demo maintainer", vec![Role::Maintainer]);
    std::fs::write(&config.trusted_keys, trust.to_toml())?;

    // One tampered artifact.
    let tampered = registry
        .release("pkg-00042", "1.0.0")
        .await?
        .context("demo release pkg-00042@1.0.0")?;
    if let Some(file) = &tampered.artifact {
        registry.tamper_artifact(file)?;
    }
    // One bad signature: a signature over other bytes by the right key.
    let publisher = &generated.publishers[77 % generated.publishers.len()];
    registry
        .set_signature(
            "pkg-00077",
            "1.0.0",
            &publisher.sign(b"not these bytes"),
            &publisher.key_id,
        )
        .await?;
    // One release signed by a key the trust store does not know.
    let rogue = generate::derived_key(spec.seed, "pub-rogue");
    let release = registry
        .release("pkg-00123", "1.0.0")
        .await?
        .context("demo release pkg-00123@1.0.0")?;
    let bytes = registry.read_artifact(release.artifact.as_deref().unwrap_or_default())?;
    registry
        .set_signature("pkg-00123", "1.0.0", &rogue.sign(&bytes), &rogue.key_id)
        .await?;
    tracing::info!(
        packages = spec.packages,
        releases = generated.releases,
        "demo registry ready: planted a tampered artifact (pkg-00042@1.0.0), a bad signature \
         (pkg-00077@1.0.0) and a release signed by an unknown key (pkg-00123@1.0.0)"
    );
    store.close().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::DEFAULT_POLICIES;
    use crate::plan::policy::PolicySet;

    #[test]
    fn the_embedded_default_set_loads_as_the_demo_and_the_bench_use_it() {
        let sources: Vec<_> = DEFAULT_POLICIES
            .iter()
            .map(|(n, t)| (std::path::PathBuf::from(n), t.to_string()))
            .collect();
        let set = PolicySet::from_sources(&sources).expect("loads");
        assert_eq!(set.guards.max_actions_per_cycle, Some(50));
        // Every file of policies/ is embedded: the demo runs the whole library.
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
        let shipped = PolicySet::load_dir(&dir, Default::default()).expect("policies/ loads");
        let ids = |s: &PolicySet| {
            let mut ids: Vec<_> = s.policies.iter().map(|p| p.id.clone()).collect();
            ids.sort();
            ids
        };
        assert_eq!(ids(&set), ids(&shipped));
        let files = std::fs::read_dir(&dir).expect("policies/").count();
        assert_eq!(DEFAULT_POLICIES.len(), files);
    }
}
