//! High availability with real processes: replicas on one PostgreSQL share a leader's lease, a killed leader's standby takes over within the lease period, nothing is applied twice; on SQLite a second replica refuses to start.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mapek::knowledge::lease::LEADER;
use mapek::registry::SqlRegistry;

const TTL: Duration = Duration::from_secs(3);

fn mapek() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mapek"));
    c.env("MAPEK_LOG", "warn")
        .env_remove("NOTIFY_SOCKET")
        .stdout(Stdio::null());
    c
}

/// A replica's configuration: the demo's files, a short interval, a short lease, no listener.
fn write_config(dir: &Path, demo: &Path, url: &str) -> PathBuf {
    let extra = format!(
        "interval = \"300ms\"\nfull_scan_interval = \"1s\"\nlease_ttl = \"{}s\"\nshutdown_grace = \"5s\"\n",
        TTL.as_secs()
    );
    common::demo_config(&dir.join("replica.toml"), demo, url, &extra)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_is_replaced_within_the_lease_period_and_nothing_is_applied_twice() {
    if std::env::var("MAPEK_TEST_DATABASE_URL").map_or(true, |u| u.is_empty()) {
        common::skip("high availability", "on SQLite (one replica there; set MAPEK_TEST_DATABASE_URL to run the failover test on PostgreSQL)");
        return;
    }
    let t = common::store().await;
    let dir = t.dir.path();
    let demo = common::prepare_demo(dir, &t.url);
    // Every round tampers one more release: let the daily blast-radius guard allow them.
    common::edit_policies(
        &demo,
        &[(
            "guards.toml",
            "max_registry_fraction_per_day = 0.02",
            "max_registry_fraction_per_day = 0.5",
        )],
    );
    let config = write_config(dir, &demo, &t.url);
    let registry = SqlRegistry::new(t.store.clone(), demo.join("artifacts"));

    let mut replicas = vec![common::replica(&config), common::replica(&config)];
    // A counted run (as from cron) does not stand by for ever behind the leader.
    common::wait_for_leader(&t.store, &replicas, None).await;
    let once = mapek()
        .args(["--config", &config.display().to_string(), "run", "--once"])
        .stderr(Stdio::piped())
        .output()
        .expect("a counted run");
    let said = String::from_utf8_lossy(&once.stderr);
    assert!(!once.status.success());
    assert!(said.contains("another replica leads"), "{said}");
    let rounds = 6;
    let mut takeovers = Vec::new();
    let mut tampered = Vec::new();
    for round in 0..rounds {
        let leader = common::wait_for_leader(&t.store, &replicas, None).await;
        // New work for the leader: a tampered artifact, found at the next full scan.
        let package = format!("pkg-{:05}", 200 + round);
        common::tamper(&registry, &package).await;
        tampered.push(package.clone());
        // Kill at a different moment of the leader's work each round: before, during or after
        // it acts on the tampered release.
        tokio::time::sleep(Duration::from_millis(250 * round as u64)).await;
        let killed = replicas[leader].id();
        replicas[leader].kill().expect("SIGKILL");
        let _ = replicas[leader].wait();
        let at = Instant::now();
        replicas.push(common::replica(&config));
        let next = common::wait_for_leader(&t.store, &replicas, Some(killed)).await;
        let took = at.elapsed();
        takeovers.push(took);
        assert!(
            took <= TTL + Duration::from_millis(1500),
            "round {round}: the standby took {took:?} to lead (lease {TTL:?})"
        );
        // The new leader acts: the tampered release ends quarantined, once.
        let deadline = Instant::now() + Duration::from_secs(30);
        while common::executed_quarantines(&t.store, &package).await == 0 {
            assert!(
                Instant::now() < deadline,
                "round {round}: {package} was never quarantined"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_ne!(replicas[next].id(), killed);
    }
    for mut r in replicas {
        let _ = r.kill();
        let _ = r.wait();
    }
    eprintln!("takeovers after SIGKILL: {takeovers:?}");

    for package in &tampered {
        assert_eq!(
            common::executed_quarantines(&t.store, package).await,
            1,
            "{package}"
        );
    }
    let twice = common::executed_twice(&t.store).await;
    assert!(twice.is_empty(), "applied twice: {twice:?}");
    let tokens = common::term_tokens(&t.store).await;
    assert!(tokens.len() > rounds, "one term per leader: {tokens:?}");
    assert!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "fencing tokens grow: {tokens:?}"
    );
    let verified = mapek()
        .args(["--config", &config.display().to_string(), "audit", "verify"])
        .status()
        .expect("audit verify");
    assert!(verified.success(), "the audit chain holds");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leader_cannot_write_anything_with_its_old_token() {
    let t = common::store().await;
    if t.store.backend != mapek::knowledge::Backend::Postgres {
        common::skip("fencing", "on SQLite (one replica, no lease)");
        return;
    }
    let old = t.store.fenced();
    assert!(
        old.begin().await.is_err(),
        "no token yet: refused before any write"
    );
    let now = common::NOW;
    let token = t
        .store
        .try_acquire(LEADER, "a:1:x", now, 1_000)
        .await
        .expect("acquire")
        .expect("free");
    old.set_fence(token);
    old.begin().await.expect("the holder writes");
    assert_eq!(
        t.store
            .try_acquire(LEADER, "b:2:y", now + 500, 1_000)
            .await
            .expect("ask"),
        None,
        "held until it expires"
    );
    let newer = t
        .store
        .try_acquire(LEADER, "b:2:y", now + 1_001, 1_000)
        .await
        .expect("acquire")
        .expect("expired");
    assert!(newer > token);
    let err = old.begin().await.expect_err("fenced");
    assert!(err.to_string().contains("moved on"), "{err}");
    assert!(!t
        .store
        .renew(LEADER, "a:1:x", token, now + 1_100, 1_000)
        .await
        .expect("renew"));
}

#[test]
fn a_second_replica_on_one_sqlite_store_refuses_to_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("mapek-demo").join("mapek.db");
    let demo = common::prepare_demo(dir.path(), &db.display().to_string());
    let config = write_config(dir.path(), &demo, &db.display().to_string());
    let mut first = common::replica(&config);
    // Wait until the first replica holds the lock file.
    let lock = PathBuf::from(format!("{}.lock", db.display()));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let held = std::fs::File::open(&lock)
            .map(|f| matches!(f.try_lock(), Err(std::fs::TryLockError::WouldBlock)))
            .unwrap_or(false);
        if held {
            break;
        }
        assert!(Instant::now() < deadline, "the first replica never locked");
        std::thread::sleep(Duration::from_millis(50));
    }
    let second = mapek()
        .args(["--config", &config.display().to_string(), "run", "--once"])
        .stderr(Stdio::piped())
        .output()
        .expect("the second replica runs");
    let said = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success());
    assert!(
        said.contains("another mapek daemon is running on the SQLite store"),
        "{said}"
    );
    first.kill().expect("SIGKILL");
    let _ = first.wait();
    // The lock dies with its process: a replacement starts.
    let status = mapek()
        .args(["--config", &config.display().to_string(), "run", "--once"])
        .status()
        .expect("a replacement runs");
    assert!(status.success(), "{status}");
}
