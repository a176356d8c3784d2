//! Qdrant's response envelope and error shape, and the one place where errors become status
//! codes.
//!
//! Success: `{"result": ..., "status": "ok", "time": seconds}`.
//! Failure: `{"status": {"error": "..."}, "time": seconds}` with the matching HTTP status.

use std::time::Instant;

use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::json;

use crate::cluster::CollectionError;
use crate::shard::local_shard::ShardError;

/// When the handler started; every response reports the time it took.
#[derive(Debug, Clone, Copy)]
pub struct Started(pub Instant);

impl<S: Send + Sync> FromRequestParts<S> for Started {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(_: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Started(Instant::now()))
    }
}

/// A successful answer in Qdrant's envelope.
pub struct ApiOk<T>(pub T, pub Started);

/// Serialised directly (not through `serde_json::Value`) so that `f32` scores and vectors keep
/// their short form: `0.05`, not `0.05000000074505806`.
#[derive(Serialize)]
struct Envelope<T> {
    result: T,
    status: &'static str,
    time: f64,
}

impl<T: Serialize> IntoResponse for ApiOk<T> {
    fn into_response(self) -> Response {
        let body = Envelope {
            result: self.0,
            status: "ok",
            time: self.1.0.elapsed().as_secs_f64(),
        };
        (StatusCode::OK, axum::Json(body)).into_response()
    }
}

/// An error answer: a status code and a message a person can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// Seconds after which the same request may succeed (the `Retry-After` header of a 429).
    pub retry_after: Option<u64>,
}

pub type ApiResult<T> = Result<ApiOk<T>, ApiError>;

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 429: a rate limit refused the request; `retry_after` seconds, when given, say when the
    /// same request would pass.
    pub fn too_many_requests(message: impl Into<String>, retry_after: Option<u64>) -> ApiError {
        ApiError {
            retry_after,
            ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, message)
        }
    }

    /// 400: the request is malformed or asks for something impossible.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    /// 422: the request is well-formed but a value is out of its allowed range.
    pub fn unprocessable(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({
            "status": { "error": self.message },
            "time": 0.0,
        });
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, seconds.into());
        }
        response
    }
}

impl From<CollectionError> for ApiError {
    fn from(e: CollectionError) -> ApiError {
        let status = match &e {
            CollectionError::NotFound(_)
            | CollectionError::PointNotFound(_)
            | CollectionError::Shard(ShardError::PointNotFound(_)) => StatusCode::NOT_FOUND,
            CollectionError::AlreadyExists(_) => StatusCode::CONFLICT,
            CollectionError::BadInput(_) => StatusCode::BAD_REQUEST,
            CollectionError::Shard(ShardError::WrongDimension { .. } | ShardError::BadInput(_)) => {
                StatusCode::BAD_REQUEST
            }
            CollectionError::Shard(ShardError::Retired) => StatusCode::SERVICE_UNAVAILABLE,
            CollectionError::Shard(_) | CollectionError::Storage(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            CollectionError::Unavailable(_)
            | CollectionError::Moved(_)
            | CollectionError::StaleLayout(_)
            | CollectionError::ForwardFailed(_) => StatusCode::SERVICE_UNAVAILABLE,
            // Only peers send copies; the copy's transfer has ended.
            CollectionError::StaleTransfer(_) => StatusCode::CONFLICT,
        };
        if status.is_server_error() {
            tracing::error!(error = %e, "request failed");
        }
        let message = match &e {
            CollectionError::NotFound(_) => format!("Not found: {e}"),
            CollectionError::AlreadyExists(name) => {
                format!("Wrong input: Collection `{name}` already exists!")
            }
            CollectionError::PointNotFound(_)
            | CollectionError::Shard(ShardError::PointNotFound(_)) => format!("Not found: {e}"),
            _ => e.to_string(),
        };
        ApiError::new(status, message)
    }
}
