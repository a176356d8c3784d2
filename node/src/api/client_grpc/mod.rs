//! Qdrant's public gRPC API (`qdrant.Qdrant`, `qdrant.Collections`, `qdrant.Points`,
//! `qdrant.Snapshots`) on `service.grpc_port` (6334 by default), wire-compatible with Qdrant 1.18
//! through the official `qdrant-client` crate's generated types and tonic server traits.
//!
//! Every RPC with a REST twin converts its request into that REST request ([`convert`]) and
//! calls the very handler the REST route calls, so validation, limits, errors and behaviour
//! cannot drift apart; the answer is converted back. REST status codes map to gRPC codes as
//! Qdrant maps its errors: 400/422 `InvalidArgument`, 404 `NotFound`, 409 `AlreadyExists`,
//! 401 `Unauthenticated`, 403 `PermissionDenied`, 413/429 `ResourceExhausted`, 503 `Unavailable`,
//! 504 `DeadlineExceeded`, anything else `Internal`.
//!
//! API keys follow REST's rules: the `api-key` metadata entry (or `authorization: Bearer`), the
//! read-only key refused for RPCs that change data; the health check stays open.

pub mod convert;

use std::time::Instant;

use axum::extract::State;
use axum::http::StatusCode;
use qdrant_client::qdrant as q;
use qdrant_client::qdrant::collections_server::{Collections, CollectionsServer};
use qdrant_client::qdrant::points_server::{Points, PointsServer};
use qdrant_client::qdrant::qdrant_server::{Qdrant, QdrantServer};
use qdrant_client::qdrant::snapshots_server::{Snapshots, SnapshotsServer};
use serde_json::{Map, Value, json};
use tonic::{Request, Response, Status};

use crate::api::rest::auth::{Access, ApiKeys, access_for_key};
use crate::api::rest::json_body::{JsonBody, PathParams, QueryParams};
use crate::api::rest::models::{ReadParams, WaitParam};
use crate::api::rest::response::{ApiError, ApiOk, Started};
use crate::api::rest::service::{QDRANT_API_VERSION, QDRANT_TITLE};
use crate::api::rest::{
    AppState, collection_cluster, collections, matrix, points, search, snapshots,
};
use crate::cluster::shard_requests::WriteOrdering;
use convert::{from_json, put_opt};

/// The routes of the four services, each taking messages of at most `max_message_bytes`.
pub fn routes(state: AppState, keys: ApiKeys, max_message_bytes: usize) -> tonic::service::Routes {
    let api = ClientApi { state, keys };
    tonic::service::Routes::new(
        QdrantServer::new(api.clone()).max_decoding_message_size(max_message_bytes),
    )
    .add_service(CollectionsServer::new(api.clone()).max_decoding_message_size(max_message_bytes))
    .add_service(PointsServer::new(api.clone()).max_decoding_message_size(max_message_bytes))
    .add_service(SnapshotsServer::new(api).max_decoding_message_size(max_message_bytes))
}

#[derive(Clone)]
struct ClientApi {
    state: AppState,
    keys: ApiKeys,
}

/// A REST error as the gRPC status Qdrant answers for it.
pub fn status_of(e: ApiError) -> Status {
    let code = match e.status {
        StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => tonic::Code::InvalidArgument,
        StatusCode::NOT_FOUND => tonic::Code::NotFound,
        StatusCode::CONFLICT => tonic::Code::AlreadyExists,
        StatusCode::UNAUTHORIZED => tonic::Code::Unauthenticated,
        StatusCode::FORBIDDEN => tonic::Code::PermissionDenied,
        StatusCode::PAYLOAD_TOO_LARGE | StatusCode::TOO_MANY_REQUESTS => {
            tonic::Code::ResourceExhausted
        }
        StatusCode::SERVICE_UNAVAILABLE => tonic::Code::Unavailable,
        StatusCode::GATEWAY_TIMEOUT | StatusCode::REQUEST_TIMEOUT => tonic::Code::DeadlineExceeded,
        StatusCode::METHOD_NOT_ALLOWED => tonic::Code::Unimplemented,
        _ => tonic::Code::Internal,
    };
    let mut status = Status::new(code, e.message);
    if let Some(seconds) = e.retry_after
        && let Ok(value) = seconds.to_string().parse()
    {
        // Qdrant's clients read a rate limit's wait from this entry.
        status.metadata_mut().insert("retry-after", value);
    }
    status
}

/// A read's query parameters from its gRPC `timeout`.
fn read_params(timeout: Option<u64>) -> QueryParams<ReadParams> {
    QueryParams(ReadParams { timeout })
}

fn started() -> Started {
    Started(Instant::now())
}

fn secs(started: Instant) -> f64 {
    started.elapsed().as_secs_f64()
}

/// The payload of a successful REST answer, or its error as a status.
fn ok<T>(answer: Result<ApiOk<T>, ApiError>) -> Result<T, Status> {
    answer.map(|ApiOk(value, _)| value).map_err(status_of)
}

/// What a read-write request needs.
const WRITE: bool = true;
/// What a read-only request needs.
const READ: bool = false;

impl ClientApi {
    /// Refuses a call without a valid key (when keys are configured), and a write made with the
    /// read-only key.
    fn authorize<T>(&self, request: &Request<T>, write: bool) -> Result<(), Status> {
        if !self.keys.enabled() {
            return Ok(());
        }
        let metadata = request.metadata();
        let key = metadata
            .get("api-key")
            .and_then(|v| v.to_str().ok())
            .or_else(|| {
                metadata
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .map(str::trim)
            });
        match access_for_key(&self.keys, key) {
            Access::Full => Ok(()),
            Access::ReadOnly if !write => Ok(()),
            Access::ReadOnly => Err(Status::permission_denied(
                "the read-only API key cannot change data",
            )),
            Access::Denied => Err(Status::unauthenticated(
                "a valid API key is required (api-key metadata or authorization: Bearer)",
            )),
        }
    }

