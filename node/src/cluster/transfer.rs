//! Shard transfers, the sending side, and automatic recovery.
//!
//! Every peer runs [`Transfers::sync`] after each reconcile pass (and on a timer). It starts a
//! task for every registered transfer whose source is this peer, cancels the tasks of
//! transfers that left the cluster state (aborted, or cancelled because a replica failed), and
//! asks for a transfer to every `Dead` replica of this peer from an active one.
//!
//! `stream_records`: the task registers an [`Outgoing`] on the source collection, so that from
//! then on every update applied to the source replica is forwarded to the destination in the
//! source's order; it clears the destination, then streams every point in id order, in
//! batches. A batch is read and sent while holding the same order lock as forwarded updates,
//! so the destination sees one serial history: an update either reached the source before the
//! batch was read (and the batch carries its result) or is forwarded after the batch. Once the
//! last batch is acknowledged it proposes `FinishTransfer` and keeps forwarding until every
//! peer has applied the finish (a peer still routing by the old layout writes only to the
//! source). Any error proposes `AbortTransfer`, which puts the destination back as it was.
//!
//! Resuming: after every acknowledged batch the sender writes a checkpoint beside the source
//! replica (the transfer's id, the next id to stream, the source's last operation number). A
//! sender that restarts mid-transfer finds it and, instead of starting over, first repairs what
//! the destination may have missed while no forwarding ran (an update applied by the source
//! but not forwarded when it crashed, and updates the restarted source applied before its
//! transfer task registered again): points the source no longer has are deleted on the
//! destination, points changed after the checkpoint and below it are sent again (those above
//! it are streamed anyway); then it streams on from the checkpoint. Resharding streams resume
//! the same way, each from its own checkpoint, over the points that stream carries.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::cluster::CollectionError;
use crate::cluster::collection::{Outgoing, forward_copy};
use crate::cluster::metadata::Metadata;
use crate::cluster::shard_requests::{
    FencedRecovery, Ownership, ShardRecovery, ShardScroll, StreamFence, StreamScope,
};
use crate::cluster::toc::TableOfContent;
use crate::consensus::{
    ClusterOperation, ClusterStateView, PeerId, ReplicaState, ShardId, ShardTransfer,
    TransferMethod,
};
use crate::index::filter::{Filter, HasVector};
use crate::index::payload_selector::WithVector;
use crate::shard::clock::{ClockMap, ClockTag};
use crate::shard::local_shard::{LocalShard, PayloadRead, Record};
use crate::shard::operations::{PointSelection, PointWrite, UpdateRequest};
use crate::shard::snapshot::SnapshotError;
use crate::types::{PointId, VectorData};
use shoal_proto::v1::snapshot_service_client::SnapshotServiceClient;
use shoal_proto::v1::{RecoverRequest, SnapshotRef};

/// How often a sender retries a batch the destination did not take, and how long it waits
/// between tries. Liveness only: a batch the destination never took fails the transfer (which
/// aborts), and a retried batch is idempotent (upserts of the source's current points).
const SEND_ATTEMPTS: u32 = 5;
const SEND_BACKOFF: Duration = Duration::from_millis(500);
/// The most JSON a `wal_delta` replay message carries (well below the p2p limit,
/// `P2P_MESSAGE_BYTES`); a single operation larger than this makes the transfer copy every
/// point instead.
const REPLAY_CHUNK_BYTES: usize = 16 << 20;
/// Ids per page when a resumed transfer compares both sides.
const CATCH_UP_PAGE: usize = 10_000;

/// Where a sender got to, kept beside the source replica (`transfer-out.json`) after every
/// acknowledged batch, so that a sender restarted mid-transfer resumes instead of starting
/// over.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
struct Checkpoint {
    /// The transfer's id in the cluster state: a new transfer never resumes an old one.
    transfer: u64,
    to: u64,
    /// The first id not streamed yet (`None`: every point was streamed).
    next: Option<PointId>,
    /// The source's last operation when the last batch was read: every later change to a
    /// point below `next` was forwarded, or was in flight when the sender stopped.
    seq: u64,
    points_done: u64,
    /// The destination shard of a resharding stream (`None`: a transfer of the shard itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    to_shard: Option<u32>,
}

const CHECKPOINT_FILE: &str = "transfer-out.json";

/// The checkpoint file of a resharding stream: a drained shard streams to several shards and
/// peers at once, each from its own place.
fn resharding_checkpoint_file(key: &TransferKey) -> String {
    format!("resharding-out-{}-{}.json", key.to_shard, key.to.0)
}

fn read_checkpoint(dir: &std::path::Path, file: &str) -> Option<Checkpoint> {
    let bytes = std::fs::read(dir.join(file)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn write_checkpoint(
    dir: &std::path::Path,
    file: &str,
    checkpoint: &Checkpoint,
) -> std::io::Result<()> {
    let tmp = dir.join(format!("{file}.tmp"));
    std::fs::write(&tmp, serde_json::to_vec(checkpoint)?)?;
    std::fs::rename(&tmp, dir.join(file))
}

fn remove_checkpoint(dir: &std::path::Path, file: &str) {
    let _ = std::fs::remove_file(dir.join(file));
}

/// A transfer, as the cluster state names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TransferKey {
    pub collection: String,
    pub shard: u32,
    /// The destination shard: `shard` itself, except for a resharding stream.
    pub to_shard: u32,
    pub from: PeerId,
    pub to: PeerId,
}

/// What a running transfer reports: stage, points, bytes, rate and an estimate of the rest.
#[derive(Debug)]
pub struct Progress {
    started: Instant,
    stage: parking_lot::Mutex<&'static str>,
    points_total: AtomicU64,
    points_done: AtomicU64,
    bytes: AtomicU64,
}

#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct ProgressReport {
    pub stage: String,
    pub points_done: u64,
    pub points_total: u64,
    pub percent: f64,
    pub bytes: u64,
    pub points_per_second: f64,
    /// Seconds left at the current rate; `None` before there is a rate.
    pub eta_seconds: Option<f64>,
    pub elapsed_seconds: f64,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            started: Instant::now(),
            stage: parking_lot::Mutex::new("starting"),
            points_total: AtomicU64::new(0),
            points_done: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
        }
    }

    fn stage(&self, stage: &'static str) {
        *self.stage.lock() = stage;
    }

    pub fn report(&self) -> ProgressReport {
        let done = self.points_done.load(Ordering::Relaxed);
        let total = self.points_total.load(Ordering::Relaxed).max(done);
        let elapsed = self.started.elapsed().as_secs_f64();
        let rate = if elapsed > 0.0 {
            done as f64 / elapsed
        } else {
            0.0
        };
        ProgressReport {
            stage: (*self.stage.lock()).to_string(),
            points_done: done,
            points_total: total,
            percent: if total == 0 {
                100.0
            } else {
                (done as f64 * 100.0 / total as f64).min(100.0)
            },
            bytes: self.bytes.load(Ordering::Relaxed),
            points_per_second: rate,
            eta_seconds: (rate > 0.0).then(|| (total - done) as f64 / rate),
            elapsed_seconds: elapsed,
        }
    }
}

