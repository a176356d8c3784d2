//! A sealed segment as a directory: written once by the optimizer, opened by mapping its files.
//!
//! Files (names of vector files use the column's number, since vector names are free text):
//!
//! | file | holds |
//! | --- | --- |
//! | `meta.json` | format, segment id, point count, columns (name, kind, size), per-file CRC32 and length |
//! | `points.bin` | per offset: id, version, payload (postcard; payloads as JSON text) |
//! | `columns.bin` | per column: which offsets have a dense vector, each offset's multivector range, sparse vectors |
//! | `dense-<n>.f32` | a dense column's values, little-endian `f32`, `size` per offset: mapped when the vector is `on_disk` |
//! | `multi-<n>.f32` | a multivector column's sub-vectors laid end to end (ranges in `columns.bin`): mapped when `on_disk` |
//! | `graph-<n>.bin` | the column's HNSW graph ([`HnswIndex::write`]): mapped when `hnsw_config.on_disk` |
//! | `quant-<n>.u8` | the column's scalar-quantized codes ([`QuantizedVectors::write`]): mapped when the vector is `on_disk` and the quantization not `always_ram` |
//!
//! A directory is written under `<id>.tmp`, every file fsynced, then renamed to `<id>` and the
//! parent fsynced: a reader sees a whole directory or none. Opening verifies every file's CRC32
//! and length (with plain reads, so checking does not load mapped pages) and refuses a segment
//! that does not match. Deletions and later payload changes are not here: the shard's point
//! store holds them (see `storage::point_store`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::*;
use crate::index::hnsw_index::GraphDistance;
use crate::index::quantization::QuantizedVectors;
use crate::storage::mapped::{self, FileBytes, FileSlice};
use crate::storage::point_store::{decode_id, encode_id};

const FORMAT: u32 = 1;
const META: &str = "meta.json";
const POINTS: &str = "points.bin";
const COLUMNS: &str = "columns.bin";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Kind {
    Dense,
    Multi,
    Sparse,
}

#[derive(Serialize, Deserialize)]
struct ColumnMeta {
    name: String,
    kind: Kind,
    /// Values per vector (per sub-vector for a multivector); 0 for sparse.
    dim: usize,
    graph: bool,
    /// Whether `quant-<n>.u8` holds the column's codes (absent in directories written before
    /// quantization existed).
    #[serde(default)]
    quantized: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct FileCheck {
    crc32: u32,
    len: u64,
}

#[derive(Serialize, Deserialize)]
struct SegmentMeta {
    format: u32,
    id: SegmentId,
    len: usize,
    columns: Vec<ColumnMeta>,
    files: BTreeMap<String, FileCheck>,
}

#[derive(Serialize)]
struct PointRow {
    id: Vec<u8>,
    version: u64,
    #[serde(with = "crate::storage::json_blob")]
    payload: Payload,
}

/// A [`PointRow`] as read: the payload's JSON text is borrowed from the file's bytes, so that
/// its position there can be kept instead of the parsed payload.
#[derive(Deserialize)]
struct PointRowRef<'a> {
    id: Vec<u8>,
    version: u64,
    #[serde(borrow)]
    payload: &'a str,
}

#[derive(Serialize, Deserialize)]
enum ColumnCells {
    Dense {
        present: Vec<bool>,
    },
    /// `len + 1` positions into `multi-<n>.f32` (see [`MultiValues::File`]).
    Multi {
        starts: Vec<u64>,
    },
    Sparse {
        cells: Vec<Option<SparseVector>>,
    },
}

/// What a sealed segment's directory holds, copied out of the segment so that it can be
/// written without holding the shard's lock (vectors are shared, not copied).
pub struct SegmentImage {
    pub id: SegmentId,
    ids: Vec<PointId>,
    versions: Vec<u64>,
    payloads: Vec<Payload>,
    columns: BTreeMap<String, FrozenColumn>,
    index: Arc<SegmentIndex>,
}

/// How much of a segment's files [`Segment::open_dir_checked`] verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// Every file's CRC32 and length (reads every byte).
    Checksums,
    /// Lengths only: for files this process verified moments before.
    Lengths,
}

