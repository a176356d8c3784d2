//! Snapshots with real `shoal-node` processes: `kill -9` while a snapshot is written and while
//! one is restored (every acknowledged write kept, no segment served twice, no temporary
//! directory left), a `snapshot` transfer that ships indexed segments (the destination does
//! no indexing), a single node's snapshot restored into a fresh 3-peer cluster, and replicas
//! whose segment files fail their checksum at a restart (not served; recovered by a transfer or
//! from a shard snapshot).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use shoal_e2e::cluster::{READY, collection_cluster, count, replicas_agree, start_cluster};
use shoal_e2e::{Client, Method, NodeOptions, NodeProcess};

const DIM: usize = 8;
const PAUSE_ENV: &str = "SHOAL_TEST_SNAPSHOT_PAUSE";

fn create(client: &Client, name: &str, extra: Value) -> Result<()> {
    let mut body = json!({
        "vectors": {"size": DIM, "distance": "Euclid"},
        // 2 KB of vectors fill a segment: sealed, indexed segments after a few hundred points.
        "optimizers_config": {"indexing_threshold": 2},
        "hnsw_config": {"full_scan_threshold": 10},
    });
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    let _: bool = client.call(Method::Put, &format!("/collections/{name}"), Some(&body))?;
    Ok(())
}

fn vector(id: u64, version: u64) -> Vec<f32> {
    (0..DIM)
        .map(|i| ((id * 31 + i as u64 * 7 + version * 13) % 97) as f32 / 97.0)
        .collect()
}

/// Upserts `ids` at `version` with `wait=true`.
fn upsert(client: &Client, name: &str, ids: std::ops::Range<u64>, version: u64) -> Result<()> {
    let points: Vec<Value> = ids
        .map(|id| json!({"id": id, "vector": vector(id, version), "payload": {"v": version}}))
        .collect();
    for chunk in points.chunks(200) {
        let _: Value = client.call(
            Method::Put,
            &format!("/collections/{name}/points?wait=true"),
            Some(&json!({"points": chunk})),
        )?;
    }
    Ok(())
}

/// Every point as (id, version in the payload, vector).
fn contents(client: &Client, name: &str) -> Result<Vec<(u64, u64, Vec<f32>)>> {
    let mut out = Vec::new();
    let mut offset: Option<Value> = None;
    for _ in 0..1000 {
        let mut body = json!({"limit": 500, "with_payload": true, "with_vector": true});
        if let Some(o) = &offset {
            body["offset"] = o.clone();
        }
        let page: Value = client.call(
            Method::Post,
            &format!("/collections/{name}/points/scroll"),
            Some(&body),
        )?;
        for p in page["points"].as_array().context("points")? {
            let id = p["id"].as_u64().context("id")?;
            let v = p["payload"]["v"].as_u64().context("payload v")?;
            let vec: Vec<f32> = serde_json::from_value(p["vector"].clone())?;
            out.push((id, v, vec));
        }
        match page.get("next_page_offset") {
            Some(o) if !o.is_null() => offset = Some(o.clone()),
            _ => return Ok(out),
        }
    }
    bail!("scroll did not end")
}

fn expected(ids: std::ops::Range<u64>, version: u64) -> Vec<(u64, u64, Vec<f32>)> {
    ids.map(|id| (id, version, vector(id, version))).collect()
}

/// Waits (bounded) until `path` matches `found`.
fn wait_for(what: &str, timeout: Duration, mut found: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if found() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("timed out waiting for {what}")
}

/// Files or directories under `dir` whose name satisfies `matches`, recursively.
fn find(dir: &Path, matches: &dyn Fn(&str) -> bool) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if matches(&name) {
            out.push(entry.path());
        }
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(find(&entry.path(), matches));
        }
    }
    out
}

