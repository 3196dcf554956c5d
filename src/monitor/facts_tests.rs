//! Property test of the facts kept up to date: after any sequence of registry changes, the facts updated in place equal the facts rebuilt from scratch.

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{Facts, FactsCache, Updated};
use crate::knowledge::Store;
use crate::registry::next_seq;
use crate::registry::{Dependency, PackageRecord, Registry, ReleaseRecord, SqlRegistry};

const NAMES: [&str; 10] = [
    "alpha", "beta", "gamma", "delta", "eps", "zeta", "eta", "theta", "iota", "kappa",
];
const VERSIONS: [&str; 3] = ["1.0.0", "1.1.0", "2.0.0"];

fn record(name: &str, rng: &mut ChaCha8Rng) -> PackageRecord {
    PackageRecord {
        name: name.into(),
        description: format!("d{}", rng.random_range(0..3)),
        category: None,
        author: Some(format!("a{}", rng.random_range(0..2))),
        license: Some("MIT".into()),
        repository: None,
        tags: vec![],
        keywords: vec![],
        downloads: rng.random_range(0..100),
        stars: 0,
        status: ["active", "active", "quarantined", "deprecated"][rng.random_range(0..4)].into(),
        latest: None,
        quality: None,
        quality_detail: None,
        production_ready: false,
        created_at: 0,
        updated_at: 0,
    }
}

fn release(package: &str, rng: &mut ChaCha8Rng) -> ReleaseRecord {
    let mut dependencies: Vec<Dependency> = Vec::new();
    for _ in 0..rng.random_range(0..4) {
        let name = NAMES[rng.random_range(0..NAMES.len())];
        if !dependencies.iter().any(|d| d.name == name) {
            dependencies.push(Dependency {
                name: name.into(),
                requirement: ["^1", "^2"][rng.random_range(0..2)].into(),
            });
        }
    }
    ReleaseRecord {
        package: package.into(),
        version: VERSIONS[rng.random_range(0..VERSIONS.len())].into(),
        published_at: rng.random_range(0..5),
        checksum: None,
        artifact: None,
        signature: None,
        signer: None,
        yanked: rng.random_range(0..4) == 0,
        quarantined: rng.random_range(0..6) == 0,
        dependencies,
    }
}

/// One random change to the registry, in its own transaction; the release it removed, if any.
async fn change(
    registry: &SqlRegistry,
    rng: &mut ChaCha8Rng,
) -> anyhow::Result<Option<(String, String)>> {
    let name = NAMES[rng.random_range(0..NAMES.len())];
    let mut tx = registry.store.begin().await?;
    let seq = next_seq(&mut tx).await?;
    let mut removed = None;
    match rng.random_range(0..10) {
        0..=2 => {
            SqlRegistry::upsert_package(&mut tx, &record(name, rng), seq).await?;
        }
        3..=7 => {
            SqlRegistry::upsert_release(&mut tx, &release(name, rng), seq).await?;
        }
        _ => {
            let version = VERSIONS[rng.random_range(0..VERSIONS.len())];
            SqlRegistry::remove_release(&mut tx, name, version).await?;
            removed = Some((name.to_string(), version.to_string()));
        }
    }
    tx.commit().await?;
    Ok(removed)
}

type Canonical = BTreeMap<String, (String, String, Vec<String>, Vec<String>, u32, i64)>;

/// The facts by package name, with edges as names: the same registry gives the same form,
/// whatever order the packages were added in.
fn canonical(f: &Facts) -> Canonical {
    let names = |ids: &[u32]| -> Vec<String> {
        let mut v: Vec<String> = ids
            .iter()
            .map(|&i| f.packages[i as usize].record.name.clone())
            .collect();
        v.sort();
        v
    };
    f.packages
        .iter()
        .enumerate()
        .map(|(i, p)| {
            (
                p.record.name.clone(),
                (
                    format!("{:?} {:?}", p.record, p.receipt),
                    format!("{:?}", p.releases),
                    names(&f.depends_on[i]),
                    names(&f.depended_by[i]),
                    f.dependents[i],
                    f.change_seq,
                ),
            )
        })
        .collect()
}