    fn state(&self) -> State<AppState> {
        State(self.state.clone())
    }

    async fn update(
        &self,
        collection: String,
        (wait, timeout, ordering): (Option<bool>, Option<u64>, Option<WriteOrdering>),
        kind: UpdateKind,
        body: Value,
    ) -> Result<Response<q::PointsOperationResponse>, Status> {
        let t = Instant::now();
        let (s, n, w) = (
            self.state(),
            PathParams(collection),
            QueryParams(WaitParam {
                wait,
                timeout,
                ordering,
            }),
        );
        let result = match kind {
            UpdateKind::Delete => {
                ok(points::delete(s, n, w, started(), JsonBody(from_json(body)?)).await)
            }
            UpdateKind::SetPayload => {
                ok(points::set_payload(s, n, w, started(), JsonBody(from_json(body)?)).await)
            }
            UpdateKind::OverwritePayload => {
                ok(points::overwrite_payload(s, n, w, started(), JsonBody(from_json(body)?)).await)
            }
            UpdateKind::DeletePayload => {
                ok(points::delete_payload(s, n, w, started(), JsonBody(from_json(body)?)).await)
            }
            UpdateKind::ClearPayload => {
                ok(points::clear_payload(s, n, w, started(), JsonBody(from_json(body)?)).await)
            }
            UpdateKind::UpdateVectors => {
                ok(points::update_vectors(s, n, w, started(), JsonBody(from_json(body)?)).await)
            }
            UpdateKind::DeleteVectors => {
                ok(points::delete_vectors(s, n, w, started(), JsonBody(from_json(body)?)).await)
            }
        }?;
        Ok(Response::new(q::PointsOperationResponse {
            result: Some(convert::update_result(&result)),
            time: secs(t),
            usage: None,
        }))
    }
}

enum UpdateKind {
    Delete,
    SetPayload,
    OverwritePayload,
    DeletePayload,
    ClearPayload,
    UpdateVectors,
    DeleteVectors,
}

fn scored(points: Vec<crate::api::rest::models::ScoredPointOut>) -> Vec<q::ScoredPoint> {
    points.into_iter().map(convert::scored_point_out).collect()
}

#[tonic::async_trait]
impl Qdrant for ClientApi {
    async fn health_check(
        &self,
        _request: Request<q::HealthCheckRequest>,
    ) -> Result<Response<q::HealthCheckReply>, Status> {
        Ok(Response::new(q::HealthCheckReply {
            title: QDRANT_TITLE.into(),
            version: QDRANT_API_VERSION.into(),
            commit: None,
        }))
    }
}

