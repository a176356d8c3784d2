//! This peer's member of the metadata Raft group: identity, founding or joining the cluster,
//! proposing operations (forwarded to the leader when this peer is not it) and admitting new
//! peers.
//!
//! The peer id is generated once and kept in `<dir>/peer_id`, so a restarted peer rejoins with
//! the same id and catches up from its own log.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{ClientWriteError, RaftError};
use openraft::{ChangeMembers, Raft, ServerState};
use shoal_proto::v1::cluster_service_client::ClusterServiceClient;
use shoal_proto::v1::{JoinRequest, ProposeRequest, RemoveMemberRequest};
use tokio::sync::watch;

use super::network::{PeerNetworkFactory, authorize, channel};
use super::state::{ClusterOperation, PeerId, PeerInfo};
use super::state_machine::ClusterStateView;
use super::type_config::{ClusterResult, NodeId, PeerNode, TypeConfig};

/// How long one forwarded request may take.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a proposal keeps retrying while there is no leader (an election is running).
const NO_LEADER_PATIENCE: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum ConsensusError {
    #[error("no Raft leader is known yet (an election may be running); retry shortly")]
    NoLeader,
    #[error("Raft: {0}")]
    Raft(String),
    #[error("forwarding to the leader at {uri} failed: {reason}")]
    Forward { uri: String, reason: String },
    #[error("consensus storage: {0}")]
    Storage(String),
    #[error("joining the cluster through {bootstrap} failed: {reason}")]
    Join { bootstrap: String, reason: String },
}

/// What a peer needs to take part in consensus.
#[derive(Debug, Clone)]
pub struct ConsensusSettings {
    /// Where the log, the snapshots and the peer id live.
    pub dir: PathBuf,
    /// This peer's p2p URI as the others reach it.
    pub uri: String,
    pub name: String,
    /// A member to join through; `None` founds a new cluster (or restarts a member).
    pub bootstrap: Option<String>,
    pub api_key: Option<String>,
}

pub struct ConsensusNode {
    pub peer_id: PeerId,
    pub raft: Raft<TypeConfig>,
    settings: ConsensusSettings,
    applied: watch::Receiver<Arc<ClusterStateView>>,
}

