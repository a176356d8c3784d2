//! The operator end to end: a real kube-apiserver + etcd, the `shoal-operator` binary and
//! three real `shoal-node` processes on 127.0.0.1.
//!
//! One test, in stages that share the apiserver and the node cluster (starting them is the
//! slow part): a `ShardPlacement` moves a shard and reports progress on the way to
//! Succeeded; re-applying it changes nothing; invalid resources end Degraded and change
//! nothing; the operator restarted mid-transfer resumes reporting without a second transfer;
//! deleting a resource mid-transfer aborts the transfer. Skipped (with a message) when the
//! apiserver binaries are not built, unless `SHOAL_REQUIRE_K8S` is set.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use shoal_e2e::cluster::{collection_cluster, count, create_collection, start_cluster};
use shoal_e2e::kube_env::{ApiServer, OperatorProcess};
use shoal_e2e::{Client, Method, NodeProcess, PointId, PointStruct, free_ports, workspace_root};

const COLLECTION: &str = "docs";
const POINTS: u64 = 6000;
const DIM: usize = 8;
const LEASE: &str = "shoal-operator-e2e";
/// Bound for a resource to reach a phase.
const SETTLE: Duration = Duration::from_secs(120);

fn point(id: u64) -> PointStruct {
    PointStruct {
        id: PointId::Num(id),
        vector: (0..DIM)
            .map(|d| ((id * 31 + d as u64 * 7) % 1000) as f32 / 100.0)
            .collect(),
        payload: Some(json!({ "id": id }).as_object().cloned().expect("an object")),
    }
}

/// Peer id → peer name, from `GET /cluster`.
fn peer_names(node: &NodeProcess) -> Result<BTreeMap<u64, String>> {
    let v: Value = node.client().call(Method::Get, "/cluster", None)?;
    v["peers"]
        .as_object()
        .context("peers")?
        .iter()
        .map(|(id, p)| {
            Ok((
                id.parse()?,
                p["name"].as_str().context("peer name")?.to_owned(),
            ))
        })
        .collect()
}

/// Replicas of `shard` as (peer, state).
fn replicas_of(node: &NodeProcess, shard: u32) -> Result<BTreeSet<(u64, String)>> {
    Ok(collection_cluster(node, COLLECTION)?
        .replicas()
        .into_iter()
        .filter(|(s, _, _)| *s == shard)
        .map(|(_, p, st)| (p, st))
        .collect())
}

/// Running transfers of `shard` as (from, to).
fn transfers_of(node: &NodeProcess, shard: u32) -> Result<Vec<(u64, u64)>> {
    let v: Value = node.client().call(
        Method::Get,
        &format!("/collections/{COLLECTION}/cluster"),
        None,
    )?;
    Ok(v["shard_transfers"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|t| t["shard_id"].as_u64() == Some(u64::from(shard)))
        .map(|t| {
            (
                t["from"].as_u64().unwrap_or(0),
                t["to"].as_u64().unwrap_or(0),
            )
        })
        .collect())
}

fn placement(name: &str, url: &str, shard: u32, replicas: &[&str], extra: Value) -> String {
    let mut spec = json!({
        "cluster": {"url": url},
        "collection": COLLECTION,
        "shardId": shard,
        "replicas": replicas,
    });
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    json!({
        "apiVersion": "shoal.dev/v1alpha1",
        "kind": "ShardPlacement",
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec,
    })
    .to_string()
}

fn phase(obj: &Value) -> &str {
    obj["status"]["phase"].as_str().unwrap_or("")
}

fn condition<'a>(obj: &'a Value, type_: &str) -> Option<&'a Value> {
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

/// Polls the ShardPlacement until `done` says so; returns it and every phase seen.
fn wait_for(
    k8s: &ApiServer,
    name: &str,
    what: &str,
    done: impl FnMut(&Value) -> bool,
) -> Result<(Value, Vec<String>)> {
    wait_for_kind(k8s, "shardplacement", name, what, done)
}

