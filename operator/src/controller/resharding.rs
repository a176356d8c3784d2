//! `Resharding`: observe the collection's shard count and running resharding, plan one step
//! with [`plan::plan_resharding`], carry it out, report.
//!
//! The operations go through `UpdateCollectionCluster` in Qdrant's shape
//! (`start_resharding`, `commit_read_hash_ring`, `commit_write_hash_ring`,
//! `finish_resharding`, `abort_resharding`). The resharding is started with `manual: true`, so
//! the node leaves every stage to the operator and its gates. A node that rejects an operation
//! as invalid answers INVALID_ARGUMENT, which is reported as Degraded with the node's message.

use kube::runtime::controller::Action;
use serde_json::{Value, json};

use shoal_proto::v1 as pb;

use super::{Context, Error, Kind, Next, Note, Outcome};
use crate::crd::{Phase, PlanStep, Resharding, StepState, reason};
use crate::node_client::{NodeClient, NodeError, endpoint_url};
use crate::observe;
use crate::plan::{self, Gates, ReshardingStage, ReshardingStep};
use crate::status::Report;

/// The operation that carries out `step`, if the step acts.
pub fn operation(step: ReshardingStep, shard_key: Option<&str>) -> Option<Value> {
    // `manual`: the operator commits each stage itself, honouring the resource's gates, so the
    // node does not advance the stages on its own.
    let start = |direction: &str| {
        let mut body = json!({ "direction": direction, "manual": true });
        if let Some(key) = shard_key {
            body["shard_key"] = key.into();
        }
        json!({ "start_resharding": body })
    };
    Some(match step {
        ReshardingStep::StartUp => start("up"),
        ReshardingStep::StartDown => start("down"),
        ReshardingStep::CommitRead => json!({"commit_read_hash_ring": {}}),
        ReshardingStep::CommitWrite => json!({"commit_write_hash_ring": {}}),
        ReshardingStep::Finish => json!({"finish_resharding": {}}),
        ReshardingStep::WaitForMigration
        | ReshardingStep::WaitForGate(_)
        | ReshardingStep::Done => {
            return None;
        }
    })
}

/// What an observation calls for, before any call is made.
pub enum Decision {
    /// Nothing to call: report this.
    Report(Outcome),
    /// Submit `operation` (the next stage), then report progress.
    Call {
        operation: Value,
        step: PlanStep,
        summary: String,
    },
}

/// The pure half of a reconcile: observed cluster + resource → what to report or call.
pub fn decide_from(
    obj: &Resharding,
    cluster: &pb::ClusterInfoResponse,
    info: &pb::CollectionInfoResponse,
) -> Decision {
    let previous = obj.status.as_ref();
    let spec = &obj.spec;
    let peers = observe::peers(cluster);
    let in_progress = match observe::resharding_progress(info) {
        Ok(p) => p,
        Err(m) => {
            return Decision::Report(Outcome::new(
                Report::transient(previous, reason::CLUSTER_UNREACHABLE, m),
                Next::Backoff,
            ));
        }
    };
    let current = observe::shard_count(info, spec.shard_key.as_deref());
    let gates = Gates {
        commit_read: spec.commit_read,
        commit_write: spec.commit_write,
    };
    let step = match plan::plan_resharding(current, spec.shards, in_progress, gates) {
        Ok(s) => s,
        Err(e) => {
            return Decision::Report(Outcome::new(
                Report::invalid(reason::INVALID_SPEC, e.to_string()),
                Next::SpecChange,
            ));
        }
    };
    let mut plan_step = step.to_status();
    let summary = format!(
        "`{}` has {current} shard(s), {} desired",
        spec.collection, spec.shards
    );
    Decision::Report(match step {
        ReshardingStep::Done => {
            let mut outcome = Outcome::new(Report::converged(summary.clone()), Next::Idle);
            if previous.is_none_or(|p| {
                p.phase != Phase::Succeeded || p.observed_generation != obj.metadata.generation
            }) {
                outcome
                    .notes
                    .push(Note::normal(reason::CONVERGED, "Converge", summary));
            }
            outcome
        }
        ReshardingStep::WaitForGate(_) => Outcome::new(
            Report::planned(
                reason::AWAITING_GATE,
                format!("{summary}; {}", plan_step.description),
                vec![plan_step],
            ),
            Next::Idle,
        ),
        ReshardingStep::WaitForMigration => {
            plan_step.state = StepState::Running;
            Outcome::new(
                Report::progressing(
                    reason::MIGRATING_POINTS,
                    summary,
                    vec![plan_step],
                    observe::resharding_transfers(info, &peers),
                ),
                Next::Poll,
            )
        }
        step => {
            let Some(operation) = operation(step, spec.shard_key.as_deref()) else {
                unreachable!("every other step acts");
            };
            return Decision::Call {
                operation,
                step: plan_step,
                summary,
            };
        }
    })
}

