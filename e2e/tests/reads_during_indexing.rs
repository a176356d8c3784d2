//! Reads through the REST API stay exact while the optimizer seals, indexes and merges
//! segments underneath them: every live point is seen exactly once by scroll, count and
//! exhaustive search, and approximate search never returns a deleted or duplicated point or a
//! wrong score.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::Result;
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::{Value, json};
use shoal_e2e::{Method, NodeOptions, NodeProcess, PointId, PointStruct, ScoredPoint};

const DIM: usize = 32;
const POINTS: u64 = 20_000;

fn squared_l2(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

fn num(id: &PointId) -> u64 {
    match id {
        PointId::Num(n) => *n,
        PointId::Uuid(u) => panic!("unexpected uuid {u}"),
    }
}

#[test]
fn reads_are_exact_while_the_optimizer_indexes() -> Result<()> {
    let node = NodeProcess::start_ready(NodeOptions::default(), Duration::from_secs(30))?;
    let client = node.client();
    let name = "indexing";
    // 64 KB per segment: 512 points of 32 floats, so ~40 segments to index and merge.
    let _: Value = client.call(
        Method::Put,
        &format!("/collections/{name}"),
        Some(&json!({
            "vectors": {"size": DIM, "distance": "Euclid"},
            "hnsw_config": {"m": 16, "ef_construct": 64},
            "optimizers_config": {"indexing_threshold": 64, "default_segment_number": 2},
        })),
    )?;
    let mut rng = StdRng::seed_from_u64(11);
    let vectors: Vec<Vec<f32>> = (0..POINTS)
        .map(|_| (0..DIM).map(|_| rng.random_range(-1.0..1.0)).collect())
        .collect();
    for chunk in (0..POINTS).collect::<Vec<_>>().chunks(1000) {
        let points: Vec<PointStruct> = chunk
            .iter()
            .map(|&i| PointStruct {
                id: PointId::Num(i),
                vector: vectors[i as usize].clone(),
                payload: Some(json!({"i": i}).as_object().cloned().unwrap_or_default()),
            })
            .collect();
        client.upsert(name, &points, true)?;
    }
    let deleted: Vec<u64> = (0..POINTS).filter(|i| i % 7 == 3).collect();
    let _: Value = client.call(
        Method::Post,
        &format!("/collections/{name}/points/delete?wait=true"),
        Some(&json!({ "points": deleted })),
    )?;
    let live: BTreeSet<u64> = (0..POINTS).filter(|i| i % 7 != 3).collect();
    let query: Vec<f32> = (0..DIM).map(|i| (i as f32 / DIM as f32) - 0.5).collect();
    let mut truth: Vec<(f32, u64)> = live
        .iter()
        .map(|&i| (squared_l2(&query, &vectors[i as usize]), i))
        .collect();
    truth.sort_by(|a, b| a.0.total_cmp(&b.0));
    let true_top: Vec<u64> = truth.iter().take(10).map(|t| t.1).collect();

    let deadline = Instant::now() + Duration::from_secs(180);
    let (mut rounds, mut rounds_while_busy) = (0, 0);
    loop {
        let status = client.collection_info(name)?.status;
        // Scroll: every live point exactly once, in id order.
        let ids: Vec<u64> = client
            .scroll_all(name, 4096, 100, false, false)?
            .iter()
            .map(|r| num(&r.id))
            .collect();
        assert_eq!(
            ids.len(),
            live.len(),
            "scroll returned {} points, expected {}",
            ids.len(),
            live.len()
        );
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "scroll is in id order without duplicates"
        );
        assert_eq!(ids.iter().copied().collect::<BTreeSet<_>>(), live);
        // Count.
        let count: Value = client.call(
            Method::Post,
            &format!("/collections/{name}/points/count"),
            Some(&json!({"exact": true})),
        )?;
        assert_eq!(count["count"].as_u64(), Some(live.len() as u64));
        // Exhaustive search equals brute force.
        let exact: Vec<ScoredPoint> = client.call(
            Method::Post,
            &format!("/collections/{name}/points/search"),
            Some(&json!({"vector": query, "limit": 10, "params": {"exact": true}})),
        )?;
        assert_eq!(
            exact.iter().map(|p| num(&p.id)).collect::<Vec<_>>(),
            true_top
        );
        // Approximate search: live, unique points with their true scores.
        let approx: Vec<ScoredPoint> = client.call(
            Method::Post,
            &format!("/collections/{name}/points/search"),
            Some(&json!({"vector": query, "limit": 10, "params": {"hnsw_ef": 64}})),
        )?;
        let unique: BTreeSet<u64> = approx.iter().map(|p| num(&p.id)).collect();
        assert_eq!(unique.len(), approx.len(), "duplicates in {approx:?}");
        for p in &approx {
            let id = num(&p.id);
            assert!(live.contains(&id), "search returned deleted point {id}");
            let true_score = squared_l2(&query, &vectors[id as usize]).sqrt();
            assert!(
                (p.score - true_score).abs() < 1e-3,
                "point {id}: score {} but distance {true_score}",
                p.score
            );
        }
        rounds += 1;
        if status == "green" {
            break;
        }
        rounds_while_busy += 1;
        assert!(
            Instant::now() < deadline,
            "the optimizer did not finish in time"
        );
    }
    assert!(
        rounds_while_busy > 0,
        "the checks never overlapped the optimizer; the test proved nothing"
    );
    let info = client.collection_info(name)?;
    assert!(
        info.indexed_vectors_count.unwrap_or(0) > 0,
        "{:?}",
        info.raw
    );
    eprintln!("{rounds} rounds of checks, {rounds_while_busy} while the optimizer was busy");
    Ok(())
}
