//! Qdrant's client gRPC API, driven by Qdrant's own Rust client (`qdrant-client`) against real
//! `shoal-node` processes: every answer is compared with the same request over REST; bad input
//! gets the status code Qdrant gives and changes nothing; a 3-peer cluster creates, fills and
//! moves a shard through gRPC alone; arbitrary request messages never get `Internal`.
//!
//! Every wait is a poll with a deadline; nodes are killed by the harness when a test ends, also
//! when it fails.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use prost::Message;
use qdrant_client::qdrant as q;
use qdrant_client::{Qdrant, QdrantError};
use serde_json::{Value, json};
use shoal_e2e::cluster::{CONVERGE, READY, start_cluster};
use shoal_e2e::{Method, NodeOptions, NodeProcess};
use tonic::Code;

const DIM: usize = 8;
const COLLECTION: &str = "grpc_docs";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

fn client(node: &NodeProcess, key: Option<&str>) -> Result<Qdrant> {
    Ok(Qdrant::from_url(&node.grpc_url())
        .api_key(key)
        .timeout(Duration::from_secs(30))
        .skip_compatibility_check()
        .build()?)
}

/// The gRPC status code of a failed call.
fn code<T: std::fmt::Debug>(result: Result<T, QdrantError>) -> Result<Code> {
    match result {
        Ok(v) => bail!("expected an error, got {v:?}"),
        Err(QdrantError::ResponseError { status })
        | Err(QdrantError::ResourceExhaustedError { status, .. }) => Ok(status.code()),
        Err(other) => bail!("expected a status, got {other}"),
    }
}

fn vector(i: usize) -> Vec<f32> {
    (0..DIM)
        .map(|d| (((i * 31 + d * 17) % 97) as f32 / 97.0) - 0.4)
        .collect()
}

fn sparse(i: usize) -> (Vec<u32>, Vec<f32>) {
    let a = (i % 13) as u32;
    let b = 13 + (i % 7) as u32;
    (vec![a, b], vec![1.0 + (i % 5) as f32, 0.5])
}

fn wire_id(n: u64) -> q::PointId {
    q::PointId {
        point_id_options: Some(q::point_id::PointIdOptions::Num(n)),
    }
}

fn wire_value(v: &Value) -> q::Value {
    use q::value::Kind;
    let kind = match v {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Kind::IntegerValue(i),
            None => Kind::DoubleValue(n.as_f64().unwrap_or_default()),
        },
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(a) => Kind::ListValue(q::ListValue {
            values: a.iter().map(wire_value).collect(),
        }),
        Value::Object(o) => Kind::StructValue(q::Struct {
            fields: o.iter().map(|(k, v)| (k.clone(), wire_value(v))).collect(),
        }),
    };
    q::Value { kind: Some(kind) }
}

fn json_value(v: &q::Value) -> Value {
    use q::value::Kind;
    match &v.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => json!(b),
        Some(Kind::IntegerValue(i)) => json!(i),
        Some(Kind::DoubleValue(d)) => json!(d),
        Some(Kind::StringValue(s)) => json!(s),
        Some(Kind::ListValue(l)) => Value::Array(l.values.iter().map(json_value).collect()),
        Some(Kind::StructValue(s)) => Value::Object(
            s.fields
                .iter()
                .map(|(k, v)| (k.clone(), json_value(v)))
                .collect(),
        ),
    }
}

fn payload_json(p: &HashMap<String, q::Value>) -> Value {
    Value::Object(p.iter().map(|(k, v)| (k.clone(), json_value(v))).collect())
}

fn id_num(id: &Option<q::PointId>) -> u64 {
    match id.as_ref().and_then(|i| i.point_id_options.clone()) {
        Some(q::point_id::PointIdOptions::Num(n)) => n,
        _ => u64::MAX,
    }
}

