//! The operator's one ZooKeeper session, and the idempotent znode operations reconcile
//! uses.
//!
//! A supervisor task owns the session as a state machine: connect (bounded, with backoff)
//! → persistent recursive watch on the root → serve until `Expired`/`Closed`, then a new
//! session. Every change under the root becomes a [`Trigger`] for the controller (drift
//! repair, instance acks); every (re)connect becomes [`Trigger::ResyncAll`], because watch
//! events can be lost across a reconnect.
//!
//! The same watch keeps an in-memory copy of every sidecar's instance record: each change
//! is read once (in multi-reads that gather the changes reported while the previous read
//! was in flight, applied in the order ZooKeeper answers) and the controller computes
//! rollouts from the copy. A rule change acked by 1,000 sidecars is then a few dozen
//! requests, not 1,000 reconciles each re-reading all 1,000 records. After every
//! (re)connect the copy is rebuilt from a scan before the controller is told to resync.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use futures::{FutureExt, StreamExt, future::BoxFuture, stream::FuturesOrdered};
use servicelog_api::{
    wire::{Envelope, Instance, Layout, PathKind},
    zkauth::{self, Credentials, Node},
    zktls::{self, ZkTls},
};
use tokio::sync::{mpsc, watch};
use zookeeper_client::{
    Acl, Acls, AddWatchMode, AuthId, Client, CreateMode, CreateOptions, EventType, MultiReadResult,
    Permission, SessionState,
};

/// What went wrong talking to ZooKeeper, by category.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ZkError {
    #[error("ZooKeeper is not connected ({0})")]
    Unavailable(String),
    #[error("ZooKeeper {op} {path}: {source}")]
    Op {
        op: &'static str,
        path: String,
        source: zookeeper_client::Error,
    },
    #[error("gave up {op} {path} after {attempts} version conflicts")]
    Contended {
        op: &'static str,
        path: String,
        attempts: u32,
    },
}

impl ZkError {
    fn op(op: &'static str, path: &str, source: zookeeper_client::Error) -> Self {
        Self::Op {
            op,
            path: path.to_owned(),
            source,
        }
    }
}

/// Why the controller should look again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    /// A znode under the root changed (created, deleted, data changed).
    Path(String),
    /// Connected or reconnected: every ServiceLog must be checked.
    ResyncAll,
}

/// One sidecar's record as read: the parsed instance, or why it could not be parsed.
pub type InstanceRecord = Result<Instance, String>;

/// An instance record and the zxid of the write that made it (`mzxid`): reads that race
/// each other (a refresh against a watch event) keep the newer record.
#[derive(Clone, Debug)]
struct Cached {
    zxid: i64,
    record: InstanceRecord,
}

/// Instance records per resource `(namespace, name)`, then per pod.
type InstanceCache = HashMap<(String, String), BTreeMap<String, Cached>>;

/// Puts `record` in unless the copy already holds a newer one.
fn keep_newer(pods: &mut BTreeMap<String, Cached>, pod: String, zxid: i64, record: InstanceRecord) {
    match pods.get(&pod) {
        Some(have) if have.zxid > zxid => {}
        _ => {
            pods.insert(pod, Cached { zxid, record });
        }
    }
}

/// Handle on the supervised session; cheap to clone.
#[derive(Clone)]
pub struct Zk {
    client: Arc<RwLock<Option<Client>>>,
    connected: watch::Receiver<bool>,
    last_error: Arc<RwLock<String>>,
    instances: Arc<RwLock<InstanceCache>>,
    /// When the watch last changed each resource's records in the copy.
    updated: Arc<RwLock<HashMap<(String, String), std::time::Instant>>>,
    guard: Arc<Guard>,
    /// Namespaces whose identity this session holds (see [`Zk::authorize`]).
    authorized: Arc<Mutex<HashSet<String>>>,
    /// Whether this replica puts the guard's ACLs on the tree ([`secure`]): the leader
    /// only (see [`Zk::start_securing`]).
    securing: Arc<std::sync::atomic::AtomicBool>,
    layout: Layout,
}

/// Session settings.
#[derive(Clone, Debug)]
pub struct ZkConfig {
    pub connect: String,
    pub layout: Layout,
    pub session_timeout: Duration,
    pub connect_timeout: Duration,
    /// The ACLs znodes are created with, and the identity the session authenticates as.
    pub guard: Guard,
    /// TLS to ZooKeeper, when configured.
    pub tls: Option<ZkTls>,
}

/// The ACLs of the znodes this operator creates ([`zkauth::acl`]), or none (every znode
/// open to anyone) when the operator has no ZooKeeper identity. While the identity is
/// rotated, the previous one (and the namespace identities derived from it) get the same
/// rights as the current ones.
#[derive(Clone, Debug, Default)]
pub struct Guard {
    operator: Option<Credentials>,
    previous: Option<Credentials>,
}

impl Guard {
    pub fn new(operator: Option<Credentials>) -> Self {
        Self {
            operator,
            previous: None,
        }
    }

    /// Rotating from `previous` to this guard's identity.
    pub fn with_previous(mut self, previous: Credentials) -> Self {
        self.previous = Some(previous);
        self
    }

    pub fn operator(&self) -> Option<&Credentials> {
        self.operator.as_ref()
    }

    /// The identities the operator holds: its own, then the previous one while rotating.
    pub fn identities(&self) -> impl Iterator<Item = &Credentials> {
        self.operator.iter().chain(self.previous.iter())
    }

