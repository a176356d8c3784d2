//! Cluster membership with real `shoal-node` processes on loopback: founding and joining,
//! losing the Raft leader to SIGKILL, catching up after a restart, removing peers, peers
//! authenticating to each other with the API key, and clients the key check refuses before
//! their request body arrived being told that their connection ends.
//!
//! Every wait is a poll with a deadline on what `GET /cluster` reports; nodes are killed by the
//! harness when a test ends, also when it fails.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use shoal_e2e::{ClusterRole, Method, NodeOptions, NodeProcess};

const READY: Duration = Duration::from_secs(30);
const CONVERGE: Duration = Duration::from_secs(45);

#[derive(Debug, Clone, Deserialize, PartialEq)]
struct PeerOut {
    uri: String,
    name: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
struct RaftInfo {
    term: u64,
    commit: u64,
    leader: Option<u64>,
    role: String,
    is_voter: bool,
}

#[derive(Debug, Clone, Deserialize)]
struct ClusterInfo {
    status: String,
    peer_id: u64,
    peers: BTreeMap<String, PeerOut>,
    raft_info: RaftInfo,
}

fn cluster_info(node: &NodeProcess) -> Result<ClusterInfo> {
    node.client().call(Method::Get, "/cluster", None)
}

fn start(role: ClusterRole, name: &str, api_key: Option<&str>) -> Result<NodeProcess> {
    NodeProcess::start_ready(
        NodeOptions {
            cluster: Some(role),
            api_key: api_key.map(str::to_string),
            extra_args: vec!["--peer-name".into(), name.into()],
            ..NodeOptions::default()
        },
        READY,
    )
}

/// Starts a founder and `n - 1` joiners.
fn start_cluster(n: usize, api_key: Option<&str>) -> Result<Vec<NodeProcess>> {
    let first = start(ClusterRole::Found, "peer-0", api_key)?;
    let bootstrap = first.p2p_uri();
    let mut nodes = vec![first];
    for i in 1..n {
        nodes.push(start(
            ClusterRole::Join(bootstrap.clone()),
            &format!("peer-{i}"),
            api_key,
        )?);
    }
    Ok(nodes)
}

/// Polls until every listed node reports `peers` peers, the same leader, and the same commit
/// index; returns their views.
fn converged(nodes: &[&NodeProcess], peers: usize, deadline: Instant) -> Result<Vec<ClusterInfo>> {
    let mut last = String::new();
    while Instant::now() < deadline {
        let views: Result<Vec<ClusterInfo>> = nodes.iter().map(|n| cluster_info(n)).collect();
        match views {
            Ok(views) => {
                let leader = views[0].raft_info.leader;
                let commit = views[0].raft_info.commit;
                let agree = leader.is_some()
                    && views.iter().all(|v| {
                        v.peers.len() == peers
                            && v.raft_info.leader == leader
                            && v.raft_info.commit == commit
                            && v.raft_info.is_voter
                            && v.peers == views[0].peers
                    });
                if agree {
                    return Ok(views);
                }
                last = format!("{views:#?}");
            }
            Err(e) => last = format!("{e:#}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("the cluster did not converge on {peers} peers; last views: {last}")
}

#[test]
fn three_peers_form_a_cluster_and_survive_losing_the_leader() -> Result<()> {
    let mut nodes = start_cluster(3, None)?;
    let views = converged(
        &nodes.iter().collect::<Vec<_>>(),
        3,
        Instant::now() + CONVERGE,
    )?;
    assert!(views.iter().all(|v| v.status == "enabled"));
    let names: Vec<&str> = views[0].peers.values().map(|p| p.name.as_str()).collect();
    assert_eq!(names.len(), 3);
    for name in ["peer-0", "peer-1", "peer-2"] {
        assert!(names.contains(&name), "{name} missing from {names:?}");
    }
    for (node, view) in nodes.iter().zip(&views) {
        assert_eq!(view.peers[&view.peer_id.to_string()].uri, node.p2p_uri());
    }
    let ids: Vec<u64> = views.iter().map(|v| v.peer_id).collect();
    let old_leader = views[0].raft_info.leader.expect("converged on a leader");
    let term = views[0].raft_info.term;
    let leader_index = ids
        .iter()
        .position(|id| *id == old_leader)
        .expect("the leader is one of us");

    // SIGKILL the leader: the other two elect a new one.
    nodes[leader_index].kill_9()?;
    let survivors: Vec<&NodeProcess> = nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != leader_index)
        .map(|(_, n)| n)
        .collect();
    let deadline = Instant::now() + CONVERGE;
    let new_leader = loop {
        let views: Vec<ClusterInfo> = survivors
            .iter()
            .filter_map(|n| cluster_info(n).ok())
            .collect();
        if views.len() == 2
            && views[0].raft_info.leader.is_some_and(|l| l != old_leader)
            && views
                .iter()
                .all(|v| v.raft_info.leader == views[0].raft_info.leader)
        {
            assert!(
                views[0].raft_info.term > term,
                "a new leader means a new term"
            );
            break views[0].raft_info.leader.expect("checked");
        }
        assert!(
            Instant::now() < deadline,
            "no new leader after the old one was killed"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_ne!(new_leader, old_leader);

    // Metadata proposals still go through consensus: removing an unknown peer is proposed,
    // committed, and rejected with a clear error, through either survivor.
    let before = cluster_info(survivors[0])?.raft_info.commit;
    for node in &survivors {
        let answer = node
            .client()
            .raw(Method::Delete, "/cluster/peer/4242", None)?;
        assert_eq!(answer.status, 404, "{}", answer.body);
        assert!(answer.body.contains("4242"), "{}", answer.body);
    }
    // A follower learns the leader's commit index with the next heartbeat or append: poll
    // (bounded) rather than read once.
    let deadline = Instant::now() + CONVERGE;
    let after = loop {
        let after = cluster_info(survivors[0])?.raft_info.commit;
        if after >= before + 2 || Instant::now() >= deadline {
            break after;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        after >= before + 2,
        "the rejected proposals were committed ({before} -> {after})"
    );

    // The killed peer restarts with its persisted id and catches up with everything.
    nodes[leader_index].restart()?;
    nodes[leader_index].wait_ready(Instant::now() + READY)?;
    let views = converged(
        &nodes.iter().collect::<Vec<_>>(),
        3,
        Instant::now() + CONVERGE,
    )?;
    assert_eq!(
        views[leader_index].peer_id, old_leader,
        "the peer id survives a restart"
    );
    assert!(views[0].raft_info.commit >= after);
    assert_eq!(views[leader_index].peers, views[0].peers);
    Ok(())
}

#[test]
fn a_peer_without_shards_can_be_removed_and_bad_removals_change_nothing() -> Result<()> {
    let mut nodes = start_cluster(3, None)?;
    let views = converged(
        &nodes.iter().collect::<Vec<_>>(),
        3,
        Instant::now() + CONVERGE,
    )?;
    let unknown = nodes[0]
        .client()
        .raw(Method::Delete, "/cluster/peer/17", None)?;
    assert_eq!(unknown.status, 404, "{}", unknown.body);
    let not_a_number = nodes[0]
        .client()
        .raw(Method::Delete, "/cluster/peer/abc", None)?;
    assert_eq!(not_a_number.status, 400, "{}", not_a_number.body);
    assert_eq!(
        cluster_info(&nodes[1])?.peers,
        views[0].peers,
        "failed removals change nothing"
    );

    let leaving = views[2].peer_id;
    let removed: bool =
        nodes[1]
            .client()
            .call(Method::Delete, &format!("/cluster/peer/{leaving}"), None)?;
    assert!(removed);
    nodes[2].kill_9()?;
    let views = converged(&[&nodes[0], &nodes[1]], 2, Instant::now() + CONVERGE)?;
    assert!(!views[0].peers.contains_key(&leaving.to_string()));
    Ok(())
}

#[test]
fn peers_authenticate_with_the_api_key() -> Result<()> {
    let nodes = start_cluster(2, Some("cluster-secret"))?;
    converged(
        &nodes.iter().collect::<Vec<_>>(),
        2,
        Instant::now() + CONVERGE,
    )?;
    // A peer with the wrong key is refused: it never becomes a member.
    let intruder = NodeProcess::start(NodeOptions {
        cluster: Some(ClusterRole::Join(nodes[0].p2p_uri())),
        api_key: Some("wrong".into()),
        ..NodeOptions::default()
    })?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let view = cluster_info(&nodes[0])?;
        assert_eq!(
            view.peers.len(),
            2,
            "a peer with the wrong key joined: {view:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        intruder.log_tail(200).contains("join"),
        "{}",
        intruder.log_tail(50)
    );
    Ok(())
}

/// Reads one HTTP/1.1 answer (head and `content-length` body) from `stream`, lower-cased.
fn read_answer(stream: &mut TcpStream) -> Result<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    for _ in 0..1_000 {
        let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
        if let Some(head_end) = text.find("\r\n\r\n") {
            let length = text[..head_end]
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map_or(Ok(0), |v| v.trim().parse::<usize>())?;
            if got.len() >= head_end + 4 + length {
                return Ok(text);
            }
        }
        let n = stream.read(&mut buf)?;
        if n == 0 {
            bail!("the connection closed before a whole answer: {text:?}");
        }
        got.extend_from_slice(&buf[..n]);
    }
    bail!("no whole answer in 1,000 reads")
}

/// A client that never finishes its request head, or leaves a keep-alive connection idle,
/// loses the connection after `service.http_header_read_timeout_sec`; a node configured with 0
/// (every connection would die before its first request) refuses to start and says why.
#[test]
fn a_request_head_not_sent_in_time_loses_its_connection() -> Result<()> {
    let node = NodeProcess::start_ready(
        NodeOptions {
            env: vec![(
                "SHOAL__SERVICE__HTTP_HEADER_READ_TIMEOUT_SEC".into(),
                "1".into(),
            )],
            ..NodeOptions::default()
        },
        READY,
    )?;
    let connect = || -> Result<TcpStream> {
        let stream = TcpStream::connect(("127.0.0.1", node.http_port()))?;
        // Ten times the timeout: a read that waits this long means the node kept it open.
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(stream)
    };
    // Half a head, then nothing: the node ends the connection without an answer.
    let mut half = connect()?;
    half.write_all(b"GET /collections HTTP/1.1\r\nhost: a\r\n")?;
    let mut got = Vec::new();
    half.read_to_end(&mut got)
        .context("the node closes a connection whose head never ends")?;
    assert!(!String::from_utf8_lossy(&got).contains("200 OK"), "{got:?}");
    // A whole request is answered; the idle connection is closed after it.
    let mut idle = connect()?;
    idle.write_all(b"GET /collections HTTP/1.1\r\nhost: a\r\n\r\n")?;
    let mut got = Vec::new();
    idle.read_to_end(&mut got)
        .context("the node closes an idle keep-alive connection")?;
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 200 OK"), "{got}");
    drop(node);

    let mut refused = NodeProcess::start(NodeOptions {
        env: vec![(
            "SHOAL__SERVICE__HTTP_HEADER_READ_TIMEOUT_SEC".into(),
            "0".into(),
        )],
        ..NodeOptions::default()
    })?;
    let deadline = Instant::now() + READY;
    let status = loop {
        if let Some(status) = refused.try_exit_status()? {
            break status;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "a node with a 0 s header timeout kept running"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success());
    let log = refused.log_tail(20);
    assert!(log.contains("http_header_read_timeout_sec"), "{log}");
    Ok(())
}

/// The key check answers from the request head. When the body has not arrived yet, the node
/// cannot keep the connection (the body's bytes would be read as the next request), so the
/// 401 says `Connection: close` and the connection ends; a keep-alive client would otherwise
/// send its next request into a closing socket. Requests with the key keep the connection.
#[test]
fn a_refusal_before_the_body_arrived_ends_the_connection_and_says_so() -> Result<()> {
    let node = NodeProcess::start_ready(
        NodeOptions {
            api_key: Some("rest-secret".into()),
            ..NodeOptions::default()
        },
        READY,
    )?;
    let connect = || -> Result<TcpStream> {
        let stream = TcpStream::connect(("127.0.0.1", node.http_port()))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(stream)
    };

    let mut stream = connect()?;
    stream.write_all(
        b"POST /collections/c/points/payload/clear?wait=true HTTP/1.1\r\nhost: a\r\n\
          content-type: application/json\r\ncontent-length: 15\r\n\r\n",
    )?;
    let answer = read_answer(&mut stream)?;
    assert!(answer.starts_with("http/1.1 401"), "{answer}");
    assert!(answer.contains("\r\nconnection: close\r\n"), "{answer}");
    let mut rest = Vec::new();
    assert_eq!(stream.read_to_end(&mut rest)?, 0, "{rest:?}");

    // With the key, one connection carries several requests with bodies.
    let mut stream = connect()?;
    for _ in 0..3 {
        let body = br#"{"limit": 1}"#;
        stream.write_all(
            format!(
                "POST /collections/none/points/scroll HTTP/1.1\r\nhost: a\r\napi-key: rest-secret\r\n\
                 content-type: application/json\r\ncontent-length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        )?;
        stream.write_all(body)?;
        let answer = read_answer(&mut stream)?;
        assert!(answer.starts_with("http/1.1 404"), "{answer}");
        assert!(!answer.contains("connection: close"), "{answer}");
    }
    Ok(())
}
