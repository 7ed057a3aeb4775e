//! A fleet: one ServiceLog, N pods created through the API server (each injected by the
//! webhook) and N sidecar processes run from those pods. Used by the fleet test and by
//! `make bench` to measure `kubectl patch` → `applied N/N`, and the same change sent by a
//! kube client (without the 60–100 ms of starting `kubectl` on a busy machine).
//!
//! At 1,000 sidecars the start is paced: a batch of pods at a time, each batch waited for
//! until its sidecars hold ZooKeeper sessions (their instance records exist), so a slow
//! start says which pods it waited for instead of timing out on the whole fleet.

use std::{
    io::Write,
    process::Stdio,
    time::{Duration, Instant, SystemTime},
};

use futures::{StreamExt, stream::BoxStream};
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
    runtime::watcher,
};
use servicelog_api::{
    v1alpha1::{ServiceLog, ServiceLogStatus},
    wire::Layout,
};

use crate::{
    EnvError, TestEnv, pod,
    run::{Operator, OperatorOptions, bin_dir},
    unique_name,
};

/// The fleet's ServiceLog. Variants (e.g. with `spec.rollout`) append to its `spec`, which
/// ends the text, and keep its name and selector.
pub const SERVICELOG: &str = r#"
apiVersion: servicelog.io/v1alpha1
kind: ServiceLog
metadata: {name: fleet}
spec:
  selector: {matchLabels: {app: fleet}}
  sources:
    - name: app
      file: {paths: ["/var/log/app/*.log"], format: json}
  sinks:
    - name: out
      file: {path: /var/log/servicelog/out.log}
  rules:
    - name: drop-debug
      when: {level: {below: info}}
      action: drop
  defaultTo: [out]
"#;

/// Pods created and sidecars started before waiting for their sessions.
const START_BATCH: usize = 100;
/// How long one batch of sidecars gets to create their instance records.
const BATCH_TIMEOUT: Duration = Duration::from_secs(90);

/// A running fleet.
pub struct Fleet {
    pub namespace: String,
    pub client: kube::Client,
    pub operator: Operator,
    pub sidecars: Vec<pod::Running>,
    /// The bench's own ZooKeeper session, for counting and reading instance records.
    pub zk: zookeeper_client::Client,
    /// The operator's znode layout (its own root).
    pub layout: Layout,
    env: &'static TestEnv,
    patches: u32,
    /// Each sidecar's pod and container, to start it again on a port clash.
    specs: Vec<(Pod, k8s_openapi::api::core::v1::Container)>,
    /// Starts again after a port clash, per sidecar.
    restarts: Vec<u32>,
    /// The machine's inotify instance limit, raised for the fleet and restored on drop.
    _inotify: Option<InotifyLimit>,
}

/// The kernel's limit of inotify instances per user (`fs.inotify.max_user_instances`,
/// 128 by default): each sidecar's file reader takes one, and a fleet's sidecars all run as
/// this user on this one machine. On a cluster each node counts only its own pods (at most
/// 110 by default), so past the limit the fleet would measure sidecars a node never runs:
/// ones without inotify, which poll their files every 100 ms. Raised while the fleet runs,
/// then put back (unless something else changed it meanwhile; a killed run leaves it
/// raised).
struct InotifyLimit {
    was: u64,
    set: u64,
}

impl InotifyLimit {
    const PATH: &str = "/proc/sys/fs/inotify/max_user_instances";

    /// Raises the limit to `size` plus room for the rest of the machine, if it is lower.
    fn raise_for(size: usize) -> Option<Self> {
        let was: u64 = std::fs::read_to_string(Self::PATH)
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let want = size as u64 + 512;
        if was >= want {
            return None;
        }
        match std::fs::write(Self::PATH, want.to_string()) {
            Ok(()) => {
                eprintln!(
                    "fleet: fs.inotify.max_user_instances raised {was} → {want} while the fleet runs (one per sidecar; a node counts its own pods only)"
                );
                Some(Self { was, set: want })
            }
            Err(e) => {
                eprintln!(
                    "fleet: cannot raise fs.inotify.max_user_instances ({was}) to {want}: {e}; sidecars past it poll their files"
                );
                None
            }
        }
    }
}

