//! Consensus on cluster metadata with openraft.
//!
//! This module owns the replicated [`state::ClusterState`] and its operations, the openraft type
//! configuration, the durable Raft log ([`log_store::LogStore`]) and the state machine with its
//! snapshots ([`state_machine::StateMachineStore`]), all kept in one consensus directory. It does
//! not own the Raft network or the reconcile loop that turns the applied state into local shards
//! and transfers; those live above it (`cluster`) and only read the applied state through
//! [`state_machine::StateMachineStore::subscribe`].
//!
//! Point data never goes through here, only metadata.

pub mod log_store;
pub mod network;
pub mod raft_node;
pub mod state;
pub mod state_machine;
pub mod type_config;

#[cfg(test)]
mod store_tests;

use std::path::Path;

pub use log_store::LogStore;
pub use state::{
    AliasAction, ClusterError, ClusterOperation, ClusterResponse, ClusterState, CollectionMeta,
    NewVector, PeerId, PeerInfo, ReplicaState, ReshardingDirection, ReshardingStage,
    ReshardingState, ShardId, ShardKey, ShardMeta, ShardTransfer, TransferMethod,
};
pub use state_machine::{ClusterStateView, StateMachineStore, wait_for_applied};
pub use type_config::{ClusterResult, PeerNode, TypeConfig};

/// Opens (or creates) both Raft stores in the consensus directory `dir`. Blocking; call it at
/// startup, before `openraft::Raft::new`.
#[allow(clippy::result_large_err)] // openraft's error type, as the stores' trait methods return
pub fn open_stores(dir: &Path) -> Result<(LogStore, StateMachineStore), type_config::StorageError> {
    Ok((LogStore::open(dir)?, StateMachineStore::open(dir)?))
}
