//! The servicelog test environment: a real etcd + kube-apiserver and a real ZooKeeper on
//! loopback, started from Rust tests (`TestEnv::start`, `TestEnv::shared`) or in the
//! background by `make testenv`. With a node (`TestEnv::start_cluster`, `make cluster`) all
//! of it runs in a network namespace of its own with a real kubelet, containerd, scheduler,
//! controller-manager, kube-proxy and CoreDNS, and pods run (see [`node`]).
//!
//! No fake API server, no fake ZooKeeper: tests meet the same admission chain, watch
//! semantics and session behaviour as production. Everything started is stopped by PID on
//! drop, and by a watchdog when the owning process dies without dropping (see [`procs`]).
#![forbid(unsafe_code)]

pub mod chart;
pub mod control_plane;
pub mod fleet;
pub mod kafka;
pub mod node;
pub mod otelcol;
pub mod pod;
pub mod procs;
pub mod prometheus;
pub mod receiver;
pub mod run;
pub mod tools;
pub mod zookeeper;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command},
    sync::{
        OnceLock,
        atomic::{AtomicU32, Ordering},
    },
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use control_plane::ControlPlane;
use kafka::Kafka;
use node::{Netns, NetnsGuard, Node, NodeTools};
use procs::EnvDir;
use tools::Tools;
use zookeeper::ZooKeeper;

/// Why the environment could not be had. Every variant says what it was about.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EnvError {
    #[error("{what} is missing: {hint}")]
    Missing { what: String, hint: String },
    #[error("could not start {what}: {reason}")]
    Spawn { what: String, reason: String },
    #[error("timed out after {waited:?} waiting for {what}{detail}")]
    Timeout {
        what: String,
        waited: Duration,
        detail: String,
    },
    #[error("gave up waiting for {what}: {detail}")]
    Failed { what: String, detail: String },
    #[error("{context}: {message}")]
    Io { context: String, message: String },
    #[error("generating certificates: {0}")]
    Cert(String),
    #[error("Kubernetes client: {0}")]
    Kube(String),
    #[error("a lock was poisoned by a panic in another test")]
    Poisoned,
}

impl EnvError {
    pub(crate) fn io(context: impl Into<String>, e: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            message: e.to_string(),
        }
    }

    /// Appends a component's last log lines to the message.
    pub fn with_log(self, component: &str, tail: &str) -> Self {
        let block = format!("\n--- last lines of {component}'s log ---\n{tail}");
        match self {
            Self::Timeout {
                what,
                waited,
                detail,
            } => Self::Timeout {
                what,
                waited,
                detail: detail + &block,
            },
            Self::Failed { what, detail } => Self::Failed {
                what,
                detail: detail + &block,
            },
            other => other,
        }
    }

    /// Whether this looks like a port taken between choosing and binding it.
    pub fn is_port_clash(&self) -> bool {
        let text = self.to_string();
        text.contains("address already in use") || text.contains("Address already in use")
    }
}

/// A running control plane and ZooKeeper.
#[derive(Debug)]
pub struct TestEnv {
    // Drop order: the node, the components, the node's network namespace, then the
    // watchdog that would otherwise stop them.
    node: Option<Node>,
    control_plane: ControlPlane,
    zookeeper: ZooKeeper,
    /// Started on first use by [`TestEnv::kafka`]: most tests do not need a broker.
    kafka: OnceLock<Result<Kafka, EnvError>>,
    netns: Option<NetnsGuard>,
    watchdog: Child,
    tools: Tools,
    dir: EnvDir,
    started_in: Duration,
    crds: OnceLock<Result<(), EnvError>>,
}

static SHARED: OnceLock<Result<TestEnv, EnvError>> = OnceLock::new();
static SHARED_CLUSTER: OnceLock<Result<TestEnv, EnvError>> = OnceLock::new();
static NEXT: AtomicU32 = AtomicU32::new(0);

