//! The admin gRPC service (`shoal.v1.AdminService`): what the operator observes and drives.
//! Reads come from this peer's applied cluster state; changes go through the same checks and
//! consensus path as `POST /collections/{name}/cluster`.

use std::sync::Arc;

use axum::http::StatusCode;
use shoal_proto::v1 as pb;
use shoal_proto::v1::admin_service_server::AdminService;
use tonic::{Request, Response, Status};

use crate::api::rest::collection_cluster::{self, ClusterOperationRequest};
use crate::api::rest::response::ApiError;
use crate::cluster::toc::TableOfContent;
use crate::cluster::transfer::ProgressReport;
use crate::consensus::ShardKey;

pub struct Admin {
    pub toc: Arc<TableOfContent>,
}

/// The same classification as the REST status codes.
fn status_of(e: ApiError) -> Status {
    match e.status {
        StatusCode::NOT_FOUND => Status::not_found(e.message),
        StatusCode::CONFLICT => Status::failed_precondition(e.message),
        StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => {
            Status::invalid_argument(e.message)
        }
        StatusCode::SERVICE_UNAVAILABLE => Status::unavailable(e.message),
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Status::permission_denied(e.message),
        _ => Status::internal(e.message),
    }
}

fn shard_key(key: &ShardKey) -> pb::ShardKey {
    pb::ShardKey {
        key: Some(match key {
            ShardKey::Keyword(k) => pb::shard_key::Key::Keyword(k.clone()),
            ShardKey::Number(n) => pb::shard_key::Key::Number(*n),
        }),
    }
}

/// A serde enum's wire name (`"stream_records"`, `"Active"`, ...).
fn name_of<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

#[tonic::async_trait]
impl AdminService for Admin {
    async fn cluster_info(
        &self,
        _request: Request<pb::ClusterInfoRequest>,
    ) -> Result<Response<pb::ClusterInfoResponse>, Status> {
        let metadata = &self.toc.env().metadata;
        let view = metadata.view();
        let raft = metadata.consensus().map(|c| c.raft_status());
        Ok(Response::new(pb::ClusterInfoResponse {
            peer_id: metadata.peer_id().0,
            peers: view
                .state
                .peers
                .iter()
                .map(|(id, p)| pb::Peer {
                    id: id.0,
                    uri: p.uri.clone(),
                    name: p.name.clone(),
                })
                .collect(),
            leader: raft.as_ref().and_then(|r| r.leader),
            term: raft.as_ref().map_or(0, |r| r.term),
            commit: raft.as_ref().map_or(0, |r| r.commit),
        }))
    }

    async fn collection_info(
        &self,
        request: Request<pb::CollectionInfoRequest>,
    ) -> Result<Response<pb::CollectionInfoResponse>, Status> {
        let name = request.into_inner().collection;
        let view = self.toc.env().metadata.view();
        let meta = view
            .state
            .collections
            .get(&name)
            .ok_or_else(|| Status::not_found(format!("Collection `{name}` doesn't exist!")))?;
        let progress = self.toc.transfer_progress(&name).await;
        Ok(Response::new(pb::CollectionInfoResponse {
            collection: name.clone(),
            replication_factor: meta.config.params.replication_factor,
            custom_sharding: meta.config.params.sharding_method
                == Some(crate::collection_config::ShardingMethod::Custom),
            shards: meta
                .shards
                .iter()
                .map(|(id, s)| pb::Shard {
                    shard_id: id.0,
                    shard_key: s.shard_key.as_ref().map(shard_key),
                    replicas: s
                        .replicas
                        .iter()
                        .map(|(peer, state)| pb::Replica {
                            peer_id: peer.0,
                            state: name_of(state),
                        })
                        .collect(),
                })
                .collect(),
            // A resharding stream that has moved its points only forwards updates until the
            // resharding ends; it is reported in the resharding's progress, not as a transfer.
            transfers: meta
                .transfers
                .iter()
                .filter(|t| !t.done)
                .map(|t| pb::Transfer {
                    shard_id: t.shard.0,
                    to_shard_id: t.to_shard.map(|s| s.0),
                    from_peer_id: t.from.0,
                    to_peer_id: t.to.0,
                    sync: t.sync,
                    method: name_of(&t.method),
                    progress: progress
                        .iter()
                        .find(|p| {
                            p.shard_id == t.shard.0
                                && p.to_shard_id == t.to_shard.map(|s| s.0)
                                && p.from == t.from.0
                                && p.to == t.to.0
                        })
                        .map(|p| progress_of(&p.progress)),
                    points_per_second_limit: t.points_per_second,
                    bytes_per_second_limit: t.bytes_per_second,
                })
                .collect(),
            resharding: meta.resharding.as_ref().map(|r| pb::Resharding {
                direction: name_of(&r.direction),
                shard_id: r.shard.0,
                peer_id: r.peer.0,
                shard_key: r.shard_key.as_ref().map(shard_key),
                stage: name_of(&r.stage),
                manual: r.manual,
                progress: crate::cluster::resharding::progress(meta, &progress)
                    .as_ref()
                    .map(progress_of),
            }),
        }))
    }

    async fn update_collection_cluster(
        &self,
        request: Request<pb::UpdateCollectionClusterRequest>,
    ) -> Result<Response<pb::UpdateCollectionClusterResponse>, Status> {
        let request = request.into_inner();
        let operation: ClusterOperationRequest = serde_json::from_slice(&request.operation_json)
            .map_err(|e| Status::invalid_argument(format!("operation_json: {e}")))?;
        collection_cluster::apply(&self.toc, &request.collection, operation)
            .await
            .map_err(status_of)?;
        Ok(Response::new(pb::UpdateCollectionClusterResponse {}))
    }
}

fn progress_of(p: &ProgressReport) -> pb::TransferProgress {
    pb::TransferProgress {
        stage: p.stage.clone(),
        points_done: p.points_done,
        points_total: p.points_total,
        percent: p.percent,
        bytes: p.bytes,
        points_per_second: p.points_per_second,
        eta_seconds: p.eta_seconds,
        elapsed_seconds: p.elapsed_seconds,
    }
}