    /// The ACL of a znode of `namespace` (or of a directory above every namespace).
    pub fn acl(&self, namespace: Option<&str>, node: Node) -> Vec<Acl> {
        if self.operator.is_none() {
            return vec![Acl::new(Permission::ALL, AuthId::anyone())];
        }
        let mut acl: Vec<Acl> = Vec::new();
        for (bits, scheme, id) in self
            .identities()
            .flat_map(|op| zkauth::acl(op, namespace, node))
        {
            let entry = Acl::new(permission(bits), AuthId::new(scheme, &id));
            if !acl.contains(&entry) {
                acl.push(entry);
            }
        }
        acl
    }
}

/// zookeeper-client's permission for ZooKeeper's bits.
fn permission(bits: i32) -> Permission {
    [
        (zkauth::perms::READ, Permission::READ),
        (zkauth::perms::WRITE, Permission::WRITE),
        (zkauth::perms::CREATE, Permission::CREATE),
        (zkauth::perms::DELETE, Permission::DELETE),
        (zkauth::perms::ADMIN, Permission::ADMIN),
    ]
    .into_iter()
    .filter(|(bit, _)| bits & bit != 0)
    .fold(Permission::NONE, |all, (_, p)| all | p)
}

fn persistent(acl: &[Acl]) -> CreateOptions<'_> {
    CreateMode::Persistent.with_acls(Acls::new(acl))
}

impl Zk {
    /// Starts the supervisor; triggers arrive on the returned channel.
    pub fn start(config: ZkConfig) -> (Self, mpsc::UnboundedReceiver<Trigger>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let (connected_tx, connected) = watch::channel(false);
        let zk = Self {
            client: Arc::default(),
            connected,
            last_error: Arc::new(RwLock::new("not connected yet".into())),
            instances: Arc::default(),
            updated: Arc::default(),
            guard: Arc::new(config.guard.clone()),
            authorized: Arc::default(),
            securing: Arc::default(),
            layout: config.layout.clone(),
        };
        tokio::spawn(supervise(config, zk.clone(), connected_tx, tx));
        (zk, rx)
    }

    /// The ACLs znodes are created with.
    pub fn guard(&self) -> &Guard {
        &self.guard
    }

    /// From now on (this replica leads), puts the guard's ACLs on the tree now and at
    /// every new session ([`secure`]). A standby never does: during a rolling update that
    /// rotates the identity, replicas with the old and the new identities would otherwise
    /// take the tree from each other, and the last to connect could lock the others out.
    ///
    /// Not connected yet: the session being set up may have passed its own check of the
    /// flag already (it checks before reading the instance records, and is marked
    /// connected after), so a task secures the tree once it is connected. A lost race
    /// here left a tree open until the next session (seen in CI under load).
    pub async fn start_securing(&self) {
        self.securing
            .store(true, std::sync::atomic::Ordering::Release);
        if let Ok(client) = self.client() {
            if let Err(e) = secure(&client, &self.layout, &self.guard).await {
                tracing::warn!(error = %e, "cannot set the ACLs of the existing znodes; trying again at the next session");
            }
            return;
        }
        let zk = self.clone();
        tokio::spawn(async move {
            let mut connected = zk.connected.clone();
            if connected.wait_for(|c| *c).await.is_err() {
                return;
            }
            let Ok(client) = zk.client() else {
                return; // disconnected again: the next session secures the tree
            };
            if let Err(e) = secure(&client, &zk.layout, &zk.guard).await {
                tracing::warn!(error = %e, "cannot set the ACLs of the existing znodes; trying again at the next session");
            }
        });
    }

    /// Adds `namespace`'s identity to the session, once: sidecars create their instance
    /// records for their own identity alone ([`zkauth::record_acl`]), and the operator
    /// reads them with it (it derives every namespace's). The client re-sends it after a
    /// reconnect; a new session starts with none.
    pub async fn authorize(&self, client: &Client, namespace: &str) -> Result<(), ZkError> {
        if self.guard.operator().is_none()
            || self.authorized.lock().is_ok_and(|a| a.contains(namespace))
        {
            return Ok(());
        }
        for operator in self.guard.identities() {
            let identity = operator.for_namespace(namespace);
            client
                .auth(zkauth::DIGEST, &identity.auth_bytes())
                .await
                .map_err(|e| ZkError::op("addAuth", identity.user(), e))?;
        }
        if let Ok(mut a) = self.authorized.lock() {
            a.insert(namespace.to_owned());
        }
        Ok(())
    }

    /// The current session's client.
    ///
    /// Notable errors: [`ZkError::Unavailable`] while disconnected, with the last reason.
    pub fn client(&self) -> Result<Client, ZkError> {
        if !*self.connected.borrow() {
            return Err(ZkError::Unavailable(self.last_error()));
        }
        self.client
            .read()
            .ok()
            .and_then(|c| c.clone())
            .ok_or_else(|| ZkError::Unavailable(self.last_error()))
    }

