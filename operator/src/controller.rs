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
//! It runs on ServiceLog changes that matter (generation, finalizers — not its own status
//! writes), on pod changes (mapped to the ServiceLogs that select or inject them), on config
//! znode changes (drift) and instance record changes (acks, read into [`Zk`]'s copy), and
//! re-checks everything after a ZooKeeper reconnect. A finalizer removes the subtree on
//! delete; the first reconcile adds it, after the fast path has published ([`fast`]).
//!
//! Every change the watch delivers is first published straight to ZooKeeper ([`fast`]),
//! many at once, so sidecars get their rules at ZooKeeper's pace, not the API server's;
//! the reconcile that follows finds the znode current. Cost per ServiceLog on a cold start:
//! one ZooKeeper transaction, then (once the whole first listing is in ZooKeeper) one
//! finalizer patch, one status patch and one Event (queued, posted in the background). At
//! most [`CONCURRENCY`] reconciles run at once: the API server refuses mutating requests
//! beyond its in-flight limit (HTTP 429), and the client opens a connection per request in
//! flight.

pub mod backlog;
pub mod events;
pub mod fast;
pub mod memory;
pub mod observe;
pub mod publish;
pub mod rollout;
pub mod status;
pub mod validate;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use events::Events;
use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{Patch, PatchParams},
    core::PartialObjectMeta,
    runtime::{
        Controller, WatchStreamExt,
        controller::{self as runtime_controller, Action},
        events::{Event, EventType},
        reflector,
        reflector::{ObjectRef, Store},
        watcher,
    },
};
use memory::{Key, Memory};
use servicelog_api::{
    pod::{INJECT_ANNOTATION, INJECTED_ANNOTATION},
    v1alpha1::ServiceLog,
    wire::Layout,
};
use status::{Findings, Next, OldStatus, PublishOutcome};
use tokio::sync::mpsc;

use crate::{
    cache::{self, CachedServiceLog, Change},
    lease::{Leadership, NotLeading},
    metrics::Metrics,
    zk::{self, Published, Trigger, Zk, ZkError},
};

/// Finalizer that removes the resource's ZooKeeper subtree.
pub const FINALIZER: &str = "servicelog.io/cleanup";
/// The one field manager of status patches.
pub const FIELD_MANAGER: &str = "servicelog-operator";
/// Reconciles running at once.
pub const CONCURRENCY: u16 = 32;
/// While a rollout is partway, status is written at most this often: acks from a thousand
/// sidecars arrive over a second, and a patch per ack (or every 50 ms, as before) would
/// queue the final `applied N/N` behind intermediate ones and take the API server's CPU
/// from the sidecars still acking. A complete (or failed) rollout is written at once.
pub const ROLLOUT_STATUS_INTERVAL: Duration = Duration::from_millis(250);
/// While a rollout is partway, the resource is re-checked at least this often, and its
/// instance records are re-read from ZooKeeper when no ack came for this long (at most
/// this often): watch events can be lost across a reconnect, and the copy in [`Zk`] would
/// not see those acks. Not while acks keep coming: at 1,000 pods a re-read is 1,000 reads.
pub const ROLLOUT_REFRESH_INTERVAL: Duration = Duration::from_secs(1);
/// Every resource is reconciled again this often, the safety net for a trigger that was
/// lost; paced at [`RESYNC_BATCH`] a second so that 10,000 resources do not arrive at once.
pub const RESYNC_INTERVAL: Duration = Duration::from_secs(300);
/// Resources per second of the periodic resync.
pub const RESYNC_BATCH: usize = 100;
/// Changes the cache may hold for the controller before it holds the watch back.
pub const FOLLOW_CAPACITY: usize = 1024;
/// Reconciles handed to kube's scheduler at once (see [`backlog`]).
pub const WINDOW: usize = 4 * CONCURRENCY as usize;

