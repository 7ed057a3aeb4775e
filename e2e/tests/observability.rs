//! The chart's dashboard and alerts, proven on a real Prometheus (built from its Go module,
//! `e2e::prometheus`): it scrapes a real operator pair (leader election on) and the real
//! sidecar processes of pods the webhook injected, with a real ZooKeeper, while the test
//! makes each alert's situation happen — a ServiceLog the operator refuses, a sidecar that
//! cannot build its config, a pod whose sidecar never starts, a receiver that answers 400,
//! one that is down behind a small blocking buffer, a Kafka broker that is not there, the
//! leader hung, ZooKeeper stopped. Every dashboard query and every alert expression must
//! return data, and every alert must fire (the rules are loaded with `for: 0s`).
//!
//! `promtool check rules` checks the rule file the chart ships as it is.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write,
    path::PathBuf,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::Pod;
use kube::{Api, api::PostParams};
use servicelog_api::v1alpha1::ServiceLog;
use servicelog_e2e::{
    TestEnv, pod,
    procs::{free_port, wait_for},
    prometheus::{self, Alert, Prometheus, Target},
    receiver::Receiver,
    run::{Operator, OperatorOptions, bin_dir},
    unique_name, workspace_dir,
};

/// How long a situation may take to show in Prometheus: scrapes and rule evaluations are
/// every second; sidecars, the operator and the webhook react in seconds.
const WAIT: Duration = Duration::from_secs(90);

fn rules_file() -> PathBuf {
    workspace_dir().join("charts/servicelog/rules/servicelog.rules.yaml")
}

fn dashboard_file() -> PathBuf {
    workspace_dir().join("charts/servicelog/dashboards/servicelog.json")
}

