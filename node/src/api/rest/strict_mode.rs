//! Qdrant's strict mode, enforced: what Qdrant 1.18 checks in its `StrictModeVerification`,
//! its local shards' rate limiters and its resource gates, for the same requests and with the
//! same messages, so Qdrant clients (and the people reading their errors) see what they know.
//!
//! Before a request does any work, its handler calls one hook — [`check_read`],
//! [`check_updates`] or [`check_create_index`] — which, while the collection's
//! `strict_mode_config.enabled` is `true`:
//!
//! 1. checks the request against the limits: 400 `Bad request: <what>. Help: <solution>`;
//! 2. checks its `timeout` against `max_timeout`;
//! 3. takes its cost from the collection's read or write token bucket on this peer: 429
//!    `Rate limiting exceeded: ...` with a `Retry-After` header when waiting helps.
//!
//! The hooks only read the collection, so a refused request has changed nothing. This module
//! owns the checks, the request costs and the buckets; it never changes a request or storage.

use std::collections::HashMap;
use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::Value;

use crate::api::rest::AppState;
use crate::api::rest::matrix::SearchMatrixRequest;
use crate::api::rest::models::{
    CountRequest, PointRequest, Prefetch, QueryGroupsRequest, QueryInterface, QueryRequest,
    RecommendRequest, RecommendStrategy, ScrollRequest, SearchParams, SearchRequest, VectorInput,
};
use crate::api::rest::points::FacetRequest;
use crate::api::rest::response::ApiError;
use crate::cluster::collection::{Collection, ShardKeySelector};
use crate::collection_config::{CollectionConfig, Datatype, PayloadIndexEntry, StrictModeConfig};
use crate::index::capability::{Capability, capabilities, required};
use crate::index::filter::{AnyVariants, Condition, Filter, Match};
use crate::index::formula::PayloadUse;
use crate::index::payload_path::JsonPath;
use crate::index::payload_selector::WithVector;
use crate::shard::local_shard::Record;
use crate::shard::operations::{PointSelection, PointWrite, UpdateRequest};
use crate::types::{NamedVectors, VectorData};

// ---- entry points -----------------------------------------------------------------------------

/// Checks a read (a search, query, scroll, count, facet, matrix or retrieve request, or a batch
/// of them) and takes its [`ReadRequest::read_cost`] from the collection's read bucket.
/// Nothing happens while strict mode is off.
pub fn check_read<R: ReadRequest + ?Sized>(
    state: &AppState,
    collection: &Collection,
    timeout: Option<u64>,
    request: &R,
) -> Result<(), ApiError> {
    let Some(strict) = StrictMode::of(collection) else {
        return Ok(());
    };
    request.check(&strict)?;
    strict.timeout(timeout)?;
    state.strict_mode.take(
        collection.name(),
        &strict,
        Bucket::Read,
        request.read_cost(),
    )
}

/// Checks updates that are about to be applied together (one request, or every operation of
/// a `points/batch`) and takes their cost from the collection's write bucket: every check of
/// every update passes before any token is taken, so a refused batch applies nothing.
///
/// Cancel-safe: everything before the tokens are taken (the last, synchronous step) only
/// reads.
pub async fn check_updates(
    state: &AppState,
    collection: &Collection,
    timeout: Option<u64>,
    updates: &[(UpdateRequest, Option<ShardKeySelector>)],
) -> Result<(), ApiError> {
    let Some(strict) = StrictMode::of(collection) else {
        return Ok(());
    };
    let mut sizes = Sizes::Measure(collection);
    for (update, _) in updates {
        strict.check_update(update, &mut sizes).await?;
    }
    if updates.iter().any(|(u, _)| adds_data(u)) {
        strict.resources(&state.strict_mode.data_dir)?;
    }
    strict.timeout(timeout)?;
    if strict.limits.write_rate_limit.is_none() {
        return Ok(());
    }
    let mut cost = 0usize;
    for (update, shard_key) in updates {
        cost = cost.saturating_add(write_cost(collection, update, shard_key.as_ref()).await?);
    }
    state
        .strict_mode
        .take(collection.name(), &strict, Bucket::Write, cost)
}

/// Checks a new payload index: `max_payload_index_count` (an index that replaces one on the
/// same key counts too, as in Qdrant), the resource gates, `max_timeout`.
pub fn check_create_index(
    state: &AppState,
    collection: &Collection,
    timeout: Option<u64>,
) -> Result<(), ApiError> {
    let Some(strict) = StrictMode::of(collection) else {
        return Ok(());
    };
    if let Some(max) = strict.limits.max_payload_index_count
        && collection.payload_schema().len() >= max
    {
        return Err(refuse(
            format!("Collection already has the maximum number of payload indices ({max})"),
            "Please delete an existing index before creating a new one.",
        ));
    }
    strict.resources(&state.strict_mode.data_dir)?;
    strict.timeout(timeout)
}

/// Checks a new named vector (it allocates storage for every point): the resource gates and
/// `max_timeout`, as Qdrant checks its `CreateVectorName`.
pub fn check_create_vector(
    state: &AppState,
    collection: &Collection,
    timeout: Option<u64>,
) -> Result<(), ApiError> {
    let Some(strict) = StrictMode::of(collection) else {
        return Ok(());
    };
    strict.resources(&state.strict_mode.data_dir)?;
    strict.timeout(timeout)
}

/// Qdrant's strict mode refusal: 400 `Bad request: <what>. Help: <solution>`.
fn refuse(what: impl Display, help: impl Display) -> ApiError {
    ApiError::bad_request(format!("Bad request: {what}. Help: {help}"))
}

/// Qdrant's generic limit check: refuses `value > limit`.
fn exceeds<T: PartialOrd + Display>(
    value: T,
    limit: Option<T>,
    name: &str,
) -> Result<(), ApiError> {
    match limit {
        Some(limit) if value > limit => Err(refuse(
            format!("Limit exceeded {value} > {limit} for \"{name}\""),
            format!("Reduce the \"{name}\" parameter to or below {limit}."),
        )),
        _ => Ok(()),
    }
}

// ---- the enabled strict mode of one collection --------------------------------------------------

/// A collection's strict mode while it is enabled, with the declared payload indexes the checks
/// look keys up in.
pub struct StrictMode {
    config: Arc<CollectionConfig>,
    limits: StrictModeConfig,
    indexes: Vec<(JsonPath, PayloadIndexEntry)>,
}

impl StrictMode {
    /// `None` while the collection's strict mode is absent or not enabled.
    pub fn of(collection: &Collection) -> Option<StrictMode> {
        let config = collection.config();
        let limits = config
            .strict_mode_config
            .clone()
            .filter(|s| s.is_enabled())?;
        Some(StrictMode::new(config, limits, collection.payload_schema()))
    }

    fn new(
        config: Arc<CollectionConfig>,
        limits: StrictModeConfig,
        schema: impl IntoIterator<Item = (String, PayloadIndexEntry)>,
    ) -> StrictMode {
        // Declared keys were checked when the index was created; one that no longer parses
        // serves no filter.
        let indexes = schema
            .into_iter()
            .filter_map(|(key, entry)| Some((key.parse().ok()?, entry)))
            .collect();
        StrictMode {
            config,
            limits,
            indexes,
        }
    }

    fn limit(&self, limit: Option<usize>) -> Result<(), ApiError> {
        match limit {
            Some(limit) => exceeds(limit, self.limits.max_query_limit, "limit"),
            None => Ok(()),
        }
    }

    fn timeout(&self, timeout: Option<u64>) -> Result<(), ApiError> {
        match timeout {
            Some(t) => exceeds(
                usize::try_from(t).unwrap_or(usize::MAX),
                self.limits.max_timeout,
                "timeout",
            ),
            None => Ok(()),
        }
    }

    fn batch(&self, searches: usize) -> Result<(), ApiError> {
        exceeds(
            searches,
            self.limits.search_max_batchsize,
            "search batch size",
        )
    }

    /// `exact` of a count or facet, and `params.exact` of a search.
    fn exact(&self, exact: Option<bool>) -> Result<(), ApiError> {
        if self.limits.search_allow_exact == Some(false) && exact == Some(true) {
            return Err(refuse("Exact search disabled!", "Set exact=false."));
        }
        Ok(())
    }

    fn params(&self, params: Option<&SearchParams>) -> Result<(), ApiError> {
        let Some(params) = params else {
            return Ok(());
        };
        if let Some(oversampling) = params.quantization.and_then(|q| q.oversampling) {
            exceeds(
                oversampling,
                self.limits.search_max_oversampling,
                "oversampling",
            )?;
        }
        if let Some(ef) = params.hnsw_ef {
            exceeds(ef, self.limits.search_max_hnsw_ef, "hnsw_ef")?;
        }
        self.exact(params.exact)
    }

    /// The filter of a read: unindexed keys (while `unindexed_filtering_retrieve` is
    /// `false`), then the condition count and size limits.
    fn read_filter(&self, filter: Option<&Filter>) -> Result<(), ApiError> {
        self.filter(filter, self.limits.unindexed_filtering_retrieve)
    }

    /// The filter that selects the points of an update (`unindexed_filtering_update`).
    fn write_filter(&self, filter: Option<&Filter>) -> Result<(), ApiError> {
        self.filter(filter, self.limits.unindexed_filtering_update)
    }

    fn filter(
        &self,
        filter: Option<&Filter>,
        allow_unindexed: Option<bool>,
    ) -> Result<(), ApiError> {
        let Some(filter) = filter else {
            return Ok(());
        };
        if allow_unindexed == Some(false)
            && let Some((key, wanted)) = self.unindexed_key(filter)
        {
            return Err(unindexed(
                &key,
                &wanted,
                "Create an index for this key or use a different filter.",
            ));
        }
        if let Some(limit) = self.limits.filter_max_conditions {
            let n = condition_count(filter);
            if n > limit {
                return Err(refuse(
                    format!("Filter condition limit reached ({n} > {limit})"),
                    "Reduce the amount of conditions of your filter.",
                ));
            }
        }
        if let Some(limit) = self.limits.condition_max_size {
            let n = largest_condition(filter);
            if n > limit {
                return Err(refuse(
                    format!("Condition size limit reached ({n} > {limit})"),
                    "Reduce the size of your condition.",
                ));
            }
        }
        Ok(())
    }

    /// The declared index on `key`, if any.
    fn index_at(&self, key: &str) -> Option<&PayloadIndexEntry> {
        let path: JsonPath = key.parse().ok()?;
        self.indexes
            .iter()
            .find(|(k, _)| *k == path)
            .map(|(_, entry)| entry)
    }

    /// Whether an index on `key` can do one of `wanted`.
    fn served(&self, key: &str, wanted: &[Capability]) -> bool {
        self.index_at(key)
            .is_some_and(|entry| capabilities(entry).iter().any(|c| wanted.contains(c)))
    }

    /// The first payload key of `filter` (in `must`, `must_not`, `should`, `min_should` order,
    /// depth first) that no declared index serves for its condition, with the index kinds that
    /// would. Keys inside `nested` are full paths (`country.cities[].population`), as indexes
    /// on nested arrays are declared.
    fn unindexed_key(&self, filter: &Filter) -> Option<(String, Vec<Capability>)> {
        self.unindexed_in(None, filter)
    }

    fn unindexed_in(
        &self,
        prefix: Option<&str>,
        filter: &Filter,
    ) -> Option<(String, Vec<Capability>)> {
        conditions(filter).find_map(|c| self.unindexed_condition(prefix, c))
    }