/// Checks every file of the segment directory `dir` against the CRC32 and length its
/// `meta.json` lists, without decoding anything. Errors say which file does not match.
pub fn verify_files(dir: &Path) -> Result<(), String> {
    let bytes = std::fs::read(dir.join(META)).map_err(|e| format!("{META}: {e}"))?;
    let meta: SegmentMeta = serde_json::from_slice(&bytes).map_err(|e| format!("{META}: {e}"))?;
    for (name, check) in &meta.files {
        let (crc32, len) =
            mapped::checksum_file(&dir.join(name)).map_err(|e| format!("{name}: {e}"))?;
        if (FileCheck { crc32, len }) != *check {
            return Err(format!("{name}: checksum or length does not match"));
        }
    }
    Ok(())
}

/// The directory of segment `id` under `segments_dir`.
pub fn segment_dir(segments_dir: &Path, id: SegmentId) -> PathBuf {
    segments_dir.join(id.to_string())
}

/// Directory names under `segments_dir` that are not a complete segment listed in `keep`:
/// left by an optimization interrupted before its flush, or by a segment replaced since.
pub fn stray_dirs(segments_dir: &Path, keep: &[SegmentId]) -> std::io::Result<Vec<PathBuf>> {
    let mut stray = Vec::new();
    let entries = match std::fs::read_dir(segments_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(stray),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let listed = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<SegmentId>().ok())
            .is_some_and(|id| keep.contains(&id));
        if !listed {
            stray.push(entry.path());
        }
    }
    Ok(stray)
}

impl Segment {
    /// A copy of what the segment's directory holds; `None` unless it is frozen and indexed.
    pub fn image(&self) -> Option<SegmentImage> {
        Some(SegmentImage {
            id: self.id,
            ids: self.ids.clone(),
            versions: self.versions.clone(),
            payloads: (0..self.len() as u32)
                .map(|o| self.payloads.get(o).into_owned())
                .collect(),
            columns: self.frozen_columns(),
            index: Arc::clone(self.index.as_ref().filter(|_| self.frozen)?),
        })
    }

    /// Whether the segment was read from (or has been written to) its directory.
    pub fn is_persisted(&self) -> bool {
        self.file_versions.is_some()
    }

    /// The version of the point at `offset` as the segment's directory holds it.
    pub fn file_version(&self, offset: u32) -> Option<u64> {
        self.file_versions.as_ref().map(|v| v[offset as usize])
    }

    /// Replaces this segment with `stored` (the same points, read back from the directory just
    /// written), keeping what changed in memory since the image was taken: payloads,
    /// versions and deletions.
    pub fn adopt_stored(&mut self, mut stored: Segment) {
        assert_eq!(
            stored.ids, self.ids,
            "the stored segment holds the same points"
        );
        stored.versions = std::mem::take(&mut self.versions);
        stored.deleted = std::mem::take(&mut self.deleted);
        stored.deleted_count = self.deleted_count;
        // Mapped payloads keep on the heap only those changed since the image was taken.
        let heap = self.take_payloads();
        let file = std::mem::replace(&mut stored.payloads, PayloadStorage::Heap(Vec::new()));
        stored.payloads = match file {
            PayloadStorage::Mapped(mapped) => {
                PayloadStorage::mapped_keeping(mapped, heap, newer_than_file(&stored))
            }
            PayloadStorage::Heap(_) => PayloadStorage::Heap(heap),
        };
        stored.voided.extend(std::mem::take(&mut self.voided));
        stored.payload_index = self.payload_index.take();
        stored.payload_edits = self.payload_edits;
        stored.payload_touched = std::mem::take(&mut self.payload_touched);
        *self = stored;
    }

    /// Opens the segment in `dir`, verified, with the columns and graphs `config` wants mapped
    /// (vector `on_disk`, `hnsw_config.on_disk`) left in their files. No point is deleted yet;
    /// the caller applies the stored deletions. Errors say which file does not match.
    pub fn open_dir(
        dir: &Path,
        config: &CollectionConfig,
        voided: &[String],
    ) -> Result<Segment, String> {
        Segment::open_dir_checked(dir, config, voided, Verify::Checksums)
    }

