//! Test support: a fresh store per test (a SQLite file, or a new PostgreSQL database when
//! `MAPEK_TEST_DATABASE_URL` is set), and a generated registry with planted problems.
#![allow(dead_code)]

pub mod proxy;

use sqlx::Connection;
use std::sync::Arc;

use mapek::keys::{KeyPair, TrustStore};
use mapek::knowledge::Store;
use mapek::registry::generate::{self, GenerateSpec};
use mapek::registry::{Registry, SqlRegistry};

pub const NOW: i64 = 1_795_000_000_000;

pub struct TestStore {
    pub store: Store,
    pub dir: tempfile::TempDir,
    pub url: String,
}

static SAID: std::sync::Once = std::sync::Once::new();

/// A store of the test's own. On PostgreSQL, a new database named after the test.
pub async fn store() -> TestStore {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = match std::env::var("MAPEK_TEST_DATABASE_URL") {
        Ok(base) if !base.is_empty() => {
            sqlx::any::install_default_drivers();
            let mut conn = sqlx::AnyConnection::connect(&base)
                .await
                .unwrap_or_else(|e| panic!("PostgreSQL at {base} is unreachable: {e}"));
            let mut bytes = [0u8; 8];
            getrandom::fill(&mut bytes).expect("random");
            let name = format!("mapek_test_{}", hex::encode(bytes));
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .execute(&mut conn)
                .await
                .expect("create test database");
            let (prefix, _) = base.rsplit_once('/').expect("database URL has a path");
            format!("{prefix}/{name}")
        }
        _ => {
            SAID.call_once(|| {
                skip_once(
                    "PostgreSQL",
                    "the suite runs on SQLite; set MAPEK_TEST_DATABASE_URL=postgres://postgres@127.0.0.1:5432/test to run it on PostgreSQL",
                );
            });
            dir.path().join("test.db").display().to_string()
        }
    };
    let store = Store::open(&url).await.expect("open store");
    TestStore { store, dir, url }
}

pub struct World {
    pub t: TestStore,
    pub registry: Arc<SqlRegistry>,
    pub trust: Arc<TrustStore>,
    pub publishers: Vec<KeyPair>,
    pub key: KeyPair,
}

/// A generated registry of `packages` packages, all sound.
pub async fn world(packages: usize) -> World {
    let t = store().await;
    let registry = Arc::new(SqlRegistry::new(
        t.store.clone(),
        t.dir.path().join("artifacts"),
    ));
    let spec = GenerateSpec {
        packages,
        publishers: 3,
        seed: 5,
        ..GenerateSpec::default()
    };
    let g = generate::generate(&registry, &spec, NOW)
        .await
        .expect("generate");
    World {
        t,
        registry,
        trust: Arc::new(g.trust),
        publishers: g.publishers,
        key: KeyPair::from_seed("daemon", [9; 32]),
    }
}

impl World {
    /// The file of a release's artifact (to tamper with it behind the registry's back).
    pub async fn artifact_path(&self, package: &str, version: &str) -> std::path::PathBuf {
        let r = self
            .registry
            .release(package, version)
            .await
            .unwrap()
            .unwrap();
        self.registry
            .artifact_root
            .join(r.artifact.as_deref().unwrap())
    }

    /// The kinds of the audit log's entries, in order.
    pub async fn audit_kinds(&self) -> Vec<String> {
        self.t
            .store
            .audit_entries()
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect()
    }

