//! Deterministic generated registries (demo, benchmark, tests): real artifact files, real Ed25519 signatures.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};
use std::path::PathBuf;

use super::{Dependency, PackageRecord, RegistryError, ReleaseRecord, SqlRegistry};
use crate::keys::{KeyPair, Role, TrustStore};

const DAY_MS: i64 = 86_400_000;

/// The `generate` table of a scenario, and what the demo and the benchmark use.
#[derive(Debug, Clone)]
pub struct GenerateSpec {
    pub packages: usize,
    pub mean_dependencies: f64,
    pub publishers: usize,
    pub max_releases: usize,
    pub signed_fraction: f64,
    /// Share of packages whose last release is 2 to 3 years old.
    pub unmaintained_fraction: f64,
    /// Dependency cycles to add (none by default).
    pub cycles: usize,
    pub seed: u64,
    /// Artifact files in 256 folders (`ab/name-version.pack`) rather than one: a million files
    /// in one folder make every create wait on the folder's lock (the bench sets it).
    pub shard_artifacts: bool,
}

impl Default for GenerateSpec {
    fn default() -> Self {
        Self {
            packages: 300,
            mean_dependencies: 2.5,
            publishers: 10,
            max_releases: 3,
            signed_fraction: 1.0,
            unmaintained_fraction: 0.0,
            cycles: 0,
            seed: 0,
            shard_artifacts: false,
        }
    }
}

/// What a generation produced besides the rows: the publisher keys and a trust store for them.
#[derive(Debug)]
pub struct Generated {
    pub publishers: Vec<KeyPair>,
    pub trust: TrustStore,
    pub artifact_dir: PathBuf,
    pub releases: usize,
}

/// A key derived from the seed and a name, so every run makes the same keys.
pub fn derived_key(seed: u64, key_id: &str) -> KeyPair {
    let digest = Sha256::digest(format!("mapek-generate/{seed}/{key_id}").as_bytes());
    let mut bytes = [0u8; 32];
    bytes.copy_from_slice(&digest);
    KeyPair::from_seed(key_id, bytes)
}

pub fn package_name(index: usize, total: usize) -> String {
    let width = total.saturating_sub(1).to_string().len().max(5);
    format!("pkg-{index:0width$}")
}

fn artifact_bytes(name: &str, version: &str) -> Vec<u8> {
    let mut out = format!("[pack]\nname = \"{name}\"\nversion = \"{version}\"\n");
    let mut line = 0;
    while out.len() < 512 {
        out.push_str(&format!("# generated template line {line} of {name}\n"));
        line += 1;
    }
    out.into_bytes()
}

