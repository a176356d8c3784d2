//! Payload indexes through the REST API. Declared on a collection whose points already sit in
//! sealed, indexed segments, they change which points a filtered search scores, never what it
//! returns: selective searches return exactly the points that pass, also after payload edits
//! made once the indexes exist, after an index is dropped, and after a restart (which builds
//! the indexes again from the segments on disk).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::{Map, Value, json};
use shoal_e2e::{Method, NodeOptions, NodeProcess, PointId, PointStruct, SearchRequest};

const DIM: usize = 16;
const POINTS: u64 = 6_000;

/// Titles, by `i % 4`: with a full-text index, `quick fox` matches the first two (every token,
/// any order), `phrase` "quick brown" only the first; as a substring `quick fox` matches none.
const TITLES: [&str; 4] = [
    "The quick brown fox",
    "a Fox that is QUICK",
    "quickly foxed",
    "lazy dog",
];

/// The payload of point `i`: a keyword that is `rare` for about 1% of the points, an integer,
/// a geo point, a datetime and a title.
fn payload(i: u64) -> Map<String, Value> {
    let kw = if i % 97 == 5 { "rare" } else { "common" };
    json!({
        "title": TITLES[(i % 4) as usize],
        "kw": kw,
        "n": i,
        "place": {"lat": (i % 180) as f64 - 89.5, "lon": ((i * 7) % 360) as f64 - 179.5},
        "when": format!("2024-01-{:02}T00:00:00Z", 1 + i % 28),
    })
    .as_object()
    .cloned()
    .unwrap_or_default()
}

fn num(id: &PointId) -> u64 {
    match id {
        PointId::Num(n) => *n,
        PointId::Uuid(u) => panic!("unexpected uuid {u}"),
    }
}

