//! Reads and writes addressed to one shard, in a form that can travel to the peer holding a
//! replica of it: every vector is already checked and normalised, every filter parsed. The
//! same code runs them locally and on a remote peer, so a forwarded read answers exactly what a
//! local one would.

use std::collections::HashSet;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::cluster::CollectionError;
use crate::index::filter::Filter;
use crate::shard::local_shard::{
    LocalShard, PointPredicate, Record, ScoredRecord, Scoring, SearchQuery,
};
use crate::shard::operations::UpdateRequest;
use crate::types::{Distance, Payload, PointId};

/// The RPC of the p2p `ShardService` that carries a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardCallKind {
    Update,
    Search,
    Scroll,
    Count,
    Retrieve,
    Digest,
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

impl Ownership {
    pub fn owns(&self, id: &PointId) -> bool {
        !self.ring.is_empty()
            && self.ring[crate::cluster::hash_ring::shard_for(id, self.ring.len() as u32) as usize]
                == self.shard
    }
}

impl ShardRequest for UpdateRequest {
    type Answer = u64;
    const CALL: ShardCallKind = ShardCallKind::Update;
    const WRITES: bool = true;
    fn run_on(&self, shard: &LocalShard) -> Result<u64, CollectionError> {
        Ok(shard.update(self.clone())?)
    }
}

/// How a shard scores candidates; vectors are already preprocessed for the collection's
/// distance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ShardTarget {
    Nearest(Vec<f32>),
    /// Qdrant's `best_score` recommendation strategy.
    BestScore {
        positive: Vec<Vec<f32>>,
        negative: Vec<Vec<f32>>,
    },
    /// Qdrant's `sum_scores` recommendation strategy.
    SumScores {
        positive: Vec<Vec<f32>>,
        negative: Vec<Vec<f32>>,
    },
    /// No scoring: matching points in id order with score 0.
    IdOrder,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardSearch {
    pub target: ShardTarget,
    pub filter: Option<Filter>,
    pub exclude: Vec<PointId>,
    /// How many best points to return.
    pub top: usize,
    pub ef: Option<usize>,
    pub exact: bool,
    pub score_threshold: Option<f32>,
    pub with_payload: bool,
    pub with_vector: bool,
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

impl ShardSearch {
    /// The best `top` points of `shard`, best first.
    pub fn run(&self, shard: &LocalShard) -> Vec<ScoredRecord> {
        let distance = shard.distance();
        let exclude: HashSet<PointId> = self.exclude.iter().copied().collect();
        let filter = self.filter.as_ref();
        let owner = self.owner.as_ref();
        let accept = |id: PointId, p: &Payload| {
            !exclude.contains(&id)
                && owner.is_none_or(|o| o.owns(&id))
                && filter.is_none_or(|f| f.check(id, p))
        };
        let needs_accept = filter.is_some() || !exclude.is_empty() || owner.is_some();
        let accept_ref: Option<PointPredicate<'_>> = needs_accept.then_some(&accept as _);
        // Similarity oriented so that larger is closer, for every distance.
        let sim = |a: &[f32], b: &[f32]| {
            let s = distance.score(a, b);
            if distance.higher_is_better() { s } else { -s }
        };
        let custom = |v: &[f32]| -> f32 {
            match &self.target {
                ShardTarget::SumScores { positive, negative } => {
                    positive.iter().map(|p| sim(v, p)).sum::<f32>()
                        - negative.iter().map(|n| sim(v, n)).sum::<f32>()
                }
                ShardTarget::BestScore { positive, negative } => {
                    let best_pos = positive
                        .iter()
                        .map(|p| sim(v, p))
                        .fold(f32::NEG_INFINITY, f32::max);
                    let best_neg = negative
                        .iter()
                        .map(|n| sim(v, n))
                        .fold(f32::NEG_INFINITY, f32::max);
                    if best_pos >= best_neg {
                        best_pos
                    } else {
                        -best_neg
                    }
                }
                ShardTarget::Nearest(_) | ShardTarget::IdOrder => 0.0,
            }
        };
        let scoring = match &self.target {
            ShardTarget::IdOrder => {
                return shard
                    .scroll(
                        None,
                        self.top,
                        accept_ref,
                        self.with_payload,
                        self.with_vector,
                    )
                    .into_iter()
                    .map(|r| ScoredRecord {
                        id: r.id,
                        version: r.version,
                        score: 0.0,
                        payload: r.payload,
                        vector: r.vector,
                    })
                    .collect();
            }
            ShardTarget::Nearest(q) => Scoring::Nearest(q),
            ShardTarget::BestScore { .. } | ShardTarget::SumScores { .. } => {
                Scoring::Custom(&custom)
            }
        };
        shard.search(&SearchQuery {
            scoring,
            accept: accept_ref,
            top: self.top,
            ef: self.ef,
            exact: self.exact,
            score_threshold: self.score_threshold,
            with_payload: self.with_payload,
            with_vector: self.with_vector,
        })
    }

    /// Orders merged answers of several shards, best first.
    pub fn sort_merged(&self, distance: Distance, merged: &mut [ScoredRecord]) {
        match self.target {
            ShardTarget::IdOrder => merged.sort_by_key(|r| r.id),
            ShardTarget::Nearest(_) if !distance.higher_is_better() => {
                merged.sort_by(|a, b| a.score.total_cmp(&b.score).then_with(|| a.id.cmp(&b.id)))
            }
            _ => merged.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.id.cmp(&b.id))),
        }
    }
}

