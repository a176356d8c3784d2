//! The controllers: one kube-rs `Controller` per resource kind, each reconcile a pipeline
//! observe (admin gRPC) → plan ([`crate::plan`]) → act (one step per shard) → report (status
//! patch, Events).
//!
//! This module owns what both kinds share: the context, the watch (which wakes a reconcile
//! only on spec, finalizer and deletion changes — never on our own status patches), the
//! finalizer, status patching, Events, per-object backoff and metrics. The per-kind decisions
//! are in [`placement`] and [`resharding`]. Nothing here edits a spec.

pub mod placement;
pub mod resharding;

use std::collections::HashMap;
use std::fmt::Debug;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalize, finalizer};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tracing::Instrument;

use crate::crd::{OperationStatus, Resharding, ShardPlacement};
use crate::metrics::Metrics;
use crate::node_client::NodeError;
use crate::status::{self, Report};

/// The finalizer both kinds carry while the operator may have something running for them.
pub const FINALIZER: &str = "shoal.dev/operator";
/// The server-side apply field manager of every status patch.
pub const FIELD_MANAGER: &str = "shoal-operator";

/// How often a running step is re-observed to report progress.
const POLL_RUNNING: Duration = Duration::from_secs(2);
/// How often a converged or waiting resource is re-checked for drift.
const POLL_IDLE: Duration = Duration::from_secs(300);
const BACKOFF_MAX: Duration = Duration::from_secs(60);

pub struct Context {
    pub client: kube::Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub api_key: Option<String>,
    /// Consecutive transient failures per object uid, for exponential backoff.
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    pub fn new(
        client: kube::Client,
        metrics: Arc<Metrics>,
        api_key: Option<String>,
        instance: Option<String>,
    ) -> Self {
        let reporter = Reporter {
            controller: "shoal-operator".into(),
            instance,
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            api_key: api_key.filter(|k| !k.is_empty()),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// The next delay for `uid` after a transient failure: 1 s, 2 s, 4 s, ... up to 60 s.
    fn backoff(&self, uid: &str) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = failures.entry(uid.to_owned()).or_insert(0);
        *n = n.saturating_add(1);
        backoff_delay(*n)
    }

    fn reset_backoff(&self, uid: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(uid);
    }
}

fn backoff_delay(attempt: u32) -> Duration {
    Duration::from_secs(1u64 << attempt.saturating_sub(1).min(6)).min(BACKOFF_MAX)
}

/// A reconcile failure that is not reported in status (the Kubernetes API itself failed, or
/// a cleanup could not reach the cluster); retried with backoff by [`error_policy`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    #[error("cleanup: {0}")]
    Cleanup(NodeError),
}

/// When to look again after a reconcile that reported something.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// A step is running: poll its progress.
    Poll,
    /// Converged, or waiting for a person: a slow drift check.
    Idle,
    /// The spec is invalid: only a spec change wakes the resource.
    SpecChange,
    /// Transient trouble: exponential backoff.
    Backoff,
}

/// A Kubernetes Event to publish, `kubectl describe` style.
pub struct Note {
    pub warning: bool,
    pub reason: &'static str,
    pub action: &'static str,
    pub message: String,
}

impl Note {
    pub fn normal(reason: &'static str, action: &'static str, message: String) -> Self {
        Self {
            warning: false,
            reason,
            action,
            message,
        }
    }
    pub fn warning(reason: &'static str, action: &'static str, message: String) -> Self {
        Self {
            warning: true,
            reason,
            action,
            message,
        }
    }
}

/// What a reconcile decided: the status to report, Events, when to come back.
pub struct Outcome {
    pub report: Report,
    pub notes: Vec<Note>,
    pub next: Next,
}

impl Outcome {
    pub fn new(report: Report, next: Next) -> Self {
        Self {
            report,
            notes: Vec::new(),
            next,
        }
    }

    /// A node error while observing or acting: invalid spec stops, the rest backs off.
    pub fn from_node_error(
        previous: Option<&OperationStatus>,
        error: NodeError,
        invalid_reason: &'static str,
    ) -> Self {
        use crate::crd::reason;
        match error {
            NodeError::Invalid(m) => {
                Self::new(Report::invalid(invalid_reason, m), Next::SpecChange)
            }
            NodeError::Conflict(m) => Self::new(
                Report::transient(previous, reason::WAITING_FOR_TRANSFER, m),
                Next::Backoff,
            ),
            NodeError::Unavailable(m) => Self::new(
                Report::transient(previous, reason::CLUSTER_UNREACHABLE, m),
                Next::Backoff,
            ),
        }
    }
}