/// Waits (bounded) until the collection is green: every sealed segment indexed.
fn wait_green(client: &shoal_e2e::Client, name: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if client.collection_info(name)?.status == "green" {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "`{name}` not green after 120 s");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn payload_indexes_never_change_what_a_filtered_search_returns() -> Result<()> {
    let mut node = NodeProcess::start_ready(NodeOptions::default(), Duration::from_secs(30))?;
    let client = node.client();
    let name = "payload_indexes";
    // 64 bytes a point: a graph per 512 points, and a scan below 256 candidates, so that
    // both of Qdrant's plans (score the candidates, walk the graph with the filter) run.
    let _: Value = client.call(
        Method::Put,
        &format!("/collections/{name}"),
        Some(&json!({
            "vectors": {"size": DIM, "distance": "Euclid"},
            "shard_number": 2,
            "hnsw_config": {"m": 16, "ef_construct": 64, "full_scan_threshold": 16},
            "optimizers_config": {"indexing_threshold": 32, "default_segment_number": 2},
        })),
    )?;
    let mut rng = StdRng::seed_from_u64(5);
    let mut payloads: Vec<Map<String, Value>> = (0..POINTS).map(payload).collect();
    for chunk in (0..POINTS).collect::<Vec<_>>().chunks(1000) {
        let points: Vec<PointStruct> = chunk
            .iter()
            .map(|&i| PointStruct {
                id: PointId::Num(i),
                vector: (0..DIM).map(|_| rng.random_range(-1.0..1.0)).collect(),
                payload: Some(payloads[i as usize].clone()),
            })
            .collect();
        client.upsert(name, &points, true)?;
    }
    wait_green(&client, name)?;
    for (field, schema) in [
        ("kw", "keyword"),
        ("n", "integer"),
        ("place", "geo"),
        ("when", "datetime"),
    ] {
        let _: Value = client.call(
            Method::Put,
            &format!("/collections/{name}/index?wait=true"),
            Some(&json!({"field_name": field, "field_schema": schema})),
        )?;
    }

    // Each filter with the local rule it stands for; all pass fewer than 100 points.
    type Rule = Box<dyn Fn(u64, &Value) -> bool>;
    let cases: Vec<(Value, Rule)> = vec![
        (
            json!({"must": [{"key": "kw", "match": {"value": "rare"}}]}),
            Box::new(|_, p| p["kw"] == "rare"),
        ),
        (
            json!({"must": [{"key": "n", "range": {"gte": 1000, "lt": 1040}}]}),
            Box::new(|_, p| (1000..1040).contains(&p["n"].as_u64().unwrap_or(u64::MAX))),
        ),
        (
            json!({"must": [{"key": "when", "range": {"gte": "2024-01-03T00:00:00Z", "lt": "2024-01-04"}},
                            {"key": "n", "range": {"lt": 2000}}]}),
            Box::new(|_, p| {
                p["when"] == "2024-01-03T00:00:00Z" && p["n"].as_u64().is_some_and(|n| n < 2000)
            }),
        ),
        (
            json!({"must": [{"key": "place", "geo_bounding_box": {
                "top_left": {"lat": 10.0, "lon": -180.0},
                "bottom_right": {"lat": 9.0, "lon": 0.0}}}]}),
            Box::new(|_, p| {
                let (lat, lon) = (p["place"]["lat"].as_f64(), p["place"]["lon"].as_f64());
                lat.is_some_and(|l| 9.0 < l && l < 10.0) && lon.is_some_and(|l| l < 0.0)
            }),
        ),
        (
            json!({"should": [{"key": "kw", "match": {"value": "rare"}}, {"has_id": [1, 2, 3]}],
                   "must_not": [{"key": "n", "range": {"gte": 3000}}]}),
            Box::new(|i, p| {
                (p["kw"] == "rare" || (1..=3).contains(&i))
                    && p["n"].as_u64().is_some_and(|n| n < 3000)
            }),
        ),
    ];
    let check = |stage: &str, payloads: &[Map<String, Value>]| -> Result<()> {
        for (filter, rule) in &cases {
            let want: BTreeSet<u64> = (0..POINTS)
                .filter(|&i| rule(i, &Value::Object(payloads[i as usize].clone())))
                .collect();
            ensure!(
                !want.is_empty() && want.len() < 100,
                "{filter}: {} points pass",
                want.len()
            );
            for exact in [false, true] {
                let mut request = SearchRequest::new(vec![0.1; DIM], 100);
                request.hnsw_ef = Some(32);
                request.exact = exact;
                request.filter = Some(filter.clone());
                let got: BTreeSet<u64> = client
                    .search(name, &request)?
                    .iter()
                    .map(|h| num(&h.id))
                    .collect();
                ensure!(
                    got == want,
                    "{stage}, exact {exact}: {filter} returned {} points, {} pass; missing {:?}, \
                     extra {:?}",
                    got.len(),
                    want.len(),
                    want.difference(&got).take(5).collect::<Vec<_>>(),
                    got.difference(&want).take(5).collect::<Vec<_>>()
                );
            }
        }
        Ok(())
    };
    check("indexes declared", &payloads)?;

    // Full text: substring semantics without a `text` index, tokens with one (Qdrant's).
    let text_search = |m: Value| -> Result<BTreeSet<u64>> {
        let mut request = SearchRequest::new(vec![0.1; DIM], 100);
        request.filter = Some(json!({"must": [
            {"key": "title", "match": m},
            {"key": "n", "range": {"lt": 40}}
        ]}));
        Ok(client
            .search(name, &request)?
            .iter()
            .map(|h| num(&h.id))
            .collect())
    };
    let with =
        |rem: &[u64]| -> BTreeSet<u64> { (0..40).filter(|i| rem.contains(&(i % 4))).collect() };
    ensure!(
        text_search(json!({"text": "quick fox"}))?.is_empty(),
        "substring before the index"
    );
    let _: Value = client.call(
        Method::Put,
        &format!("/collections/{name}/index?wait=true"),
        Some(&json!({"field_name": "title",
                     "field_schema": {"type": "text", "tokenizer": "word", "phrase_matching": true}})),
    )?;
    ensure!(
        text_search(json!({"text": "quick fox"}))? == with(&[0, 1]),
        "text with the index"
    );
    ensure!(
        text_search(json!({"text_any": "dog foxed"}))? == with(&[2, 3]),
        "text_any"
    );
    ensure!(
        text_search(json!({"phrase": "QUICK brown"}))? == with(&[0]),
        "phrase"
    );

    // Edits after the indexes were built: points that start to match are found, points that
    // stop matching are not returned.
    let newly_rare: Vec<u64> = (0..30).map(|k| 17 + k * 191).collect();
    let _: Value = client.call(
        Method::Post,
        &format!("/collections/{name}/points/payload?wait=true"),
        Some(&json!({"payload": {"kw": "rare", "n": 1001}, "points": newly_rare})),
    )?;
    for &i in &newly_rare {
        payloads[i as usize].insert("kw".into(), json!("rare"));
        payloads[i as usize].insert("n".into(), json!(1001));
    }
    let no_longer: Vec<u64> = (0..POINTS).filter(|i| i % 97 == 5).take(10).collect();
    let _: Value = client.call(
        Method::Put,
        &format!("/collections/{name}/points/payload?wait=true"),
        Some(&json!({"payload": {"kw": "gone"}, "points": no_longer})),
    )?;
    for &i in &no_longer {
        payloads[i as usize] = json!({"kw": "gone"})
            .as_object()
            .cloned()
            .unwrap_or_default();
    }
    check("after payload edits", &payloads)?;

    let _: Value = client.call(
        Method::Delete,
        &format!("/collections/{name}/index/kw?wait=true"),
        None,
    )?;
    check("after dropping the kw index", &payloads)?;
    let _: Value = client.call(
        Method::Put,
        &format!("/collections/{name}/index?wait=true"),
        Some(&json!({"field_name": "kw", "field_schema": "keyword"})),
    )?;

    node.restart()?;
    node.wait_ready(Instant::now() + Duration::from_secs(60))?;
    check("after a restart", &payloads)?;
    let info: Value = client.call(Method::Get, &format!("/collections/{name}"), None)?;
    ensure!(
        info["payload_schema"]["kw"]["data_type"] == "keyword"
            && info["payload_schema"]["n"]["points"] == json!(POINTS - 10),
        "payload_schema after the restart: {}",
        info["payload_schema"]
    );
    Ok(())
}
