//! Search, recommend and the universal query endpoint.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use axum::extract::State;

use crate::api::rest::AppState;
use crate::api::rest::json_body::{JsonBody, PathParams};
use crate::api::rest::models::{
    MAX_BATCH_SEARCHES, MAX_EXAMPLES, MAX_HNSW_EF, MAX_SEARCH_WINDOW, QueryInterface, QueryRequest,
    QueryRequestBatch, QueryResponse, RecommendRequest, RecommendRequestBatch, RecommendStrategy,
    ScoredPointOut, SearchParams, SearchRequest as SearchBody, SearchRequestBatch, VectorInput,
};
use crate::api::rest::points::validate_filter;
use crate::api::rest::response::{ApiError, ApiOk, ApiResult, Started};
use crate::cluster::CollectionError;
use crate::cluster::collection::{Collection, SearchRequest, SearchTarget, ShardKeySelector};
use crate::index::filter::Filter;
use crate::index::payload_selector::{WithPayload, WithVector};
use crate::shard::local_shard::ScoredRecord;
use crate::types::PointId;

/// The parts every kind of search shares, checked.
struct Common {
    filter: Option<Filter>,
    limit: usize,
    offset: usize,
    params: SearchParams,
    score_threshold: Option<f32>,
    with_payload: WithPayload,
    with_vector: WithVector,
}

impl Common {
    fn new(
        filter: Option<Filter>,
        limit: usize,
        offset: Option<usize>,
        params: Option<SearchParams>,
        score_threshold: Option<f32>,
        with_payload: Option<WithPayload>,
        with_vector: Option<WithVector>,
    ) -> Result<Common, ApiError> {
        let offset = offset.unwrap_or(0);
        if limit == 0 {
            return Err(ApiError::unprocessable(
                "Validation error in JSON body: limit must be at least 1",
            ));
        }
        if limit.saturating_add(offset) > MAX_SEARCH_WINDOW {
            return Err(ApiError::unprocessable(format!(
                "Validation error in JSON body: limit + offset must not exceed {MAX_SEARCH_WINDOW}, got {}",
                limit.saturating_add(offset)
            )));
        }
        let params = params.unwrap_or_default();
        if let Some(ef) = params.hnsw_ef
            && (ef == 0 || ef > MAX_HNSW_EF)
        {
            return Err(ApiError::unprocessable(format!(
                "Validation error in JSON body: params.hnsw_ef must be between 1 and {MAX_HNSW_EF}, got {ef}"
            )));
        }
        if score_threshold.is_some_and(|t| !t.is_finite()) {
            return Err(ApiError::bad_request(
                "Wrong input: score_threshold must be a finite number",
            ));
        }
        validate_filter(filter.as_ref())?;
        Ok(Common {
            filter,
            limit,
            offset,
            params,
            score_threshold,
            with_payload: with_payload.unwrap_or(WithPayload::None),
            with_vector: with_vector.unwrap_or(WithVector::None),
        })
    }

    fn request(&self, target: SearchTarget, exclude: HashSet<PointId>) -> SearchRequest {
        SearchRequest {
            target,
            filter: self.filter.clone(),
            exclude,
            limit: self.limit,
            offset: self.offset,
            ef: self.params.hnsw_ef,
            exact: self.params.exact.unwrap_or(false),
            score_threshold: self.score_threshold,
            with_payload: self.with_payload.is_requested(),
            with_vector: self.with_vector.is_requested(),
        }
    }
}

/// One prepared search and how to render its answer.
struct Prepared {
    request: SearchRequest,
    with_payload: WithPayload,
    shard_key: Option<ShardKeySelector>,
}

/// Example vectors looked up by id before a request is prepared.
type Examples = HashMap<PointId, Vec<f32>>;

fn example(examples: &Examples, id: &PointId) -> Result<Vec<f32>, ApiError> {
    examples
        .get(id)
        .cloned()
        .ok_or_else(|| CollectionError::PointNotFound(id.to_string()).into())
}

