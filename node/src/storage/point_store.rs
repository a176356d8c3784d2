//! The commit point of a shard's flushed state: a `redb` database holding, in one atomic
//! transaction per flush, the sequence number of the last WAL record the state includes, the
//! list of sealed segment directories that make up the shard, their deleted offsets, the
//! payloads changed since a sealed segment was written (with their versions), and every point
//! not yet in a sealed segment (version, vectors, payload).
//!
//! Sealed segment directories are immutable and written before a flush lists them; a directory
//! the store does not list is not part of the shard (an interrupted optimization) and is
//! removed when the shard opens.
//!
//! Why redb: it is a pure-Rust, crash-safe (copy-on-write B-tree, atomic commits) embedded store
//! with no background threads, so a flush is one transaction that either fully happens or not at
//! all, and `kill -9` at any moment leaves the previous flush intact.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::types::{NamedVectors, Payload, PointId};

/// Points of the single-vector data model (one unnamed dense vector each), written by older
/// Shoal versions: read on load, emptied as those points are written again.
const LEGACY_POINTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("points");
/// Points with named vectors ([`StoredPoint`]).
const POINTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("points_v2");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// The sealed segments that make up the shard: segment id -> the columns of its directory that
/// no longer count (postcard list of vector names).
const SEGMENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("segments");
/// Deleted offsets of each sealed segment, a bitmap (bit `o % 8` of byte `o / 8`).
const DELETED: TableDefinition<u64, &[u8]> = TableDefinition::new("deleted");
/// Payloads of points in sealed segments changed after the segment was written.
const OVERRIDES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("payload_overrides");
const FLUSHED_SEQ: &str = "flushed_seq";
/// The replica's clock state (opaque here; see `shard::clock`), as of the flushed sequence
/// number.
const CLOCKS: TableDefinition<&str, &[u8]> = TableDefinition::new("clocks");
const CLOCKS_KEY: &str = "replica";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("point store: {0}")]
    Redb(String),
    #[error("point store holds a record that does not decode: {0}")]
    Corrupt(String),
}

fn redb_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Redb(e.to_string())
}

/// A point as it is stored on disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredPoint {
    pub version: u64,
    pub vectors: NamedVectors,
    #[serde(with = "crate::storage::json_blob")]
    pub payload: Payload,
}

/// The payload and version of a point in a sealed segment, newer than the segment's copy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PayloadOverride {
    pub version: u64,
    #[serde(with = "crate::storage::json_blob")]
    pub payload: Payload,
}

/// Everything one flush writes, atomically.
#[derive(Debug, Default)]
pub struct FlushBatch {
    /// The last WAL record the state includes.
    pub seq: u64,
    /// Points not in a sealed segment, whole; `None` removes the entry.
    pub tail: Vec<(PointId, Option<StoredPoint>)>,
    /// Newer payloads of points in sealed segments; `None` removes the entry.
    pub overrides: Vec<(PointId, Option<PayloadOverride>)>,
    /// The sealed segments that make up the shard, each with its voided columns, when that
    /// changed.
    pub segments: Option<Vec<(u64, Vec<String>)>>,
    /// The deleted-offset bitmaps of sealed segments whose deletions changed.
    pub deleted: Vec<(u64, Vec<u8>)>,
    /// The replica's clock state as of `seq`, when it is written.
    pub clocks: Option<Vec<u8>>,
}

/// The flushed state of a shard, as [`PointStore::load`] reads it.
#[derive(Debug, Default)]
pub struct Flushed {
    pub seq: u64,
    /// Sealed segments and their voided columns.
    pub segments: Vec<(u64, Vec<String>)>,
    pub deleted: std::collections::BTreeMap<u64, Vec<u8>>,
    pub overrides: Vec<(PointId, PayloadOverride)>,
    /// Points not in a sealed segment, in id order.
    pub tail: Vec<(PointId, StoredPoint)>,
    /// The replica's clock state as of `seq` (`None` for a store written before clocks).
    pub clocks: Option<Vec<u8>>,
}

/// A point as the single-vector data model stored it.
#[derive(Deserialize)]
struct LegacyStoredPoint {
    version: u64,
    vector: Vec<f32>,
    #[serde(with = "crate::storage::json_blob")]
    payload: Payload,
}

/// The flushed state of a shard.
pub struct PointStore {
    db: Database,
}

