//! A small blocking client for the Qdrant-compatible REST API, as a user would call it.
//!
//! Every request has a deadline (the agent's global timeout), so a hung node fails a test
//! instead of hanging it. Non-2xx answers become an [`ApiError`] carrying method, path,
//! status and body; tests can `downcast_ref::<ApiError>()` to tell "the node answered with
//! an error" (a bug, usually) from "the node was unreachable" (expected right after kill -9).

use std::fmt;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::distance::Distance;

/// Responses larger than this are refused; retrieving a few thousand 1k-dim points fits.
const MAX_RESPONSE_BYTES: u64 = 256 << 20;
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A point id as Qdrant accepts it: an unsigned integer or a UUID string.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PointId {
    Num(u64),
    Uuid(String),
}

impl From<u64> for PointId {
    fn from(n: u64) -> Self {
        PointId::Num(n)
    }
}

impl fmt::Display for PointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PointId::Num(n) => write!(f, "{n}"),
            PointId::Uuid(u) => write!(f, "{u}"),
        }
    }
}

impl PointId {
    pub fn as_num(&self) -> Option<u64> {
        match self {
            PointId::Num(n) => Some(*n),
            PointId::Uuid(_) => None,
        }
    }
}

/// A point to upsert (single unnamed dense vector).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PointStruct {
    pub id: PointId,
    pub vector: Vec<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<Map<String, Value>>,
}

/// `result` of an update call: `{"operation_id": N, "status": "completed"}`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct UpdateResult {
    #[serde(default)]
    pub operation_id: Option<u64>,
    pub status: String,
}

impl UpdateResult {
    pub fn is_completed(&self) -> bool {
        self.status == "completed"
    }
}

/// A point as returned by retrieve and scroll.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Record {
    pub id: PointId,
    #[serde(default)]
    pub payload: Option<Map<String, Value>>,
    /// Kept raw: Qdrant returns an array for the unnamed vector, an object for named ones.
    #[serde(default)]
    pub vector: Option<Value>,
}

impl Record {
    /// The unnamed dense vector, if one was returned.
    pub fn dense_vector(&self) -> Option<Vec<f32>> {
        parse_dense(self.vector.as_ref()?)
    }
}

/// A search hit.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ScoredPoint {
    pub id: PointId,
    pub score: f32,
    #[serde(default)]
    pub version: Option<u64>,
    #[serde(default)]
    pub payload: Option<Map<String, Value>>,
    #[serde(default)]
    pub vector: Option<Value>,
}