#[tonic::async_trait]
impl Collections for ClientApi {
    async fn get(
        &self,
        request: Request<q::GetCollectionInfoRequest>,
    ) -> Result<Response<q::GetCollectionInfoResponse>, Status> {
        self.authorize(&request, READ)?;
        let t = Instant::now();
        let name = request.into_inner().collection_name;
        let info = ok(collections::get(self.state(), PathParams(name), started()).await)?;
        let json = serde_json::to_value(&info).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(q::GetCollectionInfoResponse {
            result: Some(convert::collection_info_out(&json)),
            time: secs(t),
        }))
    }

    async fn list(
        &self,
        request: Request<q::ListCollectionsRequest>,
    ) -> Result<Response<q::ListCollectionsResponse>, Status> {
        self.authorize(&request, READ)?;
        let t = Instant::now();
        let list = ok(collections::list(self.state(), started()).await)?;
        Ok(Response::new(q::ListCollectionsResponse {
            collections: list
                .collections
                .into_iter()
                .map(|c| q::CollectionDescription { name: c.name })
                .collect(),
            time: secs(t),
        }))
    }

    async fn create(
        &self,
        request: Request<q::CreateCollection>,
    ) -> Result<Response<q::CollectionOperationResponse>, Status> {
        self.authorize(&request, WRITE)?;
        let t = Instant::now();
        let req = request.into_inner();
        let name = req.collection_name.clone();
        let body = from_json(convert::create_collection(req)?)?;
        let result =
            ok(
                collections::create(self.state(), PathParams(name), started(), JsonBody(body))
                    .await,
            )?;
        Ok(Response::new(q::CollectionOperationResponse {
            result,
            time: secs(t),
        }))
    }

    async fn update(
        &self,
        request: Request<q::UpdateCollection>,
    ) -> Result<Response<q::CollectionOperationResponse>, Status> {
        self.authorize(&request, WRITE)?;
        let t = Instant::now();
        let req = request.into_inner();
        let name = req.collection_name.clone();
        let body = from_json(convert::update_collection(req)?)?;
        let result =
            ok(
                collections::update(self.state(), PathParams(name), started(), JsonBody(body))
                    .await,
            )?;
        Ok(Response::new(q::CollectionOperationResponse {
            result,
            time: secs(t),
        }))
    }

    async fn delete(
        &self,
        request: Request<q::DeleteCollection>,
    ) -> Result<Response<q::CollectionOperationResponse>, Status> {
        self.authorize(&request, WRITE)?;
        let t = Instant::now();
        let name = request.into_inner().collection_name;
        let result = ok(collections::delete(self.state(), PathParams(name), started()).await)?;
        Ok(Response::new(q::CollectionOperationResponse {
            result,
            time: secs(t),
        }))
    }

    async fn update_aliases(
        &self,
        request: Request<q::ChangeAliases>,
    ) -> Result<Response<q::CollectionOperationResponse>, Status> {
        self.authorize(&request, WRITE)?;
        let t = Instant::now();
        let body = from_json(convert::change_aliases(request.into_inner())?)?;
        let result =
            ok(collections::update_aliases(self.state(), started(), JsonBody(body)).await)?;
        Ok(Response::new(q::CollectionOperationResponse {
            result,
            time: secs(t),
        }))
    }

    async fn list_collection_aliases(
        &self,
        request: Request<q::ListCollectionAliasesRequest>,
    ) -> Result<Response<q::ListAliasesResponse>, Status> {
        self.authorize(&request, READ)?;
        let t = Instant::now();
        let name = request.into_inner().collection_name;
        let answer =
            ok(collections::collection_aliases(self.state(), PathParams(name), started()).await)?;
        Ok(Response::new(q::ListAliasesResponse {
            aliases: convert::aliases_out(answer),
            time: secs(t),
        }))
    }

    async fn list_aliases(
        &self,
        request: Request<q::ListAliasesRequest>,
    ) -> Result<Response<q::ListAliasesResponse>, Status> {
        self.authorize(&request, READ)?;
        let t = Instant::now();
        let answer = ok(collections::list_aliases(self.state(), started()).await)?;
        Ok(Response::new(q::ListAliasesResponse {
            aliases: convert::aliases_out(answer),
            time: secs(t),
        }))
    }

    async fn collection_cluster_info(
        &self,
        request: Request<q::CollectionClusterInfoRequest>,
    ) -> Result<Response<q::CollectionClusterInfoResponse>, Status> {
        self.authorize(&request, READ)?;
        let name = request.into_inner().collection_name;
        let info = ok(collections::cluster_info(self.state(), PathParams(name), started()).await)?;
        Ok(Response::new(convert::cluster_info_out(&info)))
    }

    async fn collection_exists(
        &self,
        request: Request<q::CollectionExistsRequest>,
    ) -> Result<Response<q::CollectionExistsResponse>, Status> {
        self.authorize(&request, READ)?;
        let t = Instant::now();
        let name = request.into_inner().collection_name;
        let exists = ok(collections::exists(self.state(), PathParams(name), started()).await)?;
        Ok(Response::new(q::CollectionExistsResponse {
            result: Some(q::CollectionExists {
                exists: exists.exists,
            }),
            time: secs(t),
        }))
    }

    async fn update_collection_cluster_setup(
        &self,
        request: Request<q::UpdateCollectionClusterSetupRequest>,
    ) -> Result<Response<q::UpdateCollectionClusterSetupResponse>, Status> {
        self.authorize(&request, WRITE)?;
        let req = request.into_inner();
        let name = req.collection_name.clone();
        let body = from_json(convert::cluster_operation(req)?)?;
        let result = ok(collection_cluster::update(
            self.state(),
            PathParams(name),
            started(),
            JsonBody(body),
        )
        .await)?;
        Ok(Response::new(q::UpdateCollectionClusterSetupResponse {
            result,
            time: 0.0,
        }))
    }

    async fn create_shard_key(
        &self,
        request: Request<q::CreateShardKeyRequest>,
    ) -> Result<Response<q::CreateShardKeyResponse>, Status> {
        self.authorize(&request, WRITE)?;
        let req = request.into_inner();
        let r = req
            .request
            .ok_or_else(|| Status::invalid_argument("shard key request is missing"))?;
        let mut body = Map::new();
        body.insert("shard_key".into(), convert::shard_key_value(r.shard_key)?);
        put_opt(&mut body, "shards_number", r.shards_number.map(Value::from));
        put_opt(
            &mut body,
            "replication_factor",
            r.replication_factor.map(Value::from),
        );
        if !r.placement.is_empty() {
            body.insert("placement".into(), json!(r.placement));
        }
        put_opt(
            &mut body,
            "initial_state",
            convert::replica_state_name(r.initial_state)?,
        );
        let result = ok(collections::create_shard_key(
            self.state(),
            PathParams(req.collection_name),
            started(),
            JsonBody(from_json(Value::Object(body))?),
        )
        .await)?;
        Ok(Response::new(q::CreateShardKeyResponse {
            result,
            time: 0.0,
        }))
    }

    async fn delete_shard_key(
        &self,
        request: Request<q::DeleteShardKeyRequest>,
    ) -> Result<Response<q::DeleteShardKeyResponse>, Status> {
        self.authorize(&request, WRITE)?;
        let req = request.into_inner();
        let r = req
            .request
            .ok_or_else(|| Status::invalid_argument("shard key request is missing"))?;
        let body = json!({"shard_key": convert::shard_key_value(r.shard_key)?});
        let result = ok(collections::delete_shard_key(
            self.state(),
            PathParams(req.collection_name),
            started(),
            JsonBody(from_json(body)?),
        )
        .await)?;
        Ok(Response::new(q::DeleteShardKeyResponse {
            result,
            time: 0.0,
        }))
    }

    async fn list_shard_keys(
        &self,
        request: Request<q::ListShardKeysRequest>,
    ) -> Result<Response<q::ListShardKeysResponse>, Status> {
        self.authorize(&request, READ)?;
        let t = Instant::now();
        let name = request.into_inner().collection_name;
        let info = ok(collections::cluster_info(self.state(), PathParams(name), started()).await)?;
        Ok(Response::new(q::ListShardKeysResponse {
            shard_keys: convert::shard_keys_of(&info)
                .into_iter()
                .map(|key| q::ShardKeyDescription { key: Some(key) })
                .collect(),
            time: secs(t),
        }))
    }
}