    /// Plants the demo's three problems on pkg-00002, pkg-00003 and pkg-00004 (release 1.0.0).
    pub async fn plant_problems(&self) {
        let r = self
            .registry
            .release("pkg-00002", "1.0.0")
            .await
            .unwrap()
            .unwrap();
        self.registry
            .tamper_artifact(r.artifact.as_deref().unwrap())
            .unwrap();
        let p = &self.publishers[3 % self.publishers.len()];
        self.registry
            .set_signature("pkg-00003", "1.0.0", &p.sign(b"other bytes"), &p.key_id)
            .await
            .unwrap();
        let rogue = KeyPair::from_seed("pub-rogue", [66; 32]);
        let r = self
            .registry
            .release("pkg-00004", "1.0.0")
            .await
            .unwrap()
            .unwrap();
        let bytes = self
            .registry
            .read_artifact(r.artifact.as_deref().unwrap())
            .unwrap();
        self.registry
            .set_signature("pkg-00004", "1.0.0", &rogue.sign(&bytes), "pub-rogue")
            .await
            .unwrap();
    }

    /// The daemon's shared runtime over this world, with the default rules and no intake.
    pub fn runtime(&self, policies: mapek::daemon::reload::PolicySource) -> mapek::daemon::Runtime {
        mapek::daemon::Runtime {
            store: self.t.store.clone(),
            registry: Arc::new(mapek::registry::Managed::from((*self.registry).clone())),
            key: self.key.clone(),
            policies,
            trust: self.trust.clone(),
            trust_path: None,
            clock: Arc::new(mapek::clock::SystemClock),
            metrics: Arc::new(mapek::daemon::metrics::Metrics::new().expect("metrics")),
            dry_run: false,
            full_scan_every: std::time::Duration::from_secs(3600),
            rules: Default::default(),
            retention: Default::default(),
            intake: None,
            learning: Default::default(),
            notifier: None,
            compaction: Default::default(),
            leadership: Arc::new(mapek::daemon::lead::Leadership::new(
                std::time::Duration::from_secs(15),
            )),
            admin_token: None,
            on_task_failure: Default::default(),
            fault: None,
            store_health: Default::default(),
            wake: Default::default(),
        }
    }

    /// (package, version) of every quarantined release.
    pub async fn quarantined(&self) -> Vec<(String, String)> {
        use sqlx::Row;
        sqlx::query(
            "SELECT package, version FROM releases WHERE quarantined = 1 ORDER BY package, version",
        )
        .fetch_all(self.t.store.raw_pool())
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
    }
}

pub fn default_policies() -> mapek::plan::policy::PolicySet {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    mapek::plan::policy::PolicySet::load_dir(&dir, Default::default())
        .expect("the default policies load")
}

/// One plan stage, as the daemon runs it (a fresh planner: no graph kept between calls).
pub async fn plan(
    w: &World,
    policies: &mapek::plan::policy::PolicySet,
    dry_run: bool,
    now: i64,
) -> mapek::plan::PlanOutput {
    let ctx = mapek::plan::PlanContext {
        policies,
        trust: &w.trust,
        key: &w.key,
        daemon_dry_run: dry_run,
        now,
        facts: None,
    };
    mapek::plan::Planner::default()
        .cycle(&w.t.store, &w.registry, ctx)
        .await
        .expect("the plan stage runs")
}

/// The demo's store, keys and policies under `dir/mapek-demo`, on `url`, after one cycle of
/// the real binary (which plants and quarantines its three problems).
pub fn prepare_demo(dir: &std::path::Path, url: &str) -> std::path::PathBuf {
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_mapek"))
        .args(["--demo", "--database-url", url, "run", "--cycles", "1"])
        .current_dir(dir)
        .env("MAPEK_LOG", "warn")
        .env_remove("NOTIFY_SOCKET")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("the demo prepares");
    assert!(status.success(), "{status}");
    dir.join("mapek-demo")
}

/// Leaves the demo with the integrity policies and the guards alone: for tests that count the
/// quarantines of a batch, not the notices the rest of the library adds.
pub fn integrity_only(demo: &std::path::Path) {
    let dir = demo.join("policies");
    for entry in std::fs::read_dir(&dir).expect("the demo's policies") {
        let path = entry.expect("an entry").path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        if !matches!(
            name.as_deref(),
            Some("integrity.toml" | "integrity.test.toml" | "guards.toml")
        ) {
            std::fs::remove_file(&path).expect("remove a policy file");
        }
    }
}

