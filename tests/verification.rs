//! Verification, escalation and learning on a real store: a remediation that does not clear its finding is retried, escalated, then given up on; an ineffective policy is demoted until a maintainer re-enables it.

mod common;

use std::path::PathBuf;

use common::{world, World, NOW};
use mapek::analyze::{self, Rules};
use mapek::execute::learn::{self, LearningSettings};
use mapek::execute::verify::{self, Verdict};
use mapek::knowledge::audit::verify_chain;
use mapek::knowledge::findings::{FindingState, PlanState};
use mapek::knowledge::remediations::{Remediation, Status};
use mapek::model::FindingKind;
use mapek::monitor::{self, MonitorState};
use mapek::plan::policy::PolicySet;
use mapek::registry::Registry;

const MINUTE: i64 = 60_000;

const ESCALATING: &str = r#"
[[policy]]
id = "quarantine-tampered"
on = "checksum_mismatch"
action = "quarantine"
mode = "enforce"
cooldown = "1h"
verify_after = "15m"
max_attempts = 2
escalate_to = "yank-tampered"

[[policy]]
id = "yank-tampered"
on = "checksum_mismatch"
when = "false"
action = "yank"
mode = "enforce"
verify_after = "15m"
max_attempts = 1
"#;

fn policies(src: &str) -> PolicySet {
    PolicySet::from_sources(&[(PathBuf::from("p.toml"), src.to_string())]).expect("loads")
}

async fn tamper(w: &World, package: &str) {
    let r = w.registry.release(package, "1.0.0").await.unwrap().unwrap();
    w.registry
        .tamper_artifact(r.artifact.as_deref().unwrap())
        .unwrap();
}

/// Every stage once, as the simulator runs them, followed by verification.
async fn cycle(w: &World, state: &mut MonitorState, set: &PolicySet, now: i64) -> Vec<Verdict> {
    let m = monitor::cycle(state, &w.registry, &w.t.store, &w.trust, now, 3_600_000)
        .await
        .unwrap();
    analyze::cycle(&w.t.store, &m.observations, &Rules::default(), now)
        .await
        .unwrap();
    common::plan(w, set, false, now).await;
    mapek::execute::cycle(&w.t.store, &w.registry, &w.key, now)
        .await
        .unwrap();
    verify::cycle(&w.t.store, set, &w.key, now)
        .await
        .unwrap()
        .verdicts
        .into_iter()
        .map(|(_, v)| v)
        .collect()
}

async fn remediations_of(w: &World, package: &str) -> Vec<Remediation> {
    let mut all: Vec<_> =
        w.t.store
            .recent_remediations(1000)
            .await
            .unwrap()
            .into_iter()
            .filter(|r| r.subject.package == package)
            .collect();
    all.sort_by_key(|r| (r.created_at, r.id.clone()));
    all
}

#[tokio::test]
async fn a_remediation_that_does_not_clear_its_finding_is_retried_escalated_then_given_up() {
    let w = world(6).await;
    tamper(&w, "pkg-00002").await;
    let set = policies(ESCALATING);
    let mut state = MonitorState::new();
    let mut verdicts = Vec::new();
    for step in 0..6 {
        verdicts.extend(cycle(&w, &mut state, &set, NOW + step * 16 * MINUTE).await);
    }
    assert_eq!(
        verdicts,
        vec![
            Verdict::Retry { next: 2 },
            Verdict::Escalated {
                to: "yank-tampered".into()
            },
            Verdict::GaveUp {
                reason:
                    "1 attempts of `yank-tampered` did not clear it, and it escalates to nothing"
                        .into()
            },
        ]
    );
    let done: Vec<_> = remediations_of(&w, "pkg-00002")
        .await
        .iter()
        .map(|r| (r.policy.clone(), r.attempt, r.status, r.verdict))
        .collect();
    let ineffective = || Some(mapek::model::Verification::Ineffective);
    assert_eq!(
        done,
        vec![
            (
                "quarantine-tampered".into(),
                1,
                Status::Executed,
                ineffective()
            ),
            (
                "quarantine-tampered".into(),
                2,
                Status::Executed,
                ineffective()
            ),
            ("yank-tampered".into(), 1, Status::Executed, ineffective()),
        ],
        "a retry is not held by the policy's 1h cooldown; nothing runs after giving up"
    );
    let release = w
        .registry
        .release("pkg-00002", "1.0.0")
        .await
        .unwrap()
        .unwrap();
    assert!(release.quarantined && release.yanked);

    // The daemon stops acting on the package and raises a finding for a person.
    let store = &w.t.store;
    let holds = store
        .open_findings_of(FindingKind::PolicyIneffective)
        .await
        .unwrap();
    assert_eq!(holds.len(), 1);
    assert_eq!(holds[0].subject.package, "pkg-00002");
    assert!(store.held_packages().await.unwrap().contains("pkg-00002"));
    let original = store
        .open_findings_of(FindingKind::ChecksumMismatch)
        .await
        .unwrap();
    assert_eq!(original[0].plan_state, PlanState::Exhausted);

    // A person fixes the release; once its finding resolves, the hold ends.
    sqlx::query("UPDATE findings SET state = 'resolved' WHERE id = $1")
        .bind(original[0].id.clone())
        .execute(store.raw_pool())
        .await
        .unwrap();
    let out = verify::cycle(store, &set, &w.key, NOW + 200 * MINUTE)
        .await
        .unwrap();
    assert_eq!(out.released, vec!["pkg-00002".to_string()]);
    assert!(store.held_packages().await.unwrap().is_empty());

    let entries = store.audit_entries().await.unwrap();
    assert!(verify_chain(&entries, &w.key.public()).is_ok());
    let verified = entries
        .iter()
        .filter(|e| e.kind == "remediation.verified")
        .count();
    assert_eq!(verified, 3);
}

