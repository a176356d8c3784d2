//! Starting and stopping a node: the data directory lock, the collections, the REST and gRPC
//! servers, and a clean shutdown that flushes every shard.

use std::fs::File;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

use crate::api::metrics::Metrics;
use crate::api::rest::auth::ApiKeys;
use crate::api::rest::strict_mode::StrictModeState;
use crate::api::rest::{self, AppState};
use crate::api::{client_grpc, grpc};
use crate::cluster::collection::Environment;
use crate::cluster::metadata::{LocalMetadata, Metadata};
use crate::cluster::toc::{TableOfContent, legacy_state};
use crate::consensus::PeerId;
use crate::consensus::raft_node::{ConsensusNode, ConsensusSettings, load_or_create_peer_id};
use crate::settings::{Settings, WalSync};
use crate::shard::local_shard::IndexBuilder;
use crate::storage::wal::SyncMode;

/// Holds an exclusive lock on the data directory for the life of the process, so that two
/// nodes can never write the same files.
fn lock_data_dir(settings: &Settings) -> anyhow::Result<File> {
    let dir = &settings.storage.data_dir;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the data directory {}", dir.display()))?;
    let path = dir.join(".lock");
    let file = File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
    file.try_lock().map_err(|_| {
        anyhow::anyhow!(
            "the data directory {} is in use by another shoal-node process; give each node its own --data-dir",
            dir.display()
        )
    })?;
    Ok(file)
}

