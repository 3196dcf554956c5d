//! The policy engine on a real store: approvals, expiry, windows, the circuit breaker, signed policies and reload.

mod common;

use std::path::{Path, PathBuf};

use common::{world, World, NOW};
use mapek::analyze::{self, Rules};
use mapek::daemon::reload::{PolicySource, Reload, Watch};
use mapek::execute;
use mapek::keys::{KeyPair, Role, TrustStore};
use mapek::knowledge::approvals::Decision;
use mapek::knowledge::findings::FindingState;
use mapek::knowledge::remediations::{Remediation, Status};
use mapek::model::FindingKind;
use mapek::monitor::{self, MonitorState};
use mapek::plan::approve::{self, ApprovalError};
use mapek::plan::policy::{LoadOptions, PolicySet};
use mapek::plan::{self, signing, PlanContext, Planner};

const HOUR: i64 = 3_600_000;

/// A registry of 20 packages with the three planted problems, observed: they are firing findings.
async fn planted() -> World {
    let w = world(20).await;
    w.plant_problems().await;
    observe(&w, NOW).await;
    w
}

/// A policy quarantining what the planted problems raise, in enforce mode, with `extra` keys.
fn quarantine_planted(extra: &str) -> String {
    format!(
        "[[policy]]\nid = \"q\"\non = [\"checksum_mismatch\", \"signature_invalid\", \"signer_untrusted\"]\n\
         action = \"quarantine\"\nmode = \"enforce\"\n{extra}"
    )
}

/// The open `circuit_open` findings.
async fn circuit_findings(w: &World) -> Vec<mapek::knowledge::findings::Finding> {
    w.t.store
        .open_findings()
        .await
        .unwrap()
        .into_iter()
        .filter(|f| f.kind == FindingKind::CircuitOpen)
        .collect()
}

/// Monitor and analyze once, so the planted problems are firing findings.
async fn observe(w: &World, now: i64) {
    let mut state = MonitorState::new();
    let m = monitor::cycle(&mut state, &w.registry, &w.t.store, &w.trust, now, HOUR)
        .await
        .unwrap();
    analyze::cycle(&w.t.store, &m.observations, &Rules::default(), now)
        .await
        .unwrap();
}

async fn plan_with(w: &World, set: &PolicySet, trust: &TrustStore, now: i64) -> plan::PlanOutput {
    let ctx = PlanContext {
        policies: set,
        trust,
        key: &w.key,
        daemon_dry_run: false,
        now,
        facts: None,
    };
    Planner::default()
        .cycle(&w.t.store, &w.registry, ctx)
        .await
        .unwrap()
}

fn set(src: &str) -> PolicySet {
    PolicySet::from_sources(&[(PathBuf::from("p.toml"), src.to_string())]).expect("policies load")
}

fn set_with_guards(src: &str, guards: &str) -> PolicySet {
    PolicySet::from_sources(&[
        (PathBuf::from("guards.toml"), guards.to_string()),
        (PathBuf::from("p.toml"), src.to_string()),
    ])
    .expect("policies load")
}

const APPROVE: &str = r#"
[[policy]]
id = "q"
on = ["checksum_mismatch", "signature_invalid", "signer_untrusted"]
action = "quarantine"
mode = "approve"
approvers = ["maint-alice", "maint-bob"]
min_approvals = 1
approval_ttl = "2h"
"#;

fn maintainers(w: &World) -> (TrustStore, KeyPair, KeyPair, KeyPair) {
    let mut trust = (*w.trust).clone();
    let alice = KeyPair::from_seed("maint-alice", [21; 32]);
    let bob = KeyPair::from_seed("maint-bob", [22; 32]);
    let carol = KeyPair::from_seed("maint-carol", [23; 32]);
    trust.add(&alice, "alice", vec![Role::Maintainer]);
    trust.add(&bob, "bob", vec![Role::Publisher]);
    trust.add(&carol, "carol", vec![Role::Maintainer]);
    (trust, alice, bob, carol)
}

fn one(out: &plan::PlanOutput, status: Status) -> Vec<&Remediation> {
    out.remediations
        .iter()
        .filter(|r| r.status == status)
        .collect()
}

