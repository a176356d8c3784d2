//! `shoal-bench`: upsert throughput, time to index, and search QPS / recall@k / latency per
//! `hnsw_ef` against one node, on a reproducible clustered-Gaussian dataset.
//!
//! Starts its own node on a fresh temp data dir (killed at the end, also on error) unless
//! `--url` points at a running one. Ground truth is computed locally by brute force on the
//! same generated vectors, so recall does not trust the node's own exact search (which is
//! measured separately with `--also-exact`, and should itself reach recall 1.0).
//!
//! By default the collection has one unnamed dense vector, searched through
//! `points/search`. Three other workloads go through the query API (`points/query`):
//!
//! - `--named`: two named dense vectors, `image` (`--dim`) and `text` (`--text-dim`), each
//!   searched in turn with `using`; one table row per vector and `hnsw_ef`.
//! - `--sparse`: one sparse vector `sparse` (optionally `--idf`), Zipf-distributed terms over
//!   `--vocab`; searched once (sparse search has no `hnsw_ef`, and is exact in Qdrant). A
//!   returned point counts as a hit when its (locally computed) score ties the k-th true one,
//!   since many points can share a score.
//! - `--multivector`: one dense multivector (`max_sim`) of `--multi-count` sub-vectors of
//!   `--dim` per point, queried with `--query-multi-count` sub-vectors.
//!
//! Progress goes to stderr; the Markdown report and one JSON line go to stdout.

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use shoal_e2e::{
    Client, ClusteredGaussian, Distance, ExactIndex, Flavour, LatencySummary, Method,
    MultiExactIndex, NodeOptions, NodeProcess, ScoredPoint, SearchRequest, SparseExactIndex,
    SparseVector, UpdateResult, Vectors, ZipfSparse, proc_status_kib, recall_at_k,
};

/// The Zipf exponent of `--sparse` term frequencies (1: word frequencies in natural text).
const ZIPF_EXPONENT: f64 = 1.0;
/// A sparse hit counts when its score is at least the k-th true score less this fraction.
const SPARSE_SCORE_TOLERANCE: f32 = 1e-4;

#[derive(Debug, Clone, Parser)]
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
    /// Start this Qdrant binary instead of a shoal-node, on its own free ports and temporary
    /// data dir, for side-by-side figures (`../shared/anchors/`; never shipped).
    #[arg(long, conflicts_with = "url")]
    qdrant_bin: Option<PathBuf>,
    /// Run the whole benchmark twice in this one run, first on a shoal-node and then on this
    /// Qdrant binary (same dataset, queries, client and parameters), and print every figure
    /// side by side with its ratio Shoal / Qdrant.
    #[arg(long, conflicts_with_all = ["url", "qdrant_bin"])]
    against: Option<PathBuf>,
    /// Concurrent search connections to measure, comma separated: each is its own HTTP
    /// connection on its own thread, the queries dealt out round-robin.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    connections: Vec<usize>,
    /// Also measure filtered searches: every point gets a payload `{"kw": .., "num": ..}`,
    /// and searches whose filter (a keyword match, an integer range) passes 50%, 5% and 0.1%
    /// of the points run at `--filter-ef`, first without payload indexes, then with a
    /// `keyword` index on `kw` and an `integer` index on `num`. Recall is against the exact
    /// top-k among the points that pass. Each filter also runs as an exact `points/count` and
    /// as the first page (limit 10) of a `points/scroll` (over the first connection count, as
    /// many as `--queries`), their "recall" the share of right answers.
    #[arg(long, conflicts_with_all = ["grpc", "named", "sparse", "multivector", "search_only"])]
    filtered: bool,
    /// `hnsw_ef` values of the filtered searches, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "64")]
    filter_ef: Vec<usize>,
    /// With --against: the recall@k that "equal recall" rows ask of each engine (the lowest
    /// measured `hnsw_ef` reaching it).
    #[arg(long, default_value_t = 0.95)]
    recall_target: f64,
    /// After the searches, stop the node (SIGTERM), start it again on the same data and
    /// measure how soon it serves every point at full speed (needs a node the bench starts;
    /// with --against, each engine in turn).
    #[arg(long, conflicts_with = "url")]
    restart: bool,
    /// `on_disk: true` for every dense vector of the collection.
    #[arg(long)]
    on_disk: bool,
    /// `on_disk_payload: false` for the collection (both engines): payloads held in memory
    /// instead of read from storage (the default of both is `true`).
    #[arg(long)]
    payload_in_memory: bool,
    /// `quantization_config: {"scalar": {"type": "int8", "quantile": Q}}` for the collection
    /// (both engines); searches then use Qdrant's defaults (rescoring, no oversampling).
    #[arg(long)]
    scalar_quantile: Option<f64>,
    /// With --scalar-quantile: `always_ram: true` (codes on the heap even with --on-disk).
    #[arg(long, requires = "scalar_quantile")]
    always_ram: bool,
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
    /// With --url: search a collection an earlier run of the same parameters uploaded,
    /// without creating or uploading anything (to compare node builds on identical segments).
    #[arg(long, requires = "url", conflicts_with_all = ["recreate", "grpc"])]
    search_only: bool,
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
    /// `optimizers_config.indexing_threshold` of the collection, in KB (default: the node's),
    /// e.g. to have a small dataset indexed at all.
    #[arg(long)]
    indexing_threshold: Option<usize>,
    /// `hnsw_config.full_scan_threshold` in KB (default: the node's): segments whose vectors
    /// take less than this are scanned rather than searched through HNSW, so a small dataset
    /// only exercises the graphs with a small value here.
    #[arg(long)]
    full_scan_threshold: Option<usize>,
    /// Two named dense vectors, `image` (--dim) and `text` (--text-dim), searched in turn.
    #[arg(long, group = "workload")]
    named: bool,
    /// Dimension of the `text` vector with --named.
    #[arg(long, default_value_t = 64)]
    text_dim: usize,
    /// One sparse vector `sparse` with Zipf-distributed terms (dot product).
    #[arg(long, group = "workload")]
    sparse: bool,
    /// With --sparse: `modifier: idf` (Qdrant's IDF weighs the query's values).
    #[arg(long, requires = "sparse")]
    idf: bool,
    /// With --sparse: the vocabulary (term ids 0..vocab).
    #[arg(long, default_value_t = 30_000)]
    vocab: usize,
    /// With --sparse: mean non-zeros per point (each point has 0.5x to 1.5x this many).
    #[arg(long, default_value_t = 40)]
    nnz: usize,
    /// With --sparse: mean non-zeros per query.
    #[arg(long, default_value_t = 10)]
    query_nnz: usize,
    /// One dense multivector (MaxSim) of --multi-count sub-vectors of --dim per point.
    #[arg(long, group = "workload")]
    multivector: bool,
    /// With --multivector: sub-vectors per point.
    #[arg(long, default_value_t = 8)]
    multi_count: usize,
    /// With --multivector: sub-vectors per query.
    #[arg(long, default_value_t = 4)]
    query_multi_count: usize,
}

/// What the collection holds, with the parameters that shape it beyond the dense ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
enum Mode {
    /// One unnamed dense vector, searched through `points/search`.
    Dense,
    Named {
        text_dim: usize,
    },
    Sparse {
        vocab: usize,
        nnz: usize,
        query_nnz: usize,
        idf: bool,
    },
    Multivector {
        multi_count: usize,
        query_multi_count: usize,
    },
}

impl Mode {
    fn of(args: &Args) -> Self {
        if args.named {
            Mode::Named {
                text_dim: args.text_dim,
            }
        } else if args.sparse {
            Mode::Sparse {
                vocab: args.vocab,
                nnz: args.nnz,
                query_nnz: args.query_nnz,
                idf: args.idf,
            }
        } else if args.multivector {
            Mode::Multivector {
                multi_count: args.multi_count,
                query_multi_count: args.query_multi_count,
            }
        } else {
            Mode::Dense
        }
    }

    fn is_dense(&self) -> bool {
        *self == Mode::Dense
    }
}

/// The generated points and queries of one vector of the collection.
enum FieldData {
    Dense {
        points: Vectors,
        queries: Vectors,
        distance: Distance,
    },
    /// Point `i` is rows `i * per_point ..`, query `j` rows `j * per_query ..`.
    Multi {
        points: Vectors,
        per_point: usize,
        queries: Vectors,
        per_query: usize,
        distance: Distance,
    },
    /// `exact` holds the points, and also judges answers: it scores any point for a query
    /// as the node should.
    Sparse {
        queries: Vec<SparseVector>,
        exact: SparseExactIndex,
    },
}

impl FieldData {
    /// The vector's parameters, as they go under `vectors` or `sparse_vectors`.
    fn params_json(&self) -> Value {
        match self {
            FieldData::Dense {
                points, distance, ..
            } => json!({"size": points.dim(), "distance": distance.as_str()}),
            FieldData::Multi {
                points, distance, ..
            } => json!({
                "size": points.dim(),
                "distance": distance.as_str(),
                "multivector_config": {"comparator": "max_sim"},
            }),
            FieldData::Sparse { exact, .. } if exact.has_idf() => json!({"modifier": "idf"}),
            FieldData::Sparse { .. } => json!({}),
        }
    }

