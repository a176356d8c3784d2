//! The update operations a shard applies, in the exact form they are written to the WAL.
//!
//! Operations that select points by filter are resolved to ids under the shard's write lock
//! before they are logged, so that replaying the log (on restart, or later on another replica)
//! repeats exactly what happened, whatever the filter would match by then.

use serde::{Deserialize, Serialize};

use crate::index::filter::Filter;
use crate::index::payload_path::{JsonPath, MAX_PAYLOAD_DEPTH, payload_depth};
use crate::shard::clock::{ClockMap, ClockTag, WalMark};
use crate::types::{DEFAULT_VECTOR, NamedVectors, Payload, PointId, VectorData};

/// A point as written by an upsert: its id, any of the collection's vectors by name, and its
/// payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PointWrite {
    pub id: PointId,
    pub vectors: NamedVectors,
    #[serde(with = "crate::storage::json_blob")]
    pub payload: Payload,
}

impl PointWrite {
    /// A point with only the unnamed dense vector.
    pub fn dense(id: PointId, vector: Vec<f32>, payload: Payload) -> PointWrite {
        PointWrite {
            id,
            vectors: NamedVectors::from([(DEFAULT_VECTOR.to_string(), VectorData::Dense(vector))]),
            payload,
        }
    }
}

/// Qdrant's `update_mode` of an upsert: which points it may write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateMode {
    /// Insert new points and overwrite existing ones.
    #[default]
    Upsert,
    /// Only insert points whose id is new; existing points stay as they are.
    InsertOnly,
    /// Only overwrite points that exist; new ids are ignored.
    UpdateOnly,
}

/// How an update picks its points.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PointSelection {
    /// These ids; a payload or vector update fails with `No point with id N found` when one
    /// is missing (Qdrant's answer).
    Ids(Vec<PointId>),
    /// These ids, skipping any that are missing: the form an update takes when it is passed on
    /// to a transfer's destination, which may not hold every point yet.
    IdsIfPresent(Vec<PointId>),
    Filter(Filter),
}

/// An update as the API asks for it (and as it travels to a peer holding a replica).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum UpdateRequest {
    Upsert(Vec<PointWrite>),
    /// An upsert with Qdrant's `update_mode` and `update_filter`: an existing point is
    /// overwritten only if it matches the filter; new points are always inserted (unless the
    /// mode says otherwise).
    ConditionalUpsert {
        points: Vec<PointWrite>,
        mode: UpdateMode,
        filter: Option<Filter>,
    },
    /// Replaces the named vectors given for each point, keeping its other vectors and payload.
    /// Every point must exist (else `No point with id N found`).
    UpdateVectors {
        points: Vec<(PointId, NamedVectors)>,
        filter: Option<Filter>,
        /// Skip missing points instead of failing (see [`PointSelection::IdsIfPresent`]).
        missing_ok: bool,
    },
    /// Removes the named vectors from the selected points.
    DeleteVectors {
        selection: PointSelection,
        names: Vec<String>,
    },
    Delete(PointSelection),
    SetPayload {
        selection: PointSelection,
        #[serde(with = "crate::storage::json_blob")]
        payload: Payload,
        key: Option<String>,
    },
    OverwritePayload {
        selection: PointSelection,
        #[serde(with = "crate::storage::json_blob")]
        payload: Payload,
    },
    DeletePayload {
        selection: PointSelection,
        keys: Vec<String>,
    },
    ClearPayload(PointSelection),
}