fn parse_dense(v: &Value) -> Option<Vec<f32>> {
    v.as_array()?
        .iter()
        .map(|x| x.as_f64().map(|f| f as f32))
        .collect()
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ScrollPage {
    pub points: Vec<Record>,
    #[serde(default)]
    pub next_page_offset: Option<PointId>,
}

/// The parts of `GET /collections/{c}` the harness reads; `raw` holds the whole `result`.
#[derive(Debug, Clone, PartialEq)]
pub struct CollectionInfo {
    /// "green", "yellow", "grey" or "red".
    pub status: String,
    pub points_count: Option<u64>,
    pub indexed_vectors_count: Option<u64>,
    pub segments_count: Option<u64>,
    pub raw: Value,
}

impl CollectionInfo {
    fn from_result(raw: Value) -> Result<Self> {
        let status = raw
            .get("status")
            .and_then(Value::as_str)
            .ok_or_else(|| anyhow!("collection info has no string `status`: {raw}"))?
            .to_owned();
        let count = |k: &str| raw.get(k).and_then(Value::as_u64);
        Ok(Self {
            status,
            points_count: count("points_count"),
            indexed_vectors_count: count("indexed_vectors_count"),
            segments_count: count("segments_count"),
            raw,
        })
    }

    /// `result.config.params.vectors.size`.
    pub fn vector_size(&self) -> Option<u64> {
        self.raw
            .pointer("/config/params/vectors/size")
            .and_then(Value::as_u64)
    }

    /// `result.config.params.vectors.distance`.
    pub fn distance(&self) -> Option<&str> {
        self.raw
            .pointer("/config/params/vectors/distance")
            .and_then(Value::as_str)
    }

    /// `result.config.hnsw_config.{m, ef_construct}`.
    pub fn hnsw_m_ef_construct(&self) -> (Option<u64>, Option<u64>) {
        let get = |k: &str| {
            self.raw
                .pointer(&format!("/config/hnsw_config/{k}"))
                .and_then(Value::as_u64)
        };
        (get("m"), get("ef_construct"))
    }
}

/// Body of `PUT /collections/{c}` for one unnamed dense vector.
#[derive(Debug, Clone, PartialEq)]
pub struct CollectionParams {
    pub size: usize,
    pub distance: Distance,
    pub hnsw_m: Option<usize>,
    pub hnsw_ef_construct: Option<usize>,
}

impl CollectionParams {
    pub fn new(size: usize, distance: Distance) -> Self {
        Self {
            size,
            distance,
            hnsw_m: None,
            hnsw_ef_construct: None,
        }
    }

    pub fn hnsw(mut self, m: usize, ef_construct: usize) -> Self {
        self.hnsw_m = Some(m);
        self.hnsw_ef_construct = Some(ef_construct);
        self
    }

    pub fn to_json(&self) -> Value {
        let mut body = json!({
            "vectors": {"size": self.size, "distance": self.distance.as_str()}
        });
        let mut hnsw = Map::new();
        if let Some(m) = self.hnsw_m {
            hnsw.insert("m".into(), m.into());
        }
        if let Some(ef) = self.hnsw_ef_construct {
            hnsw.insert("ef_construct".into(), ef.into());
        }
        if !hnsw.is_empty() {
            body["hnsw_config"] = Value::Object(hnsw);
        }
        body
    }
}

/// Body of `POST /collections/{c}/points/search`.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchRequest {
    pub vector: Vec<f32>,
    pub limit: usize,
    pub hnsw_ef: Option<usize>,
    pub exact: bool,
    pub with_payload: bool,
    pub with_vector: bool,
    /// A Qdrant filter, sent as given.
    pub filter: Option<Value>,
}

impl SearchRequest {
    pub fn new(vector: Vec<f32>, limit: usize) -> Self {
        Self {
            vector,
            limit,
            hnsw_ef: None,
            exact: false,
            with_payload: false,
            with_vector: false,
            filter: None,
        }
    }

    pub fn to_json(&self) -> Value {
        let mut params = Map::new();
        if let Some(ef) = self.hnsw_ef {
            params.insert("hnsw_ef".into(), ef.into());
        }
        params.insert("exact".into(), self.exact.into());
        let mut body = json!({
            "vector": self.vector,
            "limit": self.limit,
            "params": params,
            "with_payload": self.with_payload,
            "with_vector": self.with_vector,
        });
        if let Some(filter) = &self.filter {
            body["filter"] = filter.clone();
        }
        body
    }
}

/// The node answered, but not with 2xx.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub method: &'static str,
    pub path: String,
    pub status: u16,
    pub body: String,
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 2000;
        let body = match self.body.char_indices().nth(SHOWN) {
            Some((cut, _)) => format!("{}… ({} bytes)", &self.body[..cut], self.body.len()),
            None => self.body.clone(),
        };
        write!(
            f,
            "{} {} answered HTTP {}: {}",
            self.method, self.path, self.status, body
        )
    }
}

impl std::error::Error for ApiError {}

/// HTTP status and body text of an answered request, whatever the status.
#[derive(Debug, Clone, PartialEq)]
pub struct RawResponse {
    pub status: u16,
    pub body: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Put,
    Post,
    Patch,
    Delete,
}

