//! Staged rollout, the operator's half, on the real API server and a real ZooKeeper: a
//! spec change under `spec.rollout` is published as the candidate beside the stable config,
//! waits for its canaries' acks, is promoted, and a canary's rejection withdraws it; the
//! `servicelog.io/rollout` annotation pauses, resumes, promotes and aborts it; a progress
//! deadline rolls back canaries that never ack; an operator restarted mid-rollout resumes
//! it; ZooKeeper down pauses it. The sidecars' acks here are instance records written by
//! the test (the sidecar's half, with real sidecar processes, is `sidecar/tests/rollout.rs`).

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use k8s_openapi::api::{core::v1::Pod, events::v1::Event as K8sEvent};
use kube::{
    Api,
    api::{ListParams, Patch, PatchParams, PostParams},
};
use servicelog_api::{
    rollout,
    v1alpha1::{RolloutPhase, ServiceLog, ServiceLogStatus},
    wire::{Candidate, Envelope, Instance, InstanceState, Layout},
};
use servicelog_e2e::{
    TestEnv, pod,
    run::{Operator, OperatorOptions, bin_dir},
    unique_name,
    zookeeper::ZooKeeper,
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
    events: Api<K8sEvent>,
    zk: Client,
    operator: Operator,
    options: OperatorOptions,
}

impl Fixture {
    async fn new() -> Self {
        let env =
            TestEnv::shared().unwrap_or_else(|e| panic!("the test environment did not start: {e}"));
        Self::with_zookeeper(&env.zk_connect(), false).await
    }

    /// An operator on the ZooKeeper at `zk_connect`, serving the injection webhook if
    /// `webhook`.
    async fn with_zookeeper(zk_connect: &str, webhook: bool) -> Self {
        let env =
            TestEnv::shared().unwrap_or_else(|e| panic!("the test environment did not start: {e}"));
        env.install_crds().unwrap_or_else(|e| panic!("{e}"));
        let ns = env.create_namespace("rollout").await.expect("namespace");
        let root = format!("/{}", unique_name("t"));
        let client = env.client().await.expect("client");
        let options = OperatorOptions {
            namespace: ns.clone(),
            zk_connect: zk_connect.to_owned(),
            zk_root: root.clone(),
            identity: "a".into(),
            leader_election: true,
            webhook,
            extra_args: vec!["--lease-duration=3s".into()],
        };
        let operator = Operator::start(env, &options)
            .unwrap_or_else(|e| panic!("the operator did not start: {e}"));
        let zk = servicelog_e2e::zookeeper::connect(zk_connect)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        Self {
            api: Api::namespaced(client.clone(), &ns),
            events: Api::namespaced(client, &ns),
            layout: Layout::new(&root).expect("layout"),
            ns,
            zk,
            operator,
            options,
        }
    }

    async fn create(&self, yaml: &str) -> String {
        let slog: ServiceLog = serde_yaml::from_str(yaml).expect("the test ServiceLog");
        self.api
            .create(&PostParams::default(), &slog)
            .await
            .expect("create ServiceLog");
        let stable = self
            .wait_status("the first config published", |s| s.config_hash.is_some())
            .await
            .config_hash
            .expect("configHash");
        for pod in pods() {
            self.record(&pod, &stable, InstanceState::Ok, None).await;
        }
        stable
    }

