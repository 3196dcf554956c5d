//! The simulator: determinism, the scenario library, expectations that fail when the daemon misbehaves, and refused files.

use std::path::{Path, PathBuf};

use mapek::sim::{self, scenario::Scenario};

fn library(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("simulations")
        .join(name)
}

async fn run(s: &Scenario) -> sim::report::Report {
    sim::run(s, |_| {}).await.expect("the scenario runs")
}

#[tokio::test]
async fn the_same_files_and_seed_give_a_byte_identical_report() {
    let s = Scenario::load(&library("approval-in-time.toml")).expect("loads");
    let a = run(&s).await;
    let b = run(&s).await;
    assert_eq!(a.to_json(), b.to_json());
    assert!(a.all_passed(), "{}", a.to_markdown());
    // The report says what happened, with the evidence: executed right after the 3h approval.
    assert!(
        a.to_json().contains("executed at 2026-01-05T03:0"),
        "{}",
        a.to_json()
    );
}

/// Calling the planner, the executor and verification only when something they read changed
/// gives the report that calling them in every cycle gives, for every scenario of the library.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calling_later_stages_only_on_change_gives_the_every_cycle_report_for_the_whole_library() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(library(""))
        .expect("the library")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    assert!(files.len() >= 12, "{files:?}");
    let mut saved = 0;
    for f in files {
        let s = Scenario::load(&f).expect("loads");
        let (lazy, t1) = sim::run_with(&s, sim::Schedule::OnChange, |_| {})
            .await
            .expect("runs");
        let (every, t2) = sim::run_with(&s, sim::Schedule::EveryCycle, |_| {})
            .await
            .expect("runs");
        assert_eq!(lazy.to_json(), every.to_json(), "{}", f.display());
        assert!(t1.plans <= t2.plans, "{}", f.display());
        saved += t2.plans - t1.plans;
    }
    assert!(
        saved > 1000,
        "the lazy schedule skipped only {saved} planner calls"
    );
}

#[tokio::test]
async fn telemetry_runs_are_byte_identical_too() {
    // Background traffic, an install-failure stream, a yank and a restore_latest.
    let s = Scenario::load(&library("bad-release.toml")).expect("loads");
    let a = run(&s).await;
    let b = run(&s).await;
    assert_eq!(a.to_json(), b.to_json());
    let ratio = a
        .timeline
        .iter()
        .filter_map(|s| s.install_failure_ratio)
        .fold(0.0f64, f64::max);
    assert!(ratio > 0.0, "the timeline shows the failure spike");
}

#[tokio::test]
async fn every_scenario_of_the_library_passes() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(library(""))
        .expect("simulations/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(files.len() >= 12, "{files:?}");
    for f in files {
        let s = Scenario::load(&f).unwrap_or_else(|e| panic!("{}: {e:?}", f.display()));
        let r = run(&s).await;
        assert!(r.all_passed(), "{}\n{}", f.display(), r.to_markdown());
        assert!(!r.expectations.is_empty());
    }
}

/// The tampered-artifact scenario, but with the daemon misbehaving in the ways its
/// expectations are there to catch.
#[tokio::test]
async fn expectations_fail_when_the_daemon_misbehaves() {
    let src = std::fs::read_to_string(library("tampered-artifact.toml")).expect("reads");
    // The quarantine policy only records (a daemon that does nothing): the action is missing.
    let lazy = format!(
        "{src}\n[[policy]]\nid = \"quarantine-tampered\"\non = [\"checksum_mismatch\", \"signature_invalid\"]\n\
         action = \"quarantine\"\nmode = \"dry_run\"\n"
    );
    let s = Scenario::parse(&library("lazy.toml"), &lazy).expect("parses");
    let r = run(&s).await;
    let failed: Vec<_> = r.expectations.iter().filter(|j| !j.pass).collect();
    assert!(
        failed
            .iter()
            .any(|j| j.line == 24 && j.evidence.contains("closest")),
        "{}",
        r.to_markdown()
    );
    assert!(
        failed.iter().any(|j| j.kind == "final"),
        "{}",
        r.to_markdown()
    );
    // A daemon that quarantines too much: a second tamper makes `max = 1` fail.
    let greedy = format!(
        "{src}\n[[event]]\nat = \"3h\"\nkind = \"tamper_artifact\"\npackage = \"pkg-00151\"\n"
    );
    let s = Scenario::parse(&library("greedy.toml"), &greedy).expect("parses");
    let r = run(&s).await;
    let j = r
        .expectations
        .iter()
        .find(|j| j.line == 31)
        .expect("the max = 1 expectation");
    assert!(!j.pass && j.evidence.contains("more than 1"), "{j:?}");
}