    /// [`Segment::open_dir`], with `Verify::Lengths` checking only file lengths: for a
    /// directory whose checksums were verified moments ago by this process (a restored
    /// snapshot moved into place), where reading every byte again would double the cost.
    pub fn open_dir_checked(
        dir: &Path,
        config: &CollectionConfig,
        voided: &[String],
        verify: Verify,
    ) -> Result<Segment, String> {
        let read = |name: &str| std::fs::read(dir.join(name)).map_err(|e| format!("{name}: {e}"));
        let meta: SegmentMeta =
            serde_json::from_slice(&read(META)?).map_err(|e| format!("{META}: {e}"))?;
        if meta.format != FORMAT {
            return Err(format!("format {} is not {FORMAT}", meta.format));
        }
        for (name, check) in &meta.files {
            let path = dir.join(name);
            let matches = match verify {
                Verify::Checksums => {
                    let (crc32, len) =
                        mapped::checksum_file(&path).map_err(|e| format!("{name}: {e}"))?;
                    FileCheck { crc32, len } == *check
                }
                Verify::Lengths => {
                    std::fs::metadata(&path)
                        .map_err(|e| format!("{name}: {e}"))?
                        .len()
                        == check.len
                }
            };
            if !matches {
                return Err(format!("{name}: checksum or length does not match"));
            }
        }
        let points = read(POINTS)?;
        let rows: Vec<PointRowRef> =
            postcard::from_bytes(&points).map_err(|e| format!("{POINTS}: {e}"))?;
        let cells: Vec<ColumnCells> =
            postcard::from_bytes(&read(COLUMNS)?).map_err(|e| format!("{COLUMNS}: {e}"))?;
        let len = meta.len;
        if rows.len() != len || cells.len() != meta.columns.len() {
            return Err("points or columns do not match meta.json".into());
        }
        let mut ids = Vec::with_capacity(len);
        let mut versions = Vec::with_capacity(len);
        for row in &rows {
            ids.push(decode_id(&row.id).ok_or("points.bin: a bad point id")?);
            versions.push(row.version);
        }
        let payloads = if config.params.on_disk_payload {
            PayloadStorage::Mapped(map_payloads(dir, &points, &rows)?)
        } else {
            let parsed = rows
                .iter()
                .map(|row| serde_json::from_str(row.payload))
                .collect::<Result<Vec<Payload>, _>>()
                .map_err(|e| format!("{POINTS}: a payload does not parse: {e}"))?;
            PayloadStorage::Heap(parsed)
        };
        drop(rows);
        drop(points);
        let mut columns = BTreeMap::new();
        let mut index = SegmentIndex::default();
        for (n, (column, cells)) in meta.columns.iter().zip(cells).enumerate() {
            let name = &column.name;
            if voided.contains(name) {
                continue;
            }
            let params = config.dense(name);
            let stored = match (column.kind, cells) {
                (Kind::Dense, ColumnCells::Dense { present }) if present.len() == len => {
                    let on_disk = params.and_then(|p| p.on_disk).unwrap_or(false);
                    let file = dense_file(n);
                    let bytes = FileBytes::open(&dir.join(&file), on_disk)
                        .map_err(|e| format!("{file}: {e}"))?;
                    let values = FileSlice::new(bytes, 0, len * column.dim)
                        .map_err(|e| format!("{file}: {e}"))?;
                    VectorColumn::Dense {
                        dim: column.dim,
                        data: DenseData::Fixed(Floats::File(values)),
                        present,
                    }
                }
                (Kind::Multi, ColumnCells::Multi { starts }) if starts.len() == len + 1 => {
                    let on_disk = params.and_then(|p| p.on_disk).unwrap_or(false);
                    let file = multi_file(n);
                    let total = starts[len] as usize;
                    if starts[0] != 0 || starts.windows(2).any(|w| w[0] > w[1]) {
                        return Err(format!(
                            "{COLUMNS}: value ranges of `{name}` are inconsistent"
                        ));
                    }
                    let bytes = FileBytes::open(&dir.join(&file), on_disk)
                        .map_err(|e| format!("{file}: {e}"))?;
                    let values =
                        FileSlice::new(bytes, 0, total).map_err(|e| format!("{file}: {e}"))?;
                    VectorColumn::Multi {
                        dim: column.dim,
                        data: MultiData::Fixed(MultiValues::File {
                            starts: Arc::new(starts),
                            values,
                        }),
                    }
                }
                (Kind::Sparse, ColumnCells::Sparse { cells }) if cells.len() == len => {
                    index.sparse.insert(
                        name.clone(),
                        SparseIndex::build(
                            cells
                                .iter()
                                .enumerate()
                                .filter_map(|(o, c)| Some((o as u32, c.as_ref()?))),
                        ),
                    );
                    VectorColumn::Sparse {
                        data: Cells::Frozen(Arc::new(cells)),
                    }
                }
                _ => return Err(format!("column `{name}` does not match meta.json")),
            };
            if column.graph
                && let Some(params) = params
            {
                let file = graph_file(n);
                let on_disk = config.hnsw_for(name).on_disk;
                let bytes = FileBytes::open(&dir.join(&file), on_disk)
                    .map_err(|e| format!("{file}: {e}"))?;
                let distance = GraphDistance {
                    distance: params.distance,
                    multi_dim: (column.kind == Kind::Multi).then_some(column.dim),
                };
                let graph = HnswIndex::open(bytes, distance).map_err(|e| format!("{file}: {e}"))?;
                if graph.len() > len || graph.capacity() > len {
                    return Err(format!("{file}: links past the end of the segment"));
                }
                index.graphs.insert(name.clone(), graph);
            }
            // Codes the configuration no longer asks for stay in the file, unused.
            if column.quantized
                && column.kind == Kind::Dense
                && config.scalar_quantization(name).is_some()
                && let Some(params) = params
            {
                let file = quant_file(n);
                let bytes = FileBytes::open(&dir.join(&file), codes_mapped(config, name))
                    .map_err(|e| format!("{file}: {e}"))?;
                let codes = QuantizedVectors::open(bytes, params.distance, column.dim, len)
                    .map_err(|e| format!("{file}: {e}"))?;
                index.quantized.insert(name.clone(), codes);
            }
            columns.insert(name.clone(), stored);
        }
        let mut segment = Segment {
            id: meta.id,
            ids,
            columns,
            frozen: true,
            point_bytes: config.point_vector_bytes(),
            payloads,
            file_versions: Some(versions.clone()),
            dir: Some(dir.to_path_buf()),
            versions,
            deleted: vec![false; len],
            deleted_count: 0,
            index: Some(Arc::new(index)),
            voided: voided.iter().cloned().collect(),
            payload_index: None,
            payload_edits: 0,
            payload_touched: Default::default(),
        };
        segment.conform(config);
        Ok(segment)
    }
}

