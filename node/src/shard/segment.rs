//! A segment: a batch of points stored side by side, addressed by offset.
//!
//! A segment starts *appendable* (new points go to its end), is *frozen* once it is large enough
//! (no more appends: its vectors never change again), and becomes *indexed* when the optimizer
//! has built its indexes: an HNSW graph per dense and multi-vector, an inverted index per sparse
//! vector. A vector at an offset never changes: an upsert of an existing point, or an update of
//! one of its vectors, writes a new offset (usually in another segment) and tombstones the old
//! one, so an index built from a frozen segment stays valid for as long as the segment lives.
//! Payloads are not part of any index and change in place.
//!
//! Each named vector is a column of its own ([`VectorColumn`]); a point may lack any of them.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use crate::collection_config::CollectionConfig;
use crate::index::hnsw_index::{GraphParams, HnswIndex};
use crate::index::payload_index::PayloadIndex;
use crate::index::quantization::QuantizedVectors;
use crate::index::sparse_index::SparseIndex;
use crate::storage::mapped::{FileSlice, Floats};
use crate::types::{NamedVectors, Payload, PointId, SparseVector, VectorData, VectorRef};

mod files;
mod payload_storage;

pub use files::{SegmentImage, Verify, segment_dir, stray_dirs, verify_files};
use payload_storage::PayloadStorage;

pub type SegmentId = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentStage {
    Appendable,
    Frozen,
    Indexed,
}

/// Growing while the segment is appendable; shared (with index builders) once frozen.
enum Cells<T> {
    Growing(Vec<T>),
    Frozen(Arc<Vec<T>>),
}

impl<T> Cells<T> {
    fn as_slice(&self) -> &[T] {
        match self {
            Cells::Growing(v) => v,
            Cells::Frozen(v) => v,
        }
    }

    fn push(&mut self, value: T) {
        match self {
            Cells::Growing(v) => v.push(value),
            Cells::Frozen(_) => unreachable!("frozen columns take no new points"),
        }
    }

    fn freeze(&mut self) {
        if let Cells::Growing(v) = self {
            let mut v = std::mem::take(v);
            v.shrink_to_fit();
            *self = Cells::Frozen(Arc::new(v));
        }
    }

    fn shared(&self) -> Option<Arc<Vec<T>>> {
        match self {
            Cells::Frozen(v) => Some(Arc::clone(v)),
            Cells::Growing(_) => None,
        }
    }
}

/// Dense values: growing while appendable; then fixed, on the heap or in a segment file.
enum DenseData {
    Growing(Vec<f32>),
    Fixed(Floats),
}

impl DenseData {
    fn as_slice(&self) -> &[f32] {
        match self {
            DenseData::Growing(v) => v,
            DenseData::Fixed(f) => f.as_slice(),
        }
    }

    fn freeze(&mut self) {
        if let DenseData::Growing(v) = self {
            let mut v = std::mem::take(v);
            v.shrink_to_fit();
            *self = DenseData::Fixed(Floats::Heap(Arc::new(v)));
        }
    }
}

/// Multivector values once fixed: per offset on the heap, or in a segment file as one run of
/// values with each offset's range (an empty range: the point has no such vector; an empty
/// multivector is refused at input).
#[derive(Clone)]
pub enum MultiValues {
    Heap(Arc<Vec<Option<Box<[f32]>>>>),
    File {
        /// `len + 1` value positions: offset `o` holds `values[starts[o]..starts[o + 1]]`.
        starts: Arc<Vec<u64>>,
        values: FileSlice,
    },
}

impl MultiValues {
    fn get(&self, o: usize) -> Option<&[f32]> {
        match self {
            MultiValues::Heap(cells) => cells[o].as_deref(),
            MultiValues::File { starts, values } => {
                let (from, to) = (starts[o] as usize, starts[o + 1] as usize);
                (to > from).then(|| &values.f32s()[from..to])
            }
        }
    }
}

