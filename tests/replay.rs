//! Replay: a proposed policy set over the findings of a period, beside what the daemon did; the same set differs nowhere, a changed one exactly where it changes a decision.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::{default_policies, world};
use mapek::daemon::reload::PolicySource;
use mapek::daemon::{self, RunOptions};
use mapek::plan::policy::PolicySet;
use mapek::plan::replay;

fn set(src: &str) -> PolicySet {
    PolicySet::from_sources(&[(PathBuf::from("p.toml"), src.to_string())]).expect("loads")
}

#[tokio::test]
async fn a_changed_policy_set_differs_exactly_where_its_decisions_change() {
    let w = world(20).await;
    w.plant_problems().await;
    let rt = Arc::new(w.runtime(PolicySource::fixed(default_policies())));
    daemon::run(
        rt,
        RunOptions {
            cycles: Some(1),
            interval: Duration::from_millis(10),
            grace: Duration::from_secs(30),
        },
        Default::default(),
    )
    .await
    .expect("a cycle");
    let since = 0;

    let same = replay::replay(&w.t.store, w.registry.as_ref(), &default_policies(), since)
        .await
        .expect("replay");
    assert_eq!(same.lines.len(), 4, "the four planted findings fired");
    assert_eq!(same.differing().count(), 0, "{:?}", same.lines);

    // Tampered artifacts yanked instead of quarantined; untrusted signers left alone.
    let proposed = set(r#"
[[policy]]
id = "yank-tampered"
on = ["checksum_mismatch", "signature_invalid"]
action = "yank"
mode = "enforce"
"#);
    let changed = replay::replay(&w.t.store, w.registry.as_ref(), &proposed, since)
        .await
        .expect("replay");
    let differing: Vec<_> = changed.differing().collect();
    assert_eq!(differing.len(), 4, "{differing:?}");
    let untrusted = differing
        .iter()
        .find(|l| l.kind == "signer_untrusted")
        .expect("the untrusted signer");
    assert!(untrusted.proposed.is_none());
    assert!(untrusted
        .differs
        .as_deref()
        .is_some_and(|w| w.contains("would not act")));
    let tampered = differing
        .iter()
        .find(|l| l.kind == "checksum_mismatch")
        .expect("the tampered artifact");
    assert_eq!(
        tampered.proposed.as_ref().map(|p| p.action.as_str()),
        Some("yank")
    );
    assert_eq!(
        tampered.actual.as_ref().map(|a| a.status.as_str()),
        Some("executed")
    );

    // Nothing fired after now: nothing to replay.
    let later = replay::replay(&w.t.store, w.registry.as_ref(), &proposed, i64::MAX)
        .await
        .expect("replay");
    assert!(later.lines.is_empty());
}
