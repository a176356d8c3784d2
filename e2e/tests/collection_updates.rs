//! Cluster-wide collection changes on three real peers, each with the Raft leader killed in
//! the middle: `PATCH /collections/{c}` raising the replication factor from 1 to 2 and
//! lowering it back under a writer (every acknowledged write survives), and alias swaps under
//! readers (no reader ever sees the alias missing, nor an empty answer from a peer that has
//! not caught up).
//!
//! Every wait is a poll with a deadline; nodes are killed by the harness when a test ends,
//! also when it fails.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use shoal_e2e::acknowledged_writes::{self, Model, Writer, WriterPlan, matches_model};
use shoal_e2e::cluster::{CONVERGE, READY, create_collection, replicas_agree, start_cluster};
use shoal_e2e::{Client, Method, NodeProcess};

/// The index in `nodes` of the current Raft leader, as the first answering peer sees it.
fn leader_index(nodes: &[NodeProcess]) -> Result<usize> {
    let deadline = Instant::now() + CONVERGE;
    loop {
        let leader = nodes.iter().find_map(|n| {
            let v: Value = n.client().call(Method::Get, "/cluster", None).ok()?;
            v["raft_info"]["leader"].as_u64()
        });
        if let Some(leader) = leader {
            for (i, node) in nodes.iter().enumerate() {
                let v: Value = node.client().call(Method::Get, "/cluster", None)?;
                if v["peer_id"].as_u64() == Some(leader) {
                    return Ok(i);
                }
            }
        }
        ensure!(Instant::now() < deadline, "no leader was elected");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Sends `method path body` through `node` until it is accepted (a new leader may still be
/// being elected), within [`CONVERGE`].
fn until_accepted(node: &NodeProcess, method: Method, path: &str, body: &Value) -> Result<Value> {
    let deadline = Instant::now() + CONVERGE;
    loop {
        match node.client().call::<Value>(method, path, Some(body)) {
            Ok(answer) => return Ok(answer),
            Err(e) => ensure!(Instant::now() < deadline, "{path} was not accepted: {e:#}"),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Polls until every peer agrees that each shard of `name` has exactly `per_shard` replicas,
/// all Active.
fn replicas_settle(nodes: &[&NodeProcess], name: &str, per_shard: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let replicas = replicas_agree(nodes, name, &[])?;
        let mut count: BTreeMap<u32, usize> = BTreeMap::new();
        for (shard, _, _) in &replicas {
            *count.entry(*shard).or_default() += 1;
        }
        if replicas.iter().all(|(_, _, s)| s == "Active") && count.values().all(|n| *n == per_shard)
        {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "the replicas of `{name}` did not settle at {per_shard} per shard: {replicas:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn config_of(node: &NodeProcess, name: &str) -> Result<Value> {
    let info: Value = node
        .client()
        .call(Method::Get, &format!("/collections/{name}"), None)?;
    Ok(info["config"].clone())
}

#[test]
fn replication_factor_one_to_two_to_one_under_writes_with_the_leader_killed() -> Result<()> {
    let mut nodes = start_cluster(3, &[])?;
    create_collection(
        &nodes[0],
        "docs",
        acknowledged_writes::collection_body(
            false,
            json!({"shard_number": 3, "replication_factor": 1}),
        ),
    )?;
    let mut model = Model::new();
    acknowledged_writes::load(
        &nodes[0].client(),
        "docs",
        0..3_000,
        &serde_json::Map::new(),
        &mut model,
    )?;
    let leader = leader_index(&nodes)?;
    let writes_through = (leader + 1) % 3;
    let writer = Writer::start(
        nodes[writes_through].client(),
        "docs",
        model,
        WriterPlan {
            ids: 0..4_000,
            max_steps: 1_000_000,
            max_time: Duration::from_secs(240),
            pause: Duration::from_millis(5),
        },
    );
    // Workload shaping only (nothing waits for it to be safe): let the writer write between
    // the changes.
    let let_the_writer_write = || std::thread::sleep(Duration::from_secs(1));
    let_the_writer_write();

    // 1 -> 2, and the leader dies while the shards are being copied.
    until_accepted(
        &nodes[writes_through],
        Method::Patch,
        "/collections/docs",
        &json!({"params": {"replication_factor": 2}}),
    )?;
    nodes[leader].kill_9()?;
    // The survivors elect a leader and take further changes to the collection.
    until_accepted(
        &nodes[writes_through],
        Method::Patch,
        "/collections/docs",
        &json!({"metadata": {"phase": "two replicas"}}),
    )?;
    nodes[leader].restart()?;
    nodes[leader].wait_ready(Instant::now() + READY)?;
    let all: Vec<&NodeProcess> = nodes.iter().collect();
    replicas_settle(&all, "docs", 2)?;
    let_the_writer_write();

    // 2 -> 1, and the (new) leader dies right after.
    let leader = leader_index(&nodes)?;
    let through = (leader + 2) % 3;
    until_accepted(
        &nodes[through],
        Method::Patch,
        "/collections/docs",
        &json!({"params": {"replication_factor": 1}}),
    )?;
    nodes[leader].kill_9()?;
    nodes[leader].restart()?;
    nodes[leader].wait_ready(Instant::now() + READY)?;
    let all: Vec<&NodeProcess> = nodes.iter().collect();
    replicas_settle(&all, "docs", 1)?;
    let_the_writer_write();

    let written = writer.finish()?;
    ensure!(
        written.acknowledged_total() > 100,
        "the writer made progress: {:?} acknowledged, {:?} failed ({:?})",
        written.acknowledged,
        written.failed,
        written.errors
    );
    for node in &nodes {
        matches_model(&node.client(), "docs", &written.model)
            .with_context(|| format!("read through peer {}", node.url()))?;
        let config = config_of(node, "docs")?;
        assert_eq!(config["params"]["replication_factor"], json!(1), "{config}");
        assert_eq!(
            config["metadata"],
            json!({"phase": "two replicas"}),
            "{config}"
        );
    }
    Ok(())
}

#[test]
fn alias_swaps_under_readers_never_show_a_missing_collection_even_across_a_leader_kill()
-> Result<()> {
    let mut nodes = start_cluster(3, &[])?;
    for (name, color) in [("blue", "blue"), ("green", "green")] {
        create_collection(
            &nodes[0],
            name,
            json!({"vectors": {"size": 2, "distance": "Dot"}, "shard_number": 2, "replication_factor": 3}),
        )?;
        let _: Value = nodes[0].client().call(
            Method::Put,
            &format!("/collections/{name}/points?wait=true"),
            Some(
                &json!({"points": [{"id": 1, "vector": [1.0, 0.0], "payload": {"color": color}}]}),
            ),
        )?;
    }
    let all: Vec<&NodeProcess> = nodes.iter().collect();
    replicas_agree(&all, "blue", &["Initializing"])?;
    replicas_agree(&all, "green", &["Initializing"])?;
    until_accepted(
        &nodes[0],
        Method::Post,
        "/collections/aliases",
        &json!({"actions": [{"create_alias": {"collection_name": "blue", "alias_name": "live"}}]}),
    )?;

    // One reader per peer; a reader counts answers by color and any 404.
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = nodes
        .iter()
        .enumerate()
        .map(|(peer, node)| {
            let client = Client::with_timeout(node.url(), Duration::from_secs(5));
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut seen: BTreeMap<String, usize> = BTreeMap::new();
                let deadline = Instant::now() + Duration::from_secs(180);
                while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                    let key = match client.raw(
                        Method::Post,
                        "/collections/live/points/scroll",
                        Some(&json!({"limit": 1, "with_payload": true})),
                    ) {
                        Ok(r) if r.status == 200 => serde_json::from_str::<Value>(&r.body)
                            .ok()
                            .and_then(|v| {
                                v["result"]["points"][0]["payload"]["color"]
                                    .as_str()
                                    .map(str::to_owned)
                            })
                            .unwrap_or_else(|| {
                                format!("peer {peer} answered {} at {:?}", r.body, Instant::now())
                            }),
                        // A peer that just restarted and has not caught up yet says so.
                        Ok(r) if r.status == 503 => "not ready".to_string(),
                        Ok(r) => format!("status {}: {}", r.status, r.body),
                        // The peer is down (killed on purpose): not an answer.
                        Err(_) => "no connection".to_string(),
                    };
                    *seen.entry(key).or_default() += 1;
                    std::thread::sleep(Duration::from_millis(2));
                }
                seen
            })
        })
        .collect();

    let leader = leader_index(&nodes)?;
    let through = (leader + 1) % 3;
    for swap in 0..20 {
        if swap == 10 {
            nodes[leader].kill_9()?;
        }
        let (from, to) = if swap % 2 == 0 {
            ("blue", "green")
        } else {
            ("green", "blue")
        };
        // Qdrant's swap: delete and create in one request, applied atomically.
        until_accepted(
            &nodes[through],
            Method::Post,
            "/collections/aliases",
            &json!({"actions": [
                {"delete_alias": {"alias_name": "live"}},
                {"create_alias": {"collection_name": to, "alias_name": "live"}},
            ]}),
        )
        .with_context(|| format!("swap {swap}: {from} -> {to}"))?;
    }
    nodes[leader].restart()?;
    nodes[leader].wait_ready(Instant::now() + READY)?;
    stop.store(true, Ordering::SeqCst);
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for reader in readers {
        let counts = reader
            .join()
            .map_err(|_| anyhow::anyhow!("a reader panicked"))?;
        for (k, n) in counts {
            *seen.entry(k).or_default() += n;
        }
    }
    let unexpected: Vec<(&String, &usize)> = seen
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "blue" | "green" | "no connection" | "not ready"))
        .collect();
    ensure!(
        unexpected.is_empty(),
        "readers saw answers other than a collection behind the alias: {unexpected:?} (all: {seen:?})"
    );
    ensure!(
        seen.get("blue").is_some_and(|n| *n > 0) && seen.get("green").is_some_and(|n| *n > 0),
        "readers saw both collections: {seen:?}"
    );
    // Twenty swaps end on blue, on every peer (the restarted one caught up).
    let deadline = Instant::now() + CONVERGE;
    loop {
        let views: Vec<Value> = nodes
            .iter()
            .map(|n| n.client().call(Method::Get, "/aliases", None))
            .collect::<Result<_>>()?;
        if views
            .iter()
            .all(|v| v["aliases"] == json!([{"alias_name": "live", "collection_name": "blue"}]))
        {
            break;
        }
        if Instant::now() >= deadline {
            bail!("peers disagree on the aliases: {views:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}
