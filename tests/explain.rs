//! `mapek explain`: a remediation, its finding and an audit entry each explained with what was observed, the policy and its condition, the gate, the signature, the audit entries; the same through the admin API; an unknown id is a 404.

mod common;

use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;

use common::{default_policies, world};
use mapek::daemon::explain::Explanation;
use mapek::daemon::reload::PolicySource;
use mapek::daemon::{self, RunOptions};
use mapek::knowledge::remediations::Status;

#[tokio::test]
async fn a_remediation_its_finding_and_an_audit_entry_are_explained() {
    let w = world(20).await;
    w.plant_problems().await;
    let mut rt = w.runtime(PolicySource::fixed(default_policies()));
    rt.admin_token = Some("an-admin-token-long-enough".into());
    rt.leadership.set(daemon::lead::Role::Standalone);
    let rt = Arc::new(rt);
    daemon::run(
        rt.clone(),
        RunOptions {
            cycles: Some(1),
            interval: Duration::from_millis(10),
            grace: Duration::from_secs(30),
        },
        Default::default(),
    )
    .await
    .expect("a cycle");
    let executed =
        w.t.store
            .remediations_with_status(Status::Executed)
            .await
            .expect("remediations");
    let r = executed
        .first()
        .expect("the planted problems were remediated");
    let policies = default_policies();
    let key = w.key.public();

    let x = Explanation::read(&w.t.store, &policies, Some(&key), &r.id)
        .await
        .expect("explained");
    let story = &x.remediations[0];
    assert_eq!(story.remediation.id, r.id);
    assert_eq!(story.signature_valid, Some(true));
    let policy = story.policy.as_ref().expect("the policy is loaded");
    assert_eq!(policy.id, r.policy);
    assert_eq!(
        policy.when,
        policies.get(&r.policy).and_then(|p| p.when.clone()),
        "its condition, as written"
    );
    assert!(story.audit.iter().any(|e| e.kind == "remediation.executed"));
    let finding = x.finding.as_ref().expect("the finding it answered");
    assert_eq!(Some(&finding.id), r.finding_id.as_ref());
    let text = x.to_string();
    for part in [
        "observed:",
        "life: first seen",
        "policy on [",
        "when ",
        "the daemon's signature verifies",
        "audit ",
    ] {
        assert!(text.contains(part), "`{part}` missing from:\n{text}");
    }
    // A quarantine in force handles its (still firing) finding, and says so.
    assert_eq!(r.action, mapek::model::Action::Quarantine);
    assert_eq!(x.handled_by.as_deref(), Some(r.id.as_str()));
    assert!(
        text.contains(&format!("handled: {} (a quarantine or yank", r.id)),
        "{text}"
    );

    // From the finding: the same remediation among those planned for it.
    let by_finding = Explanation::read(&w.t.store, &policies, Some(&key), &finding.id)
        .await
        .expect("explained");
    assert!(by_finding
        .remediations
        .iter()
        .any(|s| s.remediation.id == r.id));
    // From an audit entry about it.
    let seq = story.audit[0].seq;
    let by_entry = Explanation::read(&w.t.store, &policies, Some(&key), &seq.to_string())
        .await
        .expect("explained");
    assert_eq!(by_entry.entry.as_ref().map(|e| e.seq), Some(seq));
    assert_eq!(by_entry.remediations[0].remediation.id, r.id);
    // A tampered signature is said so.
    let wrong = mapek::keys::KeyPair::from_seed("other", [3; 32]).public();
    let x = Explanation::read(&w.t.store, &policies, Some(&wrong), &r.id)
        .await
        .expect("explained");
    assert_eq!(x.remediations[0].signature_valid, Some(false));

    // The admin API answers the same, and 404 for an unknown id.
    let app = daemon::http::router(rt.clone());
    let get = |path: String| {
        axum::http::Request::get(path)
            .header("authorization", "Bearer an-admin-token-long-enough")
            .body(axum::body::Body::empty())
            .expect("request")
    };
    let answer = app
        .clone()
        .oneshot(get(format!("/v1/admin/explain/{}", r.id)))
        .await
        .expect("answer");
    assert_eq!(answer.status(), axum::http::StatusCode::OK);
    let body = axum::body::to_bytes(answer.into_body(), 1 << 22)
        .await
        .expect("body");
    let remote: Explanation = serde_json::from_slice(&body).expect("an Explanation");
    assert_eq!(remote.remediations[0].remediation.id, r.id);
    assert_eq!(remote.remediations[0].signature_valid, Some(true));
    let answer = app
        .clone()
        .oneshot(get("/v1/admin/explain/rem-nope".into()))
        .await
        .expect("answer");
    assert_eq!(answer.status(), axum::http::StatusCode::NOT_FOUND);
}
