//! `/collections`: create, inspect, list and drop collections.

use axum::extract::State;

use crate::api::rest::AppState;
use crate::api::rest::blocking;
use crate::api::rest::json_body::{JsonBody, PathParams};
use crate::api::rest::models::UpdateResult;
use crate::api::rest::models::{
    CollectionDescription, CollectionExistence, CollectionInfo, CollectionsResponse,
    CreateCollection, VectorsConfig,
};
use crate::api::rest::response::{ApiError, ApiOk, ApiResult, Started};
use crate::cluster::collection::{CollectionStatus, PayloadIndexEntry};
use crate::collection_config::{
    CollectionConfig, CollectionParams, HnswConfig, OptimizersConfig, WalConfig,
};
use crate::index::filter::Filter;
use crate::index::payload_path::JsonPath;

/// Turns a create request into a full configuration: Qdrant's defaults plus the given diffs.
pub fn config_from_request(req: CreateCollection) -> Result<CollectionConfig, ApiError> {
    let vectors = match req.vectors {
        Some(VectorsConfig::Single(v)) => v,
        Some(VectorsConfig::Named(_)) => {
            return Err(ApiError::bad_request(
                "Wrong input: named vectors are not supported yet; configure one unnamed vector: \
                 {\"vectors\": {\"size\": N, \"distance\": \"Cosine\"}}",
            ));
        }
        None => {
            return Err(ApiError::bad_request(
                "Wrong input: `vectors` is required: {\"vectors\": {\"size\": N, \"distance\": \"Cosine\"}}",
            ));
        }
    };
    if req.sparse_vectors.as_ref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::bad_request(
            "Wrong input: sparse vectors are not supported yet",
        ));
    }
    if req
        .quantization_config
        .as_ref()
        .is_some_and(|q| !q.is_null())
    {
        return Err(ApiError::bad_request(
            "Wrong input: quantization is not supported yet",
        ));
    }
    if req.init_from.as_ref().is_some_and(|q| !q.is_null()) {
        return Err(ApiError::bad_request(
            "Wrong input: `init_from` is not supported",
        ));
    }
    let mut hnsw_config = HnswConfig::default();
    if let Some(diff) = &req.hnsw_config {
        hnsw_config.apply(diff);
    }
    let mut optimizer_config = OptimizersConfig::default();
    if let Some(diff) = &req.optimizers_config {
        optimizer_config.apply(diff);
    }
    let mut wal_config = WalConfig::default();
    if let Some(diff) = &req.wal_config {
        if let Some(v) = diff.wal_capacity_mb {
            wal_config.wal_capacity_mb = v;
        }
        if let Some(v) = diff.wal_segments_ahead {
            wal_config.wal_segments_ahead = v;
        }
    }
    let config = CollectionConfig {
        params: CollectionParams {
            vectors,
            shard_number: req.shard_number.unwrap_or(1),
            sharding_method: req.sharding_method,
            replication_factor: req.replication_factor.unwrap_or(1),
            write_consistency_factor: req.write_consistency_factor.unwrap_or(1),
            on_disk_payload: req.on_disk_payload.unwrap_or(true),
        },
        hnsw_config,
        optimizer_config,
        wal_config,
    };
    config
        .validate()
        .map_err(|e| ApiError::unprocessable(format!("Validation error in JSON body: {e}")))?;
    Ok(config)
}

pub async fn create(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
    started: Started,
    JsonBody(req): JsonBody<CreateCollection>,
) -> ApiResult<bool> {
    let config = config_from_request(req)?;
    let toc = state.toc.clone();
    blocking(move || toc.create(&name, config)).await?;
    Ok(ApiOk(true, started))
}

pub async fn get(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
    started: Started,
) -> ApiResult<CollectionInfo> {
    let collection = state.toc.get(&name)?;
    let (stats, payload_schema, collection) = blocking(move || {
        Ok((
            collection.stats(),
            payload_schema_info(&collection),
            collection,
        ))
    })
    .await?;
    Ok(ApiOk(
        CollectionInfo {
            status: match stats.status {
                CollectionStatus::Green => "green",
                CollectionStatus::Yellow => "yellow",
            },
            optimizer_status: "ok",
            indexed_vectors_count: stats.indexed_vectors,
            points_count: stats.points,
            segments_count: stats.segments,
            config: collection.config().clone(),
            payload_schema,
        },
        started,
    ))
}

pub async fn list(
    State(state): State<AppState>,
    started: Started,
) -> ApiResult<CollectionsResponse> {
    let collections = state
        .toc
        .names()
        .into_iter()
        .map(|name| CollectionDescription { name })
        .collect();
    Ok(ApiOk(CollectionsResponse { collections }, started))
}

pub async fn exists(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
    started: Started,
) -> ApiResult<CollectionExistence> {
    Ok(ApiOk(
        CollectionExistence {
            exists: state.toc.exists(&name),
        },
        started,
    ))
}