    /// The instance records under a resource (pod name → record), as the watch last saw
    /// them; unreadable ones are errors so status can say which pod is odd.
    ///
    /// Notable errors: [`ZkError::Unavailable`] while disconnected: the copy may be stale.
    pub fn instances(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Vec<(String, InstanceRecord)>, ZkError> {
        if !*self.connected.borrow() {
            return Err(ZkError::Unavailable(self.last_error()));
        }
        let cache = self
            .instances
            .read()
            .map_err(|_| ZkError::Unavailable("instance cache poisoned".into()))?;
        Ok(cache
            .get(&(namespace.to_owned(), name.to_owned()))
            .map(|pods| {
                pods.iter()
                    .map(|(pod, cached)| (pod.clone(), cached.record.clone()))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Reads a resource's instance records straight from ZooKeeper into the copy: the
    /// safety net for a watch event lost across a reconnect (ZOOKEEPER-4698). A read that
    /// races a newer watch event never puts back an older record (zxids decide), and a pod
    /// that appeared after the listing stays.
    pub async fn refresh_instances(
        &self,
        layout: &Layout,
        namespace: &str,
        name: &str,
    ) -> Result<(), ZkError> {
        let client = self.client()?;
        self.authorize(&client, namespace).await?;
        let path = layout
            .instances(namespace, name)
            .map_err(|e| ZkError::Unavailable(e.to_string()))?;
        let (children, listed_at) = match client.get_children(&path).await {
            Ok((children, stat)) => (children, stat.pzxid),
            Err(zookeeper_client::Error::NoNode) => (Vec::new(), i64::MAX),
            Err(e) => return Err(ZkError::op("getChildren", &path, e)),
        };
        let reads = children.into_iter().map(|pod| {
            let child = format!("{path}/{pod}");
            let read = client.get_data(&child);
            async move {
                match read.await {
                    Ok((data, stat)) => Ok(Some((pod, stat.mzxid, parse_instance(&data)))),
                    Err(zookeeper_client::Error::NoNode) => Ok(None),
                    Err(e) => Err(ZkError::op("getData", &child, e)),
                }
            }
        });
        let read = futures::future::try_join_all(reads).await?;
        if let Ok(mut cache) = self.instances.write() {
            let key = (namespace.to_owned(), name.to_owned());
            let mut pods = cache.remove(&key).unwrap_or_default();
            let listed: std::collections::HashSet<&str> = read
                .iter()
                .flatten()
                .map(|(pod, _, _)| pod.as_str())
                .collect();
            // Gone at the listing, unless written after it.
            pods.retain(|pod, c| listed.contains(pod.as_str()) || c.zxid > listed_at);
            for (pod, zxid, record) in read.into_iter().flatten() {
                keep_newer(&mut pods, pod, zxid, record);
            }
            if !pods.is_empty() {
                cache.insert(key, pods);
            }
        }
        Ok(())
    }

    fn replace_instances(&self, fresh: InstanceCache) {
        if let Ok(mut cache) = self.instances.write() {
            *cache = fresh;
        }
    }

    /// When the watch last changed a record of the resource in the copy, if it did: acks
    /// still arriving mean the watch works and no re-read is needed.
    pub fn instances_updated(&self, namespace: &str, name: &str) -> Option<std::time::Instant> {
        self.updated
            .read()
            .ok()?
            .get(&(namespace.to_owned(), name.to_owned()))
            .copied()
    }

    fn update_instance(&self, update: InstanceUpdate) {
        if let Ok(mut updated) = self.updated.write() {
            match &update {
                InstanceUpdate::RemoveAll { key } => {
                    updated.remove(key);
                }
                InstanceUpdate::Set { key, .. } | InstanceUpdate::Remove { key, .. } => {
                    if let Some(at) = updated.get_mut(key) {
                        *at = std::time::Instant::now();
                    } else {
                        updated.insert(key.clone(), std::time::Instant::now());
                    }
                }
            }
        }
        let Ok(mut cache) = self.instances.write() else {
            return;
        };
        match update {
            InstanceUpdate::Set {
                key,
                pod,
                zxid,
                record,
            } => keep_newer(cache.entry(key).or_default(), pod, zxid, *record),
            InstanceUpdate::Remove { key, pod } => {
                if let Some(pods) = cache.get_mut(&key) {
                    pods.remove(&pod);
                    if pods.is_empty() {
                        cache.remove(&key);
                    }
                }
            }
            InstanceUpdate::RemoveAll { key } => {
                cache.remove(&key);
            }
        }
    }

    /// Waits until a session is up, at most until `deadline`; whether it is.
    pub async fn wait_connected(&self, deadline: tokio::time::Instant) -> bool {
        let mut connected = self.connected.clone();
        tokio::time::timeout_at(deadline, connected.wait_for(|c| *c))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    pub fn is_connected(&self) -> bool {
        *self.connected.borrow()
    }

    fn last_error(&self) -> String {
        self.last_error
            .read()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    fn set(&self, client: Option<Client>, why: &str) {
        if let Ok(mut slot) = self.client.write() {
            *slot = client;
        }
        if let Ok(mut e) = self.last_error.write() {
            *e = why.to_owned();
        }
    }
}

/// One bounded attempt at a session, with TLS when configured (its files read now, so a
/// rotated certificate is used by the next session). A failure is in words for the log
/// and the errors of requests made meanwhile; over TLS it says what the handshake found
/// ([`ZkTls::diagnose`]), as the client reports only a timeout.
async fn connect(config: &ZkConfig) -> Result<Client, String> {
    let mut connector = Client::connector()
        .with_session_timeout(config.session_timeout)
        .with_connection_timeout(config.connect_timeout);
    for op in config.guard.identities() {
        connector = connector.with_auth(zkauth::DIGEST, &op.auth_bytes());
    }
    let tls = match config.tls.as_ref().map(ZkTls::options).transpose() {
        Ok(tls) => tls,
        Err(e) => return Err(format!("connecting to {}: {e}", config.connect)),
    };
    let connecting = zktls::connect(connector, &config.connect, tls);
    let why = match tokio::time::timeout(config.connect_timeout * 2, connecting).await {
        Ok(Ok(client)) => return Ok(client),
        Ok(Err(e)) => format!("connecting to {}: {e}", config.connect),
        Err(_) => format!(
            "timed out after {:?} connecting to {}",
            config.connect_timeout * 2,
            config.connect
        ),
    };
    let Some(tls) = config.tls.clone() else {
        return Err(why);
    };
    let connect = config.connect.clone();
    let timeout = config.connect_timeout;
    match tokio::task::spawn_blocking(move || tls.diagnose(&connect, timeout)).await {
        Ok(Some(found)) => Err(format!("{why}: {found}")),
        _ => Err(why),
    }
}

async fn supervise(
    config: ZkConfig,
    zk: Zk,
    connected: watch::Sender<bool>,
    triggers: mpsc::UnboundedSender<Trigger>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let client = match connect(&config).await {
            Ok(client) => client,
            Err(why) => {
                tracing::warn!(error = %why, retry_in = ?backoff, "ZooKeeper unavailable");
                zk.set(None, &why);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        let root = config.layout.namespaces();
        let directory = config.guard.acl(None, Node::Directory);
        if let Err(e) = client.mkdir(&root, &persistent(&directory)).await {
            tracing::warn!(path = %root, error = %e, "cannot create the znode root");
        }
        let securing = zk.securing.load(std::sync::atomic::Ordering::Acquire);
        if securing && let Err(e) = secure(&client, &config.layout, &config.guard).await {
            tracing::warn!(error = %e, retry_in = ?backoff, "cannot set the ACLs of the existing znodes; reconnecting");
            zk.set(None, &format!("securing the znodes: {e}"));
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
            continue;
        }
        let mut watcher = match client
            .watch(config.layout.root(), AddWatchMode::PersistentRecursive)
            .await
        {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the znode root; reconnecting");
                zk.set(None, &format!("watching {}: {e}", config.layout.root()));
                tokio::time::sleep(backoff).await;
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        if let Ok(mut a) = zk.authorized.lock() {
            a.clear();
        }
        tracing::info!(connect = %config.connect, session = ?client.session_id(), "ZooKeeper session established");
        if let Err(e) = rescan(&client, &config.layout, &zk).await {
            tracing::warn!(error = %e, "cannot read the instance records; reconnecting");
            zk.set(None, &format!("reading the instance records: {e}"));
            tokio::time::sleep(backoff).await;
            continue;
        }
        zk.set(Some(client.clone()), "");
        let _ = connected.send(true);
        let _ = triggers.send(Trigger::ResyncAll);
        // Reads of changed instance records, answered (and applied) in the order sent.
        let mut reads: FuturesOrdered<BoxFuture<'_, Answer>> = FuturesOrdered::new();
        // Changed records not asked for yet, and the multi-reads in flight.
        let mut changed = Changed::default();
        loop {
            let event = tokio::select! {
                event = watcher.changed() => event,
                Some((read, updates)) = reads.next(), if !reads.is_empty() => {
                    if read {
                        tracing::debug!(records = updates.len(), "instance records read");
                        if changed.answered() {
                            changed.flush(&client, &mut reads);
                        }
                    }
                    let mut told = HashSet::new();
                    for (update, path) in updates {
                        let Some(update) = update else { continue };
                        let key = update.key().clone();
                        zk.update_instance(update);
                        // One trigger per resource and batch: the reconcile reads the copy.
                        if told.insert(key) {
                            let _ = triggers.send(Trigger::Path(path));
                        }
                    }
                    continue;
                }
            };
            match event.event_type {
                EventType::Session => match event.session_state {
                    SessionState::Disconnected => {
                        tracing::warn!("ZooKeeper disconnected; routing on, reconnecting");
                        if let Ok(mut e) = zk.last_error.write() {
                            *e = "disconnected from ZooKeeper".into();
                        }
                        let _ = connected.send(false);
                    }
                    SessionState::SyncConnected | SessionState::ConnectedReadOnly => {
                        tracing::info!("ZooKeeper reconnected; resyncing");
                        // Events may have been lost while disconnected: read everything.
                        reads = FuturesOrdered::new();
                        changed = Changed::default();
                        if let Err(e) = rescan(&client, &config.layout, &zk).await {
                            tracing::warn!(error = %e, "cannot re-read the instance records; starting a new session");
                            break;
                        }
                        let _ = connected.send(true);
                        let _ = triggers.send(Trigger::ResyncAll);
                    }
                    state if state.is_terminated() => {
                        tracing::warn!(?state, "ZooKeeper session ended; starting a new one");
                        break;
                    }
                    _ => {}
                },
                EventType::NodeCreated | EventType::NodeDeleted | EventType::NodeDataChanged => {
                    let Some(parsed) = config.layout.parse(&event.path) else {
                        continue;
                    };
                    let key = (parsed.namespace.to_owned(), parsed.name.to_owned());
                    let deleted = event.event_type == EventType::NodeDeleted;
                    match parsed.kind {
                        PathKind::Instance(pod) if deleted => {
                            // After every read asked for before it.
                            changed.flush(&client, &mut reads);
                            let update = InstanceUpdate::Remove {
                                key,
                                pod: pod.to_owned(),
                            };
                            reads.push_back(
                                futures::future::ready((false, vec![(Some(update), event.path)]))
                                    .boxed(),
                            );
                        }
                        PathKind::Instance(pod) => {
                            if let Err(e) = zk.authorize(&client, parsed.namespace).await {
                                tracing::warn!(error = %e, "cannot add a namespace's identity to the session");
                            }
                            changed.push(key, pod.to_owned(), event.path);
                            if changed.idle() {
                                changed.flush(&client, &mut reads);
                            }
                        }
                        PathKind::Resource | PathKind::Instances if deleted => {
                            changed.flush(&client, &mut reads);
                            let update = InstanceUpdate::RemoveAll { key };
                            reads.push_back(
                                futures::future::ready((false, vec![(Some(update), event.path)]))
                                    .boxed(),
                            );
                        }
                        // The operator creates these directories with the config; that
                        // znode's own event is the one that matters.
                        PathKind::Resource | PathKind::Instances => {}
                        PathKind::Config => {
                            let _ = triggers.send(Trigger::Path(event.path));
                        }
                    }
                }
                EventType::NodeChildrenChanged => {}
            }
        }
        zk.set(None, "ZooKeeper session expired");
        let _ = connected.send(false);
    }
}

/// Puts the guard's ACLs on every znode under the root: for a tree created before ACLs
/// were turned on, or under another operator identity (docs/install.md, "ZooKeeper
/// ACLs"). Skipped when the `namespaces` znode already carries this guard's ACL — it is set
/// last, so an interrupted pass is done again at the next connect — and when ACLs are off.
///
/// Notable behaviors: a znode whose ACL this identity may not change is logged and
/// skipped (and the pass done again at the next connect); a znode that goes away meanwhile
/// is not an error.
pub async fn secure(client: &Client, layout: &Layout, guard: &Guard) -> Result<(), ZkError> {
    if guard.operator().is_none() {
        return Ok(());
    }
    let marker = layout.namespaces();
    let directory = guard.acl(None, Node::Directory);
    let (acl, _) = client
        .get_acl(&marker)
        .await
        .map_err(|e| ZkError::op("getACL", &marker, e))?;
    if acl == directory {
        return Ok(());
    }
    tracing::info!(root = %layout.root(), "setting the ACLs of the znodes under the root");
    let mut nodes: Vec<(String, Vec<Acl>)> = Vec::new();
    if layout.root() != "/" {
        nodes.push((layout.root().to_owned(), directory.clone()));
    }
    let children = |path: String| async move {
        match client.get_children(&path).await {
            Ok((children, _)) => Ok(children),
            Err(zookeeper_client::Error::NoNode) => Ok(Vec::new()),
            Err(e) => Err(ZkError::op("getChildren", &path, e)),
        }
    };
    let namespaces = children(marker.clone()).await?;
    // Instance records are the sidecars' (ACL'd for the namespace's identity): changing
    // theirs needs that identity, the one derived from the identity being rotated away
    // from included.
    for ns in &namespaces {
        for operator in guard.identities() {
            let identity = operator.for_namespace(ns);
            client
                .auth(zkauth::DIGEST, &identity.auth_bytes())
                .await
                .map_err(|e| ZkError::op("addAuth", identity.user(), e))?;
        }
    }
    for ns in namespaces {
        let ns_dir = format!("{marker}/{ns}");
        nodes.push((ns_dir.clone(), guard.acl(Some(&ns), Node::Directory)));
        for name in children(ns_dir.clone()).await? {
            let (Ok(resource), Ok(config), Ok(instances)) = (
                layout.resource(&ns, &name),
                layout.config(&ns, &name),
                layout.instances(&ns, &name),
            ) else {
                continue;
            };
            nodes.push((resource, guard.acl(Some(&ns), Node::Directory)));
            nodes.push((config, guard.acl(Some(&ns), Node::Config)));
            for pod in children(instances.clone()).await? {
                nodes.push((
                    format!("{instances}/{pod}"),
                    guard.acl(Some(&ns), Node::Instance),
                ));
            }
            nodes.push((instances, guard.acl(Some(&ns), Node::Instances)));
        }
    }
    let mut complete = true;
    let results = futures::stream::iter(nodes)
        .map(|(path, acl)| async move {
            let result = client.set_acl(&path, &acl, None).await;
            (path, result)
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
    for (path, result) in results {
        match result {
            Ok(_) | Err(zookeeper_client::Error::NoNode) => {}
            Err(e) => {
                tracing::warn!(%path, error = %e, "cannot set the ACL of a znode");
                complete = false;
            }
        }
    }
    if complete {
        client
            .set_acl(&marker, &directory, None)
            .await
            .map_err(|e| ZkError::op("setACL", &marker, e))?;
        tracing::info!(root = %layout.root(), "every znode under the root carries its ACL");
    }
    Ok(())
}

/// What [`publish`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    /// The znode already held these bytes: nothing written.
    Unchanged {
        version: i32,
    },
    Created {
        version: i32,
    },
    /// Overwritten at `version`; `drift` when what it held was not ours.
    Updated {
        version: i32,
        drift: bool,
    },
    /// The znode holds a newer generation of the same resource, which the caller knows
    /// exists: this (stale) copy was not written.
    Superseded {
        version: i32,
    },
}

impl Published {
    pub fn version(self) -> i32 {
        match self {
            Self::Unchanged { version }
            | Self::Created { version }
            | Self::Superseded { version }
            | Self::Updated { version, .. } => version,
        }
    }
}

/// Writes `bytes` to the config znode: create it, or set it with the version just read —
/// never a blind overwrite. On a conflict, re-read and decide again. `ours` is the hash
/// the operator last published for this resource: a znode holding anything else while we
/// believe `ours` is there is drift.
///
/// Two writers of one resource (the watch's fast path and a reconcile holding an older copy)
/// must not put an older generation back: a znode holding a higher generation of the same
/// resource is left alone when `newest` — the generation of the newest copy of this resource
/// (same uid) the caller knows, read at decision time — vouches for it. Anything else
/// there (a hand edit, another resource's envelope) is overwritten.
#[allow(clippy::too_many_arguments)]
pub async fn publish(
    client: &Client,
    layout: &Layout,
    guard: &Guard,
    namespace: &str,
    name: &str,
    envelope: &Envelope,
    ours: Option<&str>,
    newest: &(dyn Fn() -> Option<i64> + Sync),
) -> Result<Published, ZkError> {
    let path = layout
        .config(namespace, name)
        .map_err(|e| ZkError::Unavailable(e.to_string()))?;
    let bytes = envelope
        .to_bytes()
        .map_err(|e| ZkError::Unavailable(e.to_string()))?;
    let (resource, instances) = layout
        .resource(namespace, name)
        .and_then(|r| Ok((r, layout.instances(namespace, name)?)))
        .map_err(|e| ZkError::Unavailable(e.to_string()))?;
    // Never published as far as the caller knows (a new resource, or a cold start over
    // resources without status): try the whole subtree as one transaction first — one
    // round trip and one log entry instead of a read and four writes.
    let directory = guard.acl(Some(namespace), Node::Directory);
    let instances_acl = guard.acl(Some(namespace), Node::Instances);
    let config_acl = guard.acl(Some(namespace), Node::Config);
    if ours.is_none() {
        let mut multi = client.new_multi_writer();
        for (dir, data, acl) in [
            (&resource, &[][..], &directory),
            (&instances, &[][..], &instances_acl),
            (&path, &bytes[..], &config_acl),
        ] {
            multi
                .add_create(dir, data, &persistent(acl))
                .map_err(|e| ZkError::op("create", dir, e))?;
        }
        match multi.commit().await {
            Ok(_) => return Ok(Published::Created { version: 0 }),
            // Something is there already (or the namespace's directory is not): decide
            // below, znode by znode.
            Err(zookeeper_client::MultiWriteError::OperationFailed { .. }) => {}
            Err(zookeeper_client::MultiWriteError::RequestFailed { source }) => {
                return Err(ZkError::op("multi create", &resource, source));
            }
        }
    }
    const ATTEMPTS: u32 = 5;
    'attempts: for _ in 0..ATTEMPTS {
        match client.get_data(&path).await {
            Ok((data, stat)) => {
                if data == bytes {
                    return Ok(Published::Unchanged {
                        version: stat.version,
                    });
                }
                if let Ok(there) = Envelope::from_slice(&data)
                    && there.uid == envelope.uid
                    && there.generation > envelope.generation
                    && newest().is_some_and(|g| g >= there.generation)
                {
                    return Ok(Published::Superseded {
                        version: stat.version,
                    });
                }
                let drift = ours.is_some_and(|h| h == envelope.hash);
                match client.set_data(&path, &bytes, Some(stat.version)).await {
                    Ok(stat) => {
                        return Ok(Published::Updated {
                            version: stat.version,
                            drift,
                        });
                    }
                    Err(zookeeper_client::Error::BadVersion | zookeeper_client::Error::NoNode) => {
                        continue;
                    }
                    Err(e) => return Err(ZkError::op("setData", &path, e)),
                }
            }
            Err(zookeeper_client::Error::NoNode) => {
                let dirs = [
                    format!("{}/{namespace}", layout.namespaces()),
                    instances.clone(),
                ];
                // Parents before children, all sent at once: ZooKeeper applies a session's
                // requests in order, so this is one round trip, not four.
                let namespace_dir = client.create(&dirs[0], &[], &persistent(&directory));
                let resource_dir = client.create(&resource, &[], &persistent(&directory));
                let instances_dir = client.create(&dirs[1], &[], &persistent(&instances_acl));
                let config = client.create(&path, &bytes, &persistent(&config_acl));
                for (dir, created) in [
                    (&dirs[0], namespace_dir.await),
                    (&resource, resource_dir.await),
                    (&dirs[1], instances_dir.await),
                ] {
                    match created {
                        Ok(_) | Err(zookeeper_client::Error::NodeExists) => {}
                        // The root itself is gone (deleted by hand): make the whole path.
                        Err(zookeeper_client::Error::NoNode) => {
                            client
                                .mkdir(&resource, &persistent(&directory))
                                .await
                                .map_err(|e| ZkError::op("mkdir", &resource, e))?;
                            continue 'attempts;
                        }
                        Err(e) => return Err(ZkError::op("create", dir, e)),
                    }
                }
                match config.await {
                    Ok((stat, _)) => {
                        return Ok(Published::Created {
                            version: stat.version,
                        });
                    }
                    Err(zookeeper_client::Error::NodeExists) => continue,
                    Err(e) => return Err(ZkError::op("create", &path, e)),
                }
            }
            Err(e) => return Err(ZkError::op("getData", &path, e)),
        }
    }
    Err(ZkError::Contended {
        op: "publishing",
        path,
        attempts: ATTEMPTS,
    })
}

/// Deletes a resource's subtree (config and instances). Missing nodes are success.
/// The resources that have a subtree under `namespaces/` — in `namespace` only, or in
/// every namespace — as `(namespace, name)`.
pub async fn published_resources(
    client: &Client,
    layout: &Layout,
    namespace: Option<&str>,
) -> Result<Vec<(String, String)>, ZkError> {
    let parent = layout.namespaces();
    let namespaces = match namespace {
        Some(ns) => vec![ns.to_owned()],
        None => match client.get_children(&parent).await {
            Ok((children, _)) => children,
            Err(zookeeper_client::Error::NoNode) => return Ok(Vec::new()),
            Err(e) => return Err(ZkError::op("getChildren", &parent, e)),
        },
    };
    let mut found = Vec::new();
    for ns in namespaces {
        let dir = format!("{parent}/{ns}");
        match client.get_children(&dir).await {
            Ok((names, _)) => found.extend(names.into_iter().map(|n| (ns.clone(), n))),
            Err(zookeeper_client::Error::NoNode) => {}
            Err(e) => return Err(ZkError::op("getChildren", &dir, e)),
        }
    }
    Ok(found)
}

/// The envelope in a resource's config znode, if there is one and it parses.
pub async fn read_config(client: &Client, path: &str) -> Result<Option<Envelope>, ZkError> {
    match client.get_data(path).await {
        Ok((data, _)) => Ok(Envelope::from_slice(&data).ok()),
        Err(zookeeper_client::Error::NoNode) => Ok(None),
        Err(e) => Err(ZkError::op("getData", path, e)),
    }
}

pub async fn delete_subtree(client: &Client, path: &str) -> Result<(), ZkError> {
    // Iterative post-order: children first. New children (a sidecar re-creating its
    // instance) make the delete fail with NotEmpty; retry a few times.
    for _ in 0..5 {
        let mut stack = vec![(path.to_owned(), false)];
        let mut retry = false;
        while let Some((node, expanded)) = stack.pop() {
            if expanded {
                match client.delete(&node, None).await {
                    Ok(()) | Err(zookeeper_client::Error::NoNode) => {}
                    Err(zookeeper_client::Error::NotEmpty) => {
                        retry = true;
                        break;
                    }
                    Err(e) => return Err(ZkError::op("delete", &node, e)),
                }
                continue;
            }
            match client.get_children(&node).await {
                Ok((children, _)) => {
                    stack.push((node.clone(), true));
                    for child in children {
                        stack.push((format!("{node}/{child}"), false));
                    }
                }
                Err(zookeeper_client::Error::NoNode) => {}
                Err(e) => return Err(ZkError::op("getChildren", &node, e)),
            }
        }
        if !retry {
            return Ok(());
        }
    }
    Err(ZkError::Contended {
        op: "deleting",
        path: path.to_owned(),
        attempts: 5,
    })
}

/// A change to the copy of the instance records.
enum InstanceUpdate {
    Set {
        key: (String, String),
        pod: String,
        zxid: i64,
        /// Boxed: a parsed record is several times the size of the other variants.
        record: Box<InstanceRecord>,
    },
    Remove {
        key: (String, String),
        pod: String,
    },
    RemoveAll {
        key: (String, String),
    },
}

impl InstanceUpdate {
    fn key(&self) -> &(String, String) {
        match self {
            Self::Set { key, .. } | Self::Remove { key, .. } | Self::RemoveAll { key } => key,
        }
    }
}

/// Updates to the copy, in order, and whether they are a multi-read's answer.
type Answer = (bool, Vec<(Option<InstanceUpdate>, String)>);

/// Instance records in one multi-read at most: about 300 bytes each in the answer.
const READ_BATCH: usize = 128;

/// Instance records whose change the watch reported and that are not read yet.
///
/// A rule change across 1,000 pods is 1,000 acks within a second. Each is read, but not
/// each on its own: the first change is asked for at once, and the ones reported while
/// that read is in flight wait for it and go together as one multi-read (ZooKeeper 3.6+),
/// so the operator and ZooKeeper handle a few dozen requests instead of 1,000, and no
/// record waits longer than one read's round trip for its turn.
#[derive(Default)]
struct Changed {
    waiting: Vec<((String, String), String, String)>,
    /// Multi-reads sent and not answered.
    in_flight: usize,
}

impl Changed {
    fn push(&mut self, key: (String, String), pod: String, path: String) {
        // A record reported twice before its read is read once.
        if !self.waiting.iter().any(|(_, _, p)| *p == path) {
            self.waiting.push((key, pod, path));
        }
    }

    /// Nothing in flight: a change is asked for at once.
    fn idle(&self) -> bool {
        self.in_flight == 0
    }

    /// A multi-read was answered; whether the waiting ones should go now.
    fn answered(&mut self) -> bool {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.in_flight == 0 && !self.waiting.is_empty()
    }

    /// Sends every waiting record's read, [`READ_BATCH`] to a request, in order; the
    /// answers come back through `reads` in the order sent.
    fn flush<'c>(&mut self, client: &'c Client, reads: &mut FuturesOrdered<BoxFuture<'c, Answer>>) {
        let waiting = std::mem::take(&mut self.waiting);
        for batch in waiting.chunks(READ_BATCH) {
            let mut multi = client.new_multi_reader();
            let batch: Vec<_> = batch
                .iter()
                .filter(|(_, _, path)| multi.add_get_data(path).is_ok())
                .cloned()
                .collect();
            // Sent now, so it is answered after every earlier request.
            let answer = multi.commit();
            self.in_flight += 1;
            reads.push_back(
                async move {
                    let results = answer.await;
                    let updates = batch
                        .into_iter()
                        .enumerate()
                        .map(|(i, (key, pod, path))| {
                            let update = match results.as_ref().map(|r| r.get(i)) {
                                Ok(Some(MultiReadResult::Data { data, stat })) => {
                                    Some(InstanceUpdate::Set {
                                        key,
                                        pod,
                                        zxid: stat.mzxid,
                                        record: Box::new(parse_instance(data)),
                                    })
                                }
                                Ok(Some(MultiReadResult::Error {
                                    err: zookeeper_client::Error::NoNode,
                                })) => Some(InstanceUpdate::Remove { key, pod }),
                                // Connection trouble: the rescan after the reconnect
                                // reads it again.
                                _ => None,
                            };
                            (update, path)
                        })
                        .collect();
                    (true, updates)
                }
                .boxed(),
            );
        }
    }
}

fn parse_instance(data: &[u8]) -> InstanceRecord {
    Instance::from_slice(data).map_err(|e| e.to_string())
}

/// Rebuilds the copy of every instance record under the root. The watch is already in
/// place, so a change during the scan also arrives as an event and is read again after.
/// Every level's reads are sent at once (ZooKeeper answers them in order on the session).
async fn rescan(client: &Client, layout: &Layout, zk: &Zk) -> Result<(), ZkError> {
    let children = |path: String| {
        let listing = client.get_children(&path);
        async move {
            match listing.await {
                Ok((children, _)) => Ok((path, children)),
                Err(zookeeper_client::Error::NoNode) => Ok((path, Vec::new())),
                Err(e) => Err(ZkError::op("getChildren", &path, e)),
            }
        }
    };
    let (_, namespaces) = children(layout.namespaces()).await?;
    futures::future::try_join_all(namespaces.iter().map(|ns| zk.authorize(client, ns))).await?;
    let listings = futures::future::try_join_all(
        namespaces
            .iter()
            .map(|ns| children(format!("{}/{ns}", layout.namespaces()))),
    )
    .await?;
    let mut resources = Vec::new();
    for (ns, (_, names)) in namespaces.iter().zip(listings) {
        for name in names {
            resources.push((ns.clone(), name));
        }
    }
    let listings = futures::future::try_join_all(
        resources
            .iter()
            .filter_map(|(ns, name)| layout.instances(ns, name).ok().map(children)),
    )
    .await?;
    let mut reads = Vec::new();
    for (path, pods) in listings {
        let Some(parsed) = layout.parse(&path) else {
            continue;
        };
        let key = (parsed.namespace.to_owned(), parsed.name.to_owned());
        for pod in pods {
            let child = format!("{path}/{pod}");
            let read = client.get_data(&child);
            let key = key.clone();
            reads.push(async move {
                match read.await {
                    Ok((data, stat)) => Ok(Some((key, pod, stat.mzxid, parse_instance(&data)))),
                    Err(zookeeper_client::Error::NoNode) => Ok(None),
                    Err(e) => Err(ZkError::op("getData", &child, e)),
                }
            });
        }
    }
    let mut fresh = InstanceCache::new();
    for (key, pod, zxid, record) in futures::future::try_join_all(reads)
        .await?
        .into_iter()
        .flatten()
    {
        fresh
            .entry(key)
            .or_default()
            .insert(pod, Cached { zxid, record });
    }
    zk.replace_instances(fresh);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> (String, String) {
        ("shop".into(), "checkout".into())
    }

    #[test]
    fn given_changes_while_a_read_is_in_flight_then_they_wait_for_it_and_go_once_each() {
        let mut changed = Changed::default();
        assert!(
            changed.idle(),
            "nothing sent yet: the first change goes at once"
        );
        changed.push(key(), "a".into(), "/i/a".into());
        // What `flush` does to the bookkeeping, without a session.
        changed.waiting.clear();
        changed.in_flight = 1;
        assert!(!changed.idle(), "a read is in flight: later changes wait");
        for (pod, path) in [("b", "/i/b"), ("c", "/i/c"), ("b", "/i/b")] {
            changed.push(key(), pod.into(), path.into());
        }
        let waiting: Vec<&str> = changed.waiting.iter().map(|(_, _, p)| p.as_str()).collect();
        assert_eq!(
            waiting,
            ["/i/b", "/i/c"],
            "a record reported twice is read once"
        );
        assert!(
            changed.answered(),
            "the read in flight was answered: the waiting ones go now"
        );
        changed.waiting.clear();
        assert!(
            !changed.answered(),
            "nothing waits and nothing is in flight"
        );
        assert!(changed.idle());
    }

    #[test]
    fn given_a_newer_record_when_an_older_read_lands_then_the_newer_stays() {
        let record = |hash: &str| -> InstanceRecord {
            parse_instance(
                format!(
                    r#"{{"pod":"a","hash":"{hash}","state":"ok","since":"2026-12-07T00:00:00Z"}}"#
                )
                .as_bytes(),
            )
        };
        let mut pods = BTreeMap::new();
        keep_newer(&mut pods, "a".into(), 20, record("sha256:new"));
        keep_newer(&mut pods, "a".into(), 10, record("sha256:old"));
        let kept = pods["a"].record.as_ref().map(|i| i.hash.clone());
        assert_eq!(kept.as_deref(), Ok("sha256:new"));
    }
}
