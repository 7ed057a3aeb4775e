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
pub mod status;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use events::Events;
use futures::{StreamExt, stream};
use k8s_openapi::{api::core::v1::Pod, apimachinery::pkg::apis::meta::v1::Time};
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
use servicelog_api::{
    v1alpha1::{ServiceLog, ServiceLogSpec, ServiceLogStatus},
    validate,
    wire::{Envelope, Layout},
};
use status::{Cond, PUBLISHED, READY, VALID};
use tokio::sync::mpsc;

use crate::{
    cache::{self, CachedServiceLog, Change},
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
/// Reconciles running at once.
pub const CONCURRENCY: u16 = 32;
/// While a rollout is partway, status is written at most this often: acks from a hundred
/// sidecars arrive within tens of milliseconds, and a patch per ack would queue the final
/// `applied N/N` behind the intermediate ones. A complete (or failed) rollout is written
/// at once.
pub const ROLLOUT_STATUS_INTERVAL: Duration = Duration::from_millis(50);
/// While a rollout is partway, the instance records are re-read from ZooKeeper at most
/// this often (and the resource re-checked at least this often): watch events can be lost
/// across a reconnect, and the copy in [`Zk`] would not see those acks.
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
}

impl Error {
    /// Static label for metrics and logs.
    pub fn category(&self) -> &'static str {
        match self {
            Self::Kube(_) => "kube",
            Self::Zk(_) => "zookeeper",
            Self::Finalizer(_) => "finalizer",
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
    /// The hash this process last published per resource: the status in the watch cache
    /// can lag behind a publish, and drift must still be recognised as drift.
    pub published: Mutex<HashMap<(String, String), String>>,
    /// The status this process wrote lately per resource: the watch cache can lag behind
    /// our own status write, and a reconcile that merged conditions into that stale copy
    /// would rewrite every `lastTransitionTime`.
    pub statuses: Mutex<RecentStatuses>,
    /// When status was last written for resources whose rollout is partway.
    pub rollout_written: Mutex<HashMap<(String, String), Instant>>,
    /// When the instance records of resources whose rollout is partway were last re-read.
    pub rollout_refreshed: Mutex<HashMap<(String, String), Instant>>,
}

/// How long a written status is remembered at most: the entry goes as soon as the cache
/// holds the resourceVersion the write returned, and after this however it stands.
pub const STATUS_MEMORY: Duration = Duration::from_secs(60);

/// Statuses this process wrote that the cache may not hold yet, per resource.
#[derive(Default)]
pub struct RecentStatuses {
    written: HashMap<(String, String), Written>,
    pruned: Option<Instant>,
}

struct Written {
    at: Instant,
    /// The resourceVersion the status write returned.
    revision: Option<u64>,
    status: ServiceLogStatus,
}

/// Whether the cache's copy (at `cached`) already includes a write that returned `written`.
fn caught_up(cached: Option<u64>, written: Option<u64>) -> bool {
    matches!((cached, written), (Some(c), Some(w)) if c >= w)
}

impl RecentStatuses {
    fn get(&self, key: &(String, String), cached: Option<u64>) -> Option<&ServiceLogStatus> {
        self.written
            .get(key)
            .filter(|w| w.at.elapsed() < STATUS_MEMORY && !caught_up(cached, w.revision))
            .map(|w| &w.status)
    }

    /// Remembers a write; at most once a second, forgets those the cache caught up with.
    fn insert(
        &mut self,
        key: (String, String),
        revision: Option<u64>,
        status: ServiceLogStatus,
        cache: &Store<CachedServiceLog>,
    ) {
        if self
            .pruned
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
        {
            self.written.retain(|(ns, name), w| {
                let cached = cache
                    .get(&ObjectRef::new(name).within(ns))
                    .and_then(|s| s.revision());
                w.at.elapsed() < STATUS_MEMORY && !caught_up(cached, w.revision)
            });
            self.pruned = Some(Instant::now());
        }
        self.written.insert(
            key,
            Written {
                at: Instant::now(),
                revision,
                status,
            },
        );
    }

