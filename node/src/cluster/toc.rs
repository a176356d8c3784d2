//! The table of contents: every collection this peer knows, on disk under
//! `<data-dir>/collections/<name>/` with a `config.json`, the collection's `uuid` and one
//! directory per local replica under `shards/`.
//!
//! The collections follow the applied metadata (see [`crate::cluster::metadata`]): a reconcile
//! pass after every applied operation creates the collections and local replicas the state
//! names and drops the ones it no longer names. Creating, deleting and re-placing collections
//! is therefore always "propose an operation, then wait until it is reconciled".
//!
//! A collection directory counts only once its `config.json` exists, and that file is written
//! last (to a temporary name, then renamed), so a crash half-way through creating a collection
//! leaves a directory that the next start removes. Dropping renames the directory away first for
//! the same reason.
//!
//! Only a state at least as new as the last one acted on may drop anything: after a restart the
//! Raft state machine may briefly replay an older state, and a collection created after that
//! state must not be mistaken for a deleted one. The last reconciled index is kept in
//! `<data-dir>/reconciled_index`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use tokio::sync::watch;

use crate::cluster::CollectionError;
use shoal_proto::v1::peer_service_client::PeerServiceClient;
use shoal_proto::v1::{AwaitReconciledRequest, TransferProgressRequest};

use crate::cluster::collection::{Collection, Environment};
use crate::cluster::metadata::Metadata;
use crate::cluster::transfer::{TransferProgressEntry, Transfers};
use crate::collection_config::{CollectionConfig, PayloadIndexEntry};
use crate::consensus::raft_node::ConsensusError;
use crate::consensus::{
    ClusterError, ClusterOperation, ClusterResponse, ClusterState, ClusterStateView,
    CollectionMeta, PeerId, PeerInfo, ReplicaState, ShardId, ShardMeta,
};

use crate::cluster::collection::{CONFIG_FILE, write_config};
const UUID_FILE: &str = "uuid";
/// A payload index file of the single-node layout before metadata moved into one state.
const LEGACY_PAYLOAD_SCHEMA_FILE: &str = "payload_schema.json";
const RECONCILED_FILE: &str = "reconciled_index";
/// How long `GET /collections/{c}/cluster` waits for another peer's transfer progress.
/// Reporting only: a progress left out changes nothing.
const PROGRESS_PATIENCE: Duration = Duration::from_secs(1);
/// How often the reconcile loop looks again without a change of the state. Liveness only: the
/// loop is level-triggered and every action it takes is a Raft operation validated against the
/// applied state, so looking sooner or later never changes what is safe.
const RESYNC_INTERVAL: Duration = Duration::from_secs(2);
pub const MAX_COLLECTION_NAME_LEN: usize = 255;

/// Why a metadata operation did not take effect (or was not seen to).
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error(transparent)]
    Rejected(#[from] ClusterError),
    #[error(transparent)]
    Consensus(#[from] ConsensusError),
    #[error("the operation was applied at index {0}, but this peer has not reconciled it yet")]
    NotReconciled(u64),
    /// A precondition that other peers must reach first (e.g. cleaning up after a resharding).
    #[error("{0}")]
    Waiting(String),
}

pub struct TableOfContent {
    dir: PathBuf,
    data_dir: PathBuf,
    collections: RwLock<HashMap<String, Arc<Collection>>>,
    /// Serialises reconcile passes, which touch the disk outside the map's lock.
    lifecycle: parking_lot::Mutex<()>,
    env: Arc<Environment>,
    /// The applied index of the newest state a reconcile pass acted on (persisted).
    reconciled: watch::Sender<u64>,
    /// Whether a reconcile pass has brought the collections in line with a state since this
    /// process started: until then the collections have no layout (they route nothing), even
    /// when the persisted reconciled index says an older process acted on the newest state.
    synced: watch::Sender<bool>,
    /// The transfers this peer sends.
    transfers: Arc<Transfers>,
    /// Collection, shard and full-storage snapshots on this peer.
    snapshots: Arc<crate::cluster::snapshots::SnapshotStore>,
}

pub fn validate_collection_name(name: &str) -> Result<(), CollectionError> {
    let bad = name.is_empty()
        || name.len() > MAX_COLLECTION_NAME_LEN
        || name.starts_with('.')
        || name
            .chars()
            .any(|c| matches!(c, '/' | '\\' | '\0') || c.is_control());
    if bad {
        return Err(CollectionError::BadInput(format!(
            "collection name `{name}` is invalid: use 1 to {MAX_COLLECTION_NAME_LEN} characters, \
             no slashes or control characters, not starting with a dot"
        )));
    }
    Ok(())
}

/// A complete collection directory: its name, configuration and uuid.
struct OnDisk {
    name: String,
    path: PathBuf,
    config: CollectionConfig,
    uuid: u64,
}

/// Lists the complete collection directories under `dir`, removing incomplete or dropped ones.
fn scan(dir: &Path) -> Result<Vec<OnDisk>, CollectionError> {
    fs::create_dir_all(dir).map_err(CollectionError::storage)?;
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).map_err(CollectionError::storage)? {
        let entry = entry.map_err(CollectionError::storage)?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let config_path = path.join(CONFIG_FILE);
        if name.starts_with('.') || !config_path.exists() {
            tracing::warn!(path = %path.display(), "removing an incomplete or dropped collection directory");
            fs::remove_dir_all(&path).map_err(CollectionError::storage)?;
            continue;
        }
        let text = fs::read_to_string(&config_path).map_err(CollectionError::storage)?;
        let config: CollectionConfig = serde_json::from_str(&text)
            .map_err(|e| CollectionError::Storage(format!("{}: {e}", config_path.display())))?;
        let uuid = match fs::read_to_string(path.join(UUID_FILE)) {
            Ok(text) => text.trim().parse().map_err(|e| {
                CollectionError::Storage(format!("{}: {e}", path.join(UUID_FILE).display()))
            })?,
            // Written by a version before collections had uuids.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(CollectionError::storage(e)),
        };
        found.push(OnDisk {
            name,
            path,
            config,
            uuid,
        });
    }
    Ok(found)
}

