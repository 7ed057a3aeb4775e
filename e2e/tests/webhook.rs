//! The admission webhooks through the real API server: the operator registers them at
//! its loopback URL (`--webhook-url`), and pods and ServiceLogs are created with kubectl
//! and the Kubernetes API exactly as users do.

use std::{process::Output, time::Duration};

use k8s_openapi::api::core::v1::{Event, Pod, Secret};
use kube::{
    Api,
    api::{ListParams, PostParams},
};
use servicelog_e2e::{
    TestEnv,
    run::{Operator, OperatorOptions},
    unique_name, workspace_dir,
};

fn env() -> &'static TestEnv {
    TestEnv::shared().unwrap_or_else(|e| panic!("the test environment did not start: {e}"))
}

struct Fixture {
    env: &'static TestEnv,
    ns: String,
    client: kube::Client,
    operator: Operator,
}

async fn fixture(prefix: &str, extra_args: &[&str]) -> Fixture {
    let env = env();
    env.install_crds().unwrap_or_else(|e| panic!("{e}"));
    let ns = env.create_namespace(prefix).await.expect("namespace");
    let options = OperatorOptions {
        namespace: ns.clone(),
        zk_connect: env.zk_connect(),
        zk_root: format!("/{}", unique_name("wh")),
        identity: "a".into(),
        leader_election: false,
        webhook: true,
        extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
    };
    let operator =
        Operator::start(env, &options).unwrap_or_else(|e| panic!("operator did not start: {e}"));
    let client = env.client().await.expect("client");
    let f = Fixture {
        env,
        ns,
        client,
        operator,
    };
    f.wait_registered().await;
    f
}

impl Fixture {
    fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Output {
        use std::io::Write;
        let mut cmd = self.env.kubectl();
        cmd.arg("-n").arg(&self.ns).args(args);
        cmd.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().expect("kubectl");
        if let Some(input) = stdin
            && let Some(mut s) = child.stdin.take()
        {
            s.write_all(input.as_bytes()).expect("stdin");
        }
        drop(child.stdin.take());
        child.wait_with_output().expect("kubectl")
    }

    /// The API server calls the webhook only once its configuration is in place and the
    /// operator serves; wait until a ServiceLog dry-run reaches it.
    async fn wait_registered(&self) {
        let probe = example(&self.ns).replace("regex: ERROR", "regex: '('");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let out = self.kubectl(&["apply", "--dry-run=server", "-f", "-"], Some(&probe));
            if !out.status.success()
                && String::from_utf8_lossy(&out.stderr).contains("validate.servicelog.io")
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out after 30s waiting for the validating webhook to answer; last kubectl output: {}\n--- operator log ---\n{}",
                String::from_utf8_lossy(&out.stderr),
                self.operator.log_tail(30)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn create_pod(&self, yaml: &str) -> Pod {
        let mut pod: Pod = serde_yaml::from_str(yaml).expect("pod yaml");
        pod.metadata.namespace = Some(self.ns.clone());
        Api::<Pod>::namespaced(self.client.clone(), &self.ns)
            .create(&PostParams::default(), &pod)
            .await
            .expect("create pod")
    }
}

fn example(ns: &str) -> String {
    let text =
        std::fs::read_to_string(workspace_dir().join("examples/checkout.yaml")).expect("example");
    let text = text.replace("namespace: shop", &format!("namespace: {ns}"));
    // A rule with a message regex, so tests can break it.
    text.replace(
        "  defaultTo: [console]",
        "    - name: errors\n      when: {message: {regex: ERROR}}\n      to: [alerts]\n  defaultTo: [console]",
    )
}

const POD: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: web, labels: {app: checkout}, annotations: {servicelog.io/inject: checkout}}
spec:
  containers: [{name: app, image: busybox, volumeMounts: [{name: data, mountPath: /data}]}]
  volumes: [{name: data, emptyDir: {}}]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_an_invalid_servicelog_when_applied_then_kubectl_fails_with_every_field_path() {
    let f = fixture("wh-validate", &[]).await;
    // Two problems only the full validation sees (the schema cannot compile regexes).
    let bad = example(&f.ns)
        .replace("regex: ERROR", "regex: '(unclosed'")
        .replace(
            "fields: [{name: latency_ms, greaterThan: 1000}]",
            "fields: [{name: latency_ms, greaterThan: 1000}, {name: path, regex: '[a-'}]",
        );
    assert!(
        bad.contains("'[a-'"),
        "the example changed shape; update this test"
    );
    let out = f.kubectl(&["apply", "-f", "-"], Some(&bad));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "kubectl apply of an invalid ServiceLog succeeded"
    );
    for needle in [
        "spec.rules[3].when.message.regex",
        "spec.rules[2].when.fields[1].regex",
    ] {
        assert!(
            stderr.contains(needle),
            "refusal lacks {needle:?}:\n{stderr}"
        );
    }
    let good = f.kubectl(&["apply", "-f", "-"], Some(&example(&f.ns)));
    assert!(
        good.status.success(),
        "a valid ServiceLog was refused: {}",
        String::from_utf8_lossy(&good.stderr)
    );
}

