//! `shoal-bench`: upsert throughput, time to index, and search QPS / recall@k / latency per
//! `hnsw_ef` against one node, on a reproducible clustered-Gaussian dataset.
//!
//! Starts its own node on a fresh temp data dir (killed at the end, also on error) unless
//! `--url` points at a running one. Ground truth is computed locally by brute force on the
//! same generated vectors, so recall does not trust the node's own exact search (which is
//! measured separately with `--also-exact`, and should itself reach recall 1.0).
//!
//! Progress goes to stderr; the Markdown report and one JSON line go to stdout.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use serde::Serialize;
use shoal_e2e::{
    Client, ClusteredGaussian, CollectionParams, Distance, ExactIndex, LatencySummary, NodeOptions,
    NodeProcess, PointId, PointStruct, SearchRequest, proc_status_kib, recall_at_k,
};

#[derive(Debug, Parser)]
#[command(
    name = "shoal-bench",
    about = "Benchmark a shoal-node: upsert throughput, indexing time, search QPS/recall/latency"
)]
struct Args {
    /// Node binary to start (relative paths are also tried against the workspace root).
    #[arg(
        long,
        default_value = "target/release/shoal-node",
        conflicts_with = "url"
    )]
    node_bin: PathBuf,
    /// Use an already running node instead of starting one, e.g. http://127.0.0.1:6333.
    #[arg(long)]
    url: Option<String>,
    /// PID of the node behind --url, to report its peak RSS.
    #[arg(long, requires = "url")]
    node_pid: Option<u32>,
    #[arg(long)]
    api_key: Option<String>,
    #[arg(long, default_value = "shoal-bench")]
    collection: String,
    /// With --url: delete the collection first if it exists (otherwise that is an error).
    #[arg(long)]
    recreate: bool,
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
    /// Cosine, Dot, Euclid or Manhattan.
    #[arg(long, default_value = "Cosine")]
    distance: Distance,
    #[arg(long, default_value_t = 1000)]
    queries: usize,
    /// Points per upsert request.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// hnsw_ef values to measure, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "32,64,128,256,512")]
    ef: Vec<usize>,
    /// k of recall@k (the search limit).
    #[arg(long, default_value_t = 10)]
    k: usize,
    #[arg(long, default_value_t = 16)]
    m: usize,
    #[arg(long, default_value_t = 100)]
    ef_construct: usize,
    /// Also measure exact (brute-force) search on the node.
    #[arg(long)]
    also_exact: bool,
    /// Unmeasured searches before each measured series.
    #[arg(long, default_value_t = 20)]
    warmup: usize,
    /// Give up waiting for status green after this many seconds (then measure anyway).
    #[arg(long, default_value_t = 600)]
    index_timeout_secs: u64,
    /// Per-request timeout in seconds.
    #[arg(long, default_value_t = 120)]
    request_timeout_secs: u64,
    /// Seconds to wait for the started node's /readyz.
    #[arg(long, default_value_t = 60)]
    ready_timeout_secs: u64,
    /// Also upload the same points over Qdrant's client gRPC API (the official Rust client)
    /// into a second collection and search it over gRPC, next to the REST figures.
    #[arg(long)]
    grpc: bool,
    /// gRPC address of the node behind --url (default: its host on port 6334).
    #[arg(long, requires = "url")]
    grpc_url: Option<String>,
}

#[derive(Debug, Serialize)]
struct SearchRow {
    mode: String,
    ef: Option<usize>,
    qps: f64,
    recall: f64,
    latency: LatencySummary,
}

#[derive(Debug, Serialize)]
struct IndexWait {
    seconds: f64,
    timed_out: bool,
    final_status: String,
    points_count: Option<u64>,
    indexed_vectors_count: Option<u64>,
}