/// The metadata of a node that ran alone before its metadata lived in one state: every
/// collection on disk with all its shards local and active. Blocking.
pub fn legacy_state(data_dir: &Path, peer: PeerId, name: &str) -> ClusterState {
    let mut state = ClusterState::default();
    state.peers.insert(
        peer,
        PeerInfo {
            uri: String::new(),
            name: name.to_string(),
        },
    );
    let Ok(found) = scan(&data_dir.join("collections")) else {
        return state;
    };
    for c in found {
        let payload_schema: BTreeMap<String, PayloadIndexEntry> =
            fs::read(c.path.join(LEGACY_PAYLOAD_SCHEMA_FILE))
                .ok()
                .and_then(|bytes| serde_json::from_slice(&bytes).ok())
                .unwrap_or_default();
        let shards = (0..c.config.params.shard_number)
            .map(|i| {
                (
                    ShardId(i),
                    ShardMeta {
                        replicas: BTreeMap::from([(peer, ReplicaState::Active)]),
                        shard_key: None,
                        version: 0,
                    },
                )
            })
            .collect();
        state.collections.insert(
            c.name,
            CollectionMeta {
                config: c.config,
                shards,
                transfers: Vec::new(),
                resharding: None,
                payload_schema,
                trimming: Default::default(),
                replicating: Default::default(),
                uuid: c.uuid,
            },
        );
    }
    state
}

impl TableOfContent {
    /// Loads every complete collection under `<data_dir>/collections` with its local replicas
    /// and starts their background work. Their layouts fill in with the first reconcile pass.
    /// Must run inside a tokio runtime.
    pub fn open(data_dir: &Path, env: Arc<Environment>) -> Result<TableOfContent, CollectionError> {
        let dir = data_dir.join("collections");
        let mut collections = HashMap::new();
        for c in scan(&dir)? {
            let collection =
                Collection::open(&c.name, &c.path, c.config, c.uuid, Arc::clone(&env))?;
            collections.insert(c.name, Arc::new(collection));
        }
        let floor = match fs::read_to_string(data_dir.join(RECONCILED_FILE)) {
            Ok(text) => text.trim().parse().unwrap_or(0),
            Err(_) => 0,
        };
        tracing::info!(count = collections.len(), "collections loaded");
        let snapshots = crate::cluster::snapshots::SnapshotStore::open(data_dir)
            .map_err(CollectionError::storage)?;
        Ok(TableOfContent {
            snapshots: Arc::new(snapshots),
            dir,
            data_dir: data_dir.to_path_buf(),
            collections: RwLock::new(collections),
            lifecycle: parking_lot::Mutex::new(()),
            env,
            reconciled: watch::channel(floor).0,
            synced: watch::channel(false).0,
            transfers: Arc::new(Transfers::new()),
        })
    }

    pub fn env(&self) -> &Arc<Environment> {
        &self.env
    }

    /// The snapshots stored on this peer.
    pub fn snapshots(&self) -> &Arc<crate::cluster::snapshots::SnapshotStore> {
        &self.snapshots
    }

    pub fn transfers(&self) -> &Arc<Transfers> {
        &self.transfers
    }

    /// The node's data directory (collections, WAL, cluster state).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The collection `name`, or the collection the alias `name` points at (Qdrant resolves
    /// aliases wherever a collection name is taken).
    pub fn get(&self, name: &str) -> Result<Arc<Collection>, CollectionError> {
        if let Some(c) = self.collections.read().get(name) {
            return Ok(Arc::clone(c));
        }
        let target = self.env.metadata.view().state.aliases.get(name).cloned();
        target
            .and_then(|t| self.collections.read().get(&t).cloned())
            .ok_or_else(|| CollectionError::NotFound(name.to_string()))
    }

    /// Every alias as (alias, collection), by alias name.
    pub fn aliases(&self) -> Vec<(String, String)> {
        self.env
            .metadata
            .view()
            .state
            .aliases
            .iter()
            .map(|(a, c)| (a.clone(), c.clone()))
            .collect()
    }

