//! `otlp` sinks with the real sidecar binary (`--config-file`) against a real
//! OpenTelemetry Collector (`servicelog_e2e::otelcol`: built from its Go modules, the otlp
//! receiver writing through the file exporter), comparing what the collector wrote with
//! what was logged; and against the recording receiver for the status codes a collector
//! is hard to make answer.

mod common;

use std::{
    collections::BTreeMap,
    path::Path,
    process::Child,
    thread,
    time::{Duration, Instant},
};

use common::*;
use serde_json::{Value, json};
use servicelog_e2e::{
    otelcol::{Collector, Record},
    procs::EnvDir,
};

/// A json source `app` and a text source `legacy`, routed to the sinks in `sinks_yaml` (a
/// YAML list, indented 2).
fn spec(logs: &Path, sinks_yaml: &str, to: &str) -> String {
    format!(
        "sources:\n  - name: app\n    file: {{paths: [\"{logs}/app*.log\"], format: json}}\n  \
         - name: legacy\n    file: {{paths: [\"{logs}/legacy*.log\"], format: text}}\n\
         sinks:\n{sinks_yaml}defaultTo: [{to}]\n",
        logs = logs.display(),
    )
}

fn start(s: &Scratch, spec_yaml: &str) -> Sidecar {
    start_with(s, spec_yaml, &[])
}

fn start_with(s: &Scratch, spec_yaml: &str, envs: &[(&str, &str)]) -> Sidecar {
    let config = s.path("servicelog.yaml");
    write_config(&config, &manifest(spec_yaml));
    Sidecar::start(
        s,
        &[
            "--config-file",
            config.to_str().expect("a UTF-8 path"),
            "--pod-name",
            "checkout-1",
            "--pod-namespace",
            "shop",
        ],
        envs,
    )
}

/// A collector of the test's own, with a watchdog that stops it should the test process
/// die without dropping it.
struct Otel {
    collector: Collector,
    watchdog: Child,
}

impl std::ops::Deref for Otel {
    type Target = Collector;
    fn deref(&self) -> &Collector {
        &self.collector
    }
}

impl std::ops::DerefMut for Otel {
    fn deref_mut(&mut self) -> &mut Collector {
        &mut self.collector
    }
}

impl Drop for Otel {
    fn drop(&mut self) {
        self.collector.stop();
        let _ = self.watchdog.kill();
        let _ = self.watchdog.wait();
    }
}

fn collector(s: &Scratch) -> Otel {
    let env = EnvDir::create(s.path("otelcol")).expect("the collector's directory");
    let watchdog = env.spawn_watchdog().expect("starting the watchdog");
    let collector =
        Collector::start(&env, "otelcol").expect("starting the OpenTelemetry Collector");
    Otel {
        collector,
        watchdog,
    }
}

fn otlp_sink(endpoint: &str, extra: &str) -> String {
    format!(
        "  - name: otel\n    otlp:\n      endpoint: \"{endpoint}\"\n      \
         batch: {{timeout: 200ms}}\n{extra}"
    )
}

/// How many records carry each `seq` attribute.
fn seq_counts(records: &[Record]) -> BTreeMap<i64, usize> {
    let mut counts = BTreeMap::new();
    for r in records {
        if let Some(seq) = r.attributes.get("seq").and_then(Value::as_i64) {
            *counts.entry(seq).or_insert(0) += 1;
        }
    }
    counts
}

fn context(sidecar: &Sidecar, otel: &Collector) -> impl Fn() -> String {
    let sidecar_log = sidecar.log_tail();
    let otel_log = otel.log_tail(20);
    move || format!("--- sidecar ---\n{sidecar_log}\n--- collector ---\n{otel_log}")
}

const LEVELS: [(&str, i64); 6] = [
    ("trace", 1),
    ("debug", 5),
    ("INFO", 9),
    ("warning", 13),
    ("error", 17),
    ("fatal", 21),
];

