//! Request and response bodies of the REST API, in Qdrant's JSON shapes
//! (`qdrant-openapi-v1.18.3.json`). Inputs are deserialised leniently where Qdrant is lenient
//! (unknown fields are ignored) and strictly where a mistake would silently change meaning.

use std::collections::HashMap;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::cluster::collection::ShardKeySelector;
use crate::collection_config::{
    CollectionConfig, HnswConfigDiff, OptimizersConfigDiff, ShardingMethod, VectorParams,
    WalConfigDiff,
};
use crate::index::filter::Filter;
use crate::index::payload_selector::{WithPayload, WithVector};
use crate::types::{Payload, PointId};

// ---- limits ---------------------------------------------------------------------------------

/// Largest `limit + offset` of a search or query. Windows beyond the graph's reach are answered
/// by an exhaustive scan, whose cost is bounded by the collection's size.
pub const MAX_SEARCH_WINDOW: usize = 100_000;
/// Largest page of a scroll (a larger `limit` gets this many and a `next_page_offset`), and
/// most ids in one retrieve.
pub const MAX_PAGE: usize = 10_000;
/// Most searches in one batch request.
pub const MAX_BATCH_SEARCHES: usize = 256;
/// Most points in one upsert.
pub const MAX_UPSERT_POINTS: usize = 100_000;
/// Largest `hnsw_ef`.
pub const MAX_HNSW_EF: usize = 10_000;
/// Most example points in one recommendation.
pub const MAX_EXAMPLES: usize = 1_000;

// ---- collections ----------------------------------------------------------------------------

/// `vectors` of a create request: one unnamed vector, or named ones (which Shoal refuses).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum VectorsConfig {
    Single(VectorParams),
    Named(HashMap<String, VectorParams>),
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct CreateCollection {
    pub vectors: Option<VectorsConfig>,
    pub shard_number: Option<u32>,
    pub sharding_method: Option<ShardingMethod>,
    pub replication_factor: Option<u32>,
    pub write_consistency_factor: Option<u32>,
    pub on_disk_payload: Option<bool>,
    pub hnsw_config: Option<HnswConfigDiff>,
    pub wal_config: Option<WalConfigDiff>,
    pub optimizers_config: Option<OptimizersConfigDiff>,
    pub quantization_config: Option<Value>,
    pub sparse_vectors: Option<HashMap<String, Value>>,
    pub init_from: Option<Value>,
}

#[derive(Debug, Serialize)]
pub struct CollectionInfo {
    pub status: &'static str,
    pub optimizer_status: &'static str,
    pub indexed_vectors_count: usize,
    pub points_count: usize,
    pub segments_count: usize,
    pub config: CollectionConfig,
    pub payload_schema: serde_json::Map<String, Value>,
}

#[derive(Debug, Serialize)]
pub struct CollectionDescription {
    pub name: String,
}

#[derive(Debug, Serialize)]
pub struct CollectionsResponse {
    pub collections: Vec<CollectionDescription>,
}

#[derive(Debug, Serialize)]
pub struct CollectionExistence {
    pub exists: bool,
}

// ---- points ---------------------------------------------------------------------------------

/// A vector as a client sends it: a plain list, or `{"": [...]}` for the unnamed vector.
#[derive(Debug, Clone)]
pub struct DenseVector(pub Vec<f32>);

