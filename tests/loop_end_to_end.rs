//! The whole loop on a real store: planted problems are found, planned, signed, executed and audited once.

mod common;

use common::{daemon_loop, default_policies, world, Recorded, World, NOW};
use mapek::analyze::{self, Rules};
use mapek::daemon::status::{StatusReport, StatusView};
use mapek::execute::{self, Outcome};
use mapek::knowledge::audit::verify_chain;
use mapek::knowledge::remediations::Status;
use mapek::monitor::{self, MonitorState};
use mapek::registry::{Change, Registry};

/// Runs one cycle of the daemon's loop (every stage).
async fn cycle(
    w: &World,
    l: &mut mapek::cycle::Loop,
    now: i64,
) -> (monitor::MonitorOutput, Recorded, Recorded) {
    let r = common::step(w, l, now).await;
    let m = r.monitor.clone();
    let p = Recorded {
        remediations: r.remediations.clone(),
        ..Default::default()
    };
    (m, p, r)
}

/// Monitor, analyze and plan, but not execute: leaves the planned remediations `ready`.
async fn plan_only(w: &World, now: i64) {
    let mut state = MonitorState::new();
    let m = monitor::cycle(
        &mut state,
        &w.registry,
        &w.t.store,
        &w.trust,
        now,
        3_600_000,
    )
    .await
    .unwrap();
    analyze::cycle(&w.t.store, &m.observations, &Rules::default(), now)
        .await
        .unwrap();
    common::plan(w, &default_policies(), false, now).await;
}

async fn status(w: &World) -> StatusReport {
    let view = StatusView {
        role: "test",
        holder: "test",
        policies: 0,
        dry_run: false,
        window_ms: 30 * 86_400_000,
        now: NOW + 10_000,
    };
    StatusReport::read(&w.t.store, view).await.unwrap()
}

fn effective(r: &StatusReport) -> i64 {
    r.policy_outcomes.iter().map(|o| o.effective).sum()
}

fn pair(p: &str) -> (String, String) {
    (p.to_string(), "1.0.0".to_string())
}

#[tokio::test]
async fn each_planted_problem_is_quarantined_and_nothing_else() {
    let w = world(40).await;
    w.plant_problems().await;
    let mut state = daemon_loop(false);
    let (m, p, e) = cycle(&w, &mut state, NOW).await;
    assert!(m.full_scan);
    // pkg-00004 is an early package of the generated registry: most others depend on it, so the
    // shipped policy's blast radius (25) holds its quarantine for a maintainer's approval.
    assert_eq!(
        w.quarantined().await,
        vec![pair("pkg-00002"), pair("pkg-00003")]
    );
    let held: Vec<_> = p
        .remediations
        .iter()
        .filter(|r| r.status == Status::Pending)
        .collect();
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].subject.package, "pkg-00004");
    assert_eq!(held[0].gate, Some(mapek::model::Gate::Approval));
    assert!(
        held[0].reason.contains("blast radius"),
        "{}",
        held[0].reason
    );
    let executed: Vec<_> = e
        .results
        .iter()
        .filter(|(_, o)| *o == Outcome::Executed { changed: true })
        .collect();
    assert_eq!(executed.len(), 2);
    // The tampered artifact also fails its signature: one quarantine, the other recorded as superseded.
    assert_eq!(
        p.remediations
            .iter()
            .filter(|r| r.status == Status::Superseded)
            .count(),
        1
    );
    let entries = w.t.store.audit_entries().await.unwrap();
    assert_eq!(verify_chain(&entries, &w.key.public()), Ok(2));
}

#[tokio::test]
async fn a_second_cycle_with_nothing_changed_scans_nothing_and_plans_nothing() {
    let w = world(30).await;
    w.plant_problems().await;
    let mut state = daemon_loop(false);
    cycle(&w, &mut state, NOW).await;
    let (m, p, e) = cycle(&w, &mut state, NOW + 60_000).await;
    // Only the three quarantined releases changed (their flag), so only they are looked at again.
    assert!(!m.full_scan);
    assert_eq!(m.observations.len(), 3);
    assert_eq!(
        m.verified, 0,
        "unchanged bytes are answered from the verification cache"
    );
    assert!(p.remediations.is_empty());
    assert!(e.results.is_empty());
    let (m, _, _) = cycle(&w, &mut state, NOW + 120_000).await;
    assert_eq!(m.observations.len(), 0);
}

