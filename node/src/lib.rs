//! Shoal node: a distributed vector database that speaks the Qdrant REST API.
//!
//! Layers, each importing only those below it:
//! `api` (REST, gRPC) → `cluster` (collections, routing) → `consensus` (Raft on cluster metadata)
//! and `shard` (WAL, segments, optimizer) → `index` (HNSW, payload filters) → `storage` (files on
//! disk). `types`, `collection_config` and `settings` are shared vocabulary.

pub mod api;
pub mod cluster;
pub mod collection_config;
pub mod consensus;
pub mod index;
pub mod kernels;
pub mod node;
pub mod settings;
pub mod shard;
pub mod storage;
pub mod types;