/// The bad examples of `api/tests/validation.rs`, one problem each, and what the refusal
/// must name: the field's path and the offending value. Some are caught by the CRD schema
/// and its CEL rules, the rest by the validating webhook; either way the user reads both.
const REFUSALS: &[(&str, &str, &[&str])] = &[
    (
        "a rule sending to an undeclared sink",
        "  rules: [{name: alerts, to: [console, loki]}]",
        &["spec.rules[0].to[1]", "\"loki\""],
    ),
    (
        "a rule with both to and action",
        "  rules: [{name: r0, action: drop, to: [console]}]",
        &["spec.rules[0]", "\"r0\"", "both to and action"],
    ),
    (
        "a rule with neither to nor action",
        "  rules: [{name: r2}]",
        &["spec.rules[0]", "\"r2\"", "neither to nor action"],
    ),
    (
        "a drop rule that samples",
        "  rules: [{name: r0, action: drop, sample: 0.5}]",
        &["spec.rules[0]", "\"r0\"", "sample"],
    ),
    (
        "a level that is not one",
        "  rules: [{name: r0, when: {level: {atLeast: warning}}, to: [console]}]",
        &["spec.rules[0].when.level.atLeast", "\"warning\""],
    ),
    (
        "a field condition with two tests",
        "  rules: [{name: r0, when: {fields: [{name: lat, regex: a, exists: true}]}, to: [console]}]",
        &["spec.rules[0].when.fields[0]", "\"lat\""],
    ),
    (
        "a regex that does not compile",
        "  rules: [{name: r0, when: {message: {regex: '('}}, to: [console]}]",
        &["spec.rules[0].when.message.regex", "unclosed group"],
    ),
    (
        "an unknown source in a condition",
        "  rules: [{name: r0, when: {source: nope}, to: [console]}]",
        &["spec.rules[0].when.source", "\"nope\""],
    ),
    (
        "a misspelt condition inside any (kept by the open schema)",
        "  rules: [{name: r0, when: {any: [{levell: {atLeast: warn}}]}, to: [console]}]",
        &["spec.rules[0].when.any[0].levell", "unknown field"],
    ),
    (
        "a default sink that is not declared",
        "  defaultTo: [console, missing]",
        &["spec.defaultTo[1]", "\"missing\""],
    ),
    (
        "a source with both file and syslog",
        "",
        &[
            "spec.sources[1]",
            "\"both\"",
            "sets file syslog - a source sets exactly one of",
        ],
    ),
    (
        "a sink with two kinds",
        "",
        &["spec.sinks[1]", "\"two\"", "stdout file"],
    ),
    (
        "a relative file sink path",
        "",
        &["spec.sinks[1].file.path", "\"relative.log\""],
    ),
    (
        "credentials on a stdout sink",
        "",
        &["spec.sinks[1].credentialsSecretRef", "\"creds\""],
    ),
    (
        "a source that would hide the app's /etc",
        "",
        &["spec.sources[0].file.paths[0]", "/etc/app/*.log"],
    ),
    (
        "a file sink under /proc",
        "",
        &["spec.sinks[1].file.path", "/proc/self/x.log"],
    ),
    (
        "a credential in a plain header",
        "",
        &[
            "spec.sinks[1].http.headers[Authorization]",
            "credentialsSecretRef",
        ],
    ),
];

