//! The vocabulary every layer shares: point ids, payloads, vectors and the distance functions a
//! collection can be configured with. Nothing in here knows about storage, shards or the API.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

/// A point's payload: a JSON object.
pub type Payload = serde_json::Map<String, serde_json::Value>;

/// A dense vector.
pub type Vector = Vec<f32>;

/// The name of the unnamed vector: a collection created with one `VectorParams` (not a map)
/// holds its vector under this name, as Qdrant does.
pub const DEFAULT_VECTOR: &str = "";

/// A sparse vector as Qdrant defines it: parallel lists of dimension indices and their values.
///
/// Stored sorted by index with no duplicates (see [`SparseVector::new`]), so that dot products
/// are a merge of two sorted lists.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct SparseVector {
    pub indices: Vec<u32>,
    pub values: Vec<f32>,
}

impl SparseVector {
    /// Checks a sparse vector as a client sent it and sorts it by index.
    ///
    /// Errors (Qdrant's validation): `indices` and `values` of different lengths, a repeated
    /// index, or a value that is not finite.
    pub fn new(indices: Vec<u32>, values: Vec<f32>) -> Result<SparseVector, String> {
        if indices.len() != values.len() {
            return Err(format!(
                "sparse vector has {} indices but {} values: they must have the same length",
                indices.len(),
                values.len()
            ));
        }
        if values.iter().any(|v| !v.is_finite()) {
            return Err("sparse vector values must be finite numbers".into());
        }
        let mut pairs: Vec<(u32, f32)> = indices.into_iter().zip(values).collect();
        pairs.sort_by_key(|p| p.0);
        if pairs.windows(2).any(|w| w[0].0 == w[1].0) {
            return Err("sparse vector indices must be unique".into());
        }
        Ok(SparseVector {
            indices: pairs.iter().map(|p| p.0).collect(),
            values: pairs.iter().map(|p| p.1).collect(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }

    /// The dot product over the indices both vectors have, each weighted by `weight(index)`
    /// (1 without an IDF modifier). Both must be sorted by index.
    pub fn weighted_dot(&self, other: &SparseVector, weight: impl Fn(u32) -> f32) -> f32 {
        let (mut i, mut j, mut sum) = (0, 0, 0.0f32);
        while i < self.indices.len() && j < other.indices.len() {
            match self.indices[i].cmp(&other.indices[j]) {
                std::cmp::Ordering::Less => i += 1,
                std::cmp::Ordering::Greater => j += 1,
                std::cmp::Ordering::Equal => {
                    sum += weight(self.indices[i]) * self.values[i] * other.values[j];
                    i += 1;
                    j += 1;
                }
            }
        }
        sum
    }

    /// Whether the two vectors share at least one index.
    pub fn overlaps(&self, other: &SparseVector) -> bool {
        let (mut i, mut j) = (0, 0);
        while i < self.indices.len() && j < other.indices.len() {
            match self.indices[i].cmp(&other.indices[j]) {
                std::cmp::Ordering::Less => i += 1,
                std::cmp::Ordering::Greater => j += 1,
                std::cmp::Ordering::Equal => return true,
            }
        }
        false
    }
}

/// One vector of a point: dense, sparse, or a multivector (a list of dense vectors of the same
/// size, scored with MaxSim).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum VectorData {
    Dense(Vec<f32>),
    Sparse(SparseVector),
    Multi(Vec<Vec<f32>>),
}

impl VectorData {
    /// The kind's name, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            VectorData::Dense(_) => "dense",
            VectorData::Sparse(_) => "sparse",
            VectorData::Multi(_) => "multi",
        }
    }
}

/// A point's vectors by name; the unnamed vector is [`DEFAULT_VECTOR`]. A point may lack any
/// of its collection's vectors.
pub type NamedVectors = std::collections::BTreeMap<String, VectorData>;

