//! Qdrant's snapshot endpoints: collection snapshots (`/collections/{c}/snapshots...`), shard
//! snapshots (`/collections/{c}/shards/{s}/snapshots...`, `.../snapshot`) and full-storage
//! snapshots (`/snapshots...`). Files, names and formats: [`crate::cluster::snapshots`].
//!
//! Recovery follows Qdrant 1.18:
//! - `location` is `file:///abs/path` (inside this node's snapshot directory, else 403) or an
//!   `http://` URL (fetched with the request's `api_key` as the `api-key` header); a shard
//!   recovery also takes the bare name of one of that shard's snapshots.
//! - `checksum` (SHA-256, hex) is compared before anything changes (400 on a mismatch).
//! - A missing collection is created from the snapshot's configuration and payload indexes,
//!   through consensus; an existing one must have the same vectors (400 otherwise).
//! - Each shard image replaces this peer's replica of that shard. Shards this peer holds no
//!   replica of are skipped, except in a collection the recovery just created, where this
//!   peer takes a replica of every shard in the snapshot (so a single-node snapshot restores
//!   whole into a fresh cluster).
//! - `priority` decides the replicas afterwards: `snapshot` (the default) makes the restored
//!   replica Active and marks the other Active replicas Dead, so they recover from it;
//!   `replica` marks the restored replica Dead when another Active replica exists (it then
//!   recovers from that one) and keeps the snapshot's data otherwise; `no_sync` makes the
//!   restored replica Active and touches nothing else.
//!
//! A malformed, truncated or unsafe archive (absolute paths, `..`, links), a checksum
//! mismatch, another collection's configuration or a corrupt segment is refused with 400 and
//! changes nothing.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::multipart::MultipartRejection;
use axum::extract::{Multipart, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::api::rest::AppState;
use crate::api::rest::cluster::submit_error;
use crate::api::rest::json_body::{JsonBody, PathParams, QueryParams};
use crate::api::rest::response::{ApiError, ApiOk, Started};
use crate::cluster::CollectionError;
use crate::cluster::snapshots::{self as store, SnapshotDescription, SnapshotStore};
use crate::cluster::toc::validate_collection_name;
use crate::collection_config::ShardingMethod;
use crate::consensus::state::{
    ClusterOperation, PeerId, ReplicaState, ReplicaStateChange, ShardId,
};
use crate::shard::snapshot::{SnapshotError, check_compatible, image_to_shard_dir, sha256_file};

/// The largest snapshot an upload or a URL download may bring (bytes).
pub const MAX_SNAPSHOT_BYTES: u64 = 256 << 30;

/// Source of truth after a recovery (Qdrant's `SnapshotPriority`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotPriority {
    NoSync,
    #[default]
    Snapshot,
    Replica,
}

/// Body of `PUT .../snapshots/recover` (Qdrant's `SnapshotRecover`, `ShardSnapshotRecover`).
#[derive(Debug, Deserialize)]
pub struct SnapshotRecover {
    pub location: String,
    #[serde(default)]
    pub priority: Option<SnapshotPriority>,
    #[serde(default)]
    pub checksum: Option<String>,
    #[serde(default)]
    pub api_key: Option<String>,
}

/// Query of create, delete and recover calls.
#[derive(Debug, Default, Deserialize)]
pub struct SnapshotWait {
    pub wait: Option<bool>,
}

/// Query of the upload calls.
#[derive(Debug, Default, Deserialize)]
pub struct UploadParams {
    pub wait: Option<bool>,
    pub priority: Option<SnapshotPriority>,
    pub checksum: Option<String>,
}

impl From<SnapshotError> for ApiError {
    fn from(e: SnapshotError) -> ApiError {
        match e {
            SnapshotError::Invalid(_) | SnapshotError::Incompatible(_) => {
                ApiError::bad_request(format!("Wrong input: {e}"))
            }
            SnapshotError::BadRequest(_) => ApiError::bad_request(e.to_string()),
            SnapshotError::NotFound(_) => ApiError::not_found(e.to_string()),
            SnapshotError::Unavailable(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
            }
            SnapshotError::Io(_) => {
                tracing::error!(error = %e, "snapshot request failed");
                ApiError::internal(format!("Service internal error: {e}"))
            }
        }
    }
}

/// Runs snapshot work off the async runtime.
async fn run<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, SnapshotError> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result.map_err(ApiError::from),
        Err(e) => Err(ApiError::internal(format!("snapshot task failed: {e}"))),
    }
}