/// Encodes an id so that byte order equals id order (integers before UUIDs).
pub fn encode_id(id: &PointId) -> Vec<u8> {
    match id {
        PointId::Num(n) => {
            let mut out = Vec::with_capacity(9);
            out.push(0);
            out.extend_from_slice(&n.to_be_bytes());
            out
        }
        PointId::Uuid(u) => {
            let mut out = Vec::with_capacity(17);
            out.push(1);
            out.extend_from_slice(u.as_bytes());
            out
        }
    }
}

pub fn decode_id(bytes: &[u8]) -> Option<PointId> {
    match bytes.split_first()? {
        (0, rest) => Some(PointId::Num(u64::from_be_bytes(rest.try_into().ok()?))),
        (1, rest) => Some(PointId::Uuid(uuid::Uuid::from_bytes(rest.try_into().ok()?))),
        _ => None,
    }
}

/// The memory redb may hold for this store's pages (its read cache and write buffer), in
/// bytes. redb's default is 1 GiB per database, which a node with many shards would hold in
/// anonymous memory: the store is read once at open and written once per flush, so a small
/// cache costs nothing on the search path.
const CACHE_BYTES: usize = 16 << 20;

impl PointStore {
    pub fn open(path: &Path) -> Result<PointStore, StoreError> {
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .map_err(redb_err)?;
        // Make sure the tables exist, so that readers never see "table does not exist".
        let txn = db.begin_write().map_err(redb_err)?;
        txn.open_table(POINTS).map_err(redb_err)?;
        txn.open_table(LEGACY_POINTS).map_err(redb_err)?;
        txn.open_table(META).map_err(redb_err)?;
        txn.open_table(SEGMENTS).map_err(redb_err)?;
        txn.open_table(DELETED).map_err(redb_err)?;
        txn.open_table(OVERRIDES).map_err(redb_err)?;
        txn.open_table(CLOCKS).map_err(redb_err)?;
        txn.commit().map_err(redb_err)?;
        Ok(PointStore { db })
    }

    /// The flushed state: sealed segments, their deletions, payload overrides, and the points
    /// not in a sealed segment.
    pub fn load(&self) -> Result<Flushed, StoreError> {
        let txn = self.db.begin_read().map_err(redb_err)?;
        let meta = txn.open_table(META).map_err(redb_err)?;
        let flushed = meta
            .get(FLUSHED_SEQ)
            .map_err(redb_err)?
            .map_or(0, |v| v.value());
        let mut points = std::collections::BTreeMap::new();
        let legacy = txn.open_table(LEGACY_POINTS).map_err(redb_err)?;
        for entry in legacy.iter().map_err(redb_err)? {
            let (key, value) = entry.map_err(redb_err)?;
            let id = decode_id(key.value())
                .ok_or_else(|| StoreError::Corrupt(format!("bad key {:?}", key.value())))?;
            let old: LegacyStoredPoint = postcard::from_bytes(value.value())
                .map_err(|e| StoreError::Corrupt(format!("point {id}: {e}")))?;
            let vectors = NamedVectors::from([(
                crate::types::DEFAULT_VECTOR.to_string(),
                crate::types::VectorData::Dense(old.vector),
            )]);
            let point = StoredPoint {
                version: old.version,
                vectors,
                payload: old.payload,
            };
            points.insert(id, point);
        }
        let table = txn.open_table(POINTS).map_err(redb_err)?;
        for entry in table.iter().map_err(redb_err)? {
            let (key, value) = entry.map_err(redb_err)?;
            let id = decode_id(key.value())
                .ok_or_else(|| StoreError::Corrupt(format!("bad key {:?}", key.value())))?;
            let point: StoredPoint = postcard::from_bytes(value.value())
                .map_err(|e| StoreError::Corrupt(format!("point {id}: {e}")))?;
            points.insert(id, point);
        }
        let table = txn.open_table(SEGMENTS).map_err(redb_err)?;
        let mut segments = Vec::new();
        for entry in table.iter().map_err(redb_err)? {
            let (key, value) = entry.map_err(redb_err)?;
            let voided: Vec<String> = postcard::from_bytes(value.value())
                .map_err(|e| StoreError::Corrupt(format!("segment {}: {e}", key.value())))?;
            segments.push((key.value(), voided));
        }
        let deleted = txn.open_table(DELETED).map_err(redb_err)?;
        let deleted = deleted
            .iter()
            .map_err(redb_err)?
            .map(|e| {
                e.map(|(k, v)| (k.value(), v.value().to_vec()))
                    .map_err(redb_err)
            })
            .collect::<Result<_, _>>()?;
        let table = txn.open_table(OVERRIDES).map_err(redb_err)?;
        let mut overrides = Vec::new();
        for entry in table.iter().map_err(redb_err)? {
            let (key, value) = entry.map_err(redb_err)?;
            let id = decode_id(key.value())
                .ok_or_else(|| StoreError::Corrupt(format!("bad key {:?}", key.value())))?;
            let o: PayloadOverride = postcard::from_bytes(value.value())
                .map_err(|e| StoreError::Corrupt(format!("payload of point {id}: {e}")))?;
            overrides.push((id, o));
        }
        let table = txn.open_table(CLOCKS).map_err(redb_err)?;
        let clocks = table
            .get(CLOCKS_KEY)
            .map_err(redb_err)?
            .map(|v| v.value().to_vec());
        Ok(Flushed {
            seq: flushed,
            segments,
            deleted,
            overrides,
            tail: points.into_iter().collect(),
            clocks,
        })
    }