/// The resource kinds this operator reconciles.
pub trait Operated:
    Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
    + Clone
    + Debug
    + Serialize
    + DeserializeOwned
    + Send
    + Sync
    + 'static
{
    const KIND: &'static str;
    fn status(&self) -> Option<&OperationStatus>;
}

impl Operated for ShardPlacement {
    const KIND: &'static str = "ShardPlacement";
    fn status(&self) -> Option<&OperationStatus> {
        self.status.as_ref()
    }
}

impl Operated for Resharding {
    const KIND: &'static str = "Resharding";
    fn status(&self) -> Option<&OperationStatus> {
        self.status.as_ref()
    }
}

/// Reports `outcome` on `obj`: Events, then the status (patched only when it changed).
/// Returns the requeue action.
async fn report<K: Operated>(
    obj: &K,
    api: &Api<K>,
    ctx: &Context,
    outcome: Outcome,
) -> Result<Action, Error> {
    let uid = obj.uid().unwrap_or_default();
    let reference = obj.object_ref(&());
    let mut outcome = outcome;
    // Becoming Degraded (or Degraded for a new reason) is an Event too; staying so is not.
    let degraded = &outcome.report.degraded;
    let was = obj
        .status()
        .and_then(status::degraded)
        .map(|c| c.reason.as_str());
    if degraded.status == crate::crd::ConditionStatus::True
        && was != Some(degraded.reason)
        && !outcome.notes.iter().any(|n| n.warning)
    {
        outcome.notes.push(Note::warning(
            degraded.reason,
            "Observe",
            degraded.message.clone(),
        ));
    }
    for note in &outcome.notes {
        let event = KubeEvent {
            type_: if note.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: note.reason.to_owned(),
            note: Some(note.message.chars().take(1000).collect()),
            action: note.action.to_owned(),
            secondary: None,
        };
        // An Event is for people; failing to record one must not stop the reconcile.
        if let Err(e) = ctx.recorder.publish(&event, &reference).await {
            tracing::warn!(error = %e, reason = note.reason, "could not publish an Event");
        }
    }

    let previous = obj.status();
    let degraded_reason = match outcome.report.degraded.status {
        crate::crd::ConditionStatus::True => Some(outcome.report.degraded.reason),
        _ => None,
    };
    let now = Timestamp::now().to_string();
    let new = status::build(outcome.report, obj.meta().generation, previous, &now);
    if previous != Some(&new) {
        let patch = serde_json::json!({
            "apiVersion": K::api_version(&()),
            "kind": K::kind(&()),
            "status": new,
        });
        api.patch_status(
            &obj.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    }
    if let Some(reason) = degraded_reason {
        ctx.metrics.failure(K::KIND, reason);
    }

    Ok(match outcome.next {
        Next::Poll => {
            ctx.reset_backoff(&uid);
            Action::requeue(POLL_RUNNING)
        }
        Next::Idle => {
            ctx.reset_backoff(&uid);
            Action::requeue(POLL_IDLE)
        }
        Next::SpecChange => {
            ctx.reset_backoff(&uid);
            Action::await_change()
        }
        Next::Backoff => Action::requeue(ctx.backoff(&uid)),
    })
}

/// Whether the previous reconcile found this generation's spec invalid: then nothing is
/// observed or retried until the spec changes.
fn rejected_this_generation<K: Operated>(obj: &K) -> bool {
    obj.status().is_some_and(|s| {
        s.phase == crate::crd::Phase::Failed && s.observed_generation == obj.meta().generation
    })
}

/// What wakes a reconcile: the spec (generation), the finalizers and deletion. Our own status
/// patches do not, or every progress report would wake the resource again.
fn wake_on<K: Resource>(obj: &K) -> Option<u64> {
    let meta = obj.meta();
    let mut h = DefaultHasher::new();
    meta.generation.hash(&mut h);
    meta.finalizers.hash(&mut h);
    meta.deletion_timestamp.is_some().hash(&mut h);
    Some(h.finish())
}

fn error_policy<K: Operated>(obj: Arc<K>, error: &Error, ctx: Arc<Context>) -> Action {
    let uid = obj.uid().unwrap_or_default();
    let delay = ctx.backoff(&uid);
    tracing::warn!(kind = K::KIND, name = %obj.name_any(), error = %error, retry_in = ?delay, "reconcile failed");
    ctx.metrics.failure(K::KIND, "Error");
    Action::requeue(delay)
}

async fn reconcile<K: Kind>(obj: Arc<K>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let namespace = obj.namespace().unwrap_or_default();
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &namespace);
    let span = tracing::info_span!("reconcile", kind = K::KIND, namespace = %namespace, name = %obj.name_any());
    let result = finalizer(&api, FINALIZER, obj, |event| async {
        match event {
            Finalize::Apply(obj) => {
                if rejected_this_generation(obj.as_ref()) {
                    return Ok(Action::await_change());
                }
                let outcome = K::decide(&obj, &namespace, &ctx).await;
                report(obj.as_ref(), &api, &ctx, outcome).await
            }
            Finalize::Cleanup(obj) => K::cleanup(&obj, &namespace, &ctx).await,
        }
    })
    .instrument(span)
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    ctx.metrics
        .reconciled(K::KIND, started.elapsed(), result.is_ok());
    result
}

