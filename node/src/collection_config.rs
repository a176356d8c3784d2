//! A collection's configuration in Qdrant's shape: what `PUT /collections/{name}` accepts (as
//! "diffs" over the defaults) and what `GET /collections/{name}` reports. Stored with the
//! collection; every layer below `cluster` reads it, none writes it.

pub mod quantization;
pub mod strict_mode;

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use quantization::{Quantization, ScalarQuantization};
pub use strict_mode::{StrictModeConfig, StrictModeMultivector, StrictModeSparse};

use crate::types::{DEFAULT_VECTOR, Distance};

/// The largest vector Shoal accepts, as in Qdrant.
pub const MAX_VECTOR_SIZE: usize = 65_536;
/// Upper bounds that keep one collection's shards manageable on one node.
pub const MAX_SHARD_NUMBER: u32 = 1_024;

/// Most named vectors (dense and sparse together) one collection may have.
pub const MAX_NAMED_VECTORS: usize = 64;
/// Most sub-vectors in one multivector.
pub const MAX_MULTIVECTOR_LEN: usize = 4_096;
/// Most non-zero entries in one sparse vector.
pub const MAX_SPARSE_ENTRIES: usize = 65_536;

/// One dense (or multi-) vector of a collection, as Qdrant configures it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VectorParams {
    pub size: usize,
    pub distance: Distance,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_disk: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hnsw_config: Option<HnswConfigDiff>,
    /// This vector's quantization, over the collection's (see [`Quantization`]): scalar int8
    /// is applied to single dense vectors; the rest is stored and reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization_config: Option<serde_json::Value>,
    /// Set for a multivector: a point's vector is a list of `size`-long vectors, scored with
    /// MaxSim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multivector_config: Option<MultiVectorConfig>,
    /// The element type of the values: vectors (stored and query alike) are brought to its
    /// values as Qdrant converts them (see [`Datatype::prepare`]) and kept as `f32`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datatype: Option<Datatype>,
}