    fn unindexed_condition(
        &self,
        prefix: Option<&str>,
        condition: &Condition,
    ) -> Option<(String, Vec<Capability>)> {
        let (key, wanted) = match condition {
            Condition::Field(field) => (&field.key, required(field)),
            Condition::IsEmpty(c) => (&c.is_empty.key, Capability::ALL.to_vec()),
            Condition::IsNull(c) => (&c.is_null.key, Capability::ALL.to_vec()),
            Condition::Filter(inner) => return self.unindexed_in(prefix, inner),
            Condition::Nested(n) => {
                let prefix = nested_prefix(prefix, &n.nested.key);
                return self.unindexed_in(Some(&prefix), &n.nested.filter);
            }
            Condition::HasId(_) | Condition::HasVector(_) => return None,
        };
        // An empty `any` / `except` matches nothing or excludes nothing: no index helps.
        if wanted.is_empty() {
            return None;
        }
        let key = match prefix {
            Some(prefix) => format!("{prefix}.{key}"),
            None => key.to_string(),
        };
        (!self.served(&key, &wanted)).then_some((key, wanted))
    }

    /// A score-boosting formula: every payload key it reads needs a fitting index while
    /// `unindexed_filtering_retrieve` is `false` (numbers: integer or float, geo points: geo,
    /// datetimes: datetime, conditions: as in filters). Defaults do not lift the need.
    fn formula(&self, query: Option<&QueryInterface>) -> Result<(), ApiError> {
        let Some(QueryInterface::Formula(formula)) = query else {
            return Ok(());
        };
        if self.limits.unindexed_filtering_retrieve != Some(false) {
            return Ok(());
        }
        for used in formula.payload_uses() {
            let (key, wanted) = match used {
                PayloadUse::Number(key) => (
                    key.to_string(),
                    vec![
                        Capability::IntMatch,
                        Capability::IntRange,
                        Capability::FloatRange,
                    ],
                ),
                PayloadUse::GeoPoint(key) => (key.to_string(), vec![Capability::Geo]),
                PayloadUse::Datetime(key) => (key.to_string(), vec![Capability::DatetimeRange]),
                PayloadUse::Condition(filter) => match self.unindexed_key(filter) {
                    Some(found) => found,
                    None => continue,
                },
            };
            if !self.served(&key, &wanted) {
                return Err(unindexed(
                    &key,
                    &wanted,
                    "Create an index for this key or use a different formula expression.",
                ));
            }
        }
        Ok(())
    }

    /// `group_by` needs an index that supports `match` while `unindexed_filtering_retrieve` is
    /// `false`.
    fn group_by(&self, key: &str) -> Result<(), ApiError> {
        if self.limits.unindexed_filtering_retrieve != Some(false) {
            return Ok(());
        }
        let help = "Create an index supporting `match` for this key.";
        match self.index_at(key) {
            None => Err(refuse(
                format!("Index required but not found for \"{key}\""),
                help,
            )),
            Some(entry) => {
                let matching = [
                    Capability::KeywordMatch,
                    Capability::IntMatch,
                    Capability::UuidMatch,
                    Capability::BoolMatch,
                ];
                if capabilities(entry).iter().any(|c| matching.contains(c)) {
                    Ok(())
                } else {
                    Err(refuse(
                        format!(
                            "Index of type \"{}\" found for \"{key}\"",
                            kind_name(&entry.data_type)
                        ),
                        help,
                    ))
                }
            }
        }
    }

    /// Qdrant's full-scan guard: with `search_allow_exact: false`, a vector query on a dense
    /// vector whose graph is disabled (`hnsw_config.m = 0`) is refused, unless its filter uses a
    /// tenant index and the per-tenant graph (`payload_m`) is on. Sparse vectors are always
    /// indexed. (Shoal's configuration validation keeps `m` at 2 or more today, so this only
    /// refuses configurations written before that rule or by a future relaxation of it.)
    fn full_scan(
        &self,
        query: Option<&QueryInterface>,
        using: Option<&str>,
        filter: Option<&Filter>,
    ) -> Result<(), ApiError> {
        if self.limits.search_allow_exact != Some(false) {
            return Ok(());
        }
        match query {
            None
            | Some(
                QueryInterface::Fusion(_)
                | QueryInterface::OrderBy(_)
                | QueryInterface::Formula(_)
                | QueryInterface::Sample,
            ) => return Ok(()),
            Some(_) => {}
        }
        let using = using.unwrap_or_default();
        if self.config.sparse(using).is_some() {
            return Ok(());
        }
        let hnsw = self.config.hnsw_for(using);
        if hnsw.m > 0 {
            return Ok(());
        }
        let on = if using.is_empty() {
            String::new()
        } else {
            format!(" on '{using}'")
        };
        let tenant_filter = filter.is_some_and(|f| {
            conditions(f)
                .filter_map(targeted_key)
                .any(|key| self.index_at(&key).is_some_and(is_tenant))
        });
        if !tenant_filter {
            return Err(refuse(
                format!(
                    "Request is forbidden{on} because global vector indexing is disabled (hnsw_config.m = 0)"
                ),
                "Use tenant-specific filter, enable global vector indexing or enable strict mode \
                 `search_allow_exact` option",
            ));
        }
        if hnsw.payload_m.unwrap_or(hnsw.m) == 0 {
            return Err(refuse(
                format!(
                    "Request is forbidden{on} because vector indexing is disabled (hnsw_config.m = 0 and hnsw_config.payload_m = 0)"
                ),
                "Enable vector indexing, use a prefetch query with indexed vectors or enable \
                 strict mode `search_allow_exact` option",
            ));
        }
        Ok(())
    }

    /// A universal query (or one level of its prefetches): every prefetch first, then this
    /// level's full-scan guard (only where it searches itself: without prefetches to rescore,
    /// or as a prefetch), formula, `group_by`, limit, filter and params.
    fn query(
        &self,
        q: &QueryRequest,
        limit: usize,
        group_by: Option<&str>,
    ) -> Result<(), ApiError> {
        for p in &q.prefetch {
            self.prefetch(p)?;
        }
        if q.prefetch.is_empty() {
            self.full_scan(q.query.as_ref(), q.using.as_deref(), q.filter.as_ref())?;
        }
        self.formula(q.query.as_ref())?;
        if let Some(key) = group_by {
            self.group_by(key)?;
        }
        self.limit(Some(limit))?;
        self.read_filter(q.filter.as_ref())?;
        self.params(q.params.as_ref())
    }

    fn prefetch(&self, p: &Prefetch) -> Result<(), ApiError> {
        for inner in &p.prefetch {
            self.prefetch(inner)?;
        }
        self.full_scan(p.query.as_ref(), p.using.as_deref(), p.filter.as_ref())?;
        self.formula(p.query.as_ref())?;
        self.limit(Some(p.limit.unwrap_or(DEFAULT_QUERY_LIMIT)))?;
        self.read_filter(p.filter.as_ref())?;
        self.params(p.params.as_ref())
    }

    /// One update, as Qdrant checks its operation: batch size, collection size limits,
    /// multivector and sparse lengths for writes of points and vectors; the payload size limit
    /// for payload writes; the selecting filter for everything chosen by filter. (The
    /// `update_filter` of an upsert or vector update is not checked: it only narrows which
    /// named points change, as in Qdrant.)
    async fn check_update(
        &self,
        update: &UpdateRequest,
        sizes: &mut Sizes<'_>,
    ) -> Result<(), ApiError> {
        match update {
            UpdateRequest::Upsert(points) | UpdateRequest::ConditionalUpsert { points, .. } => {
                exceeds(
                    points.len(),
                    self.limits.upsert_max_batchsize,
                    "upsert limit",
                )?;
                self.collection_size(sizes, true).await?;
                self.vector_lengths(points.iter().map(|p: &PointWrite| &p.vectors))
            }
            UpdateRequest::UpdateVectors { points, .. } => {
                exceeds(
                    points.len(),
                    self.limits.upsert_max_batchsize,
                    "update limit",
                )?;
                self.collection_size(sizes, true).await?;
                self.vector_lengths(points.iter().map(|(_, v)| v))
            }
            UpdateRequest::SetPayload { selection, .. }
            | UpdateRequest::OverwritePayload { selection, .. } => {
                self.collection_size(sizes, false).await?;
                self.write_filter(selected_by(selection))
            }
            UpdateRequest::Delete(selection)
            | UpdateRequest::DeleteVectors { selection, .. }
            | UpdateRequest::DeletePayload { selection, .. }
            | UpdateRequest::ClearPayload(selection) => self.write_filter(selected_by(selection)),
        }
    }

    /// `multivector_config.<name>.max_vectors` and `sparse_config.<name>.max_length` over the
    /// written vectors.
    fn vector_lengths<'a>(
        &self,
        points: impl IntoIterator<Item = &'a NamedVectors>,
    ) -> Result<(), ApiError> {
        let multi = self.limits.multivector_config.as_ref();
        let sparse = self.limits.sparse_config.as_ref();
        if multi.is_none() && sparse.is_none() {
            return Ok(());
        }
        for vectors in points {
            for (name, vector) in vectors {
                match vector {
                    VectorData::Multi(rows) => {
                        if let Some(max) =
                            multi.and_then(|m| m.get(name)).and_then(|m| m.max_vectors)
                            && rows.len() > max
                        {
                            return Err(ApiError::bad_request(format!(
                                "Bad request: Multivector '{name}' has a limit of {max} vectors, but {} were provided!",
                                rows.len()
                            )));
                        }
                    }
                    VectorData::Sparse(s) => {
                        if let Some(max) =
                            sparse.and_then(|m| m.get(name)).and_then(|s| s.max_length)
                            && (s.indices.len() > max || s.values.len() > max)
                        {
                            return Err(ApiError::bad_request(format!(
                                "Bad request: Sparse vector '{name}' has a limit of {max} indices, but {} were provided!",
                                s.indices.len()
                            )));
                        }
                    }
                    VectorData::Dense(_) => {}
                }
            }
        }
        Ok(())
    }

    /// The collection size limits, against what the collection holds before the update
    /// (Qdrant's rule: a write is refused once the limit is reached, so the last accepted write
    /// may cross it). `points_and_vectors`: a write of points or vectors (all three limits);
    /// otherwise a payload write (the payload limit only). Measured at most once per call.
    async fn collection_size(
        &self,
        sizes: &mut Sizes<'_>,
        points_and_vectors: bool,
    ) -> Result<(), ApiError> {
        let l = &self.limits;
        let (vector_limit, points_limit) = if points_and_vectors {
            (l.max_collection_vector_size_bytes, l.max_points_count)
        } else {
            (None, None)
        };
        let payload_limit = l.max_collection_payload_size_bytes;
        if vector_limit.is_none() && points_limit.is_none() && payload_limit.is_none() {
            return Ok(());
        }
        size_limits(
            sizes.get().await?,
            vector_limit,
            payload_limit,
            points_limit,
        )
    }

    /// The resource gates of writes that add data: this process's resident memory and the
    /// data directory's file system. A measure that cannot be read (not Linux, no `/proc`)
    /// lets the write through, as in Qdrant: a limit that cannot be evaluated must not refuse
    /// everything; the node logs a warning instead.
    fn resources(&self, data_dir: &Path) -> Result<(), ApiError> {
        if let Some(limit) = self.limits.max_resident_memory_percent {
            match resources::memory() {
                Some((resident, total)) => memory_gate(resident, total, limit)?,
                None => tracing::warn!(
                    "strict mode: max_resident_memory_percent is set but this process's memory \
                     use cannot be read; the limit is not applied"
                ),
            }
        }
        if let Some(limit) = self.limits.max_disk_usage_percent {
            match resources::disk(data_dir) {
                Some((used, total)) => disk_gate(used, total, limit)?,
                None => tracing::warn!(
                    path = %data_dir.display(),
                    "strict mode: max_disk_usage_percent is set but the data directory's file \
                     system cannot be measured; the limit is not applied"
                ),
            }
        }
        Ok(())
    }
}