fn index_threads(settings: &Settings) -> usize {
    match settings.storage.optimizer_threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

/// Runs the node until SIGINT or SIGTERM.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let _lock = lock_data_dir(&settings)?;
    let sync = match settings.storage.wal_sync {
        WalSync::Os => SyncMode::Os,
        WalSync::Fsync => SyncMode::Fsync,
    };
    let builder = Arc::new(IndexBuilder::new(index_threads(&settings)));
    let host = &settings.service.host;
    let http_addr: SocketAddr = format!("{host}:{}", settings.service.http_port)
        .parse()
        .with_context(|| format!("`{host}` is not an IP address to bind to"))?;
    let p2p_addr: SocketAddr = format!("{host}:{}", settings.cluster.p2p_port).parse()?;
    let http_listener = TcpListener::bind(http_addr)
        .await
        .with_context(|| format!("cannot listen on {http_addr} (REST)"))?;
    let p2p_listener = TcpListener::bind(p2p_addr)
        .await
        .with_context(|| format!("cannot listen on {p2p_addr} (p2p gRPC)"))?;
    let client_grpc_listener = match settings.service.grpc_port {
        0 => None,
        port => {
            let addr: SocketAddr = format!("{host}:{port}").parse()?;
            Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on {addr} (client gRPC)"))?,
            )
        }
    };

    if !(1..=86_400).contains(&settings.service.http_header_read_timeout_sec) {
        anyhow::bail!(
            "service.http_header_read_timeout_sec is {}: give 1 to 86400 seconds (0 would close every connection before its first request)",
            settings.service.http_header_read_timeout_sec
        );
    }
    // Cluster mode is on when this peer knows its own p2p URI, as in Qdrant.
    let data_dir = &settings.storage.data_dir;
    let peer_name = settings.cluster.peer_name.clone().unwrap_or_else(host_name);
    let metadata = match (&settings.cluster.uri, &settings.cluster.bootstrap) {
        (Some(uri), bootstrap) => {
            if LocalMetadata::has_collections(data_dir) {
                anyhow::bail!(
                    "{} holds the collections of a node that ran alone; it cannot become a cluster peer (start a new peer with its own --data-dir and move the data with a client)",
                    data_dir.display()
                );
            }
            Metadata::Raft(
                ConsensusNode::open(ConsensusSettings {
                    dir: data_dir.join("cluster"),
                    uri: uri.clone(),
                    name: peer_name,
                    bootstrap: bootstrap.clone(),
                    api_key: settings.service.api_key.clone(),
                })
                .await
                .context("cannot start consensus")?,
            )
        }
        (None, Some(_)) => {
            anyhow::bail!("--bootstrap needs --uri: tell the cluster how to reach this peer")
        }
        (None, None) => {
            if data_dir.join("cluster").exists() {
                anyhow::bail!(
                    "{} belongs to a cluster peer; start it with --uri (and the same --data-dir)",
                    data_dir.display()
                );
            }
            let dir = data_dir.clone();
            Metadata::Local(
                tokio::task::spawn_blocking(move || {
                    let peer = PeerId(load_or_create_peer_id(&dir)?);
                    LocalMetadata::open(&dir, peer, || legacy_state(&dir, peer, &peer_name))
                })
                .await??,
            )
        }
    };
    let metadata = Arc::new(metadata);
    let consensus = metadata.consensus().cloned();
    let mut env = Environment::new(
        Arc::clone(&metadata),
        settings.service.api_key.clone(),
        builder,
        sync,
    );
    env.max_transfers_per_peer = settings.cluster.max_transfers_per_peer;
    env.transfer_batch_points = settings.cluster.transfer_batch_points;
    let env = Arc::new(env);
    let toc = {
        let (dir, env) = (data_dir.clone(), Arc::clone(&env));
        Arc::new(
            tokio::task::spawn_blocking(move || TableOfContent::open(&dir, env))
                .await?
                .context("cannot load collections")?,
        )
    };
    TableOfContent::spawn_reconciler(Arc::clone(&toc), metadata.applied());

    let state = AppState {
        toc: Arc::clone(&toc),
        metrics: Arc::new(Metrics::new()),
        metadata: Arc::clone(&metadata),
        consensus: consensus.clone(),
        ready: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        strict_mode: Arc::new(StrictModeState::new(data_dir.clone())),
    };
    let ready = Arc::clone(&state.ready);
    let keys = ApiKeys {
        read_write: settings.service.api_key.clone(),
        read_only: settings.service.read_only_api_key.clone(),
    };
    let client_routes = client_grpc::routes(
        state.clone(),
        keys.clone(),
        settings
            .service
            .max_request_size_mb
            .saturating_mul(1024 * 1024),
    );
    let app = rest::router(state, keys, settings.service.max_request_size_mb);

    // One sender, a receiver per server: both stop on the same signal.
    let (shutdown, _) = tokio::sync::broadcast::channel::<()>(1);
    let http = {
        let mut stop = shutdown.subscribe();
        let header_read_timeout =
            std::time::Duration::from_secs(settings.service.http_header_read_timeout_sec);
        tokio::spawn(rest::server::serve(
            http_listener,
            app,
            header_read_timeout,
            async move {
                let _ = stop.recv().await;
            },
        ))
    };
    let grpc = {
        let mut stop = shutdown.subscribe();
        let routes = grpc::router(
            Arc::clone(&toc),
            consensus.clone(),
            settings.service.api_key.clone(),
        );
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_routes(routes)
                .serve_with_incoming_shutdown(
                    TcpIncoming::from(p2p_listener).with_nodelay(Some(true)),
                    async move {
                        let _ = stop.recv().await;
                    },
                )
                .await
        })
    };
    let client_grpc = client_grpc_listener.map(|listener| {
        let mut stop = shutdown.subscribe();
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_routes(client_routes)
                .serve_with_incoming_shutdown(
                    TcpIncoming::from(listener).with_nodelay(Some(true)),
                    async move {
                        let _ = stop.recv().await;
                    },
                )
                .await
        })
    });
    if let Some(node) = &consensus {
        // The p2p service is up, so peers can reach this one while it joins.
        node.bootstrap()
            .await
            .context("cannot found or join the cluster")?;
    }
    // Serve once the collections follow the applied metadata (after a restart, once the
    // replayed log reaches what this peer had acted on); a cluster that cannot be reached
    // does not keep the peer from serving what it has.
    let applied = metadata.view().applied_index().unwrap_or(0);
    if !toc
        .wait_synced(applied.max(toc.reconciled_index()), READY_PATIENCE)
        .await
    {
        tracing::warn!("collections not reconciled with the cluster state yet; serving anyway");
    }
    ready.store(true, std::sync::atomic::Ordering::SeqCst);
    tracing::info!(%http_addr, %p2p_addr, data_dir = %settings.storage.data_dir.display(), "shoal-node is ready");

    wait_for_signal().await;
    tracing::info!("shutting down: finishing requests, then flushing shards");
    let _ = shutdown.send(());
    let _ = http.await;
    if let Some(client_grpc) = client_grpc {
        let _ = client_grpc.await;
    }
    if let Some(node) = &consensus {
        node.shutdown().await;
    }
    let _ = grpc.await;
    let toc_for_flush = Arc::clone(&toc);
    tokio::task::spawn_blocking(move || toc_for_flush.flush_all()).await?;
    tracing::info!("stopped");
    Ok(())
}

/// How long start-up waits for the collections to follow the applied metadata. Liveness: as a
/// coordinator, a peer serving before it reconciled routes by an older layout, which the
/// replicas' layout fence refuses (it routes again once it caught up, or answers an error).
const READY_PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);

/// The host name (a StatefulSet pod's name), the default peer name.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "shoal".to_string())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
