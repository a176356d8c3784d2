//! `GET /collections/{c}/optimizations`: Qdrant's `OptimizationsResponse` over every replica
//! of the collection, as Qdrant answers it: this peer's replicas from their optimizer logs,
//! other peers' replicas through `PeerService.Optimizations` (each peer answers for its own).
//!
//! What a replica reports is what its optimizer really does (see
//! [`LocalShard::optimizer_view`]): the running step (`indexing`, `vacuum` or `merge`), the
//! last 16 finished ones since the shard was opened, and the queue estimated with the
//! optimizer's own candidate rules. Shoal's optimizer reports no progress inside a step, so
//! `progress` carries times but no `done` / `total`.

use std::time::Duration;

use axum::extract::State;
use futures::future::join_all;
use serde::{Deserialize, Serialize};
use shoal_proto::v1::OptimizationsRequest;
use shoal_proto::v1::peer_service_client::PeerServiceClient;

use crate::api::rest::AppState;
use crate::api::rest::introspection::{local_uuid, peer_request, rfc3339};
use crate::api::rest::json_body::{PathParams, QueryParams};
use crate::api::rest::response::{ApiError, ApiOk, ApiResult, Started};
use crate::cluster::collection::Collection;
use crate::cluster::toc::TableOfContent;
use crate::consensus::PeerId;
use crate::shard::local_shard::{
    OptimizationOutcome, OptimizationRecord, OptimizerView, SegmentBrief,
};

/// Qdrant's default `completed_limit`.
pub const DEFAULT_COMPLETED_LIMIT: usize = 16;
/// How long another peer may take to report its replicas' optimizations.
const PEER_PATIENCE: Duration = Duration::from_secs(5);

#[derive(Debug, Default, Deserialize)]
pub struct OptimizationsParams {
    pub with: Option<String>,
    pub completed_limit: Option<usize>,
}

/// Which optional parts an answer carries (Qdrant's `OptimizationsRequestOptions`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Options {
    pub queued: bool,
    /// `Some(limit)` when `completed` was asked for.
    pub completed_limit: Option<usize>,
    pub idle_segments: bool,
}

impl Options {
    /// Reads `with` (a comma-separated list of `queued`, `completed`, `idle_segments`) as
    /// Qdrant does: blanks are ignored, anything else is refused.
    pub fn parse(with: Option<&str>, completed_limit: Option<usize>) -> Result<Options, String> {
        let mut options = Options::default();
        for field in with.unwrap_or("").split(',') {
            match field.trim() {
                "" => {}
                "queued" => options.queued = true,
                "completed" => {
                    options.completed_limit =
                        Some(completed_limit.unwrap_or(DEFAULT_COMPLETED_LIMIT))
                }
                "idle_segments" => options.idle_segments = true,
                other => return Err(format!("Unknown field in 'with' parameter: {other}")),
            }
        }
        Ok(options)
    }

