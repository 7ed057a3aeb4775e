//! The fast path: config znodes published straight from the ServiceLog watch, ahead of the
//! reconciles, and subtrees of resources that are gone removed.
//!
//! A reconcile costs the API server a finalizer patch and a status patch; on this machine
//! it manages about 150 of those a second, so a cold start over 10,000 ServiceLogs would
//! leave the last sidecars without rules for a minute. ZooKeeper takes thousands of writes
//! a second. So every valid ServiceLog the watch delivers is published at once, many in
//! flight, before it reaches the controller; the reconcile that follows finds its znode
//! current (`Unchanged`), adds the finalizer and writes status at the API server's pace.
//!
//! Publishing before the finalizer is in place opens one gap: a resource deleted before
//! its first reconcile leaves its subtree behind, because nothing holds its deletion. Two
//! things close it:
//! - a `Deleted` watch event for a resource without our finalizer removes its subtree
//!   (when the config there is that resource's — same uid — and not a re-created one's);
//! - after every (re)connect to ZooKeeper, once the cache holds every ServiceLog, subtrees
//!   with no ServiceLog are removed ([`sweep`]). That also finishes a deletion whose
//!   cleanup was abandoned while ZooKeeper was down.
//!
//! Two writers of one resource cannot put an older generation back: see
//! [`zk::publish`]'s `newest`.
//!
//! On a cold start the API server is the scarce resource on a small machine: finalizer
//! patches, status patches and Events for thousands of resources would take the CPU that
//! ZooKeeper and the fast path need. So reconciles and Event posting wait ([`Warmup`])
//! until the fast path has published everything the first listing returned (bounded by
//! [`WARMUP_LIMIT`]); after that they run as they come.

use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use kube::{ResourceExt, runtime::reflector::ObjectRef};
use tokio::sync::watch;

use super::{
    Context, FINALIZER,
    publish::{PublishError, publish_config},
    validate::{check, expand},
};
use crate::{cache::CachedServiceLog, zk};

/// How long after start the fast path waits for the first ZooKeeper session (the first
/// listing usually arrives before it); later, a disconnected ZooKeeper fails fast and the
/// reconciles report it.
pub const FIRST_SESSION_LIMIT: Duration = Duration::from_secs(10);

/// The longest reconciles and Events wait for the first listing to be published.
pub const WARMUP_LIMIT: Duration = Duration::from_secs(120);

/// Whether the fast path has published (or failed to publish) every ServiceLog of the
/// first listing.
pub struct Warmup {
    listed: AtomicBool,
    in_flight: AtomicUsize,
    done: watch::Sender<bool>,
}

impl Default for Warmup {
    fn default() -> Self {
        Self {
            listed: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            done: watch::channel(false).0,
        }
    }
}

impl Warmup {
    /// A fast-path publish began.
    pub fn started(&self) {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
    }

    /// A fast-path publish ended.
    pub fn finished(&self) {
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.check();
    }

    /// The first listing went by: every object in it has started its publish.
    pub fn listed(&self) {
        self.listed.store(true, Ordering::SeqCst);
        self.check();
    }

    fn check(&self) {
        if self.listed.load(Ordering::SeqCst) && self.in_flight.load(Ordering::SeqCst) == 0 {
            self.done
                .send_if_modified(|done| !std::mem::replace(done, true));
        }
    }

    /// A receiver that turns true when warm.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.done.subscribe()
    }

    /// Waits until warm, or [`WARMUP_LIMIT`] — whichever comes first.
    pub async fn wait(&self) {
        wait_warm(self.subscribe()).await;
    }
}

/// Waits until `warm` is true, or [`WARMUP_LIMIT`].
pub async fn wait_warm(mut warm: watch::Receiver<bool>) {
    if *warm.borrow() {
        return;
    }
    if tokio::time::timeout(WARMUP_LIMIT, warm.wait_for(|w| *w))
        .await
        .is_err()
    {
        tracing::warn!(
            limit = ?WARMUP_LIMIT,
            "the first listing is not all published yet; reconciling anyway"
        );
    }
}

/// Fast-path publishes in flight at once: ZooKeeper pipelines a session's requests, so
/// this bounds memory, not round trips.
pub const IN_FLIGHT: usize = 256;

