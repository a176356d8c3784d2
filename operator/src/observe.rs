//! Observed cluster state: the admin gRPC answers turned into the planners' plain values.
//!
//! This module owns the translation from the node's wire shapes (`shoal_proto::v1`) to
//! [`crate::plan`]'s types and to the status' [`TransferStatus`]. It is pure (no client, no
//! clock), so every rule — which shards a spec selects, which transfers belong to a shard,
//! which resharding stage the cluster is in — is unit-tested with plain values. It must not
//! decide anything: deciding is the planners' job.

use shoal_proto::v1 as pb;

use crate::crd::{ShardSelector, TransferStatus};
use crate::plan::{
    Direction, ObservedShard, Peer, PeerId, ReplicaState, ReshardingProgress, ReshardingStage,
    Transfer,
};

/// The method the nodes report for the transfers of a resharding.
const RESHARDING_METHOD: &str = "resharding_stream_records";

/// Why the observed state does not fit the spec (all of these are spec errors).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ObserveError {
    #[error("collection `{collection}` has no shard {shard} (it has {count} shards)")]
    UnknownShard {
        collection: String,
        shard: u32,
        count: usize,
    },
    #[error("collection `{collection}` has no shard with key `{key}`")]
    UnknownShardKey { collection: String, key: String },
    #[error("replica state `{0}` reported by the cluster is unknown to this operator version")]
    UnknownReplicaState(String),
}

/// The cluster's peers, as the planners know them.
pub fn peers(info: &pb::ClusterInfoResponse) -> Vec<Peer> {
    info.peers
        .iter()
        .map(|p| Peer {
            id: PeerId(p.id),
            name: p.name.clone(),
        })
        .collect()
}

pub fn replica_state(s: &str) -> Result<ReplicaState, ObserveError> {
    Ok(match s {
        "Initializing" => ReplicaState::Initializing,
        "Active" => ReplicaState::Active,
        "Listener" => ReplicaState::Listener,
        "Partial" => ReplicaState::Partial,
        "Recovery" => ReplicaState::Recovery,
        "Resharding" => ReplicaState::Resharding,
        "ReshardingScaleDown" => ReplicaState::ReshardingScaleDown,
        "Dead" => ReplicaState::Dead,
        other => return Err(ObserveError::UnknownReplicaState(other.to_owned())),
    })
}

fn key_matches(key: Option<&pb::ShardKey>, wanted: &str) -> bool {
    match key.and_then(|k| k.key.as_ref()) {
        Some(pb::shard_key::Key::Keyword(k)) => k == wanted,
        Some(pb::shard_key::Key::Number(n)) => n.to_string() == wanted,
        None => false,
    }
}

