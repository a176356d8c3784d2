//! The table of contents: every collection on this peer, on disk under
//! `<data-dir>/collections/<name>/` with a `config.json` and one directory per shard.
//!
//! A collection directory counts only once its `config.json` exists, and that file is written
//! last (to a temporary name, then renamed), so a crash half-way through creating a collection
//! leaves a directory that the next start removes. Dropping renames the directory away first for
//! the same reason.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;

use crate::cluster::CollectionError;
use crate::cluster::collection::Collection;
use crate::collection_config::CollectionConfig;
use crate::shard::local_shard::IndexBuilder;
use crate::shard::maintenance;
use crate::storage::wal::SyncMode;

const CONFIG_FILE: &str = "config.json";
pub const MAX_COLLECTION_NAME_LEN: usize = 255;

pub struct TableOfContent {
    dir: PathBuf,
    collections: RwLock<HashMap<String, Arc<Collection>>>,
    /// Serialises creation and deletion, which touch the disk outside the map's lock.
    lifecycle: parking_lot::Mutex<()>,
    builder: Arc<IndexBuilder>,
    sync: SyncMode,
}

pub fn validate_collection_name(name: &str) -> Result<(), CollectionError> {
    let bad = name.is_empty()
        || name.len() > MAX_COLLECTION_NAME_LEN
        || name.starts_with('.')
        || name
            .chars()
            .any(|c| matches!(c, '/' | '\\' | '\0') || c.is_control());
    if bad {
        return Err(CollectionError::BadInput(format!(
            "collection name `{name}` is invalid: use 1 to {MAX_COLLECTION_NAME_LEN} characters, \
             no slashes or control characters, not starting with a dot"
        )));
    }
    Ok(())
}

impl TableOfContent {
    /// Loads every complete collection under `<data_dir>/collections` and starts their
    /// background work. Must run inside a tokio runtime.
    pub fn open(
        data_dir: &Path,
        builder: Arc<IndexBuilder>,
        sync: SyncMode,
    ) -> Result<TableOfContent, CollectionError> {
        let dir = data_dir.join("collections");
        fs::create_dir_all(&dir).map_err(CollectionError::storage)?;
        let mut collections = HashMap::new();
        for entry in fs::read_dir(&dir).map_err(CollectionError::storage)? {
            let entry = entry.map_err(CollectionError::storage)?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let config_path = path.join(CONFIG_FILE);
            if name.starts_with('.') || !config_path.exists() {
                tracing::warn!(path = %path.display(), "removing an incomplete or dropped collection directory");
                fs::remove_dir_all(&path).map_err(CollectionError::storage)?;
                continue;
            }
            let text = fs::read_to_string(&config_path).map_err(CollectionError::storage)?;
            let config: CollectionConfig = serde_json::from_str(&text)
                .map_err(|e| CollectionError::Storage(format!("{}: {e}", config_path.display())))?;
            let collection = Arc::new(Collection::open(&name, &path, config, sync)?);
            for shard in collection.shards() {
                maintenance::spawn(Arc::clone(shard), Arc::clone(&builder));
            }
            collections.insert(name, collection);
        }
        tracing::info!(count = collections.len(), "collections loaded");
        Ok(TableOfContent {
            dir,
            collections: RwLock::new(collections),
            lifecycle: parking_lot::Mutex::new(()),
            builder,
            sync,
        })
    }

    pub fn get(&self, name: &str) -> Result<Arc<Collection>, CollectionError> {
        self.collections
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| CollectionError::NotFound(name.to_string()))
    }

    pub fn exists(&self, name: &str) -> bool {
        self.collections.read().contains_key(name)
    }

    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.collections.read().keys().cloned().collect();
        names.sort();
        names
    }

    /// Creates a collection. Blocking (creates files). Fails with `AlreadyExists` and changes
    /// nothing when the name is taken.
    pub fn create(&self, name: &str, config: CollectionConfig) -> Result<(), CollectionError> {
        validate_collection_name(name)?;
        config.validate().map_err(CollectionError::BadInput)?;
        let _guard = self.lifecycle.lock();
        if self.exists(name) {
            return Err(CollectionError::AlreadyExists(name.to_string()));
        }
        let path = self.dir.join(name);
        if path.exists() {
            fs::remove_dir_all(&path).map_err(CollectionError::storage)?;
        }
        fs::create_dir_all(&path).map_err(CollectionError::storage)?;
        let result = Collection::open(name, &path, config.clone(), self.sync)
            .and_then(|collection| write_config(&path, &config).map(|()| collection));
        let collection = match result {
            Ok(c) => Arc::new(c),
            Err(e) => {
                let _ = fs::remove_dir_all(&path);
                return Err(e);
            }
        };
        for shard in collection.shards() {
            maintenance::spawn(Arc::clone(shard), Arc::clone(&self.builder));
        }
        self.collections
            .write()
            .insert(name.to_string(), collection);
        tracing::info!(collection = name, "collection created");
        Ok(())
    }

    /// Drops a collection and its files. Returns whether it existed. Blocking.
    pub fn delete(&self, name: &str) -> Result<bool, CollectionError> {
        let _guard = self.lifecycle.lock();
        let Some(collection) = self.collections.write().remove(name) else {
            return Ok(false);
        };
        collection.cancel();
        let path = self.dir.join(name);
        let doomed = self
            .dir
            .join(format!(".deleted-{}-{name}", uuid::Uuid::new_v4()));
        fs::rename(&path, &doomed).map_err(CollectionError::storage)?;
        if let Err(e) = fs::remove_dir_all(&doomed) {
            tracing::warn!(error = %e, path = %doomed.display(), "could not remove a dropped collection; it is removed on the next start");
        }
        tracing::info!(collection = name, "collection deleted");
        Ok(true)
    }

    /// Flushes every collection; used on shutdown.
    pub fn flush_all(&self) {
        let collections: Vec<Arc<Collection>> = self.collections.read().values().cloned().collect();
        for c in collections {
            if let Err(e) = c.flush() {
                tracing::error!(collection = c.name(), error = %e, "flush on shutdown failed; the WAL still holds the data");
            }
            c.cancel();
        }
    }
}

fn write_config(dir: &Path, config: &CollectionConfig) -> Result<(), CollectionError> {
    let tmp = dir.join(format!("{CONFIG_FILE}.tmp"));
    let text = serde_json::to_vec_pretty(config).map_err(CollectionError::storage)?;
    let mut file = fs::File::create(&tmp).map_err(CollectionError::storage)?;
    file.write_all(&text).map_err(CollectionError::storage)?;
    file.sync_all().map_err(CollectionError::storage)?;
    fs::rename(&tmp, dir.join(CONFIG_FILE)).map_err(CollectionError::storage)?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(CollectionError::storage)
}