impl Method {
    fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Put => "PUT",
            Method::Post => "POST",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
        }
    }
}

#[derive(Clone)]
pub struct Client {
    agent: ureq::Agent,
    base_url: String,
    api_key: Option<String>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct Envelope<T> {
    result: T,
}

impl Client {
    /// A client for `base_url` (e.g. `http://127.0.0.1:6333`) with a 30 s per-request timeout.
    pub fn new(base_url: impl Into<String>) -> Self {
        Self::with_timeout(base_url, DEFAULT_TIMEOUT)
    }

    /// `timeout` bounds each whole request (connect, send, wait, read).
    pub fn with_timeout(base_url: impl Into<String>, timeout: Duration) -> Self {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            .timeout_connect(Some(CONNECT_TIMEOUT.min(timeout)))
            .build();
        Self {
            agent: config.into(),
            base_url: base_url.into().trim_end_matches('/').to_owned(),
            api_key: None,
        }
    }

    /// Sends `api-key: <key>` with every request.
    pub fn with_api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Any request; returns status and body whatever the status. Errors only when no answer
    /// arrived (connection refused, reset, timeout).
    pub fn raw(&self, method: Method, path: &str, body: Option<&Value>) -> Result<RawResponse> {
        let url = format!("{}{}", self.base_url, path);
        let key = self.api_key.as_deref();
        macro_rules! with_key {
            ($builder:expr) => {{
                let b = $builder;
                match key {
                    Some(k) => b.header("api-key", k),
                    None => b,
                }
            }};
        }
        let sent = match (method, body) {
            (Method::Get, _) => with_key!(self.agent.get(&url)).call(),
            (Method::Delete, _) => with_key!(self.agent.delete(&url)).call(),
            (Method::Put, Some(b)) => with_key!(self.agent.put(&url)).send_json(b),
            (Method::Put, None) => with_key!(self.agent.put(&url)).send_empty(),
            (Method::Post, Some(b)) => with_key!(self.agent.post(&url)).send_json(b),
            (Method::Post, None) => with_key!(self.agent.post(&url)).send_empty(),
            (Method::Patch, Some(b)) => with_key!(self.agent.patch(&url)).send_json(b),
            (Method::Patch, None) => with_key!(self.agent.patch(&url)).send_empty(),
        };
        let mut response = sent.with_context(|| format!("{} {url}: no answer", method.as_str()))?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_RESPONSE_BYTES)
            .read_to_string()
            .with_context(|| {
                format!("{} {url}: reading the HTTP {status} body", method.as_str())
            })?;
        Ok(RawResponse { status, body })
    }

    /// A request whose 2xx body is `{"result": T, ...}`; non-2xx becomes [`ApiError`].
    pub fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<T> {
        let raw = self.raw(method, path, body)?;
        if !(200..300).contains(&raw.status) {
            return Err(ApiError {
                method: method.as_str(),
                path: path.to_owned(),
                status: raw.status,
                body: raw.body,
            }
            .into());
        }
        let envelope: Envelope<T> = serde_json::from_str(&raw.body).with_context(|| {
            let shown: String = raw.body.chars().take(2000).collect();
            format!(
                "{} {path}: HTTP {} body does not have the expected `result` shape: {shown}",
                method.as_str(),
                raw.status
            )
        })?;
        Ok(envelope.result)
    }

    /// `GET /readyz`: `Ok(true)` on 2xx, `Ok(false)` on another status, `Err` if unreachable.
    pub fn readyz(&self) -> Result<bool> {
        let raw = self.raw(Method::Get, "/readyz", None)?;
        Ok((200..300).contains(&raw.status))
    }

    pub fn create_collection(&self, name: &str, params: &CollectionParams) -> Result<()> {
        let _: Value = self.call(
            Method::Put,
            &format!("/collections/{name}"),
            Some(&params.to_json()),
        )?;
        Ok(())
    }

