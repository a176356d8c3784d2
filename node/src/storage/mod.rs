//! Files on disk: the write-ahead log and the flushed point store. The lowest layer: it imports
//! nothing from above.

pub mod json_blob;
pub mod mapped;
pub mod point_store;
pub mod wal;
