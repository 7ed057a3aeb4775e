//! Leader election against the real API server: two operators never both write. A leader
//! paused past its lease (SIGSTOP) is replaced only after the standby saw the Lease
//! unchanged for a whole lease, and woken with the API server out of reach (so that only
//! its own deadline can stop it) writes nothing; a leader cut off from the API server
//! stops before the standby starts; a leader stopped with SIGTERM hands over at once. Each
//! test has its own namespace and Lease, and each operator its own znode root, so what
//! each one wrote to ZooKeeper is told apart.

use std::{
    path::PathBuf,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use k8s_openapi::api::coordination::v1::Lease;
use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
};
use servicelog_api::{
    v1alpha1::{ServiceLog, ServiceLogStatus},
    wire::{Envelope, Layout},
};
use servicelog_e2e::{
    TestEnv,
    run::{Operator, OperatorOptions},
    unique_name, workspace_dir,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

const WAIT: Duration = Duration::from_secs(30);
/// The name operators use by default (`--lease-name`).
const LEASE: &str = "servicelog-operator";

fn env() -> &'static TestEnv {
    TestEnv::shared().unwrap_or_else(|e| panic!("the test environment did not start: {e}"))
}

struct Fixture {
    env: &'static TestEnv,
    ns: String,
    api: Api<ServiceLog>,
    leases: Api<Lease>,
}

impl Fixture {
    async fn new(prefix: &str) -> Self {
        let env = env();
        env.install_crds().unwrap_or_else(|e| panic!("{e}"));
        let ns = env.create_namespace(prefix).await.expect("namespace");
        let client = env.client().await.expect("client");
        Self {
            env,
            api: Api::namespaced(client.clone(), &ns),
            leases: Api::namespaced(client, &ns),
            ns,
        }
    }

    /// An operator with its own znode root (so what each one writes to ZooKeeper is told
    /// apart) sharing the namespace's Lease.
    fn options(&self, identity: &str, root: &str, lease: &str) -> OperatorOptions {
        OperatorOptions {
            namespace: self.ns.clone(),
            zk_connect: self.env.zk_connect(),
            zk_root: root.to_owned(),
            identity: identity.to_owned(),
            leader_election: true,
            webhook: false,
            extra_args: vec![
                format!("--lease-duration={lease}"),
                // Longer than any pause here: a woken leader finds its ZooKeeper session
                // alive, so only leader election can keep it from writing.
                "--zk-session-timeout=30s".into(),
            ],
        }
    }

    fn operator(&self, options: &OperatorOptions) -> Operator {
        Operator::start(self.env, options)
            .unwrap_or_else(|e| panic!("operator {} did not start: {e}", options.identity))
    }

    async fn create_example(&self) {
        let text = std::fs::read_to_string(workspace_dir().join("examples/checkout.yaml"))
            .expect("example");
        let mut slog: ServiceLog = serde_yaml::from_str(&text).expect("example is a ServiceLog");
        slog.metadata.namespace = Some(self.ns.clone());
        self.api
            .create(&PostParams::default(), &slog)
            .await
            .expect("create ServiceLog");
    }