#[derive(Debug, Serialize)]
struct Report {
    points: usize,
    dim: usize,
    centres: usize,
    sigma: f32,
    seed: u64,
    distance: Distance,
    queries: usize,
    batch: usize,
    k: usize,
    m: usize,
    ef_construct: usize,
    upsert_seconds: f64,
    upsert_points_per_sec: f64,
    upsert_batch_latency: Option<LatencySummary>,
    index: IndexWait,
    search: Vec<SearchRow>,
    grpc: Option<GrpcReport>,
    peak_rss_bytes: Option<u64>,
}

/// The same upload and searches over the client gRPC API.
#[derive(Debug, Serialize)]
struct GrpcReport {
    upsert_seconds: f64,
    upsert_points_per_sec: f64,
    upsert_batch_latency: Option<LatencySummary>,
    index: IndexWait,
    search: Vec<SearchRow>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shoal-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn validate(args: &Args) -> Result<()> {
    ensure!(
        args.points > 0 && args.dim > 0 && args.queries > 0,
        "--points, --dim and --queries must be positive"
    );
    ensure!(
        args.batch > 0 && args.k > 0 && args.centres > 0,
        "--batch, --k and --centres must be positive"
    );
    ensure!(!args.ef.is_empty(), "--ef needs at least one value");
    Ok(())
}

fn run(args: &Args) -> Result<()> {
    validate(args)?;
    let request_timeout = Duration::from_secs(args.request_timeout_secs);

    // Data and ground truth first: brute force uses every core and must not compete with
    // the node while it is being measured.
    let t = Instant::now();
    let dist = ClusteredGaussian::new(args.dim, args.centres, args.sigma, args.seed)?;
    let points = dist.sample(args.points, args.seed.wrapping_add(1));
    let queries = dist.sample(args.queries, args.seed.wrapping_add(2));
    eprintln!(
        "generated {} points and {} queries (dim {}) in {:.1?}",
        points.len(),
        queries.len(),
        args.dim,
        t.elapsed()
    );
    let t = Instant::now();
    let truth: Vec<Vec<u64>> = ExactIndex::new(&points, args.distance)
        .search_batch(&queries, args.k, 0)
        .into_iter()
        .map(|hits| hits.into_iter().map(|h| h.index as u64).collect())
        .collect();
    eprintln!("exact ground truth (k={}) in {:.1?}", args.k, t.elapsed());

    let node = match &args.url {
        Some(_) => None,
        None => {
            eprintln!("starting {}", args.node_bin.display());
            let node = NodeProcess::start_ready(
                NodeOptions {
                    binary: Some(args.node_bin.clone()),
                    api_key: args.api_key.clone(),
                    client_timeout: Some(request_timeout),
                    ..Default::default()
                },
                Duration::from_secs(args.ready_timeout_secs),
            )?;
            eprintln!(
                "node pid {:?} at {} (data {})",
                node.pid(),
                node.url(),
                node.data_dir().display()
            );
            Some(node)
        }
    };
    let client = match (&node, &args.url) {
        (Some(n), _) => n.client(),
        (None, Some(url)) => {
            let c = Client::with_timeout(url.clone(), request_timeout);
            match &args.api_key {
                Some(k) => c.with_api_key(k.clone()),
                None => c,
            }
        }
        (None, None) => unreachable!("a node is started whenever --url is absent"),
    };
    let pid = node.as_ref().and_then(NodeProcess::pid).or(args.node_pid);

    let grpc_url = match (&node, &args.grpc_url, &args.url) {
        (Some(n), _, _) => n.grpc_url(),
        (None, Some(g), _) => g.clone(),
        (None, None, Some(url)) => grpc_url_of(url),
        (None, None, None) => unreachable!("a node is started whenever --url is absent"),
    };
    let result = bench(args, &client, &grpc_url, &points, &queries, &truth, pid);
    if let (Err(_), Some(n)) = (&result, &node) {
        eprintln!(
            "---- node log tail ({}) ----\n{}",
            n.log_path().display(),
            n.log_tail(40)
        );
    }
    // Dropping `node` kills it and removes its temp data dir.
    drop(node);
    let report = result?;
    print_markdown(&report);
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// `http://host:6333` → `http://host:6334` (Qdrant's default ports).
fn grpc_url_of(rest_url: &str) -> String {
    let base = rest_url.trim_end_matches('/');
    match base.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => format!("{host}:6334"),
        _ => format!("{base}:6334"),
    }
}

fn bench(
    args: &Args,
    client: &Client,
    grpc_url: &str,
    points: &shoal_e2e::Vectors,
    queries: &shoal_e2e::Vectors,
    truth: &[Vec<u64>],
    pid: Option<u32>,
) -> Result<Report> {
    let name = args.collection.as_str();
    if client.collection_exists(name)? {
        if args.url.is_some() && !args.recreate {
            bail!(
                "collection `{name}` already exists on {}; pass --recreate to replace it",
                client.base_url()
            );
        }
        client.delete_collection(name)?;
    }
    client.create_collection(
        name,
        &CollectionParams::new(args.dim, args.distance).hnsw(args.m, args.ef_construct),
    )?;

    // Upsert.
    let t = Instant::now();
    let mut batch_latencies = Vec::new();
    let n_batches = points.len().div_ceil(args.batch);
    for (b, first) in (0..points.len()).step_by(args.batch).enumerate() {
        let last = (first + args.batch).min(points.len());
        let batch: Vec<PointStruct> = (first..last)
            .map(|i| PointStruct {
                id: PointId::Num(i as u64),
                vector: points.get(i).to_vec(),
                payload: None,
            })
            .collect();
        let sent = Instant::now();
        let ack = client
            .upsert(name, &batch, true)
            .with_context(|| format!("upserting batch {b} (points {first}..{last})"))?;
        batch_latencies.push(sent.elapsed());
        ensure!(
            ack.is_completed(),
            "wait=true upsert of batch {b} answered {ack:?}"
        );
        if (b + 1) % 20 == 0 || b + 1 == n_batches {
            eprintln!("upserted {last}/{} points", points.len());
        }
    }
    let upsert_seconds = t.elapsed().as_secs_f64();
    let upsert_pps = points.len() as f64 / upsert_seconds;
    eprintln!("upsert: {upsert_pps:.0} points/s over {upsert_seconds:.2} s");

    let index = wait_indexed(client, name, points.len() as u64, args)?;

    // Search.
    let mut search = Vec::new();
    for &ef in &args.ef {
        let row = measure_search(client, name, queries, truth, args, Some(ef))?;
        eprintln!(
            "ef {ef}: {:.0} QPS, recall@{} {:.4}, p50 {:.2} ms, p99 {:.2} ms",
            row.qps, args.k, row.recall, row.latency.p50_ms, row.latency.p99_ms
        );
        search.push(row);
    }
    if args.also_exact {
        let row = measure_search(client, name, queries, truth, args, None)?;
        eprintln!(
            "exact: {:.0} QPS, recall@{} {:.4}, p50 {:.2} ms, p99 {:.2} ms",
            row.qps, args.k, row.recall, row.latency.p50_ms, row.latency.p99_ms
        );
        if row.recall < 0.99 {
            eprintln!(
                "WARNING: exact search on the node disagrees with local brute force \
                 (recall {:.4}); likely a node bug in exact search or scoring",
                row.recall
            );
        }
        search.push(row);
    }

    let grpc = if args.grpc {
        Some(bench_grpc(args, client, grpc_url, points, queries, truth)?)
    } else {
        None
    };

    let peak_rss_bytes = match pid {
        Some(pid) => match proc_status_kib(pid, "VmHWM") {
            Ok(kib) => Some(kib * 1024),
            Err(e) => {
                eprintln!("cannot read peak RSS of pid {pid}: {e:#}");
                None
            }
        },
        None => None,
    };

    Ok(Report {
        points: args.points,
        dim: args.dim,
        centres: args.centres,
        sigma: args.sigma,
        seed: args.seed,
        distance: args.distance,
        queries: args.queries,
        batch: args.batch,
        k: args.k,
        m: args.m,
        ef_construct: args.ef_construct,
        upsert_seconds,
        upsert_points_per_sec: upsert_pps,
        upsert_batch_latency: LatencySummary::from_durations(&batch_latencies),
        index,
        search,
        grpc,
        peak_rss_bytes,
    })
}

/// Upload and search over gRPC into `<collection>-grpc`, created over REST with the same
/// parameters.
fn bench_grpc(
    args: &Args,
    client: &Client,
    grpc_url: &str,
    points: &shoal_e2e::Vectors,
    queries: &shoal_e2e::Vectors,
    truth: &[Vec<u64>],
) -> Result<GrpcReport> {
    use qdrant_client::qdrant as q;
    let name = format!("{}-grpc", args.collection);
    if client.collection_exists(&name)? {
        client.delete_collection(&name)?;
    }
    client.create_collection(
        &name,
        &CollectionParams::new(args.dim, args.distance).hnsw(args.m, args.ef_construct),
    )?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let grpc = qdrant_client::Qdrant::from_url(grpc_url)
        .api_key(args.api_key.clone())
        .timeout(Duration::from_secs(args.request_timeout_secs))
        .skip_compatibility_check()
        .build()?;
    let t = Instant::now();
    let mut batch_latencies = Vec::new();
    for first in (0..points.len()).step_by(args.batch) {
        let last = (first + args.batch).min(points.len());
        let request = q::UpsertPoints {
            collection_name: name.clone(),
            wait: Some(true),
            points: (first..last)
                .map(|i| q::PointStruct {
                    id: Some(q::PointId {
                        point_id_options: Some(q::point_id::PointIdOptions::Num(i as u64)),
                    }),
                    payload: Default::default(),
                    vectors: Some(q::Vectors {
                        vectors_options: Some(q::vectors::VectorsOptions::Vector(q::Vector {
                            vector: Some(q::vector::Vector::Dense(q::DenseVector {
                                data: points.get(i).to_vec(),
                            })),
                            ..Default::default()
                        })),
                    }),
                })
                .collect(),
            ..Default::default()
        };
        let sent = Instant::now();
        rt.block_on(grpc.upsert_points(request))
            .with_context(|| format!("gRPC upsert of points {first}..{last}"))?;
        batch_latencies.push(sent.elapsed());
    }
    let upsert_seconds = t.elapsed().as_secs_f64();
    let upsert_pps = points.len() as f64 / upsert_seconds;
    eprintln!("gRPC upsert: {upsert_pps:.0} points/s over {upsert_seconds:.2} s");
    let index = wait_indexed(client, &name, points.len() as u64, args)?;
    let mut search = Vec::new();
    for &ef in &args.ef {
        let request = |i: usize| q::SearchPoints {
            collection_name: name.clone(),
            vector: queries.get(i).to_vec(),
            limit: args.k as u64,
            params: Some(q::SearchParams {
                hnsw_ef: Some(ef as u64),
                ..Default::default()
            }),
            ..Default::default()
        };
        for i in 0..args.warmup.min(queries.len()) {
            rt.block_on(grpc.search_points(request(i)))?;
        }
        let mut latencies = Vec::with_capacity(queries.len());
        let mut recall_sum = 0.0;
        let started = Instant::now();
        for (i, want) in truth.iter().enumerate() {
            let sent = Instant::now();
            let hits = rt
                .block_on(grpc.search_points(request(i)))
                .with_context(|| format!("gRPC search {i} (ef {ef})"))?;
            latencies.push(sent.elapsed());
            let got: Vec<u64> = hits
                .result
                .iter()
                .filter_map(|h| match h.id.as_ref()?.point_id_options {
                    Some(q::point_id::PointIdOptions::Num(n)) => Some(n),
                    _ => None,
                })
                .collect();
            recall_sum += recall_at_k(want, &got, args.k);
        }
        let wall = started.elapsed().as_secs_f64();
        let row = SearchRow {
            mode: "hnsw (gRPC)".to_owned(),
            ef: Some(ef),
            qps: queries.len() as f64 / wall,
            recall: recall_sum / queries.len() as f64,
            latency: LatencySummary::from_durations(&latencies)
                .context("no queries were measured")?,
        };
        eprintln!(
            "gRPC ef {ef}: {:.0} QPS, recall@{} {:.4}, p50 {:.2} ms, p99 {:.2} ms",
            row.qps, args.k, row.recall, row.latency.p50_ms, row.latency.p99_ms
        );
        search.push(row);
    }
    Ok(GrpcReport {
        upsert_seconds,
        upsert_points_per_sec: upsert_pps,
        upsert_batch_latency: LatencySummary::from_durations(&batch_latencies),
        index,
        search,
    })
}

/// Polls the collection until it is green with every point indexed. A node may legitimately
/// leave small collections unindexed (green, indexed < points); green with an unchanged
/// indexed count for `SETTLE` also counts as done.
fn wait_indexed(
    client: &Client,
    name: &str,
    expected_points: u64,
    args: &Args,
) -> Result<IndexWait> {
    const POLL: Duration = Duration::from_millis(200);
    const SETTLE: Duration = Duration::from_secs(3);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.index_timeout_secs);
    let mut stable_since: Option<(Instant, Option<u64>)> = None;
    let mut last_log = Instant::now();
    loop {
        let info = client.collection_info(name)?;
        let now = Instant::now();
        let fully = info.status == "green"
            && info
                .indexed_vectors_count
                .is_some_and(|n| n >= expected_points);
        let settled = match (info.status == "green", stable_since) {
            (true, Some((since, count))) if count == info.indexed_vectors_count => {
                now - since >= SETTLE
            }
            (true, _) => {
                stable_since = Some((now, info.indexed_vectors_count));
                false
            }
            (false, _) => {
                stable_since = None;
                false
            }
        };
        let timed_out = now >= deadline;
        if fully || settled || timed_out {
            let seconds = if fully || timed_out {
                (now - started).as_secs_f64()
            } else {
                // Settled: the work ended when the count stopped changing.
                stable_since
                    .map_or(now, |(since, _)| since)
                    .duration_since(started)
                    .as_secs_f64()
            };
            if info.points_count.is_some_and(|n| n != expected_points) {
                eprintln!(
                    "WARNING: points_count is {:?}, upserted {expected_points}",
                    info.points_count
                );
            }
            if timed_out && !fully {
                eprintln!(
                    "WARNING: collection not indexed within {} s (status {}, indexed {:?}); \
                     measuring anyway",
                    args.index_timeout_secs, info.status, info.indexed_vectors_count
                );
            }
            eprintln!(
                "index: status {} after {seconds:.2} s, indexed {:?} of {:?} points",
                info.status, info.indexed_vectors_count, info.points_count
            );
            return Ok(IndexWait {
                seconds,
                timed_out: timed_out && !fully,
                final_status: info.status,
                points_count: info.points_count,
                indexed_vectors_count: info.indexed_vectors_count,
            });
        }
        if last_log.elapsed() > Duration::from_secs(5) {
            eprintln!(
                "waiting for index: status {}, indexed {:?} of {:?}",
                info.status, info.indexed_vectors_count, info.points_count
            );
            last_log = Instant::now();
        }
        std::thread::sleep(POLL.min(deadline.saturating_duration_since(now)));
    }
}

