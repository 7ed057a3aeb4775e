//! The real node of `make cluster`: pods from images built here run in containers and
//! become Ready, `kubectl logs` and `exec` go through the kubelet, a Service name resolves
//! through CoreDNS and its IP is reachable through kube-proxy, pods reach the API server and
//! ZooKeeper — and after teardown nothing the cluster created is left on the machine, also
//! when the process that owns the cluster is killed (the watchdog's teardown).
//!
//! The tests take turns ([`ONE_CLUSTER_AT_A_TIME`]): each compares the machine before and
//! after its own cluster, which another cluster starting meanwhile would blur.

use std::{
    collections::BTreeSet,
    fs,
    path::Path,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::Node as KubeNode;
use kube::Api;
use servicelog_e2e::{
    TestEnv, base_dir,
    chart::{self, ok},
    node::{self, BUSYBOX_IMAGE, NODE_NAME, netns_names},
    procs,
    tools::Tools,
};

static ONE_CLUSTER_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const POD_READY_TIMEOUT: &str = "120s";
const NETWORK_TIMEOUT: Duration = Duration::from_secs(60);
/// Where containerd 1.6 puts its shims' sockets, whatever its state directory.
const SHIM_SOCKETS: &str = "/run/containerd/s";

fn manifest(ns: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: hello, namespace: {ns}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
    - name: hello
      image: {BUSYBOX_IMAGE}
      imagePullPolicy: Never
      command: ["/bin/sh", "-c", "echo hello from the node; exec sleep 3600"]
      readinessProbe: {{exec: {{command: ["/bin/true"]}}, periodSeconds: 1}}
---
apiVersion: v1
kind: Pod
metadata: {{name: web, namespace: {ns}, labels: {{app: web}}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
    - name: web
      image: {BUSYBOX_IMAGE}
      imagePullPolicy: Never
      command: ["/bin/sh", "-c", "mkdir -p /tmp/www && echo served by web > /tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www"]
      ports: [{{containerPort: 8080}}]
      readinessProbe: {{tcpSocket: {{port: 8080}}, periodSeconds: 1}}
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: {ns}}}
spec:
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: 8080}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: {ns}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
    - name: client
      image: {BUSYBOX_IMAGE}
      imagePullPolicy: Never
      command: ["/bin/sleep", "3600"]
"#
    )
}

/// What the cluster could leave behind, as seen from the host.
#[derive(Debug, Default, PartialEq)]
struct Traces {
    processes: Vec<String>,
    mounts: Vec<String>,
    netns: Vec<String>,
    cgroups: Vec<String>,
}

fn traces(env_dir: &Path, netns_names: &BTreeSet<String>, cgroup: &str, sock: &Path) -> Traces {
    let env_dir = format!("{}/", env_dir.display());
    let sock = sock.display().to_string();
    let mut processes = Vec::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if pid.parse::<u32>().is_err() || pid == std::process::id().to_string() {
            continue;
        }
        let cmdline = fs::read(entry.path().join("cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        let cgroups = fs::read_to_string(entry.path().join("cgroup")).unwrap_or_default();
        if cmdline.contains(&env_dir)
            || cmdline.contains(&sock)
            || cgroups.contains(&format!("/{cgroup}/"))
        {
            processes.push(format!("{pid}: {cmdline}"));
        }
    }
    let mounts = node::mount_points()
        .into_iter()
        .filter(|m| {
            m.starts_with(&env_dir)
                || netns_names
                    .iter()
                    .any(|ns| *m == format!("/run/netns/{ns}"))
        })
        .collect();
    let netns = fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| netns_names.contains(name))
        .collect();
    let cgroups = node::cgroup_mounts()
        .into_iter()
        .map(|m| m.join(cgroup))
        .filter(|dir| dir.exists())
        .map(|dir| dir.display().to_string())
        .collect();
    Traces {
        processes,
        mounts,
        netns,
        cgroups,
    }
}