    fn is_sparse(&self) -> bool {
        matches!(self, FieldData::Sparse { .. })
    }

    fn point_json(&self, i: usize) -> Value {
        match self {
            FieldData::Dense { points, .. } => json!(points.get(i)),
            FieldData::Multi {
                points, per_point, ..
            } => json!(rows(points, *per_point, i)),
            FieldData::Sparse { exact, .. } => sparse_json(&exact.points()[i]),
        }
    }

    fn query_json(&self, i: usize) -> Value {
        match self {
            FieldData::Dense { queries, .. } => json!(queries.get(i)),
            FieldData::Multi {
                queries, per_query, ..
            } => json!(rows(queries, *per_query, i)),
            FieldData::Sparse { queries, .. } => sparse_json(&queries[i]),
        }
    }

    fn point_grpc(&self, i: usize) -> qdrant_client::qdrant::Vector {
        use qdrant_client::qdrant::Vector;
        match self {
            FieldData::Dense { points, .. } => Vector::new_dense(points.get(i).to_vec()),
            FieldData::Multi {
                points, per_point, ..
            } => Vector::new_multi(owned_rows(points, *per_point, i)),
            FieldData::Sparse { exact, .. } => {
                let point = &exact.points()[i];
                Vector::new_sparse(point.indices.clone(), point.values.clone())
            }
        }
    }

    fn query_grpc(&self, i: usize) -> qdrant_client::qdrant::VectorInput {
        use qdrant_client::qdrant::VectorInput;
        match self {
            FieldData::Dense { queries, .. } => VectorInput::new_dense(queries.get(i).to_vec()),
            FieldData::Multi {
                queries, per_query, ..
            } => VectorInput::new_multi(owned_rows(queries, *per_query, i)),
            FieldData::Sparse { queries, .. } => {
                VectorInput::new_sparse(queries[i].indices.clone(), queries[i].values.clone())
            }
        }
    }

    /// The series measured for this vector: HNSW per `hnsw_ef` for dense vectors, the
    /// inverted index once for sparse ones; then an exact scan if asked (never over gRPC).
    fn series(&self, args: &Args, with_exact: bool) -> Vec<Series> {
        let mut series = if self.is_sparse() {
            vec![Series::SparseIndex]
        } else {
            args.ef.iter().map(|&ef| Series::Hnsw(ef)).collect()
        };
        if with_exact {
            series.push(Series::Exact);
        }
        series
    }

    /// recall@k of the ids `got` for query `i` whose true top-k is `want`.
    fn recall(&self, i: usize, want: &[u64], got: &[u64], k: usize) -> f64 {
        match self {
            FieldData::Sparse { queries, exact } => tie_aware_recall(want, got, k, |id| {
                (id < exact.len() as u64).then(|| exact.score(&queries[i], id as usize))
            }),
            _ => recall_at_k(want, got, k),
        }
    }

    /// The locally computed score of point `id` for query `i` when the node's `reported`
    /// one differs from it (checked for sparse vectors only, where the node applies IDF).
    fn score_mismatch(&self, i: usize, id: u64, reported: f32) -> Option<f32> {
        match self {
            FieldData::Sparse { queries, exact } if id < exact.len() as u64 => {
                let local = exact.score(&queries[i], id as usize);
                ((reported - local).abs() > 1e-3 * local.abs().max(1e-6)).then_some(local)
            }
            _ => None,
        }
    }
}

/// The sub-vectors of multivector `i`, `per` consecutive rows of `vectors` to a multivector.
fn rows(vectors: &Vectors, per: usize, i: usize) -> Vec<&[f32]> {
    (i * per..(i + 1) * per).map(|r| vectors.get(r)).collect()
}

fn owned_rows(vectors: &Vectors, per: usize, i: usize) -> Vec<Vec<f32>> {
    rows(vectors, per, i)
        .into_iter()
        .map(<[f32]>::to_vec)
        .collect()
}

fn sparse_json(v: &SparseVector) -> Value {
    json!({"indices": v.indices, "values": v.values})
}

/// recall@k where a returned point counts when its score is at least the k-th true score
/// (less a relative tolerance): with ties at the k-th place any of the tied points is right.
/// `score` gives a point's true score, `None` for an id that is not a point of the dataset.
fn tie_aware_recall(
    want: &[u64],
    got: &[u64],
    k: usize,
    score: impl Fn(u64) -> Option<f32>,
) -> f64 {
    let want = &want[..want.len().min(k)];
    let Some(kth) = want.last().and_then(|&id| score(id)) else {
        return 1.0;
    };
    let floor = kth - SPARSE_SCORE_TOLERANCE * kth.abs();
    let hits = got
        .iter()
        .take(k)
        .collect::<HashSet<_>>()
        .into_iter()
        .filter(|&&id| score(id).is_some_and(|s| s >= floor))
        .count();
    hits.min(want.len()) as f64 / want.len() as f64
}

/// One vector of the collection, its data and the exact top-k ids of each query.
struct Field {
    /// `None` for the unnamed vector, which is then the collection's only one.
    name: Option<&'static str>,
    data: FieldData,
    truth: Vec<Vec<u64>>,
}

/// The generated dataset of one run: every vector of the collection, with ground truth.
struct Workload {
    mode: Mode,
    points: usize,
    fields: Vec<Field>,
    /// `--filtered`: each filter case with the exact top-k among the points it passes.
    filtered: Vec<(FilterCase, Vec<Vec<u64>>)>,
    seed: u64,
}

