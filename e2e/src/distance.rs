//! Distance functions with Qdrant's semantics, used to compute exact answers locally.
//!
//! Qdrant scores Cosine as the dot product of normalised vectors and Dot as the raw dot
//! product (both: higher is better); Euclid and Manhattan are reported as distances
//! (lower is better). [`Distance::cost`] folds both into "lower is better" for ranking.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Distance {
    Cosine,
    Dot,
    Euclid,
    Manhattan,
}

impl Distance {
    /// The spelling used in the Qdrant REST API.
    pub fn as_str(self) -> &'static str {
        match self {
            Distance::Cosine => "Cosine",
            Distance::Dot => "Dot",
            Distance::Euclid => "Euclid",
            Distance::Manhattan => "Manhattan",
        }
    }

    /// Whether a larger score means a closer match (similarities) or a smaller one (distances).
    pub fn higher_is_better(self) -> bool {
        matches!(self, Distance::Cosine | Distance::Dot)
    }

    /// Whether the server stores vectors normalised (so raw vectors read back differ).
    pub fn normalises_vectors(self) -> bool {
        self == Distance::Cosine
    }

    /// The score Qdrant would report for `a` against `b`.
    ///
    /// For Cosine this normalises both sides on every call; bulk callers should
    /// normalise once and use [`Distance::Dot`] instead (see [`crate::ExactIndex`]).
    pub fn score(self, a: &[f32], b: &[f32]) -> f32 {
        debug_assert_eq!(a.len(), b.len());
        match self {
            Distance::Cosine => {
                let (na, nb) = (norm(a), norm(b));
                if na == 0.0 || nb == 0.0 {
                    0.0
                } else {
                    dot(a, b) / (na * nb)
                }
            }
            Distance::Dot => dot(a, b),
            Distance::Euclid => a
                .iter()
                .zip(b)
                .map(|(x, y)| (x - y) * (x - y))
                .sum::<f32>()
                .sqrt(),
            Distance::Manhattan => a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum(),
        }
    }

    /// Qdrant's internal score, where larger is always closer: what MaxSim adds up over
    /// sub-vectors. Cosine and Dot as [`Distance::score`]; Euclid the *squared* distance and
    /// Manhattan the distance, both negated.
    pub fn similarity(self, a: &[f32], b: &[f32]) -> f32 {
        match self {
            Distance::Cosine | Distance::Dot => self.score(a, b),
            Distance::Euclid => -a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f32>(),
            Distance::Manhattan => -self.score(a, b),
        }
    }

    /// Ranking key where lower is always better, so one top-k routine serves every metric.
    pub fn cost(self, score: f32) -> f32 {
        if self.higher_is_better() {
            -score
        } else {
            score
        }
    }
}

impl fmt::Display for Distance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Distance {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "cosine" => Ok(Distance::Cosine),
            "dot" => Ok(Distance::Dot),
            "euclid" | "euclidean" => Ok(Distance::Euclid),
            "manhattan" => Ok(Distance::Manhattan),
            _ => Err(format!(
                "unknown distance `{s}`; expected one of Cosine, Dot, Euclid, Manhattan"
            )),
        }
    }
}

pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

pub fn norm(a: &[f32]) -> f32 {
    dot(a, a).sqrt()
}

/// Scales `v` to unit length in place; a zero vector stays zero (Qdrant does the same).
pub fn normalise(v: &mut [f32]) {
    let n = norm(v);
    if n > 0.0 {
        v.iter_mut().for_each(|x| *x /= n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_match_hand_computed_values() {
        let a = [1.0, 0.0];
        let b = [3.0, 4.0];
        assert_eq!(Distance::Dot.score(&a, &b), 3.0);
        assert!((Distance::Cosine.score(&a, &b) - 0.6).abs() < 1e-6);
        assert!((Distance::Euclid.score(&a, &b) - 20f32.sqrt()).abs() < 1e-6);
        assert_eq!(Distance::Manhattan.score(&a, &b), 6.0);
    }

    #[test]
    fn cost_orders_closer_first_for_every_metric() {
        let q = [1.0, 1.0];
        let near = [1.1, 0.9];
        let far = [-1.0, 0.5];
        for d in [
            Distance::Cosine,
            Distance::Dot,
            Distance::Euclid,
            Distance::Manhattan,
        ] {
            assert!(
                d.cost(d.score(&q, &near)) < d.cost(d.score(&q, &far)),
                "{d} ranks the far vector first"
            );
        }
    }

    #[test]
    fn similarity_is_larger_for_closer_vectors() {
        let a = [1.0, 0.0];
        let b = [3.0, 4.0];
        assert_eq!(Distance::Dot.similarity(&a, &b), 3.0);
        assert!((Distance::Cosine.similarity(&a, &b) - 0.6).abs() < 1e-6);
        assert_eq!(Distance::Euclid.similarity(&a, &b), -20.0);
        assert_eq!(Distance::Manhattan.similarity(&a, &b), -6.0);
    }

    #[test]
    fn parses_api_spellings() {
        assert_eq!("Cosine".parse::<Distance>(), Ok(Distance::Cosine));
        assert_eq!("euclid".parse::<Distance>(), Ok(Distance::Euclid));
        assert!("hamming".parse::<Distance>().is_err());
        assert_eq!(Distance::Dot.to_string(), "Dot");
    }

    #[test]
    fn normalise_keeps_zero_vector() {
        let mut z = [0.0f32; 3];
        normalise(&mut z);
        assert_eq!(z, [0.0; 3]);
        let mut v = [3.0f32, 4.0];
        normalise(&mut v);
        assert!((norm(&v) - 1.0).abs() < 1e-6);
    }
}
