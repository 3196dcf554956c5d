//! The daemon as systemd runs it: READY once its stores are open, WATCHDOG from each cycle, STOPPING at the end, on a notify socket of the test's own.

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::Duration;

#[test]
fn the_daemon_notifies_ready_then_a_watchdog_per_cycle_then_stopping() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).expect("notify socket");
    let status = Command::new(env!("CARGO_BIN_EXE_mapek"))
        .args(["--demo", "run", "--cycles", "2"])
        .current_dir(dir.path())
        .env("NOTIFY_SOCKET", &path)
        .env("MAPEK_LOG", "warn")
        .status()
        .expect("the daemon runs");
    assert!(status.success(), "{status}");
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let mut messages = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = socket.recv(&mut buf) {
        messages.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    let kinds: Vec<&str> = messages
        .iter()
        .map(|m| m.lines().next().unwrap_or_default())
        .collect();
    assert_eq!(
        kinds,
        vec!["READY=1", "WATCHDOG=1", "WATCHDOG=1", "STOPPING=1"],
        "{messages:?}"
    );
    let library = common::default_policies().policies.len();
    assert!(
        messages[0].contains(&format!("STATUS=watching the registry; {library} policies")),
        "{messages:?}"
    );
}

#[test]
fn sigterm_stops_the_daemon_cleanly_and_says_so() {
    let dir = tempfile::tempdir().expect("temp dir");
    // The demo's store and keys, prepared by a counted run; then a configuration of our own
    // (no HTTP listener, a short interval) for the daemon that runs until it is told to stop.
    let demo = common::prepare_demo(dir.path(), "mapek-demo/mapek.db");
    let config = dir.path().join("mapek.toml");
    std::fs::write(
        &config,
        format!(
            "database_url = \"{0}/mapek.db\"\npolicies = \"{0}/policies\"\ntrusted_keys = \"{0}/trusted-keys.toml\"\n\
             key_file = \"{0}/daemon.key\"\nartifact_root = \"{0}/artifacts\"\ninterval = \"1s\"\nshutdown_grace = \"10s\"\n",
            demo.display()
        ),
    )
    .expect("config");
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).expect("notify socket");
    socket
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let mut child = common::Daemon(
        Command::new(env!("CARGO_BIN_EXE_mapek"))
            .args(["--config", &config.display().to_string(), "run"])
            .env("NOTIFY_SOCKET", &path)
            .env("MAPEK_LOG", "warn")
            .spawn()
            .expect("the daemon starts"),
    );
    let mut buf = [0u8; 4096];
    let n = socket.recv(&mut buf).expect("a notification");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("READY=1"));
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let status = child.wait().expect("the daemon exits");
    assert!(status.success(), "{status}");
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let mut rest = Vec::new();
    while let Ok(n) = socket.recv(&mut buf) {
        rest.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(rest.iter().any(|m| m.starts_with("STOPPING=1")), "{rest:?}");
}

#[test]
fn sighup_reloads_the_policies_between_reloading_and_ready() {
    let dir = tempfile::tempdir().expect("temp dir");
    common::prepare_demo(dir.path(), "mapek-demo/mapek.db");
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).expect("notify socket");
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut child = common::Daemon(
        Command::new(env!("CARGO_BIN_EXE_mapek"))
            .args(["--demo", "run"])
            .current_dir(dir.path())
            .env("NOTIFY_SOCKET", &path)
            .env("MAPEK_LOG", "warn")
            // The environment overrides the demo's settings: a short cycle, no listener needed.
            .env("MAPEK_INTERVAL", "200ms")
            .env("MAPEK_LISTEN", "127.0.0.1:0")
            .spawn()
            .expect("the daemon starts"),
    );
    let mut buf = [0u8; 4096];
    let mut next = || {
        let n = socket.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert!(next().starts_with("READY=1"));
    let hup = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(hup.success());
    let mut seen = Vec::new();
    while !seen.iter().any(|m: &String| m.starts_with("RELOADING=1")) {
        seen.push(next());
        assert!(seen.len() < 200, "no RELOADING=1 after SIGHUP: {seen:?}");
    }
    let after = next();
    assert!(
        after.starts_with("READY=1"),
        "READY=1 follows RELOADING=1: {after}"
    );
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}
