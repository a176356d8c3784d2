//! The pure planners: desired state (a CR spec) + observed cluster state → the next steps.
//!
//! This module owns the decisions of the operator — which replica to copy from, in what order
//! replicas are added and dropped, when a resharding may commit — and nothing else. It has no
//! client, no I/O and no clock: plain values in, plain values out, so every rule here is
//! covered by unit and property tests. The controller observes, calls a planner, executes
//! only the first step, and plans again on the next reconcile (level-triggered, so a restart
//! between steps only repeats the planning).
//!
//! The operator must not depend on the node crate, so the few cluster concepts the planners
//! need (peer ids, replica states) are mirrored here from DESIGN.md.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::crd::{Approval, PlanStep};

/// A node's id in the cluster (Raft node id).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerId(pub u64);

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A peer as the cluster reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub id: PeerId,
    pub name: String,
}

/// State of one replica of a shard (the "Replica states" table in DESIGN.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplicaState {
    Initializing,
    Active,
    Listener,
    Partial,
    Recovery,
    Resharding,
    ReshardingScaleDown,
    Dead,
}

impl ReplicaState {
    /// Whether the replica is a sound source of truth: it may be copied from, and it counts
    /// towards the "never fewer active replicas" guard. A shard being drained by a scale-down
    /// still holds all its points and still serves reads, so it counts.
    pub fn is_active(self) -> bool {
        matches!(self, Self::Active | Self::ReshardingScaleDown)
    }
}

/// A running transfer of the shard being planned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transfer {
    pub from: PeerId,
    pub to: PeerId,
}

/// What the cluster reports about one shard.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObservedShard {
    pub replicas: BTreeMap<PeerId, ReplicaState>,
    /// Transfers of this shard that are running, whoever started them.
    pub transfers: Vec<Transfer>,
}

impl ObservedShard {
    pub fn active_count(&self) -> usize {
        self.replicas.values().filter(|s| s.is_active()).count()
    }
}

/// One step of a placement plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Copy the shard from an active replica to a peer that should hold it.
    Replicate { from: PeerId, to: PeerId },
    /// Remove the replica on a peer that should not hold the shard.
    Drop { peer: PeerId },
    /// A transfer of this shard is running; only one runs at a time per shard.
    Wait { transfer: Transfer },
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Replicate { from, to } => write!(f, "replicate from peer {from} to peer {to}"),
            Self::Drop { peer } => write!(f, "drop the replica on peer {peer}"),
            Self::Wait { transfer } => write!(
                f,
                "wait for the transfer from peer {} to peer {}",
                transfer.from, transfer.to
            ),
        }
    }
}

/// A peer as people know it: its name, or its id when the cluster reports no such peer.
fn peer_name(id: PeerId, peers: &[Peer]) -> String {
    peers
        .iter()
        .find(|p| p.id == id)
        .map_or_else(|| id.to_string(), |p| p.name.clone())
}

impl Step {
    /// The step as written to `status.plan` for shard `shard`, peers by name.
    pub fn to_status(&self, shard: u32, peers: &[Peer]) -> PlanStep {
        let name = |id| peer_name(id, peers);
        match *self {
            Self::Replicate { from, to } => PlanStep {
                description: format!(
                    "replicate shard {shard} from {} to {}",
                    name(from),
                    name(to)
                ),
                action: "Replicate".to_owned(),
                shard: Some(shard),
                from: Some(name(from)),
                to: Some(name(to)),
                ..PlanStep::default()
            },
            Self::Drop { peer } => PlanStep {
                description: format!("drop shard {shard} from {}", name(peer)),
                action: "Drop".to_owned(),
                shard: Some(shard),
                peer: Some(name(peer)),
                ..PlanStep::default()
            },
            Self::Wait { transfer } => PlanStep {
                description: format!(
                    "wait for the transfer of shard {shard} from {} to {}",
                    name(transfer.from),
                    name(transfer.to)
                ),
                action: "Wait".to_owned(),
                shard: Some(shard),
                from: Some(name(transfer.from)),
                to: Some(name(transfer.to)),
                ..PlanStep::default()
            },
        }
    }
}

