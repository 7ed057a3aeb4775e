//! Staged rollout, the operator's half, on the real API server and a real ZooKeeper: a
//! spec change under `spec.rollout` is published as the candidate beside the stable config,
//! waits for its canaries' acks, is promoted, and a canary's rejection withdraws it. The
//! sidecars' acks are instance records written by the test (the sidecar's half, with real
//! sidecar processes, is `sidecar/tests/rollout.rs`).

use std::time::Duration;

use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
};
use servicelog_api::{
    rollout,
    v1alpha1::{RolloutPhase, ServiceLog, ServiceLogStatus},
    wire::{Candidate, Envelope, Instance, InstanceState, Layout},
};
use servicelog_e2e::{
    TestEnv,
    run::{Operator, OperatorOptions},
    unique_name,
};
use zookeeper_client::{Acls, Client, CreateMode};

const WAIT: Duration = Duration::from_secs(30);
const PODS: usize = 20;

const SERVICELOG: &str = r#"
apiVersion: servicelog.io/v1alpha1
kind: ServiceLog
metadata: {name: checkout}
spec:
  sources:
    - name: app
      file: {paths: ["/var/log/app/*.log"], format: json}
  sinks:
    - name: a
      file: {path: /var/log/servicelog/a.log}
    - name: b
      file: {path: /var/log/servicelog/b.log}
  rules:
    - name: all
      to: [a]
  rollout:
    steps: [{percent: 50}]
"#;

struct Fixture {
    ns: String,
    layout: Layout,
    api: Api<ServiceLog>,
    zk: Client,
    operator: Operator,
}

impl Fixture {
    async fn new() -> Self {
        let env =
            TestEnv::shared().unwrap_or_else(|e| panic!("the test environment did not start: {e}"));
        env.install_crds().unwrap_or_else(|e| panic!("{e}"));
        let ns = env.create_namespace("rollout").await.expect("namespace");
        let root = format!("/{}", unique_name("t"));
        let client = env.client().await.expect("client");
        let operator = Operator::start(
            env,
            &OperatorOptions {
                namespace: ns.clone(),
                zk_connect: env.zk_connect(),
                zk_root: root.clone(),
                identity: "a".into(),
                leader_election: true,
                webhook: false,
                extra_args: vec!["--lease-duration=3s".into()],
            },
        )
        .unwrap_or_else(|e| panic!("the operator did not start: {e}"));
        let zk = servicelog_e2e::zookeeper::connect(&env.zk_connect())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        Self {
            api: Api::namespaced(client, &ns),
            layout: Layout::new(&root).expect("layout"),
            ns,
            zk,
            operator,
        }
    }

