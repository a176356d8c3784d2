//! A shard stored on this peer: its WAL, its segments, its flushed point store, and the
//! bookkeeping that ties them together.
//!
//! Writes take the shard's write lock, are appended to the WAL, then applied to the in-memory
//! segments; they are acknowledged only after that. Every few seconds what changed is flushed
//! to the point store in one atomic transaction, and the WAL is cut back to the flushed
//! sequence number. Reads take the read lock and never wait for the optimizer, which builds
//! graphs outside the lock and only swaps them in under it.
//!
//! Sealed (indexed) segments live in directories under `segments/` (see `segment::files`),
//! written by the optimizer before it swaps them in; the point store lists them, holds their
//! deletions and their changed payloads, and holds whole every point that is not in one. On
//! open, the listed segments are mapped (no graph is rebuilt), the rest is loaded from the
//! point store, and the WAL is replayed after the flushed sequence number.

use std::borrow::Cow;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use parking_lot::{Mutex, RwLock, RwLockUpgradableReadGuard, RwLockWriteGuard};
use serde::{Deserialize, Serialize};

use crate::collection_config::{CollectionConfig, Modifier, PayloadIndexEntry, VectorKind};
use crate::index::filter::Filter;
use crate::index::hnsw_index::{GraphDistance, GraphParams, HnswIndex};
use crate::index::payload_index::{OffsetSet, PayloadIndex, PayloadSchema, Plan};
use crate::index::payload_path::{JsonPath, merge_payload};
use crate::index::payload_selector::WithVector;
use crate::index::quantization::{CodeScorer, QuantizationSearch, QuantizedVectors};
use crate::index::sparse_index::SparseIndex;
use crate::shard::clock::{
    Admission, ClockKey, ClockMap, ClockTag, LOCAL_CLOCK, WalBase, WalMark, delta_start,
};
use crate::shard::operations::{
    PointSelection, PointWrite, ShardOperation, UpdateMode, UpdateRequest, WalEntry,
};
use crate::shard::segment::{
    FrozenColumn, Segment, SegmentId, SegmentImage, SegmentIndex, SegmentStage, Verify,
    segment_dir, stray_dirs,
};
use crate::storage::point_store::{
    FlushBatch, PayloadOverride, PointStore, StoreError, StoredPoint, encode_id,
};
use crate::storage::wal::{SyncMode, Wal};
use crate::types::{Distance, NamedVectors, Payload, PointId, SparseVector, VectorData, VectorRef};

#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error("shard storage I/O failed at {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "WAL record {seq} does not decode ({reason}); the shard refuses to start rather than lose it"
    )]
    CorruptWal { seq: u64, reason: String },
    #[error(
        "segment {path} fails verification ({reason}); the shard refuses to serve it (recover the replica from another peer or a snapshot)"
    )]
    CorruptSegment { path: PathBuf, reason: String },
    #[error("wrong input: vector dimension error: expected dim: {expected}, got {got}")]
    WrongDimension { expected: usize, got: usize },
    #[error("wrong input: {0}")]
    BadInput(String),
    /// The replica was replaced (restored from a snapshot) while the update was on its way:
    /// nothing changed; the same update succeeds on the replica now in place.
    #[error("the replica was replaced while the request was on its way; retry")]
    Retired,
    /// A payload or vector update named a point this shard does not hold (Qdrant answers 404).
    #[error("No point with id {0} found")]
    PointNotFound(PointId),
}

/// Sealed segment directories, inside the shard's directory.
pub(crate) const SEGMENTS_DIR: &str = "segments";
/// The point store, inside the shard's directory.
pub(crate) const POINT_STORE_FILE: &str = "points.redb";

fn encode_clocks(clocks: &ReplicaClocks) -> Vec<u8> {
    postcard::to_allocvec(clocks).expect("clock state always encodes")
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ShardError + '_ {
    move |source| ShardError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Beyond this many results a graph walk costs more than a scan, and its `ef` would have to
/// grow without bound: larger requests are answered exhaustively.
pub const MAX_GRAPH_TOP: usize = 10_000;
/// Most candidates a graph walk over quantized codes keeps for rescoring (the API's largest
/// `hnsw_ef`), unless the search asks for more results than that.
const MAX_CODE_CANDIDATES: usize = 10_000;

/// A point's payload as a predicate reads it: on demand, because a payload a sealed segment
/// keeps on disk (`on_disk_payload`) is parsed on each read, and most predicates decide on the
/// id (ownership, excluded ids) or on a payload index without it.
pub type PayloadRead<'a> = &'a dyn Fn() -> Cow<'a, Payload>;

/// What a read's predicate sees of a point: its id, payload, and which vectors it has.
pub type PointPredicate<'a> =
    &'a (dyn Fn(PointId, PayloadRead<'_>, crate::index::filter::HasVector<'_>) -> bool + Sync);

/// A query vector, already checked and preprocessed for the vector it searches.
#[derive(Debug, Clone, Copy)]
pub enum QueryVector<'a> {
    Dense(&'a [f32]),
    Sparse(&'a SparseVector),
    /// Sub-vectors laid end to end.
    Multi(&'a [f32]),
}

/// How candidates are scored.
pub enum Scoring<'a> {
    /// Nearest to a query vector by the vector's own metric; may use the vector's index. For
    /// sparse vectors only points sharing a dimension with the query are candidates.
    Nearest(QueryVector<'a>),
    /// Any score where higher is better; always exhaustive over the points that have the
    /// vector.
    Custom(&'a (dyn Fn(VectorRef<'_>) -> f32 + Sync)),
}

pub struct SearchQuery<'a> {
    /// The name of the vector searched (`""` for the unnamed one).
    pub using: &'a str,
    pub scoring: Scoring<'a>,
    pub accept: Option<PointPredicate<'a>>,
    /// The request's filter, which `accept` applies (with anything else it checks): searches
    /// plan with it, through the payload indexes, which points to look at.
    pub filter: Option<&'a Filter>,
    /// Everything `accept` checks besides `filter` (`None`: nothing). A point known from the
    /// payload indexes to pass `filter` is checked with this alone.
    pub rest: Option<PointPredicate<'a>>,
    /// How many best points to return (the API's `limit + offset`).
    pub top: usize,
    pub ef: Option<usize>,
    pub exact: bool,
    /// How a graph walk uses scalar-quantized codes where a segment has them (ignored by
    /// exact searches and by segments without codes).
    pub quantization: QuantizationSearch,
    pub score_threshold: Option<f32>,
    pub with_payload: bool,
    pub with_vector: &'a WithVector,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ScoredRecord {
    pub id: PointId,
    pub version: u64,
    pub score: f32,
    pub payload: Option<Payload>,
    pub vector: Option<NamedVectors>,
    /// The payload value an `order_by` query ordered this point by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_value: Option<crate::cluster::shard_requests::OrderValue>,
}

impl ScoredRecord {
    /// A point returned without a query to score it: Qdrant gives it score 1.
    pub fn unscored(r: Record) -> ScoredRecord {
        ScoredRecord {
            id: r.id,
            version: r.version,
            score: 1.0,
            payload: r.payload,
            vector: r.vector,
            order_value: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Record {
    pub id: PointId,
    pub version: u64,
    pub payload: Option<Payload>,
    pub vector: Option<NamedVectors>,
}

/// Where a live point is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Location {
    segment: SegmentId,
    offset: u32,
}

struct ShardState {
    config: Arc<CollectionConfig>,
    segments: BTreeMap<SegmentId, Segment>,
    appendable: SegmentId,
    next_segment_id: SegmentId,
    locations: BTreeMap<PointId, Location>,
    /// Points changed since the last flush.
    dirty: HashSet<PointId>,
    /// Sealed segments on disk whose deletions changed since the last flush.
    deletions_dirty: HashSet<SegmentId>,
    /// Whether the set of sealed segments on disk changed since the last flush.
    segments_dirty: bool,
    /// Directories of sealed segments no longer in the shard: removed once a flush no longer
    /// lists them.
    retired: Vec<SegmentId>,
    /// Counts configuration changes of the vectors (added, removed, reshaped). An optimizer job
    /// that copied vectors under one count must not swap them in under another: a vector
    /// removed and created again meanwhile would get its old values back.
    vectors_epoch: u64,
    last_seq: u64,
    flushed_seq: u64,
    /// Points per segment before it is frozen for indexing; `None` when indexing is off.
    freeze_at: Option<usize>,
    /// The collection's declared payload indexes: every frozen segment gets them.
    payload_schema: Arc<PayloadSchema>,
    /// What this replica applied, by clock (see `shard::clock`).
    clocks: ReplicaClocks,
}

/// A replica's clock state, persisted with each flush (as of the flushed sequence number) and
/// advanced by every WAL record after it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ReplicaClocks {
    /// This replica's local clock: the tag of writes that came without one.
    own: ClockKey,
    /// The highest tick applied per clock.
    applied: ClockMap,
    /// While a copy is being received, which one and the recovery point it started from (see
    /// [`WalEntry::BeginCopy`]).
    floor: Option<Floor>,
    /// What the WAL no longer holds.
    base: WalBase,
}

/// The copy a replica is receiving (see [`LocalShard::begin_copy`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Floor {
    /// The transfer's id: steps of another copy are refused.
    copy: u64,
    /// The recovery point while the copy runs.
    point: ClockMap,
    fresh: bool,
}

impl ReplicaClocks {
    /// The recovery point: the floor while a copy is being received, else the clocks.
    fn recovery_point(&self) -> ClockMap {
        self.floor
            .as_ref()
            .map_or_else(|| self.applied.clone(), |f| f.point.clone())
    }

    /// Refuses a step of copy `copy` unless it is the copy being received.
    fn check_copy(&self, copy: u64) -> Result<(), ShardError> {
        match &self.floor {
            Some(floor) if floor.copy == copy => Ok(()),
            _ => Err(ShardError::BadInput(format!(
                "copy {copy} is not the copy this replica is receiving (a transfer that ended?)"
            ))),
        }
    }

    fn new() -> ReplicaClocks {
        ReplicaClocks {
            own: ClockKey {
                peer: rand::random(),
                clock: LOCAL_CLOCK,
            },
            applied: ClockMap::default(),
            floor: None,
            base: WalBase::default(),
        }
    }

    /// The tag of the next write that came without one.
    fn next_local(&self) -> ClockTag {
        ClockTag {
            peer: self.own.peer,
            clock: self.own.clock,
            tick: self.applied.tick(self.own) + 1,
            token: 0,
        }
    }
}

/// How an update reaches a replica, and so how its clock tag is checked (see `shard::clock`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stamp {
    /// Without a tag (a transfer's stream, a resharding, a local write): the replica's local
    /// clock tags it.
    Local,
    /// From a coordinator: applied only if its tick is new ([`Admission`]).
    Coordinator(ClockTag),
    /// A copy in the source's order (forwarded by a transfer, replayed from a WAL): applied
    /// whatever its tick, which the replica's clock then takes.
    Forced(ClockTag),
}

/// What became of an update at a replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum UpdateOutcome {
    /// Applied as this operation number (also when it changed nothing).
    Applied(u64),
    /// The same update was applied before: nothing was done.
    Duplicate(u64),
    /// Refused: the replica's clock is at this tick, past the update's (see
    /// [`Admission::Behind`]).
    Behind(u64),
}

/// Why a replica at some recovery point gets no delta from another's WAL and must be copied
/// whole (see [`LocalShard::wal_delta`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NoDelta {
    #[error("the WAL no longer reaches back to the recovery point")]
    NotReached,
    #[error("the delta would cross the start of a fresh copy the source received")]
    AcrossFreshCopy,
    #[error("the source is receiving a copy itself")]
    SourceReceiving,
    #[error("the recovery point holds updates the source never applied")]
    PointAhead,
}

/// What a replica at some recovery point misses of another replica's WAL (see
/// [`LocalShard::wal_delta`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WalDelta {
    /// The operations to replay, in the source's order, with their tags.
    pub ops: Vec<(Option<ClockTag>, ShardOperation)>,
    /// The source's clocks once they are applied: the recovering replica merges them.
    pub clocks: ClockMap,
}

fn vectors_wanted(seg: &Segment, offset: u32, with_vector: &WithVector) -> Option<NamedVectors> {
    match with_vector {
        WithVector::None => None,
        WithVector::All => Some(seg.vectors(offset)),
        WithVector::Named(_) => Some(seg.vectors_where(offset, |n| with_vector.wants(n))),
    }
}

impl ShardState {
    /// Freezes the appendable segment for indexing once it holds `freeze_at` points, and opens
    /// a new appendable one.
    fn freeze_if_full(&mut self) {
        let id = self.appendable;
        let seg = self
            .segments
            .get_mut(&id)
            .expect("appendable segment exists");
        if self.freeze_at.is_some_and(|limit| seg.len() >= limit) {
            seg.freeze();
            self.appendable = self.new_segment();
        }
    }

    fn new_segment(&mut self) -> SegmentId {
        let id = self.next_segment_id;
        self.next_segment_id += 1;
        self.segments.insert(id, Segment::new(id, &self.config));
        id
    }

    fn remove_point(&mut self, id: &PointId) -> bool {
        match self.locations.remove(id) {
            Some(loc) => {
                if let Some(seg) = self.segments.get_mut(&loc.segment) {
                    seg.delete(loc.offset);
                    if seg.is_persisted() {
                        self.deletions_dirty.insert(loc.segment);
                    }
                }
                true
            }
            None => false,
        }
    }

    fn insert_point(
        &mut self,
        id: PointId,
        vectors: &NamedVectors,
        payload: Payload,
        version: u64,
    ) {
        self.remove_point(&id);
        let seg_id = self.appendable;
        let seg = self
            .segments
            .get_mut(&seg_id)
            .expect("appendable segment exists");
        let offset = seg.push(id, vectors, payload, version);
        self.freeze_if_full();
        self.locations.insert(
            id,
            Location {
                segment: seg_id,
                offset,
            },
        );
    }

    fn point_mut(&mut self, id: &PointId) -> Option<(&mut Segment, u32)> {
        let loc = *self.locations.get(id)?;
        let seg = self.segments.get_mut(&loc.segment)?;
        Some((seg, loc.offset))
    }

    fn point(&self, id: &PointId) -> Option<(&Segment, u32)> {
        let loc = self.locations.get(id)?;
        Some((self.segments.get(&loc.segment)?, loc.offset))
    }

    fn edit_payload(&mut self, points: &[PointId], seq: u64, edit: impl Fn(&mut Payload)) {
        for id in points {
            if let Some((seg, offset)) = self.point_mut(id) {
                edit(seg.payload_mut(offset));
                seg.set_version(offset, seq);
                self.dirty.insert(*id);
            }
        }
    }

    /// Rewrites a point with its vectors changed by `edit`: vectors never change in place (see
    /// `segment`), so the point moves to the appendable segment.
    fn edit_vectors(&mut self, id: &PointId, seq: u64, edit: impl FnOnce(&mut NamedVectors)) {
        let Some((seg, offset)) = self.point(id) else {
            return;
        };
        let mut vectors = seg.vectors(offset);
        let payload = seg.payload(offset).into_owned();
        edit(&mut vectors);
        self.insert_point(*id, &vectors, payload, seq);
        self.dirty.insert(*id);
    }

    /// Applies a WAL record: an operation (and its tag), or a change to the clocks.
    fn apply_entry(&mut self, seq: u64, entry: &WalEntry) {
        match entry {
            WalEntry::Op { clock, op } => {
                if let Some(tag) = clock {
                    self.clocks.applied.advance(tag);
                }
                self.apply(seq, op);
            }
            WalEntry::BeginCopy { copy, floor, fresh } => {
                if *fresh {
                    let own = self.clocks.own;
                    self.clocks.applied.retain(|k| k == own);
                }
                self.clocks.floor = Some(Floor {
                    copy: *copy,
                    point: floor.clone(),
                    fresh: *fresh,
                });
            }
            WalEntry::FinishCopy { merged, .. } => {
                self.clocks.applied.merge(merged);
                self.clocks.floor = None;
            }
        }
        self.last_seq = seq;
    }

    fn apply(&mut self, seq: u64, op: &ShardOperation) {
        match op {
            ShardOperation::Upsert(points) => {
                for p in points {
                    self.insert_point(p.id, &p.vectors, p.payload.clone(), seq);
                    self.dirty.insert(p.id);
                }
            }
            ShardOperation::UpdateVectors(points) => {
                for (id, given) in points {
                    self.edit_vectors(id, seq, |vectors| {
                        vectors.extend(given.iter().map(|(k, v)| (k.clone(), v.clone())));
                    });
                }
            }
            ShardOperation::DeleteVectors { points, names } => {
                for id in points {
                    self.edit_vectors(id, seq, |vectors| {
                        for name in names {
                            vectors.remove(name);
                        }
                    });
                }
            }
            ShardOperation::Delete(ids) => {
                for id in ids {
                    if self.remove_point(id) {
                        self.dirty.insert(*id);
                    }
                }
            }
            ShardOperation::SetPayload {
                points,
                payload,
                key,
            } => {
                let path = key.as_deref().and_then(|k| k.parse::<JsonPath>().ok());
                self.edit_payload(points, seq, |current| match &path {
                    Some(path) => path.set(current, payload.clone()),
                    None => merge_payload(current, payload),
                });
            }
            ShardOperation::OverwritePayload { points, payload } => {
                self.edit_payload(points, seq, |current| *current = payload.clone());
            }
            ShardOperation::DeletePayload { points, keys } => {
                let paths: Vec<JsonPath> = keys.iter().filter_map(|k| k.parse().ok()).collect();
                self.edit_payload(points, seq, |current| {
                    for path in &paths {
                        path.remove(current);
                    }
                });
            }
            ShardOperation::ClearPayload { points } => {
                self.edit_payload(points, seq, Payload::clear);
            }
        }
        self.last_seq = seq;
    }

    /// `filter` with its text conditions bound to this shard's full-text indexes.
    fn bind<'f>(&self, filter: &'f Filter) -> std::borrow::Cow<'f, Filter> {
        filter.bind_text(&|key| self.payload_schema.text_params(key))
    }

    /// Whether the point at `loc` passes `filter` (already bound, see [`ShardState::bind`]).
    fn matches(&self, id: &PointId, loc: &Location, filter: &crate::index::filter::Filter) -> bool {
        let seg = &self.segments[&loc.segment];
        filter.check_point(*id, &seg.payload(loc.offset), &|name| {
            seg.has_vector(name, loc.offset)
        })
    }

    /// Calls `visit` with every live point (segment, offset) that passes `filter` (bound, see
    /// [`ShardState::bind`]; `None` passes all) and `rest` (the checks besides the filter).
    /// Where a segment's payload indexes plan the filter, only their candidates are looked
    /// at, and a candidate an exact plan settled is checked with `rest` alone, so neither
    /// reads its payload: the search path's rule (see `Narrowed`), for scans of the whole
    /// shard (counts, selections by filter, facets, selective scrolls).
    fn for_each_match(
        &self,
        filter: Option<&Filter>,
        rest: Option<PointPredicate<'_>>,
        visit: &mut dyn FnMut(&Segment, u32),
    ) {
        for seg in self.segments.values() {
            if seg.live_count() == 0 {
                continue;
            }
            let narrowed = filter.and_then(|f| self.narrow(seg, f));
            visit_segment(seg, narrowed.as_ref(), filter, rest, visit);
        }
    }

    /// `seg`'s candidates for `filter` from its payload indexes, if they plan it.
    fn narrow(&self, seg: &Segment, filter: &Filter) -> Option<Narrowed> {
        self.plan(seg, filter).map(|plan| Narrowed::new(&plan, seg))
    }

    /// `seg`'s payload-index plan for `filter`, if its indexes plan it.
    fn plan<'s>(&self, seg: &'s Segment, filter: &Filter) -> Option<Plan<'s>> {
        let (index, _) = seg.payload_index()?;
        let has_id = |ids: &[PointId]| -> Vec<u32> {
            ids.iter()
                .filter_map(|id| self.locations.get(id))
                .filter(|l| l.segment == seg.id)
                .map(|l| l.offset)
                .collect()
        };
        index.plan(filter, &has_id)
    }

    /// The first `limit` points from `from` in id order that pass `filter` (bound) and `rest`,
    /// gathered from the payload indexes' candidates (and from a full check of segments they
    /// do not plan) rather than by walking the points in id order; `None` (unless `always`)
    /// when that would look at more points than the walk is expected to, which checks about
    /// `limit * points / candidates` of them before it has `limit`.
    fn scroll_candidates(
        &self,
        from: Option<PointId>,
        limit: usize,
        filter: &Filter,
        rest: Option<PointPredicate<'_>>,
        always: bool,
    ) -> Option<Vec<(PointId, SegmentId, u32)>> {
        // Decided on the plans' estimates, before any candidate set is built: a broad
        // filter's would cost more than the few points the walk checks.
        let plans: Vec<(&Segment, Option<Plan<'_>>)> = self
            .segments
            .values()
            .filter(|seg| seg.live_count() > 0)
            .map(|seg| (seg, self.plan(seg, filter)))
            .collect();
        let candidates: usize = plans
            .iter()
            .map(|(seg, plan)| {
                plan.as_ref().map_or(seg.live_count(), |p| {
                    p.estimate + seg.payload_touched_count()
                })
            })
            .sum();
        let walk = limit.saturating_add(1).saturating_mul(self.locations.len());
        if !always && candidates.saturating_mul(candidates) >= walk {
            return None;
        }
        let both = |id: PointId, p: PayloadRead<'_>, has: crate::index::filter::HasVector<'_>| {
            from.is_none_or(|f| id >= f) && rest.is_none_or(|r| r(id, p, has))
        };
        let mut hits = Vec::new();
        for (seg, plan) in &plans {
            let narrowed = plan.as_ref().map(|p| Narrowed::new(p, seg));
            visit_segment(
                seg,
                narrowed.as_ref(),
                Some(filter),
                Some(&both),
                &mut |seg, o| hits.push((seg.id(o), seg.id, o)),
            );
        }
        // The `limit` lowest ids, in order, without sorting the rest.
        if hits.len() > limit {
            hits.select_nth_unstable_by_key(limit, |(id, _, _)| *id);
            hits.truncate(limit);
        }
        hits.sort_unstable_by_key(|(id, _, _)| *id);
        Some(hits)
    }

    fn select(&self, selection: &PointSelection) -> Result<Vec<PointId>, ShardError> {
        match selection {
            PointSelection::Ids(ids) => {
                if let Some(missing) = ids.iter().find(|id| !self.locations.contains_key(id)) {
                    return Err(ShardError::PointNotFound(*missing));
                }
                Ok(ids.clone())
            }
            PointSelection::IdsIfPresent(ids) => Ok(ids
                .iter()
                .filter(|id| self.locations.contains_key(id))
                .copied()
                .collect()),
            PointSelection::Filter(filter) => {
                let filter = self.bind(filter);
                let mut ids = Vec::new();
                self.for_each_match(Some(&filter), None, &mut |seg, o| ids.push(seg.id(o)));
                // In id order, as the operation logged and passed on always was.
                ids.sort_unstable();
                Ok(ids)
            }
        }
    }

    /// Turns a request into the operation to log, under the write lock: selections become id
    /// lists, conditional upserts the points they really write. Fails, changing nothing, when
    /// a payload or vector update names a point that does not exist.
    fn resolve(&self, request: UpdateRequest) -> Result<ShardOperation, ShardError> {
        Ok(match request {
            UpdateRequest::Upsert(points) => ShardOperation::Upsert(points),
            UpdateRequest::ConditionalUpsert {
                points,
                mode,
                filter,
            } => {
                let filter = filter.as_ref().map(|f| self.bind(f));
                ShardOperation::Upsert(
                    points
                        .into_iter()
                        .filter(|p| match self.locations.get(&p.id) {
                            None => mode != UpdateMode::UpdateOnly,
                            Some(loc) => {
                                mode != UpdateMode::InsertOnly
                                    && filter.as_ref().is_none_or(|f| self.matches(&p.id, loc, f))
                            }
                        })
                        .collect(),
                )
            }
            UpdateRequest::UpdateVectors {
                points,
                filter,
                missing_ok,
            } => {
                if !missing_ok
                    && let Some((missing, _)) = points
                        .iter()
                        .find(|(id, _)| !self.locations.contains_key(id))
                {
                    return Err(ShardError::PointNotFound(*missing));
                }
                let filter = filter.as_ref().map(|f| self.bind(f));
                ShardOperation::UpdateVectors(
                    points
                        .into_iter()
                        .filter(|(id, _)| {
                            self.locations.get(id).is_some_and(|loc| {
                                filter.as_ref().is_none_or(|f| self.matches(id, loc, f))
                            })
                        })
                        .collect(),
                )
            }
            UpdateRequest::DeleteVectors { selection, names } => ShardOperation::DeleteVectors {
                points: self.select(&selection)?,
                names,
            },
            UpdateRequest::Delete(sel) => ShardOperation::Delete(match sel {
                // Deleting an absent point is not an error.
                PointSelection::Ids(ids) => ids,
                other => self.select(&other)?,
            }),
            UpdateRequest::SetPayload {
                selection,
                payload,
                key,
            } => ShardOperation::SetPayload {
                points: self.select(&selection)?,
                payload,
                key,
            },
            UpdateRequest::OverwritePayload { selection, payload } => {
                ShardOperation::OverwritePayload {
                    points: self.select(&selection)?,
                    payload,
                }
            }
            UpdateRequest::DeletePayload { selection, keys } => ShardOperation::DeletePayload {
                points: self.select(&selection)?,
                keys,
            },
            UpdateRequest::ClearPayload(selection) => ShardOperation::ClearPayload {
                points: self.select(&selection)?,
            },
        })
    }

    fn stored(&self, id: &PointId) -> Option<StoredPoint> {
        let (seg, offset) = self.point(id)?;
        Some(StoredPoint {
            version: seg.version(offset),
            vectors: seg.vectors(offset),
            payload: seg.payload(offset).into_owned(),
        })
    }

    fn record(
        &self,
        seg: &Segment,
        offset: u32,
        with_payload: bool,
        with_vector: &WithVector,
    ) -> Record {
        Record {
            id: seg.id(offset),
            version: seg.version(offset),
            payload: with_payload.then(|| seg.payload(offset).into_owned()),
            vector: vectors_wanted(seg, offset, with_vector),
        }
    }
}

