//! `mapek validate` reports every problem of a configuration (file and environment) and of what it names, and passes a sound one.

use std::process::{Command, Stdio};

fn mapek(dir: &std::path::Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mapek"));
    c.current_dir(dir).env("MAPEK_LOG", "warn");
    c
}

#[test]
fn every_problem_is_reported_and_a_sound_configuration_passes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let prepared = mapek(dir.path())
        .args(["--demo", "run", "--cycles", "1"])
        .stdout(Stdio::null())
        .status()
        .expect("the demo prepares");
    assert!(prepared.success());
    let sound = mapek(dir.path())
        .args(["--demo", "validate"])
        .output()
        .expect("validate runs");
    assert!(
        sound.status.success(),
        "{}",
        String::from_utf8_lossy(&sound.stderr)
    );
    // The demo runs the whole default library.
    let dir_policies = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let library = mapek::plan::policy::PolicySet::load_dir(&dir_policies, Default::default())
        .expect("policies/ loads")
        .policies
        .len();
    let text = String::from_utf8_lossy(&sound.stdout);
    assert!(
        text.starts_with(&format!("valid: {library} policies")),
        "{text}"
    );

    std::fs::write(
        dir.path().join("bad.toml"),
        "database_url = \"mapek-demo/mapek.db\"\npolicies = \"mapek-demo/policies\"\n\
         trusted_keys = \"mapek-demo/trusted-keys.toml\"\nkey_file = \"nowhere/daemon.key\"\n\
         artifact_root = \"mapek-demo/artifacts\"\ninterval = \"soon\"\nlease_ttl = \"10ms\"\n\
         [learning]\nmax_bad_fraction = 2.0\n",
    )
    .expect("config");
    std::fs::write(
        dir.path().join("mapek-demo/policies/broken.toml"),
        "[[policy]]\nid = \"x\"\non = \"no_such_kind\"\naction = \"quarantine\"\n",
    )
    .expect("policy");
    let bad = mapek(dir.path())
        .args(["--config", "bad.toml", "validate"])
        .env("MAPEK_NOTIFY_TIMEOUT", "forever")
        .output()
        .expect("validate runs");
    assert_eq!(bad.status.code(), Some(1));
    let said = String::from_utf8_lossy(&bad.stderr);
    for expected in [
        "bad.toml:6: field `interval`",
        "bad.toml:7: field `lease_ttl`",
        "field `learning.max_bad_fraction`",
        "environment variable MAPEK_NOTIFY_TIMEOUT",
        "broken.toml",
        "daemon key: nowhere/daemon.key",
    ] {
        assert!(said.contains(expected), "missing `{expected}` in:\n{said}");
    }
    assert!(said.starts_with("6 problem(s):"), "{said}");
}
