//! `/collections/{name}/points…`: writes, retrieval, scroll and count.

use axum::extract::State;

use crate::api::rest::AppState;
use crate::api::rest::json_body::{JsonBody, PathParams, QueryParams};
use crate::api::rest::models::{
    CountRequest, CountResult, DeletePayload, MAX_PAGE, MAX_UPSERT_POINTS, PointInsert,
    PointInsertOperations, PointRequest, PointsSelector, RecordOut, ScrollRequest, ScrollResult,
    SetPayload, UpdateResult, WaitParam,
};
use crate::api::rest::response::{ApiError, ApiOk, ApiResult, Started};
use crate::cluster::collection::ShardKeySelector;
use crate::index::filter::Filter;
use crate::index::payload_path::JsonPath;
use crate::index::payload_selector::{WithPayload, WithVector};
use crate::shard::local_shard::Record;
use crate::shard::operations::{PointSelection, PointWrite, UpdateRequest};
use crate::types::PointId;

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
        vector: r.vector,
        shard_key: None,
        order_value: None,
    }
}

async fn run_update(
    state: &AppState,
    name: &str,
    wait: WaitParam,
    (request, shard_key): (UpdateRequest, Option<ShardKeySelector>),
    started: Started,
) -> ApiResult<UpdateResult> {
    let collection = state.toc.get(name)?;
    let operation_id = collection.update(request, shard_key.as_ref()).await?;
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

pub async fn upsert(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
    QueryParams(wait): QueryParams<WaitParam>,
    started: Started,
    JsonBody(body): JsonBody<PointInsertOperations>,
) -> ApiResult<UpdateResult> {
    let points: Vec<PointWrite> = match body.points {
        PointInsert::Points(points) => points
            .into_iter()
            .map(|p| PointWrite {
                id: p.id,
                vector: p.vector.0,
                payload: p.payload.unwrap_or_default(),
            })
            .collect(),
        PointInsert::Batch(batch) => {
            let n = batch.ids.len();
            if batch.vectors.len() != n || batch.payloads.as_ref().is_some_and(|p| p.len() != n) {
                return Err(ApiError::bad_request(format!(
                    "Wrong input: the batch has {n} ids, {} vectors and {} payloads; they must be equally many",
                    batch.vectors.len(),
                    batch.payloads.as_ref().map_or(n, Vec::len)
                )));
            }
            let mut payloads = batch.payloads.unwrap_or_default().into_iter();
            batch
                .ids
                .into_iter()
                .zip(batch.vectors)
                .map(|(id, vector)| PointWrite {
                    id,
                    vector: vector.0,
                    payload: payloads.next().flatten().unwrap_or_default(),
                })
                .collect()
        }
    };
    if points.len() > MAX_UPSERT_POINTS {
        return Err(ApiError::bad_request(format!(
            "Wrong input: at most {MAX_UPSERT_POINTS} points per upsert, got {}; split the request",
            points.len()
        )));
    }
    run_update(
        &state,
        &name,
        wait,
        (UpdateRequest::Upsert(points), body.shard_key),
        started,
    )
    .await
}

pub async fn delete(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
    QueryParams(wait): QueryParams<WaitParam>,
    started: Started,
    JsonBody(body): JsonBody<PointsSelector>,
) -> ApiResult<UpdateResult> {
    let sel = selection(body.points, body.filter)?;
    let request = (UpdateRequest::Delete(sel), body.shard_key);
    run_update(&state, &name, wait, request, started).await
}

fn check_key(key: &str) -> Result<(), ApiError> {
    key.parse::<JsonPath>().map(drop).map_err(|e| {
        ApiError::bad_request(format!("Wrong input: invalid payload key `{key}`: {e}"))
    })
}

pub async fn set_payload(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
    QueryParams(wait): QueryParams<WaitParam>,
    started: Started,
    JsonBody(body): JsonBody<SetPayload>,
) -> ApiResult<UpdateResult> {
    if let Some(key) = &body.key {
        check_key(key)?;
    }
    let request = UpdateRequest::SetPayload {
        selection: selection(body.points, body.filter)?,
        payload: body.payload,
        key: body.key,
    };
    let request = (request, body.shard_key);
    run_update(&state, &name, wait, request, started).await
}

pub async fn overwrite_payload(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
    QueryParams(wait): QueryParams<WaitParam>,
    started: Started,
    JsonBody(body): JsonBody<SetPayload>,
) -> ApiResult<UpdateResult> {
    if body.key.is_some() {
        return Err(ApiError::bad_request(
            "Wrong input: overwrite_payload takes no `key`; use set_payload",
        ));
    }
    let request = UpdateRequest::OverwritePayload {
        selection: selection(body.points, body.filter)?,
        payload: body.payload,
    };
    let request = (request, body.shard_key);
    run_update(&state, &name, wait, request, started).await
}

pub async fn delete_payload(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
    QueryParams(wait): QueryParams<WaitParam>,
    started: Started,
    JsonBody(body): JsonBody<DeletePayload>,
) -> ApiResult<UpdateResult> {
    for key in &body.keys {
        check_key(key)?;
    }
    let request = UpdateRequest::DeletePayload {
        selection: selection(body.points, body.filter)?,
        keys: body.keys,
    };
    let request = (request, body.shard_key);
    run_update(&state, &name, wait, request, started).await
}

pub async fn clear_payload(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
    QueryParams(wait): QueryParams<WaitParam>,
    started: Started,
    JsonBody(body): JsonBody<PointsSelector>,
) -> ApiResult<UpdateResult> {
    let request = (
        UpdateRequest::ClearPayload(selection(body.points, body.filter)?),
        body.shard_key,
    );
    run_update(&state, &name, wait, request, started).await
}

pub async fn retrieve(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
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
    let with_payload = body.with_payload.unwrap_or(WithPayload::All);
    let with_vector = body.with_vector.unwrap_or(WithVector::None).is_requested();
    let (wp, ids) = (with_payload.is_requested(), body.ids);
    let records = collection
        .retrieve(&ids, wp, with_vector, body.shard_key.as_ref())
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
    started: Started,
) -> ApiResult<RecordOut> {
    let id: PointId = id
        .parse()
        .map_err(|e: String| ApiError::bad_request(format!("Wrong input: {e}")))?;
    let collection = state.toc.get(&name)?;
    let mut records = collection.retrieve(&[id], true, true, None).await?;
    match records.pop() {
        Some(r) => Ok(ApiOk(record_out(r, &WithPayload::All), started)),
        None => Err(ApiError::not_found(format!(
            "Not found: No point with id {id} found"
        ))),
    }
}

pub async fn scroll(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
    started: Started,
    JsonBody(body): JsonBody<ScrollRequest>,
) -> ApiResult<ScrollResult> {
    if body.order_by.as_ref().is_some_and(|o| !o.is_null()) {
        return Err(ApiError::bad_request(
            "Wrong input: scroll `order_by` is not supported yet; points come in id order",
        ));
    }
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
    let with_payload = body.with_payload.unwrap_or(WithPayload::All);
    let with_vector = body.with_vector.unwrap_or(WithVector::None).is_requested();
    let wp = with_payload.is_requested();
    let (offset, filter) = (body.offset, body.filter);
    let (records, next) = collection
        .scroll(
            offset,
            limit,
            filter.as_ref(),
            wp,
            with_vector,
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
    started: Started,
    JsonBody(body): JsonBody<CountRequest>,
) -> ApiResult<CountResult> {
    validate_filter(body.filter.as_ref())?;
    let collection = state.toc.get(&name)?;
    let count = collection
        .count(body.filter.as_ref(), body.shard_key.as_ref())
        .await?;
    Ok(ApiOk(CountResult { count }, started))
}
