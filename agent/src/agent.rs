//! The agent's loop: pods of this node come and go (a field-selected pod watch), configs
//! change (one ZooKeeper watch per ServiceLog), and each change is applied to the pods it
//! concerns, each answering in its `instances/<pod>` record.
//!
//! During a staged rollout the ServiceLog's `candidate` znode is watched beside its config:
//! each pod the candidate selects ([`Candidate::selects`], the same deterministic choice
//! a sidecar makes) runs the candidate and says so in its record (`candidate`); the
//! others, and every pod once the candidate is withdrawn, run the config znode's. As in a
//! sidecar, a canary's record carries its `health` (counted by the pod's own pipeline,
//! refreshed every [`health::INTERVAL`]), and during a preview every pod runs the
//! candidate's router in shadow and its record carries the per-rule `preview`.
//!
//! A pod's deletion drains it: its files are read to their end and acknowledged by its
//! sinks (up to the drain timeout), then its reader and sinks stop, its record is removed
//! and its state dir (checkpoints, buffers, last good config) deleted.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    path::PathBuf,
    time::{Duration, Instant},
};

use futures::{StreamExt, future::Future};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::{
    Api,
    runtime::watcher::{self, Event},
};
use servicelog_api::{
    pod::{ZK_AUTH_KEY, ZK_AUTH_SECRET},
    wire::{Candidate, Instance, InstanceState, Layout, WireError},
    zkauth::Credentials,
};
use servicelog_sidecar::{config::health, metrics::Metrics, sources::file::ReadRate};
use tokio::{sync::mpsc, task::JoinHandle};
use zookeeper_client::Client;

use crate::{
    pods::{self, ServedPod},
    run::{Paths, PodRun, RunError},
    zk::{self, ConfigUpdate, ZkError},
};

#[derive(Clone, Debug)]
pub struct AgentOptions {
    /// The node whose pods are served.
    pub node: String,
    pub zk_connect: String,
    pub zk_root: String,
    pub zk_session_timeout: Duration,
    pub zk_connect_timeout: Duration,
    pub paths: Paths,
    /// How long a deleted pod's files may take to be read and delivered.
    pub drain_timeout: Duration,
    /// Upper bound on stopping the pipelines at shutdown.
    pub shutdown_timeout: Duration,
    /// ZooKeeper ACLs are on: add the identity of each namespace with a served pod (its
    /// `servicelog-zk-auth` Secret) to the session.
    pub namespace_identities: bool,
    /// Each pod's read rate (`--pod-rate-limit`): a pod printing faster waits in its
    /// files, the others go on.
    pub pod_rate: Option<ReadRate>,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Zk(#[from] ZkError),
    #[error(transparent)]
    Path(#[from] WireError),
    #[error("the ZooKeeper session ended: {0}")]
    SessionEnded(String),
    #[error("the pod watch ended")]
    WatchEnded,
}

/// A ServiceLog with pods on this node.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceLogKey {
    pub namespace: String,
    pub name: String,
}

struct Watched {
    /// The config znode's watch and the candidate znode's.
    tasks: [JoinHandle<()>; 2],
    latest: Option<ConfigUpdate>,
    /// The staged rollout's candidate, or why it cannot be read.
    candidate: Option<Result<Box<Candidate>, String>>,
    /// Its pods, by uid.
    pods: BTreeSet<String>,
}

struct Agent {
    opts: AgentOptions,
    layout: Layout,
    client: Client,
    kube: kube::Client,
    /// The namespace identities added to the session.
    identities: HashMap<String, Credentials>,
    metrics: Metrics,
    pods: HashMap<String, PodRun>,
    watched: HashMap<ServiceLogKey, Watched>,
    configs: mpsc::UnboundedSender<(ServiceLogKey, ConfigUpdate)>,
    /// Pods listed since the watch (re)started, to drop those that went meanwhile.
    listing: Option<HashSet<String>>,
    /// The first listing is done: state dirs of pods no longer here have been removed.
    swept: bool,
    draining: Vec<JoinHandle<()>>,
}

/// Runs the agent until `shutdown` completes or something fails for good.
pub async fn run(
    opts: AgentOptions,
    kube: kube::Client,
    metrics: Metrics,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    let layout = Layout::new(&opts.zk_root)?;
    let client = zk::connect(
        &opts.zk_connect,
        opts.zk_session_timeout,
        opts.zk_connect_timeout,
    )
    .await?;
    let (configs, mut updates) = mpsc::unbounded_channel();
    let pods_api: Api<Pod> = Api::all(kube.clone());
    let config = watcher::Config::default().fields(&format!("spec.nodeName={}", opts.node));
    let mut events = watcher::watcher(pods_api, config).boxed();
    let mut agent = Agent {
        opts,
        layout,
        client,
        kube,
        identities: HashMap::new(),
        metrics,
        pods: HashMap::new(),
        watched: HashMap::new(),
        configs,
        listing: None,
        swept: false,
        draining: Vec::new(),
    };
    tracing::info!(node = %agent.opts.node, "watching this node's pods");
    tokio::pin!(shutdown);
    let mut health_tick = tokio::time::interval(health::INTERVAL);
    health_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let result = loop {
        tokio::select! {
            () = &mut shutdown => break Ok(()),
            _ = health_tick.tick() => agent.refresh_health().await,
            event = events.next() => match event {
                Some(Ok(event)) => agent.pod_event(event).await,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "the pod watch failed; it retries");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                None => break Err(AgentError::WatchEnded),
            },
            Some((key, update)) = updates.recv() => {
                if let ConfigUpdate::SessionEnded(why) = update {
                    break Err(AgentError::SessionEnded(why));
                }
                agent.config_update(key, update).await;
            }
        }
    };
    agent.shutdown().await;
    result
}

