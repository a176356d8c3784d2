//! Collection, shard and full-storage snapshots on this peer: where they live, how they are
//! named, listed, created and unpacked. Recovery's cluster steps (creating a missing
//! collection, replica states by priority) are the API layer's, through consensus.
//!
//! Layout under `<data_dir>/snapshots` (Qdrant's `snapshots_path`, same names):
//!
//! | snapshot | file |
//! | --- | --- |
//! | collection | `<collection>/<collection>-<peer>-<YYYY-MM-DD-HH-MM-SS>.snapshot` |
//! | shard | `<collection>/shards/<shard>/<collection>-shard-<shard>-<YYYY-MM-DD-HH-MM-SS>.snapshot` |
//! | full storage | `full-snapshot-<YYYY-MM-DD-HH-MM-SS>.snapshot` |
//!
//! Each has a `<file>.checksum` beside it: the SHA-256 of the file, lowercase hex. Archives are
//! built in `.tmp/` and renamed into place, so a listed snapshot is always complete; `.tmp/` and
//! half-written `*.tmp` files are removed when the node starts.
//!
//! A collection snapshot's archive holds `collection-snapshot.json` ([`CollectionManifest`])
//! and, for every replica this peer holds, `shards/<id>/` with the shard image (see
//! [`crate::shard::snapshot`]). A full snapshot holds `full-snapshot.json`
//! ([`FullManifest`]) and one collection snapshot archive per collection.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::cluster::collection::Collection;
use crate::cluster::toc::TableOfContent;
use crate::collection_config::CollectionConfig;
use crate::collection_config::PayloadIndexEntry;
use crate::consensus::state::ShardKey;
use crate::shard::snapshot::{
    SHARD_MANIFEST, ShardManifest, SnapshotError, UnpackLimits, pack_dir, unpack,
};

/// The snapshot directory inside the data directory.
pub const SNAPSHOTS_DIR: &str = "snapshots";
/// Staging, under a name no collection can have (collection names never start with a dot).
const TMP_DIR: &str = ".tmp";
const COLLECTION_MANIFEST: &str = "collection-snapshot.json";
const FULL_MANIFEST: &str = "full-snapshot.json";
const FORMAT: u32 = 1;
const EXTENSION: &str = "snapshot";

/// A stored snapshot, as Qdrant's `SnapshotDescription` gives it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SnapshotDescription {
    pub name: String,
    /// When the file was written, UTC, `YYYY-MM-DDTHH:MM:SS` (no zone, as Qdrant).
    pub creation_time: Option<String>,
    /// Bytes.
    pub size: u64,
    /// SHA-256 of the file, lowercase hex; absent when the file has no `.checksum` beside it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
}

/// What a collection snapshot records beside its shard images.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CollectionManifest {
    pub format: u32,
    pub collection: String,
    pub config: CollectionConfig,
    #[serde(default)]
    pub payload_schema: BTreeMap<String, PayloadIndexEntry>,
    /// The shards whose images the archive holds, with their shard keys.
    pub shards: BTreeMap<u32, Option<ShardKey>>,
}

/// What a full-storage snapshot records beside its collection snapshots.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FullManifest {
    pub format: u32,
    /// Collection name → the collection snapshot file in the archive.
    pub collections: BTreeMap<String, String>,
    /// Alias → collection.
    pub aliases: BTreeMap<String, String>,
}

/// A directory under `snapshots/.tmp`, removed when dropped.
pub struct Staging(PathBuf);

impl Staging {
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.0.display(), error = %e, "could not remove a snapshot staging directory; it is removed on the next start");
        }
    }
}

/// The snapshot directories of this peer.
#[derive(Debug, Clone)]
pub struct SnapshotStore {
    root: PathBuf,
    /// Held from choosing a new snapshot's name until it is in place: two snapshots created
    /// in the same second get different names instead of writing over each other.
    naming: Arc<parking_lot::Mutex<()>>,
}

