//! Reads and writes addressed to one shard, in a form that can travel to the peer holding a
//! replica of it: every vector is already checked and normalised, every filter parsed. The
//! same code runs them locally and on a remote peer, so a forwarded read answers exactly what a
//! local one would.

use std::collections::HashSet;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::cluster::CollectionError;
use crate::index::filter::Filter;
use crate::index::filter::HasVector;
use crate::index::payload_path::JsonPath;
use crate::index::payload_selector::WithVector;
use crate::index::quantization::QuantizationSearch;
use crate::shard::clock::{ClockMap, ClockTag};
use crate::shard::local_shard::{
    LocalShard, PayloadRead, PointPredicate, QueryVector, Record, ScoredRecord, Scoring,
    SearchQuery,
};
use crate::shard::local_shard::{Stamp, UpdateOutcome};
use crate::shard::operations::{ShardOperation, UpdateRequest};
use crate::types::{Distance, PointId, VectorData, VectorRef};

/// The RPC of the p2p `ShardService` that carries a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardCallKind {
    Update,
    Search,
    Scroll,
    Count,
    Retrieve,
    SparseStats,
    OrderBy,
    Facet,
    Recovery,
}

/// A request that one shard replica answers, on this peer or on another: it runs on a local
/// replica, or travels as JSON to the peer that holds one and runs there.
pub trait ShardRequest: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {
    type Answer: Serialize + DeserializeOwned + Send + 'static;
    const CALL: ShardCallKind;
    /// Whether the request changes the shard (then every replica that takes updates gets it).
    const WRITES: bool = false;
    fn run_on(&self, shard: &LocalShard) -> Result<Self::Answer, CollectionError>;
    /// The ownership filter of a read (see [`Ownership`]); `None` for requests without one.
    fn owner_mut(&mut self) -> Option<&mut Option<Ownership>> {
        None
    }
    /// The call's body as it travels (JSON of the request itself, but for updates, which
    /// travel as an [`UpdateCall`]).
    fn encode_body(&self) -> serde_json::Result<Vec<u8>> {
        serde_json::to_vec(self)
    }
}

/// The points one shard owns under a hash ring: those the ring hashes onto `shard`. A read
/// carrying one answers only for owned points, so that points a resharding has copied but not
/// yet removed are never counted by two shards.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ownership {
    /// The ring's shards, in ring order.
    pub ring: Vec<u32>,
    pub shard: u32,
}

/// The points a read sees: those `owner` owns (all without one) that pass `filter`.
fn owned_and_matching<'a>(
    owner: Option<&'a Ownership>,
    filter: Option<&'a Filter>,
) -> impl Fn(PointId, PayloadRead<'_>, HasVector<'_>) -> bool + 'a {
    move |id, p, has| {
        owner.is_none_or(|o| o.owns(&id)) && filter.is_none_or(|f| f.check_point(id, &p(), has))
    }
}

/// Runs `read` with the check of `owner` as the predicate besides a read's filter (`None`
/// without an owner: every point passes), for the reads that narrow by the filter themselves.
fn with_owner_check<T>(
    owner: Option<&Ownership>,
    read: impl FnOnce(Option<PointPredicate<'_>>) -> T,
) -> T {
    let owned =
        |id: PointId, _: PayloadRead<'_>, _: HasVector<'_>| owner.is_none_or(|o| o.owns(&id));
    read(owner.is_some().then_some(&owned as _))
}

impl Ownership {
    pub fn owns(&self, id: &PointId) -> bool {
        !self.ring.is_empty()
            && self.ring[crate::cluster::hash_ring::shard_for(id, self.ring.len() as u32) as usize]
                == self.shard
    }
}

/// The points a resharding stream carries: those its destination shard owns under the new
/// ring (`to`), out of those its source shard owns under the old one (`from`). A destination
/// shard also holds points of its own (scale down) or of other streams (scale up), and a
/// source may still hold points it does not own (strays a cleanup has not swept yet): the
/// stream neither sends, passes on, compares nor deletes those.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamScope {
    pub to: Ownership,
    pub from: Ownership,
}

