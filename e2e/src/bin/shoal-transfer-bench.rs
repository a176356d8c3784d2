//! Shard transfer benchmark: two release `shoal-node` peers on loopback, one collection with one
//! shard on the first peer, a generated dataset; then the shard is moved to the second peer and
//! back with each transfer method, while one client searches continuously. Reports seconds and
//! points/s per move, and search latency before and during the transfer.
//!
//! With `--reshard`, three peers instead, a collection of three shards, and one resharding
//! from 3 to 4 shards (driven by the node) while one client searches: seconds, points moved
//! per second, and search latency before and during.
//!
//! With `--recovery`, two peers holding a replica each of one shard: the second peer is
//! killed, `--missed` single-point updates are written, and the peer is started again; its
//! replica (Dead) recovers by itself with `wal_delta`, replaying only the WAL operations it
//! missed. For comparison, the replica is then dropped and copied whole with
//! `stream_records`, in the same run.
//!
//! ```text
//! cargo build --release -p shoal-node -p shoal-e2e --bins
//! target/release/shoal-transfer-bench --points 100000 --dim 128
//! target/release/shoal-transfer-bench --points 100000 --dim 128 --reshard
//! target/release/shoal-transfer-bench --points 1000000 --dim 128 --recovery --missed 1000
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use serde_json::{Value, json};
use shoal_e2e::stats::percentile;
use shoal_e2e::{
    Client, ClusterRole, ClusteredGaussian, Method, NodeOptions, NodeProcess, PointId, PointStruct,
    SearchRequest, Vectors,
};

#[derive(Debug, Parser)]
#[command(about = "Measures shard transfers between two local shoal-node peers")]
struct Args {
    /// The node binary (a release build, for figures worth comparing).
    #[arg(long, default_value = "target/release/shoal-node")]
    node_bin: PathBuf,
    #[arg(long, default_value_t = 100_000)]
    points: usize,
    #[arg(long, default_value_t = 128)]
    dim: usize,
    #[arg(long, default_value_t = 100)]
    centres: usize,
    #[arg(long, default_value_t = 0.3)]
    sigma: f32,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Searches measured before the transfers.
    #[arg(long, default_value_t = 1000)]
    baseline_queries: usize,
    /// Transfer methods to run, each as a move there and back.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "stream_records,snapshot,wal_delta"
    )]
    methods: Vec<String>,
    /// Longest a transfer may take.
    #[arg(long, default_value_t = 900)]
    transfer_timeout_secs: u64,
    /// Measure a resharding from 3 to 4 shards on three peers instead of transfers.
    #[arg(long)]
    reshard: bool,
    /// Measure the recovery of a replica that missed `--missed` updates (`wal_delta`) against
    /// a full copy (`stream_records`) instead.
    #[arg(long, conflicts_with = "reshard")]
    recovery: bool,
    /// With `--recovery`: the updates the killed replica misses.
    #[arg(long, default_value_t = 1000)]
    missed: usize,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shoal-transfer-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn start(args: &Args, role: ClusterRole, name: &str) -> Result<NodeProcess> {
    NodeProcess::start_ready(
        NodeOptions {
            binary: Some(args.node_bin.clone()),
            cluster: Some(role),
            extra_args: vec!["--peer-name".into(), name.into()],
            client_timeout: Some(Duration::from_secs(120)),
            ..NodeOptions::default()
        },
        Duration::from_secs(60),
    )
}

fn peer_id(node: &NodeProcess) -> Result<u64> {
    let v: Value = node.client().call(Method::Get, "/cluster", None)?;
    v["peer_id"].as_u64().context("peer id")
}

fn holder(node: &NodeProcess) -> Result<u64> {
    let v: Value = node
        .client()
        .call(Method::Get, "/collections/bench/cluster", None)?;
    let local = v["local_shards"].as_array().cloned().unwrap_or_default();
    if local.iter().any(|s| s["state"] == "Active") {
        return v["peer_id"].as_u64().context("peer id");
    }
    v["remote_shards"]
        .as_array()
        .and_then(|r| r.iter().find(|s| s["state"] == "Active"))
        .and_then(|s| s["peer_id"].as_u64())
        .context("an active replica")
}

