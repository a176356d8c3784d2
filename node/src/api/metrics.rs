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

    /// The REST requests answered so far, per method, endpoint and status, with the time
    /// spent per method and endpoint (the latency histogram has no status label). For
    /// `GET /telemetry`.
    pub fn request_counts(&self) -> Vec<RequestCount> {
        use prometheus::core::Collector;
        let label = |m: &prometheus::proto::Metric, name: &str| {
            m.get_label()
                .iter()
                .find(|l| l.name() == name)
                .map(|l| l.value().to_string())
                .unwrap_or_default()
        };
        let mut time: std::collections::HashMap<(String, String), (u64, f64)> =
            std::collections::HashMap::new();
        for family in self.latency.collect() {
            for m in family.get_metric() {
                let h = m.get_histogram();
                time.insert(
                    (label(m, "method"), label(m, "endpoint")),
                    (h.get_sample_count(), h.get_sample_sum()),
                );
            }
        }
        let mut out = Vec::new();
        for family in self.requests.collect() {
            for m in family.get_metric() {
                let (method, endpoint) = (label(m, "method"), label(m, "endpoint"));
                let timing = time.get(&(method.clone(), endpoint.clone())).copied();
                out.push(RequestCount {
                    status: label(m, "status").parse().unwrap_or(0),
                    count: m.get_counter().get_value() as u64,
                    endpoint_count: timing.map_or(0, |t| t.0),
                    endpoint_seconds: timing.map_or(0.0, |t| t.1),
                    method,
                    endpoint,
                });
            }
        }
        out
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

/// How many REST requests got one status from one endpoint (see
/// [`Metrics::request_counts`]).
#[derive(Debug, Clone, PartialEq)]
pub struct RequestCount {
    pub method: String,
    /// The matched route, e.g. `/collections/{collection_name}/points/search`.
    pub endpoint: String,
    pub status: u16,
    pub count: u64,
    /// Requests to the endpoint with any status, and the seconds they took in total.
    pub endpoint_count: u64,
    pub endpoint_seconds: f64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
