//! The internal gRPC services on the p2p port (tonic): peer info, the Raft transport and cluster
//! membership. When an API key is configured, every call must carry it in the `api-key`
//! metadata entry; an unauthenticated call is refused.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;
use shoal_proto::v1::admin_service_server::AdminServiceServer;
use shoal_proto::v1::cluster_service_server::{ClusterService, ClusterServiceServer};
use shoal_proto::v1::peer_service_server::{PeerService, PeerServiceServer};
use shoal_proto::v1::raft_service_server::{RaftService, RaftServiceServer};
use shoal_proto::v1::shard_service_server::{ShardService, ShardServiceServer};
use shoal_proto::v1::snapshot_service_client::SnapshotServiceClient;
use shoal_proto::v1::snapshot_service_server::{SnapshotService, SnapshotServiceServer};
use shoal_proto::v1::{
    AwaitReconciledRequest, AwaitReconciledResponse, InfoRequest, InfoResponse, JoinRequest,
    JoinResponse, ProposeRequest, ProposeResponse, RaftPayload, RemoveMemberRequest,
    RemoveMemberResponse, TransferProgressRequest, TransferProgressResponse,
};
use shoal_proto::v1::{
    OptimizationsRequest, OptimizationsResponse, RecoverySnapshotRequest, RecoverySnapshotResponse,
    TelemetryRequest, TelemetryResponse,
};
use shoal_proto::v1::{RecoverRequest, RecoverResponse, SnapshotChunk, SnapshotRef};
use shoal_proto::v1::{ShardAnswer, ShardCall};
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status};

use crate::api::admin::Admin;
use crate::api::rest::introspection;
use crate::api::rest::service::QDRANT_API_VERSION;
use crate::cluster::CollectionError;
use crate::cluster::remote_shard::{POINT_NOT_FOUND_MARK, STALE_LAYOUT_MARK, STALE_TRANSFER_MARK};
use crate::cluster::shard_requests::{
    FencedRecovery, ShardCount, ShardFacet, ShardOrderBy, ShardRequest, ShardRetrieve, ShardScroll,
    ShardSearch, ShardSparseStats, StreamFence, UpdateCall,
};
use crate::cluster::toc::TableOfContent;
use crate::consensus::raft_node::{ConsensusError, ConsensusNode};
use crate::consensus::{ClusterOperation, PeerId, PeerNode};
use crate::shard::local_shard::{LocalShard, ShardError, Stamp, UpdateOutcome};

pub struct Peer {
    toc: Arc<TableOfContent>,
}

#[tonic::async_trait]
impl PeerService for Peer {
    async fn info(&self, _request: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        Ok(Response::new(InfoResponse {
            version: env!("CARGO_PKG_VERSION").to_string(),
            qdrant_api_version: QDRANT_API_VERSION.to_string(),
            collections: self.toc.names(),
        }))
    }

    async fn await_reconciled(
        &self,
        request: Request<AwaitReconciledRequest>,
    ) -> Result<Response<AwaitReconciledResponse>, Status> {
        let request = request.into_inner();
        let timeout = Duration::from_millis(request.timeout_ms.min(MAX_AWAIT_MS));
        let reached = self.toc.wait_reconciled(request.index, timeout).await;
        Ok(Response::new(AwaitReconciledResponse {
            reached,
            reconciled_index: self.toc.reconciled_index(),
        }))
    }

    async fn transfer_progress(
        &self,
        request: Request<TransferProgressRequest>,
    ) -> Result<Response<TransferProgressResponse>, Status> {
        let collection = request.into_inner().collection;
        let entries = self.toc.transfers().progress(&collection);
        let transfers_json =
            serde_json::to_vec(&entries).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(TransferProgressResponse { transfers_json }))
    }

    async fn telemetry(
        &self,
        request: Request<TelemetryRequest>,
    ) -> Result<Response<TelemetryResponse>, Status> {
        let level = request.into_inner().details_level as usize;
        let data = introspection::telemetry::collect(&self.toc, None, level)
            .await
            .map_err(|e| Status::internal(e.message))?;
        let telemetry_json =
            serde_json::to_vec(&data).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(TelemetryResponse { telemetry_json }))
    }

    async fn optimizations(
        &self,
        request: Request<OptimizationsRequest>,
    ) -> Result<Response<OptimizationsResponse>, Status> {
        let request = request.into_inner();
        let options = introspection::optimizations::Options::parse(
            Some(&request.with),
            Some(request.completed_limit as usize),
        )
        .map_err(Status::invalid_argument)?;
        let collection = self
            .toc
            .get(&request.collection)
            .map_err(collection_status)?;
        let peer = self.toc.env().this_peer();
        let answer = tokio::task::spawn_blocking(move || {
            introspection::optimizations::local_optimizations(&collection, peer, options)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        let optimizations_json =
            serde_json::to_vec(&answer).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(OptimizationsResponse { optimizations_json }))
    }
}