/// Up to `limit` points with ids `>= from`, in id order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardScroll {
    pub from: Option<PointId>,
    pub limit: usize,
    pub filter: Option<Filter>,
    pub with_payload: bool,
    pub with_vector: bool,
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
        let filter = self.filter.as_ref();
        let owner = self.owner.as_ref();
        let accept = |id: PointId, p: &Payload| {
            owner.is_none_or(|o| o.owns(&id)) && filter.is_none_or(|f| f.check(id, p))
        };
        shard.scroll(
            self.from,
            self.limit,
            Some(&accept),
            self.with_payload,
            self.with_vector,
        )
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
        let owner = self.owner.as_ref();
        match (&self.filter, owner) {
            (None, None) => shard.count(None),
            (filter, _) => shard.count(Some(&|id: PointId, p: &Payload| {
                owner.is_none_or(|o| o.owns(&id)) && filter.as_ref().is_none_or(|f| f.check(id, p))
            })),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardRetrieve {
    pub ids: Vec<PointId>,
    pub with_payload: bool,
    pub with_vector: bool,
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
        let mut records = shard.retrieve(&self.ids, self.with_payload, self.with_vector);
        if let Some(owner) = &self.owner {
            records.retain(|r| owner.owns(&r.id));
        }
        records
    }
}

/// A page of a replica's points as (id, content hash), in id order, from `from`: what a
/// `wal_delta` transfer compares to send only the points that differ.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardDigest {
    pub from: Option<PointId>,
    pub limit: usize,
}

impl ShardRequest for ShardDigest {
    type Answer = Vec<(PointId, u64)>;
    const CALL: ShardCallKind = ShardCallKind::Digest;
    fn run_on(&self, shard: &LocalShard) -> Result<Vec<(PointId, u64)>, CollectionError> {
        Ok(shard
            .scroll(self.from, self.limit, None, true, true)
            .iter()
            .map(|r| (r.id, content_hash(r)))
            .collect())
    }
}

/// A hash of a point's vector and payload that is the same on every peer running this build
/// for the same content (payload keys in sorted order, whatever order they were written in).
pub fn content_hash(record: &Record) -> u64 {
    use std::hash::{Hash, Hasher};
    fn value(v: &serde_json::Value, h: &mut std::collections::hash_map::DefaultHasher) {
        match v {
            serde_json::Value::Null => 0u8.hash(h),
            serde_json::Value::Bool(b) => (1u8, b).hash(h),
            serde_json::Value::Number(n) => (2u8, n.to_string()).hash(h),
            serde_json::Value::String(s) => (3u8, s).hash(h),
            serde_json::Value::Array(a) => {
                (4u8, a.len()).hash(h);
                a.iter().for_each(|x| value(x, h));
            }
            serde_json::Value::Object(o) => {
                (5u8, o.len()).hash(h);
                let mut keys: Vec<&String> = o.keys().collect();
                keys.sort();
                for k in keys {
                    k.hash(h);
                    value(&o[k], h);
                }
            }
        }
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for x in record.vector.as_deref().unwrap_or_default() {
        x.to_bits().hash(&mut h);
    }
    if let Some(payload) = &record.payload {
        let mut keys: Vec<&String> = payload.keys().collect();
        keys.sort();
        for k in keys {
            k.hash(&mut h);
            value(&payload[k], &mut h);
        }
    }
    h.finish()
}
