//! Resharding with real `shoal-node` processes on loopback: scaling a collection from 3 to 4
//! shards and back while one client writes and another reads, aborting at each abortable stage,
//! SIGKILL of the new shard's peer and of the Raft leader, SIGKILL of a stream's sender (which
//! resumes from its checkpoint), and resharding one shard key of a custom-sharded collection.
//!
//! The collection has every vector kind, each optional: a named dense vector, a sparse vector
//! (with the `idf` modifier) and a multivector. The points are in two sets. The static set (ids
//! below `STATIC`, payload `static: true`) is loaded once and never written again, so at any
//! moment a reader knows exactly what it must see: every static point exactly once in a full
//! scroll, an exact filtered count, and exact filtered search on the dense vector equal to brute
//! force. The writer upserts, deletes, sets and removes named vectors only above `STATIC`,
//! sequentially, so the acknowledged writes are a model that the whole collection (every named
//! vector of every point) must equal once writing stops.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Map, Value, json};
use shoal_e2e::acknowledged_writes::{
    Kind, Model, Write, Writer, WriterPlan, all_match_model, collection_body, dense, has_vector,
    load,
};
use shoal_e2e::cluster::{
    CONVERGE, READY, collection_cluster, create_collection, start_cluster, start_cluster_env,
};
use shoal_e2e::{Client, Method, NodeProcess};

const STATIC: u64 = 30_000;
/// The writer's ids: `STATIC..STATIC + DYNAMIC`.
const DYNAMIC: u64 = 5_000;
/// How long one resharding may take before the test gives up.
const RESHARD: Duration = Duration::from_secs(240);

/// The payload fields (beside `v`) of the static points, or of the others.
fn static_payload(is_static: bool) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("static".into(), json!(is_static));
    m
}

/// The writer of the resharding tests: every write kind over the dynamic ids, paced, bounded
/// in steps and time.
fn writer_plan() -> WriterPlan {
    WriterPlan {
        ids: STATIC..STATIC + DYNAMIC,
        max_steps: 50_000,
        max_time: Duration::from_secs(600),
        pause: Duration::from_millis(5),
    }
}

fn operate(node: &NodeProcess, name: &str, body: Value) -> Result<()> {
    let _: bool = node.client().call(
        Method::Post,
        &format!("/collections/{name}/cluster"),
        Some(&body),
    )?;
    Ok(())
}