/// A candidate in a top-k selection; `key` is the score oriented so that larger is better.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    key: f32,
    score: f32,
    id: PointId,
    segment: SegmentId,
    offset: u32,
}

impl PartialEq for Candidate {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == std::cmp::Ordering::Equal
    }
}
impl Eq for Candidate {}
impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Candidate {
    /// "Greater" means ranked earlier: better score, then smaller id.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key
            .total_cmp(&other.key)
            .then_with(|| other.id.cmp(&self.id))
    }
}

/// Keeps the `k` best candidates seen.
struct TopK {
    k: usize,
    // A min-heap on rank: the root is the worst kept candidate.
    heap: BinaryHeap<std::cmp::Reverse<Candidate>>,
}

impl TopK {
    fn new(k: usize) -> TopK {
        TopK {
            k,
            heap: BinaryHeap::with_capacity(k.min(4096) + 1),
        }
    }

    fn push(&mut self, c: Candidate) {
        if self.heap.len() < self.k {
            self.heap.push(std::cmp::Reverse(c));
        } else if let Some(worst) = self.heap.peek()
            && c > worst.0
        {
            self.heap.pop();
            self.heap.push(std::cmp::Reverse(c));
        }
    }

    fn into_sorted(self) -> Vec<Candidate> {
        let mut v: Vec<Candidate> = self.heap.into_iter().map(|r| r.0).collect();
        v.sort_by(|a, b| b.cmp(a));
        v
    }
}

/// Shared machinery for building graphs: a rayon pool of the node's indexing threads
/// (`storage.optimizer_threads`), one build at a time, so indexing never takes more than those
/// threads away from serving.
pub struct IndexBuilder {
    /// The node's budget of indexing threads, all in `pool`.
    threads: usize,
    pool: Arc<rayon::ThreadPool>,
    slot: Mutex<()>,
}

impl IndexBuilder {
    pub fn new(threads: usize) -> IndexBuilder {
        let threads = threads.max(1);
        IndexBuilder {
            threads,
            pool: Arc::new(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .thread_name(|i| format!("shoal-index-{i}"))
                    .build()
                    .expect("the indexing thread pool starts"),
            ),
            slot: Mutex::new(()),
        }
    }

    /// The threads a graph build uses for `max_indexing_threads` (Qdrant's `hnsw_config`
    /// setting): 0 is "auto", the node's whole budget; any other value is that many threads,
    /// but never more than the budget.
    pub fn threads_for(&self, max_indexing_threads: usize) -> usize {
        match max_indexing_threads {
            0 => self.threads,
            n => n.min(self.threads),
        }
    }

    /// The pool one graph build with `max_indexing_threads` runs on (see
    /// [`Self::threads_for`]): the node's pool, or a smaller one made for this build (cheap
    /// next to the build, and gone with it). If that cannot be made, the node's pool.
    pub fn pool_for(&self, max_indexing_threads: usize) -> Arc<rayon::ThreadPool> {
        let threads = self.threads_for(max_indexing_threads);
        if threads == self.threads {
            return Arc::clone(&self.pool);
        }
        match rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("shoal-index-small-{i}"))
            .build()
        {
            Ok(pool) => Arc::new(pool),
            Err(error) => {
                tracing::warn!(%error, threads, "no pool for a smaller graph build; using the node's");
                Arc::clone(&self.pool)
            }
        }
    }
}

/// The optimizer's view of a shard, for the collection's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptimizerStatus {
    /// Nothing to do.
    Idle,
    /// Work is pending or running.
    Busy,
    /// Work is pending but optimizations are switched off (`max_optimization_threads: 0`):
    /// Qdrant's `grey`.
    Paused,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShardStats {
    pub points: usize,
    pub indexed_vectors: usize,
    pub segments: usize,
    pub last_seq: u64,
    pub flushed_seq: u64,
}

pub struct LocalShard {
    dir: PathBuf,
    state: RwLock<ShardState>,
    wal: Mutex<Wal>,
    store: PointStore,
    flush_lock: Mutex<()>,
    /// Raised when the shard is dropped or the node stops: background work ends early.
    cancelled: AtomicBool,
    /// Held shared by everything that writes the shard's files (updates, flushes, optimizer
    /// steps); [`LocalShard::retire`] takes it exclusively and sets it, after which nothing
    /// touches the directory again, so it can be renamed away and another replica put in its
    /// place without the old one writing into the new one.
    retired: RwLock<bool>,
    /// Optimizer steps in progress.
    optimizing: AtomicUsize,
    /// What the optimizer ran and runs, for introspection only (nothing reads it to decide).
    optimizations: Mutex<OptimizationLog>,
    pub(crate) wake_optimizer: tokio::sync::Notify,
}

/// Checks the vectors of a point against the collection's configuration: every name is a
/// configured vector of the same kind and size.
pub fn check_vectors(config: &CollectionConfig, vectors: &NamedVectors) -> Result<(), ShardError> {
    vectors
        .iter()
        .try_for_each(|(name, vector)| check_vector(config, name, vector))
}

/// Checks one named vector against the collection's configuration (see [`check_vectors`]).
fn check_vector(
    config: &CollectionConfig,
    name: &str,
    vector: &VectorData,
) -> Result<(), ShardError> {
    let shown = if name.is_empty() { "default" } else { name };
    match (config.vector_kind(name), vector) {
        (None, _) => {
            return Err(ShardError::BadInput(format!(
                "Not existing vector name error: {shown}"
            )));
        }
        (Some(VectorKind::Dense(p)), VectorData::Dense(v)) => {
            if v.len() != p.size {
                return Err(ShardError::WrongDimension {
                    expected: p.size,
                    got: v.len(),
                });
            }
        }
        (Some(VectorKind::Multi(p)), VectorData::Multi(vs)) => {
            if vs.is_empty() {
                return Err(ShardError::BadInput(format!(
                    "multivector `{shown}` must contain at least one vector"
                )));
            }
            if let Some(bad) = vs.iter().find(|v| v.len() != p.size) {
                return Err(ShardError::WrongDimension {
                    expected: p.size,
                    got: bad.len(),
                });
            }
        }
        (Some(VectorKind::Sparse(_)), VectorData::Sparse(_)) => {}
        (Some(kind), given) => {
            let expected = match kind {
                VectorKind::Dense(_) => "dense",
                VectorKind::Multi(_) => "multi",
                VectorKind::Sparse(_) => "sparse",
            };
            return Err(ShardError::BadInput(format!(
                "vector `{shown}` is a {expected} vector, got a {} vector",
                given.kind()
            )));
        }
    }
    Ok(())
}

/// Qdrant's IDF of a sparse dimension: `ln(1 + (n - df + 0.5) / (df + 0.5))`, where `n` is the
/// number of points with the vector and `df` the number of them with a value in the dimension.
pub fn idf(points: usize, df: usize) -> f32 {
    let (n, df) = (points as f32, df as f32);
    (1.0 + (n - df + 0.5) / (df + 0.5)).ln()
}

impl LocalShard {
    /// Opens the shard in `dir` (creating it when new): loads the flushed points and replays the
    /// WAL after them.
    pub fn open(
        dir: &Path,
        config: Arc<CollectionConfig>,
        sync: SyncMode,
    ) -> Result<LocalShard, ShardError> {
        LocalShard::open_checked(dir, config, sync, Verify::Checksums)
    }

    /// [`LocalShard::open`], verifying segment files as `verify` says (see
    /// [`Segment::open_dir_checked`]).
    pub fn open_checked(
        dir: &Path,
        config: Arc<CollectionConfig>,
        sync: SyncMode,
        verify: Verify,
    ) -> Result<LocalShard, ShardError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let store = PointStore::open(&dir.join(POINT_STORE_FILE))?;
        let wal_dir = dir.join("wal");
        let wal = Wal::open(
            &wal_dir,
            (config.wal_config.wal_capacity_mb as u64) << 20,
            sync,
        )
        .map_err(io_err(&wal_dir))?;
        let mut state = ShardState {
            freeze_at: config.indexing_threshold_points(),
            config: Arc::clone(&config),
            segments: BTreeMap::new(),
            appendable: 0,
            next_segment_id: 1,
            locations: BTreeMap::new(),
            dirty: HashSet::new(),
            last_seq: 0,
            flushed_seq: 0,
            deletions_dirty: HashSet::new(),
            segments_dirty: false,
            retired: Vec::new(),
            vectors_epoch: 0,
            payload_schema: Arc::default(),
            clocks: ReplicaClocks::new(),
        };
        let flushed = store.load()?;
        match &flushed.clocks {
            Some(bytes) => {
                state.clocks = postcard::from_bytes(bytes).map_err(|e| {
                    ShardError::Store(StoreError::Corrupt(format!("clock state: {e}")))
                })?;
            }
            // A new replica, or one whose points came from elsewhere (a restored snapshot
            // image, a store written before clock tags): its local clock's id is stored
            // before any record carries it. Points it holds already count as one local
            // write that no WAL record shows, so it brings no other replica up to date from
            // its WAL until it has merged a copy's clocks (see `WalBase`).
            None => {
                if !flushed.segments.is_empty() || !flushed.tail.is_empty() {
                    let tag = state.clocks.next_local();
                    state.clocks.applied.advance(&tag);
                    state
                        .clocks
                        .base
                        .fold(&WalMark::Op(Some(&tag)), state.clocks.own);
                }
                store.commit_batch(&FlushBatch {
                    seq: flushed.seq,
                    clocks: Some(encode_clocks(&state.clocks)),
                    ..FlushBatch::default()
                })?
            }
        }
        let flushed_seq = flushed.seq;
        let segments_dir = dir.join(SEGMENTS_DIR);
        std::fs::create_dir_all(&segments_dir).map_err(io_err(&segments_dir))?;
        // What the point store does not list is not part of the shard: an optimization that
        // did not reach its flush, or a segment replaced since.
        let listed: Vec<SegmentId> = flushed.segments.iter().map(|(id, _)| *id).collect();
        for stray in stray_dirs(&segments_dir, &listed).map_err(io_err(&segments_dir))? {
            tracing::info!(path = %stray.display(), "removing a segment directory no flush lists");
            std::fs::remove_dir_all(&stray).map_err(io_err(&stray))?;
        }
        for (id, voided) in flushed.segments {
            let path = segment_dir(&segments_dir, id);
            let mut seg =
                Segment::open_dir_checked(&path, &config, &voided, verify).map_err(|reason| {
                    ShardError::CorruptSegment {
                        path: path.clone(),
                        reason,
                    }
                })?;
            if seg.id != id {
                return Err(ShardError::CorruptSegment {
                    path,
                    reason: format!("meta.json names segment {}", seg.id),
                });
            }
            if let Some(bits) = flushed.deleted.get(&id) {
                seg.apply_deleted_bitmap(bits);
            }
            state.next_segment_id = state.next_segment_id.max(id + 1);
            for o in seg.live_offsets().collect::<Vec<_>>() {
                let point = seg.id(o);
                if let Some(old) = state.locations.get(&point).copied() {
                    // Never written by Shoal (a flush lists a point in one place), but if two
                    // segments hold a point, the newer copy wins rather than both serving.
                    let other = &state.segments[&old.segment];
                    if other.version(old.offset) >= seg.version(o) {
                        seg.delete(o);
                        continue;
                    }
                    state.remove_point(&point);
                }
                state.locations.insert(
                    point,
                    Location {
                        segment: id,
                        offset: o,
                    },
                );
            }
            state.segments.insert(id, seg);
        }
        // The point store writes a point's override in the same transaction as the segment it
        // lives in, so an override is always newer than that segment's file, whatever its
        // version: after a shard image is restored the sequence numbers start again, below
        // the versions the image's files hold.
        for (id, o) in flushed.overrides {
            if let Some((seg, offset)) = state.point_mut(&id)
                && o.version != seg.version(offset)
            {
                seg.set_payload(offset, o.payload);
                seg.set_version(offset, o.version);
            }
        }
        let sealed = state.locations.len();
        state.appendable = state.new_segment();
        for (id, mut p) in flushed.tail {
            // A crash between a configuration change (a vector removed or reshaped) and the
            // flush it makes leaves points stored with that vector: it no longer counts.
            let before = p.vectors.len();
            p.vectors
                .retain(|name, vector| check_vector(&config, name, vector).is_ok());
            if p.vectors.len() != before {
                state.dirty.insert(id);
            }
            state.insert_point(id, &p.vectors, p.payload, p.version);
        }
        state.last_seq = flushed_seq;
        state.flushed_seq = flushed_seq;

