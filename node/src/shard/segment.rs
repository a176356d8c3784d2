//! A segment: a batch of points stored side by side, addressed by offset.
//!
//! A segment starts *appendable* (new points go to its end), is *frozen* once it is large enough
//! (no more appends: its vectors never change again), and becomes *indexed* when the optimizer
//! has built an HNSW graph over it. A vector at an offset never changes: an upsert of an existing
//! point writes a new offset (usually in another segment) and tombstones the old one, so a graph
//! built from a frozen segment stays valid for as long as the segment lives. Payloads are not
//! part of the graph and change in place.

use std::sync::Arc;

use crate::index::hnsw_index::HnswIndex;
use crate::types::{Payload, PointId};

pub type SegmentId = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentStage {
    Appendable,
    Frozen,
    Indexed,
}

enum Vectors {
    Growing(Vec<f32>),
    Frozen(Arc<Vec<f32>>),
}

impl Vectors {
    fn as_slice(&self) -> &[f32] {
        match self {
            Vectors::Growing(v) => v,
            Vectors::Frozen(v) => v,
        }
    }
}

pub struct Segment {
    pub id: SegmentId,
    dim: usize,
    ids: Vec<PointId>,
    vectors: Vectors,
    payloads: Vec<Payload>,
    versions: Vec<u64>,
    deleted: Vec<bool>,
    deleted_count: usize,
    index: Option<Arc<HnswIndex>>,
}

impl Segment {
    pub fn new(id: SegmentId, dim: usize) -> Segment {
        Segment {
            id,
            dim,
            ids: Vec::new(),
            vectors: Vectors::Growing(Vec::new()),
            payloads: Vec::new(),
            versions: Vec::new(),
            deleted: Vec::new(),
            deleted_count: 0,
            index: None,
        }
    }

    pub fn stage(&self) -> SegmentStage {
        match (&self.vectors, &self.index) {
            (Vectors::Growing(_), _) => SegmentStage::Appendable,
            (Vectors::Frozen(_), None) => SegmentStage::Frozen,
            (Vectors::Frozen(_), Some(_)) => SegmentStage::Indexed,
        }
    }

    /// Appends a point and returns its offset. Only appendable segments take points.
    pub fn push(&mut self, id: PointId, vector: &[f32], payload: Payload, version: u64) -> u32 {
        debug_assert_eq!(vector.len(), self.dim);
        let Vectors::Growing(vectors) = &mut self.vectors else {
            panic!("segment {} is frozen and takes no new points", self.id);
        };
        vectors.extend_from_slice(vector);
        self.ids.push(id);
        self.payloads.push(payload);
        self.versions.push(version);
        self.deleted.push(false);
        (self.ids.len() - 1) as u32
    }

    /// Stops appends: from now on the vectors are immutable and can be shared with a builder.
    pub fn freeze(&mut self) {
        if let Vectors::Growing(v) = &mut self.vectors {
            let mut v = std::mem::take(v);
            v.shrink_to_fit();
            self.vectors = Vectors::Frozen(Arc::new(v));
        }
    }

    pub fn frozen_vectors(&self) -> Option<Arc<Vec<f32>>> {
        match &self.vectors {
            Vectors::Frozen(v) => Some(Arc::clone(v)),
            Vectors::Growing(_) => None,
        }
    }

    pub fn set_index(&mut self, index: Arc<HnswIndex>) {
        assert!(
            matches!(self.vectors, Vectors::Frozen(_)),
            "only frozen segments are indexed"
        );
        self.index = Some(index);
    }

    pub fn index(&self) -> Option<&Arc<HnswIndex>> {
        self.index.as_ref()
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Number of offsets, deleted or not.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn live_count(&self) -> usize {
        self.ids.len() - self.deleted_count
    }

    pub fn deleted_count(&self) -> usize {
        self.deleted_count
    }

    pub fn vector_bytes(&self) -> usize {
        self.ids.len() * self.dim * 4
    }

    pub fn is_live(&self, offset: u32) -> bool {
        !self.deleted[offset as usize]
    }

    pub fn delete(&mut self, offset: u32) {
        let slot = &mut self.deleted[offset as usize];
        if !*slot {
            *slot = true;
            self.deleted_count += 1;
        }
    }

    pub fn id(&self, offset: u32) -> PointId {
        self.ids[offset as usize]
    }

    pub fn vector(&self, offset: u32) -> &[f32] {
        let start = offset as usize * self.dim;
        &self.vectors.as_slice()[start..start + self.dim]
    }

    pub fn payload(&self, offset: u32) -> &Payload {
        &self.payloads[offset as usize]
    }

    pub fn payload_mut(&mut self, offset: u32) -> &mut Payload {
        &mut self.payloads[offset as usize]
    }

    pub fn version(&self, offset: u32) -> u64 {
        self.versions[offset as usize]
    }

    pub fn set_version(&mut self, offset: u32, version: u64) {
        self.versions[offset as usize] = version;
    }

    /// Offsets of the points that are not deleted.
    pub fn live_offsets(&self) -> impl Iterator<Item = u32> + '_ {
        self.deleted
            .iter()
            .enumerate()
            .filter(|(_, d)| !**d)
            .map(|(o, _)| o as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle_keeps_offsets_stable() {
        let mut s = Segment::new(1, 2);
        assert_eq!(s.stage(), SegmentStage::Appendable);
        let a = s.push(PointId::Num(1), &[1.0, 2.0], Payload::new(), 1);
        let b = s.push(PointId::Num(2), &[3.0, 4.0], Payload::new(), 2);
        s.delete(a);
        s.delete(a);
        assert_eq!(s.live_count(), 1);
        s.freeze();
        assert_eq!(s.stage(), SegmentStage::Frozen);
        assert_eq!(s.vector(b), &[3.0, 4.0]);
        assert_eq!(s.live_offsets().collect::<Vec<_>>(), vec![b]);
        assert_eq!(s.id(b), PointId::Num(2));
    }
}
