//! Shard transfers with real `shoal-node` processes on loopback: moving and replicating a shard
//! while a writer upserts, deletes, sets and removes named vectors, aborting, refusing
//! impossible transfers, losing the destination or the source to SIGKILL mid-transfer,
//! automatic recovery of a `Dead` replica, and a coordinator's update held across the finish of
//! a move (routed again, not lost).
//!
//! The collection has every vector kind, each optional: a named dense vector, a sparse vector
//! and a multivector. The writer is single and sequential, so the acknowledged writes define
//! exactly what every replica must hold afterwards: the test keeps that model and compares whole
//! collections (ids, payloads, every named vector) with it.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::{Map, Value, json};
use shoal_e2e::acknowledged_writes::{
    Kind, Model, Write, Writer, WriterPlan, all_match_model, apply, collection_body, load,
};
use shoal_e2e::cluster::{
    CONVERGE, READY, collection_cluster, count, create_collection, replicas_agree, start_cluster,
    start_cluster_env,
};
use shoal_e2e::{Client, Method, NodeProcess};

/// Ids the writer touches, beyond the initial points.
const ID_SPACE: u64 = 60_000;
/// How long a transfer may take before the test gives up.
const TRANSFER: Duration = Duration::from_secs(180);

/// `docs` with a named dense vector, a sparse vector and a multivector, and `settings`.
fn create_docs(node: &NodeProcess, settings: Value) -> Result<()> {
    create_collection(node, "docs", collection_body(false, settings))
}

/// Points `0..n` at version 0, recorded in `model`.
fn load_docs(node: &NodeProcess, n: u64, model: &mut Model) -> Result<()> {
    load(&node.client(), "docs", 0..n, &Map::new(), model)
}

/// The writer of the transfer tests: every write kind over `0..ID_SPACE`, as fast as the node
/// acknowledges, bounded in steps and time.
fn writer_plan() -> WriterPlan {
    WriterPlan {
        ids: 0..ID_SPACE,
        max_steps: 20_000,
        max_time: Duration::from_secs(240),
        pause: Duration::ZERO,
    }
}

/// Every point of the collection, read through `node`, equals the model: same ids, and each
/// point's payload version and every named vector.
fn matches_model(node: &NodeProcess, name: &str, model: &Model) -> Result<()> {
    shoal_e2e::acknowledged_writes::matches_model(&node.client(), name, model)
}

/// [`matches_model`] through every node (at once).
fn all_match(nodes: &[NodeProcess], model: &Model) -> Result<()> {
    let clients: Vec<Client> = nodes.iter().map(NodeProcess::client).collect();
    all_match_model(&clients, "docs", model)
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
    create_docs(&nodes[0], json!({"shard_number": 2}))?;
    let mut model = Model::new();
    load_docs(&nodes[0], 50_000, &mut model)?;
    let (ids, from, to) = shard_zero(&nodes, "docs")?;
    let writer_node = 3 - from - to;
    let writer = Writer::start(nodes[writer_node].client(), "docs", model, writer_plan());
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
    let written = writer.finish()?;
    let acknowledged = &written.acknowledged;
    assert!(
        written.failed.is_empty(),
        "no write failed during the transfer: {:?}, {:#?}",
        written.failed,
        written.errors
    );
    assert!(
        written.acknowledged_total() >= 20 && acknowledged.len() == 4,
        "the writer kept writing, every kind of write: {acknowledged:?}"
    );
    eprintln!("{op} ({method}): writes acknowledged during the transfer: {acknowledged:?}");
    let model = written.model;
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
    all_match(&nodes, &model)?;
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
    create_docs(&nodes[0], json!({"shard_number": 2}))?;
    let mut model = Model::new();
    load_docs(&nodes[0], 20_000, &mut model)?;
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
    all_match(&nodes, &model)?;
    for node in &nodes {
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
    create_docs(&nodes[0], json!({"shard_number": 2}))?;
    let mut model = Model::new();
    load_docs(&nodes[0], 5_000, &mut model)?;
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
        all_match(&nodes, &model)?;
        eprintln!("{op} ({method}) aborted at `{stage}`: as before");
    }
    Ok(())
}

