//! An HNSW graph over the vectors of one sealed segment, built with `hnsw_rs` and kept in
//! Shoal's own layout: layer-0 links as two flat `u32` arrays (CSR) that a graph file holds
//! as they are, so that opening a segment maps its graph instead of rebuilding it, and the
//! graph holds no copy of the vectors (`hnsw_rs` keeps one per point). Searches walk that
//! layout with the segment's own vectors.
//!
//! `hnsw_rs` wants non-negative distances where smaller is closer, and its own dot-product
//! distance insists on normalised input. So the graph is built with [`GraphDistance`], which maps
//! each of Qdrant's scores to such a distance monotonically; the scores a search reports are
//! recomputed exactly by the caller from the stored vectors.

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anndists::dist::Distance as _;
use hnsw_rs::prelude::Hnsw;

use crate::kernels;
use crate::storage::mapped::{self, FileBytes, FileSlice};
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

/// A built graph over segment offsets, in Shoal's own layout (see the module docs): `hnsw_rs`
/// builds it, then its links are copied out and the builder (with its own copy of every vector)
/// is dropped. Searches read vectors from the segment, through the caller.
pub struct HnswIndex {
    distance: GraphDistance,
    params: GraphParams,
    /// Points in the graph.
    len: usize,
    /// Offsets `0..capacity` may appear; offsets without a vector have no links.
    capacity: usize,
    entry: Option<u32>,
    /// Layer-0 links in CSR form: `starts[o]..starts[o + 1]` index `links`.
    starts: U32s,
    links: U32s,
    /// Layers 1..=max: the links of each point that reaches the layer.
    upper: Vec<HashMap<u32, Box<[u32]>>>,
}

/// Link words built in memory or read from a graph file.
enum U32s {
    Heap(Vec<u32>),
    File(FileSlice),
}

impl U32s {
    fn as_slice(&self) -> &[u32] {
        match self {
            U32s::Heap(v) => v,
            U32s::File(f) => f.u32s(),
        }
    }
}

/// Inserting in chunks lets a build notice cancellation and keeps rayon's batches useful.
const BUILD_CHUNK: usize = 2048;