/// Why no plan could be made.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error(
        "peer `{0}` in spec.replicas is neither the name nor the id of a cluster member; \
         fix the spec or add the peer"
    )]
    UnknownPeer(String),
    #[error(
        "peer `{0}` appears more than once in spec.replicas (names and ids of the same peer count as one)"
    )]
    DuplicatePeer(String),
    #[error("spec.replicas is empty; a shard needs at least one replica")]
    NoReplicas,
    #[error(
        "the shard has no Active replica to copy from; the nodes recover Dead replicas on \
         their own, the plan is retried once one is Active"
    )]
    NoActiveReplica,
    #[error("desired shard count must be at least 1")]
    InvalidShardCount,
}

impl PlanError {
    /// Whether the spec itself is wrong (report it, do not retry until the spec changes), as
    /// opposed to a cluster condition that may clear on its own.
    pub fn is_invalid_spec(&self) -> bool {
        !matches!(self, Self::NoActiveReplica)
    }
}

/// Resolves `spec.replicas` entries (peer names, or peer ids written as strings) against the
/// cluster's peers. A name wins over an id: a peer literally named `"3"` is that peer.
pub fn resolve_peers(desired: &[String], peers: &[Peer]) -> Result<BTreeSet<PeerId>, PlanError> {
    if desired.is_empty() {
        return Err(PlanError::NoReplicas);
    }
    let mut resolved = BTreeSet::new();
    for entry in desired {
        let id = peers
            .iter()
            .find(|p| p.name == *entry)
            .or_else(|| {
                let id = entry.parse::<u64>().ok()?;
                peers.iter().find(|p| p.id.0 == id)
            })
            .map(|p| p.id)
            .ok_or_else(|| PlanError::UnknownPeer(entry.clone()))?;
        if !resolved.insert(id) {
            return Err(PlanError::DuplicatePeer(entry.clone()));
        }
    }
    Ok(resolved)
}

/// Plans the whole way from `observed` to replicas on exactly the `desired` peers, all Active.
///
/// Order: a running transfer first (`Wait`), then every `Replicate` (one per missing or
/// not-yet-active desired replica), then every `Drop` (inactive replicas first). Because drops
/// come only after all replicates, a replica is never dropped before its replacement is
/// Active, and since at least one desired replica is then Active, the last active replica is
/// never dropped. The steps after a `Wait` assume that transfer succeeds; the controller
/// re-plans after every step anyway.
///
/// An empty plan means converged.
pub fn plan_placement(
    desired: &[String],
    observed: &ObservedShard,
    peers: &[Peer],
) -> Result<Vec<Step>, PlanError> {
    let desired = resolve_peers(desired, peers)?;
    let mut state = observed.replicas.clone();
    let mut steps = Vec::new();

    // One transfer at a time per shard: the running ones go first, and the rest of the plan
    // is computed on the state they will leave behind.
    for transfer in &observed.transfers {
        steps.push(Step::Wait {
            transfer: *transfer,
        });
        state.insert(transfer.to, ReplicaState::Active);
    }

    let missing: Vec<PeerId> = desired
        .iter()
        .copied()
        .filter(|peer| !state.get(peer).is_some_and(|s| s.is_active()))
        .collect();
    if !missing.is_empty() {
        // Prefer a source that stays: copying from a replica about to be dropped would work
        // too, but keeps load on a peer the user is moving away from.
        let source = state
            .iter()
            .filter(|(_, s)| s.is_active())
            .map(|(peer, _)| *peer)
            .min_by_key(|peer| !desired.contains(peer))
            .ok_or(PlanError::NoActiveReplica)?;
        for to in missing {
            steps.push(Step::Replicate { from: source, to });
            state.insert(to, ReplicaState::Active);
        }
    }

    // Inactive replicas first: dropping them never lowers the active count.
    let mut surplus: Vec<(PeerId, ReplicaState)> = state
        .iter()
        .filter(|(peer, _)| !desired.contains(peer))
        .map(|(peer, s)| (*peer, *s))
        .collect();
    surplus.sort_by_key(|(peer, s)| (s.is_active(), *peer));
    for (peer, replica_state) in surplus {
        let active_after = state.values().filter(|s| s.is_active()).count()
            - usize::from(replica_state.is_active());
        // Unreachable given the order above (desired is non-empty and fully Active by now),
        // kept as the guard the invariant names rather than trusting the ordering alone.
        if replica_state.is_active() && active_after == 0 {
            continue;
        }
        steps.push(Step::Drop { peer });
        state.remove(&peer);
    }
    Ok(steps)
}

