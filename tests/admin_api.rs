//! The admin API: 401 and nothing done without the token; pause stops execution until resume; signed approvals, rollback and closing the circuit; every call audited; a standby refuses. Also the probes, /healthz and /readyz.

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;

use common::{default_policies, world, World};
use mapek::daemon::lead::Role;
use mapek::daemon::reload::PolicySource;
use mapek::daemon::{self, RunOptions, Runtime};
use mapek::keys::{KeyPair, Role as KeyRole};
use mapek::knowledge::approvals::{Approval, Decision};
use mapek::knowledge::remediations::Status;
use mapek::plan::policy::PolicySet;

const TOKEN: &str = "an-admin-token-long-enough";

async fn call(
    app: &axum::Router,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<serde_json::Value>,
) -> (StatusCode, serde_json::Value) {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let body = match body {
        Some(b) => {
            req = req.header("content-type", "application/json");
            Body::from(b.to_string())
        }
        None => Body::empty(),
    };
    let resp = app.clone().oneshot(req.body(body).unwrap()).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 22)
        .await
        .unwrap();
    (status, serde_json::from_slice(&bytes).unwrap_or_default())
}

fn runtime(w: &World, policies: PolicySet) -> Arc<Runtime> {
    let mut rt = w.runtime(PolicySource::fixed(policies));
    rt.admin_token = Some(TOKEN.into());
    rt.leadership.set(Role::Standalone);
    Arc::new(rt)
}

async fn one_cycle(rt: &Arc<Runtime>) {
    let summary = daemon::run(
        rt.clone(),
        RunOptions {
            cycles: Some(1),
            interval: Duration::from_millis(10),
            grace: Duration::from_secs(30),
        },
        tokio_util::sync::CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(summary.stage_errors, 0);
}

#[tokio::test]
async fn without_a_valid_token_every_call_is_refused_and_nothing_is_done() {
    let w = world(10).await;
    let rt = runtime(&w, default_policies());
    let app = daemon::http::router(rt.clone());
    let before = w.t.store.audit_entries().await.unwrap().len();
    for (method, path) in [
        ("GET", "/v1/admin/status"),
        ("POST", "/v1/admin/pause"),
        ("POST", "/v1/admin/resume"),
        ("POST", "/v1/admin/reload"),
        ("GET", "/v1/admin/plans"),
        ("POST", "/v1/admin/plans/rem-x/approve"),
        ("POST", "/v1/admin/remediations/rem-x/rollback"),
        ("POST", "/v1/admin/circuit/close"),
    ] {
        for token in [None, Some("wrong-token-wrong-token")] {
            let (status, body) = call(&app, method, path, token, None).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}");
            assert!(body["error"].as_str().unwrap().contains("bearer token"));
        }
    }
    assert_eq!(w.t.store.paused().await.unwrap(), None);
    assert_eq!(w.t.store.audit_entries().await.unwrap().len(), before);
    assert!(rt
        .metrics
        .render()
        .contains("mapek_admin_requests_total{endpoint=\"pause\",result=\"unauthorized\"} 2"));
}

/// A request as it may come off the wire: any body, any content type or none.
async fn raw(
    app: &axum::Router,
    path: &str,
    token: Option<&str>,
    content_type: Option<&str>,
    body: &'static str,
) -> (StatusCode, serde_json::Value) {
    let mut req = Request::builder().method("POST").uri(path);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    if let Some(c) = content_type {
        req = req.header("content-type", c);
    }
    let resp = app
        .clone()
        .oneshot(req.body(Body::from(body)).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 22)
        .await
        .unwrap();
    (status, serde_json::from_slice(&bytes).unwrap_or_default())
}

