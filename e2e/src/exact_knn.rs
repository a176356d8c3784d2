//! Exact k-nearest-neighbours by brute force: the ground truth that recall is measured against.
//! [`ExactIndex`] for dense vectors, [`MultiExactIndex`] for multivectors (MaxSim) and
//! [`SparseExactIndex`] for sparse vectors (dot product, optionally IDF-weighted).
//!
//! Cosine vectors are normalised once up front so each comparison is a plain dot product,
//! matching how Qdrant scores Cosine. Batches of queries are spread over threads because
//! ground truth for 100k x 1000 x 128 is ~13 GFLOP.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use anyhow::{Result, ensure};

use crate::dataset::{SparseVector, Vectors};
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
        self.search_where(query, k, &|_| true)
    }

    /// The `k` best matches for `query` among the vectors whose position passes `accept`
    /// (a filtered search's ground truth), best first.
    pub fn search_where(
        &self,
        query: &[f32],
        k: usize,
        accept: &(dyn Fn(usize) -> bool + Sync),
    ) -> Vec<Neighbour> {
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
        let mut top = TopK::new(k);
        for (index, v) in self.data.iter().enumerate() {
            if accept(index) {
                top.push(metric.cost(metric.score(&q, v)), index);
            }
        }
        // cost is its own inverse (negation or identity)
        top.into_neighbours(|cost| metric.cost(cost))
    }

    /// [`ExactIndex::search`] for every query, spread over `threads` threads (0 = all cores).
    pub fn search_batch(&self, queries: &Vectors, k: usize, threads: usize) -> Vec<Vec<Neighbour>> {
        self.search_batch_where(queries, k, threads, &|_| true)
    }

    /// [`ExactIndex::search_where`] for every query, spread over `threads` threads.
    pub fn search_batch_where(
        &self,
        queries: &Vectors,
        k: usize,
        threads: usize,
        accept: &(dyn Fn(usize) -> bool + Sync),
    ) -> Vec<Vec<Neighbour>> {
        parallel_map(queries.len(), threads, |i| {
            self.search_where(queries.get(i), k, accept)
        })
    }
}

/// The `k` lowest-cost candidates seen so far (a max-heap whose top is the worst kept).
struct TopK {
    k: usize,
    heap: BinaryHeap<Candidate>,
}

impl TopK {
    fn new(k: usize) -> Self {
        Self {
            k,
            heap: BinaryHeap::with_capacity(k + 1),
        }
    }

    fn push(&mut self, cost: f32, index: usize) {
        if self.heap.len() < self.k {
            self.heap.push(Candidate { cost, index });
        } else if let Some(worst) = self.heap.peek()
            && (Candidate { cost, index }) < *worst
        {
            self.heap.pop();
            self.heap.push(Candidate { cost, index });
        }
    }

    /// Best first; `score_of` turns a cost back into the score reported.
    fn into_neighbours(self, score_of: impl Fn(f32) -> f32) -> Vec<Neighbour> {
        self.heap
            .into_sorted_vec()
            .into_iter()
            .map(|c| Neighbour {
                index: c.index,
                score: score_of(c.cost),
            })
            .collect()
    }
}

/// `f(0..n)` computed on `threads` threads (0 = all cores), in order.
fn parallel_map<T: Send + Clone + Default>(
    n: usize,
    threads: usize,
    f: impl Fn(usize) -> T + Sync,
) -> Vec<T> {
    let threads = if threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        threads
    };
    let per_thread = n.div_ceil(threads.max(1)).max(1);
    let mut results: Vec<T> = vec![T::default(); n];
    let f = &f;
    std::thread::scope(|scope| {
        for (chunk_no, out) in results.chunks_mut(per_thread).enumerate() {
            scope.spawn(move || {
                for (j, slot) in out.iter_mut().enumerate() {
                    *slot = f(chunk_no * per_thread + j);
                }
            });
        }
    });
    results
}

/// Exact MaxSim search over multivectors of a fixed number of sub-vectors each, as Qdrant
/// scores `multivector_config: {"comparator": "max_sim"}`: for each query sub-vector the best
/// [`Distance::similarity`] to any of the point's sub-vectors, summed over the query's.
///
/// Cosine sub-vectors are normalised one by one (the server stores them so) and then compared
/// by dot product. Scores are Qdrant's internal ones: larger is closer for every metric.
pub struct MultiExactIndex {
    per_point: usize,
    /// Every sub-vector, prepared as for dense search (normalised for Cosine); those of
    /// point `i` are rows `i * per_point .. (i + 1) * per_point`.
    rows: ExactIndex,
}

impl MultiExactIndex {
    pub fn new(rows: &Vectors, per_point: usize, distance: Distance) -> Result<Self> {
        ensure!(per_point > 0, "a multivector needs at least one sub-vector");
        ensure!(
            rows.len().is_multiple_of(per_point),
            "{} sub-vectors do not split into multivectors of {per_point}",
            rows.len()
        );
        Ok(Self {
            per_point,
            rows: ExactIndex::new(rows, distance),
        })
    }