impl StreamScope {
    pub fn carries(&self, id: &PointId) -> bool {
        self.to.owns(id) && self.from.owns(id)
    }
}

impl ShardRequest for UpdateRequest {
    type Answer = u64;
    const CALL: ShardCallKind = ShardCallKind::Update;
    const WRITES: bool = true;
    fn run_on(&self, shard: &LocalShard) -> Result<u64, CollectionError> {
        Ok(shard.update(self.clone())?)
    }
    fn encode_body(&self) -> serde_json::Result<Vec<u8>> {
        serde_json::to_vec(&UpdateCallRef::Untagged(self))
    }
}

/// An update from a coordinator, with the layout version of its shard that the coordinator
/// routed it by (see `Collection::update_local`) and its clock tag (see `shard::clock`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FencedUpdate {
    pub layout_version: u64,
    pub clock: Option<ClockTag>,
    pub update: UpdateRequest,
}

impl ShardRequest for FencedUpdate {
    type Answer = UpdateOutcome;
    const CALL: ShardCallKind = ShardCallKind::Update;
    const WRITES: bool = true;
    fn run_on(&self, shard: &LocalShard) -> Result<UpdateOutcome, CollectionError> {
        let stamp = self.clock.map_or(Stamp::Local, Stamp::Coordinator);
        Ok(shard.update_stamped(self.update.clone(), stamp)?)
    }
    fn encode_body(&self) -> serde_json::Result<Vec<u8>> {
        serde_json::to_vec(&UpdateCallRef::Routed(self))
    }
}

/// A copy of an update that a transfer forwards to its destination in the source's order,
/// with the tag the source applied it with: the destination applies it whatever the tick
/// ([`Stamp::Forced`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ForwardedUpdate {
    pub clock: ClockTag,
    pub update: UpdateRequest,
}

impl ShardRequest for ForwardedUpdate {
    type Answer = u64;
    const CALL: ShardCallKind = ShardCallKind::Update;
    const WRITES: bool = true;
    fn run_on(&self, shard: &LocalShard) -> Result<u64, CollectionError> {
        match shard.update_stamped(self.update.clone(), Stamp::Forced(self.clock))? {
            UpdateOutcome::Applied(seq) | UpdateOutcome::Duplicate(seq) => Ok(seq),
            UpdateOutcome::Behind(_) => unreachable!("a forced update is never behind"),
        }
    }
    fn encode_body(&self) -> serde_json::Result<Vec<u8>> {
        serde_json::to_vec(&UpdateCallRef::Forwarded(self))
    }
}

/// Qdrant's write `ordering` of an update: `weak` (the default) sends it to every replica at
/// once from the peer that took it; `medium` and `strong` send it through the shard's leader
/// replica, which writes one such update at a time, so every replica applies them in the same
/// order. The leader is the replica with the highest peer id: among those that take updates
/// (`medium`, which moves on when the leader fails), or among all (`strong`, which refuses the
/// write while that replica does not take updates). Qdrant's choice of leader, too.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WriteOrdering {
    #[default]
    Weak,
    Medium,
    Strong,
}

/// An update passed to a shard's leader replica (see [`WriteOrdering`]), which coordinates it
/// by its own layout. Answers the operation number.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaderUpdate {
    pub ordering: WriteOrdering,
    pub update: UpdateRequest,
}

impl ShardRequest for LeaderUpdate {
    type Answer = u64;
    const CALL: ShardCallKind = ShardCallKind::Update;
    const WRITES: bool = true;
    fn run_on(&self, _: &LocalShard) -> Result<u64, CollectionError> {
        Err(CollectionError::Storage(
            "an ordered update is coordinated by the collection, not run on a replica".into(),
        ))
    }
    fn encode_body(&self) -> serde_json::Result<Vec<u8>> {
        serde_json::to_vec(&UpdateCallRef::Lead(self))
    }
}

