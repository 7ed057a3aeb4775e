//! The one ServiceLog cache of the process, read by the admission webhook and by the
//! controller, kept by one watch.
//!
//! A deserialized `ServiceLog` is a tree of small allocations: about 10 KB a resource once
//! the caches, the predicate and the scheduler each held their own. Here a resource is its
//! identity (name, namespace, uid, resourceVersion, generation, finalizers, deletion), the
//! spec as the JSON text the API server sent, a digest of the status, and the selector
//! pre-parsed for matching pod changes against every ServiceLog; the spec is parsed when a
//! reconcile or an admission needs it. A spec that does not parse (a CRD schema older than this operator, say) does
//! not break the watch: it is cached as text and the reconcile reports it as `Valid=False`.
//!
//! The controller runs only on the leader, the webhook everywhere, so the controller
//! [`follow`](Cache::follow)s the cache: it gets every resource already cached, then every
//! change a reconcile must see — a new resource, a new generation, finalizers, deletion;
//! not the operator's own status writes — and a [`Change::Listed`] after each listing.
//! During the first listing resources are passed on as they arrive, so the fast path
//! publishes them while the rest of the list is still coming; during a relist they are
//! passed on when it completes (the cache holds the old listing until then), with a
//! [`Change::Deleted`] for each resource the new listing no longer has.

use std::{
    borrow::Cow,
    collections::BTreeMap,
    fmt,
    hash::{DefaultHasher, Hash, Hasher},
    sync::Arc,
};