/// The peer id kept in `<dir>/peer_id`, generated and saved on first use. Blocking.
pub fn load_or_create_peer_id(dir: &Path) -> Result<u64, ConsensusError> {
    let path = dir.join("peer_id");
    match std::fs::read_to_string(&path) {
        Ok(text) => text
            .trim()
            .parse::<u64>()
            .map_err(|e| ConsensusError::Storage(format!("{} is corrupt: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // Below 2^53, so that JavaScript clients read it exactly.
            let id = rand::random_range(1..(1u64 << 53));
            let tmp = dir.join("peer_id.tmp");
            std::fs::write(&tmp, id.to_string())
                .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
                .and_then(|()| std::fs::rename(&tmp, &path))
                .map_err(|e| {
                    ConsensusError::Storage(format!("cannot write {}: {e}", path.display()))
                })?;
            Ok(id)
        }
        Err(e) => Err(ConsensusError::Storage(format!(
            "cannot read {}: {e}",
            path.display()
        ))),
    }
}

fn raft_config() -> openraft::Config {
    openraft::Config {
        cluster_name: "shoal".into(),
        heartbeat_interval: 150,
        election_timeout_min: 600,
        election_timeout_max: 1200,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(2000),
        max_in_snapshot_log_to_keep: 1000,
        ..Default::default()
    }
}

impl ConsensusNode {
    /// Opens the stores and starts the Raft member. It does not contact anyone yet: serve the
    /// p2p API first, then call [`ConsensusNode::bootstrap`].
    pub async fn open(settings: ConsensusSettings) -> Result<Arc<ConsensusNode>, ConsensusError> {
        let dir = settings.dir.clone();
        let (peer_id, log, sm) = tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&dir)
                .map_err(|e| ConsensusError::Storage(format!("{}: {e}", dir.display())))?;
            let peer_id = load_or_create_peer_id(&dir)?;
            let (log, sm) = super::open_stores(&dir.join("raft"))
                .map_err(|e| ConsensusError::Storage(e.to_string()))?;
            Ok::<_, ConsensusError>((peer_id, log, sm))
        })
        .await
        .map_err(|e| ConsensusError::Storage(e.to_string()))??;
        let applied = sm.subscribe();
        let config = raft_config()
            .validate()
            .map_err(|e| ConsensusError::Raft(e.to_string()))?;
        let network = PeerNetworkFactory {
            api_key: settings.api_key.clone(),
        };
        let raft = Raft::new(peer_id, Arc::new(config), network, log, sm)
            .await
            .map_err(|e| ConsensusError::Raft(e.to_string()))?;
        Ok(Arc::new(ConsensusNode {
            peer_id: PeerId(peer_id),
            raft,
            settings,
            applied,
        }))
    }

    fn self_node(&self) -> PeerNode {
        PeerNode {
            uri: self.settings.uri.clone(),
            name: self.settings.name.clone(),
        }
    }

    /// Founds the cluster, joins it through the bootstrap peer, or (on restart) just rejoins
    /// with the persisted state. Idempotent.
    pub async fn bootstrap(self: &Arc<Self>) -> Result<(), ConsensusError> {
        let initialized = self
            .raft
            .is_initialized()
            .await
            .map_err(|e| ConsensusError::Raft(e.to_string()))?;
        if initialized {
            tracing::info!(
                peer_id = self.peer_id.0,
                "restarted as a member of the cluster"
            );
            self.refresh_own_entry_in_background();
            return Ok(());
        }
        match self.settings.bootstrap.clone() {
            None => {
                let members = BTreeMap::from([(self.peer_id.0, self.self_node())]);
                self.raft
                    .initialize(members)
                    .await
                    .map_err(|e| ConsensusError::Raft(e.to_string()))?;
                tracing::info!(peer_id = self.peer_id.0, "founded a new cluster");
                self.refresh_own_entry_in_background();
                Ok(())
            }
            Some(bootstrap) => self.join_through(&bootstrap).await,
        }
    }

    /// Registers (or updates) this peer's entry in the cluster state once a leader is known.
    fn refresh_own_entry_in_background(self: &Arc<Self>) {
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let op = ClusterOperation::AddPeer {
                peer: me.peer_id,
                info: PeerInfo {
                    uri: me.settings.uri.clone(),
                    name: me.settings.name.clone(),
                },
            };
            let deadline = Instant::now() + Duration::from_secs(120);
            while Instant::now() < deadline {
                let current = me.applied.borrow().state.peers.get(&me.peer_id).cloned();
                if current
                    .as_ref()
                    .is_some_and(|p| p.uri == me.settings.uri && p.name == me.settings.name)
                {
                    return;
                }
                match me.propose(op.clone()).await {
                    Ok(_) => return,
                    Err(e) => {
                        tracing::debug!(error = %e, "registering this peer in cluster state; retrying");
                        // Retry backoff (liveness): the registration is a Raft operation,
                        // validated when applied.
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                }
            }
            tracing::warn!("could not register this peer in cluster state within 2 minutes");
        });
    }

    async fn join_through(&self, bootstrap: &str) -> Result<(), ConsensusError> {
        let request = JoinRequest {
            peer_id: self.peer_id.0,
            uri: self.settings.uri.clone(),
            name: self.settings.name.clone(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last_error = String::new();
        // The bootstrap peer may still be starting: retry for a while.
        while Instant::now() < deadline {
            match self.forward_join(bootstrap, request.clone()).await {
                Ok(leader) => {
                    tracing::info!(
                        peer_id = self.peer_id.0,
                        leader,
                        bootstrap,
                        "joined the cluster"
                    );
                    return Ok(());
                }
                Err(e) => {
                    last_error = e.to_string();
                    tracing::info!(error = %e, bootstrap, "join attempt failed; retrying");
                    // Retry backoff (liveness): joining is a membership change through Raft.
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
        Err(ConsensusError::Join {
            bootstrap: bootstrap.to_string(),
            reason: last_error,
        })
    }

    async fn forward_join(&self, uri: &str, request: JoinRequest) -> Result<u64, ConsensusError> {
        let fwd = |reason: String| ConsensusError::Forward {
            uri: uri.to_string(),
            reason,
        };
        let mut client = ClusterServiceClient::new(channel(uri, FORWARD_TIMEOUT).map_err(fwd)?);
        let response = client
            .join(authorize(
                tonic::Request::new(request),
                self.settings.api_key.as_deref(),
            ))
            .await
            .map_err(|s| fwd(s.message().to_string()))?;
        Ok(response.into_inner().leader_id)
    }

    /// The leader's id and node, as this peer last heard.
    pub fn leader(&self) -> Option<(NodeId, Option<PeerNode>)> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let leader = m.current_leader?;
        let node = m
            .membership_config
            .nodes()
            .find(|(id, _)| **id == leader)
            .map(|(_, n)| n.clone());
        Some((leader, node))
    }

    /// Admits a peer: as a learner first (it catches up), then as a voter, then registers it in
    /// cluster state. On a follower, forwards to the leader. Returns the leader's id.
    pub async fn join(&self, peer: PeerId, node: PeerNode) -> Result<u64, ConsensusError> {
        let deadline = Instant::now() + NO_LEADER_PATIENCE;
        loop {
            match self.leader() {
                Some((leader, _)) if leader == self.peer_id.0 => break,
                Some((_, Some(leader_node))) => {
                    let request = JoinRequest {
                        peer_id: peer.0,
                        uri: node.uri.clone(),
                        name: node.name.clone(),
                    };
                    return Box::pin(self.forward_join(&leader_node.uri, request)).await;
                }
                _ if Instant::now() < deadline => {
                    // Polling for a leader (liveness), bounded by `deadline`.
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                _ => return Err(ConsensusError::NoLeader),
            }
        }
        let raft_err = |e: RaftError<NodeId, ClientWriteError<NodeId, PeerNode>>| {
            ConsensusError::Raft(e.to_string())
        };
        self.raft
            .add_learner(peer.0, node.clone(), true)
            .await
            .map_err(raft_err)?;
        self.raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([peer.0])), false)
            .await
            .map_err(raft_err)?;
        let (result, _) = self
            .propose(ClusterOperation::AddPeer {
                peer,
                info: PeerInfo {
                    uri: node.uri,
                    name: node.name,
                },
            })
            .await?;
        result.map_err(|e| ConsensusError::Raft(e.to_string()))?;
        Ok(self.peer_id.0)
    }

    /// Takes a peer out of the Raft group (its voter and learner roles). On a follower, forwards
    /// to the leader.
    pub async fn remove_member(&self, peer: u64, timeout: Duration) -> Result<(), ConsensusError> {
        let deadline = Instant::now() + timeout.min(NO_LEADER_PATIENCE);
        loop {
            match self.leader() {
                Some((leader, _)) if leader == self.peer_id.0 => break,
                Some((_, Some(leader_node))) => {
                    let uri = leader_node.uri;
                    let fwd = |reason: String| ConsensusError::Forward {
                        uri: uri.clone(),
                        reason,
                    };
                    let mut client =
                        ClusterServiceClient::new(channel(&uri, FORWARD_TIMEOUT).map_err(fwd)?);
                    client
                        .remove_member(authorize(
                            tonic::Request::new(RemoveMemberRequest { peer_id: peer }),
                            self.settings.api_key.as_deref(),
                        ))
                        .await
                        .map_err(|s| fwd(s.message().to_string()))?;
                    return Ok(());
                }
                _ if Instant::now() < deadline => {
                    // Polling for a leader (liveness), bounded by `deadline`.
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                _ => return Err(ConsensusError::NoLeader),
            }
        }
        let is_member = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow();
            m.membership_config.nodes().any(|(id, _)| *id == peer)
        };
        if !is_member {
            return Ok(());
        }
        self.raft
            .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([peer])), false)
            .await
            .map_err(|e| ConsensusError::Raft(e.to_string()))?;
        // A removed voter may linger as a learner; drop it entirely.
        self.raft
            .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([peer])), false)
            .await
            .map_err(|e| ConsensusError::Raft(e.to_string()))?;
        Ok(())
    }

    /// Proposes an operation and waits until it is applied (here, or on the leader when this
    /// peer forwards it). Returns the operation's result and the log index it was applied at.
    pub async fn propose(
        &self,
        op: ClusterOperation,
    ) -> Result<(ClusterResult, u64), ConsensusError> {
        let deadline = Instant::now() + NO_LEADER_PATIENCE;
        loop {
            match self.raft.client_write(op.clone()).await {
                Ok(response) => return Ok((response.data, response.log_id.index)),
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(fwd))) => {
                    if let Some(node) = fwd.leader_node {
                        return self.forward_propose(&node.uri, &op).await;
                    }
                    if Instant::now() >= deadline {
                        return Err(ConsensusError::NoLeader);
                    }
                    // Polling for a leader (liveness), bounded by `deadline`.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(ConsensusError::Raft(e.to_string())),
            }
        }
    }

    async fn forward_propose(
        &self,
        uri: &str,
        op: &ClusterOperation,
    ) -> Result<(ClusterResult, u64), ConsensusError> {
        let fwd = |reason: String| ConsensusError::Forward {
            uri: uri.to_string(),
            reason,
        };
        let json = serde_json::to_vec(op).map_err(|e| fwd(e.to_string()))?;
        let mut client = ClusterServiceClient::new(channel(uri, FORWARD_TIMEOUT).map_err(fwd)?);
        let response = client
            .propose(authorize(
                tonic::Request::new(ProposeRequest {
                    operation_json: json,
                }),
                self.settings.api_key.as_deref(),
            ))
            .await
            .map_err(|s| fwd(s.message().to_string()))?
            .into_inner();
        let result: ClusterResult =
            serde_json::from_slice(&response.result_json).map_err(|e| fwd(e.to_string()))?;
        // Read-your-writes: do not answer before this peer has applied the operation too.
        self.wait_applied(response.log_index, FORWARD_TIMEOUT)
            .await?;
        Ok((result, response.log_index))
    }

    /// Waits until this peer has applied the log up to `index`.
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> Result<(), ConsensusError> {
        let mut rx = self.applied.clone();
        match tokio::time::timeout(timeout, super::wait_for_applied(&mut rx, index)).await {
            Ok(_) => Ok(()),
            Err(_) => Err(ConsensusError::Raft(format!(
                "this peer did not apply log index {index} within {timeout:?}"
            ))),
        }
    }

    /// The applied cluster state, updated after every applied entry.
    pub fn applied(&self) -> watch::Receiver<Arc<ClusterStateView>> {
        self.applied.clone()
    }

    /// Raft's view of this peer, for `GET /cluster`.
    pub fn raft_status(&self) -> RaftStatus {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        RaftStatus {
            term: m.current_term,
            commit: m.last_applied.map_or(0, |l| l.index),
            last_log_index: m.last_log_index.unwrap_or(0),
            leader: m.current_leader,
            role: match m.state {
                ServerState::Leader => "Leader",
                ServerState::Follower => "Follower",
                ServerState::Candidate => "Candidate",
                ServerState::Learner => "Learner",
                ServerState::Shutdown => "Shutdown",
            },
            is_voter: m
                .membership_config
                .voter_ids()
                .any(|id| id == self.peer_id.0),
            members: m
                .membership_config
                .nodes()
                .map(|(id, n)| (*id, n.clone()))
                .collect(),
        }
    }

    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
    }
}

#[derive(Debug, Clone)]
pub struct RaftStatus {
    pub term: u64,
    pub commit: u64,
    pub last_log_index: u64,
    pub leader: Option<u64>,
    pub role: &'static str,
    pub is_voter: bool,
    pub members: BTreeMap<u64, PeerNode>,
}