#[tonic::async_trait]
impl Points for ClientApi {
    async fn upsert(
        &self,
        request: Request<q::UpsertPoints>,
    ) -> Result<Response<q::PointsOperationResponse>, Status> {
        self.authorize(&request, WRITE)?;
        let t = Instant::now();
        let r = request.into_inner();
        let body = convert::upsert_body(
            r.points,
            r.shard_key_selector,
            r.update_filter,
            r.update_mode,
        )?;
        let result = ok(points::upsert(
            self.state(),
            PathParams(r.collection_name),
            QueryParams(WaitParam {
                wait: r.wait,
                timeout: r.timeout,
                ordering: convert::write_ordering(r.ordering)?,
            }),
            started(),
            JsonBody(body),
        )
        .await)?;
        Ok(Response::new(q::PointsOperationResponse {
            result: Some(convert::update_result(&result)),
            time: secs(t),
            usage: None,
        }))
    }

    async fn delete(
        &self,
        request: Request<q::DeletePoints>,
    ) -> Result<Response<q::PointsOperationResponse>, Status> {
        self.authorize(&request, WRITE)?;
        let r = request.into_inner();
        let body =
            convert::with_shard_key(convert::points_selector(r.points)?, r.shard_key_selector)?;
        self.update(
            r.collection_name,
            (r.wait, r.timeout, convert::write_ordering(r.ordering)?),
            UpdateKind::Delete,
            body,
        )
        .await
    }

    async fn get(
        &self,
        request: Request<q::GetPoints>,
    ) -> Result<Response<q::GetResponse>, Status> {
        self.authorize(&request, READ)?;
        let t = Instant::now();
        let r = request.into_inner();
        let mut body = Map::new();
        body.insert(
            "ids".into(),
            r.ids
                .into_iter()
                .map(|id| convert::point_id_json(Some(id)))
                .collect::<Result<Vec<_>, _>>()?
                .into(),
        );
        put_opt(
            &mut body,
            "with_payload",
            convert::with_payload(r.with_payload),
        );
        put_opt(
            &mut body,
            "with_vector",
            convert::with_vectors(r.with_vectors),
        );
        let body = convert::with_shard_key(body, r.shard_key_selector)?;
        let records = ok(points::retrieve(
            self.state(),
            PathParams(r.collection_name),
            read_params(r.timeout),
            started(),
            JsonBody(from_json(body)?),
        )
        .await)?;
        Ok(Response::new(q::GetResponse {
            result: records
                .into_iter()
                .map(convert::retrieved_point_out)
                .collect(),
            time: secs(t),
            usage: None,
        }))
    }

    async fn update_vectors(
        &self,
        request: Request<q::UpdatePointVectors>,
    ) -> Result<Response<q::PointsOperationResponse>, Status> {
        self.authorize(&request, WRITE)?;
        let r = request.into_inner();
        let mut body = Map::new();
        body.insert("points".into(), convert::point_vectors(r.points)?);
        if let Some(f) = r.update_filter {
            body.insert("update_filter".into(), convert::filter(f)?);
        }
        let body = convert::with_shard_key(body, r.shard_key_selector)?;
        self.update(
            r.collection_name,
            (r.wait, r.timeout, convert::write_ordering(r.ordering)?),
            UpdateKind::UpdateVectors,
            body,
        )
        .await
    }

    async fn delete_vectors(
        &self,
        request: Request<q::DeletePointVectors>,
    ) -> Result<Response<q::PointsOperationResponse>, Status> {
        self.authorize(&request, WRITE)?;
        let r = request.into_inner();
        let mut body = convert::points_selector(r.points_selector)?;
        body.insert(
            "vector".into(),
            json!(r.vectors.map(|v| v.names).unwrap_or_default()),
        );
        let body = convert::with_shard_key(body, r.shard_key_selector)?;
        self.update(
            r.collection_name,
            (r.wait, r.timeout, convert::write_ordering(r.ordering)?),
            UpdateKind::DeleteVectors,
            body,
        )
        .await
    }

    async fn set_payload(
        &self,
        request: Request<q::SetPayloadPoints>,
    ) -> Result<Response<q::PointsOperationResponse>, Status> {
        self.authorize(&request, WRITE)?;
        let r = request.into_inner();
        let mut body = convert::points_selector(r.points_selector)?;
        body.insert(
            "payload".into(),
            Value::Object(convert::payload_to_json(r.payload)),
        );
        put_opt(&mut body, "key", r.key.map(Value::String));
        let body = convert::with_shard_key(body, r.shard_key_selector)?;
        self.update(
            r.collection_name,
            (r.wait, r.timeout, convert::write_ordering(r.ordering)?),
            UpdateKind::SetPayload,
            body,
        )
        .await
    }

    async fn overwrite_payload(
        &self,
        request: Request<q::SetPayloadPoints>,
    ) -> Result<Response<q::PointsOperationResponse>, Status> {
        self.authorize(&request, WRITE)?;
        let r = request.into_inner();
        let mut body = convert::points_selector(r.points_selector)?;
        body.insert(
            "payload".into(),
            Value::Object(convert::payload_to_json(r.payload)),
        );
        put_opt(&mut body, "key", r.key.map(Value::String));
        let body = convert::with_shard_key(body, r.shard_key_selector)?;
        self.update(
            r.collection_name,
            (r.wait, r.timeout, convert::write_ordering(r.ordering)?),
            UpdateKind::OverwritePayload,
            body,
        )
        .await
    }

    async fn delete_payload(
        &self,
        request: Request<q::DeletePayloadPoints>,
    ) -> Result<Response<q::PointsOperationResponse>, Status> {
        self.authorize(&request, WRITE)?;
        let r = request.into_inner();
        let mut body = convert::points_selector(r.points_selector)?;
        body.insert("keys".into(), json!(r.keys));
        let body = convert::with_shard_key(body, r.shard_key_selector)?;
        self.update(
            r.collection_name,
            (r.wait, r.timeout, convert::write_ordering(r.ordering)?),
            UpdateKind::DeletePayload,
            body,
        )
        .await
    }

