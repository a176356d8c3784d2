//! A collection's configuration in Qdrant's shape: what `PUT /collections/{name}` accepts (as
//! "diffs" over the defaults) and what `GET /collections/{name}` reports. Stored with the
//! collection; every layer below `cluster` reads it, none writes it.

use serde::{Deserialize, Serialize};

use crate::types::Distance;

/// The largest vector Shoal accepts, as in Qdrant.
pub const MAX_VECTOR_SIZE: usize = 65_536;
/// Upper bounds that keep one collection's shards manageable on one node.
pub const MAX_SHARD_NUMBER: u32 = 1_024;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VectorParams {
    pub size: usize,
    pub distance: Distance,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_disk: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hnsw_config: Option<HnswConfigDiff>,
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
    pub vectors: VectorParams,
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

    /// How many points of `dim` dimensions an appendable segment takes before it is sealed and
    /// indexed, or `None` when indexing is disabled.
    pub fn indexing_threshold_points(&self, dim: usize) -> Option<usize> {
        let kb = self.indexing_threshold?;
        if kb == 0 {
            return None;
        }
        let kb = self.max_segment_size.map_or(kb, |max| kb.min(max.max(1)));
        Some((kb * 1024 / (dim.max(1) * 4)).max(1))
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
}

impl CollectionConfig {
    pub fn dim(&self) -> usize {
        self.params.vectors.size
    }

    pub fn distance(&self) -> Distance {
        self.params.vectors.distance
    }

    /// The graph parameters, with a per-vector `hnsw_config` taking precedence.
    pub fn effective_hnsw(&self) -> HnswConfig {
        let mut hnsw = self.hnsw_config.clone();
        if let Some(diff) = &self.params.vectors.hnsw_config {
            hnsw.apply(diff);
        }
        hnsw
    }

    pub fn validate(&self) -> Result<(), String> {
        let size = self.params.vectors.size;
        if size == 0 || size > MAX_VECTOR_SIZE {
            return Err(format!(
                "vector size must be between 1 and {MAX_VECTOR_SIZE}, got {size}"
            ));
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
        self.effective_hnsw().validate()?;
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
