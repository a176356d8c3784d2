//! An HNSW graph over the vectors of one sealed segment, built with `hnsw_rs`.
//!
//! `hnsw_rs` wants non-negative distances where smaller is closer, and its own dot-product
//! distance insists on normalised input. So the graph is built with [`GraphDistance`], which maps
//! each of Qdrant's scores to such a distance monotonically; the scores a search reports are
//! recomputed exactly by the caller from the stored vectors.

use std::sync::atomic::{AtomicBool, Ordering};

use hnsw_rs::prelude::{FilterT, Hnsw};

use crate::types::{self, Distance};

/// Graph construction parameters (Qdrant's `hnsw_config`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GraphParams {
    pub m: usize,
    pub ef_construct: usize,
}

/// Qdrant scores turned into `hnsw_rs` distances: non-negative, smaller is closer.
///
/// With `multi_dim` set, graph items are multivectors (sub-vectors of that size laid end to
/// end) compared by MaxSim.
#[derive(Debug, Clone, Copy)]
pub struct GraphDistance {
    pub distance: Distance,
    pub multi_dim: Option<usize>,
}

impl GraphDistance {
    pub fn dense(distance: Distance) -> GraphDistance {
        GraphDistance {
            distance,
            multi_dim: None,
        }
    }
}

/// An unbounded similarity folded onto (0, inf) by a map that is continuous and strictly
/// decreasing in the similarity.
fn fold_similarity(s: f32) -> f32 {
    if s >= 0.0 { 1.0 / (1.0 + s) } else { 1.0 - s }
}

impl anndists::dist::Distance<f32> for GraphDistance {
    fn eval(&self, a: &[f32], b: &[f32]) -> f32 {
        let d = match (self.multi_dim, self.distance) {
            (Some(dim), distance) => fold_similarity(distance.max_sim(a, b, dim)),
            (None, Distance::Cosine) => 1.0 - types::dot(a, b),
            (None, Distance::Dot) => fold_similarity(types::dot(a, b)),
            (None, Distance::Euclid) => types::squared_euclid(a, b),
            (None, Distance::Manhattan) => types::manhattan(a, b),
        };
        // Rounding can push a cosine distance just below zero; NaN (from NaN input, which the
        // API refuses) must never reach the graph's assertions.
        if d.is_nan() { f32::MAX } else { d.max(0.0) }
    }
}

/// A built graph. Graph ids are segment offsets.
pub struct HnswIndex {
    graph: Hnsw<'static, f32, GraphDistance>,
    len: usize,
    params: GraphParams,
}

/// Inserting in chunks lets a build notice cancellation and keeps rayon's batches useful.
const BUILD_CHUNK: usize = 2048;

impl HnswIndex {
    /// Builds a graph over `points` (offset, vector). Returns `None` if `cancel` was raised
    /// before the build finished. Runs on the given rayon pool; call it from a blocking thread.
    pub fn build(
        distance: GraphDistance,
        params: GraphParams,
        points: &[(u32, &[f32])],
        pool: &rayon::ThreadPool,
        cancel: &AtomicBool,
    ) -> Option<HnswIndex> {
        let max_layer = 16;
        let graph = Hnsw::new(
            params.m.clamp(2, 128),
            points.len().max(1),
            max_layer,
            params.ef_construct.max(4),
            distance,
        );
        for chunk in points.chunks(BUILD_CHUNK) {
            if cancel.load(Ordering::Relaxed) {
                return None;
            }
            let batch: Vec<(&[f32], usize)> =
                chunk.iter().map(|(o, v)| (*v, *o as usize)).collect();
            pool.install(|| graph.parallel_insert_slice(&batch));
        }
        let mut graph = graph;
        graph.set_searching_mode(true);
        Some(HnswIndex {
            graph,
            len: points.len(),
            params,
        })
    }

    /// The parameters the graph was built with: a segment whose configuration asks for
    /// others is indexed again (as Qdrant's optimizer does after an `hnsw_config` update).
    pub fn params(&self) -> GraphParams {
        self.params
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The offsets of up to `k` approximate nearest neighbours of `query` that pass `accept`,
    /// closest first.
    pub fn search(
        &self,
        query: &[f32],
        k: usize,
        ef: usize,
        accept: &dyn Fn(u32) -> bool,
    ) -> Vec<u32> {
        let filter = OffsetFilter(accept);
        self.graph
            .search_filter(query, k, ef.max(k), Some(&filter))
            .into_iter()
            .map(|n| n.d_id as u32)
            .collect()
    }
}

struct OffsetFilter<'a>(&'a dyn Fn(u32) -> bool);

