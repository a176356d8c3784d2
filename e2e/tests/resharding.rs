//! Resharding with real `shoal-node` processes on loopback: scaling a collection from 3 to 4
//! shards and back while one client writes and another reads, aborting at each abortable stage,
//! SIGKILL of the new shard's peer and of the Raft leader, and resharding one shard key of a
//! custom-sharded collection.
//!
//! The points are in two sets. The static set (ids below `STATIC`, payload `static: true`) is
//! loaded once and never written again, so at any moment a reader knows exactly what it must
//! see: every static point exactly once in a full scroll, an exact filtered count, and exact
//! filtered search equal to brute force. The writer upserts and deletes only above `STATIC`,
//! sequentially, so the acknowledged writes are a model that the whole collection must equal
//! once writing stops.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use shoal_e2e::cluster::{CONVERGE, READY, collection_cluster, create_collection, start_cluster};
use shoal_e2e::{Client, Method, NodeProcess, PointId, PointStruct};

const DIM: usize = 8;
const STATIC: u64 = 30_000;
/// The writer's ids: `STATIC..STATIC + DYNAMIC`.
const DYNAMIC: u64 = 5_000;
/// How long one resharding may take before the test gives up.
const RESHARD: Duration = Duration::from_secs(240);

fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The vector of point `id` at version `v`: pseudo-random, so exact-search ties do not occur.
fn vector(id: u64, v: u64) -> Vec<f32> {
    (0..DIM as u64)
        .map(|d| {
            (mix(id.wrapping_mul(1_000_003) ^ v.wrapping_mul(7919) ^ d) % 10_000) as f32 / 100.0
        })
        .collect()
}

fn point(id: u64, v: u64) -> PointStruct {
    PointStruct {
        id: PointId::Num(id),
        vector: vector(id, v),
        payload: Some(
            json!({"v": v, "static": id < STATIC})
                .as_object()
                .cloned()
                .expect("an object"),
        ),
    }
}

/// What the acknowledged writes say each point holds: its version, or absent.
type Model = BTreeMap<u64, u64>;

/// What a write that failed may have left behind, per point, until an acknowledged write
/// settles it: a version, or `None` (deleted). A write that fails is not acknowledged, so it may
/// or may not have taken effect.
type Maybe = BTreeMap<u64, BTreeSet<Option<u64>>>;