    pub fn delete_collection(&self, name: &str) -> Result<()> {
        let _: Value = self.call(Method::Delete, &format!("/collections/{name}"), None)?;
        Ok(())
    }

    /// Names from `GET /collections`.
    pub fn list_collections(&self) -> Result<Vec<String>> {
        let v: Value = self.call(Method::Get, "/collections", None)?;
        let list = v
            .get("collections")
            .and_then(Value::as_array)
            .ok_or_else(|| anyhow!("GET /collections: no `collections` array in {v}"))?;
        list.iter()
            .map(|c| {
                c.get("name")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .ok_or_else(|| anyhow!("GET /collections: entry without `name`: {c}"))
            })
            .collect()
    }

    /// `Ok(false)` when the node answers 404 for the collection.
    pub fn collection_exists(&self, name: &str) -> Result<bool> {
        let raw = self.raw(Method::Get, &format!("/collections/{name}"), None)?;
        match raw.status {
            200..=299 => Ok(true),
            404 => Ok(false),
            status => Err(ApiError {
                method: "GET",
                path: format!("/collections/{name}"),
                status,
                body: raw.body,
            }
            .into()),
        }
    }

    pub fn collection_info(&self, name: &str) -> Result<CollectionInfo> {
        let raw: Value = self.call(Method::Get, &format!("/collections/{name}"), None)?;
        CollectionInfo::from_result(raw)
    }

    /// `PUT /collections/{c}/points?wait=…`.
    pub fn upsert(&self, name: &str, points: &[PointStruct], wait: bool) -> Result<UpdateResult> {
        self.call(
            Method::Put,
            &format!("/collections/{name}/points?wait={wait}"),
            Some(&json!({ "points": points })),
        )
    }

    /// `POST /collections/{c}/points/delete?wait=…` with an id list.
    pub fn delete_points(&self, name: &str, ids: &[PointId], wait: bool) -> Result<UpdateResult> {
        self.call(
            Method::Post,
            &format!("/collections/{name}/points/delete?wait={wait}"),
            Some(&json!({ "points": ids })),
        )
    }

    /// `POST /collections/{c}/points`: the points among `ids` that exist (missing ones are
    /// simply absent from the answer).
    pub fn retrieve(
        &self,
        name: &str,
        ids: &[PointId],
        with_payload: bool,
        with_vector: bool,
    ) -> Result<Vec<Record>> {
        self.call(
            Method::Post,
            &format!("/collections/{name}/points"),
            Some(&json!({
                "ids": ids,
                "with_payload": with_payload,
                "with_vector": with_vector,
            })),
        )
    }

    /// One page of `POST /collections/{c}/points/scroll`.
    pub fn scroll(
        &self,
        name: &str,
        limit: usize,
        offset: Option<&PointId>,
        with_payload: bool,
        with_vector: bool,
    ) -> Result<ScrollPage> {
        let mut body = json!({
            "limit": limit,
            "with_payload": with_payload,
            "with_vector": with_vector,
        });
        if let Some(offset) = offset {
            body["offset"] = serde_json::to_value(offset)?;
        }
        self.call(
            Method::Post,
            &format!("/collections/{name}/points/scroll"),
            Some(&body),
        )
    }

    /// Every point, following `next_page_offset`. Fails after `max_pages` pages so a node
    /// that loops on its cursor cannot hang the caller.
    pub fn scroll_all(
        &self,
        name: &str,
        page_size: usize,
        max_pages: usize,
        with_payload: bool,
        with_vector: bool,
    ) -> Result<Vec<Record>> {
        let mut out = Vec::new();
        let mut offset: Option<PointId> = None;
        for _ in 0..max_pages {
            let page = self.scroll(name, page_size, offset.as_ref(), with_payload, with_vector)?;
            out.extend(page.points);
            match page.next_page_offset {
                Some(next) => offset = Some(next),
                None => return Ok(out),
            }
        }
        Err(anyhow!(
            "scroll of `{name}` did not finish within {max_pages} pages of {page_size} \
             ({} points so far, next offset {offset:?})",
            out.len()
        ))
    }

