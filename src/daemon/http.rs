//! The daemon's HTTP listener: `/metrics` (Prometheus), `/healthz` (alive), `/readyz` (stores reachable, policies loaded, role), `POST /v1/events` (telemetry intake) and the admin API.

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

use super::Runtime;
use crate::monitor::events::{parse_lines, release_of, Batch, Event, Horizon, Refusal};
use crate::monitor::intake::{Intake, IntakeError};
use crate::registry::Registry as _;

/// The telemetry intake: where accepted events go, who may send them, how much.
#[derive(Clone)]
pub struct IntakeConfig {
    pub writer: Intake,
    pub token: String,
    pub max_body: usize,
    pub horizon: Horizon,
}

pub fn router(rt: Arc<Runtime>) -> Router {
    Router::new()
        .route("/", get(super::page::handler))
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready_handler))
        .route("/v1/events", post(events_handler))
        .route("/catalog/index.json", get(catalog_handler))
        .route("/catalog/index.json.sig", get(catalog_signature_handler))
        .merge(super::admin::routes(rt.clone()))
        .with_state(rt)
}

/// The published catalog (a ggen-marketplace registry), or the answer that says why there is none.
fn published(
    rt: &Runtime,
) -> Result<Arc<crate::registry::marketplace::publish::Published>, Box<Response>> {
    let Some(m) = rt.registry.marketplace() else {
        let why = (
            StatusCode::NOT_FOUND,
            "no catalog: the registry is not a ggen marketplace\n",
        );
        return Err(Box::new(why.into_response()));
    };
    m.published().ok_or_else(|| {
        let why = (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "5")],
            "the catalog has not been published yet\n",
        );
        Box::new(why.into_response())
    })
}

/// Whether the request's `If-None-Match` names `etag`.
fn not_modified(request: &Request, etag: &str) -> bool {
    request
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"))
}

/// `GET /catalog/index.json`: the catalog ggen clients install from, as last published, with an
/// `ETag`; 304 to a request that already has it.
async fn catalog_handler(State(rt): State<Arc<Runtime>>, request: Request) -> Response {
    let p = match published(&rt) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    if not_modified(&request, &p.etag) {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, p.etag.clone())]).into_response();
    }
    (
        [
            (header::CONTENT_TYPE, "application/json".to_string()),
            (header::ETAG, p.etag.clone()),
            (header::CACHE_CONTROL, "no-cache".to_string()),
        ],
        p.bytes.clone(),
    )
        .into_response()
}

/// `GET /catalog/index.json.sig`: the daemon's Ed25519 signature (hex) over those bytes; its
/// `ETag` is the catalog's, so a client can tell the two belong together.
async fn catalog_signature_handler(State(rt): State<Arc<Runtime>>, request: Request) -> Response {
    let p = match published(&rt) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    if not_modified(&request, &p.etag) {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, p.etag.clone())]).into_response();
    }
    (
        [
            (header::CONTENT_TYPE, "text/plain".to_string()),
            (header::ETAG, p.etag.clone()),
            (header::CACHE_CONTROL, "no-cache".to_string()),
        ],
        format!("{}\n", p.signature),
    )
        .into_response()
}

/// At most this many refused lines are listed in an answer (all are counted).
const MAX_LISTED_REFUSALS: usize = 100;

fn answer(status: StatusCode, body: serde_json::Value) -> Response {
    (status, Json(body)).into_response()
}