    fn remove(&mut self, key: &(String, String)) {
        self.written.remove(key);
    }
}

/// Settings of [`run`].
pub struct Settings {
    pub layout: Layout,
    /// Only this namespace's ServiceLogs and pods, or all.
    pub watch_namespace: Option<String>,
    pub identity: String,
    pub cleanup_timeout: Duration,
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
        published: Default::default(),
        statuses: Default::default(),
        rollout_written: Default::default(),
        rollout_refreshed: Default::default(),
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
    let started = Instant::now();
    let (full, unparsed) = expand(&obj);
    let result = reconcile_inner(&full, unparsed.as_deref(), obj.status_hash(), &ctx).await;
    let label = match &result {
        Ok(_) => "ok",
        Err(e) => e.category(),
    };
    ctx.metrics.reconciled(label, started.elapsed());
    result
}

/// The cached resource with its spec and status parsed, and why the spec did not parse
/// (then the spec is empty, and [`check`] reports the reason). The status has no reasons
/// or messages (see [`CachedServiceLog::status`]).
pub(crate) fn expand(obj: &CachedServiceLog) -> (ServiceLog, Option<String>) {
    let (spec, unparsed) = match obj.spec() {
        Ok(spec) => (spec, None),
        Err(errors) => {
            let problems: Vec<String> = errors.iter().map(ToString::to_string).collect();
            (ServiceLogSpec::default(), Some(problems.join("; ")))
        }
    };
    let full = ServiceLog {
        metadata: obj.metadata.clone(),
        spec,
        status: obj.status(),
    };
    (full, unparsed)
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
        api.patch::<ServiceLog>(
            &obj.name_any(),
            &PatchParams::default(),
            &Patch::Json(patch),
        )
        .await
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
        api.patch::<ServiceLog>(
            &obj.name_any(),
            &PatchParams::default(),
            &Patch::Json(json_patch::Patch(patch)),
        )
        .await
        .map_err(|e| Error::Finalizer(Box::new(e)))?;
    }
    apply(obj, unparsed, status_hash, ctx).await
}

fn finalizer_pointer(path: &str) -> json_patch::jsonptr::PointerBuf {
    json_patch::jsonptr::PointerBuf::parse(path).unwrap_or_default()
}

fn error_policy(obj: Arc<CachedServiceLog>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(servicelog = %ObjectRef::from_obj(obj.as_ref()), category = error.category(), error = %error, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(2))
}