/// `(alert, expr)` for every rule of the rule file, in file order.
fn alert_rules() -> Vec<(String, String)> {
    let path = rules_file();
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let doc: serde_yaml::Value =
        serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut out = Vec::new();
    for group in doc["groups"].as_sequence().into_iter().flatten() {
        for rule in group["rules"].as_sequence().into_iter().flatten() {
            let name = rule["alert"].as_str().unwrap_or_else(|| {
                panic!(
                    "{}: a rule without `alert` (recording rules belong elsewhere): {rule:?}",
                    path.display()
                )
            });
            let expr = rule["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("{}: alert {name} has no expr", path.display()));
            out.push((name.to_owned(), expr.to_owned()));
        }
    }
    assert!(!out.is_empty(), "{}: no alerts", path.display());
    out
}

/// Every PromQL query of the dashboard, with where it is (panel title and refId, or the
/// variable), its Grafana variables replaced: `$namespace` by `namespace`,
/// `$__rate_interval` by `1m`. A variable query `label_values(metric, label)` becomes
/// `count by (label) (metric)`, what Grafana asks Prometheus for it.
fn dashboard_queries(namespace: &str) -> Vec<(String, String)> {
    let path = dashboard_file();
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let dashboard: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let substitute = |expr: &str, at: &str| {
        let expr = expr
            .replace("$__rate_interval", "1m")
            .replace("$namespace", namespace);
        assert!(
            !expr.contains('$'),
            "{at}: a Grafana variable the test does not know: {expr}"
        );
        expr
    };
    let mut out = Vec::new();
    for var in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let Some(query) = var["query"]["query"].as_str() else {
            continue;
        };
        let at = format!("variable {}", var["name"]);
        let inner = query
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            .unwrap_or_else(|| panic!("{at}: only label_values(metric, label) is known: {query}"));
        let (metric, label) = inner
            .rsplit_once(',')
            .unwrap_or_else(|| panic!("{at}: label_values without a label: {query}"));
        let expr = format!("count by ({}) ({})", label.trim(), metric.trim());
        out.push((at.clone(), substitute(&expr, &at)));
    }
    let mut panels: Vec<&serde_json::Value> = dashboard["panels"]
        .as_array()
        .map(|p| p.iter().collect())
        .unwrap_or_default();
    while let Some(panel) = panels.pop() {
        // A collapsed row holds its panels.
        panels.extend(panel["panels"].as_array().into_iter().flatten());
        for target in panel["targets"].as_array().into_iter().flatten() {
            let at = format!("panel {} ({})", panel["title"], target["refId"]);
            let expr = target["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("{at}: a target without expr"));
            out.push((at.clone(), substitute(expr, &at)));
        }
    }
    assert!(
        out.len() > 10,
        "{}: only {} queries",
        path.display(),
        out.len()
    );
    out
}

#[test]
fn given_the_charts_rule_file_when_promtool_checks_it_then_every_alert_is_valid() {
    let report = prometheus::check_rules(&rules_file()).unwrap_or_else(|e| panic!("{e}"));
    let n = alert_rules().len();
    assert!(
        report.contains(&format!("SUCCESS: {n} rules found")),
        "promtool did not find the {n} alerts of the file:\n{report}"
    );
}

#[test]
fn given_a_broken_rule_file_when_promtool_checks_it_then_it_names_the_problem() {
    // The check above can fail: an unknown function is refused by name.
    let dir = tempdir();
    let file = dir.join("broken.rules.yaml");
    std::fs::write(
        &file,
        "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: rate_of(servicelog_events_in_total[5m]) > 0\n",
    )
    .expect("writing the rule file");
    let err = prometheus::check_rules(&file).expect_err("promtool accepted an unknown function");
    assert!(
        err.to_string().contains("rate_of"),
        "promtool's refusal does not name the unknown function: {err}"
    );
}

fn tempdir() -> PathBuf {
    let dir = std::env::temp_dir().join(unique_name("promtool"));
    std::fs::create_dir_all(&dir).expect("creating a temporary directory");
    dir
}

const BROKEN: &str = r#"
apiVersion: servicelog.io/v1alpha1
kind: ServiceLog
metadata: {name: broken}
spec:
  selector: {matchLabels: {app: broken}}
  sources:
    - name: app
      file: {paths: ["/var/log/app/*.log"], format: json}
  sinks:
    - name: out
      file: {path: /var/log/servicelog/out.log}
  rules:
    - name: errors
      when: {level: {atLeast: error}}
      to: [nowhere]
  defaultTo: [out]
"#;

/// Debug lines dropped by a rule; the app's lines to a file and to a receiver that
/// refuses them (400); the slow source's lines to a receiver that is down, behind a
/// 64 KiB blocking buffer, and to a Kafka broker that is not there.
const SHOP: &str = r#"
apiVersion: servicelog.io/v1alpha1
kind: ServiceLog
metadata: {name: shop}
spec:
  selector: {matchLabels: {app: shop}}
  sources:
    - name: app
      file: {paths: ["/var/log/app/*.log"], format: json}
    - name: slow
      file: {paths: ["/var/log/slow/*.log"], format: json}
  sinks:
    - name: archive
      file: {path: /var/log/servicelog/archive.log}
    - name: refusing
      http: {url: "REFUSING_URL", batch: {timeout: 100ms}}
    - name: stuck
      http: {url: "STUCK_URL", batch: {timeout: 100ms}}
      buffer: {maxBytes: 65536, whenFull: block}
    - name: queue
      kafka: {brokers: ["127.0.0.1:KAFKA_PORT"], topic: logs}
  rules:
    - name: drop-debug
      when: {level: {below: info}}
      action: drop
    - name: slow
      when: {source: slow}
      to: [stuck, queue]
  defaultTo: [archive, refusing]
"#;

/// Valid for the operator, but its sidecar cannot build it: the Secret holding the sink's
/// credentials does not exist, so the mounted directory is empty.
const PAY: &str = r#"
apiVersion: servicelog.io/v1alpha1
kind: ServiceLog
metadata: {name: pay}
spec:
  selector: {matchLabels: {app: pay}}
  sources:
    - name: app
      file: {paths: ["/var/log/app/*.log"], format: json}
  sinks:
    - name: ledger
      http: {url: "REFUSING_URL"}
      credentialsSecretRef: {name: pay-ledger-token}
  defaultTo: [ledger]
"#;

fn kubectl_apply(env: &TestEnv, namespace: &str, yaml: &str) {
    let mut child = env
        .kubectl()
        .args(["-n", namespace, "apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running kubectl");
    child
        .stdin
        .take()
        .expect("kubectl's stdin")
        .write_all(yaml.as_bytes())
        .expect("writing to kubectl");
    let out = child.wait_with_output().expect("waiting for kubectl");
    assert!(
        out.status.success(),
        "kubectl apply failed: {}\n{yaml}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn signal(pid: Option<u32>, sig: &str) {
    let pid = pid.expect("the operator's pid").to_string();
    let status = Command::new("kill")
        .args([sig, &pid])
        .status()
        .expect("running kill");
    assert!(status.success(), "kill {sig} {pid} failed");
}

/// `lines` JSON lines of `level` appended to `<dir>/<file>`, each about 150 bytes.
fn append(dir: &std::path::Path, file: &str, level: &str, lines: usize) {
    std::fs::create_dir_all(dir).expect("creating the log dir");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(file))
        .expect("opening the log file");
    let mut text = String::new();
    for i in 0..lines {
        text.push_str(&format!(
            "{{\"level\":\"{level}\",\"message\":\"order {i} placed\",\"customer\":\"c-{i:06}\",\"padding\":\"{}\"}}\n",
            "x".repeat(64)
        ));
    }
    f.write_all(text.as_bytes()).expect("writing log lines");
}

/// Waits until every alert of `want` is firing, none of `quiet` is pending or firing,
/// and returns the alerts then. Each of `want` first has its expression return data, so
/// a failure names the expression that did not.
fn expect_firing(
    prom: &Prometheus,
    rules: &BTreeMap<String, String>,
    want: &[&str],
    quiet: &[&str],
    context: &dyn Fn() -> String,
) -> Vec<Alert> {
    for name in want {
        let expr = rules
            .get(*name)
            .unwrap_or_else(|| panic!("no alert {name} in the rule file"));
        prom.wait_for_data(expr, WAIT).unwrap_or_else(|e| {
            panic!(
                "alert {name}'s expression returned no data: {e}\n{}",
                context()
            )
        });
    }
    let deadline = Instant::now() + WAIT;
    loop {
        let alerts = prom.alerts().unwrap_or_else(|e| panic!("{e}"));
        let firing: BTreeSet<&str> = alerts
            .iter()
            .filter(|a| a.state == "firing")
            .map(|a| a.name.as_str())
            .collect();
        let noisy: Vec<&Alert> = alerts
            .iter()
            .filter(|a| quiet.contains(&a.name.as_str()))
            .collect();
        assert!(
            noisy.is_empty(),
            "alerts that must stay quiet here are {noisy:#?}"
        );
        if want.iter().all(|w| firing.contains(w)) {
            return alerts;
        }
        assert!(
            Instant::now() < deadline,
            "after {WAIT:?} not all of {want:?} fire; the alerts are {alerts:#?}\n--- Prometheus ---\n{}\n{}",
            prom.log_tail(20),
            context()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Whether an alert named `name` fires with each `(label, value)` of `labels`.
fn fires_with(alerts: &[Alert], name: &str, labels: &[(&str, &str)]) -> bool {
    alerts.iter().any(|a| {
        a.name == name
            && a.state == "firing"
            && labels
                .iter()
                .all(|(k, v)| a.labels.get(*k).map(String::as_str) == Some(*v))
    })
}

#[test]
fn given_an_operator_and_sidecars_scraped_by_prometheus_when_each_alerts_situation_happens_then_every_dashboard_query_returns_data_and_every_alert_fires()
 {
    let env = TestEnv::shared().unwrap_or_else(|e| panic!("the test environment: {e}"));
    env.install_crds().unwrap_or_else(|e| panic!("{e}"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let ns = rt
        .block_on(env.create_namespace("obs"))
        .unwrap_or_else(|e| panic!("{e}"));
    let client = rt.block_on(env.client()).unwrap_or_else(|e| panic!("{e}"));
    // A ZooKeeper of this test's own: it is stopped below.
    let mut zk = env
        .start_zookeeper("obs-zk", 1)
        .unwrap_or_else(|e| panic!("{e}"));

    // Before any operator registers a webhook, nothing refuses a spec the schema admits:
    // the situation of a webhook that was down (failurePolicy: Ignore).
    kubectl_apply(env, &ns, BROKEN);

    let refusing = Receiver::start();
    refusing.with(|s| s.fail_with = Some(400));
    let mut stuck = Receiver::start();
    stuck.down();
    let kafka_port = free_port().expect("a free port");

    // Two replicas as the chart runs them: both serve the webhook (whichever registered
    // last is called; with different flags they would take turns replacing the shared
    // serving certificate), one leads. A lease long enough that a hung leader is not
    // replaced while the test looks.
    let zk_root = format!("/{}", unique_name("obs"));
    let options = |identity: &str| OperatorOptions {
        namespace: ns.clone(),
        zk_connect: zk.connect_string(),
        zk_root: zk_root.clone(),
        identity: identity.to_owned(),
        leader_election: true,
        webhook: true,
        extra_args: vec![
            "--lease-duration=60s".into(),
            "--zk-session-timeout=4s".into(),
        ],
    };
    let operators = [
        Operator::start(env, &options("a")).unwrap_or_else(|e| panic!("{e}")),
        Operator::start(env, &options("b")).unwrap_or_else(|e| panic!("{e}")),
    ];
    let leads = |op: &Operator| {
        op.metrics()
            .lines()
            .any(|l| l.trim() == "servicelog_leader 1")
    };
    wait_for(
        "one operator to hold the lease",
        WAIT,
        Duration::from_millis(100),
        || Ok(operators.iter().any(leads)),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let (leader, standby) = if leads(&operators[0]) {
        (&operators[0], &operators[1])
    } else {
        (&operators[1], &operators[0])
    };

    kubectl_apply(
        env,
        &ns,
        &SHOP
            .replace("REFUSING_URL", &refusing.url("/ingest"))
            .replace("STUCK_URL", &stuck.url("/ingest"))
            .replace("KAFKA_PORT", &kafka_port.to_string()),
    );
    kubectl_apply(
        env,
        &ns,
        &PAY.replace("REFUSING_URL", &refusing.url("/ingest")),
    );
    let servicelogs: Api<ServiceLog> = Api::namespaced(client.clone(), &ns);
    for name in ["shop", "pay"] {
        rt.block_on(servicelog_e2e::eventually(
            &format!("ServiceLog {name} published (status.configHash)"),
            WAIT,
            || async {
                servicelogs
                    .get(name)
                    .await
                    .ok()
                    .and_then(|s| s.status)
                    .is_some_and(|s| s.config_hash.is_some())
            },
        ))
        .unwrap_or_else(|e| panic!("{e}\n--- operator ---\n{}", leader.log_tail(30)));
    }

    // shop-0, shop-1 and pay-0 run their sidecars; shop-2 is injected but its sidecar
    // never starts (a pod stuck pulling the image, say).
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let binary = bin_dir()
        .unwrap_or_else(|e| panic!("{e}"))
        .join("servicelog-sidecar");
    let mut sidecars = Vec::new();
    for (name, app, run) in [
        ("shop-0", "shop", true),
        ("shop-1", "shop", true),
        ("shop-2", "shop", false),
        ("pay-0", "pay", true),
    ] {
        let p: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": ns, "labels": {"app": app},
                         "annotations": {"servicelog.io/inject": app}},
            "spec": {"containers": [{"name": "app", "image": "busybox"}]},
        }))
        .expect("a pod");
        let created = rt
            .block_on(pods.create(&PostParams::default(), &p))
            .unwrap_or_else(|e| panic!("creating pod {name}: {e}"));
        let container = pod::container(&created, "servicelog-sidecar")
            .unwrap_or_else(|| {
                panic!(
                    "pod {name} was not injected; the operators' logs:\n{}\n---\n{}",
                    operators[0].log_tail(30),
                    operators[1].log_tail(30)
                )
            })
            .clone();
        if run {
            let running = pod::run(env.env_dir(), &created, &container, &binary)
                .unwrap_or_else(|e| panic!("running the sidecar of {name}: {e}"));
            sidecars.push((name, container, running));
        }
    }
    for (_, container, running) in &sidecars {
        let app = running
            .dirs
            .path_in(container, "/var/log/app")
            .expect("the sidecar mounts /var/log/app");
        append(&app, "orders.log", "info", 300);
        append(&app, "orders.log", "debug", 100);
        if let Some(slow) = running.dirs.path_in(container, "/var/log/slow") {
            append(&slow, "slow.log", "info", 3000);
        }
    }

    // The application keeps logging while Prometheus looks: rates are rates of something,
    // and the refusing sink keeps dropping. Bounded: it stops with the test, or by itself.
    let logging = Arc::new(AtomicBool::new(true));
    let writer = {
        let logging = logging.clone();
        let dirs: Vec<PathBuf> = sidecars
            .iter()
            .filter_map(|(_, container, running)| running.dirs.path_in(container, "/var/log/app"))
            .collect();
        std::thread::spawn(move || {
            let started = Instant::now();
            while logging.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(900) {
                for dir in &dirs {
                    append(dir, "orders.log", "info", 20);
                    append(dir, "orders.log", "debug", 5);
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        })
    };

    let rules_dir = env.dir().join(unique_name("obs-rules"));
    std::fs::create_dir_all(&rules_dir).expect("creating the rules dir");
    // The chart's rules with every `for:` at 0s: a situation fires at once.
    let text = std::fs::read_to_string(rules_file()).expect("reading the rule file");
    let immediate: String = text
        .lines()
        .map(|l| match l.trim_start().strip_prefix("for:") {
            Some(_) => format!("{}for: 0s\n", &l[..l.len() - l.trim_start().len()]),
            None => format!("{l}\n"),
        })
        .collect();
    assert!(immediate.contains("for: 0s"), "no `for:` replaced");
    let rules_copy = rules_dir.join("servicelog.rules.yaml");
    std::fs::write(&rules_copy, immediate).expect("writing the rules copy");

    // Labels as the ServiceMonitor and the PodMonitor would set them.
    let mut targets = vec![
        Target::local(
            "servicelog-operator",
            leader.metrics_port(),
            &[("namespace", &ns), ("pod", "operator-leader")],
        ),
        Target::local(
            "servicelog-operator",
            standby.metrics_port(),
            &[("namespace", &ns), ("pod", "operator-standby")],
        ),
    ];
    for (name, _, running) in &sidecars {
        targets.push(Target::local(
            "servicelog-sidecars",
            running.metrics_port,
            &[
                ("namespace", &ns),
                ("pod", name),
                ("container", "servicelog-sidecar"),
            ],
        ));
    }
    let prom = Prometheus::start(
        env.env_dir(),
        &unique_name("prometheus"),
        &targets,
        &[rules_copy],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    prom.wait_scraped(WAIT).unwrap_or_else(|e| panic!("{e}"));
    let loaded = prom.rules().unwrap_or_else(|e| panic!("{e}"));
    let rules: BTreeMap<String, String> = alert_rules().into_iter().collect();
    assert_eq!(
        loaded.keys().collect::<Vec<_>>(),
        rules.keys().collect::<Vec<_>>(),
        "Prometheus loaded other alerts than the rule file holds"
    );

    // Every dashboard query returns data (collected, so one failure lists them all).
    let queries = dashboard_queries(&ns);
    let deadline = Instant::now() + WAIT;
    loop {
        let empty: Vec<String> = queries
            .iter()
            .filter_map(|(at, expr)| match prom.query(expr) {
                Ok(result) if !result.is_empty() => None,
                Ok(_) => Some(format!("{at}: no data: {expr}")),
                Err(e) => Some(format!("{at}: {e}")),
            })
            .collect();
        if empty.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after {WAIT:?}, {} of {} dashboard queries return nothing:\n{}",
            empty.len(),
            queries.len(),
            empty.join("\n")
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    eprintln!("{} dashboard queries returned data", queries.len());

    // What a failure message needs: the ServiceLogs' status and the servicelog series.
    let context = || {
        let out = env
            .kubectl()
            .args(["-n", &ns, "get", "servicelogs", "-o", "wide"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let series = prom
            .query(r#"{__name__=~"servicelog_servicelog_.*|servicelog_leader|servicelog_zookeeper_connected|servicelog_buffer_.*|servicelog_config_applied_total|servicelog_sink_dropped_total"}"#)
            .map(|samples| {
                samples
                    .iter()
                    .map(|s| format!("{:?} {}", s.labels, s.value))
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_else(|e| e.to_string());
        format!(
            "--- kubectl get servicelogs ---\n{out}--- series ---\n{series}\n--- leader ---\n{}",
            leader.log_tail(20)
        )
    };
    let mut checked = BTreeSet::new();
    let zookeeper_alerts = [
        "ServiceLogOperatorZooKeeperDisconnected",
        "ServiceLogSidecarsZooKeeperDisconnected",
    ];
    // The steady situations fire; nothing says ZooKeeper or the leader is missing.
    let steady = [
        "ServiceLogInvalid",
        "ServiceLogSidecarConfigRejected",
        "ServiceLogPodsNotApplied",
        "ServiceLogSinkDropping",
        "ServiceLogBufferNearFull",
    ];
    let mut quiet = zookeeper_alerts.to_vec();
    quiet.push("ServiceLogOperatorNoLeader");
    let alerts = expect_firing(&prom, &rules, &steady, &quiet, &context);
    for (name, labels) in [
        ("ServiceLogInvalid", vec![("servicelog", "broken")]),
        ("ServiceLogSidecarConfigRejected", vec![("pod", "pay-0")]),
        ("ServiceLogPodsNotApplied", vec![("servicelog", "shop")]),
        ("ServiceLogPodsNotApplied", vec![("servicelog", "pay")]),
        (
            "ServiceLogSinkDropping",
            vec![("sink", "refusing"), ("reason", "rejected")],
        ),
        ("ServiceLogBufferNearFull", vec![("sink", "stuck")]),
    ] {
        assert!(
            fires_with(&alerts, name, &labels),
            "{name} does not fire with {labels:?}: {alerts:#?}"
        );
    }
    for (name, labels) in [
        ("ServiceLogInvalid", vec![("servicelog", "shop")]),
        ("ServiceLogSidecarConfigRejected", vec![("pod", "shop-0")]),
        ("ServiceLogSinkDropping", vec![("sink", "archive")]),
    ] {
        assert!(
            !fires_with(&alerts, name, &labels),
            "{name} fires for a healthy {labels:?}: {alerts:#?}"
        );
    }
    checked.extend(steady);

    // The leader hangs: its scrapes fail, the standby does not lead until the lease runs
    // out (60 s).
    signal(leader.pid(), "-STOP");
    let hung = Instant::now();
    let alerts = expect_firing(
        &prom,
        &rules,
        &["ServiceLogOperatorNoLeader"],
        &zookeeper_alerts,
        &context,
    );
    assert!(
        hung.elapsed() < Duration::from_secs(50),
        "the standby may have taken the lease before the alert was seen ({:?})",
        hung.elapsed()
    );
    assert!(
        fires_with(&alerts, "ServiceLogOperatorNoLeader", &[("namespace", &ns)]),
        "{alerts:#?}"
    );
    signal(leader.pid(), "-CONT");
    checked.insert("ServiceLogOperatorNoLeader");

    // ZooKeeper stops: the operators and the sidecars lose their sessions.
    zk.stop(0);
    let alerts = expect_firing(&prom, &rules, &zookeeper_alerts, &[], &context);
    assert!(
        fires_with(
            &alerts,
            "ServiceLogSidecarsZooKeeperDisconnected",
            &[("namespace", &ns)]
        ),
        "{alerts:#?}"
    );
    checked.extend(zookeeper_alerts);

    let all: BTreeSet<&str> = rules.keys().map(String::as_str).collect();
    assert_eq!(
        checked, all,
        "every alert of the rule file needs a situation in this test that fires it"
    );
    logging.store(false, Ordering::Relaxed);
    writer.join().expect("the log writer");
    drop(prom);
    drop(sidecars);
    drop(operators);
}
