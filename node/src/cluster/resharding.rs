//! Resharding on this peer: the driver that advances a resharding's stages once its points
//! have moved, finishing (only after every replica dropped the points that moved out), and
//! copying a shard that a resharding added up to the collection's replication factor.
//!
//! The stages themselves are cluster-state operations (see `consensus::state`); the streams
//! that move points are transfers (see `transfer`); the routing by read and write rings and the
//! ownership filter of reads are in `collection`. Everything here is level-triggered: it looks
//! at the applied state on every sync, so a restarted peer picks up where the state is.

use std::sync::Arc;

use crate::cluster::metadata::Metadata;
use crate::cluster::toc::{SubmitError, TableOfContent};
use crate::cluster::transfer::{ProgressReport, TransferProgressEntry, Transfers};
use crate::consensus::{
    ClusterError, ClusterOperation, ClusterStateView, CollectionMeta, ReplicaState,
    ReshardingStage, ShardTransfer, TransferMethod,
};

/// Advances, in the background, every resharding that this peer drives and that is not gated
/// by hand: reads switch once every point has moved, writes right after, and the resharding
/// finishes once every replica cleaned up.
pub fn drive(transfers: &Arc<Transfers>, toc: &Arc<TableOfContent>, view: &ClusterStateView) {
    let this_peer = toc.env().this_peer();
    for (name, meta) in &view.state.collections {
        let Some(r) = &meta.resharding else {
            continue;
        };
        if r.peer != this_peer || r.manual {
            continue;
        }
        let op = match r.stage {
            ReshardingStage::MigratingPoints => {
                let moved = meta
                    .transfers
                    .iter()
                    .filter(|t| t.to_shard.is_some())
                    .all(|t| t.done);
                if !moved {
                    continue;
                }
                Some(ClusterOperation::CommitReadHashRing {
                    collection: name.clone(),
                    resharding: Some(r.id),
                })
            }
            ReshardingStage::ReadHashRingCommitted => Some(ClusterOperation::CommitWriteHashRing {
                collection: name.clone(),
                resharding: Some(r.id),
            }),
            ReshardingStage::WriteHashRingCommitted => None,
        };
        if !transfers.driving.lock().insert(name.clone()) {
            continue;
        }
        let (transfers, toc, name) = (Arc::clone(transfers), Arc::clone(toc), name.clone());
        tokio::spawn(async move {
            let stage = match &op {
                Some(ClusterOperation::CommitReadHashRing { .. }) => "commit the read ring",
                Some(_) => "commit the write ring",
                None => "finish",
            };
            let result = match op {
                Some(op) => toc.submit(op).await.map(|_| ()),
                None => finish(&toc, &name).await,
            };
            match result {
                Ok(()) => tracing::info!(collection = %name, stage, "resharding advanced"),
                Err(e) => {
                    tracing::info!(collection = %name, stage, error = %e, "resharding cannot advance yet; retrying")
                }
            }
            transfers.driving.lock().remove(&name);
        });
    }
}

/// Finishes the resharding of `name`, whose writes use the new ring, once every peer holding a
/// replica of its shards (except `Dead` ones, which are rebuilt from active ones) has
/// reconciled that stage, which includes deleting the points that moved out.
pub async fn finish(toc: &TableOfContent, name: &str) -> Result<(), SubmitError> {
    let metadata = &toc.env().metadata;
    let view = metadata.view();
    let meta = view
        .state
        .collections
        .get(name)
        .ok_or_else(|| ClusterError::UnknownCollection {
            collection: name.to_string(),
        })?;
    let r = meta
        .resharding
        .as_ref()
        .ok_or_else(|| ClusterError::NoResharding {
            collection: name.to_string(),
        })?;
    if r.stage != ReshardingStage::WriteHashRingCommitted {
        return Err(ClusterError::ReshardingStageMismatch {
            collection: name.to_string(),
            expected: ReshardingStage::WriteHashRingCommitted,
            actual: r.stage,
        }
        .into());
    }
    let resharding = r.id;
    let index = view.applied_index().unwrap_or(0);
    if !toc
        .wait_reconciled(index, Metadata::PEER_APPLY_PATIENCE)
        .await
    {
        return Err(SubmitError::NotReconciled(index));
    }
    let this_peer = metadata.peer_id();
    let holders: std::collections::BTreeSet<_> = meta
        .shards
        .values()
        .filter(|s| s.shard_key == r.shard_key)
        .flat_map(|s| s.replicas.iter())
        .filter(|(p, state)| **p != this_peer && **state != ReplicaState::Dead)
        .map(|(p, _)| *p)
        .collect();
    for peer in holders {
        let uri = view
            .state
            .peers
            .get(&peer)
            .map(|p| p.uri.clone())
            .unwrap_or_default();
        if !toc.await_peer(&uri, index).await {
            return Err(SubmitError::Waiting(format!(
                "peer {peer} has not yet dropped the points that moved out of its replicas of `{name}`; the resharding finishes once it has"
            )));
        }
    }
    // Fenced on the resharding decided on: another one started meanwhile is not finished.
    toc.submit(ClusterOperation::FinishResharding {
        collection: name.to_string(),
        resharding: Some(resharding),
    })
    .await
    .map(|_| ())
}