/// Waits until every peer reports the collection green. Collection status is each peer's
/// view of its own replicas, so every peer is asked.
fn wait_green(peers: &[&NodeProcess]) -> Result<()> {
    let t = Instant::now();
    while peers.iter().any(|n| {
        !n.client()
            .collection_info("bench")
            .is_ok_and(|i| i.status == "green")
    }) {
        if t.elapsed() > Duration::from_secs(600) {
            bail!("the collection did not turn green");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// How many optimizer steps the node's log records so far.
fn optimizer_steps(node: &NodeProcess) -> usize {
    std::fs::read_to_string(node.log_path())
        .map(|log| log.matches("optimizer step").count())
        .unwrap_or(0)
}

/// Copies the directory of the replica of shard 0 on `node` (every file, fsynced) and returns
/// its bytes and the seconds the copy took: what a transfer of the shard's files costs on this
/// disk at best.
fn copy_shard_files(node: &NodeProcess) -> Result<(u64, f64)> {
    fn copy(from: &std::path::Path, to: &std::path::Path) -> Result<u64> {
        std::fs::create_dir_all(to)?;
        let mut bytes = 0;
        for entry in std::fs::read_dir(from)? {
            let entry = entry?;
            let dest = to.join(entry.file_name());
            if entry.file_type()?.is_dir() {
                bytes += copy(&entry.path(), &dest)?;
            } else {
                bytes += std::fs::copy(entry.path(), &dest)?;
                std::fs::File::open(&dest)?.sync_all()?;
            }
        }
        Ok(bytes)
    }
    let shard = node.data_dir().join("collections/bench/shards/0");
    let target = node.work_dir().join("copy-of-shard-0");
    let t = Instant::now();
    let bytes = copy(&shard, &target)?;
    let secs = t.elapsed().as_secs_f64();
    std::fs::remove_dir_all(&target)?;
    Ok((bytes, secs))
}

/// Latencies (ms) of searches run one after another until `stop` (or `max` searches).
fn search_loop(client: Client, queries: Vectors, stop: Arc<AtomicBool>, max: usize) -> Vec<f64> {
    let mut out = Vec::new();
    for i in 0..max {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let q = queries.get(i % queries.len());
        let t = Instant::now();
        if client
            .search("bench", &SearchRequest::new(q.to_vec(), 10))
            .is_ok()
        {
            out.push(t.elapsed().as_secs_f64() * 1000.0);
        }
    }
    out
}

/// Upserts every vector of `data` as point `i` with payload `{"i": i}`, 1,000 per request.
fn load(client: &Client, data: &Vectors) -> Result<()> {
    for start in (0..data.len()).step_by(1000) {
        let batch: Vec<PointStruct> = (start..(start + 1000).min(data.len()))
            .map(|i| PointStruct {
                id: PointId::Num(i as u64),
                vector: data.get(i).to_vec(),
                payload: Some(json!({"i": i}).as_object().cloned().expect("object")),
            })
            .collect();
        client.upsert("bench", &batch, true)?;
    }
    Ok(())
}

fn summary(samples: &[f64]) -> String {
    let p = |q| percentile(samples, q).unwrap_or(f64::NAN);
    format!(
        "{} searches, p50 {:.2} ms, p99 {:.2} ms",
        samples.len(),
        p(50.0),
        p(99.0)
    )
}

fn run(args: &Args) -> Result<()> {
    if args.recovery {
        return recovery(args);
    }
    let a = start(args, ClusterRole::Found, "bench-0")?;
    let b = start(args, ClusterRole::Join(a.p2p_uri()), "bench-1")?;
    let c = if args.reshard {
        Some(start(args, ClusterRole::Join(a.p2p_uri()), "bench-2")?)
    } else {
        None
    };
    let ids = [peer_id(&a)?, peer_id(&b)?];
    let client = a.client();
    let shards = if args.reshard { 3 } else { 1 };
    let _: bool = client.call(
        Method::Put,
        "/collections/bench",
        Some(&json!({"vectors": {"size": args.dim, "distance": "Cosine"}, "shard_number": shards})),
    )?;
    let dist = ClusteredGaussian::new(args.dim, args.centres, args.sigma, args.seed)?;
    let data = dist.sample(args.points, args.seed.wrapping_add(1));
    let queries = dist.sample(1000, args.seed.wrapping_add(2));
    let t = Instant::now();
    load(&client, &data)?;
    eprintln!(
        "loaded {} x {} in {:.1?}",
        args.points,
        args.dim,
        t.elapsed()
    );
    // The optimizer starts a moment after the last write: give it that moment before asking.
    std::thread::sleep(Duration::from_secs(3));
    let t = Instant::now();
    let peers: Vec<&NodeProcess> = [&a, &b].into_iter().chain(c.as_ref()).collect();
    wait_green(&peers)?;
    eprintln!("indexed in {:.1?}", t.elapsed());

    let baseline = search_loop(
        b.client(),
        queries.clone(),
        Arc::new(AtomicBool::new(false)),
        args.baseline_queries,
    );
    if c.is_some() {
        return reshard(args, &client, &b, queries, &baseline);
    }
    let first_holder = if holder(&a)? == ids[0] { &a } else { &b };
    let (copy_bytes, copy_secs) = copy_shard_files(first_holder)?;
    println!(
        "copying the shard's files on this disk (with fsync): {:.1} MiB in {copy_secs:.2} s",
        copy_bytes as f64 / (1 << 20) as f64
    );
    println!(
        "| method | direction | seconds | points/s | x file copy | destination on arrival | search during the transfer |"
    );
    println!("| --- | --- | ---: | ---: | ---: | --- | --- |");
    println!("| (none) | | | | | | {} |", summary(&baseline));

    for method in &args.methods {
        for leg in 0..2 {
            let from = holder(&a)?;
            let to = if from == ids[0] { ids[1] } else { ids[0] };
            let stop = Arc::new(AtomicBool::new(false));
            let searcher = {
                let (client, queries, stop) = (b.client(), queries.clone(), Arc::clone(&stop));
                std::thread::spawn(move || search_loop(client, queries, stop, usize::MAX))
            };
            // Every leg starts from a settled, fully indexed source.
            wait_green(&peers)?;
            let dest = if to == ids[0] { &a } else { &b };
            let steps_before = optimizer_steps(dest);
            let t = Instant::now();
            let started = client.raw(
                Method::Post,
                "/collections/bench/cluster",
                Some(&json!({"move_shard": {"shard_id": 0, "from_peer_id": from, "to_peer_id": to, "method": method}})),
            )?;
            if started.status != 200 {
                stop.store(true, Ordering::SeqCst);
                let _ = searcher.join();
                println!(
                    "| {method} | | | | not run: HTTP {} {} |",
                    started.status, started.body
                );
                break;
            }
            loop {
                let v: Value = client.call(Method::Get, "/collections/bench/cluster", None)?;
                if v["shard_transfers"].as_array().is_some_and(Vec::is_empty) {
                    break;
                }
                if t.elapsed() > Duration::from_secs(args.transfer_timeout_secs) {
                    bail!("the {method} transfer did not finish: {v}");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let secs = t.elapsed().as_secs_f64();
            let arrival: Value = dest
                .client()
                .call(Method::Get, "/collections/bench", None)?;
            stop.store(true, Ordering::SeqCst);
            let during = searcher.join().unwrap_or_default();
            if holder(&a)? != to {
                bail!("the {method} transfer ended without moving the shard");
            }
            // Whatever the destination's optimizer does with what arrived shows within moments.
            std::thread::sleep(Duration::from_secs(3));
            let steps = optimizer_steps(dest) - steps_before;
            println!(
                "| {method} | {} | {secs:.2} | {:.0} | {:.1} | {}, {} of {} vectors indexed, {steps} optimizer steps | {} |",
                if leg == 0 {
                    "peer 0 -> 1"
                } else {
                    "peer 1 -> 0"
                },
                args.points as f64 / secs,
                secs / copy_secs,
                arrival["status"].as_str().unwrap_or("?"),
                arrival["indexed_vectors_count"],
                arrival["points_count"],
                summary(&during)
            );
        }
    }
    Ok(())
}

/// One resharding from 3 to 4 shards, driven by the node, with a searcher running.
fn reshard(
    args: &Args,
    client: &Client,
    searcher_node: &NodeProcess,
    queries: Vectors,
    baseline: &[f64],
) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    let searcher = {
        let (client, stop) = (searcher_node.client(), Arc::clone(&stop));
        std::thread::spawn(move || search_loop(client, queries, stop, usize::MAX))
    };
    let t = Instant::now();
    let _: bool = client.call(
        Method::Post,
        "/collections/bench/cluster",
        Some(&json!({"start_resharding": {"direction": "up"}})),
    )?;
    let mut moved = 0u64;
    loop {
        let v: Value = client.call(Method::Get, "/collections/bench/cluster", None)?;
        let ops = v["resharding_operations"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if let Some(n) = ops
            .first()
            .and_then(|op| op["progress"]["points_total"].as_u64())
        {
            moved = moved.max(n);
        }
        let transfers = v["shard_transfers"].as_array().map_or(0, Vec::len);
        if ops.is_empty() && transfers == 0 && v["shard_count"].as_u64() == Some(4) {
            break;
        }
        if t.elapsed() > Duration::from_secs(args.transfer_timeout_secs) {
            bail!("the resharding did not finish: {v}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let secs = t.elapsed().as_secs_f64();
    stop.store(true, Ordering::SeqCst);
    let during = searcher.join().unwrap_or_default();
    println!("| resharding | seconds | points moved | search before | search during |");
    println!("| --- | ---: | ---: | --- | --- |");
    println!(
        "| 3 -> 4 shards, {} points | {secs:.2} | {moved} | {} | {} |",
        args.points,
        summary(baseline),
        summary(&during)
    );
    Ok(())
}

/// The state of the replica of shard 0 on peer `peer`, as `node` sees the applied state.
fn replica_state(node: &NodeProcess, peer: u64) -> Result<Option<String>> {
    let v: Value = node
        .client()
        .call(Method::Get, "/collections/bench/cluster", None)?;
    let mine = v["peer_id"].as_u64() == Some(peer);
    let list = if mine {
        &v["local_shards"]
    } else {
        &v["remote_shards"]
    };
    Ok(list.as_array().and_then(|l| {
        l.iter()
            .find(|s| mine || s["peer_id"].as_u64() == Some(peer))
            .and_then(|s| s["state"].as_str().map(str::to_string))
    }))
}

/// Polls until the replica on `peer` is in `state` (`None`: gone), as `node` sees it.
fn wait_replica(node: &NodeProcess, peer: u64, state: Option<&str>, args: &Args) -> Result<()> {
    let t = Instant::now();
    while replica_state(node, peer)?.as_deref() != state {
        if t.elapsed() > Duration::from_secs(args.transfer_timeout_secs) {
            bail!("the replica on {peer} did not reach {state:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// The operations the last `wal_delta` replay in `node`'s log sent, if any.
fn replayed(node: &NodeProcess) -> Option<u64> {
    let log = std::fs::read_to_string(node.log_path()).ok()?;
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("wal_delta: replaying the WAL"))?;
    let rest = &line[line.find("operations=")? + "operations=".len()..];
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// `--recovery`: `wal_delta` recovery of a replica that missed `--missed` updates against a
/// full `stream_records` copy of the same shard.
fn recovery(args: &Args) -> Result<()> {
    // Three peers, so that the two holding a replica are not a Raft majority on their own:
    // the survivor marks the killed peer's replica Dead through consensus.
    let a = start(args, ClusterRole::Found, "bench-0")?;
    let mut others = [
        start(args, ClusterRole::Join(a.p2p_uri()), "bench-1")?,
        start(args, ClusterRole::Join(a.p2p_uri()), "bench-2")?,
    ];
    let client = a.client();
    // Not indexed: the transfers move points, graphs are not what is measured here.
    let _: bool = client.call(
        Method::Put,
        "/collections/bench",
        Some(&json!({
            "vectors": {"size": args.dim, "distance": "Cosine"},
            "shard_number": 1,
            "replication_factor": 2,
            "optimizers_config": {"indexing_threshold": 0},
        })),
    )?;
    // The replica that goes down: on a peer other than `a`, which the client writes through.
    let mut victim = None;
    for (i, node) in others.iter().enumerate() {
        let id = peer_id(node)?;
        if replica_state(&a, id)?.is_some() {
            victim = Some((i, id));
        }
    }
    let (victim, id_b) = victim.context("a replica on a peer other than the first")?;
    let id_a = {
        let v: Value = client.call(Method::Get, "/collections/bench/cluster", None)?;
        let mut holders = v["remote_shards"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["peer_id"].as_u64())
            .chain(
                v["local_shards"]
                    .as_array()
                    .is_some_and(|l| !l.is_empty())
                    .then(|| v["peer_id"].as_u64())
                    .flatten(),
            )
            .filter(|p| *p != id_b);
        holders.next().context("the other replica")?
    };
    wait_replica(&a, id_b, Some("Active"), args)?;
    let b = &mut others[victim];
    let dist = ClusteredGaussian::new(args.dim, args.centres, args.sigma, args.seed)?;
    let data = dist.sample(args.points, args.seed.wrapping_add(1));
    let t = Instant::now();
    load(&client, &data)?;
    eprintln!(
        "loaded {} x {} into two replicas in {:.1?}",
        args.points,
        args.dim,
        t.elapsed()
    );

    b.kill_9()?;
    let updates = dist.sample(args.missed, args.seed.wrapping_add(3));
    for i in 0..args.missed {
        let id = (i * 7919) % args.points;
        let point = PointStruct {
            id: PointId::Num(id as u64),
            vector: updates.get(i).to_vec(),
            payload: Some(
                json!({"i": id, "updated": i})
                    .as_object()
                    .cloned()
                    .expect("object"),
            ),
        };
        client.upsert("bench", &[point], true)?;
    }
    wait_replica(&a, id_b, Some("Dead"), args)?;
    let t = Instant::now();
    b.restart()?;
    b.wait_ready(Instant::now() + Duration::from_secs(args.transfer_timeout_secs))?;
    let open_secs = t.elapsed().as_secs_f64();
    wait_replica(&a, id_b, Some("Active"), args)?;
    let delta_secs = t.elapsed().as_secs_f64() - open_secs;
    let ops = std::iter::once(&a).chain(others.iter()).find_map(replayed);

    let _: bool = client.call(
        Method::Post,
        "/collections/bench/cluster",
        Some(&json!({"drop_replica": {"shard_id": 0, "peer_id": id_b}})),
    )?;
    wait_replica(&a, id_b, None, args)?;
    let t = Instant::now();
    let _: bool = client.call(
        Method::Post,
        "/collections/bench/cluster",
        Some(&json!({"replicate_shard": {"shard_id": 0, "from_peer_id": id_a, "to_peer_id": id_b, "method": "stream_records"}})),
    )?;
    wait_replica(&a, id_b, Some("Active"), args)?;
    let stream_secs = t.elapsed().as_secs_f64();

    println!(
        "| shard | missed updates | recovery | seconds | operations sent | x stream_records |"
    );
    println!("| --- | ---: | --- | ---: | ---: | ---: |");
    println!(
        "| {} x {} | {} | wal_delta (automatic, after the restart; opening the replica took {open_secs:.2} s more) | {delta_secs:.2} | {} | {:.4} |",
        args.points,
        args.dim,
        args.missed,
        ops.map_or("?".to_string(), |n| n.to_string()),
        delta_secs / stream_secs
    );
    println!(
        "| {} x {} | | stream_records (full copy) | {stream_secs:.2} | {} points | 1 |",
        args.points, args.dim, args.points
    );
    Ok(())
}
