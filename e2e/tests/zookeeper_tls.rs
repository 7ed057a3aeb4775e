//! The operator over TLS to a real ZooKeeper (`secureClientPort`, a CA and certificates
//! made for the test): it publishes with a client certificate (mutual TLS), and with the
//! wrong CA it says so, naming the CA file. The sidecar's side is in
//! `sidecar/tests/zookeeper_tls.rs`.

use std::time::{Duration, Instant};

use kube::{Api, api::PostParams};
use servicelog_api::{
    v1alpha1::ServiceLog,
    wire::{Envelope, Layout},
};
use servicelog_e2e::{
    TestEnv,
    run::{Operator, OperatorOptions},
    unique_name, workspace_dir,
    zookeeper::{ZkPki, ZooKeeper},
};

const WAIT: Duration = Duration::from_secs(30);

fn env() -> &'static TestEnv {
    TestEnv::shared().unwrap_or_else(|e| panic!("the test environment did not start: {e}"))
}

fn example() -> ServiceLog {
    let text =
        std::fs::read_to_string(workspace_dir().join("examples/checkout.yaml")).expect("example");
    serde_yaml::from_str(&text).expect("example is a ServiceLog")
}

fn tls_zookeeper(env: &TestEnv, label: &str) -> (ZooKeeper, ZkPki) {
    let pki = ZkPki::create(&env.dir().join(unique_name(&format!("{label}-pki"))))
        .unwrap_or_else(|e| panic!("making the test CA: {e}"));
    let zk = ZooKeeper::start_tls(env.env_dir(), label, &pki)
        .unwrap_or_else(|e| panic!("starting ZooKeeper with TLS: {e}"));
    (zk, pki)
}