/// Copies each shard that a resharding added, one replica at a time, until it has as many
/// active replicas as the collection's replication factor. The peer with the lowest id among
/// its active replicas proposes the copy, to the least loaded peer without one.
pub async fn replicate_new_shards(toc: &Arc<TableOfContent>, view: &ClusterStateView) {
    let env = toc.env();
    let this_peer = env.this_peer();
    let load = view.state.replicas_per_peer();
    for (name, meta) in &view.state.collections {
        if meta.resharding.is_some() {
            continue;
        }
        for shard in &meta.replicating {
            let Some(replicas) = meta.shards.get(shard) else {
                continue;
            };
            let first_active = replicas
                .replicas
                .iter()
                .find(|(_, s)| **s == ReplicaState::Active)
                .map(|(p, _)| *p);
            if first_active != Some(this_peer) || meta.transfers.iter().any(|t| t.shard == *shard) {
                continue;
            }
            let Some(to) = load
                .iter()
                .filter(|(p, _)| !replicas.replicas.contains_key(p))
                .min_by_key(|(_, n)| **n)
                .map(|(p, _)| *p)
            else {
                continue;
            };
            let op = ClusterOperation::StartTransfer {
                collection: name.clone(),
                transfer: ShardTransfer {
                    shard: *shard,
                    to_shard: None,
                    from: this_peer,
                    to,
                    sync: true,
                    method: TransferMethod::StreamRecords,
                    destination_was: None,
                    points_per_second: None,
                    bytes_per_second: None,
                    id: rand::random(),
                    done: false,
                },
                max_per_peer: Some(env.max_transfers_per_peer),
                destination_must_be: None,
            };
            match env.metadata.propose(op).await {
                Ok((Ok(_), _)) => {
                    tracing::info!(collection = %name, shard = %shard, to = %to, "copying a new shard to reach the replication factor")
                }
                Ok((Err(e), _)) => {
                    tracing::debug!(collection = %name, shard = %shard, error = %e, "new shard not copied yet")
                }
                Err(e) => {
                    tracing::debug!(collection = %name, shard = %shard, error = %e, "new shard copy not proposed")
                }
            }
        }
    }
}

/// The progress of the resharding of `meta`, summed over its point streams: points moved and
/// to move, rate and an estimate of the rest. The stage says whether every stream is done, from
/// the cluster state (a stream that sent its last point may not have reported it yet). `None`
/// when no stream reported.
pub fn progress(
    meta: &CollectionMeta,
    entries: &[TransferProgressEntry],
) -> Option<ProgressReport> {
    let streams: Vec<&ProgressReport> = entries
        .iter()
        .filter(|e| e.to_shard_id.is_some())
        .map(|e| &e.progress)
        .collect();
    if streams.is_empty() {
        return None;
    }
    let done: u64 = streams.iter().map(|p| p.points_done).sum();
    let total: u64 = streams
        .iter()
        .map(|p| p.points_total)
        .sum::<u64>()
        .max(done);
    let rate: f64 = streams.iter().map(|p| p.points_per_second).sum();
    let streaming = meta
        .transfers
        .iter()
        .any(|t| t.to_shard.is_some() && !t.done);
    Some(ProgressReport {
        stage: if streaming {
            "migrating points".into()
        } else {
            "points migrated; forwarding updates".into()
        },
        points_done: done,
        points_total: total,
        percent: if total == 0 {
            100.0
        } else {
            (done as f64 * 100.0 / total as f64).min(100.0)
        },
        bytes: streams.iter().map(|p| p.bytes).sum(),
        points_per_second: rate,
        eta_seconds: (rate > 0.0).then(|| (total - done) as f64 / rate),
        elapsed_seconds: streams
            .iter()
            .map(|p| p.elapsed_seconds)
            .fold(0.0, f64::max),
    })
}
