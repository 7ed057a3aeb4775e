//! The agent's ZooKeeper side: one session, one config watch (and one watch of its
//! sibling `candidate`, for staged rollouts) per ServiceLog that has pods on the node, and
//! the pods' `instances/<pod>` records.
//!
//! A watch is a task that reads its znode with a data watch, sends what it read to the
//! agent, and reads again when the watch fires; a missing znode is waited for with an
//! exists-watch. The records are ephemeral, owned by the agent's session: when the agent
//! dies they go, as a sidecar's go with its pod. A record left by an earlier session of the
//! agent (a restart within the session timeout) is replaced, not rewritten, so it does not
//! vanish when that session expires.
//!
//! Notable behaviour, first increment: a session that expires ends the agent with an
//! error (its DaemonSet restarts it; checkpoints and last-known-good configs in the state
//! dir make that a resume), rather than rebuilding the client in process as the sidecar
//! does.

use std::time::Duration;

use servicelog_api::{
    wire::{Candidate, Envelope, Instance, WireError},
    zkauth::{self, Credentials, RecordAcl},
};
use tokio::sync::mpsc::UnboundedSender;
use zookeeper_client::{Acl, Acls, AuthId, Client, CreateMode, EventType, Permission};

/// The ZooKeeper side failed for good.
#[derive(Debug, thiserror::Error)]
pub enum ZkError {
    #[error("connecting to ZooKeeper at {connect}: {source}")]
    Connect {
        connect: String,
        source: zookeeper_client::Error,
    },
    #[error("timed out after {timeout:?} connecting to ZooKeeper at {connect}")]
    ConnectTimeout { connect: String, timeout: Duration },
    #[error("{path}: {source}")]
    Znode {
        path: String,
        source: zookeeper_client::Error,
    },
    #[error("{path}: {source}")]
    Record { path: String, source: WireError },
}

/// One session to `connect`, within `timeout`.
pub async fn connect(
    connect: &str,
    session_timeout: Duration,
    timeout: Duration,
) -> Result<Client, ZkError> {
    let connecting = Client::connector()
        .with_session_timeout(session_timeout)
        .with_connection_timeout(timeout)
        .connect(connect);
    match tokio::time::timeout(timeout * 2, connecting).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(source)) => Err(ZkError::Connect {
            connect: connect.to_owned(),
            source,
        }),
        Err(_) => Err(ZkError::ConnectTimeout {
            connect: connect.to_owned(),
            timeout: timeout * 2,
        }),
    }
}

/// What a config znode holds now.
#[derive(Clone, Debug)]
pub enum ConfigUpdate {
    Config(Box<Envelope>),
    /// Its data is not a config envelope: the pods keep their rules and say why.
    Unreadable(String),
    /// No config znode (yet, or any more): the pods keep their rules.
    Missing,
    /// The `candidate` znode: a staged rollout's candidate, or why it cannot be read;
    /// `None` when there is none (withdrawn, or no rollout).
    Candidate(Option<Result<Box<Candidate>, String>>),
    /// The session ended: the agent stops.
    SessionEnded(String),
}

/// Watches config znode `path` until the task is aborted, sending each new state with
/// `key` to `tx`.
pub async fn watch_config<K: Clone>(
    client: Client,
    path: String,
    key: K,
    tx: UnboundedSender<(K, ConfigUpdate)>,
) {
    watch(client, path, key, tx, |path, data| match data {
        Some(data) => match Envelope::from_slice(data) {
            Ok(envelope) => ConfigUpdate::Config(Box::new(envelope)),
            Err(e) => ConfigUpdate::Unreadable(format!("{path}: {e}")),
        },
        None => ConfigUpdate::Missing,
    })
    .await;
}

/// Watches candidate znode `path` (a staged rollout's) until the task is aborted, sending
/// each new state with `key` to `tx`.
pub async fn watch_candidate<K: Clone>(
    client: Client,
    path: String,
    key: K,
    tx: UnboundedSender<(K, ConfigUpdate)>,
) {
    watch(client, path, key, tx, |path, data| {
        ConfigUpdate::Candidate(data.map(|data| {
            Candidate::from_slice(data)
                .map(Box::new)
                .map_err(|e| format!("candidate znode {path}: {e}"))
        }))
    })
    .await;
}

