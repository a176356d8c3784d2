//! `POST /collections/{name}/cluster`: Qdrant's collection cluster operations (move, replicate,
//! abort and restart transfers, drop replicas, shard keys). Each one is checked against the
//! applied state and proposed through consensus; the sender peer's reconcile loop runs the
//! transfer.

use axum::extract::State;
use serde::Deserialize;

use crate::api::rest::AppState;
use crate::api::rest::cluster::submit_error;
use crate::api::rest::json_body::{JsonBody, PathParams};
use crate::api::rest::response::{ApiError, ApiOk, ApiResult, Started};
use crate::cluster::toc::TableOfContent;
use crate::consensus::{
    ClusterOperation, PeerId, ReplicaState, ReshardingDirection, ShardId, ShardKey, ShardTransfer,
    TransferMethod,
};

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub points_per_second: Option<u32>,
    pub bytes_per_second: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MoveShard {
    pub shard_id: u32,
    pub from_peer_id: u64,
    pub to_peer_id: u64,
    pub method: Option<TransferMethod>,
    /// Shoal's extension: cap the transfer's speed so it cannot starve live traffic.
    pub rate_limit: Option<RateLimit>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AbortTransfer {
    pub shard_id: u32,
    pub from_peer_id: u64,
    pub to_peer_id: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestartTransfer {
    pub shard_id: u32,
    pub from_peer_id: u64,
    pub to_peer_id: u64,
    pub method: TransferMethod,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DropReplica {
    pub shard_id: u32,
    pub peer_id: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateShardingKey {
    pub shard_key: ShardKey,
    pub shards_number: Option<u32>,
    pub replication_factor: Option<u32>,
    pub placement: Option<Vec<u64>>,
    /// Qdrant's `initial_state`: `Active` or `Initializing` (the default).
    pub initial_state: Option<ReplicaState>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DropShardingKey {
    pub shard_key: ShardKey,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartResharding {
    pub direction: ReshardingDirection,
    pub peer_id: Option<u64>,
    pub shard_key: Option<ShardKey>,
    /// Shoal's extension: the caller commits the stages itself (`commit_read_hash_ring`,
    /// `commit_write_hash_ring`, `finish_resharding`) instead of the node.
    #[serde(default)]
    pub manual: bool,
}

/// A resharding stage operation; takes no parameters (`{}`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

/// One operation per request, as in Qdrant.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ClusterOperationRequest {
    MoveShard(MoveShard),
    ReplicateShard(MoveShard),
    AbortTransfer(AbortTransfer),
    RestartTransfer(RestartTransfer),
    DropReplica(DropReplica),
    CreateShardingKey(CreateShardingKey),
    DropShardingKey(DropShardingKey),
    StartResharding(StartResharding),
    AbortResharding(Empty),
    CommitReadHashRing(Empty),
    CommitWriteHashRing(Empty),
    FinishResharding(Empty),
}

/// The transfer methods this node can run.
fn check_method(method: TransferMethod) -> Result<(), ApiError> {
    match method {
        TransferMethod::StreamRecords | TransferMethod::Snapshot | TransferMethod::WalDelta => {
            Ok(())
        }
        TransferMethod::ReshardingStreamRecords => Err(ApiError::bad_request(
            "Wrong input: `resharding_stream_records` is used by resharding, not by shard transfers",
        )),
    }
}

fn start(
    name: &str,
    req: &MoveShard,
    sync: bool,
    max_per_peer: u32,
) -> Result<ClusterOperation, ApiError> {
    let method = req.method.unwrap_or_default();
    check_method(method)?;
    if let Some(r) = req.rate_limit {
        if r.points_per_second == Some(0) || r.bytes_per_second == Some(0) {
            return Err(ApiError::unprocessable(
                "Validation error in JSON body: rate_limit.points_per_second and rate_limit.bytes_per_second must be at least 1",
            ));
        }
        if r.points_per_second.is_none() && r.bytes_per_second.is_none() {
            return Err(ApiError::unprocessable(
                "Validation error in JSON body: rate_limit needs points_per_second or bytes_per_second",
            ));
        }
    }
    Ok(ClusterOperation::StartTransfer {
        collection: name.to_string(),
        transfer: ShardTransfer {
            shard: ShardId(req.shard_id),
            to_shard: None,
            from: PeerId(req.from_peer_id),
            to: PeerId(req.to_peer_id),
            sync,
            method,
            destination_was: None,
            points_per_second: req.rate_limit.and_then(|r| r.points_per_second),
            bytes_per_second: req.rate_limit.and_then(|r| r.bytes_per_second),
            id: rand::random(),
            done: false,
        },
        max_per_peer: Some(max_per_peer),
        destination_must_be: None,
    })
}

pub async fn update(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
    started: Started,
    JsonBody(body): JsonBody<ClusterOperationRequest>,
) -> ApiResult<bool> {
    apply(&state.toc, &name, body).await?;
    Ok(ApiOk(true, started))
}

/// Checks one collection cluster operation and carries it out through consensus; shared by
/// the REST endpoint and the admin gRPC service.
pub async fn apply(
    toc: &TableOfContent,
    name: &str,
    body: ClusterOperationRequest,
) -> Result<(), ApiError> {
    let name = name.to_string();
    toc.get(&name)?;
    let max_per_peer = toc.env().max_transfers_per_peer;
    let ops = match body {
        ClusterOperationRequest::MoveShard(req) => vec![start(&name, &req, false, max_per_peer)?],
        ClusterOperationRequest::ReplicateShard(req) => {
            vec![start(&name, &req, true, max_per_peer)?]
        }
        ClusterOperationRequest::AbortTransfer(req) => vec![ClusterOperation::AbortTransfer {
            collection: name.clone(),
            shard: ShardId(req.shard_id),
            from: PeerId(req.from_peer_id),
            to: PeerId(req.to_peer_id),
            id: None,
        }],
        ClusterOperationRequest::RestartTransfer(req) => {
            check_method(req.method)?;
            let view = toc.env().metadata.view();
            let running = view
                .state
                .collections
                .get(&name)
                .and_then(|c| {
                    c.transfers.iter().find(|t| {
                        t.shard.0 == req.shard_id
                            && t.from.0 == req.from_peer_id
                            && t.to.0 == req.to_peer_id
                    })
                })
                .cloned()
                .ok_or_else(|| {
                    ApiError::not_found(format!(
                        "Not found: no transfer of shard {} from peer {} to peer {} is running",
                        req.shard_id, req.from_peer_id, req.to_peer_id
                    ))
                })?;
            let again = MoveShard {
                shard_id: req.shard_id,
                from_peer_id: req.from_peer_id,
                to_peer_id: req.to_peer_id,
                method: Some(req.method),
                rate_limit: (running.points_per_second.is_some()
                    || running.bytes_per_second.is_some())
                .then_some(RateLimit {
                    points_per_second: running.points_per_second,
                    bytes_per_second: running.bytes_per_second,
                }),
            };
            vec![
                ClusterOperation::AbortTransfer {
                    collection: name.clone(),
                    shard: running.shard,
                    from: running.from,
                    to: running.to,
                    // The transfer this restart was decided on, not one started since.
                    id: Some(running.id),
                },
                start(&name, &again, running.sync, max_per_peer)?,
            ]
        }
        ClusterOperationRequest::DropReplica(req) => vec![ClusterOperation::DropReplica {
            collection: name.clone(),
            shard: ShardId(req.shard_id),
            peer: PeerId(req.peer_id),
        }],
        ClusterOperationRequest::CreateShardingKey(req) => {
            if req.shards_number == Some(0) || req.replication_factor == Some(0) {
                return Err(ApiError::unprocessable(
                    "Validation error in JSON body: shards_number and replication_factor must be at least 1",
                ));
            }
            vec![ClusterOperation::CreateShardKey {
                collection: name.clone(),
                key: req.shard_key,
                shard_number: req.shards_number,
                replication_factor: req.replication_factor,
                placement: req
                    .placement
                    .map(|peers| peers.into_iter().map(PeerId).collect()),
                initial_state: req.initial_state,
            }]
        }
        ClusterOperationRequest::DropShardingKey(req) => vec![ClusterOperation::DropShardKey {
            collection: name.clone(),
            key: req.shard_key,
        }],
        ClusterOperationRequest::StartResharding(_) if toc.env().metadata.consensus().is_none() => {
            return Err(ApiError::bad_request(
                "Wrong input: resharding moves points between peers and needs cluster mode; start the node with a cluster address (see README, \"Cluster\")",
            ));
        }
        ClusterOperationRequest::StartResharding(req) => vec![ClusterOperation::StartResharding {
            collection: name.clone(),
            direction: req.direction,
            peer: req.peer_id.map(PeerId),
            shard_key: req.shard_key,
            manual: req.manual,
            // Tells this resharding's streams from those of any other (their checkpoints).
            id: rand::random(),
        }],
        ClusterOperationRequest::AbortResharding(_) => {
            vec![ClusterOperation::AbortResharding {
                collection: name.clone(),
                resharding: None,
            }]
        }
        ClusterOperationRequest::CommitReadHashRing(_) => {
            vec![ClusterOperation::CommitReadHashRing {
                collection: name.clone(),
                resharding: None,
            }]
        }
        ClusterOperationRequest::CommitWriteHashRing(_) => {
            vec![ClusterOperation::CommitWriteHashRing {
                collection: name.clone(),
                resharding: None,
            }]
        }
        ClusterOperationRequest::FinishResharding(_) => {
            // Finishing waits until every replica dropped the points that moved out.
            return crate::cluster::resharding::finish(toc, &name)
                .await
                .map_err(submit_error);
        }
    };
    for op in ops {
        toc.submit(op).await.map_err(submit_error)?;
    }
    Ok(())
}
