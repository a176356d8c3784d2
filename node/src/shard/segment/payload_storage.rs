//! A segment's payloads by offset: on the heap, or read from the segment's `points.bin` on each
//! access.
//!
//! The second is Qdrant's `on_disk_payload` (its default, and the collection default here): a
//! sealed segment keeps only where each payload's JSON lies in its mapped `points.bin`
//! (12 bytes per point) and parses it when a request or a filter check reads it, so payloads
//! cost page cache rather than process memory. Payloads changed after the file was written (the
//! points whose version differs from the file's) live on the heap beside it, as they do in the
//! shard's point store (`storage::point_store`, its payload overrides). A filter on a field
//! without a payload index therefore parses the payloads it checks, as Qdrant reads them from
//! its payload storage; a payload index is built once from the same reads.
//!
//! Appendable segments always keep payloads on the heap: they are small and change with every
//! write, and the point store holds their copy on disk.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use crate::storage::mapped::FileBytes;
use crate::types::Payload;

/// Where each payload of a sealed segment lies in its mapped `points.bin`.
pub struct MappedPayloads {
    file: Arc<FileBytes>,
    /// Byte position of each offset's payload JSON in `file`.
    starts: Box<[u64]>,
    /// Its length in bytes.
    lens: Box<[u32]>,
    /// Payloads changed since the file was written, by offset.
    changed: HashMap<u32, Payload>,
}

impl MappedPayloads {
    /// Payloads at `spans` (byte position and length of each offset's JSON object in `file`,
    /// each already parsed once by the caller). Errors when a span lies past the end of the
    /// file.
    pub fn new(file: Arc<FileBytes>, spans: &[(u64, u32)]) -> Result<MappedPayloads, String> {
        let size = file.bytes().len() as u64;
        if let Some((start, len)) = spans.iter().find(|(s, l)| s + u64::from(*l) > size) {
            return Err(format!(
                "a payload at byte {start} ({len} bytes) lies past the end of the file ({size} bytes)"
            ));
        }
        Ok(MappedPayloads {
            file,
            starts: spans.iter().map(|(s, _)| *s).collect(),
            lens: spans.iter().map(|(_, l)| *l).collect(),
            changed: HashMap::new(),
        })
    }

    fn read(&self, offset: u32) -> Payload {
        let o = offset as usize;
        let start = self.starts[o] as usize;
        let json = &self.file.bytes()[start..start + self.lens[o] as usize];
        // Parsed once when the segment was opened, and the file never changes.
        serde_json::from_slice(json).expect("payload JSON was parsed when the segment opened")
    }
}

/// The payloads of one segment, by offset.
pub enum PayloadStorage {
    Heap(Vec<Payload>),
    Mapped(MappedPayloads),
}

