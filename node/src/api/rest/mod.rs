//! The Qdrant-compatible REST API (axum). Handlers parse and check input, run the work on a
//! blocking thread through the collection layer, and wrap the answer in Qdrant's envelope.

pub mod auth;
pub mod cluster;
pub mod collection_cluster;
pub mod collections;
pub mod connection;
pub mod introspection;
pub mod json_body;
pub mod matrix;
pub mod models;
pub mod points;
pub mod response;
pub mod search;
pub mod server;
pub mod service;
pub mod snapshots;
pub mod strict_mode;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::timeout::TimeoutLayer;

use crate::api::metrics::Metrics;
use crate::api::rest::auth::ApiKeys;
use crate::api::rest::response::ApiError;
use crate::cluster::CollectionError;
use crate::cluster::metadata::Metadata;
use crate::cluster::toc::TableOfContent;
use crate::consensus::raft_node::ConsensusNode;

#[derive(Clone)]
pub struct AppState {
    pub toc: Arc<TableOfContent>,
    pub metrics: Arc<Metrics>,
    /// Where collection metadata is changed: Raft in a cluster, a local file otherwise.
    pub metadata: Arc<Metadata>,
    /// This peer's Raft member; `None` when the node runs alone.
    pub consensus: Option<Arc<ConsensusNode>>,
    /// Set once the node serves: collections loaded and, in a cluster, founding or joining
    /// done. `/readyz` answers 503 until then.
    pub ready: Arc<std::sync::atomic::AtomicBool>,
    /// Strict mode's token buckets (per collection on this peer) and what its resource gates
    /// measure.
    pub strict_mode: Arc<strict_mode::StrictModeState>,
}

/// Runs blocking collection work off the async runtime.
pub async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, CollectionError> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result.map_err(ApiError::from),
        Err(e) => Err(ApiError::internal(format!("request task failed: {e}"))),
    }
}

/// No request may hold a connection longer than this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

