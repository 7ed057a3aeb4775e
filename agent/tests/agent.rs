//! The agent against the real API server and a real ZooKeeper (the e2e `TestEnv`), with a
//! temporary directory standing in for `/var/log/pods`: CRI files written as containerd
//! writes them for pods that exist in the API server, bound to nodes by `spec.nodeName`.

use std::{
    fs::{self, OpenOptions},
    io::Write,
    num::NonZeroU32,
    path::{Path, PathBuf},
    time::Duration,
};

use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use servicelog_agent::{
    agent::{self, AgentOptions},
    run::Paths,
};
use servicelog_api::{
    ServiceLogSpec,
    wire::{Envelope, Instance, InstanceState, Layout},
};
use servicelog_e2e::{TestEnv, receiver::Receiver, unique_name};
use servicelog_sidecar::{
    config::last_good::LastGood,
    metrics::Metrics,
    sources::{cri::PodLogs, file::ReadRate},
};
use zookeeper_client::{Acls, Client, CreateMode};

const WAIT: Duration = Duration::from_secs(30);

fn env() -> &'static TestEnv {
    TestEnv::shared().unwrap_or_else(|e| panic!("the test environment did not start: {e}"))
}

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

/// A JSON log line with a sequence number and a level.
fn line(seq: u64, level: &str) -> String {
    format!(r#"{{"level":"{level}","seq":{seq},"msg":"served"}}"#)
}

/// The `seq` of every line `rx` took, in the order taken.
fn seqs(rx: &Receiver) -> Vec<u64> {
    rx.requests()
        .iter()
        .filter(|r| (200..300).contains(&r.status))
        .flat_map(|r| r.body.split(|&b| b == b'\n').filter(|l| !l.is_empty()))
        .map(|l| {
            let v: serde_json::Value = serde_json::from_slice(l)
                .unwrap_or_else(|e| panic!("a body line is not JSON ({e}): {l:?}"));
            v["seq"]
                .as_u64()
                .unwrap_or_else(|| panic!("a line without seq: {v}"))
        })
        .collect()
}

/// Appends `lines` as containerd writes a container's stdout.
fn print(file: &Path, lines: &[String]) {
    fs::create_dir_all(file.parent().expect("a directory")).expect("creating the log dir");
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .expect("opening the container log");
    let mut buf = String::new();
    for l in lines {
        buf.push_str(&format!("2026-12-07T17:27:32.123456789Z stdout F {l}\n"));
    }
    f.write_all(buf.as_bytes()).expect("writing");
}

/// Network sinks: the node agent refuses file sinks reached by containerLogs events.
fn spec(out: &Receiver, alerts: &Receiver, rules: serde_json::Value) -> ServiceLogSpec {
    let spec = serde_json::json!({
        "sources": [{"name": "stdout", "containerLogs": {"format": "json"}}],
        "sinks": [
            {"name": "out", "http": {"url": out.url("/out"), "batch": {"timeout": "100ms"}}},
            {"name": "alerts", "http": {"url": alerts.url("/alerts"), "batch": {"timeout": "100ms"}}},
        ],
        "rules": rules,
        "defaultTo": ["out"],
    });
    servicelog_api::validate::parse_spec(&spec)
        .unwrap_or_else(|e| panic!("test spec does not parse: {e}\n{spec}"))
}

async fn publish(zk: &Client, path: &str, envelope: &Envelope) {
    let data = envelope.to_bytes().expect("encoding the config");
    match zk.check_stat(path).await.expect("stat config") {
        Some(stat) => {
            zk.set_data(path, &data, Some(stat.version))
                .await
                .expect("updating the config");
        }
        None => {
            zk.create(
                path,
                &data,
                &CreateMode::Persistent.with_acls(Acls::anyone_all()),
            )
            .await
            .expect("creating the config");
        }
    }
}

async fn record(zk: &Client, path: &str) -> Option<Instance> {
    let (data, _) = zk.get_data(path).await.ok()?;
    Some(Instance::from_slice(&data).expect("a record"))
}

/// Pod `name` on `node`, served by ServiceLog `checkout`.
async fn bound_pod(pods: &Api<Pod>, name: &str, node: &str) -> String {
    pod_of(pods, name, node, "checkout").await
}

/// Pod `name` on `node`, annotated for ServiceLog `service_log`; its uid.
async fn pod_of(pods: &Api<Pod>, name: &str, node: &str, service_log: &str) -> String {
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "annotations": {"servicelog.io/inject": service_log}},
        "spec": {"nodeName": node, "containers": [{"name": "app", "image": "busybox"}]},
    }))
    .expect("a pod");
    let created = pods
        .create(&PostParams::default(), &pod)
        .await
        .expect("creating the pod");
    created.metadata.uid.expect("a uid")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_pods_on_two_nodes_when_the_agent_serves_one_then_it_routes_acks_live_changes_and_drains_on_delete()
 {
    let env = env();
    let kube = env.client().await.expect("a kube client");
    let ns = env.create_namespace("agent").await.expect("a namespace");
    let pods: Api<Pod> = Api::namespaced(kube.clone(), &ns);
    let zk = servicelog_e2e::zookeeper::connect(&env.zk_connect())
        .await
        .expect("a ZooKeeper client");
    let root = format!("/{}", unique_name("agent"));
    let layout = Layout::new(&root).expect("a layout");
    let config = layout.config(&ns, "checkout").expect("a path");
    for dir in [
        root.clone(),
        layout.namespaces(),
        format!("{}/{ns}", layout.namespaces()),
        layout.resource(&ns, "checkout").expect("a path"),
        layout.instances(&ns, "checkout").expect("a path"),
    ] {
        zk.create(
            &dir,
            &[],
            &CreateMode::Persistent.with_acls(Acls::anyone_all()),
        )
        .await
        .expect("creating the tree");
    }
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let (out, alerts) = (Receiver::start(), Receiver::start());
    let v1 = Envelope::new(
        "uid-1",
        1,
        spec(
            &out,
            &alerts,
            serde_json::json!([{"name": "alerts", "when": {"level": {"atLeast": "warn"}}, "to": ["alerts"]}]),
        ),
    )
    .expect("v1");
    publish(&zk, &config, &v1).await;

    let here = bound_pod(&pods, "web-a", "node-a").await;
    let there = bound_pod(&pods, "web-b", "node-b").await;
    let log_root = tmp.path().join("pods");
    let file = |name: &str, uid: &str| {
        PodLogs::dir(&log_root, &ns, name, uid)
            .join("app")
            .join("0.log")
    };
    print(&file("web-a", &here), &[line(0, "info"), line(1, "error")]);
    print(&file("web-b", &there), &[line(100, "info")]);

    let state = tmp.path().join("state");
    // A pod deleted while the agent was down left its state behind.
    let stale = state.join("pods").join("0000-gone");
    fs::create_dir_all(&stale).expect("a stale state dir");
    fs::write(stale.join("checkpoints.json"), "{}").expect("a stale checkpoint");
    // Another, whose files the kubelet still keeps: drained on its last good config.
    let gone_rx = Receiver::start();
    let gone_state = state.join("pods").join("1111-gone");
    let gone_spec: ServiceLogSpec = servicelog_api::validate::parse_spec(&serde_json::json!({
        "sources": [{"name": "stdout", "containerLogs": {"format": "json"}}],
        "sinks": [{"name": "out", "http": {"url": gone_rx.url("/gone"), "batch": {"timeout": "100ms"}}}],
        "defaultTo": ["out"],
    }))
    .expect("the gone pod's spec");
    fs::create_dir_all(&gone_state).expect("the gone pod's state dir");
    LastGood::new(&gone_state).save(&Envelope::new("uid-0", 1, gone_spec).expect("its config"));
    print(
        &PodLogs::dir(&log_root, &ns, "web-gone", "1111-gone")
            .join("app")
            .join("0.log"),
        &[line(50, "info"), line(51, "info")],
    );
    let opts = AgentOptions {
        node: "node-a".into(),
        zk_connect: env.zk_connect(),
        zk_root: root.clone(),
        zk_session_timeout: Duration::from_secs(10),
        zk_connect_timeout: Duration::from_secs(5),
        paths: Paths {
            log_root: log_root.clone(),
            state_dir: state.clone(),
            allow_file_sinks: false,
            credentials_dir: state.join("credentials"),
        },
        drain_timeout: Duration::from_secs(10),
        shutdown_timeout: Duration::from_secs(5),
        namespace_identities: false,
        pod_rate: None,
    };
    let agent = Running::start(opts, &kube);
    let sinks_now = || format!("out: {:?}\nalerts: {:?}", seqs(&out), seqs(&alerts));

    // Routed by the rules: info to out, error to alerts; the other node's pod not read.
    wait_for("web-a's lines routed", sinks_now, async || {
        (seqs(&out).len() == 1 && seqs(&alerts).len() == 1).then_some(())
    })
    .await;
    assert_eq!(seqs(&out), [0]);
    assert_eq!(seqs(&alerts), [1]);
    let here_record = layout.instance(&ns, "checkout", "web-a").expect("a path");
    let there_record = layout.instance(&ns, "checkout", "web-b").expect("a path");
    let acked = wait_for("web-a's record acking v1", String::new, async || {
        record(&zk, &here_record)
            .await
            .filter(|r| r.hash == v1.hash)
    })
    .await;
    assert_eq!(
        (acked.pod.as_str(), acked.state),
        ("web-a", InstanceState::Ok)
    );
    assert!(
        record(&zk, &there_record).await.is_none(),
        "a pod of another node has no record from this agent"
    );
    assert!(
        !stale.exists() && state.join("pods").join(&here).exists(),
        "the state of a pod gone while the agent was down is removed, a served pod's kept"
    );
    wait_for(
        "the files of the pod deleted while the agent was down drained, its state removed",
        || format!("gone: {:?}", seqs(&gone_rx)),
        async || (seqs(&gone_rx).len() == 2 && !gone_state.exists()).then_some(()),
    )
    .await;
    assert_eq!(seqs(&gone_rx), [50, 51]);

    // A live rule change: everything to alerts, acked by the pod.
    let v2 = Envelope::new(
        "uid-1",
        2,
        spec(
            &out,
            &alerts,
            serde_json::json!([{"name": "all", "when": {"level": {"atLeast": "trace"}}, "to": ["alerts"]}]),
        ),
    )
    .expect("v2");
    publish(&zk, &config, &v2).await;
    wait_for("web-a's record acking v2", String::new, async || {
        record(&zk, &here_record)
            .await
            .filter(|r| r.hash == v2.hash && r.state == InstanceState::Ok)
    })
    .await;
    print(&file("web-a", &here), &[line(2, "info")]);
    wait_for("line 2 in alerts (the new rule)", sinks_now, async || {
        (seqs(&alerts).len() == 2).then_some(())
    })
    .await;
    assert_eq!(seqs(&alerts)[1], 2);
    assert_eq!(seqs(&out).len(), 1, "nothing more to out under v2");

    // A config that does not compile: rejected, the pod keeps v2 and says why.
    let bad = Envelope::new(
        "uid-1",
        3,
        spec(
            &out,
            &alerts,
            serde_json::json!([{"name": "all", "when": {"level": {"atLeast": "trace"}}, "to": ["nowhere"]}]),
        ),
    )
    .expect("bad");
    publish(&zk, &config, &bad).await;
    let rejected = wait_for(
        "web-a's record rejecting generation 3",
        String::new,
        async || {
            record(&zk, &here_record)
                .await
                .filter(|r| r.state == InstanceState::Error)
        },
    )
    .await;
    assert_eq!(
        rejected.hash, v2.hash,
        "the rules in force stay: {rejected:?}"
    );
    assert!(
        rejected
            .error
            .as_deref()
            .is_some_and(|e| e.contains("nowhere")),
        "the error names the unknown sink: {rejected:?}"
    );

    // A file sink reached by the pod's stdout: refused (the agent is root on the node),
    // the path never opened, the reason in the pod's record.
    let grab = tmp.path().join("grab.log");
    let mut with_file = spec(&out, &alerts, serde_json::json!([]));
    with_file.sinks.push(
        serde_json::from_value(serde_json::json!({"name": "grab", "file": {"path": grab}}))
            .expect("a file sink"),
    );
    with_file.default_to = vec!["grab".into()];
    let file_sink = Envelope::new("uid-1", 4, with_file).expect("file sink");
    publish(&zk, &config, &file_sink).await;
    let refused = wait_for(
        "web-a's record refusing the file sink",
        String::new,
        async || {
            record(&zk, &here_record).await.filter(|r| {
                r.error
                    .as_deref()
                    .is_some_and(|e| e.contains("file sink cannot be served"))
            })
        },
    )
    .await;
    assert_eq!(
        (refused.state, refused.hash.as_str()),
        (InstanceState::Error, v2.hash.as_str()),
        "refused, the rules in force stay: {refused:?}"
    );
    assert!(
        refused.error.as_deref().is_some_and(|e| e
            .starts_with("spec.sinks[2].file: a file sink cannot be served by the node agent")
            && e.contains("\"grab\"")),
        "the error names the sink: {refused:?}"
    );
    assert!(!grab.exists(), "the file sink's path was opened");

    // The pod's annotation now names another ServiceLog: served by it, the old record gone.
    let moved = Receiver::start();
    for dir in [
        layout.resource(&ns, "payments").expect("a path"),
        layout.instances(&ns, "payments").expect("a path"),
    ] {
        zk.create(
            &dir,
            &[],
            &CreateMode::Persistent.with_acls(Acls::anyone_all()),
        )
        .await
        .expect("creating the tree");
    }
    let payments =
        Envelope::new("uid-2", 1, spec(&moved, &moved, serde_json::json!([]))).expect("payments");
    publish(
        &zk,
        &layout.config(&ns, "payments").expect("a path"),
        &payments,
    )
    .await;
    pods.patch(
        "web-a",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({
            "metadata": {"annotations": {"servicelog.io/inject": "payments"}}
        })),
    )
    .await
    .expect("annotating the pod");
    let moved_record = layout.instance(&ns, "payments", "web-a").expect("a path");
    wait_for("web-a's record under payments", String::new, async || {
        record(&zk, &moved_record)
            .await
            .filter(|r| r.hash == payments.hash && r.state == InstanceState::Ok)
    })
    .await;
    assert!(
        record(&zk, &here_record).await.is_none(),
        "the old ServiceLog's record of the pod is removed"
    );

    // Deleted: what the pod printed last is delivered, then its record and state go.
    print(&file("web-a", &here), &[line(3, "info"), line(4, "info")]);
    pods.delete("web-a", &DeleteParams::default().grace_period(0))
        .await
        .expect("deleting the pod");
    let pod_state: PathBuf = state.join("pods").join(&here);
    wait_for(
        "web-a's record and state removed",
        || {
            format!(
                "{}\nmoved: {:?}\n{:?}",
                sinks_now(),
                seqs(&moved),
                fs::read_dir(&pod_state).map(|d| d.count())
            )
        },
        async || (record(&zk, &moved_record).await.is_none() && !pod_state.exists()).then_some(()),
    )
    .await;
    assert_eq!(
        seqs(&moved),
        [3, 4],
        "the lines printed before the deletion are delivered before the pod is dropped"
    );

    agent.stop().await;
}