impl PayloadStorage {
    /// The payload at `offset`: borrowed from the heap, or parsed from the file.
    pub fn get(&self, offset: u32) -> Cow<'_, Payload> {
        match self {
            PayloadStorage::Heap(payloads) => Cow::Borrowed(&payloads[offset as usize]),
            PayloadStorage::Mapped(m) => match m.changed.get(&offset) {
                Some(payload) => Cow::Borrowed(payload),
                None => Cow::Owned(m.read(offset)),
            },
        }
    }

    /// The payload at `offset`, to change: a mapped payload is copied to the heap first.
    pub fn get_mut(&mut self, offset: u32) -> &mut Payload {
        match self {
            PayloadStorage::Heap(payloads) => &mut payloads[offset as usize],
            PayloadStorage::Mapped(m) => {
                if !m.changed.contains_key(&offset) {
                    let payload = m.read(offset);
                    m.changed.insert(offset, payload);
                }
                m.changed.get_mut(&offset).expect("inserted above")
            }
        }
    }

    /// Replaces the payload at `offset`; a mapped one goes to the heap overlay unread.
    pub fn set(&mut self, offset: u32, payload: Payload) {
        match self {
            PayloadStorage::Heap(payloads) => payloads[offset as usize] = payload,
            PayloadStorage::Mapped(m) => {
                m.changed.insert(offset, payload);
            }
        }
    }

    /// Appends a payload (appendable segments only, which keep payloads on the heap).
    pub fn push(&mut self, payload: Payload) {
        match self {
            PayloadStorage::Heap(payloads) => payloads.push(payload),
            PayloadStorage::Mapped(_) => unreachable!("mapped payloads belong to sealed segments"),
        }
    }

    pub fn is_mapped(&self) -> bool {
        matches!(self, PayloadStorage::Mapped(_))
    }

    /// Payloads changed since the segment's file was written, held on the heap (0 for heap
    /// storage, which holds every payload there).
    #[cfg(test)]
    pub fn changed_count(&self) -> usize {
        match self {
            PayloadStorage::Heap(_) => 0,
            PayloadStorage::Mapped(m) => m.changed.len(),
        }
    }

    /// Every payload on the heap, `len` of them (parsed from the file where mapped).
    pub fn into_heap(self, len: usize) -> Vec<Payload> {
        match self {
            PayloadStorage::Heap(payloads) => payloads,
            PayloadStorage::Mapped(mut m) => (0..len as u32)
                .map(|o| m.changed.remove(&o).unwrap_or_else(|| m.read(o)))
                .collect(),
        }
    }

    /// Mapped payloads that keep, of `heap`, those of the offsets `changed` picks (the ones
    /// whose payload is newer than the file's).
    pub fn mapped_keeping(
        mut mapped: MappedPayloads,
        heap: Vec<Payload>,
        changed: impl Fn(u32) -> bool,
    ) -> PayloadStorage {
        mapped.changed = heap
            .into_iter()
            .enumerate()
            .filter(|(o, _)| changed(*o as u32))
            .map(|(o, payload)| (o as u32, payload))
            .collect();
        PayloadStorage::Mapped(mapped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_of(payloads: &[Payload]) -> (Arc<FileBytes>, Vec<(u64, u32)>) {
        let mut bytes = b"head".to_vec();
        let mut spans = Vec::new();
        for p in payloads {
            let json = serde_json::to_vec(p).unwrap();
            spans.push((bytes.len() as u64, json.len() as u32));
            bytes.extend_from_slice(&json);
            bytes.extend_from_slice(b"--");
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("points.bin");
        std::fs::write(&path, &bytes).unwrap();
        (FileBytes::open(&path, true).unwrap(), spans)
    }

    fn payload(i: i64) -> Payload {
        serde_json::json!({"i": i, "tag": format!("t{i}")})
            .as_object()
            .unwrap()
            .clone()
    }

    #[test]
    fn mapped_payloads_read_from_the_file_and_keep_changes_on_the_heap() {
        let originals: Vec<Payload> = (0..5).map(payload).collect();
        let (file, spans) = file_of(&originals);
        let mapped = MappedPayloads::new(file, &spans).unwrap();
        // Offset 1 changed after the file was written: the heap copy wins, the rest are read.
        let mut heap = originals.clone();
        heap[1] = payload(100);
        let mut storage = PayloadStorage::mapped_keeping(mapped, heap, |o| o == 1);
        assert!(storage.is_mapped());
        assert_eq!(storage.changed_count(), 1);
        assert_eq!(*storage.get(0), originals[0]);
        assert!(matches!(storage.get(0), Cow::Owned(_)), "parsed, not held");
        assert_eq!(*storage.get(1), payload(100));
        storage
            .get_mut(3)
            .insert("x".into(), serde_json::json!(true));
        assert_eq!(storage.changed_count(), 2);
        assert_eq!(storage.get(3)["x"], serde_json::json!(true));
        assert_eq!(*storage.get(4), originals[4]);
        storage.set(2, payload(200));
        assert_eq!(storage.changed_count(), 3);
        assert_eq!(*storage.get(2), payload(200));
        let all = storage.into_heap(5);
        assert_eq!(all[0], originals[0]);
        assert_eq!(all[1], payload(100));
        assert_eq!(all[3]["x"], serde_json::json!(true));
        assert_eq!(all[3]["i"], serde_json::json!(3));
        assert_eq!(all[2], payload(200));
    }

    #[test]
    fn spans_past_the_file_are_refused() {
        let (file, mut spans) = file_of(&[payload(1)]);
        spans[0].1 += 100;
        let err = MappedPayloads::new(file, &spans).err().unwrap();
        assert!(err.contains("past the end"), "{err}");
    }
}