/// A number in 0..1000 drawn for point `i` (SplitMix64 of the seed, a salt and `i`): fixed
/// per seed, independent between salts.
fn draw(seed: u64, salt: u64, i: usize) -> u64 {
    let mut z = seed
        .wrapping_add(salt.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_add((i as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) % 1000
}

/// `kw` of point `i`: `p0.1` for 0.1% of the points, `p5` for 5%, `p50` for 50%, `rest`
/// for the others.
fn kw_of(seed: u64, i: usize) -> &'static str {
    match draw(seed, 1, i) {
        0 => "p0.1",
        1..=50 => "p5",
        51..=550 => "p50",
        _ => "rest",
    }
}

/// `num` of point `i`, uniform in 0..1000.
fn num_of(seed: u64, i: usize) -> u64 {
    draw(seed, 2, i)
}

/// One filtered-search case of `--filtered`.
struct FilterCase {
    label: String,
    filter: Value,
    /// Whether point `i` passes (computed from the same draws as its payload).
    passes: Box<dyn Fn(usize) -> bool + Sync>,
}

fn filter_cases(seed: u64) -> Vec<FilterCase> {
    let mut cases = Vec::new();
    for (percent, kw) in [("50%", "p50"), ("5%", "p5"), ("0.1%", "p0.1")] {
        cases.push(FilterCase {
            label: format!("keyword {percent}"),
            filter: json!({"must": [{"key": "kw", "match": {"value": kw}}]}),
            passes: Box::new(move |i| kw_of(seed, i) == kw),
        });
    }
    for (percent, below) in [("50%", 500), ("5%", 50), ("0.1%", 1)] {
        cases.push(FilterCase {
            label: format!("integer range {percent}"),
            filter: json!({"must": [{"key": "num", "range": {"lt": below}}]}),
            passes: Box::new(move |i| num_of(seed, i) < below),
        });
    }
    cases
}

impl Workload {
    /// Generates data and computes ground truth (every core; before the node is measured).
    fn generate(args: &Args) -> Result<Self> {
        let mode = Mode::of(args);
        let seed = args.seed;
        let fields = match mode {
            Mode::Dense => vec![dense_field(args, None, args.dim, seed)?],
            Mode::Named { text_dim } => vec![
                // Seeded as the default mode's vector, so `image` is the same dataset.
                dense_field(args, Some("image"), args.dim, seed)?,
                dense_field(args, Some("text"), text_dim, seed.wrapping_add(3))?,
            ],
            Mode::Sparse {
                vocab,
                nnz,
                query_nnz,
                idf,
            } => {
                let t = Instant::now();
                let terms = ZipfSparse::new(vocab, ZIPF_EXPONENT, seed)?;
                let points = terms.sample(args.points, nnz, seed.wrapping_add(1));
                let queries = terms.sample(args.queries, query_nnz, seed.wrapping_add(2));
                eprintln!(
                    "generated {} sparse points (~{nnz} terms) and {} queries (~{query_nnz}) \
                     over {vocab} terms in {:.1?}",
                    args.points,
                    queries.len(),
                    t.elapsed()
                );
                let t = Instant::now();
                let exact = SparseExactIndex::new(points, idf)?;
                let truth = ids(exact.search_batch(&queries, args.k, 0));
                eprintln!(
                    "exact sparse ground truth (k={}, idf {idf}) in {:.1?}",
                    args.k,
                    t.elapsed()
                );
                vec![Field {
                    name: Some("sparse"),
                    data: FieldData::Sparse { queries, exact },
                    truth,
                }]
            }
            Mode::Multivector {
                multi_count,
                query_multi_count,
            } => {
                let t = Instant::now();
                let dist = ClusteredGaussian::new(args.dim, args.centres, args.sigma, seed)?;
                let points = dist.sample(args.points * multi_count, seed.wrapping_add(1));
                let queries = dist.sample(args.queries * query_multi_count, seed.wrapping_add(2));
                eprintln!(
                    "generated {} points of {multi_count} and {} queries of {query_multi_count} \
                     sub-vectors (dim {}) in {:.1?}",
                    args.points,
                    args.queries,
                    args.dim,
                    t.elapsed()
                );
                let t = Instant::now();
                let truth = ids(MultiExactIndex::new(&points, multi_count, args.distance)?
                    .search_batch(&queries, query_multi_count, args.k, 0));
                eprintln!(
                    "exact MaxSim ground truth (k={}) in {:.1?}",
                    args.k,
                    t.elapsed()
                );
                vec![Field {
                    name: None,
                    data: FieldData::Multi {
                        points,
                        per_point: multi_count,
                        queries,
                        per_query: query_multi_count,
                        distance: args.distance,
                    },
                    truth,
                }]
            }
        };
        let mut filtered = Vec::new();
        if args.filtered
            && let Some(Field {
                data: FieldData::Dense {
                    points, queries, ..
                },
                ..
            }) = fields.first()
        {
            let t = Instant::now();
            let exact = ExactIndex::new(points, args.distance);
            for case in filter_cases(seed) {
                let truth = ids(exact.search_batch_where(queries, args.k, 0, &*case.passes));
                filtered.push((case, truth));
            }
            eprintln!("filtered ground truth in {:.1?}", t.elapsed());
        }
        Ok(Self {
            mode,
            points: args.points,
            fields,
            filtered,
            seed,
        })
    }

    /// The collection as `PUT /collections/{c}` takes it.
    fn collection_json(&self, args: &Args) -> Value {
        let mut body = json!({
            "hnsw_config": {"m": args.m, "ef_construct": args.ef_construct}
        });
        if let Some(kb) = args.full_scan_threshold {
            body["hnsw_config"]["full_scan_threshold"] = kb.into();
        }
        if let Some(kb) = args.indexing_threshold {
            body["optimizers_config"] = json!({ "indexing_threshold": kb });
        }
        if args.payload_in_memory {
            body["on_disk_payload"] = false.into();
        }
        if let Some(quantile) = args.scalar_quantile {
            body["quantization_config"] = json!({"scalar": {
                "type": "int8", "quantile": quantile, "always_ram": args.always_ram
            }});
        }
        let on_disk = |mut params: Value, field: &FieldData| {
            if args.on_disk && !field.is_sparse() {
                params["on_disk"] = true.into();
            }
            params
        };
        if let Some(data) = self.unnamed() {
            body["vectors"] = on_disk(data.params_json(), data);
            return body;
        }
        let (mut dense, mut sparse) = (Map::new(), Map::new());
        for (name, field) in self.named() {
            let to = if field.data.is_sparse() {
                &mut sparse
            } else {
                &mut dense
            };
            to.insert(
                name.to_owned(),
                on_disk(field.data.params_json(), &field.data),
            );
        }
        body["vectors"] = Value::Object(dense);
        if !sparse.is_empty() {
            body["sparse_vectors"] = Value::Object(sparse);
        }
        body
    }

    /// The collection's only vector when it is the unnamed one, which Qdrant spells apart.
    fn unnamed(&self) -> Option<&FieldData> {
        match self.fields.as_slice() {
            [f] if f.name.is_none() => Some(&f.data),
            _ => None,
        }
    }

    fn named(&self) -> impl Iterator<Item = (&'static str, &Field)> {
        self.fields.iter().filter_map(|f| Some((f.name?, f)))
    }

    /// Point `i` as the REST upsert takes it.
    fn point_json(&self, i: usize) -> Value {
        let vector = match self.unnamed() {
            Some(data) => data.point_json(i),
            None => Value::Object(
                self.named()
                    .map(|(name, f)| (name.to_owned(), f.data.point_json(i)))
                    .collect(),
            ),
        };
        if self.filtered.is_empty() {
            json!({"id": i, "vector": vector})
        } else {
            json!({
                "id": i,
                "vector": vector,
                "payload": {"kw": kw_of(self.seed, i), "num": num_of(self.seed, i)},
            })
        }
    }

    /// Point `i` as the gRPC upsert takes it.
    fn point_grpc(&self, i: usize) -> qdrant_client::qdrant::PointStruct {
        use qdrant_client::qdrant as q;
        let vectors: q::Vectors = match self.unnamed() {
            Some(data) => data.point_grpc(i).into(),
            None => self
                .named()
                .fold(q::NamedVectors::default(), |named, (name, f)| {
                    named.add_vector(name, f.data.point_grpc(i))
                })
                .into(),
        };
        q::PointStruct {
            id: Some(q::PointId {
                point_id_options: Some(q::point_id::PointIdOptions::Num(i as u64)),
            }),
            payload: Default::default(),
            vectors: Some(vectors),
        }
    }

    /// What `indexed_vectors_count` reaches once everything is indexed: Qdrant counts each
    /// named vector of a point.
    fn expected_indexed(&self) -> u64 {
        (self.points * self.fields.len()) as u64
    }
}

fn dense_field(args: &Args, name: Option<&'static str>, dim: usize, seed: u64) -> Result<Field> {
    let t = Instant::now();
    let dist = ClusteredGaussian::new(dim, args.centres, args.sigma, seed)?;
    let points = dist.sample(args.points, seed.wrapping_add(1));
    let queries = dist.sample(args.queries, seed.wrapping_add(2));
    let what = name.map_or(String::new(), |n| format!(" `{n}`"));
    eprintln!(
        "generated{what} {} points and {} queries (dim {dim}) in {:.1?}",
        points.len(),
        queries.len(),
        t.elapsed()
    );
    let t = Instant::now();
    let truth = ids(ExactIndex::new(&points, args.distance).search_batch(&queries, args.k, 0));
    eprintln!("exact ground truth (k={}) in {:.1?}", args.k, t.elapsed());
    Ok(Field {
        name,
        data: FieldData::Dense {
            points,
            queries,
            distance: args.distance,
        },
        truth,
    })
}

fn ids(hits: Vec<Vec<shoal_e2e::exact_knn::Neighbour>>) -> Vec<Vec<u64>> {
    hits.into_iter()
        .map(|hits| hits.into_iter().map(|h| h.index as u64).collect())
        .collect()
}

/// One measured series of searches of one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Series {
    /// Approximate search through HNSW with this `hnsw_ef`.
    Hnsw(usize),
    /// A sparse vector's inverted index, searched with no parameters (exact in Qdrant).
    SparseIndex,
    /// `exact: true`: a full scan on the node.
    Exact,
}

impl Series {
    fn mode(self) -> &'static str {
        match self {
            Series::Hnsw(_) => "hnsw",
            Series::SparseIndex => "inverted index",
            Series::Exact => "exact",
        }
    }

    fn ef(self) -> Option<usize> {
        match self {
            Series::Hnsw(ef) => Some(ef),
            Series::SparseIndex | Series::Exact => None,
        }
    }

    /// `params` of a query-API request.
    fn params_json(self) -> Option<Value> {
        match self {
            Series::Hnsw(ef) => Some(json!({"hnsw_ef": ef, "exact": false})),
            Series::SparseIndex => None,
            Series::Exact => Some(json!({"exact": true})),
        }
    }
}

#[derive(Debug, Serialize)]
struct SearchRow {
    /// The named vector searched (`using`); absent for the unnamed vector.
    #[serde(skip_serializing_if = "Option::is_none")]
    vector: Option<String>,
    mode: String,
    ef: Option<usize>,
    /// Concurrent connections the queries were sent over.
    connections: usize,
    /// The filtered-search case (`--filtered`), e.g. `keyword 5%, indexed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    filter: Option<String>,
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
    #[serde(skip_serializing_if = "Mode::is_dense")]
    workload: Mode,
    #[serde(skip_serializing_if = "Option::is_none")]
    indexing_threshold_kb: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    full_scan_threshold_kb: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    restart: Option<RestartReport>,
    /// `qdrant` when the measured node was a Qdrant binary.
    engine: &'static str,
    on_disk: bool,
    /// Resident memory of the node at the end of the searches.
    rss_bytes: Option<u64>,
    /// Of `rss_bytes`: anonymous memory (heap) and file-backed pages (mapped files).
    rss_anon_bytes: Option<u64>,
    rss_file_bytes: Option<u64>,
}

/// How a stopped node came back, timed from its process start.
#[derive(Debug, Serialize)]
struct RestartReport {
    /// SIGTERM until the process exited.
    stop_seconds: f64,
    /// Until `GET /readyz` answered 2xx.
    ready_seconds: f64,
    /// Until an exact count returned every point.
    count_exact_seconds: f64,
    /// Until a one-second window of searches ran at >= 80% of the QPS measured before the
    /// restart (`None`: not within the time allowed).
    full_speed_seconds: Option<f64>,
    /// Searches answered within the first 10 s after the process started.
    searches_in_first_10s: usize,
    ef: usize,
    qps_before: f64,
    /// The same search series measured again once at full speed.
    after: SearchRow,
    rss_bytes: Option<u64>,
    /// Of `rss_bytes`: anonymous memory (heap) and file-backed pages (mapped files).
    rss_anon_bytes: Option<u64>,
    rss_file_bytes: Option<u64>,
    /// Optimizer steps the node logged after the restart (Shoal only): 0 means nothing was
    /// re-indexed.
    optimizer_steps: Option<usize>,
}