/// Which transfer a copy belongs to: a transfer's stream and recovery steps, and what a
/// resharding stream passes on. The receiving peer first applies the cluster state up to
/// `seen`, then takes the copy only while that state still runs the transfer with this peer as
/// its destination; a copy of a transfer that ended (finished, aborted, or cancelled with its
/// resharding) is refused with [`CollectionError::StaleTransfer`] and changes nothing. A
/// sender whose own view is behind (it restarted and has not caught up, or a partition)
/// cannot clear, overwrite or pass on into a replica that has moved on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamFence {
    /// The transfer's id in the cluster state (a resharding stream's own id).
    pub transfer: u64,
    /// The sender's applied cluster-state index when its transfer task started: at or after
    /// the transfer's start (the task runs because its state held the transfer), so a
    /// destination at least that far along knows of it, and refuses it if it has ended.
    pub seen: u64,
}

/// An update a transfer sends its destination (a stream batch, a catch-up) or a resharding
/// stream passes on: fenced by the transfer (see [`StreamFence`]). `clock` is the tag the
/// source applied it with (`None`: the destination tags it with its own local clock).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StreamedUpdate {
    pub fence: StreamFence,
    pub clock: Option<ClockTag>,
    pub update: UpdateRequest,
}

impl ShardRequest for StreamedUpdate {
    type Answer = u64;
    const CALL: ShardCallKind = ShardCallKind::Update;
    const WRITES: bool = true;
    fn run_on(&self, _: &LocalShard) -> Result<u64, CollectionError> {
        Err(CollectionError::Storage(
            "a transfer's copy is checked by the collection, not run on a replica".into(),
        ))
    }
    fn encode_body(&self) -> serde_json::Result<Vec<u8>> {
        serde_json::to_vec(&UpdateCallRef::Streamed(self))
    }
}

/// The body of a `ShardService.Update` call: how the update reaches the replica.
#[derive(Debug, Clone, Deserialize)]
pub enum UpdateCall {
    Routed(FencedUpdate),
    Forwarded(ForwardedUpdate),
    Untagged(UpdateRequest),
    Lead(LeaderUpdate),
    Streamed(StreamedUpdate),
}

