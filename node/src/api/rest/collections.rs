//! `/collections`: create, inspect, list and drop collections.

use axum::extract::State;

use crate::api::rest::AppState;
use crate::api::rest::cluster::submit_error;
use crate::api::rest::collection_cluster::{
    self, ClusterOperationRequest, CreateShardingKey, DropShardingKey,
};
use crate::api::rest::json_body::{JsonBody, PathParams, QueryParams};
use crate::api::rest::models::{
    CollectionDescription, CollectionExistence, CollectionInfo, CollectionsResponse,
    CreateCollection,
};
use crate::api::rest::models::{UpdateResult, WaitParam};
use crate::api::rest::response::{ApiError, ApiOk, ApiResult, Started};
use crate::cluster::CollectionError;
use crate::cluster::collection::CollectionStatus;
use crate::cluster::toc::{SubmitError, validate_collection_name};
use crate::collection_config::PayloadIndexEntry;
use crate::collection_config::{
    CollectionConfig, CollectionParams, CollectionUpdate, HnswConfig, OptimizersConfig, WalConfig,
};
use crate::consensus::{ClusterError, ClusterOperation};
use crate::index::filter::Filter;
use crate::index::payload_path::JsonPath;

/// Turns a create request into a full configuration: Qdrant's defaults plus the given diffs.
pub fn config_from_request(req: CreateCollection) -> Result<CollectionConfig, ApiError> {
    let vectors = req.vectors.unwrap_or_default();
    // A collection may have no vectors at all (Qdrant allows `"vectors": {}`): its points hold
    // payloads only, read by scroll, count, filters and ordering.
    let sparse_vectors = req.sparse_vectors.filter(|s| !s.is_empty());
    let quantization_config = req.quantization_config.filter(|q| !q.is_null());
    if let Some(q) = &quantization_config
        && !q.is_object()
    {
        return Err(ApiError::unprocessable(
            "Validation error in JSON body: quantization_config must be an object",
        ));
    }
    let strict_mode_config = req.strict_mode_config;
    if let Some(strict) = &strict_mode_config {
        strict
            .validate()
            .map_err(|e| ApiError::unprocessable(format!("Validation error in JSON body: {e}")))?;
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
        if let Some(v) = diff.wal_retain_closed {
            wal_config.wal_retain_closed = v;
        }
    }
    let config = CollectionConfig {
        params: CollectionParams {
            vectors,
            sparse_vectors,
            shard_number: req.shard_number.unwrap_or(1),
            sharding_method: req.sharding_method,
            replication_factor: req.replication_factor.unwrap_or(1),
            write_consistency_factor: req.write_consistency_factor.unwrap_or(1),
            read_fan_out_factor: None,
            read_fan_out_delay_ms: None,
            on_disk_payload: req.on_disk_payload.unwrap_or(true),
        },
        hnsw_config,
        optimizer_config,
        wal_config,
        quantization_config,
        strict_mode_config,
        metadata: req.metadata,
    };
    config
        .validate()
        .and_then(|()| config.validate_quantization())
        .map_err(|e| ApiError::unprocessable(format!("Validation error in JSON body: {e}")))?;
    Ok(config)
}

pub async fn create(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
    started: Started,
    JsonBody(req): JsonBody<CreateCollection>,
) -> ApiResult<bool> {
    let mut req = req;
    if req.shard_number.is_none() && state.metadata.consensus().is_some() {
        // As in Qdrant: in a cluster, a collection gets one shard per peer by default.
        let peers = state.metadata.view().state.peers.len();
        req.shard_number = Some((peers as u32).max(1));
    }
    let config = config_from_request(req)?;
    validate_collection_name(&name)?;
    let op = ClusterOperation::CreateCollection {
        name,
        config: Box::new(config),
        uuid: rand::random_range(1..u64::MAX),
    };
    state.toc.submit(op).await.map_err(submit_error)?;
    Ok(ApiOk(true, started))
}

