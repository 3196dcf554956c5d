//! The soak (ignored by default; docs/reliability.md): the daemon SIGKILLed at random moments while it executes thousands of remediations, PostgreSQL cut away from a running daemon, leaders killed one after another; after every trial nothing is half applied or applied twice and the audit verifies. Prints the table of trials, failures and times.
//!
//! ```sh
//! cargo test --release --test soak -- --ignored --nocapture --test-threads 1
//! MAPEK_TEST_DATABASE_URL=postgres://postgres@127.0.0.1:5432/test \
//!   cargo test --release --test soak -- --ignored --nocapture --test-threads 1
//! ```
//!
//! `MAPEK_TEST_SOAK_KILLS` (200), `MAPEK_TEST_SOAK_OUTAGES` (10), `MAPEK_TEST_SOAK_LEADER_KILLS` (100) and
//! `MAPEK_TEST_SOAK_PACKAGES` (10000) and `MAPEK_TEST_SOAK_WAITING` (tampered releases waiting at
//! each kill, 200) change the counts; `MAPEK_TEST_SOAK_SEED` repeats a run's moments.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use mapek::knowledge::{Backend, Store};
use mapek::registry::SqlRegistry;
use sqlx::Row as _;

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// xorshift64: the trials' random moments, repeatable from the seed the soak prints.
struct Rng(u64);

impl Rng {
    fn from_env(what: &str) -> Self {
        let seed = std::env::var("MAPEK_TEST_SOAK_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            })
            .max(1);
        eprintln!("{what}: seed {seed} (MAPEK_TEST_SOAK_SEED={seed} repeats these moments)");
        Self(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }

    /// A duration between `lo` and `hi` milliseconds.
    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }
}

/// One line of the table: what was tried, how often, what went wrong, what was measured.
struct Line {
    tried: String,
    trials: u64,
    failures: Vec<String>,
    figures: String,
}

/// Prints the table (the one docs/reliability.md shows) and fails on any failure, naming each.
fn report(lines: &[Line]) {
    let mut out =
        String::from("\n| tried | trials | failures | measured |\n| --- | --- | --- | --- |\n");
    for l in lines {
        out.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            l.tried,
            l.trials,
            l.failures.len(),
            l.figures
        ));
    }
    eprintln!("{out}");
    let failures: Vec<&String> = lines.iter().flat_map(|l| &l.failures).collect();
    assert!(failures.is_empty(), "{out}\nfailures:\n{failures:#?}");
}

/// "median 1.2 s, max 3.4 s" of `times`.
fn spread(times: &mut [Duration]) -> String {
    if times.is_empty() {
        return "none".into();
    }
    times.sort_unstable();
    format!(
        "median {:.2} s, max {:.2} s",
        times[times.len() / 2].as_secs_f64(),
        times[times.len() - 1].as_secs_f64()
    )
}

fn mapek(config: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mapek"));
    c.args(["--config", &config.display().to_string()])
        .env("MAPEK_LOG", "warn")
        .env_remove("NOTIFY_SOCKET")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}

/// Opens the guards so that every tampered release may be quarantined without approval, and
/// without tripping the circuit (`max_actions_per_cycle` opens it; it does not pace).
fn open_guards(demo: &Path) {
    common::edit_policies(
        demo,
        &[
            (
                "guards.toml",
                "max_registry_fraction_per_day = 0.02",
                "max_registry_fraction_per_day = 1.0",
            ),
            (
                "guards.toml",
                "max_actions_per_hour = 200",
                "max_actions_per_hour = 1000000",
            ),
            (
                "guards.toml",
                "max_actions_per_cycle = 50",
                "max_actions_per_cycle = 100000",
            ),
            (
                "integrity.toml",
                "max_per_hour = 50",
                "max_per_hour = 1000000",
            ),
            (
                "integrity.toml",
                "max_blast_radius = 100 ",
                "max_blast_radius = 1000000 ",
            ),
        ],
    );
}

