//! `notify` and `reindex` on a real store: a notice is queued with its remediation and delivered beside the loop, retried with backoff and given up on when the webhook is dead or slow; a reindex rebuilds the search index without quarantined packages.

mod common;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{world, World, NOW};
use mapek::analyze::{self, Rules};
use mapek::execute::notify::{Delivery, Notifier, NotifySettings};
use mapek::knowledge::audit::verify_chain;
use mapek::knowledge::remediations::Status;
use mapek::monitor::{self, MonitorState};
use mapek::plan::policy::PolicySet;
use mapek::registry::changes::search;
use mapek::registry::{Change, Registry};

fn notify_policy(webhook: &str) -> PolicySet {
    let src = format!(
        "[[policy]]\nid = \"page-on-tamper\"\non = \"checksum_mismatch\"\naction = \"notify\"\n\
         params = {{ webhook = \"{webhook}\", message = \"a release was tampered with\" }}\nmode = \"enforce\"\n"
    );
    PolicySet::from_sources(&[(PathBuf::from("n.toml"), src)]).expect("loads")
}

/// Tampers pkg-00002 and runs monitor, analyze, plan and execute once.
async fn tamper_and_cycle(w: &World, set: &PolicySet) {
    common::tamper(&w.registry, "pkg-00002").await;
    let mut state = MonitorState::new();
    let m = monitor::cycle(
        &mut state,
        &w.registry,
        &w.t.store,
        &w.trust,
        NOW,
        3_600_000,
    )
    .await
    .unwrap();
    analyze::cycle(&w.t.store, &m.observations, &Rules::default(), NOW)
        .await
        .unwrap();
    common::plan(w, set, false, NOW).await;
    mapek::execute::cycle(&w.t.store, &w.registry, &w.key, NOW)
        .await
        .unwrap();
}

/// A webhook on loopback that records what it is sent and answers `status` after `delay`.
async fn webhook(status: u16, delay: Duration) -> (String, Arc<Mutex<Vec<String>>>) {
    let got = Arc::new(Mutex::new(Vec::new()));
    let seen = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: String| {
            let seen = seen.clone();
            async move {
                tokio::time::sleep(delay).await;
                seen.lock().unwrap().push(body);
                axum::http::StatusCode::from_u16(status).unwrap()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/hook"), got)
}

#[tokio::test]
async fn a_notice_is_queued_with_its_remediation_and_delivered_beside_the_loop() {
    let w = world(6).await;
    let (url, got) = webhook(204, Duration::ZERO).await;
    tamper_and_cycle(&w, &notify_policy(&url)).await;
    let store = &w.t.store;
    let rem = store.recent_remediations(10).await.unwrap();
    assert_eq!(rem.len(), 1);
    assert_eq!(rem[0].status, Status::Executed);
    assert!(got.lock().unwrap().is_empty(), "execution only queues");
    let queued = store.notice(&rem[0].id).await.unwrap().expect("queued");
    assert_eq!(queued.status, "pending");

    let notifier = Notifier::new(NotifySettings::default()).unwrap();
    let done = notifier
        .deliver_due(store, &w.key, NOW + 1_000, 20)
        .await
        .unwrap();
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].1, Delivery::Delivered);
    let bodies = got.lock().unwrap().clone();
    assert_eq!(bodies.len(), 1);
    let body: serde_json::Value = serde_json::from_str(&bodies[0]).unwrap();
    assert_eq!(body["policy"], "page-on-tamper");
    assert_eq!(body["subject"], "pkg-00002@1.0.0");
    assert_eq!(body["finding"]["kind"], "checksum_mismatch");
    assert_eq!(body["message"], "a release was tampered with");
    // Delivered once: nothing is due any more.
    assert!(notifier
        .deliver_due(store, &w.key, NOW + 3_600_000, 20)
        .await
        .unwrap()
        .is_empty());
    let entries = store.audit_entries().await.unwrap();
    assert!(entries.iter().any(|e| e.kind == "notice.delivered"));
    assert!(verify_chain(&entries, &w.key.public()).is_ok());
}

