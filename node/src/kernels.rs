//! Distance kernels over `f32` vectors: dot product, squared Euclidean and Manhattan (L1)
//! distance, the three sums every dense score is made of (cosine is a dot product of vectors
//! normalised at write time, as in Qdrant).
//!
//! Each kernel is one loop body written against `pulp`'s portable SIMD types and compiled once
//! per [`Level`]; the level is chosen once per process by what the CPU offers: AVX-512
//! (x86-64-v4), AVX2 with FMA (x86-64-v3) or SSE4.2 (x86-64-v2) on x86-64, the best `pulp`
//! finds elsewhere (NEON on AArch64), or plain scalar code. `pulp` checks the CPU features
//! before it enters a level, so there is no `unsafe` here. The body keeps four vector
//! accumulators so that several fused multiply-adds are in flight, and loads the last partial
//! register zero-filled (a zero pair adds nothing to any of the three sums).
//!
//! Results differ from a left-to-right scalar sum only by rounding (the terms are added in
//! another order, and fused multiply-adds round once instead of twice); [`reference`] holds the
//! plain sums the tests compare every level with.

use std::sync::LazyLock;

use pulp::{Simd, WithSimd};

/// A SIMD level the kernels can run at. [`Level::detect`] picks the widest this CPU has.
#[derive(Debug, Clone, Copy)]
pub enum Level {
    /// AVX-512F/BW/CD/DQ/VL with FMA (x86-64-v4): 16 lanes.
    #[cfg(target_arch = "x86_64")]
    Avx512(pulp::x86::V4),
    /// AVX2 with FMA (x86-64-v3): 8 lanes.
    #[cfg(target_arch = "x86_64")]
    Avx2(pulp::x86::V3),
    /// SSE4.2 (x86-64-v2): 4 lanes, multiply then add (no FMA at this level).
    #[cfg(target_arch = "x86_64")]
    Sse(pulp::x86::V2),
    /// The best level `pulp` finds on this architecture (NEON on AArch64).
    #[cfg(not(target_arch = "x86_64"))]
    Native(pulp::Arch),
    /// One lane, no run-time checks.
    Scalar,
}

static LEVEL: LazyLock<Level> = LazyLock::new(Level::detect);

impl Level {
    /// The widest level this CPU supports.
    pub fn detect() -> Level {
        Level::available()[0]
    }

    /// The level the kernels of this process use (detected once).
    pub fn current() -> Level {
        *LEVEL
    }

    /// Every level this CPU can run, widest first; the last is always [`Level::Scalar`].
    pub fn available() -> Vec<Level> {
        let mut levels = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if let Some(simd) = pulp::x86::V4::try_new() {
                levels.push(Level::Avx512(simd));
            }
            if let Some(simd) = pulp::x86::V3::try_new() {
                levels.push(Level::Avx2(simd));
            }
            if let Some(simd) = pulp::x86::V2::try_new() {
                levels.push(Level::Sse(simd));
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        levels.push(Level::Native(pulp::Arch::new()));
        levels.push(Level::Scalar);
        levels
    }

    /// A short name for logs and benchmarks.
    pub fn name(self) -> &'static str {
        match self {
            #[cfg(target_arch = "x86_64")]
            Level::Avx512(_) => "avx512",
            #[cfg(target_arch = "x86_64")]
            Level::Avx2(_) => "avx2",
            #[cfg(target_arch = "x86_64")]
            Level::Sse(_) => "sse4.2",
            #[cfg(not(target_arch = "x86_64"))]
            Level::Native(_) => "native",
            Level::Scalar => "scalar",
        }
    }

    #[inline]
    fn run<K: Step>(self, a: &[f32], b: &[f32]) -> f32 {
        // Fused multiply-adds only where the level has FMA instructions: elsewhere `pulp`
        // computes them in software, lane by lane.
        fn fold<'a, K, const FUSED: bool>(a: &'a [f32], b: &'a [f32]) -> Fold<'a, K, FUSED> {
            Fold {
                a,
                b,
                step: std::marker::PhantomData,
            }
        }
        match self {
            #[cfg(target_arch = "x86_64")]
            Level::Avx512(simd) => Simd::vectorize(simd, fold::<K, true>(a, b)),
            #[cfg(target_arch = "x86_64")]
            Level::Avx2(simd) => Simd::vectorize(simd, fold::<K, true>(a, b)),
            #[cfg(target_arch = "x86_64")]
            Level::Sse(simd) => Simd::vectorize(simd, fold::<K, false>(a, b)),
            #[cfg(all(not(target_arch = "x86_64"), target_arch = "aarch64"))]
            Level::Native(arch) => arch.dispatch(fold::<K, true>(a, b)),
            #[cfg(all(not(target_arch = "x86_64"), not(target_arch = "aarch64")))]
            Level::Native(arch) => arch.dispatch(fold::<K, false>(a, b)),
            Level::Scalar => Simd::vectorize(pulp::Scalar, fold::<K, false>(a, b)),
        }
    }