#[test]
fn killing_either_side_mid_transfer_ends_consistently() -> Result<()> {
    let mut nodes = start_cluster(3, &[])?;
    create_docs(&nodes[0], json!({"shard_number": 2}))?;
    let mut model = Model::new();
    load_docs(&nodes[0], 20_000, &mut model)?;
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
    all_match(&nodes, &model)?;

    // The source dies mid-transfer: after its restart the transfer resumes from its last
    // acknowledged batch and runs to the end. Writes before the kill reach both sides.
    operate(&nodes[other], "docs", slow_replicate)?;
    std::thread::sleep(Duration::from_millis(1500));
    let client = nodes[other].client();
    for v in 1..=3u64 {
        apply(
            &client,
            "docs",
            &mut model,
            &Write::upsert((0..200).map(|i| i * 50), v),
        )?;
    }
    let writes = [
        Write::Delete {
            ids: (0..100).map(|i| i * 50 + 1).collect(),
        },
        Write::UpdateVectors {
            ids: (0..100).map(|i| i * 50 + 2).collect(),
            kinds: vec![Kind::Sparse, Kind::Multi],
            v: 4,
        },
        Write::UpdateVectors {
            ids: (0..100).map(|i| i * 50 + 3).collect(),
            kinds: vec![Kind::Dense],
            v: 5,
        },
        Write::DeleteVectors {
            ids: (0..100).map(|i| i * 50 + 4).collect(),
            kinds: vec![Kind::Dense, Kind::Multi],
        },
    ];
    for write in &writes {
        apply(&client, "docs", &mut model, write)?;
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
    create_docs(
        &nodes[0],
        json!({"shard_number": 3, "replication_factor": 2}),
    )?;
    let mut model = Model::new();
    load_docs(&nodes[0], 10_000, &mut model)?;
    nodes[2].kill_9()?;
    // Writes while the peer is down mark its replicas Dead: new versions, deletes, and
    // changes of single named vectors, which recovery must see as differences too.
    let client = nodes[0].client();
    for v in 1..=5u64 {
        apply(
            &client,
            "docs",
            &mut model,
            &Write::upsert((0..2000).map(|i| i * 5), v),
        )?;
    }
    let writes = [
        Write::Delete {
            ids: (0..3000).filter(|i| i % 5 == 1).collect(),
        },
        Write::UpdateVectors {
            ids: (0..1000).map(|i| i * 5 + 2).collect(),
            kinds: vec![Kind::Sparse],
            v: 6,
        },
        Write::UpdateVectors {
            ids: (1000..2000).map(|i| i * 5 + 2).collect(),
            kinds: vec![Kind::Dense, Kind::Multi],
            v: 7,
        },
        Write::DeleteVectors {
            ids: (0..1000).map(|i| i * 5 + 3).collect(),
            kinds: vec![Kind::Multi],
        },
        Write::DeleteVectors {
            ids: (1000..2000).map(|i| i * 5 + 3).collect(),
            kinds: vec![Kind::Sparse, Kind::Dense],
        },
    ];
    for write in &writes {
        apply(&client, "docs", &mut model, write)?;
    }
    let dead_peer = {
        let view = collection_cluster(&nodes[0], "docs")?;
        view.replicas()
            .into_iter()
            .find(|(_, _, s)| s == "Dead")
            .map(|(_, p, _)| p)
            .context("a Dead replica after writes to a killed peer")?
    };
    // Writes go on while the replicas recover: what is forwarded to a recovering replica
    // must not count as the history it missed.
    let writer = Writer::start(nodes[0].client(), "docs", model, writer_plan());
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
    let written = writer.finish()?;
    ensure!(written.failed.is_empty(), "{:?}", written.errors);
    let model = written.model.clone();
    assert_eq!(
        replicas.iter().filter(|(_, p, _)| *p == dead_peer).count(),
        2
    );
    // Recovery replayed the source's WAL from each replica's recovery point (`wal_delta`):
    // the operations the replica missed (the 10 writes above and the writer's, at most one
    // operation per shard each), not a copy of every point.
    let replayed = replayed_operations(&nodes);
    let bound = writes.len() + 5 + written.acknowledged_total() + written.failed_total();
    eprintln!("operations replayed per recovered replica: {replayed:?} (at most {bound})");
    assert_eq!(replayed.len(), 2, "one WAL replay per Dead replica");
    assert!(
        replayed.iter().all(|n| (1..=bound).contains(n)),
        "{replayed:?}"
    );
    // The recovered peer alone with one other: kill the third, reads must still be complete.
    nodes[0].kill_9()?;
    eventually_matches(&nodes[2], &model, "after recovery")?;
    let expected = model.count_range();
    assert_eq!(count(&nodes[1], "docs")?, *expected.start(), "{expected:?}");
    assert!(model.is_exact());
    Ok(())
}

/// The `operations=N` of every WAL replay the nodes logged (`wal_delta` recoveries).
fn replayed_operations(nodes: &[NodeProcess]) -> Vec<usize> {
    let logs: String = nodes.iter().map(|n| n.log_tail(100_000)).collect();
    logs.lines()
        .filter(|l| l.contains("wal_delta: replaying the WAL"))
        .filter_map(|l| {
            let rest = &l[l.find("operations=")? + "operations=".len()..];
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

/// Whether every WAL of `node`'s replicas of `docs` dropped its first file (a flush let go
/// of the records in it).
fn wals_dropped_their_first_file(node: &NodeProcess) -> Result<bool> {
    let shards = node.data_dir().join("collections/docs/shards");
    let mut all = true;
    for shard in std::fs::read_dir(&shards)? {
        let first = shard?.path().join("wal/00000000000000000001.wal");
        all &= !first.exists();
    }
    Ok(all)
}

/// A Dead replica that missed more than its peers' WALs still hold (1 MiB files, none kept
/// after a flush) cannot be brought up to date from them: recovery says so and copies every
/// point, and the replica ends up complete.
#[test]
fn a_dead_replica_whose_missed_writes_left_the_wal_is_copied_whole() -> Result<()> {
    let mut nodes = start_cluster(3, &[])?;
    create_docs(
        &nodes[0],
        json!({
            "shard_number": 3,
            "replication_factor": 2,
            "wal_config": {"wal_capacity_mb": 1, "wal_retain_closed": 0},
            "optimizers_config": {"flush_interval_sec": 1},
        }),
    )?;
    let mut model = Model::new();
    load_docs(&nodes[0], 2_000, &mut model)?;
    nodes[2].kill_9()?;
    let client = nodes[0].client();
    // About 2 MiB of WAL per shard.
    for v in 1..=20u64 {
        apply(&client, "docs", &mut model, &Write::upsert(0..3000, v))?;
    }
    let deadline = Instant::now() + CONVERGE;
    while !(wals_dropped_their_first_file(&nodes[0])? && wals_dropped_their_first_file(&nodes[1])?)
    {
        ensure!(Instant::now() < deadline, "the WALs were not cut back");
        std::thread::sleep(Duration::from_millis(200));
    }
    nodes[2].restart()?;
    nodes[2].wait_ready(Instant::now() + READY)?;
    let all: Vec<&NodeProcess> = nodes.iter().collect();
    let deadline = Instant::now() + TRANSFER;
    loop {
        let r = replicas_agree(&all, "docs", &[])?;
        if r.iter().all(|(_, _, s)| s == "Active") {
            break;
        }
        ensure!(Instant::now() < deadline, "not recovered: {r:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let logs: String = nodes.iter().map(|n| n.log_tail(100_000)).collect();
    assert!(
        logs.contains("no delta for the destination's recovery point")
            && logs.contains("the WAL no longer reaches back to the recovery point"),
        "recovery said why it copied every point"
    );
    assert!(replayed_operations(&nodes).is_empty());
    nodes[0].kill_9()?;
    eventually_matches(&nodes[2], &model, "after recovery")?;
    Ok(())
}

/// A coordinator stalls (a test hook holds its update for 30 s, longer than any timeout on the
/// way) between routing an update and sending it, while a move of the shard finishes on every
/// peer. The replicas of the old layout refuse it (the one that stays as routed by an older
/// layout, the moved one as gone), the coordinator routes it again by the new layout, the update
/// is acknowledged, and the destination of the move holds it.
#[test]
fn an_update_held_across_a_move_is_routed_again_not_lost() -> Result<()> {
    const HELD_ID: u64 = 999_999;
    const HOLD: Duration = Duration::from_secs(30);
    let hold = format!("{HELD_ID}={}", HOLD.as_millis());
    let mut nodes = start_cluster_env(3, &[], &[("SHOAL_TEST_HOLD_UPDATE", hold.as_str())])?;
    create_docs(
        &nodes[0],
        json!({"shard_number": 1, "replication_factor": 2}),
    )?;
    let mut model = Model::new();
    load_docs(&nodes[0], 2_000, &mut model)?;
    // `from` moves its replica to `to`, the one peer without one; `stays` keeps its replica.
    let (ids, from, to) = shard_zero(&nodes, "docs")?;
    let stays = 3 - from - to;
    // The coordinator holds no replica at first: every replica it writes to is remote.
    let coordinator = to;
    let write = Write::upsert([HELD_ID], 1);
    let started = Instant::now();
    let held = {
        let (write, client) = (
            write.clone(),
            Client::with_timeout(nodes[coordinator].url(), HOLD * 4),
        );
        std::thread::spawn(move || write.send(&client, "docs"))
    };
    let deadline = Instant::now() + TRANSFER;
    while !nodes[coordinator]
        .log_tail(100_000)
        .contains("test hook: holding a routed update")
    {
        ensure!(
            Instant::now() < deadline,
            "the coordinator did not hold the update"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    operate(
        &nodes[stays],
        "docs",
        json!({"move_shard": {"shard_id": 0, "from_peer_id": ids[from], "to_peer_id": ids[to]}}),
    )?;
    let moved = std::collections::BTreeSet::from([
        (0, ids[stays], "Active".to_string()),
        (0, ids[to], "Active".to_string()),
    ]);
    let all: Vec<&NodeProcess> = nodes.iter().collect();
    loop {
        let replicas = replicas_agree(&all, "docs", &["Partial"])?;
        if replicas == moved {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the move did not finish: {replicas:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    ensure!(
        !held.is_finished(),
        "the update was answered before the move finished on every peer: the hold did not span it"
    );

    let answered = held
        .join()
        .map_err(|_| anyhow::anyhow!("the writing thread panicked"))?;
    model.record(&write, answered.is_ok());
    answered.context("the held update was not acknowledged")?;
    ensure!(started.elapsed() >= HOLD, "the update was not held");
    // The destination alone: every acknowledged write is there, the held one included.
    nodes[stays].kill_9()?;
    eventually_matches(&nodes[to], &model, "the destination alone")?;
    assert!(model.is_exact());
    // The path it took: refused as routed by an older layout, then routed again.
    let log = nodes[coordinator].log_tail(100_000);
    ensure!(
        log.lines()
            .any(|l| l.contains("routing it again by a newer one") && l.contains("stale=true")),
        "the coordinator did not see its update refused as routed by an older layout"
    );
    Ok(())
}