/// An agent running in the test's runtime until [`Running::stop`].
struct Running {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), agent::AgentError>>,
}

impl Running {
    fn start(opts: AgentOptions, kube: &kube::Client) -> Running {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(agent::run(opts, kube.clone(), Metrics::new(), async {
            let _ = stopped.await;
        }));
        Running { stop, task }
    }

    /// Stops the agent as at SIGTERM; it must end cleanly within [`WAIT`].
    async fn stop(self) {
        let _ = self.stop.send(());
        let result = tokio::time::timeout(WAIT, self.task)
            .await
            .expect("the agent stops within the timeout")
            .expect("the agent task");
        assert!(result.is_ok(), "the agent ends cleanly: {result:?}");
    }
}

/// `zkauth` permission bits as the client's.
fn permission(bits: i32) -> zookeeper_client::Permission {
    use servicelog_api::zkauth::perms;
    use zookeeper_client::Permission as P;
    [
        (perms::READ, P::READ),
        (perms::WRITE, P::WRITE),
        (perms::CREATE, P::CREATE),
        (perms::DELETE, P::DELETE),
        (perms::ADMIN, P::ADMIN),
    ]
    .into_iter()
    .filter(|(bit, _)| bits & bit != 0)
    .fold(P::NONE, |all, (_, p)| all | p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_zookeeper_acls_when_the_agent_serves_a_pod_then_it_reads_with_the_namespace_identity_and_the_record_is_that_identitys()
 {
    use servicelog_api::zkauth::{self, Credentials, Node};
    use zookeeper_client::{Acl, AuthId};

    let env = env();
    let kube = env.client().await.expect("a kube client");
    let ns = env
        .create_namespace("agent-acl")
        .await
        .expect("a namespace");
    let operator = Credentials::digest("servicelog-operator", unique_name("pw"));
    let tenant = operator.for_namespace(&ns);
    let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "servicelog-zk-auth"},
        "stringData": {"auth": tenant.to_line()},
    }))
    .expect("a secret");
    Api::<k8s_openapi::api::core::v1::Secret>::namespaced(kube.clone(), &ns)
        .create(&PostParams::default(), &secret)
        .await
        .expect("creating the identity Secret");
    // As the operator: its identity, and the namespace's to read the records.
    let zk = Client::connector()
        .with_auth(zkauth::DIGEST, &operator.auth_bytes())
        .with_auth(zkauth::DIGEST, &tenant.auth_bytes())
        .connect(&env.zk_connect())
        .await
        .expect("the operator's ZooKeeper client");
    let acl = |namespace: Option<&str>, node| -> Vec<Acl> {
        zkauth::acl(&operator, namespace, node)
            .into_iter()
            .map(|(bits, scheme, id)| Acl::new(permission(bits), AuthId::new(scheme, &id)))
            .collect()
    };
    let root = format!("/{}", unique_name("agent-acl"));
    let layout = Layout::new(&root).expect("a layout");
    for (dir, node_acl) in [
        (root.clone(), acl(None, Node::Directory)),
        (layout.namespaces(), acl(None, Node::Directory)),
        (
            format!("{}/{ns}", layout.namespaces()),
            acl(Some(&ns), Node::Directory),
        ),
        (
            layout.resource(&ns, "checkout").expect("a path"),
            acl(Some(&ns), Node::Directory),
        ),
        (
            layout.instances(&ns, "checkout").expect("a path"),
            acl(Some(&ns), Node::Instances),
        ),
    ] {
        zk.create(
            &dir,
            &[],
            &CreateMode::Persistent.with_acls(Acls::new(&node_acl)),
        )
        .await
        .expect("creating the tree");
    }
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let (out, alerts) = (Receiver::start(), Receiver::start());
    let v1 = Envelope::new("uid-1", 1, spec(&out, &alerts, serde_json::json!([]))).expect("v1");
    let config = layout.config(&ns, "checkout").expect("a path");
    let config_acl = acl(Some(&ns), Node::Config);
    zk.create(
        &config,
        &v1.to_bytes().expect("encoding"),
        &CreateMode::Persistent.with_acls(Acls::new(&config_acl)),
    )
    .await
    .expect("publishing the config");

    let pods: Api<Pod> = Api::namespaced(kube.clone(), &ns);
    let uid = bound_pod(&pods, "web-a", "node-a").await;
    let log_root = tmp.path().join("pods");
    print(
        &PodLogs::dir(&log_root, &ns, "web-a", &uid)
            .join("app")
            .join("0.log"),
        &[line(0, "info")],
    );
    let state = tmp.path().join("state");
    let opts = AgentOptions {
        node: "node-a".into(),
        zk_connect: env.zk_connect(),
        zk_root: root.clone(),
        zk_session_timeout: Duration::from_secs(10),
        zk_connect_timeout: Duration::from_secs(5),
        paths: Paths {
            log_root,
            state_dir: state.clone(),
            allow_file_sinks: false,
            credentials_dir: state.join("credentials"),
        },
        drain_timeout: Duration::from_secs(5),
        shutdown_timeout: Duration::from_secs(5),
        namespace_identities: true,
        pod_rate: None,
    };
    let agent = Running::start(opts, &kube);
    let path = layout.instance(&ns, "checkout", "web-a").expect("a path");
    wait_for(
        "the record acking v1, read with the namespace's identity",
        || format!("out: {:?}", seqs(&out)),
        async || record(&zk, &path).await.filter(|r| r.hash == v1.hash),
    )
    .await;
    wait_for(
        "line 0 in out",
        || format!("out: {:?}", seqs(&out)),
        async || (!seqs(&out).is_empty()).then_some(()),
    )
    .await;
    assert_eq!(seqs(&out), [0]);
    let (record_acl, _) = zk.get_acl(&path).await.expect("the record's ACL");
    assert_eq!(
        record_acl,
        [Acl::new(
            zookeeper_client::Permission::ALL,
            AuthId::new(zkauth::DIGEST, &tenant.acl_id())
        )],
        "the record is the namespace identity's alone, not every identity the agent holds"
    );
    agent.stop().await;
}

