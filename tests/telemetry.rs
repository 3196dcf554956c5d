//! Telemetry storage: the intake over HTTP (token, partial refusal, events about releases the registry does not hold refused, size bound, durability), batches, retention, the upgrade of older tables and series numbers.

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use std::sync::Arc;
use tower::ServiceExt;

use common::{store, world, NOW};
use mapek::knowledge::Store;
use mapek::monitor::events::{Batch, Event, Horizon, HOUR, MINUTE};
use mapek::monitor::intake::Intake;

const TOKEN: &str = "a-test-token-of-some-length";
const T0: i64 = 1_795_000_000_000 - 1_795_000_000_000 % HOUR;

async fn post(
    app: &axum::Router,
    token: Option<&str>,
    body: String,
) -> (StatusCode, serde_json::Value) {
    let mut req = Request::post("/v1/events");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = app
        .clone()
        .oneshot(req.body(Body::from(body)).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, serde_json::from_slice(&bytes).unwrap_or_default())
}

fn stored_events(d: &mapek::knowledge::telemetry::TelemetryDelta) -> i64 {
    let installs_and_downloads: i64 = d
        .buckets
        .iter()
        .filter(|b| b.width == MINUTE)
        .map(|b| b.counts.installs_ok + b.counts.installs_failed + b.counts.downloads)
        .sum();
    let lookups: i64 = d
        .lookups
        .iter()
        .filter(|l| l.width == MINUTE)
        .map(|l| l.lookups)
        .sum();
    installs_and_downloads + lookups + d.reports.len() as i64
}

