//! Qdrant's issues API (`GET /issues`, `DELETE /issues`) and the one issue Qdrant raises,
//! `UNINDEXED_FIELD`: a read whose filter uses a payload key with no index that could serve
//! the condition.
//!
//! Qdrant checks a search's or query's filters when the request was slow (longer than its
//! `service.slow_query_secs`, 1.2 s by default). Shoal does the same, and also when the
//! collection holds [`MANY_POINTS`] points or more: Shoal evaluates every filter by scanning
//! payloads, so on a collection that large the filter is the expensive part whether or not
//! this one request happened to be slow. Reads of every kind report (search, query, scroll,
//! count, and their batches): each handler calls [`watch`] once and keeps the guard it
//! returns until it answers.
//!
//! The registry lives in this process only (Qdrant's is per peer too), holds at most
//! [`MAX_ISSUES`] issues, and keeps an issue's first report (its timestamp does not move when
//! the same issue is seen again). An `UNINDEXED_FIELD` issue goes away by itself once its
//! collection is deleted (or re-created) or the field gets an index, as in Qdrant; `DELETE
//! /issues` clears everything. Qdrant's other issue type, `TOO_MANY_COLLECTIONS`, is defined
//! but never raised by Qdrant 1.18, so Shoal does not raise it either.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use axum::extract::State;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::api::rest::AppState;
use crate::api::rest::introspection::rfc3339;
use crate::api::rest::models::{CountRequest, QueryRequest, ScrollRequest, SearchRequest};
use crate::api::rest::response::{ApiOk, ApiResult, Started};
use crate::cluster::collection::Collection;
use crate::cluster::toc::TableOfContent;
use crate::collection_config::PayloadIndexEntry;
use crate::index::capability::{Capability, capabilities, required};
use crate::index::filter::{Condition, Filter};

/// Qdrant's default `slow_query_secs`: a filtered search or query that takes longer reports
/// the unindexed keys of its filter.
pub const SLOW_QUERY: Duration = Duration::from_millis(1200);
/// From this many points on a filtered read reports unindexed keys however long it took.
pub const MANY_POINTS: usize = 10_000;
/// The registry keeps at most this many issues; later ones are dropped until it is cleared.
pub const MAX_ISSUES: usize = 512;

/// Qdrant's `IssueRecord`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IssueRecord {
    pub id: String,
    pub description: String,
    pub solution: Solution,
    pub timestamp: String,
    pub related_collection: Option<String>,
}

/// Qdrant's `Solution`: `{"immediate": {...}}`, `{"immediate_choice": [...]}` or
/// `{"refactor": "..."}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Solution {
    Immediate(Box<ImmediateSolution>),
    ImmediateChoice(Vec<ImmediateSolution>),
    Refactor(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImmediateSolution {
    pub message: String,
    pub action: Action,
}

/// The request that applies a solution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Action {
    pub method: String,
    pub uri: String,
    pub headers: BTreeMap<String, String>,
    pub body: Option<serde_json::Map<String, Value>>,
}

#[derive(Debug, Serialize)]
pub struct IssuesReport {
    pub issues: Vec<IssueRecord>,
}

/// What makes an issue go away by itself.
#[derive(Debug, Clone, PartialEq)]
enum Cause {
    /// `field` of the collection `name` (created with `uuid`) has no suitable index.
    UnindexedField {
        name: String,
        uuid: u64,
        field: String,
    },
}

/// The issues this peer has seen, oldest first.
#[derive(Debug, Default)]
pub struct IssueRegistry {
    issues: Mutex<Vec<(IssueRecord, Cause)>>,
}

impl IssueRegistry {
    /// Adds an issue unless one with its id is there already or the registry is full.
    /// Returns whether it was added.
    fn submit(&self, record: IssueRecord, cause: Cause) -> bool {
        let mut issues = self.issues.lock();
        if issues.iter().any(|(r, _)| r.id == record.id) {
            return false;
        }
        if issues.len() >= MAX_ISSUES {
            tracing::debug!(issue = %record.id, "issue registry full; issue not recorded");
            return false;
        }
        tracing::info!(issue = %record.id, collection = ?record.related_collection, "issue reported");
        issues.push((record, cause));
        true
    }

    /// Drops the issues whose cause is gone (`still_holds` says `false`).
    fn retain(&self, still_holds: impl Fn(&Cause) -> bool) {
        self.issues.lock().retain(|(_, cause)| still_holds(cause));
    }

    pub fn all(&self) -> Vec<IssueRecord> {
        self.issues.lock().iter().map(|(r, _)| r.clone()).collect()
    }

