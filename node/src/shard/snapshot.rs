//! Shard snapshots: a consistent, self-checking image of one replica, and the tar archives
//! that carry images (shard, collection and full-storage snapshots, snapshot transfers).
//!
//! A shard image is a directory (inside an archive, a directory prefix):
//!
//! | entry | holds |
//! | --- | --- |
//! | `shard-snapshot.json` | [`ShardManifest`]: format, the collection configuration, point count, CRC32 and length of `state.bin` and of each segment's `meta.json` |
//! | `state.bin` | [`ShardImage`] (postcard): the sealed segments with their voided columns and deletions, payloads changed since a segment was written, every other point whole |
//! | `segments/<id>/...` | the sealed segments' files, byte for byte; each `meta.json` holds the CRC32 of its segment's files |
//!
//! So every byte of an image is covered by a checksum: the manifest covers `state.bin` and the
//! `meta.json` files, which cover the rest (checked when the shard opens). An image holds the
//! state after the last applied WAL record, so it needs no WAL tail: restoring it gives a shard
//! with an empty WAL.
//!
//! Archives are plain (uncompressed) tars: segment files are mostly `f32` arrays, which barely
//! compress. Unpacking accepts regular files and directories under relative, `..`-free paths
//! only, within a byte and entry budget; anything else is refused before a byte is written
//! outside the destination.

use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::collection_config::CollectionConfig;
use crate::storage::point_store::{
    FlushBatch, PayloadOverride, PointStore, StoredPoint, decode_id,
};

/// The manifest of a shard image.
pub const SHARD_MANIFEST: &str = "shard-snapshot.json";
/// The points and segment list of a shard image.
pub const SHARD_STATE: &str = "state.bin";
const FORMAT: u32 = 1;

/// Why a snapshot could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The archive or image is malformed, truncated, corrupt or unsafe (an absolute path, a
    /// `..` component, a link): the caller's input is at fault (HTTP 400).
    #[error("invalid snapshot: {0}")]
    Invalid(String),
    /// The snapshot is sound but does not fit where it is being restored (another
    /// collection's vectors): HTTP 400.
    #[error("snapshot is not compatible: {0}")]
    Incompatible(String),
    /// No such snapshot (HTTP 404).
    #[error("Not found: {0}")]
    NotFound(String),
    /// The request cannot be served here (a shard this peer holds no replica of): HTTP 400.
    #[error("Bad request: {0}")]
    BadRequest(String),
    /// A local file operation failed (HTTP 500).
    #[error("snapshot storage: {0}")]
    Io(String),
    /// A replica this peer holds cannot be read now (it did not open at start): HTTP 503.
    #[error("Service unavailable: {0}")]
    Unavailable(String),
}

impl SnapshotError {
    pub fn io(context: &Path) -> impl Fn(std::io::Error) -> SnapshotError + '_ {
        move |e| SnapshotError::Io(format!("{}: {e}", context.display()))
    }
}

/// What a shard image's manifest records.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShardManifest {
    pub format: u32,
    pub shard_id: u32,
    /// The configuration of the collection the image was taken from.
    pub config: CollectionConfig,
    /// Live points in the image.
    pub points: u64,
    /// CRC32 and length of `state.bin` and of every `segments/<id>/meta.json`, by path
    /// relative to the image.
    pub files: std::collections::BTreeMap<String, FileCheck>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileCheck {
    pub crc32: u32,
    pub len: u64,
}

/// The state of a shard beside its sealed segments' files, as of one applied WAL record.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ShardImage {
    /// Sealed segments and their voided columns.
    pub segments: Vec<(u64, Vec<String>)>,
    /// Deleted-offset bitmaps of sealed segments.
    pub deleted: Vec<(u64, Vec<u8>)>,
    /// Payloads (with versions) of points in sealed segments, newer than the segment's copy;
    /// ids as [`crate::storage::point_store::encode_id`] gives them.
    pub overrides: Vec<(Vec<u8>, PayloadOverride)>,
    /// Every point not in a sealed segment.
    pub tail: Vec<(Vec<u8>, StoredPoint)>,
}