pub async fn get(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
    started: Started,
) -> ApiResult<CollectionInfo> {
    let collection = state.toc.get(&name)?;
    let stats = collection.stats().await;
    let payload_schema = payload_schema_info(&collection).await;
    Ok(ApiOk(
        CollectionInfo {
            status: match stats.status {
                CollectionStatus::Green => "green",
                CollectionStatus::Yellow => "yellow",
                CollectionStatus::Grey => "grey",
            },
            optimizer_status: "ok",
            indexed_vectors_count: stats.indexed_vectors,
            points_count: stats.points,
            segments_count: stats.segments,
            warnings: warnings(&collection.config()),
            config: (*collection.config()).clone(),
            payload_schema,
        },
        started,
    ))
}

/// `PATCH /collections/{c}` (Qdrant's update collection): applies the update through
/// consensus on every peer and answers `true` once this peer applied it.
///
/// Errors: 404 for an unknown collection, 400 for an unknown vector name (Qdrant's "Not
/// existing vector name"), 422 when the result would not be a valid configuration (for
/// example `replication_factor: 0`); the configuration is then unchanged.
pub async fn update(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
    started: Started,
    JsonBody(update): JsonBody<CollectionUpdate>,
) -> ApiResult<bool> {
    let collection = state.toc.get(&name)?;
    // Plan on a copy first, for Qdrant's status codes; the state machine checks again
    // against the configuration it holds when the update is applied.
    let mut planned = (*collection.config()).clone();
    if let Err(reason) = planned
        .apply_update(&update)
        .and_then(|()| planned.validate_quantization())
    {
        return Err(if reason.starts_with("Not existing vector name") {
            ApiError::bad_request(format!("Wrong input: {reason}"))
        } else {
            ApiError::unprocessable(format!("Validation error in JSON body: {reason}"))
        });
    }
    if update.is_empty() {
        return Ok(ApiOk(true, started));
    }
    let op = ClusterOperation::UpdateCollection {
        collection: collection.name().to_string(),
        update: Box::new(update),
    };
    state.toc.submit(op).await.map_err(submit_error)?;
    Ok(ApiOk(true, started))
}