/// Stops the node, starts it again on the same data, and times its way back (see
/// [`RestartReport`]) with the `hnsw_ef` 64 series (or the first measured one).
fn restart(
    args: &Args,
    node: &mut NodeProcess,
    workload: &Workload,
    report: &Report,
) -> Result<RestartReport> {
    const LIMIT: Duration = Duration::from_secs(120);
    let name = args.collection.as_str();
    let field = &workload.fields[0];
    let before = report
        .search
        .iter()
        .filter(|r| r.vector.as_deref() == field.name && r.connections == 1)
        .find(|r| r.ef == Some(64))
        .or_else(|| {
            report
                .search
                .iter()
                .find(|r| r.ef.is_some() && r.connections == 1)
        })
        .context("--restart needs an hnsw_ef series")?;
    let ef = before.ef.unwrap_or(64);
    let series = Series::Hnsw(ef);
    let t = Instant::now();
    node.stop(LIMIT)?;
    let stop_seconds = t.elapsed().as_secs_f64();
    let log_before = std::fs::metadata(node.log_path()).map_or(0, |m| m.len());
    eprintln!("restart: stopped in {stop_seconds:.2} s; starting again");
    node.restart()?;
    let started = Instant::now();
    let client = node.client();
    let deadline = started + LIMIT;
    let poll = Duration::from_millis(10);
    while !client.readyz().unwrap_or(false) {
        ensure!(
            Instant::now() < deadline,
            "not ready within {LIMIT:?} of its restart"
        );
        std::thread::sleep(poll);
    }
    let ready_seconds = started.elapsed().as_secs_f64();
    let count_body = json!({"exact": true});
    loop {
        let count: Result<Value> = client.call(
            Method::Post,
            &format!("/collections/{name}/points/count"),
            Some(&count_body),
        );
        if count.is_ok_and(|c| c["count"].as_u64() == Some(workload.points as u64)) {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "count not exact within {LIMIT:?} of its restart"
        );
        std::thread::sleep(poll);
    }
    let count_exact_seconds = started.elapsed().as_secs_f64();
    let queries = field.truth.len();
    let (mut in_first_10s, mut full_speed, mut i) = (0, None, 0);
    let (mut window, mut window_n) = (Instant::now(), 0usize);
    while started.elapsed() < Duration::from_secs(60) {
        rest_search(
            &client,
            name,
            workload.mode,
            field,
            series,
            i % queries,
            args.k,
        )?;
        i += 1;
        window_n += 1;
        if started.elapsed() <= Duration::from_secs(10) {
            in_first_10s += 1;
        }
        if window.elapsed() >= Duration::from_secs(1) {
            let qps = window_n as f64 / window.elapsed().as_secs_f64();
            if full_speed.is_none() && qps >= 0.8 * before.qps {
                full_speed = Some(started.elapsed().as_secs_f64());
            }
            (window, window_n) = (Instant::now(), 0);
            if full_speed.is_some() && started.elapsed() >= Duration::from_secs(10) {
                break;
            }
        }
    }
    let after = measure(
        args,
        field,
        &field.truth,
        series,
        "",
        std::slice::from_ref(&client),
        |c, i| rest_search(c, name, workload.mode, field, series, i, args.k),
    )?;
    let optimizer_steps = (node_flavour(args) == Flavour::Shoal).then(|| {
        let log = std::fs::read(node.log_path()).unwrap_or_default();
        let tail =
            String::from_utf8_lossy(&log[(log_before as usize).min(log.len())..]).into_owned();
        tail.lines()
            .filter(|l| l.contains("optimizer step"))
            .count()
    });
    let [rss_bytes, rss_anon_bytes, rss_file_bytes] = resident(node.pid());
    eprintln!(
        "restart: ready {ready_seconds:.2} s, count exact {count_exact_seconds:.2} s, full speed {full_speed:?} s, {in_first_10s} searches in the first 10 s, optimizer steps {optimizer_steps:?}"
    );
    Ok(RestartReport {
        stop_seconds,
        ready_seconds,
        count_exact_seconds,
        full_speed_seconds: full_speed,
        searches_in_first_10s: in_first_10s,
        ef,
        qps_before: before.qps,
        after,
        rss_bytes,
        rss_anon_bytes,
        rss_file_bytes,
        optimizer_steps,
    })
}

/// Resident memory of process `pid` in bytes: total (`VmRSS`), anonymous (`RssAnon`) and
/// file-backed (`RssFile`, mapped files' pages in memory).
fn resident(pid: Option<u32>) -> [Option<u64>; 3] {
    ["VmRSS", "RssAnon", "RssFile"].map(|field| {
        pid.and_then(|pid| proc_status_kib(pid, field).ok())
            .map(|k| k * 1024)
    })
}

fn node_flavour(args: &Args) -> Flavour {
    match args.qdrant_bin {
        Some(_) => Flavour::Qdrant,
        None => Flavour::Shoal,
    }
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
    ensure!(
        !args.connections.is_empty() && args.connections.iter().all(|&c| (1..=256).contains(&c)),
        "--connections takes values from 1 to 256"
    );
    match Mode::of(args) {
        Mode::Dense => {}
        Mode::Named { text_dim } => ensure!(text_dim > 0, "--text-dim must be positive"),
        Mode::Sparse {
            vocab,
            nnz,
            query_nnz,
            ..
        } => ensure!(
            vocab > 0 && nnz > 0 && query_nnz > 0,
            "--vocab, --nnz and --query-nnz must be positive"
        ),
        Mode::Multivector {
            multi_count,
            query_multi_count,
        } => ensure!(
            multi_count > 0 && query_multi_count > 0,
            "--multi-count and --query-multi-count must be positive"
        ),
    }
    Ok(())
}

fn run(args: &Args) -> Result<()> {
    validate(args)?;
    // Data and ground truth first: brute force uses every core and must not compete with
    // the node while it is being measured.
    let workload = Workload::generate(args)?;
    let Some(qdrant) = &args.against else {
        let report = run_engine(args, &workload)?;
        print_markdown(&report);
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    };
    // One engine after the other, each alone on the machine, on the same workload.
    let shoal = run_engine(args, &workload)?;
    let qdrant_args = Args {
        qdrant_bin: Some(qdrant.clone()),
        ..args.clone()
    };
    let qdrant = run_engine(&qdrant_args, &workload)?;
    print_markdown(&shoal);
    print_markdown(&qdrant);
    print_comparison(args, &shoal, &qdrant);
    println!(
        "{}",
        serde_json::to_string(&json!({ "shoal": shoal, "qdrant": qdrant }))?
    );
    Ok(())
}