    pub fn exists(&self, name: &str) -> bool {
        self.collections.read().contains_key(name)
    }

    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.collections.read().keys().cloned().collect();
        names.sort();
        names
    }

    /// The applied index of the newest state reconciled so far.
    pub fn reconciled_index(&self) -> u64 {
        *self.reconciled.borrow()
    }

    /// Waits until a reconcile pass of this process has run and a state at `index` or later
    /// is reconciled (what start-up waits for before serving); `false` on timeout.
    pub async fn wait_synced(&self, index: u64, timeout: Duration) -> bool {
        let mut synced = self.synced.subscribe();
        tokio::time::timeout(timeout, async {
            synced.wait_for(|s| *s).await.is_ok() && self.wait_reconciled(index, timeout).await
        })
        .await
        .unwrap_or(false)
    }

    /// Waits until a state at `index` or later is reconciled; `false` on timeout.
    pub async fn wait_reconciled(&self, index: u64, timeout: Duration) -> bool {
        let mut rx = self.reconciled.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|i| *i >= index))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Applies a metadata operation and waits until this peer reconciled it; in a cluster, also
    /// waits (for a bounded time) until the other peers did, so that a collection created
    /// through one peer is usable through every peer when the call returns.
    pub async fn submit(&self, op: ClusterOperation) -> Result<ClusterResponse, SubmitError> {
        let metadata = Arc::clone(&self.env.metadata);
        let collection = match &op {
            ClusterOperation::CreateCollection { name, .. } => Some(name.clone()),
            ClusterOperation::CreateShardKey { collection, .. } => Some(collection.clone()),
            _ => None,
        };
        let (result, index) = metadata.propose(op).await?;
        let response = result?;
        if !self
            .wait_reconciled(index, Metadata::PEER_APPLY_PATIENCE)
            .await
        {
            return Err(SubmitError::NotReconciled(index));
        }
        self.await_peers(index).await;
        // New replicas start Initializing; each peer activates its own once it created it
        // (see `activate_own_replicas`). Wait until they all serve, everywhere.
        if let (Some(collection), ClusterResponse::ShardsPlaced { .. }) = (collection, &response) {
            let mut views = metadata.applied();
            let activated = tokio::time::timeout(
                Metadata::PEER_APPLY_PATIENCE,
                views.wait_for(|v| {
                    v.state.collections.get(&collection).is_none_or(|c| {
                        c.shards
                            .values()
                            .flat_map(|s| s.replicas.values())
                            .all(|r| *r != ReplicaState::Initializing)
                    })
                }),
            )
            .await
            .ok()
            .and_then(|r| r.ok().map(|view| view.applied_index().unwrap_or(index)));
            match activated {
                Some(last) => {
                    self.wait_reconciled(last, Metadata::PEER_APPLY_PATIENCE)
                        .await;
                    self.await_peers(last).await;
                }
                None => tracing::warn!(
                    collection,
                    "not every new replica was activated in time; they will be when their peers come up"
                ),
            }
        }
        Ok(response)
    }

    /// In a cluster, waits (for a bounded time) until the other peers reconciled `index`.
    pub async fn await_peers(&self, index: u64) {
        let metadata = &self.env.metadata;
        if metadata.consensus().is_none() {
            return;
        }
        let this_peer = metadata.peer_id();
        let peers: Vec<String> = metadata
            .view()
            .state
            .peers
            .iter()
            .filter(|(id, _)| **id != this_peer)
            .map(|(_, p)| p.uri.clone())
            .collect();
        let waits = peers.iter().map(|uri| self.await_peer(uri, index));
        for (uri, reached) in peers.iter().zip(futures::future::join_all(waits).await) {
            if !reached {
                tracing::warn!(peer = %uri, index, "a peer has not applied the operation yet; it will when it can");
            }
        }
    }

    /// The progress of every running transfer of `collection`: this peer's own, and those
    /// the other peers send (asked for with a short timeout; a peer that does not answer in
    /// time is left out).
    pub async fn transfer_progress(&self, collection: &str) -> Vec<TransferProgressEntry> {
        let mut entries = self.transfers.progress(collection);
        let metadata = &self.env.metadata;
        let this_peer = metadata.peer_id();
        let view = metadata.view();
        let senders: BTreeSet<PeerId> = view
            .state
            .collections
            .get(collection)
            .map(|c| c.transfers.iter().map(|t| t.from).collect())
            .unwrap_or_default();
        let asks = senders
            .iter()
            .filter(|p| **p != this_peer)
            .filter_map(|p| view.state.peers.get(p))
            .map(|info| self.ask_progress(&info.uri, collection));
        for remote in futures::future::join_all(asks).await {
            entries.extend(remote);
        }
        entries
    }

    async fn ask_progress(&self, uri: &str, collection: &str) -> Vec<TransferProgressEntry> {
        let Ok(channel) = self.env.channel(uri) else {
            return Vec::new();
        };
        let mut request = tonic::Request::new(TransferProgressRequest {
            collection: collection.to_string(),
        });
        request.set_timeout(PROGRESS_PATIENCE);
        if let Some(key) = &self.env.api_key
            && let Ok(value) = key.parse()
        {
            request.metadata_mut().insert("api-key", value);
        }
        let answer = tokio::time::timeout(
            PROGRESS_PATIENCE,
            PeerServiceClient::new(channel).transfer_progress(request),
        )
        .await;
        match answer {
            Ok(Ok(r)) => serde_json::from_slice(&r.into_inner().transfers_json).unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    /// Whether the peer at `uri` reconciled `index` within the patience.
    pub(crate) async fn await_peer(&self, uri: &str, index: u64) -> bool {
        let Ok(channel) = self.env.channel(uri) else {
            return false;
        };
        let mut request = tonic::Request::new(AwaitReconciledRequest {
            index,
            timeout_ms: Metadata::PEER_APPLY_PATIENCE.as_millis() as u64,
        });
        if let Some(key) = &self.env.api_key
            && let Ok(value) = key.parse()
        {
            request.metadata_mut().insert("api-key", value);
        }
        PeerServiceClient::new(channel)
            .await_reconciled(request)
            .await
            .is_ok_and(|r| r.into_inner().reached)
    }

    /// Makes the local collections and replicas match `view`. Blocking. A view older than
    /// the newest one reconciled is skipped.
    pub fn reconcile(&self, view: &ClusterStateView) -> Result<(), CollectionError> {
        let _guard = self.lifecycle.lock();
        let index = view.applied_index().unwrap_or(0);
        if index < self.reconciled_index() {
            return Ok(());
        }
        let state = &view.state;
        for (name, meta) in &state.collections {
            let current = self.collections.read().get(name).cloned();
            let collection = match current {
                Some(c) if c.uuid() == meta.uuid => c,
                stale => {
                    if stale.is_some() {
                        // A collection of the same name was dropped and created again.
                        self.drop_local(name)?;
                    }
                    self.create_local(name, meta)?
                }
            };
            collection.sync(meta, &state.peers)?;
        }
        let gone: Vec<String> = self
            .names()
            .into_iter()
            .filter(|n| !state.collections.contains_key(n))
            .collect();
        for name in gone {
            self.drop_local(&name)?;
        }
        self.synced.send_replace(true);
        if index > self.reconciled_index() {
            let path = self.data_dir.join(RECONCILED_FILE);
            let tmp = self.data_dir.join(format!("{RECONCILED_FILE}.tmp"));
            fs::write(&tmp, index.to_string())
                .and_then(|()| fs::rename(&tmp, &path))
                .map_err(CollectionError::storage)?;
            self.reconciled.send_replace(index);
        }
        Ok(())
    }

    /// Runs a reconcile pass after every change of the applied state, until the sender goes.
    pub fn spawn_reconciler(
        toc: Arc<TableOfContent>,
        mut views: watch::Receiver<Arc<ClusterStateView>>,
    ) {
        tokio::spawn(async move {
            loop {
                let view = Arc::clone(&views.borrow_and_update());
                let t = Arc::clone(&toc);
                let reconciled = Arc::clone(&view);
                match tokio::task::spawn_blocking(move || t.reconcile(&reconciled)).await {
                    Ok(Ok(())) => {
                        toc.mark_failed_replicas_dead(&view).await;
                        if !toc.activate_own_replicas(&view).await {
                            // Retry backoff (liveness): the pass is repeated as a whole.
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            continue;
                        }
                    }
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "reconcile failed; retrying");
                        // Retry backoff (liveness): the reconciled index does not advance, so
                        // nothing that waits for it goes on meanwhile.
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                    Err(e) => tracing::error!(error = %e, "reconcile task panicked"),
                }
                let view = Arc::clone(&views.borrow());
                let transfers = Arc::clone(&toc.transfers);
                transfers.sync(&toc, &view).await;
                // Level-triggered: also look again now and then (a recovery that could not
                // start yet, a transfer limit that freed up).
                tokio::select! {
                    changed = views.changed() => {
                        if changed.is_err() {
                            return;
                        }
                    }
                    // A periodic pass (liveness): reconcile is level-triggered, so a pass
                    // that ran late repairs the same as one on time.
                    () = tokio::time::sleep(RESYNC_INTERVAL) => {}
                }
            }
        });
    }

    /// Proposes `Dead` for this peer's replicas that did not open at start (see
    /// [`crate::cluster::collection::FailedReplica`]), each a compare-and-set on the state
    /// this view shows. Only submits: the replica is replaced once a reconcile pass applies
    /// the result. A proposal that cannot pass (the last active replica of its shard: judged
    /// here first) or that was refused is not made again until the shard's state changes,
    /// since a refused proposal is a Raft entry too, which wakes every peer's reconciler.
    async fn mark_failed_replicas_dead(&self, view: &ClusterStateView) {
        let this_peer = self.env.this_peer();
        for (name, meta) in &view.state.collections {
            let Ok(collection) = self.get(name) else {
                continue;
            };
            for (id, failure) in collection.failed_replicas() {
                let Some(shard) = meta.shards.get(&ShardId(id)) else {
                    continue;
                };
                let Some(state) = shard.replicas.get(&this_peer).copied() else {
                    continue;
                };
                if state == ReplicaState::Dead {
                    continue;
                }
                let fingerprint = format!("{shard:?} {:?}", meta.resharding);
                if failure.refused_for.as_ref() == Some(&fingerprint) {
                    continue;
                }
                let others_active = shard
                    .replicas
                    .iter()
                    .any(|(peer, s)| *peer != this_peer && s.is_active_like());
                if state.is_active_like() && !others_active {
                    if collection.note_failed_refusal(id, fingerprint) {
                        tracing::error!(collection = %name, shard = id, reason = %failure.reason, "the replica that did not open is the shard's last active replica and cannot be marked Dead: the shard stays unavailable until a shard snapshot is recovered into it");
                    }
                    continue;
                }
                let op = ClusterOperation::SetReplicaState {
                    collection: name.clone(),
                    shard: ShardId(id),
                    peer: this_peer,
                    state: ReplicaState::Dead,
                    from_state: Some(state),
                };
                match self.env.metadata.propose(op).await {
                    Ok((Ok(_), _)) => {
                        tracing::warn!(collection = %name, shard = id, reason = %failure.reason, "the replica that did not open is marked Dead");
                    }
                    Ok((Err(_), _)) if self.replica_state(name, id) == Some(ReplicaState::Dead) => {
                        // Refused because it is Dead already (this view was older than the
                        // state the proposal met: another peer marked it, or a proposal of an
                        // earlier start of this node landed after it stopped).
                        tracing::info!(collection = %name, shard = id, "the replica that did not open is Dead already");
                    }
                    Ok((Err(e), _)) => {
                        if collection.note_failed_refusal(id, fingerprint) {
                            tracing::error!(collection = %name, shard = id, reason = %failure.reason, error = %e, "the replica that did not open cannot be marked Dead yet; proposed again when the shard's state changes");
                        }
                    }
                    Err(e) => {
                        tracing::debug!(collection = %name, shard = id, error = %e, "marking a failed replica Dead not proposed yet");
                    }
                }
            }
        }
    }

    /// This peer's replica state for shard `shard` of `collection` in the applied cluster
    /// state (`None`: no such collection, shard or replica).
    fn replica_state(&self, collection: &str, shard: u32) -> Option<ReplicaState> {
        let view = self.env.metadata.view();
        let meta = view.state.collections.get(collection)?;
        let replicas = &meta.shards.get(&ShardId(shard))?.replicas;
        replicas.get(&self.env.this_peer()).copied()
    }

    /// Proposes Active for this peer's Initializing replicas that exist locally (new shards of
    /// a new collection or shard key). Returns whether every proposal went through.
    async fn activate_own_replicas(&self, view: &ClusterStateView) -> bool {
        let this_peer = self.env.this_peer();
        let mut all_done = true;
        for (name, meta) in &view.state.collections {
            let Ok(collection) = self.get(name) else {
                continue;
            };
            for (shard, replicas) in &meta.shards {
                if replicas.replicas.get(&this_peer) != Some(&ReplicaState::Initializing)
                    || collection.local_shard(shard.0).is_none()
                {
                    continue;
                }
                let op = ClusterOperation::SetReplicaState {
                    collection: name.clone(),
                    shard: *shard,
                    peer: this_peer,
                    state: ReplicaState::Active,
                    from_state: Some(ReplicaState::Initializing),
                };
                match self.env.metadata.propose(op).await {
                    Ok((Ok(_), _)) => {}
                    Ok((Err(e), _)) => {
                        tracing::debug!(collection = %name, shard = %shard, error = %e, "replica not activated");
                    }
                    Err(e) => {
                        tracing::warn!(collection = %name, shard = %shard, error = %e, "cannot activate a new replica yet; retrying");
                        all_done = false;
                    }
                }
            }
        }
        all_done
    }

    fn create_local(
        &self,
        name: &str,
        meta: &CollectionMeta,
    ) -> Result<Arc<Collection>, CollectionError> {
        let path = self.dir.join(name);
        if path.exists() {
            fs::remove_dir_all(&path).map_err(CollectionError::storage)?;
        }
        fs::create_dir_all(&path).map_err(CollectionError::storage)?;
        let result = fs::write(path.join(UUID_FILE), meta.uuid.to_string())
            .map_err(CollectionError::storage)
            .and_then(|()| write_config(&path, &meta.config))
            .and_then(|()| {
                Collection::open(
                    name,
                    &path,
                    meta.config.clone(),
                    meta.uuid,
                    Arc::clone(&self.env),
                )
            });
        let collection = match result {
            Ok(c) => Arc::new(c),
            Err(e) => {
                let _ = fs::remove_dir_all(&path);
                return Err(e);
            }
        };
        self.collections
            .write()
            .insert(name.to_string(), Arc::clone(&collection));
        tracing::info!(collection = name, "collection created");
        Ok(collection)
    }

    /// Drops a collection and its files from this peer.
    fn drop_local(&self, name: &str) -> Result<(), CollectionError> {
        let Some(collection) = self.collections.write().remove(name) else {
            return Ok(());
        };
        collection.cancel();
        let path = self.dir.join(name);
        let doomed = self
            .dir
            .join(format!(".deleted-{}-{name}", uuid::Uuid::new_v4()));
        fs::rename(&path, &doomed).map_err(CollectionError::storage)?;
        if let Err(e) = fs::remove_dir_all(&doomed) {
            tracing::warn!(error = %e, path = %doomed.display(), "could not remove a dropped collection; it is removed on the next start");
        }
        tracing::info!(collection = name, "collection deleted");
        Ok(())
    }

    /// Flushes every collection; used on shutdown.
    pub fn flush_all(&self) {
        let collections: Vec<Arc<Collection>> = self.collections.read().values().cloned().collect();
        for c in collections {
            if let Err(e) = c.flush() {
                tracing::error!(collection = c.name(), error = %e, "flush on shutdown failed; the WAL still holds the data");
            }
            c.cancel();
        }
    }
}