    /// `sum(a[i] * b[i])` over the common length.
    #[inline]
    pub fn dot(self, a: &[f32], b: &[f32]) -> f32 {
        self.run::<Product>(a, b)
    }

    /// `sum((a[i] - b[i])^2)` over the common length.
    #[inline]
    pub fn squared_euclid(self, a: &[f32], b: &[f32]) -> f32 {
        self.run::<Square>(a, b)
    }

    /// `sum(|a[i] - b[i]|)` over the common length.
    #[inline]
    pub fn manhattan(self, a: &[f32], b: &[f32]) -> f32 {
        self.run::<Absolute>(a, b)
    }
}

/// `sum(a[i] * b[i])` at this process's [`Level`].
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    LEVEL.dot(a, b)
}

/// `sum((a[i] - b[i])^2)` at this process's [`Level`].
#[inline]
pub fn squared_euclid(a: &[f32], b: &[f32]) -> f32 {
    LEVEL.squared_euclid(a, b)
}

/// `sum(|a[i] - b[i]|)` at this process's [`Level`].
#[inline]
pub fn manhattan(a: &[f32], b: &[f32]) -> f32 {
    LEVEL.manhattan(a, b)
}

/// Starts loading the first cache lines of `v` (up to 512 bytes) so that a distance computed a
/// little later finds them in cache: a graph walk reads each neighbour's vector at a random
/// place in memory, and issuing those loads together overlaps their latencies. Plain reads of
/// one value per 64-byte line, kept by `black_box`; the values are not used.
#[inline(always)]
pub fn prefetch(v: &[f32]) {
    const LINE_FLOATS: usize = 16;
    for line in v.chunks(LINE_FLOATS).take(8) {
        std::hint::black_box(line[0]);
    }
}

/// One register's worth of a sum: `acc + term(x, y)` lane by lane, with a fused multiply-add
/// when `FUSED`.
trait Step {
    fn step<S: Simd, const FUSED: bool>(simd: S, acc: S::f32s, x: S::f32s, y: S::f32s) -> S::f32s;
}

/// `x * y + acc`: fused, or multiplied then added.
#[inline(always)]
fn multiply_add<S: Simd, const FUSED: bool>(
    simd: S,
    x: S::f32s,
    y: S::f32s,
    acc: S::f32s,
) -> S::f32s {
    if FUSED {
        simd.mul_add_e_f32s(x, y, acc)
    } else {
        simd.add_f32s(simd.mul_f32s(x, y), acc)
    }
}

struct Product;
struct Square;
struct Absolute;

impl Step for Product {
    #[inline(always)]
    fn step<S: Simd, const FUSED: bool>(simd: S, acc: S::f32s, x: S::f32s, y: S::f32s) -> S::f32s {
        multiply_add::<S, FUSED>(simd, x, y, acc)
    }
}

impl Step for Square {
    #[inline(always)]
    fn step<S: Simd, const FUSED: bool>(simd: S, acc: S::f32s, x: S::f32s, y: S::f32s) -> S::f32s {
        let d = simd.sub_f32s(x, y);
        multiply_add::<S, FUSED>(simd, d, d, acc)
    }
}

impl Step for Absolute {
    #[inline(always)]
    fn step<S: Simd, const FUSED: bool>(simd: S, acc: S::f32s, x: S::f32s, y: S::f32s) -> S::f32s {
        simd.add_f32s(acc, simd.abs_f32s(simd.sub_f32s(x, y)))
    }
}

/// The sum of `K`'s terms over the common length of `a` and `b`.
struct Fold<'a, K, const FUSED: bool> {
    a: &'a [f32],
    b: &'a [f32],
    step: std::marker::PhantomData<K>,
}