/// Multivector values: growing while appendable, then fixed.
enum MultiData {
    Growing(Vec<Option<Box<[f32]>>>),
    Fixed(MultiValues),
}

/// The stored values of one named vector, one cell per offset.
enum VectorColumn {
    /// Dense vectors laid end to end, `dim` values per offset (zeros where absent).
    Dense {
        dim: usize,
        data: DenseData,
        present: Vec<bool>,
    },
    /// Each offset's sub-vectors laid end to end, `dim` values each.
    Multi {
        dim: usize,
        data: MultiData,
    },
    Sparse {
        data: Cells<Option<SparseVector>>,
    },
}

impl VectorColumn {
    fn push(&mut self, value: Option<&VectorData>) {
        match (self, value) {
            (
                VectorColumn::Dense {
                    dim,
                    data: DenseData::Growing(data),
                    present,
                },
                value,
            ) => match value {
                Some(VectorData::Dense(v)) if v.len() == *dim => {
                    data.extend_from_slice(v);
                    present.push(true);
                }
                _ => {
                    data.resize(data.len() + *dim, 0.0);
                    present.push(false);
                }
            },
            (VectorColumn::Dense { .. }, _) => unreachable!("frozen columns take no new points"),
            (VectorColumn::Multi { dim, data }, value) => {
                let cell = match value {
                    Some(VectorData::Multi(vs)) if !vs.is_empty() => Some(
                        vs.iter()
                            .flat_map(|v| {
                                v.iter().copied().chain(std::iter::repeat(0.0)).take(*dim)
                            })
                            .collect::<Box<[f32]>>(),
                    ),
                    _ => None,
                };
                match data {
                    MultiData::Growing(cells) => cells.push(cell),
                    MultiData::Fixed(_) => unreachable!("frozen columns take no new points"),
                }
            }
            (VectorColumn::Sparse { data }, value) => {
                let cell = match value {
                    Some(VectorData::Sparse(s)) => Some(s.clone()),
                    _ => None,
                };
                data.push(cell);
            }
        }
    }

    fn freeze(&mut self) {
        match self {
            VectorColumn::Dense { data, present, .. } => {
                data.freeze();
                present.shrink_to_fit();
            }
            VectorColumn::Multi { data, .. } => {
                if let MultiData::Growing(cells) = data {
                    let mut cells = std::mem::take(cells);
                    cells.shrink_to_fit();
                    *data = MultiData::Fixed(MultiValues::Heap(Arc::new(cells)));
                }
            }
            VectorColumn::Sparse { data } => data.freeze(),
        }
    }

    fn get(&self, offset: u32) -> Option<VectorRef<'_>> {
        let o = offset as usize;
        match self {
            VectorColumn::Dense { dim, data, present } => {
                present[o].then(|| VectorRef::Dense(&data.as_slice()[o * dim..(o + 1) * dim]))
            }
            VectorColumn::Multi { dim, data } => match data {
                MultiData::Growing(cells) => cells[o].as_deref(),
                MultiData::Fixed(values) => values.get(o),
            }
            .map(|flat| VectorRef::Multi { flat, dim: *dim }),
            VectorColumn::Sparse { data } => data.as_slice()[o].as_ref().map(VectorRef::Sparse),
        }
    }
}

/// One vector's values in a segment, by offset (see [`Segment::column`]).
#[derive(Clone, Copy)]
pub struct ColumnReader<'a>(&'a VectorColumn);

impl<'a> ColumnReader<'a> {
    /// The vector at `offset`, `None` when that point lacks it.
    pub fn get(self, offset: u32) -> Option<VectorRef<'a>> {
        self.0.get(offset)
    }
}

/// The frozen values of one vector, shared with an index builder outside the shard's lock.
pub enum FrozenColumn {
    Dense {
        dim: usize,
        data: Floats,
        present: Vec<bool>,
    },
    Multi {
        dim: usize,
        data: MultiValues,
    },
    Sparse {
        data: Arc<Vec<Option<SparseVector>>>,
    },
}