#[test]
fn given_json_and_text_events_when_routed_to_an_otlp_sink_then_the_collector_writes_each_as_its_log_record()
 {
    let s = Scratch::new();
    let logs = s.logs();
    let otel = collector(&s);
    let sinks = otlp_sink(
        &otel.endpoint(),
        "      resource: {attributes: {service.name: checkout, deployment.environment: test}}\n",
    );
    let sidecar = start(&s, &spec(&logs, &sinks, "otel"));
    let json_lines: Vec<String> = (0..300i64)
        .map(|seq| {
            let (level, _) = LEVELS[seq as usize % LEVELS.len()];
            json!({
                "time": format!("2026-12-07T14:00:{:02}.000000123+01:00", seq % 60),
                "level": level,
                "msg": format!("request {seq} served"),
                "seq": seq,
                "latency_ms": seq as f64 + 0.5,
                "cached": seq % 2 == 0,
                "user": {"id": seq * 10, "roles": ["buyer", "admin"]},
            })
            .to_string()
        })
        .collect();
    let text_lines: Vec<String> = (0..50)
        .map(|i| format!("legacy line {i} \"quoted\""))
        .collect();
    append(&logs.join("app.log"), &json_lines);
    append(&logs.join("legacy.log"), &text_lines);
    wait_until(
        "350 records in the collector's file",
        Duration::from_secs(30),
        || otel.records().len() >= 350,
        context(&sidecar, &otel),
    );
    thread::sleep(Duration::from_millis(500));
    let records = otel.records();
    assert_eq!(records.len(), 350, "each event once");

    let counts = seq_counts(&records);
    assert!(
        (0..300).all(|seq| counts.get(&seq) == Some(&1)),
        "every json event exactly once: {counts:?}"
    );
    for r in &records {
        assert_eq!(r.scope, "servicelog");
        assert_eq!(
            r.resource,
            BTreeMap::from([
                ("k8s.namespace.name".to_owned(), json!("shop")),
                ("k8s.pod.name".to_owned(), json!("checkout-1")),
                ("service.name".to_owned(), json!("checkout")),
                ("deployment.environment".to_owned(), json!("test")),
            ]),
            "resource of {r:?}"
        );
        assert!(r.observed_time_unix_nano > 1_700_000_000_000_000_000);
        let Some(seq) = r.attributes.get("seq").and_then(Value::as_i64) else {
            continue;
        };
        let (level, number) = LEVELS[seq as usize % LEVELS.len()];
        assert_eq!(
            (r.severity_text.as_str(), r.severity_number),
            (level, number)
        );
        assert_eq!(r.body, json!(format!("request {seq} served")));
        // 14:00:ss+01:00 is 13:00:ss UTC.
        assert_eq!(
            r.time_unix_nano,
            (1_796_648_400 + (seq as u64 % 60)) * 1_000_000_000 + 123
        );
        assert_eq!(
            r.attributes,
            BTreeMap::from([
                ("seq".to_owned(), json!(seq)),
                ("latency_ms".to_owned(), json!(seq as f64 + 0.5)),
                ("cached".to_owned(), json!(seq % 2 == 0)),
                (
                    "user".to_owned(),
                    json!({"id": seq * 10, "roles": ["buyer", "admin"]})
                ),
                ("servicelog.source".to_owned(), json!("app")),
            ]),
            "attributes of seq {seq}"
        );
    }
    let mut texts: Vec<&Record> = records
        .iter()
        .filter(|r| r.attributes.get("servicelog.source") == Some(&json!("legacy")))
        .collect();
    texts.sort_by_key(|r| r.body.as_str().map(str::to_owned));
    let mut want = text_lines.clone();
    want.sort();
    assert_eq!(
        texts.iter().map(|r| r.body.clone()).collect::<Vec<_>>(),
        want.iter().map(|l| json!(l)).collect::<Vec<_>>(),
        "each text line is a record's body"
    );
    for r in texts {
        assert_eq!((r.severity_number, r.severity_text.as_str()), (0, ""));
        assert_eq!(r.time_unix_nano, 0, "a text line has no time of its own");
        assert_eq!(r.attributes.len(), 1, "only the source: {:?}", r.attributes);
    }
    assert_eq!(
        sidecar.metric(r#"servicelog_events_out_total{sink="otel"}"#),
        Some(350.0)
    );
}

#[test]
fn given_gzip_when_events_are_sent_then_the_collector_decodes_every_record() {
    let s = Scratch::new();
    let logs = s.logs();
    let otel = collector(&s);
    let sinks = otlp_sink(&otel.endpoint(), "      compression: gzip\n");
    let sidecar = start(&s, &spec(&logs, &sinks, "otel"));
    append(
        &logs.join("app.log"),
        &(0..2000).map(|i| line(i, "info")).collect::<Vec<_>>(),
    );
    wait_until(
        "2000 records in the collector's file",
        Duration::from_secs(30),
        || otel.records().len() >= 2000,
        context(&sidecar, &otel),
    );
    let counts = seq_counts(&otel.records());
    assert!(
        (0..2000).all(|seq| counts.get(&seq) == Some(&1)),
        "every event exactly once"
    );
}

#[test]
fn given_a_collector_stopped_under_load_when_it_comes_back_then_no_event_is_lost() {
    let s = Scratch::new();
    let logs = s.logs();
    let mut otel = collector(&s);
    let sinks = otlp_sink(&otel.endpoint(), "");
    let sidecar = start(&s, &spec(&logs, &sinks, "otel"));
    let n = 6000u64;
    let per_write = 200u64;
    let app = logs.join("app.log");
    let mut seq = 0;
    let write_some = |seq: &mut u64| {
        append(
            &app,
            &(*seq..*seq + per_write)
                .map(|i| line(i, "info"))
                .collect::<Vec<_>>(),
        );
        *seq += per_write;
        thread::sleep(Duration::from_millis(50));
    };
    while seq < n / 3 {
        write_some(&mut seq);
    }
    otel.stop();
    let down = Instant::now();
    while seq < 2 * n / 3 {
        write_some(&mut seq);
    }
    thread::sleep(Duration::from_secs(3).saturating_sub(down.elapsed()));
    let retries_while_down = sidecar
        .metric(r#"servicelog_sink_retries_total{sink="otel"}"#)
        .unwrap_or(0.0);
    assert!(
        retries_while_down >= 1.0,
        "the sink retries while the collector is down\n{}",
        sidecar.log_tail()
    );
    otel.restart().expect("restarting the collector");
    while seq < n {
        write_some(&mut seq);
    }
    wait_until(
        "every event in the collector's file after its restart",
        Duration::from_secs(60),
        || seq_counts(&otel.records()).len() as u64 == n,
        context(&sidecar, &otel),
    );
    let counts = seq_counts(&otel.records());
    let missing: Vec<u64> = (0..n)
        .filter(|s| !counts.contains_key(&(*s as i64)))
        .collect();
    assert!(missing.is_empty(), "lost: {missing:?}");
    let repeated = counts.values().filter(|c| **c > 1).count();
    eprintln!(
        "collector down {:?}: {repeated} events repeated",
        down.elapsed()
    );
}

#[test]
fn given_an_endpoint_answering_400_then_the_batch_is_a_clear_rejection_and_later_events_go_through()
{
    let s = Scratch::new();
    let logs = s.logs();
    let rx = Receiver::start();
    rx.with(|st| st.fail_with = Some(400));
    let creds = s.path("credentials");
    std::fs::create_dir_all(creds.join("otel")).expect("mkdir");
    std::fs::write(creds.join("otel/token"), "tok-otlp\n").expect("write");
    let sinks = otlp_sink(
        &rx.url(""),
        "      compression: gzip\n      headers: {X-Scope-OrgID: shop}\n    \
         credentialsSecretRef: {name: otel-token}\n",
    );
    let sidecar = start_with(
        &s,
        &spec(&logs, &sinks, "otel"),
        &[("SERVICELOG_CREDENTIALS_DIR", creds.to_str().expect("UTF-8"))],
    );
    let app = logs.join("app.log");
    append(&app, &(0..10).map(|i| line(i, "info")).collect::<Vec<_>>());
    let rejected = r#"servicelog_sink_dropped_total{sink="otel",reason="rejected"}"#;
    wait_until(
        "the 10 refused events to be counted as rejected",
        Duration::from_secs(20),
        || sidecar.metric(rejected) == Some(10.0),
        || sidecar.log_tail(),
    );
    let log = std::fs::read_to_string(&sidecar.log).expect("the sidecar's log");
    assert!(
        log.contains("collector refused the batch for good") && log.contains("status 400"),
        "the refusal is logged with its status:\n{}",
        sidecar.log_tail()
    );
    let refused = rx.requests();
    assert_eq!(refused.len(), 1, "a 400 is not retried: {refused:?}");
    let r = &refused[0];
    assert_eq!(r.path, "/v1/logs");
    assert_eq!(r.headers["content-type"], "application/x-protobuf");
    assert_eq!(r.headers["content-encoding"], "gzip");
    assert_eq!(
        r.headers["authorization"], "Bearer tok-otlp",
        "from the mounted Secret"
    );
    assert_eq!(r.headers["x-scope-orgid"], "shop");

    // A 503 with Retry-After is retried, and the events go through once it clears.
    rx.with(|st| {
        st.fail_with = Some(503);
        st.retry_after = Some(1);
    });
    append(&app, &(10..20).map(|i| line(i, "info")).collect::<Vec<_>>());
    wait_until(
        "a retried 503",
        Duration::from_secs(20),
        || rx.requests().iter().filter(|r| r.status == 503).count() >= 2,
        || sidecar.log_tail(),
    );
    rx.with(|st| st.fail_with = None);
    wait_until(
        "the 10 later events delivered",
        Duration::from_secs(20),
        || sidecar.metric(r#"servicelog_events_out_total{sink="otel"}"#) == Some(10.0),
        || sidecar.log_tail(),
    );
    assert_eq!(
        sidecar.metric(rejected),
        Some(10.0),
        "the 503 batch was not dropped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_an_endpoint_answering_400_then_the_instance_record_says_so_until_a_batch_goes_through()
 {
    let zk = TestZk::start("otlp-400");
    let client = zk_client(&zk.connect_string()).await;
    let s = Scratch::new();
    let logs = s.logs();
    let rx = Receiver::start();
    rx.with(|st| st.fail_with = Some(400));
    let root = format!("/{}", servicelog_e2e::unique_name("t"));
    let config = format!("{root}/namespaces/shop/checkout/config");
    let instance_path = format!("{root}/namespaces/shop/checkout/instances/checkout-1");
    let sinks = otlp_sink(&rx.url(""), "");
    publish(&client, &config, &envelope(1, &spec(&logs, &sinks, "otel"))).await;
    let sidecar = Sidecar::start(
        &s,
        &[],
        &[
            ("SERVICELOG_ZK_CONNECT", &zk.connect_string()),
            ("SERVICELOG_CONFIG_ZNODE", &config),
            ("POD_NAME", "checkout-1"),
            ("POD_NAMESPACE", "shop"),
        ],
    );
    let app = logs.join("app.log");
    append(&app, &(0..5).map(|i| line(i, "info")).collect::<Vec<_>>());
    let error = |record: Option<(servicelog_api::wire::Instance, i64)>| {
        record.and_then(|(r, _)| r.sink_errors.get("otel").cloned())
    };
    eventually(
        "the instance record to name the refusal",
        Duration::from_secs(30),
        || async { error(instance(&client, &instance_path).await).is_some() },
        || sidecar.log_tail(),
    )
    .await;
    let message = error(instance(&client, &instance_path).await).unwrap_or_default();
    println!("instance record: sinkErrors.otel = {message}");
    assert!(
        message.contains("refused a batch of 5 events for good")
            && message.contains("status 400")
            && message.contains("/v1/logs"),
        "the error says what was refused, by whom and how: {message}"
    );

    rx.with(|st| st.fail_with = None);
    append(&app, &(5..10).map(|i| line(i, "info")).collect::<Vec<_>>());
    eventually(
        "the error cleared once a batch went through",
        Duration::from_secs(30),
        || async { error(instance(&client, &instance_path).await).is_none() },
        || sidecar.log_tail(),
    )
    .await;
    assert_eq!(
        sidecar.metric(r#"servicelog_events_out_total{sink="otel"}"#),
        Some(5.0)
    );
}