impl UpdateRequest {
    /// Refuses a payload this update would leave nested deeper than [`MAX_PAYLOAD_DEPTH`]: an
    /// upserted or overwritten payload, or a `set_payload` value with the levels its `key` adds.
    /// Returns the message for a 400 answer ("Wrong input: ..." is the caller's). Checked before
    /// anything is logged, so a refused update changes nothing.
    pub fn check_payload_depth(&self) -> Result<(), String> {
        let too_deep = |depth: usize, what: std::fmt::Arguments<'_>| {
            Err(format!(
                "{what} would nest {depth} levels deep; at most {MAX_PAYLOAD_DEPTH} are allowed"
            ))
        };
        match self {
            UpdateRequest::Upsert(points) | UpdateRequest::ConditionalUpsert { points, .. } => {
                for p in points {
                    let depth = payload_depth(&p.payload);
                    if depth > MAX_PAYLOAD_DEPTH {
                        return too_deep(depth, format_args!("the payload of point {}", p.id));
                    }
                }
                Ok(())
            }
            UpdateRequest::OverwritePayload { payload, .. }
            | UpdateRequest::SetPayload {
                payload, key: None, ..
            } => {
                let depth = payload_depth(payload);
                if depth > MAX_PAYLOAD_DEPTH {
                    return too_deep(depth, format_args!("the payload"));
                }
                Ok(())
            }
            UpdateRequest::SetPayload {
                payload,
                key: Some(key),
                ..
            } => {
                let path: JsonPath = key
                    .parse()
                    .map_err(|e| format!("invalid payload key `{key}`: {e}"))?;
                let depth = path.depth_with(payload);
                if depth > MAX_PAYLOAD_DEPTH {
                    return too_deep(depth, format_args!("the payload set at `{key}`"));
                }
                Ok(())
            }
            UpdateRequest::UpdateVectors { .. }
            | UpdateRequest::DeleteVectors { .. }
            | UpdateRequest::Delete(_)
            | UpdateRequest::DeletePayload { .. }
            | UpdateRequest::ClearPayload(_) => Ok(()),
        }
    }

    /// The form of this update that a transfer's destination applies: selections by id skip
    /// points the destination does not hold yet (the transfer's stream brings them, already
    /// updated), instead of failing the update the source has applied.
    pub fn lenient(&self) -> UpdateRequest {
        let relax = |sel: &PointSelection| match sel {
            PointSelection::Ids(ids) => PointSelection::IdsIfPresent(ids.clone()),
            other => other.clone(),
        };
        match self {
            UpdateRequest::UpdateVectors { points, filter, .. } => UpdateRequest::UpdateVectors {
                points: points.clone(),
                filter: filter.clone(),
                missing_ok: true,
            },
            UpdateRequest::DeleteVectors { selection, names } => UpdateRequest::DeleteVectors {
                selection: relax(selection),
                names: names.clone(),
            },
            UpdateRequest::SetPayload {
                selection,
                payload,
                key,
            } => UpdateRequest::SetPayload {
                selection: relax(selection),
                payload: payload.clone(),
                key: key.clone(),
            },
            UpdateRequest::OverwritePayload { selection, payload } => {
                UpdateRequest::OverwritePayload {
                    selection: relax(selection),
                    payload: payload.clone(),
                }
            }
            UpdateRequest::DeletePayload { selection, keys } => UpdateRequest::DeletePayload {
                selection: relax(selection),
                keys: keys.clone(),
            },
            UpdateRequest::ClearPayload(selection) => UpdateRequest::ClearPayload(relax(selection)),
            other => other.clone(),
        }
    }
}

/// An update as logged and applied: every selection is a list of ids.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ShardOperation {
    Upsert(Vec<PointWrite>),
    UpdateVectors(Vec<(PointId, NamedVectors)>),
    DeleteVectors {
        points: Vec<PointId>,
        names: Vec<String>,
    },
    Delete(Vec<PointId>),
    SetPayload {
        points: Vec<PointId>,
        #[serde(with = "crate::storage::json_blob")]
        payload: Payload,
        key: Option<String>,
    },
    OverwritePayload {
        points: Vec<PointId>,
        #[serde(with = "crate::storage::json_blob")]
        payload: Payload,
    },
    DeletePayload {
        points: Vec<PointId>,
        keys: Vec<String>,
    },
    ClearPayload {
        points: Vec<PointId>,
    },
}