/// The shard ids a `ShardPlacement` is about, ascending. A shard key selects every shard of
/// that key.
pub fn selected_shards(
    info: &pb::CollectionInfoResponse,
    selector: &ShardSelector,
) -> Result<Vec<u32>, ObserveError> {
    let mut ids: Vec<u32> = match selector {
        ShardSelector::Id { shard_id } => {
            if !info.shards.iter().any(|s| s.shard_id == *shard_id) {
                return Err(ObserveError::UnknownShard {
                    collection: info.collection.clone(),
                    shard: *shard_id,
                    count: info.shards.len(),
                });
            }
            vec![*shard_id]
        }
        ShardSelector::Key { shard_key } => {
            let ids: Vec<u32> = info
                .shards
                .iter()
                .filter(|s| key_matches(s.shard_key.as_ref(), shard_key))
                .map(|s| s.shard_id)
                .collect();
            if ids.is_empty() {
                return Err(ObserveError::UnknownShardKey {
                    collection: info.collection.clone(),
                    key: shard_key.clone(),
                });
            }
            ids
        }
    };
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

/// Transfers that copy shard `shard` between replicas of that same shard. Resharding
/// transfers (to another shard) are not placement transfers.
fn shard_transfers(
    info: &pb::CollectionInfoResponse,
    shard: u32,
) -> impl Iterator<Item = &pb::Transfer> {
    info.transfers.iter().filter(move |t| {
        t.shard_id == shard
            && t.to_shard_id.is_none_or(|to| to == shard)
            && t.method != RESHARDING_METHOD
    })
}

/// One shard's replicas and running transfers.
pub fn observed_shard(
    info: &pb::CollectionInfoResponse,
    shard: u32,
) -> Result<ObservedShard, ObserveError> {
    let mut observed = ObservedShard::default();
    for s in info.shards.iter().filter(|s| s.shard_id == shard) {
        for r in &s.replicas {
            observed
                .replicas
                .insert(PeerId(r.peer_id), replica_state(&r.state)?);
        }
    }
    observed.transfers = shard_transfers(info, shard)
        .map(|t| Transfer {
            from: PeerId(t.from_peer_id),
            to: PeerId(t.to_peer_id),
        })
        .collect();
    Ok(observed)
}

fn peer_name(id: u64, peers: &[Peer]) -> String {
    peers
        .iter()
        .find(|p| p.id.0 == id)
        .map_or_else(|| id.to_string(), |p| p.name.clone())
}

/// Progress of every running placement transfer of `shard`, for `status.transfers`.
pub fn transfer_statuses(
    info: &pb::CollectionInfoResponse,
    shard: u32,
    peers: &[Peer],
) -> Vec<TransferStatus> {
    shard_transfers(info, shard)
        .map(|t| transfer_status(t, peers))
        .collect()
}

pub fn transfer_status(t: &pb::Transfer, peers: &[Peer]) -> TransferStatus {
    let progress = t.progress.clone().unwrap_or_default();
    TransferStatus {
        shard: t.shard_id,
        from: peer_name(t.from_peer_id, peers),
        to: peer_name(t.to_peer_id, peers),
        points_done: progress.points_done,
        points_total: progress.points_total,
        // Saturating float-to-int casts; the node reports 0..=100.
        percent: progress.percent.clamp(0.0, 100.0) as u8,
        eta_seconds: progress
            .eta_seconds
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(|s| s.ceil() as u64),
    }
}

/// The shards a `Resharding` counts: all of them, or those of one shard key.
pub fn shard_count(info: &pb::CollectionInfoResponse, shard_key: Option<&str>) -> u32 {
    let count = info
        .shards
        .iter()
        .filter(|s| shard_key.is_none_or(|k| key_matches(s.shard_key.as_ref(), k)))
        .count();
    u32::try_from(count).unwrap_or(u32::MAX)
}

/// The running resharding, if any. `migrating_points` with no resharding transfer left
/// means the points have moved and reads may be committed.
pub fn resharding_progress(
    info: &pb::CollectionInfoResponse,
) -> Result<Option<ReshardingProgress>, String> {
    let Some(r) = &info.resharding else {
        return Ok(None);
    };
    let direction = match r.direction.as_str() {
        "up" => Direction::Up,
        "down" => Direction::Down,
        other => return Err(format!("unknown resharding direction `{other}`")),
    };
    let stage = match r.stage.as_str() {
        "migrating_points" => {
            if info.transfers.iter().any(|t| t.method == RESHARDING_METHOD) {
                ReshardingStage::MigratingPoints
            } else {
                ReshardingStage::PointsMigrated
            }
        }
        "read_hash_ring_committed" => ReshardingStage::ReadCommitted,
        "write_hash_ring_committed" => ReshardingStage::WriteCommitted,
        other => return Err(format!("unknown resharding stage `{other}`")),
    };
    Ok(Some(ReshardingProgress { direction, stage }))
}

/// Progress of the resharding transfers, for `status.transfers`.
pub fn resharding_transfers(
    info: &pb::CollectionInfoResponse,
    peers: &[Peer],
) -> Vec<TransferStatus> {
    info.transfers
        .iter()
        .filter(|t| t.method == RESHARDING_METHOD)
        .map(|t| transfer_status(t, peers))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica(peer: u64, state: &str) -> pb::Replica {
        pb::Replica {
            peer_id: peer,
            state: state.into(),
        }
    }

    fn keyword(k: &str) -> Option<pb::ShardKey> {
        Some(pb::ShardKey {
            key: Some(pb::shard_key::Key::Keyword(k.into())),
        })
    }

    fn info() -> pb::CollectionInfoResponse {
        pb::CollectionInfoResponse {
            collection: "docs".into(),
            replication_factor: 1,
            custom_sharding: false,
            shards: vec![
                pb::Shard {
                    shard_id: 0,
                    shard_key: None,
                    replicas: vec![replica(10, "Active"), replica(12, "Partial")],
                },
                pb::Shard {
                    shard_id: 1,
                    shard_key: None,
                    replicas: vec![replica(11, "Active")],
                },
            ],
            transfers: vec![
                pb::Transfer {
                    shard_id: 0,
                    from_peer_id: 10,
                    to_peer_id: 12,
                    sync: true,
                    method: "stream_records".into(),
                    progress: Some(pb::TransferProgress {
                        points_done: 300,
                        points_total: 1000,
                        percent: 30.4,
                        eta_seconds: Some(6.2),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                pb::Transfer {
                    shard_id: 1,
                    to_shard_id: Some(2),
                    from_peer_id: 11,
                    to_peer_id: 10,
                    method: RESHARDING_METHOD.into(),
                    ..Default::default()
                },
            ],
            resharding: None,
        }
    }

    fn cluster_peers() -> Vec<Peer> {
        (10..13)
            .map(|i| Peer {
                id: PeerId(i),
                name: format!("peer-{}", i - 10),
            })
            .collect()
    }

    #[test]
    fn shard_replicas_and_its_transfers_only() {
        let observed = observed_shard(&info(), 0).unwrap();
        assert_eq!(observed.replicas[&PeerId(12)], ReplicaState::Partial);
        assert_eq!(
            observed.transfers,
            vec![Transfer {
                from: PeerId(10),
                to: PeerId(12)
            }]
        );
        // The resharding transfer out of shard 1 is not a placement transfer of shard 1.
        assert!(observed_shard(&info(), 1).unwrap().transfers.is_empty());
    }

    #[test]
    fn transfer_progress_names_peers_and_rounds() {
        let t = transfer_statuses(&info(), 0, &cluster_peers());
        assert_eq!(
            t,
            vec![TransferStatus {
                shard: 0,
                from: "peer-0".into(),
                to: "peer-2".into(),
                points_done: 300,
                points_total: 1000,
                percent: 30,
                eta_seconds: Some(7),
            }]
        );
    }

    #[test]
    fn selectors_resolve_or_explain() {
        let mut i = info();
        assert_eq!(
            selected_shards(&i, &ShardSelector::Id { shard_id: 1 }),
            Ok(vec![1])
        );
        let err = selected_shards(&i, &ShardSelector::Id { shard_id: 7 }).unwrap_err();
        assert_eq!(
            err.to_string(),
            "collection `docs` has no shard 7 (it has 2 shards)"
        );
        i.shards[0].shard_key = keyword("tenant-a");
        i.shards[1].shard_key = keyword("tenant-a");
        let key = |k: &str| ShardSelector::Key {
            shard_key: k.into(),
        };
        assert_eq!(selected_shards(&i, &key("tenant-a")), Ok(vec![0, 1]));
        assert!(matches!(
            selected_shards(&i, &key("tenant-b")),
            Err(ObserveError::UnknownShardKey { .. })
        ));
        assert_eq!(shard_count(&i, Some("tenant-a")), 2);
        assert_eq!(shard_count(&i, Some("tenant-b")), 0);
        assert_eq!(shard_count(&i, None), 2);
    }

    #[test]
    fn unknown_replica_state_is_an_error_not_a_guess() {
        let mut i = info();
        i.shards[1].replicas[0].state = "Zombie".into();
        assert_eq!(
            observed_shard(&i, 1),
            Err(ObserveError::UnknownReplicaState("Zombie".into()))
        );
    }

    #[test]
    fn resharding_stage_from_cluster() {
        let mut i = info();
        assert_eq!(resharding_progress(&i), Ok(None));
        i.resharding = Some(pb::Resharding {
            direction: "up".into(),
            shard_id: 2,
            peer_id: 10,
            shard_key: None,
            stage: "migrating_points".into(),
            ..Default::default()
        });
        let stage = |i: &pb::CollectionInfoResponse| resharding_progress(i).unwrap().unwrap().stage;
        assert_eq!(stage(&i), ReshardingStage::MigratingPoints);
        assert_eq!(resharding_transfers(&i, &cluster_peers()).len(), 1);
        i.transfers.retain(|t| t.method != RESHARDING_METHOD);
        assert_eq!(stage(&i), ReshardingStage::PointsMigrated);
        i.resharding.as_mut().unwrap().stage = "write_hash_ring_committed".into();
        assert_eq!(stage(&i), ReshardingStage::WriteCommitted);
        i.resharding.as_mut().unwrap().stage = "sideways".into();
        assert!(resharding_progress(&i).is_err());
    }
}
