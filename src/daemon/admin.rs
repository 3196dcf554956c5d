//! The admin API under `/v1/admin`: status, pause and resume, reload, pending plans and signed decisions on them, rollback, closing the circuit; bearer token, every call audited.
//!
//! Without a valid token the answer is 401 and nothing is done (nor written: an anonymous
//! caller cannot grow the audit log). A replica that does not act (a standby) answers 409 and
//! names the leader: admin calls go to the leader, whose writes are fenced by its lease.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use std::sync::Arc;

use super::Runtime;
use crate::knowledge::approvals::{Approval, Decision};
use crate::knowledge::audit::NewEntry;
use crate::knowledge::control::{set_paused, Paused};
use crate::knowledge::lease::LEADER;
use crate::knowledge::remediations::Status;
use crate::knowledge::StoreError;
use crate::model::{AdminCall, AuditKind};

/// The admin routes, behind the token check: a call without a valid token is answered 401
/// before its body is read or its path parsed.
pub fn routes(rt: Arc<Runtime>) -> Router<Arc<Runtime>> {
    Router::new()
        .route("/v1/admin/status", get(status))
        .route("/v1/admin/pause", post(pause))
        .route("/v1/admin/resume", post(resume))
        .route("/v1/admin/reload", post(reload))
        .route("/v1/admin/plans", get(plans))
        .route("/v1/admin/plans/{id}/{decision}", post(decide))
        .route("/v1/admin/remediations/{id}/rollback", post(rollback))
        .route("/v1/admin/circuit/close", post(close_circuit))
        .route("/v1/admin/explain/{id}", get(explain))
        .route_layer(axum::middleware::from_fn_with_state(rt, authenticated))
}

/// The call a path names, for the metrics' label of a refused request.
fn call_of(path: &str) -> AdminCall {
    let rest = path.strip_prefix("/v1/admin/").unwrap_or(path);
    match rest.split('/').next().unwrap_or_default() {
        "pause" => AdminCall::Pause,
        "resume" => AdminCall::Resume,
        "reload" => AdminCall::Reload,
        "plans" if rest == "plans" => AdminCall::Plans,
        "plans" => AdminCall::Decide,
        "remediations" => AdminCall::Rollback,
        "circuit" => AdminCall::CircuitClose,
        "explain" => AdminCall::Explain,
        _ => AdminCall::Status,
    }
}

/// Runs the call only when it carries the admin token.
async fn authenticated(
    State(rt): State<Arc<Runtime>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let call = call_of(request.uri().path());
    if let Some(refusal) = unauthorized(&rt, request.headers(), call) {
        return refusal;
    }
    // Every admin call reads or writes the store: refused at once while it is unreachable.
    if let Some(down) = super::http::store_down(&rt) {
        rt.metrics
            .admin_requests
            .with_label_values(&[call.as_str(), "error"])
            .inc();
        return down;
    }
    next.run(request).await
}

fn reply(status: StatusCode, body: serde_json::Value) -> Response {
    (status, Json(body)).into_response()
}

/// None when the request carries the admin token; otherwise the 401 to answer (counted, logged).
fn unauthorized(rt: &Runtime, headers: &HeaderMap, endpoint: AdminCall) -> Option<Response> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let ok = match (&rt.admin_token, given) {
        (Some(token), Some(g)) => super::http::same_secret(g.trim().as_bytes(), token.as_bytes()),
        _ => false,
    };
    if ok {
        return None;
    }
    rt.metrics
        .admin_requests
        .with_label_values(&[endpoint.as_str(), "unauthorized"])
        .inc();
    tracing::warn!(
        endpoint = endpoint.as_str(),
        "admin API call without a valid token refused"
    );
    let why = if rt.admin_token.is_none() {
        "the admin API is off: no admin_token_file is configured"
    } else {
        "a valid bearer token is required"
    };
    Some(reply(
        StatusCode::UNAUTHORIZED,
        serde_json::json!({ "error": why }),
    ))
}