/// A borrowed view of a stored vector.
#[derive(Debug, Clone, Copy)]
pub enum VectorRef<'a> {
    Dense(&'a [f32]),
    Sparse(&'a SparseVector),
    /// A multivector, its sub-vectors of `dim` values each laid end to end.
    Multi {
        flat: &'a [f32],
        dim: usize,
    },
}

impl VectorRef<'_> {
    pub fn to_owned(self) -> VectorData {
        match self {
            VectorRef::Dense(v) => VectorData::Dense(v.to_vec()),
            VectorRef::Sparse(s) => VectorData::Sparse(s.clone()),
            VectorRef::Multi { flat, dim } => {
                VectorData::Multi(flat.chunks_exact(dim.max(1)).map(<[f32]>::to_vec).collect())
            }
        }
    }
}

/// The id of a point, as Qdrant defines it: an unsigned integer or a UUID.
///
/// Ordering puts every integer id before every UUID, the order a scroll returns points in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PointId {
    Num(u64),
    Uuid(Uuid),
}

impl PointId {
    /// A stable 64-bit hash of the id, used to route points to shards. It must never change:
    /// the placement of every stored point depends on it.
    pub fn stable_hash(&self) -> u64 {
        // FNV-1a over a tagged byte encoding: small, fast and fully specified.
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |byte: u8| {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        };
        match self {
            PointId::Num(n) => {
                eat(0);
                n.to_le_bytes().into_iter().for_each(&mut eat);
            }
            PointId::Uuid(u) => {
                eat(1);
                u.as_bytes().iter().copied().for_each(&mut eat);
            }
        }
        hash
    }
}

impl fmt::Display for PointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PointId::Num(n) => write!(f, "{n}"),
            PointId::Uuid(u) => write!(f, "{u}"),
        }
    }
}

impl FromStr for PointId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(n) = s.parse::<u64>() {
            return Ok(PointId::Num(n));
        }
        Uuid::parse_str(s).map(PointId::Uuid).map_err(|_| {
            format!("`{s}` is not a valid point id: expected an unsigned integer or a UUID")
        })
    }
}

impl From<u64> for PointId {
    fn from(n: u64) -> Self {
        PointId::Num(n)
    }
}

/// The form of a point id in binary formats (WAL records, the point store, gRPC blobs), which
/// cannot tell an integer from a string by looking.
#[derive(Serialize, Deserialize)]
enum BinaryPointId {
    Num(u64),
    Uuid([u8; 16]),
}

impl Serialize for PointId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if !serializer.is_human_readable() {
            let binary = match self {
                PointId::Num(n) => BinaryPointId::Num(*n),
                PointId::Uuid(u) => BinaryPointId::Uuid(*u.as_bytes()),
            };
            return binary.serialize(serializer);
        }
        match self {
            PointId::Num(n) => serializer.serialize_u64(*n),
            PointId::Uuid(u) => serializer.collect_str(u),
        }
    }
}

