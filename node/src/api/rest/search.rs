//! Search, recommend, discover and the universal query endpoint (prefetch, fusion, MMR), in
//! Qdrant's semantics (see `qdrant-openapi-v1.18.3.json` and Qdrant's `collection_query`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use axum::extract::State;

use crate::api::rest::AppState;
use crate::api::rest::introspection;
use crate::api::rest::json_body::{JsonBody, PathParams, QueryParams};
use crate::api::rest::models::{
    ContextPair, Fusion, GroupsResult, LookupLocation, MAX_BATCH_SEARCHES, MAX_EXAMPLES,
    MAX_HNSW_EF, MAX_OVERSAMPLING, MAX_SEARCH_WINDOW, Mmr, PointGroupOut, Prefetch,
    QueryGroupsRequest, QueryInterface, QueryRequest, QueryRequestBatch, QueryResponse, ReadParams,
    RecommendRequest, RecommendRequestBatch, RecommendStrategy, ScoredPointOut, SearchParams,
    SearchRequest as SearchBody, SearchRequestBatch, VectorInput, VectorStructOut,
};
use crate::api::rest::points::validate_filter;
use crate::api::rest::response::{ApiError, ApiOk, ApiResult, Started};
use crate::api::rest::strict_mode;
use crate::cluster::collection::{Collection, SearchRequest, SearchTarget, ShardKeySelector};
use crate::cluster::shard_requests::similarity_of;
use crate::cluster::toc::TableOfContent;
use crate::index::filter::{Condition, Filter, HasIdCondition};
use crate::index::payload_path::JsonPath;
use crate::index::payload_selector::{WithPayload, WithVector};
use crate::index::quantization::QuantizationSearch;
use crate::shard::local_shard::ScoredRecord;
use crate::types::{Payload, PointId, SparseVector, VectorData};

/// Most prefetches in one query, counted over every level.
pub const MAX_PREFETCHES: usize = 64;
/// Deepest nesting of prefetches.
pub const MAX_PREFETCH_DEPTH: usize = 8;
/// Most candidates an MMR query re-ranks (each pair is compared).
pub const MAX_MMR_CANDIDATES: usize = 2_000;
/// Most points a random sample draws from.
pub const MAX_SAMPLE_POOL: usize = 100_000;

/// The parts every kind of search shares, checked.
#[derive(Clone)]
struct Common {
    using: String,
    filter: Option<Filter>,
    limit: usize,
    offset: usize,
    params: SearchParams,
    score_threshold: Option<f32>,
    with_payload: WithPayload,
    with_vector: WithVector,
}

impl Common {
    #[allow(clippy::too_many_arguments)]
    fn new(
        using: Option<String>,
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
        if let Some(oversampling) = params.quantization.and_then(|q| q.oversampling)
            && !(1.0..=MAX_OVERSAMPLING).contains(&oversampling)
        {
            return Err(ApiError::unprocessable(format!(
                "Validation error in JSON body: params.quantization.oversampling must be between 1 and {MAX_OVERSAMPLING}, got {oversampling}"
            )));
        }
        if score_threshold.is_some_and(|t| !t.is_finite()) {
            return Err(ApiError::bad_request(
                "Wrong input: score_threshold must be a finite number",
            ));
        }
        validate_filter(filter.as_ref())?;
        Ok(Common {
            using: using.unwrap_or_default(),
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
            using: self.using.clone(),
            target,
            filter: self.filter.clone(),
            exclude,
            limit: self.limit,
            offset: self.offset,
            ef: self.params.hnsw_ef,
            exact: self.params.exact.unwrap_or(false),
            quantization: self.params.quantization.map_or_else(Default::default, |q| {
                QuantizationSearch {
                    ignore: q.ignore.unwrap_or(false),
                    rescore: q.rescore,
                    oversampling: q.oversampling,
                }
            }),
            score_threshold: self.score_threshold,
            with_payload: self.with_payload.is_requested(),
            with_vector: self.with_vector.clone(),
        }
    }
}

fn vector_name(name: &str) -> &str {
    if name.is_empty() { "default" } else { name }
}

/// Resolves example ids to stored vectors: from the searched collection (the ids are then
/// excluded from the answer, as in Qdrant), or from `lookup_from`'s collection.
struct Examples<'a> {
    toc: &'a TableOfContent,
    collection: &'a Arc<Collection>,
    using: &'a str,
    lookup: Option<&'a LookupLocation>,
    shard_key: Option<&'a ShardKeySelector>,
    exclude: HashSet<PointId>,
}

impl Examples<'_> {
    async fn resolve(&mut self, input: &VectorInput) -> Result<VectorData, ApiError> {
        let id = match input {
            VectorInput::Vector(v) => return Ok(v.clone()),
            VectorInput::Id(id) => *id,
        };
        let (collection, name, shard_key) = match self.lookup {
            Some(lookup) => {
                let other = self.toc.get(&lookup.collection)?;
                let name = lookup
                    .vector
                    .clone()
                    .unwrap_or_else(|| self.using.to_string());
                (other, name, lookup.shard_key.as_ref())
            }
            None => {
                self.exclude.insert(id);
                (
                    Arc::clone(self.collection),
                    self.using.to_string(),
                    self.shard_key,
                )
            }
        };
        if collection.config().vector_kind(&name).is_none() {
            return Err(ApiError::bad_request(format!(
                "Wrong input: Not existing vector name error: {}",
                vector_name(&name)
            )));
        }
        Ok(collection.vector_of(&id, &name, shard_key).await?)
    }

    async fn resolve_all(&mut self, inputs: &[VectorInput]) -> Result<Vec<VectorData>, ApiError> {
        let mut out = Vec::with_capacity(inputs.len());
        for input in inputs {
            out.push(self.resolve(input).await?);
        }
        Ok(out)
    }

    async fn resolve_pairs(
        &mut self,
        pairs: &[ContextPair],
    ) -> Result<Vec<(VectorData, VectorData)>, ApiError> {
        if pairs.len() > MAX_EXAMPLES {
            return Err(ApiError::bad_request(format!(
                "Wrong input: at most {MAX_EXAMPLES} context pairs"
            )));
        }
        let mut out = Vec::with_capacity(pairs.len());
        for pair in pairs {
            out.push((
                self.resolve(&pair.positive).await?,
                self.resolve(&pair.negative).await?,
            ));
        }
        Ok(out)
    }
}

