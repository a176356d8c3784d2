//! The Raft state machine of the cluster-metadata group: the applied [`ClusterState`], the last
//! applied log id and membership, and the latest snapshot (`snapshot.bin` in the consensus
//! directory).
//!
//! Durability comes from the snapshot, not from each apply: `apply` changes memory only, and
//! after a restart openraft re-applies the committed log entries that follow the snapshot (the
//! log store persists the committed id for that). So the snapshot file must never go backwards:
//! a snapshot is written to a temporary file, fsynced, renamed over the old one and the directory
//! fsynced, and a build that finishes after a newer snapshot was installed does not replace it.
//!
//! The rest of the node observes the applied state through [`StateMachineStore::subscribe`]; it
//! must not reach into the state machine itself, which openraft owns once the node starts.

// openraft's storage traits fix the error type (`StorageError`, about 200 bytes); boxing it in
// the helpers here would only unbox it again at every trait method.
#![allow(clippy::result_large_err)]

use std::fs::{self, File};
use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use openraft::{
    AnyError, EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftSnapshotBuilder, Snapshot,
    SnapshotMeta, StorageIOError, StoredMembership,
};
use parking_lot::Mutex;
use tokio::sync::watch;

use super::state::{ClusterResponse, ClusterState};
use super::type_config::{ClusterResult, Entry, LogId, NodeId, PeerNode, StorageError, TypeConfig};

/// The snapshot file's name inside the consensus directory.
pub const SNAPSHOT_FILE: &str = "snapshot.bin";
const SNAPSHOT_TMP_FILE: &str = "snapshot.bin.tmp";

type Meta = SnapshotMeta<NodeId, PeerNode>;
type Membership = StoredMembership<NodeId, PeerNode>;

/// The applied cluster state as of one log index; what the rest of the node reads.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterStateView {
    pub state: ClusterState,
    /// The last log entry applied to `state`; `None` before anything was applied.
    pub last_applied: Option<LogId>,
}

impl ClusterStateView {
    /// The index of the last applied entry; `None` before anything was applied.
    pub fn applied_index(&self) -> Option<u64> {
        self.last_applied.map(|l| l.index)
    }
}

/// Waits until the state machine has applied the entry at `index` (or a later one) and returns
/// that view. Wrap it in a timeout: it waits as long as it takes. Cancel-safe: dropping the
/// future loses nothing.
pub async fn wait_for_applied(
    views: &mut watch::Receiver<Arc<ClusterStateView>>,
    index: u64,
) -> Result<Arc<ClusterStateView>, watch::error::RecvError> {
    let view = views
        .wait_for(|v| v.applied_index().is_some_and(|i| i >= index))
        .await?;
    Ok(Arc::clone(&view))
}

fn io_error(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
    e: impl std::fmt::Display,
) -> StorageError {
    StorageIOError::new(subject, verb, AnyError::error(e)).into()
}

/// A snapshot as kept in memory and on disk: its metadata and the serialised [`ClusterState`].
#[derive(Debug, Clone)]
struct StoredSnapshot {
    meta: Meta,
    data: Vec<u8>,
}

impl StoredSnapshot {
    fn to_snapshot(&self) -> Snapshot<TypeConfig> {
        Snapshot {
            meta: self.meta.clone(),
            snapshot: Box::new(Cursor::new(self.data.clone())),
        }
    }
}

/// The snapshot file and an in-memory copy of it, shared by the state machine and its snapshot
/// builders (which openraft runs in their own tasks).
#[derive(Debug)]
struct SnapshotFile {
    dir: PathBuf,
    /// Held while the file is replaced, so that concurrent writers cannot interleave and the
    /// newest-wins check sees the file's real content.
    current: Mutex<Option<StoredSnapshot>>,
}