/// Builds the registry described by `spec` into `registry` (whose artifact root is written to)
/// with `now` as the present.
pub async fn generate(
    registry: &SqlRegistry,
    spec: &GenerateSpec,
    now: i64,
) -> Result<Generated, RegistryError> {
    let dir = registry.artifact_root.clone();
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
    let publishers: Vec<KeyPair> = (0..spec.publishers.max(1))
        .map(|k| derived_key(spec.seed, &format!("pub-{k}")))
        .collect();
    let mut trust = TrustStore::default();
    for k in &publishers {
        trust.add(k, &format!("publisher {}", k.key_id), vec![Role::Publisher]);
    }
    let mut packages = Vec::with_capacity(spec.packages);
    let mut releases = Vec::new();
    for i in 0..spec.packages {
        let name = package_name(i, spec.packages);
        let n_releases = rng.random_range(1..=spec.max_releases.max(1));
        let mut deps = Vec::new();
        if i > 0 {
            // Poisson-like count around the mean; targets biased to low (popular) indices.
            let wanted = (spec.mean_dependencies * 2.0 * rng.random::<f64>()).round() as usize;
            for _ in 0..wanted {
                let u: f64 = rng.random();
                let target = ((i as f64) * u * u) as usize;
                let dep = package_name(target.min(i - 1), spec.packages);
                if !deps.iter().any(|d: &Dependency| d.name == dep) {
                    deps.push(Dependency {
                        name: dep,
                        requirement: "^1".into(),
                    });
                }
            }
        }
        let key = &publishers[i % publishers.len()];
        // The draw for unmaintained packages only happens when asked for, so that registries
        // generated without it stay what they were.
        let unmaintained =
            spec.unmaintained_fraction > 0.0 && rng.random::<f64>() < spec.unmaintained_fraction;
        let newest_age = if unmaintained {
            rng.random_range(730 * DAY_MS..1095 * DAY_MS)
        } else {
            rng.random_range(0..90 * DAY_MS)
        };
        let mut latest = None;
        for r in 0..n_releases {
            let version = format!("1.{r}.0");
            let signed = rng.random::<f64>() < spec.signed_fraction;
            let published_at = now - newest_age - ((n_releases - 1 - r) as i64) * 7 * DAY_MS;
            // The artifact, its checksum and signature are made after the draws (below), on
            // every core: Ed25519 signatures are deterministic, so the order does not matter.
            releases.push(ReleaseRecord {
                package: name.clone(),
                version: version.clone(),
                published_at,
                checksum: None,
                artifact: Some(if spec.shard_artifacts {
                    format!("{:02x}/{name}-{version}.pack", i % 256)
                } else {
                    format!("{name}-{version}.pack")
                }),
                signature: None,
                signer: signed.then(|| key.key_id.clone()),
                yanked: false,
                quarantined: false,
                dependencies: deps.clone(),
            });
            latest = Some(version);
        }
        packages.push(PackageRecord {
            name: name.clone(),
            description: format!("Generated package {i}"),
            category: Some(["web", "api", "cli", "data", "ai"][i % 5].into()),
            author: Some(format!("author-{}", i % publishers.len())),
            license: Some("MIT".into()),
            repository: None,
            tags: vec![],
            keywords: vec![],
            downloads: (1_000_000.0 / (i as f64 + 1.0)) as i64,
            stars: (10_000.0 / (i as f64 + 1.0)) as i64,
            status: "active".into(),
            latest,
            quality: None,
            quality_detail: Some(files_receipt(true, true)),
            production_ready: true,
            // Packages are older than their releases: a year before the first one, so that a
            // generated registry holds no new package (and no typosquat suspect by its names).
            created_at: now - newest_age - (n_releases as i64) * 7 * DAY_MS - 365 * DAY_MS,
            updated_at: now - newest_age,
        });
    }
    add_cycles(&mut rng, spec, &mut releases);
    let started = std::time::Instant::now();
    make_artifacts(registry, &publishers, &mut releases)?;
    let artifacts_s = started.elapsed().as_secs_f64();
    let count = releases.len();
    registry.insert_all(&packages, &releases).await?;
    tracing::debug!(
        artifacts_s,
        rows_s = started.elapsed().as_secs_f64() - artifacts_s,
        "registry generated"
    );
    Ok(Generated {
        publishers,
        trust,
        artifact_dir: dir,
        releases: count,
    })
}

/// Writes each release's artifact and fills in its checksum and, where it has a signer, its
/// signature, on every core.
fn make_artifacts(
    registry: &SqlRegistry,
    publishers: &[KeyPair],
    releases: &mut [ReleaseRecord],
) -> Result<(), RegistryError> {
    let keys: std::collections::HashMap<&str, &KeyPair> =
        publishers.iter().map(|k| (k.key_id.as_str(), k)).collect();
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(8);
    let chunk = releases.len().div_ceil(workers).max(1);
    std::thread::scope(|scope| {
        let jobs: Vec<_> = releases
            .chunks_mut(chunk)
            .map(|part| {
                let keys = &keys;
                scope.spawn(move || -> Result<(), RegistryError> {
                    for r in part {
                        let bytes = artifact_bytes(&r.package, &r.version);
                        r.checksum = Some(hex::encode(Sha256::digest(&bytes)));
                        if let Some(key) = r.signer.as_deref().and_then(|s| keys.get(s)) {
                            r.signature = Some(key.sign(&bytes));
                        }
                        let file = r.artifact.as_deref().unwrap_or_default();
                        registry.write_artifact(file, bytes)?;
                    }
                    Ok(())
                })
            })
            .collect();
        jobs.into_iter()
            .try_for_each(|j| j.join().unwrap_or_else(|_| Err(worker_died())))
    })
}

fn worker_died() -> RegistryError {
    RegistryError::Artifact {
        location: "(generated)".into(),
        reason: "a worker writing artifacts stopped".into(),
    }
}

/// What a package's files hold, as a ggen receipt records it: the `readme` and `tests` guards,
/// which only the package's files can tell (the quality model reads them from here).
pub fn files_receipt(readme: bool, tests: bool) -> String {
    serde_json::json!([
        { "guard_type": "readme", "passed": readme },
        { "guard_type": "tests", "passed": tests },
    ])
    .to_string()
}

