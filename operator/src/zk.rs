//! The operator's one ZooKeeper session, and the idempotent znode operations reconcile
//! uses.
//!
//! A supervisor task owns the session as a state machine: connect (bounded, with backoff)
//! → persistent recursive watch on the root → serve until `Expired`/`Closed`, then a new
//! session. Every change under the root becomes a [`Trigger`] for the controller (drift
//! repair, instance acks); every (re)connect becomes [`Trigger::ResyncAll`], because watch
//! events can be lost across a reconnect.

use std::{
    sync::{Arc, RwLock},
    time::Duration,
};

use servicelog_api::wire::{Envelope, Layout};
use tokio::sync::{mpsc, watch};
use zookeeper_client::{Acls, AddWatchMode, Client, CreateMode, EventType, SessionState};

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

/// Handle on the supervised session; cheap to clone.
#[derive(Clone)]
pub struct Zk {
    client: Arc<RwLock<Option<Client>>>,
    connected: watch::Receiver<bool>,
    last_error: Arc<RwLock<String>>,
}

/// Session settings.
#[derive(Clone, Debug)]
pub struct ZkConfig {
    pub connect: String,
    pub layout: Layout,
    pub session_timeout: Duration,
    pub connect_timeout: Duration,
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
        };
        tokio::spawn(supervise(config, zk.clone(), connected_tx, tx));
        (zk, rx)
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

async fn supervise(
    config: ZkConfig,
    zk: Zk,
    connected: watch::Sender<bool>,
    triggers: mpsc::UnboundedSender<Trigger>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let connecting = Client::connector()
            .with_session_timeout(config.session_timeout)
            .with_connection_timeout(config.connect_timeout)
            .connect(&config.connect);
        let client = match tokio::time::timeout(config.connect_timeout * 2, connecting).await {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => {
                let why = format!("connecting to {}: {e}", config.connect);
                tracing::warn!(error = %why, retry_in = ?backoff, "ZooKeeper unavailable");
                zk.set(None, &why);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
            Err(_) => {
                let why = format!(
                    "timed out after {:?} connecting to {}",
                    config.connect_timeout * 2,
                    config.connect
                );
                tracing::warn!(error = %why, retry_in = ?backoff, "ZooKeeper unavailable");
                zk.set(None, &why);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        let root = config.layout.namespaces();
        if let Err(e) = client.mkdir(&root, &persistent()).await {
            tracing::warn!(path = %root, error = %e, "cannot create the znode root");
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
        tracing::info!(connect = %config.connect, session = ?client.session_id(), "ZooKeeper session established");
        zk.set(Some(client), "");
        let _ = connected.send(true);
        let _ = triggers.send(Trigger::ResyncAll);
        loop {
            let event = watcher.changed().await;
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
                    let _ = triggers.send(Trigger::Path(event.path));
                }
                EventType::NodeChildrenChanged => {}
            }
        }
        zk.set(None, "ZooKeeper session expired");
        let _ = connected.send(false);
    }
}

fn persistent() -> zookeeper_client::CreateOptions<'static> {
    CreateMode::Persistent.with_acls(Acls::anyone_all())
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
    /// Overwritten at `version`; `previous_hash` is what it held (drift when it was ours).
    Updated {
        version: i32,
        drift: bool,
    },
}

impl Published {
    pub fn version(self) -> i32 {
        match self {
            Self::Unchanged { version }
            | Self::Created { version }
            | Self::Updated { version, .. } => version,
        }
    }
}

/// Writes `bytes` to the config znode: create it, or set it with the version just read —
/// never a blind overwrite. On a conflict, re-read and decide again. `ours` is the hash
/// the operator last published for this resource: a znode holding anything else while we
/// believe `ours` is there is drift.
pub async fn publish(
    client: &Client,
    layout: &Layout,
    namespace: &str,
    name: &str,
    envelope: &Envelope,
    ours: Option<&str>,
) -> Result<Published, ZkError> {
    let path = layout
        .config(namespace, name)
        .map_err(|e| ZkError::Unavailable(e.to_string()))?;
    let bytes = envelope
        .to_bytes()
        .map_err(|e| ZkError::Unavailable(e.to_string()))?;
    const ATTEMPTS: u32 = 5;
    for _ in 0..ATTEMPTS {
        match client.get_data(&path).await {
            Ok((data, stat)) => {
                if data == bytes {
                    return Ok(Published::Unchanged {
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
                let parent = layout
                    .instances(namespace, name)
                    .map_err(|e| ZkError::Unavailable(e.to_string()))?;
                client
                    .mkdir(&parent, &persistent())
                    .await
                    .map_err(|e| ZkError::op("mkdir", &parent, e))?;
                match client.create(&path, &bytes, &persistent()).await {
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

/// The instance records under a resource (pod name → record); unreadable ones are
/// returned as errors so status can say which pod is odd.
pub async fn instances(
    client: &Client,
    layout: &Layout,
    namespace: &str,
    name: &str,
) -> Result<Vec<(String, Result<servicelog_api::wire::Instance, String>)>, ZkError> {
    let path = layout
        .instances(namespace, name)
        .map_err(|e| ZkError::Unavailable(e.to_string()))?;
    let children = match client.get_children(&path).await {
        Ok((children, _)) => children,
        Err(zookeeper_client::Error::NoNode) => return Ok(Vec::new()),
        Err(e) => return Err(ZkError::op("getChildren", &path, e)),
    };
    let reads = children.into_iter().map(|pod| {
        let child = format!("{path}/{pod}");
        async move {
            match client.get_data(&child).await {
                Ok((data, _)) => Ok(Some((
                    pod,
                    servicelog_api::wire::Instance::from_slice(&data).map_err(|e| e.to_string()),
                ))),
                Err(zookeeper_client::Error::NoNode) => Ok(None),
                Err(e) => Err(ZkError::op("getData", &child, e)),
            }
        }
    });
    let results = futures::future::join_all(reads).await;
    let mut out = Vec::new();
    for r in results {
        if let Some(entry) = r? {
            out.push(entry);
        }
    }
    Ok(out)
}