/// Nothing an interrupted snapshot or restore leaves behind survives a restart.
fn no_leftovers(node: &NodeProcess) -> Result<()> {
    let data = node.data_dir();
    // (A segment's `<id>.tmp` may be an optimization running now, so only snapshot files and
    // replica restores are looked at.)
    let mut left = find(&data.join("snapshots"), &|n: &str| {
        n.ends_with(".tmp") && n != ".tmp"
    });
    left.extend(find(&data.join("collections"), &|n: &str| {
        n.starts_with(".restore-") || n.starts_with(".dropped-")
    }));
    ensure!(left.is_empty(), "left behind: {left:?}");
    ensure!(
        !data.join("snapshots").join(".tmp").exists(),
        "snapshots/.tmp survived the restart"
    );
    Ok(())
}

fn restart_with(node: &mut NodeProcess, pauses: &str) -> Result<()> {
    node.set_env(PAUSE_ENV, pauses);
    node.restart()?;
    node.wait_ready(Instant::now() + READY)
}

#[test]
fn kill_9_while_a_snapshot_is_written_or_restored_keeps_a_consistent_node() {
    let mut source = NodeProcess::start_ready(NodeOptions::default(), READY).expect("source node");
    let mut node = NodeProcess::start_ready(NodeOptions::default(), READY).expect("node");
    let result = crash_during_snapshots(&source, &mut node);
    if result.is_err() {
        eprintln!("node log tail:\n{}", node.log_tail(80));
    }
    let _ = source.stop(Duration::from_secs(5));
    result.expect("snapshots survive kill -9");
}

fn crash_during_snapshots(source: &NodeProcess, node: &mut NodeProcess) -> Result<()> {
    let name = "snap";
    // The snapshot to restore: version 1 of points 0..800 (sealed segments and a tail).
    create(&source.client(), name, json!({}))?;
    upsert(&source.client(), name, 0..800, 1)?;
    let taken: Value = source.client().call(
        Method::Post,
        &format!("/collections/{name}/snapshots"),
        None,
    )?;
    let snapshot = taken["name"].as_str().context("snapshot name")?.to_string();
    let url = format!("{}/collections/{name}/snapshots/{snapshot}", source.url());

    // The node's own data: version 2 of points 0..600.
    create(&node.client(), name, json!({}))?;
    upsert(&node.client(), name, 0..600, 2)?;
    let own = expected(0..600, 2);
    ensure!(contents(&node.client(), name)? == own, "loaded as written");

    // 1. Killed while writing a snapshot: the archive is written but not renamed into place.
    restart_with(node, "packed=60000")?;
    let client = node.client();
    let path = format!("/collections/{name}/snapshots");
    let creating = std::thread::spawn(move || client.raw(Method::Post, &path, None));
    let snapshots = node.data_dir().join("snapshots");
    wait_for("a half-written snapshot", Duration::from_secs(30), || {
        !find(&snapshots, &|n: &str| n.ends_with(".snapshot.tmp")).is_empty()
    })?;
    node.kill_9()?;
    let _ = creating.join();
    restart_with(node, "")?;
    no_leftovers(node)?;
    ensure!(
        contents(&node.client(), name)? == own,
        "after a kill while snapshotting"
    );
    let listed: Vec<Value> =
        node.client()
            .call(Method::Get, &format!("/collections/{name}/snapshots"), None)?;
    ensure!(
        listed.is_empty(),
        "an incomplete snapshot is listed: {listed:?}"
    );

    // 2. Killed after the archive is unpacked, before the restore: the old data stays.
    restart_with(node, "unpacked=60000")?;
    let client = node.client();
    let (path, body) = (
        format!("/collections/{name}/snapshots/recover"),
        json!({"location": url}),
    );
    let recovering = std::thread::spawn(move || client.raw(Method::Put, &path, Some(&body)));
    wait_for("an unpacked snapshot", Duration::from_secs(30), || {
        !find(&snapshots, &|n: &str| n == "shard-snapshot.json").is_empty()
    })?;
    node.kill_9()?;
    let _ = recovering.join();
    restart_with(node, "")?;
    no_leftovers(node)?;
    ensure!(
        contents(&node.client(), name)? == own,
        "after a kill before the swap"
    );

    // 3. Killed between the swap's two renames: the restart finishes the restore.
    restart_with(node, "swapping=60000")?;
    let client = node.client();
    let (path, body) = (
        format!("/collections/{name}/snapshots/recover"),
        json!({"location": url}),
    );
    let recovering = std::thread::spawn(move || client.raw(Method::Put, &path, Some(&body)));
    let shards = node.data_dir().join("collections");
    wait_for("a restore mid-swap", Duration::from_secs(30), || {
        !find(&shards, &|n: &str| n.starts_with(".dropped-")).is_empty()
    })?;
    node.kill_9()?;
    let _ = recovering.join();
    restart_with(node, "")?;
    no_leftovers(node)?;
    let restored = expected(0..800, 1);
    let got = contents(&node.client(), name)?;
    ensure!(
        got == restored,
        "after a kill mid-swap the restore is finished: {} points, versions {:?}",
        got.len(),
        got.iter()
            .map(|p| p.1)
            .collect::<std::collections::BTreeSet<_>>()
    );
    ensure!(count(node, name)? == 800, "each point counted once");

    // 4. Writes acknowledged after the restore survive a kill, and a completed recovery
    //    with the same archive again gives the snapshot's state.
    upsert(&node.client(), name, 800..900, 3)?;
    node.kill_9()?;
    restart_with(node, "")?;
    let mut want = restored.clone();
    want.extend(expected(800..900, 3));
    ensure!(
        contents(&node.client(), name)? == want,
        "writes after the restore"
    );
    let r = node.client().raw(
        Method::Put,
        &format!("/collections/{name}/snapshots/recover"),
        Some(&json!({"location": url})),
    )?;
    ensure!(r.status == 200, "recover answered {} {}", r.status, r.body);
    ensure!(
        contents(&node.client(), name)? == restored,
        "recovered again"
    );
    Ok(())
}

