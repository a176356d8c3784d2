//! Building `status` from what a reconcile found: phase, the three conditions, the plan with
//! the steps already done, progress.
//!
//! Pure (the clock comes in as a string), so that "the same observation gives the same
//! status" — which is what keeps the controller from patching, and from waking itself up,
//! when nothing changed — is unit-tested. It must not talk to Kubernetes.

use crate::crd::{
    Condition, ConditionStatus, OperationStatus, Phase, PlanStep, StepState, TransferStatus,
    condition_type, progress_summary, reason,
};

/// One condition's status, reason and message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cond {
    pub status: ConditionStatus,
    pub reason: &'static str,
    pub message: String,
}

impl Cond {
    fn new(status: ConditionStatus, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            reason,
            message: message.into(),
        }
    }
}

/// What one reconcile concluded, before it is merged with the previous status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub phase: Phase,
    pub ready: Cond,
    pub progressing: Cond,
    pub degraded: Cond,
    /// The remaining plan (Running for a step under way, Pending for the rest).
    pub plan: Vec<PlanStep>,
    pub transfers: Vec<TransferStatus>,
    pub message: String,
}

use ConditionStatus::{False, True, Unknown};

impl Report {
    /// The cluster matches the spec.
    pub fn converged(message: impl Into<String>) -> Self {
        let message = message.into();
        Self {
            phase: Phase::Succeeded,
            ready: Cond::new(True, reason::CONVERGED, &message),
            progressing: Cond::new(False, reason::CONVERGED, ""),
            degraded: Cond::new(False, reason::CONVERGED, ""),
            plan: Vec::new(),
            transfers: Vec::new(),
            message,
        }
    }

    /// Steps are running (or about to); `reason` says which kind of wait.
    pub fn progressing(
        reason: &'static str,
        message: impl Into<String>,
        plan: Vec<PlanStep>,
        transfers: Vec<TransferStatus>,
    ) -> Self {
        let message = message.into();
        Self {
            phase: Phase::Progressing,
            ready: Cond::new(False, reason, &message),
            progressing: Cond::new(True, reason, &message),
            degraded: Cond::new(False, reason, ""),
            plan,
            transfers,
            message,
        }
    }

    /// The plan waits for a person (manual approval or a resharding gate).
    pub fn planned(reason: &'static str, message: impl Into<String>, plan: Vec<PlanStep>) -> Self {
        let message = message.into();
        Self {
            phase: Phase::Planned,
            ready: Cond::new(False, reason, &message),
            progressing: Cond::new(False, reason, &message),
            degraded: Cond::new(False, reason, ""),
            plan,
            transfers: Vec::new(),
            message,
        }
    }

    /// The spec cannot be carried out; not retried until it changes.
    pub fn invalid(reason: &'static str, message: impl Into<String>) -> Self {
        let message = message.into();
        Self {
            phase: Phase::Failed,
            ready: Cond::new(False, reason, &message),
            progressing: Cond::new(False, reason, ""),
            degraded: Cond::new(True, reason, &message),
            plan: Vec::new(),
            transfers: Vec::new(),
            message,
        }
    }

    /// Something that may clear on its own (unreachable cluster, no active source, a
    /// conflicting transfer): keeps the previous phase (Pending if none), retried with backoff.
    pub fn transient(
        previous: Option<&OperationStatus>,
        reason: &'static str,
        message: impl Into<String>,
    ) -> Self {
        let message = message.into();
        let phase = match previous.map(|s| s.phase) {
            None | Some(Phase::Failed | Phase::Succeeded) => Phase::Pending,
            Some(p) => p,
        };
        Self {
            phase,
            ready: Cond::new(False, reason, &message),
            progressing: Cond::new(Unknown, reason, ""),
            degraded: Cond::new(True, reason, &message),
            // The previous plan stays as it was (its Done steps are kept by `build`).
            plan: previous
                .map(|s| {
                    s.plan
                        .iter()
                        .filter(|p| p.state != StepState::Done)
                        .cloned()
                        .collect()
                })
                .unwrap_or_default(),
            transfers: Vec::new(),
            message,
        }
    }
}

/// Two plan steps are the same step when they do the same thing to the same replicas;
/// a `Wait` for a transfer is the same step as the `Replicate` (or `Move`) that started it.
fn same_step(a: &PlanStep, b: &PlanStep) -> bool {
    let kind = |s: &PlanStep| match s.action.as_str() {
        "Wait" | "Move" => "Replicate".to_owned(),
        other => other.to_owned(),
    };
    kind(a) == kind(b) && a.shard == b.shard && a.from == b.from && a.to == b.to && a.peer == b.peer
}

