//! Credentials by reference, end to end, on real components: a Secret in the namespace, a
//! ServiceLog whose http sink names it, an annotated Pod injected by the webhook with the
//! Secret mounted into the sidecar only, the sidecar run with exactly that pod's mounts,
//! and a real HTTP receiver that sees the credentials on every request — while neither
//! the config znode nor the ServiceLog's status ever holds them.

use std::{collections::BTreeMap, io::Write, time::Duration};

use k8s_openapi::{
    ByteString,
    api::core::v1::{Pod, Secret},
};
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
    receiver::Receiver,
    run::{Operator, OperatorOptions, bin_dir},
    unique_name,
};

const WAIT: Duration = Duration::from_secs(30);
const USER: &str = "shop";
const PASSWORD: &str = "s3cr3t-never-in-zookeeper";
const TENANT: &str = "tenant-42";

fn env() -> &'static TestEnv {
    TestEnv::shared().unwrap_or_else(|e| panic!("the test environment did not start: {e}"))
}

fn servicelog(url: &str) -> ServiceLog {
    serde_yaml::from_str(&format!(
        r#"
apiVersion: servicelog.io/v1alpha1
kind: ServiceLog
metadata: {{name: payments}}
spec:
  selector: {{matchLabels: {{app: payments}}}}
  sources:
    - name: app
      file: {{paths: ["/var/log/app/*.log"], format: json}}
  sinks:
    - name: remote
      http: {{url: "{url}", encoding: json_lines, batch: {{timeout: 200ms}}}}
      credentialsSecretRef: {{name: remote-credentials}}
  defaultTo: [remote]
"#
    ))
    .expect("the ServiceLog fixture parses")
}

const POD: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: payments-0
  labels: {app: payments}
  annotations: {servicelog.io/inject: payments}
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
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn is_true(s: &ServiceLogStatus, type_: &str) -> bool {
    s.conditions
        .iter()
        .any(|c| c.r#type == type_ && c.status == "True")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_an_http_sink_with_a_secret_then_the_sidecar_authenticates_from_the_mount_and_the_secret_stays_out_of_zookeeper()
 {
    let env = env();
    env.install_crds().unwrap_or_else(|e| panic!("{e}"));
    let ns = env.create_namespace("delivery").await.expect("namespace");
    let root = format!("/{}", unique_name("delivery"));
    let operator = Operator::start(
        env,
        &OperatorOptions {
            namespace: ns.clone(),
            zk_connect: env.zk_connect(),
            zk_root: root.clone(),
            identity: "a".into(),
            leader_election: false,
            webhook: true,
            extra_args: Vec::new(),
        },
    )
    .unwrap_or_else(|e| panic!("operator did not start: {e}"));
    let client = env.client().await.expect("client");
    let receiver = Receiver::start();

    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("remote-credentials".into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([
            ("username".to_owned(), ByteString(USER.into())),
            ("password".to_owned(), ByteString(PASSWORD.into())),
            ("header.X-Scope-OrgID".to_owned(), ByteString(TENANT.into())),
        ])),
        ..Default::default()
    };
    Api::<Secret>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &secret)
        .await
        .expect("create the Secret");
    let slogs = Api::<ServiceLog>::namespaced(client.clone(), &ns);
    slogs
        .create(
            &PostParams::default(),
            &servicelog(&receiver.url("/ingest")),
        )
        .await
        .expect("create the ServiceLog");
    let logs = || operator.log_tail(25);
    wait_for("Published=True", logs, async || {
        let s = slogs.get("payments").await.ok()?.status?;
        is_true(&s, "Published").then_some(())
    })
    .await;

    // Until the API server calls the fresh webhook, pods are admitted uninjected (failure
    // policy Ignore): create the pod until it comes back injected.
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    let mut template: Pod = serde_yaml::from_str(POD).expect("pod");
    template.metadata.namespace = Some(ns.clone());
    let admitted = wait_for("an injected pod", logs, async || {
        let p = pods.create(&PostParams::default(), &template).await.ok()?;
        if pod::container(&p, "servicelog-sidecar").is_some() {
            return Some(p);
        }
        let _ = pods
            .delete("payments-0", &DeleteParams::default().grace_period(0))
            .await;
        wait_gone(&pods).await;
        None
    })
    .await;
    let sidecar = pod::container(&admitted, "servicelog-sidecar")
        .expect("sidecar")
        .clone();
    let app = pod::container(&admitted, "app").expect("app").clone();
    let credential_mount = sidecar
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.mount_path == "/var/run/servicelog/credentials/remote")
        .unwrap_or_else(|| panic!("no credentials mount in the sidecar: {sidecar:#?}"));
    assert!(
        app.volume_mounts
            .iter()
            .flatten()
            .all(|m| m.name != credential_mount.name),
        "the app container must not see the sink's credentials"
    );

    pod::materialize_secrets(&client, env.env_dir(), &admitted)
        .await
        .expect("materialize the pod's secret volumes");
    let binary = bin_dir().expect("binaries").join("servicelog-sidecar");
    let running = pod::run(env.env_dir(), &admitted, &sidecar, &binary).expect("start the sidecar");
    let app_dir = running
        .dirs
        .path_in(&app, "/var/log/app")
        .expect("the app mounts /var/log/app");

    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(app_dir.join("app.log"))
        .expect("app log");
    for seq in 0..200 {
        writeln!(f, "{{\"level\":\"info\",\"msg\":\"paid\",\"seq\":{seq}}}").expect("write");
    }
    drop(f);
    let sidecar_log = || running.proc.log_tail(25);
    wait_for("200 lines at the receiver", sidecar_log, async || {
        (receiver.taken_seqs().len() == 200).then_some(())
    })
    .await;
    assert!(
        receiver.taken_seqs().values().all(|n| *n == 1),
        "a line arrived twice"
    );

    let basic = serde_json::to_string(&ByteString(format!("{USER}:{PASSWORD}").into_bytes()))
        .expect("base64");
    let basic = format!("Basic {}", basic.trim_matches('"'));
    for r in receiver.requests() {
        assert_eq!(r.path, "/ingest");
        assert_eq!(
            r.headers.get("authorization"),
            Some(&basic),
            "a request without the Secret's basic auth"
        );
        assert_eq!(
            r.headers.get("x-scope-orgid").map(String::as_str),
            Some(TENANT)
        );
    }

    // Only the Secret's name was published.
    let zk = servicelog_e2e::zookeeper::connect(&env.zk_connect())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let layout = Layout::new(&root).expect("layout");
    let config_path = layout.config(&ns, "payments").expect("config path");
    let (data, _) = zk.get_data(&config_path).await.expect("the config znode");
    let text = String::from_utf8_lossy(&data);
    assert!(text.contains("remote-credentials"), "{text}");
    assert!(
        !text.contains(PASSWORD) && !text.contains(TENANT),
        "a secret value reached ZooKeeper: {text}"
    );
    let status = slogs
        .get("payments")
        .await
        .expect("get")
        .status
        .expect("status");
    let status = serde_json::to_string(&status).expect("status JSON");
    assert!(
        !status.contains(PASSWORD),
        "a secret value reached the status"
    );
}

async fn wait_gone(pods: &Api<Pod>) {
    for _ in 0..100 {
        if pods.get_opt("payments-0").await.ok().flatten().is_none() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
