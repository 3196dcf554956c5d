//! The daemon's HTTP listener: `/metrics` (Prometheus), `/healthz` (alive) and `/readyz` (stores reachable, policies loaded).

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

use super::Runtime;

pub fn router(rt: Arc<Runtime>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready_handler))
        .with_state(rt)
}

async fn metrics_handler(State(rt): State<Arc<Runtime>>) -> impl IntoResponse {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        rt.metrics.render(),
    )
}

/// 200 when the knowledge store answers and a policy set is in force; 503 saying why otherwise.
/// There is one replica (no lease yet), so it is always the acting one.
async fn ready_handler(State(rt): State<Arc<Runtime>>) -> impl IntoResponse {
    let store = rt.store.ping().await;
    let policies = rt.policies.get().policies.len();
    match store {
        Ok(()) => (
            StatusCode::OK,
            format!("ready: store reachable, {policies} policies loaded, role standalone\n"),
        ),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: knowledge store unreachable: {e}\n"),
        ),
    }
}

/// Serves until `cancel` fires.
pub async fn serve(
    listener: tokio::net::TcpListener,
    rt: Arc<Runtime>,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(rt))
        .with_graceful_shutdown(async move { cancel.cancelled().await })
        .await
}