/// Byte-wise comparison that takes the same time wherever the first difference is.
pub(super) fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `POST /v1/events`: newline-delimited JSON events with a bearer token. 401 without a valid
/// token, 413 over the size limit (nothing is stored in either case); otherwise 200 with the
/// accepted and refused counts, the refused lines named. 503 when the store could not take the
/// events: then none of them is stored, and the request can be sent again.
async fn events_handler(State(rt): State<Arc<Runtime>>, request: Request) -> Response {
    let Some(intake) = &rt.intake else {
        return answer(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({ "error": "the intake is off: no intake_token_file is configured" }),
        );
    };
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if !token.is_some_and(|t| same_secret(t.trim().as_bytes(), intake.token.as_bytes())) {
        rt.metrics
            .intake_requests
            .with_label_values(&["unauthorized"])
            .inc();
        return answer(
            StatusCode::UNAUTHORIZED,
            serde_json::json!({ "error": "a valid bearer token is required" }),
        );
    }
    if let Some(down) = store_down(&rt) {
        rt.metrics
            .intake_requests
            .with_label_values(&["store_failed"])
            .inc();
        return down;
    }
    let bytes = match axum::body::to_bytes(request.into_body(), intake.max_body).await {
        Ok(b) => b,
        Err(_) => {
            rt.metrics
                .intake_requests
                .with_label_values(&["too_large"])
                .inc();
            return answer(
                StatusCode::PAYLOAD_TOO_LARGE,
                serde_json::json!({ "error": format!("the body is larger than {} bytes, or could not be read; nothing was stored", intake.max_body) }),
            );
        }
    };
    let Ok(text) = std::str::from_utf8(&bytes) else {
        rt.metrics
            .intake_requests
            .with_label_values(&["invalid"])
            .inc();
        return answer(
            StatusCode::BAD_REQUEST,
            serde_json::json!({ "error": "the body is not UTF-8; nothing was stored" }),
        );
    };
    let (events, mut refused) = parse_lines(text, rt.clock.now_ms(), intake.horizon);
    let (batch, unknown) = match known_only(&rt, events).await {
        Ok(kept) => kept,
        Err(e) => {
            rt.metrics
                .intake_requests
                .with_label_values(&["store_failed"])
                .inc();
            return answer(
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({ "error": format!("the registry could not be read: {e}; nothing was stored, send again"), "accepted": 0 }),
            );
        }
    };
    rt.metrics
        .intake_events
        .with_label_values(&["unknown"])
        .inc_by(unknown.len() as u64);
    rt.metrics
        .intake_events
        .with_label_values(&["refused"])
        .inc_by(refused.len() as u64);
    refused.extend(unknown);
    refused.sort_by_key(|r| r.line);
    let accepted = batch.events;
    if accepted > 0 {
        if let Err(refusal) = submit(&rt, intake, batch).await {
            return refusal;
        }
        // Committed: the loop looks at it now, not at its next tick.
        rt.wake.ring(super::wake::Reason::Intake);
    }
    rt.metrics.intake_requests.with_label_values(&["ok"]).inc();
    let listed: Vec<&Refusal> = refused.iter().take(MAX_LISTED_REFUSALS).collect();
    answer(
        StatusCode::OK,
        serde_json::json!({
            "accepted": accepted,
            "refused": refused.len(),
            "errors": listed,
            "errors_truncated": refused.len() > listed.len(),
        }),
    )
}

/// Stores a batch through the intake's writer, or the 503 to answer. Submitted and counted in
/// a task of its own: a client that hangs up does not stop the write, and what is stored is
/// counted as accepted whether or not the answer arrives.
async fn submit(rt: &Runtime, intake: &IntakeConfig, batch: Batch) -> Result<(), Response> {
    let (accepted, by_type) = (batch.events, batch.by_type);
    let writer = intake.writer.clone();
    let metrics = rt.metrics.clone();
    let submitted = tokio::spawn(async move {
        let r = writer.submit(batch).await;
        if r.is_ok() {
            metrics
                .intake_events
                .with_label_values(&["accepted"])
                .inc_by(accepted);
            for (source, n) in crate::monitor::events::EVENT_TYPES.iter().zip(by_type) {
                metrics.observations.with_label_values(&[source]).inc_by(n);
            }
        }
        r
    })
    .await
    .unwrap_or(Err(IntakeError::Closed));
    submitted.map_err(|e| {
        rt.metrics
            .intake_requests
            .with_label_values(&["store_failed"])
            .inc();
        answer(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({ "error": format!("{e}; nothing was stored, send again"), "accepted": 0 }),
        )
    })
}

