//! ggen's real formats imported (with problems reported), policy and audit errors that name where they are.

mod common;

use std::path::PathBuf;

use common::{store, NOW};
use mapek::keys::KeyPair;
use mapek::knowledge::audit::{self, verify_chain, NewEntry};
use mapek::plan::policy::PolicySet;
use mapek::registry::import::import;
use mapek::registry::{Registry, SqlRegistry};

#[tokio::test]
async fn the_real_ggen_registry_imports_with_its_problems_reported_and_twice_changes_nothing() {
    let Some(fixtures) = common::ggen_fixtures() else {
        return;
    };
    let t = store().await;
    let first = import(&t.store, &fixtures.clone(), NOW).await.unwrap();
    assert_eq!(first.sources.len(), 4, "{:?}", first.sources);
    let index: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures.clone().join("registry-index.json")).unwrap(),
    )
    .unwrap();
    let index_names = index["packages"].as_array().unwrap().len();
    let packs = std::fs::read_dir(fixtures.clone().join("packs"))
        .unwrap()
        .count();
    assert!(
        first.packages_seen >= index_names && first.packages_seen <= index_names + packs,
        "{}",
        first.packages_seen
    );
    assert_eq!(first.packages_changed, first.packages_seen);
    assert!(first.receipts_applied > 0);
    // Real data is messy: the index has authors missing, a dependency on a package that is not
    // there, and a receipt for a package that is not in the import. ggen's reverse-domain names
    // (spec/registry.md) are valid.
    assert!(first
        .problems
        .iter()
        .any(|p| p.field == "author" && p.file.ends_with("registry-index.json")));
    // (One package.toml names its package "Next.js Ontology-Driven CRUD": that one is refused.)
    assert!(!first
        .problems
        .iter()
        .any(|p| p.field == "name" && p.package == "io.ggen.nextjs.ontology-crud"));
    let registry = SqlRegistry::new(t.store.clone(), ".");
    assert!(registry
        .package("io.ggen.nextjs.ontology-crud")
        .await
        .unwrap()
        .is_some());
    assert!(first
        .problems
        .iter()
        .any(|p| p.field == "dependencies" && p.reason.contains("academic-paper-lifecycle")));
    // Its receipt, once refused with the package, is applied now.
    assert!(!first
        .problems
        .iter()
        .any(|p| p.field == "package_id" && p.package == "io.ggen.nextjs.ontology-crud"));
    let second = import(&t.store, &fixtures.clone(), NOW + 1000)
        .await
        .unwrap();
    assert_eq!(second.packages_changed, 0);
    assert_eq!(second.releases_changed, 0);
    // A receipt's overall_score becomes the package's quality.
    let receipt: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            fixtures
                .clone()
                .join("receipts/academic-bibliography-manager/1.0.0.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let p = registry
        .package("academic-bibliography-manager")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(p.quality, receipt["overall_score"].as_f64());
}

#[tokio::test]
async fn the_real_index_imports_all_77_packages_dotted_names_included() {
    let Some(fixtures) = common::ggen_fixtures() else {
        return;
    };
    let t = store().await;
    let r = import(&t.store, &fixtures.clone().join("registry-index.json"), NOW)
        .await
        .unwrap();
    assert_eq!(r.packages_seen, 77, "{:#?}", r.problems);
    assert_eq!(r.packages_changed, 77);
}

#[test]
fn one_source_read_without_a_store_finds_what_the_import_would() {
    let Some(fixtures) = common::ggen_fixtures() else {
        return;
    };
    use mapek::registry::import::read_source;
    let index = std::fs::read_to_string(fixtures.clone().join("registry-index.json")).unwrap();
    let s = read_source("index.json", &index, NOW).unwrap();
    assert_eq!(s.packages, 77);
    assert!(read_source("index.json", "{\"neither\": 1}", NOW).is_err());
    let broken = read_source("pack.toml", "[pack\nname = ", NOW).unwrap();
    assert_eq!(
        (broken.packages, broken.problems),
        (0, 1),
        "a located problem, not an error"
    );
}

