//! Rotating the operator's ZooKeeper identity — and with it every namespace's — without
//! restarting a pod: real API server, real ZooKeeper, the operator and an injected
//! sidecar as real processes (the sidecar run with exactly its pod's mounts, the
//! namespace's identity Secret written into its volume as a kubelet would).
//!
//! The procedure (docs/install.md, "Rotating the identity"): start the operator with the
//! new identity and `--zk-auth-previous-file` naming the old one; wait for the sidecars to
//! pick up their namespaces' new Secrets; start it again without the previous one.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::{
    Api,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use servicelog_api::{
    v1alpha1::{ServiceLog, ServiceLogStatus},
    wire::Layout,
    zkauth::Credentials,
};
use servicelog_e2e::{
    TestEnv, pod,
    run::{Operator, OperatorOptions, bin_dir},
    unique_name,
};

const WAIT: Duration = Duration::from_secs(45);

fn env() -> &'static TestEnv {
    TestEnv::shared().unwrap_or_else(|e| panic!("the test environment did not start: {e}"))
}

const SERVICELOG: &str = r#"
apiVersion: servicelog.io/v1alpha1
kind: ServiceLog
metadata: {name: billing}
spec:
  selector: {matchLabels: {app: billing}}
  sources:
    - name: app
      file: {paths: ["/var/log/app/*.log"], format: json}
  sinks:
    - name: out
      file: {path: /var/log/servicelog/out.log}
  rules:
    - name: drop-debug
      when: {level: {below: info}}
      action: drop
  defaultTo: [out]
"#;

const POD: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: billing-0
  labels: {app: billing}
  annotations: {servicelog.io/inject: billing}
spec:
  containers: [{name: app, image: busybox}]
"#;

