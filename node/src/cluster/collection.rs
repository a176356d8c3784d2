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
    ShardCount, ShardRequest, ShardRetrieve, ShardScroll, ShardSearch, ShardTarget,
};
use crate::collection_config::{CollectionConfig, PayloadIndexEntry, ShardingMethod};
use crate::consensus::{
    ClusterError, ClusterOperation, CollectionMeta, PeerId, PeerInfo, ReplicaState, ShardId,
    ShardKey,
};
use crate::index::filter::Filter;
use crate::shard::local_shard::{
    IndexBuilder, LocalShard, OptimizerStatus, Record, ScoredRecord, ShardError,
};
use crate::shard::maintenance;
use crate::shard::operations::{PointSelection, PointWrite, UpdateRequest};
use crate::storage::wal::SyncMode;
use crate::types::{Distance, PointId};

/// How a search scores points.
#[derive(Debug, Clone, PartialEq)]
pub enum SearchTarget {
    /// Nearest to this raw (not yet normalised) vector.
    Vector(Vec<f32>),
    /// Qdrant's `best_score` recommendation strategy over these raw example vectors.
    BestScore {
        positive: Vec<Vec<f32>>,
        negative: Vec<Vec<f32>>,
    },
    /// No scoring: matching points in id order, each with score 0 (a query without `query`).
    IdOrder,
    /// Qdrant's `sum_scores` strategy: similarity to positives minus similarity to negatives.
    SumScores {
        positive: Vec<Vec<f32>>,
        negative: Vec<Vec<f32>>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct SearchRequest {
    pub target: SearchTarget,
    pub filter: Option<Filter>,
    /// Points never returned (the examples of a recommendation).
    pub exclude: HashSet<PointId>,
    pub limit: usize,
    pub offset: usize,
    pub ef: Option<usize>,
    pub exact: bool,
    pub score_threshold: Option<f32>,
    pub with_payload: bool,
    pub with_vector: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CollectionStatus {
    Green,
    Yellow,
}

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

/// One shard of the collection: its key and its replicas, ordered by peer id.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ShardLayout {
    pub key: Option<ShardKey>,
    pub replicas: Vec<ReplicaInfo>,
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

/// How many 50 ms steps a write that found its replicas gone waits for a newer layout.
const LAYOUT_PATIENCE_STEPS: usize = 40;

/// Errors that say the request itself is wrong: every replica would answer the same, so they
/// are returned as they are instead of trying another replica or failing the replica.
fn is_request_error(e: &CollectionError) -> bool {
    matches!(
        e,
        CollectionError::BadInput(_)
            | CollectionError::PointNotFound(_)
            | CollectionError::Shard(ShardError::WrongDimension { .. } | ShardError::BadInput(_))
    )
}

/// A transfer sending this peer's replica of a shard: while it runs, every update applied to
/// the replica is also applied to the destination, in the same order, and never interleaved
/// with a batch of the stream (both hold `order`).
pub struct Outgoing {
    pub to: PeerId,
    pub destination: RemoteShard,
    pub order: tokio::sync::Mutex<()>,
    /// Set when an update could not be forwarded: the destination missed it, so the transfer
    /// must not finish.
    pub broken: std::sync::atomic::AtomicBool,
    /// While `Some`, updates are queued here instead of forwarded (the destination is being
    /// restored from a snapshot); the transfer replays them in order afterwards.
    pub queue: parking_lot::Mutex<Option<Vec<Arc<UpdateRequest>>>>,
}

pub struct Collection {
    name: String,
    dir: PathBuf,
    config: Arc<CollectionConfig>,
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
    /// Transfers sending a local replica, by shard id.
    outgoing: parking_lot::Mutex<HashMap<u32, Arc<Outgoing>>>,
    /// Local updates hold it shared from looking up a transfer until applied; registering a
    /// transfer takes it exclusively, so no update can slip between the registration and the
    /// first batch unforwarded.
    forwarding_gate: tokio::sync::RwLock<()>,
    /// Local replicas that the cluster placed elsewhere (a finished move) but that are kept
    /// while their transfer still forwards: they take no update of their own any more, so a
    /// peer still routing by the old layout gets an error instead of an acknowledgement that
    /// would be lost with the replica.
    retired: parking_lot::Mutex<BTreeSet<u32>>,
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
        for entry in std::fs::read_dir(&shards_dir).map_err(CollectionError::storage)? {
            let entry = entry.map_err(CollectionError::storage)?;
            let file_name = entry.file_name().to_string_lossy().into_owned();
            let Ok(id) = file_name.parse::<u32>() else {
                // A replica dropped half-way, renamed away first.
                let _ = std::fs::remove_dir_all(entry.path());
                continue;
            };
            let shard = LocalShard::open(&entry.path(), Arc::clone(&config), env.sync)?;
            let shard = Arc::new(shard);
            maintenance::spawn(Arc::clone(&shard), Arc::clone(&env.builder));
            local.insert(id, shard);
        }
        Ok(Collection {
            name: name.to_string(),
            dir: dir.to_path_buf(),
            config,
            uuid,
            env,
            layout: RwLock::new(Arc::new(Layout::new())),
            local: RwLock::new(local),
            payload_schema: RwLock::new(BTreeMap::new()),
            outgoing: parking_lot::Mutex::new(HashMap::new()),
            forwarding_gate: tokio::sync::RwLock::new(()),
            retired: parking_lot::Mutex::new(BTreeSet::new()),
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
        let layout: Layout = meta
            .shards
            .iter()
            .map(|(id, shard)| {
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
        // New replicas exist before the layout routes anything to them ...
        for id in &mine {
            if !self.local.read().contains_key(id) {
                let shard = Arc::new(LocalShard::open(
                    &self.dir.join("shards").join(id.to_string()),
                    Arc::clone(&self.config),
                    self.env.sync,
                )?);
                maintenance::spawn(Arc::clone(&shard), Arc::clone(&self.env.builder));
                self.local.write().insert(*id, shard);
                tracing::info!(collection = %self.name, shard = id, "local replica created");
            }
        }
        *self.layout.write() = Arc::new(layout);
        *self.payload_schema.write() = meta.payload_schema.clone();
        // ... and replicas that left are dropped after it stopped routing to them. A moved
        // replica whose transfer still forwards (until every peer routes to the new one) stays
        // until a later pass.
        let forwarding: BTreeSet<u32> = self.outgoing.lock().keys().copied().collect();
        let held: Vec<u32> = self.local.read().keys().copied().collect();
        {
            let mut retired = self.retired.lock();
            retired.retain(|id| !mine.contains(id));
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
            let Some(shard) = self.local.write().remove(&id) else {
                continue;
            };
            shard.cancel();
            let path = self.dir.join("shards").join(id.to_string());
            let doomed = self
                .dir
                .join("shards")
                .join(format!(".dropped-{id}-{}", uuid::Uuid::new_v4()));
            std::fs::rename(&path, &doomed).map_err(CollectionError::storage)?;
            if let Err(e) = std::fs::remove_dir_all(&doomed) {
                tracing::warn!(error = %e, path = %doomed.display(), "could not remove a dropped replica; it is removed on the next start");
            }
            tracing::info!(collection = %self.name, shard = id, "local replica dropped");
        }
        Ok(())
    }

    pub fn payload_schema(&self) -> BTreeMap<String, PayloadIndexEntry> {
        self.payload_schema.read().clone()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn config(&self) -> &CollectionConfig {
        &self.config
    }

    /// The shards and their replicas as of the last reconciled cluster state.
    pub fn layout(&self) -> Arc<Layout> {
        Arc::clone(&self.layout.read())
    }

    /// This peer's replica of shard `id`, if it has one.
    pub fn local_shard(&self, id: u32) -> Option<Arc<LocalShard>> {
        self.local.read().get(&id).cloned()
    }

    /// This peer's replicas, by shard id.
    pub fn local_shards(&self) -> Vec<(u32, Arc<LocalShard>)> {
        self.local
            .read()
            .iter()
            .map(|(id, s)| (*id, Arc::clone(s)))
            .collect()
    }

    fn is_custom_sharded(&self) -> bool {
        self.config.params.sharding_method == Some(ShardingMethod::Custom)
    }

    fn distance(&self) -> Distance {
        self.config.distance()
    }

    /// Checks and normalises an incoming vector.
    pub fn prepare_vector(&self, mut vector: Vec<f32>) -> Result<Vec<f32>, CollectionError> {
        let dim = self.config.dim();
        if vector.len() != dim {
            return Err(CollectionError::BadInput(format!(
                "Vector dimension error: expected dim: {dim}, got {}",
                vector.len()
            )));
        }
        if vector.iter().any(|x| !x.is_finite()) {
            return Err(CollectionError::BadInput(
                "vectors must not contain NaN or infinite values".into(),
            ));
        }
        self.distance().preprocess(&mut vector);
        Ok(vector)
    }

    fn unknown_key(&self, key: &ShardKey) -> CollectionError {
        CollectionError::BadInput(format!(
            "Shard key {key} does not exist in collection `{}`",
            self.name
        ))
    }

    /// The shards that points hash over for `key`: the shards of that key, or every shard of a
    /// collection without custom sharding.
    fn ring(&self, layout: &Layout, key: Option<&ShardKey>) -> Result<Vec<u32>, CollectionError> {
        let ids: Vec<u32> = layout
            .iter()
            .filter(|(_, s)| s.key.as_ref() == key)
            .map(|(id, _)| *id)
            .collect();
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

    /// The shards a read or a selection-based write addresses.
    fn selected_shards(
        &self,
        layout: &Layout,
        selector: Option<&ShardKeySelector>,
    ) -> Result<Vec<u32>, CollectionError> {
        match selector {
            None => Ok(layout.keys().copied().collect()),
            Some(selector) => {
                let mut ids = BTreeSet::new();
                for key in selector.keys() {
                    ids.extend(self.ring(layout, Some(&key))?);
                }
                Ok(ids.into_iter().collect())
            }
        }
    }

    /// A test of whether a point belongs to `shard` under the ring of that shard's key; the
    /// ring is computed once, for testing many points.
    fn owned_by(layout: &Layout, shard: u32) -> impl Fn(&PointId) -> bool {
        let key = layout.get(&shard).and_then(|s| s.key.as_ref());
        let ring: Vec<u32> = layout
            .iter()
            .filter(|(_, s)| s.key.as_ref() == key)
            .map(|(i, _)| *i)
            .collect();
        move |id| !ring.is_empty() && ring[shard_for(id, ring.len() as u32) as usize] == shard
    }

    /// Applies an update on every replica of every shard it concerns; acknowledged once each
    /// shard has `write_consistency_factor` replicas that applied it. Returns an operation id.
    pub async fn update(
        &self,
        request: UpdateRequest,
        selector: Option<&ShardKeySelector>,
    ) -> Result<u64, CollectionError> {
        let layout = self.layout();
        let mut per_shard: BTreeMap<u32, UpdateRequest> = BTreeMap::new();
        match request {
            UpdateRequest::Upsert(points) => {
                let rings: Vec<Vec<u32>> = match selector {
                    None => vec![self.ring(&layout, None)?],
                    Some(selector) => selector
                        .keys()
                        .iter()
                        .map(|k| self.ring(&layout, Some(k)))
                        .collect::<Result<_, _>>()?,
                };
                let mut groups: BTreeMap<u32, Vec<PointWrite>> = BTreeMap::new();
                for mut p in points {
                    p.vector = self.prepare_vector(p.vector)?;
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
                for shard in self.selected_shards(&layout, selector)? {
                    if let Some(narrowed) = Self::restrict(&layout, &other, shard) {
                        per_shard.insert(shard, narrowed);
                    }
                }
            }
        }
        let per_shard: Vec<(u32, Arc<UpdateRequest>)> = per_shard
            .into_iter()
            .map(|(shard, request)| (shard, Arc::new(request)))
            .collect();
        let results = futures::future::join_all(
            per_shard
                .iter()
                .map(|(shard, request)| self.update_shard(&layout, *shard, Arc::clone(request))),
        )
        .await;
        let mut op_id = 0;
        for ((shard, request), result) in per_shard.iter().zip(results) {
            let id = match result {
                // The replicas this peer wrote to may have moved on (a move that just
                // finished): once this peer's layout has caught up, try the new ones.
                Err(CollectionError::Unavailable(reason)) => {
                    match self.newer_layout(&layout).await {
                        Some(newer) => {
                            self.update_shard(&newer, *shard, Arc::clone(request))
                                .await?
                        }
                        None => return Err(CollectionError::Unavailable(reason)),
                    }
                }
                other => other?,
            };
            op_id = op_id.max(id);
        }
        Ok(op_id)
    }

    /// A layout newer than `seen`, waiting a little for this peer to reconcile one.
    async fn newer_layout(&self, seen: &Arc<Layout>) -> Option<Arc<Layout>> {
        for _ in 0..LAYOUT_PATIENCE_STEPS {
            let current = self.layout();
            if !Arc::ptr_eq(&current, seen) && *current != **seen {
                return Some(current);
            }
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
        let results = futures::future::join_all(
            replicas
                .iter()
                .map(|r| self.update_on(shard, r, Arc::clone(&request))),
        )
        .await;
        let mut applied = 0usize;
        let mut op_id = 0;
        let mut failed = Vec::new();
        for (replica, result) in replicas.iter().zip(results) {
            match result {
                Ok(id) => {
                    applied += 1;
                    op_id = op_id.max(id);
                }
                Err(e) if is_request_error(&e) => return Err(e),
                Err(e) => failed.push((*replica, e)),
            }
        }
        let needed =
            (self.config.params.write_consistency_factor as usize).clamp(1, replicas.len());
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
        Ok(op_id)
    }

    /// Applies an update on one replica: here through [`Self::update_local`], or on the peer
    /// that holds it.
    async fn update_on(
        &self,
        shard: u32,
        replica: &ReplicaInfo,
        request: Arc<UpdateRequest>,
    ) -> Result<u64, CollectionError> {
        if replica.peer == self.env.this_peer() {
            self.update_local(shard, request).await
        } else {
            self.env
                .remote(&replica.uri, &self.name, shard)?
                .request(&*request)
                .await
        }
    }

    /// Applies an update on this peer's replica of `shard`, and forwards it to the destination
    /// of a transfer that sends this replica.
    pub async fn update_local(
        &self,
        shard: u32,
        request: Arc<UpdateRequest>,
    ) -> Result<u64, CollectionError> {
        let local = self.local_shard(shard).ok_or_else(|| {
            CollectionError::Unavailable(format!(
                "shard {shard} of `{}` has no replica on this peer yet",
                self.name
            ))
        })?;
        let _gate = self.forwarding_gate.read().await;
        if self.retired.lock().contains(&shard) {
            return Err(CollectionError::Unavailable(format!(
                "shard {shard} of `{}` moved away from this peer",
                self.name
            )));
        }
        let outgoing = self.outgoing.lock().get(&shard).cloned();
        let Some(out) = outgoing else {
            let request = Arc::clone(&request);
            return tokio::task::spawn_blocking(move || request.run_on(&local))
                .await
                .map_err(|e| CollectionError::Storage(format!("shard task failed: {e}")))?;
        };
        let _order = out.order.lock().await;
        let applied = {
            let request = Arc::clone(&request);
            tokio::task::spawn_blocking(move || request.run_on(&local))
                .await
                .map_err(|e| CollectionError::Storage(format!("shard task failed: {e}")))?
        };
        if applied.is_ok()
            && let Some(queue) = out.queue.lock().as_mut()
        {
            queue.push(Arc::clone(&request));
            return applied;
        }
        if applied.is_ok()
            && !out.broken.load(std::sync::atomic::Ordering::SeqCst)
            && let Err(e) = out.destination.request(&*request).await
        {
            tracing::warn!(collection = %self.name, shard, to = %out.to, error = %e, "could not forward an update to a transfer's destination; the transfer will abort");
            out.broken.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        applied
    }

    /// Starts forwarding the updates of the local replica of `shard` to a transfer's
    /// destination. Returns once every update that did not see the registration is applied,
    /// so whatever the transfer reads next includes them.
    pub async fn register_outgoing(&self, shard: u32, outgoing: Arc<Outgoing>) {
        let _exclusive = self.forwarding_gate.write().await;
        self.outgoing.lock().insert(shard, outgoing);
    }

    /// Stops forwarding for `shard`, if the registered transfer is still `outgoing`. Returns
    /// once every update that saw the registration has been forwarded.
    pub async fn unregister_outgoing(&self, shard: u32, outgoing: &Arc<Outgoing>) {
        let _exclusive = self.forwarding_gate.write().await;
        let mut map = self.outgoing.lock();
        if map.get(&shard).is_some_and(|o| Arc::ptr_eq(o, outgoing)) {
            map.remove(&shard);
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
            let local = self.local_shard(shard).ok_or_else(|| {
                CollectionError::Unavailable(format!(
                    "shard {shard} of `{}` has no replica on this peer yet",
                    self.name
                ))
            })?;
            tokio::task::spawn_blocking(move || request.run_on(&local))
                .await
                .map_err(|e| CollectionError::Storage(format!("shard task failed: {e}")))?
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
        let mut readable: Vec<&ReplicaInfo> = layout
            .get(&shard)
            .map(|s| {
                s.replicas
                    .iter()
                    .filter(|r| r.state.is_readable())
                    .collect()
            })
            .unwrap_or_default();
        if !readable.is_empty() {
            let turn = shard as usize % readable.len();
            readable.rotate_left(turn);
        }
        let mut last_error = None;
        for replica in readable {
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

    /// Runs one request per shard, concurrently, and returns the answers in shard order.
    async fn read_shards<R: ShardRequest>(
        &self,
        layout: &Layout,
        requests: Vec<(u32, R)>,
    ) -> Result<Vec<R::Answer>, CollectionError> {
        futures::future::join_all(
            requests
                .into_iter()
                .map(|(shard, r)| self.read_shard(layout, shard, Arc::new(r))),
        )
        .await
        .into_iter()
        .collect()
    }

    /// The part of a selection-based update that concerns `shard`.
    fn restrict(layout: &Layout, request: &UpdateRequest, shard: u32) -> Option<UpdateRequest> {
        let owns = Self::owned_by(layout, shard);
        let narrow = |sel: &PointSelection| -> Option<PointSelection> {
            match sel {
                PointSelection::Ids(ids) => {
                    let mine: Vec<PointId> = ids.iter().filter(|id| owns(id)).copied().collect();
                    (!mine.is_empty()).then_some(PointSelection::Ids(mine))
                }
                PointSelection::Filter(f) => Some(PointSelection::Filter(f.clone())),
            }
        };
        Some(match request {
            UpdateRequest::Upsert(_) => unreachable!("upserts are routed point by point"),
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
            UpdateRequest::OverwritePayload { selection, payload } => {
                UpdateRequest::OverwritePayload {
                    selection: narrow(selection)?,
                    payload: payload.clone(),
                }
            }
            UpdateRequest::DeletePayload { selection, keys } => UpdateRequest::DeletePayload {
                selection: narrow(selection)?,
                keys: keys.clone(),
            },
            UpdateRequest::ClearPayload(selection) => {
                UpdateRequest::ClearPayload(narrow(selection)?)
            }
        })
    }

    /// Points by id, in the order asked, each at most once; unknown ids are skipped.
    pub async fn retrieve(
        &self,
        ids: &[PointId],
        with_payload: bool,
        with_vector: bool,
        selector: Option<&ShardKeySelector>,
    ) -> Result<Vec<Record>, CollectionError> {
        let layout = self.layout();
        let mut seen = HashSet::new();
        let unique: Vec<PointId> = ids.iter().filter(|id| seen.insert(**id)).copied().collect();
        let requests: Vec<(u32, ShardRetrieve)> = self
            .selected_shards(&layout, selector)?
            .into_iter()
            .filter_map(|shard| {
                let owns = Self::owned_by(&layout, shard);
                let mine: Vec<PointId> = unique.iter().filter(|id| owns(id)).copied().collect();
                (!mine.is_empty()).then_some((
                    shard,
                    ShardRetrieve {
                        ids: mine,
                        with_payload,
                        with_vector,
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

    /// The stored vector of a point, or an error naming it.
    pub async fn vector_of(
        &self,
        id: &PointId,
        selector: Option<&ShardKeySelector>,
    ) -> Result<Vec<f32>, CollectionError> {
        self.retrieve(&[*id], false, true, selector)
            .await?
            .into_iter()
            .next()
            .and_then(|r| r.vector)
            .ok_or_else(|| CollectionError::PointNotFound(id.to_string()))
    }

    /// One page of points in id order, and the id the next page starts at.
    pub async fn scroll(
        &self,
        offset: Option<PointId>,
        limit: usize,
        filter: Option<&Filter>,
        with_payload: bool,
        with_vector: bool,
        selector: Option<&ShardKeySelector>,
    ) -> Result<(Vec<Record>, Option<PointId>), CollectionError> {
        let layout = self.layout();
        let request = ShardScroll {
            from: offset,
            limit: limit + 1,
            filter: filter.cloned(),
            with_payload,
            with_vector,
        };
        let requests = self
            .selected_shards(&layout, selector)?
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

    /// The exact number of points (matching `filter`) over the selected shards.
    pub async fn count(
        &self,
        filter: Option<&Filter>,
        selector: Option<&ShardKeySelector>,
    ) -> Result<usize, CollectionError> {
        let layout = self.layout();
        let request = ShardCount {
            filter: filter.cloned(),
        };
        let requests = self
            .selected_shards(&layout, selector)?
            .into_iter()
            .map(|shard| (shard, request.clone()))
            .collect();
        Ok(self.read_shards(&layout, requests).await?.into_iter().sum())
    }

    /// Checks and normalises the vectors of a search target, for every shard to use as is.
    fn prepare_target(&self, target: &SearchTarget) -> Result<ShardTarget, CollectionError> {
        let prep = |vs: &[Vec<f32>]| -> Result<Vec<Vec<f32>>, CollectionError> {
            vs.iter().map(|v| self.prepare_vector(v.clone())).collect()
        };
        Ok(match target {
            SearchTarget::Vector(v) => ShardTarget::Nearest(self.prepare_vector(v.clone())?),
            SearchTarget::BestScore { positive, negative } => ShardTarget::BestScore {
                positive: prep(positive)?,
                negative: prep(negative)?,
            },
            SearchTarget::SumScores { positive, negative } => ShardTarget::SumScores {
                positive: prep(positive)?,
                negative: prep(negative)?,
            },
            SearchTarget::IdOrder => ShardTarget::IdOrder,
        })
    }

    /// The best `limit` points after skipping `offset`, best first.
    pub async fn search(
        &self,
        request: &SearchRequest,
        selector: Option<&ShardKeySelector>,
    ) -> Result<Vec<ScoredRecord>, CollectionError> {
        let layout = self.layout();
        let shard_search = ShardSearch {
            target: self.prepare_target(&request.target)?,
            filter: request.filter.clone(),
            exclude: request.exclude.iter().copied().collect(),
            top: request.limit.saturating_add(request.offset),
            ef: request.ef,
            exact: request.exact,
            score_threshold: request.score_threshold,
            with_payload: request.with_payload,
            with_vector: request.with_vector,
        };
        let requests = self
            .selected_shards(&layout, selector)?
            .into_iter()
            .map(|shard| (shard, shard_search.clone()))
            .collect();
        let mut merged: Vec<ScoredRecord> = self
            .read_shards(&layout, requests)
            .await?
            .into_iter()
            .flatten()
            .collect();
        shard_search.sort_merged(self.distance(), &mut merged);
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
            if shard.optimizer_status() == OptimizerStatus::Busy {
                stats.status = CollectionStatus::Yellow;
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