/// One sent transfer's progress, as peers exchange it.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct TransferProgressEntry {
    pub shard_id: u32,
    /// The destination shard of a resharding stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_shard_id: Option<u32>,
    pub from: u64,
    pub to: u64,
    pub progress: ProgressReport,
}

struct Running {
    progress: Arc<Progress>,
    cancel: Arc<AtomicBool>,
}

/// The transfers this peer sends.
pub struct Transfers {
    running: parking_lot::Mutex<HashMap<TransferKey, Running>>,
    /// Snapshot files of running `snapshot` transfers, by file name.
    pub(crate) shipping: parking_lot::Mutex<HashMap<String, Arc<Shipping>>>,
    /// Collections whose resharding this peer is advancing right now.
    pub(crate) driving: parking_lot::Mutex<std::collections::HashSet<String>>,
}

#[derive(Debug, thiserror::Error)]
enum TransferError {
    #[error("cancelled")]
    Cancelled,
    #[error(transparent)]
    Failed(#[from] CollectionError),
}

impl Default for Transfers {
    fn default() -> Self {
        Self::new()
    }
}

impl Transfers {
    pub fn new() -> Transfers {
        Transfers {
            running: parking_lot::Mutex::new(HashMap::new()),
            shipping: parking_lot::Mutex::new(HashMap::new()),
            driving: parking_lot::Mutex::new(std::collections::HashSet::new()),
        }
    }

    /// The progress of the transfers this peer sends for `collection`.
    pub fn progress(&self, collection: &str) -> Vec<TransferProgressEntry> {
        let mut out: Vec<TransferProgressEntry> = self
            .running
            .lock()
            .iter()
            .filter(|(k, _)| k.collection == collection)
            .map(|(k, r)| TransferProgressEntry {
                shard_id: k.shard,
                to_shard_id: (k.to_shard != k.shard).then_some(k.to_shard),
                from: k.from.0,
                to: k.to.0,
                progress: r.progress.report(),
            })
            .collect();
        out.sort_by_key(|e| (e.shard_id, e.to_shard_id, e.from, e.to));
        out
    }

    /// Starts and cancels sender tasks to match `view`, and asks for the recovery of this
    /// peer's `Dead` replicas.
    pub async fn sync(self: &Arc<Self>, toc: &Arc<TableOfContent>, view: &ClusterStateView) {
        let this_peer = toc.env().this_peer();
        let mut wanted: HashMap<TransferKey, ShardTransfer> = HashMap::new();
        for (name, meta) in &view.state.collections {
            for t in &meta.transfers {
                if t.from == this_peer {
                    wanted.insert(
                        TransferKey {
                            collection: name.clone(),
                            shard: t.shard.0,
                            to_shard: t.to_shard.unwrap_or(t.shard).0,
                            from: t.from,
                            to: t.to,
                        },
                        t.clone(),
                    );
                }
            }
        }
        {
            let mut running = self.running.lock();
            running.retain(|key, task| {
                let keep = wanted.contains_key(key);
                if !keep {
                    task.cancel.store(true, Ordering::SeqCst);
                }
                keep
            });
            for (key, transfer) in wanted {
                if running.contains_key(&key) {
                    continue;
                }
                let Some(uri) = view.state.peers.get(&key.to).map(|p| p.uri.clone()) else {
                    continue;
                };
                let task = Running {
                    progress: Arc::new(Progress::new()),
                    cancel: Arc::new(AtomicBool::new(false)),
                };
                tracing::info!(collection = %key.collection, shard = key.shard, to = %key.to, method = ?transfer.method, "transfer starts");
                tokio::spawn(Self::run(
                    Arc::clone(self),
                    Arc::clone(toc),
                    key.clone(),
                    transfer,
                    uri,
                    Arc::clone(&task.progress),
                    Arc::clone(&task.cancel),
                ));
                running.insert(key, task);
            }
        }
        self.recover_dead_replicas(toc, view).await;
        crate::cluster::resharding::drive(self, toc, view);
        crate::cluster::resharding::replicate_new_shards(toc, view).await;
    }

    /// For every `Dead` replica of this peer that no transfer fills, proposes a transfer to it
    /// from an active replica.
    async fn recover_dead_replicas(&self, toc: &Arc<TableOfContent>, view: &ClusterStateView) {
        let env = toc.env();
        let this_peer = env.this_peer();
        for (name, meta) in &view.state.collections {
            // A replica that did not open is recovered once a reconcile pass has put an
            // empty one in its place (see `FailedReplica`).
            let collection = toc.get(name).ok();
            for (shard, replicas) in &meta.shards {
                if replicas.replicas.get(&this_peer) != Some(&ReplicaState::Dead)
                    || meta.transfers.iter().any(|t| t.shard == *shard)
                    || meta.resharding.as_ref().is_some_and(|r| r.shard == *shard)
                    || collection
                        .as_ref()
                        .is_some_and(|c| c.replica_failed(shard.0))
                {
                    continue;
                }
                let Some(source) = replicas
                    .replicas
                    .iter()
                    .find(|(_, s)| **s == ReplicaState::Active)
                    .map(|(p, _)| *p)
                else {
                    continue;
                };
                let op = ClusterOperation::StartTransfer {
                    collection: name.clone(),
                    transfer: ShardTransfer {
                        shard: *shard,
                        to_shard: None,
                        from: source,
                        to: this_peer,
                        sync: true,
                        // The dead replica holds an older copy: send only what differs.
                        method: TransferMethod::WalDelta,
                        destination_was: None,
                        points_per_second: None,
                        bytes_per_second: None,
                        id: rand::random(),
                        done: false,
                    },
                    max_per_peer: Some(env.max_transfers_per_peer),
                    // Only if the replica is still Dead when this applies: a drop or another
                    // recovery since this peer's view wins.
                    destination_must_be: Some(ReplicaState::Dead),
                };
                match env.metadata.propose(op).await {
                    Ok((Ok(_), _)) => {
                        tracing::info!(collection = %name, shard = %shard, from = %source, "recovering a dead replica");
                    }
                    Ok((Err(e), _)) => {
                        tracing::debug!(collection = %name, shard = %shard, error = %e, "recovery not started yet");
                    }
                    Err(e) => {
                        tracing::debug!(collection = %name, shard = %shard, error = %e, "recovery not proposed");
                    }
                }
            }
        }
    }

