//! A task that fails (panics) is restarted with backoff and the loop carries on, or, when so configured, the daemon stops with an error naming it.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{default_policies, world};
use mapek::daemon::reload::PolicySource;
use mapek::daemon::supervise::OnFailure;
use mapek::daemon::{self, RunOptions};
use mapek::knowledge::Backend;

fn opts(cycles: u64) -> RunOptions {
    RunOptions {
        cycles: Some(cycles),
        interval: Duration::from_millis(10),
        grace: Duration::from_secs(30),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_stage_is_restarted_and_the_loop_carries_on() {
    let w = world(15).await;
    w.plant_problems().await;
    let mut rt = w.runtime(PolicySource::fixed(default_policies()));
    let calls = Arc::new(AtomicU32::new(0));
    let seen = calls.clone();
    rt.fault = Some(Arc::new(move |stage| {
        if stage == "analyze" && seen.fetch_add(1, Ordering::SeqCst) == 0 {
            panic!("injected fault in analyze");
        }
    }));
    let rt = Arc::new(rt);
    let summary = daemon::run(rt.clone(), opts(3), Default::default())
        .await
        .expect("the daemon keeps running");
    assert_eq!(
        summary.cycles, 2,
        "the failed cycle is lost, the others run"
    );
    assert!(calls.load(Ordering::SeqCst) >= 3);
    assert_eq!(w.quarantined().await.len(), 3, "the restarted loop acted");
    assert!(rt
        .metrics
        .render()
        .contains("mapek_task_restarts_total{task=\"analyze\"} 1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_on_task_failure_stop_the_daemon_stops_and_names_the_task() {
    let w = world(15).await;
    w.plant_problems().await;
    let mut rt = w.runtime(PolicySource::fixed(default_policies()));
    rt.on_task_failure = OnFailure::Stop;
    rt.fault = Some(Arc::new(|stage| {
        if stage == "plan" {
            panic!("injected fault in plan");
        }
    }));
    let store = rt.store.clone();
    // Through the leader's loop, as `mapek run` runs it: the lease is handed back on the way out.
    let error = daemon::lead::run(Arc::new(rt), opts(50), Default::default())
        .await
        .expect_err("the daemon stops");
    let lease = store
        .lease(mapek::knowledge::lease::LEADER)
        .await
        .expect("the lease row");
    match store.backend {
        Backend::Postgres => {
            let lease = lease.expect("it was held");
            assert_eq!(lease.expires_at, 0, "the lease was released: {lease:?}");
        }
        // One replica on SQLite (a lock file): there is no lease to hand back.
        Backend::Sqlite => assert_eq!(lease, None),
    }
    let text = error.to_string();
    assert!(
        text.contains("the plan task failed: injected fault in plan"),
        "{text}"
    );
    assert!(
        w.quarantined().await.is_empty(),
        "nothing was planned, nothing applied"
    );
}
