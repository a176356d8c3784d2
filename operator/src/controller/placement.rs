//! `ShardPlacement`: observe the shard's replicas and transfers, plan with
//! [`plan::plan_placement`], carry out the first step of each selected shard, report.
//!
//! Everything is derived from the observed cluster state, never from memory: a transfer the
//! cluster reports to a desired peer is reported (not started again), so an operator
//! restarted mid-transfer resumes reporting without starting a second one.

use std::collections::BTreeSet;

use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};
use shoal_proto::v1 as pb;

use super::{Context, Error, Kind, Next, Note, Outcome};
use crate::crd::{
    Approval, Phase, PlanStep, RateLimit, ShardPlacement, StepState, TransferMethod,
    TransferStatus, reason,
};
use crate::node_client::{NodeClient, NodeError, endpoint_url};
use crate::observe;
use crate::plan::{self, Peer, PeerId, PlanError, Step};
use crate::status::Report;

fn method_name(method: TransferMethod) -> &'static str {
    match method {
        TransferMethod::StreamRecords => "stream_records",
        TransferMethod::Snapshot => "snapshot",
        TransferMethod::WalDelta => "wal_delta",
    }
}

/// The `replicate_shard` operation for one step.
pub fn replicate_operation(
    shard: u32,
    from: PeerId,
    to: PeerId,
    method: TransferMethod,
    rate_limit: Option<&RateLimit>,
    is_move: bool,
) -> Value {
    let mut op = json!({
        "shard_id": shard,
        "from_peer_id": from.0,
        "to_peer_id": to.0,
        "method": method_name(method),
    });
    if let Some(rate) = rate_limit {
        let mut limit = serde_json::Map::new();
        if let Some(p) = rate.points_per_second {
            limit.insert("points_per_second".into(), p.into());
        }
        // The nodes do not implement a byte limit yet; passing it on lets them say so.
        if let Some(b) = rate.bytes_per_second {
            limit.insert("bytes_per_second".into(), b.into());
        }
        op["rate_limit"] = Value::Object(limit);
    }
    if is_move {
        json!({ "move_shard": op })
    } else {
        json!({ "replicate_shard": op })
    }
}

fn plan_error_reason(e: &PlanError) -> &'static str {
    match e {
        PlanError::UnknownPeer(_) => reason::UNKNOWN_PEER,
        PlanError::NoActiveReplica => reason::NO_ACTIVE_REPLICA,
        _ => reason::INVALID_SPEC,
    }
}

/// One call to make: the operation, and how to tell people about it.
#[derive(Clone, Debug, PartialEq)]
pub struct Call {
    /// Index of the step in the status plan.
    pub step: usize,
    pub operation: Value,
    pub event_reason: &'static str,
    pub action: &'static str,
}

/// What an observation calls for, before any call is made.
pub enum Decision {
    /// Nothing to call: report this.
    Report(Outcome),
    /// Make `calls` (at most one per shard), then report progress on `plan`.
    Act {
        plan: Vec<PlanStep>,
        transfers: Vec<TransferStatus>,
        calls: Vec<Call>,
        /// Progress of steps already running, for the status message.
        running: Vec<String>,
        reason: &'static str,
    },
}

/// The plan step of a shard, as shown in status: a running transfer to a desired peer is the
/// resource's own Replicate under way (whoever started it), and a Replicate whose source the
/// plan drops afterwards is carried out as one move.
fn status_steps(
    shard: u32,
    steps: &[Step],
    desired: &BTreeSet<PeerId>,
    peers: &[Peer],
) -> Vec<PlanStep> {
    let mut out: Vec<PlanStep> = steps
        .iter()
        .enumerate()
        .map(|(i, step)| {
            let mut s = match *step {
                Step::Wait { transfer } if desired.contains(&transfer.to) => Step::Replicate {
                    from: transfer.from,
                    to: transfer.to,
                }
                .to_status(shard, peers),
                _ => step.to_status(shard, peers),
            };
            if i == 0 && matches!(step, Step::Wait { .. }) {
                s.state = StepState::Running;
            }
            s
        })
        .collect();
    let dropped: Vec<Option<String>> = out
        .iter()
        .filter(|s| s.action == "Drop")
        .map(|s| s.peer.clone())
        .collect();
    for s in &mut out {
        if s.action == "Replicate" && dropped.contains(&s.from) {
            s.action = "Move".to_owned();
            s.description = format!(
                "move shard {shard} from {} to {}",
                s.from.as_deref().unwrap_or_default(),
                s.to.as_deref().unwrap_or_default()
            );
        }
    }
    out
}

