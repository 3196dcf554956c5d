//! Compaction on its cron schedule: old resolved findings and finished notices go, open findings, findings still being verified, and the audit log stay.

mod common;

use std::str::FromStr;
use std::time::Duration;

use common::{world, NOW};
use mapek::daemon::reload::PolicySource;
use mapek::daemon::retention::{compact_once, retention_task};
use mapek::knowledge::audit::verify_chain;
use mapek::knowledge::findings::{self, Finding};
use mapek::knowledge::outbox;
use mapek::model::{FindingKind, Subject};

const DAY: i64 = 86_400_000;

fn finding(package: &str, at: i64, resolved: bool) -> Finding {
    let subject = Subject {
        package: package.into(),
        version: None,
    };
    let mut f = Finding::raised(
        FindingKind::Unmaintained,
        subject.clone(),
        Finding::fingerprint_of(FindingKind::Unmaintained, &subject),
        "test".into(),
        Default::default(),
        at,
    );
    if resolved {
        f.resolve(at);
    }
    f
}

#[tokio::test]
async fn compaction_removes_old_resolved_findings_and_notices_and_keeps_what_is_still_needed() {
    let w = world(4).await;
    let store = &w.t.store;
    let old = NOW - 100 * DAY;
    let mut tx = store.begin().await.unwrap();
    for f in [
        finding("pkg-00000", old, true),       // old, resolved: removed
        finding("pkg-00001", NOW - DAY, true), // recent: kept
        finding("pkg-00002", old, false),      // old but open: kept
        finding("pkg-00003", old, true),       // old, but its remediation awaits verification
    ] {
        findings::insert(&mut tx, &f).await.unwrap();
    }
    outbox::enqueue(&mut tx, "rem-delivered", None, "{}", old)
        .await
        .unwrap();
    outbox::record_try(&mut tx, "rem-delivered", "delivered", old, None, old)
        .await
        .unwrap();
    outbox::enqueue(&mut tx, "rem-pending", None, "{}", old)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let waiting = finding("pkg-00003", old, true).id;
    sqlx::query(
        "INSERT INTO remediations (id, idempotency_key, finding_id, policy, action, params, package, \
         mode, status, reason, created_at, updated_at, signature, verify_at) \
         VALUES ('rem-x', 'k-x', $1, 'p', 'quarantine', '{}', 'pkg-00003', 'enforce', 'executed', '', $2, $2, '', $3)",
    )
    .bind(waiting)
    .bind(old)
    .bind(NOW + DAY)
    .execute(store.raw_pool())
    .await
    .unwrap();

    let rt = w.runtime(PolicySource::fixed(common::default_policies()));
    let done = compact_once(&rt, NOW).await.unwrap();
    assert_eq!((done.resolved_findings, done.notices), (1, 1));
    let left: Vec<String> = store
        .recent_findings(100)
        .await
        .unwrap()
        .into_iter()
        .map(|f| f.subject.package)
        .collect();
    assert_eq!(left.len(), 3);
    assert!(!left.contains(&"pkg-00000".to_string()));
    assert!(store.notice("rem-pending").await.unwrap().is_some());
    assert!(store.notice("rem-delivered").await.unwrap().is_none());
    let entries = store.audit_entries().await.unwrap();
    assert_eq!(entries.last().unwrap().kind, "retention.compacted");
    assert!(verify_chain(&entries, &w.key.public()).is_ok());
    // Nothing more to remove the second time.
    let again = compact_once(&rt, NOW).await.unwrap();
    assert_eq!((again.resolved_findings, again.notices), (0, 0));
}

#[tokio::test]
async fn the_daemon_compacts_at_the_times_of_its_cron_schedule() {
    let w = world(4).await;
    let store = &w.t.store;
    let mut tx = store.begin().await.unwrap();
    // Resolved long before the system clock's now.
    findings::insert(&mut tx, &finding("pkg-00000", NOW - 400 * DAY, true))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let mut rt = w.runtime(PolicySource::fixed(common::default_policies()));
    rt.compaction.schedule = cron::Schedule::from_str("* * * * * *").unwrap();
    let rt = std::sync::Arc::new(rt);
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(retention_task(rt.clone(), stop.clone()));
    let mut removed = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if store.recent_findings(10).await.unwrap().is_empty() {
            removed = true;
            break;
        }
    }
    stop.cancel();
    task.await.unwrap();
    assert!(removed, "a schedule of every second compacts within 5 s");
}