/// How long the leader may take to build a snapshot for a recovering peer. Liveness: past it
/// the recovery fails and can be asked again.
const RECOVERY_SNAPSHOT_PATIENCE: Duration = Duration::from_secs(20);
/// The longest a caller may make `AwaitReconciled` wait. Liveness: the answer says whether
/// the index was reached, and a caller that needs it treats "no" as "not yet".
const MAX_AWAIT_MS: u64 = 60_000;
/// How long a shard request waits for this peer to learn of a collection or replica that the
/// caller already knows (this peer may apply the creating operation a little later). Liveness:
/// past it the request fails as any unreachable replica does.
const REPLICA_PATIENCE: Duration = Duration::from_secs(5);

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Status> {
    serde_json::from_slice(bytes)
        .map_err(|e| Status::invalid_argument(format!("malformed message: {e}")))
}

fn encode<T: Serialize>(value: &T) -> Result<Response<RaftPayload>, Status> {
    serde_json::to_vec(value)
        .map(|json| Response::new(RaftPayload { json }))
        .map_err(|e| Status::internal(e.to_string()))
}

fn status_of(e: ConsensusError) -> Status {
    match e {
        ConsensusError::NoLeader => Status::unavailable(e.to_string()),
        ConsensusError::Forward { .. } => Status::unavailable(e.to_string()),
        _ => Status::internal(e.to_string()),
    }
}

/// Openraft's messages, handed to the local Raft member.
pub struct RaftTransport {
    node: Arc<ConsensusNode>,
}

#[tonic::async_trait]
impl RaftService for RaftTransport {
    async fn append_entries(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let rpc = decode(&request.into_inner().json)?;
        encode(&self.node.raft.append_entries(rpc).await)
    }

    async fn vote(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let rpc = decode(&request.into_inner().json)?;
        encode(&self.node.raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let rpc = decode(&request.into_inner().json)?;
        encode(&self.node.raft.install_snapshot(rpc).await)
    }

    /// Builds a snapshot of everything applied so far and sends it with the leader's vote.
    async fn recovery_snapshot(
        &self,
        request: Request<RecoverySnapshotRequest>,
    ) -> Result<Response<RecoverySnapshotResponse>, Status> {
        let asking = request.into_inner().peer_id;
        let raft = &self.node.raft;
        if raft.current_leader().await != Some(self.node.peer_id.0) {
            return Err(Status::failed_precondition(
                "this peer is not the Raft leader; ask the leader",
            ));
        }
        let applied = raft.metrics().borrow().last_applied;
        raft.trigger()
            .snapshot()
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        if let Some(applied) = applied {
            raft.wait(Some(RECOVERY_SNAPSHOT_PATIENCE))
                .metrics(
                    |m| m.snapshot.is_some_and(|s| s.index >= applied.index),
                    "a snapshot of the applied state",
                )
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?;
        }
        let snapshot = raft
            .get_snapshot()
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .ok_or_else(|| Status::unavailable("the leader has no snapshot yet"))?;
        let vote = raft.metrics().borrow().vote;
        let vote_json = serde_json::to_vec(&vote).map_err(|e| Status::internal(e.to_string()))?;
        let meta_json =
            serde_json::to_vec(&snapshot.meta).map_err(|e| Status::internal(e.to_string()))?;
        tracing::info!(peer = asking, snapshot = ?snapshot.meta.last_log_id, "sending a snapshot for recovery");
        Ok(Response::new(RecoverySnapshotResponse {
            vote_json,
            meta_json,
            data: snapshot.snapshot.into_inner(),
        }))
    }
}

/// Membership and metadata proposals from other peers.
pub struct Membership {
    node: Arc<ConsensusNode>,
}

#[tonic::async_trait]
impl ClusterService for Membership {
    async fn join(&self, request: Request<JoinRequest>) -> Result<Response<JoinResponse>, Status> {
        let r = request.into_inner();
        if r.peer_id == 0 || r.uri.is_empty() {
            return Err(Status::invalid_argument(
                "a joining peer needs a non-zero id and a URI",
            ));
        }
        let leader = self
            .node
            .join(
                PeerId(r.peer_id),
                PeerNode {
                    uri: r.uri,
                    name: r.name,
                },
            )
            .await
            .map_err(status_of)?;
        Ok(Response::new(JoinResponse { leader_id: leader }))
    }