#[tokio::test]
async fn a_restarted_monitor_rescans_everything_but_verifies_nothing_again() {
    let w = world(25).await;
    let mut state = daemon_loop(false);
    let (m, _, _) = cycle(&w, &mut state, NOW).await;
    assert!(m.verified > 0);
    let mut fresh = daemon_loop(false);
    let (m, _, _) = cycle(&w, &mut fresh, NOW + 1000).await;
    assert!(m.full_scan);
    assert_eq!(m.verified, 0);
    assert_eq!(m.cache_hits, m.observations.len());
}

#[tokio::test]
async fn applying_the_same_change_twice_changes_nothing_the_second_time() {
    let w = world(5).await;
    let change = Change::QuarantineRelease {
        package: "pkg-00001".into(),
        version: "1.0.0".into(),
    };
    let mut tx = w.t.store.begin().await.unwrap();
    let first = w.registry.apply(&mut tx, &change, NOW).await.unwrap();
    let second = w.registry.apply(&mut tx, &change, NOW).await.unwrap();
    tx.commit().await.unwrap();
    assert!(first.changed);
    assert!(!second.changed);
    assert_eq!(
        first.inverse,
        Change::UnquarantineRelease {
            package: "pkg-00001".into(),
            version: "1.0.0".into()
        }
    );
}

#[tokio::test]
async fn a_remediation_altered_after_signing_is_refused_and_not_applied() {
    let w = world(20).await;
    w.plant_problems().await;
    let now = NOW;
    plan_only(&w, now).await;
    // Someone with database access redirects a planned quarantine to another package.
    sqlx::query("UPDATE remediations SET package = 'pkg-00010' WHERE package = 'pkg-00004' AND status = 'ready'")
        .execute(w.t.store.raw_pool())
        .await
        .unwrap();
    let e = execute::cycle(&w.t.store, &w.registry, &w.key, now)
        .await
        .unwrap();
    let refused: Vec<_> = e
        .results
        .iter()
        .filter(|(_, o)| *o == Outcome::Refused)
        .map(|(r, _)| r.subject.package.clone())
        .collect();
    assert_eq!(refused, vec!["pkg-00010".to_string()]);
    assert!(!w.quarantined().await.iter().any(|(p, _)| p == "pkg-00010"));
    let entries = w.t.store.audit_entries().await.unwrap();
    assert!(entries.iter().any(|e| e.kind == "remediation.refused"));
}

#[tokio::test]
async fn an_intent_left_by_a_crash_is_finished_once_on_restart() {
    let w = world(20).await;
    w.plant_problems().await;
    plan_only(&w, NOW).await;
    // The crash: intents written, no effect committed.
    sqlx::query("UPDATE remediations SET status = 'executing' WHERE status = 'ready'")
        .execute(w.t.store.raw_pool())
        .await
        .unwrap();
    let e = execute::cycle(&w.t.store, &w.registry, &w.key, NOW)
        .await
        .unwrap();
    assert_eq!(e.results.len(), 3);
    assert_eq!(w.quarantined().await.len(), 3);
    let again = execute::cycle(&w.t.store, &w.registry, &w.key, NOW)
        .await
        .unwrap();
    assert!(again.results.is_empty(), "nothing is executed twice");
    let entries = w.t.store.audit_entries().await.unwrap();
    assert_eq!(verify_chain(&entries, &w.key.public()), Ok(3));
}

#[tokio::test]
async fn a_dry_run_daemon_records_what_it_would_do_and_changes_nothing() {
    let w = world(20).await;
    w.plant_problems().await;
    let mut state = daemon_loop(true);
    let (_, p, e) = cycle(&w, &mut state, NOW).await;
    assert!(w.quarantined().await.is_empty());
    assert!(e.results.is_empty());
    assert_eq!(
        p.remediations
            .iter()
            .filter(|r| r.status == Status::DryRun)
            .count(),
        3
    );
    let entries = w.t.store.audit_entries().await.unwrap();
    assert_eq!(
        entries
            .iter()
            .filter(|e| e.kind == "remediation.dry_run")
            .count(),
        3
    );
}