/// [`UpdateCall`] by reference, for sending.
#[derive(Serialize)]
enum UpdateCallRef<'a> {
    Routed(&'a FencedUpdate),
    Forwarded(&'a ForwardedUpdate),
    Untagged(&'a UpdateRequest),
    Lead(&'a LeaderUpdate),
    Streamed(&'a StreamedUpdate),
}

/// The steps of bringing a replica up to date from another (a transfer's destination side),
/// carried by `ShardService.Recovery`. `copy` is the transfer's id: a replica refuses the
/// steps of any copy but the one it began last. See `shard::clock`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ShardRecovery {
    /// A copy begins: freeze the recovery point and report it ([`LocalShard::begin_copy`]).
    Begin { copy: u64, fresh: bool },
    /// Operations from the source's WAL, in its order ([`LocalShard::replay`]).
    Replay {
        copy: u64,
        ops: Vec<(Option<ClockTag>, ShardOperation)>,
    },
    /// The copy is complete: merge the source's clocks ([`LocalShard::finish_copy`]).
    Finish { copy: u64, clocks: ClockMap },
}

impl ShardRecovery {
    /// The transfer whose copy this step belongs to.
    pub fn copy(&self) -> u64 {
        match self {
            ShardRecovery::Begin { copy, .. }
            | ShardRecovery::Replay { copy, .. }
            | ShardRecovery::Finish { copy, .. } => *copy,
        }
    }
}

/// The body of a `ShardService.Recovery` call: a step, fenced by its transfer (the step's
/// `copy`; see [`StreamFence`]), `seen` being an applied cluster-state index at which the
/// sender saw that transfer running.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FencedRecovery {
    pub seen: u64,
    pub step: ShardRecovery,
}

impl FencedRecovery {
    pub fn fence(&self) -> StreamFence {
        StreamFence {
            transfer: self.step.copy(),
            seen: self.seen,
        }
    }
}

impl ShardRequest for FencedRecovery {
    /// The recovery point, for `Begin`.
    type Answer = Option<ClockMap>;
    const CALL: ShardCallKind = ShardCallKind::Recovery;
    const WRITES: bool = true;
    fn run_on(&self, shard: &LocalShard) -> Result<Option<ClockMap>, CollectionError> {
        self.step.run_on(shard)
    }
}

impl ShardRequest for ShardRecovery {
    /// The recovery point, for `Begin`.
    type Answer = Option<ClockMap>;
    const CALL: ShardCallKind = ShardCallKind::Recovery;
    const WRITES: bool = true;
    fn run_on(&self, shard: &LocalShard) -> Result<Option<ClockMap>, CollectionError> {
        match self {
            ShardRecovery::Begin { copy, fresh } => Ok(Some(shard.begin_copy(*copy, *fresh)?)),
            ShardRecovery::Replay { copy, ops } => {
                shard.replay(*copy, ops.clone())?;
                Ok(None)
            }
            ShardRecovery::Finish { copy, clocks } => {
                shard.finish_copy(*copy, clocks.clone())?;
                Ok(None)
            }
        }
    }
}

/// How a shard scores candidates; vectors are already checked and preprocessed for the
/// searched vector (its kind, size and distance).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ShardTarget {
    Nearest(VectorData),
    /// Qdrant's `best_score` recommendation strategy.
    BestScore {
        positive: Vec<VectorData>,
        negative: Vec<VectorData>,
    },
    /// Qdrant's `sum_scores` recommendation strategy.
    SumScores {
        positive: Vec<VectorData>,
        negative: Vec<VectorData>,
    },
    /// Qdrant's discovery: the target's similarity ranks points within the same count of
    /// context pairs satisfied (see [`discover_score`]).
    Discover {
        target: VectorData,
        context: Vec<(VectorData, VectorData)>,
    },
    /// Qdrant's context search: the sum over pairs of `min(0, sim(positive) - sim(negative))`.
    Context {
        pairs: Vec<(VectorData, VectorData)>,
    },
    /// Qdrant's naive relevance feedback: `a * sim(target)` plus, for every pair of feedback
    /// examples (better, worse) with its weight `(score difference)^b * c`,
    /// `weight * (sim(better) - sim(worse))`.
    RelevanceFeedback {
        target: VectorData,
        a: f32,
        pairs: Vec<(VectorData, VectorData, f32)>,
    },
    /// No scoring: matching points in id order with score 1 (as Qdrant).
    IdOrder,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardSearch {
    /// The vector searched (`""` for the unnamed one).
    #[serde(default)]
    pub using: String,
    pub target: ShardTarget,
    pub filter: Option<Filter>,
    pub exclude: Vec<PointId>,
    /// How many best points to return.
    pub top: usize,
    pub ef: Option<usize>,
    pub exact: bool,
    /// `params.quantization` of the search (absent from older peers: the defaults).
    #[serde(default, skip_serializing_if = "is_default")]
    pub quantization: QuantizationSearch,
    pub score_threshold: Option<f32>,
    pub with_payload: bool,
    pub with_vector: WithVector,
    /// IDF weights of the query's sparse dimensions, computed over the whole collection by
    /// the coordinator (see [`ShardSparseStats`]); `None` without the `idf` modifier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idf: Option<Vec<(u32, f32)>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<Ownership>,
}

impl ShardRequest for ShardSearch {
    fn owner_mut(&mut self) -> Option<&mut Option<Ownership>> {
        Some(&mut self.owner)
    }
    type Answer = Vec<ScoredRecord>;
    const CALL: ShardCallKind = ShardCallKind::Search;
    fn run_on(&self, shard: &LocalShard) -> Result<Vec<ScoredRecord>, CollectionError> {
        Ok(ShardSearch::run(self, shard))
    }
}

/// Similarity of a stored vector to an example, oriented so that larger is closer: Qdrant's
/// internal score (dot product for `Cosine` and `Dot`, negated distance for `Euclid` and
/// `Manhattan`, MaxSim for multivectors, dot product for sparse vectors).
pub fn similarity(distance: Option<Distance>, stored: VectorRef<'_>, example: &VectorData) -> f32 {
    match (stored, example) {
        (VectorRef::Dense(v), VectorData::Dense(e)) => distance.map_or(0.0, |d| d.similarity(e, v)),
        (VectorRef::Multi { flat, dim }, VectorData::Multi(e)) => distance.map_or(0.0, |d| {
            d.max_sim_rows(e.iter().map(Vec::as_slice), flat.chunks_exact(dim.max(1)))
        }),
        (VectorRef::Sparse(v), VectorData::Sparse(e)) => e.weighted_dot(v, |_| 1.0),
        _ => f32::NEG_INFINITY,
    }
}

/// [`similarity`] between two owned vectors (`stored` as a point holds it).
pub fn similarity_of(distance: Option<Distance>, stored: &VectorData, example: &VectorData) -> f32 {
    match stored {
        VectorData::Dense(v) => similarity(distance, VectorRef::Dense(v), example),
        VectorData::Sparse(s) => similarity(distance, VectorRef::Sparse(s), example),
        VectorData::Multi(rows) => match example {
            VectorData::Multi(e) => distance.map_or(0.0, |d| {
                d.max_sim_rows(e.iter().map(Vec::as_slice), rows.iter().map(Vec::as_slice))
            }),
            _ => f32::NEG_INFINITY,
        },
    }
}

/// Qdrant's discovery score: the context rank (see [`context_rank`]) plus the similarity to
/// the target squashed into (0, 1), so that it only orders points of the same rank.
pub fn discover_score(target_sim: f32, rank: i32) -> f32 {
    rank as f32 + scaled_sigmoid(target_sim)
}

/// Qdrant's "fast sigmoid" `x / (1 + |x|)`, in (-1, 1).
fn fast_sigmoid(x: f32) -> f32 {
    x / (1.0 + x.abs())
}

/// [`fast_sigmoid`] moved into (0, 1).
fn scaled_sigmoid(x: f32) -> f32 {
    0.5 * (fast_sigmoid(x) + 1.0)
}

/// Qdrant's context-pair rank: for each pair +1 if the positive is more similar than the
/// negative, -1 if less, 0 on a tie.
fn context_rank(pairs: &[(VectorData, VectorData)], sim: impl Fn(&VectorData) -> f32) -> i32 {
    pairs
        .iter()
        .map(|(p, n)| match sim(p).partial_cmp(&sim(n)) {
            Some(std::cmp::Ordering::Greater) => 1,
            Some(std::cmp::Ordering::Less) => -1,
            _ => 0,
        })
        .sum()
}

/// Qdrant's context score: the sum over pairs of `fast_sigmoid(min(0, sim(positive) -
/// sim(negative) - EPSILON))`, in (-pairs, 0].
fn context_loss(pairs: &[(VectorData, VectorData)], sim: impl Fn(&VectorData) -> f32) -> f32 {
    pairs
        .iter()
        .map(|(p, n)| fast_sigmoid((sim(p) - sim(n) - f32::EPSILON).min(0.0)))
        .sum()
}

impl ShardSearch {
    /// The best `top` points of `shard`, best first.
    pub fn run(&self, shard: &LocalShard) -> Vec<ScoredRecord> {
        let distance = shard.distance(&self.using);
        let exclude: HashSet<PointId> = self.exclude.iter().copied().collect();
        let bound = self.filter.as_ref().map(|f| shard.bind_filter(f));
        let filter = bound.as_deref();
        let owner = self.owner.as_ref();
        let accept = |id: PointId, p: PayloadRead<'_>, has: HasVector<'_>| {
            !exclude.contains(&id)
                && owner.is_none_or(|o| o.owns(&id))
                && filter.is_none_or(|f| f.check_point(id, &p(), has))
        };
        let needs_accept = filter.is_some() || !exclude.is_empty() || owner.is_some();
        let accept_ref: Option<PointPredicate<'_>> = needs_accept.then_some(&accept as _);
        let rest = |id: PointId, _: PayloadRead<'_>, _: HasVector<'_>| {
            !exclude.contains(&id) && owner.is_none_or(|o| o.owns(&id))
        };
        let rest_ref: Option<PointPredicate<'_>> =
            (!exclude.is_empty() || owner.is_some()).then_some(&rest as _);
        let custom = |v: VectorRef<'_>| -> f32 {
            let sim = |e: &VectorData| similarity(distance, v, e);
            match &self.target {
                ShardTarget::SumScores { positive, negative } => {
                    positive.iter().map(sim).sum::<f32>() - negative.iter().map(sim).sum::<f32>()
                }
                ShardTarget::BestScore { positive, negative } => {
                    let best_pos = positive.iter().map(sim).fold(f32::NEG_INFINITY, f32::max);
                    let best_neg = negative.iter().map(sim).fold(f32::NEG_INFINITY, f32::max);
                    if best_pos > best_neg {
                        scaled_sigmoid(best_pos)
                    } else {
                        -scaled_sigmoid(best_neg)
                    }
                }
                ShardTarget::Discover { target, context } => {
                    discover_score(sim(target), context_rank(context, sim))
                }
                ShardTarget::Context { pairs } => context_loss(pairs, sim),
                ShardTarget::RelevanceFeedback { target, a, pairs } => {
                    a * sim(target)
                        + pairs
                            .iter()
                            .map(|(better, worse, w)| w * (sim(better) - sim(worse)))
                            .sum::<f32>()
                }
                ShardTarget::Nearest(_) | ShardTarget::IdOrder => 0.0,
            }
        };
        let flat_multi: Vec<f32>;
        let scoring = match &self.target {
            ShardTarget::IdOrder => {
                return shard
                    .scroll(
                        None,
                        self.top,
                        accept_ref,
                        self.with_payload,
                        &self.with_vector,
                    )
                    .into_iter()
                    .map(ScoredRecord::unscored)
                    .collect();
            }
            ShardTarget::Nearest(VectorData::Dense(q)) => Scoring::Nearest(QueryVector::Dense(q)),
            ShardTarget::Nearest(VectorData::Sparse(q)) => Scoring::Nearest(QueryVector::Sparse(q)),
            ShardTarget::Nearest(VectorData::Multi(q)) => {
                flat_multi = q.iter().flatten().copied().collect();
                Scoring::Nearest(QueryVector::Multi(&flat_multi))
            }
            _ => Scoring::Custom(&custom),
        };
        let query = SearchQuery {
            using: &self.using,
            scoring,
            accept: accept_ref,
            filter,
            rest: rest_ref,
            top: self.top,
            ef: self.ef,
            exact: self.exact,
            quantization: self.quantization,
            score_threshold: self.score_threshold,
            with_payload: self.with_payload,
            with_vector: &self.with_vector,
        };
        match &self.idf {
            Some(weights) => {
                let weights = weights.iter().copied().collect();
                shard.search_weighted(&query, Some(&weights))
            }
            None => shard.search(&query),
        }
    }

    /// Orders merged answers of several shards, best first.
    pub fn sort_merged(&self, distance: Option<Distance>, merged: &mut [ScoredRecord]) {
        let lower_is_better = matches!(
            self.target,
            ShardTarget::Nearest(VectorData::Dense(_) | VectorData::Multi(_))
        ) && distance.is_some_and(|d| !d.higher_is_better());
        match self.target {
            ShardTarget::IdOrder => merged.sort_by_key(|r| r.id),
            _ if lower_is_better => {
                merged.sort_by(|a, b| a.score.total_cmp(&b.score).then_with(|| a.id.cmp(&b.id)))
            }
            _ => merged.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.id.cmp(&b.id))),
        }
    }
}