impl TestEnv {
    /// Starts etcd, kube-apiserver and a standalone ZooKeeper in a new directory under
    /// `target/testenv/`, stopping first whatever a killed earlier run left there.
    /// Blocks until every component is ready (each wait bounded, named on timeout).
    pub fn start() -> Result<Self, EnvError> {
        let base = base_dir();
        procs::reap_stale(&base);
        let name = format!(
            "env-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        Self::start_in(base.join(name))
    }

    /// Starts the environment in `dir` (created afresh).
    pub fn start_in(dir: PathBuf) -> Result<Self, EnvError> {
        let started = Instant::now();
        let tools = Tools::locate()?;
        let dir = EnvDir::create(dir)?;
        let watchdog = dir.spawn_watchdog()?;
        let zk_dir = dir.clone();
        // ZooKeeper's JVM and the API server start in parallel: together they are the
        // environment's start time.
        let zk = thread::spawn(move || ZooKeeper::start(&zk_dir, "zookeeper", 1));
        let control_plane = ControlPlane::start(&dir, &tools);
        let zookeeper = zk.join().map_err(|_| EnvError::Failed {
            what: "ZooKeeper".into(),
            detail: "its start thread panicked".into(),
        })?;
        let (control_plane, zookeeper) = (control_plane?, zookeeper?);
        Ok(Self {
            node: None,
            control_plane,
            zookeeper,
            kafka: OnceLock::new(),
            netns: None,
            watchdog,
            tools,
            dir,
            started_in: started.elapsed(),
            crds: OnceLock::new(),
        })
    }

    /// Starts a cluster with a real node in a new directory under `target/testenv/`: a
    /// network namespace of its own holding etcd, kube-apiserver, ZooKeeper and the node
    /// (containerd, kubelet, scheduler, controller-manager, kube-proxy, CoreDNS), with the
    /// API server and ZooKeeper forwarded to the host's loopback. Needs root and the node's
    /// tools (`make cluster-tools`, `scripts/deps.sh node`).
    pub fn start_cluster() -> Result<Self, EnvError> {
        let base = base_dir();
        procs::reap_stale(&base);
        let name = format!(
            "cluster-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        Self::start_cluster_in(base.join(name))
    }

    /// Starts a cluster (see [`TestEnv::start_cluster`]) in `dir` (created afresh).
    pub fn start_cluster_in(dir: PathBuf) -> Result<Self, EnvError> {
        let started = Instant::now();
        let tools = Tools::locate()?;
        let node_tools = NodeTools::locate()?;
        let dir = EnvDir::create(dir)?;
        let watchdog = dir.spawn_watchdog()?;
        let netns = Netns::create(&dir, &unique_name("servicelog"))?;
        let ns = netns.netns().clone();
        let zk_dir = dir.clone();
        let zk = thread::spawn(move || ZooKeeper::start_in_netns(&zk_dir, "zookeeper", &ns));
        let control_plane = ControlPlane::start_in_netns(&dir, &tools, netns.netns());
        let zookeeper = zk.join().map_err(|_| EnvError::Failed {
            what: "ZooKeeper".into(),
            detail: "its start thread panicked".into(),
        })?;
        let (control_plane, zookeeper) = (control_plane?, zookeeper?);
        let node = Node::start(&dir, &tools, &node_tools, netns.netns(), &control_plane)?;
        Ok(Self {
            node: Some(node),
            control_plane,
            zookeeper,
            kafka: OnceLock::new(),
            netns: Some(netns),
            watchdog,
            tools,
            dir,
            started_in: started.elapsed(),
            crds: OnceLock::new(),
        })
    }

    /// The node, for an environment started with [`TestEnv::start_cluster`].
    pub fn node(&self) -> Option<&Node> {
        self.node.as_ref()
    }

    /// The cluster's network namespace (where the node, the control plane and ZooKeeper run).
    pub fn netns(&self) -> Option<&Netns> {
        self.netns.as_ref().map(NetnsGuard::netns)
    }

    /// ZooKeeper's connect string as pods see it (the node's IP), in a cluster.
    pub fn zk_connect_for_pods(&self) -> Option<String> {
        self.zookeeper.connect_string_for_pods()
    }

    /// Stops the environment and, for a cluster, removes everything its node created
    /// (the same as dropping it; a test that checks the teardown calls this explicitly).
    pub fn stop(self) {
        drop(self);
    }

    /// One environment per test process, started on first use and shared by every test
    /// in it (each test takes its own namespace and znode root). It is never dropped; the
    /// watchdog stops it when the process exits.
    pub fn shared() -> Result<&'static TestEnv, EnvError> {
        SHARED
            .get_or_init(TestEnv::start)
            .as_ref()
            .map_err(Clone::clone)
    }

    /// One cluster per test process (see [`TestEnv::start_cluster`]), started on first use
    /// and shared by every test in it. Never dropped: when the process exits the watchdog
    /// stops it and runs the node's teardown (`e2e/tools/node-down.sh`).
    pub fn shared_cluster() -> Result<&'static TestEnv, EnvError> {
        SHARED_CLUSTER
            .get_or_init(TestEnv::start_cluster)
            .as_ref()
            .map_err(Clone::clone)
    }

