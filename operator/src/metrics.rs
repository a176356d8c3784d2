//! The operator's Prometheus metrics and the small HTTP server that serves `/metrics` and
//! `/healthz` on the metrics port.
//!
//! Owns the metric names (a contract with dashboards and alerts) and nothing else.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    reconciles: IntCounterVec,
    failures: IntCounterVec,
    duration: HistogramVec,
    leader: IntGauge,
    is_leader: AtomicBool,
}

impl Metrics {
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let reconciles = IntCounterVec::new(
            Opts::new(
                "shoal_operator_reconciles_total",
                "Reconciles run, by resource kind",
            ),
            &["kind"],
        )?;
        let failures = IntCounterVec::new(
            Opts::new(
                "shoal_operator_reconcile_failures_total",
                "Reconciles that failed or reported Degraded, by kind and reason",
            ),
            &["kind", "reason"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "shoal_operator_reconcile_duration_seconds",
                "Duration of one reconcile, by kind",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &["kind"],
        )?;
        let leader = IntGauge::new(
            "shoal_operator_leader",
            "1 while this instance holds the leader lease and runs the controllers",
        )?;
        registry.register(Box::new(reconciles.clone()))?;
        registry.register(Box::new(failures.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(leader.clone()))?;
        Ok(Self {
            registry,
            reconciles,
            failures,
            duration,
            leader,
            is_leader: AtomicBool::new(false),
        })
    }

    pub fn reconciled(&self, kind: &str, took: Duration, ok: bool) {
        self.reconciles.with_label_values(&[kind]).inc();
        self.duration
            .with_label_values(&[kind])
            .observe(took.as_secs_f64());
        if !ok {
            self.failure(kind, "Error");
        }
    }

    pub fn failure(&self, kind: &str, reason: &str) {
        self.failures.with_label_values(&[kind, reason]).inc();
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
        self.is_leader.store(leader, Ordering::Relaxed);
    }

    pub fn is_leader(&self) -> bool {
        self.is_leader.load(Ordering::Relaxed)
    }

    pub fn encode(&self) -> String {
        let mut buf = Vec::new();
        // Encoding our own registry into a Vec cannot fail for valid metrics.
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        String::from_utf8_lossy(&buf).into_owned()
    }
}

async fn metrics(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        m.encode(),
    )
}

/// Alive: the process answers. A standby (not leader) is healthy too.
async fn healthz(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    let role = if m.is_leader() { "leader" } else { "standby" };
    (StatusCode::OK, format!("ok ({role})\n"))
}

pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz))
        .with_state(metrics)
}

async fn metrics_handler(state: State<Arc<Metrics>>) -> impl IntoResponse {
    metrics(state).await
}

/// Serves [`router`] on `addr` until the task is dropped.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving /metrics and /healthz");
    axum::serve(listener, router(metrics)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_exposed_by_name() {
        let m = Metrics::new().unwrap();
        m.reconciled("ShardPlacement", Duration::from_millis(20), true);
        m.reconciled("ShardPlacement", Duration::from_millis(20), false);
        m.failure("Resharding", "InvalidSpec");
        m.set_leader(true);
        let text = m.encode();
        assert!(text.contains("shoal_operator_reconciles_total{kind=\"ShardPlacement\"} 2"));
        assert!(text.contains(
            "shoal_operator_reconcile_failures_total{kind=\"Resharding\",reason=\"InvalidSpec\"} 1"
        ));
        assert!(text.contains(
            "shoal_operator_reconcile_duration_seconds_count{kind=\"ShardPlacement\"} 2"
        ));
        assert!(text.contains("shoal_operator_leader 1"));
    }
}