/// For the sparse vector `using`: how many points of the shard have it, and for each of
/// `dims` how many have a value there. The coordinator sums these over the shards to weigh a
/// query by IDF over the whole collection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardSparseStats {
    pub using: String,
    pub dims: Vec<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<Ownership>,
}

impl ShardRequest for ShardSparseStats {
    fn owner_mut(&mut self) -> Option<&mut Option<Ownership>> {
        Some(&mut self.owner)
    }
    type Answer = (usize, Vec<usize>);
    const CALL: ShardCallKind = ShardCallKind::SparseStats;
    fn run_on(&self, shard: &LocalShard) -> Result<(usize, Vec<usize>), CollectionError> {
        let owner = self.owner.as_ref();
        Ok(shard.sparse_stats(&self.using, &self.dims, &|id| {
            owner.is_none_or(|o| o.owns(id))
        }))
    }
}

/// Up to `limit` points with ids `>= from`, in id order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardScroll {
    pub from: Option<PointId>,
    pub limit: usize,
    pub filter: Option<Filter>,
    pub with_payload: bool,
    pub with_vector: WithVector,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<Ownership>,
}

impl ShardRequest for ShardScroll {
    fn owner_mut(&mut self) -> Option<&mut Option<Ownership>> {
        Some(&mut self.owner)
    }
    type Answer = Vec<Record>;
    const CALL: ShardCallKind = ShardCallKind::Scroll;
    fn run_on(&self, shard: &LocalShard) -> Result<Vec<Record>, CollectionError> {
        Ok(ShardScroll::run(self, shard))
    }
}

