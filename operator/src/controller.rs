//! The ServiceLog controller. Reconcile is a pipeline:
//!
//! 1. **validate** — the `api` crate's full validation and the envelope's size limit; an
//!    invalid spec is never published (sidecars keep the last good config) and is reported
//!    as `Valid=False` with every field path.
//! 2. **publish** — the config znode, created or set with the version just read; nothing is
//!    written when the bytes are unchanged (idempotent), a hand-edited or deleted znode is
//!    restored (drift repair).
//! 3. **observe** — pods matched by the selector, pods carrying the sidecar, and the
//!    `instances/` znodes acking the hash.
//! 4. **status** — conditions Valid / Published / Ready, patched by server-side apply only
//!    when something changed.
//!
//! It runs on ServiceLog changes, on pod changes (mapped to the ServiceLogs that select or
//! inject them) and on every znode change under the root (drift, acks), and re-checks
//! everything after a ZooKeeper reconnect. A finalizer removes the subtree on delete.

pub mod status;

use std::{sync::Arc, time::Duration};

use futures::{StreamExt, stream};
use k8s_openapi::{api::core::v1::Pod, apimachinery::pkg::apis::meta::v1::Time};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{Patch, PatchParams},
    core::PartialObjectMeta,
    runtime::{
        Controller, WatchStreamExt,
        controller::Action,
        events::{Event, EventType, Recorder, Reporter},
        finalizer::{Event as Finalizer, finalizer},
        reflector,
        reflector::{ObjectRef, Store},
        watcher,
    },
};
use servicelog_api::{
    v1alpha1::{ServiceLog, ServiceLogStatus},
    validate,
    wire::{Envelope, Layout},
};
use status::{Cond, PUBLISHED, READY, VALID};
use tokio::sync::mpsc;

use crate::{
    metrics::Metrics,
    zk::{self, Published, Trigger, Zk, ZkError},
};

/// Finalizer that removes the resource's ZooKeeper subtree.
pub const FINALIZER: &str = "servicelog.io/cleanup";
/// The one field manager of status patches.
pub const FIELD_MANAGER: &str = "servicelog-operator";
/// Annotation a pod carries once the webhook injected the sidecar.
pub const INJECTED_ANNOTATION: &str = "servicelog.io/injected";
/// Annotation a pod uses to ask for the sidecar.
pub const INJECT_ANNOTATION: &str = "servicelog.io/inject";

/// Errors of one reconcile, each with a static category for metrics and retry policy.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[source] Box<kube::Error>),
    #[error(transparent)]
    Zk(#[from] ZkError),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    #[error("resource has no namespace")]
    NoNamespace,
}

impl Error {
    /// Static label for metrics and logs.
    pub fn category(&self) -> &'static str {
        match self {
            Self::Kube(_) => "kube",
            Self::Zk(_) => "zookeeper",
            Self::Finalizer(e) => match e.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.category(),
                _ => "finalizer",
            },
            Self::NoNamespace => "invalid",
        }
    }
}

impl From<kube::Error> for Error {
    fn from(e: kube::Error) -> Self {
        Self::Kube(Box::new(e))
    }
}

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub zk: Zk,
    pub layout: Layout,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub pods: Store<PartialObjectMeta<Pod>>,
    /// How long deletion waits for an unreachable ZooKeeper before it gives up on the
    /// subtree (with a Warning event) and lets the resource go.
    pub cleanup_timeout: Duration,
    /// The hash this process last published per resource: the status in the watch cache
    /// can lag behind a publish, and drift must still be recognised as drift.
    pub published: std::sync::Mutex<std::collections::HashMap<(String, String), String>>,
}

/// Settings of [`run`].
pub struct Settings {
    pub layout: Layout,
    /// Only this namespace's ServiceLogs and pods, or all.
    pub watch_namespace: Option<String>,
    pub identity: String,
    pub cleanup_timeout: Duration,
}