    pub fn clear(&self) {
        self.issues.lock().clear();
    }
}

/// This process's registry.
pub fn registry() -> &'static IssueRegistry {
    static REGISTRY: OnceLock<IssueRegistry> = OnceLock::new();
    REGISTRY.get_or_init(IssueRegistry::default)
}

/// Whether an `UNINDEXED_FIELD` issue still holds: the same collection (not a re-created one
/// of the same name) exists and the field still has no index.
fn still_holds(toc: &TableOfContent, cause: &Cause) -> bool {
    match cause {
        Cause::UnindexedField { name, uuid, field } => toc.get(name).is_ok_and(|c| {
            c.name() == name && c.uuid() == *uuid && !c.payload_schema().contains_key(field)
        }),
    }
}

/// `GET /issues`.
pub async fn get(State(state): State<AppState>, started: Started) -> ApiResult<IssuesReport> {
    let registry = registry();
    registry.retain(|cause| still_holds(&state.toc, cause));
    Ok(ApiOk(
        IssuesReport {
            issues: registry.all(),
        },
        started,
    ))
}

/// `DELETE /issues`.
pub async fn clear(started: Started) -> ApiResult<bool> {
    registry().clear();
    Ok(ApiOk(true, started))
}

// ---- detection ------------------------------------------------------------------------------

/// A read request with filters (its own and its prefetches').
pub trait FilteredRead {
    fn filters(&self) -> Vec<&Filter>;
}

impl FilteredRead for SearchRequest {
    fn filters(&self) -> Vec<&Filter> {
        self.filter.iter().collect()
    }
}

impl FilteredRead for ScrollRequest {
    fn filters(&self) -> Vec<&Filter> {
        self.filter.iter().collect()
    }
}

impl FilteredRead for CountRequest {
    fn filters(&self) -> Vec<&Filter> {
        self.filter.iter().collect()
    }
}

impl FilteredRead for QueryRequest {
    fn filters(&self) -> Vec<&Filter> {
        fn prefetches<'a>(p: &'a [crate::api::rest::models::Prefetch], out: &mut Vec<&'a Filter>) {
            for p in p {
                out.extend(p.filter.iter());
                prefetches(&p.prefetch, out);
            }
        }
        let mut out: Vec<&Filter> = self.filter.iter().collect();
        prefetches(&self.prefetch, &mut out);
        out
    }
}

impl<R: FilteredRead> FilteredRead for [R] {
    fn filters(&self) -> Vec<&Filter> {
        self.iter().flat_map(FilteredRead::filters).collect()
    }
}

/// Watches one read: created before the read runs, it reports the unindexed keys of the
/// read's filters when it is dropped, if the read was slow or the collection is large. Does
/// nothing (and costs one pass over the filters) when every key it uses is indexed.
#[must_use = "the read is watched until the guard is dropped"]
pub struct ReadWatch {
    collection: Option<Arc<Collection>>,
    suspects: BTreeMap<String, BTreeSet<&'static str>>,
    large: bool,
    started: Instant,
}

/// Starts watching a read of `collection` (the hook of the read handlers).
pub fn watch<R: FilteredRead + ?Sized>(
    collection: &Arc<Collection>,
    started: Started,
    request: &R,
) -> ReadWatch {
    let filters = request.filters();
    let mut suspects = BTreeMap::new();
    if !filters.is_empty() {
        let schema = collection.payload_schema();
        for filter in filters {
            for (field, kinds) in unindexed_fields(filter, &schema) {
                suspects
                    .entry(field)
                    .or_insert_with(BTreeSet::new)
                    .extend(kinds);
            }
        }
    }
    let large = !suspects.is_empty() && estimated_points(collection) >= MANY_POINTS;
    ReadWatch {
        collection: (!suspects.is_empty()).then(|| Arc::clone(collection)),
        suspects,
        large,
        started: started.0,
    }
}

/// The collection's points, estimated from this peer's replicas (each shard taken to hold as
/// many as the local ones do on average): cheap, and exact on a single node.
fn estimated_points(collection: &Collection) -> usize {
    let local = collection.local_shards();
    if local.is_empty() {
        return 0;
    }
    let points: usize = local.iter().map(|(_, s)| s.stats().points).sum();
    let shards = collection.layout().len().max(local.len());
    points / local.len() * shards
}

