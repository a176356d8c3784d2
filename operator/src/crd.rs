//! The operator's custom resources: `ShardPlacement` and `Resharding` (group `shoal.dev`,
//! version `v1alpha1`).
//!
//! This module owns the wire shape of both resources — spec field names, the OpenAPI schema
//! guards the apiserver enforces, printer columns, and the status layout with its condition
//! types and reasons. The CRD YAML in `crds/` is generated from these types by `crdgen`, so any
//! change here must be followed by `cargo run -p shoal-operator --bin crdgen`.
//!
//! It must not contain reconcile logic or talk to a cluster: the planners live in
//! [`crate::plan`], the controllers ([`crate::controller`]) do the I/O.
//!
//! Spec field names are a public contract (manifests in users' Git repositories depend on
//! them); rename nothing without a new API version.
//!
//! Guards are plain OpenAPI (required, enum, minimum/maximum, oneOf of required sets) and no CEL,
//! because the apiserver our e2e runs against is Kubernetes 1.20.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Condition types written to `status.conditions`.
pub mod condition_type {
    /// The resource has converged: the cluster matches the spec.
    pub const READY: &str = "Ready";
    /// The operator is moving data (a transfer or a resharding stage is running).
    pub const PROGRESSING: &str = "Progressing";
    /// Something needs a person: invalid spec, unreachable cluster, failed transfer.
    pub const DEGRADED: &str = "Degraded";
}

/// Reasons written to `status.conditions[].reason`. CamelCase, stable: alerts and scripts match
/// on them.
pub mod reason {
    /// The cluster matches the spec.
    pub const CONVERGED: &str = "Converged";
    /// A plan was computed and is waiting to be executed.
    pub const PLANNED: &str = "Planned";
    /// `approval: Manual` holds the plan until the spec says `Automatic`.
    pub const AWAITING_APPROVAL: &str = "AwaitingApproval";
    /// A shard transfer of this resource is running.
    pub const TRANSFER_RUNNING: &str = "TransferRunning";
    /// A transfer started by someone else on this shard must finish first.
    pub const WAITING_FOR_TRANSFER: &str = "WaitingForTransfer";
    /// Resharding is streaming points to their new shard.
    pub const MIGRATING_POINTS: &str = "MigratingPoints";
    /// A manual resharding gate (`commitRead` / `commitWrite`) holds the next stage.
    pub const AWAITING_GATE: &str = "AwaitingGate";
    /// The spec cannot be carried out as written (retrying will not help).
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// A peer named in the spec is not a member of the cluster.
    pub const UNKNOWN_PEER: &str = "UnknownPeer";
    /// The shard has no Active replica to copy from; the nodes must recover one first.
    pub const NO_ACTIVE_REPLICA: &str = "NoActiveReplica";
    /// The node cluster could not be reached.
    pub const CLUSTER_UNREACHABLE: &str = "ClusterUnreachable";
    /// A transfer or resharding stage was aborted by the cluster.
    pub const TRANSFER_FAILED: &str = "TransferFailed";
}

/// How to reach the node cluster's admin gRPC service: exactly one of `service` (with `port`)
/// or `url`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
#[schemars(transform = any_of_to_one_of)]
pub enum ClusterRef {
    /// A Service in the resource's namespace.
    Service {
        /// Name of the Service in front of the nodes.
        #[schemars(length(min = 1))]
        service: String,
        /// The Service port of the admin gRPC API.
        #[schemars(range(min = 1, max = 65535))]
        port: u16,
    },
    /// A full URL, for clusters outside this namespace or outside Kubernetes.
    Url {
        /// For example `http://shoal.db.svc:6335`.
        #[schemars(length(min = 1))]
        url: String,
    },
}

/// Which shard a `ShardPlacement` is about: exactly one of `shardId` or `shardKey`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
#[schemars(transform = any_of_to_one_of)]
pub enum ShardSelector {
    /// A shard of an auto-sharded collection, by number.
    Id {
        /// The shard number within the collection.
        #[serde(rename = "shardId")]
        shard_id: u32,
    },
    /// The shard of a custom-sharded collection that holds this shard key.
    Key {
        /// The shard key.
        #[serde(rename = "shardKey")]
        #[schemars(length(min = 1))]
        shard_key: String,
    },
}

