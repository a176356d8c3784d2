//! The internal gRPC services on the p2p port (tonic): peer info, the Raft transport and cluster
//! membership. When an API key is configured, every call must carry it in the `api-key`
//! metadata entry; an unauthenticated call is refused.

use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;
use shoal_proto::v1::cluster_service_server::{ClusterService, ClusterServiceServer};
use shoal_proto::v1::peer_service_server::{PeerService, PeerServiceServer};
use shoal_proto::v1::raft_service_server::{RaftService, RaftServiceServer};
use shoal_proto::v1::{
    InfoRequest, InfoResponse, JoinRequest, JoinResponse, ProposeRequest, ProposeResponse,
    RaftPayload, RemoveMemberRequest, RemoveMemberResponse,
};
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status};

use crate::api::rest::service::QDRANT_API_VERSION;
use crate::cluster::toc::TableOfContent;
use crate::consensus::raft_node::{ConsensusError, ConsensusNode};
use crate::consensus::{ClusterOperation, PeerId, PeerNode};

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

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Status> {
    serde_json::from_slice(bytes)
        .map_err(|e| Status::invalid_argument(format!("malformed message: {e}")))
}

fn encode<T: Serialize>(value: &T) -> Result<Response<RaftPayload>, Status> {
    serde_json::to_vec(value)
        .map(|json| Response::new(RaftPayload { json }))
        .map_err(|e| Status::internal(e.to_string()))
}

fn status_of(e: ConsensusError) -> Status {
    match e {
        ConsensusError::NoLeader => Status::unavailable(e.to_string()),
        ConsensusError::Forward { .. } => Status::unavailable(e.to_string()),
        _ => Status::internal(e.to_string()),
    }
}

/// Openraft's messages, handed to the local Raft member.
pub struct RaftTransport {
    node: Arc<ConsensusNode>,
}

#[tonic::async_trait]
impl RaftService for RaftTransport {
    async fn append_entries(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let rpc = decode(&request.into_inner().json)?;
        encode(&self.node.raft.append_entries(rpc).await)
    }

    async fn vote(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let rpc = decode(&request.into_inner().json)?;
        encode(&self.node.raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let rpc = decode(&request.into_inner().json)?;
        encode(&self.node.raft.install_snapshot(rpc).await)
    }
}

/// Membership and metadata proposals from other peers.
pub struct Membership {
    node: Arc<ConsensusNode>,
}

#[tonic::async_trait]
impl ClusterService for Membership {
    async fn join(&self, request: Request<JoinRequest>) -> Result<Response<JoinResponse>, Status> {
        let r = request.into_inner();
        if r.peer_id == 0 || r.uri.is_empty() {
            return Err(Status::invalid_argument(
                "a joining peer needs a non-zero id and a URI",
            ));
        }
        let leader = self
            .node
            .join(
                PeerId(r.peer_id),
                PeerNode {
                    uri: r.uri,
                    name: r.name,
                },
            )
            .await
            .map_err(status_of)?;
        Ok(Response::new(JoinResponse { leader_id: leader }))
    }

    async fn remove_member(
        &self,
        request: Request<RemoveMemberRequest>,
    ) -> Result<Response<RemoveMemberResponse>, Status> {
        let peer = request.into_inner().peer_id;
        self.node
            .remove_member(peer, std::time::Duration::from_secs(30))
            .await
            .map_err(status_of)?;
        Ok(Response::new(RemoveMemberResponse {}))
    }

    async fn propose(
        &self,
        request: Request<ProposeRequest>,
    ) -> Result<Response<ProposeResponse>, Status> {
        let op: ClusterOperation = decode(&request.into_inner().operation_json)?;
        let (result, log_index) = self.node.propose(op).await.map_err(status_of)?;
        let result_json =
            serde_json::to_vec(&result).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(ProposeResponse {
            result_json,
            log_index,
        }))
    }
}

/// Refuses calls without the configured API key.
#[derive(Clone)]
pub struct RequireKey(Option<Arc<str>>);

impl tonic::service::Interceptor for RequireKey {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.0 else {
            return Ok(request);
        };
        let given = request
            .metadata()
            .get("api-key")
            .and_then(|v| v.to_str().ok());
        if given == Some(&**expected) {
            Ok(request)
        } else {
            Err(Status::unauthenticated(
                "a valid api-key is required for the p2p service",
            ))
        }
    }
}

/// Every service of the p2p port, each guarded by the API key when one is set.
pub fn router(
    toc: Arc<TableOfContent>,
    consensus: Option<Arc<ConsensusNode>>,
    api_key: Option<String>,
) -> tonic::service::Routes {
    let guard = RequireKey(api_key.map(Arc::from));
    let mut routes = tonic::service::Routes::new(InterceptedService::new(
        PeerServiceServer::new(Peer { toc }),
        guard.clone(),
    ));
    if let Some(node) = consensus {
        routes = routes
            .add_service(InterceptedService::new(
                RaftServiceServer::new(RaftTransport {
                    node: Arc::clone(&node),
                }),
                guard.clone(),
            ))
            .add_service(InterceptedService::new(
                ClusterServiceServer::new(Membership { node }),
                guard,
            ));
    }
    routes
}
