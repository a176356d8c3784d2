//! `/collections/{name}/points…`: writes, retrieval, scroll and count.

use axum::extract::State;

use crate::api::rest::AppState;
use crate::api::rest::introspection;
use crate::api::rest::json_body::{JsonBody, PathParams, QueryParams};
use crate::api::rest::models::{
    CountRequest, CountResult, DeletePayload, DeleteVectors, Direction, MAX_PAGE,
    MAX_UPSERT_POINTS, OrderBy, PointInsert, PointInsertOperations, PointRequest, PointsSelector,
    ReadParams, RecordOut, ScrollRequest, ScrollResult, SetPayload, UpdateOperation,
    UpdateOperations, UpdateResult, UpdateVectors, VectorStructOut, WaitParam,
};
use crate::api::rest::response::{ApiError, ApiOk, ApiResult, Started};
use crate::api::rest::strict_mode;
use crate::cluster::collection::{Collection, ShardKeySelector};
use crate::cluster::shard_requests::{OrderValue, ShardOrderBy};
use crate::index::filter::Filter;
use crate::index::payload_path::JsonPath;
use crate::index::payload_selector::{WithPayload, WithVector};
use crate::shard::local_shard::Record;
use crate::shard::operations::{PointSelection, PointWrite, UpdateMode, UpdateRequest};
use crate::types::PointId;
use serde_json::Value;

pub fn validate_filter(filter: Option<&Filter>) -> Result<(), ApiError> {
    if let Some(f) = filter {
        f.validate()
            .map_err(|e| ApiError::bad_request(format!("Bad filter: {e}")))?;
    }
    Ok(())
}

fn selection(
    points: Option<Vec<PointId>>,
    filter: Option<Filter>,
) -> Result<PointSelection, ApiError> {
    match (points, filter) {
        (Some(ids), None) => Ok(PointSelection::Ids(ids)),
        (None, Some(filter)) => {
            validate_filter(Some(&filter))?;
            Ok(PointSelection::Filter(filter))
        }
        (Some(_), Some(_)) => Err(ApiError::bad_request(
            "Wrong input: give either `points` or `filter`, not both",
        )),
        (None, None) => Err(ApiError::bad_request(
            "Wrong input: give `points` (a list of ids) or a `filter`",
        )),
    }
}

/// Renders a stored record for output, applying the payload selector.
pub fn record_out(r: Record, with_payload: &WithPayload) -> RecordOut {
    RecordOut {
        id: r.id,
        payload: r.payload.and_then(|p| with_payload.select(&p)),
        vector: r.vector.map(VectorStructOut),
        shard_key: None,
        order_value: None,
    }
}

async fn run_update(
    state: &AppState,
    name: &str,
    wait: WaitParam,
    addressed: Addressed,
    started: Started,
) -> ApiResult<UpdateResult> {
    let collection = state.toc.get(name)?;
    strict_mode::check_updates(
        state,
        &collection,
        wait.timeout,
        std::slice::from_ref(&addressed),
    )
    .await?;
    let (request, shard_key) = addressed;
    let operation_id = collection
        .update(
            request,
            shard_key.as_ref(),
            wait.ordering.unwrap_or_default(),
        )
        .await?;
    let status = if wait.wait.unwrap_or(false) {
        "completed"
    } else {
        "acknowledged"
    };
    Ok(ApiOk(
        UpdateResult {
            operation_id,
            status,
        },
        started,
    ))
}

/// An update and the shard keys it is addressed to.
type Addressed = (UpdateRequest, Option<ShardKeySelector>);

fn upsert_request(body: PointInsertOperations) -> Result<Addressed, ApiError> {
    let points: Vec<PointWrite> = match body.points {
        PointInsert::Points(points) => points
            .into_iter()
            .map(|p| PointWrite {
                id: p.id,
                vectors: p.vector.0,
                payload: p.payload.unwrap_or_default(),
            })
            .collect(),
        PointInsert::Batch(batch) => batch
            .into_points()
            .map_err(|e| ApiError::bad_request(format!("Wrong input: {e}")))?
            .into_iter()
            .map(|(id, vectors, payload)| PointWrite {
                id,
                vectors,
                payload,
            })
            .collect(),
    };
    if points.len() > MAX_UPSERT_POINTS {
        return Err(ApiError::bad_request(format!(
            "Wrong input: at most {MAX_UPSERT_POINTS} points per upsert, got {}; split the request",
            points.len()
        )));
    }
    validate_filter(body.update_filter.as_ref())?;
    let mode = body.update_mode.unwrap_or_default();
    let request = if body.update_filter.is_none() && mode == UpdateMode::Upsert {
        UpdateRequest::Upsert(points)
    } else {
        UpdateRequest::ConditionalUpsert {
            points,
            mode,
            filter: body.update_filter,
        }
    };
    Ok((request, body.shard_key))
}