#[tokio::test]
async fn an_approved_remediation_runs_and_only_the_policys_maintainers_can_approve() {
    let w = planted().await;
    let (trust, alice, bob, carol) = maintainers(&w);
    let policies = set(APPROVE);
    let out = plan_with(&w, &policies, &trust, NOW).await;
    let pending = one(&out, Status::Pending);
    assert_eq!(pending.len(), 3, "{:?}", out.remediations);
    assert!(pending
        .iter()
        .all(|r| r.gate == Some(mapek::model::Gate::Approval)));
    let id = pending[0].id.clone();
    let decide = |key: &KeyPair, d| {
        let (policies, trust, id) = (&policies, &trust, id.clone());
        let key = key.clone();
        let store = w.t.store.clone();
        let daemon = w.key.clone();
        async move {
            approve::decide(&store, policies, trust, &daemon, &key, &id, d, NOW + 60_000).await
        }
    };
    // Carol is a maintainer, but not an approver of this policy; Bob is an approver without the role.
    assert!(matches!(
        decide(&carol, Decision::Approve).await,
        Err(ApprovalError::NotAnApprover { .. })
    ));
    assert!(matches!(
        decide(&bob, Decision::Approve).await,
        Err(ApprovalError::Untrusted(_))
    ));
    decide(&alice, Decision::Approve)
        .await
        .expect("alice approves");
    assert!(matches!(
        decide(&alice, Decision::Approve).await,
        Err(ApprovalError::AlreadyDecided { .. })
    ));

    let out = plan_with(&w, &policies, &trust, NOW + 120_000).await;
    let ready = one(&out, Status::Ready);
    assert_eq!(ready.len(), 1);
    assert_eq!(ready[0].id, id);
    assert!(
        ready[0].reason.contains("approved by maint-alice"),
        "{}",
        ready[0].reason
    );
    let e = execute::cycle(&w.t.store, &w.registry, &w.key, NOW + 120_000)
        .await
        .unwrap();
    assert_eq!(e.results.len(), 1);
    assert_eq!(w.quarantined().await.len(), 1);
    // The two others still wait, with the expiry they got when first planned.
    let waiting =
        w.t.store
            .remediations_with_status(Status::Pending)
            .await
            .unwrap();
    assert_eq!(waiting.len(), 2);
    assert!(waiting.iter().all(|r| r.expires_at == Some(NOW + 2 * HOUR)));
    let kinds = w.audit_kinds().await;
    assert!(
        kinds.contains(&"remediation.approve".to_string()),
        "{kinds:?}"
    );
}

#[tokio::test]
async fn a_rejection_refuses_and_an_unanswered_request_expires() {
    let w = planted().await;
    let (trust, alice, _, _) = maintainers(&w);
    let policies = set(APPROVE);
    let out = plan_with(&w, &policies, &trust, NOW).await;
    let id = one(&out, Status::Pending)[0].id.clone();
    approve::decide(
        &w.t.store,
        &policies,
        &trust,
        &w.key,
        &alice,
        &id,
        Decision::Reject,
        NOW + 1,
    )
    .await
    .expect("alice rejects");
    let out = plan_with(&w, &policies, &trust, NOW + 60_000).await;
    let refused = one(&out, Status::Refused);
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].id, id);
    // Two hours later nobody has answered the others: they expire, and nothing was executed.
    let out = plan_with(&w, &policies, &trust, NOW + 2 * HOUR).await;
    assert_eq!(one(&out, Status::Expired).len(), 2);
    let e = execute::cycle(&w.t.store, &w.registry, &w.key, NOW + 2 * HOUR)
        .await
        .unwrap();
    assert!(e.results.is_empty());
    assert!(w.quarantined().await.is_empty());
    // An expired remediation can no longer be approved.
    let late = approve::decide(
        &w.t.store,
        &policies,
        &trust,
        &w.key,
        &alice,
        &out.remediations[0].id,
        Decision::Approve,
        NOW + 3 * HOUR,
    )
    .await;
    assert!(
        matches!(late, Err(ApprovalError::NotWaiting { .. })),
        "{late:?}"
    );
}

