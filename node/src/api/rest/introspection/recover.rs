//! `POST /cluster/recover`: Qdrant's "tries to recover current peer Raft state", which asks
//! the leader for a snapshot of the cluster state.
//!
//! Openraft has no request a follower sends for a snapshot (its leader sends one only to a
//! follower whose missing entries it has already purged), but it installs a snapshot handed
//! to it: [`openraft::Raft::install_full_snapshot`]. So this peer asks the leader, through
//! `RaftService.RecoverySnapshot`, for a snapshot built now, and installs it under the
//! leader's vote. Openraft installs it only when it is newer than what this peer has
//! committed (a newer one replaces the state machine and the log it covers); otherwise this
//! peer already holds everything the snapshot holds. Either way the answer is `true` only once
//! this peer has applied the cluster state up to the snapshot, and the reconcile loop then
//! brings the local collections in line with it, as after any applied change.
//!
//! Cancel-safe: a request dropped before the install changes nothing; once openraft has the
//! snapshot it finishes the install on its own.

use std::io::Cursor;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use shoal_proto::v1::RecoverySnapshotRequest;
use shoal_proto::v1::raft_service_client::RaftServiceClient;

use crate::api::rest::AppState;
use crate::api::rest::cluster::consensus_error;
use crate::api::rest::introspection::peer_request;
use crate::api::rest::response::{ApiError, ApiOk, ApiResult, Started};
use crate::consensus::PeerNode;
use crate::consensus::raft_node::ConsensusError;

/// How long the leader may take to build and send its snapshot.
const SNAPSHOT_PATIENCE: Duration = Duration::from_secs(30);
/// How long this peer may take to apply the installed snapshot.
const APPLY_PATIENCE: Duration = Duration::from_secs(10);

fn unavailable(message: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("Service internal error: {message}"),
    )
}

/// `POST /cluster/recover`.
pub async fn recover(State(state): State<AppState>, started: Started) -> ApiResult<bool> {
    let Some(node) = state.metadata.consensus().cloned() else {
        return Err(ApiError::bad_request(
            "Wrong input: this node runs without a cluster (start it with --uri); there is no Raft state to recover",
        ));
    };
    let Some((leader, leader_node)) = node.leader() else {
        return Err(consensus_error(ConsensusError::NoLeader));
    };
    if leader == node.peer_id.0 {
        return Err(ApiError::bad_request(format!(
            "Bad request: peer {leader} is the Raft leader: the other peers recover from its state, it has none to recover from; call this on the peer whose state is behind"
        )));
    }
    let Some(PeerNode { uri, .. }) = leader_node else {
        return Err(unavailable(format!(
            "the address of the leader (peer {leader}) is not known yet; retry shortly"
        )));
    };
    let channel = state.toc.env().channel(&uri)?;
    let answer = RaftServiceClient::new(channel)
        .recovery_snapshot(peer_request(
            &state.toc,
            RecoverySnapshotRequest {
                peer_id: node.peer_id.0,
            },
            SNAPSHOT_PATIENCE,
        ))
        .await
        .map_err(|s| {
            unavailable(format!(
                "the leader (peer {leader} at {uri}) did not send a snapshot: {}",
                s.message()
            ))
        })?
        .into_inner();
    let malformed = |e: serde_json::Error| {
        ApiError::internal(format!("the leader's snapshot does not decode: {e}"))
    };
    let vote: openraft::Vote<u64> = serde_json::from_slice(&answer.vote_json).map_err(malformed)?;
    let meta: openraft::SnapshotMeta<u64, PeerNode> =
        serde_json::from_slice(&answer.meta_json).map_err(malformed)?;
    let Some(index) = meta.last_log_id.map(|l| l.index) else {
        return Err(unavailable("the leader has applied nothing yet"));
    };
    let before = node.raft_status().commit;
    let snapshot = openraft::Snapshot {
        meta,
        snapshot: Box::new(Cursor::new(answer.data)),
    };
    node.raft
        .install_full_snapshot(vote, snapshot)
        .await
        .map_err(|e| ApiError::internal(format!("Service internal error: Raft: {e}")))?;
    node.wait_applied(index, APPLY_PATIENCE)
        .await
        .map_err(|e| {
            unavailable(format!(
                "{e}; the snapshot was not installed (the vote may have changed), retry"
            ))
        })?;
    tracing::info!(
        leader,
        snapshot_index = index,
        applied_before = before,
        installed = before < index,
        "recovered the Raft state from the leader's snapshot"
    );
    Ok(ApiOk(true, started))
}