impl FilterT for OffsetFilter<'_> {
    fn hnsw_filter(&self, id: &usize) -> bool {
        (self.0)(*id as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anndists::dist::Distance as _;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    #[test]
    fn graph_distances_are_non_negative_and_order_like_scores() {
        let a = [1.0, 2.0, -3.0];
        let near = [1.0, 2.0, -2.5];
        let far = [-1.0, -2.0, 3.0];
        for d in [Distance::Dot, Distance::Euclid, Distance::Manhattan] {
            let g = GraphDistance::dense(d);
            assert!(g.eval(&a, &far) >= 0.0);
            assert!(g.eval(&a, &near) < g.eval(&a, &far), "{d:?}");
            let better = d.is_better(d.score(&a, &near), d.score(&a, &far));
            assert!(better, "{d:?}");
        }
        // The Dot map is strictly decreasing across zero.
        let g = GraphDistance::dense(Distance::Dot);
        let (x, y) = ([1.0f32], [0.5f32]);
        assert!(g.eval(&x, &[2.0]) < g.eval(&x, &y));
        assert!(g.eval(&x, &y) < g.eval(&x, &[0.0]));
        assert!(g.eval(&x, &[0.0]) < g.eval(&x, &[-0.5]));
    }

    #[test]
    fn search_finds_true_neighbours_and_respects_the_filter() {
        let mut rng = StdRng::seed_from_u64(7);
        let dim = 16;
        let vectors: Vec<Vec<f32>> = (0..2000)
            .map(|_| (0..dim).map(|_| rng.random_range(-1.0..1.0)).collect())
            .collect();
        let points: Vec<(u32, &[f32])> = vectors
            .iter()
            .enumerate()
            .map(|(i, v)| (i as u32, v.as_slice()))
            .collect();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let index = HnswIndex::build(
            GraphDistance::dense(Distance::Euclid),
            GraphParams {
                m: 16,
                ef_construct: 100,
            },
            &points,
            &pool,
            &AtomicBool::new(false),
        )
        .unwrap();
        assert_eq!(index.len(), 2000);
        let mut hits = 0;
        for q in vectors.iter().take(50) {
            let mut exact: Vec<(f32, u32)> = vectors
                .iter()
                .enumerate()
                .map(|(i, v)| (types::squared_euclid(q, v), i as u32))
                .collect();
            exact.sort_by(|a, b| a.0.total_cmp(&b.0));
            let truth: Vec<u32> = exact.iter().take(10).map(|e| e.1).collect();
            let found = index.search(q, 10, 128, &|_| true);
            hits += found.iter().filter(|o| truth.contains(o)).count();
            let even = index.search(q, 10, 128, &|o| o % 2 == 0);
            assert!(even.iter().all(|o| o % 2 == 0));
        }
        assert!(hits as f64 / 500.0 > 0.9, "recall {hits}/500");
    }

    /// A graph over multivectors finds the points whose MaxSim to the query is best.
    #[test]
    fn multivector_graphs_rank_by_max_sim() {
        let mut rng = StdRng::seed_from_u64(11);
        let dim = 4;
        let flats: Vec<Vec<f32>> = (0..600)
            .map(|i| {
                let n = 1 + i % 3;
                (0..n * dim).map(|_| rng.random_range(-1.0..1.0)).collect()
            })
            .collect();
        let points: Vec<(u32, &[f32])> = flats
            .iter()
            .enumerate()
            .map(|(i, v)| (i as u32, v.as_slice()))
            .collect();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let distance = GraphDistance {
            distance: Distance::Dot,
            multi_dim: Some(dim),
        };
        let index = HnswIndex::build(
            distance,
            GraphParams {
                m: 16,
                ef_construct: 100,
            },
            &points,
            &pool,
            &AtomicBool::new(false),
        )
        .unwrap();
        let mut hits = 0;
        for q in flats.iter().take(20) {
            let mut exact: Vec<(f32, u32)> = flats
                .iter()
                .enumerate()
                .map(|(i, v)| (-Distance::Dot.max_sim(q, v, dim), i as u32))
                .collect();
            exact.sort_by(|a, b| a.0.total_cmp(&b.0));
            let truth: Vec<u32> = exact.iter().take(5).map(|e| e.1).collect();
            hits += index
                .search(q, 5, 64, &|_| true)
                .iter()
                .filter(|o| truth.contains(o))
                .count();
        }
        assert!(hits as f64 / 100.0 > 0.8, "recall {hits}/100");
    }

    #[test]
    fn a_cancelled_build_returns_nothing() {
        let v = vec![0.0f32; 4];
        let points: Vec<(u32, &[f32])> = (0..10).map(|i| (i, v.as_slice())).collect();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let built = HnswIndex::build(
            GraphDistance::dense(Distance::Cosine),
            GraphParams {
                m: 16,
                ef_construct: 100,
            },
            &points,
            &pool,
            &AtomicBool::new(true),
        );
        assert!(built.is_none());
    }
}