/// The first step of [`plan_placement`], or `None` when the shard is converged. A `Wait` is
/// returned as is: the controller reports it and requeues instead of acting.
pub fn next_step(
    desired: &[String],
    observed: &ObservedShard,
    peers: &[Peer],
) -> Result<Option<Step>, PlanError> {
    Ok(plan_placement(desired, observed, peers)?.into_iter().next())
}

/// Direction of a running resharding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Up,
    Down,
}

/// Stage of a running resharding (see "Resharding" in DESIGN.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReshardingStage {
    /// Points are streaming to the shards the new hash ring assigns them.
    MigratingPoints,
    /// All points moved; reads still use the old ring.
    PointsMigrated,
    /// Reads use the new ring.
    ReadCommitted,
    /// Writes use the new ring too; only `Finish` remains (abort is no longer possible).
    WriteCommitted,
}

/// A resharding the cluster reports as running.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReshardingProgress {
    pub direction: Direction,
    pub stage: ReshardingStage,
}

/// The manual gates of a `Resharding` spec.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Gates {
    pub commit_read: Approval,
    pub commit_write: Approval,
}

/// Which gate holds a resharding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gate {
    CommitRead,
    CommitWrite,
}

/// The next action of a resharding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReshardingStep {
    /// Add one shard.
    StartUp,
    /// Remove one shard.
    StartDown,
    /// Points are still moving; nothing to do but report progress.
    WaitForMigration,
    /// The spec's gate is `Manual`; proceeds once the user sets it to `Automatic`.
    WaitForGate(Gate),
    CommitRead,
    CommitWrite,
    Finish,
    /// The collection has the desired shard count.
    Done,
}

impl ReshardingStep {
    /// The step as written to `status.plan`.
    pub fn to_status(&self) -> PlanStep {
        let (action, description) = match self {
            Self::StartUp => ("StartUp", "add one shard"),
            Self::StartDown => ("StartDown", "remove one shard"),
            Self::WaitForMigration => (
                "WaitForMigration",
                "wait for points to reach their new shard",
            ),
            Self::WaitForGate(Gate::CommitRead) => (
                "WaitForGate",
                "wait for spec.commitRead to be set to Automatic",
            ),
            Self::WaitForGate(Gate::CommitWrite) => (
                "WaitForGate",
                "wait for spec.commitWrite to be set to Automatic",
            ),
            Self::CommitRead => ("CommitRead", "switch reads to the new hash ring"),
            Self::CommitWrite => ("CommitWrite", "switch writes to the new hash ring"),
            Self::Finish => ("Finish", "finish the resharding and delete moved points"),
            Self::Done => ("Done", "the collection has the desired shard count"),
        };
        PlanStep {
            description: description.to_owned(),
            action: action.to_owned(),
            ..PlanStep::default()
        }
    }
}