/// How data is copied to a new replica (see "Transfer methods" in DESIGN.md).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum TransferMethod {
    #[default]
    StreamRecords,
    Snapshot,
    WalDelta,
}

/// Whether the operator may proceed on its own (`Automatic`) or must wait until the spec is
/// changed to `Automatic` (`Manual`). The spec is the command, so approving is an edit of the
/// resource, never an annotation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Approval {
    #[default]
    Automatic,
    Manual,
}

/// Upper bounds for one transfer. At least one bound must be given.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("minProperties" = 1))]
pub struct RateLimit {
    /// Points streamed per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub points_per_second: Option<u64>,
    /// Bytes streamed per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub bytes_per_second: Option<u64>,
}

/// The desired replicas of one shard. The operator replicates to new peers first and drops
/// replicas only once their replacements are Active.
// Several `printcolumn(type_ = "string", ..)` entries are distinct columns, not duplicates;
// clippy's duplicated_attributes cannot tell.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "shoal.dev",
    version = "v1alpha1",
    kind = "ShardPlacement",
    namespaced,
    status = "OperationStatus",
    shortname = "spl",
    category = "shoal",
    doc = "The desired replicas of one shard of a Shoal collection.",
    printcolumn(name = "Collection", type_ = "string", json_path = ".spec.collection"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Progress", type_ = "string", json_path = ".status.progress"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ShardPlacementSpec {
    /// The node cluster that holds the collection.
    pub cluster: ClusterRef,
    /// The collection name.
    #[schemars(length(min = 1))]
    pub collection: String,
    /// The shard: `shardId` or `shardKey`.
    #[serde(flatten)]
    pub shard: ShardSelector,
    /// Desired peers, by peer name or by peer id written as a string. Order does not matter.
    #[schemars(length(min = 1), extend("x-kubernetes-list-type" = "set"))]
    pub replicas: Vec<String>,
    /// How new replicas are filled.
    #[serde(default)]
    pub method: TransferMethod,
    /// Optional throttle for each transfer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// `Manual` computes and shows the plan (phase Planned) without executing it.
    #[serde(default)]
    pub approval: Approval,
}

/// The desired shard count of a collection (or of one shard key's shards). Moves one shard
/// at a time through scale-up or scale-down, with optional manual gates before committing
/// reads and writes to the new hash ring.
// Several `printcolumn(type_ = "string", ..)` entries are distinct columns, not duplicates;
// clippy's duplicated_attributes cannot tell.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "shoal.dev",
    version = "v1alpha1",
    kind = "Resharding",
    namespaced,
    status = "OperationStatus",
    shortname = "rsh",
    category = "shoal",
    doc = "The desired shard count of a Shoal collection.",
    printcolumn(name = "Collection", type_ = "string", json_path = ".spec.collection"),
    printcolumn(name = "Shards", type_ = "integer", json_path = ".spec.shards"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Progress", type_ = "string", json_path = ".status.progress"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ReshardingSpec {
    /// The node cluster that holds the collection.
    pub cluster: ClusterRef,
    /// The collection name.
    #[schemars(length(min = 1))]
    pub collection: String,
    /// Desired number of shards.
    #[schemars(range(min = 1))]
    pub shards: u32,
    /// Reshard only the shards of this shard key (custom-sharded collections).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub shard_key: Option<String>,
    /// Gate before reads switch to the new hash ring.
    #[serde(default)]
    pub commit_read: Approval,
    /// Gate before writes switch to the new hash ring (after this, abort is impossible).
    #[serde(default)]
    pub commit_write: Approval,
}

/// Where a resource is in its life.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Phase {
    /// Not looked at yet, or the cluster has not been observed.
    #[default]
    Pending,
    /// A plan exists and waits (manual approval or a gate).
    Planned,
    /// Steps of the plan are running.
    Progressing,
    /// The cluster matches the spec.
    Succeeded,
    /// The spec cannot be carried out; see the Degraded condition.
    Failed,
}

/// The three values of `metav1.Condition.status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ConditionStatus {
    True,
    False,
    #[default]
    Unknown,
}