/// Qdrant's default `limit` of a query and of a prefetch.
const DEFAULT_QUERY_LIMIT: usize = 10;

fn unindexed(key: &str, wanted: &[Capability], help: &str) -> ApiError {
    let mut kinds: Vec<&str> = wanted.iter().map(|c| c.schema_name()).collect();
    kinds.sort_unstable();
    kinds.dedup();
    refuse(
        format!(
            "Index required but not found for \"{key}\" of one of the following types: [{}]",
            kinds.join(", ")
        ),
        help,
    )
}

fn selected_by(selection: &PointSelection) -> Option<&Filter> {
    match selection {
        PointSelection::Filter(f) => Some(f),
        PointSelection::Ids(_) | PointSelection::IdsIfPresent(_) => None,
    }
}

/// Whether an update can grow memory or disk use (Qdrant's `consumes_memory`): deletes are
/// never refused by the resource gates, so they can always free space.
fn adds_data(update: &UpdateRequest) -> bool {
    match update {
        UpdateRequest::Upsert(_)
        | UpdateRequest::ConditionalUpsert { .. }
        | UpdateRequest::UpdateVectors { .. }
        | UpdateRequest::SetPayload { .. }
        | UpdateRequest::OverwritePayload { .. } => true,
        UpdateRequest::Delete(_)
        | UpdateRequest::DeleteVectors { .. }
        | UpdateRequest::DeletePayload { .. }
        | UpdateRequest::ClearPayload(_) => false,
    }
}

// ---- filters --------------------------------------------------------------------------------

/// A filter's top-level conditions in Qdrant's order: `must`, `must_not`, `should`,
/// `min_should`.
fn conditions(filter: &Filter) -> impl Iterator<Item = &Condition> {
    filter
        .must
        .iter()
        .flatten()
        .chain(filter.must_not.iter().flatten())
        .chain(filter.should.iter().flatten())
        .chain(filter.min_should.iter().flat_map(|m| &m.conditions))
}

/// Qdrant's `total_conditions_count`: every leaf condition, those inside nested filters and
/// `nested` conditions included.
pub fn condition_count(filter: &Filter) -> usize {
    conditions(filter)
        .map(|c| match c {
            Condition::Filter(inner) => condition_count(inner),
            Condition::Nested(n) => condition_count(&n.nested.filter),
            Condition::Field(_)
            | Condition::IsEmpty(_)
            | Condition::IsNull(_)
            | Condition::HasId(_)
            | Condition::HasVector(_) => 1,
        })
        .sum()
}

/// Qdrant's `max_condition_input_size`: the most values one condition carries (a
/// `match.any` / `match.except` list, a `has_id` list), nested filters included.
pub fn largest_condition(filter: &Filter) -> usize {
    conditions(filter)
        .map(|c| match c {
            Condition::Field(field) => match &field.r#match {
                Some(Match::Any { any: list } | Match::Except { except: list }) => list_len(list),
                _ => 0,
            },
            Condition::HasId(has_id) => has_id.ids().len(),
            Condition::Filter(inner) => largest_condition(inner),
            Condition::Nested(n) => largest_condition(&n.nested.filter),
            Condition::IsEmpty(_) | Condition::IsNull(_) | Condition::HasVector(_) => 0,
        })
        .max()
        .unwrap_or(0)
}

fn list_len(list: &AnyVariants) -> usize {
    match list {
        AnyVariants::Keywords(v) => v.len(),
        AnyVariants::Integers(v) => v.len(),
    }
}

/// The prefix of the keys inside a `nested` condition: its key as an array
/// (`country.cities` → `country.cities[]`), under the prefix of an enclosing `nested`.
fn nested_prefix(prefix: Option<&str>, key: &JsonPath) -> String {
    let key = key.to_string();
    let key = if key.ends_with("[]") {
        key
    } else {
        format!("{key}[]")
    };
    match prefix {
        Some(prefix) => format!("{prefix}.{key}"),
        None => key,
    }
}

/// The payload key a top-level condition is about, for the tenant test of the full-scan guard
/// (Qdrant's `targeted_key`).
fn targeted_key(condition: &Condition) -> Option<String> {
    match condition {
        Condition::Field(f) => Some(f.key.to_string()),
        Condition::IsEmpty(c) => Some(c.is_empty.key.to_string()),
        Condition::IsNull(c) => Some(c.is_null.key.to_string()),
        Condition::Nested(n) => Some(nested_prefix(None, &n.nested.key)),
        Condition::Filter(inner) => conditions(inner).find_map(targeted_key),
        Condition::HasId(_) | Condition::HasVector(_) => None,
    }
}

fn is_tenant(entry: &PayloadIndexEntry) -> bool {
    matches!(entry.data_type.as_str(), "keyword" | "integer" | "uuid")
        && entry
            .params
            .as_ref()
            .and_then(|p| p.get("is_tenant"))
            .and_then(Value::as_bool)
            == Some(true)
}

/// The index type as Qdrant's `PayloadSchemaType` debug-prints it (`Geo`, `Float`, ...).
fn kind_name(data_type: &str) -> String {
    let mut chars = data_type.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

// ---- reads ----------------------------------------------------------------------------------

/// A read request as strict mode sees it.
pub trait ReadRequest {
    /// Refuses what the limits forbid (400).
    fn check(&self, strict: &StrictMode) -> Result<(), ApiError>;

    /// The tokens it takes from the read bucket, after Qdrant's rule: a search costs the
    /// vectors it compares a point with (1 per dense vector, the rows of a multivector, one per
    /// 64 entries of a sparse vector) plus one per filter condition; a scroll, count or facet 1
    /// plus one per filter condition; a retrieve one per id. Shoal counts once, before the
    /// request runs, so an example given by id costs 2 (fetching it, comparing with one
    /// vector) and any id example adds 1 (the condition that leaves the examples out); Qdrant,
    /// counting per shard as it runs, sees the stored vector's real size.
    fn read_cost(&self) -> usize;
}

/// A batch: `search_max_batchsize`, then each request; the cost is the sum.
impl<R: ReadRequest> ReadRequest for [R] {
    fn check(&self, strict: &StrictMode) -> Result<(), ApiError> {
        strict.batch(self.len())?;
        self.iter().try_for_each(|r| r.check(strict))
    }

    fn read_cost(&self) -> usize {
        self.iter().map(ReadRequest::read_cost).sum()
    }
}

impl ReadRequest for SearchRequest {
    fn check(&self, strict: &StrictMode) -> Result<(), ApiError> {
        strict.limit(Some(self.limit))?;
        strict.read_filter(self.filter.as_ref())?;
        strict.params(self.params.as_ref())
    }

    fn read_cost(&self) -> usize {
        vector_cost(&self.vector.vector) + filter_cost(self.filter.as_ref())
    }
}

impl ReadRequest for RecommendRequest {
    fn check(&self, strict: &StrictMode) -> Result<(), ApiError> {
        strict.limit(Some(self.limit))?;
        strict.read_filter(self.filter.as_ref())?;
        strict.params(self.params.as_ref())
    }

    fn read_cost(&self) -> usize {
        recommend_cost(&self.positive, &self.negative, self.strategy)
            + filter_cost(self.filter.as_ref())
    }
}

impl ReadRequest for QueryRequest {
    fn check(&self, strict: &StrictMode) -> Result<(), ApiError> {
        strict.query(self, self.limit.unwrap_or(DEFAULT_QUERY_LIMIT), None)
    }

    fn read_cost(&self) -> usize {
        level_cost(&self.prefetch, self.query.as_ref(), self.filter.as_ref())
    }
}

/// `limit` counts groups: the limit checked is `limit * group_size`, as in Qdrant.
impl ReadRequest for QueryGroupsRequest {
    fn check(&self, strict: &StrictMode) -> Result<(), ApiError> {
        let limit = self
            .query
            .limit
            .unwrap_or(DEFAULT_QUERY_LIMIT)
            .saturating_mul(self.group_size.unwrap_or(3));
        strict.query(&self.query, limit, Some(&self.group_by))
    }

    fn read_cost(&self) -> usize {
        self.query.read_cost()
    }
}

impl ReadRequest for ScrollRequest {
    fn check(&self, strict: &StrictMode) -> Result<(), ApiError> {
        strict.limit(self.limit)?;
        strict.read_filter(self.filter.as_ref())
    }

    fn read_cost(&self) -> usize {
        1 + filter_cost(self.filter.as_ref())
    }
}

/// A count is exact unless it says `exact: false` (Qdrant's default), so
/// `search_allow_exact: false` refuses counts that do not.
impl ReadRequest for CountRequest {
    fn check(&self, strict: &StrictMode) -> Result<(), ApiError> {
        strict.read_filter(self.filter.as_ref())?;
        strict.exact(Some(self.exact.unwrap_or(true)))
    }

    fn read_cost(&self) -> usize {
        1 + filter_cost(self.filter.as_ref())
    }
}

impl ReadRequest for FacetRequest {
    fn check(&self, strict: &StrictMode) -> Result<(), ApiError> {
        strict.limit(self.limit)?;
        strict.read_filter(self.filter.as_ref())?;
        strict.exact(self.exact)
    }

    fn read_cost(&self) -> usize {
        1 + filter_cost(self.filter.as_ref())
    }
}

/// The limit checked is `sample * limit` (or whichever is given), as in Qdrant.
impl ReadRequest for SearchMatrixRequest {
    fn check(&self, strict: &StrictMode) -> Result<(), ApiError> {
        let limit = match (self.sample, self.limit) {
            (Some(sample), Some(limit)) => Some(sample.saturating_mul(limit)),
            (sample, limit) => sample.or(limit),
        };
        strict.limit(limit)?;
        strict.read_filter(self.filter.as_ref())
    }

    /// Drawing the sample (a filtered scroll), then one search per sampled point among the
    /// others (one vector, the filter and an id condition).
    fn read_cost(&self) -> usize {
        let conditions = filter_cost(self.filter.as_ref());
        let sample = self.sample.unwrap_or(10);
        (1 + conditions).saturating_add(sample.saturating_mul(2 + conditions))
    }
}

/// Retrieve by ids: nothing to check but the timeout; costs one token per id.
impl ReadRequest for PointRequest {
    fn check(&self, _: &StrictMode) -> Result<(), ApiError> {
        Ok(())
    }

    fn read_cost(&self) -> usize {
        self.ids.len()
    }
}

/// `GET /collections/{c}/points/{id}`: one id.
pub struct PointById;

impl ReadRequest for PointById {
    fn check(&self, _: &StrictMode) -> Result<(), ApiError> {
        Ok(())
    }

    fn read_cost(&self) -> usize {
        1
    }
}

fn filter_cost(filter: Option<&Filter>) -> usize {
    filter.map_or(0, condition_count)
}

/// The comparisons one query vector makes with each point (Qdrant's `similarity_cost`).
fn vector_cost(vector: &VectorData) -> usize {
    match vector {
        VectorData::Dense(_) => 1,
        VectorData::Multi(rows) => rows.len(),
        VectorData::Sparse(s) => s.indices.len().div_ceil(64),
    }
}

/// Examples compared one by one: each vector's cost, 2 per id (fetch and compare), and 1 for
/// the condition that leaves example ids out of the answer.
fn examples_cost<'a>(examples: impl IntoIterator<Item = &'a VectorInput>) -> usize {
    let mut ids = 0;
    let mut cost = 0;
    for example in examples {
        match example {
            VectorInput::Vector(v) => cost += vector_cost(v),
            VectorInput::Id(_) => {
                ids += 1;
                cost += 2;
            }
        }
    }
    cost + usize::from(ids > 0)
}

