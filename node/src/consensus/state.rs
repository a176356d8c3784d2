//! The cluster state that Raft replicates, and the operations that change it.
//!
//! This module owns the vocabulary of cluster metadata (peers, collections, shards, replica
//! states, shard keys, transfers, resharding) and the one function that changes it,
//! [`ClusterState::apply`]. It is pure: no I/O, no clock, no randomness, so every peer that
//! applies the same log reaches byte-for-byte the same state. It must not touch local shards or
//! the network; the node's reconcile loop reads the applied state and acts on it.
//!
//! Validation and application are one code path: `apply` runs the operation on a copy and only
//! swaps the copy in when the whole operation succeeded, so a rejected operation changes nothing
//! and a check can never be forgotten on one side ("plan on a copy, then apply").

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::collection_config::{
    CollectionConfig, MAX_SHARD_NUMBER, PayloadIndexEntry, ShardingMethod,
};

/// A peer of the cluster; also its Raft node id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PeerId(pub u64);

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A shard of one collection, unique within that collection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ShardId(pub u32);

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The state of one replica of a shard on one peer (see DESIGN.md, "Replica states"). The
/// serde names are Qdrant's, so cluster info reads the same as Qdrant's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ReplicaState {
    /// Just created, not yet serving.
    Initializing,
    /// Sound; a source of truth.
    Active,
    /// Receives writes, never serves reads (backups).
    Listener,
    /// Receiving a stream transfer; its data is incomplete.
    Partial,
    /// Being restored from a snapshot or a WAL delta.
    Recovery,
    /// A new shard being filled by a resharding scale-up.
    Resharding,
    /// A shard being drained by a resharding scale-down; still counts as active.
    ReshardingScaleDown,
    /// Failed; excluded from reads and writes until recovered.
    Dead,
}

impl ReplicaState {
    pub const ALL: [ReplicaState; 8] = [
        ReplicaState::Initializing,
        ReplicaState::Active,
        ReplicaState::Listener,
        ReplicaState::Partial,
        ReplicaState::Recovery,
        ReplicaState::Resharding,
        ReplicaState::ReshardingScaleDown,
        ReplicaState::Dead,
    ];

    /// Whether a read may be served by a replica in this state.
    pub fn is_readable(self) -> bool {
        matches!(
            self,
            ReplicaState::Active | ReplicaState::ReshardingScaleDown
        )
    }

    /// Whether ordinary (non-forced) updates are sent to a replica in this state. A `Recovery`
    /// replica is being overwritten by a snapshot or WAL delta, so only forced updates (the
    /// queued updates replayed by the transfer) reach it; see [`Self::takes_forced_updates`].
    pub fn takes_updates(self) -> bool {
        !matches!(self, ReplicaState::Recovery | ReplicaState::Dead)
    }

    /// Whether forced updates (a transfer's replay) are sent to a replica in this state.
    pub fn takes_forced_updates(self) -> bool {
        self != ReplicaState::Dead
    }

    /// Whether the replica holds a complete, authoritative copy of the shard: the replicas that
    /// must never all disappear.
    pub fn is_active_like(self) -> bool {
        matches!(
            self,
            ReplicaState::Active | ReplicaState::ReshardingScaleDown
        )
    }
}

impl fmt::Display for ReplicaState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// How a peer is reached and what it is called.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    /// Where the peer's internal (gRPC) API listens, e.g. `http://shoal-1.shoal:6335`.
    pub uri: String,
    /// A human-readable name (the pod name under Kubernetes).
    pub name: String,
}

/// A shard key of a custom-sharded collection: a string or an unsigned integer, untagged in
/// JSON as in Qdrant (`"tenant-a"` or `7`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ShardKey {
    Keyword(String),
    Number(u64),
}

impl fmt::Display for ShardKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ShardKey::Keyword(k) => write!(f, "\"{k}\""),
            ShardKey::Number(n) => write!(f, "{n}"),
        }
    }
}

/// One shard of a collection: where its replicas live and in which state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardMeta {
    pub replicas: BTreeMap<PeerId, ReplicaState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard_key: Option<ShardKey>,
    /// The shard's layout version: bumped by every applied operation that changes where its
    /// writes go (its replicas and their states, a transfer into or out of it, a resharding
    /// of its collection). Updates carry the version they were routed by, and a replica that
    /// knows a newer one refuses them, so a coordinator routing by an old layout retries
    /// by the new one instead of reaching a replica that no longer forwards (see
    /// `Collection::update_local`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub version: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl ShardMeta {
    fn active_like_count(&self) -> usize {
        self.replicas
            .values()
            .filter(|s| s.is_active_like())
            .count()
    }
}

/// How a transfer moves a shard's points (see DESIGN.md, "Transfer methods"). The serde names
/// are Qdrant's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransferMethod {
    #[default]
    StreamRecords,
    Snapshot,
    WalDelta,
    ReshardingStreamRecords,
}

impl TransferMethod {
    /// The state the destination replica is in while the transfer runs.
    pub fn destination_state(self) -> ReplicaState {
        match self {
            TransferMethod::StreamRecords => ReplicaState::Partial,
            TransferMethod::Snapshot | TransferMethod::WalDelta => ReplicaState::Recovery,
            TransferMethod::ReshardingStreamRecords => ReplicaState::Resharding,
        }
    }
}

/// A running shard transfer: registered by [`ClusterOperation::StartTransfer`], ended by
/// [`ClusterOperation::FinishTransfer`] or [`ClusterOperation::AbortTransfer`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardTransfer {
    pub shard: ShardId,
    /// The destination shard when it differs from `shard` (resharding moves points between
    /// shards); `None` for an ordinary transfer of `shard` from peer to peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_shard: Option<ShardId>,
    pub from: PeerId,
    pub to: PeerId,
    /// `true` for a replicate (the source keeps its replica), `false` for a move.
    pub sync: bool,
    pub method: TransferMethod,
    /// The destination replica's state before the transfer (`None`: it had none); an abort
    /// puts it back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_was: Option<ReplicaState>,
    /// At most this many points per second (`None`: as fast as it goes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub points_per_second: Option<u32>,
    /// At most this many bytes (of vectors and payloads) per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_per_second: Option<u64>,
    /// Chosen by the proposer; tells a resumed transfer from a new one of the same shard
    /// between the same peers.
    #[serde(default)]
    pub id: u64,
    /// A resharding stream that has sent every point: it keeps forwarding updates until the
    /// resharding ends, and reads may switch to the new ring once every stream is done.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub done: bool,
}

impl ShardTransfer {
    /// Whether this transfer reads from or writes to the replica of `shard` on `peer`.
    pub fn involves(&self, shard: ShardId, peer: PeerId) -> bool {
        (self.shard == shard && self.from == peer)
            || (self.to_shard.unwrap_or(self.shard) == shard && self.to == peer)
    }

    /// For a resharding stream, the id of the resharding it belongs to (its own id is that
    /// one's combined with the two shards, see `resharding_stream`); meaningless otherwise.
    pub fn resharding_id(&self) -> u64 {
        self.id ^ stream_salt(self.shard, self.to_shard.unwrap_or(self.shard))
    }
}

/// What a resharding's id is combined with to give its stream from `shard` into `to_shard`
/// an id of its own.
fn stream_salt(shard: ShardId, to_shard: ShardId) -> u64 {
    u64::from(shard.0) << 32 | u64::from(to_shard.0)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReshardingDirection {
    Up,
    Down,
}

/// The stages of a resharding, in order (see DESIGN.md, "Resharding").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReshardingStage {
    MigratingPoints,
    ReadHashRingCommitted,
    WriteHashRingCommitted,
}

impl ReshardingStage {
    /// Abort is possible until writes use the new ring; after that the old ring's shards no
    /// longer receive every write, so going back would lose data.
    pub fn can_abort(self) -> bool {
        self < ReshardingStage::WriteHashRingCommitted
    }
}

/// A resharding in progress on a collection. Driven by operations a later step adds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReshardingState {
    pub direction: ReshardingDirection,
    /// The shard being added (up) or drained (down).
    pub shard: ShardId,
    /// The peer that holds `shard` and drives the resharding.
    pub peer: PeerId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard_key: Option<ShardKey>,
    pub stage: ReshardingStage,
    /// The caller advances the stages itself (`commit_read_hash_ring`, ...); otherwise the
    /// driving peer does once the points have moved.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub manual: bool,
    /// Chosen by the proposer of the start; the ids of the resharding's streams derive from
    /// it, so that a stream's checkpoint is never taken for one of a later resharding between
    /// the same shards (`0`: started before reshardings had ids; its streams never resume).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub id: u64,
}

/// Everything the cluster knows about one collection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CollectionMeta {
    pub config: CollectionConfig,
    pub shards: BTreeMap<ShardId, ShardMeta>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub transfers: Vec<ShardTransfer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resharding: Option<ReshardingState>,
    /// Declared payload indexes, by field.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub payload_schema: BTreeMap<String, PayloadIndexEntry>,
    /// Shards added by a resharding that still have fewer active replicas than the
    /// collection's replication factor; a peer holding one copies it to other peers.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub replicating: BTreeSet<ShardId>,
    /// Shards with more replicas than a lowered replication factor asks for. The state
    /// machine drops the surplus as soon as no transfer or resharding involves the shard;
    /// replicas a user added beyond the factor by hand are kept (only a change of the factor
    /// puts shards here).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub trimming: BTreeSet<ShardId>,
    /// Chosen by the proposer of the creation; tells peers a re-created collection of the
    /// same name from the files of the dropped one.
    #[serde(default)]
    pub uuid: u64,
}

impl CollectionMeta {
    fn is_custom_sharded(&self) -> bool {
        self.config.params.sharding_method == Some(ShardingMethod::Custom)
    }

    /// The shards, in ring order, that the points of `key` hash over for reads
    /// (`writes == false`) or writes. During a resharding the shard being added joins, and the
    /// shard being drained leaves, the read ring once reads are committed and the write ring
    /// once writes are.
    pub fn ring(&self, key: Option<&ShardKey>, writes: bool) -> Vec<ShardId> {
        let committed = |stage: ReshardingStage| {
            if writes {
                stage >= ReshardingStage::WriteHashRingCommitted
            } else {
                stage >= ReshardingStage::ReadHashRingCommitted
            }
        };
        self.shards
            .iter()
            .filter(|(_, s)| s.shard_key.as_ref() == key)
            .filter(|(id, _)| match &self.resharding {
                Some(r) if r.shard == **id => match r.direction {
                    ReshardingDirection::Up => committed(r.stage),
                    ReshardingDirection::Down => !committed(r.stage),
                },
                _ => true,
            })
            .map(|(id, _)| *id)
            .collect()
    }

    /// The ring a running resharding moves points from: its group's shards without the new
    /// shard (up), or all of them, the drained one included (down).
    pub fn source_ring(&self) -> Option<Vec<ShardId>> {
        let r = self.resharding.as_ref()?;
        Some(
            self.shards
                .iter()
                .filter(|(_, s)| s.shard_key == r.shard_key)
                .map(|(id, _)| *id)
                .filter(|id| r.direction == ReshardingDirection::Down || *id != r.shard)
                .collect(),
        )
    }

    /// The ring a running resharding moves points to: its group's shards with the new shard
    /// (up) or without the drained one (down).
    pub fn target_ring(&self) -> Option<Vec<ShardId>> {
        let r = self.resharding.as_ref()?;
        Some(
            self.shards
                .iter()
                .filter(|(_, s)| s.shard_key == r.shard_key)
                .map(|(id, _)| *id)
                .filter(|id| r.direction == ReshardingDirection::Up || *id != r.shard)
                .collect(),
        )
    }
}

/// Drops the surplus replicas of `c`'s shards in [`CollectionMeta::trimming`] whose replicas
/// no transfer or resharding involves (the others wait for a later operation). Keeps active
/// replicas before others, then those on the least loaded peers (by `load`), then lower
/// peer ids, so every peer computes the same choice and an active replica always survives.
fn trim_replicas(c: &mut CollectionMeta, load: &BTreeMap<PeerId, usize>) {
    if c.trimming.is_empty() {
        return;
    }
    let wanted = c.config.params.replication_factor.max(1) as usize;
    let busy = |id: &ShardId| {
        c.resharding.is_some()
            || c.transfers
                .iter()
                .any(|t| t.shard == *id || t.to_shard == Some(*id))
    };
    let mut done = BTreeSet::new();
    let mut drops: Vec<(ShardId, Vec<PeerId>)> = Vec::new();
    for id in &c.trimming {
        let Some(shard) = c.shards.get(id) else {
            done.insert(*id);
            continue;
        };
        if shard.replicas.len() <= wanted {
            done.insert(*id);
            continue;
        }
        if busy(id) {
            continue;
        }
        let mut ranked: Vec<(PeerId, ReplicaState)> =
            shard.replicas.iter().map(|(p, s)| (*p, *s)).collect();
        ranked.sort_by_key(|(peer, state)| {
            (
                !state.is_active_like(),
                load.get(peer).copied().unwrap_or(0),
                *peer,
            )
        });
        drops.push((
            *id,
            ranked
                .split_off(wanted)
                .into_iter()
                .map(|(p, _)| p)
                .collect(),
        ));
        done.insert(*id);
    }
    for (id, peers) in drops {
        if let Some(shard) = c.shards.get_mut(&id) {
            for peer in peers {
                shard.replicas.remove(&peer);
            }
        }
    }
    c.trimming.retain(|id| !done.contains(id));
}

/// What decides where a shard's writes go: its replicas with their states, the transfers
/// into or out of it, and its collection's resharding.
fn write_routing<'a>(
    c: &'a CollectionMeta,
    id: ShardId,
    shard: &'a ShardMeta,
) -> (
    &'a BTreeMap<PeerId, ReplicaState>,
    Vec<&'a ShardTransfer>,
    Option<&'a ReshardingState>,
) {
    (
        &shard.replicas,
        c.transfers
            .iter()
            .filter(|t| t.shard == id || t.to_shard == Some(id))
            .collect(),
        c.resharding.as_ref(),
    )
}

/// Bumps the layout version of every shard of `next` whose write routing differs from
/// `before` (the same collection before the operation; `None` when it is new).
fn bump_layout_versions(before: Option<&CollectionMeta>, next: &mut CollectionMeta) {
    // A new shard (possibly reusing the id of a dropped one) starts above the versions of the
    // collection's other shards.
    let newest = before
        .into_iter()
        .flat_map(|b| b.shards.values().map(|s| s.version))
        .max()
        .unwrap_or(0);
    let mut bumped = Vec::new();
    for (id, shard) in &next.shards {
        let old = before.and_then(|b| b.shards.get(id).map(|s| (b, s)));
        match old {
            Some((b, s)) if write_routing(b, *id, s) != write_routing(next, *id, shard) => {
                bumped.push((*id, s.version + 1));
            }
            Some(_) => {}
            None => bumped.push((*id, newest + 1)),
        }
    }
    for (id, version) in bumped {
        if let Some(shard) = next.shards.get_mut(&id) {
            shard.version = version;
        }
    }
}

/// The replicated cluster metadata.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterState {
    pub peers: BTreeMap<PeerId, PeerInfo>,
    pub collections: BTreeMap<String, CollectionMeta>,
    /// Collection aliases (Qdrant's): alias name → collection name. A name is either a
    /// collection or an alias, never both.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub aliases: BTreeMap<String, String>,
}

/// The parameters of a named vector added to a live collection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NewVector {
    Dense(crate::collection_config::VectorParams),
    Sparse(crate::collection_config::SparseVectorParams),
}

/// One step of Qdrant's `POST /collections/aliases`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AliasAction {
    /// Points `alias` at `collection` (an existing alias is re-pointed).
    Create {
        collection: String,
        alias: String,
    },
    Delete {
        alias: String,
    },
    Rename {
        old: String,
        new: String,
    },
}

