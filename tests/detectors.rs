//! Detectors on the registry's facts: quality against ggen's receipts, unmaintained, unavailable dependencies, cycles, typosquats, and an unreachable registry.

mod common;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use common::{store, NOW};
use mapek::analyze::quality::QualityModel;
use mapek::analyze::{AnalyzeInput, AnalyzeOutput, Analyzer, Rules};
use mapek::keys::TrustStore;
use mapek::knowledge::findings::Finding;
use mapek::model::FindingKind;
use mapek::monitor::{self, MonitorState};
use mapek::registry::{Dependency, PackageRecord, ReleaseRecord, SqlRegistry};
use mapek::sim::registry::SimRegistry;

const DAY: i64 = 86_400_000;

fn package(name: &str, author: &str, downloads: i64, created_at: i64) -> PackageRecord {
    PackageRecord {
        name: name.into(),
        description: format!("{name}, a package"),
        category: Some("tools".into()),
        author: Some(author.into()),
        license: Some("MIT".into()),
        repository: None,
        tags: vec![],
        keywords: vec![],
        downloads,
        stars: 0,
        status: "active".into(),
        latest: Some("1.0.0".into()),
        quality: None,
        quality_detail: None,
        production_ready: false,
        created_at,
        updated_at: created_at,
    }
}

fn release(p: &str, version: &str, published_at: i64, deps: &[(&str, &str)]) -> ReleaseRecord {
    ReleaseRecord {
        package: p.into(),
        version: version.into(),
        published_at,
        checksum: None,
        artifact: None,
        signature: None,
        signer: None,
        yanked: false,
        quarantined: false,
        dependencies: deps
            .iter()
            .map(|(n, r)| Dependency {
                name: n.to_string(),
                requirement: r.to_string(),
            })
            .collect(),
    }
}

struct Hand {
    t: common::TestStore,
    registry: Arc<SimRegistry>,
    monitor: MonitorState,
    analyzer: Analyzer,
}

impl Hand {
    async fn cycle(&mut self, now: i64) -> (AnalyzeOutput, Vec<Finding>) {
        let trust = Arc::new(TrustStore::default());
        let m = monitor::cycle(
            &mut self.monitor,
            &self.registry,
            &self.t.store,
            &trust,
            now,
            3_600_000,
        )
        .await
        .unwrap();
        let out = self
            .analyzer
            .cycle(&self.t.store, AnalyzeInput::from_monitor(&m), now)
            .await
            .unwrap();
        (out, self.t.store.open_findings().await.unwrap())
    }
}

async fn hand(packages: Vec<PackageRecord>, releases: Vec<ReleaseRecord>) -> Hand {
    let t = store().await;
    let inner = SqlRegistry::new(t.store.clone(), t.dir.path().join("artifacts"));
    inner.insert_all(&packages, &releases).await.unwrap();
    Hand {
        registry: Arc::new(SimRegistry::new(inner, Default::default(), None)),
        t,
        monitor: MonitorState::new(),
        analyzer: Analyzer::new(Rules::default()),
    }
}

fn subjects(open: &[Finding], kind: FindingKind) -> Vec<String> {
    let mut s: Vec<String> = open
        .iter()
        .filter(|f| f.kind == kind)
        .map(|f| f.subject.to_string())
        .collect();
    s.sort();
    s
}

/// A registry with one of each problem, and neighbours just on the safe side of each edge.
async fn troubled() -> Hand {
    let old = NOW - 731 * DAY;
    let edge = NOW - 730 * DAY;
    let mut yanked = release("yanked-lib", "1.0.0", NOW - DAY, &[]);
    yanked.yanked = true;
    let mut quarantined_pkg = package("shut-lib", "ann", 0, old);
    quarantined_pkg.status = "quarantined".into();
    hand(
        vec![
            package("old-lib", "ann", 10, old),
            package("old-alone", "ann", 10, old),
            package("edge-lib", "ann", 10, old),
            package("app", "bob", 10, old),
            package("v1-lib", "ann", 10, old),
            package("yanked-lib", "ann", 10, old),
            quarantined_pkg,
            package("x-cyc", "ann", 0, old),
            package("y-cyc", "ann", 0, old),
            package("z-cyc", "ann", 0, old),
            package("selfish", "ann", 0, old),
            package("rest-api-template", "alice", 5_000, old),
            package("rest_api-template", "mallory", 0, NOW - DAY),
            package("rest-api-templat", "mallory", 0, NOW - DAY),
            package("rest-api-templates", "alice", 0, NOW - DAY),
            package("rest-api-tmpl", "mallory", 0, NOW - DAY),
            package("rest-api-temp1ate", "mallory", 0, NOW - 31 * DAY),
        ],
        vec![
            release("old-lib", "1.0.0", old, &[]),
            release("old-alone", "1.0.0", old, &[]),
            release("edge-lib", "1.0.0", edge, &[]),
            release(
                "app",
                "1.0.0",
                NOW - DAY,
                &[
                    ("old-lib", "^1"),
                    ("edge-lib", "^1"),
                    ("ghost", "^1"),
                    ("yanked-lib", "^1"),
                    ("shut-lib", "*"),
                    ("v1-lib", "^2"),
                ],
            ),
            yanked,
            release("v1-lib", "1.0.0", NOW - DAY, &[]),
            release("shut-lib", "1.0.0", NOW - DAY, &[]),
            release("x-cyc", "1.0.0", NOW - DAY, &[("y-cyc", "*")]),
            release("y-cyc", "1.0.0", NOW - DAY, &[("z-cyc", "*")]),
            release("z-cyc", "1.0.0", NOW - DAY, &[("x-cyc", "*")]),
            release("selfish", "1.0.0", NOW - DAY, &[("selfish", "*")]),
            release("rest-api-template", "1.0.0", old, &[]),
            release("rest_api-template", "1.0.0", NOW - DAY, &[]),
            release("rest-api-templat", "1.0.0", NOW - DAY, &[]),
            release("rest-api-templates", "1.0.0", NOW - DAY, &[]),
            release("rest-api-tmpl", "1.0.0", NOW - DAY, &[]),
            release("rest-api-temp1ate", "1.0.0", NOW - 31 * DAY, &[]),
        ],
    )
    .await
}