/// Watches znode `path`, sending `read(path, its data)` (`None`: no znode) each time it
/// changes.
async fn watch<K: Clone>(
    client: Client,
    path: String,
    key: K,
    tx: UnboundedSender<(K, ConfigUpdate)>,
    read: impl Fn(&str, Option<&[u8]>) -> ConfigUpdate,
) {
    let send = |u: ConfigUpdate| tx.send((key.clone(), u)).is_ok();
    loop {
        let fired = match client.get_and_watch_data(&path).await {
            Ok((data, _, watcher)) => {
                if !send(read(&path, Some(&data))) {
                    return;
                }
                watcher.changed().await
            }
            Err(zookeeper_client::Error::NoNode) => {
                match client.check_and_watch_stat(&path).await {
                    Ok((Some(_), _)) => continue,
                    Ok((None, watcher)) => {
                        if !send(read(&path, None)) {
                            return;
                        }
                        watcher.changed().await
                    }
                    Err(e) => {
                        if ended(&e, &path, &send) {
                            return;
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                }
            }
            Err(e) => {
                if ended(&e, &path, &send) {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if fired.event_type == EventType::Session && fired.session_state.is_terminated() {
            send(ConfigUpdate::SessionEnded(format!(
                "{path}: the ZooKeeper session ended ({:?})",
                fired.session_state
            )));
            return;
        }
    }
}

/// Whether `e` ends the session (told to the agent); other errors are retried.
fn ended(e: &zookeeper_client::Error, path: &str, send: &impl Fn(ConfigUpdate) -> bool) -> bool {
    use zookeeper_client::Error as E;
    if matches!(
        e,
        E::SessionExpired | E::ClientClosed | E::AuthFailed | E::NoHosts
    ) {
        send(ConfigUpdate::SessionEnded(format!("{path}: {e}")));
        return true;
    }
    tracing::warn!(path, error = %e, "reading the znode; retrying");
    false
}

/// Writes `record` at `path` (an `instances/<pod>` znode), ephemeral and owned by this
/// session; `config` is the config znode whose ACL says whether records are open. A
/// closed record is its namespace's `identity`'s alone — not the session's `auth` ACL,
/// which would name every namespace identity the agent holds.
pub async fn write_record(
    client: &Client,
    config: &str,
    path: &str,
    record: &Instance,
    identity: Option<&Credentials>,
) -> Result<(), ZkError> {
    let znode = |source| ZkError::Znode {
        path: path.to_owned(),
        source,
    };
    let data = record.to_bytes().map_err(|source| ZkError::Record {
        path: path.to_owned(),
        source,
    })?;
    let acl = match client.get_acl(config).await {
        Ok((acl, _)) => zkauth::record_acl(acl.iter().map(|a| (a.scheme(), a.id()))),
        Err(zookeeper_client::Error::NoNode) => RecordAcl::Open,
        Err(source) => {
            return Err(ZkError::Znode {
                path: config.to_owned(),
                source,
            });
        }
    };
    let own;
    let acls = match (acl, identity) {
        (RecordAcl::Open, _) => Acls::anyone_all(),
        (RecordAcl::Authenticated, Some(id)) => {
            own = [Acl::new(
                Permission::ALL,
                AuthId::new(zkauth::DIGEST, &id.acl_id()),
            )];
            Acls::new(&own)
        }
        (RecordAcl::Authenticated, None) => Acls::creator_all(),
    };
    let options = CreateMode::Ephemeral.with_acls(acls);
    for _ in 0..3 {
        match client.create(path, &data, &options).await {
            Ok(_) => return Ok(()),
            Err(zookeeper_client::Error::NodeExists) => {}
            Err(e) => return Err(znode(e)),
        }
        match client.check_stat(path).await {
            Ok(Some(stat)) if stat.ephemeral_owner == client.session_id().0 => {
                return match client.set_data(path, &data, Some(stat.version)).await {
                    Ok(_) => Ok(()),
                    Err(zookeeper_client::Error::BadVersion | zookeeper_client::Error::NoNode) => {
                        continue;
                    }
                    Err(e) => Err(znode(e)),
                };
            }
            // An earlier session's (or a stranger's): ours replaces it.
            Ok(Some(stat)) => match client.delete(path, Some(stat.version)).await {
                Ok(())
                | Err(zookeeper_client::Error::NoNode | zookeeper_client::Error::BadVersion) => {}
                Err(e) => return Err(znode(e)),
            },
            Ok(None) => {}
            Err(e) => return Err(znode(e)),
        }
    }
    Err(znode(zookeeper_client::Error::NodeExists))
}

/// Adds `identity` to the session: from now on it reads what that namespace's sidecars
/// read and writes their records.
pub async fn add_identity(client: &Client, identity: &Credentials) -> Result<(), ZkError> {
    client
        .auth(zkauth::DIGEST, &identity.auth_bytes())
        .await
        .map_err(|source| ZkError::Znode {
            path: format!("(addAuth {})", identity.user()),
            source,
        })
}

/// Removes the record at `path`; a missing one is success.
pub async fn delete_record(client: &Client, path: &str) -> Result<(), ZkError> {
    match client.delete(path, None).await {
        Ok(()) | Err(zookeeper_client::Error::NoNode) => Ok(()),
        Err(source) => Err(ZkError::Znode {
            path: path.to_owned(),
            source,
        }),
    }
}