/// A change to the cluster state, proposed through Raft and applied by every peer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClusterOperation {
    /// Registers a peer, or updates the address and name of a known one.
    AddPeer {
        peer: PeerId,
        info: PeerInfo,
    },
    /// Forgets a peer. Without `force` it must hold no replicas; with `force` its replicas are
    /// dropped (for a peer that is gone for good), as long as every shard keeps a replica.
    RemovePeer {
        peer: PeerId,
        force: bool,
    },
    /// Applies alias changes in order, all or none (Qdrant's `POST /collections/aliases`).
    ChangeAliases {
        actions: Vec<AliasAction>,
    },
    /// Adds a named vector to a collection (Qdrant's `PUT /collections/{c}/vectors/{name}`):
    /// every existing point lacks it until written with it.
    CreateVectorName {
        collection: String,
        name: String,
        params: NewVector,
    },
    /// Changes a live collection's configuration (Qdrant's `PATCH /collections/{c}`). A
    /// higher replication factor makes the holders of each shard copy it to more peers; a
    /// lower one drops surplus replicas.
    UpdateCollection {
        collection: String,
        // Boxed: like a configuration, an update dwarfs every other operation.
        update: Box<crate::collection_config::CollectionUpdate>,
    },
    /// Removes a named vector, and every point's value of it, from a collection.
    DeleteVectorName {
        collection: String,
        name: String,
    },
    /// Creates a collection and, unless it is custom-sharded, places its shards on the peers.
    CreateCollection {
        name: String,
        // Boxed: the configuration dwarfs every other operation.
        config: Box<CollectionConfig>,
        #[serde(default)]
        uuid: u64,
    },
    DeleteCollection {
        name: String,
    },
    /// Changes a replica's state; with `from_state`, only if it is currently in that state
    /// (compare-and-set, so a stale reconcile cannot undo a newer decision).
    SetReplicaState {
        collection: String,
        shard: ShardId,
        peer: PeerId,
        state: ReplicaState,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from_state: Option<ReplicaState>,
    },
    /// Changes several replicas of one shard at once, each a compare-and-set on the state it
    /// was decided on, all or none, in order. A snapshot recovery makes its replica Active and
    /// the others Dead in one step, so that no replica marked Dead recovers from another one
    /// that still holds the state the snapshot replaced.
    SetReplicaStates {
        collection: String,
        shard: ShardId,
        changes: Vec<ReplicaStateChange>,
    },
    /// Adds a replica of an existing shard on a peer, in a state that serves no reads.
    AddReplica {
        collection: String,
        shard: ShardId,
        peer: PeerId,
        state: ReplicaState,
    },
    DropReplica {
        collection: String,
        shard: ShardId,
        peer: PeerId,
    },
    /// Creates the shards of a new shard key in a custom-sharded collection. `shard_number` and
    /// `replication_factor` default to the collection's; `placement` restricts the peers.
    CreateShardKey {
        collection: String,
        key: ShardKey,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        shard_number: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        replication_factor: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        placement: Option<Vec<PeerId>>,
        /// Qdrant's `initial_state`: `Active` makes the new (empty) replicas serve at once
        /// instead of going through `Initializing`; no other state is accepted, since nothing
        /// would bring such replicas to a sound end.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        initial_state: Option<ReplicaState>,
    },
    /// Drops every shard of a shard key.
    DropShardKey {
        collection: String,
        key: ShardKey,
    },
    /// Registers a transfer and puts the destination replica in the method's state (adding it,
    /// or taking over a `Dead` one). `max_per_peer` bounds the transfers a peer sends or
    /// receives at once.
    StartTransfer {
        collection: String,
        transfer: ShardTransfer,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_per_peer: Option<u32>,
        /// Compare-and-set for transfers a peer starts by itself (recovering its `Dead`
        /// replica): the destination replica must exist in this state when the operation is
        /// applied, so a decision taken on a stale view (the replica was dropped meanwhile)
        /// is rejected instead of re-creating the replica.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        destination_must_be: Option<ReplicaState>,
    },
    /// Ends a transfer successfully: the destination becomes Active; a move drops the source.
    FinishTransfer {
        collection: String,
        shard: ShardId,
        from: PeerId,
        to: PeerId,
        /// The transfer this was decided for (its `id`): when given, the operation applies
        /// only if that very transfer still runs, so a decision of an earlier transfer between
        /// the same peers is rejected. `None` (an operator's request) names whichever runs.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
    /// Ends a transfer without effect: the destination replica goes back to what it was before
    /// (removed when it did not exist).
    AbortTransfer {
        collection: String,
        shard: ShardId,
        from: PeerId,
        to: PeerId,
        /// The transfer this was decided for (its `id`): when given, the operation applies
        /// only if that very transfer still runs, so a decision of an earlier transfer between
        /// the same peers is rejected. `None` (an operator's request) names whichever runs.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
    /// Starts scaling a collection (with custom sharding: one shard key's shards) up by one
    /// shard, placed on `peer` or the least loaded peer, or down by one, draining its last
    /// shard.
    StartResharding {
        collection: String,
        direction: ReshardingDirection,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        peer: Option<PeerId>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        shard_key: Option<ShardKey>,
        /// The caller commits the stages itself.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        manual: bool,
        /// Chosen by the proposer (random): see [`ReshardingState::id`].
        #[serde(default, skip_serializing_if = "is_zero")]
        id: u64,
    },
    /// Marks the resharding stream from `shard` into `to_shard` on peer `to` as having sent
    /// every point.
    ReshardingStreamDone {
        collection: String,
        shard: ShardId,
        to_shard: ShardId,
        to: PeerId,
        /// The stream's transfer id, as for [`ClusterOperation::FinishTransfer`]: a stream of
        /// an earlier resharding between the same shards cannot mark this one's done.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
    /// Reads switch to the new hash ring; every resharding stream must be done.
    CommitReadHashRing {
        collection: String,
        /// The resharding this was decided for (its `id`): when given, the operation applies
        /// only to that resharding, so a step decided while an earlier one ran is rejected.
        /// `None` (an operator's request) names whichever runs.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resharding: Option<u64>,
    },
    /// Writes switch to the new hash ring; from here on the resharding cannot be aborted.
    CommitWriteHashRing {
        collection: String,
        /// The resharding this was decided for (its `id`): when given, the operation applies
        /// only to that resharding, so a step decided while an earlier one ran is rejected.
        /// `None` (an operator's request) names whichever runs.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resharding: Option<u64>,
    },
    /// Ends a resharding whose writes use the new ring: a new shard becomes Active, a drained
    /// shard is dropped.
    FinishResharding {
        collection: String,
        /// The resharding this was decided for (its `id`): when given, the operation applies
        /// only to that resharding, so a step decided while an earlier one ran is rejected.
        /// `None` (an operator's request) names whichever runs.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resharding: Option<u64>,
    },
    /// Undoes a resharding whose writes still use the old ring.
    AbortResharding {
        collection: String,
        /// The resharding this was decided for (its `id`): when given, the operation applies
        /// only to that resharding, so a step decided while an earlier one ran is rejected.
        /// `None` (an operator's request) names whichever runs.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resharding: Option<u64>,
    },
    /// Declares (`Some`) or removes (`None`) a payload index on `field`.
    SetPayloadIndex {
        collection: String,
        field: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        entry: Option<PayloadIndexEntry>,
    },
}

/// One replica's change in [`ClusterOperation::SetReplicaStates`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaStateChange {
    pub peer: PeerId,
    pub state: ReplicaState,
    /// The state the replica must be in when the operation is applied.
    pub from_state: ReplicaState,
}

/// What an applied operation reports back to its proposer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClusterResponse {
    /// The operation took effect (or, for an idempotent repeat, was already in effect).
    Done,
    /// New shards were created; each lists the peers its replicas were placed on.
    ShardsPlaced {
        shards: BTreeMap<ShardId, Vec<PeerId>>,
    },
}

/// Why an operation was rejected. Every variant names what it is about; the state is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClusterError {
    #[error("peer {peer} is not part of the cluster")]
    UnknownPeer { peer: PeerId },
    #[error("uri `{uri}` already belongs to peer {owner}; each peer needs its own address")]
    PeerUriInUse { uri: String, owner: PeerId },
    #[error(
        "peer {peer} still holds {replicas} replica(s), e.g. shard {shard} of collection \
         `{collection}`; move them to other peers first, or remove the peer with force"
    )]
    PeerHoldsReplicas {
        peer: PeerId,
        replicas: usize,
        collection: String,
        shard: ShardId,
    },
    #[error(
        "peer {peer} drives the resharding of collection `{collection}`; abort or finish the \
         resharding first"
    )]
    PeerDrivesResharding { peer: PeerId, collection: String },
    #[error("collection `{collection}` already exists")]
    CollectionExists { collection: String },
    #[error("collection `{collection}` does not exist")]
    UnknownCollection { collection: String },
    #[error("Alias {alias} does not exists!")]
    UnknownAlias { alias: String },
    #[error("`{alias}` is already an alias; delete the alias first")]
    AliasExists { alias: String },
    #[error("invalid collection name `{collection}`: {reason}")]
    InvalidCollectionName { collection: String, reason: String },
    #[error("invalid configuration for collection `{collection}`: {reason}")]
    InvalidConfig { collection: String, reason: String },
    #[error("cannot place the shards of collection `{collection}`: {reason}")]
    NoPeersForPlacement { collection: String, reason: String },
    #[error("shard {shard} of collection `{collection}` does not exist")]
    UnknownShard { collection: String, shard: ShardId },
    #[error("shard {shard} of collection `{collection}` has no replica on peer {peer}")]
    NoReplicaOnPeer {
        collection: String,
        shard: ShardId,
        peer: PeerId,
    },
    #[error(
        "shard {shard} of collection `{collection}` already has a replica on peer {peer} ({state})"
    )]
    ReplicaExists {
        collection: String,
        shard: ShardId,
        peer: PeerId,
        state: ReplicaState,
    },
    #[error(
        "the replica of shard {shard} of collection `{collection}` on peer {peer} is the shard's \
         only replica; add another replica first, or delete the collection"
    )]
    LastReplica {
        collection: String,
        shard: ShardId,
        peer: PeerId,
    },
    #[error(
        "the replica of shard {shard} of collection `{collection}` on peer {peer} is the shard's \
         last active replica; activate another replica first"
    )]
    LastActiveReplica {
        collection: String,
        shard: ShardId,
        peer: PeerId,
    },
    #[error(
        "the replica of shard {shard} of collection `{collection}` on peer {peer} is {actual}, \
         not {expected}; re-read the cluster state and decide again"
    )]
    ReplicaStateMismatch {
        collection: String,
        shard: ShardId,
        peer: PeerId,
        expected: ReplicaState,
        actual: ReplicaState,
    },
    #[error(
        "a new replica of shard {shard} of collection `{collection}` on peer {peer} cannot start \
         as {state}: it holds no data yet; add it as Initializing, Partial, Recovery or Listener \
         and promote it once filled"
    )]
    NewReplicaReadable {
        collection: String,
        shard: ShardId,
        peer: PeerId,
        state: ReplicaState,
    },
    #[error(
        "the replica of shard {shard} of collection `{collection}` on peer {peer} takes part in a \
         running transfer; abort the transfer first"
    )]
    ReplicaInTransfer {
        collection: String,
        shard: ShardId,
        peer: PeerId,
    },
    #[error(
        "shard {shard} of collection `{collection}` takes part in a running resharding; abort or \
         finish the resharding first"
    )]
    ShardInResharding { collection: String, shard: ShardId },
    #[error(
        "collection `{collection}` is not custom-sharded; shard keys need `sharding_method: custom`"
    )]
    NotCustomSharded { collection: String },
    #[error(
        "collection `{collection}` is already resharding (shard {shard}); finish or abort that first"
    )]
    ReshardingRunning { collection: String, shard: ShardId },
    #[error("collection `{collection}` is not resharding")]
    NoResharding { collection: String },
    /// An operation decided for a transfer or resharding that has ended since (another one
    /// between the same peers or shards runs now).
    #[error("collection `{collection}`: {what} is no longer running; the decision is stale")]
    StaleDecision { collection: String, what: String },
    #[error(
        "the resharding of collection `{collection}` is still moving points (shard {shard} to shard {to_shard} on peer {peer}); reads switch once every point has moved"
    )]
    ReshardingPointsMoving {
        collection: String,
        shard: ShardId,
        to_shard: ShardId,
        peer: PeerId,
    },
    #[error("the resharding of collection `{collection}` is at stage {actual:?}, not {expected:?}")]
    ReshardingStageMismatch {
        collection: String,
        expected: ReshardingStage,
        actual: ReshardingStage,
    },
    #[error(
        "the resharding of collection `{collection}` is at stage {stage:?}: writes use the new hash ring, so it can only be finished"
    )]
    ReshardingTooFarToAbort {
        collection: String,
        stage: ReshardingStage,
    },
    #[error("cannot reshard collection `{collection}`: {reason}")]
    InvalidResharding { collection: String, reason: String },
    #[error("a transfer needs two different peers; both are {peer}")]
    SamePeer { peer: PeerId },
    #[error(
        "shard {shard} of collection `{collection}` is already being transferred; abort that transfer first"
    )]
    TransferExists { collection: String, shard: ShardId },
    #[error(
        "no transfer of shard {shard} of collection `{collection}` from peer {from} to peer {to} is running"
    )]
    UnknownTransfer {
        collection: String,
        shard: ShardId,
        from: PeerId,
        to: PeerId,
    },
    #[error(
        "peer {peer} already takes part in {limit} transfer(s), the most allowed; wait for one to finish"
    )]
    TransferLimit { peer: PeerId, limit: u32 },
    #[error("unsupported transfer: {reason}")]
    UnsupportedTransfer { reason: String },
    #[error("shard key {key} already exists in collection `{collection}`")]
    ShardKeyExists { collection: String, key: ShardKey },
    #[error("shard key {key} does not exist in collection `{collection}`")]
    UnknownShardKey { collection: String, key: ShardKey },
    #[error("invalid shard key {key} for collection `{collection}`: {reason}")]
    InvalidShardKey {
        collection: String,
        key: ShardKey,
        reason: String,
    },
}

impl ClusterState {
    /// Applies `op` if it is valid; otherwise returns why not and leaves `self` unchanged.
    ///
    /// The operation runs on a clone that replaces `self` only on success, so there is no
    /// separate validation that could disagree with the application.
    pub fn apply(&mut self, op: ClusterOperation) -> Result<ClusterResponse, ClusterError> {
        let mut next = self.clone();
        let response = next.apply_in_place(op)?;
        let load = next.replicas_per_peer();
        for (name, c) in next.collections.iter_mut() {
            trim_replicas(c, &load);
            bump_layout_versions(self.collections.get(name), c);
            let wanted = c.config.params.replication_factor.max(1) as usize;
            let shards = &c.shards;
            c.replicating.retain(|id| {
                shards
                    .get(id)
                    .is_some_and(|s| s.active_like_count() < wanted)
            });
        }
        *self = next;
        Ok(response)
    }

    /// What applying `op` would return, without changing `self` ("plan on a copy").
    pub fn validate(&self, op: &ClusterOperation) -> Result<ClusterResponse, ClusterError> {
        self.clone().apply(op.clone())
    }

    /// The number of replicas (of any state, across all collections) on each known peer.
    pub fn replicas_per_peer(&self) -> BTreeMap<PeerId, usize> {
        let mut load: BTreeMap<PeerId, usize> = self.peers.keys().map(|p| (*p, 0)).collect();
        for shard in self.collections.values().flat_map(|c| c.shards.values()) {
            for peer in shard.replicas.keys() {
                *load.entry(*peer).or_default() += 1;
            }
        }
        load
    }

    /// The body of [`Self::apply`]. It may leave `self` half-changed when it fails, which is why
    /// only `apply` (on a clone) calls it.
    fn apply_in_place(&mut self, op: ClusterOperation) -> Result<ClusterResponse, ClusterError> {
        match op {
            ClusterOperation::AddPeer { peer, info } => self.add_peer(peer, info),
            ClusterOperation::RemovePeer { peer, force } => self.remove_peer(peer, force),
            ClusterOperation::CreateCollection { name, config, uuid } => {
                self.create_collection(name, *config, uuid)
            }
            ClusterOperation::DeleteCollection { name } => {
                self.collections
                    .remove(&name)
                    .ok_or(ClusterError::UnknownCollection {
                        collection: name.clone(),
                    })?;
                // Qdrant drops a collection's aliases with it.
                self.aliases.retain(|_, target| *target != name);
                Ok(ClusterResponse::Done)
            }
            ClusterOperation::ChangeAliases { actions } => self.change_aliases(actions),
            ClusterOperation::CreateVectorName {
                collection,
                name,
                params,
            } => self.create_vector_name(collection, name, params),
            ClusterOperation::DeleteVectorName { collection, name } => {
                self.delete_vector_name(collection, name)
            }
            ClusterOperation::UpdateCollection { collection, update } => {
                self.update_collection(collection, &update)
            }
            ClusterOperation::SetReplicaState {
                collection,
                shard,
                peer,
                state,
                from_state,
            } => self.set_replica_state(collection, shard, peer, state, from_state),
            ClusterOperation::SetReplicaStates {
                collection,
                shard,
                changes,
            } => {
                for c in changes {
                    self.set_replica_state(
                        collection.clone(),
                        shard,
                        c.peer,
                        c.state,
                        Some(c.from_state),
                    )?;
                }
                Ok(ClusterResponse::Done)
            }
            ClusterOperation::AddReplica {
                collection,
                shard,
                peer,
                state,
            } => self.add_replica(collection, shard, peer, state),
            ClusterOperation::DropReplica {
                collection,
                shard,
                peer,
            } => self.drop_replica(collection, shard, peer),
            ClusterOperation::CreateShardKey {
                collection,
                key,
                shard_number,
                replication_factor,
                placement,
                initial_state,
            } => self.create_shard_key(
                collection,
                key,
                shard_number,
                replication_factor,
                placement,
                initial_state,
            ),
            ClusterOperation::DropShardKey { collection, key } => {
                self.drop_shard_key(collection, key)
            }
            ClusterOperation::StartTransfer {
                collection,
                transfer,
                max_per_peer,
                destination_must_be,
            } => self.start_transfer(collection, transfer, max_per_peer, destination_must_be),
            ClusterOperation::FinishTransfer {
                collection,
                shard,
                from,
                to,
                id,
            } => self.end_transfer(collection, shard, from, to, id, true),
            ClusterOperation::AbortTransfer {
                collection,
                shard,
                from,
                to,
                id,
            } => self.end_transfer(collection, shard, from, to, id, false),
            ClusterOperation::StartResharding {
                collection,
                direction,
                peer,
                shard_key,
                manual,
                id,
            } => self.start_resharding(collection, direction, peer, shard_key, manual, id),
            ClusterOperation::ReshardingStreamDone {
                collection,
                shard,
                to_shard,
                to,
                id,
            } => {
                let meta = self.collection_mut(&collection)?;
                let resharding = meta.resharding.is_some();
                let stream = meta
                    .transfers
                    .iter_mut()
                    .find(|t| t.shard == shard && t.to_shard == Some(to_shard) && t.to == to)
                    .ok_or_else(|| match id {
                        // A stream of an earlier resharding that this one does not have.
                        Some(id) if resharding => ClusterError::StaleDecision {
                            collection: collection.clone(),
                            what: format!("resharding stream {id}"),
                        },
                        _ => ClusterError::NoResharding {
                            collection: collection.clone(),
                        },
                    })?;
                if let Some(id) = id
                    && stream.id != id
                {
                    return Err(ClusterError::StaleDecision {
                        collection,
                        what: format!("resharding stream {id}"),
                    });
                }
                stream.done = true;
                Ok(ClusterResponse::Done)
            }
            ClusterOperation::CommitReadHashRing {
                collection,
                resharding,
            } => {
                self.check_resharding(&collection, resharding)?;
                self.advance_resharding(
                    collection,
                    ReshardingStage::MigratingPoints,
                    ReshardingStage::ReadHashRingCommitted,
                )
            }
            ClusterOperation::CommitWriteHashRing {
                collection,
                resharding,
            } => {
                self.check_resharding(&collection, resharding)?;
                self.advance_resharding(
                    collection,
                    ReshardingStage::ReadHashRingCommitted,
                    ReshardingStage::WriteHashRingCommitted,
                )
            }
            ClusterOperation::FinishResharding {
                collection,
                resharding,
            } => {
                self.check_resharding(&collection, resharding)?;
                self.end_resharding(collection, true)
            }
            ClusterOperation::AbortResharding {
                collection,
                resharding,
            } => {
                self.check_resharding(&collection, resharding)?;
                self.end_resharding(collection, false)
            }
            ClusterOperation::SetPayloadIndex {
                collection,
                field,
                entry,
            } => {
                let schema = &mut self.collection_mut(&collection)?.payload_schema;
                match entry {
                    Some(entry) => {
                        schema.insert(field, entry);
                    }
                    None => {
                        schema.remove(&field);
                    }
                }
                Ok(ClusterResponse::Done)
            }
        }
    }