pub async fn delete(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
    started: Started,
) -> ApiResult<bool> {
    let toc = state.toc.clone();
    let existed = blocking(move || toc.delete(&name)).await?;
    Ok(ApiOk(existed, started))
}

/// `GET /collections/{name}/cluster`: where the collection's shards are and in what state.
pub async fn cluster_info(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
    started: Started,
) -> ApiResult<serde_json::Value> {
    let collection = state.toc.get(&name)?;
    let peer_id = state.consensus.as_ref().map_or(0, |c| c.peer_id.0);
    let local_shards: Vec<serde_json::Value> = collection
        .shards()
        .iter()
        .enumerate()
        .map(|(shard_id, shard)| {
            serde_json::json!({
                "shard_id": shard_id,
                "points_count": shard.stats().points,
                "state": "Active",
            })
        })
        .collect();
    Ok(ApiOk(
        serde_json::json!({
            "peer_id": peer_id,
            "shard_count": collection.shards().len(),
            "local_shards": local_shards,
            "remote_shards": [],
            "shard_transfers": [],
            "resharding_operations": [],
        }),
        started,
    ))
}

const PAYLOAD_TYPES: [&str; 8] = [
    "keyword", "integer", "float", "geo", "text", "bool", "datetime", "uuid",
];

/// `field_schema` of a create-index request: a type name, or an object with `type` and params.
fn index_entry(schema: Option<serde_json::Value>) -> Result<PayloadIndexEntry, ApiError> {
    let bad = |what: String| {
        ApiError::bad_request(format!(
            "Wrong input: {what}; `field_schema` is one of {PAYLOAD_TYPES:?} or an object with `type`"
        ))
    };
    match schema {
        Some(serde_json::Value::String(t)) if PAYLOAD_TYPES.contains(&t.as_str()) => {
            Ok(PayloadIndexEntry {
                data_type: t,
                params: None,
            })
        }
        Some(serde_json::Value::Object(params)) => {
            match params.get("type").and_then(|t| t.as_str()) {
                Some(t) if PAYLOAD_TYPES.contains(&t) => Ok(PayloadIndexEntry {
                    data_type: t.to_string(),
                    params: Some(serde_json::Value::Object(params.clone())),
                }),
                other => Err(bad(format!("unknown index type {other:?}"))),
            }
        }
        Some(other) => Err(bad(format!("unknown field schema {other}"))),
        None => Err(bad("`field_schema` is required".into())),
    }
}

#[derive(Debug, serde::Deserialize)]
pub struct CreateFieldIndex {
    pub field_name: String,
    pub field_schema: Option<serde_json::Value>,
}

/// `PUT /collections/{name}/index`: declares a payload index. Shoal evaluates filters by
/// scanning payloads, so an index changes no result; it is recorded and reported in
/// `payload_schema` so that Qdrant clients that create indexes keep working.
pub async fn create_index(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
    started: Started,
    JsonBody(body): JsonBody<CreateFieldIndex>,
) -> ApiResult<UpdateResult> {
    body.field_name.parse::<JsonPath>().map_err(|e| {
        ApiError::bad_request(format!(
            "Wrong input: invalid field name `{}`: {e}",
            body.field_name
        ))
    })?;
    let entry = index_entry(body.field_schema)?;
    let collection = state.toc.get(&name)?;
    let field = body.field_name;
    blocking(move || collection.set_payload_index(&field, Some(entry))).await?;
    Ok(ApiOk(
        UpdateResult {
            operation_id: 0,
            status: "completed",
        },
        started,
    ))
}

pub async fn delete_index(
    State(state): State<AppState>,
    PathParams((name, field)): PathParams<(String, String)>,
    started: Started,
) -> ApiResult<UpdateResult> {
    let collection = state.toc.get(&name)?;
    blocking(move || collection.set_payload_index(&field, None)).await?;
    Ok(ApiOk(
        UpdateResult {
            operation_id: 0,
            status: "completed",
        },
        started,
    ))
}

/// `payload_schema` of the collection info: each declared index with the number of points
/// that have a value at its key.
fn payload_schema_info(
    collection: &crate::cluster::collection::Collection,
) -> serde_json::Map<String, serde_json::Value> {
    collection
        .payload_schema()
        .into_iter()
        .map(|(field, entry)| {
            let has_value: Option<Filter> = serde_json::from_value(
                serde_json::json!({"must_not": [{"is_empty": {"key": field}}]}),
            )
            .ok();
            let points = has_value.map_or(0, |f| collection.count(Some(&f)));
            let mut info = serde_json::json!({"data_type": entry.data_type, "points": points});
            if let Some(params) = entry.params {
                info["params"] = params;
            }
            (field, info)
        })
        .collect()
}