#[test]
fn invalid_scenarios_are_refused_with_file_line_and_field() {
    let cases = [
        ("[scenario]\nname = \"x\"\nduration = \"soon\"\n[registry]\ngenerate = { packages = 5 }\n", 3, "scenario.duration"),
        ("[scenario]\nname = \"x\"\nduration = \"1h\"\n[registry]\ngenerate = { packages = 5 }\n[[event]]\nat = \"1m\"\nkind = \"explode\"\n", 6, "event.kind"),
        ("[scenario]\nname = \"x\"\nduration = \"1h\"\n[registry]\ngenerate = { packages = 5 }\n[[event]]\nat = \"1m\"\nkind = \"downloads\"\npackage = \"a\"\nper_hour = -5.0\nfor = \"1h\"\n", 6, "event.per_hour"),
        ("[scenario]\nname = \"x\"\nduration = \"1h\"\n[registry]\ngenerate = { packages = 5 }\n[[event]]\nat = \"1m\"\nkind = \"install_outcomes\"\npackage = \"a\"\nper_hour = 5.0\nfailure_ratio = 1.5\nfor = \"1h\"\n", 6, "event.failure_ratio"),
        ("[scenario]\nname = \"x\"\nduration = \"1h\"\n[registry]\ngenerate = { packages = 5 }\n[[event]]\nat = \"1m\"\nkind = \"report\"\npackage = \"a\"\nreporter = \"r\"\ncategory = \"rude\"\n", 6, "event.category"),
        ("[scenario]\nname = \"x\"\nduration = \"1h\"\n[registry]\ngenerate = { packages = 5 }\n[[event]]\nat = \"1m\"\nkind = \"lookup_latency\"\nfor = \"1h\"\n", 6, "event.p99_ms"),
        ("[scenario]\nname = \"x\"\nduration = \"1h\"\n[registry]\ngenerate = { packages = 5 }\n[[expect.final]]\npackage = \"a\"\nquality_min = 120\n", 6, "expect.final.quality_min"),
        ("[scenario]\nname = \"x\"\nduration = \"1h\"\n[registry]\ngenerate = { packages = 5 }\n[[expect.action]]\naction = \"obliterate\"\npackage = \"*\"\n", 6, "expect.action.action"),
        ("[scenario]\nname = \"x\"\nduration = \"1h\"\ncolour = 1\n[registry]\ngenerate = { packages = 5 }\n", 4, "colour"),
        // Sizes held to the documented limits, and events inside the scenario's time.
        ("[scenario]\nname = \"x\"\nduration = \"1h\"\n[registry]\ngenerate = { packages = 200000000 }\n", 4, "registry.generate.packages"),
        ("[scenario]\nname = \"x\"\nduration = \"100000d\"\n[registry]\ngenerate = { packages = 5 }\n", 3, "scenario.duration"),
        ("[scenario]\nname = \"x\"\nduration = \"1d\"\ntick = \"1ms\"\n[registry]\ngenerate = { packages = 5 }\n", 4, "scenario.tick"),
        ("[scenario]\nname = \"x\"\nduration = \"1h\"\n[registry]\ngenerate = { packages = 5 }\n[[event]]\nat = \"2h\"\nkind = \"tamper_artifact\"\npackage = \"pkg-00001\"\n", 6, "event.at"),
        // `[config]` is mapek.toml's, checked the same way.
        ("[scenario]\nname = \"x\"\nduration = \"1h\"\n[registry]\ngenerate = { packages = 5 }\n[config]\nfull_scan_interval = \"often\"\n", 7, "config.full_scan_interval"),
    ];
    for (src, line, field) in cases {
        let e = Scenario::parse(Path::new("bad.toml"), src).unwrap_err();
        assert!(
            e.iter().any(|e| e.line == line && e.field == field),
            "{src}: {e:?}"
        );
    }
}

