//! servicelog as a user runs it, on the real node of `make cluster`: the images of
//! `make images` loaded into the node, the chart installed with `helm install --wait`
//! (two operator replicas under the chart's ServiceAccount and RBAC, the webhooks reached
//! by the API server through their Service with the operator's own certificate), then the
//! user story — an annotated Deployment whose app runs as another user than the sidecar,
//! logs routed to the sidecar's stdout and to an HTTP receiver pod, a rule patched live,
//! the leading operator deleted — and the ways a pod can meet servicelog broken.
//!
//! ZooKeeper is the environment's (`zookeeper.connect`, the node's IP as pods reach it):
//! the chart's embedded StatefulSet needs the `zookeeper` image and a PersistentVolume
//! provisioner, neither of which the node has (docs/testenv.md).
//!
//! Every test here shares one cluster and one release (`installed`).

use std::{
    path::PathBuf,
    sync::OnceLock,
    time::{Duration, Instant},
};

use serde_json::Value;
use servicelog_e2e::{
    TestEnv,
    chart::{
        self, NAMESPACE, RECEIVER_IMAGE, RELEASE, apply_ok, container_pid, image_archive, kubectl,
        kubectl_json, new_namespace, ok, one_at_a_time, tail,
    },
    node::{BUSYBOX_IMAGE, POD_SUBNET},
    unique_name,
};

const SIDECAR: &str = "servicelog-sidecar";
/// The app's user and the group the pod's fsGroup gives both containers: the sidecar
/// (65532) reads the app's 0640 files through the group (docs/install.md, file permissions).
const APP_UID: u32 = 1000;
const FS_GROUP: u32 = 2000;
/// The chart components whose logs a timed-out wait prints.
const LOGS: &[&str] = &["operator"];
const ROLLOUT: Duration = Duration::from_secs(180);
const ROUTING: Duration = Duration::from_secs(60);

/// The release installed once for every test of this file.
struct Installed {
    env: &'static TestEnv,
    /// `helm install --wait` from its start to its return.
    helm_install: Duration,
    /// When `helm install` started, for the time to the first routed line.
    started: Instant,
}

static INSTALLED: OnceLock<Installed> = OnceLock::new();

fn installed() -> &'static Installed {
    INSTALLED.get_or_init(|| {
        let env =
            TestEnv::shared_cluster().unwrap_or_else(|e| panic!("the cluster did not start: {e}"));
        let archives = ["operator", "sidecar"].map(|c| image_archive(&format!("servicelog-{c}")));
        chart::load_images(env, archives.iter().map(PathBuf::as_path));
        chart::load_receiver_image(env, env!("CARGO_BIN_EXE_servicelog-receiver"));

        let started = Instant::now();
        let helm_install = chart::helm_install(env, "180s", &chart::environment_zookeeper(env));
        eprintln!("on the node: helm install --wait took {helm_install:?}");
        Installed {
            env,
            helm_install,
            started,
        }
    })
}

fn lease_holder(env: &TestEnv) -> String {
    kubectl(
        env,
        &[
            "get",
            "lease",
            "servicelog-operator",
            "-n",
            NAMESPACE,
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ],
    )
}

fn container_status<'a>(pod: &'a Value, init: bool, name: &str) -> &'a Value {
    let key = if init {
        "initContainerStatuses"
    } else {
        "containerStatuses"
    };
    pod["status"][key]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("pod has no {key} entry for {name}: {}", pod["status"]))
}

fn in_container(pid: u32, path: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/root{path}"))
}