pub async fn upsert(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
    QueryParams(wait): QueryParams<WaitParam>,
    started: Started,
    JsonBody(body): JsonBody<PointInsertOperations>,
) -> ApiResult<UpdateResult> {
    let request = upsert_request(body)?;
    run_update(&state, &name, wait, request, started).await
}

fn delete_request(body: PointsSelector) -> Result<Addressed, ApiError> {
    let sel = selection(body.points, body.filter)?;
    Ok((UpdateRequest::Delete(sel), body.shard_key))
}

pub async fn delete(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
    QueryParams(wait): QueryParams<WaitParam>,
    started: Started,
    JsonBody(body): JsonBody<PointsSelector>,
) -> ApiResult<UpdateResult> {
    let request = delete_request(body)?;
    run_update(&state, &name, wait, request, started).await
}

fn check_key(key: &str) -> Result<(), ApiError> {
    key.parse::<JsonPath>().map(drop).map_err(|e| {
        ApiError::bad_request(format!("Wrong input: invalid payload key `{key}`: {e}"))
    })
}

fn set_payload_request(body: SetPayload) -> Result<Addressed, ApiError> {
    if let Some(key) = &body.key {
        check_key(key)?;
    }
    let request = UpdateRequest::SetPayload {
        selection: selection(body.points, body.filter)?,
        payload: body.payload,
        key: body.key,
    };
    Ok((request, body.shard_key))
}

pub async fn set_payload(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
    QueryParams(wait): QueryParams<WaitParam>,
    started: Started,
    JsonBody(body): JsonBody<SetPayload>,
) -> ApiResult<UpdateResult> {
    let request = set_payload_request(body)?;
    run_update(&state, &name, wait, request, started).await
}

fn overwrite_payload_request(body: SetPayload) -> Result<Addressed, ApiError> {
    if body.key.is_some() {
        return Err(ApiError::bad_request(
            "Wrong input: overwrite_payload takes no `key`; use set_payload",
        ));
    }
    let request = UpdateRequest::OverwritePayload {
        selection: selection(body.points, body.filter)?,
        payload: body.payload,
    };
    Ok((request, body.shard_key))
}

pub async fn overwrite_payload(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
    QueryParams(wait): QueryParams<WaitParam>,
    started: Started,
    JsonBody(body): JsonBody<SetPayload>,
) -> ApiResult<UpdateResult> {
    let request = overwrite_payload_request(body)?;
    run_update(&state, &name, wait, request, started).await
}

fn delete_payload_request(body: DeletePayload) -> Result<Addressed, ApiError> {
    for key in &body.keys {
        check_key(key)?;
    }
    let request = UpdateRequest::DeletePayload {
        selection: selection(body.points, body.filter)?,
        keys: body.keys,
    };
    Ok((request, body.shard_key))
}

pub async fn delete_payload(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
    QueryParams(wait): QueryParams<WaitParam>,
    started: Started,
    JsonBody(body): JsonBody<DeletePayload>,
) -> ApiResult<UpdateResult> {
    let request = delete_payload_request(body)?;
    run_update(&state, &name, wait, request, started).await
}

fn clear_payload_request(body: PointsSelector) -> Result<Addressed, ApiError> {
    Ok((
        UpdateRequest::ClearPayload(selection(body.points, body.filter)?),
        body.shard_key,
    ))
}

pub async fn clear_payload(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
    QueryParams(wait): QueryParams<WaitParam>,
    started: Started,
    JsonBody(body): JsonBody<PointsSelector>,
) -> ApiResult<UpdateResult> {
    let request = clear_payload_request(body)?;
    run_update(&state, &name, wait, request, started).await
}

fn update_vectors_request(body: UpdateVectors) -> Result<Addressed, ApiError> {
    if body.points.len() > MAX_UPSERT_POINTS {
        return Err(ApiError::bad_request(format!(
            "Wrong input: at most {MAX_UPSERT_POINTS} points per request, got {}",
            body.points.len()
        )));
    }
    if let Some(p) = body.points.iter().find(|p| p.vector.0.is_empty()) {
        return Err(ApiError::unprocessable(format!(
            "Validation error in JSON body: point {} has no vectors to update",
            p.id
        )));
    }
    validate_filter(body.update_filter.as_ref())?;
    let request = UpdateRequest::UpdateVectors {
        points: body
            .points
            .into_iter()
            .map(|p| (p.id, p.vector.0))
            .collect(),
        filter: body.update_filter,
        missing_ok: false,
    };
    Ok((request, body.shard_key))
}

