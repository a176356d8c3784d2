//! Tests of the Raft stores together: openraft's own storage suite, restart from the same
//! directory, and a single-node Raft that runs on them.

// The tests return openraft's (large) error type so that `?` works on the store methods.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{
    CommittedLeaderId, EntryPayload, Membership, RaftLogReader, RaftSnapshotBuilder, Vote,
};
use tempfile::TempDir;

use super::state::{ClusterOperation, ClusterResponse, ClusterState, PeerId, PeerInfo};
use super::state_machine::{ClusterStateView, wait_for_applied};
use super::type_config::{Entry, LogId, NodeId, PeerNode, StorageError, TypeConfig};
use super::{LogStore, StateMachineStore, open_stores};

struct TempDirStores;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for TempDirStores {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let (log, sm) = open_stores(dir.path())?;
        Ok((dir, log, sm))
    }
}

/// The suite builds its own runtimes, so this is a plain test.
#[test]
fn stores_pass_the_openraft_storage_suite() -> Result<(), StorageError> {
    Suite::test_all(TempDirStores)
}

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn add_peer(id: u64) -> ClusterOperation {
    ClusterOperation::AddPeer {
        peer: PeerId(id),
        info: PeerInfo {
            uri: format!("http://peer-{id}:6335"),
            name: format!("peer-{id}"),
        },
    }
}

fn normal(index: u64, op: ClusterOperation) -> Entry {
    Entry {
        log_id: log_id(1, index),
        payload: EntryPayload::Normal(op),
    }
}

fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("serialises")
}

#[tokio::test]
async fn log_store_and_state_machine_survive_reopening() -> Result<(), StorageError> {
    let dir = tempfile::tempdir().expect("temp dir");
    let membership = Membership::new(
        vec![[1u64].into()],
        BTreeMap::from([(1u64, PeerNode::default())]),
    );
    let mut entries = vec![Entry {
        log_id: log_id(1, 1),
        payload: EntryPayload::Membership(membership.clone()),
    }];
    for (i, peer) in (2..=6).zip(1..) {
        entries.push(normal(i, add_peer(peer)));
    }
    // A rejected operation is a committed entry too; it must replay as a rejection.
    entries.push(normal(
        7,
        ClusterOperation::DeleteCollection {
            name: "nope".into(),
        },
    ));
    let vote = Vote::new_committed(1, 1);

    let (state_at_snapshot, final_state, snapshot_meta) = {
        let (mut log, mut sm) = open_stores(dir.path())?;
        log.blocking_append(entries.clone()).await?;
        log.save_vote(&vote).await?;
        log.save_committed(Some(log_id(1, 7))).await?;
        sm.apply(entries[..4].to_vec()).await?;
        let snapshot = sm.get_snapshot_builder().await.build_snapshot().await?;
        let state_at_snapshot = sm.state().clone();
        log.purge(log_id(1, 2)).await?;
        let results = sm.apply(entries[4..].to_vec()).await?;
        assert!(results.last().is_some_and(|r| r.is_err()));
        (state_at_snapshot, sm.state().clone(), snapshot.meta)
    };

    let (mut log, mut sm) = open_stores(dir.path())?;
    let state = log.get_log_state().await?;
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 2)));
    assert_eq!(state.last_log_id, Some(log_id(1, 7)));
    assert_eq!(log.read_vote().await?, Some(vote));
    assert_eq!(log.read_committed().await?, Some(log_id(1, 7)));
    let kept = log.try_get_log_entries(3..=7).await?;
    assert_eq!(json(&kept), json(&entries[2..].to_vec()));
    assert!(log.try_get_log_entries(1..3).await?.is_empty());

    // The state machine restarts from its snapshot ...
    let (applied, stored_membership) = sm.applied_state().await?;
    assert_eq!(applied, Some(log_id(1, 4)));
    assert_eq!(stored_membership.membership(), &membership);
    assert_eq!(json(sm.state()), json(&state_at_snapshot));
    let current = sm.get_current_snapshot().await?.expect("snapshot on disk");
    assert_eq!(current.meta, snapshot_meta);
    // ... and replaying the committed entries after it (what openraft does at start-up)
    // reaches exactly the state before the restart.
    let mut views = sm.subscribe();
    let replay = log.try_get_log_entries(5..=7).await?;
    sm.apply(replay).await?;
    assert_eq!(json(sm.state()), json(&final_state));
    let view = wait_for_applied(&mut views, 7).await.expect("view");
    assert_eq!(json(&view.state), json(&final_state));
    Ok(())
}