/// The answer of a call made with `wait=false`: 202, Qdrant's `{"status": "accepted"}`.
fn accepted(started: Started) -> Response {
    let body = serde_json::json!({
        "status": "accepted",
        "time": started.0.elapsed().as_secs_f64(),
    });
    (StatusCode::ACCEPTED, axum::Json(body)).into_response()
}

/// Runs `work` as a task of its own and answers its result, or (with `wait=false`) answers
/// 202 at once and lets it run, logging a failure. Either way the work runs to its end: a
/// client that disconnects, or the request timeout, must not cut a restore off half-way
/// (between its swap and the replica states it sets), nor remove the staging directory a
/// blocking step is still reading.
async fn wait_or_spawn<T, F>(wait: Option<bool>, started: Started, work: F) -> Response
where
    T: serde::Serialize + Send + 'static,
    F: std::future::Future<Output = Result<T, ApiError>> + Send + 'static,
{
    let task = tokio::spawn(async move {
        let result = work.await;
        if let Err(e) = &result {
            tracing::warn!(error = %e.message, "a snapshot operation failed");
        }
        result
    });
    if wait == Some(false) {
        return accepted(started);
    }
    match task.await {
        Ok(Ok(result)) => ApiOk(result, started).into_response(),
        Ok(Err(e)) => e.into_response(),
        Err(e) => ApiError::internal(format!("snapshot task failed: {e}")).into_response(),
    }
}

fn peer(state: &AppState) -> u64 {
    state.toc.env().this_peer().0
}

// ---- shared by the REST handlers and the gRPC `Snapshots` service ----

/// Creates a snapshot of collection (or alias) `name` on this peer.
pub async fn create_collection_snapshot(
    state: &AppState,
    name: &str,
) -> Result<SnapshotDescription, ApiError> {
    let collection = state.toc.get(name)?;
    let (snapshots, me) = (Arc::clone(state.toc.snapshots()), peer(state));
    let created = run(move || store::create_collection_snapshot(&snapshots, &collection, me)).await;
    gone_if_deleted(state, name, created)
}

/// A snapshot cut off because its collection was deleted meanwhile is a 404, not a 500.
fn gone_if_deleted<T>(
    state: &AppState,
    name: &str,
    result: Result<T, ApiError>,
) -> Result<T, ApiError> {
    match result {
        Err(e) if e.status.is_server_error() && !state.toc.exists(name) => {
            Err(CollectionError::NotFound(name.to_string()).into())
        }
        other => other,
    }
}

/// The snapshots of collection (or alias) `name` on this peer.
pub async fn list_collection_snapshots(
    state: &AppState,
    name: &str,
) -> Result<Vec<SnapshotDescription>, ApiError> {
    let collection = state.toc.get(name)?;
    let snapshots = Arc::clone(state.toc.snapshots());
    let dir = snapshots.collection_dir(collection.name());
    run(move || snapshots.list(&dir)).await
}

/// Deletes snapshot `snapshot` of collection (or alias) `name` (404 when there is none).
pub async fn delete_collection_snapshot(
    state: &AppState,
    name: &str,
    snapshot: String,
) -> Result<(), ApiError> {
    let collection = state.toc.get(name)?;
    let snapshots = Arc::clone(state.toc.snapshots());
    let dir = snapshots.collection_dir(collection.name());
    run(move || snapshots.delete(&dir, &snapshot)).await
}

/// Creates a full-storage snapshot of this peer.
pub async fn create_full_snapshot(state: &AppState) -> Result<SnapshotDescription, ApiError> {
    let (snapshots, toc) = (Arc::clone(state.toc.snapshots()), Arc::clone(&state.toc));
    run(move || store::create_full_snapshot(&snapshots, &toc)).await
}

/// The full-storage snapshots of this peer.
pub async fn list_full_snapshots(state: &AppState) -> Result<Vec<SnapshotDescription>, ApiError> {
    let snapshots = Arc::clone(state.toc.snapshots());
    run(move || snapshots.list(snapshots.root())).await
}

/// Deletes full-storage snapshot `snapshot` (404 when there is none).
pub async fn delete_full_snapshot(state: &AppState, snapshot: String) -> Result<(), ApiError> {
    let snapshots = Arc::clone(state.toc.snapshots());
    run(move || snapshots.delete(snapshots.root(), &snapshot)).await
}