/// Turns a search's output into Qdrant's shape.
fn render(records: Vec<ScoredRecord>, with_payload: &WithPayload) -> Vec<ScoredPointOut> {
    records
        .into_iter()
        .map(|r| ScoredPointOut {
            id: r.id,
            version: r.version,
            score: r.score,
            payload: r.payload.and_then(|p| with_payload.select(&p)),
            vector: r.vector.map(VectorStructOut),
            shard_key: None,
            order_value: r.order_value.and_then(|v| serde_json::to_value(v).ok()),
        })
        .collect()
}

/// The element-wise mean of dense vectors.
fn mean(vectors: &[Vec<f32>]) -> Vec<f32> {
    let dim = vectors.iter().map(Vec::len).max().unwrap_or(0);
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

/// The mean of sparse vectors over the union of their indices (missing entries count as 0).
fn sparse_mean(vectors: &[SparseVector]) -> HashMap<u32, f32> {
    let mut sum: HashMap<u32, f32> = HashMap::new();
    for v in vectors {
        for (i, x) in v.indices.iter().zip(&v.values) {
            *sum.entry(*i).or_insert(0.0) += x;
        }
    }
    let n = vectors.len().max(1) as f32;
    sum.values_mut().for_each(|x| *x /= n);
    sum
}

/// Qdrant's `average_vector` recommendation query: `2 * mean(positive) - mean(negative)` for
/// dense and sparse vectors (just the mean without negatives); for multivectors every positive
/// row followed by every negative row negated.
fn average_vector(
    positive: Vec<VectorData>,
    negative: Vec<VectorData>,
) -> Result<VectorData, ApiError> {
    /// The examples as one kind, or a 400 when they mix kinds.
    fn all_of<T>(
        vs: Vec<VectorData>,
        pick: fn(VectorData) -> Option<T>,
    ) -> Result<Vec<T>, ApiError> {
        vs.into_iter()
            .map(|v| {
                pick(v).ok_or_else(|| {
                    ApiError::bad_request("Wrong input: examples must all be of the searched kind")
                })
            })
            .collect()
    }
    fn dense(v: VectorData) -> Option<Vec<f32>> {
        match v {
            VectorData::Dense(d) => Some(d),
            _ => None,
        }
    }
    fn sparse(v: VectorData) -> Option<SparseVector> {
        match v {
            VectorData::Sparse(s) => Some(s),
            _ => None,
        }
    }
    fn multi(v: VectorData) -> Option<Vec<Vec<f32>>> {
        match v {
            VectorData::Multi(m) => Some(m),
            _ => None,
        }
    }
    match positive.first() {
        Some(VectorData::Dense(_)) => {
            let (pos, neg) = (mean(&all_of(positive, dense)?), all_of(negative, dense)?);
            if neg.is_empty() {
                return Ok(VectorData::Dense(pos));
            }
            let neg = mean(&neg);
            Ok(VectorData::Dense(
                pos.iter().zip(&neg).map(|(p, n)| p + p - n).collect(),
            ))
        }
        Some(VectorData::Sparse(_)) => {
            let pos = sparse_mean(&all_of(positive, sparse)?);
            let neg = all_of(negative, sparse)?;
            let merged: HashMap<u32, f32> = if neg.is_empty() {
                pos
            } else {
                let neg = sparse_mean(&neg);
                let mut merged: HashMap<u32, f32> = pos.iter().map(|(i, p)| (*i, p + p)).collect();
                for (i, n) in neg {
                    *merged.entry(i).or_insert(0.0) -= n;
                }
                merged
            };
            let (indices, values) = merged.into_iter().unzip();
            SparseVector::new(indices, values)
                .map(VectorData::Sparse)
                .map_err(|e| ApiError::bad_request(format!("Wrong input: {e}")))
        }
        Some(VectorData::Multi(_)) => {
            let mut rows: Vec<Vec<f32>> = all_of(positive, multi)?.into_iter().flatten().collect();
            for m in all_of(negative, multi)? {
                rows.extend(m.into_iter().map(|r| r.into_iter().map(|x| -x).collect()));
            }
            Ok(VectorData::Multi(rows))
        }
        None => Err(ApiError::bad_request(
            "Wrong input: Positive list is empty: the average_vector strategy needs at least one positive example",
        )),
    }
}

async fn recommend_target(
    examples: &mut Examples<'_>,
    positive: &[VectorInput],
    negative: &[VectorInput],
    strategy: RecommendStrategy,
) -> Result<SearchTarget, ApiError> {
    if positive.len() + negative.len() > MAX_EXAMPLES {
        return Err(ApiError::bad_request(format!(
            "Wrong input: at most {MAX_EXAMPLES} examples per recommendation"
        )));
    }
    let pos = examples.resolve_all(positive).await?;
    let neg = examples.resolve_all(negative).await?;
    match strategy {
        RecommendStrategy::AverageVector => Ok(SearchTarget::Vector(average_vector(pos, neg)?)),
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

fn check_using(collection: &Collection, using: &str) -> Result<(), ApiError> {
    if collection.config().vector_kind(using).is_none() {
        return Err(ApiError::bad_request(format!(
            "Wrong input: Not existing vector name error: {}",
            vector_name(using)
        )));
    }
    Ok(())
}

fn check_batch(n: usize) -> Result<(), ApiError> {
    if n > MAX_BATCH_SEARCHES {
        return Err(ApiError::unprocessable(format!(
            "Validation error in JSON body: at most {MAX_BATCH_SEARCHES} searches per batch, got {n}"
        )));
    }
    Ok(())
}

async fn run_search(
    collection: &Collection,
    body: SearchBody,
) -> Result<Vec<ScoredPointOut>, ApiError> {
    let common = Common::new(
        Some(body.vector.name.clone()),
        body.filter,
        body.limit,
        body.offset,
        body.params,
        body.score_threshold,
        body.with_payload,
        body.with_vector,
    )?;
    check_using(collection, &common.using)?;
    let request = common.request(SearchTarget::Vector(body.vector.vector), HashSet::new());
    let records = collection.search(&request, body.shard_key.as_ref()).await?;
    Ok(render(records, &common.with_payload))
}

async fn run_recommend(
    toc: &TableOfContent,
    collection: &Arc<Collection>,
    body: RecommendRequest,
) -> Result<Vec<ScoredPointOut>, ApiError> {
    let common = Common::new(
        body.using,
        body.filter,
        body.limit,
        body.offset,
        body.params,
        body.score_threshold,
        body.with_payload,
        body.with_vector,
    )?;
    check_using(collection, &common.using)?;
    let mut examples = Examples {
        toc,
        collection,
        using: &common.using,
        lookup: body.lookup_from.as_ref(),
        shard_key: body.shard_key.as_ref(),
        exclude: HashSet::new(),
    };
    let target = recommend_target(
        &mut examples,
        &body.positive,
        &body.negative,
        body.strategy.unwrap_or_default(),
    )
    .await?;
    let exclude = examples.exclude;
    let request = common.request(target, exclude);
    let records = collection.search(&request, body.shard_key.as_ref()).await?;
    Ok(render(records, &common.with_payload))
}

/// One level of a universal query: the root request or a prefetch.
struct Level {
    prefetch: Vec<Prefetch>,
    query: Option<QueryInterface>,
    common: Common,
    lookup_from: Option<LookupLocation>,
}

/// Merges two filters into one that requires both.
/// Both filters (either alone when the other is absent).
pub(crate) fn both(a: Option<Filter>, b: Option<Filter>) -> Option<Filter> {
    match (a, b) {
        (None, b) => b,
        (a, None) => a,
        (Some(a), Some(b)) => Some(Filter {
            must: Some(vec![Condition::Filter(a), Condition::Filter(b)]),
            ..Filter::default()
        }),
    }
}

fn count_prefetches(prefetch: &[Prefetch], depth: usize) -> Result<usize, ApiError> {
    if depth > MAX_PREFETCH_DEPTH {
        return Err(ApiError::bad_request(format!(
            "Wrong input: prefetches nest at most {MAX_PREFETCH_DEPTH} levels deep"
        )));
    }
    let mut n = prefetch.len();
    for p in prefetch {
        n += count_prefetches(&p.prefetch, depth + 1)?;
    }
    Ok(n)
}

/// Runs one level of a query and returns its `limit + offset` best points, best first, before
/// `offset` is applied (the caller skips it at the root). Prefetches inherit the level's filter
/// (Qdrant pushes the root filter down to every prefetch).
fn run_level<'a>(
    toc: &'a TableOfContent,
    collection: &'a Arc<Collection>,
    level: Level,
    shard_key: Option<&'a ShardKeySelector>,
) -> futures::future::BoxFuture<'a, Result<Vec<ScoredRecord>, ApiError>> {
    Box::pin(async move {
        let Level {
            prefetch,
            query,
            mut common,
            lookup_from,
        } = level;
        let window = common.limit.saturating_add(common.offset);
        if !prefetch.is_empty() {
            let mut sources = Vec::with_capacity(prefetch.len());
            for p in prefetch {
                let inner = Common::new(
                    p.using,
                    both(common.filter.clone(), p.filter),
                    p.limit.unwrap_or(10),
                    None,
                    p.params,
                    p.score_threshold,
                    Some(WithPayload::None),
                    Some(WithVector::None),
                )?;
                let level = Level {
                    prefetch: p.prefetch,
                    query: p.query,
                    common: inner,
                    lookup_from: p.lookup_from,
                };
                sources.push(run_level(toc, collection, level, shard_key).await?);
            }
            let Some(query) = query else {
                return Err(ApiError::bad_request(
                    "Wrong input: a query is required to merge prefetches",
                ));
            };
            if let QueryInterface::Fusion(fusion) = &query {
                let fused = fuse(fusion, &sources, window, common.score_threshold)?;
                return fetch(collection, fused, &common, shard_key).await;
            }
            if let QueryInterface::Formula(formula) = &query {
                return rescore_with_formula(
                    collection, formula, &sources, window, &common, shard_key,
                )
                .await;
            }
            // Rescoring: the outer query ranks the union of what the prefetches found.
            let union: Vec<PointId> = sources.iter().flatten().map(|r| r.id).collect();
            if union.is_empty() {
                return Ok(Vec::new());
            }
            let only = Filter {
                must: Some(vec![Condition::HasId(HasIdCondition::new(union))]),
                ..Filter::default()
            };
            common.filter = both(common.filter.take(), Some(only));
            return run_leaf(toc, collection, query, common, lookup_from, shard_key).await;
        }
        match query {
            None => {
                // The root skips `offset` itself, after every level is merged.
                common.limit = window;
                common.offset = 0;
                let request = common.request(SearchTarget::IdOrder, HashSet::new());
                Ok(collection.search(&request, shard_key).await?)
            }
            Some(QueryInterface::Fusion(_)) => Err(ApiError::bad_request(
                "Wrong input: cannot apply Fusion without prefetches",
            )),
            Some(QueryInterface::Formula(_)) => Err(ApiError::bad_request(
                "Wrong input: cannot apply Formula without prefetches",
            )),
            Some(query) => run_leaf(toc, collection, query, common, lookup_from, shard_key).await,
        }
    })
}

/// A query over the collection (no prefetch left to merge).
async fn run_leaf(
    toc: &TableOfContent,
    collection: &Arc<Collection>,
    query: QueryInterface,
    mut common: Common,
    lookup_from: Option<LookupLocation>,
    shard_key: Option<&ShardKeySelector>,
) -> Result<Vec<ScoredRecord>, ApiError> {
    if !matches!(query, QueryInterface::Sample | QueryInterface::OrderBy(_)) {
        check_using(collection, &common.using)?;
    }
    let using = common.using.clone();
    let mut examples = Examples {
        toc,
        collection,
        using: &using,
        lookup: lookup_from.as_ref(),
        shard_key,
        exclude: HashSet::new(),
    };
    let target = match query {
        QueryInterface::Nearest(input, Some(mmr)) => {
            let vector = examples.resolve(&input).await?;
            let exclude = examples.exclude;
            return run_mmr(collection, vector, mmr, common, exclude, shard_key).await;
        }
        QueryInterface::Nearest(input, None) => {
            SearchTarget::Vector(examples.resolve(&input).await?)
        }
        QueryInterface::Recommend(r) => {
            recommend_target(
                &mut examples,
                &r.positive,
                &r.negative,
                r.strategy.unwrap_or_default(),
            )
            .await?
        }
        QueryInterface::Discover(d) => SearchTarget::Discover {
            target: examples.resolve(&d.target).await?,
            context: examples.resolve_pairs(&d.context).await?,
        },
        QueryInterface::Context(pairs) => SearchTarget::Context {
            pairs: examples.resolve_pairs(&pairs).await?,
        },
        QueryInterface::RelevanceFeedback(input) => {
            relevance_feedback_target(&mut examples, input).await?
        }
        QueryInterface::Sample => {
            return sample(collection, common, shard_key).await;
        }
        QueryInterface::OrderBy(order_by) => {
            if common.score_threshold.is_some() {
                return Err(ApiError::bad_request(
                    "Wrong input: `score_threshold` cannot be used with `order_by`",
                ));
            }
            // The root skips `offset` itself, after every level is merged.
            let window = common.limit.saturating_add(common.offset);
            let request = crate::api::rest::points::order_by_request(
                collection,
                &order_by,
                window,
                common.filter.clone(),
                common.with_payload.is_requested(),
                common.with_vector.clone(),
            )?;
            let ordered = collection.order_by(request, shard_key).await?;
            return Ok(ordered
                .into_iter()
                .map(|(value, r)| ScoredRecord {
                    id: r.id,
                    version: r.version,
                    score: 1.0,
                    payload: r.payload,
                    vector: r.vector,
                    order_value: Some(value),
                })
                .collect());
        }
        QueryInterface::Fusion(_) | QueryInterface::Formula(_) => {
            unreachable!("handled by the caller")
        }
    };
    let exclude = examples.exclude;
    // The root skips `offset` itself, after every level is merged.
    let window = common.limit.saturating_add(common.offset);
    common.limit = window;
    common.offset = 0;
    let request = common.request(target, exclude);
    Ok(collection.search(&request, shard_key).await?)
}

/// Qdrant's naive relevance feedback: every ordered pair of feedback examples whose scores
/// differ (the better first) weighs `(score difference)^b * c`; the target weighs `a`. Example
/// ids are excluded from the answer like other examples.
async fn relevance_feedback_target(
    examples: &mut Examples<'_>,
    input: crate::api::rest::models::RelevanceFeedbackInput,
) -> Result<SearchTarget, ApiError> {
    if input.feedback.len() > MAX_FEEDBACK_EXAMPLES {
        return Err(ApiError::bad_request(format!(
            "Wrong input: at most {MAX_FEEDBACK_EXAMPLES} feedback examples"
        )));
    }
    let naive = input.strategy.naive;
    if ![naive.a, naive.b, naive.c].iter().all(|x| x.is_finite()) {
        return Err(ApiError::bad_request(
            "Wrong input: feedback strategy parameters must be finite numbers",
        ));
    }
    let target = examples.resolve(&input.target).await?;
    let mut resolved = Vec::with_capacity(input.feedback.len());
    for item in &input.feedback {
        if !item.score.is_finite() {
            return Err(ApiError::bad_request(
                "Wrong input: feedback scores must be finite numbers",
            ));
        }
        resolved.push((examples.resolve(&item.example).await?, item.score));
    }
    let mut pairs = Vec::new();
    for (better, better_score) in &resolved {
        for (worse, worse_score) in &resolved {
            let confidence = better_score - worse_score;
            if confidence > 0.0 {
                let weight = confidence.powf(naive.b) * naive.c;
                pairs.push((better.clone(), worse.clone(), weight));
            }
        }
    }
    Ok(SearchTarget::RelevanceFeedback {
        target,
        a: naive.a,
        pairs,
    })
}

/// Most feedback examples in one relevance-feedback query (their pairs grow quadratically).
const MAX_FEEDBACK_EXAMPLES: usize = 64;

/// Qdrant's maximal marginal relevance: candidates from a plain search (`candidates_limit`,
/// default `limit`), then repeatedly the candidate with the best
/// `lambda * sim(query, c) - (1 - lambda) * max sim(c, selected)`, `lambda = 1 - diversity`
/// (default 0.5). Points come in selection order with their search scores.
async fn run_mmr(
    collection: &Collection,
    query: VectorData,
    mmr: Mmr,
    mut common: Common,
    exclude: HashSet<PointId>,
    shard_key: Option<&ShardKeySelector>,
) -> Result<Vec<ScoredRecord>, ApiError> {
    let diversity = mmr.diversity.unwrap_or(0.5);
    if !(0.0..=1.0).contains(&diversity) {
        return Err(ApiError::unprocessable(
            "Validation error in JSON body: mmr.diversity must be between 0 and 1",
        ));
    }
    let window = common.limit.saturating_add(common.offset);
    let candidates_limit = mmr.candidates_limit.unwrap_or(window).max(window);
    if candidates_limit > MAX_MMR_CANDIDATES {
        return Err(ApiError::unprocessable(format!(
            "Validation error in JSON body: mmr.candidates_limit must not exceed {MAX_MMR_CANDIDATES}"
        )));
    }
    let wanted = common.with_vector.clone();
    common.limit = candidates_limit;
    common.offset = 0;
    common.with_vector = WithVector::Named(vec![common.using.clone()]);
    let request = common.request(SearchTarget::Vector(query.clone()), exclude);
    let candidates = collection.search(&request, shard_key).await?;
    if candidates.is_empty() {
        return Ok(candidates);
    }
    let config = collection.config();
    let distance = config.dense(&common.using).map(|p| p.distance);
    let query = crate::cluster::collection::prepare_vector(&config, &common.using, query)?;
    let stored: Vec<Option<VectorData>> = candidates
        .iter()
        .map(|c| {
            c.vector
                .as_ref()
                .and_then(|v| v.get(&common.using).cloned())
        })
        .collect();
    let sim = |a: &VectorData, b: &VectorData| similarity_of(distance, a, b);
    let relevance: Vec<f32> = stored
        .iter()
        .map(|v| v.as_ref().map_or(f32::NEG_INFINITY, |v| sim(v, &query)))
        .collect();
    let lambda = 1.0 - diversity;
    let mut selected = vec![0usize];
    let mut remaining: Vec<usize> = (1..candidates.len()).collect();
    let mut max_sim_to_selected: Vec<f32> = vec![f32::NEG_INFINITY; candidates.len()];
    while selected.len() < window && !remaining.is_empty() {
        let last = *selected.last().expect("one selected");
        let mut best: Option<(usize, f32)> = None;
        for (pos, &c) in remaining.iter().enumerate() {
            // The candidate is the query side of the pair, as Qdrant computes it (MaxSim is
            // not symmetric).
            if let (Some(candidate), Some(picked)) = (&stored[c], &stored[last]) {
                max_sim_to_selected[c] = max_sim_to_selected[c].max(sim(picked, candidate));
            }
            let score = lambda * relevance[c] - (1.0 - lambda) * max_sim_to_selected[c];
            if best.is_none_or(|(_, s)| score > s) {
                best = Some((pos, score));
            }
        }
        let (pos, _) = best.expect("remaining is not empty");
        selected.push(remaining.remove(pos));
    }
    let mut candidates: Vec<Option<ScoredRecord>> = candidates.into_iter().map(Some).collect();
    Ok(selected
        .into_iter()
        .filter_map(|i| candidates[i].take())
        .map(|mut r| {
            r.vector = match &wanted {
                WithVector::None => None,
                _ => r.vector.map(|mut v| {
                    v.retain(|name, _| wanted.wants(name));
                    v
                }),
            };
            r
        })
        .collect())
}

/// Qdrant's `sample: random`: `limit` matching points in random order, each with score 1.
async fn sample(
    collection: &Collection,
    common: Common,
    shard_key: Option<&ShardKeySelector>,
) -> Result<Vec<ScoredRecord>, ApiError> {
    use rand::seq::SliceRandom;
    let (records, _) = collection
        .scroll(
            None,
            MAX_SAMPLE_POOL,
            common.filter.as_ref(),
            common.with_payload.is_requested(),
            &common.with_vector,
            shard_key,
        )
        .await?;
    let mut records: Vec<ScoredRecord> = records.into_iter().map(ScoredRecord::unscored).collect();
    records.shuffle(&mut rand::rng());
    // Qdrant ignores `offset` for a random sample: the root skips none.
    records.truncate(common.limit);
    Ok(records)
}

/// Fuses the prefetches' lists (each best first) into the `window` best points.
fn fuse(
    fusion: &Fusion,
    sources: &[Vec<ScoredRecord>],
    window: usize,
    score_threshold: Option<f32>,
) -> Result<Vec<ScoredRecord>, ApiError> {
    let mut scores: HashMap<PointId, f32> = HashMap::new();
    let mut order: Vec<PointId> = Vec::new();
    let mut add = |id: PointId, s: f32| {
        let slot = scores.entry(id).or_insert_with(|| {
            order.push(id);
            0.0
        });
        *slot += s;
    };
    match fusion {
        Fusion::Rrf { k, weights } => {
            if let Some(w) = weights
                && w.len() != sources.len()
            {
                return Err(ApiError::bad_request(format!(
                    "Wrong input: rrf has {} weights for {} prefetches",
                    w.len(),
                    sources.len()
                )));
            }
            for (i, source) in sources.iter().enumerate() {
                let weight = weights.as_ref().map_or(1.0, |w| w[i]);
                for (rank, r) in source.iter().enumerate() {
                    let s = if weight <= 0.0 {
                        0.0
                    } else {
                        1.0 / ((rank as f32 + 1.0) / weight + *k as f32 - 1.0)
                    };
                    add(r.id, s);
                }
            }
        }
        Fusion::Dbsf => {
            for source in sources.iter().filter(|s| !s.is_empty()) {
                let n = source.len();
                let mean = source.iter().map(|r| r.score).sum::<f32>() / n as f32;
                let variance = if n > 1 {
                    source.iter().map(|r| (r.score - mean).powi(2)).sum::<f32>() / (n - 1) as f32
                } else {
                    0.0
                };
                let sd = variance.sqrt();
                for r in source {
                    let s = if n == 1 || variance == 0.0 {
                        0.5
                    } else {
                        (r.score - (mean - 3.0 * sd)) / (6.0 * sd)
                    };
                    add(r.id, s);
                }
            }
        }
    }
    let mut fused: Vec<(PointId, f32)> = order.into_iter().map(|id| (id, scores[&id])).collect();
    fused.sort_by(|a, b| b.1.total_cmp(&a.1));
    fused.truncate(window);
    Ok(fused
        .into_iter()
        .filter(|(_, s)| score_threshold.is_none_or(|t| *s >= t))
        .map(|(id, score)| ScoredRecord {
            id,
            version: 0,
            score,
            payload: None,
            vector: None,
            order_value: None,
        })
        .collect())
}

/// Qdrant's score boosting: every point any prefetch found is scored by the formula (with its
/// score in each prefetch, its whole payload and which vectors it has), best first; the first
/// `window` are kept, then those below `score_threshold` dropped. An error evaluating the formula
/// for one point fails the query, as in Qdrant.
async fn rescore_with_formula(
    collection: &Collection,
    formula: &crate::index::formula::Formula,
    sources: &[Vec<ScoredRecord>],
    window: usize,
    common: &Common,
    shard_key: Option<&ShardKeySelector>,
) -> Result<Vec<ScoredRecord>, ApiError> {
    let mut ids: Vec<PointId> = Vec::new();
    let mut scores: HashMap<PointId, Vec<Option<f32>>> = HashMap::new();
    for (i, source) in sources.iter().enumerate() {
        for r in source {
            let slot = scores.entry(r.id).or_insert_with(|| {
                ids.push(r.id);
                vec![None; sources.len()]
            });
            slot[i].get_or_insert(r.score);
        }
    }
    // The whole payload and the names of the vectors each point has; what the level asks for
    // is fetched afterwards.
    let records = collection
        .retrieve(&ids, true, &WithVector::All, shard_key)
        .await?;
    let empty = Payload::new();
    let mut scored = Vec::with_capacity(records.len());
    for r in records {
        let names: Vec<&String> = r.vector.iter().flat_map(|v| v.keys()).collect();
        let has_vector = |name: &str| names.iter().any(|n| n.as_str() == name);
        let score = formula
            .evaluate(
                r.id,
                r.payload.as_ref().unwrap_or(&empty),
                &has_vector,
                &scores[&r.id],
            )
            .map_err(|e| ApiError::bad_request(format!("Wrong input: {e}")))?;
        scored.push(ScoredRecord {
            id: r.id,
            version: r.version,
            score,
            payload: None,
            vector: None,
            order_value: None,
        });
    }
    scored.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.id.cmp(&b.id)));
    scored.truncate(window);
    scored.retain(|r| common.score_threshold.is_none_or(|t| r.score >= t));
    fetch(collection, scored, common, shard_key).await
}