    async fn run(
        self: Arc<Self>,
        toc: Arc<TableOfContent>,
        key: TransferKey,
        transfer: ShardTransfer,
        uri: String,
        progress: Arc<Progress>,
        cancel: Arc<AtomicBool>,
    ) {
        let metadata = Arc::clone(&toc.env().metadata);
        if transfer.to_shard.is_some() {
            let mut registered = None;
            let outcome = resharding_stream(
                &toc,
                &key,
                &transfer,
                &uri,
                &progress,
                &cancel,
                &mut registered,
            )
            .await;
            if let Some((collection, out)) = registered {
                collection.unregister_outgoing(key.shard, &out).await;
                // The stream ended with its resharding (or aborts it): nothing resumes it.
                // A sender that dies instead keeps its checkpoint.
                if let Some(local) = collection.local_shard(key.shard) {
                    remove_checkpoint(local.dir(), &resharding_checkpoint_file(&key));
                }
            }
            if let Err(TransferError::Failed(e)) = outcome {
                progress.stage("aborting");
                tracing::warn!(collection = %key.collection, shard = key.shard, to_shard = key.to_shard, to = %key.to, error = %e, "resharding stream failed; aborting the resharding");
                let op = ClusterOperation::AbortResharding {
                    collection: key.collection.clone(),
                    // Only the resharding this stream belongs to.
                    resharding: Some(transfer.resharding_id()),
                };
                match metadata.propose(op).await {
                    Ok((Ok(_), _)) => {}
                    Ok((Err(e), _)) => {
                        tracing::info!(error = %e, "the resharding was not aborted")
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "could not abort the resharding; the next sync retries")
                    }
                }
            }
            self.forget(&key, &cancel);
            return;
        }
        let outcome = stream_records(&toc, &key, &transfer, &uri, &progress, &cancel)
            .await
            // A forward that failed after the destination's last check: it must not finish.
            // Any that fails from here on is refused to its coordinator instead.
            .map(|(collection, out)| {
                out.finishing.store(true, Ordering::SeqCst);
                (collection, out)
            })
            .and_then(|(collection, out)| match check_forwarding(&out) {
                Ok(()) => Ok((collection, out)),
                Err(e) => Err((e, Some((collection, out)))),
            });
        let (collection, outgoing) = match outcome {
            Ok(pair) => pair,
            Err((error, registered)) => {
                if let Some((collection, out)) = registered {
                    collection.unregister_outgoing(key.shard, &out).await;
                    if let Some(local) = collection.local_shard(key.shard) {
                        remove_checkpoint(local.dir(), CHECKPOINT_FILE);
                    }
                }
                if let TransferError::Failed(e) = error {
                    progress.stage("aborting");
                    tracing::warn!(collection = %key.collection, shard = key.shard, to = %key.to, error = %e, "transfer failed; aborting it");
                    let op = ClusterOperation::AbortTransfer {
                        collection: key.collection.clone(),
                        shard: ShardId(key.shard),
                        from: key.from,
                        to: key.to,
                        id: Some(transfer.id),
                    };
                    if let Err(e) = metadata.propose(op).await {
                        tracing::warn!(error = %e, "could not abort the transfer; the next sync retries");
                    }
                }
                self.forget(&key, &cancel);
                return;
            }
        };
        progress.stage("finishing");
        // Fenced on this transfer's id: a later transfer between the same peers is not
        // finished by this one's task.
        let op = ClusterOperation::FinishTransfer {
            collection: key.collection.clone(),
            shard: ShardId(key.shard),
            from: key.from,
            to: key.to,
            id: Some(transfer.id),
        };
        // The log index of a state in which the transfer has ended (or, when the finish was
        // refused for another reason, which the next sync looks at again).
        let (ended_at, finished) = match metadata.propose(op).await {
            Ok((Ok(_), index)) => (index, true),
            Ok((Err(e), index)) => {
                tracing::info!(collection = %key.collection, shard = key.shard, error = %e, "transfer ended elsewhere");
                (index, false)
            }
            Err(e) => {
                tracing::warn!(collection = %key.collection, shard = key.shard, error = %e, "could not finish the transfer; aborting");
                // The finish may have been applied all the same: only an answer from
                // consensus tells, and until then forwarding goes on.
                let op = ClusterOperation::AbortTransfer {
                    collection: key.collection.clone(),
                    shard: ShardId(key.shard),
                    from: key.from,
                    to: key.to,
                    id: Some(transfer.id),
                };
                loop {
                    match metadata.propose(op.clone()).await {
                        Ok((_, index)) => break (index, false),
                        Err(e) => {
                            tracing::warn!(collection = %key.collection, shard = key.shard, error = %e, "cannot abort the transfer yet; forwarding goes on");
                            // Retry backoff (liveness): forwarding goes on meanwhile.
                            tokio::time::sleep(SEND_BACKOFF).await;
                        }
                    }
                }
            }
        };
        // Forwarding may stop only once this peer's own replica knows the layout without the
        // transfer: from then on the fence refuses every update routed by an older one (an
        // update that passed the fence before is forwarded: unregistering waits for it). So
        // this wait has no deadline; the patience only paces a warning.
        while !toc
            .wait_reconciled(ended_at, Metadata::PEER_APPLY_PATIENCE)
            .await
        {
            tracing::warn!(collection = %key.collection, shard = key.shard, index = ended_at, "this peer has not reconciled the end of the transfer yet; forwarding goes on");
        }
        collection.forwarding_settled(key.shard, &outgoing).await;
        if finished {
            // Liveness only: peers that still route by the old layout get their writes
            // refused by the source (it carries the newer layout version) and route again:
            // see `Collection::update_local`. Waiting (bounded) for them spares those retries.
            toc.await_peers(ended_at).await;
            tracing::info!(collection = %key.collection, shard = key.shard, to = %key.to, points = progress.report().points_done, "transfer finished");
        }
        collection.unregister_outgoing(key.shard, &outgoing).await;
        if let Some(local) = collection.local_shard(key.shard) {
            remove_checkpoint(local.dir(), CHECKPOINT_FILE);
        }
        self.forget(&key, &cancel);
    }

    /// Removes a task from the running set, unless a newer task for the same key replaced it.
    fn forget(&self, key: &TransferKey, cancel: &Arc<AtomicBool>) {
        let mut running = self.running.lock();
        if running
            .get(key)
            .is_some_and(|r| Arc::ptr_eq(&r.cancel, cancel))
        {
            running.remove(key);
        }
    }
}

type Registered = (Arc<crate::cluster::collection::Collection>, Arc<Outgoing>);

