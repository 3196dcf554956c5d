//! What wakes the loop, with its ticker set to an hour: a file written under artifact_root, telemetry committed by the intake, an admin call, a change of the policy directory, a registry change or a pause by another process (PostgreSQL NOTIFY, the SQLite file); a burst makes a bounded number of cycles; what is due by time (here the next full scan) starts a cycle when it is due.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{default_policies, world, World};
use mapek::daemon::reload::PolicySource;
use mapek::daemon::wake::{Reason, Sources};
use mapek::daemon::{self, RunOptions, Runtime};
use mapek::knowledge::remediations::Status;
use tokio_util::sync::CancellationToken;

/// A daemon whose safety-net ticker waits an hour, running with its wake-up sources.
struct Running {
    rt: Arc<Runtime>,
    cancel: CancellationToken,
    _watching: daemon::wake::Watching,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn start(w: &World, reloads: Vec<std::path::PathBuf>) -> Self {
        Self::start_with(w, reloads, Duration::from_secs(3600)).await
    }

    async fn start_with(
        w: &World,
        reloads: Vec<std::path::PathBuf>,
        full_scan_every: Duration,
    ) -> Self {
        let mut rt = w.runtime(PolicySource::fixed(default_policies()));
        rt.full_scan_every = full_scan_every;
        let sources = Sources {
            database_url: w.t.url.clone(),
            reloads,
        };
        Self::run(rt, &sources).await
    }

    /// Runs `rt` (an admin token set, standalone) with `sources` waking it.
    async fn run(mut rt: Runtime, sources: &Sources) -> Self {
        rt.admin_token = Some("an-admin-token-long-enough".into());
        rt.leadership.set(daemon::lead::Role::Standalone);
        let rt = Arc::new(rt);
        let cancel = CancellationToken::new();
        let watching = daemon::wake::start(&rt, sources, &cancel);
        let (r, c) = (rt.clone(), cancel.clone());
        let task = tokio::spawn(async move {
            daemon::run(
                r,
                RunOptions {
                    cycles: None,
                    interval: Duration::from_secs(3600),
                    grace: Duration::from_secs(10),
                },
                c,
            )
            .await
            .expect("the daemon runs");
        });
        let me = Self {
            rt,
            cancel,
            _watching: watching,
            task,
        };
        // The ticker's first tick is at once: the start-up cycle (a full scan).
        me.cycles_reach(1).await;
        me
    }

    fn cycles(&self) -> u64 {
        self.rt.metrics.cycles.get()
    }