// ---- collection snapshots ----

pub async fn create(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
    QueryParams(q): QueryParams<SnapshotWait>,
    started: Started,
) -> Result<Response, ApiError> {
    state.toc.get(&name)?;
    let work = async move { create_collection_snapshot(&state, &name).await };
    Ok(wait_or_spawn(q.wait, started, work).await)
}

pub async fn list(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
    started: Started,
) -> Result<ApiOk<Vec<SnapshotDescription>>, ApiError> {
    Ok(ApiOk(
        list_collection_snapshots(&state, &name).await?,
        started,
    ))
}

pub async fn download(
    State(state): State<AppState>,
    PathParams((name, snapshot)): PathParams<(String, String)>,
) -> Result<Response, ApiError> {
    let collection = state.toc.get(&name)?;
    let snapshots = state.toc.snapshots();
    let path = snapshots.find(&snapshots.collection_dir(collection.name()), &snapshot)?;
    file_response(&path, &snapshot).await
}

pub async fn delete(
    State(state): State<AppState>,
    PathParams((name, snapshot)): PathParams<(String, String)>,
    QueryParams(q): QueryParams<SnapshotWait>,
    started: Started,
) -> Result<Response, ApiError> {
    let collection = state.toc.get(&name)?;
    let snapshots = state.toc.snapshots();
    // Checked before answering, also with wait=false: an unknown name is a 404.
    snapshots.find(&snapshots.collection_dir(collection.name()), &snapshot)?;
    let work = async move {
        delete_collection_snapshot(&state, &name, snapshot)
            .await
            .map(|()| true)
    };
    Ok(wait_or_spawn(q.wait, started, work).await)
}

pub async fn recover(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
    QueryParams(q): QueryParams<SnapshotWait>,
    started: Started,
    JsonBody(body): JsonBody<SnapshotRecover>,
) -> Result<Response, ApiError> {
    let source = locate(&state, &body.location, None).await?;
    let priority = body.priority.unwrap_or_default();
    let checksum = body.checksum.clone();
    let api_key = body.api_key.clone();
    let work = async move {
        let archive = fetch(&state, source, api_key).await?;
        verify_checksum(archive.path(), checksum.as_deref()).await?;
        recover_collection(&state, &name, archive.path(), priority).await?;
        Ok(true)
    };
    Ok(wait_or_spawn(q.wait, started, work).await)
}

pub async fn upload(
    state: State<AppState>,
    name: PathParams<String>,
    q: QueryParams<UploadParams>,
    started: Started,
    multipart: Result<Multipart, MultipartRejection>,
) -> Response {
    closing_on_error(upload_collection(state, name, q, started, multipart).await)
}