/// The pure half of a reconcile: observed cluster + resource → what to report or call.
pub fn decide_from(
    obj: &ShardPlacement,
    cluster: &pb::ClusterInfoResponse,
    info: &pb::CollectionInfoResponse,
) -> Decision {
    let previous = obj.status.as_ref();
    let spec = &obj.spec;
    let peers = observe::peers(cluster);
    let shards = match observe::selected_shards(info, &spec.shard) {
        Ok(s) => s,
        Err(e) => {
            return Decision::Report(Outcome::new(
                Report::invalid(reason::INVALID_SPEC, e.to_string()),
                Next::SpecChange,
            ));
        }
    };

    let mut plans: Vec<(u32, Vec<Step>)> = Vec::new();
    let mut transfers = Vec::new();
    for &shard in &shards {
        let observed = match observe::observed_shard(info, shard) {
            Ok(o) => o,
            Err(e) => {
                return Decision::Report(Outcome::new(
                    Report::transient(previous, reason::CLUSTER_UNREACHABLE, e.to_string()),
                    Next::Backoff,
                ));
            }
        };
        match plan::plan_placement(&spec.replicas, &observed, &peers) {
            Ok(steps) => plans.push((shard, steps)),
            Err(e) if e.is_invalid_spec() => {
                return Decision::Report(Outcome::new(
                    Report::invalid(plan_error_reason(&e), e.to_string()),
                    Next::SpecChange,
                ));
            }
            Err(e) => {
                return Decision::Report(Outcome::new(
                    Report::transient(previous, plan_error_reason(&e), e.to_string()),
                    Next::Backoff,
                ));
            }
        }
        transfers.extend(observe::transfer_statuses(info, shard, &peers));
    }
    let desired = plan::resolve_peers(&spec.replicas, &peers).unwrap_or_default();

    let mut status_plan: Vec<PlanStep> = Vec::new();
    let mut first_step_index = Vec::new();
    for (shard, steps) in &plans {
        first_step_index.push(status_plan.len());
        status_plan.extend(status_steps(*shard, steps, &desired, &peers));
    }

    let where_to = format!(
        "shard(s) {shards:?} of `{}` on {}",
        spec.collection,
        spec.replicas.join(", ")
    );
    let new_generation = previous.is_none_or(|p| p.observed_generation != obj.metadata.generation);
    if status_plan.is_empty() {
        let mut outcome = Outcome::new(Report::converged(where_to.clone()), Next::Idle);
        if new_generation || previous.is_some_and(|p| p.phase != Phase::Succeeded) {
            outcome.notes.push(Note::normal(
                reason::CONVERGED,
                "Converge",
                format!("{where_to}: converged"),
            ));
        }
        return Decision::Report(outcome);
    }

    if spec.approval == Approval::Manual {
        let mut outcome = Outcome::new(
            Report::planned(
                reason::AWAITING_APPROVAL,
                "the plan waits for spec.approval to be set to Automatic",
                status_plan,
            ),
            Next::Idle,
        );
        outcome.report.transfers = transfers;
        if new_generation {
            outcome.notes.push(Note::normal(
                reason::AWAITING_APPROVAL,
                "Plan",
                format!("planned {where_to}; waiting for approval"),
            ));
        }
        return Decision::Report(outcome);
    }

    // The first step of each shard: one transfer at a time per shard.
    let mut calls = Vec::new();
    let mut running = Vec::new();
    let mut progress_reason = reason::PLANNED;
    for ((shard, steps), index) in plans.iter().zip(first_step_index) {
        let Some(step) = steps.first() else { continue };
        match *step {
            Step::Wait { transfer } => {
                if desired.contains(&transfer.to) {
                    progress_reason = reason::TRANSFER_RUNNING;
                } else if progress_reason == reason::PLANNED {
                    progress_reason = reason::WAITING_FOR_TRANSFER;
                }
                running.push(format!("running: {}", status_plan[index].description));
            }
            Step::Replicate { from, to } => {
                // A move promotes the destination and drops the source in one step (the
                // active count never dips), and aborting it leaves the shard exactly as it
                // was; aborting a replicate leaves a Dead replica that the nodes recover.
                let is_move = steps
                    .iter()
                    .any(|s| matches!(s, Step::Drop { peer } if *peer == from));
                calls.push(Call {
                    step: index,
                    operation: replicate_operation(
                        *shard,
                        from,
                        to,
                        spec.method,
                        spec.rate_limit.as_ref(),
                        is_move,
                    ),
                    event_reason: "TransferStarted",
                    action: if is_move { "Move" } else { "Replicate" },
                });
                progress_reason = reason::TRANSFER_RUNNING;
            }
            Step::Drop { peer } => calls.push(Call {
                step: index,
                operation: json!({"drop_replica": {"shard_id": shard, "peer_id": peer.0}}),
                event_reason: "ReplicaDropped",
                action: "Drop",
            }),
        }
    }
    Decision::Act {
        plan: status_plan,
        transfers,
        calls,
        running,
        reason: progress_reason,
    }
}