/// The sysctls the kubelet sets are back as they were, and no containerd shim socket of
/// the cluster is left.
fn assert_host_restored(
    sysctls_before: &[(&'static str, String)],
    shim_sockets_before: &BTreeSet<String>,
) {
    assert_eq!(
        node::kubelet_sysctls(),
        sysctls_before,
        "the sysctls the kubelet sets were not restored"
    );
    let shim_sockets: Vec<String> = dir_entries(SHIM_SOCKETS)
        .difference(shim_sockets_before)
        .cloned()
        .collect();
    assert!(
        shim_sockets.is_empty(),
        "containerd shim sockets left in {SHIM_SOCKETS}: {shim_sockets:?}"
    );
}

fn dir_entries(dir: &str) -> BTreeSet<String> {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_real_node_when_pods_run_then_logs_dns_and_services_work_and_teardown_leaves_nothing()
 {
    let _turn = ONE_CLUSTER_AT_A_TIME.lock().await;
    let sysctls_before = node::kubelet_sysctls();
    let netns_before = netns_names();
    let shim_sockets_before = dir_entries(SHIM_SOCKETS);

    let env = tokio::task::spawn_blocking(TestEnv::start_cluster)
        .await
        .expect("the start thread")
        .unwrap_or_else(|e| panic!("the cluster did not start: {e}"));
    let node = env.node().expect("a cluster has a node");
    eprintln!(
        "cluster started in {:.1}s (node {:.1}s); memory: {:?}",
        env.started_in().as_secs_f64(),
        node.started_in().as_secs_f64(),
        node.memory()
    );

    // Given the node as a kube client sees it.
    let nodes: Api<KubeNode> = Api::all(env.client().await.expect("client"));
    let kube_node = nodes.get(NODE_NAME).await.expect("the Node object");
    let ready = kube_node
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    assert!(ready, "node {NODE_NAME} is not Ready");

    // When pods from the busybox image built here are created.
    let ns = env.create_namespace("node").await.expect("namespace");
    let path = env.dir().join("node-test.yaml");
    fs::write(&path, manifest(&ns)).expect("writing the test manifest");
    ok(
        "kubectl apply",
        env.kubectl().args(["apply", "-f"]).arg(&path).output(),
    );
    let wait = env
        .kubectl()
        .args(["wait", "-n", &ns, "--for=condition=Ready"])
        .arg(format!("--timeout={POD_READY_TIMEOUT}"))
        .args(["pod/hello", "pod/web", "pod/client"])
        .output()
        .expect("kubectl wait");
    assert!(
        wait.status.success(),
        "timed out after {POD_READY_TIMEOUT} waiting for pods hello, web and client to be Ready: {}\n{}\n{}",
        String::from_utf8_lossy(&wait.stderr),
        ok(
            "kubectl get pods",
            env.kubectl()
                .args(["get", "pods", "-n", &ns, "-o", "wide"])
                .output()
        ),
        env.diagnostics()
    );

    // Then `kubectl logs` returns what the container printed.
    chart::until(
        &env,
        &[],
        "`kubectl logs hello` to show the container's output",
        Duration::from_secs(30),
        &["logs", "-n", &ns, "hello"],
        |out| out.contains("hello from the node"),
    );

    // And the Service name resolves through CoreDNS, from a pod.
    let service_ip = ok(
        "kubectl get service web",
        env.kubectl()
            .args(["get", "service", "web", "-n", &ns])
            .args(["-o", "jsonpath={.spec.clusterIP}"])
            .output(),
    );
    let fqdn = format!("web.{ns}.svc.cluster.local");
    chart::until(
        &env,
        &[],
        &format!("{fqdn} to resolve to {service_ip} through CoreDNS from pod client"),
        NETWORK_TIMEOUT,
        &["exec", "-n", &ns, "client", "--", "nslookup", &fqdn],
        |out| out.contains(&service_ip),
    );

    // And the Service IP reaches the web pod through kube-proxy. (A request by hand with
    // nc: Debian's static busybox `wget` crashes.)
    let get = |addr: &str| format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {addr}");
    chart::until(
        &env,
        &[],
        &format!("http://{service_ip}/ (Service web) to answer from pod client"),
        NETWORK_TIMEOUT,
        &[
            "exec",
            "-n",
            &ns,
            "client",
            "--",
            "sh",
            "-c",
            &get(&format!("{service_ip} 80")),
        ],
        |out| out.contains("served by web"),
    );

    // And pods reach the API server through the kubernetes Service (a plain HTTP request
    // to its TLS port gets Go's "HTTP request to an HTTPS server" answer) and ZooKeeper.
    chart::until(
        &env,
        &[],
        "the API server to answer through the kubernetes Service (10.96.0.1:443) from pod client",
        NETWORK_TIMEOUT,
        &[
            "exec",
            "-n",
            &ns,
            "client",
            "--",
            "sh",
            "-c",
            &get("10.96.0.1 443"),
        ],
        |out| out.contains("HTTPS server"),
    );
    let zk = env
        .zk_connect_for_pods()
        .expect("ZooKeeper's address for pods");
    let (zk_host, zk_port) = zk.split_once(':').expect("host:port");
    chart::until(
        &env,
        &[],
        &format!("ZooKeeper at {zk} to answer ruok from pod client"),
        NETWORK_TIMEOUT,
        &[
            "exec",
            "-n",
            &ns,
            "client",
            "--",
            "sh",
            "-c",
            &format!("echo ruok | nc -w 3 {zk_host} {zk_port}"),
        ],
        |out| out.contains("imok"),
    );

    // When the cluster is stopped.
    let env_dir = env.dir().to_owned();
    let cgroup = node.cgroup_name().to_owned();
    let sock = node.containerd_socket().to_owned();
    let ours: BTreeSet<String> = netns_names().difference(&netns_before).cloned().collect();
    assert!(
        ours.iter().any(|n| n.starts_with("cni-")) && ours.contains(node.netns().name()),
        "expected the node's namespace and the pods' cni-* namespaces in /run/netns, found {ours:?}"
    );
    let during = traces(&env_dir, &ours, &cgroup, &sock);
    assert!(
        !during.processes.is_empty() && !during.mounts.is_empty() && !during.cgroups.is_empty(),
        "the leftover check sees nothing while the cluster runs, so it would prove nothing: {during:?}"
    );
    tokio::task::spawn_blocking(move || env.stop())
        .await
        .expect("the stop thread");

    // Then no process, mount, network namespace or cgroup of it is left, and the kernel
    // settings the kubelet changed are back.
    let after = traces(&env_dir, &ours, &cgroup, &sock);
    assert_eq!(
        after,
        Traces::default(),
        "the cluster's teardown left these behind"
    );
    assert_host_restored(&sysctls_before, &shim_sockets_before);
}

/// `KEY='value'` lines of the node's record (`<env>/node.env`).
fn node_record(env_dir: &Path, key: &str) -> String {
    let text = fs::read_to_string(env_dir.join("node.env")).unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v.trim_matches('\'').to_owned())
        .unwrap_or_else(|| panic!("{key} is not in {}/node.env", env_dir.display()))
}

fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if check() {
            return true;
        }
        thread::sleep(Duration::from_millis(500));
    }
    eprintln!("gave up after {timeout:?} waiting for {what}");
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_cluster_with_a_pod_when_its_owner_is_killed_then_the_watchdog_leaves_nothing() {
    let _turn = ONE_CLUSTER_AT_A_TIME.lock().await;
    let sysctls_before = node::kubelet_sysctls();
    let netns_before = netns_names();
    let shim_sockets_before = dir_entries(SHIM_SOCKETS);

    // Given `make cluster`'s process (servicelog-testenv --cluster) with a pod running.
    let base = base_dir().join(format!("killed-{}", std::process::id()));
    fs::create_dir_all(&base).expect("creating the cluster's base dir");
    let log = fs::File::create(base.join("cluster.log")).expect("creating cluster.log");
    let mut owner = Command::new(env!("CARGO_BIN_EXE_servicelog-testenv"))
        .arg("--cluster")
        .env("SERVICELOG_CLUSTER_BASE", &base)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("a log handle"))
        .stderr(log)
        .spawn()
        .expect("starting servicelog-testenv --cluster");
    let started = wait_until("the cluster's env file", Duration::from_secs(180), || {
        base.join("env").exists() || matches!(owner.try_wait(), Ok(Some(_)))
    });
    assert!(
        started && base.join("env").exists(),
        "servicelog-testenv --cluster did not write {}/env:\n{}",
        base.display(),
        fs::read_to_string(base.join("cluster.log")).unwrap_or_default()
    );
    let env_dir = base.join("current");
    let tools = Tools::locate().expect("the control plane's tools");
    let kubectl = |args: &[&str]| {
        Command::new(tools.path("kubectl"))
            .env("KUBECONFIG", env_dir.join("kubeconfig"))
            .args(args)
            .output()
    };
    ok(
        "kubectl run sleeper",
        kubectl(&[
            "run",
            "sleeper",
            &format!("--image={BUSYBOX_IMAGE}"),
            "--image-pull-policy=Never",
            "--command",
            "--",
            "sleep",
            "3600",
        ]),
    );
    ok(
        "waiting up to 120s for pod sleeper to be Ready",
        kubectl(&[
            "wait",
            "--for=condition=Ready",
            "pod/sleeper",
            "--timeout=120s",
        ]),
    );
    let netns = node_record(&env_dir, "NETNS");
    let cgroup = node_record(&env_dir, "CGROUP");
    let sock = std::path::PathBuf::from(node_record(&env_dir, "CONTAINERD_SOCK"));
    let ours: BTreeSet<String> = netns_names().difference(&netns_before).cloned().collect();
    assert!(
        ours.contains(&netns) && ours.iter().any(|n| n.starts_with("cni-")),
        "expected the node's namespace {netns} and the pod's cni-* namespace, found {ours:?}"
    );
    let during = traces(&env_dir, &ours, &cgroup, &sock);
    assert!(
        !during.processes.is_empty() && !during.mounts.is_empty() && !during.cgroups.is_empty(),
        "the leftover check sees nothing while the cluster runs: {during:?}"
    );

    // When the owner is killed without a chance to tear anything down.
    owner.kill().expect("SIGKILL to servicelog-testenv");
    let _ = owner.wait();

    // Then the watchdog stops every process and removes the pods, mounts, namespaces and
    // cgroups, and restores the sysctls.
    let empty = Traces::default();
    wait_until("the watchdog's teardown", Duration::from_secs(60), || {
        traces(&env_dir, &ours, &cgroup, &sock) == empty
    });
    assert_eq!(
        traces(&env_dir, &ours, &cgroup, &sock),
        empty,
        "60s after its owner was killed, the cluster left these behind"
    );
    assert_host_restored(&sysctls_before, &shim_sockets_before);
    if procs::mount_under(&base).is_none() {
        let _ = fs::remove_dir_all(&base);
    }
}
