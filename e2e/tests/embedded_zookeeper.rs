//! The chart's embedded ZooKeeper, run for real on the node of `make cluster`: the image
//! `make images` builds from Debian's ZooKeeper (no registry), the StatefulSet installed by
//! `helm install --wait` with its data in an emptyDir (the node has no volume provisioner),
//! the operator and an injected sidecar connected to it through its headless Service, and
//! after teardown nothing of the cluster left on the machine.
//!
//! A cluster of its own, not the one `on_the_node.rs` shares: its ZooKeeper is the
//! environment's, and the teardown checked here is this test's.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use serde_json::Value;
use servicelog_e2e::{
    TestEnv,
    chart::{self, NAMESPACE, apply_ok, container_pid, image_archive, kubectl, kubectl_json, ok},
    node::{self, BUSYBOX_IMAGE, netns_names},
    unique_name,
};

const ZK_POD: &str = "servicelog-zookeeper-0";
/// The uid and gid of the chart's zookeeper.embedded.podSecurityContext.
const ZK_UID: u32 = 1000;
/// The chart components whose logs a timed-out wait prints.
const LOGS: &[&str] = &["zookeeper", "operator"];
const ROLLOUT: Duration = Duration::from_secs(180);
const ROUTING: Duration = Duration::from_secs(60);

/// The reference `make images` gave the ZooKeeper archive (its OCI index's
/// io.containerd.image.name), split into the chart's repository and tag.
fn archive_reference(archive: &Path) -> (String, String) {
    let index = ok(
        "reading the archive's index.json",
        Command::new("tar")
            .arg("-xOf")
            .arg(archive)
            .arg("index.json")
            .output(),
    );
    let index: Value = serde_json::from_str(&index)
        .unwrap_or_else(|e| panic!("{}: index.json is not JSON: {e}", archive.display()));
    let reference = index["manifests"][0]["annotations"]["io.containerd.image.name"]
        .as_str()
        .unwrap_or_else(|| {
            panic!(
                "{}: no image name in index.json: {index}",
                archive.display()
            )
        });
    let (repository, tag) = reference
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("{reference}: no tag"));
    (repository.to_owned(), tag.to_owned())
}

/// A second-resolution RFC 3339 time of the API server, as seconds since the epoch.
fn epoch_seconds(time: &Value) -> i64 {
    let text = time
        .as_str()
        .unwrap_or_else(|| panic!("not a time: {time}"));
    let out = ok(
        "date",
        Command::new("date")
            .args(["-u", "-d", text, "+%s"])
            .output(),
    );
    out.trim()
        .parse()
        .unwrap_or_else(|e| panic!("date +%s of {text}: {e}"))
}

fn servicelog(ns: &str) -> String {
    format!(
        r#"apiVersion: servicelog.io/v1alpha1
kind: ServiceLog
metadata: {{name: checkout, namespace: {ns}}}
spec:
  selector: {{matchLabels: {{app: checkout}}}}
  sources:
    - name: app
      file: {{paths: ["/var/log/app/*.log"], format: json}}
  sinks:
    - name: console
      stdout: {{}}
  defaultTo: [console]
"#
    )
}

/// An annotated pod whose app appends a JSON line to /var/log/app/app.log every half second.
fn app(ns: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: checkout
  namespace: {ns}
  labels: {{app: checkout}}
  annotations: {{servicelog.io/inject: checkout}}
spec:
  terminationGracePeriodSeconds: 1
  securityContext: {{runAsNonRoot: true, runAsUser: 1000, runAsGroup: 1000, fsGroup: 2000}}
  containers:
    - name: app
      image: {BUSYBOX_IMAGE}
      imagePullPolicy: Never
      command:
        - /bin/sh
        - -c
        - |
          umask 027
          i=0
          while true; do
            i=$((i+1))
            echo "{{\"level\":\"info\",\"msg\":\"embedded-zk $i\"}}" >> /var/log/app/app.log
            sleep 0.5
          done
"#
    )
}

