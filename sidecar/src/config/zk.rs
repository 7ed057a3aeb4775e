//! The config from ZooKeeper, and this sidecar's answer in `instances/<pod>`.
//!
//! A session is a state machine (STYLE.md habit 8):
//! - connected: read the config znode with a watch, apply it, write the instance znode
//!   (ephemeral) with the hash in force and `ok`/`error`, then wait for the watch, for a
//!   session state change, or for the instance znode to be removed;
//! - `Disconnected`: keep routing with the rules in force; on `SyncConnected` re-read and
//!   re-watch everything, as watch events can be lost across a reconnect;
//! - `Expired` (or closed): build a new client — a new session — and start over, which
//!   re-creates the ephemeral instance znode.
//!
//! Connecting is bounded ([`ZkOptions::connect_timeout`]) and retried with backoff. When
//! no config is in force and ZooKeeper cannot give one (unreachable, or no config znode),
//! the sidecar routes with the last-known-good config from the state directory.
//!
//! During a staged rollout the config znode's sibling `candidate` holds a changed config
//! for a share of the pods ([`Candidate`]); it is watched beside the config znode, and a
//! pod the candidate selects runs it through the same swap, rejection and last-known-good
//! rules as the config znode's, saying so in its instance record (`candidate`). Every
//! other pod, and every pod once the candidate is withdrawn, runs the config znode's.
//!
//! An instance znode left by an earlier session of the same pod (after a restart, ZooKeeper
//! keeps it until that session times out) is updated in place and watched; when ZooKeeper
//! removes it, this session creates its own.
//!
//! The instance znode's watch is persistent (ZooKeeper 3.6+ `addWatch`), set once a
//! session: a one-time watch had to be set again with every ack, one more request for
//! ZooKeeper per pod and change, and its old one fired for the ack's own write anyway. The
//! events of this sidecar's own writes are ignored, and so are anyone else's `setData`s
//! (the event cannot tell them apart; the next ack overwrites them, its version no longer
//! matching); a removal makes the record again. Events lost across a reconnect
//! (ZOOKEEPER-4698) are covered by checking the record once after it.
//!
//! The ack's path, from the config watch firing to the instance znode saying so, is one
//! read, the swap, and one write: a watch that has not fired is kept rather than dropped
//! (dropping it sends a RemoveWatches request, which would go out ahead of the read and,
//! as the client does not set `TCP_NODELAY`, hold the read back until its answer), and
//! what can wait for the ack — telling the reader threads, the log line, the
//! last-known-good file — does.

use std::{future::Future, path::PathBuf, pin::Pin, time::Duration};

use servicelog_api::{
    wire::{Candidate, Envelope, Health, Instance, InstanceState},
    zkauth::{self, Credentials, RecordAcl},
    zktls::{self, ZkTls},
};
use zookeeper_client::{
    Acl, Acls, AddWatchMode, AuthId, Client, CreateMode, EventType, OneshotWatcher, Permission,
    PersistentWatcher, SessionState, WatchedEvent,
};

use super::{health, last_good::LastGood};
use crate::{
    metrics::Metrics,
    pipeline::shadow,
    topology::{Running, Swapped, Topology},
};

const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
pub struct ZkOptions {
    pub connect: String,
    pub config_path: String,
    /// The config znode's sibling `candidate`, read during a staged rollout.
    pub candidate_path: String,
    pub instance_path: String,
    pub pod: String,
    /// The pod's namespace: with the pod's name, what decides whether it is a canary.
    pub namespace: String,
    pub session_timeout: Duration,
    pub connect_timeout: Duration,
    /// The namespace's ZooKeeper identity (`SERVICELOG_ZK_AUTH_FILE`), read again at every
    /// connect so a rotated or late-mounted Secret is picked up without a restart.
    pub auth_file: Option<PathBuf>,
    /// TLS to ZooKeeper; its files are read again at every connect, like the identity.
    pub tls: Option<ZkTls>,
}