#[tokio::test]
async fn a_restored_artifact_resolves_its_finding_on_the_next_full_scan() {
    let w = world(10).await;
    let path = w.artifact_path("pkg-00002", "1.0.0").await;
    let original = std::fs::read(&path).unwrap();
    std::fs::write(&path, b"tampered").unwrap();
    let mut state = daemon_loop(false);
    cycle(&w, &mut state, NOW).await;
    let open = w.t.store.open_findings().await.unwrap();
    assert!(open.iter().any(|f| f.kind.as_str() == "checksum_mismatch"));
    std::fs::write(&path, original).unwrap();
    // Past the full-scan interval, every artifact is hashed again.
    let later = NOW + 3_600_000;
    let r = common::step(&w, &mut state, later).await;
    assert!(r.monitor.full_scan);
    assert!(w.t.store.open_findings().await.unwrap().is_empty());
    let resolved = w.t.store.recent_findings(100).await.unwrap();
    assert!(resolved
        .iter()
        .any(|f| f.kind.as_str() == "checksum_mismatch" && f.resolved_at == Some(later)));
}

#[tokio::test]
async fn revoking_a_key_in_the_trust_store_makes_its_releases_untrusted() {
    let w = world(12).await;
    let mut state = daemon_loop(false);
    cycle(&w, &mut state, NOW).await;
    assert!(w.t.store.open_findings().await.unwrap().is_empty());
    let mut trust = (*w.trust).clone();
    trust.revoked.push("pub-1".into());
    let trust =
        mapek::keys::TrustStore::parse(std::path::Path::new("t.toml"), &trust.to_toml()).unwrap();
    let revoked = std::sync::Arc::new(trust);
    let policies = default_policies();
    let ctx = mapek::cycle::Context {
        store: &w.t.store,
        registry: &w.registry,
        policies: &policies,
        trust: &revoked,
        key: &w.key,
        now: NOW + 1000,
    };
    let mut r = Recorded::default();
    state.step(&ctx, &mut r).await;
    assert!(
        r.monitor.full_scan,
        "a changed trust store forces a full scan"
    );
    // Of the integrity kinds, only signer_untrusted fires (the quality scores of the packages
    // concerned drop too, which the whole analysis also judges).
    let integrity: Vec<_> = r
        .fired
        .iter()
        .filter(|f| analyze::INTEGRITY_KINDS.contains(&f.kind))
        .collect();
    assert!(!integrity.is_empty());
    assert!(integrity
        .iter()
        .all(|f| f.kind.as_str() == "signer_untrusted"));
}