/// An error answered before the request body was read ends the connection: the client must
/// not send its next request after the unread rest of this one.
fn closing_on_error(result: Result<Response, ApiError>) -> Response {
    match result {
        Ok(response) => response,
        Err(e) => {
            let mut response = e.into_response();
            response.headers_mut().insert(
                header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
            response
        }
    }
}

async fn upload_collection(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
    QueryParams(q): QueryParams<UploadParams>,
    started: Started,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Response, ApiError> {
    let multipart = multipart.map_err(multipart_error)?;
    check_checksum_format(q.checksum.as_deref())?;
    let archive = receive(&state, multipart).await?;
    let priority = q.priority.unwrap_or_default();
    let work = async move {
        verify_checksum(archive.path(), q.checksum.as_deref()).await?;
        recover_collection(&state, &name, archive.path(), priority).await?;
        Ok(true)
    };
    Ok(wait_or_spawn(q.wait, started, work).await)
}

// ---- shard snapshots ----

fn local_shard_of(state: &AppState, name: &str, shard: u32) -> Result<String, ApiError> {
    let collection = state.toc.get(name)?;
    if !collection.layout().contains_key(&shard) {
        return Err(ApiError::not_found(format!(
            "Not found: shard {shard} not found"
        )));
    }
    if !collection.holds_replica(shard) {
        return Err(store::not_local(shard).into());
    }
    Ok(collection.name().to_string())
}

pub async fn create_shard(
    State(state): State<AppState>,
    PathParams((name, shard)): PathParams<(String, u32)>,
    QueryParams(q): QueryParams<SnapshotWait>,
    started: Started,
) -> Result<Response, ApiError> {
    local_shard_of(&state, &name, shard)?;
    let collection = state.toc.get(&name)?;
    let snapshots = Arc::clone(state.toc.snapshots());
    let work = async move {
        let created =
            run(move || store::create_shard_snapshot(&snapshots, &collection, shard)).await;
        gone_if_deleted(&state, &name, created)
    };
    Ok(wait_or_spawn(q.wait, started, work).await)
}

pub async fn list_shard(
    State(state): State<AppState>,
    PathParams((name, shard)): PathParams<(String, u32)>,
    started: Started,
) -> Result<ApiOk<Vec<SnapshotDescription>>, ApiError> {
    let name = local_shard_of(&state, &name, shard)?;
    let snapshots = Arc::clone(state.toc.snapshots());
    let dir = snapshots.shard_dir(&name, shard);
    Ok(ApiOk(run(move || snapshots.list(&dir)).await?, started))
}

pub async fn download_shard(
    State(state): State<AppState>,
    PathParams((name, shard, snapshot)): PathParams<(String, u32, String)>,
) -> Result<Response, ApiError> {
    let name = local_shard_of(&state, &name, shard)?;
    let snapshots = state.toc.snapshots();
    let path = snapshots.find(&snapshots.shard_dir(&name, shard), &snapshot)?;
    file_response(&path, &snapshot).await
}

pub async fn delete_shard(
    State(state): State<AppState>,
    PathParams((name, shard, snapshot)): PathParams<(String, u32, String)>,
    QueryParams(q): QueryParams<SnapshotWait>,
    started: Started,
) -> Result<Response, ApiError> {
    let name = local_shard_of(&state, &name, shard)?;
    let snapshots = Arc::clone(state.toc.snapshots());
    let dir = snapshots.shard_dir(&name, shard);
    snapshots.find(&dir, &snapshot)?;
    let work = async move { run(move || snapshots.delete(&dir, &snapshot).map(|()| true)).await };
    Ok(wait_or_spawn(q.wait, started, work).await)
}

/// `GET /collections/{c}/shards/{s}/snapshot`: a fresh snapshot of the replica, streamed
/// and not kept (Qdrant's "stream shard snapshot").
pub async fn stream_shard(
    State(state): State<AppState>,
    PathParams((name, shard)): PathParams<(String, u32)>,
) -> Result<Response, ApiError> {
    local_shard_of(&state, &name, shard)?;
    let collection = state.toc.get(&name)?;
    let snapshots = Arc::clone(state.toc.snapshots());
    let (staging, file) = run(move || {
        let local = collection
            .local_for_request(shard)
            .map_err(|e| SnapshotError::Unavailable(e.to_string()))?;
        let staging = snapshots.staging()?;
        let image = staging.path().join("image");
        local.snapshot_image(shard, &image)?;
        let file = staging.path().join("shard.snapshot");
        crate::shard::snapshot::pack_dir(&image, &file)?;
        Ok((staging, file))
    })
    .await?;
    let stamp = chrono::Utc::now().format("%Y-%m-%d-%H-%M-%S");
    let name = format!("{name}-shard-{shard}-{stamp}.snapshot");
    // The open file stays readable after the staging directory is removed.
    let response = file_response(&file, &name).await;
    drop(staging);
    response
}

pub async fn recover_shard(
    State(state): State<AppState>,
    PathParams((name, shard)): PathParams<(String, u32)>,
    QueryParams(q): QueryParams<SnapshotWait>,
    started: Started,
    JsonBody(body): JsonBody<SnapshotRecover>,
) -> Result<Response, ApiError> {
    let collection_name = local_shard_of(&state, &name, shard)?;
    let source = locate(&state, &body.location, Some((&collection_name, shard))).await?;
    let priority = body.priority.unwrap_or_default();
    let (checksum, api_key) = (body.checksum.clone(), body.api_key.clone());
    let work = async move {
        let archive = fetch(&state, source, api_key).await?;
        verify_checksum(archive.path(), checksum.as_deref()).await?;
        recover_one_shard(&state, &name, shard, archive.path(), priority).await?;
        Ok(true)
    };
    Ok(wait_or_spawn(q.wait, started, work).await)
}

pub async fn upload_shard(
    state: State<AppState>,
    path: PathParams<(String, u32)>,
    q: QueryParams<UploadParams>,
    started: Started,
    multipart: Result<Multipart, MultipartRejection>,
) -> Response {
    closing_on_error(upload_to_shard(state, path, q, started, multipart).await)
}

async fn upload_to_shard(
    State(state): State<AppState>,
    PathParams((name, shard)): PathParams<(String, u32)>,
    QueryParams(q): QueryParams<UploadParams>,
    started: Started,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Response, ApiError> {
    let multipart = multipart.map_err(multipart_error)?;
    local_shard_of(&state, &name, shard)?;
    check_checksum_format(q.checksum.as_deref())?;
    let archive = receive(&state, multipart).await?;
    let priority = q.priority.unwrap_or_default();
    let work = async move {
        verify_checksum(archive.path(), q.checksum.as_deref()).await?;
        recover_one_shard(&state, &name, shard, archive.path(), priority).await?;
        Ok(true)
    };
    Ok(wait_or_spawn(q.wait, started, work).await)
}

// ---- full-storage snapshots ----

pub async fn create_full(
    State(state): State<AppState>,
    QueryParams(q): QueryParams<SnapshotWait>,
    started: Started,
) -> Result<Response, ApiError> {
    let work = async move { create_full_snapshot(&state).await };
    Ok(wait_or_spawn(q.wait, started, work).await)
}

pub async fn list_full(
    State(state): State<AppState>,
    started: Started,
) -> Result<ApiOk<Vec<SnapshotDescription>>, ApiError> {
    Ok(ApiOk(list_full_snapshots(&state).await?, started))
}

pub async fn download_full(
    State(state): State<AppState>,
    PathParams(snapshot): PathParams<String>,
) -> Result<Response, ApiError> {
    let snapshots = state.toc.snapshots();
    let path = snapshots.find(snapshots.root(), &snapshot)?;
    file_response(&path, &snapshot).await
}

pub async fn delete_full(
    State(state): State<AppState>,
    PathParams(snapshot): PathParams<String>,
    QueryParams(q): QueryParams<SnapshotWait>,
    started: Started,
) -> Result<Response, ApiError> {
    let snapshots = state.toc.snapshots();
    snapshots.find(snapshots.root(), &snapshot)?;
    let work = async move { delete_full_snapshot(&state, snapshot).await.map(|()| true) };
    Ok(wait_or_spawn(q.wait, started, work).await)
}

// ---- plumbing ----

/// Streams a file as `application/octet-stream`, named for download.
async fn file_response(path: &Path, name: &str) -> Result<Response, ApiError> {
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|_| ApiError::not_found(format!("Not found: Snapshot {name} not found")))?;
    let len = file
        .metadata()
        .await
        .map_err(|e| ApiError::internal(format!("Service internal error: {e}")))?
        .len();
    let stream = futures::stream::unfold(file, |mut file| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 1 << 20];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(bytes::Bytes::from(buf)), file))
            }
            Err(e) => Some((Err(e), file)),
        }
    });
    let disposition = format!("attachment; filename=\"{}\"", name.replace('"', ""));
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, len)
        .header(header::CONTENT_DISPOSITION, disposition)
        .body(Body::from_stream(stream))
        .map_err(|e| ApiError::internal(e.to_string()))
}