    pub fn len(&self) -> usize {
        self.rows.len() / self.per_point
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The `k` best points for `query` (its sub-vectors end to end), best first.
    pub fn search(&self, query: &[f32], k: usize) -> Vec<Neighbour> {
        let dim = self.rows.data.dim();
        assert!(
            !query.is_empty() && query.len().is_multiple_of(dim),
            "query is not a list of {dim}-dimensional sub-vectors"
        );
        let mut q = query.to_vec();
        let metric = if self.rows.distance.normalises_vectors() {
            q.chunks_exact_mut(dim).for_each(normalise);
            Distance::Dot
        } else {
            self.rows.distance
        };
        let mut top = TopK::new(k);
        for index in 0..self.len() {
            let point = &self.rows.data.as_flat()
                [index * self.per_point * dim..(index + 1) * self.per_point * dim];
            let score: f32 = q
                .chunks_exact(dim)
                .map(|qs| {
                    point
                        .chunks_exact(dim)
                        .map(|ps| metric.similarity(qs, ps))
                        .fold(f32::NEG_INFINITY, f32::max)
                })
                .sum();
            top.push(-score, index);
        }
        top.into_neighbours(|cost| -cost)
    }

    /// [`MultiExactIndex::search`] for every query of `per_query` sub-vectors (consecutive
    /// rows of `queries`), spread over `threads` threads (0 = all cores).
    pub fn search_batch(
        &self,
        queries: &Vectors,
        per_query: usize,
        k: usize,
        threads: usize,
    ) -> Vec<Vec<Neighbour>> {
        let per = per_query.max(1) * queries.dim();
        let flat = queries.as_flat();
        parallel_map(flat.len() / per, threads, |i| {
            self.search(&flat[i * per..(i + 1) * per], k)
        })
    }
}

/// Qdrant's IDF of a sparse dimension held by `df` of `points` points:
/// `ln(1 + (points - df + 0.5) / (df + 0.5))`.
pub fn idf(points: usize, df: usize) -> f32 {
    let (n, df) = (points as f64, df as f64);
    (1.0 + (n - df + 0.5) / (df + 0.5)).ln() as f32
}

/// Exact sparse search by dot product through an inverted index (term → postings), with
/// Qdrant's `modifier: idf` optionally applied to the query's values.
///
/// Only points sharing at least one term with the query are candidates, as in Qdrant: a
/// query with fewer than `k` such points has fewer than `k` answers.
pub struct SparseExactIndex {
    points: Vec<SparseVector>,
    postings: HashMap<u32, Vec<(u32, f32)>>,
    /// Per-term IDF when the modifier is on.
    idf: Option<HashMap<u32, f32>>,
}

impl SparseExactIndex {
    pub fn new(points: Vec<SparseVector>, with_idf: bool) -> Result<Self> {
        ensure!(
            u32::try_from(points.len()).is_ok(),
            "too many points for u32 postings"
        );
        let mut postings: HashMap<u32, Vec<(u32, f32)>> = HashMap::new();
        for (i, p) in points.iter().enumerate() {
            ensure!(
                p.indices.len() == p.values.len(),
                "point {i}: {} indices but {} values",
                p.indices.len(),
                p.values.len()
            );
            for (&t, &v) in p.indices.iter().zip(&p.values) {
                postings.entry(t).or_default().push((i as u32, v));
            }
        }
        let idf = with_idf.then(|| {
            postings
                .iter()
                .map(|(&t, list)| (t, idf(points.len(), list.len())))
                .collect()
        });
        Ok(Self {
            points,
            postings,
            idf,
        })
    }

    pub fn len(&self) -> usize {
        self.points.len()
    }

    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// The indexed points, in order.
    pub fn points(&self) -> &[SparseVector] {
        &self.points
    }

    /// Whether query values are weighted by IDF (Qdrant's `modifier: idf`).
    pub fn has_idf(&self) -> bool {
        self.idf.is_some()
    }

    /// How much term `t` of a query weighs: its IDF with the modifier, otherwise 1.
    pub fn weight(&self, t: u32) -> f32 {
        self.idf
            .as_ref()
            .map_or(1.0, |idf| idf.get(&t).copied().unwrap_or(0.0))
    }

    /// The score of point `index` for `query`.
    pub fn score(&self, query: &SparseVector, index: usize) -> f32 {
        query.weighted_dot(&self.points[index], |t| self.weight(t))
    }

    /// The `k` best points sharing a term with `query`, best first.
    pub fn search(&self, query: &SparseVector, k: usize) -> Vec<Neighbour> {
        let mut scores: HashMap<u32, f32> = HashMap::new();
        for (&t, &qv) in query.indices.iter().zip(&query.values) {
            let w = qv * self.weight(t);
            for &(p, pv) in self.postings.get(&t).map_or(&[][..], Vec::as_slice) {
                *scores.entry(p).or_insert(0.0) += w * pv;
            }
        }
        let mut top = TopK::new(k);
        for (p, score) in scores {
            top.push(-score, p as usize);
        }
        top.into_neighbours(|cost| -cost)
    }