/// Writes `state.bin` and `shard-snapshot.json` into `dir`, which already holds the image's
/// segment directories under `segments/`. Returns the manifest.
pub fn write_image(
    dir: &Path,
    shard_id: u32,
    config: &CollectionConfig,
    image: &ShardImage,
    points: u64,
) -> Result<ShardManifest, SnapshotError> {
    std::fs::create_dir_all(dir).map_err(SnapshotError::io(dir))?;
    let state = postcard::to_allocvec(image).map_err(|e| SnapshotError::Io(e.to_string()))?;
    let mut files = std::collections::BTreeMap::new();
    files.insert(SHARD_STATE.to_string(), check_of(&state));
    for (id, _) in &image.segments {
        let rel = format!("segments/{id}/meta.json");
        let path = dir.join(&rel);
        let bytes = std::fs::read(&path).map_err(SnapshotError::io(&path))?;
        files.insert(rel, check_of(&bytes));
    }
    let path = dir.join(SHARD_STATE);
    std::fs::write(&path, &state).map_err(SnapshotError::io(&path))?;
    let manifest = ShardManifest {
        format: FORMAT,
        shard_id,
        config: config.clone(),
        points,
        files,
    };
    let path = dir.join(SHARD_MANIFEST);
    let json =
        serde_json::to_vec_pretty(&manifest).map_err(|e| SnapshotError::Io(e.to_string()))?;
    std::fs::write(&path, json).map_err(SnapshotError::io(&path))?;
    Ok(manifest)
}

fn check_of(bytes: &[u8]) -> FileCheck {
    FileCheck {
        crc32: crc32fast::hash(bytes),
        len: bytes.len() as u64,
    }
}

/// Reads and checks the manifest of the shard image in `dir`.
pub fn read_manifest(dir: &Path) -> Result<ShardManifest, SnapshotError> {
    let path = dir.join(SHARD_MANIFEST);
    let bytes = std::fs::read(&path)
        .map_err(|e| SnapshotError::Invalid(format!("no readable {SHARD_MANIFEST}: {e}")))?;
    let manifest: ShardManifest = serde_json::from_slice(&bytes)
        .map_err(|e| SnapshotError::Invalid(format!("{SHARD_MANIFEST}: {e}")))?;
    if manifest.format != FORMAT {
        return Err(SnapshotError::Invalid(format!(
            "shard image format {} (this node reads {FORMAT})",
            manifest.format
        )));
    }
    Ok(manifest)
}

/// Checks that a snapshot of a collection configured as `snapshot` can be restored into one
/// configured as `target`: the same dense, multi and sparse vectors (names, sizes, distances)
/// and, unless custom-sharded, the same shard count, as Qdrant requires ("Snapshot is not
/// compatible with existing collection").
pub fn check_compatible(
    snapshot: &CollectionConfig,
    target: &CollectionConfig,
) -> Result<(), SnapshotError> {
    if snapshot.params.vectors != target.params.vectors {
        return Err(SnapshotError::Incompatible(format!(
            "the snapshot's vectors ({}) differ from the collection's ({})",
            serde_json::to_string(&snapshot.params.vectors).unwrap_or_default(),
            serde_json::to_string(&target.params.vectors).unwrap_or_default(),
        )));
    }
    let custom = |c: &CollectionConfig| {
        c.params.sharding_method == Some(crate::collection_config::ShardingMethod::Custom)
    };
    if custom(snapshot) != custom(target) {
        return Err(SnapshotError::Incompatible(
            "one of the snapshot and the collection is custom-sharded, the other is not".into(),
        ));
    }
    // Points are placed by a hash ring over the shard count: images of another count hold
    // points that this collection would look for in other shards.
    if !custom(target) && snapshot.params.shard_number != target.params.shard_number {
        return Err(SnapshotError::Incompatible(format!(
            "Collection shard number: {} Snapshot shard number: {}",
            target.params.shard_number, snapshot.params.shard_number
        )));
    }
    if snapshot.params.sparse_vectors != target.params.sparse_vectors {
        return Err(SnapshotError::Incompatible(format!(
            "the snapshot's sparse vectors ({}) differ from the collection's ({})",
            serde_json::to_string(&snapshot.params.sparse_vectors).unwrap_or_default(),
            serde_json::to_string(&target.params.sparse_vectors).unwrap_or_default(),
        )));
    }
    Ok(())
}

