//! The same loop, written once, on both backends: mapek's own SQL registry and a ggen marketplace checkout. A tampered artifact is quarantined once, a quiet cycle plans nothing, a dry-run daemon changes nothing, a rollback undoes once, a restored artifact resolves at the next full scan, and the audit log verifies.

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use common::{default_policies, NOW};
use mapek::execute::rollback::{finish, record, rollback};
use mapek::execute::Outcome;
use mapek::keys::{KeyPair, TrustStore};
use mapek::knowledge::audit::verify_chain;
use mapek::knowledge::remediations::Status;
use mapek::registry::generate::{self, GenerateSpec};
use mapek::registry::marketplace::{Marketplace, MarketplaceConfig};
use mapek::registry::{Managed, Registry, SqlRegistry};

/// One backend with a registry to act on and one release whose artifact a test may change.
struct Bed {
    t: common::TestStore,
    registry: Arc<Managed>,
    trust: Arc<TrustStore>,
    key: KeyPair,
    /// The release the tests tamper with, and its artifact file.
    subject: (String, String),
    artifact: PathBuf,
    original: Vec<u8>,
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Sql,
    Marketplace,
}

async fn bed(kind: Kind) -> Bed {
    let t = common::store().await;
    let key = KeyPair::from_seed("daemon", [9; 32]);
    let (registry, trust, subject, artifact) = match kind {
        Kind::Sql => {
            let sql = SqlRegistry::new(t.store.clone(), t.dir.path().join("artifacts"));
            let spec = GenerateSpec {
                packages: 30,
                publishers: 2,
                seed: 5,
                mean_dependencies: 0.0,
                ..GenerateSpec::default()
            };
            let g = generate::generate(&sql, &spec, NOW)
                .await
                .expect("generate");
            let r = sql
                .release("pkg-00007", "1.0.0")
                .await
                .expect("read")
                .expect("there");
            let artifact = sql
                .artifact_root
                .join(r.artifact.as_deref().expect("artifact"));
            (
                Managed::from(sql),
                g.trust,
                ("pkg-00007".to_string(), "1.0.0".to_string()),
                artifact,
            )
        }
        Kind::Marketplace => {
            let checkout = t.dir.path().join("checkout");
            mapek::registry::marketplace::generate::generate(&checkout, 30).expect("generate");
            let mut config = MarketplaceConfig::at(&checkout);
            config.watch = false;
            config.publish = Some(t.dir.path().join("www/index.json"));
            let m = Marketplace::new(
                SqlRegistry::new(t.store.clone(), t.dir.path()),
                config,
                Some(Arc::new(key.clone())),
            )
            .expect("marketplace");
            let name = mapek::registry::marketplace::generate::pack_name(7);
            let artifact = checkout.join(format!("dist/packs/{name}-1.0.0.tar.gz"));
            (
                Managed::from(m),
                TrustStore::default(),
                (name, "1.0.0".to_string()),
                artifact,
            )
        }
    };
    let original = std::fs::read(&artifact).expect("artifact");
    Bed {
        t,
        registry: Arc::new(registry),
        trust: Arc::new(trust),
        key,
        subject,
        artifact,
        original,
    }
}

impl Bed {
    fn tamper(&self) {
        let mut b = self.original.clone();
        b[40] ^= 0x10;
        std::fs::write(&self.artifact, b).expect("tamper");
    }

    fn restore(&self) {
        std::fs::write(&self.artifact, &self.original).expect("restore");
    }

    async fn quarantined(&self) -> bool {
        let (p, v) = &self.subject;
        self.registry
            .release(p, v)
            .await
            .expect("read")
            .expect("there")
            .quarantined
    }
}

/// The daemon's loop (every stage in every cycle), as every driver runs it.
struct Loop(mapek::cycle::Loop);

impl Loop {
    fn new() -> Self {
        Self(common::daemon_loop(false))
    }