/// Every release of the registry, in name order: the order they are tampered with.
async fn releases(store: &Store) -> Vec<(String, String)> {
    sqlx::query("SELECT package, version FROM releases ORDER BY package, version")
        .fetch_all(store.raw_pool())
        .await
        .expect("releases")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

async fn quarantined(store: &Store) -> u64 {
    sqlx::query("SELECT COUNT(*) FROM releases WHERE quarantined = 1")
        .fetch_one(store.raw_pool())
        .await
        .expect("count")
        .get::<i64, _>(0) as u64
}

/// Remediations written as intents whose outcome is not recorded yet.
async fn executing(store: &Store) -> i64 {
    sqlx::query("SELECT COUNT(*) FROM remediations WHERE status = 'executing'")
        .fetch_one(store.raw_pool())
        .await
        .expect("count")
        .get::<i64, _>(0)
}

/// What is wrong with the store after a fault, read in one statement (one snapshot, with the
/// executed quarantines grouped once: a correlated subquery per release made each check
/// quadratic, minutes a check after thousands of quarantines): a release
/// quarantined without its executed remediation or a quarantine executed on a release that is
/// not quarantined (half applied), a release quarantined twice, a remediation audited as
/// executed twice, an audit chain that does not verify.
async fn problems(store: &Store, config: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let half = sqlx::query(
        "WITH q AS (SELECT package, version, COUNT(*) AS n FROM remediations \
         WHERE action = 'quarantine' AND status = 'executed' GROUP BY package, version) \
         SELECT r.package, r.version, 'quarantined without an executed remediation' \
         FROM releases r LEFT JOIN q ON q.package = r.package AND q.version = r.version \
         WHERE r.quarantined = 1 AND q.package IS NULL \
         UNION ALL \
         SELECT q.package, q.version, 'an executed quarantine, the release not quarantined' \
         FROM q JOIN releases r ON r.package = q.package AND r.version = q.version \
         WHERE r.quarantined = 0 \
         UNION ALL \
         SELECT package, version, 'quarantined by more than one remediation' FROM q WHERE n > 1",
    )
    .fetch_all(store.raw_pool())
    .await
    .expect("the consistency query");
    for r in half.iter().take(5) {
        out.push(format!(
            "{}@{}: {}",
            r.get::<String, _>(0),
            r.get::<String, _>(1),
            r.get::<String, _>(2)
        ));
    }
    for (id, n) in common::executed_twice(store).await {
        out.push(format!("{id} audited as executed {n} times"));
    }
    let verified = mapek(config)
        .args(["audit", "verify"])
        .stderr(Stdio::piped())
        .output()
        .expect("audit verify");
    if !verified.status.success() {
        out.push(format!(
            "audit verify: {}",
            String::from_utf8_lossy(&verified.stderr).trim()
        ));
    }
    out
}

/// When a trial's SIGKILL lands.
enum Moment {
    /// This long after the start.
    After(Duration),
    /// This long after the run's first intents (or, when polling missed them, its first
    /// outcomes) are seen: more than `.0` releases quarantined is an outcome.
    Intents(u64, Duration),
    /// This long after more than `.0` releases are quarantined.
    Outcomes(u64, Duration),
}

impl Moment {
    /// Waits for the moment (ten seconds at most: a run with nothing left to do is killed then).
    async fn wait(&self, store: &Store) {
        let limit = Instant::now() + Duration::from_secs(10);
        let (intents, n, after) = match self {
            Moment::After(d) => return tokio::time::sleep(*d).await,
            Moment::Intents(n, d) => (true, *n, *d),
            Moment::Outcomes(n, d) => (false, *n, *d),
        };
        while Instant::now() < limit {
            if (intents && executing(store).await > 0) || quarantined(store).await > n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        tokio::time::sleep(after).await;
    }
}

/// Waits until `n` releases are quarantined; the time it took, or `None` after `limit`.
async fn until_quarantined(store: &Store, n: u64, limit: Duration) -> Option<Duration> {
    let at = Instant::now();
    while quarantined(store).await < n {
        if at.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Some(at.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a soak of minutes: cargo test --release --test soak -- --ignored --nocapture"]
async fn sigkill_at_random_moments_during_execution() {
    let kills = setting("MAPEK_TEST_SOAK_KILLS", 200);
    let packages = setting("MAPEK_TEST_SOAK_PACKAGES", 10000) as usize;
    let waiting = setting("MAPEK_TEST_SOAK_WAITING", 200);
    let mut rng = Rng::from_env("SIGKILL");
    let t = common::store().await;
    let demo = common::sized_demo(t.dir.path(), &t.url, packages).await;
    open_guards(&demo);
    let config = common::demo_config(
        &t.dir.path().join("soak.toml"),
        &demo,
        &t.url,
        "interval = \"200ms\"\nfull_scan_interval = \"1s\"\nlease_ttl = \"1s\"\n",
    );
    let registry = SqlRegistry::new(t.store.clone(), demo.join("artifacts"));
    let all = releases(&t.store).await;
    let mut tampered = 0usize;
    let mut failures = Vec::new();
    let mut applied = Vec::new();
    // Kills that cut a batch between its intents and their outcomes, and kills before any action.
    let (mut mid_batch, mut before_any) = (0, 0);
    for trial in 0..kills {
        // Keep `waiting` tampered releases waiting, so that every run has work to do.
        let before = quarantined(&t.store).await;
        while tampered < all.len() && (tampered as u64) < before + waiting {
            let (package, version) = &all[tampered];
            common::tamper_release(&registry, package, version).await;
            tampered += 1;
        }
        let mut daemon = common::Daemon(
            mapek(&config)
                .arg("run")
                .spawn()
                .expect("the daemon starts"),
        );
        // A third of the kills at a random moment of start-up (the first full scan verifies
        // every signature); a third once the batch's intents are written; a third once its
        // first outcomes are: executing a batch takes milliseconds against seconds of start-up,
        // so a kill by time alone would rarely cut one.
        let started = Instant::now();
        let moment = match trial % 3 {
            0 => Moment::After(rng.millis(300, 3000)),
            1 => Moment::Intents(before, rng.millis(0, 30)),
            _ => Moment::Outcomes(before, rng.millis(0, 100)),
        };
        moment.wait(&t.store).await;
        let delay = started.elapsed();
        daemon.kill().expect("SIGKILL");
        let _ = daemon.wait();
        let after = quarantined(&t.store).await;
        applied.push(after - before);
        if executing(&t.store).await > 0 {
            mid_batch += 1;
        } else if after == before {
            before_any += 1;
        }
        for p in problems(&t.store, &config).await {
            failures.push(format!("kill {trial} after {delay:?}: {p}"));
        }
        if trial % 20 == 19 {
            eprintln!(
                "{} kills: {after} quarantined of {tampered} tampered, {mid_batch} cut a batch, {} failures",
                trial + 1,
                failures.len()
            );
        }
    }
    // A last daemon finishes what is left, and is stopped as systemd stops it.
    let daemon = common::Daemon(
        mapek(&config)
            .arg("run")
            .spawn()
            .expect("the daemon starts"),
    );
    let last = until_quarantined(&t.store, tampered as u64, Duration::from_secs(600)).await;
    daemon.stop();
    if last.is_none() {
        failures.push(format!(
            "the last run did not quarantine all {tampered} tampered releases: {} are",
            quarantined(&t.store).await
        ));
    }
    let left = executing(&t.store).await;
    if left > 0 {
        failures.push(format!("{left} intents left without an outcome"));
    }
    for p in problems(&t.store, &config).await {
        failures.push(format!("at the end: {p}"));
    }
    applied.sort_unstable();
    let store = match t.store.backend {
        Backend::Postgres => "PostgreSQL",
        _ => "SQLite",
    };
    report(&[Line {
        tried: format!(
            "SIGKILL during start-up, amid a batch's intents or amid its outcomes, {packages} packages, {waiting} tampered releases waiting ({store})"
        ),
        trials: kills,
        failures,
        figures: format!(
            "{tampered} quarantines, each executed once; {mid_batch} kills cut a batch between its \
             intents and their outcomes, {before_any} came before any action; quarantines a run: \
             median {}, max {}; the rest finished in {}",
            applied[applied.len() / 2],
            applied[applied.len() - 1],
            last.map_or("-".into(), |d| format!("{:.1} s", d.as_secs_f64()))
        ),
    }]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a soak of minutes: cargo test --release --test soak -- --ignored --nocapture"]
async fn postgresql_cut_away_from_a_running_daemon() {
    if std::env::var("MAPEK_TEST_DATABASE_URL").map_or(true, |u| u.is_empty()) {
        common::skip(
            "PostgreSQL outages",
            "on SQLite (set MAPEK_TEST_DATABASE_URL to cut PostgreSQL away)",
        );
        return;
    }
    let outages = setting("MAPEK_TEST_SOAK_OUTAGES", 10);
    let mut rng = Rng::from_env("PostgreSQL outages");
    let t = common::store().await;
    let demo = common::sized_demo(t.dir.path(), &t.url, 1000).await;
    open_guards(&demo);
    let proxy = common::proxy::proxy("127.0.0.1:5432").await;
    let (_, db) = t.url.rsplit_once('/').expect("database name");
    let through = format!("postgres://postgres@127.0.0.1:{}/{db}", proxy.port);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let config = common::demo_config(
        &t.dir.path().join("soak.toml"),
        &demo,
        &through,
        &format!(
            "interval = \"200ms\"\nfull_scan_interval = \"1s\"\nlease_ttl = \"3s\"\nlisten = \"127.0.0.1:{port}\"\n"
        ),
    );
    let registry = SqlRegistry::new(t.store.clone(), demo.join("artifacts"));
    let all = releases(&t.store).await;
    let mut daemon = common::Daemon(common::replica(&config));
    let ready = |code: u16, limit: Duration| async move {
        let at = Instant::now();
        loop {
            let answer = tokio::task::spawn_blocking(move || common::readyz(port))
                .await
                .expect("probe");
            if answer.0 == code {
                return Some(at.elapsed());
            }
            if at.elapsed() > limit {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let mut failures = Vec::new();
    if ready(200, Duration::from_secs(30)).await.is_none() {
        failures.push("the daemon was never ready".to_string());
    }
    let (mut noticed, mut recovered, mut caught_up) = (Vec::new(), Vec::new(), Vec::new());
    let mut tampered = 0usize;
    // Cuts that came before the daemon had quarantined all it was given.
    let mut before_done = 0;
    for trial in 0..outages {
        // Work for the daemon, then the cut at a random moment of it.
        for _ in 0..100 {
            if let Some((package, version)) = all.get(tampered) {
                common::tamper_release(&registry, package, version).await;
                tampered += 1;
            }
        }
        tokio::time::sleep(rng.millis(0, 1500)).await;
        if quarantined(&t.store).await < tampered as u64 {
            before_done += 1;
        }
        proxy.up.send_replace(false);
        let cut = Instant::now();
        match ready(503, Duration::from_secs(5)).await {
            Some(d) => noticed.push(d),
            None => failures.push(format!("outage {trial}: /readyz never said 503")),
        }
        let down = rng.millis(2000, 8000);
        tokio::time::sleep(down.saturating_sub(cut.elapsed())).await;
        proxy.up.send_replace(true);
        let healed = Instant::now();
        match ready(200, Duration::from_secs(30)).await {
            Some(d) => recovered.push(d),
            None => failures.push(format!(
                "outage {trial}: not ready 30 s after the store returned"
            )),
        }
        match until_quarantined(&t.store, tampered as u64, Duration::from_secs(60)).await {
            Some(_) => caught_up.push(healed.elapsed()),
            None => failures.push(format!(
                "outage {trial}: {} of {tampered} quarantined a minute after the store returned",
                quarantined(&t.store).await
            )),
        }
        if let Ok(Some(status)) = daemon.try_wait() {
            failures.push(format!("outage {trial}: the daemon exited ({status})"));
            break;
        }
        for p in problems(&t.store, &config).await {
            failures.push(format!("outage {trial} ({down:?}): {p}"));
        }
    }
    daemon.stop();
    report(&[Line {
        tried: "PostgreSQL cut away (every connection closed, new ones refused) for 2-8 s, 0-1.5 s after 100 releases were tampered with".into(),
        trials: outages,
        failures,
        figures: format!(
            "/readyz 503 after the cut: {}; ready again after the store returned: {}; all tampered quarantined after it returned: {}; {before_done} cuts came before the work given was done; one daemon process throughout",
            spread(&mut noticed),
            spread(&mut recovered),
            spread(&mut caught_up)
        ),
    }]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a soak of minutes: cargo test --release --test soak -- --ignored --nocapture"]
async fn leaders_killed_one_after_another() {
    if std::env::var("MAPEK_TEST_DATABASE_URL").map_or(true, |u| u.is_empty()) {
        common::skip(
            "leader kills",
            "on SQLite (one replica there; set MAPEK_TEST_DATABASE_URL)",
        );
        return;
    }
    let rounds = setting("MAPEK_TEST_SOAK_LEADER_KILLS", 100);
    let mut rng = Rng::from_env("leader kills");
    let t = common::store().await;
    let demo = common::sized_demo(t.dir.path(), &t.url, 1000).await;
    open_guards(&demo);
    let ttl = Duration::from_secs(3);
    let logs = t.dir.path().join("logs");
    std::fs::create_dir_all(&logs).expect("logs");
    let config = common::demo_config(
        &logs.join("replica.toml"),
        &demo,
        &t.url,
        &format!(
            "interval = \"300ms\"\nfull_scan_interval = \"1s\"\nlease_ttl = \"{}s\"\nshutdown_grace = \"5s\"\n",
            ttl.as_secs()
        ),
    );
    let registry = SqlRegistry::new(t.store.clone(), demo.join("artifacts"));
    let all = releases(&t.store).await;
    let mut replicas = vec![common::replica(&config), common::replica(&config)];
    let mut failures = Vec::new();
    let mut takeovers = Vec::new();
    let mut tampered = 0usize;
    for round in 0..rounds {
        let leader = common::wait_for_leader(&t.store, &replicas, None).await;
        // Work for the leader: three tampered releases, found at the next full scan; the kill
        // lands before, during or after it acts on them.
        for _ in 0..3 {
            if let Some((package, version)) = all.get(tampered) {
                common::tamper_release(&registry, package, version).await;
                tampered += 1;
            }
        }
        tokio::time::sleep(rng.millis(0, 2000)).await;
        let killed = replicas[leader].id();
        replicas[leader].kill().expect("SIGKILL");
        let _ = replicas[leader].wait();
        let at = Instant::now();
        replicas.push(common::replica(&config));
        common::wait_for_leader(&t.store, &replicas, Some(killed)).await;
        let took = at.elapsed();
        if took > ttl + Duration::from_millis(1500) {
            failures.push(format!(
                "round {round}: the standby took {took:?} to lead (lease {ttl:?})"
            ));
        }
        takeovers.push(took);
        // Two live replicas at a time: the dead are reaped, the rest keep running.
        replicas.retain_mut(|c| c.try_wait().map_or(true, |s| s.is_none()));
    }
    let last = until_quarantined(&t.store, tampered as u64, Duration::from_secs(120)).await;
    for r in replicas {
        common::Daemon(r).stop();
    }
    if last.is_none() {
        failures.push(format!(
            "{} of {tampered} tampered releases quarantined two minutes after the last kill",
            quarantined(&t.store).await
        ));
    }
    let tokens = common::term_tokens(&t.store).await;
    if !tokens.windows(2).all(|w| w[0] < w[1]) {
        failures.push(format!("fencing tokens do not only grow: {tokens:?}"));
    }
    for p in problems(&t.store, &config).await {
        failures.push(format!("at the end: {p}"));
    }
    report(&[Line {
        tried: format!(
            "the leader SIGKILLed 0-2 s after three releases were tampered with, lease {} s",
            ttl.as_secs()
        ),
        trials: rounds,
        failures,
        figures: format!(
            "standby leading after: {}; {tampered} quarantines, each once; {} terms, fencing tokens growing",
            spread(&mut takeovers),
            tokens.len()
        ),
    }]);
}
