//! The node agent (issue #22) as a user runs it, on the real node of `make cluster`: the
//! chart installed with `agent.enabled` (its DaemonSet reading the node kubelet's pod log
//! directory), a Deployment that prints numbered JSON lines to stdout, and a ServiceLog
//! whose `containerLogs` source routes them by rules to an HTTP receiver pod (the agent's
//! root file system is read-only, and `kubectl logs receiver` shows each delivered line).
//!
//! Every error line goes to the receiver under every rule of the story, so the numbers a
//! pod printed must arrive each exactly once, from 1 on, through a live rule change and a
//! restart of the agent.
//!
//! Like `on_the_node.rs`, the tests share one cluster and one release (`installed`), and
//! ZooKeeper is the environment's. The node's kubelet rotates container logs at 1 MiB
//! (checked every 3 s), so a pod printing fast has its files rotated several times while
//! the agent reads them; the receiver's own output rotates too, so what it received is
//! read from all of its files on the node (rotated and compressed ones included), not from
//! `kubectl logs`, which shows only the live file.

use std::{
    collections::BTreeMap,
    io::Read,
    path::PathBuf,
    process::Command,
    sync::OnceLock,
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use servicelog_e2e::{
    TestEnv,
    chart::{
        self, NAMESPACE, RECEIVER_IMAGE, apply, apply_ok, image_archive, kubectl, new_namespace,
        ok, one_at_a_time,
    },
    node::{BUSYBOX_IMAGE, LogRotation},
};

const AGENT_SELECTOR: &str = "app.kubernetes.io/component=agent";
/// The chart components whose logs a timed-out wait prints.
const LOGS: &[&str] = &["agent"];
const ROLLOUT: Duration = Duration::from_secs(180);
const ROUTING: Duration = Duration::from_secs(60);

static INSTALLED: OnceLock<&'static TestEnv> = OnceLock::new();

/// The cluster with the images loaded and the chart installed with the agent, whose
/// hostPaths are the node's: its kubelet's pod log directory and a state directory inside
/// the environment (removed with it).
fn installed() -> &'static TestEnv {
    INSTALLED.get_or_init(|| {
        servicelog_e2e::node::rotate_container_logs(LogRotation {
            max_size: "1Mi".into(),
            // Nothing is deleted during the tests: the receiver's files are the evidence.
            max_files: 100,
            monitor_interval: "3s".into(),
        });
        let env =
            TestEnv::shared_cluster().unwrap_or_else(|e| panic!("the cluster did not start: {e}"));
        let archives =
            ["operator", "sidecar", "agent"].map(|c| image_archive(&format!("servicelog-{c}")));
        chart::load_images(env, archives.iter().map(PathBuf::as_path));
        chart::load_receiver_image(env, env!("CARGO_BIN_EXE_servicelog-receiver"));

        let pod_logs = env
            .node()
            .expect("a cluster has a node")
            .dir()
            .join("pod-logs");
        let state = env.dir().join("agent-state");
        let mut sets = chart::environment_zookeeper(env);
        sets.extend([
            "agent.enabled=true".into(),
            format!("agent.podLogsDir={}", pod_logs.display()),
            format!("agent.stateDir={}", state.display()),
        ]);
        chart::helm_install(env, "180s", &sets);
        env
    })
}

/// Errors always go to the receiver; info lines too when `info_to_receiver`; the rest is
/// dropped (`defaultTo: []`).
fn servicelog(ns: &str, info_to_receiver: bool) -> String {
    let level = if info_to_receiver { "info" } else { "error" };
    format!(
        r#"apiVersion: servicelog.io/v1alpha1
kind: ServiceLog
metadata: {{name: stdout-app, namespace: {ns}}}
spec:
  selector: {{matchLabels: {{app: stdout-app}}}}
  sources:
    - name: app
      containerLogs: {{containers: [app], streams: [stdout], format: json}}
  sinks:
    - name: receiver
      http:
        url: http://receiver.{ns}.svc.cluster.local:8080/ingest
        encoding: json_lines
        batch: {{timeout: 200ms}}
  rules:
    - name: to-receiver
      when: {{level: {{atLeast: {level}}}}}
      to: [receiver]
  defaultTo: []
"#
    )
}

