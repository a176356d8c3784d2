//! Request and response bodies of the REST API, in Qdrant's JSON shapes
//! (`qdrant-openapi-v1.18.3.json`). Inputs are deserialised leniently where Qdrant is lenient
//! (unknown fields are ignored) and strictly where a mistake would silently change meaning.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::cluster::collection::ShardKeySelector;
use crate::cluster::shard_requests::WriteOrdering;
use crate::collection_config::{
    CollectionConfig, HnswConfigDiff, OptimizersConfigDiff, ShardingMethod, SparseVectorParams,
    StrictModeConfig, VectorsConfig, WalConfigDiff,
};
use crate::index::filter::Filter;
use crate::index::payload_selector::{WithPayload, WithVector};
use crate::shard::operations::UpdateMode;
use crate::types::{DEFAULT_VECTOR, NamedVectors, Payload, PointId, SparseVector, VectorData};

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
/// Largest `params.quantization.oversampling`: candidates taken from quantized codes per
/// result asked for.
pub const MAX_OVERSAMPLING: f64 = 100.0;
/// Most example points in one recommendation.
pub const MAX_EXAMPLES: usize = 1_000;

// ---- collections ----------------------------------------------------------------------------

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
    pub sparse_vectors: Option<BTreeMap<String, SparseVectorParams>>,
    pub strict_mode_config: Option<StrictModeConfig>,
    pub metadata: Option<serde_json::Map<String, Value>>,
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
    /// Qdrant's collection warnings: what the configuration asks for that Shoal does not do.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<CollectionWarning>,
}