        let records = wal.read_after(flushed_seq).map_err(io_err(&wal_dir))?;
        let replayed = records.len();
        for record in records {
            let entry = WalEntry::decode(&record.data).map_err(|e| ShardError::CorruptWal {
                seq: record.seq,
                reason: e.to_string(),
            })?;
            state.apply_entry(record.seq, &entry);
        }
        // New operations must be numbered above every version the shard holds: a restored
        // shard image brings versions from another replica's sequence while its own WAL starts
        // empty, and a payload change numbered below (or at) its file's version would look
        // unchanged to the flush and older than the file after a restart.
        let highest_version = state
            .segments
            .values()
            .map(Segment::max_version)
            .max()
            .unwrap_or(0);
        state.last_seq = state.last_seq.max(wal.last_seq()).max(highest_version);
        tracing::info!(
            dir = %dir.display(),
            points = state.locations.len(),
            in_sealed_segments = sealed,
            flushed_seq,
            replayed,
            last_seq = state.last_seq,
            "shard opened"
        );
        Ok(LocalShard {
            dir: dir.to_path_buf(),
            state: RwLock::new(state),
            wal: Mutex::new(wal),
            store,
            flush_lock: Mutex::new(()),
            cancelled: AtomicBool::new(false),
            retired: RwLock::new(false),
            optimizing: AtomicUsize::new(0),
            optimizations: Mutex::new(OptimizationLog::default()),
            wake_optimizer: tokio::sync::Notify::new(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn config(&self) -> Arc<CollectionConfig> {
        Arc::clone(&self.state.read().config)
    }

    /// Adopts a changed configuration (named vectors added or removed): every segment conforms
    /// to it (see [`Segment::conform`]), the shard is flushed at once (points that lost a
    /// vector are stored without it, segments on disk record the columns that no longer
    /// count), and the optimizer re-indexes segments whose index was dropped. Blocking (a
    /// flush).
    pub fn set_config(&self, config: Arc<CollectionConfig>) {
        let mut state = self.state.write();
        if state.config.params.vectors != config.params.vectors
            || state.config.params.sparse_vectors != config.params.sparse_vectors
        {
            state.vectors_epoch += 1;
        }
        let mut changed = Vec::new();
        for seg in state.segments.values_mut() {
            for o in seg.conform(&config) {
                changed.push(seg.id(o));
            }
        }
        state.dirty.extend(changed);
        // `indexing_threshold` (and `max_segment_size`, and the vectors' size) apply at once,
        // to the points already in the appendable segment too, as Qdrant's indexing optimizer
        // picks up any segment past the threshold: indexing switched off for a bulk upload and
        // then on again indexes the upload.
        state.freeze_at = config.indexing_threshold_points();
        state.config = config;
        state.freeze_if_full();
        // Columns voided in segments on disk are recorded with the segment list.
        state.segments_dirty = true;
        drop(state);
        // Flushed now, not in a few seconds: a vector re-created under the same name before a
        // crash must not find the old values in the point store or a segment directory.
        if let Err(error) = self.flush() {
            tracing::error!(dir = %self.dir.display(), %error, "could not flush after a configuration change");
        }
        self.wake_optimizer.notify_one();
    }

    /// Adopts the collection's declared payload indexes (`payload_schema`). Filters are bound
    /// to the new schema at once (a `text` index changes what text conditions mean); the
    /// indexes themselves are built by the optimizer's next step, one segment at a time (writes
    /// to the shard wait for each segment's build, reads do not; about 0.2 s per million points
    /// and field). Until a segment has them it is searched by sampling and scanning, with the
    /// same answers. Cheap when nothing changed: the reconcile loop calls it on every pass.
    pub fn set_payload_schema(&self, entries: &BTreeMap<String, PayloadIndexEntry>) {
        let schema = PayloadSchema::new(entries);
        if *self.state.read().payload_schema == schema {
            return;
        }
        self.state.write().payload_schema = Arc::new(schema);
        self.wake_optimizer.notify_one();
    }

    /// `filter` as this shard checks it: `text`, `text_any` and `phrase` conditions on keys
    /// with a full-text index tokenized by that index (see `index::text`), the rest as given.
    pub fn bind_filter<'f>(&self, filter: &'f Filter) -> std::borrow::Cow<'f, Filter> {
        self.state.read().bind(filter)
    }

    /// Gives every frozen segment payload indexes for the current schema (or drops them when
    /// there is none), one segment at a time.
    fn refresh_payload_indexes(&self) {
        let stale: Vec<SegmentId> = {
            let state = self.state.read();
            state
                .segments
                .values()
                .filter(|s| payload_index_stale(&state.payload_schema, s))
                .map(|s| s.id)
                .collect()
        };
        for id in stale {
            let state = self.state.upgradable_read();
            let Some(seg) = state.segments.get(&id) else {
                continue;
            };
            if !payload_index_stale(&state.payload_schema, seg) {
                continue;
            }
            let index = payload_index_for(&state.payload_schema, seg);
            let mut state = RwLockUpgradableReadGuard::upgrade(state);
            if let Some(seg) = state.segments.get_mut(&id) {
                seg.set_payload_index(index);
            }
        }
    }

    /// Applies an update: resolves its selection, appends it to the WAL, applies it. When this
    /// returns `Ok(seq)` the update is durable (in the WAL) and visible to reads. Tagged with
    /// the replica's local clock (see [`LocalShard::update_stamped`]).
    pub fn update(&self, request: UpdateRequest) -> Result<u64, ShardError> {
        match self.update_stamped(request, Stamp::Local)? {
            UpdateOutcome::Applied(seq) | UpdateOutcome::Duplicate(seq) => Ok(seq),
            UpdateOutcome::Behind(_) => unreachable!("a local write is never behind"),
        }
    }

    /// [`LocalShard::update`] for an update that came as `stamp` says: a coordinator's update
    /// whose tick this replica applied already is acknowledged without being applied again,
    /// and one with an older tick is refused ([`UpdateOutcome::Behind`]); the check and the
    /// WAL append happen under the shard's write lock, so two copies of one update never both
    /// apply.
    pub fn update_stamped(
        &self,
        request: UpdateRequest,
        stamp: Stamp,
    ) -> Result<UpdateOutcome, ShardError> {
        self.update_inner(request, stamp, false)
            .map(|(outcome, _)| outcome)
    }

    /// [`LocalShard::update_stamped`] that also returns the operation the replica logged and
    /// applied: every selection resolved to the ids it touched here, a conditional upsert
    /// reduced to the points it really wrote (`None` when nothing was applied). What a
    /// resharding passes on to another shard: that shard must change exactly the points this
    /// one did, not whatever a filter matches there.
    pub fn update_resolved(
        &self,
        request: UpdateRequest,
        stamp: Stamp,
    ) -> Result<(UpdateOutcome, Option<ShardOperation>), ShardError> {
        self.update_inner(request, stamp, true)
    }

    fn update_inner(
        &self,
        request: UpdateRequest,
        stamp: Stamp,
        keep_operation: bool,
    ) -> Result<(UpdateOutcome, Option<ShardOperation>), ShardError> {
        {
            let config = self.config();
            let written: Box<dyn Iterator<Item = &NamedVectors>> = match &request {
                UpdateRequest::Upsert(points) | UpdateRequest::ConditionalUpsert { points, .. } => {
                    Box::new(points.iter().map(|p: &PointWrite| &p.vectors))
                }
                UpdateRequest::UpdateVectors { points, .. } => {
                    Box::new(points.iter().map(|p| &p.1))
                }
                _ => Box::new(std::iter::empty()),
            };
            for vectors in written {
                check_vectors(&config, vectors)?;
            }
        }
        let retired = self.retired.read();
        if *retired {
            return Err(ShardError::Retired);
        }
        let mut state = self.state.write();
        let tag = match stamp {
            Stamp::Local => None,
            Stamp::Coordinator(tag) => match state.clocks.applied.admit(&tag) {
                Admission::Apply => Some(tag),
                Admission::Duplicate => {
                    return Ok((UpdateOutcome::Duplicate(state.last_seq), None));
                }
                Admission::Behind(tick) => return Ok((UpdateOutcome::Behind(tick), None)),
            },
            Stamp::Forced(tag) => Some(tag),
        };
        let op = state.resolve(request)?;
        if op.is_empty() {
            // Nothing to log, and the clock stays: a tick that no record shows must not count
            // as applied after a restart (a later recovery replays a little more instead).
            return Ok((UpdateOutcome::Applied(state.last_seq), None));
        }
        let kept = keep_operation.then(|| op.clone());
        let clock = Some(tag.unwrap_or_else(|| state.clocks.next_local()));
        let seq = self.append(&mut state, WalEntry::Op { clock, op })?;
        drop(state);
        drop(retired);
        self.wake_optimizer.notify_one();
        Ok((UpdateOutcome::Applied(seq), kept))
    }

    /// Appends `entry` to the WAL as the next record and applies it. Under the write lock.
    fn append(&self, state: &mut ShardState, entry: WalEntry) -> Result<u64, ShardError> {
        let seq = state.last_seq + 1;
        self.wal
            .lock()
            .append(seq, &entry.encode())
            .map_err(io_err(&self.dir))?;
        state.apply_entry(seq, &entry);
        Ok(seq)
    }

    /// The replica's clocks: the highest tick applied per clock.
    pub fn clocks(&self) -> ClockMap {
        self.state.read().clocks.applied.clone()
    }

    /// The recovery point: every update with a tick at or below its clock's here is in this
    /// replica (the clocks, or the floor while a copy is being received).
    pub fn recovery_point(&self) -> ClockMap {
        self.state.read().clocks.recovery_point()
    }

    /// This replica starts receiving copy `copy` (a transfer's id) of the shard, as a transfer's
    /// destination; returns its recovery point, which stays as it is until
    /// [`LocalShard::finish_copy`], whatever is forwarded meanwhile: a copy that fails halfway
    /// claims nothing it may not hold. Beginning again (another attempt, another transfer)
    /// keeps the point and takes the copy over; steps of the copy it replaced are refused. A
    /// `fresh` copy (the replica is cleared first) starts from nothing. Durable (a WAL record).
    pub fn begin_copy(&self, copy: u64, fresh: bool) -> Result<ClockMap, ShardError> {
        let retired = self.retired.read();
        if *retired {
            return Err(ShardError::Retired);
        }
        let mut state = self.state.write();
        let floor = if fresh {
            ClockMap::default()
        } else {
            state.clocks.recovery_point()
        };
        self.append(
            &mut state,
            WalEntry::BeginCopy {
                copy,
                floor: floor.clone(),
                fresh,
            },
        )?;
        Ok(floor)
    }

    /// Copy `copy` is complete: this replica holds every update the source's clocks `merged`
    /// name. Clears the floor. Refused (and nothing changes) when `copy` is not the copy being
    /// received. Durable (a WAL record).
    pub fn finish_copy(&self, copy: u64, merged: ClockMap) -> Result<(), ShardError> {
        let retired = self.retired.read();
        if *retired {
            return Err(ShardError::Retired);
        }
        let mut state = self.state.write();
        state.clocks.check_copy(copy)?;
        let fresh = state.clocks.floor.as_ref().is_some_and(|f| f.fresh);
        self.append(
            &mut state,
            WalEntry::FinishCopy {
                copy,
                merged,
                fresh,
            },
        )?;
        Ok(())
    }

    /// Applies operations of copy `copy` replayed from another replica's WAL, in its order,
    /// whatever their ticks (see [`LocalShard::wal_delta`]). Refused (and nothing changes) when
    /// `copy` is not the copy being received. Returns the last operation number.
    pub fn replay(
        &self,
        copy: u64,
        ops: Vec<(Option<ClockTag>, ShardOperation)>,
    ) -> Result<u64, ShardError> {
        let retired = self.retired.read();
        if *retired {
            return Err(ShardError::Retired);
        }
        let mut state = self.state.write();
        state.clocks.check_copy(copy)?;
        for (tag, op) in ops {
            let clock = Some(tag.unwrap_or_else(|| state.clocks.next_local()));
            self.append(&mut state, WalEntry::Op { clock, op })?;
        }
        let seq = state.last_seq;
        drop(state);
        drop(retired);
        self.wake_optimizer.notify_one();
        Ok(seq)
    }

    /// What a replica at recovery `point` misses of this one: every operation in this WAL
    /// from the first record the point does not cover ([`delta_start`]), in order, and this
    /// replica's clocks. Replaying all of them (not only the uncovered ones) in this order
    /// leaves the other replica exactly as this one, even where it applied some of them in
    /// another order. [`NoDelta`] when the WAL no longer reaches back to the point
    /// ([`WalBase::reaches`]), when the delta would cross the start of a fresh copy this
    /// replica received (replayed elsewhere, its clearing would remove only the points this
    /// replica held then), while this replica receives a copy itself, or when the point is
    /// past this replica on a coordinator's clock: then only a full copy helps. Reads the WAL (blocking); writes wait meanwhile, so the delta and the clocks
    /// describe one state.
    pub fn wal_delta(&self, point: &ClockMap) -> Result<Result<WalDelta, NoDelta>, ShardError> {
        let state = self.state.read();
        let own = state.clocks.own;
        if state.clocks.floor.is_some() {
            return Ok(Err(NoDelta::SourceReceiving));
        }
        let records = self.wal.lock().read_after(0).map_err(io_err(&self.dir))?;
        let entries = records
            .iter()
            .map(|r| {
                WalEntry::decode(&r.data).map_err(|e| ShardError::CorruptWal {
                    seq: r.seq,
                    reason: e.to_string(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let marks: Vec<WalMark<'_>> = entries.iter().map(WalEntry::mark).collect();
        // Local writes the WAL no longer shows are covered by a merge after them that the
        // point covers, as in `delta_start`.
        let merge_covered = marks
            .iter()
            .any(|m| matches!(m, WalMark::Merge(c) if point.covers(c, Some(own))));
        let base = &state.clocks.base;
        if !(base.reaches(point, own) || merge_covered && point.covers(&base.clocks, Some(own))) {
            return Ok(Err(NoDelta::NotReached));
        }
        // A point past this replica on a coordinator's clock holds an update this replica
        // never applied (one that failed here, so it was not acknowledged, or was not passed
        // on): replaying this WAL would keep it there, so only a full copy makes the two
        // equal. Qdrant refuses such a recovery point too.
        let applied = &state.clocks.applied;
        if point
            .tags()
            .any(|t| t.clock != LOCAL_CLOCK && applied.tick(t.key()) < t.tick)
        {
            return Ok(Err(NoDelta::PointAhead));
        }
        let start = delta_start(&marks, point, own).unwrap_or(entries.len());
        if marks[start..]
            .iter()
            .any(|m| matches!(m, WalMark::FreshCopy))
        {
            return Ok(Err(NoDelta::AcrossFreshCopy));
        }
        let ops = entries
            .into_iter()
            .skip(start)
            .filter_map(|e| match e {
                WalEntry::Op { clock, op } => Some((clock, op)),
                _ => None,
            })
            .collect();
        Ok(Ok(WalDelta {
            ops,
            clocks: state.clocks.applied.clone(),
        }))
    }

    /// Writes what changed since the last flush to the point store in one transaction (see
    /// the module docs), drops the WAL files that this makes redundant, and removes the
    /// directories of segments the store no longer lists.
    pub fn flush(&self) -> Result<(), ShardError> {
        let retired = self.retired.read();
        if *retired {
            return Ok(());
        }
        let _one_flush_at_a_time = self.flush_lock.lock();
        let mut state = self.state.write();
        if state.dirty.is_empty()
            && state.flushed_seq == state.last_seq
            && state.deletions_dirty.is_empty()
            && !state.segments_dirty
            && state.retired.is_empty()
        {
            return Ok(());
        }
        let dirty = std::mem::take(&mut state.dirty);
        let deletions_dirty = std::mem::take(&mut state.deletions_dirty);
        let segments_dirty = std::mem::replace(&mut state.segments_dirty, false);
        let retired = std::mem::take(&mut state.retired);
        let seq = state.last_seq;
        // Readers may go on while we copy; writers wait, so the copy is exactly the state at `seq`.
        let state = RwLockWriteGuard::downgrade(state);
        let mut clocks = state.clocks.clone();
        let retain_closed = state.config.wal_config.wal_retain_closed;
        let mut batch = FlushBatch {
            seq,
            ..FlushBatch::default()
        };
        for id in &dirty {
            match state.point(id) {
                Some((seg, offset)) if seg.is_persisted() => {
                    batch.tail.push((*id, None));
                    let changed = seg.file_version(offset) != Some(seg.version(offset));
                    let payload = changed.then(|| PayloadOverride {
                        version: seg.version(offset),
                        payload: seg.payload(offset).into_owned(),
                    });
                    batch.overrides.push((*id, payload));
                }
                Some(_) => {
                    batch.tail.push((*id, state.stored(id)));
                    batch.overrides.push((*id, None));
                }
                None => {
                    batch.tail.push((*id, None));
                    batch.overrides.push((*id, None));
                }
            }
        }
        for id in &deletions_dirty {
            if let Some(seg) = state.segments.get(id).filter(|s| s.is_persisted()) {
                batch.deleted.push((*id, seg.deleted_bitmap()));
            }
        }
        if segments_dirty {
            batch.segments = Some(
                state
                    .segments
                    .values()
                    .filter(|s| s.is_persisted())
                    .map(|s| (s.id, s.voided_columns()))
                    .collect(),
            );
        }
        drop(state);
        // The WAL files this flush lets go of are folded into the base first, and the base is
        // stored with the flush: a crash before the files are removed leaves a base that
        // claims more than it must, which only costs a full copy where a delta would do.
        let dropped = self
            .wal
            .lock()
            .dropped_by(seq, retain_closed)
            .map_err(io_err(&self.dir))?;
        for record in &dropped {
            let entry = WalEntry::decode(&record.data).map_err(|e| ShardError::CorruptWal {
                seq: record.seq,
                reason: e.to_string(),
            })?;
            clocks.base.fold(&entry.mark(), clocks.own);
        }
        batch.clocks = Some(encode_clocks(&clocks));
        if let Err(e) = self.store.commit_batch(&batch) {
            let mut state = self.state.write();
            state.dirty.extend(dirty);
            state.deletions_dirty.extend(deletions_dirty);
            state.segments_dirty |= segments_dirty;
            state.retired.extend(retired);
            return Err(e.into());
        }
        {
            let mut state = self.state.write();
            state.flushed_seq = seq;
            state.clocks.base = clocks.base;
        }
        // Exactly the files folded above (the WAL may have moved on since).
        if let Some(last) = dropped.last() {
            self.wal
                .lock()
                .truncate_through(last.seq, 0)
                .map_err(io_err(&self.dir))?;
        }
        for id in retired {
            let path = segment_dir(&self.dir.join(SEGMENTS_DIR), id);
            if let Err(e) = std::fs::remove_dir_all(&path)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                // Harmless: the next open removes directories no flush lists.
                tracing::warn!(path = %path.display(), error = %e, "could not remove a retired segment");
            }
        }
        tracing::debug!(dir = %self.dir.display(), seq, points = dirty.len(), "shard flushed");
        Ok(())
    }

    /// Writes a shard image of the current state into the empty directory `into` (see
    /// [`crate::shard::snapshot`]): the sealed segments' files hard-linked, then `state.bin`
    /// and the manifest. Writers wait while the state is copied (a few milliseconds plus
    /// the points outside sealed segments); readers do not. Returns the manifest. Blocking.
    pub fn snapshot_image(
        &self,
        shard_id: u32,
        into: &Path,
    ) -> Result<crate::shard::snapshot::ShardManifest, crate::shard::snapshot::SnapshotError> {
        use crate::shard::snapshot::{ShardImage, SnapshotError, link_dir, write_image};
        let (image, points, config) = {
            // No flush runs meanwhile, so no segment directory listed here is removed before
            // its files are linked.
            let _no_flush = self.flush_lock.lock();
            let state = self.state.read();
            let from = self.dir.join(SEGMENTS_DIR);
            let to = into.join(SEGMENTS_DIR);
            let mut image = ShardImage::default();
            for seg in state.segments.values().filter(|s| s.is_persisted()) {
                let src = segment_dir(&from, seg.id);
                link_dir(&src, &segment_dir(&to, seg.id)).map_err(SnapshotError::io(&src))?;
                image.segments.push((seg.id, seg.voided_columns()));
                image.deleted.push((seg.id, seg.deleted_bitmap()));
            }
            for (id, loc) in &state.locations {
                let seg = &state.segments[&loc.segment];
                let offset = loc.offset;
                if seg.is_persisted() {
                    if seg.file_version(offset) != Some(seg.version(offset)) {
                        image.overrides.push((
                            encode_id(id),
                            PayloadOverride {
                                version: seg.version(offset),
                                payload: seg.payload(offset).into_owned(),
                            },
                        ));
                    }
                } else if let Some(point) = state.stored(id) {
                    image.tail.push((encode_id(id), point));
                }
            }
            (
                image,
                state.locations.len() as u64,
                Arc::clone(&state.config),
            )
        };
        write_image(into, shard_id, &config, &image, points)
    }

    pub fn stats(&self) -> ShardStats {
        let state = self.state.read();
        ShardStats {
            points: state.locations.len(),
            indexed_vectors: state
                .segments
                .values()
                .filter(|s| s.stage() == SegmentStage::Indexed)
                .map(Segment::live_count)
                .sum(),
            segments: state.segments.len(),
            last_seq: state.last_seq,
            flushed_seq: state.flushed_seq,
        }
    }

    pub fn retrieve(
        &self,
        ids: &[PointId],
        with_payload: bool,
        with_vector: &WithVector,
    ) -> Vec<Record> {
        let state = self.state.read();
        ids.iter()
            .filter_map(|id| {
                let (seg, offset) = state.point(id)?;
                Some(state.record(seg, offset, with_payload, with_vector))
            })
            .collect()
    }

    /// Up to `limit` points with ids `>= from`, in id order, that pass `accept`.
    pub fn scroll(
        &self,
        from: Option<PointId>,
        limit: usize,
        accept: Option<PointPredicate<'_>>,
        with_payload: bool,
        with_vector: &WithVector,
    ) -> Vec<Record> {
        let state = self.state.read();
        let range = match from {
            Some(from) => state.locations.range(from..),
            None => state.locations.range(..),
        };
        range
            .filter_map(|(id, loc)| {
                let seg = &state.segments[&loc.segment];
                let o = loc.offset;
                // A payload the predicate read is the one returned: parsed once.
                let read = std::cell::OnceCell::new();
                let pass = accept.is_none_or(|f| {
                    f(
                        *id,
                        &|| Cow::Borrowed(&**read.get_or_init(|| seg.payload(o))),
                        &|n| seg.has_vector(n, o),
                    )
                });
                pass.then(|| {
                    let mut record = state.record(seg, o, false, with_vector);
                    if with_payload {
                        record.payload = Some(match read.into_inner() {
                            Some(payload) => payload.into_owned(),
                            None => seg.payload(o).into_owned(),
                        });
                    }
                    record
                })
            })
            .take(limit)
            .collect()
    }

    /// The first `limit` points from `from` (in id order) that pass `filter` (bound, see
    /// [`LocalShard::bind_filter`]) and `rest`: [`LocalShard::scroll`] of their conjunction,
    /// except that a selective filter the payload indexes plan is answered from their
    /// candidates instead of by checking points in id order until `limit` pass (which, for
    /// a filter 0.1% of the points pass, checks every point of the shard).
    pub fn scroll_matching(
        &self,
        from: Option<PointId>,
        limit: usize,
        filter: Option<&Filter>,
        rest: Option<PointPredicate<'_>>,
        with_payload: bool,
        with_vector: &WithVector,
    ) -> Vec<Record> {
        if let Some(filter) = filter {
            let state = self.state.read();
            if let Some(hits) = state.scroll_candidates(from, limit, filter, rest, false) {
                return hits
                    .into_iter()
                    .map(|(_, segment, o)| {
                        state.record(&state.segments[&segment], o, with_payload, with_vector)
                    })
                    .collect();
            }
        }
        let accept = |id: PointId, p: PayloadRead<'_>, has: crate::index::filter::HasVector<'_>| {
            rest.is_none_or(|r| r(id, p, has))
                && filter.is_none_or(|f| f.check_point(id, &p(), has))
        };
        let accept: Option<PointPredicate<'_>> =
            (filter.is_some() || rest.is_some()).then_some(&accept as _);
        self.scroll(from, limit, accept, with_payload, with_vector)
    }

    /// The first `request.limit` (value, point) pairs of Qdrant's `order_by` among the points
    /// `accept` passes (see [`ShardOrderBy`]). Scans the shard once; keeps at most `limit`
    /// candidates in memory beyond the scan's own (value, id) list.
    pub fn order_by(
        &self,
        request: &crate::cluster::shard_requests::ShardOrderBy,
        accept: PointPredicate<'_>,
    ) -> Vec<(crate::cluster::shard_requests::OrderValue, Record)> {
        use crate::cluster::shard_requests::OrderValue;
        let state = self.state.read();
        let mut entries: Vec<(OrderValue, PointId)> = Vec::new();
        for (id, loc) in &state.locations {
            let seg = &state.segments[&loc.segment];
            let o = loc.offset;
            let payload = seg.payload(o);
            if !accept(*id, &|| Cow::Borrowed(&*payload), &|n| seg.has_vector(n, o)) {
                continue;
            }
            let mut values: Vec<OrderValue> = request
                .key
                .values(&payload)
                .into_iter()
                .filter_map(OrderValue::of)
                .filter(|v| !request.starts_before(v))
                .collect();
            values.sort_by(|a, b| a.total_cmp(b));
            values.dedup_by(|a, b| a.total_cmp(b).is_eq());
            entries.extend(values.into_iter().map(|v| (v, *id)));
        }
        let limit = request.limit.min(entries.len());
        if limit < entries.len() {
            entries.select_nth_unstable_by(limit, |a, b| request.order(a, b));
            entries.truncate(limit);
        }
        entries.sort_by(|a, b| request.order(a, b));
        entries
            .into_iter()
            .filter_map(|(value, id)| {
                let loc = state.locations.get(&id)?;
                let seg = &state.segments[&loc.segment];
                Some((
                    value,
                    state.record(seg, loc.offset, request.with_payload, &request.with_vector),
                ))
            })
            .collect()
    }

    /// Calls `visit` with the payload of every point that passes `filter` (bound, see
    /// [`LocalShard::bind_filter`]) and `rest`, narrowed by the payload indexes as
    /// [`LocalShard::count_matching`] is.
    pub fn for_each_matching_payload(
        &self,
        filter: Option<&Filter>,
        rest: Option<PointPredicate<'_>>,
        visit: &mut dyn FnMut(&Payload),
    ) {
        let state = self.state.read();
        state.for_each_match(filter, rest, &mut |seg, o| visit(&seg.payload(o)));
    }

    /// The number of points that pass `filter` (bound, see [`LocalShard::bind_filter`];
    /// `None` passes all) and `rest` (checks besides the filter, such as a resharding's
    /// ownership). Exact. Where a segment's payload indexes answer the filter, only their
    /// candidates are looked at: a count by an indexed keyword reads no payload.
    pub fn count_matching(
        &self,
        filter: Option<&Filter>,
        rest: Option<PointPredicate<'_>>,
    ) -> usize {
        let state = self.state.read();
        if filter.is_none() && rest.is_none() {
            return state.locations.len();
        }
        let mut n = 0;
        state.for_each_match(filter, rest, &mut |_, _| n += 1);
        n
    }

    /// The number of points in the shard.
    pub fn count(&self) -> usize {
        self.state.read().locations.len()
    }

    /// For the sparse vector `name`: how many points have it, and for each dimension of
    /// `dims` how many of them have a value there (the inputs of its IDF).
    /// Only points that pass `owned` count (a resharding's ownership filter).
    pub fn sparse_stats(
        &self,
        name: &str,
        dims: &[u32],
        owned: &dyn Fn(&PointId) -> bool,
    ) -> (usize, Vec<usize>) {
        let state = self.state.read();
        let mut points = 0;
        let mut df = vec![0usize; dims.len()];
        for (id, loc) in &state.locations {
            if !owned(id) {
                continue;
            }
            let seg = &state.segments[&loc.segment];
            if let Some(VectorRef::Sparse(v)) = seg.vector(name, loc.offset) {
                points += 1;
                for (i, d) in dims.iter().enumerate() {
                    if v.indices.binary_search(d).is_ok() {
                        df[i] += 1;
                    }
                }
            }
        }
        (points, df)
    }

    /// The `top` best points for the query, best first. `idf` weighs the dimensions of a
    /// sparse query (computed over the whole collection by the caller); `None` means no
    /// weights.
    pub fn search_weighted(
        &self,
        query: &SearchQuery<'_>,
        idf: Option<&HashMap<u32, f32>>,
    ) -> Vec<ScoredRecord> {
        let config = self.config();
        let Some(kind) = config.vector_kind(query.using) else {
            return Vec::new();
        };
        let distance = match kind {
            VectorKind::Dense(p) | VectorKind::Multi(p) => Some(p.distance),
            VectorKind::Sparse(_) => None,
        };
        let hnsw = config.hnsw_for(query.using);
        let full_scan_bytes = hnsw.full_scan_threshold.saturating_mul(1024);
        let weight = |d: u32| idf.map_or(1.0, |w| w.get(&d).copied().unwrap_or(0.0));
        // (score, key): the reported score and the same oriented so that larger is better.
        let nearest = |q: &QueryVector<'_>, v: VectorRef<'_>| -> Option<(f32, f32)> {
            match (q, v) {
                (QueryVector::Dense(q), VectorRef::Dense(v)) => {
                    let d = distance?;
                    let s = d.score(q, v);
                    Some((s, if d.higher_is_better() { s } else { -s }))
                }
                (QueryVector::Multi(q), VectorRef::Multi { flat, dim }) => {
                    // MaxSim sums similarities (negated distances for Euclid and Manhattan);
                    // Qdrant reports those as distances again.
                    let d = distance?;
                    let core = d.max_sim(q, flat, dim);
                    let shown = match d {
                        Distance::Cosine | Distance::Dot => core,
                        Distance::Euclid => core.abs().sqrt(),
                        Distance::Manhattan => core.abs(),
                    };
                    Some((shown, core))
                }
                (QueryVector::Sparse(q), VectorRef::Sparse(v)) => {
                    if !q.overlaps(v) {
                        return None;
                    }
                    let s = q.weighted_dot(v, weight);
                    Some((s, s))
                }
                _ => None,
            }
        };
        let passes = |score: f32| {
            query
                .score_threshold
                .is_none_or(|t| match (&query.scoring, distance) {
                    (Scoring::Nearest(QueryVector::Dense(_) | QueryVector::Multi(_)), Some(d)) => {
                        d.passes_threshold(score, t)
                    }
                    _ => score >= t,
                })
        };
        // Scalar-quantized codes serve graph walks where the configuration asks for them and
        // the search does not say to ignore them.
        let use_codes =
            !query.quantization.ignore && config.scalar_quantization(query.using).is_some();
        let vectors_in_memory = !config
            .dense(query.using)
            .and_then(|p| p.on_disk)
            .unwrap_or(false);
        let state = self.state.read();
        let mut top = TopK::new(query.top);
        if query.top == 0 {
            return Vec::new();
        }
        for seg in state.segments.values() {
            if seg.live_count() == 0 {
                continue;
            }
            let accepted = |o: u32| {
                query
                    .accept
                    .is_none_or(|f| f(seg.id(o), &|| seg.payload(o), &|n| seg.has_vector(n, o)))
            };
            // Looked up once per segment: a name lookup per point cost more than the
            // distance itself.
            let Some(column) = seg.column(query.using) else {
                continue;
            };
            let push = |o: u32, score: f32, key: f32, top: &mut TopK| {
                if score.is_nan() || !passes(score) {
                    return;
                }
                top.push(Candidate {
                    key,
                    score,
                    id: seg.id(o),
                    segment: seg.id,
                    offset: o,
                });
            };
            let consider = |o: u32, top: &mut TopK| {
                let Some(v) = column.get(o) else {
                    return;
                };
                let scored = match &query.scoring {
                    Scoring::Nearest(q) => nearest(q, v),
                    Scoring::Custom(f) => {
                        let s = f(v);
                        Some((s, s))
                    }
                };
                if let Some((score, key)) = scored {
                    push(o, score, key, top);
                }
            };
            // Sparse: the inverted index gives exactly the candidates a scan would score.
            if let (Scoring::Nearest(QueryVector::Sparse(q)), Some(index)) = (
                &query.scoring,
                seg.index().and_then(|i| i.sparse.get(query.using)),
            ) {
                for (o, _) in index.score(q, weight) {
                    if seg.is_live(o) && accepted(o) {
                        consider(o, &mut top);
                    }
                }
                continue;
            }
            // The payload indexes narrow a filtered search to candidates (a superset of the
            // points that pass): Qdrant's rule decides between scoring just those and walking
            // the graph with the filter.
            let narrowed = query.filter.and_then(|f| state.narrow(seg, f));
            // Candidates of an exact plan pass the filter: only the rest of the predicate
            // (excluded ids, ownership) is left to check, without reading their payloads.
            let rest = |o: u32| {
                query
                    .rest
                    .is_none_or(|f| f(seg.id(o), &|| seg.payload(o), &|n| seg.has_vector(n, o)))
            };
            let passes = |o: u32| match &narrowed {
                None => accepted(o),
                Some(n) if !n.candidates.contains(o) => false,
                Some(n) if n.settled(o) => rest(o),
                Some(_) => accepted(o),
            };
            let graph = match (&query.scoring, seg.index()) {
                (
                    Scoring::Nearest(q @ (QueryVector::Dense(_) | QueryVector::Multi(_))),
                    Some(index),
                ) if !query.exact
                    && seg.vector_bytes() >= full_scan_bytes
                    && query.top <= MAX_GRAPH_TOP
                    && !(query.accept.is_some()
                        && few_pass(
                            seg,
                            narrowed.as_ref().map(|n| n.estimate),
                            &passes,
                            full_scan_bytes,
                        )) =>
                {
                    index.graphs.get(query.using).map(|g| (q, g))
                }
                _ => None,
            };
            let mut exhaustive = true;
            if let Some((q, index)) = graph {
                let flat: &[f32] = match q {
                    QueryVector::Dense(v) | QueryVector::Multi(v) => v,
                    QueryVector::Sparse(_) => &[],
                };
                let ef = query.ef.unwrap_or(hnsw.ef_construct).max(query.top);
                let accept_offset = |o: u32| seg.is_live(o) && passes(o);
                // Scalar-quantized codes, where the segment has them for a configuration
                // that still asks for them: the walk compares codes, then the candidates
                // are rescored with the original vectors (unless the search says not to).
                let codes = match q {
                    QueryVector::Dense(_) if use_codes => {
                        seg.index().and_then(|i| i.quantized.get(query.using))
                    }
                    _ => None,
                };
                let found = match codes {
                    Some(codes) => {
                        // Qdrant rescores `top * oversampling` candidates. With the original
                        // vectors in memory, rescoring every candidate the walk kept costs
                        // `ef` distances next to the walk's thousands and recovers most of
                        // the recall codes lose; with them on disk each rescored point may
                        // be a page read, so only Qdrant's share is.
                        let mut wanted = query.quantization.candidates(query.top);
                        if vectors_in_memory && query.quantization.rescores() {
                            wanted = wanted.max(ef);
                        }
                        // Bounded like `hnsw_ef`.
                        let wanted = wanted.min(MAX_CODE_CANDIDATES.max(query.top));
                        let encoded = codes.encode_query(flat);
                        let scorer = CodeScorer {
                            codes,
                            query: &encoded,
                            present: |o: u32| column.get(o).is_some(),
                        };
                        let found = index.walk(&scorer, wanted, ef.max(wanted), &accept_offset);
                        if !query.quantization.rescores() {
                            exhaustive = found.len() < query.top && found.len() < index.len();
                            if !exhaustive {
                                for o in found {
                                    let score = codes.score(&encoded, o);
                                    let key = match distance {
                                        Some(d) if !d.higher_is_better() => -score,
                                        _ => score,
                                    };
                                    push(o, score, key, &mut top);
                                }
                            }
                            None
                        } else {
                            Some(found)
                        }
                    }
                    None => {
                        let vector = |o: u32| match column.get(o) {
                            Some(VectorRef::Dense(v)) => Some(v),
                            Some(VectorRef::Multi { flat, .. }) => Some(flat),
                            _ => None,
                        };
                        Some(index.search(flat, query.top, ef, &vector, &accept_offset))
                    }
                };
                // Too few hits means a selective filter starved the graph walk: fall back to
                // an exhaustive scan so that filtered searches stay complete.
                if let Some(found) = found {
                    exhaustive = found.len() < query.top && found.len() < index.len();
                    if !exhaustive {
                        for o in found {
                            consider(o, &mut top);
                        }
                    }
                }
            }
            if exhaustive {
                match &narrowed {
                    Some(n) => {
                        for o in n.candidates.iter() {
                            if seg.is_live(o) && passes(o) {
                                consider(o, &mut top);
                            }
                        }
                    }
                    None => {
                        for o in seg.live_offsets() {
                            if accepted(o) {
                                consider(o, &mut top);
                            }
                        }
                    }
                }
            }
        }
        top.into_sorted()
            .into_iter()
            .map(|c| {
                let seg = &state.segments[&c.segment];
                ScoredRecord {
                    id: c.id,
                    version: seg.version(c.offset),
                    score: c.score,
                    payload: query
                        .with_payload
                        .then(|| seg.payload(c.offset).into_owned()),
                    vector: vectors_wanted(seg, c.offset, query.with_vector),
                    order_value: None,
                }
            })
            .collect()
    }

    /// The `top` best points for the query, best first; a sparse vector with the `idf`
    /// modifier is weighted by this shard's own statistics.
    pub fn search(&self, query: &SearchQuery<'_>) -> Vec<ScoredRecord> {
        let config = self.config();
        let idf = match (&query.scoring, config.sparse(query.using)) {
            (Scoring::Nearest(QueryVector::Sparse(q)), Some(p))
                if p.modifier == Some(Modifier::Idf) =>
            {
                let (n, df) = self.sparse_stats(query.using, &q.indices, &|_| true);
                Some(
                    q.indices
                        .iter()
                        .zip(df)
                        .map(|(d, df)| (*d, idf(n, df)))
                        .collect::<HashMap<u32, f32>>(),
                )
            }
            _ => None,
        };
        self.search_weighted(query, idf.as_ref())
    }

    /// The stored (preprocessed) vector `name` of a point.
    pub fn vector_of(&self, id: &PointId, name: &str) -> Option<VectorData> {
        let state = self.state.read();
        let (seg, o) = state.point(id)?;
        seg.vector(name, o).map(VectorRef::to_owned)
    }

    /// The distance of the dense or multi-vector `name`.
    pub fn distance(&self, name: &str) -> Option<Distance> {
        self.config().dense(name).map(|p| p.distance)
    }

    // ---- optimizer -------------------------------------------------------------------------

    /// Whether the optimizer has nothing left to do (payload indexes to build included).
    pub fn optimizer_status(&self) -> OptimizerStatus {
        let state = self.state.read();
        let pending = state.segments.values().any(|s| {
            (s.stage() == SegmentStage::Frozen && s.live_count() > 0)
                || vacuum_candidate(&state.config, s)
                || payload_index_stale(&state.payload_schema, s)
        }) || merge_candidates(&state).is_some();
        // Paused wins over a step in progress: with optimizations off a step only refreshes
        // payload indexes and finds nothing else to do.
        if pending && optimizations_off(&state.config) {
            OptimizerStatus::Paused
        } else if pending || self.optimizing.load(Ordering::SeqCst) > 0 {
            OptimizerStatus::Busy
        } else {
            OptimizerStatus::Idle
        }
    }

    /// What the optimizer runs, ran (the last [`KEEP_COMPLETED_OPTIMIZATIONS`] since the
    /// shard was opened) and would run next, and the segments it has nothing to do for. Read
    /// only: the estimate of the queue uses the same candidate rules as the optimizer, over
    /// the segments as they are now.
    pub fn optimizer_view(&self) -> OptimizerView {
        let (running, completed, totals) = {
            let log = self.optimizations.lock();
            (
                log.running.clone(),
                log.completed.iter().rev().cloned().collect::<Vec<_>>(),
                log.totals.clone(),
            )
        };
        let state = self.state.read();
        let brief = |id: &SegmentId| SegmentBrief {
            id: *id,
            points: state.segments.get(id).map_or(0, Segment::live_count),
        };
        let mut taken: HashSet<SegmentId> = running
            .iter()
            .flat_map(|r| r.segments.iter().map(|s| s.id))
            .collect();
        let queued: Vec<PlannedOptimization> = planned_optimizations(&state, &mut taken)
            .into_iter()
            .map(|(optimizer, ids)| PlannedOptimization {
                optimizer,
                segments: ids.iter().map(brief).collect(),
            })
            .collect();
        let idle = state
            .segments
            .keys()
            .filter(|id| !taken.contains(id))
            .map(brief)
            .collect();
        OptimizerView {
            running,
            completed,
            queued,
            idle,
            totals,
        }
    }

    /// How many live points hold each vector of the configuration, by name (Qdrant's
    /// `num_vectors_by_name`). Scans the shard under its read lock.
    pub fn vector_counts(&self) -> BTreeMap<String, usize> {
        let state = self.state.read();
        let names: Vec<String> = state
            .config
            .params
            .vectors
            .iter()
            .map(|(name, _)| name.to_string())
            .chain(state.config.sparse_iter().map(|(name, _)| name.to_string()))
            .collect();
        names
            .into_iter()
            .map(|name| {
                let count = state
                    .segments
                    .values()
                    .map(|seg| {
                        seg.live_offsets()
                            .filter(|&o| seg.has_vector(&name, o))
                            .count()
                    })
                    .sum();
                (name, count)
            })
            .collect()
    }

    /// Stops background work at the next opportunity.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
        self.wake_optimizer.notify_one();
    }

    /// Stops this replica for good before its directory is replaced: cancels background work,
    /// waits until the update, flush or optimizer step in progress (cancelled, it ends early)
    /// has finished, and from then on refuses updates ([`ShardError::Retired`]) and skips
    /// flushes and optimizer steps, so nothing writes under the directory again. Blocking.
    pub fn retire(&self) {
        self.cancel();
        *self.retired.write() = true;
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }

    /// Does one unit of optimization work, if there is any; returns whether it did. Blocking:
    /// run it on a blocking thread. Cancel-safe: a cancelled build is dropped and the segment
    /// stays as it was.
    pub fn optimize_step(&self, builder: &IndexBuilder) -> bool {
        let retired = self.retired.read();
        if *retired {
            return false;
        }
        /// Counts the step as running until it returns or unwinds.
        struct Running<'a>(&'a AtomicUsize);
        impl Drop for Running<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        self.optimizing.fetch_add(1, Ordering::SeqCst);
        let running = Running(&self.optimizing);
        let did = self.optimize_step_inner(builder);
        drop(running);
        drop(retired);
        did
    }

    fn optimize_step_inner(&self, builder: &IndexBuilder) -> bool {
        if self.is_cancelled() {
            return false;
        }
        // Segments frozen since the last step get their payload indexes before their graphs:
        // a filtered search of a segment waiting for its graph scans only the candidates.
        self.refresh_payload_indexes();
        // Empty sealed segments are simply dropped.
        {
            let mut state = self.state.write();
            let appendable = state.appendable;
            let empty: Vec<SegmentId> = state
                .segments
                .values()
                .filter(|s| s.id != appendable && s.live_count() == 0)
                .map(|s| s.id)
                .collect();
            for id in &empty {
                if let Some(seg) = state.segments.remove(id)
                    && seg.is_persisted()
                {
                    state.segments_dirty = true;
                    state.retired.push(*id);
                }
            }
        }
        if optimizations_off(&self.state.read().config) {
            return false;
        }
        // Index first (it makes new data fast to search), then vacuum, then merge.
        let job = {
            let state = self.state.read();
            index_job(&state)
                .or_else(|| {
                    state
                        .segments
                        .values()
                        .find(|s| vacuum_candidate(&state.config, s))
                        .map(|s| OptimizerJob::Vacuum(s.id))
                })
                .or_else(|| merge_candidates(&state).map(OptimizerJob::Merge))
        };
        let Some(job) = job else {
            return false;
        };
        let _slot = builder.slot.lock();
        let started = std::time::Instant::now();
        let sources = job.describe(&self.state.read());
        let seq = self.optimizations.lock().start(sources);
        let done = match &job {
            OptimizerJob::Index(ids) => match ids.as_slice() {
                [id] => self.index_segment(*id, builder),
                ids => self.rewrite_segments(ids, builder),
            },
            OptimizerJob::Vacuum(id) => self.rewrite_segments(&[*id], builder),
            OptimizerJob::Merge(ids) => self.rewrite_segments(ids, builder),
        };
        self.optimizations
            .lock()
            .finish(seq, done, started.elapsed());
        tracing::info!(
            dir = %self.dir.display(),
            ?job,
            done,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "optimizer step"
        );
        done
    }

    /// Builds every index of a frozen segment's points at `offsets`: a graph per dense and
    /// multi-vector (with scalar-quantized codes where the configuration asks for them), an
    /// inverted index per sparse vector. `None` when cancelled.
    fn build_index(
        &self,
        config: &CollectionConfig,
        columns: &BTreeMap<String, FrozenColumn>,
        offsets: &[u32],
        builder: &IndexBuilder,
    ) -> Option<SegmentIndex> {
        let mut index = SegmentIndex::default();
        for (name, column) in columns {
            let present: Vec<(u32, VectorRef<'_>)> = offsets
                .iter()
                .filter_map(|&o| Some((o, column.get(o)?)))
                .collect();
            match column {
                FrozenColumn::Sparse { .. } => {
                    let sparse = SparseIndex::build(present.iter().filter_map(|(o, v)| match v {
                        VectorRef::Sparse(s) => Some((*o, *s)),
                        _ => None,
                    }));
                    index.sparse.insert(name.clone(), sparse);
                }
                FrozenColumn::Dense { .. } | FrozenColumn::Multi { .. } => {
                    let Some(params) = config.dense(name) else {
                        continue;
                    };
                    let multi_dim =
                        matches!(column, FrozenColumn::Multi { .. }).then_some(params.size);
                    let points: Vec<(u32, &[f32])> = present
                        .iter()
                        .filter_map(|(o, v)| match v {
                            VectorRef::Dense(d) => Some((*o, *d)),
                            VectorRef::Multi { flat, .. } => Some((*o, *flat)),
                            VectorRef::Sparse(_) => None,
                        })
                        .collect();
                    let hnsw = config.hnsw_for(name);
                    let graph = HnswIndex::build(
                        GraphDistance {
                            distance: params.distance,
                            multi_dim,
                        },
                        GraphParams {
                            m: hnsw.m,
                            ef_construct: hnsw.ef_construct,
                        },
                        &points,
                        &builder.pool_for(hnsw.max_indexing_threads),
                        &self.cancelled,
                    )?;
                    index.graphs.insert(name.clone(), graph);
                    if let (FrozenColumn::Dense { dim, present, .. }, Some(scalar)) =
                        (column, config.scalar_quantization(name))
                    {
                        let codes = QuantizedVectors::build(
                            params.distance,
                            *dim,
                            present.len(),
                            scalar.quantile,
                            |o| match column.get(o as u32) {
                                Some(VectorRef::Dense(v)) => Some(v),
                                _ => None,
                            },
                        );
                        index.quantized.insert(name.clone(), codes);
                    }
                }
            }
        }
        Some(index)
    }

    /// Builds the indexes of a frozen segment outside the lock and attaches them.
    fn index_segment(&self, segment_id: SegmentId, builder: &IndexBuilder) -> bool {
        let (config, columns, live) = {
            let state = self.state.read();
            let Some(seg) = state.segments.get(&segment_id) else {
                return false;
            };
            (
                Arc::clone(&state.config),
                seg.frozen_columns(),
                seg.live_offsets().collect::<Vec<u32>>(),
            )
        };
        let Some(index) = self.build_index(&config, &columns, &live, builder) else {
            return false;
        };
        let (image, epoch) = {
            let mut state = self.state.write();
            let config = Arc::clone(&state.config);
            let epoch = state.vectors_epoch;
            let Some(seg) = state.segments.get_mut(&segment_id) else {
                return true;
            };
            seg.set_index(Arc::new(index));
            // The configuration may have changed while the index was built (its points were
            // already conformed: only the index can be stale).
            seg.conform(&config);
            (seg.image(), epoch)
        };
        // Searches use the new index already; writing it to disk is what lets a restart skip
        // the build and the heap let go of the vectors.
        let Some(stored) = image.and_then(|image| self.persist(&image)) else {
            return true;
        };
        let mut state = self.state.write();
        let config = Arc::clone(&state.config);
        let same_vectors = state.vectors_epoch == epoch;
        let live: Vec<PointId> = match state.segments.get_mut(&segment_id) {
            Some(seg)
                if same_vectors && seg.stage() == SegmentStage::Indexed && !seg.is_persisted() =>
            {
                seg.adopt_stored(stored);
                let lost = seg.conform(&config);
                // Every live point: those that lost a vector are among them.
                debug_assert!(lost.iter().all(|o| seg.is_live(*o)));
                seg.live_offsets().map(|o| seg.id(o)).collect()
            }
            // Changed meanwhile (dropped, its index dropped, or its vectors reconfigured):
            // the directory was never listed, so it goes now; the segment stays as it is in
            // memory (indexed again by a later job if its index was dropped).
            _ => {
                drop(state);
                let path = segment_dir(&self.dir.join(SEGMENTS_DIR), segment_id);
                if let Err(error) = std::fs::remove_dir_all(&path) {
                    tracing::warn!(path = %path.display(), %error, "could not remove an unused segment directory; the next start removes it");
                }
                return true;
            }
        };
        // The next flush lists the segment and takes its points out of the point store's
        // tail, in one transaction.
        state.dirty.extend(live);
        state.deletions_dirty.insert(segment_id);
        state.segments_dirty = true;
        true
    }

    /// Writes a sealed segment's directory and reads it back (mapped as configured); `None`
    /// (logged) if that fails, in which case the segment stays on the heap and its points in
    /// the point store.
    fn persist(&self, image: &SegmentImage) -> Option<Segment> {
        let segments_dir = self.dir.join(SEGMENTS_DIR);
        let path = segment_dir(&segments_dir, image.id);
        let config = self.config();
        let written = std::fs::create_dir_all(&segments_dir)
            .and_then(|()| image.write(&path))
            .map_err(|e| e.to_string())
            .and_then(|()| Segment::open_dir(&path, &config, &[]));
        match written {
            Ok(stored) => Some(stored),
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "could not write a sealed segment; it stays in memory");
                let _ = std::fs::remove_dir_all(&path);
                let _ = std::fs::remove_dir_all(path.with_extension("tmp"));
                None
            }
        }
    }

    /// Rewrites segments into one compact segment with fresh indexes (dropping tombstones, and
    /// merging when there are several), then swaps it in, carrying over every change made to
    /// their points in the meantime. Cancel-safe: until the swap nothing changes.
    fn rewrite_segments(&self, sources: &[SegmentId], builder: &IndexBuilder) -> bool {
        let (mut fresh, origin, config, epoch) = {
            let mut state = self.state.write();
            let epoch = state.vectors_epoch;
            let new_id = state.next_segment_id;
            state.next_segment_id += 1;
            let state = RwLockWriteGuard::downgrade(state);
            let mut fresh = Segment::new(new_id, &state.config);
            let mut origin: Vec<Location> = Vec::new();
            for source in sources {
                let Some(seg) = state.segments.get(source) else {
                    return false;
                };
                for o in seg.live_offsets() {
                    fresh.push(
                        seg.id(o),
                        &seg.vectors(o),
                        seg.payload(o).into_owned(),
                        seg.version(o),
                    );
                    origin.push(Location {
                        segment: *source,
                        offset: o,
                    });
                }
            }
            fresh.freeze();
            (fresh, origin, Arc::clone(&state.config), epoch)
        };
        let columns = fresh.frozen_columns();
        let all: Vec<u32> = (0..origin.len() as u32).collect();
        let Some(index) = self.build_index(&config, &columns, &all, builder) else {
            return false;
        };
        drop(columns);
        fresh.set_index(Arc::new(index));
        // The payloads as copied; those changed before the swap are noted by it.
        let payload_schema = Arc::clone(&self.state.read().payload_schema);
        fresh.set_payload_index(payload_index_for(&payload_schema, &fresh));
        if let Some(stored) = fresh.image().and_then(|image| self.persist(&image)) {
            fresh.adopt_stored(stored);
        }
        let mut state = self.state.write();
        if state.vectors_epoch != epoch || !sources.iter().all(|s| state.segments.contains_key(s)) {
            // A source went away, or the vectors were reconfigured while `fresh` was built
            // from copies taken before: the job is planned again from the current segments.
            if fresh.is_persisted() {
                state.retired.push(fresh.id);
            }
            return false;
        }
        let old: BTreeMap<SegmentId, Segment> = sources
            .iter()
            .filter_map(|s| state.segments.remove(s).map(|seg| (*s, seg)))
            .collect();
        for (id, seg) in &old {
            if seg.is_persisted() {
                state.retired.push(*id);
            }
        }
        let persisted = fresh.is_persisted();
        if persisted || !state.retired.is_empty() {
            state.segments_dirty = true;
        }
        for (new_offset, from) in origin.iter().enumerate() {
            let new_offset = new_offset as u32;
            let seg = &old[&from.segment];
            let id = seg.id(from.offset);
            if state.locations.get(&id) == Some(from) {
                // The payload may have changed while the graph was built (every change sets
                // the point's version).
                if seg.version(from.offset) != fresh.version(new_offset) {
                    fresh.set_payload(new_offset, seg.payload(from.offset).into_owned());
                    fresh.set_version(new_offset, seg.version(from.offset));
                }
                // The next flush stores the point where it now lives: out of the tail (a
                // payload newer than the file's becomes an override) when the new segment is
                // on disk, whole in the tail when writing it failed.
                state.dirty.insert(id);
                state.locations.insert(
                    id,
                    Location {
                        segment: fresh.id,
                        offset: new_offset,
                    },
                );
            } else {
                fresh.delete(new_offset);
            }
        }
        // The configuration may have changed while the segment was rebuilt.
        let config = Arc::clone(&state.config);
        let lost: Vec<PointId> = fresh
            .conform(&config)
            .into_iter()
            .map(|o| fresh.id(o))
            .collect();
        state.dirty.extend(lost);
        if persisted {
            state.deletions_dirty.insert(fresh.id);
        }
        if !Arc::ptr_eq(&payload_schema, &state.payload_schema) {
            // Declared or dropped meanwhile: built again for the schema of now.
            let index = payload_index_for(&state.payload_schema, &fresh);
            fresh.set_payload_index(index);
        }
        state.segments.insert(fresh.id, fresh);
        true
    }
}

/// Calls `visit` with every live offset of `seg` that passes `filter` and `rest`: `narrowed`'s
/// candidates where the payload indexes planned the filter (an exact plan's settled ones
/// checked with `rest` alone, reading no payload), every live offset otherwise. See
/// `ShardState::for_each_match`.
fn visit_segment(
    seg: &Segment,
    narrowed: Option<&Narrowed>,
    filter: Option<&Filter>,
    rest: Option<PointPredicate<'_>>,
    visit: &mut dyn FnMut(&Segment, u32),
) {
    let rest_passes =
        |o: u32| rest.is_none_or(|f| f(seg.id(o), &|| seg.payload(o), &|n| seg.has_vector(n, o)));
    let passes = |o: u32| {
        rest_passes(o)
            && filter.is_none_or(|f| {
                f.check_point(seg.id(o), &seg.payload(o), &|n| seg.has_vector(n, o))
            })
    };
    match narrowed {
        Some(narrowed) => {
            for o in narrowed.candidates.iter() {
                if !seg.is_live(o) {
                    continue;
                }
                let pass = if narrowed.settled(o) {
                    rest_passes(o)
                } else {
                    passes(o)
                };
                if pass {
                    visit(seg, o);
                }
            }
        }
        None => {
            for o in seg.live_offsets() {
                if passes(o) {
                    visit(seg, o);
                }
            }
        }
    }
}

/// A filtered search's candidates in one segment, from its payload indexes.
struct Narrowed {
    /// The plan's candidates and the offsets edited since the indexes were built.
    candidates: OffsetSet,
    /// The edited offsets, sorted: always checked against the whole predicate.
    touched: Vec<u32>,
    /// Whether the plan's candidates are exactly the points that pass the filter.
    exact: bool,
    /// Upper bound of the candidates.
    estimate: usize,
}

impl Narrowed {
    /// `plan`'s candidates in `seg`, with the offsets edited since its indexes were built.
    fn new(plan: &Plan<'_>, seg: &Segment) -> Narrowed {
        let mut candidates = plan.candidates(seg.len());
        let touched: Vec<u32> = seg
            .payload_index()
            .map(|(_, touched)| touched.collect())
            .unwrap_or_default();
        for &o in &touched {
            candidates.insert(o);
        }
        Narrowed {
            candidates,
            estimate: plan.estimate + touched.len(),
            touched,
            exact: plan.exact,
        }
    }

    /// Whether candidate `o` is known to pass the filter (an exact plan's, not edited since).
    fn settled(&self, o: u32) -> bool {
        self.exact && self.touched.binary_search(&o).is_err()
    }
}

/// Points sampled from a segment to estimate how many pass a filter no index answers.
const FILTER_SAMPLE: usize = 256;

/// Whether so few of a segment's points pass the read's predicate that scoring them all costs
/// less than a filtered graph walk: Qdrant's rule, with `full_scan_threshold` (bytes of vectors)
/// as the bound on the points to score. The payload indexes' candidate count (`estimate`)
/// decides when it is below the bound; otherwise evenly spaced points of the segment are
/// checked, as Qdrant samples when its cardinality estimate is not conclusive.
fn few_pass(
    seg: &Segment,
    estimate: Option<usize>,
    accepted: &dyn Fn(u32) -> bool,
    full_scan_bytes: usize,
) -> bool {
    let bound = full_scan_bytes / seg.point_bytes().max(1);
    if estimate.is_some_and(|e| e < bound) {
        return true;
    }
    let len = seg.len();
    if len == 0 {
        return true;
    }
    let taken = len.min(FILTER_SAMPLE);
    let passed = (0..taken)
        .map(|i| (i * len / taken) as u32)
        .filter(|&o| seg.is_live(o) && accepted(o))
        .count();
    passed * len / taken < bound
}

/// Payload edits since a segment's indexes were built, as a share of its points, above which
/// the indexes are built again (edited points are candidates of every filtered search).
const TOUCHED_REBUILD_FRACTION: usize = 10;

/// Whether a segment's payload indexes are missing, built for another schema, or weakened by
/// many payload edits since.
fn payload_index_stale(schema: &PayloadSchema, seg: &Segment) -> bool {
    if seg.stage() == SegmentStage::Appendable {
        return false;
    }
    match seg.payload_index() {
        Some((index, _)) => {
            index.schema() != schema
                || seg.payload_touched_count() > 64.max(seg.len() / TOUCHED_REBUILD_FRACTION)
        }
        None => !schema.is_empty(),
    }
}

/// Payload indexes over a segment's live payloads for `schema` (`None` when it declares none).
fn payload_index_for(schema: &PayloadSchema, seg: &Segment) -> Option<Arc<PayloadIndex>> {
    (!schema.is_empty()).then(|| {
        Arc::new(PayloadIndex::build(
            schema,
            seg.live_payloads(),
            seg.payload_edits(),
        ))
    })
}

fn vacuum_candidate(config: &CollectionConfig, seg: &Segment) -> bool {
    let cfg = &config.optimizer_config;
    seg.stage() == SegmentStage::Indexed
        && seg.deleted_count() >= cfg.vacuum_min_vector_number.max(1)
        && seg.deleted_count() as f64 >= cfg.deleted_threshold * seg.len() as f64
}

/// Points a merged segment may hold.
fn merge_limit_points(config: &CollectionConfig) -> usize {
    let kb = config
        .optimizer_config
        .max_segment_size
        .unwrap_or(DEFAULT_MAX_SEGMENT_KB);
    (kb.saturating_mul(1024) / config.point_vector_bytes()).max(1)
}

/// How many indexed segments the merge step aims for: `default_segment_number` counts every
/// segment of the shard, the appendable one included, as Qdrant's merge optimizer counts them,
/// so one fewer than it (at least one). When it is 0, Qdrant's default: one segment per two
/// cores, between 2 and 8. On a 2-core machine that is one indexed segment next to the
/// appendable one, the layout Qdrant settles on.
fn target_segment_count(config: &CollectionConfig) -> usize {
    let segments = match config.optimizer_config.default_segment_number {
        0 => std::thread::available_parallelism()
            .map_or(2, |n| n.get() / 2)
            .clamp(2, 8),
        n => n,
    };
    segments.saturating_sub(1).max(1)
}

/// When there are more indexed segments than the target, the smallest ones that together
/// bring the count back to it (within the size limit): fewer, larger graphs answer searches
/// faster (Qdrant's merge optimizer). The price is rebuilding: with a target of one indexed
/// segment, every newly sealed segment rebuilds the shard's graph, up to the size limit
/// (`max_segment_size`), so a shard that grows slowly builds its points many times over.
fn merge_candidates(state: &ShardState) -> Option<Vec<SegmentId>> {
    let limit = merge_limit_points(&state.config);
    let mut indexed: Vec<&Segment> = state
        .segments
        .values()
        .filter(|s| s.stage() == SegmentStage::Indexed)
        .collect();
    let excess = indexed
        .len()
        .checked_sub(target_segment_count(&state.config))?;
    if excess == 0 {
        return None;
    }
    indexed.sort_by_key(|s| (s.live_count(), s.id));
    let mut total = 0;
    let mut picked = Vec::new();
    for seg in indexed.into_iter().take(excess + 1) {
        if total + seg.live_count() > limit {
            break;
        }
        total += seg.live_count();
        picked.push(seg.id);
    }
    (picked.len() >= 2).then_some(picked)
}

/// `max_optimization_threads: 0` switches the optimizer off, as in Qdrant: no segment is
/// indexed, vacuumed or merged (payload indexes are still built). Any other value allows the
/// one job a shard runs at a time (Shoal runs one optimization per node; see [`IndexBuilder`]).
fn optimizations_off(config: &CollectionConfig) -> bool {
    config.optimizer_config.max_optimization_threads == Some(0)
}

/// The indexing work due, if any. A sealed segment on disk whose index was dropped (its graph
/// parameters changed) is written anew, as a new directory (a vacuum). Sealed segments waiting
/// in memory are indexed together, smallest first within the merge size limit: while an
/// upload outpaces indexing, several wait at once, and one graph over all of them costs less
/// than a graph each that the merge step would then build again (Qdrant's indexing optimizer
/// likewise takes small segments along). For the same reason the smallest indexed segments
/// join the build when it would otherwise leave more indexed segments than
/// [`target_segment_count`].
fn index_job(state: &ShardState) -> Option<OptimizerJob> {
    let mut frozen: Vec<&Segment> = state
        .segments
        .values()
        .filter(|s| s.stage() == SegmentStage::Frozen && s.live_count() > 0)
        .collect();
    if let Some(stored) = frozen.iter().find(|s| s.is_persisted()) {
        return Some(OptimizerJob::Vacuum(stored.id));
    }
    frozen.sort_by_key(|s| (s.live_count(), s.id));
    let limit = merge_limit_points(&state.config);
    let mut total = 0;
    let mut picked = Vec::new();
    for seg in frozen {
        if !picked.is_empty() && total + seg.live_count() > limit {
            break;
        }
        total += seg.live_count();
        picked.push(seg.id);
    }
    if picked.is_empty() {
        return None;
    }
    // When the new segment would leave more indexed segments than the merge step aims for,
    // the smallest indexed ones join this build: otherwise the merge step would build their
    // points, and these, a second time right after.
    let mut indexed: Vec<&Segment> = state
        .segments
        .values()
        .filter(|s| s.stage() == SegmentStage::Indexed)
        .collect();
    indexed.sort_by_key(|s| (s.live_count(), s.id));
    let target = target_segment_count(&state.config);
    let mut count_after = indexed.len() + 1;
    for seg in indexed {
        if count_after <= target || total + seg.live_count() > limit {
            break;
        }
        total += seg.live_count();
        picked.push(seg.id);
        count_after -= 1;
    }
    Some(OptimizerJob::Index(picked))
}

/// One unit of optimizer work.
#[derive(Debug)]
enum OptimizerJob {
    /// Index one sealed segment in place, or several into one new segment.
    Index(Vec<SegmentId>),
    Vacuum(SegmentId),
    Merge(Vec<SegmentId>),
}

impl OptimizerJob {
    /// The optimizer's name for the job and the segments it reads.
    fn plan(&self) -> (OptimizerName, &[SegmentId]) {
        match self {
            OptimizerJob::Index(ids) => (OptimizerName::Indexing, ids),
            OptimizerJob::Vacuum(id) => (OptimizerName::Vacuum, std::slice::from_ref(id)),
            OptimizerJob::Merge(ids) => (OptimizerName::Merge, ids),
        }
    }

    /// The optimizer's name for the job and the segments it reads, with their live points now.
    fn describe(&self, state: &ShardState) -> (OptimizerName, Vec<SegmentBrief>) {
        let (name, ids) = self.plan();
        let segments = ids
            .iter()
            .map(|id| SegmentBrief {
                id: *id,
                points: state.segments.get(id).map_or(0, Segment::live_count),
            })
            .collect();
        (name, segments)
    }
}

/// Every optimization the optimizer would run over the segments as they are now, in its
/// order (index, then vacuum, then merge), leaving out segments in `taken` and adding the ones
/// it plans to `taken`: no segment is planned twice.
fn planned_optimizations(
    state: &ShardState,
    taken: &mut HashSet<SegmentId>,
) -> Vec<(OptimizerName, Vec<SegmentId>)> {
    let mut planned = Vec::new();
    if let Some(job) = index_job(state) {
        let (name, segments) = job.plan();
        let free: Vec<SegmentId> = segments
            .iter()
            .copied()
            .filter(|id| taken.insert(*id))
            .collect();
        if !free.is_empty() {
            planned.push((name, free));
        }
    }
    for seg in state.segments.values() {
        if seg.stage() == SegmentStage::Frozen && seg.live_count() > 0 && taken.insert(seg.id) {
            planned.push((OptimizerName::Indexing, vec![seg.id]));
        }
    }
    for seg in state.segments.values() {
        if vacuum_candidate(&state.config, seg) && taken.insert(seg.id) {
            planned.push((OptimizerName::Vacuum, vec![seg.id]));
        }
    }
    if let Some(ids) = merge_candidates(state) {
        let free: Vec<SegmentId> = ids.into_iter().filter(|id| !taken.contains(id)).collect();
        if free.len() >= 2 {
            taken.extend(free.iter().copied());
            planned.push((OptimizerName::Merge, free));
        }
    }
    planned
}

/// The optimizers of a shard, by Qdrant's names for the same work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptimizerName {
    /// Builds the indexes of a sealed segment.
    Indexing,
    /// Rewrites a segment without its deleted points.
    Vacuum,
    /// Rewrites small indexed segments into one.
    Merge,
}

impl OptimizerName {
    pub fn as_str(self) -> &'static str {
        match self {
            OptimizerName::Indexing => "indexing",
            OptimizerName::Vacuum => "vacuum",
            OptimizerName::Merge => "merge",
        }
    }
}