/// What the configuration asks for that Shoal stores and reports but does not apply, one
/// warning each (Qdrant's `warnings` field of the collection info): product and binary
/// quantization, quantization of multivectors and settings stored before they were validated
/// that do not parse (scalar int8 of single dense vectors is applied), `uint8` with Cosine,
/// `payload_m`, `inline_storage`, sparse indexes `on_disk` and `datatype`, `memmap_threshold` and
/// `prevent_unoptimized`.
fn warnings(config: &CollectionConfig) -> Vec<crate::api::rest::models::CollectionWarning> {
    use crate::collection_config::Datatype;
    use crate::types::Distance;
    let names = |pick: &dyn Fn(&str, &crate::collection_config::VectorParams) -> bool| {
        config
            .params
            .vectors
            .iter()
            .filter(|(name, params)| pick(name, params))
            .map(|(name, _)| match name {
                "" => "the unnamed vector".to_string(),
                name => format!("`{name}`"),
            })
            .collect::<Vec<_>>()
    };
    let mut messages = Vec::new();
    let unquantized = names(&|name, params| {
        (params.quantization_config.is_some() || config.quantization_config.is_some())
            && config.scalar_quantization(name).is_none()
    });
    if !unquantized.is_empty() {
        messages.push(format!(
            "quantization_config of {} is stored but not applied: only scalar int8 \
             quantization of single dense vectors is, so searches of these use the \
             full-precision vectors (and answer as an unquantized search would)",
            unquantized.join(", ")
        ));
    }
    let normalised_bytes = names(&|_, params| {
        params.datatype == Some(Datatype::Uint8) && params.distance == Distance::Cosine
    });
    if !normalised_bytes.is_empty() {
        messages.push(format!(
            "datatype uint8 of {} is not applied with Cosine: values are normalised as \
             float32 without truncating them to integers first (other distances truncate them \
             as Qdrant does)",
            normalised_bytes.join(", ")
        ));
    }
    // `payload_m: 0` asks for no payload links, which is what Shoal does.
    let payload_m = names(&|name, _| config.hnsw_for(name).payload_m.is_some_and(|m| m > 0));
    if !payload_m.is_empty() {
        messages.push(format!(
            "hnsw_config.payload_m of {} is stored but not applied: graphs get no extra links \
             per payload value; filtered searches use the payload indexes instead",
            payload_m.join(", ")
        ));
    }
    let inline = names(&|name, _| config.hnsw_for(name).inline_storage == Some(true));
    if !inline.is_empty() {
        messages.push(format!(
            "hnsw_config.inline_storage of {} is stored but not applied: graph files hold \
             links only",
            inline.join(", ")
        ));
    }
    let sparse_names = |pick: &dyn Fn(&crate::collection_config::SparseIndexParams) -> bool| {
        config
            .sparse_iter()
            .filter(|(_, p)| p.index.as_ref().is_some_and(pick))
            .map(|(name, _)| format!("`{name}`"))
            .collect::<Vec<_>>()
    };
    let sparse_on_disk = sparse_names(&|index| index.on_disk == Some(true));
    if !sparse_on_disk.is_empty() {
        messages.push(format!(
            "the sparse index on_disk of {} is stored but not applied: sparse indexes are \
             kept in memory",
            sparse_on_disk.join(", ")
        ));
    }
    let sparse_narrowed =
        sparse_names(&|index| index.datatype.is_some_and(|d| d != Datatype::Float32));
    if !sparse_narrowed.is_empty() {
        messages.push(format!(
            "the sparse index datatype of {} is stored but not applied: sparse weights are \
             kept and scored as float32 (Qdrant compresses them in optimized segments only)",
            sparse_narrowed.join(", ")
        ));
    }
    let optimizers = &config.optimizer_config;
    if optimizers.memmap_threshold.is_some_and(|kb| kb > 0) {
        messages.push(
            "optimizers_config.memmap_threshold (deprecated since Qdrant 1.15) is stored but \
             not applied: set `on_disk` on the vectors to memory-map them"
                .to_string(),
        );
    }
    if optimizers.prevent_unoptimized == Some(true) {
        messages.push(
            "optimizers_config.prevent_unoptimized is stored but not applied: points are \
             searchable as soon as they are written"
                .to_string(),
        );
    }
    messages
        .into_iter()
        .map(|message| crate::api::rest::models::CollectionWarning { message })
        .collect()
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
    match state
        .toc
        .submit(ClusterOperation::DeleteCollection { name })
        .await
    {
        Ok(_) => Ok(ApiOk(true, started)),
        Err(SubmitError::Rejected(ClusterError::UnknownCollection { .. })) => {
            Ok(ApiOk(false, started))
        }
        Err(e) => Err(submit_error(e)),
    }
}

/// A one-line summary of a transfer's (or a resharding's) progress, for `comment`.
fn progress_comment(p: &crate::cluster::transfer::ProgressReport) -> String {
    format!(
        "{}: {}/{} points ({:.1}%), {:.0} points/s, ETA {}",
        p.stage,
        p.points_done,
        p.points_total,
        p.percent,
        p.points_per_second,
        p.eta_seconds
            .map_or_else(|| "unknown".to_string(), |s| format!("{s:.0}s"))
    )
}