impl Kind for ShardPlacement {
    async fn decide(obj: &Self, namespace: &str, ctx: &Context) -> Outcome {
        let previous = obj.status.as_ref();
        let spec = &obj.spec;
        let url = endpoint_url(&spec.cluster, namespace);
        let node_error = |e: NodeError| Outcome::from_node_error(previous, e, reason::INVALID_SPEC);
        // Observe.
        let node = match NodeClient::connect(&url, ctx.api_key.as_deref()).await {
            Ok(node) => node,
            Err(e) => return node_error(e),
        };
        let cluster = match node.cluster_info().await {
            Ok(c) => c,
            Err(e) => return node_error(e),
        };
        let info = match node.collection_info(&spec.collection).await {
            Ok(i) => i,
            Err(e) => return node_error(e),
        };
        // Plan.
        let (mut plan, transfers, calls, mut messages, progress_reason) =
            match decide_from(obj, &cluster, &info) {
                Decision::Report(outcome) => return outcome,
                Decision::Act {
                    plan,
                    transfers,
                    calls,
                    running,
                    reason,
                } => (plan, transfers, calls, running, reason),
            };
        // Act.
        let mut notes = Vec::new();
        for call in calls {
            let description = plan[call.step].description.clone();
            match node.update(&spec.collection, &call.operation).await {
                Ok(()) => {
                    tracing::info!(operation = %call.operation, "submitted");
                    plan[call.step].state = StepState::Running;
                    messages.push(format!("started: {description}"));
                    notes.push(Note::normal(call.event_reason, call.action, description));
                }
                Err(NodeError::Invalid(m)) => {
                    let message = format!("{description}: {m}");
                    let mut outcome = Outcome::new(
                        Report::invalid(reason::INVALID_SPEC, message.clone()),
                        Next::SpecChange,
                    );
                    outcome
                        .notes
                        .push(Note::warning(reason::INVALID_SPEC, call.action, message));
                    return outcome;
                }
                Err(e) => {
                    // Conflict or unavailable: keep the phase, back off, try again.
                    let message = format!("{description}: {e}");
                    let e = match e {
                        NodeError::Unavailable(_) => NodeError::Unavailable(message),
                        _ => NodeError::Conflict(message),
                    };
                    let mut outcome = Outcome::from_node_error(previous, e, reason::INVALID_SPEC);
                    outcome.notes = notes;
                    return outcome;
                }
            }
        }
        // Report.
        let mut outcome = Outcome::new(
            Report::progressing(progress_reason, messages.join("; "), plan, transfers),
            Next::Poll,
        );
        outcome.notes = notes;
        outcome
    }