#[tokio::test]
async fn outside_its_window_a_remediation_waits_then_runs_in_the_same_record() {
    let w = planted().await;
    // NOW is 2026-11-18T11:06:40Z, a Wednesday; the window opens at 20:00 UTC.
    let policies = set(&quarantine_planted("window = \"0 * 20-21 * * *\"\n"));
    let out = plan_with(&w, &policies, &w.trust, NOW).await;
    let waiting = one(&out, Status::Pending);
    assert_eq!(waiting.len(), 3);
    assert!(
        waiting[0].reason.contains("opens at"),
        "{}",
        waiting[0].reason
    );
    let ids: Vec<String> = waiting.iter().map(|r| r.id.clone()).collect();
    let out = plan_with(&w, &policies, &w.trust, NOW + 60_000).await;
    assert!(
        out.remediations.is_empty(),
        "nothing changed, nothing rewritten"
    );
    let evening = NOW + 9 * HOUR;
    let out = plan_with(&w, &policies, &w.trust, evening).await;
    let mut ready: Vec<String> = one(&out, Status::Ready)
        .iter()
        .map(|r| r.id.clone())
        .collect();
    ready.sort();
    let mut ids = ids;
    ids.sort();
    assert_eq!(ready, ids);
}

#[tokio::test]
async fn a_guard_opens_the_circuit_raises_a_finding_and_it_closes_after_a_quiet_hour() {
    let w = planted().await;
    let policies = set_with_guards(
        &quarantine_planted(""),
        "[guards]\nmax_actions_per_cycle = 1\n",
    );
    let out = plan_with(&w, &policies, &w.trust, NOW).await;
    assert_eq!(one(&out, Status::Ready).len(), 1);
    let held: Vec<_> = one(&out, Status::Suppressed);
    assert_eq!(held.len(), 2);
    assert_eq!(held[0].gate, Some(mapek::model::Gate::Guards));
    assert_eq!(held[1].gate, Some(mapek::model::Gate::Circuit));
    assert!(out.circuit_open);
    let open = circuit_findings(&w).await;
    assert_eq!(open.len(), 1);
    assert_eq!(open[0].state, FindingState::Firing);
    assert!(plan::circuit(&w.t.store).await.unwrap().open);

    // Within the hour, the circuit stays open; after an hour without pressure, it closes.
    let out = plan_with(&w, &policies, &w.trust, NOW + HOUR / 2).await;
    assert!(out.circuit_open);
    let out = plan_with(&w, &policies, &w.trust, NOW + HOUR + 1).await;
    assert!(!out.circuit_open);
    assert!(matches!(
        out.circuit,
        Some(plan::CircuitChange::Closed { .. })
    ));
    let still = circuit_findings(&w).await;
    assert!(still.is_empty());
    let kinds = w.audit_kinds().await;
    assert!(
        kinds.contains(&"circuit.open".to_string()) && kinds.contains(&"circuit.close".to_string()),
        "{kinds:?}"
    );
}