/// None when this replica acts (the token was checked before the call ran); otherwise the
/// answer to give.
async fn refused(rt: &Runtime, endpoint: AdminCall) -> Option<Response> {
    if rt.leadership.acting() {
        return None;
    }
    rt.metrics
        .admin_requests
        .with_label_values(&[endpoint.as_str(), "refused"])
        .inc();
    let leader = rt
        .store
        .lease(LEADER)
        .await
        .ok()
        .flatten()
        .map(|h| h.holder)
        .unwrap_or_default();
    Some(reply(
        StatusCode::CONFLICT,
        serde_json::json!({
            "error": format!("this replica is {}: send admin calls to the leader", rt.leadership.role().as_str()),
            "leader": leader,
        }),
    ))
}

/// Audits the call (its own entry, beside any entry of the change itself), counts it and
/// answers; a call whose audit entry cannot be written is answered 503.
async fn finish(
    rt: &Runtime,
    endpoint: AdminCall,
    subject: &str,
    status: StatusCode,
    body: serde_json::Value,
) -> Response {
    let result = if status.is_success() { "ok" } else { "refused" };
    // A decision, a rollback, a pause or resume, a reload or a closed circuit changes what the
    // loop would do: it looks now.
    if status.is_success()
        && !matches!(
            endpoint,
            AdminCall::Status | AdminCall::Plans | AdminCall::Explain
        )
    {
        rt.wake.ring(super::wake::Reason::Admin);
    }
    let write = rt.store.record(
        &rt.key,
        NewEntry {
            at: rt.clock.now_ms(),
            kind: AuditKind::Admin(endpoint),
            actor: "admin-api".into(),
            subject: subject.to_string(),
            remediation_id: None,
            detail: serde_json::json!({ "status": status.as_u16(), "result": result }),
        },
    );
    if let Err(e) = write.await {
        rt.metrics
            .admin_requests
            .with_label_values(&[endpoint.as_str(), "error"])
            .inc();
        return reply(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({ "error": format!("the call could not be audited: {e}"), "outcome": body }),
        );
    }
    rt.metrics
        .admin_requests
        .with_label_values(&[endpoint.as_str(), result])
        .inc();
    reply(status, body)
}

fn store_failed(e: impl std::fmt::Display) -> (StatusCode, serde_json::Value) {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        serde_json::json!({ "error": format!("knowledge store: {e}") }),
    )
}

async fn status(State(rt): State<Arc<Runtime>>) -> Response {
    if let Some(r) = refused(&rt, AdminCall::Status).await {
        return r;
    }
    let view = super::status::StatusView {
        role: rt.leadership.role().as_str(),
        holder: &rt.leadership.holder,
        policies: rt.policies.get().policies.len(),
        dry_run: rt.dry_run,
        window_ms: i64::try_from(rt.learning.window.as_millis()).unwrap_or(i64::MAX),
        now: rt.clock.now_ms(),
    };
    let (code, body) = match super::status::StatusReport::read(&rt.store, view).await {
        Ok(b) => match serde_json::to_value(b) {
            Ok(v) => (StatusCode::OK, v),
            Err(e) => store_failed(e),
        },
        Err(e) => store_failed(e),
    };
    finish(&rt, AdminCall::Status, "*", code, body).await
}

#[derive(Debug, Deserialize, Default)]
struct By {
    /// Who asks, for the audit log.
    #[serde(default)]
    by: Option<String>,
}

/// A call's JSON body: None when it is empty, the reason when it is not the JSON expected.
fn parsed<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<Option<T>, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(body)
        .map(Some)
        .map_err(|e| format!("the body is not the JSON this call takes: {e}"))
}

/// Who a call is by: its body's `by`, or an audited 400 when the body cannot be read.
async fn by_or_refuse(rt: &Runtime, endpoint: AdminCall, body: &[u8]) -> Result<String, Response> {
    match parsed::<By>(body) {
        Ok(b) => Ok(by_of(&b)),
        Err(why) => Err(finish(
            rt,
            endpoint,
            "*",
            StatusCode::BAD_REQUEST,
            serde_json::json!({ "error": why }),
        )
        .await),
    }
}

fn by_of(body: &Option<By>) -> String {
    body.as_ref()
        .and_then(|b| b.by.clone())
        .filter(|b| !b.trim().is_empty())
        .map(|b| format!("admin-api:{}", b.trim()))
        .unwrap_or_else(|| "admin-api".into())
}