    async fn clear_payload(
        &self,
        request: Request<q::ClearPayloadPoints>,
    ) -> Result<Response<q::PointsOperationResponse>, Status> {
        self.authorize(&request, WRITE)?;
        let r = request.into_inner();
        let body =
            convert::with_shard_key(convert::points_selector(r.points)?, r.shard_key_selector)?;
        self.update(
            r.collection_name,
            (r.wait, r.timeout, convert::write_ordering(r.ordering)?),
            UpdateKind::ClearPayload,
            body,
        )
        .await
    }

    async fn create_field_index(
        &self,
        request: Request<q::CreateFieldIndexCollection>,
    ) -> Result<Response<q::PointsOperationResponse>, Status> {
        self.authorize(&request, WRITE)?;
        let t = Instant::now();
        let r = request.into_inner();
        let params = r
            .field_index_params
            .as_ref()
            .map(convert::field_index_params_json)
            .unwrap_or_default();
        let schema = match r.field_type {
            Some(ty) if params.is_empty() => Value::String(convert::field_type_name(ty)?.into()),
            Some(ty) => {
                let mut object = params;
                object.insert("type".into(), convert::field_type_name(ty)?.into());
                Value::Object(object)
            }
            None => Value::Null,
        };
        let body = json!({"field_name": r.field_name, "field_schema": schema});
        let result = ok(collections::create_index(
            self.state(),
            PathParams(r.collection_name),
            QueryParams(WaitParam {
                wait: r.wait,
                timeout: r.timeout,
                ordering: None,
            }),
            started(),
            JsonBody(from_json(body)?),
        )
        .await)?;
        Ok(Response::new(q::PointsOperationResponse {
            result: Some(convert::update_result(&result)),
            time: secs(t),
            usage: None,
        }))
    }

    async fn delete_field_index(
        &self,
        request: Request<q::DeleteFieldIndexCollection>,
    ) -> Result<Response<q::PointsOperationResponse>, Status> {
        self.authorize(&request, WRITE)?;
        let t = Instant::now();
        let r = request.into_inner();
        let result = ok(collections::delete_index(
            self.state(),
            PathParams((r.collection_name, r.field_name)),
            started(),
        )
        .await)?;
        Ok(Response::new(q::PointsOperationResponse {
            result: Some(convert::update_result(&result)),
            time: secs(t),
            usage: None,
        }))
    }

    async fn create_vector_name(
        &self,
        request: Request<q::CreateVectorNameRequest>,
    ) -> Result<Response<q::PointsOperationResponse>, Status> {
        self.authorize(&request, WRITE)?;
        let t = Instant::now();
        let r = request.into_inner();
        let body = from_json(convert::vector_name_config(r.vector_config)?)?;
        let result = ok(collections::create_vector_name(
            self.state(),
            PathParams((r.collection_name, r.vector_name)),
            QueryParams(WaitParam {
                wait: r.wait,
                timeout: r.timeout,
                ordering: None,
            }),
            started(),
            JsonBody(body),
        )
        .await)?;
        Ok(Response::new(q::PointsOperationResponse {
            result: Some(convert::update_result(&result)),
            time: secs(t),
            usage: None,
        }))
    }

    async fn delete_vector_name(
        &self,
        request: Request<q::DeleteVectorNameRequest>,
    ) -> Result<Response<q::PointsOperationResponse>, Status> {
        self.authorize(&request, WRITE)?;
        let t = Instant::now();
        let r = request.into_inner();
        let result = ok(collections::delete_vector_name(
            self.state(),
            PathParams((r.collection_name, r.vector_name)),
            started(),
        )
        .await)?;
        Ok(Response::new(q::PointsOperationResponse {
            result: Some(convert::update_result(&result)),
            time: secs(t),
            usage: None,
        }))
    }

    async fn search(
        &self,
        request: Request<q::SearchPoints>,
    ) -> Result<Response<q::SearchResponse>, Status> {
        self.authorize(&request, READ)?;
        let t = Instant::now();
        let r = request.into_inner();
        let name = r.collection_name.clone();
        let timeout = r.timeout;
        let body = from_json(convert::search_points(r)?)?;
        let points = ok(search::search(
            self.state(),
            PathParams(name),
            read_params(timeout),
            started(),
            JsonBody(body),
        )
        .await)?;
        Ok(Response::new(q::SearchResponse {
            result: scored(points),
            time: secs(t),
            usage: None,
        }))
    }

    async fn search_batch(
        &self,
        request: Request<q::SearchBatchPoints>,
    ) -> Result<Response<q::SearchBatchResponse>, Status> {
        self.authorize(&request, READ)?;
        let t = Instant::now();
        let r = request.into_inner();
        let searches = r
            .search_points
            .into_iter()
            .map(convert::search_points)
            .collect::<Result<Vec<_>, _>>()?;
        let body = from_json(json!({ "searches": searches }))?;
        let answers = ok(search::search_batch(
            self.state(),
            PathParams(r.collection_name),
            read_params(r.timeout),
            started(),
            JsonBody(body),
        )
        .await)?;
        Ok(Response::new(q::SearchBatchResponse {
            result: answers
                .into_iter()
                .map(|points| q::BatchResult {
                    result: scored(points),
                })
                .collect(),
            time: secs(t),
            usage: None,
        }))
    }