#[tokio::test]
async fn a_maintainer_can_close_the_circuit_by_hand() {
    let w = planted().await;
    let policies = set_with_guards(
        &quarantine_planted(""),
        "[guards]\nmax_actions_per_hour = 1\n",
    );
    assert!(plan_with(&w, &policies, &w.trust, NOW).await.circuit_open);
    assert!(
        plan::close_circuit_by_hand(&w.t.store, &w.key, "maint-alice", NOW + 1)
            .await
            .unwrap()
    );
    assert!(!plan::circuit(&w.t.store).await.unwrap().open);
    assert!(
        !plan::close_circuit_by_hand(&w.t.store, &w.key, "maint-alice", NOW + 2)
            .await
            .unwrap()
    );
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

const GOOD: &str = "[[policy]]\nid = \"q\"\non = \"checksum_mismatch\"\naction = \"quarantine\"\nmode = \"enforce\"\n";

#[test]
fn signed_policy_sets_are_refused_for_any_bad_signature() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "a.toml", GOOD);
    let alice = KeyPair::from_seed("maint-alice", [31; 32]);
    let publisher = KeyPair::from_seed("pub-1", [32; 32]);
    let old = KeyPair::from_seed("maint-old", [33; 32]);
    let mut trust = TrustStore::default();
    trust.add(&alice, "alice", vec![Role::Maintainer]);
    trust.add(&publisher, "publisher", vec![Role::Publisher]);
    trust.add(&old, "old", vec![Role::Maintainer]);
    trust.revoked.push("maint-old".into());
    let required = LoadOptions {
        trust: Some(&trust),
        require_signed: true,
    };
    let reason = |opts| PolicySet::load_dir(d, opts).unwrap_err()[0].reason.clone();

    assert!(reason(required).contains("is not signed"));
    assert!(PolicySet::load_dir(
        d,
        LoadOptions {
            trust: Some(&trust),
            require_signed: false
        }
    )
    .is_ok());
    signing::sign_file(&d.join("a.toml"), &alice).unwrap();
    assert!(PolicySet::load_dir(d, required).is_ok());
    // One changed byte after signing.
    write(d, "a.toml", &GOOD.replace("enforce", "dry_run"));
    assert!(reason(required).contains("bad signature"));
    // Even when not required, a present signature must be good.
    assert!(PolicySet::load_dir(
        d,
        LoadOptions {
            trust: Some(&trust),
            require_signed: false
        }
    )
    .is_err());
    signing::sign_file(&d.join("a.toml"), &publisher).unwrap();
    assert!(reason(required).contains("not a maintainer key"));
    signing::sign_file(&d.join("a.toml"), &old).unwrap();
    assert!(reason(required).contains("revoked"));
    // guards.toml is part of the set and needs its signature too.
    signing::sign_file(&d.join("a.toml"), &alice).unwrap();
    write(d, "guards.toml", "[guards]\nmax_actions_per_cycle = 5\n");
    let e = PolicySet::load_dir(d, required).unwrap_err();
    assert!(e[0].file.ends_with("guards.toml"), "{e:?}");
}

#[test]
fn a_bad_reload_keeps_the_last_good_set_and_a_good_one_replaces_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "a.toml", GOOD);
    let trust = d.join("trusted-keys.toml");
    write(d, "trusted-keys.toml", "");
    let first = PolicySource::load(d, &trust, false).expect("loads");
    let source = PolicySource::watched(first, d.to_path_buf(), trust.clone(), false);
    let mut watch = Watch::default();
    assert!(!watch.due(&source), "nothing changed since the load");
    let before = source.get().digest.clone();

    // An all-or-nothing reload: one bad file among good ones refuses the set.
    write(d, "b.toml", "[[policy]]\nid = \"r\"\non = \"checksum_mismatch\"\naction = \"quarantine\"\nwhen = \"package.downloads +\"\n");
    write(d, "c.toml", &GOOD.replace("\"q\"", "\"s\""));
    std::thread::sleep(std::time::Duration::from_millis(20));
    assert!(watch.due(&source), "a change to the directory is noticed");
    match source.reload() {
        Some(Reload::Refused(errors)) => assert!(errors
            .iter()
            .any(|e| e.file.ends_with("b.toml") && e.field == "when")),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(source.get().digest, before);
    assert_eq!(source.get().policies.len(), 1);

    std::fs::remove_file(d.join("b.toml")).unwrap();
    assert!(watch.due(&source));
    assert!(matches!(
        source.reload(),
        Some(Reload::Loaded { policies: 2 })
    ));
    assert_eq!(source.get().policies.len(), 2);
    // SIGHUP asks for a reload although nothing changed.
    assert!(!watch.due(&source));
    source.request();
    assert!(watch.due(&source));
    // A SIGHUP that came before the plan stage started watching is not lost.
    source.request();
    let mut late = Watch::start(&source);
    assert!(late.due(&source), "the earlier request still holds");
    assert!(!late.due(&source), "and is answered once");
}

#[test]
fn escalations_must_name_a_policy_and_must_not_go_round() {
    let src = "[[policy]]\nid = \"a\"\non = \"checksum_mismatch\"\naction = \"quarantine\"\nescalate_to = \"b\"\n\n\
               [[policy]]\nid = \"b\"\non = \"checksum_mismatch\"\naction = \"quarantine\"\nescalate_to = \"a\"\n\n\
               [[policy]]\nid = \"c\"\non = \"checksum_mismatch\"\naction = \"quarantine\"\nescalate_to = \"nobody\"\n";
    let errors = PolicySet::from_sources(&[(PathBuf::from("e.toml"), src.into())]).unwrap_err();
    let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    assert!(
        text.contains(
            &"e.toml:17: field `escalate_to`: names no policy: there is no policy `nobody`"
                .to_string()
        ),
        "{text:?}"
    );
    assert!(
        text.iter().any(|t| t.starts_with(
            "e.toml:5: field `escalate_to`: escalations go round in a cycle through a, b"
        )),
        "{text:?}"
    );
}

