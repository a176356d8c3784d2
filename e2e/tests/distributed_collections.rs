//! Distributed collections with real `shoal-node` processes on loopback: even placement of
//! replicas, points written through one peer readable through every peer with the same
//! answers, losing the Raft leader and a replica holder to SIGKILL without losing an
//! acknowledged write, and custom sharding with shard keys.
//!
//! Every wait is a poll with a deadline; nodes are killed by the harness when a test ends, also
//! when it fails.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use shoal_e2e::cluster::{
    CONVERGE, READY, collection_cluster, count, create_collection, replicas_agree, start_cluster,
};
use shoal_e2e::{
    ClusteredGaussian, Distance, ExactIndex, Method, NodeProcess, PointId, PointStruct,
    SearchRequest,
};

const DIM: usize = 16;

fn points(data: &shoal_e2e::Vectors, ids: std::ops::Range<usize>) -> Vec<PointStruct> {
    ids.map(|i| PointStruct {
        id: PointId::Num(i as u64),
        vector: data.get(i).to_vec(),
        payload: Some(
            json!({"i": i, "even": i % 2 == 0})
                .as_object()
                .cloned()
                .expect("an object"),
        ),
    })
    .collect()
}

fn search_ids(node: &NodeProcess, name: &str, request: &SearchRequest) -> Result<Vec<(u64, f32)>> {
    Ok(node
        .client()
        .search(name, request)?
        .into_iter()
        .map(|p| (p.id.as_num().unwrap_or(u64::MAX), p.score))
        .collect())
}