fn receiver(ns: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: receiver, namespace: {ns}, labels: {{app: receiver}}}}
spec:
  terminationGracePeriodSeconds: 1
  securityContext: {{runAsNonRoot: true, runAsUser: 1000}}
  containers:
    - name: receiver
      image: {RECEIVER_IMAGE}
      imagePullPolicy: Never
      ports: [{{containerPort: 8080}}]
      readinessProbe: {{tcpSocket: {{port: 8080}}, periodSeconds: 1}}
---
apiVersion: v1
kind: Service
metadata: {{name: receiver, namespace: {ns}}}
spec:
  selector: {{app: receiver}}
  ports: [{{port: 8080, targetPort: 8080}}]
"#
    )
}

/// Prints an info and an error line to stdout five times a second, numbered from 1.
fn app(ns: &str, replicas: u32) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: stdout-app, namespace: {ns}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: stdout-app}}}}
  template:
    metadata:
      labels: {{app: stdout-app}}
      annotations: {{servicelog.io/inject: stdout-app}}
    spec:
      terminationGracePeriodSeconds: 1
      securityContext: {{runAsNonRoot: true, runAsUser: 1000}}
      containers:
        - name: app
          image: {BUSYBOX_IMAGE}
          imagePullPolicy: Never
          command:
            - /bin/sh
            - -c
            - |
              i=0
              while true; do
                i=$((i+1))
                echo "{{\"level\":\"info\",\"msg\":\"agent-info $HOSTNAME $i\"}}"
                echo "{{\"level\":\"error\",\"msg\":\"agent-error $HOSTNAME $i\"}}"
                sleep 0.2
              done
"#
    )
}

fn deployment_pods(env: &TestEnv, ns: &str) -> Vec<Value> {
    let text = kubectl(
        env,
        &[
            "get",
            "pods",
            "-n",
            ns,
            "-l",
            "app=stdout-app",
            "-o",
            "json",
        ],
    );
    let list: Value = serde_json::from_str(&text).expect("kubectl get pods -o json");
    list["items"].as_array().cloned().unwrap_or_default()
}