impl FrozenColumn {
    /// The vector at `offset`, if the point has one.
    pub fn get(&self, offset: u32) -> Option<VectorRef<'_>> {
        let o = offset as usize;
        match self {
            FrozenColumn::Dense { dim, data, present } => {
                present[o].then(|| VectorRef::Dense(&data.as_slice()[o * dim..(o + 1) * dim]))
            }
            FrozenColumn::Multi { dim, data } => {
                data.get(o).map(|flat| VectorRef::Multi { flat, dim: *dim })
            }
            FrozenColumn::Sparse { data } => data[o].as_ref().map(VectorRef::Sparse),
        }
    }
}

/// What a column holds: its kind and dimension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ColumnShape {
    Dense(usize),
    Multi(usize),
    Sparse,
}

impl ColumnShape {
    fn of(column: &VectorColumn) -> ColumnShape {
        match column {
            VectorColumn::Dense { dim, .. } => ColumnShape::Dense(*dim),
            VectorColumn::Multi { dim, .. } => ColumnShape::Multi(*dim),
            VectorColumn::Sparse { .. } => ColumnShape::Sparse,
        }
    }

    /// A growing column of `len` cells, none holding a vector.
    fn empty_column(self, len: usize) -> VectorColumn {
        match self {
            ColumnShape::Dense(dim) => VectorColumn::Dense {
                dim,
                data: DenseData::Growing(vec![0.0; len * dim]),
                present: vec![false; len],
            },
            ColumnShape::Multi(dim) => VectorColumn::Multi {
                dim,
                data: MultiData::Growing(vec![None; len]),
            },
            ColumnShape::Sparse => VectorColumn::Sparse {
                data: Cells::Growing(vec![None; len]),
            },
        }
    }
}

/// Whether a sealed segment maps the codes of `name` from its file: with the vector
/// `on_disk`, unless the quantization is `always_ram` (Qdrant's rule).
pub fn codes_mapped(config: &CollectionConfig, name: &str) -> bool {
    let on_disk = config.dense(name).and_then(|p| p.on_disk).unwrap_or(false);
    on_disk
        && !config
            .scalar_quantization(name)
            .is_some_and(|q| q.always_ram)
}

/// The column every vector of `config` needs, by name.
fn wanted_columns(config: &CollectionConfig) -> BTreeMap<String, ColumnShape> {
    let mut out = BTreeMap::new();
    for (name, params) in config.params.vectors.iter() {
        let shape = match params.multivector_config {
            Some(_) => ColumnShape::Multi(params.size),
            None => ColumnShape::Dense(params.size),
        };
        out.insert(name.to_string(), shape);
    }
    for (name, _) in config.sparse_iter() {
        out.insert(name.to_string(), ColumnShape::Sparse);
    }
    out
}

/// The indexes of an indexed segment, per vector name.
#[derive(Default)]
pub struct SegmentIndex {
    pub graphs: BTreeMap<String, HnswIndex>,
    pub sparse: BTreeMap<String, SparseIndex>,
    /// Scalar-quantized codes of the dense vectors whose configuration asks for them.
    pub quantized: BTreeMap<String, QuantizedVectors>,
}

impl SegmentIndex {}

pub struct Segment {
    pub id: SegmentId,
    ids: Vec<PointId>,
    columns: BTreeMap<String, VectorColumn>,
    frozen: bool,
    /// Bytes of dense vector data per offset, for size thresholds.
    point_bytes: usize,
    payloads: PayloadStorage,
    versions: Vec<u64>,
    deleted: Vec<bool>,
    deleted_count: usize,
    index: Option<Arc<SegmentIndex>>,
    /// Versions as the segment's directory holds them; `None` until it has one.
    file_versions: Option<Vec<u64>>,
    /// The segment's directory, once it has one.
    dir: Option<PathBuf>,
    /// Columns the segment's directory holds that no longer count (their vector was removed
    /// from the collection).
    voided: std::collections::BTreeSet<String>,
    /// The payload indexes of a frozen segment, for the collection's declared payload schema.
    payload_index: Option<Arc<PayloadIndex>>,
    /// Payload edits made to this frozen segment so far (a counter, never reset).
    payload_edits: u64,
    /// Offsets whose payload changed after `payload_index` was built, with their edit number:
    /// searches take them as candidates whatever the index says.
    payload_touched: std::collections::BTreeMap<u32, u64>,
}

