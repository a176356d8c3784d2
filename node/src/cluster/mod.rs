//! Collections and their shards on this peer: creating, loading and dropping collections,
//! routing points to shards, fanning reads out and merging them. Imports `shard` and below.

pub mod collection;
pub mod hash_ring;
pub mod metadata;
pub mod remote_shard;
pub mod resharding;
pub mod shard_requests;
pub mod snapshots;
pub mod toc;
pub mod transfer;

use crate::shard::local_shard::ShardError;

/// Errors of the collection layer. The API maps each variant to one status code.
#[derive(Debug, thiserror::Error)]
pub enum CollectionError {
    #[error("Collection `{0}` doesn't exist!")]
    NotFound(String),
    #[error("Collection `{0}` already exists!")]
    AlreadyExists(String),
    #[error("No point with id {0} found")]
    PointNotFound(String),
    #[error("Wrong input: {0}")]
    BadInput(String),
    #[error("Shard error: {0}")]
    Shard(#[from] ShardError),
    #[error("Storage error: {0}")]
    Storage(String),
    /// A replica or peer could not be reached or did not answer; the request may succeed on
    /// another replica or later.
    #[error("Service unavailable: {0}")]
    Unavailable(String),
    /// The replica no longer owns a point the update names: a resharding moved its writes to
    /// another shard. The sender routes again by a newer layout.
    #[error("Points moved: {0}")]
    Moved(String),
    /// The replica applied an update but could not pass it on to a resharding's destination:
    /// the update must not be acknowledged.
    #[error("Update not passed on: {0}")]
    ForwardFailed(String),
    /// The replica has applied a newer layout of the shard than the one the update was routed
    /// by; nothing changed. The sender routes again by a newer layout.
    #[error("Routed by an old layout: {0}")]
    StaleLayout(String),
    /// A transfer's copy (a stream batch, a recovery step, or what a resharding passes on)
    /// reached a peer whose applied cluster state no longer runs that transfer; nothing
    /// changed. See `shard_requests::StreamFence`.
    #[error("Copy of an ended transfer: {0}")]
    StaleTransfer(String),
}

impl CollectionError {
    pub fn storage(e: impl std::fmt::Display) -> CollectionError {
        CollectionError::Storage(e.to_string())
    }
}
