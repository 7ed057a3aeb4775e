//! What the tests on the real node of `make cluster` share: kubectl and helm run against
//! the cluster and checked, the images `make images` built loaded into the node, and the
//! chart installed with `helm install --wait`. The tests panic on a failure here (it is
//! their setup), with a message naming the command and its output.

use std::{
    io,
    path::Path,
    process::{Command, Output},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{TestEnv, unique_name, workspace_dir};

/// The release name every test on the node installs the chart as.
pub const RELEASE: &str = "servicelog";
/// The namespace of the release.
pub const NAMESPACE: &str = "servicelog-system";
/// The image of the HTTP receiver pod (`servicelog-receiver`), loaded by
/// [`load_receiver_image`].
pub const RECEIVER_IMAGE: &str = "servicelog.test/receiver:1";

/// Makes the tests of one file take turns on their shared cluster and release: one
/// restarts the agent or cuts the pods off ZooKeeper, which the others would feel. (Each
/// test file is a process of its own, with its own lock.)
pub fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The stdout of a command that must succeed; panics naming `what` with its output.
pub fn ok(what: &str, out: io::Result<Output>) -> String {
    let out = out.unwrap_or_else(|e| panic!("{what}: could not run: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

pub fn kubectl(env: &TestEnv, args: &[&str]) -> String {
    ok(
        &format!("kubectl {}", args.join(" ")),
        env.kubectl().args(args).output(),
    )
}

pub fn kubectl_json(env: &TestEnv, args: &[&str]) -> Value {
    let text = kubectl(env, &[args, &["-o", "json"]].concat());
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("kubectl {args:?}: not JSON: {e}"))
}

/// `kubectl apply` of `manifest`, whatever its outcome (a test may expect a refusal).
pub fn apply(env: &TestEnv, manifest: &str) -> Output {
    let file = env.dir().join(format!("{}.yaml", unique_name("apply")));
    std::fs::write(&file, manifest).expect("writing a manifest");
    env.kubectl()
        .args(["apply", "-f"])
        .arg(&file)
        .output()
        .expect("running kubectl apply")
}

pub fn apply_ok(env: &TestEnv, manifest: &str) {
    ok("kubectl apply", Ok(apply(env, manifest)));
}

/// Runs `kubectl args` until `check` accepts its stdout, and returns it; on timeout fails
/// naming `what` with the last output, the log of each chart component in `logs` (its
/// `app.kubernetes.io/component` label) and the environment's diagnostics.
pub fn until(
    env: &TestEnv,
    logs: &[&str],
    what: &str,
    timeout: Duration,
    args: &[&str],
    check: impl Fn(&str) -> bool,
) -> String {
    let start = Instant::now();
    loop {
        let out = env.kubectl().args(args).output();
        let (stdout, stderr) = match &out {
            Ok(o) => (
                String::from_utf8_lossy(&o.stdout).into_owned(),
                String::from_utf8_lossy(&o.stderr).into_owned(),
            ),
            Err(e) => (String::new(), e.to_string()),
        };
        if out.as_ref().is_ok_and(|o| o.status.success()) && check(&stdout) {
            return stdout;
        }
        if start.elapsed() > timeout {
            let components: String = logs
                .iter()
                .map(|c| format!("--- {c} ---\n{}\n", component_logs(env, c)))
                .collect();
            panic!(
                "timed out after {timeout:?} waiting for {what}; last `kubectl {}`:\n{}\n{stderr}\n{components}{}",
                args.join(" "),
                tail(&stdout, 30),
                env.diagnostics()
            );
        }
        thread::sleep(Duration::from_millis(500));
    }
}

/// The last 30 log lines of the release's pods of one component, prefixed with the pod.
pub fn component_logs(env: &TestEnv, component: &str) -> String {
    env.kubectl()
        .args(["logs", "-n", NAMESPACE, "--tail=30", "--prefix", "-l"])
        .arg(format!("app.kubernetes.io/component={component}"))
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// [`TestEnv::create_namespace`] for a test without a runtime of its own.
pub fn new_namespace(env: &TestEnv, prefix: &str) -> String {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(env.create_namespace(prefix))
        .unwrap_or_else(|e| panic!("creating a namespace: {e}"))
}

/// The archive `make images` built for `name` (`target/images/<name>.tar`); panics when it
/// is missing, naming the target that builds it.
pub fn image_archive(name: &str) -> std::path::PathBuf {
    let archive = workspace_dir().join(format!("target/images/{name}.tar"));
    assert!(
        archive.is_file(),
        "{} is missing: run `make images-build` (make test does)",
        archive.display()
    );
    archive
}

/// Loads archives into the cluster's node.
pub fn load_images<'a>(env: &TestEnv, archives: impl IntoIterator<Item = &'a Path>) {
    let node = env.node().expect("a cluster has a node");
    for archive in archives {
        node.load_image(archive)
            .unwrap_or_else(|e| panic!("loading {}: {e}", archive.display()));
    }
}

/// Builds [`RECEIVER_IMAGE`] around the `servicelog-receiver` binary (a test has its path
/// as `env!("CARGO_BIN_EXE_servicelog-receiver")`) and loads it into the node.
pub fn load_receiver_image(env: &TestEnv, receiver_bin: &str) {
    let receiver = env.dir().join("receiver.tar");
    ok(
        "building the receiver image",
        Command::new("bash")
            .arg(workspace_dir().join("e2e/tools/images/receiver-image.sh"))
            .arg(&receiver)
            .arg(receiver_bin)
            .output(),
    );
    load_images(env, [receiver.as_path()]);
}

/// `helm install --wait` of `charts/servicelog` as [`RELEASE`] in [`NAMESPACE`] with
/// `--set` of each of `sets`; returns how long it took.
pub fn helm_install(env: &TestEnv, timeout: &str, sets: &[String]) -> Duration {
    let started = Instant::now();
    let mut helm = env.helm();
    helm.args(["install", RELEASE])
        .arg(workspace_dir().join("charts/servicelog"))
        .args(["--namespace", NAMESPACE, "--create-namespace"])
        .args(["--wait", "--timeout", timeout]);
    for set in sets {
        helm.args(["--set", set]);
    }
    ok(&format!("helm install --wait {sets:?}"), helm.output());
    started.elapsed()
}

/// The `--set`s that point the chart at the environment's ZooKeeper (the node's IP as pods
/// reach it) instead of its embedded one.
pub fn environment_zookeeper(env: &TestEnv) -> Vec<String> {
    let zk = env
        .zk_connect_for_pods()
        .expect("a cluster's ZooKeeper has an address for pods");
    vec![
        "zookeeper.embedded.enabled=false".into(),
        format!("zookeeper.connect={zk}"),
    ]
}

/// The host PID of a running container (from `containerd://<id>`), through the node's
/// containerd: the test runs on the machine, so `/proc/<pid>/root` is the container's
/// file system as its process sees it.
pub fn container_pid(env: &TestEnv, container_id: &str) -> u32 {
    let id = container_id
        .strip_prefix("containerd://")
        .unwrap_or(container_id);
    let out = ok(
        "ctr tasks ls",
        Command::new("ctr")
            .arg("-a")
            .arg(env.node().expect("a node").containerd_socket())
            .args(["-n", "k8s.io", "tasks", "ls"])
            .output(),
    );
    out.lines()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            (f.next() == Some(id)).then(|| f.next()?.parse().ok())?
        })
        .unwrap_or_else(|| panic!("container {id} has no running task:\n{out}"))
}