impl Segment {
    /// An empty appendable segment with a column for every vector of `config`.
    pub fn new(id: SegmentId, config: &CollectionConfig) -> Segment {
        let columns = wanted_columns(config)
            .into_iter()
            .map(|(name, shape)| (name, shape.empty_column(0)))
            .collect();
        Segment {
            id,
            ids: Vec::new(),
            columns,
            frozen: false,
            point_bytes: config.point_vector_bytes(),
            payloads: PayloadStorage::Heap(Vec::new()),
            versions: Vec::new(),
            deleted: Vec::new(),
            deleted_count: 0,
            index: None,
            file_versions: None,
            dir: None,
            voided: Default::default(),
            payload_index: None,
            payload_edits: 0,
            payload_touched: Default::default(),
        }
    }

    /// Brings the segment to a changed configuration (a named vector added or removed): columns
    /// and indexes of vectors `config` no longer has (or has with another shape) are dropped; an
    /// appendable segment gets an empty column for each new vector (its points lack it). A
    /// frozen segment gets none: its points cannot have a vector added after they were written.
    /// An index shared with a search in flight is dropped whole, to be rebuilt. Returns the
    /// live offsets whose points lost a vector (their stored form must be written again).
    pub fn conform(&mut self, config: &CollectionConfig) -> Vec<u32> {
        let wanted = wanted_columns(config);
        let stale: Vec<String> = self
            .columns
            .iter()
            .filter(|(name, column)| wanted.get(*name) != Some(&ColumnShape::of(column)))
            .map(|(name, _)| name.clone())
            .collect();
        let changed: Vec<u32> = self
            .live_offsets()
            .filter(|o| stale.iter().any(|name| self.has_vector(name, *o)))
            .collect();
        for name in &stale {
            self.columns.remove(name);
        }
        // A segment on disk still holds what was dropped: the column is voided (the point
        // store records that, so a vector re-created under the same name never finds the old
        // values after a restart). Its vectors are mapped or read as `on_disk` said when it was
        // opened: when that changed, it is written anew (dropping the index makes the
        // optimizer rewrite it).
        if self.file_versions.is_some() {
            self.voided.extend(stale.iter().cloned());
        }
        self.store_payloads(config.params.on_disk_payload);
        let layout_outdated = self.file_versions.is_some()
            && self.columns.iter().any(|(name, column)| {
                let file = match column {
                    VectorColumn::Dense {
                        data: DenseData::Fixed(Floats::File(f)),
                        ..
                    }
                    | VectorColumn::Multi {
                        data: MultiData::Fixed(MultiValues::File { values: f, .. }),
                        ..
                    } => f,
                    _ => return false,
                };
                let on_disk = config.dense(name).and_then(|p| p.on_disk).unwrap_or(false);
                file.is_mapped() != on_disk && !file.f32s().is_empty()
            });
        if layout_outdated {
            self.index = None;
        }
        // A graph built with other parameters than the configuration now asks for is
        // rebuilt: the segment goes back to frozen (searched exhaustively meanwhile) and the
        // optimizer indexes it again.
        let graph_outdated = self.index.as_ref().is_some_and(|index| {
            index.graphs.iter().any(|(name, graph)| {
                let hnsw = config.hnsw_for(name);
                graph.params()
                    != GraphParams {
                        m: hnsw.m,
                        ef_construct: hnsw.ef_construct,
                    }
            })
        });
        if graph_outdated {
            self.index = None;
        }
        // Codes missing, built with another quantile, or mapped where the configuration now
        // keeps them on the heap (or the other way round): quantized again with the graph.
        let persisted = self.file_versions.is_some();
        let quantization_outdated = self.index.as_ref().is_some_and(|index| {
            index.graphs.keys().any(|name| {
                let Some(wanted) = config.scalar_quantization(name) else {
                    return false;
                };
                index.quantized.get(name).is_none_or(|q| {
                    q.quantile() != wanted.quantile
                        || (persisted && q.is_mapped() != codes_mapped(config, name))
                })
            })
        });
        if quantization_outdated {
            self.index = None;
        }
        // Codes the configuration no longer asks for are dropped from memory (searches would
        // not use them; a segment on disk keeps them in its files).
        let codes_unwanted = self.index.as_ref().is_some_and(|index| {
            index
                .quantized
                .keys()
                .any(|name| config.scalar_quantization(name).is_none())
        });
        if codes_unwanted && let Some(index) = self.index.as_mut().and_then(Arc::get_mut) {
            index
                .quantized
                .retain(|name, _| config.scalar_quantization(name).is_some());
        }
        let index_stale = self.index.as_ref().is_some_and(|index| {
            index
                .graphs
                .keys()
                .chain(index.sparse.keys())
                .any(|name| !self.columns.contains_key(name))
        });
        if index_stale && let Some(shared) = self.index.as_mut() {
            match Arc::get_mut(shared) {
                Some(index) => {
                    let columns = &self.columns;
                    index.graphs.retain(|name, _| columns.contains_key(name));
                    index.sparse.retain(|name, _| columns.contains_key(name));
                    index.quantized.retain(|name, _| columns.contains_key(name));
                }
                None => self.index = None,
            }
        }
        if !self.frozen {
            let len = self.ids.len();
            for (name, shape) in wanted {
                self.columns
                    .entry(name)
                    .or_insert_with(|| shape.empty_column(len));
            }
        }
        self.point_bytes = config.point_vector_bytes();
        changed
    }