/// Where a recovery reads its archive from.
enum Source {
    /// A file of this node's snapshot directory, used in place.
    File(PathBuf),
    /// An `http://` URL, downloaded first.
    Url(String),
}

/// An archive to recover from: a file in place, or a download removed when dropped.
enum Archive {
    InPlace(PathBuf),
    /// The staging directory holding the file, removed with it.
    Temporary {
        path: PathBuf,
        _dir: store::Staging,
    },
}

impl Archive {
    fn path(&self) -> &Path {
        match self {
            Archive::InPlace(path) | Archive::Temporary { path, .. } => path,
        }
    }
}

/// Parses a recovery `location` (Qdrant's rules; `shard` allows a bare snapshot name of that
/// shard and refuses `file://`).
async fn locate(
    state: &AppState,
    location: &str,
    shard: Option<(&str, u32)>,
) -> Result<Source, ApiError> {
    let snapshots = state.toc.snapshots();
    if let Some(rest) = location.strip_prefix("file://") {
        if shard.is_some() {
            return Err(ApiError::bad_request(format!(
                "Wrong input: Invalid snapshot URL {location}: URLs with file scheme are not supported"
            )));
        }
        let path = rest.strip_prefix("localhost").unwrap_or(rest);
        if !path.starts_with('/') {
            return Err(ApiError::bad_request(
                "Bad request: Invalid snapshot URI, file path must be absolute or on localhost",
            ));
        }
        let path = PathBuf::from(path);
        let Ok(real) = tokio::fs::canonicalize(&path).await else {
            return Err(ApiError::bad_request(format!(
                "Bad request: Snapshot file {:?} does not exist",
                path.display().to_string()
            )));
        };
        let root = tokio::fs::canonicalize(snapshots.root())
            .await
            .map_err(|e| ApiError::internal(format!("Service internal error: {e}")))?;
        if !real.starts_with(&root) || !real.is_file() {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "Forbidden: Snapshot file path must be inside the snapshots directory {:?}",
                    root.display().to_string()
                ),
            ));
        }
        return Ok(Source::File(real));
    }
    if location.starts_with("http://") {
        return Ok(Source::Url(location.to_string()));
    }
    if location.starts_with("https://") {
        return Err(ApiError::bad_request(format!(
            "Bad request: URL {location} with scheme https is not supported by this node (no TLS client); download the snapshot and upload it, or serve it over http"
        )));
    }
    if let Some((collection, shard)) = shard
        && !location.contains("://")
    {
        let dir = snapshots.shard_dir(collection, shard);
        return Ok(Source::File(snapshots.find(&dir, location)?));
    }
    let scheme = location.split_once("://").map_or("", |(s, _)| s);
    Err(ApiError::bad_request(format!(
        "Bad request: URL {location} with scheme {scheme} is not supported"
    )))
}

