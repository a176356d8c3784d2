//! A shard stored on this peer: its WAL, its segments, its flushed point store, and the
//! bookkeeping that ties them together.
//!
//! Writes take the shard's write lock, are appended to the WAL, then applied to the in-memory
//! segments; they are acknowledged only after that. Every few seconds the points that changed
//! are flushed to the point store in one atomic transaction, and the WAL is cut back to the
//! flushed sequence number. On open, the flushed points are loaded and the WAL is replayed from
//! there. Reads take the read lock and never wait for the optimizer, which builds graphs
//! outside the lock and only swaps them in under it.

use std::collections::{BTreeMap, BinaryHeap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use parking_lot::{Mutex, RwLock, RwLockWriteGuard};

use crate::collection_config::CollectionConfig;
use crate::index::hnsw_index::{GraphParams, HnswIndex};
use crate::index::payload_path::JsonPath;
use crate::shard::operations::{PointSelection, ShardOperation, UpdateRequest};
use crate::shard::segment::{Segment, SegmentId, SegmentStage};
use crate::storage::point_store::{PointStore, StoreError, StoredPoint};
use crate::storage::wal::{SyncMode, Wal};
use crate::types::{Distance, Payload, PointId};

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
    #[error("wrong input: vector dimension error: expected dim: {expected}, got {got}")]
    WrongDimension { expected: usize, got: usize },
    #[error("wrong input: {0}")]
    BadInput(String),
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

/// Decides whether a point takes part in a read: a compiled filter, exclusions, or both.
pub type PointPredicate<'a> = &'a (dyn Fn(PointId, &Payload) -> bool + Sync);

/// How candidates are scored.
pub enum Scoring<'a> {
    /// Nearest to a (preprocessed) vector by the collection's distance; may use the HNSW graph.
    Nearest(&'a [f32]),
    /// Any score where higher is better; always exhaustive.
    Custom(&'a (dyn Fn(&[f32]) -> f32 + Sync)),
}

pub struct SearchQuery<'a> {
    pub scoring: Scoring<'a>,
    pub accept: Option<PointPredicate<'a>>,
    /// How many best points to return (the API's `limit + offset`).
    pub top: usize,
    pub ef: Option<usize>,
    pub exact: bool,
    pub score_threshold: Option<f32>,
    pub with_payload: bool,
    pub with_vector: bool,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ScoredRecord {
    pub id: PointId,
    pub version: u64,
    pub score: f32,
    pub payload: Option<Payload>,
    pub vector: Option<Vec<f32>>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Record {
    pub id: PointId,
    pub version: u64,
    pub payload: Option<Payload>,
    pub vector: Option<Vec<f32>>,
}

/// Where a live point is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Location {
    segment: SegmentId,
    offset: u32,
}

struct ShardState {
    segments: BTreeMap<SegmentId, Segment>,
    appendable: SegmentId,
    next_segment_id: SegmentId,
    locations: BTreeMap<PointId, Location>,
    /// Points changed since the last flush.
    dirty: HashSet<PointId>,
    last_seq: u64,
    flushed_seq: u64,
    dim: usize,
    /// Points per segment before it is frozen for indexing; `None` when indexing is off.
    freeze_at: Option<usize>,
}

impl ShardState {
    fn new_segment(&mut self) -> SegmentId {
        let id = self.next_segment_id;
        self.next_segment_id += 1;
        self.segments.insert(id, Segment::new(id, self.dim));
        id
    }

    fn remove_point(&mut self, id: &PointId) -> bool {
        match self.locations.remove(id) {
            Some(loc) => {
                if let Some(seg) = self.segments.get_mut(&loc.segment) {
                    seg.delete(loc.offset);
                }
                true
            }
            None => false,
        }
    }

    fn insert_point(&mut self, id: PointId, vector: &[f32], payload: Payload, version: u64) {
        self.remove_point(&id);
        let seg_id = self.appendable;
        let seg = self
            .segments
            .get_mut(&seg_id)
            .expect("appendable segment exists");
        let offset = seg.push(id, vector, payload, version);
        let full = self.freeze_at.is_some_and(|limit| seg.len() >= limit);
        if full {
            seg.freeze();
            self.appendable = self.new_segment();
        }
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

    fn apply(&mut self, seq: u64, op: &ShardOperation) {
        match op {
            ShardOperation::Upsert(points) => {
                for p in points {
                    self.insert_point(p.id, &p.vector, p.payload.clone(), seq);
                    self.dirty.insert(p.id);
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
                    None => current.extend(payload.iter().map(|(k, v)| (k.clone(), v.clone()))),
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

    fn select(&self, selection: &PointSelection) -> Vec<PointId> {
        match selection {
            PointSelection::Ids(ids) => ids.clone(),
            PointSelection::Filter(filter) => self
                .locations
                .iter()
                .filter(|(id, loc)| {
                    let seg = &self.segments[&loc.segment];
                    filter.check(**id, seg.payload(loc.offset))
                })
                .map(|(id, _)| *id)
                .collect(),
        }
    }

    fn resolve(&self, request: UpdateRequest) -> ShardOperation {
        match request {
            UpdateRequest::Upsert(points) => ShardOperation::Upsert(points),
            UpdateRequest::Delete(sel) => ShardOperation::Delete(self.select(&sel)),
            UpdateRequest::SetPayload {
                selection,
                payload,
                key,
            } => ShardOperation::SetPayload {
                points: self.select(&selection),
                payload,
                key,
            },
            UpdateRequest::OverwritePayload { selection, payload } => {
                ShardOperation::OverwritePayload {
                    points: self.select(&selection),
                    payload,
                }
            }
            UpdateRequest::DeletePayload { selection, keys } => ShardOperation::DeletePayload {
                points: self.select(&selection),
                keys,
            },
            UpdateRequest::ClearPayload(selection) => ShardOperation::ClearPayload {
                points: self.select(&selection),
            },
        }
    }

    fn stored(&self, id: &PointId) -> Option<StoredPoint> {
        let (seg, offset) = self.point(id)?;
        Some(StoredPoint {
            version: seg.version(offset),
            vector: seg.vector(offset).to_vec(),
            payload: seg.payload(offset).clone(),
        })
    }

    fn record(&self, seg: &Segment, offset: u32, with_payload: bool, with_vector: bool) -> Record {
        Record {
            id: seg.id(offset),
            version: seg.version(offset),
            payload: with_payload.then(|| seg.payload(offset).clone()),
            vector: with_vector.then(|| seg.vector(offset).to_vec()),
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

/// Shared machinery for building graphs: one rayon pool per node, one build at a time, so
/// indexing never takes more than the configured threads away from serving.
pub struct IndexBuilder {
    pool: rayon::ThreadPool,
    slot: Mutex<()>,
}

impl IndexBuilder {
    pub fn new(threads: usize) -> IndexBuilder {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .thread_name(|i| format!("shoal-index-{i}"))
            .build()
            .expect("the indexing thread pool starts");
        IndexBuilder {
            pool,
            slot: Mutex::new(()),
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
    config: Arc<CollectionConfig>,
    state: RwLock<ShardState>,
    wal: Mutex<Wal>,
    store: PointStore,
    flush_lock: Mutex<()>,
    /// Raised when the shard is dropped or the node stops: background work ends early.
    cancelled: AtomicBool,
    /// Optimizer steps in progress.
    optimizing: AtomicUsize,
    pub(crate) wake_optimizer: tokio::sync::Notify,
}

impl LocalShard {
    /// Opens the shard in `dir` (creating it when new): loads the flushed points and replays the
    /// WAL after them.
    pub fn open(
        dir: &Path,
        config: Arc<CollectionConfig>,
        sync: SyncMode,
    ) -> Result<LocalShard, ShardError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let store = PointStore::open(&dir.join("points.redb"))?;
        let wal_dir = dir.join("wal");
        let wal = Wal::open(
            &wal_dir,
            (config.wal_config.wal_capacity_mb as u64) << 20,
            sync,
        )
        .map_err(io_err(&wal_dir))?;
        let dim = config.dim();
        let mut state = ShardState {
            segments: BTreeMap::new(),
            appendable: 0,
            next_segment_id: 1,
            locations: BTreeMap::new(),
            dirty: HashSet::new(),
            last_seq: 0,
            flushed_seq: 0,
            dim,
            freeze_at: config.optimizer_config.indexing_threshold_points(dim),
        };
        state.appendable = state.new_segment();

        let (flushed_seq, points) = store.load()?;
        for (id, p) in points {
            if p.vector.len() != dim {
                return Err(StoreError::Corrupt(format!(
                    "point {id} has {} dimensions, expected {dim}",
                    p.vector.len()
                ))
                .into());
            }
            state.insert_point(id, &p.vector, p.payload, p.version);
        }
        state.last_seq = flushed_seq;
        state.flushed_seq = flushed_seq;

        let records = wal.read_after(flushed_seq).map_err(io_err(&wal_dir))?;
        let replayed = records.len();
        for record in records {
            let op = ShardOperation::decode(&record.data).map_err(|e| ShardError::CorruptWal {
                seq: record.seq,
                reason: e.to_string(),
            })?;
            state.apply(record.seq, &op);
        }
        state.last_seq = state.last_seq.max(wal.last_seq());
        tracing::info!(
            dir = %dir.display(),
            points = state.locations.len(),
            flushed_seq,
            replayed,
            last_seq = state.last_seq,
            "shard opened"
        );
        Ok(LocalShard {
            dir: dir.to_path_buf(),
            config,
            state: RwLock::new(state),
            wal: Mutex::new(wal),
            store,
            flush_lock: Mutex::new(()),
            cancelled: AtomicBool::new(false),
            optimizing: AtomicUsize::new(0),
            wake_optimizer: tokio::sync::Notify::new(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn config(&self) -> &CollectionConfig {
        &self.config
    }

    /// Applies an update: resolves its selection, appends it to the WAL, applies it. When this
    /// returns `Ok(seq)` the update is durable (in the WAL) and visible to reads.
    pub fn update(&self, request: UpdateRequest) -> Result<u64, ShardError> {
        if let UpdateRequest::Upsert(points) = &request
            && let Some(bad) = points.iter().find(|p| p.vector.len() != self.config.dim())
        {
            return Err(ShardError::WrongDimension {
                expected: self.config.dim(),
                got: bad.vector.len(),
            });
        }
        let mut state = self.state.write();
        let op = state.resolve(request);
        if op.is_empty() {
            return Ok(state.last_seq);
        }
        let seq = state.last_seq + 1;
        self.wal
            .lock()
            .append(seq, &op.encode())
            .map_err(io_err(&self.dir))?;
        state.apply(seq, &op);
        drop(state);
        self.wake_optimizer.notify_one();
        Ok(seq)
    }

    /// Writes every point changed since the last flush to the point store in one transaction
    /// and drops the WAL files that this makes redundant.
    pub fn flush(&self) -> Result<(), ShardError> {
        let _one_flush_at_a_time = self.flush_lock.lock();
        let mut state = self.state.write();
        if state.dirty.is_empty() && state.flushed_seq == state.last_seq {
            return Ok(());
        }
        let dirty = std::mem::take(&mut state.dirty);
        let seq = state.last_seq;
        // Readers may go on while we copy; writers wait, so the copy is exactly the state at `seq`.
        let state = RwLockWriteGuard::downgrade(state);
        let changes: Vec<(PointId, Option<StoredPoint>)> =
            dirty.iter().map(|id| (*id, state.stored(id))).collect();
        drop(state);
        if let Err(e) = self.store.commit(&changes, seq) {
            self.state.write().dirty.extend(dirty);
            return Err(e.into());
        }
        self.state.write().flushed_seq = seq;
        self.wal
            .lock()
            .truncate_through(seq)
            .map_err(io_err(&self.dir))?;
        tracing::debug!(dir = %self.dir.display(), seq, points = changes.len(), "shard flushed");
        Ok(())
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

    pub fn retrieve(&self, ids: &[PointId], with_payload: bool, with_vector: bool) -> Vec<Record> {
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
        with_vector: bool,
    ) -> Vec<Record> {
        let state = self.state.read();
        let range = match from {
            Some(from) => state.locations.range(from..),
            None => state.locations.range(..),
        };
        range
            .filter_map(|(id, loc)| {
                let seg = &state.segments[&loc.segment];
                let pass = accept.is_none_or(|f| f(*id, seg.payload(loc.offset)));
                pass.then(|| state.record(seg, loc.offset, with_payload, with_vector))
            })
            .take(limit)
            .collect()
    }

    pub fn count(&self, accept: Option<PointPredicate<'_>>) -> usize {
        let state = self.state.read();
        match accept {
            None => state.locations.len(),
            Some(f) => state
                .locations
                .iter()
                .filter(|(id, loc)| f(**id, state.segments[&loc.segment].payload(loc.offset)))
                .count(),
        }
    }

    /// The `top` best points for the query, best first.
    pub fn search(&self, query: &SearchQuery<'_>) -> Vec<ScoredRecord> {
        let distance = self.config.distance();
        let hnsw = self.config.effective_hnsw();
        let full_scan_bytes = hnsw.full_scan_threshold.saturating_mul(1024);
        let state = self.state.read();
        let mut top = TopK::new(query.top);
        if query.top == 0 {
            return Vec::new();
        }
        for seg in state.segments.values() {
            if seg.live_count() == 0 {
                continue;
            }
            let accept_offset = |o: u32| {
                seg.is_live(o) && query.accept.is_none_or(|f| f(seg.id(o), seg.payload(o)))
            };
            let consider = |o: u32, top: &mut TopK| {
                let v = seg.vector(o);
                let (score, key) = match query.scoring {
                    Scoring::Nearest(q) => {
                        let s = distance.score(q, v);
                        (s, if distance.higher_is_better() { s } else { -s })
                    }
                    Scoring::Custom(f) => {
                        let s = f(v);
                        (s, s)
                    }
                };
                if score.is_nan() {
                    return;
                }
                if let Some(t) = query.score_threshold {
                    let passes = match query.scoring {
                        Scoring::Nearest(_) => distance.passes_threshold(score, t),
                        Scoring::Custom(_) => score >= t,
                    };
                    if !passes {
                        return;
                    }
                }
                top.push(Candidate {
                    key,
                    score,
                    id: seg.id(o),
                    segment: seg.id,
                    offset: o,
                });
            };
            let graph = match (&query.scoring, seg.index()) {
                (Scoring::Nearest(q), Some(index))
                    if !query.exact
                        && seg.vector_bytes() >= full_scan_bytes
                        && query.top <= MAX_GRAPH_TOP =>
                {
                    Some((q, index))
                }
                _ => None,
            };
            let mut exhaustive = true;
            if let Some((q, index)) = graph {
                let ef = query.ef.unwrap_or(hnsw.ef_construct).max(query.top);
                let found = index.search(q, query.top, ef, &accept_offset);
                // Too few hits means a selective filter starved the graph walk: fall back to
                // an exhaustive scan so that filtered searches stay complete.
                exhaustive = found.len() < query.top && found.len() < seg.live_count();
                if !exhaustive {
                    for o in found {
                        consider(o, &mut top);
                    }
                }
            }
            if exhaustive {
                for o in seg.live_offsets() {
                    if query.accept.is_none_or(|f| f(seg.id(o), seg.payload(o))) {
                        consider(o, &mut top);
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
                    payload: query.with_payload.then(|| seg.payload(c.offset).clone()),
                    vector: query.with_vector.then(|| seg.vector(c.offset).to_vec()),
                }
            })
            .collect()
    }

    /// The stored (preprocessed) vector of a point.
    pub fn vector_of(&self, id: &PointId) -> Option<Vec<f32>> {
        let state = self.state.read();
        state.point(id).map(|(seg, o)| seg.vector(o).to_vec())
    }

    pub fn distance(&self) -> Distance {
        self.config.distance()
    }

    // ---- optimizer -------------------------------------------------------------------------

    fn vacuum_candidate(&self, seg: &Segment) -> bool {
        let cfg = &self.config.optimizer_config;
        seg.stage() == SegmentStage::Indexed
            && seg.deleted_count() >= cfg.vacuum_min_vector_number.max(1)
            && seg.deleted_count() as f64 >= cfg.deleted_threshold * seg.len() as f64
    }

    /// Points of this collection's dimension that a merged segment may hold.
    fn merge_limit_points(&self) -> usize {
        let dim = self.config.dim().max(1);
        let kb = self
            .config
            .optimizer_config
            .max_segment_size
            .unwrap_or(DEFAULT_MAX_SEGMENT_KB);
        (kb.saturating_mul(1024) / (dim * 4)).max(1)
    }

    /// How many indexed segments the merge step aims for (`default_segment_number`, or the
    /// number of cores when it is 0, as in Qdrant).
    fn target_segment_count(&self) -> usize {
        match self.config.optimizer_config.default_segment_number {
            0 => std::thread::available_parallelism()
                .map_or(2, |n| n.get())
                .max(2),
            n => n.max(1),
        }
    }

    /// When there are more indexed segments than the target, the smallest ones that together
    /// bring the count back to it (within the size limit): fewer, larger graphs answer searches
    /// faster, and merging smallest-first keeps the total rebuild work logarithmic per point,
    /// like an LSM tree (Qdrant's merge optimizer).
    fn merge_candidates(&self, state: &ShardState) -> Option<Vec<SegmentId>> {
        let limit = self.merge_limit_points();
        let mut indexed: Vec<&Segment> = state
            .segments
            .values()
            .filter(|s| s.stage() == SegmentStage::Indexed)
            .collect();
        let excess = indexed.len().checked_sub(self.target_segment_count())?;
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

    /// Whether the optimizer has nothing left to do.
    pub fn optimizer_status(&self) -> OptimizerStatus {
        if self.optimizing.load(Ordering::SeqCst) > 0 {
            return OptimizerStatus::Busy;
        }
        let state = self.state.read();
        let pending = state.segments.values().any(|s| {
            (s.stage() == SegmentStage::Frozen && s.live_count() > 0) || self.vacuum_candidate(s)
        }) || self.merge_candidates(&state).is_some();
        if pending {
            OptimizerStatus::Busy
        } else {
            OptimizerStatus::Idle
        }
    }

    /// Stops background work at the next opportunity.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
        self.wake_optimizer.notify_one();
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }

    /// Does one unit of optimization work, if there is any; returns whether it did. Blocking:
    /// run it on a blocking thread. Cancel-safe: a cancelled build is dropped and the segment
    /// stays as it was.
    pub fn optimize_step(&self, builder: &IndexBuilder) -> bool {
        self.optimizing.fetch_add(1, Ordering::SeqCst);
        let did = self.optimize_step_inner(builder);
        self.optimizing.fetch_sub(1, Ordering::SeqCst);
        did
    }

    fn optimize_step_inner(&self, builder: &IndexBuilder) -> bool {
        if self.is_cancelled() {
            return false;
        }
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
                state.segments.remove(id);
            }
        }
        // Index first (it makes new data fast to search), then vacuum, then merge.
        let (job, dim) = {
            let state = self.state.read();
            let job = state
                .segments
                .values()
                .find(|s| s.stage() == SegmentStage::Frozen)
                .map(|s| OptimizerJob::Index(s.id))
                .or_else(|| {
                    state
                        .segments
                        .values()
                        .find(|s| self.vacuum_candidate(s))
                        .map(|s| OptimizerJob::Vacuum(s.id))
                })
                .or_else(|| self.merge_candidates(&state).map(OptimizerJob::Merge));
            (job, state.dim)
        };
        let Some(job) = job else {
            return false;
        };
        let _slot = builder.slot.lock();
        let started = std::time::Instant::now();
        let done = match &job {
            OptimizerJob::Index(id) => self.index_segment(*id, builder),
            OptimizerJob::Vacuum(id) => self.rewrite_segments(&[*id], dim, builder),
            OptimizerJob::Merge(ids) => self.rewrite_segments(ids, dim, builder),
        };
        tracing::info!(
            dir = %self.dir.display(),
            ?job,
            done,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "optimizer step"
        );
        done
    }

    fn graph_params(&self) -> GraphParams {
        let hnsw = self.config.effective_hnsw();
        GraphParams {
            m: hnsw.m,
            ef_construct: hnsw.ef_construct,
        }
    }

    /// Builds the graph of a frozen segment outside the lock and attaches it.
    fn index_segment(&self, segment_id: SegmentId, builder: &IndexBuilder) -> bool {
        let (vectors, live, dim) = {
            let state = self.state.read();
            let Some(seg) = state.segments.get(&segment_id) else {
                return false;
            };
            let Some(vectors) = seg.frozen_vectors() else {
                return false;
            };
            (vectors, seg.live_offsets().collect::<Vec<u32>>(), seg.dim())
        };
        let points: Vec<(u32, &[f32])> = live
            .iter()
            .map(|&o| (o, &vectors[o as usize * dim..(o as usize + 1) * dim]))
            .collect();
        let Some(index) = HnswIndex::build(
            self.distance(),
            self.graph_params(),
            &points,
            &builder.pool,
            &self.cancelled,
        ) else {
            return false;
        };
        let mut state = self.state.write();
        if let Some(seg) = state.segments.get_mut(&segment_id) {
            seg.set_index(Arc::new(index));
        }
        true
    }

    /// Rewrites segments into one compact segment with a fresh graph (dropping tombstones, and
    /// merging when there are several), then swaps it in, carrying over every change made to
    /// their points in the meantime. Cancel-safe: until the swap nothing changes.
    fn rewrite_segments(&self, sources: &[SegmentId], dim: usize, builder: &IndexBuilder) -> bool {
        let (mut fresh, origin) = {
            let mut state = self.state.write();
            let new_id = state.next_segment_id;
            state.next_segment_id += 1;
            let state = RwLockWriteGuard::downgrade(state);
            let mut fresh = Segment::new(new_id, dim);
            let mut origin: Vec<Location> = Vec::new();
            for source in sources {
                let Some(seg) = state.segments.get(source) else {
                    return false;
                };
                for o in seg.live_offsets() {
                    fresh.push(
                        seg.id(o),
                        seg.vector(o),
                        seg.payload(o).clone(),
                        seg.version(o),
                    );
                    origin.push(Location {
                        segment: *source,
                        offset: o,
                    });
                }
            }
            fresh.freeze();
            (fresh, origin)
        };
        let vectors = fresh.frozen_vectors().expect("frozen above");
        let points: Vec<(u32, &[f32])> = (0..origin.len() as u32)
            .map(|o| (o, &vectors[o as usize * dim..(o as usize + 1) * dim]))
            .collect();
        let Some(index) = HnswIndex::build(
            self.distance(),
            self.graph_params(),
            &points,
            &builder.pool,
            &self.cancelled,
        ) else {
            return false;
        };
        fresh.set_index(Arc::new(index));
        let mut state = self.state.write();
        if !sources.iter().all(|s| state.segments.contains_key(s)) {
            return false;
        }
        let old: BTreeMap<SegmentId, Segment> = sources
            .iter()
            .filter_map(|s| state.segments.remove(s).map(|seg| (*s, seg)))
            .collect();
        for (new_offset, from) in origin.iter().enumerate() {
            let new_offset = new_offset as u32;
            let seg = &old[&from.segment];
            let id = seg.id(from.offset);
            if state.locations.get(&id) == Some(from) {
                // The payload may have changed while the graph was built.
                *fresh.payload_mut(new_offset) = seg.payload(from.offset).clone();
                fresh.set_version(new_offset, seg.version(from.offset));
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
        state.segments.insert(fresh.id, fresh);
        true
    }
}

/// One unit of optimizer work.
#[derive(Debug)]
enum OptimizerJob {
    Index(SegmentId),
    Vacuum(SegmentId),
    Merge(Vec<SegmentId>),
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
    use crate::collection_config::{
        CollectionParams, HnswConfig, OptimizersConfig, VectorParams, WalConfig,
    };
    use crate::shard::operations::PointWrite;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    fn config(dim: usize, indexing_threshold_kb: usize) -> Arc<CollectionConfig> {
        Arc::new(CollectionConfig {
            params: CollectionParams {
                vectors: VectorParams {
                    size: dim,
                    distance: Distance::Euclid,
                    on_disk: None,
                    hnsw_config: None,
                },
                shard_number: 1,
                sharding_method: None,
                replication_factor: 1,
                write_consistency_factor: 1,
                on_disk_payload: true,
            },
            hnsw_config: HnswConfig {
                full_scan_threshold: 0,
                ..HnswConfig::default()
            },
            optimizer_config: OptimizersConfig {
                indexing_threshold: Some(indexing_threshold_kb),
                vacuum_min_vector_number: 10,
                ..OptimizersConfig::default()
            },
            wal_config: WalConfig::default(),
        })
    }

    fn points(range: std::ops::Range<u64>, dim: usize, rng: &mut StdRng) -> Vec<PointWrite> {
        range
            .map(|i| {
                let mut payload = Payload::new();
                payload.insert("i".into(), serde_json::json!(i));
                payload.insert("even".into(), serde_json::json!(i % 2 == 0));
                PointWrite {
                    id: PointId::Num(i),
                    vector: (0..dim).map(|_| rng.random_range(-1.0..1.0)).collect(),
                    payload,
                }
            })
            .collect()
    }

    fn exact_query<'a>(q: &'a [f32], top: usize) -> SearchQuery<'a> {
        SearchQuery {
            scoring: Scoring::Nearest(q),
            accept: None,
            top,
            ef: None,
            exact: true,
            score_threshold: None,
            with_payload: false,
            with_vector: false,
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
        assert_eq!(shard.count(None), 99);
        let got = shard.retrieve(
            &[PointId::Num(5), PointId::Num(3), PointId::Num(7)],
            true,
            true,
        );
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].payload.as_ref().unwrap()["tag"], "x");
        assert_eq!(got[1].vector.as_ref().unwrap(), &first[7].vector);
        let stats = shard.stats();
        assert_eq!(stats.flushed_seq, 1);
        assert_eq!(stats.last_seq, 3);
        // Flushing again and reopening keeps the same state and cuts the WAL.
        shard.flush().unwrap();
        drop(shard);
        let shard = LocalShard::open(dir.path(), cfg, SyncMode::Os).unwrap();
        assert_eq!(shard.count(None), 99);
        assert_eq!(shard.stats().flushed_seq, 3);
    }

    #[test]
    fn a_wrong_dimension_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let shard = LocalShard::open(dir.path(), config(4, 1), SyncMode::Os).unwrap();
        let bad = PointWrite {
            id: PointId::Num(1),
            vector: vec![1.0; 3],
            payload: Payload::new(),
        };
        assert!(matches!(
            shard.update(UpdateRequest::Upsert(vec![bad])),
            Err(ShardError::WrongDimension {
                expected: 4,
                got: 3
            })
        ));
        assert_eq!(shard.count(None), 0);
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
            let all = shard.scroll(None, usize::MAX, None, false, false);
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
            assert_eq!(shard.count(None), live.len());
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

    #[test]
    fn small_indexed_segments_are_merged_down_to_the_target_count() {
        let dir = tempfile::tempdir().unwrap();
        let dim = 8;
        let mut cfg = (*config(dim, 1)).clone();
        cfg.optimizer_config.default_segment_number = 2;
        let shard = LocalShard::open(dir.path(), Arc::new(cfg), SyncMode::Os).unwrap();
        let builder = IndexBuilder::new(1);
        let mut rng = StdRng::seed_from_u64(5);
        // 32 points per segment: 30 sealed segments.
        shard
            .update(UpdateRequest::Upsert(points(0..960, dim, &mut rng)))
            .unwrap();
        while shard.optimize_step(&builder) {}
        let state = shard.state.read();
        let indexed = state
            .segments
            .values()
            .filter(|s| s.stage() == SegmentStage::Indexed)
            .count();
        assert!(indexed <= 2, "{indexed} indexed segments left");
        drop(state);
        assert_eq!(shard.count(None), 960);
        let q = vec![0.2; dim];
        let exact = shard.search(&exact_query(&q, 10));
        let approx = shard.search(&SearchQuery {
            exact: false,
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
        let rare = |id: PointId, _: &Payload| matches!(id, PointId::Num(n) if n % 100 == 7);
        let q = vec![0.0; dim];
        let hits = shard.search(&SearchQuery {
            scoring: Scoring::Nearest(&q),
            accept: Some(&rare),
            top: 20,
            ef: Some(16),
            exact: false,
            score_threshold: None,
            with_payload: false,
            with_vector: false,
        });
        assert_eq!(
            hits.len(),
            10,
            "all ten matching points, though the graph walk alone finds few"
        );
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
            false,
        );
        let payloads: Vec<&Payload> = got.iter().map(|r| r.payload.as_ref().unwrap()).collect();
        assert_eq!(payloads[0]["nested"], serde_json::json!({}));
        assert!(payloads[1].is_empty());
        assert_eq!(payloads[2]["nested"], serde_json::json!({"k": 1}));
        assert!(!payloads[3].contains_key("nested"));
    }
}