impl<'de> Deserialize<'de> for DenseVector {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // A visitor rather than a detour through `serde_json::Value`: upserts carry millions of
        // numbers, and each would otherwise be boxed first.
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = DenseVector;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a vector: a list of numbers")
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<DenseVector, A::Error> {
                let mut out = Vec::with_capacity(
                    seq.size_hint()
                        .unwrap_or(0)
                        .min(crate::collection_config::MAX_VECTOR_SIZE),
                );
                while let Some(x) = seq.next_element::<f32>()? {
                    if out.len() >= crate::collection_config::MAX_VECTOR_SIZE {
                        return Err(serde::de::Error::custom(
                            "vector is longer than the largest supported size",
                        ));
                    }
                    out.push(x);
                }
                Ok(DenseVector(out))
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<DenseVector, A::Error> {
                use serde::de::Error;
                let mut found = None;
                while let Some(key) = map.next_key::<String>()? {
                    if !key.is_empty() || found.is_some() {
                        return Err(A::Error::custom(
                            "named, sparse and multi-vectors are not supported: send the point's vector as a list of numbers",
                        ));
                    }
                    found = Some(map.next_value::<DenseVector>()?);
                }
                found.ok_or_else(|| {
                    A::Error::custom("expected a vector (a list of numbers), got an empty object")
                })
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct PointStruct {
    pub id: PointId,
    pub vector: DenseVector,
    #[serde(default)]
    pub payload: Option<Payload>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Batch {
    pub ids: Vec<PointId>,
    pub vectors: Vec<DenseVector>,
    #[serde(default)]
    pub payloads: Option<Vec<Option<Payload>>>,
}

/// The body of an upsert: `{"points": [...]}` or `{"batch": {...}}`, with an optional
/// `shard_key`.
#[derive(Debug, Clone)]
pub struct PointInsertOperations {
    pub points: PointInsert,
    pub shard_key: Option<ShardKeySelector>,
}

#[derive(Debug, Clone)]
pub enum PointInsert {
    Points(Vec<PointStruct>),
    Batch(Batch),
}

impl<'de> Deserialize<'de> for PointInsertOperations {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        #[derive(Deserialize)]
        struct Raw {
            points: Option<Vec<PointStruct>>,
            batch: Option<Batch>,
            #[serde(default)]
            shard_key: Option<ShardKeySelector>,
        }
        let raw = Raw::deserialize(deserializer)?;
        let shard_key = raw.shard_key;
        match (raw.points, raw.batch) {
            (Some(points), None) => Ok(PointInsertOperations {
                points: PointInsert::Points(points),
                shard_key,
            }),
            (None, Some(batch)) => Ok(PointInsertOperations {
                points: PointInsert::Batch(batch),
                shard_key,
            }),
            (Some(_), Some(_)) => Err(D::Error::custom(
                "give either `points` or `batch`, not both",
            )),
            (None, None) => Err(D::Error::custom("missing field `points` (or `batch`)")),
        }
    }
}

/// Points chosen by id list or by filter, as in delete and payload requests.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PointsSelector {
    pub points: Option<Vec<PointId>>,
    pub filter: Option<Filter>,
    #[serde(default)]
    pub shard_key: Option<ShardKeySelector>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SetPayload {
    pub payload: Payload,
    pub points: Option<Vec<PointId>>,
    pub filter: Option<Filter>,
    pub key: Option<String>,
    #[serde(default)]
    pub shard_key: Option<ShardKeySelector>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DeletePayload {
    pub keys: Vec<String>,
    pub points: Option<Vec<PointId>>,
    pub filter: Option<Filter>,
    #[serde(default)]
    pub shard_key: Option<ShardKeySelector>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub struct WaitParam {
    pub wait: Option<bool>,
}

#[derive(Debug, Serialize)]
pub struct UpdateResult {
    pub operation_id: u64,
    pub status: &'static str,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PointRequest {
    pub ids: Vec<PointId>,
    pub with_payload: Option<WithPayload>,
    pub with_vector: Option<WithVector>,
    #[serde(default)]
    pub shard_key: Option<ShardKeySelector>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ScrollRequest {
    pub offset: Option<PointId>,
    pub limit: Option<usize>,
    pub filter: Option<Filter>,
    pub with_payload: Option<WithPayload>,
    pub with_vector: Option<WithVector>,
    pub order_by: Option<Value>,
    #[serde(default)]
    pub shard_key: Option<ShardKeySelector>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct CountRequest {
    pub filter: Option<Filter>,
    pub exact: Option<bool>,
    #[serde(default)]
    pub shard_key: Option<ShardKeySelector>,
}

#[derive(Debug, Serialize)]
pub struct CountResult {
    pub count: usize,
}

#[derive(Debug, Serialize)]
pub struct RecordOut {
    pub id: PointId,
    pub payload: Option<Payload>,
    pub vector: Option<Vec<f32>>,
    pub shard_key: Option<Value>,
    pub order_value: Option<Value>,
}

#[derive(Debug, Serialize)]
pub struct ScrollResult {
    pub points: Vec<RecordOut>,
    pub next_page_offset: Option<PointId>,
}

#[derive(Debug, Serialize)]
pub struct ScoredPointOut {
    pub id: PointId,
    pub version: u64,
    pub score: f32,
    pub payload: Option<Payload>,
    pub vector: Option<Vec<f32>>,
    pub shard_key: Option<Value>,
    pub order_value: Option<Value>,
}

// ---- search, recommend, query -----------------------------------------------------------------

#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub struct SearchParams {
    pub hnsw_ef: Option<usize>,
    pub exact: Option<bool>,
    pub indexed_only: Option<bool>,
}

/// The `vector` of a search request: a list, or `{"name": "", "vector": [...]}`.
#[derive(Debug, Clone)]
pub struct NamedVectorStruct(pub Vec<f32>);

impl<'de> Deserialize<'de> for NamedVectorStruct {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let value = Value::deserialize(deserializer)?;
        if let Value::Object(map) = &value
            && let Some(vector) = map.get("vector")
        {
            if map
                .get("name")
                .and_then(Value::as_str)
                .is_some_and(|n| !n.is_empty())
            {
                return Err(D::Error::custom(
                    "named vectors are not supported: this collection has one unnamed vector",
                ));
            }
            return DenseVector::deserialize(vector.clone())
                .map(|v| NamedVectorStruct(v.0))
                .map_err(D::Error::custom);
        }
        DenseVector::deserialize(value)
            .map(|v| NamedVectorStruct(v.0))
            .map_err(D::Error::custom)
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct SearchRequest {
    pub vector: NamedVectorStruct,
    pub filter: Option<Filter>,
    pub params: Option<SearchParams>,
    #[serde(alias = "top")]
    pub limit: usize,
    pub offset: Option<usize>,
    pub with_payload: Option<WithPayload>,
    pub with_vector: Option<WithVector>,
    pub score_threshold: Option<f32>,
    #[serde(default)]
    pub shard_key: Option<ShardKeySelector>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SearchRequestBatch {
    pub searches: Vec<SearchRequest>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecommendStrategy {
    #[default]
    AverageVector,
    BestScore,
    SumScores,
}

/// An example in a recommendation or a query: a point id or a vector.
#[derive(Debug, Clone)]
pub enum VectorInput {
    Id(PointId),
    Vector(Vec<f32>),
}

impl<'de> Deserialize<'de> for VectorInput {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let value = Value::deserialize(deserializer)?;
        match &value {
            Value::Number(_) | Value::String(_) => PointId::deserialize(value)
                .map(VectorInput::Id)
                .map_err(D::Error::custom),
            _ => DenseVector::deserialize(value)
                .map(|v| VectorInput::Vector(v.0))
                .map_err(D::Error::custom),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct RecommendRequest {
    #[serde(default)]
    pub positive: Vec<VectorInput>,
    #[serde(default)]
    pub negative: Vec<VectorInput>,
    pub strategy: Option<RecommendStrategy>,
    pub filter: Option<Filter>,
    pub params: Option<SearchParams>,
    #[serde(alias = "top")]
    pub limit: usize,
    pub offset: Option<usize>,
    pub with_payload: Option<WithPayload>,
    pub with_vector: Option<WithVector>,
    pub score_threshold: Option<f32>,
    pub using: Option<String>,
    pub lookup_from: Option<Value>,
    #[serde(default)]
    pub shard_key: Option<ShardKeySelector>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RecommendRequestBatch {
    pub searches: Vec<RecommendRequest>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RecommendInput {
    #[serde(default)]
    pub positive: Vec<VectorInput>,
    #[serde(default)]
    pub negative: Vec<VectorInput>,
    pub strategy: Option<RecommendStrategy>,
}

/// The `query` of a universal query request.
#[derive(Debug, Clone)]
pub enum QueryInterface {
    Nearest(VectorInput),
    Recommend(RecommendInput),
}

impl<'de> Deserialize<'de> for QueryInterface {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let value = Value::deserialize(deserializer)?;
        if let Value::Object(map) = &value {
            if let Some(nearest) = map.get("nearest") {
                return VectorInput::deserialize(nearest.clone())
                    .map(QueryInterface::Nearest)
                    .map_err(D::Error::custom);
            }
            if let Some(recommend) = map.get("recommend") {
                return RecommendInput::deserialize(recommend.clone())
                    .map(QueryInterface::Recommend)
                    .map_err(D::Error::custom);
            }
            if let Some(kind) = map.keys().next()
                && [
                    "discover", "context", "order_by", "fusion", "rrf", "sample", "formula", "mmr",
                ]
                .contains(&kind.as_str())
            {
                return Err(D::Error::custom(format!(
                    "query `{kind}` is not supported by Shoal yet; use `nearest` or `recommend`"
                )));
            }
        }
        VectorInput::deserialize(value)
            .map(QueryInterface::Nearest)
            .map_err(D::Error::custom)
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct QueryRequest {
    pub prefetch: Option<Value>,
    pub query: Option<QueryInterface>,
    pub using: Option<String>,
    pub filter: Option<Filter>,
    pub params: Option<SearchParams>,
    pub score_threshold: Option<f32>,
    pub limit: Option<usize>,
    pub offset: Option<usize>,
    pub with_vector: Option<WithVector>,
    pub with_payload: Option<WithPayload>,
    pub lookup_from: Option<Value>,
    #[serde(default)]
    pub shard_key: Option<ShardKeySelector>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct QueryRequestBatch {
    pub searches: Vec<QueryRequest>,
}

#[derive(Debug, Serialize)]
pub struct QueryResponse {
    pub points: Vec<ScoredPointOut>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::rest::json_body::parse;
    use proptest::prelude::*;

    /// Arbitrary JSON, nested a few levels, with the keys the request models look for mixed in so
    /// that parsing gets past the first field.
    fn arb_json() -> impl Strategy<Value = Value> {
        let key = prop_oneof![
            Just("points".to_string()),
            Just("batch".to_string()),
            Just("vector".to_string()),
            Just("filter".to_string()),
            Just("must".to_string()),
            Just("key".to_string()),
            Just("match".to_string()),
            Just("limit".to_string()),
            Just("query".to_string()),
            Just("recommend".to_string()),
            Just("with_payload".to_string()),
            Just("".to_string()),
            "[a-z_]{1,8}",
        ];
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            "[a-z0-9 .\\[\\]-]{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::vec((key.clone(), inner), 0..6)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// No body, however odd, makes a request parser panic: it parses or gives a 400.
        #[test]
        fn request_parsers_never_panic(value in arb_json()) {
            let bytes = serde_json::to_vec(&value).unwrap();
            for result in [
                parse::<PointInsertOperations>(&bytes).err(),
                parse::<SearchRequest>(&bytes).err(),
                parse::<QueryRequest>(&bytes).err(),
                parse::<RecommendRequest>(&bytes).err(),
                parse::<ScrollRequest>(&bytes).err(),
                parse::<CountRequest>(&bytes).err(),
                parse::<PointsSelector>(&bytes).err(),
                parse::<SetPayload>(&bytes).err(),
                parse::<CreateCollection>(&bytes).err(),
            ].into_iter().flatten() {
                prop_assert_eq!(result.status, axum::http::StatusCode::BAD_REQUEST);
                prop_assert!(!result.message.is_empty());
            }
        }

        #[test]
        fn arbitrary_bytes_are_a_clean_400(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            if let Err(e) = parse::<SearchRequest>(&bytes) {
                prop_assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST);
            }
        }
    }

    #[test]
    fn vectors_parse_as_lists_or_the_unnamed_entry() {
        let v: DenseVector = serde_json::from_str("[1, 2.5, -3]").unwrap();
        assert_eq!(v.0, vec![1.0, 2.5, -3.0]);
        let v: DenseVector = serde_json::from_str(r#"{"": [0.5]}"#).unwrap();
        assert_eq!(v.0, vec![0.5]);
        assert!(serde_json::from_str::<DenseVector>(r#"{"text": [0.5]}"#).is_err());
        assert!(serde_json::from_str::<DenseVector>(r#"["a"]"#).is_err());
        let q: QueryInterface = serde_json::from_str(r#"{"nearest": 7}"#).unwrap();
        assert!(matches!(
            q,
            QueryInterface::Nearest(VectorInput::Id(PointId::Num(7)))
        ));
        let err = serde_json::from_str::<QueryInterface>(r#"{"fusion": "rrf"}"#).unwrap_err();
        assert!(err.to_string().contains("not supported"), "{err}");
    }
}