use futures::{Stream, StreamExt};
use k8s_openapi::{
    NamespaceResourceScope,
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
};
use kube::{
    Api, Resource,
    core::{Selector, SelectorExt},
    runtime::{
        WatchStreamExt,
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;
use servicelog_api::{
    FieldError, ValidationErrors, parse_spec,
    v1alpha1::{
        Condition, LabelSelector, PodCounts, RolloutStatus, ServiceLog, ServiceLogSpec,
        ServiceLogStatus,
    },
};
use tokio::sync::mpsc;

/// A ServiceLog as the cache keeps it.
#[derive(Clone, Debug)]
pub struct CachedServiceLog {
    /// Name, namespace, uid, resourceVersion, generation, finalizers and deletion only.
    pub metadata: ObjectMeta,
    /// The spec as the JSON text the API server sent.
    spec: Box<str>,
    /// What a reconcile reads of the status.
    status: Option<Box<StatusDigest>>,
    selector: Option<Box<Selector>>,
}

impl CachedServiceLog {
    /// The spec, parsed; a field this operator does not know (a newer CRD, or inside the
    /// schema's open `any` items) is an error naming it, never silently dropped.
    pub fn spec(&self) -> Result<ServiceLogSpec, ValidationErrors> {
        let value: serde_json::Value = serde_json::from_str(&self.spec).map_err(|e| {
            ValidationErrors(vec![FieldError::new("spec", format!("not JSON: {e}"))])
        })?;
        parse_spec(&value)
    }

    /// The status without its conditions' reasons and messages (the cache does not keep
    /// them; [`status_hash`](Self::status_hash) stands in for the whole). A status this
    /// operator cannot read counts as none (the next status write replaces it).
    pub fn status(&self) -> Option<ServiceLogStatus> {
        self.status.as_deref().map(StatusDigest::to_status)
    }

    /// [`status_hash`] of the whole status.
    pub fn status_hash(&self) -> Option<u64> {
        self.status.as_ref().map(|s| s.hash)
    }

    /// The ServiceLog with its spec parsed and no status.
    pub fn to_servicelog(&self) -> Result<ServiceLog, ValidationErrors> {
        Ok(ServiceLog {
            metadata: self.metadata.clone(),
            spec: self.spec()?,
            status: None,
        })
    }

    /// `spec.sidecar.image`, read without parsing the rest of the spec (the pre-pull
    /// DaemonSet asks for every resource's every few seconds).
    pub fn sidecar_image(&self) -> Option<String> {
        #[derive(Deserialize)]
        struct Spec {
            sidecar: Option<Sidecar>,
        }
        #[derive(Deserialize)]
        struct Sidecar {
            image: Option<String>,
        }
        serde_json::from_str::<Spec>(&self.spec)
            .ok()?
            .sidecar?
            .image
            .filter(|image| !image.is_empty())
    }

    /// Whether the selector matches a pod's labels (no selector matches nothing).
    pub fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        self.selector.as_ref().is_some_and(|s| s.matches(labels))
    }

    /// The resourceVersion as a number, where it is one (etcd's revisions are).
    pub fn revision(&self) -> Option<u64> {
        revision(self.metadata.resource_version.as_deref())
    }

    /// Whether going from `self` to `new` changes anything a reconcile decides on: the
    /// spec (generation), the finalizers, the deletion, the object itself (uid), or the
    /// rollout annotation (the only annotation kept).
    pub fn reconcile_differs(&self, new: &Self) -> bool {
        let (a, b) = (&self.metadata, &new.metadata);
        a.uid != b.uid
            || a.generation != b.generation
            || a.finalizers != b.finalizers
            || a.deletion_timestamp.is_some() != b.deletion_timestamp.is_some()
            || a.annotations != b.annotations
    }
}

/// A resourceVersion as a number, where it is one.
pub fn revision(resource_version: Option<&str>) -> Option<u64> {
    resource_version.and_then(|v| v.parse().ok())
}

/// A hash of everything in a status: two statuses with the same hash are the same status
/// (but for a 64-bit collision, which would skip one status write).
pub fn status_hash(status: &ServiceLogStatus) -> u64 {
    let mut h = DefaultHasher::new();
    // Serialising a status cannot fail: no maps with non-string keys, no floats.
    serde_json::to_vec(status).unwrap_or_default().hash(&mut h);
    h.finish()
}

/// A status as the cache keeps it: about 250 bytes instead of 900 of JSON text, which at
/// 10,000 ServiceLogs is most of what the operator's memory grows by as it writes them.
#[derive(Clone, Debug)]
struct StatusDigest {
    hash: u64,
    observed_generation: Option<i64>,
    published_version: Option<i32>,
    /// matched, injected, applied.
    pods: Option<[u32; 3]>,
    config_hash: Option<Box<str>>,
    /// One line per condition: type, status, lastTransitionTime, observedGeneration (or
    /// empty), separated by tabs.
    conditions: Box<str>,
    /// `status.rollout` whole (only resources with `spec.rollout` have one): the staged
    /// rollout resumes from it, and a rolled-back candidate is not retried.
    rollout: Option<Box<RolloutStatus>>,
}

impl StatusDigest {
    fn new(status: &ServiceLogStatus) -> Self {
        let mut conditions = String::new();
        for c in &status.conditions {
            let generation = c.observed_generation.map(|g| g.to_string());
            let fields = [
                c.r#type.as_str(),
                c.status.as_str(),
                c.last_transition_time.as_str(),
                generation.as_deref().unwrap_or(""),
            ];
            conditions.push_str(&fields.join("\t"));
            conditions.push('\n');
        }
        Self {
            hash: status_hash(status),
            observed_generation: status.observed_generation,
            published_version: status.published_version,
            pods: status
                .pods
                .as_ref()
                .map(|p| [p.matched, p.injected, p.applied]),
            config_hash: status.config_hash.as_deref().map(Into::into),
            conditions: conditions.into_boxed_str(),
            rollout: status.rollout.clone().map(Box::new),
        }
    }

    fn to_status(&self) -> ServiceLogStatus {
        let conditions = self
            .conditions
            .lines()
            .map(|line| {
                let mut fields = line.split('\t');
                let mut next = || fields.next().unwrap_or_default().to_owned();
                Condition {
                    r#type: next(),
                    status: next(),
                    last_transition_time: next(),
                    observed_generation: next().parse().ok(),
                    reason: String::new(),
                    message: String::new(),
                }
            })
            .collect();
        ServiceLogStatus {
            observed_generation: self.observed_generation,
            config_hash: self.config_hash.as_deref().map(str::to_owned),
            published_version: self.published_version,
            pods: self.pods.map(|[matched, injected, applied]| PodCounts {
                matched,
                injected,
                applied,
                summary: format!("{applied}/{injected}"),
            }),
            rollout: self.rollout.as_deref().cloned(),
            conditions,
        }
    }
}

impl Resource for CachedServiceLog {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(dt: &()) -> Cow<'_, str> {
        ServiceLog::kind(dt)
    }

    fn group(dt: &()) -> Cow<'_, str> {
        ServiceLog::group(dt)
    }

    fn version(dt: &()) -> Cow<'_, str> {
        ServiceLog::version(dt)
    }

    fn plural(dt: &()) -> Cow<'_, str> {
        ServiceLog::plural(dt)
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// The fields read from the API; everything else (managedFields, labels, annotations) is
/// skipped while parsing. The spec and status are kept as the JSON text the API server
/// sent (compact), not parsed into a tree and printed again: a cold start of 10,000
/// resources then leaves no trail of short-lived allocations between the long-lived ones.
#[derive(Deserialize)]
struct Wire {
    #[serde(default)]
    metadata: WireMeta,
    #[serde(default)]
    spec: Option<Box<RawValue>>,
    #[serde(default)]
    status: Option<Box<RawValue>>,
}