/// The first byte of a WAL record in the current encoding. Records written before named
/// vectors existed start with their variant index (0 to 5) instead, and decode as
/// [`LegacyOperation`].
const FORMAT_NAMED_VECTORS: u8 = 0x40;

/// The WAL encoding of the single-vector data model (one unnamed dense vector per point),
/// kept so that a shard written by an older Shoal replays.
#[derive(Deserialize)]
enum LegacyOperation {
    Upsert(Vec<LegacyPointWrite>),
    Delete(Vec<PointId>),
    SetPayload {
        points: Vec<PointId>,
        #[serde(with = "crate::storage::json_blob")]
        payload: Payload,
        key: Option<String>,
    },
    OverwritePayload {
        points: Vec<PointId>,
        #[serde(with = "crate::storage::json_blob")]
        payload: Payload,
    },
    DeletePayload {
        points: Vec<PointId>,
        keys: Vec<String>,
    },
    ClearPayload {
        points: Vec<PointId>,
    },
}

#[derive(Deserialize)]
struct LegacyPointWrite {
    id: PointId,
    vector: Vec<f32>,
    #[serde(with = "crate::storage::json_blob")]
    payload: Payload,
}

impl From<LegacyOperation> for ShardOperation {
    fn from(op: LegacyOperation) -> ShardOperation {
        match op {
            LegacyOperation::Upsert(points) => ShardOperation::Upsert(
                points
                    .into_iter()
                    .map(|p| PointWrite::dense(p.id, p.vector, p.payload))
                    .collect(),
            ),
            LegacyOperation::Delete(ids) => ShardOperation::Delete(ids),
            LegacyOperation::SetPayload {
                points,
                payload,
                key,
            } => ShardOperation::SetPayload {
                points,
                payload,
                key,
            },
            LegacyOperation::OverwritePayload { points, payload } => {
                ShardOperation::OverwritePayload { points, payload }
            }
            LegacyOperation::DeletePayload { points, keys } => {
                ShardOperation::DeletePayload { points, keys }
            }
            LegacyOperation::ClearPayload { points } => ShardOperation::ClearPayload { points },
        }
    }
}