#[tokio::test]
async fn a_cleared_finding_makes_the_remediation_effective_and_is_counted_for_its_policy() {
    let w = world(6).await;
    tamper(&w, "pkg-00003").await;
    let set = policies(ESCALATING);
    let mut state = MonitorState::new();
    assert!(cycle(&w, &mut state, &set, NOW).await.is_empty());
    // Not due before `verify_after`.
    let early = verify::cycle(&w.t.store, &set, &w.key, NOW + 14 * MINUTE)
        .await
        .unwrap();
    assert!(early.verdicts.is_empty());
    sqlx::query("UPDATE findings SET state = 'resolved' WHERE kind = 'checksum_mismatch'")
        .execute(w.t.store.raw_pool())
        .await
        .unwrap();
    let out = verify::cycle(&w.t.store, &set, &w.key, NOW + 15 * MINUTE)
        .await
        .unwrap();
    assert_eq!(out.verdicts.len(), 1);
    assert_eq!(out.verdicts[0].1, Verdict::Effective);
    let learned = learn::cycle(
        &w.t.store,
        &w.key,
        &LearningSettings::default(),
        NOW + 16 * MINUTE,
    )
    .await
    .unwrap();
    let q = learned
        .outcomes
        .iter()
        .find(|o| o.policy == "quarantine-tampered")
        .expect("the policy's figures");
    assert_eq!((q.executed, q.effective, q.failed_verification), (1, 1, 0));
    assert!(learned.demoted.is_empty());
}

const ONCE: &str = r#"
[[policy]]
id = "quarantine-tampered"
on = "checksum_mismatch"
action = "quarantine"
mode = "enforce"
verify_after = "15m"
max_attempts = 1
"#;