/// Turns the shard image in `dir` into a shard directory that [`super::LocalShard::open`]
/// opens: verifies the manifest's checksums and every segment file's, writes the point store
/// (flushed at WAL position 0) and removes the image's own files.
pub fn image_to_shard_dir(dir: &Path) -> Result<ShardManifest, SnapshotError> {
    test_pause("unpacked");
    let manifest = read_manifest(dir)?;
    for (rel, check) in &manifest.files {
        let path = dir.join(rel);
        let bytes = std::fs::read(&path)
            .map_err(|e| SnapshotError::Invalid(format!("{rel} is missing: {e}")))?;
        if check_of(&bytes) != *check {
            return Err(SnapshotError::Invalid(format!(
                "{rel} does not match its checksum"
            )));
        }
    }
    let state_path = dir.join(SHARD_STATE);
    if !manifest.files.contains_key(SHARD_STATE) {
        return Err(SnapshotError::Invalid(format!(
            "the manifest does not cover {SHARD_STATE}"
        )));
    }
    let bytes = std::fs::read(&state_path).map_err(SnapshotError::io(&state_path))?;
    let image: ShardImage = postcard::from_bytes(&bytes)
        .map_err(|e| SnapshotError::Invalid(format!("{SHARD_STATE}: {e}")))?;
    for (id, _) in &image.segments {
        if !manifest
            .files
            .contains_key(&format!("segments/{id}/meta.json"))
        {
            return Err(SnapshotError::Invalid(format!(
                "the manifest does not cover segment {id}"
            )));
        }
        crate::shard::segment::verify_files(&dir.join(format!("segments/{id}")))
            .map_err(|e| SnapshotError::Invalid(format!("segment {id}: {e}")))?;
    }
    // Nothing but the image itself: a point store, a WAL or a marker file in the archive
    // would be taken up by the shard unchecked.
    let listed: std::collections::BTreeSet<String> = image
        .segments
        .iter()
        .map(|(id, _)| id.to_string())
        .collect();
    for entry in std::fs::read_dir(dir).map_err(SnapshotError::io(dir))? {
        let entry = entry.map_err(SnapshotError::io(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !matches!(name.as_str(), SHARD_MANIFEST | SHARD_STATE | "segments") {
            return Err(SnapshotError::Invalid(format!(
                "unexpected entry `{name}` in a shard image"
            )));
        }
    }
    let segments = dir.join("segments");
    if segments.exists() {
        for entry in std::fs::read_dir(&segments).map_err(SnapshotError::io(&segments))? {
            let entry = entry.map_err(SnapshotError::io(&segments))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !listed.contains(&name) || !entry.path().is_dir() {
                return Err(SnapshotError::Invalid(format!(
                    "unexpected entry `segments/{name}` in a shard image"
                )));
            }
        }
    }
    let id_of = |bytes: &[u8]| {
        decode_id(bytes).ok_or_else(|| SnapshotError::Invalid(format!("bad point id {bytes:?}")))
    };
    let batch = FlushBatch {
        seq: 0,
        tail: image
            .tail
            .into_iter()
            .map(|(id, p)| Ok((id_of(&id)?, Some(p))))
            .collect::<Result<_, SnapshotError>>()?,
        overrides: image
            .overrides
            .into_iter()
            .map(|(id, o)| Ok((id_of(&id)?, Some(o))))
            .collect::<Result<_, SnapshotError>>()?,
        segments: Some(image.segments),
        deleted: image.deleted,
        // The shard starts its clocks when it opens; an image holds no WAL to show them.
        clocks: None,
    };
    let store_path = dir.join(super::local_shard::POINT_STORE_FILE);
    let store = PointStore::open(&store_path).map_err(|e| SnapshotError::Io(e.to_string()))?;
    store
        .commit_batch(&batch)
        .map_err(|e| SnapshotError::Io(e.to_string()))?;
    drop(store);
    for own in [SHARD_STATE, SHARD_MANIFEST] {
        let path = dir.join(own);
        std::fs::remove_file(&path).map_err(SnapshotError::io(&path))?;
    }
    Ok(manifest)
}

/// Hard-links (or, across file systems, copies) every file of directory `from` into `to`.
/// Sealed segment files never change, so a link is a consistent copy that costs no I/O.
pub fn link_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        if !entry.file_type()?.is_file() {
            continue;
        }
        let dest = to.join(entry.file_name());
        if std::fs::hard_link(entry.path(), &dest).is_err() {
            std::fs::copy(entry.path(), &dest)?;
        }
    }
    Ok(())
}