    async fn wait_status(
        &self,
        what: &str,
        ok: impl Fn(&ServiceLogStatus) -> bool,
    ) -> ServiceLogStatus {
        let mut last = None;
        let deadline = tokio::time::Instant::now() + WAIT;
        while tokio::time::Instant::now() < deadline {
            if let Ok(obj) = self.api.get("checkout").await {
                if let Some(status) = obj.status.as_ref().filter(|s| ok(s)) {
                    return status.clone();
                }
                last = obj.status;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "timed out after {WAIT:?} waiting for {what}; last status: {last:#?}\n--- operator log ---\n{}",
            self.operator.log_tail(40)
        );
    }

    async fn config_hash(&self) -> Option<String> {
        let path = self.layout.config(&self.ns, "checkout").expect("path");
        let (data, _) = self.zk.get_data(&path).await.ok()?;
        Envelope::from_slice(&data).ok().map(|e| e.hash)
    }

    async fn candidate(&self) -> Option<Candidate> {
        let path = self.layout.candidate(&self.ns, "checkout").expect("path");
        let (data, _) = self.zk.get_data(&path).await.ok()?;
        Some(Candidate::from_slice(&data).expect("the candidate znode is readable"))
    }

    async fn wait_zk<T>(&self, what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + WAIT;
        while tokio::time::Instant::now() < deadline {
            if let Some(found) = check().await {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "timed out after {WAIT:?} waiting for {what}\n--- operator log ---\n{}",
            self.operator.log_tail(40)
        );
    }

    /// Writes (creating it the first time) pod `pod`'s instance record.
    async fn record(&self, pod: &str, hash: &str, state: InstanceState, candidate: Option<&str>) {
        let record = Instance {
            pod: pod.into(),
            hash: hash.into(),
            state,
            error: (state == InstanceState::Error).then(|| "sink b: permission denied".into()),
            since: "2026-11-25T00:00:00Z".into(),
            sink_errors: Default::default(),
            candidate: candidate.map(Into::into),
        };
        let data = record.to_bytes().expect("bytes");
        let path = self
            .layout
            .instance(&self.ns, "checkout", pod)
            .expect("path");
        match self.zk.set_data(&path, &data, None).await {
            Ok(_) => {}
            Err(zookeeper_client::Error::NoNode) => {
                self.zk
                    .create(
                        &path,
                        &data,
                        &CreateMode::Ephemeral.with_acls(Acls::anyone_all()),
                    )
                    .await
                    .expect("creating the instance record");
            }
            Err(e) => panic!("writing the instance record {path}: {e}"),
        }
    }

    async fn patch_rule_to(&self, to: &str) {
        let patch = serde_json::json!({"spec": {"rules": [{"name": "all", "to": [to]}]}});
        self.api
            .patch("checkout", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("patch");
    }
}

fn pods() -> Vec<String> {
    (0..PODS).map(|i| format!("checkout-6b8d-{i:02}")).collect()
}

/// Given a ServiceLog with one 50% step, when its rules change, then the change waits in
/// the candidate znode (the config znode keeps the stable one) until the step's canaries
/// ack, and is then promoted; when the next change is rejected by a canary, the candidate
/// is withdrawn and the status says which pod rejected it and why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_rollout_when_canaries_ack_then_it_is_promoted_and_when_one_rejects_then_it_is_rolled_back()
 {
    let f = Fixture::new().await;
    let slog: ServiceLog = serde_yaml::from_str(SERVICELOG).expect("the test ServiceLog");
    f.api
        .create(&PostParams::default(), &slog)
        .await
        .expect("create ServiceLog");
    let first = f
        .wait_status("the first config published", |s| s.config_hash.is_some())
        .await;
    let stable = first.config_hash.expect("configHash");
    assert_eq!(
        f.config_hash().await.as_ref(),
        Some(&stable),
        "nothing to roll out from: published at once"
    );
    for pod in pods() {
        f.record(&pod, &stable, InstanceState::Ok, None).await;
    }

    // A change: the candidate, step 1 of 50%, beside the stable config.
    f.patch_rule_to("b").await;
    let candidate = f
        .wait_zk("the candidate znode", async || f.candidate().await)
        .await;
    assert_eq!(
        (candidate.step, candidate.percent, candidate.preview),
        (1, 50, false)
    );
    assert_eq!(candidate.stable_hash, stable);
    assert_ne!(candidate.hash, stable);
    let members: Vec<String> = pods()
        .into_iter()
        .filter(|p| rollout::is_member(&candidate.hash, &f.ns, p, 50))
        .collect();
    assert!(!members.is_empty(), "50% of {PODS} pods selects some");
    let status = f
        .wait_status("status.rollout Progressing at step 1", |s| {
            s.rollout
                .as_ref()
                .is_some_and(|r| r.phase == RolloutPhase::Progressing && r.step == 1)
        })
        .await;
    let progress = status.rollout.expect("status.rollout");
    assert_eq!(progress.canary.total as usize, members.len());
    assert_eq!(progress.canary.applied, 0);
    assert_eq!(progress.candidate_hash.as_ref(), Some(&candidate.hash));
    assert_eq!(
        status.config_hash.as_ref(),
        Some(&stable),
        "configHash stays the stable one"
    );

    // Without the acks nothing is promoted.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        f.config_hash().await.as_ref(),
        Some(&stable),
        "promoted before the canaries acked"
    );
    assert!(
        f.candidate().await.is_some(),
        "the candidate must stay until its canaries ack"
    );

    for pod in &members {
        f.record(
            pod,
            &candidate.hash,
            InstanceState::Ok,
            Some(&candidate.hash),
        )
        .await;
    }
    let promoted = candidate.hash.clone();
    f.wait_zk("the candidate promoted into the config znode", async || {
        (f.config_hash().await.as_ref() == Some(&promoted) && f.candidate().await.is_none())
            .then_some(())
    })
    .await;
    f.wait_status("status.rollout Complete", |s| {
        s.rollout
            .as_ref()
            .is_some_and(|r| r.phase == RolloutPhase::Complete)
            && s.config_hash.as_ref() == Some(&promoted)
    })
    .await;
    for pod in pods() {
        f.record(&pod, &promoted, InstanceState::Ok, None).await;
    }

    // The next change, rejected by one of its canaries: withdrawn, the stable config kept.
    f.patch_rule_to("a").await;
    let next = f
        .wait_zk("the next candidate", async || {
            f.candidate().await.filter(|c| c.hash != promoted)
        })
        .await;
    assert_eq!(next.stable_hash, promoted);
    let rejecter = pods()
        .into_iter()
        .find(|p| rollout::is_member(&next.hash, &f.ns, p, 50))
        .expect("a canary of the next candidate");
    f.record(&rejecter, &promoted, InstanceState::Error, Some(&next.hash))
        .await;
    f.wait_zk("the rejected candidate withdrawn", async || {
        f.candidate().await.is_none().then_some(())
    })
    .await;
    let status = f
        .wait_status("status.rollout RolledBack", |s| {
            s.rollout
                .as_ref()
                .is_some_and(|r| r.phase == RolloutPhase::RolledBack)
        })
        .await;
    let rolled_back = status.rollout.expect("status.rollout");
    assert!(
        rolled_back.reason.contains(&rejecter) && rolled_back.reason.contains("permission denied"),
        "the reason names the pod and its error: {}",
        rolled_back.reason
    );
    assert_eq!(
        f.config_hash().await.as_ref(),
        Some(&promoted),
        "the stable config stays"
    );
    // A record changing (the rejecter back on stable) makes the operator look again.
    f.record(&rejecter, &promoted, InstanceState::Ok, None)
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        f.candidate().await.is_none(),
        "a rolled-back candidate is not tried again"
    );
}

/// Given a rollout partway, when `spec.rollout` is removed, then the change goes to every
/// pod at once and the candidate znode is removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_rollout_partway_when_spec_rollout_is_removed_then_the_change_is_published_at_once()
{
    let f = Fixture::new().await;
    let slog: ServiceLog = serde_yaml::from_str(SERVICELOG).expect("the test ServiceLog");
    f.api
        .create(&PostParams::default(), &slog)
        .await
        .expect("create ServiceLog");
    let stable = f
        .wait_status("the first config published", |s| s.config_hash.is_some())
        .await
        .config_hash
        .expect("configHash");
    for pod in pods() {
        f.record(&pod, &stable, InstanceState::Ok, None).await;
    }
    f.patch_rule_to("b").await;
    let candidate = f
        .wait_zk("the candidate znode", async || f.candidate().await)
        .await;
    f.wait_status("status.rollout Progressing", |s| {
        s.rollout
            .as_ref()
            .is_some_and(|r| r.phase == RolloutPhase::Progressing)
    })
    .await;

    let patch = serde_json::json!({"spec": {"rollout": null}});
    let patched = f
        .api
        .patch("checkout", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patch");
    assert_eq!(patched.spec.rollout, None, "the patch removes spec.rollout");
    f.wait_zk(
        "the change published at once and the candidate removed",
        async || {
            (f.config_hash().await.as_ref() == Some(&candidate.hash)
                && f.candidate().await.is_none())
            .then_some(())
        },
    )
    .await;
    let status = f
        .wait_status("configHash of the change", |s| {
            s.config_hash.as_ref() == Some(&candidate.hash)
        })
        .await;
    assert_eq!(
        status.rollout, None,
        "no rollout to report without spec.rollout"
    );
}