#[tokio::test]
async fn facts_detectors_find_each_problem_once_and_spare_the_edges() {
    let mut h = troubled().await;
    let (_, open) = h.cycle(NOW).await;
    // 731 days and depended on: unmaintained. 730 days exactly, or nobody depending: not.
    assert_eq!(subjects(&open, FindingKind::Unmaintained), ["old-lib"]);
    let app = open
        .iter()
        .find(|f| f.kind == FindingKind::DependencyUnavailable)
        .expect("app cannot be installed");
    assert_eq!(app.subject.to_string(), "app@1.0.0");
    // By name, on every store (the rows' order is not the declaration's on PostgreSQL).
    assert_eq!(
        app.labels["dependencies"],
        serde_json::json!(["ghost", "shut-lib", "v1-lib", "yanked-lib"])
    );
    assert_eq!(
        app.labels["reasons"],
        serde_json::json!([
            "missing",
            "quarantined",
            "no release matches the requirement",
            "every matching release is yanked or quarantined"
        ])
    );
    // Each cycle once, on its first member by name.
    assert_eq!(
        subjects(&open, FindingKind::DependencyCycle),
        ["selfish", "x-cyc"]
    );
    let cycle = open.iter().find(|f| f.subject.package == "x-cyc").unwrap();
    assert_eq!(
        cycle.labels["members"],
        serde_json::json!(["x-cyc", "y-cyc", "z-cyc"])
    );
    // New names close to a popular one by another author: `_` for `-`, one edit. The same
    // author, a name 4 edits away, and a package older than 30 days are not suspects.
    assert_eq!(
        subjects(&open, FindingKind::TyposquatSuspect),
        ["rest-api-templat", "rest_api-template"]
    );
    // A second pass finds nothing new: each finding is deduplicated by fingerprint.
    let (out, again) = h.cycle(NOW).await;
    assert!(out.fired.is_empty(), "{:?}", out.fired);
    assert_eq!(again.len(), open.len());
}

#[tokio::test]
async fn an_unreachable_registry_freezes_fact_findings_and_is_a_finding_itself() {
    let mut h = troubled().await;
    let (_, open) = h.cycle(NOW).await;
    let before = subjects(&open, FindingKind::DependencyCycle);
    h.registry.down.store(true, Ordering::SeqCst);
    // Down for a day: nothing of the registry's is resolved, the outage fires after its `for`
    // (2 minutes), and every pass says its facts are stale.
    let (out, open) = h.cycle(NOW + 60_000).await;
    assert!(out.stale);
    assert!(out.resolved.is_empty());
    let down = open
        .iter()
        .find(|f| f.kind == FindingKind::RegistryUnreachable)
        .expect("opened");
    assert_eq!(
        down.state,
        mapek::knowledge::findings::FindingState::Pending
    );
    let (out, open) = h.cycle(NOW + DAY).await;
    assert!(out.stale && out.resolved.is_empty());
    assert_eq!(subjects(&open, FindingKind::DependencyCycle), before);
    assert!(out
        .fired
        .iter()
        .any(|f| f.kind == FindingKind::RegistryUnreachable));
    // Back: the outage clears and resolves after keep_firing_for (5 minutes).
    h.registry.down.store(false, Ordering::SeqCst);
    let (out, _) = h.cycle(NOW + DAY + 60_000).await;
    assert!(!out.stale);
    let (out, open) = h.cycle(NOW + DAY + 7 * 60_000).await;
    assert!(out
        .resolved
        .iter()
        .any(|f| f.kind == FindingKind::RegistryUnreachable));
    assert_eq!(subjects(&open, FindingKind::DependencyCycle), before);
}