    async fn remove_member(
        &self,
        request: Request<RemoveMemberRequest>,
    ) -> Result<Response<RemoveMemberResponse>, Status> {
        let peer = request.into_inner().peer_id;
        self.node
            .remove_member(peer, std::time::Duration::from_secs(30))
            .await
            .map_err(status_of)?;
        Ok(Response::new(RemoveMemberResponse {}))
    }

    async fn propose(
        &self,
        request: Request<ProposeRequest>,
    ) -> Result<Response<ProposeResponse>, Status> {
        let op: ClusterOperation = decode(&request.into_inner().operation_json)?;
        let (result, log_index) = self.node.propose(op).await.map_err(status_of)?;
        let result_json =
            serde_json::to_vec(&result).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(ProposeResponse {
            result_json,
            log_index,
        }))
    }
}

/// Point operations and reads on this peer's shard replicas, for peers that do not hold them.
pub struct ShardPoints {
    toc: Arc<TableOfContent>,
}

fn collection_status(e: CollectionError) -> Status {
    let e = match e {
        CollectionError::Shard(ShardError::PointNotFound(id)) => {
            CollectionError::PointNotFound(id.to_string())
        }
        other => other,
    };
    match e {
        CollectionError::PointNotFound(id) => {
            let mut status = Status::not_found(format!("No point with id {id} found"));
            status.metadata_mut().insert(
                POINT_NOT_FOUND_MARK,
                tonic::metadata::MetadataValue::from_static("1"),
            );
            status
        }
        CollectionError::NotFound(_) => Status::not_found(e.to_string()),
        CollectionError::BadInput(_)
        | CollectionError::Shard(ShardError::WrongDimension { .. } | ShardError::BadInput(_)) => {
            Status::invalid_argument(e.to_string())
        }
        CollectionError::Moved(_) => Status::failed_precondition(e.to_string()),
        CollectionError::StaleLayout(_) => {
            let mut status = Status::failed_precondition(e.to_string());
            status.metadata_mut().insert(
                STALE_LAYOUT_MARK,
                tonic::metadata::MetadataValue::from_static("1"),
            );
            status
        }
        CollectionError::StaleTransfer(_) => {
            let mut status = Status::failed_precondition(e.to_string());
            status.metadata_mut().insert(
                STALE_TRANSFER_MARK,
                tonic::metadata::MetadataValue::from_static("1"),
            );
            status
        }
        CollectionError::ForwardFailed(_) => Status::aborted(e.to_string()),
        _ => Status::internal(e.to_string()),
    }
}