impl Agent {
    async fn pod_event(&mut self, event: Event<Pod>) {
        match event {
            Event::Init => self.listing = Some(HashSet::new()),
            Event::InitApply(pod) | Event::Apply(pod) => {
                let uid = pod.metadata.uid.clone().unwrap_or_default();
                if let Some(listing) = &mut self.listing {
                    listing.insert(uid.clone());
                }
                match pods::served(&pod) {
                    Some(served) => self.serve(served).await,
                    None => self.forget(&uid),
                }
            }
            Event::Delete(pod) => {
                if let Some(uid) = &pod.metadata.uid {
                    self.forget(uid);
                }
            }
            Event::InitDone => {
                let Some(listed) = self.listing.take() else {
                    return;
                };
                let gone: Vec<String> = self
                    .pods
                    .keys()
                    .filter(|uid| !listed.contains(*uid))
                    .cloned()
                    .collect();
                for uid in gone {
                    self.forget(&uid);
                }
                if !self.swept {
                    self.swept = true;
                    self.sweep_state();
                }
            }
        }
    }

    /// Starts serving `pod` if it is new, and applies its ServiceLog's config when known.
    /// A served pod whose annotation now names another ServiceLog moves to it: its reader,
    /// checkpoints and rules in force stay until that ServiceLog's config applies, and the
    /// old ServiceLog's record of it is removed.
    async fn serve(&mut self, pod: ServedPod) {
        let key = ServiceLogKey {
            namespace: pod.namespace.clone(),
            name: pod.service_log.clone(),
        };
        let uid = pod.uid.clone();
        match self.pods.get_mut(&uid) {
            Some(run) if run.pod.service_log == pod.service_log => return,
            Some(run) => {
                let old = ServiceLogKey {
                    namespace: run.pod.namespace.clone(),
                    name: std::mem::replace(&mut run.pod.service_log, pod.service_log.clone()),
                };
                let (name, has_sidecar) = (run.pod.name.clone(), run.pod.has_sidecar);
                tracing::info!(namespace = %key.namespace, pod = %name, from = %old.name, to = %key.name, "the pod names another ServiceLog");
                self.unwatch(&old, &uid);
                if !has_sidecar
                    && let Ok(path) = self.layout.instance(&old.namespace, &old.name, &name)
                    && let Err(e) = zk::delete_record(&self.client, &path).await
                {
                    tracing::warn!(error = %e, "removing the old ServiceLog's instance record");
                }
            }
            None => {
                let run =
                    match PodRun::start(pod, &self.opts.paths, self.opts.pod_rate, &self.metrics) {
                        Ok(run) => run,
                        Err(e @ (RunError::StateDir { .. } | RunError::Reader { .. })) => {
                            tracing::error!(error = %e, "cannot serve the pod");
                            return;
                        }
                    };
                self.pods.insert(uid.clone(), run);
            }
        }
        self.add_identity(&key.namespace).await;
        let watched = match self.watched.get_mut(&key) {
            Some(w) => w,
            None => {
                let (Ok(path), Ok(candidate)) = (
                    self.layout.config(&key.namespace, &key.name),
                    self.layout.candidate(&key.namespace, &key.name),
                ) else {
                    tracing::warn!(namespace = %key.namespace, name = %key.name, "not a ServiceLog name");
                    return;
                };
                let tasks = [
                    tokio::spawn(zk::watch_config(
                        self.client.clone(),
                        path,
                        key.clone(),
                        self.configs.clone(),
                    )),
                    tokio::spawn(zk::watch_candidate(
                        self.client.clone(),
                        candidate,
                        key.clone(),
                        self.configs.clone(),
                    )),
                ];
                self.watched.entry(key.clone()).or_insert(Watched {
                    tasks,
                    latest: None,
                    candidate: None,
                    pods: BTreeSet::new(),
                })
            }
        };
        watched.pods.insert(uid.clone());
        self.answer(&uid, &key).await;
    }

