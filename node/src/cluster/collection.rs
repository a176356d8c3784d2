//! A collection on this peer: its configuration and its shards. Routes updates to shards by the
//! hash ring, fans reads out to every shard and merges the answers.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use crate::cluster::CollectionError;
use crate::cluster::hash_ring::shard_for;
use crate::cluster::shard_requests::{
    ShardCount, ShardRetrieve, ShardScroll, ShardSearch, ShardTarget,
};
use crate::collection_config::CollectionConfig;
use crate::index::filter::Filter;
use crate::shard::local_shard::{LocalShard, OptimizerStatus, Record, ScoredRecord};
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

/// A declared payload index: its type and parameters, as given.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PayloadIndexEntry {
    pub data_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<serde_json::Value>,
}

const PAYLOAD_SCHEMA_FILE: &str = "payload_schema.json";

pub struct Collection {
    name: String,
    dir: std::path::PathBuf,
    config: Arc<CollectionConfig>,
    shards: Vec<Arc<LocalShard>>,
    /// Declared payload indexes. Filters never depend on them: they are evaluated by scanning
    /// payloads, so results are the same with or without an index.
    payload_schema: parking_lot::RwLock<std::collections::BTreeMap<String, PayloadIndexEntry>>,
}

impl Collection {
    /// Opens (or creates) every shard of the collection under `dir`.
    pub fn open(
        name: &str,
        dir: &Path,
        config: CollectionConfig,
        sync: SyncMode,
    ) -> Result<Collection, CollectionError> {
        let config = Arc::new(config);
        let shards = (0..config.params.shard_number)
            .map(|i| {
                LocalShard::open(
                    &dir.join("shards").join(i.to_string()),
                    Arc::clone(&config),
                    sync,
                )
                .map(Arc::new)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let schema_path = dir.join(PAYLOAD_SCHEMA_FILE);
        let payload_schema = match std::fs::read(&schema_path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| CollectionError::Storage(format!("{}: {e}", schema_path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Default::default(),
            Err(e) => return Err(CollectionError::storage(e)),
        };
        Ok(Collection {
            name: name.to_string(),
            dir: dir.to_path_buf(),
            config,
            shards,
            payload_schema: parking_lot::RwLock::new(payload_schema),
        })
    }

    /// Declares (or redeclares) a payload index on `field`. Blocking: writes the schema file.
    pub fn set_payload_index(
        &self,
        field: &str,
        entry: Option<PayloadIndexEntry>,
    ) -> Result<(), CollectionError> {
        let mut schema = self.payload_schema.write();
        let mut next = schema.clone();
        match entry {
            Some(e) => {
                next.insert(field.to_string(), e);
            }
            None => {
                next.remove(field);
            }
        }
        let bytes = serde_json::to_vec_pretty(&next).map_err(CollectionError::storage)?;
        let tmp = self.dir.join(format!("{PAYLOAD_SCHEMA_FILE}.tmp"));
        std::fs::write(&tmp, bytes)
            .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
            .and_then(|()| std::fs::rename(&tmp, self.dir.join(PAYLOAD_SCHEMA_FILE)))
            .map_err(CollectionError::storage)?;
        *schema = next;
        Ok(())
    }

    pub fn payload_schema(&self) -> std::collections::BTreeMap<String, PayloadIndexEntry> {
        self.payload_schema.read().clone()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn config(&self) -> &CollectionConfig {
        &self.config
    }

    pub fn shards(&self) -> &[Arc<LocalShard>] {
        &self.shards
    }

    fn distance(&self) -> Distance {
        self.config.distance()
    }

    fn shard_of(&self, id: &PointId) -> usize {
        shard_for(id, self.shards.len() as u32) as usize
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

    /// Applies an update on every shard it concerns. Blocking. Returns an operation id.
    pub fn update(&self, request: UpdateRequest) -> Result<u64, CollectionError> {
        let mut per_shard: Vec<Option<UpdateRequest>> = vec![None; self.shards.len()];
        match request {
            UpdateRequest::Upsert(points) => {
                let mut groups: Vec<Vec<PointWrite>> = vec![Vec::new(); self.shards.len()];
                for mut p in points {
                    p.vector = self.prepare_vector(p.vector)?;
                    groups[self.shard_of(&p.id)].push(p);
                }
                for (slot, group) in per_shard.iter_mut().zip(groups) {
                    if !group.is_empty() {
                        *slot = Some(UpdateRequest::Upsert(group));
                    }
                }
            }
            other => {
                for (i, slot) in per_shard.iter_mut().enumerate() {
                    *slot = self.restrict(&other, i);
                }
            }
        }
        let mut op_id = 0;
        for (shard, request) in self.shards.iter().zip(per_shard) {
            if let Some(request) = request {
                op_id = op_id.max(shard.update(request)?);
            }
        }
        Ok(op_id)
    }

    /// The part of a selection-based update that concerns shard `index`.
    fn restrict(&self, request: &UpdateRequest, index: usize) -> Option<UpdateRequest> {
        let narrow = |sel: &PointSelection| -> Option<PointSelection> {
            match sel {
                PointSelection::Ids(ids) => {
                    let mine: Vec<PointId> = ids
                        .iter()
                        .filter(|id| self.shard_of(id) == index)
                        .copied()
                        .collect();
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
    pub fn retrieve(&self, ids: &[PointId], with_payload: bool, with_vector: bool) -> Vec<Record> {
        let mut seen = HashSet::new();
        let unique: Vec<PointId> = ids.iter().filter(|id| seen.insert(**id)).copied().collect();
        let mut found: HashMap<PointId, Record> = HashMap::new();
        for (i, shard) in self.shards.iter().enumerate() {
            let mine: Vec<PointId> = unique
                .iter()
                .filter(|id| self.shard_of(id) == i)
                .copied()
                .collect();
            if !mine.is_empty() {
                let request = ShardRetrieve {
                    ids: mine,
                    with_payload,
                    with_vector,
                };
                found.extend(request.run(shard).into_iter().map(|r| (r.id, r)));
            }
        }
        unique.iter().filter_map(|id| found.remove(id)).collect()
    }

    /// The stored vector of a point, or an error naming it.
    pub fn vector_of(&self, id: &PointId) -> Result<Vec<f32>, CollectionError> {
        self.shards[self.shard_of(id)]
            .vector_of(id)
            .ok_or_else(|| CollectionError::PointNotFound(id.to_string()))
    }

    /// One page of points in id order, and the id the next page starts at.
    pub fn scroll(
        &self,
        offset: Option<PointId>,
        limit: usize,
        filter: Option<&Filter>,
        with_payload: bool,
        with_vector: bool,
    ) -> (Vec<Record>, Option<PointId>) {
        let request = ShardScroll {
            from: offset,
            limit: limit + 1,
            filter: filter.cloned(),
            with_payload,
            with_vector,
        };
        let mut all: Vec<Record> = self.shards.iter().flat_map(|s| request.run(s)).collect();
        all.sort_by_key(|r| r.id);
        let next = (all.len() > limit).then(|| all[limit].id);
        all.truncate(limit);
        (all, next)
    }

    pub fn count(&self, filter: Option<&Filter>) -> usize {
        let request = ShardCount {
            filter: filter.cloned(),
        };
        self.shards.iter().map(|s| request.run(s)).sum()
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

    /// The best `limit` points after skipping `offset`, best first. Blocking.
    pub fn search(&self, request: &SearchRequest) -> Result<Vec<ScoredRecord>, CollectionError> {
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
        let mut merged: Vec<ScoredRecord> = self
            .shards
            .iter()
            .flat_map(|s| shard_search.run(s))
            .collect();
        shard_search.sort_merged(self.distance(), &mut merged);
        Ok(merged
            .into_iter()
            .skip(request.offset)
            .take(request.limit)
            .collect())
    }

    /// This peer's replica of shard `id`, if it has one.
    pub fn shard(&self, id: u32) -> Option<&Arc<LocalShard>> {
        self.shards.get(id as usize)
    }

    pub fn stats(&self) -> CollectionStats {
        let mut stats = CollectionStats {
            status: CollectionStatus::Green,
            points: 0,
            indexed_vectors: 0,
            segments: 0,
        };
        for shard in &self.shards {
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

    /// Flushes every shard; used on shutdown.
    pub fn flush(&self) -> Result<(), CollectionError> {
        for shard in &self.shards {
            shard.flush()?;
        }
        Ok(())
    }

    /// Stops background work of every shard.
    pub fn cancel(&self) {
        for shard in &self.shards {
            shard.cancel();
        }
    }
}
