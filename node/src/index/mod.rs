//! Indexes over a segment's points: HNSW graphs over dense and multi-vectors, inverted indexes
//! over sparse vectors, and payload filters. Imports
//! only `types`.

pub mod filter;
pub mod formula;
pub mod geo;
pub mod hnsw_index;
pub mod payload_path;
pub mod payload_selector;
pub mod sparse_index;