#[tokio::test]
async fn facts_updated_in_place_equal_facts_rebuilt_after_any_changes() -> anyhow::Result<()> {
    let mut incremental_updates = 0;
    for seed in 0..40u64 {
        let dir = tempfile::tempdir()?;
        let store = Store::open(&dir.path().join("f.db").display().to_string()).await?;
        let registry = SqlRegistry::new(store.clone(), dir.path());
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut kept = FactsCache::default();
        let mut cursor = 0;
        for step in 0..40 {
            let mut removed = Vec::new();
            for _ in 0..rng.random_range(1..4) {
                removed.extend(change(&registry, &mut rng).await?);
            }
            // What a monitor pass does: the releases changed since the cursor, those removed.
            let seq = registry.change_seq().await?;
            let (releases, head) = registry.releases_since(cursor).await?;
            cursor = head;
            // As a pass does: what left the registry first, then what was read after.
            kept.forget(&removed);
            kept.note_releases(&mut releases.clone());
            // Now and then the kept facts are rebuilt from the records and what they hold (as
            // a full read or a large change does), otherwise updated in place.
            let rebuild = step % 9 == 4;
            let updated = kept.facts(&registry, seq, rebuild).await?;
            if rebuild {
                assert_eq!(kept.last, Some(Updated::Rebuilt), "seed {seed} step {step}");
            } else if step > 0 {
                assert_ne!(kept.last, Some(Updated::Rebuilt), "seed {seed} step {step}");
                incremental_updates += matches!(kept.last, Some(Updated::Incremental(_))) as u32;
            }
            let mut fresh = FactsCache::default();
            fresh.note_releases(&mut registry.releases_since(0).await?.0);
            let rebuilt = fresh.facts(&registry, seq, true).await?;
            assert_eq!(
                canonical(&updated),
                canonical(&rebuilt),
                "seed {seed}, after step {step}"
            );
            let edges = |f: &Facts| {
                let mut e: Vec<(String, String)> = f
                    .edges()
                    .map(|(a, b)| {
                        (
                            f.packages[a].record.name.clone(),
                            f.packages[b].record.name.clone(),
                        )
                    })
                    .collect();
                e.sort();
                e
            };
            assert_eq!(edges(&updated), edges(&rebuilt), "seed {seed}, step {step}");
            // The counts the planner reads from the facts are the registry's: its packages, and
            // its quarantined packages and releases (of packages that have a record).
            let records = registry.packages().await?;
            let all = registry.releases_since(0).await?.0;
            let expected = crate::registry::RegistryCounts {
                packages: records.len() as i64,
                quarantined: records.iter().filter(|p| p.status == "quarantined").count() as i64
                    + all
                        .iter()
                        .filter(|r| r.quarantined && records.iter().any(|p| p.name == r.package))
                        .count() as i64,
            };
            assert_eq!(updated.counts(), expected, "seed {seed}, step {step}");
            assert_eq!(rebuilt.counts(), expected, "seed {seed}, step {step}");
        }
        store.close().await;
    }
    assert!(
        incremental_updates > 1000,
        "{incremental_updates} updates in place"
    );
    Ok(())
}

#[tokio::test]
async fn a_package_recorded_after_its_releases_brings_them_and_their_dependents(
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(&dir.path().join("f.db").display().to_string()).await?;
    let registry = SqlRegistry::new(store.clone(), dir.path());
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mut tx = store.begin().await?;
    let seq = next_seq(&mut tx).await?;
    SqlRegistry::upsert_package(&mut tx, &record("alpha", &mut rng), seq).await?;
    let mut r = release("alpha", &mut rng);
    r.dependencies = vec![Dependency {
        name: "beta".into(),
        requirement: "^1".into(),
    }];
    SqlRegistry::upsert_release(&mut tx, &r, seq).await?;
    let mut b = release("beta", &mut rng);
    b.dependencies.clear();
    SqlRegistry::upsert_release(&mut tx, &b, seq).await?;
    tx.commit().await?;
    let mut kept = FactsCache::default();
    let (releases, cursor) = registry.releases_since(0).await?;
    kept.note_releases(&mut releases.clone());
    let f = kept
        .facts(&registry, registry.change_seq().await?, true)
        .await?;
    assert_eq!(f.packages.len(), 1, "beta has releases but no record yet");
    assert_eq!(f.dependents, vec![0]);

    let mut tx = store.begin().await?;
    let seq = next_seq(&mut tx).await?;
    SqlRegistry::upsert_package(&mut tx, &record("beta", &mut rng), seq).await?;
    tx.commit().await?;
    let (releases, _) = registry.releases_since(cursor).await?;
    kept.note_releases(&mut releases.clone());
    let f = kept.facts(&registry, seq, false).await?;
    assert_eq!(kept.last, Some(Updated::Incremental(1)));
    let beta = f.index["beta"];
    assert_eq!(
        f.packages[beta].releases.len(),
        1,
        "its release came with it"
    );
    assert_eq!(f.dependents[beta], 1, "alpha now depends on it");
    assert_eq!(f.depended_by[beta], vec![f.index["alpha"] as u32]);
    assert_eq!(f.touched[f.index["alpha"]], seq, "alpha's edges changed");
    store.close().await;
    Ok(())
}
