//! Crash safety with real processes: the daemon SIGKILLed at many moments of its work, restarted each time; in the end every remediation applied exactly once, none half applied, and the audit chain verifies (on SQLite, and on PostgreSQL when configured).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mapek::knowledge::remediations::Status;
use mapek::registry::SqlRegistry;
use sqlx::Row;

fn mapek() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mapek"));
    c.env("MAPEK_LOG", "warn")
        .env_remove("NOTIFY_SOCKET")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}

/// The demo on `url` under `dir/mapek-demo`, its daily guard opened wide, and a configuration
/// with a short cycle, frequent full scans and a short lease.
fn prepare(dir: &Path, url: &str) -> (PathBuf, PathBuf) {
    let demo = common::prepare_demo(dir, url);
    common::integrity_only(&demo);
    // Open the limits wide enough for every tampered release in one cycle.
    common::edit_policies(
        &demo,
        &[
            (
                "guards.toml",
                "max_registry_fraction_per_day = 0.02",
                "max_registry_fraction_per_day = 1.0",
            ),
            (
                "guards.toml",
                "max_actions_per_hour = 200",
                "max_actions_per_hour = 1000",
            ),
            (
                "guards.toml",
                "max_actions_per_cycle = 50",
                "max_actions_per_cycle = 1000",
            ),
            ("integrity.toml", "max_per_hour = 50", "max_per_hour = 1000"),
        ],
    );
    let config = dir.join("crash.toml");
    std::fs::write(
        &config,
        format!(
            "database_url = \"{url}\"\npolicies = \"{0}/policies\"\ntrusted_keys = \"{0}/trusted-keys.toml\"\n\
             key_file = \"{0}/daemon.key\"\nartifact_root = \"{0}/artifacts\"\ninterval = \"200ms\"\n\
             full_scan_interval = \"1s\"\nlease_ttl = \"1s\"\n",
            demo.display()
        ),
    )
    .expect("config");
    (demo, config)
}

/// How many of the tampered releases (pkg-00150 to pkg-00299) are quarantined.
async fn quarantined(store: &mapek::knowledge::Store) -> i64 {
    sqlx::query(
        "SELECT COUNT(*) FROM releases WHERE quarantined = 1 AND package >= 'pkg-00150' AND package < 'pkg-00300'",
    )
    .fetch_one(store.raw_pool())
    .await
    .expect("count")
    .get::<i64, _>(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_many_moments_leaves_nothing_half_applied_or_applied_twice() {
    let t = common::store().await;
    let dir = t.dir.path();
    let (demo, config) = prepare(dir, &t.url);
    let registry = SqlRegistry::new(t.store.clone(), demo.join("artifacts"));
    // 150 releases tampered at once: 150 quarantines, applied in groups of 64, 64 and 22.
    let tampered: Vec<String> = (150..300).map(|i| format!("pkg-{i:05}")).collect();
    for package in &tampered {
        common::tamper(&registry, package).await;
    }
    let intents = || {
        let store = t.store.clone();
        async move {
            store
                .remediations_with_status(Status::Executing)
                .await
                .expect("remediations")
                .len()
        }
    };
    // Killed at the executor's commit boundaries, one after the other; after each, exactly
    // what had committed is applied, and the rest is left as intents for the next start.
    for (point, quarantined_after, intents_after) in [
        ("intents:1", 0, 150),        // every intent written, no effect
        ("before_commit:1", 0, 150),  // the first group written, not committed
        ("after_commit:1", 64, 86),   // the first group committed
        ("before_commit:2", 128, 22), // one group committed, the next one cut off
    ] {
        let mut daemon = mapek()
            .args(["--config", &config.display().to_string(), "run"])
            .env("MAPEK_TEST_CRASH_AT", point)
            .spawn()
            .expect("the daemon starts");
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = daemon.try_wait().expect("wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = daemon.kill();
                panic!("{point}: the crash point was never reached");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        use std::os::unix::process::ExitStatusExt as _;
        assert_eq!(status.signal(), Some(9), "{point}: killed by SIGKILL");
        assert_eq!(
            quarantined(&t.store).await,
            quarantined_after,
            "{point}: applied"
        );
        assert_eq!(intents().await, intents_after, "{point}: intents left");
    }
    // Then killed after different delays: during start-up, the full scan, planning, execution.
    for round in 0..6u64 {
        let mut daemon = mapek()
            .args(["--config", &config.display().to_string(), "run"])
            .spawn()
            .expect("the daemon starts");
        tokio::time::sleep(Duration::from_millis(150 + (round * 173) % 900)).await;
        daemon.kill().expect("SIGKILL");
        let _ = daemon.wait();
    }
    let before_last = quarantined(&t.store).await;
    let terms = t.store.audit_entries().await.expect("audit").len();
    eprintln!("after the kills: {before_last} of 150 quarantined, {terms} audit entries");
    // A last daemon runs until every tampered release is quarantined.
    let mut daemon = mapek()
        .args(["--config", &config.display().to_string(), "run"])
        .spawn()
        .expect("the daemon starts");
    let deadline = Instant::now() + Duration::from_secs(60);
    while quarantined(&t.store).await < tampered.len() as i64 {
        if Instant::now() > deadline {
            let counts = t.store.remediation_counts().await.expect("counts");
            let gates: Vec<(String, String)> = sqlx::query(
                "SELECT DISTINCT status, COALESCE(gate, '-') || ': ' || reason FROM remediations WHERE status = 'suppressed' LIMIT 3",
            )
            .fetch_all(t.store.raw_pool())
            .await
            .expect("gates")
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
            panic!("not every release was quarantined: {counts:?} {gates:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // One more cycle's worth of time, then stop it cleanly.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = Command::new("kill")
        .args(["-TERM", &daemon.id().to_string()])
        .status();
    let _ = daemon.wait();

    let executed = t
        .store
        .remediations_with_status(Status::Executed)
        .await
        .expect("remediations");
    for package in &tampered {
        let n = executed
            .iter()
            .filter(|r| &r.subject.package == package && r.action.as_str() == "quarantine")
            .count();
        assert_eq!(n, 1, "{package}: {n} executed quarantines");
    }
    let half = t
        .store
        .remediations_with_status(Status::Executing)
        .await
        .expect("remediations");
    assert!(
        half.is_empty(),
        "intents left without an outcome: {:?}",
        half.iter().map(|r| &r.id).collect::<Vec<_>>()
    );
    let entries = t.store.audit_entries().await.expect("audit");
    let mut audited: Vec<&str> = entries
        .iter()
        .filter(|e| e.kind == "remediation.executed")
        .filter_map(|e| e.remediation_id.as_deref())
        .collect();
    let all = audited.len();
    audited.sort_unstable();
    audited.dedup();
    assert_eq!(
        all,
        audited.len(),
        "a remediation was audited as executed twice"
    );
    assert_eq!(
        audited.len(),
        executed.len(),
        "every executed remediation has its entry"
    );
    let verified = mapek()
        .args(["--config", &config.display().to_string(), "audit", "verify"])
        .status()
        .expect("audit verify");
    assert!(verified.success(), "the audit chain holds");
}
