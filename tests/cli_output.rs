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

fn mapek_in(dir: &std::path::Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mapek"))
        .args(args)
        .current_dir(dir)
        .env("MAPEK_LOG", "warn")
        .output()
        .expect("mapek runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn verify_names_unsigned_files_with_the_next_step_and_sign_takes_a_directory() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (ok, text) = mapek_in(dir.path(), &["--demo", "run", "--once"]);
    assert!(ok, "{text}");
    let key = "mapek-demo/keys/maint-alice.key";
    let (ok, text) = mapek_in(
        dir.path(),
        &[
            "--demo",
            "policy",
            "sign",
            "mapek-demo/policies/integrity.toml",
            "--key",
            key,
        ],
    );
    assert!(ok, "{text}");
    // One file signed: it verifies, the others are named as unsigned with the command that
    // signs them, and that is not a failure unless signatures are required.
    let (ok, text) = mapek_in(
        dir.path(),
        &["--demo", "policy", "verify", "mapek-demo/policies"],
    );
    assert!(ok, "{text}");
    assert!(
        text.contains("ok    mapek-demo/policies/integrity.toml  signed by `maint-alice`"),
        "{text}"
    );
    assert!(
        text.contains("mapek-demo/policies/guards.toml  unsigned: `mapek policy sign mapek-demo/policies/guards.toml --key KEY`"),
        "{text}"
    );
    let (ok, text) = mapek_in(
        dir.path(),
        &[
            "--demo",
            "policy",
            "verify",
            "mapek-demo/policies",
            "--require-signed",
        ],
    );
    assert!(
        !ok,
        "unsigned files fail when signatures are required: {text}"
    );
    assert!(
        text.contains("FAIL  mapek-demo/policies/guards.toml  unsigned"),
        "{text}"
    );
    // Signing the directory signs every policy file; then everything verifies, even required.
    let (ok, text) = mapek_in(
        dir.path(),
        &[
            "--demo",
            "policy",
            "sign",
            "mapek-demo/policies",
            "--key",
            key,
        ],
    );
    assert!(ok, "{text}");
    assert!(text.contains("guards.toml.sig"), "{text}");
    let (ok, text) = mapek_in(
        dir.path(),
        &[
            "--demo",
            "policy",
            "verify",
            "mapek-demo/policies",
            "--require-signed",
        ],
    );
    assert!(ok, "{text}");
    assert!(
        text.contains(" 0 with a bad signature, 0 unsigned"),
        "{text}"
    );
    // A signed file changed afterwards is a failure, with what to do.
    let guards = dir.path().join("mapek-demo/policies/guards.toml");
    let edited = std::fs::read_to_string(&guards).unwrap() + "\n# edited\n";
    std::fs::write(&guards, edited).unwrap();
    let (ok, text) = mapek_in(
        dir.path(),
        &["--demo", "policy", "verify", "mapek-demo/policies"],
    );
    assert!(!ok, "{text}");
    assert!(text.contains("guards.toml  bad signature"), "{text}");
    assert!(text.contains("review the change"), "{text}");
}

#[test]
fn run_without_a_configuration_fails_before_creating_anything_and_says_each_cause_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = Command::new(env!("CARGO_BIN_EXE_mapek"))
        .args(["run", "--once"])
        .current_dir(dir.path())
        .env_remove("MAPEK_DATABASE_URL")
        .output()
        .expect("mapek runs");
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("daemon.key: cannot read"), "{text}");
    assert!(
        text.contains("mapek keys generate --id daemon --out ."),
        "{text}"
    );
    assert_eq!(
        text.matches("No such file or directory").count(),
        1,
        "{text}"
    );
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "nothing is created: {left:?}");
}
