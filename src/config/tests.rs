//! The configuration's unit tests: unknown fields and bad values refused naming their line and field, paths, and the deployed example documenting every setting.

use super::*;

#[test]
fn unknown_field_is_refused_with_line_and_field() {
    let src = "interval = \"30s\"\nlisen = \"127.0.0.1:1\"\n";
    let err = Config::parse(Path::new("/etc/mapek.toml"), src).unwrap_err();
    let msg = err.to_string();
    assert!(msg.starts_with("/etc/mapek.toml:2: field `lisen`"), "{msg}");
}

#[test]
fn bad_duration_names_its_line() {
    let src = "\n\ninterval = \"soon\"\n";
    let err = Config::parse(Path::new("m.toml"), src).unwrap_err();
    assert!(
        err.to_string().starts_with("m.toml:3: field `interval`"),
        "{err}"
    );
}

#[test]
fn learning_settings_are_read_and_a_bad_fraction_names_its_field() {
    let src = "[learning]\nwindow = \"7d\"\nmin_judged = 5\nmax_bad_fraction = 0.75\n";
    let c = Config::parse(Path::new("m.toml"), src).unwrap();
    assert_eq!(c.learning.window, Duration::from_secs(7 * 86_400));
    assert_eq!(
        (c.learning.min_judged, c.learning.max_bad_fraction),
        (5, 0.75)
    );
    let err = Config::parse(
        Path::new("m.toml"),
        "[learning]\n\nmax_bad_fraction = 1.5\n",
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.starts_with("m.toml:3: field `learning.max_bad_fraction`"),
        "{err}"
    );
}

#[test]
fn the_retention_schedule_is_a_cron_expression_and_a_bad_one_names_its_field() {
    let src = "[retention]\nschedule = \"0 0 4 * * Sun\"\nresolved_findings = \"30d\"\n";
    let c = Config::parse(Path::new("m.toml"), src).unwrap();
    // 2026-11-22 is a Sunday: from 05:00 that day, the next run is a week later at 04:00.
    let now = 1_795_323_600_000; // 2026-11-22T05:00:00Z
    assert_eq!(
        c.compaction.next_after(now),
        Some(now + 7 * 86_400_000 - 3_600_000)
    );
    assert_eq!(
        c.compaction.resolved_findings,
        Duration::from_secs(30 * 86_400)
    );
    let err = Config::parse(Path::new("m.toml"), "[retention]\nschedule = \"daily\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("m.toml:2: field `retention.schedule`"),
        "{err}"
    );
}

#[test]
fn relative_paths_resolve_against_the_file() {
    let src = "policies = \"pol\"\ndatabase_url = \"state/m.db\"\ninterval = \"15s\"\n";
    let c = Config::parse(Path::new("/srv/mapek/mapek.toml"), src).unwrap();
    assert_eq!(c.policies, PathBuf::from("/srv/mapek/pol"));
    assert_eq!(c.database_url, "/srv/mapek/state/m.db");
    assert_eq!(c.interval, Duration::from_secs(15));
}

#[test]
fn the_deployed_example_documents_every_setting() {
    let src = include_str!("file.rs");
    let (Some(start), Some(end)) = (
        src.find("struct ConfigFile"),
        src.find("struct RetentionFile"),
    ) else {
        panic!("the ConfigFile struct moved");
    };
    let example = include_str!("../../deploy/mapek.toml");
    let fields: Vec<&str> = src[start..end]
        .lines()
        .filter_map(|l| l.trim().split_once(": Option<").map(|(name, _)| name))
        .map(|name| name.trim_start_matches("pub(crate) "))
        .collect();
    assert!(fields.len() > 20, "{fields:?}");
    for field in fields {
        assert!(
            example.contains(&format!("{field} =")) || example.contains(&format!("[{field}")),
            "deploy/mapek.toml does not document `{field}`"
        );
    }
    // The example itself is a valid configuration.
    Config::parse(Path::new("/etc/mapek/mapek.toml"), example).expect("the example parses");
}

#[test]
fn every_problem_is_collected_with_its_line_and_field() {
    let src = "interval = \"soon\"\nintervall = \"1m\"\n[learning]\nwindw = \"7d\"\nmin_judged = 0\n[registry]\nkind = \"ftp\"\n";
    let errors = Config::parse(Path::new("m.toml"), src)
        .expect_err("refused")
        .0;
    let lines: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    assert_eq!(lines.len(), 5, "{lines:#?}");
    for expected in [
        "m.toml:1: field `interval`",
        "m.toml:2: field `intervall`: unknown setting",
        "m.toml:4: field `learning.windw`: unknown setting",
        "m.toml:5: field `learning.min_judged`",
        "m.toml:7: field `registry.kind`",
    ] {
        assert!(
            lines.iter().any(|l| l.starts_with(expected)),
            "{expected}: {lines:#?}"
        );
    }
}

#[test]
fn token_files_are_read_after_parsing_not_while() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("m.toml");
    let src = "intake_token_file = \"missing.token\"\n";
    let mut c = Config::parse(&path, src).expect("parsing reads no file");
    assert_eq!(c.intake_token_file, Some(dir.path().join("missing.token")));
    let e = c.load_secrets().expect_err("the file is missing");
    assert!(e.to_string().contains("intake_token_file"), "{e}");
    std::fs::write(dir.path().join("missing.token"), "0123456789abcdef0123\n").expect("write");
    c.load_secrets().expect("read now");
    assert_eq!(c.intake_token.as_deref(), Some("0123456789abcdef0123"));
}