#[tokio::test]
async fn a_marketplace_catalog_v2_imports_each_pack_with_its_digest() {
    let Some(fixtures) = common::ggen_fixtures() else {
        return;
    };
    let t = store().await;
    let catalog = fixtures
        .clone()
        .join("../ggen-marketplace/dist/site/index.json");
    let r = import(&t.store, &catalog, NOW).await.unwrap();
    assert_eq!(r.packages_seen, 48);
    assert_eq!(r.releases_seen, 48);
    assert!(r.sources[0].starts_with("catalog v2"), "{:?}", r.sources);
    assert!(
        !r.problems
            .iter()
            .any(|p| p.field == "author" || p.field == "license"),
        "a catalog has neither: {:#?}",
        r.problems
    );
    let registry = SqlRegistry::new(t.store.clone(), ".");
    let release = registry
        .release("fastmcp-pack", "0.1.0")
        .await
        .unwrap()
        .expect("imported");
    let sums = std::fs::read_to_string(
        fixtures
            .clone()
            .join("../ggen-marketplace/dist/packs.sha256"),
    )
    .unwrap();
    let digest = sums
        .lines()
        .find_map(|l| l.strip_prefix("fastmcp-pack 0.1.0 sha256:"))
        .unwrap();
    assert_eq!(release.checksum.as_deref(), Some(digest));
    let again = import(&t.store, &catalog, NOW + 1).await.unwrap();
    assert_eq!(again.releases_changed, 0);
}

#[tokio::test]
async fn each_format_is_detected_on_its_own() {
    let Some(fixtures) = common::ggen_fixtures() else {
        return;
    };
    for (sub, min) in [("registry-index.json", 50), ("packages", 50), ("packs", 1)] {
        let t = store().await;
        let r = import(&t.store, &fixtures.clone().join(sub), NOW)
            .await
            .unwrap();
        assert!(r.packages_seen >= min, "{sub}: {}", r.packages_seen);
    }
}

#[tokio::test]
async fn a_refused_input_changes_nothing_already_stored() {
    let Some(fixtures) = common::ggen_fixtures() else {
        return;
    };
    let t = store().await;
    import(&t.store, &fixtures.clone().join("registry-index.json"), NOW)
        .await
        .unwrap();
    let registry = SqlRegistry::new(t.store.clone(), ".");
    let before = registry.counts().await.unwrap();
    let bad = t.dir.path().join("index.json");
    std::fs::write(&bad, "{\"packages\": [\n  {\"name\": \"x\",,}\n]}").unwrap();
    let err = import(&t.store, &bad, NOW).await.unwrap_err().to_string();
    assert!(
        err.contains("index.json") && err.contains("line 2"),
        "{err}"
    );
    assert_eq!(registry.counts().await.unwrap(), before);
}

#[tokio::test]
async fn invalid_entries_are_reported_by_file_package_and_field_and_the_rest_imported() {
    let t = store().await;
    let file = t.dir.path().join("index.json");
    let long = "d".repeat(5000);
    let body = r#"{"packages": [
            {"name": "Bad Name", "version": "1.0.0"},
            {"name": "long-one", "version": "1.0.0", "author": "a", "license": "MIT", "description": "LONG"},
            {"name": "good-one", "version": "one", "description": "d", "author": "a", "license": "MIT", "downloads": -3, "dependencies": ["ghost"], "checksum": "xyz"}
        ]}"#
        .replace("LONG", &long);
    std::fs::write(&file, body).unwrap();
    let r = import(&t.store, &file, NOW).await.unwrap();
    assert_eq!(r.packages_seen, 2);
    assert!(r
        .problems
        .iter()
        .any(|p| p.package == "long-one" && p.field == "description" && p.reason.contains("5000")));
    let fields: Vec<(&str, &str)> = r
        .problems
        .iter()
        .map(|p| (p.package.as_str(), p.field.as_str()))
        .collect();
    for expected in [
        ("Bad Name", "name"),
        ("good-one", "version"),
        ("good-one", "downloads"),
        ("good-one", "checksum"),
        ("good-one", "dependencies"),
    ] {
        assert!(fields.contains(&expected), "{expected:?} not in {fields:?}");
    }
}