/// A kind of search body: which stored vectors it refers to, and how it becomes a search.
trait SearchBodyKind: Send + 'static {
    fn example_ids(&self) -> Vec<PointId>;
    fn shard_key(&self) -> Option<&ShardKeySelector>;
    fn prepare(self, collection: &Collection, examples: &Examples) -> Result<Prepared, ApiError>;
}

fn ids_of(inputs: &[VectorInput]) -> impl Iterator<Item = PointId> + '_ {
    inputs.iter().filter_map(|i| match i {
        VectorInput::Id(id) => Some(*id),
        VectorInput::Vector(_) => None,
    })
}

impl SearchBodyKind for SearchBody {
    fn example_ids(&self) -> Vec<PointId> {
        Vec::new()
    }
    fn shard_key(&self) -> Option<&ShardKeySelector> {
        self.shard_key.as_ref()
    }
    fn prepare(self, _: &Collection, _: &Examples) -> Result<Prepared, ApiError> {
        prepare_search(self)
    }
}

impl SearchBodyKind for RecommendRequest {
    fn example_ids(&self) -> Vec<PointId> {
        ids_of(&self.positive)
            .chain(ids_of(&self.negative))
            .collect()
    }
    fn shard_key(&self) -> Option<&ShardKeySelector> {
        self.shard_key.as_ref()
    }
    fn prepare(self, collection: &Collection, examples: &Examples) -> Result<Prepared, ApiError> {
        prepare_recommend(collection, examples, self)
    }
}

impl SearchBodyKind for QueryRequest {
    fn example_ids(&self) -> Vec<PointId> {
        match &self.query {
            Some(QueryInterface::Nearest(VectorInput::Id(id))) => vec![*id],
            Some(QueryInterface::Recommend(r)) => {
                ids_of(&r.positive).chain(ids_of(&r.negative)).collect()
            }
            _ => Vec::new(),
        }
    }
    fn shard_key(&self) -> Option<&ShardKeySelector> {
        self.shard_key.as_ref()
    }
    fn prepare(self, collection: &Collection, examples: &Examples) -> Result<Prepared, ApiError> {
        prepare_query(collection, examples, self)
    }
}

fn render(records: Vec<ScoredRecord>, with_payload: &WithPayload) -> Vec<ScoredPointOut> {
    records
        .into_iter()
        .map(|r| ScoredPointOut {
            id: r.id,
            version: r.version,
            score: r.score,
            payload: r.payload.and_then(|p| with_payload.select(&p)),
            vector: r.vector,
            shard_key: None,
            order_value: None,
        })
        .collect()
}

fn check_using(using: Option<&str>) -> Result<(), ApiError> {
    match using {
        Some(name) if !name.is_empty() => Err(ApiError::bad_request(format!(
            "Wrong input: vector `{name}` does not exist: this collection has one unnamed vector"
        ))),
        _ => Ok(()),
    }
}

/// Resolves examples (ids or vectors) to vectors; the ids are also returned so that the
/// examples can be excluded from the answer.
fn resolve_examples(
    stored: &Examples,
    examples: &[VectorInput],
    ids: &mut HashSet<PointId>,
) -> Result<Vec<Vec<f32>>, ApiError> {
    examples
        .iter()
        .map(|e| match e {
            VectorInput::Vector(v) => Ok(v.clone()),
            VectorInput::Id(id) => {
                ids.insert(*id);
                example(stored, id)
            }
        })
        .collect()
}

fn average(vectors: &[Vec<f32>], dim: usize) -> Vec<f32> {
    let mut avg = vec![0.0f32; dim];
    for v in vectors {
        for (a, x) in avg.iter_mut().zip(v) {
            *a += x;
        }
    }
    let n = vectors.len().max(1) as f32;
    avg.iter_mut().for_each(|a| *a /= n);
    avg
}