impl SnapshotStore {
    /// The store under `<data_dir>/snapshots`. Removes what an interrupted snapshot left
    /// behind (the `.tmp/` directory, `*.tmp` files): nothing there is complete.
    pub fn open(data_dir: &Path) -> std::io::Result<SnapshotStore> {
        let root = data_dir.join(SNAPSHOTS_DIR);
        std::fs::create_dir_all(&root)?;
        let tmp = root.join(TMP_DIR);
        match std::fs::remove_dir_all(&tmp) {
            Ok(()) => {
                tracing::info!(path = %tmp.display(), "removed an interrupted snapshot's files")
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        remove_partial_files(&root)?;
        Ok(SnapshotStore {
            root,
            naming: Arc::new(parking_lot::Mutex::new(())),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the snapshots of collection `name` are.
    pub fn collection_dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Where the snapshots of shard `shard` of collection `name` are.
    pub fn shard_dir(&self, name: &str, shard: u32) -> PathBuf {
        self.root.join(name).join("shards").join(shard.to_string())
    }

    /// A fresh, empty staging directory.
    pub fn staging(&self) -> Result<Staging, SnapshotError> {
        let path = self
            .root
            .join(TMP_DIR)
            .join(uuid::Uuid::new_v4().to_string());
        std::fs::create_dir_all(&path).map_err(SnapshotError::io(&path))?;
        Ok(Staging(path))
    }

    /// The snapshots in `dir` (files ending in `.snapshot`), by name.
    pub fn list(&self, dir: &Path) -> Result<Vec<SnapshotDescription>, SnapshotError> {
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(SnapshotError::io(dir)(e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(SnapshotError::io(dir))?;
            let path = entry.path();
            if entry
                .file_type()
                .map_err(SnapshotError::io(&path))?
                .is_file()
                && path.extension().is_some_and(|e| e == EXTENSION)
            {
                out.push(describe(&path)?);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// The path of snapshot `name` in `dir`: a plain file name of an existing file, else
    /// [`SnapshotError::NotFound`] (so `../x` finds nothing, as in Qdrant).
    pub fn find(&self, dir: &Path, name: &str) -> Result<PathBuf, SnapshotError> {
        let not_found = || SnapshotError::NotFound(format!("Snapshot {name} not found"));
        if !is_plain_name(name) {
            return Err(not_found());
        }
        let path = dir.join(name);
        if path.is_file() {
            Ok(path)
        } else {
            Err(not_found())
        }
    }

    /// Removes snapshot `name` from `dir` with its checksum file.
    pub fn delete(&self, dir: &Path, name: &str) -> Result<(), SnapshotError> {
        let path = self.find(dir, name)?;
        std::fs::remove_file(&path).map_err(SnapshotError::io(&path))?;
        let sidecar = checksum_path(&path);
        match std::fs::remove_file(&sidecar) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(SnapshotError::io(&sidecar)(e));
            }
            _ => {}
        }
        Ok(())
    }

    /// Packs `staged` into `dir` as a new snapshot named `<base>-<timestamp>.snapshot` (a
    /// `-<n>` suffix when a snapshot of that second exists), with its checksum file.
    fn publish(
        &self,
        staged: &Path,
        dir: &Path,
        base: &str,
    ) -> Result<SnapshotDescription, SnapshotError> {
        std::fs::create_dir_all(dir).map_err(SnapshotError::io(dir))?;
        // Packed beside the staging directory, then renamed into place with its checksum.
        let packed_path = staged.with_extension(EXTENSION);
        let packed = pack_dir(staged, &packed_path)?;
        let _naming = self.naming.lock();
        let stamp = chrono::Utc::now().format("%Y-%m-%d-%H-%M-%S");
        let mut name = format!("{base}-{stamp}.{EXTENSION}");
        let mut n = 1;
        while dir.join(&name).exists() || checksum_path(&dir.join(&name)).exists() {
            name = format!("{base}-{stamp}-{n}.{EXTENSION}");
            n += 1;
        }
        let dest = dir.join(&name);
        write_checksum(&dest, &packed.sha256)?;
        if let Err(e) = std::fs::rename(&packed_path, &dest) {
            let _ = std::fs::remove_file(checksum_path(&dest));
            let _ = std::fs::remove_file(&packed_path);
            return Err(SnapshotError::io(&dest)(e));
        }
        crate::storage::mapped::sync_dir(dir).map_err(SnapshotError::io(dir))?;
        describe(&dest)
    }
}

/// The `.checksum` file beside a snapshot.
pub fn checksum_path(snapshot: &Path) -> PathBuf {
    let mut name = snapshot.file_name().unwrap_or_default().to_os_string();
    name.push(".checksum");
    snapshot.with_file_name(name)
}

fn write_checksum(snapshot: &Path, sha256: &str) -> Result<(), SnapshotError> {
    let path = checksum_path(snapshot);
    let tmp = crate::shard::snapshot::tmp_path(&path);
    std::fs::write(&tmp, sha256).map_err(SnapshotError::io(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(SnapshotError::io(&path))
}

/// A name without separators or `..`, as snapshot and collection names must be.
pub fn is_plain_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\\', '\0'])
}

fn describe(path: &Path) -> Result<SnapshotDescription, SnapshotError> {
    let meta = std::fs::metadata(path).map_err(SnapshotError::io(path))?;
    let created = meta.created().or_else(|_| meta.modified()).ok();
    let creation_time = created
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .and_then(|d| chrono::DateTime::from_timestamp(d.as_secs() as i64, 0))
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S").to_string());
    let checksum = std::fs::read_to_string(checksum_path(path))
        .ok()
        .map(|s| s.trim().to_string());
    Ok(SnapshotDescription {
        name: path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned(),
        creation_time,
        size: meta.len(),
        checksum,
    })
}

fn remove_partial_files(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            remove_partial_files(&path)?;
        } else if path.extension().is_some_and(|e| e == "tmp") {
            tracing::info!(path = %path.display(), "removing a half-written snapshot file");
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

/// Writes a collection snapshot image of `collection` (every replica on this peer) into
/// `into`. Returns its manifest.
fn collection_image(
    collection: &Collection,
    into: &Path,
) -> Result<CollectionManifest, SnapshotError> {
    // A snapshot without a replica this peer should hold would restore as a collection that
    // silently lost that shard's points.
    if let Some((id, failure)) = collection.failed_replicas().into_iter().next() {
        return Err(SnapshotError::Unavailable(format!(
            "the replica of shard {id} on this peer did not open ({}); a snapshot of this peer's replicas would miss it",
            failure.reason
        )));
    }
    let layout = collection.layout();
    let mut shards = BTreeMap::new();
    for (id, shard) in collection.local_shards() {
        let dir = into.join("shards").join(id.to_string());
        shard.snapshot_image(id, &dir)?;
        shards.insert(id, layout.get(&id).and_then(|s| s.key.clone()));
    }
    let manifest = CollectionManifest {
        format: FORMAT,
        collection: collection.name().to_string(),
        config: (*collection.config()).clone(),
        payload_schema: collection.payload_schema(),
        shards,
    };
    let path = into.join(COLLECTION_MANIFEST);
    let json =
        serde_json::to_vec_pretty(&manifest).map_err(|e| SnapshotError::Io(e.to_string()))?;
    std::fs::write(&path, json).map_err(SnapshotError::io(&path))?;
    Ok(manifest)
}

/// Creates a snapshot of `collection` (the replicas on this peer). Blocking.
pub fn create_collection_snapshot(
    store: &SnapshotStore,
    collection: &Collection,
    peer: u64,
) -> Result<SnapshotDescription, SnapshotError> {
    let staging = store.staging()?;
    collection_image(collection, staging.path())?;
    let base = format!("{}-{peer}", collection.name());
    store.publish(
        staging.path(),
        &store.collection_dir(collection.name()),
        &base,
    )
}

/// Creates a snapshot of this peer's replica of shard `shard`. Blocking.
pub fn create_shard_snapshot(
    store: &SnapshotStore,
    collection: &Collection,
    shard: u32,
) -> Result<SnapshotDescription, SnapshotError> {
    if !collection.holds_replica(shard) {
        return Err(not_local(shard));
    }
    let local = collection
        .local_for_request(shard)
        .map_err(|e| SnapshotError::Unavailable(e.to_string()))?;
    let staging = store.staging()?;
    local.snapshot_image(shard, staging.path())?;
    let base = format!("{}-shard-{shard}", collection.name());
    store.publish(
        staging.path(),
        &store.shard_dir(collection.name(), shard),
        &base,
    )
}

/// The error for a shard this peer holds no replica of (Qdrant's wording).
pub fn not_local(shard: u32) -> SnapshotError {
    SnapshotError::BadRequest(format!("Shard {shard} is not a local shard"))
}

/// Creates a snapshot of every collection's replicas on this peer and of the aliases.
/// Blocking.
pub fn create_full_snapshot(
    store: &SnapshotStore,
    toc: &Arc<TableOfContent>,
) -> Result<SnapshotDescription, SnapshotError> {
    let staging = store.staging()?;
    let mut collections = BTreeMap::new();
    for name in toc.names() {
        let Ok(collection) = toc.get(&name) else {
            continue; // dropped meanwhile
        };
        let image = store.staging()?;
        match collection_image(&collection, image.path()) {
            Ok(_) => {}
            // Deleted while its image was taken: it is not part of the snapshot.
            Err(_) if !toc.exists(&name) => continue,
            Err(e) => return Err(e),
        }
        let file = format!("{name}.{EXTENSION}");
        pack_dir(image.path(), &staging.path().join(&file))?;
        collections.insert(name, file);
    }
    let manifest = FullManifest {
        format: FORMAT,
        collections,
        aliases: toc.aliases().into_iter().collect(),
    };
    let path = staging.path().join(FULL_MANIFEST);
    let json =
        serde_json::to_vec_pretty(&manifest).map_err(|e| SnapshotError::Io(e.to_string()))?;
    std::fs::write(&path, json).map_err(SnapshotError::io(&path))?;
    store.publish(staging.path(), store.root(), "full-snapshot")
}

/// An unpacked collection snapshot.
pub struct UnpackedCollection {
    pub staging: Staging,
    pub manifest: CollectionManifest,
}

impl UnpackedCollection {
    /// The directory of shard `id`'s image.
    pub fn shard_dir(&self, id: u32) -> PathBuf {
        self.staging.path().join("shards").join(id.to_string())
    }
}

/// Unpacks and checks a collection snapshot archive.
pub fn unpack_collection(
    store: &SnapshotStore,
    archive: &Path,
) -> Result<UnpackedCollection, SnapshotError> {
    let staging = store.staging()?;
    unpack(archive, staging.path(), UnpackLimits::default())?;
    let path = staging.path().join(COLLECTION_MANIFEST);
    let bytes = std::fs::read(&path).map_err(|_| {
        if staging.path().join(SHARD_MANIFEST).exists() {
            SnapshotError::Invalid(
                "this is a shard snapshot; recover it through the shard's snapshot endpoint".into(),
            )
        } else {
            SnapshotError::Invalid(format!("the archive has no {COLLECTION_MANIFEST}"))
        }
    })?;
    let manifest: CollectionManifest = serde_json::from_slice(&bytes)
        .map_err(|e| SnapshotError::Invalid(format!("{COLLECTION_MANIFEST}: {e}")))?;
    if manifest.format != FORMAT {
        return Err(SnapshotError::Invalid(format!(
            "collection snapshot format {} (this node reads {FORMAT})",
            manifest.format
        )));
    }
    for id in manifest.shards.keys() {
        let dir = staging.path().join("shards").join(id.to_string());
        let shard = crate::shard::snapshot::read_manifest(&dir)?;
        if shard.shard_id != *id {
            return Err(SnapshotError::Invalid(format!(
                "shards/{id} holds an image of shard {}",
                shard.shard_id
            )));
        }
    }
    Ok(UnpackedCollection { staging, manifest })
}

/// Unpacks and checks a shard snapshot archive.
pub fn unpack_shard(
    store: &SnapshotStore,
    archive: &Path,
) -> Result<(Staging, ShardManifest), SnapshotError> {
    let file = std::fs::File::open(archive).map_err(SnapshotError::io(archive))?;
    unpack_shard_from(store, std::io::BufReader::with_capacity(1 << 20, file))
}

/// [`unpack_shard`] from any reader (an archive arriving over the network).
pub fn unpack_shard_from(
    store: &SnapshotStore,
    reader: impl std::io::Read,
) -> Result<(Staging, ShardManifest), SnapshotError> {
    let staging = store.staging()?;
    crate::shard::snapshot::unpack_from(reader, staging.path(), UnpackLimits::default())?;
    if staging.path().join(COLLECTION_MANIFEST).exists() {
        return Err(SnapshotError::Invalid(
            "this is a collection snapshot; recover it through the collection's snapshot endpoint"
                .into(),
        ));
    }
    let manifest = crate::shard::snapshot::read_manifest(staging.path())?;
    Ok((staging, manifest))
}