/// `PUT /collections/{c}/points/vectors`: replaces the given named vectors of existing points
/// (Qdrant answers 404 for a point that does not exist).
pub async fn update_vectors(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
    QueryParams(wait): QueryParams<WaitParam>,
    started: Started,
    JsonBody(body): JsonBody<UpdateVectors>,
) -> ApiResult<UpdateResult> {
    let request = update_vectors_request(body)?;
    run_update(&state, &name, wait, request, started).await
}

fn delete_vectors_request(
    collection: &Collection,
    body: DeleteVectors,
) -> Result<Addressed, ApiError> {
    for name in &body.vector {
        if collection.config().vector_kind(name).is_none() {
            return Err(ApiError::bad_request(format!(
                "Wrong input: Not existing vector name error: {}",
                if name.is_empty() { "default" } else { name }
            )));
        }
    }
    let request = UpdateRequest::DeleteVectors {
        selection: selection(body.points, body.filter)?,
        names: body.vector,
    };
    Ok((request, body.shard_key))
}

/// `POST /collections/{c}/points/vectors/delete`: removes named vectors from points.
pub async fn delete_vectors(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
    QueryParams(wait): QueryParams<WaitParam>,
    started: Started,
    JsonBody(body): JsonBody<DeleteVectors>,
) -> ApiResult<UpdateResult> {
    let collection = state.toc.get(&name)?;
    let request = delete_vectors_request(&collection, body)?;
    run_update(&state, &name, wait, request, started).await
}

/// Most operations in one `points/batch` request.
pub const MAX_BATCH_OPERATIONS: usize = 1_000;

/// `POST /collections/{c}/points/batch`: operations applied one after another, in order; the
/// first that fails stops the batch (those before it stay applied, as in Qdrant). Every
/// operation is parsed and its shape checked before the first is applied.
pub async fn batch_update(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
    QueryParams(wait): QueryParams<WaitParam>,
    started: Started,
    JsonBody(body): JsonBody<UpdateOperations>,
) -> ApiResult<Vec<UpdateResult>> {
    if body.operations.len() > MAX_BATCH_OPERATIONS {
        return Err(ApiError::bad_request(format!(
            "Wrong input: at most {MAX_BATCH_OPERATIONS} operations per batch, got {}",
            body.operations.len()
        )));
    }
    let collection = state.toc.get(&name)?;
    let requests = body
        .operations
        .into_iter()
        .map(|op| match op {
            UpdateOperation::Upsert(b) => upsert_request(b),
            UpdateOperation::Delete(b) => delete_request(b),
            UpdateOperation::SetPayload(b) => set_payload_request(b),
            UpdateOperation::OverwritePayload(b) => overwrite_payload_request(b),
            UpdateOperation::DeletePayload(b) => delete_payload_request(b),
            UpdateOperation::ClearPayload(b) => clear_payload_request(b),
            UpdateOperation::UpdateVectors(b) => update_vectors_request(b),
            UpdateOperation::DeleteVectors(b) => delete_vectors_request(&collection, b),
        })
        .collect::<Result<Vec<Addressed>, ApiError>>()?;
    strict_mode::check_updates(&state, &collection, wait.timeout, &requests).await?;
    // Every operation is prepared before any is applied, so that a refused vector or payload
    // later in the batch does not leave the earlier operations applied.
    let requests = requests
        .into_iter()
        .map(|(request, shard_key)| Ok((collection.prepare_update(request)?, shard_key)))
        .collect::<Result<Vec<_>, ApiError>>()?;
    let status = if wait.wait.unwrap_or(false) {
        "completed"
    } else {
        "acknowledged"
    };
    let mut results = Vec::with_capacity(requests.len());
    for (request, shard_key) in requests {
        let operation_id = collection
            .update_prepared(
                request,
                shard_key.as_ref(),
                wait.ordering.unwrap_or_default(),
            )
            .await?;
        results.push(UpdateResult {
            operation_id,
            status,
        });
    }
    Ok(ApiOk(results, started))
}

