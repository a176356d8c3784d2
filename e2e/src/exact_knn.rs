//! Exact k-nearest-neighbours by brute force: the ground truth that recall is measured against.
//!
//! Cosine vectors are normalised once up front so each comparison is a plain dot product,
//! matching how Qdrant scores Cosine. Batches of queries are spread over threads because
//! ground truth for 100k x 1000 x 128 is ~13 GFLOP.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use crate::dataset::Vectors;
use crate::distance::{Distance, normalise};

/// A brute-force "index" over a borrowed or prepared copy of the data.
pub struct ExactIndex {
    distance: Distance,
    /// Normalised copy for Cosine, otherwise the data as given.
    data: Vectors,
}

/// One hit: the position of the vector in the indexed data and its Qdrant-style score.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Neighbour {
    pub index: usize,
    pub score: f32,
}

/// Heap entry ordered by (cost, index) so the heap top is the current worst hit, and equal
/// costs break ties by index: the result does not depend on iteration or thread order.
#[derive(PartialEq)]
struct Candidate {
    cost: f32,
    index: usize,
}

impl Eq for Candidate {}

impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Candidate {
    fn cmp(&self, other: &Self) -> Ordering {
        self.cost
            .total_cmp(&other.cost)
            .then(self.index.cmp(&other.index))
    }
}

impl ExactIndex {
    pub fn new(data: &Vectors, distance: Distance) -> Self {
        let data = if distance.normalises_vectors() {
            let mut flat = data.as_flat().to_vec();
            flat.chunks_exact_mut(data.dim()).for_each(normalise);
            Vectors::new(data.dim(), flat).expect("same shape as the input vectors")
        } else {
            data.clone()
        };
        Self { distance, data }
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The `k` best matches for `query`, best first.
    pub fn search(&self, query: &[f32], k: usize) -> Vec<Neighbour> {
        assert_eq!(query.len(), self.data.dim(), "query dimension mismatch");
        if k == 0 {
            return Vec::new();
        }
        let mut q = query.to_vec();
        let metric = if self.distance.normalises_vectors() {
            normalise(&mut q);
            Distance::Dot
        } else {
            self.distance
        };
        let mut heap = BinaryHeap::with_capacity(k + 1);
        for (index, v) in self.data.iter().enumerate() {
            let cost = metric.cost(metric.score(&q, v));
            if heap.len() < k {
                heap.push(Candidate { cost, index });
            } else if let Some(worst) = heap.peek()
                && (Candidate { cost, index }) < *worst
            {
                heap.pop();
                heap.push(Candidate { cost, index });
            }
        }
        heap.into_sorted_vec()
            .into_iter()
            .map(|c| Neighbour {
                index: c.index,
                score: metric.cost(c.cost), // cost is its own inverse (negation or identity)
            })
            .collect()
    }

    /// [`ExactIndex::search`] for every query, spread over `threads` threads (0 = all cores).
    pub fn search_batch(&self, queries: &Vectors, k: usize, threads: usize) -> Vec<Vec<Neighbour>> {
        let threads = if threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            threads
        };
        let n = queries.len();
        let per_thread = n.div_ceil(threads.max(1)).max(1);
        let mut results: Vec<Vec<Neighbour>> = vec![Vec::new(); n];
        std::thread::scope(|scope| {
            for (chunk_no, out) in results.chunks_mut(per_thread).enumerate() {
                scope.spawn(move || {
                    for (j, slot) in out.iter_mut().enumerate() {
                        *slot = self.search(queries.get(chunk_no * per_thread + j), k);
                    }
                });
            }
        });
        results
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::ClusteredGaussian;

    fn vectors(rows: &[&[f32]]) -> Vectors {
        Vectors::new(
            rows[0].len(),
            rows.iter().flat_map(|r| r.iter().copied()).collect(),
        )
        .unwrap()
    }

    #[test]
    fn euclid_finds_nearest_by_distance() {
        let data = vectors(&[&[0.0, 0.0], &[10.0, 0.0], &[1.0, 1.0], &[-3.0, 0.0]]);
        let idx = ExactIndex::new(&data, Distance::Euclid);
        let hits = idx.search(&[0.9, 0.9], 3);
        assert_eq!(
            hits.iter().map(|h| h.index).collect::<Vec<_>>(),
            vec![2, 0, 3]
        );
        assert!((hits[0].score - (0.02f32).sqrt()).abs() < 1e-6);
    }

    #[test]
    fn dot_prefers_long_vectors_cosine_does_not() {
        // Same direction as the query but short, versus a longer vector at an angle.
        let data = vectors(&[&[1.0, 0.0], &[10.0, 5.0]]);
        let dot = ExactIndex::new(&data, Distance::Dot).search(&[1.0, 0.0], 1);
        let cos = ExactIndex::new(&data, Distance::Cosine).search(&[1.0, 0.0], 1);
        assert_eq!(dot[0].index, 1);
        assert_eq!(dot[0].score, 10.0);
        assert_eq!(cos[0].index, 0);
        assert!((cos[0].score - 1.0).abs() < 1e-6);
    }

    #[test]
    fn ties_break_by_index_and_k_larger_than_data() {
        let data = vectors(&[&[1.0], &[1.0], &[1.0]]);
        let hits = ExactIndex::new(&data, Distance::Euclid).search(&[1.0], 10);
        assert_eq!(
            hits.iter().map(|h| h.index).collect::<Vec<_>>(),
            vec![0, 1, 2]
        );
        assert!(
            ExactIndex::new(&data, Distance::Euclid)
                .search(&[1.0], 0)
                .is_empty()
        );
    }

    #[test]
    fn matches_naive_sort_and_batch_matches_single() {
        let g = ClusteredGaussian::new(12, 4, 0.3, 5).unwrap();
        let data = g.sample(300, 6);
        let queries = g.sample(17, 7);
        for d in [
            Distance::Cosine,
            Distance::Dot,
            Distance::Euclid,
            Distance::Manhattan,
        ] {
            let idx = ExactIndex::new(&data, d);
            let batch = idx.search_batch(&queries, 10, 4);
            assert_eq!(batch.len(), queries.len());
            for (qi, q) in queries.iter().enumerate() {
                let mut naive: Vec<(f32, usize)> = data
                    .iter()
                    .enumerate()
                    .map(|(i, v)| (d.cost(d.score(q, v)), i))
                    .collect();
                naive.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
                let want: Vec<usize> = naive.iter().take(10).map(|x| x.1).collect();
                let got: Vec<usize> = batch[qi].iter().map(|h| h.index).collect();
                assert_eq!(got, want, "{d} query {qi}");
                assert_eq!(idx.search(q, 10), batch[qi]);
            }
        }
    }

    #[test]
    fn query_equal_to_a_point_finds_it_first() {
        let g = ClusteredGaussian::new(8, 3, 0.5, 11).unwrap();
        let data = g.sample(200, 12);
        let idx = ExactIndex::new(&data, Distance::Euclid);
        let hit = idx.search(data.get(123), 1);
        assert_eq!(hit[0].index, 123);
        assert_eq!(hit[0].score, 0.0);
    }
}
