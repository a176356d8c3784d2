//! Scalar quantization of dense vectors (Qdrant's `quantization_config: {"scalar": {"type":
//! "int8", "quantile", "always_ram"}}`): every value of a sealed segment's column becomes one
//! byte, `value ~ offset + alpha * code`, with `offset` and `alpha` chosen per segment and
//! column from the values' range (or the central `quantile` of them, which cuts outliers).
//!
//! A graph walk over codes reads a quarter of the bytes a walk over `f32` values reads and
//! sums bytes with integer SIMD, so it is faster and keeps fewer pages resident; searches
//! then rescore the best candidates with the original vectors (Qdrant's `rescore`, on by
//! default), so the scores they report are exact.
//!
//! Scores from codes (a query is quantized with the segment's own `offset` and `alpha`):
//!
//! - dot and cosine (vectors normalised at write time): `x.y ~ alpha^2 * sum(qx * qy) + c(x) +
//!   c(y)`, with the per-vector term `c(x) = alpha * offset * sum(qx) + dim * offset^2 / 2`
//!   kept beside the codes;
//! - Euclid: `|x - y|^2 ~ alpha^2 * sum((qx - qy)^2)` (the offset cancels);
//! - Manhattan: `|x - y|_1 ~ alpha * sum(|qx - qy|)`.
//!
//! The settings are parsed in `collection_config::quantization`; product and binary
//! quantization are accepted and stored there, not applied.

use std::sync::Arc;

use crate::index::hnsw_index::GraphScorer;
use crate::kernels;
use crate::storage::mapped::{self, FileBytes};
use crate::types::Distance;

/// `params.quantization` of a search (Qdrant's `QuantizationSearchParams`).
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct QuantizationSearch {
    /// Search the original vectors only.
    #[serde(default)]
    pub ignore: bool,
    /// Score the candidates found with codes again with the original vectors; `None` is
    /// Qdrant's default, which rescores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rescore: Option<bool>,
    /// Candidates taken from the codes per point asked for (`>= 1`, default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oversampling: Option<f64>,
}

impl QuantizationSearch {
    /// How many candidates to take from the codes for `top` results: `top * oversampling`
    /// rounded up, within `top..=top * 100` (the API refuses larger factors).
    pub fn candidates(&self, top: usize) -> usize {
        let factor = self.oversampling.unwrap_or(1.0).clamp(1.0, 100.0);
        ((top as f64 * factor).ceil() as usize).clamp(top, top.saturating_mul(100))
    }

    pub fn rescores(&self) -> bool {
        self.rescore.unwrap_or(true)
    }
}

/// "SHQ1": the first word of a codes file.
const MAGIC: u32 = u32::from_le_bytes(*b"SHQ1");
const FORMAT: u32 = 1;
/// Header words: magic, format, dim, len, alpha, offset, quantile (NaN: none), reserved.
const HEADER_WORDS: usize = 8;
/// Values sampled (whole vectors, evenly spaced) to find the quantile bounds: enough for
/// stable bounds, bounded in memory whatever the dimension.
const QUANTILE_SAMPLE_VALUES: usize = 1 << 20;

/// A sealed segment's codes of one dense column. Layout (the file, or the same words on the
/// heap), little-endian: a header of [`HEADER_WORDS`] words, the per-vector term `c(x)` as
/// `f32` for each of `len` offsets, then `dim` code bytes per offset (zeros where the point has
/// no vector).
pub struct QuantizedVectors {
    distance: Distance,
    dim: usize,
    len: usize,
    alpha: f32,
    offset: f32,
    quantile: Option<f32>,
    bytes: Arc<FileBytes>,
}

/// A query turned into codes for one segment's [`QuantizedVectors`].
pub struct QueryCodes {
    codes: Vec<u8>,
    term: f32,
}

/// A graph walk over one segment's codes: `present` says which offsets have a vector.
pub struct CodeScorer<'a, P> {
    pub codes: &'a QuantizedVectors,
    pub query: &'a QueryCodes,
    pub present: P,
}

impl<P: Fn(u32) -> bool> GraphScorer for CodeScorer<'_, P> {
    type Loaded = u32;

    #[inline]
    fn load(&self, o: u32) -> Option<u32> {
        if (o as usize) < self.codes.len && (self.present)(o) {
            self.codes.prefetch(o);
            Some(o)
        } else {
            None
        }
    }

    #[inline]
    fn distance(&self, o: u32) -> f32 {
        self.codes.graph_distance(self.query, o)
    }
}

