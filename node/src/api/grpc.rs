//! The internal gRPC service on the p2p port (tonic). When an API key is configured, every call
//! must carry it in the `api-key` metadata entry.

use std::sync::Arc;

use shoal_proto::v1::peer_service_server::{PeerService, PeerServiceServer};
use shoal_proto::v1::{InfoRequest, InfoResponse};
use tonic::{Request, Response, Status};

use crate::api::rest::service::QDRANT_API_VERSION;
use crate::cluster::toc::TableOfContent;

pub struct Peer {
    toc: Arc<TableOfContent>,
}

#[tonic::async_trait]
impl PeerService for Peer {
    async fn info(&self, _request: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        Ok(Response::new(InfoResponse {
            version: env!("CARGO_PKG_VERSION").to_string(),
            qdrant_api_version: QDRANT_API_VERSION.to_string(),
            collections: self.toc.names(),
        }))
    }
}

/// The service, guarded by the API key when one is set.
pub fn service(
    toc: Arc<TableOfContent>,
    api_key: Option<String>,
) -> tonic::service::interceptor::InterceptedService<
    PeerServiceServer<Peer>,
    impl tonic::service::Interceptor + Clone,
> {
    let check = move |request: Request<()>| -> Result<Request<()>, Status> {
        let Some(expected) = &api_key else {
            return Ok(request);
        };
        let given = request
            .metadata()
            .get("api-key")
            .and_then(|v| v.to_str().ok());
        if given == Some(expected.as_str()) {
            Ok(request)
        } else {
            Err(Status::unauthenticated(
                "a valid api-key is required for the p2p service",
            ))
        }
    };
    PeerServiceServer::with_interceptor(Peer { toc }, check)
}