/// Starts the engine `args` name (unless `--url`), runs the benchmark on it, stops it.
fn run_engine(args: &Args, workload: &Workload) -> Result<Report> {
    let request_timeout = Duration::from_secs(args.request_timeout_secs);
    let node = match &args.url {
        Some(_) => None,
        None => {
            let (binary, flavour) = match &args.qdrant_bin {
                Some(q) => (q.clone(), Flavour::Qdrant),
                None => (args.node_bin.clone(), Flavour::Shoal),
            };
            eprintln!("starting {}", binary.display());
            let node = NodeProcess::start_ready(
                NodeOptions {
                    binary: Some(binary),
                    api_key: args.api_key.clone(),
                    client_timeout: Some(request_timeout),
                    flavour,
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
    let mut node = node;
    let result = bench(args, &client, &grpc_url, workload, pid).and_then(|mut report| {
        if let Some(node) = node.as_mut().filter(|_| args.restart) {
            report.restart = Some(restart(args, node, workload, &report)?);
        }
        Ok(report)
    });
    if let (Err(_), Some(n)) = (&result, &node) {
        eprintln!(
            "---- node log tail ({}) ----\n{}",
            n.log_path().display(),
            n.log_tail(40)
        );
    }
    // Dropping `node` kills it and removes its temp data dir.
    drop(node);
    result
}

/// `shoal / qdrant`, or `n/a` when either is missing or zero.
fn ratio(shoal: Option<f64>, qdrant: Option<f64>) -> String {
    match (shoal, qdrant) {
        (Some(s), Some(q)) if q > 0.0 => format!("{:.2}", s / q),
        _ => "n/a".to_owned(),
    }
}

/// The lowest-`hnsw_ef` REST row over `connections` whose recall reaches `target`.
fn at_recall(r: &Report, connections: usize, target: f64) -> Option<&SearchRow> {
    r.search
        .iter()
        .filter(|s| {
            s.vector.is_none()
                && s.filter.is_none()
                && s.connections == connections
                && s.recall >= target
        })
        .filter_map(|s| Some((s.ef?, s)))
        .min_by_key(|(ef, _)| *ef)
        .map(|(_, s)| s)
}

/// Every figure of both engines side by side, with its ratio Shoal / Qdrant (for times and
/// memory lower is better, for rates higher is).
fn print_comparison(args: &Args, shoal: &Report, qdrant: &Report) {
    let mib = |b: Option<u64>| b.map(|b| b as f64 / (1 << 20) as f64);
    let fmt = |v: Option<f64>, unit: &str| v.map_or("n/a".to_owned(), |v| format!("{v:.2}{unit}"));
    println!("## Shoal / Qdrant, one run\n");
    println!("| figure | Shoal | Qdrant | Shoal / Qdrant |\n| --- | ---: | ---: | ---: |");
    let line = |name: String, s: Option<f64>, q: Option<f64>, unit: &str| {
        println!(
            "| {name} | {} | {} | {} |",
            fmt(s, unit),
            fmt(q, unit),
            ratio(s, q)
        );
    };
    line(
        "upsert points/s".into(),
        Some(shoal.upsert_points_per_sec),
        Some(qdrant.upsert_points_per_sec),
        "",
    );
    line(
        "time until indexed (s)".into(),
        Some(shoal.index.seconds),
        Some(qdrant.index.seconds),
        "",
    );
    line(
        "RSS after the searches (MiB)".into(),
        mib(shoal.rss_bytes),
        mib(qdrant.rss_bytes),
        "",
    );
    line(
        "peak RSS (MiB)".into(),
        mib(shoal.peak_rss_bytes),
        mib(qdrant.peak_rss_bytes),
        "",
    );
    if let (Some(s), Some(q)) = (&shoal.restart, &qdrant.restart) {
        line(
            "restart: ready (s)".into(),
            Some(s.ready_seconds),
            Some(q.ready_seconds),
            "",
        );
        line(
            "restart: count exact (s)".into(),
            Some(s.count_exact_seconds),
            Some(q.count_exact_seconds),
            "",
        );
        line(
            "restart: full speed (s)".into(),
            s.full_speed_seconds,
            q.full_speed_seconds,
            "",
        );
        line(
            "restart: searches in the first 10 s".into(),
            Some(s.searches_in_first_10s as f64),
            Some(q.searches_in_first_10s as f64),
            "",
        );
        line(
            format!("restart: ef {} QPS after", s.ef),
            Some(s.after.qps),
            Some(q.after.qps),
            "",
        );
        line(
            "RSS after the restart (MiB)".into(),
            mib(s.rss_bytes),
            mib(q.rss_bytes),
            "",
        );
    }
    for s in &shoal.search {
        let label = match s.connections {
            1 => row_label(s),
            n => format!("{}, {n} connections", row_label(s)),
        };
        let q = qdrant
            .search
            .iter()
            .find(|q| row_label(q) == row_label(s) && q.connections == s.connections);
        line(format!("{label}: QPS"), Some(s.qps), q.map(|q| q.qps), "");
        line(
            format!("{label}: p99 ms"),
            Some(s.latency.p99_ms),
            q.map(|q| q.latency.p99_ms),
            "",
        );
        line(
            format!("{label}: recall@{}", args.k),
            Some(s.recall),
            q.map(|q| q.recall),
            "",
        );
    }
    println!();
    println!(
        "| at recall@{} >= {} | Shoal ef / QPS / p99 ms | Qdrant ef / QPS / p99 ms | QPS ratio | p99 ratio |\n| --- | ---: | ---: | ---: | ---: |",
        args.k, args.recall_target
    );
    print_filtered_comparison(shoal, qdrant);
    for &connections in &args.connections {
        let (s, q) = (
            at_recall(shoal, connections, args.recall_target),
            at_recall(qdrant, connections, args.recall_target),
        );
        let cell = |r: Option<&SearchRow>| {
            r.map_or("not reached".to_owned(), |r| {
                format!(
                    "{} / {:.0} / {:.2}",
                    r.ef.unwrap_or(0),
                    r.qps,
                    r.latency.p99_ms
                )
            })
        };
        println!(
            "| {connections} connection(s) | {} | {} | {} | {} |",
            cell(s),
            cell(q),
            ratio(s.map(|r| r.qps), q.map(|r| r.qps)),
            ratio(s.map(|r| r.latency.p99_ms), q.map(|r| r.latency.p99_ms)),
        );
    }
    println!();
}

/// `--filtered` at equal recall: for each filtered Qdrant row, the fastest Shoal row of the
/// same case and connections whose recall is at least Qdrant's.
fn print_filtered_comparison(shoal: &Report, qdrant: &Report) {
    let rows: Vec<&SearchRow> = qdrant
        .search
        .iter()
        .filter(|q| q.filter.is_some())
        .collect();
    if rows.is_empty() {
        return;
    }
    println!(
        "| filtered, at Qdrant's recall | connections | Qdrant ef / recall / QPS / p99 ms | Shoal ef / recall / QPS / p99 ms | QPS ratio | p99 ratio |\n| --- | ---: | ---: | ---: | ---: | ---: |"
    );
    for q in rows {
        let s = shoal
            .search
            .iter()
            .filter(|s| {
                s.filter == q.filter && s.connections == q.connections && s.recall >= q.recall
            })
            .max_by(|a, b| a.qps.total_cmp(&b.qps));
        let cell = |r: &SearchRow| {
            format!(
                "{} / {:.3} / {:.0} / {:.2}",
                r.ef.unwrap_or(0),
                r.recall,
                r.qps,
                r.latency.p99_ms
            )
        };
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            q.filter.as_deref().unwrap_or(""),
            q.connections,
            cell(q),
            s.map_or("not reached".to_owned(), cell),
            ratio(s.map(|r| r.qps), Some(q.qps)),
            ratio(s.map(|r| r.latency.p99_ms), Some(q.latency.p99_ms)),
        );
    }
    println!();
}

/// `http://host:6333` → `http://host:6334` (Qdrant's default ports).
fn grpc_url_of(rest_url: &str) -> String {
    let base = rest_url.trim_end_matches('/');
    match base.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => format!("{host}:6334"),
        _ => format!("{base}:6334"),
    }
}

/// Deletes `name` if it exists (refusing to with `--url` unless `--recreate`, for the
/// benchmark's own collection) and creates it for `workload` over REST.
fn create_collection(
    client: &Client,
    name: &str,
    workload: &Workload,
    args: &Args,
    may_replace: bool,
) -> Result<()> {
    if client.collection_exists(name)? {
        if !may_replace {
            bail!(
                "collection `{name}` already exists on {}; pass --recreate to replace it",
                client.base_url()
            );
        }
        client.delete_collection(name)?;
    }
    let _: Value = client.call(
        Method::Put,
        &format!("/collections/{name}"),
        Some(&workload.collection_json(args)),
    )?;
    Ok(())
}

/// Upload throughput of one transport.
#[derive(Default)]
struct Upload {
    seconds: f64,
    points_per_sec: f64,
    batch_latency: Option<LatencySummary>,
}

/// Sends every point in batches of `--batch`: `build(first, last)` makes a request (timed
/// as part of throughput, as a client would have to), `send` delivers it (also timed alone).
fn upload<B>(
    args: &Args,
    label: &str,
    points: usize,
    build: impl Fn(usize, usize) -> B,
    mut send: impl FnMut(B) -> Result<()>,
) -> Result<Upload> {
    let t = Instant::now();
    let mut batch_latencies = Vec::new();
    let n_batches = points.div_ceil(args.batch);
    for (b, first) in (0..points).step_by(args.batch).enumerate() {
        let last = (first + args.batch).min(points);
        let batch = build(first, last);
        let sent = Instant::now();
        send(batch)
            .with_context(|| format!("{label}upsert of batch {b} (points {first}..{last})"))?;
        batch_latencies.push(sent.elapsed());
        if (b + 1) % 20 == 0 || b + 1 == n_batches {
            eprintln!("{label}upserted {last}/{points} points");
        }
    }
    let seconds = t.elapsed().as_secs_f64();
    let points_per_sec = points as f64 / seconds;
    eprintln!("{label}upsert: {points_per_sec:.0} points/s over {seconds:.2} s");
    Ok(Upload {
        seconds,
        points_per_sec,
        batch_latency: LatencySummary::from_durations(&batch_latencies),
    })
}

fn bench(
    args: &Args,
    client: &Client,
    grpc_url: &str,
    workload: &Workload,
    pid: Option<u32>,
) -> Result<Report> {
    let name = args.collection.as_str();
    let up = if args.search_only {
        Upload::default()
    } else {
        create_collection(
            client,
            name,
            workload,
            args,
            args.url.is_none() || args.recreate,
        )?;
        upload(
            args,
            "",
            workload.points,
            |first, last| {
                let points: Vec<Value> = (first..last).map(|i| workload.point_json(i)).collect();
                json!({ "points": points })
            },
            |body| {
                let ack: UpdateResult = client.call(
                    Method::Put,
                    &format!("/collections/{name}/points?wait=true"),
                    Some(&body),
                )?;
                ensure!(ack.is_completed(), "wait=true upsert answered {ack:?}");
                Ok(())
            },
        )?
    };

    let index = wait_indexed(client, name, workload, args)?;

    // One client (its own connection) per concurrent search thread.
    let widest = args.connections.iter().copied().max().unwrap_or(1);
    let clients: Vec<Client> = (0..widest)
        .map(|_| {
            let c = Client::with_timeout(
                client.base_url(),
                Duration::from_secs(args.request_timeout_secs),
            );
            match &args.api_key {
                Some(k) => c.with_api_key(k.clone()),
                None => c,
            }
        })
        .collect();
    let mut search = Vec::new();
    for field in &workload.fields {
        for series in field.data.series(args, args.also_exact) {
            for &connections in &args.connections {
                let row = measure(
                    args,
                    field,
                    &field.truth,
                    series,
                    "",
                    &clients[..connections],
                    |c, i| rest_search(c, name, workload.mode, field, series, i, args.k),
                )?;
                if series == Series::Exact && row.recall < 0.99 {
                    eprintln!(
                        "WARNING: exact search on the node disagrees with local brute force \
                         (recall {:.4}); likely a node bug in exact search or scoring",
                        row.recall
                    );
                }
                search.push(row);
            }
        }
    }

    if args.filtered {
        search.extend(bench_filtered(args, client, &clients, workload)?);
    }

    let grpc = if args.grpc {
        Some(bench_grpc(args, client, grpc_url, workload)?)
    } else {
        None
    };

    let [rss_bytes, rss_anon_bytes, rss_file_bytes] = resident(pid);
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
        upsert_seconds: up.seconds,
        upsert_points_per_sec: up.points_per_sec,
        upsert_batch_latency: up.batch_latency,
        index,
        search,
        grpc,
        peak_rss_bytes,
        workload: workload.mode,
        indexing_threshold_kb: args.indexing_threshold,
        full_scan_threshold_kb: args.full_scan_threshold,
        restart: None,
        engine: match node_flavour(args) {
            Flavour::Qdrant => "qdrant",
            Flavour::Shoal => "shoal",
        },
        on_disk: args.on_disk,
        rss_bytes,
        rss_anon_bytes,
        rss_file_bytes,
    })
}