/// Adds the payloads and vectors a level asks for to fused points.
async fn fetch(
    collection: &Collection,
    mut fused: Vec<ScoredRecord>,
    common: &Common,
    shard_key: Option<&ShardKeySelector>,
) -> Result<Vec<ScoredRecord>, ApiError> {
    let ids: Vec<PointId> = fused.iter().map(|r| r.id).collect();
    let records = collection
        .retrieve(
            &ids,
            common.with_payload.is_requested(),
            &common.with_vector,
            shard_key,
        )
        .await?;
    let mut by_id: HashMap<PointId, _> = records.into_iter().map(|r| (r.id, r)).collect();
    fused.retain_mut(|r| match by_id.remove(&r.id) {
        Some(found) => {
            r.version = found.version;
            r.payload = found.payload;
            r.vector = found.vector;
            true
        }
        None => false,
    });
    Ok(fused)
}

async fn run_query(
    toc: &TableOfContent,
    collection: &Arc<Collection>,
    body: QueryRequest,
) -> Result<Vec<ScoredPointOut>, ApiError> {
    let with_payload = body.with_payload.clone().unwrap_or(WithPayload::None);
    let records = run_query_records(toc, collection, body).await?;
    Ok(render(records, &with_payload))
}

/// [`run_query`] before the payload selection: the records with the payload they carry.
async fn run_query_records(
    toc: &TableOfContent,
    collection: &Arc<Collection>,
    body: QueryRequest,
) -> Result<Vec<ScoredRecord>, ApiError> {
    if count_prefetches(&body.prefetch, 1)? > MAX_PREFETCHES {
        return Err(ApiError::bad_request(format!(
            "Wrong input: at most {MAX_PREFETCHES} prefetches per query"
        )));
    }
    let common = Common::new(
        body.using,
        body.filter,
        body.limit.unwrap_or(10),
        body.offset,
        body.params,
        body.score_threshold,
        body.with_payload,
        body.with_vector,
    )?;
    let offset = match body.query {
        Some(QueryInterface::Sample) => 0,
        _ => common.offset,
    };
    let level = Level {
        prefetch: body.prefetch,
        query: body.query,
        common,
        lookup_from: body.lookup_from,
    };
    let mut records = run_level(toc, collection, level, body.shard_key.as_ref()).await?;
    Ok(records.drain(..).skip(offset).collect())
}

