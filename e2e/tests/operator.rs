//! The operator against a real API server and a real ZooKeeper: publish, update,
//! idempotence, invalid specs, delete, drift repair, pod counts, ZooKeeper outages, leader
//! election and a burst of resources. Each test has its own namespace, znode root and
//! operator process (watching only that namespace), so they run in parallel.

use std::{future::Future, time::Duration};

use k8s_openapi::api::core::v1::{Event, Pod};
use kube::{
    Api,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use servicelog_api::{
    v1alpha1::{ServiceLog, ServiceLogStatus},
    wire::{Envelope, Instance, InstanceState, Layout},
};
use servicelog_e2e::{
    TestEnv,
    run::{Operator, OperatorOptions},
    unique_name, workspace_dir,
};
use zookeeper_client::{Acls, CreateMode};

const WAIT: Duration = Duration::from_secs(30);

fn env() -> &'static TestEnv {
    TestEnv::shared().unwrap_or_else(|e| panic!("the test environment did not start: {e}"))
}

struct Fixture {
    env: &'static TestEnv,
    ns: String,
    root: String,
    layout: Layout,
    api: Api<ServiceLog>,
    client: kube::Client,
}

impl Fixture {
    async fn new(prefix: &str) -> Self {
        let env = env();
        install_crds(env);
        let ns = env.create_namespace(prefix).await.expect("namespace");
        let root = format!("/{}", unique_name("t"));
        let client = env.client().await.expect("client");
        Self {
            env,
            api: Api::namespaced(client.clone(), &ns),
            layout: Layout::new(&root).expect("layout"),
            ns,
            root,
            client,
        }
    }

    fn options(&self, identity: &str, zk_connect: &str) -> OperatorOptions {
        OperatorOptions {
            namespace: self.ns.clone(),
            zk_connect: zk_connect.to_owned(),
            zk_root: self.root.clone(),
            identity: identity.to_owned(),
            leader_election: true,
            webhook: false,
            extra_args: vec![
                "--lease-duration=3s".into(),
                "--zk-session-timeout=4s".into(),
            ],
        }
    }

    fn operator(&self, identity: &str) -> Operator {
        Operator::start(self.env, &self.options(identity, &self.env.zk_connect()))
            .unwrap_or_else(|e| panic!("operator {identity} did not start: {e}"))
    }

    fn config_path(&self, name: &str) -> String {
        self.layout.config(&self.ns, name).expect("path")
    }

    async fn create(&self, slog: &ServiceLog) -> ServiceLog {
        let mut slog = slog.clone();
        slog.metadata.namespace = Some(self.ns.clone());
        self.api
            .create(&PostParams::default(), &slog)
            .await
            .expect("create ServiceLog")
    }

    /// Waits until the status satisfies `ok`; on timeout fails with the status seen and
    /// the operator's log.
    async fn wait_status(
        &self,
        name: &str,
        what: &str,
        operator: &Operator,
        ok: impl Fn(&ServiceLogStatus) -> bool,
    ) -> ServiceLog {
        let mut last = None;
        let deadline = tokio::time::Instant::now() + WAIT;
        while tokio::time::Instant::now() < deadline {
            if let Ok(obj) = self.api.get(name).await {
                if obj.status.as_ref().is_some_and(&ok) {
                    return obj;
                }
                last = obj.status;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "timed out after {WAIT:?} waiting for {what} on {}/{name}; last status: {last:#?}\n--- operator log ---\n{}",
            self.ns,
            operator.log_tail(40)
        );
    }

    async fn events(&self, reason: &str) -> Vec<String> {
        let api: Api<Event> = Api::namespaced(self.client.clone(), &self.ns);
        let list = api.list(&ListParams::default()).await.expect("list events");
        list.items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some(reason))
            .filter_map(|e| e.message)
            .collect()
    }
}

fn install_crds(env: &TestEnv) {
    env.install_crds().unwrap_or_else(|e| panic!("{e}"));
}

fn example() -> ServiceLog {
    let text =
        std::fs::read_to_string(workspace_dir().join("examples/checkout.yaml")).expect("example");
    serde_yaml::from_str(&text).expect("example is a ServiceLog")
}