/// The selector, read out of the spec text; the other fields are skipped unparsed.
#[derive(Deserialize)]
struct WireSelector<'a> {
    #[serde(borrow, default)]
    selector: Option<&'a RawValue>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireMeta {
    name: Option<String>,
    namespace: Option<String>,
    uid: Option<String>,
    resource_version: Option<String>,
    generation: Option<i64>,
    finalizers: Option<Vec<String>>,
    deletion_timestamp: Option<Time>,
    #[serde(default)]
    annotations: WireAnnotations,
}

/// Of the annotations, only the one a person steers a staged rollout with; the others
/// (`kubectl`'s last-applied copy of the whole object among them) are skipped unread.
#[derive(Default, Deserialize)]
struct WireAnnotations {
    #[serde(rename = "servicelog.io/rollout")]
    rollout: Option<String>,
}

impl<'de> Deserialize<'de> for CachedServiceLog {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let wire = Wire::deserialize(deserializer)?;
        let spec: Box<str> = wire.spec.map_or_else(|| "{}".into(), Into::into);
        let selector = serde_json::from_str::<WireSelector<'_>>(&spec)
            .ok()
            .and_then(|w| w.selector)
            .and_then(parse_selector)
            .map(Box::new);
        let status = wire
            .status
            .and_then(|raw| serde_json::from_str::<ServiceLogStatus>(raw.get()).ok())
            .map(|s| Box::new(StatusDigest::new(&s)));
        let m = wire.metadata;
        Ok(Self {
            metadata: ObjectMeta {
                name: m.name,
                namespace: m.namespace,
                uid: m.uid,
                resource_version: m.resource_version,
                generation: m.generation,
                finalizers: m.finalizers,
                deletion_timestamp: m.deletion_timestamp,
                annotations: m.annotations.rollout.map(|command| {
                    BTreeMap::from([(servicelog_api::rollout::ANNOTATION.to_owned(), command)])
                }),
                ..ObjectMeta::default()
            },
            spec,
            status,
            selector,
        })
    }
}

/// The selector read out of the spec text, as kube's matcher; `None` when it does not
/// parse (the reconcile reports the spec invalid).
fn parse_selector(raw: &RawValue) -> Option<Selector> {
    let selector: LabelSelector = serde_json::from_str(raw.get()).ok()?;
    selector.to_selector().ok()
}

/// What the cache tells its follower.
pub enum Change {
    /// A resource is new, or changed in a way a reconcile must see.
    Applied(Arc<CachedServiceLog>),
    /// A resource is gone (its last state).
    Deleted(Arc<CachedServiceLog>),
    /// A listing completed: the cache holds every resource.
    Listed,
}

impl fmt::Debug for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Applied(o) => write!(f, "Applied({})", ObjectRef::from_obj(o.as_ref())),
            Self::Deleted(o) => write!(f, "Deleted({})", ObjectRef::from_obj(o.as_ref())),
            Self::Listed => f.write_str("Listed"),
        }
    }
}

