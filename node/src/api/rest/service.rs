//! `/`, the health probes and `/metrics`.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde_json::json;

use crate::api::rest::AppState;

/// The Qdrant version whose REST API Shoal speaks; clients compare it with their own.
pub const QDRANT_API_VERSION: &str = "1.18.3";

/// The title Qdrant answers on `/` and in the gRPC health check. Clients compare it with their
/// own (qdrant-client's local mode answers the same), so Shoal answers it too and names itself
/// in `shoal_version`.
pub const QDRANT_TITLE: &str = "qdrant - vector search engine";

pub async fn root() -> impl IntoResponse {
    axum::Json(json!({
        "title": QDRANT_TITLE,
        "version": QDRANT_API_VERSION,
        "shoal_version": env!("CARGO_PKG_VERSION"),
        "commit": null,
    }))
}

pub async fn healthz() -> &'static str {
    "healthz check passed"
}

pub async fn livez() -> &'static str {
    "livez check passed"
}

/// Ready once the node has loaded its collections (before the server starts) and, in a
/// cluster, has founded or joined it.
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, &'static str) {
    if state.ready.load(std::sync::atomic::Ordering::SeqCst) {
        (StatusCode::OK, "all shards are ready")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: joining the cluster",
        )
    }
}

pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    match state.metrics.render(&state.toc) {
        Ok(text) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            text,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
    }
}