/// What the cluster could leave on the machine: processes started from its directory or
/// in its cgroup, mounts under its directory, its network namespaces, its cgroups.
fn traces(env_dir: &Path, netns: &BTreeSet<String>, cgroup: &str) -> Vec<String> {
    let dir = format!("{}/", env_dir.display());
    let mut left = Vec::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if pid.parse::<u32>().is_err() || pid == std::process::id().to_string() {
            continue;
        }
        let cmdline = fs::read(entry.path().join("cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        let cgroups = fs::read_to_string(entry.path().join("cgroup")).unwrap_or_default();
        if cmdline.contains(&dir) || cgroups.contains(&format!("/{cgroup}/")) {
            left.push(format!("process {pid}: {cmdline}"));
        }
    }
    left.extend(
        node::mount_points()
            .into_iter()
            .filter(|m| m.starts_with(&dir))
            .map(|m| format!("mount {m}")),
    );
    left.extend(
        netns_names()
            .intersection(netns)
            .map(|n| format!("network namespace {n}")),
    );
    left.extend(
        node::cgroup_mounts()
            .into_iter()
            .map(|m| m.join(cgroup))
            .filter(|d| d.exists())
            .map(|d| format!("cgroup {}", d.display())),
    );
    left
}

#[test]
fn given_the_embedded_zookeeper_on_the_node_when_an_annotated_pod_runs_then_its_sidecar_applies_the_config_from_it_as_non_root()
 {
    let archives = ["servicelog-operator", "servicelog-sidecar", "zookeeper"].map(image_archive);
    let (zk_repository, zk_tag) = archive_reference(&archives[2]);
    let netns_before = netns_names();
    let env = TestEnv::start_cluster().unwrap_or_else(|e| panic!("the cluster did not start: {e}"));
    chart::load_images(&env, archives.iter().map(PathBuf::as_path));

    // Given the chart with its embedded ZooKeeper, from the image built here, on an emptyDir.
    let helm_install = chart::helm_install(
        &env,
        "240s",
        &[
            "zookeeper.embedded.enabled=true".into(),
            "zookeeper.embedded.persistence.enabled=false".into(),
            format!("zookeeper.embedded.image.repository={zk_repository}"),
            format!("zookeeper.embedded.image.tag={zk_tag}"),
            "zookeeper.embedded.image.pullPolicy=Never".into(),
        ],
    );

    // Then ZooKeeper is Ready, never restarted, and runs as the chart's non-root user.
    let pod = kubectl_json(&env, &["get", "pod", ZK_POD, "-n", NAMESPACE]);
    let status = &pod["status"]["containerStatuses"][0];
    assert_eq!(
        status["ready"], true,
        "{ZK_POD} is not ready: {}",
        pod["status"]
    );
    assert_eq!(
        status["restartCount"], 0,
        "{ZK_POD} restarted: {}",
        pod["status"]
    );
    let ready_at = pod["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .map(|c| epoch_seconds(&c["lastTransitionTime"]))
        .unwrap_or_else(|| panic!("{ZK_POD} has no Ready condition: {}", pod["status"]));
    let pod_to_ready = ready_at - epoch_seconds(&pod["metadata"]["creationTimestamp"]);
    let pid = container_pid(&env, status["containerID"].as_str().unwrap_or_default());
    let proc_status = fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status of ZooKeeper: {e}"));
    // slf4j-simple starts each line with the milliseconds since the JVM started.
    let log = kubectl(&env, &["logs", "-n", NAMESPACE, ZK_POD]);
    let serving_ms = log
        .lines()
        .find(|l| l.contains("binding to port"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or("?");
    let rss = proc_status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .unwrap_or("?")
        .trim();
    eprintln!(
        "embedded ZooKeeper: helm install --wait {helm_install:?}; {ZK_POD} created to Ready {pod_to_ready}s; JVM start to serving {serving_ms} ms; RSS {rss}"
    );
    let ids = |key: &str| -> Vec<u32> {
        proc_status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect()
    };
    assert_eq!(
        (ids("Uid:"), ids("Gid:")),
        (vec![ZK_UID; 4], vec![ZK_UID; 4]),
        "ZooKeeper (pid {pid}) does not run as {ZK_UID}:{ZK_UID}"
    );
    let cmdline = fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default();
    assert!(
        cmdline.contains("org.apache.zookeeper.server.quorum.QuorumPeerMain"),
        "the container's process is not ZooKeeper's server: {cmdline}"
    );

    // And the operator reaches it through its headless Service.
    let deployment = kubectl_json(
        &env,
        &["get", "deployment", "servicelog-operator", "-n", NAMESPACE],
    );
    let args = deployment["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
    let service_host = format!("{ZK_POD}.servicelog-zookeeper-headless.{NAMESPACE}.svc");
    assert!(
        args.contains(&service_host),
        "the operator's --zk-connect does not name {service_host}: {args}"
    );

    // When an annotated pod runs with a ServiceLog for it.
    let ns = unique_name("embedded-zk");
    kubectl(&env, &["create", "namespace", &ns]);
    chart::until(
        &env,
        LOGS,
        &format!("the default ServiceAccount of {ns}"),
        Duration::from_secs(30),
        &["get", "serviceaccount", "default", "-n", &ns, "-o", "name"],
        |out| !out.trim().is_empty(),
    );
    apply_ok(&env, &servicelog(&ns));
    apply_ok(&env, &app(&ns));

    // Then its sidecar applies the config it reads from the embedded ZooKeeper (1/1) and
    // routes the app's lines.
    chart::until(
        &env,
        LOGS,
        "ServiceLog checkout to be applied by 1/1 pods at its generation",
        ROLLOUT,
        &["get", "servicelog", "checkout", "-n", &ns, "-o", "json"],
        |text| {
            serde_json::from_str::<Value>(text).is_ok_and(|s| {
                s["status"]["observedGeneration"] == s["metadata"]["generation"]
                    && s["status"]["pods"]["summary"] == "1/1"
            })
        },
    );
    chart::until(
        &env,
        LOGS,
        "the app's lines in the sidecar's stdout",
        ROUTING,
        &["logs", "-n", &ns, "checkout", "-c", "servicelog-sidecar"],
        |logs| logs.contains("embedded-zk "),
    );
    let sidecar = kubectl_json(&env, &["get", "pod", "checkout", "-n", &ns]);
    let env_vars = sidecar["spec"]["initContainers"][0].to_string();
    assert!(
        env_vars.contains(&service_host),
        "the injected sidecar does not connect to {service_host}: {env_vars}"
    );

    // When the cluster is stopped, then nothing of it is left on the machine.
    let env_dir = env.dir().to_owned();
    let cgroup = env.node().expect("a node").cgroup_name().to_owned();
    let ours: BTreeSet<String> = netns_names().difference(&netns_before).cloned().collect();
    assert!(
        !traces(&env_dir, &ours, &cgroup).is_empty(),
        "the leftover check sees nothing while the cluster runs, so it would prove nothing"
    );
    env.stop();
    let left = traces(&env_dir, &ours, &cgroup);
    assert!(left.is_empty(), "the cluster's teardown left: {left:#?}");
}