/// The ServiceLog cache and the task that keeps it.
#[derive(Clone)]
pub struct Cache {
    store: Store<CachedServiceLog>,
    attach: mpsc::UnboundedSender<mpsc::Sender<Change>>,
}

impl Cache {
    /// Starts watching `api` (one namespace, or all).
    pub fn start(api: Api<CachedServiceLog>) -> Self {
        let (store, writer) = reflector::store();
        let (attach, attached) = mpsc::unbounded_channel();
        tokio::spawn(keep(api, writer, attached));
        Self { store, attach }
    }

    /// The cached resources.
    pub fn store(&self) -> Store<CachedServiceLog> {
        self.store.clone()
    }

    /// Every cached resource, then every change a reconcile must see (see the module
    /// docs), with up to `capacity` waiting: a slow follower holds the watch back rather
    /// than lose a change. One follower at a time; a new one replaces the old.
    pub fn follow(&self, capacity: usize) -> impl Stream<Item = Change> + Send + use<> {
        let (tx, mut rx) = mpsc::channel(capacity.max(1));
        // The task lives as long as the process; if it ended, the stream ends at once.
        let _ = self.attach.send(tx);
        futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }
}

/// ServiceLogs per page of a listing. A page is held whole while it is parsed (with the
/// managedFields the cache then drops, a few KB a resource): 100 rather than kube's 500
/// keeps that under a megabyte.
pub const LIST_PAGE: u32 = 100;

/// The task: one watch driving the store, and the follower's feed.
async fn keep(
    api: Api<CachedServiceLog>,
    mut writer: reflector::store::Writer<CachedServiceLog>,
    mut attached: mpsc::UnboundedReceiver<mpsc::Sender<Change>>,
) {
    let store = writer.as_reader();
    // Listed in pages at the current version rather than in one piece from the watch
    // cache: the response size stays bounded however many ServiceLogs there are.
    let mut events = watcher(api, watcher::Config::default().page_size(LIST_PAGE))
        .default_backoff()
        .boxed();
    let mut feed = Feed::default();
    let mut ever_listed = false;
    let mut listing = false;
    // Changed during a relist, passed on when it completes.
    let mut relisted: Vec<ObjectRef<CachedServiceLog>> = Vec::new();
    loop {
        let event = tokio::select! {
            Some(tx) = attached.recv() => {
                feed.follower = Some(tx);
                if ever_listed && !listing {
                    let all = store.state();
                    for obj in all {
                        feed.send(Change::Applied(obj)).await;
                    }
                    feed.send(Change::Listed).await;
                } else {
                    // What the listing in progress buffered is not in the store yet.
                    feed.snapshot_due = true;
                }
                continue;
            }
            event = events.next() => event,
        };
        let event = match event {
            None => break,
            Some(Ok(event)) => event,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "the ServiceLog watch failed; retrying with backoff");
                continue;
            }
        };
        match &event {
            watcher::Event::Init => {
                listing = true;
                relisted.clear();
                writer.apply_watcher_event(&event);
            }
            watcher::Event::InitApply(obj) => {
                let key = ObjectRef::from_obj(obj);
                let changed = store.get(&key).is_none_or(|old| old.reconcile_differs(obj));
                writer.apply_watcher_event(&event);
                if changed && !feed.snapshot_due {
                    if ever_listed {
                        relisted.push(key);
                    } else {
                        feed.send(Change::Applied(Arc::new(obj.clone()))).await;
                    }
                }
            }
            watcher::Event::Apply(obj) => {
                let key = ObjectRef::from_obj(obj);
                let old = store.get(&key);
                writer.apply_watcher_event(&event);
                let changed = old.is_none_or(|old| old.reconcile_differs(obj));
                if let Some(new) = store.get(&key).filter(|_| changed && !listing) {
                    feed.send(Change::Applied(new)).await;
                }
            }
            watcher::Event::Delete(obj) => {
                writer.apply_watcher_event(&event);
                feed.send(Change::Deleted(Arc::new(obj.clone()))).await;
            }
            watcher::Event::InitDone => {
                let before = if ever_listed {
                    store.state()
                } else {
                    Vec::new()
                };
                writer.apply_watcher_event(&event);
                listing = false;
                ever_listed = true;
                if std::mem::take(&mut feed.snapshot_due) {
                    for obj in store.state() {
                        feed.send(Change::Applied(obj)).await;
                    }
                } else {
                    for key in relisted.drain(..) {
                        if let Some(obj) = store.get(&key) {
                            feed.send(Change::Applied(obj)).await;
                        }
                    }
                }
                for old in before {
                    let gone = store
                        .get(&ObjectRef::from_obj(old.as_ref()))
                        .is_none_or(|now| now.metadata.uid != old.metadata.uid);
                    if gone {
                        feed.send(Change::Deleted(old)).await;
                    }
                }
                feed.send(Change::Listed).await;
            }
        }
    }
    tracing::error!("the ServiceLog watch ended; the cache no longer follows the API server");
}

