//! A collection as this peer sees it: its configuration, the layout of its shards and replicas
//! (from the applied cluster state), and this peer's own replicas. Routes each update to every
//! replica of the shards it concerns, fans reads out to one readable replica per shard and
//! merges the answers. A node running alone is the same with every replica local.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;

use crate::cluster::CollectionError;
use crate::cluster::hash_ring::shard_for;
use crate::cluster::metadata::Metadata;
use crate::cluster::remote_shard::RemoteShard;
use crate::cluster::shard_requests::{
    FencedRecovery, FencedUpdate, ForwardedUpdate, LeaderUpdate, OrderValue, Ownership, ShardCount,
    ShardFacet, ShardOrderBy, ShardRecovery, ShardRequest, ShardRetrieve, ShardScroll, ShardSearch,
    ShardSparseStats, ShardTarget, StreamFence, StreamScope, StreamedUpdate, WriteOrdering,
};
use crate::collection_config::{
    CollectionConfig, Datatype, MAX_MULTIVECTOR_LEN, MAX_SPARSE_ENTRIES, Modifier,
    PayloadIndexEntry, ShardingMethod, VectorKind,
};
use crate::consensus::{
    ClusterError, ClusterOperation, CollectionMeta, PeerId, PeerInfo, ReplicaState,
    ReshardingDirection, ReshardingStage, ReshardingState, ShardId, ShardKey,
};
use crate::index::filter::Filter;
use crate::index::payload_selector::WithVector;
use crate::index::quantization::QuantizationSearch;
use crate::shard::clock::{ClockMap, ClockSet, ClockTag};
use crate::shard::local_shard::{
    IndexBuilder, LocalShard, OptimizerStatus, Record, ScoredRecord, ShardError, Stamp,
    UpdateOutcome, idf,
};
use crate::shard::maintenance;
use crate::shard::operations::{PointSelection, PointWrite, ShardOperation, UpdateRequest};
use crate::storage::wal::SyncMode;
use crate::types::{DEFAULT_VECTOR, NamedVectors, PointId, SparseVector, VectorData};

/// How a search scores points. Vectors are raw (as the client sent them, or as stored).
#[derive(Debug, Clone, PartialEq)]
pub enum SearchTarget {
    /// Nearest to this vector.
    Vector(VectorData),
    /// Qdrant's `best_score` recommendation strategy over these example vectors.
    BestScore {
        positive: Vec<VectorData>,
        negative: Vec<VectorData>,
    },
    /// No scoring: matching points in id order, each with score 0 (a query without `query`).
    IdOrder,
    /// Qdrant's `sum_scores` strategy: similarity to positives minus similarity to negatives.
    SumScores {
        positive: Vec<VectorData>,
        negative: Vec<VectorData>,
    },
    /// Qdrant's discovery search: a target and context pairs (positive, negative).
    Discover {
        target: VectorData,
        context: Vec<(VectorData, VectorData)>,
    },
    /// Qdrant's naive relevance feedback (see [`ShardTarget::RelevanceFeedback`]).
    RelevanceFeedback {
        target: VectorData,
        a: f32,
        pairs: Vec<(VectorData, VectorData, f32)>,
    },
    /// Qdrant's context search: only context pairs (positive, negative).
    Context {
        pairs: Vec<(VectorData, VectorData)>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct SearchRequest {
    /// The vector searched (`""` for the unnamed one).
    pub using: String,
    pub target: SearchTarget,
    pub filter: Option<Filter>,
    /// Points never returned (the examples of a recommendation).
    pub exclude: HashSet<PointId>,
    pub limit: usize,
    pub offset: usize,
    pub ef: Option<usize>,
    pub exact: bool,
    pub quantization: QuantizationSearch,
    pub score_threshold: Option<f32>,
    pub with_payload: bool,
    pub with_vector: WithVector,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CollectionStatus {
    Green,
    Yellow,
    /// Optimizations pending while switched off (`max_optimization_threads: 0`).
    Grey,
}

/// An update whose vectors and payloads [`Collection::prepare_update`] checked and brought
/// into stored form.
#[derive(Debug)]
pub struct PreparedUpdate(UpdateRequest);

#[derive(Debug, Clone, PartialEq)]
pub struct CollectionStats {
    pub status: CollectionStatus,
    pub points: usize,
    pub indexed_vectors: usize,
    pub segments: usize,
}

/// The shard keys a request is limited to: one key or several (`"shard_key": "a"` or
/// `"shard_key": ["a", "b"]`), as in Qdrant.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(untagged)]
pub enum ShardKeySelector {
    One(ShardKey),
    Many(Vec<ShardKey>),
}

impl ShardKeySelector {
    pub fn keys(&self) -> Vec<ShardKey> {
        match self {
            ShardKeySelector::One(k) => vec![k.clone()],
            ShardKeySelector::Many(ks) => ks.clone(),
        }
    }
}

/// One replica of a shard, as the applied cluster state describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaInfo {
    pub peer: PeerId,
    pub state: ReplicaState,
    /// The peer's p2p URI (empty for this peer when it runs alone).
    pub uri: String,
}

/// One shard of the collection: its key, its replicas (ordered by peer id), and whether points
/// hash onto it for reads and for writes (during a resharding the shard being added or drained
/// is on one ring and not the other).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ShardLayout {
    pub key: Option<ShardKey>,
    pub replicas: Vec<ReplicaInfo>,
    pub read: bool,
    pub write: bool,
    /// The shard's layout version in the cluster state (`ShardMeta::version`).
    pub version: u64,
}

pub type Layout = BTreeMap<u32, ShardLayout>;

/// What every collection of a peer shares: who this peer is, how to reach the others and how to
/// tell the cluster that a replica failed.
pub struct Environment {
    pub metadata: Arc<Metadata>,
    /// The key this peer presents to the others' p2p services.
    pub api_key: Option<String>,
    pub builder: Arc<IndexBuilder>,
    pub sync: SyncMode,
    /// One connection per peer URI, shared by every shard request to that peer.
    channels: parking_lot::Mutex<HashMap<String, tonic::transport::Channel>>,
    /// At most this many transfers send from, and as many receive on, this peer at once.
    pub max_transfers_per_peer: u32,
    /// Points per batch of a streaming transfer.
    pub transfer_batch_points: usize,
}

impl Environment {
    pub fn new(
        metadata: Arc<Metadata>,
        api_key: Option<String>,
        builder: Arc<IndexBuilder>,
        sync: SyncMode,
    ) -> Environment {
        Environment {
            metadata,
            api_key,
            builder,
            sync,
            channels: parking_lot::Mutex::new(HashMap::new()),
            max_transfers_per_peer: 2,
            transfer_batch_points: 256,
        }
    }

    pub fn this_peer(&self) -> PeerId {
        self.metadata.peer_id()
    }

    /// The shared channel to the peer at `uri`.
    pub fn channel(&self, uri: &str) -> Result<tonic::transport::Channel, CollectionError> {
        let mut channels = self.channels.lock();
        if let Some(c) = channels.get(uri) {
            return Ok(c.clone());
        }
        let c = RemoteShard::channel(uri)?;
        channels.insert(uri.to_string(), c.clone());
        Ok(c)
    }

    pub fn remote(
        &self,
        uri: &str,
        collection: &str,
        shard: u32,
    ) -> Result<RemoteShard, CollectionError> {
        Ok(RemoteShard::with_channel(
            self.channel(uri)?,
            uri,
            collection,
            shard,
            self.api_key.clone(),
        ))
    }
}

/// The file in a collection's directory holding its configuration as this peer last applied it.
pub(crate) const CONFIG_FILE: &str = "config.json";

/// Writes `config` to the collection directory `dir` atomically (temporary file, fsync,
/// rename, directory fsync).
pub(crate) fn write_config(dir: &Path, config: &CollectionConfig) -> Result<(), CollectionError> {
    let tmp = dir.join(format!("{CONFIG_FILE}.tmp"));
    let text = serde_json::to_vec_pretty(config).map_err(CollectionError::storage)?;
    let mut file = std::fs::File::create(&tmp).map_err(CollectionError::storage)?;
    std::io::Write::write_all(&mut file, &text).map_err(CollectionError::storage)?;
    file.sync_all().map_err(CollectionError::storage)?;
    std::fs::rename(&tmp, dir.join(CONFIG_FILE)).map_err(CollectionError::storage)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(CollectionError::storage)
}

/// The threads that run reads of local replicas (searches, scrolls, counts...): one per core,
/// each read to its end, the rest queued in order. Blocking-pool threads would run every read
/// at once and leave it to the kernel to time-slice them: a read descheduled for a slice waits
/// milliseconds, which is most of the tail latency under concurrent searches (Qdrant likewise
/// searches on a runtime of its own sized to the cores).
static READ_POOL: std::sync::LazyLock<rayon::ThreadPool> = std::sync::LazyLock::new(|| {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("shoal-read-{i}"))
        .build()
        .expect("the read pool's threads start")
});

/// Runs `read` on [`READ_POOL`] and waits for it without blocking the async runtime. A panic
/// in `read` becomes an error of this request only.
async fn on_read_pool<T: Send + 'static>(
    read: impl FnOnce() -> Result<T, CollectionError> + Send + 'static,
) -> Result<T, CollectionError> {
    let (done, answer) = tokio::sync::oneshot::channel();
    READ_POOL.spawn(move || {
        // Abandoned while queued (a client timeout, a hedged read that lost): not run at all.
        if done.is_closed() {
            return;
        }
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(read));
        // The request may have been dropped meanwhile; nobody waits for the answer then.
        let _ = done.send(outcome);
    });
    match answer.await {
        Ok(Ok(answer)) => answer,
        Ok(Err(_)) => Err(CollectionError::Storage("a read panicked".into())),
        Err(_) => Err(CollectionError::Storage(
            "the read pool dropped a read".into(),
        )),
    }
}

/// Applies an update on a local replica and forwards it to the destinations of `outgoing`
/// (the transfers sending the replica), in the same place of each transfer's stream. Runs to
/// the end once started: see `Collection::update_local`. An update the replica does not apply
/// (its tick was applied before, or is behind: see `shard::clock`) is not forwarded either.
async fn apply_and_forward(
    name: &str,
    shard: u32,
    local: &Arc<LocalShard>,
    request: Arc<UpdateRequest>,
    stamp: Stamp,
    outgoing: &[Arc<Outgoing>],
) -> Result<UpdateOutcome, CollectionError> {
    // Every transfer sees this update in the same place of its stream.
    let mut orders = Vec::with_capacity(outgoing.len());
    for out in outgoing {
        orders.push(out.order.lock().await);
    }
    // A resharding passes on the operation as applied here (see `pass_on`).
    let resolve = outgoing.iter().any(|o| o.scope.is_some());
    let applied = {
        let request = Arc::clone(&request);
        let local = Arc::clone(local);
        tokio::task::spawn_blocking(move || {
            if resolve {
                local.update_resolved((*request).clone(), stamp)
            } else {
                local
                    .update_stamped((*request).clone(), stamp)
                    .map(|outcome| (outcome, None))
            }
        })
        .await
        .map_err(|e| CollectionError::Storage(format!("shard task failed: {e}")))?
    };
    let (applied, operation) = applied?;
    if !matches!(applied, UpdateOutcome::Applied(_)) {
        return Ok(applied);
    }
    // The tag the replica applied the update with travels with its copies, so that the
    // destination's clocks say what it holds. A write without one is tagged by each replica's
    // own local clock; so are the copies a resharding passes to another shard.
    let tag = match stamp {
        Stamp::Coordinator(tag) | Stamp::Forced(tag) => Some(tag),
        Stamp::Local => None,
    };
    for out in outgoing {
        // The destination may not hold every point yet: it skips what it lacks.
        let forwarded: Vec<UpdateRequest> = match &out.scope {
            None => vec![request.lenient()],
            Some(scope) => operation
                .as_ref()
                .map(|op| pass_on(op, scope))
                .unwrap_or_default(),
        };
        if forwarded.is_empty() {
            continue;
        }
        // The copies a resharding passes on to another shard are tagged there by that shard's
        // own clock.
        let tag = if out.scope.is_some() { None } else { tag };
        if let Some(queue) = out.queue.lock().as_mut() {
            queue.extend(forwarded.into_iter().map(|f| (tag, Arc::new(f))));
            continue;
        }
        use std::sync::atomic::Ordering::SeqCst;
        // The destination's peer said the stream has ended: nothing more to pass on.
        if out.ended.load(SeqCst) {
            continue;
        }
        // Once a forward failed, the destination is behind: later updates are not sent.
        let broken_before = out.broken.load(SeqCst);
        let failure = if broken_before {
            Some("an earlier update could not be passed on".to_string())
        } else {
            let mut failed = None;
            for part in &forwarded {
                let sent = match out.fence {
                    Some(fence) => forward_copy(&out.destination, fence, tag, part).await,
                    None => forward(&out.destination, tag, part).await,
                };
                // A resharding that ended needs nothing more from this stream: an abort
                // has its destinations drop what moved in, and past the write ring (a finish,
                // or a destination replica lost) coordinators write to the new ring directly
                // and this source takes none of its points. Not a failure of this update.
                if let Err(CollectionError::StaleTransfer(reason)) = &sent {
                    tracing::info!(collection = %name, shard, to = %out.to, reason, "the destination's peer says this stream has ended; it passes nothing on any more");
                    out.ended.store(true, SeqCst);
                    break;
                }
                if let Err(e) = sent {
                    tracing::warn!(collection = %name, shard, to = %out.to, error = %e, "could not forward an update to a transfer's destination; the transfer will abort");
                    out.broken.store(true, SeqCst);
                    failed = Some(e.to_string());
                    break;
                }
            }
            failed
        };
        // A transfer past its last check may finish, and a resharding stream reported done
        // gives reads to its destination: the update is not acknowledged, the destination may
        // not have it. Nor is a resharding's update whose forward fails (its source replica
        // is marked Dead, which aborts a resharding that can still go back).
        let refuse = match &failure {
            Some(_) if out.finishing.load(SeqCst) => true,
            Some(_) => out.scope.is_some() && !broken_before,
            None => false,
        };
        if let Some(e) = failure
            && refuse
        {
            return Err(CollectionError::ForwardFailed(format!(
                "shard {shard} of `{}` could not pass an update on to shard {} on peer {}: {e}",
                name,
                out.destination.shard_id(),
                out.to
            )));
        }
    }
    drop(orders);
    Ok(applied)
}

/// Sends a transfer's destination a copy of an update its source applied: with the tag the
/// source applied it with ([`ForwardedUpdate`], applied whatever its tick), or untagged.
pub async fn forward(
    destination: &RemoteShard,
    tag: Option<ClockTag>,
    update: &UpdateRequest,
) -> Result<u64, CollectionError> {
    match tag {
        Some(clock) => {
            destination
                .request(&ForwardedUpdate {
                    clock,
                    update: update.clone(),
                })
                .await
        }
        None => destination.request(update).await,
    }
}