impl<K: Step, const FUSED: bool> WithSimd for Fold<'_, K, FUSED> {
    type Output = f32;

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) -> f32 {
        let n = self.a.len().min(self.b.len());
        let (head_a, tail_a) = S::as_simd_f32s(&self.a[..n]);
        let (head_b, tail_b) = S::as_simd_f32s(&self.b[..n]);
        let zero = simd.splat_f32s(0.0);
        let mut acc = [zero; 4];
        let (blocks_a, blocks_b) = (head_a.chunks_exact(4), head_b.chunks_exact(4));
        let (rest_a, rest_b) = (blocks_a.remainder(), blocks_b.remainder());
        for (x, y) in blocks_a.zip(blocks_b) {
            for i in 0..4 {
                acc[i] = K::step::<S, FUSED>(simd, acc[i], x[i], y[i]);
            }
        }
        for (i, (x, y)) in rest_a.iter().zip(rest_b).enumerate() {
            acc[i] = K::step::<S, FUSED>(simd, acc[i], *x, *y);
        }
        if !tail_a.is_empty() {
            let (x, y) = (
                simd.partial_load_f32s(tail_a),
                simd.partial_load_f32s(tail_b),
            );
            acc[3] = K::step::<S, FUSED>(simd, acc[3], x, y);
        }
        let sum = simd.add_f32s(simd.add_f32s(acc[0], acc[1]), simd.add_f32s(acc[2], acc[3]));
        simd.reduce_sum_f32s(sum)
    }
}

/// Plain left-to-right sums in `f64`: what the kernels are checked against.
pub mod reference {
    pub fn dot(a: &[f32], b: &[f32]) -> f64 {
        a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum()
    }

    pub fn squared_euclid(a: &[f32], b: &[f32]) -> f64 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
            .sum()
    }

    pub fn manhattan(a: &[f32], b: &[f32]) -> f64 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (*x as f64 - *y as f64).abs())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The rounding error bound of an `f32` sum of `n` terms whose absolute values add up to
    /// `magnitude`, with room for the reordering and fused rounding of every level.
    fn tolerance(n: usize, magnitude: f64) -> f64 {
        (n as f64 + 2.0) * f32::EPSILON as f64 * magnitude + 1e-6
    }

    fn pair(max_len: usize) -> impl Strategy<Value = (Vec<f32>, Vec<f32>)> {
        (0..=max_len).prop_flat_map(|n| {
            (
                proptest::collection::vec(-1000.0f32..1000.0, n),
                proptest::collection::vec(-1000.0f32..1000.0, n),
            )
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Every level this CPU has matches the f64 reference within rounding, for every
        /// distance, at lengths that exercise whole blocks, the short lanes and the scalar tail.
        #[test]
        fn every_level_matches_the_reference((a, b) in pair(300)) {
            let products: f64 = a.iter().zip(&b).map(|(x, y)| (*x as f64 * *y as f64).abs()).sum();
            let squares = reference::squared_euclid(&a, &b);
            let absolute = reference::manhattan(&a, &b);
            for level in Level::available() {
                let name = level.name();
                let dot = level.dot(&a, &b) as f64;
                prop_assert!((dot - reference::dot(&a, &b)).abs() <= tolerance(a.len(), products),
                    "{name} dot {dot} vs {}", reference::dot(&a, &b));
                let l2 = level.squared_euclid(&a, &b) as f64;
                prop_assert!((l2 - squares).abs() <= tolerance(a.len(), squares),
                    "{name} squared_euclid {l2} vs {squares}");
                let l1 = level.manhattan(&a, &b) as f64;
                prop_assert!((l1 - absolute).abs() <= tolerance(a.len(), absolute),
                    "{name} manhattan {l1} vs {absolute}");
            }
        }
    }

    #[test]
    fn exact_inputs_give_exact_sums_at_every_level() {
        // Small integers: every partial sum is exact in f32, whatever the order.
        let a: Vec<f32> = (0..131).map(|i| (i % 7) as f32 - 3.0).collect();
        let b: Vec<f32> = (0..131).map(|i| (i % 5) as f32 - 2.0).collect();
        for level in Level::available() {
            assert_eq!(level.dot(&a, &b) as f64, reference::dot(&a, &b));
            assert_eq!(
                level.squared_euclid(&a, &b) as f64,
                reference::squared_euclid(&a, &b)
            );
            assert_eq!(level.manhattan(&a, &b) as f64, reference::manhattan(&a, &b));
            assert_eq!(level.dot(&[], &[]), 0.0);
        }
    }

    #[test]
    fn the_process_runs_the_widest_level() {
        assert_eq!(Level::current().name(), Level::available()[0].name());
        assert_eq!(Level::available().last().unwrap().name(), "scalar");
    }
}