/// Errors of one reconcile, each with a static category for metrics and retry policy.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[source] Box<kube::Error>),
    #[error(transparent)]
    Zk(#[from] ZkError),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::Error>),
    #[error("resource has no namespace")]
    NoNamespace,
    #[error(transparent)]
    NotLeading(#[from] NotLeading),
}

impl Error {
    /// Static label for metrics and logs.
    pub fn category(&self) -> &'static str {
        match self {
            Self::Kube(_) => "kube",
            Self::Zk(_) => "zookeeper",
            Self::Finalizer(_) => "finalizer",
            Self::NoNamespace => "invalid",
            Self::NotLeading(_) => "not_leading",
        }
    }

    /// Whether retrying can help: an invalid object waits for a change instead, and a
    /// replica that does not lead has nothing to retry (the process is ending).
    pub fn is_transient(&self) -> bool {
        !matches!(self, Self::NoNamespace | Self::NotLeading(_))
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
    pub events: Events,
    pub metrics: Arc<Metrics>,
    pub slogs: Store<CachedServiceLog>,
    /// Reconciles wait for the fast path to publish the first listing.
    pub warmup: Arc<fast::Warmup>,
    /// When the controller started.
    pub started: tokio::time::Instant,
    pub pods: Store<PartialObjectMeta<Pod>>,
    /// How long deletion waits for an unreachable ZooKeeper before it gives up on the
    /// subtree (with a Warning event) and lets the resource go.
    pub cleanup_timeout: Duration,
    /// What this process remembers per resource between reconciles.
    pub memory: Memory,
    /// Namespaces whose ZooKeeper identity Secret is written.
    pub identities: publish::Identities,
    /// Every write to the API server or ZooKeeper goes through [`Leadership::write`].
    pub leadership: Leadership,
    /// See [`Settings::sidecar_ca`].
    pub sidecar_ca: Option<publish::SidecarCa>,
}

impl Context {
    /// Queues an Event about `obj` (posted in the background; see [`events`]).
    pub fn event(
        &self,
        obj: &ServiceLog,
        type_: EventType,
        reason: &str,
        action: &str,
        note: &str,
    ) {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(status::cap_message(note.to_owned(), status::MESSAGE_LIMIT)),
            action: action.into(),
            secondary: None,
        };
        self.events.publish(&event, &obj.object_ref(&()));
    }
}

/// Settings of [`run`].
pub struct Settings {
    pub layout: Layout,
    /// Only this namespace's ServiceLogs and pods, or all.
    pub watch_namespace: Option<String>,
    pub identity: String,
    pub cleanup_timeout: Duration,
    /// Checked before every write: only the leader writes.
    pub leadership: Leadership,
    /// The ZooKeeper CA the operator writes into each namespace for its sidecars, if asked
    /// to (`--sidecar-zk-tls-write-ca`).
    pub sidecar_ca: Option<publish::SidecarCa>,
}