/// The ZooKeeper tree under a fresh root for `service_logs` of `ns`, each published with
/// its config; the layout.
async fn publish_tree(zk: &Client, ns: &str, service_logs: &[(&str, &Envelope)]) -> Layout {
    let root = format!("/{}", unique_name("agent"));
    let layout = Layout::new(&root).expect("a layout");
    let mut dirs = vec![
        root,
        layout.namespaces(),
        format!("{}/{ns}", layout.namespaces()),
    ];
    for (name, _) in service_logs {
        dirs.push(layout.resource(ns, name).expect("a path"));
        dirs.push(layout.instances(ns, name).expect("a path"));
    }
    for dir in dirs {
        zk.create(
            &dir,
            &[],
            &CreateMode::Persistent.with_acls(Acls::anyone_all()),
        )
        .await
        .expect("creating the tree");
    }
    for (name, config) in service_logs {
        publish(zk, &layout.config(ns, name).expect("a path"), config).await;
    }
    layout
}

/// The agent's options for node `node-a`, state and logs under `dir`.
fn options(env: &TestEnv, layout: &Layout, dir: &Path, pod_rate: Option<ReadRate>) -> AgentOptions {
    let state = dir.join("state");
    AgentOptions {
        node: "node-a".into(),
        zk_connect: env.zk_connect(),
        zk_root: layout.root().to_owned(),
        zk_session_timeout: Duration::from_secs(10),
        zk_connect_timeout: Duration::from_secs(5),
        paths: Paths {
            log_root: dir.join("pods"),
            credentials_dir: state.join("credentials"),
            state_dir: state,
            allow_file_sinks: false,
        },
        drain_timeout: Duration::from_secs(10),
        shutdown_timeout: Duration::from_secs(5),
        namespace_identities: false,
        pod_rate,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_pod_rate_limit_when_one_pod_prints_far_over_it_then_a_quiet_pods_lines_are_not_held_back_and_the_noisy_pod_loses_nothing()
 {
    const RATE: u32 = 2_000;
    // Ten seconds' worth at the rate; its 256 KiB chunks hold more lines than the burst.
    const NOISY: u64 = 20_000;
    const QUIET: u64 = 15;
    // The quiet pod's lines go through a 100 ms poll and a 100 ms batch.
    const BOUND: Duration = Duration::from_millis(1_500);
    let env = env();
    let kube = env.client().await.expect("a kube client");
    let ns = env
        .create_namespace("agent-rate")
        .await
        .expect("a namespace");
    let pods: Api<Pod> = Api::namespaced(kube.clone(), &ns);
    let zk = servicelog_e2e::zookeeper::connect(&env.zk_connect())
        .await
        .expect("a ZooKeeper client");
    let (noisy_rx, quiet_rx) = (Receiver::start(), Receiver::start());
    let noisy_v1 = Envelope::new(
        "uid-n",
        1,
        spec(&noisy_rx, &noisy_rx, serde_json::json!([])),
    )
    .expect("noisy");
    let quiet_v1 = Envelope::new(
        "uid-q",
        1,
        spec(&quiet_rx, &quiet_rx, serde_json::json!([])),
    )
    .expect("quiet");
    let layout = publish_tree(&zk, &ns, &[("noisy", &noisy_v1), ("quiet", &quiet_v1)]).await;
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let opts = options(
        env,
        &layout,
        tmp.path(),
        NonZeroU32::new(RATE).map(|r| ReadRate {
            per_second: r,
            burst: r,
        }),
    );
    let log = |name: &str, uid: &str| {
        PodLogs::dir(&opts.paths.log_root, &ns, name, uid)
            .join("app")
            .join("0.log")
    };
    let noisy = log("noisy", &pod_of(&pods, "noisy", "node-a", "noisy").await);
    let quiet = log("quiet", &pod_of(&pods, "quiet", "node-a", "quiet").await);
    print(&quiet, &[line(0, "info")]);
    print(&noisy, &[]);
    let agent = Running::start(opts, &kube);
    let counts = || {
        format!(
            "noisy: {} lines, quiet: {:?}",
            seqs(&noisy_rx).len(),
            seqs(&quiet_rx)
        )
    };
    wait_for(
        "both pods served (the quiet pod's first line)",
        counts,
        async || (seqs(&quiet_rx) == [0]).then_some(()),
    )
    .await;

    let started = tokio::time::Instant::now();
    print(
        &noisy,
        &(0..NOISY).map(|i| line(i, "info")).collect::<Vec<_>>(),
    );
    let mut slowest = Duration::ZERO;
    for seq in 1..=QUIET {
        tokio::time::sleep(Duration::from_millis(200)).await;
        print(&quiet, &[line(seq, "info")]);
        let printed = tokio::time::Instant::now();
        loop {
            if seqs(&quiet_rx).contains(&seq) {
                break;
            }
            assert!(
                printed.elapsed() < Duration::from_secs(10),
                "timed out waiting for the quiet pod's line {seq}; {}",
                counts()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        slowest = slowest.max(printed.elapsed());
    }
    let noisy_meanwhile = seqs(&noisy_rx).len() as u64;
    assert!(
        slowest <= BOUND,
        "a quiet pod's line took {slowest:?} (bound {BOUND:?}) while the noisy pod printed {NOISY} lines at once"
    );
    assert!(
        noisy_meanwhile < NOISY,
        "the noisy pod is read at its rate, still behind when the quiet pod's lines are through: {noisy_meanwhile} of {NOISY} delivered after {:?}",
        started.elapsed()
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while (seqs(&noisy_rx).len() as u64) < NOISY {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for the noisy pod's {NOISY} lines; {}",
            counts()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = started.elapsed();
    let mut got = seqs(&noisy_rx);
    got.sort_unstable();
    assert_eq!(
        got,
        (0..NOISY).collect::<Vec<_>>(),
        "every noisy line exactly once"
    );
    // The burst at once, then the rate.
    let floor = Duration::from_secs_f64((NOISY - u64::from(RATE)) as f64 / f64::from(RATE));
    assert!(
        took >= floor.mul_f64(0.9),
        "{NOISY} lines took {took:?}: faster than {RATE} lines/s (at least {floor:?})"
    );
    eprintln!(
        "rate limit {RATE}/s: {NOISY} noisy lines in {took:?} ({:.0} lines/s); the quiet pod's slowest line {slowest:?}",
        NOISY as f64 / took.as_secs_f64()
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_staged_rollout_when_its_candidate_selects_one_of_two_pods_then_that_pod_switches_the_other_stays_and_both_run_the_stable_config_once_it_is_withdrawn()
 {
    use servicelog_api::wire::Candidate;

    let env = env();
    let kube = env.client().await.expect("a kube client");
    let ns = env
        .create_namespace("agent-rollout")
        .await
        .expect("a namespace");
    let pods: Api<Pod> = Api::namespaced(kube.clone(), &ns);
    let zk = servicelog_e2e::zookeeper::connect(&env.zk_connect())
        .await
        .expect("a ZooKeeper client");
    // The stable config sends everything to one receiver, the candidate to another: where
    // a pod's lines arrive says which config it runs.
    let (stable_rx, candidate_rx) = (Receiver::start(), Receiver::start());
    let stable = Envelope::new(
        "uid-1",
        1,
        spec(&stable_rx, &stable_rx, serde_json::json!([])),
    )
    .expect("stable");
    let changed = Envelope::new(
        "uid-1",
        2,
        spec(&candidate_rx, &candidate_rx, serde_json::json!([])),
    )
    .expect("candidate");
    let (canary, steady) = canary_and_steady(&changed.hash, &ns);
    let layout = publish_tree(&zk, &ns, &[("checkout", &stable)]).await;
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let opts = options(env, &layout, tmp.path(), None);
    let [canary_log, steady_log] = app_logs(&pods, &opts, &ns, [&canary, &steady]).await;
    print(&canary_log, &[line(100, "info")]);
    print(&steady_log, &[line(200, "info")]);
    let agent = Running::start(opts, &kube);
    let where_now = || {
        format!(
            "stable: {:?}\ncandidate: {:?}",
            seqs(&stable_rx),
            seqs(&candidate_rx)
        )
    };
    let record_of = |pod: &str| layout.instance(&ns, "checkout", pod).expect("a path");
    for pod in [&canary, &steady] {
        wait_for(
            &format!("{pod}'s record acking the stable config"),
            where_now,
            async || {
                record(&zk, &record_of(pod))
                    .await
                    .filter(|r| r.hash == stable.hash && r.candidate.is_none())
            },
        )
        .await;
    }
    wait_for(
        "both pods' first lines at the stable receiver",
        where_now,
        async || (seqs(&stable_rx).len() == 2).then_some(()),
    )
    .await;

    // A 50% step: the canary switches to the candidate and says so; the other stays.
    let candidate_path = layout.candidate(&ns, "checkout").expect("a path");
    let step = Candidate::new(stable.hash.clone(), 1, 50, false, &changed).expect("a candidate");
    zk.create(
        &candidate_path,
        &step.to_bytes().expect("encoding the candidate"),
        &CreateMode::Persistent.with_acls(Acls::anyone_all()),
    )
    .await
    .expect("creating the candidate znode");
    let switched = wait_for(
        &format!("{canary}'s record running the candidate"),
        where_now,
        async || {
            record(&zk, &record_of(&canary))
                .await
                .filter(|r| r.hash == changed.hash)
        },
    )
    .await;
    assert_eq!(
        (switched.state, switched.candidate.as_deref()),
        (InstanceState::Ok, Some(changed.hash.as_str())),
        "the canary's record names the candidate: {switched:?}"
    );
    print(&canary_log, &[line(101, "info")]);
    print(&steady_log, &[line(201, "info")]);
    wait_for(
        "line 101 at the candidate's receiver",
        where_now,
        async || seqs(&candidate_rx).contains(&101).then_some(()),
    )
    .await;
    wait_for("line 201 at the stable receiver", where_now, async || {
        seqs(&stable_rx).contains(&201).then_some(())
    })
    .await;
    let kept = record(&zk, &record_of(&steady))
        .await
        .expect("the other pod's record");
    assert_eq!(
        (kept.hash.as_str(), kept.candidate.as_deref()),
        (stable.hash.as_str(), None),
        "the pod the step does not select stays on the stable config: {kept:?}"
    );
    assert_eq!(
        seqs(&candidate_rx),
        [101],
        "only the canary runs the candidate"
    );

    // Withdrawn (a rollback): the canary runs the stable config again.
    zk.delete(&candidate_path, None)
        .await
        .expect("withdrawing the candidate");
    wait_for(
        &format!("{canary}'s record back on the stable config"),
        where_now,
        async || {
            record(&zk, &record_of(&canary))
                .await
                .filter(|r| r.hash == stable.hash && r.candidate.is_none())
        },
    )
    .await;
    print(&canary_log, &[line(102, "info")]);
    wait_for("line 102 at the stable receiver", where_now, async || {
        seqs(&stable_rx).contains(&102).then_some(())
    })
    .await;
    let mut at_stable = seqs(&stable_rx);
    at_stable.sort_unstable();
    assert_eq!(at_stable, [100, 102, 200, 201], "{}", where_now());
    assert_eq!(seqs(&candidate_rx), [101], "{}", where_now());

    agent.stop().await;
}

/// Per-rule counts by name.
/// Pods `names` of ServiceLog `checkout` on `node-a`, and the log file of each one's `app`
/// container under the agent's log root, in order.
async fn app_logs<const N: usize>(
    pods: &Api<Pod>,
    opts: &AgentOptions,
    ns: &str,
    names: [&str; N],
) -> [PathBuf; N] {
    let mut files = Vec::new();
    for name in names {
        let uid = pod_of(pods, name, "node-a", "checkout").await;
        files.push(
            PodLogs::dir(&opts.paths.log_root, ns, name, &uid)
                .join("app")
                .join("0.log"),
        );
    }
    files.try_into().expect("one file per name")
}

/// A pod name the 50% step of a rollout to `hash` puts on the candidate, and one it keeps
/// on stable, as every sidecar and agent computes it.
fn canary_and_steady(hash: &str, ns: &str) -> (String, String) {
    use servicelog_api::rollout::is_member;

    let names: Vec<String> = (0..200).map(|i| format!("web-{i}")).collect();
    let canary = names
        .iter()
        .find(|n| is_member(hash, ns, n, 50))
        .expect("a member among 200 names")
        .clone();
    let steady = names
        .iter()
        .find(|n| !is_member(hash, ns, n, 50))
        .expect("a non-member among 200 names")
        .clone();
    (canary, steady)
}

fn counts(pairs: &[(&str, u64)]) -> std::collections::BTreeMap<String, u64> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
}

/// `lines` lines of `level`, numbered from `from`.
fn lines(from: u64, n: u64, level: &str) -> Vec<String> {
    (from..from + n).map(|seq| line(seq, level)).collect()
}

/// Given two pods on a stable config whose rule `all` takes every line, when a 50% step's
/// candidate (rule `errors` to `alerts`, rule `debug` dropping) runs on one of them and
/// both print, then the canary's record carries the health of its own events only —
/// 9 routed, 3 dropped, per rule 2/3/4, and `rulesBefore` the 3 lines `all` took before —
/// although the agent's metrics sum both pods; the other pod's record has none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_staged_rollout_when_a_canary_pod_routes_lines_then_its_record_carries_its_own_health_with_per_rule_counts()
 {
    use servicelog_api::wire::{Candidate, Health};

    let env = env();
    let kube = env.client().await.expect("a kube client");
    let ns = env
        .create_namespace("agent-health")
        .await
        .expect("a namespace");
    let pods: Api<Pod> = Api::namespaced(kube.clone(), &ns);
    let zk = servicelog_e2e::zookeeper::connect(&env.zk_connect())
        .await
        .expect("a ZooKeeper client");
    let (out_rx, alerts_rx) = (Receiver::start(), Receiver::start());
    let all = serde_json::json!([{"name": "all", "when": {"level": {"atLeast": "trace"}}, "to": ["out"]}]);
    let stable = Envelope::new("uid-1", 1, spec(&out_rx, &alerts_rx, all)).expect("stable");
    let changed = Envelope::new(
        "uid-1",
        2,
        spec(
            &out_rx,
            &alerts_rx,
            serde_json::json!([
                {"name": "errors", "when": {"level": {"atLeast": "error"}}, "to": ["alerts"]},
                {"name": "debug", "when": {"fields": [{"name": "level", "equals": "debug"}]}, "action": "drop"},
            ]),
        ),
    )
    .expect("candidate");
    let (canary, steady) = canary_and_steady(&changed.hash, &ns);
    let layout = publish_tree(&zk, &ns, &[("checkout", &stable)]).await;
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let opts = options(env, &layout, tmp.path(), None);
    let [canary_log, steady_log] = app_logs(&pods, &opts, &ns, [&canary, &steady]).await;
    print(&canary_log, &lines(1, 3, "info"));
    print(&steady_log, &lines(100, 5, "info"));
    let agent = Running::start(opts, &kube);
    let where_now = || format!("out: {:?}\nalerts: {:?}", seqs(&out_rx), seqs(&alerts_rx));
    let record_of = |pod: &str| layout.instance(&ns, "checkout", pod).expect("a path");
    wait_for("the 8 first lines at out", where_now, async || {
        (seqs(&out_rx).len() == 8).then_some(())
    })
    .await;

    let candidate_path = layout.candidate(&ns, "checkout").expect("a path");
    let step = Candidate::new(stable.hash.clone(), 1, 50, false, &changed).expect("a candidate");
    zk.create(
        &candidate_path,
        &step.to_bytes().expect("encoding the candidate"),
        &CreateMode::Persistent.with_acls(Acls::anyone_all()),
    )
    .await
    .expect("creating the candidate znode");
    wait_for(
        &format!("{canary}'s record running the candidate"),
        where_now,
        async || {
            record(&zk, &record_of(&canary))
                .await
                .filter(|r| r.hash == changed.hash && r.state == InstanceState::Ok)
        },
    )
    .await;
    let mut canary_lines = lines(10, 2, "error");
    canary_lines.extend(lines(20, 3, "debug"));
    canary_lines.extend(lines(30, 4, "info"));
    print(&canary_log, &canary_lines);
    print(&steady_log, &lines(200, 7, "info"));
    wait_for(
        "the canary's 2 errors at alerts and 19 lines at out",
        where_now,
        async || (seqs(&alerts_rx).len() == 2 && seqs(&out_rx).len() == 19).then_some(()),
    )
    .await;
    let health = wait_for(
        &format!("{canary}'s record counting its 9 events (refreshed every 5 s)"),
        where_now,
        async || {
            record(&zk, &record_of(&canary))
                .await
                .and_then(|r| r.health)
                .filter(|h| h.events == 9)
        },
    )
    .await;
    assert_eq!(
        health,
        Health {
            events: 9,
            dropped: 3,
            rules: counts(&[("errors", 2), ("debug", 3), ("(default)", 4)]),
            rules_before: counts(&[("all", 3), ("(default)", 0)]),
            ..Health::default()
        },
        "the canary's own events, not the steady pod's 12 summed in the agent's metrics"
    );
    let kept = record(&zk, &record_of(&steady))
        .await
        .expect("the other pod's record");
    assert_eq!(
        (kept.hash.as_str(), kept.health),
        (stable.hash.as_str(), None),
        "a pod the step does not select carries no health"
    );

    agent.stop().await;
}

/// Given two pods on a stable config (rule `all` to `out`), when a preview candidate (rule
/// `errors` to `alerts`) is published and one pod prints 6 info and 2 error lines, the other
/// 3 info lines, then neither switches, `alerts` gets nothing, and each record's `preview`
/// counts that pod's events per rule: stable `all` 8 / 3, candidate `errors` 2 / 0 and
/// `(default)` 6 / 3; when the preview is withdrawn the counts go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_preview_when_two_pods_print_then_each_record_counts_its_own_events_per_rule_under_both_configs_and_nothing_is_written()
 {
    use servicelog_api::wire::Candidate;

    let env = env();
    let kube = env.client().await.expect("a kube client");
    let ns = env
        .create_namespace("agent-preview")
        .await
        .expect("a namespace");
    let pods: Api<Pod> = Api::namespaced(kube.clone(), &ns);
    let zk = servicelog_e2e::zookeeper::connect(&env.zk_connect())
        .await
        .expect("a ZooKeeper client");
    let (out_rx, alerts_rx) = (Receiver::start(), Receiver::start());
    let all = serde_json::json!([{"name": "all", "when": {"level": {"atLeast": "trace"}}, "to": ["out"]}]);
    let stable = Envelope::new("uid-1", 1, spec(&out_rx, &alerts_rx, all)).expect("stable");
    let errors = serde_json::json!([{"name": "errors", "when": {"level": {"atLeast": "error"}}, "to": ["alerts"]}]);
    let mut errors_only = spec(&out_rx, &alerts_rx, errors);
    errors_only.default_to = Vec::new();
    let preview = Envelope::new("uid-1", 2, errors_only).expect("preview");
    let layout = publish_tree(&zk, &ns, &[("checkout", &stable)]).await;
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let opts = options(env, &layout, tmp.path(), None);
    let files = app_logs(&pods, &opts, &ns, ["web-a", "web-b"]).await;
    let agent = Running::start(opts, &kube);
    let where_now = || format!("out: {:?}\nalerts: {:?}", seqs(&out_rx), seqs(&alerts_rx));
    let record_of = |pod: &str| layout.instance(&ns, "checkout", pod).expect("a path");
    for pod in ["web-a", "web-b"] {
        wait_for(
            &format!("{pod}'s record acking the stable config"),
            where_now,
            async || {
                record(&zk, &record_of(pod))
                    .await
                    .filter(|r| r.hash == stable.hash)
            },
        )
        .await;
    }

    let candidate_path = layout.candidate(&ns, "checkout").expect("a path");
    let candidate =
        Candidate::new(stable.hash.clone(), 1, 10, true, &preview).expect("a candidate");
    zk.create(
        &candidate_path,
        &candidate.to_bytes().expect("encoding the candidate"),
        &CreateMode::Persistent.with_acls(Acls::anyone_all()),
    )
    .await
    .expect("creating the candidate znode");
    // The shadow starts when the candidate is read: wait for the records to say so.
    for pod in ["web-a", "web-b"] {
        wait_for(
            &format!("{pod}'s record with the preview"),
            where_now,
            async || {
                record(&zk, &record_of(pod))
                    .await
                    .filter(|r| r.health.as_ref().is_some_and(|h| h.preview.is_some()))
            },
        )
        .await;
    }
    let mut a_lines = lines(1, 6, "info");
    a_lines.extend(lines(10, 2, "error"));
    print(&files[0], &a_lines);
    print(&files[1], &lines(100, 3, "info"));
    wait_for("the 11 lines at out", where_now, async || {
        (seqs(&out_rx).len() == 11).then_some(())
    })
    .await;
    for (pod, all, errors, default) in [("web-a", 8, 2, 6), ("web-b", 3, 0, 3)] {
        let r = wait_for(
            &format!("{pod}'s record counting its {all} events (refreshed every 5 s)"),
            where_now,
            async || {
                record(&zk, &record_of(pod)).await.filter(|r| {
                    r.health
                        .as_ref()
                        .and_then(|h| h.preview.as_ref())
                        .is_some_and(|p| p.stable.get("all") == Some(&all))
                })
            },
        )
        .await;
        assert_eq!(
            (r.hash.as_str(), r.candidate.as_deref()),
            (stable.hash.as_str(), None),
            "a preview switches no pod: {r:?}"
        );
        let p = r.health.and_then(|h| h.preview).expect("the preview");
        assert_eq!(p.hash, preview.hash, "{pod}");
        assert_eq!(
            (p.stable, p.candidate),
            (
                counts(&[("all", all), ("(default)", 0)]),
                counts(&[("errors", errors), ("(default)", default)])
            ),
            "{pod}'s own events per rule under both configs"
        );
        assert!(
            p.elapsed_ms > 0,
            "{pod}: the shadow says how long it counted"
        );
    }
    assert_eq!(
        seqs(&alerts_rx),
        Vec::<u64>::new(),
        "the shadow writes nowhere"
    );

    zk.delete(&candidate_path, None)
        .await
        .expect("withdrawing the preview");
    for pod in ["web-a", "web-b"] {
        wait_for(
            &format!("{pod}'s record without the preview's counts"),
            where_now,
            async || {
                record(&zk, &record_of(pod))
                    .await
                    .filter(|r| r.health.is_none())
            },
        )
        .await;
    }

    agent.stop().await;
}