fn name(pod: &Value) -> String {
    pod["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// The receiver container's log files on the node: the live one, the rotated ones and the
/// compressed ones (a rotated file and its `.gz` both there, while the kubelet compresses
/// it, count once).
fn receiver_files(env: &TestEnv, ns: &str) -> Vec<PathBuf> {
    let root = env.node().expect("a node").dir().join("pod-logs");
    let prefix = format!("{ns}_receiver_");
    let Some(pod_dir) = std::fs::read_dir(&root).ok().and_then(|d| {
        d.flatten()
            .find(|e| e.file_name().to_string_lossy().starts_with(&prefix))
    }) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(pod_dir.path().join("receiver"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.retain(|f| !f.to_string_lossy().ends_with(".tmp"));
    let names: Vec<String> = files
        .iter()
        .map(|f| f.to_string_lossy().into_owned())
        .collect();
    files.retain(|f| {
        let name = f.to_string_lossy();
        name.strip_suffix(".gz")
            .is_none_or(|plain| !names.iter().any(|n| n == plain))
    });
    files.sort();
    files
}

/// What the receiver printed (each line a body line it took), from its files on the node.
/// Read again when a rotation renamed a file meanwhile.
fn receiver_output(env: &TestEnv, ns: &str) -> String {
    loop {
        let files = receiver_files(env, ns);
        let mut text = String::new();
        for file in &files {
            let Ok(mut f) = std::fs::File::open(file) else {
                continue;
            };
            let mut bytes = Vec::new();
            let read = if file.to_string_lossy().ends_with(".gz") {
                flate2::read::GzDecoder::new(f).read_to_end(&mut bytes)
            } else {
                f.read_to_end(&mut bytes)
            };
            if read.is_err() {
                continue;
            }
            for record in String::from_utf8_lossy(&bytes).lines() {
                // `<time> <stream> <tag> <message>`: the receiver's lines are short, never
                // split.
                if let Some(message) = record.splitn(4, ' ').nth(3) {
                    text.push_str(message);
                    text.push('\n');
                }
            }
        }
        if receiver_files(env, ns) == files {
            return text;
        }
    }
}

/// How many times the receiver got each number of `kind` (`agent-error`, `agent-info`)
/// from `pod`.
fn received(env: &TestEnv, ns: &str, kind: &str, pod: &str) -> BTreeMap<u64, usize> {
    let logs = receiver_output(env, ns);
    let prefix = format!("{kind} {pod} ");
    let mut seen = BTreeMap::new();
    for line in logs.lines() {
        let Ok(event) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let Some(n) = event["msg"]
            .as_str()
            .and_then(|m| m.strip_prefix(&prefix))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        *seen.entry(n).or_default() += 1;
    }
    seen
}

/// Every number from 1 to the highest one received, each exactly once.
fn assert_exactly_once(seen: &BTreeMap<u64, usize>, what: &str) {
    let max = seen.keys().next_back().copied().unwrap_or(0);
    let missing: Vec<u64> = (1..=max).filter(|n| !seen.contains_key(n)).collect();
    let twice: Vec<(&u64, &usize)> = seen.iter().filter(|(_, c)| **c > 1).collect();
    assert!(
        missing.is_empty() && twice.is_empty(),
        "{what}: up to {max}, missing {missing:?}, more than once {twice:?}"
    );
}

/// Waits until the receiver holds `pod`'s error lines up to at least `at_least`.
fn errors_reach(env: &TestEnv, ns: &str, pod: &str, at_least: u64) {
    let start = Instant::now();
    loop {
        let seen = received(env, ns, "agent-error", pod);
        if seen.keys().next_back().is_some_and(|max| *max >= at_least) {
            return;
        }
        assert!(
            start.elapsed() < ROUTING,
            "timed out after {ROUTING:?} waiting for {pod}'s error line {at_least} at the receiver (has up to {:?}); agent:\n{}",
            seen.keys().next_back(),
            chart::component_logs(env, "agent")
        );
        thread::sleep(Duration::from_millis(500));
    }
}

/// Waits until the ServiceLog's status counts `pods` pods acking its current spec.
fn applied_everywhere(env: &TestEnv, ns: &str, pods: usize) {
    chart::until(
        env,
        LOGS,
        &format!("ServiceLog stdout-app to be applied by {pods}/{pods} pods at its generation"),
        ROUTING,
        &["get", "servicelog", "stdout-app", "-n", ns, "-o", "json"],
        |text| {
            let Ok(slog) = serde_json::from_str::<Value>(text) else {
                return false;
            };
            slog["status"]["observedGeneration"] == slog["metadata"]["generation"]
                && slog["status"]["pods"]["applied"] == pods
                && slog["status"]["pods"]["matched"] == pods
        },
    );
}

fn agent_pod(env: &TestEnv) -> String {
    kubectl(
        env,
        &[
            "get",
            "pods",
            "-n",
            NAMESPACE,
            "-l",
            AGENT_SELECTOR,
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ],
    )
}

/// Brings the story up in `ns`: the receiver, the ServiceLog (errors only), the Deployment;
/// returns its pods once they run.
fn story(env: &TestEnv, ns: &str, replicas: u32) -> Vec<String> {
    apply_ok(env, &receiver(ns));
    apply_ok(env, &servicelog(ns, false));
    apply_ok(env, &app(ns, replicas));
    ok(
        "kubectl rollout status",
        env.kubectl()
            .args(["rollout", "status", "deployment/stdout-app", "-n", ns])
            .args(["--timeout=180s"])
            .output(),
    );
    chart::until(
        env,
        LOGS,
        "the receiver to be Ready",
        ROLLOUT,
        &[
            "get",
            "pod",
            "receiver",
            "-n",
            ns,
            "-o",
            "jsonpath={.status.containerStatuses[0].ready}",
        ],
        |ready| ready == "true",
    );
    deployment_pods(env, ns).iter().map(name).collect()
}

#[test]
fn given_the_agent_on_the_node_when_a_deployment_prints_to_stdout_then_its_lines_are_routed_once_through_a_live_rule_change_and_an_agent_restart()
 {
    let env = installed();
    let _turn = one_at_a_time();
    let ns = new_namespace(env, "agent-story");
    let pods = story(env, &ns, 2);
    assert_eq!(pods.len(), 2, "the Deployment's pods: {pods:?}");

    // The pods got no sidecar (their ServiceLog has only containerLogs), only the mark.
    for pod in deployment_pods(env, &ns) {
        let pod_name = name(&pod);
        let containers: Vec<&str> = pod["spec"]["containers"]
            .as_array()
            .map(|c| c.iter().filter_map(|c| c["name"].as_str()).collect())
            .unwrap_or_default();
        assert_eq!(containers, ["app"], "{pod_name}: {}", pod["spec"]);
        assert!(
            pod["spec"]["initContainers"].is_null(),
            "{pod_name} has init containers: {}",
            pod["spec"]["initContainers"]
        );
        assert_eq!(
            pod["metadata"]["annotations"]["servicelog.io/injected"], "stdout-app",
            "{pod_name}: {}",
            pod["metadata"]["annotations"]
        );
    }

    // Errors reach the receiver from the first line on; info lines do not (yet).
    for pod in &pods {
        errors_reach(env, &ns, pod, 10);
        assert_exactly_once(&received(env, &ns, "agent-error", pod), pod);
        let info = received(env, &ns, "agent-info", pod);
        assert!(
            info.is_empty(),
            "{pod}: info lines before the rule said so: {info:?}"
        );
    }
    applied_everywhere(env, &ns, 2);

    // When the rule is changed live, then the agent acks it for each pod and info lines
    // arrive too, each once.
    let old_hash = kubectl(
        env,
        &[
            "get",
            "servicelog",
            "stdout-app",
            "-n",
            &ns,
            "-o",
            "jsonpath={.status.configHash}",
        ],
    );
    apply_ok(env, &servicelog(&ns, true));
    applied_everywhere(env, &ns, 2);
    let new_hash = kubectl(
        env,
        &[
            "get",
            "servicelog",
            "stdout-app",
            "-n",
            &ns,
            "-o",
            "jsonpath={.status.configHash}",
        ],
    );
    assert_ne!(
        old_hash, new_hash,
        "the rule change published no new config"
    );
    for pod in &pods {
        chart::until(
            env,
            LOGS,
            &format!("{pod}'s info lines at the receiver after the rule change"),
            ROUTING,
            &["logs", "-n", &ns, "receiver"],
            |logs| logs.contains(&format!("agent-info {pod} ")),
        );
    }

    // When the agent's pod is deleted, then its successor goes on from the checkpoints:
    // nothing lost, nothing twice.
    let agent = agent_pod(env);
    let before: BTreeMap<&String, u64> = pods
        .iter()
        .map(|p| {
            let max = received(env, &ns, "agent-error", p)
                .keys()
                .next_back()
                .copied()
                .unwrap_or(0);
            (p, max)
        })
        .collect();
    kubectl(
        env,
        &["delete", "pod", "-n", NAMESPACE, &agent, "--wait=true"],
    );
    chart::until(
        env,
        LOGS,
        "a new agent pod to be Ready",
        ROLLOUT,
        &[
            "get",
            "pods",
            "-n",
            NAMESPACE,
            "-l",
            AGENT_SELECTOR,
            "-o",
            "jsonpath={range .items[*]}{.metadata.name} {.status.containerStatuses[0].ready}{end}",
        ],
        |out| matches!(out.split_whitespace().collect::<Vec<_>>().as_slice(), [name, "true"] if *name != agent),
    );
    for pod in &pods {
        // Lines printed while no agent ran, and after.
        errors_reach(env, &ns, pod, before[pod] + 25);
        assert_exactly_once(&received(env, &ns, "agent-error", pod), pod);
        let info = received(env, &ns, "agent-info", pod);
        let twice: Vec<_> = info.iter().filter(|(_, c)| **c > 1).collect();
        assert!(
            twice.is_empty(),
            "{pod}: info lines more than once: {twice:?}"
        );
    }
    applied_everywhere(env, &ns, 2);
}

#[test]
fn given_a_baseline_enforced_namespace_when_a_pod_prints_to_stdout_then_the_agent_serves_it() {
    let env = installed();
    let _turn = one_at_a_time();
    let ns = new_namespace(env, "agent-baseline");
    kubectl(
        env,
        &[
            "label",
            "namespace",
            &ns,
            "pod-security.kubernetes.io/enforce=baseline",
        ],
    );
    // The namespace does enforce baseline: a hostPath pod (what a sidecar reading the
    // kubelet's files would need) is refused.
    let refused = apply(
        env,
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: hostpath, namespace: {ns}}}
spec:
  containers: [{{name: c, image: {BUSYBOX_IMAGE}, imagePullPolicy: Never, command: [sleep, "3600"],
    volumeMounts: [{{name: logs, mountPath: /var/log/pods, readOnly: true}}]}}]
  volumes: [{{name: logs, hostPath: {{path: /var/log/pods}}}}]
"#
        ),
    );
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && stderr.contains("baseline"),
        "expected baseline to refuse a hostPath pod, got ({}): {stderr}",
        refused.status
    );

    let pods = story(env, &ns, 1);
    assert_eq!(pods.len(), 1, "the Deployment's pods: {pods:?}");
    errors_reach(env, &ns, &pods[0], 10);
    assert_exactly_once(&received(env, &ns, "agent-error", &pods[0]), &pods[0]);
    applied_everywhere(env, &ns, 1);
}