/// A stored receipt with its `readme` and `tests` results replaced (the others, from an imported
/// ggen receipt, kept).
fn with_files(detail: Option<&str>, readme: bool, tests: bool) -> String {
    let mut guards = match detail.map(serde_json::from_str::<serde_json::Value>) {
        Some(Ok(serde_json::Value::Array(g))) => g,
        _ => Vec::new(),
    };
    guards.retain(|g| {
        !matches!(
            g.get("guard_type").and_then(|t| t.as_str()),
            Some("readme" | "tests")
        )
    });
    guards.push(serde_json::json!({ "guard_type": "readme", "passed": readme }));
    guards.push(serde_json::json!({ "guard_type": "tests", "passed": tests }));
    serde_json::Value::Array(guards).to_string()
}

/// Closes `spec.cycles` dependency cycles: a package's first dependency is made to depend back
/// on it (in every release of that dependency).
fn add_cycles(rng: &mut ChaCha8Rng, spec: &GenerateSpec, releases: &mut [ReleaseRecord]) {
    if spec.packages < 2 {
        return;
    }
    for _ in 0..spec.cycles {
        let i = rng.random_range(1..spec.packages);
        let name = package_name(i, spec.packages);
        let target = releases
            .iter()
            .find(|r| r.package == name)
            .and_then(|r| r.dependencies.first().map(|d| d.name.clone()))
            .unwrap_or_else(|| package_name(i - 1, spec.packages));
        if target == name {
            continue;
        }
        for r in releases.iter_mut().filter(|r| r.package == target) {
            if !r.dependencies.iter().any(|d| d.name == name) {
                r.dependencies.push(Dependency {
                    name: name.clone(),
                    requirement: "^1".into(),
                });
            }
        }
        // The cycle needs the edge back as well when the package had no dependency.
        for r in releases.iter_mut().filter(|r| r.package == name) {
            if !r.dependencies.iter().any(|d| d.name == target) {
                r.dependencies.push(Dependency {
                    name: target.clone(),
                    requirement: "^1".into(),
                });
            }
        }
    }
}

/// What a published release holds besides its artifact: the files the quality model asks for.
#[derive(Debug, Clone, Copy)]
pub struct Contents {
    pub license: bool,
    pub readme: bool,
    pub tests: bool,
}

impl Default for Contents {
    fn default() -> Self {
        Self {
            license: true,
            readme: true,
            tests: true,
        }
    }
}

/// Publishes one release (a new package if the name is new) with a real artifact file, signed by
/// `signer` when given: what a `publish` event of a scenario does.
pub async fn publish(
    registry: &SqlRegistry,
    name: &str,
    version: &str,
    signer: Option<&KeyPair>,
    dependencies: &[String],
    contents: Contents,
    now: i64,
) -> Result<(), RegistryError> {
    use super::Registry;
    let bytes = artifact_bytes(name, version);
    let file = format!("{name}-{version}.pack");
    registry.write_artifact(&file, bytes.clone())?;
    let package = match registry.package(name).await? {
        Some(mut p) => {
            p.latest = Some(version.to_string());
            p.updated_at = now;
            p.license = contents.license.then(|| "MIT".into());
            p.quality_detail = Some(with_files(
                p.quality_detail.as_deref(),
                contents.readme,
                contents.tests,
            ));
            p
        }
        None => PackageRecord {
            name: name.to_string(),
            description: format!("Published package {name}"),
            category: Some("web".into()),
            author: signer.map(|k| k.key_id.clone()),
            license: contents.license.then(|| "MIT".into()),
            repository: None,
            tags: vec![],
            keywords: vec![],
            downloads: 0,
            stars: 0,
            status: "active".into(),
            latest: Some(version.to_string()),
            quality: None,
            quality_detail: Some(files_receipt(contents.readme, contents.tests)),
            production_ready: true,
            created_at: now,
            updated_at: now,
        },
    };
    let release = ReleaseRecord {
        package: name.to_string(),
        version: version.to_string(),
        published_at: now,
        checksum: Some(hex::encode(Sha256::digest(&bytes))),
        artifact: Some(file),
        signature: signer.map(|k| k.sign(&bytes)),
        signer: signer.map(|k| k.key_id.clone()),
        yanked: false,
        quarantined: false,
        dependencies: dependencies
            .iter()
            .map(|d| Dependency {
                name: d.clone(),
                requirement: "*".into(),
            })
            .collect(),
    };
    let mut tx = registry.store.begin().await?;
    let seq = super::sql::next_seq(&mut tx).await?;
    SqlRegistry::upsert_package(&mut tx, &package, seq).await?;
    SqlRegistry::upsert_release(&mut tx, &release, seq).await?;
    tx.commit().await?;
    Ok(())
}