fn recommend_target(
    collection: &Collection,
    stored: &Examples,
    positive: &[VectorInput],
    negative: &[VectorInput],
    strategy: RecommendStrategy,
    exclude: &mut HashSet<PointId>,
) -> Result<SearchTarget, ApiError> {
    if positive.len() + negative.len() > MAX_EXAMPLES {
        return Err(ApiError::bad_request(format!(
            "Wrong input: at most {MAX_EXAMPLES} examples per recommendation"
        )));
    }
    let pos = resolve_examples(stored, positive, exclude)?;
    let neg = resolve_examples(stored, negative, exclude)?;
    for v in pos.iter().chain(&neg) {
        collection.prepare_vector(v.clone())?;
    }
    match strategy {
        RecommendStrategy::AverageVector => {
            if pos.is_empty() {
                return Err(ApiError::bad_request(
                    "Wrong input: the average_vector strategy needs at least one positive example",
                ));
            }
            let dim = collection.config().dim();
            let avg_pos = average(&pos, dim);
            let target = if neg.is_empty() {
                avg_pos
            } else {
                let avg_neg = average(&neg, dim);
                avg_pos
                    .iter()
                    .zip(&avg_neg)
                    .map(|(p, n)| p + p - n)
                    .collect()
            };
            Ok(SearchTarget::Vector(target))
        }
        RecommendStrategy::BestScore | RecommendStrategy::SumScores => {
            if pos.is_empty() && neg.is_empty() {
                return Err(ApiError::bad_request(
                    "Wrong input: give at least one positive or negative example",
                ));
            }
            Ok(if strategy == RecommendStrategy::BestScore {
                SearchTarget::BestScore {
                    positive: pos,
                    negative: neg,
                }
            } else {
                SearchTarget::SumScores {
                    positive: pos,
                    negative: neg,
                }
            })
        }
    }
}

fn prepare_search(body: SearchBody) -> Result<Prepared, ApiError> {
    let common = Common::new(
        body.filter,
        body.limit,
        body.offset,
        body.params,
        body.score_threshold,
        body.with_payload,
        body.with_vector,
    )?;
    Ok(Prepared {
        request: common.request(SearchTarget::Vector(body.vector.0), HashSet::new()),
        with_payload: common.with_payload,
        shard_key: body.shard_key,
    })
}

fn prepare_recommend(
    collection: &Collection,
    stored: &Examples,
    body: RecommendRequest,
) -> Result<Prepared, ApiError> {
    check_using(body.using.as_deref())?;
    if body.lookup_from.as_ref().is_some_and(|l| !l.is_null()) {
        return Err(ApiError::bad_request(
            "Wrong input: `lookup_from` is not supported yet",
        ));
    }
    let common = Common::new(
        body.filter,
        body.limit,
        body.offset,
        body.params,
        body.score_threshold,
        body.with_payload,
        body.with_vector,
    )?;
    let mut exclude = HashSet::new();
    let target = recommend_target(
        collection,
        stored,
        &body.positive,
        &body.negative,
        body.strategy.unwrap_or_default(),
        &mut exclude,
    )?;
    Ok(Prepared {
        request: common.request(target, exclude),
        with_payload: common.with_payload,
        shard_key: body.shard_key,
    })
}

/// `None` when the query has no `query`: Qdrant then returns points in id order.
fn prepare_query(
    collection: &Collection,
    stored: &Examples,
    body: QueryRequest,
) -> Result<Prepared, ApiError> {
    check_using(body.using.as_deref())?;
    if body
        .prefetch
        .as_ref()
        .is_some_and(|p| !p.is_null() && p.as_array().is_none_or(|a| !a.is_empty()))
    {
        return Err(ApiError::bad_request(
            "Wrong input: `prefetch` is not supported yet",
        ));
    }
    if body.lookup_from.as_ref().is_some_and(|l| !l.is_null()) {
        return Err(ApiError::bad_request(
            "Wrong input: `lookup_from` is not supported yet",
        ));
    }
    let common = Common::new(
        body.filter,
        body.limit.unwrap_or(10),
        body.offset,
        body.params,
        body.score_threshold,
        body.with_payload,
        body.with_vector,
    )?;
    let mut exclude = HashSet::new();
    let target = match body.query {
        Some(QueryInterface::Nearest(VectorInput::Vector(v))) => SearchTarget::Vector(v),
        Some(QueryInterface::Nearest(VectorInput::Id(id))) => {
            exclude.insert(id);
            SearchTarget::Vector(example(stored, &id)?)
        }
        Some(QueryInterface::Recommend(r)) => recommend_target(
            collection,
            stored,
            &r.positive,
            &r.negative,
            r.strategy.unwrap_or_default(),
            &mut exclude,
        )?,
        None => SearchTarget::IdOrder,
    };
    Ok(Prepared {
        request: common.request(target, exclude),
        with_payload: common.with_payload,
        shard_key: body.shard_key,
    })
}