fn refused_example(ns: &str, what: &str, rules: &str) -> String {
    let (sources, sinks) = match what {
        "a source with both file and syslog" => (
            "[{name: app, file: {paths: [/var/log/app/*.log]}}, {name: both, file: {paths: [/b/*.log]}, syslog: {port: 5514}}]",
            "[{name: console, stdout: {}}]",
        ),
        "a sink with two kinds" => (
            "[{name: app, file: {paths: [/var/log/app/*.log]}}]",
            "[{name: console, stdout: {}}, {name: two, stdout: {}, file: {path: /x.log}}]",
        ),
        "a relative file sink path" => (
            "[{name: app, file: {paths: [/var/log/app/*.log]}}]",
            "[{name: console, stdout: {}}, {name: rel, file: {path: relative.log}}]",
        ),
        "credentials on a stdout sink" => (
            "[{name: app, file: {paths: [/var/log/app/*.log]}}]",
            "[{name: console, stdout: {}}, {name: creds, stdout: {}, credentialsSecretRef: {name: s}}]",
        ),
        "a source that would hide the app's /etc" => (
            "[{name: app, file: {paths: [/etc/app/*.log]}}]",
            "[{name: console, stdout: {}}]",
        ),
        "a file sink under /proc" => (
            "[{name: app, file: {paths: [/var/log/app/*.log]}}]",
            "[{name: console, stdout: {}}, {name: bad, file: {path: /proc/self/x.log}}]",
        ),
        "a credential in a plain header" => (
            "[{name: app, file: {paths: [/var/log/app/*.log]}}]",
            "[{name: console, stdout: {}}, {name: loki, http: {url: 'http://loki:3100', headers: {Authorization: 'Bearer x'}}}]",
        ),
        _ => (
            "[{name: app, file: {paths: [/var/log/app/*.log]}}]",
            "[{name: console, stdout: {}}]",
        ),
    };
    format!(
        "apiVersion: servicelog.io/v1alpha1\nkind: ServiceLog\nmetadata: {{name: refused, namespace: {ns}}}\nspec:\n  sources: {sources}\n  sinks: {sinks}\n{rules}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_each_bad_example_when_applied_then_the_refusal_names_its_field_path_and_value() {
    let f = fixture("wh-refusals", &[]).await;
    let mut failures = Vec::new();
    for (what, rules, needles) in REFUSALS {
        let manifest = refused_example(&f.ns, what, rules);
        let out = f.kubectl(&["apply", "--dry-run=server", "-f", "-"], Some(&manifest));
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            failures.push(format!("{what}: accepted\n{manifest}"));
            continue;
        }
        let missing: Vec<&&str> = needles.iter().filter(|n| !stderr.contains(**n)).collect();
        if !missing.is_empty() {
            failures.push(format!("{what}: the refusal lacks {missing:?}:\n{stderr}"));
        }
        if stderr.contains("\"null\"") {
            failures.push(format!(
                "{what}: the refusal offers \"null\" as a value:\n{stderr}"
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_an_annotated_pod_when_created_then_it_comes_back_injected_and_a_second_admission_changes_nothing()
 {
    let f = fixture("wh-inject", &[]).await;
    let out = f.kubectl(&["apply", "-f", "-"], Some(&example(&f.ns)));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let pod = f.create_pod(POD).await;
    let annotations = pod.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(
        annotations
            .get("servicelog.io/injected")
            .map(String::as_str),
        Some("checkout"),
        "pod not injected: {pod:#?}"
    );
    let spec = pod.spec.clone().expect("spec");
    let sidecar = spec
        .init_containers
        .iter()
        .flatten()
        .find(|c| c.name == "servicelog-sidecar")
        .unwrap_or_else(|| panic!("no native sidecar in {spec:#?}"));
    assert_eq!(sidecar.restart_policy.as_deref(), Some("Always"));
    let env: Vec<(String, Option<String>)> = sidecar
        .env
        .iter()
        .flatten()
        .map(|e| (e.name.clone(), e.value.clone()))
        .collect();
    let znode = env
        .iter()
        .find(|(n, _)| n == "SERVICELOG_CONFIG_ZNODE")
        .and_then(|(_, v)| v.clone())
        .unwrap_or_default();
    assert!(
        znode.ends_with(&format!("/namespaces/{}/checkout/config", f.ns)),
        "znode env {znode:?}"
    );
    for name in [
        "SERVICELOG_ZK_CONNECT",
        "POD_NAME",
        "POD_NAMESPACE",
        "SERVICELOG_STATE_DIR",
    ] {
        assert!(
            env.iter().any(|(n, _)| n == name),
            "sidecar env lacks {name}: {env:?}"
        );
    }
    let app = &spec.containers[0];
    let mounts: Vec<&str> = app
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| m.mount_path.as_str())
        .collect();
    assert_eq!(
        mounts,
        ["/data", "/var/log/app"],
        "the app container's mounts"
    );

    // Reinvocation-safe and idempotent: the injected pod admitted again is unchanged.
    let mut again = pod.clone();
    again.metadata = kube::api::ObjectMeta {
        name: Some("web-again".into()),
        namespace: Some(f.ns.clone()),
        labels: pod.metadata.labels.clone(),
        annotations: pod.metadata.annotations.clone(),
        ..Default::default()
    };
    let readmitted = Api::<Pod>::namespaced(f.client.clone(), &f.ns)
        .create(&PostParams::default(), &again)
        .await
        .expect("create the injected pod again");
    assert_eq!(
        readmitted.spec, pod.spec,
        "a second admission changed an injected pod"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_pods_without_the_annotation_or_naming_a_missing_servicelog_then_they_are_admitted_unchanged()
 {
    let f = fixture("wh-skip", &[]).await;
    let plain = f
        .create_pod(&POD.replace(
            "annotations: {servicelog.io/inject: checkout}",
            "annotations: {}",
        ))
        .await;
    assert!(
        plain
            .spec
            .as_ref()
            .and_then(|s| s.init_containers.as_ref())
            .is_none(),
        "an unannotated pod was changed"
    );

    let yaml = POD
        .replace("name: web,", "name: orphan,")
        .replace("inject: checkout", "inject: nosuch");
    let out = f.kubectl(&["create", "-f", "-"], Some(&yaml));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "a pod naming a missing ServiceLog was refused: {stderr}"
    );
    assert!(
        stderr.contains("Warning: servicelog:") && stderr.contains("nosuch"),
        "no admission warning: {stderr}"
    );
    let pod = Api::<Pod>::namespaced(f.client.clone(), &f.ns)
        .get("orphan")
        .await
        .expect("pod");
    assert!(
        pod.spec
            .as_ref()
            .and_then(|s| s.init_containers.as_ref())
            .is_none(),
        "the orphan pod was changed"
    );

    let events: Api<Event> = Api::namespaced(f.client.clone(), &f.ns);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let list = events.list(&ListParams::default()).await.expect("events");
        if list
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some("ServiceLogNotInjected"))
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after 15s waiting for a ServiceLogNotInjected event"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let metrics = f.operator.metrics();
    assert!(
        metrics.contains("servicelog_webhook_duration_seconds_count{result=\"warned\"}"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_short_lived_certificate_then_it_is_rotated_without_a_restart() {
    let f = fixture("wh-rotate", &["--webhook-cert-validity=12s"]).await;
    let secrets: Api<Secret> = Api::namespaced(f.client.clone(), &f.ns);
    let first = secrets
        .get("servicelog-webhook-tls")
        .await
        .expect("webhook Secret");
    let cert = |s: &Secret| {
        s.data
            .as_ref()
            .and_then(|d| d.get("tls.crt"))
            .map(|b| b.0.clone())
    };
    let pid = f.operator.pid();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let now = secrets.get("servicelog-webhook-tls").await.expect("Secret");
        if cert(&now) != cert(&first) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after 30s waiting for the certificate to be renewed"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Past the first certificate's expiry: admissions still succeed on the renewed one.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let out = f.kubectl(&["apply", "-f", "-"], Some(&example(&f.ns)));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pod = f.create_pod(POD).await;
    assert!(
        pod.metadata
            .annotations
            .unwrap_or_default()
            .contains_key("servicelog.io/injected"),
        "no injection after rotation; operator log:\n{}",
        f.operator.log_tail(20)
    );
    assert_eq!(f.operator.pid(), pid, "the operator restarted");
}

/// Given 500 connections that never start TLS, when a ServiceLog is applied, then the
/// webhook still answers the API server, and the idle connections are closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_500_half_open_connections_then_admission_goes_on_and_they_are_closed() {
    use tokio::io::AsyncReadExt;
    let f = fixture("wh-hostile", &[]).await;
    let addr = format!("127.0.0.1:{}", f.operator.webhook_port());
    let mut idle = Vec::with_capacity(500);
    for _ in 0..500 {
        idle.push(
            tokio::net::TcpStream::connect(&addr)
                .await
                .expect("connecting to the webhook"),
        );
    }
    let bad = example(&f.ns).replace("regex: ERROR", "regex: '(unclosed'");
    let started = std::time::Instant::now();
    let out = f.kubectl(&["apply", "--dry-run=server", "-f", "-"], Some(&bad));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("spec.rules[3].when.message.regex"),
        "with 500 idle connections open, the webhook did not refuse a bad spec (after {:?}):\n{stderr}",
        started.elapsed()
    );
    // Twenty more finish TLS, then send nothing: the request-head timeout closes them.
    let ca = f.kubectl(
        &[
            "get",
            "mutatingwebhookconfiguration",
            &format!("servicelog-{}", f.ns),
            "-o",
            "jsonpath={.webhooks[0].clientConfig.caBundle}",
        ],
        None,
    );
    let ca_pem = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(String::from_utf8_lossy(&ca.stdout).trim())
            .expect("the caBundle is base64")
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(&ca_pem) {
        roots
            .add(cert.expect("a PEM certificate"))
            .expect("adding the webhook's CA");
    }
    let tls = std::sync::Arc::new(
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth(),
    );
    let connector = tokio_rustls::TlsConnector::from(tls);
    let mut silent = Vec::new();
    for _ in 0..20 {
        let tcp = tokio::net::TcpStream::connect(&addr)
            .await
            .expect("connecting to the webhook");
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("a server name");
        silent.push(
            connector
                .connect(name, tcp)
                .await
                .expect("a TLS handshake with the webhook"),
        );
    }
    // The handshake timeout closes every idle connection, the head timeout every silent one.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    for (i, conn) in silent.iter_mut().enumerate() {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let mut buf = [0u8; 64];
        let closed = tokio::time::timeout(left, conn.read(&mut buf)).await;
        assert!(
            matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
            "silent TLS connection {i} was still open 20s after it was made: {closed:?}"
        );
    }
    for (i, conn) in idle.iter_mut().enumerate() {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let mut buf = [0u8; 64];
        let closed = tokio::time::timeout(left, conn.read(&mut buf)).await;
        assert!(
            matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
            "idle connection {i} was still open 20s after it was made: {closed:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_pod_whose_own_mount_a_source_directory_would_shadow_then_it_is_admitted_uninjected_with_a_warning_and_an_event_but_none_on_dry_run()
 {
    let f = fixture("wh-shadow", &[]).await;
    let out = f.kubectl(&["apply", "-f", "-"], Some(&example(&f.ns)));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The example reads /var/log/app/*.log; the app keeps its own volume at /var/log,
    // which an emptyDir at /var/log/app would partly hide.
    let shadowing = |name: &str| {
        POD.replace("name: web,", &format!("name: {name},"))
            .replace("mountPath: /data", "mountPath: /var/log")
    };
    for (name, extra) in [("shadow-dry", vec!["--dry-run=server"]), ("shadow", vec![])] {
        let mut args = vec!["create", "-f", "-"];
        args.extend(extra);
        let out = f.kubectl(&args, Some(&shadowing(name)));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{name} was refused: {stderr}");
        assert!(
            stderr.contains("Warning: servicelog:")
                && stderr.contains("source directory /var/log/app")
                && stderr.contains("container app"),
            "{name}: no warning naming the directory and the container: {stderr}"
        );
    }
    let pod = Api::<Pod>::namespaced(f.client.clone(), &f.ns)
        .get("shadow")
        .await
        .expect("pod");
    let spec = pod.spec.expect("spec");
    assert!(
        spec.init_containers.is_none() && spec.containers.len() == 1,
        "the pod was changed: {spec:#?}"
    );

    let events: Api<Event> = Api::namespaced(f.client.clone(), &f.ns);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let about = |e: &Event, name: &str| {
        e.reason.as_deref() == Some("ServiceLogNotInjected")
            && e.involved_object.name.as_deref() == Some(name)
    };
    loop {
        let list = events.list(&ListParams::default()).await.expect("events");
        if let Some(e) = list.items.iter().find(|e| about(e, "shadow")) {
            let message = e.message.clone().unwrap_or_default();
            assert!(message.contains("/var/log/app"), "{message}");
            assert!(
                !list.items.iter().any(|e| about(e, "shadow-dry")),
                "a dry run posted an Event"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after 15s waiting for a ServiceLogNotInjected event about pod shadow"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