/// The SHA-256 of a file, as lowercase hex (the form of Qdrant's snapshot checksums).
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A writer that hashes what passes through it.
struct Hashing<W> {
    inner: W,
    hasher: sha2::Sha256,
    written: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A written archive: its size in bytes and SHA-256 (hex).
#[derive(Debug, Clone)]
pub struct Packed {
    pub size: u64,
    pub sha256: String,
}

/// Writes the files under `src` (recursively, paths relative to `src`, in name order) as a tar
/// archive at `dest`: written to `dest` + `.tmp`, fsynced, then renamed, so `dest` is complete
/// or absent.
pub fn pack_dir(src: &Path, dest: &Path) -> Result<Packed, SnapshotError> {
    let tmp = tmp_path(dest);
    let file = std::fs::File::create(&tmp).map_err(SnapshotError::io(&tmp))?;
    let writer = Hashing {
        inner: std::io::BufWriter::with_capacity(1 << 20, file),
        hasher: sha2::Sha256::new(),
        written: 0,
    };
    let mut builder = tar::Builder::new(writer);
    builder.mode(tar::HeaderMode::Deterministic);
    builder.follow_symlinks(false);
    let result = (|| -> std::io::Result<Hashing<_>> {
        append_tree(&mut builder, src, Path::new(""))?;
        builder.into_inner()
    })();
    let mut writer = match result {
        Ok(w) => w,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(SnapshotError::Io(format!("{}: {e}", dest.display())));
        }
    };
    let finish = (|| -> std::io::Result<()> {
        writer.flush()?;
        writer.inner.get_ref().sync_all()
    })();
    if let Err(e) = finish {
        let _ = std::fs::remove_file(&tmp);
        return Err(SnapshotError::Io(format!("{}: {e}", dest.display())));
    }
    let packed = Packed {
        size: writer.written,
        sha256: hex(&writer.hasher.finalize()),
    };
    test_pause("packed");
    std::fs::rename(&tmp, dest).map_err(SnapshotError::io(dest))?;
    if let Some(parent) = dest.parent() {
        crate::storage::mapped::sync_dir(parent).map_err(SnapshotError::io(parent))?;
    }
    Ok(packed)
}

/// Writes the files under `src` (recursively, paths relative to `src`, in name order) as a tar
/// archive into `out`, for streaming an image without writing the archive to disk.
pub fn pack_into<W: Write>(src: &Path, out: W) -> std::io::Result<W> {
    let mut builder = tar::Builder::new(out);
    builder.mode(tar::HeaderMode::Deterministic);
    builder.follow_symlinks(false);
    append_tree(&mut builder, src, Path::new(""))?;
    builder.into_inner()
}

/// The temporary name a file is written under before it is renamed into place.
pub fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

fn append_tree<W: Write>(
    builder: &mut tar::Builder<W>,
    dir: &Path,
    rel: &Path,
) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let kind = entry.file_type()?;
        let name = rel.join(entry.file_name());
        if kind.is_dir() {
            append_tree(builder, &entry.path(), &name)?;
        } else if kind.is_file() {
            builder.append_path_with_name(entry.path(), &name)?;
        }
    }
    Ok(())
}

/// Bounds on what [`unpack`] accepts.
#[derive(Debug, Clone, Copy)]
pub struct UnpackLimits {
    /// Total bytes of all files.
    pub max_bytes: u64,
    /// Number of entries.
    pub max_entries: usize,
}

impl Default for UnpackLimits {
    fn default() -> Self {
        UnpackLimits {
            max_bytes: 1 << 40,
            max_entries: 1 << 20,
        }
    }
}