/// `--filtered`: every filter case at `--filter-ef`, over each number of connections, first
/// without payload indexes and then with them (created with `wait=true`, then waiting for
/// the collection to be green again).
fn bench_filtered(
    args: &Args,
    client: &Client,
    clients: &[Client],
    workload: &Workload,
) -> Result<Vec<SearchRow>> {
    let name = args.collection.as_str();
    let field = &workload.fields[0];
    let FieldData::Dense { queries, .. } = &field.data else {
        bail!("--filtered needs the default dense workload");
    };
    let mut rows = Vec::new();
    for indexed in [false, true] {
        if indexed {
            let t = Instant::now();
            for (field_name, schema) in [("kw", "keyword"), ("num", "integer")] {
                let ack: UpdateResult = client.call(
                    Method::Put,
                    &format!("/collections/{name}/index?wait=true"),
                    Some(&json!({"field_name": field_name, "field_schema": schema})),
                )?;
                ensure!(
                    ack.is_completed(),
                    "creating the `{field_name}` index answered {ack:?}"
                );
            }
            wait_indexed(client, name, workload, args)?;
            eprintln!("payload indexes on kw and num ready in {:.2?}", t.elapsed());
        }
        for ((case, truth), &ef) in workload
            .filtered
            .iter()
            .flat_map(|c| args.filter_ef.iter().map(move |ef| (c, ef)))
        {
            let series = Series::Hnsw(ef);
            for &connections in &args.connections {
                let label = format!("{}{}", case.label, if indexed { ", indexed" } else { "" });
                eprint!("{label}: ");
                let mut row = measure(
                    args,
                    field,
                    truth,
                    series,
                    "",
                    &clients[..connections],
                    |c, i| {
                        dense_search(c, name, queries.get(i), series, args.k, Some(&case.filter))
                    },
                )?;
                row.filter = Some(label);
                rows.push(row);
            }
        }
        for (case, _) in &workload.filtered {
            let label = format!(
                "count: {}{}",
                case.label,
                if indexed { ", indexed" } else { "" }
            );
            let passing: Vec<u64> = (0..workload.points)
                .filter(|&i| (case.passes)(i))
                .map(|i| i as u64)
                .collect();
            let connections = args.connections.first().copied().unwrap_or(1);
            rows.push(measure_reads(
                &clients[..connections],
                &label,
                args.queries,
                &format!("/collections/{name}/points/count"),
                &json!({"filter": case.filter, "exact": true}),
                &|v| v["count"].as_u64() == Some(passing.len() as u64),
            )?);
            // The first page of a scroll: the 10 lowest ids that pass, with their payloads.
            let first: Vec<u64> = passing.iter().take(10).copied().collect();
            rows.push(measure_reads(
                &clients[..connections],
                &label.replacen("count:", "scroll:", 1),
                args.queries,
                &format!("/collections/{name}/points/scroll"),
                &json!({"filter": case.filter, "limit": 10, "with_payload": true}),
                &|v| {
                    let ids: Vec<u64> = v["points"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|p| p["id"].as_u64())
                        .collect();
                    ids == first
                },
            )?);
        }
    }
    Ok(rows)
}

/// `queries` POSTs of `body` to `path`, dealt out over `clients`: QPS, latency, and as
/// "recall" the share of answers (`result`) that `right` accepts.
fn measure_reads(
    clients: &[Client],
    label: &str,
    queries: usize,
    path: &str,
    body: &Value,
    right: &(dyn Fn(&Value) -> bool + Sync),
) -> Result<SearchRow> {
    let connections = clients.len().max(1);
    let started = Instant::now();
    let answers = fan_out(clients, queries, label, |client, _| {
        let v: Value = client.call(Method::Post, path, Some(body))?;
        Ok(right(&v))
    })?;
    let wall = started.elapsed().as_secs_f64();
    let exact = answers.iter().filter(|(_, _, ok)| *ok).count();
    let latencies: Vec<Duration> = answers.iter().map(|(_, d, _)| *d).collect();
    let row = SearchRow {
        vector: None,
        mode: path.rsplit('/').next().unwrap_or(path).to_owned(),
        ef: None,
        connections,
        filter: Some(label.to_owned()),
        qps: answers.len() as f64 / wall,
        recall: exact as f64 / answers.len().max(1) as f64,
        latency: LatencySummary::from_durations(&latencies).context("nothing was measured")?,
    };
    eprintln!(
        "{label}: {:.0} QPS, {exact} of {} right, p50 {:.2} ms, p99 {:.2} ms",
        row.qps,
        answers.len(),
        row.latency.p50_ms,
        row.latency.p99_ms
    );
    Ok(row)
}

/// `result` of `points/query`.
#[derive(Deserialize)]
struct QueryResult {
    points: Vec<ScoredPoint>,
}

/// One `points/search` of the unnamed dense vector, with an optional filter: (id, score) hits.
fn dense_search(
    client: &Client,
    name: &str,
    query: &[f32],
    series: Series,
    k: usize,
    filter: Option<&Value>,
) -> Result<Vec<(u64, f32)>> {
    let mut request = SearchRequest::new(query.to_vec(), k);
    request.hnsw_ef = series.ef();
    request.exact = series == Series::Exact;
    request.filter = filter.cloned();
    Ok(client
        .search(name, &request)?
        .iter()
        .filter_map(|h| Some((h.id.as_num()?, h.score)))
        .collect())
}

/// One search over REST: `points/search` for the default mode's unnamed vector (as the
/// figures in BENCHMARKS.md were measured), the query API with `using` otherwise.
fn rest_search(
    client: &Client,
    name: &str,
    mode: Mode,
    field: &Field,
    series: Series,
    i: usize,
    k: usize,
) -> Result<Vec<(u64, f32)>> {
    if let (Mode::Dense, FieldData::Dense { queries, .. }) = (mode, &field.data) {
        return dense_search(client, name, queries.get(i), series, k, None);
    }
    let mut body = json!({
        "query": field.data.query_json(i),
        "limit": k,
        "with_payload": false,
        "with_vector": false,
    });
    if let Some(using) = field.name {
        body["using"] = using.into();
    }
    if let Some(params) = series.params_json() {
        body["params"] = params;
    }
    let result: QueryResult = client.call(
        Method::Post,
        &format!("/collections/{name}/points/query"),
        Some(&body),
    )?;
    Ok(result
        .points
        .iter()
        .filter_map(|h| Some((h.id.as_num()?, h.score)))
        .collect())
}