/// [`operate`] until it succeeds, for operations that wait on other peers.
fn operate_until(node: &NodeProcess, name: &str, body: Value) -> Result<()> {
    let deadline = Instant::now() + RESHARD;
    loop {
        match operate(node, name, body.clone()) {
            Ok(()) => return Ok(()),
            Err(e) => ensure!(Instant::now() < deadline, "{body}: {e:#}"),
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn cluster_json(node: &NodeProcess, name: &str) -> Result<Value> {
    node.client()
        .call(Method::Get, &format!("/collections/{name}/cluster"), None)
}

fn peer_id(node: &NodeProcess) -> Result<u64> {
    let v: Value = node.client().call(Method::Get, "/cluster", None)?;
    v["peer_id"].as_u64().context("peer id")
}

/// The running resharding's stage as `node` sees it (`None`: none runs).
fn stage(node: &NodeProcess, name: &str) -> Result<Option<String>> {
    let v = cluster_json(node, name)?;
    Ok(v["resharding_operations"]
        .as_array()
        .and_then(|ops| ops.first())
        .and_then(|op| op["stage"].as_str())
        .map(str::to_string))
}

/// Waits until every resharding stream has moved its points (they then only forward).
fn wait_points_moved(node: &NodeProcess, name: &str) -> Result<()> {
    let deadline = Instant::now() + RESHARD;
    loop {
        let v = cluster_json(node, name)?;
        let op = v["resharding_operations"]
            .as_array()
            .and_then(|ops| ops.first().cloned())
            .context("a resharding runs")?;
        let progress = &op["progress"];
        if progress["points_total"].as_u64().is_some()
            && progress["stage"]
                .as_str()
                .is_some_and(|s| s.contains("migrated"))
        {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "points still moving: {op}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until no resharding and no transfer runs and every replica is Active (a replica that
/// failed has recovered), as every peer sees it.
fn wait_settled(nodes: &[&NodeProcess], name: &str) -> Result<()> {
    shoal_e2e::cluster::wait_settled(nodes, name, RESHARD)
}

/// Shards and their replicas (peer, state), from the applied state as `node` sees it.
fn layout(node: &NodeProcess, name: &str) -> Result<BTreeSet<(u32, u64, String)>> {
    Ok(collection_cluster(node, name)?.replicas())
}

fn shard_ids(node: &NodeProcess, name: &str) -> Result<BTreeSet<u32>> {
    Ok(layout(node, name)?.into_iter().map(|(s, _, _)| s).collect())
}

/// The reads a client must be able to rely on at any moment, checked through `client`: a full
/// scroll returns every static point exactly once, the filtered count is exact, and exact
/// filtered search on the `dense` vector equals brute force over the static points that have
/// one.
fn check_reads(client: &Client, name: &str, query_seed: u64) -> Result<()> {
    let records = client.scroll_all(name, 2000, 200, true, false)?;
    let mut seen = BTreeSet::new();
    let mut statics = 0u64;
    for r in &records {
        let id = r.id.as_num().context("numeric ids")?;
        ensure!(seen.insert(id), "point {id} returned twice by a scroll");
        if id < STATIC {
            statics += 1;
        }
    }
    ensure!(
        statics == STATIC,
        "the scroll returned {statics} static points, not {STATIC}"
    );
    let filter = json!({"must": [{"key": "static", "match": {"value": true}}]});
    let counted: Value = client.call(
        Method::Post,
        &format!("/collections/{name}/points/count"),
        Some(&json!({"filter": filter, "exact": true})),
    )?;
    ensure!(
        counted["count"].as_u64() == Some(STATIC),
        "count of static points: {counted}"
    );
    let query = dense(1_000_000 + query_seed, 0);
    let found: Vec<Value> = client.call(
        Method::Post,
        &format!("/collections/{name}/points/search"),
        Some(&json!({
            "vector": {"name": Kind::Dense.name(), "vector": query},
            "limit": 10,
            "filter": filter,
            "params": {"exact": true},
        })),
    )?;
    let found: Vec<u64> = found.iter().filter_map(|p| p["id"].as_u64()).collect();
    let mut reference: Vec<(f32, u64)> = (0..STATIC)
        .filter(|id| has_vector(*id, 0, Kind::Dense))
        .map(|id| {
            let d: f32 = dense(id, 0)
                .iter()
                .zip(&query)
                .map(|(a, b)| (a - b) * (a - b))
                .sum();
            (d, id)
        })
        .collect();
    reference.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let expected: Vec<u64> = reference.iter().take(10).map(|(_, id)| *id).collect();
    ensure!(
        found == expected,
        "exact search {found:?}, brute force {expected:?}"
    );
    Ok(())
}

/// Every point of the collection, read through each node (at once), is in a state the model
/// allows: the acknowledged one, or for a point that a failed write touched, what that write
/// would have left.
fn all_match(nodes: &[NodeProcess], name: &str, model: &Model) -> Result<()> {
    let clients: Vec<Client> = nodes.iter().map(NodeProcess::client).collect();
    all_match_model(&clients, name, model)
}

/// [`all_match`] within [`CONVERGE`]: after a peer was killed, reads may fail over.
fn eventually_all_match(nodes: &[NodeProcess], name: &str, model: &Model) -> Result<()> {
    let deadline = Instant::now() + CONVERGE;
    loop {
        match all_match(nodes, name, model) {
            Ok(()) => return Ok(()),
            Err(e) => ensure!(Instant::now() < deadline, "{e:#}"),
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Read rounds by the stage they ran at, and every failure.
type ReadLog = (BTreeMap<String, usize>, Vec<String>);

/// A reader that runs [`check_reads`] through alternating peers until stopped, recording the
/// stages it ran at and every failure.
struct Reader {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<ReadLog>>,
}

impl Reader {
    fn start(nodes: Vec<Client>, watcher: Client, name: &str) -> Reader {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let name = name.to_string();
        let handle = std::thread::spawn(move || {
            let mut rounds: BTreeMap<String, usize> = BTreeMap::new();
            let mut failures = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(600);
            let mut i = 0u64;
            while !flag.load(Ordering::SeqCst) && Instant::now() < deadline && i < 5_000 {
                let stage = watcher
                    .call::<Value>(Method::Get, &format!("/collections/{name}/cluster"), None)
                    .ok()
                    .and_then(|v| {
                        v["resharding_operations"][0]["stage"]
                            .as_str()
                            .map(str::to_string)
                    })
                    .unwrap_or_else(|| "none".into());
                let node = &nodes[i as usize % nodes.len()];
                if let Err(e) = check_reads(node, &name, i) {
                    failures.push(format!("at {stage}: {e:#}"));
                }
                *rounds.entry(stage).or_default() += 1;
                i += 1;
            }
            (rounds, failures)
        });
        Reader {
            stop,
            handle: Some(handle),
        }
    }

    fn finish(mut self) -> Result<ReadLog> {
        self.stop.store(true, Ordering::SeqCst);
        match self.handle.take().expect("joined once").join() {
            Ok(r) => Ok(r),
            Err(_) => bail!("the reader panicked"),
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// A 3-peer cluster with `docs`: 3 shards, replication 2, the static points loaded.
fn setup() -> Result<(Vec<NodeProcess>, Model)> {
    let nodes = start_cluster(3, &[])?;
    create_collection(
        &nodes[0],
        "docs",
        collection_body(true, json!({"shard_number": 3, "replication_factor": 2})),
    )?;
    let mut model = Model::new();
    load(
        &nodes[0].client(),
        "docs",
        0..STATIC,
        &static_payload(true),
        &mut model,
    )?;
    Ok((nodes, model))
}

/// How many points each shard holds, from the peers' own replica counts.
fn points_per_shard(nodes: &[NodeProcess], name: &str) -> Result<BTreeMap<u32, u64>> {
    let mut out = BTreeMap::new();
    for node in nodes {
        let v = cluster_json(node, name)?;
        for s in v["local_shards"].as_array().cloned().unwrap_or_default() {
            let shard = s["shard_id"].as_u64().context("shard id")? as u32;
            let points = s["points_count"].as_u64().context("points")?;
            out.entry(shard).or_insert(points);
        }
    }
    Ok(out)
}

#[test]
fn scale_up_and_down_under_traffic_loses_and_doubles_nothing() -> Result<()> {
    let (nodes, mut model) = setup()?;
    load(
        &nodes[0].client(),
        "docs",
        STATIC..STATIC + DYNAMIC / 2,
        &static_payload(false),
        &mut model,
    )?;
    let all: Vec<&NodeProcess> = nodes.iter().collect();
    let writer = Writer::start(nodes[0].client(), "docs", model, writer_plan());
    let reader = Reader::start(
        vec![nodes[1].client(), nodes[2].client()],
        nodes[1].client(),
        "docs",
    );

    // Up, gated by hand, checking reads at each stage while the writer runs.
    operate(
        &nodes[0],
        "docs",
        json!({"start_resharding": {"direction": "up", "manual": true}}),
    )?;
    wait_points_moved(&nodes[0], "docs")?;
    for node in &nodes {
        check_reads(&node.client(), "docs", 1)?;
    }
    operate(&nodes[1], "docs", json!({"commit_read_hash_ring": {}}))?;
    for node in &nodes {
        check_reads(&node.client(), "docs", 2)?;
    }
    operate(&nodes[2], "docs", json!({"commit_write_hash_ring": {}}))?;
    for node in &nodes {
        check_reads(&node.client(), "docs", 3)?;
    }
    operate_until(&nodes[0], "docs", json!({"finish_resharding": {}}))?;
    wait_settled(&all, "docs")?;
    for node in &nodes {
        check_reads(&node.client(), "docs", 4)?;
    }
    let shards = shard_ids(&nodes[0], "docs")?;
    assert_eq!(shards, BTreeSet::from([0, 1, 2, 3]));
    let replicas = layout(&nodes[0], "docs")?;
    assert_eq!(
        replicas
            .iter()
            .filter(|(s, _, st)| *s == 3 && st == "Active")
            .count(),
        2,
        "the new shard was copied to the replication factor: {replicas:?}"
    );

    // Down again, driven by the node.
    operate(
        &nodes[1],
        "docs",
        json!({"start_resharding": {"direction": "down"}}),
    )?;
    wait_settled(&all, "docs")?;
    assert_eq!(shard_ids(&nodes[0], "docs")?, BTreeSet::from([0, 1, 2]));

    std::thread::sleep(Duration::from_millis(300));
    let written = writer.finish()?;
    let (rounds, failures) = reader.finish()?;
    eprintln!(
        "writer: {:?} acknowledged, {:?} failed {:#?}; reader rounds by stage: {rounds:?}",
        written.acknowledged, written.failed, written.errors
    );
    assert!(failures.is_empty(), "reads went wrong: {failures:#?}");
    assert!(
        written.acknowledged_total() >= 20 && written.acknowledged.len() == 4,
        "the writer kept writing, every kind of write: {:?}",
        written.acknowledged
    );
    let model = written.model;
    assert!(
        rounds.len() >= 3,
        "the reader ran during several stages: {rounds:?}"
    );
    all_match(&nodes, "docs", &model)?;
    // The points are where the 3-shard ring puts them: about a third each.
    let per_shard = points_per_shard(&nodes, "docs")?;
    let total: u64 = per_shard.values().sum();
    assert!(
        model.count_range().contains(&total),
        "{per_shard:?}: {total} points, the model allows {:?}",
        model.count_range()
    );
    for (shard, n) in &per_shard {
        assert!(
            (*n as f64) > total as f64 * 0.25 && (*n as f64) < total as f64 * 0.42,
            "shard {shard} holds {n} of {total}"
        );
    }
    Ok(())
}

#[test]
fn abort_leaves_the_collection_as_it_was() -> Result<()> {
    let (nodes, model) = setup()?;
    let all: Vec<&NodeProcess> = nodes.iter().collect();
    let before_layout = layout(&nodes[0], "docs")?;
    all_match(&nodes, "docs", &model)?;
    let same = |what: &str| -> Result<()> {
        wait_settled(&all, "docs")?;
        for node in &nodes {
            ensure!(
                layout(node, "docs")? == before_layout,
                "{what}: layout changed"
            );
        }
        all_match(&nodes, "docs", &model).with_context(|| format!("{what}: points changed"))
    };
    // Up, aborted while points move.
    operate(
        &nodes[0],
        "docs",
        json!({"start_resharding": {"direction": "up", "manual": true}}),
    )?;
    operate(&nodes[1], "docs", json!({"abort_resharding": {}}))?;
    same("up, aborted while migrating")?;
    // Up, aborted after reads switched.
    operate(
        &nodes[0],
        "docs",
        json!({"start_resharding": {"direction": "up", "manual": true}}),
    )?;
    wait_points_moved(&nodes[0], "docs")?;
    operate(&nodes[0], "docs", json!({"commit_read_hash_ring": {}}))?;
    operate(&nodes[2], "docs", json!({"abort_resharding": {}}))?;
    same("up, aborted after commit_read_hash_ring")?;
    // Down, aborted after reads switched: the points moved to the other shards go away.
    operate(
        &nodes[0],
        "docs",
        json!({"start_resharding": {"direction": "down", "manual": true}}),
    )?;
    wait_points_moved(&nodes[0], "docs")?;
    operate(&nodes[0], "docs", json!({"commit_read_hash_ring": {}}))?;
    check_reads(&nodes[1].client(), "docs", 7)?;
    operate(&nodes[1], "docs", json!({"abort_resharding": {}}))?;
    same("down, aborted after commit_read_hash_ring")?;
    // After writes switched, abort is refused and changes nothing.
    operate(
        &nodes[0],
        "docs",
        json!({"start_resharding": {"direction": "up", "manual": true}}),
    )?;
    wait_points_moved(&nodes[0], "docs")?;
    operate(&nodes[0], "docs", json!({"commit_read_hash_ring": {}}))?;
    operate(&nodes[0], "docs", json!({"commit_write_hash_ring": {}}))?;
    let refused = nodes[1].client().raw(
        Method::Post,
        "/collections/docs/cluster",
        Some(&json!({"abort_resharding": {}})),
    )?;
    assert_eq!(refused.status, 409, "{}", refused.body);
    assert_eq!(
        stage(&nodes[0], "docs")?.as_deref(),
        Some("write_hash_ring_committed")
    );
    operate_until(&nodes[0], "docs", json!({"finish_resharding": {}}))?;
    wait_settled(&all, "docs")?;
    // Bad requests: nothing starts.
    for body in [
        json!({"start_resharding": {"direction": "sideways"}}),
        json!({"start_resharding": {"direction": "up", "peer_id": 999_999}}),
        json!({"start_resharding": {"direction": "up", "shard_key": "nope"}}),
        json!({"commit_read_hash_ring": {}}),
        json!({"abort_resharding": {}}),
    ] {
        let r = nodes[0]
            .client()
            .raw(Method::Post, "/collections/docs/cluster", Some(&body))?;
        assert!(
            (400..500).contains(&r.status),
            "{body} answered {}: {}",
            r.status,
            r.body
        );
    }
    let r = nodes[0].client().raw(
        Method::Post,
        "/collections/nothing/cluster",
        Some(&json!({"start_resharding": {"direction": "up"}})),
    )?;
    assert_eq!(r.status, 404, "{}", r.body);
    assert_eq!(shard_ids(&nodes[0], "docs")?.len(), 4);
    for node in &nodes {
        check_reads(&node.client(), "docs", 9)?;
    }
    Ok(())
}

#[test]
fn sigkill_of_the_new_shards_peer_and_of_the_leader_loses_nothing() -> Result<()> {
    let (mut nodes, model) = setup()?;
    let ids: Vec<u64> = nodes.iter().map(peer_id).collect::<Result<_>>()?;
    // Through peer 1: peer 2 is killed first, and the leader is usually the founder, peer 0.
    let writer = Writer::start(nodes[1].client(), "docs", model, writer_plan());

    // The new shard on peer 2, killed while the stage is MigratingPoints: the forwarding to it
    // fails, the resharding aborts, and the restarted peer drops its half-filled shard.
    operate(
        &nodes[0],
        "docs",
        json!({"start_resharding": {"direction": "up", "peer_id": ids[2], "manual": true}}),
    )?;
    wait_points_moved(&nodes[0], "docs")?;
    nodes[2].kill_9()?;
    let deadline = Instant::now() + RESHARD;
    while stage(&nodes[0], "docs")?.is_some() {
        ensure!(Instant::now() < deadline, "the resharding did not abort");
        std::thread::sleep(Duration::from_millis(200));
    }
    nodes[2].restart()?;
    nodes[2].wait_ready(Instant::now() + READY)?;
    let all: Vec<&NodeProcess> = nodes.iter().collect();
    wait_settled(&all, "docs")?;
    assert_eq!(shard_ids(&nodes[2], "docs")?, BTreeSet::from([0, 1, 2]));

    // The Raft leader killed right after commit_write_hash_ring was asked for: the resharding
    // completes once it is back.
    let view: Value = nodes[0].client().call(Method::Get, "/cluster", None)?;
    let leader = view["raft_info"]["leader"].as_u64().context("a leader")?;
    let leader_index = ids.iter().position(|p| *p == leader).context("leader")?;
    let via = (leader_index + 1) % 3;
    operate(
        &nodes[via],
        "docs",
        json!({"start_resharding": {"direction": "up", "manual": true}}),
    )?;
    wait_points_moved(&nodes[via], "docs")?;
    operate(&nodes[via], "docs", json!({"commit_read_hash_ring": {}}))?;
    let asked = {
        let node = &nodes[via];
        node.client().raw(
            Method::Post,
            "/collections/docs/cluster",
            Some(&json!({"commit_write_hash_ring": {}})),
        )
    };
    nodes[leader_index].kill_9()?;
    eprintln!(
        "commit_write_hash_ring answered {:?} before the leader died",
        asked.map(|r| r.status)
    );
    std::thread::sleep(Duration::from_secs(2));
    nodes[leader_index].restart()?;
    nodes[leader_index].wait_ready(Instant::now() + READY)?;
    operate_until(&nodes[via], "docs", json!({"commit_write_hash_ring": {}}))?;
    operate_until(&nodes[via], "docs", json!({"finish_resharding": {}}))?;
    let all: Vec<&NodeProcess> = nodes.iter().collect();
    wait_settled(&all, "docs")?;
    assert_eq!(shard_ids(&nodes[0], "docs")?, BTreeSet::from([0, 1, 2, 3]));

    let written = writer.finish()?;
    eprintln!(
        "writer: {:?} acknowledged, {:?} failed {:#?}",
        written.acknowledged, written.failed, written.errors
    );
    assert!(
        written.acknowledged.len() == 4,
        "every kind of write was acknowledged at some point: {:?}",
        written.acknowledged
    );
    let model = written.model;
    eventually_all_match(&nodes, "docs", &model)?;
    for node in &nodes {
        check_reads(&node.client(), "docs", 11)?;
    }
    Ok(())
}

#[test]
fn resharding_one_shard_key_leaves_the_others_untouched() -> Result<()> {
    let nodes = start_cluster(3, &[])?;
    create_collection(
        &nodes[0],
        "keyed",
        collection_body(
            true,
            json!({"sharding_method": "custom", "replication_factor": 2}),
        ),
    )?;
    for (key, shards) in [("a", 2), ("b", 1)] {
        let _: bool = nodes[0].client().call(
            Method::Put,
            "/collections/keyed/shards",
            Some(&json!({"shard_key": key, "shards_number": shards})),
        )?;
    }
    let mut model = Model::new();
    for (key, range) in [("a", 0..6000u64), ("b", 6000..9000u64)] {
        let all: Vec<u64> = range.collect();
        for chunk in all.chunks(1000) {
            let write = Write::Upsert {
                ids: chunk.to_vec(),
                v: 0,
                payload: static_payload(false),
            };
            let (method, path, mut body) = write.request("keyed");
            body["shard_key"] = json!(key);
            let result: Value = nodes[0].client().call(method, &path, Some(&body))?;
            ensure!(result["status"] == "completed", "{path}: {result}");
            model.record(&write, true);
        }
    }
    let b_before: BTreeSet<(u32, u64, String)> = {
        let v = cluster_json(&nodes[0], "keyed")?;
        let b_shards: BTreeSet<u64> = v["local_shards"]
            .as_array()
            .into_iter()
            .chain(v["remote_shards"].as_array())
            .flatten()
            .filter(|s| s["shard_key"] == "b")
            .filter_map(|s| s["shard_id"].as_u64())
            .collect();
        layout(&nodes[0], "keyed")?
            .into_iter()
            .filter(|(s, _, _)| b_shards.contains(&u64::from(*s)))
            .collect()
    };
    let count_key = |key: &str| -> Result<u64> {
        let v: Value = nodes[1].client().call(
            Method::Post,
            "/collections/keyed/points/count",
            Some(&json!({"exact": true, "shard_key": key})),
        )?;
        v["count"].as_u64().context("count")
    };
    operate(
        &nodes[0],
        "keyed",
        json!({"start_resharding": {"direction": "up", "shard_key": "a"}}),
    )?;
    let all: Vec<&NodeProcess> = nodes.iter().collect();
    wait_settled(&all, "keyed")?;
    let v = cluster_json(&nodes[0], "keyed")?;
    let keys: Vec<String> = v["local_shards"]
        .as_array()
        .into_iter()
        .chain(v["remote_shards"].as_array())
        .flatten()
        .filter_map(|s| Some(format!("{}:{}", s["shard_id"].as_u64()?, s["shard_key"])))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(
        keys.iter().filter(|k| k.ends_with("\"a\"")).count(),
        3,
        "{keys:?}"
    );
    let b_after: BTreeSet<(u32, u64, String)> = layout(&nodes[0], "keyed")?
        .into_iter()
        .filter(|r| b_before.iter().any(|b| b.0 == r.0))
        .collect();
    assert_eq!(b_before, b_after, "the shards of key b did not change");
    assert_eq!(count_key("a")?, 6000);
    assert_eq!(count_key("b")?, 3000);
    eventually_all_match(&nodes, "keyed", &model)?;
    Ok(())
}

/// The progress (points done, stage) of the resharding stream into shard `to_shard`, as `node`
/// reports it (asking the sender); `None` while no progress is reported.
fn stream_progress(node: &NodeProcess, name: &str, to_shard: u64) -> Result<Option<(u64, String)>> {
    let v = cluster_json(node, name)?;
    Ok(v["shard_transfers"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|t| t["to_shard_id"].as_u64() == Some(to_shard))
        .and_then(|t| {
            let p = &t["progress"];
            Some((p["points_done"].as_u64()?, p["stage"].as_str()?.to_string()))
        }))
}

#[test]
fn a_resharding_stream_resumes_from_its_checkpoint_after_its_sender_restarts() -> Result<()> {
    // Batches of 100 points, each held 100 ms by the test hook: the stream of about 4,000
    // points runs for several seconds, long enough to kill its sender in the middle.
    let mut nodes = start_cluster_env(
        3,
        &[],
        &[
            ("SHOAL_TEST_TRANSFER_PAUSE", "resharding batch=100"),
            ("SHOAL__CLUSTER__TRANSFER_BATCH_POINTS", "100"),
        ],
    )?;
    create_collection(
        &nodes[0],
        "docs",
        collection_body(true, json!({"shard_number": 1, "replication_factor": 1})),
    )?;
    let mut model = Model::new();
    load(
        &nodes[0].client(),
        "docs",
        0..8_000,
        &static_payload(true),
        &mut model,
    )?;
    let ids: Vec<u64> = nodes.iter().map(peer_id).collect::<Result<_>>()?;
    let holder = layout(&nodes[0], "docs")?
        .into_iter()
        .find(|(shard, _, _)| *shard == 0)
        .map(|(_, peer, _)| peer)
        .context("shard 0 has a replica")?;
    let sender = ids.iter().position(|p| *p == holder).context("sender")?;
    let (new_shard_peer, watcher) = ((sender + 1) % 3, (sender + 2) % 3);
    // The writer goes through the third peer all along: its writes while the sender is down
    // fail (shard 0 has no other replica), the others must all be there at the end.
    let writer = Writer::start(
        nodes[watcher].client(),
        "docs",
        model,
        WriterPlan {
            ids: 8_000..10_000,
            max_steps: 50_000,
            max_time: Duration::from_secs(600),
            pause: Duration::from_millis(5),
        },
    );
    operate(
        &nodes[watcher],
        "docs",
        json!({"start_resharding": {"direction": "up", "peer_id": ids[new_shard_peer]}}),
    )?;

    // Kill the sender once a good part of the stream is done (and checkpointed).
    let deadline = Instant::now() + RESHARD;
    let before = loop {
        if let Some((done, _)) = stream_progress(&nodes[watcher], "docs", 1)?
            && done >= 1_000
        {
            break done;
        }
        ensure!(Instant::now() < deadline, "the stream did not get going");
        std::thread::sleep(Duration::from_millis(50));
    };
    nodes[sender].kill_9()?;
    nodes[sender].restart()?;
    nodes[sender].wait_ready(Instant::now() + READY)?;

    // Once the restarted stream streams again, it reports the points it had done before the
    // kill (less at most the batch in flight), not a count from zero: at 100 points per
    // 100 ms a stream started over would take a second to get back there, and it is watched
    // every 50 ms. The stage changes to streaming only after the catch-up.
    let deadline = Instant::now() + RESHARD;
    let resumed_at = loop {
        match stream_progress(&nodes[watcher], "docs", 1)? {
            Some((done, stage))
                if ["streaming points", "reporting done", "forwarding updates"]
                    .contains(&stage.as_str()) =>
            {
                break done;
            }
            _ => {}
        }
        ensure!(
            Instant::now() < deadline,
            "the restarted stream did not stream again"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    ensure!(
        resumed_at + 100 >= before,
        "the stream started over: {resumed_at} points done after the restart, {before} before"
    );
    let log = nodes[sender].log_tail(5_000);
    ensure!(
        log.contains("resharding stream resumes from its checkpoint"),
        "the restarted sender did not resume the stream from its checkpoint"
    );
    let all: Vec<&NodeProcess> = nodes.iter().collect();
    wait_settled(&all, "docs")?;
    assert_eq!(shard_ids(&nodes[0], "docs")?, BTreeSet::from([0, 1]));

    let written = writer.finish()?;
    eprintln!(
        "stream: {before} points done before the kill, {resumed_at} when it streamed again; writer: {:?} acknowledged, {:?} failed {:#?}",
        written.acknowledged, written.failed, written.errors
    );
    assert!(
        written.acknowledged.len() == 4,
        "every kind of write was acknowledged at some point: {:?}",
        written.acknowledged
    );
    let model = written.model;
    eventually_all_match(&nodes, "docs", &model)?;
    // Every point is in the shard the 2-shard ring puts it in, once.
    let per_shard = points_per_shard(&nodes, "docs")?;
    let total: u64 = per_shard.values().sum();
    assert!(
        model.count_range().contains(&total),
        "{per_shard:?}: {total} points, the model allows {:?}",
        model.count_range()
    );
    Ok(())
}