impl ShardScroll {
    pub fn run(&self, shard: &LocalShard) -> Vec<Record> {
        let filter = self.filter.as_ref().map(|f| shard.bind_filter(f));
        with_owner_check(self.owner.as_ref(), |rest| {
            shard.scroll_matching(
                self.from,
                self.limit,
                filter.as_deref(),
                rest,
                self.with_payload,
                &self.with_vector,
            )
        })
    }
}

/// A payload value points are ordered by (Qdrant's `OrderValue`): an integer, or a float.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OrderValue {
    Int(i64),
    Float(f64),
}

impl OrderValue {
    /// The number a payload value orders by, as Qdrant reads it: integers and floats as they
    /// are, RFC 3339 datetime strings as microseconds since the Unix epoch (UTC); anything else
    /// does not order.
    pub fn of(value: &serde_json::Value) -> Option<OrderValue> {
        match value {
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => Some(OrderValue::Int(i)),
                None => n.as_f64().map(OrderValue::Float),
            },
            serde_json::Value::String(s) => {
                crate::index::filter::parse_datetime_micros(s).map(OrderValue::Int)
            }
            _ => None,
        }
    }

    /// Total order: integers exactly, mixed pairs and floats by value (`total_cmp`).
    pub fn total_cmp(&self, other: &OrderValue) -> std::cmp::Ordering {
        match (self, other) {
            (OrderValue::Int(a), OrderValue::Int(b)) => a.cmp(b),
            (a, b) => a.as_f64().total_cmp(&b.as_f64()),
        }
    }

    pub fn as_f64(&self) -> f64 {
        match self {
            OrderValue::Int(i) => *i as f64,
            OrderValue::Float(f) => *f,
        }
    }
}