/// A segment of a shard and its live points at the time it was looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentBrief {
    pub id: SegmentId,
    pub points: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptimizationOutcome {
    Running,
    Done {
        elapsed: std::time::Duration,
    },
    /// The shard was cancelled, or its segments changed under the optimization, which then
    /// changed nothing.
    Cancelled {
        elapsed: std::time::Duration,
    },
}

/// One optimization the optimizer started.
#[derive(Debug, Clone, PartialEq)]
pub struct OptimizationRecord {
    /// Unique within the shard while it is open, increasing.
    pub seq: u64,
    pub optimizer: OptimizerName,
    /// The segments it reads, with their live points when it started.
    pub segments: Vec<SegmentBrief>,
    pub started_at: std::time::SystemTime,
    pub outcome: OptimizationOutcome,
}

/// Totals over every optimization that finished since the shard was opened.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OptimizationTotals {
    pub done: usize,
    pub cancelled: usize,
    /// Time spent in the optimizations that were done.
    pub total: std::time::Duration,
    pub min: Option<std::time::Duration>,
    pub max: Option<std::time::Duration>,
    pub last_finished_at: Option<std::time::SystemTime>,
    /// Live points of the segments the done optimizations read (Qdrant's
    /// `total_optimized_points`).
    pub optimized_points: usize,
}