async fn set_pause(rt: &Runtime, paused: Option<Paused>) -> Result<(), StoreError> {
    let mut tx = rt.store.begin().await?;
    set_paused(&mut tx, paused.as_ref()).await?;
    tx.commit().await?;
    rt.metrics.paused.set(i64::from(paused.is_some()));
    Ok(())
}

async fn pause(State(rt): State<Arc<Runtime>>, body: axum::body::Bytes) -> Response {
    if let Some(r) = refused(&rt, AdminCall::Pause).await {
        return r;
    }
    let by = match by_or_refuse(&rt, AdminCall::Pause, &body).await {
        Ok(by) => by,
        Err(r) => return r,
    };
    let paused = Paused {
        by: by.clone(),
        at: rt.clock.now_ms(),
    };
    let (code, body) = match set_pause(&rt, Some(paused.clone())).await {
        Ok(()) => {
            tracing::warn!(%by, "execution paused through the admin API");
            (
                StatusCode::OK,
                serde_json::json!({ "paused": paused, "note": "plans are still made and recorded; nothing is applied until resumed" }),
            )
        }
        Err(e) => store_failed(e),
    };
    finish(&rt, AdminCall::Pause, &by, code, body).await
}

async fn resume(State(rt): State<Arc<Runtime>>, body: axum::body::Bytes) -> Response {
    if let Some(r) = refused(&rt, AdminCall::Resume).await {
        return r;
    }
    let by = match by_or_refuse(&rt, AdminCall::Resume, &body).await {
        Ok(by) => by,
        Err(r) => return r,
    };
    let (code, body) = match set_pause(&rt, None).await {
        Ok(()) => {
            tracing::warn!(%by, "execution resumed through the admin API");
            (StatusCode::OK, serde_json::json!({ "paused": null }))
        }
        Err(e) => store_failed(e),
    };
    finish(&rt, AdminCall::Resume, &by, code, body).await
}

async fn reload(State(rt): State<Arc<Runtime>>) -> Response {
    if let Some(r) = refused(&rt, AdminCall::Reload).await {
        return r;
    }
    let (code, body) = match rt.policies.reload() {
        Some(super::reload::Reload::Loaded { policies }) => {
            rt.metrics
                .policy_reloads
                .with_label_values(&["success"])
                .inc();
            rt.metrics.policies_loaded.set(policies as i64);
            (StatusCode::OK, serde_json::json!({ "loaded": policies }))
        }
        Some(super::reload::Reload::Refused(errors)) => {
            rt.metrics
                .policy_reloads
                .with_label_values(&["failure"])
                .inc();
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                serde_json::json!({
                    "error": "the new policy set is refused; the last good set stays in force",
                    "problems": errors.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
                }),
            )
        }
        None => (
            StatusCode::CONFLICT,
            serde_json::json!({ "error": "this daemon's policies do not come from a directory" }),
        ),
    };
    finish(&rt, AdminCall::Reload, "*", code, body).await
}

async fn plans(State(rt): State<Arc<Runtime>>) -> Response {
    if let Some(r) = refused(&rt, AdminCall::Plans).await {
        return r;
    }
    let (code, body) = match rt.store.remediations_with_status(Status::Pending).await {
        Ok(list) => (StatusCode::OK, serde_json::json!({ "pending": list })),
        Err(e) => store_failed(e),
    };
    finish(&rt, AdminCall::Plans, "*", code, body).await
}

/// A maintainer's decision, signed where the maintainer's key is (see
/// `Approval::signing_bytes`); the daemon checks it, it never signs for a maintainer.
#[derive(Debug, Deserialize)]
struct SignedDecision {
    key_id: String,
    at: i64,
    signature: String,
}