/// A condition in the shape of `metav1.Condition`.
//
// Our own type rather than k8s-openapi's so the timestamp stays a plain RFC 3339 string,
// independent of k8s-openapi's time library. Types and reasons are the constants in
// `condition_type` and `reason`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// `Ready`, `Progressing` or `Degraded`.
    #[serde(rename = "type")]
    pub type_: String,
    pub status: ConditionStatus,
    /// Why the condition has its status, one CamelCase word such as `Converged`.
    pub reason: String,
    #[serde(default)]
    pub message: String,
    /// When `status` last changed, RFC 3339.
    pub last_transition_time: String,
    /// The `metadata.generation` this condition was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Where a plan step stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum StepState {
    #[default]
    Pending,
    Running,
    Done,
}

/// One step of the plan, both for people (`description`) and for tools (the other fields).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlanStep {
    /// For example `replicate shard 2 from shoal-0 to shoal-2`.
    pub description: String,
    /// The step kind, e.g. `Replicate`, `Drop`, `Wait`, `StartUp`, `CommitRead`.
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<u32>,
    /// Source peer of a transfer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Destination peer of a transfer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// The peer a replica is dropped from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    #[serde(default)]
    pub state: StepState,
}

/// Progress of one running shard transfer, as reported by the sending node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TransferStatus {
    pub shard: u32,
    pub from: String,
    pub to: String,
    pub points_done: u64,
    pub points_total: u64,
    #[schemars(range(max = 100))]
    pub percent: u8,
    /// Absent until the sender has a rate to extrapolate from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_seconds: Option<u64>,
}

/// What the operator last observed and planned.
//
// Shared by `ShardPlacement` and `Resharding`: both are "a plan of steps that move data", so
// one shape keeps dashboards and `kubectl get` uniform.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OperationStatus {
    /// The `metadata.generation` the rest of this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub phase: Phase,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The remaining plan, first step first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plan: Vec<PlanStep>,
    /// Transfers of this resource that are running now.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub transfers: Vec<TransferStatus>,
    /// One-line summary for `kubectl get`, e.g. `3/5 steps, 62%`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
    /// What is happening now, or what went wrong, for a person.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Formats the printer-column summary: `3/5 steps, 62%`. `percent` is the progress of the
/// running step, when one is running.
pub fn progress_summary(steps_done: usize, steps_total: usize, percent: Option<u8>) -> String {
    match percent {
        Some(p) => format!("{steps_done}/{steps_total} steps, {}%", p.min(100)),
        None => format!("{steps_done}/{steps_total} steps"),
    }
}