impl ShardOperation {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![FORMAT_NAMED_VECTORS];
        postcard::to_io(self, &mut out).expect("shard operations always encode");
        out
    }

    /// Decodes a WAL record of this or the previous (single-vector) encoding.
    pub fn decode(bytes: &[u8]) -> Result<ShardOperation, postcard::Error> {
        match bytes.split_first() {
            Some((&FORMAT_NAMED_VECTORS, rest)) => postcard::from_bytes(rest),
            _ => postcard::from_bytes::<LegacyOperation>(bytes).map(ShardOperation::from),
        }
    }

    /// How many points the operation touches.
    pub fn len(&self) -> usize {
        match self {
            ShardOperation::Upsert(p) => p.len(),
            ShardOperation::UpdateVectors(p) => p.len(),
            ShardOperation::Delete(ids) => ids.len(),
            ShardOperation::DeleteVectors { points, .. } => points.len(),
            ShardOperation::SetPayload { points, .. }
            | ShardOperation::OverwritePayload { points, .. }
            | ShardOperation::DeletePayload { points, .. }
            | ShardOperation::ClearPayload { points } => points.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The first byte of a WAL record that holds a [`WalEntry`].
const FORMAT_CLOCKED: u8 = 0x41;

/// A record of a shard's WAL (see `shard::clock` for what the clocks mean).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum WalEntry {
    /// An operation and the tag it was applied with (`None` only in records written before
    /// clock tags existed).
    Op {
        clock: Option<ClockTag>,
        op: ShardOperation,
    },
    /// The replica started receiving copy `copy` (a transfer's id) of the shard: until it
    /// finishes, its recovery point is `floor`. A `fresh` copy starts from nothing: the
    /// replica forgets every clock but its own local one.
    BeginCopy {
        copy: u64,
        floor: ClockMap,
        fresh: bool,
    },
    /// Copy `copy` finished: the replica holds everything the source's clocks `merged` say.
    /// After a `fresh` copy that is all it holds (besides later records).
    FinishCopy {
        copy: u64,
        merged: ClockMap,
        fresh: bool,
    },
}

impl WalEntry {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![FORMAT_CLOCKED];
        postcard::to_io(self, &mut out).expect("WAL entries always encode");
        out
    }

    /// Decodes a record of this or an earlier encoding (a bare operation, without a tag).
    pub fn decode(bytes: &[u8]) -> Result<WalEntry, postcard::Error> {
        match bytes.split_first() {
            Some((&FORMAT_CLOCKED, rest)) => postcard::from_bytes(rest),
            _ => ShardOperation::decode(bytes).map(|op| WalEntry::Op { clock: None, op }),
        }
    }

    /// What recovery looks at in this record.
    pub fn mark(&self) -> WalMark<'_> {
        match self {
            WalEntry::Op { clock, .. } => WalMark::Op(clock.as_ref()),
            // Only a fresh copy replaced the replica's whole state; the merge of a `wal_delta`
            // says nothing of the local writes before it.
            WalEntry::FinishCopy {
                merged,
                fresh: true,
                ..
            } => WalMark::Merge(merged),
            WalEntry::FinishCopy { .. } => WalMark::Other,
            WalEntry::BeginCopy { fresh: true, .. } => WalMark::FreshCopy,
            WalEntry::BeginCopy { .. } => WalMark::Other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::payload_path::nested_payload;

    #[test]
    fn operations_round_trip_through_the_wal_encoding() {
        let mut payload = Payload::new();
        payload.insert(
            "k".into(),
            serde_json::json!({"deep": [1, "two", null, 3.5]}),
        );
        let mut vectors = NamedVectors::new();
        vectors.insert("text".into(), VectorData::Dense(vec![0.25, -1.5]));
        vectors.insert(
            "sparse".into(),
            VectorData::Sparse(
                crate::types::SparseVector::new(vec![7, 2], vec![1.0, 0.5]).unwrap(),
            ),
        );
        vectors.insert(
            "multi".into(),
            VectorData::Multi(vec![vec![1.0, 2.0], vec![3.0, 4.0]]),
        );
        let ops = vec![
            ShardOperation::Upsert(vec![PointWrite {
                id: PointId::Uuid(uuid::Uuid::from_u128(99)),
                vectors: vectors.clone(),
                payload: payload.clone(),
            }]),
            ShardOperation::UpdateVectors(vec![(PointId::Num(4), vectors)]),
            ShardOperation::DeleteVectors {
                points: vec![PointId::Num(4)],
                names: vec!["text".into()],
            },
            ShardOperation::Delete(vec![PointId::Num(1), PointId::Num(u64::MAX)]),
            ShardOperation::SetPayload {
                points: vec![PointId::Num(3)],
                payload,
                key: Some("a.b".into()),
            },
            ShardOperation::DeletePayload {
                points: vec![],
                keys: vec!["x".into()],
            },
        ];
        for op in ops {
            assert_eq!(ShardOperation::decode(&op.encode()).unwrap(), op);
        }
    }

    #[test]
    fn wal_entries_round_trip_and_older_records_decode_untagged() {
        let tag = ClockTag {
            peer: 3,
            clock: 1,
            tick: 9,
            token: 77,
        };
        let op = ShardOperation::Delete(vec![PointId::Num(5)]);
        let entries = [
            WalEntry::Op {
                clock: Some(tag),
                op: op.clone(),
            },
            WalEntry::BeginCopy {
                copy: 4,
                floor: ClockMap::from(vec![tag]),
                fresh: false,
            },
            WalEntry::FinishCopy {
                copy: 4,
                merged: ClockMap::from(vec![tag]),
                fresh: true,
            },
        ];
        for entry in entries {
            assert_eq!(WalEntry::decode(&entry.encode()).unwrap(), entry);
        }
        // A record of the encoding before clock tags: an operation without a tag.
        assert_eq!(
            WalEntry::decode(&op.encode()).unwrap(),
            WalEntry::Op { clock: None, op }
        );
    }

    /// A WAL written before named vectors existed replays as upserts of the unnamed vector.
    #[test]
    fn legacy_records_decode_as_unnamed_vectors() {
        #[derive(Serialize)]
        enum OldOperation {
            Upsert(Vec<OldPointWrite>),
            Delete(Vec<PointId>),
        }
        #[derive(Serialize)]
        struct OldPointWrite {
            id: PointId,
            vector: Vec<f32>,
            #[serde(with = "crate::storage::json_blob")]
            payload: Payload,
        }
        let old = postcard::to_allocvec(&OldOperation::Upsert(vec![OldPointWrite {
            id: PointId::Num(5),
            vector: vec![1.0, 2.0],
            payload: Payload::new(),
        }]))
        .unwrap();
        assert_eq!(
            ShardOperation::decode(&old).unwrap(),
            ShardOperation::Upsert(vec![PointWrite::dense(
                PointId::Num(5),
                vec![1.0, 2.0],
                Payload::new()
            )])
        );
        let old = postcard::to_allocvec(&OldOperation::Delete(vec![PointId::Num(9)])).unwrap();
        assert_eq!(
            ShardOperation::decode(&old).unwrap(),
            ShardOperation::Delete(vec![PointId::Num(9)])
        );
    }

    #[test]
    fn payloads_past_the_depth_limit_are_refused_and_the_limit_itself_is_logged_and_read_back() {
        let at_limit = nested_payload(MAX_PAYLOAD_DEPTH);
        let upsert = |payload: Payload| {
            UpdateRequest::Upsert(vec![PointWrite::dense(PointId::Num(1), vec![0.0], payload)])
        };
        let set_at = |key: &str, payload: Payload| UpdateRequest::SetPayload {
            selection: PointSelection::Ids(vec![PointId::Num(1)]),
            payload,
            key: Some(key.to_string()),
        };
        let key_of = |parts: usize| vec!["k"; parts].join(".");
        let flat = Payload::from_iter([("x".to_string(), serde_json::json!(1))]);
        let fine = [
            upsert(at_limit.clone()),
            UpdateRequest::OverwritePayload {
                selection: PointSelection::Ids(vec![PointId::Num(1)]),
                payload: at_limit.clone(),
            },
            // 1 (root) + 98 steps after the first key + 1 (the value) = 100.
            set_at(&key_of(99), flat.clone()),
            UpdateRequest::DeletePayload {
                selection: PointSelection::Ids(vec![PointId::Num(1)]),
                keys: vec![key_of(500)],
            },
        ];
        for request in &fine {
            assert_eq!(request.check_payload_depth(), Ok(()), "{request:?}");
        }
        let refused = [
            upsert(nested_payload(MAX_PAYLOAD_DEPTH + 1)),
            UpdateRequest::ConditionalUpsert {
                points: vec![PointWrite::dense(
                    PointId::Num(2),
                    vec![0.0],
                    nested_payload(400),
                )],
                mode: UpdateMode::InsertOnly,
                filter: None,
            },
            set_at(&key_of(100), flat),
            set_at(&key_of(50), nested_payload(60)),
            UpdateRequest::SetPayload {
                selection: PointSelection::Ids(vec![PointId::Num(1)]),
                payload: nested_payload(MAX_PAYLOAD_DEPTH + 1),
                key: None,
            },
        ];
        for request in &refused {
            let err = request.check_payload_depth().expect_err("too deep");
            assert!(err.contains("levels deep"), "{err}");
        }
        // What the check lets through survives the WAL's encoding.
        let entry = WalEntry::Op {
            clock: None,
            op: ShardOperation::Upsert(vec![PointWrite::dense(
                PointId::Num(1),
                vec![0.0],
                at_limit,
            )]),
        };
        assert_eq!(WalEntry::decode(&entry.encode()).unwrap(), entry);
    }
}