pub async fn retrieve(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
    QueryParams(read): QueryParams<ReadParams>,
    started: Started,
    JsonBody(body): JsonBody<PointRequest>,
) -> ApiResult<Vec<RecordOut>> {
    if body.ids.len() > MAX_PAGE {
        return Err(ApiError::bad_request(format!(
            "Wrong input: at most {MAX_PAGE} ids per request, got {}",
            body.ids.len()
        )));
    }
    let collection = state.toc.get(&name)?;
    strict_mode::check_read(&state, &collection, read.timeout, &body)?;
    let with_payload = body.with_payload.unwrap_or(WithPayload::All);
    let with_vector = body.with_vector.unwrap_or(WithVector::None);
    let (wp, ids) = (with_payload.is_requested(), body.ids);
    let records = collection
        .retrieve(&ids, wp, &with_vector, body.shard_key.as_ref())
        .await?;
    Ok(ApiOk(
        records
            .into_iter()
            .map(|r| record_out(r, &with_payload))
            .collect(),
        started,
    ))
}

pub async fn get_point(
    State(state): State<AppState>,
    PathParams((name, id)): PathParams<(String, String)>,
    QueryParams(read): QueryParams<ReadParams>,
    started: Started,
) -> ApiResult<RecordOut> {
    let id: PointId = id
        .parse()
        .map_err(|e: String| ApiError::bad_request(format!("Wrong input: {e}")))?;
    let collection = state.toc.get(&name)?;
    strict_mode::check_read(&state, &collection, read.timeout, &strict_mode::PointById)?;
    let mut records = collection
        .retrieve(&[id], true, &WithVector::All, None)
        .await?;
    match records.pop() {
        Some(r) => Ok(ApiOk(record_out(r, &WithPayload::All), started)),
        None => Err(ApiError::not_found(format!(
            "Not found: No point with id {id} found"
        ))),
    }
}

/// Qdrant's `order_by` (in scroll and in the query API) as a shard request: the key must carry
/// a payload index that supports ranges (integer, float or datetime), as Qdrant requires;
/// `start_from` is a number or a datetime.
pub fn order_by_request(
    collection: &Collection,
    order_by: &OrderBy,
    limit: usize,
    filter: Option<Filter>,
    with_payload: bool,
    with_vector: WithVector,
) -> Result<ShardOrderBy, ApiError> {
    let key: JsonPath = order_by.key.parse().map_err(|e| {
        ApiError::bad_request(format!(
            "Wrong input: invalid `order_by` key `{}`: {e}",
            order_by.key
        ))
    })?;
    let ranged = collection
        .payload_schema()
        .get(&order_by.key)
        .is_some_and(|e| matches!(e.data_type.as_str(), "integer" | "float" | "datetime"));
    if !ranged {
        return Err(ApiError::bad_request(format!(
            "Bad request: No range index for `order_by` key: `{}`. Please create one to use \
             `order_by`. Integer, float and datetime payload indexes support it.",
            order_by.key
        )));
    }
    let start_from = match &order_by.start_from {
        None | Some(Value::Null) => None,
        Some(v) => Some(OrderValue::of(v).ok_or_else(|| {
            ApiError::bad_request(format!(
                "Wrong input: `start_from` must be a number or an RFC 3339 datetime, got {v}"
            ))
        })?),
    };
    Ok(ShardOrderBy {
        key,
        descending: order_by.direction == Some(Direction::Desc),
        start_from,
        limit,
        filter,
        with_payload,
        with_vector,
        owner: None,
    })
}

/// `order_by` as REST takes it: a key, or `{key, direction, start_from}`.
pub fn parse_order_by(value: &Value) -> Result<OrderBy, ApiError> {
    match value {
        Value::String(key) => Ok(OrderBy {
            key: key.clone(),
            direction: None,
            start_from: None,
        }),
        other => serde_json::from_value(other.clone()).map_err(|e| {
            ApiError::unprocessable(format!("Validation error in JSON body: order_by: {e}"))
        }),
    }
}