/// `average_vector` compares one combined vector; the other strategies each example.
fn recommend_cost(
    positive: &[VectorInput],
    negative: &[VectorInput],
    strategy: Option<RecommendStrategy>,
) -> usize {
    let examples = positive.iter().chain(negative);
    match strategy.unwrap_or_default() {
        RecommendStrategy::AverageVector => {
            let ids = examples.filter(|e| matches!(e, VectorInput::Id(_))).count();
            ids + 1 + usize::from(ids > 0)
        }
        RecommendStrategy::BestScore | RecommendStrategy::SumScores => examples_cost(examples),
    }
}

fn interface_cost(query: &QueryInterface) -> usize {
    match query {
        QueryInterface::Nearest(v, _) => examples_cost([v]),
        QueryInterface::Recommend(r) => recommend_cost(&r.positive, &r.negative, r.strategy),
        QueryInterface::Discover(d) => examples_cost(
            std::iter::once(&d.target)
                .chain(d.context.iter().flat_map(|p| [&p.positive, &p.negative])),
        ),
        QueryInterface::Context(pairs) => {
            examples_cost(pairs.iter().flat_map(|p| [&p.positive, &p.negative]))
        }
        QueryInterface::RelevanceFeedback(r) => {
            examples_cost(std::iter::once(&r.target).chain(r.feedback.iter().map(|f| &f.example)))
        }
        // Reads without vectors: a scroll.
        QueryInterface::OrderBy(_) | QueryInterface::Sample => 1,
        // Computed over what the prefetches found.
        QueryInterface::Fusion(_) | QueryInterface::Formula(_) => 0,
    }
}

/// One level of a universal query and its prefetches: a level that reads the collection
/// itself (a vector query, or a scroll where there is no query and no prefetch) costs its
/// query plus its own filter's conditions; fusion and formulas cost nothing of their own.
fn level_cost(
    prefetch: &[Prefetch],
    query: Option<&QueryInterface>,
    filter: Option<&Filter>,
) -> usize {
    let own = match query {
        Some(q) => interface_cost(q),
        None if prefetch.is_empty() => 1,
        None => 0,
    };
    let own = if own > 0 {
        own + filter_cost(filter)
    } else {
        0
    };
    prefetch
        .iter()
        .map(|p| level_cost(&p.prefetch, p.query.as_ref(), p.filter.as_ref()))
        .fold(own, usize::saturating_add)
}

// ---- writes ---------------------------------------------------------------------------------

/// The points an update touches, at least 1 (Qdrant's write cost): the points or ids it
/// names, or the points its filter matches now (an exact count over the selected shards).
/// Cancel-safe: it only reads.
async fn write_cost(
    collection: &Collection,
    update: &UpdateRequest,
    shard_key: Option<&ShardKeySelector>,
) -> Result<usize, ApiError> {
    let n = match update {
        UpdateRequest::Upsert(points) | UpdateRequest::ConditionalUpsert { points, .. } => {
            points.len()
        }
        UpdateRequest::UpdateVectors { points, .. } => points.len(),
        UpdateRequest::Delete(selection)
        | UpdateRequest::DeleteVectors { selection, .. }
        | UpdateRequest::SetPayload { selection, .. }
        | UpdateRequest::OverwritePayload { selection, .. }
        | UpdateRequest::DeletePayload { selection, .. }
        | UpdateRequest::ClearPayload(selection) => match selection {
            PointSelection::Ids(ids) | PointSelection::IdsIfPresent(ids) => ids.len(),
            PointSelection::Filter(f) => collection.count(Some(f), shard_key).await?,
        },
    };
    Ok(n.max(1))
}

/// Where the size limits learn what the collection holds.
enum Sizes<'a> {
    /// Measured from the collection on first use ([`estimate_size`]), then kept.
    Measure(&'a Collection),
    Known(SizeEstimate),
}

impl Sizes<'_> {
    async fn get(&mut self) -> Result<SizeEstimate, ApiError> {
        match self {
            Sizes::Known(size) => Ok(*size),
            Sizes::Measure(collection) => {
                let size = estimate_size(collection).await?;
                *self = Sizes::Known(size);
                Ok(size)
            }
        }
    }
}

/// What a collection holds, as its size limits see it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SizeEstimate {
    pub points: usize,
    pub vector_bytes: usize,
    pub payload_bytes: usize,
}

/// Points measured per replica for the byte estimates.
const SIZE_SAMPLE: usize = 256;

/// Estimates what the whole collection holds (replicas not counted), as Qdrant projects it
/// from this peer's replicas:
///
/// - points: the exact count of each local replica;
/// - bytes: each local replica's first [`SIZE_SAMPLE`] points (by id) are measured and their
///   mean per point multiplied by the replica's point count, so a replica of at most
///   [`SIZE_SAMPLE`] points is measured exactly. A dense vector takes its dimension times the
///   bytes of its configured `datatype` (float32 4, float16 2, uint8 1), a multivector its
///   rows times that, a sparse vector 4 bytes per index plus its value's datatype bytes per
///   entry, a payload the length of its JSON encoding (an empty payload nothing);
/// - when this peer holds only some of the collection's shards, the totals are scaled to all
///   of them (Qdrant's projection: shards are about equally filled); when it holds none, the
///   exact count and the first [`SIZE_SAMPLE`] points of the whole collection are read from
///   the peers that do.
///
/// Cancel-safe: it only reads.
pub async fn estimate_size(collection: &Collection) -> Result<SizeEstimate, ApiError> {
    let config = collection.config();
    let local = collection.local_shards();
    if local.is_empty() {
        let points = collection.count(None, None).await?;
        let (sample, _) = collection
            .scroll(None, SIZE_SAMPLE, None, true, &WithVector::All, None)
            .await?;
        return Ok(extrapolate(&config, points, &sample));
    }
    let mut total = SizeEstimate::default();
    for (_, shard) in &local {
        let points = shard.stats().points;
        let sample = shard.scroll(None, SIZE_SAMPLE, None, true, &WithVector::All);
        let part = extrapolate(&config, points, &sample);
        total.points += part.points;
        total.vector_bytes += part.vector_bytes;
        total.payload_bytes += part.payload_bytes;
    }
    let shards = collection.layout().len().max(local.len());
    Ok(project(total, local.len(), shards))
}

/// `points` points like those of `sample`.
fn extrapolate(config: &CollectionConfig, points: usize, sample: &[Record]) -> SizeEstimate {
    if sample.is_empty() {
        return SizeEstimate {
            points,
            ..SizeEstimate::default()
        };
    }
    let (mut vectors, mut payloads) = (0u128, 0u128);
    for record in sample {
        for (name, vector) in record.vector.iter().flatten() {
            vectors += vector_bytes(config, name, vector) as u128;
        }
        if let Some(payload) = record.payload.as_ref().filter(|p| !p.is_empty()) {
            payloads += serde_json::to_vec(payload).map_or(0, |b| b.len()) as u128;
        }
    }
    let scale = |bytes: u128| {
        usize::try_from(bytes * points as u128 / sample.len() as u128).unwrap_or(usize::MAX)
    };
    SizeEstimate {
        points,
        vector_bytes: scale(vectors),
        payload_bytes: scale(payloads),
    }
}

/// Totals of `local` shards scaled to `shards`.
fn project(local_total: SizeEstimate, local: usize, shards: usize) -> SizeEstimate {
    if local == 0 || shards <= local {
        return local_total;
    }
    let scale = |n: usize| {
        usize::try_from(n as u128 * shards as u128 / local as u128).unwrap_or(usize::MAX)
    };
    SizeEstimate {
        points: scale(local_total.points),
        vector_bytes: scale(local_total.vector_bytes),
        payload_bytes: scale(local_total.payload_bytes),
    }
}

fn datatype_bytes(datatype: Option<Datatype>) -> usize {
    match datatype {
        None | Some(Datatype::Float32) => 4,
        Some(Datatype::Float16) => 2,
        Some(Datatype::Uint8) => 1,
    }
}

/// Bytes one stored vector takes in Qdrant's storage of its configured datatype.
fn vector_bytes(config: &CollectionConfig, name: &str, vector: &VectorData) -> usize {
    match vector {
        VectorData::Dense(v) => {
            v.len() * datatype_bytes(config.dense(name).and_then(|p| p.datatype))
        }
        VectorData::Multi(rows) => {
            rows.iter().map(Vec::len).sum::<usize>()
                * datatype_bytes(config.dense(name).and_then(|p| p.datatype))
        }
        VectorData::Sparse(s) => {
            let value = datatype_bytes(
                config
                    .sparse(name)
                    .and_then(|p| p.index.as_ref())
                    .and_then(|i| i.datatype),
            );
            s.indices.len() * (4 + value)
        }
    }
}

/// Qdrant's collection size checks: refused once the collection has reached a limit.
fn size_limits(
    size: SizeEstimate,
    vector_limit: Option<usize>,
    payload_limit: Option<usize>,
    points_limit: Option<usize>,
) -> Result<(), ApiError> {
    let mb = |bytes: usize| bytes as f32 / (1024.0 * 1024.0);
    if let Some(limit) = vector_limit
        && size.vector_bytes >= limit
    {
        return Err(ApiError::bad_request(format!(
            "Bad request: Max vector storage size limit of {}MB reached!",
            mb(limit)
        )));
    }
    if let Some(limit) = payload_limit
        && size.payload_bytes >= limit
    {
        return Err(ApiError::bad_request(format!(
            "Bad request: Max payload storage size limit of {}MB reached!",
            mb(limit)
        )));
    }
    if let Some(limit) = points_limit
        && size.points >= limit
    {
        return Err(ApiError::bad_request(format!(
            "Bad request: Max points count limit of {limit} reached!"
        )));
    }
    Ok(())
}

fn memory_gate(resident: u64, total: u64, percent: u8) -> Result<(), ApiError> {
    if total == 0 {
        return Ok(());
    }
    let threshold = total.saturating_mul(u64::from(percent)) / 100;
    if resident >= threshold {
        let used = resident.saturating_mul(100) / total;
        return Err(refuse(
            format!(
                "Resident memory usage is at {used}% of total memory, exceeding the configured limit of {percent}%"
            ),
            "Reduce memory usage (e.g. delete points or free segments) or raise \
             `max_resident_memory_percent` in strict mode.",
        ));
    }
    Ok(())
}

fn disk_gate(used: u64, total: u64, percent: u8) -> Result<(), ApiError> {
    if total == 0 {
        return Ok(());
    }
    let used_percent = used.saturating_mul(100) / total;
    if used_percent >= u64::from(percent) {
        return Err(refuse(
            format!(
                "Disk usage is at {used_percent}% of total capacity, exceeding the configured limit of {percent}%"
            ),
            "Reduce disk usage (e.g. delete points or drop collections) or raise \
             `max_disk_usage_percent` in strict mode.",
        ));
    }
    Ok(())
}

/// Reads this process's memory and the data directory's file system (Linux).
mod resources {
    use std::path::Path;