    /// Adds `namespace`'s ZooKeeper identity to the session once, when ACLs are on. A
    /// missing Secret is logged: that namespace's configs stay unreadable (its pods run on
    /// their last good rules) until the next pod of it is served.
    async fn add_identity(&mut self, namespace: &str) {
        if !self.opts.namespace_identities || self.identities.contains_key(namespace) {
            return;
        }
        let secrets: Api<Secret> = Api::namespaced(self.kube.clone(), namespace);
        let text = match secrets.get(ZK_AUTH_SECRET).await {
            Ok(secret) => secret
                .data
                .and_then(|d| d.get(ZK_AUTH_KEY).cloned())
                .map(|b| String::from_utf8_lossy(&b.0).trim().to_owned()),
            Err(e) => {
                tracing::warn!(namespace, error = %e, "reading the namespace's ZooKeeper identity");
                return;
            }
        };
        let parsed = text.as_deref().map(Credentials::parse);
        let identity = match parsed {
            Some(Ok(identity)) => identity,
            Some(Err(e)) => {
                tracing::warn!(namespace, error = %e, "the namespace's ZooKeeper identity does not parse");
                return;
            }
            None => {
                tracing::warn!(
                    namespace,
                    secret = ZK_AUTH_SECRET,
                    key = ZK_AUTH_KEY,
                    "the namespace's ZooKeeper identity Secret has no identity"
                );
                return;
            }
        };
        match zk::add_identity(&self.client, &identity).await {
            Ok(()) => {
                self.identities.insert(namespace.to_owned(), identity);
            }
            Err(e) => {
                tracing::warn!(namespace, error = %e, "adding the namespace's ZooKeeper identity")
            }
        }
    }

    async fn config_update(&mut self, key: ServiceLogKey, update: ConfigUpdate) {
        let Some(watched) = self.watched.get_mut(&key) else {
            return; // its last pod went while the update was on its way
        };
        match update {
            ConfigUpdate::Candidate(candidate) => {
                match &candidate {
                    Some(Ok(c)) => {
                        tracing::info!(namespace = %key.namespace, service_log = %key.name, candidate = %c.hash, step = c.step, percent = c.percent, preview = c.preview, "staged rollout: candidate read")
                    }
                    Some(Err(e)) => {
                        tracing::error!(namespace = %key.namespace, service_log = %key.name, error = %e, "staged rollout: the candidate cannot be read; the pods stay on the config znode's config")
                    }
                    None if watched.candidate.is_some() => {
                        tracing::info!(namespace = %key.namespace, service_log = %key.name, "staged rollout: candidate withdrawn")
                    }
                    None => {}
                }
                watched.candidate = candidate;
            }
            update => watched.latest = Some(update),
        }
        let uids: Vec<String> = watched.pods.iter().cloned().collect();
        for uid in uids {
            self.answer(&uid, &key).await;
        }
    }