/// "SHG1": the first word of a graph file.
const GRAPH_MAGIC: u32 = u32::from_le_bytes(*b"SHG1");
const GRAPH_FORMAT: u32 = 1;
/// Header words: magic, format, m, ef_construct, capacity, len, entry, layers above 0, total
/// layer-0 links, then reserved zeros.
const HEADER_WORDS: usize = 16;
const NO_ENTRY: u32 = u32::MAX;

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
        let graph: Hnsw<'_, f32, GraphDistance> = Hnsw::new(
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
        let capacity = points
            .iter()
            .map(|(o, _)| *o as usize + 1)
            .max()
            .unwrap_or(0);
        let mut index = HnswIndex::from_builder(&graph, distance, params, capacity);
        drop(graph);
        if cancel.load(Ordering::Relaxed) {
            return None;
        }
        let mut vectors: Vec<Option<&[f32]>> = vec![None; capacity];
        for (o, v) in points {
            vectors[*o as usize] = Some(v);
        }
        pool.install(|| index.diversify_layer0(&vectors));
        Some(index)
    }

    /// Chooses every point's layer-0 links again, from its links and the points linking to
    /// it, with HNSW's neighbour-selection heuristic (a candidate is kept unless an already
    /// kept neighbour is closer to it than the point is), then fills the list up to `2 * m`
    /// with the nearest candidates it passed over.
    ///
    /// Why: when a point's list is full, `hnsw_rs` drops its farthest link to make room for a
    /// new point linking back. On clustered data those far links are the bridges between
    /// clusters, so a larger graph loses them and whole clusters drift out of reach: at
    /// 80,000 x 128 (100 Gaussian clusters, m 16, ef_construct 100) recall@10 at `ef` 64 was
    /// 0.962 (0.997 at 40,000); with this pass it is 0.986, for 15% more build time. hnswlib
    /// and Qdrant apply the heuristic on overflow instead; this pass restores much of what it
    /// would have kept, in parallel on the build's pool.
    fn diversify_layer0(&mut self, vectors: &[Option<&[f32]>]) {
        use rayon::prelude::*;
        let starts = self.starts.as_slice();
        let links = self.links.as_slice();
        let capacity = self.capacity;
        let list = |o: usize| &links[starts[o] as usize..starts[o + 1] as usize];
        let mut incoming: Vec<Vec<u32>> = vec![Vec::new(); capacity];
        for o in 0..capacity {
            for &n in list(o) {
                incoming[n as usize].push(o as u32);
            }
        }
        let keep = 2 * self.params.m.clamp(2, 128);
        let distance = self.distance;
        let lists: Vec<Vec<u32>> = (0..capacity)
            .into_par_iter()
            .map(|o| {
                let Some(here) = vectors[o] else {
                    return list(o).to_vec();
                };
                let mut candidates: Vec<(f32, u32)> = list(o)
                    .iter()
                    .chain(&incoming[o])
                    .filter(|&&n| n as usize != o)
                    .filter_map(|&n| Some((distance.eval(here, vectors[n as usize]?), n)))
                    .collect();
                candidates.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
                candidates.dedup_by_key(|c| c.1);
                let mut kept: Vec<(u32, &[f32])> = Vec::with_capacity(keep);
                let mut passed: Vec<u32> = Vec::new();
                for &(d, n) in &candidates {
                    if kept.len() == keep {
                        break;
                    }
                    let Some(there) = vectors[n as usize] else {
                        continue;
                    };
                    if kept.iter().all(|(_, k)| distance.eval(there, k) > d) {
                        kept.push((n, there));
                    } else {
                        passed.push(n);
                    }
                }
                let mut chosen: Vec<u32> = kept.into_iter().map(|(n, _)| n).collect();
                let room = keep.saturating_sub(chosen.len());
                chosen.extend(passed.into_iter().take(room));
                chosen
            })
            .collect();
        (self.starts, self.links) = csr(lists);
    }

    /// Copies the links out of a built `hnsw_rs` graph.
    fn from_builder(
        graph: &Hnsw<'_, f32, GraphDistance>,
        distance: GraphDistance,
        params: GraphParams,
        capacity: usize,
    ) -> HnswIndex {
        let top = graph.get_max_level_observed() as usize;
        let mut level0: Vec<Vec<u32>> = vec![Vec::new(); capacity];
        let mut upper: Vec<HashMap<u32, Box<[u32]>>> = vec![HashMap::new(); top];
        let mut entry = None;
        let mut len = 0;
        for point in graph.get_point_indexation() {
            let offset = point.get_origin_id() as u32;
            let level = point.get_point_id().0 as usize;
            len += 1;
            if level == top && entry.is_none_or(|e| offset < e) {
                entry = Some(offset);
            }
            for (layer, neighbours) in point.get_neighborhood_id().into_iter().enumerate() {
                let ids: Vec<u32> = neighbours.iter().map(|n| n.d_id as u32).collect();
                match layer {
                    0 => level0[offset as usize] = ids,
                    l if l <= top && l <= level => {
                        upper[l - 1].insert(offset, ids.into_boxed_slice());
                    }
                    _ => {}
                }
            }
        }
        let (starts, links) = csr(level0);
        HnswIndex {
            distance,
            params,
            len,
            capacity,
            entry,
            starts,
            links,
            upper,
        }
    }

    /// Writes the graph to `path` (fsynced) and returns the file's CRC32. Layout, all
    /// little-endian `u32`: a header of [`HEADER_WORDS`], the layer-0 `starts` (capacity + 1)
    /// and `links`, then per upper layer its point count, and per point its offset, its link
    /// count and its links.
    pub fn write(&self, path: &Path) -> std::io::Result<u32> {
        let starts = self.starts.as_slice();
        let links = self.links.as_slice();
        let mut words: Vec<u32> = Vec::with_capacity(HEADER_WORDS + starts.len() + links.len());
        words.extend([
            GRAPH_MAGIC,
            GRAPH_FORMAT,
            self.params.m as u32,
            self.params.ef_construct as u32,
            self.capacity as u32,
            self.len as u32,
            self.entry.unwrap_or(NO_ENTRY),
            self.upper.len() as u32,
            links.len() as u32,
        ]);
        words.resize(HEADER_WORDS, 0);
        words.extend_from_slice(starts);
        words.extend_from_slice(links);
        for layer in &self.upper {
            let mut points: Vec<(&u32, &Box<[u32]>)> = layer.iter().collect();
            points.sort_by_key(|(o, _)| **o);
            words.push(points.len() as u32);
            for (offset, list) in points {
                words.push(*offset);
                words.push(list.len() as u32);
                words.extend_from_slice(list);
            }
        }
        mapped::write_file(path, bytemuck::cast_slice(&words))
    }

    /// Opens a graph written by [`HnswIndex::write`]: layer 0 stays in the file (mapped when
    /// the file is), the few points of the upper layers are read onto the heap. Errors name
    /// what does not fit.
    pub fn open(file: Arc<FileBytes>, distance: GraphDistance) -> Result<HnswIndex, String> {
        let header = FileSlice::new(Arc::clone(&file), 0, HEADER_WORDS)?;
        let h = header.u32s();
        if h[0] != GRAPH_MAGIC || h[1] != GRAPH_FORMAT {
            return Err("not a graph file of this format".into());
        }
        let params = GraphParams {
            m: h[2] as usize,
            ef_construct: h[3] as usize,
        };
        let (capacity, len) = (h[4] as usize, h[5] as usize);
        let entry = (h[6] != NO_ENTRY).then_some(h[6]);
        let (layers, total) = (h[7] as usize, h[8] as usize);
        let starts_at = HEADER_WORDS * 4;
        let starts = FileSlice::new(Arc::clone(&file), starts_at, capacity + 1)?;
        let links_at = starts_at + (capacity + 1) * 4;
        let links = FileSlice::new(Arc::clone(&file), links_at, total)?;
        let s = starts.u32s();
        if s[0] != 0 || s[capacity] as usize != total || s.windows(2).any(|w| w[0] > w[1]) {
            return Err("layer-0 link ranges are inconsistent".into());
        }
        if links.u32s().iter().any(|&o| o as usize >= capacity) {
            return Err("a link points outside the segment".into());
        }
        if entry.is_some_and(|e| e as usize >= capacity) || (entry.is_none() && len > 0) {
            return Err("the entry point is missing or outside the segment".into());
        }
        let rest_at = links_at + total * 4;
        let rest_words = (file.bytes().len() - rest_at) / 4;
        let rest = FileSlice::new(Arc::clone(&file), rest_at, rest_words)?;
        let mut words = rest.u32s().iter().copied();
        let mut next = || words.next().ok_or("upper layers are truncated");
        let mut upper = Vec::with_capacity(layers);
        for _ in 0..layers {
            let count = next()? as usize;
            let mut layer = HashMap::with_capacity(count.min(capacity));
            for _ in 0..count {
                let offset = next()?;
                let n = next()? as usize;
                let list: Box<[u32]> = (0..n).map(|_| next()).collect::<Result<_, _>>()?;
                if offset as usize >= capacity || list.iter().any(|&o| o as usize >= capacity) {
                    return Err("an upper-layer link points outside the segment".into());
                }
                layer.insert(offset, list);
            }
            upper.push(layer);
        }
        Ok(HnswIndex {
            distance,
            params,
            len,
            capacity,
            entry,
            starts: U32s::File(starts),
            links: U32s::File(links),
            upper,
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

    /// One more than the largest offset the graph may link to.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn neighbours(&self, layer: usize, offset: u32) -> &[u32] {
        if layer == 0 {
            let starts = self.starts.as_slice();
            let o = offset as usize;
            &self.links.as_slice()[starts[o] as usize..starts[o + 1] as usize]
        } else {
            self.upper[layer - 1].get(&offset).map_or(&[], |l| l)
        }
    }

    /// The offsets of up to `k` approximate nearest neighbours of `query` that pass `accept`,
    /// closest first. `vector` gives the stored vector at an offset (multivectors as their
    /// sub-vectors laid end to end). See [`HnswIndex::walk`].
    pub fn search<'v>(
        &self,
        query: &[f32],
        k: usize,
        ef: usize,
        vector: &dyn Fn(u32) -> Option<&'v [f32]>,
        accept: &dyn Fn(u32) -> bool,
    ) -> Vec<u32> {
        let scorer = VectorScorer {
            query,
            vector,
            distance: self.distance,
        };
        self.walk(&scorer, k, ef, accept)
    }

    /// HNSW's search with distances from `scorer`: a greedy descent through the upper
    /// layers, then a best-first walk of layer 0 keeping the `ef` best accepted points;
    /// rejected points are still walked through, so a filter narrows the answer, not the
    /// paths. Returns up to `k` offsets, closest first.
    pub fn walk<S: GraphScorer>(
        &self,
        scorer: &S,
        k: usize,
        ef: usize,
        accept: &dyn Fn(u32) -> bool,
    ) -> Vec<u32> {
        let Some(entry) = self.entry else {
            return Vec::new();
        };
        let ef = ef.max(k).max(1);
        let distance = |o: u32| scorer.load(o).map(|x| scorer.distance(x));
        let Some(mut best) = distance(entry) else {
            return Vec::new();
        };
        let mut current = entry;
        for layer in (1..=self.upper.len()).rev() {
            loop {
                let mut moved = false;
                for &n in self.neighbours(layer, current) {
                    if let Some(d) = distance(n)
                        && d < best
                    {
                        (best, current, moved) = (d, n, true);
                    }
                }
                if !moved {
                    break;
                }
            }
        }
        VISITED.with_borrow_mut(|visited| {
            visited.reset(self.capacity);
            visited.insert(current);
            let mut candidates = BinaryHeap::new();
            let mut found: BinaryHeap<Near> = BinaryHeap::with_capacity(ef.min(self.len) + 1);
            candidates.push(Reverse(Near(best, current)));
            if accept(current) {
                found.push(Near(best, current));
            }
            // The unvisited neighbours of the point being expanded: all of them are loaded
            // before the first distance, so their loads overlap.
            let mut batch: Vec<(u32, S::Loaded)> = Vec::with_capacity(2 * self.params.m.max(8));
            while let Some(Reverse(Near(d, offset))) = candidates.pop() {
                if found.len() >= ef && found.peek().is_some_and(|w| d > w.0) {
                    break;
                }
                batch.clear();
                for &n in self.neighbours(0, offset) {
                    if visited.insert(n)
                        && let Some(x) = scorer.load(n)
                    {
                        batch.push((n, x));
                    }
                }
                for &(n, x) in &batch {
                    let dn = scorer.distance(x);
                    if found.len() < ef || found.peek().is_some_and(|w| dn < w.0) {
                        candidates.push(Reverse(Near(dn, n)));
                        if accept(n) {
                            found.push(Near(dn, n));
                            if found.len() > ef {
                                found.pop();
                            }
                        }
                    }
                }
            }
            let mut found = found.into_sorted_vec();
            found.truncate(k);
            found.into_iter().map(|n| n.1).collect()
        })
    }
}