impl QuantizedVectors {
    /// Quantizes `len` vectors of `dim` values (`vector(o)`, `None` where offset `o` has
    /// none). The bounds are the values' minimum and maximum, or with a `quantile` the
    /// central share of a sample of them.
    pub fn build<'v>(
        distance: Distance,
        dim: usize,
        len: usize,
        quantile: Option<f32>,
        vector: impl Fn(usize) -> Option<&'v [f32]>,
    ) -> QuantizedVectors {
        let (low, high) = bounds(dim, len, quantile, &vector);
        // In f64: the range of finite f32 values can itself overflow f32.
        let step = (high as f64 - low as f64) / 255.0;
        let alpha = if step > 0.0 { step as f32 } else { 1.0 };
        let offset = low;
        let codes_at = (HEADER_WORDS + len) * 4;
        let total = codes_at + len * dim;
        let mut words = vec![0u32; total.div_ceil(4)];
        {
            let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut words);
            let header = [
                MAGIC,
                FORMAT,
                dim as u32,
                len as u32,
                alpha.to_bits(),
                offset.to_bits(),
                quantile.unwrap_or(f32::NAN).to_bits(),
                0,
            ];
            bytes[..HEADER_WORDS * 4].copy_from_slice(bytemuck::cast_slice(&header));
            let (head, codes) = bytes.split_at_mut(codes_at);
            let terms: &mut [u8] = &mut head[HEADER_WORDS * 4..];
            for o in 0..len {
                let Some(v) = vector(o) else { continue };
                let cell = &mut codes[o * dim..(o + 1) * dim];
                encode_into(v, offset, alpha, cell);
                let t = term(cell, offset, alpha);
                terms[o * 4..o * 4 + 4].copy_from_slice(&t.to_le_bytes());
            }
        }
        QuantizedVectors {
            distance,
            dim,
            len,
            alpha,
            offset,
            quantile,
            bytes: Arc::new(FileBytes::Heap { words, len: total }),
        }
    }

    /// Writes the codes to `path` (fsynced) and returns the file's CRC32.
    pub fn write(&self, path: &std::path::Path) -> std::io::Result<u32> {
        mapped::write_file(path, self.bytes.bytes())
    }

    /// Opens codes written by [`QuantizedVectors::write`] for a column of `dim` values and
    /// `len` offsets (mapped when the file is). Errors name what does not fit.
    pub fn open(
        file: Arc<FileBytes>,
        distance: Distance,
        dim: usize,
        len: usize,
    ) -> Result<QuantizedVectors, String> {
        let bytes = file.bytes();
        if bytes.len() < HEADER_WORDS * 4 {
            return Err("the header is truncated".into());
        }
        let h: Vec<u32> = bytes[..HEADER_WORDS * 4]
            .chunks_exact(4)
            .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
            .collect();
        if h[0] != MAGIC || h[1] != FORMAT {
            return Err("not a codes file of this format".into());
        }
        if h[2] as usize != dim || h[3] as usize != len {
            return Err(format!(
                "holds {} x {} codes, the column has {len} x {dim}",
                h[3], h[2]
            ));
        }
        let expected = len
            .checked_add(HEADER_WORDS)
            .and_then(|words| words.checked_mul(4))
            .zip(len.checked_mul(dim))
            .and_then(|(head, codes)| head.checked_add(codes));
        if expected != Some(bytes.len()) {
            return Err(format!(
                "{} bytes, expected {len} x {dim} codes",
                bytes.len()
            ));
        }
        let (alpha, offset) = (f32::from_bits(h[4]), f32::from_bits(h[5]));
        if !alpha.is_finite() || alpha <= 0.0 || !offset.is_finite() {
            return Err("the code scale is not a positive finite number".into());
        }
        let quantile = Some(f32::from_bits(h[6])).filter(|q| !q.is_nan());
        Ok(QuantizedVectors {
            distance,
            dim,
            len,
            alpha,
            offset,
            quantile,
            bytes: file,
        })
    }

    /// The quantile the codes were built with: a segment whose configuration asks for
    /// another is quantized again.
    pub fn quantile(&self) -> Option<f32> {
        self.quantile
    }

    /// Whether the codes are read from a mapped file.
    pub fn is_mapped(&self) -> bool {
        self.bytes.is_mapped()
    }

    fn codes_at(&self) -> usize {
        (HEADER_WORDS + self.len) * 4
    }

    /// The codes of offset `o`.
    #[inline]
    pub fn codes(&self, o: u32) -> &[u8] {
        let at = self.codes_at() + o as usize * self.dim;
        &self.bytes.bytes()[at..at + self.dim]
    }

    #[inline]
    fn term(&self, o: u32) -> f32 {
        let at = (HEADER_WORDS + o as usize) * 4;
        let b = &self.bytes.bytes()[at..at + 4];
        f32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }

    /// The query in this segment's codes.
    pub fn encode_query(&self, query: &[f32]) -> QueryCodes {
        let mut codes = vec![0u8; self.dim];
        encode_into(query, self.offset, self.alpha, &mut codes);
        let term = term(&codes, self.offset, self.alpha);
        QueryCodes { codes, term }
    }

    /// The approximate score of offset `o` for the query, as [`Distance::score`] reports it.
    #[inline]
    pub fn score(&self, query: &QueryCodes, o: u32) -> f32 {
        let stored = self.codes(o);
        let a = self.alpha;
        match self.distance {
            Distance::Cosine | Distance::Dot => {
                a * a * kernels::dot_u8(&query.codes, stored) as f32 + query.term + self.term(o)
            }
            Distance::Euclid => {
                (a * a * kernels::squared_euclid_u8(&query.codes, stored) as f32).sqrt()
            }
            Distance::Manhattan => a * kernels::manhattan_u8(&query.codes, stored) as f32,
        }
    }

    /// The approximate graph distance of offset `o` from the query: ordered as
    /// `GraphDistance` orders the original vectors (smaller is closer).
    #[inline]
    pub fn graph_distance(&self, query: &QueryCodes, o: u32) -> f32 {
        let stored = self.codes(o);
        let a = self.alpha;
        let d = match self.distance {
            Distance::Cosine => {
                1.0 - (a * a * kernels::dot_u8(&query.codes, stored) as f32
                    + query.term
                    + self.term(o))
            }
            Distance::Dot => {
                -(a * a * kernels::dot_u8(&query.codes, stored) as f32 + query.term + self.term(o))
            }
            Distance::Euclid => a * a * kernels::squared_euclid_u8(&query.codes, stored) as f32,
            Distance::Manhattan => a * kernels::manhattan_u8(&query.codes, stored) as f32,
        };
        if d.is_nan() { f32::MAX } else { d }
    }

    /// Starts loading the codes of offset `o` (see [`kernels::prefetch`]).
    #[inline]
    pub fn prefetch(&self, o: u32) {
        kernels::prefetch_bytes(self.codes(o));
    }
}

