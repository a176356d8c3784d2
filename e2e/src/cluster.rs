//! Helpers for multi-process cluster tests: start a cluster of real peers, read
//! `GET /collections/{c}/cluster`, create collections, count points, wait for the peers to
//! agree on a collection's replicas.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::node_process::{ClusterRole, NodeOptions, NodeProcess};
use crate::rest_client::Method;

pub const READY: Duration = Duration::from_secs(30);
pub const CONVERGE: Duration = Duration::from_secs(45);

pub fn start_peer(role: ClusterRole, name: &str, extra: &[&str]) -> Result<NodeProcess> {
    start_peer_env(role, name, extra, &[])
}

/// [`start_peer`] with extra environment variables for the node.
pub fn start_peer_env(
    role: ClusterRole,
    name: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Result<NodeProcess> {
    let mut extra_args: Vec<String> = vec!["--peer-name".into(), name.into()];
    extra_args.extend(extra.iter().map(|s| s.to_string()));
    NodeProcess::start_ready(
        NodeOptions {
            cluster: Some(role),
            extra_args,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..NodeOptions::default()
        },
        READY,
    )
}

/// A founder and `n - 1` joiners (each started with `extra` arguments), every one a voter
/// before this returns.
pub fn start_cluster(n: usize, extra: &[&str]) -> Result<Vec<NodeProcess>> {
    start_cluster_env(n, extra, &[])
}

/// [`start_cluster`] with extra environment variables for every node.
pub fn start_cluster_env(
    n: usize,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Result<Vec<NodeProcess>> {
    let first = start_peer_env(ClusterRole::Found, "peer-0", extra, env)?;
    let bootstrap = first.p2p_uri();
    let mut nodes = vec![first];
    for i in 1..n {
        nodes.push(start_peer_env(
            ClusterRole::Join(bootstrap.clone()),
            &format!("peer-{i}"),
            extra,
            env,
        )?);
    }
    let deadline = Instant::now() + CONVERGE;
    loop {
        let voters = nodes
            .iter()
            .filter(|node| {
                node.client()
                    .call::<Value>(Method::Get, "/cluster", None)
                    .is_ok_and(|v| {
                        v["raft_info"]["is_voter"] == json!(true)
                            && v["peers"].as_object().is_some_and(|p| p.len() == n)
                    })
            })
            .count();
        if voters == n {
            return Ok(nodes);
        }
        ensure!(Instant::now() < deadline, "the cluster did not form");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct ShardOut {
    pub shard_id: u32,
    pub state: String,
    #[serde(default)]
    pub peer_id: Option<u64>,
    #[serde(default)]
    pub shard_key: Option<Value>,
    /// Points of the replica, for local shards only.
    #[serde(default)]
    pub points_count: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CollectionCluster {
    pub peer_id: u64,
    pub shard_count: usize,
    pub local_shards: Vec<ShardOut>,
    pub remote_shards: Vec<ShardOut>,
}

impl CollectionCluster {
    /// Every replica as (shard, peer, state), the same whichever peer is asked.
    pub fn replicas(&self) -> BTreeSet<(u32, u64, String)> {
        self.local_shards
            .iter()
            .map(|s| (s.shard_id, self.peer_id, s.state.clone()))
            .chain(
                self.remote_shards
                    .iter()
                    .map(|s| (s.shard_id, s.peer_id.unwrap_or(0), s.state.clone())),
            )
            .collect()
    }
}

pub fn collection_cluster(node: &NodeProcess, name: &str) -> Result<CollectionCluster> {
    node.client()
        .call(Method::Get, &format!("/collections/{name}/cluster"), None)
}

pub fn create_collection(node: &NodeProcess, name: &str, body: Value) -> Result<()> {
    let _: bool = node
        .client()
        .call(Method::Put, &format!("/collections/{name}"), Some(&body))?;
    Ok(())
}

pub fn count(node: &NodeProcess, name: &str) -> Result<u64> {
    let v: Value = node.client().call(
        Method::Post,
        &format!("/collections/{name}/points/count"),
        Some(&json!({"exact": true})),
    )?;
    v["count"].as_u64().context("count is a number")
}

/// Polls (for up to `patience`) until, on every node, no transfer or resharding of `name` runs
/// and every replica is Active (a replica that failed has recovered).
pub fn wait_settled(nodes: &[&NodeProcess], name: &str, patience: Duration) -> Result<()> {
    let deadline = Instant::now() + patience;
    loop {
        let mut busy = None;
        for node in nodes {
            let view: Result<Value> =
                node.client()
                    .call(Method::Get, &format!("/collections/{name}/cluster"), None);
            match view {
                Ok(v) => {
                    let ops = v["resharding_operations"].as_array().map_or(0, Vec::len);
                    let transfers = v["shard_transfers"].as_array().map_or(0, Vec::len);
                    let inactive = v["local_shards"]
                        .as_array()
                        .into_iter()
                        .chain(v["remote_shards"].as_array())
                        .flatten()
                        .filter(|s| s["state"] != "Active")
                        .count();
                    if ops + transfers + inactive > 0 {
                        busy = Some(v);
                    }
                }
                Err(e) => busy = Some(json!(e.to_string())),
            }
        }
        match busy {
            None => return Ok(()),
            Some(v) => ensure!(Instant::now() < deadline, "not settled: {v}"),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Polls until every node reports the same replicas of `name`, none of them in `not_in`.
pub fn replicas_agree(
    nodes: &[&NodeProcess],
    name: &str,
    not_in: &[&str],
) -> Result<BTreeSet<(u32, u64, String)>> {
    let deadline = Instant::now() + CONVERGE;
    let mut last = String::new();
    while Instant::now() < deadline {
        let views: Result<Vec<_>> = nodes.iter().map(|n| collection_cluster(n, name)).collect();
        match views {
            Ok(views) => {
                let first = views[0].replicas();
                if views.iter().all(|v| v.replicas() == first)
                    && first.iter().all(|(_, _, s)| !not_in.contains(&s.as_str()))
                {
                    return Ok(first);
                }
                last = format!(
                    "{:?}",
                    views.iter().map(|v| v.replicas()).collect::<Vec<_>>()
                );
            }
            Err(e) => last = format!("{e:#}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("peers do not agree on the replicas of `{name}`: {last}")
}