/// `GET /collections/{name}/cluster`: where the collection's shards are and in what state, in
/// Qdrant's shape, from the applied cluster state.
pub async fn cluster_info(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
    started: Started,
) -> ApiResult<serde_json::Value> {
    let collection = state.toc.get(&name)?;
    let view = state.metadata.view();
    let meta = view
        .state
        .collections
        .get(&name)
        .ok_or_else(|| CollectionError::NotFound(name.clone()))?;
    let this_peer = state.metadata.peer_id();
    let mut local_shards = Vec::new();
    let mut remote_shards = Vec::new();
    for (shard_id, shard) in &meta.shards {
        for (peer, replica_state) in &shard.replicas {
            let mut entry = serde_json::json!({
                "shard_id": shard_id.0,
                "state": replica_state,
            });
            if let Some(key) = &shard.shard_key {
                entry["shard_key"] = serde_json::json!(key);
            }
            if *peer == this_peer {
                let points = collection
                    .local_shard(shard_id.0)
                    .map_or(0, |s| s.stats().points);
                entry["points_count"] = serde_json::json!(points);
                local_shards.push(entry);
            } else {
                entry["peer_id"] = serde_json::json!(peer.0);
                remote_shards.push(entry);
            }
        }
    }
    let progress = state.toc.transfer_progress(&name).await;
    let shard_transfers: Vec<serde_json::Value> = meta
        .transfers
        .iter()
        .map(|t| {
            let mut entry = serde_json::json!({
                "shard_id": t.shard.0,
                "to_shard_id": t.to_shard.map(|s| s.0),
                "from": t.from.0,
                "to": t.to.0,
                "sync": t.sync,
                "method": t.method,
            });
            if let Some(p) = progress.iter().find(|p| {
                p.shard_id == t.shard.0
                    && p.to_shard_id == t.to_shard.map(|s| s.0)
                    && p.from == t.from.0
                    && p.to == t.to.0
            }) {
                entry["comment"] = serde_json::json!(progress_comment(&p.progress));
                entry["progress"] = serde_json::json!(p.progress);
            }
            if t.points_per_second.is_some() || t.bytes_per_second.is_some() {
                entry["rate_limit"] = serde_json::json!({
                    "points_per_second": t.points_per_second,
                    "bytes_per_second": t.bytes_per_second,
                });
            }
            entry
        })
        .collect();
    let resharding: Vec<serde_json::Value> = meta
        .resharding
        .iter()
        .map(|r| {
            let mut entry = serde_json::json!({
                "direction": r.direction,
                "shard_id": r.shard.0,
                "peer_id": r.peer.0,
                "shard_key": r.shard_key,
                "stage": r.stage,
                "manual": r.manual,
            });
            if let Some(p) = crate::cluster::resharding::progress(meta, &progress) {
                entry["comment"] =
                    serde_json::json!(format!("{:?}, {}", r.stage, progress_comment(&p)));
                entry["progress"] = serde_json::json!(p);
            }
            entry
        })
        .collect();
    Ok(ApiOk(
        serde_json::json!({
            "peer_id": this_peer.0,
            "shard_count": meta.shards.len(),
            "local_shards": local_shards,
            "remote_shards": remote_shards,
            "shard_transfers": shard_transfers,
            "resharding_operations": resharding,
        }),
        started,
    ))
}

/// `PUT /collections/{name}/shards`: creates the shards of a new shard key.
pub async fn create_shard_key(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
    started: Started,
    JsonBody(body): JsonBody<CreateShardingKey>,
) -> ApiResult<bool> {
    let op = ClusterOperationRequest::CreateShardingKey(body);
    collection_cluster::apply(&state.toc, &name, op).await?;
    Ok(ApiOk(true, started))
}