fn operator(env: &TestEnv, ns: &str, root: &str, connect: &str, tls: &[String]) -> Operator {
    let options = OperatorOptions {
        namespace: ns.to_owned(),
        zk_connect: connect.to_owned(),
        zk_root: root.to_owned(),
        identity: "tls".into(),
        leader_election: false,
        webhook: false,
        extra_args: tls.to_vec(),
    };
    Operator::start(env, &options).unwrap_or_else(|e| panic!("the operator did not start: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_zookeeper_serving_tls_then_the_operator_publishes_over_it_with_a_client_certificate()
{
    let env = env();
    env.install_crds().unwrap_or_else(|e| panic!("{e}"));
    let (zk, pki) = tls_zookeeper(env, "tls-publish");
    let ns = env.create_namespace("zk-tls").await.expect("namespace");
    let root = format!("/{}", unique_name("t"));
    let op = operator(
        env,
        &ns,
        &root,
        &zk.secure_connect_string(),
        &[
            format!("--zk-tls-ca-file={}", pki.ca.display()),
            format!("--zk-tls-cert-file={}", pki.client_cert.display()),
            format!("--zk-tls-key-file={}", pki.client_key.display()),
        ],
    );
    let client = env.client().await.expect("client");
    let mut slog = example();
    slog.metadata.namespace = Some(ns.clone());
    Api::<ServiceLog>::namespaced(client, &ns)
        .create(&PostParams::default(), &slog)
        .await
        .expect("create ServiceLog");

    // Read back on the plain port: the operator only knows the TLS one.
    let reader = servicelog_e2e::zookeeper::connect(&zk.connect_string())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let path = Layout::new(&root)
        .expect("layout")
        .config(&ns, "checkout")
        .expect("path");
    let start = Instant::now();
    let envelope = loop {
        if let Ok((data, _)) = reader.get_data(&path).await {
            break Envelope::from_slice(&data).expect("the operator's envelope parses");
        }
        assert!(
            start.elapsed() < WAIT,
            "no config znode {path} after {WAIT:?}: the operator did not publish over TLS\n{}",
            op.log_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(envelope.spec.sources[0].name, "app");
    let log = op.log_tail(200);
    assert!(
        !log.contains("ZooKeeper unavailable"),
        "the operator should have connected at once:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_the_wrong_ca_then_the_operator_says_the_tls_handshake_failed_naming_the_ca_file() {
    let env = env();
    env.install_crds().unwrap_or_else(|e| panic!("{e}"));
    let (zk, pki) = tls_zookeeper(env, "tls-wrong-ca");
    let ns = env.create_namespace("zk-tls-bad").await.expect("namespace");
    let root = format!("/{}", unique_name("t"));
    let op = operator(
        env,
        &ns,
        &root,
        &zk.secure_connect_string(),
        &[
            format!("--zk-tls-ca-file={}", pki.wrong_ca.display()),
            "--zk-session-timeout=2s".into(),
        ],
    );
    let wrong = pki.wrong_ca.display().to_string();
    let start = Instant::now();
    loop {
        let log = op.log_tail(100);
        if log.contains("ZooKeeper unavailable") {
            assert!(
                log.contains("not signed by that CA") && log.contains(&wrong),
                "the failure should name the TLS handshake and the CA file {wrong}:\n{log}"
            );
            break;
        }
        assert!(
            start.elapsed() < WAIT,
            "no 'ZooKeeper unavailable' in the operator's log after {WAIT:?}:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // No session was ever made: nothing was written.
    let reader = servicelog_e2e::zookeeper::connect(&zk.connect_string())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        matches!(reader.check_stat(&root).await, Ok(None)),
        "an operator that cannot verify the server must not have written {root}"
    );
}

#[test]
fn given_tls_flags_that_cannot_work_then_the_operator_refuses_to_start_naming_them() {
    let bin = servicelog_e2e::run::bin_dir()
        .unwrap_or_else(|e| panic!("{e}"))
        .join("servicelog-operator");
    let dir = std::env::temp_dir().join(unique_name("zk-tls-flags"));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let garbage = dir.join("ca.pem");
    std::fs::write(&garbage, "not a certificate\n").expect("write");
    for (args, want) in [
        (
            vec!["--zk-connect=tcp+tls://127.0.0.1:1".to_owned()],
            "SERVICELOG_ZK_TLS_CA_FILE".to_owned(),
        ),
        (
            vec![
                "--zk-connect=127.0.0.1:1".to_owned(),
                format!("--zk-tls-ca-file={}", garbage.display()),
            ],
            format!("CA file {}", garbage.display()),
        ),
        (
            vec![
                "--zk-connect=127.0.0.1:1".to_owned(),
                format!("--zk-tls-ca-file={}", garbage.display()),
                "--zk-tls-cert-file=/x.pem".to_owned(),
            ],
            "only the certificate is given".to_owned(),
        ),
    ] {
        let out = std::process::Command::new(&bin)
            .arg("run")
            .args(&args)
            .arg("--metrics-addr=127.0.0.1:0")
            .env("KUBECONFIG", dir.join("no-kubeconfig"))
            .output()
            .expect("running the operator");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} must not start:\n{stderr}");
        assert!(
            stderr.contains(&want),
            "{args:?}: expected {want:?} in:\n{stderr}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_the_operator_writes_the_ca_into_namespaces_then_an_injected_sidecar_applies_over_tls_without_a_secret_of_the_users()
 {
    use k8s_openapi::api::core::v1::{Pod, Secret};
    use kube::api::DeleteParams;
    use servicelog_e2e::{pod, run::bin_dir};

    let env = env();
    env.install_crds().unwrap_or_else(|e| panic!("{e}"));
    let (zk, pki) = tls_zookeeper(env, "tls-ca");
    let ns = env.create_namespace("zk-tls-ca").await.expect("namespace");
    let root = format!("/{}", unique_name("t"));
    let op = Operator::start(
        env,
        &OperatorOptions {
            namespace: ns.clone(),
            zk_connect: zk.secure_connect_string(),
            zk_root: root.clone(),
            identity: "tls-ca".into(),
            leader_election: false,
            webhook: true,
            extra_args: vec![
                format!("--zk-tls-ca-file={}", pki.ca.display()),
                "--sidecar-zk-tls-secret=servicelog-zk-tls".to_owned(),
                "--sidecar-zk-tls-write-ca".to_owned(),
            ],
        },
    )
    .unwrap_or_else(|e| panic!("the operator did not start: {e}"));
    let client = env.client().await.expect("client");
    let slogs = Api::<ServiceLog>::namespaced(client.clone(), &ns);
    let mut slog = example();
    slog.metadata.namespace = Some(ns.clone());
    slogs
        .create(&PostParams::default(), &slog)
        .await
        .expect("create ServiceLog");

    let secrets = Api::<Secret>::namespaced(client.clone(), &ns);
    let ca = std::fs::read(&pki.ca).expect("the CA file");
    let start = Instant::now();
    loop {
        let written = secrets
            .get_opt("servicelog-zk-tls")
            .await
            .ok()
            .flatten()
            .and_then(|s| s.data?.get(servicelog_api::pod::ZK_TLS_CA_KEY).cloned());
        if written.is_some_and(|c| c.0 == ca) {
            break;
        }
        assert!(
            start.elapsed() < WAIT,
            "no Secret servicelog-zk-tls with the CA in {ns} after {WAIT:?}\n{}",
            op.log_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // An injected pod: its sidecar, with the pod's mounts and env, applies over TLS.
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    let template: Pod = serde_yaml::from_str(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata:
  name: checkout-0
  namespace: {ns}
  labels: {{app: checkout}}
  annotations: {{servicelog.io/inject: checkout}}
spec:
  containers: [{{name: app, image: busybox}}]
"#
    ))
    .expect("pod");
    let start = Instant::now();
    let admitted = loop {
        if let Ok(p) = pods.create(&PostParams::default(), &template).await {
            if pod::container(&p, "servicelog-sidecar").is_some() {
                break p;
            }
            let _ = pods
                .delete("checkout-0", &DeleteParams::default().grace_period(0))
                .await;
        }
        assert!(
            start.elapsed() < WAIT,
            "no injected pod after {WAIT:?}\n{}",
            op.log_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    pod::materialize_secrets(&client, env.env_dir(), &admitted)
        .await
        .expect("the pod's secret volumes");
    let container = pod::container(&admitted, "servicelog-sidecar")
        .expect("sidecar")
        .clone();
    let binary = bin_dir().expect("binaries").join("servicelog-sidecar");
    let sidecar = pod::run(env.env_dir(), &admitted, &container, &binary).expect("the sidecar");
    let start = Instant::now();
    loop {
        let applied = slogs
            .get("checkout")
            .await
            .ok()
            .and_then(|s| s.status?.pods)
            .is_some_and(|p| p.applied == 1);
        if applied {
            break;
        }
        assert!(
            start.elapsed() < WAIT,
            "the sidecar did not apply over TLS within {WAIT:?}\n--- operator ---\n{}\n--- sidecar ---\n{}",
            op.log_tail(30),
            sidecar.proc.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        sidecar.proc.log_tail(200).contains("tls=true"),
        "the sidecar's session is over TLS\n{}",
        sidecar.proc.log_tail(50)
    );
}
