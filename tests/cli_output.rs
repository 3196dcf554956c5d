//! What the command line prints for tools and logs: `audit log --json` entries carry `detail` as an object; logs go to stderr without colour codes when it is not a terminal; `--help` does not show the database URL from the environment.

use std::process::{Command, Stdio};

#[test]
fn json_entries_carry_detail_as_an_object_and_logs_carry_no_colour_codes_off_a_terminal() {
    let dir = tempfile::tempdir().expect("temp dir");
    let bin = env!("CARGO_BIN_EXE_mapek");
    let run = Command::new(bin)
        .args(["--demo", "run", "--once"])
        .current_dir(dir.path())
        .env("MAPEK_LOG", "info")
        .env_remove("MAPEK_LOG_FORMAT")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("the demo runs");
    assert!(run.status.success());
    let logs = String::from_utf8_lossy(&run.stderr);
    assert!(logs.contains("INFO"), "the logs are on stderr: {logs}");
    assert!(
        !logs.contains('\u{1b}'),
        "no colour codes in a pipe: {logs}"
    );

    let log = Command::new(bin)
        .args(["--demo", "audit", "log", "--json"])
        .current_dir(dir.path())
        .output()
        .expect("audit log");
    assert!(log.status.success());
    let text = String::from_utf8_lossy(&log.stdout);
    let first = text.lines().next().expect("an entry");
    let entry: serde_json::Value = serde_json::from_str(first).expect("a JSON line");
    assert!(entry["detail"].is_object(), "{first}");
    assert!(entry["detail"]["policy"].is_string(), "{first}");
}

#[test]
fn help_does_not_show_the_database_url_of_the_environment() {
    let out = Command::new(env!("CARGO_BIN_EXE_mapek"))
        .arg("--help")
        .env("MAPEK_DATABASE_URL", "postgres://secret@db/prod")
        .output()
        .expect("help");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("MAPEK_DATABASE_URL"), "{text}");
    assert!(!text.contains("secret"), "{text}");
}
