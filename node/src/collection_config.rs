//! A collection's configuration in Qdrant's shape: what `PUT /collections/{name}` accepts (as
//! "diffs" over the defaults) and what `GET /collections/{name}` reports. Stored with the
//! collection; every layer below `cluster` reads it, none writes it.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

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
    /// Stored and reported; searches answer as the unquantized search would (Shoal keeps
    /// full-precision vectors only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization_config: Option<serde_json::Value>,
    /// Set for a multivector: a point's vector is a list of `size`-long vectors, scored with
    /// MaxSim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multivector_config: Option<MultiVectorConfig>,
    /// The element type Qdrant would store; Shoal stores `float32` for every datatype and
    /// reports the configured one.
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
    pub on_disk_payload: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HnswConfig {
    pub m: usize,
    pub ef_construct: usize,
    /// Segments whose vectors take fewer kilobytes than this are searched exhaustively.
    pub full_scan_threshold: usize,
    pub max_indexing_threads: usize,
    pub on_disk: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_m: Option<usize>,
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
    pub max_optimization_threads: Option<usize>,
}

impl Default for OptimizersConfig {
    fn default() -> Self {
        OptimizersConfig {
            deleted_threshold: 0.2,
            vacuum_min_vector_number: 1000,
            default_segment_number: 0,
            max_segment_size: None,
            memmap_threshold: None,
            indexing_threshold: Some(20_000),
            flush_interval_sec: 5,
            max_optimization_threads: None,
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
}

impl Default for WalConfig {
    fn default() -> Self {
        WalConfig {
            wal_capacity_mb: 32,
            wal_segments_ahead: 0,
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
    /// The collection-wide quantization (per-vector settings take precedence); stored and
    /// reported, not applied: searches use full-precision vectors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization_config: Option<serde_json::Value>,
    /// Qdrant's `strict_mode_config`: stored and reported; not enforced yet (Shoal's own
    /// request limits apply to every collection).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict_mode_config: Option<serde_json::Value>,
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

    /// The graph parameters of the dense vector `name`, with its own `hnsw_config` taking
    /// precedence over the collection's.
    pub fn hnsw_for(&self, name: &str) -> HnswConfig {
        let mut hnsw = self.hnsw_config.clone();
        if let Some(diff) = self.dense(name).and_then(|p| p.hnsw_config.as_ref()) {
            hnsw.apply(diff);
        }
        hnsw
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

/// A declared payload index: its type and parameters, as given.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PayloadIndexEntry {
    pub data_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<serde_json::Value>,
}
