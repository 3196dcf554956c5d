//! The daemon as systemd runs it: READY once its stores are open, WATCHDOG from each cycle, STOPPING at the end, on a notify socket of the test's own.

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
    assert!(
        messages[0].contains("STATUS=watching the registry; 3 policies"),
        "{messages:?}"
    );
}