/// `POST /collections/{name}/shards/delete`: drops every shard of a shard key.
pub async fn delete_shard_key(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
    started: Started,
    JsonBody(body): JsonBody<DropShardingKey>,
) -> ApiResult<bool> {
    let op = ClusterOperationRequest::DropShardingKey(body);
    collection_cluster::apply(&state.toc, &name, op).await?;
    Ok(ApiOk(true, started))
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
                // Refused rather than accepted and not applied (see `index::text`).
                Some("text")
                    if ["stopwords", "stemmer"]
                        .iter()
                        .any(|k| params.get(*k).is_some_and(|v| !v.is_null()))
                        || params.get("ascii_folding") == Some(&serde_json::Value::Bool(true))
                        || params.get("tokenizer").is_some_and(|t| {
                            !["word", "whitespace", "prefix", "multilingual"]
                                .iter()
                                .any(|known| t == known)
                        }) =>
                {
                    Err(bad(
                        "Shoal's text index takes the `word`, `whitespace`, `prefix` and \
                         `multilingual` tokenizers, without `stopwords`, `stemmer` or \
                         `ascii_folding`"
                            .into(),
                    ))
                }
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

/// `PUT /collections/{name}/index`: declares a payload index, through consensus. Every
/// replica then builds it in each sealed segment (`index::payload_index`), and filtered
/// searches use it to choose the points they score. A `text` index changes what `text`,
/// `text_any` and `phrase` conditions mean on its key, as in Qdrant: tokens of its tokenizer
/// instead of a substring (`index::text`); its `stopwords` and `stemmer` are refused (400).
pub async fn create_index(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
    QueryParams(wait): QueryParams<WaitParam>,
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
    crate::api::rest::strict_mode::check_create_index(&state, &collection, wait.timeout)?;
    let op = ClusterOperation::SetPayloadIndex {
        collection: name,
        field: body.field_name,
        entry: Some(entry),
    };
    submit_completed(&state, op, started).await
}

/// Carries out a collection change through consensus and answers as Qdrant does for such
/// changes: `{"operation_id": 0, "status": "completed"}` once applied.
async fn submit_completed(
    state: &AppState,
    op: ClusterOperation,
    started: Started,
) -> ApiResult<UpdateResult> {
    state.toc.submit(op).await.map_err(submit_error)?;
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
    state.toc.get(&name)?;
    let op = ClusterOperation::SetPayloadIndex {
        collection: name,
        field,
        entry: None,
    };
    submit_completed(&state, op, started).await
}

/// `payload_schema` of the collection info: each declared index with the number of points
/// that have a value at its key.
async fn payload_schema_info(
    collection: &crate::cluster::collection::Collection,
) -> serde_json::Map<String, serde_json::Value> {
    let mut out = serde_json::Map::new();
    for (field, entry) in collection.payload_schema() {
        let has_value: Option<Filter> =
            serde_json::from_value(serde_json::json!({"must_not": [{"is_empty": {"key": field}}]}))
                .ok();
        let points = match has_value {
            Some(f) => collection.count(Some(&f), None).await.unwrap_or(0),
            None => 0,
        };
        let mut info = serde_json::json!({"data_type": entry.data_type, "points": points});
        if let Some(params) = entry.params {
            info["params"] = params;
        }
        out.insert(field, info);
    }
    out
}

/// `POST /collections/aliases`: `{"actions": [{"create_alias": {"collection_name", "alias_name"}},
/// {"delete_alias": {"alias_name"}}, {"rename_alias": {"old_alias_name", "new_alias_name"}}]}`,
/// applied in order, all or none (as in Qdrant).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct ChangeAliases {
    pub actions: Vec<AliasOperation>,
}

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AliasOperation {
    CreateAlias {
        collection_name: String,
        alias_name: String,
    },
    DeleteAlias {
        alias_name: String,
    },
    RenameAlias {
        old_alias_name: String,
        new_alias_name: String,
    },
}

/// Most alias changes in one request.
pub const MAX_ALIAS_ACTIONS: usize = 1_000;