/// The per-kind halves of a reconcile.
pub trait Kind: Operated {
    /// Observe, plan and act; never fails (failures are reported in the outcome).
    fn decide(obj: &Self, namespace: &str, ctx: &Context) -> impl Future<Output = Outcome> + Send;
    /// On deletion: abort what this resource started. `Ok` lets the finalizer go.
    fn cleanup(
        obj: &Self,
        namespace: &str,
        ctx: &Context,
    ) -> impl Future<Output = Result<Action, Error>> + Send;
}

/// Runs the controller of kind `K` until `stop` turns true, then lets reconciles in flight
/// finish (kube-rs graceful shutdown).
pub async fn run<K: Kind>(
    ctx: Arc<Context>,
    namespace: Option<String>,
    stop: watch::Receiver<bool>,
) {
    let api: Api<K> = match &namespace {
        Some(ns) => Api::namespaced(ctx.client.clone(), ns),
        None => Api::all(ctx.client.clone()),
    };
    let (reader, writer) = reflector::store();
    let trigger = watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(wake_on::<K>, Default::default());
    let controller = Controller::for_stream(trigger, reader.clone())
        .graceful_shutdown_on(stopped(stop.clone()))
        .run(reconcile::<K>, error_policy::<K>, ctx)
        .for_each(|result| async move {
            match result {
                Ok((obj, _)) => tracing::debug!(kind = K::KIND, name = %obj.name, "reconciled"),
                Err(e) => tracing::debug!(kind = K::KIND, error = %e, "reconcile error"),
            }
        });
    until_shut_down(controller, &reader, stopped(stop)).await;
}