impl ShardPoints {
    /// This peer's replica of the shard a call addresses, waiting a little for one that the
    /// caller knows of and this peer is about to create.
    async fn replica(&self, call: &ShardCall) -> Result<Arc<LocalShard>, Status> {
        let deadline = Instant::now() + REPLICA_PATIENCE;
        loop {
            if let Ok(collection) = self.toc.get(&call.collection) {
                match collection.local_for_request(call.shard_id) {
                    Ok(shard) => return Ok(shard),
                    // A replica that did not open is not about to appear: say why at once.
                    Err(e) if collection.replica_failed(call.shard_id) => {
                        return Err(Status::unavailable(e.to_string()));
                    }
                    Err(_) => {}
                }
            }
            if Instant::now() >= deadline {
                return Err(Status::not_found(format!(
                    "shard {} of collection `{}` has no replica on this peer",
                    call.shard_id, call.collection
                )));
            }
            // A polling interval (liveness): see `REPLICA_PATIENCE`.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Decodes the call, finds the replica, runs the request on a blocking thread, encodes the
    /// answer.
    async fn run<R: ShardRequest>(&self, call: ShardCall) -> Result<Response<ShardAnswer>, Status> {
        let request: R = decode(&call.body_json)?;
        self.replica(&call).await?;
        let collection = self.toc.get(&call.collection).map_err(collection_status)?;
        let answer = collection
            .read_local(call.shard_id, request)
            .await
            .map_err(collection_status)?;
        let body_json = serde_json::to_vec(&answer).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(ShardAnswer { body_json }))
    }
}

#[tonic::async_trait]
impl ShardService for ShardPoints {
    async fn update(&self, request: Request<ShardCall>) -> Result<Response<ShardAnswer>, Status> {
        // Through the collection, so that a transfer sending this replica forwards it.
        // A coordinator's update carries the layout version it was routed by and its clock
        // tag; a forwarded copy the tag its source applied it with; a transfer's own stream
        // no tag.
        let call = request.into_inner();
        let body: UpdateCall = decode(&call.body_json)?;
        self.replica(&call).await?;
        let collection = self.toc.get(&call.collection).map_err(collection_status)?;
        let (update, routed_by, stamp) = match body {
            UpdateCall::Lead(lead) => {
                let seq = collection
                    .lead_update(call.shard_id, Arc::new(lead.update))
                    .await
                    .map_err(collection_status)?;
                let body_json =
                    serde_json::to_vec(&seq).map_err(|e| Status::internal(e.to_string()))?;
                return Ok(Response::new(ShardAnswer { body_json }));
            }
            UpdateCall::Routed(f) => (
                f.update,
                Some(f.layout_version),
                f.clock.map_or(Stamp::Local, Stamp::Coordinator),
            ),
            UpdateCall::Streamed(f) => {
                let stamp = f.clock.map_or(Stamp::Local, Stamp::Forced);
                let outcome = collection
                    .update_copy(call.shard_id, Arc::new(f.update), stamp, f.fence)
                    .await
                    .map_err(collection_status)?;
                let seq = match outcome {
                    UpdateOutcome::Applied(seq) | UpdateOutcome::Duplicate(seq) => seq,
                    UpdateOutcome::Behind(_) => {
                        return Err(Status::internal("a transfer's copy was refused as behind"));
                    }
                };
                let body_json =
                    serde_json::to_vec(&seq).map_err(|e| Status::internal(e.to_string()))?;
                return Ok(Response::new(ShardAnswer { body_json }));
            }
            UpdateCall::Forwarded(f) => (f.update, None, Stamp::Forced(f.clock)),
            UpdateCall::Untagged(update) => (update, None, Stamp::Local),
        };
        let outcome = collection
            .update_local(call.shard_id, Arc::new(update), routed_by, stamp)
            .await
            .map_err(collection_status)?;
        // A coordinator reads the outcome; the others only the operation number.
        let body_json = match (routed_by, outcome) {
            (Some(_), outcome) => serde_json::to_vec(&outcome),
            (None, UpdateOutcome::Applied(seq) | UpdateOutcome::Duplicate(seq)) => {
                serde_json::to_vec(&seq)
            }
            (None, UpdateOutcome::Behind(_)) => {
                return Err(Status::internal("an untagged or forced update was refused"));
            }
        }
        .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(ShardAnswer { body_json }))
    }