    async fn cleanup(obj: &Self, namespace: &str, ctx: &Context) -> Result<Action, Error> {
        let spec = &obj.spec;
        let url = endpoint_url(&spec.cluster, namespace);
        // A spec that never worked started nothing: let the resource go.
        let node = match NodeClient::connect(&url, ctx.api_key.as_deref()).await {
            Ok(node) => node,
            Err(NodeError::Invalid(_)) => return Ok(Action::await_change()),
            Err(e) => return Err(Error::Cleanup(e)),
        };
        let cluster = node.cluster_info().await.map_err(Error::Cleanup)?;
        let info = match node.collection_info(&spec.collection).await {
            Ok(i) => i,
            Err(NodeError::Invalid(_)) => return Ok(Action::await_change()),
            Err(e) => return Err(Error::Cleanup(e)),
        };
        let peers = observe::peers(&cluster);
        let (Ok(shards), Ok(desired)) = (
            observe::selected_shards(&info, &spec.shard),
            plan::resolve_peers(&spec.replicas, &peers),
        ) else {
            return Ok(Action::await_change());
        };
        for shard in shards {
            let Ok(observed) = observe::observed_shard(&info, shard) else {
                continue;
            };
            // The transfers this resource starts are the ones to its desired peers. (The
            // nodes' own recovery of a Dead desired replica looks the same; aborting it is
            // harmless, the nodes start it again.)
            for t in observed
                .transfers
                .iter()
                .filter(|t| desired.contains(&t.to))
            {
                let op = json!({"abort_transfer": {
                    "shard_id": shard, "from_peer_id": t.from.0, "to_peer_id": t.to.0
                }});
                match node.update(&spec.collection, &op).await {
                    // Invalid: it finished or was aborted meanwhile.
                    Ok(()) | Err(NodeError::Invalid(_)) => {}
                    Err(e) => return Err(Error::Cleanup(e)),
                }
                // An aborted replicate leaves a Dead replica that the nodes would fill again;
                // the replica exists only because of this resource, so remove it (best
                // effort: if the nodes' recovery already started, it completes instead).
                let replicated = info
                    .transfers
                    .iter()
                    .any(|p| p.shard_id == shard && p.to_peer_id == t.to.0 && p.sync);
                if replicated {
                    let op = json!({"drop_replica": {"shard_id": shard, "peer_id": t.to.0}});
                    if let Err(e) = node.update(&spec.collection, &op).await {
                        tracing::info!(shard, peer = t.to.0, error = %e, "could not drop the replica of an aborted replicate");
                    }
                }
                let message = format!(
                    "aborted the transfer of shard {shard} from {} to {} (resource deleted)",
                    t.from, t.to
                );
                tracing::info!(name = %obj.name_any(), shard, from = t.from.0, to = t.to.0, "transfer aborted");
                let event = kube::runtime::events::Event {
                    type_: kube::runtime::events::EventType::Normal,
                    reason: "TransferAborted".into(),
                    note: Some(message),
                    action: "Abort".into(),
                    secondary: None,
                };
                if let Err(e) = ctx.recorder.publish(&event, &obj.object_ref(&())).await {
                    tracing::warn!(error = %e, "could not publish an Event");
                }
            }
        }
        Ok(Action::await_change())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{ClusterRef, OperationStatus, ShardPlacementSpec, ShardSelector};

    fn cluster() -> pb::ClusterInfoResponse {
        pb::ClusterInfoResponse {
            peers: (0..3)
                .map(|i| pb::Peer {
                    id: 10 + i,
                    uri: format!("http://127.0.0.1:{}", 7000 + i),
                    name: format!("peer-{i}"),
                })
                .collect(),
            ..Default::default()
        }
    }

    /// Shard 0 with these (peer, state) replicas and transfers (from, to, sync).
    fn info(
        replicas: &[(u64, &str)],
        transfers: &[(u64, u64, bool)],
    ) -> pb::CollectionInfoResponse {
        pb::CollectionInfoResponse {
            collection: "docs".into(),
            shards: vec![pb::Shard {
                shard_id: 0,
                shard_key: None,
                replicas: replicas
                    .iter()
                    .map(|(p, s)| pb::Replica {
                        peer_id: *p,
                        state: (*s).into(),
                    })
                    .collect(),
            }],
            transfers: transfers
                .iter()
                .map(|(from, to, sync)| pb::Transfer {
                    shard_id: 0,
                    from_peer_id: *from,
                    to_peer_id: *to,
                    sync: *sync,
                    method: "stream_records".into(),
                    progress: Some(pb::TransferProgress {
                        points_done: 40,
                        points_total: 100,
                        percent: 40.0,
                        eta_seconds: Some(3.0),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    fn placement(replicas: &[&str], approval: Approval) -> ShardPlacement {
        let mut obj = ShardPlacement::new(
            "p",
            ShardPlacementSpec {
                cluster: ClusterRef::Url {
                    url: "http://127.0.0.1:7000".into(),
                },
                collection: "docs".into(),
                shard: ShardSelector::Id { shard_id: 0 },
                replicas: replicas.iter().map(|r| (*r).to_owned()).collect(),
                method: TransferMethod::StreamRecords,
                rate_limit: Some(RateLimit {
                    points_per_second: Some(100),
                    bytes_per_second: None,
                }),
                approval,
            },
        );
        obj.metadata.generation = Some(1);
        obj
    }

    fn act(d: Decision) -> (Vec<PlanStep>, Vec<TransferStatus>, Vec<Call>, &'static str) {
        match d {
            Decision::Act {
                plan,
                transfers,
                calls,
                reason,
                ..
            } => (plan, transfers, calls, reason),
            Decision::Report(o) => panic!("expected calls, got a report: {:?}", o.report),
        }
    }

    fn report(d: Decision) -> Outcome {
        match d {
            Decision::Report(o) => o,
            Decision::Act { calls, .. } => panic!("expected a report, got calls {calls:?}"),
        }
    }

    #[test]
    fn moving_a_shard_is_one_move_call() {
        let obj = placement(&["peer-1"], Approval::Automatic);
        let (plan, _, calls, reason) =
            act(decide_from(&obj, &cluster(), &info(&[(10, "Active")], &[])));
        assert_eq!(
            calls,
            vec![Call {
                step: 0,
                operation: json!({"move_shard": {"shard_id": 0, "from_peer_id": 10,
                    "to_peer_id": 11, "method": "stream_records",
                    "rate_limit": {"points_per_second": 100}}}),
                event_reason: "TransferStarted",
                action: "Move",
            }]
        );
        let actions: Vec<&str> = plan.iter().map(|s| s.action.as_str()).collect();
        assert_eq!(actions, ["Move", "Drop"]);
        assert_eq!(plan[0].description, "move shard 0 from peer-0 to peer-1");
        assert_eq!(reason, reason::TRANSFER_RUNNING);
    }

    #[test]
    fn a_running_transfer_is_reported_never_started_again() {
        // What an operator restarted mid-transfer observes.
        let obj = placement(&["peer-1"], Approval::Automatic);
        let observed = info(&[(10, "Active"), (11, "Partial")], &[(10, 11, false)]);
        let (plan, transfers, calls, reason) = act(decide_from(&obj, &cluster(), &observed));
        assert!(calls.is_empty(), "a second transfer: {calls:?}");
        assert_eq!(plan[0].action, "Move");
        assert_eq!(plan[0].state, StepState::Running);
        assert_eq!(reason, reason::TRANSFER_RUNNING);
        assert_eq!(
            transfers,
            vec![TransferStatus {
                shard: 0,
                from: "peer-0".into(),
                to: "peer-1".into(),
                points_done: 40,
                points_total: 100,
                percent: 40,
                eta_seconds: Some(3),
            }]
        );
    }

    #[test]
    fn adding_a_replica_replicates_and_surplus_is_dropped_last() {
        let obj = placement(&["peer-0", "peer-1"], Approval::Automatic);
        let (_, _, calls, _) = act(decide_from(&obj, &cluster(), &info(&[(10, "Active")], &[])));
        assert_eq!(calls.len(), 1);
        assert!(calls[0].operation.get("replicate_shard").is_some());

        let obj = placement(&["peer-1"], Approval::Automatic);
        let observed = info(&[(10, "Active"), (11, "Active")], &[]);
        let (_, _, calls, _) = act(decide_from(&obj, &cluster(), &observed));
        assert_eq!(
            calls[0].operation,
            json!({"drop_replica": {"shard_id": 0, "peer_id": 10}})
        );
    }

    #[test]
    fn converged_reports_once_then_stays_quiet() {
        let obj = placement(&["peer-0"], Approval::Automatic);
        let observed = info(&[(10, "Active")], &[]);
        let outcome = report(decide_from(&obj, &cluster(), &observed));
        assert_eq!(outcome.report.phase, Phase::Succeeded);
        assert_eq!(outcome.next, Next::Idle);
        assert_eq!(outcome.notes.len(), 1);
        let mut again = obj.clone();
        again.status = Some(OperationStatus {
            observed_generation: Some(1),
            phase: Phase::Succeeded,
            ..OperationStatus::default()
        });
        assert!(
            report(decide_from(&again, &cluster(), &observed))
                .notes
                .is_empty()
        );
    }

    #[test]
    fn manual_approval_plans_without_calls() {
        let obj = placement(&["peer-2"], Approval::Manual);
        let outcome = report(decide_from(&obj, &cluster(), &info(&[(10, "Active")], &[])));
        assert_eq!(outcome.report.phase, Phase::Planned);
        assert_eq!(outcome.report.plan.len(), 2);
        assert_eq!(outcome.report.progressing.reason, reason::AWAITING_APPROVAL);
    }

    #[test]
    fn spec_errors_stop_and_cluster_conditions_back_off() {
        let observed = info(&[(10, "Active")], &[]);
        let outcome = report(decide_from(
            &placement(&["peer-9"], Approval::Automatic),
            &cluster(),
            &observed,
        ));
        assert_eq!(outcome.report.phase, Phase::Failed);
        assert_eq!(outcome.report.degraded.reason, reason::UNKNOWN_PEER);
        assert!(outcome.report.degraded.message.contains("peer-9"));
        assert_eq!(outcome.next, Next::SpecChange);

        let mut other_shard = placement(&["peer-0"], Approval::Automatic);
        other_shard.spec.shard = ShardSelector::Id { shard_id: 5 };
        let outcome = report(decide_from(&other_shard, &cluster(), &observed));
        assert_eq!(outcome.report.phase, Phase::Failed);
        assert!(outcome.report.message.contains("no shard 5"));

        let dead = info(&[(10, "Dead")], &[]);
        let outcome = report(decide_from(
            &placement(&["peer-1"], Approval::Automatic),
            &cluster(),
            &dead,
        ));
        assert_eq!(outcome.next, Next::Backoff);
        assert_eq!(outcome.report.degraded.reason, reason::NO_ACTIVE_REPLICA);
        assert_eq!(outcome.report.phase, Phase::Pending);
    }

    #[test]
    fn replicate_operation_has_qdrants_shape() {
        let op = replicate_operation(
            2,
            PeerId(1),
            PeerId(3),
            TransferMethod::StreamRecords,
            Some(&RateLimit {
                points_per_second: Some(5000),
                bytes_per_second: None,
            }),
            false,
        );
        assert_eq!(
            op,
            json!({"replicate_shard": {"shard_id": 2, "from_peer_id": 1, "to_peer_id": 3,
                "method": "stream_records", "rate_limit": {"points_per_second": 5000}}})
        );
        let op = replicate_operation(
            0,
            PeerId(1),
            PeerId(2),
            TransferMethod::WalDelta,
            None,
            true,
        );
        assert_eq!(op["move_shard"]["method"], "wal_delta");
        assert!(op["move_shard"].get("rate_limit").is_none());
    }
}