/// Sequential single-client searches: `ef = None` means exact search.
fn measure_search(
    client: &Client,
    name: &str,
    queries: &shoal_e2e::Vectors,
    truth: &[Vec<u64>],
    args: &Args,
    ef: Option<usize>,
) -> Result<SearchRow> {
    let request = |i: usize| {
        let mut r = SearchRequest::new(queries.get(i).to_vec(), args.k);
        r.hnsw_ef = ef;
        r.exact = ef.is_none();
        r
    };
    for i in 0..args.warmup.min(queries.len()) {
        client.search(name, &request(i))?;
    }
    let mut latencies = Vec::with_capacity(queries.len());
    let mut recall_sum = 0.0;
    let started = Instant::now();
    for (i, want) in truth.iter().enumerate() {
        let req = request(i);
        let sent = Instant::now();
        let hits = client
            .search(name, &req)
            .with_context(|| format!("search {i} (ef {ef:?})"))?;
        latencies.push(sent.elapsed());
        let got: Vec<u64> = hits.iter().filter_map(|h| h.id.as_num()).collect();
        recall_sum += recall_at_k(want, &got, args.k);
    }
    let wall = started.elapsed().as_secs_f64();
    Ok(SearchRow {
        mode: if ef.is_some() { "hnsw" } else { "exact" }.to_owned(),
        ef,
        qps: queries.len() as f64 / wall,
        recall: recall_sum / queries.len() as f64,
        latency: LatencySummary::from_durations(&latencies).context("no queries were measured")?,
    })
}