    /// One cycle; `full` forces the monitor's full scan. (plans recorded, what execute did)
    async fn cycle(
        &mut self,
        b: &Bed,
        now: i64,
        full: bool,
        dry_run: bool,
    ) -> (usize, common::Recorded) {
        self.0.settings.full_scan_every_ms = if full { 1 } else { 3_600_000 };
        self.0.settings.dry_run = dry_run;
        let policies = default_policies();
        let ctx = mapek::cycle::Context {
            store: &b.t.store,
            registry: &b.registry,
            policies: &policies,
            trust: &b.trust,
            key: &b.key,
            now,
        };
        let mut r = common::Recorded::default();
        let step = self.0.step(&ctx, &mut r).await;
        assert!(step.failed.is_none(), "{:?}", step.failed);
        assert!(
            r.monitor.unreachable.is_none(),
            "{:?}",
            r.monitor.unreachable
        );
        (r.remediations.len(), r)
    }
}

async fn a_tampered_artifact_is_quarantined_once_and_a_quiet_cycle_plans_nothing(kind: Kind) {
    let b = bed(kind).await;
    let mut l = Loop::new();
    let (planned, _) = l.cycle(&b, NOW, true, false).await;
    assert_eq!(planned, 0, "{kind:?}: a sound registry");
    b.tamper();
    let (_, e) = l.cycle(&b, NOW + 60_000, true, false).await;
    let executed: Vec<_> = e
        .results
        .iter()
        .filter(|(_, o)| matches!(o, Outcome::Executed { changed: true }))
        .filter(|(r, _)| r.action != mapek::model::Action::Notify)
        .map(|(r, _)| r.subject.to_string())
        .collect();
    assert_eq!(
        executed,
        [format!("{}@{}", b.subject.0, b.subject.1)],
        "{kind:?}"
    );
    assert!(b.quarantined().await, "{kind:?}");
    let (planned, e) = l.cycle(&b, NOW + 120_000, false, false).await;
    assert_eq!((planned, e.results.len()), (0, 0), "{kind:?}: nothing new");
    assert!(verify_chain(
        &b.t.store.audit_entries().await.expect("audit"),
        &b.key.public()
    )
    .is_ok());
}

async fn a_dry_run_daemon_records_and_changes_nothing(kind: Kind) {
    let b = bed(kind).await;
    b.tamper();
    let mut l = Loop::new();
    let (planned, e) = l.cycle(&b, NOW, true, true).await;
    assert!(planned > 0, "{kind:?}");
    assert!(e.results.is_empty(), "{kind:?}");
    assert!(!b.quarantined().await, "{kind:?}");
    let dry =
        b.t.store
            .remediations_with_status(Status::DryRun)
            .await
            .expect("read");
    assert_eq!(dry.len(), 1, "{kind:?}");
}

/// A bed whose release was tampered with and quarantined by one cycle; the loop, and the one
/// executed remediation.
async fn quarantined(kind: Kind) -> (Bed, Loop, Vec<mapek::knowledge::remediations::Remediation>) {
    let b = bed(kind).await;
    let mut l = Loop::new();
    b.tamper();
    l.cycle(&b, NOW, true, false).await;
    let done =
        b.t.store
            .remediations_with_status(Status::Executed)
            .await
            .expect("read");
    assert_eq!(done.len(), 1, "{kind:?}");
    (b, l, done)
}

async fn a_rollback_undoes_once_and_a_restored_artifact_resolves(kind: Kind) {
    let (b, mut l, done) = quarantined(kind).await;
    let (r, outcome) = rollback(
        &b.t.store,
        &b.registry,
        &b.key,
        &done[0].id,
        "maint",
        NOW + 1,
    )
    .await
    .expect("rolled back");
    assert_eq!(outcome, Outcome::Executed { changed: true }, "{kind:?}");
    assert_eq!(r.action, mapek::model::Action::ReleaseQuarantine);
    assert!(!b.quarantined().await, "{kind:?}");
    assert!(
        rollback(
            &b.t.store,
            &b.registry,
            &b.key,
            &done[0].id,
            "maint",
            NOW + 2
        )
        .await
        .is_err(),
        "{kind:?}: not twice"
    );
    b.restore();
    l.cycle(&b, NOW + 60_000, true, false).await;
    let open = b.t.store.open_findings().await.expect("findings");
    assert!(open.is_empty(), "{kind:?}: {open:#?}");
    assert!(verify_chain(
        &b.t.store.audit_entries().await.expect("audit"),
        &b.key.public()
    )
    .is_ok());
}