#[tokio::test]
async fn a_quality_drop_is_a_regression_and_survives_a_restart() {
    let mut h = hand(
        vec![
            package("lib", "ann", 500, NOW - DAY),
            package("user", "bob", 0, NOW - DAY),
        ],
        vec![
            release("lib", "1.0.0", NOW - DAY, &[]),
            release("user", "1.0.0", NOW - DAY, &[("lib", "^1")]),
        ],
    )
    .await;
    h.cycle(NOW).await;
    let first = h.t.store.quality_states().await.unwrap()["lib"].clone();
    // Unsigned and without receipts: signed, checksum, readme and tests fail (55 of 100).
    assert_eq!(first.score, 45.0, "{first:?}");
    // The licence goes: 8 points, under the 10-point threshold, but metadata goes with it (10):
    // 18 points down is a regression.
    sqlx::query(
        "UPDATE packages SET license = NULL, change_seq = change_seq + 1000 WHERE name = 'lib'",
    )
    .execute(h.t.store.raw_pool())
    .await
    .unwrap();
    sqlx::query("UPDATE registry_seq SET value = value + 1000")
        .execute(h.t.store.raw_pool())
        .await
        .unwrap();
    // Written behind the simulated registry's back: it reads its change sequence again.
    h.registry.changed();
    let (out, open) = h.cycle(NOW + 60_000).await;
    let f = open
        .iter()
        .find(|f| f.kind == FindingKind::QualityRegression)
        .expect("regression");
    assert_eq!(f.value, 27.0);
    assert!(out.fired.iter().any(|g| g.id == f.id));
    // A restart keeps the peak: the regression is still seen.
    h.analyzer = Analyzer::new(Rules::default());
    let (_, open) = h.cycle(NOW + 120_000).await;
    assert!(open
        .iter()
        .any(|f| f.kind == FindingKind::QualityRegression));
}

fn ggen_model() -> QualityModel {
    QualityModel::parse(
        Path::new("ggen.toml"),
        "[quality]\nguards = { metadata = 10, license = 8, readme = 7, tests = 8, chicago_compliance = 15 }\n\
         critical = [\"metadata\", \"license\", \"readme\", \"tests\", \"chicago_compliance\"]\n\
         bands = { production_ready = 95, needs_improvement = 80 }\n",
    )
    .unwrap()
}

#[test]
fn ggen_weights_give_every_receipt_its_overall_score_and_readiness() {
    let Some(fixtures) = common::ggen_fixtures() else {
        return;
    };
    let model = ggen_model();
    let mut n = 0;
    for dir in std::fs::read_dir(fixtures.clone().join("receipts")).unwrap() {
        for file in std::fs::read_dir(dir.unwrap().path()).unwrap() {
            let path = file.unwrap().path();
            let doc: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            let guards =
                mapek::monitor::facts::receipt_guards(Some(&doc["guard_results"].to_string()));
            let s = model.score(|g| guards.get(g).unwrap_or(false));
            let want = doc["overall_score"].as_f64().unwrap();
            assert!(
                (s.score - want).abs() < 1e-9,
                "{}: {} != {want}",
                path.display(),
                s.score
            );
            assert_eq!(
                s.band == "production_ready",
                doc["production_ready"].as_bool().unwrap(),
                "{}",
                path.display()
            );
            n += 1;
        }
    }
    assert_eq!(n, 66);
}

#[tokio::test]
async fn the_daemon_scores_imported_packages_as_their_receipts_did() {
    let Some(fixtures) = common::ggen_fixtures() else {
        return;
    };
    let t = store().await;
    mapek::registry::import::import(&t.store, &fixtures.clone(), NOW)
        .await
        .unwrap();
    let inner = SqlRegistry::new(t.store.clone(), t.dir.path().join("artifacts"));
    let registry = Arc::new(inner);
    let mut monitor = MonitorState::new();
    let m = monitor::cycle(
        &mut monitor,
        &registry,
        &t.store,
        &Arc::new(TrustStore::default()),
        NOW,
        3_600_000,
    )
    .await
    .unwrap();
    let mut analyzer = Analyzer::new(Rules {
        quality: ggen_model(),
        ..Rules::default()
    });
    analyzer
        .cycle(&t.store, AnalyzeInput::from_monitor(&m), NOW)
        .await
        .unwrap();
    let scores = t.store.quality_states().await.unwrap();
    let seeded = sqlx::query("SELECT name, quality FROM packages WHERE quality IS NOT NULL")
        .fetch_all(t.store.raw_pool())
        .await
        .unwrap();
    assert!(seeded.len() >= 60, "{}", seeded.len());
    for row in seeded {
        use sqlx::Row;
        let name: String = row.get(0);
        let receipt: f64 = row.get(1);
        let ours = scores[&name].score;
        assert!(
            (ours - receipt).abs() < 1e-9,
            "{name}: {ours} != receipt {receipt}"
        );
    }
}