#[tokio::test]
async fn a_dead_or_slow_webhook_is_retried_with_backoff_then_given_up_on() {
    let w = world(6).await;
    // Nothing listens on port 1.
    tamper_and_cycle(&w, &notify_policy("http://127.0.0.1:1/hook")).await;
    let store = &w.t.store;
    let settings = NotifySettings {
        max_tries: 3,
        timeout: Duration::from_millis(300),
        ..NotifySettings::default()
    };
    let notifier = Notifier::new(settings).unwrap();
    let first = notifier.deliver_due(store, &w.key, NOW, 20).await.unwrap();
    match &first[0].1 {
        Delivery::Retry { error, next_at } => {
            assert!(error.starts_with("cannot connect"), "{error}");
            assert_eq!(*next_at, NOW + 30_000);
        }
        other => panic!("{other:?}"),
    }
    // Not due before its backoff.
    assert!(notifier
        .deliver_due(store, &w.key, NOW + 29_000, 20)
        .await
        .unwrap()
        .is_empty());
    let second = notifier
        .deliver_due(store, &w.key, NOW + 30_000, 20)
        .await
        .unwrap();
    assert!(
        matches!(&second[0].1, Delivery::Retry { next_at, .. } if *next_at == NOW + 30_000 + 60_000)
    );
    let third = notifier
        .deliver_due(store, &w.key, NOW + 90_000, 20)
        .await
        .unwrap();
    assert!(matches!(&third[0].1, Delivery::Failed { .. }), "{third:?}");
    let id = &third[0].0.id;
    let n = store.notice(id).await.unwrap().unwrap();
    assert_eq!((n.status.as_str(), n.tries), ("failed", 3));
    assert!(store
        .audit_entries()
        .await
        .unwrap()
        .iter()
        .any(|e| e.kind == "notice.failed"));

    // A webhook slower than the timeout is cut off rather than waited for.
    let (slow, _) = webhook(200, Duration::from_secs(30)).await;
    let w2 = world(6).await;
    tamper_and_cycle(&w2, &notify_policy(&slow)).await;
    let started = std::time::Instant::now();
    let out = notifier
        .deliver_due(&w2.t.store, &w2.key, NOW, 20)
        .await
        .unwrap();
    assert!(matches!(&out[0].1, Delivery::Retry { error, .. } if error.starts_with("timed out")));
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn a_notice_with_no_webhook_anywhere_fails_at_once_and_stays_in_the_outbox() {
    let w = world(6).await;
    let src = "[[policy]]\nid = \"page\"\non = \"checksum_mismatch\"\naction = \"notify\"\nmode = \"enforce\"\n";
    let set =
        PolicySet::from_sources(&[(PathBuf::from("n.toml"), src.to_string())]).expect("loads");
    tamper_and_cycle(&w, &set).await;
    let notifier = Notifier::new(NotifySettings::default()).unwrap();
    let out = notifier
        .deliver_due(&w.t.store, &w.key, NOW, 20)
        .await
        .unwrap();
    match &out[0].1 {
        Delivery::Failed { error } => assert!(error.starts_with("no webhook"), "{error}"),
        other => panic!("retrying cannot help without a webhook: {other:?}"),
    }
    let n = w.t.store.notice(&out[0].0.id).await.unwrap().unwrap();
    assert_eq!((n.status.as_str(), n.tries), ("failed", 1));
}

#[tokio::test]
async fn reindex_rebuilds_the_search_index_without_quarantined_packages() {
    let w = world(8).await;
    let store = &w.t.store;
    assert!(
        search(store, "pkg", 50).await.unwrap().is_empty(),
        "no index yet"
    );
    let mut tx = store.begin().await.unwrap();
    w.registry
        .apply(
            &mut tx,
            &Change::QuarantinePackage {
                package: "pkg-00003".into(),
            },
            NOW,
        )
        .await
        .unwrap();
    let applied = w
        .registry
        .apply(&mut tx, &Change::Reindex, NOW)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert!(applied.changed);
    assert!(!Change::Reindex.reversible());
    let found = search(store, "pkg", 50).await.unwrap();
    assert_eq!(found.len(), 7, "{found:?}");
    assert!(!found.contains(&"pkg-00003".to_string()));
    assert_eq!(search(store, "00005", 5).await.unwrap(), vec!["pkg-00005"]);
}