#[test]
fn policy_errors_name_file_line_and_field_and_all_are_reported() {
    let src = "[[policy]]\nid = \"a\"\non = \"checksum_mismatch\"\naction = \"quarantine\"\ncolour = 1\n\n\
               [[policy]]\nid = \"b\"\non = \"no_such_kind\"\nwhen = \"package.downloads +\"\naction = \"explode\"\n";
    let errors = PolicySet::from_sources(&[(PathBuf::from("policies/x.toml"), src.to_string())])
        .unwrap_err();
    let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    assert!(
        text.iter()
            .any(|e| e.starts_with("policies/x.toml:5: field `colour`")),
        "{text:?}"
    );
    let second = "[[policy]]\nid = \"b\"\non = \"no_such_kind\"\nwhen = \"package.downloads +\"\naction = \"explode\"\n";
    let errors =
        PolicySet::from_sources(&[(PathBuf::from("y.toml"), second.to_string())]).unwrap_err();
    let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    for prefix in [
        "y.toml:3: field `on`",
        "y.toml:4: field `when`",
        "y.toml:5: field `action`",
    ] {
        assert!(
            text.iter().any(|e| e.starts_with(prefix)),
            "{prefix} not in {text:?}"
        );
    }
}

#[test]
fn duplicate_ids_are_refused_naming_the_second_one() {
    let a = "[[policy]]\nid = \"same\"\non = \"checksum_mismatch\"\naction = \"quarantine\"\n";
    let b = "# another file\n[[policy]]\nid = \"same\"\non = \"signature_invalid\"\naction = \"quarantine\"\n";
    let errors = PolicySet::from_sources(&[
        (PathBuf::from("a.toml"), a.into()),
        (PathBuf::from("b.toml"), b.into()),
    ])
    .unwrap_err();
    let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    assert_eq!(
        text,
        vec!["b.toml:3: field `id`: policy id `same` is used twice".to_string()]
    );
}

#[test]
fn the_shipped_policy_set_loads() {
    let set = common::default_policies();
    assert!(set.policies.len() >= 3);
}