/// Most groups times group size a grouped query may ask for.
const MAX_GROUPED_HITS: usize = 10_000;

/// The group ids a payload value gives a point: strings and integers, one level of array
/// elements (Qdrant groups by those only; a point with several values joins several groups).
fn group_ids(key: &JsonPath, payload: Option<&Payload>) -> Vec<serde_json::Value> {
    let Some(payload) = payload else {
        return Vec::new();
    };
    let mut out: Vec<serde_json::Value> = Vec::new();
    for v in key.values(payload) {
        let usable = v.is_string() || v.as_i64().is_some() || v.as_u64().is_some();
        if usable && !out.contains(v) {
            out.push(v.clone());
        }
    }
    out
}

/// Qdrant's grouped query: the query runs over a growing window of hits until `limit` groups
/// of `group_size` are filled or the hits run out; groups come in the order of their best hit,
/// each with its hits best first.
async fn run_query_groups(
    toc: &TableOfContent,
    collection: &Arc<Collection>,
    body: QueryGroupsRequest,
) -> Result<GroupsResult, ApiError> {
    let key: JsonPath = body.group_by.parse().map_err(|e| {
        ApiError::bad_request(format!(
            "Wrong input: invalid `group_by` key `{}`: {e}",
            body.group_by
        ))
    })?;
    let group_size = body.group_size.unwrap_or(3);
    let limit = body.query.limit.unwrap_or(10);
    if group_size == 0 || limit == 0 {
        return Err(ApiError::unprocessable(
            "Validation error in JSON body: limit and group_size must be at least 1",
        ));
    }
    if limit.saturating_mul(group_size) > MAX_GROUPED_HITS {
        return Err(ApiError::unprocessable(format!(
            "Validation error in JSON body: limit * group_size must not exceed {MAX_GROUPED_HITS}"
        )));
    }
    if body.query.offset.is_some_and(|o| o > 0) {
        return Err(ApiError::bad_request(
            "Wrong input: `offset` is not supported for grouped queries",
        ));
    }
    let lookup = match &body.with_lookup {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(name)) => {
            Some((name.clone(), WithPayload::All, WithVector::None))
        }
        Some(other) => {
            #[derive(serde::Deserialize)]
            struct Lookup {
                collection: String,
                with_payload: Option<WithPayload>,
                with_vectors: Option<WithVector>,
            }
            let l: Lookup = serde_json::from_value(other.clone()).map_err(|e| {
                ApiError::unprocessable(format!("Validation error in JSON body: with_lookup: {e}"))
            })?;
            Some((
                l.collection,
                l.with_payload.unwrap_or(WithPayload::All),
                l.with_vectors.unwrap_or(WithVector::None),
            ))
        }
    };
    let lookup_collection = match &lookup {
        Some((name, _, _)) => Some(toc.get(name)?),
        None => None,
    };
    let with_payload = body.query.with_payload.clone().unwrap_or(WithPayload::None);
    let mut request = body.query;
    request.with_payload = Some(WithPayload::All);
    request.offset = None;
    let mut window = limit * group_size;
    let original_prefetch = request.prefetch.clone();
    let groups = loop {
        request.limit = Some(window);
        // Prefetches grow with the window (as Qdrant's grouping does), so that rescoring sees
        // enough candidates to fill the groups.
        request.prefetch = original_prefetch.clone();
        raise_prefetch_limits(&mut request.prefetch, window);
        let hits = run_query_records(toc, collection, request.clone()).await?;
        let exhausted = hits.len() < window;
        let mut groups: Vec<(serde_json::Value, Vec<ScoredRecord>)> = Vec::new();
        for hit in hits {
            for id in group_ids(&key, hit.payload.as_ref()) {
                match groups.iter().position(|(g, _)| *g == id) {
                    Some(at) if groups[at].1.len() < group_size => {
                        groups[at].1.push(hit.clone());
                    }
                    Some(_) => {}
                    None if groups.len() < limit => groups.push((id, vec![hit.clone()])),
                    None => {}
                }
            }
        }
        let full = groups.len() == limit && groups.iter().all(|(_, m)| m.len() == group_size);
        if full || exhausted || window >= MAX_SEARCH_WINDOW {
            break groups;
        }
        window = (window * 4).min(MAX_SEARCH_WINDOW);
    };
    let mut out = Vec::with_capacity(groups.len());
    for (id, hits) in groups {
        let lookup = match (&lookup, &lookup_collection) {
            (Some((_, wp, wv)), Some(other)) => match serde_json::from_value::<PointId>(id.clone())
            {
                Ok(point) => other
                    .retrieve(&[point], wp.is_requested(), wv, None)
                    .await?
                    .into_iter()
                    .next()
                    .map(|r| crate::api::rest::points::record_out(r, wp)),
                Err(_) => None,
            },
            _ => None,
        };
        out.push(PointGroupOut {
            id,
            hits: render(hits, &with_payload),
            lookup,
        });
    }
    Ok(GroupsResult { groups: out })
}

