//! Reproducible synthetic vectors: a mixture of isotropic Gaussians ("clustered Gaussian").
//!
//! Real embeddings are clustered, and clustering is what makes approximate search hard
//! (uniform random vectors are an unrealistically easy, or unrealistically hard, case
//! depending on dimension). The centres are drawn uniformly in `[-1, 1]^dim` from one seed;
//! samples are drawn from a separate seed, so points and queries can come from the *same*
//! distribution (same centres) while being different vectors.
//!
//! [`ZipfSparse`] does the same for sparse vectors: bag-of-words-like term distributions.
//!
//! All randomness comes from `ChaCha8Rng`, whose output is value-stable across releases, so
//! a seed names a dataset.

use anyhow::{Result, ensure};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

/// Vectors stored contiguously (`len * dim` floats): cache-friendly for brute force.
#[derive(Debug, Clone, PartialEq)]
pub struct Vectors {
    dim: usize,
    data: Vec<f32>,
}

impl Vectors {
    pub fn new(dim: usize, data: Vec<f32>) -> Result<Self> {
        ensure!(dim > 0, "vector dimension must be positive");
        ensure!(
            data.len().is_multiple_of(dim),
            "{} floats do not split into vectors of dimension {dim}",
            data.len()
        );
        Ok(Self { dim, data })
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn len(&self) -> usize {
        self.data.len() / self.dim
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The `i`-th vector. Panics if out of range (an index bug in the caller, not bad input).
    pub fn get(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = &[f32]> {
        self.data.chunks_exact(self.dim)
    }

    pub fn as_flat(&self) -> &[f32] {
        &self.data
    }
}

/// A mixture of `centres.len()` Gaussians with a shared standard deviation `sigma`.
#[derive(Debug, Clone)]
pub struct ClusteredGaussian {
    centres: Vectors,
    sigma: f32,
}

impl ClusteredGaussian {
    /// Draws `n_centres` centres uniformly in `[-1, 1]^dim` from `seed`.
    pub fn new(dim: usize, n_centres: usize, sigma: f32, seed: u64) -> Result<Self> {
        ensure!(dim > 0, "dimension must be positive");
        ensure!(n_centres > 0, "need at least one centre");
        ensure!(
            sigma.is_finite() && sigma >= 0.0,
            "sigma must be a finite non-negative number, got {sigma}"
        );
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let data = (0..dim * n_centres)
            .map(|_| rng.random_range(-1.0f32..=1.0))
            .collect();
        Ok(Self {
            centres: Vectors::new(dim, data)?,
            sigma,
        })
    }

    pub fn dim(&self) -> usize {
        self.centres.dim()
    }

    pub fn centres(&self) -> &Vectors {
        &self.centres
    }

    /// Draws `n` vectors: each picks a centre uniformly, then adds N(0, sigma²) per coordinate.
    ///
    /// Different `seed`s give independent samples of the same distribution.
    pub fn sample(&self, n: usize, seed: u64) -> Vectors {
        let dim = self.dim();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let noise = Normal::new(0.0f32, self.sigma)
            .expect("sigma was validated as finite and non-negative in new()");
        let mut data = Vec::with_capacity(n * dim);
        for _ in 0..n {
            let centre = self.centres.get(rng.random_range(0..self.centres.len()));
            data.extend(centre.iter().map(|c| c + noise.sample(&mut rng)));
        }
        Vectors { dim, data }
    }
}

/// A sparse vector as Qdrant takes it: parallel `indices` (sorted, distinct) and `values`.
#[derive(Debug, Clone, PartialEq)]
pub struct SparseVector {
    pub indices: Vec<u32>,
    pub values: Vec<f32>,
}

impl SparseVector {
    /// `sum(weight(i) * self[i] * other[i])` over the indices both hold (both sorted).
    pub fn weighted_dot(&self, other: &SparseVector, weight: impl Fn(u32) -> f32) -> f32 {
        let (mut a, mut b, mut sum) = (0, 0, 0.0);
        while a < self.indices.len() && b < other.indices.len() {
            match self.indices[a].cmp(&other.indices[b]) {
                std::cmp::Ordering::Less => a += 1,
                std::cmp::Ordering::Greater => b += 1,
                std::cmp::Ordering::Equal => {
                    sum += weight(self.indices[a]) * self.values[a] * other.values[b];
                    a += 1;
                    b += 1;
                }
            }
        }
        sum
    }
}

/// Sparse vectors whose terms follow a Zipf law over a vocabulary, like bag-of-words text:
/// the term of rank `r` (0-based) is drawn with probability proportional to `1 / (r + 1)^s`.
///
/// Ranks map to term ids through a seeded permutation, so frequent terms are spread over the
/// id space rather than being the smallest ids. Sampling inverts a cumulative table rather
/// than using a library Zipf sampler, whose algorithm may change between releases: a seed
/// names a dataset here as it does for [`ClusteredGaussian`].
#[derive(Debug, Clone)]
pub struct ZipfSparse {
    /// `cdf[r]`: probability of drawing a rank `<= r`; the last entry is 1.
    cdf: Vec<f64>,
    term_of_rank: Vec<u32>,
}

impl ZipfSparse {
    pub fn new(vocab: usize, exponent: f64, seed: u64) -> Result<Self> {
        ensure!(
            vocab > 0 && u32::try_from(vocab).is_ok(),
            "vocabulary size must be in 1..=2^32-1, got {vocab}"
        );
        ensure!(
            exponent.is_finite() && exponent >= 0.0,
            "Zipf exponent must be a finite non-negative number, got {exponent}"
        );
        let mut cdf: Vec<f64> = (0..vocab)
            .scan(0.0, |acc, r| {
                *acc += 1.0 / ((r + 1) as f64).powf(exponent);
                Some(*acc)
            })
            .collect();
        let total = cdf[vocab - 1];
        cdf.iter_mut().for_each(|c| *c /= total);
        let mut term_of_rank: Vec<u32> = (0..vocab as u32).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        // Fisher-Yates, spelled out so the permutation depends only on the ChaCha8 stream.
        for i in (1..vocab).rev() {
            term_of_rank.swap(i, rng.random_range(0..=i));
        }
        Ok(Self { cdf, term_of_rank })
    }

    pub fn vocab(&self) -> usize {
        self.cdf.len()
    }

    /// Draws `n` vectors with about `nnz` distinct terms each (uniformly between half and
    /// one and a half times `nnz`, capped by the vocabulary) and values in `[0.01, 1)`, all
    /// positive as term weights are, so every point sharing a term with a query scores > 0.
    pub fn sample(&self, n: usize, nnz: usize, seed: u64) -> Vec<SparseVector> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let low = (nnz / 2).max(1).min(self.vocab());
        let high = (nnz + nnz / 2).max(low).min(self.vocab());
        (0..n)
            .map(|_| {
                let want = rng.random_range(low..=high);
                let mut terms = std::collections::BTreeSet::new();
                while terms.len() < want {
                    let u: f64 = rng.random();
                    let rank = self.cdf.partition_point(|&c| c <= u).min(self.vocab() - 1);
                    terms.insert(self.term_of_rank[rank]);
                }
                let indices: Vec<u32> = terms.into_iter().collect();
                let values = indices
                    .iter()
                    .map(|_| rng.random_range(0.01f32..1.0))
                    .collect();
                SparseVector { indices, values }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_data_different_seed_different_data() {
        let g1 = ClusteredGaussian::new(16, 5, 0.1, 7).unwrap();
        let g2 = ClusteredGaussian::new(16, 5, 0.1, 7).unwrap();
        assert_eq!(g1.centres(), g2.centres());
        assert_eq!(g1.sample(100, 1), g2.sample(100, 1));
        assert_ne!(g1.sample(100, 1), g1.sample(100, 2));
        let g3 = ClusteredGaussian::new(16, 5, 0.1, 8).unwrap();
        assert_ne!(g1.centres(), g3.centres());
    }

    #[test]
    fn shapes_and_centre_range() {
        let g = ClusteredGaussian::new(8, 20, 0.3, 42).unwrap();
        assert_eq!(g.centres().len(), 20);
        assert!(
            g.centres()
                .iter()
                .flatten()
                .all(|x| (-1.0..=1.0).contains(x))
        );
        let v = g.sample(1000, 3);
        assert_eq!(v.len(), 1000);
        assert_eq!(v.dim(), 8);
        assert_eq!(v.iter().count(), 1000);
        assert!(v.as_flat().iter().all(|x| x.is_finite()));
    }

    #[test]
    fn samples_cluster_around_centres() {
        // With a small sigma every sample lies near some centre: its distance to the nearest
        // centre is about sigma * sqrt(dim), far below the typical centre spacing.
        let dim = 32;
        let sigma = 0.01;
        let g = ClusteredGaussian::new(dim, 10, sigma, 1).unwrap();
        let v = g.sample(500, 2);
        let bound = 4.0 * sigma * (dim as f32).sqrt();
        for p in v.iter() {
            let nearest = g
                .centres()
                .iter()
                .map(|c| crate::Distance::Euclid.score(p, c))
                .fold(f32::INFINITY, f32::min);
            assert!(nearest < bound, "sample {nearest} away from every centre");
        }
    }

    #[test]
    fn zero_sigma_reproduces_centres() {
        let g = ClusteredGaussian::new(4, 3, 0.0, 9).unwrap();
        let v = g.sample(50, 10);
        for p in v.iter() {
            assert!(g.centres().iter().any(|c| c == p));
        }
    }

    #[test]
    fn zipf_sparse_is_reproducible_sorted_and_skewed() {
        let z = ZipfSparse::new(1000, 1.0, 3).unwrap();
        let a = z.sample(500, 20, 4);
        assert_eq!(a, ZipfSparse::new(1000, 1.0, 3).unwrap().sample(500, 20, 4));
        assert_ne!(a, z.sample(500, 20, 5));
        let mut df = vec![0usize; 1000];
        for v in &a {
            assert!(
                (10..=30).contains(&v.indices.len()),
                "{} terms",
                v.indices.len()
            );
            assert_eq!(v.indices.len(), v.values.len());
            assert!(v.indices.windows(2).all(|w| w[0] < w[1]));
            assert!(v.values.iter().all(|x| (0.01..1.0).contains(x)));
            v.indices.iter().for_each(|&t| df[t as usize] += 1);
        }
        // The most frequent term (rank 0, probability 1/H(1000) ~ 0.13 per draw) is in most
        // vectors; most of the vocabulary is rare.
        let most = *df.iter().max().unwrap();
        assert!(most > 400, "most frequent term in only {most} of 500");
        assert!(df.iter().filter(|&&d| d <= 5).count() > 500);
        // Asking for more terms than the vocabulary holds takes all of it.
        let all = ZipfSparse::new(5, 1.0, 0).unwrap().sample(3, 40, 1);
        assert!(all.iter().all(|v| v.indices == [0, 1, 2, 3, 4]));
    }

    #[test]
    fn sparse_weighted_dot_merges_sorted_indices() {
        let a = SparseVector {
            indices: vec![1, 4, 9],
            values: vec![1.0, 2.0, 3.0],
        };
        let b = SparseVector {
            indices: vec![0, 4, 9, 12],
            values: vec![5.0, 0.5, 2.0, 7.0],
        };
        assert_eq!(a.weighted_dot(&b, |_| 1.0), 7.0);
        assert_eq!(a.weighted_dot(&b, |t| if t == 9 { 0.5 } else { 1.0 }), 4.0);
    }

    #[test]
    fn rejects_bad_parameters() {
        assert!(ClusteredGaussian::new(0, 1, 0.1, 0).is_err());
        assert!(ClusteredGaussian::new(4, 0, 0.1, 0).is_err());
        assert!(ClusteredGaussian::new(4, 1, -1.0, 0).is_err());
        assert!(ClusteredGaussian::new(4, 1, f32::NAN, 0).is_err());
        assert!(Vectors::new(3, vec![0.0; 4]).is_err());
        assert!(ZipfSparse::new(0, 1.0, 0).is_err());
        assert!(ZipfSparse::new(10, f64::NAN, 0).is_err());
    }
}