    fn add_peer(&mut self, peer: PeerId, info: PeerInfo) -> Result<ClusterResponse, ClusterError> {
        if let Some((owner, _)) = self
            .peers
            .iter()
            .find(|(id, known)| **id != peer && known.uri == info.uri)
        {
            return Err(ClusterError::PeerUriInUse {
                uri: info.uri,
                owner: *owner,
            });
        }
        // Upsert: a restarted peer re-announcing itself (perhaps at a new address) is normal.
        self.peers.insert(peer, info);
        Ok(ClusterResponse::Done)
    }

    fn remove_peer(&mut self, peer: PeerId, force: bool) -> Result<ClusterResponse, ClusterError> {
        self.peer(peer)?;
        if let Some((name, _)) = self
            .collections
            .iter()
            .find(|(_, c)| c.resharding.as_ref().is_some_and(|r| r.peer == peer))
        {
            return Err(ClusterError::PeerDrivesResharding {
                peer,
                collection: name.clone(),
            });
        }
        let held: Vec<(String, ShardId)> = self
            .collections
            .iter()
            .flat_map(|(name, c)| {
                c.shards
                    .iter()
                    .filter(|(_, s)| s.replicas.contains_key(&peer))
                    .map(move |(id, _)| (name.clone(), *id))
            })
            .collect();
        if let Some((collection, shard)) = held.first()
            && !force
        {
            return Err(ClusterError::PeerHoldsReplicas {
                peer,
                replicas: held.len(),
                collection: collection.clone(),
                shard: *shard,
            });
        }
        for (name, shard_id) in held {
            let collection = self.collection_mut(&name)?;
            lose_resharding_streams(collection, shard_id, peer);
            // The peer's transfers cannot continue without it (cancelling one may remove its
            // destination replica, so this comes before counting what is left).
            cancel_transfers(collection, shard_id, peer);
            // A forced removal may drop active replicas (the peer is gone for good), but never a
            // shard's last replica: that would leave a shard that exists nowhere.
            let shard = shard_mut(collection, &name, shard_id)?;
            if shard.replicas.len() == 1 && shard.replicas.contains_key(&peer) {
                return Err(ClusterError::LastReplica {
                    collection: name,
                    shard: shard_id,
                    peer,
                });
            }
            shard.replicas.remove(&peer);
        }
        self.peers.remove(&peer);
        Ok(ClusterResponse::Done)
    }

    fn create_vector_name(
        &mut self,
        collection: String,
        name: String,
        params: NewVector,
    ) -> Result<ClusterResponse, ClusterError> {
        use crate::collection_config::VectorsConfig;
        let config = &mut self.collection_mut(&collection)?.config;
        if config.vector_kind(&name).is_some() {
            return Err(ClusterError::InvalidConfig {
                collection,
                reason: format!("vector `{name}` already exists"),
            });
        }
        match params {
            NewVector::Dense(p) => {
                let mut named = match std::mem::replace(
                    &mut config.params.vectors,
                    VectorsConfig::Named(Default::default()),
                ) {
                    VectorsConfig::Single(unnamed) => {
                        BTreeMap::from([(crate::types::DEFAULT_VECTOR.to_string(), unnamed)])
                    }
                    VectorsConfig::Named(map) => map,
                };
                named.insert(name, p);
                config.params.vectors = VectorsConfig::Named(named);
            }
            NewVector::Sparse(p) => {
                config
                    .params
                    .sparse_vectors
                    .get_or_insert_with(Default::default)
                    .insert(name, p);
            }
        }
        config
            .validate()
            .map_err(|reason| ClusterError::InvalidConfig { collection, reason })?;
        Ok(ClusterResponse::Done)
    }

    fn update_collection(
        &mut self,
        collection: String,
        update: &crate::collection_config::CollectionUpdate,
    ) -> Result<ClusterResponse, ClusterError> {
        let meta = self.collection_mut(&collection)?;
        let before = meta.config.params.replication_factor;
        meta.config
            .apply_update(update)
            .map_err(|reason| ClusterError::InvalidConfig {
                collection: collection.clone(),
                reason,
            })?;
        let after = meta.config.params.replication_factor;
        let shards = meta.shards.keys().copied();
        if after > before {
            meta.replicating.extend(shards);
        } else if after < before {
            meta.trimming.extend(shards);
        }
        Ok(ClusterResponse::Done)
    }

    fn delete_vector_name(
        &mut self,
        collection: String,
        name: String,
    ) -> Result<ClusterResponse, ClusterError> {
        use crate::collection_config::VectorsConfig;
        let config = &mut self.collection_mut(&collection)?.config;
        let removed = match &mut config.params.vectors {
            VectorsConfig::Named(map) => map.remove(&name).is_some(),
            VectorsConfig::Single(_) => false,
        } || config
            .params
            .sparse_vectors
            .as_mut()
            .is_some_and(|m| m.remove(&name).is_some());
        if !removed {
            return Err(ClusterError::InvalidConfig {
                collection,
                reason: format!("Not existing vector name error: {name}"),
            });
        }
        Ok(ClusterResponse::Done)
    }

    fn change_aliases(
        &mut self,
        actions: Vec<AliasAction>,
    ) -> Result<ClusterResponse, ClusterError> {
        for action in actions {
            match action {
                AliasAction::Create { collection, alias } => {
                    if !self.collections.contains_key(&collection) {
                        return Err(ClusterError::UnknownCollection { collection });
                    }
                    validate_collection_name(&alias)?;
                    if self.collections.contains_key(&alias) {
                        return Err(ClusterError::CollectionExists { collection: alias });
                    }
                    self.aliases.insert(alias, collection);
                }
                AliasAction::Delete { alias } => {
                    self.aliases
                        .remove(&alias)
                        .ok_or(ClusterError::UnknownAlias { alias })?;
                }
                AliasAction::Rename { old, new } => {
                    validate_collection_name(&new)?;
                    if self.collections.contains_key(&new) {
                        return Err(ClusterError::CollectionExists { collection: new });
                    }
                    let target = self
                        .aliases
                        .remove(&old)
                        .ok_or(ClusterError::UnknownAlias { alias: old })?;
                    self.aliases.insert(new, target);
                }
            }
        }
        Ok(ClusterResponse::Done)
    }

    fn create_collection(
        &mut self,
        name: String,
        config: CollectionConfig,
        uuid: u64,
    ) -> Result<ClusterResponse, ClusterError> {
        validate_collection_name(&name)?;
        if self.collections.contains_key(&name) {
            return Err(ClusterError::CollectionExists { collection: name });
        }
        if self.aliases.contains_key(&name) {
            return Err(ClusterError::AliasExists { alias: name });
        }
        config
            .validate()
            .map_err(|reason| ClusterError::InvalidConfig {
                collection: name.clone(),
                reason,
            })?;
        let custom = config.params.sharding_method == Some(ShardingMethod::Custom);
        let shard_number = config.params.shard_number;
        let replication_factor = config.params.replication_factor;
        self.collections.insert(
            name.clone(),
            CollectionMeta {
                config,
                shards: BTreeMap::new(),
                transfers: Vec::new(),
                resharding: None,
                payload_schema: BTreeMap::new(),
                replicating: BTreeSet::new(),
                trimming: BTreeSet::new(),
                uuid,
            },
        );
        if custom {
            // Custom sharding: shards come with their shard keys, none exist up front.
            return Ok(ClusterResponse::ShardsPlaced {
                shards: BTreeMap::new(),
            });
        }
        let candidates: Vec<PeerId> = self.peers.keys().copied().collect();
        let shards =
            self.place_new_shards(&name, None, shard_number, replication_factor, &candidates)?;
        Ok(ClusterResponse::ShardsPlaced { shards })
    }

    fn set_replica_state(
        &mut self,
        name: String,
        shard_id: ShardId,
        peer: PeerId,
        state: ReplicaState,
        from_state: Option<ReplicaState>,
    ) -> Result<ClusterResponse, ClusterError> {
        let collection = self.collection_mut(&name)?;
        // A resharding owns the states of its shard's replicas until it ends.
        not_resharding(collection, &name, shard_id)?;
        let shard = shard_mut(collection, &name, shard_id)?;
        let current = *shard
            .replicas
            .get(&peer)
            .ok_or_else(|| ClusterError::NoReplicaOnPeer {
                collection: name.clone(),
                shard: shard_id,
                peer,
            })?;
        if let Some(expected) = from_state
            && expected != current
        {
            return Err(ClusterError::ReplicaStateMismatch {
                collection: name,
                shard: shard_id,
                peer,
                expected,
                actual: current,
            });
        }
        if current.is_active_like() && !state.is_active_like() && shard.active_like_count() == 1 {
            return Err(ClusterError::LastActiveReplica {
                collection: name,
                shard: shard_id,
                peer,
            });
        }
        shard.replicas.insert(peer, state);
        let collection = self.collection_mut(&name)?;
        if !state.is_active_like() {
            lose_resharding_streams(collection, shard_id, peer);
        }
        // A transfer cannot go on once its source stops being active or its destination is
        // moved to another state by hand.
        if collection.transfers.iter().any(|t| {
            t.shard == shard_id
                && ((t.from == peer && !state.is_active_like())
                    || (t.to == peer && state != t.method.destination_state()))
        }) {
            cancel_transfers(collection, shard_id, peer);
            if let Some(s) = collection.shards.get_mut(&shard_id) {
                // The replica keeps the state it was explicitly given.
                s.replicas.insert(peer, state);
            }
        }
        Ok(ClusterResponse::Done)
    }

    fn add_replica(
        &mut self,
        name: String,
        shard_id: ShardId,
        peer: PeerId,
        state: ReplicaState,
    ) -> Result<ClusterResponse, ClusterError> {
        self.peer(peer)?;
        let collection = self.collection_mut(&name)?;
        let shard = shard_mut(collection, &name, shard_id)?;
        if let Some(existing) = shard.replicas.get(&peer) {
            return Err(ClusterError::ReplicaExists {
                collection: name,
                shard: shard_id,
                peer,
                state: *existing,
            });
        }
        if state.is_readable() {
            return Err(ClusterError::NewReplicaReadable {
                collection: name,
                shard: shard_id,
                peer,
                state,
            });
        }
        shard.replicas.insert(peer, state);
        Ok(ClusterResponse::Done)
    }

    fn drop_replica(
        &mut self,
        name: String,
        shard_id: ShardId,
        peer: PeerId,
    ) -> Result<ClusterResponse, ClusterError> {
        // Dropping the destination of a running transfer aborts the transfer in the same
        // operation, as Qdrant does; a destination the transfer created is then gone already.
        let filling = self
            .collection(&name)?
            .transfers
            .iter()
            .find(|t| t.to_shard.is_none() && t.shard == shard_id && t.to == peer)
            .map(|t| t.from);
        if let Some(from) = filling {
            self.end_transfer(name.clone(), shard_id, from, peer, None, false)?;
            let shard = shard_mut(self.collection_mut(&name)?, &name, shard_id)?;
            if !shard.replicas.contains_key(&peer) {
                return Ok(ClusterResponse::Done);
            }
        }
        let collection = self.collection_mut(&name)?;
        if collection
            .transfers
            .iter()
            .any(|t| t.involves(shard_id, peer))
        {
            return Err(ClusterError::ReplicaInTransfer {
                collection: name,
                shard: shard_id,
                peer,
            });
        }
        not_resharding(collection, &name, shard_id)?;
        let shard = shard_mut(collection, &name, shard_id)?;
        let state = *shard
            .replicas
            .get(&peer)
            .ok_or_else(|| ClusterError::NoReplicaOnPeer {
                collection: name.clone(),
                shard: shard_id,
                peer,
            })?;
        if shard.replicas.len() == 1 {
            return Err(ClusterError::LastReplica {
                collection: name,
                shard: shard_id,
                peer,
            });
        }
        if state.is_active_like() && shard.active_like_count() == 1 {
            return Err(ClusterError::LastActiveReplica {
                collection: name,
                shard: shard_id,
                peer,
            });
        }
        shard.replicas.remove(&peer);
        Ok(ClusterResponse::Done)
    }

    fn create_shard_key(
        &mut self,
        name: String,
        key: ShardKey,
        shard_number: Option<u32>,
        replication_factor: Option<u32>,
        placement: Option<Vec<PeerId>>,
        initial_state: Option<ReplicaState>,
    ) -> Result<ClusterResponse, ClusterError> {
        let collection = self.collection(&name)?;
        if !collection.is_custom_sharded() {
            return Err(ClusterError::NotCustomSharded { collection: name });
        }
        if collection
            .shards
            .values()
            .any(|s| s.shard_key.as_ref() == Some(&key))
        {
            return Err(ClusterError::ShardKeyExists {
                collection: name,
                key,
            });
        }
        let invalid = |reason: String| ClusterError::InvalidShardKey {
            collection: name.clone(),
            key: key.clone(),
            reason,
        };
        if let Some(state) = initial_state
            && !matches!(state, ReplicaState::Active | ReplicaState::Initializing)
        {
            return Err(invalid(format!(
                "initial_state {state} is not supported: new shards start Initializing (the \
                 default) or Active"
            )));
        }
        let shard_number = shard_number.unwrap_or(collection.config.params.shard_number);
        if shard_number == 0 || shard_number > MAX_SHARD_NUMBER {
            return Err(invalid(format!(
                "shard_number must be between 1 and {MAX_SHARD_NUMBER}, got {shard_number}"
            )));
        }
        let replication_factor =
            replication_factor.unwrap_or(collection.config.params.replication_factor);
        if replication_factor == 0 {
            return Err(invalid("replication_factor must be at least 1".into()));
        }
        if collection.shards.len() + shard_number as usize > MAX_SHARD_NUMBER as usize {
            return Err(invalid(format!(
                "the collection would have more than {MAX_SHARD_NUMBER} shards"
            )));
        }
        let candidates = match placement {
            None => self.peers.keys().copied().collect(),
            Some(peers) => {
                if peers.is_empty() {
                    return Err(invalid("placement lists no peers".into()));
                }
                let mut seen = BTreeSet::new();
                for peer in &peers {
                    self.peer(*peer)?;
                    if !seen.insert(*peer) {
                        return Err(invalid(format!("placement lists peer {peer} twice")));
                    }
                }
                peers
            }
        };
        let shards = self.place_new_shards(
            &name,
            Some(key),
            shard_number,
            replication_factor,
            &candidates,
        )?;
        if initial_state == Some(ReplicaState::Active) {
            let collection = self.collection_mut(&name)?;
            for id in shards.keys() {
                if let Some(shard) = collection.shards.get_mut(id) {
                    shard
                        .replicas
                        .values_mut()
                        .for_each(|s| *s = ReplicaState::Active);
                }
            }
        }
        Ok(ClusterResponse::ShardsPlaced { shards })
    }

