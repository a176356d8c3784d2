//! The durable home of a shard's points once they are flushed: a `redb` database mapping each
//! point id to its version, vector and payload, plus the sequence number of the last WAL record
//! the stored state includes.
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
const FLUSHED_SEQ: &str = "flushed_seq";

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

impl PointStore {
    pub fn open(path: &Path) -> Result<PointStore, StoreError> {
        let db = Database::create(path).map_err(redb_err)?;
        // Make sure the tables exist, so that readers never see "table does not exist".
        let txn = db.begin_write().map_err(redb_err)?;
        txn.open_table(POINTS).map_err(redb_err)?;
        txn.open_table(LEGACY_POINTS).map_err(redb_err)?;
        txn.open_table(META).map_err(redb_err)?;
        txn.commit().map_err(redb_err)?;
        Ok(PointStore { db })
    }

    /// Every stored point, in id order, and the WAL sequence number the state includes.
    pub fn load(&self) -> Result<(u64, Vec<(PointId, StoredPoint)>), StoreError> {
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
        Ok((flushed, points.into_iter().collect()))
    }

    /// Atomically writes `changes` (a `None` deletes the point) and records that the stored
    /// state now includes every WAL record up to `flushed_seq`. Durable when it returns.
    pub fn commit(
        &self,
        changes: &[(PointId, Option<StoredPoint>)],
        flushed_seq: u64,
    ) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(redb_err)?;
        {
            let mut table = txn.open_table(POINTS).map_err(redb_err)?;
            let mut legacy = txn.open_table(LEGACY_POINTS).map_err(redb_err)?;
            let legacy_empty = legacy.is_empty().map_err(redb_err)?;
            for (id, point) in changes {
                let key = encode_id(id);
                if !legacy_empty {
                    legacy.remove(key.as_slice()).map_err(redb_err)?;
                }
                match point {
                    Some(point) => {
                        let bytes = postcard::to_allocvec(point)
                            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                        table
                            .insert(key.as_slice(), bytes.as_slice())
                            .map_err(redb_err)?;
                    }
                    None => {
                        table.remove(key.as_slice()).map_err(redb_err)?;
                    }
                }
            }
            let mut meta = txn.open_table(META).map_err(redb_err)?;
            meta.insert(FLUSHED_SEQ, flushed_seq).map_err(redb_err)?;
        }
        txn.commit().map_err(redb_err)
    }
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
        let (flushed, points) = store.load().unwrap();
        assert_eq!(flushed, 4);
        let ids: Vec<PointId> = points.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, vec![PointId::Num(2), uuid]);
        assert_eq!(points[0].1, point(3, 3.0, "a"));
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