/// Publishes `obj`'s config znode unless it is invalid, being deleted, or already what this
/// process last published. Errors are left to the reconcile that follows, which reports
/// them in status and retries.
pub async fn prepublish(obj: &CachedServiceLog, ctx: &Context) {
    if obj.metadata.deletion_timestamp.is_some() {
        return;
    }
    let Some(namespace) = obj.namespace() else {
        return;
    };
    let name = obj.name_any();
    let (obj, unparsed) = expand(obj);
    // A change under `spec.rollout` goes out step by step, from the reconcile.
    if obj.spec.rollout.is_some() {
        return;
    }
    let Ok(envelope) = check(&obj, unparsed.as_deref()) else {
        return;
    };
    let key = (namespace, name);
    ctx.zk
        .wait_connected(ctx.started + FIRST_SESSION_LIMIT)
        .await;
    if ctx.memory.published(&key).as_ref() == Some(&envelope.hash) {
        return;
    }
    if let Err(e) = publish_config(ctx, &obj, &key, &envelope).await {
        tracing::debug!(servicelog = %format!("{}/{}", key.0, key.1), error = %e, "fast publish failed; the reconcile retries");
    }
}

/// A ServiceLog left the cluster. With our finalizer its reconcile already removed the
/// subtree; without it (deleted before its first reconcile), remove it here — if the config
/// there is still this resource's.
pub async fn deleted(obj: Arc<CachedServiceLog>, ctx: Arc<Context>) {
    let (Some(namespace), name) = (obj.namespace(), obj.name_any()) else {
        return;
    };
    ctx.memory.forget(&(namespace.clone(), name.clone()));
    if obj.finalizers().iter().any(|f| f == FINALIZER) {
        return;
    }
    let (Ok(config), Ok(resource)) = (
        ctx.layout.config(&namespace, &name),
        ctx.layout.resource(&namespace, &name),
    ) else {
        return;
    };
    let result = async {
        let client = ctx.zk.client()?;
        match zk::read_config(&client, &config).await? {
            Some(there) if Some(&there.uid) == obj.metadata.uid.as_ref() => {
                ctx.leadership
                    .write(zk::delete_subtree(&client, &resource))
                    .await??;
                Ok(true)
            }
            _ => Ok::<_, PublishError>(false),
        }
    }
    .await;
    match result {
        Ok(true) => {
            tracing::info!(path = %resource, "removed the subtree of a ServiceLog deleted before its first reconcile")
        }
        Ok(false) => {}
        // The next sweep (every reconnect) removes it.
        Err(e) => {
            tracing::warn!(path = %resource, error = %e, "cannot remove the subtree of a deleted ServiceLog")
        }
    }
}

/// Removes every subtree (in the watched namespace, or all) whose ServiceLog does not exist,
/// once the cache holds every ServiceLog (and not before: an incomplete cache would make
/// live resources look gone). Run after each (re)connect to ZooKeeper.
pub async fn sweep(ctx: Arc<Context>, namespace: Option<String>) {
    // Not `Store::wait_until_ready`: its one-shot keeps only the last waiter's waker, and
    // the controller waits on it too. Warm implies the first listing is in the cache.
    let mut warm = ctx.warmup.subscribe();
    if tokio::time::timeout(Duration::from_secs(600), warm.wait_for(|w| *w))
        .await
        .is_err()
    {
        tracing::warn!("the ServiceLog cache was not filled after 600s; no orphan sweep this time");
        return;
    }
    let result = async {
        let client = ctx.zk.client()?;
        let found = zk::published_resources(&client, &ctx.layout, namespace.as_deref()).await?;
        let existing: HashSet<(String, String)> = ctx
            .slogs
            .state()
            .iter()
            .filter_map(|s| Some((s.namespace()?, s.name_any())))
            .collect();
        let mut removed = 0usize;
        for (ns, name) in found {
            if existing.contains(&(ns.clone(), name.clone())) {
                continue;
            }
            // Looked up again: created since the snapshot above means not an orphan.
            if ctx.slogs.get(&ObjectRef::new(&name).within(&ns)).is_some() {
                continue;
            }
            let Ok(path) = ctx.layout.resource(&ns, &name) else {
                continue;
            };
            ctx.leadership
                .write(zk::delete_subtree(&client, &path))
                .await??;
            tracing::info!(%path, "removed the subtree of a ServiceLog that no longer exists");
            removed += 1;
        }
        Ok::<_, PublishError>(removed)
    }
    .await;
    match result {
        Ok(removed) => tracing::debug!(removed, "orphan sweep done"),
        Err(e) => {
            tracing::warn!(error = %e, "orphan sweep stopped; it runs again after the next reconnect")
        }
    }
}
