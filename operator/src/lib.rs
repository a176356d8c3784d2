//! Shoal's Kubernetes operator: the `ShardPlacement` and `Resharding` custom resources
//! ([`crd`]), the pure planners that turn a spec plus observed cluster state into steps
//! ([`plan`]), the translation of the node's admin gRPC answers ([`observe`]) and status
//! building ([`status`]), and the I/O around them: the node client ([`node_client`]), the
//! controllers ([`controller`]), leader election ([`leader`]) and metrics ([`metrics`]).

pub mod controller;
pub mod crd;
pub mod leader;
pub mod metrics;
pub mod node_client;
pub mod observe;
pub mod plan;
pub mod status;