    async fn patch_generation(&self) {
        let patch = serde_json::json!({"spec": {"defaultTo": []}});
        self.api
            .patch("checkout", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("patch");
    }

    async fn wait_status(
        &self,
        what: &str,
        operator: &Operator,
        ok: impl Fn(&ServiceLogStatus) -> bool,
    ) -> ServiceLogStatus {
        let mut last = None;
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if let Ok(obj) = self.api.get("checkout").await {
                match obj.status {
                    Some(status) if ok(&status) => return status,
                    other => last = other,
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "timed out after {WAIT:?} waiting for {what} on {}/checkout; last status: {last:#?}\n--- operator log ---\n{}",
            self.ns,
            operator.log_tail(40)
        );
    }

    /// A proxy to the API server and a kubeconfig that reaches it through the proxy.
    async fn proxied_kubeconfig(&self) -> (Proxy, PathBuf) {
        let server = self.env.server().to_owned();
        let upstream = server
            .trim_start_matches("https://")
            .trim_end_matches('/')
            .to_owned();
        let proxy = Proxy::start(upstream).await;
        let kubeconfig = self.env.dir().join(format!("kubeconfig-{}", self.ns));
        let text = std::fs::read_to_string(self.env.kubeconfig()).expect("kubeconfig");
        assert!(text.contains(&server), "the kubeconfig names {server}");
        std::fs::write(
            &kubeconfig,
            text.replace(&server, &format!("https://127.0.0.1:{}", proxy.port)),
        )
        .expect("write kubeconfig");
        (proxy, kubeconfig)
    }

    /// (holder, acquireTime, renewTime) of the Lease.
    async fn lease(&self) -> (Option<String>, Option<String>, Option<String>) {
        let spec = self
            .leases
            .get(LEASE)
            .await
            .expect("the Lease exists")
            .spec
            .unwrap_or_default();
        (
            spec.holder_identity,
            spec.acquire_time.map(|t| t.0.to_string()),
            spec.renew_time.map(|t| t.0.to_string()),
        )
    }
}

fn leads(o: &Operator) -> bool {
    o.metrics()
        .lines()
        .any(|l| l.trim() == "servicelog_leader 1")
}

fn published(status: &ServiceLogStatus, generation: i64) -> bool {
    status.observed_generation == Some(generation)
        && status
            .conditions
            .iter()
            .any(|c| c.r#type == "Published" && c.status == "True")
}

fn signal(o: &Operator, name: &str) {
    let pid = o.pid().expect("the operator runs");
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{name} {pid} failed");
}

/// Polls `check` every 20 ms; the instant it first held, or a panic naming `what`.
async fn until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) -> Instant {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if check() {
            return Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

fn seconds(rfc3339: &str) -> f64 {
    let t: k8s_openapi::jiff::Timestamp = rfc3339.parse().expect("a timestamp");
    t.as_millisecond() as f64 / 1000.0
}

/// The generation of the config at `root`, if published there.
async fn generation_at(zk: &zookeeper_client::Client, ns: &str, root: &str) -> Option<i64> {
    let path = Layout::new(root)
        .expect("layout")
        .config(ns, "checkout")
        .expect("path");
    let (data, _) = zk.get_data(&path).await.ok()?;
    Envelope::from_slice(&data).ok().map(|e| e.generation)
}

async fn zk(connect: &str) -> zookeeper_client::Client {
    let connecting = zookeeper_client::Client::connector()
        .with_session_timeout(Duration::from_secs(30))
        .connect(connect);
    tokio::time::timeout(Duration::from_secs(10), connecting)
        .await
        .unwrap_or_else(|_| panic!("timed out after 10s connecting to ZooKeeper at {connect}"))
        .expect("connect to ZooKeeper")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_leader_paused_past_its_lease_then_the_standby_waits_a_whole_lease_and_the_woken_leader_writes_nothing()
 {
    let f = Fixture::new("le-pause").await;
    let zk = zk(&f.env.zk_connect()).await;
    let (root_a, root_b) = (
        format!("/{}", unique_name("a")),
        format!("/{}", unique_name("b")),
    );
    let (proxy, kubeconfig) = f.proxied_kubeconfig().await;
    let mut a = Operator::start_with_kubeconfig(f.env, &f.options("a", &root_a, "4s"), &kubeconfig)
        .unwrap_or_else(|e| panic!("operator a did not start: {e}"));
    until("a leading", WAIT, || leads(&a)).await;
    let mut b = f.operator(&f.options("b", &root_b, "4s"));
    f.create_example().await;
    f.wait_status("generation 1 published by a", &a, |s| published(s, 1))
        .await;

    signal(&a, "STOP");
    // A renewal already on the wire lands; none after.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (holder, _, last_renewal) = f.lease().await;
    assert_eq!(holder.as_deref(), Some("a"));
    // Work the paused leader will find when it wakes: the watch event of generation 2,
    // waiting in its socket.
    f.patch_generation().await;

    until("b leading after a stopped renewing", WAIT, || leads(&b)).await;
    let (holder, acquired, _) = f.lease().await;
    assert_eq!(holder.as_deref(), Some("b"));
    let waited =
        seconds(&acquired.expect("acquireTime")) - seconds(&last_renewal.expect("renewTime"));
    assert!(
        (4.0..4.0 + 2.0).contains(&waited),
        "b took over {waited:.2}s after a's last renewal; the lease is 4s: it must wait all of it, and not much longer"
    );
    eprintln!("paused: b took over {waited:.2}s after a's last renewal");
    f.wait_status("generation 2 published by b", &b, |s| published(s, 2))
        .await;
    assert_eq!(generation_at(&zk, &f.ns, &root_b).await, Some(2));

    // It wakes unable to reach the API server, so it cannot learn from the Lease that it
    // lost: only its own deadline can stop it. Its ZooKeeper session is alive.
    proxy.cut();
    signal(&a, "CONT");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        generation_at(&zk, &f.ns, &root_a).await,
        Some(1),
        "the woken leader published generation 2 after b had taken over\n--- a's log ---\n{}",
        a.log_tail(40)
    );
    until(
        "the woken leader stepping down (exiting)",
        Duration::from_secs(5),
        || !a.is_running(),
    )
    .await;
    assert!(
        a.log_tail(200).contains("lost the lease"),
        "a's log says why it stopped:\n{}",
        a.log_tail(40)
    );
    assert!(leads(&b) && b.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_leader_stopped_with_sigterm_then_the_standby_leads_within_3s() {
    let f = Fixture::new("le-term").await;
    let root = format!("/{}", unique_name("t"));
    // The default 15s lease: without a release the standby would wait all of it.
    let a = f.operator(&f.options("a", &root, "15s"));
    until("a leading", WAIT, || leads(&a)).await;
    let b = f.operator(&f.options("b", &root, "15s"));
    f.create_example().await;
    f.wait_status("generation 1 published", &a, |s| published(s, 1))
        .await;

    let stopped = Instant::now();
    signal(&a, "TERM");
    let took_over = until(
        "b leading after a's SIGTERM",
        Duration::from_secs(10),
        || leads(&b),
    )
    .await;
    let after = took_over - stopped;
    assert!(
        after < Duration::from_secs(3),
        "b led {after:?} after a's SIGTERM; a released lease is taken at the standby's next try\n--- a's log ---\n{}",
        a.log_tail(20)
    );
    assert!(
        a.log_tail(100).contains("released the lease"),
        "a's log:\n{}",
        a.log_tail(20)
    );
    f.patch_generation().await;
    f.wait_status("generation 2 published by b", &b, |s| published(s, 2))
        .await;
    eprintln!("SIGTERM to the standby leading: {after:?}");
}

/// A TCP proxy to the API server that the test can cut: from then on it forwards nothing
/// either way and accepts connections without answering — requests hang, as on a lost
/// network, rather than fail.
struct Proxy {
    port: u16,
    cut: Arc<AtomicBool>,
}

impl Proxy {
    async fn start(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let cut = Arc::new(AtomicBool::new(false));
        let flag = cut.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (flag, upstream) = (flag.clone(), upstream.clone());
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::join!(pipe(cr, sw, flag.clone()), pipe(sr, cw, flag));
                });
            }
        });
        Self { port, cut }
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    cut: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if cut.load(Ordering::SeqCst) {
            // Hold the connection open, forwarding nothing.
            std::future::pending::<()>().await;
        }
        let n = match tokio::time::timeout(Duration::from_millis(50), from.read(&mut buf)).await {
            Err(_) => continue,
            Ok(Ok(0) | Err(_)) => return,
            Ok(Ok(n)) => n,
        };
        if cut.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_leader_cut_off_from_the_api_server_then_it_stops_before_the_standby_starts() {
    let f = Fixture::new("le-cut").await;
    let (proxy, kubeconfig) = f.proxied_kubeconfig().await;
    let root = format!("/{}", unique_name("c"));
    let mut a = Operator::start_with_kubeconfig(f.env, &f.options("a", &root, "4s"), &kubeconfig)
        .unwrap_or_else(|e| panic!("operator a did not start: {e}"));
    until("a leading", WAIT, || leads(&a)).await;
    let b = f.operator(&f.options("b", &root, "4s"));
    f.create_example().await;
    f.wait_status("generation 1 published", &a, |s| published(s, 1))
        .await;

    let cut = Instant::now();
    proxy.cut();
    let a_stopped = until(
        "a stepping down after losing the API server",
        Duration::from_secs(10),
        || !a.is_running() || !leads(&a),
    )
    .await;
    let b_leads = until("b leading", WAIT, || leads(&b)).await;
    assert!(
        a_stopped < b_leads,
        "both led: a stopped {:?} after the cut, b led {:?} after it\n--- a's log ---\n{}",
        a_stopped - cut,
        b_leads - cut,
        a.log_tail(30)
    );
    // The renew deadline is two thirds of the 4s lease.
    assert!(
        a_stopped - cut < Duration::from_millis(2_667 + 700),
        "a stopped {:?} after the cut; its renew deadline is 2.67s",
        a_stopped - cut
    );
    eprintln!(
        "cut off: a stopped after {:?}, b led after {:?}",
        a_stopped - cut,
        b_leads - cut
    );
}
