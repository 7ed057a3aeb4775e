//! The product as a user lives it, on real components: CRDs applied with kubectl, the
//! operator running against the real API server and ZooKeeper, a ServiceLog applied, an
//! annotated Pod created through the API server and injected by the webhook, the injected
//! sidecar run as a local process with exactly that pod's env and mounts, log lines routed,
//! a rule changed with `kubectl patch` and applied live — not one line lost or doubled.

use std::{
    collections::BTreeMap,
    fs::OpenOptions,
    io::Write,
    path::{Path, PathBuf},
    time::Duration,
};

use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api,
    api::{DeleteParams, PostParams},
};
use servicelog_api::{
    v1alpha1::{ServiceLog, ServiceLogStatus},
    wire::Layout,
};
use servicelog_e2e::{
    TestEnv, pod,
    run::{Operator, OperatorOptions, bin_dir},
    unique_name,
};

const WAIT: Duration = Duration::from_secs(30);

fn env() -> &'static TestEnv {
    TestEnv::shared().unwrap_or_else(|e| panic!("the test environment did not start: {e}"))
}

const SERVICELOG: &str = r#"
apiVersion: servicelog.io/v1alpha1
kind: ServiceLog
metadata: {name: checkout}
spec:
  selector: {matchLabels: {app: checkout}}
  sources:
    - name: app
      file: {paths: ["/var/log/app/*.log"], format: json}
  sinks:
    - name: alerts
      file: {path: /var/log/servicelog/alerts.log}
    - name: info
      file: {path: /var/log/servicelog/info.log}
  rules:
    - name: drop-debug
      when: {level: {below: info}}
      action: drop
    - name: alerts
      when: {level: {atLeast: warn}}
      to: [alerts]
  defaultTo: [info]
"#;

const POD: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: checkout-0
  labels: {app: checkout}
  annotations: {servicelog.io/inject: checkout}
spec:
  containers: [{name: app, image: busybox}]
"#;

/// One user's world: a namespace, the operator, the ServiceLog, the pod and its sidecar.
struct Story {
    env: &'static TestEnv,
    ns: String,
    zk_connect: String,
    root: String,
    client: kube::Client,
    operator: Operator,
    sidecar: Option<pod::Running>,
    pod: Pod,
    app_dir: PathBuf,
    out_dir: PathBuf,
}

impl Story {
    async fn start(prefix: &str, zk_connect: Option<String>) -> Self {
        let env = env();
        env.install_crds().unwrap_or_else(|e| panic!("{e}"));
        let ns = env.create_namespace(prefix).await.expect("namespace");
        let zk_connect = zk_connect.unwrap_or_else(|| env.zk_connect());
        let root = format!("/{}", unique_name("story"));
        let operator = start_operator(env, &ns, &zk_connect, &root, "a");
        let client = env.client().await.expect("client");
        let mut story = Story {
            env,
            ns,
            zk_connect,
            root,
            client,
            operator,
            sidecar: None,
            pod: Pod::default(),
            app_dir: PathBuf::new(),
            out_dir: PathBuf::new(),
        };
        story.apply(SERVICELOG);
        story
            .wait_status("Published=True", |s| is_true(s, "Published"))
            .await;
        story.create_pod().await;
        story.start_sidecar();
        let hash = story
            .status()
            .await
            .and_then(|s| s.config_hash)
            .expect("hash");
        story.wait_applied(&hash).await;
        story
    }

    fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> std::process::Output {
        let mut cmd = self.env.kubectl();
        cmd.arg("-n").arg(&self.ns).args(args);
        cmd.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().expect("kubectl");
        if let Some(mut s) = child.stdin.take() {
            s.write_all(stdin.unwrap_or_default().as_bytes())
                .expect("stdin");
        }
        child.wait_with_output().expect("kubectl")
    }