/// Prints `lines` numbered error lines (~250 bytes a record) as fast as a shell loop
/// does, in bursts of 100 every 0.1 s, then sleeps.
fn fast_app(ns: &str, lines: u64) -> String {
    let pad = "x".repeat(150);
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: stdout-app, namespace: {ns}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: stdout-app}}}}
  template:
    metadata:
      labels: {{app: stdout-app}}
      annotations: {{servicelog.io/inject: stdout-app}}
    spec:
      terminationGracePeriodSeconds: 1
      securityContext: {{runAsNonRoot: true, runAsUser: 1000}}
      containers:
        - name: app
          image: {BUSYBOX_IMAGE}
          imagePullPolicy: Never
          command:
            - /bin/sh
            - -c
            - |
              i=0
              while [ $i -lt {lines} ]; do
                j=0
                while [ $j -lt 100 ]; do
                  i=$((i+1)); j=$((j+1))
                  echo "{{\"level\":\"error\",\"msg\":\"agent-error $HOSTNAME $i\",\"pad\":\"{pad}\"}}"
                done
                sleep 0.1
              done
              sleep 3600
"#
    )
}

/// The files of `pod`'s container `app` on the node whose names say the kubelet rotated
/// them (`0.log.<time>`, and `.gz` once compressed).
fn rotated_files(env: &TestEnv, ns: &str, pod: &str) -> Vec<String> {
    let root = env.node().expect("a node").dir().join("pod-logs");
    let prefix = format!("{ns}_{pod}_");
    std::fs::read_dir(&root)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .flat_map(|e| {
            std::fs::read_dir(e.path().join("app"))
                .into_iter()
                .flatten()
        })
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".log.") && !n.ends_with(".tmp"))
        .collect()
}