async fn decide(
    State(rt): State<Arc<Runtime>>,
    Path((id, decision)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    let endpoint = AdminCall::Decide;
    if let Some(r) = refused(&rt, endpoint).await {
        return r;
    }
    let decision =
        match decision.as_str() {
            "approve" => Decision::Approve,
            "reject" => Decision::Reject,
            other => return finish(
                &rt,
                endpoint,
                &id,
                StatusCode::NOT_FOUND,
                serde_json::json!({ "error": format!("`{other}` is neither approve nor reject") }),
            )
            .await,
        };
    let Ok(Some(signed)) = parsed::<SignedDecision>(&body) else {
        return finish(
            &rt,
            endpoint,
            &id,
            StatusCode::BAD_REQUEST,
            serde_json::json!({ "error": "the body must be JSON: {\"key_id\", \"at\", \"signature\"}, the maintainer's signed decision" }),
        )
        .await;
    };
    let approval = Approval {
        remediation_id: id.clone(),
        key_id: signed.key_id,
        decision,
        at: signed.at,
        signature: signed.signature,
    };
    let policies = rt.policies.get();
    let (code, body) = match crate::plan::approve::record(
        &rt.store, &policies, &rt.trust, &rt.key, approval,
    )
    .await
    {
        Ok(a) => (
            StatusCode::OK,
            serde_json::json!({ "recorded": a.decision.as_str(), "key_id": a.key_id, "remediation": id }),
        ),
        Err(crate::plan::approve::ApprovalError::Store(e)) => store_failed(e),
        Err(e) => (
            StatusCode::CONFLICT,
            serde_json::json!({ "error": e.to_string() }),
        ),
    };
    finish(&rt, endpoint, &id, code, body).await
}

async fn rollback(
    State(rt): State<Arc<Runtime>>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    if let Some(r) = refused(&rt, AdminCall::Rollback).await {
        return r;
    }
    let by = match by_or_refuse(&rt, AdminCall::Rollback, &body).await {
        Ok(by) => by,
        Err(r) => return r,
    };
    let result = crate::execute::rollback::rollback(
        &rt.store,
        &rt.registry,
        &rt.key,
        &id,
        &by,
        rt.clock.now_ms(),
    )
    .await;
    let (code, body) = match result {
        Ok((r, outcome)) => (
            StatusCode::OK,
            serde_json::json!({ "rolled_back": id, "by": r.id, "action": r.action.as_str(), "outcome": format!("{outcome:?}") }),
        ),
        Err(e) => (
            StatusCode::CONFLICT,
            serde_json::json!({ "error": e.to_string() }),
        ),
    };
    finish(&rt, AdminCall::Rollback, &id, code, body).await
}

async fn close_circuit(State(rt): State<Arc<Runtime>>, body: axum::body::Bytes) -> Response {
    if let Some(r) = refused(&rt, AdminCall::CircuitClose).await {
        return r;
    }
    let by = match by_or_refuse(&rt, AdminCall::CircuitClose, &body).await {
        Ok(by) => by,
        Err(r) => return r,
    };
    let (code, body) = match crate::plan::close_circuit_by_hand(
        &rt.store,
        &rt.key,
        &by,
        rt.clock.now_ms(),
    )
    .await
    {
        Ok(true) => {
            rt.metrics.circuit_open.set(0);
            (StatusCode::OK, serde_json::json!({ "closed": true }))
        }
        Ok(false) => (
            StatusCode::CONFLICT,
            serde_json::json!({ "error": "the circuit is not open" }),
        ),
        Err(e) => store_failed(e),
    };
    finish(&rt, AdminCall::CircuitClose, &by, code, body).await
}

/// Why mapek did what it did about a finding, a remediation or an audit entry.
async fn explain(State(rt): State<Arc<Runtime>>, Path(id): Path<String>) -> Response {
    let policies = rt.policies.get();
    let key = rt.key.public();
    let read = super::explain::Explanation::read(&rt.store, &policies, Some(&key), &id).await;
    let (code, body) = match read {
        Ok(x) => match serde_json::to_value(x) {
            Ok(v) => (StatusCode::OK, v),
            Err(e) => store_failed(e),
        },
        Err(e @ super::explain::ExplainError::NotFound(_)) => (
            StatusCode::NOT_FOUND,
            serde_json::json!({ "error": e.to_string() }),
        ),
        Err(super::explain::ExplainError::Store(e)) => store_failed(e),
    };
    finish(&rt, AdminCall::Explain, &id, code, body).await
}