fn raise_prefetch_limits(prefetch: &mut [Prefetch], at_least: usize) {
    for p in prefetch {
        p.limit = Some(p.limit.unwrap_or(10).max(at_least));
        raise_prefetch_limits(&mut p.prefetch, at_least);
    }
}

pub async fn query_groups(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
    QueryParams(read): QueryParams<ReadParams>,
    started: Started,
    JsonBody(body): JsonBody<QueryGroupsRequest>,
) -> ApiResult<GroupsResult> {
    let collection = state.toc.get(&name)?;
    strict_mode::check_read(&state, &collection, read.timeout, &body)?;
    Ok(ApiOk(
        run_query_groups(&state.toc, &collection, body).await?,
        started,
    ))
}

pub async fn search(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
    QueryParams(read): QueryParams<ReadParams>,
    started: Started,
    JsonBody(body): JsonBody<SearchBody>,
) -> ApiResult<Vec<ScoredPointOut>> {
    let collection = state.toc.get(&name)?;
    strict_mode::check_read(&state, &collection, read.timeout, &body)?;
    let _watch = introspection::issues::watch(&collection, started, &body);
    Ok(ApiOk(run_search(&collection, body).await?, started))
}

pub async fn search_batch(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
    QueryParams(read): QueryParams<ReadParams>,
    started: Started,
    JsonBody(body): JsonBody<SearchRequestBatch>,
) -> ApiResult<Vec<Vec<ScoredPointOut>>> {
    check_batch(body.searches.len())?;
    let collection = state.toc.get(&name)?;
    strict_mode::check_read(&state, &collection, read.timeout, body.searches.as_slice())?;
    let _watch = introspection::issues::watch(&collection, started, body.searches.as_slice());
    let answers = futures::future::join_all(
        body.searches
            .into_iter()
            .map(|b| run_search(&collection, b)),
    )
    .await;
    Ok(ApiOk(
        answers.into_iter().collect::<Result<_, _>>()?,
        started,
    ))
}