    pub fn kubeconfig(&self) -> &Path {
        self.control_plane.kubeconfig()
    }

    pub fn server(&self) -> &str {
        self.control_plane.server()
    }

    /// `127.0.0.1:PORT` of the environment's ZooKeeper.
    pub fn zk_connect(&self) -> String {
        self.zookeeper.connect_string()
    }

    pub fn zookeeper(&self) -> &ZooKeeper {
        &self.zookeeper
    }

    /// The environment's Kafka broker (KRaft, one node, on loopback), started on first
    /// use — fetching its jars once per machine — and shared by every test of the
    /// environment, which use topics of their own. Stopped with the environment.
    pub fn kafka(&self) -> Result<&Kafka, EnvError> {
        self.kafka
            .get_or_init(|| Kafka::start(&self.dir, "kafka"))
            .as_ref()
            .map_err(Clone::clone)
    }

    pub fn tools(&self) -> &Tools {
        &self.tools
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The environment's directory handle, for starting more processes in it.
    pub fn env_dir(&self) -> &EnvDir {
        &self.dir
    }

    /// How long [`TestEnv::start`] took.
    pub fn started_in(&self) -> Duration {
        self.started_in
    }

    /// A ZooKeeper of the test's own (e.g. a three-node ensemble to kill members of),
    /// stopped when dropped.
    pub fn start_zookeeper(&self, label: &str, size: usize) -> Result<ZooKeeper, EnvError> {
        ZooKeeper::start(&self.dir, label, size)
    }

    /// A Kubernetes client for the admin kubeconfig, bound to the calling test's runtime.
    pub async fn client(&self) -> Result<kube::Client, EnvError> {
        // kube builds its TLS config with the process's default provider, which rustls
        // cannot choose when ring and aws-lc-rs are both compiled in (zookeeper-client's
        // TLS brings the latter into builds that include the binaries).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let kubeconfig = kube::config::Kubeconfig::read_from(self.kubeconfig())
            .map_err(|e| EnvError::Kube(e.to_string()))?;
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .map_err(|e| EnvError::Kube(e.to_string()))?;
        kube::Client::try_from(config).map_err(|e| EnvError::Kube(e.to_string()))
    }

    /// Creates a namespace `<prefix>-<unique>` so tests can run in parallel against one
    /// control plane, and returns its name. In a cluster it also waits for the namespace's
    /// `default` ServiceAccount, without which admission refuses pods.
    pub async fn create_namespace(&self, prefix: &str) -> Result<String, EnvError> {
        use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
        let name = unique_name(prefix);
        let client = self.client().await?;
        let api: kube::Api<Namespace> = kube::Api::all(client.clone());
        let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": name}}))
            .map_err(|e| EnvError::Kube(e.to_string()))?;
        api.create(&Default::default(), &ns)
            .await
            .map_err(|e| EnvError::Kube(format!("creating namespace {name}: {e}")))?;
        if self.node.is_some() {
            let accounts: kube::Api<ServiceAccount> = kube::Api::namespaced(client, &name);
            let what = format!("the default ServiceAccount of namespace {name}");
            eventually(&what, Duration::from_secs(30), || async {
                accounts
                    .get_opt("default")
                    .await
                    .is_ok_and(|sa| sa.is_some())
            })
            .await?;
        }
        Ok(name)
    }

    /// Applies `crds/` once per environment and waits until the API serves ServiceLogs;
    /// parallel tests share the result.
    pub fn install_crds(&self) -> Result<(), EnvError> {
        self.crds
            .get_or_init(|| {
                let crds = workspace_dir().join("crds");
                let out = self
                    .kubectl()
                    .args(["apply", "--server-side", "--force-conflicts", "-f"])
                    .arg(&crds)
                    .output()
                    .map_err(|e| EnvError::io("running kubectl", e))?;
                if !out.status.success() {
                    return Err(EnvError::Failed {
                        what: "kubectl apply -f crds/".into(),
                        detail: String::from_utf8_lossy(&out.stderr).into_owned(),
                    });
                }
                let out = self
                    .kubectl()
                    .args([
                        "wait",
                        "--for=condition=established",
                        "--timeout=30s",
                        "crd/servicelogs.servicelog.io",
                    ])
                    .output()
                    .map_err(|e| EnvError::io("running kubectl", e))?;
                if !out.status.success() {
                    return Err(EnvError::Timeout {
                        what: "the ServiceLog CRD to be established".into(),
                        waited: Duration::from_secs(30),
                        detail: String::from_utf8_lossy(&out.stderr).into_owned(),
                    });
                }
                Ok(())
            })
            .clone()
    }

    /// `kubectl` with this environment's kubeconfig.
    pub fn kubectl(&self) -> Command {
        let mut cmd = Command::new(self.tools.path("kubectl"));
        cmd.env("KUBECONFIG", self.kubeconfig());
        cmd
    }

    /// `helm` with this environment's kubeconfig.
    pub fn helm(&self) -> Command {
        let mut cmd = Command::new(self.tools.path("helm"));
        cmd.env("KUBECONFIG", self.kubeconfig())
            .env("HELM_CACHE_HOME", self.dir.join("helm/cache"))
            .env("HELM_CONFIG_HOME", self.dir.join("helm/config"))
            .env("HELM_DATA_HOME", self.dir.join("helm/data"));
        cmd
    }

    /// The last log lines of every component, for a failing test to print.
    pub fn diagnostics(&self) -> String {
        format!(
            "--- kube-apiserver ---\n{}\n--- etcd ---\n{}\n--- zookeeper ---\n{}\n{}",
            self.control_plane.apiserver_log_tail(20),
            self.control_plane.etcd_log_tail(10),
            self.zookeeper.log_tail(0, 20),
            self.node
                .as_ref()
                .map(Node::diagnostics)
                .unwrap_or_default()
        )
    }

    /// The `make testenv` (or `make cluster`) env file: exports that point a shell at this
    /// environment.
    pub fn env_file(&self) -> String {
        let mut text = format!(
            "# Written by `make {}`; `source` it. Stop with `make {}-down`.\n\
             export KUBECONFIG={}\nexport SERVICELOG_ZK_CONNECT={}\nexport PATH={}:$PATH\n",
            if self.node.is_some() {
                "cluster"
            } else {
                "testenv"
            },
            if self.node.is_some() {
                "cluster"
            } else {
                "testenv"
            },
            shell_quote(&self.kubeconfig().to_string_lossy()),
            shell_quote(&self.zk_connect()),
            shell_quote(&self.tools.bin_dir().to_string_lossy()),
        );
        if let Some(Ok(kafka)) = self.kafka.get() {
            text.push_str(&format!(
                "export SERVICELOG_KAFKA_BOOTSTRAP={}\n",
                shell_quote(&kafka.bootstrap())
            ));
        }
        if let (Some(node), Some(zk)) = (&self.node, self.zk_connect_for_pods()) {
            text.push_str(&format!(
                "# ZooKeeper as pods reach it; `ctr` talks to the node's containerd.\n\
                 export SERVICELOG_CLUSTER_ZK_CONNECT={}\nexport SERVICELOG_CLUSTER_NETNS={}\n\
                 export CONTAINERD_ADDRESS={}\nexport CONTAINERD_NAMESPACE=k8s.io\n",
                shell_quote(&zk),
                shell_quote(node.netns().name()),
                shell_quote(&node.containerd_socket().to_string_lossy()),
            ));
        }
        text
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        // The components stop in their own drops (fields below run after this body);
        // the watchdog is no longer needed once we shut down in order.
        let _ = self.watchdog.kill();
        let _ = self.watchdog.wait();
    }
}

/// `<workspace>/target/cluster`, or `SERVICELOG_CLUSTER_BASE`: where `make cluster` keeps
/// its environment (`current/`) and its env file.
pub fn cluster_base_dir() -> PathBuf {
    std::env::var_os("SERVICELOG_CLUSTER_BASE")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_dir().join("target").join("cluster"))
}

/// `<workspace>/target/testenv`, or `SERVICELOG_TESTENV_BASE`.
pub fn base_dir() -> PathBuf {
    std::env::var_os("SERVICELOG_TESTENV_BASE")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_dir().join("target").join("testenv"))
}

/// The workspace root (the parent of this crate).
pub fn workspace_dir() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(Path::to_path_buf).unwrap_or(manifest)
}

/// `<prefix>-<short unique suffix>`, a valid DNS label for prefixes up to 50 characters.
pub fn unique_name(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let mix = (u64::from(std::process::id()) << 32 | u64::from(nanos)) ^ (u64::from(n) << 48);
    format!("{prefix}-{:x}", mix % 0xff_ffff)
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Polls an async condition until it holds or `timeout` passes; the error names `what`.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<(), EnvError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < timeout {
        if check().await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(EnvError::Timeout {
        what: what.to_owned(),
        waited: timeout,
        detail: String::new(),
    })
}