/// Resolves once `stop` holds true (or its sender is gone).
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Drives `controller` (built with `graceful_shutdown_on` the same signal as `stop`) to its
/// end, which graceful shutdown makes wait for the reconciles in flight.
///
/// One case never ends on its own: kube-rs (5.0) holds every reconcile until the store has
/// finished its first list, and its graceful shutdown stops polling the watch, so a stop
/// arriving before that first list completes leaves the controller waiting forever for a
/// store that can no longer become ready. No reconcile can have started then (that same
/// readiness gates them all), so the controller is simply dropped. The check cannot race a
/// reconcile starting: the store is written only while the controller future polls its watch,
/// which runs on this same task, and `select!` drops the controller right after the check,
/// with no poll in between.
async fn until_shut_down<K, F>(
    controller: F,
    store: &reflector::Store<K>,
    stop: impl Future<Output = ()>,
) where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Eq + Hash + Clone,
    F: Future<Output = ()>,
{
    let unsynced_at_stop = async {
        stop.await;
        if store.wait_until_ready().now_or_never().is_some() {
            // Synced: the controller ends once its reconciles in flight have.
            std::future::pending::<()>().await;
        }
        tracing::debug!(kind = %std::any::type_name::<K>(), "stopped before the first list completed");
    };
    tokio::select! {
        _ = controller => {}
        _ = unsynced_at_stop => {}
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ConfigMap;

    use super::*;

    /// A controller over ConfigMaps fed by `trigger`, reconciling with `reconcile`, shut down
    /// gracefully by `stop`.
    fn config_map_controller<R>(
        trigger: impl futures::Stream<Item = Result<ConfigMap, watcher::Error>> + Send + 'static,
        reader: reflector::Store<ConfigMap>,
        stop: watch::Receiver<bool>,
        reconcile: impl FnMut(Arc<ConfigMap>, Arc<()>) -> R + Send + 'static,
    ) -> impl Future<Output = ()>
    where
        R: Future<Output = Result<Action, kube::Error>> + Send + 'static,
    {
        Controller::for_stream(trigger, reader)
            .graceful_shutdown_on(stopped(stop))
            .run(reconcile, |_, _, _| Action::await_change(), Arc::new(()))
            .for_each(|_| async {})
    }

    #[tokio::test]
    async fn a_stop_before_the_first_list_ends_the_controller() {
        let (reader, _writer) = reflector::store::<ConfigMap>();
        let (stop_tx, stop_rx) = watch::channel(false);
        let trigger = futures::stream::pending();
        let controller =
            config_map_controller(trigger, reader.clone(), stop_rx.clone(), |_, _| async {
                panic!("no reconcile runs before the store is ready")
            });
        stop_tx.send(true).unwrap();
        tokio::time::timeout(
            Duration::from_secs(10),
            until_shut_down(controller, &reader, stopped(stop_rx)),
        )
        .await
        .expect("a stop before the first list must end the controller");
    }

    #[tokio::test]
    async fn a_stop_waits_for_the_reconcile_in_flight() {
        let (reader, mut writer) = reflector::store::<ConfigMap>();
        let mut obj = ConfigMap::default();
        obj.metadata.name = Some("cm".into());
        obj.metadata.namespace = Some("default".into());
        let (stop_tx, stop_rx) = watch::channel(false);
        let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
        let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
        let hooks = Arc::new(Mutex::new(Some((started_tx, release_rx))));
        let finished = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let finished_in_reconcile = finished.clone();
        let trigger = futures::stream::iter([Ok(obj.clone())]).chain(futures::stream::pending());
        let controller =
            config_map_controller(trigger, reader.clone(), stop_rx.clone(), move |_, _| {
                let hooks = hooks.lock().unwrap().take();
                let finished = finished_in_reconcile.clone();
                async move {
                    if let Some((started, release)) = hooks {
                        let _ = started.send(());
                        let _ = release.await;
                        finished.store(true, std::sync::atomic::Ordering::SeqCst);
                    }
                    Ok(Action::await_change())
                }
            });
        let run = tokio::spawn(async move {
            until_shut_down(controller, &reader, stopped(stop_rx)).await;
        });
        // The store becomes ready only after the controller started, as in a real watch.
        tokio::task::yield_now().await;
        writer.apply_watcher_event(&watcher::Event::Init);
        writer.apply_watcher_event(&watcher::Event::InitApply(obj));
        writer.apply_watcher_event(&watcher::Event::InitDone);
        tokio::time::timeout(Duration::from_secs(10), started_rx)
            .await
            .expect("the reconcile starts")
            .unwrap();
        stop_tx.send(true).unwrap();
        // The reconcile is still held: the controller must not have ended.
        tokio::task::yield_now().await;
        assert!(!run.is_finished());
        release_tx.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), run)
            .await
            .expect("the controller ends once its reconcile has")
            .unwrap();
        assert!(finished.load(std::sync::atomic::Ordering::SeqCst));
    }

    #[test]
    fn backoff_doubles_up_to_a_minute() {
        let delays: Vec<u64> = (1..=9).map(|n| backoff_delay(n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
    }

    #[test]
    fn status_only_changes_do_not_wake_a_reconcile() {
        use crate::crd::{ClusterRef, ShardPlacementSpec, ShardSelector};
        let mut obj = ShardPlacement::new(
            "p",
            ShardPlacementSpec {
                cluster: ClusterRef::Url {
                    url: "http://x".into(),
                },
                collection: "c".into(),
                shard: ShardSelector::Id { shard_id: 0 },
                replicas: vec!["a".into()],
                method: Default::default(),
                rate_limit: None,
                approval: Default::default(),
            },
        );
        obj.metadata.generation = Some(1);
        let before = wake_on(&obj);
        obj.status = Some(OperationStatus::default());
        obj.metadata.resource_version = Some("2".into());
        assert_eq!(wake_on(&obj), before);
        obj.metadata.finalizers = Some(vec![FINALIZER.into()]);
        assert_ne!(wake_on(&obj), before);
        let with_finalizer = wake_on(&obj);
        obj.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Timestamp::now()),
        );
        assert_ne!(wake_on(&obj), with_finalizer);
    }
}