    pub fn stage(&self) -> SegmentStage {
        match (self.frozen, &self.index) {
            (false, _) => SegmentStage::Appendable,
            (true, None) => SegmentStage::Frozen,
            (true, Some(_)) => SegmentStage::Indexed,
        }
    }

    /// Appends a point and returns its offset. Only appendable segments take points; vectors
    /// this segment has no column for are not stored (the collection checks names first).
    pub fn push(
        &mut self,
        id: PointId,
        vectors: &NamedVectors,
        payload: Payload,
        version: u64,
    ) -> u32 {
        assert!(
            !self.frozen,
            "segment {} is frozen and takes no new points",
            self.id
        );
        for (name, column) in &mut self.columns {
            column.push(vectors.get(name));
        }
        self.ids.push(id);
        self.payloads.push(payload);
        self.versions.push(version);
        self.deleted.push(false);
        (self.ids.len() - 1) as u32
    }

    /// Stops appends: from now on the vectors are immutable and can be shared with a builder.
    pub fn freeze(&mut self) {
        self.columns.values_mut().for_each(VectorColumn::freeze);
        self.frozen = true;
    }

    /// The frozen columns, by vector name (empty while the segment is appendable).
    pub fn frozen_columns(&self) -> BTreeMap<String, FrozenColumn> {
        if !self.frozen {
            return BTreeMap::new();
        }
        self.columns
            .iter()
            .filter_map(|(name, column)| {
                let frozen = match column {
                    VectorColumn::Dense { dim, data, present } => FrozenColumn::Dense {
                        dim: *dim,
                        data: match data {
                            DenseData::Fixed(f) => f.clone(),
                            DenseData::Growing(_) => return None,
                        },
                        present: present.clone(),
                    },
                    VectorColumn::Multi { dim, data } => FrozenColumn::Multi {
                        dim: *dim,
                        data: match data {
                            MultiData::Fixed(values) => values.clone(),
                            MultiData::Growing(_) => return None,
                        },
                    },
                    VectorColumn::Sparse { data } => FrozenColumn::Sparse {
                        data: data.shared()?,
                    },
                };
                Some((name.clone(), frozen))
            })
            .collect()
    }