    fn drop_shard_key(
        &mut self,
        name: String,
        key: ShardKey,
    ) -> Result<ClusterResponse, ClusterError> {
        let collection = self.collection_mut(&name)?;
        let ids: Vec<ShardId> = collection
            .shards
            .iter()
            .filter(|(_, s)| s.shard_key.as_ref() == Some(&key))
            .map(|(id, _)| *id)
            .collect();
        if ids.is_empty() {
            return Err(ClusterError::UnknownShardKey {
                collection: name,
                key,
            });
        }
        for id in &ids {
            if let Some(t) = collection
                .transfers
                .iter()
                .find(|t| t.shard == *id || t.to_shard == Some(*id))
            {
                let peer = t.to;
                return Err(ClusterError::ReplicaInTransfer {
                    collection: name,
                    shard: *id,
                    peer,
                });
            }
            if collection
                .resharding
                .as_ref()
                .is_some_and(|r| r.shard == *id)
            {
                return Err(ClusterError::ShardInResharding {
                    collection: name,
                    shard: *id,
                });
            }
            collection.shards.remove(id);
        }
        Ok(ClusterResponse::Done)
    }

    /// Creates `shard_number` new shards (ids after the largest existing one) with up to
    /// `replication_factor` replicas each, in state `Initializing`, on `candidates`.
    ///
    /// Each replica goes to the candidate with the fewest replicas overall, ties broken by the
    /// lower peer id, never to a peer that already holds that shard. Greedy least-loaded choice
    /// keeps the load spread even (max - min <= 1 among the candidates when it was so before),
    /// and it depends only on the replicated state, so every peer computes the same placement.
    fn place_new_shards(
        &mut self,
        name: &str,
        shard_key: Option<ShardKey>,
        shard_number: u32,
        replication_factor: u32,
        candidates: &[PeerId],
    ) -> Result<BTreeMap<ShardId, Vec<PeerId>>, ClusterError> {
        if candidates.is_empty() {
            return Err(ClusterError::NoPeersForPlacement {
                collection: name.to_string(),
                reason: "the cluster has no peers; add a peer first".into(),
            });
        }
        let all_load = self.replicas_per_peer();
        let mut load: BTreeMap<PeerId, usize> = candidates
            .iter()
            .map(|p| (*p, all_load.get(p).copied().unwrap_or(0)))
            .collect();
        let per_shard = (replication_factor as usize).min(load.len());
        let collection = self.collection_mut(name)?;
        let first = collection
            .shards
            .keys()
            .next_back()
            .map_or(0, |id| id.0 + 1);
        let mut placed = BTreeMap::new();
        for offset in 0..shard_number {
            let shard_id = first.checked_add(offset).map(ShardId).ok_or_else(|| {
                ClusterError::InvalidConfig {
                    collection: name.to_string(),
                    reason: "shard ids are exhausted".into(),
                }
            })?;
            let mut chosen: Vec<PeerId> = Vec::with_capacity(per_shard);
            for _ in 0..per_shard {
                // BTreeMap iterates in peer-id order, so `min_by_key` keeps the lowest id on ties.
                let peer = load
                    .iter()
                    .filter(|(p, _)| !chosen.contains(p))
                    .min_by_key(|(_, n)| **n)
                    .map(|(p, _)| *p);
                let Some(peer) = peer else { break };
                *load.entry(peer).or_default() += 1;
                chosen.push(peer);
            }
            collection.shards.insert(
                shard_id,
                ShardMeta {
                    replicas: chosen
                        .iter()
                        .map(|p| (*p, ReplicaState::Initializing))
                        .collect(),
                    shard_key: shard_key.clone(),
                    version: 0,
                },
            );
            placed.insert(shard_id, chosen);
        }
        Ok(placed)
    }

    fn start_transfer(
        &mut self,
        name: String,
        mut transfer: ShardTransfer,
        max_per_peer: Option<u32>,
        destination_must_be: Option<ReplicaState>,
    ) -> Result<ClusterResponse, ClusterError> {
        let (shard_id, from, to) = (transfer.shard, transfer.from, transfer.to);
        if from == to {
            return Err(ClusterError::SamePeer { peer: from });
        }
        self.peer(from)?;
        self.peer(to)?;
        if transfer.to_shard.is_some() || transfer.method == TransferMethod::ReshardingStreamRecords
        {
            return Err(ClusterError::UnsupportedTransfer {
                reason: "transfers between shards belong to a resharding".into(),
            });
        }
        if let Some(limit) = max_per_peer {
            let (mut outgoing, mut incoming) = (0u32, 0u32);
            for t in self.collections.values().flat_map(|c| &c.transfers) {
                outgoing += u32::from(t.from == from);
                incoming += u32::from(t.to == to);
            }
            if outgoing >= limit {
                return Err(ClusterError::TransferLimit { peer: from, limit });
            }
            if incoming >= limit {
                return Err(ClusterError::TransferLimit { peer: to, limit });
            }
        }
        let collection = self.collection_mut(&name)?;
        if let Some(r) = &collection.resharding {
            return Err(ClusterError::ReshardingRunning {
                collection: name,
                shard: r.shard,
            });
        }
        if collection.transfers.iter().any(|t| t.shard == shard_id) {
            return Err(ClusterError::TransferExists {
                collection: name,
                shard: shard_id,
            });
        }
        not_resharding(collection, &name, shard_id)?;
        let shard = shard_mut(collection, &name, shard_id)?;
        match shard.replicas.get(&from) {
            None => {
                return Err(ClusterError::NoReplicaOnPeer {
                    collection: name,
                    shard: shard_id,
                    peer: from,
                });
            }
            Some(state) if !state.is_active_like() => {
                return Err(ClusterError::ReplicaStateMismatch {
                    collection: name,
                    shard: shard_id,
                    peer: from,
                    expected: ReplicaState::Active,
                    actual: *state,
                });
            }
            Some(_) => {}
        }
        let before = shard.replicas.get(&to).copied();
        if let Some(expected) = destination_must_be {
            match before {
                None => {
                    return Err(ClusterError::NoReplicaOnPeer {
                        collection: name,
                        shard: shard_id,
                        peer: to,
                    });
                }
                Some(actual) if actual != expected => {
                    return Err(ClusterError::ReplicaStateMismatch {
                        collection: name,
                        shard: shard_id,
                        peer: to,
                        expected,
                        actual,
                    });
                }
                Some(_) => {}
            }
        }
        if let Some(state) = before
            && state != ReplicaState::Dead
        {
            return Err(ClusterError::ReplicaExists {
                collection: name,
                shard: shard_id,
                peer: to,
                state,
            });
        }
        transfer.destination_was = before;
        shard
            .replicas
            .insert(to, transfer.method.destination_state());
        collection.transfers.push(transfer);
        Ok(ClusterResponse::Done)
    }

    fn end_transfer(
        &mut self,
        name: String,
        shard_id: ShardId,
        from: PeerId,
        to: PeerId,
        id: Option<u64>,
        finished: bool,
    ) -> Result<ClusterResponse, ClusterError> {
        let collection = self.collection_mut(&name)?;
        let position = collection
            .transfers
            .iter()
            .position(|t| {
                t.shard == shard_id && t.from == from && t.to == to && t.to_shard.is_none()
            })
            .ok_or_else(|| ClusterError::UnknownTransfer {
                collection: name.clone(),
                shard: shard_id,
                from,
                to,
            })?;
        if let Some(id) = id
            && collection.transfers[position].id != id
        {
            return Err(ClusterError::StaleDecision {
                collection: name,
                what: format!("transfer {id}"),
            });
        }
        let transfer = collection.transfers.remove(position);
        let shard = shard_mut(collection, &name, shard_id)?;
        if finished {
            shard.replicas.insert(to, ReplicaState::Active);
            if !transfer.sync {
                shard.replicas.remove(&from);
            }
        } else {
            match transfer.destination_was {
                Some(state) => {
                    shard.replicas.insert(to, state);
                }
                None => {
                    shard.replicas.remove(&to);
                }
            }
        }
        Ok(ClusterResponse::Done)
    }

    fn start_resharding(
        &mut self,
        name: String,
        direction: ReshardingDirection,
        peer: Option<PeerId>,
        shard_key: Option<ShardKey>,
        manual: bool,
        resharding_id: u64,
    ) -> Result<ClusterResponse, ClusterError> {
        let load = self.replicas_per_peer();
        if let Some(p) = peer {
            self.peer(p)?;
        }
        let collection = self.collection_mut(&name)?;
        let invalid = |reason: &str| ClusterError::InvalidResharding {
            collection: name.clone(),
            reason: reason.to_string(),
        };
        if let Some(running) = &collection.resharding {
            return Err(ClusterError::ReshardingRunning {
                collection: name.clone(),
                shard: running.shard,
            });
        }
        match (collection.is_custom_sharded(), &shard_key) {
            (true, None) => {
                return Err(invalid(
                    "the collection uses custom sharding: give a shard_key",
                ));
            }
            (false, Some(_)) => return Err(ClusterError::NotCustomSharded { collection: name }),
            _ => {}
        }
        let group: Vec<ShardId> = collection
            .shards
            .iter()
            .filter(|(_, s)| s.shard_key == shard_key)
            .map(|(id, _)| *id)
            .collect();
        if group.is_empty() {
            return Err(match shard_key {
                Some(key) => ClusterError::UnknownShardKey {
                    collection: name,
                    key,
                },
                None => invalid("the collection has no shards"),
            });
        }
        if let Some(t) = collection.transfers.first() {
            return Err(ClusterError::TransferExists {
                collection: name,
                shard: t.shard,
            });
        }
        let state = match direction {
            ReshardingDirection::Up => {
                if collection.shards.len() >= MAX_SHARD_NUMBER as usize {
                    return Err(invalid(&format!(
                        "the collection already has {MAX_SHARD_NUMBER} shards, the most allowed"
                    )));
                }
                // The new shard comes last in its group's ring (the highest id), which is what
                // lets the jump hash move points only into it.
                let id = collection.shards.keys().next_back().map_or(0, |s| s.0 + 1);
                let peer = match peer {
                    Some(p) => p,
                    None => *load
                        .iter()
                        .min_by_key(|(_, n)| **n)
                        .map(|(p, _)| p)
                        .ok_or_else(|| invalid("the cluster has no peers"))?,
                };
                collection.shards.insert(
                    ShardId(id),
                    ShardMeta {
                        replicas: BTreeMap::from([(peer, ReplicaState::Resharding)]),
                        shard_key: shard_key.clone(),
                        version: 0,
                    },
                );
                // Every existing shard streams what the new ring gives the new shard, from an
                // active replica (the driver's own when it has one).
                for old in &group {
                    let replicas = &collection.shards[old].replicas;
                    let from = if replicas.get(&peer) == Some(&ReplicaState::Active) {
                        peer
                    } else {
                        *replicas
                            .iter()
                            .find(|(_, s)| **s == ReplicaState::Active)
                            .map(|(p, _)| p)
                            .ok_or_else(|| invalid(&format!("shard {old} has no active replica")))?
                    };
                    collection.transfers.push(resharding_stream(
                        *old,
                        ShardId(id),
                        from,
                        peer,
                        resharding_id,
                    ));
                }
                ReshardingState {
                    direction,
                    shard: ShardId(id),
                    peer,
                    shard_key,
                    stage: ReshardingStage::MigratingPoints,
                    manual,
                    id: resharding_id,
                }
            }
            ReshardingDirection::Down => {
                if group.len() < 2 {
                    return Err(invalid("a collection keeps at least one shard"));
                }
                let last = *group.last().expect("two or more");
                let shard = shard_mut(collection, &name, last)?;
                let driver = match peer {
                    Some(p) if shard.replicas.get(&p).is_some_and(|s| s.is_active_like()) => p,
                    Some(p) => {
                        return Err(ClusterError::NoReplicaOnPeer {
                            collection: name,
                            shard: last,
                            peer: p,
                        });
                    }
                    None => *shard
                        .replicas
                        .iter()
                        .find(|(_, s)| **s == ReplicaState::Active)
                        .map(|(p, _)| p)
                        .ok_or_else(|| invalid("the shard to drain has no active replica"))?,
                };
                for state in shard.replicas.values_mut() {
                    if *state == ReplicaState::Active {
                        *state = ReplicaState::ReshardingScaleDown;
                    }
                }
                // The drained shard streams each remaining shard its part, to every replica
                // of it that takes updates (a Dead one is recovered after the resharding).
                for other in group.iter().filter(|s| **s != last) {
                    for (to, state) in &collection.shards[other].replicas {
                        if state.takes_updates() && *state != ReplicaState::Partial {
                            collection.transfers.push(resharding_stream(
                                last,
                                *other,
                                driver,
                                *to,
                                resharding_id,
                            ));
                        }
                    }
                }
                ReshardingState {
                    direction,
                    shard: last,
                    peer: driver,
                    shard_key,
                    stage: ReshardingStage::MigratingPoints,
                    manual,
                    id: resharding_id,
                }
            }
        };
        collection.resharding = Some(state);
        Ok(ClusterResponse::Done)
    }

    /// Rejects a step decided for resharding `expected` when another one runs (see
    /// [`ClusterOperation::CommitReadHashRing`]); no resharding at all is left to the step.
    fn check_resharding(&self, name: &str, expected: Option<u64>) -> Result<(), ClusterError> {
        let running = self
            .collections
            .get(name)
            .and_then(|c| c.resharding.as_ref())
            .map(|r| r.id);
        match (expected, running) {
            (Some(expected), Some(running)) if expected != running => {
                Err(ClusterError::StaleDecision {
                    collection: name.to_string(),
                    what: format!("resharding {expected}"),
                })
            }
            _ => Ok(()),
        }
    }

    fn advance_resharding(
        &mut self,
        name: String,
        from: ReshardingStage,
        to: ReshardingStage,
    ) -> Result<ClusterResponse, ClusterError> {
        let collection = self.collection_mut(&name)?;
        let running = collection
            .resharding
            .as_mut()
            .ok_or_else(|| ClusterError::NoResharding {
                collection: name.clone(),
            })?;
        // Repeating a commit that already happened is harmless (a caller retrying, or the
        // driver and a manual caller racing).
        if running.stage >= to {
            return Ok(ClusterResponse::Done);
        }
        if running.stage != from {
            return Err(ClusterError::ReshardingStageMismatch {
                collection: name,
                expected: from,
                actual: running.stage,
            });
        }
        if to == ReshardingStage::ReadHashRingCommitted
            && let Some(t) = collection
                .transfers
                .iter()
                .find(|t| t.to_shard.is_some() && !t.done)
        {
            return Err(ClusterError::ReshardingPointsMoving {
                collection: name,
                shard: t.shard,
                to_shard: t.to_shard.unwrap_or(t.shard),
                peer: t.to,
            });
        }
        let running = collection.resharding.as_mut().expect("checked above");
        running.stage = to;
        Ok(ClusterResponse::Done)
    }

    fn end_resharding(
        &mut self,
        name: String,
        finished: bool,
    ) -> Result<ClusterResponse, ClusterError> {
        let collection = self.collection_mut(&name)?;
        let running = collection
            .resharding
            .clone()
            .ok_or_else(|| ClusterError::NoResharding {
                collection: name.clone(),
            })?;
        if finished && running.stage != ReshardingStage::WriteHashRingCommitted {
            return Err(ClusterError::ReshardingStageMismatch {
                collection: name,
                expected: ReshardingStage::WriteHashRingCommitted,
                actual: running.stage,
            });
        }
        if !finished && !running.stage.can_abort() {
            return Err(ClusterError::ReshardingTooFarToAbort {
                collection: name,
                stage: running.stage,
            });
        }
        // The resharding's own point streams end with it.
        collection.transfers.retain(|t| t.to_shard.is_none());
        if !finished {
            undo_resharding(collection, &running);
            return Ok(ClusterResponse::Done);
        }
        match running.direction {
            ReshardingDirection::Up => {
                let shard = shard_mut(collection, &name, running.shard)?;
                for state in shard.replicas.values_mut() {
                    if *state == ReplicaState::Resharding {
                        *state = ReplicaState::Active;
                    }
                }
                // The new shard has one replica: it is copied up to the replication factor.
                collection.replicating.insert(running.shard);
            }
            ReshardingDirection::Down => {
                collection.shards.remove(&running.shard);
            }
        }
        // The configuration reports the shards the collection now has, as Qdrant's does (with
        // custom sharding, `shard_number` is the default for new shard keys and stays).
        if running.shard_key.is_none() && !collection.is_custom_sharded() {
            collection.config.params.shard_number = collection.shards.len() as u32;
        }
        collection.resharding = None;
        Ok(ClusterResponse::Done)
    }

    fn peer(&self, peer: PeerId) -> Result<&PeerInfo, ClusterError> {
        self.peers
            .get(&peer)
            .ok_or(ClusterError::UnknownPeer { peer })
    }

    fn collection(&self, name: &str) -> Result<&CollectionMeta, ClusterError> {
        self.collections
            .get(name)
            .ok_or_else(|| ClusterError::UnknownCollection {
                collection: name.to_string(),
            })
    }

    fn collection_mut(&mut self, name: &str) -> Result<&mut CollectionMeta, ClusterError> {
        self.collections
            .get_mut(name)
            .ok_or_else(|| ClusterError::UnknownCollection {
                collection: name.to_string(),
            })
    }
}