/// Distances a graph walk compares: smaller is closer.
pub trait GraphScorer {
    /// What `load` found for an offset, handed back to `distance`.
    type Loaded: Copy;
    /// The stored vector (or whatever stands for it) at offset `o`, `None` if the point has
    /// none; starts loading its memory (see [`kernels::prefetch`]).
    fn load(&self, o: u32) -> Option<Self::Loaded>;
    /// The distance of a loaded vector from the query.
    fn distance(&self, loaded: Self::Loaded) -> f32;
}

/// Distances between the query and the stored vectors, as the graph was built with.
struct VectorScorer<'q, 'v, 'f> {
    query: &'q [f32],
    vector: &'f dyn Fn(u32) -> Option<&'v [f32]>,
    distance: GraphDistance,
}

impl<'v> GraphScorer for VectorScorer<'_, 'v, '_> {
    type Loaded = &'v [f32];

    #[inline]
    fn load(&self, o: u32) -> Option<&'v [f32]> {
        let v = (self.vector)(o)?;
        kernels::prefetch(v);
        Some(v)
    }

    #[inline]
    fn distance(&self, v: &'v [f32]) -> f32 {
        self.distance.eval(self.query, v)
    }
}

/// Per-point link lists packed as CSR: `starts` (one more than the lists) and `links`.
fn csr(lists: Vec<Vec<u32>>) -> (U32s, U32s) {
    let mut starts = Vec::with_capacity(lists.len() + 1);
    let mut links = Vec::new();
    starts.push(0);
    for list in lists {
        links.extend(list);
        starts.push(links.len() as u32);
    }
    (U32s::Heap(starts), U32s::Heap(links))
}