/// Brings the archive to this node (downloads a URL into the staging area).
async fn fetch(
    state: &AppState,
    source: Source,
    api_key: Option<String>,
) -> Result<Archive, ApiError> {
    match source {
        Source::File(path) => Ok(Archive::InPlace(path)),
        Source::Url(url) => {
            let snapshots = Arc::clone(state.toc.snapshots());
            run(move || {
                let staging = snapshots.staging()?;
                let path = staging.path().join("download.snapshot");
                download_url(&url, api_key.as_deref(), &path)?;
                Ok(Archive::Temporary {
                    path,
                    _dir: staging,
                })
            })
            .await
        }
    }
}

/// Liveness only: a download that takes longer fails (and changes nothing).
const DOWNLOAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3600);
/// Liveness only: resolving and connecting to the snapshot's host.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

fn download_url(url: &str, api_key: Option<&str>, dest: &Path) -> Result<(), SnapshotError> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(DOWNLOAD_TIMEOUT))
        .timeout_resolve(Some(CONNECT_TIMEOUT))
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .http_status_as_error(false)
        .build()
        .into();
    let mut request = agent.get(url);
    if let Some(key) = api_key {
        request = request.header("api-key", key);
    }
    // The location is the caller's input: a host that does not resolve or answer is a bad
    // request, not a failure of this node.
    let response = request.call().map_err(|e| {
        SnapshotError::BadRequest(format!("could not download the snapshot from {url}: {e}"))
    })?;
    let status = response.status();
    if !status.is_success() {
        return Err(SnapshotError::BadRequest(format!(
            "Failed to download snapshot from {url}: status - {status}"
        )));
    }
    let mut body = response.into_body();
    let mut reader = body.with_config().limit(MAX_SNAPSHOT_BYTES).reader();
    let mut file = std::fs::File::create(dest).map_err(SnapshotError::io(dest))?;
    std::io::copy(&mut reader, &mut file).map_err(|e| {
        SnapshotError::BadRequest(format!("could not download the snapshot from {url}: {e}"))
    })?;
    Ok(())
}

/// Stores the `snapshot` field of a multipart upload in the staging area.
async fn receive(state: &AppState, mut multipart: Multipart) -> Result<Archive, ApiError> {
    use tokio::io::AsyncWriteExt;
    let snapshots = Arc::clone(state.toc.snapshots());
    let staging = run(move || snapshots.staging()).await?;
    let path = staging.path().join("upload.snapshot");
    let bad = |e: axum::extract::multipart::MultipartError| {
        ApiError::bad_request(format!("Format error in multipart body: {e}"))
    };
    while let Some(mut field) = multipart.next_field().await.map_err(bad)? {
        if field.name() != Some("snapshot") {
            continue;
        }
        let mut file = tokio::fs::File::create(&path)
            .await
            .map_err(|e| ApiError::internal(format!("Service internal error: {e}")))?;
        let mut written = 0u64;
        while let Some(chunk) = field.chunk().await.map_err(bad)? {
            written += chunk.len() as u64;
            if written > MAX_SNAPSHOT_BYTES {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("Bad request: a snapshot may not exceed {MAX_SNAPSHOT_BYTES} bytes"),
                ));
            }
            file.write_all(&chunk)
                .await
                .map_err(|e| ApiError::internal(format!("Service internal error: {e}")))?;
        }
        file.flush()
            .await
            .map_err(|e| ApiError::internal(format!("Service internal error: {e}")))?;
        return Ok(Archive::Temporary {
            path,
            _dir: staging,
        });
    }
    Err(ApiError::bad_request(
        "Bad request: the multipart body has no `snapshot` field",
    ))
}