/// Qdrant's `order_by` on one shard: the first `limit` (value, point) pairs by a payload
/// key's numeric values, ascending or descending, from `start_from` on (inclusive). A point
/// appears once per distinct value it has at the key (arrays count element by element).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardOrderBy {
    pub key: JsonPath,
    pub descending: bool,
    pub start_from: Option<OrderValue>,
    pub limit: usize,
    pub filter: Option<Filter>,
    pub with_payload: bool,
    pub with_vector: WithVector,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<Ownership>,
}

impl ShardRequest for ShardOrderBy {
    fn owner_mut(&mut self) -> Option<&mut Option<Ownership>> {
        Some(&mut self.owner)
    }
    type Answer = Vec<(OrderValue, Record)>;
    const CALL: ShardCallKind = ShardCallKind::OrderBy;
    fn run_on(&self, shard: &LocalShard) -> Result<Self::Answer, CollectionError> {
        let filter = self.filter.as_ref().map(|f| shard.bind_filter(f));
        let accept = owned_and_matching(self.owner.as_ref(), filter.as_deref());
        Ok(shard.order_by(self, &accept))
    }
}

impl ShardOrderBy {
    /// Whether `a` comes before `b` in this order (ties by point id, ascending).
    pub fn order(
        &self,
        a: &(OrderValue, PointId),
        b: &(OrderValue, PointId),
    ) -> std::cmp::Ordering {
        let by_value = a.0.total_cmp(&b.0);
        let by_value = if self.descending {
            by_value.reverse()
        } else {
            by_value
        };
        by_value.then(a.1.cmp(&b.1))
    }