    /// The `with` parameter that asks another peer for the same parts.
    pub fn with_param(&self) -> String {
        let mut parts = Vec::new();
        if self.queued {
            parts.push("queued");
        }
        if self.completed_limit.is_some() {
            parts.push("completed");
        }
        if self.idle_segments {
            parts.push("idle_segments");
        }
        parts.join(",")
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OptimizationsResponse {
    pub summary: OptimizationsSummary,
    pub running: Vec<Optimization>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queued: Option<Vec<PendingOptimization>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed: Option<Vec<Optimization>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_segments: Option<Vec<OptimizationSegmentInfo>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OptimizationsSummary {
    pub queued_optimizations: usize,
    pub queued_segments: usize,
    pub queued_points: usize,
    pub idle_segments: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Optimization {
    pub uuid: String,
    pub optimizer: String,
    pub status: TrackerStatus,
    pub segments: Vec<OptimizationSegmentInfo>,
    pub progress: ProgressTree,
}

/// Qdrant's `TrackerStatus`: `"optimizing"`, `"done"`, `{"cancelled": reason}`,
/// `{"error": message}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrackerStatus {
    Optimizing,
    Done,
    Cancelled(String),
    Error(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProgressTree {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_sec: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingOptimization {
    pub optimizer: String,
    pub segments: Vec<OptimizationSegmentInfo>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OptimizationSegmentInfo {
    pub uuid: String,
    pub points_count: usize,
}

/// Why an optimization changed nothing.
const CANCELLED: &str =
    "the shard stopped, or its segments changed while the optimization ran; nothing was changed";

/// Where a shard replica is, for the UUIDs of its segments and optimizations.
#[derive(Debug, Clone, Copy)]
pub struct ReplicaId {
    pub collection_uuid: u64,
    pub peer: PeerId,
    pub shard: u32,
}

impl ReplicaId {
    pub fn segment(&self, s: &SegmentBrief) -> OptimizationSegmentInfo {
        OptimizationSegmentInfo {
            uuid: self.segment_uuid(s.id),
            points_count: s.points,
        }
    }

    pub fn segment_uuid(&self, id: u64) -> String {
        local_uuid(self.collection_uuid, self.peer.0, self.shard, "segment", id).to_string()
    }

    /// The UUID of an optimization: an index build keeps its segment (and its UUID); a rewrite
    /// makes a segment whose id is only known once it is swapped in, so it gets its own.
    pub fn optimization_uuid(&self, record: &OptimizationRecord) -> String {
        match record.optimizer {
            crate::shard::local_shard::OptimizerName::Indexing => record
                .segments
                .first()
                .map_or_else(String::new, |s| self.segment_uuid(s.id)),
            _ => local_uuid(
                self.collection_uuid,
                self.peer.0,
                self.shard,
                "optimization",
                record.seq,
            )
            .to_string(),
        }
    }

    pub fn optimization(&self, record: &OptimizationRecord) -> Optimization {
        let (status, elapsed) = match record.outcome {
            OptimizationOutcome::Running => (TrackerStatus::Optimizing, None),
            OptimizationOutcome::Done { elapsed } => (TrackerStatus::Done, Some(elapsed)),
            OptimizationOutcome::Cancelled { elapsed } => {
                (TrackerStatus::Cancelled(CANCELLED.into()), Some(elapsed))
            }
        };
        Optimization {
            uuid: self.optimization_uuid(record),
            optimizer: record.optimizer.as_str().to_string(),
            status,
            segments: record.segments.iter().map(|s| self.segment(s)).collect(),
            progress: ProgressTree {
                name: record.optimizer.as_str().to_string(),
                started_at: Some(rfc3339(record.started_at)),
                finished_at: elapsed.map(|e| rfc3339(record.started_at + e)),
                duration_sec: elapsed.map(|e| e.as_secs_f64()),
            },
        }
    }

    /// One replica's answer, with the parts `options` asks for.
    pub fn response(&self, view: &OptimizerView, options: Options) -> OptimizationsResponse {
        let summary = OptimizationsSummary {
            queued_optimizations: view.queued.len(),
            queued_segments: view.queued.iter().map(|q| q.segments.len()).sum(),
            queued_points: view
                .queued
                .iter()
                .flat_map(|q| &q.segments)
                .map(|s| s.points)
                .sum(),
            idle_segments: view.idle.len(),
        };
        OptimizationsResponse {
            summary,
            running: view.running.iter().map(|r| self.optimization(r)).collect(),
            queued: options.queued.then(|| {
                view.queued
                    .iter()
                    .map(|q| PendingOptimization {
                        optimizer: q.optimizer.as_str().to_string(),
                        segments: q.segments.iter().map(|s| self.segment(s)).collect(),
                    })
                    .collect()
            }),
            completed: options.completed_limit.map(|_| {
                view.completed
                    .iter()
                    .map(|r| self.optimization(r))
                    .collect()
            }),
            idle_segments: options
                .idle_segments
                .then(|| view.idle.iter().map(|s| self.segment(s)).collect()),
        }
    }
}

impl OptimizationsResponse {
    /// Adds another replica's answer (Qdrant's `OptimizationsResponse::merge`).
    pub fn merge(&mut self, other: OptimizationsResponse) {
        self.summary.queued_optimizations += other.summary.queued_optimizations;
        self.summary.queued_segments += other.summary.queued_segments;
        self.summary.queued_points += other.summary.queued_points;
        self.summary.idle_segments += other.summary.idle_segments;
        self.running.extend(other.running);
        merge_optional(&mut self.queued, other.queued);
        merge_optional(&mut self.completed, other.completed);
        merge_optional(&mut self.idle_segments, other.idle_segments);
    }

    /// Newest first, and at most `completed_limit` completed ones.
    pub fn finish(&mut self, options: Options) {
        let newest_first =
            |a: &Optimization, b: &Optimization| b.progress.started_at.cmp(&a.progress.started_at);
        self.running.sort_by(newest_first);
        if let Some(completed) = &mut self.completed {
            completed.sort_by(newest_first);
            completed.truncate(options.completed_limit.unwrap_or(usize::MAX));
        }
    }
}

fn merge_optional<T>(into: &mut Option<Vec<T>>, from: Option<Vec<T>>) {
    match (into.as_mut(), from) {
        (Some(into), Some(from)) => into.extend(from),
        (None, from @ Some(_)) => *into = from,
        (_, None) => {}
    }
}

/// The optimizations of this peer's replicas of `collection`.
pub fn local_optimizations(
    collection: &Collection,
    peer: PeerId,
    options: Options,
) -> OptimizationsResponse {
    let mut out = OptimizationsResponse::default();
    for (shard, local) in collection.local_shards() {
        let replica = ReplicaId {
            collection_uuid: collection.uuid(),
            peer,
            shard,
        };
        out.merge(replica.response(&local.optimizer_view(), options));
    }
    out
}

/// Asks the peer at `uri` for its replicas' optimizations; `None` when it does not answer in
/// time or answers something unreadable.
async fn remote_optimizations(
    toc: &TableOfContent,
    uri: &str,
    collection: &str,
    options: Options,
) -> Option<OptimizationsResponse> {
    let channel = toc.env().channel(uri).ok()?;
    let request = peer_request(
        toc,
        OptimizationsRequest {
            collection: collection.to_string(),
            with: options.with_param(),
            completed_limit: options
                .completed_limit
                .map_or(0, |l| u32::try_from(l).unwrap_or(u32::MAX)),
        },
        PEER_PATIENCE,
    );
    let answer = tokio::time::timeout(
        PEER_PATIENCE,
        PeerServiceClient::new(channel).optimizations(request),
    )
    .await;
    match answer {
        Ok(Ok(r)) => match serde_json::from_slice(&r.into_inner().optimizations_json) {
            Ok(response) => Some(response),
            Err(e) => {
                tracing::warn!(peer = %uri, collection, error = %e, "unreadable optimizations answer");
                None
            }
        },
        Ok(Err(status)) => {
            tracing::warn!(peer = %uri, collection, error = %status.message(), "a peer did not report its optimizations");
            None
        }
        Err(_) => {
            tracing::warn!(peer = %uri, collection, "a peer did not report its optimizations in time");
            None
        }
    }
}

/// `GET /collections/{c}/optimizations` (`with`, `completed_limit`).
pub async fn get(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
    QueryParams(params): QueryParams<OptimizationsParams>,
    started: Started,
) -> ApiResult<OptimizationsResponse> {
    let options = Options::parse(params.with.as_deref(), params.completed_limit)
        .map_err(|e| ApiError::bad_request(format!("Bad request: {e}")))?;
    let collection = state.toc.get(&name)?;
    let this_peer = state.metadata.peer_id();
    let mut response = {
        let collection = std::sync::Arc::clone(&collection);
        tokio::task::spawn_blocking(move || local_optimizations(&collection, this_peer, options))
            .await
            .map_err(|e| ApiError::internal(format!("optimizations task failed: {e}")))?
    };
    let view = state.metadata.view();
    let holders: Vec<String> = view
        .state
        .collections
        .get(collection.name())
        .map(|meta| {
            let mut peers: Vec<PeerId> = meta
                .shards
                .values()
                .flat_map(|s| s.replicas.keys().copied())
                .filter(|p| *p != this_peer)
                .collect();
            peers.sort();
            peers.dedup();
            peers
                .into_iter()
                .filter_map(|p| view.state.peers.get(&p).map(|info| info.uri.clone()))
                .collect()
        })
        .unwrap_or_default();
    let asks = holders
        .iter()
        .map(|uri| remote_optimizations(&state.toc, uri, collection.name(), options));
    for remote in join_all(asks).await.into_iter().flatten() {
        response.merge(remote);
    }
    response.finish(options);
    Ok(ApiOk(response, started))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::local_shard::{OptimizationTotals, OptimizerName, PlannedOptimization};
    use std::time::SystemTime;

    #[test]
    fn with_is_read_as_qdrant_reads_it() {
        assert_eq!(Options::parse(None, None), Ok(Options::default()));
        let all = Options::parse(Some(" queued,completed ,,idle_segments"), Some(3)).unwrap();
        assert_eq!(
            all,
            Options {
                queued: true,
                completed_limit: Some(3),
                idle_segments: true
            }
        );
        assert_eq!(
            Options::parse(Some("completed"), None)
                .unwrap()
                .completed_limit,
            Some(DEFAULT_COMPLETED_LIMIT)
        );
        assert!(Options::parse(Some("queued,bogus"), None).is_err());
        assert_eq!(
            Options::parse(Some(&all.with_param()), Some(3)),
            Ok(all),
            "a peer is asked for the same parts"
        );
    }

    fn record(
        seq: u64,
        optimizer: OptimizerName,
        outcome: OptimizationOutcome,
    ) -> OptimizationRecord {
        OptimizationRecord {
            seq,
            optimizer,
            segments: vec![SegmentBrief {
                id: seq + 10,
                points: 100,
            }],
            started_at: SystemTime::UNIX_EPOCH + Duration::from_secs(seq),
            outcome,
        }
    }

    #[test]
    fn a_replica_reports_what_its_optimizer_ran_and_plans() {
        let view = OptimizerView {
            running: vec![record(
                5,
                OptimizerName::Indexing,
                OptimizationOutcome::Running,
            )],
            completed: vec![
                record(
                    4,
                    OptimizerName::Merge,
                    OptimizationOutcome::Done {
                        elapsed: Duration::from_millis(1500),
                    },
                ),
                record(
                    3,
                    OptimizerName::Vacuum,
                    OptimizationOutcome::Cancelled {
                        elapsed: Duration::from_millis(10),
                    },
                ),
            ],
            queued: vec![PlannedOptimization {
                optimizer: OptimizerName::Indexing,
                segments: vec![
                    SegmentBrief { id: 7, points: 40 },
                    SegmentBrief { id: 8, points: 2 },
                ],
            }],
            idle: vec![SegmentBrief { id: 1, points: 9 }],
            totals: OptimizationTotals::default(),
        };
        let replica = ReplicaId {
            collection_uuid: 1,
            peer: PeerId(2),
            shard: 0,
        };
        let bare = replica.response(&view, Options::default());
        assert_eq!(
            bare.summary,
            OptimizationsSummary {
                queued_optimizations: 1,
                queued_segments: 2,
                queued_points: 42,
                idle_segments: 1
            }
        );
        assert!(bare.queued.is_none() && bare.completed.is_none() && bare.idle_segments.is_none());
        assert_eq!(bare.running.len(), 1);
        let running = &bare.running[0];
        assert_eq!(running.status, TrackerStatus::Optimizing);
        assert_eq!(running.optimizer, "indexing");
        // An index build keeps its segment: the optimization carries the segment's UUID.
        assert_eq!(running.uuid, running.segments[0].uuid);
        assert!(running.progress.finished_at.is_none());

        let options = Options::parse(Some("queued,completed,idle_segments"), Some(1)).unwrap();
        let mut full = replica.response(&view, options);
        full.merge(replica.response(&view, options));
        full.finish(options);
        assert_eq!(full.summary.queued_points, 84);
        assert_eq!(full.queued.as_ref().unwrap().len(), 2);
        let completed = full.completed.as_ref().unwrap();
        assert_eq!(completed.len(), 1, "completed_limit applies after merging");
        assert_eq!(completed[0].status, TrackerStatus::Done);
        assert_eq!(completed[0].progress.duration_sec, Some(1.5));
        let json = serde_json::to_value(&full).unwrap();
        assert_eq!(json["running"][0]["status"], "optimizing");
        let cancelled = serde_json::to_value(replica.optimization(&view.completed[1])).unwrap();
        assert!(cancelled["status"]["cancelled"].is_string());
    }
}