#[test]
fn given_helm_install_wait_on_the_node_then_both_operators_run_under_the_charts_account_and_the_webhook_answers_through_its_service()
 {
    let installed = installed();
    let env = installed.env;
    let _turn = one_at_a_time();

    // Then both replicas are available, under the chart's ServiceAccount, as 65532 (waited
    // for: the failover test, which may have had its turn first, deletes the leader).
    chart::until(
        env,
        LOGS,
        "both operator replicas to be available",
        ROLLOUT,
        &[
            "get",
            "deployment",
            "servicelog-operator",
            "-n",
            NAMESPACE,
            "-o",
            "json",
        ],
        |text| {
            serde_json::from_str::<Value>(text).is_ok_and(|d| d["status"]["availableReplicas"] == 2)
        },
    );
    let pods = kubectl_json(
        env,
        &[
            "get",
            "pods",
            "-n",
            NAMESPACE,
            "-l",
            "app.kubernetes.io/component=operator",
        ],
    );
    let pods = pods["items"].as_array().cloned().unwrap_or_default();
    assert_eq!(pods.len(), 2, "two operator pods expected");
    for pod in &pods {
        assert_eq!(pod["spec"]["serviceAccountName"], "servicelog-operator");
        assert_eq!(
            container_status(pod, false, "operator")["restartCount"],
            0,
            "an operator restarted: {}",
            pod["status"]
        );
    }
    // One of them leads.
    let holder = lease_holder(env);
    assert!(
        pods.iter()
            .any(|p| p["metadata"]["name"] == holder.as_str()),
        "the Lease is held by {holder:?}, not by an operator pod"
    );
    // No permission the operator needed was missing.
    let logs = env
        .kubectl()
        .args([
            "logs",
            "-n",
            NAMESPACE,
            "-l",
            "app.kubernetes.io/component=operator",
        ])
        .args(["--tail=-1"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    assert!(
        !logs.contains("forbidden") && !logs.contains("Forbidden"),
        "the operator was refused something by RBAC:\n{}",
        logs.lines()
            .filter(|l| l.contains("orbidden"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // The webhook's certificate names the Service as the API server calls it, and both
    // configurations carry the operator's CA.
    for kind in [
        "mutatingwebhookconfiguration",
        "validatingwebhookconfiguration",
    ] {
        chart::until(
            env,
            LOGS,
            &format!("the {kind}'s caBundle"),
            ROLLOUT,
            &[
                "get",
                kind,
                RELEASE,
                "-o",
                "jsonpath={.webhooks[0].clientConfig.caBundle}",
            ],
            |ca| !ca.trim().is_empty(),
        );
    }

    // When a ServiceLog the schema admits but `api` validation refuses is applied, then
    // the API server reached the validating webhook through its Service (TLS verified
    // against the caBundle) and shows its message.
    let ns = new_namespace(env, "chart");
    let file = env.dir().join(format!("{}.yaml", unique_name("bad")));
    std::fs::write(
        &file,
        format!(
            "apiVersion: servicelog.io/v1alpha1\nkind: ServiceLog\nmetadata: {{name: bad, namespace: {ns}}}\n\
             spec:\n  sources: [{{name: app, file: {{paths: [/var/log/app/*.log]}}}}]\n  \
             sinks: [{{name: console, stdout: {{}}}}]\n  rules: [{{name: r, when: {{message: {{regex: \"(\"}}}}, to: [console]}}]\n"
        ),
    )
    .expect("writing the manifest");
    let out = env
        .kubectl()
        .args(["apply", "-f"])
        .arg(&file)
        .output()
        .expect("kubectl apply");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("validate.servicelog.io"),
        "expected the validating webhook to refuse the regex, got ({}): {stderr}",
        out.status
    );
}

/// The routing of the story: errors to the receiver, the rest to the sidecar's stdout.
fn servicelog(ns: &str, errors_at_least: &str) -> String {
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
    - name: receiver
      http:
        url: http://receiver.{ns}.svc.cluster.local:8080/ingest
        encoding: json_lines
        batch: {{timeout: 200ms}}
  rules:
    - name: to-receiver
      when: {{level: {{atLeast: {errors_at_least}}}}}
      to: [receiver]
  defaultTo: [console]
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

/// The app: serves HTTP on 8080 (its readiness) and appends an info and an error line to
/// /var/log/app/app.log twice a second, with umask 027 (files 0640, group = fsGroup).
/// `fs_group: None` makes a pod without fsGroup: Secret files mounted into it stay root's.
fn app(ns: &str, name: &str, servicelog: &str, replicas: u32, fs_group: Option<u32>) -> String {
    let fs_group = fs_group
        .map(|g| format!(", fsGroup: {g}"))
        .unwrap_or_default();
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: {ns}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata:
      labels: {{app: {name}}}
      annotations: {{servicelog.io/inject: {servicelog}}}
    spec:
      terminationGracePeriodSeconds: 1
      securityContext: {{runAsNonRoot: true, runAsUser: {APP_UID}, runAsGroup: {APP_UID}{fs_group}}}
      containers:
        - name: app
          image: {BUSYBOX_IMAGE}
          imagePullPolicy: Never
          command:
            - /bin/sh
            - -c
            - |
              umask 027
              mkdir -p /tmp/www && echo ok > /tmp/www/index.html
              httpd -p 8080 -h /tmp/www
              i=0
              while true; do
                i=$((i+1))
                echo "{{\"level\":\"info\",\"msg\":\"story-info $HOSTNAME $i\"}}" >> /var/log/app/app.log
                echo "{{\"level\":\"error\",\"msg\":\"story-error $HOSTNAME $i\"}}" >> /var/log/app/app.log
                sleep 0.5
              done
          ports: [{{containerPort: 8080}}]
          readinessProbe: {{tcpSocket: {{port: 8080}}, periodSeconds: 1}}
"#
    )
}

fn pods(env: &TestEnv, ns: &str, app: &str) -> Vec<Value> {
    kubectl_json(env, &["get", "pods", "-n", ns, "-l", &format!("app={app}")])["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn name(pod: &Value) -> String {
    pod["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// `kubectl patch` of the ServiceLog `checkout` in `ns` with a JSON patch.
fn patch_checkout(env: &TestEnv, ns: &str, patch: &str) {
    kubectl(
        env,
        &[
            "patch",
            "servicelog",
            "checkout",
            "-n",
            ns,
            "--type=json",
            "-p",
            patch,
        ],
    );
}

/// Waits until the ServiceLog's status says every injected pod acked the current spec.
fn applied_everywhere(env: &TestEnv, ns: &str, pods: usize) {
    chart::until(
        env,
        LOGS,
        &format!("ServiceLog checkout to be applied by {pods}/{pods} pods at its generation"),
        ROUTING,
        &["get", "servicelog", "checkout", "-n", ns, "-o", "json"],
        |text| {
            let Ok(slog) = serde_json::from_str::<Value>(text) else {
                return false;
            };
            slog["status"]["observedGeneration"] == slog["metadata"]["generation"]
                && slog["status"]["pods"]["summary"] == format!("{pods}/{pods}").as_str()
        },
    );
}

#[test]
fn given_the_chart_on_the_node_when_an_annotated_deployment_runs_then_its_logs_are_routed_and_rerouted_live_through_an_operator_failover()
 {
    let installed = installed();
    let env = installed.env;
    let _turn = one_at_a_time();
    let ns = new_namespace(env, "story");
    apply_ok(env, &receiver(&ns));
    apply_ok(env, &servicelog(&ns, "error"));
    let applied_at = Instant::now();
    apply_ok(env, &app(&ns, "checkout", "checkout", 2, Some(FS_GROUP)));

    // The sidecar's stdout carries the app's info lines: the first routed line.
    let pods_now = |env| pods(env, &ns, "checkout");
    chart::until(
        env,
        LOGS,
        "the checkout pods to exist",
        ROLLOUT,
        &["get", "pods", "-n", &ns, "-l", "app=checkout", "-o", "name"],
        |out| out.lines().count() == 2,
    );
    let first = name(&pods_now(env)[0]);
    chart::until(
        env,
        LOGS,
        &format!("an info line of {first} in its sidecar's stdout"),
        ROLLOUT,
        &["logs", "-n", &ns, &first, "-c", SIDECAR],
        |logs| logs.contains("story-info"),
    );
    eprintln!(
        "on the node: first routed line {:?} after the Deployment was applied, {:?} after helm install started (helm install --wait {:?})",
        applied_at.elapsed(),
        installed.started.elapsed(),
        installed.helm_install
    );
    ok(
        "kubectl rollout status",
        env.kubectl()
            .args(["rollout", "status", "deployment/checkout", "-n", &ns])
            .args(["--timeout=180s"])
            .output(),
    );

    let pods = pods_now(env);
    assert_eq!(pods.len(), 2);
    for pod in &pods {
        let pod_name = name(pod);
        // The webhook injected a native sidecar, and the kubelet started it first.
        let init = &pod["spec"]["initContainers"][0];
        assert_eq!(init["name"], SIDECAR, "{pod_name}: {}", pod["spec"]);
        assert_eq!(init["restartPolicy"], "Always");
        let sidecar = container_status(pod, true, SIDECAR);
        let app = container_status(pod, false, "app");
        let started = |c: &Value| {
            c["state"]["running"]["startedAt"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        };
        assert!(
            !started(sidecar).is_empty() && started(sidecar) <= started(app),
            "{pod_name}: the sidecar started at {:?}, the app at {:?}",
            started(sidecar),
            started(app)
        );
        // Stdout sink: the app's info lines; HTTP sink: its error lines.
        chart::until(
            env,
            LOGS,
            &format!("{pod_name}'s info lines in its sidecar's stdout"),
            ROUTING,
            &["logs", "-n", &ns, &pod_name, "-c", SIDECAR],
            |logs| logs.contains(&format!("story-info {pod_name} ")),
        );
        chart::until(
            env,
            LOGS,
            &format!("{pod_name}'s error lines at the receiver"),
            ROUTING,
            &["logs", "-n", &ns, "receiver"],
            |logs| logs.contains(&format!("story-error {pod_name} ")),
        );
        // The app's files are 0640, its user's and the pod's fsGroup's: the sidecar reads
        // them as a member of that group, not as their owner.
        let app_pid = container_pid(env, app["containerID"].as_str().unwrap_or_default());
        let meta = std::fs::metadata(in_container(app_pid, "/var/log/app/app.log"))
            .unwrap_or_else(|e| panic!("{pod_name}: the app's log file: {e}"));
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        assert_eq!(
            (meta.uid(), meta.gid(), meta.permissions().mode() & 0o777),
            (APP_UID, FS_GROUP, 0o640),
            "{pod_name}: the app's log file is not 0640 {APP_UID}:{FS_GROUP}"
        );
    }
    let info_before_patch = kubectl(env, &["logs", "-n", &ns, "receiver"])
        .matches("story-info")
        .count();
    assert_eq!(
        info_before_patch, 0,
        "info lines reached the receiver before the rule said so"
    );
    applied_everywhere(env, &ns, 2);

    // When a rule is patched, then both sidecars apply it and info lines reach the
    // receiver too.
    patch_checkout(
        env,
        &ns,
        r#"[{"op":"replace","path":"/spec/rules/0/when/level/atLeast","value":"info"}]"#,
    );
    applied_everywhere(env, &ns, 2);
    let printed = kubectl(env, &["get", "servicelog", "checkout", "-n", &ns]);
    assert!(
        printed.contains("2/2"),
        "kubectl get servicelog:\n{printed}"
    );
    chart::until(
        env,
        LOGS,
        "info lines at the receiver after the patch",
        ROUTING,
        &["logs", "-n", &ns, "receiver"],
        |logs| logs.contains("story-info"),
    );

    // When the leading operator is deleted, then the standby takes the Lease and
    // reconciles the next change.
    let leader = lease_holder(env);
    kubectl(
        env,
        &["delete", "pod", &leader, "-n", NAMESPACE, "--wait=false"],
    );
    let takeover = Instant::now();
    chart::until(
        env,
        LOGS,
        "another operator pod to take the Lease",
        ROUTING,
        &[
            "get",
            "lease",
            "servicelog-operator",
            "-n",
            NAMESPACE,
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ],
        |holder| !holder.is_empty() && holder != leader,
    );
    eprintln!(
        "on the node: the standby took the Lease {:?} after the leader's deletion",
        takeover.elapsed()
    );
    patch_checkout(
        env,
        &ns,
        r#"[{"op":"replace","path":"/spec/rules/0/when/level/atLeast","value":"warn"}]"#,
    );
    applied_everywhere(env, &ns, 2);

    // Throughout: no sidecar restarted, every app stayed Ready, and the sidecar does not
    // hold the pod's ServiceAccount token (the app does: the check can fail).
    for pod in pods_now(env) {
        let pod_name = name(&pod);
        let sidecar = container_status(&pod, true, SIDECAR);
        assert_eq!(
            sidecar["restartCount"], 0,
            "{pod_name}: the sidecar restarted"
        );
        let app = container_status(&pod, false, "app");
        assert_eq!(app["ready"], true, "{pod_name}: the app is not Ready");
        assert_eq!(app["restartCount"], 0, "{pod_name}: the app restarted");
        let token = "/var/run/secrets/kubernetes.io/serviceaccount/token";
        let sidecar_pid = container_pid(env, sidecar["containerID"].as_str().unwrap_or_default());
        let app_pid = container_pid(env, app["containerID"].as_str().unwrap_or_default());
        assert!(
            in_container(app_pid, token).exists(),
            "{pod_name}: the app has no token either; the check below proves nothing"
        );
        assert!(
            !in_container(sidecar_pid, token).exists(),
            "{pod_name}: the sidecar holds the pod's ServiceAccount token"
        );
    }
}

/// Pods of this namespace cannot reach ZooKeeper while this lives: a REJECT rule in the
/// node's namespace for the pods' subnet to ZooKeeper's port, removed on drop.
struct ZooKeeperCutOff {
    env: &'static TestEnv,
    rule: Vec<String>,
}

impl ZooKeeperCutOff {
    fn new(env: &'static TestEnv) -> Self {
        let zk = env.zk_connect_for_pods().expect("ZooKeeper for pods");
        let port = zk.rsplit(':').next().unwrap_or_default().to_owned();
        let rule: Vec<String> = [
            "INPUT",
            "-s",
            POD_SUBNET,
            "-p",
            "tcp",
            "--dport",
            &port,
            "-j",
            "REJECT",
            "--reject-with",
            "tcp-reset",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let cut = Self { env, rule };
        cut.iptables("-I");
        cut
    }

    fn iptables(&self, op: &str) {
        let netns = self.env.netns().expect("a cluster's namespace");
        ok(
            &format!("iptables {op} {}", self.rule.join(" ")),
            netns.command("iptables").arg(op).args(&self.rule).output(),
        );
    }
}

impl Drop for ZooKeeperCutOff {
    fn drop(&mut self) {
        self.iptables("-D");
    }
}

fn wait_published(env: &TestEnv, ns: &str, name: &str) {
    chart::until(
        env,
        LOGS,
        &format!("ServiceLog {name} to be published"),
        ROUTING,
        &[
            "get",
            "servicelog",
            name,
            "-n",
            ns,
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Published\")].status}",
        ],
        |status| status == "True",
    );
}

#[test]
fn given_zookeeper_unreachable_when_an_annotated_pod_starts_then_the_app_starts_and_serves_and_the_sidecar_catches_up()
 {
    let installed = installed();
    let env = installed.env;
    let _turn = one_at_a_time();
    let ns = new_namespace(env, "zkdown");
    apply_ok(
        env,
        &format!(
            "apiVersion: servicelog.io/v1alpha1\nkind: ServiceLog\nmetadata: {{name: quiet, namespace: {ns}}}\n\
             spec:\n  selector: {{matchLabels: {{app: web}}}}\n  sources: [{{name: app, file: {{paths: [/var/log/app/*.log], format: json}}}}]\n  \
             sinks: [{{name: console, stdout: {{}}}}]\n  defaultTo: [console]\n"
        ),
    );
    wait_published(env, &ns, "quiet");

    // Given ZooKeeper unreachable from pods, when an annotated pod starts, then the app
    // starts, becomes Ready and answers.
    // Without fsGroup, too: the namespace's ZooKeeper identity (a Secret file written
    // as root) must still be readable by the sidecar's user for it to apply its config.
    let cut = ZooKeeperCutOff::new(env);
    apply_ok(env, &app(&ns, "web", "quiet", 1, None));
    ok(
        "kubectl rollout status (ZooKeeper unreachable)",
        env.kubectl()
            .args(["rollout", "status", "deployment/web", "-n", &ns])
            .args(["--timeout=120s"])
            .output(),
    );
    let pod = pods(env, &ns, "web").remove(0);
    let pod_name = name(&pod);
    assert_eq!(
        pod["metadata"]["annotations"]["servicelog.io/injected"], "quiet",
        "the pod was not injected"
    );
    let ip = pod["status"]["podIP"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let netns = env.netns().expect("a cluster's namespace");
    assert!(
        netns.http_ok(&format!("{ip}:8080"), "/index.html"),
        "the app of {pod_name} does not answer on {ip}:8080"
    );
    let sidecar_logs = kubectl(env, &["logs", "-n", &ns, &pod_name, "-c", SIDECAR]);
    eprintln!(
        "on the node: the sidecar with ZooKeeper unreachable at start says:\n{}",
        tail(&sidecar_logs, 20)
    );

    // When ZooKeeper is back, then the sidecar applies its config without a restart.
    drop(cut);
    chart::until(
        env,
        LOGS,
        "the sidecar to apply its config once ZooKeeper is reachable",
        Duration::from_secs(90),
        &[
            "get",
            "servicelog",
            "quiet",
            "-n",
            &ns,
            "-o",
            "jsonpath={.status.pods.summary}",
        ],
        |summary| summary == "1/1",
    );
    let pod = pods(env, &ns, "web").remove(0);
    assert_eq!(
        container_status(&pod, true, SIDECAR)["restartCount"],
        0,
        "the sidecar restarted"
    );
    assert_eq!(container_status(&pod, false, "app")["restartCount"], 0);
}

#[test]
fn given_a_sidecar_image_that_cannot_be_pulled_when_an_annotated_pod_starts_then_it_runs_without_the_sidecar_and_says_why()
 {
    let installed = installed();
    let env = installed.env;
    let _turn = one_at_a_time();
    let ns = new_namespace(env, "nopull");
    // A tag of the sidecar's own repository (the images the operator allows by default)
    // that no registry serves here: a typo'd tag.
    let image = "ghcr.io/servicelog/servicelog-sidecar:0.0.0-missing";
    // An image of another repository is refused at `kubectl apply`: pre-pulled images run
    // on every node, so a namespace's editor does not choose them.
    let foreign = env.dir().join(format!("{}.yaml", unique_name("foreign")));
    std::fs::write(
        &foreign,
        format!(
            "apiVersion: servicelog.io/v1alpha1\nkind: ServiceLog\nmetadata: {{name: foreign, namespace: {ns}}}\n\
             spec:\n  sources: [{{name: app, file: {{paths: [/var/log/app/*.log]}}}}]\n  \
             sinks: [{{name: console, stdout: {{}}}}]\n  defaultTo: [console]\n  \
             sidecar: {{image: \"docker.io/library/busybox:1\"}}\n"
        ),
    )
    .expect("writing a ServiceLog");
    let out = env
        .kubectl()
        .args(["apply", "-f"])
        .arg(&foreign)
        .output()
        .expect("kubectl apply");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && stderr.contains("spec.sidecar.image: sidecar image docker.io/library/busybox:1 is not one the operator allows"),
        "a foreign sidecar image was not refused at apply: {stderr}"
    );
    let extra = format!("{RELEASE}-sidecar-prepull-extra");
    apply_ok(
        env,
        &format!(
            "apiVersion: servicelog.io/v1alpha1\nkind: ServiceLog\nmetadata: {{name: broken, namespace: {ns}}}\n\
             spec:\n  selector: {{matchLabels: {{app: web}}}}\n  sources: [{{name: app, file: {{paths: [/var/log/app/*.log]}}}}]\n  \
             sinks: [{{name: console, stdout: {{}}}}]\n  defaultTo: [console]\n  \
             sidecar: {{image: \"{image}\"}}\n"
        ),
    );
    wait_published(env, &ns, "broken");
    // The leader pre-pulls the per-ServiceLog image on every node; the kubelet cannot.
    chart::until(
        env,
        LOGS,
        "the operator's pre-pull DaemonSet to try the ServiceLog's image and fail",
        ROLLOUT,
        &[
            "get",
            "pods",
            "-n",
            NAMESPACE,
            "-l",
            &format!("servicelog.io/prepull-set={extra}"),
            "-o",
            "json",
        ],
        |text| {
            serde_json::from_str::<Value>(text).is_ok_and(|pods| {
                pods["items"].as_array().is_some_and(|items| {
                    items.iter().any(|pod| {
                        pod["spec"]["containers"][0]["image"] == image
                            && pod["status"]["containerStatuses"][0]["state"]["waiting"]["reason"]
                                .as_str()
                                .is_some_and(|r| r == "ErrImagePull" || r == "ImagePullBackOff")
                    })
                })
            })
        },
    );
    let manifest = env.dir().join(format!("{}.yaml", unique_name("nopull")));
    std::fs::write(&manifest, app(&ns, "web", "broken", 1, Some(FS_GROUP)))
        .expect("writing the app");
    let out = env
        .kubectl()
        .args(["apply", "-f"])
        .arg(&manifest)
        .output()
        .expect("kubectl apply");
    assert!(
        out.status.success(),
        "kubectl apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The Deployment is admitted; its pod gets the warning (in the ReplicaSet controller's
    // request, so not printed here) and an Event, and starts without the sidecar.
    let text = chart::until(
        env,
        LOGS,
        "the app's pod to be Ready without the sidecar",
        ROLLOUT,
        &["get", "pods", "-n", &ns, "-l", "app=web", "-o", "json"],
        |text| {
            serde_json::from_str::<Value>(text).is_ok_and(|pods| {
                pods["items"][0]["status"]["conditions"]
                    .as_array()
                    .is_some_and(|c| {
                        c.iter()
                            .any(|c| c["type"] == "Ready" && c["status"] == "True")
                    })
            })
        },
    );
    let pod = &serde_json::from_str::<Value>(&text).expect("JSON")["items"][0];
    let containers: Vec<&Value> = pod["spec"]["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(pod["spec"]["containers"].as_array().into_iter().flatten())
        .collect();
    assert!(
        containers.iter().all(|c| c["name"] != SIDECAR),
        "the sidecar was injected with an image no node could pull: {containers:?}"
    );
    let pod_name = name(pod);
    let events = chart::until(
        env,
        LOGS,
        "the ServiceLogNotInjected Event naming the image",
        ROUTING,
        &[
            "get",
            "events",
            "-n",
            &ns,
            "--field-selector",
            "reason=ServiceLogNotInjected",
            "-o",
            "json",
        ],
        |text| text.contains(image),
    );
    let event = serde_json::from_str::<Value>(&events).expect("JSON")["items"]
        .as_array()
        .and_then(|items| {
            items
                .iter()
                .find(|e| e.to_string().contains(image))
                .cloned()
        })
        .expect("an Event naming the image");
    // The pod had no name at admission: the Event is about its ReplicaSet.
    assert_eq!(
        event["involvedObject"]["kind"], "ReplicaSet",
        "the Event is not about the pod's controller: {event}"
    );
    let note = event["note"]
        .as_str()
        .or(event["message"].as_str())
        .unwrap_or_default()
        .to_owned();
    assert!(
        note.contains("ImagePullBackOff") || note.contains("ErrImagePull"),
        "the Event does not carry the kubelet's reason: {note}"
    );
    // A dry run shows the user the same warning at `kubectl apply`.
    let pod_manifest = env
        .dir()
        .join(format!("{}.yaml", unique_name("nopull-pod")));
    std::fs::write(
        &pod_manifest,
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: probe, namespace: {ns}, annotations: {{servicelog.io/inject: broken}}}}\n\
             spec:\n  containers: [{{name: app, image: {BUSYBOX_IMAGE}, imagePullPolicy: Never, command: [/bin/sleep, \"3600\"]}}]\n"
        ),
    )
    .expect("writing a pod");
    let out = env
        .kubectl()
        .args(["apply", "--dry-run=server", "-f"])
        .arg(&pod_manifest)
        .output()
        .expect("kubectl apply --dry-run=server");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success()
            && stderr.contains(&format!(
                "Warning: servicelog: sidecar image {image} is not pulled on any node"
            )),
        "kubectl apply does not warn about the image: {stderr}"
    );
    eprintln!(
        "on the node: sidecar image not pullable: pod {pod_name} Ready without the sidecar; kubectl says:\n{stderr}"
    );
    // The ServiceLog gone, its image is no longer pre-pulled.
    kubectl(
        env,
        &["delete", "servicelog", "broken", "-n", &ns, "--wait=false"],
    );
    chart::until(
        env,
        LOGS,
        "the per-ServiceLog pre-pull DaemonSet to go with the last ServiceLog that named an image",
        ROUTING,
        &["get", "daemonsets", "-n", NAMESPACE, "-o", "name"],
        |text| !text.contains(&extra),
    );
}

/// Seconds from `kubectl apply` of a pod to `kubectl wait --for=condition=Ready` returning
/// (two kubectl starts included, as in docs/testenv.md's figure without injection).
fn pod_start(env: &TestEnv, ns: &str, name: &str, annotations: &str) -> f64 {
    let manifest = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{app: start}}{annotations}}}\n\
         spec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: app\n    image: {BUSYBOX_IMAGE}\n    \
         imagePullPolicy: Never\n    command: [/bin/sleep, \"3600\"]\n"
    );
    let started = Instant::now();
    apply_ok(env, &manifest);
    ok(
        &format!("kubectl wait for pod {name} to be Ready"),
        env.kubectl()
            .args(["wait", "--for=condition=Ready", "--timeout=60s", "-n", ns])
            .arg(format!("pod/{name}"))
            .output(),
    );
    started.elapsed().as_secs_f64()
}

fn percentile(mut values: Vec<f64>, p: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    let at = ((values.len() as f64 - 1.0) * p).round() as usize;
    values.get(at).copied().unwrap_or(f64::NAN)
}

#[test]
fn given_twenty_pods_with_and_twenty_without_injection_then_the_sidecar_adds_at_most_a_second_to_the_median_start()
 {
    const PODS: usize = 20;
    let installed = installed();
    let env = installed.env;
    let _turn = one_at_a_time();
    let ns = new_namespace(env, "start");
    apply_ok(
        env,
        &format!(
            "apiVersion: servicelog.io/v1alpha1\nkind: ServiceLog\nmetadata: {{name: start, namespace: {ns}}}\n\
             spec:\n  selector: {{matchLabels: {{app: start}}}}\n  sources: [{{name: app, file: {{paths: [/var/log/app/*.log]}}}}]\n  \
             sinks: [{{name: console, stdout: {{}}}}]\n  defaultTo: [console]\n"
        ),
    );
    wait_published(env, &ns, "start");
    // Alternating, so both series see the same machine load.
    let (mut plain, mut injected) = (Vec::new(), Vec::new());
    for i in 0..PODS {
        plain.push(pod_start(env, &ns, &format!("plain-{i}"), ""));
        injected.push(pod_start(
            env,
            &ns,
            &format!("injected-{i}"),
            ", annotations: {servicelog.io/inject: start}",
        ));
    }
    let injected_pod = kubectl_json(env, &["get", "pod", "injected-0", "-n", &ns]);
    assert_eq!(
        injected_pod["spec"]["initContainers"][0]["name"], SIDECAR,
        "the measured pods were not injected"
    );
    let (p50_plain, p50_injected) = (
        percentile(plain.clone(), 0.5),
        percentile(injected.clone(), 0.5),
    );
    eprintln!(
        "on the node: pod start over {PODS} pods each: without injection p50 {p50_plain:.2} s p90 {:.2} s max {:.2} s; \
         with the sidecar p50 {p50_injected:.2} s p90 {:.2} s max {:.2} s",
        percentile(plain.clone(), 0.9),
        percentile(plain, 1.0),
        percentile(injected.clone(), 0.9),
        percentile(injected, 1.0),
    );
    assert!(
        p50_injected - p50_plain <= 1.0,
        "the sidecar adds {:.2} s to the median pod start (at most 1 s allowed)",
        p50_injected - p50_plain
    );
    // The pods are no longer needed; the namespace stays, as every test's does.
    let _ = env
        .kubectl()
        .args(["delete", "pods", "--all", "-n", &ns, "--wait=false"])
        .output();
}

/// Pod name → the hash of its instance record in the chart's ZooKeeper tree
/// (`zookeeper.root`; empty when it has none), for each of `pods`: the hash its sidecar
/// routes with. Read from the machine under the namespace's identity (the records are
/// that identity's when ACLs are on), taken from its Secret as the sidecars are.
fn hashes(env: &TestEnv, ns: &str, pods: &[String]) -> std::collections::BTreeMap<String, String> {
    use servicelog_api::{
        pod::{ZK_AUTH_KEY, ZK_AUTH_SECRET},
        wire::{Instance, Layout},
        zkauth::Credentials,
    };
    let auth = env
        .kubectl()
        .args(["get", "secret", ZK_AUTH_SECRET, "-n", ns, "-o"])
        .arg(format!(
            "go-template={{{{index .data \"{ZK_AUTH_KEY}\" | base64decode}}}}"
        ))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|line| !line.is_empty())
        .map(|line| Credentials::parse(&line).unwrap_or_else(|e| panic!("{ZK_AUTH_SECRET}: {e}")));
    let layout = Layout::new("/servicelog").expect("the chart's root");
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(async {
            let zk = servicelog_e2e::zookeeper::connect(&env.zk_connect())
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            if let Some(auth) = &auth {
                zk.auth("digest", &auth.auth_bytes())
                    .await
                    .unwrap_or_else(|e| panic!("authenticating as {}: {e}", auth.user()));
            }
            let mut hashes = std::collections::BTreeMap::new();
            for pod in pods {
                let path = layout
                    .instance(ns, "checkout", pod)
                    .expect("an instance path");
                let hash = match zk.get_data(&path).await {
                    Ok((data, _)) => {
                        Instance::from_slice(&data)
                            .unwrap_or_else(|e| panic!("{path}: {e}"))
                            .hash
                    }
                    Err(zookeeper_client::Error::NoNode) => String::new(),
                    Err(e) => panic!("reading {path}: {e}"),
                };
                hashes.insert(pod.clone(), hash);
            }
            hashes
        })
}

/// Given four injected pods on the node whose every line goes to the receiver, when a
/// change rolls out with one step of 50% (paused an hour), then exactly the pods
/// `rollout::is_member` names run the candidate and the others stay on stable; when the
/// rollout is aborted, then the canaries are back on the stable hash; and the receiver
/// got every line the apps wrote across it.
#[test]
fn given_four_pods_on_the_node_when_a_change_rolls_out_to_half_and_is_aborted_then_exactly_the_canaries_ran_it_and_no_line_is_lost()
 {
    const PODS: usize = 4;
    let installed = installed();
    let env = installed.env;
    let _turn = one_at_a_time();
    let ns = new_namespace(env, "rollnode");
    apply_ok(env, &receiver(&ns));
    // Every line (info and above) to the receiver, so none may go missing.
    apply_ok(
        env,
        &format!(
            "{}  rollout:\n    steps: [{{percent: 50, pause: 1h}}]\n",
            servicelog(&ns, "info")
        ),
    );
    apply_ok(
        env,
        &app(&ns, "checkout", "checkout", PODS as u32, Some(FS_GROUP)),
    );
    ok(
        "kubectl rollout status",
        env.kubectl()
            .args(["rollout", "status", "deployment/checkout", "-n", &ns])
            .args(["--timeout=180s"])
            .output(),
    );
    applied_everywhere(env, &ns, PODS);
    let names: Vec<String> = pods(env, &ns, "checkout").iter().map(name).collect();
    assert_eq!(names.len(), PODS);
    let slog = kubectl_json(env, &["get", "servicelog", "checkout", "-n", &ns]);
    let stable = slog["status"]["configHash"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(!stable.is_empty(), "no configHash: {}", slog["status"]);
    assert!(
        hashes(env, &ns, &names).values().all(|h| *h == stable),
        "not every pod runs {stable}: {:?}",
        hashes(env, &ns, &names)
    );

    // When a change rolls out (the HTTP sink's batch timeout: the same routing, so every
    // line still goes to the receiver), then the step's canaries run it once they acked.
    // A change whose 50% takes none or all of the 4 pods (1 in 8) proves nothing about
    // the split: it is aborted and the next timeout tried.
    let mut split = None;
    for timeout in ["300ms", "400ms", "500ms", "600ms"] {
        patch_checkout(
            env,
            &ns,
            &format!(
                r#"[{{"op":"replace","path":"/spec/sinks/1/http/batch/timeout","value":"{timeout}"}}]"#
            ),
        );
        let text = chart::until(
            env,
            LOGS,
            &format!(
                "the change to batch timeout {timeout} at step 1, Progressing, every canary acked"
            ),
            ROUTING,
            &["get", "servicelog", "checkout", "-n", &ns, "-o", "json"],
            |text| {
                serde_json::from_str::<Value>(text).is_ok_and(|s| {
                    let r = &s["status"]["rollout"];
                    r["phase"] == "Progressing"
                        && r["step"] == 1
                        && r["candidateHash"].as_str().is_some_and(|h| h != stable)
                        && r["canary"]["applied"] == r["canary"]["total"]
                        && s["status"]["observedGeneration"] == s["metadata"]["generation"]
                })
            },
        );
        let rollout =
            serde_json::from_str::<Value>(&text).expect("JSON")["status"]["rollout"].clone();
        assert_eq!(rollout["stableHash"], stable.as_str());
        let candidate = rollout["candidateHash"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let members: std::collections::BTreeSet<String> = names
            .iter()
            .filter(|p| servicelog_api::rollout::is_member(&candidate, &ns, p, 50))
            .cloned()
            .collect();
        assert_eq!(
            rollout["canary"]["total"],
            members.len(),
            "status.rollout.canary counts other pods than rollout::is_member: {rollout}"
        );
        let expected: std::collections::BTreeMap<String, String> = names
            .iter()
            .map(|p| {
                let hash = if members.contains(p) {
                    &candidate
                } else {
                    &stable
                };
                (p.clone(), hash.clone())
            })
            .collect();
        assert_eq!(
            hashes(env, &ns, &names),
            expected,
            "exactly the canaries {members:?} run the candidate, every other pod the stable config"
        );
        eprintln!(
            "on the node: batch timeout {timeout}: candidate {candidate} on {} of {PODS} pods ({members:?})",
            members.len()
        );
        let proves_the_split = !members.is_empty() && members.len() < PODS;

        // When the rollout is aborted, then every pod runs the stable hash again.
        kubectl(
            env,
            &[
                "annotate",
                "servicelog",
                "checkout",
                "-n",
                &ns,
                "servicelog.io/rollout=abort",
                "--overwrite",
            ],
        );
        let text = chart::until(
            env,
            LOGS,
            &format!("the change to batch timeout {timeout} to be RolledBack"),
            ROUTING,
            &["get", "servicelog", "checkout", "-n", &ns, "-o", "json"],
            |text| {
                serde_json::from_str::<Value>(text)
                    .is_ok_and(|s| s["status"]["rollout"]["phase"] == "RolledBack")
            },
        );
        let reason =
            serde_json::from_str::<Value>(&text).expect("JSON")["status"]["rollout"]["reason"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
        assert!(
            reason.contains("abort"),
            "the reason does not say abort: {reason}"
        );
        let started = Instant::now();
        while hashes(env, &ns, &names).values().any(|h| *h != stable) {
            assert!(
                started.elapsed() < ROUTING,
                "timed out after {ROUTING:?} waiting for every pod back on {stable}: {:?}",
                hashes(env, &ns, &names)
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        if proves_the_split {
            split = Some(members.len());
            break;
        }
    }
    let split = split.expect("four changes in a row took none or all of the pods (1 in 4,096)");

    // Then the receiver got every line each app wrote up to now, across the changes.
    let mut written = Vec::new();
    for pod in pods(env, &ns, "checkout") {
        let app = container_status(&pod, false, "app");
        let pid = container_pid(env, app["containerID"].as_str().unwrap_or_default());
        let log = std::fs::read_to_string(in_container(pid, "/var/log/app/app.log"))
            .unwrap_or_else(|e| panic!("{}: the app's log file: {e}", name(&pod)));
        written.extend(log.lines().filter_map(|l| {
            Some(
                l.split("\"msg\":\"")
                    .nth(1)?
                    .trim_end_matches("\"}")
                    .to_owned(),
            )
        }));
    }
    let lines = written.len();
    let received = chart::until(
        env,
        LOGS,
        &format!("the {lines} lines the apps wrote at the receiver"),
        ROUTING,
        &["logs", "-n", &ns, "receiver", "--tail=-1"],
        |logs| {
            let got: std::collections::HashSet<&str> = logs
                .lines()
                .filter_map(|l| l.split("story-").nth(1))
                .filter_map(|rest| rest.split('"').next())
                .collect();
            written
                .iter()
                .all(|w| got.contains(w.trim_start_matches("story-")))
        },
    );
    let copies = received.matches("story-").count();
    eprintln!(
        "on the node: rollout of 50% on {split}/{PODS} pods aborted, {lines} lines written, {copies} received"
    );
}