#[tokio::test]
async fn the_token_is_checked_before_the_body_is_read_and_refused_bodies_are_audited() {
    let w = world(10).await;
    let rt = runtime(&w, default_policies());
    let app = daemon::http::router(rt.clone());
    let before = w.t.store.audit_entries().await.unwrap().len();
    let json = Some("application/json");
    for (content_type, body) in [
        (json, "{}"),
        (json, "junk{"),
        (None, "{}"),
        (Some("text/plain"), "x"),
    ] {
        for path in ["/v1/admin/plans/rem-x/approve", "/v1/admin/pause"] {
            let (status, _) = raw(&app, path, None, content_type, body).await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{path} {content_type:?} {body}"
            );
        }
    }
    assert_eq!(
        w.t.store.audit_entries().await.unwrap().len(),
        before,
        "anonymous calls write nothing"
    );

    // Authenticated, a body that cannot be read is a 400 with its reason, and audited.
    let (status, body) = raw(&app, "/v1/admin/pause", Some(TOKEN), json, "junk{").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"].as_str().unwrap().contains("not the JSON"),
        "{body}"
    );
    let (status, _) = raw(
        &app,
        "/v1/admin/plans/rem-x/approve",
        Some(TOKEN),
        None,
        "{}",
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        w.t.store.paused().await.unwrap(),
        None,
        "a refused pause pauses nothing"
    );
    let kinds: Vec<String> = w.t.store.audit_entries().await.unwrap()[before..]
        .iter()
        .map(|e| format!("{} {}", e.kind, e.detail))
        .collect();
    assert_eq!(kinds.len(), 2, "{kinds:?}");
    assert!(
        kinds[0].starts_with("admin.pause") && kinds[0].contains("400"),
        "{kinds:?}"
    );
    assert!(
        kinds[1].starts_with("admin.decide") && kinds[1].contains("400"),
        "{kinds:?}"
    );
    // A body-less pause still works (the body is optional).
    let (status, _) = raw(&app, "/v1/admin/pause", Some(TOKEN), None, "").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn pause_holds_execution_until_resume_and_rollback_and_circuit_are_answered() {
    let w = world(20).await;
    w.plant_problems().await;
    let rt = runtime(&w, default_policies());
    let app = daemon::http::router(rt.clone());

    let (status, body) = call(
        &app,
        "POST",
        "/v1/admin/pause",
        Some(TOKEN),
        Some(serde_json::json!({ "by": "alice" })),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    one_cycle(&rt).await;
    assert!(w.quarantined().await.is_empty(), "paused: nothing applied");
    let (_, status_body) = call(&app, "GET", "/v1/admin/status", Some(TOKEN), None).await;
    assert_eq!(status_body["paused"]["by"], "admin-api:alice");
    assert_eq!(status_body["role"], "standalone");
    assert!(status_body["remediations"]["ready"].as_i64().unwrap_or(0) > 0);
    // The command line reads the same answer back into the typed report it prints.
    let report: mapek::daemon::status::StatusReport =
        serde_json::from_value(status_body.clone()).expect("the status answer is a StatusReport");
    assert_eq!(
        report.paused.as_ref().map(|p| p.by.as_str()),
        Some("admin-api:alice")
    );
    assert!(report
        .to_string()
        .contains("EXECUTION PAUSED by admin-api:alice"));

    let (status, _) = call(&app, "POST", "/v1/admin/resume", Some(TOKEN), None).await;
    assert_eq!(status, StatusCode::OK);
    one_cycle(&rt).await;
    assert_eq!(w.quarantined().await.len(), 3, "resumed: applied");

    let executed =
        w.t.store
            .remediations_with_status(Status::Executed)
            .await
            .unwrap();
    let id = executed[0].id.clone();
    let path = format!("/v1/admin/remediations/{id}/rollback");
    let (status, body) = call(&app, "POST", &path, Some(TOKEN), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(w.quarantined().await.len(), 2);
    let (status, body) = call(&app, "POST", &path, Some(TOKEN), None).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("already rolled back"),
        "{body}"
    );
    let (status, body) = call(&app, "POST", "/v1/admin/circuit/close", Some(TOKEN), None).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(body["error"].as_str().unwrap().contains("not open"));

    let kinds = w.audit_kinds().await;
    for k in [
        "admin.pause",
        "admin.status",
        "admin.resume",
        "admin.rollback",
        "admin.circuit_close",
    ] {
        assert!(kinds.iter().any(|x| x == k), "{k} audited: {kinds:?}");
    }
    let verified = mapek::knowledge::audit::verify_chain(
        &w.t.store.audit_entries().await.unwrap(),
        &w.key.public(),
    );
    assert!(verified.is_ok(), "{verified:?}");
}

const APPROVE: &str = r#"
[[policy]]
id = "q"
on = ["checksum_mismatch", "signature_invalid", "signer_untrusted"]
action = "quarantine"
mode = "approve"
approvers = ["maint-alice"]
min_approvals = 1
approval_ttl = "2h"
"#;

#[tokio::test]
async fn an_approval_through_the_api_must_carry_the_maintainers_signature() {
    let w = world(20).await;
    w.plant_problems().await;
    let alice = KeyPair::from_seed("maint-alice", [21; 32]);
    let mut trust = (*w.trust).clone();
    trust.add(&alice, "alice", vec![KeyRole::Maintainer]);
    let policies =
        PolicySet::from_sources(&[(PathBuf::from("p.toml"), APPROVE.to_string())]).unwrap();
    let mut rt = w.runtime(PolicySource::fixed(policies));
    rt.admin_token = Some(TOKEN.into());
    rt.trust = Arc::new(trust);
    rt.leadership.set(Role::Standalone);
    let rt = Arc::new(rt);
    let app = daemon::http::router(rt.clone());
    one_cycle(&rt).await;

    let (status, body) = call(&app, "GET", "/v1/admin/plans", Some(TOKEN), None).await;
    assert_eq!(status, StatusCode::OK);
    let pending = body["pending"].as_array().unwrap().clone();
    assert_eq!(pending.len(), 3, "{body}");
    let r = &pending[0];
    let id = r["id"].as_str().unwrap();
    let at = common::NOW;
    let msg = Approval::signing_bytes(
        Decision::Approve,
        id,
        r["signature"].as_str().unwrap(),
        "maint-alice",
        at,
    );
    let path = format!("/v1/admin/plans/{id}/approve");
    // A signature over other bytes, by the right key: refused, nothing recorded.
    let forged =
        serde_json::json!({ "key_id": "maint-alice", "at": at, "signature": alice.sign(b"other") });
    let (status, body) = call(&app, "POST", &path, Some(TOKEN), Some(forged)).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(body["error"].as_str().unwrap().contains("does not hold"));
    let decided = |w: &World| {
        let store = w.t.store.clone();
        let id = id.to_string();
        async move {
            store
                .pending_approvals()
                .await
                .unwrap()
                .get(&id)
                .map_or(0, Vec::len)
        }
    };
    assert_eq!(decided(&w).await, 0);

    let signed =
        serde_json::json!({ "key_id": "maint-alice", "at": at, "signature": alice.sign(&msg) });
    let (status, body) = call(&app, "POST", &path, Some(TOKEN), Some(signed)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(decided(&w).await, 1);

    // A standby changes nothing and names the leader.
    rt.leadership.set(Role::Standby);
    let (status, body) = call(&app, "POST", "/v1/admin/pause", Some(TOKEN), None).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(body["error"].as_str().unwrap().contains("standby"));
    assert_eq!(w.t.store.paused().await.unwrap(), None);
}

#[test]
fn the_command_line_asks_a_running_daemon_when_one_is_configured() {
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().expect("temp dir");
    let bin = env!("CARGO_BIN_EXE_mapek");
    let prepared = Command::new(bin)
        .args(["--demo", "run", "--cycles", "1"])
        .current_dir(dir.path())
        .env("MAPEK_LOG", "warn")
        .stdout(Stdio::null())
        .status()
        .expect("the demo prepares");
    assert!(prepared.success());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    std::fs::write(dir.path().join("admin.token"), TOKEN).expect("token");
    let config = dir.path().join("mapek.toml");
    std::fs::write(
        &config,
        format!(
            "database_url = \"{0}/mapek.db\"\npolicies = \"{0}/policies\"\ntrusted_keys = \"{0}/trusted-keys.toml\"\n\
             key_file = \"{0}/daemon.key\"\nartifact_root = \"{0}/artifacts\"\ninterval = \"1s\"\n\
             listen = \"127.0.0.1:{port}\"\nadmin_token_file = \"admin.token\"\nadmin_url = \"http://127.0.0.1:{port}\"\n",
            dir.path().join("mapek-demo").display()
        ),
    )
    .expect("config");
    let cli = |args: &[&str]| {
        Command::new(bin)
            .arg("--config")
            .arg(&config)
            .args(args)
            .env("MAPEK_LOG", "warn")
            .output()
            .expect("the command runs")
    };
    // No daemon yet: the store is read directly, and the command says so.
    let offline = cli(&["status"]);
    assert!(offline.status.success());
    assert!(String::from_utf8_lossy(&offline.stderr).contains("unreachable"));
    assert!(String::from_utf8_lossy(&offline.stdout).contains("read from the store"));

    let mut daemon = Command::new(bin)
        .args(["--config", &config.display().to_string(), "run"])
        .env("MAPEK_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("the daemon starts");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let online = loop {
        let out = cli(&["status"]);
        if String::from_utf8_lossy(&out.stdout).contains("from the daemon at") {
            break out;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the daemon never answered"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    // `mapek explain` through the API, by a finding's id (with `#` and `:` in it).
    let text = String::from_utf8_lossy(&online.stdout).into_owned();
    let rem = text
        .split_whitespace()
        .map(|w| w.trim_end_matches(')'))
        .find(|w| w.starts_with("rem-"))
        .expect("a remediation in the status")
        .to_string();
    let by_rem = cli(&["explain", &rem, "--json"]);
    assert!(
        by_rem.status.success(),
        "{}",
        String::from_utf8_lossy(&by_rem.stderr)
    );
    assert!(
        !String::from_utf8_lossy(&by_rem.stderr).contains("unreachable"),
        "answered by the daemon"
    );
    let x: serde_json::Value = serde_json::from_slice(&by_rem.stdout).expect("JSON");
    let finding = x["finding"]["id"]
        .as_str()
        .expect("its finding")
        .to_string();
    assert!(finding.contains('#'), "{finding}");
    let by_finding = cli(&["explain", &finding]);
    assert!(
        by_finding.status.success(),
        "{}",
        String::from_utf8_lossy(&by_finding.stderr)
    );
    assert!(String::from_utf8_lossy(&by_finding.stdout).contains(&rem));
    let _ = daemon.kill();
    let _ = daemon.wait();
    assert!(text.contains("role: standalone"), "{text}");
    assert!(text.contains("quarantine-tampered"), "{text}");
}

/// A probe's status and text.
async fn probe(app: &axum::Router, path: &str) -> (StatusCode, String) {
    let req = Request::builder().uri(path).body(Body::empty()).unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 16)
        .await
        .unwrap();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

#[tokio::test]
async fn healthz_says_alive_and_readyz_says_whether_the_daemon_can_work() {
    let w = world(20).await;
    let rt = Arc::new(w.runtime(PolicySource::fixed(default_policies())));
    let app = daemon::http::router(rt.clone());
    assert_eq!(probe(&app, "/healthz").await.0, StatusCode::OK);
    // Before the replica knows its role it is not ready.
    let (status, text) = probe(&app, "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{text}");
    assert!(text.contains("starting"), "{text}");
    let loaded = rt.policies.get().policies.len();
    for (role, name) in [(Role::Standalone, "standalone"), (Role::Standby, "standby")] {
        rt.leadership.set(role);
        let (status, text) = probe(&app, "/readyz").await;
        assert_eq!(status, StatusCode::OK, "{text}");
        assert!(
            text.contains(&format!("{loaded} policies loaded, role {name}")),
            "{text}"
        );
    }
    // The knowledge store gone: alive, but not ready (once the last known state, at most a
    // second old, has seen it).
    rt.store.close().await;
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    assert_eq!(probe(&app, "/healthz").await.0, StatusCode::OK);
    let (status, text) = probe(&app, "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{text}");
    assert!(text.contains("knowledge store unusable"), "{text}");
}
