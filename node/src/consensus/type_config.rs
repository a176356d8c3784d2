//! The openraft type configuration of the cluster-metadata Raft group: what a log entry carries
//! (a [`ClusterOperation`]), what applying it answers (a [`ClusterResult`]), and how a member is
//! addressed ([`PeerNode`]). Nothing here does I/O.

use std::fmt;
use std::io::Cursor;

use serde::{Deserialize, Serialize};

use super::state::{ClusterError, ClusterOperation, ClusterResponse};

/// What applying one log entry answers to its proposer. A rejected operation is still a
/// committed entry, so the rejection travels back as data, not as a storage error.
pub type ClusterResult = Result<ClusterResponse, ClusterError>;

/// The Raft node id; the same number as the peer's [`super::state::PeerId`].
pub type NodeId = u64;

/// How Raft reaches a member of the group.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerNode {
    /// The peer's internal (gRPC) API, e.g. `http://shoal-1.shoal:6335`.
    pub uri: String,
    pub name: String,
}

impl fmt::Display for PeerNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name, self.uri)
    }
}

openraft::declare_raft_types!(
    /// The Raft type configuration of Shoal's cluster metadata.
    pub TypeConfig:
        D = ClusterOperation,
        R = ClusterResult,
        NodeId = NodeId,
        Node = PeerNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A log entry of this Raft group.
pub type Entry = openraft::Entry<TypeConfig>;
/// A log id of this Raft group.
pub type LogId = openraft::LogId<NodeId>;
/// Openraft's storage error for this group.
pub type StorageError = openraft::StorageError<NodeId>;
