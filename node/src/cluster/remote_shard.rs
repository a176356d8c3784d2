//! A shard replica on another peer, reached through its p2p `ShardService`. Requests carry the
//! same serialisable shard requests that run locally, so a remote replica answers exactly as a
//! local one would.

use std::time::Duration;

use shoal_proto::v1::ShardCall;
use shoal_proto::v1::shard_service_client::ShardServiceClient;
use tonic::transport::{Channel, Endpoint};

use crate::cluster::CollectionError;
use crate::cluster::shard_requests::{ShardCallKind, ShardRequest};

/// Metadata that marks a `NotFound` status as "a point the request named does not exist", so
/// that the caller answers 404 instead of treating the replica as unreachable.
pub const POINT_NOT_FOUND_MARK: &str = "shoal-point-not-found";
/// Metadata key on a `FailedPrecondition` status meaning [`CollectionError::StaleLayout`]
/// (without it, the status means [`CollectionError::Moved`]).
pub const STALE_LAYOUT_MARK: &str = "shoal-stale-layout";
/// Metadata key on a `FailedPrecondition` status meaning [`CollectionError::StaleTransfer`].
pub const STALE_TRANSFER_MARK: &str = "shoal-stale-transfer";

/// How long one shard request to a peer may take. Liveness: a request that times out is an
/// error (an update is not acknowledged, and a replica that failed one while others applied it
/// is marked Dead); the peer applies an update it received to the end, forwarding included, even
/// when this side gave up (see `Collection::update_local`).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// The largest `ShardService` message (a request or an answer) between peers: room for the
/// largest update a client may send (its JSON, per shard) and the largest answer a read
/// returns. tonic's default of 4 MiB would refuse, for example, an upsert of 1,000
/// 768-dimensional points (about 7 MB of JSON) sent on to a peer's replica.
pub const P2P_MESSAGE_BYTES: usize = 256 << 20;

#[derive(Clone)]
pub struct RemoteShard {
    uri: String,
    collection: String,
    shard_id: u32,
    api_key: Option<String>,
    client: ShardServiceClient<Channel>,
}

impl RemoteShard {
    /// The shard this handle addresses.
    pub fn shard_id(&self) -> u32 {
        self.shard_id
    }

    /// A lazily connecting channel to the peer whose p2p URI is `uri`; share it between
    /// handles.
    pub fn channel(uri: &str) -> Result<Channel, CollectionError> {
        Ok(Endpoint::from_shared(uri.to_string())
            .map_err(|e| {
                CollectionError::BadInput(format!("`{uri}` is not a valid peer URI: {e}"))
            })?
            // Liveness: an unreachable peer is an error, as above.
            .connect_timeout(Duration::from_secs(2))
            .timeout(REQUEST_TIMEOUT)
            .tcp_nodelay(true)
            .connect_lazy())
    }

    /// A handle on `collection`'s shard `shard_id` at the peer whose p2p URI is `uri`.
    pub fn new(
        uri: &str,
        collection: &str,
        shard_id: u32,
        api_key: Option<String>,
    ) -> Result<RemoteShard, CollectionError> {
        Ok(Self::with_channel(
            Self::channel(uri)?,
            uri,
            collection,
            shard_id,
            api_key,
        ))
    }

    /// A handle over an existing channel to the peer at `uri`.
    pub fn with_channel(
        channel: Channel,
        uri: &str,
        collection: &str,
        shard_id: u32,
        api_key: Option<String>,
    ) -> RemoteShard {
        RemoteShard {
            uri: uri.to_string(),
            collection: collection.to_string(),
            shard_id,
            api_key,
            client: ShardServiceClient::new(channel)
                .max_decoding_message_size(P2P_MESSAGE_BYTES)
                .max_encoding_message_size(P2P_MESSAGE_BYTES),
        }
    }

    /// Runs `request` on the peer's replica.
    pub async fn request<R: ShardRequest>(
        &self,
        request: &R,
    ) -> Result<R::Answer, CollectionError> {
        let body_json = request.encode_body().map_err(CollectionError::storage)?;
        let mut call = tonic::Request::new(ShardCall {
            collection: self.collection.clone(),
            shard_id: self.shard_id,
            body_json,
        });
        if let Some(key) = &self.api_key
            && let Ok(value) = key.parse()
        {
            call.metadata_mut().insert("api-key", value);
        }
        let mut client = self.client.clone();
        let answer = match R::CALL {
            ShardCallKind::Update => client.update(call).await,
            ShardCallKind::Search => client.search(call).await,
            ShardCallKind::Scroll => client.scroll(call).await,
            ShardCallKind::Count => client.count(call).await,
            ShardCallKind::Retrieve => client.retrieve(call).await,
            ShardCallKind::SparseStats => client.sparse_stats(call).await,
            ShardCallKind::OrderBy => client.order_by(call).await,
            ShardCallKind::Facet => client.facet(call).await,
            ShardCallKind::Recovery => client.recovery(call).await,
        };
        let answer = answer.map_err(|status| match status.code() {
            tonic::Code::NotFound if status.metadata().contains_key(POINT_NOT_FOUND_MARK) => {
                CollectionError::PointNotFound(
                    status
                        .message()
                        .trim_start_matches("No point with id ")
                        .trim_end_matches(" found")
                        .to_string(),
                )
            }
            tonic::Code::InvalidArgument => CollectionError::BadInput(status.message().to_string()),
            tonic::Code::FailedPrecondition
                if status.metadata().contains_key(STALE_LAYOUT_MARK) =>
            {
                CollectionError::StaleLayout(status.message().to_string())
            }
            tonic::Code::FailedPrecondition
                if status.metadata().contains_key(STALE_TRANSFER_MARK) =>
            {
                CollectionError::StaleTransfer(status.message().to_string())
            }
            tonic::Code::FailedPrecondition => CollectionError::Moved(status.message().to_string()),
            tonic::Code::Aborted => CollectionError::ForwardFailed(status.message().to_string()),
            _ => CollectionError::Unavailable(format!(
                "shard {} of `{}` at {}: {}",
                self.shard_id,
                self.collection,
                self.uri,
                status.message()
            )),
        })?;
        serde_json::from_slice(&answer.into_inner().body_json).map_err(CollectionError::storage)
    }
}