#[tokio::test]
async fn a_policy_that_keeps_failing_is_demoted_to_dry_run_until_a_maintainer_enables_it() {
    let w = world(8).await;
    let set = policies(ONCE);
    let mut state = MonitorState::new();
    for p in ["pkg-00001", "pkg-00002", "pkg-00003"] {
        tamper(&w, p).await;
    }
    let settings = LearningSettings::default();
    cycle(&w, &mut state, &set, NOW).await;
    let verdicts = cycle(&w, &mut state, &set, NOW + 16 * MINUTE).await;
    assert_eq!(verdicts.len(), 3);
    let store = &w.t.store;
    let learned = learn::cycle(store, &w.key, &settings, NOW + 17 * MINUTE)
        .await
        .unwrap();
    assert_eq!(learned.demoted, vec!["quarantine-tampered".to_string()]);
    assert!(store
        .demoted_policies()
        .await
        .unwrap()
        .contains("quarantine-tampered"));
    let raised = store
        .open_findings_of(FindingKind::PolicyIneffective)
        .await
        .unwrap();
    assert!(raised
        .iter()
        .any(|f| f.subject.package == "*" && f.message.contains("mapek policy enable")));

    // Demoted: a new tampered release is only recorded as a dry run.
    tamper(&w, "pkg-00005").await;
    cycle(&w, &mut state, &set, NOW + 90 * MINUTE).await;
    let fifth = remediations_of(&w, "pkg-00005").await;
    assert_eq!(fifth.len(), 1);
    assert_eq!(
        (fifth[0].status, fifth[0].gate, fifth[0].mode),
        (
            Status::DryRun,
            Some(mapek::model::Gate::Demoted),
            mapek::model::Mode::DryRun
        )
    );
    assert!(
        !w.registry
            .release("pkg-00005", "1.0.0")
            .await
            .unwrap()
            .unwrap()
            .quarantined
    );
    // Learning does not demote twice.
    let again = learn::cycle(store, &w.key, &settings, NOW + 91 * MINUTE)
        .await
        .unwrap();
    assert!(again.demoted.is_empty());

    // A maintainer re-enables it: it acts again, and its figures count afresh.
    assert!(learn::enable(
        store,
        &w.key,
        "quarantine-tampered",
        "maint-alice",
        NOW + 100 * MINUTE
    )
    .await
    .unwrap());
    assert!(!learn::enable(
        store,
        &w.key,
        "quarantine-tampered",
        "maint-alice",
        NOW + 101 * MINUTE
    )
    .await
    .unwrap());
    assert!(store.demoted_policies().await.unwrap().is_empty());
    let after = learn::cycle(store, &w.key, &settings, NOW + 102 * MINUTE)
        .await
        .unwrap();
    assert!(after.demoted.is_empty(), "old failures do not count again");
    let open = store
        .open_findings_of(FindingKind::PolicyIneffective)
        .await
        .unwrap();
    assert!(open.iter().all(|f| f.subject.package != "*"));
    let entries = store.audit_entries().await.unwrap();
    assert!(verify_chain(&entries, &w.key.public()).is_ok());
    let kinds: Vec<&str> = entries.iter().map(|e| e.kind.as_str()).collect();
    assert!(kinds.contains(&"policy.demoted") && kinds.contains(&"policy.enabled"));
    assert!(open.iter().all(|f| f.state == FindingState::Firing));
}

#[tokio::test]
async fn a_group_with_a_remediation_that_fails_is_redone_one_by_one_and_the_others_still_apply() {
    use mapek::execute::Outcome;
    use mapek::knowledge::remediations;
    use mapek::model::{Action, Subject};
    let w = world(6).await;
    let store = &w.t.store;
    let make = |i: usize, package: &str, forged: bool| {
        let mut r = Remediation {
            id: format!("rem-g{i}"),
            idempotency_key: format!("g{i}"),
            finding_id: None,
            policy: "p".into(),
            action: Action::Quarantine,
            params: serde_json::json!({}),
            subject: Subject {
                package: package.into(),
                version: Some("1.0.0".into()),
            },
            mode: mapek::model::Mode::Enforce,
            status: Status::Ready,
            reason: String::new(),
            created_at: NOW,
            updated_at: NOW,
            signature: String::new(),
            inverse: None,
            gate: None,
            expires_at: None,
            attempt: 1,
            verify_after_ms: None,
            verify_at: None,
            verdict: None,
        };
        r.signature = w.key.sign(&r.signing_bytes());
        if forged {
            r.subject.package = "pkg-00005".into();
        }
        r
    };
    let mut tx = store.begin().await.unwrap();
    for r in [
        make(1, "pkg-00001", false),
        make(2, "no-such-package", false),
        make(3, "pkg-00003", false),
        make(4, "pkg-00004", true),
    ] {
        remediations::insert(&mut tx, &r).await.unwrap();
    }
    tx.commit().await.unwrap();
    let out = mapek::execute::cycle(store, &w.registry, &w.key, NOW)
        .await
        .unwrap();
    let by_id: std::collections::HashMap<String, Outcome> =
        out.results.into_iter().map(|(r, o)| (r.id, o)).collect();
    assert_eq!(by_id["rem-g1"], Outcome::Executed { changed: true });
    assert!(matches!(&by_id["rem-g2"], Outcome::Failed(why) if why.contains("no-such-package")));
    assert_eq!(by_id["rem-g3"], Outcome::Executed { changed: true });
    assert_eq!(by_id["rem-g4"], Outcome::Refused);
    for (p, want) in [
        ("pkg-00001", true),
        ("pkg-00003", true),
        ("pkg-00005", false),
    ] {
        let r = w.registry.release(p, "1.0.0").await.unwrap().unwrap();
        assert_eq!(r.quarantined, want, "{p}");
    }
    let entries = store.audit_entries().await.unwrap();
    assert!(verify_chain(&entries, &w.key.public()).is_ok());
    assert_eq!(
        entries
            .iter()
            .filter(|e| e.kind == "remediation.executed")
            .count(),
        2
    );
}