#[test]
fn a_snapshot_transfer_ships_indexed_segments() {
    let nodes = start_cluster(2, &[]).expect("cluster");
    let result = ship_segments(&nodes);
    if result.is_err() {
        for n in &nodes {
            eprintln!("log tail of {}:\n{}", n.url(), n.log_tail(60));
        }
    }
    result.expect("snapshot transfer");
}

fn ship_segments(nodes: &[NodeProcess]) -> Result<()> {
    let name = "shipped";
    create(
        &nodes[0].client(),
        name,
        json!({"shard_number": 1, "replication_factor": 1}),
    )?;
    upsert(&nodes[0].client(), name, 0..3000, 1)?;
    let cluster = collection_cluster(&nodes[0], name)?;
    let holder = if cluster.local_shards.is_empty() {
        1
    } else {
        0
    };
    let other = 1 - holder;
    // The source settles: every full segment indexed.
    wait_for("the source to be green", Duration::from_secs(120), || {
        nodes[holder]
            .client()
            .call::<Value>(Method::Get, &format!("/collections/{name}"), None)
            .is_ok_and(|v| v["status"] == "green" && v["indexed_vectors_count"].as_u64() > Some(0))
    })?;
    let from = collection_cluster(&nodes[holder], name)?.peer_id;
    let to = collection_cluster(&nodes[other], name)?.peer_id;
    let _: bool = nodes[0].client().call(
        Method::Post,
        &format!("/collections/{name}/cluster"),
        Some(&json!({"replicate_shard": {
            "shard_id": 0, "from_peer_id": from, "to_peer_id": to, "method": "snapshot"
        }})),
    )?;
    let all: Vec<&NodeProcess> = nodes.iter().collect();
    let replicas = replicas_agree(&all, name, &["Partial", "Recovery", "Dead"])?;
    ensure!(replicas.len() == 2, "two replicas: {replicas:?}");
    let log = std::fs::read_to_string(nodes[other].log_path())?;
    ensure!(
        log.contains("local replica restored from a snapshot"),
        "the destination restored segment files"
    );
    ensure!(
        !log.contains("optimizer step"),
        "the destination indexed nothing itself"
    );
    // The destination alone serves the same points.
    ensure!(
        contents(&nodes[other].client(), name)? == expected(0..3000, 1),
        "the destination holds every point"
    );
    Ok(())
}

