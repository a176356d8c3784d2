//! `POST /collections/{c}/points/search/matrix/pairs` and `.../offsets`: Qdrant's distance
//! matrix. `sample` random points that match the filter and have the vector `using` are taken
//! (sorted by id); for each, its `limit` nearest among the other sampled points, by the same
//! scores a search gives. Pairs list `(a, b, score)`; offsets give the same as a sparse matrix
//! over the sampled ids.

use std::collections::HashMap;

use axum::extract::State;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::api::rest::AppState;
use crate::api::rest::json_body::{JsonBody, PathParams, QueryParams};
use crate::api::rest::models::ReadParams;
use crate::api::rest::points::validate_filter;
use crate::api::rest::response::{ApiError, ApiOk, ApiResult, Started};
use crate::api::rest::search::both;
use crate::api::rest::strict_mode;
use crate::cluster::collection::{Collection, SearchRequest, SearchTarget, ShardKeySelector};
use crate::index::filter::{Condition, Filter, HasIdCondition};
use crate::index::payload_selector::WithVector;
use crate::types::PointId;

/// Most points one matrix request may sample (it runs one search per sampled point).
pub const MAX_MATRIX_SAMPLE: usize = 1_000;
/// Most neighbours per sampled point.
pub const MAX_MATRIX_LIMIT: usize = 100;
/// Most points a sample is drawn from.
const MAX_MATRIX_POOL: usize = 100_000;

#[derive(Debug, Clone, Default, Deserialize)]
pub struct SearchMatrixRequest {
    pub filter: Option<Filter>,
    pub sample: Option<usize>,
    pub limit: Option<usize>,
    pub using: Option<String>,
    #[serde(default)]
    pub shard_key: Option<ShardKeySelector>,
}

#[derive(Debug, Serialize)]
pub struct MatrixPair {
    pub a: PointId,
    pub b: PointId,
    pub score: f32,
}

#[derive(Debug, Serialize)]
pub struct MatrixPairs {
    pub pairs: Vec<MatrixPair>,
}

#[derive(Debug, Serialize)]
pub struct MatrixOffsets {
    pub offsets_row: Vec<u64>,
    pub offsets_col: Vec<u64>,
    pub scores: Vec<f32>,
    pub ids: Vec<PointId>,
}

/// The sampled ids (sorted) and, for each, its neighbours among them with their scores.
async fn distance_matrix(
    collection: &Collection,
    body: SearchMatrixRequest,
) -> Result<(Vec<PointId>, Vec<Vec<(PointId, f32)>>), ApiError> {
    let sample = body.sample.unwrap_or(10);
    let limit = body.limit.unwrap_or(3);
    if sample == 0 || sample > MAX_MATRIX_SAMPLE || limit == 0 || limit > MAX_MATRIX_LIMIT {
        return Err(ApiError::unprocessable(format!(
            "Validation error in JSON body: sample must be in 1..={MAX_MATRIX_SAMPLE} and limit \
             in 1..={MAX_MATRIX_LIMIT}"
        )));
    }
    validate_filter(body.filter.as_ref())?;
    let using = body.using.unwrap_or_default();
    if collection.config().vector_kind(&using).is_none() {
        return Err(ApiError::bad_request(format!(
            "Wrong input: Not existing vector name error: {}",
            if using.is_empty() { "default" } else { &using }
        )));
    }
    let has_vector: Condition = serde_json::from_value(json!({ "has_vector": using }))
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let with_vector = Filter {
        must: Some(vec![has_vector]),
        ..Filter::default()
    };
    let pool_filter = both(body.filter.clone(), Some(with_vector));
    let (pool, _) = collection
        .scroll(
            None,
            MAX_MATRIX_POOL,
            pool_filter.as_ref(),
            false,
            &WithVector::Named(vec![using.clone()]),
            body.shard_key.as_ref(),
        )
        .await?;
    let mut pool: Vec<_> = pool.into_iter().filter(|r| r.vector.is_some()).collect();
    pool.shuffle(&mut rand::rng());
    pool.truncate(sample);
    if pool.len() < 2 {
        return Ok((Vec::new(), Vec::new()));
    }
    pool.sort_by_key(|r| r.id);
    let ids: Vec<PointId> = pool.iter().map(|r| r.id).collect();
    let mut rows = Vec::with_capacity(pool.len());
    for (i, record) in pool.iter().enumerate() {
        let Some(vector) = record.vector.as_ref().and_then(|v| v.get(&using)) else {
            rows.push(Vec::new());
            continue;
        };
        let others = ids
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, id)| *id);
        let only_others = Filter {
            must: Some(vec![Condition::HasId(HasIdCondition::new(others))]),
            ..Filter::default()
        };
        let request = SearchRequest {
            using: using.clone(),
            target: SearchTarget::Vector(vector.clone()),
            filter: both(body.filter.clone(), Some(only_others)),
            exclude: Default::default(),
            limit,
            offset: 0,
            ef: None,
            exact: false,
            quantization: Default::default(),
            score_threshold: None,
            with_payload: false,
            with_vector: WithVector::None,
        };
        let found = collection.search(&request, body.shard_key.as_ref()).await?;
        rows.push(found.into_iter().map(|r| (r.id, r.score)).collect());
    }
    Ok((ids, rows))
}

pub async fn pairs(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
    QueryParams(read): QueryParams<ReadParams>,
    started: Started,
    JsonBody(body): JsonBody<SearchMatrixRequest>,
) -> ApiResult<MatrixPairs> {
    let collection = state.toc.get(&name)?;
    strict_mode::check_read(&state, &collection, read.timeout, &body)?;
    let (ids, rows) = distance_matrix(&collection, body).await?;
    let pairs = ids
        .iter()
        .zip(rows)
        .flat_map(|(a, row)| {
            row.into_iter()
                .map(move |(b, score)| MatrixPair { a: *a, b, score })
        })
        .collect();
    Ok(ApiOk(MatrixPairs { pairs }, started))
}

pub async fn offsets(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
    QueryParams(read): QueryParams<ReadParams>,
    started: Started,
    JsonBody(body): JsonBody<SearchMatrixRequest>,
) -> ApiResult<MatrixOffsets> {
    let collection = state.toc.get(&name)?;
    strict_mode::check_read(&state, &collection, read.timeout, &body)?;
    let (ids, rows) = distance_matrix(&collection, body).await?;
    let position: HashMap<PointId, u64> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (*id, i as u64))
        .collect();
    let mut out = MatrixOffsets {
        offsets_row: Vec::new(),
        offsets_col: Vec::new(),
        scores: Vec::new(),
        ids: ids.clone(),
    };
    for (row, neighbours) in rows.into_iter().enumerate() {
        for (id, score) in neighbours {
            out.offsets_row.push(row as u64);
            out.offsets_col.push(position[&id]);
            out.scores.push(score);
        }
    }
    Ok(ApiOk(out, started))
}
