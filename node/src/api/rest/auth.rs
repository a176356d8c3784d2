//! API keys, Qdrant style: a read-write key and a read-only key, in the `api-key` header or as
//! `Authorization: Bearer <key>`. Health endpoints stay open so that probes need no secret.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::api::rest::response::ApiError;

#[derive(Debug, Clone, Default)]
pub struct ApiKeys {
    pub read_write: Option<String>,
    pub read_only: Option<String>,
}

impl ApiKeys {
    pub fn enabled(&self) -> bool {
        self.read_write.is_some() || self.read_only.is_some()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Full,
    ReadOnly,
    Denied,
}

/// Paths anyone may call.
fn is_open(path: &str) -> bool {
    matches!(path, "/" | "/healthz" | "/readyz" | "/livez")
}

/// Whether a request only reads. POSTs that read (search, scroll, …) are listed explicitly;
/// everything else that is not a GET or HEAD counts as a write.
pub fn is_read_only_request(method: &Method, path: &str) -> bool {
    if method == Method::GET || method == Method::HEAD {
        return true;
    }
    if method != Method::POST {
        return false;
    }
    const READ_SUFFIXES: &[&str] = &[
        "/points",
        "/points/scroll",
        "/points/search",
        "/points/search/batch",
        "/points/search/groups",
        "/points/recommend",
        "/points/recommend/batch",
        "/points/recommend/groups",
        "/points/query",
        "/points/query/batch",
        "/points/query/groups",
        "/points/count",
        "/points/discover",
        "/points/discover/batch",
        "/facet",
    ];
    path.starts_with("/collections/") && READ_SUFFIXES.iter().any(|s| path.ends_with(s))
}

/// Constant-time comparison, so response timing does not reveal how much of a key matched.
fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(key) = headers.get("api-key").and_then(|v| v.to_str().ok()) {
        return Some(key);
    }
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

pub fn access(keys: &ApiKeys, headers: &HeaderMap) -> Access {
    access_for_key(keys, presented_key(headers))
}

/// What a presented key (or none) may do; shared by REST and the client gRPC API.
pub fn access_for_key(keys: &ApiKeys, key: Option<&str>) -> Access {
    let Some(key) = key else {
        return Access::Denied;
    };
    if keys
        .read_write
        .as_deref()
        .is_some_and(|k| same_secret(k, key))
    {
        Access::Full
    } else if keys
        .read_only
        .as_deref()
        .is_some_and(|k| same_secret(k, key))
    {
        Access::ReadOnly
    } else {
        Access::Denied
    }
}

pub async fn require_key(State(keys): State<ApiKeys>, request: Request, next: Next) -> Response {
    if !keys.enabled() || is_open(request.uri().path()) {
        return next.run(request).await;
    }
    match access(&keys, request.headers()) {
        Access::Full => next.run(request).await,
        Access::ReadOnly if is_read_only_request(request.method(), request.uri().path()) => {
            next.run(request).await
        }
        Access::ReadOnly => ApiError::new(
            StatusCode::FORBIDDEN,
            "Forbidden: the read-only API key cannot change data",
        )
        .into_response(),
        Access::Denied => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "Unauthorized: a valid API key is required (api-key header or Authorization: Bearer)",
        )
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn keys() -> ApiKeys {
        ApiKeys {
            read_write: Some("rw".into()),
            read_only: Some("ro".into()),
        }
    }

    #[test]
    fn keys_are_read_from_either_header() {
        let mut h = HeaderMap::new();
        assert_eq!(access(&keys(), &h), Access::Denied);
        h.insert("api-key", HeaderValue::from_static("rw"));
        assert_eq!(access(&keys(), &h), Access::Full);
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_static("Bearer ro"));
        assert_eq!(access(&keys(), &h), Access::ReadOnly);
        h.insert("authorization", HeaderValue::from_static("Bearer r"));
        assert_eq!(access(&keys(), &h), Access::Denied);
    }

    #[test]
    fn reads_and_writes_are_told_apart() {
        assert!(is_read_only_request(
            &Method::POST,
            "/collections/c/points/search"
        ));
        assert!(is_read_only_request(&Method::POST, "/collections/c/points"));
        assert!(is_read_only_request(&Method::GET, "/collections"));
        assert!(!is_read_only_request(&Method::PUT, "/collections/c/points"));
        assert!(!is_read_only_request(
            &Method::POST,
            "/collections/c/points/delete"
        ));
        assert!(!is_read_only_request(
            &Method::POST,
            "/collections/c/points/payload"
        ));
        assert!(!is_read_only_request(&Method::DELETE, "/collections/c"));
    }
}