/// Rewrites settings of the demo's policy files: (file, from, to), each `from` must be there.
pub fn edit_policies(demo: &std::path::Path, edits: &[(&str, &str, &str)]) {
    for (file, from, to) in edits {
        let path = demo.join("policies").join(file);
        let text = std::fs::read_to_string(&path).expect("policy file");
        assert!(text.contains(from), "{file}: {from}");
        std::fs::write(&path, text.replacen(from, to, 1)).expect("policy file");
    }
}

/// Changes the artifact bytes of `package`@1.0.0 behind the registry's back.
pub async fn tamper(registry: &SqlRegistry, package: &str) {
    tamper_release(registry, package, "1.0.0").await;
}

/// Changes the bytes of a release's artifact behind the registry's back.
pub async fn tamper_release(registry: &SqlRegistry, package: &str, version: &str) {
    let release = registry
        .release(package, version)
        .await
        .expect("release")
        .expect("the registry has it");
    registry
        .tamper_artifact(release.artifact.as_deref().expect("an artifact file"))
        .expect("tamper");
}

/// A daemon process of a test, killed when the test ends however it ends: a failed assertion
/// must not leave a daemon running that holds the test runner's output open.
pub struct Daemon(pub std::process::Child);

impl Daemon {
    /// Stops the daemon with SIGTERM, as systemd does, and waits for it to exit.
    pub fn stop(mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl std::ops::Deref for Daemon {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Daemon {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

/// A writable copy of the fixture marketplace, or None (said once) when `../shared` is missing.
pub fn fixture_copy(into: &std::path::Path) -> Option<std::path::PathBuf> {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/fixtures/ggen-marketplace");
    if !src.join("packs").is_dir() {
        assert!(
            std::env::var("CI").is_err(),
            "CI needs ../shared/fixtures/ggen-marketplace"
        );
        skip(
            "ggen-marketplace fixture tests",
            &format!("{} is missing (the shared fixtures)", src.display()),
        );
        return None;
    }
    let dst = into.join("checkout");
    copy_dir(&src, &dst);
    Some(dst)
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read dir") {
        let e = e.expect("entry");
        let target = to.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).expect("copy");
            let mut perms = std::fs::metadata(&target).expect("meta").permissions();
            #[allow(clippy::permissions_set_readonly_false)]
            perms.set_readonly(false);
            std::fs::set_permissions(&target, perms).expect("chmod");
        }
    }
}

pub fn fixture_catalog(checkout: &std::path::Path) -> Vec<u8> {
    std::fs::read(checkout.join("dist/site/index.json")).expect("fixture catalog")
}

/// The daemon's loop as it runs it (every stage in every cycle), on the default rules.
pub fn daemon_loop(dry_run: bool) -> mapek::cycle::Loop {
    mapek::cycle::Loop::new(
        Default::default(),
        mapek::cycle::Settings {
            dry_run,
            schedule: mapek::cycle::Schedule::EveryCycle,
            ..Default::default()
        },
    )
}

/// What one cycle's stages did, as a test reads it.
#[derive(Default)]
pub struct Recorded {
    pub monitor: mapek::monitor::MonitorOutput,
    /// The findings that started firing in analysis.
    pub fired: Vec<mapek::knowledge::findings::Finding>,
    pub remediations: Vec<mapek::knowledge::remediations::Remediation>,
    pub results: Vec<(
        mapek::knowledge::remediations::Remediation,
        mapek::execute::Outcome,
    )>,
}

impl mapek::cycle::Observer for Recorded {
    fn monitored(&mut self, out: &mapek::monitor::MonitorOutput, _: std::time::Duration) {
        self.monitor = out.clone();
    }
    fn analyzed(&mut self, out: &mapek::analyze::AnalyzeOutput, _: std::time::Duration) {
        self.fired.extend(out.fired.iter().cloned());
    }
    fn planned(&mut self, out: &mapek::plan::PlanOutput, _: std::time::Duration) {
        self.remediations.extend(out.remediations.iter().cloned());
    }
    fn executed(&mut self, out: &mapek::execute::ExecuteOutput, _: std::time::Duration) {
        self.results.extend(out.results.iter().cloned());
    }
}

/// One cycle of `l` over the world, with the shipped policies, at `now`.
pub async fn step(w: &World, l: &mut mapek::cycle::Loop, now: i64) -> Recorded {
    let policies = default_policies();
    let ctx = mapek::cycle::Context {
        store: &w.t.store,
        registry: &w.registry,
        policies: &policies,
        trust: &w.trust,
        key: &w.key,
        now,
    };
    let mut r = Recorded::default();
    let step = l.step(&ctx, &mut r).await;
    assert!(step.failed.is_none(), "{:?}", step.failed);
    r
}

/// The real ggen registry data in `../shared/fixtures/ggen`, or None (said once per test) when
/// it is missing outside CI; in CI it must be there.
pub fn ggen_fixtures() -> Option<std::path::PathBuf> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/ggen");
    if dir.join("registry-index.json").is_file() {
        return Some(dir);
    }
    assert!(std::env::var("CI").is_err(), "CI needs {}", dir.display());
    skip(
        "ggen fixture tests",
        &format!("{} is missing (the shared fixtures)", dir.display()),
    );
    None
}

