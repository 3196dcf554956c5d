//! The metrics catalogue: every registered metric documented and every documented one registered; the alerts and the dashboard use only real metrics; `promtool check metrics` passes on a live exposition.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::{default_policies, world};
use mapek::daemon::metrics::Metrics;
use mapek::daemon::reload::PolicySource;
use mapek::daemon::{self, RunOptions};

fn root(path: &str) -> String {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Every `mapek_*` name in a text, with a histogram's series suffixes taken off.
fn names_in(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in text.match_indices("mapek_") {
        let before = text[..i].chars().next_back();
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        let name: String = text[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let name = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|s| name.strip_suffix(s).map(str::to_string))
            .unwrap_or(name);
        out.insert(name);
    }
    out
}

fn registered() -> BTreeSet<String> {
    Metrics::new().expect("metrics").names.into_iter().collect()
}

#[test]
fn the_catalogue_lists_exactly_the_registered_metrics() {
    let docs = root("docs/metrics.md");
    let catalogue = docs
        .split("## Catalogue")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("a Catalogue section");
    let documented: BTreeSet<String> = catalogue
        .lines()
        .filter(|l| l.starts_with("| `mapek_"))
        .flat_map(names_in)
        .filter(|n| !n.ends_with("_bucket"))
        .collect();
    let registered = registered();
    let undocumented: Vec<_> = registered.difference(&documented).collect();
    let phantom: Vec<_> = documented.difference(&registered).collect();
    assert!(
        undocumented.is_empty(),
        "registered, not in docs/metrics.md: {undocumented:?}"
    );
    assert!(
        phantom.is_empty(),
        "in docs/metrics.md, not registered: {phantom:?}"
    );
    assert!(registered.len() >= 25, "{registered:?}");
}

#[test]
fn the_alerts_and_the_dashboard_use_only_registered_metrics() {
    let registered = registered();
    for file in ["deploy/prometheus/alerts.yml", "deploy/grafana/mapek.json"] {
        let used = names_in(&root(file));
        assert!(used.len() >= 5, "{file}: {used:?}");
        let unknown: Vec<_> = used.difference(&registered).collect();
        assert!(
            unknown.is_empty(),
            "{file} uses unknown metrics: {unknown:?}"
        );
    }
    let dashboard: serde_json::Value =
        serde_json::from_str(&root("deploy/grafana/mapek.json")).expect("the dashboard is JSON");
    assert!(dashboard["panels"].as_array().expect("panels").len() > 10);
}

/// `promtool check metrics` over what a daemon serves after two cycles; promtool comes from
/// Debian's `prometheus` package (CI installs it). Outside CI, without promtool, skipped.
#[tokio::test]
async fn promtool_accepts_the_exposition() {
    let promtool = Command::new("promtool").arg("--version").output();
    if promtool.is_err() {
        assert!(
            std::env::var("CI").is_err(),
            "promtool is missing in CI (apt-get install prometheus)"
        );
        common::skip(
            "promtool check metrics",
            "no promtool (Debian's prometheus package has it; CI installs it)",
        );
        return;
    }
    let w = world(15).await;
    w.plant_problems().await;
    let rt = Arc::new(w.runtime(PolicySource::fixed(default_policies())));
    daemon::run(
        rt.clone(),
        RunOptions {
            cycles: Some(2),
            interval: Duration::from_millis(10),
            grace: Duration::from_secs(30),
        },
        tokio_util::sync::CancellationToken::new(),
    )
    .await
    .expect("two cycles");
    let text = rt.metrics.render();
    assert!(text.contains("mapek_build_info{version="), "{text}");
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("exposition written");
    let out = child.wait_with_output().expect("promtool ends");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool check metrics: {said}");
    assert!(said.trim().is_empty(), "promtool's lint: {said}");
}