/// An optimization the optimizer would run next.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedOptimization {
    pub optimizer: OptimizerName,
    pub segments: Vec<SegmentBrief>,
}

/// See [`LocalShard::optimizer_view`].
#[derive(Debug, Clone, PartialEq)]
pub struct OptimizerView {
    pub running: Vec<OptimizationRecord>,
    /// Newest first.
    pub completed: Vec<OptimizationRecord>,
    pub queued: Vec<PlannedOptimization>,
    /// Segments that no running or queued optimization reads.
    pub idle: Vec<SegmentBrief>,
    pub totals: OptimizationTotals,
}

/// Finished optimizations kept per shard (Qdrant keeps 16 too).
pub const KEEP_COMPLETED_OPTIMIZATIONS: usize = 16;

/// The optimizations of one shard since it was opened, in memory only.
#[derive(Debug, Default)]
struct OptimizationLog {
    next_seq: u64,
    running: Vec<OptimizationRecord>,
    completed: std::collections::VecDeque<OptimizationRecord>,
    totals: OptimizationTotals,
}

impl OptimizationLog {
    fn start(&mut self, (optimizer, segments): (OptimizerName, Vec<SegmentBrief>)) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.running.push(OptimizationRecord {
            seq,
            optimizer,
            segments,
            started_at: std::time::SystemTime::now(),
            outcome: OptimizationOutcome::Running,
        });
        seq
    }

    fn finish(&mut self, seq: u64, done: bool, elapsed: std::time::Duration) {
        let Some(at) = self.running.iter().position(|r| r.seq == seq) else {
            return;
        };
        let mut record = self.running.remove(at);
        let totals = &mut self.totals;
        if done {
            record.outcome = OptimizationOutcome::Done { elapsed };
            totals.done += 1;
            totals.total += elapsed;
            totals.min = Some(totals.min.map_or(elapsed, |m| m.min(elapsed)));
            totals.max = Some(totals.max.map_or(elapsed, |m| m.max(elapsed)));
            totals.optimized_points += record.segments.iter().map(|s| s.points).sum::<usize>();
        } else {
            record.outcome = OptimizationOutcome::Cancelled { elapsed };
            totals.cancelled += 1;
        }
        totals.last_finished_at = Some(std::time::SystemTime::now());
        self.completed.push_back(record);
        while self.completed.len() > KEEP_COMPLETED_OPTIMIZATIONS {
            self.completed.pop_front();
        }
    }
}

/// Size a merged segment may reach when `max_segment_size` is not configured.
const DEFAULT_MAX_SEGMENT_KB: usize = 200_000;

impl Drop for LocalShard {
    fn drop(&mut self) {
        self.cancelled.store(true, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::operations::PointWrite;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    fn config(dim: usize, indexing_threshold_kb: usize) -> Arc<CollectionConfig> {
        let mut config = CollectionConfig::single_dense(dim, Distance::Euclid);
        config.hnsw_config.full_scan_threshold = 0;
        config.optimizer_config.indexing_threshold = Some(indexing_threshold_kb);
        config.optimizer_config.vacuum_min_vector_number = 10;
        Arc::new(config)
    }

    fn points(range: std::ops::Range<u64>, dim: usize, rng: &mut StdRng) -> Vec<PointWrite> {
        range
            .map(|i| {
                let mut payload = Payload::new();
                payload.insert("i".into(), serde_json::json!(i));
                payload.insert("even".into(), serde_json::json!(i % 2 == 0));
                PointWrite::dense(
                    PointId::Num(i),
                    (0..dim).map(|_| rng.random_range(-1.0..1.0)).collect(),
                    payload,
                )
            })
            .collect()
    }

    fn exact_query<'a>(q: &'a [f32], top: usize) -> SearchQuery<'a> {
        SearchQuery {
            using: "",
            scoring: Scoring::Nearest(QueryVector::Dense(q)),
            accept: None,
            filter: None,
            rest: None,
            top,
            ef: None,
            exact: true,
            quantization: QuantizationSearch::default(),
            score_threshold: None,
            with_payload: false,
            with_vector: &WithVector::None,
        }
    }

