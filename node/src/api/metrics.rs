//! Prometheus metrics: request counts and latencies, plus collection gauges read at scrape time.

use std::time::Duration;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::cluster::toc::TableOfContent;

pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    collection_points: IntGaugeVec,
    collection_indexed: IntGaugeVec,
    collection_segments: IntGaugeVec,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new_custom(Some("shoal".into()), None).expect("valid prefix");
        let requests = IntCounterVec::new(
            Opts::new(
                "http_requests_total",
                "REST requests answered, by method, endpoint and status",
            ),
            &["method", "endpoint", "status"],
        )
        .expect("valid metric");
        let latency = HistogramVec::new(
            HistogramOpts::new("http_request_duration_seconds", "REST request latency").buckets(
                vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
                ],
            ),
            &["method", "endpoint"],
        )
        .expect("valid metric");
        let gauge = |name: &str, help: &str| {
            IntGaugeVec::new(Opts::new(name, help), &["collection"]).expect("valid metric")
        };
        let collection_points = gauge(
            "collection_points",
            "Points stored in the collection on this peer",
        );
        let collection_indexed = gauge(
            "collection_indexed_vectors",
            "Vectors covered by an HNSW graph",
        );
        let collection_segments = gauge(
            "collection_segments",
            "Segments of the collection on this peer",
        );
        for m in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(latency.clone()),
            Box::new(collection_points.clone()),
            Box::new(collection_indexed.clone()),
            Box::new(collection_segments.clone()),
        ] {
            registry.register(m).expect("metrics register once");
        }
        Metrics {
            registry,
            requests,
            latency,
            collection_points,
            collection_indexed,
            collection_segments,
        }
    }

    pub fn observe_request(&self, method: &str, endpoint: &str, status: u16, elapsed: Duration) {
        self.requests
            .with_label_values(&[method, endpoint, &status.to_string()])
            .inc();
        self.latency
            .with_label_values(&[method, endpoint])
            .observe(elapsed.as_secs_f64());
    }

    /// The text exposition of every metric, with collection gauges refreshed first.
    pub fn render(&self, toc: &TableOfContent) -> Result<String, String> {
        self.collection_points.reset();
        self.collection_indexed.reset();
        self.collection_segments.reset();
        for name in toc.names() {
            if let Ok(c) = toc.get(&name) {
                let stats = c.local_stats();
                self.collection_points
                    .with_label_values(&[&name])
                    .set(stats.points as i64);
                self.collection_indexed
                    .with_label_values(&[&name])
                    .set(stats.indexed_vectors as i64);
                self.collection_segments
                    .with_label_values(&[&name])
                    .set(stats.segments as i64);
            }
        }
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .map_err(|e| e.to_string())?;
        String::from_utf8(out).map_err(|e| e.to_string())
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