/// Upload and search over gRPC into `<collection>-grpc`, created over REST with the same
/// parameters.
fn bench_grpc(
    args: &Args,
    client: &Client,
    grpc_url: &str,
    workload: &Workload,
) -> Result<GrpcReport> {
    use qdrant_client::qdrant as q;
    let name = format!("{}-grpc", args.collection);
    create_collection(client, &name, workload, args, true)?;
    let grpc = GrpcClient {
        rt: tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        client: qdrant_client::Qdrant::from_url(grpc_url)
            .api_key(args.api_key.clone())
            .timeout(Duration::from_secs(args.request_timeout_secs))
            .skip_compatibility_check()
            .build()?,
    };
    let up = upload(
        args,
        "gRPC ",
        workload.points,
        |first, last| q::UpsertPoints {
            collection_name: name.clone(),
            wait: Some(true),
            points: (first..last).map(|i| workload.point_grpc(i)).collect(),
            ..Default::default()
        },
        |request| {
            grpc.rt.block_on(grpc.client.upsert_points(request))?;
            Ok(())
        },
    )?;
    let index = wait_indexed(client, &name, workload, args)?;
    let mut search = Vec::new();
    for field in &workload.fields {
        for series in field.data.series(args, false) {
            let row = measure(
                args,
                field,
                &field.truth,
                series,
                "gRPC ",
                std::slice::from_ref(&grpc),
                |g, i| grpc_search(g, &name, workload.mode, field, series, i, args.k),
            )?;
            search.push(row);
        }
    }
    Ok(GrpcReport {
        upsert_seconds: up.seconds,
        upsert_points_per_sec: up.points_per_sec,
        upsert_batch_latency: up.batch_latency,
        index,
        search,
    })
}

/// Qdrant's Rust client, with the runtime its calls are blocked on.
struct GrpcClient {
    rt: tokio::runtime::Runtime,
    client: qdrant_client::Qdrant,
}

/// One search over gRPC: the classic `Search` call for the default mode's unnamed vector,
/// `Query` with `using` otherwise (as over REST).
fn grpc_search(
    grpc: &GrpcClient,
    name: &str,
    mode: Mode,
    field: &Field,
    series: Series,
    i: usize,
    k: usize,
) -> Result<Vec<(u64, f32)>> {
    use qdrant_client::qdrant as q;
    let params = match series {
        Series::Hnsw(ef) => Some(q::SearchParams {
            hnsw_ef: Some(ef as u64),
            ..Default::default()
        }),
        Series::Exact => Some(q::SearchParams {
            exact: Some(true),
            ..Default::default()
        }),
        Series::SparseIndex => None,
    };
    let hits = match (mode, &field.data) {
        (Mode::Dense, FieldData::Dense { queries, .. }) => {
            let request = q::SearchPoints {
                collection_name: name.to_owned(),
                vector: queries.get(i).to_vec(),
                limit: k as u64,
                params,
                ..Default::default()
            };
            grpc.rt.block_on(grpc.client.search_points(request))?.result
        }
        _ => {
            let mut request = q::QueryPointsBuilder::new(name)
                .query(q::Query::new_nearest(field.data.query_grpc(i)))
                .limit(k as u64);
            if let Some(using) = field.name {
                request = request.using(using);
            }
            if let Some(params) = params {
                request = request.params(params);
            }
            grpc.rt.block_on(grpc.client.query(request))?.result
        }
    };
    Ok(hits
        .iter()
        .filter_map(|h| match h.id.as_ref()?.point_id_options {
            Some(q::point_id::PointIdOptions::Num(n)) => Some((n, h.score)),
            _ => None,
        })
        .collect())
}

/// Polls the collection until it is green with every vector indexed. A node may legitimately
/// leave small collections unindexed (green, indexed < points), or count indexed vectors
/// differently (per point rather than per named vector); green with an unchanged indexed
/// count for `SETTLE` also counts as done.
fn wait_indexed(
    client: &Client,
    name: &str,
    workload: &Workload,
    args: &Args,
) -> Result<IndexWait> {
    let expected_points = workload.points as u64;
    let expected_indexed = workload.expected_indexed();
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
                .is_some_and(|n| n >= expected_indexed);
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

/// One measured search: the query's index, its latency and its hits (id, score).
type Answer = (usize, Duration, Vec<(u64, f32)>);

/// Sends requests `0..queries` over `handles`, one thread each, request `i` on handle
/// `i % handles.len()`; returns (i, latency, answer) of every request. `what` names the series
/// in errors.
fn fan_out<H: Sync, A: Send>(
    handles: &[H],
    queries: usize,
    what: &str,
    send: impl Fn(&H, usize) -> Result<A> + Sync,
) -> Result<Vec<(usize, Duration, A)>> {
    let connections = handles.len().max(1);
    std::thread::scope(|scope| {
        let workers: Vec<_> = handles
            .iter()
            .enumerate()
            .map(|(t, handle)| {
                let send = &send;
                scope.spawn(move || -> Result<Vec<(usize, Duration, A)>> {
                    let mut mine = Vec::new();
                    for i in (t..queries).step_by(connections) {
                        let sent = Instant::now();
                        let answer =
                            send(handle, i).with_context(|| format!("{what}: request {i}"))?;
                        mine.push((i, sent.elapsed(), answer));
                    }
                    Ok(mine)
                })
            })
            .collect();
        let mut all = Vec::with_capacity(queries);
        for worker in workers {
            all.extend(
                worker
                    .join()
                    .map_err(|_| anyhow::anyhow!("a request thread panicked"))??,
            );
        }
        Ok(all)
    })
}

/// Sends every query of `field` once, after `--warmup` unmeasured ones, over `handles.len()`
/// concurrent connections, one thread each, queries dealt out round-robin; `send(h, i)`
/// answers query `i` over `h` with (point id, score), best first. QPS is over the wall time of
/// the whole series, latency per request.
fn measure<H: Sync>(
    args: &Args,
    field: &Field,
    truth: &[Vec<u64>],
    series: Series,
    transport: &str,
    handles: &[H],
    send: impl Fn(&H, usize) -> Result<Vec<(u64, f32)>> + Sync,
) -> Result<SearchRow> {
    let connections = handles.len().max(1);
    let vector = field.name.map_or(String::new(), |n| format!("`{n}` "));
    let what = match series {
        Series::Hnsw(ef) => format!("{transport}{vector}ef {ef}"),
        _ => format!("{transport}{vector}{}", series.mode()),
    };
    let what = match connections {
        1 => what,
        n => format!("{what}, {n} connections"),
    };
    let queries = truth.len();
    for i in 0..args.warmup.min(queries) {
        send(&handles[i % connections], i)
            .with_context(|| format!("{what}: warm-up search {i}"))?;
    }
    let started = Instant::now();
    let answers: Vec<Answer> = fan_out(handles, queries, &what, &send)?;
    let wall = started.elapsed().as_secs_f64();
    let mut latencies = Vec::with_capacity(queries);
    let mut recall_sum = 0.0;
    let mut mismatches = 0usize;
    let mut first_mismatch = None;
    for (i, latency, hits) in &answers {
        latencies.push(*latency);
        let got: Vec<u64> = hits.iter().map(|&(id, _)| id).collect();
        recall_sum += field.data.recall(*i, &truth[*i], &got, args.k);
        for &(id, reported) in hits {
            if let Some(local) = field.data.score_mismatch(*i, id, reported) {
                mismatches += 1;
                first_mismatch.get_or_insert((*i, id, reported, local));
            }
        }
    }
    if let Some((i, id, reported, local)) = first_mismatch {
        eprintln!(
            "WARNING: {what}: {mismatches} hits scored differently from local brute force, \
             e.g. query {i}: point {id} scored {reported}, expected {local}"
        );
    }
    let row = SearchRow {
        vector: field.name.map(str::to_owned),
        mode: if transport.is_empty() {
            series.mode().to_owned()
        } else {
            format!("{} ({})", series.mode(), transport.trim_end())
        },
        ef: series.ef(),
        connections,
        filter: None,
        qps: queries as f64 / wall,
        recall: recall_sum / queries as f64,
        latency: LatencySummary::from_durations(&latencies).context("no queries were measured")?,
    };
    eprintln!(
        "{what}: {:.0} QPS, recall@{} {:.4}, p50 {:.2} ms, p99 {:.2} ms",
        row.qps, args.k, row.recall, row.latency.p50_ms, row.latency.p99_ms
    );
    Ok(row)
}

/// The restart figures, when measured, as their own table.
fn print_restart(r: &Report) {
    let mib = |b: Option<u64>| {
        b.map_or("?".to_owned(), |b| {
            format!("{:.0} MiB", b as f64 / 1048576.0)
        })
    };
    println!(
        "engine: {}, on_disk: {}, RSS after the searches: {} (anonymous {}, file-backed {})\n",
        r.engine,
        r.on_disk,
        mib(r.rss_bytes),
        mib(r.rss_anon_bytes),
        mib(r.rss_file_bytes)
    );
    let Some(x) = &r.restart else {
        return;
    };
    println!("| restart (from process start) | value |\n| --- | --- |");
    println!("| stop (SIGTERM to exit) | {:.2} s |", x.stop_seconds);
    println!("| ready (`/readyz`) | {:.2} s |", x.ready_seconds);
    println!("| exact count complete | {:.2} s |", x.count_exact_seconds);
    println!(
        "| ef {} at >= 80% of the QPS before ({:.0}) | {} |",
        x.ef,
        x.qps_before,
        x.full_speed_seconds
            .map_or("not within 60 s".to_owned(), |t| format!("{t:.2} s"))
    );
    println!(
        "| searches answered in the first 10 s | {} |",
        x.searches_in_first_10s
    );
    println!(
        "| ef {} after the restart | {:.0} QPS, recall {:.4}, p99 {:.2} ms |",
        x.ef, x.after.qps, x.after.recall, x.after.latency.p99_ms
    );
    println!(
        "| RSS after the restart | {} (anonymous {}, file-backed {}) |",
        mib(x.rss_bytes),
        mib(x.rss_anon_bytes),
        mib(x.rss_file_bytes)
    );
    if let Some(n) = x.optimizer_steps {
        println!("| optimizer steps logged after the restart | {n} |");
    }
    println!();
}

/// The table label of a search row: `hnsw ef=64`, `exact`, `sparse index`, prefixed by the
/// vector's name when it has one.
fn row_label(s: &SearchRow) -> String {
    let what = match s.ef {
        Some(ef) => format!("hnsw ef={ef}"),
        None => s.mode.trim_end_matches(" (gRPC)").to_owned(),
    };
    let what = match &s.vector {
        Some(v) => format!("`{v}` {what}"),
        None => what,
    };
    match &s.filter {
        Some(f) => format!("{f}: {what}"),
        None => what,
    }
}

fn print_title(r: &Report) {
    // Thresholds only when set, so the default title reads as it always did.
    let thresholds = [
        ("full_scan_threshold", r.full_scan_threshold_kb),
        ("indexing_threshold", r.indexing_threshold_kb),
    ]
    .iter()
    .filter_map(|(what, kb)| Some(format!(", {what} {} KB", (*kb)?)))
    .collect::<String>();
    let hnsw = format!("m {}, ef_construct {}{thresholds}", r.m, r.ef_construct);
    let dense = format!("{} centres, sigma {}, seed {}", r.centres, r.sigma, r.seed);
    match r.workload {
        Mode::Dense => println!(
            "## shoal-bench: {} x {} {}, {dense}; {hnsw}\n",
            r.points, r.dim, r.distance
        ),
        Mode::Named { text_dim } => println!(
            "## shoal-bench --named: {} points, `image` {} + `text` {text_dim} {}, {dense}; \
             {hnsw}\n",
            r.points, r.dim, r.distance
        ),
        Mode::Sparse {
            vocab,
            nnz,
            query_nnz,
            idf,
        } => println!(
            "## shoal-bench --sparse{}: {} points, ~{nnz} of {vocab} Zipf-distributed terms \
             each, queries of ~{query_nnz}, seed {}{}\n",
            if idf { " --idf" } else { "" },
            r.points,
            r.seed,
            r.indexing_threshold_kb
                .map_or(String::new(), |kb| format!("; indexing_threshold {kb} KB")),
        ),
        Mode::Multivector {
            multi_count,
            query_multi_count,
        } => println!(
            "## shoal-bench --multivector: {} points x {multi_count} x {} {} (MaxSim), queries \
             of {query_multi_count}, {dense}; {hnsw}\n",
            r.points, r.dim, r.distance
        ),
    }
}

fn print_markdown(r: &Report) {
    print_title(r);
    print_restart(r);
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
        "| search ({} queries) | connections | QPS | recall@{} | p50 ms | p99 ms |\n| --- | ---: | ---: | ---: | ---: | ---: |",
        r.queries, r.k
    );
    for s in &r.search {
        println!(
            "| {} | {} | {:.0} | {:.4} | {:.2} | {:.2} |",
            row_label(s),
            s.connections,
            s.qps,
            s.recall,
            s.latency.p50_ms,
            s.latency.p99_ms
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
                .find(|x| row_label(x) == row_label(s))
                .map_or("?".to_owned(), |x| format!("{:.0}", x.qps));
            println!(
                "| {} | {:.0} | {rest_qps} | {:.4} | {:.2} | {:.2} |",
                row_label(s),
                s.qps,
                s.recall,
                s.latency.p50_ms,
                s.latency.p99_ms
            );
        }
        println!();
    }
}