    pub fn set_index(&mut self, index: Arc<SegmentIndex>) {
        assert!(self.frozen, "only frozen segments are indexed");
        self.index = Some(index);
    }

    pub fn index(&self) -> Option<&Arc<SegmentIndex>> {
        self.index.as_ref()
    }

    /// Number of offsets, deleted or not.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn live_count(&self) -> usize {
        self.ids.len() - self.deleted_count
    }

    pub fn deleted_count(&self) -> usize {
        self.deleted_count
    }

    /// Bytes of dense vectors, for size thresholds.
    /// Bytes of dense vector data per point.
    pub fn point_bytes(&self) -> usize {
        self.point_bytes
    }

    pub fn vector_bytes(&self) -> usize {
        self.ids.len() * self.point_bytes
    }

    pub fn is_live(&self, offset: u32) -> bool {
        !self.deleted[offset as usize]
    }

    pub fn delete(&mut self, offset: u32) {
        let slot = &mut self.deleted[offset as usize];
        if !*slot {
            *slot = true;
            self.deleted_count += 1;
        }
    }

    /// Columns of the segment's directory that no longer count (see [`Segment::conform`]).
    pub fn voided_columns(&self) -> Vec<String> {
        self.voided.iter().cloned().collect()
    }

    /// Deleted offsets as a bitmap: bit `o % 8` of byte `o / 8`.
    pub fn deleted_bitmap(&self) -> Vec<u8> {
        let mut bits = vec![0u8; self.deleted.len().div_ceil(8)];
        for (o, _) in self.deleted.iter().enumerate().filter(|(_, d)| **d) {
            bits[o / 8] |= 1 << (o % 8);
        }
        bits
    }

    /// Deletes the offsets set in `bits` (see [`Segment::deleted_bitmap`]); bits past the
    /// segment's end are ignored.
    pub fn apply_deleted_bitmap(&mut self, bits: &[u8]) {
        for o in 0..self.deleted.len() {
            if bits.get(o / 8).is_some_and(|b| b & (1 << (o % 8)) != 0) {
                self.delete(o as u32);
            }
        }
    }

    pub fn id(&self, offset: u32) -> PointId {
        self.ids[offset as usize]
    }

    /// The vector `name` of the point at `offset`, if it has one.
    pub fn vector(&self, name: &str, offset: u32) -> Option<VectorRef<'_>> {
        self.columns.get(name)?.get(offset)
    }

    /// The values of vector `name`, for reading many offsets without looking the name up for
    /// each (a scan's inner loop).
    pub fn column(&self, name: &str) -> Option<ColumnReader<'_>> {
        self.columns.get(name).map(ColumnReader)
    }

    /// Whether the point at `offset` has the vector `name`.
    pub fn has_vector(&self, name: &str, offset: u32) -> bool {
        self.vector(name, offset).is_some()
    }

    /// Every vector of the point at `offset`, by name.
    pub fn vectors(&self, offset: u32) -> NamedVectors {
        self.columns
            .iter()
            .filter_map(|(name, column)| Some((name.clone(), column.get(offset)?.to_owned())))
            .collect()
    }

    /// The vectors of the point at `offset` whose names pass `wanted`.
    pub fn vectors_where(&self, offset: u32, wanted: impl Fn(&str) -> bool) -> NamedVectors {
        self.columns
            .iter()
            .filter(|(name, _)| wanted(name))
            .filter_map(|(name, column)| Some((name.clone(), column.get(offset)?.to_owned())))
            .collect()
    }

    /// The payload at `offset`: borrowed when it is on the heap, parsed from the segment's
    /// file when the collection keeps payloads `on_disk_payload` (see `payload_storage`).
    pub fn payload(&self, offset: u32) -> Cow<'_, Payload> {
        self.payloads.get(offset)
    }

    /// Whether the payloads are read from the segment's file rather than held on the heap.
    pub fn payloads_mapped(&self) -> bool {
        self.payloads.is_mapped()
    }

    /// The payload at `offset`, to change. A frozen segment notes the change, so that its
    /// payload index (built before it) is completed with this offset. A payload read from the
    /// file is copied to the heap; the caller sets the point's new version (what tells a
    /// changed payload from the file's).
    pub fn payload_mut(&mut self, offset: u32) -> &mut Payload {
        self.note_payload_edit(offset);
        self.payloads.get_mut(offset)
    }

    /// Replaces the payload at `offset` (noted as [`Segment::payload_mut`] notes a change),
    /// without reading the one it replaces from the segment's file.
    pub fn set_payload(&mut self, offset: u32, payload: Payload) {
        self.note_payload_edit(offset);
        self.payloads.set(offset, payload);
    }

    /// A frozen segment's payload index was built before this edit: it is completed with
    /// `offset` (see [`Segment::payload_index`]).
    fn note_payload_edit(&mut self, offset: u32) {
        if self.frozen {
            self.payload_edits += 1;
            self.payload_touched.insert(offset, self.payload_edits);
        }
    }

    /// Every payload, moved onto the heap (read from the file where mapped); the segment is
    /// left with none until the caller stores them again.
    fn take_payloads(&mut self) -> Vec<Payload> {
        std::mem::replace(&mut self.payloads, PayloadStorage::Heap(Vec::new()))
            .into_heap(self.ids.len())
    }

    /// Payload edits made so far: read it under the same lock as the payloads a
    /// [`PayloadIndex`] is built from, and give it to [`PayloadIndex::build`].
    pub fn payload_edits(&self) -> u64 {
        self.payload_edits
    }

    /// Live offsets with their payloads, what a [`PayloadIndex`] is built from.
    pub fn live_payloads(&self) -> impl Iterator<Item = (u32, Cow<'_, Payload>)> + '_ {
        self.live_offsets().map(|o| (o, self.payloads.get(o)))
    }

    /// Attaches payload indexes built from this segment's payloads (or drops them with
    /// `None`); edits the index was built after are forgotten, later ones kept.
    pub fn set_payload_index(&mut self, index: Option<Arc<PayloadIndex>>) {
        match &index {
            Some(i) => self.payload_touched.retain(|_, edit| *edit > i.built_at),
            None => self.payload_touched.clear(),
        }
        self.payload_index = index;
    }

    /// The payload indexes and the offsets whose payloads changed since they were built.
    pub fn payload_index(&self) -> Option<(&PayloadIndex, impl Iterator<Item = u32> + '_)> {
        let index = self.payload_index.as_deref()?;
        Some((index, self.payload_touched.keys().copied()))
    }

    /// How many offsets changed their payload since the payload indexes were built.
    pub fn payload_touched_count(&self) -> usize {
        self.payload_touched.len()
    }

    pub fn version(&self, offset: u32) -> u64 {
        self.versions[offset as usize]
    }

    /// The highest version any offset holds (0 when empty).
    pub fn max_version(&self) -> u64 {
        self.versions.iter().copied().max().unwrap_or(0)
    }

    pub fn set_version(&mut self, offset: u32, version: u64) {
        self.versions[offset as usize] = version;
    }

    /// Offsets of the points that are not deleted.
    pub fn live_offsets(&self) -> impl Iterator<Item = u32> + Clone + '_ {
        self.deleted
            .iter()
            .enumerate()
            .filter(|(_, d)| !**d)
            .map(|(o, _)| o as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collection_config::{SparseVectorParams, VectorParams, VectorsConfig};
    use crate::types::Distance;

    fn params(size: usize, multi: bool) -> VectorParams {
        VectorParams::new(size, Distance::Dot, multi)
    }

    pub fn config() -> CollectionConfig {
        let mut config = CollectionConfig::single_dense(2, Distance::Dot);
        config.params.vectors = VectorsConfig::Named(BTreeMap::from([
            ("a".to_string(), params(2, false)),
            ("m".to_string(), params(2, true)),
        ]));
        config.params.sparse_vectors = Some(BTreeMap::from([(
            "s".to_string(),
            SparseVectorParams::default(),
        )]));
        config
    }

    #[test]
    fn conform_adds_empty_columns_and_drops_removed_or_reshaped_ones() {
        let mut s = Segment::new(1, &config());
        let a = s.push(
            PointId::Num(1),
            &NamedVectors::from([("a".to_string(), VectorData::Dense(vec![1.0, 2.0]))]),
            Payload::new(),
            1,
        );
        let mut changed = config();
        let VectorsConfig::Named(map) = &mut changed.params.vectors else {
            panic!("named config expected")
        };
        map.remove("m");
        map.insert("new".into(), params(3, false));
        changed.params.sparse_vectors = None;
        assert!(s.conform(&changed).is_empty(), "no point had `m` or `s`");
        // The point keeps `a`, lacks the new vector, and `m` and `s` are gone.
        assert_eq!(
            s.vectors(a).keys().collect::<Vec<_>>(),
            vec![&"a".to_string()]
        );
        assert!(!s.has_vector("new", a));
        let b = s.push(
            PointId::Num(2),
            &NamedVectors::from([("new".to_string(), VectorData::Dense(vec![1.0, 0.0, 0.0]))]),
            Payload::new(),
            2,
        );
        assert!(s.has_vector("new", b) && !s.has_vector("new", a));
        // Re-created with another size: the old values are dropped, not misread.
        let VectorsConfig::Named(map) = &mut changed.params.vectors else {
            panic!("named config expected")
        };
        map.insert("a".into(), params(4, false));
        assert_eq!(s.conform(&changed), vec![a], "the point with `a` lost it");
        assert!(!s.has_vector("a", a));
        s.freeze();
        assert_eq!(s.frozen_columns().len(), 2);
    }

    #[test]
    fn lifecycle_keeps_offsets_and_optional_vectors() {
        let mut s = Segment::new(1, &config());
        assert_eq!(s.stage(), SegmentStage::Appendable);
        let full = NamedVectors::from([
            ("a".to_string(), VectorData::Dense(vec![1.0, 2.0])),
            (
                "m".to_string(),
                VectorData::Multi(vec![vec![1.0, 0.0], vec![0.0, 1.0]]),
            ),
            (
                "s".to_string(),
                VectorData::Sparse(SparseVector::new(vec![3], vec![0.5]).unwrap()),
            ),
        ]);
        let a = s.push(PointId::Num(1), &full, Payload::new(), 1);
        let b = s.push(PointId::Num(2), &NamedVectors::new(), Payload::new(), 2);
        assert_eq!(s.vectors(a), full);
        assert!(s.vectors(b).is_empty());
        assert!(s.has_vector("m", a) && !s.has_vector("m", b));
        s.delete(a);
        s.delete(a);
        assert_eq!(s.live_count(), 1);
        let mut copy = Segment::new(2, &config());
        copy.push(PointId::Num(1), &full, Payload::new(), 1);
        copy.push(PointId::Num(2), &full, Payload::new(), 1);
        copy.apply_deleted_bitmap(&s.deleted_bitmap());
        assert_eq!(copy.live_offsets().collect::<Vec<_>>(), vec![b]);
        s.freeze();
        assert_eq!(s.stage(), SegmentStage::Frozen);
        let frozen = s.frozen_columns();
        assert_eq!(frozen.len(), 3);
        assert!(frozen["a"].get(b).is_none());
        assert!(matches!(
            frozen["a"].get(a),
            Some(VectorRef::Dense(&[1.0, 2.0]))
        ));
        assert_eq!(s.live_offsets().collect::<Vec<_>>(), vec![b]);
        assert_eq!(s.id(b), PointId::Num(2));
    }
}