    /// Applies what `key`'s znodes say to pod `uid` — the candidate when it selects the
    /// pod, else the config — and writes its record. A pod with a sidecar gets its record
    /// from the sidecar, not from here: the agent's failure to apply (its containerLogs
    /// sources then stay on the rules in force) is only in the agent's log and in
    /// `servicelog_config_applied_total{result="error"}`.
    async fn answer(&mut self, uid: &str, key: &ServiceLogKey) {
        let (Some(run), Some(watched)) = (self.pods.get_mut(uid), self.watched.get(key)) else {
            return;
        };
        let Some(update) = &watched.latest else {
            return; // the config znode not read yet
        };
        let mut canary = None;
        let (state, error) = match update {
            ConfigUpdate::Config(stable) => {
                let (target, candidate_error) = match &watched.candidate {
                    Some(Ok(c)) if c.selects(&stable.hash, &key.namespace, &run.pod.name) => {
                        canary = Some(c.hash.clone());
                        let config = c.config().map(Box::new).map_err(|e| {
                            format!(
                                "candidate znode {}: {e}",
                                self.layout
                                    .candidate(&key.namespace, &key.name)
                                    .unwrap_or_default()
                            )
                        });
                        (config, None)
                    }
                    Some(Err(e)) => (Ok(stable.clone()), Some(e.clone())),
                    _ => (Ok(stable.clone()), None),
                };
                let answered = match target.map(|config| (run.apply(&config), config)) {
                    Ok((Ok(swapped), config)) => {
                        if swapped && canary.is_some() {
                            tracing::info!(namespace = %key.namespace, pod = %run.pod.name, hash = %config.hash, "staged rollout: this pod is a canary and runs the candidate");
                        }
                        match candidate_error {
                            None => (InstanceState::Ok, None),
                            Some(e) => (InstanceState::Error, Some(e)),
                        }
                    }
                    Ok((Err(e), config)) => {
                        tracing::warn!(
                            namespace = %key.namespace,
                            pod = %run.pod.name,
                            service_log = %key.name,
                            sidecar = run.pod.has_sidecar,
                            hash = %config.hash,
                            error = %e,
                            "the node agent cannot apply the pod's config; its containerLogs stay on the rules in force"
                        );
                        (InstanceState::Error, Some(e.to_string()))
                    }
                    Err(e) => {
                        tracing::error!(namespace = %key.namespace, pod = %run.pod.name, error = %e, "candidate not applied; the rules in force stay");
                        (InstanceState::Error, Some(e))
                    }
                };
                let candidate = match &watched.candidate {
                    Some(Ok(c)) => Some(&**c),
                    _ => None,
                };
                run.follow(&stable.hash, candidate);
                answered
            }
            ConfigUpdate::Unreadable(why) => (InstanceState::Error, Some(why.clone())),
            ConfigUpdate::Missing | ConfigUpdate::SessionEnded(_) | ConfigUpdate::Candidate(_) => {
                return;
            }
        };
        if run.pod.has_sidecar {
            return;
        }
        let hash = run.hash().unwrap_or_default();
        let record = Instance {
            pod: run.pod.name.clone(),
            health: run.health(&self.metrics, &hash, canary.is_some()),
            hash,
            state,
            error,
            since: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            sink_errors: Default::default(),
            candidate: canary,
        };
        run.record = Some(record.clone());
        self.write_record(key, &record).await;
    }

    /// Puts the counts of each canary, and of every pod during a preview, in its record
    /// when they changed (called every [`health::INTERVAL`], as a sidecar refreshes its
    /// own).
    async fn refresh_health(&mut self) {
        let mut changed = Vec::new();
        for run in self.pods.values_mut() {
            let Some(record) = &run.record else {
                continue;
            };
            let now = run.health(&self.metrics, &record.hash, record.candidate.is_some());
            if record.health == now {
                continue;
            }
            let record = Instance {
                health: now,
                ..record.clone()
            };
            let key = ServiceLogKey {
                namespace: run.pod.namespace.clone(),
                name: run.pod.service_log.clone(),
            };
            run.record = Some(record.clone());
            changed.push((key, record));
        }
        for (key, record) in changed {
            self.write_record(&key, &record).await;
        }
    }