/// Reads the identity to authenticate as; a file not there yet (the Secret is `optional`
/// and may be written after the pod started) is `None`, with a warning.
fn read_auth(path: &std::path::Path) -> Option<Credentials> {
    match std::fs::read_to_string(path) {
        Ok(text) => match Credentials::parse(&text) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "the ZooKeeper identity file is malformed; connecting without it");
                None
            }
        },
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "the namespace's ZooKeeper identity is not mounted (yet); connecting without it");
            None
        }
    }
}

/// The ACL of this sidecar's instance record ([`zkauth::record_acl`]).
fn instance_acl(config_acl: &[Acl]) -> Vec<Acl> {
    match zkauth::record_acl(config_acl.iter().map(|a| (a.scheme(), a.id()))) {
        RecordAcl::Open => vec![Acl::new(Permission::ALL, AuthId::anyone())],
        RecordAcl::Authenticated => vec![Acl::new(Permission::ALL, AuthId::authed())],
    }
}

type Watch = Pin<Box<dyn Future<Output = WatchedEvent> + Send>>;

fn watch_of(w: OneshotWatcher) -> Watch {
    Box::pin(w.changed())
}

/// The event of `watch`, which is then spent (`None`); pending forever while there is no
/// watch.
async fn fired(watch: &mut Option<Watch>) -> WatchedEvent {
    let Some(w) = watch.as_mut() else {
        return std::future::pending().await;
    };
    let event = w.await;
    *watch = None;
    event
}

/// The next event of the persistent `watch`; pending forever while there is none. Never
/// called again after a terminal session event: the watcher panics then.
async fn next_event(watch: &mut Option<PersistentWatcher>) -> WatchedEvent {
    match watch {
        Some(w) => w.changed().await,
        None => std::future::pending().await,
    }
}

/// How a session ended.
enum End {
    /// Expired, closed or auth failed: a new session is needed.
    Terminated(SessionState),
    /// ZooKeeper refused this identity the config: connect again, reading the identity
    /// file again (a Secret written or rotated after the pod started).
    NotAuthorized,
}

/// What ended a wait in a session.
enum Wait {
    /// A watch fired: re-read what it watched.
    Fired,
    /// Connected again after a disconnection: re-read and re-watch everything, as watch
    /// events can be lost across it.
    Reconnected,
    /// Time to look at the identity file again ([`AUTH_CHECK`]).
    AuthCheck,
    Ended(End),
}

/// How often a connected sidecar reads its identity file again. A rotated Secret reaches
/// the file when the kubelet syncs it (within about a minute); its new identity is then
/// added to the live session, so the sidecar keeps its session (and its instance record)
/// through the rotation.
const AUTH_CHECK: Duration = Duration::from_secs(10);

/// How often the sinks' errors are looked at for the instance record.
const SINK_ERRORS_POLL: Duration = Duration::from_secs(1);

pub struct ZkConfig {
    opts: ZkOptions,
    topology: Topology,
    last_good: LastGood,
    metrics: Metrics,
    /// What the instance znode should say; `None` until a config was read.
    desired: Option<Instance>,
    /// What this session last wrote there.
    written: Option<Vec<u8>>,
    /// The data version of the instance znode this session owns, once known: a new answer
    /// is then one conditional `setData`. `None` also after a reconnect, to check the
    /// record once.
    instance_version: Option<i32>,
    /// Applied but not yet saved as last-known-good: saved after the instance znode says
    /// so, to keep the file write off the ack's path.
    to_persist: Option<Envelope>,
    /// Swapped in but the readers not yet told: told after the ack, likewise.
    to_announce: Option<Swapped>,
    /// The config znode data last read, so a re-read after a reconnect does not re-apply
    /// (or re-reject) the same bytes.
    seen: Option<Vec<u8>>,
    /// The config znode's config, or why it cannot be used; `None` until one was read.
    stable: Option<Result<Envelope, String>>,
    /// The candidate znode data last read (`None`: no candidate).
    candidate_seen: Option<Vec<u8>>,
    /// The candidate znode, read, or why it cannot be; `None`: no candidate.
    candidate: Option<Result<Candidate, String>>,
    /// What was read changed since the config in force was chosen.
    dirty: bool,
    fell_back: bool,
    /// This session's ACL for the instance record, once read from the config's.
    instance_acl: Option<Vec<Acl>>,
    /// The identity this session authenticated with (the last one added, after a
    /// rotation).
    auth_in_use: Option<Credentials>,
    /// When to look at the identity file again.
    auth_check_at: tokio::time::Instant,
    /// The version of the sinks' errors the instance record says.
    sink_errors_version: u64,
    /// Counts what the config in force does, for a canary's record.
    health: Option<health::Tracker>,
    /// When a canary's record is next refreshed with its counters.
    health_at: tokio::time::Instant,
}

