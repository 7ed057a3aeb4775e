//! Staged rollout, the sidecar's half, on a real ZooKeeper with real sidecar processes:
//! the `config` and `candidate` znodes are written by hand, as the operator will write
//! them, and the instance records and the sinks' files say what each pod runs.
//!
//! The fleet shares one spec, so its pods read the same application log and write the same
//! sink files (`encoding: json`); each line carries its pod (`_servicelog.pod`), which is
//! how every pod's lines are counted.

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    time::{Duration, Instant},
};

use common::*;
use servicelog_api::{
    rollout,
    wire::{Candidate, Envelope, Instance, InstanceState},
};
use zookeeper_client::Client;

const NAMESPACE: &str = "shop";

/// One json file source; sinks `a` and `b` (json lines: each carries its pod); every event
/// to `to`.
fn spec_to(logs: &Path, a: &Path, b: &Path, to: &str) -> String {
    format!(
        "sources:\n  - name: app\n    file: {{paths: [\"{logs}/*.log\"], format: json}}\n\
         sinks:\n  - name: a\n    file: {{path: \"{a}\", encoding: json}}\n  - name: b\n    file: {{path: \"{b}\", encoding: json}}\n\
         rules:\n  - name: all\n    to: [{to}]\n",
        logs = logs.display(),
        a = a.display(),
        b = b.display(),
    )
}

struct Paths {
    config: String,
    candidate: String,
    instances: String,
}

fn paths() -> Paths {
    let resource = format!(
        "/{}/namespaces/{NAMESPACE}/checkout",
        servicelog_e2e::unique_name("rollout")
    );
    Paths {
        config: format!("{resource}/config"),
        candidate: format!("{resource}/candidate"),
        instances: format!("{resource}/instances"),
    }
}

/// A pod of the fleet: its sidecar and the scratch dir holding its state dir.
struct Pod {
    name: String,
    sidecar: Sidecar,
    _state: Scratch,
}

fn start_pod(name: &str, connect: &str, config: &str) -> Pod {
    let state = Scratch::new();
    let sidecar = Sidecar::start(
        &state,
        &[],
        &[
            ("SERVICELOG_ZK_CONNECT", connect),
            ("SERVICELOG_CONFIG_ZNODE", config),
            ("POD_NAME", name),
            ("POD_NAMESPACE", NAMESPACE),
        ],
    );
    Pod {
        name: name.to_owned(),
        sidecar,
        _state: state,
    }
}

async fn records(client: &Client, instances: &str, pods: &[Pod]) -> BTreeMap<String, Instance> {
    let mut out = BTreeMap::new();
    for pod in pods {
        if let Some((record, _)) = instance(client, &format!("{instances}/{}", pod.name)).await {
            out.insert(pod.name.clone(), record);
        }
    }
    out
}

/// What a pod's instance record should say.
#[derive(Clone, Debug, PartialEq)]
struct Runs {
    hash: String,
    state: InstanceState,
    candidate: Option<String>,
}

impl Runs {
    fn stable(hash: &str) -> Self {
        Self {
            hash: hash.to_owned(),
            state: InstanceState::Ok,
            candidate: None,
        }
    }

    fn canary(hash: &str) -> Self {
        Self {
            hash: hash.to_owned(),
            state: InstanceState::Ok,
            candidate: Some(hash.to_owned()),
        }
    }

    fn of(record: &Instance) -> Self {
        Self {
            hash: record.hash.clone(),
            state: record.state,
            candidate: record.candidate.clone(),
        }
    }
}

