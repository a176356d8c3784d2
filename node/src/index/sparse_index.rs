//! An inverted index over the sparse vectors of one sealed segment: for each dimension, the
//! offsets that have a value there. Scoring a query walks only the posting lists of the
//! query's dimensions, so its cost grows with how many points share a dimension with the query,
//! not with the segment.
//!
//! Answers are exact: the same points and scores as a scan that scores every point sharing a
//! dimension with the query (Qdrant's sparse search, which never returns points with no
//! dimension in common).

use std::collections::HashMap;

use crate::types::SparseVector;

pub struct SparseIndex {
    postings: HashMap<u32, Vec<(u32, f32)>>,
    len: usize,
}

impl SparseIndex {
    /// Builds the index over `(offset, vector)` pairs.
    pub fn build<'a>(vectors: impl Iterator<Item = (u32, &'a SparseVector)>) -> SparseIndex {
        let mut postings: HashMap<u32, Vec<(u32, f32)>> = HashMap::new();
        let mut len = 0;
        for (offset, vector) in vectors {
            len += 1;
            for (&dim, &value) in vector.indices.iter().zip(&vector.values) {
                postings.entry(dim).or_default().push((offset, value));
            }
        }
        postings.values_mut().for_each(|p| p.shrink_to_fit());
        SparseIndex { postings, len }
    }

    /// Points in the index.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How many points have a value in dimension `dim`.
    pub fn document_frequency(&self, dim: u32) -> usize {
        self.postings.get(&dim).map_or(0, Vec::len)
    }

    /// Every offset that shares a dimension with `query`, with its dot product to the query,
    /// each dimension weighted by `weight`. In no particular order.
    pub fn score(&self, query: &SparseVector, weight: impl Fn(u32) -> f32) -> HashMap<u32, f32> {
        let mut scores: HashMap<u32, f32> = HashMap::new();
        for (&dim, &q) in query.indices.iter().zip(&query.values) {
            let Some(posting) = self.postings.get(&dim) else {
                continue;
            };
            let w = weight(dim) * q;
            for &(offset, value) in posting {
                *scores.entry(offset).or_insert(0.0) += w * value;
            }
        }
        scores
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_sparse() -> impl Strategy<Value = SparseVector> {
        prop::collection::btree_map(0u32..40, -5.0f32..5.0, 0..8).prop_map(|m| {
            let (indices, values): (Vec<u32>, Vec<f32>) = m.into_iter().unzip();
            SparseVector::new(indices, values).unwrap()
        })
    }

    proptest! {
        /// The index scores exactly the points a scan finds sharing a dimension, with the same
        /// scores.
        #[test]
        fn index_scores_equal_a_scan(
            vectors in prop::collection::vec(arb_sparse(), 0..40),
            query in arb_sparse(),
        ) {
            let index = SparseIndex::build(
                vectors.iter().enumerate().map(|(i, v)| (i as u32, v)),
            );
            let weight = |d: u32| 1.0 + d as f32 / 10.0;
            let got = index.score(&query, weight);
            for (i, v) in vectors.iter().enumerate() {
                let i = i as u32;
                if v.overlaps(&query) {
                    let want = v.weighted_dot(&query, weight);
                    let have = got.get(&i).copied();
                    prop_assert!(have.is_some_and(|h| (h - want).abs() < 1e-3), "{i}: {have:?} vs {want}");
                } else {
                    prop_assert!(!got.contains_key(&i));
                }
            }
        }
    }

    #[test]
    fn sparse_vectors_are_sorted_and_checked() {
        let v = SparseVector::new(vec![5, 1, 3], vec![0.5, 1.0, 2.0]).unwrap();
        assert_eq!(v.indices, vec![1, 3, 5]);
        assert_eq!(v.values, vec![1.0, 2.0, 0.5]);
        assert!(SparseVector::new(vec![1, 1], vec![1.0, 2.0]).is_err());
        assert!(SparseVector::new(vec![1], vec![1.0, 2.0]).is_err());
        assert!(SparseVector::new(vec![1], vec![f32::NAN]).is_err());
        let index = SparseIndex::build([(0u32, &v)].into_iter());
        assert_eq!(index.document_frequency(3), 1);
        assert_eq!(index.document_frequency(4), 0);
    }
}