/// Extracts the tar archive at `archive` into the directory `dest` (created). Only regular
/// files and directories with relative paths made of plain names are accepted; a truncated
/// archive, an absolute path, a `..` component, a link or a device entry, or more than
/// `limits` is refused with [`SnapshotError::Invalid`] (what was extracted stays in `dest`,
/// which the caller removes).
pub fn unpack(archive: &Path, dest: &Path, limits: UnpackLimits) -> Result<(), SnapshotError> {
    let file = std::fs::File::open(archive).map_err(SnapshotError::io(archive))?;
    unpack_from(
        std::io::BufReader::with_capacity(1 << 20, file),
        dest,
        limits,
    )
}

/// [`unpack`] from any reader (an archive arriving over the network).
pub fn unpack_from(
    reader: impl Read,
    dest: &Path,
    limits: UnpackLimits,
) -> Result<(), SnapshotError> {
    std::fs::create_dir_all(dest).map_err(SnapshotError::io(dest))?;
    let mut tar = tar::Archive::new(reader);
    let entries = tar
        .entries()
        .map_err(|e| SnapshotError::Invalid(format!("not a tar archive: {e}")))?;
    let (mut bytes, mut count) = (0u64, 0usize);
    for entry in entries {
        let mut entry =
            entry.map_err(|e| SnapshotError::Invalid(format!("unreadable tar entry: {e}")))?;
        count += 1;
        if count > limits.max_entries {
            return Err(SnapshotError::Invalid(format!(
                "more than {} entries",
                limits.max_entries
            )));
        }
        let path = entry
            .path()
            .map_err(|e| SnapshotError::Invalid(format!("bad entry path: {e}")))?
            .into_owned();
        let rel = safe_relative(&path)?;
        let target = dest.join(&rel);
        match entry.header().entry_type() {
            tar::EntryType::Directory => {
                std::fs::create_dir_all(&target).map_err(SnapshotError::io(&target))?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let size = entry.size();
                bytes = bytes.saturating_add(size);
                if bytes > limits.max_bytes {
                    return Err(SnapshotError::Invalid(format!(
                        "more than {} bytes of files",
                        limits.max_bytes
                    )));
                }
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent).map_err(SnapshotError::io(parent))?;
                }
                let mut out = std::fs::File::create(&target).map_err(SnapshotError::io(&target))?;
                let copied =
                    std::io::copy(&mut (&mut entry).take(size), &mut out).map_err(|e| {
                        SnapshotError::Invalid(format!("{}: truncated: {e}", rel.display()))
                    })?;
                if copied != size {
                    return Err(SnapshotError::Invalid(format!(
                        "{}: truncated ({copied} of {size} bytes)",
                        rel.display()
                    )));
                }
            }
            other => {
                return Err(SnapshotError::Invalid(format!(
                    "{}: entries of type {other:?} are not accepted",
                    rel.display()
                )));
            }
        }
    }
    if count == 0 {
        return Err(SnapshotError::Invalid("the archive is empty".into()));
    }
    Ok(())
}

/// `path` if it is relative and made of plain names only.
fn safe_relative(path: &Path) -> Result<PathBuf, SnapshotError> {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(name) => out.push(name),
            Component::CurDir => {}
            _ => {
                return Err(SnapshotError::Invalid(format!(
                    "unsafe entry path {}",
                    path.display()
                )));
            }
        }
    }
    if out.as_os_str().is_empty() {
        return Err(SnapshotError::Invalid("an entry has an empty path".into()));
    }
    Ok(out)
}

/// A test hook: `SHOAL_TEST_SNAPSHOT_PAUSE="stage=ms,..."` holds the thread for `ms` at each
/// named stage (`packed`: an archive is written but not yet renamed into place; `unpacked`: an
/// image is unpacked but not yet restored; `swapping`: a restore renamed the old replica away
/// but not yet the new one into place), so that tests can kill the node there. Unset, it
/// costs one lookup in an empty map.
pub fn test_pause(stage: &str) {
    static PAUSES: std::sync::OnceLock<std::collections::HashMap<String, u64>> =
        std::sync::OnceLock::new();
    let pauses = PAUSES.get_or_init(|| stage_pauses("SHOAL_TEST_SNAPSHOT_PAUSE"));
    if let Some(ms) = pauses.get(stage) {
        tracing::warn!(stage, ms, "test hook: pausing a snapshot operation");
        // The test hook's pause (tests kill the node meanwhile).
        std::thread::sleep(std::time::Duration::from_millis(*ms));
    }
}

