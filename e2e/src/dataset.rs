//! Reproducible synthetic vectors: a mixture of isotropic Gaussians ("clustered Gaussian").
//!
//! Real embeddings are clustered, and clustering is what makes approximate search hard
//! (uniform random vectors are an unrealistically easy, or unrealistically hard, case
//! depending on dimension). The centres are drawn uniformly in `[-1, 1]^dim` from one seed;
//! samples are drawn from a separate seed, so points and queries can come from the *same*
//! distribution (same centres) while being different vectors.
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
    fn rejects_bad_parameters() {
        assert!(ClusteredGaussian::new(0, 1, 0.1, 0).is_err());
        assert!(ClusteredGaussian::new(4, 0, 0.1, 0).is_err());
        assert!(ClusteredGaussian::new(4, 1, -1.0, 0).is_err());
        assert!(ClusteredGaussian::new(4, 1, f32::NAN, 0).is_err());
        assert!(Vectors::new(3, vec![0.0; 4]).is_err());
    }
}