    /// [`SparseExactIndex::search`] for every query, over `threads` threads (0 = all cores).
    pub fn search_batch(
        &self,
        queries: &[SparseVector],
        k: usize,
        threads: usize,
    ) -> Vec<Vec<Neighbour>> {
        parallel_map(queries.len(), threads, |i| self.search(&queries[i], k))
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

    #[test]
    fn max_sim_sums_best_matches_per_query_sub_vector() {
        // Point 0: sub-vectors (1,0) and (0,1); point 1: (1,1) twice.
        let rows = vectors(&[&[1.0, 0.0], &[0.0, 1.0], &[1.0, 1.0], &[1.0, 1.0]]);
        let query = [1.0, 0.0, 0.0, 2.0];
        let dot = MultiExactIndex::new(&rows, 2, Distance::Dot).unwrap();
        assert_eq!(dot.len(), 2);
        // Point 0: max(1, 0) + max(0, 2) = 3; point 1: 1 + 2 = 3, tie broken by index.
        let hits = dot.search(&query, 2);
        assert_eq!(
            hits,
            vec![
                Neighbour {
                    index: 0,
                    score: 3.0
                },
                Neighbour {
                    index: 1,
                    score: 3.0
                }
            ]
        );
        // Cosine normalises each sub-vector: point 0 matches both query directions exactly.
        let cos = MultiExactIndex::new(&rows, 2, Distance::Cosine).unwrap();
        let hits = cos.search(&query, 2);
        assert_eq!(hits[0].index, 0);
        assert!((hits[0].score - 2.0).abs() < 1e-6);
        assert!((hits[1].score - 2.0f32.sqrt()).abs() < 1e-6);
        // Euclid adds negated squared distances: point 0 is at 0 and 1 (= 2 - 1), point 1 at
        // 1 and 2.
        let euc = MultiExactIndex::new(&rows, 2, Distance::Euclid).unwrap();
        let hits = euc.search(&query, 2);
        assert_eq!((hits[0].index, hits[0].score), (0, -1.0));
        assert_eq!((hits[1].index, hits[1].score), (1, -3.0));
        assert!(MultiExactIndex::new(&rows, 3, Distance::Dot).is_err());
    }

    #[test]
    fn max_sim_with_one_sub_vector_is_plain_search() {
        let g = ClusteredGaussian::new(8, 3, 0.4, 21).unwrap();
        let data = g.sample(150, 22);
        let queries = g.sample(9, 23);
        for d in [Distance::Cosine, Distance::Dot] {
            let multi = MultiExactIndex::new(&data, 1, d)
                .unwrap()
                .search_batch(&queries, 1, 5, 2);
            let plain = ExactIndex::new(&data, d).search_batch(&queries, 5, 2);
            assert_eq!(multi, plain, "{d}");
        }
    }

    #[test]
    fn sparse_search_matches_scoring_every_point() {
        let z = crate::dataset::ZipfSparse::new(200, 1.0, 31).unwrap();
        let points = z.sample(300, 12, 32);
        let queries = z.sample(20, 4, 33);
        for with_idf in [false, true] {
            let idx = SparseExactIndex::new(points.clone(), with_idf).unwrap();
            let batch = idx.search_batch(&queries, 10, 3);
            for (qi, q) in queries.iter().enumerate() {
                let mut naive: Vec<(f32, usize)> = (0..points.len())
                    .filter(|&i| q.indices.iter().any(|t| points[i].indices.contains(t)))
                    .map(|i| (-idx.score(q, i), i))
                    .collect();
                naive.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
                let want: Vec<usize> = naive.iter().take(10).map(|x| x.1).collect();
                let got: Vec<usize> = batch[qi].iter().map(|h| h.index).collect();
                assert_eq!(got, want, "idf {with_idf} query {qi}");
                for h in &batch[qi] {
                    assert!((h.score - idx.score(q, h.index)).abs() <= 1e-5 * h.score.abs());
                }
            }
        }
    }

    #[test]
    fn idf_weighs_rare_terms_up() {
        // Qdrant's formula: ln(1 + (n - df + 0.5) / (df + 0.5)).
        assert!((idf(100, 1) - (1.0f32 + 99.5 / 1.5).ln()).abs() < 1e-6);
        assert!(idf(100, 1) > idf(100, 50));
        assert!(idf(100, 100) > 0.0);
        let points = vec![
            SparseVector {
                indices: vec![1, 2],
                values: vec![1.0, 1.0],
            },
            SparseVector {
                indices: vec![1],
                values: vec![1.0],
            },
        ];
        let idx = SparseExactIndex::new(points, true).unwrap();
        assert_eq!(idx.weight(1), idf(2, 2));
        assert_eq!(idx.weight(2), idf(2, 1));
        assert_eq!(idx.weight(7), 0.0);
        let q = SparseVector {
            indices: vec![2, 7],
            values: vec![2.0, 5.0],
        };
        // Only point 0 shares a term.
        let hits = idx.search(&q, 10);
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].index, 0);
        assert!((hits[0].score - 2.0 * idf(2, 1)).abs() < 1e-6);
    }
}