fn print_markdown(r: &Report) {
    println!(
        "## shoal-bench: {} x {} {}, {} centres, sigma {}, seed {}; m {}, ef_construct {}\n",
        r.points, r.dim, r.distance, r.centres, r.sigma, r.seed, r.m, r.ef_construct
    );
    println!("| metric | value |\n| --- | --- |");
    println!(
        "| upsert throughput | {:.0} points/s (batch {}, wait=true, {:.2} s) |",
        r.upsert_points_per_sec, r.batch, r.upsert_seconds
    );
    if let Some(l) = &r.upsert_batch_latency {
        println!(
            "| upsert batch latency | p50 {:.1} ms, p99 {:.1} ms |",
            l.p50_ms, l.p99_ms
        );
    }
    println!(
        "| time until indexed | {:.2} s{} (status {}, indexed {} of {}) |",
        r.index.seconds,
        if r.index.timed_out {
            " (TIMED OUT)"
        } else {
            ""
        },
        r.index.final_status,
        r.index
            .indexed_vectors_count
            .map_or("?".into(), |n| n.to_string()),
        r.index.points_count.map_or("?".into(), |n| n.to_string()),
    );
    println!(
        "| peak RSS (VmHWM) | {} |\n",
        r.peak_rss_bytes.map_or("n/a".into(), |b| format!(
            "{:.1} MiB",
            b as f64 / (1 << 20) as f64
        ))
    );
    println!(
        "| search ({} queries, 1 client) | QPS | recall@{} | p50 ms | p99 ms |\n| --- | ---: | ---: | ---: | ---: |",
        r.queries, r.k
    );
    for s in &r.search {
        let label = match s.ef {
            Some(ef) => format!("hnsw ef={ef}"),
            None => "exact".to_owned(),
        };
        println!(
            "| {label} | {:.0} | {:.4} | {:.2} | {:.2} |",
            s.qps, s.recall, s.latency.p50_ms, s.latency.p99_ms
        );
    }
    println!();
    if let Some(g) = &r.grpc {
        println!("| over gRPC | value |\n| --- | --- |");
        println!(
            "| upsert throughput | {:.0} points/s (batch {}, wait=true, {:.2} s; REST: {:.0} points/s) |",
            g.upsert_points_per_sec, r.batch, g.upsert_seconds, r.upsert_points_per_sec
        );
        if let Some(l) = &g.upsert_batch_latency {
            println!(
                "| upsert batch latency | p50 {:.1} ms, p99 {:.1} ms |",
                l.p50_ms, l.p99_ms
            );
        }
        println!();
        println!(
            "| search over gRPC ({} queries, 1 client) | QPS | REST QPS | recall@{} | p50 ms | p99 ms |\n| --- | ---: | ---: | ---: | ---: | ---: |",
            r.queries, r.k
        );
        for s in &g.search {
            let rest_qps = r
                .search
                .iter()
                .find(|x| x.ef == s.ef)
                .map_or("?".to_owned(), |x| format!("{:.0}", x.qps));
            println!(
                "| hnsw ef={} | {:.0} | {rest_qps} | {:.4} | {:.2} | {:.2} |",
                s.ef.unwrap_or(0),
                s.qps,
                s.recall,
                s.latency.p50_ms,
                s.latency.p99_ms
            );
        }
        println!();
    }
}
