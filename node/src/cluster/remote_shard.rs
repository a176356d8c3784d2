//! A shard replica on another peer, reached through its p2p `ShardService`. Requests carry the
//! same serialisable shard requests that run locally, so a remote replica answers exactly as a
//! local one would.

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use shoal_proto::v1::ShardCall;
use shoal_proto::v1::shard_service_client::ShardServiceClient;
use tonic::transport::{Channel, Endpoint};

use crate::cluster::CollectionError;
use crate::cluster::shard_requests::{ShardCount, ShardRetrieve, ShardScroll, ShardSearch};
use crate::shard::local_shard::{Record, ScoredRecord};
use crate::shard::operations::UpdateRequest;

/// How long one shard request to a peer may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone)]
pub struct RemoteShard {
    uri: String,
    collection: String,
    shard_id: u32,
    api_key: Option<String>,
    client: ShardServiceClient<Channel>,
}

enum Call {
    Update,
    Search,
    Scroll,
    Count,
    Retrieve,
}

impl RemoteShard {
    /// A handle on `collection`'s shard `shard_id` at the peer whose p2p URI is `uri`. Connects
    /// lazily.
    pub fn new(
        uri: &str,
        collection: &str,
        shard_id: u32,
        api_key: Option<String>,
    ) -> Result<RemoteShard, CollectionError> {
        let endpoint = Endpoint::from_shared(uri.to_string())
            .map_err(|e| {
                CollectionError::BadInput(format!("`{uri}` is not a valid peer URI: {e}"))
            })?
            .connect_timeout(Duration::from_secs(2))
            .timeout(REQUEST_TIMEOUT)
            .tcp_nodelay(true);
        Ok(RemoteShard {
            uri: uri.to_string(),
            collection: collection.to_string(),
            shard_id,
            api_key,
            client: ShardServiceClient::new(endpoint.connect_lazy()),
        })
    }

    async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        call: Call,
        body: &Req,
    ) -> Result<Resp, CollectionError> {
        let body_json = serde_json::to_vec(body).map_err(CollectionError::storage)?;
        let mut request = tonic::Request::new(ShardCall {
            collection: self.collection.clone(),
            shard_id: self.shard_id,
            body_json,
        });
        if let Some(key) = &self.api_key
            && let Ok(value) = key.parse()
        {
            request.metadata_mut().insert("api-key", value);
        }
        let mut client = self.client.clone();
        let answer = match call {
            Call::Update => client.update(request).await,
            Call::Search => client.search(request).await,
            Call::Scroll => client.scroll(request).await,
            Call::Count => client.count(request).await,
            Call::Retrieve => client.retrieve(request).await,
        };
        let answer = answer.map_err(|status| match status.code() {
            tonic::Code::NotFound => CollectionError::NotFound(self.collection.clone()),
            tonic::Code::InvalidArgument => CollectionError::BadInput(status.message().to_string()),
            _ => CollectionError::Storage(format!(
                "shard {} of `{}` at {}: {}",
                self.shard_id,
                self.collection,
                self.uri,
                status.message()
            )),
        })?;
        serde_json::from_slice(&answer.into_inner().body_json).map_err(CollectionError::storage)
    }

    pub async fn update(&self, request: &UpdateRequest) -> Result<u64, CollectionError> {
        self.call(Call::Update, request).await
    }

    pub async fn search(
        &self,
        request: &ShardSearch,
    ) -> Result<Vec<ScoredRecord>, CollectionError> {
        self.call(Call::Search, request).await
    }

    pub async fn scroll(&self, request: &ShardScroll) -> Result<Vec<Record>, CollectionError> {
        self.call(Call::Scroll, request).await
    }

    pub async fn count(&self, request: &ShardCount) -> Result<usize, CollectionError> {
        self.call(Call::Count, request).await
    }

    pub async fn retrieve(&self, request: &ShardRetrieve) -> Result<Vec<Record>, CollectionError> {
        self.call(Call::Retrieve, request).await
    }
}