    async fn recovery(&self, request: Request<ShardCall>) -> Result<Response<ShardAnswer>, Status> {
        // Straight to the replica (a destination's recovery steps are not forwarded further),
        // once the collection has checked the step's transfer still runs.
        let call = request.into_inner();
        let step: FencedRecovery = decode(&call.body_json)?;
        // Waits a little for a replica this peer is about to create; the collection looks
        // it up again once the step is checked.
        self.replica(&call).await?;
        let collection = self.toc.get(&call.collection).map_err(collection_status)?;
        let answer = collection
            .recover_local(call.shard_id, step)
            .await
            .map_err(collection_status)?;
        let body_json = serde_json::to_vec(&answer).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(ShardAnswer { body_json }))
    }

    async fn search(&self, request: Request<ShardCall>) -> Result<Response<ShardAnswer>, Status> {
        self.run::<ShardSearch>(request.into_inner()).await
    }

    async fn scroll(&self, request: Request<ShardCall>) -> Result<Response<ShardAnswer>, Status> {
        self.run::<ShardScroll>(request.into_inner()).await
    }

    async fn count(&self, request: Request<ShardCall>) -> Result<Response<ShardAnswer>, Status> {
        self.run::<ShardCount>(request.into_inner()).await
    }

    async fn retrieve(&self, request: Request<ShardCall>) -> Result<Response<ShardAnswer>, Status> {
        self.run::<ShardRetrieve>(request.into_inner()).await
    }

    async fn sparse_stats(
        &self,
        request: Request<ShardCall>,
    ) -> Result<Response<ShardAnswer>, Status> {
        self.run::<ShardSparseStats>(request.into_inner()).await
    }

    async fn order_by(&self, request: Request<ShardCall>) -> Result<Response<ShardAnswer>, Status> {
        self.run::<ShardOrderBy>(request.into_inner()).await
    }

    async fn facet(&self, request: Request<ShardCall>) -> Result<Response<ShardAnswer>, Status> {
        self.run::<ShardFacet>(request.into_inner()).await
    }
}

/// Snapshots of local replicas for the `snapshot` transfer method.
pub struct Snapshots {
    toc: Arc<TableOfContent>,
}

/// The image a running `snapshot` transfer ships, by the name the transfer gave it.
fn shipping_of(
    toc: &TableOfContent,
    r: &SnapshotRef,
) -> Result<Arc<crate::cluster::transfer::Shipping>, Status> {
    check_snapshot_name(r)?;
    toc.transfers()
        .shipping
        .lock()
        .get(&r.name)
        .cloned()
        .ok_or_else(|| Status::not_found(format!("no transfer ships `{}`", r.name)))
}

fn check_snapshot_name(r: &SnapshotRef) -> Result<(), Status> {
    let plain = !r.name.is_empty()
        && r.name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !r.name.starts_with('.');
    if plain {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "`{}` is not a snapshot name",
            r.name
        )))
    }
}

/// Size of the chunks a snapshot is streamed in.
const SNAPSHOT_CHUNK: usize = 1 << 20;

/// The writer a shipped image is packed into: cuts the archive into chunks for the download
/// stream, paced by the transfer's byte limit. Fails once the receiver is gone.
struct ChunkSender {
    tx: tokio::sync::mpsc::Sender<Result<SnapshotChunk, Status>>,
    buf: Vec<u8>,
    sent: u64,
    started: std::time::Instant,
    shipping: Arc<crate::cluster::transfer::Shipping>,
}

impl ChunkSender {
    fn send_buffered(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(SNAPSHOT_CHUNK));
        let n = data.len() as u64;
        self.tx
            .blocking_send(Ok(SnapshotChunk { data }))
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the download ended")
            })?;
        self.sent += n;
        self.shipping.pace(self.started, self.sent);
        Ok(())
    }
}

impl std::io::Write for ChunkSender {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let room = SNAPSHOT_CHUNK - self.buf.len();
        let n = data.len().min(room);
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == SNAPSHOT_CHUNK {
            self.send_buffered()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send_buffered()
    }
}

/// Reads an archive from the chunks of a download stream (for unpacking as it arrives).
struct ChunkReader {
    rx: tokio::sync::mpsc::Receiver<Result<Vec<u8>, String>>,
    current: std::io::Cursor<Vec<u8>>,
}

impl std::io::Read for ChunkReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let n = std::io::Read::read(&mut self.current, out)?;
            if n > 0 || out.is_empty() {
                return Ok(n);
            }
            match self.rx.blocking_recv() {
                Some(Ok(data)) => self.current = std::io::Cursor::new(data),
                Some(Err(e)) => return Err(std::io::Error::other(e)),
                None => return Ok(0),
            }
        }
    }
}

#[tonic::async_trait]
impl SnapshotService for Snapshots {
    type DownloadStream = tokio_stream::wrappers::ReceiverStream<Result<SnapshotChunk, Status>>;

