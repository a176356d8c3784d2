//! kill -9 at random moments must never lose an acknowledged write.
//!
//! A writer thread upserts small batches (and deletes some acknowledged points) with
//! `wait=true`, recording what the node acknowledged; the test SIGKILLs the node at a
//! seeded-random moment, restarts it on the same data dir and reads everything back.
//!
//! The model is exact about uncertainty: a request that got no answer (because the node
//! died) may or may not have been applied, so each point keeps its last acknowledged state
//! plus the states of unanswered requests issued after it; the point read back must be one
//! of those. A later acknowledged write to the same point supersedes all of them.
//!
//! Reproduce a run with `SHOAL_E2E_SEED=<seed printed by the test>`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Map, Value, json};
use shoal_e2e::{
    ApiError, Client, CollectionParams, Distance, Method, NodeOptions, NodeProcess, PointId,
    PointStruct, Record,
};

const COLLECTION: &str = "crash";
/// Euclid keeps vectors as sent (Cosine would normalise them), so they compare bit for bit.
const DISTANCE: Distance = Distance::Euclid;
const DIM: usize = 8;
const ROUNDS: usize = 5;
const BATCH: usize = 8;
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Bounds on one writing round, whatever the node does.
const MAX_OPS_PER_ROUND: usize = 5_000;
const MAX_ROUND_TIME: Duration = Duration::from_secs(10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const RETRIEVE_CHUNK: usize = 200;

fn seed() -> u64 {
    let seed = std::env::var("SHOAL_E2E_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_c0de);
    eprintln!("crash test seed: {seed} (set SHOAL_E2E_SEED to reproduce)");
    seed
}

/// What a point holds: payload and raw vector. `None` as a state means absent/deleted.
#[derive(Debug, Clone, PartialEq)]
struct PointValue {
    payload: Map<String, Value>,
    vector: Vec<f32>,
}

/// Payload and vector as read back by scroll.
type StoredPoint = (Option<Map<String, Value>>, Option<Vec<f32>>);

#[derive(Debug, Default)]
struct Expected {
    /// Last acknowledged state (`None`: never acknowledged as written, or deleted).
    acked: Option<PointValue>,
    /// States of later requests that got no answer; each may or may not have been applied.
    unanswered: Vec<Option<PointValue>>,
}

impl Expected {
    fn allows(&self, actual: &Option<PointValue>) -> bool {
        self.acked == *actual || self.unanswered.contains(actual)
    }

    fn must_exist(&self) -> bool {
        self.acked.is_some() && self.unanswered.iter().all(Option::is_some)
    }

    fn may_exist(&self) -> bool {
        self.acked.is_some() || self.unanswered.iter().any(Option::is_some)
    }
}

#[derive(Debug, Default)]
struct Model {
    points: BTreeMap<u64, Expected>,
    next_id: u64,
    acked_upserts: usize,
    acked_deletes: usize,
    unanswered_requests: usize,
}

impl Model {
    fn ack(&mut self, id: u64, state: Option<PointValue>) {
        let e = self.points.entry(id).or_default();
        e.acked = state;
        e.unanswered.clear();
    }

    fn unanswered(&mut self, id: u64, state: Option<PointValue>) {
        self.points.entry(id).or_default().unanswered.push(state);
    }

    /// Ids whose last acknowledged state is "present" (candidates for update and delete).
    fn acked_present(&self) -> Vec<u64> {
        self.points
            .iter()
            .filter(|(_, e)| e.acked.is_some() && e.unanswered.is_empty())
            .map(|(id, _)| *id)
            .collect()
    }
}

fn point_value(rng: &mut ChaCha8Rng, id: u64, round: usize, version: u32) -> PointValue {
    let vector = (0..DIM).map(|_| rng.random_range(-10.0f32..10.0)).collect();
    let payload = json!({
        "n": id,
        "tag": format!("round-{round}-v{version}"),
        "version": version,
        // Exactly representable floats, negative numbers, nesting, unicode, null, bool.
        "quarter": id as f64 / 4.0,
        "neg": -(id as i64),
        "nested": {"list": [id % 3, "x", null, true], "é": "ünïcødé ✓"},
    });
    PointValue {
        payload: payload
            .as_object()
            .expect("json! object literal is an object")
            .clone(),
        vector,
    }
}

/// Short, greppable description of a point state for failure messages.
fn describe(state: &Option<PointValue>) -> String {
    match state {
        None => "absent".to_owned(),
        Some(v) => format!(
            "{{payload {}, vector {:?}}}",
            Value::Object(v.payload.clone()),
            v.vector
        ),
    }
}

fn to_struct(id: u64, v: &PointValue) -> PointStruct {
    PointStruct {
        id: PointId::Num(id),
        vector: v.vector.clone(),
        payload: Some(v.payload.clone()),
    }
}

/// How a writing round ended.
#[derive(Debug)]
enum WriterEnd {
    /// Stopped because asked to or a bound was reached.
    Stopped,
    /// A request got no answer (expected once the node is killed).
    Unreachable(String),
    /// The node answered with an error or a malformed/unexpected body: a node bug.
    NodeError(String),
}

/// One round of writes: new batches, updates of acknowledged points and deletes, until
/// `stop` is set, a request fails, or the bounds are hit. Returns the model it was lent.
fn write_round(
    client: Client,
    mut model: Model,
    mut rng: ChaCha8Rng,
    round: usize,
    stop: Arc<AtomicBool>,
    acks: Arc<AtomicUsize>,
) -> (Model, WriterEnd) {
    let started = Instant::now();
    for op in 0..MAX_OPS_PER_ROUND {
        if stop.load(Ordering::SeqCst) || started.elapsed() > MAX_ROUND_TIME {
            return (model, WriterEnd::Stopped);
        }
        let present = model.acked_present();
        let choice = rng.random_range(0..100);
        // (id, new state) pairs this request would set.
        let changes: Vec<(u64, Option<PointValue>)> = if choice < 15 && present.len() > BATCH {
            // Delete a few acknowledged points.
            let n = rng.random_range(1..=3);
            present
                .choose_multiple(&mut rng, n)
                .map(|&id| (id, None))
                .collect()
        } else if choice < 30 && present.len() > BATCH {
            // Overwrite acknowledged points with new payloads and vectors.
            let n = rng.random_range(1..=BATCH);
            let ids: Vec<u64> = present.choose_multiple(&mut rng, n).copied().collect();
            ids.into_iter()
                .map(|id| (id, Some(point_value(&mut rng, id, round, op as u32 + 1))))
                .collect()
        } else {
            let first = model.next_id;
            model.next_id += BATCH as u64;
            (first..first + BATCH as u64)
                .map(|id| (id, Some(point_value(&mut rng, id, round, 0))))
                .collect()
        };
        let is_delete = changes.iter().all(|(_, s)| s.is_none());
        let result = if is_delete {
            let ids: Vec<PointId> = changes.iter().map(|(id, _)| PointId::Num(*id)).collect();
            client.delete_points(COLLECTION, &ids, true)
        } else {
            let points: Vec<PointStruct> = changes
                .iter()
                .filter_map(|(id, s)| s.as_ref().map(|v| to_struct(*id, v)))
                .collect();
            client.upsert(COLLECTION, &points, true)
        };
        match result {
            Ok(update) if update.is_completed() => {
                for (id, state) in changes {
                    model.ack(id, state);
                }
                if is_delete {
                    model.acked_deletes += 1;
                } else {
                    model.acked_upserts += 1;
                }
                acks.fetch_add(1, Ordering::SeqCst);
            }
            Ok(update) => {
                for (id, state) in changes {
                    model.unanswered(id, state);
                }
                model.unanswered_requests += 1;
                return (
                    model,
                    WriterEnd::NodeError(format!(
                        "wait=true update answered 2xx with status `{}` (expected `completed`)",
                        update.status
                    )),
                );
            }
            Err(e) => {
                for (id, state) in changes {
                    model.unanswered(id, state);
                }
                model.unanswered_requests += 1;
                let msg = format!("{e:#}");
                let end = if e.downcast_ref::<ApiError>().is_some()
                    || e.to_string().contains("expected `result` shape")
                {
                    WriterEnd::NodeError(msg)
                } else {
                    WriterEnd::Unreachable(msg)
                };
                return (model, end);
            }
        }
    }
    (model, WriterEnd::Stopped)
}

fn record_state(r: &Record) -> Result<Option<PointValue>> {
    let vector = r
        .dense_vector()
        .with_context(|| format!("point {} came back without a dense vector: {r:?}", r.id))?;
    Ok(Some(PointValue {
        payload: r.payload.clone().unwrap_or_default(),
        vector,
    }))
}

/// Reads every point the model knows about and every point the node has, and checks both
/// against the model. Returns a description of every violation (empty when all is well).
fn verify(client: &Client, model: &Model) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    let ids: Vec<u64> = model.points.keys().copied().collect();
    let mut found: BTreeMap<u64, Option<PointValue>> = BTreeMap::new();
    for chunk in ids.chunks(RETRIEVE_CHUNK) {
        let asked: Vec<PointId> = chunk.iter().map(|&id| PointId::Num(id)).collect();
        let records = client
            .retrieve(COLLECTION, &asked, true, true)
            .context("retrieving points after restart")?;
        for r in &records {
            let Some(id) = r.id.as_num().filter(|id| chunk.contains(id)) else {
                problems.push(format!(
                    "retrieve returned id {} that was not asked for",
                    r.id
                ));
                continue;
            };
            if found.insert(id, record_state(r)?).is_some() {
                problems.push(format!("retrieve returned id {id} twice"));
            }
        }
    }
    for (id, expected) in &model.points {
        let actual = found.get(id).cloned().flatten();
        if !expected.allows(&actual) {
            let also = if expected.unanswered.is_empty() {
                String::new()
            } else {
                let states: Vec<String> = expected.unanswered.iter().map(describe).collect();
                format!(" or a later unanswered write's {}", states.join(" / "))
            };
            problems.push(format!(
                "point {id}: read back {}, expected the acknowledged {}{also}",
                describe(&actual),
                describe(&expected.acked)
            ));
        }
    }

    // Scroll sees the same set: nothing deleted resurfaces, nothing unknown appears, no
    // duplicates across pages.
    let max_pages = model.points.len() / 50 + 10;
    let scrolled = client
        .scroll_all(COLLECTION, 50, max_pages, false, false)
        .context("scrolling after restart")?;
    let mut seen = BTreeSet::new();
    for r in &scrolled {
        let Some(id) = r.id.as_num() else {
            problems.push(format!("scroll returned a non-numeric id {}", r.id));
            continue;
        };
        if !seen.insert(id) {
            problems.push(format!("scroll returned id {id} twice"));
        }
        match model.points.get(&id) {
            Some(e) if e.may_exist() => {}
            Some(e) => problems.push(format!(
                "scroll returned point {id}, which was deleted (acknowledged: {:?})",
                e.acked
            )),
            None => problems.push(format!(
                "scroll returned point {id}, which was never written"
            )),
        }
    }
    for (id, e) in &model.points {
        if e.must_exist() && !seen.contains(id) {
            problems.push(format!("scroll is missing acknowledged point {id}"));
        }
    }
    Ok(problems)
}

/// The segment directories of every local shard of the collection (names, `.tmp` included,
/// with their modification times).
fn segment_dirs(data_dir: &std::path::Path) -> Result<Vec<(String, std::time::SystemTime)>> {
    let mut dirs = Vec::new();
    let Ok(collections) = std::fs::read_dir(data_dir.join("collections")) else {
        return Ok(dirs);
    };
    for collection in collections {
        let shards = collection?.path().join("shards");
        let Ok(shards) = std::fs::read_dir(&shards) else {
            continue;
        };
        for shard in shards {
            let Ok(segments) = std::fs::read_dir(shard?.path().join("segments")) else {
                continue;
            };
            for segment in segments {
                let segment = segment?;
                // Gone between listing and reading: removed by the node, which is fine.
                let Ok(modified) = segment.metadata().and_then(|m| m.modified()) else {
                    continue;
                };
                dirs.push((segment.file_name().to_string_lossy().into_owned(), modified));
            }
        }
    }
    Ok(dirs)
}

fn check_collection_config(client: &Client) -> Result<()> {
    let info = client.collection_info(COLLECTION)?;
    ensure!(
        info.vector_size() == Some(DIM as u64) && info.distance() == Some(DISTANCE.as_str()),
        "collection config changed across restart: {}",
        info.raw
    );
    Ok(())
}

/// Fails the test by panicking while `node` is still alive, so its `Drop` sees the panic,
/// prints the node's log tail and keeps its work dir (returning `Err` would drop it first).
fn panic_on_error<T>(node: &NodeProcess, result: Result<T>) -> T {
    result.unwrap_or_else(|e| panic!("node {} failed the test: {e:?}", node.url()))
}

#[test]
fn acknowledged_writes_survive_kill_9() {
    let mut node = NodeProcess::start_ready(
        NodeOptions {
            client_timeout: Some(REQUEST_TIMEOUT),
            ..Default::default()
        },
        READY_TIMEOUT,
    )
    .expect("starting the node");
    let result = crash_rounds(&mut node);
    panic_on_error(&node, result);
}

fn crash_rounds(node: &mut NodeProcess) -> Result<()> {
    let test_started = Instant::now();
    let seed = seed();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // Tiny segments and a flush every second: the optimizer is always indexing, writing a
    // segment directory, swapping it in or merging when the kill lands, and about half the
    // kills come after a flush listed some directories.
    let _: Value = node.client().call(
        Method::Put,
        &format!("/collections/{COLLECTION}"),
        Some(&json!({
            "vectors": {"size": DIM, "distance": DISTANCE.as_str()},
            "optimizers_config": {
                "indexing_threshold": 1,
                "default_segment_number": 2,
                "flush_interval_sec": 1
            },
        })),
    )?;

    let mut model = Model::default();
    let mut segments_seen = 0;
    for round in 0..ROUNDS {
        let stop = Arc::new(AtomicBool::new(false));
        let acks = Arc::new(AtomicUsize::new(0));
        let writer = {
            let (client, stop, acks) = (node.client(), stop.clone(), acks.clone());
            let writer_rng = ChaCha8Rng::seed_from_u64(seed ^ ((round as u64 + 1) << 32));
            let model = std::mem::take(&mut model);
            thread::spawn(move || write_round(client, model, writer_rng, round, stop, acks))
        };
        // Kill only once writes are flowing, so the kill lands among them.
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        while acks.load(Ordering::SeqCst) == 0 && !writer.is_finished() {
            ensure!(
                Instant::now() < deadline,
                "round {round}: no write acknowledged within {REQUEST_TIMEOUT:?}"
            );
            thread::sleep(Duration::from_millis(5));
        }
        // This sleep picks the crash moment; it does not wait for anything.
        thread::sleep(Duration::from_millis(rng.random_range(100..=800)));
        let writer_done_before_kill = writer.is_finished();
        if let Some(status) = node.try_exit_status()? {
            stop.store(true, Ordering::SeqCst);
            let _ = writer.join();
            bail!("round {round}: the node exited on its own ({status}) while being written to");
        }
        node.kill_9()?;
        stop.store(true, Ordering::SeqCst);
        let (returned, end) = writer
            .join()
            .map_err(|_| anyhow::anyhow!("writer thread panicked"))?;
        model = returned;
        let ended = match end {
            WriterEnd::NodeError(e) => bail!("round {round}: node bug while writing: {e}"),
            WriterEnd::Unreachable(e) if writer_done_before_kill => {
                bail!("round {round}: node stopped answering before it was killed: {e}")
            }
            WriterEnd::Unreachable(e) => format!("request failed after kill: {e}"),
            WriterEnd::Stopped => "stopped".to_owned(),
        };
        eprintln!(
            "round {round}: killed after {} acknowledged requests this round (writer {ended}); \
             totals: {} upserts, {} deletes acknowledged, {} unanswered, {} ids",
            acks.load(Ordering::SeqCst),
            model.acked_upserts,
            model.acked_deletes,
            model.unanswered_requests,
            model.points.len()
        );

        let interrupted = segment_dirs(node.data_dir())?;
        let restarted_at = std::time::SystemTime::now();
        node.restart()?;
        node.wait_ready(Instant::now() + READY_TIMEOUT)?;
        let client = node.client();
        check_collection_config(&client).with_context(|| format!("after restart {round}"))?;
        // What a crash interrupted (a directory being written, or one no flush listed yet) is
        // gone once the node is up; a `.tmp` directory now is one the restarted optimizer is
        // writing.
        let left = segment_dirs(node.data_dir())?;
        for (name, modified) in &left {
            ensure!(
                !name.ends_with(".tmp") || *modified >= restarted_at,
                "round {round}: temporary segment directory {name} left from before the restart"
            );
        }
        eprintln!(
            "round {round}: {} segment directories at the kill, {} after the restart",
            interrupted.len(),
            left.len()
        );
        segments_seen += interrupted.len();
        let problems = verify(&client, &model)?;
        if !problems.is_empty() {
            bail!(
                "after kill -9 #{round} (seed {seed}) {} problems, first ones:\n  {}",
                problems.len(),
                problems
                    .iter()
                    .take(15)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("\n  ")
            );
        }
    }
    ensure!(
        model.acked_deletes > 0,
        "no delete was acknowledged; the test did not exercise deletes"
    );
    ensure!(
        segments_seen > 0,
        "no segment directory existed at any kill; the test did not exercise sealed segments"
    );
    eprintln!("crash test done in {:.1?}", test_started.elapsed());
    Ok(())
}

/// A collection's config and points survive a kill -9 right after writes and a later
/// graceful stop (SIGTERM).
#[test]
fn collection_config_survives_restarts() {
    let mut node =
        NodeProcess::start_ready(NodeOptions::default(), READY_TIMEOUT).expect("starting the node");
    let result = config_restarts(&mut node);
    panic_on_error(&node, result);
}

fn config_restarts(node: &mut NodeProcess) -> Result<()> {
    let configs = [
        (
            "cfg_dot",
            CollectionParams::new(32, Distance::Dot).hnsw(8, 64),
        ),
        (
            "cfg_cosine",
            CollectionParams::new(4, Distance::Cosine).hnsw(24, 200),
        ),
    ];
    let client = node.client();
    for (name, params) in &configs {
        client.create_collection(name, params)?;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let points: Vec<PointStruct> = (0..100u64)
        .map(|id| PointStruct {
            id: PointId::Num(id),
            vector: (0..32).map(|_| rng.random_range(-1.0f32..1.0)).collect(),
            payload: Some(
                json!({"n": id})
                    .as_object()
                    .expect("json! object literal is an object")
                    .clone(),
            ),
        })
        .collect();
    let ack = client.upsert("cfg_dot", &points, true)?;
    ensure!(ack.is_completed(), "wait=true upsert answered {ack:?}");

    let check = |client: &Client, when: &str| -> Result<()> {
        let mut names = client.list_collections()?;
        names.sort();
        ensure!(
            names == ["cfg_cosine", "cfg_dot"],
            "{when}: collections are {names:?}"
        );
        for (name, params) in &configs {
            let info = client.collection_info(name)?;
            let want = (
                Some(params.size as u64),
                Some(params.distance.as_str()),
                (
                    params.hnsw_m.map(|m| m as u64),
                    params.hnsw_ef_construct.map(|e| e as u64),
                ),
            );
            let got = (
                info.vector_size(),
                info.distance(),
                info.hnsw_m_ef_construct(),
            );
            ensure!(
                got == want,
                "{when}: `{name}` config is (size, distance, (m, ef_construct)) = {got:?}, \
                 created with {want:?}; full info: {}",
                info.raw
            );
        }
        let all = client.scroll_all("cfg_dot", 64, 10, true, true)?;
        let got: BTreeMap<u64, StoredPoint> = all
            .iter()
            .filter_map(|r| Some((r.id.as_num()?, (r.payload.clone(), r.dense_vector()))))
            .collect();
        ensure!(
            all.len() == points.len() && got.len() == points.len(),
            "{when}: scrolled {} points ({} distinct), wrote {}",
            all.len(),
            got.len(),
            points.len()
        );
        for p in &points {
            let id = p.id.as_num().expect("numeric ids above");
            let want = (p.payload.clone(), Some(p.vector.clone()));
            ensure!(
                got.get(&id) == Some(&want),
                "{when}: point {id} is {:?}, wrote {want:?}",
                got.get(&id)
            );
        }
        Ok(())
    };

    node.kill_9()?;
    node.restart()?;
    node.wait_ready(Instant::now() + READY_TIMEOUT)?;
    check(&node.client(), "after kill -9 and restart")?;

    node.stop(Duration::from_secs(10))?;
    node.restart()?;
    node.wait_ready(Instant::now() + READY_TIMEOUT)?;
    check(&node.client(), "after SIGTERM and a second restart")?;
    Ok(())
}

/// A vector created after its collection is kept by segments on disk across restarts: the
/// shards reopen with the configuration as last applied, not as created.
#[test]
fn a_vector_added_after_creation_survives_restarts_in_sealed_segments() {
    let mut node = NodeProcess::start_ready(
        NodeOptions {
            client_timeout: Some(REQUEST_TIMEOUT),
            ..Default::default()
        },
        READY_TIMEOUT,
    )
    .expect("starting the node");
    let result = added_vector_restarts(&mut node);
    panic_on_error(&node, result);
}

fn added_vector_restarts(node: &mut NodeProcess) -> Result<()> {
    const NAME: &str = "late_vector";
    const POINTS: u64 = 400;
    let client = node.client();
    let _: Value = client.call(
        Method::Put,
        &format!("/collections/{NAME}"),
        Some(&json!({
            "vectors": {"a": {"size": 4, "distance": "Dot"}},
            "optimizers_config": {"indexing_threshold": 1, "default_segment_number": 2},
        })),
    )?;
    let _: Value = client.call(
        Method::Put,
        &format!("/collections/{NAME}/vectors/b?wait=true"),
        Some(&json!({"dense": {"size": 2, "distance": "Euclid"}})),
    )?;
    let points: Vec<Value> = (0..POINTS)
        .map(|i| json!({"id": i, "vector": {"a": [i as f32, 1.0, 0.0, 0.0], "b": [i as f32, 2.0]}}))
        .collect();
    let _: Value = client.call(
        Method::Put,
        &format!("/collections/{NAME}/points?wait=true"),
        Some(&json!({"points": points})),
    )?;
    // Indexed segments go to disk; a graceful stop flushes, so the restart opens them.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let info: Value = client.call(Method::Get, &format!("/collections/{NAME}"), None)?;
        if info["status"] == "green" && info["indexed_vectors_count"].as_u64().unwrap_or(0) > 0 {
            break;
        }
        ensure!(Instant::now() < deadline, "not indexed within 60 s: {info}");
        thread::sleep(Duration::from_millis(50));
    }
    for round in 0..2 {
        node.stop(Duration::from_secs(10))?;
        node.restart()?;
        node.wait_ready(Instant::now() + READY_TIMEOUT)?;
        let ids: Vec<u64> = (0..POINTS).collect();
        let got: Vec<Value> = node.client().call(
            Method::Post,
            &format!("/collections/{NAME}/points"),
            Some(&json!({"ids": ids, "with_vector": true})),
        )?;
        ensure!(
            got.len() == POINTS as usize,
            "round {round}: {} points",
            got.len()
        );
        for p in &got {
            let i = p["id"].as_u64().context("numeric id")?;
            ensure!(
                p["vector"]["b"] == json!([i as f32, 2.0])
                    && p["vector"]["a"][0] == json!(i as f32),
                "round {round}: point {i} came back as {p}"
            );
        }
    }
    Ok(())
}