/// A body that is not `multipart/form-data` (400, in the API's error envelope).
fn multipart_error(e: MultipartRejection) -> ApiError {
    ApiError::bad_request(format!(
        "Bad request: a snapshot upload is a multipart/form-data body with a `snapshot` field: {e}"
    ))
}

fn check_checksum_format(checksum: Option<&str>) -> Result<(), ApiError> {
    match checksum {
        Some(c) if c.len() != 64 || !c.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Err(ApiError::unprocessable(
                "Validation error in query parameters: checksum: must be 64 hexadecimal characters (a SHA-256)",
            ))
        }
        _ => Ok(()),
    }
}

async fn verify_checksum(path: &Path, expected: Option<&str>) -> Result<(), ApiError> {
    let Some(expected) = expected.map(|e| e.trim().to_ascii_lowercase()) else {
        return Ok(());
    };
    let path = path.to_path_buf();
    let actual =
        run(move || sha256_file(&path).map_err(|e| SnapshotError::Io(e.to_string()))).await?;
    if actual != expected {
        return Err(ApiError::bad_request(format!(
            "Wrong input: Snapshot checksum mismatch: expected {expected}, got {actual}"
        )));
    }
    Ok(())
}

/// One recovery at a time on this node: two recoveries of one collection would race for its
/// replicas.
static RECOVERY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn recover_collection(
    state: &AppState,
    name: &str,
    archive: &Path,
    priority: SnapshotPriority,
) -> Result<(), ApiError> {
    let _one_at_a_time = RECOVERY.lock().await;
    let snapshots: Arc<SnapshotStore> = Arc::clone(state.toc.snapshots());
    let path = archive.to_path_buf();
    let unpacked = run(move || store::unpack_collection(&snapshots, &path)).await?;
    let manifest = &unpacked.manifest;
    let created = if state.toc.exists(name) {
        let collection = state.toc.get(name)?;
        check_compatible(&manifest.config, &collection.config())?;
        false
    } else {
        validate_collection_name(name)?;
        if manifest.config.params.sharding_method == Some(ShardingMethod::Custom) {
            return Err(ApiError::bad_request(format!(
                "Bad request: collection `{name}` does not exist and the snapshot is of a custom-sharded collection: create the collection and its shard keys first, then recover"
            )));
        }
        let op = ClusterOperation::CreateCollection {
            name: name.to_string(),
            config: Box::new(manifest.config.clone()),
            uuid: rand::random_range(1..u64::MAX),
        };
        state.toc.submit(op).await.map_err(submit_error)?;
        for (field, entry) in &manifest.payload_schema {
            let op = ClusterOperation::SetPayloadIndex {
                collection: name.to_string(),
                field: field.clone(),
                entry: Some(entry.clone()),
            };
            state.toc.submit(op).await.map_err(submit_error)?;
        }
        true
    };
    let collection = state.toc.get(name)?;
    let name = collection.name().to_string();
    let me = state.toc.env().this_peer();
    let mut restored = 0;
    for (&id, key) in &manifest.shards {
        let view = state.metadata.view();
        let Some(shard) = view
            .state
            .collections
            .get(&name)
            .and_then(|c| c.shards.get(&ShardId(id)))
        else {
            tracing::warn!(collection = %name, shard = id, "the collection has no such shard; skipping the snapshot's image of it");
            continue;
        };
        if shard.shard_key != *key {
            tracing::warn!(collection = %name, shard = id, "the shard has another shard key than in the snapshot; skipping it");
            continue;
        }
        if !shard.replicas.contains_key(&me) {
            if !created {
                tracing::warn!(collection = %name, shard = id, "this peer holds no replica of the shard; skipping the snapshot's image of it");
                continue;
            }
            let op = ClusterOperation::AddReplica {
                collection: name.clone(),
                shard: ShardId(id),
                peer: me,
                state: ReplicaState::Partial,
            };
            state.toc.submit(op).await.map_err(submit_error)?;
        }
        restore_image(state, &name, id, unpacked.shard_dir(id)).await?;
        // A collection created just now holds nothing else: the snapshot is the truth.
        let priority = if created {
            SnapshotPriority::Snapshot
        } else {
            priority
        };
        settle_replicas(state, &name, id, me, priority).await?;
        restored += 1;
    }
    tracing::info!(collection = %name, shards = restored, ?priority, "collection recovered from a snapshot");
    Ok(())
}