/// A node running alone in `dir`, as `shoal-node` without `--uri` starts it; for tests.
#[cfg(test)]
pub async fn open_local_node(dir: &Path) -> Arc<TableOfContent> {
    use crate::cluster::metadata::LocalMetadata;
    use crate::shard::local_shard::IndexBuilder;
    use crate::storage::wal::SyncMode;

    let peer = PeerId(1);
    let metadata = Arc::new(Metadata::Local(
        LocalMetadata::open(dir, peer, || legacy_state(dir, peer, "test")).unwrap(),
    ));
    let env = Arc::new(Environment::new(
        Arc::clone(&metadata),
        None,
        Arc::new(IndexBuilder::new(1)),
        SyncMode::Os,
    ));
    let toc = Arc::new(TableOfContent::open(dir, env).unwrap());
    TableOfContent::spawn_reconciler(Arc::clone(&toc), metadata.applied());
    let index = metadata.view().applied_index().unwrap_or(0);
    assert!(toc.wait_reconciled(index, Duration::from_secs(10)).await);
    toc
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::collection::dir_names;
    use crate::consensus::type_config::LogId;
    use crate::shard::local_shard::Stamp;
    use crate::shard::operations::{PointWrite, UpdateRequest};
    use crate::types::PointId;

    fn config() -> CollectionConfig {
        let request = serde_json::from_value(serde_json::json!({
            "vectors": {"size": 2, "distance": "Euclid"},
            "shard_number": 2,
        }))
        .unwrap();
        crate::api::rest::collections::config_from_request(request).unwrap()
    }

    async fn create(toc: &TableOfContent, name: &str) {
        toc.submit(ClusterOperation::CreateCollection {
            name: name.into(),
            config: Box::new(config()),
            uuid: 9,
        })
        .await
        .unwrap();
    }

    /// Creates `name` and upserts points `0..n` into it, then flushes.
    async fn create_with_points(toc: &TableOfContent, name: &str, n: u64) {
        create(toc, name).await;
        let points = (0..n)
            .map(|i| PointWrite::dense(PointId::Num(i), vec![i as f32, 1.0], Default::default()))
            .collect();
        toc.get(name)
            .unwrap()
            .update(
                UpdateRequest::Upsert(points),
                None,
                crate::cluster::shard_requests::WriteOrdering::Weak,
            )
            .await
            .unwrap();
        toc.flush_all();
    }

    fn view(state: ClusterState, index: u64) -> ClusterStateView {
        ClusterStateView {
            state,
            last_applied: Some(LogId::new(Default::default(), index)),
        }
    }

    /// After a restart the Raft state machine may replay an older state first: a collection
    /// created after that state must survive it, and go only when a newer state drops it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stale_view_never_drops_a_collection() {
        let dir = tempfile::tempdir().unwrap();
        let toc = open_local_node(dir.path()).await;
        create(&toc, "docs").await;
        let reconciled = toc.reconciled_index();
        let mut empty = toc.env().metadata.view().state.clone();
        empty.collections.clear();

        toc.reconcile(&view(empty.clone(), reconciled - 1)).unwrap();
        assert!(toc.exists("docs"), "an older state changes nothing");

        toc.reconcile(&view(empty, reconciled + 1)).unwrap();
        assert!(!toc.exists("docs"), "a newer state without it drops it");
        assert!(!dir.path().join("collections/docs").exists());
    }

    /// The write fence: a replica that applied a newer layout of a shard refuses an update
    /// routed by an older one (and changes nothing), takes it when routed by the current one,
    /// and takes forwarded copies (no version) as they come.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_update_routed_by_an_older_layout_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let toc = open_local_node(dir.path()).await;
        create(&toc, "docs").await;
        let collection = toc.get("docs").unwrap();
        let old = collection.layout()[&0].version;
        let mut newer = toc.env().metadata.view().state.clone();
        newer
            .collections
            .get_mut("docs")
            .unwrap()
            .shards
            .get_mut(&crate::consensus::ShardId(0))
            .unwrap()
            .version = old + 1;
        toc.reconcile(&view(newer, toc.reconciled_index() + 1))
            .unwrap();
        assert_eq!(collection.layout()[&0].version, old + 1);
        let upsert = |id: u64| {
            Arc::new(UpdateRequest::Upsert(vec![PointWrite::dense(
                PointId::Num(id),
                vec![1.0, 2.0],
                Default::default(),
            )]))
        };
        let refused = collection
            .update_local(0, upsert(1), Some(old), Stamp::Local)
            .await;
        assert!(
            matches!(refused, Err(CollectionError::StaleLayout(_))),
            "{refused:?}"
        );
        let local = collection.local_shard(0).unwrap();
        assert!(
            local
                .retrieve(&[PointId::Num(1)], false, &Default::default())
                .is_empty()
        );
        collection
            .update_local(0, upsert(2), Some(old + 1), Stamp::Local)
            .await
            .unwrap();
        collection
            .update_local(0, upsert(3), None, Stamp::Local)
            .await
            .unwrap();
        assert_eq!(
            local
                .retrieve(
                    &[PointId::Num(2), PointId::Num(3)],
                    false,
                    &Default::default()
                )
                .len(),
            2
        );
    }

    /// The transfer fence (`StreamFence`): a transfer's copy is taken while this peer's applied
    /// state runs that transfer to this peer's replica of the shard, and refused, changing
    /// nothing, once a state at least as new as the one its sender saw has ended it: an
    /// update, and a recovery step that would clear the replica. The copies of a sender whose
    /// own view lags (a restarted peer still running a stream that ended) cannot clear or
    /// overwrite a replica that has moved on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_copy_of_an_ended_transfer_is_refused() {
        use crate::cluster::shard_requests::{FencedRecovery, ShardRecovery, StreamFence};
        use crate::consensus::{ShardId, ShardTransfer, TransferMethod};

        let dir = tempfile::tempdir().unwrap();
        let toc = open_local_node(dir.path()).await;
        create(&toc, "docs").await;
        let collection = toc.get("docs").unwrap();
        let local = collection.local_shard(0).unwrap();
        // Ids of points shard 0 owns (a point another shard owns would be swept as a stray).
        let own: Vec<u64> = (0..100u64)
            .filter(|n| crate::cluster::hash_ring::shard_for(&PointId::Num(*n), 2) == 0)
            .take(5)
            .collect();
        let upsert = |n: usize| {
            Arc::new(UpdateRequest::Upsert(vec![PointWrite::dense(
                PointId::Num(own[n]),
                vec![1.0, 2.0],
                Default::default(),
            )]))
        };
        let held = |ns: &[usize]| {
            let ids: Vec<PointId> = ns.iter().map(|n| PointId::Num(own[*n])).collect();
            local.retrieve(&ids, false, &Default::default()).len()
        };
        collection
            .update_local(0, upsert(1), None, Stamp::Local)
            .await
            .unwrap();

        // Transfer 77 of shard 0 from a peer 2 to this peer (1) runs at `running`.
        let metadata = &toc.env().metadata;
        let base = metadata.view().applied_index().unwrap_or(0);
        let mut state = metadata.view().state.clone();
        let transfer = ShardTransfer {
            shard: ShardId(0),
            to_shard: None,
            from: PeerId(2),
            to: PeerId(1),
            sync: true,
            method: TransferMethod::StreamRecords,
            destination_was: None,
            points_per_second: None,
            bytes_per_second: None,
            id: 77,
            done: false,
        };
        state
            .collections
            .get_mut("docs")
            .unwrap()
            .transfers
            .push(transfer);
        let running = base + 1;
        metadata.set_view_for_test(state.clone(), running);
        let fence = |transfer: u64| StreamFence {
            transfer,
            seen: running,
        };
        collection
            .update_copy(0, upsert(2), Stamp::Local, fence(77))
            .await
            .unwrap();
        assert_eq!(held(&[2]), 1, "a copy of the running transfer is taken");

        // Another transfer's copy, and one addressed to another shard, are refused.
        let other = collection
            .update_copy(0, upsert(3), Stamp::Local, fence(78))
            .await;
        assert!(
            matches!(other, Err(CollectionError::StaleTransfer(_))),
            "{other:?}"
        );
        let elsewhere = collection
            .update_copy(1, upsert(3), Stamp::Local, fence(77))
            .await;
        assert!(
            matches!(elsewhere, Err(CollectionError::StaleTransfer(_))),
            "{elsewhere:?}"
        );
        assert_eq!(held(&[3]), 0);

        // The transfer ends: its copies, sent by a peer that saw it running, change nothing.
        state.collections.get_mut("docs").unwrap().transfers.clear();
        metadata.set_view_for_test(state, running + 1);
        let late = collection
            .update_copy(0, upsert(4), Stamp::Local, fence(77))
            .await;
        assert!(
            matches!(late, Err(CollectionError::StaleTransfer(_))),
            "{late:?}"
        );
        let clear = FencedRecovery {
            seen: running,
            step: ShardRecovery::Begin {
                copy: 77,
                fresh: true,
            },
        };
        let refused = collection.recover_local(0, clear).await;
        assert!(
            matches!(refused, Err(CollectionError::StaleTransfer(_))),
            "{refused:?}"
        );
        assert_eq!(held(&[1, 2, 4]), 2, "nothing changed: points 1 and 2 stay");
        // Nor is a `snapshot` transfer's image swapped in (refused before it is looked at).
        let image = dir.path().join("image-never-read");
        let restored = {
            let collection = Arc::clone(&collection);
            let fence = fence(77);
            tokio::task::spawn_blocking(move || collection.restore_transfer_image(0, &image, fence))
                .await
                .unwrap()
        };
        assert!(
            matches!(restored, Err(CollectionError::StaleTransfer(_))),
            "{restored:?}"
        );
        assert_eq!(collection.local_shard(0).unwrap().stats().points, 2);
        let clear = UpdateRequest::Delete(crate::shard::operations::PointSelection::Filter(
            Default::default(),
        ));
        let cleared = collection
            .update_copy(0, Arc::new(clear), Stamp::Local, fence(77))
            .await;
        assert!(matches!(cleared, Err(CollectionError::StaleTransfer(_))));
        assert_eq!(held(&[1, 2]), 2);
    }

    /// What a resharding stream passes on of an operation its source applied: only the
    /// points the stream carries (its destination shard owns them under the new ring, its
    /// source under the old one: never a stray the source still holds), always as explicit
    /// ids (never a filter, which would reach the destination shard's own points), lenient
    /// about points the destination lacks, and in parts of bounded size.
    #[test]
    fn a_resharding_passes_on_only_the_points_its_source_changed() {
        use crate::cluster::collection::pass_on;
        use crate::cluster::shard_requests::{Ownership, StreamScope};
        use crate::shard::operations::{PointSelection, ShardOperation};

        let ids: Vec<PointId> = (0..200_000u64).map(PointId::Num).collect();
        let passed = |op: &ShardOperation, scope: &StreamScope| -> Vec<PointId> {
            let parts = pass_on(op, scope);
            let mut all = Vec::new();
            for part in &parts {
                match part {
                    UpdateRequest::Delete(PointSelection::IdsIfPresent(p)) => {
                        assert!(p.len() <= 50_000);
                        all.extend(p.iter().copied());
                    }
                    other => panic!("{other:?}"),
                }
            }
            all
        };
        // Shard 0 of a ring of 3, from a source that owns everything: a third of the ids, in
        // more than one part.
        let up = StreamScope {
            to: Ownership {
                ring: vec![0, 1, 2],
                shard: 0,
            },
            from: Ownership {
                ring: vec![0],
                shard: 0,
            },
        };
        let delete = ShardOperation::Delete(ids.clone());
        assert!(
            pass_on(&delete, &up).len() > 1,
            "a long id list goes in parts"
        );
        let expected: Vec<PointId> = ids.iter().filter(|id| up.to.owns(id)).copied().collect();
        assert!(expected.len() > 50_000);
        assert_eq!(passed(&delete, &up), expected);
        // A scale-down from shard 3 of 4 into shard 0 of 3: only points both rings agree on;
        // the others the source holds are strays it does not pass on.
        let down = StreamScope {
            to: Ownership {
                ring: vec![0, 1, 2],
                shard: 0,
            },
            from: Ownership {
                ring: vec![0, 1, 2, 3],
                shard: 3,
            },
        };
        let expected: Vec<PointId> = ids
            .iter()
            .filter(|id| down.to.owns(id) && down.from.owns(id))
            .copied()
            .collect();
        assert!(!expected.is_empty());
        assert!(expected.len() < ids.iter().filter(|id| down.to.owns(id)).count());
        assert_eq!(passed(&delete, &down), expected);

        let points: Vec<PointWrite> = ids[..100]
            .iter()
            .map(|id| PointWrite::dense(*id, vec![1.0, 2.0], Default::default()))
            .collect();
        match pass_on(&ShardOperation::Upsert(points), &up).as_slice() {
            [UpdateRequest::Upsert(mine)] => {
                assert!(mine.iter().all(|p| up.carries(&p.id)));
                assert_eq!(
                    mine.len(),
                    ids[..100].iter().filter(|id| up.carries(id)).count()
                );
            }
            other => panic!("{other:?}"),
        }
        let foreign: Vec<PointId> = ids
            .iter()
            .filter(|id| !down.carries(id))
            .take(10)
            .copied()
            .collect();
        assert!(pass_on(&ShardOperation::ClearPayload { points: foreign }, &down).is_empty());
    }

    /// Runs `work` in a runtime of its own, as one run of a node: dropping the runtime ends
    /// every background task, so the files are free again, as after a process exit.
    fn in_own_runtime(work: impl std::future::Future<Output = ()>) {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
            .block_on(work);
    }

    /// Creating a collection's replicas leaves only whole replica directories, and the
    /// staging directory a process killed half-way through a creation leaves behind (a torn
    /// point store) neither stops the next start nor stays.
    #[test]
    fn a_replica_created_half_way_neither_stops_a_start_nor_stays() {
        let dir = tempfile::tempdir().unwrap();
        let shards = dir.path().join("collections/docs/shards");
        let path = dir.path().to_path_buf();
        in_own_runtime(async move {
            let toc = open_local_node(&path).await;
            create(&toc, "docs").await;
        });
        let created = dir_names(&shards);
        assert!(!created.is_empty());
        assert!(
            created.iter().all(|n| n.parse::<u32>().is_ok()),
            "only whole replicas: {created:?}"
        );
        let torn = shards.join(".new-7-0f0e");
        fs::create_dir_all(torn.join("wal")).unwrap();
        fs::write(
            torn.join(crate::shard::local_shard::POINT_STORE_FILE),
            [0xA5; 1000],
        )
        .unwrap();

        let path = dir.path().to_path_buf();
        in_own_runtime(async move {
            let toc = open_local_node(&path).await;
            assert!(toc.exists("docs"));
        });
        assert_eq!(dir_names(&shards), created);
    }

    /// A replica whose directory cannot be renamed away when it is dropped stays whole: the
    /// drop fails, the replica is still listed and takes writes; a later drop that succeeds
    /// leaves nothing of it on disk.
    #[test]
    fn a_replica_whose_drop_fails_stays_whole() {
        let dir = tempfile::tempdir().unwrap();
        let shards = dir.path().join("collections/docs/shards");
        let path = dir.path().to_path_buf();
        in_own_runtime(async move {
            let toc = open_local_node(&path).await;
            create(&toc, "docs").await;
            let collection = toc.get("docs").unwrap();
            let (id, _) = collection.local_shards()[0];
            let replica_dir = shards.join(id.to_string());

            crate::cluster::collection::FAIL_DROP_RENAME
                .lock()
                .unwrap()
                .push(replica_dir.clone());
            let failed = collection.drop_local(id);
            crate::cluster::collection::FAIL_DROP_RENAME
                .lock()
                .unwrap()
                .retain(|p| p != &replica_dir);
            assert!(failed.is_err());
            assert!(collection.local_shard(id).is_some());
            assert!(replica_dir.is_dir());
            let point = PointWrite::dense(PointId::Num(1), vec![1.0, 2.0], Default::default());
            collection
                .update(
                    UpdateRequest::Upsert(vec![point]),
                    None,
                    crate::cluster::shard_requests::WriteOrdering::Weak,
                )
                .await
                .unwrap();

            collection.drop_local(id).unwrap();
            assert!(collection.local_shard(id).is_none());
            assert!(
                !dir_names(&shards).contains(&id.to_string()),
                "{:?}",
                dir_names(&shards)
            );
        });
    }

    /// A data directory written before metadata lived in one state (collections on disk, no
    /// metadata file) keeps its collections and points.
    #[test]
    fn a_node_of_the_older_layout_keeps_its_collections() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        in_own_runtime(async move {
            let toc = open_local_node(&path).await;
            create_with_points(&toc, "old", 50).await;
        });
        std::fs::remove_file(dir.path().join("metadata.json")).unwrap();
        std::fs::remove_file(dir.path().join(RECONCILED_FILE)).unwrap();
        std::fs::remove_file(dir.path().join("collections/old").join(UUID_FILE)).unwrap();

        let path = dir.path().to_path_buf();
        in_own_runtime(async move {
            let toc = open_local_node(&path).await;
            let collection = toc.get("old").unwrap();
            assert_eq!(collection.count(None, None).await.unwrap(), 50);
            assert_eq!(collection.layout().len(), 2);
        });
    }

    /// A replica that does not open at start (here its point store is garbage) neither stops
    /// the node nor is served: the collection loads with its other replica, requests routed to
    /// the failed one get an error naming the cause (a count over the collection fails rather
    /// than leave its points out), and no empty replica takes its place while the cluster
    /// state does not mark it Dead (here it cannot: it is the shard's last active replica),
    /// through reconcile passes and restarts alike. Once the state says Dead, its files move
    /// to quarantine and an empty replica takes its place, to be recovered like any Dead one.
    #[test]
    fn a_replica_that_does_not_open_is_not_served_until_it_is_dead() {
        let dir = tempfile::tempdir().unwrap();
        let shards = dir.path().join("collections/docs/shards");
        let path = dir.path().to_path_buf();
        in_own_runtime(async move {
            let toc = open_local_node(&path).await;
            create_with_points(&toc, "docs", 60).await;
        });
        let store = shards
            .join("0")
            .join(crate::shard::local_shard::POINT_STORE_FILE);
        fs::write(&store, [0xA5; 4096]).unwrap();

        let quarantine = dir.path().join("collections/docs/quarantine");
        for start in 0..2 {
            let path = dir.path().to_path_buf();
            let (shards, store) = (shards.clone(), store.clone());
            in_own_runtime(async move {
                let toc = open_local_node(&path).await;
                let collection = toc.get("docs").unwrap();
                let failed = collection.failed_replicas();
                assert_eq!(
                    failed.keys().copied().collect::<Vec<_>>(),
                    [0],
                    "start {start}"
                );
                assert!(failed[&0].kept_at.is_none());
                // More reconcile passes, with the (refused) Dead proposal between them.
                let state = toc.env().metadata.view().state.clone();
                toc.reconcile(&view(state, toc.reconciled_index() + 1))
                    .unwrap();
                assert!(
                    collection.local_shard(0).is_none(),
                    "never an empty stand-in"
                );
                assert_eq!(
                    fs::read(&store).unwrap(),
                    [0xA5; 4096],
                    "files left in place"
                );
                let served = collection.local_shard(1).unwrap().stats().points;
                assert!(served > 0 && served < 60, "{served}");
                let refused = collection
                    .read_local(
                        0,
                        crate::cluster::shard_requests::ShardCount {
                            filter: None,
                            owner: None,
                        },
                    )
                    .await;
                match refused {
                    Err(CollectionError::Unavailable(m)) => {
                        assert!(m.contains("did not open"), "{m}")
                    }
                    other => panic!("{other:?}"),
                }
                assert!(collection.count(None, None).await.is_err());
                assert!(shards.join("0").exists());
            });
        }

        let path = dir.path().to_path_buf();
        let shards = shards.clone();
        in_own_runtime(async move {
            let toc = open_local_node(&path).await;
            let collection = toc.get("docs").unwrap();
            let mut dead = toc.env().metadata.view().state.clone();
            *dead
                .collections
                .get_mut("docs")
                .unwrap()
                .shards
                .get_mut(&ShardId(0))
                .unwrap()
                .replicas
                .get_mut(&toc.env().this_peer())
                .unwrap() = ReplicaState::Dead;
            toc.reconcile(&view(dead, toc.reconciled_index() + 1))
                .unwrap();
            assert_eq!(collection.local_shard(0).unwrap().stats().points, 0);
            assert!(collection.failed_replicas().is_empty());
            let kept = dir_names(&quarantine);
            assert_eq!(kept.len(), 1, "{kept:?}");
            assert_eq!(
                fs::read(
                    quarantine
                        .join(&kept[0])
                        .join(crate::shard::local_shard::POINT_STORE_FILE)
                )
                .unwrap(),
                [0xA5; 4096]
            );
            assert!(shards.join("0").exists(), "the new, empty replica");
        });
    }
}