impl Drop for InotifyLimit {
    fn drop(&mut self) {
        let now: Option<u64> = std::fs::read_to_string(Self::PATH)
            .ok()
            .and_then(|v| v.trim().parse().ok());
        if now != Some(self.set) {
            return;
        }
        if let Err(e) = std::fs::write(Self::PATH, self.was.to_string()) {
            eprintln!(
                "fleet: restoring fs.inotify.max_user_instances to {}: {e}",
                self.was
            );
        }
    }
}

/// Starts of one sidecar whose metrics port was taken between choosing and binding it
/// (another process on this machine got it first): at 1,000 sidecars, a few a run.
const PORT_CLASH_RESTARTS: u32 = 3;

/// One rule change and when it happened, by the wall clock (ZooKeeper's `mtime`s are
/// comparable with it on this machine).
#[derive(Debug, Clone, Copy)]
pub struct Change {
    /// From just before the patch to the status saying `applied N/N`.
    pub elapsed: Duration,
    /// Just before the patch (or `kubectl`) was sent.
    pub sent_at: SystemTime,
    /// When the watch delivered the status saying `applied N/N`.
    pub seen_at: SystemTime,
}

impl Fleet {
    /// Starts the operator, the ServiceLog, `size` pods and their sidecars, and waits until
    /// every sidecar applied the first config.
    pub async fn start(env: &'static TestEnv, size: usize) -> Result<Self, EnvError> {
        Self::start_with(env, size, SERVICELOG).await
    }

    /// [`Fleet::start`] with another ServiceLog `fleet` selecting `app: fleet` (YAML).
    pub async fn start_with(
        env: &'static TestEnv,
        size: usize,
        servicelog: &str,
    ) -> Result<Self, EnvError> {
        env.install_crds()?;
        let namespace = env.create_namespace("fleet").await?;
        let options = OperatorOptions {
            namespace: namespace.clone(),
            zk_connect: env.zk_connect(),
            zk_root: format!("/{}", unique_name("fleet")),
            identity: "a".into(),
            leader_election: false,
            webhook: true,
            extra_args: vec![],
        };
        let layout = Layout::new(&options.zk_root).map_err(|e| EnvError::Failed {
            what: "the fleet's ZooKeeper root".into(),
            detail: e.to_string(),
        })?;
        let operator = tokio::task::block_in_place(|| Operator::start(env, &options))?;
        let client = env.client().await?;
        let zk = crate::zookeeper::connect(&env.zk_connect()).await?;
        let mut fleet = Self {
            namespace,
            client,
            operator,
            sidecars: Vec::new(),
            zk,
            layout,
            env,
            patches: 0,
            specs: Vec::new(),
            restarts: Vec::new(),
            _inotify: InotifyLimit::raise_for(size),
        };
        fleet.kubectl_apply(servicelog)?;
        let pods: Api<Pod> = Api::namespaced(fleet.client.clone(), &fleet.namespace);
        let binary = bin_dir()?.join("servicelog-sidecar");
        for i in 0..size {
            if i > 0 && i % START_BATCH == 0 {
                fleet.wait_sessions(i - START_BATCH, i).await?;
            }
            let mut p: Pod = serde_json::from_value(serde_json::json!({
                "metadata": {"name": format!("fleet-{i}"), "labels": {"app": "fleet"},
                             "annotations": {"servicelog.io/inject": "fleet"}},
                "spec": {"containers": [{"name": "app", "image": "busybox"}]},
            }))
            .map_err(|e| EnvError::Kube(e.to_string()))?;
            p.metadata.namespace = Some(fleet.namespace.clone());
            let created = pods
                .create(&PostParams::default(), &p)
                .await
                .map_err(|e| EnvError::Kube(format!("creating pod fleet-{i}: {e}")))?;
            let container = pod::container(&created, "servicelog-sidecar")
                .ok_or_else(|| EnvError::Failed {
                    what: format!("injection of pod fleet-{i}"),
                    detail: format!("no sidecar; operator log:\n{}", fleet.operator.log_tail(20)),
                })?
                .clone();
            fleet
                .sidecars
                .push(pod::run(env.env_dir(), &created, &container, &binary)?);
            fleet.specs.push((created, container));
            fleet.restarts.push(0);
        }
        fleet
            .wait_sessions(size.saturating_sub(1) / START_BATCH * START_BATCH, size)
            .await?;
        let hash = fleet
            .wait(Duration::from_secs(60), "the first config", |s| {
                s.config_hash.is_some()
            })
            .await?
            .config_hash
            .unwrap_or_default();
        fleet
            .wait_applied(&hash, size, Duration::from_secs(60 + size as u64 / 10))
            .await?;
        Ok(fleet)
    }

