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

    /// The sum of `K`'s terms over two byte vectors (quantized codes): a plain loop compiled
    /// with this level's instructions enabled, which the compiler widens to SIMD (integer sums
    /// may be reordered freely, so the result is exact at every level).
    #[inline]
    fn run_bytes<K: ByteTerm>(self, a: &[u8], b: &[u8]) -> u32 {
        let fold = ByteFold::<K> {
            a,
            b,
            term: std::marker::PhantomData,
        };
        match self {
            #[cfg(target_arch = "x86_64")]
            Level::Avx512(simd) => Simd::vectorize(simd, fold),
            #[cfg(target_arch = "x86_64")]
            Level::Avx2(simd) => Simd::vectorize(simd, fold),
            #[cfg(target_arch = "x86_64")]
            Level::Sse(simd) => Simd::vectorize(simd, fold),
            #[cfg(not(target_arch = "x86_64"))]
            Level::Native(arch) => arch.dispatch(fold),
            Level::Scalar => Simd::vectorize(pulp::Scalar, fold),
        }
    }

    /// `sum(a[i] * b[i])` over the common length of two code vectors. Exact: a code vector
    /// of up to 65,536 bytes cannot overflow (`255 * 255 * 65,536 < 2^32`).
    #[inline]
    pub fn dot_u8(self, a: &[u8], b: &[u8]) -> u32 {
        self.run_bytes::<ByteProduct>(a, b)
    }

    /// `sum((a[i] - b[i])^2)` over the common length of two code vectors (exact, as `dot_u8`).
    #[inline]
    pub fn squared_euclid_u8(self, a: &[u8], b: &[u8]) -> u32 {
        self.run_bytes::<ByteSquare>(a, b)
    }

    /// `sum(|a[i] - b[i]|)` over the common length of two code vectors (exact).
    #[inline]
    pub fn manhattan_u8(self, a: &[u8], b: &[u8]) -> u32 {
        self.run_bytes::<ByteAbsolute>(a, b)
    }
}

/// [`Level::dot_u8`] at this process's level.
#[inline]
pub fn dot_u8(a: &[u8], b: &[u8]) -> u32 {
    LEVEL.dot_u8(a, b)
}

/// [`Level::squared_euclid_u8`] at this process's level.
#[inline]
pub fn squared_euclid_u8(a: &[u8], b: &[u8]) -> u32 {
    LEVEL.squared_euclid_u8(a, b)
}

/// [`Level::manhattan_u8`] at this process's level.
#[inline]
pub fn manhattan_u8(a: &[u8], b: &[u8]) -> u32 {
    LEVEL.manhattan_u8(a, b)
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

/// [`prefetch`] for a vector of bytes (quantized codes).
#[inline(always)]
pub fn prefetch_bytes(v: &[u8]) {
    const LINE: usize = 64;
    for line in v.chunks(LINE).take(8) {
        std::hint::black_box(line[0]);
    }
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

/// One term of a sum over two byte vectors.
trait ByteTerm {
    fn term(x: u8, y: u8) -> u32;
}

struct ByteProduct;
struct ByteSquare;
struct ByteAbsolute;

impl ByteTerm for ByteProduct {
    #[inline(always)]
    fn term(x: u8, y: u8) -> u32 {
        x as u32 * y as u32
    }
}

impl ByteTerm for ByteSquare {
    #[inline(always)]
    fn term(x: u8, y: u8) -> u32 {
        let d = x.abs_diff(y) as u32;
        d * d
    }
}

impl ByteTerm for ByteAbsolute {
    #[inline(always)]
    fn term(x: u8, y: u8) -> u32 {
        x.abs_diff(y) as u32
    }
}

/// The sum of `K`'s terms over the common length of `a` and `b`.
struct ByteFold<'a, K> {
    a: &'a [u8],
    b: &'a [u8],
    term: std::marker::PhantomData<K>,
}

impl<K: ByteTerm> WithSimd for ByteFold<'_, K> {
    type Output = u32;

    #[inline(always)]
    fn with_simd<S: Simd>(self, _simd: S) -> u32 {
        // Wrapping adds: the sum cannot overflow for the sizes the API accepts (see
        // `Level::dot_u8`), and wrapping keeps the loop free of overflow checks.
        self.a
            .iter()
            .zip(self.b)
            .fold(0u32, |acc, (x, y)| acc.wrapping_add(K::term(*x, *y)))
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

    /// The three byte sums of one pair, in `u64`: (dot, squared Euclidean, Manhattan).
    pub fn bytes(a: &[u8], b: &[u8]) -> (u64, u64, u64) {
        let mut sums = (0u64, 0u64, 0u64);
        for (x, y) in a.iter().zip(b) {
            let (x, y) = (*x as i64, *y as i64);
            sums.0 += (x * y) as u64;
            sums.1 += ((x - y) * (x - y)) as u64;
            sums.2 += (x - y).unsigned_abs();
        }
        sums
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

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// The byte kernels are exact at every level, at lengths that exercise every lane
        /// width and tail.
        #[test]
        fn every_level_sums_bytes_exactly(
            (a, b) in (0usize..600).prop_flat_map(|n| (
                proptest::collection::vec(any::<u8>(), n),
                proptest::collection::vec(any::<u8>(), n),
            ))
        ) {
            let (dot, l2, l1) = reference::bytes(&a, &b);
            for level in Level::available() {
                let name = level.name();
                prop_assert_eq!(level.dot_u8(&a, &b) as u64, dot, "{} dot", name);
                prop_assert_eq!(level.squared_euclid_u8(&a, &b) as u64, l2, "{} l2", name);
                prop_assert_eq!(level.manhattan_u8(&a, &b) as u64, l1, "{} l1", name);
            }
        }
    }

    #[test]
    fn byte_sums_at_the_largest_vector_do_not_overflow() {
        let a = vec![255u8; 65_536];
        let b = vec![0u8; 65_536];
        for level in Level::available() {
            assert_eq!(level.dot_u8(&a, &a) as u64, 255 * 255 * 65_536);
            assert_eq!(level.squared_euclid_u8(&a, &b) as u64, 255 * 255 * 65_536);
            assert_eq!(level.manhattan_u8(&a, &b) as u64, 255 * 65_536);
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