#[test]
fn every_key_of_the_format_is_checked() {
    let cases = [
        ("mode = \"approve\"\n", "mode", "needs `approvers`"),
        (
            "max_blast_radius = 5\n",
            "max_blast_radius",
            "needs `approvers`",
        ),
        ("cooldown = \"soon\"\n", "cooldown", "is not a duration"),
        (
            "approval_ttl = \"0s\"\n",
            "approval_ttl",
            "longer than zero",
        ),
        ("window = \"every day\"\n", "window", "fields"),
        (
            "window = \"0 * 25 * * *\"\n",
            "window",
            "not a cron expression",
        ),
        (
            "approvers = [\"a\"]\nmin_approvals = 2\n",
            "min_approvals",
            "can never be given",
        ),
        ("max_attempts = 0\n", "max_attempts", "at least 1"),
        ("max_per_hour = 0\n", "max_per_hour", "enabled = false"),
        ("approvers = [\"a\", \"a\"]\n", "approvers", "listed twice"),
        ("colour = \"red\"\n", "colour", "unknown field"),
    ];
    for (extra, field, reason) in cases {
        let src = format!(
            "[[policy]]\nid = \"x\"\non = \"checksum_mismatch\"\naction = \"quarantine\"\n{extra}"
        );
        let errors = PolicySet::from_sources(&[(PathBuf::from("k.toml"), src)]).unwrap_err();
        assert!(
            errors
                .iter()
                .any(|e| e.field == field && e.reason.contains(reason) && e.line >= 5),
            "{extra:?}: {errors:?}"
        );
    }
    let full = "[[policy]]\nid = \"full\"\ndescription = \"every key\"\non = [\"checksum_mismatch\"]\n\
                when = \"finding.severity == 'critical'\"\naction = \"quarantine\"\nparams = { reason = \"r\" }\n\
                mode = \"approve\"\npriority = 5\ncooldown = \"1h\"\nmax_per_hour = 3\nmax_blast_radius = 25\n\
                window = \"0 * 8-18 * * Mon-Fri\"\napprovers = [\"a\", \"b\"]\nmin_approvals = 2\napproval_ttl = \"24h\"\n\
                verify_after = \"15m\"\nmax_attempts = 3\nescalate_to = \"other\"\nenabled = true\n\n\
                [[policy]]\nid = \"other\"\non = \"checksum_mismatch\"\naction = \"quarantine\"\n";
    let s = set(full);
    let p = s.get("full").unwrap();
    assert_eq!(
        (
            p.cooldown_ms,
            p.max_per_hour,
            p.max_blast_radius,
            p.min_approvals
        ),
        (Some(HOUR), Some(3), Some(25), 2)
    );
    assert_eq!(
        (p.approval_ttl_ms, p.verify_after_ms, p.max_attempts),
        (24 * HOUR, Some(15 * 60_000), 3)
    );
    assert_eq!(p.escalate_to.as_deref(), Some("other"));
}

#[tokio::test]
async fn a_waiting_remediation_whose_finding_resolved_is_abandoned() {
    let w = planted().await;
    let policies = set(&quarantine_planted("window = \"0 * 20-21 * * *\"\n"));
    let out = plan_with(&w, &policies, &w.trust, NOW).await;
    let waiting = one(&out, Status::Pending);
    let target = waiting[0].clone();
    sqlx::query("UPDATE findings SET state = 'resolved' WHERE id = $1")
        .bind(target.finding_id.clone().unwrap())
        .execute(w.t.store.raw_pool())
        .await
        .unwrap();
    let out = plan_with(&w, &policies, &w.trust, NOW + 60_000).await;
    let abandoned = one(&out, Status::Abandoned);
    assert_eq!(abandoned.len(), 1, "{:?}", out.remediations);
    assert_eq!(abandoned[0].id, target.id);
    assert!(abandoned[0].reason.contains("resolved"));
}