impl SnapshotFile {
    /// File layout: the metadata as one line of JSON, a newline, then the data bytes.
    fn load(dir: &Path) -> Result<Option<StoredSnapshot>, StorageError> {
        let subject = ErrorSubject::Snapshot(None);
        let bytes = match fs::read(dir.join(SNAPSHOT_FILE)) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error(subject, ErrorVerb::Read, e)),
        };
        let split = bytes.iter().position(|b| *b == b'\n').ok_or_else(|| {
            io_error(
                subject.clone(),
                ErrorVerb::Read,
                "snapshot file has no header",
            )
        })?;
        let meta: Meta = serde_json::from_slice(&bytes[..split])
            .map_err(|e| io_error(subject.clone(), ErrorVerb::Read, e))?;
        Ok(Some(StoredSnapshot {
            meta,
            data: bytes[split + 1..].to_vec(),
        }))
    }

    /// Makes `snapshot` the current one, durably. With `only_if_newer`, keeps the current
    /// snapshot when it covers more of the log (a slow build racing an install); returns
    /// whether `snapshot` was written.
    fn replace(&self, snapshot: StoredSnapshot, only_if_newer: bool) -> Result<bool, StorageError> {
        let subject = ErrorSubject::Snapshot(Some(snapshot.meta.signature()));
        let err = |e: std::io::Error| io_error(subject.clone(), ErrorVerb::Write, e);
        let mut current = self.current.lock();
        if only_if_newer
            && current
                .as_ref()
                .is_some_and(|c| c.meta.last_log_id > snapshot.meta.last_log_id)
        {
            return Ok(false);
        }
        let header = serde_json::to_vec(&snapshot.meta)
            .map_err(|e| io_error(subject.clone(), ErrorVerb::Write, e))?;
        let tmp = self.dir.join(SNAPSHOT_TMP_FILE);
        {
            let mut file = File::create(&tmp).map_err(err)?;
            file.write_all(&header).map_err(err)?;
            file.write_all(b"\n").map_err(err)?;
            file.write_all(&snapshot.data).map_err(err)?;
            file.sync_all().map_err(err)?;
        }
        fs::rename(&tmp, self.dir.join(SNAPSHOT_FILE)).map_err(err)?;
        // The rename itself is only durable once the directory entry is.
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(err)?;
        *current = Some(snapshot);
        Ok(true)
    }
}

/// The cluster-metadata state machine.
pub struct StateMachineStore {
    state: ClusterState,
    last_applied: Option<LogId>,
    last_membership: Membership,
    snapshot: Arc<SnapshotFile>,
    views: watch::Sender<Arc<ClusterStateView>>,
}

impl std::fmt::Debug for StateMachineStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateMachineStore")
            .field("last_applied", &self.last_applied)
            .field("last_membership", &self.last_membership)
            .finish_non_exhaustive()
    }
}

impl StateMachineStore {
    /// Opens the state machine in `dir`, starting from the snapshot there if there is one.
    /// Blocking; call it at startup.
    pub fn open(dir: &Path) -> Result<StateMachineStore, StorageError> {
        fs::create_dir_all(dir).map_err(|e| io_error(ErrorSubject::Store, ErrorVerb::Write, e))?;
        // A leftover temporary file is a snapshot write that never completed; the previous
        // snapshot is still the current one.
        match fs::remove_file(dir.join(SNAPSHOT_TMP_FILE)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error(ErrorSubject::Store, ErrorVerb::Delete, e)),
        }
        let stored = SnapshotFile::load(dir)?;
        let (state, last_applied, last_membership) = match &stored {
            Some(s) => (
                decode_state(&s.data, &s.meta)?,
                s.meta.last_log_id,
                s.meta.last_membership.clone(),
            ),
            None => (ClusterState::default(), None, Membership::default()),
        };
        let (views, _) = watch::channel(Arc::new(ClusterStateView {
            state: state.clone(),
            last_applied,
        }));
        Ok(StateMachineStore {
            state,
            last_applied,
            last_membership,
            snapshot: Arc::new(SnapshotFile {
                dir: dir.to_path_buf(),
                current: Mutex::new(stored),
            }),
            views,
        })
    }

    /// A receiver of the applied state, updated after every applied batch and installed
    /// snapshot. Take it before handing the state machine to openraft.
    pub fn subscribe(&self) -> watch::Receiver<Arc<ClusterStateView>> {
        self.views.subscribe()
    }

    /// The applied state; for tests and start-up, before openraft owns the state machine.
    pub fn state(&self) -> &ClusterState {
        &self.state
    }

    fn publish(&self) {
        let view = Arc::new(ClusterStateView {
            state: self.state.clone(),
            last_applied: self.last_applied,
        });
        // `send_replace` stores the view even while nobody subscribes, so a later subscriber
        // starts from the current state.
        self.views.send_replace(view);
    }
}