#[test]
fn a_single_node_snapshot_restores_into_a_fresh_cluster() {
    let mut single = NodeProcess::start_ready(NodeOptions::default(), READY).expect("single node");
    let cluster = start_cluster(3, &[]).expect("cluster");
    let result = restore_into_cluster(&single, &cluster);
    if result.is_err() {
        for n in &cluster {
            eprintln!("log tail of {}:\n{}", n.url(), n.log_tail(60));
        }
    }
    let _ = single.stop(Duration::from_secs(5));
    result.expect("restore into a fresh cluster");
}

fn restore_into_cluster(single: &NodeProcess, cluster: &[NodeProcess]) -> Result<()> {
    let name = "moved";
    create(
        &single.client(),
        name,
        json!({"shard_number": 2, "replication_factor": 1}),
    )?;
    upsert(&single.client(), name, 0..1500, 1)?;
    let taken: Value = single.client().call(
        Method::Post,
        &format!("/collections/{name}/snapshots"),
        None,
    )?;
    let url = format!(
        "{}/collections/{name}/snapshots/{}",
        single.url(),
        taken["name"].as_str().context("snapshot name")?
    );
    let r = cluster[1].client().raw(
        Method::Put,
        &format!("/collections/{name}/snapshots/recover"),
        Some(&json!({"location": url, "checksum": taken["checksum"]})),
    )?;
    ensure!(r.status == 200, "recover answered {} {}", r.status, r.body);
    let all: Vec<&NodeProcess> = cluster.iter().collect();
    replicas_agree(&all, name, &["Partial", "Recovery", "Dead", "Initializing"])?;
    let want = expected(0..1500, 1);
    for node in cluster {
        ensure!(
            contents(&node.client(), name)? == want,
            "peer {} serves the snapshot's points",
            node.url()
        );
    }
    Ok(())
}

/// A replica whose segment file fails its checksum at a restart neither stops its node nor is
/// served. With a second replica elsewhere it is marked Dead and recovered by a transfer; as
/// the only replica of its shard it stays unavailable (reads fail, never answer without its
/// points) until a shard snapshot is recovered into it. Its files are kept in quarantine.
#[test]
fn a_replica_that_fails_its_checksum_is_recovered_not_served() {
    let mut nodes = start_cluster(2, &[]).expect("cluster");
    let result = damaged_replicas(&mut nodes);
    if result.is_err() {
        for n in &nodes {
            eprintln!("log tail of {}:\n{}", n.url(), n.log_tail(80));
        }
    }
    result.expect("damaged replicas");
}

/// Flips one byte of every `points.bin` under `shard_dir`'s segments; returns how many.
fn damage_segments(shard_dir: &Path) -> Result<usize> {
    let files = find(&shard_dir.join("segments"), &|n: &str| n == "points.bin");
    for file in &files {
        let mut bytes = std::fs::read(file)?;
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x5A;
        std::fs::write(file, bytes)?;
    }
    Ok(files.len())
}