    async fn write_record(&self, key: &ServiceLogKey, record: &Instance) {
        let (Ok(config), Ok(path)) = (
            self.layout.config(&key.namespace, &key.name),
            self.layout.instance(&key.namespace, &key.name, &record.pod),
        ) else {
            return;
        };
        let identity = self.identities.get(&key.namespace);
        if let Err(e) = zk::write_record(&self.client, &config, &path, record, identity).await {
            tracing::warn!(error = %e, "writing the instance record");
        }
    }

    /// Settles the state dirs of pods that are not served any more (deleted while the
    /// agent was down). One whose `<ns>_<pod>_<uid>` log dir is still there is drained on
    /// its last good config like a pod deleted now (its record went with the old session);
    /// the others are removed: the kubelet removed their files, nothing is left to read.
    fn sweep_state(&mut self) {
        let dir = self.opts.paths.state_dir.join("pods");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        let gone: Vec<(String, PathBuf)> = entries
            .flatten()
            .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
            .filter(|(uid, _)| !self.pods.contains_key(uid))
            .collect();
        if gone.is_empty() {
            return;
        }
        let logs = pods::log_dirs(&self.opts.paths.log_root);
        for (uid, path) in gone {
            if let Some(pod) = logs.get(&uid) {
                match PodRun::start(
                    pod.clone(),
                    &self.opts.paths,
                    self.opts.pod_rate,
                    &self.metrics,
                ) {
                    Ok(run) => {
                        tracing::info!(namespace = %pod.namespace, pod = %pod.name, "draining the files of a pod deleted while the agent was down");
                        self.pods.insert(uid.clone(), run);
                        self.forget(&uid);
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot drain a pod deleted while the agent was down")
                    }
                }
            }
            match std::fs::remove_dir_all(&path) {
                Ok(()) => tracing::info!(uid, "removed the state of a pod no longer on this node"),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "removing a gone pod's state")
                }
            }
        }
    }

    /// Stops serving pod `uid` (deleted, gone from the node, or no longer annotated): its
    /// files drained, its record and state removed, in the background.
    fn forget(&mut self, uid: &str) {
        let Some(run) = self.pods.remove(uid) else {
            return;
        };
        let key = ServiceLogKey {
            namespace: run.pod.namespace.clone(),
            name: run.pod.service_log.clone(),
        };
        self.unwatch(&key, uid);
        let record = (!run.pod.has_sidecar)
            .then(|| {
                self.layout
                    .instance(&key.namespace, &key.name, &run.pod.name)
                    .ok()
            })
            .flatten();
        let client = self.client.clone();
        let drain = self.opts.drain_timeout;
        run.unthrottle();
        self.draining.retain(|t| !t.is_finished());
        self.draining.push(tokio::spawn(async move {
            let started = Instant::now();
            while !run.drained() && started.elapsed() < drain {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            if !run.drained() {
                tracing::warn!(pod = %run.pod.name, timeout = ?drain, "the pod's files were not all delivered in time; dropping them");
            }
            let name = run.pod.name.clone();
            let state: PathBuf = run.stop(drain).await;
            if let Some(path) = record
                && let Err(e) = zk::delete_record(&client, &path).await
            {
                tracing::warn!(error = %e, "removing the instance record");
            }
            if let Err(e) = std::fs::remove_dir_all(&state) {
                tracing::warn!(path = %state.display(), error = %e, "removing the pod's state");
            }
            tracing::info!(pod = %name, "pod drained and forgotten");
        }));
    }

    /// Takes pod `uid` off `key`'s pods; the ServiceLog's watch ends with its last pod.
    fn unwatch(&mut self, key: &ServiceLogKey, uid: &str) {
        if let Some(w) = self.watched.get_mut(key) {
            w.pods.remove(uid);
            if w.pods.is_empty() {
                w.tasks.iter().for_each(JoinHandle::abort);
                self.watched.remove(key);
            }
        }
    }

    /// Stops every pipeline (checkpoints stay for the next start); the records go with the
    /// session.
    async fn shutdown(self) {
        let timeout = self.opts.shutdown_timeout;
        for w in self.watched.values() {
            w.tasks.iter().for_each(JoinHandle::abort);
        }
        for task in self.draining {
            let _ = tokio::time::timeout(timeout, task).await;
        }
        let stops = self.pods.into_values().map(|run| run.stop(timeout));
        futures::future::join_all(stops).await;
        drop(self.client);
    }
}