/// Waits until every pod's instance record says what `want` says for it.
async fn wait_fleet(
    client: &Client,
    instances: &str,
    pods: &[Pod],
    what: &str,
    want: impl Fn(&str) -> Runs,
) {
    let start = Instant::now();
    loop {
        let now = records(client, instances, pods).await;
        let wrong: Vec<String> = pods
            .iter()
            .filter_map(|p| {
                let want = want(&p.name);
                let have = now.get(&p.name).map(Runs::of);
                (have.as_ref() != Some(&want))
                    .then(|| format!("{}: want {want:?}, have {have:?}", p.name))
            })
            .collect();
        if wrong.is_empty() {
            return;
        }
        if start.elapsed() > Duration::from_secs(60) {
            panic!(
                "timed out after 60s waiting for {what}; {} pods differ:\n{}\nfirst one's log:\n{}",
                wrong.len(),
                wrong.join("\n"),
                pods.iter()
                    .find(|p| wrong[0].starts_with(&format!("{}:", p.name)))
                    .map(|p| p.sidecar.log_tail())
                    .unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The seqs each pod wrote to `path`, by pod.
fn seqs_by_pod(path: &Path) -> BTreeMap<String, Vec<u64>> {
    let mut out: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for line in read_lines(path) {
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| {
            panic!(
                "{} holds a line that is not JSON ({e}): {line:?}",
                path.display()
            )
        });
        let pod = v["_servicelog"]["pod"]
            .as_str()
            .unwrap_or_else(|| panic!("{} holds a line without its pod: {line:?}", path.display()));
        let seq = v["seq"]
            .as_u64()
            .unwrap_or_else(|| panic!("{} holds a line without seq: {line:?}", path.display()));
        out.entry(pod.to_owned()).or_default().push(seq);
    }
    out
}

/// Waits until every pod wrote `n` lines across `a` and `b`.
async fn wait_lines(a: &Path, b: &Path, pods: &[Pod], n: usize) {
    let start = Instant::now();
    loop {
        let (in_a, in_b) = (seqs_by_pod(a), seqs_by_pod(b));
        let short: Vec<String> = pods
            .iter()
            .filter_map(|p| {
                let have =
                    in_a.get(&p.name).map_or(0, Vec::len) + in_b.get(&p.name).map_or(0, Vec::len);
                (have < n).then(|| format!("{}: {have}", p.name))
            })
            .collect();
        if short.is_empty() {
            return;
        }
        if start.elapsed() > Duration::from_secs(60) {
            panic!(
                "timed out after 60s waiting for every pod to write {n} lines across a and b; short: {}",
                short.join(", ")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn append_seqs(app: &Path, seqs: std::ops::Range<u64>) {
    append(app, &seqs.map(|i| line(i, "info")).collect::<Vec<_>>());
}

async fn write_candidate(
    client: &Client,
    path: &str,
    stable: &Envelope,
    percent: u32,
    step: u32,
    config: &Envelope,
) {
    let candidate =
        Candidate::new(&stable.hash, step, percent, false, config).expect("building the candidate");
    publish_bytes(
        client,
        path,
        &candidate.to_bytes().expect("encoding the candidate"),
    )
    .await;
}

/// The smallest percent whose step takes at least `want` of `pods`.
fn percent_taking(candidate: &str, pods: &[String], want: usize) -> u32 {
    (1..=100)
        .find(|p| {
            pods.iter()
                .filter(|pod| rollout::is_member(candidate, NAMESPACE, pod, *p))
                .count()
                >= want
        })
        .unwrap_or(100)
}

/// Given a fleet on the stable config, when a candidate is written for a share of the pods,
/// raised, then withdrawn, then exactly the pods the membership function names switch at
/// each step (and only those), every pod is back on the stable config at the end, and no
/// pod lost or repeated a line across the switches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_fleet_when_a_candidate_grows_and_is_withdrawn_then_exactly_its_members_switch_and_no_line_is_lost()
 {
    const N: usize = 20;
    let zk = TestZk::start("rollout-fleet");
    let s = Scratch::new();
    let logs = s.logs();
    let app = logs.join("app.log");
    let (a, b) = (s.path("out/a.log"), s.path("out/b.log"));
    let p = paths();
    let client = zk_client(&zk.connect_string()).await;

    let stable = envelope(1, &spec_to(&logs, &a, &b, "a"));
    let change = envelope(2, &spec_to(&logs, &a, &b, "b"));
    publish(&client, &p.config, &stable).await;
    let names: Vec<String> = (0..N).map(|i| format!("checkout-5f7c9d-{i:02}")).collect();
    let pods: Vec<Pod> = names
        .iter()
        .map(|n| start_pod(n, &zk.connect_string(), &p.config))
        .collect();
    wait_fleet(
        &client,
        &p.instances,
        &pods,
        "every pod on the stable config",
        |_| Runs::stable(&stable.hash),
    )
    .await;
    append_seqs(&app, 0..100);
    wait_lines(&a, &b, &pods, 100).await;

    // Step 1: about a quarter of the pods. Lines are written while the candidate lands.
    let first = percent_taking(&change.hash, &names, N / 4);
    let members_at = |percent| -> BTreeSet<String> {
        names
            .iter()
            .filter(|n| rollout::is_member(&change.hash, NAMESPACE, n, percent))
            .cloned()
            .collect()
    };
    let step1 = members_at(first);
    append_seqs(&app, 100..200);
    write_candidate(&client, &p.candidate, &stable, first, 1, &change).await;
    wait_fleet(
        &client,
        &p.instances,
        &pods,
        &format!(
            "the {} members of {first}% on the candidate, the rest on stable",
            step1.len()
        ),
        |n| {
            if step1.contains(n) {
                Runs::canary(&change.hash)
            } else {
                Runs::stable(&stable.hash)
            }
        },
    )
    .await;
    for pod in pods.iter().filter(|p| !step1.contains(&p.name)) {
        assert_eq!(
            pod.sidecar.metric("servicelog_config_generation"),
            Some(1.0),
            "{} is not a member of {first}% and must never have swapped in the candidate\n{}",
            pod.name,
            pod.sidecar.log_tail()
        );
    }
    append_seqs(&app, 200..300);
    wait_lines(&a, &b, &pods, 300).await;
    let (in_a, in_b) = (seqs_by_pod(&a), seqs_by_pod(&b));
    for name in &names {
        let (to, other) = if step1.contains(name) {
            (&in_b, &in_a)
        } else {
            (&in_a, &in_b)
        };
        assert!(
            to.get(name)
                .is_some_and(|s| s.iter().filter(|q| (200..300).contains(*q)).count() == 100)
                && !other
                    .get(name)
                    .is_some_and(|s| s.iter().any(|q| (200..300).contains(q))),
            "{name} ({}) must route lines 200..300 by the {} config only",
            if step1.contains(name) {
                "member"
            } else {
                "not a member"
            },
            if step1.contains(name) {
                "candidate"
            } else {
                "stable"
            },
        );
    }

    // Step 2: about three quarters; the pods of step 1 stay, more join.
    let second = percent_taking(&change.hash, &names, 3 * N / 4);
    let step2 = members_at(second);
    assert!(
        step1.is_subset(&step2) && step2.len() > step1.len(),
        "growing the percent adds pods: {step1:?} → {step2:?}"
    );
    write_candidate(&client, &p.candidate, &stable, second, 2, &change).await;
    append_seqs(&app, 300..400);
    wait_fleet(
        &client,
        &p.instances,
        &pods,
        &format!("the {} members of {second}% on the candidate", step2.len()),
        |n| {
            if step2.contains(n) {
                Runs::canary(&change.hash)
            } else {
                Runs::stable(&stable.hash)
            }
        },
    )
    .await;

    append_seqs(&app, 400..500);
    wait_lines(&a, &b, &pods, 500).await;

    // Withdrawn: every pod back on the stable config.
    client
        .delete(&p.candidate, None)
        .await
        .expect("deleting the candidate znode");
    wait_fleet(
        &client,
        &p.instances,
        &pods,
        "every pod back on the stable config",
        |_| Runs::stable(&stable.hash),
    )
    .await;
    append_seqs(&app, 500..600);
    wait_lines(&a, &b, &pods, 600).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let (in_a, in_b) = (seqs_by_pod(&a), seqs_by_pod(&b));
    for name in &names {
        let mut all: Vec<u64> = in_a
            .get(name)
            .into_iter()
            .chain(in_b.get(name))
            .flatten()
            .copied()
            .collect();
        all.sort_unstable();
        assert_eq!(
            all,
            (0..600).collect::<Vec<_>>(),
            "{name} must write every line 0..600 exactly once across a and b"
        );
        let in_b: Vec<u64> = in_b.get(name).cloned().unwrap_or_default();
        assert!(
            in_b.iter().all(|q| (100..500).contains(q)),
            "{name}: only lines written while a candidate was out may be in b: {in_b:?}"
        );
        let late = in_b.iter().filter(|q| (400..500).contains(*q)).count();
        assert_eq!(
            late,
            if step2.contains(name) { 100 } else { 0 },
            "{name} ({}): lines 400..500, written while step 2 was in force, go to b on its members only",
            if step2.contains(name) {
                "member"
            } else {
                "not a member"
            },
        );
    }
}

/// Given one pod the candidate selects, when the candidate does not compile, then the pod
/// keeps the stable config and says it rejected that candidate; a fixed candidate is run;
/// a sidecar restarted mid-rollout comes back on it; a candidate of another stable config
/// (left behind by a hand edit) is ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_canary_when_the_candidate_is_bad_then_it_stays_on_stable_and_says_why() {
    let zk = TestZk::start("rollout-reject");
    let s = Scratch::new();
    let logs = s.logs();
    let (a, b) = (s.path("out/a.log"), s.path("out/b.log"));
    let p = paths();
    let client = zk_client(&zk.connect_string()).await;
    let stable = envelope(1, &spec_to(&logs, &a, &b, "a"));
    publish(&client, &p.config, &stable).await;
    let mut pods = vec![start_pod("web-0", &zk.connect_string(), &p.config)];
    wait_fleet(&client, &p.instances, &pods, "the pod on stable", |_| {
        Runs::stable(&stable.hash)
    })
    .await;

    let bad = envelope(2, &spec_to(&logs, &a, &b, "nowhere"));
    write_candidate(&client, &p.candidate, &stable, 100, 1, &bad).await;
    let record_path = format!("{}/web-0", p.instances);
    let start = Instant::now();
    let record = loop {
        if let Some((r, _)) = instance(&client, &record_path).await
            && r.state == InstanceState::Error
        {
            break r;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "timed out waiting for the canary to reject the candidate\n{}",
            pods[0].sidecar.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        record.hash, stable.hash,
        "a rejected candidate leaves the stable config in force"
    );
    assert_eq!(
        record.candidate.as_deref(),
        Some(bad.hash.as_str()),
        "the record names the rejected candidate"
    );
    assert!(
        record
            .error
            .as_deref()
            .is_some_and(|e| e.contains("nowhere")),
        "the error names the unknown sink: {:?}",
        record.error
    );

    let good = envelope(3, &spec_to(&logs, &a, &b, "b"));
    write_candidate(&client, &p.candidate, &stable, 100, 1, &good).await;
    wait_fleet(
        &client,
        &p.instances,
        &pods,
        "the canary on the fixed candidate",
        |_| Runs::canary(&good.hash),
    )
    .await;

    // A restart mid-rollout: the same pod name, so the same group.
    let (_, status) = pods[0].sidecar.terminate(Duration::from_secs(20));
    assert!(
        status.success(),
        "the sidecar exits cleanly on SIGTERM: {status}"
    );
    pods.clear();
    pods.push(start_pod("web-0", &zk.connect_string(), &p.config));
    wait_fleet(
        &client,
        &p.instances,
        &pods,
        "the restarted canary back on the candidate",
        |_| Runs::canary(&good.hash),
    )
    .await;

    // The stable config edited by hand: the candidate was a change of the old one, so it
    // no longer applies.
    let edited = envelope(4, &spec_to(&logs, &a, &b, "a, b"));
    publish(&client, &p.config, &edited).await;
    wait_fleet(
        &client,
        &p.instances,
        &pods,
        "the pod on the edited stable config, the stale candidate ignored",
        |_| Runs::stable(&edited.hash),
    )
    .await;

    // A preview over the edited config: no pod switches.
    let candidate = Candidate::new(&edited.hash, 0, 100, true, &good).expect("a candidate");
    publish_bytes(
        &client,
        &p.candidate,
        &candidate.to_bytes().expect("encoding"),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    wait_fleet(
        &client,
        &p.instances,
        &pods,
        "the pod still on stable under a preview",
        |_| Runs::stable(&edited.hash),
    )
    .await;

    // A candidate znode that cannot be read: the pod stays on stable and says why.
    publish_bytes(&client, &p.candidate, b"{\"schema\":1}").await;
    let start = Instant::now();
    let record = loop {
        if let Some((r, _)) = instance(&client, &record_path).await
            && r.state == InstanceState::Error
        {
            break r;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "timed out waiting for the pod to report the unreadable candidate\n{}",
            pods[0].sidecar.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(record.hash, edited.hash, "the stable config stays in force");
    assert_eq!(record.candidate, None, "membership is unknown");
    assert!(
        record
            .error
            .as_deref()
            .is_some_and(|e| e.contains("candidate znode") && e.contains("missing field")),
        "the error names the candidate znode: {:?}",
        record.error
    );
}

/// Given a ServiceLog file with `spec.rollout`, when the sidecar runs it with
/// `--config-file`, then it routes by the spec as written: there is no fleet to stage.
#[test]
fn given_a_config_file_with_a_rollout_then_the_sidecar_runs_its_spec() {
    let s = Scratch::new();
    let logs = s.logs();
    let (a, b) = (s.path("out/a.log"), s.path("out/b.log"));
    let config = s.path("servicelog.yaml");
    let spec = format!(
        "{}rollout:\n  steps: [{{percent: 10, pause: 1m}}, {{percent: 50}}]\n",
        spec_to(&logs, &a, &b, "b")
    );
    write_config(&config, &manifest(&spec));
    let sidecar = Sidecar::start(&s, &["--config-file", config.to_str().unwrap()], &[]);
    append(
        &logs.join("app.log"),
        &(0..20).map(|i| line(i, "info")).collect::<Vec<_>>(),
    );
    wait_until(
        "20 lines in b",
        Duration::from_secs(20),
        || count_lines(&b) >= 20,
        || sidecar.log_tail(),
    );
    assert_eq!(count_lines(&a), 0);
}

/// Given one pod on the stable config that delivered 50 lines to sink `a`, when it becomes
/// a canary of a candidate routing everything to `b` and 30 more lines come, then its
/// record's health says exactly that: 30 events, none dropped, 30 delivered by `b`, none
/// by `a`, and `a` delivered 50 under the config before; a stable pod's record has none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_canary_when_lines_flow_then_its_record_counts_them_since_the_candidate() {
    let zk = TestZk::start("rollout-health");
    let s = Scratch::new();
    let logs = s.logs();
    let app = logs.join("app.log");
    let (a, b) = (s.path("out/a.log"), s.path("out/b.log"));
    let p = paths();
    let client = zk_client(&zk.connect_string()).await;
    let stable = envelope(1, &spec_to(&logs, &a, &b, "a"));
    publish(&client, &p.config, &stable).await;
    let pods = vec![start_pod("web-0", &zk.connect_string(), &p.config)];
    wait_fleet(&client, &p.instances, &pods, "the pod on stable", |_| {
        Runs::stable(&stable.hash)
    })
    .await;
    append_seqs(&app, 0..50);
    wait_line_count(&a, 50, &pods[0]).await;
    let record_path = format!("{}/web-0", p.instances);
    let (record, _) = instance(&client, &record_path).await.expect("a record");
    assert_eq!(record.health, None, "a stable pod's record has no health");

    let to_b = envelope(2, &spec_to(&logs, &a, &b, "b"));
    write_candidate(&client, &p.candidate, &stable, 100, 1, &to_b).await;
    wait_fleet(
        &client,
        &p.instances,
        &pods,
        "the canary on the candidate",
        |_| Runs::canary(&to_b.hash),
    )
    .await;
    append_seqs(&app, 50..80);
    wait_line_count(&b, 30, &pods[0]).await;
    let start = Instant::now();
    let health = loop {
        if let Some((r, _)) = instance(&client, &record_path).await
            && let Some(h) = r.health.filter(|h| h.events == 30)
        {
            break h;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out waiting for the record to count 30 events (refreshed every 5 s)\n{}",
            pods[0].sidecar.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(health.dropped, 0);
    let sink = |name: &str| health.sinks.get(name).copied().unwrap_or_default();
    assert_eq!((sink("b").delivered, sink("b").rejected), (30, 0));
    assert_eq!(sink("a").delivered, 0, "a gets nothing under the candidate");
    assert_eq!(
        health.sinks_before.get("a"),
        Some(&50),
        "a delivered 50 under the config before"
    );
    let counts = |pairs: &[(&str, u64)]| -> BTreeMap<String, u64> {
        pairs.iter().map(|(r, n)| ((*r).to_owned(), *n)).collect()
    };
    assert_eq!(
        health.rules,
        counts(&[("all", 30), ("(default)", 0)]),
        "per rule since the candidate"
    );
    assert_eq!(
        health.rules_before,
        counts(&[("all", 50), ("(default)", 0)]),
        "per rule under the config before"
    );

    // A candidate whose new first rule swallows everything: `all` decides nothing now.
    let swallowing = spec_to(&logs, &a, &b, "b").replace(
        "rules:\n",
        "rules:\n  - name: drop-everything\n    action: drop\n",
    );
    assert!(swallowing.contains("drop-everything"), "{swallowing}");
    let swallowing = envelope(3, &swallowing);
    write_candidate(&client, &p.candidate, &stable, 100, 1, &swallowing).await;
    wait_fleet(
        &client,
        &p.instances,
        &pods,
        "the canary on the swallowing candidate",
        |_| Runs::canary(&swallowing.hash),
    )
    .await;
    append_seqs(&app, 80..100);
    let start = Instant::now();
    let health = loop {
        if let Some((r, _)) = instance(&client, &record_path).await
            && r.hash == swallowing.hash
            && let Some(h) = r.health.filter(|h| h.events == 20)
        {
            break h;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out waiting for the record to count 20 events under the swallowing candidate\n{}",
            pods[0].sidecar.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(health.dropped, 20);
    assert_eq!(
        health.rules,
        counts(&[("drop-everything", 20), ("all", 0), ("(default)", 0)])
    );
    assert_eq!(
        health.rules_before,
        counts(&[("all", 30), ("(default)", 0)]),
        "the config before is the first candidate"
    );
}

/// Waits until `path` holds at least `n` lines.
async fn wait_line_count(path: &Path, n: usize, pod: &Pod) {
    let start = Instant::now();
    loop {
        let lines = std::fs::read_to_string(path)
            .map(|t| t.lines().count())
            .unwrap_or(0);
        if lines >= n {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out waiting for {n} lines in {} (found {lines})\n{}",
            path.display(),
            pod.sidecar.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Given a pod on the stable config (rule `all` to `a`), when a preview candidate (rule
/// `errors` to `b`, nothing else routed) is published and 40 info lines come, then the pod
/// keeps running the stable config, `b` gets nothing, and its record counts per rule what
/// each config decided: stable `all` 40, candidate `(default)` 40 and `errors` 0; when the
/// preview is withdrawn the counts go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_preview_when_lines_flow_then_the_record_counts_both_configs_per_rule_and_nothing_is_written()
 {
    let zk = TestZk::start("rollout-preview");
    let s = Scratch::new();
    let logs = s.logs();
    let app = logs.join("app.log");
    let (a, b) = (s.path("out/a.log"), s.path("out/b.log"));
    let p = paths();
    let client = zk_client(&zk.connect_string()).await;
    let stable = envelope(1, &spec_to(&logs, &a, &b, "a"));
    publish(&client, &p.config, &stable).await;
    let pods = vec![start_pod("web-0", &zk.connect_string(), &p.config)];
    wait_fleet(&client, &p.instances, &pods, "the pod on stable", |_| {
        Runs::stable(&stable.hash)
    })
    .await;

    let errors_only = spec_to(&logs, &a, &b, "b").replace(
        "  - name: all\n    to: [b]\n",
        "  - name: errors\n    when: {level: {atLeast: error}}\n    to: [b]\n",
    );
    assert!(errors_only.contains("name: errors"), "{errors_only}");
    let preview = envelope(2, &errors_only);
    let candidate = Candidate::new(&stable.hash, 1, 10, true, &preview).expect("a candidate");
    let started = Instant::now();
    publish_bytes(&client, &p.candidate, &candidate.to_bytes().expect("bytes")).await;
    let record_path = format!("{}/web-0", p.instances);
    // The shadow starts when the candidate is read: wait for the record to say so.
    let start = Instant::now();
    loop {
        if let Some((r, _)) = instance(&client, &record_path).await
            && r.health.as_ref().is_some_and(|h| h.preview.is_some())
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out waiting for the preview in the record\n{}",
            pods[0].sidecar.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    append_seqs(&app, 0..40);
    wait_line_count(&a, 40, &pods[0]).await;
    let start = Instant::now();
    let (record, counts) = loop {
        if let Some((r, _)) = instance(&client, &record_path).await
            && let Some(p) = r.health.as_ref().and_then(|h| h.preview.clone())
            && p.stable.get("all") == Some(&40)
        {
            break (r, p);
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out waiting for the record to count 40 events (refreshed every 5 s)\n{}",
            pods[0].sidecar.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(record.hash, stable.hash, "a preview switches no pod");
    assert_eq!(record.candidate, None);
    assert_eq!(counts.hash, preview.hash);
    assert_eq!(counts.stable.get("(default)"), Some(&0));
    assert_eq!(counts.candidate.get("errors"), Some(&0));
    assert_eq!(counts.candidate.get("(default)"), Some(&40));
    assert!(
        counts.elapsed_ms > 0 && u128::from(counts.elapsed_ms) < started.elapsed().as_millis(),
        "the shadow counted for {} ms, started within the {} ms since the candidate was written",
        counts.elapsed_ms,
        started.elapsed().as_millis()
    );
    assert_eq!(
        std::fs::read_to_string(&b).unwrap_or_default(),
        "",
        "the shadow writes nowhere"
    );

    client
        .delete(&p.candidate, None)
        .await
        .expect("withdrawing the preview");
    let start = Instant::now();
    while instance(&client, &record_path)
        .await
        .is_some_and(|(r, _)| r.health.is_some())
    {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out waiting for the preview's counts to go"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