/// schemars describes untagged enums with `anyOf`, which would accept both alternatives at
/// once (`service` and `url`). `oneOf` makes the apiserver reject that; kube's structural
/// rewriter then hoists the properties and leaves `oneOf: [{required: ..}, ..]`, which is
/// valid structural schema on Kubernetes 1.20.
fn any_of_to_one_of(schema: &mut schemars::Schema) {
    if let Some(obj) = schema.as_object_mut()
        && let Some(any_of) = obj.remove("anyOf")
    {
        obj.insert("oneOf".to_owned(), any_of);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;
    use serde_json::{Value, json};

    fn spec_schema(
        crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    ) -> Value {
        let schema = crd.spec.versions[0]
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .expect("derived CRDs carry a schema");
        serde_json::to_value(schema).expect("schema serializes")["properties"]["spec"].clone()
    }

    #[test]
    fn placement_example_from_the_docs_parses() {
        let spec: ShardPlacementSpec = serde_json::from_value(json!({
            "cluster": {"service": "shoal", "port": 6335},
            "collection": "docs",
            "shardId": 2,
            "replicas": ["shoal-0", "shoal-2"],
            "method": "StreamRecords",
            "rateLimit": {"pointsPerSecond": 5000},
            "approval": "Automatic"
        }))
        .expect("documented example parses");
        assert_eq!(
            spec.cluster,
            ClusterRef::Service {
                service: "shoal".into(),
                port: 6335
            }
        );
        assert_eq!(spec.shard, ShardSelector::Id { shard_id: 2 });
        assert_eq!(
            spec.rate_limit.and_then(|r| r.points_per_second),
            Some(5000)
        );
    }

    #[test]
    fn placement_defaults_and_alternatives() {
        let spec: ShardPlacementSpec = serde_json::from_value(json!({
            "cluster": {"url": "http://10.0.0.1:6335"},
            "collection": "docs",
            "shardKey": "tenant-a",
            "replicas": ["7"]
        }))
        .expect("minimal spec parses");
        assert_eq!(
            spec.shard,
            ShardSelector::Key {
                shard_key: "tenant-a".into()
            }
        );
        assert_eq!(spec.method, TransferMethod::StreamRecords);
        assert_eq!(spec.approval, Approval::Automatic);
        // Round trip keeps the user's field names.
        let back = serde_json::to_value(&spec).expect("serializes");
        assert_eq!(back["shardKey"], "tenant-a");
        assert_eq!(back["cluster"]["url"], "http://10.0.0.1:6335");
    }

    #[test]
    fn resharding_example_from_the_docs_parses() {
        let spec: ReshardingSpec = serde_json::from_value(json!({
            "cluster": {"service": "shoal", "port": 6335},
            "collection": "docs",
            "shards": 4,
            "shardKey": "tenant-a",
            "commitRead": "Automatic",
            "commitWrite": "Manual"
        }))
        .expect("documented example parses");
        assert_eq!(spec.shards, 4);
        assert_eq!(spec.commit_write, Approval::Manual);
    }

    #[test]
    fn placement_schema_guards() {
        let crd = ShardPlacement::crd();
        assert_eq!(crd.spec.group, "shoal.dev");
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(crd.spec.names.short_names, Some(vec!["spl".to_owned()]));
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        assert!(
            version
                .subresources
                .as_ref()
                .is_some_and(|s| s.status.is_some())
        );
        let columns: Vec<&str> = version
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.json_path.as_str())
            .collect();
        assert!(columns.contains(&".status.phase"));
        assert!(columns.contains(&".status.progress"));
        assert!(columns.contains(&".metadata.creationTimestamp"));

        let spec = spec_schema(&crd);
        let required: Vec<&str> = spec["required"]
            .as_array()
            .expect("spec has required fields")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        for field in ["cluster", "collection", "replicas"] {
            assert!(required.contains(&field), "{field} must be required");
        }
        // Exactly one of shardId / shardKey.
        assert_eq!(
            spec["oneOf"],
            json!([{"required": ["shardId"]}, {"required": ["shardKey"]}])
        );
        assert_eq!(spec["properties"]["replicas"]["minItems"], 1);
        assert_eq!(
            spec["properties"]["method"]["enum"],
            json!(["StreamRecords", "Snapshot", "WalDelta"])
        );
        assert_eq!(spec["properties"]["method"]["default"], "StreamRecords");
        let cluster = &spec["properties"]["cluster"];
        assert_eq!(cluster["properties"]["port"]["minimum"], 1.0);
        assert_eq!(cluster["properties"]["port"]["maximum"], 65535.0);
        assert_eq!(
            cluster["oneOf"],
            json!([{"required": ["port", "service"]}, {"required": ["url"]}])
        );
        let rate = &spec["properties"]["rateLimit"];
        assert_eq!(rate["properties"]["pointsPerSecond"]["minimum"], 1.0);
        assert_eq!(rate["minProperties"], 1);
    }

    #[test]
    fn resharding_schema_guards() {
        let crd = Resharding::crd();
        assert_eq!(crd.spec.names.short_names, Some(vec!["rsh".to_owned()]));
        let spec = spec_schema(&crd);
        assert_eq!(spec["properties"]["shards"]["minimum"], 1.0);
        assert_eq!(
            spec["properties"]["commitRead"]["enum"],
            json!(["Automatic", "Manual"])
        );
        let required: Vec<&str> = spec["required"]
            .as_array()
            .expect("spec has required fields")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(required, ["cluster", "collection", "shards"]);
    }

    #[test]
    fn progress_summary_reads_well() {
        assert_eq!(progress_summary(3, 5, Some(62)), "3/5 steps, 62%");
        assert_eq!(progress_summary(0, 2, None), "0/2 steps");
    }
}
