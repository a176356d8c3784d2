//! The operator's client of the node cluster's admin gRPC service, and the one place where
//! gRPC codes are classified into what the controller does next.
//!
//! Owns: connecting (with bounded timeouts), the `api-key` metadata, and [`NodeError`]. It
//! must not decide what to do with a collection; the reconcilers do.

use std::time::Duration;

use shoal_proto::v1 as pb;
use shoal_proto::v1::admin_service_client::AdminServiceClient;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::crd::ClusterRef;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// A failed call, classified by what the controller should do about it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    /// The spec asks for something the cluster says cannot exist or cannot be done (NOT_FOUND,
    /// INVALID_ARGUMENT): report Degraded, do not retry until the spec changes.
    #[error("{0}")]
    Invalid(String),
    /// Conflicts with the current cluster state (FAILED_PRECONDITION, ALREADY_EXISTS,
    /// ABORTED): retry with backoff.
    #[error("{0}")]
    Conflict(String),
    /// The cluster could not be reached or could not decide (UNAVAILABLE, timeouts,
    /// connection errors, anything else): retry with backoff.
    #[error("{0}")]
    Unavailable(String),
}

impl NodeError {
    pub fn from_status(status: &Status) -> Self {
        let message = if status.message().is_empty() {
            format!("{:?}", status.code())
        } else {
            status.message().to_owned()
        };
        match status.code() {
            Code::NotFound | Code::InvalidArgument | Code::OutOfRange | Code::Unimplemented => {
                Self::Invalid(message)
            }
            Code::FailedPrecondition | Code::AlreadyExists | Code::Aborted => {
                Self::Conflict(message)
            }
            _ => Self::Unavailable(format!("{:?}: {message}", status.code())),
        }
    }
}

/// The admin endpoint for `cluster`, for a resource in `namespace`.
pub fn endpoint_url(cluster: &ClusterRef, namespace: &str) -> String {
    match cluster {
        ClusterRef::Service { service, port } => format!("http://{service}.{namespace}.svc:{port}"),
        ClusterRef::Url { url } => url.clone(),
    }
}

/// A connected admin client. Cheap to clone.
#[derive(Clone)]
pub struct NodeClient {
    inner: AdminServiceClient<Channel>,
    api_key: Option<MetadataValue<tonic::metadata::Ascii>>,
    url: String,
}

impl NodeClient {
    /// Connects to `url`, waiting at most [`CONNECT_TIMEOUT`]. Cancel-safe (nothing is sent).
    pub async fn connect(url: &str, api_key: Option<&str>) -> Result<Self, NodeError> {
        let endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|e| NodeError::Invalid(format!("spec.cluster: `{url}` is not a URL: {e}")))?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT);
        let channel = tokio::time::timeout(CONNECT_TIMEOUT, endpoint.connect())
            .await
            .map_err(|_| NodeError::Unavailable(format!("connecting to {url} timed out")))?
            .map_err(|e| NodeError::Unavailable(format!("cannot connect to {url}: {e}")))?;
        let api_key = match api_key.filter(|k| !k.is_empty()) {
            Some(k) => Some(k.parse().map_err(|_| {
                NodeError::Invalid("SHOAL_API_KEY is not a valid header value".to_owned())
            })?),
            None => None,
        };
        Ok(Self {
            inner: AdminServiceClient::new(channel),
            api_key,
            url: url.to_owned(),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(key) = &self.api_key {
            request.metadata_mut().insert("api-key", key.clone());
        }
        request
    }

    pub async fn cluster_info(&self) -> Result<pb::ClusterInfoResponse, NodeError> {
        let mut client = self.inner.clone();
        client
            .cluster_info(self.request(pb::ClusterInfoRequest {}))
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| NodeError::from_status(&s))
    }

    pub async fn collection_info(
        &self,
        collection: &str,
    ) -> Result<pb::CollectionInfoResponse, NodeError> {
        let mut client = self.inner.clone();
        client
            .collection_info(self.request(pb::CollectionInfoRequest {
                collection: collection.to_owned(),
            }))
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| NodeError::from_status(&s))
    }

    /// Submits one collection cluster operation (Qdrant's `POST /collections/{c}/cluster`
    /// body). Returns once the cluster accepted it; a transfer it starts runs on after that.
    /// Not cancel-safe in the sense that a cancelled call may still have been applied: the
    /// next reconcile observes the cluster and sees it.
    pub async fn update(
        &self,
        collection: &str,
        operation: &serde_json::Value,
    ) -> Result<(), NodeError> {
        let mut client = self.inner.clone();
        client
            .update_collection_cluster(self.request(pb::UpdateCollectionClusterRequest {
                collection: collection.to_owned(),
                operation_json: operation.to_string().into_bytes(),
            }))
            .await
            .map(|_| ())
            .map_err(|s| NodeError::from_status(&s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_classified_once() {
        let c = |code, msg: &str| NodeError::from_status(&Status::new(code, msg));
        assert_eq!(
            c(Code::NotFound, "no collection `x`"),
            NodeError::Invalid("no collection `x`".into())
        );
        assert!(matches!(
            c(Code::InvalidArgument, "m"),
            NodeError::Invalid(_)
        ));
        assert!(matches!(
            c(Code::FailedPrecondition, "m"),
            NodeError::Conflict(_)
        ));
        assert!(matches!(
            c(Code::AlreadyExists, "m"),
            NodeError::Conflict(_)
        ));
        assert!(matches!(
            c(Code::Unavailable, "m"),
            NodeError::Unavailable(_)
        ));
        assert!(matches!(
            c(Code::DeadlineExceeded, "m"),
            NodeError::Unavailable(_)
        ));
    }

    #[test]
    fn service_refs_resolve_in_the_resource_namespace() {
        let svc = ClusterRef::Service {
            service: "shoal".into(),
            port: 6335,
        };
        assert_eq!(endpoint_url(&svc, "db"), "http://shoal.db.svc:6335");
        let url = ClusterRef::Url {
            url: "http://127.0.0.1:1".into(),
        };
        assert_eq!(endpoint_url(&url, "db"), "http://127.0.0.1:1");
    }
}