#[cfg(test)]
mod tests {
    use shoal_e2e::{CollectionParams, PointId, PointStruct};

    use super::*;

    fn workload(extra: &[&str]) -> (Args, Workload) {
        let base = [
            "shoal-bench",
            "--points",
            "40",
            "--dim",
            "4",
            "--queries",
            "3",
        ];
        let args = Args::parse_from(base.iter().chain(extra));
        let w = Workload::generate(&args).unwrap();
        (args, w)
    }

    #[test]
    fn default_mode_sends_the_bodies_it_always_sent() {
        let (args, w) = workload(&[]);
        assert_eq!(
            w.collection_json(&args),
            CollectionParams::new(4, Distance::Cosine)
                .hnsw(16, 100)
                .to_json()
        );
        let FieldData::Dense { points, .. } = &w.fields[0].data else {
            panic!("default mode is one dense vector");
        };
        let old = PointStruct {
            id: PointId::Num(7),
            vector: points.get(7).to_vec(),
            payload: None,
        };
        assert_eq!(w.point_json(7), serde_json::to_value(&old).unwrap());
        assert_eq!(w.expected_indexed(), 40);
        let report_mode = serde_json::to_value(Mode::of(&args)).unwrap();
        assert_eq!(report_mode, json!({"mode": "dense"}));
    }

    #[test]
    fn named_mode_has_two_named_vectors() {
        let (args, w) = workload(&["--named", "--text-dim", "3", "--distance", "Dot"]);
        assert_eq!(
            w.collection_json(&args),
            json!({
                "vectors": {"image": {"size": 4, "distance": "Dot"},
                            "text": {"size": 3, "distance": "Dot"}},
                "hnsw_config": {"m": 16, "ef_construct": 100},
            })
        );
        let p = w.point_json(2);
        assert_eq!(p["vector"]["image"].as_array().unwrap().len(), 4);
        assert_eq!(p["vector"]["text"].as_array().unwrap().len(), 3);
        assert_eq!(w.expected_indexed(), 80);
        // `image` is the default mode's dataset.
        let (_, dense) = workload(&["--distance", "Dot"]);
        assert_eq!(dense.point_json(2)["vector"], p["vector"]["image"]);
        assert_eq!(dense.fields[0].truth, w.fields[0].truth);
    }

    #[test]
    fn sparse_and_multivector_bodies() {
        let (args, w) = workload(&["--sparse", "--idf", "--vocab", "50", "--nnz", "6"]);
        assert_eq!(
            w.collection_json(&args),
            json!({
                "vectors": {},
                "sparse_vectors": {"sparse": {"modifier": "idf"}},
                "hnsw_config": {"m": 16, "ef_construct": 100},
            })
        );
        let v = &w.point_json(0)["vector"]["sparse"];
        assert_eq!(
            v["indices"].as_array().unwrap().len(),
            v["values"].as_array().unwrap().len()
        );
        assert_eq!(
            w.fields[0].data.series(&args, true),
            [Series::SparseIndex, Series::Exact]
        );

        let (args, w) = workload(&["--multivector", "--multi-count", "3"]);
        assert_eq!(
            w.collection_json(&args)["vectors"],
            json!({"size": 4, "distance": "Cosine",
                   "multivector_config": {"comparator": "max_sim"}})
        );
        let rows = w.point_json(5)["vector"].as_array().unwrap().clone();
        assert_eq!(rows.len(), 3);
        assert!(rows.iter().all(|r| r.as_array().unwrap().len() == 4));
        assert_eq!(
            w.fields[0].data.query_json(1).as_array().unwrap().len(),
            4,
            "queries have --query-multi-count sub-vectors"
        );
    }

    #[test]
    fn modes_are_exclusive_and_idf_needs_sparse() {
        assert!(Args::try_parse_from(["shoal-bench", "--named", "--sparse"]).is_err());
        assert!(Args::try_parse_from(["shoal-bench", "--multivector", "--named"]).is_err());
        assert!(Args::try_parse_from(["shoal-bench", "--idf"]).is_err());
        assert!(Args::try_parse_from(["shoal-bench", "--sparse", "--idf"]).is_ok());
    }

    #[test]
    fn tie_aware_recall_accepts_any_point_tied_at_k() {
        // Scores: 0 → 5, 1 → 4, 2 → 3, 3 → 3 (tied with 2), 4 → 1.
        let score = |id: u64| [5.0, 4.0, 3.0, 3.0, 1.0].get(id as usize).copied();
        assert_eq!(tie_aware_recall(&[0, 1, 2], &[0, 1, 3], 3, score), 1.0);
        assert_eq!(
            tie_aware_recall(&[0, 1, 2], &[0, 1, 4], 3, score),
            2.0 / 3.0
        );
        // Duplicates and unknown ids do not count; fewer true answers than k shrink the
        // denominator; none at all is a perfect answer.
        assert_eq!(
            tie_aware_recall(&[0, 1, 2], &[0, 0, 99], 3, score),
            1.0 / 3.0
        );
        assert_eq!(tie_aware_recall(&[0], &[0, 4], 3, score), 1.0);
        assert_eq!(tie_aware_recall(&[], &[4], 3, score), 1.0);
        // Only the first k returned count.
        assert_eq!(tie_aware_recall(&[0, 1], &[4, 4, 0], 2, score), 0.0);
    }
}