/// Which offsets of `segment` hold a payload newer than its directory's (a change made after
/// the file was written: the point's version moved on), among the live ones.
fn newer_than_file(segment: &Segment) -> impl Fn(u32) -> bool + '_ {
    move |o| {
        let o = o as usize;
        !segment.deleted[o]
            && segment
                .file_versions
                .as_ref()
                .is_none_or(|file| file[o] != segment.versions[o])
    }
}

/// The payloads of the segment in `dir` read in place from its `points.bin` (`bytes`, already
/// read, and `rows` decoded from them): each one parsed once, as every later read will parse
/// it (so that a payload the file holds but the parser refuses, too deep or with a lone
/// surrogate, refuses the segment here instead of failing a read), then the file mapped.
/// Errors name the file.
fn map_payloads(
    dir: &Path,
    bytes: &[u8],
    rows: &[PointRowRef<'_>],
) -> Result<payload_storage::MappedPayloads, String> {
    let base = bytes.as_ptr() as usize;
    let mut spans = Vec::with_capacity(rows.len());
    for row in rows {
        serde_json::from_str::<Payload>(row.payload)
            .map_err(|e| format!("{POINTS}: a payload does not parse: {e}"))?;
        let len = u32::try_from(row.payload.len())
            .map_err(|_| format!("{POINTS}: a payload over 4 GiB"))?;
        spans.push(((row.payload.as_ptr() as usize - base) as u64, len));
    }
    // Segment files never change once written (see `storage::mapped`): the mapped file holds
    // the bytes just checked. Comparing them would load every page of the mapping.
    let file = FileBytes::open(&dir.join(POINTS), true).map_err(|e| format!("{POINTS}: {e}"))?;
    if file.bytes().len() != bytes.len() {
        return Err(format!("{POINTS}: changed while the segment was opened"));
    }
    payload_storage::MappedPayloads::new(file, &spans).map_err(|e| format!("{POINTS}: {e}"))
}

impl Segment {
    /// Keeps the payloads of a segment with a directory as `on_disk` asks (Qdrant's
    /// `on_disk_payload`): read back onto the heap, or mapped again from the file with the
    /// payloads changed since it was written kept on the heap. When the file cannot be mapped
    /// (logged), the payloads stay on the heap.
    pub(super) fn store_payloads(&mut self, on_disk: bool) {
        let Some(dir) = self.dir.clone() else {
            return;
        };
        if on_disk == self.payloads.is_mapped() {
            return;
        }
        let heap = self.take_payloads();
        if !on_disk {
            self.payloads = PayloadStorage::Heap(heap);
            return;
        }
        let mapped = std::fs::read(dir.join(POINTS))
            .map_err(|e| format!("{POINTS}: {e}"))
            .and_then(|bytes| {
                let rows: Vec<PointRowRef> =
                    postcard::from_bytes(&bytes).map_err(|e| format!("{POINTS}: {e}"))?;
                if rows.len() != heap.len() {
                    return Err(format!("{POINTS}: holds another number of points"));
                }
                map_payloads(&dir, &bytes, &rows)
            });
        let payloads = match mapped {
            Ok(mapped) => PayloadStorage::mapped_keeping(mapped, heap, newer_than_file(self)),
            Err(error) => {
                tracing::warn!(path = %dir.display(), %error, "payloads stay in memory");
                PayloadStorage::Heap(heap)
            }
        };
        self.payloads = payloads;
    }
}

fn dense_file(n: usize) -> String {
    format!("dense-{n}.f32")
}

fn multi_file(n: usize) -> String {
    format!("multi-{n}.f32")
}

fn graph_file(n: usize) -> String {
    format!("graph-{n}.bin")
}

fn quant_file(n: usize) -> String {
    format!("quant-{n}.u8")
}

impl SegmentImage {
    /// Writes the segment to `dir` (which must not exist): into `<dir>.tmp`, fsynced, then
    /// renamed. A leftover `<dir>.tmp` from an interrupted write is replaced.
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        let tmp = dir.with_extension("tmp");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)?;
        }
        std::fs::create_dir_all(&tmp)?;
        let mut files = BTreeMap::new();
        let mut put = |name: String, bytes: &[u8]| -> std::io::Result<()> {
            let crc32 = mapped::write_file(&tmp.join(&name), bytes)?;
            files.insert(
                name,
                FileCheck {
                    crc32,
                    len: bytes.len() as u64,
                },
            );
            Ok(())
        };
        let to_io = |e: postcard::Error| std::io::Error::other(e.to_string());
        let rows: Vec<PointRow> = (0..self.ids.len())
            .map(|o| PointRow {
                id: encode_id(&self.ids[o]),
                version: self.versions[o],
                payload: self.payloads[o].clone(),
            })
            .collect();
        put(POINTS.into(), &postcard::to_allocvec(&rows).map_err(to_io)?)?;
        drop(rows);
        let mut columns = Vec::new();
        let mut cells = Vec::new();
        let mut graphs = Vec::new();
        let mut quantized = Vec::new();
        for (n, (name, column)) in self.columns.iter().enumerate() {
            let (kind, dim) = match column {
                FrozenColumn::Dense { dim, data, present } => {
                    put(dense_file(n), bytemuck::cast_slice(data.as_slice()))?;
                    cells.push(ColumnCells::Dense {
                        present: present.clone(),
                    });
                    (Kind::Dense, *dim)
                }
                FrozenColumn::Multi { dim, data } => {
                    let mut starts = Vec::with_capacity(self.ids.len() + 1);
                    let mut values: Vec<f32> = Vec::new();
                    starts.push(0);
                    for o in 0..self.ids.len() {
                        values.extend_from_slice(data.get(o).unwrap_or_default());
                        starts.push(values.len() as u64);
                    }
                    put(multi_file(n), bytemuck::cast_slice(&values))?;
                    cells.push(ColumnCells::Multi { starts });
                    (Kind::Multi, *dim)
                }
                FrozenColumn::Sparse { data } => {
                    cells.push(ColumnCells::Sparse {
                        cells: data.to_vec(),
                    });
                    (Kind::Sparse, 0)
                }
            };
            let graph = self.index.graphs.get(name);
            if let Some(graph) = graph {
                graphs.push((graph_file(n), graph));
            }
            let codes = self.index.quantized.get(name);
            if let Some(codes) = codes {
                quantized.push((quant_file(n), codes));
            }
            columns.push(ColumnMeta {
                name: name.clone(),
                kind,
                dim,
                graph: graph.is_some(),
                quantized: codes.is_some(),
            });
        }
        put(
            COLUMNS.into(),
            &postcard::to_allocvec(&cells).map_err(to_io)?,
        )?;
        drop(cells);
        for (file, graph) in graphs {
            let path = tmp.join(&file);
            let crc32 = graph.write(&path)?;
            let len = std::fs::metadata(&path)?.len();
            files.insert(file, FileCheck { crc32, len });
        }
        for (file, codes) in quantized {
            let path = tmp.join(&file);
            let crc32 = codes.write(&path)?;
            let len = std::fs::metadata(&path)?.len();
            files.insert(file, FileCheck { crc32, len });
        }
        let meta = SegmentMeta {
            format: FORMAT,
            id: self.id,
            len: self.ids.len(),
            columns,
            files,
        };
        let meta = serde_json::to_vec_pretty(&meta).map_err(std::io::Error::other)?;
        mapped::write_file(&tmp.join(META), &meta)?;
        mapped::sync_dir(&tmp)?;
        std::fs::rename(&tmp, dir)?;
        if let Some(parent) = dir.parent() {
            mapped::sync_dir(parent)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collection_config::VectorsConfig;
    use crate::index::hnsw_index::GraphParams;
    use crate::types::Distance;

    fn indexed_segment(config: &CollectionConfig) -> Segment {
        let mut s = Segment::new(7, config);
        for i in 0..300u64 {
            let x = i as f32;
            let mut vectors = NamedVectors::from([
                ("a".to_string(), VectorData::Dense(vec![x, 1.0])),
                (
                    "s".to_string(),
                    VectorData::Sparse(SparseVector::new(vec![i as u32 % 5], vec![x]).unwrap()),
                ),
            ]);
            if i % 2 == 0 {
                vectors.insert("m".into(), VectorData::Multi(vec![vec![x, 0.0]; 2]));
            }
            let mut payload = Payload::new();
            payload.insert("i".into(), serde_json::json!(i));
            s.push(PointId::Num(i), &vectors, payload, i + 1);
        }
        s.freeze();
        let columns = s.frozen_columns();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let mut index = SegmentIndex::default();
        let points: Vec<(u32, &[f32])> = (0..300u32)
            .map(|o| match columns["a"].get(o) {
                Some(VectorRef::Dense(v)) => (o, v),
                _ => unreachable!(),
            })
            .collect();
        let graph = HnswIndex::build(
            GraphDistance::dense(Distance::Dot),
            GraphParams {
                m: 16,
                ef_construct: 100,
            },
            &points,
            &pool,
            &std::sync::atomic::AtomicBool::new(false),
        )
        .unwrap();
        index.graphs.insert("a".into(), graph);
        if config.scalar_quantization("a").is_some() {
            let codes = QuantizedVectors::build(Distance::Dot, 2, 300, None, |o| {
                points.get(o).map(|(_, v)| *v)
            });
            index.quantized.insert("a".into(), codes);
        }
        s.set_index(Arc::new(index));
        s
    }

    /// Codes are written beside the graph, verified at open, mapped when the vector is
    /// `on_disk` unless the quantization is `always_ram`, and refused when damaged.
    #[test]
    fn quantized_codes_are_written_verified_and_mapped_as_configured() {
        let dir = tempfile::tempdir().unwrap();
        let mut id = 0;
        for (on_disk, always_ram) in [(true, false), (true, true), (false, false)] {
            let mut config = super::super::tests::config();
            if let VectorsConfig::Named(map) = &mut config.params.vectors {
                let a = map.get_mut("a").unwrap();
                a.on_disk = Some(on_disk);
                a.quantization_config = Some(serde_json::json!(
                    {"scalar": {"type": "int8", "always_ram": always_ram}}
                ));
            }
            let s = indexed_segment(&config);
            id += 1;
            let path = segment_dir(dir.path(), id);
            s.image().unwrap().write(&path).unwrap();
            let opened = Segment::open_dir(&path, &config, &[]).unwrap();
            let codes = &opened.index().unwrap().quantized["a"];
            assert_eq!(codes.is_mapped(), on_disk && !always_ram);
            let original = &s.index().unwrap().quantized["a"];
            assert_eq!(codes.codes(7), original.codes(7));
            // Opened without quantization in the configuration: the codes are not loaded.
            let plain = super::super::tests::config();
            let opened = Segment::open_dir(&path, &plain, &[]).unwrap();
            assert!(opened.index().unwrap().quantized.is_empty());
            // A damaged codes file is refused, by name.
            let file = path.join("quant-0.u8");
            let mut bytes = std::fs::read(&file).unwrap();
            let last = bytes.len() - 1;
            bytes[last] ^= 0x01;
            std::fs::write(&file, &bytes).unwrap();
            let err = Segment::open_dir(&path, &config, &[]).err().unwrap();
            assert!(err.contains("quant-0.u8"), "{err}");
        }
    }

    #[test]
    fn a_written_segment_opens_with_the_same_points_vectors_and_graph() {
        let mut config = super::super::tests::config();
        let dir = tempfile::tempdir().unwrap();
        for on_disk in [true, false] {
            if let VectorsConfig::Named(map) = &mut config.params.vectors {
                map.get_mut("a").unwrap().on_disk = Some(on_disk);
                map.get_mut("m").unwrap().on_disk = Some(on_disk);
            }
            let s = indexed_segment(&config);
            let path = segment_dir(dir.path(), if on_disk { 1 } else { 2 });
            s.image().unwrap().write(&path).unwrap();
            assert!(!path.with_extension("tmp").exists());
            let opened = Segment::open_dir(&path, &config, &[]).unwrap();
            assert!(opened.is_persisted() && opened.stage() == SegmentStage::Indexed);
            assert_eq!(opened.len(), 300);
            for o in [0u32, 1, 150, 299] {
                assert_eq!(opened.id(o), s.id(o));
                assert_eq!(opened.vectors(o), s.vectors(o));
                assert_eq!(opened.payload(o), s.payload(o));
                assert_eq!(opened.file_version(o), Some(s.version(o)));
            }
            let mapped = matches!(
                opened.columns.get("a"),
                Some(VectorColumn::Dense { data: DenseData::Fixed(Floats::File(f)), .. })
                    if f.is_mapped()
            );
            assert_eq!(
                mapped, on_disk,
                "on_disk decides whether vectors are mapped"
            );
            let multi_mapped = matches!(
                opened.columns.get("m"),
                Some(VectorColumn::Multi { data: MultiData::Fixed(MultiValues::File { values, .. }), .. })
                    if values.is_mapped()
            );
            assert_eq!(multi_mapped, on_disk, "and whether multivectors are");
            assert!(opened.has_vector("m", 0) && !opened.has_vector("m", 1));
            let index = opened.index().unwrap();
            assert_eq!(index.graphs["a"].len(), 300);
            assert_eq!(index.sparse["s"].len(), 300);
            let column = opened.column("a").unwrap();
            let vector = |o: u32| match column.get(o) {
                Some(VectorRef::Dense(v)) => Some(v),
                _ => None,
            };
            let found = index.graphs["a"].search(&[1.0, 0.0], 3, 32, &vector, &|_| true);
            assert_eq!(found, vec![299, 298, 297]);
        }
    }

    /// `on_disk_payload` decides whether an opened segment reads payloads from `points.bin`;
    /// a change made after the image was taken, or after the file was opened, is kept on the
    /// heap through adoption and through switching the setting either way.
    #[test]
    fn payloads_follow_on_disk_payload_and_keep_their_changes() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = super::super::tests::config();
        config.params.on_disk_payload = true;
        let mut s = indexed_segment(&config);
        let image = s.image().unwrap();
        // Changed while the directory is written (every payload change moves the version on).
        s.payload_mut(5).insert("late".into(), serde_json::json!(1));
        s.set_version(5, 1_000);
        let path = segment_dir(dir.path(), 7);
        image.write(&path).unwrap();
        let stored = Segment::open_dir(&path, &config, &[]).unwrap();
        assert!(stored.payloads_mapped());
        assert_eq!(stored.payload(5)["i"], serde_json::json!(5));
        assert!(stored.payload(5).get("late").is_none());
        s.adopt_stored(stored);
        let check = |s: &Segment| {
            assert_eq!(s.payload(5)["late"], serde_json::json!(1));
            for o in [0u32, 299] {
                assert_eq!(s.payload(o).len(), 1);
                assert_eq!(s.payload(o)["i"], serde_json::json!(o));
            }
        };
        assert!(s.payloads_mapped());
        assert_eq!(
            s.payloads.changed_count(),
            1,
            "only the late change is held"
        );
        check(&s);
        assert_eq!(s.payload(6)["i"], serde_json::json!(6));
        config.params.on_disk_payload = false;
        s.conform(&config);
        assert!(!s.payloads_mapped());
        check(&s);
        s.payload_mut(6).insert("late".into(), serde_json::json!(2));
        s.set_version(6, 1_001);
        config.params.on_disk_payload = true;
        s.conform(&config);
        assert!(s.payloads_mapped());
        assert_eq!(s.payloads.changed_count(), 2);
        check(&s);
        assert_eq!(s.payload(6)["late"], serde_json::json!(2));
        assert_eq!(s.payload(6)["i"], serde_json::json!(6));
        // Opened with the setting off, every payload is on the heap.
        config.params.on_disk_payload = false;
        let heap = Segment::open_dir(&path, &config, &[]).unwrap();
        assert!(!heap.payloads_mapped());
        assert_eq!(heap.payload(299)["i"], serde_json::json!(299));
    }

    /// A payload that is not a JSON object is refused at open, whichever way payloads are
    /// kept (the checksum is skipped here, as for a snapshot verified moments before).
    /// Writes [`indexed_segment`] as segment 7 under `dir`; its directory.
    fn written_segment(config: &CollectionConfig, dir: &Path) -> PathBuf {
        let path = segment_dir(dir, 7);
        indexed_segment(config)
            .image()
            .unwrap()
            .write(&path)
            .unwrap();
        path
    }

    #[test]
    fn a_payload_that_does_not_parse_is_refused_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = super::super::tests::config();
        let path = written_segment(&config, dir.path());
        let file = path.join(POINTS);
        let mut bytes = std::fs::read(&file).unwrap();
        let at = bytes.windows(5).position(|w| w == b"{\"i\":").unwrap();
        bytes[at] = b'[';
        std::fs::write(&file, &bytes).unwrap();
        for on_disk in [true, false] {
            config.params.on_disk_payload = on_disk;
            let err = Segment::open_dir_checked(&path, &config, &[], Verify::Lengths)
                .err()
                .unwrap();
            assert!(
                err.contains("points.bin") && err.contains("payload"),
                "{err}"
            );
        }
    }

    #[test]
    fn a_damaged_segment_is_refused_and_strays_are_found() {
        let config = super::super::tests::config();
        let dir = tempfile::tempdir().unwrap();
        let path = written_segment(&config, dir.path());
        std::fs::create_dir_all(dir.path().join("9.tmp")).unwrap();
        std::fs::create_dir_all(dir.path().join("8")).unwrap();
        let mut stray = stray_dirs(dir.path(), &[7]).unwrap();
        stray.sort();
        assert_eq!(stray, vec![dir.path().join("8"), dir.path().join("9.tmp")]);
        // Flip one byte of the vectors: the checksum catches it.
        let file = path.join("dense-0.f32");
        let mut bytes = std::fs::read(&file).unwrap();
        bytes[5] ^= 0x40;
        std::fs::write(&file, &bytes).unwrap();
        let err = Segment::open_dir(&path, &config, &[]).err().unwrap();
        assert!(err.contains("dense-0.f32"), "{err}");
        // A missing file is named too.
        bytes[5] ^= 0x40;
        std::fs::write(&file, &bytes).unwrap();
        assert!(Segment::open_dir(&path, &config, &[]).is_ok());
        std::fs::remove_file(path.join("points.bin")).unwrap();
        let err = Segment::open_dir(&path, &config, &[]).err().unwrap();
        assert!(err.contains("points.bin"), "{err}");
    }
}
