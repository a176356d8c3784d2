//! Indexes over a segment's points: the HNSW graph over vectors and payload filters. Imports
//! only `types`.

pub mod filter;
pub mod hnsw_index;
pub mod payload_path;
pub mod payload_selector;