impl<'de> Deserialize<'de> for PointId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if !deserializer.is_human_readable() {
            return Ok(match BinaryPointId::deserialize(deserializer)? {
                BinaryPointId::Num(n) => PointId::Num(n),
                BinaryPointId::Uuid(bytes) => PointId::Uuid(Uuid::from_bytes(bytes)),
            });
        }
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = PointId;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an unsigned integer or a UUID string")
            }

            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<PointId, E> {
                Ok(PointId::Num(v))
            }

            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<PointId, E> {
                u64::try_from(v)
                    .map(PointId::Num)
                    .map_err(|_| E::custom(format!("point id {v} is negative")))
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<PointId, E> {
                Uuid::parse_str(v)
                    .map(PointId::Uuid)
                    .map_err(|_| E::custom(format!("`{v}` is not a valid UUID point id")))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// How vectors of a collection are compared. The score a search returns is Qdrant's: higher is
/// better for `Cosine` and `Dot`, lower is better for `Euclid` and `Manhattan`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Distance {
    Cosine,
    Dot,
    Euclid,
    Manhattan,
}

impl Distance {
    /// Whether a larger score means a closer point.
    pub fn higher_is_better(self) -> bool {
        matches!(self, Distance::Cosine | Distance::Dot)
    }

    /// Brings a vector into the form it is stored in: Cosine vectors are normalised once, on
    /// the way in, so that scoring is a plain dot product.
    pub fn preprocess(self, vector: &mut [f32]) {
        if self == Distance::Cosine {
            let norm = dot(vector, vector).sqrt();
            if norm > f32::EPSILON {
                vector.iter_mut().for_each(|x| *x /= norm);
            }
        }
    }

    /// The score of `stored` for the (preprocessed) `query`.
    pub fn score(self, query: &[f32], stored: &[f32]) -> f32 {
        match self {
            Distance::Cosine | Distance::Dot => dot(query, stored),
            Distance::Euclid => squared_euclid(query, stored).sqrt(),
            Distance::Manhattan => manhattan(query, stored),
        }
    }

    /// The score oriented so that larger is closer, for every distance: the similarity that
    /// recommendation strategies and MaxSim add up (Qdrant's internal score: negated distances
    /// for `Euclid` and `Manhattan`, the squared distance for `Euclid`).
    pub fn similarity(self, query: &[f32], stored: &[f32]) -> f32 {
        match self {
            Distance::Cosine | Distance::Dot => dot(query, stored),
            Distance::Euclid => -squared_euclid(query, stored),
            Distance::Manhattan => -manhattan(query, stored),
        }
    }

    /// Qdrant's MaxSim: for each query sub-vector, the best [`similarity`](Self::similarity)
    /// to any stored sub-vector, summed. Both are `dim`-sized sub-vectors laid end to end.
    pub fn max_sim(self, query: &[f32], stored: &[f32], dim: usize) -> f32 {
        let dim = dim.max(1);
        self.max_sim_rows(query.chunks_exact(dim), stored.chunks_exact(dim))
    }

    /// [`max_sim`](Self::max_sim) over sub-vectors given as rows, however they are held.
    pub fn max_sim_rows<'a, 'b>(
        self,
        query: impl IntoIterator<Item = &'a [f32]>,
        stored: impl Iterator<Item = &'b [f32]> + Clone,
    ) -> f32 {
        query
            .into_iter()
            .map(|q| {
                stored
                    .clone()
                    .map(|s| self.similarity(q, s))
                    .fold(f32::NEG_INFINITY, f32::max)
            })
            .sum()
    }

    /// Whether score `a` ranks before score `b`.
    pub fn is_better(self, a: f32, b: f32) -> bool {
        if self.higher_is_better() {
            a > b
        } else {
            a < b
        }
    }

    /// Whether `score` passes a Qdrant `score_threshold` (a minimum for similarities, a maximum
    /// for distances).
    pub fn passes_threshold(self, score: f32, threshold: f32) -> bool {
        if self.higher_is_better() {
            score >= threshold
        } else {
            score <= threshold
        }
    }
}

pub use crate::kernels::{dot, manhattan, squared_euclid};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn point_ids_parse_and_order_like_qdrant() {
        let uuid: PointId = "550e8400-e29b-41d4-a716-446655440000".parse().unwrap();
        assert_eq!("42".parse::<PointId>().unwrap(), PointId::Num(42));
        assert!(PointId::Num(u64::MAX) < uuid);
        assert!("-1".parse::<PointId>().is_err());
        let json: PointId = serde_json::from_str("7").unwrap();
        assert_eq!(json, PointId::Num(7));
        assert!(serde_json::from_str::<PointId>("-7").is_err());
        assert!(serde_json::from_str::<PointId>("\"nope\"").is_err());
        assert_eq!(
            serde_json::to_string(&uuid).unwrap(),
            "\"550e8400-e29b-41d4-a716-446655440000\""
        );
    }

    #[test]
    fn stable_hash_is_stable() {
        // Changing these values would re-route every stored point: they are part of the format.
        assert_eq!(PointId::Num(0).stable_hash(), PointId::Num(0).stable_hash());
        assert_ne!(PointId::Num(1).stable_hash(), PointId::Num(2).stable_hash());
    }

    #[test]
    fn cosine_vectors_are_normalised() {
        let mut v = vec![3.0, 4.0];
        Distance::Cosine.preprocess(&mut v);
        assert!((v[0] - 0.6).abs() < 1e-6 && (v[1] - 0.8).abs() < 1e-6);
        let mut zero = vec![0.0, 0.0];
        Distance::Cosine.preprocess(&mut zero);
        assert_eq!(zero, vec![0.0, 0.0]);
    }
}