    /// `(resident bytes of this process, bytes of memory it may use)`: the machine's memory,
    /// or the cgroup's limit when that is lower.
    pub fn memory() -> Option<(u64, u64)> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let resident = kilobytes(&status, "VmRSS:")?;
        let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
        let mut total = kilobytes(&meminfo, "MemTotal:")?;
        let cgroup_limit = [
            "/sys/fs/cgroup/memory.max",
            "/sys/fs/cgroup/memory/memory.limit_in_bytes",
        ]
        .iter()
        .find_map(|path| {
            std::fs::read_to_string(path)
                .ok()?
                .trim()
                .parse::<u64>()
                .ok()
        });
        if let Some(limit) = cgroup_limit.filter(|l| *l > 0) {
            total = total.min(limit);
        }
        Some((resident, total))
    }

    fn kilobytes(text: &str, field: &str) -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(field))?;
        let kb: u64 = line[field.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kb.saturating_mul(1024))
    }

    /// `(used bytes, total bytes)` of the file system holding `path`, as `df` counts them
    /// (used = total - available to this process).
    pub fn disk(path: &Path) -> Option<(u64, u64)> {
        let stat = rustix::fs::statvfs(path).ok()?;
        let total = stat.f_blocks.saturating_mul(stat.f_frsize);
        let available = stat.f_bavail.saturating_mul(stat.f_frsize);
        Some((total.saturating_sub(available), total))
    }
}

// ---- rate limits ------------------------------------------------------------------------------

/// The read and write token buckets of every collection on this peer, and the data directory
/// the disk gate measures. Part of [`AppState`].
pub struct StrictModeState {
    buckets: Mutex<HashMap<String, CollectionBuckets>>,
    data_dir: PathBuf,
}

/// One collection's buckets, made for one configuration: any configuration change (a strict
/// mode update, a re-created collection) starts full buckets, as Qdrant rebuilds its limiters
/// on every strict mode update.
struct CollectionBuckets {
    config: Arc<CollectionConfig>,
    read: Option<TokenBucket>,
    write: Option<TokenBucket>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bucket {
    Read,
    Write,
}

impl StrictModeState {
    pub fn new(data_dir: PathBuf) -> StrictModeState {
        StrictModeState {
            buckets: Mutex::new(HashMap::new()),
            data_dir,
        }
    }

    /// Takes `cost` tokens from the collection's bucket, when its strict mode sets a rate.
    fn take(
        &self,
        collection: &str,
        strict: &StrictMode,
        which: Bucket,
        cost: usize,
    ) -> Result<(), ApiError> {
        let rate = match which {
            Bucket::Read => strict.limits.read_rate_limit,
            Bucket::Write => strict.limits.write_rate_limit,
        };
        let Some(per_minute) = rate else {
            return Ok(());
        };
        let now = Instant::now();
        let mut buckets = self.buckets.lock();
        let entry = buckets
            .entry(collection.to_string())
            .or_insert_with(|| CollectionBuckets {
                config: Arc::clone(&strict.config),
                read: None,
                write: None,
            });
        if !Arc::ptr_eq(&entry.config, &strict.config) {
            *entry = CollectionBuckets {
                config: Arc::clone(&strict.config),
                read: None,
                write: None,
            };
        }
        let slot = match which {
            Bucket::Read => &mut entry.read,
            Bucket::Write => &mut entry.write,
        };
        slot.get_or_insert_with(|| TokenBucket::per_minute(per_minute, now))
            .take(cost, now)
            .map_err(|refusal| rate_limited(which, cost, refusal))
    }
}

/// Qdrant's rate limiter: a bucket of `per_minute` tokens, full at first, refilled
/// continuously at `per_minute / 60` tokens a second.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    capacity: f64,
    per_second: f64,
    tokens: f64,
    last: Instant,
}

/// Why a bucket refused.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Refusal {
    /// The cost is more than the bucket ever holds: waiting will not help.
    TooLarge,
    /// `available` tokens were there; enough will be after `after`.
    Retry { available: f64, after: Duration },
}

impl TokenBucket {
    pub fn per_minute(per_minute: usize, now: Instant) -> TokenBucket {
        let capacity = per_minute as f64;
        TokenBucket {
            capacity,
            per_second: capacity / 60.0,
            tokens: capacity,
            last: now,
        }
    }

    /// Takes `cost` tokens at `now`, or says why not (and takes none).
    pub fn take(&mut self, cost: usize, now: Instant) -> Result<(), Refusal> {
        let cost = cost as f64;
        if cost > self.capacity {
            return Err(Refusal::TooLarge);
        }
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.capacity);
        if self.tokens >= cost {
            self.tokens -= cost;
            return Ok(());
        }
        Err(Refusal::Retry {
            available: self.tokens,
            after: Duration::from_secs_f64((cost - self.tokens) / self.per_second),
        })
    }
}