fn decode_state(data: &[u8], meta: &Meta) -> Result<ClusterState, StorageError> {
    serde_json::from_slice(data).map_err(|e| {
        io_error(
            ErrorSubject::Snapshot(Some(meta.signature())),
            ErrorVerb::Read,
            e,
        )
    })
}

/// Builds a snapshot from a copy of the state taken when openraft asked for the builder, so
/// applying can go on while the snapshot is serialised and written.
pub struct ClusterSnapshotBuilder {
    state: ClusterState,
    last_applied: Option<LogId>,
    last_membership: Membership,
    snapshot: Arc<SnapshotFile>,
}

impl RaftSnapshotBuilder<TypeConfig> for ClusterSnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let data = serde_json::to_vec(&self.state)
            .map_err(|e| io_error(ErrorSubject::Snapshot(None), ErrorVerb::Write, e))?;
        let snapshot_id = format!(
            "{}-{}",
            self.last_applied.map_or(0, |l| l.index),
            uuid::Uuid::new_v4().simple()
        );
        let stored = StoredSnapshot {
            meta: SnapshotMeta {
                last_log_id: self.last_applied,
                last_membership: self.last_membership.clone(),
                snapshot_id,
            },
            data,
        };
        let file = Arc::clone(&self.snapshot);
        let to_write = stored.clone();
        tokio::task::spawn_blocking(move || file.replace(to_write, true))
            .await
            .map_err(|e| io_error(ErrorSubject::Snapshot(None), ErrorVerb::Write, e))??;
        Ok(stored.to_snapshot())
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = ClusterSnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, Membership), StorageError> {
        Ok((self.last_applied, self.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<ClusterResult>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut results = Vec::new();
        for entry in entries {
            self.last_applied = Some(entry.log_id);
            let result = match entry.payload {
                EntryPayload::Blank => Ok(ClusterResponse::Done),
                EntryPayload::Normal(op) => {
                    let result = self.state.apply(op);
                    if let Err(error) = &result {
                        // A rejection is an ordinary outcome (the proposer gets it back), not a
                        // fault of this peer.
                        tracing::info!(index = entry.log_id.index, %error, "cluster operation rejected");
                    }
                    result
                }
                EntryPayload::Membership(membership) => {
                    self.last_membership = StoredMembership::new(Some(entry.log_id), membership);
                    Ok(ClusterResponse::Done)
                }
            };
            results.push(result);
        }
        self.publish();
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        ClusterSnapshotBuilder {
            state: self.state.clone(),
            last_applied: self.last_applied,
            last_membership: self.last_membership.clone(),
            snapshot: Arc::clone(&self.snapshot),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        // Decode before touching anything: a snapshot that does not decode changes nothing.
        let state = decode_state(&data, meta)?;
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        let file = Arc::clone(&self.snapshot);
        tokio::task::spawn_blocking(move || file.replace(stored, false))
            .await
            .map_err(|e| io_error(ErrorSubject::Snapshot(None), ErrorVerb::Write, e))??;
        self.state = state;
        self.last_applied = meta.last_log_id;
        self.last_membership = meta.last_membership.clone();
        self.publish();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        Ok(self
            .snapshot
            .current
            .lock()
            .as_ref()
            .map(StoredSnapshot::to_snapshot))
    }
}