fn condition<'a>(
    status: &'a ServiceLogStatus,
    type_: &str,
) -> Option<&'a servicelog_api::v1alpha1::Condition> {
    status.conditions.iter().find(|c| c.r#type == type_)
}

fn is_true(status: &ServiceLogStatus, type_: &str) -> bool {
    condition(status, type_).is_some_and(|c| c.status == "True")
}

async fn zk(connect: &str) -> zookeeper_client::Client {
    let connecting = zookeeper_client::Client::connector()
        .with_session_timeout(Duration::from_secs(30))
        .connect(connect);
    tokio::time::timeout(Duration::from_secs(10), connecting)
        .await
        .unwrap_or_else(|_| panic!("timed out after 10s connecting to ZooKeeper at {connect}"))
        .expect("connect to ZooKeeper")
}

async fn eventually<F, Fut>(what: &str, timeout: Duration, check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    if let Err(e) = servicelog_e2e::eventually(what, timeout, check).await {
        panic!("{e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_servicelog_then_it_is_published_updated_idempotently_and_removed_on_delete() {
    let f = Fixture::new("op-publish").await;
    let zk = zk(&f.env.zk_connect()).await;
    let mut operator = f.operator("a");
    f.create(&example()).await;

    // Published: the znode holds the envelope whose hash the status reports.
    let obj = f
        .wait_status("checkout", "Published=True", &operator, |s| {
            is_true(s, "Published") && is_true(s, "Ready")
        })
        .await;
    let status = obj.status.clone().expect("status");
    assert!(is_true(&status, "Valid"));
    let (data, stat) = zk
        .get_data(&f.config_path("checkout"))
        .await
        .expect("config znode exists");
    let envelope = Envelope::from_slice(&data).expect("a valid envelope");
    assert_eq!(Some(envelope.hash.clone()), status.config_hash);
    assert_eq!(envelope.uid, obj.metadata.uid.clone().unwrap_or_default());
    assert_eq!(envelope.spec, obj.spec);
    assert_eq!(status.published_version, Some(stat.version));
    assert_eq!(status.observed_generation, obj.metadata.generation);

    // Update: a rule change is a setData, the hash and generation follow.
    let patch = serde_json::json!({"spec": {"rules": [{"name": "everything", "to": ["alerts"]}]}});
    f.api
        .patch("checkout", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patch");
    let updated = f
        .wait_status("checkout", "the new generation published", &operator, |s| {
            s.observed_generation == Some(2)
                && is_true(s, "Published")
                && s.config_hash != status.config_hash
        })
        .await;
    let (data, stat) = zk
        .get_data(&f.config_path("checkout"))
        .await
        .expect("config znode");
    assert_eq!(stat.version, 1, "an update must be one setData");
    assert_eq!(
        Some(Envelope::from_slice(&data).expect("envelope").hash),
        updated.status.clone().and_then(|s| s.config_hash)
    );

    // Idempotent: a restarted operator writes nothing, to ZooKeeper or to the status.
    operator.kill();
    let operator = f.operator("a2");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, after) = zk
        .get_data(&f.config_path("checkout"))
        .await
        .expect("config znode");
    assert_eq!(
        after.version, 1,
        "the restarted operator rewrote an unchanged config"
    );
    assert_eq!(
        after.mzxid, stat.mzxid,
        "the restarted operator touched the config znode"
    );
    let again = f.api.get("checkout").await.expect("get");
    assert_eq!(
        again.status, updated.status,
        "the restarted operator changed the status"
    );

    // Delete: the finalizer removes the subtree, then the resource goes.
    f.api
        .delete("checkout", &DeleteParams::default())
        .await
        .expect("delete");
    let resource = f.layout.resource(&f.ns, "checkout").expect("path");
    eventually(
        "the subtree removed and the ServiceLog gone",
        WAIT,
        || async {
            matches!(
                zk.get_data(&resource).await,
                Err(zookeeper_client::Error::NoNode)
            ) && f.api.get_opt("checkout").await.ok().flatten().is_none()
        },
    )
    .await;
    drop(operator);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_an_invalid_spec_then_nothing_is_published_and_status_names_the_field() {
    let f = Fixture::new("op-invalid").await;
    let zk = zk(&f.env.zk_connect()).await;
    let operator = f.operator("a");
    let mut bad = example();
    bad.spec.rules[1]
        .when
        .get_or_insert_with(Default::default)
        .message = Some(servicelog_api::v1alpha1::MessageCondition {
        regex: "(unclosed".into(),
    });
    // Admitted by the schema (no webhook here); the operator must still refuse it by path.
    bad.spec.rules[2].to = Some(vec!["console".into(), "nowhere".into()]);
    f.create(&bad).await;
    let obj = f
        .wait_status("checkout", "Valid=False", &operator, |s| {
            condition(s, "Valid").is_some_and(|c| c.status == "False")
        })
        .await;
    let status = obj.status.expect("status");
    let valid = condition(&status, "Valid").expect("Valid");
    assert_eq!(valid.reason, "InvalidSpec");
    for needle in [
        "spec.rules[1].when.message.regex",
        "spec.rules[2].to[1]: unknown sink \"nowhere\"",
    ] {
        assert!(
            valid.message.contains(needle),
            "Valid=False does not name {needle:?}: {}",
            valid.message
        );
    }
    assert!(!is_true(&status, "Published"));
    assert!(
        matches!(
            zk.get_data(&f.config_path("checkout")).await,
            Err(zookeeper_client::Error::NoNode)
        ),
        "an invalid spec reached ZooKeeper"
    );

    // Fixed: published.
    let fix = serde_json::json!({"spec": {"rules": [{"name": "all", "to": ["console"]}]}});
    f.api
        .patch("checkout", &PatchParams::default(), &Patch::Merge(&fix))
        .await
        .expect("patch");
    f.wait_status("checkout", "Published=True after the fix", &operator, |s| {
        is_true(s, "Valid") && is_true(s, "Published")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_published_config_when_someone_deletes_or_edits_the_znode_then_it_is_restored() {
    let f = Fixture::new("op-drift").await;
    let zk = zk(&f.env.zk_connect()).await;
    let operator = f.operator("a");
    f.create(&example()).await;
    f.wait_status("checkout", "Published=True", &operator, |s| {
        is_true(s, "Published")
    })
    .await;
    let path = f.config_path("checkout");
    let (good, _) = zk.get_data(&path).await.expect("config");

    zk.delete(&path, None).await.expect("delete config znode");
    eventually(
        "the deleted config znode restored",
        Duration::from_secs(10),
        || async { zk.get_data(&path).await.is_ok_and(|(d, _)| d == good) },
    )
    .await;

    zk.set_data(
        &path,
        b"{\"schema\":1,\"hash\":\"sha256:forged\",\"spec\":{}}",
        None,
    )
    .await
    .expect("edit config znode");
    eventually(
        "the edited config znode restored",
        Duration::from_secs(10),
        || async { zk.get_data(&path).await.is_ok_and(|(d, _)| d == good) },
    )
    .await;
    eventually("a DriftRepaired event", Duration::from_secs(10), || async {
        !f.events("DriftRepaired").await.is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_pods_and_instance_acks_then_status_counts_matched_injected_and_applied() {
    let f = Fixture::new("op-pods").await;
    let zk = zk(&f.env.zk_connect()).await;
    let operator = f.operator("a");
    f.create(&example()).await;
    let obj = f
        .wait_status("checkout", "Published=True", &operator, |s| {
            is_true(s, "Published")
        })
        .await;
    let hash = obj.status.and_then(|s| s.config_hash).expect("hash");

    let pods: Api<Pod> = Api::namespaced(f.client.clone(), &f.ns);
    for (name, injected) in [("web-0", true), ("web-1", false)] {
        let mut annotations = serde_json::Map::new();
        if injected {
            annotations.insert("servicelog.io/injected".into(), "checkout".into());
        }
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": {"app": "checkout"}, "annotations": annotations},
            "spec": {"containers": [{"name": "app", "image": "busybox"}]},
        }))
        .expect("pod");
        pods.create(&PostParams::default(), &pod)
            .await
            .expect("create pod");
    }
    f.wait_status(
        "checkout",
        "pods matched 2, injected 1, applied 0",
        &operator,
        |s| {
            s.pods
                .as_ref()
                .is_some_and(|p| (p.matched, p.injected, p.applied) == (2, 1, 0))
                && condition(s, "Ready").is_some_and(|c| c.reason == "RollingOut")
        },
    )
    .await;

    let instance = |state, error: Option<&str>| Instance {
        pod: "web-0".into(),
        hash: hash.clone(),
        state,
        error: error.map(Into::into),
        since: "2026-11-25T00:00:00Z".into(),
        sink_errors: Default::default(),
        candidate: None,
        health: None,
    };
    let path = f.layout.instance(&f.ns, "checkout", "web-0").expect("path");
    let ack = instance(InstanceState::Ok, None).to_bytes().expect("bytes");
    zk.create(
        &path,
        &ack,
        &CreateMode::Ephemeral.with_acls(Acls::anyone_all()),
    )
    .await
    .expect("create instance znode");
    let obj = f
        .wait_status("checkout", "applied 1/1", &operator, |s| {
            s.pods.as_ref().is_some_and(|p| p.applied == 1) && is_true(s, "Ready")
        })
        .await;
    assert_eq!(
        obj.status.and_then(|s| s.pods).map(|p| p.summary),
        Some("1/1".into())
    );

    let nack = instance(InstanceState::Error, Some("spec.rules[0]: boom"))
        .to_bytes()
        .expect("bytes");
    zk.set_data(&path, &nack, None).await.expect("set instance");
    let obj = f
        .wait_status("checkout", "Ready=False Rejected", &operator, |s| {
            condition(s, "Ready").is_some_and(|c| c.reason == "Rejected")
        })
        .await;
    let ready = obj
        .status
        .and_then(|s| condition(&s, "Ready").cloned())
        .expect("Ready");
    assert!(
        ready.message.contains("web-0: spec.rules[0]: boom"),
        "{}",
        ready.message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_zookeeper_restarts_then_status_says_so_and_everything_is_republished() {
    let f = Fixture::new("op-zkdown").await;
    let mut own = f
        .env
        .start_zookeeper(&unique_name("zk-op"), 1)
        .expect("own ZooKeeper");
    let operator =
        Operator::start(f.env, &f.options("a", &own.connect_string())).expect("operator");
    f.create(&example()).await;
    let first = f
        .wait_status("checkout", "Published=True", &operator, |s| {
            is_true(s, "Published")
        })
        .await;

    own.stop(0);
    let patch = serde_json::json!({"spec": {"defaultTo": []}});
    f.api
        .patch("checkout", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patch");
    f.wait_status(
        "checkout",
        "Published=False ZooKeeperUnavailable",
        &operator,
        |s| {
            condition(s, "Published")
                .is_some_and(|c| c.status == "False" && c.reason == "ZooKeeperUnavailable")
        },
    )
    .await;

    own.restart(0).expect("ZooKeeper restarts");
    let after = f
        .wait_status(
            "checkout",
            "Published=True with the new hash",
            &operator,
            |s| {
                is_true(s, "Published")
                    && s.config_hash != first.status.as_ref().and_then(|s| s.config_hash.clone())
            },
        )
        .await;
    let zk = zk(&own.connect_string()).await;
    let (data, _) = zk
        .get_data(&f.config_path("checkout"))
        .await
        .expect("config");
    assert_eq!(
        Some(Envelope::from_slice(&data).expect("envelope").hash),
        after.status.and_then(|s| s.config_hash)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_two_operators_then_one_leads_and_the_standby_takes_over_when_it_dies() {
    let f = Fixture::new("op-ha").await;
    let mut a = f.operator("a");
    let mut b = f.operator("b");
    let leads = |o: &Operator| {
        o.metrics()
            .lines()
            .any(|l| l.trim() == "servicelog_leader 1")
    };
    eventually("one of two operators leading", WAIT, || {
        let l = leads(&a) || leads(&b);
        async move { l }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!(leads(&a) && leads(&b)), "both operators lead");
    f.create(&example()).await;
    let (leader, standby) = if leads(&a) {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    f.wait_status("checkout", "Published=True", leader, |s| {
        is_true(s, "Published")
    })
    .await;

    leader.kill();
    eventually(
        "the standby leading after the leader died",
        Duration::from_secs(15),
        || {
            let l = leads(standby);
            async move { l }
        },
    )
    .await;
    let patch = serde_json::json!({"spec": {"defaultTo": []}});
    f.api
        .patch("checkout", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patch");
    f.wait_status(
        "checkout",
        "the new leader publishing generation 2",
        standby,
        |s| s.observed_generation == Some(2) && is_true(s, "Published"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_200_servicelogs_created_at_once_then_all_are_published() {
    let f = Fixture::new("op-burst").await;
    let operator = f.operator("a");
    let creates = (0..200).map(|i| {
        let mut s = example();
        s.metadata.name = Some(format!("svc-{i}"));
        let f = &f;
        async move { f.create(&s).await }
    });
    futures::future::join_all(creates).await;
    let mut published = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while tokio::time::Instant::now() < deadline {
        let list = f.api.list(&ListParams::default()).await.expect("list");
        published = list
            .items
            .iter()
            .filter(|s| s.status.as_ref().is_some_and(|st| is_true(st, "Published")))
            .count();
        if published == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        published,
        200,
        "not all ServiceLogs were published; operator log:\n{}",
        operator.log_tail(30)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_zookeeper_gone_when_a_servicelog_is_deleted_then_deletion_completes_with_a_warning()
{
    let f = Fixture::new("op-del").await;
    let mut own = f
        .env
        .start_zookeeper(&unique_name("zk-del"), 1)
        .expect("own ZooKeeper");
    let mut options = f.options("a", &own.connect_string());
    options.extra_args.push("--cleanup-timeout=3s".into());
    let operator = Operator::start(f.env, &options).expect("operator");
    f.create(&example()).await;
    f.wait_status("checkout", "Published=True", &operator, |s| {
        is_true(s, "Published")
    })
    .await;
    own.stop(0);
    f.api
        .delete("checkout", &DeleteParams::default())
        .await
        .expect("delete");
    eventually(
        "the ServiceLog gone despite ZooKeeper being down",
        Duration::from_secs(30),
        || async { f.api.get_opt("checkout").await.ok().flatten().is_none() },
    )
    .await;
    let warnings = f.events("CleanupAbandoned").await;
    assert!(
        warnings.iter().any(|m| m.contains(&f.root)),
        "no CleanupAbandoned event naming the subtree: {warnings:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_subtree_whose_servicelog_is_gone_when_the_operator_starts_then_it_is_removed() {
    let f = Fixture::new("op-sweep").await;
    let zk = zk(&f.env.zk_connect()).await;
    // A resource deleted while no operator ran (or before its first reconcile): its
    // subtree, with a sidecar's record, is all that is left.
    let ghost = f.layout.instance(&f.ns, "ghost", "pod-0").expect("path");
    zk.mkdir(
        &ghost,
        &CreateMode::Persistent.with_acls(Acls::anyone_all()),
    )
    .await
    .expect("creating the ghost subtree");
    let operator = f.operator("a");
    f.create(&example()).await;
    f.wait_status("checkout", "Published=True", &operator, |s| {
        is_true(s, "Published")
    })
    .await;
    let resource = f.layout.resource(&f.ns, "ghost").expect("path");
    eventually(
        "the subtree of a ServiceLog that does not exist removed",
        WAIT,
        || async { zk.check_stat(&resource).await.is_ok_and(|s| s.is_none()) },
    )
    .await;
    assert!(
        zk.check_stat(&f.config_path("checkout"))
            .await
            .expect("stat")
            .is_some(),
        "the sweep removed a live ServiceLog's config\n{}",
        operator.log_tail(20)
    );
}

/// A ZooKeeper client authenticated as `credentials` (anonymous with `None`).
async fn zk_as(
    connect: &str,
    credentials: Option<&servicelog_api::zkauth::Credentials>,
) -> zookeeper_client::Client {
    let mut connector =
        zookeeper_client::Client::connector().with_session_timeout(Duration::from_secs(30));
    if let Some(c) = credentials {
        connector = connector.with_auth("digest", &c.auth_bytes());
    }
    tokio::time::timeout(Duration::from_secs(10), connector.connect(connect))
        .await
        .unwrap_or_else(|_| panic!("timed out after 10s connecting to ZooKeeper at {connect}"))
        .expect("connect to ZooKeeper")
}

/// The operator's identity file for a test, and the identity in it.
fn operator_identity(dir_name: &str) -> (std::path::PathBuf, servicelog_api::zkauth::Credentials) {
    let dir = servicelog_e2e::base_dir().join(unique_name(dir_name));
    std::fs::create_dir_all(&dir).expect("creating the auth file's directory");
    let path = dir.join("zk-auth");
    let credentials =
        servicelog_api::zkauth::Credentials::digest("servicelog-operator", unique_name("pw"));
    std::fs::write(&path, credentials.to_line()).expect("writing the auth file");
    (path, credentials)
}

fn is_no_auth<T: std::fmt::Debug>(result: &Result<T, zookeeper_client::Error>) -> bool {
    matches!(result, Err(zookeeper_client::Error::NoAuth))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_operators_with_a_zookeeper_identity_then_no_tenant_can_touch_another_tenants_znodes()
{
    use servicelog_api::zkauth::Credentials;
    let a = Fixture::new("acl-a").await;
    let mut b = Fixture::new("acl-b").await;
    // One tree, two tenants: B's fixture uses A's root.
    b.root = a.root.clone();
    b.layout = a.layout.clone();
    let (auth_file, operator) = operator_identity("acl");
    let start = |f: &Fixture, who: &str| {
        let mut options = f.options(who, &f.env.zk_connect());
        options
            .extra_args
            .push(format!("--zk-auth-file={}", auth_file.display()));
        Operator::start(f.env, &options)
            .unwrap_or_else(|e| panic!("operator {who} did not start: {e}"))
    };
    let op_a = start(&a, "a");
    let op_b = start(&b, "b");
    a.create(&example()).await;
    b.create(&example()).await;
    for (f, op) in [(&a, &op_a), (&b, &op_b)] {
        f.wait_status("checkout", "Published=True", op, |s| {
            is_true(s, "Published")
        })
        .await;
    }

    // The namespace's identity is in its Secret, as the operator derives it.
    let secret: k8s_openapi::api::core::v1::Secret = Api::namespaced(a.client.clone(), &a.ns)
        .get(servicelog_api::pod::ZK_AUTH_SECRET)
        .await
        .expect("the operator wrote the namespace's identity Secret");
    let line = secret
        .data
        .as_ref()
        .and_then(|d| d.get(servicelog_api::pod::ZK_AUTH_KEY))
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        .expect("the Secret holds the auth line");
    let tenant_a = Credentials::parse(&line).expect("a digest line");
    assert_eq!(tenant_a, operator.for_namespace(&a.ns));
    let tenant_b = operator.for_namespace(&b.ns);

    let connect = a.env.zk_connect();
    let anonymous = zk_as(&connect, None).await;
    let as_a = zk_as(&connect, Some(&tenant_a)).await;
    let as_op = zk_as(&connect, Some(&operator)).await;
    let (config_a, config_b) = (a.config_path("checkout"), b.config_path("checkout"));
    let instances = |f: &Fixture| f.layout.instances(&f.ns, "checkout").expect("path");
    let open = CreateMode::Ephemeral.with_acls(Acls::anyone_all());

    // Anyone else: nothing below the root.
    for (what, result) in [
        (
            "read A's config",
            anonymous.get_data(&config_a).await.map(|_| ()),
        ),
        (
            "read B's config",
            anonymous.get_data(&config_b).await.map(|_| ()),
        ),
        (
            "list the namespaces",
            anonymous
                .get_children(&a.layout.namespaces())
                .await
                .map(|_| ()),
        ),
        (
            "create a namespace",
            anonymous
                .create(
                    &format!("{}/evil", a.layout.namespaces()),
                    b"",
                    &CreateMode::Persistent.with_acls(Acls::anyone_all()),
                )
                .await
                .map(|_| ()),
        ),
        (
            "ack into A",
            anonymous
                .create(&format!("{}/forged", instances(&a)), b"{}", &open)
                .await
                .map(|_| ()),
        ),
    ] {
        assert!(
            is_no_auth(&result),
            "an anonymous client could {what}: {result:?}"
        );
    }
    // Tenant A: reads its own config and acks, nothing more.
    let (data, _) = as_a
        .get_data(&config_a)
        .await
        .expect("A reads its own config");
    assert_eq!(
        Envelope::from_slice(&data).expect("an envelope").spec,
        example().spec
    );
    // As a sidecar does: the record belongs to the identity that writes it.
    let record_acl = [zookeeper_client::Acl::new(
        zookeeper_client::Permission::ALL,
        zookeeper_client::AuthId::authed(),
    )];
    let own_record = format!("{}/pod-a", instances(&a));
    as_a.create(
        &own_record,
        b"{}",
        &CreateMode::Ephemeral.with_acls(Acls::new(&record_acl)),
    )
    .await
    .expect("A creates its own instance record");
    as_a.set_data(&own_record, b"{\"x\":1}", None)
        .await
        .expect("A rewrites its own record");
    // The operator reads it with A's identity, which it derives and adds to its session.
    assert!(is_no_auth(&as_op.get_data(&own_record).await));
    as_op
        .auth("digest", &tenant_a.auth_bytes())
        .await
        .expect("adding A's identity");
    as_op
        .get_data(&own_record)
        .await
        .expect("the operator reads A's record");
    for (what, result) in [
        (
            "rewrite its own config",
            as_a.set_data(&config_a, b"{}", None).await.map(|_| ()),
        ),
        (
            "delete its own config",
            as_a.delete(&config_a, None).await.map(|_| ()),
        ),
        (
            "read B's config",
            as_a.get_data(&config_b).await.map(|_| ()),
        ),
        (
            "rewrite B's config",
            as_a.set_data(&config_b, b"{}", None).await.map(|_| ()),
        ),
        (
            "ack into B",
            as_a.create(&format!("{}/forged", instances(&b)), b"{}", &open)
                .await
                .map(|_| ()),
        ),
        (
            "create a namespace",
            as_a.create(
                &format!("{}/evil", a.layout.namespaces()),
                b"",
                &CreateMode::Persistent.with_acls(Acls::anyone_all()),
            )
            .await
            .map(|_| ()),
        ),
    ] {
        assert!(is_no_auth(&result), "tenant A could {what}: {result:?}");
    }
    // And B's identity does not open A's tree either.
    let as_b = zk_as(&connect, Some(&tenant_b)).await;
    assert!(
        is_no_auth(&as_b.get_data(&config_a).await),
        "tenant B read A's config"
    );
    as_b.get_data(&config_b)
        .await
        .expect("B reads its own config");
    drop((op_a, op_b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_tree_without_acls_when_the_operator_gains_an_identity_then_it_secures_every_znode()
{
    let f = Fixture::new("acl-migrate").await;
    let open_operator = f.operator("a");
    f.create(&example()).await;
    f.wait_status("checkout", "Published=True", &open_operator, |s| {
        is_true(s, "Published")
    })
    .await;
    let connect = f.env.zk_connect();
    let anonymous = zk_as(&connect, None).await;
    anonymous
        .get_data(&f.config_path("checkout"))
        .await
        .expect("without ACLs the config is open");
    drop(open_operator);

    let (auth_file, operator) = operator_identity("acl-migrate");
    let mut options = f.options("b", &connect);
    options
        .extra_args
        .push(format!("--zk-auth-file={}", auth_file.display()));
    let secured = Operator::start(f.env, &options).expect("the operator with an identity");
    let config = f.config_path("checkout");
    let deadline = tokio::time::Instant::now() + WAIT;
    while !is_no_auth(&anonymous.get_data(&config).await) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {WAIT:?} waiting for the operator to secure {config}\n--- operator log ---\n{}",
            secured.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let as_op = zk_as(&connect, Some(&operator)).await;
    for path in [
        f.layout.root().to_owned(),
        f.layout.namespaces(),
        f.layout.resource(&f.ns, "checkout").expect("path"),
        config.clone(),
        f.layout.instances(&f.ns, "checkout").expect("path"),
    ] {
        let (acl, _) = as_op
            .get_acl(&path)
            .await
            .expect("the operator reads the ACL");
        assert!(
            acl.iter().all(|a| a.scheme() == "digest"),
            "{path} still open to someone: {acl:?}"
        );
    }
    let tenant = operator.for_namespace(&f.ns);
    let as_tenant = zk_as(&connect, Some(&tenant)).await;
    as_tenant
        .get_data(&config)
        .await
        .expect("the namespace's identity reads the secured config");
}