/// A hold of a shard's forwarding gate, shared or exclusive, that a blocking task owns.
enum GateHold {
    Shared(#[allow(dead_code)] tokio::sync::OwnedRwLockReadGuard<()>),
    Exclusive(#[allow(dead_code)] tokio::sync::OwnedRwLockWriteGuard<()>),
}

/// Sends a transfer's destination a copy fenced by the transfer (see [`StreamFence`]): a
/// stream batch, a catch-up, or what a resharding passes on.
pub async fn forward_copy(
    destination: &RemoteShard,
    fence: StreamFence,
    tag: Option<ClockTag>,
    update: &UpdateRequest,
) -> Result<u64, CollectionError> {
    destination
        .request(&StreamedUpdate {
            fence,
            clock: tag,
            update: update.clone(),
        })
        .await
}

/// How long a peer waits to apply the cluster state a transfer's sender saw (see
/// [`StreamFence`]) before it judges a copy. Liveness only: a copy that waited in vain is
/// refused as unavailable, and the transfer retries or fails; nothing is applied unchecked.
const FENCE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);

/// How many 50 ms steps a write that found its replicas gone waits for a newer layout. Liveness
/// only: a write routed by an old layout is refused by the replicas (the layout-version fence),
/// so the wait decides only how soon the coordinator gives up with an error (not acknowledged)
/// when its own layout has not caught up.
const LAYOUT_PATIENCE_STEPS: usize = 40;

/// How many times a coordinator sends an update to a replica whose clock is ahead of its own
/// (see `shard::clock`): once is enough unless other clocks of this peer move that replica's
/// on meanwhile, which cannot go on: each attempt moves this clock past the replica's.
const CLOCK_ATTEMPTS: usize = 3;

/// A test hook: `SHOAL_TEST_HOLD_UPDATE="<point id>=<ms>"` holds the first update naming that
/// (numeric) point id on its coordinator for `ms`, after the update was routed by a layout and
/// before it reaches any replica: a coordinator stalled for longer than any timeout (a GC pause,
/// a long network stall), for tests that finish a transfer meanwhile. Read once; unset, an
/// update costs one lookup.
async fn hold_routed_update(
    collection: &str,
    shard: u32,
    layout_version: u64,
    request: &UpdateRequest,
) {
    static HOLD: std::sync::OnceLock<Option<(PointId, u64)>> = std::sync::OnceLock::new();
    static HELD: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let hold = HOLD.get_or_init(|| {
        let value = std::env::var("SHOAL_TEST_HOLD_UPDATE").ok()?;
        let (id, ms) = value.split_once('=')?;
        Some((
            PointId::Num(id.trim().parse().ok()?),
            ms.trim().parse().ok()?,
        ))
    });
    let Some((id, ms)) = hold else {
        return;
    };
    if !named_ids(request).contains(id) || HELD.swap(true, std::sync::atomic::Ordering::SeqCst) {
        return;
    }
    tracing::info!(collection, shard, layout_version, point = %id, ms, "test hook: holding a routed update");
    // Test only: see above.
    tokio::time::sleep(std::time::Duration::from_millis(*ms)).await;
    tracing::info!(collection, shard, point = %id, "test hook: the held update goes on");
}

/// A test hook: `SHOAL_TEST_DELAY_UPDATES_TO="<p2p uri>=<ms>"` delays every update this peer
/// coordinates to the replica at that URI by `ms` before sending it: one replica hears of
/// updates late, as over a slow link, so that updates from two coordinators can reach the
/// replicas in different orders (what `ordering=strong` prevents).
async fn delay_update_to(uri: &str) {
    static DELAY: std::sync::OnceLock<Option<(String, u64)>> = std::sync::OnceLock::new();
    let delay = DELAY.get_or_init(|| {
        let spec = std::env::var("SHOAL_TEST_DELAY_UPDATES_TO").ok()?;
        let (uri, ms) = spec.rsplit_once('=')?;
        Some((uri.to_string(), ms.parse().ok()?))
    });
    if let Some((slow, ms)) = delay
        && slow == uri
    {
        // Test only: see above.
        tokio::time::sleep(std::time::Duration::from_millis(*ms)).await;
    }
}

/// Errors that say the request itself is wrong: every replica would answer the same, so they
/// are returned as they are instead of trying another replica or failing the replica.
fn is_request_error(e: &CollectionError) -> bool {
    matches!(
        e,
        CollectionError::BadInput(_)
            | CollectionError::PointNotFound(_)
            | CollectionError::Moved(_)
            | CollectionError::Shard(
                ShardError::WrongDimension { .. }
                    | ShardError::BadInput(_)
                    | ShardError::PointNotFound(_)
                    // The replica is being replaced by a restore: it did not fail, and must
                    // not be marked Dead for it (the request may be retried).
                    | ShardError::Retired
            )
    )
}

/// An update a snapshot transfer holds back for its destination, with the tag its source
/// applied it with.
pub type QueuedUpdate = (Option<ClockTag>, Arc<UpdateRequest>);

/// A transfer sending this peer's replica of a shard: while it runs, every update applied to
/// the replica is also applied to the destination, in the same order, and never interleaved
/// with a batch of the stream (both hold `order`).
pub struct Outgoing {
    pub to: PeerId,
    pub destination: RemoteShard,
    /// The replica the transfer sends. Only updates of that very replica are forwarded: a
    /// replica of the same shard id opened later (the shard was dropped and created again, as
    /// a resharding down and then up does) is not the transfer's source, even while a forward
    /// of the old one still holds the registration; its updates mark the transfer broken
    /// instead. Forwarding them would pass a new shard's writes on to an old stream's
    /// destination, and could close a cycle of forwards that waits on itself.
    pub source: std::sync::Weak<LocalShard>,
    /// A resharding stream forwards only the part of each update that it carries (points its
    /// destination shard owns under the new ring, of those its source owns under the old),
    /// as the operation the source applied (see [`pass_on`]); `None` forwards everything,
    /// as it came.
    pub scope: Option<StreamScope>,
    /// Set for a resharding stream: what it passes on is fenced by the stream (see
    /// [`StreamFence`]), so that a stream its destination's peer no longer runs changes
    /// nothing there. A transfer's forwards are not fenced: they go on after it finished,
    /// until every peer routes to the new replica (see `transfer`); its own steps are.
    pub fence: Option<StreamFence>,
    pub order: tokio::sync::Mutex<()>,
    /// Set when an update could not be forwarded: the destination missed it, so the transfer
    /// must not finish.
    pub broken: std::sync::atomic::AtomicBool,
    /// Set when the destination's peer refused a fenced copy because its cluster state no
    /// longer runs the stream ([`CollectionError::StaleTransfer`]): nothing more is passed on,
    /// updates are not refused for it, and the stream's task ends as cancelled.
    pub ended: std::sync::atomic::AtomicBool,
    /// Set by the transfer before its last look at `broken`, after which it may finish: from
    /// then on an update that cannot be forwarded is not acknowledged (`ForwardFailed`), as
    /// a resharding's always is. Together with `broken` (both sequentially consistent) every
    /// failed forward is seen by one side: the transfer does not finish, or the update fails.
    /// Cleared once this peer reconciled the transfer's end
    /// ([`Collection::forwarding_settled`]).
    pub finishing: std::sync::atomic::AtomicBool,
    /// While `Some`, updates are queued here instead of forwarded (the destination is being
    /// restored from a snapshot); the transfer replays them in order afterwards.
    pub queue: parking_lot::Mutex<Option<Vec<QueuedUpdate>>>,
}

pub struct Collection {
    name: String,
    dir: PathBuf,
    /// Replaced when the cluster changes the configuration (named vectors added or removed).
    config: RwLock<Arc<CollectionConfig>>,
    /// Set by whoever created the collection; tells a re-created collection of the same name
    /// from the one whose files are on disk.
    uuid: u64,
    env: Arc<Environment>,
    layout: RwLock<Arc<Layout>>,
    /// This peer's replicas, by shard id.
    local: RwLock<BTreeMap<u32, Arc<LocalShard>>>,
    /// Declared payload indexes. Filters never depend on them: they are evaluated by scanning
    /// payloads, so results are the same with or without an index.
    payload_schema: RwLock<BTreeMap<String, PayloadIndexEntry>>,
    /// Transfers sending a local replica, by shard id (a drained shard sends to several).
    outgoing: parking_lot::Mutex<HashMap<u32, Vec<Arc<Outgoing>>>>,
    /// Local updates hold it shared from looking up a transfer until applied; registering a
    /// transfer takes it exclusively, so no update can slip between the registration and the
    /// first batch unforwarded.
    /// One per shard: a resharding forwards from one local replica to another, so one gate
    /// for the whole collection would make a forwarded update wait behind a registration
    /// that waits for the update that forwards it.
    forwarding_gates: parking_lot::Mutex<HashMap<u32, Arc<tokio::sync::RwLock<()>>>>,
    /// This peer's clocks per shard, as the coordinator of updates (see `shard::clock`).
    clock_sets: parking_lot::Mutex<HashMap<u32, Arc<ClockSet>>>,
    /// Per shard, held by the ordered update this peer coordinates as the shard's leader
    /// (see [`WriteOrdering`]).
    ordering_locks: parking_lot::Mutex<HashMap<u32, Arc<tokio::sync::Mutex<()>>>>,
    /// Local replicas that the cluster placed elsewhere (a finished move) but that are kept
    /// while their transfer still forwards: they take no update of their own any more, so a
    /// peer still routing by the old layout gets an error instead of an acknowledgement that
    /// would be lost with the replica.
    retired: parking_lot::Mutex<BTreeSet<u32>>,
    /// Retired replicas whose shard was placed on this peer again while they still forward
    /// (see `sync`): hidden from every lookup ([`Collection::local_shard`]), so that no copy
    /// meant for the new replica lands in the old one, which is dropped once nothing forwards
    /// from it.
    returning: parking_lot::Mutex<BTreeSet<u32>>,
    /// The running resharding, as of the last reconciled state.
    resharding: RwLock<Option<ReshardingState>>,
    /// Local replicas that may hold points another shard owns (points a resharding moved in
    /// and then gave back), with a counter bumped on every such arrival. Their reads are
    /// filtered by ownership until a cleanup deletes the strays; see [`foreign`].
    foreign: parking_lot::Mutex<HashMap<u32, u64>>,
    /// Local replicas already cleaned for the current write ring of a resharding.
    cleaned: parking_lot::Mutex<BTreeSet<u32>>,
    /// One replica restore at a time (see [`Collection::restore_local_shard`]): a second
    /// restore must not replace a replica the first just put in place without retiring it.
    restoring: parking_lot::Mutex<()>,
    /// Local replicas that did not open when the collection was loaded, by shard id: never
    /// served, and kept out of [`Collection::local`] (see [`FailedReplica`]).
    failed: parking_lot::Mutex<BTreeMap<u32, FailedReplica>>,
}

/// A local replica that did not open when its collection was loaded: a segment file that fails
/// its checksum, a point store or WAL that does not read. The node does not stop for it (its
/// other replicas and collections stay served) and does not serve it either:
///
/// - requests routed to it get [`CollectionError::Unavailable`] naming the reason, so reads go
///   to another replica;
/// - this peer proposes `Dead` for it (`TableOfContent::mark_failed_replicas_dead`, a
///   compare-and-set on the state it was seen in), and [`Collection::sync`] puts no replica in
///   its place until the cluster state says `Dead`. Then its files move to
///   `<collection>/quarantine/shard-<id>-<uuid>` (kept for a person to look at; nothing removes
///   them but deleting the collection) and an empty replica takes the place, to be recovered
///   from an active replica like any `Dead` one (no recovery starts before that).
/// - Until then the files stay at `shards/<id>`, so that a restart finds the failure again
///   (and an error that went away, such as too many open files, is gone with it).
/// - The last active replica of a shard cannot be marked `Dead`: it stays failed (the shard
///   unavailable, never answered from an empty replica) until a shard snapshot is recovered
///   into it ([`Collection::restore_local_shard`], after which the failed files move to
///   quarantine) or the replica is dropped from this peer (its files then move there too).
///
/// Qdrant's counterpart is `handle_collection_load_errors`, which loads a dummy shard and marks
/// the replica dead; here it is always on.
#[derive(Clone, Debug)]
pub struct FailedReplica {
    /// Why it did not open (the shard's error).
    pub reason: String,
    /// Where its files were moved; `None` while they are still at `shards/<id>`.
    pub kept_at: Option<PathBuf>,
    /// The shard's cluster state when the proposal to mark it `Dead` was last refused (or
    /// judged hopeless here): not proposed again until that state changes, since every
    /// refused proposal is a Raft entry that wakes every peer's reconciler.
    pub refused_for: Option<String>,
}

/// Where replicas that did not open are kept, inside a collection's directory.
const QUARANTINE_DIR: &str = "quarantine";

/// Moves the replica directory `path` of shard `id` into the collection's quarantine directory
/// (see [`FailedReplica`]) and returns its new path. Durable: both directories are synced.
fn quarantine(collection_dir: &Path, id: u32, path: &Path) -> std::io::Result<PathBuf> {
    let dir = collection_dir.join(QUARANTINE_DIR);
    std::fs::create_dir_all(&dir)?;
    let to = dir.join(format!("shard-{id}-{}", uuid::Uuid::new_v4()));
    std::fs::rename(path, &to)?;
    if let Some(parent) = path.parent() {
        crate::storage::mapped::sync_dir(parent)?;
    }
    crate::storage::mapped::sync_dir(&dir)?;
    Ok(to)
}

/// The marker file of a replica that may hold points another shard owns.
const FOREIGN_FILE: &str = "foreign-points";

/// Marks a restored replica's directory as complete (see [`Collection::restore_local_shard`]).
const RESTORE_MARKER: &str = "restore-complete";

/// Finishes replica restores cut off between their two renames: a complete
/// `.restore-<id>-<uuid>` directory becomes `<id>` when there is no `<id>`. Incomplete ones,
/// and complete ones whose swap finished, are removed with the other non-numeric entries.
fn roll_forward_restores(shards_dir: &Path) -> Result<(), CollectionError> {
    for entry in std::fs::read_dir(shards_dir).map_err(CollectionError::storage)? {
        let entry = entry.map_err(CollectionError::storage)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(id) = name
            .strip_prefix(".restore-")
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(id, _)| id.parse::<u32>().ok())
        else {
            continue;
        };
        let target = shards_dir.join(id.to_string());
        if entry.path().join(RESTORE_MARKER).exists() && !target.exists() {
            std::fs::rename(entry.path(), &target).map_err(CollectionError::storage)?;
            std::fs::remove_file(target.join(RESTORE_MARKER)).map_err(CollectionError::storage)?;
            crate::storage::mapped::sync_dir(shards_dir).map_err(CollectionError::storage)?;
            tracing::info!(path = %target.display(), "finished a replica restore cut off by a restart");
        }
    }
    Ok(())
}

/// Test hook: shards directories in which a replica creation stops right after its staging
/// directory is made, cleaning nothing up, as a process killed there would.
#[cfg(test)]
static STOP_AFTER_STAGING: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

