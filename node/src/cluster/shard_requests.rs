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
}

/// A request that one shard replica answers, on this peer or on another: it runs on a local
/// replica, or travels as JSON to the peer that holds one and runs there.
pub trait ShardRequest: Serialize + DeserializeOwned + Send + Sync + 'static {
    type Answer: Serialize + DeserializeOwned + Send + 'static;
    const CALL: ShardCallKind;
    /// Whether the request changes the shard (then every replica that takes updates gets it).
    const WRITES: bool = false;
    fn run_on(&self, shard: &LocalShard) -> Result<Self::Answer, CollectionError>;
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
}

impl ShardRequest for ShardSearch {
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
        let accept = |id: PointId, p: &Payload| {
            !exclude.contains(&id) && filter.is_none_or(|f| f.check(id, p))
        };
        let needs_accept = filter.is_some() || !exclude.is_empty();
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
}

impl ShardRequest for ShardScroll {
    type Answer = Vec<Record>;
    const CALL: ShardCallKind = ShardCallKind::Scroll;
    fn run_on(&self, shard: &LocalShard) -> Result<Vec<Record>, CollectionError> {
        Ok(ShardScroll::run(self, shard))
    }
}

impl ShardScroll {
    pub fn run(&self, shard: &LocalShard) -> Vec<Record> {
        let filter = self.filter.as_ref();
        let accept = |id: PointId, p: &Payload| filter.is_none_or(|f| f.check(id, p));
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
}

impl ShardRequest for ShardCount {
    type Answer = usize;
    const CALL: ShardCallKind = ShardCallKind::Count;
    fn run_on(&self, shard: &LocalShard) -> Result<usize, CollectionError> {
        Ok(ShardCount::run(self, shard))
    }
}

impl ShardCount {
    pub fn run(&self, shard: &LocalShard) -> usize {
        match &self.filter {
            None => shard.count(None),
            Some(f) => shard.count(Some(&|id: PointId, p: &Payload| f.check(id, p))),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardRetrieve {
    pub ids: Vec<PointId>,
    pub with_payload: bool,
    pub with_vector: bool,
}

impl ShardRequest for ShardRetrieve {
    type Answer = Vec<Record>;
    const CALL: ShardCallKind = ShardCallKind::Retrieve;
    fn run_on(&self, shard: &LocalShard) -> Result<Vec<Record>, CollectionError> {
        Ok(ShardRetrieve::run(self, shard))
    }
}

impl ShardRetrieve {
    pub fn run(&self, shard: &LocalShard) -> Vec<Record> {
        shard.retrieve(&self.ids, self.with_payload, self.with_vector)
    }
}