impl Drop for ReadWatch {
    fn drop(&mut self) {
        let Some(collection) = self.collection.take() else {
            return;
        };
        if !self.large && self.started.elapsed() <= SLOW_QUERY {
            return;
        }
        for (field, kinds) in std::mem::take(&mut self.suspects) {
            let record = unindexed_field_issue(collection.name(), &field, &kinds);
            registry().submit(
                record,
                Cause::UnindexedField {
                    name: collection.name().to_string(),
                    uuid: collection.uuid(),
                    field,
                },
            );
        }
    }
}

/// Qdrant's `UNINDEXED_FIELD` issue for `field` of `collection`, whose solution creates one of
/// the index kinds that would serve the filter (one solution per kind).
pub fn unindexed_field_issue(
    collection: &str,
    field: &str,
    kinds: &BTreeSet<&'static str>,
) -> IssueRecord {
    let uri = format!("/collections/{}/index", encode_path_segment(collection));
    let mut solutions: Vec<ImmediateSolution> = kinds
        .iter()
        .map(|kind| {
            let mut body = serde_json::Map::new();
            body.insert("field_name".into(), Value::String(field.to_string()));
            body.insert("field_schema".into(), Value::String(kind.to_string()));
            ImmediateSolution {
                message: format!(
                    "Create an index on field '{field}' of schema \"{kind}\" in collection \
                     '{collection}'. Check the documentation for more details: \
                     https://qdrant.tech/documentation/concepts/indexing/#payload-index"
                ),
                action: Action {
                    method: "PUT".into(),
                    uri: uri.clone(),
                    headers: BTreeMap::from([(
                        "content-type".to_string(),
                        "application/json".to_string(),
                    )]),
                    body: Some(body),
                },
            }
        })
        .collect();
    let solution = if solutions.len() == 1 {
        Solution::Immediate(Box::new(solutions.remove(0)))
    } else {
        Solution::ImmediateChoice(solutions)
    };
    IssueRecord {
        id: format!("UNINDEXED_FIELD/{collection}/{field}"),
        description: format!(
            "Unindexed field '{field}' might be slowing queries down in collection '{collection}'"
        ),
        solution,
        timestamp: rfc3339(SystemTime::now()),
        related_collection: Some(collection.to_string()),
    }
}

/// Percent-encodes what may not stand in a URI path segment (collection names are mostly
/// plain, but may hold e.g. spaces).
fn encode_path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Every payload key `filter` uses without an index that serves its condition, with the
/// index kinds that would (Qdrant's `IssueExtractor`; `uuid` is not suggested, as in Qdrant).
/// Keys inside a `nested` condition are full paths (`country.cities[].population`).
pub fn unindexed_fields(
    filter: &Filter,
    schema: &BTreeMap<String, PayloadIndexEntry>,
) -> BTreeMap<String, BTreeSet<&'static str>> {
    let mut out = BTreeMap::new();
    collect(None, filter, schema, &mut out);
    out.retain(|_, kinds: &mut BTreeSet<&'static str>| {
        kinds.remove("uuid");
        !kinds.is_empty()
    });
    out
}