#[derive(Debug, Serialize)]
pub struct CollectionWarning {
    pub message: String,
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

/// One vector as a client sends it: a list of numbers (dense), a list of lists (a
/// multivector) or `{"indices": [...], "values": [...]}` (sparse). Qdrant's `Vector`.
#[derive(Debug, Clone, PartialEq)]
pub struct VectorInputData(pub VectorData);

/// The first element of a list tells a dense vector from a multivector.
enum Element {
    Number(f32),
    List(Vec<f32>),
}

impl<'de> Deserialize<'de> for Element {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Element;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a number or a list of numbers")
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Element, E> {
                Ok(Element::Number(v as f32))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Element, E> {
                Ok(Element::Number(v as f32))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Element, E> {
                Ok(Element::Number(v as f32))
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<Element, E> {
                Err(E::custom(
                    "vectors must not contain NaN or infinite values (got null)",
                ))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<Element, A::Error> {
                DenseList::visit(seq).map(Element::List)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// A list of numbers, read without boxing each number.
struct DenseList;

impl DenseList {
    fn visit<'de, A: serde::de::SeqAccess<'de>>(mut seq: A) -> Result<Vec<f32>, A::Error> {
        let mut out = Vec::with_capacity(
            seq.size_hint()
                .unwrap_or(0)
                .min(crate::collection_config::MAX_VECTOR_SIZE),
        );
        while let Some(x) = seq.next_element::<Option<f32>>()? {
            let Some(x) = x else {
                return Err(serde::de::Error::custom(
                    "vectors must not contain NaN or infinite values (got null)",
                ));
            };
            if out.len() >= crate::collection_config::MAX_VECTOR_SIZE {
                return Err(serde::de::Error::custom(
                    "vector is longer than the largest supported size",
                ));
            }
            out.push(x);
        }
        Ok(out)
    }
}

impl<'de> Deserialize<'de> for VectorInputData {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = VectorInputData;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(
                    "a vector: a list of numbers, a list of lists of numbers, or {\"indices\": [...], \"values\": [...]}",
                )
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<VectorInputData, A::Error> {
                use serde::de::Error;
                let Some(first) = seq.next_element::<Element>()? else {
                    return Ok(VectorInputData(VectorData::Dense(Vec::new())));
                };
                match first {
                    Element::Number(x) => {
                        let mut rest = DenseList::visit(seq)?;
                        if rest.len() >= crate::collection_config::MAX_VECTOR_SIZE {
                            return Err(A::Error::custom(
                                "vector is longer than the largest supported size",
                            ));
                        }
                        rest.insert(0, x);
                        Ok(VectorInputData(VectorData::Dense(rest)))
                    }
                    Element::List(v) => {
                        let mut all = vec![v];
                        while let Some(next) = seq.next_element::<Element>()? {
                            match next {
                                Element::List(v) => all.push(v),
                                Element::Number(_) => {
                                    return Err(A::Error::custom(
                                        "a multivector is a list of lists of numbers",
                                    ));
                                }
                            }
                            if all.len() > crate::collection_config::MAX_MULTIVECTOR_LEN {
                                return Err(A::Error::custom(
                                    "multivector has more vectors than the largest supported count",
                                ));
                            }
                        }
                        Ok(VectorInputData(VectorData::Multi(all)))
                    }
                }
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<VectorInputData, A::Error> {
                use serde::de::Error;
                let (mut indices, mut values) = (None, None);
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "indices" => indices = Some(map.next_value::<Vec<u32>>()?),
                        "values" => {
                            let v: Vec<Option<f32>> = map.next_value()?;
                            if v.iter().any(Option::is_none) {
                                return Err(A::Error::custom(
                                    "sparse vector values must be finite numbers (got null)",
                                ));
                            }
                            values = Some(v.into_iter().flatten().collect::<Vec<f32>>());
                        }
                        "text" | "image" | "object" | "model" => {
                            return Err(A::Error::custom(
                                "inference objects (documents, images) are not supported: send the vector itself",
                            ));
                        }
                        other => {
                            return Err(A::Error::custom(format!(
                                "unknown field `{other}` in a sparse vector: expected `indices` and `values`"
                            )));
                        }
                    }
                }
                let (Some(indices), Some(values)) = (indices, values) else {
                    return Err(A::Error::custom(
                        "a sparse vector needs both `indices` and `values`",
                    ));
                };
                if indices.len() > crate::collection_config::MAX_SPARSE_ENTRIES {
                    return Err(A::Error::custom("sparse vector has too many entries"));
                }
                SparseVector::new(indices, values)
                    .map(|s| VectorInputData(VectorData::Sparse(s)))
                    .map_err(A::Error::custom)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// A point's vectors as a client sends them (Qdrant's `VectorStruct`): one unnamed dense
/// vector or multivector as a list, or a map of names to vectors (`{}` for none).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VectorStructInput(pub NamedVectors);

impl<'de> Deserialize<'de> for VectorStructInput {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = VectorStructInput;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a vector (a list of numbers) or a map of vector names to vectors")
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                seq: A,
            ) -> Result<VectorStructInput, A::Error> {
                let v = VectorInputData::deserialize(
                    serde::de::value::SeqAccessDeserializer::new(seq),
                )?;
                Ok(VectorStructInput(NamedVectors::from([(
                    DEFAULT_VECTOR.to_string(),
                    v.0,
                )])))
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<VectorStructInput, A::Error> {
                use serde::de::Error;
                let mut out = NamedVectors::new();
                while let Some(name) = map.next_key::<String>()? {
                    if out.len() >= crate::collection_config::MAX_NAMED_VECTORS {
                        return Err(A::Error::custom("too many named vectors"));
                    }
                    let v: VectorInputData = map.next_value()?;
                    if out.insert(name.clone(), v.0).is_some() {
                        return Err(A::Error::custom(format!("vector `{name}` is given twice")));
                    }
                }
                Ok(VectorStructInput(out))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// A point's vectors as Qdrant returns them: the bare vector when the point has only the
/// unnamed one, else a map of names to vectors.
#[derive(Debug, Clone, PartialEq)]
pub struct VectorStructOut(pub NamedVectors);

struct VectorOut<'a>(&'a VectorData);

impl Serialize for VectorOut<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            VectorData::Dense(v) => v.serialize(serializer),
            VectorData::Multi(v) => v.serialize(serializer),
            VectorData::Sparse(s) => s.serialize(serializer),
        }
    }
}

impl Serialize for VectorStructOut {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        if self.0.len() == 1
            && let Some(v) = self.0.get(DEFAULT_VECTOR)
        {
            return VectorOut(v).serialize(serializer);
        }
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (name, v) in &self.0 {
            map.serialize_entry(name, &VectorOut(v))?;
        }
        map.end()
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct PointStruct {
    pub id: PointId,
    #[serde(default)]
    pub vector: VectorStructInput,
    #[serde(default)]
    pub payload: Option<Payload>,
}

/// The vectors of a batch: a list (one unnamed vector per point) or a map of names to lists.
#[derive(Debug, Clone)]
pub enum BatchVectors {
    Unnamed(Vec<VectorInputData>),
    Named(BTreeMap<String, Vec<VectorInputData>>),
}

impl<'de> Deserialize<'de> for BatchVectors {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = BatchVectors;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a list of vectors or a map of vector names to lists of vectors")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<BatchVectors, A::Error> {
                let mut out = Vec::new();
                while let Some(v) = seq.next_element::<VectorInputData>()? {
                    out.push(v);
                }
                Ok(BatchVectors::Unnamed(out))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<BatchVectors, A::Error> {
                let mut out = BTreeMap::new();
                while let Some((k, v)) = map.next_entry::<String, Vec<VectorInputData>>()? {
                    out.insert(k, v);
                }
                Ok(BatchVectors::Named(out))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Batch {
    pub ids: Vec<PointId>,
    pub vectors: BatchVectors,
    #[serde(default)]
    pub payloads: Option<Vec<Option<Payload>>>,
}

impl Batch {
    /// The batch as points; fails when the lists differ in length.
    pub fn into_points(self) -> Result<Vec<(PointId, NamedVectors, Payload)>, String> {
        let n = self.ids.len();
        let mismatch = |what: &str, got: usize| {
            format!("the batch has {n} ids and {got} {what}; they must be equally many")
        };
        if let Some(p) = &self.payloads
            && p.len() != n
        {
            return Err(mismatch("payloads", p.len()));
        }
        let mut vectors: Vec<NamedVectors> = vec![NamedVectors::new(); n];
        match self.vectors {
            BatchVectors::Unnamed(list) => {
                if list.len() != n {
                    return Err(mismatch("vectors", list.len()));
                }
                for (slot, v) in vectors.iter_mut().zip(list) {
                    slot.insert(DEFAULT_VECTOR.to_string(), v.0);
                }
            }
            BatchVectors::Named(map) => {
                for (name, list) in map {
                    if list.len() != n {
                        return Err(mismatch(&format!("`{name}` vectors"), list.len()));
                    }
                    for (slot, v) in vectors.iter_mut().zip(list) {
                        slot.insert(name.clone(), v.0);
                    }
                }
            }
        }
        let mut payloads = self.payloads.unwrap_or_default().into_iter();
        Ok(self
            .ids
            .into_iter()
            .zip(vectors)
            .map(|(id, v)| (id, v, payloads.next().flatten().unwrap_or_default()))
            .collect())
    }
}

/// The body of an upsert: `{"points": [...]}` or `{"batch": {...}}`, with an optional
/// `shard_key`, `update_filter` and `update_mode`.
#[derive(Debug, Clone)]
pub struct PointInsertOperations {
    pub points: PointInsert,
    pub shard_key: Option<ShardKeySelector>,
    pub update_filter: Option<Filter>,
    pub update_mode: Option<UpdateMode>,
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
            #[serde(default)]
            update_filter: Option<Filter>,
            #[serde(default)]
            update_mode: Option<UpdateMode>,
        }
        let raw = Raw::deserialize(deserializer)?;
        let (shard_key, update_filter, update_mode) =
            (raw.shard_key, raw.update_filter, raw.update_mode);
        match (raw.points, raw.batch) {
            (Some(points), None) => Ok(PointInsertOperations {
                points: PointInsert::Points(points),
                shard_key,
                update_filter,
                update_mode,
            }),
            (None, Some(batch)) => Ok(PointInsertOperations {
                points: PointInsert::Batch(batch),
                shard_key,
                update_filter,
                update_mode,
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

/// `PUT /collections/{c}/points/vectors`: new vectors for existing points.
#[derive(Debug, Clone, Deserialize)]
pub struct UpdateVectors {
    pub points: Vec<PointVectors>,
    #[serde(default)]
    pub update_filter: Option<Filter>,
    #[serde(default)]
    pub shard_key: Option<ShardKeySelector>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PointVectors {
    pub id: PointId,
    pub vector: VectorStructInput,
}

/// `POST /collections/{c}/points/vectors/delete`: remove named vectors from points.
#[derive(Debug, Clone, Deserialize)]
pub struct DeleteVectors {
    pub points: Option<Vec<PointId>>,
    pub filter: Option<Filter>,
    pub vector: Vec<String>,
    #[serde(default)]
    pub shard_key: Option<ShardKeySelector>,
}

/// One operation of `POST /collections/{c}/points/batch`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateOperation {
    Upsert(PointInsertOperations),
    Delete(PointsSelector),
    SetPayload(SetPayload),
    OverwritePayload(SetPayload),
    DeletePayload(DeletePayload),
    ClearPayload(PointsSelector),
    UpdateVectors(UpdateVectors),
    DeleteVectors(DeleteVectors),
}

#[derive(Debug, Clone, Deserialize)]
pub struct UpdateOperations {
    pub operations: Vec<UpdateOperation>,
}

/// The query parameters of a write: `wait`, `ordering` and Qdrant's `timeout` (seconds; checked against
/// the collection's strict mode, not otherwise applied).
#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub struct WaitParam {
    pub wait: Option<bool>,
    pub timeout: Option<u64>,
    /// Qdrant's write `ordering` of a point update: `weak` (default), `medium` or `strong`
    /// (see [`WriteOrdering`]); anything else is refused with 400. Payload index and collection
    /// operations go through consensus, which orders them on every peer alike whatever it says.
    pub ordering: Option<WriteOrdering>,
}

/// The query parameters of a read: Qdrant's `timeout` (seconds; checked against the
/// collection's strict mode, not otherwise applied). Qdrant's `consistency` is accepted and
/// ignored, as every other unknown parameter.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub struct ReadParams {
    pub timeout: Option<u64>,
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
    pub vector: Option<VectorStructOut>,
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
    pub vector: Option<VectorStructOut>,
    pub shard_key: Option<Value>,
    pub order_value: Option<Value>,
}

// ---- search, recommend, query -----------------------------------------------------------------

#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub struct SearchParams {
    pub hnsw_ef: Option<usize>,
    pub exact: Option<bool>,
    pub indexed_only: Option<bool>,
    /// How searches use scalar-quantized codes (see `index::quantization`); strict mode's
    /// `search_max_oversampling` bounds `oversampling`.
    pub quantization: Option<QuantizationSearchParams>,
}

/// `params.quantization` of a search (Qdrant's `QuantizationSearchParams`).
#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub struct QuantizationSearchParams {
    pub ignore: Option<bool>,
    pub rescore: Option<bool>,
    pub oversampling: Option<f64>,
}

/// The `vector` of a search request: a list (the unnamed vector), or
/// `{"name": ..., "vector": [...] | {"indices", "values"}}`.
#[derive(Debug, Clone)]
pub struct NamedVectorStruct {
    pub name: String,
    pub vector: VectorData,
}

impl<'de> Deserialize<'de> for NamedVectorStruct {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let value = Value::deserialize(deserializer)?;
        if let Value::Object(map) = &value
            && let Some(vector) = map.get("vector")
        {
            let name = match map.get("name") {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(n)) => n.clone(),
                Some(other) => {
                    return Err(D::Error::custom(format!(
                        "vector `name` must be a string, got {other}"
                    )));
                }
            };
            let vector = VectorInputData::deserialize(vector.clone()).map_err(D::Error::custom)?;
            return Ok(NamedVectorStruct {
                name,
                vector: vector.0,
            });
        }
        let vector = VectorInputData::deserialize(value).map_err(D::Error::custom)?;
        Ok(NamedVectorStruct {
            name: String::new(),
            vector: vector.0,
        })
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
    Vector(VectorData),
}

impl<'de> Deserialize<'de> for VectorInput {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let value = Value::deserialize(deserializer)?;
        match &value {
            Value::Number(_) | Value::String(_) => PointId::deserialize(value)
                .map(VectorInput::Id)
                .map_err(D::Error::custom),
            _ => VectorInputData::deserialize(value)
                .map(|v| VectorInput::Vector(v.0))
                .map_err(D::Error::custom),
        }
    }
}

/// `null`, one item, or a list of items (Qdrant accepts each where a list is expected).
fn one_or_many<'de, D: Deserializer<'de>, T: serde::de::DeserializeOwned>(
    deserializer: D,
) -> Result<Vec<T>, D::Error> {
    use serde::de::Error;
    match Value::deserialize(deserializer)? {
        Value::Null => Ok(Vec::new()),
        Value::Array(items) => items
            .into_iter()
            .map(|v| serde_json::from_value(v).map_err(D::Error::custom))
            .collect(),
        single => serde_json::from_value(single)
            .map(|v| vec![v])
            .map_err(D::Error::custom),
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct RecommendRequest {
    #[serde(default, deserialize_with = "one_or_many")]
    pub positive: Vec<VectorInput>,
    #[serde(default, deserialize_with = "one_or_many")]
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
    pub lookup_from: Option<LookupLocation>,
    #[serde(default)]
    pub shard_key: Option<ShardKeySelector>,
}

/// Where example ids are looked up: another collection, and the vector to read there.
#[derive(Debug, Clone, Deserialize)]
pub struct LookupLocation {
    pub collection: String,
    pub vector: Option<String>,
    #[serde(default)]
    pub shard_key: Option<ShardKeySelector>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RecommendRequestBatch {
    pub searches: Vec<RecommendRequest>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RecommendInput {
    #[serde(default, deserialize_with = "one_or_many")]
    pub positive: Vec<VectorInput>,
    #[serde(default, deserialize_with = "one_or_many")]
    pub negative: Vec<VectorInput>,
    pub strategy: Option<RecommendStrategy>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ContextPair {
    pub positive: VectorInput,
    pub negative: VectorInput,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DiscoverInput {
    pub target: VectorInput,
    #[serde(default, deserialize_with = "one_or_many")]
    pub context: Vec<ContextPair>,
}

/// Qdrant's `mmr` parameters of a nearest query.
/// One example of a relevance-feedback query and how relevant the client judged it.
#[derive(Debug, Clone, Deserialize)]
pub struct FeedbackItem {
    pub example: VectorInput,
    pub score: f32,
}

/// Qdrant's naive feedback strategy parameters.
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct NaiveFeedback {
    pub a: f32,
    pub b: f32,
    pub c: f32,
}

#[derive(Debug, Clone, Copy, Deserialize)]
pub struct FeedbackStrategy {
    pub naive: NaiveFeedback,
}

/// `{"relevance_feedback": {target, feedback, strategy}}`.
#[derive(Debug, Clone, Deserialize)]
pub struct RelevanceFeedbackInput {
    pub target: VectorInput,
    #[serde(default)]
    pub feedback: Vec<FeedbackItem>,
    pub strategy: FeedbackStrategy,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub struct Mmr {
    pub diversity: Option<f32>,
    pub candidates_limit: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FusionKind {
    Rrf,
    Dbsf,
}

/// How prefetched lists are fused.
#[derive(Debug, Clone, PartialEq)]
pub enum Fusion {
    /// Reciprocal rank fusion with constant `k` (Qdrant's default 2) and optional weight per
    /// prefetch.
    Rrf { k: usize, weights: Option<Vec<f32>> },
    /// Distribution-based score fusion.
    Dbsf,
}

#[derive(Debug, Clone, Deserialize)]
pub struct OrderBy {
    pub key: String,
    pub direction: Option<Direction>,
    pub start_from: Option<Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    #[default]
    Asc,
    Desc,
}

/// The `query` of a universal query request.
#[derive(Debug, Clone)]
pub enum QueryInterface {
    Nearest(VectorInput, Option<Mmr>),
    Recommend(RecommendInput),
    Discover(DiscoverInput),
    Context(Vec<ContextPair>),
    Fusion(Fusion),
    OrderBy(OrderBy),
    Sample,
    RelevanceFeedback(RelevanceFeedbackInput),
    /// Qdrant's score boosting: a formula over prefetch scores, payload values and conditions.
    Formula(crate::index::formula::Formula),
}

impl<'de> Deserialize<'de> for QueryInterface {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let value = Value::deserialize(deserializer)?;
        if let Value::Object(map) = &value {
            if let Some(nearest) = map.get("nearest") {
                let mmr = match map.get("mmr") {
                    None | Some(Value::Null) => None,
                    Some(m) => Some(Mmr::deserialize(m.clone()).map_err(D::Error::custom)?),
                };
                return VectorInput::deserialize(nearest.clone())
                    .map(|v| QueryInterface::Nearest(v, mmr))
                    .map_err(D::Error::custom);
            }
            if let Some(recommend) = map.get("recommend") {
                return RecommendInput::deserialize(recommend.clone())
                    .map(QueryInterface::Recommend)
                    .map_err(D::Error::custom);
            }
            if let Some(discover) = map.get("discover") {
                return DiscoverInput::deserialize(discover.clone())
                    .map(QueryInterface::Discover)
                    .map_err(D::Error::custom);
            }
            if let Some(context) = map.get("context") {
                return one_or_many::<_, ContextPair>(context.clone())
                    .map(QueryInterface::Context)
                    .map_err(D::Error::custom);
            }
            if let Some(fusion) = map.get("fusion") {
                return FusionKind::deserialize(fusion.clone())
                    .map(|k| {
                        QueryInterface::Fusion(match k {
                            FusionKind::Rrf => Fusion::Rrf {
                                k: 2,
                                weights: None,
                            },
                            FusionKind::Dbsf => Fusion::Dbsf,
                        })
                    })
                    .map_err(D::Error::custom);
            }
            if let Some(rrf) = map.get("rrf") {
                #[derive(Deserialize)]
                struct Rrf {
                    k: Option<usize>,
                    weights: Option<Vec<f32>>,
                }
                let rrf = Rrf::deserialize(rrf.clone()).map_err(D::Error::custom)?;
                if rrf.k == Some(0) {
                    return Err(D::Error::custom("rrf `k` must be at least 1"));
                }
                return Ok(QueryInterface::Fusion(Fusion::Rrf {
                    k: rrf.k.unwrap_or(2),
                    weights: rrf.weights,
                }));
            }
            if let Some(order_by) = map.get("order_by") {
                let order_by = match order_by {
                    Value::String(key) => OrderBy {
                        key: key.clone(),
                        direction: None,
                        start_from: None,
                    },
                    other => OrderBy::deserialize(other.clone()).map_err(D::Error::custom)?,
                };
                return Ok(QueryInterface::OrderBy(order_by));
            }
            if let Some(sample) = map.get("sample") {
                return match sample.as_str() {
                    Some("random") => Ok(QueryInterface::Sample),
                    _ => Err(D::Error::custom("`sample` must be \"random\"")),
                };
            }
            if let Some(feedback) = map.get("relevance_feedback") {
                return RelevanceFeedbackInput::deserialize(feedback.clone())
                    .map(QueryInterface::RelevanceFeedback)
                    .map_err(D::Error::custom);
            }
            if let Some(formula) = map.get("formula") {
                let defaults = match map.get("defaults") {
                    None | Some(Value::Null) => None,
                    Some(Value::Object(d)) => Some(d),
                    Some(other) => {
                        return Err(D::Error::custom(format!(
                            "formula `defaults` must be an object, got {other}"
                        )));
                    }
                };
                return crate::index::formula::Formula::parse(formula, defaults)
                    .map(QueryInterface::Formula)
                    .map_err(D::Error::custom);
            }
        }
        VectorInput::deserialize(value)
            .map(|v| QueryInterface::Nearest(v, None))
            .map_err(D::Error::custom)
    }
}

/// A prefetch of a universal query: a sub-query whose results the outer query fuses or
/// rescores.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Prefetch {
    #[serde(default, deserialize_with = "one_or_many")]
    pub prefetch: Vec<Prefetch>,
    pub query: Option<QueryInterface>,
    pub using: Option<String>,
    pub filter: Option<Filter>,
    pub params: Option<SearchParams>,
    pub score_threshold: Option<f32>,
    pub limit: Option<usize>,
    pub lookup_from: Option<LookupLocation>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct QueryRequest {
    #[serde(default, deserialize_with = "one_or_many")]
    pub prefetch: Vec<Prefetch>,
    pub query: Option<QueryInterface>,
    pub using: Option<String>,
    pub filter: Option<Filter>,
    pub params: Option<SearchParams>,
    pub score_threshold: Option<f32>,
    pub limit: Option<usize>,
    pub offset: Option<usize>,
    pub with_vector: Option<WithVector>,
    pub with_payload: Option<WithPayload>,
    pub lookup_from: Option<LookupLocation>,
    #[serde(default)]
    pub shard_key: Option<ShardKeySelector>,
}

/// `POST /collections/{c}/points/query/groups`: a query whose hits are grouped by a payload
/// key (Qdrant's `QueryGroupsRequest`); `limit` counts groups.
#[derive(Debug, Clone, Deserialize)]
pub struct QueryGroupsRequest {
    #[serde(flatten)]
    pub query: QueryRequest,
    pub group_by: String,
    pub group_size: Option<usize>,
    /// A collection name, or `{"collection", "with_payload", "with_vectors"}`: each group's
    /// id is looked up there.
    pub with_lookup: Option<Value>,
}

#[derive(Debug, Serialize)]
pub struct PointGroupOut {
    pub id: Value,
    pub hits: Vec<ScoredPointOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lookup: Option<RecordOut>,
}

#[derive(Debug, Serialize)]
pub struct GroupsResult {
    pub groups: Vec<PointGroupOut>,
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
    fn vectors_parse_in_every_form_qdrant_accepts() {
        let v: VectorStructInput = serde_json::from_str("[1, 2.5, -3]").unwrap();
        assert_eq!(v.0[""], VectorData::Dense(vec![1.0, 2.5, -3.0]));
        let v: VectorStructInput = serde_json::from_str(
            r#"{"": [0.5], "m": [[1, 2], [3, 4]], "s": {"indices": [9, 2], "values": [1, 2]}}"#,
        )
        .unwrap();
        assert_eq!(v.0[""], VectorData::Dense(vec![0.5]));
        assert_eq!(
            v.0["m"],
            VectorData::Multi(vec![vec![1.0, 2.0], vec![3.0, 4.0]])
        );
        assert_eq!(
            v.0["s"],
            VectorData::Sparse(SparseVector::new(vec![2, 9], vec![2.0, 1.0]).unwrap())
        );
        let none: VectorStructInput = serde_json::from_str("{}").unwrap();
        assert!(none.0.is_empty());
        assert!(serde_json::from_str::<VectorStructInput>(r#"["a"]"#).is_err());
        assert!(serde_json::from_str::<VectorStructInput>("[1, null]").is_err());
        assert!(
            serde_json::from_str::<VectorStructInput>(
                r#"{"s": {"indices": [1, 1], "values": [1, 2]}}"#
            )
            .is_err()
        );
        let out = serde_json::to_value(VectorStructOut(v.0)).unwrap();
        assert_eq!(
            out["s"],
            serde_json::json!({"indices": [2, 9], "values": [2.0, 1.0]})
        );
        let q: QueryInterface = serde_json::from_str(r#"{"nearest": 7}"#).unwrap();
        assert!(matches!(
            q,
            QueryInterface::Nearest(VectorInput::Id(PointId::Num(7)), None)
        ));
        let q: QueryInterface = serde_json::from_str(r#"{"rrf": {"k": 10}}"#).unwrap();
        assert!(matches!(
            q,
            QueryInterface::Fusion(Fusion::Rrf {
                k: 10,
                weights: None
            })
        ));
        let q: QueryInterface =
            serde_json::from_str(r#"{"formula": {"sum": ["$score", 1.5]}, "defaults": {}}"#)
                .unwrap();
        assert!(matches!(q, QueryInterface::Formula(_)));
        let err = serde_json::from_str::<QueryInterface>(
            r#"{"formula": {"lin_decay": {"x": 1, "midpoint": 2.0}}}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("midpoint"), "{err}");
    }
}