/// Runs the controller until the process is asked to stop, following `cache`.
pub async fn run(
    client: Client,
    cache: &cache::Cache,
    zk: Zk,
    mut zk_triggers: mpsc::UnboundedReceiver<Trigger>,
    metrics: Arc<Metrics>,
    settings: Settings,
) {
    let slog_store = cache.store();
    let (pods, pod_writer) = reflector::store();
    let warmup = Arc::new(fast::Warmup::default());
    let events = Events::start(
        client.clone(),
        FIELD_MANAGER,
        &settings.identity,
        metrics.clone(),
        warmup.subscribe(),
        settings.leadership.clone(),
    );
    let ctx = Arc::new(Context {
        client: client.clone(),
        zk,
        layout: settings.layout.clone(),
        events,
        metrics,
        slogs: slog_store.clone(),
        warmup,
        started: tokio::time::Instant::now(),
        pods,
        cleanup_timeout: settings.cleanup_timeout,
        memory: Memory::default(),
        identities: Default::default(),
        leadership: settings.leadership.clone(),
        sidecar_ca: settings.sidecar_ca.clone(),
    });

    // The cache passes on only the changes a reconcile must see (not the operator's own
    // status writes). Each is published to ZooKeeper on the way (`fast`), at the pace of
    // the watch, and then owed a reconcile, at the pace of the API server (`backlog`).
    let backlog = backlog::Backlog::new(WINDOW);
    let follower = ctx.clone();
    let prepublish = ctx.clone();
    let slog_changes = cache
        .follow(FOLLOW_CAPACITY)
        .filter_map(move |change| {
            let ctx = follower.clone();
            async move {
                match change {
                    Change::Applied(obj) => Some(obj),
                    Change::Deleted(obj) => {
                        tokio::spawn(fast::deleted(obj, ctx));
                        None
                    }
                    Change::Listed => {
                        ctx.warmup.listed();
                        None
                    }
                }
            }
        })
        .map(move |obj| {
            let ctx = prepublish.clone();
            ctx.warmup.started();
            async move {
                fast::prepublish(&obj, &ctx).await;
                ctx.warmup.finished();
                obj
            }
        })
        .buffered(fast::IN_FLIGHT);
    let owed = backlog.clone();
    tokio::spawn(slog_changes.for_each(move |obj| {
        if let Some(namespace) = obj.metadata.namespace.as_deref() {
            owed.push(namespace, &obj.name_any());
        }
        std::future::ready(())
    }));
    let controller = Controller::for_shared_stream(stream::pending(), slog_store.clone())
        .with_config(runtime_controller::Config::default().concurrency(CONCURRENCY));

    let pod_api: Api<PartialObjectMeta<Pod>> = scoped(&client, settings.watch_namespace.as_deref());
    let pod_slogs = slog_store.clone();
    let pod_triggers = watcher(pod_api, watcher::Config::default().any_semantic())
        .default_backoff()
        .modify(|p: &mut PartialObjectMeta<Pod>| p.managed_fields_mut().clear())
        .reflect(pod_writer)
        .touched_objects()
        .filter_map(|pod| async move { pod.ok() })
        .flat_map(move |pod| stream::iter(servicelogs_for_pod(&pod, &pod_slogs)));

    let layout = settings.layout.clone();
    let zk_slogs = slog_store.clone();
    let sweeper = ctx.clone();
    let watch_namespace = settings.watch_namespace.clone();
    // ZooKeeper's changes are owed reconciles too: every resource after a (re)connect, and
    // one per config znode event — the fast path's own creates at a cold start among them,
    // which the backlog folds into the reconcile it already owes.
    let owed = backlog.clone();
    tokio::spawn(async move {
        while let Some(trigger) = zk_triggers.recv().await {
            match trigger {
                Trigger::ResyncAll => {
                    tokio::spawn(fast::sweep(sweeper.clone(), watch_namespace.clone()));
                    for s in zk_slogs.state() {
                        if let Some(namespace) = s.metadata.namespace.as_deref() {
                            owed.push(namespace, &s.name_any());
                        }
                    }
                }
                Trigger::Path(path) => {
                    if let Some(p) = layout.parse(&path) {
                        owed.push(p.namespace, p.name);
                    }
                }
            }
        }
    });

    let finished = backlog.clone();
    controller
        .reconcile_on(backlog.stream())
        .reconcile_on(pod_triggers)
        .reconcile_on(resync(slog_store.clone()))
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(move |result| {
            match &result {
                Ok((obj, _)) => finished.done(obj.namespace.as_deref().unwrap_or(""), &obj.name),
                Err(
                    runtime_controller::Error::ObjectNotFound(obj)
                    | runtime_controller::Error::ReconcilerFailed(_, obj),
                ) => finished.done(obj.namespace.as_deref().unwrap_or(""), &obj.name),
                Err(_) => {}
            }
            if let Err(e) = result {
                tracing::debug!(error = %e, "reconcile failed");
            }
            std::future::ready(())
        })
        .await;
}