/// Runs the controller until the process is asked to stop.
pub async fn run(
    client: Client,
    zk: Zk,
    zk_triggers: mpsc::UnboundedReceiver<Trigger>,
    metrics: Arc<Metrics>,
    settings: Settings,
) {
    let slogs: Api<ServiceLog> = scoped(&client, settings.watch_namespace.as_deref());
    let controller = Controller::new(slogs, watcher::Config::default().any_semantic());
    let slog_store = controller.store();

    let (pods, pod_writer) = reflector::store();
    let pod_api: Api<PartialObjectMeta<Pod>> = scoped(&client, settings.watch_namespace.as_deref());
    let pod_slogs = slog_store.clone();
    let pod_triggers = reflector(
        pod_writer,
        watcher(pod_api, watcher::Config::default().any_semantic()),
    )
    .default_backoff()
    .touched_objects()
    .filter_map(|pod| async move { pod.ok() })
    .flat_map(move |pod| stream::iter(servicelogs_for_pod(&pod, &pod_slogs)));

    let layout = settings.layout.clone();
    let zk_slogs = slog_store.clone();
    let zk_triggers = tokio_stream_from(zk_triggers).flat_map(move |trigger| {
        let refs: Vec<ObjectRef<ServiceLog>> = match trigger {
            Trigger::ResyncAll => zk_slogs
                .state()
                .iter()
                .map(|s| ObjectRef::from_obj(s.as_ref()))
                .collect(),
            Trigger::Path(path) => layout
                .parse(&path)
                .map(|p| ObjectRef::new(p.name).within(p.namespace))
                .into_iter()
                .collect(),
        };
        stream::iter(refs)
    });

    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: FIELD_MANAGER.into(),
            instance: Some(settings.identity.clone()),
        },
    );
    let ctx = Arc::new(Context {
        client,
        zk,
        layout: settings.layout,
        recorder,
        metrics,
        pods,
        cleanup_timeout: settings.cleanup_timeout,
        published: Default::default(),
    });
    controller
        .reconcile_on(pod_triggers)
        .reconcile_on(zk_triggers)
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "reconcile failed");
            }
        })
        .await;
}

fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    <K as Resource>::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: mpsc::UnboundedReceiver<T>,
) -> impl futures::Stream<Item = T> + Send {
    stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// The ServiceLogs a pod change concerns: the one it names for injection, and those in its
/// namespace whose selector matches it.
fn servicelogs_for_pod(
    pod: &PartialObjectMeta<Pod>,
    slogs: &Store<ServiceLog>,
) -> Vec<ObjectRef<ServiceLog>> {
    let Some(namespace) = pod.namespace() else {
        return Vec::new();
    };
    let labels = pod.labels();
    let annotations = pod.annotations();
    let named: Vec<&String> = [INJECTED_ANNOTATION, INJECT_ANNOTATION]
        .iter()
        .filter_map(|a| annotations.get(*a))
        .collect();
    slogs
        .state()
        .iter()
        .filter(|s| s.namespace().as_deref() == Some(namespace.as_str()))
        .filter(|s| {
            named.contains(&&s.name_any())
                || s.spec
                    .selector
                    .as_ref()
                    .is_some_and(|sel| status::selector_matches(sel, labels))
        })
        .map(|s| ObjectRef::from_obj(s.as_ref()))
        .collect()
}

async fn reconcile(obj: Arc<ServiceLog>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    let namespace = obj.namespace().ok_or(Error::NoNamespace)?;
    let api: Api<ServiceLog> = Api::namespaced(ctx.client.clone(), &namespace);
    let result = finalizer(&api, FINALIZER, obj, |event| async {
        match event {
            Finalizer::Apply(obj) => apply(&obj, &ctx).await,
            Finalizer::Cleanup(obj) => cleanup(&obj, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    let label = match &result {
        Ok(_) => "ok",
        Err(e) => e.category(),
    };
    ctx.metrics.reconciled(label, started.elapsed());
    result
}

fn error_policy(obj: Arc<ServiceLog>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(servicelog = %ObjectRef::from_obj(obj.as_ref()), category = error.category(), error = %error, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(2))
}

async fn apply(obj: &ServiceLog, ctx: &Context) -> Result<Action, Error> {
    let namespace = obj.namespace().ok_or(Error::NoNamespace)?;
    let name = obj.name_any();
    let generation = obj.metadata.generation;
    let old = obj.status.clone().unwrap_or_default();
    let mut status = ServiceLogStatus {
        observed_generation: generation,
        ..old.clone()
    };
    let mut conds = Vec::new();
    let mut requeue = Action::requeue(Duration::from_secs(300));

    // 1. validate
    let envelope = match check(obj) {
        Ok(envelope) => envelope,
        Err(problems) => {
            let message = problems.join("; ");
            conds.push(Cond::new(VALID, false, "InvalidSpec", message.clone()));
            let kept = old
                .config_hash
                .as_deref()
                .map(|h| format!("sidecars keep {h}"))
                .unwrap_or_else(|| "nothing was ever published".into());
            conds.push(Cond::new(
                PUBLISHED,
                false,
                "InvalidSpec",
                format!(
                    "generation {} not published; {kept}",
                    generation.unwrap_or(0)
                ),
            ));
            if old.observed_generation != generation {
                publish_event(
                    ctx,
                    obj,
                    EventType::Warning,
                    "Rejected",
                    "Validate",
                    &message,
                )
                .await;
            }
            write_status(ctx, obj, &namespace, status, &conds, &old).await?;
            return Ok(Action::await_change());
        }
    };
    conds.push(Cond::new(
        VALID,
        true,
        "Validated",
        "the spec compiles; every sidecar can run it",
    ));

    // 2. publish
    let key = (namespace.clone(), name.clone());
    let known = ctx
        .published
        .lock()
        .ok()
        .and_then(|m| m.get(&key).cloned())
        .or_else(|| old.config_hash.clone());
    let client = ctx.zk.client();
    let published = match &client {
        Ok(client) => {
            zk::publish(
                client,
                &ctx.layout,
                &namespace,
                &name,
                &envelope,
                known.as_deref(),
            )
            .await
        }
        Err(e) => Err(e.clone()),
    };
    match published {
        Ok(outcome) => {
            if let Ok(mut m) = ctx.published.lock() {
                m.insert(key.clone(), envelope.hash.clone());
            }
            status.config_hash = Some(envelope.hash.clone());
            status.published_version = Some(outcome.version());
            let path = ctx.layout.config(&namespace, &name).unwrap_or_default();
            conds.push(Cond::new(
                PUBLISHED,
                true,
                "Published",
                format!(
                    "{} at {path} (version {})",
                    envelope.hash,
                    outcome.version()
                ),
            ));
            match outcome {
                Published::Unchanged { .. } => {}
                Published::Created { .. } | Published::Updated { drift: false, .. } => {
                    let note = format!(
                        "{} published to {path} (version {})",
                        envelope.hash,
                        outcome.version()
                    );
                    publish_event(ctx, obj, EventType::Normal, "Published", "Publish", &note).await;
                }
                Published::Updated { drift: true, .. } => {
                    let note = format!(
                        "{path} had been changed outside the operator; restored {}",
                        envelope.hash
                    );
                    publish_event(
                        ctx,
                        obj,
                        EventType::Warning,
                        "DriftRepaired",
                        "Publish",
                        &note,
                    )
                    .await;
                }
            }
            if matches!(outcome, Published::Created { .. }) && known.is_some() {
                let note = format!(
                    "{path} had been deleted outside the operator; restored {}",
                    envelope.hash
                );
                publish_event(
                    ctx,
                    obj,
                    EventType::Warning,
                    "DriftRepaired",
                    "Publish",
                    &note,
                )
                .await;
            }
        }
        Err(e) => {
            let reason = match e {
                ZkError::Unavailable(_) => "ZooKeeperUnavailable",
                _ => "PublishFailed",
            };
            conds.push(Cond::new(
                PUBLISHED,
                false,
                reason,
                format!("{e}; retrying"),
            ));
            requeue = Action::requeue(Duration::from_secs(3));
        }
    }

    // 3. observe
    let pods = pods_of(ctx, obj, &namespace, &name);
    let hash = status.config_hash.clone().unwrap_or_default();
    let instances = match &client {
        Ok(client) => zk::instances(client, &ctx.layout, &namespace, &name)
            .await
            .ok(),
        Err(_) => None,
    };
    match instances {
        Some(instances) => {
            let rollout = status::rollout(pods.matched, &pods.injected, &instances, &hash);
            status.pods = Some(rollout.counts.clone());
            let published_ok = conds.iter().any(|c| c.type_ == PUBLISHED && c.ok);
            if published_ok {
                conds.push(status::ready(&rollout, &hash));
            } else {
                conds.push(Cond::new(
                    READY,
                    false,
                    "NotPublished",
                    "waiting for the config to be published",
                ));
            }
        }
        None => {
            let mut counts = old.pods.clone().unwrap_or_default();
            counts.matched = pods.matched;
            counts.injected = u32::try_from(pods.injected.len()).unwrap_or(u32::MAX);
            counts.summary = format!("{}/{}", counts.applied, counts.injected);
            status.pods = Some(counts);
            conds.push(Cond::new(
                READY,
                false,
                "ZooKeeperUnavailable",
                "cannot read the sidecars' acks",
            ));
        }
    }

    // 4. status
    write_status(ctx, obj, &namespace, status, &conds, &old).await?;
    Ok(requeue)
}

/// Validation as the webhook and sidecars do it, plus the envelope size: every problem.
fn check(obj: &ServiceLog) -> Result<Envelope, Vec<String>> {
    let mut problems: Vec<String> = match validate(&obj.spec) {
        Ok(()) => Vec::new(),
        Err(errors) => errors.iter().map(ToString::to_string).collect(),
    };
    let uid = obj.metadata.uid.clone().unwrap_or_default();
    let envelope = Envelope::new(uid, obj.metadata.generation.unwrap_or(0), obj.spec.clone());
    match envelope.and_then(|e| e.to_bytes().map(|_| e)) {
        Ok(envelope) if problems.is_empty() => Ok(envelope),
        Ok(_) => Err(problems),
        Err(e) => {
            problems.push(format!("spec: {e}"));
            Err(problems)
        }
    }
}

struct PodView {
    matched: u32,
    injected: Vec<String>,
}

fn pods_of(ctx: &Context, obj: &ServiceLog, namespace: &str, name: &str) -> PodView {
    let mut matched = 0u32;
    let mut injected = Vec::new();
    for pod in ctx.pods.state() {
        if pod.namespace().as_deref() != Some(namespace)
            || pod.metadata.deletion_timestamp.is_some()
        {
            continue;
        }
        if obj
            .spec
            .selector
            .as_ref()
            .is_some_and(|sel| status::selector_matches(sel, pod.labels()))
        {
            matched += 1;
        }
        if pod
            .annotations()
            .get(INJECTED_ANNOTATION)
            .map(String::as_str)
            == Some(name)
        {
            injected.push(pod.name_any());
        }
    }
    injected.sort();
    PodView { matched, injected }
}

async fn write_status(
    ctx: &Context,
    obj: &ServiceLog,
    namespace: &str,
    mut status: ServiceLogStatus,
    conds: &[Cond],
    old: &ServiceLogStatus,
) -> Result<(), Error> {
    let now = Time(k8s_openapi::jiff::Timestamp::now()).0.to_string();
    status.conditions =
        status::merge_conditions(&old.conditions, conds, status.observed_generation, &now);
    if &status == old {
        return Ok(());
    }
    let api: Api<ServiceLog> = Api::namespaced(ctx.client.clone(), namespace);
    let patch = serde_json::json!({
        "apiVersion": "servicelog.io/v1alpha1",
        "kind": "ServiceLog",
        "status": status,
    });
    api.patch_status(
        &obj.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

async fn cleanup(obj: &ServiceLog, ctx: &Context) -> Result<Action, Error> {
    let namespace = obj.namespace().ok_or(Error::NoNamespace)?;
    let name = obj.name_any();
    let path = match ctx.layout.resource(&namespace, &name) {
        Ok(path) => path,
        // A name ZooKeeper cannot hold was never published.
        Err(_) => return Ok(Action::await_change()),
    };
    let result = match ctx.zk.client() {
        Ok(client) => zk::delete_subtree(&client, &path).await,
        Err(e) => Err(e),
    };
    if let Ok(mut m) = ctx.published.lock() {
        m.remove(&(namespace.clone(), name.clone()));
    }
    match result {
        Ok(()) => {
            publish_event(
                ctx,
                obj,
                EventType::Normal,
                "Unpublished",
                "Delete",
                &format!("removed {path}"),
            )
            .await;
            Ok(Action::await_change())
        }
        Err(e) => {
            let waited = obj
                .metadata
                .deletion_timestamp
                .as_ref()
                .map(|t| k8s_openapi::jiff::Timestamp::now().duration_since(t.0))
                .and_then(|d| Duration::try_from(d).ok())
                .unwrap_or_default();
            if waited >= ctx.cleanup_timeout {
                let note = format!(
                    "could not remove {path} for {}s ({e}); letting the resource go — delete the subtree by hand when ZooKeeper is back",
                    waited.as_secs()
                );
                publish_event(
                    ctx,
                    obj,
                    EventType::Warning,
                    "CleanupAbandoned",
                    "Delete",
                    &note,
                )
                .await;
                Ok(Action::await_change())
            } else {
                Err(Error::Zk(e))
            }
        }
    }
}

async fn publish_event(
    ctx: &Context,
    obj: &ServiceLog,
    type_: EventType,
    reason: &str,
    action: &str,
    note: &str,
) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note.chars().take(1000).collect()),
        action: action.into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &obj.object_ref(&())).await {
        tracing::warn!(error = %e, reason, "cannot publish event");
    }
}