/// Says that a test skipped something, and why, on the real stderr: the test harness captures
/// `eprintln!` of passing tests, so a skip said that way is never seen. Each line starts with
/// `SKIPPED`; `.ci/run` counts them beside the passed tests.
pub fn skip(what: &str, why: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "SKIPPED {what}: {why}");
}

/// [`skip`], once per `cargo test` run however many test binaries say it (a marker file named
/// after cargo's process, the binaries' parent).
pub fn skip_once(what: &str, why: &str) {
    let marker = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "skip-{}-{}",
        what.replace(|c: char| !c.is_ascii_alphanumeric(), "_"),
        std::os::unix::process::parent_id()
    ));
    if std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&marker)
        .is_ok()
    {
        skip(what, why);
    }
}

/// Executed quarantines of `package` (any of its releases).
pub async fn executed_quarantines(store: &mapek::knowledge::Store, package: &str) -> i64 {
    use sqlx::Row as _;
    sqlx::query(
        "SELECT COUNT(*) FROM remediations WHERE package = $1 AND action = 'quarantine' AND status = 'executed'",
    )
    .bind(package.to_string())
    .fetch_one(store.raw_pool())
    .await
    .expect("count")
    .get(0)
}

/// Remediations the audit log says were executed more than once, with how often.
pub async fn executed_twice(store: &mapek::knowledge::Store) -> Vec<(String, i64)> {
    use sqlx::Row as _;
    sqlx::query(
        "SELECT remediation_id, COUNT(*) FROM audit_log WHERE kind = 'remediation.executed' \
         GROUP BY remediation_id HAVING COUNT(*) > 1",
    )
    .fetch_all(store.raw_pool())
    .await
    .expect("audit")
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

/// The fencing tokens of the leaders' terms, in the audit log's order.
pub async fn term_tokens(store: &mapek::knowledge::Store) -> Vec<i64> {
    store
        .audit_entries()
        .await
        .expect("audit")
        .iter()
        .filter(|e| e.kind == "leader.acquired")
        .filter_map(|e| serde_json::from_str::<serde_json::Value>(&e.detail).ok())
        .filter_map(|d| d["token"].as_i64())
        .collect()
}

/// Writes a daemon configuration at `path` for the demo's files at `demo` and the store at
/// `url`, with `extra` lines (interval, lease, listener, ...) after them.
pub fn demo_config(
    path: &std::path::Path,
    demo: &std::path::Path,
    url: &str,
    extra: &str,
) -> std::path::PathBuf {
    std::fs::write(
        path,
        format!(
            "database_url = \"{url}\"\npolicies = \"{0}/policies\"\ntrusted_keys = \"{0}/trusted-keys.toml\"\n\
             key_file = \"{0}/daemon.key\"\nartifact_root = \"{0}/artifacts\"\n{extra}",
            demo.display()
        ),
    )
    .expect("config");
    path.to_path_buf()
}

/// The pid in a lease holder's name (`host:pid:nonce`).
pub fn pid_of(holder: &str) -> Option<u32> {
    holder.split(':').nth(1)?.parse().ok()
}

/// A demo-like folder at `dir` (keys, a trust store, the integrity and guard policies) over a
/// generated registry of `packages` packages in the store at `url`, with nothing planted: for
/// tests that need more work than the demo's 300 packages give.
pub async fn sized_demo(dir: &std::path::Path, url: &str, packages: usize) -> std::path::PathBuf {
    let demo = dir.join("demo");
    let policies = demo.join("policies");
    std::fs::create_dir_all(&policies).expect("the demo folder");
    let store = Store::open(url).await.expect("open store");
    let registry = SqlRegistry::new(store.clone(), demo.join("artifacts"));
    let spec = GenerateSpec {
        packages,
        publishers: 5,
        seed: 42,
        shard_artifacts: true,
        ..GenerateSpec::default()
    };
    let generated = generate::generate(&registry, &spec, NOW)
        .await
        .expect("generate the registry");
    std::fs::write(demo.join("trusted-keys.toml"), generated.trust.to_toml()).expect("trust");
    KeyPair::generate("daemon")
        .expect("a key")
        .save(&demo)
        .expect("the daemon key");
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    for file in ["integrity.toml", "guards.toml"] {
        std::fs::copy(shipped.join(file), policies.join(file)).expect("a shipped policy");
    }
    store.close().await;
    demo
}

/// `GET /readyz` on the daemon listening at `port`: the status code (0 when nothing answered
/// within three seconds) and the whole answer.
pub fn readyz(port: u16) -> (u16, String) {
    use std::io::{Read as _, Write as _};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return (0, String::new());
    };
    let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(3)));
    let _ = s.write_all(b"GET /readyz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, out)
}