    /// Atomically writes `changes` (a `None` deletes the point) and records that the stored
    /// state now includes every WAL record up to `flushed_seq`. Durable when it returns.
    pub fn commit(
        &self,
        changes: &[(PointId, Option<StoredPoint>)],
        flushed_seq: u64,
    ) -> Result<(), StoreError> {
        self.commit_batch(&FlushBatch {
            seq: flushed_seq,
            tail: changes.to_vec(),
            ..FlushBatch::default()
        })
    }

    /// Writes a flush in one transaction: all of it is durable when this returns, or none of
    /// it is (a crash keeps the previous flush).
    pub fn commit_batch(&self, batch: &FlushBatch) -> Result<(), StoreError> {
        let encode = |e: postcard::Error| StoreError::Corrupt(e.to_string());
        let txn = self.db.begin_write().map_err(redb_err)?;
        {
            let mut table = txn.open_table(POINTS).map_err(redb_err)?;
            let mut legacy = txn.open_table(LEGACY_POINTS).map_err(redb_err)?;
            let legacy_empty = legacy.is_empty().map_err(redb_err)?;
            for (id, point) in &batch.tail {
                let key = encode_id(id);
                if !legacy_empty {
                    legacy.remove(key.as_slice()).map_err(redb_err)?;
                }
                put_or_remove(&mut table, &key, point.as_ref())?;
            }
            let mut overrides = txn.open_table(OVERRIDES).map_err(redb_err)?;
            for (id, o) in &batch.overrides {
                put_or_remove(&mut overrides, &encode_id(id), o.as_ref())?;
            }
            let mut deleted = txn.open_table(DELETED).map_err(redb_err)?;
            for (segment, bitmap) in &batch.deleted {
                deleted
                    .insert(*segment, bitmap.as_slice())
                    .map_err(redb_err)?;
            }
            if let Some(listed) = &batch.segments {
                let mut segments = txn.open_table(SEGMENTS).map_err(redb_err)?;
                let before: Vec<u64> = segments
                    .iter()
                    .map_err(redb_err)?
                    .map(|e| e.map(|(k, _)| k.value()).map_err(redb_err))
                    .collect::<Result<_, _>>()?;
                for gone in before
                    .iter()
                    .filter(|s| !listed.iter().any(|(l, _)| l == *s))
                {
                    segments.remove(*gone).map_err(redb_err)?;
                    deleted.remove(*gone).map_err(redb_err)?;
                }
                for (s, voided) in listed {
                    let bytes = postcard::to_allocvec(voided).map_err(encode)?;
                    segments.insert(*s, bytes.as_slice()).map_err(redb_err)?;
                }
            }
            if let Some(clocks) = &batch.clocks {
                let mut table = txn.open_table(CLOCKS).map_err(redb_err)?;
                table
                    .insert(CLOCKS_KEY, clocks.as_slice())
                    .map_err(redb_err)?;
            }
            let mut meta = txn.open_table(META).map_err(redb_err)?;
            meta.insert(FLUSHED_SEQ, batch.seq).map_err(redb_err)?;
        }
        txn.commit().map_err(redb_err)
    }
}