/// 429 in Qdrant's words, with `Retry-After` (whole seconds, rounded up) when waiting helps.
fn rate_limited(which: Bucket, cost: usize, refusal: Refusal) -> ApiError {
    let kind = match which {
        Bucket::Read => "Read",
        Bucket::Write => "Write",
    };
    match refusal {
        Refusal::TooLarge => ApiError::too_many_requests(
            format!(
                "Rate limiting exceeded: {kind} rate limit exceeded, request larger than rate \
                 limiter capacity, please try to split your request"
            ),
            None,
        ),
        Refusal::Retry { available, after } => {
            let seconds = after.as_secs_f64().ceil() as u64;
            ApiError::too_many_requests(
                format!(
                    "Rate limiting exceeded: {kind} rate limit exceeded: Operation requires \
                     {cost} tokens but only {available:.1} were available. Retry after {seconds}s"
                ),
                Some(seconds),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use axum::http::StatusCode;
    use serde_json::json;

    use super::*;
    use crate::collection_config::{
        SparseIndexParams, SparseVectorParams, VectorParams, VectorsConfig,
    };
    use crate::types::{Distance, Payload, PointId, SparseVector};

    /// A collection configuration with a dense `""` (4 dims), a multivector `multi`, a sparse
    /// `sparse`, a float16 dense `half` and a sparse `small` with uint8 values.
    fn config() -> CollectionConfig {
        let mut config = CollectionConfig::single_dense(4, Distance::Dot);
        let mut half = VectorParams::new(4, Distance::Dot, false);
        half.datatype = Some(Datatype::Float16);
        config.params.vectors = VectorsConfig::Named(BTreeMap::from([
            (String::new(), VectorParams::new(4, Distance::Dot, false)),
            (
                "multi".to_string(),
                VectorParams::new(2, Distance::Dot, true),
            ),
            ("half".to_string(), half),
        ]));
        config.params.sparse_vectors = Some(BTreeMap::from([
            ("sparse".to_string(), SparseVectorParams::default()),
            (
                "small".to_string(),
                SparseVectorParams {
                    index: Some(SparseIndexParams {
                        datatype: Some(Datatype::Uint8),
                        ..SparseIndexParams::default()
                    }),
                    modifier: None,
                },
            ),
        ]));
        config
    }

    /// Strict mode `limits` (enabled) over `config`, with indexes `{key: [type, params]}`.
    fn strict_over(config: CollectionConfig, limits: Value, indexes: Value) -> StrictMode {
        let mut limits: StrictModeConfig = serde_json::from_value(limits).unwrap();
        limits.enabled = Some(true);
        let mut config = config;
        config.strict_mode_config = Some(limits.clone());
        let schema = indexes
            .as_object()
            .into_iter()
            .flatten()
            .map(|(key, index)| (key.clone(), entry(index)))
            .collect::<Vec<_>>();
        StrictMode::new(Arc::new(config), limits, schema)
    }

    fn strict(limits: Value, indexes: Value) -> StrictMode {
        strict_over(config(), limits, indexes)
    }

    fn entry(schema: &Value) -> PayloadIndexEntry {
        PayloadIndexEntry::of_schema(schema)
    }

    fn filter(v: Value) -> Filter {
        serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{v}: {e}"))
    }

    fn body<T: serde::de::DeserializeOwned>(v: Value) -> T {
        serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{v}: {e}"))
    }

    /// The message of a 400.
    fn refused(result: Result<(), ApiError>) -> String {
        let e = result.expect_err("the request must be refused");
        assert_eq!(e.status, StatusCode::BAD_REQUEST, "{}", e.message);
        e.message
    }

    #[test]
    fn conditions_are_counted_through_nested_filters() {
        let f = filter(json!({
            "must": [
                {"key": "a", "match": {"any": [1, 2, 3]}},
                {"nested": {"key": "n", "filter": {"must": [
                    {"key": "x", "match": {"value": 1}},
                    {"key": "y", "match": {"except": ["a", "b", "c", "d"]}},
                ]}}},
            ],
            "should": [{"has_id": [1, 2, 3, 4, 5]}, {"must": [{"is_empty": {"key": "e"}}]}],
            "min_should": {"conditions": [{"is_null": {"key": "z"}}, {"has_vector": "v"}], "min_count": 1},
            "must_not": [{"key": "b", "range": {"gt": 1}}],
        }));
        assert_eq!(condition_count(&f), 8);
        assert_eq!(largest_condition(&f), 5);
        let nested = filter(
            json!({"must": [{"nested": {"key": "city", "filter": {"must": [
                {"key": "key", "match": {"any": [0, 1, 2]}},
                {"key": "key2", "match": {"any": [0, 1]}},
            ]}}}]}),
        );
        assert_eq!(condition_count(&nested), 2);
        assert_eq!(largest_condition(&nested), 3);
        assert_eq!(condition_count(&Filter::default()), 0);
        assert_eq!(largest_condition(&Filter::default()), 0);
    }

    #[test]
    fn filter_limits_refuse_in_qdrant_words() {
        let s = strict(
            json!({"filter_max_conditions": 5, "condition_max_size": 5}),
            json!({}),
        );
        let many = |n: usize| {
            let conditions: Vec<Value> = (0..n)
                .map(|i| json!({"key": "price", "match": {"value": i}}))
                .collect();
            filter(json!({ "must": conditions }))
        };
        assert_eq!(s.read_filter(Some(&many(5))), Ok(()));
        assert_eq!(
            refused(s.read_filter(Some(&many(6)))),
            "Bad request: Filter condition limit reached (6 > 5). Help: Reduce the amount of \
             conditions of your filter."
        );
        let large = |n: usize| {
            let values: Vec<usize> = (0..n).collect();
            filter(json!({"must": [{"key": "price", "match": {"any": values}}]}))
        };
        assert_eq!(s.write_filter(Some(&large(5))), Ok(()));
        assert_eq!(
            refused(s.write_filter(Some(&large(6)))),
            "Bad request: Condition size limit reached (6 > 5). Help: Reduce the size of your \
             condition."
        );
    }

    /// Which declared index serves which condition (Qdrant's `unindexed_field` table).
    #[test]
    fn unindexed_keys_by_condition_kind() {
        let uuid = "550e8400-e29b-41d4-a716-446655440000";
        let all = "[bool, datetime, float, geo, integer, keyword, text, text (with phrase_matching: true), uuid]";
        let cases: Vec<(Value, Value, Option<&str>)> = vec![
            (
                json!({"key": "k", "match": {"value": "Berlin"}}),
                json!(null),
                Some("[keyword]"),
            ),
            (
                json!({"key": "k", "match": {"value": "Berlin"}}),
                json!("keyword"),
                None,
            ),
            (
                json!({"key": "k", "match": {"value": "Berlin"}}),
                json!("integer"),
                Some("[keyword]"),
            ),
            (
                json!({"key": "k", "match": {"value": uuid}}),
                json!(null),
                Some("[keyword, uuid]"),
            ),
            (
                json!({"key": "k", "match": {"value": uuid}}),
                json!("uuid"),
                None,
            ),
            (
                json!({"key": "k", "match": {"value": 1}}),
                json!("integer"),
                None,
            ),
            (
                json!({"key": "k", "match": {"value": 1}}),
                json!({"type": "integer", "lookup": true, "range": false}),
                None,
            ),
            (
                json!({"key": "k", "match": {"value": 1}}),
                json!({"type": "integer", "lookup": false}),
                Some("[integer]"),
            ),
            (
                json!({"key": "k", "match": {"value": 1}}),
                json!("keyword"),
                Some("[integer]"),
            ),
            (
                json!({"key": "k", "match": {"value": true}}),
                json!("bool"),
                None,
            ),
            (
                json!({"key": "k", "match": {"value": true}}),
                json!(null),
                Some("[bool]"),
            ),
            (
                json!({"key": "k", "match": {"text": "a b"}}),
                json!("text"),
                None,
            ),
            (
                json!({"key": "k", "match": {"text_any": "a b"}}),
                json!("keyword"),
                Some("[text]"),
            ),
            (
                json!({"key": "k", "match": {"phrase": "a b"}}),
                json!("text"),
                Some("[text (with phrase_matching: true)]"),
            ),
            (
                json!({"key": "k", "match": {"phrase": "a b"}}),
                json!({"type": "text", "phrase_matching": true}),
                None,
            ),
            (json!({"key": "k", "match": {"any": []}}), json!(null), None),
            (
                json!({"key": "k", "match": {"any": ["a", "b"]}}),
                json!("keyword"),
                None,
            ),
            (
                json!({"key": "k", "match": {"except": [1, 2]}}),
                json!("keyword"),
                Some("[integer]"),
            ),
            (
                json!({"key": "k", "range": {"gt": 1}}),
                json!("float"),
                None,
            ),
            (
                json!({"key": "k", "range": {"gt": 1}}),
                json!("integer"),
                None,
            ),
            (
                json!({"key": "k", "range": {"gt": 1}}),
                json!({"type": "integer", "range": false}),
                Some("[float, integer]"),
            ),
            (
                json!({"key": "k", "range": {"gt": "2024-01-01T00:00:00Z"}}),
                json!("datetime"),
                None,
            ),
            (
                json!({"key": "k", "range": {"gt": "2024-01-01T00:00:00Z"}}),
                json!("float"),
                Some("[datetime]"),
            ),
            (
                json!({"key": "k", "geo_radius": {"center": {"lon": 1.0, "lat": 2.0}, "radius": 10.0}}),
                json!("geo"),
                None,
            ),
            (
                json!({"key": "k", "geo_radius": {"center": {"lon": 1.0, "lat": 2.0}, "radius": 10.0}}),
                json!("keyword"),
                Some("[geo]"),
            ),
            (
                json!({"key": "k", "values_count": {"lt": 3}}),
                json!("bool"),
                None,
            ),
            (
                json!({"key": "k", "values_count": {"lt": 3}}),
                json!(null),
                Some(all),
            ),
            (json!({"is_empty": {"key": "k"}}), json!("geo"), None),
            (json!({"is_null": {"key": "k"}}), json!(null), Some(all)),
            (json!({"has_id": [1, 2]}), json!(null), None),
            (json!({"has_vector": "multi"}), json!(null), None),
        ];
        for (condition, index, expected) in cases {
            let indexes = if index.is_null() {
                json!({})
            } else {
                json!({ "k": index })
            };
            let s = strict(json!({}), indexes);
            let found = s.unindexed_key(&filter(json!({ "must": [condition.clone()] })));
            let kinds = found.map(|(key, wanted)| {
                assert_eq!(key, "k");
                let mut kinds: Vec<&str> = wanted.iter().map(|c| c.schema_name()).collect();
                kinds.sort_unstable();
                kinds.dedup();
                format!("[{}]", kinds.join(", "))
            });
            assert_eq!(kinds.as_deref(), expected, "{condition} with index {index}");
        }
    }

    #[test]
    fn nested_keys_are_full_paths() {
        let inner = json!({"must": [
            {"key": "population", "range": {"gte": 8.0}},
            {"key": "sightseeing", "values_count": {"lt": 3}},
        ]});
        let f = filter(json!({"must": [{"nested": {"key": "country.cities", "filter": inner}}]}));
        let s = strict(json!({}), json!({"country.cities[].population": "float"}));
        let (key, _) = s.unindexed_key(&f).unwrap();
        assert_eq!(key, "country.cities[].sightseeing");
        let s = strict(
            json!({}),
            json!({"country.cities[].population": "float", "country.cities[].sightseeing": "integer"}),
        );
        assert_eq!(s.unindexed_key(&f), None);
        let deep = filter(
            json!({"should": [{"nested": {"key": "a[]", "filter": {"must": [
                {"nested": {"key": "b", "filter": {"must_not": [{"key": "c", "match": {"value": 1}}]}}}
            ]}}}]}),
        );
        assert_eq!(s.unindexed_key(&deep).unwrap().0, "a[].b[].c");
    }

    #[test]
    fn unindexed_filters_are_refused_per_read_or_write_setting() {
        let f = filter(json!({"must": [{"key": "city", "match": {"value": "Berlin"}}]}));
        let message = "Bad request: Index required but not found for \"city\" of one of the \
                       following types: [keyword]. Help: Create an index for this key or use a \
                       different filter.";
        let s = strict(json!({"unindexed_filtering_retrieve": false}), json!({}));
        assert_eq!(refused(s.read_filter(Some(&f))), message);
        assert_eq!(s.write_filter(Some(&f)), Ok(()));
        let s = strict(json!({"unindexed_filtering_update": false}), json!({}));
        assert_eq!(s.read_filter(Some(&f)), Ok(()));
        assert_eq!(refused(s.write_filter(Some(&f))), message);
        let s = strict(
            json!({"unindexed_filtering_retrieve": false, "unindexed_filtering_update": false}),
            json!({"city": "keyword"}),
        );
        assert_eq!(s.read_filter(Some(&f)), Ok(()));
        assert_eq!(s.write_filter(Some(&f)), Ok(()));
        let s = strict(json!({"unindexed_filtering_retrieve": true}), json!({}));
        assert_eq!(s.read_filter(Some(&f)), Ok(()));
    }

    #[test]
    fn limits_and_search_params() {
        let s = strict(
            json!({
                "max_query_limit": 3, "max_timeout": 2, "search_max_hnsw_ef": 4,
                "search_max_oversampling": 1.9, "search_allow_exact": false,
                "search_max_batchsize": 2,
            }),
            json!({}),
        );
        assert_eq!(
            refused(s.limit(Some(4))),
            "Bad request: Limit exceeded 4 > 3 for \"limit\". Help: Reduce the \"limit\" \
             parameter to or below 3."
        );
        assert_eq!(s.limit(Some(3)), Ok(()));
        assert_eq!(s.limit(None), Ok(()));
        assert!(refused(s.timeout(Some(3))).contains("Limit exceeded 3 > 2 for \"timeout\""));
        assert_eq!(s.timeout(Some(2)), Ok(()));
        assert!(refused(s.batch(3)).contains("for \"search batch size\""));
        let params = |v: Value| body::<SearchParams>(v);
        assert!(
            refused(s.params(Some(&params(json!({"hnsw_ef": 5})))))
                .contains("5 > 4 for \"hnsw_ef\"")
        );
        assert!(
            refused(s.params(Some(&params(
                json!({"quantization": {"oversampling": 2.0}})
            ))))
            .contains("2 > 1.9 for \"oversampling\"")
        );
        assert_eq!(
            refused(s.params(Some(&params(json!({"exact": true}))))),
            "Bad request: Exact search disabled!. Help: Set exact=false."
        );
        assert_eq!(
            s.params(Some(&params(
                json!({"hnsw_ef": 4, "exact": false, "quantization": {"oversampling": 1.9}})
            ))),
            Ok(())
        );
        // A count is exact unless it says otherwise.
        let count = |v: Value| body::<CountRequest>(v);
        assert!(refused(count(json!({})).check(&s)).contains("Exact search disabled"));
        assert_eq!(count(json!({"exact": false})).check(&s), Ok(()));
        let facet = |v: Value| body::<FacetRequest>(v);
        assert_eq!(facet(json!({"key": "k"})).check(&s), Ok(()));
        assert!(refused(facet(json!({"key": "k", "limit": 4})).check(&s)).contains("4 > 3"));
        assert!(refused(facet(json!({"key": "k", "exact": true})).check(&s)).contains("Exact"));
        let scroll = |v: Value| body::<ScrollRequest>(v);
        assert_eq!(scroll(json!({})).check(&s), Ok(()));
        assert!(refused(scroll(json!({"limit": 10})).check(&s)).contains("10 > 3"));
        let searches = |n: usize| -> Vec<SearchRequest> {
            (0..n)
                .map(|_| body(json!({"vector": [1, 2, 3, 4], "limit": 3})))
                .collect()
        };
        assert_eq!(searches(2).as_slice().check(&s), Ok(()));
        assert!(refused(searches(3).as_slice().check(&s)).contains("search batch size"));
    }

    #[test]
    fn every_level_of_a_query_is_checked() {
        let s = strict(
            json!({"max_query_limit": 10, "search_max_hnsw_ef": 8, "unindexed_filtering_retrieve": false}),
            json!({"city": "keyword"}),
        );
        let query = |v: Value| body::<QueryRequest>(v);
        let ok = json!({"prefetch": [{"prefetch": [{"query": [1, 2, 3, 4], "limit": 10,
            "filter": {"must": [{"key": "city", "match": {"value": "x"}}]}}],
            "query": [1, 2, 3, 4], "limit": 10}], "query": {"fusion": "rrf"}, "limit": 5});
        assert_eq!(query(ok).check(&s), Ok(()));
        let deep_limit = json!({"prefetch": [{"prefetch": [{"query": [1, 2, 3, 4], "limit": 50}],
            "query": [1, 2, 3, 4]}], "query": [1, 2, 3, 4], "limit": 5});
        assert!(refused(query(deep_limit).check(&s)).contains("50 > 10"));
        let deep_filter = json!({"prefetch": [{"prefetch": [{"query": [1, 2, 3, 4],
            "filter": {"must": [{"key": "country", "match": {"value": "x"}}]}}]}],
            "query": {"fusion": "dbsf"}});
        assert!(refused(query(deep_filter).check(&s)).contains("\"country\""));
        let deep_params = json!({"prefetch": [{"query": [1, 2, 3, 4], "params": {"hnsw_ef": 9}}],
            "query": {"fusion": "rrf"}});
        assert!(refused(query(deep_params).check(&s)).contains("9 > 8 for \"hnsw_ef\""));
        // Qdrant's default limit of 10 counts.
        let s = strict(json!({"max_query_limit": 5}), json!({}));
        assert!(refused(query(json!({"query": [1, 2, 3, 4]})).check(&s)).contains("10 > 5"));
        assert!(
            refused(query(json!({"prefetch": [{"query": [1, 2, 3, 4]}], "query": {"fusion": "rrf"}, "limit": 5})).check(&s))
                .contains("10 > 5")
        );
    }

    #[test]
    fn groups_and_matrices_count_their_product_as_limit() {
        let s = strict(json!({"max_query_limit": 15}), json!({}));
        let groups = |v: Value| body::<QueryGroupsRequest>(v);
        assert_eq!(
            refused(groups(json!({"query": [1, 0, 0, 0], "limit": 10, "group_by": "docId", "group_size": 3})).check(&s)),
            "Bad request: Limit exceeded 30 > 15 for \"limit\". Help: Reduce the \"limit\" \
             parameter to or below 15."
        );
        assert_eq!(
            groups(
                json!({"query": [1, 0, 0, 0], "limit": 5, "group_by": "docId", "group_size": 3})
            )
            .check(&s),
            Ok(())
        );
        let matrix = |v: Value| body::<SearchMatrixRequest>(v);
        assert!(refused(matrix(json!({"sample": 10, "limit": 2})).check(&s)).contains("20 > 15"));
        assert_eq!(matrix(json!({"sample": 5, "limit": 3})).check(&s), Ok(()));
        assert!(refused(matrix(json!({"sample": 16})).check(&s)).contains("16 > 15"));
        assert_eq!(matrix(json!({})).check(&s), Ok(()));
    }

    #[test]
    fn group_by_needs_an_index_that_matches() {
        let groups = body::<QueryGroupsRequest>(
            json!({"query": [1, 0, 0, 0], "limit": 10, "group_by": "docId", "group_size": 3}),
        );
        let limits = json!({"unindexed_filtering_retrieve": false});
        assert_eq!(
            refused(groups.check(&strict(limits.clone(), json!({})))),
            "Bad request: Index required but not found for \"docId\". Help: Create an index \
             supporting `match` for this key."
        );
        assert_eq!(
            refused(groups.check(&strict(limits.clone(), json!({"docId": "geo"})))),
            "Bad request: Index of type \"Geo\" found for \"docId\". Help: Create an index \
             supporting `match` for this key."
        );
        assert_eq!(
            groups.check(&strict(limits.clone(), json!({"docId": "keyword"}))),
            Ok(())
        );
        assert_eq!(
            groups.check(&strict(limits, json!({"docId": "integer"}))),
            Ok(())
        );
        assert_eq!(groups.check(&strict(json!({}), json!({}))), Ok(()));
    }

    #[test]
    fn formulas_need_indexes_for_what_they_read() {
        let query = body::<QueryRequest>(json!({
            "prefetch": {"query": [0.1, 0.2, 0.3, 0.4]},
            "query": {"formula": {"sum": ["discount_price", "$score"]}, "defaults": {"discount_price": 0}},
        }));
        let limits = json!({"unindexed_filtering_retrieve": false});
        let message = refused(query.check(&strict(limits.clone(), json!({}))));
        assert!(message.contains("\"discount_price\""), "{message}");
        assert!(message.contains("[float, integer]"), "{message}");
        assert!(
            message.contains("use a different formula expression"),
            "{message}"
        );
        let indexed =
            json!({"discount_price": {"type": "integer", "lookup": true, "range": false}});
        assert_eq!(query.check(&strict(limits.clone(), indexed)), Ok(()));
        let geo = body::<QueryRequest>(json!({
            "prefetch": {"query": [0.1, 0.2, 0.3, 0.4]},
            "query": {"formula": {"mult": [
                {"geo_distance": {"origin": {"lat": 1.0, "lon": 2.0}, "to": "loc"}},
                {"key": "tag", "match": {"value": "a"}},
            ]}},
        }));
        let message = refused(geo.check(&strict(limits.clone(), json!({"tag": "keyword"}))));
        assert!(
            message.contains("\"loc\"") && message.contains("[geo]"),
            "{message}"
        );
        let message = refused(geo.check(&strict(limits.clone(), json!({"loc": "geo"}))));
        assert!(
            message.contains("\"tag\"") && message.contains("[keyword]"),
            "{message}"
        );
        assert_eq!(
            geo.check(&strict(limits, json!({"loc": "geo", "tag": "keyword"}))),
            Ok(())
        );
    }

    #[test]
    fn full_scans_are_refused_where_the_graph_is_off() {
        let mut no_graph = config();
        no_graph.hnsw_config.m = 0;
        let limits = json!({"search_allow_exact": false});
        let query = |v: Value| body::<QueryRequest>(v);
        let s = strict_over(no_graph.clone(), limits.clone(), json!({}));
        assert_eq!(
            refused(query(json!({"query": [1, 2, 3, 4]})).check(&s)),
            "Bad request: Request is forbidden because global vector indexing is disabled \
             (hnsw_config.m = 0). Help: Use tenant-specific filter, enable global vector \
             indexing or enable strict mode `search_allow_exact` option"
        );
        assert!(
            refused(query(json!({"query": [[1, 2]], "using": "multi"})).check(&s))
                .contains("forbidden on 'multi'")
        );
        // Sparse vectors are always indexed; rescoring prefetched points scans nothing.
        let sparse = json!({"indices": [1], "values": [1.0]});
        assert_eq!(
            query(json!({"query": sparse, "using": "sparse"})).check(&s),
            Ok(())
        );
        assert_eq!(
            query(json!({"prefetch": {"query": sparse, "using": "sparse"}, "query": [1, 2, 3, 4]}))
                .check(&s),
            Ok(())
        );
        assert!(
            refused(
                query(
                    json!({"prefetch": {"query": [1, 2, 3, 4]}, "query": sparse, "using": "sparse"})
                )
                .check(&s)
            )
            .contains("forbidden")
        );
        // A tenant filter helps only with the per-tenant graph on.
        let tenant = json!({"city": {"type": "keyword", "is_tenant": true}});
        let filtered = json!({"query": [1, 2, 3, 4], "filter": {"must": [{"key": "city", "match": {"value": "Berlin"}}]}});
        let s = strict_over(no_graph.clone(), limits.clone(), json!({"city": "keyword"}));
        assert!(
            refused(query(filtered.clone()).check(&s))
                .contains("global vector indexing is disabled")
        );
        let s = strict_over(no_graph.clone(), limits.clone(), tenant.clone());
        assert!(refused(query(filtered.clone()).check(&s)).contains("hnsw_config.payload_m = 0"));
        no_graph.hnsw_config.payload_m = Some(16);
        let s = strict_over(no_graph.clone(), limits, tenant);
        assert_eq!(query(filtered.clone()).check(&s), Ok(()));
        let s = strict_over(no_graph, json!({}), json!({}));
        assert_eq!(query(filtered).check(&s), Ok(()));
    }

    fn point(id: u64, vectors: Vec<(&str, VectorData)>, payload: Value) -> PointWrite {
        PointWrite {
            id: PointId::Num(id),
            vectors: vectors
                .into_iter()
                .map(|(n, v)| (n.to_string(), v))
                .collect(),
            payload: body(payload),
        }
    }

    fn dense() -> VectorData {
        VectorData::Dense(vec![1.0, 2.0, 3.0, 4.0])
    }

    async fn update_check(
        s: &StrictMode,
        update: &UpdateRequest,
        size: SizeEstimate,
    ) -> Result<(), ApiError> {
        s.check_update(update, &mut Sizes::Known(size)).await
    }

    #[tokio::test]
    async fn writes_of_points() {
        let s = strict(
            json!({
                "upsert_max_batchsize": 2,
                "multivector_config": {"multi": {"max_vectors": 5}},
                "sparse_config": {"sparse": {"max_length": 4}},
            }),
            json!({}),
        );
        let empty = SizeEstimate::default();
        let points = |n: u64| {
            UpdateRequest::Upsert(
                (0..n)
                    .map(|i| point(i, vec![("", dense())], json!({})))
                    .collect(),
            )
        };
        assert_eq!(update_check(&s, &points(2), empty).await, Ok(()));
        assert!(
            refused(update_check(&s, &points(3), empty).await)
                .contains("3 > 2 for \"upsert limit\"")
        );
        let vectors = UpdateRequest::UpdateVectors {
            points: (0..3)
                .map(|i| {
                    (
                        PointId::Num(i),
                        NamedVectors::from([(String::new(), dense())]),
                    )
                })
                .collect(),
            filter: None,
            missing_ok: false,
        };
        assert!(
            refused(update_check(&s, &vectors, empty).await).contains("3 > 2 for \"update limit\"")
        );
        let multi = |rows: usize| {
            UpdateRequest::Upsert(vec![point(
                1,
                vec![("multi", VectorData::Multi(vec![vec![1.0, 2.0]; rows]))],
                json!({}),
            )])
        };
        assert_eq!(update_check(&s, &multi(5), empty).await, Ok(()));
        assert_eq!(
            refused(update_check(&s, &multi(6), empty).await),
            "Bad request: Multivector 'multi' has a limit of 5 vectors, but 6 were provided!"
        );
        let sparse = |n: u32| {
            let v = SparseVector::new((0..n).collect(), vec![0.5; n as usize]).unwrap();
            UpdateRequest::UpdateVectors {
                points: vec![(
                    PointId::Num(1),
                    NamedVectors::from([("sparse".to_string(), VectorData::Sparse(v))]),
                )],
                filter: None,
                missing_ok: false,
            }
        };
        assert_eq!(update_check(&s, &sparse(4), empty).await, Ok(()));
        assert_eq!(
            refused(update_check(&s, &sparse(6), empty).await),
            "Bad request: Sparse vector 'sparse' has a limit of 4 indices, but 6 were provided!"
        );
        // The update filter of an upsert only narrows which named points change: unchecked.
        let s = strict(json!({"unindexed_filtering_update": false}), json!({}));
        let conditional = UpdateRequest::ConditionalUpsert {
            points: vec![point(1, vec![("", dense())], json!({}))],
            mode: Default::default(),
            filter: Some(filter(
                json!({"must": [{"key": "v", "match": {"value": 1}}]}),
            )),
        };
        assert_eq!(update_check(&s, &conditional, empty).await, Ok(()));
    }

    #[tokio::test]
    async fn collection_size_limits() {
        let s = strict(
            json!({"max_collection_vector_size_bytes": 240, "max_collection_payload_size_bytes": 1000, "max_points_count": 10}),
            json!({}),
        );
        let upsert = UpdateRequest::Upsert(vec![point(1, vec![("", dense())], json!({"a": 1}))]);
        let set_payload = UpdateRequest::SetPayload {
            selection: PointSelection::Ids(vec![PointId::Num(1)]),
            payload: body(json!({"a": 2})),
            key: None,
        };
        let size = |points, vector_bytes, payload_bytes| SizeEstimate {
            points,
            vector_bytes,
            payload_bytes,
        };
        assert_eq!(update_check(&s, &upsert, size(9, 239, 999)).await, Ok(()));
        assert_eq!(
            refused(update_check(&s, &upsert, size(9, 240, 0)).await),
            format!(
                "Bad request: Max vector storage size limit of {}MB reached!",
                240.0f32 / 1048576.0
            )
        );
        assert!(
            refused(update_check(&s, &upsert, size(9, 0, 1000)).await)
                .starts_with("Bad request: Max payload storage size limit of")
        );
        assert_eq!(
            refused(update_check(&s, &upsert, size(10, 0, 0)).await),
            "Bad request: Max points count limit of 10 reached!"
        );
        // A payload write only minds the payload limit.
        assert_eq!(
            update_check(&s, &set_payload, size(10, 240, 999)).await,
            Ok(())
        );
        assert!(
            refused(update_check(&s, &set_payload, size(0, 0, 1000)).await)
                .contains("payload storage")
        );
        // Deletes never.
        let delete = UpdateRequest::Delete(PointSelection::Ids(vec![PointId::Num(1)]));
        assert_eq!(update_check(&s, &delete, size(10, 240, 1000)).await, Ok(()));
    }

    #[tokio::test]
    async fn filtered_writes_need_indexes() {
        let s = strict(
            json!({"unindexed_filtering_update": false, "filter_max_conditions": 1}),
            json!({"city": "keyword"}),
        );
        let by = |key: &str| {
            PointSelection::Filter(filter(
                json!({"must": [{"key": key, "match": {"value": "x"}}]}),
            ))
        };
        let updates = [
            UpdateRequest::Delete(by("country")),
            UpdateRequest::DeleteVectors {
                selection: by("country"),
                names: vec![String::new()],
            },
            UpdateRequest::SetPayload {
                selection: by("country"),
                payload: body(json!({"a": 1})),
                key: None,
            },
            UpdateRequest::OverwritePayload {
                selection: by("country"),
                payload: body(json!({"a": 1})),
            },
            UpdateRequest::DeletePayload {
                selection: by("country"),
                keys: vec!["a".into()],
            },
            UpdateRequest::ClearPayload(by("country")),
        ];
        for update in &updates {
            let message = refused(update_check(&s, update, SizeEstimate::default()).await);
            assert!(message.contains("\"country\""), "{update:?}: {message}");
        }
        assert_eq!(
            update_check(
                &s,
                &UpdateRequest::ClearPayload(by("city")),
                SizeEstimate::default()
            )
            .await,
            Ok(())
        );
        let two = PointSelection::Filter(filter(json!({"must": [
            {"key": "city", "match": {"value": "x"}}, {"key": "city", "match": {"value": "y"}}
        ]})));
        assert!(
            refused(update_check(&s, &UpdateRequest::Delete(two), SizeEstimate::default()).await)
                .contains("Filter condition limit reached (2 > 1)")
        );
        assert!(adds_data(&updates[2]) && adds_data(&updates[3]));
        assert!(
            !adds_data(&updates[0])
                && !adds_data(&updates[1])
                && !adds_data(&updates[4])
                && !adds_data(&updates[5])
        );
    }

    #[test]
    fn read_costs_follow_qdrant() {
        let search = |v: Value| body::<SearchRequest>(v).read_cost();
        assert_eq!(search(json!({"vector": [1, 2, 3, 4], "limit": 1})), 1);
        assert_eq!(
            search(
                json!({"vector": [1, 2, 3, 4], "limit": 1, "filter": {"must": [{"key": "a", "match": {"value": 1}}, {"has_id": [1]}]}})
            ),
            3
        );
        let indices: Vec<u32> = (0..130).collect();
        assert_eq!(
            search(
                json!({"vector": {"name": "sparse", "vector": {"indices": indices, "values": vec![0.5; 130]}}, "limit": 1})
            ),
            3
        );
        let query = |v: Value| body::<QueryRequest>(v).read_cost();
        assert_eq!(
            query(json!({"query": [[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]], "using": "multi"})),
            3
        );
        assert_eq!(query(json!({"query": 2, "using": "multi"})), 3);
        assert_eq!(query(json!({})), 1);
        assert_eq!(
            query(
                json!({"query": {"order_by": "a"}, "filter": {"must": [{"key": "a", "range": {"gt": 1}}]}})
            ),
            2
        );
        assert_eq!(
            query(
                json!({"prefetch": [{"query": [1, 2, 3, 4], "filter": {"must": [{"key": "a", "match": {"value": 1}}]}}, {"query": [1, 2, 3, 4]}], "query": {"fusion": "rrf"}})
            ),
            3
        );
        assert_eq!(
            query(json!({"prefetch": [{"query": [1, 2, 3, 4]}], "query": [1, 2, 3, 4]})),
            2
        );
        let recommend = |v: Value| body::<RecommendRequest>(v).read_cost();
        assert_eq!(
            recommend(json!({"positive": [1, 2, 3, 4, 5], "strategy": "best_score", "limit": 10})),
            11
        );
        assert_eq!(recommend(json!({"positive": [1, 2], "limit": 10})), 4);
        assert_eq!(
            recommend(
                json!({"positive": [[1, 2, 3, 4]], "negative": [[1, 2, 3, 4]], "strategy": "sum_scores", "limit": 1})
            ),
            2
        );
        let two_conditions = json!({"must": [{"key": "a", "match": {"value": 1}}, {"key": "b", "match": {"value": 1}}]});
        assert_eq!(
            body::<ScrollRequest>(json!({"filter": two_conditions})).read_cost(),
            3
        );
        assert_eq!(body::<CountRequest>(json!({})).read_cost(), 1);
        assert_eq!(
            body::<FacetRequest>(json!({"key": "k", "filter": two_conditions})).read_cost(),
            3
        );
        assert_eq!(
            body::<SearchMatrixRequest>(json!({"sample": 10, "filter": two_conditions}))
                .read_cost(),
            3 + 10 * 4
        );
        assert_eq!(
            body::<PointRequest>(json!({"ids": [1, 2, 3, 4, 5]})).read_cost(),
            5
        );
        let batch: Vec<SearchRequest> = (0..3)
            .map(|_| body(json!({"vector": [1, 2, 3, 4], "limit": 1})))
            .collect();
        assert_eq!(batch.as_slice().read_cost(), 3);
    }

    #[test]
    fn sizes_are_measured_by_datatype_and_projected() {
        let config = config();
        let record = Record {
            id: PointId::Num(1),
            version: 0,
            payload: Some(body(json!({"city": "Berlin"}))),
            vector: Some(NamedVectors::from([
                (String::new(), dense()),
                ("half".to_string(), dense()),
                (
                    "multi".to_string(),
                    VectorData::Multi(vec![vec![1.0, 2.0]; 3]),
                ),
                (
                    "sparse".to_string(),
                    VectorData::Sparse(SparseVector::new(vec![1, 2, 3], vec![1.0; 3]).unwrap()),
                ),
                (
                    "small".to_string(),
                    VectorData::Sparse(SparseVector::new(vec![1, 2], vec![1.0; 2]).unwrap()),
                ),
            ])),
        };
        // float32 16 + float16 8 + multivector 3 * 2 * 4 + sparse 3 * (4 + 4) + uint8 sparse 2 * (4 + 1)
        let per_point = 16 + 8 + 24 + 24 + 10;
        let payload = r#"{"city":"Berlin"}"#.len();
        let bare = Record {
            payload: Some(Payload::new()),
            vector: None,
            ..record.clone()
        };
        assert_eq!(
            extrapolate(&config, 10, &[record.clone(), bare]),
            SizeEstimate {
                points: 10,
                vector_bytes: per_point * 5,
                payload_bytes: payload * 5
            }
        );
        assert_eq!(
            extrapolate(&config, 3, &[]),
            SizeEstimate {
                points: 3,
                vector_bytes: 0,
                payload_bytes: 0
            }
        );
        let local = extrapolate(&config, 10, &[record]);
        assert_eq!(
            project(local, 1, 3),
            SizeEstimate {
                points: 30,
                vector_bytes: per_point * 30,
                payload_bytes: payload * 30
            }
        );
        assert_eq!(project(local, 2, 2), local);
    }

    #[test]
    fn resource_gates() {
        assert_eq!(memory_gate(49, 100, 50), Ok(()));
        let message = refused(memory_gate(50, 100, 50));
        assert!(message.contains("Resident memory usage is at 50% of total memory, exceeding the configured limit of 50%"), "{message}");
        assert_eq!(memory_gate(10, 0, 1), Ok(()));
        assert_eq!(disk_gate(89, 100, 90), Ok(()));
        let message = refused(disk_gate(95, 100, 90));
        assert!(
            message.contains(
                "Disk usage is at 95% of total capacity, exceeding the configured limit of 90%"
            ),
            "{message}"
        );
        // On Linux both measures are readable.
        if cfg!(target_os = "linux") {
            let (resident, total) = resources::memory().unwrap();
            assert!(resident > 0 && total >= resident);
            let (used, total) = resources::disk(Path::new(".")).unwrap();
            assert!(total > 0 && used <= total);
        }
    }

    #[test]
    fn buckets_refill_per_minute() {
        let t0 = Instant::now();
        let mut one = TokenBucket::per_minute(1, t0);
        assert_eq!(one.take(1, t0), Ok(()));
        let Err(Refusal::Retry { available, after }) = one.take(1, t0) else {
            panic!("an empty bucket refuses")
        };
        assert_eq!(available, 0.0);
        assert!((59.9..=60.0).contains(&after.as_secs_f64()), "{after:?}");
        assert_eq!(one.take(2, t0), Err(Refusal::TooLarge));
        let t30 = t0 + Duration::from_secs(30);
        let Err(Refusal::Retry { available, after }) = one.take(1, t30) else {
            panic!("half a token is not enough")
        };
        assert!((available - 0.5).abs() < 1e-9 && (after.as_secs_f64() - 30.0).abs() < 1e-6);
        assert_eq!(one.take(1, t0 + Duration::from_secs(60)), Ok(()));
        let mut many = TokenBucket::per_minute(600, t0);
        for _ in 0..60 {
            assert_eq!(many.take(10, t0), Ok(()));
        }
        let Err(Refusal::Retry { after, .. }) = many.take(10, t0) else {
            panic!("600 tokens are spent")
        };
        assert!((after.as_secs_f64() - 1.0).abs() < 1e-6);
        // Never more than the capacity, however long it waits.
        assert_eq!(many.take(600, t0 + Duration::from_secs(3600)), Ok(()));
        assert!(many.take(1, t0 + Duration::from_secs(3600)).is_err());
        // A rate of 0 (only from stored configurations) refuses any cost.
        assert_eq!(
            TokenBucket::per_minute(0, t0).take(1, t0),
            Err(Refusal::TooLarge)
        );
    }

    #[test]
    fn rate_limit_answers() {
        let e = rate_limited(
            Bucket::Write,
            10,
            Refusal::Retry {
                available: 0.0001,
                after: Duration::from_secs_f64(59.99),
            },
        );
        assert_eq!(e.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(e.retry_after, Some(60));
        assert_eq!(
            e.message,
            "Rate limiting exceeded: Write rate limit exceeded: Operation requires 10 tokens but \
             only 0.0 were available. Retry after 60s"
        );
        let e = rate_limited(Bucket::Read, 5, Refusal::TooLarge);
        assert_eq!(e.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(e.retry_after, None);
        assert_eq!(
            e.message,
            "Rate limiting exceeded: Read rate limit exceeded, request larger than rate limiter \
             capacity, please try to split your request"
        );
    }

    #[test]
    fn buckets_are_per_collection_and_configuration() {
        let state = StrictModeState::new(PathBuf::from("."));
        let a = strict(
            json!({"read_rate_limit": 2, "write_rate_limit": 1}),
            json!({}),
        );
        assert_eq!(state.take("a", &a, Bucket::Read, 2), Ok(()));
        assert_eq!(
            state.take("a", &a, Bucket::Read, 1).unwrap_err().status,
            StatusCode::TOO_MANY_REQUESTS
        );
        // Another collection, and the write bucket, have their own tokens.
        assert_eq!(state.take("b", &a, Bucket::Read, 2), Ok(()));
        assert_eq!(state.take("a", &a, Bucket::Write, 1), Ok(()));
        // A new configuration starts full buckets.
        let changed = strict(
            json!({"read_rate_limit": 2, "write_rate_limit": 1}),
            json!({}),
        );
        assert_eq!(state.take("a", &changed, Bucket::Read, 2), Ok(()));
        assert_eq!(state.take("a", &changed, Bucket::Write, 1), Ok(()));
        // No rate set: nothing taken.
        let unlimited = strict(json!({}), json!({}));
        assert_eq!(state.take("a", &unlimited, Bucket::Read, 1000), Ok(()));
    }
}