    #[test]
    fn writes_survive_reopen_with_and_without_flush() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(4, 1);
        let mut rng = StdRng::seed_from_u64(1);
        let first = points(0..100, 4, &mut rng);
        {
            let shard = LocalShard::open(dir.path(), Arc::clone(&cfg), SyncMode::Os).unwrap();
            shard.update(UpdateRequest::Upsert(first.clone())).unwrap();
            shard.flush().unwrap();
            // After the flush: more writes that live only in the WAL.
            shard
                .update(UpdateRequest::Delete(PointSelection::Ids(vec![
                    PointId::Num(3),
                ])))
                .unwrap();
            let mut p = Payload::new();
            p.insert("tag".into(), serde_json::json!("x"));
            shard
                .update(UpdateRequest::SetPayload {
                    selection: PointSelection::Ids(vec![PointId::Num(5)]),
                    payload: p,
                    key: None,
                })
                .unwrap();
        }
        let shard = LocalShard::open(dir.path(), Arc::clone(&cfg), SyncMode::Os).unwrap();
        assert_eq!(shard.count(), 99);
        let got = shard.retrieve(
            &[PointId::Num(5), PointId::Num(3), PointId::Num(7)],
            true,
            &WithVector::All,
        );
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].payload.as_ref().unwrap()["tag"], "x");
        assert_eq!(got[1].vector.as_ref().unwrap(), &first[7].vectors);
        let stats = shard.stats();
        assert_eq!(stats.flushed_seq, 1);
        assert_eq!(stats.last_seq, 3);
        // Flushing again and reopening keeps the same state and cuts the WAL.
        shard.flush().unwrap();
        drop(shard);
        let shard = LocalShard::open(dir.path(), cfg, SyncMode::Os).unwrap();
        assert_eq!(shard.count(), 99);
        assert_eq!(shard.stats().flushed_seq, 3);
    }

    /// `update_resolved` returns the operation as the replica logged it: a filter resolved to
    /// the ids it matched here (what a resharding passes on instead of the filter), a
    /// conditional upsert reduced to the points it wrote, and nothing when nothing changed.
    #[test]
    fn a_resolved_update_names_the_points_it_changed() {
        let dir = tempfile::tempdir().unwrap();
        let shard = LocalShard::open(dir.path(), config(4, 1000), SyncMode::Os).unwrap();
        let mut rng = StdRng::seed_from_u64(3);
        shard
            .update(UpdateRequest::Upsert(points(0..10, 4, &mut rng)))
            .unwrap();
        let evens: Filter = serde_json::from_value(
            serde_json::json!({"must": [{"key": "even", "match": {"value": true}}]}),
        )
        .unwrap();
        let (outcome, op) = shard
            .update_resolved(
                UpdateRequest::Delete(PointSelection::Filter(evens.clone())),
                Stamp::Local,
            )
            .unwrap();
        assert!(matches!(outcome, UpdateOutcome::Applied(_)));
        let even_ids: Vec<PointId> = (0..10).step_by(2).map(PointId::Num).collect();
        assert_eq!(op, Some(ShardOperation::Delete(even_ids)));
        // Nothing matches any more: nothing applied, nothing to pass on.
        let (_, op) = shard
            .update_resolved(
                UpdateRequest::Delete(PointSelection::Filter(evens)),
                Stamp::Local,
            )
            .unwrap();
        assert_eq!(op, None);
        // An insert-only upsert of an existing and a new point writes only the new one.
        let both = points(8..12, 4, &mut rng)
            .into_iter()
            .filter(|p| p.id == PointId::Num(9) || p.id == PointId::Num(11))
            .collect::<Vec<_>>();
        let (_, op) = shard
            .update_resolved(
                UpdateRequest::ConditionalUpsert {
                    points: both.clone(),
                    mode: UpdateMode::InsertOnly,
                    filter: None,
                },
                Stamp::Local,
            )
            .unwrap();
        assert_eq!(op, Some(ShardOperation::Upsert(vec![both[1].clone()])));
        assert_eq!(shard.count(), 6);
    }

    /// The shard as a model expects it: every point's vector and payload, and exact search.
    fn assert_matches_model(shard: &LocalShard, model: &BTreeMap<PointId, (Vec<f32>, Payload)>) {
        let ids: Vec<PointId> = (0..400).map(PointId::Num).collect();
        let got = shard.retrieve(&ids, true, &WithVector::All);
        assert_eq!(got.len(), model.len(), "point count");
        for r in got {
            let (vector, payload) = &model[&r.id];
            let stored = r.vector.as_ref().unwrap().get("").unwrap().clone();
            assert_eq!(
                stored,
                VectorData::Dense(vector.clone()),
                "vector of {}",
                r.id
            );
            assert_eq!(r.payload.as_ref().unwrap(), payload, "payload of {}", r.id);
        }
        assert_eq!(shard.count(), model.len());
    }

    /// Qdrant's bulk-upload recipe: indexing off (`indexing_threshold: 0`) during the upload,
    /// then on again by a collection update. The points already in the appendable segment are
    /// indexed without a restart (the threshold used to be read only when the shard opened).
    #[test]
    fn a_threshold_switched_on_by_an_update_indexes_what_was_uploaded_without_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let builder = IndexBuilder::new(1);
        let off = config(4, 0);
        assert_eq!(off.optimizer_config.indexing_threshold, Some(0));
        let shard = LocalShard::open(dir.path(), Arc::clone(&off), SyncMode::Os).unwrap();
        let mut rng = StdRng::seed_from_u64(3);
        shard
            .update(UpdateRequest::Upsert(points(0..200, 4, &mut rng)))
            .unwrap();
        assert!(!shard.optimize_step(&builder), "indexing is off");
        assert_eq!(shard.stats().indexed_vectors, 0);
        shard.set_config(config(4, 1));
        for _ in 0..4 {
            shard.optimize_step(&builder);
        }
        assert_eq!(shard.stats().indexed_vectors, 200, "{:?}", shard.stats());
        assert_eq!(shard.optimizer_status(), OptimizerStatus::Idle);
        // New points go to a fresh appendable segment and are sealed at the new threshold.
        shard
            .update(UpdateRequest::Upsert(points(200..300, 4, &mut rng)))
            .unwrap();
        for _ in 0..4 {
            shard.optimize_step(&builder);
        }
        assert!(shard.stats().indexed_vectors >= 264, "{:?}", shard.stats());
    }

    /// `max_optimization_threads: 0` switches the optimizer off, as in Qdrant, and reports the
    /// waiting work as `Paused` (Qdrant's `grey`); "auto" (`None`) switches it on again.
    #[test]
    fn zero_optimization_threads_pause_the_optimizer_until_the_setting_changes() {
        let dir = tempfile::tempdir().unwrap();
        let builder = IndexBuilder::new(1);
        let mut paused = config(4, 1);
        Arc::make_mut(&mut paused)
            .optimizer_config
            .max_optimization_threads = Some(0);
        let shard = LocalShard::open(dir.path(), Arc::clone(&paused), SyncMode::Os).unwrap();
        let mut rng = StdRng::seed_from_u64(4);
        shard
            .update(UpdateRequest::Upsert(points(0..200, 4, &mut rng)))
            .unwrap();
        for _ in 0..3 {
            assert!(!shard.optimize_step(&builder));
        }
        assert_eq!(shard.stats().indexed_vectors, 0);
        assert_eq!(shard.optimizer_status(), OptimizerStatus::Paused);
        let mut one = config(4, 1);
        Arc::make_mut(&mut one)
            .optimizer_config
            .max_optimization_threads = Some(1);
        shard.set_config(one);
        assert_eq!(shard.optimizer_status(), OptimizerStatus::Busy);
        for _ in 0..6 {
            shard.optimize_step(&builder);
        }
        assert!(shard.stats().indexed_vectors >= 192, "{:?}", shard.stats());
    }

    #[test]
    fn a_graph_build_uses_the_collections_indexing_threads_within_the_nodes_budget() {
        let builder = IndexBuilder::new(3);
        for (asked, used) in [(0, 3), (1, 1), (2, 2), (3, 3), (16, 3)] {
            assert_eq!(
                builder.threads_for(asked),
                used,
                "max_indexing_threads {asked}"
            );
            assert_eq!(
                builder.pool_for(asked).current_num_threads(),
                used,
                "max_indexing_threads {asked}"
            );
        }
        // The whole budget is the node's own pool.
        assert!(Arc::ptr_eq(&builder.pool_for(0), &builder.pool_for(16)));
        assert!(!Arc::ptr_eq(&builder.pool_for(0), &builder.pool_for(2)));
    }

    /// A payload at the API's depth limit (`MAX_PAYLOAD_DEPTH`) is read back from every place a
    /// shard keeps it: the WAL (reopened without a flush), a sealed segment's payload file
    /// (`on_disk_payload`) and the point store. Deeper payloads used to be acknowledged and
    /// then refuse the segment at open.
    #[test]
    fn payloads_at_the_depth_limit_survive_the_wal_the_segment_files_and_reopen() {
        use crate::index::payload_path::{MAX_PAYLOAD_DEPTH, nested_payload, payload_depth};
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(4, 1);
        assert!(cfg.params.on_disk_payload);
        let builder = IndexBuilder::new(1);
        let open = || LocalShard::open(dir.path(), Arc::clone(&cfg), SyncMode::Os).unwrap();
        let deep = nested_payload(MAX_PAYLOAD_DEPTH);
        assert_eq!(payload_depth(&deep), MAX_PAYLOAD_DEPTH);
        let mut rng = StdRng::seed_from_u64(7);
        let mut writes = points(0..150, 4, &mut rng);
        for w in &mut writes {
            w.payload = deep.clone();
        }
        let ids: Vec<PointId> = writes.iter().map(|w| w.id).collect();
        let check = |shard: &LocalShard, stage: &str| {
            let got = shard.retrieve(&ids, true, &WithVector::None);
            assert_eq!(got.len(), ids.len(), "{stage}");
            for r in got {
                assert_eq!(
                    r.payload.as_ref(),
                    Some(&deep),
                    "{stage}: payload of {}",
                    r.id
                );
            }
        };
        let shard = open();
        let request = UpdateRequest::Upsert(writes);
        request.check_payload_depth().unwrap();
        shard.update(request).unwrap();
        drop(shard);
        let shard = open();
        check(&shard, "after the WAL replay");
        for _ in 0..6 {
            shard.optimize_step(&builder);
        }
        shard.flush().unwrap();
        assert!(shard.stats().indexed_vectors > 0, "{:?}", shard.stats());
        check(&shard, "after sealing");
        drop(shard);
        let shard = open();
        assert!(
            shard
                .state
                .read()
                .segments
                .values()
                .any(|s| s.payloads_mapped()),
            "a sealed segment reads its payloads from its files"
        );
        check(&shard, "after reopening sealed segments");
    }

    #[test]
    fn sealed_segments_on_disk_survive_crashes_and_reopen_without_rebuilding() {
        for seed in 0..4u64 {
            let dir = tempfile::tempdir().unwrap();
            // Payloads read from the segment files (`on_disk_payload`, the default) or held
            // in memory; the setting is switched now and then (as a collection update does).
            let mut cfg = config(4, 1);
            Arc::make_mut(&mut cfg).params.on_disk_payload = seed % 2 == 0;
            let builder = IndexBuilder::new(1);
            let mut rng = StdRng::seed_from_u64(seed);
            let mut model: BTreeMap<PointId, (Vec<f32>, Payload)> = BTreeMap::new();
            let open = |cfg: &Arc<CollectionConfig>| {
                LocalShard::open(dir.path(), Arc::clone(cfg), SyncMode::Os).unwrap()
            };
            let mut shard = open(&cfg);
            let mut switched = 0;
            let mut reopened_sealed = 0;
            for step in 0..400u64 {
                let some_ids = |rng: &mut StdRng, n: usize| -> Vec<PointId> {
                    (0..n)
                        .map(|_| PointId::Num(rng.random_range(0..400)))
                        .collect()
                };
                match rng.random_range(0..100) {
                    0..40 => {
                        let n = rng.random_range(1..30);
                        let writes: Vec<PointWrite> = some_ids(&mut rng, n)
                            .into_iter()
                            .map(|id| {
                                let v: Vec<f32> =
                                    (0..4).map(|_| rng.random_range(-1.0..1.0)).collect();
                                let mut payload = Payload::new();
                                payload.insert("step".into(), serde_json::json!(step));
                                model.insert(id, (v.clone(), payload.clone()));
                                PointWrite::dense(id, v, payload)
                            })
                            .collect();
                        shard.update(UpdateRequest::Upsert(writes)).unwrap();
                    }
                    40..50 => {
                        let ids = some_ids(&mut rng, 10);
                        ids.iter().for_each(|id| {
                            model.remove(id);
                        });
                        shard
                            .update(UpdateRequest::Delete(PointSelection::Ids(ids)))
                            .unwrap();
                    }
                    50..60 => {
                        let ids = some_ids(&mut rng, 20);
                        let mut tag = Payload::new();
                        tag.insert("tag".into(), serde_json::json!(step));
                        for id in &ids {
                            if let Some((_, p)) = model.get_mut(id) {
                                p.insert("tag".into(), serde_json::json!(step));
                            }
                        }
                        shard
                            .update(UpdateRequest::SetPayload {
                                selection: PointSelection::IdsIfPresent(ids),
                                payload: tag,
                                key: None,
                            })
                            .unwrap();
                    }
                    60..65 => {
                        let ids = some_ids(&mut rng, 5);
                        let v = vec![step as f32, 0.0, 0.0, 1.0];
                        for id in &ids {
                            if let Some((old, _)) = model.get_mut(id) {
                                *old = v.clone();
                            }
                        }
                        let points = ids
                            .into_iter()
                            .map(|id| {
                                (
                                    id,
                                    NamedVectors::from([(
                                        String::new(),
                                        VectorData::Dense(v.clone()),
                                    )]),
                                )
                            })
                            .collect();
                        shard
                            .update(UpdateRequest::UpdateVectors {
                                points,
                                filter: None,
                                missing_ok: true,
                            })
                            .unwrap();
                    }
                    65..80 => {
                        for _ in 0..3 {
                            shard.optimize_step(&builder);
                        }
                    }
                    80..88 => shard.flush().unwrap(),
                    88..90 => {
                        let on_disk = &mut Arc::make_mut(&mut cfg).params.on_disk_payload;
                        *on_disk = !*on_disk;
                        shard.set_config(Arc::clone(&cfg));
                        switched += 1;
                        assert_matches_model(&shard, &model);
                    }
                    90..95 => {
                        // kill -9: whatever was not flushed is in the WAL; directories the
                        // optimizer wrote since the last flush are not listed anywhere.
                        drop(shard);
                        shard = open(&cfg);
                        assert_matches_model(&shard, &model);
                    }
                    _ => {
                        shard.flush().unwrap();
                        let before = shard.stats();
                        drop(shard);
                        shard = open(&cfg);
                        assert_matches_model(&shard, &model);
                        // Nothing was built on open: the sealed segments came back indexed.
                        assert_eq!(shard.stats().indexed_vectors, before.indexed_vectors);
                        reopened_sealed += before.indexed_vectors;
                    }
                }
                if step % 50 == 0 {
                    assert_matches_model(&shard, &model);
                }
            }
            // Only the segments the store lists are on disk, and searching works on them.
            shard.flush().unwrap();
            let listed = shard.stats();
            let on_disk = std::fs::read_dir(dir.path().join(SEGMENTS_DIR))
                .unwrap()
                .count();
            let persisted = shard
                .state
                .read()
                .segments
                .values()
                .filter(|s| s.is_persisted())
                .count();
            assert_eq!(on_disk, persisted, "{listed:?}");
            drop(shard);
            let shard = open(&cfg);
            for seg in shard.state.read().segments.values() {
                assert_eq!(
                    seg.payloads_mapped(),
                    seg.is_persisted() && cfg.params.on_disk_payload,
                    "payloads are read from segment files exactly when on_disk_payload says so"
                );
            }
            assert_eq!(
                std::fs::read_dir(dir.path().join(SEGMENTS_DIR))
                    .unwrap()
                    .count(),
                on_disk
            );
            assert_matches_model(&shard, &model);
            let q = [0.1, 0.2, -0.3, 0.4];
            let mut truth: Vec<(f32, PointId)> = model
                .iter()
                .map(|(id, (v, _))| (Distance::Euclid.score(&q, v), *id))
                .collect();
            truth.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            let exact: Vec<PointId> = shard
                .search(&exact_query(&q, 5))
                .iter()
                .map(|r| r.id)
                .collect();
            let want: Vec<PointId> = truth.iter().take(5).map(|t| t.1).collect();
            assert_eq!(exact, want);
            assert!(
                reopened_sealed > 0,
                "seed {seed}: some reopen found sealed segments"
            );
            assert!(switched > 0, "seed {seed}: on_disk_payload was switched");
        }
    }

    #[test]
    fn a_vector_removed_and_created_again_never_brings_back_old_values() {
        use crate::collection_config::{VectorParams, VectorsConfig};
        let dir = tempfile::tempdir().unwrap();
        let named = |names: &[&str]| {
            let mut cfg = (*config(4, 1)).clone();
            cfg.params.vectors = VectorsConfig::Named(
                names
                    .iter()
                    .map(|n| (n.to_string(), VectorParams::new(4, Distance::Dot, false)))
                    .collect(),
            );
            Arc::new(cfg)
        };
        let (both, only_a) = (named(&["a", "b"]), named(&["a"]));
        let writes: Vec<PointWrite> = (0..300u64)
            .map(|i| PointWrite {
                id: PointId::Num(i),
                vectors: NamedVectors::from([
                    ("a".to_string(), VectorData::Dense(vec![i as f32; 4])),
                    ("b".to_string(), VectorData::Dense(vec![1.0; 4])),
                ]),
                payload: Payload::new(),
            })
            .collect();
        for flush in [true, false] {
            let dir = dir.path().join(flush.to_string());
            let shard = LocalShard::open(&dir, Arc::clone(&both), SyncMode::Os).unwrap();
            shard.update(UpdateRequest::Upsert(writes.clone())).unwrap();
            let builder = IndexBuilder::new(1);
            while shard.optimize_step(&builder) {}
            shard.flush().unwrap();
            assert!(shard.stats().indexed_vectors > 0, "segments went to disk");
            // `b` removed, then created again: no optimizer step, and (second round) a crash
            // before any flush.
            shard.set_config(Arc::clone(&only_a));
            shard.set_config(Arc::clone(&both));
            if flush {
                shard.flush().unwrap();
            }
            drop(shard);
            let shard = LocalShard::open(&dir, Arc::clone(&both), SyncMode::Os).unwrap();
            let ids: Vec<PointId> = (0..300).map(PointId::Num).collect();
            let got = shard.retrieve(&ids, false, &WithVector::All);
            assert_eq!(got.len(), 300);
            for r in got {
                let vectors = r.vector.unwrap();
                assert!(vectors.contains_key("a"), "{} kept a", r.id);
                assert!(!vectors.contains_key("b"), "{} got its old b back", r.id);
            }
        }
    }

    #[test]
    fn a_wrong_dimension_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let shard = LocalShard::open(dir.path(), config(4, 1), SyncMode::Os).unwrap();
        let bad = PointWrite::dense(PointId::Num(1), vec![1.0; 3], Payload::new());
        assert!(matches!(
            shard.update(UpdateRequest::Upsert(vec![bad])),
            Err(ShardError::WrongDimension {
                expected: 4,
                got: 3
            })
        ));
        assert_eq!(shard.count(), 0);
        assert_eq!(shard.stats().last_seq, 0);
    }

    /// Searches, scrolls and counts see every live point exactly once while the optimizer seals,
    /// indexes and vacuums segments underneath them.
    #[test]
    fn reads_stay_exact_while_the_optimizer_works() {
        let dir = tempfile::tempdir().unwrap();
        let dim = 8;
        // 1 KB per segment: 32 points each, so many segments get indexed.
        let shard = Arc::new(LocalShard::open(dir.path(), config(dim, 1), SyncMode::Os).unwrap());
        let builder = Arc::new(IndexBuilder::new(2));
        let mut rng = StdRng::seed_from_u64(2);
        shard
            .update(UpdateRequest::Upsert(points(0..2000, dim, &mut rng)))
            .unwrap();
        // Delete a third so that vacuuming kicks in.
        let doomed: Vec<PointId> = (0..2000).filter(|i| i % 3 == 0).map(PointId::Num).collect();
        shard
            .update(UpdateRequest::Delete(PointSelection::Ids(doomed)))
            .unwrap();
        let live: Vec<u64> = (0..2000).filter(|i| i % 3 != 0).collect();

        let optimizer = {
            let (shard, builder) = (Arc::clone(&shard), Arc::clone(&builder));
            std::thread::spawn(move || {
                let mut steps = 0;
                while shard.optimize_step(&builder) {
                    steps += 1;
                    assert!(steps < 10_000, "the optimizer must converge");
                }
                steps
            })
        };
        let query: Vec<f32> = vec![0.1; dim];
        let mut rounds = 0;
        loop {
            let finished = optimizer.is_finished();
            let all = shard.scroll(None, usize::MAX, None, false, &WithVector::None);
            let ids: Vec<u64> = all
                .iter()
                .map(|r| match r.id {
                    PointId::Num(n) => n,
                    PointId::Uuid(_) => unreachable!(),
                })
                .collect();
            assert_eq!(
                ids, live,
                "scroll must return every live point once, in order"
            );
            assert_eq!(shard.count(), live.len());
            // A count that visits each segment's live points (as counts by filter do).
            let every =
                |_: PointId, _: PayloadRead<'_>, _: crate::index::filter::HasVector<'_>| true;
            assert_eq!(shard.count_matching(None, Some(&every)), live.len());
            let hits = shard.search(&exact_query(&query, live.len() + 10));
            assert_eq!(
                hits.len(),
                live.len(),
                "an exhaustive search sees every live point once"
            );
            let unique: HashSet<PointId> = hits.iter().map(|h| h.id).collect();
            assert_eq!(unique.len(), hits.len());
            rounds += 1;
            if finished {
                break;
            }
        }
        let steps = optimizer.join().unwrap();
        assert!(steps > 0 && rounds > 0);
        assert_eq!(shard.optimizer_status(), OptimizerStatus::Idle);
        let stats = shard.stats();
        assert!(stats.indexed_vectors > 0, "{stats:?}");
        // Approximate search over the graphs agrees with exhaustive search on the nearest points.
        let approx = shard.search(&SearchQuery {
            exact: false,
            quantization: QuantizationSearch::default(),
            ef: Some(256),
            ..exact_query(&query, 10)
        });
        let exact = shard.search(&exact_query(&query, 10));
        let overlap = approx
            .iter()
            .filter(|a| exact.iter().any(|e| e.id == a.id))
            .count();
        assert!(
            overlap >= 8,
            "approximate search found {overlap}/10 of the true neighbours"
        );
    }

    /// The optimizer view reports the queue by the optimizer's own rules, and every step it
    /// runs lands in the bounded log with its segments' points.
    #[test]
    fn the_optimizer_view_reports_the_queue_and_the_steps_run() {
        let dir = tempfile::tempdir().unwrap();
        let dim = 8;
        let shard = LocalShard::open(dir.path(), config(dim, 1), SyncMode::Os).unwrap();
        let builder = IndexBuilder::new(1);
        let mut rng = StdRng::seed_from_u64(6);
        // 32 points per segment: 20 sealed segments waiting for their index.
        shard
            .update(UpdateRequest::Upsert(points(0..640, dim, &mut rng)))
            .unwrap();
        let before = shard.optimizer_view();
        assert!(before.running.is_empty() && before.completed.is_empty());
        // Sealed segments waiting together are indexed together, in one step.
        assert_eq!(before.queued.len(), 1);
        let queued = &before.queued[0];
        assert_eq!(queued.optimizer, OptimizerName::Indexing);
        assert_eq!(queued.segments.len(), 20);
        assert!(queued.segments.iter().all(|s| s.points == 32));
        assert_eq!(
            before.idle.len(),
            1,
            "the appendable segment has nothing to do"
        );
        assert!(shard.optimize_step(&builder));
        let after = shard.optimizer_view();
        assert!(after.queued.is_empty());
        assert_eq!(after.completed.len(), 1);
        let step = &after.completed[0];
        assert_eq!(step.optimizer, OptimizerName::Indexing);
        assert_eq!(step.segments, queued.segments);
        assert!(matches!(step.outcome, OptimizationOutcome::Done { .. }));
        assert_eq!(after.totals.done, 1);
        assert_eq!(after.totals.optimized_points, 640);
        // One sealed segment at a time: a step each, then merges.
        for batch in 0..20u64 {
            let first = 640 + batch * 32;
            shard
                .update(UpdateRequest::Upsert(points(
                    first..first + 32,
                    dim,
                    &mut rng,
                )))
                .unwrap();
            while shard.optimize_step(&builder) {}
        }
        let done = shard.optimizer_view();
        assert!(done.queued.is_empty() && done.running.is_empty());
        assert_eq!(
            done.completed.len(),
            KEEP_COMPLETED_OPTIMIZATIONS,
            "the log is bounded"
        );
        assert!(done.totals.done > KEEP_COMPLETED_OPTIMIZATIONS);
        assert!(
            done.completed.windows(2).all(|w| w[0].seq > w[1].seq),
            "newest first"
        );
        assert_eq!(
            shard.vector_counts(),
            BTreeMap::from([(String::new(), 1280)])
        );
    }

    /// A shard of 1,500 random points of 16 dimensions under `distance`, scalar-quantized
    /// (quantile 0.99), fully optimized; with `on_disk` vectors when asked.
    fn quantized_shard(
        dir: &std::path::Path,
        distance: Distance,
        on_disk: bool,
        builder: &IndexBuilder,
    ) -> (LocalShard, Arc<CollectionConfig>) {
        let dim = 16;
        let mut cfg = CollectionConfig::single_dense(dim, distance);
        cfg.hnsw_config.full_scan_threshold = 0;
        cfg.optimizer_config.indexing_threshold = Some(4);
        cfg.optimizer_config.default_segment_number = 3;
        cfg.quantization_config =
            Some(serde_json::json!({"scalar": {"type": "int8", "quantile": 0.99}}));
        if let crate::collection_config::VectorsConfig::Single(p) = &mut cfg.params.vectors {
            p.on_disk = Some(on_disk);
        }
        let cfg = Arc::new(cfg);
        let shard = LocalShard::open(dir, Arc::clone(&cfg), SyncMode::Os).unwrap();
        let mut rng = StdRng::seed_from_u64(17);
        // Stored as the API stores them: normalised for Cosine.
        let points = (0..1500)
            .map(|i| {
                let mut v: Vec<f32> = (0..dim).map(|_| rng.random_range(-1.0..1.0)).collect();
                distance.preprocess(&mut v);
                PointWrite::dense(PointId::Num(i), v, Payload::new())
            })
            .collect();
        shard.update(UpdateRequest::Upsert(points)).unwrap();
        while shard.optimize_step(builder) {}
        (shard, cfg)
    }

    /// The quantile of every indexed segment's codes (1.0: none given), `None` without codes.
    fn codes_of(shard: &LocalShard) -> Vec<Option<f32>> {
        let state = shard.state.read();
        state
            .segments
            .values()
            .filter(|s| s.stage() == SegmentStage::Indexed)
            .map(|s| {
                s.index()
                    .unwrap()
                    .quantized
                    .get("")
                    .map(|q| q.quantile().unwrap_or(1.0))
            })
            .collect()
    }

    /// Recall@10 of graph searches (`hnsw_ef` 64) against exact ones over 20 random queries,
    /// and whether every score returned was the point's true score.
    fn quantized_recall(
        shard: &LocalShard,
        distance: Distance,
        quantization: QuantizationSearch,
    ) -> (f64, bool) {
        let mut rng = StdRng::seed_from_u64(23);
        let (mut found, mut exact_scores) = (0, true);
        for _ in 0..20 {
            let mut q: Vec<f32> = (0..16).map(|_| rng.random_range(-1.0..1.0)).collect();
            distance.preprocess(&mut q);
            let exact = shard.search(&exact_query(&q, 10));
            let approx = shard.search(&SearchQuery {
                exact: false,
                ef: Some(64),
                quantization,
                ..exact_query(&q, 10)
            });
            assert_eq!(approx.len(), 10);
            for hit in &approx {
                let Some(VectorData::Dense(v)) = shard.vector_of(&hit.id, "") else {
                    panic!("a hit without its vector");
                };
                exact_scores &= (hit.score - distance.score(&q, &v)).abs() <= 1e-5;
                found += usize::from(exact.iter().any(|e| e.id == hit.id));
            }
        }
        (found as f64 / 200.0, exact_scores)
    }

    /// Scalar quantization (Qdrant's `quantization_config.scalar`), for every distance: every
    /// indexed segment keeps codes; a graph search walks the codes and rescores its candidates
    /// with the original vectors (true scores, high recall); `rescore: false` answers the
    /// codes' scores; `ignore` walks the original vectors.
    #[test]
    fn scalar_quantized_segments_walk_codes_and_rescore_with_vectors() {
        let builder = IndexBuilder::new(1);
        for distance in [
            Distance::Cosine,
            Distance::Dot,
            Distance::Euclid,
            Distance::Manhattan,
        ] {
            let dir = tempfile::tempdir().unwrap();
            let (shard, _) = quantized_shard(dir.path(), distance, false, &builder);
            let codes = codes_of(&shard);
            assert!(!codes.is_empty(), "segments were indexed");
            assert!(codes.iter().all(|q| *q == Some(0.99)), "{codes:?}");
            let (recall, exact_scores) =
                quantized_recall(&shard, distance, QuantizationSearch::default());
            assert!(recall >= 0.9, "{distance:?}: recall@10 {recall}");
            assert!(
                exact_scores,
                "{distance:?}: rescored hits report true scores"
            );
            let unrescored = QuantizationSearch {
                rescore: Some(false),
                ..Default::default()
            };
            let (recall, exact_scores) = quantized_recall(&shard, distance, unrescored);
            assert!(recall >= 0.7, "{distance:?}: recall@10 from codes {recall}");
            assert!(
                !exact_scores,
                "{distance:?}: without rescoring, the codes' scores"
            );
            let ignored = QuantizationSearch {
                ignore: true,
                ..unrescored
            };
            let (recall, exact_scores) = quantized_recall(&shard, distance, ignored);
            assert!(
                recall >= 0.9 && exact_scores,
                "{distance:?}: ignore walks the vectors"
            );
        }
    }

    /// With the vectors on disk only `top * oversampling` candidates are rescored (each may
    /// be a page read), so oversampling buys recall back.
    #[test]
    fn oversampling_rescores_more_candidates_when_vectors_are_on_disk() {
        let builder = IndexBuilder::new(1);
        let dir = tempfile::tempdir().unwrap();
        let (shard, _) = quantized_shard(dir.path(), Distance::Euclid, true, &builder);
        let (plain, exact_scores) =
            quantized_recall(&shard, Distance::Euclid, QuantizationSearch::default());
        assert!(exact_scores);
        let oversampled = QuantizationSearch {
            oversampling: Some(4.0),
            ..Default::default()
        };
        let (more, exact_scores) = quantized_recall(&shard, Distance::Euclid, oversampled);
        assert!(exact_scores);
        assert!(
            more > plain,
            "oversampling 4: recall {more}, without: {plain}"
        );
        assert!(more >= 0.95, "recall@10 {more}");
    }

    /// Codes survive a reopen without any indexing work; a changed quantile quantizes again;
    /// without the setting the codes are dropped from memory and searches are exact again.
    #[test]
    fn quantized_codes_survive_reopen_and_follow_the_configuration() {
        let builder = IndexBuilder::new(1);
        let dir = tempfile::tempdir().unwrap();
        let cfg = {
            let (shard, cfg) = quantized_shard(dir.path(), Distance::Euclid, false, &builder);
            shard.flush().unwrap();
            cfg
        };
        let shard = LocalShard::open(dir.path(), Arc::clone(&cfg), SyncMode::Os).unwrap();
        assert!(codes_of(&shard).iter().all(|q| *q == Some(0.99)));
        assert!(
            !shard.optimize_step(&builder),
            "no indexing work after a reopen"
        );
        assert!(quantized_recall(&shard, Distance::Euclid, QuantizationSearch::default()).0 >= 0.9);
        let mut other = (*cfg).clone();
        other.quantization_config =
            Some(serde_json::json!({"scalar": {"type": "int8", "quantile": 0.9}}));
        shard.set_config(Arc::new(other.clone()));
        assert!(
            codes_of(&shard).is_empty(),
            "indexes with stale codes are dropped"
        );
        while shard.optimize_step(&builder) {}
        let codes = codes_of(&shard);
        assert!(
            !codes.is_empty() && codes.iter().all(|q| *q == Some(0.9)),
            "{codes:?}"
        );
        other.quantization_config = None;
        shard.set_config(Arc::new(other));
        let codes = codes_of(&shard);
        assert!(
            !codes.is_empty() && codes.iter().all(Option::is_none),
            "{codes:?}"
        );
        let unrescored = QuantizationSearch {
            rescore: Some(false),
            ..Default::default()
        };
        let (recall, exact_scores) = quantized_recall(&shard, Distance::Euclid, unrescored);
        assert!(recall >= 0.9 && exact_scores, "recall@10 {recall}");
    }

    /// A sealed segment that would push the indexed segments past the target count is built
    /// together with the smallest indexed one, in one indexing step, instead of being indexed
    /// alone and then merged (which would build its points twice).
    #[test]
    fn indexing_takes_the_smallest_indexed_segment_along_past_the_target_count() {
        let dir = tempfile::tempdir().unwrap();
        let dim = 8;
        let shard = shard_aiming_for(dir.path(), dim, 3);
        let builder = IndexBuilder::new(1);
        let mut rng = StdRng::seed_from_u64(8);
        // 32 points per sealed segment: 64 points (two segments, indexed together), then 32,
        // then 32.
        for (first, n) in [(0u64, 64u64), (64, 32), (96, 32)] {
            shard
                .update(UpdateRequest::Upsert(points(
                    first..first + n,
                    dim,
                    &mut rng,
                )))
                .unwrap();
            while shard.optimize_step(&builder) {}
        }
        assert_eq!(indexed_sizes(&shard), [64, 64]);
        let steps = shard.optimizer_view().completed;
        assert!(
            steps.iter().all(|s| s.optimizer == OptimizerName::Indexing),
            "no merge step ran: {steps:?}"
        );
        let last = &steps[0];
        assert_eq!(
            last.segments.iter().map(|s| s.points).collect::<Vec<_>>(),
            [32, 32],
            "the third sealed segment was built with the smallest indexed one"
        );
        assert_eq!(shard.count(), 128);
    }

    /// A shard of `dim`-dimensional vectors that seals a segment every 32 points, with
    /// `default_segment_number` `segments` (the appendable segment included).
    fn shard_aiming_for(dir: &std::path::Path, dim: usize, segments: usize) -> LocalShard {
        let mut cfg = (*config(dim, 1)).clone();
        cfg.optimizer_config.default_segment_number = segments;
        LocalShard::open(dir, Arc::new(cfg), SyncMode::Os).unwrap()
    }

    /// The live points of each indexed segment of `shard`, smallest first.
    fn indexed_sizes(shard: &LocalShard) -> Vec<usize> {
        let state = shard.state.read();
        let mut sizes: Vec<usize> = state
            .segments
            .values()
            .filter(|s| s.stage() == SegmentStage::Indexed)
            .map(Segment::live_count)
            .collect();
        sizes.sort_unstable();
        sizes
    }

    #[test]
    fn the_indexed_segment_target_leaves_room_for_the_appendable_one() {
        let target = |n: usize| {
            let mut cfg = (*config(8, 1)).clone();
            cfg.optimizer_config.default_segment_number = n;
            target_segment_count(&cfg)
        };
        assert_eq!([target(1), target(2), target(3), target(8)], [1, 1, 2, 7]);
        // 0: Qdrant's default of one segment per two cores, between 2 and 8 in all.
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        assert_eq!(target(0), (cores / 2).clamp(2, 8) - 1);
    }

    #[test]
    fn default_segment_number_counts_the_appendable_segment_as_qdrant_does() {
        let dir = tempfile::tempdir().unwrap();
        let dim = 8;
        let shard = shard_aiming_for(dir.path(), dim, 2);
        let builder = IndexBuilder::new(1);
        let mut rng = StdRng::seed_from_u64(8);
        // Sealed in segments of 32 points, upserted in three rounds so that indexed segments
        // exist when later ones are sealed.
        for round in 0..3u64 {
            let ids = round * 160..(round + 1) * 160;
            shard
                .update(UpdateRequest::Upsert(points(ids, dim, &mut rng)))
                .unwrap();
            while shard.optimize_step(&builder) {}
        }
        assert_eq!(
            indexed_sizes(&shard),
            [480],
            "two segments in all: one indexed next to the appendable one"
        );
        let state = shard.state.read();
        assert!(
            state.segments.len() <= 2,
            "{} segments for a target of two",
            state.segments.len()
        );
    }

    #[test]
    fn small_indexed_segments_are_merged_down_to_the_target_count() {
        let dir = tempfile::tempdir().unwrap();
        let dim = 8;
        let shard = shard_aiming_for(dir.path(), dim, 3);
        let builder = IndexBuilder::new(1);
        let mut rng = StdRng::seed_from_u64(5);
        // 32 points per segment: 30 sealed segments.
        shard
            .update(UpdateRequest::Upsert(points(0..960, dim, &mut rng)))
            .unwrap();
        while shard.optimize_step(&builder) {}
        let indexed = indexed_sizes(&shard).len();
        assert!(indexed <= 2, "{indexed} indexed segments left");
        assert_eq!(shard.count(), 960);
        let q = vec![0.2; dim];
        let exact = shard.search(&exact_query(&q, 10));
        let approx = shard.search(&SearchQuery {
            exact: false,
            quantization: QuantizationSearch::default(),
            ef: Some(200),
            ..exact_query(&q, 10)
        });
        let overlap = approx
            .iter()
            .filter(|a| exact.iter().any(|e| e.id == a.id))
            .count();
        assert!(
            overlap >= 9,
            "the merged graph found {overlap}/10 true neighbours"
        );
    }

    #[test]
    fn filtered_search_is_complete_even_when_the_filter_is_selective() {
        let dir = tempfile::tempdir().unwrap();
        let dim = 8;
        let shard = LocalShard::open(dir.path(), config(dim, 4), SyncMode::Os).unwrap();
        let builder = IndexBuilder::new(1);
        let mut rng = StdRng::seed_from_u64(3);
        shard
            .update(UpdateRequest::Upsert(points(0..1000, dim, &mut rng)))
            .unwrap();
        while shard.optimize_step(&builder) {}
        let rare = |id: PointId, _: PayloadRead<'_>, _: crate::index::filter::HasVector<'_>| matches!(id, PointId::Num(n) if n % 100 == 7);
        let q = vec![0.0; dim];
        let hits = shard.search(&SearchQuery {
            using: "",
            scoring: Scoring::Nearest(QueryVector::Dense(&q)),
            accept: Some(&rare),
            filter: None,
            rest: None,
            top: 20,
            ef: Some(16),
            exact: false,
            quantization: QuantizationSearch::default(),
            score_threshold: None,
            with_payload: false,
            with_vector: &WithVector::None,
        });
        assert_eq!(
            hits.len(),
            10,
            "all ten matching points, though the graph walk alone finds few"
        );
    }

    /// Payload indexes only choose which points a filtered search scores: across payload edits
    /// after the indexes were built, upserts, deletes, optimizer steps, reopens and schema
    /// changes, a selective filtered search returns exactly the points that pass the filter.
    #[test]
    fn payload_indexes_never_hide_a_matching_point() {
        use crate::index::filter::Filter;
        let dir = tempfile::tempdir().unwrap();
        let dim = 4;
        let mut cfg = (*config(dim, 1)).clone();
        // 16 bytes a point: a graph per 64 points, and a scan below 128 candidates.
        cfg.hnsw_config.full_scan_threshold = 2;
        let cfg = Arc::new(cfg);
        let schema: BTreeMap<String, PayloadIndexEntry> =
            serde_json::from_value(serde_json::json!({
                "kw": {"data_type": "keyword"},
                "n": {"data_type": "integer"},
                "tags": {"data_type": "keyword"}
            }))
            .unwrap();
        let builder = IndexBuilder::new(1);
        let mut rng = StdRng::seed_from_u64(11);
        let kw = |rng: &mut StdRng| match rng.random_range(0..100) {
            0..3 => "rare",
            3..50 => "half",
            _ => "other",
        };
        let write = |ids: std::ops::Range<u64>, rng: &mut StdRng| -> Vec<PointWrite> {
            ids.map(|i| {
                let payload: Payload = serde_json::from_value(serde_json::json!({
                    "kw": kw(rng),
                    "n": i,
                    "tags": [kw(rng), "t"],
                }))
                .unwrap();
                PointWrite::dense(
                    PointId::Num(i),
                    (0..dim).map(|_| rng.random_range(-1.0..1.0)).collect(),
                    payload,
                )
            })
            .collect()
        };
        let filters: Vec<Filter> = [
            serde_json::json!({"must": [{"key": "kw", "match": {"value": "rare"}}]}),
            serde_json::json!({"must": [{"key": "tags", "match": {"any": ["rare"]}}]}),
            serde_json::json!({"must": [{"key": "n", "range": {"gte": 100, "lt": 140}}]}),
            serde_json::json!({"must": [
                {"key": "kw", "match": {"value": "half"}},
                {"key": "n", "range": {"lt": 200}}
            ]}),
            serde_json::json!({"should": [
                {"key": "kw", "match": {"value": "rare"}},
                {"has_id": [5, 700, 1999]}
            ]}),
            serde_json::json!({"must": [{"key": "kw", "match": {"value": "rare"}}],
                               "must_not": [{"key": "n", "range": {"lt": 300}}]}),
        ]
        .into_iter()
        .map(|f| serde_json::from_value(f).unwrap())
        .collect();
        let live_sample = |shard: &LocalShard, n: usize, rng: &mut StdRng| -> Vec<PointId> {
            let live: Vec<PointId> = shard.state.read().locations.keys().copied().collect();
            (0..n.min(live.len()))
                .map(|_| live[rng.random_range(0..live.len())])
                .collect()
        };
        let mut shard = LocalShard::open(dir.path(), Arc::clone(&cfg), SyncMode::Os).unwrap();
        shard.set_payload_schema(&schema);
        let mut next = 0u64;
        let mut indexed_seen = false;
        for round in 0..80 {
            match rng.random_range(0..7) {
                0 | 1 => {
                    let n = rng.random_range(1..200);
                    shard
                        .update(UpdateRequest::Upsert(write(next..next + n, &mut rng)))
                        .unwrap();
                    next += n;
                }
                2 => {
                    // Payload edits to points of every stage, after their indexes were built.
                    let ids = live_sample(&shard, 20, &mut rng);
                    // Often into the selective filters' range, so missed points would show.
                    let any = ["rare", "half", "other"];
                    let payload: Payload = serde_json::from_value(serde_json::json!({
                        "kw": any[rng.random_range(0..3)],
                        "tags": [any[rng.random_range(0..3)]],
                        "n": rng.random_range(0..300),
                    }))
                    .unwrap();
                    shard
                        .update(UpdateRequest::SetPayload {
                            selection: PointSelection::Ids(ids),
                            payload,
                            key: None,
                        })
                        .unwrap();
                }
                3 => {
                    let ids = live_sample(&shard, 10, &mut rng);
                    shard
                        .update(UpdateRequest::Delete(PointSelection::Ids(ids)))
                        .unwrap();
                }
                4 => while shard.optimize_step(&builder) {},
                5 => {
                    shard.flush().unwrap();
                    drop(shard);
                    shard = LocalShard::open(dir.path(), Arc::clone(&cfg), SyncMode::Os).unwrap();
                    shard.set_payload_schema(&schema);
                }
                _ => {
                    // Dropped and declared again.
                    shard.set_payload_schema(&BTreeMap::new());
                    shard.refresh_payload_indexes();
                    assert!(
                        shard
                            .state
                            .read()
                            .segments
                            .values()
                            .all(|s| s.payload_index().is_none())
                    );
                    shard.set_payload_schema(&schema);
                }
            }
            indexed_seen |= shard
                .state
                .read()
                .segments
                .values()
                .any(|s| s.stage() == SegmentStage::Indexed && s.payload_index().is_some());
            let q: Vec<f32> = (0..dim).map(|_| rng.random_range(-1.0..1.0)).collect();
            for filter in &filters {
                // Besides the filter, the predicate leaves out every seventh id, as an
                // excluded id or another shard's point would be.
                let kept = |id: PointId| !matches!(id, PointId::Num(n) if n % 7 == 0);
                let rest =
                    |id: PointId, _: PayloadRead<'_>, _: crate::index::filter::HasVector<'_>| {
                        kept(id)
                    };
                let check =
                    |id: PointId, p: PayloadRead<'_>, has: crate::index::filter::HasVector<'_>| {
                        kept(id) && filter.check_point(id, &p(), has)
                    };
                let passing: Vec<PointId> = {
                    let state = shard.state.read();
                    state
                        .locations
                        .iter()
                        .filter(|(id, loc)| {
                            filter.check(**id, &state.segments[&loc.segment].payload(loc.offset))
                        })
                        .map(|(id, _)| *id)
                        .collect()
                };
                let mut want: Vec<PointId> =
                    passing.iter().copied().filter(|id| kept(*id)).collect();
                want.sort();
                // Whole-shard scans narrowed by the same indexes: counts, selections by
                // filter (deletes, payload changes), facets.
                assert_eq!(
                    shard.count_matching(Some(filter), Some(&rest)),
                    want.len(),
                    "count, round {round}, filter {filter}"
                );
                let selected = shard
                    .state
                    .read()
                    .select(&PointSelection::Filter(filter.clone()))
                    .unwrap();
                assert_eq!(
                    selected, passing,
                    "selection, round {round}, filter {filter}"
                );
                let mut visited = 0;
                shard.for_each_matching_payload(Some(filter), Some(&rest), &mut |_| visited += 1);
                assert_eq!(
                    visited,
                    want.len(),
                    "payloads, round {round}, filter {filter}"
                );
                // Scrolls: a first page and one from the middle, by whichever path the shard
                // picks and by the candidates' path, with the payloads the points hold.
                for (from, limit) in [(None, 3), (want.get(want.len() / 2).copied(), 1000)] {
                    let page: Vec<PointId> = want
                        .iter()
                        .filter(|id| from.is_none_or(|f| **id >= f))
                        .take(limit)
                        .copied()
                        .collect();
                    let records = shard.scroll_matching(
                        from,
                        limit,
                        Some(filter),
                        Some(&rest),
                        true,
                        &WithVector::None,
                    );
                    let got: Vec<PointId> = records.iter().map(|r| r.id).collect();
                    assert_eq!(got, page, "scroll, round {round}, filter {filter}");
                    let state = shard.state.read();
                    for r in &records {
                        let loc = state.locations[&r.id];
                        let held = state.segments[&loc.segment].payload(loc.offset);
                        assert_eq!(r.payload.as_ref(), Some(&*held), "scroll payload");
                    }
                    let gathered: Vec<PointId> = state
                        .scroll_candidates(from, limit, filter, Some(&rest), true)
                        .unwrap()
                        .iter()
                        .map(|(id, _, _)| *id)
                        .collect();
                    assert_eq!(gathered, page, "candidates' scroll, round {round}");
                }
                if want.len() > 100 {
                    continue;
                }
                let hits = shard.search(&SearchQuery {
                    using: "",
                    scoring: Scoring::Nearest(QueryVector::Dense(&q)),
                    accept: Some(&check),
                    filter: Some(filter),
                    rest: Some(&rest),
                    top: 100,
                    ef: Some(16),
                    exact: false,
                    quantization: QuantizationSearch::default(),
                    score_threshold: None,
                    with_payload: false,
                    with_vector: &WithVector::None,
                });
                let mut got: Vec<PointId> = hits.iter().map(|h| h.id).collect();
                got.sort();
                assert_eq!(got, want, "round {round}, filter {filter}");
            }
        }
        assert!(
            indexed_seen,
            "some rounds searched segments with graphs and payload indexes"
        );
    }

    /// A restored shard image starts its sequence numbers again, below the versions its
    /// segment files hold: a payload changed after the restore must still win after a restart.
    #[test]
    fn a_payload_changed_after_a_restore_survives_a_restart() {
        for on_disk_payload in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let mut cfg = config(4, 1);
            Arc::make_mut(&mut cfg).params.on_disk_payload = on_disk_payload;
            let builder = IndexBuilder::new(1);
            let mut rng = StdRng::seed_from_u64(9);
            let source =
                LocalShard::open(&dir.path().join("source"), Arc::clone(&cfg), SyncMode::Os)
                    .unwrap();
            // One upsert a point: the sealed files hold versions up to 300.
            for i in 0..300 {
                source
                    .update(UpdateRequest::Upsert(points(i..i + 1, 4, &mut rng)))
                    .unwrap();
            }
            while source.optimize_step(&builder) {}
            source.flush().unwrap();
            let image = dir.path().join("image");
            source.snapshot_image(0, &image).unwrap();
            crate::shard::snapshot::image_to_shard_dir(&image).unwrap();
            let open = || LocalShard::open(&image, Arc::clone(&cfg), SyncMode::Os).unwrap();
            let restored = open();
            let ids = [PointId::Num(0), PointId::Num(299)];
            let mut tag = Payload::new();
            tag.insert("after_restore".into(), serde_json::json!(true));
            restored
                .update(UpdateRequest::SetPayload {
                    selection: PointSelection::Ids(ids.to_vec()),
                    payload: tag,
                    key: None,
                })
                .unwrap();
            restored.flush().unwrap();
            drop(restored);
            let reopened = open();
            for r in reopened.retrieve(&ids, true, &WithVector::None) {
                let payload = r.payload.unwrap();
                assert_eq!(
                    payload.get("after_restore"),
                    Some(&serde_json::json!(true)),
                    "{} (on_disk_payload {on_disk_payload})",
                    r.id
                );
                assert!(payload.contains_key("i"));
            }
        }
    }

    #[test]
    fn payload_operations_apply_to_points_in_every_segment_stage() {
        let dir = tempfile::tempdir().unwrap();
        let shard = LocalShard::open(dir.path(), config(4, 1), SyncMode::Os).unwrap();
        let builder = IndexBuilder::new(1);
        let mut rng = StdRng::seed_from_u64(4);
        shard
            .update(UpdateRequest::Upsert(points(0..200, 4, &mut rng)))
            .unwrap();
        while shard.optimize_step(&builder) {}
        let mut p = Payload::new();
        p.insert("nested".into(), serde_json::json!({"k": 1}));
        let evens = crate::index::filter::Filter {
            must: Some(vec![
                serde_json::from_value(
                    serde_json::json!({"key": "even", "match": {"value": true}}),
                )
                .unwrap(),
            ]),
            ..Default::default()
        };
        shard
            .update(UpdateRequest::SetPayload {
                selection: PointSelection::Filter(evens),
                payload: p,
                key: None,
            })
            .unwrap();
        shard
            .update(UpdateRequest::DeletePayload {
                selection: PointSelection::Ids(vec![PointId::Num(0)]),
                keys: vec!["nested.k".into()],
            })
            .unwrap();
        shard
            .update(UpdateRequest::ClearPayload(PointSelection::Ids(vec![
                PointId::Num(1),
            ])))
            .unwrap();
        let got = shard.retrieve(
            &[
                PointId::Num(0),
                PointId::Num(1),
                PointId::Num(2),
                PointId::Num(3),
            ],
            true,
            &WithVector::None,
        );
        let payloads: Vec<&Payload> = got.iter().map(|r| r.payload.as_ref().unwrap()).collect();
        assert_eq!(payloads[0]["nested"], serde_json::json!({}));
        assert!(payloads[1].is_empty());
        assert_eq!(payloads[2]["nested"], serde_json::json!({"k": 1}));
        assert!(!payloads[3].contains_key("nested"));
    }
    /// A collection with a named dense vector, a sparse vector and a multivector: points may
    /// lack any of them, every kind is searched through its index after optimization and
    /// exhaustively before, vector updates and deletes apply and survive a reopen, and updates
    /// of missing points fail without changing anything.
    #[test]
    fn named_sparse_and_multi_vectors_round_trip_and_search() {
        use crate::collection_config::{SparseVectorParams, VectorParams, VectorsConfig};
        use crate::types::{NamedVectors, SparseVector, VectorData};
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = (*config(4, 1)).clone();
        let params = |multi: bool| VectorParams::new(4, Distance::Dot, multi);
        cfg.params.vectors = VectorsConfig::Named(BTreeMap::from([
            ("text".to_string(), params(false)),
            ("multi".to_string(), params(true)),
        ]));
        cfg.params.sparse_vectors = Some(BTreeMap::from([(
            "sparse".to_string(),
            SparseVectorParams::default(),
        )]));
        let cfg = Arc::new(cfg);
        let mut rng = StdRng::seed_from_u64(9);
        let mut v = || -> Vec<f32> { (0..4).map(|_| rng.random_range(-1.0..1.0)).collect() };
        let points: Vec<PointWrite> = (0..300u64)
            .map(|i| {
                let mut vectors = NamedVectors::new();
                if i % 3 != 0 {
                    vectors.insert("text".into(), VectorData::Dense(v()));
                }
                vectors.insert("multi".into(), VectorData::Multi(vec![v(), v()]));
                let dims = vec![(i % 10) as u32, 10 + (i % 7) as u32];
                vectors.insert(
                    "sparse".into(),
                    VectorData::Sparse(SparseVector::new(dims, vec![1.0, i as f32]).unwrap()),
                );
                PointWrite {
                    id: PointId::Num(i),
                    vectors,
                    payload: Payload::new(),
                }
            })
            .collect();
        let search = |shard: &LocalShard, using: &str, q: QueryVector<'_>, exact: bool| {
            shard
                .search(&SearchQuery {
                    using,
                    scoring: Scoring::Nearest(q),
                    accept: None,
                    filter: None,
                    rest: None,
                    top: 5,
                    ef: Some(200),
                    exact,
                    quantization: QuantizationSearch::default(),
                    score_threshold: None,
                    with_payload: false,
                    with_vector: &WithVector::Named(vec![using.to_string()]),
                })
                .iter()
                .map(|r| r.id)
                .collect::<Vec<_>>()
        };
        let sparse_q = SparseVector::new(vec![3, 12], vec![1.0, 1.0]).unwrap();
        let multi_q: Vec<f32> = v().into_iter().chain(v()).collect();
        let dense_q = v();
        {
            let shard = LocalShard::open(dir.path(), Arc::clone(&cfg), SyncMode::Os).unwrap();
            shard.update(UpdateRequest::Upsert(points)).unwrap();
            let before = (
                search(&shard, "sparse", QueryVector::Sparse(&sparse_q), true),
                search(&shard, "multi", QueryVector::Multi(&multi_q), true),
                search(&shard, "text", QueryVector::Dense(&dense_q), true),
            );
            let builder = IndexBuilder::new(1);
            while shard.optimize_step(&builder) {}
            assert!(shard.stats().indexed_vectors > 0);
            // The sparse index is exact; the graphs find the true neighbours here.
            assert_eq!(
                search(&shard, "sparse", QueryVector::Sparse(&sparse_q), false),
                before.0
            );
            assert_eq!(
                search(&shard, "multi", QueryVector::Multi(&multi_q), false),
                before.1
            );
            assert_eq!(
                search(&shard, "text", QueryVector::Dense(&dense_q), false),
                before.2
            );
            // Only points sharing a dimension with the query are sparse hits, best first: the
            // ones with dimension 12 (i % 7 == 2) have the largest values.
            assert!(
                before
                    .0
                    .iter()
                    .all(|id| matches!(id, PointId::Num(n) if n % 7 == 2))
            );
            // Points without `text` are never dense hits.
            assert!(
                before
                    .2
                    .iter()
                    .all(|id| matches!(id, PointId::Num(n) if n % 3 != 0))
            );
            let has_text = crate::index::filter::Filter {
                must: Some(vec![
                    serde_json::from_value(serde_json::json!({"has_vector": "text"})).unwrap(),
                ]),
                ..Default::default()
            };
            assert_eq!(shard.count_matching(Some(&has_text), None), 200);
            // Vector updates: one replaced, one deleted; a missing point fails the update.
            shard
                .update(UpdateRequest::UpdateVectors {
                    points: vec![(
                        PointId::Num(0),
                        NamedVectors::from([("text".into(), VectorData::Dense(vec![1.0; 4]))]),
                    )],
                    filter: None,
                    missing_ok: false,
                })
                .unwrap();
            shard
                .update(UpdateRequest::DeleteVectors {
                    selection: PointSelection::Ids(vec![PointId::Num(1)]),
                    names: vec!["multi".into(), "sparse".into()],
                })
                .unwrap();
            let seq = shard.stats().last_seq;
            assert!(matches!(
                shard.update(UpdateRequest::UpdateVectors {
                    points: vec![(
                        PointId::Num(999),
                        NamedVectors::from([("text".into(), VectorData::Dense(vec![1.0; 4]))]),
                    )],
                    filter: None,
                    missing_ok: false,
                }),
                Err(ShardError::PointNotFound(PointId::Num(999)))
            ));
            assert!(matches!(
                shard.update(UpdateRequest::SetPayload {
                    selection: PointSelection::Ids(vec![PointId::Num(2), PointId::Num(999)]),
                    payload: Payload::new(),
                    key: None,
                }),
                Err(ShardError::PointNotFound(_))
            ));
            assert_eq!(
                shard.stats().last_seq,
                seq,
                "a refused update is not logged"
            );
            // A vector of the wrong kind is refused.
            let wrong = PointWrite {
                id: PointId::Num(5),
                vectors: NamedVectors::from([("sparse".into(), VectorData::Dense(vec![1.0; 4]))]),
                payload: Payload::new(),
            };
            assert!(shard.update(UpdateRequest::Upsert(vec![wrong])).is_err());
            shard.flush().unwrap();
        }
        let shard = LocalShard::open(dir.path(), cfg, SyncMode::Os).unwrap();
        let got = shard.retrieve(&[PointId::Num(0), PointId::Num(1)], false, &WithVector::All);
        assert_eq!(
            got[0].vector.as_ref().unwrap()["text"],
            VectorData::Dense(vec![1.0; 4])
        );
        let one = got[1].vector.as_ref().unwrap();
        assert!(
            one.contains_key("text") && !one.contains_key("multi") && !one.contains_key("sparse")
        );
        assert_eq!(shard.count(), 300);
    }

    /// Ids, payloads and vectors (versions are each replica's own operation numbers).
    fn contents(shard: &LocalShard) -> Vec<(PointId, Option<Payload>, Option<NamedVectors>)> {
        shard
            .scroll(None, usize::MAX, None, true, &WithVector::All)
            .into_iter()
            .map(|r| (r.id, r.payload, r.vector))
            .collect()
    }

    fn coordinator_tag(clock: u32, tick: u64) -> ClockTag {
        ClockTag {
            peer: 7,
            clock,
            tick,
            token: tick * 31 + u64::from(clock),
        }
    }

    fn set_kind(ids: &[u64], kind: &str) -> UpdateRequest {
        let mut payload = Payload::new();
        payload.insert("kind".into(), serde_json::json!(kind));
        UpdateRequest::SetPayload {
            selection: PointSelection::Ids(ids.iter().map(|i| PointId::Num(*i)).collect()),
            payload,
            key: None,
        }
    }

    #[test]
    fn a_coordinator_tick_applies_once_and_survives_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(4, 1_000_000);
        let mut rng = StdRng::seed_from_u64(3);
        let tag = coordinator_tag(0, 1);
        {
            let shard = LocalShard::open(dir.path(), Arc::clone(&cfg), SyncMode::Os).unwrap();
            let write = UpdateRequest::Upsert(points(0..10, 4, &mut rng));
            let seq = match shard
                .update_stamped(write.clone(), Stamp::Coordinator(tag))
                .unwrap()
            {
                UpdateOutcome::Applied(seq) => seq,
                other => panic!("{other:?}"),
            };
            // The same update again (a retry, a second copy) is not applied twice.
            assert_eq!(
                shard
                    .update_stamped(set_kind(&[1], "late"), Stamp::Coordinator(tag))
                    .unwrap(),
                UpdateOutcome::Duplicate(seq)
            );
            // Another update with the same tick (a restarted coordinator) is refused.
            let other = ClockTag { token: 1, ..tag };
            assert_eq!(
                shard
                    .update_stamped(set_kind(&[1], "late"), Stamp::Coordinator(other))
                    .unwrap(),
                UpdateOutcome::Behind(1)
            );
            assert!(
                contents(&shard)[1]
                    .1
                    .as_ref()
                    .unwrap()
                    .get("kind")
                    .is_none()
            );
        }
        // From the WAL alone, then from a flush.
        for flush in [false, true] {
            let shard = LocalShard::open(dir.path(), Arc::clone(&cfg), SyncMode::Os).unwrap();
            assert_eq!(shard.clocks().tick(tag.key()), 1);
            assert_eq!(
                shard
                    .update_stamped(set_kind(&[1], "late"), Stamp::Coordinator(tag))
                    .unwrap(),
                UpdateOutcome::Duplicate(shard.stats().last_seq)
            );
            if flush {
                shard.flush().unwrap();
            }
        }
        let shard = LocalShard::open(dir.path(), cfg, SyncMode::Os).unwrap();
        assert_eq!(shard.clocks().tick(tag.key()), 1);
        // Untagged writes advance the local clock, not the coordinator's.
        let before = shard.clocks();
        shard.update(set_kind(&[2], "local")).unwrap();
        let after = shard.clocks();
        assert_eq!(after.tick(tag.key()), 1);
        assert_eq!((before.len(), after.len()), (1, 2));
    }

    /// Two replicas take the same coordinator updates; one misses some (it was down). The
    /// delta from the other's WAL at its recovery point, replayed, makes them identical, and
    /// holds only what it missed (from the first gap on).
    #[test]
    fn a_wal_delta_brings_a_replica_that_missed_updates_up_to_date() {
        let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let cfg = config(4, 1_000_000);
        let a = LocalShard::open(a_dir.path(), Arc::clone(&cfg), SyncMode::Os).unwrap();
        let b = LocalShard::open(b_dir.path(), Arc::clone(&cfg), SyncMode::Os).unwrap();
        let mut rng = StdRng::seed_from_u64(4);
        let mut tick = [0u64; 2];
        let mut next = |clock: u32| {
            tick[clock as usize] += 1;
            coordinator_tag(clock, tick[clock as usize])
        };
        for round in 0..50u64 {
            let clock = (round % 2) as u32;
            let request = if round % 5 == 4 {
                set_kind(&[round - 4, round - 3], "edited")
            } else {
                UpdateRequest::Upsert(points(round * 3..round * 3 + 3, 4, &mut rng))
            };
            let tag = next(clock);
            a.update_stamped(request.clone(), Stamp::Coordinator(tag))
                .unwrap();
            // B fails from round 30 on (so it gets nothing more on that clock), but round
            // 31's update, on the other clock, reached it; A and B flush at different times.
            if round < 30 || round == 31 {
                b.update_stamped(request, Stamp::Coordinator(tag)).unwrap();
            }
            if round == 20 {
                a.flush().unwrap();
            }
            if round == 25 {
                b.flush().unwrap();
            }
        }
        assert_ne!(contents(&a), contents(&b));
        let point = b.recovery_point();
        let delta = a.wal_delta(&point).unwrap().expect("the WAL reaches back");
        // From round 30 on: 20 operations, round 31's included (replayed in A's order).
        assert_eq!(delta.ops.len(), 20);
        b.begin_copy(1, false).unwrap();
        b.replay(1, delta.ops).unwrap();
        b.finish_copy(1, delta.clocks).unwrap();
        assert_eq!(contents(&a), contents(&b));
        // Nothing is missing any more.
        assert!(
            a.wal_delta(&b.recovery_point())
                .unwrap()
                .unwrap()
                .ops
                .is_empty()
        );
        // And B's clocks now say so after a restart, too.
        drop(b);
        let b = LocalShard::open(b_dir.path(), cfg, SyncMode::Os).unwrap();
        assert!(b.clocks().covers(&a.clocks(), None));
    }

    /// A replica that applied a coordinator's update this one never did (it failed here and
    /// was not acknowledged) gets no delta: replaying would leave it holding that update.
    #[test]
    fn no_wal_delta_to_a_replica_ahead_on_a_coordinators_clock() {
        let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let cfg = config(4, 1_000_000);
        let a = LocalShard::open(a_dir.path(), Arc::clone(&cfg), SyncMode::Os).unwrap();
        let b = LocalShard::open(b_dir.path(), Arc::clone(&cfg), SyncMode::Os).unwrap();
        let mut rng = StdRng::seed_from_u64(6);
        for tick in 1..=4 {
            let request = UpdateRequest::Upsert(points(tick..tick + 1, 4, &mut rng));
            let tag = coordinator_tag(0, tick);
            b.update_stamped(request.clone(), Stamp::Coordinator(tag))
                .unwrap();
            // A misses the last one.
            if tick < 4 {
                a.update_stamped(request, Stamp::Coordinator(tag)).unwrap();
            }
        }
        assert_eq!(
            a.wal_delta(&b.recovery_point()).unwrap(),
            Err(NoDelta::PointAhead)
        );
        // Behind on the clock instead, it gets what it lacks.
        assert_eq!(
            b.wal_delta(&a.recovery_point()).unwrap().unwrap().ops.len(),
            1
        );
    }

    #[test]
    fn no_wal_delta_once_the_wal_no_longer_reaches_the_point() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = (*config(4, 1_000_000)).clone();
        // A file per few records, none retained after a flush.
        cfg.wal_config.wal_capacity_mb = 0;
        cfg.wal_config.wal_retain_closed = 0;
        let cfg = Arc::new(cfg);
        let a = LocalShard::open(dir.path(), Arc::clone(&cfg), SyncMode::Os).unwrap();
        let mut rng = StdRng::seed_from_u64(5);
        let mut point = ClockMap::default();
        for tick in 1..=10 {
            let tag = coordinator_tag(0, tick);
            a.update_stamped(
                UpdateRequest::Upsert(points(tick..tick + 1, 4, &mut rng)),
                Stamp::Coordinator(tag),
            )
            .unwrap();
            if tick <= 2 {
                point.advance(&tag);
            }
        }
        assert_eq!(a.wal_delta(&point).unwrap().unwrap().ops.len(), 8);
        a.flush().unwrap();
        // The records after tick 2 are gone from the WAL: no delta, a full copy is needed.
        assert_eq!(a.wal_delta(&point).unwrap(), Err(NoDelta::NotReached));
        // A replica that has everything but the last record is still served from the WAL,
        // also after a restart (the base is stored with the flush).
        let mut almost = ClockMap::default();
        almost.advance(&coordinator_tag(0, 9));
        assert_eq!(a.wal_delta(&almost).unwrap().unwrap().ops.len(), 1);
        drop(a);
        let a = LocalShard::open(dir.path(), cfg, SyncMode::Os).unwrap();
        assert_eq!(a.wal_delta(&point).unwrap(), Err(NoDelta::NotReached));
        assert_eq!(a.wal_delta(&almost).unwrap().unwrap().ops.len(), 1);
    }

    /// While a copy is being received, updates forwarded to the replica advance its clocks but
    /// not its recovery point: a copy that fails halfway does not pass for complete.
    #[test]
    fn a_copy_in_progress_keeps_the_recovery_point_at_its_floor() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(4, 1_000_000);
        let mut rng = StdRng::seed_from_u64(6);
        {
            let shard = LocalShard::open(dir.path(), Arc::clone(&cfg), SyncMode::Os).unwrap();
            shard
                .update_stamped(
                    UpdateRequest::Upsert(points(0..5, 4, &mut rng)),
                    Stamp::Coordinator(coordinator_tag(0, 1)),
                )
                .unwrap();
            let floor = shard.begin_copy(1, false).unwrap();
            assert_eq!(floor.tick(coordinator_tag(0, 1).key()), 1);
            shard
                .update_stamped(
                    UpdateRequest::Upsert(points(5..6, 4, &mut rng)),
                    Stamp::Forced(coordinator_tag(0, 9)),
                )
                .unwrap();
            assert_eq!(shard.clocks().tick(coordinator_tag(0, 9).key()), 9);
            assert_eq!(shard.recovery_point(), floor);
            // A second attempt starts from the same floor, not from what was forwarded, and
            // the first attempt's late steps are refused.
            assert_eq!(shard.begin_copy(2, false).unwrap(), floor);
            assert!(shard.finish_copy(1, ClockMap::default()).is_err());
            assert!(shard.replay(1, Vec::new()).is_err());
            assert_eq!(shard.recovery_point(), floor);
        }
        // The floor survives a restart; a fresh copy starts from nothing.
        let shard = LocalShard::open(dir.path(), Arc::clone(&cfg), SyncMode::Os).unwrap();
        assert_eq!(shard.recovery_point().tick(coordinator_tag(0, 1).key()), 1);
        assert!(shard.begin_copy(3, true).unwrap().is_empty());
        assert!(shard.recovery_point().is_empty());
        let mut merged = ClockMap::default();
        merged.advance(&coordinator_tag(0, 12));
        shard.finish_copy(3, merged).unwrap();
        assert_eq!(shard.recovery_point().tick(coordinator_tag(0, 1).key()), 12);
    }

    /// A replica whose points came without a WAL (a restored image, a store from before
    /// clock tags) cannot tell what others miss until it merged a copy's clocks.
    #[test]
    fn points_without_wal_records_are_never_taken_for_a_shared_history() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(4, 1_000_000);
        let mut rng = StdRng::seed_from_u64(7);
        {
            let shard = LocalShard::open(dir.path(), Arc::clone(&cfg), SyncMode::Os).unwrap();
            shard
                .update(UpdateRequest::Upsert(points(0..5, 4, &mut rng)))
                .unwrap();
            shard.flush().unwrap();
        }
        // Forget the clock state, as a restored image has none.
        {
            let db = redb::Database::create(dir.path().join(POINT_STORE_FILE)).unwrap();
            let txn = db.begin_write().unwrap();
            txn.delete_table(redb::TableDefinition::<&str, &[u8]>::new("clocks"))
                .unwrap();
            txn.commit().unwrap();
        }
        std::fs::remove_dir_all(dir.path().join("wal")).unwrap();
        let shard = LocalShard::open(dir.path(), cfg, SyncMode::Os).unwrap();
        assert_eq!(
            shard.wal_delta(&ClockMap::default()).unwrap(),
            Err(NoDelta::NotReached)
        );
        let mut merged = ClockMap::default();
        merged.advance(&coordinator_tag(0, 3));
        // (A fresh copy: only one that replaced the whole state covers what came before.)
        shard.begin_copy(1, true).unwrap();
        shard.finish_copy(1, merged.clone()).unwrap();
        // Someone who holds what the merge says is served; someone who does not is not.
        assert!(shard.wal_delta(&merged).unwrap().is_ok());
        assert_eq!(
            shard.wal_delta(&ClockMap::default()).unwrap(),
            Err(NoDelta::NotReached)
        );
    }

    /// A replica that received a fresh copy (cleared, then streamed) cannot replay that part
    /// of its WAL to another: its clearing removed only the points it held then. A delta
    /// from after the copy is fine.
    #[test]
    fn no_wal_delta_across_the_start_of_a_fresh_copy() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(4, 1_000_000);
        let d = LocalShard::open(dir.path(), cfg, SyncMode::Os).unwrap();
        let mut rng = StdRng::seed_from_u64(8);
        let mut before = ClockMap::default();
        for tick in 1..=3 {
            let tag = coordinator_tag(0, tick);
            d.update_stamped(
                UpdateRequest::Upsert(points(tick..tick + 1, 4, &mut rng)),
                Stamp::Coordinator(tag),
            )
            .unwrap();
            if tick == 1 {
                before.advance(&tag);
            }
        }
        d.begin_copy(9, true).unwrap();
        d.update(UpdateRequest::Delete(PointSelection::Filter(
            Filter::default(),
        )))
        .unwrap();
        d.update(UpdateRequest::Upsert(points(0..10, 4, &mut rng)))
            .unwrap();
        let mut merged = ClockMap::default();
        merged.advance(&coordinator_tag(0, 10));
        d.finish_copy(9, merged.clone()).unwrap();
        d.update_stamped(
            UpdateRequest::Upsert(points(20..21, 4, &mut rng)),
            Stamp::Coordinator(coordinator_tag(0, 11)),
        )
        .unwrap();
        assert_eq!(d.wal_delta(&before).unwrap(), Err(NoDelta::AcrossFreshCopy));
        assert_eq!(d.wal_delta(&merged).unwrap().unwrap().ops.len(), 1);
        // While it receives a copy itself, it is no source at all.
        d.begin_copy(10, false).unwrap();
        assert_eq!(d.wal_delta(&merged).unwrap(), Err(NoDelta::SourceReceiving));
    }
}
