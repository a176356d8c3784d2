//! Shard transfers with real `shoal-node` processes on loopback: moving and replicating a shard
//! while a writer upserts and deletes, aborting, refusing impossible transfers, losing the
//! destination or the source to SIGKILL mid-transfer, and automatic recovery of a `Dead`
//! replica.
//!
//! The writer is single and sequential, so the acknowledged writes define exactly what every
//! replica must hold afterwards: the test keeps that model and compares whole collections
//! (ids, vectors, payloads) with it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use shoal_e2e::cluster::{
    CONVERGE, READY, collection_cluster, count, create_collection, replicas_agree, start_cluster,
    start_cluster_env,
};
use shoal_e2e::{Client, Method, NodeProcess, PointId, PointStruct};

const DIM: usize = 8;
/// Ids the writer touches, beyond the initial points.
const ID_SPACE: u64 = 60_000;
/// How long a transfer may take before the test gives up.
const TRANSFER: Duration = Duration::from_secs(180);

/// The value a point holds after version `v`: its vector and payload derive from both.
fn vector(id: u64, v: u64) -> Vec<f32> {
    (0..DIM)
        .map(|d| ((id * 31 + v * 17 + d as u64 * 7) % 1000) as f32 / 100.0)
        .collect()
}

fn point(id: u64, v: u64) -> PointStruct {
    PointStruct {
        id: PointId::Num(id),
        vector: vector(id, v),
        payload: Some(
            json!({"id": id, "v": v})
                .as_object()
                .cloned()
                .expect("an object"),
        ),
    }
}

/// What the acknowledged writes say each point holds: its version, or absent.
type Model = BTreeMap<u64, u64>;

/// What the writer did: the model of acknowledged writes, failed writes, acknowledged writes.
type Written = (Model, usize, usize);

fn load(client: &Client, name: &str, n: u64, model: &mut Model) -> Result<()> {
    for start in (0..n).step_by(1000) {
        let batch: Vec<PointStruct> = (start..(start + 1000).min(n))
            .map(|i| point(i, 0))
            .collect();
        client.upsert(name, &batch, true)?;
        for i in start..(start + 1000).min(n) {
            model.insert(i, 0);
        }
    }
    Ok(())
}

/// A sequential writer: upserts new versions and deletes, through one peer, until stopped or
/// bounded. Only acknowledged writes enter the model.
struct Writer {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Result<Written>>>,
}