pub async fn update_aliases(
    State(state): State<AppState>,
    started: Started,
    JsonBody(body): JsonBody<ChangeAliases>,
) -> ApiResult<bool> {
    use crate::consensus::AliasAction;
    if body.actions.len() > MAX_ALIAS_ACTIONS {
        return Err(ApiError::bad_request(format!(
            "Wrong input: at most {MAX_ALIAS_ACTIONS} alias actions per request"
        )));
    }
    let actions = body
        .actions
        .into_iter()
        .map(|a| match a {
            AliasOperation::CreateAlias {
                collection_name,
                alias_name,
            } => AliasAction::Create {
                collection: collection_name,
                alias: alias_name,
            },
            AliasOperation::DeleteAlias { alias_name } => AliasAction::Delete { alias: alias_name },
            AliasOperation::RenameAlias {
                old_alias_name,
                new_alias_name,
            } => AliasAction::Rename {
                old: old_alias_name,
                new: new_alias_name,
            },
        })
        .collect();
    state
        .toc
        .submit(ClusterOperation::ChangeAliases { actions })
        .await
        .map_err(submit_error)?;
    Ok(ApiOk(true, started))
}

#[derive(Debug, serde::Serialize)]
pub struct AliasDescription {
    pub alias_name: String,
    pub collection_name: String,
}

#[derive(Debug, serde::Serialize)]
pub struct AliasesResponse {
    pub aliases: Vec<AliasDescription>,
}

/// `GET /aliases`: every alias.
pub async fn list_aliases(
    State(state): State<AppState>,
    started: Started,
) -> ApiResult<AliasesResponse> {
    let aliases = state
        .toc
        .aliases()
        .into_iter()
        .map(|(alias_name, collection_name)| AliasDescription {
            alias_name,
            collection_name,
        })
        .collect();
    Ok(ApiOk(AliasesResponse { aliases }, started))
}

/// `GET /collections/{c}/aliases`: the aliases of one collection.
pub async fn collection_aliases(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
    started: Started,
) -> ApiResult<AliasesResponse> {
    if !state.toc.exists(&name) {
        return Err(CollectionError::NotFound(name).into());
    }
    let aliases = state
        .toc
        .aliases()
        .into_iter()
        .filter(|(_, c)| *c == name)
        .map(|(alias_name, collection_name)| AliasDescription {
            alias_name,
            collection_name,
        })
        .collect();
    Ok(ApiOk(AliasesResponse { aliases }, started))
}

/// `PUT /collections/{c}/vectors/{name}`: `{"dense": {"size", "distance", ...}}` or
/// `{"sparse": {"modifier", ...}}`, Qdrant's `VectorNameConfig`. The new vector starts absent on
/// every point.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum NewVectorRequest {
    Dense(crate::collection_config::VectorParams),
    Sparse(crate::collection_config::SparseVectorParams),
}

pub async fn create_vector_name(
    State(state): State<AppState>,
    PathParams((name, vector)): PathParams<(String, String)>,
    QueryParams(wait): QueryParams<WaitParam>,
    started: Started,
    JsonBody(body): JsonBody<NewVectorRequest>,
) -> ApiResult<UpdateResult> {
    let collection = state.toc.get(&name)?;
    crate::api::rest::strict_mode::check_create_vector(&state, &collection, wait.timeout)?;
    let params = match body {
        NewVectorRequest::Dense(p) => crate::consensus::NewVector::Dense(p),
        NewVectorRequest::Sparse(p) => crate::consensus::NewVector::Sparse(p),
    };
    let op = ClusterOperation::CreateVectorName {
        collection: collection.name().to_string(),
        name: vector,
        params,
    };
    submit_completed(&state, op, started).await
}

/// `DELETE /collections/{c}/vectors/{name}`: removes the named vector and every point's value
/// of it.
pub async fn delete_vector_name(
    State(state): State<AppState>,
    PathParams((name, vector)): PathParams<(String, String)>,
    started: Started,
) -> ApiResult<UpdateResult> {
    let collection = state.toc.get(&name)?;
    let op = ClusterOperation::DeleteVectorName {
        collection: collection.name().to_string(),
        name: vector,
    };
    submit_completed(&state, op, started).await
}