#[tokio::test]
async fn the_daemon_supervisor_runs_counted_cycles_and_stops() {
    use mapek::daemon::{self, RunOptions};
    let w = world(15).await;
    w.plant_problems().await;
    let rt = std::sync::Arc::new(w.runtime(mapek::daemon::reload::PolicySource::fixed(
        default_policies(),
    )));
    let summary = daemon::run(
        rt.clone(),
        RunOptions {
            cycles: Some(2),
            interval: std::time::Duration::from_millis(10),
            grace: std::time::Duration::from_secs(30),
        },
        tokio_util::sync::CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(summary.cycles, 2);
    assert_eq!(summary.stage_errors, 0);
    assert_eq!(w.quarantined().await.len(), 3);
    let text = rt.metrics.render();
    assert!(text.contains("mapek_remediations_total{action=\"quarantine\",outcome=\"executed\",policy=\"quarantine-tampered\"} 2"), "{text}");
    assert!(
        text.contains("mapek_findings_open{kind=\"signer_untrusted\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("mapek_stage_duration_seconds_count{stage=\"monitor\"} 2"),
        "{text}"
    );
}

#[tokio::test]
async fn a_refused_reload_keeps_the_policies_in_force_and_is_counted() {
    use mapek::daemon::{self, reload::PolicySource, reload::Watch};
    let w = world(5).await;
    let dir = tempfile::tempdir().unwrap();
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/integrity.toml");
    std::fs::copy(&shipped, dir.path().join("integrity.toml")).unwrap();
    let trust = dir.path().join("trusted-keys.toml");
    std::fs::write(&trust, "").unwrap();
    let first = PolicySource::load(dir.path(), &trust, false).unwrap();
    let rt = w.runtime(PolicySource::watched(
        first,
        dir.path().to_path_buf(),
        trust,
        false,
    ));
    let mut watch = Watch::default();
    daemon::reload_policies(&rt, &mut watch);
    std::fs::write(dir.path().join("broken.toml"), "[[policy]]\nid = \"x\"\n").unwrap();
    daemon::reload_policies(&rt, &mut watch);
    assert_eq!(
        rt.policies.get().policies.len(),
        3,
        "the last good set stays"
    );
    let text = rt.metrics.render();
    assert!(
        text.contains("mapek_policy_reloads_total{result=\"failure\"} 1"),
        "{text}"
    );
    std::fs::remove_file(dir.path().join("broken.toml")).unwrap();
    rt.policies.request(); // SIGHUP
    daemon::reload_policies(&rt, &mut watch);
    let text = rt.metrics.render();
    assert!(
        text.contains("mapek_policy_reloads_total{result=\"success\"} 1"),
        "{text}"
    );
    assert!(text.contains("mapek_policies_loaded 3"), "{text}");
}

#[tokio::test]
async fn a_rollback_applies_the_inverse_once_and_is_audited() {
    use mapek::execute::rollback::{rollback, RollbackError};
    let w = world(12).await;
    w.plant_problems().await;
    let mut state = daemon_loop(false);
    let (_, p, _) = cycle(&w, &mut state, NOW).await;
    let executed: Vec<_> = p
        .remediations
        .iter()
        .filter(|r| r.status == Status::Ready)
        .map(|r| r.id.clone())
        .collect();
    assert_eq!(w.quarantined().await.len(), 3);
    let id = &executed[0];
    let subject = w.t.store.remediation(id).await.unwrap().unwrap().subject;
    // Quarantined, the releases' findings still fire (the artifacts are still bad) but read as
    // handled, and each quarantine in force counts as effective.
    let before = status(&w).await;
    let of_subject = |r: &StatusReport| {
        r.findings
            .iter()
            .filter(|f| f.subject == subject.to_string())
            .map(|f| f.state_word().to_string())
            .collect::<Vec<_>>()
    };
    assert!(
        of_subject(&before).iter().all(|s| s == "handled"),
        "{before}"
    );
    assert!(!of_subject(&before).is_empty());
    assert_eq!(effective(&before), 3, "{before}");
    assert!(
        before.to_string().contains(&format!("(by {id})")),
        "{before}"
    );
    let (r, outcome) = rollback(
        &w.t.store,
        &w.registry,
        &w.key,
        id,
        "maint-alice",
        NOW + 1_000,
    )
    .await
    .expect("rolls back");
    assert_eq!(outcome, Outcome::Executed { changed: true });
    assert_eq!(r.subject, subject);
    assert_eq!(w.quarantined().await.len(), 2);
    let original = w.t.store.remediation(id).await.unwrap().unwrap();
    assert_eq!(original.status, Status::RolledBack);
    let after = status(&w).await;
    assert!(of_subject(&after).iter().all(|s| s == "firing"), "{after}");
    assert_eq!(effective(&after), 2, "{after}");
    // Twice: refused with a clear message, and nothing changes.
    let again = rollback(
        &w.t.store,
        &w.registry,
        &w.key,
        id,
        "maint-alice",
        NOW + 2_000,
    )
    .await;
    assert!(
        matches!(again, Err(RollbackError::AlreadyRolledBack { .. })),
        "{again:?}"
    );
    assert_eq!(w.quarantined().await.len(), 2);
    let entries = w.t.store.audit_entries().await.unwrap();
    assert!(entries
        .iter()
        .any(|e| e.kind == "remediation.rollback" && e.actor == "maint-alice"));
    assert!(verify_chain(&entries, &w.key.public()).is_ok());
    // A remediation that never executed cannot be rolled back.
    let superseded = p
        .remediations
        .iter()
        .find(|r| r.status == Status::Superseded)
        .unwrap();
    let refused = rollback(
        &w.t.store,
        &w.registry,
        &w.key,
        &superseded.id,
        "x",
        NOW + 3_000,
    )
    .await;
    assert!(
        matches!(refused, Err(RollbackError::NotExecuted { .. })),
        "{refused:?}"
    );
}