fn wait_for_kind(
    k8s: &ApiServer,
    kind: &str,
    name: &str,
    what: &str,
    mut done: impl FnMut(&Value) -> bool,
) -> Result<(Value, Vec<String>)> {
    let deadline = Instant::now() + SETTLE;
    let mut phases: Vec<String> = Vec::new();
    let mut last = Value::Null;
    while Instant::now() < deadline {
        if let Some(obj) = k8s.get_json(kind, name)? {
            let p = phase(&obj).to_owned();
            if phases.last() != Some(&p) {
                phases.push(p);
            }
            if done(&obj) {
                return Ok((obj, phases));
            }
            last = obj;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    bail!(
        "{kind} {name} did not reach {what} within {SETTLE:?}; phases {phases:?}, last status {}",
        last["status"]
    )
}

/// Events of `name` (either API shows them through core/v1 on 1.20).
fn events_of(k8s: &ApiServer, name: &str) -> Result<Vec<Value>> {
    let out = k8s.kubectl(&["get", "events", "-n", "default", "-o", "json"])?;
    let v: Value = serde_json::from_str(&out)?;
    Ok(v["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e["involvedObject"]["name"] == name || e["regarding"]["name"] == name)
        .collect())
}

fn start_operator(k8s: &ApiServer, identity: &str, metrics_port: u16) -> Result<OperatorProcess> {
    let op = OperatorProcess::start(
        &k8s.kubeconfig(),
        &[
            ("SHOAL_OPERATOR_METRICS_PORT", metrics_port.to_string()),
            ("SHOAL_OPERATOR_METRICS_HOST", "127.0.0.1".to_owned()),
            ("SHOAL_OPERATOR_NAMESPACE", "default".to_owned()),
            ("SHOAL_OPERATOR_WATCH_NAMESPACE", String::new()),
            ("SHOAL_OPERATOR_LEADER_ELECTION", "true".to_owned()),
            ("SHOAL_OPERATOR_LEASE_NAME", LEASE.to_owned()),
            ("SHOAL_OPERATOR_POD_NAME", identity.to_owned()),
        ],
    )?;
    // Leader when the Lease names it and /healthz says so.
    let deadline = Instant::now() + Duration::from_secs(60);
    let health = Client::new(format!("http://127.0.0.1:{metrics_port}"));
    loop {
        let holder = k8s
            .get_json("lease", LEASE)?
            .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_owned));
        let healthy = health
            .raw(Method::Get, "/healthz", None)
            .is_ok_and(|r| r.status == 200 && r.body.contains("leader"));
        if holder.as_deref() == Some(identity) && healthy {
            return Ok(op);
        }
        ensure!(
            Instant::now() < deadline,
            "operator {identity} did not become leader (holder {holder:?}); log:\n{}",
            op.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn operator_end_to_end() -> Result<()> {
    let started = Instant::now();
    let Some(k8s) = ApiServer::start_or_skip("operator_end_to_end")? else {
        return Ok(());
    };
    let crds = workspace_root().join("crds");
    k8s.kubectl(&[
        "apply",
        "--server-side",
        "-f",
        crds.to_str().context("crds path")?,
    ])?;
    k8s.kubectl(&[
        "wait",
        "--for=condition=Established",
        "--timeout=30s",
        "crd/shardplacements.shoal.dev",
        "crd/reshardings.shoal.dev",
    ])?;

    let nodes = start_cluster(3, &[])?;
    let node = &nodes[0];
    create_collection(
        node,
        COLLECTION,
        json!({"vectors": {"size": DIM, "distance": "Cosine"}, "shard_number": 2, "replication_factor": 1}),
    )?;
    for start in (0..POINTS).step_by(1000) {
        let batch: Vec<PointStruct> = (start..start + 1000).map(point).collect();
        node.client().upsert(COLLECTION, &batch, true)?;
    }
    let names = peer_names(node)?;
    let name = |id: u64| names[&id].clone();
    let url = node.p2p_uri();
    let owner = |shard: u32| -> Result<u64> {
        let replicas = replicas_of(node, shard)?;
        ensure!(replicas.len() == 1, "shard {shard}: {replicas:?}");
        Ok(replicas.iter().next().map(|(p, _)| *p).unwrap_or_default())
    };
    let other_than =
        |peer: u64| -> u64 { *names.keys().find(|p| **p != peer).expect("three peers") };
    eprintln!(
        "[{:?}] apiserver, 3 nodes, {POINTS} points",
        started.elapsed()
    );

    let metrics_port = free_ports(1)?[0];
    let mut operator = start_operator(&k8s, "operator-a", metrics_port)?;

    // ---- 1. Move shard 0 to another peer, by name; progress on the way to Succeeded.
    let from = owner(0)?;
    let to = other_than(from);
    let manifest = placement(
        "move-0",
        &url,
        0,
        &[&name(to)],
        json!({"rateLimit": {"pointsPerSecond": 600}}),
    );
    k8s.apply(&manifest)?;
    let mut saw_progress = false;
    let (obj, phases) = wait_for(&k8s, "move-0", "Succeeded", |o| {
        if o["status"]["transfers"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t["pointsTotal"].as_u64() > Some(0)))
        {
            saw_progress = true;
        }
        phase(o) == "Succeeded"
    })?;
    eprintln!(
        "[{:?}] move-0 phases {phases:?}, status {}",
        started.elapsed(),
        obj["status"]
    );
    ensure!(
        phases.iter().any(|p| p == "Progressing"),
        "never Progressing: {phases:?}"
    );
    ensure!(
        saw_progress,
        "no transfer progress (points total) was reported"
    );
    ensure!(obj["status"]["observedGeneration"] == obj["metadata"]["generation"]);
    ensure!(
        condition(&obj, "Ready").is_some_and(|c| c["status"] == "True"),
        "{}",
        obj["status"]
    );
    ensure!(replicas_of(node, 0)? == BTreeSet::from([(to, "Active".to_owned())]));
    ensure!(
        count(node, COLLECTION)? == POINTS,
        "points lost in the move"
    );
    let table = k8s.kubectl(&["get", "shardplacements", "-n", "default"])?;
    eprintln!("{table}");
    ensure!(
        table.contains("PHASE") && table.contains("PROGRESS") && table.contains("Succeeded"),
        "printer columns: {table}"
    );
    let events = events_of(&k8s, "move-0")?;
    ensure!(
        events.iter().any(|e| e["reason"] == "TransferStarted"),
        "no TransferStarted event: {events:?}"
    );

    // Re-applying the unchanged resource does nothing: no write, no transfer.
    let version = obj["metadata"]["resourceVersion"].clone();
    let out = k8s.apply(&manifest)?;
    ensure!(out.contains("unchanged"), "{out}");
    std::thread::sleep(Duration::from_secs(3));
    let again = k8s
        .get_json("shardplacement", "move-0")?
        .context("move-0 exists")?;
    ensure!(
        again["metadata"]["resourceVersion"] == version,
        "status rewritten"
    );
    ensure!(transfers_of(node, 0)?.is_empty());

    // ---- 1b. `approval: Manual` shows the plan and waits; flipping it to Automatic carries
    // it out (here: add a replica back on the old peer).
    k8s.kubectl(&["delete", "shardplacement", "move-0", "--timeout=30s"])?;
    ensure!(replicas_of(node, 0)? == BTreeSet::from([(to, "Active".to_owned())]));
    let manual = |approval: &str| {
        placement(
            "replicas-0",
            &url,
            0,
            &[&name(to), &name(from)],
            json!({"approval": approval}),
        )
    };
    k8s.apply(&manual("Manual"))?;
    let (obj, _) = wait_for(&k8s, "replicas-0", "Planned", |o| phase(o) == "Planned")?;
    let plan = obj["status"]["plan"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    ensure!(
        plan.len() == 1 && plan[0]["action"] == "Replicate" && plan[0]["state"] == "Pending",
        "plan {plan:?}"
    );
    std::thread::sleep(Duration::from_secs(2));
    ensure!(
        transfers_of(node, 0)?.is_empty() && replicas_of(node, 0)?.len() == 1,
        "a Manual plan was carried out"
    );
    k8s.apply(&manual("Automatic"))?;
    wait_for(&k8s, "replicas-0", "Succeeded", |o| phase(o) == "Succeeded")?;
    ensure!(
        replicas_of(node, 0)?
            == BTreeSet::from([(to, "Active".to_owned()), (from, "Active".to_owned())])
    );
    k8s.kubectl(&["delete", "shardplacement", "replicas-0", "--timeout=30s"])?;
    eprintln!("[{:?}] manual approval ok", started.elapsed());

    // ---- 2. Invalid resources end Degraded with a message and change nothing.
    let before = collection_cluster(node, COLLECTION)?.replicas();
    k8s.apply(&placement(
        "bad-peer",
        &url,
        1,
        &["no-such-peer"],
        json!({}),
    ))?;
    let mut bad_collection = placement("bad-collection", &url, 0, &[&name(from)], json!({}));
    bad_collection = bad_collection.replace("\"docs\"", "\"no-such-collection\"");
    k8s.apply(&bad_collection)?;
    for (resource, needle) in [
        ("bad-peer", "no-such-peer"),
        ("bad-collection", "no-such-collection"),
    ] {
        let (obj, _) = wait_for(&k8s, resource, "Failed", |o| phase(o) == "Failed")?;
        let degraded = condition(&obj, "Degraded").context("Degraded condition")?;
        ensure!(degraded["status"] == "True", "{degraded}");
        ensure!(
            degraded["message"]
                .as_str()
                .is_some_and(|m| m.contains(needle)),
            "{resource}: message should name `{needle}`: {degraded}"
        );
        let events = events_of(&k8s, resource)?;
        ensure!(
            events.iter().any(|e| e["type"] == "Warning"),
            "{resource}: no Warning event: {events:?}"
        );
    }
    ensure!(
        collection_cluster(node, COLLECTION)?.replicas() == before,
        "invalid resources changed the cluster"
    );
    k8s.kubectl(&[
        "delete",
        "shardplacement",
        "bad-peer",
        "bad-collection",
        "--timeout=30s",
    ])?;
    eprintln!("[{:?}] invalid resources Degraded", started.elapsed());

    // ---- 3. Operator restarted mid-transfer: resumes reporting, no second transfer.
    let from1 = owner(1)?;
    let to1 = other_than(from1);
    k8s.apply(&placement(
        "move-1",
        &url,
        1,
        &[&name(to1)],
        json!({"rateLimit": {"pointsPerSecond": 300}}),
    ))?;
    wait_for(&k8s, "move-1", "a running transfer", |o| {
        o["status"]["transfers"]
            .as_array()
            .is_some_and(|t| !t.is_empty())
    })?;
    ensure!(
        operator.stop(Duration::from_secs(15))?,
        "operator did not stop on SIGTERM"
    );
    let first = transfers_of(node, 1)?;
    ensure!(first == vec![(from1, to1)], "transfers {first:?}");
    drop(operator);
    let metrics_port = free_ports(1)?[0];
    let mut operator = start_operator(&k8s, "operator-b", metrics_port)?;
    let mut max_transfers = 0;
    let (obj, _) = wait_for(&k8s, "move-1", "Succeeded", |o| {
        if let Ok(t) = transfers_of(node, 1) {
            max_transfers = max_transfers.max(t.len());
        }
        phase(o) == "Succeeded"
    })?;
    ensure!(max_transfers <= 1, "{max_transfers} transfers ran at once");
    let started_events: Vec<Value> = events_of(&k8s, "move-1")?
        .into_iter()
        .filter(|e| e["reason"] == "TransferStarted")
        .collect();
    ensure!(
        started_events.len() == 1 && started_events[0]["series"].is_null(),
        "the restarted operator started the transfer again: {started_events:?}"
    );
    ensure!(replicas_of(node, 1)? == BTreeSet::from([(to1, "Active".to_owned())]));
    ensure!(count(node, COLLECTION)? == POINTS, "points lost");
    eprintln!(
        "[{:?}] restart mid-transfer ok: {}",
        started.elapsed(),
        obj["status"]["progress"]
    );

    // ---- 4. Deleting a resource mid-transfer aborts the transfer.
    let back = other_than(to1);
    k8s.apply(&placement(
        "slow-1",
        &url,
        1,
        &[&name(back)],
        json!({"rateLimit": {"pointsPerSecond": 200}}),
    ))?;
    wait_for(&k8s, "slow-1", "a running transfer", |o| {
        o["status"]["transfers"]
            .as_array()
            .is_some_and(|t| !t.is_empty())
    })?;
    ensure!(transfers_of(node, 1)? == vec![(to1, back)]);
    k8s.kubectl(&["delete", "shardplacement", "slow-1", "--wait=false"])?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while k8s.get_json("shardplacement", "slow-1")?.is_some() {
        ensure!(Instant::now() < deadline, "slow-1 was not finalized");
        std::thread::sleep(Duration::from_millis(200));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let transfers = transfers_of(node, 1)?;
        let replicas = replicas_of(node, 1)?;
        if transfers.is_empty() && replicas == BTreeSet::from([(to1, "Active".to_owned())]) {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "after deletion: transfers {transfers:?}, replicas {replicas:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    ensure!(count(node, COLLECTION)? == POINTS, "points lost");
    eprintln!("[{:?}] delete mid-transfer aborted it", started.elapsed());

    // ---- 5. Resharding from 3 to 4 shards, first held at the read gate, then released.
    const RESHARDED: &str = "resharded";
    create_collection(
        node,
        RESHARDED,
        json!({"vectors": {"size": DIM, "distance": "Cosine"}, "shard_number": 3, "replication_factor": 2}),
    )?;
    for start in (0..POINTS).step_by(1000) {
        let batch: Vec<PointStruct> = (start..start + 1000).map(point).collect();
        node.client().upsert(RESHARDED, &batch, true)?;
    }
    let shard_count = || -> Result<usize> { Ok(collection_cluster(node, RESHARDED)?.shard_count) };
    ensure!(shard_count()? == 3);
    let resharding = |commit_read: &str| {
        json!({
            "apiVersion": "shoal.dev/v1alpha1",
            "kind": "Resharding",
            "metadata": {"name": "reshard-up", "namespace": "default"},
            "spec": {"cluster": {"url": url}, "collection": RESHARDED, "shards": 4, "commitRead": commit_read},
        })
        .to_string()
    };
    k8s.apply(&resharding("Manual"))?;
    let (obj, _) = wait_for_kind(
        &k8s,
        "resharding",
        "reshard-up",
        "waiting at the read gate",
        |o| {
            phase(o) == "Planned"
                && o["status"]["plan"]
                    .as_array()
                    .is_some_and(|p| !p.is_empty())
        },
    )?;
    let stage = collection_cluster(node, RESHARDED)?;
    ensure!(
        stage.shard_count == 4,
        "the new shard exists while the gate holds: {obj}"
    );
    ensure!(count(node, RESHARDED)? == POINTS, "points while gated");
    k8s.apply(&resharding("Automatic"))?;
    let (obj, _) = wait_for_kind(
        &k8s,
        "resharding",
        "reshard-up",
        "Succeeded or Failed",
        |o| matches!(phase(o), "Succeeded" | "Failed"),
    )?;
    ensure!(phase(&obj) == "Succeeded", "{obj}");
    ensure!(shard_count()? == 4);
    ensure!(count(node, RESHARDED)? == POINTS, "points after resharding");
    let view: Value = node.client().call(
        Method::Get,
        &format!("/collections/{RESHARDED}/cluster"),
        None,
    )?;
    ensure!(
        view["resharding_operations"]
            .as_array()
            .is_some_and(Vec::is_empty),
        "{view}"
    );
    eprintln!("[{:?}] resharding 3 -> 4 succeeded", started.elapsed());
    k8s.kubectl(&["delete", "resharding", "reshard-up", "--timeout=30s"])?;

    // Metrics.
    let metrics = Client::new(format!("http://127.0.0.1:{metrics_port}")).raw(
        Method::Get,
        "/metrics",
        None,
    )?;
    ensure!(metrics.status == 200);
    ensure!(
        metrics
            .body
            .contains("shoal_operator_reconciles_total{kind=\"ShardPlacement\"}"),
        "{}",
        metrics.body
    );
    ensure!(metrics.body.contains("shoal_operator_leader 1"));
    ensure!(operator.is_running());

    // ---- 6. Leader election: a second instance stands by while the first holds the Lease,
    // and takes over once the first stops (and releases it).
    let standby_port = free_ports(1)?[0];
    let mut standby = OperatorProcess::start(
        &k8s.kubeconfig(),
        &[
            ("SHOAL_OPERATOR_METRICS_PORT", standby_port.to_string()),
            ("SHOAL_OPERATOR_METRICS_HOST", "127.0.0.1".to_owned()),
            ("SHOAL_OPERATOR_NAMESPACE", "default".to_owned()),
            ("SHOAL_OPERATOR_LEASE_NAME", LEASE.to_owned()),
            ("SHOAL_OPERATOR_POD_NAME", "operator-c".to_owned()),
        ],
    )?;
    let standby_health = Client::new(format!("http://127.0.0.1:{standby_port}"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !standby_health
        .raw(Method::Get, "/healthz", None)
        .is_ok_and(|r| r.status == 200 && r.body.contains("standby"))
    {
        ensure!(
            Instant::now() < deadline,
            "standby never healthy: {}",
            standby.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(3));
    let holder = |k8s: &ApiServer| -> Result<Option<String>> {
        Ok(k8s
            .get_json("lease", LEASE)?
            .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_owned)))
    };
    ensure!(holder(&k8s)?.as_deref() == Some("operator-b"));
    ensure!(standby.is_running());
    ensure!(operator.stop(Duration::from_secs(15))?, "no clean stop");
    let deadline = Instant::now() + Duration::from_secs(30);
    while holder(&k8s)?.as_deref() != Some("operator-c") {
        ensure!(
            Instant::now() < deadline,
            "the standby did not take over: {}",
            standby.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    ensure!(standby.stop(Duration::from_secs(15))?);
    eprintln!("[{:?}] done", started.elapsed());
    Ok(())
}