fn check_batch(n: usize) -> Result<(), ApiError> {
    if n > MAX_BATCH_SEARCHES {
        return Err(ApiError::unprocessable(format!(
            "Validation error in JSON body: at most {MAX_BATCH_SEARCHES} searches per batch, got {n}"
        )));
    }
    Ok(())
}

/// Looks up the stored vectors each body refers to, prepares every body (so that a bad one
/// fails the batch before anything runs), then runs the searches.
async fn run_batch<B: SearchBodyKind>(
    collection: Arc<Collection>,
    bodies: Vec<B>,
) -> Result<Vec<Vec<ScoredPointOut>>, ApiError> {
    let mut prepared = Vec::with_capacity(bodies.len());
    for body in bodies {
        let ids = body.example_ids();
        let mut examples = Examples::new();
        if !ids.is_empty() {
            for r in collection
                .retrieve(&ids, false, true, body.shard_key())
                .await?
            {
                if let Some(v) = r.vector {
                    examples.insert(r.id, v);
                }
            }
        }
        prepared.push(body.prepare(&collection, &examples)?);
    }
    let searches = prepared
        .iter()
        .map(|p| collection.search(&p.request, p.shard_key.as_ref()));
    let answers = futures::future::join_all(searches).await;
    prepared
        .iter()
        .zip(answers)
        .map(|(p, records)| Ok(render(records?, &p.with_payload)))
        .collect()
}

pub async fn search(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
    started: Started,
    JsonBody(body): JsonBody<SearchBody>,
) -> ApiResult<Vec<ScoredPointOut>> {
    let collection = state.toc.get(&name)?;
    let mut out = run_batch(collection, vec![body]).await?;
    Ok(ApiOk(out.pop().unwrap_or_default(), started))
}

pub async fn search_batch(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
    started: Started,
    JsonBody(body): JsonBody<SearchRequestBatch>,
) -> ApiResult<Vec<Vec<ScoredPointOut>>> {
    check_batch(body.searches.len())?;
    let collection = state.toc.get(&name)?;
    Ok(ApiOk(run_batch(collection, body.searches).await?, started))
}

pub async fn recommend(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
    started: Started,
    JsonBody(body): JsonBody<RecommendRequest>,
) -> ApiResult<Vec<ScoredPointOut>> {
    let collection = state.toc.get(&name)?;
    let mut out = run_batch(collection, vec![body]).await?;
    Ok(ApiOk(out.pop().unwrap_or_default(), started))
}

pub async fn recommend_batch(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
    started: Started,
    JsonBody(body): JsonBody<RecommendRequestBatch>,
) -> ApiResult<Vec<Vec<ScoredPointOut>>> {
    check_batch(body.searches.len())?;
    let collection = state.toc.get(&name)?;
    Ok(ApiOk(run_batch(collection, body.searches).await?, started))
}

pub async fn query(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
    started: Started,
    JsonBody(body): JsonBody<QueryRequest>,
) -> ApiResult<QueryResponse> {
    let collection = state.toc.get(&name)?;
    let mut out = run_batch(collection, vec![body]).await?;
    Ok(ApiOk(
        QueryResponse {
            points: out.pop().unwrap_or_default(),
        },
        started,
    ))
}

pub async fn query_batch(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
    started: Started,
    JsonBody(body): JsonBody<QueryRequestBatch>,
) -> ApiResult<Vec<QueryResponse>> {
    check_batch(body.searches.len())?;
    let collection = state.toc.get(&name)?;
    let out = run_batch(collection, body.searches).await?;
    Ok(ApiOk(
        out.into_iter()
            .map(|points| QueryResponse { points })
            .collect(),
        started,
    ))
}