impl Kind for Resharding {
    async fn decide(obj: &Self, namespace: &str, ctx: &Context) -> Outcome {
        let previous = obj.status.as_ref();
        let spec = &obj.spec;
        let node_error = |e: NodeError| Outcome::from_node_error(previous, e, reason::INVALID_SPEC);
        let url = endpoint_url(&spec.cluster, namespace);
        let node = match NodeClient::connect(&url, ctx.api_key.as_deref()).await {
            Ok(node) => node,
            Err(e) => return node_error(e),
        };
        let (cluster, info) = match (
            node.cluster_info().await,
            node.collection_info(&spec.collection).await,
        ) {
            (Ok(c), Ok(i)) => (c, i),
            (Err(e), _) | (_, Err(e)) => return node_error(e),
        };
        let (operation, mut plan_step, summary) = match decide_from(obj, &cluster, &info) {
            Decision::Report(outcome) => return outcome,
            Decision::Call {
                operation,
                step,
                summary,
            } => (operation, step, summary),
        };
        match node.update(&spec.collection, &operation).await {
            Ok(()) => {
                plan_step.state = StepState::Running;
                let mut outcome = Outcome::new(
                    Report::progressing(
                        reason::MIGRATING_POINTS,
                        format!("{summary}; started: {}", plan_step.description),
                        vec![plan_step.clone()],
                        Vec::new(),
                    ),
                    Next::Poll,
                );
                outcome.notes.push(Note::normal(
                    "ReshardingStep",
                    "Reshard",
                    plan_step.description,
                ));
                outcome
            }
            Err(NodeError::Invalid(m)) => {
                let message = format!("{}: {m}", plan_step.description);
                let mut outcome = Outcome::new(
                    Report::invalid(reason::INVALID_SPEC, message.clone()),
                    Next::SpecChange,
                );
                outcome
                    .notes
                    .push(Note::warning(reason::INVALID_SPEC, "Reshard", message));
                outcome
            }
            Err(e) => node_error(e),
        }
    }