/// Plans one resharding step. Shard counts change one shard per resharding, so 3 → 5 is two
/// scale-ups, each through all stages.
///
/// A resharding that is already running is always completed, even if the spec changed
/// direction meanwhile: abort is impossible after CommitWrite anyway, and completing then
/// going back keeps one simple rule. The next call then moves towards the new count.
pub fn plan_resharding(
    current_shards: u32,
    desired_shards: u32,
    in_progress: Option<ReshardingProgress>,
    gates: Gates,
) -> Result<ReshardingStep, PlanError> {
    if desired_shards == 0 {
        return Err(PlanError::InvalidShardCount);
    }
    let Some(progress) = in_progress else {
        return Ok(match current_shards.cmp(&desired_shards) {
            std::cmp::Ordering::Less => ReshardingStep::StartUp,
            std::cmp::Ordering::Greater => ReshardingStep::StartDown,
            std::cmp::Ordering::Equal => ReshardingStep::Done,
        });
    };
    Ok(match progress.stage {
        ReshardingStage::MigratingPoints => ReshardingStep::WaitForMigration,
        ReshardingStage::PointsMigrated => match gates.commit_read {
            Approval::Automatic => ReshardingStep::CommitRead,
            Approval::Manual => ReshardingStep::WaitForGate(Gate::CommitRead),
        },
        ReshardingStage::ReadCommitted => match gates.commit_write {
            Approval::Automatic => ReshardingStep::CommitWrite,
            Approval::Manual => ReshardingStep::WaitForGate(Gate::CommitWrite),
        },
        ReshardingStage::WriteCommitted => ReshardingStep::Finish,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn peers(n: u64) -> Vec<Peer> {
        (0..n)
            .map(|i| Peer {
                id: PeerId(i),
                name: format!("shoal-{i}"),
            })
            .collect()
    }

    fn names(ids: &[u64]) -> Vec<String> {
        ids.iter().map(|i| format!("shoal-{i}")).collect()
    }

    fn shard(replicas: &[(u64, ReplicaState)]) -> ObservedShard {
        ObservedShard {
            replicas: replicas.iter().map(|(p, s)| (PeerId(*p), *s)).collect(),
            transfers: Vec::new(),
        }
    }

    use ReplicaState::{Active, Dead, Partial};

    #[test]
    fn move_replicates_before_dropping() {
        let observed = shard(&[(0, Active), (1, Active)]);
        let plan = plan_placement(&names(&[0, 2]), &observed, &peers(3)).unwrap();
        assert_eq!(
            plan,
            vec![
                Step::Replicate {
                    from: PeerId(0),
                    to: PeerId(2)
                },
                Step::Drop { peer: PeerId(1) },
            ]
        );
    }

    #[test]
    fn status_steps_name_peers_for_people() {
        let step = Step::Replicate {
            from: PeerId(0),
            to: PeerId(2),
        };
        let status = step.to_status(2, &peers(3));
        assert_eq!(
            status.description,
            "replicate shard 2 from shoal-0 to shoal-2"
        );
        assert_eq!(status.action, "Replicate");
        assert_eq!(
            (status.from.as_deref(), status.to.as_deref()),
            (Some("shoal-0"), Some("shoal-2"))
        );
        // A peer the cluster no longer reports is still shown, by id.
        let status = Step::Drop { peer: PeerId(9) }.to_status(2, &peers(3));
        assert_eq!(status.peer.as_deref(), Some("9"));
        assert_eq!(
            ReshardingStep::WaitForGate(Gate::CommitWrite)
                .to_status()
                .description,
            "wait for spec.commitWrite to be set to Automatic"
        );
    }

    #[test]
    fn converged_shard_has_empty_plan() {
        let observed = shard(&[(0, Active), (2, Active)]);
        assert_eq!(next_step(&names(&[2, 0]), &observed, &peers(3)), Ok(None));
    }

    #[test]
    fn peer_ids_as_strings_resolve() {
        let observed = shard(&[(0, Active)]);
        let plan = plan_placement(&["0".into(), "1".into()], &observed, &peers(2)).unwrap();
        assert_eq!(
            plan,
            vec![Step::Replicate {
                from: PeerId(0),
                to: PeerId(1)
            }]
        );
    }

    #[test]
    fn unknown_and_duplicate_peers_are_invalid_specs() {
        let observed = shard(&[(0, Active)]);
        let err = plan_placement(&names(&[0, 9]), &observed, &peers(3)).unwrap_err();
        assert_eq!(err, PlanError::UnknownPeer("shoal-9".into()));
        assert!(err.is_invalid_spec());
        let err =
            plan_placement(&["shoal-1".into(), "1".into()], &observed, &peers(3)).unwrap_err();
        assert_eq!(err, PlanError::DuplicatePeer("1".into()));
        assert_eq!(
            plan_placement(&[], &observed, &peers(3)),
            Err(PlanError::NoReplicas)
        );
    }

    #[test]
    fn running_transfer_means_wait_first() {
        let mut observed = shard(&[(0, Active), (1, Partial)]);
        let transfer = Transfer {
            from: PeerId(0),
            to: PeerId(1),
        };
        observed.transfers.push(transfer);
        // Desired {1, 2}: wait for 0→1, then 1 and 2 ... the rest assumes the transfer lands.
        let plan = plan_placement(&names(&[1, 2]), &observed, &peers(3)).unwrap();
        assert_eq!(plan[0], Step::Wait { transfer });
        assert_eq!(
            plan[1..],
            [
                Step::Replicate {
                    from: PeerId(1),
                    to: PeerId(2)
                },
                Step::Drop { peer: PeerId(0) },
            ]
        );
        assert_eq!(
            next_step(&names(&[1, 2]), &observed, &peers(3)),
            Ok(Some(Step::Wait { transfer }))
        );
    }

    #[test]
    fn dead_desired_replica_is_refilled_and_dead_surplus_dropped_first() {
        let observed = shard(&[(0, Active), (1, Dead), (2, Dead), (3, Active)]);
        let plan = plan_placement(&names(&[0, 1]), &observed, &peers(4)).unwrap();
        assert_eq!(
            plan,
            vec![
                Step::Replicate {
                    from: PeerId(0),
                    to: PeerId(1)
                },
                Step::Drop { peer: PeerId(2) },
                Step::Drop { peer: PeerId(3) },
            ]
        );
    }

    #[test]
    fn no_active_source_is_a_retryable_error() {
        let observed = shard(&[(0, Dead)]);
        let err = plan_placement(&names(&[1]), &observed, &peers(2)).unwrap_err();
        assert_eq!(err, PlanError::NoActiveReplica);
        assert!(!err.is_invalid_spec());
    }

    #[test]
    fn resharding_three_to_five_is_two_scale_ups() {
        let gates = Gates::default();
        let mut count = 3;
        let mut progress = None;
        let mut starts = 0;
        loop {
            let step = plan_resharding(count, 5, progress, gates).unwrap();
            match step {
                ReshardingStep::Done => break,
                ReshardingStep::StartUp => starts += 1,
                ReshardingStep::StartDown => panic!("3 -> 5 never scales down"),
                _ => {}
            }
            (progress, count) = apply_resharding(progress, count, step);
        }
        assert_eq!((count, starts), (5, 2));
    }

    #[test]
    fn resharding_validates_and_honours_gates() {
        assert_eq!(
            plan_resharding(3, 0, None, Gates::default()),
            Err(PlanError::InvalidShardCount)
        );
        assert_eq!(
            plan_resharding(4, 2, None, Gates::default()),
            Ok(ReshardingStep::StartDown)
        );
        let migrated = Some(ReshardingProgress {
            direction: Direction::Down,
            stage: ReshardingStage::PointsMigrated,
        });
        let manual = Gates {
            commit_read: Approval::Manual,
            commit_write: Approval::Manual,
        };
        assert_eq!(
            plan_resharding(4, 2, migrated, manual),
            Ok(ReshardingStep::WaitForGate(Gate::CommitRead))
        );
        let read_committed = Some(ReshardingProgress {
            direction: Direction::Down,
            stage: ReshardingStage::ReadCommitted,
        });
        assert_eq!(
            plan_resharding(4, 2, read_committed, manual),
            Ok(ReshardingStep::WaitForGate(Gate::CommitWrite))
        );
    }

    /// Applies a placement step to a simulated shard: a replicate lands as Active (the
    /// transfer finished), a drop removes the replica, a wait lets the running transfer finish.
    fn apply_placement(state: &mut ObservedShard, step: Step) {
        match step {
            Step::Replicate { from, to } => {
                assert!(
                    state.replicas.get(&from).is_some_and(|s| s.is_active()),
                    "replicate from a non-active replica: {step}"
                );
                state.replicas.insert(to, Active);
            }
            Step::Drop { peer } => {
                assert!(
                    state.replicas.remove(&peer).is_some(),
                    "drop of absent replica"
                );
            }
            Step::Wait { transfer } => {
                state.transfers.retain(|t| *t != transfer);
                state.replicas.insert(transfer.to, Active);
            }
        }
    }

    /// Applies a resharding step to a simulated collection (gate waits change nothing).
    fn apply_resharding(
        progress: Option<ReshardingProgress>,
        count: u32,
        step: ReshardingStep,
    ) -> (Option<ReshardingProgress>, u32) {
        let at = |direction, stage| Some(ReshardingProgress { direction, stage });
        let direction = progress.map(|p| p.direction);
        match (step, direction) {
            (ReshardingStep::StartUp, None) => {
                (at(Direction::Up, ReshardingStage::MigratingPoints), count)
            }
            (ReshardingStep::StartDown, None) => {
                (at(Direction::Down, ReshardingStage::MigratingPoints), count)
            }
            (ReshardingStep::WaitForMigration, Some(d)) => {
                (at(d, ReshardingStage::PointsMigrated), count)
            }
            (ReshardingStep::CommitRead, Some(d)) => (at(d, ReshardingStage::ReadCommitted), count),
            (ReshardingStep::CommitWrite, Some(d)) => {
                (at(d, ReshardingStage::WriteCommitted), count)
            }
            (ReshardingStep::Finish, Some(Direction::Up)) => (None, count + 1),
            (ReshardingStep::Finish, Some(Direction::Down)) => (None, count - 1),
            (ReshardingStep::WaitForGate(_) | ReshardingStep::Done, _) => (progress, count),
            (step, direction) => panic!("{step:?} planned while direction is {direction:?}"),
        }
    }

    const PEERS: u64 = 6;

    fn replica_state() -> impl Strategy<Value = ReplicaState> {
        prop_oneof![
            4 => Just(Active),
            1 => Just(ReplicaState::Initializing),
            1 => Just(ReplicaState::Listener),
            1 => Just(Partial),
            1 => Just(ReplicaState::Recovery),
            1 => Just(ReplicaState::ReshardingScaleDown),
            1 => Just(Dead),
        ]
    }

    /// Any shard with at least one active replica, optionally with one running transfer from
    /// an active replica into a peer whose replica is still filling.
    fn observed_shard() -> impl Strategy<Value = ObservedShard> {
        (
            prop::collection::btree_map(0..PEERS, replica_state(), 1..=PEERS as usize),
            any::<prop::sample::Index>(),
            any::<prop::sample::Index>(),
            any::<bool>(),
        )
            .prop_filter_map(
                "needs an active replica",
                |(replicas, src, dst, running)| {
                    let replicas: BTreeMap<PeerId, ReplicaState> =
                        replicas.into_iter().map(|(p, s)| (PeerId(p), s)).collect();
                    let active: Vec<PeerId> = replicas
                        .iter()
                        .filter(|(_, s)| s.is_active())
                        .map(|(p, _)| *p)
                        .collect();
                    if active.is_empty() {
                        return None;
                    }
                    let mut shard = ObservedShard {
                        replicas,
                        transfers: Vec::new(),
                    };
                    let others: Vec<PeerId> = (0..PEERS)
                        .map(PeerId)
                        .filter(|p| !shard.replicas.get(p).is_some_and(|s| s.is_active()))
                        .collect();
                    if running && !others.is_empty() {
                        let from = *src.get(&active);
                        let to = *dst.get(&others);
                        shard.replicas.insert(to, Partial);
                        shard.transfers.push(Transfer { from, to });
                    }
                    Some(shard)
                },
            )
    }

    /// A valid desired set, written half as names, half as id strings.
    fn desired_set() -> impl Strategy<Value = Vec<String>> {
        prop::collection::btree_set(0..PEERS, 1..=PEERS as usize).prop_map(|set| {
            set.into_iter()
                .map(|p| {
                    if p % 2 == 0 {
                        format!("shoal-{p}")
                    } else {
                        p.to_string()
                    }
                })
                .collect()
        })
    }

    proptest! {
        /// Executing the plan one step at a time (re-planning after each, as the controller
        /// does) reaches exactly the desired peers, all Active, within a bounded number of
        /// steps, and never passes through a state with fewer active replicas than
        /// min(1, initial active count).
        #[test]
        fn placement_converges_safely(observed in observed_shard(), desired in desired_set()) {
            let known = peers(PEERS);
            let target = resolve_peers(&desired, &known).unwrap();
            let floor = observed.active_count().min(1);
            let bound = observed.replicas.len() + target.len() + observed.transfers.len();
            let mut state = observed.clone();
            let mut steps = 0;
            while let Some(step) = next_step(&desired, &state, &known).unwrap() {
                prop_assert!(steps < bound, "no convergence within {bound} steps: {state:?}");
                // Plans only name known peers.
                let named = match step {
                    Step::Replicate { from, to } => vec![from, to],
                    Step::Drop { peer } => vec![peer],
                    Step::Wait { transfer } => vec![transfer.from, transfer.to],
                };
                prop_assert!(named.iter().all(|p| known.iter().any(|k| k.id == *p)));
                // One transfer at a time per shard.
                if !state.transfers.is_empty() {
                    prop_assert!(matches!(step, Step::Wait { .. }), "{step} while a transfer runs");
                }
                apply_placement(&mut state, step);
                prop_assert!(
                    state.active_count() >= floor,
                    "active replicas fell to {} after {step}", state.active_count()
                );
                steps += 1;
            }
            let holders: BTreeSet<PeerId> = state.replicas.keys().copied().collect();
            prop_assert_eq!(holders, target);
            prop_assert!(state.replicas.values().all(|s| s.is_active()));
        }

        /// The full plan agrees with step-by-step execution: applying it in one go reaches the
        /// same place, and no replica is dropped before every replicate is done.
        #[test]
        fn full_plan_replicates_before_dropping(observed in observed_shard(), desired in desired_set()) {
            let known = peers(PEERS);
            let plan = plan_placement(&desired, &observed, &known).unwrap();
            let first_drop = plan.iter().position(|s| matches!(s, Step::Drop { .. }));
            let last_replicate = plan.iter().rposition(|s| matches!(s, Step::Replicate { .. }));
            if let (Some(d), Some(r)) = (first_drop, last_replicate) {
                prop_assert!(r < d, "drop before replicate in {plan:?}");
            }
            let mut state = observed.clone();
            for step in plan {
                apply_placement(&mut state, step);
            }
            prop_assert_eq!(next_step(&desired, &state, &known).unwrap(), None);
        }

        /// Peers outside the cluster are always rejected, never planned for.
        #[test]
        fn unknown_peers_are_rejected(observed in observed_shard(), desired in desired_set(), stranger in PEERS..100) {
            let mut desired = desired;
            desired.push(format!("shoal-{stranger}"));
            prop_assert_eq!(
                plan_placement(&desired, &observed, &peers(PEERS)),
                Err(PlanError::UnknownPeer(format!("shoal-{stranger}")))
            );
        }

        /// The resharding planner reaches the desired count, one shard per resharding, and
        /// never commits through a Manual gate; the simulated user opens a gate only after
        /// `patience` waits on it.
        #[test]
        fn resharding_converges_and_honours_gates(
            current in 1u32..8,
            desired in 1u32..8,
            manual_read in any::<bool>(),
            manual_write in any::<bool>(),
            patience in 0usize..3,
        ) {
            let manual = |m| if m { Approval::Manual } else { Approval::Automatic };
            let mut gates = Gates { commit_read: manual(manual_read), commit_write: manual(manual_write) };
            let mut count = current;
            let mut progress = None;
            let mut waits = 0;
            let reshardings = current.abs_diff(desired) as usize;
            // Start, migrate, commit read, commit write, finish, plus the gate waits.
            let bound = reshardings * (5 + 2 * (patience + 1)) + 1;
            for _ in 0..bound {
                let step = plan_resharding(count, desired, progress, gates).unwrap();
                match step {
                    ReshardingStep::Done => break,
                    ReshardingStep::CommitRead => prop_assert_eq!(gates.commit_read, Approval::Automatic),
                    ReshardingStep::CommitWrite => prop_assert_eq!(gates.commit_write, Approval::Automatic),
                    ReshardingStep::StartUp => prop_assert!(count < desired),
                    ReshardingStep::StartDown => prop_assert!(count > desired),
                    ReshardingStep::WaitForGate(gate) => {
                        waits += 1;
                        if waits > patience {
                            waits = 0;
                            match gate {
                                Gate::CommitRead => gates.commit_read = Approval::Automatic,
                                Gate::CommitWrite => gates.commit_write = Approval::Automatic,
                            }
                        }
                    }
                    _ => {}
                }
                (progress, count) = apply_resharding(progress, count, step);
                prop_assert!(count >= 1);
            }
            prop_assert_eq!(count, desired);
            prop_assert_eq!(progress, None);
            prop_assert_eq!(plan_resharding(count, desired, progress, gates), Ok(ReshardingStep::Done));
        }

        /// With a gate left Manual, the planner waits forever rather than committing.
        #[test]
        fn manual_gate_is_never_passed(current in 1u32..8, desired in 1u32..8, read_gate in any::<bool>()) {
            prop_assume!(current != desired);
            let gates = if read_gate {
                Gates { commit_read: Approval::Manual, commit_write: Approval::Automatic }
            } else {
                Gates { commit_read: Approval::Automatic, commit_write: Approval::Manual }
            };
            let mut count = current;
            let mut progress = None;
            for _ in 0..20 {
                let step = plan_resharding(count, desired, progress, gates).unwrap();
                prop_assert_ne!(step, ReshardingStep::Done);
                if read_gate {
                    prop_assert_ne!(step, ReshardingStep::CommitRead);
                } else {
                    prop_assert_ne!(step, ReshardingStep::CommitWrite);
                }
                (progress, count) = apply_resharding(progress, count, step);
            }
            prop_assert_eq!(count, current);
        }
    }
}