fn load(client: &Client, name: &str, ids: std::ops::Range<u64>, model: &mut Model) -> Result<()> {
    let all: Vec<u64> = ids.collect();
    for chunk in all.chunks(1000) {
        let batch: Vec<PointStruct> = chunk.iter().map(|i| point(*i, 0)).collect();
        client.upsert(name, &batch, true)?;
        model.extend(chunk.iter().map(|i| (*i, 0)));
    }
    Ok(())
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
    let deadline = Instant::now() + RESHARD;
    loop {
        let mut busy = None;
        for node in nodes {
            match cluster_json(node, name) {
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

/// Shards and their replicas (peer, state), from the applied state as `node` sees it.
fn layout(node: &NodeProcess, name: &str) -> Result<BTreeSet<(u32, u64, String)>> {
    Ok(collection_cluster(node, name)?.replicas())
}

fn shard_ids(node: &NodeProcess, name: &str) -> Result<BTreeSet<u32>> {
    Ok(layout(node, name)?.into_iter().map(|(s, _, _)| s).collect())
}

/// The reads a client must be able to rely on at any moment, checked through `client`: a full
/// scroll returns every static point exactly once, the filtered count is exact, and exact
/// filtered search equals brute force over the static points.
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
    let query = vector(1_000_000 + query_seed, 0);
    let found: Vec<Value> = client.call(
        Method::Post,
        &format!("/collections/{name}/points/search"),
        Some(&json!({"vector": query, "limit": 10, "filter": filter, "params": {"exact": true}})),
    )?;
    let found: Vec<u64> = found.iter().filter_map(|p| p["id"].as_u64()).collect();
    let mut reference: Vec<(f32, u64)> = (0..STATIC)
        .map(|id| {
            let d: f32 = vector(id, 0)
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

/// Every point of the collection, read through `node`, equals the model (or, for a point that
/// a failed write touched, what that write would have left).
fn matches_model(node: &NodeProcess, name: &str, model: &Model, maybe: &Maybe) -> Result<()> {
    let records = node.client().scroll_all(name, 5000, 200, true, true)?;
    let mut seen = BTreeMap::new();
    for r in records {
        let id = r.id.as_num().context("numeric ids")?;
        let v = r
            .payload
            .as_ref()
            .and_then(|p| p.get("v"))
            .and_then(Value::as_u64)
            .context("payload v")?;
        let stored: Vec<f32> = serde_json::from_value(r.vector.clone().context("a vector")?)?;
        ensure!(
            stored
                .iter()
                .zip(vector(id, v))
                .all(|(a, b)| (a - b).abs() < 1e-3),
            "point {id}: vector does not match version {v}"
        );
        ensure!(seen.insert(id, v).is_none(), "point {id} returned twice");
    }
    let allowed = |id: &u64, got: Option<u64>| {
        model.get(id).copied() == got || maybe.get(id).is_some_and(|m| m.contains(&got))
    };
    let missing: Vec<_> = model
        .keys()
        .filter(|id| !seen.contains_key(id) && !allowed(id, None))
        .take(5)
        .collect();
    let extra: Vec<_> = seen
        .iter()
        .filter(|(id, v)| !model.contains_key(id) && !allowed(id, Some(**v)))
        .map(|(id, _)| id)
        .take(5)
        .collect();
    let stale: Vec<_> = model
        .iter()
        .filter(|(id, v)| {
            seen.get(id)
                .is_some_and(|s| s != *v && !allowed(id, Some(*s)))
        })
        .take(5)
        .collect();
    ensure!(
        missing.is_empty() && extra.is_empty() && stale.is_empty(),
        "{} points read, {} expected; missing {missing:?}, unexpected {extra:?}, stale {stale:?}",
        seen.len(),
        model.len()
    );
    Ok(())
}

fn eventually_matches(node: &NodeProcess, name: &str, model: &Model, maybe: &Maybe) -> Result<()> {
    let deadline = Instant::now() + CONVERGE;
    loop {
        match matches_model(node, name, model, maybe) {
            Ok(()) => return Ok(()),
            Err(e) => ensure!(Instant::now() < deadline, "{e:#}"),
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// What the writer did: the model, what failed writes may have left, failed and acknowledged
/// writes.
type Written = (Model, Maybe, usize, usize);

/// A sequential writer of the dynamic ids, bounded in steps and time. Only acknowledged writes
/// enter the model.
struct Writer {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Written>>,
}

impl Writer {
    fn start(client: Client, name: &str, model: Model) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let name = name.to_string();
        let handle = std::thread::spawn(move || {
            let mut model = model;
            let mut maybe = Maybe::new();
            let (mut failed, mut acknowledged) = (0usize, 0usize);
            let deadline = Instant::now() + Duration::from_secs(600);
            let mut step = 1u64;
            while !flag.load(Ordering::SeqCst) && Instant::now() < deadline && step < 50_000 {
                let base = STATIC + (step * 7919) % DYNAMIC;
                let at = |k: u64| STATIC + (base + k * 101) % DYNAMIC;
                if step.is_multiple_of(4) {
                    let ids: Vec<u64> = (0..5).map(at).collect();
                    let pids: Vec<PointId> = ids.iter().map(|i| PointId::Num(*i)).collect();
                    match client.delete_points(&name, &pids, true) {
                        Ok(_) => {
                            acknowledged += 1;
                            for id in ids {
                                model.remove(&id);
                                maybe.remove(&id);
                            }
                        }
                        Err(e) => {
                            for id in ids {
                                maybe.entry(id).or_default().insert(None);
                            }
                            failed += 1;
                            if failed <= 3 {
                                eprintln!("writer: a delete failed: {e:#}");
                            }
                        }
                    }
                } else {
                    let batch: Vec<PointStruct> = (0..20).map(|k| point(at(k), step)).collect();
                    match client.upsert(&name, &batch, true) {
                        Ok(_) => {
                            acknowledged += 1;
                            for k in 0..20 {
                                model.insert(at(k), step);
                                maybe.remove(&at(k));
                            }
                        }
                        Err(e) => {
                            for k in 0..20 {
                                maybe.entry(at(k)).or_default().insert(Some(step));
                            }
                            failed += 1;
                            if failed <= 3 {
                                eprintln!("writer: an upsert failed: {e:#}");
                            }
                        }
                    }
                }
                step += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            (model, maybe, failed, acknowledged)
        });
        Writer {
            stop,
            handle: Some(handle),
        }
    }

    fn finish(mut self) -> Result<Written> {
        self.stop.store(true, Ordering::SeqCst);
        match self.handle.take().expect("joined once").join() {
            Ok(r) => Ok(r),
            Err(_) => bail!("the writer panicked"),
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
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
        json!({"vectors": {"size": DIM, "distance": "Euclid"}, "shard_number": 3, "replication_factor": 2}),
    )?;
    let mut model = Model::new();
    load(&nodes[0].client(), "docs", 0..STATIC, &mut model)?;
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
        &mut model,
    )?;
    let all: Vec<&NodeProcess> = nodes.iter().collect();
    let writer = Writer::start(nodes[0].client(), "docs", model);
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
    let (model, maybe, failed, acknowledged) = writer.finish()?;
    let (rounds, failures) = reader.finish()?;
    eprintln!(
        "writer: {acknowledged} acknowledged, {failed} failed; reader rounds by stage: {rounds:?}"
    );
    assert!(failures.is_empty(), "reads went wrong: {failures:#?}");
    assert!(acknowledged >= 20, "the writer kept writing");
    assert!(
        rounds.len() >= 3,
        "the reader ran during several stages: {rounds:?}"
    );
    for node in &nodes {
        matches_model(node, "docs", &model, &maybe)?;
    }
    // The points are where the 3-shard ring puts them: about a third each.
    let per_shard = points_per_shard(&nodes, "docs")?;
    let total: u64 = per_shard.values().sum();
    assert_eq!(total, model.len() as u64, "{per_shard:?}");
    for (shard, n) in &per_shard {
        assert!(
            (*n as f64) > total as f64 * 0.25 && (*n as f64) < total as f64 * 0.42,
            "shard {shard} holds {n} of {total}"
        );
    }
    Ok(())
}

/// Everything a client can see of the collection: points with vectors and payloads.
fn contents(node: &NodeProcess, name: &str) -> Result<Vec<(u64, String)>> {
    let records = node.client().scroll_all(name, 5000, 200, true, true)?;
    records
        .into_iter()
        .map(|r| {
            Ok((
                r.id.as_num().context("numeric ids")?,
                format!("{:?}{:?}", r.payload, r.vector),
            ))
        })
        .collect()
}

#[test]
fn abort_leaves_the_collection_as_it_was() -> Result<()> {
    let (nodes, _model) = setup()?;
    let all: Vec<&NodeProcess> = nodes.iter().collect();
    let before_layout = layout(&nodes[0], "docs")?;
    let before = contents(&nodes[0], "docs")?;
    let same = |what: &str| -> Result<()> {
        wait_settled(&all, "docs")?;
        for node in &nodes {
            ensure!(
                layout(node, "docs")? == before_layout,
                "{what}: layout changed"
            );
            ensure!(contents(node, "docs")? == before, "{what}: points changed");
        }
        Ok(())
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
    let writer = Writer::start(nodes[1].client(), "docs", model);

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

    let (model, maybe, failed, acknowledged) = writer.finish()?;
    eprintln!("writer: {acknowledged} acknowledged, {failed} failed");
    for node in &nodes {
        eventually_matches(node, "docs", &model, &maybe)?;
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
        json!({"vectors": {"size": DIM, "distance": "Euclid"}, "sharding_method": "custom", "replication_factor": 2}),
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
            let points: Vec<Value> = chunk
                .iter()
                .map(|i| json!({"id": i, "vector": vector(*i, 0), "payload": {"v": 0, "static": false}}))
                .collect();
            let _: Value = nodes[0].client().call(
                Method::Put,
                "/collections/keyed/points?wait=true",
                Some(&json!({"points": points, "shard_key": key})),
            )?;
            model.extend(chunk.iter().map(|i| (*i, 0)));
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
    for node in &nodes {
        eventually_matches(node, "keyed", &model, &Maybe::new())?;
    }
    Ok(())
}