fn point(i: usize) -> q::PointStruct {
    let (indices, values) = sparse(i);
    let named = HashMap::from([
        (
            "v".to_string(),
            q::Vector {
                vector: Some(q::vector::Vector::Dense(q::DenseVector { data: vector(i) })),
                ..Default::default()
            },
        ),
        (
            "s".to_string(),
            q::Vector {
                vector: Some(q::vector::Vector::Sparse(q::SparseVector {
                    values,
                    indices,
                })),
                ..Default::default()
            },
        ),
    ]);
    q::PointStruct {
        id: Some(wire_id(i as u64)),
        payload: [("i", json!(i)), ("even", json!(i.is_multiple_of(2)))]
            .into_iter()
            .map(|(k, v)| (k.to_string(), wire_value(&v)))
            .collect(),
        vectors: Some(q::Vectors {
            vectors_options: Some(q::vectors::VectorsOptions::Vectors(q::NamedVectors {
                vectors: named,
            })),
        }),
    }
}

fn create_request(shards: Option<u32>) -> q::CreateCollection {
    q::CreateCollection {
        collection_name: COLLECTION.into(),
        vectors_config: Some(q::VectorsConfig {
            config: Some(q::vectors_config::Config::ParamsMap(q::VectorParamsMap {
                map: HashMap::from([(
                    "v".to_string(),
                    q::VectorParams {
                        size: DIM as u64,
                        distance: q::Distance::Cosine as i32,
                        ..Default::default()
                    },
                )]),
            })),
        }),
        sparse_vectors_config: Some(q::SparseVectorConfig {
            map: HashMap::from([("s".to_string(), q::SparseVectorParams::default())]),
        }),
        shard_number: shards,
        ..Default::default()
    }
}

fn upsert_request(ids: std::ops::Range<usize>) -> q::UpsertPoints {
    q::UpsertPoints {
        collection_name: COLLECTION.into(),
        wait: Some(true),
        points: ids.map(point).collect(),
        ..Default::default()
    }
}

fn rest(node: &NodeProcess, method: Method, path: &str, body: Option<Value>) -> Result<Value> {
    node.client().call(method, path, body.as_ref())
}

fn rest_count(node: &NodeProcess) -> Result<u64> {
    rest(
        node,
        Method::Post,
        &format!("/collections/{COLLECTION}/points/count"),
        Some(json!({"exact": true})),
    )?["count"]
        .as_u64()
        .context("count")
}