    async fn search_groups(
        &self,
        request: Request<q::SearchPointGroups>,
    ) -> Result<Response<q::SearchGroupsResponse>, Status> {
        self.authorize(&request, READ)?;
        let t = Instant::now();
        let r = request.into_inner();
        let name = r.collection_name.clone();
        let timeout = r.timeout;
        let body = from_json(convert::search_point_groups(r)?)?;
        let groups = ok(search::query_groups(
            self.state(),
            PathParams(name),
            read_params(timeout),
            started(),
            JsonBody(body),
        )
        .await)?;
        Ok(Response::new(q::SearchGroupsResponse {
            result: Some(convert::groups_out(groups)),
            time: secs(t),
            usage: None,
        }))
    }

    async fn scroll(
        &self,
        request: Request<q::ScrollPoints>,
    ) -> Result<Response<q::ScrollResponse>, Status> {
        self.authorize(&request, READ)?;
        let t = Instant::now();
        let r = request.into_inner();
        let mut body = Map::new();
        if r.offset.is_some() {
            body.insert("offset".into(), convert::point_id_json(r.offset)?);
        }
        put_opt(&mut body, "limit", r.limit.map(Value::from));
        if let Some(f) = r.filter {
            body.insert("filter".into(), convert::filter(f)?);
        }
        put_opt(
            &mut body,
            "with_payload",
            convert::with_payload(r.with_payload),
        );
        put_opt(
            &mut body,
            "with_vector",
            convert::with_vectors(r.with_vectors),
        );
        if let Some(o) = r.order_by {
            body.insert("order_by".into(), convert::order_by(o)?);
        }
        let body = convert::with_shard_key(body, r.shard_key_selector)?;
        let page = ok(points::scroll(
            self.state(),
            PathParams(r.collection_name),
            read_params(r.timeout),
            started(),
            JsonBody(from_json(body)?),
        )
        .await)?;
        Ok(Response::new(q::ScrollResponse {
            next_page_offset: page.next_page_offset.as_ref().map(convert::point_id_out),
            result: page
                .points
                .into_iter()
                .map(convert::retrieved_point_out)
                .collect(),
            time: secs(t),
            usage: None,
        }))
    }

    async fn recommend(
        &self,
        request: Request<q::RecommendPoints>,
    ) -> Result<Response<q::RecommendResponse>, Status> {
        self.authorize(&request, READ)?;
        let t = Instant::now();
        let r = request.into_inner();
        let name = r.collection_name.clone();
        let timeout = r.timeout;
        let body = from_json(convert::recommend_points(r)?)?;
        let points = ok(search::recommend(
            self.state(),
            PathParams(name),
            read_params(timeout),
            started(),
            JsonBody(body),
        )
        .await)?;
        Ok(Response::new(q::RecommendResponse {
            result: scored(points),
            time: secs(t),
            usage: None,
        }))
    }

    async fn recommend_batch(
        &self,
        request: Request<q::RecommendBatchPoints>,
    ) -> Result<Response<q::RecommendBatchResponse>, Status> {
        self.authorize(&request, READ)?;
        let t = Instant::now();
        let r = request.into_inner();
        let searches = r
            .recommend_points
            .into_iter()
            .map(convert::recommend_points)
            .collect::<Result<Vec<_>, _>>()?;
        let answers = ok(search::recommend_batch(
            self.state(),
            PathParams(r.collection_name),
            read_params(r.timeout),
            started(),
            JsonBody(from_json(json!({ "searches": searches }))?),
        )
        .await)?;
        Ok(Response::new(q::RecommendBatchResponse {
            result: answers
                .into_iter()
                .map(|points| q::BatchResult {
                    result: scored(points),
                })
                .collect(),
            time: secs(t),
            usage: None,
        }))
    }

    async fn recommend_groups(
        &self,
        request: Request<q::RecommendPointGroups>,
    ) -> Result<Response<q::RecommendGroupsResponse>, Status> {
        self.authorize(&request, READ)?;
        let t = Instant::now();
        let r = request.into_inner();
        let name = r.collection_name.clone();
        let timeout = r.timeout;
        let body = from_json(convert::recommend_point_groups(r)?)?;
        let groups = ok(search::query_groups(
            self.state(),
            PathParams(name),
            read_params(timeout),
            started(),
            JsonBody(body),
        )
        .await)?;
        Ok(Response::new(q::RecommendGroupsResponse {
            result: Some(convert::groups_out(groups)),
            time: secs(t),
            usage: None,
        }))
    }

    async fn discover(
        &self,
        request: Request<q::DiscoverPoints>,
    ) -> Result<Response<q::DiscoverResponse>, Status> {
        self.authorize(&request, READ)?;
        let t = Instant::now();
        let r = request.into_inner();
        let name = r.collection_name.clone();
        let timeout = r.timeout;
        let body = from_json(convert::discover_points(r)?)?;
        let answer = ok(search::query(
            self.state(),
            PathParams(name),
            read_params(timeout),
            started(),
            JsonBody(body),
        )
        .await)?;
        Ok(Response::new(q::DiscoverResponse {
            result: scored(answer.points),
            time: secs(t),
            usage: None,
        }))
    }

    async fn discover_batch(
        &self,
        request: Request<q::DiscoverBatchPoints>,
    ) -> Result<Response<q::DiscoverBatchResponse>, Status> {
        self.authorize(&request, READ)?;
        let t = Instant::now();
        let r = request.into_inner();
        let searches = r
            .discover_points
            .into_iter()
            .map(convert::discover_points)
            .collect::<Result<Vec<_>, _>>()?;
        let answers = ok(search::query_batch(
            self.state(),
            PathParams(r.collection_name),
            read_params(r.timeout),
            started(),
            JsonBody(from_json(json!({ "searches": searches }))?),
        )
        .await)?;
        Ok(Response::new(q::DiscoverBatchResponse {
            result: answers
                .into_iter()
                .map(|a| q::BatchResult {
                    result: scored(a.points),
                })
                .collect(),
            time: secs(t),
            usage: None,
        }))
    }