pub async fn recommend(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
    QueryParams(read): QueryParams<ReadParams>,
    started: Started,
    JsonBody(body): JsonBody<RecommendRequest>,
) -> ApiResult<Vec<ScoredPointOut>> {
    let collection = state.toc.get(&name)?;
    strict_mode::check_read(&state, &collection, read.timeout, &body)?;
    Ok(ApiOk(
        run_recommend(&state.toc, &collection, body).await?,
        started,
    ))
}

pub async fn recommend_batch(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
    QueryParams(read): QueryParams<ReadParams>,
    started: Started,
    JsonBody(body): JsonBody<RecommendRequestBatch>,
) -> ApiResult<Vec<Vec<ScoredPointOut>>> {
    check_batch(body.searches.len())?;
    let collection = state.toc.get(&name)?;
    strict_mode::check_read(&state, &collection, read.timeout, body.searches.as_slice())?;
    let answers = futures::future::join_all(
        body.searches
            .into_iter()
            .map(|b| run_recommend(&state.toc, &collection, b)),
    )
    .await;
    Ok(ApiOk(
        answers.into_iter().collect::<Result<_, _>>()?,
        started,
    ))
}

pub async fn query(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
    QueryParams(read): QueryParams<ReadParams>,
    started: Started,
    JsonBody(body): JsonBody<QueryRequest>,
) -> ApiResult<QueryResponse> {
    let collection = state.toc.get(&name)?;
    strict_mode::check_read(&state, &collection, read.timeout, &body)?;
    let _watch = introspection::issues::watch(&collection, started, &body);
    let points = run_query(&state.toc, &collection, body).await?;
    Ok(ApiOk(QueryResponse { points }, started))
}

