//! The Raft network: openraft's messages carried over the p2p gRPC service.
//!
//! Requests and responses are openraft's own types serialised as JSON inside a `RaftPayload`.
//! A remote Raft error (e.g. "not the leader") travels back inside the payload, so it reaches
//! openraft as a `RemoteError`; a transport failure is `Unreachable`, which makes openraft back
//! off instead of hammering a dead peer.

use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use shoal_proto::v1::RaftPayload;
use shoal_proto::v1::raft_service_client::RaftServiceClient;
use tonic::transport::{Channel, Endpoint};

use super::type_config::{NodeId, PeerNode, TypeConfig};

/// How long a peer may take to accept a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Opens a lazily connecting channel to a peer's p2p URI.
pub fn channel(uri: &str, timeout: Duration) -> Result<Channel, String> {
    let endpoint = Endpoint::from_shared(uri.to_string())
        .map_err(|e| format!("`{uri}` is not a valid peer URI: {e}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(timeout)
        .tcp_nodelay(true);
    Ok(endpoint.connect_lazy())
}

/// Adds the API key, when one is configured, to an outgoing request.
pub fn authorize<T>(mut request: tonic::Request<T>, api_key: Option<&str>) -> tonic::Request<T> {
    if let Some(key) = api_key
        && let Ok(value) = key.parse()
    {
        request.metadata_mut().insert("api-key", value);
    }
    request
}

/// Creates a client per target peer.
#[derive(Clone)]
pub struct PeerNetworkFactory {
    pub api_key: Option<String>,
}

impl RaftNetworkFactory<TypeConfig> for PeerNetworkFactory {
    type Network = PeerNetwork;

    async fn new_client(&mut self, target: NodeId, node: &PeerNode) -> PeerNetwork {
        PeerNetwork {
            target,
            uri: node.uri.clone(),
            api_key: self.api_key.clone(),
            client: None,
        }
    }
}

pub struct PeerNetwork {
    target: NodeId,
    uri: String,
    api_key: Option<String>,
    client: Option<RaftServiceClient<Channel>>,
}

enum Rpc {
    AppendEntries,
    Vote,
    InstallSnapshot,
}

impl PeerNetwork {
    /// Sends one message; the answer is the remote `Result<Resp, RaftError<E>>`.
    async fn call<Req, Resp, E>(
        &mut self,
        rpc: Rpc,
        request: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, PeerNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let json =
            serde_json::to_vec(request).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let client = match &mut self.client {
            Some(c) => c,
            None => {
                let channel = channel(&self.uri, option.hard_ttl()).map_err(|e| {
                    RPCError::Unreachable(Unreachable::new(&std::io::Error::other(e)))
                })?;
                self.client.insert(RaftServiceClient::new(channel))
            }
        };
        let request = authorize(
            tonic::Request::new(RaftPayload { json }),
            self.api_key.as_deref(),
        );
        let response = match rpc {
            Rpc::AppendEntries => client.append_entries(request).await,
            Rpc::Vote => client.vote(request).await,
            Rpc::InstallSnapshot => client.install_snapshot(request).await,
        };
        let payload = response.map_err(|status| {
            let err =
                std::io::Error::other(format!("peer {} ({}): {status}", self.target, self.uri));
            match status.code() {
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown => {
                    RPCError::Unreachable(Unreachable::new(&err))
                }
                _ => RPCError::Network(NetworkError::new(&err)),
            }
        })?;
        let answer: Result<Resp, RaftError<NodeId, E>> =
            serde_json::from_slice(&payload.into_inner().json)
                .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerNetwork {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, PeerNode, RaftError<NodeId>>> {
        self.call(Rpc::AppendEntries, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, PeerNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(Rpc::InstallSnapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, PeerNode, RaftError<NodeId>>> {
        self.call(Rpc::Vote, &rpc, &option).await
    }
}