/// Streams every point of the local replica to the destination. On success returns the
/// registration, which the caller ends after finishing; on failure, what to unregister.
async fn stream_records(
    toc: &Arc<TableOfContent>,
    key: &TransferKey,
    transfer: &ShardTransfer,
    uri: &str,
    progress: &Arc<Progress>,
    cancel: &AtomicBool,
) -> Result<Registered, (TransferError, Option<Registered>)> {
    let fail = |e: CollectionError| (TransferError::Failed(e), None);
    let collection = toc.get(&key.collection).map_err(fail)?;
    let local = collection.local_shard(key.shard).ok_or_else(|| {
        fail(CollectionError::Storage(format!(
            "shard {} of `{}` has no replica on this peer",
            key.shard, key.collection
        )))
    })?;
    if !matches!(
        transfer.method,
        TransferMethod::StreamRecords | TransferMethod::Snapshot | TransferMethod::WalDelta
    ) {
        return Err(fail(CollectionError::BadInput(format!(
            "transfer method {:?} belongs to a resharding, not to a shard transfer",
            transfer.method
        ))));
    }
    let snapshot = transfer.method == TransferMethod::Snapshot;
    let destination = toc
        .env()
        .remote(uri, &key.collection, key.shard)
        .map_err(fail)?;
    // This task runs because this peer's applied state holds the transfer: every step it
    // sends carries that state's index, so the destination's peer refuses the steps of a
    // transfer that has ended in a state at least as new.
    let fence = StreamFence {
        transfer: transfer.id,
        seen: toc.env().metadata.view().applied_index().unwrap_or(0),
    };
    // A `wal_delta` destination freezes its recovery point before anything is forwarded to
    // it: a forwarded update must not count as the history it missed.
    let point = if transfer.method == TransferMethod::WalDelta && transfer.destination_was.is_some()
    {
        progress.stage("reading the recovery point");
        let begin = ShardRecovery::Begin {
            copy: transfer.id,
            fresh: false,
        };
        Some(
            recovery_step(&destination, fence, &begin, cancel)
                .await
                .map_err(|e| (e, None))?
                .unwrap_or_default(),
        )
    } else {
        None
    };
    let out = Arc::new(Outgoing {
        to: key.to,
        destination: destination.clone(),
        source: Arc::downgrade(&local),
        scope: None,
        fence: None,
        order: tokio::sync::Mutex::new(()),
        broken: AtomicBool::new(false),
        finishing: AtomicBool::new(false),
        ended: AtomicBool::new(false),
        // A snapshot transfer queues updates until the destination is restored.
        queue: parking_lot::Mutex::new(snapshot.then(Vec::new)),
    });
    collection
        .register_outgoing(key.shard, Arc::clone(&out))
        .await;
    let registered = (Arc::clone(&collection), Arc::clone(&out));
    let with_reg = |e: TransferError| (e, Some(registered.clone()));

    let total = {
        let local = Arc::clone(&local);
        tokio::task::spawn_blocking(move || local.count())
            .await
            .unwrap_or(0)
    };
    progress.points_total.store(total as u64, Ordering::Relaxed);
    if snapshot {
        snapshot_transfer(toc, key, transfer, fence, &local, &out, progress, cancel)
            .await
            .map_err(with_reg)?;
        check_forwarding(&out).map_err(with_reg)?;
        return Ok(registered);
    }

    if transfer.method == TransferMethod::WalDelta {
        if let Some(point) = point {
            let delta = delta_transfer(toc, &local, &out, point, fence, progress, cancel)
                .await
                .map_err(with_reg)?;
            if let Some(clocks) = delta {
                let finish = ShardRecovery::Finish {
                    copy: transfer.id,
                    clocks,
                };
                recovery_step(&destination, fence, &finish, cancel)
                    .await
                    .map_err(with_reg)?;
                check_forwarding(&out).map_err(with_reg)?;
                return Ok(registered);
            }
        } else {
            tracing::info!(collection = %key.collection, shard = key.shard, to = %key.to, "wal_delta: the destination has no replica to compare with; streaming every point");
        }
    }
    let dir = local.dir().to_path_buf();
    let resumed = read_checkpoint(&dir, CHECKPOINT_FILE)
        .filter(|c| c.transfer == transfer.id && c.to == key.to.0 && c.to_shard.is_none());
    let mut offset = None;
    let mut finished_streaming = false;
    // The source's clocks when forwarding began: the destination merges them at the end.
    let copied: ClockMap;
    match resumed {
        Some(checkpoint) => {
            progress.stage("resuming");
            tracing::info!(collection = %key.collection, shard = key.shard, to = %key.to, next = ?checkpoint.next, "transfer resumes from its checkpoint");
            let _order = out.order.lock().await;
            copied = local.recovery_point();
            catch_up(&local, &destination, fence, &checkpoint, None, cancel)
                .await
                .map_err(with_reg)?;
            progress
                .points_done
                .store(checkpoint.points_done, Ordering::Relaxed);
            offset = checkpoint.next;
            finished_streaming = checkpoint.next.is_none();
        }
        None => {
            // A destination that was Dead may hold anything: start it empty. Under the order
            // lock, so no forwarded update lands before the clearing.
            progress.stage("clearing destination");
            pause_at("clearing destination", cancel)
                .await
                .map_err(with_reg)?;
            let _order = out.order.lock().await;
            // The destination's recovery point is nothing until the copy is complete; what
            // it holds from then on is what the source's clocks say now, plus what is
            // forwarded.
            let begin = ShardRecovery::Begin {
                copy: transfer.id,
                fresh: true,
            };
            recovery_step(&destination, fence, &begin, cancel)
                .await
                .map_err(with_reg)?;
            copied = local.recovery_point();
            let clear = UpdateRequest::Delete(PointSelection::Filter(Filter::default()));
            send(&destination, fence, None, &clear, cancel)
                .await
                .map_err(with_reg)?;
        }
    }

    progress.stage("streaming points");
    pause_at("streaming points", cancel)
        .await
        .map_err(with_reg)?;
    let batch_size = toc.env().transfer_batch_points.max(1);
    let started = Instant::now();
    let already = progress.points_done.load(Ordering::Relaxed);
    let bytes_before = progress.bytes.load(Ordering::Relaxed);
    while !finished_streaming {
        if cancel.load(Ordering::SeqCst) {
            return Err(with_reg(TransferError::Cancelled));
        }
        if out.broken.load(Ordering::SeqCst) {
            return Err(with_reg(TransferError::Failed(
                CollectionError::Unavailable(
                    "an update could not be forwarded to the destination".into(),
                ),
            )));
        }
        // The rate limit: the points streamed so far plus this batch may not run ahead of
        // the allowed pace (checked before the batch, so the first one is paced too).
        if let Some(pps) = transfer.points_per_second.filter(|p| *p > 0) {
            let streamed = progress.points_done.load(Ordering::Relaxed) - already;
            let due = started
                + Duration::from_secs_f64((streamed + batch_size as u64) as f64 / f64::from(pps));
            let now = Instant::now();
            // Pacing (the user's rate limit), not safety: batches are read under the order
            // lock whenever they are sent.
            if due > now {
                tokio::time::sleep(due - now).await;
            }
        }
        // The byte limit paces by what was sent so far (a batch's size is known only once it
        // is read): the next batch waits until the bytes sent are within the allowance.
        if let Some(bps) = transfer.bytes_per_second.filter(|b| *b > 0) {
            let sent = progress.bytes.load(Ordering::Relaxed) - bytes_before;
            let due = started + Duration::from_secs_f64(sent as f64 / bps as f64);
            let now = Instant::now();
            // Pacing (the user's byte limit), not safety.
            if due > now {
                tokio::time::sleep(due - now).await;
            }
        }
        let order = out.order.lock().await;
        let (mut records, seq) = {
            let local = Arc::clone(&local);
            tokio::task::spawn_blocking(move || {
                let seq = local.stats().last_seq;
                (
                    local.scroll(offset, batch_size + 1, None, true, &WithVector::All),
                    seq,
                )
            })
            .await
            .map_err(|e| with_reg(CollectionError::Storage(e.to_string()).into()))?
        };
        let next = (records.len() > batch_size).then(|| records[batch_size].id);
        records.truncate(batch_size);
        let n = records.len() as u64;
        let points = writes_of(records);
        let bytes: u64 = points.iter().map(point_bytes).sum();
        if !points.is_empty() {
            send(
                &destination,
                fence,
                None,
                &UpdateRequest::Upsert(points),
                cancel,
            )
            .await
            .map_err(with_reg)?;
        }
        drop(order);
        let done = progress.points_done.fetch_add(n, Ordering::Relaxed) + n;
        progress.bytes.fetch_add(bytes, Ordering::Relaxed);
        let checkpoint = Checkpoint {
            transfer: transfer.id,
            to: key.to.0,
            next,
            seq,
            points_done: done,
            to_shard: None,
        };
        if let Err(e) = write_checkpoint(&dir, CHECKPOINT_FILE, &checkpoint) {
            tracing::warn!(error = %e, "cannot write the transfer checkpoint; a restart would start over");
        }
        match next {
            Some(id) => offset = Some(id),
            None => finished_streaming = true,
        }
    }
    check_forwarding(&out).map_err(with_reg)?;
    let finish = ShardRecovery::Finish {
        copy: transfer.id,
        clocks: copied,
    };
    recovery_step(&destination, fence, &finish, cancel)
        .await
        .map_err(with_reg)?;
    check_forwarding(&out).map_err(with_reg)?;
    Ok(registered)
}