/// The follower's end of the cache task.
#[derive(Default)]
struct Feed {
    follower: Option<mpsc::Sender<Change>>,
    /// The follower attached during a listing: it gets the whole store when it completes.
    snapshot_due: bool,
}

impl Feed {
    async fn send(&mut self, change: Change) {
        let Some(tx) = &self.follower else {
            return;
        };
        if tx.send(change).await.is_err() {
            tracing::debug!("the cache's follower is gone");
            self.follower = None;
            self.snapshot_due = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: serde_json::Value) -> CachedServiceLog {
        serde_json::from_value(json).expect("parses")
    }

    #[test]
    fn keeps_identity_spec_and_status_and_drops_the_rest() {
        let slog = parse(serde_json::json!({
            "apiVersion": "servicelog.io/v1alpha1", "kind": "ServiceLog",
            "metadata": {"name": "a", "namespace": "ns", "uid": "u1", "resourceVersion": "42",
                         "generation": 3, "finalizers": ["servicelog.io/cleanup"],
                         "labels": {"x": "y"},
                         "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}]},
            "spec": {"selector": {"matchLabels": {"app": "a"}},
                     "sources": [{"name": "app", "file": {"paths": ["/var/log/app/*.log"]}}],
                     "sinks": [{"name": "out", "stdout": {}}], "defaultTo": ["out"]},
            "status": {"observedGeneration": 3, "configHash": "h"},
        }));
        assert_eq!(slog.metadata.name.as_deref(), Some("a"));
        assert_eq!(slog.metadata.generation, Some(3));
        assert_eq!(slog.revision(), Some(42));
        assert!(slog.metadata.labels.is_none());
        assert!(slog.metadata.managed_fields.is_none());
        assert_eq!(
            slog.spec().expect("spec").default_to,
            vec!["out".to_owned()]
        );
        assert_eq!(
            slog.status().and_then(|s| s.config_hash).as_deref(),
            Some("h")
        );
        let labels = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<BTreeMap<_, _>>()
        };
        assert!(slog.selects(&labels(&[("app", "a"), ("tier", "web")])));
        assert!(!slog.selects(&labels(&[("app", "b")])));
    }

    #[test]
    fn the_status_digest_keeps_what_a_reconcile_reads_and_hashes_the_rest() {
        let status = serde_json::json!({
            "observedGeneration": 3, "configHash": "sha256:abc", "publishedVersion": 2,
            "pods": {"matched": 3, "injected": 2, "applied": 1, "summary": "1/2"},
            "conditions": [
                {"type": "Valid", "status": "True", "observedGeneration": 3,
                 "lastTransitionTime": "2026-12-04T10:00:00Z", "reason": "Validated",
                 "message": "the spec compiles"},
                {"type": "Ready", "status": "False",
                 "lastTransitionTime": "2026-12-04T10:00:01.5Z", "reason": "RollingOut",
                 "message": "1/2 applied"},
            ],
        });
        let slog = parse(serde_json::json!({
            "metadata": {"name": "a", "namespace": "ns"}, "spec": {}, "status": status,
        }));
        let full: ServiceLogStatus = serde_json::from_value(status).expect("a status");
        assert_eq!(slog.status_hash(), Some(status_hash(&full)));
        let mut bare = full.clone();
        for c in &mut bare.conditions {
            c.reason.clear();
            c.message.clear();
        }
        assert_eq!(slog.status(), Some(bare));
        let mut changed = full.clone();
        changed.conditions[1].message = "2/2 applied".into();
        assert_ne!(status_hash(&changed), status_hash(&full));
    }

    #[test]
    fn keeps_the_spec_text_as_the_api_server_sent_it() {
        let text = r#"{"metadata":{"name":"a","namespace":"ns","resourceVersion":"7"},"spec":{"sources":[],"selector":{"matchLabels":{"app":"a"}},"sinks":[{"name":"out","stdout":{}}]},"status":null}"#;
        let slog: CachedServiceLog = serde_json::from_str(text).expect("parses");
        assert_eq!(
            &*slog.spec,
            r#"{"sources":[],"selector":{"matchLabels":{"app":"a"}},"sinks":[{"name":"out","stdout":{}}]}"#
        );
        assert!(slog.status.is_none(), "a null status is no status");
        let app = BTreeMap::from([("app".to_owned(), "a".to_owned())]);
        assert!(slog.selects(&app));
        let no_spec: CachedServiceLog =
            serde_json::from_str(r#"{"metadata":{"name":"b"}}"#).expect("parses");
        assert_eq!(&*no_spec.spec, "{}");
    }

    #[test]
    fn a_spec_that_does_not_parse_is_kept_and_reported_not_fatal() {
        let slog = parse(serde_json::json!({
            "metadata": {"name": "a", "namespace": "ns"},
            "spec": {"sinks": "not a list", "selector": {"matchLabels": ["bad"]}},
        }));
        let err = slog.spec().expect_err("the spec is malformed");
        assert!(
            err.to_string().contains("sinks") || err.to_string().contains("sequence"),
            "{err}"
        );
        assert!(!slog.selects(&BTreeMap::new()));
        assert!(slog.status().is_none());
    }

    #[test]
    fn selector_expressions_follow_label_selector_semantics() {
        let slog = parse(serde_json::json!({
            "metadata": {"name": "a", "namespace": "ns"},
            "spec": {"selector": {"matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["web", "api"]},
                {"key": "canary", "operator": "DoesNotExist"},
            ]}},
        }));
        let with = |pairs: &[(&str, &str)]| {
            slog.selects(
                &pairs
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            )
        };
        assert!(with(&[("tier", "api")]));
        assert!(!with(&[("tier", "db")]));
        assert!(!with(&[("tier", "web"), ("canary", "1")]));
        let empty = parse(serde_json::json!({
            "metadata": {"name": "b"}, "spec": {"selector": {}},
        }));
        assert!(
            empty.selects(&BTreeMap::new()),
            "an empty selector selects everything"
        );
    }

    #[test]
    fn reconcile_differs_on_generation_finalizers_deletion_uid_and_the_rollout_annotation_only() {
        let base = serde_json::json!({
            "metadata": {"name": "a", "namespace": "ns", "uid": "u", "generation": 1,
                         "resourceVersion": "1"},
            "spec": {}, "status": {"observedGeneration": 1},
        });
        let a = parse(base.clone());
        let mut status_only = base.clone();
        status_only["metadata"]["resourceVersion"] = "2".into();
        status_only["metadata"]["annotations"] = serde_json::json!({"note": "not kept"});
        status_only["status"]["configHash"] = "h".into();
        assert!(!a.reconcile_differs(&parse(status_only)));
        for (pointer, value) in [
            ("generation", serde_json::json!(2)),
            ("uid", serde_json::json!("v")),
            ("finalizers", serde_json::json!(["f"])),
            (
                "annotations",
                serde_json::json!({"servicelog.io/rollout": "pause"}),
            ),
            (
                "deletionTimestamp",
                serde_json::json!("2026-01-01T00:00:00Z"),
            ),
        ] {
            let mut changed = base.clone();
            changed["metadata"][pointer] = value;
            assert!(a.reconcile_differs(&parse(changed)), "{pointer}");
        }
    }
}