/// `mapek rollback` against a running daemon: the daemon, woken by the recorded rollback, may
/// execute it first. The command then reports the daemon's outcome (not "another executor took
/// it") and returns only once the catalog users read has moved: here the other executor
/// applies the change without publishing, as a daemon between its commit and its publication.
async fn a_rollback_another_executor_takes_first_still_reports_and_publishes(kind: Kind) {
    let (b, _, done) = quarantined(kind).await;
    let published = b.t.dir.path().join("www/index.json");
    let withheld = || -> Vec<String> {
        let bytes = std::fs::read(&published).expect("the catalog was published");
        let doc: serde_json::Value = serde_json::from_slice(&bytes).expect("JSON");
        doc["withheld"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|w| w["name"].as_str().map(str::to_string))
            .collect()
    };
    if matches!(kind, Kind::Marketplace) {
        assert_eq!(
            withheld(),
            [b.subject.0.as_str()],
            "quarantined and published"
        );
    }
    let r = record(&b.t.store, &b.key, &done[0].id, "maint", NOW + 1)
        .await
        .expect("recorded");
    // The other executor: the same store, applying without publishing anything.
    let other = Arc::new(SqlRegistry::new(b.t.store.clone(), b.t.dir.path()));
    let e = mapek::execute::cycle(&b.t.store, &other, &b.key, NOW + 2)
        .await
        .expect("the other executor");
    assert_eq!(e.results.len(), 1, "{kind:?}: it took the rollback");
    let outcome = finish(&b.t.store, &b.registry, &b.key, &r, NOW + 3)
        .await
        .expect("finished");
    assert_eq!(outcome, Outcome::Executed { changed: true }, "{kind:?}");
    assert!(!b.quarantined().await, "{kind:?}");
    if matches!(kind, Kind::Marketplace) {
        assert!(
            withheld().is_empty(),
            "published when the rollback returned"
        );
    }
    let entries = b.t.store.audit_entries().await.expect("audit");
    let executed = entries
        .iter()
        .filter(|e| e.kind == "remediation.executed" && e.remediation_id.as_deref() == Some(&r.id))
        .count();
    assert_eq!(executed, 1, "{kind:?}: executed once");
    assert!(verify_chain(&entries, &b.key.public()).is_ok());
}

#[tokio::test]
async fn sql_a_rollback_another_executor_takes_first_still_reports_and_publishes() {
    a_rollback_another_executor_takes_first_still_reports_and_publishes(Kind::Sql).await
}

#[tokio::test]
async fn marketplace_a_rollback_another_executor_takes_first_still_reports_and_publishes() {
    a_rollback_another_executor_takes_first_still_reports_and_publishes(Kind::Marketplace).await
}

#[tokio::test]
async fn sql_a_tampered_artifact_is_quarantined_once_and_a_quiet_cycle_plans_nothing() {
    a_tampered_artifact_is_quarantined_once_and_a_quiet_cycle_plans_nothing(Kind::Sql).await
}

#[tokio::test]
async fn marketplace_a_tampered_artifact_is_quarantined_once_and_a_quiet_cycle_plans_nothing() {
    a_tampered_artifact_is_quarantined_once_and_a_quiet_cycle_plans_nothing(Kind::Marketplace).await
}

#[tokio::test]
async fn sql_a_dry_run_daemon_records_and_changes_nothing() {
    a_dry_run_daemon_records_and_changes_nothing(Kind::Sql).await
}

#[tokio::test]
async fn marketplace_a_dry_run_daemon_records_and_changes_nothing() {
    a_dry_run_daemon_records_and_changes_nothing(Kind::Marketplace).await
}

#[tokio::test]
async fn sql_a_rollback_undoes_once_and_a_restored_artifact_resolves() {
    a_rollback_undoes_once_and_a_restored_artifact_resolves(Kind::Sql).await
}