/// Fails the transfer when an update could not be forwarded to its destination (which then
/// lacks it): such a destination must not become `Active`.
fn check_forwarding(out: &Outgoing) -> Result<(), TransferError> {
    if out.broken.load(Ordering::SeqCst) {
        return Err(TransferError::Failed(CollectionError::Unavailable(
            "an update could not be forwarded to the destination".into(),
        )));
    }
    Ok(())
}

/// A resharding stream: registers a forwarder that passes on the part of every update of the
/// local replica that the destination shard owns under the new ring, streams the points it owns
/// (in batches, under the forwarder's order lock, like `stream_records`), reports the stream
/// done, and then keeps forwarding until the resharding ends (`cancel`).
///
/// A stream restarted after its sender restarted resumes from its checkpoint, like
/// `stream_records` (see the module docs), over the points it carries ([`StreamScope`]). One
/// that was reported done only forwards: from then on reads may use the new ring and, once the
/// writes do, coordinators write to the destination directly, so the source is no longer the
/// one truth a repair could copy from.
async fn resharding_stream(
    toc: &Arc<TableOfContent>,
    key: &TransferKey,
    transfer: &ShardTransfer,
    uri: &str,
    progress: &Progress,
    cancel: &AtomicBool,
    registered: &mut Option<Registered>,
) -> Result<(), TransferError> {
    let env = toc.env();
    let collection = toc.get(&key.collection)?;
    let local = collection.local_shard(key.shard).ok_or_else(|| {
        CollectionError::Storage(format!(
            "shard {} of `{}` has no replica on this peer",
            key.shard, key.collection
        ))
    })?;
    let (target, source, resharding_id, seen) = {
        let view = env.metadata.view();
        let meta = view
            .state
            .collections
            .get(&key.collection)
            .ok_or(TransferError::Cancelled)?;
        (
            meta.target_ring().ok_or(TransferError::Cancelled)?,
            meta.source_ring().ok_or(TransferError::Cancelled)?,
            meta.resharding.as_ref().map_or(0, |r| r.id),
            view.applied_index().unwrap_or(0),
        )
    };
    // What the stream sends and passes on is fenced by it (see `StreamFence`).
    let fence = StreamFence {
        transfer: transfer.id,
        seen,
    };
    let owner = Ownership {
        ring: target.iter().map(|s| s.0).collect(),
        shard: key.to_shard,
    };
    let scope = StreamScope {
        to: owner.clone(),
        from: Ownership {
            ring: source.iter().map(|s| s.0).collect(),
            shard: key.shard,
        },
    };
    let destination = env.remote(uri, &key.collection, key.to_shard)?;
    let out = Arc::new(Outgoing {
        to: key.to,
        destination: destination.clone(),
        source: Arc::downgrade(&local),
        scope: Some(scope.clone()),
        fence: Some(fence),
        order: tokio::sync::Mutex::new(()),
        broken: AtomicBool::new(false),
        finishing: AtomicBool::new(false),
        ended: AtomicBool::new(false),
        queue: parking_lot::Mutex::new(None),
    });
    collection
        .register_outgoing(key.shard, Arc::clone(&out))
        .await;
    *registered = Some((Arc::clone(&collection), Arc::clone(&out)));
    let broken = || {
        TransferError::Failed(CollectionError::Unavailable(
            "an update could not be forwarded to the destination".into(),
        ))
    };
    let total = {
        let (local, scope) = (Arc::clone(&local), scope.clone());
        tokio::task::spawn_blocking(move || {
            local.count_matching(
                None,
                Some(&|id: PointId, _: &_, _: HasVector<'_>| scope.carries(&id)),
            )
        })
        .await
        .unwrap_or(0)
    };
    progress.points_total.store(total as u64, Ordering::Relaxed);
    let dir = local.dir().to_path_buf();
    let file = resharding_checkpoint_file(key);
    if transfer.done {
        out.finishing.store(true, Ordering::SeqCst);
        remove_checkpoint(&dir, &file);
        progress.points_done.store(total as u64, Ordering::Relaxed);
    } else {
        // A resharding started before they had ids has streams whose ids repeat from one
        // resharding to the next: never resume those.
        let resumed = read_checkpoint(&dir, &file).filter(|c| {
            resharding_id != 0
                && c.transfer == transfer.id
                && c.to == key.to.0
                && c.to_shard == Some(key.to_shard)
        });
        let mut offset = None;
        let mut finished_streaming = false;
        if let Some(checkpoint) = resumed {
            progress.stage("resuming");
            tracing::info!(collection = %key.collection, shard = key.shard, to_shard = key.to_shard, to = %key.to, next = ?checkpoint.next, points_done = checkpoint.points_done, "resharding stream resumes from its checkpoint");
            let _order = out.order.lock().await;
            catch_up(
                &local,
                &destination,
                fence,
                &checkpoint,
                Some(&scope),
                cancel,
            )
            .await?;
            progress
                .points_done
                .store(checkpoint.points_done, Ordering::Relaxed);
            offset = checkpoint.next;
            finished_streaming = checkpoint.next.is_none();
        }
        progress.stage("streaming points");
        let batch_size = env.transfer_batch_points.max(1);
        while !finished_streaming {
            if cancel.load(Ordering::SeqCst) {
                return Err(TransferError::Cancelled);
            }
            if out.ended.load(Ordering::SeqCst) {
                return Err(TransferError::Cancelled);
            }
            if out.broken.load(Ordering::SeqCst) {
                return Err(broken());
            }
            pause_at("resharding batch", cancel).await?;
            let order = out.order.lock().await;
            let (mut records, seq) = {
                let (local, scope) = (Arc::clone(&local), scope.clone());
                tokio::task::spawn_blocking(move || {
                    let accept =
                        |id: PointId, _: PayloadRead<'_>, _: HasVector<'_>| scope.carries(&id);
                    let seq = local.stats().last_seq;
                    (
                        local.scroll(
                            offset,
                            batch_size + 1,
                            Some(&accept),
                            true,
                            &WithVector::All,
                        ),
                        seq,
                    )
                })
                .await
                .map_err(|e| CollectionError::Storage(e.to_string()))?
            };
            let next = (records.len() > batch_size).then(|| records[batch_size].id);
            records.truncate(batch_size);
            let n = records.len() as u64;
            let points = writes_of(records);
            let bytes: u64 = points.iter().map(point_bytes).sum();
            if !points.is_empty() {
                send(
                    &destination,
                    fence,
                    None,
                    &UpdateRequest::Upsert(points),
                    cancel,
                )
                .await?;
            }
            drop(order);
            let done = progress.points_done.fetch_add(n, Ordering::Relaxed) + n;
            progress.bytes.fetch_add(bytes, Ordering::Relaxed);
            let checkpoint = Checkpoint {
                transfer: transfer.id,
                to: key.to.0,
                next,
                seq,
                points_done: done,
                to_shard: Some(key.to_shard),
            };
            if let Err(e) = write_checkpoint(&dir, &file, &checkpoint) {
                tracing::warn!(error = %e, "cannot write the resharding stream's checkpoint; a restart would start over");
            }
            match next {
                Some(id) => offset = Some(id),
                None => finished_streaming = true,
            }
        }
        // Once reported done, reads may use the new ring: an update the destination misses
        // from here on is not acknowledged (see `Outgoing::finishing`).
        out.finishing.store(true, Ordering::SeqCst);
        if out.ended.load(Ordering::SeqCst) {
            return Err(TransferError::Cancelled);
        }
        if out.broken.load(Ordering::SeqCst) {
            return Err(broken());
        }
        progress.stage("reporting done");
        loop {
            if cancel.load(Ordering::SeqCst) {
                return Err(TransferError::Cancelled);
            }
            let op = ClusterOperation::ReshardingStreamDone {
                collection: key.collection.clone(),
                shard: ShardId(key.shard),
                to_shard: ShardId(key.to_shard),
                to: key.to,
                id: Some(transfer.id),
            };
            match env.metadata.propose(op).await {
                Ok((Ok(_), _)) => break,
                // The resharding ended meanwhile.
                Ok((Err(_), _)) => return Err(TransferError::Cancelled),
                Err(e) => {
                    tracing::debug!(error = %e, "cannot report the stream done yet; retrying");
                    // Liveness only: a retry backoff while consensus has no leader; the
                    // proposal itself is validated against the applied state.
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
        // Done streams only forward after a restart (see above): the checkpoint is spent.
        remove_checkpoint(&dir, &file);
        tracing::info!(collection = %key.collection, shard = key.shard, to_shard = key.to_shard, to = %key.to, points = progress.report().points_done, "resharding stream done");
    }
    progress.stage("forwarding updates");
    loop {
        if cancel.load(Ordering::SeqCst) || out.ended.load(Ordering::SeqCst) {
            return Err(TransferError::Cancelled);
        }
        if out.broken.load(Ordering::SeqCst) {
            // Only a resharding that can still go back needs every forwarded update; past
            // the write ring the replicas refuse what they no longer own.
            let abortable = env
                .metadata
                .view()
                .state
                .collections
                .get(&key.collection)
                .and_then(|m| m.resharding.as_ref())
                .is_some_and(|r| r.stage.can_abort());
            if abortable {
                return Err(broken());
            }
        }
        // A polling interval for `cancel`, `ended` and `broken`, liveness only: an update whose
        // forwarding failed was refused to its coordinator already (`ForwardFailed`), so the
        // delay only postpones the abort.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Brings the destination back in line with the source after the sender stopped, before the
/// stream goes on from the checkpoint's `next`: points the source no longer has are deleted
/// (anywhere: forwarded updates reach points above `next` too), points the source changed
/// after the checkpoint and below `next` are sent again (those above are streamed anyway).
/// `scope` limits both sides to the points a resharding stream carries; `None` (a transfer)
/// compares whole replicas. Run under the order lock, so no forwarded update interleaves.
async fn catch_up(
    local: &Arc<LocalShard>,
    destination: &crate::cluster::remote_shard::RemoteShard,
    fence: StreamFence,
    checkpoint: &Checkpoint,
    scope: Option<&StreamScope>,
    cancel: &AtomicBool,
) -> Result<(), TransferError> {
    let next = checkpoint.next;
    let below = move |id: &PointId| next.is_none_or(|n| *id < n);
    let carried = |id: &PointId| scope.is_none_or(|s| s.carries(id));
    // (id, version) of every point of the source that the stream carries.
    let source: Vec<(PointId, u64)> = {
        let (local, scope) = (Arc::clone(local), scope.cloned());
        tokio::task::spawn_blocking(move || {
            let accept = |id: PointId, _: PayloadRead<'_>, _: HasVector<'_>| {
                scope.as_ref().is_none_or(|s| s.carries(&id))
            };
            let mut out = Vec::new();
            let mut from = None;
            loop {
                let page = local.scroll(
                    from,
                    CATCH_UP_PAGE + 1,
                    Some(&accept),
                    false,
                    &WithVector::None,
                );
                let after = (page.len() > CATCH_UP_PAGE).then(|| page[CATCH_UP_PAGE].id);
                out.extend(
                    page.into_iter()
                        .take(CATCH_UP_PAGE)
                        .map(|r| (r.id, r.version)),
                );
                match after {
                    Some(id) => from = Some(id),
                    None => return out,
                }
            }
        })
        .await
        .map_err(|e| TransferError::Failed(CollectionError::Storage(e.to_string())))?
    };
    let source_ids: std::collections::HashSet<PointId> = source.iter().map(|(id, _)| *id).collect();
    let mut from = None;
    let mut stale = Vec::new();
    let mut present = std::collections::HashSet::new();
    loop {
        if cancel.load(Ordering::SeqCst) {
            return Err(TransferError::Cancelled);
        }
        let page = destination
            .request(&ShardScroll {
                from,
                limit: CATCH_UP_PAGE + 1,
                filter: None,
                with_payload: false,
                with_vector: WithVector::None,
                // Explicit, so that the destination does not narrow the scroll to what it
                // owns under the read ring (during a resharding it would): the points of the
                // source shard under the old ring, the rest filtered below.
                owner: scope.map(|s| s.from.clone()),
            })
            .await?;
        let after = (page.len() > CATCH_UP_PAGE).then(|| page[CATCH_UP_PAGE].id);
        for r in page.into_iter().take(CATCH_UP_PAGE) {
            if !carried(&r.id) {
                continue;
            }
            if source_ids.contains(&r.id) {
                present.insert(r.id);
            } else {
                stale.push(r.id);
            }
        }
        match after {
            Some(id) => from = Some(id),
            None => break,
        }
    }
    // Below `next`, what the source changed since the checkpoint, and whatever the
    // destination lacks (it should hold everything streamed before the checkpoint; a point
    // it lost anyway is sent again rather than left out of an Active replica).
    let mut missing = 0;
    let changed: Vec<PointId> = source
        .iter()
        .filter(|(id, version)| {
            below(id) && {
                let absent = !present.contains(id);
                missing += usize::from(absent && *version <= checkpoint.seq);
                absent || *version > checkpoint.seq
            }
        })
        .map(|(id, _)| *id)
        .collect();
    tracing::info!(
        stale = stale.len(),
        changed = changed.len(),
        missing,
        "catching up after a restart"
    );
    for chunk in stale.chunks(1000) {
        send(
            destination,
            fence,
            None,
            &UpdateRequest::Delete(PointSelection::Ids(chunk.to_vec())),
            cancel,
        )
        .await?;
    }
    for chunk in changed.chunks(1000) {
        let records = {
            let local = Arc::clone(local);
            let ids = chunk.to_vec();
            tokio::task::spawn_blocking(move || local.retrieve(&ids, true, &WithVector::All))
                .await
                .map_err(|e| TransferError::Failed(CollectionError::Storage(e.to_string())))?
        };
        let points = writes_of(records);
        if !points.is_empty() {
            send(
                destination,
                fence,
                None,
                &UpdateRequest::Upsert(points),
                cancel,
            )
            .await?;
        }
    }
    Ok(())
}

/// The `wal_delta` method, for a destination that holds an older copy of the shard (a `Dead`
/// replica that missed writes), at recovery `point` (its clock map, frozen before forwarding
/// began: see `shard::clock`). Under the order lock, so that nothing is forwarded meanwhile,
/// the source finds in its WAL the first record the point does not cover and replays every
/// operation from there, in its order; forwarding of later updates then goes on as for
/// `stream_records`. The cost grows with what the destination missed, not with the shard.
///
/// Returns the source's clocks for the destination to merge once the transfer is done, or
/// `None` when only a full copy helps (see `LocalShard::wal_delta`'s `NoDelta`, or a single
/// operation is too large to send): the caller then copies every point, and the log and the
/// progress say so.
async fn delta_transfer(
    toc: &Arc<TableOfContent>,
    local: &Arc<LocalShard>,
    out: &Arc<Outgoing>,
    point: ClockMap,
    fence: StreamFence,
    progress: &Progress,
    cancel: &AtomicBool,
) -> Result<Option<ClockMap>, TransferError> {
    let copy = fence.transfer;
    pause_at("comparing replicas", cancel).await?;
    let _order = out.order.lock().await;
    let delta = {
        let (local, point) = (Arc::clone(local), point.clone());
        tokio::task::spawn_blocking(move || local.wal_delta(&point))
            .await
            .map_err(|e| CollectionError::Storage(e.to_string()))?
            .map_err(CollectionError::from)?
    };
    let delta = match delta {
        Ok(delta) => delta,
        Err(why) => {
            tracing::info!(clocks = point.len(), reason = %why, "wal_delta: no delta for the destination's recovery point; streaming every point instead");
            progress.stage("no delta for the recovery point: streaming every point");
            return Ok(None);
        }
    };
    let sizes: Vec<usize> = delta
        .ops
        .iter()
        .map(|op| serde_json::to_vec(op).map_or(usize::MAX, |b| b.len()))
        .collect();
    if sizes.iter().any(|n| *n > REPLAY_CHUNK_BYTES) {
        tracing::info!(
            operations = delta.ops.len(),
            "wal_delta: an operation is too large to replay in one message; streaming every point instead"
        );
        progress.stage("an operation is too large to replay: streaming every point");
        return Ok(None);
    }
    let total = delta.ops.len();
    progress.points_total.store(
        delta.ops.iter().map(|(_, op)| op.len() as u64).sum(),
        Ordering::Relaxed,
    );
    tracing::info!(
        operations = total,
        clocks = point.len(),
        "wal_delta: replaying the WAL from the destination's recovery point"
    );
    progress.stage("replaying the WAL");
    let batch = toc.env().transfer_batch_points.max(1);
    let mut ops = delta.ops.into_iter().zip(sizes).peekable();
    while ops.peek().is_some() {
        if cancel.load(Ordering::SeqCst) {
            return Err(TransferError::Cancelled);
        }
        // Batches of about `batch` points and at most `REPLAY_CHUNK_BYTES`, at least one
        // operation each.
        let mut chunk = Vec::new();
        let (mut points, mut bytes) = (0, 0);
        while let Some(((_, op), size)) = ops.peek() {
            if !chunk.is_empty() && (points + op.len() > batch || bytes + size > REPLAY_CHUNK_BYTES)
            {
                break;
            }
            points += op.len();
            bytes += size;
            chunk.push(ops.next().expect("peeked").0);
        }
        recovery_step(
            &out.destination,
            fence,
            &ShardRecovery::Replay { copy, ops: chunk },
            cancel,
        )
        .await?;
        progress
            .points_done
            .fetch_add(points as u64, Ordering::Relaxed);
        progress.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }
    Ok(Some(delta.clocks))
}

/// The `snapshot` method: an image of the source replica (segment files with their graphs,
/// hard-linked under the order lock, so updates from then on queue up) is streamed as a tar
/// archive to the destination over the p2p channel, packed as it is sent (paced by the
/// transfer's byte limit, counted in its progress) and unpacked as it arrives; the
/// destination swaps it in for its replica. Then the queued updates are replayed in order and
/// forwarding switched on. The destination serves the shipped graphs at once: nothing is
/// re-indexed.
#[allow(clippy::too_many_arguments)]
async fn snapshot_transfer(
    toc: &Arc<TableOfContent>,
    key: &TransferKey,
    transfer: &ShardTransfer,
    fence: StreamFence,
    local: &Arc<LocalShard>,
    out: &Arc<Outgoing>,
    progress: &Arc<Progress>,
    cancel: &AtomicBool,
) -> Result<(), TransferError> {
    let name = format!("transfer-{}-{}", key.shard, transfer.id);
    let snapshots = Arc::clone(toc.snapshots());
    progress.stage("snapshotting");
    pause_at("snapshotting", cancel).await?;
    let began = Instant::now();
    let (image, points, copied) = {
        let _order = out.order.lock().await;
        let copied = local.recovery_point();
        let (shard, shard_id, snapshots) = (Arc::clone(local), key.shard, Arc::clone(&snapshots));
        tokio::task::spawn_blocking(move || {
            let staging = snapshots.staging()?;
            let manifest = shard.snapshot_image(shard_id, staging.path())?;
            Ok::<_, SnapshotError>((staging, manifest.points, copied))
        })
        .await
        .map_err(|e| CollectionError::Storage(e.to_string()))?
        .map_err(CollectionError::storage)?
    };
    progress.points_total.store(points, Ordering::Relaxed);
    tracing::info!(collection = %key.collection, shard = key.shard, to = key.to.0, points, elapsed_ms = began.elapsed().as_millis() as u64, "snapshot image for a transfer taken");
    let result = async {
        if cancel.load(Ordering::SeqCst) {
            return Err(TransferError::Cancelled);
        }
        progress.stage("destination restores the snapshot");
        pause_at("destination restores the snapshot", cancel).await?;
        let env = toc.env();
        let view = env.metadata.view();
        let own_uri = view
            .state
            .peers
            .get(&key.from)
            .map(|p| p.uri.clone())
            .ok_or_else(|| CollectionError::Storage("this peer has no URI".into()))?;
        let dest_uri = view
            .state
            .peers
            .get(&key.to)
            .map(|p| p.uri.clone())
            .ok_or_else(|| CollectionError::Storage("the destination has no URI".into()))?;
        let mut request = tonic::Request::new(RecoverRequest {
            snapshot: Some(SnapshotRef {
                collection: key.collection.clone(),
                shard_id: key.shard,
                name: name.clone(),
            }),
            source_uri: own_uri,
            transfer_id: fence.transfer,
            seen: fence.seen,
        });
        request.set_timeout(SNAPSHOT_PATIENCE);
        if let Some(k) = &env.api_key
            && let Ok(v) = k.parse()
        {
            request.metadata_mut().insert("api-key", v);
        }
        toc.transfers().shipping.lock().insert(
            name.clone(),
            Arc::new(Shipping {
                progress: Arc::clone(progress),
                bytes_per_second: transfer.bytes_per_second.filter(|b| *b > 0),
                image: image.path().to_path_buf(),
            }),
        );
        let restored = SnapshotServiceClient::new(env.channel(&dest_uri)?)
            .recover(request)
            .await
            .map_err(|s| {
                if s.metadata()
                    .contains_key(crate::cluster::remote_shard::STALE_TRANSFER_MARK)
                {
                    // The destination's peer no longer runs this transfer: see `with_retries`.
                    tracing::info!(reason = s.message(), "the destination's peer says this transfer has ended");
                    return TransferError::Cancelled;
                }
                CollectionError::Unavailable(format!("snapshot recovery: {}", s.message())).into()
            })?
            .into_inner()
            .points;
        progress.points_done.store(restored, Ordering::Relaxed);
        tracing::info!(collection = %key.collection, shard = key.shard, to = key.to.0, bytes = progress.bytes.load(Ordering::Relaxed), elapsed_ms = began.elapsed().as_millis() as u64, "the destination restored the snapshot");
        progress.stage("replaying queued updates");
        pause_at("replaying queued updates", cancel).await?;
        let _order = out.order.lock().await;
        // The restored image replaced the whole replica: a fresh copy, whose clocks are the
        // source's at the image once the queued updates are in.
        let begin = ShardRecovery::Begin {
            copy: transfer.id,
            fresh: true,
        };
        recovery_step(&out.destination, fence, &begin, cancel).await?;
        let queued = out.queue.lock().take().unwrap_or_default();
        for (tag, update) in queued {
            send(&out.destination, fence, tag, &update, cancel).await?;
        }
        let finish = ShardRecovery::Finish {
            copy: transfer.id,
            clocks: copied,
        };
        recovery_step(&out.destination, fence, &finish, cancel).await?;
        Ok(())
    }
    .await;
    toc.transfers().shipping.lock().remove(&name);
    drop(image);
    result
}

/// A shard image a `snapshot` transfer ships: the destination's download packs it as it
/// streams, paced by the transfer's byte limit and counted in its progress.
pub struct Shipping {
    pub progress: Arc<Progress>,
    pub bytes_per_second: Option<u64>,
    /// The image's directory (removed by the transfer when it ends).
    pub image: std::path::PathBuf,
}

impl Shipping {
    /// Records `total_sent` bytes sent and, under a byte limit, blocks until they are within
    /// the allowance since `started` (pacing, not safety). Blocking.
    pub fn pace(&self, started: Instant, total_sent: u64) {
        self.progress.bytes.store(total_sent, Ordering::Relaxed);
        if let Some(bps) = self.bytes_per_second {
            let due = started + Duration::from_secs_f64(total_sent as f64 / bps as f64);
            let now = Instant::now();
            if due > now {
                // Pacing (the user's byte limit), not safety.
                std::thread::sleep(due - now);
            }
        }
    }
}

/// How long a destination may take to download and restore a snapshot. Liveness only: past
/// it the transfer fails and aborts, which puts the destination back as it was.
const SNAPSHOT_PATIENCE: Duration = Duration::from_secs(1800);

/// Stored records (with payload and vector) as writes that recreate them.
fn writes_of(records: Vec<Record>) -> Vec<PointWrite> {
    records
        .into_iter()
        .map(|r| PointWrite {
            id: r.id,
            vectors: r.vector.unwrap_or_default(),
            payload: r.payload.unwrap_or_default(),
        })
        .collect()
}

/// Roughly how many bytes a point takes on the wire, for the transfer's byte rate limit and
/// progress.
fn point_bytes(p: &PointWrite) -> u64 {
    let vectors: usize = p
        .vectors
        .iter()
        .map(|(name, v)| {
            name.len()
                + match v {
                    VectorData::Dense(d) => d.len() * 4,
                    VectorData::Multi(m) => m.iter().map(|d| d.len() * 4).sum(),
                    VectorData::Sparse(s) => s.indices.len() * 8,
                }
        })
        .sum();
    (vectors + 16) as u64
}

/// A test hook: `SHOAL_TEST_TRANSFER_PAUSE="stage=ms,..."` holds a sender for `ms` at the start
/// of each named stage (a cancellation ends the pause), so that tests can abort a transfer at a
/// chosen stage. Unset, it costs one lookup in an empty map.
async fn pause_at(stage: &str, cancel: &AtomicBool) -> Result<(), TransferError> {
    static PAUSES: std::sync::OnceLock<HashMap<String, u64>> = std::sync::OnceLock::new();
    let pauses =
        PAUSES.get_or_init(|| crate::shard::snapshot::stage_pauses("SHOAL_TEST_TRANSFER_PAUSE"));
    let Some(ms) = pauses.get(stage) else {
        return Ok(());
    };
    let until = Instant::now() + Duration::from_millis(*ms);
    while Instant::now() < until {
        if cancel.load(Ordering::SeqCst) {
            return Err(TransferError::Cancelled);
        }
        // The test hook's pause, polled for cancellation.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Sends one request to the destination, retrying a few times (it may be restarting).
async fn send(
    destination: &crate::cluster::remote_shard::RemoteShard,
    fence: StreamFence,
    tag: Option<ClockTag>,
    request: &UpdateRequest,
    cancel: &AtomicBool,
) -> Result<(), TransferError> {
    with_retries(cancel, || forward_copy(destination, fence, tag, request)).await?;
    Ok(())
}

/// Runs one recovery step on the destination (see `ShardRecovery`), retried like [`send`]:
/// every step is idempotent (beginning again keeps the floor, replaying again re-applies the
/// same operations in the same order, merging again changes nothing).
async fn recovery_step(
    destination: &crate::cluster::remote_shard::RemoteShard,
    fence: StreamFence,
    step: &ShardRecovery,
    cancel: &AtomicBool,
) -> Result<Option<ClockMap>, TransferError> {
    debug_assert_eq!(fence.transfer, step.copy());
    let call = FencedRecovery {
        seen: fence.seen,
        step: step.clone(),
    };
    with_retries(cancel, || destination.request(&call)).await
}

/// Runs `call` until it succeeds, up to `SEND_ATTEMPTS` times (bad input fails at once).
async fn with_retries<T, F, Fut>(cancel: &AtomicBool, mut call: F) -> Result<T, TransferError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, CollectionError>>,
{
    let mut attempt = 0;
    loop {
        match call().await {
            Ok(answer) => return Ok(answer),
            // The destination's peer no longer runs this transfer (see `StreamFence`): it
            // ended, and nobody needs more of it; the task stops without proposing anything.
            Err(CollectionError::StaleTransfer(reason)) => {
                tracing::info!(
                    reason,
                    "the destination's peer says this transfer has ended"
                );
                return Err(TransferError::Cancelled);
            }
            Err(e) => {
                attempt += 1;
                if attempt >= SEND_ATTEMPTS || matches!(e, CollectionError::BadInput(_)) {
                    return Err(TransferError::Failed(e));
                }
                if cancel.load(Ordering::SeqCst) {
                    return Err(TransferError::Cancelled);
                }
                // Retry backoff (liveness): see `SEND_ATTEMPTS`.
                tokio::time::sleep(SEND_BACKOFF * attempt).await;
            }
        }
    }
}