/// Stores `value` (postcard) under `key`, or removes the key when there is none.
fn put_or_remove<T: Serialize>(
    table: &mut redb::Table<'_, &[u8], &[u8]>,
    key: &[u8],
    value: Option<&T>,
) -> Result<(), StoreError> {
    match value {
        Some(value) => {
            let bytes =
                postcard::to_allocvec(value).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            table.insert(key, bytes.as_slice()).map_err(redb_err)?;
        }
        None => {
            table.remove(key).map_err(redb_err)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(version: u64, x: f32, tag: &str) -> StoredPoint {
        let mut payload = Payload::new();
        payload.insert("tag".into(), serde_json::json!(tag));
        payload.insert("nested".into(), serde_json::json!({"a": [1, 2.5, null]}));
        StoredPoint {
            version,
            vectors: NamedVectors::from([(
                "v".to_string(),
                crate::types::VectorData::Dense(vec![x, -x, 0.5]),
            )]),
            payload,
        }
    }

    #[test]
    fn commits_are_atomic_and_reload_in_id_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("points.redb");
        let uuid = PointId::Uuid(uuid::Uuid::from_u128(7));
        {
            let store = PointStore::open(&path).unwrap();
            store
                .commit(
                    &[
                        (uuid, Some(point(1, 1.0, "u"))),
                        (PointId::Num(300), Some(point(2, 2.0, "b"))),
                        (PointId::Num(2), Some(point(3, 3.0, "a"))),
                    ],
                    3,
                )
                .unwrap();
            store.commit(&[(PointId::Num(300), None)], 4).unwrap();
        }
        let store = PointStore::open(&path).unwrap();
        let flushed = store.load().unwrap();
        assert_eq!(flushed.seq, 4);
        let points = flushed.tail;
        let ids: Vec<PointId> = points.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, vec![PointId::Num(2), uuid]);
        assert_eq!(points[0].1, point(3, 3.0, "a"));
    }

    #[test]
    fn a_flush_writes_segments_deletions_and_overrides_together() {
        let dir = tempfile::tempdir().unwrap();
        let store = PointStore::open(&dir.path().join("points.redb")).unwrap();
        let over = PayloadOverride {
            version: 9,
            payload: point(9, 0.0, "o").payload,
        };
        store
            .commit_batch(&FlushBatch {
                seq: 10,
                tail: vec![(PointId::Num(1), Some(point(10, 1.0, "t")))],
                overrides: vec![(PointId::Num(5), Some(over.clone()))],
                segments: Some(vec![(3, vec![]), (4, vec!["gone".to_string()])]),
                deleted: vec![(3, vec![0b10]), (4, vec![0])],
                clocks: Some(vec![1, 2, 3]),
            })
            .unwrap();
        // A later flush that lists only segment 5 forgets 3 and 4 and their bitmaps.
        store
            .commit_batch(&FlushBatch {
                seq: 11,
                segments: Some(vec![(5, vec!["x".to_string()])]),
                deleted: vec![(5, vec![1])],
                ..FlushBatch::default()
            })
            .unwrap();
        let flushed = store.load().unwrap();
        assert_eq!(flushed.seq, 11);
        assert_eq!(flushed.segments, vec![(5, vec!["x".to_string()])]);
        assert_eq!(
            flushed.deleted.into_iter().collect::<Vec<_>>(),
            vec![(5, vec![1])]
        );
        assert_eq!(flushed.overrides, vec![(PointId::Num(5), over)]);
        assert_eq!(flushed.tail.len(), 1);
        // A flush without clocks keeps the last ones written.
        assert_eq!(flushed.clocks, Some(vec![1, 2, 3]));
    }

    #[test]
    fn id_encoding_preserves_order() {
        let ids = [
            PointId::Num(0),
            PointId::Num(255),
            PointId::Num(256),
            PointId::Num(u64::MAX),
            PointId::Uuid(uuid::Uuid::from_u128(0)),
            PointId::Uuid(uuid::Uuid::from_u128(u128::MAX)),
        ];
        for pair in ids.windows(2) {
            assert!(encode_id(&pair[0]) < encode_id(&pair[1]));
            assert_eq!(decode_id(&encode_id(&pair[0])), Some(pair[0]));
        }
    }
}