impl Writer {
    fn start(client: Client, name: &str, model: Model) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let name = name.to_string();
        let handle = std::thread::spawn(move || -> Result<Written> {
            let mut model = model;
            let mut failed = 0usize;
            let mut acknowledged = 0usize;
            let deadline = Instant::now() + Duration::from_secs(240);
            let mut step = 1u64;
            while !flag.load(Ordering::SeqCst) && Instant::now() < deadline && step < 20_000 {
                let base = (step * 7919) % ID_SPACE;
                if step.is_multiple_of(4) {
                    let ids: Vec<PointId> = (0..5)
                        .map(|k| PointId::Num((base + k * 13) % ID_SPACE))
                        .collect();
                    match client.delete_points(&name, &ids, true) {
                        Ok(_) => {
                            acknowledged += 1;
                            for id in &ids {
                                if let PointId::Num(n) = id {
                                    model.remove(n);
                                }
                            }
                        }
                        Err(_) => failed += 1,
                    }
                } else {
                    let batch: Vec<PointStruct> = (0..20)
                        .map(|k| point((base + k * 101) % ID_SPACE, step))
                        .collect();
                    match client.upsert(&name, &batch, true) {
                        Ok(_) => {
                            acknowledged += 1;
                            for p in &batch {
                                if let PointId::Num(n) = p.id {
                                    model.insert(n, step);
                                }
                            }
                        }
                        Err(_) => failed += 1,
                    }
                }
                step += 1;
            }
            Ok((model, failed, acknowledged))
        });
        Writer {
            stop,
            handle: Some(handle),
        }
    }

    fn finish(mut self) -> Result<Written> {
        self.stop.store(true, Ordering::SeqCst);
        match self.handle.take().expect("joined once").join() {
            Ok(r) => r,
            Err(_) => bail!("the writer panicked"),
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Every point of the collection, read through `node`, equals the model: same ids, and each
/// point's payload version and vector.
fn matches_model(node: &NodeProcess, name: &str, model: &Model) -> Result<()> {
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
                .all(|(a, b)| (a - b).abs() < 1e-4),
            "point {id}: vector does not match version {v}"
        );
        ensure!(seen.insert(id, v).is_none(), "point {id} returned twice");
    }
    let missing: Vec<_> = model
        .keys()
        .filter(|id| !seen.contains_key(id))
        .take(5)
        .collect();
    let extra: Vec<_> = seen
        .keys()
        .filter(|id| !model.contains_key(id))
        .take(5)
        .collect();
    let stale: Vec<_> = model
        .iter()
        .filter(|(id, v)| seen.get(id).is_some_and(|s| s != *v))
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

/// [`matches_model`] within [`CONVERGE`]: after a peer was killed, reads may fail over.
fn eventually_matches(node: &NodeProcess, model: &Model, what: &str) -> Result<()> {
    let deadline = Instant::now() + CONVERGE;
    loop {
        match matches_model(node, "docs", model) {
            Ok(()) => return Ok(()),
            Err(e) => ensure!(Instant::now() < deadline, "{what}: {e:#}"),
        }
        std::thread::sleep(Duration::from_millis(200));
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

fn peer_id(node: &NodeProcess) -> Result<u64> {
    let v: Value = node.client().call(Method::Get, "/cluster", None)?;
    v["peer_id"].as_u64().context("peer id")
}

/// Polls until no transfer of `name` runs, watching (through `watcher`) for reported progress;
/// returns whether progress was seen.
fn wait_transfers_done(watcher: &NodeProcess, name: &str) -> Result<bool> {
    let deadline = Instant::now() + TRANSFER;
    let mut saw_progress = false;
    loop {
        let v: Value =
            watcher
                .client()
                .call(Method::Get, &format!("/collections/{name}/cluster"), None)?;
        let transfers = v["shard_transfers"].as_array().cloned().unwrap_or_default();
        if transfers.is_empty() {
            return Ok(saw_progress);
        }
        saw_progress |= transfers.iter().any(|t| {
            t["progress"]["points_total"]
                .as_u64()
                .is_some_and(|n| n > 0)
        });
        ensure!(
            Instant::now() < deadline,
            "transfers still running: {transfers:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// (peer ids by node index, the holder of shard 0, a node not holding it).
fn shard_zero(nodes: &[NodeProcess], name: &str) -> Result<(Vec<u64>, usize, usize)> {
    let ids: Vec<u64> = nodes.iter().map(peer_id).collect::<Result<_>>()?;
    let view = collection_cluster(&nodes[0], name)?;
    let holders: Vec<u64> = view
        .replicas()
        .into_iter()
        .filter(|(shard, _, _)| *shard == 0)
        .map(|(_, peer, _)| peer)
        .collect();
    let from = ids
        .iter()
        .position(|p| holders.contains(p))
        .context("a holder")?;
    let to = ids
        .iter()
        .position(|p| !holders.contains(p))
        .context("a peer without shard 0")?;
    Ok((ids, from, to))
}

fn transfer_under_writes(sync: bool, method: &str) -> Result<()> {
    let nodes = start_cluster(3, &[])?;
    create_collection(
        &nodes[0],
        "docs",
        json!({"vectors": {"size": DIM, "distance": "Euclid"}, "shard_number": 2}),
    )?;
    let mut model = Model::new();
    load(&nodes[0].client(), "docs", 50_000, &mut model)?;
    let (ids, from, to) = shard_zero(&nodes, "docs")?;
    let writer_node = 3 - from - to;
    let writer = Writer::start(nodes[writer_node].client(), "docs", model);
    std::thread::sleep(Duration::from_millis(300));
    let op = if sync {
        "replicate_shard"
    } else {
        "move_shard"
    };
    operate(
        &nodes[writer_node],
        "docs",
        json!({op: {"shard_id": 0, "from_peer_id": ids[from], "to_peer_id": ids[to], "method": method}}),
    )?;
    // Watched through the peer that is neither sender nor receiver.
    let saw_progress = wait_transfers_done(&nodes[writer_node], "docs")?;
    std::thread::sleep(Duration::from_millis(500));
    let (model, failed, acknowledged) = writer.finish()?;
    assert_eq!(failed, 0, "no write failed during the transfer");
    assert!(
        acknowledged >= 20,
        "the writer kept writing ({acknowledged} writes)"
    );
    eprintln!("{op} ({method}): {acknowledged} writes acknowledged during the transfer");
    assert!(saw_progress, "progress was visible on a third peer");
    let all: Vec<&NodeProcess> = nodes.iter().collect();
    let replicas = replicas_agree(&all, "docs", &["Partial", "Recovery"])?;
    let shard0: Vec<(u64, String)> = replicas
        .iter()
        .filter(|(s, _, _)| *s == 0)
        .map(|(_, p, st)| (*p, st.clone()))
        .collect();
    if sync {
        assert_eq!(shard0.len(), 2, "{replicas:?}");
    } else {
        assert_eq!(
            shard0,
            vec![(ids[to], "Active".to_string())],
            "{replicas:?}"
        );
    }
    assert!(shard0.iter().all(|(_, s)| s == "Active"));
    for node in &nodes {
        matches_model(node, "docs", &model)?;
    }
    if sync {
        // The destination alone must hold everything: take the source away.
        let mut nodes = nodes;
        nodes[from].kill_9()?;
        eventually_matches(&nodes[to], &model, "destination alone")?;
    }
    Ok(())
}

#[test]
fn stream_records_move_under_writes_keeps_every_acknowledged_write() -> Result<()> {
    transfer_under_writes(false, "stream_records")
}

#[test]
fn stream_records_replicate_under_writes_gives_an_identical_replica() -> Result<()> {
    transfer_under_writes(true, "stream_records")
}

#[test]
fn snapshot_move_under_writes_keeps_every_acknowledged_write() -> Result<()> {
    transfer_under_writes(false, "snapshot")
}

#[test]
fn snapshot_replicate_under_writes_gives_an_identical_replica() -> Result<()> {
    transfer_under_writes(true, "snapshot")
}

/// `wal_delta` to a peer without a replica has nothing to compare with: it streams every point.
#[test]
fn wal_delta_move_under_writes_keeps_every_acknowledged_write() -> Result<()> {
    transfer_under_writes(false, "wal_delta")
}

#[test]
fn wal_delta_replicate_under_writes_gives_an_identical_replica() -> Result<()> {
    transfer_under_writes(true, "wal_delta")
}

#[test]
fn abort_and_invalid_transfers_leave_the_cluster_as_it_was() -> Result<()> {
    let nodes = start_cluster(3, &[])?;
    create_collection(
        &nodes[0],
        "docs",
        json!({"vectors": {"size": DIM, "distance": "Euclid"}, "shard_number": 2}),
    )?;
    let mut model = Model::new();
    load(&nodes[0].client(), "docs", 20_000, &mut model)?;
    let (ids, from, to) = shard_zero(&nodes, "docs")?;
    let all: Vec<&NodeProcess> = nodes.iter().collect();
    let before = replicas_agree(&all, "docs", &[])?;

    let bad = |body: Value, status: u16| -> Result<()> {
        let r = nodes[1]
            .client()
            .raw(Method::Post, "/collections/docs/cluster", Some(&body))?;
        ensure!(
            r.status == status,
            "{body}: expected {status}, got {} {}",
            r.status,
            r.body
        );
        Ok(())
    };
    let mv = |shard: u32, a: u64, b: u64| json!({"move_shard": {"shard_id": shard, "from_peer_id": a, "to_peer_id": b}});
    bad(mv(0, ids[from], ids[from]), 400)?;
    bad(mv(0, ids[from], 4242), 404)?;
    bad(mv(0, ids[to], ids[from]), 400)?;
    bad(mv(9, ids[from], ids[to]), 404)?;
    bad(
        json!({"move_shard": {"shard_id": 0, "from_peer_id": ids[from], "to_peer_id": ids[to], "rate_limit": {"bytes_per_second": 0}}}),
        422,
    )?;
    bad(
        json!({"move_shard": {"shard_id": 0, "from_peer_id": ids[from], "to_peer_id": ids[to], "method": "resharding_stream_records"}}),
        400,
    )?;
    bad(json!({"move_shard": {"shard_id": 0}}), 400)?;
    bad(json!({"teleport_shard": {}}), 400)?;
    let missing = nodes[1].client().raw(
        Method::Post,
        "/collections/nope/cluster",
        Some(&mv(0, ids[from], ids[to])),
    )?;
    assert_eq!(missing.status, 404, "{}", missing.body);
    assert_eq!(
        replicas_agree(&all, "docs", &[])?,
        before,
        "refusals started nothing"
    );

    // A slow transfer, aborted while it streams: everything as before.
    operate(
        &nodes[1],
        "docs",
        json!({"replicate_shard": {"shard_id": 0, "from_peer_id": ids[from], "to_peer_id": ids[to], "rate_limit": {"points_per_second": 2000}}}),
    )?;
    // A second transfer of the same shard is refused while it runs.
    let other = 3 - from - to;
    bad(mv(0, ids[from], ids[other]), 409)?;
    let deadline = Instant::now() + CONVERGE;
    loop {
        let v: Value =
            nodes[other]
                .client()
                .call(Method::Get, "/collections/docs/cluster", None)?;
        let done = v["shard_transfers"][0]["progress"]["points_done"]
            .as_u64()
            .unwrap_or(0);
        if done > 0 {
            let rate = v["shard_transfers"][0]["progress"]["points_per_second"]
                .as_f64()
                .unwrap_or(0.0);
            assert!(rate < 4000.0, "the rate limit holds: {v}");
            break;
        }
        ensure!(Instant::now() < deadline, "no progress: {v}");
        std::thread::sleep(Duration::from_millis(100));
    }
    operate(
        &nodes[2],
        "docs",
        json!({"abort_transfer": {"shard_id": 0, "from_peer_id": ids[from], "to_peer_id": ids[to]}}),
    )?;
    assert_eq!(
        replicas_agree(&all, "docs", &[])?,
        before,
        "abort restores the replicas"
    );
    for node in &nodes {
        matches_model(node, "docs", &model)?;
        let view = collection_cluster(node, "docs")?;
        assert!(view.local_shards.len() <= 2);
    }
    // Aborting what does not run is refused.
    bad(
        json!({"abort_transfer": {"shard_id": 0, "from_peer_id": ids[from], "to_peer_id": ids[to]}}),
        400,
    )?;
    Ok(())
}

/// Every stage a sender goes through, held for a while by the nodes' test hook so that the
/// abort lands in it: an abort leaves the replicas and the points exactly as before.
#[test]
fn abort_at_each_stage_leaves_the_cluster_as_it_was() -> Result<()> {
    const STAGES: [(&str, &str); 6] = [
        ("stream_records", "clearing destination"),
        ("stream_records", "streaming points"),
        ("snapshot", "snapshotting"),
        ("snapshot", "destination restores the snapshot"),
        ("snapshot", "replaying queued updates"),
        ("wal_delta", "streaming points"),
    ];
    let pauses: Vec<String> = STAGES.iter().map(|(_, s)| format!("{s}=3000")).collect();
    let pauses = pauses.join(",");
    let nodes = start_cluster_env(3, &[], &[("SHOAL_TEST_TRANSFER_PAUSE", pauses.as_str())])?;
    create_collection(
        &nodes[0],
        "docs",
        json!({"vectors": {"size": DIM, "distance": "Euclid"}, "shard_number": 2}),
    )?;
    let mut model = Model::new();
    load(&nodes[0].client(), "docs", 5_000, &mut model)?;
    let (ids, from, to) = shard_zero(&nodes, "docs")?;
    let other = 3 - from - to;
    let all: Vec<&NodeProcess> = nodes.iter().collect();
    let before = replicas_agree(&all, "docs", &[])?;
    for (i, (method, stage)) in STAGES.iter().enumerate() {
        let op = if i % 2 == 0 {
            "replicate_shard"
        } else {
            "move_shard"
        };
        operate(
            &nodes[other],
            "docs",
            json!({op: {"shard_id": 0, "from_peer_id": ids[from], "to_peer_id": ids[to], "method": method}}),
        )?;
        let deadline = Instant::now() + CONVERGE;
        loop {
            let v: Value =
                nodes[other]
                    .client()
                    .call(Method::Get, "/collections/docs/cluster", None)?;
            if v["shard_transfers"][0]["progress"]["stage"] == *stage {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "{method} never reached `{stage}`: {v}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        operate(
            &nodes[other],
            "docs",
            json!({"abort_transfer": {"shard_id": 0, "from_peer_id": ids[from], "to_peer_id": ids[to]}}),
        )?;
        wait_transfers_done(&nodes[other], "docs")?;
        let deadline = Instant::now() + CONVERGE;
        loop {
            let now = replicas_agree(&all, "docs", &[])?;
            if now == before {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "{op} ({method}) aborted at `{stage}`: replicas {now:?}, before {before:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        for node in &nodes {
            matches_model(node, "docs", &model)?;
        }
        eprintln!("{op} ({method}) aborted at `{stage}`: as before");
    }
    Ok(())
}

#[test]
fn killing_either_side_mid_transfer_ends_consistently() -> Result<()> {
    let mut nodes = start_cluster(3, &[])?;
    create_collection(
        &nodes[0],
        "docs",
        json!({"vectors": {"size": DIM, "distance": "Euclid"}, "shard_number": 2}),
    )?;
    let mut model = Model::new();
    load(&nodes[0].client(), "docs", 20_000, &mut model)?;
    let (ids, from, to) = shard_zero(&nodes, "docs")?;
    let other = 3 - from - to;
    let all_replicas = |nodes: &[NodeProcess]| -> Result<_> {
        replicas_agree(&nodes.iter().collect::<Vec<_>>(), "docs", &["Partial"])
    };
    let before = all_replicas(&nodes)?;
    // About 10,000 points in shard 0: at 1000 points/s the transfer runs for ~10 s, well past
    // the kills below even on a loaded machine.
    let slow_replicate = json!({"replicate_shard": {"shard_id": 0, "from_peer_id": ids[from], "to_peer_id": ids[to], "rate_limit": {"points_per_second": 1000}}});

    // The destination dies mid-transfer: the transfer aborts and the replicas are as before.
    operate(&nodes[other], "docs", slow_replicate.clone())?;
    std::thread::sleep(Duration::from_millis(1500));
    nodes[to].kill_9()?;
    wait_transfers_done(&nodes[other], "docs")?;
    nodes[to].restart()?;
    nodes[to].wait_ready(Instant::now() + READY)?;
    assert_eq!(
        all_replicas(&nodes)?,
        before,
        "an aborted replicate leaves no replica behind"
    );
    for node in &nodes {
        matches_model(node, "docs", &model)?;
    }

    // The source dies mid-transfer: after its restart the transfer resumes from its last
    // acknowledged batch and runs to the end. Writes before the kill reach both sides.
    operate(&nodes[other], "docs", slow_replicate)?;
    std::thread::sleep(Duration::from_millis(1500));
    for v in 1..=3u64 {
        let batch: Vec<PointStruct> = (0..200).map(|i| point(i * 50, v)).collect();
        nodes[other].client().upsert("docs", &batch, true)?;
        for i in 0..200 {
            model.insert(i * 50, v);
        }
    }
    let gone: Vec<PointId> = (0..100).map(|i| PointId::Num(i * 50 + 1)).collect();
    nodes[other].client().delete_points("docs", &gone, true)?;
    for i in 0..100 {
        model.remove(&(i * 50 + 1));
    }
    nodes[from].kill_9()?;
    std::thread::sleep(Duration::from_millis(500));
    nodes[from].restart()?;
    nodes[from].wait_ready(Instant::now() + READY)?;
    wait_transfers_done(&nodes[other], "docs")?;
    let after = all_replicas(&nodes)?;
    let shard0: Vec<&(u32, u64, String)> = after.iter().filter(|(s, _, _)| *s == 0).collect();
    assert!(
        shard0.len() == 2 && shard0.iter().all(|(_, _, s)| s == "Active"),
        "the transfer completed after the source restarted: {after:?}"
    );
    assert!(
        nodes[from]
            .log_tail(2000)
            .contains("transfer resumes from its checkpoint"),
        "the restarted source resumed instead of starting over"
    );
    nodes[from].kill_9()?;
    eventually_matches(&nodes[to], &model, "destination alone")?;
    Ok(())
}

#[test]
fn a_dead_replica_recovers_by_itself_after_a_restart() -> Result<()> {
    let mut nodes = start_cluster(3, &[])?;
    create_collection(
        &nodes[0],
        "docs",
        json!({"vectors": {"size": DIM, "distance": "Euclid"}, "shard_number": 3, "replication_factor": 2}),
    )?;
    let mut model = Model::new();
    load(&nodes[0].client(), "docs", 10_000, &mut model)?;
    nodes[2].kill_9()?;
    // Writes while the peer is down mark its replicas Dead.
    let model = Arc::new(Mutex::new(model));
    {
        let mut m = model.lock().expect("not poisoned");
        for v in 1..=5u64 {
            let batch: Vec<PointStruct> = (0..2000).map(|i| point(i * 5, v)).collect();
            nodes[0].client().upsert("docs", &batch, true)?;
            for i in 0..2000 {
                m.insert(i * 5, v);
            }
        }
        let gone: Vec<u64> = (0..3000).filter(|i| i % 5 == 1).collect();
        let ids: Vec<PointId> = gone.iter().map(|i| PointId::Num(*i)).collect();
        nodes[0].client().delete_points("docs", &ids, true)?;
        for i in gone {
            m.remove(&i);
        }
    }
    let dead_peer = {
        let view = collection_cluster(&nodes[0], "docs")?;
        view.replicas()
            .into_iter()
            .find(|(_, _, s)| s == "Dead")
            .map(|(_, p, _)| p)
            .context("a Dead replica after writes to a killed peer")?
    };
    nodes[2].restart()?;
    nodes[2].wait_ready(Instant::now() + READY)?;
    let all: Vec<&NodeProcess> = nodes.iter().collect();
    let deadline = Instant::now() + TRANSFER;
    let replicas = loop {
        let r = replicas_agree(&all, "docs", &[])?;
        if r.iter().all(|(_, _, s)| s == "Active") {
            break r;
        }
        ensure!(Instant::now() < deadline, "not recovered: {r:?}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        replicas.iter().filter(|(_, p, _)| *p == dead_peer).count(),
        2
    );
    // Recovery compared the replicas and sent only the difference (`wal_delta`).
    let logs: String = nodes.iter().map(|n| n.log_tail(100_000)).collect();
    let deltas: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("wal_delta: sending the difference"))
        .collect();
    assert!(!deltas.is_empty(), "recovery used wal_delta");
    eprintln!("recovery deltas: {deltas:#?}");
    let model = model.lock().expect("not poisoned").clone();
    // The recovered peer alone with one other: kill the third, reads must still be complete.
    nodes[0].kill_9()?;
    eventually_matches(&nodes[2], &model, "after recovery")?;
    assert_eq!(count(&nodes[1], "docs")?, model.len() as u64);
    Ok(())
}