    /// Sets (or with `None` removes) the rollout annotation.
    async fn annotate(&self, value: Option<&str>) {
        let patch = serde_json::json!({"metadata": {"annotations": {rollout::ANNOTATION: value}}});
        self.api
            .patch("checkout", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("annotate");
    }

    async fn annotation(&self) -> Option<String> {
        let obj = self.api.get("checkout").await.expect("get");
        obj.metadata
            .annotations
            .and_then(|a| a.get(rollout::ANNOTATION).cloned())
    }

    /// Waits for an Event of `reason` about the ServiceLog whose note contains `note`.
    async fn wait_event(&self, reason: &str, note: &str) -> String {
        let mut seen = Vec::new();
        let deadline = tokio::time::Instant::now() + WAIT;
        while tokio::time::Instant::now() < deadline {
            let list = self
                .events
                .list(&ListParams::default())
                .await
                .expect("list events");
            seen = list
                .items
                .into_iter()
                .filter(|e| {
                    e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("checkout")
                })
                .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
                .collect();
            if let Some((_, found)) = seen.iter().find(|(r, n)| r == reason && n.contains(note)) {
                return found.clone();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!(
            "timed out after {WAIT:?} waiting for Event {reason} with {note:?}; events: {seen:#?}"
        );
    }

    /// Acks the candidate on each of its canaries at `percent`.
    async fn ack(&self, candidate: &str, percent: u32) -> Vec<String> {
        let members: Vec<String> = pods()
            .into_iter()
            .filter(|p| rollout::is_member(candidate, &self.ns, p, percent))
            .collect();
        for pod in &members {
            self.record(pod, candidate, InstanceState::Ok, Some(candidate))
                .await;
        }
        members
    }

    async fn wait_phase(&self, what: &str, phase: RolloutPhase) -> ServiceLogStatus {
        self.wait_status(what, |s| {
            s.rollout.as_ref().is_some_and(|r| r.phase == phase)
        })
        .await
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

    async fn wait_zk<T>(&self, what: &str, check: impl AsyncFnMut() -> Option<T>) -> T {
        self.wait_zk_every(what, Duration::from_millis(100), check)
            .await
    }

    /// [`Fixture::wait_zk`], looking every `every`.
    async fn wait_zk_every<T>(
        &self,
        what: &str,
        every: Duration,
        mut check: impl AsyncFnMut() -> Option<T>,
    ) -> T {
        let deadline = tokio::time::Instant::now() + WAIT;
        while tokio::time::Instant::now() < deadline {
            if let Some(found) = check().await {
                return found;
            }
            tokio::time::sleep(every).await;
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
            health: None,
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

fn ready(status: &ServiceLogStatus) -> (String, String) {
    status
        .conditions
        .iter()
        .find(|c| c.r#type == "Ready")
        .map(|c| (c.status.clone(), c.reason.clone()))
        .unwrap_or_default()
}

const ONE_STEP_HELD: &str = r#"
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
    steps: [{percent: 50, pause: 1h}]
"#;

/// Given a ServiceLog whose one step holds for an hour, when a person annotates it, then:
/// a bad value is named in status and an Event and changes nothing; `pause` holds a new
/// change before any pod gets it (Ready False, RolloutPaused); `resume` starts step 1 and is
/// cleared; `promote` makes the candidate stable without waiting the hour and is cleared;
/// on the next change `abort` withdraws it (RolledBack, an Event with the reason).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_rollout_when_a_person_annotates_it_then_it_pauses_resumes_promotes_and_aborts() {
    let f = Fixture::new().await;
    let stable = f.create(ONE_STEP_HELD).await;

    f.annotate(Some("halt")).await;
    let status = f
        .wait_status("the bad annotation named in status.rollout.reason", |s| {
            s.rollout
                .as_ref()
                .is_some_and(|r| r.reason.contains(rollout::ANNOTATION))
        })
        .await;
    assert!(
        status.rollout.expect("rollout").reason.contains("\"halt\""),
        "the reason quotes the value"
    );
    f.wait_event("RolloutAnnotationInvalid", "halt").await;

    f.annotate(Some("pause")).await;
    f.patch_rule_to("b").await;
    let status = f
        .wait_phase("Paused before step 1", RolloutPhase::Paused)
        .await;
    let paused = status.rollout.clone().expect("rollout");
    assert_eq!(paused.step, 0);
    assert_eq!(ready(&status), ("False".into(), "RolloutPaused".into()));
    assert_eq!(paused.summary, "Paused 0/1 0/0");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        f.candidate().await.is_none(),
        "paused: no candidate written"
    );
    assert_eq!(
        f.annotation().await.as_deref(),
        Some("pause"),
        "pause stays"
    );

    f.annotate(Some("resume")).await;
    let candidate = f
        .wait_zk("the candidate after resume", async || f.candidate().await)
        .await;
    let status = f
        .wait_status("Progressing at step 1", |s| {
            s.rollout
                .as_ref()
                .is_some_and(|r| r.phase == RolloutPhase::Progressing && r.step == 1)
        })
        .await;
    assert_eq!(ready(&status), ("False".into(), "RollingOut".into()));
    f.wait_zk("resume cleared by the operator", async || {
        f.annotation().await.is_none().then_some(())
    })
    .await;
    f.wait_event("RolloutStep", &candidate.hash).await;
    let members = f.ack(&candidate.hash, 50).await;
    let status = f
        .wait_status("every canary counted", |s| {
            s.rollout
                .as_ref()
                .is_some_and(|r| r.canary.applied as usize == members.len())
        })
        .await;
    assert_eq!(
        status.rollout.expect("rollout").summary,
        format!("Progressing 1/1 {0}/{0}", members.len())
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        f.config_hash().await.as_ref(),
        Some(&stable),
        "the step holds for its hour"
    );

    f.annotate(Some("promote")).await;
    f.wait_zk("promoted by the annotation", async || {
        (f.config_hash().await.as_ref() == Some(&candidate.hash) && f.candidate().await.is_none())
            .then_some(())
    })
    .await;
    let status = f.wait_phase("Complete", RolloutPhase::Complete).await;
    assert!(
        status
            .rollout
            .expect("rollout")
            .reason
            .contains("promoted by servicelog.io/rollout=promote"),
        "the reason says who promoted"
    );
    f.wait_zk("promote cleared by the operator", async || {
        f.annotation().await.is_none().then_some(())
    })
    .await;
    f.wait_event("RolloutPromoted", &candidate.hash).await;
    for pod in pods() {
        f.record(&pod, &candidate.hash, InstanceState::Ok, None)
            .await;
    }

    f.patch_rule_to("a").await;
    let next = f
        .wait_zk("the next candidate", async || {
            f.candidate().await.filter(|c| c.hash != candidate.hash)
        })
        .await;
    f.annotate(Some("abort")).await;
    f.wait_zk("the candidate withdrawn by abort", async || {
        f.candidate().await.is_none().then_some(())
    })
    .await;
    let status = f.wait_phase("RolledBack", RolloutPhase::RolledBack).await;
    assert_eq!(ready(&status), ("False".into(), "RolledBack".into()));
    assert_eq!(status.config_hash.as_ref(), Some(&candidate.hash));
    let note = f
        .wait_event(
            "RolloutRolledBack",
            "aborted by servicelog.io/rollout=abort",
        )
        .await;
    assert!(
        note.contains(&next.hash),
        "the Event names the candidate: {note}"
    );
    f.wait_zk("abort cleared by the operator", async || {
        f.annotation().await.is_none().then_some(())
    })
    .await;
}

const TWO_STEPS: &str = r#"
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
    steps: [{percent: 30, pause: 4s}, {percent: 60}]
    progressDeadline: 5s
"#;

/// Given a rollout in its first step's pause, when the operator is killed and another one
/// takes over, then the new one resumes it (step 2, then the promotion); and given the next
/// change, when its canaries never ack, then the progress deadline rolls it back naming
/// them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_rollout_partway_when_the_operator_restarts_then_it_resumes_and_a_deadline_rolls_back_silent_canaries()
 {
    let mut f = Fixture::new().await;
    f.create(TWO_STEPS).await;
    f.patch_rule_to("b").await;
    let candidate = f.wait_zk("step 1", async || f.candidate().await).await;
    f.ack(&candidate.hash, 30).await;
    f.wait_status("step 1 acked", |s| {
        s.rollout.as_ref().is_some_and(|r| {
            r.step == 1 && r.canary.applied == r.canary.total && r.canary.total > 0
        })
    })
    .await;
    f.operator.kill();
    let mut options = f.options.clone();
    options.identity = "b".into();
    f.operator = Operator::start(TestEnv::shared().expect("env"), &options)
        .unwrap_or_else(|e| panic!("the second operator did not start: {e}"));
    let step2 = f
        .wait_zk("step 2 written by the new operator", async || {
            f.candidate().await.filter(|c| c.step == 2)
        })
        .await;
    assert_eq!(step2.percent, 60);
    f.ack(&candidate.hash, 60).await;
    f.wait_zk("the candidate promoted by the new operator", async || {
        (f.config_hash().await.as_ref() == Some(&candidate.hash) && f.candidate().await.is_none())
            .then_some(())
    })
    .await;
    f.wait_phase("Complete", RolloutPhase::Complete).await;
    for pod in pods() {
        f.record(&pod, &candidate.hash, InstanceState::Ok, None)
            .await;
    }

    f.patch_rule_to("a").await;
    let next = f
        .wait_zk("the next candidate", async || {
            f.candidate().await.filter(|c| c.hash != candidate.hash)
        })
        .await;
    let silent = pods()
        .into_iter()
        .find(|p| rollout::is_member(&next.hash, &f.ns, p, 30))
        .expect("a canary");
    let status = f
        .wait_phase("RolledBack at the deadline", RolloutPhase::RolledBack)
        .await;
    let reason = status.rollout.expect("rollout").reason;
    assert!(
        reason.contains("progress deadline 5s") && reason.contains(&silent),
        "the reason names the deadline and the pods: {reason}"
    );
    assert!(f.candidate().await.is_none(), "withdrawn");
    assert_eq!(f.config_hash().await.as_ref(), Some(&candidate.hash));
}

/// Given a rollout waiting for its canaries, when ZooKeeper stops, then the rollout is
/// Paused with ZooKeeper named (nothing rolled back); when it is back, the rollout goes on
/// and is promoted once the canaries ack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_rollout_partway_when_zookeeper_is_down_then_it_pauses_and_goes_on_after() {
    let env =
        TestEnv::shared().unwrap_or_else(|e| panic!("the test environment did not start: {e}"));
    let mut zookeeper = ZooKeeper::start(env.env_dir(), &unique_name("rollout-zk"), 1)
        .unwrap_or_else(|e| panic!("ZooKeeper did not start: {e}"));
    let f = Fixture::with_zookeeper(&zookeeper.connect_string(), false).await;
    f.create(SERVICELOG).await;
    f.patch_rule_to("b").await;
    let candidate = f
        .wait_zk("the candidate", async || f.candidate().await)
        .await;
    f.wait_phase("Progressing", RolloutPhase::Progressing).await;

    zookeeper.stop(0);
    let status = f
        .wait_phase("Paused while ZooKeeper is down", RolloutPhase::Paused)
        .await;
    let paused = status.rollout.clone().expect("rollout");
    assert!(
        paused.reason.contains("ZooKeeper"),
        "the reason names ZooKeeper: {}",
        paused.reason
    );
    assert_eq!(ready(&status).1, "RolloutPaused");

    zookeeper
        .restart(0)
        .unwrap_or_else(|e| panic!("ZooKeeper did not restart: {e}"));
    f.wait_phase("Progressing again", RolloutPhase::Progressing)
        .await;
    assert_eq!(
        f.candidate().await.map(|c| c.hash),
        Some(candidate.hash.clone()),
        "the same candidate goes on"
    );
    f.ack(&candidate.hash, 50).await;
    f.wait_zk("promoted after ZooKeeper came back", async || {
        (f.config_hash().await.as_ref() == Some(&candidate.hash)).then_some(())
    })
    .await;
}

const FLEET: &str = r#"
apiVersion: servicelog.io/v1alpha1
kind: ServiceLog
metadata: {name: checkout}
spec:
  selector: {matchLabels: {app: checkout}}
  sources:
    - name: app
      file: {paths: ["/var/log/app/*.log"], format: json}
  sinks:
    - name: out
      file: {path: /var/log/servicelog/out.log}
    - name: other
      file: {path: /var/log/servicelog/other.log}
  rules:
    - name: all
      to: [out]
  rollout:
    steps: [{percent: 40, pause: 10s}, {percent: 80, pause: 10s}]
    rollbackOn: {quietSinks: true, minEvents: 20}
"#;

const FLEET_PODS: usize = 10;

/// Real sidecar processes of injected pods, with a writer appending numbered lines to
/// every pod's app log until stopped.
struct Sidecars {
    pods: Vec<String>,
    running: Vec<pod::Running>,
    app_dirs: Vec<PathBuf>,
    out_dirs: Vec<PathBuf>,
    written: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl Sidecars {
    async fn start(f: &Fixture, size: usize) -> Self {
        let env = TestEnv::shared().expect("env");
        let client = env.client().await.expect("client");
        let api: Api<Pod> = Api::namespaced(client, &f.ns);
        let binary = bin_dir().expect("binaries").join("servicelog-sidecar");
        let mut s = Self {
            pods: Vec::new(),
            running: Vec::new(),
            app_dirs: Vec::new(),
            out_dirs: Vec::new(),
            written: Arc::new(AtomicUsize::new(0)),
            stop: Arc::new(AtomicBool::new(false)),
            writer: None,
        };
        for i in 0..size {
            let name = format!("checkout-5f7c-{i:02}");
            let mut p: Pod = serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "labels": {"app": "checkout"},
                             "annotations": {"servicelog.io/inject": "checkout"}},
                "spec": {"containers": [{"name": "app", "image": "busybox"}]},
            }))
            .expect("pod");
            p.metadata.namespace = Some(f.ns.clone());
            let created = api
                .create(&PostParams::default(), &p)
                .await
                .unwrap_or_else(|e| panic!("creating pod {name}: {e}"));
            let sidecar = pod::container(&created, "servicelog-sidecar")
                .unwrap_or_else(|| {
                    panic!("pod {name} was not injected\n{}", f.operator.log_tail(20))
                })
                .clone();
            let app = pod::container(&created, "app").expect("app").clone();
            let running = pod::run(env.env_dir(), &created, &sidecar, &binary)
                .unwrap_or_else(|e| panic!("starting the sidecar of {name}: {e}"));
            s.app_dirs.push(
                running
                    .dirs
                    .path_in(&app, "/var/log/app")
                    .expect("the app mounts /var/log/app"),
            );
            s.out_dirs.push(
                running
                    .dirs
                    .path_in(&sidecar, "/var/log/servicelog")
                    .expect("the sidecar mounts /var/log/servicelog"),
            );
            s.running.push(running);
            s.pods.push(name);
        }
        s
    }

    /// Appends 10 lines to every pod's log every 100 ms, numbered alike in each.
    fn write(&mut self) {
        let (dirs, written, stop) = (
            self.app_dirs.clone(),
            self.written.clone(),
            self.stop.clone(),
        );
        self.writer = Some(std::thread::spawn(move || {
            let mut files: Vec<std::fs::File> = dirs
                .iter()
                .map(|d| {
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(d.join("app.log"))
                        .expect("app log")
                })
                .collect();
            while !stop.load(Ordering::SeqCst) {
                let from = written.load(Ordering::SeqCst);
                let mut buf = String::new();
                for seq in from..from + 10 {
                    buf.push_str(&format!(
                        "{{\"level\":\"info\",\"msg\":\"paid\",\"seq\":{seq}}}\n"
                    ));
                }
                for f in &mut files {
                    f.write_all(buf.as_bytes()).expect("write");
                }
                written.store(from + 10, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(100));
            }
        }));
    }

    /// Stops the writer; the number of lines each pod's log got.
    fn stop_writing(&mut self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(w) = self.writer.take() {
            w.join().expect("writer");
        }
        self.written.load(Ordering::SeqCst)
    }

    /// The seqs pod `i` delivered, by sink file.
    fn delivered(&self, i: usize) -> BTreeMap<String, Vec<u64>> {
        let mut by_sink = BTreeMap::new();
        for sink in ["out", "other"] {
            let text = std::fs::read_to_string(self.out_dirs[i].join(format!("{sink}.log")))
                .unwrap_or_default();
            let seqs = text
                .lines()
                .filter_map(|l| {
                    serde_json::from_str::<serde_json::Value>(l)
                        .ok()?
                        .get("seq")?
                        .as_u64()
                })
                .collect();
            by_sink.insert(sink.to_owned(), seqs);
        }
        by_sink
    }

    /// Waits until every pod delivered each of `0..written` exactly once over its sinks.
    async fn assert_no_line_lost(&self, written: usize) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let mut short = Vec::new();
            for (i, pod) in self.pods.iter().enumerate() {
                let all: Vec<u64> = self.delivered(i).into_values().flatten().collect();
                let distinct: BTreeSet<u64> = all.iter().copied().collect();
                assert_eq!(
                    distinct.len(),
                    all.len(),
                    "pod {pod} delivered a line twice"
                );
                if distinct != (0..written as u64).collect() {
                    short.push(format!("{pod}: {} of {written}", distinct.len()));
                }
            }
            if short.is_empty() {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out after {WAIT:?} waiting for every line delivered once: {short:?}\n{}",
                self.running[0].proc.log_tail(20)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Sidecars {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

impl Fixture {
    /// The pods whose instance record routes with `hash`.
    async fn running(&self, pods: &[String], hash: &str) -> BTreeSet<String> {
        let mut on = BTreeSet::new();
        for pod in pods {
            let path = self
                .layout
                .instance(&self.ns, "checkout", pod)
                .expect("path");
            if let Ok((data, _)) = self.zk.get_data(&path).await
                && Instance::from_slice(&data).is_ok_and(|r| r.hash == hash)
            {
                on.insert(pod.clone());
            }
        }
        on
    }

    /// Waits for step `step` of `percent` acked, then checks that exactly its members run
    /// the candidate and every other pod the stable config.
    async fn assert_step_share(
        &self,
        pods: &[String],
        stable: &str,
        candidate: &str,
        step: u32,
        percent: u32,
    ) {
        let members: BTreeSet<String> = pods
            .iter()
            .filter(|p| rollout::is_member(candidate, &self.ns, p, percent))
            .cloned()
            .collect();
        self.wait_status(
            &format!("step {step} acked by its {} canaries", members.len()),
            |s| {
                s.rollout.as_ref().is_some_and(|r| {
                    r.step == step
                        && r.phase == RolloutPhase::Progressing
                        && r.canary.total as usize == members.len()
                        && r.canary.applied == r.canary.total
                })
            },
        )
        .await;
        assert_eq!(
            self.running(pods, candidate).await,
            members,
            "step {step} ({percent}%): exactly its members run the candidate"
        );
        let rest: BTreeSet<String> = pods
            .iter()
            .filter(|p| !members.contains(*p))
            .cloned()
            .collect();
        assert_eq!(
            self.running(pods, stable).await,
            rest,
            "step {step}: every other pod runs the stable config"
        );
    }

    async fn patch_spec(&self, spec: serde_json::Value) {
        self.api
            .patch(
                "checkout",
                &PatchParams::default(),
                &Patch::Merge(&serde_json::json!({ "spec": spec })),
            )
            .await
            .expect("patch");
    }
}

/// Given ten injected pods with real sidecars, the operator driving them and lines flowing:
/// a change goes to exactly 40% then 80% of the pods, each step once its canaries ran it,
/// then to all; a change the canaries reject (a sink path under a file) is rolled back,
/// the canaries back on the stable hash; a change that sends everything to another sink
/// trips the quiet-sink gate and is rolled back the same way; and every line written
/// across all of it is delivered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_real_sidecars_when_changes_roll_out_then_steps_take_their_share_and_rollbacks_lose_no_line()
 {
    let env =
        TestEnv::shared().unwrap_or_else(|e| panic!("the test environment did not start: {e}"));
    let f = Fixture::with_zookeeper(&env.zk_connect(), true).await;
    let slog: ServiceLog = serde_yaml::from_str(FLEET).expect("the test ServiceLog");
    f.api
        .create(&PostParams::default(), &slog)
        .await
        .expect("create ServiceLog");
    let first = f
        .wait_status("the first config published", |s| s.config_hash.is_some())
        .await
        .config_hash
        .expect("configHash");
    let mut sidecars = Sidecars::start(&f, FLEET_PODS).await;
    let pods = sidecars.pods.clone();
    f.wait_status("every sidecar on the first config", |s| {
        s.pods
            .as_ref()
            .is_some_and(|p| p.applied as usize == FLEET_PODS)
    })
    .await;
    sidecars.write();

    // A: one more sink, through both steps to every pod.
    f.patch_spec(serde_json::json!({"sinks": [
        {"name": "out", "file": {"path": "/var/log/servicelog/out.log"}},
        {"name": "other", "file": {"path": "/var/log/servicelog/other.log"}},
        {"name": "spare", "file": {"path": "/var/log/servicelog/spare.log"}},
    ]}))
    .await;
    let a = f
        .wait_zk("candidate A", async || f.candidate().await)
        .await
        .hash;
    f.assert_step_share(&pods, &first, &a, 1, 40).await;
    f.assert_step_share(&pods, &first, &a, 2, 80).await;
    f.wait_status("A promoted and run by every pod", |s| {
        s.config_hash.as_deref() == Some(a.as_str())
            && s.pods
                .as_ref()
                .is_some_and(|p| p.applied as usize == FLEET_PODS)
    })
    .await;
    assert_eq!(f.running(&pods, &a).await.len(), FLEET_PODS);

    // B: a sink whose directory is another sink's file: the canaries reject it.
    f.patch_spec(serde_json::json!({"sinks": [
        {"name": "out", "file": {"path": "/var/log/servicelog/out.log"}},
        {"name": "other", "file": {"path": "/var/log/servicelog/other.log"}},
        {"name": "spare", "file": {"path": "/var/log/servicelog/spare.log"}},
        {"name": "broken", "file": {"path": "/var/log/servicelog/out.log/broken.log"}},
    ]}))
    .await;
    let status = f
        .wait_phase("B rolled back", RolloutPhase::RolledBack)
        .await;
    let rollout = status.rollout.expect("rollout");
    let b = rollout.candidate_hash.clone().expect("candidate B");
    assert!(
        rollout.reason.contains("rejected the candidate") && rollout.reason.contains("broken"),
        "the reason names the pod and its error: {}",
        rollout.reason
    );
    f.wait_zk("every pod back on A after B", async || {
        (f.running(&pods, &a).await.len() == FLEET_PODS).then_some(())
    })
    .await;
    assert!(f.running(&pods, &b).await.is_empty());
    assert!(f.candidate().await.is_none(), "B withdrawn");

    // C: everything to `other`: the canaries' `out` goes quiet.
    f.patch_spec(serde_json::json!({
        "sinks": [
            {"name": "out", "file": {"path": "/var/log/servicelog/out.log"}},
            {"name": "other", "file": {"path": "/var/log/servicelog/other.log"}},
            {"name": "spare", "file": {"path": "/var/log/servicelog/spare.log"}},
        ],
        "rules": [{"name": "all", "to": ["other"]}],
    }))
    .await;
    let status = f
        .wait_status("C rolled back by the gate", |s| {
            s.rollout.as_ref().is_some_and(|r| {
                r.phase == RolloutPhase::RolledBack && r.candidate_hash.as_ref() != Some(&b)
            })
        })
        .await;
    let rollout = status.rollout.expect("rollout");
    assert!(
        rollout.reason.contains("quietSinks") && rollout.reason.contains("\"out\""),
        "the reason names the gate and the sink: {}",
        rollout.reason
    );
    f.wait_event("RolloutRolledBack", "quietSinks").await;
    f.wait_zk("every pod back on A after C", async || {
        (f.running(&pods, &a).await.len() == FLEET_PODS).then_some(())
    })
    .await;

    // D: a preview — every pod counts per rule in shadow, none switches.
    let (written_before, previewed) = (
        sidecars.written.load(Ordering::SeqCst),
        std::time::Instant::now(),
    );
    f.patch_spec(serde_json::json!({
        "rules": [
            {"name": "errors", "when": {"level": {"atLeast": "error"}}, "to": ["other"]},
            {"name": "all", "to": ["out"]},
        ],
        "rollout": {"preview": true},
    }))
    .await;
    let status = f
        .wait_status("the preview counted on every pod", |s| {
            s.rollout.as_ref().is_some_and(|r| {
                r.phase == RolloutPhase::Paused
                    && r.preview.as_ref().is_some_and(|p| {
                        p.pods as usize == FLEET_PODS
                            && p.candidate.get("all").is_some_and(|n| *n > 0)
                    })
            })
        })
        .await;
    let rollout = status.rollout.expect("rollout");
    let counts = rollout.preview.expect("preview");
    assert_eq!(counts.candidate.get("errors"), Some(&0), "info lines only");
    assert!(
        counts.stable.get("all").is_some_and(|n| *n > 0),
        "{counts:?}"
    );
    assert!(
        counts
            .stable_per_second
            .get("all")
            .is_some_and(|r| *r > 0.0)
            && counts.candidate_per_second.get("errors") == Some(&0.0),
        "rates beside the counts: {counts:?}"
    );
    assert!(
        rollout
            .reason
            .contains("rules on 10 pods, stable → candidate:")
            && rollout.reason.contains("errors – → 0/s"),
        "the reason shows the rates: {}",
        rollout.reason
    );
    // The rate against the workload: every pod gets the writer's lines, all decided by
    // `all`. Over a few refreshes, so one record's first seconds do not decide it.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let rate = f
        .api
        .get("checkout")
        .await
        .expect("get")
        .status
        .and_then(|s| s.rollout?.preview?.stable_per_second.get("all").copied())
        .expect("a rate for rule all");
    let written = sidecars.written.load(Ordering::SeqCst) - written_before;
    let workload = (written * FLEET_PODS) as f64 / previewed.elapsed().as_secs_f64();
    assert!(
        rate > workload * 0.5 && rate < workload * 1.5,
        "rule all decided {rate}/s over the pods; the writer wrote {workload:.0}/s over them"
    );
    assert_eq!(
        f.running(&pods, &a).await.len(),
        FLEET_PODS,
        "a preview switches no pod"
    );

    tokio::time::sleep(Duration::from_secs(1)).await;
    let written = sidecars.stop_writing();
    assert!(written > 100, "lines flowed throughout: {written}");
    sidecars.assert_no_line_lost(written).await;
    let on_other: usize = (0..FLEET_PODS)
        .map(|i| sidecars.delivered(i)["other"].len())
        .sum();
    assert!(
        on_other > 0,
        "C's canaries routed to other while they ran it"
    );
}

const SWALLOW: &str = r#"
apiVersion: servicelog.io/v1alpha1
kind: ServiceLog
metadata: {name: checkout}
spec:
  selector: {matchLabels: {app: checkout}}
  sources:
    - name: app
      file: {paths: ["/var/log/app/*.log"], format: json}
  sinks:
    - name: out
      file: {path: /var/log/servicelog/out.log}
    - name: other
      file: {path: /var/log/servicelog/other.log}
  rules:
    - name: all
      to: [out]
  rollout:
    steps: [{percent: 50, pause: 1h}]
    rollbackOn: {quietRules: true, minEvents: 50}
"#;

/// Given ten injected pods with real sidecars and lines flowing, when a change puts a
/// `drop` that swallows everything above the rule that routed every line, then the
/// quiet-rule gate rolls it back and names the rule; when a change of the same kind comes
/// with `droppedRatio` as its gate, that gate rolls it back. Every pod delivers every line
/// once, but for the lines each change's canaries dropped while they ran it: one unbroken
/// run per change on each of its canaries, none on any other pod.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_real_sidecars_when_a_drop_swallows_everything_then_a_gate_rolls_it_back_and_only_its_canaries_miss_lines_while_they_ran_it()
 {
    let env =
        TestEnv::shared().unwrap_or_else(|e| panic!("the test environment did not start: {e}"));
    let f = Fixture::with_zookeeper(&env.zk_connect(), true).await;
    let slog: ServiceLog = serde_yaml::from_str(SWALLOW).expect("the test ServiceLog");
    f.api
        .create(&PostParams::default(), &slog)
        .await
        .expect("create ServiceLog");
    let stable = f
        .wait_status("the first config published", |s| s.config_hash.is_some())
        .await
        .config_hash
        .expect("configHash");
    let mut sidecars = Sidecars::start(&f, FLEET_PODS).await;
    let pods = sidecars.pods.clone();
    f.wait_status("every sidecar on the first config", |s| {
        s.pods
            .as_ref()
            .is_some_and(|p| p.applied as usize == FLEET_PODS)
    })
    .await;
    sidecars.write();
    // The stable config decides lines on every pod before a change comes.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let swallow = |rule: &str| {
        serde_json::json!([
            {"name": rule, "action": "drop"},
            {"name": "all", "to": ["out"]},
        ])
    };
    let mut canaries_of = Vec::new();
    for (change, gate, rollout) in [
        (
            "drop-everything",
            "quietRules",
            serde_json::json!({"steps": [{"percent": 50, "pause": "1h"}],
                               "rollbackOn": {"quietRules": true, "minEvents": 50}}),
        ),
        (
            "drop-everything-again",
            "droppedRatio 0.5",
            serde_json::json!({"steps": [{"percent": 50, "pause": "1h"}],
                               "rollbackOn": {"droppedRatio": 0.5, "quietRules": null}}),
        ),
    ] {
        let before = f
            .api
            .get("checkout")
            .await
            .expect("get")
            .status
            .and_then(|s| s.rollout)
            .and_then(|r| r.candidate_hash);
        f.patch_spec(serde_json::json!({"rules": swallow(change), "rollout": rollout}))
            .await;
        let status = f
            .wait_status(&format!("{change} rolled back by {gate}"), |s| {
                s.rollout.as_ref().is_some_and(|r| {
                    r.phase == RolloutPhase::RolledBack
                        && r.candidate_hash.is_some()
                        && r.candidate_hash != before
                })
            })
            .await;
        let rollout = status.rollout.expect("rollout");
        assert!(
            rollout
                .reason
                .contains(&format!("spec.rollout.rollbackOn.{gate}")),
            "{change}: the reason names the gate: {}",
            rollout.reason
        );
        if gate == "quietRules" {
            assert!(
                rollout.reason.contains("rule \"all\"") && rollout.reason.contains("none of"),
                "the reason names the rule that went quiet: {}",
                rollout.reason
            );
        }
        let hash = rollout.candidate_hash.expect("candidate");
        let canaries: BTreeSet<String> = pods
            .iter()
            .filter(|p| rollout::is_member(&hash, &f.ns, p, 50))
            .cloned()
            .collect();
        assert!(!canaries.is_empty(), "{change} had canaries");
        f.wait_zk(
            &format!("every pod back on stable after {change}"),
            async || (f.running(&pods, &stable).await.len() == FLEET_PODS).then_some(()),
        )
        .await;
        assert!(f.candidate().await.is_none(), "{change} withdrawn");
        canaries_of.push(canaries);
    }

    tokio::time::sleep(Duration::from_secs(1)).await;
    let written = sidecars.stop_writing();
    let last = written as u64 - 1;
    // Per pod the file source delivers in order: once the last line is out, every line
    // that will be is.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let behind: Vec<&String> = pods
            .iter()
            .enumerate()
            .filter(|(i, _)| !sidecars.delivered(*i)["out"].contains(&last))
            .map(|(_, p)| p)
            .collect();
        if behind.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {WAIT:?} waiting for line {last} on {behind:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (i, pod) in pods.iter().enumerate() {
        let delivered = sidecars.delivered(i);
        assert!(
            delivered["other"].is_empty(),
            "{pod}: nothing routes to other"
        );
        let out = &delivered["out"];
        let distinct: BTreeSet<u64> = out.iter().copied().collect();
        assert_eq!(distinct.len(), out.len(), "{pod} delivered a line twice");
        let missing: Vec<u64> = (0..written as u64)
            .filter(|s| !distinct.contains(s))
            .collect();
        let runs = missing.windows(2).filter(|w| w[1] != w[0] + 1).count()
            + usize::from(!missing.is_empty());
        let canary_of = canaries_of.iter().filter(|c| c.contains(pod)).count();
        assert!(
            runs <= canary_of,
            "{pod} (a canary of {canary_of} changes) lost lines outside the changes it ran: {} missing in {runs} runs: {:?}",
            missing.len(),
            &missing[..missing.len().min(40)]
        );
        if canary_of == 0 {
            assert!(
                missing.is_empty(),
                "{pod} was no canary and lost {missing:?}"
            );
        }
    }
}
