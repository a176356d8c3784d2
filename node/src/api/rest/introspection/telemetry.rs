//! `GET /telemetry` and `GET /cluster/telemetry`: Qdrant's `TelemetryData` and
//! `DistributedTelemetryData`, filled with what Shoal knows.
//!
//! By details level, as Qdrant: 0 gives the app's name, version and start time, the number of
//! collections, whether the cluster is on, and the REST request counts; 1 adds build features,
//! the system (from `/proc`, `/etc/os-release` and the data directory's file system), the
//! Raft status and per-collection aggregates; 2 adds each collection's configuration and the
//! peers; 3 adds shards (replica states, this peer's replicas with their points, vectors and
//! optimizer totals), transfers and resharding; 4 adds each replica's optimizer log.
//!
//! Where the numbers come from: collections and replicas from the applied cluster state and
//! the local shards; Raft from openraft's metrics (the consensus status is "working" only when
//! the Raft core answers a request while the telemetry is gathered); requests from the
//! Prometheus counters the REST layer keeps. Left out because Shoal does not measure them:
//! memory allocator statistics, per-collection hardware counters, vector and payload sizes,
//! segment details, per-collection request statistics (`per_collection` is accepted and has no
//! effect), and the client gRPC API's calls (`requests.grpc.responses` stays empty).
//! A request's durations are reported per endpoint only when every request to it got the same
//! status: the latency histogram is not split by status.
//!
//! `anonymize=true` hashes names and addresses (collections, vectors, shard keys, peer URIs),
//! drops collection metadata, rounds large counts and moves timestamps by up to 10 s, as
//! Qdrant's `Anonymize` does. The cluster view asks every other peer for its telemetry through
//! `PeerService.Telemetry`, in parallel, within the request's `timeout` (at most 60 s).

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use axum::extract::State;
use axum::http::StatusCode;
use futures::future::join_all;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use shoal_proto::v1::TelemetryRequest;
use shoal_proto::v1::peer_service_client::PeerServiceClient;

use crate::api::metrics::{Metrics, RequestCount};
use crate::api::rest::AppState;
use crate::api::rest::introspection::optimizations::{ReplicaId, TrackerStatus};
use crate::api::rest::introspection::{peer_request, rfc3339};
use crate::api::rest::json_body::QueryParams;
use crate::api::rest::response::{ApiError, ApiOk, ApiResult, Started};
use crate::cluster::collection::Collection;
use crate::cluster::toc::TableOfContent;
use crate::cluster::transfer::TransferProgressEntry;
use crate::consensus::{
    ClusterStateView, CollectionMeta, PeerId, ReplicaState, ReshardingDirection, ShardKey,
    TransferMethod,
};
use crate::shard::local_shard::{
    LocalShard, OptimizationOutcome, OptimizationRecord, OptimizationTotals, OptimizerStatus,
};

/// Qdrant's default `timeout`; Shoal also waits no longer than this, whatever is asked.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(60);
/// Qdrant's cluster telemetry never goes below this level (collections need their
/// configuration to be told apart).
pub const MIN_CLUSTER_DETAILS_LEVEL: usize = 2;