impl VectorParams {
    /// A dense vector of `size` dimensions (a multivector with `multi`), every optional
    /// setting left to the collection's defaults.
    pub fn new(size: usize, distance: Distance, multi: bool) -> VectorParams {
        VectorParams {
            size,
            distance,
            on_disk: None,
            hnsw_config: None,
            quantization_config: None,
            multivector_config: multi.then_some(MultiVectorConfig {
                comparator: MultiVectorComparator::MaxSim,
            }),
            datatype: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MultiVectorComparator {
    MaxSim,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MultiVectorConfig {
    pub comparator: MultiVectorComparator,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Datatype {
    Float32,
    Float16,
    Uint8,
}

impl Datatype {
    /// Brings an incoming vector (one to store, or a query) into the values a dense vector of
    /// `datatype` holds, with `distance`'s preprocessing, in Qdrant 1.18's order
    /// (`lib/segment/src/data_types/primitive.rs`, `NamedVectors::preprocess_dense_vector`):
    ///
    /// - `float32` (or unset): Cosine vectors are normalised ([`Distance::preprocess`]).
    /// - `float16`: normalised first (Cosine), then each value rounded to the nearest
    ///   half-precision value. A value past float16's range (|x| >= 65520 rounds to infinity,
    ///   which Qdrant stores) is refused instead: it would make every score with it NaN.
    /// - `uint8` with Dot, Euclid or Manhattan: each value becomes `x as u8` (truncated toward
    ///   zero, saturating at 0 and 255), as in Qdrant.
    /// - `uint8` with Cosine: normalised as `float32` and not truncated. Qdrant keeps the
    ///   integers and divides by both norms when scoring; Shoal's stored form for Cosine is the
    ///   normalised vector, which truncating again (a stored vector used as a query) would
    ///   destroy. The collection's `warnings` say so.
    ///
    /// Applying it to a vector it produced changes nothing (up to float16 rounding of a
    /// renormalised Cosine vector), so stored vectors can be used as queries. The values stay
    /// `f32` (4 bytes each) in memory and in segment files.
    pub fn prepare(
        datatype: Option<Datatype>,
        distance: Distance,
        values: &mut [f32],
    ) -> Result<(), String> {
        match datatype {
            None | Some(Datatype::Float32) => distance.preprocess(values),
            Some(Datatype::Float16) => {
                distance.preprocess(values);
                for x in values.iter_mut() {
                    let half = half::f16::from_f32(*x);
                    if half.is_infinite() {
                        return Err(format!(
                            "value {x} does not fit the vector's datatype float16 \
                             (at most 65504 in magnitude)"
                        ));
                    }
                    *x = half.to_f32();
                }
            }
            Some(Datatype::Uint8) if distance == Distance::Cosine => distance.preprocess(values),
            Some(Datatype::Uint8) => {
                for x in values.iter_mut() {
                    *x = f32::from(*x as u8);
                }
            }
        }
        Ok(())
    }
}

/// How a sparse vector's scores are modified: `idf` weighs each dimension by its inverse
/// document frequency over the collection (Qdrant's BM25-style IDF).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Modifier {
    #[default]
    None,
    Idf,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SparseIndexParams {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_scan_threshold: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_disk: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datatype: Option<Datatype>,
}

/// One sparse vector of a collection.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SparseVectorParams {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<SparseIndexParams>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modifier: Option<Modifier>,
}

/// A collection's dense vectors: one unnamed vector (Qdrant's single `VectorParams` form, held
/// under the name `""`), or a map of named ones (which may include `""`).
#[derive(Debug, Clone, PartialEq)]
pub enum VectorsConfig {
    Single(VectorParams),
    Named(BTreeMap<String, VectorParams>),
}

impl Default for VectorsConfig {
    fn default() -> Self {
        VectorsConfig::Named(BTreeMap::new())
    }
}

impl VectorsConfig {
    /// The parameters of the dense vector called `name`.
    pub fn get(&self, name: &str) -> Option<&VectorParams> {
        match self {
            VectorsConfig::Single(p) => (name == DEFAULT_VECTOR).then_some(p),
            VectorsConfig::Named(map) => map.get(name),
        }
    }

    /// Every dense vector with its name, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &VectorParams)> {
        let (single, named) = match self {
            VectorsConfig::Single(p) => (Some((DEFAULT_VECTOR, p)), None),
            VectorsConfig::Named(map) => (None, Some(map)),
        };
        single
            .into_iter()
            .chain(named.into_iter().flatten().map(|(k, v)| (k.as_str(), v)))
    }

    pub fn len(&self) -> usize {
        match self {
            VectorsConfig::Single(_) => 1,
            VectorsConfig::Named(map) => map.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Serialize for VectorsConfig {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            VectorsConfig::Single(p) => p.serialize(serializer),
            VectorsConfig::Named(map) => map.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for VectorsConfig {
    /// An object with `size` or `distance` is the single form; any other object is a map of
    /// named vectors (as Qdrant tells them apart).
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let value = serde_json::Value::deserialize(deserializer)?;
        let serde_json::Value::Object(map) = &value else {
            return Err(D::Error::custom(
                "`vectors` must be an object: {\"size\": N, \"distance\": ...} or a map of names to such objects",
            ));
        };
        if map.contains_key("size") || map.contains_key("distance") {
            serde_json::from_value(value)
                .map(VectorsConfig::Single)
                .map_err(D::Error::custom)
        } else {
            serde_json::from_value(value)
                .map(VectorsConfig::Named)
                .map_err(D::Error::custom)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ShardingMethod {
    #[default]
    Auto,
    Custom,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CollectionParams {
    #[serde(default)]
    pub vectors: VectorsConfig,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sparse_vectors: Option<BTreeMap<String, SparseVectorParams>>,
    pub shard_number: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sharding_method: Option<ShardingMethod>,
    pub replication_factor: u32,
    pub write_consistency_factor: u32,
    /// Reads of a shard go to this many replicas beyond the first (after
    /// `read_fan_out_delay_ms`); the first answer wins (Qdrant's hedged reads).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_fan_out_factor: Option<u32>,
    /// How long a read waits for its first replica before fanning out, in milliseconds
    /// (0 or absent: at once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_fan_out_delay_ms: Option<u64>,
    /// Qdrant's `on_disk_payload` (default `true`): sealed segments read each payload from
    /// their `points.bin` when it is needed instead of holding every payload in memory
    /// (`shard::segment`'s payload storage); appendable segments hold theirs in memory either
    /// way. A change applies to every sealed segment at once, without rewriting it.
    pub on_disk_payload: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HnswConfig {
    pub m: usize,
    pub ef_construct: usize,
    /// Segments whose vectors take fewer kilobytes than this are searched exhaustively.
    pub full_scan_threshold: usize,
    /// Threads one graph build uses: 0 (the default) is the node's whole indexing budget
    /// (`storage.optimizer_threads`), any other value that many, capped by the budget.
    pub max_indexing_threads: usize,
    pub on_disk: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_m: Option<usize>,
    /// Stored and reported; graphs never hold vector copies (the collection's `warnings` say
    /// so when it is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline_storage: Option<bool>,
}

impl Default for HnswConfig {
    fn default() -> Self {
        HnswConfig {
            m: 16,
            ef_construct: 100,
            full_scan_threshold: 10_000,
            max_indexing_threads: 0,
            on_disk: false,
            payload_m: None,
            inline_storage: None,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HnswConfigDiff {
    pub m: Option<usize>,
    pub ef_construct: Option<usize>,
    pub full_scan_threshold: Option<usize>,
    pub max_indexing_threads: Option<usize>,
    pub on_disk: Option<bool>,
    pub payload_m: Option<usize>,
    pub inline_storage: Option<bool>,
}

impl HnswConfigDiff {
    /// Overlays the fields `other` sets.
    pub fn merge(&mut self, other: &HnswConfigDiff) {
        fn set<T: Clone>(into: &mut Option<T>, from: &Option<T>) {
            if from.is_some() {
                *into = from.clone();
            }
        }
        set(&mut self.m, &other.m);
        set(&mut self.ef_construct, &other.ef_construct);
        set(&mut self.full_scan_threshold, &other.full_scan_threshold);
        set(&mut self.max_indexing_threads, &other.max_indexing_threads);
        set(&mut self.on_disk, &other.on_disk);
        set(&mut self.payload_m, &other.payload_m);
        set(&mut self.inline_storage, &other.inline_storage);
    }
}

impl HnswConfig {
    pub fn apply(&mut self, diff: &HnswConfigDiff) {
        if let Some(v) = diff.m {
            self.m = v;
        }
        if let Some(v) = diff.ef_construct {
            self.ef_construct = v;
        }
        if let Some(v) = diff.full_scan_threshold {
            self.full_scan_threshold = v;
        }
        if let Some(v) = diff.max_indexing_threads {
            self.max_indexing_threads = v;
        }
        if let Some(v) = diff.on_disk {
            self.on_disk = v;
        }
        if diff.payload_m.is_some() {
            self.payload_m = diff.payload_m;
        }
        if diff.inline_storage.is_some() {
            self.inline_storage = diff.inline_storage;
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if !(2..=128).contains(&self.m) {
            return Err(format!(
                "hnsw_config.m must be between 2 and 128, got {}",
                self.m
            ));
        }
        if !(4..=4096).contains(&self.ef_construct) {
            return Err(format!(
                "hnsw_config.ef_construct must be between 4 and 4096, got {}",
                self.ef_construct
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OptimizersConfig {
    pub deleted_threshold: f64,
    pub vacuum_min_vector_number: usize,
    pub default_segment_number: usize,
    pub max_segment_size: Option<usize>,
    pub memmap_threshold: Option<usize>,
    /// Kilobytes of vectors after which a segment is sealed and indexed; 0 disables indexing.
    pub indexing_threshold: Option<usize>,
    pub flush_interval_sec: u64,
    /// Optimization jobs a shard may run at once (`None` is Qdrant's "auto"); 0 switches the
    /// optimizer off (segments are neither indexed, vacuumed nor merged, and the collection is
    /// `grey` while such work waits). Shoal runs one job at a time, which any other value
    /// allows.
    pub max_optimization_threads: Option<usize>,
    /// Stored and reported; points are searchable as soon as they are written whatever it says
    /// (the collection's `warnings` say so when it is on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prevent_unoptimized: Option<bool>,
}

impl Default for OptimizersConfig {
    fn default() -> Self {
        OptimizersConfig {
            deleted_threshold: 0.2,
            vacuum_min_vector_number: 1000,
            default_segment_number: 0,
            max_segment_size: None,
            memmap_threshold: None,
            // Qdrant 1.18.3 answers 10000 for a collection created without optimizer settings.
            indexing_threshold: Some(10_000),
            flush_interval_sec: 5,
            max_optimization_threads: None,
            prevent_unoptimized: None,
        }
    }
}

/// `max_optimization_threads` is an integer or the string "auto" in Qdrant's API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MaxOptimizationThreads {
    Threads(usize),
    Setting(MaxOptimizationThreadsSetting),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MaxOptimizationThreadsSetting {
    Auto,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimizersConfigDiff {
    pub deleted_threshold: Option<f64>,
    pub vacuum_min_vector_number: Option<usize>,
    pub default_segment_number: Option<usize>,
    pub max_segment_size: Option<usize>,
    pub memmap_threshold: Option<usize>,
    pub indexing_threshold: Option<usize>,
    pub flush_interval_sec: Option<u64>,
    pub max_optimization_threads: Option<MaxOptimizationThreads>,
    pub prevent_unoptimized: Option<bool>,
}

impl OptimizersConfig {
    pub fn apply(&mut self, diff: &OptimizersConfigDiff) {
        if let Some(v) = diff.deleted_threshold {
            self.deleted_threshold = v;
        }
        if let Some(v) = diff.vacuum_min_vector_number {
            self.vacuum_min_vector_number = v;
        }
        if let Some(v) = diff.default_segment_number {
            self.default_segment_number = v;
        }
        if diff.max_segment_size.is_some() {
            self.max_segment_size = diff.max_segment_size;
        }
        if diff.memmap_threshold.is_some() {
            self.memmap_threshold = diff.memmap_threshold;
        }
        if diff.indexing_threshold.is_some() {
            self.indexing_threshold = diff.indexing_threshold;
        }
        if let Some(v) = diff.flush_interval_sec {
            self.flush_interval_sec = v;
        }
        match &diff.max_optimization_threads {
            Some(MaxOptimizationThreads::Threads(n)) => self.max_optimization_threads = Some(*n),
            Some(MaxOptimizationThreads::Setting(MaxOptimizationThreadsSetting::Auto)) => {
                self.max_optimization_threads = None
            }
            None => {}
        }
        if diff.prevent_unoptimized.is_some() {
            self.prevent_unoptimized = diff.prevent_unoptimized;
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.deleted_threshold) {
            return Err(format!(
                "optimizers_config.deleted_threshold must be between 0 and 1, got {}",
                self.deleted_threshold
            ));
        }
        if self.flush_interval_sec == 0 {
            return Err("optimizers_config.flush_interval_sec must be at least 1".into());
        }
        Ok(())
    }

    /// How many points of `point_bytes` bytes of vectors an appendable segment takes before it
    /// is sealed and indexed, or `None` when indexing is disabled.
    pub fn indexing_threshold_points(&self, point_bytes: usize) -> Option<usize> {
        let kb = self.indexing_threshold?;
        if kb == 0 {
            return None;
        }
        let kb = self.max_segment_size.map_or(kb, |max| kb.min(max.max(1)));
        Some((kb * 1024 / point_bytes.max(1)).max(1))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WalConfig {
    pub wal_capacity_mb: usize,
    pub wal_segments_ahead: usize,
    /// Closed WAL files kept after a flush made them redundant (Qdrant's `wal_retain_closed`,
    /// default 1): a replica that missed their records is brought up to date from them by a
    /// `wal_delta` transfer instead of a full copy.
    #[serde(default = "default_wal_retain_closed")]
    pub wal_retain_closed: usize,
}

fn default_wal_retain_closed() -> usize {
    1
}

impl Default for WalConfig {
    fn default() -> Self {
        WalConfig {
            wal_capacity_mb: 32,
            wal_segments_ahead: 0,
            wal_retain_closed: default_wal_retain_closed(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WalConfigDiff {
    pub wal_capacity_mb: Option<usize>,
    pub wal_segments_ahead: Option<usize>,
    pub wal_retain_closed: Option<usize>,
}

/// Everything a collection is configured with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CollectionConfig {
    pub params: CollectionParams,
    pub hnsw_config: HnswConfig,
    pub optimizer_config: OptimizersConfig,
    pub wal_config: WalConfig,
    /// The collection-wide quantization (per-vector settings take precedence; see
    /// [`CollectionConfig::quantization_for`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization_config: Option<serde_json::Value>,
    /// Qdrant's `strict_mode_config`: request limits, enforced while `enabled` (see
    /// `api::rest::strict_mode`). Read leniently from storage ([`strict_mode::from_stored`]).
    #[serde(
        default,
        deserialize_with = "strict_mode::from_stored",
        skip_serializing_if = "Option::is_none"
    )]
    pub strict_mode_config: Option<StrictModeConfig>,
    /// Free-form metadata a client attaches to the collection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

/// What kind of vector a name refers to, with its parameters.
#[derive(Debug, Clone, Copy)]
pub enum VectorKind<'a> {
    Dense(&'a VectorParams),
    Multi(&'a VectorParams),
    Sparse(&'a SparseVectorParams),
}

impl CollectionConfig {
    /// A configuration with one unnamed dense vector and Qdrant's defaults otherwise.
    pub fn single_dense(size: usize, distance: Distance) -> CollectionConfig {
        CollectionConfig {
            params: CollectionParams {
                vectors: VectorsConfig::Single(VectorParams::new(size, distance, false)),
                sparse_vectors: None,
                shard_number: 1,
                sharding_method: None,
                replication_factor: 1,
                write_consistency_factor: 1,
                read_fan_out_factor: None,
                read_fan_out_delay_ms: None,
                on_disk_payload: true,
            },
            hnsw_config: HnswConfig::default(),
            optimizer_config: OptimizersConfig::default(),
            wal_config: WalConfig::default(),
            quantization_config: None,
            strict_mode_config: None,
            metadata: None,
        }
    }

    /// The dense or multi-vector called `name`.
    pub fn dense(&self, name: &str) -> Option<&VectorParams> {
        self.params.vectors.get(name)
    }

    pub fn sparse(&self, name: &str) -> Option<&SparseVectorParams> {
        self.params.sparse_vectors.as_ref()?.get(name)
    }

    /// The vector called `name`, of whatever kind.
    pub fn vector_kind(&self, name: &str) -> Option<VectorKind<'_>> {
        if let Some(p) = self.dense(name) {
            return Some(if p.multivector_config.is_some() {
                VectorKind::Multi(p)
            } else {
                VectorKind::Dense(p)
            });
        }
        self.sparse(name).map(VectorKind::Sparse)
    }

    /// Every sparse vector with its name, in name order.
    pub fn sparse_iter(&self) -> impl Iterator<Item = (&str, &SparseVectorParams)> {
        self.params
            .sparse_vectors
            .iter()
            .flatten()
            .map(|(k, v)| (k.as_str(), v))
    }

    /// Checks every `quantization_config` as Qdrant does (see [`Quantization::parse`]). The
    /// API checks this before proposing a configuration; the state machine does not, so that
    /// log entries committed before these checks existed still apply the same way on every
    /// peer (such a setting is stored, reported and not applied).
    pub fn validate_quantization(&self) -> Result<(), String> {
        for (name, params) in self.params.vectors.iter() {
            if let Some(q) = &params.quantization_config {
                Quantization::parse(q).map_err(|e| format!("vectors.{name}.{e}"))?;
            }
        }
        if let Some(q) = &self.quantization_config {
            Quantization::parse(q)?;
        }
        Ok(())
    }

    /// The quantization of the dense vector `name`: its own `quantization_config`, else the
    /// collection's (Qdrant's precedence). `None` for none, or one that does not parse (which
    /// the API refuses, see [`CollectionConfig::validate_quantization`]).
    pub fn quantization_for(&self, name: &str) -> Option<Quantization> {
        let params = self.dense(name)?;
        let value = params
            .quantization_config
            .as_ref()
            .or(self.quantization_config.as_ref())?;
        Quantization::parse(value).ok()
    }

    /// The scalar quantization sealed segments keep codes for, for the single dense vector
    /// `name` (multivectors are searched with their original values).
    pub fn scalar_quantization(&self, name: &str) -> Option<ScalarQuantization> {
        if self.dense(name)?.multivector_config.is_some() {
            return None;
        }
        match self.quantization_for(name)? {
            Quantization::Scalar(s) => Some(s),
            Quantization::Product | Quantization::Binary => None,
        }
    }

    /// The graph parameters of the dense vector `name`, with its own `hnsw_config` taking
    /// precedence over the collection's.
    pub fn hnsw_for(&self, name: &str) -> HnswConfig {
        let mut hnsw = self.hnsw_config.clone();
        if let Some(diff) = self.dense(name).and_then(|p| p.hnsw_config.as_ref()) {
            hnsw.apply(diff);
        }
        hnsw
    }

    /// Points an appendable segment holds before it is frozen for indexing: the optimizer's
    /// `indexing_threshold` (capped by `max_segment_size`) over [`Self::point_vector_bytes`];
    /// `None` when indexing is off.
    pub fn indexing_threshold_points(&self) -> Option<usize> {
        self.optimizer_config
            .indexing_threshold_points(self.point_vector_bytes())
    }

    /// Bytes of dense vector data per point, over every dense and multi-vector (a multivector
    /// counted as one sub-vector): what `indexing_threshold` and segment sizes are measured in.
    pub fn point_vector_bytes(&self) -> usize {
        self.params
            .vectors
            .iter()
            .map(|(_, p)| p.size * 4)
            .sum::<usize>()
            .max(4)
    }

    pub fn validate(&self) -> Result<(), String> {
        let named = self.params.vectors.len() + self.sparse_iter().count();
        if named > MAX_NAMED_VECTORS {
            return Err(format!(
                "a collection has at most {MAX_NAMED_VECTORS} named vectors, got {named}"
            ));
        }
        for (name, params) in self.params.vectors.iter() {
            let size = params.size;
            if size == 0 || size > MAX_VECTOR_SIZE {
                return Err(format!(
                    "vector size must be between 1 and {MAX_VECTOR_SIZE}, got {size} for vector `{name}`"
                ));
            }
            if self.sparse(name).is_some() {
                return Err(format!(
                    "vector name `{name}` is used for both a dense and a sparse vector"
                ));
            }
            self.hnsw_for(name).validate()?;
        }
        if self.params.shard_number == 0 || self.params.shard_number > MAX_SHARD_NUMBER {
            return Err(format!(
                "shard_number must be between 1 and {MAX_SHARD_NUMBER}, got {}",
                self.params.shard_number
            ));
        }
        if self.params.replication_factor == 0 {
            return Err("replication_factor must be at least 1".into());
        }
        if self.params.write_consistency_factor == 0 {
            return Err("write_consistency_factor must be at least 1".into());
        }
        if self.wal_config.wal_capacity_mb == 0 {
            return Err("wal_config.wal_capacity_mb must be at least 1".into());
        }
        self.hnsw_config.validate()?;
        self.optimizer_config.validate()
    }
}

/// One named dense vector's part of a collection update (Qdrant's `VectorParamsDiff`): only
/// what can change on a live collection. Size, distance and datatype are fixed at creation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VectorParamsDiff {
    /// Merged into the vector's own graph parameters; `{}` removes them (the collection's
    /// then apply), as in Qdrant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hnsw_config: Option<HnswConfigDiff>,
    /// A quantization object replaces the vector's, `"Disabled"` removes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization_config: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_disk: Option<bool>,
}

/// The `params` of a collection update (Qdrant's `CollectionParamsDiff`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectionParamsDiff {
    /// Raising it copies every shard to more peers; lowering it drops replicas (see
    /// `ClusterState`'s replica reconciliation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication_factor: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_consistency_factor: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_fan_out_factor: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_fan_out_delay_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_disk_payload: Option<bool>,
}

/// Qdrant's `PATCH /collections/{c}` body (`UpdateCollection`): every part is optional and
/// absent parts stay as they are. Applied by the cluster state machine, so every peer
/// computes the same configuration from the same log.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectionUpdate {
    /// Per existing dense vector (`""` for the unnamed one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vectors: Option<BTreeMap<String, VectorParamsDiff>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optimizers_config: Option<OptimizersConfigDiff>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<CollectionParamsDiff>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hnsw_config: Option<HnswConfigDiff>,
    /// A quantization object replaces the collection's, `"Disabled"` removes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization_config: Option<serde_json::Value>,
    /// Per existing sparse vector: the given `index` fields and `modifier` replace the
    /// current ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sparse_vectors: Option<BTreeMap<String, SparseVectorParams>>,
    /// Field by field over the current strict mode configuration (a `null` field is left as
    /// it is), as Qdrant's `StrictModeConfig::update`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict_mode_config: Option<serde_json::Map<String, serde_json::Value>>,
    /// Merged key by key into the metadata; a `null` value removes its key (Qdrant's
    /// `merge_map`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

impl CollectionUpdate {
    /// Whether the update changes nothing at all (Qdrant answers such a request with 200).
    pub fn is_empty(&self) -> bool {
        *self == CollectionUpdate::default()
    }
}

/// A quantization diff as Qdrant reads it: an object sets, `"Disabled"` clears.
fn quantization_diff(
    diff: &serde_json::Value,
    what: &str,
) -> Result<Option<serde_json::Value>, String> {
    match diff {
        serde_json::Value::Object(_) => Ok(Some(diff.clone())),
        serde_json::Value::String(s) if s == "Disabled" => Ok(None),
        _ => Err(format!(
            "{what} must be a quantization object or \"Disabled\""
        )),
    }
}

impl CollectionConfig {
    /// Applies a [`CollectionUpdate`], then validates the result. On error `self` may be
    /// half-updated: callers apply to a copy (the cluster state machine does).
    ///
    /// Errors name the offending part: an unknown vector name (Qdrant's "Not existing vector
    /// name"), a malformed quantization diff, a strict mode field of the wrong type, or any
    /// [`CollectionConfig::validate`] failure.
    pub fn apply_update(&mut self, update: &CollectionUpdate) -> Result<(), String> {
        for (name, diff) in update.vectors.iter().flatten() {
            let params = match &mut self.params.vectors {
                VectorsConfig::Single(p) if name == DEFAULT_VECTOR => Some(p),
                VectorsConfig::Single(_) => None,
                VectorsConfig::Named(map) => map.get_mut(name),
            }
            .ok_or_else(|| format!("Not existing vector name error: {name}"))?;
            if let Some(hnsw) = &diff.hnsw_config {
                params.hnsw_config = if *hnsw == HnswConfigDiff::default() {
                    None
                } else {
                    let mut merged = params.hnsw_config.clone().unwrap_or_default();
                    merged.merge(hnsw);
                    Some(merged)
                };
            }
            if let Some(q) = &diff.quantization_config {
                params.quantization_config =
                    quantization_diff(q, &format!("vectors.{name}.quantization_config"))?;
            }
            if let Some(on_disk) = diff.on_disk {
                params.on_disk = Some(on_disk);
            }
        }
        for (name, diff) in update.sparse_vectors.iter().flatten() {
            let params = self
                .params
                .sparse_vectors
                .as_mut()
                .and_then(|m| m.get_mut(name))
                .ok_or_else(|| format!("Not existing vector name error: {name}"))?;
            if let Some(index) = &diff.index {
                let current = params.index.get_or_insert_with(SparseIndexParams::default);
                if index.full_scan_threshold.is_some() {
                    current.full_scan_threshold = index.full_scan_threshold;
                }
                if index.on_disk.is_some() {
                    current.on_disk = index.on_disk;
                }
                if index.datatype.is_some() {
                    current.datatype = index.datatype;
                }
            }
            if diff.modifier.is_some() {
                params.modifier = diff.modifier;
            }
        }
        if let Some(diff) = &update.optimizers_config {
            self.optimizer_config.apply(diff);
        }
        if let Some(diff) = &update.hnsw_config {
            self.hnsw_config.apply(diff);
        }
        if let Some(diff) = &update.params {
            let p = &mut self.params;
            if let Some(v) = diff.replication_factor {
                p.replication_factor = v;
            }
            if let Some(v) = diff.write_consistency_factor {
                p.write_consistency_factor = v;
            }
            if diff.read_fan_out_factor.is_some() {
                p.read_fan_out_factor = diff.read_fan_out_factor;
            }
            if diff.read_fan_out_delay_ms.is_some() {
                p.read_fan_out_delay_ms = diff.read_fan_out_delay_ms;
            }
            if let Some(v) = diff.on_disk_payload {
                p.on_disk_payload = v;
            }
        }
        if let Some(q) = &update.quantization_config {
            self.quantization_config = quantization_diff(q, "quantization_config")?;
        }
        if let Some(diff) = &update.strict_mode_config {
            // Field by field through JSON, so the merge follows the stored type's own
            // (de)serialisation and its validation.
            let mut merged = match serde_json::to_value(&self.strict_mode_config) {
                Ok(serde_json::Value::Object(map)) => map,
                _ => serde_json::Map::new(),
            };
            for (k, v) in diff {
                if !v.is_null() {
                    merged.insert(k.clone(), v.clone());
                }
            }
            self.strict_mode_config = serde_json::from_value(serde_json::Value::Object(merged))
                .map_err(|e| format!("strict_mode_config: {e}"))?;
            // Here and at creation only, not in `validate`: configurations applied before the
            // type existed must keep replaying the same way.
            if let Some(strict) = &self.strict_mode_config {
                strict.validate()?;
            }
        }
        if let Some(diff) = &update.metadata {
            let metadata = self.metadata.get_or_insert_with(serde_json::Map::new);
            for (k, v) in diff {
                if v.is_null() {
                    metadata.remove(k);
                } else {
                    metadata.insert(k.clone(), v.clone());
                }
            }
        }
        self.validate()
    }
}

/// A declared payload index: its type and parameters, as given.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PayloadIndexEntry {
    pub data_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<serde_json::Value>,
}

#[cfg(test)]
impl PayloadIndexEntry {
    /// `"keyword"` or `{"type": "integer", "lookup": false}`, as create-index stores them.
    pub(crate) fn of_schema(schema: &serde_json::Value) -> PayloadIndexEntry {
        match schema {
            serde_json::Value::String(t) => PayloadIndexEntry {
                data_type: t.clone(),
                params: None,
            },
            other => PayloadIndexEntry {
                data_type: other["type"].as_str().unwrap().to_string(),
                params: Some(other.clone()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn prepared(
        datatype: Datatype,
        distance: Distance,
        values: &[f32],
    ) -> Result<Vec<f32>, String> {
        let mut v = values.to_vec();
        Datatype::prepare(Some(datatype), distance, &mut v).map(|()| v)
    }

    /// The conversions of Qdrant 1.18 (`primitive.rs`): uint8 truncates and saturates (its
    /// own test turns [-10, 1, 2, 3, 255, 300] into [0, 1, 2, 3, 255, 255]), float16 rounds to
    /// the nearest half-precision value.
    #[test]
    fn datatypes_convert_values_as_qdrant_does() {
        for distance in [Distance::Dot, Distance::Euclid, Distance::Manhattan] {
            assert_eq!(
                prepared(
                    Datatype::Uint8,
                    distance,
                    &[-10.0, 1.0, 2.9, 3.0, 255.7, 300.0, -0.5]
                ),
                Ok(vec![0.0, 1.0, 2.0, 3.0, 255.0, 255.0, 0.0])
            );
        }
        assert_eq!(
            prepared(
                Datatype::Float16,
                Distance::Dot,
                &[0.1, 1.0, -2049.0, 65504.0]
            ),
            Ok(vec![0.099975586, 1.0, -2048.0, 65504.0])
        );
        // Past float16's range Qdrant would store infinity; Shoal refuses the vector.
        let err = prepared(Datatype::Float16, Distance::Euclid, &[0.0, 65520.0]).unwrap_err();
        assert!(err.contains("float16"), "{err}");
        // Cosine float16: normalised, then rounded.
        let v = prepared(Datatype::Float16, Distance::Cosine, &[3.0, 4.0]).unwrap();
        assert_eq!(
            v,
            vec![
                half::f16::from_f32(0.6).to_f32(),
                half::f16::from_f32(0.8).to_f32()
            ]
        );
        // Cosine uint8 is normalised as float32, not truncated (see `Datatype::prepare`).
        assert_eq!(
            prepared(Datatype::Uint8, Distance::Cosine, &[3.0, 4.0]),
            Ok(vec![0.6, 0.8])
        );
        // float32 is only the distance's preprocessing.
        assert_eq!(
            prepared(Datatype::Float32, Distance::Dot, &[0.1, 300.5]),
            Ok(vec![0.1, 300.5])
        );
    }

    proptest! {
        /// A stored vector used as a query (recommend by id, `lookup_from`) is prepared again:
        /// that must not change it.
        #[test]
        fn preparing_a_prepared_vector_changes_nothing(
            values in prop::collection::vec(-1000.0f32..1000.0, 1..16),
            datatype in prop_oneof![Just(Datatype::Float32), Just(Datatype::Float16), Just(Datatype::Uint8)],
            distance in prop_oneof![Just(Distance::Dot), Just(Distance::Euclid), Just(Distance::Manhattan), Just(Distance::Cosine)],
        ) {
            let once = prepared(datatype, distance, &values).unwrap();
            let twice = prepared(datatype, distance, &once).unwrap();
            for (a, b) in once.iter().zip(&twice) {
                // Renormalising a float16 Cosine vector may move a value by one float16 step.
                let step = if distance == Distance::Cosine { 1e-3 } else { 0.0 };
                prop_assert!((a - b).abs() <= step, "{:?} then {:?}", once, twice);
            }
            if datatype == Datatype::Uint8 && distance != Distance::Cosine {
                prop_assert!(once.iter().all(|x| x.fract() == 0.0 && (0.0..=255.0).contains(x)));
            }
        }
    }

    fn named() -> CollectionConfig {
        let mut config = CollectionConfig::single_dense(4, Distance::Dot);
        config.params.vectors = VectorsConfig::Named(BTreeMap::from([(
            "text".to_string(),
            VectorParams::new(4, Distance::Cosine, false),
        )]));
        config.params.sparse_vectors = Some(BTreeMap::from([(
            "bm25".to_string(),
            SparseVectorParams::default(),
        )]));
        config
    }

    fn update(body: serde_json::Value) -> CollectionUpdate {
        serde_json::from_value(body).expect("a valid update body")
    }

    #[test]
    fn updates_follow_qdrant_diff_rules() {
        let mut config = named();
        config
            .apply_update(&update(json!({
                "vectors": {"text": {"hnsw_config": {"m": 32}, "on_disk": true,
                                     "quantization_config": {"scalar": {"type": "int8"}}}},
                "sparse_vectors": {"bm25": {"modifier": "idf", "index": {"on_disk": true}}},
                "hnsw_config": {"ef_construct": 200},
                "optimizers_config": {"indexing_threshold": 0},
                "params": {"replication_factor": 2, "read_fan_out_factor": 1},
                "quantization_config": {"binary": {}},
                "metadata": {"owner": "search", "tier": 1},
            })))
            .unwrap();
        assert_eq!(config.hnsw_for("text").m, 32);
        assert_eq!(config.hnsw_for("text").ef_construct, 200);
        let text = config.dense("text").unwrap();
        assert_eq!(text.on_disk, Some(true));
        assert!(text.quantization_config.is_some());
        let bm25 = config.sparse("bm25").unwrap();
        assert_eq!(bm25.modifier, Some(Modifier::Idf));
        assert_eq!(bm25.index.as_ref().unwrap().on_disk, Some(true));
        assert_eq!(config.optimizer_config.indexing_threshold, Some(0));
        assert_eq!(config.params.replication_factor, 2);
        assert_eq!(config.params.read_fan_out_factor, Some(1));
        // `{}` unsets a vector's own graph parameters, "Disabled" its quantization; metadata
        // merges key by key and `null` removes a key.
        config
            .apply_update(&update(json!({
                "vectors": {"text": {"hnsw_config": {}, "quantization_config": "Disabled"}},
                "quantization_config": "Disabled",
                "metadata": {"tier": null, "region": "eu"},
            })))
            .unwrap();
        assert_eq!(config.hnsw_for("text").m, 16);
        assert!(config.dense("text").unwrap().quantization_config.is_none());
        assert!(config.quantization_config.is_none());
        assert_eq!(
            serde_json::Value::Object(config.metadata.clone().unwrap()),
            json!({"owner": "search", "region": "eu"})
        );
    }

    #[test]
    fn strict_mode_updates_merge_field_by_field() {
        let mut config = named();
        config
            .apply_update(&update(json!({
                "strict_mode_config": {"enabled": true, "max_query_limit": 10}
            })))
            .unwrap();
        config
            .apply_update(&update(json!({
                "strict_mode_config": {"max_timeout": 5, "max_query_limit": null}
            })))
            .unwrap();
        let strict = serde_json::to_value(&config.strict_mode_config).unwrap();
        assert_eq!(strict["enabled"], json!(true));
        assert_eq!(strict["max_query_limit"], json!(10));
        assert_eq!(strict["max_timeout"], json!(5));
    }

    #[test]
    fn invalid_updates_are_refused_with_the_reason() {
        let cases = [
            (json!({"vectors": {"nope": {"on_disk": true}}}), "nope"),
            (json!({"sparse_vectors": {"text": {}}}), "text"),
            (
                json!({"params": {"replication_factor": 0}}),
                "replication_factor",
            ),
            (json!({"hnsw_config": {"m": 1000}}), "hnsw_config.m"),
            (
                json!({"quantization_config": "Enabled"}),
                "quantization_config",
            ),
        ];
        for (body, needle) in cases {
            let mut config = named();
            let err = config.apply_update(&update(body.clone())).unwrap_err();
            assert!(err.contains(needle), "{body}: {err}");
        }
        assert!(
            serde_json::from_value::<CollectionUpdate>(json!({"params": {"shard_number": 3}}))
                .is_err(),
            "shard_number cannot change through an update"
        );
    }

    /// Quantization settings are checked at the API, not in the state machine: a setting
    /// committed before the checks existed still applies (stored, not applied), and the
    /// per-vector setting takes precedence over the collection's.
    #[test]
    fn quantization_is_resolved_per_vector_and_checked_at_the_api() {
        let mut config = named();
        config.quantization_config = Some(json!({"scalar": {"type": "int8", "quantile": 0.3}}));
        assert!(config.validate().is_ok());
        let err = config.validate_quantization().unwrap_err();
        assert!(err.contains("quantile"), "{err}");
        assert_eq!(config.scalar_quantization("text"), None);
        config.quantization_config = Some(json!({"scalar": {"type": "int8"}}));
        assert!(config.validate_quantization().is_ok());
        assert_eq!(
            config.scalar_quantization("text"),
            Some(ScalarQuantization {
                quantile: None,
                always_ram: false
            })
        );
        config
            .apply_update(&update(
                json!({"vectors": {"text": {"quantization_config": {"binary": {}}}}}),
            ))
            .unwrap();
        assert_eq!(config.quantization_for("text"), Some(Quantization::Binary));
        assert_eq!(config.scalar_quantization("text"), None);
        assert_eq!(
            config.scalar_quantization("bm25"),
            None,
            "sparse vectors have none"
        );
    }
}
