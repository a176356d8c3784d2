//! Where the collection metadata (collections, shards, replicas, payload indexes) lives: in the
//! replicated Raft state machine in cluster mode, or in one local file when the node runs
//! alone. Both answer the same operations with the same [`ClusterState::apply`], so everything
//! above (the reconcile loop, the REST handlers, routing) has one code path for both modes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::consensus::raft_node::{ConsensusError, ConsensusNode};
use crate::consensus::type_config::LogId;
use crate::consensus::{ClusterOperation, ClusterResult, ClusterState, ClusterStateView, PeerId};

/// The local metadata file of a node that runs alone.
const LOCAL_STATE_FILE: &str = "metadata.json";

pub enum Metadata {
    /// Cluster mode: operations go through Raft.
    Raft(Arc<ConsensusNode>),
    /// A node on its own: operations apply to a file-backed state, one at a time.
    Local(LocalMetadata),
}

pub struct LocalMetadata {
    peer_id: PeerId,
    path: PathBuf,
    /// The state and the number of operations applied so far; the lock serialises writers.
    state: tokio::sync::Mutex<(ClusterState, u64)>,
    views: watch::Sender<Arc<ClusterStateView>>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct LocalFile {
    index: u64,
    state: ClusterState,
}

fn local_view(state: &ClusterState, index: u64) -> Arc<ClusterStateView> {
    Arc::new(ClusterStateView {
        state: state.clone(),
        last_applied: Some(LogId::new(Default::default(), index)),
    })
}

impl LocalMetadata {
    /// Whether `data_dir` holds collections of a node that ran alone. Blocking.
    pub fn has_collections(data_dir: &Path) -> bool {
        std::fs::read(data_dir.join(LOCAL_STATE_FILE))
            .ok()
            .and_then(|bytes| serde_json::from_slice::<LocalFile>(&bytes).ok())
            .is_some_and(|f| !f.state.collections.is_empty())
    }

    /// Loads the metadata file under `data_dir`; when there is none, starts from `initial` (the
    /// collections a node of an older layout already has on disk) and writes it. Blocking.
    pub fn open(
        data_dir: &Path,
        peer_id: PeerId,
        initial: impl FnOnce() -> ClusterState,
    ) -> anyhow::Result<LocalMetadata> {
        let path = data_dir.join(LOCAL_STATE_FILE);
        let file = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<LocalFile>(&bytes)
                .map_err(|e| anyhow::anyhow!("{} is corrupt: {e}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let file = LocalFile {
                    index: 1,
                    state: initial(),
                };
                write_atomically(&path, &file)?;
                file
            }
            Err(e) => return Err(anyhow::anyhow!("cannot read {}: {e}", path.display())),
        };
        let (views, _) = watch::channel(local_view(&file.state, file.index));
        Ok(LocalMetadata {
            peer_id,
            path,
            state: tokio::sync::Mutex::new((file.state, file.index)),
            views,
        })
    }

    async fn propose(&self, op: ClusterOperation) -> Result<(ClusterResult, u64), ConsensusError> {
        let mut guard = self.state.lock().await;
        let (state, index) = &mut *guard;
        let mut next = state.clone();
        let result = next.apply(op);
        if result.is_err() {
            return Ok((result, *index));
        }
        let file = LocalFile {
            index: *index + 1,
            state: next,
        };
        let path = self.path.clone();
        let file =
            tokio::task::spawn_blocking(move || write_atomically(&path, &file).map(|()| file))
                .await
                .map_err(|e| ConsensusError::Storage(e.to_string()))?
                .map_err(|e| ConsensusError::Storage(e.to_string()))?;
        *state = file.state;
        *index = file.index;
        self.views.send_replace(local_view(state, *index));
        Ok((result, *index))
    }
}

fn write_atomically(path: &Path, file: &LocalFile) -> anyhow::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec(file)?;
    std::fs::write(&tmp, bytes)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

impl Metadata {
    pub fn peer_id(&self) -> PeerId {
        match self {
            Metadata::Raft(node) => node.peer_id,
            Metadata::Local(local) => local.peer_id,
        }
    }

    /// Applies `op` (through Raft in cluster mode) and waits until this peer has applied it.
    /// Returns the operation's own result and the index it was applied at.
    pub async fn propose(
        &self,
        op: ClusterOperation,
    ) -> Result<(ClusterResult, u64), ConsensusError> {
        match self {
            Metadata::Raft(node) => node.propose(op).await,
            Metadata::Local(local) => local.propose(op).await,
        }
    }

    /// The applied state, updated after every applied operation.
    pub fn applied(&self) -> watch::Receiver<Arc<ClusterStateView>> {
        match self {
            Metadata::Raft(node) => node.applied(),
            Metadata::Local(local) => local.views.subscribe(),
        }
    }

    /// The current applied state.
    pub fn view(&self) -> Arc<ClusterStateView> {
        Arc::clone(&self.applied().borrow())
    }

    /// The applied state once it is at `index` or later (a view without an applied index
    /// counts as 0); `None` when that did not happen within `timeout`.
    pub async fn view_at(&self, index: u64, timeout: Duration) -> Option<Arc<ClusterStateView>> {
        let mut applied = self.applied();
        let reached = |v: &Arc<ClusterStateView>| v.applied_index().unwrap_or(0) >= index;
        tokio::time::timeout(timeout, applied.wait_for(reached))
            .await
            .ok()?
            .ok()
            .map(|v| Arc::clone(&v))
    }

    /// Tests only: makes `state` the applied state at `index`, as if operations had been
    /// applied, without persisting it.
    #[cfg(test)]
    pub fn set_view_for_test(&self, state: ClusterState, index: u64) {
        if let Metadata::Local(local) = self {
            local.views.send_replace(local_view(&state, index));
        }
    }

    pub fn consensus(&self) -> Option<&Arc<ConsensusNode>> {
        match self {
            Metadata::Raft(node) => Some(node),
            Metadata::Local(_) => None,
        }
    }

    /// How long a caller may wait for other peers to apply an operation. Liveness only: a
    /// caller whose safety depends on a peer having applied something treats the end of the
    /// patience as "not yet" and retries (the resharding finish), or keeps waiting (a
    /// transfer's forwarding, until its own peer reconciled the end); the others only spare
    /// retries to peers that route by an older layout, which the layout fence refuses.
    pub const PEER_APPLY_PATIENCE: Duration = Duration::from_secs(10);
}
