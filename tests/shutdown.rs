//! Shutdown with real processes: the first SIGTERM closes the listener and waits out the grace period for a stuck action, then names it and exits 1; a second signal exits at once; a clean stop exits 0 though stages failed before.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use mapek::knowledge::Store;
use mapek::registry::SqlRegistry;

/// The demo, one of its releases tampered behind the registry's back, and a daemon whose
/// executor hangs once it has written that quarantine's intent (as on an action that never
/// answers). Returns the daemon, its output lines (logs on stdout, the stall on stderr), and
/// its HTTP port.
async fn stuck_daemon(dir: &Path, grace: &str) -> (Child, mpsc::Receiver<String>, u16) {
    daemon_with(
        dir,
        grace,
        ("MAPEK_TEST_STALL_AT", "intents"),
        "stalled at intents",
    )
    .await
}

/// The demo with a tampered release and a daemon run with one `MAPEK_TEST_*` fault, once its
/// output shows `until`.
async fn daemon_with(
    dir: &Path,
    grace: &str,
    fault: (&str, &str),
    until: &str,
) -> (Child, mpsc::Receiver<String>, u16) {
    let demo = common::prepare_demo(dir, "mapek-demo/mapek.db");
    let store = Store::open(&format!("sqlite://{}", demo.join("mapek.db").display()))
        .await
        .expect("store");
    common::tamper(
        &SqlRegistry::new(store.clone(), demo.join("artifacts")),
        "pkg-00150",
    )
    .await;
    store.close().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let config = dir.join("mapek.toml");
    std::fs::write(
        &config,
        format!(
            "database_url = \"{0}/mapek.db\"\npolicies = \"{0}/policies\"\ntrusted_keys = \"{0}/trusted-keys.toml\"\n\
             key_file = \"{0}/daemon.key\"\nartifact_root = \"{0}/artifacts\"\ninterval = \"200ms\"\n\
             full_scan_interval = \"1s\"\nshutdown_grace = \"{grace}\"\nlisten = \"127.0.0.1:{port}\"\n",
            demo.display()
        ),
    )
    .expect("config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_mapek"))
        .args(["--config", &config.display().to_string(), "run"])
        .env("MAPEK_LOG", "info")
        .env("MAPEK_LOG_FORMAT", "pretty")
        .env(fault.0, fault.1)
        .env_remove("NOTIFY_SOCKET")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the daemon starts");
    let (tx, rx) = mpsc::channel();
    let out: Box<dyn Read + Send> = Box::new(child.stdout.take().expect("stdout"));
    let err: Box<dyn Read + Send> = Box::new(child.stderr.take().expect("stderr"));
    for pipe in [out, err] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    let mut seen = Vec::new();
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("the daemon never logged `{until}`: {seen:#?}"));
        if line.contains(until) {
            break;
        }
        seen.push(line);
    }
    (child, rx, port)
}

fn term(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

/// `GET /healthz` answered, or None when nothing listens.
fn healthz(port: u16) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .ok()?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).ok()?;
    Some(answer)
}

/// Waits for the process to end, at most `limit`.
fn exited_within(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().expect("wait") {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_that_outlasts_the_grace_period_is_named_and_the_daemon_exits_1() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut child, rx, port) = stuck_daemon(dir.path(), "1s").await;
    assert!(healthz(port).is_some_and(|a| a.starts_with("HTTP/1.1 200")));
    term(&child);
    // The stuck action would hang for an hour: the daemon gives it the grace period only.
    let status = exited_within(&mut child, Duration::from_secs(30));
    let Some(status) = status else {
        let _ = child.kill();
        panic!("the daemon did not stop when the grace period ran out");
    };
    assert_eq!(status.code(), Some(1), "a cut-off stage is a failed stop");
    // The rest of its output, to the end (the readers stop when the pipes close).
    let mut log = Vec::new();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(10)) {
        log.push(line);
    }
    let named = log
        .iter()
        .find(|l| l.contains("the grace period is over"))
        .unwrap_or_else(|| panic!("the cut-off is not logged: {log:#?}"));
    assert!(named.contains("\"execute\""), "{named}");
    assert!(
        !named.contains("\"monitor\""),
        "only the stuck stage: {named}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_signal_closes_the_listener_and_a_second_one_exits_at_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut child, _rx, port) = stuck_daemon(dir.path(), "10m").await;
    assert!(healthz(port).is_some_and(|a| a.starts_with("HTTP/1.1 200")));
    term(&child);
    // Intake stops: the listener closes while the stuck stage still has its grace period.
    let deadline = Instant::now() + Duration::from_secs(20);
    while healthz(port).is_some() {
        assert!(Instant::now() < deadline, "the listener stayed open");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        child.try_wait().expect("wait").is_none(),
        "the daemon waits for its stages"
    );
    term(&child);
    let status = exited_within(&mut child, Duration::from_secs(10));
    let Some(status) = status else {
        let _ = child.kill();
        panic!("a second signal did not end the daemon");
    };
    assert_eq!(status.code(), Some(130));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_stop_exits_0_though_stages_failed_before() {
    let dir = tempfile::tempdir().expect("temp dir");
    // The executor fails its first two runs (as on a lost connection), then quarantines.
    let (mut child, rx, _port) = daemon_with(
        dir.path(),
        "10s",
        ("MAPEK_TEST_FAIL_AT", "execute:2"),
        "remediation executed",
    )
    .await;
    term(&child);
    let status = exited_within(&mut child, Duration::from_secs(30));
    let Some(status) = status else {
        let _ = child.kill();
        panic!("the daemon did not stop");
    };
    let mut log = Vec::new();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(10)) {
        log.push(line);
    }
    let stopped = log
        .iter()
        .find(|l| l.contains("mapek stopped"))
        .unwrap_or_else(|| panic!("no stop line: {log:#?}"));
    assert!(plain(stopped).contains("stage_errors=2"), "{stopped}");
    assert_eq!(
        status.code(),
        Some(0),
        "a SIGTERM within the grace period is a clean stop, whatever failed before"
    );
}

/// A log line without its terminal colours.
fn plain(line: &str) -> String {
    let mut out = String::new();
    let mut escape = false;
    for c in line.chars() {
        match (escape, c) {
            (false, '\u{1b}') => escape = true,
            (true, 'm') => escape = false,
            (true, _) => {}
            (false, c) => out.push(c),
        }
    }
    out
}