#[test]
fn the_limits_can_be_raised_for_one_run() {
    let src = "[scenario]\nname = \"x\"\nduration = \"1d\"\ntick = \"1s\"\n[registry]\ngenerate = { packages = 5 }\n";
    let strict = mapek::sim::scenario::Limits {
        max_ticks: 1_000,
        ..Default::default()
    };
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("s.toml");
    std::fs::write(&file, src).expect("write");
    assert!(
        Scenario::load_with(&file, &strict).is_err(),
        "86,400 ticks over 1,000"
    );
    assert!(Scenario::load(&file).is_ok(), "within the documented limit");
}

/// The scenario's `[config]` is the daemon's configuration for the run: a dry-run daemon
/// records the quarantine it would make and makes none; a pause holds execution until resumed.
#[tokio::test]
async fn the_simulator_honours_the_scenarios_config_and_pauses() {
    let src = std::fs::read_to_string(library("tampered-artifact.toml")).expect("reads");
    let dry = format!("{src}\n[config]\ndry_run = true\n");
    let s = Scenario::parse(&library("dry.toml"), &dry).expect("parses");
    assert!(s.config.dry_run);
    let r = run(&s).await;
    let failed: Vec<_> = r.expectations.iter().filter(|j| !j.pass).collect();
    assert!(
        failed.iter().any(|j| j.kind == "action"),
        "nothing executes in a dry-run daemon: {}",
        r.to_markdown()
    );
    // Paused from the start, resumed at 5h: the tamper at 2h is acted on only then.
    let paused = format!(
        "{}\n[[event]]\nat = \"0s\"\nkind = \"pause\"\nby = \"sre\"\n\n[[event]]\nat = \"5h\"\nkind = \"resume\"\n",
        src
    );
    let s = Scenario::parse(&library("paused.toml"), &paused).expect("parses");
    let r = run(&s).await;
    let markdown = r.to_markdown();
    let within = r
        .expectations
        .iter()
        .find(|j| j.kind == "action" && j.expectation.contains("quarantine"))
        .expect("the quarantine expectation");
    assert!(
        !within.pass,
        "held past its `within` while paused: {markdown}"
    );
    assert!(
        within.evidence.contains("T05:"),
        "executed when resumed: {markdown}"
    );
    let final_state = r
        .expectations
        .iter()
        .find(|j| j.kind == "final")
        .expect("final");
    assert!(final_state.pass, "quarantined in the end: {markdown}");
}

#[tokio::test]
async fn a_report_folder_holds_json_markdown_and_a_chart() {
    let s = Scenario::load(&library("revoked-key.toml")).expect("loads");
    let r = run(&s).await;
    let dir = tempfile::tempdir().expect("temp dir");
    r.write(dir.path()).expect("writes");
    let svg = std::fs::read_to_string(dir.path().join("timeline.svg")).expect("svg");
    assert!(
        svg.contains("<polyline") && svg.contains("quarantined"),
        "{svg}"
    );
    let md = std::fs::read_to_string(dir.path().join("report.md")).expect("md");
    assert!(md.contains("5 passed, 0 failed"), "{md}");
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("report.json")).expect("json"),
    )
    .expect("valid JSON");
    assert_eq!(json["scenario"], "revoked-key");
    assert!(json["timeline"].as_array().is_some_and(|t| t.len() > 10));
}