#[test]
fn six_shards_twice_replicated_are_placed_evenly_and_read_alike_through_every_peer() -> Result<()> {
    let mut nodes = start_cluster(3, &[])?;
    create_collection(
        &nodes[0],
        "docs",
        json!({
            "vectors": {"size": DIM, "distance": "Cosine"},
            "shard_number": 6,
            "replication_factor": 2,
        }),
    )?;
    let all: Vec<&NodeProcess> = nodes.iter().collect();
    let replicas = replicas_agree(&all, "docs", &["Initializing"])?;
    assert_eq!(replicas.len(), 12, "{replicas:?}");
    let mut per_peer: BTreeMap<u64, usize> = BTreeMap::new();
    let mut per_shard: BTreeMap<u32, BTreeSet<u64>> = BTreeMap::new();
    for (shard, peer, state) in &replicas {
        assert_eq!(state, "Active");
        *per_peer.entry(*peer).or_default() += 1;
        per_shard.entry(*shard).or_default().insert(*peer);
    }
    assert_eq!(
        per_peer.values().copied().collect::<Vec<_>>(),
        vec![4, 4, 4]
    );
    assert_eq!(per_shard.len(), 6);
    assert!(per_shard.values().all(|peers| peers.len() == 2));
    for node in &nodes {
        assert_eq!(collection_cluster(node, "docs")?.shard_count, 6);
        assert_eq!(collection_cluster(node, "docs")?.local_shards.len(), 4);
    }

    // 10,000 points through one peer.
    let data = ClusteredGaussian::new(DIM, 20, 0.2, 7)?.sample(10_000, 8);
    for start in (0..10_000).step_by(500) {
        nodes[0]
            .client()
            .upsert("docs", &points(&data, start..start + 500), true)?;
    }
    let expected: BTreeSet<u64> = (0..10_000).collect();
    let exact = ExactIndex::new(&data, Distance::Cosine);
    let queries = ClusteredGaussian::new(DIM, 20, 0.2, 7)?.sample(20, 99);
    let mut answers: Vec<Vec<Vec<(u64, f32)>>> = Vec::new();
    for node in &nodes {
        assert_eq!(count(node, "docs")?, 10_000);
        let ids: BTreeSet<u64> = node
            .client()
            .scroll_all("docs", 1000, 20, false, false)?
            .into_iter()
            .filter_map(|r| r.id.as_num())
            .collect();
        assert_eq!(
            ids,
            expected,
            "a full scroll through {} sees every point once",
            node.url()
        );
        let mut mine = Vec::new();
        for q in queries.iter() {
            let mut request = SearchRequest::new(q.to_vec(), 10);
            let approximate = search_ids(node, "docs", &request)?;
            request.exact = true;
            let exact_answer = search_ids(node, "docs", &request)?;
            let truth: Vec<u64> = exact
                .search(q, 10)
                .into_iter()
                .map(|n| n.index as u64)
                .collect();
            let got: Vec<u64> = exact_answer.iter().map(|(i, _)| *i).collect();
            assert_eq!(got, truth, "exact search equals brute force");
            mine.push(approximate);
            mine.push(exact_answer);
        }
        answers.push(mine);
    }
    assert!(
        answers.iter().all(|a| *a == answers[0]),
        "every peer answers every search identically"
    );

    // SIGKILL the Raft leader: metadata changes go on through the others.
    let view: Value = nodes[0].client().call(Method::Get, "/cluster", None)?;
    let leader = view["raft_info"]["leader"].as_u64().context("a leader")?;
    let mut leader_index = None;
    for (i, node) in nodes.iter().enumerate() {
        let v: Value = node.client().call(Method::Get, "/cluster", None)?;
        if v["peer_id"].as_u64() == Some(leader) {
            leader_index = Some(i);
        }
    }
    let leader_index = leader_index.context("the leader is one of the three")?;
    nodes[leader_index].kill_9()?;
    let survivor = (leader_index + 1) % 3;
    let deadline = Instant::now() + CONVERGE;
    loop {
        match create_collection(
            &nodes[survivor],
            "after",
            json!({"vectors": {"size": 4, "distance": "Dot"}, "shard_number": 2}),
        ) {
            Ok(()) => break,
            Err(e) => ensure!(
                Instant::now() < deadline,
                "no metadata change after the leader died: {e:#}"
            ),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // Reads keep working with a third of the replicas gone.
    assert_eq!(count(&nodes[survivor], "docs")?, 10_000);

    // The killed peer restarts, catches up, and everyone reports the same state.
    nodes[leader_index].restart()?;
    nodes[leader_index].wait_ready(Instant::now() + READY)?;
    let all: Vec<&NodeProcess> = nodes.iter().collect();
    replicas_agree(&all, "after", &["Initializing"])?;
    replicas_agree(&all, "docs", &[])?;
    for node in &nodes {
        assert!(node.client().collection_exists("after")?);
    }
    Ok(())
}

#[test]
fn with_two_replicas_killing_a_peer_loses_no_acknowledged_write() -> Result<()> {
    let mut nodes = start_cluster(3, &[])?;
    create_collection(
        &nodes[0],
        "docs",
        json!({
            "vectors": {"size": DIM, "distance": "Euclid"},
            "shard_number": 3,
            "replication_factor": 2,
        }),
    )?;
    let data = ClusteredGaussian::new(DIM, 10, 0.3, 11)?.sample(6_000, 12);
    let mut acknowledged = BTreeSet::new();
    for (batch, start) in (0..6_000).step_by(200).enumerate() {
        if batch == 10 {
            // SIGKILL a peer that is not the one taking the writes.
            nodes[2].kill_9()?;
        }
        let writer = if batch % 2 == 0 { &nodes[0] } else { &nodes[1] };
        match writer
            .client()
            .upsert("docs", &points(&data, start..start + 200), true)
        {
            Ok(_) => acknowledged.extend(start as u64..start as u64 + 200),
            // A write may fail while the peer's death is detected; it was not acknowledged.
            Err(e) => eprintln!("batch {batch} not acknowledged: {e:#}"),
        }
        if batch % 5 == 4 {
            // Deletes are acknowledged writes too.
            let gone: Vec<PointId> = (start as u64..start as u64 + 10)
                .map(PointId::Num)
                .collect();
            if writer.client().delete_points("docs", &gone, true).is_ok() {
                for id in start as u64..start as u64 + 10 {
                    acknowledged.remove(&id);
                }
            }
        }
    }
    assert!(
        acknowledged.len() > 5_000,
        "most writes were acknowledged ({})",
        acknowledged.len()
    );
    for node in &nodes[..2] {
        let ids: BTreeSet<u64> = node
            .client()
            .scroll_all("docs", 1000, 20, false, false)?
            .into_iter()
            .filter_map(|r| r.id.as_num())
            .collect();
        let missing: Vec<&u64> = acknowledged.difference(&ids).take(10).collect();
        assert!(
            missing.is_empty(),
            "acknowledged points missing: {missing:?}"
        );
        assert_eq!(count(node, "docs")?, ids.len() as u64);
    }
    // The killed peer's replicas were marked Dead before the writes they missed were
    // acknowledged (a write acknowledged with a live replica that missed it would show up as a
    // missing point below); after a restart the peer recovers them by itself.
    let dead_peer = collection_cluster(&nodes[0], "docs")?.replicas();
    assert!(
        dead_peer.iter().any(|(_, _, s)| s == "Dead"),
        "writes with a peer down marked its replicas Dead: {dead_peer:?}"
    );
    nodes[2].restart()?;
    nodes[2].wait_ready(Instant::now() + READY)?;
    let all: Vec<&NodeProcess> = nodes.iter().collect();
    let deadline = Instant::now() + CONVERGE;
    loop {
        let replicas = replicas_agree(&all, "docs", &[])?;
        if replicas.iter().all(|(_, _, s)| s == "Active") {
            break;
        }
        ensure!(Instant::now() < deadline, "not recovered: {replicas:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let through_restarted: BTreeSet<u64> = nodes[2]
        .client()
        .scroll_all("docs", 1000, 20, false, false)?
        .into_iter()
        .filter_map(|r| r.id.as_num())
        .collect();
    assert!(acknowledged.is_subset(&through_restarted));
    Ok(())
}

#[test]
fn shard_keys_route_writes_and_reads_and_bad_requests_change_nothing() -> Result<()> {
    let nodes = start_cluster(3, &[])?;
    create_collection(
        &nodes[1],
        "tenants",
        json!({
            "vectors": {"size": 4, "distance": "Dot"},
            "sharding_method": "custom",
            "shard_number": 2,
            "replication_factor": 2,
        }),
    )?;
    for key in ["a", "b"] {
        let _: bool = nodes[0].client().call(
            Method::Put,
            "/collections/tenants/shards",
            Some(&json!({"shard_key": key})),
        )?;
    }
    let replicas = replicas_agree(
        &nodes.iter().collect::<Vec<_>>(),
        "tenants",
        &["Initializing"],
    )?;
    assert_eq!(
        replicas.len(),
        8,
        "2 keys x 2 shards x 2 replicas: {replicas:?}"
    );
    let with_keys = collection_cluster(&nodes[2], "tenants")?;
    assert!(
        with_keys
            .local_shards
            .iter()
            .chain(&with_keys.remote_shards)
            .all(|s| s.shard_key.is_some())
    );

    let upsert = |node: &NodeProcess, key: &str, ids: std::ops::Range<u64>| -> Result<()> {
        let points: Vec<Value> = ids
            .map(|i| json!({"id": i, "vector": [1.0, i as f32, 0.0, 0.5]}))
            .collect();
        let _: Value = node.client().call(
            Method::Put,
            "/collections/tenants/points?wait=true",
            Some(&json!({"points": points, "shard_key": key})),
        )?;
        Ok(())
    };
    upsert(&nodes[0], "a", 0..100)?;
    upsert(&nodes[1], "b", 100..130)?;
    let count_key = |node: &NodeProcess, key: Option<&str>| -> Result<u64> {
        let mut body = json!({"exact": true});
        if let Some(k) = key {
            body["shard_key"] = json!(k);
        }
        let v: Value = node.client().call(
            Method::Post,
            "/collections/tenants/points/count",
            Some(&body),
        )?;
        v["count"].as_u64().context("a count")
    };
    for node in &nodes {
        assert_eq!(count_key(node, Some("a"))?, 100);
        assert_eq!(count_key(node, Some("b"))?, 30);
        assert_eq!(count_key(node, None)?, 130);
    }

    // Bad requests: a clear error, and nothing changes.
    let unknown_key = nodes[2].client().raw(
        Method::Put,
        "/collections/tenants/points?wait=true",
        Some(&json!({"points": [{"id": 999, "vector": [1, 2, 3, 4]}], "shard_key": "nope"})),
    )?;
    assert_eq!(unknown_key.status, 400, "{}", unknown_key.body);
    assert!(unknown_key.body.contains("nope"), "{}", unknown_key.body);
    let no_key = nodes[2].client().raw(
        Method::Put,
        "/collections/tenants/points?wait=true",
        Some(&json!({"points": [{"id": 999, "vector": [1, 2, 3, 4]}]})),
    )?;
    assert_eq!(no_key.status, 400, "{}", no_key.body);
    let drop_unknown = nodes[0].client().raw(
        Method::Post,
        "/collections/tenants/shards/delete",
        Some(&json!({"shard_key": "nope"})),
    )?;
    assert_eq!(drop_unknown.status, 404, "{}", drop_unknown.body);
    let duplicate = nodes[0].client().raw(
        Method::Put,
        "/collections/tenants/shards",
        Some(&json!({"shard_key": "a"})),
    )?;
    assert_eq!(duplicate.status, 409, "{}", duplicate.body);
    let peer_id = collection_cluster(&nodes[1], "tenants")?.peer_id;
    let holds = nodes[0]
        .client()
        .raw(Method::Delete, &format!("/cluster/peer/{peer_id}"), None)?;
    assert_eq!(holds.status, 400, "{}", holds.body);
    let unknown_peer = nodes[0].client().raw(
        Method::Put,
        "/collections/tenants/shards",
        Some(&json!({"shard_key": "c", "placement": [4242]})),
    )?;
    assert_eq!(unknown_peer.status, 404, "{}", unknown_peer.body);
    assert_eq!(count_key(&nodes[0], None)?, 130);
    let after = replicas_agree(&nodes.iter().collect::<Vec<_>>(), "tenants", &[])?;
    assert_eq!(after, replicas, "refused requests changed no replica");

    // Dropping a key drops its points.
    let _: bool = nodes[2].client().call(
        Method::Post,
        "/collections/tenants/shards/delete",
        Some(&json!({"shard_key": "b"})),
    )?;
    for node in &nodes {
        assert_eq!(count_key(node, None)?, 100);
    }
    Ok(())
}

/// The payload of every point of `name` as one replica holds it: all peers but `alone` are
/// killed, so the survivor answers from its own replica; then they are started again.
fn replica_contents(
    nodes: &mut [NodeProcess],
    name: &str,
    alone: usize,
) -> Result<BTreeMap<u64, Value>> {
    for (i, node) in nodes.iter_mut().enumerate() {
        if i != alone {
            node.kill_9()?;
        }
    }
    let records = nodes[alone]
        .client()
        .scroll_all(name, 100, 20, true, false)?;
    for (i, node) in nodes.iter_mut().enumerate() {
        if i != alone {
            node.restart()?;
            node.wait_ready(Instant::now() + READY)?;
        }
    }
    records
        .into_iter()
        .map(|r| {
            let id = r.id.as_num().context("numeric ids")?;
            Ok((id, serde_json::to_value(&r.payload)?))
        })
        .collect()
}

/// Two coordinators overwrite the same points while one replica hears from the first one late
/// (a test hook delays peer 0's updates to peer 2 by a second). With `ordering=weak` the
/// replicas apply the two updates in different orders and end up different; with
/// `ordering=strong` both go through the shard's leader, one at a time, and every replica ends
/// up the same. A bad `ordering` is refused with 400 and changes nothing.
#[test]
fn strong_ordering_keeps_replicas_identical_where_weak_does_not() -> Result<()> {
    let mut nodes = start_cluster(3, &[])?;
    let slow = format!("{}=1000", nodes[2].p2p_uri());
    nodes[0].set_env("SHOAL_TEST_DELAY_UPDATES_TO", &slow);
    nodes[0].restart()?;
    nodes[0].wait_ready(Instant::now() + READY)?;
    let mut replicas_by_ordering = BTreeMap::new();
    for ordering in ["weak", "strong"] {
        create_collection(
            &nodes[1],
            ordering,
            json!({
                "vectors": {"size": 2, "distance": "Dot"},
                "shard_number": 1,
                "replication_factor": 3,
            }),
        )?;
        let deadline = Instant::now() + CONVERGE;
        let all: Vec<&NodeProcess> = nodes.iter().collect();
        while replicas_agree(&all, ordering, &[])?.len() < 3 {
            ensure!(Instant::now() < deadline, "three replicas");
            std::thread::sleep(Duration::from_millis(100));
        }
        let write = |node: &NodeProcess, writer: &str| {
            let points: Vec<Value> = (0..10u64)
                .map(|id| json!({"id": id, "vector": [1.0, 1.0], "payload": {"writer": writer}}))
                .collect();
            node.client().call::<Value>(
                Method::Put,
                &format!("/collections/{ordering}/points?wait=true&ordering={ordering}"),
                Some(&json!({ "points": points })),
            )
        };
        std::thread::scope(|scope| -> Result<()> {
            let first = scope.spawn(|| write(&nodes[0], "first"));
            // Arranges the race (not a wait for a condition): the second update is sent
            // while the first one is still on its way to peer 2.
            std::thread::sleep(Duration::from_millis(300));
            write(&nodes[1], "second")?;
            first.join().expect("writer thread")?;
            Ok(())
        })?;
        let bad = nodes[0].client().raw(
            Method::Put,
            &format!("/collections/{ordering}/points?wait=true&ordering=sometimes"),
            Some(&json!({"points": [{"id": 99, "vector": [1.0, 1.0]}]})),
        )?;
        assert_eq!(bad.status, 400, "{}", bad.body);
        let replicas: Vec<BTreeMap<u64, Value>> = (0..3)
            .map(|i| replica_contents(&mut nodes, ordering, i))
            .collect::<Result<_>>()?;
        assert!(replicas.iter().all(|r| r.len() == 10), "{replicas:?}");
        replicas_by_ordering.insert(ordering, replicas);
    }
    let weak = &replicas_by_ordering["weak"];
    assert!(
        weak[0] == weak[1] && weak[0] != weak[2],
        "weak ordering: the late replica applied the updates in another order: {weak:?}"
    );
    let strong = &replicas_by_ordering["strong"];
    assert!(
        strong[0] == strong[1] && strong[0] == strong[2],
        "strong ordering: {strong:?}"
    );
    Ok(())
}