/// `status_hash` is [`cache::status_hash`] of the status the cache holds (whose reasons
/// and messages `obj.status` lacks).
async fn apply(
    obj: &ServiceLog,
    unparsed: Option<&str>,
    status_hash: Option<u64>,
    ctx: &Context,
) -> Result<Action, Error> {
    let namespace = obj.namespace().ok_or(Error::NoNamespace)?;
    let name = obj.name_any();
    let generation = obj.metadata.generation;
    let cached = obj.status.clone().unwrap_or_default();
    let revision = cache::revision(obj.metadata.resource_version.as_deref());
    let ours = ctx
        .statuses
        .lock()
        .ok()
        .and_then(|m| m.get(&(namespace.clone(), name.clone()), revision).cloned())
        .filter(|ours: &ServiceLogStatus| ours.observed_generation >= cached.observed_generation);
    let old = match ours {
        Some(ours) => OldStatus {
            hash: Some(cache::status_hash(&ours)),
            status: ours,
        },
        None => OldStatus {
            hash: status_hash,
            status: cached,
        },
    };
    let mut status = ServiceLogStatus {
        observed_generation: generation,
        ..old.clone()
    };
    let mut conds = Vec::new();
    let mut requeue = Action::await_change();
    let mut partway = false;

    // 1. validate
    let envelope = match check(obj, unparsed) {
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
                );
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
    match publish_config(ctx, obj, &namespace, &name, &envelope).await {
        Ok(Published::Superseded { .. }) => {
            // A newer generation is in the cache and already in ZooKeeper; its own
            // reconcile writes the status.
            return Ok(Action::requeue(Duration::from_secs(1)));
        }
        Ok(outcome) => {
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
    let mut instances = ctx.zk.instances(&namespace, &name).ok();
    let key = (namespace.clone(), name.clone());
    let behind = instances.as_ref().is_some_and(|instances| {
        let r = status::rollout(pods.matched, &pods.injected, instances, &hash);
        r.counts.applied < r.counts.injected
    });
    if behind {
        let due = ctx
            .rollout_refreshed
            .lock()
            .ok()
            .and_then(|m| m.get(&key).copied())
            .is_none_or(|t| t.elapsed() >= ROLLOUT_REFRESH_INTERVAL);
        if due
            && ctx
                .zk
                .refresh_instances(&ctx.layout, &namespace, &name)
                .await
                .is_ok()
        {
            if let Ok(mut m) = ctx.rollout_refreshed.lock() {
                m.insert(key.clone(), Instant::now());
            }
            instances = ctx.zk.instances(&namespace, &name).ok();
        }
        requeue = Action::requeue(ROLLOUT_REFRESH_INTERVAL);
    } else if let Ok(mut m) = ctx.rollout_refreshed.lock() {
        m.remove(&key);
    }
    match instances {
        Some(instances) => {
            let rollout = status::rollout(pods.matched, &pods.injected, &instances, &hash);
            partway =
                rollout.counts.applied < rollout.counts.injected && rollout.rejected.is_empty();
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
    let same_config = status.config_hash == old.config_hash;
    if partway && same_config {
        let last = ctx
            .rollout_written
            .lock()
            .ok()
            .and_then(|m| m.get(&key).copied());
        if let Some(wait) = last.and_then(|t| ROLLOUT_STATUS_INTERVAL.checked_sub(t.elapsed())) {
            return Ok(Action::requeue(wait));
        }
    }
    let written = write_status(ctx, obj, &namespace, status, &conds, &old).await?;
    if let Ok(mut m) = ctx.rollout_written.lock() {
        if !partway {
            m.remove(&key);
        } else if written {
            m.insert(key, Instant::now());
        }
    }
    Ok(requeue)
}

/// Publishes a valid resource's config znode (see [`zk::publish`]), remembers the hash, and
/// posts the Event for what changed. Used by reconciles and by the watch's fast path.
async fn publish_config(
    ctx: &Context,
    obj: &ServiceLog,
    namespace: &str,
    name: &str,
    envelope: &Envelope,
) -> Result<Published, ZkError> {
    let key = (namespace.to_owned(), name.to_owned());
    let known = ctx
        .published
        .lock()
        .ok()
        .and_then(|m| m.get(&key).cloned())
        .or_else(|| obj.status.as_ref().and_then(|s| s.config_hash.clone()));
    let client = ctx.zk.client()?;
    let uid = obj.metadata.uid.clone();
    let reference = ObjectRef::<CachedServiceLog>::new(name).within(namespace);
    let newest = || {
        ctx.slogs
            .get(&reference)
            .filter(|s| s.metadata.uid == uid)
            .and_then(|s| s.metadata.generation)
    };
    let outcome = zk::publish(
        &client,
        &ctx.layout,
        namespace,
        name,
        envelope,
        known.as_deref(),
        &newest,
    )
    .await?;
    if matches!(outcome, Published::Superseded { .. }) {
        return Ok(outcome);
    }
    if let Ok(mut m) = ctx.published.lock() {
        m.insert(key, envelope.hash.clone());
    }
    let path = ctx.layout.config(namespace, name).unwrap_or_default();
    let drift = match outcome {
        Published::Unchanged { .. } | Published::Superseded { .. } => return Ok(outcome),
        Published::Created { .. } if known.is_some() => Some("deleted"),
        Published::Updated { drift: true, .. } => Some("changed"),
        Published::Created { .. } | Published::Updated { .. } => None,
    };
    match drift {
        Some(how) => {
            let note = format!(
                "{path} had been {how} outside the operator; restored {}",
                envelope.hash
            );
            publish_event(
                ctx,
                obj,
                EventType::Warning,
                "DriftRepaired",
                "Publish",
                &note,
            );
        }
        None => {
            let note = format!(
                "{} published to {path} (version {})",
                envelope.hash,
                outcome.version()
            );
            publish_event(ctx, obj, EventType::Normal, "Published", "Publish", &note);
        }
    }
    Ok(outcome)
}

/// Validation as the webhook and sidecars do it, plus the envelope size: every problem.
fn check(obj: &ServiceLog, unparsed: Option<&str>) -> Result<Envelope, Vec<String>> {
    if let Some(problem) = unparsed {
        return Err(vec![problem.to_owned()]);
    }
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

/// The status a reconcile starts from: the one this process last wrote, or the cache's
/// (without reasons and messages), with the hash of the whole.
struct OldStatus {
    status: ServiceLogStatus,
    hash: Option<u64>,
}

impl std::ops::Deref for OldStatus {
    type Target = ServiceLogStatus;

    fn deref(&self) -> &ServiceLogStatus {
        &self.status
    }
}

async fn write_status(
    ctx: &Context,
    obj: &ServiceLog,
    namespace: &str,
    mut status: ServiceLogStatus,
    conds: &[Cond],
    old: &OldStatus,
) -> Result<bool, Error> {
    let now = Time(k8s_openapi::jiff::Timestamp::now()).0.to_string();
    status.conditions =
        status::merge_conditions(&old.conditions, conds, status.observed_generation, &now);
    let key = (namespace.to_owned(), obj.name_any());
    if old.hash == Some(cache::status_hash(&status)) {
        return Ok(false);
    }
    let api: Api<CachedServiceLog> = Api::namespaced(ctx.client.clone(), namespace);
    let patch = serde_json::json!({
        "apiVersion": "servicelog.io/v1alpha1",
        "kind": "ServiceLog",
        "status": status,
    });
    let updated = api
        .patch_status(
            &obj.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    if let Ok(mut m) = ctx.statuses.lock() {
        m.insert(key, updated.revision(), status, &ctx.slogs);
    }
    Ok(true)
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
    forget_resource(ctx, &namespace, &name);
    match result {
        Ok(()) => {
            publish_event(
                ctx,
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
                publish_event(
                    ctx,
                    obj,
                    EventType::Warning,
                    "CleanupAbandoned",
                    "Delete",
                    &note,
                );
                Ok(Action::await_change())
            } else {
                Err(Error::Zk(e))
            }
        }
    }
}

/// Drops what this process remembers about a resource that is gone.
fn forget_resource(ctx: &Context, namespace: &str, name: &str) {
    let key = (namespace.to_owned(), name.to_owned());
    for map in [&ctx.rollout_written, &ctx.rollout_refreshed] {
        if let Ok(mut m) = map.lock() {
            m.remove(&key);
        }
    }
    if let Ok(mut m) = ctx.published.lock() {
        m.remove(&key);
    }
    if let Ok(mut m) = ctx.statuses.lock() {
        m.remove(&key);
    }
}

fn publish_event(
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
    ctx.events.publish(&event, &obj.object_ref(&()));
}