    /// Waits (at most 20 s: the ticker would take an hour) until `n` cycles have completed.
    async fn cycles_reach(&self, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.cycles() < n {
            assert!(
                Instant::now() < deadline,
                "no cycle came: {} of {n}",
                self.cycles()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn stop(self) {
        self.cancel.cancel();
        self.task.await.expect("the daemon stops");
    }
}

async fn executed(w: &World, package: &str) -> bool {
    w.t.store
        .remediations_with_status(Status::Executed)
        .await
        .expect("remediations")
        .iter()
        .any(|r| r.subject.package == package)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_written_under_artifact_root_is_judged_and_quarantined_in_the_cycle_it_wakes() {
    let w = world(20).await;
    let d = Running::start(&w, vec![]).await;
    // Written behind the registry's back: no record moves; only the file notification tells.
    let path = w.artifact_path("pkg-00007", "1.0.0").await;
    let mut bytes = std::fs::read(&path).expect("artifact");
    bytes.extend_from_slice(b"\n# injected\n");
    std::fs::write(&path, bytes).expect("tamper");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !executed(&w, "pkg-00007").await {
        assert!(
            Instant::now() < deadline,
            "not quarantined without the ticker"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        d.rt.metrics.event_to_remediation.get_sample_count() >= 1,
        "the latency from the write to the commit is measured"
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_committed_by_the_intake_and_an_admin_call_each_start_a_cycle() {
    use tower::ServiceExt;
    let w = world(5).await;
    let stop = CancellationToken::new();
    let (writer, intake) = mapek::monitor::intake::Intake::start(w.t.store.clone(), stop.clone());
    let mut rt = w.runtime(PolicySource::fixed(default_policies()));
    rt.intake = Some(daemon::http::IntakeConfig {
        writer,
        token: "an-intake-token-long-enough".into(),
        max_body: 1 << 20,
        horizon: Default::default(),
    });
    let d = Running::run(rt, &Sources::default()).await;
    let rt = d.rt.clone();
    let app = daemon::http::router(rt.clone());
    let post = |path: &str, token: &str, body: &str| {
        axum::http::Request::post(path)
            .header("authorization", format!("Bearer {token}"))
            .body(axum::body::Body::from(body.to_string()))
            .expect("request")
    };
    let before = d.cycles();
    let answer = app
        .clone()
        .oneshot(post(
            "/v1/events",
            "an-intake-token-long-enough",
            "{\"type\":\"download\",\"package\":\"pkg-00001\",\"version\":\"1.0.0\"}\n",
        ))
        .await
        .expect("answer");
    assert_eq!(answer.status(), axum::http::StatusCode::OK);
    d.cycles_reach(before + 1).await;

    let before = d.cycles();
    let answer = app
        .clone()
        .oneshot(post("/v1/admin/pause", "an-admin-token-long-enough", ""))
        .await
        .expect("answer");
    assert_eq!(answer.status(), axum::http::StatusCode::OK);
    d.cycles_reach(before + 1).await;
    d.stop().await;
    stop.cancel();
    intake.await.expect("intake");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_of_the_policy_directory_starts_a_cycle() {
    let w = world(5).await;
    let dir = tempfile::tempdir().expect("dir");
    let d = Running::start(&w, vec![dir.path().to_path_buf()]).await;
    let before = d.cycles();
    std::fs::write(dir.path().join("new.toml"), "# a new policy file\n").expect("write");
    d.cycles_reach(before + 1).await;
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_change_by_another_process_starts_a_cycle() {
    let w = world(10).await;
    let d = Running::start(&w, vec![]).await;
    let before = d.cycles();
    // Another process (here another pool on the same database) yanks a release: on PostgreSQL
    // its NOTIFY wakes the loop, on SQLite the store file's notification does.
    let other = mapek::knowledge::Store::open(&w.t.url)
        .await
        .expect("another connection");
    let registry =
        mapek::registry::SqlRegistry::new(other.clone(), w.registry.artifact_root.clone());
    let mut tx = other.begin().await.expect("tx");
    mapek::registry::Registry::apply(
        &registry,
        &mut tx,
        &mapek::registry::Change::YankRelease {
            package: "pkg-00003".into(),
            version: "1.0.0".into(),
        },
        common::NOW,
    )
    .await
    .expect("yank");
    tx.commit().await.expect("commit");
    d.cycles_reach(before + 1).await;
    // The same for a pause written by another process (`mapek pause` without a daemon URL).
    tokio::time::sleep(Duration::from_millis(50)).await;
    let before = d.cycles();
    let mut tx = other.begin().await.expect("tx");
    mapek::knowledge::control::set_paused(
        &mut tx,
        Some(&mapek::knowledge::control::Paused {
            by: "another process".into(),
            at: common::NOW,
        }),
    )
    .await
    .expect("pause");
    tx.commit().await.expect("commit");
    d.cycles_reach(before + 1).await;
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_a_hundred_thousand_events_makes_a_bounded_number_of_cycles() {
    let w = world(5).await;
    let d = Running::start(&w, vec![]).await;
    let before = d.cycles();
    for _ in 0..100_000 {
        d.rt.wake.ring(Reason::Intake);
    }
    d.cycles_reach(before + 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let made = d.cycles() - before;
    // Rings while a cycle runs make one more cycle: the count is bounded by how long the burst
    // lasts over how long a cycle takes (a few here), never by the number of events.
    assert!(
        (1..=20).contains(&made),
        "100,000 rings made {made} cycles: coalesced, one at a time"
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_is_due_by_time_starts_a_cycle_when_it_is_due() {
    let w = world(5).await;
    // A full scan is due every 300 ms; nothing else happens and the ticker waits an hour.
    let d = Running::start_with(&w, vec![], Duration::from_millis(300)).await;
    let before = d.cycles();
    d.cycles_reach(before + 3).await;
    let due = d.rt.metrics.wakeups.with_label_values(&["due"]).get();
    let event = d.rt.metrics.wakeups.with_label_values(&["event"]).get();
    assert!(due >= 2, "due {due}, event {event}");
    d.stop().await;
}
