//! A local shard: WAL, segments, optimizer. Imports `index`, `storage` and `types`; never the
//! cluster or API layers.

pub mod clock;
pub mod local_shard;
pub mod maintenance;
pub mod operations;
pub mod segment;
pub mod snapshot;