/// A stream of a resharding, registered by its start. Its id tells it from the streams of
/// other reshardings between the same shards (see [`ReshardingState::id`]).
fn resharding_stream(
    shard: ShardId,
    to_shard: ShardId,
    from: PeerId,
    to: PeerId,
    resharding: u64,
) -> ShardTransfer {
    ShardTransfer {
        shard,
        to_shard: Some(to_shard),
        from,
        to,
        sync: true,
        method: TransferMethod::ReshardingStreamRecords,
        destination_was: None,
        points_per_second: None,
        bytes_per_second: None,
        id: resharding ^ stream_salt(shard, to_shard),
        done: false,
    }
}

/// The replica of `shard` on `peer` stopped taking part (it failed, or its peer is removed):
/// a resharding stream reading from or writing to it has lost updates, so a resharding that can
/// still be aborted is; one past that point only needs the streams' forwarding, which it drops.
fn lose_resharding_streams(collection: &mut CollectionMeta, shard: ShardId, peer: PeerId) {
    let involved = |t: &ShardTransfer| {
        t.to_shard.is_some()
            && ((t.shard == shard && t.from == peer) || (t.to_shard == Some(shard) && t.to == peer))
    };
    if !collection.transfers.iter().any(involved) {
        return;
    }
    let Some(running) = collection.resharding.clone() else {
        return;
    };
    if running.stage.can_abort() {
        collection.transfers.retain(|t| t.to_shard.is_none());
        undo_resharding(collection, &running);
    } else {
        collection.transfers.retain(|t| !involved(t));
    }
}

/// Puts a collection back as it was before `running` started (its streams already gone).
fn undo_resharding(collection: &mut CollectionMeta, running: &ReshardingState) {
    match running.direction {
        ReshardingDirection::Up => {
            collection.shards.remove(&running.shard);
        }
        ReshardingDirection::Down => {
            if let Some(shard) = collection.shards.get_mut(&running.shard) {
                for state in shard.replicas.values_mut() {
                    if *state == ReplicaState::ReshardingScaleDown {
                        *state = ReplicaState::Active;
                    }
                }
            }
        }
    }
    collection.resharding = None;
}

/// Refuses to touch a shard that a running resharding adds or drains.
fn not_resharding(
    collection: &CollectionMeta,
    name: &str,
    shard: ShardId,
) -> Result<(), ClusterError> {
    if collection
        .resharding
        .as_ref()
        .is_some_and(|r| r.shard == shard)
    {
        return Err(ClusterError::ShardInResharding {
            collection: name.to_string(),
            shard,
        });
    }
    Ok(())
}

/// Ends the transfers of `shard` that involve `peer` without effect: each destination goes
/// back to its state before the transfer (or is removed).
fn cancel_transfers(collection: &mut CollectionMeta, shard: ShardId, peer: PeerId) {
    let (cancelled, kept): (Vec<ShardTransfer>, Vec<ShardTransfer>) = collection
        .transfers
        .drain(..)
        .partition(|t| t.shard == shard && (t.from == peer || t.to == peer));
    collection.transfers = kept;
    if let Some(meta) = collection.shards.get_mut(&shard) {
        for t in cancelled {
            match t.destination_was {
                Some(state) => {
                    meta.replicas.insert(t.to, state);
                }
                None => {
                    meta.replicas.remove(&t.to);
                }
            }
        }
    }
}

fn shard_mut<'a>(
    collection: &'a mut CollectionMeta,
    name: &str,
    shard: ShardId,
) -> Result<&'a mut ShardMeta, ClusterError> {
    collection
        .shards
        .get_mut(&shard)
        .ok_or_else(|| ClusterError::UnknownShard {
            collection: name.to_string(),
            shard,
        })
}