pub async fn scroll(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
    QueryParams(read): QueryParams<ReadParams>,
    started: Started,
    JsonBody(body): JsonBody<ScrollRequest>,
) -> ApiResult<ScrollResult> {
    let limit = body.limit.unwrap_or(10);
    if limit == 0 {
        return Err(ApiError::unprocessable(
            "Validation error in JSON body: limit must be at least 1",
        ));
    }
    // A page may be shorter than asked: `next_page_offset` says where to go on.
    let limit = limit.min(MAX_PAGE);
    validate_filter(body.filter.as_ref())?;
    let collection = state.toc.get(&name)?;
    strict_mode::check_read(&state, &collection, read.timeout, &body)?;
    let _watch = introspection::issues::watch(&collection, started, &body);
    let with_payload = body.with_payload.unwrap_or(WithPayload::All);
    let with_vector = body.with_vector.unwrap_or(WithVector::None);
    let wp = with_payload.is_requested();
    let (offset, filter) = (body.offset, body.filter);
    if let Some(order_by) = body.order_by.as_ref().filter(|o| !o.is_null()) {
        if offset.is_some() {
            return Err(ApiError::bad_request(
                "Wrong input: `offset` cannot be used with `order_by`; use `start_from`",
            ));
        }
        let order_by = parse_order_by(order_by)?;
        let request = order_by_request(&collection, &order_by, limit, filter, wp, with_vector)?;
        let ordered = collection
            .order_by(request, body.shard_key.as_ref())
            .await?;
        // Qdrant gives no next page for ordered scrolls: `start_from` continues one.
        return Ok(ApiOk(
            ScrollResult {
                points: ordered
                    .into_iter()
                    .map(|(value, r)| {
                        let mut out = record_out(r, &with_payload);
                        out.order_value = Some(serde_json::to_value(value).unwrap_or(Value::Null));
                        out
                    })
                    .collect(),
                next_page_offset: None,
            },
            started,
        ));
    }
    let (records, next) = collection
        .scroll(
            offset,
            limit,
            filter.as_ref(),
            wp,
            &with_vector,
            body.shard_key.as_ref(),
        )
        .await?;
    Ok(ApiOk(
        ScrollResult {
            points: records
                .into_iter()
                .map(|r| record_out(r, &with_payload))
                .collect(),
            next_page_offset: next,
        },
        started,
    ))
}

pub async fn count(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
    QueryParams(read): QueryParams<ReadParams>,
    started: Started,
    JsonBody(body): JsonBody<CountRequest>,
) -> ApiResult<CountResult> {
    validate_filter(body.filter.as_ref())?;
    let collection = state.toc.get(&name)?;
    strict_mode::check_read(&state, &collection, read.timeout, &body)?;
    let _watch = introspection::issues::watch(&collection, started, &body);
    let count = collection
        .count(body.filter.as_ref(), body.shard_key.as_ref())
        .await?;
    Ok(ApiOk(CountResult { count }, started))
}

/// `POST /collections/{c}/facet`: how many points (matching `filter`) have each value at `key`,
/// most frequent first (Qdrant's facet counts; the key needs a keyword, integer, boolean or
/// uuid payload index, as in Qdrant).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct FacetRequest {
    pub key: String,
    pub filter: Option<Filter>,
    pub limit: Option<usize>,
    pub exact: Option<bool>,
    #[serde(default)]
    pub shard_key: Option<ShardKeySelector>,
}

#[derive(Debug, serde::Serialize)]
pub struct FacetHit {
    pub value: Value,
    pub count: usize,
}

#[derive(Debug, serde::Serialize)]
pub struct FacetResponse {
    pub hits: Vec<FacetHit>,
}

/// Most facet values one request returns.
pub const MAX_FACET_LIMIT: usize = 10_000;

pub async fn facet(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
    QueryParams(read): QueryParams<ReadParams>,
    started: Started,
    JsonBody(body): JsonBody<FacetRequest>,
) -> ApiResult<FacetResponse> {
    let limit = body.limit.unwrap_or(10);
    if limit == 0 || limit > MAX_FACET_LIMIT {
        return Err(ApiError::unprocessable(format!(
            "Validation error in JSON body: limit must be in 1..={MAX_FACET_LIMIT}"
        )));
    }
    validate_filter(body.filter.as_ref())?;
    let key: JsonPath = body.key.parse().map_err(|e| {
        ApiError::bad_request(format!(
            "Wrong input: invalid facet key `{}`: {e}",
            body.key
        ))
    })?;
    let collection = state.toc.get(&name)?;
    strict_mode::check_read(&state, &collection, read.timeout, &body)?;
    let index_type = collection
        .payload_schema()
        .get(&body.key)
        .map(|e| e.data_type.clone());
    let indexed = index_type
        .as_deref()
        .is_some_and(|t| matches!(t, "keyword" | "integer" | "bool" | "uuid"));
    if !indexed {
        return Err(ApiError::bad_request(format!(
            "Bad request: Index required but not found for \"{}\" of one of the following types: \
             [keyword, integer, bool, uuid]. Help: Create an index for this key or use a different \
             filter.",
            body.key
        )));
    }
    let request = crate::cluster::shard_requests::ShardFacet {
        key,
        filter: body.filter,
        // A uuid index holds UUIDs, answered in their hyphenated form.
        uuids: index_type.as_deref() == Some("uuid"),
        owner: None,
    };
    let hits = collection
        .facet(request, limit, body.shard_key.as_ref())
        .await?;
    Ok(ApiOk(
        FacetResponse {
            hits: hits
                .into_iter()
                .map(|(value, count)| FacetHit { value, count })
                .collect(),
        },
        started,
    ))
}