/// (id, score, payload) of REST scored points.
fn rest_scored(points: &Value) -> Vec<(u64, f32, Value)> {
    points
        .as_array()
        .map(|a| {
            a.iter()
                .map(|p| {
                    (
                        p["id"].as_u64().unwrap_or(u64::MAX),
                        p["score"].as_f64().unwrap_or(f64::NAN) as f32,
                        p["payload"].clone(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn grpc_scored(points: &[q::ScoredPoint]) -> Vec<(u64, f32, Value)> {
    points
        .iter()
        .map(|p| (id_num(&p.id), p.score, payload_json(&p.payload)))
        .collect()
}

fn same_scored(grpc: &[(u64, f32, Value)], rest: &[(u64, f32, Value)], what: &str) -> Result<()> {
    ensure!(
        grpc.len() == rest.len(),
        "{what}: {} answers over gRPC, {} over REST",
        grpc.len(),
        rest.len()
    );
    ensure!(!grpc.is_empty(), "{what}: no answers");
    for (g, r) in grpc.iter().zip(rest) {
        ensure!(
            g.0 == r.0 && (g.1 - r.1).abs() <= 1e-5 && g.2 == r.2,
            "{what}: gRPC {g:?} != REST {r:?}"
        );
    }
    Ok(())
}

fn even_filter() -> q::Filter {
    q::Filter {
        must: vec![q::Condition {
            condition_one_of: Some(q::condition::ConditionOneOf::Field(q::FieldCondition {
                key: "even".into(),
                r#match: Some(q::Match {
                    match_value: Some(q::r#match::MatchValue::Boolean(true)),
                }),
                ..Default::default()
            })),
        }],
        ..Default::default()
    }
}

fn payload_all() -> Option<q::WithPayloadSelector> {
    Some(q::WithPayloadSelector {
        selector_options: Some(q::with_payload_selector::SelectorOptions::Enable(true)),
    })
}

#[test]
fn one_node_answers_over_grpc_as_over_rest() -> Result<()> {
    let node = NodeProcess::start_ready(NodeOptions::default(), READY)?;
    let rt = runtime();
    let c = client(&node, None)?;
    rt.block_on(c.create_collection(create_request(None)))?;
    let info = rest(
        &node,
        Method::Get,
        &format!("/collections/{COLLECTION}"),
        None,
    )?;
    ensure!(info["config"]["params"]["vectors"]["v"]["size"] == json!(DIM));
    ensure!(info["config"]["params"]["sparse_vectors"]["s"].is_object());
    let wire_info = rt.block_on(c.collection_info(COLLECTION))?;
    ensure!(wire_info.result.and_then(|i| i.points_count) == Some(0));

    for batch in 0..3 {
        let r = rt.block_on(c.upsert_points(upsert_request(batch * 100..(batch + 1) * 100)))?;
        ensure!(r.result.map(|r| r.status) == Some(q::UpdateStatus::Completed as i32));
    }
    let count = rt.block_on(c.count(q::CountPoints {
        collection_name: COLLECTION.into(),
        exact: Some(true),
        ..Default::default()
    }))?;
    ensure!(count.result.map(|r| r.count) == Some(300));
    ensure!(rest_count(&node)? == 300);

    // Search (the legacy endpoint) and query, dense and sparse, with a filter.
    let query = vector(1234);
    let search = rt.block_on(c.search_points(q::SearchPoints {
        collection_name: COLLECTION.into(),
        vector: query.clone(),
        vector_name: Some("v".into()),
        limit: 10,
        filter: Some(even_filter()),
        with_payload: payload_all(),
        ..Default::default()
    }))?;
    let rest_search = rest(
        &node,
        Method::Post,
        &format!("/collections/{COLLECTION}/points/search"),
        Some(json!({
            "vector": {"name": "v", "vector": query},
            "limit": 10,
            "filter": {"must": [{"key": "even", "match": {"value": true}}]},
            "with_payload": true,
        })),
    )?;
    same_scored(
        &grpc_scored(&search.result),
        &rest_scored(&rest_search),
        "search",
    )?;

    let dense_query = rt.block_on(c.query(q::QueryPoints {
        collection_name: COLLECTION.into(),
        query: Some(q::Query {
            variant: Some(q::query::Variant::Nearest(q::VectorInput {
                variant: Some(q::vector_input::Variant::Dense(q::DenseVector {
                    data: query.clone(),
                })),
            })),
        }),
        using: Some("v".into()),
        limit: Some(7),
        offset: Some(2),
        with_payload: payload_all(),
        ..Default::default()
    }))?;
    let rest_query = rest(
        &node,
        Method::Post,
        &format!("/collections/{COLLECTION}/points/query"),
        Some(json!({"query": query, "using": "v", "limit": 7, "offset": 2, "with_payload": true})),
    )?;
    same_scored(
        &grpc_scored(&dense_query.result),
        &rest_scored(&rest_query["points"]),
        "dense query",
    )?;

    let sparse_query = rt.block_on(c.query(q::QueryPoints {
        collection_name: COLLECTION.into(),
        query: Some(q::Query {
            variant: Some(q::query::Variant::Nearest(q::VectorInput {
                variant: Some(q::vector_input::Variant::Sparse(q::SparseVector {
                    indices: vec![3, 15],
                    values: vec![1.0, 2.0],
                })),
            })),
        }),
        using: Some("s".into()),
        limit: Some(5),
        with_payload: payload_all(),
        ..Default::default()
    }))?;
    let rest_sparse = rest(
        &node,
        Method::Post,
        &format!("/collections/{COLLECTION}/points/query"),
        Some(json!({
            "query": {"indices": [3, 15], "values": [1.0, 2.0]},
            "using": "s", "limit": 5, "with_payload": true,
        })),
    )?;
    same_scored(
        &grpc_scored(&sparse_query.result),
        &rest_scored(&rest_sparse["points"]),
        "sparse query",
    )?;

    // Scroll: the same page and the same next offset.
    let page = rt.block_on(c.scroll(q::ScrollPoints {
        collection_name: COLLECTION.into(),
        filter: Some(even_filter()),
        offset: Some(wire_id(40)),
        limit: Some(7),
        with_payload: payload_all(),
        ..Default::default()
    }))?;
    let rest_page = rest(
        &node,
        Method::Post,
        &format!("/collections/{COLLECTION}/points/scroll"),
        Some(json!({
            "filter": {"must": [{"key": "even", "match": {"value": true}}]},
            "offset": 40, "limit": 7, "with_payload": true,
        })),
    )?;
    let grpc_ids: Vec<(u64, Value)> = page
        .result
        .iter()
        .map(|p| (id_num(&p.id), payload_json(&p.payload)))
        .collect();
    let rest_ids: Vec<(u64, Value)> = rest_page["points"]
        .as_array()
        .context("points")?
        .iter()
        .map(|p| (p["id"].as_u64().unwrap_or(u64::MAX), p["payload"].clone()))
        .collect();
    ensure!(grpc_ids == rest_ids, "scroll: {grpc_ids:?} != {rest_ids:?}");
    ensure!(Some(id_num(&page.next_page_offset)) == rest_page["next_page_offset"].as_u64());

    // Payload update and delete, read back over REST.
    rt.block_on(c.set_payload(q::SetPayloadPoints {
        collection_name: COLLECTION.into(),
        wait: Some(true),
        payload: HashMap::from([("tag".to_string(), wire_value(&json!("x")))]),
        points_selector: Some(q::PointsSelector {
            points_selector_one_of: Some(q::points_selector::PointsSelectorOneOf::Points(
                q::PointsIdsList {
                    ids: vec![wire_id(1), wire_id(2)],
                },
            )),
        }),
        ..Default::default()
    }))?;
    let got = rest(
        &node,
        Method::Get,
        &format!("/collections/{COLLECTION}/points/2"),
        None,
    )?;
    ensure!(
        got["payload"] == json!({"i": 2, "even": true, "tag": "x"}),
        "{got}"
    );
    rt.block_on(c.delete_points(q::DeletePoints {
        collection_name: COLLECTION.into(),
        wait: Some(true),
        points: Some(q::PointsSelector {
            points_selector_one_of: Some(q::points_selector::PointsSelectorOneOf::Filter(
                q::Filter {
                    must: vec![q::Condition {
                        condition_one_of: Some(q::condition::ConditionOneOf::HasId(
                            q::HasIdCondition {
                                has_id: (0..10).map(wire_id).collect(),
                            },
                        )),
                    }],
                    ..Default::default()
                },
            )),
        }),
        ..Default::default()
    }))?;
    ensure!(rest_count(&node)? == 290);
    let retrieved = rt.block_on(c.get_points(q::GetPoints {
        collection_name: COLLECTION.into(),
        ids: vec![wire_id(5), wire_id(11)],
        with_payload: payload_all(),
        ..Default::default()
    }))?;
    let ids: Vec<u64> = retrieved.result.iter().map(|p| id_num(&p.id)).collect();
    ensure!(ids == vec![11], "deleted point still there: {ids:?}");
    Ok(())
}

#[test]
fn bad_grpc_input_gets_qdrants_status_and_changes_nothing() -> Result<()> {
    let node = NodeProcess::start_ready(
        NodeOptions {
            api_key: Some("rw-secret".into()),
            env: vec![
                (
                    "SHOAL__SERVICE__READ_ONLY_API_KEY".into(),
                    "ro-secret".into(),
                ),
                ("SHOAL__SERVICE__MAX_REQUEST_SIZE_MB".into(), "1".into()),
            ],
            ..Default::default()
        },
        READY,
    )?;
    let rt = runtime();
    let rw = client(&node, Some("rw-secret"))?;
    let ro = client(&node, Some("ro-secret"))?;
    let wrong = client(&node, Some("nope"))?;
    let none = client(&node, None)?;

    ensure!(code(rt.block_on(none.list_collections()))? == Code::Unauthenticated);
    ensure!(code(rt.block_on(wrong.list_collections()))? == Code::Unauthenticated);
    ensure!(
        code(rt.block_on(ro.create_collection(create_request(None))))? == Code::PermissionDenied
    );
    rt.block_on(rw.create_collection(create_request(None)))?;
    rt.block_on(rw.upsert_points(upsert_request(0..50)))?;
    ensure!(code(rt.block_on(ro.upsert_points(upsert_request(50..60))))? == Code::PermissionDenied);
    // The read-only key reads.
    let count = |c: &Qdrant| -> Result<u64> {
        Ok(rt
            .block_on(c.count(q::CountPoints {
                collection_name: COLLECTION.into(),
                exact: Some(true),
                ..Default::default()
            }))?
            .result
            .map_or(0, |r| r.count))
    };
    ensure!(count(&ro)? == 50);

    // A vector of the wrong size: InvalidArgument, nothing written.
    let mut bad = upsert_request(100..101);
    if let Some(q::vectors::VectorsOptions::Vectors(named)) = bad.points[0]
        .vectors
        .as_mut()
        .and_then(|v| v.vectors_options.as_mut())
    {
        named.vectors.insert(
            "v".into(),
            q::Vector {
                vector: Some(q::vector::Vector::Dense(q::DenseVector {
                    data: vec![0.5; DIM + 1],
                })),
                ..Default::default()
            },
        );
    }
    ensure!(code(rt.block_on(rw.upsert_points(bad)))? == Code::InvalidArgument);
    // An unknown vector name, a missing point id: InvalidArgument too.
    let mut unnamed = upsert_request(101..102);
    unnamed.points[0].id = None;
    ensure!(code(rt.block_on(rw.upsert_points(unnamed)))? == Code::InvalidArgument);
    // An unknown collection: NotFound.
    let missing = rt.block_on(rw.search_points(q::SearchPoints {
        collection_name: "no_such_collection".into(),
        vector: vector(1),
        limit: 3,
        ..Default::default()
    }));
    ensure!(code(missing)? == Code::NotFound);
    // A message over the configured limit (1 MiB) is refused before it is read.
    let huge = q::UpsertPoints {
        collection_name: COLLECTION.into(),
        wait: Some(true),
        points: (1000..1000 + 40_000).map(point).collect(),
        ..Default::default()
    };
    ensure!(huge.encoded_len() > 1024 * 1024);
    let too_big = code(rt.block_on(rw.upsert_points(huge)))?;
    ensure!(
        matches!(too_big, Code::OutOfRange | Code::ResourceExhausted),
        "oversized message answered {too_big:?}"
    );
    ensure!(
        count(&rw)? == 50,
        "a refused request changed the collection"
    );
    Ok(())
}

/// A shard replica as (shard, peer).
fn replicas(info: &q::CollectionClusterInfoResponse) -> Vec<(u32, u64)> {
    let mut all: Vec<(u32, u64)> = info
        .local_shards
        .iter()
        .map(|s| (s.shard_id, info.peer_id))
        .chain(info.remote_shards.iter().map(|s| (s.shard_id, s.peer_id)))
        .collect();
    all.sort();
    all
}

#[test]
fn three_peers_fill_and_move_a_shard_through_grpc() -> Result<()> {
    let nodes = start_cluster(3, &[])?;
    let rt = runtime();
    let clients: Vec<Qdrant> = nodes
        .iter()
        .map(|n| client(n, None))
        .collect::<Result<_>>()?;
    rt.block_on(clients[0].create_collection(create_request(Some(3))))?;
    // Every peer knows the collection (consensus applied) before it is written through one.
    let deadline = Instant::now() + CONVERGE;
    loop {
        let known = nodes.iter().all(|n| {
            rest(
                n,
                Method::Get,
                &format!("/collections/{COLLECTION}/exists"),
                None,
            )
            .is_ok_and(|v| v["exists"] == json!(true))
        });
        if known {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "collection not known by every peer"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for batch in 0..4 {
        let via = &clients[batch % 3];
        rt.block_on(via.upsert_points(upsert_request(batch * 250..(batch + 1) * 250)))?;
    }
    let info = rt
        .block_on(clients[0].collection_cluster_info(COLLECTION))
        .context("cluster info over gRPC")?;
    let before = replicas(&info);
    ensure!(before.len() == 3, "three replicas expected: {before:?}");
    let (shard, from) = before[0];
    let peers: Vec<u64> = before.iter().map(|r| r.1).collect();
    let to = *peers
        .iter()
        .find(|p| **p != from)
        .context("a peer without the shard")?;
    rt.block_on(clients[1].update_collection_cluster_setup(
        q::UpdateCollectionClusterSetupRequest {
            collection_name: COLLECTION.into(),
            operation: Some(
                q::update_collection_cluster_setup_request::Operation::MoveShard(q::MoveShard {
                    shard_id: shard,
                    from_peer_id: from,
                    to_peer_id: to,
                    method: Some(q::ShardTransferMethod::StreamRecords as i32),
                    ..Default::default()
                }),
            ),
            ..Default::default()
        },
    ))?;
    // Progress over gRPC: the transfer is listed until it finishes, then the replica is on
    // the destination.
    let deadline = Instant::now() + CONVERGE;
    let mut seen_transfer = false;
    loop {
        let info = rt.block_on(clients[2].collection_cluster_info(COLLECTION))?;
        seen_transfer |= info
            .shard_transfers
            .iter()
            .any(|t| t.shard_id == shard && t.from == from && t.to == to);
        let now = replicas(&info);
        if info.shard_transfers.is_empty()
            && now.contains(&(shard, to))
            && !now.contains(&(shard, from))
        {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "shard move did not finish: {info:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("transfer seen in progress over gRPC: {seen_transfer}");
    // Every peer answers the same count and the same search, over gRPC and REST.
    let query = vector(777);
    let mut first: Option<Vec<(u64, f32, Value)>> = None;
    for (node, c) in nodes.iter().zip(&clients) {
        let count = rt
            .block_on(c.count(q::CountPoints {
                collection_name: COLLECTION.into(),
                exact: Some(true),
                ..Default::default()
            }))?
            .result
            .map_or(0, |r| r.count);
        ensure!(count == 1000 && rest_count(node)? == 1000, "count {count}");
        let found = rt.block_on(c.query(q::QueryPoints {
            collection_name: COLLECTION.into(),
            query: Some(q::Query {
                variant: Some(q::query::Variant::Nearest(q::VectorInput {
                    variant: Some(q::vector_input::Variant::Dense(q::DenseVector {
                        data: query.clone(),
                    })),
                })),
            }),
            using: Some("v".into()),
            limit: Some(10),
            with_payload: payload_all(),
            ..Default::default()
        }))?;
        let found = grpc_scored(&found.result);
        match &first {
            None => first = Some(found),
            Some(f) => same_scored(&found, f, "query on another peer")?,
        }
    }
    Ok(())
}

/// Arbitrary bytes decoded as request messages (prost never panics on them), and every message
/// that decodes sent to a live node: a client's mistake is never answered `Internal` or
/// `Unknown`, and the node keeps serving.
#[test]
fn arbitrary_grpc_requests_never_get_internal_errors() -> Result<()> {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};
    let node = NodeProcess::start_ready(NodeOptions::default(), READY)?;
    let rt = runtime();
    let c = client(&node, None)?;
    rt.block_on(c.create_collection(create_request(None)))?;
    rt.block_on(c.upsert_points(upsert_request(0..20)))?;

    fn check<T: std::fmt::Debug>(r: Result<T, QdrantError>) -> Result<(), TestCaseError> {
        match r {
            Ok(_) => Ok(()),
            Err(QdrantError::ResponseError { status })
            | Err(QdrantError::ResourceExhaustedError { status, .. }) => {
                prop_assert!(
                    !matches!(status.code(), Code::Internal | Code::Unknown),
                    "{status:?}"
                );
                Ok(())
            }
            Err(other) => Err(TestCaseError::fail(other.to_string())),
        }
    }
    let mut runner = TestRunner::new(Config {
        cases: 96,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(
            &(prop::collection::vec(any::<u8>(), 0..256), any::<bool>()),
            |(bytes, same_collection)| {
                let name = |n: &mut String| {
                    if same_collection {
                        *n = COLLECTION.into();
                    }
                };
                if let Ok(mut m) = q::SearchPoints::decode(bytes.as_slice()) {
                    name(&mut m.collection_name);
                    check(rt.block_on(c.search_points(m)))?;
                }
                if let Ok(mut m) = q::QueryPoints::decode(bytes.as_slice()) {
                    name(&mut m.collection_name);
                    check(rt.block_on(c.query(m)))?;
                }
                if let Ok(mut m) = q::ScrollPoints::decode(bytes.as_slice()) {
                    name(&mut m.collection_name);
                    check(rt.block_on(c.scroll(m)))?;
                }
                if let Ok(mut m) = q::CountPoints::decode(bytes.as_slice()) {
                    name(&mut m.collection_name);
                    check(rt.block_on(c.count(m)))?;
                }
                if let Ok(mut m) = q::UpsertPoints::decode(bytes.as_slice()) {
                    name(&mut m.collection_name);
                    check(rt.block_on(c.upsert_points(m)))?;
                }
                if let Ok(mut m) = q::SetPayloadPoints::decode(bytes.as_slice()) {
                    name(&mut m.collection_name);
                    check(rt.block_on(c.set_payload(m)))?;
                }
                if let Ok(m) = q::CreateCollection::decode(bytes.as_slice()) {
                    check(rt.block_on(c.create_collection(m)))?;
                }
                Ok(())
            },
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    // Still serving.
    rt.block_on(c.health_check())?;
    let count = rest_count(&node)?;
    ensure!(count >= 20, "points lost: {count}");
    Ok(())
}

/// Qdrant's `Snapshots` service: collection and full-storage snapshots created, listed and
/// deleted through the official client, the same files the REST API serves.
#[test]
fn snapshots_over_grpc_are_the_rest_snapshots() -> Result<()> {
    let node = NodeProcess::start_ready(NodeOptions::default(), READY)?;
    let rt = runtime();
    let c = client(&node, None)?;
    rt.block_on(c.create_collection(create_request(None)))?;
    rt.block_on(c.upsert_points(upsert_request(0..200)))?;

    let created = rt
        .block_on(c.create_snapshot(q::CreateSnapshotRequest {
            collection_name: COLLECTION.into(),
        }))?
        .snapshot_description
        .context("a description")?;
    ensure!(created.size > 0 && created.checksum.as_ref().is_some_and(|c| c.len() == 64));
    ensure!(created.creation_time.is_some());
    let listed = rt.block_on(c.list_snapshots(q::ListSnapshotsRequest {
        collection_name: COLLECTION.into(),
    }))?;
    let names: Vec<&str> = listed
        .snapshot_descriptions
        .iter()
        .map(|d| d.name.as_str())
        .collect();
    ensure!(names == [created.name.as_str()], "listed {names:?}");
    let over_rest = rest(
        &node,
        Method::Get,
        &format!("/collections/{COLLECTION}/snapshots"),
        None,
    )?;
    ensure!(over_rest[0]["name"] == json!(created.name));
    ensure!(over_rest[0]["checksum"] == json!(created.checksum));

    rt.block_on(c.delete_snapshot(q::DeleteSnapshotRequest {
        collection_name: COLLECTION.into(),
        snapshot_name: created.name.clone(),
    }))?;
    let again = rt.block_on(c.delete_snapshot(q::DeleteSnapshotRequest {
        collection_name: COLLECTION.into(),
        snapshot_name: created.name,
    }));
    ensure!(code(again)? == Code::NotFound);
    ensure!(
        code(rt.block_on(c.create_snapshot(q::CreateSnapshotRequest {
            collection_name: "missing".into(),
        })))?
            == Code::NotFound
    );

    let full = rt
        .block_on(c.create_full_snapshot())?
        .snapshot_description
        .context("a description")?;
    let listed = rt.block_on(c.list_full_snapshots())?;
    ensure!(
        listed
            .snapshot_descriptions
            .iter()
            .any(|d| d.name == full.name)
    );
    rt.block_on(c.delete_full_snapshot(q::DeleteFullSnapshotRequest {
        snapshot_name: full.name,
    }))?;
    ensure!(
        rt.block_on(c.list_full_snapshots())?
            .snapshot_descriptions
            .is_empty()
    );
    Ok(())
}