    async fn count(
        &self,
        request: Request<q::CountPoints>,
    ) -> Result<Response<q::CountResponse>, Status> {
        self.authorize(&request, READ)?;
        let t = Instant::now();
        let r = request.into_inner();
        let mut body = Map::new();
        if let Some(f) = r.filter {
            body.insert("filter".into(), convert::filter(f)?);
        }
        put_opt(&mut body, "exact", r.exact.map(Value::from));
        let body = convert::with_shard_key(body, r.shard_key_selector)?;
        let count = ok(points::count(
            self.state(),
            PathParams(r.collection_name),
            read_params(r.timeout),
            started(),
            JsonBody(from_json(body)?),
        )
        .await)?;
        Ok(Response::new(q::CountResponse {
            result: Some(q::CountResult {
                count: count.count as u64,
            }),
            time: secs(t),
            usage: None,
        }))
    }

    async fn update_batch(
        &self,
        request: Request<q::UpdateBatchPoints>,
    ) -> Result<Response<q::UpdateBatchResponse>, Status> {
        self.authorize(&request, WRITE)?;
        let t = Instant::now();
        let r = request.into_inner();
        if r.operations.len() > points::MAX_BATCH_OPERATIONS {
            return Err(Status::invalid_argument(format!(
                "at most {} operations per batch, got {}",
                points::MAX_BATCH_OPERATIONS,
                r.operations.len()
            )));
        }
        let operations = r
            .operations
            .into_iter()
            .map(convert::batch_operation)
            .collect::<Result<Vec<_>, _>>()?;
        let results = ok(points::batch_update(
            self.state(),
            PathParams(r.collection_name),
            QueryParams(WaitParam {
                wait: r.wait,
                timeout: r.timeout,
                ordering: convert::write_ordering(r.ordering)?,
            }),
            started(),
            JsonBody(from_json(json!({ "operations": operations }))?),
        )
        .await)?;
        Ok(Response::new(q::UpdateBatchResponse {
            result: results.iter().map(convert::update_result).collect(),
            time: secs(t),
            usage: None,
        }))
    }

    async fn query(
        &self,
        request: Request<q::QueryPoints>,
    ) -> Result<Response<q::QueryResponse>, Status> {
        self.authorize(&request, READ)?;
        let t = Instant::now();
        let r = request.into_inner();
        let name = r.collection_name.clone();
        let timeout = r.timeout;
        let body = from_json(convert::query_points(r)?)?;
        let answer = ok(search::query(
            self.state(),
            PathParams(name),
            read_params(timeout),
            started(),
            JsonBody(body),
        )
        .await)?;
        Ok(Response::new(q::QueryResponse {
            result: scored(answer.points),
            time: secs(t),
            usage: None,
        }))
    }

    async fn query_batch(
        &self,
        request: Request<q::QueryBatchPoints>,
    ) -> Result<Response<q::QueryBatchResponse>, Status> {
        self.authorize(&request, READ)?;
        let t = Instant::now();
        let r = request.into_inner();
        let searches = r
            .query_points
            .into_iter()
            .map(convert::query_points)
            .collect::<Result<Vec<_>, _>>()?;
        let answers = ok(search::query_batch(
            self.state(),
            PathParams(r.collection_name),
            read_params(r.timeout),
            started(),
            JsonBody(from_json(json!({ "searches": searches }))?),
        )
        .await)?;
        Ok(Response::new(q::QueryBatchResponse {
            result: answers
                .into_iter()
                .map(|a| q::BatchResult {
                    result: scored(a.points),
                })
                .collect(),
            time: secs(t),
            usage: None,
        }))
    }

    async fn query_groups(
        &self,
        request: Request<q::QueryPointGroups>,
    ) -> Result<Response<q::QueryGroupsResponse>, Status> {
        self.authorize(&request, READ)?;
        let t = Instant::now();
        let r = request.into_inner();
        let name = r.collection_name.clone();
        let timeout = r.timeout;
        let body = from_json(convert::query_point_groups(r)?)?;
        let groups = ok(search::query_groups(
            self.state(),
            PathParams(name),
            read_params(timeout),
            started(),
            JsonBody(body),
        )
        .await)?;
        Ok(Response::new(q::QueryGroupsResponse {
            result: Some(convert::groups_out(groups)),
            time: secs(t),
            usage: None,
        }))
    }

    async fn facet(
        &self,
        request: Request<q::FacetCounts>,
    ) -> Result<Response<q::FacetResponse>, Status> {
        self.authorize(&request, READ)?;
        let t = Instant::now();
        let r = request.into_inner();
        let mut body = Map::new();
        body.insert("key".into(), Value::String(r.key));
        if let Some(f) = r.filter {
            body.insert("filter".into(), convert::filter(f)?);
        }
        put_opt(&mut body, "limit", r.limit.map(Value::from));
        put_opt(&mut body, "exact", r.exact.map(Value::from));
        let body = convert::with_shard_key(body, r.shard_key_selector)?;
        let answer = ok(points::facet(
            self.state(),
            PathParams(r.collection_name),
            read_params(r.timeout),
            started(),
            JsonBody(from_json(body)?),
        )
        .await)?;
        Ok(Response::new(q::FacetResponse {
            hits: answer
                .hits
                .into_iter()
                .map(|h| q::FacetHit {
                    value: convert::facet_value_out(&h.value),
                    count: h.count as u64,
                })
                .collect(),
            time: secs(t),
            usage: None,
        }))
    }