/// Every cached resource every [`RESYNC_INTERVAL`], [`RESYNC_BATCH`] a second. A
/// reconcile that changes nothing writes nothing.
fn resync(
    store: Store<CachedServiceLog>,
) -> impl futures::Stream<Item = ObjectRef<CachedServiceLog>> + Send {
    stream::unfold(store, |store| async move {
        tokio::time::sleep(RESYNC_INTERVAL).await;
        let refs: Vec<_> = store
            .state()
            .iter()
            .map(|s| ObjectRef::from_obj(s.as_ref()))
            .collect();
        Some((refs, store))
    })
    .flat_map(|refs| {
        let batches: Vec<Vec<_>> = refs.chunks(RESYNC_BATCH).map(<[_]>::to_vec).collect();
        stream::iter(batches)
            .enumerate()
            .then(|(i, batch)| async move {
                if i > 0 {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                stream::iter(batch)
            })
            .flatten()
    })
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

/// The ServiceLogs a pod change concerns: the one it names for injection, and those in its
/// namespace whose selector matches it.
fn servicelogs_for_pod(
    pod: &PartialObjectMeta<Pod>,
    slogs: &Store<CachedServiceLog>,
) -> Vec<ObjectRef<CachedServiceLog>> {
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
        .filter(|s| named.contains(&&s.name_any()) || s.selects(labels))
        .map(|s| ObjectRef::from_obj(s.as_ref()))
        .collect()
}

async fn reconcile(obj: Arc<CachedServiceLog>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.warmup.wait().await;
    if !ctx.leadership.is_leading() {
        return Err(NotLeading.into());
    }
    let started = Instant::now();
    let (full, unparsed) = validate::expand(&obj);
    let result = reconcile_inner(&full, unparsed.as_deref(), obj.status_hash(), &ctx).await;
    let label = match &result {
        Ok(_) => "ok",
        Err(e) => e.category(),
    };
    if result.is_ok()
        && let Some(ns) = obj.metadata.namespace.clone()
    {
        ctx.memory.succeeded(&(ns, obj.name_any()));
    }
    ctx.metrics.reconciled(label, started.elapsed());
    result
}

/// The finalizer protocol, with the finalizer added in the same pass that first publishes:
/// it is in place before anything is written to ZooKeeper, and a new ServiceLog costs one
/// reconcile instead of two.
async fn reconcile_inner(
    obj: &ServiceLog,
    unparsed: Option<&str>,
    status_hash: Option<u64>,
    ctx: &Context,
) -> Result<Action, Error> {
    let namespace = obj.namespace().ok_or(Error::NoNamespace)?;
    let api: Api<CachedServiceLog> = Api::namespaced(ctx.client.clone(), &namespace);
    let ours = obj.finalizers().iter().position(|f| f == FINALIZER);
    if obj.metadata.deletion_timestamp.is_some() {
        let Some(index) = ours else {
            return Ok(Action::await_change());
        };
        let action = cleanup(obj, ctx).await?;
        // Removes exactly our entry, and only if the list is still what we read.
        let patch = json_patch::Patch(vec![
            json_patch::PatchOperation::Test(json_patch::TestOperation {
                path: finalizer_pointer(&format!("/metadata/finalizers/{index}")),
                value: FINALIZER.into(),
            }),
            json_patch::PatchOperation::Remove(json_patch::RemoveOperation {
                path: finalizer_pointer(&format!("/metadata/finalizers/{index}")),
            }),
        ]);
        ctx.leadership
            .write(api.patch::<ServiceLog>(
                &obj.name_any(),
                &PatchParams::default(),
                &Patch::Json(patch),
            ))
            .await?
            .map_err(|e| Error::Finalizer(Box::new(e)))?;
        return Ok(action);
    }
    if ours.is_none() {
        // A test on the whole list: Kubernetes does not deduplicate finalizers, so a
        // concurrent writer makes this fail and the reconcile retry.
        let patch = if obj.finalizers().is_empty() {
            vec![
                json_patch::PatchOperation::Test(json_patch::TestOperation {
                    path: finalizer_pointer("/metadata/finalizers"),
                    value: serde_json::Value::Null,
                }),
                json_patch::PatchOperation::Add(json_patch::AddOperation {
                    path: finalizer_pointer("/metadata/finalizers"),
                    value: vec![FINALIZER].into(),
                }),
            ]
        } else {
            vec![
                json_patch::PatchOperation::Test(json_patch::TestOperation {
                    path: finalizer_pointer("/metadata/finalizers"),
                    value: obj.finalizers().into(),
                }),
                json_patch::PatchOperation::Add(json_patch::AddOperation {
                    path: finalizer_pointer("/metadata/finalizers/-"),
                    value: FINALIZER.into(),
                }),
            ]
        };
        ctx.leadership
            .write(api.patch::<ServiceLog>(
                &obj.name_any(),
                &PatchParams::default(),
                &Patch::Json(json_patch::Patch(patch)),
            ))
            .await?
            .map_err(|e| Error::Finalizer(Box::new(e)))?;
    }
    apply(obj, unparsed, status_hash, ctx).await
}

fn finalizer_pointer(path: &str) -> json_patch::jsonptr::PointerBuf {
    json_patch::jsonptr::PointerBuf::parse(path).unwrap_or_default()
}

/// An invalid object waits for a change; a transient failure is retried with a backoff
/// per resource (see [`Memory::retry_after_failure`]).
fn error_policy(obj: Arc<CachedServiceLog>, error: &Error, ctx: Arc<Context>) -> Action {
    let servicelog = ObjectRef::from_obj(obj.as_ref());
    let key = (
        obj.metadata.namespace.clone().unwrap_or_default(),
        obj.name_any(),
    );
    match retry_after(error, &ctx.memory, &key) {
        None => {
            tracing::warn!(%servicelog, category = error.category(), error = %error, "reconcile failed; waiting for a change");
            Action::await_change()
        }
        Some(wait) => {
            tracing::warn!(%servicelog, category = error.category(), error = %error, retry_in = ?wait, "reconcile failed; retrying");
            Action::requeue(wait)
        }
    }
}

/// When to retry after `error`: never (`None`, wait for a change) when retrying cannot
/// help, else after the resource's own growing backoff — whatever the category, a
/// failing resource is never retried at a fixed pace.
fn retry_after(error: &Error, memory: &Memory, key: &Key) -> Option<Duration> {
    error
        .is_transient()
        .then(|| memory.retry_after_failure(key))
}

/// Validate → publish → observe → status, for a resource that is not being deleted.
/// `status_hash` is [`cache::status_hash`] of the status the cache holds (whose reasons
/// and messages `obj.status` lacks).
async fn apply(
    obj: &ServiceLog,
    unparsed: Option<&str>,
    status_hash: Option<u64>,
    ctx: &Context,
) -> Result<Action, Error> {
    let key: Key = (obj.namespace().ok_or(Error::NoNamespace)?, obj.name_any());
    let old = old_status(ctx, obj, &key, status_hash);

    // A publish that failed is reported in status, then retried with the resource's
    // backoff (as an error of its category), not at a fixed pace.
    let mut failure = None;
    // With `spec.rollout`, a change waits in the candidate znode while the stable config
    // stays published, and `status.rollout` says where it is.
    let mut staged = None;
    let (validity, observed) = match validate::check(obj, unparsed) {
        Err(problems) => (Err(problems), None),
        Ok(envelope) => {
            publish::ensure_identity(ctx, &key.0).await;
            let last = old.status.rollout.as_ref();
            let done = rollout::publish(ctx, obj, &key, &envelope, last).await;
            staged = done.rollout;
            let outcome = match done.published {
                // A newer generation is in the cache and already in ZooKeeper; its own
                // reconcile writes the status.
                Ok(Published::Superseded { .. }) => {
                    return Ok(Action::requeue(Duration::from_secs(1)));
                }
                Ok(published) => PublishOutcome::Published {
                    hash: done.hash,
                    version: published.version(),
                    path: ctx.layout.config(&key.0, &key.1).unwrap_or_default(),
                },
                Err(publish::PublishError::NotLeading(e)) => return Err(e.into()),
                Err(publish::PublishError::Zk(e)) => {
                    let outcome = PublishOutcome::Failed {
                        reason: match e {
                            ZkError::Unavailable(_) => "ZooKeeperUnavailable",
                            _ => "PublishFailed",
                        },
                        message: e.to_string(),
                    };
                    failure = Some(e);
                    outcome
                }
            };
            let hash = match &outcome {
                PublishOutcome::Published { hash, .. } => hash.clone(),
                PublishOutcome::Failed { .. } => old.status.config_hash.clone().unwrap_or_default(),
            };
            let observed = observe::observe(ctx, obj.spec.selector.as_ref(), &key, &hash).await;
            (Ok(outcome), Some(observed))
        }
    };

    let mut plan = status::plan(&Findings {
        generation: obj.metadata.generation,
        old: &old.status,
        validity: validity.as_ref().map_err(Vec::as_slice),
        observed: observed.as_ref(),
    });
    let mut staged_requeue = None;
    if let Some((rollout_status, requeue)) = staged {
        rollout::hold_ready(&mut plan.conds, &rollout_status);
        plan.status.rollout = Some(rollout_status);
        staged_requeue = requeue;
    } else if obj.spec.rollout.is_none() {
        plan.status.rollout = None;
    }
    if let Some(message) = &plan.rejected {
        ctx.event(obj, EventType::Warning, "Rejected", "Validate", message);
    }
    let conds: Vec<_> = plan.conds.iter().map(|c| (c.type_, c.ok)).collect();
    ctx.metrics
        .servicelog_status(&key.0, &key.1, &conds, plan.status.pods.as_ref());
    let same_config = plan.status.config_hash == old.status.config_hash;
    let since = ctx.memory.rollout_written(&key).map(|t| t.elapsed());
    if let Some(wait) = status::throttle(plan.partway, same_config, since) {
        return Ok(Action::requeue(wait));
    }
    let written = status::write(ctx, obj, &key, plan.status, &plan.conds, &old).await?;
    if !plan.partway {
        ctx.memory.set_rollout_written(&key, None);
    } else if written {
        ctx.memory.set_rollout_written(&key, Some(Instant::now()));
    }
    if let Some(e) = failure {
        return Err(Error::Zk(e));
    }
    let after = match plan.next {
        Next::AwaitChange => None,
        Next::Requeue(after) => Some(after),
    };
    Ok(match after.into_iter().chain(staged_requeue).min() {
        Some(after) => Action::requeue(after),
        None => Action::await_change(),
    })
}

/// The status a reconcile starts from: the one this process last wrote, unless the cache
/// holds a newer generation's, or else the cache's.
fn old_status(ctx: &Context, obj: &ServiceLog, key: &Key, status_hash: Option<u64>) -> OldStatus {
    let cached = obj.status.clone().unwrap_or_default();
    let revision = cache::revision(obj.metadata.resource_version.as_deref());
    match ctx
        .memory
        .status(key, revision)
        .filter(|ours| ours.observed_generation >= cached.observed_generation)
    {
        Some(ours) => OldStatus {
            hash: Some(cache::status_hash(&ours)),
            status: ours,
        },
        None => OldStatus {
            hash: status_hash,
            status: cached,
        },
    }
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
        Ok(client) => {
            ctx.leadership
                .write(zk::delete_subtree(&client, &path))
                .await?
        }
        Err(e) => Err(e),
    };
    ctx.memory.forget(&(namespace.clone(), name.clone()));
    ctx.metrics.forget_servicelog(&namespace, &name);
    match result {
        Ok(()) => {
            ctx.event(
                obj,
                EventType::Normal,
                "Unpublished",
                "Delete",
                &format!("removed {path}"),
            );
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
                    "could not remove {path} for {}s ({e}); letting the resource go; the operator removes the subtree when ZooKeeper is back",
                    waited.as_secs()
                );
                ctx.event(obj, EventType::Warning, "CleanupAbandoned", "Delete", &note);
                Ok(Action::await_change())
            } else {
                Err(Error::Zk(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kube_error(code: u16) -> kube::Error {
        kube::Error::Api(Box::new(
            kube::core::Status::failure("conflict", "Conflict").with_code(code),
        ))
    }

    #[test]
    fn given_each_error_category_then_transient_ones_back_off_and_the_rest_wait_for_a_change() {
        let memory = Memory::default();
        let rows: Vec<(Error, Option<&str>)> = vec![
            (
                Error::Zk(ZkError::Unavailable("connection refused".into())),
                Some("zookeeper"),
            ),
            (Error::Kube(Box::new(kube_error(409))), Some("kube")),
            (
                Error::Finalizer(Box::new(kube_error(422))),
                Some("finalizer"),
            ),
            (Error::NoNamespace, None),
            (Error::NotLeading(NotLeading), None),
        ];
        for (i, (error, retried)) in rows.iter().enumerate() {
            let key = ("ns".to_owned(), format!("r{i}"));
            let waits: Vec<Option<Duration>> =
                (0..6).map(|_| retry_after(error, &memory, &key)).collect();
            match retried {
                Some(category) => {
                    assert_eq!(error.category(), *category);
                    let waits: Vec<Duration> = waits.into_iter().flatten().collect();
                    assert_eq!(waits.len(), 6, "{category}: always retried");
                    assert!(
                        waits.iter().all(|w| *w >= memory::RETRY_MIN),
                        "{category}: never hot: {waits:?}"
                    );
                    assert!(waits[5] > waits[0], "{category}: backs off: {waits:?}");
                }
                None => assert!(
                    waits.iter().all(Option::is_none),
                    "{}: waits for a change, never retried",
                    error.category()
                ),
            }
        }
    }
}