#[tokio::test]
async fn marketplace_a_rollback_undoes_once_and_a_restored_artifact_resolves() {
    a_rollback_undoes_once_and_a_restored_artifact_resolves(Kind::Marketplace).await
}

/// The plan of `sql` (with `params` bound) as the store explains it, one line per step; on
/// PostgreSQL with sequential scans off, as tables this small would be scanned whole anyway.
async fn plan(
    store: &mapek::knowledge::Store,
    sql: &str,
    params: &[&str],
    ordered: bool,
) -> Vec<String> {
    use sqlx::{Executor as _, Row as _};
    let postgres = store.backend == mapek::knowledge::Backend::Postgres;
    let mut tx = store.begin().await.expect("begin");
    if postgres {
        // Tables this small would be scanned (and sorted) whole whatever the indexes: ask for
        // the plan the indexes allow (costs added, not prohibitions). `ordered`: a plan that
        // reads in order from an index rather than sorting, where one exists.
        tx.execute("SET LOCAL enable_seqscan = off")
            .await
            .expect("seqscan off");
        if ordered {
            tx.execute("SET LOCAL enable_sort = off")
                .await
                .expect("sort off");
        }
    }
    let explain = if postgres {
        format!("EXPLAIN {sql}")
    } else {
        format!("EXPLAIN QUERY PLAN {sql}")
    };
    let mut q = sqlx::query(sqlx::AssertSqlSafe(explain));
    for p in params {
        q = match p.parse::<i64>() {
            Ok(n) => q.bind(n),
            Err(_) => q.bind(p.to_string()),
        };
    }
    let rows = tx.fetch_all(q).await.expect("explain");
    rows.iter()
        .map(|r| {
            r.try_get::<String, _>(if postgres { 0 } else { 3 })
                .expect("plan line")
        })
        .collect()
}

/// The statements a cycle makes against the registry at every size use their indexes: the page
/// of changed releases, each release's dependencies (the dependency table's primary key), the
/// packages changed since the facts were built (the change sequence's index, not the name's).
#[tokio::test]
async fn the_hot_statements_of_a_cycle_use_their_indexes() {
    let t = common::store().await;
    let backend = t.store.backend;
    let page = plan(
        &t.store,
        mapek::registry::release_page_sql(backend, false),
        &["5", "6", "", "", "20000"],
        false,
    )
    .await;
    let full = plan(
        &t.store,
        mapek::registry::release_page_sql(backend, true),
        &["a-pack", "1.0.0", "20000"],
        true,
    )
    .await;
    let since = plan(
        &t.store,
        &format!("SELECT name FROM {}", mapek::registry::PACKAGES_SINCE),
        &["5"],
        false,
    )
    .await;
    println!("page of releases: {page:#?}\nfull read: {full:#?}\npackages since: {since:#?}");
    let uses = |plan: &[String], index: &str| plan.iter().any(|l| l.contains(index));
    let (releases_seq, releases_key, dependencies_key, packages_seq) = match backend {
        mapek::knowledge::Backend::Sqlite => (
            "releases_change_seq",
            "sqlite_autoindex_releases_1",
            "sqlite_autoindex_dependencies_1",
            "packages_change_seq",
        ),
        mapek::knowledge::Backend::Postgres => (
            "releases_change_seq",
            "releases_pkey",
            "dependencies_pkey",
            "packages_change_seq",
        ),
    };
    assert!(uses(&page, releases_seq), "{page:#?}");
    assert!(uses(&page, dependencies_key), "{page:#?}");
    // A full read walks the primary key from where the last page ended, never a sort of all.
    assert!(uses(&full, releases_key), "{full:#?}");
    assert!(!uses(&full, releases_seq), "{full:#?}");
    let sorts = |l: &String| l.contains("TEMP B-TREE FOR ORDER BY") || l.contains("Sort Key");
    assert!(!full.iter().any(sorts), "{full:#?}");
    assert!(uses(&full, dependencies_key), "{full:#?}");
    assert!(uses(&since, packages_seq), "{since:#?}");
}
