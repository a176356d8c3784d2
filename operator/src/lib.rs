//! Shoal's Kubernetes operator: the `ShardPlacement` and `Resharding` custom resources
//! ([`crd`]) and the pure planners that turn a spec plus observed cluster state into steps
//! ([`plan`]). The controller that observes the cluster over the node's admin gRPC API and
//! executes those steps is not built yet.

pub mod crd;
pub mod plan;