/// Waits until the kubelet has rotated `pod`'s log at least `times` times; the rotated
/// files' names.
fn rotations(env: &TestEnv, ns: &str, pod: &str, times: usize) -> Vec<String> {
    let start = Instant::now();
    loop {
        let rotated = rotated_files(env, ns, pod);
        if rotated.len() >= times {
            return rotated;
        }
        assert!(
            start.elapsed() < ROUTING,
            "timed out after {ROUTING:?} waiting for the kubelet to rotate {pod}'s log {times} times: {rotated:?}"
        );
        thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn given_a_pod_printing_fast_when_the_kubelet_rotates_its_log_and_the_agent_is_killed_then_every_line_arrives_and_duplicates_are_bounded()
 {
    const LINES: u64 = 30_000;
    // What the agent may send again after a SIGKILL: the batches in flight and what was
    // acknowledged since the last checkpoint write (every 100 ms or 1 MiB).
    const DUPLICATES_BOUND: usize = 2_000;
    let env = installed();
    let _turn = one_at_a_time();
    let ns = new_namespace(env, "agent-rotation");
    apply_ok(env, &receiver(&ns));
    apply_ok(env, &servicelog(&ns, false));
    apply_ok(env, &fast_app(&ns, LINES));
    ok(
        "kubectl rollout status",
        env.kubectl()
            .args(["rollout", "status", "deployment/stdout-app", "-n", &ns])
            .args(["--timeout=180s"])
            .output(),
    );
    let pods: Vec<String> = deployment_pods(env, &ns).iter().map(name).collect();
    let [pod] = pods.as_slice() else {
        panic!("one pod expected: {pods:?}");
    };
    let started = Instant::now();

    // When the kubelet rotates the pod's log (1 MiB, ~4 s of its output) while the agent
    // reads it, then what arrived so far is every line once: at least 7,000 lines, all of
    // them from the two rotated files (2 MiB of ~290-byte records).
    let rotated_before_kill = rotations(env, &ns, pod, 2);
    errors_reach(env, &ns, pod, 7_000);
    assert_exactly_once(
        &received(env, &ns, "agent-error", pod),
        &format!("{pod} across {} rotations", rotated_before_kill.len()),
    );

    // When the agent is killed (SIGKILL: no shutdown, no final checkpoint) mid-stream,
    // then its restarted container goes on from the checkpoints: nothing lost, and what
    // is sent twice is bounded.
    let agent = agent_pod(env);
    let container = kubectl(
        env,
        &[
            "get",
            "pod",
            "-n",
            NAMESPACE,
            &agent,
            "-o",
            "jsonpath={.status.containerStatuses[0].containerID}",
        ],
    );
    let id = container
        .strip_prefix("containerd://")
        .unwrap_or_else(|| panic!("a containerd container id: {container:?}"));
    let node = env.node().expect("a node");
    ok(
        "ctr task kill -s SIGKILL (the agent's container)",
        Command::new("ctr")
            .arg("-a")
            .arg(node.containerd_socket())
            .args(["-n", "k8s.io", "task", "kill", "-s", "SIGKILL", id])
            .output(),
    );
    let killed_at = received(env, &ns, "agent-error", pod)
        .keys()
        .next_back()
        .copied()
        .unwrap_or(0);
    chart::until(
        env,
        LOGS,
        "the agent's container restarted after the SIGKILL and Ready",
        ROLLOUT,
        &[
            "get",
            "pod",
            "-n",
            NAMESPACE,
            &agent,
            "-o",
            "jsonpath={.status.containerStatuses[0].restartCount} {.status.containerStatuses[0].ready}",
        ],
        |out| matches!(out.split_whitespace().collect::<Vec<_>>().as_slice(), [n, "true"] if *n != "0"),
    );
    let deadline = Instant::now() + Duration::from_secs(180);
    let seen = loop {
        let seen = received(env, &ns, "agent-error", pod);
        if seen.len() as u64 >= LINES {
            break seen;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {pod}'s {LINES} lines at the receiver (has {}, up to {:?}); agent:\n{}",
            seen.len(),
            seen.keys().next_back(),
            chart::component_logs(env, "agent")
        );
        thread::sleep(Duration::from_secs(1));
    };
    let took = started.elapsed();
    let missing: Vec<u64> = (1..=LINES).filter(|n| !seen.contains_key(n)).collect();
    let duplicates: usize = seen.values().map(|c| c - 1).sum();
    let twice: Vec<u64> = seen
        .iter()
        .filter(|(_, c)| **c > 1)
        .map(|(n, _)| *n)
        .collect();
    let rotated = rotated_files(env, &ns, pod);
    eprintln!(
        "{pod}: {LINES} lines in {took:?} across {} rotations of its log; SIGKILL at line ~{killed_at}; {duplicates} sent twice ({:?}..={:?})",
        rotated.len(),
        twice.first(),
        twice.last()
    );
    assert!(
        missing.is_empty(),
        "{pod}: lines lost across the rotations and the SIGKILL: {} missing, first {:?}",
        missing.len(),
        &missing[..missing.len().min(20)]
    );
    assert!(
        seen.keys().all(|n| (1..=LINES).contains(n)),
        "{pod}: numbers it never printed"
    );
    assert!(
        duplicates <= DUPLICATES_BOUND,
        "{pod}: {duplicates} lines sent twice after the SIGKILL (bound {DUPLICATES_BOUND}): {:?}..={:?}",
        twice.first(),
        twice.last()
    );
    assert!(
        rotated.len() >= 4,
        "the kubelet rotated {pod}'s log at least 4 times: {rotated:?}"
    );
}