pub async fn query_batch(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
    QueryParams(read): QueryParams<ReadParams>,
    started: Started,
    JsonBody(body): JsonBody<QueryRequestBatch>,
) -> ApiResult<Vec<QueryResponse>> {
    check_batch(body.searches.len())?;
    let collection = state.toc.get(&name)?;
    strict_mode::check_read(&state, &collection, read.timeout, body.searches.as_slice())?;
    let _watch = introspection::issues::watch(&collection, started, body.searches.as_slice());
    let answers = futures::future::join_all(
        body.searches
            .into_iter()
            .map(|b| run_query(&state.toc, &collection, b)),
    )
    .await;
    let mut out = Vec::with_capacity(answers.len());
    for points in answers {
        out.push(QueryResponse { points: points? });
    }
    Ok(ApiOk(out, started))
}

/// Reads a legacy request (already rewritten into its query-API form) the way a body is read.
fn legacy<T: serde::de::DeserializeOwned>(body: serde_json::Value) -> Result<T, ApiError> {
    serde_json::from_value(body)
        .map_err(|e| ApiError::bad_request(format!("Json deserialize error: {e}")))
}

/// Moves `from` of a legacy body into `query` as `{kind: {...members}}`.
fn legacy_query(
    mut body: serde_json::Value,
    kind: &str,
    members: &[&str],
) -> Result<serde_json::Value, ApiError> {
    let Some(map) = body.as_object_mut() else {
        return Err(ApiError::bad_request(
            "Json deserialize error: the body must be an object",
        ));
    };
    let mut inner = serde_json::Map::new();
    for m in members {
        if let Some(v) = map.remove(*m) {
            inner.insert((*m).to_string(), v);
        }
    }
    map.insert("query".into(), serde_json::json!({ kind: inner }));
    Ok(body)
}

/// Qdrant's legacy discover request as the query it is: `{"discover": {target, context}}`,
/// or `{"context": ...}` without a target.
fn discover_as_query(body: serde_json::Value) -> Result<QueryRequest, ApiError> {
    let has_target = body.get("target").is_some_and(|t| !t.is_null());
    let body = if has_target {
        legacy_query(body, "discover", &["target", "context"])?
    } else {
        let mut body = body;
        if let Some(map) = body.as_object_mut() {
            let context = map
                .remove("context")
                .unwrap_or(serde_json::Value::Array(Vec::new()));
            map.remove("target");
            map.insert("query".into(), serde_json::json!({ "context": context }));
        }
        body
    };
    legacy(body)
}