/// Starts a replica of the daemon on `config`; its log goes to `replica-N.log` beside the
/// configuration (or in `MAPEK_TEST_LOGS=DIR`, kept there for a failure to be read).
pub fn replica(config: &std::path::Path) -> std::process::Child {
    let dir = std::env::var("MAPEK_TEST_LOGS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| config.parent().expect("config dir").to_path_buf());
    let n = std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0);
    replica_logged(config, &dir.join(format!("replica-{n}.log")))
}

/// Starts a replica of the daemon on `config`, logging at `info` to `log`.
pub fn replica_logged(config: &std::path::Path, log: &std::path::Path) -> std::process::Child {
    let log = std::fs::File::create(log).expect("log file");
    std::process::Command::new(env!("CARGO_BIN_EXE_mapek"))
        .args(["--config", &config.display().to_string(), "run"])
        .env("MAPEK_LOG", "info,sqlx=warn")
        .env_remove("NOTIFY_SOCKET")
        .stdout(log.try_clone().expect("log file"))
        .stderr(log)
        .spawn()
        .expect("a replica starts")
}

/// Waits (30 s at most) for a live holder of the leader's lease that is one of `replicas` and
/// not the process `not`; returns its index.
pub async fn wait_for_leader(
    store: &Store,
    replicas: &[std::process::Child],
    not: Option<u32>,
) -> usize {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if let Some(h) = store
            .lease(mapek::knowledge::lease::LEADER)
            .await
            .expect("lease")
        {
            let pid = pid_of(&h.holder);
            if pid != not {
                if let Some(i) = replicas.iter().position(|c| Some(c.id()) == pid) {
                    return i;
                }
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no replica took the lease"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
