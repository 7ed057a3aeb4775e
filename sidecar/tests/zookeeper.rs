//! The sidecar driven by a real ZooKeeper: config znode → applied → acked in
//! `instances/<pod>`; bad configs rejected; ZooKeeper outages, session expiry, an instance
//! znode deleted behind the sidecar's back or left by the pod's previous session, and a
//! start without ZooKeeper.

mod common;

use std::{
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use common::*;
use servicelog_api::wire::InstanceState;

const POD: &str = "checkout-7d9f-1";

/// One json file source, sinks `a` and `b`, every event to `to`.
fn spec_to(logs: &Path, a: &Path, b: &Path, to: &str) -> String {
    format!(
        "sources:\n  - name: app\n    file: {{paths: [\"{logs}/*.log\"], format: json}}\n\
         sinks:\n  - name: a\n    file: {{path: \"{a}\"}}\n  - name: b\n    file: {{path: \"{b}\"}}\n\
         rules:\n  - name: all\n    to: [{to}]\n",
        logs = logs.display(),
        a = a.display(),
        b = b.display(),
    )
}

struct Paths {
    config: String,
    instance: String,
}

fn paths() -> Paths {
    let root = format!("/{}", servicelog_e2e::unique_name("t"));
    Paths {
        config: format!("{root}/namespaces/shop/checkout/config"),
        instance: format!("{root}/namespaces/shop/checkout/instances/{POD}"),
    }
}

fn zk_sidecar(s: &Scratch, connect: &str, config: &str, extra: &[&str]) -> Sidecar {
    Sidecar::start(
        s,
        extra,
        &[
            ("SERVICELOG_ZK_CONNECT", connect),
            ("SERVICELOG_CONFIG_ZNODE", config),
            ("POD_NAME", POD),
            ("POD_NAMESPACE", "shop"),
        ],
    )
}

async fn wait_lines(what: &str, path: &Path, n: usize, sidecar: &Sidecar) {
    let p: PathBuf = path.to_owned();
    eventually(
        what,
        Duration::from_secs(20),
        || {
            let p = p.clone();
            async move { count_lines(&p) >= n }
        },
        || {
            format!(
                "{} has {} lines\n{}",
                path.display(),
                count_lines(path),
                sidecar.log_tail()
            )
        },
    )
    .await;
}

async fn wait_instance(
    client: &zookeeper_client::Client,
    path: &str,
    what: &str,
    sidecar: &Sidecar,
    want: impl Fn(&servicelog_api::wire::Instance, i64) -> bool,
) -> (servicelog_api::wire::Instance, i64) {
    let mut last = None;
    let start = Instant::now();
    loop {
        if let Some((record, owner)) = instance(client, path).await {
            if want(&record, owner) {
                return (record, owner);
            }
            last = Some(record);
        }
        if start.elapsed() > Duration::from_secs(30) {
            panic!(
                "timed out after 30s waiting for the instance znode {path} to show {what}; last seen: {last:?}\n{}",
                sidecar.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Publishes `first` and starts a sidecar on it (with `extra` flags): the sidecar once its
/// record acks `first`, and the record's owner (the sidecar's session).
async fn acking(
    client: &zookeeper_client::Client,
    zk: &TestZk,
    s: &Scratch,
    p: &Paths,
    first: &servicelog_api::wire::Envelope,
    extra: &[&str],
) -> (Sidecar, i64) {
    publish(client, &p.config, first).await;
    let sidecar = zk_sidecar(s, &zk.connect_string(), &p.config, extra);
    let (_, owner) = wait_instance(client, &p.instance, "the first hash", &sidecar, |i, _| {
        i.hash == first.hash
    })
    .await;
    (sidecar, owner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_config_znode_then_the_sidecar_applies_and_acks_each_change_and_keeps_the_old_rules_for_a_bad_one()
 {
    let zk = TestZk::start("apply");
    let s = Scratch::new();
    let logs = s.logs();
    let (a, b) = (s.path("out/a.log"), s.path("out/b.log"));
    let p = paths();
    let client = zk_client(&zk.connect_string()).await;

    let first = envelope(1, &spec_to(&logs, &a, &b, "a"));
    publish(&client, &p.config, &first).await;
    let sidecar = zk_sidecar(&s, &zk.connect_string(), &p.config, &[]);
    let (record, _) = wait_instance(
        &client,
        &p.instance,
        "the first hash, ok",
        &sidecar,
        |i, _| i.hash == first.hash && i.state == InstanceState::Ok,
    )
    .await;
    assert_eq!(record.pod, POD);
    assert!(record.error.is_none());
    assert!(
        humantime::parse_rfc3339(&record.since).is_ok(),
        "since is not RFC 3339: {}",
        record.since
    );

    let app = logs.join("app.log");
    append(&app, &(0..10).map(|i| line(i, "info")).collect::<Vec<_>>());
    wait_lines("10 lines in a", &a, 10, &sidecar).await;

    // A new config: acked, and lines follow the new rule.
    let second = envelope(2, &spec_to(&logs, &a, &b, "b"));
    publish(&client, &p.config, &second).await;
    wait_instance(
        &client,
        &p.instance,
        "the second hash, ok",
        &sidecar,
        |i, _| i.hash == second.hash && i.state == InstanceState::Ok,
    )
    .await;
    append(&app, &(10..20).map(|i| line(i, "info")).collect::<Vec<_>>());
    wait_lines("10 lines in b", &b, 10, &sidecar).await;

    // A config that does not compile (a rule to an unknown sink): not applied.
    let bad = envelope(3, &spec_to(&logs, &a, &b, "nowhere"));
    publish(&client, &p.config, &bad).await;
    let (record, _) = wait_instance(&client, &p.instance, "state error", &sidecar, |i, _| {
        i.state == InstanceState::Error
    })
    .await;
    assert_eq!(
        record.hash, second.hash,
        "the hash in force is still the second config's"
    );
    let error = record.error.unwrap_or_default();
    assert!(
        error.contains("nowhere"),
        "the error must name the unknown sink: {error}"
    );
    append(&app, &(20..30).map(|i| line(i, "info")).collect::<Vec<_>>());
    wait_lines(
        "the old rules to route 10 more lines to b",
        &b,
        20,
        &sidecar,
    )
    .await;
    thread::sleep(Duration::from_millis(300));
    assert_exactly_once(&[&a, &b], 30);
    assert_eq!(count_lines(&a), 10);

    assert_eq!(sidecar.metric("servicelog_config_generation"), Some(2.0));
    assert_eq!(sidecar.metric("servicelog_zookeeper_connected"), Some(1.0));
    assert_eq!(
        sidecar.metric(r#"servicelog_config_applied_total{result="error"}"#),
        Some(1.0)
    );
    assert!(
        s.state().join("last-good-config.json").exists(),
        "the last good config must be kept in the state dir"
    );
    let lkg = servicelog_api::wire::Envelope::from_slice(
        &std::fs::read(s.state().join("last-good-config.json"))
            .expect("reading the last good config"),
    )
    .expect("the last good config is an envelope");
    assert_eq!(lkg.hash, second.hash);
}

/// A config znode as a script outside Rust writes it: Python's `json` with sorted keys,
/// compact separators and UTF-8 (RFC 8785 for specs like these), hashed by `hashlib`.
fn python_envelope(generation: i64, spec: &serde_json::Value) -> Vec<u8> {
    const SCRIPT: &str = r#"
import hashlib, json, sys
spec = json.loads(sys.argv[1])
canonical = json.dumps(spec, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
envelope = {
    "schema": 1,
    "generation": int(sys.argv[2]),
    "hash": "sha256:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest(),
    "spec": spec,
}
sys.stdout.write(json.dumps(envelope, separators=(",", ":"), ensure_ascii=False))
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", SCRIPT, &spec.to_string(), &generation.to_string()])
        .output()
        .expect("running python3 (the machine's Python writes the envelope)");
    assert!(
        out.status.success(),
        "python3 failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn declared_hash(envelope: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(envelope).expect("python wrote JSON");
    v["hash"].as_str().expect("a hash").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_envelopes_written_by_python_from_minimal_specs_then_they_are_applied_and_acked_and_an_unknown_field_is_refused_by_name()
 {
    let zk = TestZk::start("python");
    let s = Scratch::new();
    let logs = s.logs();
    let (a, b) = (s.path("out/a.log"), s.path("out/b.log"));
    let p = paths();
    let client = zk_client(&zk.connect_string()).await;

    // Minimal: no format, no encoding, no rules — every default left to the sidecar.
    let minimal = |to: &Path| {
        serde_json::json!({
            "sources": [{"name": "app", "file": {"paths": [format!("{}/*.log", logs.display())]}}],
            "sinks": [
                {"name": "a", "file": {"path": a.display().to_string()}},
                {"name": "b", "file": {"path": b.display().to_string()}},
            ],
            "defaultTo": [if to == a { "a" } else { "b" }],
            "rules": [{"name": "warnings", "when": {"level": {"atLeast": "warn"}, "message": {"regex": "é"}}, "to": ["b"]}],
        })
    };
    let first = python_envelope(1, &minimal(&a));
    publish_bytes(&client, &p.config, &first).await;
    let sidecar = zk_sidecar(&s, &zk.connect_string(), &p.config, &[]);
    let first_hash = declared_hash(&first);
    wait_instance(
        &client,
        &p.instance,
        "the hash python computed, ok",
        &sidecar,
        |i, _| i.hash == first_hash && i.state == InstanceState::Ok,
    )
    .await;
    let app = logs.join("app.log");
    append(&app, &(0..5).map(|i| line(i, "info")).collect::<Vec<_>>());
    wait_lines("5 lines in a", &a, 5, &sidecar).await;

    let second = python_envelope(2, &minimal(&b));
    let second_hash = declared_hash(&second);
    publish_bytes(&client, &p.config, &second).await;
    wait_instance(
        &client,
        &p.instance,
        "the second python hash, ok",
        &sidecar,
        |i, _| i.hash == second_hash && i.state == InstanceState::Ok,
    )
    .await;
    append(&app, &(5..8).map(|i| line(i, "info")).collect::<Vec<_>>());
    wait_lines("3 lines in b", &b, 3, &sidecar).await;

    // A field this sidecar does not know: refused by its path, the old rules kept.
    let mut unknown = minimal(&a);
    unknown["sinks"][0]["file"]["rotateAt"] = serde_json::json!("100Mi");
    let third = python_envelope(3, &unknown);
    publish_bytes(&client, &p.config, &third).await;
    let (record, _) = wait_instance(
        &client,
        &p.instance,
        "an error naming the unknown field",
        &sidecar,
        |i, _| i.state == InstanceState::Error,
    )
    .await;
    let error = record.error.unwrap_or_default();
    assert!(
        error.contains("spec.sinks[0].file.rotateAt") && error.contains("unknown field"),
        "the instance record should name the unknown field, got: {error}"
    );
    assert_eq!(record.hash, second_hash, "the last good config stays acked");
    append(&app, &(8..10).map(|i| line(i, "info")).collect::<Vec<_>>());
    wait_lines("2 more lines in b", &b, 5, &sidecar).await;
    assert_eq!(
        count_lines(&a),
        5,
        "a got lines after the unknown field was refused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_zookeeper_stops_under_load_then_routing_goes_on_and_a_config_change_after_its_restart_is_applied()
 {
    const N: u64 = 40_000;
    let mut zk = TestZk::start("outage");
    let s = Scratch::new();
    let logs = s.logs();
    let (a, b) = (s.path("out/a.log"), s.path("out/b.log"));
    let p = paths();
    let client = zk_client(&zk.connect_string()).await;
    let first = envelope(1, &spec_to(&logs, &a, &b, "a"));
    publish(&client, &p.config, &first).await;
    drop(client);
    let sidecar = zk_sidecar(&s, &zk.connect_string(), &p.config, &[]);
    {
        let client = zk_client(&zk.connect_string()).await;
        wait_instance(&client, &p.instance, "the first hash", &sidecar, |i, _| {
            i.hash == first.hash
        })
        .await;
    }

    let app = logs.join("app.log");
    let writer = thread::spawn(move || {
        // ~8 s of writing.
        for burst in 0..(N / 200) {
            append(
                &app,
                &(burst * 200..(burst + 1) * 200)
                    .map(|i| line(i, "info"))
                    .collect::<Vec<_>>(),
            );
            thread::sleep(Duration::from_millis(40));
        }
    });
    wait_lines("some lines before the outage", &a, 2_000, &sidecar).await;

    tokio::task::block_in_place(|| zk.zk.stop(0));
    let at_stop = count_lines(&a);
    eventually(
        "servicelog_zookeeper_connected to drop to 0",
        Duration::from_secs(20),
        || async { sidecar.metric("servicelog_zookeeper_connected") == Some(0.0) },
        || sidecar.log_tail(),
    )
    .await;
    wait_lines(
        "lines to keep flowing while ZooKeeper is down",
        &a,
        at_stop + 5_000,
        &sidecar,
    )
    .await;

    tokio::task::block_in_place(|| zk.zk.restart(0)).expect("restarting ZooKeeper");
    eventually(
        "servicelog_zookeeper_connected to be 1 again",
        Duration::from_secs(30),
        || async { sidecar.metric("servicelog_zookeeper_connected") == Some(1.0) },
        || sidecar.log_tail(),
    )
    .await;
    let client = zk_client(&zk.connect_string()).await;
    wait_instance(
        &client,
        &p.instance,
        "the instance znode after the restart",
        &sidecar,
        |i, _| i.hash == first.hash,
    )
    .await;
    let second = envelope(2, &spec_to(&logs, &a, &b, "b"));
    publish(&client, &p.config, &second).await;
    wait_instance(
        &client,
        &p.instance,
        "the second hash after the restart",
        &sidecar,
        |i, _| i.hash == second.hash && i.state == InstanceState::Ok,
    )
    .await;
    tokio::task::block_in_place(|| writer.join()).expect("the writer thread");
    eventually(
        "every line across a and b",
        Duration::from_secs(30),
        || async { count_lines(&a) + count_lines(&b) >= N as usize },
        || {
            format!(
                "a={} b={}\n{}",
                count_lines(&a),
                count_lines(&b),
                sidecar.log_tail()
            )
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_exactly_once(&[&a, &b], N);
    let (sa, sb) = (seqs(&a), seqs(&b));
    let split = sa.len() as u64;
    assert_eq!(sa, (0..split).collect::<Vec<_>>(), "a holds a prefix");
    assert_eq!(sb, (split..N).collect::<Vec<_>>(), "b holds the rest");
    assert!(
        !sb.is_empty(),
        "the config published after the restart never took effect"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_the_session_expires_then_the_instance_znode_and_the_watch_are_restored() {
    let zk = TestZk::start("expiry");
    let s = Scratch::new();
    let logs = s.logs();
    let (a, b) = (s.path("out/a.log"), s.path("out/b.log"));
    let p = paths();
    let client = zk_client(&zk.connect_string()).await;
    let first = envelope(1, &spec_to(&logs, &a, &b, "a"));
    let (sidecar, owner) = acking(
        &client,
        &zk,
        &s,
        &p,
        &first,
        &["--zk-session-timeout", "2s"],
    )
    .await;

    // Frozen past its session timeout, the sidecar's session is expired by the server.
    sidecar.pause();
    let gone_by = Instant::now() + Duration::from_secs(20);
    while instance(&client, &p.instance).await.is_some() {
        assert!(
            Instant::now() < gone_by,
            "ZooKeeper did not expire the frozen sidecar's session"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    sidecar.resume();
    let (_, new_owner) = wait_instance(
        &client,
        &p.instance,
        "a re-created instance znode",
        &sidecar,
        |i, _| i.hash == first.hash && i.state == InstanceState::Ok,
    )
    .await;
    assert_ne!(
        new_owner, owner,
        "the instance znode must belong to the new session"
    );

    // The watch works on the new session.
    let second = envelope(2, &spec_to(&logs, &a, &b, "b"));
    publish(&client, &p.config, &second).await;
    wait_instance(&client, &p.instance, "the second hash", &sidecar, |i, _| {
        i.hash == second.hash
    })
    .await;
    append(&logs.join("app.log"), &[line(0, "info")]);
    wait_lines("the line in b", &b, 1, &sidecar).await;
    assert_eq!(count_lines(&a), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_the_instance_znode_is_deleted_behind_its_back_then_the_sidecar_re_creates_it_and_acks_later_changes()
 {
    let zk = TestZk::start("deleted");
    let s = Scratch::new();
    let logs = s.logs();
    let (a, b) = (s.path("out/a.log"), s.path("out/b.log"));
    let p = paths();
    let client = zk_client(&zk.connect_string()).await;
    let first = envelope(1, &spec_to(&logs, &a, &b, "a"));
    let (sidecar, _) = acking(&client, &zk, &s, &p, &first, &[]).await;
    // Given a config change acked, so the watch on the instance znode has outlived one.
    let second = envelope(2, &spec_to(&logs, &a, &b, "b"));
    publish(&client, &p.config, &second).await;
    let (_, owner) = wait_instance(&client, &p.instance, "the second hash", &sidecar, |i, _| {
        i.hash == second.hash
    })
    .await;

    // When the instance znode is deleted.
    client
        .delete(&p.instance, None)
        .await
        .expect("deleting the instance znode");

    // Then the same session creates it again with the hash in force.
    wait_instance(
        &client,
        &p.instance,
        "the instance znode re-created by the same session",
        &sidecar,
        |i, o| i.hash == second.hash && i.state == InstanceState::Ok && o == owner,
    )
    .await;
    // And a later change is acked there.
    let third = envelope(3, &spec_to(&logs, &a, &b, "a"));
    publish(&client, &p.config, &third).await;
    wait_instance(&client, &p.instance, "the third hash", &sidecar, |i, _| {
        i.hash == third.hash && i.state == InstanceState::Ok
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_restart_before_the_old_session_expires_then_its_record_is_updated_and_made_again_when_zookeeper_removes_it()
 {
    let zk = TestZk::start("earlier");
    let s = Scratch::new();
    let logs = s.logs();
    let (a, b) = (s.path("out/a.log"), s.path("out/b.log"));
    let p = paths();
    let client = zk_client(&zk.connect_string()).await;
    let first = envelope(1, &spec_to(&logs, &a, &b, "a"));
    let (mut killed, old) = acking(
        &client,
        &zk,
        &s,
        &p,
        &first,
        &["--zk-session-timeout", "15s"],
    )
    .await;
    // Given a sidecar killed (its session stays until it times out) and started again.
    killed.kill();
    let sidecar = zk_sidecar(&s, &zk.connect_string(), &p.config, &[]);

    // When the config changes before the old session is gone, then the new sidecar acks in
    // the old session's record.
    let second = envelope(2, &spec_to(&logs, &a, &b, "b"));
    publish(&client, &p.config, &second).await;
    let (_, owner) = wait_instance(&client, &p.instance, "the second hash", &sidecar, |i, _| {
        i.hash == second.hash
    })
    .await;
    assert_eq!(
        owner, old,
        "acked before the old session expired (15 s), so in its record"
    );
    // And when ZooKeeper removes that record, the new session makes its own.
    wait_instance(
        &client,
        &p.instance,
        "a record of the new session",
        &sidecar,
        |i, o| o != old && i.hash == second.hash && i.state == InstanceState::Ok,
    )
    .await;
    let third = envelope(3, &spec_to(&logs, &a, &b, "a"));
    publish(&client, &p.config, &third).await;
    wait_instance(&client, &p.instance, "the third hash", &sidecar, |i, o| {
        o != old && i.hash == third.hash
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_zookeeper_unreachable_at_start_then_the_last_known_good_config_routes() {
    let s = Scratch::new();
    let logs = s.logs();
    let (a, b) = (s.path("out/a.log"), s.path("out/b.log"));
    let lkg = envelope(5, &spec_to(&logs, &a, &b, "b"));
    std::fs::create_dir_all(s.state()).expect("creating the state dir");
    std::fs::write(
        s.state().join("last-good-config.json"),
        lkg.to_bytes().expect("encoding"),
    )
    .expect("writing the last good config");
    // Nothing listens on this port.
    let port = servicelog_e2e::procs::free_port().expect("a free port");
    let started = Instant::now();
    let sidecar = zk_sidecar(
        &s,
        &format!("127.0.0.1:{port}"),
        "/servicelog/namespaces/shop/checkout/config",
        &["--zk-connect-timeout", "1s"],
    );
    append(
        &logs.join("app.log"),
        &(0..5).map(|i| line(i, "info")).collect::<Vec<_>>(),
    );
    wait_lines("the last-known-good rules to route to b", &b, 5, &sidecar).await;
    assert!(started.elapsed() < Duration::from_secs(15));
    assert_eq!(sidecar.http_get("/readyz").map(|r| r.0), Some(200));
    assert_eq!(sidecar.metric("servicelog_zookeeper_connected"), Some(0.0));
    assert_eq!(sidecar.metric("servicelog_config_generation"), Some(5.0));
    assert_exactly_once(&[&b], 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_sigterm_then_the_instance_znode_goes_away_with_the_session() {
    let zk = TestZk::start("term");
    let s = Scratch::new();
    let logs = s.logs();
    let (a, b) = (s.path("out/a.log"), s.path("out/b.log"));
    let p = paths();
    let client = zk_client(&zk.connect_string()).await;
    let first = envelope(1, &spec_to(&logs, &a, &b, "a"));
    let (mut sidecar, _) = acking(&client, &zk, &s, &p, &first, &[]).await;
    let (took, status) = tokio::task::block_in_place(|| sidecar.terminate(Duration::from_secs(12)));
    assert!(status.success(), "exit status {status}");
    assert!(took < Duration::from_secs(10), "shutdown took {took:?}");
    let gone_by = Instant::now() + Duration::from_secs(5);
    while instance(&client, &p.instance).await.is_some() {
        assert!(
            Instant::now() < gone_by,
            "the instance znode outlived the sidecar by 5 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A client authenticated as each of `identities`.
async fn zk_as(
    connect: &str,
    identities: &[&servicelog_api::zkauth::Credentials],
) -> zookeeper_client::Client {
    let mut connector =
        zookeeper_client::Client::connector().with_session_timeout(Duration::from_secs(30));
    for c in identities {
        connector = connector.with_auth("digest", &c.auth_bytes());
    }
    tokio::time::timeout(Duration::from_secs(10), connector.connect(connect))
        .await
        .unwrap_or_else(|_| panic!("timed out after 10s connecting to ZooKeeper at {connect}"))
        .expect("connect to ZooKeeper")
}

/// The tree as an operator with ACLs publishes it (`api::zkauth::acl`).
async fn publish_with_acls(
    operator: &zookeeper_client::Client,
    identity: &servicelog_api::zkauth::Credentials,
    config_path: &str,
    config: &servicelog_api::wire::Envelope,
) {
    use servicelog_api::zkauth::{Node, acl, perms};
    let to_acls = |node| -> Vec<zookeeper_client::Acl> {
        acl(identity, Some("shop"), node)
            .into_iter()
            .map(|(bits, scheme, id)| {
                let p = [
                    (perms::READ, zookeeper_client::Permission::READ),
                    (perms::WRITE, zookeeper_client::Permission::WRITE),
                    (perms::CREATE, zookeeper_client::Permission::CREATE),
                    (perms::DELETE, zookeeper_client::Permission::DELETE),
                    (perms::ADMIN, zookeeper_client::Permission::ADMIN),
                ]
                .into_iter()
                .filter(|(b, _)| bits & b != 0)
                .fold(zookeeper_client::Permission::NONE, |all, (_, p)| all | p);
                zookeeper_client::Acl::new(p, zookeeper_client::AuthId::new(scheme, &id))
            })
            .collect()
    };
    let (resource, _) = config_path.rsplit_once('/').expect("a config path");
    let directory = to_acls(Node::Directory);
    operator
        .mkdir(
            resource,
            &zookeeper_client::CreateMode::Persistent
                .with_acls(zookeeper_client::Acls::new(&directory)),
        )
        .await
        .expect("creating the resource's directories");
    let instances = to_acls(Node::Instances);
    operator
        .create(
            &format!("{resource}/instances"),
            b"",
            &zookeeper_client::CreateMode::Persistent
                .with_acls(zookeeper_client::Acls::new(&instances)),
        )
        .await
        .expect("creating instances/");
    let config_acl = to_acls(Node::Config);
    operator
        .create(
            config_path,
            &config.to_bytes().expect("encoding"),
            &zookeeper_client::CreateMode::Persistent
                .with_acls(zookeeper_client::Acls::new(&config_acl)),
        )
        .await
        .expect("creating the config znode");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_zookeeper_acls_then_the_sidecar_routes_and_acks_with_only_its_namespace_identity_read_when_it_appears()
 {
    use servicelog_api::zkauth::Credentials;
    let zk = TestZk::start("acl");
    let s = Scratch::new();
    let logs = s.logs();
    let (a, b) = (s.path("out/a.log"), s.path("out/b.log"));
    let p = paths();
    let operator = Credentials::digest("servicelog-operator", servicelog_e2e::unique_name("pw"));
    let tenant = operator.for_namespace("shop");
    let as_operator = zk_as(&zk.connect_string(), &[&operator]).await;
    let first = envelope(1, &spec_to(&logs, &a, &b, "a"));
    publish_with_acls(&as_operator, &operator, &p.config, &first).await;

    // The pod starts before the operator wrote the namespace's Secret: no identity yet.
    let auth_file = s.path("zk/auth");
    let sidecar = Sidecar::start(
        &s,
        &[],
        &[
            ("SERVICELOG_ZK_CONNECT", &zk.connect_string()),
            ("SERVICELOG_CONFIG_ZNODE", &p.config),
            ("POD_NAME", POD),
            ("POD_NAMESPACE", "shop"),
            ("SERVICELOG_ZK_AUTH_FILE", &auth_file.display().to_string()),
        ],
    );
    // The operator reads records with the namespace's identity (it derives it).
    let reader = zk_as(&zk.connect_string(), &[&operator, &tenant]).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        instance(&reader, &p.instance).await.is_none(),
        "a sidecar without the namespace's identity acked:\n{}",
        sidecar.log_tail()
    );
    assert!(
        sidecar.log_tail().contains("NoAuth") || sidecar.log_tail().contains("not mounted"),
        "the sidecar should say why it cannot read its config:\n{}",
        sidecar.log_tail()
    );

    // The Secret appears (kubelet writes the mounted file): picked up without a restart.
    std::fs::create_dir_all(auth_file.parent().expect("a parent")).expect("mkdir");
    std::fs::write(&auth_file, format!("{}\n", tenant.to_line())).expect("writing the identity");
    wait_instance(
        &reader,
        &p.instance,
        "the first hash, ok",
        &sidecar,
        |i, _| i.hash == first.hash && i.state == InstanceState::Ok,
    )
    .await;
    let app = logs.join("app.log");
    append(&app, &(0..10).map(|i| line(i, "info")).collect::<Vec<_>>());
    wait_lines("10 lines in a", &a, 10, &sidecar).await;

    // The record is the namespace's alone.
    let anonymous = zk_as(&zk.connect_string(), &[]).await;
    assert!(
        matches!(
            anonymous.get_data(&p.instance).await,
            Err(zookeeper_client::Error::NoAuth)
        ),
        "an anonymous client read the instance record"
    );
    let operator_only = zk_as(&zk.connect_string(), &[&operator]).await;
    assert!(
        matches!(
            operator_only.get_data(&p.instance).await,
            Err(zookeeper_client::Error::NoAuth)
        ),
        "the record should name the namespace's identity only"
    );

    // A change is applied and acked as before.
    let second = envelope(2, &spec_to(&logs, &a, &b, "b"));
    as_operator
        .set_data(&p.config, &second.to_bytes().expect("encoding"), None)
        .await
        .expect("the operator updates the config");
    wait_instance(
        &reader,
        &p.instance,
        "the second hash, ok",
        &sidecar,
        |i, _| i.hash == second.hash && i.state == InstanceState::Ok,
    )
    .await;
    append(&app, &(10..13).map(|i| line(i, "info")).collect::<Vec<_>>());
    wait_lines("3 lines in b", &b, 3, &sidecar).await;
}