pub fn router(state: AppState, keys: ApiKeys, max_request_size_mb: usize) -> Router {
    let c = "/collections/{collection_name}";
    // Snapshot uploads are bounded by their own limit (checked while streaming to disk),
    // not by the request size limit of JSON bodies.
    let upload_limit = DefaultBodyLimit::max(snapshots::MAX_SNAPSHOT_BYTES as usize);
    let api = Router::new()
        .route("/", get(service::root))
        .route("/healthz", get(service::healthz))
        .route("/livez", get(service::livez))
        .route("/readyz", get(service::readyz))
        .route("/metrics", get(service::metrics))
        .route("/cluster", get(cluster::info))
        .route(
            "/cluster/peer/{peer_id}",
            axum::routing::delete(cluster::remove_peer),
        )
        .route("/collections", get(collections::list))
        .route("/collections/aliases", post(collections::update_aliases))
        .route("/aliases", get(collections::list_aliases))
        .route(
            &format!("{c}/aliases"),
            get(collections::collection_aliases),
        )
        .route(
            c,
            put(collections::create)
                .get(collections::get)
                .patch(collections::update)
                .delete(collections::delete),
        )
        .route(&format!("{c}/exists"), get(collections::exists))
        .route(
            &format!("{c}/cluster"),
            get(collections::cluster_info).post(collection_cluster::update),
        )
        .route(&format!("{c}/shards"), put(collections::create_shard_key))
        .route(
            &format!("{c}/shards/delete"),
            post(collections::delete_shard_key),
        )
        .route(&format!("{c}/shards"), get(introspection::shard_keys))
        .route(
            &format!("{c}/optimizations"),
            get(introspection::optimizations::get),
        )
        .route("/telemetry", get(introspection::telemetry::telemetry))
        .route(
            "/cluster/telemetry",
            get(introspection::telemetry::cluster_telemetry),
        )
        .route("/cluster/recover", post(introspection::recover::recover))
        .route(
            "/issues",
            get(introspection::issues::get).delete(introspection::issues::clear),
        )
        .route(&format!("{c}/index"), put(collections::create_index))
        .route(
            &format!("{c}/vectors/{{vector_name}}"),
            put(collections::create_vector_name).delete(collections::delete_vector_name),
        )
        .route(
            &format!("{c}/index/{{field_name}}"),
            axum::routing::delete(collections::delete_index),
        )
        .route(
            &format!("{c}/points"),
            put(points::upsert).post(points::retrieve),
        )
        .route(&format!("{c}/points/{{id}}"), get(points::get_point))
        .route(&format!("{c}/points/delete"), post(points::delete))
        .route(
            &format!("{c}/points/payload"),
            post(points::set_payload).put(points::overwrite_payload),
        )
        .route(
            &format!("{c}/points/payload/delete"),
            post(points::delete_payload),
        )
        .route(
            &format!("{c}/points/payload/clear"),
            post(points::clear_payload),
        )
        .route(&format!("{c}/points/vectors"), put(points::update_vectors))
        .route(
            &format!("{c}/points/vectors/delete"),
            post(points::delete_vectors),
        )
        .route(&format!("{c}/points/batch"), post(points::batch_update))
        .route(&format!("{c}/points/scroll"), post(points::scroll))
        .route(&format!("{c}/points/count"), post(points::count))
        .route(&format!("{c}/points/search"), post(search::search))
        .route(
            &format!("{c}/points/search/batch"),
            post(search::search_batch),
        )
        .route(&format!("{c}/points/recommend"), post(search::recommend))
        .route(
            &format!("{c}/points/recommend/batch"),
            post(search::recommend_batch),
        )
        .route(&format!("{c}/points/query"), post(search::query))
        .route(
            &format!("{c}/points/search/matrix/pairs"),
            post(matrix::pairs),
        )
        .route(
            &format!("{c}/points/search/matrix/offsets"),
            post(matrix::offsets),
        )
        .route(&format!("{c}/facet"), post(points::facet))
        .route(
            &format!("{c}/points/query/groups"),
            post(search::query_groups),
        )
        .route(&format!("{c}/points/discover"), post(search::discover))
        .route(
            &format!("{c}/points/discover/batch"),
            post(search::discover_batch),
        )
        .route(
            &format!("{c}/points/search/groups"),
            post(search::search_groups),
        )
        .route(
            &format!("{c}/points/recommend/groups"),
            post(search::recommend_groups),
        )
        .route(
            &format!("{c}/points/query/batch"),
            post(search::query_batch),
        )
        .route(
            &format!("{c}/snapshots"),
            get(snapshots::list).post(snapshots::create),
        )
        .route(&format!("{c}/snapshots/recover"), put(snapshots::recover))
        .route(
            &format!("{c}/snapshots/upload"),
            post(snapshots::upload).layer(upload_limit),
        )
        .route(
            &format!("{c}/snapshots/{{snapshot_name}}"),
            get(snapshots::download).delete(snapshots::delete),
        )
        .route(
            &format!("{c}/shards/{{shard_id}}/snapshot"),
            get(snapshots::stream_shard),
        )
        .route(
            &format!("{c}/shards/{{shard_id}}/snapshots"),
            get(snapshots::list_shard).post(snapshots::create_shard),
        )
        .route(
            &format!("{c}/shards/{{shard_id}}/snapshots/recover"),
            put(snapshots::recover_shard),
        )
        .route(
            &format!("{c}/shards/{{shard_id}}/snapshots/upload"),
            post(snapshots::upload_shard).layer(upload_limit),
        )
        .route(
            &format!("{c}/shards/{{shard_id}}/snapshots/{{snapshot_name}}"),
            get(snapshots::download_shard).delete(snapshots::delete_shard),
        )
        .route(
            "/snapshots",
            get(snapshots::list_full).post(snapshots::create_full),
        )
        .route(
            "/snapshots/{snapshot_name}",
            get(snapshots::download_full).delete(snapshots::delete_full),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed);
    api.layer(middleware::from_fn_with_state(keys, auth::require_key))
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .layer(DefaultBodyLimit::max(
            max_request_size_mb.max(1) * 1024 * 1024,
        ))
        .layer(TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::internal("the request handler panicked; see the node log").into_response()
        }))
        .layer(middleware::from_fn(connection::close_if_body_unread))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::not_found("Not found: no such endpoint")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "Method not allowed for this endpoint",
    )
}

/// Request metrics and a span per request.
async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let endpoint = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let method = request.method().clone();
    let span = tracing::debug_span!("http", %method, endpoint = %endpoint);
    let started = Instant::now();
    let response = tracing::Instrument::instrument(next.run(request), span).await;
    state.metrics.observe_request(
        method.as_str(),
        &endpoint,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}