/// A graph distance and an offset, ordered by distance (then offset, for determinism).
#[derive(Clone, Copy, PartialEq)]
struct Near(f32, u32);

impl Eq for Near {}

impl PartialOrd for Near {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Near {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0).then(self.1.cmp(&other.1))
    }
}

/// Which offsets a search has seen: a mark per offset, valid when it equals the current
/// generation, so starting a search costs nothing until the generation counter wraps.
#[derive(Default)]
struct Visited {
    marks: Vec<u16>,
    generation: u16,
}

impl Visited {
    fn reset(&mut self, capacity: usize) {
        if self.marks.len() < capacity {
            self.marks.resize(capacity, 0);
        }
        self.generation = self.generation.wrapping_add(1);
        if self.generation == 0 {
            self.marks.fill(0);
            self.generation = 1;
        }
    }

    /// Marks `offset`; false if it was already marked in this search.
    fn insert(&mut self, offset: u32) -> bool {
        let mark = &mut self.marks[offset as usize];
        let fresh = *mark != self.generation;
        *mark = self.generation;
        fresh
    }
}

thread_local! {
    /// One visited set per searching thread, reused across searches.
    static VISITED: RefCell<Visited> = RefCell::new(Visited::default());
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    /// Two far-apart clusters where only the far side still links across (as after
    /// `hnsw_rs` dropped the near side's farthest link): the pass gives the near side its
    /// bridge back, so a walk entering there reaches the other cluster.
    #[test]
    fn a_bridge_known_only_to_the_far_side_is_restored() {
        let vectors: Vec<[f32; 2]> = vec![
            [0.0, 0.0],
            [0.1, 0.0],
            [0.0, 0.1],
            [0.1, 0.1],
            [10.0, 0.0],
            [10.1, 0.0],
            [10.0, 0.1],
            [10.1, 0.1],
        ];
        let lists: Vec<Vec<u32>> = vec![
            vec![1, 2, 3],
            vec![0, 2, 3],
            vec![0, 1, 3],
            vec![0, 1, 2],
            vec![0, 5, 6, 7],
            vec![4, 6, 7],
            vec![4, 5, 7],
            vec![4, 5, 6],
        ];
        let (starts, links) = csr(lists);
        let mut index = HnswIndex {
            distance: GraphDistance::dense(Distance::Euclid),
            params: GraphParams {
                m: 2,
                ef_construct: 8,
            },
            len: 8,
            capacity: 8,
            entry: Some(0),
            starts,
            links,
            upper: Vec::new(),
        };
        let vector = |o: u32| Some(&vectors[o as usize][..]);
        let far = [10.05, 0.05];
        assert!(
            index.search(&far, 1, 4, &vector, &|_| true)[0] < 4,
            "the walk cannot leave the first cluster before the pass"
        );
        let refs: Vec<Option<&[f32]>> = vectors.iter().map(|v| Some(&v[..])).collect();
        index.diversify_layer0(&refs);
        for o in 0..8u32 {
            let list = index.neighbours(0, o);
            assert!(list.len() <= 4 && !list.contains(&o), "{o}: {list:?}");
            let mut unique = list.to_vec();
            unique.sort_unstable();
            unique.dedup();
            assert_eq!(unique.len(), list.len());
        }
        assert!(index.neighbours(0, 0).contains(&4));
        assert!(index.search(&far, 1, 4, &vector, &|_| true)[0] >= 4);
    }

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
        let vector = |o: u32| Some(vectors[o as usize].as_slice());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("graph.bin");
        let crc = index.write(&path).unwrap();
        assert_eq!(crate::storage::mapped::checksum_file(&path).unwrap().0, crc);
        let reopened: Vec<HnswIndex> = [true, false]
            .into_iter()
            .map(|mapped| {
                let file = FileBytes::open(&path, mapped).unwrap();
                HnswIndex::open(file, GraphDistance::dense(Distance::Euclid)).unwrap()
            })
            .collect();
        assert_eq!(reopened[0].params(), index.params());
        assert_eq!(reopened[0].len(), 2000);
        let mut hits = 0;
        for q in vectors.iter().take(50) {
            let mut exact: Vec<(f32, u32)> = vectors
                .iter()
                .enumerate()
                .map(|(i, v)| (types::squared_euclid(q, v), i as u32))
                .collect();
            exact.sort_by(|a, b| a.0.total_cmp(&b.0));
            let truth: Vec<u32> = exact.iter().take(10).map(|e| e.1).collect();
            let found = index.search(q, 10, 128, &vector, &|_| true);
            hits += found.iter().filter(|o| truth.contains(o)).count();
            let even = index.search(q, 10, 128, &vector, &|o| o % 2 == 0);
            assert_eq!(even.len(), 10);
            assert!(even.iter().all(|o| o % 2 == 0));
            // The same graph read back from its file, mapped or not, answers the same.
            for reopened in &reopened {
                assert_eq!(reopened.search(q, 10, 128, &vector, &|_| true), found);
            }
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
                .search(q, 5, 64, &|o| Some(flats[o as usize].as_slice()), &|_| true)
                .iter()
                .filter(|o| truth.contains(o))
                .count();
        }
        assert!(hits as f64 / 100.0 > 0.8, "recall {hits}/100");
    }

    #[test]
    fn a_damaged_graph_file_is_refused() {
        let v = [vec![0.0f32, 1.0], vec![1.0, 0.0], vec![1.0, 1.0]];
        let points: Vec<(u32, &[f32])> = v
            .iter()
            .enumerate()
            .map(|(i, v)| (i as u32, v.as_slice()))
            .collect();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let params = GraphParams {
            m: 4,
            ef_construct: 8,
        };
        let distance = GraphDistance::dense(Distance::Euclid);
        let index =
            HnswIndex::build(distance, params, &points, &pool, &AtomicBool::new(false)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("graph.bin");
        index.write(&path).unwrap();
        let good = std::fs::read(&path).unwrap();
        let open = |bytes: &[u8]| {
            std::fs::write(&path, bytes).unwrap();
            HnswIndex::open(FileBytes::open(&path, false).unwrap(), distance)
        };
        assert!(open(&good).is_ok());
        assert!(open(&good[..good.len() - 4]).is_err(), "truncated");
        assert!(open(&good[..20]).is_err(), "header only");
        let mut bad = good.clone();
        bad[0] ^= 1;
        assert!(open(&bad).is_err(), "magic");
        // A layer-0 link pointing past the segment.
        let mut bad = good.clone();
        let link_at = (HEADER_WORDS + 4) * 4;
        bad[link_at..link_at + 4].copy_from_slice(&99u32.to_le_bytes());
        assert!(open(&bad).is_err(), "link out of range");
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