    /// Streams the image a transfer ships as a tar archive, packed as it is sent.
    async fn download(
        &self,
        request: Request<SnapshotRef>,
    ) -> Result<Response<Self::DownloadStream>, Status> {
        let shipping = shipping_of(&self.toc, &request.into_inner())?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::task::spawn_blocking(move || {
            let image = shipping.image.clone();
            let writer = ChunkSender {
                tx: tx.clone(),
                buf: Vec::with_capacity(SNAPSHOT_CHUNK),
                sent: 0,
                started: std::time::Instant::now(),
                shipping,
            };
            let packed = crate::shard::snapshot::pack_into(&image, writer)
                .and_then(|mut w| std::io::Write::flush(&mut w));
            if let Err(e) = packed {
                let _ =
                    tx.blocking_send(Err(Status::internal(format!("packing the snapshot: {e}"))));
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }

    /// Downloads a transfer's image from its source, unpacking it as it arrives, and swaps
    /// it in for this peer's replica (see
    /// [`crate::cluster::collection::Collection::restore_local_shard`]). An image that does
    /// not verify, or whose configuration is not the collection's, is refused and changes
    /// nothing.
    async fn recover(
        &self,
        request: Request<RecoverRequest>,
    ) -> Result<Response<RecoverResponse>, Status> {
        let request = request.into_inner();
        let snapshot = request
            .snapshot
            .ok_or_else(|| Status::invalid_argument("`snapshot` is required"))?;
        check_snapshot_name(&snapshot)?;
        // Wait a little for the replica this peer is about to create.
        let call = ShardCall {
            collection: snapshot.collection.clone(),
            shard_id: snapshot.shard_id,
            body_json: Vec::new(),
        };
        ShardPoints {
            toc: Arc::clone(&self.toc),
        }
        .replica(&call)
        .await?;
        let collection = self
            .toc
            .get(&snapshot.collection)
            .map_err(collection_status)?;
        let fence = StreamFence {
            transfer: request.transfer_id,
            seen: request.seen,
        };
        // Judged by a state at least as new as the sender's, before anything is downloaded.
        collection
            .wait_for_fence(&fence)
            .await
            .map_err(collection_status)?;
        let began = std::time::Instant::now();
        let env = self.toc.env();
        let channel = env
            .channel(&request.source_uri)
            .map_err(collection_status)?;
        let mut download = tonic::Request::new(snapshot.clone());
        if let Some(k) = &env.api_key
            && let Ok(v) = k.parse()
        {
            download.metadata_mut().insert("api-key", v);
        }
        let mut stream = SnapshotServiceClient::new(channel)
            .download(download)
            .await?
            .into_inner();
        use crate::shard::snapshot::{SnapshotError, check_compatible, image_to_shard_dir};
        let refuse = |e: SnapshotError| match e {
            SnapshotError::Io(_) => Status::internal(e.to_string()),
            SnapshotError::Unavailable(_) => Status::unavailable(e.to_string()),
            _ => Status::invalid_argument(e.to_string()),
        };
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let snapshots = Arc::clone(self.toc.snapshots());
        let unpacking = tokio::task::spawn_blocking(move || {
            let reader = ChunkReader {
                rx,
                current: std::io::Cursor::new(Vec::new()),
            };
            crate::cluster::snapshots::unpack_shard_from(&snapshots, reader)
        });
        loop {
            let chunk = match stream.message().await {
                Ok(Some(chunk)) => Ok(chunk.data),
                Ok(None) => break,
                Err(status) => Err(status.message().to_string()),
            };
            let failed = chunk.is_err();
            // A closed channel means the unpacking stopped (its error is reported below).
            if tx.send(chunk).await.is_err() || failed {
                break;
            }
        }
        drop(tx);
        let (image, manifest) = unpacking
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(refuse)?;
        let unpacked_ms = began.elapsed().as_millis() as u64;
        let shard_id = snapshot.shard_id;
        let restored = tokio::task::spawn_blocking(move || {
            check_compatible(&manifest.config, &collection.config()).map_err(refuse)?;
            image_to_shard_dir(image.path()).map_err(refuse)?;
            let prepared_ms = began.elapsed().as_millis() as u64;
            let points = collection
                .restore_transfer_image(shard_id, image.path(), fence)
                .map_err(collection_status)?;
            tracing::info!(
                collection = %collection.name(),
                shard = shard_id,
                points,
                unpacked_ms,
                prepared_ms,
                restored_ms = began.elapsed().as_millis() as u64,
                "restored a transfer's snapshot"
            );
            Ok::<_, Status>(points as u64)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))??;
        Ok(Response::new(RecoverResponse { points: restored }))
    }
}

/// Refuses calls without the configured API key.
#[derive(Clone)]
pub struct RequireKey(Option<Arc<str>>);

impl tonic::service::Interceptor for RequireKey {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.0 else {
            return Ok(request);
        };
        let given = request
            .metadata()
            .get("api-key")
            .and_then(|v| v.to_str().ok());
        if given == Some(&**expected) {
            Ok(request)
        } else {
            Err(Status::unauthenticated(
                "a valid api-key is required for the p2p service",
            ))
        }
    }
}

/// Every service of the p2p port, each guarded by the API key when one is set.
pub fn router(
    toc: Arc<TableOfContent>,
    consensus: Option<Arc<ConsensusNode>>,
    api_key: Option<String>,
) -> tonic::service::Routes {
    let guard = RequireKey(api_key.map(Arc::from));
    let mut routes = tonic::service::Routes::new(InterceptedService::new(
        PeerServiceServer::new(Peer {
            toc: Arc::clone(&toc),
        }),
        guard.clone(),
    ))
    .add_service(InterceptedService::new(
        ShardServiceServer::new(ShardPoints {
            toc: Arc::clone(&toc),
        })
        .max_decoding_message_size(crate::cluster::remote_shard::P2P_MESSAGE_BYTES)
        .max_encoding_message_size(crate::cluster::remote_shard::P2P_MESSAGE_BYTES),
        guard.clone(),
    ))
    .add_service(InterceptedService::new(
        SnapshotServiceServer::new(Snapshots {
            toc: Arc::clone(&toc),
        }),
        guard.clone(),
    ))
    .add_service(InterceptedService::new(
        AdminServiceServer::new(Admin { toc }),
        guard.clone(),
    ));
    if let Some(node) = consensus {
        routes = routes
            .add_service(InterceptedService::new(
                RaftServiceServer::new(RaftTransport {
                    node: Arc::clone(&node),
                }),
                guard.clone(),
            ))
            .add_service(InterceptedService::new(
                ClusterServiceServer::new(Membership { node }),
                guard,
            ));
    }
    routes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::rest::collections::config_from_request;
    use crate::cluster::hash_ring::shard_for;
    use crate::cluster::remote_shard::RemoteShard;
    use crate::cluster::shard_requests::{ShardTarget, WriteOrdering};
    use crate::index::payload_selector::WithVector;
    use crate::shard::operations::{PointSelection, PointWrite, UpdateRequest};
    use crate::types::{Payload, PointId, VectorData};

    fn point(i: u64) -> PointWrite {
        let mut payload = Payload::new();
        payload.insert("i".into(), serde_json::json!(i));
        payload.insert("odd".into(), serde_json::json!(i % 2 == 1));
        PointWrite::dense(
            PointId::Num(i),
            vec![i as f32, (i % 7) as f32, 1.0, -(i as f32) / 3.0],
            payload,
        )
    }

    /// A remote replica answers every shard request exactly as the local one does, and refuses
    /// what a local one would refuse.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn remote_shard_requests_answer_like_local_ones() {
        let dir = tempfile::tempdir().unwrap();
        let toc = crate::cluster::toc::open_local_node(dir.path()).await;
        let request = serde_json::from_value(serde_json::json!({
            "vectors": {"size": 4, "distance": "Euclid"},
            "shard_number": 2,
        }))
        .unwrap();
        toc.submit(ClusterOperation::CreateCollection {
            name: "docs".into(),
            config: Box::new(config_from_request(request).unwrap()),
            uuid: 7,
        })
        .await
        .unwrap();
        let collection = toc.get("docs").unwrap();
        collection
            .update(
                UpdateRequest::Upsert((0..200).map(point).collect()),
                None,
                WriteOrdering::Weak,
            )
            .await
            .unwrap();

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let routes = router(Arc::clone(&toc), None, Some("secret".into()));
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_routes(routes)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        let uri = format!("http://{addr}");
        let odd: crate::index::filter::Filter = serde_json::from_value(
            serde_json::json!({"must": [{"key": "odd", "match": {"value": true}}]}),
        )
        .unwrap();

        for shard_id in 0..2u32 {
            let local = &collection.local_shard(shard_id).unwrap();
            let remote = RemoteShard::new(&uri, "docs", shard_id, Some("secret".into())).unwrap();
            let count = ShardCount {
                filter: Some(odd.clone()),
                owner: None,
            };
            assert_eq!(remote.request(&count).await.unwrap(), count.run(local));
            let scroll = ShardScroll {
                from: Some(PointId::Num(10)),
                limit: 25,
                filter: Some(odd.clone()),
                with_payload: true,
                with_vector: WithVector::All,
                owner: None,
            };
            assert_eq!(remote.request(&scroll).await.unwrap(), scroll.run(local));
            for target in [
                ShardTarget::Nearest(VectorData::Dense(vec![3.0, 1.0, 1.0, -1.0])),
                ShardTarget::BestScore {
                    positive: vec![VectorData::Dense(vec![5.0, 5.0, 1.0, -1.0])],
                    negative: vec![VectorData::Dense(vec![0.0, 0.0, 1.0, 0.0])],
                },
                ShardTarget::IdOrder,
            ] {
                let search = ShardSearch {
                    using: String::new(),
                    idf: None,
                    target,
                    filter: None,
                    exclude: vec![PointId::Num(3)],
                    top: 7,
                    ef: None,
                    exact: true,
                    quantization: Default::default(),
                    score_threshold: None,
                    with_payload: true,
                    with_vector: WithVector::None,
                    owner: None,
                };
                let got = remote.request(&search).await.unwrap();
                assert_eq!(got, search.run(local));
                assert_eq!(got.len(), 7);
            }
            let retrieve = ShardRetrieve {
                ids: (0..20).map(PointId::Num).collect(),
                with_payload: true,
                with_vector: WithVector::All,
                owner: None,
            };
            assert_eq!(
                remote.request(&retrieve).await.unwrap(),
                retrieve.run(local)
            );
        }

        // A forwarded update lands in the replica.
        let id = (1000u64..)
            .find(|i| shard_for(&PointId::Num(*i), 2) == 1)
            .unwrap();
        let remote = RemoteShard::new(&uri, "docs", 1, Some("secret".into())).unwrap();
        remote
            .request(&UpdateRequest::Upsert(vec![point(id)]))
            .await
            .unwrap();
        assert_eq!(
            collection
                .retrieve(&[PointId::Num(id)], true, &WithVector::All, None)
                .await
                .unwrap()
                .len(),
            1
        );
        remote
            .request(&UpdateRequest::Delete(PointSelection::Ids(vec![
                PointId::Num(id),
            ])))
            .await
            .unwrap();
        assert!(
            collection
                .retrieve(&[PointId::Num(id)], false, &WithVector::None, None)
                .await
                .unwrap()
                .is_empty()
        );

        // Refusals: a wrong dimension, an unknown collection or shard, a missing key.
        let mut bad = point(id);
        bad.vectors
            .insert(String::new(), VectorData::Dense(vec![1.0]));
        let before = collection.count(None, None).await.unwrap();
        assert!(matches!(
            remote.request(&UpdateRequest::Upsert(vec![bad])).await,
            Err(CollectionError::BadInput(_))
        ));
        assert_eq!(
            collection.count(None, None).await.unwrap(),
            before,
            "a refused update changes nothing"
        );
        let nowhere = RemoteShard::new(&uri, "nope", 0, Some("secret".into())).unwrap();
        assert!(matches!(
            nowhere
                .request(&ShardCount {
                    filter: None,
                    owner: None
                })
                .await,
            Err(CollectionError::Unavailable(_))
        ));
        let no_shard = RemoteShard::new(&uri, "docs", 7, Some("secret".into())).unwrap();
        assert!(matches!(
            no_shard
                .request(&ShardCount {
                    filter: None,
                    owner: None
                })
                .await,
            Err(CollectionError::Unavailable(_))
        ));
        let intruder = RemoteShard::new(&uri, "docs", 0, Some("wrong".into())).unwrap();
        assert!(
            intruder
                .request(&ShardCount {
                    filter: None,
                    owner: None
                })
                .await
                .is_err()
        );
        collection.cancel();
    }
}