#[tokio::test]
async fn the_intake_takes_valid_lines_refuses_the_rest_and_stores_nothing_without_a_token() {
    let w = world(3).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let (writer, task) = Intake::start(w.t.store.clone(), stop.clone());
    let mut rt = w.runtime(mapek::daemon::reload::PolicySource::fixed(
        common::default_policies(),
    ));
    rt.intake = Some(mapek::daemon::http::IntakeConfig {
        writer,
        token: TOKEN.into(),
        max_body: 4096,
        horizon: Horizon::default(),
    });
    let rt = Arc::new(rt);
    let app = mapek::daemon::http::router(rt.clone());
    let body = "{\"type\":\"install\",\"package\":\"pkg-00001\",\"version\":\"1.0.0\",\"ok\":false,\"error\":\"checksum\"}\n\
                {\"type\":\"download\",\"package\":\"pkg-00001\",\"version\":\"1.0.0\"}\n\
                {\"type\":\"lookup\",\"latency_ms\":\"fast\"}\n\
                {\"type\":\"lookup\",\"latency_ms\":12.5}\n\
                {\"type\":\"report\",\"package\":\"pkg-00002\",\"version\":\"1.0.0\",\"reporter\":\"alice\",\"category\":\"malware\"}\n\
                {\"type\":\"install\",\"package\":\"../etc\",\"version\":\"1\",\"ok\":true}\n";

    for token in [None, Some("wrong-token-wrong-token")] {
        let (status, _) = post(&app, token, body.to_string()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(
        stored_events(&w.t.store.telemetry_since(0).await.unwrap()),
        0
    );

    let (status, answer) = post(&app, Some(TOKEN), body.to_string()).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["accepted"], 4);
    assert_eq!(answer["refused"], 2);
    assert_eq!(answer["errors"][0]["line"], 3);
    assert_eq!(answer["errors"][1]["line"], 6);
    assert!(answer["errors"][1]["reason"]
        .as_str()
        .unwrap()
        .contains("package"));
    // What the answer counted as accepted is in the store, and nothing else.
    let stored = w.t.store.telemetry_since(0).await.unwrap();
    assert_eq!(stored_events(&stored), 4);
    let metrics = rt.metrics.render();
    assert!(
        metrics.contains("mapek_intake_events_total{result=\"accepted\"} 4"),
        "{metrics}"
    );
    assert!(
        metrics.contains("mapek_intake_events_total{result=\"refused\"} 2"),
        "{metrics}"
    );

    // Over the size bound: 413, and still nothing more stored.
    let big = format!("{}\n", "{\"type\":\"lookup\",\"latency_ms\":1}").repeat(200);
    let (status, _) = post(&app, Some(TOKEN), big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        stored_events(&w.t.store.telemetry_since(0).await.unwrap()),
        4
    );
    stop.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn events_about_packages_or_versions_the_registry_does_not_hold_are_refused_per_line() {
    let w = world(3).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let (writer, task) = Intake::start(w.t.store.clone(), stop.clone());
    let mut rt = w.runtime(mapek::daemon::reload::PolicySource::fixed(
        common::default_policies(),
    ));
    rt.intake = Some(mapek::daemon::http::IntakeConfig {
        writer,
        token: TOKEN.into(),
        max_body: 1 << 20,
        horizon: Horizon::default(),
    });
    let rt = Arc::new(rt);
    let app = mapek::daemon::http::router(rt.clone());
    let body = "{\"type\":\"download\",\"package\":\"no-such-pkg\",\"version\":\"1.0.0\"}\n\
                {\"type\":\"report\",\"package\":\"ghost-pkg\",\"version\":\"1.0.0\",\"reporter\":\"mallory\",\"category\":\"malware\"}\n\
                {\"type\":\"install\",\"package\":\"pkg-00001\",\"version\":\"9.9.9\",\"ok\":false}\n\
                {\"type\":\"download\",\"package\":\"pkg-00001\",\"version\":\"1.0.0\"}\n\
                {\"type\":\"download\",\"package\":\"no-such-pkg\",\"version\":\"1.0.0\"}\n";
    let (status, answer) = post(&app, Some(TOKEN), body.to_string()).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["accepted"], 1, "{answer}");
    assert_eq!(answer["refused"], 4, "{answer}");
    let reasons: Vec<(i64, String)> = answer["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["line"].as_i64().unwrap(),
                e["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(reasons[0].0, 1);
    assert!(
        reasons[0]
            .1
            .contains("`no-such-pkg` is not in the registry"),
        "{reasons:?}"
    );
    assert!(
        reasons[1].1.contains("`ghost-pkg` is not in the registry"),
        "{reasons:?}"
    );
    assert!(
        reasons[2].1.contains("has no release `9.9.9`"),
        "{reasons:?}"
    );
    assert_eq!(reasons[3].0, 5);
    // Nothing about them is stored: no series, no report row.
    let stored = w.t.store.telemetry_since(0).await.unwrap();
    assert_eq!(stored_events(&stored), 1);
    assert!(stored.reports.is_empty());
    let metrics = rt.metrics.render();
    assert!(
        metrics.contains("mapek_intake_events_total{result=\"unknown\"} 4"),
        "{metrics}"
    );
    stop.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn concurrent_requests_are_committed_together_and_none_is_lost() {
    let t = store().await;
    let stop = tokio_util::sync::CancellationToken::new();
    let (writer, task) = Intake::start(t.store.clone(), stop.clone());
    let mut handles = Vec::new();
    for i in 0..20 {
        let writer = writer.clone();
        handles.push(tokio::spawn(async move {
            let mut b = Batch::default();
            for j in 0..50 {
                b.add(Event::Download {
                    package: format!("p{}", (i + j) % 7),
                    version: "1.0.0".into(),
                    at: NOW + j * 1000,
                });
            }
            writer.submit(b).await
        }));
    }
    for h in handles {
        h.await.unwrap().unwrap();
    }
    stop.cancel();
    task.await.unwrap();
    let d = t.store.telemetry_since(0).await.unwrap();
    assert_eq!(stored_events(&d), 1000);
    let batches: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM telemetry_batches")
        .fetch_one(t.store.raw_pool())
        .await
        .unwrap();
    assert!(
        (1..=20).contains(&batches),
        "at most one row a request: {batches}"
    );
}

fn downloads_of(d: &mapek::knowledge::telemetry::TelemetryDelta, width: i64) -> i64 {
    d.buckets
        .iter()
        .filter(|b| b.width == width)
        .map(|b| b.counts.downloads)
        .sum()
}

#[tokio::test]
async fn old_minutes_are_folded_into_an_hour_batch_that_only_a_restart_reads() {
    let t = store().await;
    let mut b = Batch::default();
    for i in 0..120 {
        b.add(Event::Download {
            package: "p".into(),
            version: "1.0.0".into(),
            at: T0 + i * MINUTE,
        });
    }
    // A name that must be escaped in the stored JSON is folded like the others.
    b.add(Event::Download {
        package: "p".into(),
        version: "1.0.0-\"q\"".into(),
        at: T0,
    });
    let first = t.store.write_telemetry(&b).await.unwrap();
    let mut late = Batch::default();
    late.add(Event::Download {
        package: "p".into(),
        version: "1.0.0".into(),
        at: T0 + 10 * HOUR,
    });
    let second = t.store.write_telemetry(&late).await.unwrap();
    assert!(second > first);
    // The first batch lies wholly before the cut, the second does not.
    let removed = t
        .store
        .prune_telemetry(T0 + 3 * HOUR, T0 - 100 * HOUR, 0)
        .await
        .unwrap();
    assert_eq!(removed, 1, "the folded minute batch");
    let all = t.store.telemetry_since(0).await.unwrap();
    assert_eq!(downloads_of(&all, HOUR), 121, "two hours, folded");
    assert!(all.buckets.iter().any(|r| r.width == HOUR
        && all.name(r.series).unwrap().version == "1.0.0-\"q\""
        && r.counts.downloads == 1));
    assert_eq!(downloads_of(&all, MINUTE), 1);
    let hours: std::collections::BTreeSet<i64> = all
        .buckets
        .iter()
        .filter(|r| r.width == HOUR)
        .map(|r| r.bucket)
        .collect();
    assert_eq!(hours, [T0, T0 + HOUR].into_iter().collect());
    // A reader that had read both batches sees nothing new in the fold.
    let after = t.store.telemetry_since(second).await.unwrap();
    assert!(after.buckets.is_empty(), "{:?}", after.buckets);
    // A new batch after the fold still gets a higher number than anything read.
    let third = t.store.write_telemetry(&late).await.unwrap();
    assert!(third > all.head, "{third} after {}", all.head);
    // Hour batches past their retention go, except the newest row, which holds the sequence.
    t.store
        .prune_telemetry(T0 + 3 * HOUR, T0 + 100 * HOUR, 0)
        .await
        .unwrap();
    let all = t.store.telemetry_since(0).await.unwrap();
    assert_eq!(downloads_of(&all, HOUR), 0);
    assert_eq!(downloads_of(&all, MINUTE), 2);
}

#[tokio::test]
async fn buckets_of_an_earlier_version_become_batches_without_counting_an_hour_twice() {
    let t = store().await;
    let old = "CREATE TABLE telemetry_buckets (package TEXT NOT NULL, version TEXT NOT NULL, \
               width BIGINT NOT NULL, bucket BIGINT NOT NULL, installs_ok BIGINT NOT NULL, \
               installs_failed BIGINT NOT NULL, downloads BIGINT NOT NULL, seq BIGINT NOT NULL, \
               PRIMARY KEY (package, version, width, bucket)); \
               CREATE TABLE lookup_buckets (width BIGINT NOT NULL, bucket BIGINT NOT NULL, \
               bound BIGINT NOT NULL, lookups BIGINT NOT NULL, seq BIGINT NOT NULL, \
               PRIMARY KEY (width, bucket, bound)); \
               CREATE TABLE intake_seq (id BIGINT PRIMARY KEY, value BIGINT NOT NULL);";
    // Empty, as a new store's earlier migrations create them: dropped, nothing converted.
    sqlx::raw_sql(old)
        .execute(t.store.raw_pool())
        .await
        .unwrap();
    assert!(!t.store.adopt_bucket_tables().await.unwrap());
    sqlx::raw_sql(old)
        .execute(t.store.raw_pool())
        .await
        .unwrap();
    // Hours T0 and T0+1h as hour buckets; minutes from T0+1h30 on (the partial hour T0+1h is
    // taken from its hour bucket, the minutes from T0+2h from the minutes).
    let rows = [
        ("p", HOUR, T0, 60),
        ("p", HOUR, T0 + HOUR, 60),
        ("p", HOUR, T0 + 2 * HOUR, 2),
        ("p", MINUTE, T0 + HOUR + 30 * MINUTE, 1),
        ("p", MINUTE, T0 + 2 * HOUR, 1),
        ("p", MINUTE, T0 + 2 * HOUR + MINUTE, 1),
    ];
    for (p, width, bucket, n) in rows {
        sqlx::query("INSERT INTO telemetry_buckets VALUES ($1, '1.0.0', $2, $3, 0, 0, $4, 7)")
            .bind(p)
            .bind(width)
            .bind(bucket)
            .bind(n)
            .execute(t.store.raw_pool())
            .await
            .unwrap();
    }
    sqlx::query("INSERT INTO lookup_buckets VALUES ($1, $2, 100, 5, 7)")
        .bind(MINUTE)
        .bind(T0 + 2 * HOUR)
        .execute(t.store.raw_pool())
        .await
        .unwrap();
    assert!(t.store.adopt_bucket_tables().await.unwrap());
    assert!(!t.store.adopt_bucket_tables().await.unwrap(), "only once");
    let all = t.store.telemetry_since(0).await.unwrap();
    assert_eq!(downloads_of(&all, HOUR), 120);
    assert_eq!(downloads_of(&all, MINUTE), 2);
    assert_eq!(all.lookups.iter().map(|l| l.lookups).sum::<i64>(), 5);
    // The old tables are gone: a second store open does not convert again.
    assert!(sqlx::query("SELECT 1 FROM telemetry_buckets")
        .fetch_optional(t.store.raw_pool())
        .await
        .is_err());
}

#[tokio::test]
async fn writers_with_their_own_view_of_the_series_agree_on_their_numbers() {
    let t = store().await;
    let other = Store::open(&t.url).await.unwrap();
    let download = |p: &str, v: &str, at: i64| {
        let mut b = Batch::default();
        b.add(Event::Download {
            package: p.into(),
            version: v.into(),
            at,
        });
        b
    };
    // Each writer numbers series the other has not seen yet, then one the other numbered.
    t.store
        .write_telemetry(&download("a", "1", T0))
        .await
        .unwrap();
    other
        .write_telemetry(&download("b", "1", T0))
        .await
        .unwrap();
    other
        .write_telemetry(&download("a", "1", T0))
        .await
        .unwrap();
    t.store
        .write_telemetry(&download("b", "1", T0))
        .await
        .unwrap();
    // A third reader, with no view at all, names every row as it was written.
    let reader = Store::open(&t.url).await.unwrap();
    let all = reader.telemetry_since(0).await.unwrap();
    let mut by_name: Vec<(String, String, i64)> = all
        .buckets
        .iter()
        .map(|r| {
            let name = all.name(r.series).expect("named");
            (name.package.clone(), name.version.clone(), r.series)
        })
        .collect();
    by_name.sort();
    by_name.dedup();
    assert_eq!(
        by_name.len(),
        2,
        "two series, each with one number: {by_name:?}"
    );
    assert_eq!(downloads_of(&all, MINUTE), 4);
    let numbers: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM telemetry_series")
        .fetch_one(reader.raw_pool())
        .await
        .unwrap();
    assert_eq!(numbers, 2);
}
