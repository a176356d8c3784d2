//! `shoal-operator`: runs the `ShardPlacement` and `Resharding` controllers (while holding the
//! leader Lease when leader election is on) and serves `/metrics` and `/healthz`.
//!
//! The Kubernetes client comes from the environment (`KUBECONFIG`, else the in-cluster
//! service account). Every setting is a flag and an environment variable (the Helm chart
//! sets the variables).

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use shoal_operator::controller::{self, Context};
use shoal_operator::crd::{Resharding, ShardPlacement};
use shoal_operator::leader::LeaderElector;
use shoal_operator::metrics::{self, Metrics};
use tokio::sync::{oneshot, watch};

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Kubernetes operator for Shoal (ShardPlacement and Resharding)"
)]
struct Args {
    /// Port of `/metrics` and `/healthz`.
    #[arg(long, env = "SHOAL_OPERATOR_METRICS_PORT", default_value_t = 8080)]
    metrics_port: u16,
    /// Address the metrics port binds to.
    #[arg(long, env = "SHOAL_OPERATOR_METRICS_HOST", default_value = "0.0.0.0")]
    metrics_host: IpAddr,
    /// The operator's own namespace (where its Lease lives).
    #[arg(long, env = "SHOAL_OPERATOR_NAMESPACE", default_value = "default")]
    namespace: String,
    /// Namespace whose resources are reconciled; empty: every namespace.
    #[arg(long, env = "SHOAL_OPERATOR_WATCH_NAMESPACE", default_value = "")]
    watch_namespace: String,
    /// Run controllers only while holding the Lease (for more than one replica).
    #[arg(long, env = "SHOAL_OPERATOR_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,
    /// Name of the leader-election Lease.
    #[arg(
        long,
        env = "SHOAL_OPERATOR_LEASE_NAME",
        default_value = "shoal-operator"
    )]
    lease_name: String,
    /// This instance's identity in the Lease and in Events (the pod name in Kubernetes).
    #[arg(long, env = "SHOAL_OPERATOR_POD_NAME")]
    pod_name: Option<String>,
    /// API key of the node cluster, sent as `api-key` metadata.
    #[arg(long, env = "SHOAL_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
}

fn identity(args: &Args) -> String {
    args.pod_name
        .clone()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| {
            let host = std::fs::read_to_string("/etc/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| "shoal-operator".to_owned());
            format!("{host}-{}", std::process::id())
        })
}

/// Resolves on SIGTERM or Ctrl-C.
async fn terminated() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match run(args).await {
        Ok(code) => code,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "shoal-operator failed");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let metrics = Arc::new(Metrics::new()?);
    let addr = SocketAddr::new(args.metrics_host, args.metrics_port);
    let listener_metrics = metrics.clone();
    let server = tokio::spawn(async move { metrics::serve(addr, listener_metrics).await });

    let client = kube::Client::try_default().await?;
    let identity = identity(&args);
    tracing::info!(%identity, watch_namespace = %args.watch_namespace, leader_election = args.leader_election, "starting");

    // `stop` flips to true on SIGTERM or when leadership is lost.
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let stop_on_signal = stop_tx.clone();
    tokio::spawn(async move {
        terminated().await;
        tracing::info!("termination requested");
        let _ = stop_on_signal.send(true);
    });

    let elector = args
        .leader_election
        .then(|| LeaderElector::new(client.clone(), &args.namespace, &args.lease_name, &identity));
    if let Some(elector) = &elector {
        loop {
            match elector.try_acquire().await {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "leader election"),
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                _ = stop_rx.wait_for(|s| *s) => return Ok(ExitCode::SUCCESS),
            }
        }
        tracing::info!(lease = %args.lease_name, "became leader");
    }
    metrics.set_leader(true);

    // Renew the Lease; losing it stops the controllers and the process (the Deployment
    // restarts it as a candidate).
    // Renewal goes on until the controllers have ended, graceful shutdown included: a
    // reconcile still in flight after a stop must not outlive the Lease.
    let (lost_tx, lost_rx) = oneshot::channel::<()>();
    let (controllers_done, mut done) = watch::channel(false);
    let renewer = elector.map(|elector| {
        let stop = stop_tx.clone();
        tokio::spawn(async move {
            let period = elector.lease_duration() / 3;
            let mut held_until = Instant::now() + elector.lease_duration();
            let mut lost_tx = Some(lost_tx);
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(period) => {}
                    _ = done.wait_for(|d| *d) => break,
                }
                let now = Instant::now();
                match elector.try_acquire().await {
                    Ok(true) => held_until = now + elector.lease_duration(),
                    Ok(false) => held_until = now,
                    Err(e) => tracing::warn!(error = %e, "renewing the Lease"),
                }
                if Instant::now() >= held_until {
                    tracing::error!("lost the leader Lease; stopping");
                    if let Some(tx) = lost_tx.take() {
                        let _ = tx.send(());
                    }
                    let _ = stop.send(true);
                    break;
                }
            }
            elector
        })
    });

    let watch_namespace = Some(args.watch_namespace.clone()).filter(|n| !n.is_empty());
    let ctx = Arc::new(Context::new(
        client.clone(),
        metrics.clone(),
        args.api_key.clone(),
        Some(identity.clone()),
    ));
    let placements =
        controller::run::<ShardPlacement>(ctx.clone(), watch_namespace.clone(), stop_rx.clone());
    let reshardings = controller::run::<Resharding>(ctx, watch_namespace, stop_rx.clone());
    tokio::select! {
        _ = futures::future::join(placements, reshardings) => {}
        result = server => {
            let _ = stop_tx.send(true);
            match result {
                Ok(Ok(())) => anyhow::bail!("the metrics server stopped"),
                Ok(Err(e)) => anyhow::bail!("the metrics server failed on {addr}: {e}"),
                Err(e) => anyhow::bail!("the metrics server panicked: {e}"),
            }
        }
    }
    metrics.set_leader(false);
    let _ = controllers_done.send(true);
    let elector = match renewer {
        Some(renewer) => renewer.await.ok(),
        None => None,
    };
    let lost = lost_rx_is_set(lost_rx);
    if let Some(elector) = elector
        && !lost
        && let Err(e) = elector.release().await
    {
        tracing::warn!(error = %e, "releasing the Lease");
    }
    tracing::info!("stopped");
    Ok(if lost {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn lost_rx_is_set(mut rx: oneshot::Receiver<()>) -> bool {
    rx.try_recv().is_ok()
}