/// `POST /collections/{c}/points/discover` (Qdrant's legacy discovery endpoint).
pub async fn discover(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
    QueryParams(read): QueryParams<ReadParams>,
    started: Started,
    JsonBody(body): JsonBody<serde_json::Value>,
) -> ApiResult<Vec<ScoredPointOut>> {
    let collection = state.toc.get(&name)?;
    let request = discover_as_query(body)?;
    strict_mode::check_read(&state, &collection, read.timeout, &request)?;
    Ok(ApiOk(
        run_query(&state.toc, &collection, request).await?,
        started,
    ))
}

/// `POST /collections/{c}/points/discover/batch`.
pub async fn discover_batch(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
    QueryParams(read): QueryParams<ReadParams>,
    started: Started,
    JsonBody(body): JsonBody<serde_json::Value>,
) -> ApiResult<Vec<Vec<ScoredPointOut>>> {
    let searches = match body.get("searches") {
        Some(serde_json::Value::Array(items)) => items.clone(),
        _ => {
            return Err(ApiError::bad_request(
                "Json deserialize error: missing field `searches`",
            ));
        }
    };
    check_batch(searches.len())?;
    let collection = state.toc.get(&name)?;
    let requests = searches
        .into_iter()
        .map(discover_as_query)
        .collect::<Result<Vec<_>, _>>()?;
    strict_mode::check_read(&state, &collection, read.timeout, requests.as_slice())?;
    let answers = futures::future::join_all(
        requests
            .into_iter()
            .map(|r| run_query(&state.toc, &collection, r)),
    )
    .await;
    Ok(ApiOk(
        answers.into_iter().collect::<Result<_, _>>()?,
        started,
    ))
}

/// `POST /collections/{c}/points/search/groups`: a grouped nearest search (`vector` is a
/// vector or `{name, vector}`).
pub async fn search_groups(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
    QueryParams(read): QueryParams<ReadParams>,
    started: Started,
    JsonBody(mut body): JsonBody<serde_json::Value>,
) -> ApiResult<GroupsResult> {
    let collection = state.toc.get(&name)?;
    if let Some(map) = body.as_object_mut() {
        let vector = map.remove("vector").unwrap_or(serde_json::Value::Null);
        let (using, vector) = match vector {
            serde_json::Value::Object(mut named) if named.contains_key("vector") => (
                named.remove("name").unwrap_or(serde_json::Value::Null),
                named.remove("vector").unwrap_or(serde_json::Value::Null),
            ),
            other => (serde_json::Value::Null, other),
        };
        map.insert("query".into(), vector);
        if !using.is_null() {
            map.insert("using".into(), using);
        }
    }
    let request: QueryGroupsRequest = legacy(body)?;
    strict_mode::check_read(&state, &collection, read.timeout, &request)?;
    Ok(ApiOk(
        run_query_groups(&state.toc, &collection, request).await?,
        started,
    ))
}

/// `POST /collections/{c}/points/recommend/groups`: grouped recommendations.
pub async fn recommend_groups(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
    QueryParams(read): QueryParams<ReadParams>,
    started: Started,
    JsonBody(body): JsonBody<serde_json::Value>,
) -> ApiResult<GroupsResult> {
    let collection = state.toc.get(&name)?;
    let body = legacy_query(body, "recommend", &["positive", "negative", "strategy"])?;
    let request: QueryGroupsRequest = legacy(body)?;
    strict_mode::check_read(&state, &collection, read.timeout, &request)?;
    Ok(ApiOk(
        run_query_groups(&state.toc, &collection, request).await?,
        started,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scored(id: u64, score: f32) -> ScoredRecord {
        ScoredRecord {
            id: PointId::Num(id),
            version: 0,
            score,
            payload: None,
            vector: None,
            order_value: None,
        }
    }

    /// RRF with Qdrant's default k = 2: ranks 0, 1, 2 contribute 1/2, 1/3, 1/4.
    #[test]
    fn rrf_adds_reciprocal_ranks() {
        let a = vec![scored(1, 0.9), scored(2, 0.8)];
        let b = vec![scored(2, 5.0), scored(3, 4.0)];
        let fused = fuse(
            &Fusion::Rrf {
                k: 2,
                weights: None,
            },
            &[a, b],
            10,
            None,
        )
        .unwrap();
        let got: Vec<(PointId, f32)> = fused.iter().map(|r| (r.id, r.score)).collect();
        assert_eq!(got[0], (PointId::Num(2), 1.0 / 3.0 + 0.5));
        assert_eq!(got[1], (PointId::Num(1), 0.5));
        assert_eq!(got[2], (PointId::Num(3), 1.0 / 3.0));
    }

    /// DBSF normalises each list by mean +- 3 sample standard deviations; a single result
    /// scores 0.5.
    #[test]
    fn dbsf_normalises_each_list() {
        let a = vec![scored(1, 3.0), scored(2, 1.0)];
        let b = vec![scored(3, 7.0)];
        let fused = fuse(&Fusion::Dbsf, &[a, b], 10, None).unwrap();
        let by_id: HashMap<PointId, f32> = fused.iter().map(|r| (r.id, r.score)).collect();
        let sd = 2.0f32.sqrt();
        assert!((by_id[&PointId::Num(1)] - (3.0 - (2.0 - 3.0 * sd)) / (6.0 * sd)).abs() < 1e-6);
        assert_eq!(by_id[&PointId::Num(3)], 0.5);
    }

    #[test]
    fn average_vector_follows_qdrant_for_every_kind() {
        let dense = average_vector(
            vec![VectorData::Dense(vec![0.0, 0.0])],
            vec![VectorData::Dense(vec![1.0, 0.0])],
        )
        .unwrap();
        assert_eq!(dense, VectorData::Dense(vec![-1.0, 0.0]));
        let sparse = average_vector(
            vec![VectorData::Sparse(
                SparseVector::new(vec![3], vec![1.0]).unwrap(),
            )],
            vec![VectorData::Sparse(
                SparseVector::new(vec![7], vec![1.0]).unwrap(),
            )],
        )
        .unwrap();
        assert_eq!(
            sparse,
            VectorData::Sparse(SparseVector::new(vec![3, 7], vec![2.0, -1.0]).unwrap())
        );
        let multi = average_vector(
            vec![VectorData::Multi(vec![vec![1.0, 2.0]])],
            vec![VectorData::Multi(vec![vec![3.0, 4.0]])],
        )
        .unwrap();
        assert_eq!(
            multi,
            VectorData::Multi(vec![vec![1.0, 2.0], vec![-3.0, -4.0]])
        );
        assert!(average_vector(Vec::new(), Vec::new()).is_err());
    }
}
