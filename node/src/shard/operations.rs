//! The update operations a shard applies, in the exact form they are written to the WAL.
//!
//! Operations that select points by filter are resolved to ids under the shard's write lock
//! before they are logged, so that replaying the log (on restart, or later on another replica)
//! repeats exactly what happened, whatever the filter would match by then.

use serde::{Deserialize, Serialize};

use crate::index::filter::Filter;
use crate::types::{Payload, PointId};

/// A point as written by an upsert.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PointWrite {
    pub id: PointId,
    pub vector: Vec<f32>,
    #[serde(with = "crate::storage::json_blob")]
    pub payload: Payload,
}

/// How an update picks its points.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PointSelection {
    Ids(Vec<PointId>),
    Filter(Filter),
}

/// An update as the API asks for it (and as it travels to a peer holding a replica).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum UpdateRequest {
    Upsert(Vec<PointWrite>),
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

/// An update as logged and applied: every selection is a list of ids.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ShardOperation {
    Upsert(Vec<PointWrite>),
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

impl ShardOperation {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("shard operations always encode")
    }

    pub fn decode(bytes: &[u8]) -> Result<ShardOperation, postcard::Error> {
        postcard::from_bytes(bytes)
    }

    /// How many points the operation touches.
    pub fn len(&self) -> usize {
        match self {
            ShardOperation::Upsert(p) => p.len(),
            ShardOperation::Delete(ids) => ids.len(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_round_trip_through_the_wal_encoding() {
        let mut payload = Payload::new();
        payload.insert(
            "k".into(),
            serde_json::json!({"deep": [1, "two", null, 3.5]}),
        );
        let ops = vec![
            ShardOperation::Upsert(vec![PointWrite {
                id: PointId::Uuid(uuid::Uuid::from_u128(99)),
                vector: vec![0.25, -1.5],
                payload: payload.clone(),
            }]),
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
}