fn damaged_replicas(nodes: &mut [NodeProcess]) -> Result<()> {
    let client = nodes[0].client();
    // `twice`: one shard with a replica on each peer; `once`: two shards, one replica each.
    create(
        &client,
        "twice",
        json!({"shard_number": 1, "replication_factor": 2}),
    )?;
    create(
        &client,
        "once",
        json!({"shard_number": 2, "replication_factor": 1}),
    )?;
    for name in ["twice", "once"] {
        upsert(&client, name, 0..1500, 1)?;
        wait_for(
            &format!("`{name}` to be green"),
            Duration::from_secs(120),
            || {
                [&nodes[0], &nodes[1]].iter().all(|n| {
                    n.client()
                        .call::<Value>(Method::Get, &format!("/collections/{name}"), None)
                        .is_ok_and(|v| v["status"] == "green")
                })
            },
        )?;
    }
    let on_b = collection_cluster(&nodes[1], "once")?;
    let lost = on_b
        .local_shards
        .first()
        .context("a shard of `once` on b")?;
    let lost = lost.shard_id;
    let taken: Value = nodes[1].client().call(
        Method::Post,
        &format!("/collections/once/shards/{lost}/snapshots"),
        None,
    )?;
    let snapshot = taken["name"].as_str().context("snapshot name")?.to_string();
    let url = format!(
        "{}/collections/once/shards/{lost}/snapshots/{snapshot}",
        nodes[1].url()
    );

    let b = &mut nodes[1];
    b.stop(Duration::from_secs(30))?;
    let collections = b.data_dir().join("collections");
    let damaged_twice = damage_segments(&collections.join("twice/shards/0"))?;
    let damaged_once = damage_segments(&collections.join(format!("once/shards/{lost}")))?;
    ensure!(
        damaged_twice > 0 && damaged_once > 0,
        "sealed segments on disk: {damaged_twice} and {damaged_once}"
    );
    b.restart()?;
    b.wait_ready(Instant::now() + READY)?;
    let log = std::fs::read_to_string(b.log_path())?;
    ensure!(
        log.contains("a local replica does not open"),
        "the node names the replica that did not open"
    );
    let quarantined = |name: &str| {
        find(&collections.join(name).join("quarantine"), &|n: &str| {
            n.starts_with("shard-")
        })
    };

    // The only replica: not served, and nothing answers as if its points did not exist; its
    // files stay in place, so a restart (here a second one) finds the failure again rather
    // than an empty shard.
    for start in 0..2 {
        if start == 1 {
            nodes[1].restart()?;
            nodes[1].wait_ready(Instant::now() + READY)?;
        }
        for node in nodes.iter() {
            let r = node.client().raw(
                Method::Post,
                "/collections/once/points/count",
                Some(&json!({"exact": true})),
            )?;
            ensure!(
                r.status == 503 && r.body.contains("did not open"),
                "start {start}: a count over a shard that is not served: {} {}",
                r.status,
                r.body
            );
        }
        ensure!(
            collections
                .join(format!("once/shards/{lost}/segments"))
                .exists()
                && quarantined("once").is_empty(),
            "start {start}: the failed replica's files stay in place"
        );
    }
    let state = collection_cluster(&nodes[1], "once")?;
    ensure!(
        state
            .local_shards
            .iter()
            .any(|s| s.shard_id == lost && s.state == "Active"),
        "the last active replica stays Active (it cannot be marked Dead): {:?}",
        state.local_shards
    );
    // Recovering the shard snapshot into it serves it again.
    let r = nodes[1].client().raw(
        Method::Put,
        &format!("/collections/once/shards/{lost}/snapshots/recover"),
        Some(&json!({"location": url})),
    )?;
    ensure!(r.status == 200, "recover answered {} {}", r.status, r.body);
    ensure!(
        contents(&nodes[0].client(), "once")? == expected(0..1500, 1),
        "`once` whole again after the shard snapshot"
    );
    ensure!(
        quarantined("once").len() == 1,
        "the files it replaced are kept in quarantine"
    );

    // The replica with a second copy: marked Dead, replaced, recovered, Active on both peers.
    // Until it is Dead, the cluster state still lists the failed replica as Active, so the
    // wait is for its files in quarantine too (they move there only once the cluster state
    // says Dead), not for the states alone. Either peer may get it marked Dead (this one
    // proposes it, the other when forwarding a write to it fails), and it may happen during
    // the restarts above, whose SIGKILL can lose the last lines of the log: the files are
    // the evidence.
    let all: Vec<&NodeProcess> = nodes.iter().collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let r = replicas_agree(&all, "twice", &[])?;
        let recovered = r.len() == 2 && r.iter().all(|(_, _, s)| s == "Active");
        if recovered && !quarantined("twice").is_empty() {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "not recovered through Dead: {r:?}, quarantined: {:?}",
            quarantined("twice")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    ensure!(
        quarantined("twice").len() == 1,
        "the replaced replica's files are kept in quarantine"
    );
    // The recovered replica alone holds every point.
    nodes[0].kill_9()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match contents(&nodes[1].client(), "twice") {
            Ok(c) if c == expected(0..1500, 1) => return Ok(()),
            Ok(c) => ensure!(
                Instant::now() < deadline,
                "the recovered replica holds {} points",
                c.len()
            ),
            Err(e) => ensure!(Instant::now() < deadline, "reads after a kill: {e:#}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