    fn apply(&self, yaml: &str) {
        let out = self.kubectl(&["apply", "-f", "-"], Some(yaml));
        assert!(
            out.status.success(),
            "kubectl apply: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    async fn status(&self) -> Option<ServiceLogStatus> {
        Api::<ServiceLog>::namespaced(self.client.clone(), &self.ns)
            .get("checkout")
            .await
            .ok()
            .and_then(|s| s.status)
    }

    async fn wait_status(
        &self,
        what: &str,
        ok: impl Fn(&ServiceLogStatus) -> bool,
    ) -> ServiceLogStatus {
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut last = None;
        while tokio::time::Instant::now() < deadline {
            if let Some(s) = self.status().await {
                if ok(&s) {
                    return s;
                }
                last = Some(s);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "timed out after {WAIT:?} waiting for {what}; last status {last:#?}\n{}",
            self.diagnostics()
        );
    }

    async fn wait_applied(&self, hash: &str) -> ServiceLogStatus {
        self.wait_status(&format!("applied 1/1 of {hash}"), |s| {
            s.config_hash.as_deref() == Some(hash)
                && s.pods
                    .as_ref()
                    .is_some_and(|p| p.applied == 1 && p.injected == 1)
        })
        .await
    }

    async fn create_pod(&mut self) {
        let mut p: Pod = serde_yaml::from_str(POD).expect("pod");
        p.metadata.namespace = Some(self.ns.clone());
        self.pod = Api::<Pod>::namespaced(self.client.clone(), &self.ns)
            .create(&PostParams::default(), &p)
            .await
            .expect("create pod");
        assert!(
            pod::container(&self.pod, "servicelog-sidecar").is_some(),
            "the pod came back without the sidecar:\n{:#?}\n{}",
            self.pod.spec,
            self.operator.log_tail(20)
        );
    }

    fn start_sidecar(&mut self) {
        let container = pod::container(&self.pod, "servicelog-sidecar")
            .expect("sidecar")
            .clone();
        let binary = bin_dir().expect("binaries").join("servicelog-sidecar");
        let running = pod::run(self.env.env_dir(), &self.pod, &container, &binary)
            .expect("start the sidecar");
        let app = pod::container(&self.pod, "app")
            .expect("app container")
            .clone();
        self.app_dir = running
            .dirs
            .path_in(&app, "/var/log/app")
            .expect("the app mounts /var/log/app");
        self.out_dir = running
            .dirs
            .path_in(&container, "/var/log/servicelog")
            .expect("the sidecar mounts /var/log/servicelog");
        self.sidecar = Some(running);
    }

    fn diagnostics(&self) -> String {
        format!(
            "--- operator ---\n{}\n--- sidecar ---\n{}",
            self.operator.log_tail(25),
            self.sidecar
                .as_ref()
                .map(|s| s.proc.log_tail(25))
                .unwrap_or_default()
        )
    }

    /// Appends lines `from..to` to the app's log: level by `seq % 4` (debug, info, warn,
    /// error).
    fn write_lines(&self, from: usize, to: usize) {
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.app_dir.join("app.log"))
            .expect("app log");
        let mut buf = String::new();
        for seq in from..to {
            let level = ["debug", "info", "warn", "error"][seq % 4];
            buf.push_str(&format!(
                "{{\"level\":\"{level}\",\"msg\":\"request\",\"seq\":{seq}}}\n"
            ));
        }
        f.write_all(buf.as_bytes()).expect("write");
    }

    fn sink(&self, name: &str) -> Vec<usize> {
        read_seqs(&self.out_dir.join(format!("{name}.log")))
    }

    /// Waits until the sinks hold `expected` lines in total.
    async fn wait_delivered(&self, expected: usize) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let n = self.sink("alerts").len() + self.sink("info").len();
            if n >= expected {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out after {WAIT:?} waiting for {expected} lines in the sinks (have {n})\n{}",
                self.diagnostics()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn start_operator(
    env: &TestEnv,
    ns: &str,
    zk_connect: &str,
    root: &str,
    identity: &str,
) -> Operator {
    let options = OperatorOptions {
        namespace: ns.to_owned(),
        zk_connect: zk_connect.to_owned(),
        zk_root: root.to_owned(),
        identity: identity.into(),
        leader_election: true,
        webhook: true,
        extra_args: vec!["--lease-duration=3s".into()],
    };
    let operator =
        Operator::start(env, &options).unwrap_or_else(|e| panic!("operator did not start: {e}"));
    wait_webhook(env, ns);
    operator
}

/// Until the API server calls the fresh webhook, pods would be admitted uninjected
/// (failurePolicy Ignore); a server-side dry run of an invalid ServiceLog tells when it
/// answers.
fn wait_webhook(env: &TestEnv, ns: &str) {
    let probe = SERVICELOG.replace(
        "below: info}}",
        "below: info}, source: app, message: {regex: '('}}",
    );
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let mut cmd = env.kubectl();
        cmd.args(["-n", ns, "apply", "--dry-run=server", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().expect("kubectl");
        if let Some(mut s) = child.stdin.take() {
            s.write_all(probe.as_bytes()).expect("stdin");
        }
        let out = child.wait_with_output().expect("kubectl");
        if String::from_utf8_lossy(&out.stderr).contains("validate.servicelog.io") {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {WAIT:?} waiting for the webhooks to answer"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn read_seqs(path: &Path) -> Vec<usize> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            v.get("seq")?.as_u64().map(|n| n as usize)
        })
        .collect()
}

fn is_true(s: &ServiceLogStatus, type_: &str) -> bool {
    s.conditions
        .iter()
        .any(|c| c.r#type == type_ && c.status == "True")
}

/// Every non-debug line exactly once, each in the sink `expect` says.
fn assert_routed(story: &Story, total: usize, expect: impl Fn(usize) -> &'static str) {
    let mut seen: BTreeMap<usize, Vec<&str>> = BTreeMap::new();
    for sink in ["alerts", "info"] {
        for seq in story.sink(sink) {
            seen.entry(seq).or_default().push(sink);
        }
    }
    for seq in 0..total {
        let want: &[&str] = if seq % 4 == 0 { &[] } else { &[expect(seq)] };
        let got = seen.get(&seq).map(Vec::as_slice).unwrap_or(&[]);
        assert_eq!(
            got,
            want,
            "line {seq} ({}) went to {got:?}, expected {want:?}",
            ["debug", "info", "warn", "error"][seq % 4]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_an_injected_pod_when_a_rule_is_patched_then_it_applies_live_without_losing_a_line() {
    let story = Story::start("story", None).await;
    let first = story
        .status()
        .await
        .and_then(|s| s.config_hash)
        .expect("hash");

    // Before: warn and error to alerts, info to info, debug dropped.
    story.write_lines(0, 2000);
    story.wait_delivered(1500).await;

    // Live change: only errors alert now; warnings go to info.
    let patch =
        r#"[{"op": "replace", "path": "/spec/rules/1/when/level/atLeast", "value": "error"}]"#;
    let out = story.kubectl(
        &["patch", "slog", "checkout", "--type=json", "-p", patch],
        None,
    );
    assert!(
        out.status.success(),
        "kubectl patch: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let changed = story
        .wait_status("a new config hash", |s| {
            s.config_hash.as_deref().is_some_and(|h| h != first)
        })
        .await;
    let second = changed.config_hash.expect("hash");
    let status = story.wait_applied(&second).await;
    assert_eq!(status.pods.map(|p| p.summary), Some("1/1".into()));
    assert!(is_true(&story.status().await.expect("status"), "Ready"));

    story.write_lines(2000, 4000);
    story.wait_delivered(3000).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_routed(&story, 4000, |seq| match (seq < 2000, seq % 4) {
        (_, 1) => "info",
        (_, 3) => "alerts",
        (true, _) => "alerts",
        (false, _) => "info",
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_faults_then_routing_goes_on_and_nothing_is_republished_needlessly() {
    let mut own = env()
        .start_zookeeper(&unique_name("zk-story"), 1)
        .expect("own ZooKeeper");
    let mut story = Story::start("story-faults", Some(own.connect_string())).await;
    let zk = zookeeper_client::Client::connector()
        .with_session_timeout(Duration::from_secs(30))
        .connect(&own.connect_string())
        .await
        .expect("zk");
    let layout = Layout::new(&story.root).expect("layout");
    let config = layout.config(&story.ns, "checkout").expect("path");
    let (_, before) = zk.get_data(&config).await.expect("config");
    let status_before = story.status().await.expect("status");

    // The operator crashes and comes back: nothing re-published, no status regression.
    story.write_lines(0, 1000);
    story.operator.kill();
    story.write_lines(1000, 2000);
    story.operator = start_operator(story.env, &story.ns, &story.zk_connect, &story.root, "b");
    story.wait_delivered(1500).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, after) = zk.get_data(&config).await.expect("config");
    assert_eq!(
        after.mzxid, before.mzxid,
        "the restarted operator rewrote an unchanged config"
    );
    let status_after = story.status().await.expect("status");
    assert_eq!(status_after.config_hash, status_before.config_hash);
    assert_eq!(
        status_after.pods, status_before.pods,
        "pod counts regressed across the restart"
    );
    drop(zk);

    // ZooKeeper restarts: the sidecar keeps routing meanwhile and resyncs after.
    own.stop(0);
    story.write_lines(2000, 3000);
    story.wait_delivered(2250).await;
    own.restart(0).expect("ZooKeeper restarts");
    let patch =
        r#"[{"op": "replace", "path": "/spec/rules/1/when/level/atLeast", "value": "error"}]"#;
    let out = story.kubectl(
        &["patch", "slog", "checkout", "--type=json", "-p", patch],
        None,
    );
    assert!(
        out.status.success(),
        "kubectl patch: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hash = story
        .wait_status("the patch published after the restart", |s| {
            s.config_hash != status_before.config_hash && is_true(s, "Published")
        })
        .await
        .config_hash
        .expect("hash");
    story.wait_applied(&hash).await;

    // An invalid edit is refused at apply; the sidecar is untouched.
    let bad = r#"[{"op": "replace", "path": "/spec/rules/1/to", "value": ["nowhere"]}]"#;
    let out = story.kubectl(
        &["patch", "slog", "checkout", "--type=json", "-p", bad],
        None,
    );
    assert!(
        !out.status.success(),
        "an edit naming an unknown sink was accepted"
    );
    assert_eq!(
        story.status().await.and_then(|s| s.config_hash),
        Some(hash.clone())
    );

    // Deleted: the znodes go, the sidecar keeps its last rules and says so.
    Api::<ServiceLog>::namespaced(story.client.clone(), &story.ns)
        .delete("checkout", &DeleteParams::default())
        .await
        .expect("delete");
    let zk = zookeeper_client::Client::connect(&own.connect_string())
        .await
        .expect("zk");
    let resource = layout.resource(&story.ns, "checkout").expect("path");
    servicelog_e2e::eventually("the subtree removed", WAIT, || async {
        matches!(
            zk.get_data(&resource).await,
            Err(zookeeper_client::Error::NoNode)
        )
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", story.diagnostics()));
    story.write_lines(3000, 4000);
    story.wait_delivered(3000).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_routed(&story, 4000, |seq| match (seq < 3000, seq % 4) {
        (_, 1) => "info",
        (_, 3) => "alerts",
        (true, _) => "alerts",
        (false, _) => "info",
    });
    let log = story
        .sidecar
        .as_mut()
        .map(|s| s.proc.log_tail(200))
        .unwrap_or_default();
    assert!(
        log.contains("does not exist"),
        "the sidecar did not say its config is gone:\n{log}"
    );
}