    async fn cleanup(obj: &Self, namespace: &str, ctx: &Context) -> Result<Action, Error> {
        let spec = &obj.spec;
        let url = endpoint_url(&spec.cluster, namespace);
        let node = match NodeClient::connect(&url, ctx.api_key.as_deref()).await {
            Ok(node) => node,
            Err(NodeError::Invalid(_)) => return Ok(Action::await_change()),
            Err(e) => return Err(Error::Cleanup(e)),
        };
        let info = match node.collection_info(&spec.collection).await {
            Ok(i) => i,
            Err(NodeError::Invalid(_)) => return Ok(Action::await_change()),
            Err(e) => return Err(Error::Cleanup(e)),
        };
        // Abort is possible until writes are committed; after that the resharding finishes.
        let abortable = observe::resharding_progress(&info)
            .ok()
            .flatten()
            .is_some_and(|p| p.stage != ReshardingStage::WriteCommitted);
        if abortable {
            match node
                .update(&spec.collection, &json!({"abort_resharding": {}}))
                .await
            {
                Ok(()) | Err(NodeError::Invalid(_)) => {}
                Err(e) => return Err(Error::Cleanup(e)),
            }
            let event = kube::runtime::events::Event {
                type_: kube::runtime::events::EventType::Normal,
                reason: "ReshardingAborted".into(),
                note: Some(format!(
                    "aborted the resharding of `{}` (resource deleted)",
                    spec.collection
                )),
                action: "Abort".into(),
                secondary: None,
            };
            if let Err(e) = ctx
                .recorder
                .publish(&event, &kube::Resource::object_ref(obj, &()))
                .await
            {
                tracing::warn!(error = %e, "could not publish an Event");
            }
        }
        Ok(Action::await_change())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{Approval, ClusterRef, ReshardingSpec};

    fn resharding(shards: u32, commit_read: Approval) -> Resharding {
        let mut obj = Resharding::new(
            "r",
            ReshardingSpec {
                cluster: ClusterRef::Url {
                    url: "http://127.0.0.1:7000".into(),
                },
                collection: "docs".into(),
                shards,
                shard_key: None,
                commit_read,
                commit_write: Approval::Automatic,
            },
        );
        obj.metadata.generation = Some(1);
        obj
    }

    fn info(shards: u32, stage: Option<&str>, migrating: bool) -> pb::CollectionInfoResponse {
        pb::CollectionInfoResponse {
            collection: "docs".into(),
            shards: (0..shards)
                .map(|i| pb::Shard {
                    shard_id: i,
                    shard_key: None,
                    replicas: vec![pb::Replica {
                        peer_id: 10,
                        state: "Active".into(),
                    }],
                })
                .collect(),
            transfers: if migrating {
                vec![pb::Transfer {
                    shard_id: 0,
                    to_shard_id: Some(shards - 1),
                    from_peer_id: 10,
                    to_peer_id: 10,
                    method: "resharding_stream_records".into(),
                    ..Default::default()
                }]
            } else {
                Vec::new()
            },
            resharding: stage.map(|stage| pb::Resharding {
                direction: "up".into(),
                shard_id: shards - 1,
                peer_id: 10,
                shard_key: None,
                stage: stage.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn call(d: Decision) -> Value {
        match d {
            Decision::Call { operation, .. } => operation,
            Decision::Report(o) => panic!("expected a call, got {:?}", o.report),
        }
    }

    fn report(d: Decision) -> Outcome {
        match d {
            Decision::Report(o) => o,
            Decision::Call { operation, .. } => panic!("expected a report, got {operation}"),
        }
    }

    #[test]
    fn walks_the_stages_one_call_at_a_time() {
        let cluster = pb::ClusterInfoResponse::default();
        let obj = resharding(3, Approval::Automatic);
        assert_eq!(
            call(decide_from(&obj, &cluster, &info(2, None, false))),
            json!({"start_resharding": {"direction": "up", "manual": true}})
        );
        let migrating = report(decide_from(
            &obj,
            &cluster,
            &info(3, Some("migrating_points"), true),
        ));
        assert_eq!(migrating.report.phase, Phase::Progressing);
        assert_eq!(migrating.report.transfers.len(), 1);
        assert_eq!(
            call(decide_from(
                &obj,
                &cluster,
                &info(3, Some("migrating_points"), false)
            )),
            json!({"commit_read_hash_ring": {}})
        );
        assert_eq!(
            call(decide_from(
                &obj,
                &cluster,
                &info(3, Some("read_hash_ring_committed"), false)
            )),
            json!({"commit_write_hash_ring": {}})
        );
        assert_eq!(
            call(decide_from(
                &obj,
                &cluster,
                &info(3, Some("write_hash_ring_committed"), false)
            )),
            json!({"finish_resharding": {}})
        );
        let done = report(decide_from(&obj, &cluster, &info(3, None, false)));
        assert_eq!(done.report.phase, Phase::Succeeded);
        // Scale down.
        assert_eq!(
            call(decide_from(
                &resharding(1, Approval::Automatic),
                &cluster,
                &info(2, None, false)
            )),
            json!({"start_resharding": {"direction": "down", "manual": true}})
        );
    }

    #[test]
    fn manual_gate_waits_and_bad_counts_are_spec_errors() {
        let cluster = pb::ClusterInfoResponse::default();
        let gated = report(decide_from(
            &resharding(3, Approval::Manual),
            &cluster,
            &info(3, Some("migrating_points"), false),
        ));
        assert_eq!(gated.report.phase, Phase::Planned);
        assert_eq!(gated.report.progressing.reason, reason::AWAITING_GATE);
        let invalid = report(decide_from(
            &resharding(0, Approval::Automatic),
            &cluster,
            &info(2, None, false),
        ));
        assert_eq!(invalid.report.phase, Phase::Failed);
        assert_eq!(invalid.next, Next::SpecChange);
    }

    #[test]
    fn operations_in_qdrants_shape() {
        assert_eq!(
            operation(ReshardingStep::StartUp, Some("tenant-a")),
            Some(
                json!({"start_resharding": {"direction": "up", "manual": true, "shard_key": "tenant-a"}})
            )
        );
        assert_eq!(
            operation(ReshardingStep::StartDown, None),
            Some(json!({"start_resharding": {"direction": "down", "manual": true}}))
        );
        assert_eq!(
            operation(ReshardingStep::CommitRead, None),
            Some(json!({"commit_read_hash_ring": {}}))
        );
        assert_eq!(operation(ReshardingStep::WaitForMigration, None), None);
        assert_eq!(operation(ReshardingStep::Done, None), None);
    }
}