/// Merges `report` into the status for `generation`: conditions keep their
/// `lastTransitionTime` while their status stays, and steps of the previous plan for the
/// same generation that are no longer pending are kept as Done, so `progress` counts them.
pub fn build(
    report: Report,
    generation: Option<i64>,
    previous: Option<&OperationStatus>,
    now: &str,
) -> OperationStatus {
    let same_generation = previous.is_some_and(|p| p.observed_generation == generation);
    let previous_conditions = previous
        .map(|p| p.conditions.as_slice())
        .unwrap_or_default();
    let condition = |type_: &str, c: Cond| {
        let last_transition_time = previous_conditions
            .iter()
            .find(|p| p.type_ == type_ && p.status == c.status)
            .map_or_else(|| now.to_owned(), |p| p.last_transition_time.clone());
        Condition {
            type_: type_.to_owned(),
            status: c.status,
            reason: c.reason.to_owned(),
            message: c.message,
            last_transition_time,
            observed_generation: generation,
        }
    };

    let mut plan: Vec<PlanStep> = Vec::new();
    if same_generation && report.phase != Phase::Failed {
        let previous_plan = previous.map(|p| p.plan.as_slice()).unwrap_or_default();
        for step in previous_plan {
            let still_to_do = report.plan.iter().any(|s| same_step(s, step));
            if step.state == StepState::Done || !still_to_do {
                plan.push(PlanStep {
                    state: StepState::Done,
                    ..step.clone()
                });
            }
        }
    }
    plan.extend(report.plan.iter().cloned());

    let done = plan.iter().filter(|s| s.state == StepState::Done).count();
    let percent = report
        .transfers
        .iter()
        .map(|t| t.percent)
        .min()
        .filter(|_| !report.transfers.is_empty());
    let progress = match report.phase {
        Phase::Failed => None,
        Phase::Succeeded if plan.is_empty() => Some("converged".to_owned()),
        _ => Some(progress_summary(done, plan.len(), percent)),
    };

    OperationStatus {
        observed_generation: generation,
        phase: report.phase,
        conditions: vec![
            condition(condition_type::READY, report.ready),
            condition(condition_type::PROGRESSING, report.progressing),
            condition(condition_type::DEGRADED, report.degraded),
        ],
        plan,
        transfers: report.transfers,
        progress,
        message: Some(report.message).filter(|m| !m.is_empty()),
    }
}

/// The Degraded condition, when it is true.
pub fn degraded(status: &OperationStatus) -> Option<&Condition> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == condition_type::DEGRADED && c.status == ConditionStatus::True)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(action: &str, from: &str, to: &str, state: StepState) -> PlanStep {
        PlanStep {
            description: format!("{action} {from} {to}"),
            action: action.into(),
            shard: Some(0),
            from: Some(from.into()),
            to: Some(to.into()),
            peer: None,
            state,
        }
    }

    fn drop_step(peer: &str) -> PlanStep {
        PlanStep {
            description: format!("drop {peer}"),
            action: "Drop".into(),
            shard: Some(0),
            peer: Some(peer.into()),
            ..PlanStep::default()
        }
    }

    #[test]
    fn same_observation_gives_the_same_status() {
        let report = || {
            Report::progressing(
                reason::TRANSFER_RUNNING,
                "copying",
                vec![step("Wait", "a", "b", StepState::Running), drop_step("a")],
                vec![],
            )
        };
        let first = build(report(), Some(1), None, "t1");
        let second = build(report(), Some(1), Some(&first), "t2");
        assert_eq!(first, second, "no change, so no patch and no wake-up");
        assert_eq!(second.conditions[0].last_transition_time, "t1");
        assert_eq!(second.progress.as_deref(), Some("0/2 steps"));
    }

    #[test]
    fn finished_steps_are_kept_as_done_and_counted() {
        let first = build(
            Report::progressing(
                reason::TRANSFER_RUNNING,
                "",
                vec![
                    step("Replicate", "a", "b", StepState::Running),
                    drop_step("a"),
                ],
                vec![],
            ),
            Some(3),
            None,
            "t1",
        );
        let second = build(
            Report::progressing(reason::PLANNED, "", vec![drop_step("a")], vec![]),
            Some(3),
            Some(&first),
            "t2",
        );
        assert_eq!(second.plan.len(), 2);
        assert_eq!(second.plan[0].state, StepState::Done);
        assert_eq!(second.progress.as_deref(), Some("1/2 steps"));
        let third = build(Report::converged("done"), Some(3), Some(&second), "t3");
        assert_eq!(third.phase, Phase::Succeeded);
        assert!(third.plan.iter().all(|s| s.state == StepState::Done));
        assert_eq!(third.progress.as_deref(), Some("2/2 steps"));
        // Ready flipped at t3; Degraded stayed False since t1.
        assert_eq!(third.conditions[0].last_transition_time, "t3");
        assert_eq!(third.conditions[2].last_transition_time, "t1");
        // A new generation starts a fresh plan.
        let fourth = build(Report::converged("done"), Some(4), Some(&third), "t4");
        assert!(fourth.plan.is_empty());
        assert_eq!(fourth.progress.as_deref(), Some("converged"));
    }

    #[test]
    fn invalid_spec_is_failed_and_degraded_with_the_message() {
        let s = build(
            Report::invalid(reason::UNKNOWN_PEER, "peer `x` is unknown"),
            Some(2),
            None,
            "t",
        );
        assert_eq!(s.phase, Phase::Failed);
        let d = degraded(&s).expect("degraded");
        assert_eq!(d.reason, reason::UNKNOWN_PEER);
        assert_eq!(d.message, "peer `x` is unknown");
        assert_eq!(s.observed_generation, Some(2));
    }

    #[test]
    fn transient_keeps_phase_and_plan() {
        let running = build(
            Report::progressing(
                reason::TRANSFER_RUNNING,
                "",
                vec![step("Wait", "a", "b", StepState::Running)],
                vec![],
            ),
            Some(1),
            None,
            "t1",
        );
        let t = build(
            Report::transient(Some(&running), reason::CLUSTER_UNREACHABLE, "down"),
            Some(1),
            Some(&running),
            "t2",
        );
        assert_eq!(t.phase, Phase::Progressing);
        assert_eq!(t.plan, running.plan);
        assert!(degraded(&t).is_some());
        let fresh = build(
            Report::transient(None, reason::CLUSTER_UNREACHABLE, "down"),
            Some(1),
            None,
            "t",
        );
        assert_eq!(fresh.phase, Phase::Pending);
    }
}