// ---- Qdrant's shapes ------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TelemetryData {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<AppBuildTelemetry>,
    pub collections: CollectionsTelemetry,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterTelemetry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<RequestsTelemetry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppBuildTelemetry {
    pub name: String,
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<AppFeaturesTelemetry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<RunningEnvironmentTelemetry>,
    pub startup: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppFeaturesTelemetry {
    pub debug: bool,
    pub service_debug_feature: bool,
    pub recovery_mode: bool,
    pub gpu: bool,
    pub rocksdb: bool,
    pub staging: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunningEnvironmentTelemetry {
    pub distribution: Option<String>,
    pub distribution_version: Option<String>,
    pub is_docker: bool,
    pub cores: Option<usize>,
    /// KiB: the cgroup's memory limit, or the host's memory.
    pub ram_size: Option<usize>,
    /// KiB: the file system holding the data directory.
    pub disk_size: Option<usize>,
    pub cpu_flags: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_endian: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CollectionsTelemetry {
    pub number_of_collections: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collections: Option<Vec<CollectionTelemetryEnum>>,
}

/// Full per collection from details level 2, aggregated below (untagged in JSON).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum CollectionTelemetryEnum {
    Full(Box<CollectionTelemetry>),
    Aggregated(Box<CollectionsAggregatedTelemetry>),
}

/// Told apart by `id`, which only the full form has. Not derived: serde's untagged enums
/// cannot read the peer-id keys of `replicate_states` back as numbers.
impl<'de> Deserialize<'de> for CollectionTelemetryEnum {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let value = Value::deserialize(deserializer)?;
        if value.get("id").is_some() {
            serde_json::from_value(value).map(CollectionTelemetryEnum::Full)
        } else {
            serde_json::from_value(value).map(CollectionTelemetryEnum::Aggregated)
        }
        .map_err(D::Error::custom)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CollectionTelemetry {
    pub id: String,
    /// The collection's configuration in Qdrant's `CollectionConfig` shape.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shards: Option<Vec<ReplicaSetTelemetry>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfers: Option<Vec<ShardTransferInfo>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resharding: Option<Vec<ReshardingInfo>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CollectionsAggregatedTelemetry {
    /// Vectors held by this peer's replicas.
    pub vectors: usize,
    pub optimizers_status: String,
    pub params: Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplicaSetTelemetry {
    pub id: u32,
    #[serde(default)]
    pub key: Option<ShardKey>,
    #[serde(default)]
    pub local: Option<LocalShardTelemetry>,
    pub remote: Vec<RemoteShardTelemetry>,
    pub replicate_states: BTreeMap<u64, ReplicaState>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LocalShardTelemetry {
    #[serde(default)]
    pub variant_name: Option<String>,
    /// `green` when the optimizer is idle, `yellow` while it has work.
    #[serde(default)]
    pub status: Option<String>,
    pub total_optimized_points: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_points: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_vectors: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_vectors_by_name: Option<BTreeMap<String, usize>>,
    #[serde(default)]
    pub optimizations: Option<OptimizerTelemetry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OptimizerTelemetry {
    pub status: String,
    pub optimizations: OperationDurationStatistics,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<Vec<TrackerTelemetry>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrackerTelemetry {
    pub name: String,
    pub uuid: String,
    pub segment_ids: Vec<u64>,
    pub segment_uuids: Vec<String>,
    pub status: TrackerStatus,
    pub start_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_at: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OperationDurationStatistics {
    pub count: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_count: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avg_duration_micros: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_duration_micros: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_duration_micros: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_duration_micros: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_responded: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RemoteShardTelemetry {
    pub shard_id: u32,
    pub peer_id: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardTransferInfo {
    pub shard_id: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_shard_id: Option<u32>,
    pub from: u64,
    pub to: u64,
    pub sync: bool,
    #[serde(default)]
    pub method: Option<TransferMethod>,
    /// The sender's progress; only the sending peer knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReshardingInfo {
    pub direction: ReshardingDirection,
    pub shard_id: u32,
    pub peer_id: u64,
    #[serde(default)]
    pub shard_key: Option<ShardKey>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterTelemetry {
    pub enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ClusterStatusTelemetry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peers: Option<BTreeMap<u64, PeerInfo>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resharding_enabled: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterStatusTelemetry {
    pub number_of_peers: usize,
    pub term: u64,
    pub commit: u64,
    pub pending_operations: usize,
    pub role: Option<String>,
    pub is_voter: bool,
    pub peer_id: Option<u64>,
    pub consensus_thread_status: ConsensusThreadStatus,
}

/// Qdrant's `ConsensusThreadStatus`: `working` (with `last_update`), `stopped`, or
/// `stopped_with_err` (with `err`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConsensusThreadStatus {
    pub consensus_thread_status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_update: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub err: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerInfo {
    pub uri: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RequestsTelemetry {
    pub rest: ApiTelemetry,
    pub grpc: ApiTelemetry,
}

/// Qdrant's `WebApiTelemetry` / `GrpcTelemetry`: `"METHOD /path"` → status → statistics.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ApiTelemetry {
    pub responses: BTreeMap<String, BTreeMap<u16, OperationDurationStatistics>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DistributedTelemetryData {
    pub collections: BTreeMap<String, DistributedCollectionTelemetry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<DistributedClusterTelemetry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DistributedCollectionTelemetry {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shards: Option<Vec<DistributedShardTelemetry>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reshardings: Option<Vec<ReshardingInfo>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard_transfers: Option<Vec<ShardTransferInfo>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DistributedShardTelemetry {
    pub id: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<ShardKey>,
    pub replicas: Vec<DistributedReplicaTelemetry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DistributedReplicaTelemetry {
    pub peer_id: u64,
    pub state: ReplicaState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_optimized_points: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_points: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_vectors: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_vectors_by_name: Option<BTreeMap<String, usize>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DistributedClusterTelemetry {
    pub enabled: bool,
    pub number_of_peers: Option<u64>,
    pub peers: BTreeMap<u64, DistributedPeerInfo>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DistributedPeerInfo {
    pub uri: String,
    pub responsive: bool,
    pub details: Option<DistributedPeerDetails>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DistributedPeerDetails {
    pub version: String,
    pub role: Option<String>,
    pub is_voter: bool,
    pub term: u64,
    pub commit: u64,
    pub num_pending_operations: u64,
    pub consensus_thread_status: ConsensusThreadStatus,
}

// ---- gathering ------------------------------------------------------------------------------

/// This process's telemetry id (Qdrant's: a UUID made once per process).
fn process_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| uuid::Uuid::new_v4().to_string())
}

/// When this process started: `/proc/self/stat` (field 22, in clock ticks after boot) and
/// the boot time in `/proc/stat`. Linux reports ticks in USER_HZ, which its ABI fixes at 100.
fn process_start() -> SystemTime {
    static START: OnceLock<SystemTime> = OnceLock::new();
    *START.get_or_init(|| {
        let from_proc = || -> Option<SystemTime> {
            let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
            let after_name = &stat[stat.rfind(')')? + 1..];
            let ticks: u64 = after_name.split_whitespace().nth(19)?.parse().ok()?;
            let boot: u64 = std::fs::read_to_string("/proc/stat")
                .ok()?
                .lines()
                .find_map(|l| l.strip_prefix("btime "))?
                .trim()
                .parse()
                .ok()?;
            Some(SystemTime::UNIX_EPOCH + Duration::from_millis(boot * 1000 + ticks * 10))
        };
        // Without /proc, the first telemetry request is the earliest moment known.
        from_proc().unwrap_or_else(SystemTime::now)
    })
}

fn os_release() -> (Option<String>, Option<String>) {
    let Ok(text) = std::fs::read_to_string("/etc/os-release") else {
        return (None, None);
    };
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix('='))
            .map(|v| v.trim().trim_matches('"').to_string())
    };
    (field("ID"), field("VERSION_ID"))
}

/// KiB of memory this process may use: the cgroup (v2, then v1) limit when one is set and
/// smaller, else the host's `MemTotal`.
fn ram_kib() -> Option<usize> {
    let host = std::fs::read_to_string("/proc/meminfo").ok().and_then(|t| {
        t.lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse::<usize>()
            .ok()
    });
    let limit = [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .find_map(|p| std::fs::read_to_string(p).ok()?.trim().parse::<u64>().ok())
    .map(|bytes| usize::try_from(bytes / 1024).unwrap_or(usize::MAX));
    match (host, limit) {
        (Some(h), Some(l)) => Some(h.min(l)),
        (h, l) => h.or(l),
    }
}

fn disk_kib(dir: &Path) -> Option<usize> {
    let s = rustix::fs::statvfs(dir).ok()?;
    usize::try_from(s.f_blocks.saturating_mul(s.f_frsize) / 1024).ok()
}

fn cpu_flags() -> String {
    #[allow(unused_mut)]
    let mut flags: Vec<&str> = Vec::new();
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    {
        macro_rules! detect {
            ($($f:tt),*) => {$(if std::arch::is_x86_feature_detected!($f) { flags.push($f); })*};
        }
        detect!(
            "sse",
            "sse2",
            "avx",
            "avx2",
            "fma",
            "f16c",
            "avx512f",
            "avx512vl",
            "avx512vpopcntdq"
        );
    }
    #[cfg(target_arch = "aarch64")]
    {
        if std::arch::is_aarch64_feature_detected!("neon") {
            flags.push("neon");
        }
        if std::arch::is_aarch64_feature_detected!("fp16") {
            flags.push("fp16");
        }
    }
    flags.join(",")
}

fn system(data_dir: &Path) -> RunningEnvironmentTelemetry {
    let (distribution, distribution_version) = os_release();
    RunningEnvironmentTelemetry {
        distribution,
        distribution_version,
        is_docker: Path::new("/.dockerenv").exists(),
        cores: std::thread::available_parallelism().ok().map(|n| n.get()),
        ram_size: ram_kib(),
        disk_size: disk_kib(data_dir),
        cpu_flags: cpu_flags(),
        cpu_endian: Some(
            if cfg!(target_endian = "little") {
                "little"
            } else {
                "big"
            }
            .into(),
        ),
    }
}

fn app(level: usize, data_dir: &Path) -> AppBuildTelemetry {
    AppBuildTelemetry {
        name: env!("CARGO_PKG_NAME").to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        features: (level >= 1).then_some(AppFeaturesTelemetry {
            debug: cfg!(debug_assertions),
            service_debug_feature: false,
            recovery_mode: false,
            gpu: false,
            rocksdb: false,
            staging: false,
        }),
        system: (level >= 1).then(|| system(data_dir)),
        startup: rfc3339(process_start()),
    }
}

/// Optimizer totals as Qdrant's `OperationDurationStatistics` (done ones are counted,
/// cancelled ones are failures).
fn optimizer_statistics(totals: &OptimizationTotals) -> OperationDurationStatistics {
    let micros = |d: Duration| d.as_secs_f64() as f32 * 1e6;
    OperationDurationStatistics {
        count: totals.done,
        fail_count: (totals.cancelled > 0).then_some(totals.cancelled),
        avg_duration_micros: (totals.done > 0).then(|| micros(totals.total) / totals.done as f32),
        min_duration_micros: totals.min.map(micros),
        max_duration_micros: totals.max.map(micros),
        total_duration_micros: Some(u64::try_from(totals.total.as_micros()).unwrap_or(u64::MAX)),
        last_responded: totals.last_finished_at.map(rfc3339),
    }
}

fn tracker(replica: &ReplicaId, record: &OptimizationRecord) -> TrackerTelemetry {
    let optimization = replica.optimization(record);
    let end = match record.outcome {
        OptimizationOutcome::Running => None,
        OptimizationOutcome::Done { elapsed } | OptimizationOutcome::Cancelled { elapsed } => {
            Some(rfc3339(record.started_at + elapsed))
        }
    };
    TrackerTelemetry {
        name: optimization.optimizer,
        uuid: optimization.uuid,
        segment_ids: record.segments.iter().map(|s| s.id).collect(),
        segment_uuids: optimization.segments.into_iter().map(|s| s.uuid).collect(),
        status: optimization.status,
        start_at: rfc3339(record.started_at),
        end_at: end,
    }
}

/// One local replica. Blocking: counts vectors by scanning the shard.
fn local_shard(shard: &LocalShard, replica: &ReplicaId, level: usize) -> LocalShardTelemetry {
    let stats = shard.stats();
    let view = shard.optimizer_view();
    let by_name = shard.vector_counts();
    LocalShardTelemetry {
        variant_name: Some("local".into()),
        status: Some(
            match shard.optimizer_status() {
                OptimizerStatus::Idle => "green",
                OptimizerStatus::Busy => "yellow",
                OptimizerStatus::Paused => "grey",
            }
            .into(),
        ),
        total_optimized_points: view.totals.optimized_points,
        num_points: Some(stats.points),
        num_vectors: Some(by_name.values().sum()),
        num_vectors_by_name: Some(by_name),
        optimizations: Some(OptimizerTelemetry {
            status: "ok".into(),
            optimizations: optimizer_statistics(&view.totals),
            log: (level >= 4).then(|| {
                view.running
                    .iter()
                    .rev()
                    .chain(&view.completed)
                    .map(|r| tracker(replica, r))
                    .collect()
            }),
        }),
    }
}

/// A one-line summary of a transfer this peer sends.
fn transfer_comment(entry: &TransferProgressEntry) -> String {
    let p = &entry.progress;
    format!(
        "{}: {}/{} points ({:.1}%), {:.0} points/s",
        p.stage, p.points_done, p.points_total, p.percent, p.points_per_second
    )
}

/// One collection at `level` (at least 1). Blocking.
fn collection(
    collection: &Collection,
    meta: Option<&CollectionMeta>,
    this_peer: PeerId,
    level: usize,
    progress: &[TransferProgressEntry],
) -> CollectionTelemetryEnum {
    let config = collection.config();
    let replica = |shard: u32| ReplicaId {
        collection_uuid: collection.uuid(),
        peer: this_peer,
        shard,
    };
    if level < 2 {
        let vectors = collection
            .local_shards()
            .iter()
            .map(|(_, s)| s.vector_counts().values().sum::<usize>())
            .sum();
        return CollectionTelemetryEnum::Aggregated(Box::new(CollectionsAggregatedTelemetry {
            vectors,
            optimizers_status: "ok".into(),
            params: serde_json::to_value(&config.params).unwrap_or(Value::Null),
        }));
    }
    let mut full = CollectionTelemetry {
        id: collection.name().to_string(),
        config: serde_json::to_value(&*config).ok(),
        shards: None,
        transfers: None,
        resharding: None,
    };
    if level >= 3
        && let Some(meta) = meta
    {
        full.shards = Some(
            meta.shards
                .iter()
                .map(|(id, shard)| ReplicaSetTelemetry {
                    id: id.0,
                    key: shard.shard_key.clone(),
                    local: shard
                        .replicas
                        .contains_key(&this_peer)
                        .then(|| collection.local_shard(id.0))
                        .flatten()
                        .map(|s| local_shard(&s, &replica(id.0), level)),
                    remote: shard
                        .replicas
                        .keys()
                        .filter(|p| **p != this_peer)
                        .map(|p| RemoteShardTelemetry {
                            shard_id: id.0,
                            peer_id: p.0,
                        })
                        .collect(),
                    replicate_states: shard.replicas.iter().map(|(p, s)| (p.0, *s)).collect(),
                })
                .collect(),
        );
        full.transfers = Some(
            meta.transfers
                .iter()
                .map(|t| ShardTransferInfo {
                    shard_id: t.shard.0,
                    to_shard_id: t.to_shard.map(|s| s.0),
                    from: t.from.0,
                    to: t.to.0,
                    sync: t.sync,
                    method: Some(t.method),
                    comment: progress
                        .iter()
                        .find(|p| {
                            p.shard_id == t.shard.0
                                && p.to_shard_id == t.to_shard.map(|s| s.0)
                                && p.from == t.from.0
                                && p.to == t.to.0
                        })
                        .map(transfer_comment),
                })
                .collect(),
        );
        full.resharding = Some(
            meta.resharding
                .iter()
                .map(|r| ReshardingInfo {
                    direction: r.direction,
                    shard_id: r.shard.0,
                    peer_id: r.peer.0,
                    shard_key: r.shard_key.clone(),
                })
                .collect(),
        );
    }
    CollectionTelemetryEnum::Full(Box::new(full))
}

/// The peers of the cluster: Raft members, then the cluster state's entries (which win).
fn known_peers(toc: &TableOfContent, view: &ClusterStateView) -> BTreeMap<u64, String> {
    let mut peers: BTreeMap<u64, String> = BTreeMap::new();
    if let Some(node) = toc.env().metadata.consensus() {
        for (id, member) in node.raft_status().members {
            peers.insert(id, member.uri);
        }
    }
    for (id, info) in &view.state.peers {
        peers.insert(id.0, info.uri.clone());
    }
    peers
}

/// Whether the Raft core answers now (Qdrant's consensus thread status).
async fn consensus_status(
    node: &crate::consensus::raft_node::ConsensusNode,
) -> ConsensusThreadStatus {
    let probe =
        tokio::time::timeout(Duration::from_secs(1), node.raft.with_raft_state(|_| ())).await;
    match probe {
        Ok(Ok(())) => ConsensusThreadStatus {
            consensus_thread_status: "working".into(),
            last_update: Some(rfc3339(SystemTime::now())),
            err: None,
        },
        Ok(Err(fatal)) => ConsensusThreadStatus {
            consensus_thread_status: "stopped_with_err".into(),
            last_update: None,
            err: Some(fatal.to_string()),
        },
        Err(_) => ConsensusThreadStatus {
            consensus_thread_status: "stopped_with_err".into(),
            last_update: None,
            err: Some("the Raft core did not answer within 1 s".into()),
        },
    }
}

async fn cluster(toc: &TableOfContent, view: &ClusterStateView, level: usize) -> ClusterTelemetry {
    let Some(node) = toc.env().metadata.consensus() else {
        return ClusterTelemetry {
            enabled: false,
            status: None,
            peers: None,
            resharding_enabled: Some(true),
        };
    };
    let peers = known_peers(toc, view);
    let status = if level >= 1 {
        let raft = node.raft_status();
        Some(ClusterStatusTelemetry {
            number_of_peers: peers.len(),
            term: raft.term,
            commit: raft.commit,
            pending_operations: usize::try_from(raft.last_log_index.saturating_sub(raft.commit))
                .unwrap_or(usize::MAX),
            role: match raft.role {
                "Leader" | "Follower" | "Candidate" => Some(raft.role.to_string()),
                // A learner follows the leader without a vote, as a non-voting Qdrant follower.
                "Learner" => Some("Follower".to_string()),
                _ => None,
            },
            is_voter: raft.is_voter,
            peer_id: Some(node.peer_id.0),
            consensus_thread_status: consensus_status(node).await,
        })
    } else {
        None
    };
    ClusterTelemetry {
        enabled: true,
        status,
        peers: (level >= 2).then(|| {
            peers
                .into_iter()
                .map(|(id, uri)| (id, PeerInfo { uri }))
                .collect()
        }),
        resharding_enabled: Some(true),
    }
}

/// The REST request counters as Qdrant's `WebApiTelemetry`.
pub fn rest_requests(counts: &[RequestCount], level: usize) -> ApiTelemetry {
    let mut responses: BTreeMap<String, BTreeMap<u16, OperationDurationStatistics>> =
        BTreeMap::new();
    for c in counts {
        let count = usize::try_from(c.count).unwrap_or(usize::MAX);
        // The latency histogram is per endpoint: its time belongs to one status only when
        // every request got that status.
        let timed = c.count > 0 && c.count == c.endpoint_count;
        let total_micros = c.endpoint_seconds * 1e6;
        responses
            .entry(format!("{} {}", c.method, c.endpoint))
            .or_default()
            .insert(
                c.status,
                OperationDurationStatistics {
                    count,
                    avg_duration_micros: timed.then(|| (total_micros / c.count as f64) as f32),
                    total_duration_micros: (timed && level >= 1).then_some(total_micros as u64),
                    ..OperationDurationStatistics::default()
                },
            );
    }
    ApiTelemetry { responses }
}

/// This peer's telemetry at `level`; `metrics` adds the REST request counters.
pub async fn collect(
    toc: &std::sync::Arc<TableOfContent>,
    metrics: Option<&Metrics>,
    level: usize,
) -> Result<TelemetryData, ApiError> {
    let view = toc.env().metadata.view();
    let this_peer = toc.env().this_peer();
    let cluster = cluster(toc, &view, level).await;
    let collections = {
        let (toc, view) = (std::sync::Arc::clone(toc), std::sync::Arc::clone(&view));
        tokio::task::spawn_blocking(move || {
            let names = toc.names();
            let collections = (level >= 1).then(|| {
                names
                    .iter()
                    .filter_map(|name| toc.get(name).ok())
                    .map(|c| {
                        let progress = toc.transfers().progress(c.name());
                        collection(
                            &c,
                            view.state.collections.get(c.name()),
                            this_peer,
                            level,
                            &progress,
                        )
                    })
                    .collect()
            });
            CollectionsTelemetry {
                number_of_collections: names.len(),
                collections,
            }
        })
        .await
        .map_err(|e| ApiError::internal(format!("telemetry task failed: {e}")))?
    };
    Ok(TelemetryData {
        id: process_id().to_string(),
        app: Some(app(level, toc.data_dir())),
        collections,
        cluster: Some(cluster),
        requests: metrics.map(|m| RequestsTelemetry {
            rest: rest_requests(&m.request_counts(), level),
            grpc: ApiTelemetry::default(),
        }),
    })
}

// ---- anonymizing ------------------------------------------------------------------------------

/// Qdrant's anonymized string: the decimal hash of the string.
fn hash_str(s: &str) -> String {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    s.hash(&mut hasher);
    hasher.finish().to_string()
}

/// Qdrant's anonymized count: digits beyond the fifth significant one are zeroed.
fn round_count(n: usize) -> usize {
    let log10 = (n as f32).log10().round() as u32;
    if n > 0 && log10 > 4 {
        let coeff = 10usize.pow(log10 - 4);
        n / coeff * coeff
    } else {
        n
    }
}

/// Qdrant's anonymized timestamp: moved by up to 10 s either way.
fn jitter(t: &str) -> String {
    let Ok(parsed) = chrono::DateTime::parse_from_rfc3339(t) else {
        return t.to_string();
    };
    let shift = chrono::Duration::seconds(rand::random_range(-10..=10));
    (parsed.with_timezone(&chrono::Utc) + shift)
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

fn hash_key(key: &ShardKey) -> ShardKey {
    match key {
        ShardKey::Keyword(k) => ShardKey::Keyword(hash_str(k)),
        ShardKey::Number(n) => ShardKey::Number(*n),
    }
}

/// A collection configuration without its metadata and with its vector names hashed.
fn anonymize_config(config: &Value) -> Value {
    let mut config = config.clone();
    if let Some(obj) = config.as_object_mut() {
        obj.remove("metadata");
        obj.remove("uuid");
        if let Some(params) = obj.get_mut("params") {
            *params = anonymize_params(params);
        }
    }
    config
}

fn anonymize_params(params: &Value) -> Value {
    let mut params = params.clone();
    let hash_keys = |v: &mut Value| {
        if let Some(map) = v.as_object_mut() {
            *map = std::mem::take(map)
                .into_iter()
                .map(|(k, v)| (hash_str(&k), v))
                .collect();
        }
    };
    if let Some(obj) = params.as_object_mut() {
        // Named vectors are a map of name → parameters; one unnamed vector is its parameters.
        if let Some(vectors) = obj.get_mut("vectors")
            && vectors.get("size").is_none()
        {
            hash_keys(vectors);
        }
        if let Some(sparse) = obj.get_mut("sparse_vectors") {
            hash_keys(sparse);
        }
    }
    params
}

fn anonymize_statistics(s: &OperationDurationStatistics) -> OperationDurationStatistics {
    OperationDurationStatistics {
        count: round_count(s.count),
        fail_count: s.fail_count.map(round_count),
        last_responded: s.last_responded.as_deref().map(jitter),
        ..s.clone()
    }
}

fn anonymize_local(l: &LocalShardTelemetry) -> LocalShardTelemetry {
    LocalShardTelemetry {
        total_optimized_points: round_count(l.total_optimized_points),
        num_points: l.num_points.map(round_count),
        num_vectors: l.num_vectors.map(round_count),
        num_vectors_by_name: l.num_vectors_by_name.as_ref().map(|m| {
            m.iter()
                .map(|(k, v)| (hash_str(k), round_count(*v)))
                .collect()
        }),
        optimizations: l.optimizations.as_ref().map(|o| OptimizerTelemetry {
            status: o.status.clone(),
            optimizations: anonymize_statistics(&o.optimizations),
            log: o.log.as_ref().map(|log| {
                log.iter()
                    .map(|t| TrackerTelemetry {
                        uuid: hash_str(&t.uuid),
                        segment_uuids: t.segment_uuids.iter().map(|u| hash_str(u)).collect(),
                        start_at: jitter(&t.start_at),
                        end_at: t.end_at.as_deref().map(jitter),
                        ..t.clone()
                    })
                    .collect()
            }),
        }),
        ..l.clone()
    }
}

impl TelemetryData {
    /// What `anonymize=true` answers (Qdrant's `Anonymize`): the telemetry id, versions,
    /// peer ids, Raft numbers and flags stay; names, addresses and metadata do not.
    pub fn anonymize(&self) -> TelemetryData {
        let collections = CollectionsTelemetry {
            number_of_collections: self.collections.number_of_collections,
            collections: self.collections.collections.as_ref().map(|list| {
                list.iter()
                    .map(|c| match c {
                        CollectionTelemetryEnum::Full(c) => {
                            CollectionTelemetryEnum::Full(Box::new(CollectionTelemetry {
                                id: hash_str(&c.id),
                                config: c.config.as_ref().map(anonymize_config),
                                shards: c.shards.as_ref().map(|shards| {
                                    shards
                                        .iter()
                                        .map(|s| ReplicaSetTelemetry {
                                            key: s.key.as_ref().map(hash_key),
                                            local: s.local.as_ref().map(anonymize_local),
                                            ..s.clone()
                                        })
                                        .collect()
                                }),
                                transfers: c.transfers.as_ref().map(|ts| {
                                    ts.iter()
                                        .map(|t| ShardTransferInfo {
                                            comment: t.comment.as_deref().map(hash_str),
                                            ..t.clone()
                                        })
                                        .collect()
                                }),
                                resharding: c.resharding.as_ref().map(|rs| {
                                    rs.iter()
                                        .map(|r| ReshardingInfo {
                                            shard_key: r.shard_key.as_ref().map(hash_key),
                                            ..r.clone()
                                        })
                                        .collect()
                                }),
                            }))
                        }
                        CollectionTelemetryEnum::Aggregated(a) => {
                            CollectionTelemetryEnum::Aggregated(Box::new(
                                CollectionsAggregatedTelemetry {
                                    vectors: round_count(a.vectors),
                                    optimizers_status: a.optimizers_status.clone(),
                                    params: anonymize_params(&a.params),
                                },
                            ))
                        }
                    })
                    .collect()
            }),
        };
        TelemetryData {
            id: self.id.clone(),
            app: self.app.as_ref().map(|a| AppBuildTelemetry {
                system: a.system.as_ref().map(|s| RunningEnvironmentTelemetry {
                    ram_size: s.ram_size.map(round_count),
                    disk_size: s.disk_size.map(round_count),
                    ..s.clone()
                }),
                startup: jitter(&a.startup),
                ..a.clone()
            }),
            collections,
            cluster: self.cluster.as_ref().map(|c| ClusterTelemetry {
                peers: c.peers.as_ref().map(|peers| {
                    peers
                        .iter()
                        .map(|(id, p)| {
                            (
                                *id,
                                PeerInfo {
                                    uri: hash_str(&p.uri),
                                },
                            )
                        })
                        .collect()
                }),
                ..c.clone()
            }),
            requests: self.requests.as_ref().map(|r| {
                let anonymize = |api: &ApiTelemetry| ApiTelemetry {
                    responses: api
                        .responses
                        .iter()
                        .map(|(k, by_status)| {
                            (
                                k.clone(),
                                by_status
                                    .iter()
                                    .map(|(s, stats)| (*s, anonymize_statistics(stats)))
                                    .collect(),
                            )
                        })
                        .collect(),
                };
                RequestsTelemetry {
                    rest: anonymize(&r.rest),
                    grpc: anonymize(&r.grpc),
                }
            }),
        }
    }

    fn raft_position(&self) -> Option<(u64, u64)> {
        let status = self.cluster.as_ref()?.status.as_ref()?;
        Some((status.term, status.commit))
    }

    fn collection(&self, id: &str) -> Option<&CollectionTelemetry> {
        self.collections
            .collections
            .as_ref()?
            .iter()
            .find_map(|c| match c {
                CollectionTelemetryEnum::Full(c) if c.id == id => Some(c.as_ref()),
                _ => None,
            })
    }
}

// ---- the cluster view -----------------------------------------------------------------------

/// Qdrant's `DistributedTelemetryData` from the peers' telemetry (`by_peer`, this peer's own
/// included) and the peers that did not answer (`missing`). The telemetry of the peer with the
/// newest Raft position (term, then commit; this peer's on a tie) says which collections,
/// shards, replicas and peers there are; each replica's numbers come from its own peer.
pub fn aggregate(
    this_peer: u64,
    by_peer: &BTreeMap<u64, TelemetryData>,
    missing: &[u64],
) -> DistributedTelemetryData {
    let Some((&base_peer, base)) = by_peer
        .iter()
        .max_by_key(|(peer, t)| (t.raft_position(), **peer == this_peer))
    else {
        return DistributedTelemetryData::default();
    };
    let mut collections = BTreeMap::new();
    for c in base.collections.collections.iter().flatten() {
        let CollectionTelemetryEnum::Full(c) = c else {
            continue;
        };
        let shards = c.shards.as_ref().map(|shards| {
            shards
                .iter()
                .map(|s| DistributedShardTelemetry {
                    id: s.id,
                    key: s.key.clone(),
                    replicas: s
                        .replicate_states
                        .iter()
                        .map(|(peer, state)| {
                            let local = by_peer
                                .get(peer)
                                .and_then(|t| t.collection(&c.id))
                                .and_then(|c| c.shards.as_ref())
                                .and_then(|shards| shards.iter().find(|r| r.id == s.id))
                                .and_then(|r| r.local.as_ref());
                            DistributedReplicaTelemetry {
                                peer_id: *peer,
                                state: *state,
                                status: local.and_then(|l| l.status.clone()),
                                total_optimized_points: local.map(|l| l.total_optimized_points),
                                num_points: local.and_then(|l| l.num_points),
                                num_vectors: local.and_then(|l| l.num_vectors),
                                num_vectors_by_name: local
                                    .and_then(|l| l.num_vectors_by_name.clone()),
                            }
                        })
                        .collect(),
                })
                .collect()
        });
        // A transfer as its sender reports it (with its progress), else as the base does.
        let transfers: Vec<ShardTransferInfo> = c
            .transfers
            .iter()
            .flatten()
            .map(|t| {
                by_peer
                    .get(&t.from)
                    .and_then(|p| p.collection(&c.id))
                    .and_then(|c| c.transfers.as_ref())
                    .and_then(|ts| {
                        ts.iter().find(|o| {
                            (o.shard_id, o.to_shard_id, o.from, o.to)
                                == (t.shard_id, t.to_shard_id, t.from, t.to)
                        })
                    })
                    .unwrap_or(t)
                    .clone()
            })
            .collect();
        let reshardings: Vec<ReshardingInfo> = c.resharding.iter().flatten().cloned().collect();
        collections.insert(
            c.id.clone(),
            DistributedCollectionTelemetry {
                id: c.id.clone(),
                shards,
                reshardings: (!reshardings.is_empty()).then_some(reshardings),
                shard_transfers: (!transfers.is_empty()).then_some(transfers),
            },
        );
    }
    let cluster = base.cluster.as_ref().map(|cluster| {
        let mut peers: BTreeMap<u64, DistributedPeerInfo> = cluster
            .peers
            .iter()
            .flatten()
            .map(|(id, info)| {
                let details = by_peer.get(id).and_then(|t| {
                    let status = t.cluster.as_ref()?.status.as_ref()?;
                    Some(DistributedPeerDetails {
                        version: t.app.as_ref()?.version.clone(),
                        role: status.role.clone(),
                        is_voter: status.is_voter,
                        term: status.term,
                        commit: status.commit,
                        num_pending_operations: status.pending_operations as u64,
                        consensus_thread_status: status.consensus_thread_status.clone(),
                    })
                });
                let info = DistributedPeerInfo {
                    uri: info.uri.clone(),
                    responsive: by_peer.contains_key(id) && !missing.contains(id),
                    details,
                };
                (*id, info)
            })
            .collect();
        // A peer that did not answer and that the base does not list is still reported.
        for id in missing {
            peers.entry(*id).or_insert_with(|| DistributedPeerInfo {
                uri: String::new(),
                responsive: false,
                details: None,
            });
        }
        DistributedClusterTelemetry {
            enabled: cluster.enabled,
            number_of_peers: cluster.status.as_ref().map(|s| s.number_of_peers as u64),
            peers,
        }
    });
    tracing::debug!(
        base_peer,
        peers = by_peer.len(),
        "cluster telemetry aggregated"
    );
    DistributedTelemetryData {
        collections,
        cluster,
    }
}

/// Asks the peer at `uri` for its telemetry at `level`.
async fn remote_telemetry(
    toc: &TableOfContent,
    uri: &str,
    level: usize,
    timeout: Duration,
) -> Result<TelemetryData, String> {
    let channel = toc.env().channel(uri).map_err(|e| e.to_string())?;
    let request = peer_request(
        toc,
        TelemetryRequest {
            details_level: u32::try_from(level).unwrap_or(u32::MAX),
        },
        timeout,
    );
    let answer = tokio::time::timeout(timeout, PeerServiceClient::new(channel).telemetry(request))
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))?
        .map_err(|s| s.message().to_string())?;
    serde_json::from_slice(&answer.into_inner().telemetry_json).map_err(|e| e.to_string())
}

// ---- handlers -------------------------------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
pub struct TelemetryParams {
    pub anonymize: Option<bool>,
    pub details_level: Option<usize>,
    /// Accepted for compatibility; Shoal keeps no per-collection request statistics.
    pub per_collection: Option<bool>,
    pub timeout: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
pub struct ClusterTelemetryParams {
    pub details_level: Option<usize>,
    pub timeout: Option<u64>,
}

/// The request's `timeout` (at least 1 s, as Qdrant validates it), capped at [`MAX_TIMEOUT`].
fn timeout_of(seconds: Option<u64>) -> Result<Duration, ApiError> {
    match seconds {
        Some(0) => Err(ApiError::unprocessable(
            "Validation error in query parameters: timeout: value must be at least 1",
        )),
        Some(s) => Ok(Duration::from_secs(s).min(MAX_TIMEOUT)),
        None => Ok(MAX_TIMEOUT),
    }
}

fn timed_out(what: &str, timeout: Duration) -> ApiError {
    ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        format!(
            "Timeout error: {what} did not finish within {} s",
            timeout.as_secs()
        ),
    )
}

/// `GET /telemetry`.
pub async fn telemetry(
    State(state): State<AppState>,
    QueryParams(params): QueryParams<TelemetryParams>,
    started: Started,
) -> ApiResult<TelemetryData> {
    let timeout = timeout_of(params.timeout)?;
    let level = params.details_level.unwrap_or(0);
    let data = tokio::time::timeout(timeout, collect(&state.toc, Some(&state.metrics), level))
        .await
        .map_err(|_| timed_out("telemetry", timeout))??;
    let data = if params.anonymize.unwrap_or(false) {
        data.anonymize()
    } else {
        data
    };
    Ok(ApiOk(data, started))
}

/// `GET /cluster/telemetry`.
pub async fn cluster_telemetry(
    State(state): State<AppState>,
    QueryParams(params): QueryParams<ClusterTelemetryParams>,
    started: Started,
) -> ApiResult<DistributedTelemetryData> {
    let timeout = timeout_of(params.timeout)?;
    let level = params
        .details_level
        .unwrap_or(0)
        .max(MIN_CLUSTER_DETAILS_LEVEL);
    let this_peer = state.metadata.peer_id().0;
    let own = tokio::time::timeout(timeout, collect(&state.toc, None, level))
        .await
        .map_err(|_| timed_out("this peer's telemetry", timeout))??;
    let view = state.metadata.view();
    let others: Vec<(u64, String)> = known_peers(&state.toc, &view)
        .into_iter()
        .filter(|(id, _)| *id != this_peer)
        .collect();
    let answers = join_all(
        others
            .iter()
            .map(|(_, uri)| remote_telemetry(&state.toc, uri, level, timeout)),
    )
    .await;
    let mut by_peer = BTreeMap::from([(this_peer, own)]);
    let mut missing = Vec::new();
    for ((peer, uri), answer) in others.iter().zip(answers) {
        match answer {
            Ok(t) => {
                by_peer.insert(*peer, t);
            }
            Err(e) => {
                tracing::warn!(peer, %uri, error = %e, "a peer did not report its telemetry");
                missing.push(*peer);
            }
        }
    }
    Ok(ApiOk(aggregate(this_peer, &by_peer, &missing), started))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_rounded_as_qdrant_rounds_them() {
        assert_eq!(round_count(0), 0);
        assert_eq!(round_count(9_999), 9_999);
        assert_eq!(round_count(123_456), 123_450);
        assert_eq!(round_count(98_765_432), 98_760_000);
        assert_eq!(hash_str("docs"), hash_str("docs"));
        assert_ne!(hash_str("docs"), "docs");
    }

    fn request(method: &str, endpoint: &str, status: u16, count: u64, total: u64) -> RequestCount {
        RequestCount {
            method: method.into(),
            endpoint: endpoint.into(),
            status,
            count,
            endpoint_count: total,
            endpoint_seconds: 0.5,
        }
    }

    #[test]
    fn request_durations_are_given_only_where_they_are_known() {
        let counts = [
            request("GET", "/collections", 200, 4, 4),
            request(
                "POST",
                "/collections/{collection_name}/points/search",
                200,
                3,
                4,
            ),
            request(
                "POST",
                "/collections/{collection_name}/points/search",
                404,
                1,
                4,
            ),
        ];
        let api = rest_requests(&counts, 1);
        let list = &api.responses["GET /collections"][&200];
        assert_eq!(list.count, 4);
        assert_eq!(list.avg_duration_micros, Some(125_000.0));
        assert_eq!(list.total_duration_micros, Some(500_000));
        let search = &api.responses["POST /collections/{collection_name}/points/search"];
        assert_eq!(search[&200].count, 3);
        assert_eq!(search[&404].count, 1);
        assert!(
            search[&200].avg_duration_micros.is_none(),
            "the split per status is unknown"
        );
        assert!(
            rest_requests(&counts, 0).responses["GET /collections"][&200]
                .total_duration_micros
                .is_none()
        );
    }

    fn peer_telemetry(peer: u64, term: u64, commit: u64, points: usize) -> TelemetryData {
        let replicas = BTreeMap::from([(1, ReplicaState::Active), (2, ReplicaState::Partial)]);
        TelemetryData {
            id: format!("p{peer}"),
            app: Some(AppBuildTelemetry {
                name: "shoal-node".into(),
                version: "0.1.0".into(),
                features: None,
                system: None,
                startup: "2024-01-01T00:00:00.000000Z".into(),
            }),
            collections: CollectionsTelemetry {
                number_of_collections: 1,
                collections: Some(vec![CollectionTelemetryEnum::Full(Box::new(
                    CollectionTelemetry {
                        id: "docs".into(),
                        config: None,
                        shards: Some(vec![ReplicaSetTelemetry {
                            id: 0,
                            key: Some(ShardKey::Keyword("tenant".into())),
                            local: Some(LocalShardTelemetry {
                                variant_name: Some("local".into()),
                                status: Some("green".into()),
                                total_optimized_points: 0,
                                num_points: Some(points),
                                num_vectors: Some(points),
                                num_vectors_by_name: None,
                                optimizations: None,
                            }),
                            remote: vec![],
                            replicate_states: replicas,
                        }]),
                        transfers: Some(vec![ShardTransferInfo {
                            shard_id: 0,
                            to_shard_id: None,
                            from: 1,
                            to: 2,
                            sync: true,
                            method: Some(TransferMethod::StreamRecords),
                            comment: (peer == 1).then(|| "copying".to_string()),
                        }]),
                        resharding: Some(vec![]),
                    },
                ))]),
            },
            cluster: Some(ClusterTelemetry {
                enabled: true,
                status: Some(ClusterStatusTelemetry {
                    number_of_peers: 3,
                    term,
                    commit,
                    pending_operations: 0,
                    role: Some("Follower".into()),
                    is_voter: true,
                    peer_id: Some(peer),
                    consensus_thread_status: ConsensusThreadStatus {
                        consensus_thread_status: "working".into(),
                        last_update: Some("2024-01-01T00:00:00.000000Z".into()),
                        err: None,
                    },
                }),
                peers: Some(BTreeMap::from([
                    (
                        1,
                        PeerInfo {
                            uri: "http://a".into(),
                        },
                    ),
                    (
                        2,
                        PeerInfo {
                            uri: "http://b".into(),
                        },
                    ),
                    (
                        3,
                        PeerInfo {
                            uri: "http://c".into(),
                        },
                    ),
                ])),
                resharding_enabled: Some(true),
            }),
            requests: None,
        }
    }

    #[test]
    fn the_cluster_view_takes_each_replica_from_its_own_peer() {
        let by_peer = BTreeMap::from([
            (1, peer_telemetry(1, 5, 10, 100)),
            (2, peer_telemetry(2, 5, 12, 40)),
        ]);
        let view = aggregate(2, &by_peer, &[3]);
        let docs = &view.collections["docs"];
        let shard = &docs.shards.as_ref().unwrap()[0];
        assert_eq!(shard.key, Some(ShardKey::Keyword("tenant".into())));
        assert_eq!(shard.replicas[0].num_points, Some(100));
        assert_eq!(shard.replicas[1].num_points, Some(40));
        assert_eq!(shard.replicas[1].state, ReplicaState::Partial);
        let transfers = docs.shard_transfers.as_ref().unwrap();
        assert_eq!(
            transfers[0].comment.as_deref(),
            Some("copying"),
            "the sender's report of a transfer wins"
        );
        assert!(docs.reshardings.is_none());
        let cluster = view.cluster.unwrap();
        assert_eq!(cluster.number_of_peers, Some(3));
        assert!(cluster.peers[&1].responsive && cluster.peers[&2].responsive);
        assert!(!cluster.peers[&3].responsive && cluster.peers[&3].details.is_none());
        assert_eq!(cluster.peers[&2].details.as_ref().unwrap().commit, 12);
    }

    #[test]
    fn anonymizing_hides_names_and_keeps_structure() {
        let t = peer_telemetry(1, 1, 1, 123_456);
        let a = t.anonymize();
        assert_eq!(a.id, t.id);
        let json = serde_json::to_string(&a).unwrap();
        assert!(!json.contains("docs") && !json.contains("http://a") && !json.contains("tenant"));
        let CollectionTelemetryEnum::Full(c) = &a.collections.collections.as_ref().unwrap()[0]
        else {
            panic!("full telemetry expected");
        };
        let local = c.shards.as_ref().unwrap()[0].local.as_ref().unwrap();
        assert_eq!(local.num_points, Some(123_450));
        assert_eq!(
            a.cluster.as_ref().unwrap().status,
            t.cluster.as_ref().unwrap().status,
            "Raft numbers stay"
        );
        let config = serde_json::json!({"params": {"vectors": {"text": {"size": 4}}}, "metadata": {"owner": "x"}});
        let anonymized = anonymize_config(&config);
        assert!(anonymized.get("metadata").is_none());
        assert!(anonymized["params"]["vectors"].get("text").is_none());
        let single = serde_json::json!({"vectors": {"size": 4, "distance": "Cosine"}});
        assert_eq!(
            anonymize_params(&single),
            single,
            "one unnamed vector has no name"
        );
    }

    #[test]
    fn telemetry_round_trips_through_json() {
        let t = peer_telemetry(1, 2, 3, 4);
        let back: TelemetryData = serde_json::from_slice(&serde_json::to_vec(&t).unwrap()).unwrap();
        assert_eq!(back, t);
    }
}
