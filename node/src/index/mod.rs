//! Indexes over a segment's points: HNSW graphs over dense and multi-vectors, inverted indexes
//! over sparse vectors, payload filters and the payload indexes that narrow them. Imports only
//! `types`, and (in `capability` and `payload_index`) the declared payload index entries of
//! `collection_config`.

pub mod capability;
pub mod filter;
pub mod formula;
pub mod geo;
pub mod hnsw_index;
pub mod payload_index;
pub mod payload_path;
pub mod payload_selector;
pub mod quantization;
pub mod sparse_index;
pub mod text;