/// `round((v - offset) / alpha)` clamped to a byte, for each value.
fn encode_into(v: &[f32], offset: f32, alpha: f32, out: &mut [u8]) {
    let inv = 1.0 / alpha;
    for (c, x) in out.iter_mut().zip(v) {
        *c = ((x - offset) * inv).round().clamp(0.0, 255.0) as u8;
    }
}

/// The per-vector term of a dot product over codes: `alpha * offset * sum(q) + dim *
/// offset^2 / 2`.
fn term(codes: &[u8], offset: f32, alpha: f32) -> f32 {
    let sum: u64 = codes.iter().map(|&c| c as u64).sum();
    alpha * offset * sum as f32 + codes.len() as f32 * offset * offset / 2.0
}

/// The code range's bounds: every value's minimum and maximum, or the central `quantile` of
/// about [`QUANTILE_SAMPLE_VALUES`] values of evenly spaced vectors.
fn bounds<'v>(
    dim: usize,
    len: usize,
    quantile: Option<f32>,
    vector: &impl Fn(usize) -> Option<&'v [f32]>,
) -> (f32, f32) {
    let finite = |x: &&f32| x.is_finite();
    match quantile.filter(|q| *q < 1.0) {
        None => {
            let (mut low, mut high) = (f32::INFINITY, f32::NEG_INFINITY);
            for v in (0..len).filter_map(vector) {
                for &x in v.iter().filter(finite) {
                    low = low.min(x);
                    high = high.max(x);
                }
            }
            if low > high { (0.0, 0.0) } else { (low, high) }
        }
        Some(q) => {
            let vectors = (QUANTILE_SAMPLE_VALUES / dim.max(1)).max(1);
            let step = len.div_ceil(vectors).max(1);
            let mut values: Vec<f32> = (0..len)
                .step_by(step)
                .filter_map(vector)
                .flat_map(|v| v.iter().filter(finite).copied())
                .collect();
            if values.is_empty() || dim == 0 {
                return (0.0, 0.0);
            }
            let n = values.len();
            let cut = ((1.0 - q as f64) / 2.0 * n as f64) as usize;
            let lo_at = cut.min(n - 1);
            let hi_at = (n - 1).saturating_sub(cut).max(lo_at);
            let (_, low, _) = values.select_nth_unstable_by(lo_at, f32::total_cmp);
            let low = *low;
            let (_, high, _) = values.select_nth_unstable_by(hi_at, f32::total_cmp);
            (low, *high)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    fn random(n: usize, dim: usize, seed: u64, normalise: bool) -> Vec<Vec<f32>> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..n)
            .map(|_| {
                let mut v: Vec<f32> = (0..dim).map(|_| rng.random_range(-1.0..1.0)).collect();
                if normalise {
                    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                    v.iter_mut().for_each(|x| *x /= norm);
                }
                v
            })
            .collect()
    }

    /// Scores from codes track the exact scores within the quantization step for every
    /// distance, and the file round-trips byte for byte.
    #[test]
    fn scores_from_codes_track_exact_scores() {
        let dim = 64;
        for distance in [
            Distance::Cosine,
            Distance::Dot,
            Distance::Euclid,
            Distance::Manhattan,
        ] {
            let normalise = distance == Distance::Cosine;
            let points = random(300, dim, 7, normalise);
            let q = QuantizedVectors::build(distance, dim, points.len(), None, |o| {
                (o % 10 != 3).then(|| points[o].as_slice())
            });
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("q.u8");
            let crc = q.write(&path).unwrap();
            assert_eq!(mapped::checksum_file(&path).unwrap().0, crc);
            let opened = QuantizedVectors::open(
                FileBytes::open(&path, true).unwrap(),
                distance,
                dim,
                points.len(),
            )
            .unwrap();
            assert!(opened.is_mapped());
            for query in random(20, dim, 11, normalise) {
                let codes = q.encode_query(&query);
                let reopened = opened.encode_query(&query);
                for (o, p) in points.iter().enumerate() {
                    if o % 10 == 3 {
                        continue;
                    }
                    let exact = distance.score(&query, p);
                    let approx = q.score(&codes, o as u32);
                    assert_eq!(approx, opened.score(&reopened, o as u32));
                    // Each value is off by at most half a step, independently: over `dim`
                    // values the errors add up like a random walk, a few steps times
                    // sqrt(dim) (a biased rounding would add up linearly and fail this).
                    let bound = 3.0 * q.alpha * (dim as f32).sqrt();
                    assert!(
                        (approx - exact).abs() <= bound,
                        "{distance:?}: {approx} vs {exact} (bound {bound})"
                    );
                }
            }
        }
    }

    /// Ranking by codes keeps the true nearest neighbours near the top: the exact top 10 is
    /// within the codes' top 30 for nearly every query.
    #[test]
    fn codes_rank_true_neighbours_near_the_top() {
        let dim = 96;
        let points = random(2_000, dim, 3, false);
        let q = QuantizedVectors::build(Distance::Euclid, dim, points.len(), Some(0.99), |o| {
            Some(points[o].as_slice())
        });
        assert_eq!(q.quantile(), Some(0.99));
        let mut found = 0;
        let queries = random(30, dim, 5, false);
        for query in &queries {
            let mut exact: Vec<(f32, usize)> = points
                .iter()
                .enumerate()
                .map(|(o, p)| (Distance::Euclid.score(query, p), o))
                .collect();
            exact.sort_by(|a, b| a.0.total_cmp(&b.0));
            let codes = q.encode_query(query);
            let mut approx: Vec<(f32, usize)> = (0..points.len())
                .map(|o| (q.graph_distance(&codes, o as u32), o))
                .collect();
            approx.sort_by(|a, b| a.0.total_cmp(&b.0));
            let top30: Vec<usize> = approx[..30].iter().map(|x| x.1).collect();
            found += exact[..10]
                .iter()
                .filter(|(_, o)| top30.contains(o))
                .count();
        }
        assert!(
            found as f64 >= 0.98 * (10 * queries.len()) as f64,
            "{found} of {}",
            10 * queries.len()
        );
    }

    #[test]
    fn a_damaged_or_mismatched_codes_file_is_refused() {
        let points = random(10, 8, 1, false);
        let q = QuantizedVectors::build(Distance::Dot, 8, 10, None, |o| Some(points[o].as_slice()));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.u8");
        q.write(&path).unwrap();
        let open = |dim, len| {
            QuantizedVectors::open(
                FileBytes::open(&path, false).unwrap(),
                Distance::Dot,
                dim,
                len,
            )
        };
        assert!(open(8, 10).is_ok());
        assert!(open(9, 10).is_err());
        assert!(open(8, 11).is_err());
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.truncate(bytes.len() - 1);
        std::fs::write(&path, &bytes).unwrap();
        assert!(open(8, 10).is_err());
        std::fs::write(&path, b"SHG1 not codes").unwrap();
        assert!(open(8, 10).is_err());
    }

    #[test]
    fn constant_and_empty_columns_quantize_without_dividing_by_zero() {
        let same = vec![0.5f32; 4];
        let q = QuantizedVectors::build(Distance::Euclid, 4, 3, None, |_| Some(same.as_slice()));
        let codes = q.encode_query(&same);
        assert_eq!(q.score(&codes, 1), 0.0);
        let none = QuantizedVectors::build(Distance::Dot, 4, 3, Some(0.9), |_| None);
        assert!(none.score(&none.encode_query(&same), 0).is_finite());
    }
}