#[tokio::test]
async fn audit_verify_names_the_first_entry_altered_or_removed() {
    let t = store().await;
    let key = KeyPair::from_seed("daemon", [4; 32]);
    for i in 0..4 {
        let mut tx = t.store.begin().await.unwrap();
        audit::append(
            &mut tx,
            &key,
            NewEntry {
                at: NOW + i,
                kind: mapek::model::AuditKind::RemediationExecuted,
                actor: "daemon".into(),
                subject: format!("pkg-{i}@1.0.0"),
                remediation_id: Some(format!("rem-{i}")),
                detail: serde_json::json!({"policy": "p"}),
            },
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
    }
    assert_eq!(
        verify_chain(&t.store.audit_entries().await.unwrap(), &key.public()),
        Ok(4)
    );
    // Exported as JSON lines and read back, the log verifies with the public key alone; one
    // changed byte in the export is caught.
    let export: Vec<String> = t
        .store
        .audit_entries()
        .await
        .unwrap()
        .iter()
        .map(|e| serde_json::to_string(e).unwrap())
        .collect();
    let read = |lines: &[String]| -> Vec<audit::AuditEntry> {
        lines
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    assert_eq!(verify_chain(&read(&export), &key.public()), Ok(4));
    let mut forged = export.clone();
    forged[1] = forged[1].replace("pkg-1@1.0.0", "pkg-7@1.0.0");
    assert_eq!(
        verify_chain(&read(&forged), &key.public()).unwrap_err().seq,
        2
    );
    // Checked on several threads, the first bad entry by sequence is still the one named.
    forged[3] = forged[3].replace("pkg-3@1.0.0", "pkg-8@1.0.0");
    assert_eq!(
        verify_chain(&read(&forged), &key.public()).unwrap_err().seq,
        2
    );
    let mut late = export.clone();
    late[3] = late[3].replace("pkg-3@1.0.0", "pkg-8@1.0.0");
    assert_eq!(
        verify_chain(&read(&late), &key.public()).unwrap_err().seq,
        4
    );

    let other = KeyPair::from_seed("other", [5; 32]);
    assert_eq!(
        verify_chain(&t.store.audit_entries().await.unwrap(), &other.public())
            .unwrap_err()
            .seq,
        1
    );

    sqlx::query("UPDATE audit_log SET subject = 'pkg-9@1.0.0' WHERE seq = 3")
        .execute(t.store.raw_pool())
        .await
        .unwrap();
    let b = verify_chain(&t.store.audit_entries().await.unwrap(), &key.public()).unwrap_err();
    assert_eq!(b.seq, 3);
    assert!(b.reason.contains("altered"));

    sqlx::query("UPDATE audit_log SET subject = 'pkg-2@1.0.0' WHERE seq = 3")
        .execute(t.store.raw_pool())
        .await
        .unwrap();
    sqlx::query("DELETE FROM audit_log WHERE seq = 2")
        .execute(t.store.raw_pool())
        .await
        .unwrap();
    let b = verify_chain(&t.store.audit_entries().await.unwrap(), &key.public()).unwrap_err();
    assert_eq!(b.seq, 2);
    assert!(b.reason.contains("missing"));
}

#[tokio::test]
async fn releases_read_a_page_at_a_time_are_every_release_once_in_order() {
    let t = store().await;
    let registry = SqlRegistry::new(t.store.clone(), t.dir.path().join("artifacts"));
    let spec = mapek::registry::generate::GenerateSpec {
        packages: 40,
        max_releases: 3,
        seed: 11,
        ..Default::default()
    };
    mapek::registry::generate::generate(&registry, &spec, NOW)
        .await
        .unwrap();
    let (all, head) = registry.releases_since(0).await.unwrap();
    assert!(all.len() > 40, "{}", all.len());
    let keys = |rs: &[mapek::registry::ReleaseRecord]| {
        rs.iter()
            .map(|r| (r.package.clone(), r.version.clone()))
            .collect::<Vec<_>>()
    };
    let mut sorted = keys(&all);
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), all.len(), "each release once");
    assert_eq!(keys(&all), sorted, "in order");
    let stored: i64 = sqlx::Row::get(
        &sqlx::query("SELECT COUNT(*) FROM releases")
            .fetch_one(t.store.raw_pool())
            .await
            .unwrap(),
        0,
    );
    assert_eq!(all.len() as i64, stored);
    let mut conn = t.store.reads().acquire().await.unwrap();
    // Pages that end inside a package's releases, on a boundary, and one page for all.
    for page in [1, 2, 7, all.len() as i64, 10_000] {
        let paged = registry
            .releases_between(&mut conn, 0, head, page)
            .await
            .unwrap();
        assert_eq!(paged, all, "page of {page}");
    }
    // Only what changed after a cursor: one signature replaced.
    let last = &all[all.len() / 2];
    let key = KeyPair::from_seed("pub-x", [3; 32]);
    registry
        .set_signature(&last.package, &last.version, &key.sign(b"x"), "pub-x")
        .await
        .unwrap();
    let (changed, now) = registry.releases_since(head).await.unwrap();
    assert_eq!(keys(&changed), keys(std::slice::from_ref(last)));
    let paged = registry
        .releases_between(&mut conn, head, now, 1)
        .await
        .unwrap();
    assert_eq!(paged, changed);
}
