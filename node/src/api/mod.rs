//! The node's interfaces: the Qdrant-compatible REST API and the internal gRPC service. The top
//! layer: it calls into `cluster` and nothing calls into it.

pub mod admin;
pub mod client_grpc;
pub mod grpc;
pub mod metrics;
pub mod rest;
