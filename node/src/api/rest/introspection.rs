//! Qdrant's introspection and operations endpoints: a collection's shard keys and
//! optimizations, this peer's and the cluster's telemetry, the issues registry, and recovering
//! this peer's Raft state.
//!
//! Everything here reads: the applied cluster state, the collections and their local shards
//! (their optimizer logs), the request metrics. The two writes are `DELETE /issues` (clears the
//! in-memory issue registry) and `POST /cluster/recover` (installs the leader's snapshot of the
//! cluster state through openraft). Nothing here changes a collection, a shard or a request.
//!
//! Reads that cover other peers (cluster telemetry, a collection's optimizations) ask them
//! through `PeerService` on the p2p port, each with a deadline; a peer that does not answer in
//! time is reported as unresponsive (telemetry) or left out (optimizations), never waited for.
//!
//! Every handler is cancel-safe: a dropped read leaves nothing behind, and `recover` says why
//! it is in its own module.

pub mod issues;
pub mod optimizations;
pub mod recover;
pub mod telemetry;

use std::hash::{Hash, Hasher};
use std::time::{Duration, SystemTime};

use axum::extract::State;
use serde::{Deserialize, Serialize};

use crate::api::rest::AppState;
use crate::api::rest::json_body::PathParams;
use crate::api::rest::response::{ApiOk, ApiResult, Started};
use crate::cluster::CollectionError;
use crate::cluster::toc::TableOfContent;
use crate::collection_config::ShardingMethod;
use crate::consensus::{ClusterStateView, ShardKey};

/// Qdrant's `ShardKeysResponse`: the keys of a custom-sharded collection; absent (`{}`) for
/// automatic sharding, as Qdrant answers.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct ShardKeysResponse {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard_keys: Option<Vec<ShardKeyDescription>>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct ShardKeyDescription {
    pub key: ShardKey,
}

/// The shard keys of `collection` in the applied cluster state, in the order of their first
/// shard (the order they were created in); `None` unless it is custom-sharded.
pub fn shard_keys_of(view: &ClusterStateView, collection: &str) -> Option<Vec<ShardKey>> {
    let meta = view.state.collections.get(collection)?;
    if meta.config.params.sharding_method != Some(ShardingMethod::Custom) {
        return None;
    }
    let mut keys: Vec<ShardKey> = Vec::new();
    for shard in meta.shards.values() {
        if let Some(key) = &shard.shard_key
            && !keys.contains(key)
        {
            keys.push(key.clone());
        }
    }
    Some(keys)
}

/// `GET /collections/{c}/shards`: Qdrant's list of shard keys. Aliases resolve; an unknown
/// collection is 404.
pub async fn shard_keys(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
    started: Started,
) -> ApiResult<ShardKeysResponse> {
    let collection = state.toc.get(&name)?;
    let view = state.metadata.view();
    if !view.state.collections.contains_key(collection.name()) {
        return Err(CollectionError::NotFound(name).into());
    }
    let shard_keys = shard_keys_of(&view, collection.name()).map(|keys| {
        keys.into_iter()
            .map(|key| ShardKeyDescription { key })
            .collect()
    });
    Ok(ApiOk(ShardKeysResponse { shard_keys }, started))
}

/// RFC 3339 with microseconds in UTC, as Qdrant writes its timestamps.
pub fn rfc3339(at: SystemTime) -> String {
    let since = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    let secs = i64::try_from(since.as_secs()).unwrap_or(i64::MAX);
    chrono::DateTime::from_timestamp(secs, since.subsec_nanos()).map_or_else(
        || "1970-01-01T00:00:00Z".to_string(),
        |t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
    )
}

/// A stable UUID for something Shoal numbers within a shard replica (a segment, an
/// optimization): Shoal's segments have numeric ids, Qdrant's answers carry UUIDs. The same
/// inputs give the same UUID on every call, so a client can follow an item across requests.
pub fn local_uuid(
    collection_uuid: u64,
    peer: u64,
    shard: u32,
    space: &str,
    number: u64,
) -> uuid::Uuid {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (collection_uuid, peer, shard, space).hash(&mut hasher);
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&hasher.finish().to_be_bytes());
    bytes[8..].copy_from_slice(&number.to_be_bytes());
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

/// A request to another peer's p2p service with a deadline and this peer's API key.
pub fn peer_request<T>(toc: &TableOfContent, message: T, timeout: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    if let Some(key) = &toc.env().api_key
        && let Ok(value) = key.parse()
    {
        request.metadata_mut().insert("api-key", value);
    }
    request
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_uuids_are_stable_and_distinct() {
        let a = local_uuid(7, 1, 0, "segment", 3);
        assert_eq!(a, local_uuid(7, 1, 0, "segment", 3));
        assert_ne!(a, local_uuid(7, 1, 0, "segment", 4));
        assert_ne!(a, local_uuid(7, 2, 0, "segment", 3));
        assert_ne!(a, local_uuid(7, 1, 0, "optimization", 3));
        assert_eq!(a.get_version_num(), 8);
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20.123000Z");
    }
}
