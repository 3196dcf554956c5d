//! The status page at `/`: served without a token, it shows the demo's story (handled findings, the remediation waiting for approval with the command that approves it, the latest remediations, the loop) and no secret; in headless Chromium it renders, with a screenshot kept in target/.

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;

use common::{default_policies, world, World};
use mapek::daemon::lead::Role;
use mapek::daemon::reload::PolicySource;
use mapek::daemon::{self, RunOptions, Runtime};
use mapek::knowledge::remediations::Status;

const TOKEN: &str = "a-secret-admin-token-never-shown";

async fn demo_daemon(w: &World) -> Arc<Runtime> {
    w.plant_problems().await;
    let mut rt = w.runtime(PolicySource::fixed(default_policies()));
    rt.admin_token = Some(TOKEN.into());
    rt.leadership.set(Role::Standalone);
    let rt = Arc::new(rt);
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
    rt
}

async fn get(app: &axum::Router, path: &str) -> (StatusCode, String, String) {
    let req = Request::builder().uri(path).body(Body::empty()).unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let ctype = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 22)
        .await
        .unwrap();
    (status, ctype, String::from_utf8_lossy(&bytes).into_owned())
}

#[tokio::test]
async fn the_page_tells_the_demos_story_without_a_token_and_shows_no_secret() {
    let w = world(40).await;
    let rt = demo_daemon(&w).await;
    let pending =
        w.t.store
            .remediations_with_status(Status::Pending)
            .await
            .unwrap();
    assert_eq!(
        pending.len(),
        1,
        "pkg-00004 waits for approval (blast radius)"
    );
    let app = daemon::http::router(rt.clone());
    let (status, ctype, page) = get(&app, "/").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(ctype.starts_with("text/html"), "{ctype}");
    assert!(page.contains("http-equiv=\"refresh\""), "refreshes itself");
    assert!(page.contains("Waiting for approval (1)"), "{page}");
    let command = format!(
        "mapek plans approve {} --key keys/&lt;maintainer&gt;.key",
        pending[0].id
    );
    assert!(page.contains(&command), "the exact command: {page}");
    assert!(page.contains("approvers: maint-alice, maint-bob"), "{page}");
    // The two quarantined releases' findings read as handled, by their remediation.
    assert!(page.matches(">handled").count() >= 2, "{page}");
    assert!(page.contains("pkg-00002@1.0.0") && page.contains("pkg-00003@1.0.0"));
    assert!(
        page.contains("<span class=\"badge ok\">closed</span>"),
        "circuit closed"
    );
    assert!(page.contains("This replica: <strong>standalone</strong>"));
    assert!(page.contains("cycles since start</th><td>1<"), "{page}");
    assert!(!page.contains("none yet"), "the last cycle is shown");
    assert!(!page.contains(TOKEN), "no secret on the page");
    assert!(!page.contains("<script"), "no JavaScript");
}

#[tokio::test]
async fn while_the_store_is_down_the_page_says_so_with_503() {
    let w = world(10).await;
    let rt = Arc::new(w.runtime(PolicySource::fixed(default_policies())));
    rt.leadership.set(Role::Standalone);
    w.t.store.close().await;
    let _ = rt.store_health.refresh(&rt.store).await;
    let (status, _, page) = get(&daemon::http::router(rt), "/").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{page}");
    assert!(page.contains("store unreachable"), "{page}");
}

fn chromium() -> Option<std::path::PathBuf> {
    [
        "/usr/bin/chromium",
        "/usr/bin/chromium-browser",
        "/usr/bin/google-chrome",
    ]
    .iter()
    .map(std::path::PathBuf::from)
    .find(|p| p.exists())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headless_chromium_renders_the_page_and_keeps_a_screenshot() {
    let Some(browser) = chromium() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI installs Chromium (.ci/run): /usr/bin/chromium is missing"
        );
        common::skip(
            "the status page in Chromium",
            "Chromium is not installed (apt-get install chromium; CI installs it)",
        );
        return;
    };
    let w = world(40).await;
    let rt = demo_daemon(&w).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let app = daemon::http::router(rt);
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    let run = |extra: Vec<String>| {
        let browser = browser.clone();
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(browser)
                .args([
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--hide-scrollbars",
                ])
                .args(["--window-size=1280,1100", "--virtual-time-budget=2000"])
                .args(extra)
                .arg(url)
                .output()
                .expect("chromium runs")
        })
    };
    let dom = run(vec!["--dump-dom".into()]).await.unwrap();
    let dom = String::from_utf8_lossy(&dom.stdout).into_owned();
    assert!(dom.contains("Waiting for approval (1)"), "{dom}");
    assert!(dom.contains("mapek plans approve rem-"), "{dom}");
    let out = run(vec![format!("--screenshot={}", shot.display())])
        .await
        .unwrap();
    let png = std::fs::read(&shot).unwrap_or_else(|e| {
        panic!(
            "no screenshot at {}: {e}; chromium said {}",
            shot.display(),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
    assert!(
        png.len() > 5_000,
        "a page, not a blank: {} bytes",
        png.len()
    );
    eprintln!("status page screenshot: {}", shot.display());
    server.abort();
}
