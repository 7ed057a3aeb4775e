//! Smoke tests of the test environment itself: the real API server serves the generated
//! CRD (with its CEL rules), and the real ZooKeeper stores znodes.

use std::time::Duration;

use kube::{Api, api::PostParams};
use servicelog_api::v1alpha1::ServiceLog;
use servicelog_e2e::{TestEnv, chart::ok, workspace_dir};
use zookeeper_client::{Acls, CreateMode};

fn env() -> &'static TestEnv {
    match TestEnv::shared() {
        Ok(env) => env,
        Err(e) => panic!("the test environment did not start: {e}"),
    }
}

fn install_crds(env: &TestEnv) {
    env.install_crds().unwrap_or_else(|e| panic!("{e}"));
}

fn example(namespace: &str) -> ServiceLog {
    let text = std::fs::read_to_string(workspace_dir().join("examples/checkout.yaml"))
        .expect("examples/checkout.yaml");
    let mut slog: ServiceLog =
        serde_yaml::from_str(&text).expect("examples/checkout.yaml is a ServiceLog");
    slog.metadata.namespace = Some(namespace.to_owned());
    slog
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_the_crd_when_a_servicelog_is_created_then_it_reads_back_and_kubectl_lists_it() {
    let env = env();
    install_crds(env);
    let ns = env.create_namespace("smoke").await.expect("namespace");
    let api: Api<ServiceLog> = Api::namespaced(env.client().await.expect("client"), &ns);

    let created = api
        .create(&PostParams::default(), &example(&ns))
        .await
        .expect("create ServiceLog");
    let read = api.get("checkout").await.expect("get ServiceLog");
    assert_eq!(
        read.spec,
        example(&ns).spec,
        "the spec read back differs from the one created"
    );
    assert_eq!(read.metadata.uid, created.metadata.uid);

    let listing = ok(
        "kubectl get slog -A",
        env.kubectl().args(["get", "slog", "-A"]).output(),
    );
    assert!(
        listing.contains(&ns) && listing.contains("checkout"),
        "kubectl get slog -A does not list {ns}/checkout:\n{listing}"
    );
    for column in ["READY", "VALID", "PUBLISHED", "APPLIED", "AGE"] {
        assert!(
            listing.contains(column),
            "printer column {column} missing:\n{listing}"
        );
    }
    assert!(
        !listing.contains("HASH"),
        "a wide column in the default listing:\n{listing}"
    );
    let wide = ok(
        "kubectl get slog -o wide",
        env.kubectl()
            .args(["get", "slog", "-n", &ns, "-o", "wide"])
            .output(),
    );
    for column in ["MATCHED", "INJECTED", "HASH"] {
        assert!(
            wide.contains(column),
            "-o wide column {column} missing:\n{wide}"
        );
    }
    let category = ok(
        "kubectl api-resources --categories=servicelog",
        env.kubectl()
            .args(["api-resources", "--categories=servicelog", "-o", "name"])
            .output(),
    );
    assert_eq!(category.trim(), "servicelogs.servicelog.io");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_the_crd_when_a_rule_has_both_to_and_drop_then_the_api_server_refuses_it_with_the_path()
 {
    let env = env();
    install_crds(env);
    let ns = env.create_namespace("cel").await.expect("namespace");
    let api: Api<ServiceLog> = Api::namespaced(env.client().await.expect("client"), &ns);

    let mut bad = example(&ns);
    bad.spec.rules[0].to = Some(vec!["console".into()]);
    bad.spec.rules[1].to = Some(vec!["nowhere".into()]);
    bad.spec.rules[2].sample = Some(1.5);
    let err = api
        .create(&PostParams::default(), &bad)
        .await
        .expect_err("the API server accepted a rule with both to and action: drop");
    let text = err.to_string();
    // The undeclared sink in rules[1] is the validating webhook's to refuse, by its path
    // (e2e/tests/webhook.rs); the schema alone admits it.
    for needle in [
        "spec.rules[0]",
        "has both to and action: drop",
        "a rule has either to or action: drop",
        "spec.rules[2].sample",
    ] {
        assert!(text.contains(needle), "refusal lacks {needle:?}: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_the_crd_when_the_delivery_example_is_applied_then_its_fields_survive_and_cel_guards_credentials()
 {
    let env = env();
    install_crds(env);
    let ns = env.create_namespace("delivery").await.expect("namespace");
    let api: Api<ServiceLog> = Api::namespaced(env.client().await.expect("client"), &ns);
    let text = std::fs::read_to_string(workspace_dir().join("examples/delivery.yaml"))
        .expect("examples/delivery.yaml");
    let mut slog: ServiceLog =
        serde_yaml::from_str(&text).expect("examples/delivery.yaml is a ServiceLog");
    slog.metadata.namespace = Some(ns.clone());
    api.create(&PostParams::default(), &slog)
        .await
        .expect("the API server refused examples/delivery.yaml");
    let read = api.get("payments").await.expect("get ServiceLog");
    assert_eq!(
        read.spec, slog.spec,
        "the API server pruned or changed delivery fields"
    );

    let mut bad = slog.clone();
    bad.metadata.name = Some("bad".into());
    bad.spec.sinks.push(
        serde_yaml::from_str("{name: console, stdout: {}, credentialsSecretRef: {name: x}}")
            .expect("sink"),
    );
    let err = api
        .create(&PostParams::default(), &bad)
        .await
        .expect_err("the API server accepted credentials on a stdout sink");
    assert!(
        err.to_string()
            .contains("credentialsSecretRef applies to http, otlp and kafka sinks only"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_zookeeper_when_a_znode_is_written_then_it_reads_back() {
    let env = env();
    let client = tokio::time::timeout(
        Duration::from_secs(10),
        zookeeper_client::Client::connect(&env.zk_connect()),
    )
    .await
    .expect("timed out after 10s connecting to the test ZooKeeper")
    .expect("connect to ZooKeeper");
    let path = format!("/{}", servicelog_e2e::unique_name("smoke"));
    let options = CreateMode::Persistent.with_acls(Acls::anyone_all());
    client
        .create(&path, b"hello", &options)
        .await
        .expect("create znode");
    let (data, stat) = client.get_data(&path).await.expect("read znode");
    assert_eq!(data, b"hello");
    assert_eq!(stat.version, 0);
    client.delete(&path, Some(0)).await.expect("delete znode");
}

#[test]
fn given_a_running_environment_then_its_env_file_exports_what_a_shell_needs() {
    let env = env();
    let file = env.env_file();
    for needle in [
        "export KUBECONFIG=",
        "export SERVICELOG_ZK_CONNECT=",
        "export PATH=",
    ] {
        assert!(file.contains(needle), "env file lacks {needle}:\n{file}");
    }
    assert!(env.tools().path("kubectl").is_file());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_the_crd_when_byte_sizes_are_quantities_then_the_api_server_keeps_them_and_they_read_as_bytes()
 {
    let env = env();
    install_crds(env);
    let ns = env.create_namespace("sizes").await.expect("namespace");
    let manifest = |size: &str| {
        format!(
            "apiVersion: servicelog.io/v1alpha1\nkind: ServiceLog\nmetadata: {{name: sizes, namespace: {ns}}}\n\
             spec:\n  sources: [{{name: app, file: {{paths: [/var/log/app/*.log]}}, maxLineBytes: 64Ki}}]\n  \
             sinks: [{{name: out, stdout: {{}}, buffer: {{maxBytes: {size}}}}}]\n  defaultTo: [out]\n"
        )
    };
    let file = env.dir().join(format!("{ns}-sizes.yaml"));
    std::fs::write(&file, manifest("8Mi")).expect("writing the manifest");
    ok(
        "kubectl apply (quantities)",
        env.kubectl().args(["apply", "-f"]).arg(&file).output(),
    );
    let stored = ok(
        "kubectl get slog",
        env.kubectl()
            .args([
                "get",
                "slog",
                "sizes",
                "-n",
                &ns,
                "-o",
                "jsonpath={.spec.sinks[0].buffer.maxBytes}",
            ])
            .output(),
    );
    assert_eq!(
        stored, "8Mi",
        "the API server did not keep what the user wrote"
    );
    let api: Api<ServiceLog> = Api::namespaced(env.client().await.expect("client"), &ns);
    let read = api.get("sizes").await.expect("get ServiceLog");
    assert_eq!(
        read.spec.sinks[0].buffer.as_ref().and_then(|b| b.max_bytes),
        Some(8 << 20)
    );
    assert_eq!(read.spec.sources[0].max_line_bytes, Some(64 << 10));
    // Neither an integer nor a string: the API server's schema refuses it.
    std::fs::write(&file, manifest("[8]")).expect("writing the manifest");
    let out = env
        .kubectl()
        .args(["apply", "-f"])
        .arg(&file)
        .output()
        .expect("kubectl apply");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("maxBytes"),
        "a list as a byte size was accepted or not named: {stderr}"
    );
}
