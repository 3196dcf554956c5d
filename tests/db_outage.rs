//! The knowledge store lost in the middle of an action (PostgreSQL behind a proxy the test cuts, right after the executor wrote its intents), then back: nothing half applied, the intents finished once it returns, the loop carried on throughout. While it is away, /readyz says so within a second and the intake and the admin API answer 503 at once.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::proxy::proxy;
use common::{default_policies, world};
use mapek::daemon::reload::PolicySource;
use mapek::daemon::{self, RunOptions};
use mapek::knowledge::remediations::Status;
use mapek::knowledge::Store;
use mapek::registry::SqlRegistry;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_mid_action_leaves_nothing_half_applied_and_the_loop_carries_on() {
    let w = world(20).await;
    if w.t.store.backend != mapek::knowledge::Backend::Postgres {
        common::skip("store outage", "on SQLite (a file cannot be made unreachable; set MAPEK_TEST_DATABASE_URL to run it on PostgreSQL)");
        return;
    }
    w.plant_problems().await;
    let proxy = proxy("127.0.0.1:5432").await;
    let (_, db) = w.t.url.rsplit_once('/').expect("database name");
    let url = format!("postgres://postgres@127.0.0.1:{}/{db}", proxy.port);
    let store = Store::open(&url).await.expect("through the proxy");

    // The store goes away right after the executor committed its intents, before any effect,
    // and comes back two cycles later.
    let cut = Arc::new(AtomicBool::new(false));
    let up = proxy.up.clone();
    let once = cut.clone();
    assert!(mapek::faults::set_hook(Box::new(move |point| {
        if point == "intents" && !once.swap(true, Ordering::SeqCst) {
            up.send_replace(false);
        }
    })));
    let cycles_down = Arc::new(AtomicU32::new(0));
    let (up, down, was_cut) = (proxy.up.clone(), cycles_down.clone(), cut.clone());
    let mut rt = w.runtime(PolicySource::fixed(default_policies()));
    rt.registry =
        Arc::new(SqlRegistry::new(store.clone(), w.registry.artifact_root.clone()).into());
    rt.store = store.clone();
    rt.fault = Some(Arc::new(move |stage| {
        if stage == "monitor"
            && was_cut.load(Ordering::SeqCst)
            && !*up.borrow()
            && down.fetch_add(1, Ordering::SeqCst) >= 2
        {
            up.send_replace(true);
        }
    }));
    let rt = Arc::new(rt);
    let summary = daemon::run(
        rt.clone(),
        RunOptions {
            cycles: Some(8),
            interval: Duration::from_millis(50),
            grace: Duration::from_secs(30),
        },
        Default::default(),
    )
    .await
    .expect("the daemon runs through the outage");
    assert!(cut.load(Ordering::SeqCst), "the outage happened");
    // The cycle cut off in execute and the cycles after the store returned reach the end;
    // the two whose monitor found no store end there.
    assert!(summary.cycles >= 5, "the loop carried on: {summary:?}");
    assert!(
        summary.stage_errors >= 2,
        "the outage was noticed: {summary:?}"
    );
    assert_eq!(
        cycles_down.load(Ordering::SeqCst),
        3,
        "down for two cycles, back at the third"
    );

    // Read directly, not through the proxy.
    let executed =
        w.t.store
            .remediations_with_status(Status::Executed)
            .await
            .expect("remediations");
    assert_eq!(
        executed.len(),
        3,
        "every intent finished once the store returned"
    );
    assert!(w
        .t
        .store
        .remediations_with_status(Status::Executing)
        .await
        .expect("remediations")
        .is_empty());
    assert_eq!(w.quarantined().await.len(), 3);
    let entries = w.t.store.audit_entries().await.expect("audit");
    let audited = entries
        .iter()
        .filter(|e| e.kind == "remediation.executed")
        .count();
    assert_eq!(audited, 3, "each applied once");
    assert!(mapek::knowledge::audit::verify_chain(&entries, &w.key.public()).is_ok());
}

/// `GET path` (with the bearer token when given) answered within `limit`: its status.
async fn answered_within(
    app: &axum::Router,
    method: &str,
    path: &str,
    token: Option<&str>,
    limit: Duration,
) -> axum::http::StatusCode {
    use tower::ServiceExt;
    let mut req = axum::http::Request::builder().method(method).uri(path);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let req = req.body(axum::body::Body::from("")).expect("request");
    tokio::time::timeout(limit, app.clone().oneshot(req))
        .await
        .unwrap_or_else(|_| panic!("{method} {path} was not answered within {limit:?}"))
        .expect("answer")
        .status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_store_is_away_readiness_says_so_within_a_second_and_calls_fail_fast() {
    use axum::http::StatusCode;
    let w = world(5).await;
    if w.t.store.backend != mapek::knowledge::Backend::Postgres {
        common::skip(
            "store outage readiness",
            "on SQLite (set MAPEK_TEST_DATABASE_URL to run it on PostgreSQL)",
        );
        return;
    }
    let proxy = proxy("127.0.0.1:5432").await;
    let (_, db) = w.t.url.rsplit_once('/').expect("database name");
    let url = format!("postgres://postgres@127.0.0.1:{}/{db}", proxy.port);
    let store = Store::open(&url).await.expect("through the proxy");
    let mut rt = w.runtime(PolicySource::fixed(default_policies()));
    rt.store = store.clone();
    rt.admin_token = Some("an-admin-token-long-enough".into());
    rt.leadership.set(mapek::daemon::lead::Role::Standalone);
    let (writer, _task) = mapek::monitor::intake::Intake::start(store.clone(), Default::default());
    rt.intake = Some(mapek::daemon::http::IntakeConfig {
        writer,
        token: "an-intake-token-long-enough".into(),
        max_body: 1 << 20,
        horizon: Default::default(),
    });
    let rt = Arc::new(rt);
    let app = daemon::http::router(rt.clone());
    let second = Duration::from_millis(1_500);
    assert_eq!(
        answered_within(&app, "GET", "/readyz", None, second).await,
        StatusCode::OK
    );

    proxy.up.send_replace(false);
    // Readiness: every answer within a second; 503 once the last known state (at most a
    // second old) has seen the outage, and for as long as it lasts.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while answered_within(&app, "GET", "/readyz", None, second).await == StatusCode::OK {
        assert!(
            std::time::Instant::now() < deadline,
            "readiness never saw the outage"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for _ in 0..3 {
        assert_eq!(
            answered_within(&app, "GET", "/readyz", None, second).await,
            StatusCode::SERVICE_UNAVAILABLE
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    // Calls that need the store fail at once instead of waiting for the pool (30 s).
    let quick = Duration::from_millis(500);
    let admin = Some("an-admin-token-long-enough");
    assert_eq!(
        answered_within(&app, "GET", "/v1/admin/status", admin, quick).await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        answered_within(
            &app,
            "POST",
            "/v1/events",
            Some("an-intake-token-long-enough"),
            quick
        )
        .await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    // Without a token, still 401 first.
    assert_eq!(
        answered_within(&app, "GET", "/v1/admin/status", None, quick).await,
        StatusCode::UNAUTHORIZED
    );

    proxy.up.send_replace(true);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(
        answered_within(&app, "GET", "/readyz", None, Duration::from_secs(10)).await,
        StatusCode::OK
    );
    assert_eq!(
        answered_within(
            &app,
            "GET",
            "/v1/admin/status",
            admin,
            Duration::from_secs(10)
        )
        .await,
        StatusCode::OK
    );
}