    /// The config znode's path.
    pub fn config_path(&self) -> String {
        self.layout
            .config(&self.namespace, "fleet")
            .unwrap_or_default()
    }

    /// The candidate znode's path (a staged rollout's).
    pub fn candidate_path(&self) -> String {
        self.layout
            .candidate(&self.namespace, "fleet")
            .unwrap_or_default()
    }

    /// The pods' names, in start order.
    pub fn pod_names(&self) -> Vec<String> {
        self.specs
            .iter()
            .filter_map(|(p, _)| p.metadata.name.clone())
            .collect()
    }

    /// The `instances/` znode's path.
    pub fn instances_path(&self) -> String {
        self.layout
            .instances(&self.namespace, "fleet")
            .unwrap_or_default()
    }

    /// Waits until pods `fleet-{from}` … `fleet-{to - 1}` have instance records: their
    /// sidecars hold sessions. Names the ones still missing when it gives up.
    async fn wait_sessions(&mut self, from: usize, to: usize) -> Result<(), EnvError> {
        let path = self.instances_path();
        let deadline = Instant::now() + BATCH_TIMEOUT;
        loop {
            let children = match self.zk.get_children(&path).await {
                Ok((children, _)) => children,
                Err(zookeeper_client::Error::NoNode) => Vec::new(),
                Err(e) => return Err(EnvError::Kube(format!("listing {path}: {e}"))),
            };
            let have: std::collections::HashSet<String> = children.into_iter().collect();
            let missing: Vec<usize> = (from..to)
                .filter(|i| !have.contains(&format!("fleet-{i}")))
                .collect();
            if missing.is_empty() {
                return Ok(());
            }
            let mut exited = Vec::new();
            for &i in &missing {
                let Some(how) = self.sidecars.get_mut(i).and_then(|s| s.proc.exited()) else {
                    continue;
                };
                let clash = self.sidecars[i]
                    .proc
                    .log_tail(5)
                    .contains("Address already in use");
                if clash && self.restarts[i] < PORT_CLASH_RESTARTS {
                    // `pod::run` chooses a new port.
                    self.restarts[i] += 1;
                    let binary = bin_dir()?.join("servicelog-sidecar");
                    let (pod, container) = &self.specs[i];
                    self.sidecars[i] = pod::run(self.env.env_dir(), pod, container, &binary)?;
                    continue;
                }
                exited.push(format!("fleet-{i} {how}"));
            }
            if !exited.is_empty() || Instant::now() > deadline {
                let first = missing[0];
                return Err(EnvError::Timeout {
                    what: format!(
                        "sidecars of pods fleet-{from}..fleet-{} to create their instance records in {path}",
                        to - 1
                    ),
                    waited: BATCH_TIMEOUT,
                    detail: format!(
                        "; {} missing (first fleet-{first}); exited: {exited:?}\n--- fleet-{first} ---\n{}",
                        missing.len(),
                        self.sidecars
                            .get(first)
                            .map(|s| s.proc.log_tail(20))
                            .unwrap_or_default()
                    ),
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Stops every sidecar: all are signalled first, then each is waited for (one by one,
    /// 1,000 graceful stops would take minutes).
    pub fn stop(mut self) {
        let pids: Vec<String> = self
            .sidecars
            .iter()
            .filter_map(|s| s.proc.pid())
            .map(|p| p.to_string())
            .collect();
        for chunk in pids.chunks(200) {
            let _ = std::process::Command::new("kill")
                .arg("-TERM")
                .args(chunk)
                .stderr(Stdio::null())
                .status();
        }
        for mut s in self.sidecars.drain(..) {
            s.proc.stop(Duration::from_secs(5));
        }
    }

    fn kubectl_apply(&self, yaml: &str) -> Result<(), EnvError> {
        let mut cmd = self.env.kubectl();
        cmd.args(["-n", &self.namespace, "apply", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .map_err(|e| EnvError::io("running kubectl", e))?;
        if let Some(mut s) = child.stdin.take() {
            s.write_all(yaml.as_bytes())
                .map_err(|e| EnvError::io("writing to kubectl", e))?;
        }
        let out = child
            .wait_with_output()
            .map_err(|e| EnvError::io("running kubectl", e))?;
        if !out.status.success() {
            return Err(EnvError::Failed {
                what: "kubectl apply".into(),
                detail: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        Ok(())
    }

    /// The ServiceLog, followed by a watch: the first item is the object as it is now.
    fn follow(&self) -> BoxStream<'static, Result<Option<ServiceLog>, watcher::Error>> {
        let api = Api::<ServiceLog>::namespaced(self.client.clone(), &self.namespace);
        watcher::watch_object(api, "fleet").boxed()
    }

    async fn wait(
        &self,
        timeout: Duration,
        what: &str,
        ok: impl Fn(&ServiceLogStatus) -> bool,
    ) -> Result<ServiceLogStatus, EnvError> {
        let mut stream = self.follow();
        self.wait_on(&mut stream, timeout, what, ok).await
    }

    /// Waits on `stream` until the status satisfies `ok`.
    async fn wait_on(
        &self,
        stream: &mut BoxStream<'static, Result<Option<ServiceLog>, watcher::Error>>,
        timeout: Duration,
        what: &str,
        ok: impl Fn(&ServiceLogStatus) -> bool,
    ) -> Result<ServiceLogStatus, EnvError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last = None;
        let mut error = None;
        loop {
            match tokio::time::timeout_at(deadline, stream.next()).await {
                Err(_) | Ok(None) => break,
                Ok(Some(Ok(slog))) => {
                    if let Some(s) = slog.and_then(|s| s.status) {
                        if ok(&s) {
                            return Ok(s);
                        }
                        last = Some(s);
                    }
                }
                // The watcher retries by itself; keep the error for the timeout message.
                Ok(Some(Err(e))) => error = Some(e.to_string()),
            }
        }
        Err(EnvError::Timeout {
            what: what.to_owned(),
            waited: timeout,
            detail: format!(
                "; last status {last:?}, last watch error {error:?}\n--- operator ---\n{}",
                self.operator.log_tail(20)
            ),
        })
    }

    async fn wait_applied(
        &self,
        hash: &str,
        size: usize,
        timeout: Duration,
    ) -> Result<ServiceLogStatus, EnvError> {
        let n = u32::try_from(size).unwrap_or(u32::MAX);
        self.wait(timeout, &format!("applied {size}/{size} of {hash}"), |s| {
            s.config_hash.as_deref() == Some(hash)
                && s.pods
                    .as_ref()
                    .is_some_and(|p| p.applied == n && p.injected == n)
        })
        .await
    }

    /// Changes a rule with `kubectl patch` and returns the time until the status says
    /// every sidecar applied it, from just before `kubectl` is started.
    pub async fn patch_and_wait(&mut self) -> Result<Duration, EnvError> {
        Ok(self.patch_and_wait_via(Via::Kubectl).await?.elapsed)
    }

    /// Changes a rule `via` kubectl or a kube client and returns the time until the status
    /// says every sidecar applied it, from just before `kubectl` is started or the request
    /// is sent.
    pub async fn patch_and_wait_via(&mut self, via: Via) -> Result<Change, EnvError> {
        self.patches += 1;
        let api = Api::<ServiceLog>::namespaced(self.client.clone(), &self.namespace);
        // Follow the ServiceLog from before the change, so the clock stops at the status
        // write itself rather than at the next poll.
        let mut stream = self.follow();
        let current = match tokio::time::timeout(Duration::from_secs(10), stream.next()).await {
            Ok(Some(Ok(Some(slog)))) => slog,
            Ok(Some(Ok(None))) => {
                return Err(EnvError::Failed {
                    what: "reading ServiceLog fleet".into(),
                    detail: "it does not exist".into(),
                });
            }
            Ok(Some(Err(e))) => {
                return Err(EnvError::Kube(format!("watching ServiceLog fleet: {e}")));
            }
            Ok(None) | Err(_) => {
                return Err(EnvError::Timeout {
                    what: "the first watch event of ServiceLog fleet".into(),
                    waited: Duration::from_secs(10),
                    detail: String::new(),
                });
            }
        };
        let before = current.status.as_ref().and_then(|s| s.config_hash.clone());
        let rule_name = format!("drop-debug-{}", self.patches);
        let started = match via {
            Via::Kubectl => {
                let patch = format!(
                    r#"[{{"op":"replace","path":"/spec/rules/0/name","value":"{rule_name}"}}]"#
                );
                let started = (Instant::now(), SystemTime::now());
                let out = self
                    .env
                    .kubectl()
                    .args([
                        "-n",
                        &self.namespace,
                        "patch",
                        "slog",
                        "fleet",
                        "--type=json",
                        "-p",
                        &patch,
                    ])
                    .output()
                    .map_err(|e| EnvError::io("running kubectl", e))?;
                if !out.status.success() {
                    return Err(EnvError::Failed {
                        what: "kubectl patch".into(),
                        detail: String::from_utf8_lossy(&out.stderr).into_owned(),
                    });
                }
                started
            }
            Via::Client => {
                // A merge patch replaces the list whole: the current rules, the first renamed.
                let mut rules = serde_json::to_value(&current.spec.rules)
                    .map_err(|e| EnvError::Kube(e.to_string()))?;
                rules[0]["name"] = rule_name.into();
                let patch = serde_json::json!({"spec": {"rules": rules}});
                let started = (Instant::now(), SystemTime::now());
                api.patch("fleet", &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map_err(|e| EnvError::Kube(format!("patching ServiceLog fleet: {e}")))?;
                started
            }
        };
        let size = self.sidecars.len();
        let n = u32::try_from(size).unwrap_or(u32::MAX);
        self.wait_on(
            &mut stream,
            Duration::from_secs(60 + size as u64 / 10),
            &format!("applied {size}/{size} after patch {}", self.patches),
            |s| {
                s.config_hash.is_some()
                    && s.config_hash != before
                    && s.pods.as_ref().is_some_and(|p| p.applied == n)
            },
        )
        .await?;
        Ok(Change {
            elapsed: started.0.elapsed(),
            sent_at: started.1,
            seen_at: SystemTime::now(),
        })
    }
}

/// How a rule change is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// `kubectl patch --type=json`: what a person types; includes starting kubectl.
    Kubectl,
    /// A merge patch from an already connected kube client.
    Client,
}