/// The stages and milliseconds of a test hook's environment variable `var`, written
/// `"stage=ms,..."` (unset or malformed pairs: none).
pub fn stage_pauses(var: &str) -> std::collections::HashMap<String, u64> {
    std::env::var(var)
        .unwrap_or_default()
        .split(',')
        .filter_map(|pair| {
            let (name, ms) = pair.split_once('=')?;
            Some((name.trim().to_string(), ms.trim().parse().ok()?))
        })
        .collect()
}

/// Fsyncs every file and directory under `dir` (an unpacked image about to become a shard).
pub fn sync_tree(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            sync_tree(&entry.path())?;
        } else {
            std::fs::File::open(entry.path())?.sync_all()?;
        }
    }
    crate::storage::mapped::sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_with(entries: &[(&str, tar::EntryType, &[u8])]) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        let mut builder = tar::Builder::new(std::fs::File::create(file.path()).unwrap());
        for (path, kind, data) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(*kind);
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            // Bypass the builder's own path checks: a hostile archive does not use them.
            let name = header.as_old_mut().name.as_mut();
            name[..path.len()].copy_from_slice(path.as_bytes());
            if *kind == tar::EntryType::Symlink {
                header.set_link_name("/etc/passwd").unwrap();
            }
            header.set_cksum();
            builder.append(&header, *data).unwrap();
        }
        builder.finish().unwrap();
        file
    }

    #[test]
    fn unpack_refuses_paths_that_leave_the_destination() {
        for bad in ["../escape", "/abs/file", "a/../../b"] {
            let archive = tar_with(&[(bad, tar::EntryType::Regular, b"x")]);
            let dest = tempfile::tempdir().unwrap();
            let err = unpack(
                archive.path(),
                &dest.path().join("d"),
                UnpackLimits::default(),
            )
            .unwrap_err();
            assert!(matches!(err, SnapshotError::Invalid(_)), "{bad}: {err}");
            assert!(!dest.path().join("escape").exists());
        }
    }

    #[test]
    fn unpack_refuses_links_and_oversized_archives() {
        let archive = tar_with(&[("link", tar::EntryType::Symlink, b"")]);
        let dest = tempfile::tempdir().unwrap();
        assert!(matches!(
            unpack(archive.path(), dest.path(), UnpackLimits::default()),
            Err(SnapshotError::Invalid(_))
        ));
        let archive = tar_with(&[("big", tar::EntryType::Regular, &[7u8; 100])]);
        let limits = UnpackLimits {
            max_bytes: 99,
            max_entries: 10,
        };
        assert!(matches!(
            unpack(archive.path(), dest.path(), limits),
            Err(SnapshotError::Invalid(_))
        ));
    }

    #[test]
    fn a_packed_tree_unpacks_identically_and_truncation_is_refused() {
        let src = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(src.path().join("segments/3")).unwrap();
        std::fs::write(src.path().join("segments/3/dense-0.f32"), vec![1u8; 5000]).unwrap();
        std::fs::write(src.path().join("state.bin"), b"state").unwrap();
        let out = tempfile::tempdir().unwrap();
        let archive = out.path().join("a.snapshot");
        let packed = pack_dir(src.path(), &archive).unwrap();
        assert_eq!(packed.size, std::fs::metadata(&archive).unwrap().len());
        assert_eq!(packed.sha256, sha256_file(&archive).unwrap());
        let dest = out.path().join("x");
        unpack(&archive, &dest, UnpackLimits::default()).unwrap();
        assert_eq!(
            std::fs::read(dest.join("segments/3/dense-0.f32")).unwrap(),
            vec![1u8; 5000]
        );
        // Cut inside the large file's data.
        let bytes = std::fs::read(&archive).unwrap();
        let cut = out.path().join("cut.snapshot");
        std::fs::write(&cut, &bytes[..3000]).unwrap();
        let err = unpack(&cut, &out.path().join("y"), UnpackLimits::default()).unwrap_err();
        assert!(matches!(err, SnapshotError::Invalid(_)), "{err}");
    }
}