impl ZkConfig {
    pub fn new(opts: ZkOptions, topology: Topology, last_good: LastGood) -> Self {
        let metrics = topology.metrics().clone();
        Self {
            opts,
            topology,
            last_good,
            metrics,
            desired: None,
            written: None,
            instance_version: None,
            to_persist: None,
            to_announce: None,
            seen: None,
            stable: None,
            candidate_seen: None,
            candidate: None,
            dirty: false,
            fell_back: false,
            instance_acl: None,
            auth_in_use: None,
            auth_check_at: tokio::time::Instant::now(),
            sink_errors_version: 0,
            health: None,
            health_at: tokio::time::Instant::now(),
        }
    }

    /// Runs forever: connect, serve the session, reconnect with backoff.
    pub async fn run(mut self) {
        let mut backoff = BACKOFF_MIN;
        loop {
            let mut connector = Client::connector().with_session_timeout(self.opts.session_timeout);
            self.auth_in_use = self.opts.auth_file.as_deref().and_then(read_auth);
            if let Some(auth) = &self.auth_in_use {
                connector = connector.with_auth(zkauth::DIGEST, &auth.auth_bytes());
            }
            match self.connect(connector).await {
                Ok(client) => {
                    backoff = BACKOFF_MIN;
                    tracing::info!(session = %client.session_id(), connect = %self.opts.connect, tls = self.opts.tls.is_some(), "ZooKeeper session established");
                    self.metrics.zookeeper_connected.set(1);
                    let end = self.session(&client).await;
                    self.metrics.zookeeper_connected.set(0);
                    match end {
                        End::Terminated(state) => {
                            tracing::warn!(%state, "ZooKeeper session ended; starting a new one (routing goes on with the rules in force)");
                        }
                        End::NotAuthorized => {
                            backoff = BACKOFF_MAX;
                            tracing::warn!(config = %self.opts.config_path, auth_file = ?self.opts.auth_file, "ZooKeeper refuses this identity the config znode (NoAuth); connecting again with the identity file as it is then (routing goes on with the rules in force)");
                        }
                    }
                }
                Err(why) => {
                    tracing::warn!(connect = %self.opts.connect, error = %why, retry_in = ?backoff, "cannot reach ZooKeeper");
                }
            }
            self.fall_back();
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// One bounded attempt at a session, over TLS when configured (the files read now, so a
    /// rotated Secret is used without a restart). Over TLS a failure says what the
    /// handshake found ([`ZkTls::diagnose`], off this thread), as the client reports only
    /// a timeout.
    async fn connect(&self, connector: zookeeper_client::Connector) -> Result<Client, String> {
        let tls = match self.opts.tls.as_ref().map(ZkTls::options).transpose() {
            Ok(tls) => tls,
            Err(e) => return Err(e.to_string()),
        };
        let connecting = zktls::connect(connector, &self.opts.connect, tls);
        let why = match tokio::time::timeout(self.opts.connect_timeout, connecting).await {
            Ok(Ok(client)) => return Ok(client),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no session within {:?}", self.opts.connect_timeout),
        };
        let Some(tls) = self.opts.tls.clone() else {
            return Err(why);
        };
        let connect = self.opts.connect.clone();
        let timeout = self.opts.connect_timeout;
        match tokio::task::spawn_blocking(move || tls.diagnose(&connect, timeout)).await {
            Ok(Some(found)) => Err(format!("{why}: {found}")),
            _ => Err(why),
        }
    }

    /// With no config in force, route with the last-known-good one (once).
    fn fall_back(&mut self) {
        if self.fell_back || self.topology.hash().is_some() {
            return;
        }
        self.fell_back = true;
        match self.last_good.load() {
            Ok(Some(config)) => {
                tracing::warn!(hash = %config.hash, "routing with the last-known-good config until ZooKeeper has one");
                let _ = self.topology.apply(&config);
            }
            Ok(None) => tracing::warn!(
                "no config yet and no last-known-good config: nothing is read until a config arrives \
                 (files are then read from their beginning, so nothing is lost)"
            ),
            Err(e) => tracing::warn!(error = %e, "the last-known-good config cannot be used"),
        }
    }

    async fn session(&mut self, client: &Client) -> End {
        self.written = None;
        self.instance_version = None;
        self.instance_acl = None;
        let mut states = client.state_watcher();
        // Armed until they fire (`None`: to be read and watched again).
        let mut config_watch = None;
        let mut candidate_watch = None;
        // Persistent: set once (ZooKeeper sets it again after a reconnect).
        let mut instance_watch = None;
        loop {
            if let Some(end) = terminated(client) {
                return end;
            }
            // The candidate first: at start, a canary then swaps once, to the candidate.
            let read = async {
                if candidate_watch.is_none() {
                    candidate_watch = Some(self.read_candidate(client).await?);
                }
                if config_watch.is_none() {
                    config_watch = Some(self.read_config(client).await?);
                }
                Ok(())
            };
            match read.await {
                Ok(()) => {}
                Err(zookeeper_client::Error::NoAuth) => return End::NotAuthorized,
                Err(e) => {
                    tracing::warn!(error = %e, "reading the config and candidate znodes");
                    if let Some(end) = self.wait_reconnect(client, &mut states).await {
                        return end;
                    }
                    self.instance_version = None;
                    continue;
                }
            }
            if self.dirty && self.stable.is_some() {
                self.dirty = false;
                self.choose();
            }
            match self.publish(client, &mut instance_watch).await {
                Ok(()) => {}
                Err(zookeeper_client::Error::NoAuth) => return End::NotAuthorized,
                Err(e) => tracing::warn!(error = %e, "writing the instance znode"),
            }
            if let Some(swapped) = self.to_announce.take() {
                swapped.announce();
            }
            if let Some(config) = self.to_persist.take() {
                self.last_good.save(&config);
            }
            let waited = self
                .wait(
                    client,
                    &mut states,
                    [&mut config_watch, &mut candidate_watch],
                    &mut instance_watch,
                )
                .await;
            match waited {
                Wait::Fired => {}
                Wait::Reconnected => {
                    config_watch = None;
                    candidate_watch = None;
                    self.instance_version = None;
                }
                Wait::AuthCheck => {
                    if let Some(end) = self.check_auth(client).await {
                        return end;
                    }
                }
                Wait::Ended(end) => return end,
            }
        }
    }

    /// Waits for something to re-read: the config or the candidate changed (that watch is
    /// then spent), the instance znode was removed, or the session reconnected.
    async fn wait(
        &mut self,
        client: &Client,
        states: &mut zookeeper_client::StateWatcher,
        [config_watch, candidate_watch]: [&mut Option<Watch>; 2],
        instance_watch: &mut Option<PersistentWatcher>,
    ) -> Wait {
        // A deadline, not a sleep per turn: the events ignored below (each ack's own write)
        // must not put the next look off.
        let mut sink_errors_at = tokio::time::Instant::now() + SINK_ERRORS_POLL;
        loop {
            tokio::select! {
                event = fired(config_watch) => {
                    if event.event_type == EventType::Session {
                        return Wait::Ended(terminated(client).unwrap_or(End::Terminated(event.session_state)));
                    }
                    tracing::debug!(event = ?event.event_type, "config znode changed");
                    return Wait::Fired;
                }
                event = fired(candidate_watch) => {
                    if event.event_type == EventType::Session {
                        return Wait::Ended(terminated(client).unwrap_or(End::Terminated(event.session_state)));
                    }
                    tracing::debug!(event = ?event.event_type, "candidate znode changed");
                    return Wait::Fired;
                }
                event = next_event(instance_watch) => match event.event_type {
                    EventType::Session if event.session_state.is_terminated() => {
                        return Wait::Ended(End::Terminated(event.session_state));
                    }
                    EventType::NodeDeleted => {
                        tracing::info!(znode = %self.opts.instance_path, "instance znode removed; making it again");
                        self.instance_version = None;
                        self.written = None;
                        return Wait::Fired;
                    }
                    // This sidecar's own writes (see the module's docs), and the session's
                    // states, which `states` reports.
                    _ => {}
                },
                () = tokio::time::sleep_until(self.auth_check_at), if self.opts.auth_file.is_some() => {
                    return Wait::AuthCheck;
                }
                () = tokio::time::sleep_until(self.health_at), if self.is_canary() => {
                    self.health_at = tokio::time::Instant::now() + health::INTERVAL;
                    if self.refresh_health() {
                        return Wait::Fired;
                    }
                }
                () = tokio::time::sleep_until(sink_errors_at) => {
                    sink_errors_at = tokio::time::Instant::now() + SINK_ERRORS_POLL;
                    if self.refresh_sink_errors() {
                        return Wait::Fired;
                    }
                }
                state = states.changed() => match state {
                    SessionState::Disconnected => {
                        self.metrics.zookeeper_connected.set(0);
                        tracing::warn!("ZooKeeper disconnected; routing goes on with the rules in force");
                    }
                    SessionState::SyncConnected | SessionState::ConnectedReadOnly => {
                        self.metrics.zookeeper_connected.set(1);
                        tracing::info!("ZooKeeper reconnected; re-reading the config");
                        return Wait::Reconnected;
                    }
                    other => return Wait::Ended(End::Terminated(other)),
                },
            }
        }
    }

    /// Adds the identity in the identity file to the session when it changed (its Secret
    /// was rotated), and gives this sidecar's instance record to the session's identities
    /// again (the `auth` ACL names them as they are when it is set), so the operator reads
    /// it with the new namespace identity once the old one is retired. `Some` when the
    /// session must end: the identity could not be added.
    async fn check_auth(&mut self, client: &Client) -> Option<End> {
        self.auth_check_at = tokio::time::Instant::now() + AUTH_CHECK;
        let path = self.opts.auth_file.as_deref()?;
        // Quietly: a file missing or malformed now was reported at connect, and the
        // identity in use stays until it is readable again.
        let current = std::fs::read_to_string(path)
            .ok()
            .and_then(|text| Credentials::parse(&text).ok())?;
        if self.auth_in_use.as_ref() == Some(&current) {
            return None;
        }
        if let Err(e) = client.auth(zkauth::DIGEST, &current.auth_bytes()).await {
            tracing::warn!(file = %path.display(), error = %e, "cannot add the rotated ZooKeeper identity to the session; connecting again with it");
            return Some(End::NotAuthorized);
        }
        tracing::info!(file = %path.display(), user = %current.user(), "the namespace's ZooKeeper identity was rotated; added it to the session");
        self.auth_in_use = Some(current);
        // Written by this session (its version is unknown for a moment after a reconnect).
        if self.written.is_some()
            && let Some(acl) = self.instance_acl.clone()
        {
            let record = &self.opts.instance_path;
            match client.set_acl(record, &acl, None).await {
                Ok(_) => {
                    tracing::info!(znode = %record, "instance znode given to the session's identities")
                }
                Err(e) => {
                    tracing::warn!(znode = %record, error = %e, "cannot set the instance znode's ACL for the rotated identity")
                }
            }
        }
        None
    }

    /// After a failed request: wait until connected again (`None`) or the session ends.
    async fn wait_reconnect(
        &mut self,
        client: &Client,
        states: &mut zookeeper_client::StateWatcher,
    ) -> Option<End> {
        loop {
            if let Some(end) = terminated(client) {
                return Some(end);
            }
            if matches!(
                client.state(),
                SessionState::SyncConnected | SessionState::ConnectedReadOnly
            ) {
                // Connected but the request failed: do not spin.
                tokio::time::sleep(BACKOFF_MIN).await;
                return None;
            }
            match states.changed().await {
                SessionState::SyncConnected | SessionState::ConnectedReadOnly => {
                    self.metrics.zookeeper_connected.set(1);
                    return None;
                }
                SessionState::Disconnected => {
                    self.metrics.zookeeper_connected.set(0);
                }
                other => return Some(End::Terminated(other)),
            }
        }
    }

    /// Reads the config znode, returning the watch on it.
    async fn read_config(&mut self, client: &Client) -> Result<Watch, zookeeper_client::Error> {
        let path = self.opts.config_path.clone();
        loop {
            match client.get_and_watch_data(&path).await {
                Ok((data, _stat, watch)) => {
                    self.on_config(data);
                    return Ok(watch_of(watch));
                }
                Err(zookeeper_client::Error::NoNode) => {
                    match client.check_and_watch_stat(&path).await? {
                        (Some(_), _) => continue,
                        (None, watch) => {
                            tracing::warn!(znode = %path, "the config znode does not exist; waiting for it");
                            self.fall_back();
                            return Ok(watch_of(watch));
                        }
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads the candidate znode, returning the watch on it (on its creation when there
    /// is none).
    async fn read_candidate(&mut self, client: &Client) -> Result<Watch, zookeeper_client::Error> {
        let path = self.opts.candidate_path.clone();
        loop {
            match client.get_and_watch_data(&path).await {
                Ok((data, _stat, watch)) => {
                    self.on_candidate(Some(data));
                    return Ok(watch_of(watch));
                }
                Err(zookeeper_client::Error::NoNode) => {
                    match client.check_and_watch_stat(&path).await? {
                        (Some(_), _) => continue,
                        (None, watch) => {
                            self.on_candidate(None);
                            return Ok(watch_of(watch));
                        }
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn on_config(&mut self, data: Vec<u8>) {
        if self.seen.as_ref() == Some(&data) && self.desired.is_some() {
            return;
        }
        self.stable = Some(Envelope::from_slice(&data).map_err(|e| {
            self.metrics.config_result(false);
            tracing::error!(error = %e, "config znode not applied; the rules in force stay");
            format!("config znode {}: {e}", self.opts.config_path)
        }));
        self.seen = Some(data);
        self.dirty = true;
    }

    fn on_candidate(&mut self, data: Option<Vec<u8>>) {
        if self.candidate_seen == data && self.desired.is_some() {
            return;
        }
        self.candidate = data.as_deref().map(|data| {
            Candidate::from_slice(data)
                .map_err(|e| format!("candidate znode {}: {e}", self.opts.candidate_path))
        });
        match &self.candidate {
            Some(Ok(c)) => {
                tracing::info!(candidate = %c.hash, stable = %c.stable_hash, step = c.step, percent = c.percent, preview = c.preview, "staged rollout: candidate read")
            }
            Some(Err(e)) => {
                tracing::error!(error = %e, "staged rollout: the candidate cannot be read; staying on the config znode's config")
            }
            None if self.candidate_seen.is_some() => {
                tracing::info!("staged rollout: candidate withdrawn")
            }
            None => {}
        }
        self.candidate_seen = data;
        self.dirty = true;
    }

    /// Chooses what to run — the candidate on a pod it selects, else the config znode's
    /// config — swaps it in, and says so in the instance record to be written.
    fn choose(&mut self) {
        let Some(stable) = &self.stable else {
            return;
        };
        let (target, canary, candidate_error) = match (stable, &self.candidate) {
            (Ok(stable), Some(Ok(c)))
                if c.selects(&stable.hash, &self.opts.namespace, &self.opts.pod) =>
            {
                let config = c.config().map_err(|e| {
                    self.metrics.config_result(false);
                    tracing::error!(candidate = %c.hash, error = %e, "candidate not applied; the rules in force stay");
                    format!("candidate znode {}: {e}", self.opts.candidate_path)
                });
                (config, Some(c.hash.clone()), None)
            }
            (stable, Some(Err(e))) => (stable.clone(), None, Some(e.clone())),
            (stable, _) => (stable.clone(), None, None),
        };
        let result = match target {
            Ok(config) => match self.topology.swap(&config) {
                Ok(swapped) => {
                    if canary.is_some() && swapped.is_some() {
                        tracing::info!(hash = %config.hash, "staged rollout: this pod is a canary and runs the candidate");
                    }
                    let hash = config.hash.clone();
                    self.to_announce = swapped;
                    self.to_persist = Some(config);
                    candidate_error.map_or(Ok(hash.clone()), |e| Err((hash, e)))
                }
                Err(e) => Err((self.topology.hash().unwrap_or_default(), e.to_string())),
            },
            Err(e) => Err((self.topology.hash().unwrap_or_default(), e)),
        };
        let (hash, state, error) = match result {
            Ok(hash) => (hash, InstanceState::Ok, None),
            Err((hash, e)) => (hash, InstanceState::Error, Some(e)),
        };
        let running = self.topology.running();
        if let Some(running) = running.as_deref()
            && self
                .health
                .as_ref()
                .is_none_or(|t| t.hash() != running.hash)
        {
            self.health = Some(health::Tracker::start(
                &self.metrics,
                running,
                self.health.as_ref(),
            ));
        }
        if let Some(running) = running.as_deref() {
            self.sync_shadow(running);
        }
        let unchanged = self.desired.as_ref().is_some_and(|d| {
            d.hash == hash && d.state == state && d.error == error && d.candidate == canary
        });
        if !unchanged {
            let health = running
                .as_deref()
                .and_then(|running| self.health_of(running, &hash, canary.is_some()));
            if health.is_some() {
                self.health_at = tokio::time::Instant::now() + health::INTERVAL;
            }
            let (version, sink_errors) = self.topology.sink_errors().snapshot();
            self.sink_errors_version = version;
            self.desired = Some(Instance {
                pod: self.opts.pod.clone(),
                hash,
                state,
                error,
                since: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
                sink_errors,
                candidate: canary,
                health,
            });
        } else {
            // A preview started or ended: the same answer, with or without its counts.
            self.refresh_health();
        }
    }

    /// Whether this pod runs a candidate or a preview's shadow (its record then carries its
    /// health).
    fn is_canary(&self) -> bool {
        self.desired
            .as_ref()
            .is_some_and(|d| d.candidate.is_some() && d.state == InstanceState::Ok)
            || self
                .topology
                .running()
                .is_some_and(|r| r.pipeline.shadow.load().is_some())
    }

    /// The health a record routing with `hash` carries: on a canary, or on any pod while a
    /// preview runs in shadow (with its per-rule counts); else none.
    fn health_of(&self, running: &Running, hash: &str, canary: bool) -> Option<Health> {
        self.health
            .as_ref()?
            .report(&self.metrics, running, hash, canary)
    }

    /// Puts a canary's counters in its instance record if they changed; true if they did.
    fn refresh_health(&mut self) -> bool {
        let Some(running) = self.topology.running() else {
            return false;
        };
        let Some(record) = self.desired.as_ref() else {
            return false;
        };
        let now = self.health_of(&running, &record.hash, record.candidate.is_some());
        let Some(record) = self.desired.as_mut() else {
            return false;
        };
        if record.health == now {
            return false;
        }
        record.health = now;
        true
    }

    /// Runs a preview candidate in shadow beside the config in force (the config znode's)
    /// while there is one, and stops it otherwise (see [`shadow::sync`]).
    fn sync_shadow(&self, running: &Running) {
        let stable = match &self.stable {
            Some(Ok(stable)) => Some(stable.hash.as_str()),
            _ => None,
        };
        let candidate = self.candidate.as_ref().and_then(|c| c.as_ref().ok());
        shadow::sync(
            &running.pipeline,
            &running.hash,
            stable.unwrap_or_default(),
            candidate.filter(|_| stable.is_some()),
        );
    }

    /// Puts the sinks' errors in the instance record if they changed; true if it did.
    fn refresh_sink_errors(&mut self) -> bool {
        let (version, errors) = self.topology.sink_errors().snapshot();
        if version == self.sink_errors_version {
            return false;
        }
        self.sink_errors_version = version;
        match self.desired.as_mut() {
            Some(record) if record.sink_errors != errors => {
                record.sink_errors = errors;
                true
            }
            _ => false,
        }
    }

    /// Makes the instance znode say `desired`, with `watch` set on it.
    async fn publish(
        &mut self,
        client: &Client,
        watch: &mut Option<PersistentWatcher>,
    ) -> Result<(), zookeeper_client::Error> {
        let Some(record) = &self.desired else {
            return Ok(());
        };
        let data = match record.to_bytes() {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "encoding the instance record");
                return Ok(());
            }
        };
        if self.written.as_ref() == Some(&data) && self.instance_version.is_some() {
            return Ok(());
        }
        let path = self.opts.instance_path.clone();
        if self.written.as_ref() != Some(&data)
            && let Some(version) = self.instance_version
        {
            // Our own znode, watched: one conditional write.
            match client.set_data(&path, &data, Some(version)).await {
                Ok(stat) => {
                    self.instance_version = Some(stat.version);
                    self.written = Some(data.clone());
                    // Debug: with every ack, after the "config applied" line of the same
                    // change (and the error's own line when it was rejected).
                    tracing::debug!(znode = %path, state = ?record.state, hash = %record.hash, "instance znode updated");
                    return Ok(());
                }
                // Changed or removed behind our back: find out below.
                Err(zookeeper_client::Error::BadVersion | zookeeper_client::Error::NoNode) => {
                    self.instance_version = None;
                }
                Err(e) => return Err(e),
            }
        }
        if self.instance_acl.is_none() {
            let (acl, _) = client.get_acl(&self.opts.config_path).await?;
            self.instance_acl = Some(instance_acl(&acl));
        }
        let acl = self.instance_acl.clone().unwrap_or_default();
        let ephemeral = CreateMode::Ephemeral.with_acls(Acls::new(&acl));
        if watch.is_none() {
            // Before the check below, so a removal after it is reported.
            let added = client.watch(&path, AddWatchMode::Persistent).await;
            if let Err(zookeeper_client::Error::Unimplemented) = &added {
                tracing::error!(znode = %path, "ZooKeeper refused a persistent watch (addWatch): servicelog needs ZooKeeper 3.6 or later; no ack can be written");
            }
            *watch = Some(added?);
        }
        for _ in 0..4 {
            let Some(stat) = client.check_stat(&path).await? else {
                match client.create(&path, &data, &ephemeral).await {
                    Ok((stat, _)) => {
                        self.instance_version = Some(stat.version);
                        tracing::info!(znode = %path, state = ?record.state, hash = %record.hash, "instance znode created");
                        self.written = Some(data.clone());
                    }
                    Err(zookeeper_client::Error::NoNode) => {
                        self.create_instances_dir(client, &path, &acl).await?
                    }
                    Err(zookeeper_client::Error::NodeExists) => {}
                    Err(e) => return Err(e),
                }
                continue;
            };
            let ours = stat.ephemeral_owner == client.session_id().0;
            if ours && self.written.as_ref() == Some(&data) {
                self.instance_version = Some(stat.version);
                return Ok(());
            }
            match client.set_data(&path, &data, None).await {
                Ok(stat) if ours => self.instance_version = Some(stat.version),
                Ok(_) => {}
                Err(zookeeper_client::Error::NoNode) => continue,
                Err(e) => return Err(e),
            }
            if ours {
                tracing::info!(znode = %path, state = ?record.state, hash = %record.hash, "instance znode updated");
                self.written = Some(data.clone());
                continue;
            }
            tracing::info!(znode = %path, "instance znode belongs to an earlier session; updated it and will re-create it when ZooKeeper removes it");
            return Ok(());
        }
        Ok(())
    }

    /// `instances/` as a container znode, which ZooKeeper removes once it is empty, so a
    /// sidecar never keeps a deleted resource's subtree alive.
    async fn create_instances_dir(
        &self,
        client: &Client,
        instance: &str,
        acl: &[Acl],
    ) -> Result<(), zookeeper_client::Error> {
        let Some((dir, _)) = instance.rsplit_once('/') else {
            return Ok(());
        };
        match client
            .create(dir, &[], &CreateMode::Container.with_acls(Acls::new(acl)))
            .await
        {
            Ok(_) | Err(zookeeper_client::Error::NodeExists) => Ok(()),
            Err(zookeeper_client::Error::NoNode) => {
                // The resource's subtree is gone (config deleted): nothing to ack into.
                Err(zookeeper_client::Error::NoNode)
            }
            Err(e) => Err(e),
        }
    }
}

fn terminated(client: &Client) -> Option<End> {
    let state = client.state();
    state.is_terminated().then_some(End::Terminated(state))
}