fn collect(
    prefix: Option<&str>,
    filter: &Filter,
    schema: &BTreeMap<String, PayloadIndexEntry>,
    out: &mut BTreeMap<String, BTreeSet<&'static str>>,
) {
    let conditions = filter
        .must
        .iter()
        .flatten()
        .chain(filter.must_not.iter().flatten())
        .chain(filter.should.iter().flatten())
        .chain(filter.min_should.iter().flat_map(|m| &m.conditions));
    let full = |key: &dyn std::fmt::Display| match prefix {
        Some(p) => format!("{p}.{key}"),
        None => key.to_string(),
    };
    for condition in conditions {
        let (key, wanted) = match condition {
            Condition::Field(f) => (full(&f.key), required(f)),
            Condition::IsEmpty(c) => (full(&c.is_empty.key), Capability::ALL.to_vec()),
            Condition::IsNull(c) => (full(&c.is_null.key), Capability::ALL.to_vec()),
            Condition::Filter(inner) => {
                collect(prefix, inner, schema, out);
                continue;
            }
            Condition::Nested(n) => {
                let key = n.nested.key.to_string();
                let key = if key.ends_with("[]") {
                    key
                } else {
                    format!("{key}[]")
                };
                collect(Some(&full(&key)), &n.nested.filter, schema, out);
                continue;
            }
            Condition::HasId(_) | Condition::HasVector(_) => continue,
        };
        if wanted.is_empty() {
            continue;
        }
        let served = schema
            .get(&key)
            .is_some_and(|entry| capabilities(entry).iter().any(|c| wanted.contains(c)));
        if !served {
            out.entry(key)
                .or_default()
                .extend(wanted.iter().map(|c| c.kind()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn filter(v: Value) -> Filter {
        serde_json::from_value(v).unwrap()
    }

    fn index(data_type: &str, params: Option<Value>) -> PayloadIndexEntry {
        PayloadIndexEntry {
            data_type: data_type.into(),
            params,
        }
    }

    fn kinds(list: &[&'static str]) -> BTreeSet<&'static str> {
        list.iter().copied().collect()
    }

    #[test]
    fn unindexed_keys_are_found_with_the_kinds_that_would_serve_them() {
        let schema = BTreeMap::from([
            ("city".to_string(), index("keyword", None)),
            (
                "n".to_string(),
                index("integer", Some(json!({"range": false}))),
            ),
            ("body".to_string(), index("text", None)),
        ]);
        let f = filter(json!({
            "must": [
                {"key": "city", "match": {"any": ["London", "Moscow"]}},
                {"key": "n", "range": {"gte": 1}},
                {"key": "body", "match": {"phrase": "a b"}},
                {"has_id": [1, 2]},
            ],
            "should": [{"must_not": [{"key": "flag", "match": {"value": true}}]}],
            "min_should": {"conditions": [{"key": "id", "match": {"value": "8c7dbb3e-0000-4000-8000-000000000000"}}], "min_count": 1},
        }));
        let found = unindexed_fields(&f, &schema);
        assert!(
            !found.contains_key("city"),
            "a keyword index serves match.any"
        );
        assert_eq!(
            found["n"],
            kinds(&["float", "integer"]),
            "a lookup-only index cannot range"
        );
        assert_eq!(
            found["body"],
            kinds(&["text"]),
            "phrase needs phrase_matching"
        );
        assert_eq!(found["flag"], kinds(&["bool"]));
        assert_eq!(found["id"], kinds(&["keyword"]), "uuid is never suggested");
        assert_eq!(found.len(), 4);
    }

    #[test]
    fn nested_keys_are_full_paths_and_empty_lists_need_nothing() {
        let f = filter(json!({"must": [
            {"nested": {"key": "country.cities", "filter": {"must": [
                {"key": "population", "range": {"gt": 1000}},
            ]}}},
            {"key": "tags", "match": {"any": []}},
            {"is_empty": {"key": "notes"}},
        ]}));
        let found = unindexed_fields(&f, &BTreeMap::new());
        assert_eq!(
            found["country.cities[].population"],
            kinds(&["float", "integer"])
        );
        assert!(!found.contains_key("tags"));
        assert_eq!(found["notes"].len(), 7, "any kind but uuid will do");
    }

    #[test]
    fn the_issue_is_shaped_as_qdrant_shapes_it() {
        let one = unindexed_field_issue("my docs", "city", &kinds(&["keyword"]));
        assert_eq!(one.id, "UNINDEXED_FIELD/my docs/city");
        assert_eq!(one.related_collection.as_deref(), Some("my docs"));
        let json = serde_json::to_value(&one).unwrap();
        let action = &json["solution"]["immediate"]["action"];
        assert_eq!(action["method"], "PUT");
        assert_eq!(action["uri"], "/collections/my%20docs/index");
        assert_eq!(
            action["body"],
            json!({"field_name": "city", "field_schema": "keyword"})
        );
        assert_eq!(action["headers"]["content-type"], "application/json");
        let two = unindexed_field_issue("c", "n", &kinds(&["float", "integer"]));
        let json = serde_json::to_value(&two).unwrap();
        assert_eq!(
            json["solution"]["immediate_choice"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn the_registry_keeps_first_reports_and_is_bounded() {
        let registry = IssueRegistry::default();
        let cause = |field: &str| Cause::UnindexedField {
            name: "c".into(),
            uuid: 1,
            field: field.into(),
        };
        let first = unindexed_field_issue("c", "a", &kinds(&["keyword"]));
        assert!(registry.submit(first.clone(), cause("a")));
        let mut again = first.clone();
        again.timestamp = "later".into();
        assert!(!registry.submit(again, cause("a")));
        assert_eq!(registry.all(), vec![first]);
        for i in 0..MAX_ISSUES + 10 {
            let field = format!("f{i}");
            registry.submit(
                unindexed_field_issue("c", &field, &kinds(&["keyword"])),
                cause(&field),
            );
        }
        assert_eq!(registry.all().len(), MAX_ISSUES);
        registry.retain(|c| !matches!(c, Cause::UnindexedField { field, .. } if field == "a"));
        assert_eq!(registry.all().len(), MAX_ISSUES - 1);
        registry.clear();
        assert!(registry.all().is_empty());
    }
}
