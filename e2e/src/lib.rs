//! Shoal's multi-process test harness.
//!
//! This crate owns everything needed to drive real `shoal-node` processes from the outside:
//! spawning them on loopback ports, killing them with SIGKILL, talking to them over the
//! Qdrant-compatible REST API, generating reproducible datasets and computing exact answers
//! to judge search quality. It never links against the node crate: the node is a black box
//! reached only through its binary and its HTTP API, exactly as a user would reach it.
//!
//! - [`acknowledged_writes`]: the model of acknowledged writes (all three vector kinds) that
//!   transfer and resharding tests compare replicas with, and a background writer.
//! - [`node_process`]: spawn / wait ready / kill -9 / restart a node binary; never leaks a process.
//! - [`rest_client`]: a small typed, blocking REST client with a timeout on every request.
//! - [`distance`], [`dataset`], [`exact_knn`], [`stats`]: pure pieces (no I/O), unit-tested.
//!
//! Running:
//!
//! ```text
//! cargo build -p shoal-node                  # the binary under test (target/debug/shoal-node)
//! cargo test -p shoal-e2e                    # unit tests + kill -9 tests
//! SHOAL_NODE_BIN=/path/to/shoal-node cargo test -p shoal-e2e   # test another binary
//! SHOAL_E2E_SEED=123 cargo test -p shoal-e2e --test crash_recovery  # replay a crash schedule
//! SHOAL_E2E_KEEP=1 ...                       # keep every node's work dir (data + node.log)
//! cargo run --release -p shoal-e2e --bin shoal-bench -- --points 100000 --also-exact
//! ```

pub mod acknowledged_writes;
pub mod cluster;
pub mod dataset;
pub mod distance;
pub mod exact_knn;
pub mod kube_env;
pub mod node_process;
pub mod rest_client;
pub mod stats;

pub use dataset::{ClusteredGaussian, SparseVector, Vectors, ZipfSparse};
pub use distance::Distance;
pub use exact_knn::{ExactIndex, MultiExactIndex, SparseExactIndex};
pub use node_process::{
    ClusterRole, Flavour, NodeOptions, NodeProcess, free_ports, proc_status_kib,
    resolve_node_binary, workspace_root,
};
pub use rest_client::{
    ApiError, Client, CollectionInfo, CollectionParams, Method, PointId, PointStruct, RawResponse,
    Record, ScoredPoint, ScrollPage, SearchRequest, UpdateResult,
};
pub use stats::{LatencySummary, percentile, recall_at_k};