    pub fn search(&self, name: &str, request: &SearchRequest) -> Result<Vec<ScoredPoint>> {
        self.call(
            Method::Post,
            &format!("/collections/{name}/points/search"),
            Some(&request.to_json()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn point_ids_round_trip_as_qdrant_spells_them() {
        let ids = vec![
            PointId::Num(7),
            PointId::Uuid("5c56c793-69f3-4fbf-87e6-c4bf54c28c26".into()),
        ];
        let s = serde_json::to_string(&ids).unwrap();
        assert_eq!(s, r#"[7,"5c56c793-69f3-4fbf-87e6-c4bf54c28c26"]"#);
        assert_eq!(serde_json::from_str::<Vec<PointId>>(&s).unwrap(), ids);
    }

    #[test]
    fn request_bodies() {
        let p = CollectionParams::new(128, Distance::Cosine).hnsw(16, 100);
        assert_eq!(
            p.to_json(),
            json!({"vectors": {"size": 128, "distance": "Cosine"},
                   "hnsw_config": {"m": 16, "ef_construct": 100}})
        );
        assert_eq!(
            CollectionParams::new(4, Distance::Dot).to_json(),
            json!({"vectors": {"size": 4, "distance": "Dot"}})
        );
        let mut s = SearchRequest::new(vec![0.5, 1.0], 10);
        s.hnsw_ef = Some(128);
        assert_eq!(
            s.to_json(),
            json!({"vector": [0.5, 1.0], "limit": 10, "params": {"hnsw_ef": 128, "exact": false},
                   "with_payload": false, "with_vector": false})
        );
        let point = PointStruct {
            id: 3.into(),
            vector: vec![0.25],
            payload: None,
        };
        assert_eq!(
            serde_json::to_value(&point).unwrap(),
            json!({"id": 3, "vector": [0.25]})
        );
    }

    #[test]
    fn parses_records_and_collection_info() {
        let r: Record =
            serde_json::from_value(json!({"id": 1, "payload": {"n": 1}, "vector": [0.1, -2.5]}))
                .unwrap();
        assert_eq!(r.dense_vector(), Some(vec![0.1f32, -2.5]));
        let r: Record = serde_json::from_value(json!({"id": 2})).unwrap();
        assert_eq!(r.dense_vector(), None);
        let info = CollectionInfo::from_result(json!({
            "status": "green", "points_count": 10, "indexed_vectors_count": 0,
            "config": {"params": {"vectors": {"size": 4, "distance": "Dot"}},
                       "hnsw_config": {"m": 8, "ef_construct": 64}}
        }))
        .unwrap();
        assert_eq!(info.status, "green");
        assert_eq!(info.points_count, Some(10));
        assert_eq!(info.vector_size(), Some(4));
        assert_eq!(info.distance(), Some("Dot"));
        assert_eq!(info.hnsw_m_ef_construct(), (Some(8), Some(64)));
        assert!(CollectionInfo::from_result(json!({})).is_err());
    }

    #[test]
    fn api_error_display_truncates_long_bodies() {
        let e = ApiError {
            method: "PUT",
            path: "/x".into(),
            status: 500,
            body: "é".repeat(5000),
        };
        let s = e.to_string();
        assert!(s.starts_with("PUT /x answered HTTP 500: "));
        assert!(s.len() < 5000);
    }

    #[test]
    fn unreachable_node_is_an_error_not_an_api_error() {
        // Port 1 on loopback is essentially never listening; connection is refused at once.
        let c = Client::with_timeout("http://127.0.0.1:1", Duration::from_secs(2));
        let err = c.readyz().unwrap_err();
        assert!(err.downcast_ref::<ApiError>().is_none());
    }
}