async fn wait_for<T>(
    what: &str,
    context: impl Fn() -> String,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {WAIT:?} waiting for {what}\n{}",
            context()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// An identity file for the operator, and the identity in it.
fn identity_file(name: &str) -> (std::path::PathBuf, Credentials) {
    let dir = servicelog_e2e::base_dir().join(unique_name(name));
    std::fs::create_dir_all(&dir).expect("creating the identity's directory");
    let path = dir.join("zk-auth");
    let credentials = Credentials::digest("servicelog-operator", unique_name("pw"));
    std::fs::write(&path, credentials.to_line()).expect("writing the identity file");
    (path, credentials)
}

async fn zk_as(connect: &str, credentials: &Credentials) -> zookeeper_client::Client {
    let connector = zookeeper_client::Client::connector()
        .with_session_timeout(Duration::from_secs(30))
        .with_auth("digest", &credentials.auth_bytes());
    tokio::time::timeout(Duration::from_secs(10), connector.connect(connect))
        .await
        .unwrap_or_else(|_| panic!("timed out after 10s connecting to ZooKeeper at {connect}"))
        .expect("connect to ZooKeeper")
}

/// The status once it reports generation `generation` applied by one pod.
fn applied(status: &ServiceLogStatus, generation: i64) -> bool {
    status.observed_generation == Some(generation)
        && status.pods.as_ref().is_some_and(|p| p.applied == 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_rotated_operator_identity_then_an_injected_sidecar_keeps_applying_through_it_without_a_restart()
 {
    let env = env();
    env.install_crds().unwrap_or_else(|e| panic!("{e}"));
    let ns = env.create_namespace("rotation").await.expect("namespace");
    let root = format!("/{}", unique_name("rotation"));
    let layout = Layout::new(&root).expect("layout");
    let connect = env.zk_connect();
    let (old_file, old) = identity_file("rotation-old");
    let (new_file, new) = identity_file("rotation-new");
    // Only the first serves the webhook (the pod is created while it runs).
    let start = |who: &str, args: Vec<String>| {
        Operator::start(
            env,
            &OperatorOptions {
                namespace: ns.clone(),
                zk_connect: connect.clone(),
                zk_root: root.clone(),
                identity: who.into(),
                leader_election: false,
                webhook: who == "old",
                extra_args: args,
            },
        )
        .unwrap_or_else(|e| panic!("operator {who} did not start: {e}"))
    };
    let operator = start(
        "old",
        vec![format!("--zk-auth-file={}", old_file.display())],
    );
    let client = env.client().await.expect("client");
    let slogs = Api::<ServiceLog>::namespaced(client.clone(), &ns);
    let secrets = Api::<Secret>::namespaced(client.clone(), &ns);
    let servicelog: ServiceLog = serde_yaml::from_str(SERVICELOG).expect("fixture");
    slogs
        .create(&PostParams::default(), &servicelog)
        .await
        .expect("create the ServiceLog");

    // The pod, injected (the webhook may need a moment to be called).
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    let mut template: Pod = serde_yaml::from_str(POD).expect("pod");
    template.metadata.namespace = Some(ns.clone());
    let logs = || operator.log_tail(25);
    let admitted = wait_for("an injected pod", logs, async || {
        let p = pods.create(&PostParams::default(), &template).await.ok()?;
        if pod::container(&p, "servicelog-sidecar").is_some() {
            return Some(p);
        }
        let _ = pods
            .delete("billing-0", &DeleteParams::default().grace_period(0))
            .await;
        for _ in 0..100 {
            if pods.get_opt("billing-0").await.ok().flatten().is_none() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    })
    .await;
    let namespace_identity = async || {
        let s = secrets
            .get_opt(servicelog_api::pod::ZK_AUTH_SECRET)
            .await
            .ok()??;
        let line = s.data?.get(servicelog_api::pod::ZK_AUTH_KEY)?.0.clone();
        Credentials::parse(&String::from_utf8_lossy(&line)).ok()
    };
    wait_for("the namespace's identity Secret", logs, async || {
        (namespace_identity().await? == old.for_namespace(&ns)).then_some(())
    })
    .await;
    pod::materialize_secrets(&client, env.env_dir(), &admitted)
        .await
        .expect("the pod's secret volumes");
    let container = pod::container(&admitted, "servicelog-sidecar")
        .expect("sidecar")
        .clone();
    let binary = bin_dir().expect("binaries").join("servicelog-sidecar");
    let mut sidecar =
        pod::run(env.env_dir(), &admitted, &container, &binary).expect("start the sidecar");
    let sidecar_pid = sidecar.proc.pid();
    let generation = |s: &ServiceLog| s.metadata.generation.expect("generation");
    let first = generation(&slogs.get("billing").await.expect("get"));
    wait_for("applied 1/1 under the old identity", logs, async || {
        applied(&slogs.get("billing").await.ok()?.status?, first).then_some(())
    })
    .await;

    // Step 1: the new identity, the old one still honoured.
    drop(operator);
    let operator = start(
        "overlap",
        vec![
            format!("--zk-auth-file={}", new_file.display()),
            format!("--zk-auth-previous-file={}", old_file.display()),
        ],
    );
    let logs = || {
        format!(
            "--- operator ---\n{}\n--- sidecar ---\n{}",
            operator.log_tail(25),
            sidecar.proc.log_tail(25)
        )
    };
    wait_for(
        "the Secret to hold the new namespace identity",
        logs,
        async || (namespace_identity().await? == new.for_namespace(&ns)).then_some(()),
    )
    .await;
    // A change while the sidecar still holds only the old identity.
    let patch = |level: &'static str| serde_json::json!({"spec": {"rules": [{"name": "drop-debug", "when": {"level": {"below": level}}, "action": "drop"}]}});
    let second = generation(
        &slogs
            .patch(
                "billing",
                &PatchParams::default(),
                &Patch::Merge(patch("warn")),
            )
            .await
            .expect("patch"),
    );
    wait_for("applied 1/1 during the overlap", logs, async || {
        applied(&slogs.get("billing").await.ok()?.status?, second).then_some(())
    })
    .await;
    // The kubelet syncs the Secret into the volume; the sidecar adds it to its session.
    pod::materialize_secrets(&client, env.env_dir(), &admitted)
        .await
        .expect("the pod's secret volumes, rotated");
    wait_for(
        "the sidecar to take the rotated identity",
        logs,
        async || {
            sidecar
                .proc
                .log_tail(200)
                .contains("identity was rotated; added it to the session")
                .then_some(())
        },
    )
    .await;

    // Step 2: the old identity retired.
    drop(operator);
    let operator = start(
        "new",
        vec![format!("--zk-auth-file={}", new_file.display())],
    );
    let logs = || {
        format!(
            "--- operator ---\n{}\n--- sidecar ---\n{}",
            operator.log_tail(25),
            sidecar.proc.log_tail(25)
        )
    };
    let config = layout.config(&ns, "billing").expect("config path");
    let as_old_tenant = zk_as(&connect, &old.for_namespace(&ns)).await;
    wait_for(
        "the old namespace identity to lose the config",
        logs,
        async || {
            matches!(
                as_old_tenant.get_data(&config).await,
                Err(zookeeper_client::Error::NoAuth)
            )
            .then_some(())
        },
    )
    .await;
    let third = generation(
        &slogs
            .patch(
                "billing",
                &PatchParams::default(),
                &Patch::Merge(patch("error")),
            )
            .await
            .expect("patch"),
    );
    wait_for(
        "applied 1/1 after the old identity is gone",
        logs,
        async || applied(&slogs.get("billing").await.ok()?.status?, third).then_some(()),
    )
    .await;
    let context = logs();
    assert!(
        sidecar.proc.exited().is_none(),
        "the sidecar exited\n{context}"
    );
    assert_eq!(sidecar.proc.pid(), sidecar_pid, "the sidecar was restarted");
    let as_new_tenant = zk_as(&connect, &new.for_namespace(&ns)).await;
    as_new_tenant
        .get_data(&config)
        .await
        .expect("the new namespace identity reads its config");
    drop(operator);
}