/// Replica directories whose rename in [`Collection::drop_local`] fails, as a full disk or a
/// permission error would make it fail.
#[cfg(test)]
pub(crate) static FAIL_DROP_RENAME: std::sync::Mutex<Vec<PathBuf>> =
    std::sync::Mutex::new(Vec::new());

/// The names in directory `path`, sorted; for tests.
#[cfg(test)]
pub(crate) fn dir_names(path: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(path)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Opens the local replica of shard `id` under `shards_dir`, creating it whole if it does not
/// exist: its point store and WAL are made in a staging directory that is renamed into place,
/// so a process killed half-way leaves no replica directory that cannot open (the staging
/// directory is not a shard id, and [`Collection::open`] removes it).
fn create_replica(
    shards_dir: &Path,
    id: u32,
    config: Arc<CollectionConfig>,
    sync: SyncMode,
) -> Result<LocalShard, CollectionError> {
    let path = shards_dir.join(id.to_string());
    if !path.exists() {
        let staging = shards_dir.join(format!(".new-{id}-{}", uuid::Uuid::new_v4()));
        let made = LocalShard::open(&staging, Arc::clone(&config), sync)
            .map(drop)
            .map_err(CollectionError::from);
        #[cfg(test)]
        if STOP_AFTER_STAGING
            .lock()
            .unwrap()
            .contains(&shards_dir.to_path_buf())
        {
            return Err(CollectionError::storage("test hook: stopped after staging"));
        }
        let made = made.and_then(|()| {
            crate::shard::snapshot::sync_tree(&staging)
                .and_then(|()| std::fs::rename(&staging, &path))
                .and_then(|()| crate::storage::mapped::sync_dir(shards_dir))
                .map_err(CollectionError::storage)
        });
        if let Err(e) = made {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
    }
    Ok(LocalShard::open(&path, config, sync)?)
}

impl Collection {
    /// Opens the collection under `dir` with the local replicas found there. The layout stays
    /// empty until the first [`Collection::sync`].
    pub fn open(
        name: &str,
        dir: &Path,
        config: CollectionConfig,
        uuid: u64,
        env: Arc<Environment>,
    ) -> Result<Collection, CollectionError> {
        let config = Arc::new(config);
        let shards_dir = dir.join("shards");
        std::fs::create_dir_all(&shards_dir).map_err(CollectionError::storage)?;
        let mut local = BTreeMap::new();
        let mut foreign = HashMap::new();
        let mut failed = BTreeMap::new();
        roll_forward_restores(&shards_dir)?;
        for entry in std::fs::read_dir(&shards_dir).map_err(CollectionError::storage)? {
            let entry = entry.map_err(CollectionError::storage)?;
            let file_name = entry.file_name().to_string_lossy().into_owned();
            let Ok(id) = file_name.parse::<u32>() else {
                // A replica dropped half-way, renamed away first.
                let _ = std::fs::remove_dir_all(entry.path());
                continue;
            };
            if entry.path().join(FOREIGN_FILE).exists() {
                foreign.insert(id, 1);
            }
            let shard = match LocalShard::open(&entry.path(), Arc::clone(&config), env.sync) {
                Ok(shard) => Arc::new(shard),
                Err(e) => {
                    // Its files stay where they are until the cluster state lets an empty
                    // replica take the place (then they move to quarantine): every start finds
                    // the failure again, and an error that goes away (too many open files)
                    // goes away with a restart.
                    let reason = e.to_string();
                    tracing::error!(collection = name, shard = id, %reason, "a local replica does not open: it is not served, and it is rebuilt from another replica once the cluster marks it Dead");
                    foreign.remove(&id);
                    failed.insert(
                        id,
                        FailedReplica {
                            reason,
                            kept_at: None,
                            refused_for: None,
                        },
                    );
                    continue;
                }
            };
            maintenance::spawn(Arc::clone(&shard), Arc::clone(&env.builder));
            local.insert(id, shard);
        }
        Ok(Collection {
            name: name.to_string(),
            dir: dir.to_path_buf(),
            config: RwLock::new(config),
            uuid,
            env,
            layout: RwLock::new(Arc::new(Layout::new())),
            local: RwLock::new(local),
            payload_schema: RwLock::new(BTreeMap::new()),
            outgoing: parking_lot::Mutex::new(HashMap::new()),
            forwarding_gates: parking_lot::Mutex::new(HashMap::new()),
            clock_sets: parking_lot::Mutex::new(HashMap::new()),
            ordering_locks: parking_lot::Mutex::new(HashMap::new()),
            retired: parking_lot::Mutex::new(BTreeSet::new()),
            returning: parking_lot::Mutex::new(BTreeSet::new()),
            resharding: RwLock::new(None),
            foreign: parking_lot::Mutex::new(foreign),
            cleaned: parking_lot::Mutex::new(BTreeSet::new()),
            restoring: parking_lot::Mutex::new(()),
            failed: parking_lot::Mutex::new(failed),
        })
    }

    pub fn uuid(&self) -> u64 {
        self.uuid
    }

    /// Brings this peer's view of the collection in line with the cluster state: the layout,
    /// the payload indexes, and a local replica for exactly the shards placed on this peer.
    /// Blocking (creates and removes shard directories).
    pub fn sync(
        &self,
        meta: &CollectionMeta,
        peers: &BTreeMap<PeerId, PeerInfo>,
    ) -> Result<(), CollectionError> {
        let this_peer = self.env.this_peer();
        if **self.config.read() != meta.config {
            // Named vectors were added or removed: every local replica adopts the new
            // configuration before anything is routed by it. The configuration file comes
            // first: a restart opens the shards with it, and segments on disk must not be
            // read by an older one (which lacks vectors added since, or has parameters that
            // would make every segment look outdated).
            write_config(&self.dir, &meta.config)?;
            let config = Arc::new(meta.config.clone());
            for shard in self.local.read().values() {
                shard.set_config(Arc::clone(&config));
            }
            *self.config.write() = config;
        }
        let read_rings: HashMap<Option<&ShardKey>, Vec<ShardId>> = meta
            .shards
            .values()
            .map(|s| (s.shard_key.as_ref(), meta.ring(s.shard_key.as_ref(), false)))
            .collect();
        let write_rings: HashMap<Option<&ShardKey>, Vec<ShardId>> = meta
            .shards
            .values()
            .map(|s| (s.shard_key.as_ref(), meta.ring(s.shard_key.as_ref(), true)))
            .collect();
        let layout: Layout = meta
            .shards
            .iter()
            .map(|(id, shard)| {
                let key = shard.shard_key.as_ref();
                let replicas = shard
                    .replicas
                    .iter()
                    .map(|(peer, state)| ReplicaInfo {
                        peer: *peer,
                        state: *state,
                        uri: peers.get(peer).map(|p| p.uri.clone()).unwrap_or_default(),
                    })
                    .collect();
                (
                    id.0,
                    ShardLayout {
                        key: shard.shard_key.clone(),
                        replicas,
                        read: read_rings.get(&key).is_some_and(|r| r.contains(id)),
                        write: write_rings.get(&key).is_some_and(|r| r.contains(id)),
                        version: shard.version,
                    },
                )
            })
            .collect();
        let mine: BTreeSet<u32> = meta
            .shards
            .iter()
            .filter(|(_, s)| s.replicas.contains_key(&this_peer))
            .map(|(id, _)| id.0)
            .collect();
        // A replica retired here (it left this peer while a transfer still forwarded from
        // it) and now placed here again is not the new replica: it holds what the shard held
        // when it left, points deleted since included. It is dropped first, once nothing
        // forwards from it; until then it stays retired (refusing updates) and the new
        // replica waits for a later pass.
        let forwarding: BTreeSet<u32> = self.outgoing.lock().keys().copied().collect();
        let returned: Vec<u32> = self
            .retired
            .lock()
            .iter()
            .filter(|id| mine.contains(id))
            .copied()
            .collect();
        let mut waiting = BTreeSet::new();
        for id in returned {
            if forwarding.contains(&id) {
                tracing::info!(collection = %self.name, shard = id, "the shard is placed here again while its old replica still forwards; the new replica waits");
                waiting.insert(id);
            } else {
                self.retired.lock().remove(&id);
                self.drop_local(id)?;
            }
        }
        *self.returning.lock() = waiting.clone();
        // New replicas exist before the layout routes anything to them ...
        for id in &mine {
            if !self.local.read().contains_key(id) {
                // A replica that did not open is replaced under the restore lock, and only if
                // no restore put one in place meanwhile; while a restore runs (it may take
                // minutes, and this pass holds up every collection's) it waits for a later pass.
                let _restore = if self.replica_failed(*id) {
                    match self.restoring.try_lock() {
                        Some(held) => Some(held),
                        None => continue,
                    }
                } else {
                    None
                };
                if self.local.read().contains_key(id) || !self.replace_failed(*id, meta, this_peer)
                {
                    continue;
                }
                let shard = Arc::new(create_replica(
                    &self.dir.join("shards"),
                    *id,
                    self.config(),
                    self.env.sync,
                )?);
                maintenance::spawn(Arc::clone(&shard), Arc::clone(&self.env.builder));
                self.local.write().insert(*id, shard);
                tracing::info!(collection = %self.name, shard = id, "local replica created");
            }
        }
        // A failed replica no longer placed here is forgotten once its files are in
        // quarantine (left at `shards/<id>`, they would be taken for a replica placed here
        // again).
        let unplaced = self.failed.lock().keys().any(|id| !mine.contains(id));
        if unplaced && let Some(_restore) = self.restoring.try_lock() {
            let mut failed = self.failed.lock();
            let gone: Vec<u32> = failed
                .keys()
                .filter(|id| !mine.contains(id))
                .copied()
                .collect();
            for id in gone {
                let failure = failed.get_mut(&id).expect("listed above");
                if self.move_failed_aside(id, failure) {
                    failed.remove(&id);
                }
            }
        }
        *self.layout.write() = Arc::new(layout);
        *self.resharding.write() = meta.resharding.clone();
        *self.payload_schema.write() = meta.payload_schema.clone();
        // Every local replica indexes the declared payload fields (new replicas included).
        let replicas: Vec<Arc<LocalShard>> = self.local.read().values().cloned().collect();
        for shard in replicas {
            shard.set_payload_schema(&meta.payload_schema);
        }
        self.clean_strays(meta)?;
        // ... and replicas that left are dropped after it stopped routing to them. A moved
        // replica whose transfer still forwards (until every peer routes to the new one) stays
        // until a later pass.
        let forwarding: BTreeSet<u32> = self.outgoing.lock().keys().copied().collect();
        self.forwarding_gates
            .lock()
            .retain(|id, _| mine.contains(id) || forwarding.contains(id));
        let held: Vec<u32> = self.local.read().keys().copied().collect();
        {
            let mut retired = self.retired.lock();
            retired.retain(|id| !mine.contains(id) || waiting.contains(id));
            retired.extend(
                held.iter()
                    .filter(|id| !mine.contains(id) && forwarding.contains(id)),
            );
        }
        let gone: Vec<u32> = held
            .into_iter()
            .filter(|id| !mine.contains(id) && !forwarding.contains(id))
            .collect();
        for id in gone {
            self.drop_local(id)?;
        }
        Ok(())
    }

    /// Removes this peer's replica of shard `id` and its files (nothing when it has none).
    ///
    /// The directory is renamed away (to a name [`Collection::open`] removes) before the
    /// replica leaves the map: when the rename fails, the error is returned and the replica
    /// stays as it was, served and listed, so that the next reconcile tries again; it never
    /// stays on disk under its shard id after it left the map (where a later placement or a
    /// restart would take its old data for a replica).
    pub(in crate::cluster) fn drop_local(&self, id: u32) -> Result<(), CollectionError> {
        let mut local = self.local.write();
        if !local.contains_key(&id) {
            return Ok(());
        }
        let path = self.dir.join("shards").join(id.to_string());
        let doomed = self
            .dir
            .join("shards")
            .join(format!(".dropped-{id}-{}", uuid::Uuid::new_v4()));
        #[cfg(test)]
        if FAIL_DROP_RENAME.lock().unwrap().contains(&path) {
            return Err(CollectionError::storage("test hook: the rename failed"));
        }
        std::fs::rename(&path, &doomed).map_err(CollectionError::storage)?;
        let shard = local
            .remove(&id)
            .expect("checked above, under the same lock");
        drop(local);
        shard.cancel();
        if let Err(e) = std::fs::remove_dir_all(&doomed) {
            tracing::warn!(error = %e, path = %doomed.display(), "could not remove a dropped replica; it is removed on the next start");
        }
        tracing::info!(collection = %self.name, shard = id, "local replica dropped");
        Ok(())
    }

    pub fn payload_schema(&self) -> BTreeMap<String, PayloadIndexEntry> {
        self.payload_schema.read().clone()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The configuration as of the last reconciled cluster state.
    pub fn config(&self) -> Arc<CollectionConfig> {
        Arc::clone(&self.config.read())
    }

    /// The shards and their replicas as of the last reconciled cluster state.
    pub fn layout(&self) -> Arc<Layout> {
        Arc::clone(&self.layout.read())
    }

    /// Whether a replica that failed to open may be replaced now (see [`FailedReplica`]):
    /// true when shard `id` has no failed replica here, or when the cluster state `meta` marks
    /// it `Dead` and its files were moved to quarantine. Logs the replacement. The caller
    /// holds `restoring`, so that no restore puts a replica in place meanwhile.
    fn replace_failed(&self, id: u32, meta: &CollectionMeta, this_peer: PeerId) -> bool {
        let mut failed = self.failed.lock();
        let Some(failure) = failed.get_mut(&id) else {
            return true;
        };
        let state = meta
            .shards
            .get(&ShardId(id))
            .and_then(|s| s.replicas.get(&this_peer));
        if state != Some(&ReplicaState::Dead) {
            return false;
        }
        if !self.move_failed_aside(id, failure) {
            return false;
        }
        let failure = failed
            .remove(&id)
            .expect("looked up above, under the same lock");
        tracing::info!(collection = %self.name, shard = id, kept_at = ?failure.kept_at, "the replica that did not open is Dead in the cluster state: an empty one takes its place, to be recovered");
        true
    }

    /// Moves a failed replica's files from `shards/<id>` to quarantine, if they are still
    /// there; returns whether they are out of the way (a failure is logged).
    fn move_failed_aside(&self, id: u32, failure: &mut FailedReplica) -> bool {
        let path = self.dir.join("shards").join(id.to_string());
        if failure.kept_at.is_some() || !path.exists() {
            return true;
        }
        match quarantine(&self.dir, id, &path) {
            Ok(kept_at) => {
                tracing::info!(collection = %self.name, shard = id, kept_at = %kept_at.display(), "the files of a replica that did not open are kept in quarantine");
                failure.kept_at = Some(kept_at);
                true
            }
            Err(e) => {
                tracing::warn!(collection = %self.name, shard = id, error = %e, "the files of a replica that did not open cannot be moved aside; nothing takes their place yet");
                false
            }
        }
    }

    /// Records that marking the failed replica of shard `id` `Dead` was refused (or is
    /// hopeless) with the shard's cluster state `fingerprint`; returns whether that is news
    /// (worth logging).
    pub fn note_failed_refusal(&self, id: u32, fingerprint: String) -> bool {
        match self.failed.lock().get_mut(&id) {
            Some(failure) if failure.refused_for.as_ref() != Some(&fingerprint) => {
                failure.refused_for = Some(fingerprint);
                true
            }
            _ => false,
        }
    }

    /// Whether this peer holds a replica of shard `id`: one it serves, or one that did not
    /// open (which a shard snapshot may be recovered into).
    pub fn holds_replica(&self, id: u32) -> bool {
        self.local_shard(id).is_some() || self.replica_failed(id)
    }

    /// Whether this peer's replica of shard `id` did not open and is not replaced yet.
    pub fn replica_failed(&self, id: u32) -> bool {
        self.failed.lock().contains_key(&id)
    }

    /// This peer's replicas that did not open when the collection was loaded and have not
    /// been replaced yet, by shard id (see [`FailedReplica`]).
    pub fn failed_replicas(&self) -> BTreeMap<u32, FailedReplica> {
        self.failed.lock().clone()
    }

    /// This peer's replica of shard `id` for a request, or [`CollectionError::Unavailable`]
    /// saying why there is none (not created yet, or failed to open: see [`FailedReplica`]).
    pub fn local_for_request(&self, shard: u32) -> Result<Arc<LocalShard>, CollectionError> {
        self.local_shard(shard).ok_or_else(|| {
            CollectionError::Unavailable(match self.failed.lock().get(&shard) {
                Some(failure) => format!(
                    "the replica of shard {shard} of `{}` on this peer did not open ({}); it is not served until it is recovered from another replica or from a shard snapshot",
                    self.name, failure.reason
                ),
                None => format!(
                    "shard {shard} of `{}` has no replica on this peer yet",
                    self.name
                ),
            })
        })
    }

    /// This peer's replica of shard `id`, if it has one.
    pub fn local_shard(&self, id: u32) -> Option<Arc<LocalShard>> {
        if self.returning.lock().contains(&id) {
            return None;
        }
        self.local.read().get(&id).cloned()
    }

    /// This peer's replicas, by shard id.
    pub fn local_shards(&self) -> Vec<(u32, Arc<LocalShard>)> {
        let returning = self.returning.lock().clone();
        self.local
            .read()
            .iter()
            .filter(|(id, _)| !returning.contains(id))
            .map(|(id, s)| (*id, Arc::clone(s)))
            .collect()
    }

    fn is_custom_sharded(&self) -> bool {
        self.config().params.sharding_method == Some(ShardingMethod::Custom)
    }

    /// Checks an incoming vector against the collection's vector `name` (kind, size, finite
    /// values, Qdrant's limits) and brings it into its stored form (see [`prepare_vector`]:
    /// dense values in the vector's `datatype`, Cosine vectors and sub-vectors normalised,
    /// sparse vectors sorted by index).
    pub fn prepare_vector(
        &self,
        name: &str,
        vector: VectorData,
    ) -> Result<VectorData, CollectionError> {
        prepare_vector(&self.config(), name, vector)
    }

    /// Checks `request`'s vectors and payloads and brings them into stored form, as
    /// [`Self::update`] does before applying it; [`Self::update_prepared`] applies the result.
    /// A batch prepares every operation first, so that a refused one changes nothing.
    pub fn prepare_update(
        &self,
        request: UpdateRequest,
    ) -> Result<PreparedUpdate, CollectionError> {
        self.prepare_request(request).map(PreparedUpdate)
    }

    /// Checks and brings into stored form every vector an update carries (see
    /// [`prepare_vector`]): upserts, conditional upserts and vector updates alike.
    fn prepare_request(&self, request: UpdateRequest) -> Result<UpdateRequest, CollectionError> {
        request
            .check_payload_depth()
            .map_err(|e| CollectionError::BadInput(format!("Wrong input: {e}")))?;
        // One configuration for the whole request (it can change between two reads).
        let config = self.config();
        let prepare_all = |points: Vec<PointWrite>| {
            points
                .into_iter()
                .map(|mut p| {
                    p.vectors = prepare_vectors(&config, p.vectors)?;
                    Ok(p)
                })
                .collect::<Result<Vec<_>, CollectionError>>()
        };
        Ok(match request {
            UpdateRequest::Upsert(points) => UpdateRequest::Upsert(prepare_all(points)?),
            UpdateRequest::ConditionalUpsert {
                points,
                mode,
                filter,
            } => UpdateRequest::ConditionalUpsert {
                points: prepare_all(points)?,
                mode,
                filter,
            },
            UpdateRequest::UpdateVectors {
                points,
                filter,
                missing_ok,
            } => UpdateRequest::UpdateVectors {
                points: points
                    .into_iter()
                    .map(|(id, v)| Ok((id, prepare_vectors(&config, v)?)))
                    .collect::<Result<_, CollectionError>>()?,
                filter,
                missing_ok,
            },
            other => other,
        })
    }

    fn unknown_key(&self, key: &ShardKey) -> CollectionError {
        CollectionError::BadInput(format!(
            "Shard key {key} does not exist in collection `{}`",
            self.name
        ))
    }

    /// The shards that points hash over for `key` (the shards of that key, or every shard of a
    /// collection without custom sharding), for writes or for reads.
    fn ring(
        &self,
        layout: &Layout,
        key: Option<&ShardKey>,
        writes: bool,
    ) -> Result<Vec<u32>, CollectionError> {
        let ids = ring_of(layout, key, writes);
        if !ids.is_empty() {
            return Ok(ids);
        }
        Err(match key {
            Some(k) => self.unknown_key(k),
            None if self.is_custom_sharded() => CollectionError::BadInput(format!(
                "collection `{}` uses custom sharding: give a `shard_key`",
                self.name
            )),
            None => CollectionError::Unavailable(format!(
                "collection `{}` has no shards yet on this peer's view of the cluster",
                self.name
            )),
        })
    }

    /// The shards a read (on the read ring) or a selection-based write (on the write ring)
    /// addresses.
    fn selected_shards(
        &self,
        layout: &Layout,
        selector: Option<&ShardKeySelector>,
        writes: bool,
    ) -> Result<Vec<u32>, CollectionError> {
        match selector {
            // Every auto-sharded collection has shards: none in this peer's view means it has
            // not reconciled the collection yet (just restarted, or just created elsewhere),
            // and an empty answer would pass for an empty collection. (A custom-sharded one
            // without shard keys is empty indeed.)
            None if layout.is_empty() && !self.is_custom_sharded() => {
                Err(CollectionError::Unavailable(format!(
                    "collection `{}` has no shards yet on this peer's view of the cluster",
                    self.name
                )))
            }
            None => Ok(layout
                .iter()
                .filter(|(_, s)| if writes { s.write } else { s.read })
                .map(|(id, _)| *id)
                .collect()),
            Some(selector) => {
                let mut ids = BTreeSet::new();
                for key in selector.keys() {
                    ids.extend(self.ring(layout, Some(&key), writes)?);
                }
                Ok(ids.into_iter().collect())
            }
        }
    }

    /// Which points `shard` owns under its key's read or write ring.
    fn ownership(layout: &Layout, shard: u32, writes: bool) -> Ownership {
        let key = layout.get(&shard).and_then(|s| s.key.as_ref());
        Ownership {
            ring: ring_of(layout, key, writes),
            shard,
        }
    }

    /// Applies an update on every replica of every shard it concerns; acknowledged once each
    /// shard has `write_consistency_factor` replicas that applied it. Returns an operation id.
    pub async fn update(
        &self,
        request: UpdateRequest,
        selector: Option<&ShardKeySelector>,
        ordering: WriteOrdering,
    ) -> Result<u64, CollectionError> {
        let prepared = self.prepare_update(request)?;
        self.update_prepared(prepared, selector, ordering).await
    }

    /// [`Self::update`] of a request [`Self::prepare_update`] has checked already.
    pub async fn update_prepared(
        &self,
        PreparedUpdate(request): PreparedUpdate,
        selector: Option<&ShardKeySelector>,
        ordering: WriteOrdering,
    ) -> Result<u64, CollectionError> {
        let layout = self.layout();
        // During a resharding a replica refuses points its shard no longer owns (this peer may
        // route by an older ring than the replica's peer): then route again, once, by a newer
        // layout.
        let again = self.resharding.read().is_some().then(|| request.clone());
        match self.update_with(&layout, request, selector, ordering).await {
            Err(CollectionError::Moved(reason)) => {
                match (again, self.newer_layout(&layout).await) {
                    (Some(request), Some(newer)) => {
                        self.update_with(&newer, request, selector, ordering).await
                    }
                    _ => Err(CollectionError::Unavailable(reason)),
                }
            }
            other => other,
        }
    }

    async fn update_with(
        &self,
        layout: &Arc<Layout>,
        request: UpdateRequest,
        selector: Option<&ShardKeySelector>,
        ordering: WriteOrdering,
    ) -> Result<u64, CollectionError> {
        let layout = Arc::clone(layout);
        let mut per_shard: BTreeMap<u32, UpdateRequest> = BTreeMap::new();
        match request {
            UpdateRequest::Upsert(points) => {
                let rings: Vec<Vec<u32>> = match selector {
                    None => vec![self.ring(&layout, None, true)?],
                    Some(selector) => selector
                        .keys()
                        .iter()
                        .map(|k| self.ring(&layout, Some(k), true))
                        .collect::<Result<_, _>>()?,
                };
                let mut groups: BTreeMap<u32, Vec<PointWrite>> = BTreeMap::new();
                for p in points {
                    for ring in &rings {
                        let shard = ring[shard_for(&p.id, ring.len() as u32) as usize];
                        groups.entry(shard).or_default().push(p.clone());
                    }
                }
                per_shard.extend(
                    groups
                        .into_iter()
                        .map(|(shard, group)| (shard, UpdateRequest::Upsert(group))),
                );
            }
            other => {
                for shard in self.selected_shards(&layout, selector, true)? {
                    let owner = Self::ownership(&layout, shard, true);
                    if let Some(narrowed) = restrict(&other, &owner) {
                        per_shard.insert(shard, narrowed);
                    }
                }
            }
        }
        let per_shard: Vec<(u32, Arc<UpdateRequest>)> = per_shard
            .into_iter()
            .map(|(shard, request)| (shard, Arc::new(request)))
            .collect();
        let results = futures::future::join_all(per_shard.iter().map(|(shard, request)| {
            self.update_ordered(&layout, *shard, Arc::clone(request), ordering)
        }))
        .await;
        let mut op_id = 0;
        for ((shard, request), result) in per_shard.iter().zip(results) {
            let id = match result {
                // The replicas this peer wrote to may have moved on (a move that just
                // finished), or a replica knows a newer layout of the shard: once this peer's
                // layout has caught up, try again by it.
                Err(CollectionError::Unavailable(reason)) => {
                    self.route_again(&layout, *shard, request, ordering, reason, false)
                        .await?
                }
                Err(CollectionError::StaleLayout(reason)) => {
                    self.route_again(&layout, *shard, request, ordering, reason, true)
                        .await?
                }
                other => other?,
            };
            op_id = op_id.max(id);
        }
        Ok(op_id)
    }

    /// Sends `request` again to the replicas of `shard` by a layout newer than `routed_by`, once
    /// this peer has one: the replicas it was routed to refused it as routed by an older
    /// layout (`stale`), or some failed because they moved on.
    async fn route_again(
        &self,
        routed_by: &Arc<Layout>,
        shard: u32,
        request: &Arc<UpdateRequest>,
        ordering: WriteOrdering,
        reason: String,
        stale: bool,
    ) -> Result<u64, CollectionError> {
        let Some(newer) = self.newer_layout(routed_by).await else {
            return Err(CollectionError::Unavailable(reason));
        };
        tracing::info!(collection = %self.name, shard, stale, %reason, "an update was not taken by the layout it was routed by; routing it again by a newer one");
        self.update_ordered(&newer, shard, Arc::clone(request), ordering)
            .await
    }

    /// Sends an update to the replicas of `shard` with `ordering` (see [`WriteOrdering`]):
    /// `weak` from here; `medium` and `strong` through the shard's leader replica, here when
    /// this peer holds it.
    async fn update_ordered(
        &self,
        layout: &Layout,
        shard: u32,
        request: Arc<UpdateRequest>,
        ordering: WriteOrdering,
    ) -> Result<u64, CollectionError> {
        if ordering == WriteOrdering::Weak {
            return self.update_shard(layout, shard, request).await;
        }
        let replicas = layout.get(&shard).map(|s| &s.replicas[..]).unwrap_or(&[]);
        let leader = match ordering {
            WriteOrdering::Strong => replicas
                .iter()
                .max_by_key(|r| r.peer)
                .filter(|r| r.state.takes_updates() && r.state != ReplicaState::Partial),
            _ => replicas
                .iter()
                .filter(|r| r.state.takes_updates() && r.state != ReplicaState::Partial)
                .max_by_key(|r| r.peer),
        };
        let Some(leader) = leader else {
            return Err(CollectionError::Unavailable(format!(
                "shard {shard} of `{}` has no leader replica that takes updates ({ordering:?} ordering)",
                self.name
            )));
        };
        if leader.peer == self.env.this_peer() {
            return self.lead_update(shard, request).await;
        }
        self.env
            .remote(&leader.uri, &self.name, shard)?
            .request(&LeaderUpdate {
                ordering,
                update: (*request).clone(),
            })
            .await
    }

    /// Coordinates an ordered update as the leader of `shard` (see [`WriteOrdering`]): one at
    /// a time per shard, each to the end (every replica answered), by this peer's layout.
    pub async fn lead_update(
        &self,
        shard: u32,
        request: Arc<UpdateRequest>,
    ) -> Result<u64, CollectionError> {
        let lock = Arc::clone(self.ordering_locks.lock().entry(shard).or_default());
        let _one_at_a_time = lock.lock().await;
        let layout = self.layout();
        match self
            .update_shard(&layout, shard, Arc::clone(&request))
            .await
        {
            // As `route_again`, still holding the lock.
            Err(CollectionError::Unavailable(reason) | CollectionError::StaleLayout(reason)) => {
                let Some(newer) = self.newer_layout(&layout).await else {
                    return Err(CollectionError::Unavailable(reason));
                };
                self.update_shard(&newer, shard, request).await
            }
            other => other,
        }
    }

    /// A layout newer than `seen`, waiting a little for this peer to reconcile one.
    async fn newer_layout(&self, seen: &Arc<Layout>) -> Option<Arc<Layout>> {
        for _ in 0..LAYOUT_PATIENCE_STEPS {
            let current = self.layout();
            if !Arc::ptr_eq(&current, seen) && *current != **seen {
                return Some(current);
            }
            // A polling interval (liveness): see `LAYOUT_PATIENCE_STEPS`.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        None
    }

    /// Sends an update to every replica of `shard` that takes updates. Replicas that fail
    /// while enough others succeed are marked Dead through consensus before the write is
    /// acknowledged, so that no later read is served by a replica that missed it.
    async fn update_shard(
        &self,
        layout: &Layout,
        shard: u32,
        request: Arc<UpdateRequest>,
    ) -> Result<u64, CollectionError> {
        // A Partial replica is the destination of a streaming transfer: it gets its updates
        // from the transfer's source, in the source's order, never directly.
        let replicas: Vec<&ReplicaInfo> = layout
            .get(&shard)
            .map(|s| {
                s.replicas
                    .iter()
                    .filter(|r| r.state.takes_updates() && r.state != ReplicaState::Partial)
                    .collect()
            })
            .unwrap_or_default();
        if replicas.is_empty() {
            return Err(CollectionError::Unavailable(format!(
                "no replica of shard {shard} of `{}` takes updates",
                self.name
            )));
        }
        let version = layout.get(&shard).map_or(0, |s| s.version);
        hold_routed_update(&self.name, shard, version, &request).await;
        // Held until every replica answered and those that failed are marked Dead: the next
        // tick of this clock reaches no replica that missed this one while it still takes
        // updates.
        let clock_set = Arc::clone(self.clock_sets.lock().entry(shard).or_default());
        let mut clock = clock_set.take(self.env.this_peer().0);
        let mut tag = clock.next_tag();
        let mut pending: Vec<&ReplicaInfo> = replicas.clone();
        let mut results: Vec<(&ReplicaInfo, Result<u64, CollectionError>)> = Vec::new();
        for attempt in 1..=CLOCK_ATTEMPTS {
            let answers = futures::future::join_all(
                pending
                    .iter()
                    .map(|r| self.update_on(shard, r, Arc::clone(&request), version, tag)),
            )
            .await;
            let mut behind = Vec::new();
            let mut ahead_tick = 0;
            for (replica, answer) in pending.iter().zip(answers) {
                match answer {
                    Ok(UpdateOutcome::Applied(id) | UpdateOutcome::Duplicate(id)) => {
                        results.push((*replica, Ok(id)));
                    }
                    // The replica's clock is past ours (this peer restarted, or another clock
                    // of it ran ahead): tick past it and send it again, to that replica only.
                    Ok(UpdateOutcome::Behind(tick)) if attempt < CLOCK_ATTEMPTS => {
                        behind.push(*replica);
                        ahead_tick = ahead_tick.max(tick);
                    }
                    Ok(UpdateOutcome::Behind(tick)) => results.push((
                        *replica,
                        Err(CollectionError::Unavailable(format!(
                            "replica on peer {} refused the update's clock tick {} (its clock is at {tick})",
                            replica.peer, tag.tick
                        ))),
                    )),
                    Err(e) => results.push((*replica, Err(e))),
                }
            }
            if behind.is_empty() {
                break;
            }
            tracing::debug!(collection = %self.name, shard, clock = tag.clock, tick = tag.tick, ahead_tick, "a replica's clock is ahead of this coordinator's; ticking past it");
            clock.advance_to(ahead_tick);
            tag = clock.next_tag();
            pending = behind;
        }
        // A clock is used again only when every replica applied its last tick (see
        // `ClockSet`): a replica that missed it must never see the next one on this clock.
        if results.iter().all(|(_, r)| r.is_ok()) {
            clock.completed();
        }
        let mut applied = 0usize;
        let mut op_id = 0;
        let mut failed = Vec::new();
        let mut not_passed_on = None;
        for (replica, result) in results {
            match result {
                Ok(id) => {
                    applied += 1;
                    op_id = op_id.max(id);
                }
                Err(e) if is_request_error(&e) => return Err(e),
                // Routed by an old layout: nothing is marked, the caller routes it again.
                Err(e @ CollectionError::StaleLayout(_)) => return Err(e),
                Err(CollectionError::ForwardFailed(reason)) => {
                    // The replica has the update but a resharding's destination may not:
                    // mark the replica (which aborts a resharding that can still go back)
                    // and do not acknowledge.
                    not_passed_on = Some(reason.clone());
                    failed.push((replica, CollectionError::ForwardFailed(reason)));
                }
                Err(e) => failed.push((replica, e)),
            }
        }
        let needed =
            (self.config().params.write_consistency_factor as usize).clamp(1, replicas.len());
        if applied < needed {
            let (_, first) = failed.swap_remove(0);
            return Err(CollectionError::Unavailable(format!(
                "shard {shard} of `{}`: {applied} of the {needed} replicas required by write_consistency_factor applied the update; {first}",
                self.name
            )));
        }
        for (replica, error) in failed {
            tracing::warn!(collection = %self.name, shard, peer = %replica.peer, %error, "replica failed an update; marking it Dead");
            let op = ClusterOperation::SetReplicaState {
                collection: self.name.clone(),
                shard: ShardId(shard),
                peer: replica.peer,
                state: ReplicaState::Dead,
                from_state: Some(replica.state),
            };
            match self.env.metadata.propose(op).await {
                Ok((Ok(_), _)) => {}
                // Someone else changed the replica's state first (marked it Dead too, or
                // dropped it): it no longer serves reads as it was.
                Ok((
                    Err(
                        ClusterError::ReplicaStateMismatch { .. }
                        | ClusterError::NoReplicaOnPeer { .. },
                    ),
                    _,
                )) => {}
                Ok((Err(e), _)) => {
                    return Err(CollectionError::Unavailable(format!(
                        "replica of shard {shard} on peer {} failed ({error}) and cannot be marked Dead: {e}",
                        replica.peer
                    )));
                }
                Err(e) => {
                    return Err(CollectionError::Unavailable(format!(
                        "replica of shard {shard} on peer {} failed ({error}) and cannot be marked Dead: {e}",
                        replica.peer
                    )));
                }
            }
        }
        if let Some(reason) = not_passed_on {
            return Err(CollectionError::Unavailable(format!(
                "shard {shard} of `{}`: the update was not acknowledged: {reason}",
                self.name
            )));
        }
        drop(clock);
        Ok(op_id)
    }

    /// Applies an update on one replica: here through [`Self::update_local`], or on the peer
    /// that holds it, tagged `tag`.
    async fn update_on(
        &self,
        shard: u32,
        replica: &ReplicaInfo,
        request: Arc<UpdateRequest>,
        layout_version: u64,
        tag: ClockTag,
    ) -> Result<UpdateOutcome, CollectionError> {
        if replica.peer == self.env.this_peer() {
            self.update_local(
                shard,
                request,
                Some(layout_version),
                Stamp::Coordinator(tag),
            )
            .await
        } else {
            delay_update_to(&replica.uri).await;
            self.env
                .remote(&replica.uri, &self.name, shard)?
                .request(&FencedUpdate {
                    layout_version,
                    clock: Some(tag),
                    update: (*request).clone(),
                })
                .await
        }
    }

    /// Applies an update on this peer's replica of `shard`, and forwards it to the destinations
    /// of the transfers that send this replica.
    ///
    /// `routed_by` is the layout version of the shard that the coordinator routed the update
    /// by (`None` for copies a transfer or resharding forwards, which follow the source's
    /// order instead). When this peer has applied a newer layout for the shard, the update is
    /// refused with [`CollectionError::StaleLayout`] and changes nothing: the coordinator routes
    /// it again. The check runs under the shard's forwarding gate, which a finishing transfer
    /// takes exclusively before it stops forwarding; so an update is either forwarded by the
    /// transfer or refused, never silently kept from a new replica.
    ///
    /// `stamp` says how the update's clock tag is checked (see `shard::clock`): a
    /// coordinator's tick this replica applied already, or is past, is not applied again.
    pub async fn update_local(
        &self,
        shard: u32,
        request: Arc<UpdateRequest>,
        routed_by: Option<u64>,
        stamp: Stamp,
    ) -> Result<UpdateOutcome, CollectionError> {
        self.update_fenced(shard, request, routed_by, stamp, None)
            .await
    }

    /// [`Collection::update_local`] for a transfer's copy (see [`StreamFence`]): refused with
    /// [`CollectionError::StaleTransfer`], changing nothing, unless this peer's cluster state
    /// (applied at least up to what the sender saw) runs that transfer with this peer as its
    /// destination. The check runs under the shard's forwarding gate, like the layout fence.
    pub async fn update_copy(
        &self,
        shard: u32,
        request: Arc<UpdateRequest>,
        stamp: Stamp,
        fence: StreamFence,
    ) -> Result<UpdateOutcome, CollectionError> {
        self.caught_up(&fence).await?;
        self.update_fenced(shard, request, None, stamp, Some(fence))
            .await
    }

    /// Runs a transfer's recovery step on this peer's replica of `shard`, fenced by the
    /// step's transfer like [`Collection::update_copy`], on a blocking thread that holds the
    /// shard's forwarding gate until the step is done (also when the caller stops waiting).
    /// A copy's `Begin` takes the gate exclusively: the copies of an earlier transfer into
    /// this replica that passed their check before it ended are all applied by then, and
    /// later ones are refused, so none lands in the new copy.
    pub async fn recover_local(
        &self,
        shard: u32,
        call: FencedRecovery,
    ) -> Result<Option<ClockMap>, CollectionError> {
        let fence = call.fence();
        self.caught_up(&fence).await?;
        let gate = self.gate(shard);
        let held = match call.step {
            ShardRecovery::Begin { .. } => GateHold::Exclusive(gate.write_owned().await),
            _ => GateHold::Shared(gate.read_owned().await),
        };
        self.fence_holds(shard, &fence)?;
        let local = self.local_for_request(shard)?;
        tokio::task::spawn_blocking(move || {
            let _held = held;
            call.run_on(&local)
        })
        .await
        .map_err(|e| CollectionError::Storage(format!("shard task failed: {e}")))?
    }

    /// Waits (a bounded time) until this peer applied the cluster state the sender of a copy
    /// saw; a copy is judged only by a state at least that new.
    pub async fn wait_for_fence(&self, fence: &StreamFence) -> Result<(), CollectionError> {
        self.caught_up(fence).await
    }

    async fn caught_up(&self, fence: &StreamFence) -> Result<(), CollectionError> {
        match self.env.metadata.view_at(fence.seen, FENCE_PATIENCE).await {
            Some(_) => Ok(()),
            None => Err(CollectionError::Unavailable(format!(
                "this peer has not yet applied the cluster state (index {}) in which transfer {} of `{}` runs",
                fence.seen, fence.transfer, self.name
            ))),
        }
    }

    /// Whether this peer's applied cluster state runs the transfer `fence` names, with this
    /// peer's replica of `shard` as its destination.
    fn fence_holds(&self, shard: u32, fence: &StreamFence) -> Result<(), CollectionError> {
        let view = self.env.metadata.view();
        let this = self.env.this_peer();
        let running = view.state.collections.get(&self.name).is_some_and(|m| {
            m.transfers.iter().any(|t| {
                t.id == fence.transfer && t.to == this && t.to_shard.unwrap_or(t.shard).0 == shard
            })
        });
        if running {
            return Ok(());
        }
        Err(CollectionError::StaleTransfer(format!(
            "transfer {} of `{}` to shard {shard} on peer {this} has ended (cluster state at index {})",
            fence.transfer,
            self.name,
            view.applied_index().unwrap_or(0)
        )))
    }

    async fn update_fenced(
        &self,
        shard: u32,
        request: Arc<UpdateRequest>,
        routed_by: Option<u64>,
        stamp: Stamp,
        fence: Option<StreamFence>,
    ) -> Result<UpdateOutcome, CollectionError> {
        let local = self.local_for_request(shard)?;
        let gate = self.gate(shard).read_owned().await;
        if let Some(fence) = &fence {
            self.fence_holds(shard, fence)?;
        }
        if let Some(routed_by) = routed_by {
            let current = self.layout().get(&shard).map_or(0, |s| s.version);
            if routed_by < current {
                return Err(CollectionError::StaleLayout(format!(
                    "shard {shard} of `{}` is at layout version {current}; the update was routed by version {routed_by}",
                    self.name
                )));
            }
        }
        if self.retired.lock().contains(&shard) {
            return Err(CollectionError::Unavailable(format!(
                "shard {shard} of `{}` moved away from this peer",
                self.name
            )));
        }
        self.check_arrival(shard, &local, &request)?;
        let outgoing: Vec<Arc<Outgoing>> = self
            .outgoing
            .lock()
            .get(&shard)
            .map(|list| {
                list.iter()
                    .filter(|o| {
                        let same = std::ptr::eq(o.source.as_ptr(), Arc::as_ptr(&local));
                        if !same {
                            // Its source was replaced: this update is not one the transfer
                            // forwards, so the transfer must not finish.
                            o.broken.store(true, std::sync::atomic::Ordering::SeqCst);
                        }
                        same
                    })
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        // ... and one past its last check may finish all the same: the update is refused
        // before it is applied (see `Outgoing::finishing`).
        if let Some(out) = self.outgoing.lock().get(&shard).and_then(|list| {
            list.iter()
                .find(|o| {
                    !std::ptr::eq(o.source.as_ptr(), Arc::as_ptr(&local))
                        && o.finishing.load(std::sync::atomic::Ordering::SeqCst)
                })
                .cloned()
        }) {
            return Err(CollectionError::Unavailable(format!(
                "shard {shard} of `{}` was replaced on this peer while a transfer to peer {} finishes from the replica before",
                self.name, out.to
            )));
        }
        // Cancel-safety: once applied here, the update must reach every transfer's destination
        // (or mark the transfer broken) even when the caller stops waiting (a client's or a
        // peer's timeout drops this future): the rest runs in a task of its own, which holds
        // the gate until it is done.
        let name = self.name.clone();
        tokio::spawn(async move {
            let _gate = gate;
            apply_and_forward(&name, shard, &local, request, stamp, &outgoing).await
        })
        .await
        .map_err(|e| CollectionError::Storage(format!("update task failed: {e}")))?
    }

    /// The forwarding gate of `shard` (see `forwarding_gates`).
    fn gate(&self, shard: u32) -> Arc<tokio::sync::RwLock<()>> {
        Arc::clone(self.forwarding_gates.lock().entry(shard).or_default())
    }

    /// Checks an update against what this replica owns during a resharding, before it is
    /// applied. Once writes use the new ring, a point the replica's shard no longer owns is
    /// refused (the sender routed by an older ring and routes again). A point it does not own
    /// under the read ring (one a resharding moves in) marks the replica as holding foreign
    /// points, durably, before it lands.
    fn check_arrival(
        &self,
        shard: u32,
        local: &LocalShard,
        request: &UpdateRequest,
    ) -> Result<(), CollectionError> {
        let ids = named_ids(request);
        if ids.is_empty() {
            return Ok(());
        }
        let layout = self.layout();
        let Some(this) = layout.get(&shard) else {
            return Ok(());
        };
        let resharding = self
            .resharding
            .read()
            .clone()
            .filter(|r| r.shard_key == this.key);
        if resharding
            .as_ref()
            .is_some_and(|r| r.stage == ReshardingStage::WriteHashRingCommitted)
        {
            let owner = Self::ownership(&layout, shard, true);
            if let Some(id) = ids.iter().find(|id| !owner.owns(id)) {
                return Err(CollectionError::Moved(format!(
                    "point {id} no longer belongs to shard {shard} of `{}` (resharding)",
                    self.name
                )));
            }
        }
        let owner = Self::ownership(&layout, shard, false);
        if ids.iter().any(|id| !owner.owns(id)) {
            let mut foreign = self.foreign.lock();
            let first = !foreign.contains_key(&shard);
            *foreign.entry(shard).or_insert(0) += 1;
            if first {
                std::fs::write(local.dir().join(FOREIGN_FILE), b"")
                    .map_err(CollectionError::storage)?;
            }
        }
        Ok(())
    }

    /// The ownership filter a read of the local replica of `shard` needs: the caller's, or
    /// this peer's read ring, while the replica may hold points another shard owns (its
    /// shards are resharding, or points moved in and were not cleaned up yet); else none.
    fn read_filter(&self, shard: u32, given: Option<Ownership>) -> Option<Ownership> {
        let layout = self.layout();
        let key = layout.get(&shard).map(|s| s.key.clone());
        let resharding = self
            .resharding
            .read()
            .as_ref()
            .is_some_and(|r| Some(&r.shard_key) == key.as_ref());
        if !resharding && !self.foreign.lock().contains_key(&shard) {
            return None;
        }
        Some(given.unwrap_or_else(|| Self::ownership(&layout, shard, false)))
    }

    /// Runs a read on this peer's replica of `shard`, with the ownership filter it needs.
    pub async fn read_local<R: ShardRequest>(
        &self,
        shard: u32,
        mut request: R,
    ) -> Result<R::Answer, CollectionError> {
        let local = self.local_for_request(shard)?;
        if let Some(slot) = request.owner_mut() {
            *slot = self.read_filter(shard, slot.take());
        }
        on_read_pool(move || request.run_on(&local)).await
    }

    /// Deletes the points local replicas hold but do not own: after a resharding's writes moved
    /// to the new ring (the points that moved out), and once no resharding runs (points a
    /// drained shard moved in before an abort). Blocking; runs in every reconcile pass, so a
    /// peer that reconciled a state has cleaned up for it.
    fn clean_strays(&self, meta: &CollectionMeta) -> Result<(), CollectionError> {
        let layout = self.layout();
        let resharding = meta.resharding.as_ref();
        let at_write_ring =
            resharding.is_some_and(|r| r.stage == ReshardingStage::WriteHashRingCommitted);
        if resharding.is_none() {
            self.cleaned.lock().clear();
        }
        for (id, local) in self.local_shards() {
            let Some(this) = layout.get(&id) else {
                continue;
            };
            let group_resharding = resharding.filter(|r| r.shard_key == this.key);
            let sweep = match group_resharding {
                // The drained shard goes away as a whole.
                Some(r) if r.direction == ReshardingDirection::Down && r.shard.0 == id => false,
                Some(_) => at_write_ring && !self.cleaned.lock().contains(&id),
                None => self.foreign.lock().contains_key(&id),
            };
            if !sweep {
                continue;
            }
            // Every update that was checked against the previous state has been applied once
            // the barrier is through; later ones are checked against this one.
            drop(self.gate(id).blocking_write());
            let generation = self.foreign.lock().get(&id).copied();
            let owner = Self::ownership(&layout, id, true);
            let mut strays = Vec::new();
            let mut from = None;
            loop {
                const PAGE: usize = 10_000;
                let page = local.scroll(from, PAGE + 1, None, false, &WithVector::None);
                let next = (page.len() > PAGE).then(|| page[PAGE].id);
                strays.extend(
                    page.into_iter()
                        .take(PAGE)
                        .map(|r| r.id)
                        .filter(|id| !owner.owns(id)),
                );
                match next {
                    Some(n) => from = Some(n),
                    None => break,
                }
            }
            let removed = strays.len();
            for chunk in strays.chunks(1000) {
                local.update(UpdateRequest::Delete(PointSelection::Ids(chunk.to_vec())))?;
            }
            if group_resharding.is_some() {
                self.cleaned.lock().insert(id);
            }
            // Points that arrived while sweeping are swept by the next pass.
            let mut foreign = self.foreign.lock();
            if group_resharding.is_none() && foreign.get(&id).copied() == generation {
                foreign.remove(&id);
                let _ = std::fs::remove_file(local.dir().join(FOREIGN_FILE));
            }
            drop(foreign);
            tracing::info!(collection = %self.name, shard = id, removed, "removed points the shard no longer owns");
        }
        Ok(())
    }

    /// Starts forwarding the updates of the local replica of `shard` to a transfer's
    /// destination. Returns once every update that did not see the registration is applied,
    /// so whatever the transfer reads next includes them.
    pub async fn register_outgoing(&self, shard: u32, outgoing: Arc<Outgoing>) {
        let gate = self.gate(shard);
        let _exclusive = gate.write().await;
        self.outgoing
            .lock()
            .entry(shard)
            .or_default()
            .push(outgoing);
    }

    /// Called by a transfer once this peer reconciled the layout in which it ended: every
    /// update applied from then on was routed by that layout (the fence refuses older ones),
    /// so its destination gets it directly or not at all, and a forward that fails needs no
    /// refusal any more. Waits (the gate, exclusively) for updates that passed the fence
    /// before: those are still refused when their forward fails.
    pub async fn forwarding_settled(&self, shard: u32, outgoing: &Outgoing) {
        let gate = self.gate(shard);
        let _exclusive = gate.write().await;
        outgoing
            .finishing
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }

    /// Stops forwarding for `shard` to `outgoing`'s destination. Returns once every update
    /// that saw the registration has been forwarded.
    pub async fn unregister_outgoing(&self, shard: u32, outgoing: &Arc<Outgoing>) {
        let gate = self.gate(shard);
        let _exclusive = gate.write().await;
        let mut map = self.outgoing.lock();
        if let Some(list) = map.get_mut(&shard) {
            list.retain(|o| !Arc::ptr_eq(o, outgoing));
            if list.is_empty() {
                map.remove(&shard);
            }
        }
    }

    /// Runs a request on one replica: here on a blocking thread, or on the peer that holds it.
    async fn run_on<R: ShardRequest>(
        &self,
        shard: u32,
        replica: &ReplicaInfo,
        request: Arc<R>,
    ) -> Result<R::Answer, CollectionError> {
        if replica.peer == self.env.this_peer() {
            self.read_local(shard, (*request).clone()).await
        } else {
            self.env
                .remote(&replica.uri, &self.name, shard)?
                .request(&*request)
                .await
        }
    }

    /// Runs a read on one readable replica of `shard`, trying the next when one fails. Every
    /// peer picks replicas in the same order (by peer id, rotated by the shard id to spread
    /// the load), so the same query gets the same answer whichever peer it is sent to.
    async fn read_shard<R: ShardRequest>(
        &self,
        layout: &Layout,
        shard: u32,
        request: Arc<R>,
    ) -> Result<R::Answer, CollectionError> {
        // A shard being added is read once reads switched to the new ring.
        let mut readable: Vec<&ReplicaInfo> = layout
            .get(&shard)
            .map(|s| {
                s.replicas
                    .iter()
                    .filter(|r| {
                        r.state.is_readable() || (s.read && r.state == ReplicaState::Resharding)
                    })
                    .collect()
            })
            .unwrap_or_default();
        if !readable.is_empty() {
            let turn = shard as usize % readable.len();
            readable.rotate_left(turn);
        }
        let mut last_error = None;
        let params = &self.config().params;
        let fan_out = params.read_fan_out_factor.unwrap_or(0) as usize;
        let rest = if fan_out > 0 && readable.len() > 1 {
            let wave = readable.len().min(1 + fan_out);
            let delay = std::time::Duration::from_millis(params.read_fan_out_delay_ms.unwrap_or(0));
            match self
                .hedged_read(shard, &readable[..wave], delay, &request, &mut last_error)
                .await
            {
                Some(answer) => return answer,
                None => readable.split_off(wave),
            }
        } else {
            readable
        };
        for replica in rest {
            match self.run_on(shard, replica, Arc::clone(&request)).await {
                Ok(answer) => return Ok(answer),
                Err(e) if is_request_error(&e) => return Err(e),
                Err(e) => {
                    tracing::warn!(collection = %self.name, shard, peer = %replica.peer, error = %e, "replica failed a read; trying the next");
                    last_error = Some(e);
                }
            }
        }
        Err(CollectionError::Unavailable(match last_error {
            Some(e) => format!(
                "no readable replica of shard {shard} of `{}` answered; last error: {e}",
                self.name
            ),
            None => format!("shard {shard} of `{}` has no readable replica", self.name),
        }))
    }

    /// Qdrant's read fan-out: asks `replicas[0]`, and after `delay` (or as soon as it fails)
    /// the others too; the first answer wins. `None` when every replica failed with a
    /// replica error (the last one kept in `last_error`); a request error ends the read.
    async fn hedged_read<R: ShardRequest>(
        &self,
        shard: u32,
        replicas: &[&ReplicaInfo],
        delay: std::time::Duration,
        request: &Arc<R>,
        last_error: &mut Option<CollectionError>,
    ) -> Option<Result<R::Answer, CollectionError>> {
        use futures::StreamExt;
        let ask = |i: usize| {
            let replica = replicas[i];
            let peer = replica.peer;
            let read = self.run_on(shard, replica, Arc::clone(request));
            async move { (peer, read.await) }
        };
        let mut pending = futures::stream::FuturesUnordered::new();
        pending.push(ask(0));
        let mut waiting = 1..replicas.len();
        // Latency only (`read_fan_out_delay_ms`): every replica asked is readable, so whichever
        // answers first is as good as the others.
        let timer = tokio::time::sleep(delay);
        tokio::pin!(timer);
        let mut fanned_out = false;
        loop {
            tokio::select! {
                next = pending.next() => {
                    let Some((peer, answer)) = next else {
                        if fanned_out {
                            return None;
                        }
                        // The first replica failed before the delay: fan out now.
                        fanned_out = true;
                        pending.extend(waiting.by_ref().map(ask));
                        continue;
                    };
                    match answer {
                        Ok(answer) => return Some(Ok(answer)),
                        Err(e) if is_request_error(&e) => return Some(Err(e)),
                        Err(e) => {
                            tracing::warn!(collection = %self.name, shard, %peer, error = %e, "replica failed a fanned-out read");
                            *last_error = Some(e);
                        }
                    }
                }
                () = &mut timer, if !fanned_out => {
                    fanned_out = true;
                    pending.extend(waiting.by_ref().map(ask));
                }
            }
        }
    }

    /// Runs one request per shard, concurrently, and returns the answers in shard order.
    async fn read_shards<R: ShardRequest>(
        &self,
        layout: &Layout,
        requests: Vec<(u32, R)>,
    ) -> Result<Vec<R::Answer>, CollectionError> {
        // Each shard answers for the points it owns under this peer's read ring, so a point
        // a resharding is moving is counted once whichever stage each peer is at.
        futures::future::join_all(requests.into_iter().map(|(shard, mut r)| {
            if let Some(slot) = r.owner_mut() {
                *slot = Some(Self::ownership(layout, shard, false));
            }
            self.read_shard(layout, shard, Arc::new(r))
        }))
        .await
        .into_iter()
        .collect()
    }

    /// Points by id, in the order asked, each at most once; unknown ids are skipped.
    pub async fn retrieve(
        &self,
        ids: &[PointId],
        with_payload: bool,
        with_vector: &WithVector,
        selector: Option<&ShardKeySelector>,
    ) -> Result<Vec<Record>, CollectionError> {
        let layout = self.layout();
        let mut seen = HashSet::new();
        let unique: Vec<PointId> = ids.iter().filter(|id| seen.insert(**id)).copied().collect();
        let requests: Vec<(u32, ShardRetrieve)> = self
            .selected_shards(&layout, selector, false)?
            .into_iter()
            .filter_map(|shard| {
                let owner = Self::ownership(&layout, shard, false);
                let mine: Vec<PointId> =
                    unique.iter().filter(|id| owner.owns(id)).copied().collect();
                (!mine.is_empty()).then_some((
                    shard,
                    ShardRetrieve {
                        ids: mine,
                        with_payload,
                        with_vector: with_vector.clone(),
                        owner: None,
                    },
                ))
            })
            .collect();
        let mut found: HashMap<PointId, Record> = HashMap::new();
        for records in self.read_shards(&layout, requests).await? {
            for r in records {
                found.entry(r.id).or_insert(r);
            }
        }
        Ok(unique.iter().filter_map(|id| found.remove(id)).collect())
    }

    /// The stored vector `name` of a point, or an error naming it.
    pub async fn vector_of(
        &self,
        id: &PointId,
        name: &str,
        selector: Option<&ShardKeySelector>,
    ) -> Result<VectorData, CollectionError> {
        let wanted = WithVector::Named(vec![name.to_string()]);
        self.retrieve(&[*id], false, &wanted, selector)
            .await?
            .into_iter()
            .next()
            .and_then(|r| r.vector?.remove(name))
            .ok_or_else(|| CollectionError::PointNotFound(id.to_string()))
    }

    /// One page of points in id order, and the id the next page starts at.
    pub async fn scroll(
        &self,
        offset: Option<PointId>,
        limit: usize,
        filter: Option<&Filter>,
        with_payload: bool,
        with_vector: &WithVector,
        selector: Option<&ShardKeySelector>,
    ) -> Result<(Vec<Record>, Option<PointId>), CollectionError> {
        let layout = self.layout();
        let request = ShardScroll {
            from: offset,
            limit: limit + 1,
            filter: filter.cloned(),
            with_payload,
            with_vector: with_vector.clone(),
            owner: None,
        };
        let requests = self
            .selected_shards(&layout, selector, false)?
            .into_iter()
            .map(|shard| (shard, request.clone()))
            .collect();
        let mut all: Vec<Record> = self
            .read_shards(&layout, requests)
            .await?
            .into_iter()
            .flatten()
            .collect();
        all.sort_by_key(|r| r.id);
        // A point upserted under several shard keys lives in several shards.
        all.dedup_by_key(|r| r.id);
        let next = (all.len() > limit).then(|| all[limit].id);
        all.truncate(limit);
        Ok((all, next))
    }

    /// Qdrant's `order_by` over the selected shards: the first `request.limit` (value, point)
    /// pairs, merged from every shard's own first `limit`.
    pub async fn order_by(
        &self,
        request: ShardOrderBy,
        selector: Option<&ShardKeySelector>,
    ) -> Result<Vec<(OrderValue, Record)>, CollectionError> {
        let layout = self.layout();
        let requests = self
            .selected_shards(&layout, selector, false)?
            .into_iter()
            .map(|shard| (shard, request.clone()))
            .collect();
        let mut all: Vec<(OrderValue, Record)> = self
            .read_shards(&layout, requests)
            .await?
            .into_iter()
            .flatten()
            .collect();
        all.sort_by(|a, b| request.order(&(a.0, a.1.id), &(b.0, b.1.id)));
        // A point upserted under several shard keys lives in several shards.
        all.dedup_by(|a, b| a.1.id == b.1.id && a.0.total_cmp(&b.0).is_eq());
        all.truncate(request.limit);
        Ok(all)
    }

    /// Qdrant's facet counts over the selected shards: (value, number of points), most
    /// frequent first, then by value; at most `limit`.
    pub async fn facet(
        &self,
        request: ShardFacet,
        limit: usize,
        selector: Option<&ShardKeySelector>,
    ) -> Result<Vec<(serde_json::Value, usize)>, CollectionError> {
        let layout = self.layout();
        let requests = self
            .selected_shards(&layout, selector, false)?
            .into_iter()
            .map(|shard| (shard, request.clone()))
            .collect();
        let mut totals: BTreeMap<String, (serde_json::Value, usize)> = BTreeMap::new();
        for (value, count) in self
            .read_shards(&layout, requests)
            .await?
            .into_iter()
            .flatten()
        {
            totals
                .entry(value.to_string())
                .or_insert_with(|| (value, 0))
                .1 += count;
        }
        let mut hits: Vec<(serde_json::Value, usize)> = totals.into_values().collect();
        hits.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| facet_value_order(&a.0, &b.0)));
        hits.truncate(limit);
        Ok(hits)
    }

    /// The exact number of points (matching `filter`) over the selected shards.
    pub async fn count(
        &self,
        filter: Option<&Filter>,
        selector: Option<&ShardKeySelector>,
    ) -> Result<usize, CollectionError> {
        let layout = self.layout();
        let request = ShardCount {
            filter: filter.cloned(),
            owner: None,
        };
        let requests = self
            .selected_shards(&layout, selector, false)?
            .into_iter()
            .map(|shard| (shard, request.clone()))
            .collect();
        Ok(self.read_shards(&layout, requests).await?.into_iter().sum())
    }

    /// Checks and normalises the vectors of a search target, for every shard to use as is.
    fn prepare_target(
        &self,
        using: &str,
        target: &SearchTarget,
    ) -> Result<ShardTarget, CollectionError> {
        let prep = |v: &VectorData| self.prepare_vector(using, v.clone());
        let prep_all = |vs: &[VectorData]| -> Result<Vec<VectorData>, CollectionError> {
            vs.iter().map(prep).collect()
        };
        let prep_pairs = |pairs: &[(VectorData, VectorData)]| -> Result<_, CollectionError> {
            pairs
                .iter()
                .map(|(p, n)| Ok((prep(p)?, prep(n)?)))
                .collect::<Result<Vec<_>, CollectionError>>()
        };
        Ok(match target {
            SearchTarget::Vector(v) => ShardTarget::Nearest(prep(v)?),
            SearchTarget::BestScore { positive, negative } => ShardTarget::BestScore {
                positive: prep_all(positive)?,
                negative: prep_all(negative)?,
            },
            SearchTarget::SumScores { positive, negative } => ShardTarget::SumScores {
                positive: prep_all(positive)?,
                negative: prep_all(negative)?,
            },
            SearchTarget::Discover { target, context } => ShardTarget::Discover {
                target: prep(target)?,
                context: prep_pairs(context)?,
            },
            SearchTarget::Context { pairs } => ShardTarget::Context {
                pairs: prep_pairs(pairs)?,
            },
            SearchTarget::RelevanceFeedback { target, a, pairs } => {
                ShardTarget::RelevanceFeedback {
                    target: prep(target)?,
                    a: *a,
                    pairs: pairs
                        .iter()
                        .map(|(b, w, weight)| Ok((prep(b)?, prep(w)?, *weight)))
                        .collect::<Result<_, CollectionError>>()?,
                }
            }
            SearchTarget::IdOrder => ShardTarget::IdOrder,
        })
    }

    /// IDF weights of a sparse query's dimensions over every selected shard, when the
    /// searched vector has the `idf` modifier (Qdrant computes IDF over the collection).
    async fn idf_weights(
        &self,
        layout: &Arc<Layout>,
        shards: &[u32],
        using: &str,
        target: &ShardTarget,
    ) -> Result<Option<Vec<(u32, f32)>>, CollectionError> {
        let ShardTarget::Nearest(VectorData::Sparse(query)) = target else {
            return Ok(None);
        };
        if self.config().sparse(using).and_then(|p| p.modifier) != Some(Modifier::Idf) {
            return Ok(None);
        }
        let request = ShardSparseStats {
            using: using.to_string(),
            dims: query.indices.clone(),
            owner: None,
        };
        let requests = shards.iter().map(|s| (*s, request.clone())).collect();
        let mut points = 0;
        let mut df = vec![0usize; query.indices.len()];
        for (n, counts) in self.read_shards(layout, requests).await? {
            points += n;
            for (total, c) in df.iter_mut().zip(counts) {
                *total += c;
            }
        }
        Ok(Some(
            query
                .indices
                .iter()
                .zip(df)
                .map(|(d, df)| (*d, idf(points, df)))
                .collect(),
        ))
    }

    /// The best `limit` points after skipping `offset`, best first.
    pub async fn search(
        &self,
        request: &SearchRequest,
        selector: Option<&ShardKeySelector>,
    ) -> Result<Vec<ScoredRecord>, CollectionError> {
        let layout = self.layout();
        // An id-ordered read (a query with no query) compares no vectors, so it names none.
        if !matches!(request.target, SearchTarget::IdOrder)
            && self.config().vector_kind(&request.using).is_none()
        {
            return Err(CollectionError::BadInput(format!(
                "Not existing vector name error: {}",
                if request.using.is_empty() {
                    "default"
                } else {
                    &request.using
                }
            )));
        }
        let target = self.prepare_target(&request.using, &request.target)?;
        let shards = self.selected_shards(&layout, selector, false)?;
        let idf = self
            .idf_weights(&layout, &shards, &request.using, &target)
            .await?;
        let shard_search = ShardSearch {
            using: request.using.clone(),
            target,
            filter: request.filter.clone(),
            exclude: request.exclude.iter().copied().collect(),
            top: request.limit.saturating_add(request.offset),
            ef: request.ef,
            exact: request.exact,
            quantization: request.quantization,
            score_threshold: request.score_threshold,
            with_payload: request.with_payload,
            with_vector: request.with_vector.clone(),
            idf,
            owner: None,
        };
        let requests = shards
            .into_iter()
            .map(|shard| (shard, shard_search.clone()))
            .collect();
        let mut merged: Vec<ScoredRecord> = self
            .read_shards(&layout, requests)
            .await?
            .into_iter()
            .flatten()
            .collect();
        let distance = self.config().dense(&request.using).map(|p| p.distance);
        shard_search.sort_merged(distance, &mut merged);
        merged.dedup_by_key(|r| r.id);
        Ok(merged
            .into_iter()
            .skip(request.offset)
            .take(request.limit)
            .collect())
    }

    /// Optimizer state, points and segments of this peer's replicas.
    pub fn local_stats(&self) -> CollectionStats {
        let mut stats = CollectionStats {
            status: CollectionStatus::Green,
            points: 0,
            indexed_vectors: 0,
            segments: 0,
        };
        for (_, shard) in self.local_shards() {
            let s = shard.stats();
            stats.points += s.points;
            stats.indexed_vectors += s.indexed_vectors;
            stats.segments += s.segments;
            match shard.optimizer_status() {
                OptimizerStatus::Busy => stats.status = CollectionStatus::Yellow,
                OptimizerStatus::Paused if stats.status == CollectionStatus::Green => {
                    stats.status = CollectionStatus::Grey
                }
                OptimizerStatus::Paused | OptimizerStatus::Idle => {}
            }
        }
        stats
    }

    /// [`Self::local_stats`], with the exact point count over the whole collection (this
    /// peer's own count when other peers cannot be reached).
    pub async fn stats(&self) -> CollectionStats {
        let mut stats = self.local_stats();
        match self.count(None, None).await {
            Ok(points) => stats.points = points,
            Err(e) => {
                tracing::debug!(error = %e, "collection point count fell back to local replicas")
            }
        }
        stats
    }

    /// Replaces this peer's replica of shard `id` with the shard directory `prepared` (a
    /// restored snapshot image whose segment checksums
    /// [`crate::shard::snapshot::image_to_shard_dir`] verified), which must be on the same
    /// file system as the collection. A directory that does not open is refused (BadInput)
    /// and the old replica is put back and reopened.
    ///
    /// Crash safety: `prepared` is first fsynced, marked complete and renamed to
    /// `shards/.restore-<id>-<uuid>`; then the old replica's directory is renamed away and the
    /// restored one renamed to `shards/<id>`. A restart between the two renames finds the
    /// marked directory and no `shards/<id>`, and finishes the swap (see
    /// [`roll_forward_restores`]); before the first rename nothing changed.
    ///
    /// Updates applied to the old replica while the swap runs are lost with it: callers hold
    /// the updates back (a snapshot transfer queues them) or accept that a restore replaces
    /// the replica's contents (the snapshot API). Blocking. Returns the restored point count.
    pub fn restore_local_shard(&self, id: u32, prepared: &Path) -> Result<usize, CollectionError> {
        self.restore_local_shard_fenced(id, prepared, None)
    }

    /// [`Collection::restore_local_shard`] for a `snapshot` transfer's image: refused
    /// ([`CollectionError::StaleTransfer`]), changing nothing, unless this peer's applied
    /// state runs the transfer `fence` names (checked under the shard's forwarding gate).
    /// The caller waits for that state first (see [`Collection::wait_for_fence`]).
    pub fn restore_transfer_image(
        &self,
        id: u32,
        prepared: &Path,
        fence: StreamFence,
    ) -> Result<usize, CollectionError> {
        self.restore_local_shard_fenced(id, prepared, Some(fence))
    }

    fn restore_local_shard_fenced(
        &self,
        id: u32,
        prepared: &Path,
        fence: Option<StreamFence>,
    ) -> Result<usize, CollectionError> {
        let _one_restore_at_a_time = self.restoring.lock();
        let gate = self.gate(id);
        // Exclusive, like a copy's `Begin` (see `recover_local`): the image replaces the
        // replica after every earlier checked copy, and before any later one is judged.
        // Blocking: a transfer's image is restored on a blocking thread.
        let _checked = fence.map(|_| gate.blocking_write());
        if let Some(fence) = &fence {
            self.fence_holds(id, fence)?;
        }
        // A replica that did not open may be restored over (see `FailedReplica`). Its
        // directory leaves its place as a live one does (so that a crash or a failed open puts
        // it back, still failed); on success it goes to quarantine.
        let was_failed = self.replica_failed(id);
        if self.local_shard(id).is_none() && !was_failed {
            return Err(CollectionError::BadInput(format!(
                "shard {id} of collection `{}` has no replica on this peer",
                self.name
            )));
        }
        let began = std::time::Instant::now();
        crate::shard::snapshot::sync_tree(prepared).map_err(CollectionError::storage)?;
        let synced_ms = began.elapsed().as_millis() as u64;
        let marker = prepared.join(RESTORE_MARKER);
        std::fs::write(&marker, b"").map_err(CollectionError::storage)?;
        crate::storage::mapped::sync_dir(prepared).map_err(CollectionError::storage)?;
        let shards_dir = self.dir.join("shards");
        let staged = shards_dir.join(format!(".restore-{id}-{}", uuid::Uuid::new_v4()));
        std::fs::rename(prepared, &staged).map_err(CollectionError::storage)?;
        crate::storage::mapped::sync_dir(&shards_dir).map_err(CollectionError::storage)?;
        let path = shards_dir.join(id.to_string());
        let doomed = shards_dir.join(format!(".dropped-{id}-{}", uuid::Uuid::new_v4()));
        // The old replica stops writing its files first (waiting for an optimizer step or a
        // flush in progress): once its directory is renamed away, a late write by path
        // would land in the restored one. Requests meanwhile get a retryable error.
        if let Some(old) = self.local_shard(id) {
            old.retire();
        }
        let retired_ms = began.elapsed().as_millis() as u64;
        let mut local = self.local.write();
        let old = local.remove(&id);
        if let Some(old) = &old {
            // The replica a concurrent reconcile put in place meanwhile, if any.
            old.retire();
        }
        // A failed replica whose files were moved to quarantine already leaves nothing here.
        let moved_away = if path.exists() {
            std::fs::rename(&path, &doomed)
        } else {
            Ok(())
        };
        // Whether the image reached `shards/<id>` (then it, not the old replica, is there).
        let mut image_in_place = false;
        let swapped = moved_away
            .and_then(|()| {
                crate::shard::snapshot::test_pause("swapping");
                let renamed = std::fs::rename(&staged, &path);
                image_in_place = renamed.is_ok();
                renamed
            })
            .and_then(|()| std::fs::remove_file(path.join(RESTORE_MARKER)))
            .and_then(|()| crate::storage::mapped::sync_dir(&shards_dir));
        // Segment checksums were verified when the image was prepared: lengths suffice here.
        // A replica that does not open is not served: the old one is put back below.
        let opened = swapped.map_err(CollectionError::storage).and_then(|()| {
            LocalShard::open_checked(
                &path,
                self.config(),
                self.env.sync,
                crate::shard::segment::Verify::Lengths,
            )
            .map_err(|e| {
                CollectionError::BadInput(format!("the snapshot's shard does not open: {e}"))
            })
        });
        let shard = match opened {
            Ok(shard) => Arc::new(shard),
            Err(e) => {
                // Put the old replica's files back and open them again; the restored image
                // (if it never reached its place) is removed, marker first, so that no
                // restart takes it for a swap cut off half-way.
                drop(old);
                if staged.exists() {
                    let _ = std::fs::remove_file(staged.join(RESTORE_MARKER));
                    let _ = std::fs::remove_dir_all(&staged);
                }
                // The image that did not open leaves its place (also when there is no old
                // replica to put back, as for one that failed to open itself: an image left
                // at `shards/<id>` would be taken for the replica).
                if image_in_place {
                    let failed = shards_dir.join(format!(".failed-{id}-{}", uuid::Uuid::new_v4()));
                    let _ = std::fs::rename(&path, failed);
                }
                if doomed.exists() && std::fs::rename(&doomed, &path).is_ok() {
                    match LocalShard::open(&path, self.config(), self.env.sync) {
                        Ok(shard) => {
                            let shard = Arc::new(shard);
                            maintenance::spawn(Arc::clone(&shard), Arc::clone(&self.env.builder));
                            local.insert(id, shard);
                        }
                        // Not served, nor replaced by an empty one while the cluster counts
                        // on it (see `FailedReplica`).
                        Err(reopen) => {
                            tracing::error!(collection = %self.name, shard = id, error = %reopen, "the replica put back after a failed restore does not open");
                            self.failed.lock().insert(
                                id,
                                FailedReplica {
                                    reason: reopen.to_string(),
                                    kept_at: None,
                                    refused_for: None,
                                },
                            );
                        }
                    }
                }
                return Err(e);
            }
        };
        let points = shard.stats().points;
        shard.set_payload_schema(&self.payload_schema.read());
        maintenance::spawn(Arc::clone(&shard), Arc::clone(&self.env.builder));
        local.insert(id, shard);
        drop(local);
        drop(old);
        self.failed.lock().remove(&id);
        if was_failed && doomed.exists() {
            match quarantine(&self.dir, id, &doomed) {
                Ok(kept_at) => {
                    tracing::info!(collection = %self.name, shard = id, kept_at = %kept_at.display(), "a replica that did not open is replaced by a restored one; its files are kept in quarantine");
                }
                Err(e) => {
                    tracing::warn!(collection = %self.name, shard = id, error = %e, path = %doomed.display(), "a replica that did not open is replaced by a restored one; its files could not be moved to quarantine and are removed on the next start");
                }
            }
        } else if doomed.exists()
            && let Err(e) = std::fs::remove_dir_all(&doomed)
        {
            tracing::warn!(error = %e, path = %doomed.display(), "could not remove a replaced replica; it is removed on the next start");
        }
        tracing::info!(
            collection = %self.name,
            shard = id,
            points,
            synced_ms,
            retired_ms,
            opened_ms = began.elapsed().as_millis() as u64,
            "local replica restored from a snapshot"
        );
        Ok(points)
    }

    /// Flushes every local replica; used on shutdown.
    pub fn flush(&self) -> Result<(), CollectionError> {
        for (_, shard) in self.local_shards() {
            shard.flush()?;
        }
        Ok(())
    }

    /// Stops background work of every local replica.
    pub fn cancel(&self) {
        for (_, shard) in self.local_shards() {
            shard.cancel();
        }
    }
}

/// The shards of `key`'s ring for reads or writes, in ring order.
fn ring_of(layout: &Layout, key: Option<&ShardKey>, writes: bool) -> Vec<u32> {
    layout
        .iter()
        .filter(|(_, s)| s.key.as_ref() == key && if writes { s.write } else { s.read })
        .map(|(id, _)| *id)
        .collect()
}

/// The order of facet values of equal counts, as Qdrant's facet value type orders them:
/// strings, then integers, then booleans, each in its natural order.
fn facet_value_order(a: &serde_json::Value, b: &serde_json::Value) -> std::cmp::Ordering {
    use serde_json::Value;
    let rank = |v: &Value| match v {
        Value::String(_) => 0,
        Value::Number(_) => 1,
        _ => 2,
    };
    match (a, b) {
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        (Value::Number(x), Value::Number(y)) => x.as_i64().cmp(&y.as_i64()),
        (Value::String(x), Value::String(y)) => x.cmp(y),
        _ => rank(a).cmp(&rank(b)),
    }
}

/// [`prepare_vector`] for every vector of a point. An empty unnamed vector (`"vector": []`) in
/// a collection without an unnamed vector means no vector, as Qdrant reads it.
fn prepare_vectors(
    config: &CollectionConfig,
    vectors: NamedVectors,
) -> Result<NamedVectors, CollectionError> {
    let no_unnamed = config.vector_kind(DEFAULT_VECTOR).is_none();
    vectors
        .into_iter()
        .filter(|(name, v)| {
            !(no_unnamed
                && name.as_str() == DEFAULT_VECTOR
                && matches!(v, VectorData::Dense(d) if d.is_empty()))
        })
        .map(|(name, v)| Ok((name.clone(), prepare_vector(config, &name, v)?)))
        .collect()
}

/// Checks a vector against the configured vector `name` and brings it into its stored form:
/// the size (and Qdrant's limits) must match, values must be finite; dense values take the
/// vector's `datatype` and Cosine vectors (and each Cosine sub-vector) are normalised (see
/// [`Datatype::prepare`]), sparse vectors sorted by index.
pub fn prepare_vector(
    config: &CollectionConfig,
    name: &str,
    vector: VectorData,
) -> Result<VectorData, CollectionError> {
    let shown = if name.is_empty() { "default" } else { name };
    let finite = |v: &[f32]| {
        if v.iter().all(|x| x.is_finite()) {
            Ok(())
        } else {
            Err(CollectionError::BadInput(
                "vectors must not contain NaN or infinite values".into(),
            ))
        }
    };
    let size_check = |v: &[f32], size: usize| {
        if v.len() != size {
            return Err(CollectionError::BadInput(format!(
                "Vector dimension error: expected dim: {size}, got {}",
                v.len()
            )));
        }
        finite(v)
    };
    let convert_error = |e: String| CollectionError::BadInput(format!("vector `{shown}`: {e}"));
    let Some(kind) = config.vector_kind(name) else {
        return Err(CollectionError::BadInput(format!(
            "Not existing vector name error: {shown}"
        )));
    };
    match (kind, vector) {
        (VectorKind::Dense(p), VectorData::Dense(mut v)) => {
            size_check(&v, p.size)?;
            Datatype::prepare(p.datatype, p.distance, &mut v).map_err(convert_error)?;
            Ok(VectorData::Dense(v))
        }
        (VectorKind::Multi(p), VectorData::Multi(mut vs)) => {
            if vs.is_empty() {
                return Err(CollectionError::BadInput(format!(
                    "multivector `{shown}` must contain at least one vector"
                )));
            }
            if vs.len() > MAX_MULTIVECTOR_LEN {
                return Err(CollectionError::BadInput(format!(
                    "multivector `{shown}` has {} vectors; at most {MAX_MULTIVECTOR_LEN} are allowed",
                    vs.len()
                )));
            }
            for v in &mut vs {
                size_check(v, p.size)?;
                Datatype::prepare(p.datatype, p.distance, v).map_err(convert_error)?;
            }
            Ok(VectorData::Multi(vs))
        }
        // A dense vector where a multivector is configured is a multivector of one.
        (VectorKind::Multi(_), VectorData::Dense(v)) => {
            prepare_vector(config, name, VectorData::Multi(vec![v]))
        }
        (VectorKind::Sparse(_), VectorData::Sparse(s)) => {
            if s.indices.len() > MAX_SPARSE_ENTRIES {
                return Err(CollectionError::BadInput(format!(
                    "sparse vector `{shown}` has {} entries; at most {MAX_SPARSE_ENTRIES} are allowed",
                    s.indices.len()
                )));
            }
            SparseVector::new(s.indices, s.values)
                .map(VectorData::Sparse)
                .map_err(|e| CollectionError::BadInput(format!("vector `{shown}`: {e}")))
        }
        (kind, given) => {
            let expected = match kind {
                VectorKind::Dense(_) => "dense",
                VectorKind::Multi(_) => "multi",
                VectorKind::Sparse(_) => "sparse",
            };
            Err(CollectionError::BadInput(format!(
                "Wrong input: vector `{shown}` is a {expected} vector, got a {} vector",
                given.kind()
            )))
        }
    }
}

/// The ids an update names explicitly (none for a filter-based one).
fn named_ids(request: &UpdateRequest) -> Vec<PointId> {
    let of = |sel: &PointSelection| match sel {
        PointSelection::Ids(ids) | PointSelection::IdsIfPresent(ids) => ids.clone(),
        PointSelection::Filter(_) => Vec::new(),
    };
    match request {
        UpdateRequest::Upsert(points) | UpdateRequest::ConditionalUpsert { points, .. } => {
            points.iter().map(|p| p.id).collect()
        }
        UpdateRequest::UpdateVectors { points, .. } => points.iter().map(|p| p.0).collect(),
        UpdateRequest::DeleteVectors { selection, .. } => of(selection),
        UpdateRequest::Delete(sel) | UpdateRequest::ClearPayload(sel) => of(sel),
        UpdateRequest::SetPayload { selection, .. }
        | UpdateRequest::OverwritePayload { selection, .. }
        | UpdateRequest::DeletePayload { selection, .. } => of(selection),
    }
}

/// The items (points, ids) whose point `keep` keeps, `id` naming an item's point; `None`
/// when there are none.
fn owned_by<T: Clone>(
    items: &[T],
    keep: &dyn Fn(&PointId) -> bool,
    id: impl Fn(&T) -> &PointId,
) -> Option<Vec<T>> {
    let mine: Vec<T> = items
        .iter()
        .filter(|item| keep(id(item)))
        .cloned()
        .collect();
    (!mine.is_empty()).then_some(mine)
}

/// The most ids one update passed on by a resharding names: a filter the source resolved to
/// many points is passed on in several updates, each well below the p2p message limit.
const PASS_ON_IDS: usize = 50_000;

/// What a resharding stream passes on to its destination shard of an operation its source
/// replica applied (`op`, as the replica logged it: see `LocalShard::update_resolved`): the
/// part that concerns points the stream carries (`scope`), every selection an explicit list of the ids the
/// source changed, lenient about points the destination lacks. Never a filter: applied on the
/// destination, a filter would also reach the destination shard's own points (a copy
/// being cleared on the source would clear the destination shard), and points written there
/// directly since the source applied it. Empty when nothing concerns `owner`.
pub fn pass_on(op: &ShardOperation, scope: &StreamScope) -> Vec<UpdateRequest> {
    let carried = |id: &PointId| scope.carries(id);
    let owner = &carried;
    let select = |ids: &[PointId], make: &dyn Fn(PointSelection) -> UpdateRequest| {
        owned_by(ids, owner, |id| id)
            .unwrap_or_default()
            .chunks(PASS_ON_IDS)
            .map(|chunk| make(PointSelection::IdsIfPresent(chunk.to_vec())))
            .collect()
    };
    match op {
        ShardOperation::Upsert(points) => owned_by(points, owner, |p| &p.id)
            .map(|mine| vec![UpdateRequest::Upsert(mine)])
            .unwrap_or_default(),
        ShardOperation::UpdateVectors(points) => owned_by(points, owner, |p| &p.0)
            .map(|mine| {
                vec![UpdateRequest::UpdateVectors {
                    points: mine,
                    filter: None,
                    missing_ok: true,
                }]
            })
            .unwrap_or_default(),
        ShardOperation::DeleteVectors { points, names } => {
            select(points, &|selection| UpdateRequest::DeleteVectors {
                selection,
                names: names.clone(),
            })
        }
        ShardOperation::Delete(points) => select(points, &UpdateRequest::Delete),
        ShardOperation::SetPayload {
            points,
            payload,
            key,
        } => select(points, &|selection| UpdateRequest::SetPayload {
            selection,
            payload: payload.clone(),
            key: key.clone(),
        }),
        ShardOperation::OverwritePayload { points, payload } => {
            select(points, &|selection| UpdateRequest::OverwritePayload {
                selection,
                payload: payload.clone(),
            })
        }
        ShardOperation::DeletePayload { points, keys } => {
            select(points, &|selection| UpdateRequest::DeletePayload {
                selection,
                keys: keys.clone(),
            })
        }
        ShardOperation::ClearPayload { points } => select(points, &UpdateRequest::ClearPayload),
    }
}

/// The part of an update that concerns the points `owner` owns: upserts and id selections
/// narrowed to them, filter selections unchanged (every shard applies those to its own
/// points). `None` when nothing is left.
pub fn restrict(request: &UpdateRequest, owner: &Ownership) -> Option<UpdateRequest> {
    let owns = |id: &PointId| owner.owns(id);
    let narrow_ids = |ids: &[PointId]| owned_by(ids, &owns, |id| id);
    let narrow = |sel: &PointSelection| -> Option<PointSelection> {
        match sel {
            PointSelection::Ids(ids) => narrow_ids(ids).map(PointSelection::Ids),
            PointSelection::IdsIfPresent(ids) => narrow_ids(ids).map(PointSelection::IdsIfPresent),
            PointSelection::Filter(f) => Some(PointSelection::Filter(f.clone())),
        }
    };
    let narrow_points = |points: &[PointWrite]| owned_by(points, &owns, |p| &p.id);
    Some(match request {
        UpdateRequest::Upsert(points) => UpdateRequest::Upsert(narrow_points(points)?),
        UpdateRequest::ConditionalUpsert {
            points,
            mode,
            filter,
        } => UpdateRequest::ConditionalUpsert {
            points: narrow_points(points)?,
            mode: *mode,
            filter: filter.clone(),
        },
        UpdateRequest::UpdateVectors {
            points,
            filter,
            missing_ok,
        } => {
            let mine = owned_by(points, &owns, |p| &p.0)?;
            UpdateRequest::UpdateVectors {
                points: mine,
                filter: filter.clone(),
                missing_ok: *missing_ok,
            }
        }
        UpdateRequest::DeleteVectors { selection, names } => UpdateRequest::DeleteVectors {
            selection: narrow(selection)?,
            names: names.clone(),
        },
        UpdateRequest::Delete(sel) => UpdateRequest::Delete(narrow(sel)?),
        UpdateRequest::SetPayload {
            selection,
            payload,
            key,
        } => UpdateRequest::SetPayload {
            selection: narrow(selection)?,
            payload: payload.clone(),
            key: key.clone(),
        },
        UpdateRequest::OverwritePayload { selection, payload } => UpdateRequest::OverwritePayload {
            selection: narrow(selection)?,
            payload: payload.clone(),
        },
        UpdateRequest::DeletePayload { selection, keys } => UpdateRequest::DeletePayload {
            selection: narrow(selection)?,
            keys: keys.clone(),
        },
        UpdateRequest::ClearPayload(selection) => UpdateRequest::ClearPayload(narrow(selection)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Distance;

    /// A replica comes into place whole: a creation cut off after its files were made (a
    /// kill there) leaves no directory named after the shard, only a staging directory that
    /// is not a shard id (which [`Collection::open`] removes); a completed one leaves the
    /// replica and no staging directory.
    #[test]
    fn a_replica_comes_into_place_whole() {
        let dir = tempfile::tempdir().unwrap();
        let shards = dir.path().join("shards");
        std::fs::create_dir_all(&shards).unwrap();
        let config = Arc::new(CollectionConfig::single_dense(4, Distance::Euclid));

        STOP_AFTER_STAGING.lock().unwrap().push(shards.clone());
        let cut_off = create_replica(&shards, 3, Arc::clone(&config), SyncMode::Os);
        STOP_AFTER_STAGING.lock().unwrap().retain(|p| p != &shards);
        assert!(cut_off.is_err());
        let left = dir_names(&shards);
        assert_eq!(left.len(), 1, "{left:?}");
        assert!(left[0].starts_with(".new-3-") && left[0].parse::<u32>().is_err());
        std::fs::remove_dir_all(shards.join(&left[0])).unwrap();

        drop(create_replica(&shards, 3, Arc::clone(&config), SyncMode::Os).unwrap());
        assert_eq!(dir_names(&shards), ["3"]);
        LocalShard::open(&shards.join("3"), config, SyncMode::Os).unwrap();
    }
}