    async fn search_matrix_pairs(
        &self,
        request: Request<q::SearchMatrixPoints>,
    ) -> Result<Response<q::SearchMatrixPairsResponse>, Status> {
        self.authorize(&request, READ)?;
        let t = Instant::now();
        let r = request.into_inner();
        let name = r.collection_name.clone();
        let timeout = r.timeout;
        let body = from_json(convert::search_matrix(r)?)?;
        let answer = ok(matrix::pairs(
            self.state(),
            PathParams(name),
            read_params(timeout),
            started(),
            JsonBody(body),
        )
        .await)?;
        Ok(Response::new(q::SearchMatrixPairsResponse {
            result: Some(q::SearchMatrixPairs {
                pairs: answer
                    .pairs
                    .into_iter()
                    .map(|p| q::SearchMatrixPair {
                        a: Some(convert::point_id_out(&p.a)),
                        b: Some(convert::point_id_out(&p.b)),
                        score: p.score,
                    })
                    .collect(),
            }),
            time: secs(t),
            usage: None,
        }))
    }

    async fn search_matrix_offsets(
        &self,
        request: Request<q::SearchMatrixPoints>,
    ) -> Result<Response<q::SearchMatrixOffsetsResponse>, Status> {
        self.authorize(&request, READ)?;
        let t = Instant::now();
        let r = request.into_inner();
        let name = r.collection_name.clone();
        let timeout = r.timeout;
        let body = from_json(convert::search_matrix(r)?)?;
        let answer = ok(matrix::offsets(
            self.state(),
            PathParams(name),
            read_params(timeout),
            started(),
            JsonBody(body),
        )
        .await)?;
        Ok(Response::new(q::SearchMatrixOffsetsResponse {
            result: Some(q::SearchMatrixOffsets {
                offsets_row: answer.offsets_row,
                offsets_col: answer.offsets_col,
                scores: answer.scores,
                ids: answer.ids.iter().map(convert::point_id_out).collect(),
            }),
            time: secs(t),
            usage: None,
        }))
    }
}

#[tonic::async_trait]
impl Snapshots for ClientApi {
    async fn create(
        &self,
        request: Request<q::CreateSnapshotRequest>,
    ) -> Result<Response<q::CreateSnapshotResponse>, Status> {
        self.authorize(&request, WRITE)?;
        let t = Instant::now();
        let r = request.into_inner();
        let d = snapshots::create_collection_snapshot(&self.state, &r.collection_name)
            .await
            .map_err(status_of)?;
        Ok(Response::new(q::CreateSnapshotResponse {
            snapshot_description: Some(snapshot_description(d)),
            time: secs(t),
        }))
    }

    async fn list(
        &self,
        request: Request<q::ListSnapshotsRequest>,
    ) -> Result<Response<q::ListSnapshotsResponse>, Status> {
        self.authorize(&request, READ)?;
        let t = Instant::now();
        let r = request.into_inner();
        let list = snapshots::list_collection_snapshots(&self.state, &r.collection_name)
            .await
            .map_err(status_of)?;
        Ok(Response::new(q::ListSnapshotsResponse {
            snapshot_descriptions: list.into_iter().map(snapshot_description).collect(),
            time: secs(t),
        }))
    }

    async fn delete(
        &self,
        request: Request<q::DeleteSnapshotRequest>,
    ) -> Result<Response<q::DeleteSnapshotResponse>, Status> {
        self.authorize(&request, WRITE)?;
        let t = Instant::now();
        let r = request.into_inner();
        snapshots::delete_collection_snapshot(&self.state, &r.collection_name, r.snapshot_name)
            .await
            .map_err(status_of)?;
        Ok(Response::new(q::DeleteSnapshotResponse { time: secs(t) }))
    }

    async fn create_full(
        &self,
        request: Request<q::CreateFullSnapshotRequest>,
    ) -> Result<Response<q::CreateSnapshotResponse>, Status> {
        self.authorize(&request, WRITE)?;
        let t = Instant::now();
        let d = snapshots::create_full_snapshot(&self.state)
            .await
            .map_err(status_of)?;
        Ok(Response::new(q::CreateSnapshotResponse {
            snapshot_description: Some(snapshot_description(d)),
            time: secs(t),
        }))
    }

    async fn list_full(
        &self,
        request: Request<q::ListFullSnapshotsRequest>,
    ) -> Result<Response<q::ListSnapshotsResponse>, Status> {
        self.authorize(&request, READ)?;
        let t = Instant::now();
        let list = snapshots::list_full_snapshots(&self.state)
            .await
            .map_err(status_of)?;
        Ok(Response::new(q::ListSnapshotsResponse {
            snapshot_descriptions: list.into_iter().map(snapshot_description).collect(),
            time: secs(t),
        }))
    }

    async fn delete_full(
        &self,
        request: Request<q::DeleteFullSnapshotRequest>,
    ) -> Result<Response<q::DeleteSnapshotResponse>, Status> {
        self.authorize(&request, WRITE)?;
        let t = Instant::now();
        let r = request.into_inner();
        snapshots::delete_full_snapshot(&self.state, r.snapshot_name)
            .await
            .map_err(status_of)?;
        Ok(Response::new(q::DeleteSnapshotResponse { time: secs(t) }))
    }
}

/// A stored snapshot as Qdrant's gRPC `SnapshotDescription` (creation time in UTC).
fn snapshot_description(
    d: crate::cluster::snapshots::SnapshotDescription,
) -> q::SnapshotDescription {
    let creation_time = d
        .creation_time
        .as_deref()
        .and_then(|t| chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%dT%H:%M:%S").ok())
        .map(|t| prost_types::Timestamp {
            seconds: t.and_utc().timestamp(),
            nanos: 0,
        });
    q::SnapshotDescription {
        name: d.name,
        creation_time,
        size: i64::try_from(d.size).unwrap_or(i64::MAX),
        checksum: d.checksum,
    }
}