#[tokio::test]
async fn truncate_removes_the_tail_and_a_bad_snapshot_changes_nothing() -> Result<(), StorageError>
{
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut log, mut sm) = open_stores(dir.path())?;
    log.blocking_append((1..=5).map(|i| normal(i, add_peer(i))))
        .await?;
    log.truncate(log_id(1, 3)).await?;
    assert_eq!(log.get_log_state().await?.last_log_id, Some(log_id(1, 2)));
    drop(log);
    let mut log = LogStore::open(dir.path())?;
    assert_eq!(log.try_get_log_entries(0..).await?.len(), 2);

    sm.apply([normal(1, add_peer(1))]).await?;
    let before = json(sm.state());
    let meta = sm.get_snapshot_builder().await.build_snapshot().await?.meta;
    let garbage = Box::new(std::io::Cursor::new(b"not json".to_vec()));
    assert!(sm.install_snapshot(&meta, garbage).await.is_err());
    assert_eq!(json(sm.state()), before);
    Ok(())
}

/// A network for a single-node group: there is nobody to talk to.
struct NoNetwork;

fn unreachable<E: std::error::Error>() -> RPCError<NodeId, PeerNode, E> {
    RPCError::Network(NetworkError::new(&std::io::Error::other(
        "single-node test has no network",
    )))
}

impl RaftNetworkFactory<TypeConfig> for NoNetwork {
    type Network = NoNetwork;
    async fn new_client(&mut self, _target: NodeId, _node: &PeerNode) -> NoNetwork {
        NoNetwork
    }
}

impl RaftNetwork<TypeConfig> for NoNetwork {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, PeerNode, RaftError<NodeId>>> {
        Err(unreachable())
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, PeerNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        Err(unreachable())
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, PeerNode, RaftError<NodeId>>> {
        Err(unreachable())
    }
}

async fn start(
    dir: &std::path::Path,
) -> (
    openraft::Raft<TypeConfig>,
    tokio::sync::watch::Receiver<Arc<ClusterStateView>>,
) {
    let (log, sm) = open_stores(dir).expect("stores open");
    let views = sm.subscribe();
    let config = openraft::Config {
        heartbeat_interval: 50,
        election_timeout_min: 150,
        election_timeout_max: 300,
        ..Default::default()
    };
    let config = Arc::new(config.validate().expect("valid raft config"));
    let raft = openraft::Raft::new(1, config, NoNetwork, log, sm)
        .await
        .expect("raft starts");
    (raft, views)
}

#[tokio::test]
async fn a_single_node_raft_applies_and_recovers_its_state() {
    let dir = tempfile::tempdir().expect("temp dir");
    let expected = {
        let (raft, mut views) = start(dir.path()).await;
        raft.initialize(BTreeMap::from([(1u64, PeerNode::default())]))
            .await
            .expect("initialize");
        let written = raft.client_write(add_peer(1)).await.expect("write");
        assert_eq!(written.data, Ok(ClusterResponse::Done));
        let rejected = raft
            .client_write(ClusterOperation::RemovePeer {
                peer: PeerId(9),
                force: false,
            })
            .await
            .expect("a rejected operation is still committed");
        assert!(rejected.data.is_err());
        // A snapshot in the middle, then more entries after it.
        raft.trigger().snapshot().await.expect("trigger snapshot");
        raft.wait(Some(Duration::from_secs(10)))
            .snapshot(rejected.log_id, "snapshot built")
            .await
            .expect("snapshot");
        let last = raft.client_write(add_peer(2)).await.expect("write");
        let view = tokio::time::timeout(
            Duration::from_secs(10),
            wait_for_applied(&mut views, last.log_id.index),
        )
        .await
        .expect("applied in time")
        .expect("view");
        assert_eq!(view.state.peers.len(), 2);
        raft.shutdown().await.expect("shutdown");
        view.state.clone()
    };

    // Restart from the same directory: snapshot plus committed entries give the same state.
    let (raft, mut views) = start(dir.path()).await;
    let view = tokio::time::timeout(Duration::from_secs(10), async {
        views
            .wait_for(|v| v.state == expected)
            .await
            .map(|v| Arc::clone(&v))
    })
    .await
    .expect("state recovered in time")
    .expect("view");
    assert_eq!(view.state, expected);
    let state: &ClusterState = &view.state;
    assert!(state.peers.contains_key(&PeerId(2)));
    raft.shutdown().await.expect("shutdown");
}
