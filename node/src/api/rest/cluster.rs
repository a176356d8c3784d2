//! `/cluster`: this peer's view of the cluster, and removing peers.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::api::rest::AppState;
use crate::api::rest::json_body::{PathParams, QueryParams};
use crate::api::rest::response::{ApiError, ApiOk, ApiResult, Started};
use crate::cluster::CollectionError;
use crate::cluster::toc::SubmitError;
use crate::consensus::raft_node::ConsensusError;
use crate::consensus::{ClusterError, ClusterOperation, PeerId};

#[derive(Debug, Serialize)]
pub struct PeerInfoOut {
    pub uri: String,
    pub name: String,
}

pub async fn info(State(state): State<AppState>, started: Started) -> ApiResult<Value> {
    let Some(node) = &state.consensus else {
        return Ok(ApiOk(json!({ "status": "disabled" }), started));
    };
    let raft = node.raft_status();
    let applied = node.applied();
    let view = applied.borrow().clone();
    // Peers known to cluster state, plus Raft members not registered yet.
    let mut peers: BTreeMap<String, PeerInfoOut> = raft
        .members
        .iter()
        .map(|(id, n)| {
            (
                id.to_string(),
                PeerInfoOut {
                    uri: n.uri.clone(),
                    name: n.name.clone(),
                },
            )
        })
        .collect();
    for (id, p) in &view.state.peers {
        peers.insert(
            id.0.to_string(),
            PeerInfoOut {
                uri: p.uri.clone(),
                name: p.name.clone(),
            },
        );
    }
    Ok(ApiOk(
        json!({
            "status": "enabled",
            "peer_id": node.peer_id.0,
            "peers": peers,
            "raft_info": {
                "term": raft.term,
                "commit": raft.commit,
                "pending_operations": raft.last_log_index.saturating_sub(raft.commit),
                "leader": raft.leader,
                "role": raft.role,
                "is_voter": raft.is_voter,
            },
            "consensus_thread_status": { "consensus_thread_status": "working" },
            "message_send_failures": {},
        }),
        started,
    ))
}

#[derive(Debug, Default, Deserialize)]
pub struct RemovePeerParams {
    pub force: Option<bool>,
    pub timeout: Option<u64>,
}

/// Maps a rejected cluster operation to a status code: unknown things are 404, conflicts with
/// the current state (worth retrying later) 409, the rest 400.
pub fn cluster_error(e: ClusterError) -> ApiError {
    let status = match &e {
        ClusterError::UnknownPeer { .. }
        | ClusterError::UnknownCollection { .. }
        | ClusterError::UnknownAlias { .. }
        | ClusterError::UnknownShard { .. }
        | ClusterError::UnknownShardKey { .. } => StatusCode::NOT_FOUND,
        ClusterError::CollectionExists { .. }
        | ClusterError::AliasExists { .. }
        | ClusterError::ShardKeyExists { .. }
        | ClusterError::TransferExists { .. }
        | ClusterError::TransferLimit { .. }
        | ClusterError::ReplicaInTransfer { .. }
        | ClusterError::ShardInResharding { .. }
        | ClusterError::PeerDrivesResharding { .. }
        | ClusterError::ReplicaStateMismatch { .. }
        | ClusterError::ReshardingRunning { .. }
        | ClusterError::ReshardingStageMismatch { .. }
        | ClusterError::ReshardingPointsMoving { .. }
        | ClusterError::ReshardingTooFarToAbort { .. }
        | ClusterError::StaleDecision { .. } => StatusCode::CONFLICT,
        ClusterError::NoResharding { .. } => StatusCode::NOT_FOUND,
        _ => StatusCode::BAD_REQUEST,
    };
    ApiError::new(status, format!("Wrong input: {e}"))
}

/// Maps a failed metadata operation to a status code and a message.
pub fn submit_error(e: SubmitError) -> ApiError {
    match e {
        SubmitError::Rejected(ClusterError::CollectionExists { collection }) => {
            CollectionError::AlreadyExists(collection).into()
        }
        SubmitError::Rejected(e) => cluster_error(e),
        SubmitError::Consensus(e) => consensus_error(e),
        e @ (SubmitError::NotReconciled(_) | SubmitError::Waiting(_)) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("Service internal error: {e}"),
        ),
    }
}

pub fn consensus_error(e: ConsensusError) -> ApiError {
    let status = match e {
        ConsensusError::NoLeader | ConsensusError::Forward { .. } => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    ApiError::new(status, format!("Service internal error: {e}"))
}

pub async fn remove_peer(
    State(state): State<AppState>,
    PathParams(peer_id): PathParams<u64>,
    QueryParams(params): QueryParams<RemovePeerParams>,
    started: Started,
) -> ApiResult<bool> {
    let Some(node) = &state.consensus else {
        return Err(ApiError::bad_request(
            "Wrong input: this node runs without a cluster (start it with --uri)",
        ));
    };
    let op = ClusterOperation::RemovePeer {
        peer: PeerId(peer_id),
        force: params.force.unwrap_or(false),
    };
    let (result, _) = node.propose(op).await.map_err(consensus_error)?;
    result.map_err(cluster_error)?;
    node.remove_member(peer_id, Duration::from_secs(params.timeout.unwrap_or(30)))
        .await
        .map_err(consensus_error)?;
    Ok(ApiOk(true, started))
}