/// The events about releases the registry holds, as a batch; the others refused, each with
/// its line: an event about a package or version that does not exist would grow the store
/// for nothing (anyone with the token could make series without end).
async fn known_only(
    rt: &Runtime,
    events: Vec<(usize, Event)>,
) -> Result<(Batch, Vec<Refusal>), crate::registry::RegistryError> {
    let mut verdicts: std::collections::HashMap<(String, String), Option<String>> =
        std::collections::HashMap::new();
    let mut batch = Batch::default();
    let mut refused = Vec::new();
    for (line, e) in events {
        let why = match release_of(&e) {
            None => None,
            Some((package, version)) => {
                let key = (package.to_string(), version.to_string());
                match verdicts.get(&key) {
                    Some(v) => v.clone(),
                    None => {
                        let v = unknown_release(rt, package, version).await?;
                        verdicts.insert(key, v.clone());
                        v
                    }
                }
            }
        };
        match why {
            None => batch.add(e),
            Some(reason) => refused.push(Refusal { line, reason }),
        }
    }
    Ok((batch, refused))
}

/// None when the registry holds `package@version`; otherwise why the event is refused.
async fn unknown_release(
    rt: &Runtime,
    package: &str,
    version: &str,
) -> Result<Option<String>, crate::registry::RegistryError> {
    if rt.registry.release(package, version).await?.is_some() {
        return Ok(None);
    }
    Ok(Some(if rt.registry.package(package).await?.is_some() {
        format!("field `version`: `{package}` has no release `{version}`")
    } else {
        format!("field `package`: `{package}` is not in the registry")
    }))
}

async fn metrics_handler(State(rt): State<Arc<Runtime>>) -> impl IntoResponse {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        rt.metrics.render(),
    )
}

/// 200 when the knowledge store answers and a policy set is in force, naming this replica's
/// role (leader, standby or standalone: a standby is ready to take over); 503 saying why otherwise.
async fn ready_handler(State(rt): State<Arc<Runtime>>) -> impl IntoResponse {
    let started = std::time::Instant::now();
    let store = rt.store_health.check(&rt.store).await;
    match &store {
        Ok(()) => rt
            .metrics
            .store_latency
            .observe(started.elapsed().as_secs_f64()),
        Err(_) => rt.metrics.store_errors.inc(),
    }
    let policies = rt.policies.get().policies.len();
    let role = rt.leadership.role();
    match store {
        Ok(()) if role == super::lead::Role::Starting => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: starting\n".to_string(),
        ),
        Ok(()) => (
            StatusCode::OK,
            format!(
                "ready: store reachable, {policies} policies loaded, role {}\n",
                role.as_str()
            ),
        ),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: knowledge store unusable: {e}\n"),
        ),
    }
}

/// The 503 for a call that needs the store while the last probe found it unreachable.
pub(super) fn store_down(rt: &Runtime) -> Option<Response> {
    let why = rt.store_health.down()?;
    Some(answer(
        StatusCode::SERVICE_UNAVAILABLE,
        serde_json::json!({ "error": format!("the knowledge store is unreachable ({why}); nothing was done, try again") }),
    ))
}

/// Serves until `cancel` fires.
pub async fn serve(
    listener: tokio::net::TcpListener,
    rt: Arc<Runtime>,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    // The store's state, kept current beside the listener: /readyz answers from it and calls
    // that need the store are refused at once while it is down.
    let (health, store, stop) = (rt.store_health.clone(), rt.store.clone(), cancel.clone());
    let (last, clock) = (rt.metrics.last.clone(), rt.clock.clone());
    tokio::spawn(async move {
        let mut every = tokio::time::interval(super::health::REFRESH);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = every.tick() => {
                    // A SQLite file that refuses writes still answers reads: while the loop's
                    // last cycle failed, the probe writes too.
                    let failing = last.lock().ok().and_then(|l| l.as_ref().map(|c| c.failed.is_some()));
                    let write = (store.backend == crate::knowledge::Backend::Sqlite
                        && failing == Some(true))
                        .then(|| clock.now_ms());
                    let _ = health.refresh_with(&store, write).await;
                }
            }
        }
    });
    axum::serve(listener, router(rt))
        .with_graceful_shutdown(async move { cancel.cancelled().await })
        .await
}