    /// Whether `value` is at or after `start_from` in this order.
    pub fn starts_before(&self, value: &OrderValue) -> bool {
        self.start_from.is_some_and(|start| {
            let c = value.total_cmp(&start);
            if self.descending {
                c.is_gt()
            } else {
                c.is_lt()
            }
        })
    }
}

/// Qdrant's facet counts on one shard: for each distinct string, integer or boolean value at
/// `key` (arrays element by element), how many points matching `filter` have it (a point counts
/// once per distinct value).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardFacet {
    pub key: JsonPath,
    pub filter: Option<Filter>,
    /// The key holds UUIDs (a uuid index): strings that parse as one count in their hyphenated
    /// form, whatever form was stored.
    #[serde(default)]
    pub uuids: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<Ownership>,
}

impl ShardRequest for ShardFacet {
    fn owner_mut(&mut self) -> Option<&mut Option<Ownership>> {
        Some(&mut self.owner)
    }
    type Answer = Vec<(serde_json::Value, usize)>;
    const CALL: ShardCallKind = ShardCallKind::Facet;
    fn run_on(&self, shard: &LocalShard) -> Result<Self::Answer, CollectionError> {
        let filter = self.filter.as_ref().map(|f| shard.bind_filter(f));
        let mut counts: std::collections::HashMap<String, (serde_json::Value, usize)> =
            std::collections::HashMap::new();
        let mut tally = |payload: &crate::types::Payload| {
            let mut seen: Vec<serde_json::Value> = Vec::new();
            for v in self.key.values(payload) {
                let facetable = v.is_string() || v.is_boolean() || v.as_i64().is_some();
                if !facetable {
                    continue;
                }
                let v = match v.as_str().filter(|_| self.uuids) {
                    Some(s) => match uuid::Uuid::parse_str(s) {
                        Ok(u) => serde_json::Value::String(u.hyphenated().to_string()),
                        Err(_) => v.clone(),
                    },
                    None => v.clone(),
                };
                if !seen.contains(&v) {
                    counts
                        .entry(v.to_string())
                        .or_insert_with(|| (v.clone(), 0))
                        .1 += 1;
                    seen.push(v);
                }
            }
        };
        with_owner_check(self.owner.as_ref(), |rest| {
            shard.for_each_matching_payload(filter.as_deref(), rest, &mut tally)
        });
        Ok(counts.into_values().collect())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardCount {
    pub filter: Option<Filter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<Ownership>,
}

impl ShardRequest for ShardCount {
    fn owner_mut(&mut self) -> Option<&mut Option<Ownership>> {
        Some(&mut self.owner)
    }
    type Answer = usize;
    const CALL: ShardCallKind = ShardCallKind::Count;
    fn run_on(&self, shard: &LocalShard) -> Result<usize, CollectionError> {
        Ok(ShardCount::run(self, shard))
    }
}

impl ShardCount {
    pub fn run(&self, shard: &LocalShard) -> usize {
        let filter = self.filter.as_ref().map(|f| shard.bind_filter(f));
        with_owner_check(self.owner.as_ref(), |rest| {
            shard.count_matching(filter.as_deref(), rest)
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardRetrieve {
    pub ids: Vec<PointId>,
    pub with_payload: bool,
    pub with_vector: WithVector,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<Ownership>,
}

impl ShardRequest for ShardRetrieve {
    fn owner_mut(&mut self) -> Option<&mut Option<Ownership>> {
        Some(&mut self.owner)
    }
    type Answer = Vec<Record>;
    const CALL: ShardCallKind = ShardCallKind::Retrieve;
    fn run_on(&self, shard: &LocalShard) -> Result<Vec<Record>, CollectionError> {
        Ok(ShardRetrieve::run(self, shard))
    }
}

impl ShardRetrieve {
    pub fn run(&self, shard: &LocalShard) -> Vec<Record> {
        let mut records = shard.retrieve(&self.ids, self.with_payload, &self.with_vector);
        if let Some(owner) = &self.owner {
            records.retain(|r| owner.owns(&r.id));
        }
        records
    }
}

/// Whether a field holds its default (left out of the wire form).
fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}