async fn recover_one_shard(
    state: &AppState,
    name: &str,
    shard: u32,
    archive: &Path,
    priority: SnapshotPriority,
) -> Result<(), ApiError> {
    let _one_at_a_time = RECOVERY.lock().await;
    let collection = state.toc.get(name)?;
    let snapshots = Arc::clone(state.toc.snapshots());
    let path = archive.to_path_buf();
    let (staging, manifest) = run(move || store::unpack_shard(&snapshots, &path)).await?;
    check_compatible(&manifest.config, &collection.config())?;
    let custom = collection.config().params.sharding_method == Some(ShardingMethod::Custom);
    if manifest.shard_id != shard && !custom {
        return Err(SnapshotError::Incompatible(format!(
            "the snapshot is of shard {}, not of shard {shard}: its points belong to another shard",
            manifest.shard_id
        ))
        .into());
    }
    let name = collection.name().to_string();
    restore_image(state, &name, shard, staging.path().to_path_buf()).await?;
    settle_replicas(state, &name, shard, state.toc.env().this_peer(), priority).await?;
    drop(staging);
    Ok(())
}

/// Turns the image in `dir` into a shard directory and swaps it in for this peer's replica.
async fn restore_image(
    state: &AppState,
    name: &str,
    shard: u32,
    dir: PathBuf,
) -> Result<(), ApiError> {
    let collection = state.toc.get(name)?;
    run(move || {
        image_to_shard_dir(&dir)?;
        collection
            .restore_local_shard(shard, &dir)
            .map_err(|e| match e {
                CollectionError::BadInput(m) => SnapshotError::Invalid(m),
                other => SnapshotError::Io(other.to_string()),
            })
    })
    .await?;
    Ok(())
}

/// Sets the replica states of `shard` after this peer's replica was restored (see the module
/// docs for each priority). Each change is a compare-and-set on the state it was decided on.
async fn settle_replicas(
    state: &AppState,
    name: &str,
    shard: u32,
    me: PeerId,
    priority: SnapshotPriority,
) -> Result<(), ApiError> {
    let view = state.metadata.view();
    let Some(replicas) = view
        .state
        .collections
        .get(name)
        .and_then(|c| c.shards.get(&ShardId(shard)))
        .map(|s| s.replicas.clone())
    else {
        return Ok(());
    };
    let Some(&mine) = replicas.get(&me) else {
        return Ok(());
    };
    let others: Vec<(PeerId, ReplicaState)> = replicas
        .iter()
        .filter(|(p, s)| **p != me && s.is_active_like())
        .map(|(p, s)| (*p, *s))
        .collect();
    let change = |peer: PeerId, from_state: ReplicaState, state: ReplicaState| ReplicaStateChange {
        peer,
        state,
        from_state,
    };
    let mut changes = Vec::new();
    if priority == SnapshotPriority::Replica && !others.is_empty() {
        if mine != ReplicaState::Dead {
            changes.push(change(me, mine, ReplicaState::Dead));
        }
    } else {
        if mine != ReplicaState::Active {
            changes.push(change(me, mine, ReplicaState::Active));
        }
        if priority == SnapshotPriority::Snapshot {
            changes.extend(
                others
                    .into_iter()
                    .map(|(peer, current)| change(peer, current, ReplicaState::Dead)),
            );
        }
    }
    if !changes.is_empty() {
        // One operation: a replica marked Dead must not recover from another stale one.
        let op = ClusterOperation::SetReplicaStates {
            collection: name.to_string(),
            shard: ShardId(shard),
            changes,
        };
        state.toc.submit(op).await.map_err(submit_error)?;
    }
    Ok(())
}