/// Collection names become directory names and URL path segments on every peer, so they are
/// checked here, once, where all peers agree.
fn validate_collection_name(name: &str) -> Result<(), ClusterError> {
    let reason = if name.is_empty() {
        Some("the name is empty")
    } else if name.len() > 255 {
        Some("the name is longer than 255 bytes")
    } else if name.contains(['/', '\\', '\0']) {
        Some("the name contains `/`, `\\` or a NUL byte")
    } else if name == "." || name == ".." {
        Some("the name is `.` or `..`")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(ClusterError::InvalidCollectionName {
            collection: name.to_string(),
            reason: reason.to_string(),
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Distance;
    use proptest::prelude::*;

    fn config(shard_number: u32, replication_factor: u32, custom: bool) -> Box<CollectionConfig> {
        let mut config = CollectionConfig::single_dense(4, Distance::Cosine);
        config.params.shard_number = shard_number;
        config.params.sharding_method = custom.then_some(ShardingMethod::Custom);
        config.params.replication_factor = replication_factor;
        Box::new(config)
    }

    fn add_peer(id: u64) -> ClusterOperation {
        ClusterOperation::AddPeer {
            peer: PeerId(id),
            info: PeerInfo {
                uri: format!("http://peer-{id}:6335"),
                name: format!("peer-{id}"),
            },
        }
    }

    fn create(name: &str, shards: u32, rf: u32) -> ClusterOperation {
        ClusterOperation::CreateCollection {
            name: name.into(),
            config: config(shards, rf, false),
            uuid: 1,
        }
    }

    fn set_state(name: &str, shard: u32, peer: u64, state: ReplicaState) -> ClusterOperation {
        ClusterOperation::SetReplicaState {
            collection: name.into(),
            shard: ShardId(shard),
            peer: PeerId(peer),
            state,
            from_state: None,
        }
    }

    fn drop_replica(name: &str, shard: u32, peer: u64) -> ClusterOperation {
        ClusterOperation::DropReplica {
            collection: name.into(),
            shard: ShardId(shard),
            peer: PeerId(peer),
        }
    }

    fn cluster(peers: u64) -> ClusterState {
        let mut state = ClusterState::default();
        for id in 1..=peers {
            state
                .apply(add_peer(id))
                .expect("adding a new peer is valid");
        }
        state
    }

    fn json(state: &ClusterState) -> String {
        serde_json::to_string(state).expect("cluster state serialises")
    }

    /// [`json`] without the layout versions, which only ever move forward: a collection
    /// "as it was" has the same replicas and configuration, at newer versions.
    fn json_unversioned(state: &ClusterState) -> String {
        let mut state = state.clone();
        for shard in state
            .collections
            .values_mut()
            .flat_map(|c| c.shards.values_mut())
        {
            shard.version = 0;
        }
        json(&state)
    }

    /// Applies `op`, expects a rejection, and checks that the state did not change at all.
    fn rejected(state: &mut ClusterState, op: ClusterOperation) -> ClusterError {
        let before = json(state);
        let err = state.apply(op).expect_err("operation should be rejected");
        assert_eq!(
            before,
            json(state),
            "a rejected operation changed the state"
        );
        err
    }

    fn replicas(state: &ClusterState, name: &str, shard: u32) -> Vec<(u64, ReplicaState)> {
        state.collections[name].shards[&ShardId(shard)]
            .replicas
            .iter()
            .map(|(p, s)| (p.0, *s))
            .collect()
    }

    /// A cluster of `peers` with `docs`: `shards` shards, `rf` replicas each, all Active.
    fn active_docs(peers: u64, shards: u32, rf: u32) -> ClusterState {
        let mut state = cluster(peers);
        state.apply(create("docs", shards, rf)).unwrap();
        let all: Vec<(u32, u64)> = state.collections["docs"]
            .shards
            .iter()
            .flat_map(|(id, s)| s.replicas.keys().map(move |p| (id.0, p.0)))
            .collect();
        for (shard, peer) in all {
            state
                .apply(set_state("docs", shard, peer, ReplicaState::Active))
                .unwrap();
        }
        state
    }

    fn start_reshard(direction: ReshardingDirection) -> ClusterOperation {
        ClusterOperation::StartResharding {
            collection: "docs".into(),
            direction,
            peer: None,
            shard_key: None,
            manual: false,
            id: 7,
        }
    }

    /// A resharding of `docs` whose stages the caller commits, with resharding id `id`.
    fn manual_resharding(direction: ReshardingDirection, id: u64) -> ClusterOperation {
        ClusterOperation::StartResharding {
            collection: "docs".into(),
            direction,
            peer: None,
            shard_key: None,
            manual: true,
            id,
        }
    }

    /// A resharding stream's id tells it from the streams of another resharding between the
    /// same shards and peers, so that a sender never resumes one from the other's checkpoint.
    #[test]
    fn resharding_streams_of_two_reshardings_have_different_ids() {
        let mut state = active_docs(3, 3, 1);
        let start = |id| manual_resharding(ReshardingDirection::Down, id);
        state.apply(start(7)).unwrap();
        let first = streams(&state);
        assert_eq!(
            state.collections["docs"].source_ring().unwrap().len(),
            3,
            "a scale down moves points from every shard's ring, the drained one included"
        );
        state
            .apply(docs_op(|c| ClusterOperation::AbortResharding {
                collection: c,
                resharding: None,
            }))
            .unwrap();
        state.apply(start(8)).unwrap();
        let second = streams(&state);
        let key = |t: &ShardTransfer| (t.shard, t.to_shard, t.from, t.to);
        assert_eq!(
            first.iter().map(key).collect::<Vec<_>>(),
            second.iter().map(key).collect::<Vec<_>>(),
            "the same streams"
        );
        for (a, b) in first.iter().zip(&second) {
            assert_ne!(a.id, b.id, "{a:?} and {b:?}");
        }
        let ids: BTreeSet<u64> = second.iter().map(|t| t.id).collect();
        assert_eq!(
            ids.len(),
            second.len(),
            "the streams of one resharding differ"
        );
    }

    #[test]
    fn decisions_of_an_ended_resharding_or_transfer_are_rejected() {
        let mut state = active_docs(3, 3, 1);
        let start = |id| manual_resharding(ReshardingDirection::Up, id);
        state.apply(start(7)).unwrap();
        let old = streams(&state);
        assert!(old.iter().all(|t| t.resharding_id() == 7));
        state
            .apply(docs_op(|c| ClusterOperation::AbortResharding {
                collection: c,
                resharding: None,
            }))
            .unwrap();
        state.apply(start(8)).unwrap();
        // A stream of the first resharding reports done: the second one's is not marked.
        for t in &old {
            let err = rejected(
                &mut state,
                ClusterOperation::ReshardingStreamDone {
                    collection: "docs".into(),
                    shard: t.shard,
                    to_shard: t.to_shard.unwrap(),
                    to: t.to,
                    id: Some(t.id),
                },
            );
            assert!(matches!(err, ClusterError::StaleDecision { .. }), "{err}");
        }
        assert!(streams(&state).iter().all(|t| !t.done));
        // Every step decided for the first resharding is rejected; the second one's applies.
        for t in streams(&state) {
            state
                .apply(ClusterOperation::ReshardingStreamDone {
                    collection: "docs".into(),
                    shard: t.shard,
                    to_shard: t.to_shard.unwrap(),
                    to: t.to,
                    id: Some(t.id),
                })
                .unwrap();
        }
        let steps = |r: Option<u64>| {
            [
                ClusterOperation::CommitReadHashRing {
                    collection: "docs".into(),
                    resharding: r,
                },
                ClusterOperation::CommitWriteHashRing {
                    collection: "docs".into(),
                    resharding: r,
                },
                ClusterOperation::FinishResharding {
                    collection: "docs".into(),
                    resharding: r,
                },
            ]
        };
        let abort = ClusterOperation::AbortResharding {
            collection: "docs".into(),
            resharding: Some(7),
        };
        let err = rejected(&mut state, abort);
        assert!(matches!(err, ClusterError::StaleDecision { .. }), "{err}");
        for (stale, current) in steps(Some(7)).into_iter().zip(steps(Some(8))) {
            let err = rejected(&mut state, stale);
            assert!(matches!(err, ClusterError::StaleDecision { .. }), "{err}");
            state.apply(current).unwrap();
        }
        assert_eq!(state.collections["docs"].shards.len(), 4);

        // A transfer's finish names the transfer: an earlier one's between the same peers
        // does not make the new destination Active.
        let mut state = active_docs(3, 1, 1);
        let from = replicas(&state, "docs", 0)[0].0;
        let to = (1..=3).find(|p| *p != from).unwrap();
        state.apply(transfer_op(from, to, None)).unwrap();
        let end = |id: Option<u64>, finished: bool| {
            if finished {
                ClusterOperation::FinishTransfer {
                    collection: "docs".into(),
                    shard: ShardId(0),
                    from: PeerId(from),
                    to: PeerId(to),
                    id,
                }
            } else {
                ClusterOperation::AbortTransfer {
                    collection: "docs".into(),
                    shard: ShardId(0),
                    from: PeerId(from),
                    to: PeerId(to),
                    id,
                }
            }
        };
        for finished in [true, false] {
            let err = rejected(&mut state, end(Some(2), finished));
            assert!(matches!(err, ClusterError::StaleDecision { .. }), "{err}");
        }
        assert_eq!(
            replicas(&state, "docs", 0),
            vec![(from, ReplicaState::Active), (to, ReplicaState::Partial)]
                .into_iter()
                .collect::<BTreeMap<_, _>>()
                .into_iter()
                .collect::<Vec<_>>()
        );
        state.apply(end(Some(3), true)).unwrap();
        assert!(state.collections["docs"].transfers.is_empty());
    }

    fn streams(state: &ClusterState) -> Vec<ShardTransfer> {
        state.collections["docs"]
            .transfers
            .iter()
            .filter(|t| t.to_shard.is_some())
            .cloned()
            .collect()
    }

    fn all_streams_done(state: &mut ClusterState) {
        for t in streams(state) {
            state
                .apply(ClusterOperation::ReshardingStreamDone {
                    collection: "docs".into(),
                    shard: t.shard,
                    to_shard: t.to_shard.unwrap(),
                    to: t.to,
                    id: None,
                })
                .unwrap();
        }
    }

    fn docs_op(f: fn(String) -> ClusterOperation) -> ClusterOperation {
        f("docs".into())
    }

    #[test]
    fn scale_up_streams_every_shard_then_switches_reads_then_writes() {
        let mut state = active_docs(3, 3, 2);
        state.apply(start_reshard(ReshardingDirection::Up)).unwrap();
        let docs = &state.collections["docs"];
        let r = docs.resharding.clone().unwrap();
        assert_eq!(r.shard, ShardId(3));
        assert_eq!(
            replicas(&state, "docs", 3),
            vec![(r.peer.0, ReplicaState::Resharding)]
        );
        let s = streams(&state);
        assert_eq!(
            s.iter().map(|t| t.shard.0).collect::<Vec<_>>(),
            vec![0, 1, 2],
            "every old shard streams once"
        );
        assert!(
            s.iter()
                .all(|t| t.to == r.peer && t.to_shard == Some(ShardId(3)))
        );
        assert_eq!(
            docs.ring(None, false),
            vec![ShardId(0), ShardId(1), ShardId(2)]
        );
        assert_eq!(
            docs.ring(None, true),
            vec![ShardId(0), ShardId(1), ShardId(2)]
        );
        assert_eq!(docs.target_ring().unwrap().len(), 4);
        assert_eq!(
            docs.source_ring().unwrap(),
            vec![ShardId(0), ShardId(1), ShardId(2)]
        );
        // Reads cannot switch before the points moved; ordinary transfers wait.
        let err = rejected(
            &mut state,
            docs_op(|c| ClusterOperation::CommitReadHashRing {
                collection: c,
                resharding: None,
            }),
        );
        assert!(
            matches!(err, ClusterError::ReshardingPointsMoving { .. }),
            "{err}"
        );
        let holder = replicas(&state, "docs", 0)[0].0;
        let free = (1..=3).find(|p| !replicas(&state, "docs", 0).iter().any(|(h, _)| h == p));
        if let Some(to) = free {
            let err = rejected(
                &mut state,
                ClusterOperation::StartTransfer {
                    collection: "docs".into(),
                    transfer: ShardTransfer {
                        shard: ShardId(0),
                        to_shard: None,
                        from: PeerId(holder),
                        to: PeerId(to),
                        sync: true,
                        method: TransferMethod::StreamRecords,
                        destination_was: None,
                        points_per_second: None,
                        bytes_per_second: None,
                        id: 9,
                        done: false,
                    },
                    max_per_peer: None,
                    destination_must_be: None,
                },
            );
            assert!(
                matches!(err, ClusterError::ReshardingRunning { .. }),
                "{err}"
            );
        }
        all_streams_done(&mut state);
        state
            .apply(docs_op(|c| ClusterOperation::CommitReadHashRing {
                collection: c,
                resharding: None,
            }))
            .unwrap();
        // Repeating a commit is harmless.
        state
            .apply(docs_op(|c| ClusterOperation::CommitReadHashRing {
                collection: c,
                resharding: None,
            }))
            .unwrap();
        let docs = &state.collections["docs"];
        assert_eq!(docs.ring(None, false).len(), 4);
        assert_eq!(docs.ring(None, true).len(), 3);
        state
            .apply(docs_op(|c| ClusterOperation::CommitWriteHashRing {
                collection: c,
                resharding: None,
            }))
            .unwrap();
        let err = rejected(
            &mut state,
            docs_op(|c| ClusterOperation::AbortResharding {
                collection: c,
                resharding: None,
            }),
        );
        assert!(
            matches!(err, ClusterError::ReshardingTooFarToAbort { .. }),
            "{err}"
        );
        state
            .apply(docs_op(|c| ClusterOperation::FinishResharding {
                collection: c,
                resharding: None,
            }))
            .unwrap();
        let docs = &state.collections["docs"];
        assert!(docs.resharding.is_none() && docs.transfers.is_empty());
        assert_eq!(
            docs.config.params.shard_number, 4,
            "the config reports the new shard"
        );
        assert_eq!(
            replicas(&state, "docs", 3),
            vec![(r.peer.0, ReplicaState::Active)]
        );
        assert_eq!(docs.replicating, BTreeSet::from([ShardId(3)]));
        // Copying the new shard to a second peer ends its replication.
        let to = (1..=3).find(|p| *p != r.peer.0).unwrap();
        state
            .apply(ClusterOperation::StartTransfer {
                collection: "docs".into(),
                transfer: ShardTransfer {
                    shard: ShardId(3),
                    to_shard: None,
                    from: r.peer,
                    to: PeerId(to),
                    sync: true,
                    method: TransferMethod::StreamRecords,
                    destination_was: None,
                    points_per_second: None,
                    bytes_per_second: None,
                    id: 10,
                    done: false,
                },
                max_per_peer: None,
                destination_must_be: None,
            })
            .unwrap();
        assert!(!state.collections["docs"].replicating.is_empty());
        state
            .apply(ClusterOperation::FinishTransfer {
                collection: "docs".into(),
                shard: ShardId(3),
                from: r.peer,
                to: PeerId(to),
                id: None,
            })
            .unwrap();
        assert!(state.collections["docs"].replicating.is_empty());
    }

    #[test]
    fn scale_down_streams_the_last_shard_to_every_replica_of_the_others() {
        let mut state = active_docs(3, 3, 2);
        state
            .apply(start_reshard(ReshardingDirection::Down))
            .unwrap();
        let r = state.collections["docs"].resharding.clone().unwrap();
        assert_eq!(r.shard, ShardId(2));
        assert!(
            replicas(&state, "docs", 2)
                .iter()
                .all(|(_, s)| *s == ReplicaState::ReshardingScaleDown)
        );
        let mut targets: Vec<(u32, u64)> = streams(&state)
            .iter()
            .map(|t| (t.to_shard.unwrap().0, t.to.0))
            .collect();
        targets.sort();
        let mut expected: Vec<(u32, u64)> = [0, 1]
            .iter()
            .flat_map(|s| {
                replicas(&state, "docs", *s)
                    .into_iter()
                    .map(move |(p, _)| (*s, p))
            })
            .collect();
        expected.sort();
        assert_eq!(targets, expected);
        assert!(
            streams(&state)
                .iter()
                .all(|t| t.shard == ShardId(2) && t.from == r.peer)
        );
        assert_eq!(
            state.collections["docs"].target_ring().unwrap(),
            vec![ShardId(0), ShardId(1)]
        );
        // Aborted after reads switched: the collection is as it was.
        let before = active_docs(3, 3, 2);
        all_streams_done(&mut state);
        state
            .apply(docs_op(|c| ClusterOperation::CommitReadHashRing {
                collection: c,
                resharding: None,
            }))
            .unwrap();
        assert_eq!(state.collections["docs"].ring(None, false).len(), 2);
        state
            .apply(docs_op(|c| ClusterOperation::AbortResharding {
                collection: c,
                resharding: None,
            }))
            .unwrap();
        assert_eq!(json_unversioned(&state), json_unversioned(&before));
    }

    #[test]
    fn a_finished_scale_down_reports_one_shard_fewer() {
        let mut state = active_docs(3, 3, 2);
        state
            .apply(start_reshard(ReshardingDirection::Down))
            .unwrap();
        all_streams_done(&mut state);
        for op in [
            docs_op(|c| ClusterOperation::CommitReadHashRing {
                collection: c,
                resharding: None,
            }),
            docs_op(|c| ClusterOperation::CommitWriteHashRing {
                collection: c,
                resharding: None,
            }),
            docs_op(|c| ClusterOperation::FinishResharding {
                collection: c,
                resharding: None,
            }),
        ] {
            state.apply(op).unwrap();
        }
        let docs = &state.collections["docs"];
        assert_eq!(docs.shards.len(), 2);
        assert_eq!(
            docs.config.params.shard_number, 2,
            "the config reports the drained shard gone"
        );
    }

    #[test]
    fn a_failed_stream_replica_aborts_a_resharding_that_can_still_go_back() {
        let mut state = active_docs(3, 3, 2);
        let before = json_unversioned(&state);
        state.apply(start_reshard(ReshardingDirection::Up)).unwrap();
        let source = streams(&state)[0].clone();
        state
            .apply(set_state(
                "docs",
                source.shard.0,
                source.from.0,
                ReplicaState::Dead,
            ))
            .unwrap();
        let docs = &state.collections["docs"];
        assert!(docs.resharding.is_none() && docs.transfers.is_empty());
        assert!(!docs.shards.contains_key(&ShardId(3)));
        // The same as before, but for the replica that failed.
        state
            .apply(set_state(
                "docs",
                source.shard.0,
                source.from.0,
                ReplicaState::Active,
            ))
            .unwrap();
        assert_eq!(json_unversioned(&state), before);
    }

    #[test]
    fn replica_state_predicates_match_the_design_table() {
        use ReplicaState::*;
        // (state, readable, takes updates, takes forced updates, active-like)
        let table = [
            (Initializing, false, true, true, false),
            (Active, true, true, true, true),
            (Listener, false, true, true, false),
            (Partial, false, true, true, false),
            (Recovery, false, false, true, false),
            (Resharding, false, true, true, false),
            (ReshardingScaleDown, true, true, true, true),
            (Dead, false, false, false, false),
        ];
        assert_eq!(table.len(), ReplicaState::ALL.len());
        for (state, readable, updates, forced, active) in table {
            assert_eq!(state.is_readable(), readable, "{state} readable");
            assert_eq!(state.takes_updates(), updates, "{state} takes updates");
            assert_eq!(state.takes_forced_updates(), forced, "{state} forced");
            assert_eq!(state.is_active_like(), active, "{state} active-like");
        }
    }

    #[test]
    fn serde_names_follow_qdrant() {
        let methods = [
            (TransferMethod::StreamRecords, "\"stream_records\""),
            (TransferMethod::Snapshot, "\"snapshot\""),
            (TransferMethod::WalDelta, "\"wal_delta\""),
            (
                TransferMethod::ReshardingStreamRecords,
                "\"resharding_stream_records\"",
            ),
        ];
        for (method, name) in methods {
            assert_eq!(serde_json::to_string(&method).unwrap(), name);
        }
        assert_eq!(
            serde_json::to_string(&ReplicaState::ReshardingScaleDown).unwrap(),
            "\"ReshardingScaleDown\""
        );
        let keys: Vec<ShardKey> = serde_json::from_str(r#"["tenant-a", 7]"#).unwrap();
        assert_eq!(
            keys,
            vec![ShardKey::Keyword("tenant-a".into()), ShardKey::Number(7)]
        );
        assert_eq!(serde_json::to_string(&keys).unwrap(), r#"["tenant-a",7]"#);
    }

    #[test]
    fn operations_and_state_round_trip_through_json() {
        let mut state = cluster(3);
        let op = create("docs", 2, 2);
        let encoded = serde_json::to_string(&op).unwrap();
        assert_eq!(
            serde_json::from_str::<ClusterOperation>(&encoded).unwrap(),
            op
        );
        state.apply(op).unwrap();
        let decoded: ClusterState = serde_json::from_str(&json(&state)).unwrap();
        assert_eq!(decoded, state);
    }

    #[test]
    fn placement_spreads_replicas_least_loaded_first_ties_by_peer_id() {
        let mut state = cluster(3);
        let response = state.apply(create("docs", 4, 2)).unwrap();
        let expected: BTreeMap<ShardId, Vec<PeerId>> = [
            (0, vec![1, 2]),
            (1, vec![3, 1]),
            (2, vec![2, 3]),
            (3, vec![1, 2]),
        ]
        .into_iter()
        .map(|(s, ps)| (ShardId(s), ps.into_iter().map(PeerId).collect()))
        .collect();
        assert_eq!(response, ClusterResponse::ShardsPlaced { shards: expected });
        assert_eq!(
            replicas(&state, "docs", 1),
            vec![
                (1, ReplicaState::Initializing),
                (3, ReplicaState::Initializing)
            ]
        );
        let load: Vec<usize> = state.replicas_per_peer().into_values().collect();
        assert_eq!(load, vec![3, 3, 2]);

        // The next collection starts on the least-loaded peer.
        let response = state.apply(create("more", 1, 1)).unwrap();
        assert_eq!(
            response,
            ClusterResponse::ShardsPlaced {
                shards: [(ShardId(0), vec![PeerId(3)])].into()
            }
        );
    }

    #[test]
    fn replication_factor_above_peer_count_places_one_replica_per_peer() {
        let mut state = cluster(2);
        state.apply(create("docs", 3, 5)).unwrap();
        for shard in 0..3 {
            assert_eq!(replicas(&state, "docs", shard).len(), 2);
        }
    }

    /// Named vectors are added (the unnamed form turns into a map with `""`) and removed; a
    /// duplicate or unknown name is refused and changes nothing.
    #[test]
    fn vector_names_are_added_and_removed() {
        use crate::collection_config::{VectorParams, VectorsConfig};
        let mut state = cluster(1);
        state.apply(create("docs", 1, 1)).unwrap();
        let add = |name: &str| ClusterOperation::CreateVectorName {
            collection: "docs".into(),
            name: name.into(),
            params: NewVector::Dense(VectorParams::new(3, crate::types::Distance::Dot, false)),
        };
        state.apply(add("extra")).unwrap();
        let VectorsConfig::Named(map) = &state.collections["docs"].config.params.vectors else {
            panic!("named config expected")
        };
        assert!(map.contains_key("") && map.contains_key("extra"));
        assert!(matches!(
            rejected(&mut state, add("extra")),
            ClusterError::InvalidConfig { .. }
        ));
        state
            .apply(ClusterOperation::CreateVectorName {
                collection: "docs".into(),
                name: "sparse".into(),
                params: NewVector::Sparse(Default::default()),
            })
            .unwrap();
        let delete = |name: &str| ClusterOperation::DeleteVectorName {
            collection: "docs".into(),
            name: name.into(),
        };
        state.apply(delete("sparse")).unwrap();
        state.apply(delete("extra")).unwrap();
        assert!(
            state.collections["docs"]
                .config
                .vector_kind("extra")
                .is_none()
        );
        assert!(matches!(
            rejected(&mut state, delete("extra")),
            ClusterError::InvalidConfig { .. }
        ));
    }

    /// Aliases change all or none, never shadow a collection, and go with their collection.
    #[test]
    fn aliases_change_atomically_and_follow_their_collection() {
        let mut state = cluster(1);
        state.apply(create("docs", 1, 1)).unwrap();
        let alias = |actions: Vec<AliasAction>| ClusterOperation::ChangeAliases { actions };
        let create_alias = |c: &str, a: &str| AliasAction::Create {
            collection: c.into(),
            alias: a.into(),
        };
        state
            .apply(alias(vec![create_alias("docs", "live")]))
            .unwrap();
        // One bad action rejects the whole request.
        let err = rejected(
            &mut state,
            alias(vec![
                create_alias("docs", "other"),
                AliasAction::Delete {
                    alias: "missing".into(),
                },
            ]),
        );
        assert!(matches!(err, ClusterError::UnknownAlias { .. }));
        assert!(!state.aliases.contains_key("other"));
        assert!(matches!(
            rejected(&mut state, alias(vec![create_alias("docs", "docs")])),
            ClusterError::CollectionExists { .. }
        ));
        assert!(matches!(
            rejected(&mut state, create("live", 1, 1)),
            ClusterError::AliasExists { .. }
        ));
        state
            .apply(alias(vec![AliasAction::Rename {
                old: "live".into(),
                new: "current".into(),
            }]))
            .unwrap();
        assert_eq!(
            state.aliases.get("current").map(String::as_str),
            Some("docs")
        );
        state
            .apply(ClusterOperation::DeleteCollection {
                name: "docs".into(),
            })
            .unwrap();
        assert!(state.aliases.is_empty());
    }

    #[test]
    fn create_collection_rejections_name_the_problem() {
        let mut empty = ClusterState::default();
        let err = rejected(&mut empty, create("docs", 1, 1));
        assert!(matches!(err, ClusterError::NoPeersForPlacement { .. }));
        assert!(err.to_string().contains("add a peer first"), "{err}");

        let mut state = cluster(2);
        state.apply(create("docs", 1, 1)).unwrap();
        let err = rejected(&mut state, create("docs", 1, 1));
        assert_eq!(err.to_string(), "collection `docs` already exists");

        let err = rejected(&mut state, create("a/b", 1, 1));
        assert!(matches!(err, ClusterError::InvalidCollectionName { .. }));
        let err = rejected(&mut state, create("zero", 0, 1));
        assert!(err.to_string().contains("shard_number"), "{err}");
    }

    #[test]
    fn unknown_things_are_rejected_with_their_names() {
        let mut state = cluster(2);
        state.apply(create("docs", 4, 1)).unwrap();
        let err = rejected(&mut state, drop_replica("docs", 3, 7));
        assert_eq!(
            err.to_string(),
            "shard 3 of collection `docs` has no replica on peer 7"
        );
        let err = rejected(&mut state, drop_replica("docs", 9, 1));
        assert_eq!(
            err.to_string(),
            "shard 9 of collection `docs` does not exist"
        );
        let err = rejected(&mut state, drop_replica("nope", 0, 1));
        assert_eq!(err.to_string(), "collection `nope` does not exist");
        let err = rejected(
            &mut state,
            ClusterOperation::RemovePeer {
                peer: PeerId(9),
                force: false,
            },
        );
        assert_eq!(err.to_string(), "peer 9 is not part of the cluster");
        let err = rejected(
            &mut state,
            ClusterOperation::DeleteCollection {
                name: "nope".into(),
            },
        );
        assert!(matches!(err, ClusterError::UnknownCollection { .. }));
    }

    #[test]
    fn add_peer_updates_a_known_peer_but_refuses_a_taken_uri() {
        let mut state = cluster(2);
        let moved = PeerInfo {
            uri: "http://new-home:6335".into(),
            name: "peer-1".into(),
        };
        state
            .apply(ClusterOperation::AddPeer {
                peer: PeerId(1),
                info: moved.clone(),
            })
            .unwrap();
        assert_eq!(state.peers[&PeerId(1)], moved);
        let err = rejected(
            &mut state,
            ClusterOperation::AddPeer {
                peer: PeerId(3),
                info: moved,
            },
        );
        assert!(matches!(
            err,
            ClusterError::PeerUriInUse {
                owner: PeerId(1),
                ..
            }
        ));
    }

    #[test]
    fn remove_peer_needs_force_and_never_drops_a_last_replica() {
        let mut state = cluster(3);
        state.apply(create("docs", 2, 2)).unwrap(); // shard 0: 1,2; shard 1: 3,1
        let err = rejected(
            &mut state,
            ClusterOperation::RemovePeer {
                peer: PeerId(1),
                force: false,
            },
        );
        assert!(
            err.to_string()
                .starts_with("peer 1 still holds 2 replica(s), e.g. shard 0 of collection `docs`"),
            "{err}"
        );
        state
            .apply(ClusterOperation::RemovePeer {
                peer: PeerId(1),
                force: true,
            })
            .unwrap();
        assert!(!state.peers.contains_key(&PeerId(1)));
        assert_eq!(
            replicas(&state, "docs", 0),
            vec![(2, ReplicaState::Initializing)]
        );
        // Peer 2 now holds shard 0's only replica: even force refuses.
        let err = rejected(
            &mut state,
            ClusterOperation::RemovePeer {
                peer: PeerId(2),
                force: true,
            },
        );
        assert!(matches!(err, ClusterError::LastReplica { .. }), "{err}");
        // A peer without replicas goes without force.
        state.apply(add_peer(4)).unwrap();
        state
            .apply(ClusterOperation::RemovePeer {
                peer: PeerId(4),
                force: false,
            })
            .unwrap();
    }

    #[test]
    fn the_last_active_replica_and_the_last_replica_stay() {
        let mut state = cluster(2);
        state.apply(create("docs", 1, 2)).unwrap();
        state
            .apply(set_state("docs", 0, 1, ReplicaState::Active))
            .unwrap();
        let err = rejected(&mut state, drop_replica("docs", 0, 1));
        assert!(
            matches!(err, ClusterError::LastActiveReplica { .. }),
            "{err}"
        );
        let err = rejected(&mut state, set_state("docs", 0, 1, ReplicaState::Dead));
        assert!(err.to_string().contains("last active replica"), "{err}");

        // With a second active replica, the first may go.
        state
            .apply(set_state("docs", 0, 2, ReplicaState::Active))
            .unwrap();
        state
            .apply(set_state("docs", 0, 1, ReplicaState::Dead))
            .unwrap();
        state.apply(drop_replica("docs", 0, 1)).unwrap();
        let err = rejected(&mut state, drop_replica("docs", 0, 2));
        assert!(matches!(err, ClusterError::LastReplica { .. }), "{err}");
    }

    #[test]
    fn set_replica_states_changes_all_or_none() {
        let mut state = cluster(3);
        state.apply(create("docs", 1, 3)).unwrap();
        for peer in 1..=3 {
            state
                .apply(set_state("docs", 0, peer, ReplicaState::Active))
                .unwrap();
        }
        let change = |peer, from_state, to| ReplicaStateChange {
            peer: PeerId(peer),
            state: to,
            from_state,
        };
        let op = |changes| ClusterOperation::SetReplicaStates {
            collection: "docs".into(),
            shard: ShardId(0),
            changes,
        };
        // The last compare fails: none of the changes is applied.
        let err = rejected(
            &mut state,
            op(vec![
                change(2, ReplicaState::Active, ReplicaState::Dead),
                change(3, ReplicaState::Partial, ReplicaState::Dead),
            ]),
        );
        assert!(
            matches!(err, ClusterError::ReplicaStateMismatch { .. }),
            "{err:?}"
        );
        state
            .apply(op(vec![
                change(2, ReplicaState::Active, ReplicaState::Dead),
                change(3, ReplicaState::Active, ReplicaState::Dead),
            ]))
            .unwrap();
        assert_eq!(
            replicas(&state, "docs", 0),
            vec![
                (1, ReplicaState::Active),
                (2, ReplicaState::Dead),
                (3, ReplicaState::Dead)
            ]
        );
    }

    #[test]
    fn set_replica_state_compares_before_it_sets() {
        let mut state = cluster(1);
        state.apply(create("docs", 1, 1)).unwrap();
        let cas = |from, to| ClusterOperation::SetReplicaState {
            collection: "docs".into(),
            shard: ShardId(0),
            peer: PeerId(1),
            state: to,
            from_state: Some(from),
        };
        let err = rejected(&mut state, cas(ReplicaState::Partial, ReplicaState::Active));
        assert_eq!(
            err,
            ClusterError::ReplicaStateMismatch {
                collection: "docs".into(),
                shard: ShardId(0),
                peer: PeerId(1),
                expected: ReplicaState::Partial,
                actual: ReplicaState::Initializing,
            }
        );
        state
            .apply(cas(ReplicaState::Initializing, ReplicaState::Active))
            .unwrap();
        assert_eq!(replicas(&state, "docs", 0), vec![(1, ReplicaState::Active)]);
    }

    #[test]
    fn add_replica_checks_peer_duplicates_and_readability() {
        let mut state = cluster(2);
        state.apply(create("docs", 1, 1)).unwrap(); // on peer 1
        let add = |peer, state| ClusterOperation::AddReplica {
            collection: "docs".into(),
            shard: ShardId(0),
            peer: PeerId(peer),
            state,
        };
        let err = rejected(&mut state, add(9, ReplicaState::Partial));
        assert_eq!(err, ClusterError::UnknownPeer { peer: PeerId(9) });
        let err = rejected(&mut state, add(1, ReplicaState::Partial));
        assert!(matches!(err, ClusterError::ReplicaExists { .. }), "{err}");
        let err = rejected(&mut state, add(2, ReplicaState::Active));
        assert!(
            matches!(err, ClusterError::NewReplicaReadable { .. }),
            "{err}"
        );
        state.apply(add(2, ReplicaState::Partial)).unwrap();
        assert_eq!(
            replicas(&state, "docs", 0),
            vec![(1, ReplicaState::Initializing), (2, ReplicaState::Partial)]
        );
    }

    fn update(f: impl FnOnce(&mut crate::collection_config::CollectionUpdate)) -> ClusterOperation {
        let mut update = crate::collection_config::CollectionUpdate::default();
        f(&mut update);
        ClusterOperation::UpdateCollection {
            collection: "docs".into(),
            update: Box::new(update),
        }
    }

    fn replication_factor(rf: u32) -> ClusterOperation {
        update(|u| {
            u.params = Some(crate::collection_config::CollectionParamsDiff {
                replication_factor: Some(rf),
                ..Default::default()
            })
        })
    }

    #[test]
    fn raising_the_replication_factor_marks_every_short_shard_for_copying() {
        let mut state = active_docs(3, 2, 1);
        state.apply(replication_factor(2)).unwrap();
        let docs = &state.collections["docs"];
        assert_eq!(docs.config.params.replication_factor, 2);
        assert_eq!(docs.replicating, BTreeSet::from([ShardId(0), ShardId(1)]));
        assert!(docs.trimming.is_empty());
        // Shards already at the factor are not copied: back to 1 clears the marks.
        state.apply(replication_factor(1)).unwrap();
        let docs = &state.collections["docs"];
        assert!(docs.replicating.is_empty() && docs.trimming.is_empty());
    }

    #[test]
    fn lowering_the_replication_factor_drops_surplus_replicas_keeping_active_ones() {
        let mut state = active_docs(3, 3, 3);
        // One replica of shard 0 is Dead: it goes first.
        state
            .apply(set_state("docs", 0, 2, ReplicaState::Dead))
            .unwrap();
        // A transfer into shard 1 holds its trimming back until it ends.
        let transfer = ShardTransfer {
            shard: ShardId(1),
            to_shard: None,
            from: PeerId(1),
            to: PeerId(2),
            sync: true,
            method: TransferMethod::StreamRecords,
            destination_was: None,
            points_per_second: None,
            bytes_per_second: None,
            id: 7,
            done: false,
        };
        state
            .collections
            .get_mut("docs")
            .unwrap()
            .transfers
            .push(transfer);
        state.apply(replication_factor(1)).unwrap();
        let docs = &state.collections["docs"];
        assert_eq!(docs.trimming, BTreeSet::from([ShardId(1)]));
        let zero = replicas(&state, "docs", 0);
        assert_eq!(zero.len(), 1);
        assert_eq!(zero[0].1, ReplicaState::Active, "{zero:?}");
        assert_eq!(replicas(&state, "docs", 1).len(), 3);
        assert_eq!(replicas(&state, "docs", 2).len(), 1);
        // Every peer computes the same choice from the same state.
        let mut again = active_docs(3, 3, 3);
        again
            .apply(set_state("docs", 0, 2, ReplicaState::Dead))
            .unwrap();
        again.collections.get_mut("docs").unwrap().transfers =
            state.collections["docs"].transfers.clone();
        again.apply(replication_factor(1)).unwrap();
        assert_eq!(json(&again), json(&state));
        // The next operation after the transfer ends trims shard 1 too.
        state
            .apply(ClusterOperation::AbortTransfer {
                collection: "docs".into(),
                shard: ShardId(1),
                from: PeerId(1),
                to: PeerId(2),
                id: None,
            })
            .unwrap();
        let docs = &state.collections["docs"];
        assert!(docs.trimming.is_empty());
        assert_eq!(replicas(&state, "docs", 1).len(), 1);
        // Replicas added by hand beyond the factor later are left alone.
        let free = (1..=3)
            .find(|p| replicas(&state, "docs", 2).iter().all(|(q, _)| q != p))
            .unwrap();
        state
            .apply(ClusterOperation::AddReplica {
                collection: "docs".into(),
                shard: ShardId(2),
                peer: PeerId(free),
                state: ReplicaState::Listener,
            })
            .unwrap();
        let before = replicas(&state, "docs", 2);
        state
            .apply(update(|u| u.metadata = Some(Default::default())))
            .unwrap();
        assert_eq!(replicas(&state, "docs", 2), before);
    }

    #[test]
    fn invalid_collection_updates_change_nothing() {
        let mut state = active_docs(2, 1, 1);
        let err = rejected(&mut state, replication_factor(0));
        assert!(matches!(err, ClusterError::InvalidConfig { .. }), "{err}");
        let err = rejected(
            &mut state,
            update(|u| {
                u.vectors = Some(BTreeMap::from([(
                    "nope".to_string(),
                    crate::collection_config::VectorParamsDiff::default(),
                )]))
            }),
        );
        assert!(err.to_string().contains("nope"), "{err}");
        let err = rejected(
            &mut state,
            update(|u| u.quantization_config = Some(serde_json::json!(3))),
        );
        assert!(err.to_string().contains("quantization"), "{err}");
        let err = rejected(&mut state, {
            let mut op = replication_factor(2);
            if let ClusterOperation::UpdateCollection { collection, .. } = &mut op {
                *collection = "missing".into();
            }
            op
        });
        assert!(
            matches!(err, ClusterError::UnknownCollection { .. }),
            "{err}"
        );
    }

    fn transfer_op(from: u64, to: u64, must_be: Option<ReplicaState>) -> ClusterOperation {
        ClusterOperation::StartTransfer {
            collection: "docs".into(),
            transfer: ShardTransfer {
                shard: ShardId(0),
                to_shard: None,
                from: PeerId(from),
                to: PeerId(to),
                sync: true,
                method: TransferMethod::StreamRecords,
                destination_was: None,
                points_per_second: None,
                bytes_per_second: None,
                id: 3,
                done: false,
            },
            max_per_peer: None,
            destination_must_be: must_be,
        }
    }

    #[test]
    fn shard_keys_may_start_active_but_in_no_other_state() {
        let mut state = cluster(2);
        state
            .apply(ClusterOperation::CreateCollection {
                name: "docs".into(),
                config: config(1, 2, true),
                uuid: 1,
            })
            .unwrap();
        let key = |k: u64, initial_state| ClusterOperation::CreateShardKey {
            collection: "docs".into(),
            key: ShardKey::Number(k),
            shard_number: None,
            replication_factor: None,
            placement: None,
            initial_state,
        };
        let err = rejected(&mut state, key(1, Some(ReplicaState::Partial)));
        assert!(err.to_string().contains("initial_state"), "{err}");
        state.apply(key(1, Some(ReplicaState::Active))).unwrap();
        state.apply(key(2, None)).unwrap();
        let by_key = |k: u64| -> Vec<ReplicaState> {
            state.collections["docs"]
                .shards
                .values()
                .filter(|s| s.shard_key == Some(ShardKey::Number(k)))
                .flat_map(|s| s.replicas.values().copied())
                .collect()
        };
        assert_eq!(by_key(1), vec![ReplicaState::Active; 2]);
        assert_eq!(by_key(2), vec![ReplicaState::Initializing; 2]);
    }

    #[test]
    fn layout_versions_move_exactly_when_a_shards_write_routing_changes() {
        let versions = |state: &ClusterState| -> Vec<u64> {
            state.collections["docs"]
                .shards
                .values()
                .map(|s| s.version)
                .collect()
        };
        let mut state = cluster(3);
        state.apply(create("docs", 2, 1)).unwrap();
        let created = versions(&state);
        assert!(created.iter().all(|v| *v > 0), "{created:?}");
        // A configuration change routes nothing differently.
        state
            .apply(update(|u| u.metadata = Some(Default::default())))
            .unwrap();
        assert_eq!(versions(&state), created);
        // A state change of shard 0's replica moves shard 0 only, and only forward.
        let peer = replicas(&state, "docs", 0)[0].0;
        state
            .apply(set_state("docs", 0, peer, ReplicaState::Active))
            .unwrap();
        let after = versions(&state);
        assert!(after[0] > created[0] && after[1] == created[1], "{after:?}");
        // A transfer out of shard 0 moves it at its start and again at its end.
        let to = (1..=3).find(|p| *p != peer).unwrap();
        state.apply(transfer_op(peer, to, None)).unwrap();
        let started = versions(&state);
        assert!(started[0] > after[0] && started[1] == after[1]);
        state
            .apply(ClusterOperation::FinishTransfer {
                collection: "docs".into(),
                shard: ShardId(0),
                from: PeerId(peer),
                to: PeerId(to),
                id: None,
            })
            .unwrap();
        assert!(versions(&state)[0] > started[0]);
        // A rejected operation changes no version.
        rejected(&mut state, drop_replica("docs", 1, 99));
    }

    #[test]
    fn dropping_a_transfer_destination_aborts_the_transfer_in_the_same_operation() {
        let mut state = active_docs(3, 1, 2);
        let held: Vec<u64> = replicas(&state, "docs", 0)
            .iter()
            .map(|(p, _)| *p)
            .collect();
        let (a, b) = (held[0], held[1]);
        let c = (1..=3).find(|p| !held.contains(p)).unwrap();
        // A replication into a new replica: dropping it aborts and the replica is gone.
        state.apply(transfer_op(a, c, None)).unwrap();
        state.apply(drop_replica("docs", 0, c)).unwrap();
        assert!(state.collections["docs"].transfers.is_empty());
        assert_eq!(
            replicas(&state, "docs", 0),
            vec![(a, ReplicaState::Active), (b, ReplicaState::Active)]
        );
        // A recovery of a Dead replica: the abort restores Dead, then the replica is dropped.
        state
            .apply(set_state("docs", 0, b, ReplicaState::Dead))
            .unwrap();
        state
            .apply(transfer_op(a, b, Some(ReplicaState::Dead)))
            .unwrap();
        state.apply(drop_replica("docs", 0, b)).unwrap();
        assert!(state.collections["docs"].transfers.is_empty());
        assert_eq!(replicas(&state, "docs", 0), vec![(a, ReplicaState::Active)]);
        // The dropped peer's recovery, decided on its stale view, is refused: the replica is
        // not re-created.
        let err = rejected(&mut state, transfer_op(a, b, Some(ReplicaState::Dead)));
        assert!(matches!(err, ClusterError::NoReplicaOnPeer { .. }), "{err}");
        // Nor does it take over a replica in another state.
        state.apply(transfer_op(a, b, None)).unwrap();
        state
            .apply(ClusterOperation::FinishTransfer {
                collection: "docs".into(),
                shard: ShardId(0),
                from: PeerId(a),
                to: PeerId(b),
                id: None,
            })
            .unwrap();
        let err = rejected(&mut state, transfer_op(a, b, Some(ReplicaState::Dead)));
        assert!(
            matches!(err, ClusterError::ReplicaStateMismatch { .. }),
            "{err}"
        );
    }

    #[test]
    fn replicas_in_a_transfer_or_resharding_cannot_be_dropped() {
        let mut state = cluster(2);
        state.apply(create("docs", 2, 2)).unwrap();
        let docs = state.collections.get_mut("docs").unwrap();
        docs.transfers.push(ShardTransfer {
            shard: ShardId(0),
            to_shard: None,
            from: PeerId(1),
            to: PeerId(2),
            sync: true,
            method: TransferMethod::StreamRecords,
            destination_was: None,
            points_per_second: None,
            bytes_per_second: None,
            id: 1,
            done: false,
        });
        docs.resharding = Some(ReshardingState {
            direction: ReshardingDirection::Up,
            shard: ShardId(1),
            peer: PeerId(2),
            shard_key: None,
            stage: ReshardingStage::MigratingPoints,
            manual: false,
            id: 0,
        });
        // The source of a transfer stays; dropping its destination aborts it (below).
        let err = rejected(&mut state, drop_replica("docs", 0, 1));
        assert!(
            matches!(err, ClusterError::ReplicaInTransfer { .. }),
            "{err}"
        );
        let err = rejected(&mut state, drop_replica("docs", 1, 1));
        assert!(
            matches!(err, ClusterError::ShardInResharding { .. }),
            "{err}"
        );
        let err = rejected(
            &mut state,
            ClusterOperation::RemovePeer {
                peer: PeerId(2),
                force: true,
            },
        );
        assert!(
            matches!(err, ClusterError::PeerDrivesResharding { .. }),
            "{err}"
        );
        assert!(ReshardingStage::ReadHashRingCommitted.can_abort());
        assert!(!ReshardingStage::WriteHashRingCommitted.can_abort());
    }

    #[test]
    fn shard_keys_create_and_drop_their_own_shards() {
        let mut state = cluster(3);
        let err = rejected(
            &mut state,
            ClusterOperation::CreateShardKey {
                collection: "docs".into(),
                key: ShardKey::Number(1),
                shard_number: None,
                replication_factor: None,
                placement: None,
                initial_state: None,
            },
        );
        assert!(matches!(err, ClusterError::UnknownCollection { .. }));
        state.apply(create("auto", 1, 1)).unwrap();
        let err = rejected(
            &mut state,
            ClusterOperation::CreateShardKey {
                collection: "auto".into(),
                key: ShardKey::Number(1),
                shard_number: None,
                replication_factor: None,
                placement: None,
                initial_state: None,
            },
        );
        assert!(matches!(err, ClusterError::NotCustomSharded { .. }));

        let response = state
            .apply(ClusterOperation::CreateCollection {
                name: "docs".into(),
                config: config(2, 1, true),
                uuid: 1,
            })
            .unwrap();
        assert_eq!(
            response,
            ClusterResponse::ShardsPlaced {
                shards: BTreeMap::new()
            }
        );
        let tenant = ShardKey::Keyword("tenant".into());
        let create_key =
            |key: ShardKey, placement: Option<Vec<PeerId>>| ClusterOperation::CreateShardKey {
                collection: "docs".into(),
                key,
                shard_number: None,
                replication_factor: Some(2),
                placement,
                initial_state: None,
            };
        let response = state
            .apply(create_key(tenant.clone(), Some(vec![PeerId(3), PeerId(2)])))
            .unwrap();
        let ClusterResponse::ShardsPlaced { shards } = response else {
            panic!("expected placed shards");
        };
        assert_eq!(
            shards.keys().copied().collect::<Vec<_>>(),
            vec![ShardId(0), ShardId(1)]
        );
        for (id, peers) in &shards {
            let mut peers = peers.clone();
            peers.sort();
            assert_eq!(peers, vec![PeerId(2), PeerId(3)], "shard {id}");
            assert_eq!(
                state.collections["docs"].shards[id].shard_key,
                Some(tenant.clone())
            );
        }
        let err = rejected(&mut state, create_key(tenant.clone(), None));
        assert!(matches!(err, ClusterError::ShardKeyExists { .. }));
        let err = rejected(
            &mut state,
            create_key(ShardKey::Number(5), Some(vec![PeerId(1), PeerId(1)])),
        );
        assert!(err.to_string().contains("twice"), "{err}");
        let err = rejected(
            &mut state,
            create_key(ShardKey::Number(5), Some(vec![PeerId(8)])),
        );
        assert_eq!(err, ClusterError::UnknownPeer { peer: PeerId(8) });

        // A second key's shards get the next ids.
        state.apply(create_key(ShardKey::Number(5), None)).unwrap();
        assert_eq!(state.collections["docs"].shards.len(), 4);
        state
            .apply(ClusterOperation::DropShardKey {
                collection: "docs".into(),
                key: tenant.clone(),
            })
            .unwrap();
        let left: Vec<u32> = state.collections["docs"]
            .shards
            .keys()
            .map(|s| s.0)
            .collect();
        assert_eq!(left, vec![2, 3]);
        let err = rejected(
            &mut state,
            ClusterOperation::DropShardKey {
                collection: "docs".into(),
                key: tenant,
            },
        );
        assert!(matches!(err, ClusterError::UnknownShardKey { .. }));
    }

    #[test]
    fn validate_plans_on_a_copy() {
        let mut state = cluster(2);
        let before = json(&state);
        let op = create("docs", 2, 2);
        let planned = state.validate(&op).unwrap();
        assert_eq!(before, json(&state), "validate changed the state");
        assert_eq!(state.apply(op).unwrap(), planned);
        assert_eq!(
            state.validate(&drop_replica("docs", 0, 9)),
            Err(ClusterError::NoReplicaOnPeer {
                collection: "docs".into(),
                shard: ShardId(0),
                peer: PeerId(9)
            })
        );
    }

    // ---- property tests ----

    const NAMES: [&str; 3] = ["a", "b", "c"];

    fn peer_id() -> impl Strategy<Value = PeerId> {
        (1u64..=5).prop_map(PeerId)
    }

    fn shard_id() -> impl Strategy<Value = ShardId> {
        (0u32..6).prop_map(ShardId)
    }

    fn name() -> impl Strategy<Value = String> {
        prop::sample::select(&NAMES[..]).prop_map(String::from)
    }

    fn replica_state() -> impl Strategy<Value = ReplicaState> {
        prop::sample::select(&ReplicaState::ALL[..])
    }

    fn shard_key() -> impl Strategy<Value = ShardKey> {
        prop_oneof![
            (0u64..3).prop_map(ShardKey::Number),
            prop::sample::select(vec!["x", "y"]).prop_map(|k| ShardKey::Keyword(k.into())),
        ]
    }

    fn operation() -> impl Strategy<Value = ClusterOperation> {
        prop_oneof![
            3 => peer_id().prop_map(|p| add_peer(p.0)),
            1 => (peer_id(), any::<bool>())
                .prop_map(|(peer, force)| ClusterOperation::RemovePeer { peer, force }),
            3 => (name(), 1u32..5, 1u32..5, prop::bool::weighted(0.3)).prop_map(
                |(name, shards, rf, custom)| ClusterOperation::CreateCollection {
                    name,
                    config: config(shards, rf, custom),
                    uuid: 1,
                }
            ),
            1 => name().prop_map(|name| ClusterOperation::DeleteCollection { name }),
            6 => (name(), shard_id(), peer_id(), replica_state(), prop::option::of(replica_state()))
                .prop_map(|(collection, shard, peer, state, from_state)| {
                    ClusterOperation::SetReplicaState { collection, shard, peer, state, from_state }
                }),
            3 => (name(), shard_id(), peer_id(), replica_state()).prop_map(
                |(collection, shard, peer, state)| ClusterOperation::AddReplica {
                    collection, shard, peer, state,
                }
            ),
            3 => (name(), shard_id(), peer_id()).prop_map(|(collection, shard, peer)| {
                ClusterOperation::DropReplica { collection, shard, peer }
            }),
            2 => (
                name(),
                shard_key(),
                prop::option::of(0u32..4),
                prop::option::of(0u32..4),
                prop::option::of(prop::collection::vec(peer_id(), 0..4)),
            )
                .prop_map(|(collection, key, shard_number, replication_factor, placement)| {
                    ClusterOperation::CreateShardKey {
                        collection, key, shard_number, replication_factor, placement,
                        initial_state: None,
                    }
                }),
            1 => (name(), shard_key())
                .prop_map(|(collection, key)| ClusterOperation::DropShardKey { collection, key }),
        ]
    }

    /// Invariants that hold after every operation, accepted or not.
    fn check_invariants(state: &ClusterState) -> Result<(), TestCaseError> {
        for (name, collection) in &state.collections {
            if let Some(r) = &collection.resharding {
                let shard = collection.shards.get(&r.shard);
                prop_assert!(shard.is_some(), "the resharded shard of `{}` exists", name);
                let states: Vec<ReplicaState> = shard
                    .map(|s| s.replicas.values().copied().collect())
                    .unwrap_or_default();
                if r.direction == ReshardingDirection::Up {
                    prop_assert!(
                        states.contains(&ReplicaState::Resharding),
                        "a shard being added has a Resharding replica: {:?}",
                        states
                    );
                }
                let key = r.shard_key.as_ref();
                let (read, write) = (collection.ring(key, false), collection.ring(key, true));
                prop_assert!(
                    read.len().abs_diff(write.len()) <= 1,
                    "read and write rings differ by at most the resharded shard"
                );
                prop_assert!(!read.is_empty() && !write.is_empty());
            }
            for id in &collection.replicating {
                prop_assert!(
                    collection.shards.contains_key(id),
                    "replicating a shard that exists"
                );
            }
            let mut in_transfer = BTreeSet::new();
            for t in collection.transfers.iter().filter(|t| t.to_shard.is_some()) {
                let r = collection.resharding.as_ref();
                prop_assert!(r.is_some(), "a resharding stream without a resharding");
                let r = r.expect("checked");
                prop_assert_eq!(t.method, TransferMethod::ReshardingStreamRecords);
                match r.direction {
                    ReshardingDirection::Up => {
                        prop_assert_eq!(t.to_shard, Some(r.shard));
                        prop_assert_eq!(t.to, r.peer);
                    }
                    ReshardingDirection::Down => {
                        prop_assert_eq!(t.shard, r.shard);
                        prop_assert_eq!(t.from, r.peer);
                    }
                }
                if r.stage >= ReshardingStage::ReadHashRingCommitted {
                    prop_assert!(t.done, "reads switched before every point moved");
                }
                if r.stage.can_abort() {
                    let source = collection.shards[&t.shard].replicas.get(&t.from).copied();
                    prop_assert!(
                        source.is_some_and(|s| s.is_active_like()),
                        "a resharding stream reads an active replica: {:?}",
                        source
                    );
                }
            }
            for t in collection.transfers.iter().filter(|t| t.to_shard.is_none()) {
                prop_assert!(in_transfer.insert(t.shard), "two transfers of one shard");
                prop_assert_ne!(t.from, t.to);
                let replicas = &collection.shards[&t.shard].replicas;
                prop_assert!(
                    replicas.get(&t.from).is_some_and(|s| s.is_active_like()),
                    "a transfer's source holds an active replica"
                );
                prop_assert_eq!(
                    replicas.get(&t.to).copied(),
                    Some(t.method.destination_state()),
                    "a transfer's destination is in its method's state"
                );
            }
            for (id, shard) in &collection.shards {
                prop_assert!(
                    !shard.replicas.is_empty(),
                    "shard {id} of `{name}` has no replica"
                );
                for peer in shard.replicas.keys() {
                    prop_assert!(
                        state.peers.contains_key(peer),
                        "shard {id} of `{name}` has a replica on unknown peer {peer}"
                    );
                }
                prop_assert_eq!(
                    shard.shard_key.is_some(),
                    collection.is_custom_sharded(),
                    "shard {} of `{}`: shard key must match the sharding method",
                    id,
                    name
                );
            }
        }
        Ok(())
    }

    fn active_shards(state: &ClusterState) -> BTreeSet<(String, ShardId)> {
        state
            .collections
            .iter()
            .flat_map(|(name, c)| {
                c.shards
                    .iter()
                    .filter(|(_, s)| s.active_like_count() > 0)
                    .map(move |(id, _)| (name.clone(), *id))
            })
            .collect()
    }

    /// A step of a random sequence: either a fully random operation (mostly rejected, which
    /// exercises the error paths) or one aimed at what exists at that moment (mostly accepted,
    /// which exercises the state changes).
    #[derive(Debug, Clone)]
    enum Step {
        Random(ClusterOperation),
        Aimed {
            kind: u8,
            pick: [usize; 3],
            state: ReplicaState,
            compare: bool,
        },
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            1 => operation().prop_map(Step::Random),
            1 => (0u8..15, any::<[usize; 3]>(), replica_state(), any::<bool>()).prop_map(
                |(kind, pick, state, compare)| Step::Aimed { kind, pick, state, compare }
            ),
        ]
    }

    fn aim(step: Step, state: &ClusterState) -> ClusterOperation {
        let (kind, pick, new_state, compare) = match step {
            Step::Random(op) => return op,
            Step::Aimed {
                kind,
                pick,
                state,
                compare,
            } => (kind, pick, state, compare),
        };
        let nth = |n: usize, len: usize| if len == 0 { 0 } else { n % len };
        let peers: Vec<PeerId> = state.peers.keys().copied().collect();
        let any_peer = peers
            .get(nth(pick[2], peers.len()))
            .copied()
            .unwrap_or(PeerId(1));
        // Shard-key operations only make sense on custom-sharded collections.
        let names: Vec<&String> = state
            .collections
            .iter()
            .filter(|(_, c)| !matches!(kind, 3 | 5) || c.is_custom_sharded())
            .map(|(n, _)| n)
            .collect();
        let collection = names
            .get(nth(pick[0], names.len()))
            .map_or_else(|| "a".to_string(), |n| (*n).clone());
        let shards: Vec<(&ShardId, &ShardMeta)> = state
            .collections
            .get(&collection)
            .map(|c| c.shards.iter().collect())
            .unwrap_or_default();
        let (shard, meta) = shards
            .get(nth(pick[1], shards.len()))
            .map_or((ShardId(0), None), |(id, meta)| (**id, Some(*meta)));
        let holders: Vec<(PeerId, ReplicaState)> = meta
            .map(|m| m.replicas.iter().map(|(p, s)| (*p, *s)).collect())
            .unwrap_or_default();
        let (holder, holder_state) = holders
            .get(nth(pick[2], holders.len()))
            .copied()
            .unwrap_or((any_peer, ReplicaState::Active));
        match kind {
            0 => ClusterOperation::SetReplicaState {
                collection,
                shard,
                peer: holder,
                state: new_state,
                from_state: compare.then_some(holder_state),
            },
            1 => {
                let free: Vec<PeerId> = peers
                    .iter()
                    .filter(|p| !holders.iter().any(|(h, _)| h == *p))
                    .copied()
                    .collect();
                ClusterOperation::AddReplica {
                    collection,
                    shard,
                    peer: free
                        .get(nth(pick[2], free.len()))
                        .copied()
                        .unwrap_or(any_peer),
                    state: new_state,
                }
            }
            2 => ClusterOperation::DropReplica {
                collection,
                shard,
                peer: holder,
            },
            3 => ClusterOperation::DropShardKey {
                collection,
                key: meta
                    .and_then(|m| m.shard_key.clone())
                    .unwrap_or(ShardKey::Number(0)),
            },
            4 => ClusterOperation::RemovePeer {
                peer: any_peer,
                force: compare,
            },
            6 => ClusterOperation::StartTransfer {
                collection,
                transfer: ShardTransfer {
                    shard,
                    to_shard: None,
                    from: holder,
                    to: any_peer,
                    sync: compare,
                    method: if pick[0] % 2 == 0 {
                        TransferMethod::StreamRecords
                    } else {
                        TransferMethod::WalDelta
                    },
                    destination_was: None,
                    points_per_second: None,
                    bytes_per_second: None,
                    id: pick[1] as u64,
                    done: false,
                },
                max_per_peer: Some(2),
                destination_must_be: None,
            },
            9 => ClusterOperation::StartResharding {
                collection,
                direction: if compare {
                    ReshardingDirection::Up
                } else {
                    ReshardingDirection::Down
                },
                peer: (pick[0] % 2 == 0).then_some(any_peer),
                shard_key: meta.and_then(|m| m.shard_key.clone()),
                manual: pick[1] % 2 == 0,
                id: pick[0] as u64,
            },
            14 => {
                let streams: Vec<ShardTransfer> = state
                    .collections
                    .get(&collection)
                    .map(|c| {
                        c.transfers
                            .iter()
                            .filter(|t| t.to_shard.is_some())
                            .cloned()
                            .collect()
                    })
                    .unwrap_or_default();
                match streams.get(nth(pick[2], streams.len())) {
                    Some(t) => ClusterOperation::ReshardingStreamDone {
                        collection,
                        shard: t.shard,
                        to_shard: t.to_shard.unwrap_or(t.shard),
                        to: t.to,
                        id: None,
                    },
                    None => ClusterOperation::ReshardingStreamDone {
                        collection,
                        shard,
                        to_shard: shard,
                        to: holder,
                        id: None,
                    },
                }
            }
            10 => ClusterOperation::CommitReadHashRing {
                collection,
                resharding: None,
            },
            11 => ClusterOperation::CommitWriteHashRing {
                collection,
                resharding: None,
            },
            12 => ClusterOperation::FinishResharding {
                collection,
                resharding: None,
            },
            13 => ClusterOperation::AbortResharding {
                collection,
                resharding: None,
            },
            7 | 8 => {
                let running = state
                    .collections
                    .get(&collection)
                    .and_then(|c| c.transfers.first().cloned());
                let (shard, from, to) =
                    running.map_or((shard, holder, any_peer), |t| (t.shard, t.from, t.to));
                if kind == 7 {
                    ClusterOperation::FinishTransfer {
                        collection,
                        shard,
                        from,
                        to,
                        id: None,
                    }
                } else {
                    ClusterOperation::AbortTransfer {
                        collection,
                        shard,
                        from,
                        to,
                        id: None,
                    }
                }
            }
            _ => ClusterOperation::CreateShardKey {
                collection,
                key: ShardKey::Number(pick[1] as u64 % 4),
                shard_number: Some(1 + (pick[0] % 3) as u32),
                replication_factor: None,
                placement: None,
                initial_state: None,
            },
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn random_operation_sequences_keep_the_invariants(
            steps in prop::collection::vec(step(), 1..80)
        ) {
            let mut state = ClusterState::default();
            for step in steps {
                let op = aim(step, &state);
                let before = json(&state);
                let active_before = active_shards(&state);
                let planned = state.validate(&op);
                prop_assert_eq!(&before, &json(&state), "validate changed the state");
                let forced_removal = matches!(op, ClusterOperation::RemovePeer { force: true, .. });
                let result = state.apply(op.clone());
                prop_assert_eq!(&planned, &result, "validate and apply disagree on {:?}", op);
                match &result {
                    Err(_) => prop_assert_eq!(&before, &json(&state), "rejected {:?} changed the state", op),
                    Ok(ClusterResponse::ShardsPlaced { shards }) => {
                        for peers in shards.values() {
                            let distinct: BTreeSet<_> = peers.iter().collect();
                            prop_assert_eq!(distinct.len(), peers.len(), "two replicas on one peer");
                            prop_assert!(!peers.is_empty());
                        }
                    }
                    Ok(ClusterResponse::Done) => {}
                }
                check_invariants(&state)?;
                // A shard that had a complete copy keeps one, unless a peer was forcibly
                // removed (its disk is gone) or the shard itself was deleted.
                if !forced_removal {
                    let active_after = active_shards(&state);
                    for (name, shard) in active_before {
                        let exists = state
                            .collections
                            .get(&name)
                            .is_some_and(|c| c.shards.contains_key(&shard));
                        prop_assert!(
                            !exists || active_after.contains(&(name.clone(), shard)),
                            "shard {} of `{}` lost its last active replica through {:?}",
                            shard, name, op
                        );
                    }
                }
            }
        }

        #[test]
        fn placement_on_a_fixed_peer_set_is_even(
            peers in 1u64..=6,
            collections in prop::collection::vec((1u32..=8, 1u32..=7), 1..8),
        ) {
            let mut state = cluster(peers);
            for (i, (shards, rf)) in collections.into_iter().enumerate() {
                state.apply(create(&format!("c{i}"), shards, rf)).unwrap();
                let load = state.replicas_per_peer();
                let max = load.values().max().copied().unwrap_or(0);
                let min = load.values().min().copied().unwrap_or(0);
                prop_assert!(max - min <= 1, "uneven placement: {:?}", load);
                let expected = (rf as usize).min(peers as usize);
                for shard in state.collections[&format!("c{i}")].shards.values() {
                    prop_assert_eq!(shard.replicas.len(), expected);
                }
            }
        }
    }
}
