//! `kafka` sinks against a real Apache Kafka broker (KRaft, one node, `servicelog-e2e`'s
//! [`Kafka`]) with the real sidecar binary: exact delivery to several topics (keys on
//! their murmur2 partition), the broker stopped for 30 s under load (nothing lost,
//! memory bounded), and an unknown topic or refused SASL credentials as a clear error
//! in the instance record (a real ZooKeeper) while nothing is dropped.

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::Path,
    process::Child,
    sync::OnceLock,
    thread,
    time::{Duration, Instant},
};

use common::*;
use rskafka::client::{
    Client, ClientBuilder,
    partition::{OffsetAt, UnknownTopicHandling},
};
use servicelog_e2e::{
    kafka::{Kafka, SASL_PASSWORD, SASL_USER},
    procs::{self, EnvDir},
    unique_name,
};
use servicelog_sidecar::sinks::kafka::partition_for;

const WAIT: Duration = Duration::from_secs(60);

/// A broker of this test process's own (and the watchdog that stops it if the process
/// dies), in a fresh environment directory.
struct TestKafka {
    kafka: Kafka,
    _watchdog: Child,
    _dir: EnvDir,
}

impl TestKafka {
    fn start(label: &str) -> Self {
        let base = servicelog_e2e::base_dir();
        procs::reap_stale(&base);
        let dir = EnvDir::create(base.join(unique_name(&format!("sidecar-{label}"))))
            .expect("creating the Kafka environment dir");
        let watchdog = dir.spawn_watchdog().expect("starting the watchdog");
        let kafka =
            Kafka::start(&dir, label).unwrap_or_else(|e| panic!("starting the Kafka broker: {e}"));
        Self {
            kafka,
            _watchdog: watchdog,
            _dir: dir,
        }
    }
}

/// One broker for the tests that do not stop it (their topics are their own).
fn shared() -> &'static Kafka {
    static SHARED: OnceLock<TestKafka> = OnceLock::new();
    &SHARED.get_or_init(|| TestKafka::start("kafka")).kafka
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

async fn client(bootstrap: &str) -> Client {
    tokio::time::timeout(WAIT, ClientBuilder::new(vec![bootstrap.to_owned()]).build())
        .await
        .unwrap_or_else(|_| panic!("connecting to Kafka at {bootstrap} for {WAIT:?}"))
        .unwrap_or_else(|e| panic!("connecting to Kafka at {bootstrap}: {e}"))
}

async fn create_topic(client: &Client, topic: &str, partitions: i32) {
    client
        .controller_client()
        .expect("a controller client")
        .create_topic(topic, partitions, 1, 10_000)
        .await
        .unwrap_or_else(|e| panic!("creating topic {topic}: {e}"));
}

/// Every (key, value) of each partition of `topic`, from offset 0 to the high
/// watermark.
async fn read_topic(
    client: &Client,
    topic: &str,
    partitions: i32,
) -> BTreeMap<i32, Vec<(Option<String>, String)>> {
    let mut out = BTreeMap::new();
    for p in 0..partitions {
        let pc = client
            .partition_client(topic, p, UnknownTopicHandling::Retry)
            .await
            .unwrap_or_else(|e| panic!("a client for {topic}/{p}: {e}"));
        let end = pc
            .get_offset(OffsetAt::Latest)
            .await
            .unwrap_or_else(|e| panic!("the end offset of {topic}/{p}: {e}"));
        let mut records = Vec::new();
        let mut offset = 0;
        let deadline = Instant::now() + WAIT;
        while offset < end {
            assert!(
                Instant::now() < deadline,
                "reading {topic}/{p} up to offset {end} took over {WAIT:?}; got to {offset}"
            );
            let (batch, _) = pc
                .fetch_records(offset, 1..4_000_000, 500)
                .await
                .unwrap_or_else(|e| panic!("fetching {topic}/{p} at {offset}: {e}"));
            for r in batch {
                let text = |b: Vec<u8>| String::from_utf8(b).expect("records hold UTF-8 text");
                records.push((
                    r.record.key.map(text),
                    text(r.record.value.unwrap_or_default()),
                ));
                offset = r.offset + 1;
            }
        }
        out.insert(p, records);
    }
    out
}

/// How many records `topic` holds, by the partitions' end offsets.
async fn count_topic(client: &Client, topic: &str, partitions: i32) -> i64 {
    let mut n = 0;
    for p in 0..partitions {
        let pc = client
            .partition_client(topic, p, UnknownTopicHandling::Retry)
            .await
            .unwrap_or_else(|e| panic!("a client for {topic}/{p}: {e}"));
        n += pc.get_offset(OffsetAt::Latest).await.unwrap_or(0);
    }
    n
}

/// A json line with a `seq` and a `user` (the key of keyed sinks).
fn keyed_line(seq: u64) -> String {
    format!(
        r#"{{"level":"info","seq":{seq},"user":"user-{}","msg":"request served"}}"#,
        seq % 37
    )
}

fn seq_of(value: &str) -> u64 {
    let v: serde_json::Value = serde_json::from_str(value)
        .unwrap_or_else(|e| panic!("a record that is not JSON ({e}): {value:?}"));
    v["seq"]
        .as_u64()
        .unwrap_or_else(|| panic!("a record without seq: {value:?}"))
}

/// How often each seq appears among `records`.
fn seq_counts_of<'a>(records: impl Iterator<Item = &'a String>) -> BTreeMap<u64, usize> {
    let mut counts = BTreeMap::new();
    for value in records {
        *counts.entry(seq_of(value)).or_insert(0) += 1;
    }
    counts
}

fn start_with_config(s: &Scratch, spec_yaml: &str, envs: &[(&str, &str)]) -> Sidecar {
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

fn source(logs: &Path) -> String {
    format!(
        "sources:\n  - name: app\n    file: {{paths: [\"{}/*.log\"], format: json}}\n",
        logs.display()
    )
}

#[test]
fn given_three_kafka_sinks_when_a_workload_is_written_then_each_topic_holds_every_line_once_with_keys_on_their_partition()
 {
    let kafka = shared();
    let rt = runtime();
    let admin = rt.block_on(client(&kafka.bootstrap()));
    let (keyed, json, gz) = (unique_name("keyed"), unique_name("json"), unique_name("gz"));
    rt.block_on(async {
        create_topic(&admin, &keyed, 3).await;
        create_topic(&admin, &json, 2).await;
        create_topic(&admin, &gz, 1).await;
    });
    let s = Scratch::new();
    let logs = s.logs();
    let bootstrap = kafka.bootstrap();
    let spec = format!(
        "{src}sinks:\n\
         \x20 - name: keyed\n    kafka: {{brokers: [\"{bootstrap}\"], topic: {keyed}, key: user, compression: lz4}}\n\
         \x20 - name: json\n    kafka: {{brokers: [\"{bootstrap}\"], topic: {json}, encoding: json, compression: snappy, batch: {{maxBytes: 16384, timeout: 20ms}}}}\n\
         \x20 - name: gz\n    kafka: {{brokers: [\"{bootstrap}\"], topic: {gz}, compression: gzip}}\n\
         rules:\n  - name: warn-to-gz\n    when: {{level: {{atLeast: warn}}}}\n    to: [gz]\n    continue: true\n\
         \x20 - name: all\n    to: [keyed, json]\n",
        src = source(&logs),
    );
    let sidecar = start_with_config(&s, &spec, &[]);

    // 30,000 lines in 30 writes; every tenth a warning, which also goes to `gz`.
    let n = 30_000u64;
    let line = |seq: u64| {
        let l = keyed_line(seq);
        if seq.is_multiple_of(10) {
            l.replace(r#""level":"info""#, r#""level":"warn""#)
        } else {
            l
        }
    };
    let all: Vec<String> = (0..n).map(line).collect();
    for chunk in all.chunks(1000) {
        append(&logs.join("app.log"), chunk);
    }
    let warn_count = n / 10;
    wait_until(
        "every line in the three topics",
        WAIT,
        || {
            rt.block_on(async {
                count_topic(&admin, &keyed, 3).await >= n as i64
                    && count_topic(&admin, &json, 2).await >= n as i64
                    && count_topic(&admin, &gz, 1).await >= warn_count as i64
            })
        },
        || sidecar.log_tail(),
    );
    // A moment for anything extra (a duplicate would show here).
    thread::sleep(Duration::from_millis(500));

    let keyed_records = rt.block_on(read_topic(&admin, &keyed, 3));
    let mut values = Vec::new();
    let mut key_partitions: BTreeMap<String, BTreeSet<i32>> = BTreeMap::new();
    for (p, records) in &keyed_records {
        for (key, value) in records {
            let key = key
                .clone()
                .unwrap_or_else(|| panic!("a keyed record without a key: {value}"));
            key_partitions.entry(key).or_default().insert(*p);
            values.push(value.clone());
        }
    }
    let mut sorted = values.clone();
    sorted.sort_by_key(|v| seq_of(v));
    assert_eq!(
        sorted.len(),
        all.len(),
        "{keyed}: {} records for {n} lines",
        sorted.len()
    );
    assert!(
        sorted == all,
        "{keyed}: the record values are not the original lines, each once"
    );
    assert_eq!(key_partitions.len(), 37, "37 distinct keys");
    for (key, partitions) in &key_partitions {
        let want = partition_for(key.as_bytes(), 3) as i32;
        assert_eq!(
            partitions,
            &BTreeSet::from([want]),
            "key {key} is on partitions {partitions:?}, murmur2 says {want}"
        );
    }
    for records in keyed_records.values() {
        let seqs: Vec<u64> = records.iter().map(|(_, v)| seq_of(v)).collect();
        let mut by_key: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
        for ((k, _), seq) in records.iter().zip(&seqs) {
            by_key
                .entry(k.as_deref().unwrap_or(""))
                .or_default()
                .push(*seq);
        }
        for (k, s) in by_key {
            assert!(
                s.windows(2).all(|w| w[0] < w[1]),
                "key {k}: records out of order within its partition"
            );
        }
    }

    let json_records = rt.block_on(read_topic(&admin, &json, 2));
    let counts = seq_counts_of(json_records.values().flatten().map(|(_, v)| v));
    assert_eq!(counts.len() as u64, n, "{json}: distinct seqs");
    assert!(
        counts.values().all(|c| *c == 1),
        "{json}: duplicates in the happy path"
    );
    let first: serde_json::Value =
        serde_json::from_str(&json_records[&0][0].1).expect("a json record");
    assert_eq!(
        first["_servicelog"]["pod"], "checkout-1",
        "encoding json carries _servicelog: {first}"
    );
    assert!(
        json_records.values().all(|r| !r.is_empty()),
        "unkeyed batches go to every partition in turn: {:?}",
        json_records
            .iter()
            .map(|(p, r)| (p, r.len()))
            .collect::<Vec<_>>()
    );
    assert!(
        json_records.values().flatten().all(|(k, _)| k.is_none()),
        "{json}: no key set, none sent"
    );

    let gz_records = rt.block_on(read_topic(&admin, &gz, 1));
    let gz_values: Vec<String> = gz_records[&0].iter().map(|(_, v)| v.clone()).collect();
    let want: Vec<String> = (0..n).filter(|s| s.is_multiple_of(10)).map(line).collect();
    assert!(
        gz_values == want,
        "{gz}: {} records; expected the {} warnings in order, once each",
        gz_values.len(),
        want.len()
    );
    assert_eq!(
        sidecar.metric(r#"servicelog_events_out_total{sink="keyed"}"#),
        Some(n as f64),
        "events counted out"
    );
}

#[test]
fn given_a_kafka_sink_when_the_broker_is_down_for_30s_under_load_then_nothing_is_lost_and_memory_stays_bounded()
 {
    let mut own = TestKafka::start("kafka-outage");
    let rt = runtime();
    let topic = unique_name("outage");
    {
        let admin = rt.block_on(client(&own.kafka.bootstrap()));
        rt.block_on(create_topic(&admin, &topic, 2));
    }
    let s = Scratch::new();
    let logs = s.logs();
    let spec = format!(
        "{src}sinks:\n  - name: events\n    kafka: {{brokers: [\"{b}\"], topic: {topic}, key: user}}\n    \
         buffer: {{maxBytes: 1048576}}\ndefaultTo: [events]\n",
        src = source(&logs),
        b = own.kafka.bootstrap(),
    );
    let sidecar = start_with_config(&s, &spec, &[]);
    let log = logs.join("app.log");

    // Load: 2,000 lines (≈ 170 KB) every 100 ms, through the outage and after it.
    let mut seq = 0u64;
    let mut write = |lines: u64| {
        let batch: Vec<String> = (seq..seq + lines).map(keyed_line).collect();
        append(&log, &batch);
        seq += lines;
    };
    for _ in 0..20 {
        write(2000);
        thread::sleep(Duration::from_millis(100));
    }
    own.kafka.stop();
    let stopped = Instant::now();
    let mut peak_rss = 0;
    while stopped.elapsed() < Duration::from_secs(30) {
        write(2000);
        thread::sleep(Duration::from_millis(100));
        if let Some(kib) = rss_kib(sidecar.pid()) {
            peak_rss = peak_rss.max(kib);
        }
    }
    let errors = sidecar
        .metric(r#"servicelog_sink_write_errors_total{sink="events"}"#)
        .unwrap_or(0.0);
    assert!(
        errors >= 1.0,
        "failed produces are counted while the broker is down, got {errors}\n{}",
        sidecar.log_tail()
    );
    own.kafka
        .restart()
        .unwrap_or_else(|e| panic!("restarting the broker: {e}"));
    for _ in 0..20 {
        write(2000);
        thread::sleep(Duration::from_millis(100));
    }
    let n = seq;
    let admin = rt.block_on(client(&own.kafka.bootstrap()));
    wait_until(
        "every line in the topic after the broker came back",
        Duration::from_secs(120),
        || rt.block_on(count_topic(&admin, &topic, 2)) >= n as i64,
        || {
            format!(
                "{} of {n} records\n{}",
                rt.block_on(count_topic(&admin, &topic, 2)),
                sidecar.log_tail()
            )
        },
    );
    thread::sleep(Duration::from_millis(500));
    let records = rt.block_on(read_topic(&admin, &topic, 2));
    let counts = seq_counts_of(records.values().flatten().map(|(_, v)| v));
    let missing: Vec<u64> = (0..n).filter(|s| !counts.contains_key(s)).collect();
    let duplicates: usize = counts.values().map(|c| c - 1).sum();
    assert!(
        missing.is_empty(),
        "{} of {n} lines lost (first {:?})",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    println!(
        "outage: {n} lines, {duplicates} duplicates (at least once), {errors} failed produces counted, sidecar peak RSS {peak_rss} KiB during the outage"
    );
    // The buffer holds at most 1 MiB, the reader one chunk per file, the sink one batch:
    // a sidecar that kept reading into memory would hold the ~5 MB written meanwhile.
    assert!(
        peak_rss < 40 * 1024,
        "sidecar RSS reached {peak_rss} KiB during the outage"
    );
    assert!(
        duplicates <= 4_000,
        "{duplicates} duplicates: more than the batches in flight when the broker stopped"
    );
}

#[test]
fn given_records_over_the_brokers_limit_when_produced_then_a_batch_is_split_and_only_a_record_too_large_is_dropped()
 {
    let kafka = shared();
    let rt = runtime();
    let admin = rt.block_on(client(&kafka.bootstrap()));
    let topic = unique_name("big");
    rt.block_on(create_topic(&admin, &topic, 1));
    let s = Scratch::new();
    let logs = s.logs();
    // Lines up to 4 MiB are read whole; the sink's requests hold up to 1 MiB of values;
    // the broker takes record batches up to its message.max.bytes (1 MiB + 12 bytes by
    // default), their framing included.
    let spec = format!(
        "sources:\n  - name: app\n    maxLineBytes: 4194304\n    file: {{paths: [\"{}/*.log\"], format: json}}\n\
         sinks:\n  - name: events\n    kafka: {{brokers: [\"{}\"], topic: {topic}, batch: {{maxBytes: 1048576}}}}\ndefaultTo: [events]\n",
        logs.display(),
        kafka.bootstrap(),
    );
    let sidecar = start_with_config(&s, &spec, &[]);
    // Lines 0..4 of 262,140 bytes: 1,048,560 bytes of values fit the sink's request,
    // not the broker's limit once framed, so that request is split. Line 4 alone is over
    // the limit.
    let sized = |seq: u64, len: usize| {
        let head = format!(r#"{{"level":"info","seq":{seq},"user":"user-1","msg":""#);
        format!("{head}{}\"}}", "x".repeat(len - head.len() - 2))
    };
    let line = |seq: u64| match seq {
        0..4 => sized(seq, 262_140),
        4 => sized(seq, 1_500_000),
        _ => keyed_line(seq),
    };
    let lines: Vec<String> = (0..101).map(line).collect();
    assert_eq!(lines[0].len(), 262_140);
    append(&logs.join("app.log"), &lines);
    let rejected = r#"servicelog_sink_dropped_total{sink="events",reason="rejected"}"#;
    wait_until(
        "the oversized record to be counted as rejected",
        WAIT,
        || sidecar.metric(rejected).is_some_and(|n| n >= 1.0),
        || sidecar.log_tail(),
    );
    wait_until(
        "the other 100 lines in the topic",
        WAIT,
        || rt.block_on(count_topic(&admin, &topic, 1)) >= 100,
        || sidecar.log_tail(),
    );
    thread::sleep(Duration::from_millis(500));
    let records = rt.block_on(read_topic(&admin, &topic, 1));
    let values: Vec<String> = records[&0].iter().map(|(_, v)| v.clone()).collect();
    let want: Vec<String> = (0..101).filter(|s| *s != 4).map(line).collect();
    assert!(
        values == want,
        "{} records; expected the 100 lines but line 4 in order, once each",
        values.len()
    );
    assert_eq!(sidecar.metric(rejected), Some(1.0), "one record dropped");
    assert_eq!(
        sidecar.metric(r#"servicelog_events_out_total{sink="events"}"#),
        Some(100.0),
        "the dropped record is not counted out"
    );
    let logged = fs::read_to_string(&sidecar.log).unwrap_or_default();
    assert!(
        logged.contains("the broker refuses a record this large; dropped"),
        "the drop is logged\n{}",
        sidecar.log_tail()
    );
    assert!(
        logged.lines().any(
            |l| l.contains("a request over the broker's limit; splitting it")
                && l.contains("records=4")
        ),
        "the request of lines 0..4 was split\n{}",
        sidecar.log_tail()
    );
}

const POD: &str = "checkout-7d9f-1";

struct Paths {
    config: String,
    instance: String,
}

fn paths() -> Paths {
    let root = format!("/{}", unique_name("t"));
    Paths {
        config: format!("{root}/namespaces/shop/checkout/config"),
        instance: format!("{root}/namespaces/shop/checkout/instances/{POD}"),
    }
}

async fn wait_instance(
    zk: &zookeeper_client::Client,
    path: &str,
    what: &str,
    sidecar: &Sidecar,
    want: impl Fn(&servicelog_api::wire::Instance) -> bool,
) -> servicelog_api::wire::Instance {
    let start = Instant::now();
    let mut last = None;
    loop {
        if let Some((record, _)) = instance(zk, path).await {
            if want(&record) {
                return record;
            }
            last = Some(record);
        }
        assert!(
            start.elapsed() < WAIT,
            "timed out after {WAIT:?} waiting for the instance znode {path} to show {what}; last seen: {last:?}\n{}",
            sidecar.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_topic_that_does_not_exist_then_the_instance_record_says_so_and_the_events_wait_until_it_is_created()
 {
    let kafka = shared();
    let zk = TestZk::start("kafka-topic");
    let zk_client = zk_client(&zk.connect_string()).await;
    let s = Scratch::new();
    let logs = s.logs();
    let topic = unique_name("later");
    let p = paths();
    let spec = format!(
        "{src}sinks:\n  - name: events\n    kafka: {{brokers: [\"{b}\"], topic: {topic}}}\ndefaultTo: [events]\n",
        src = source(&logs),
        b = kafka.bootstrap(),
    );
    publish(&zk_client, &p.config, &envelope(1, &spec)).await;
    let sidecar = Sidecar::start(
        &s,
        &[],
        &[
            ("SERVICELOG_ZK_CONNECT", &zk.connect_string()),
            ("SERVICELOG_CONFIG_ZNODE", &p.config),
            ("POD_NAME", POD),
            ("POD_NAMESPACE", "shop"),
        ],
    );
    append(
        &logs.join("app.log"),
        &(0..100).map(keyed_line).collect::<Vec<_>>(),
    );
    let record = wait_instance(
        &zk_client,
        &p.instance,
        "a sink error naming the topic",
        &sidecar,
        |r| r.sink_errors.contains_key("events"),
    )
    .await;
    let error = &record.sink_errors["events"];
    println!("instance record: sinkErrors.events = {error}");
    assert!(
        error.contains(&format!("topic {topic:?} does not exist")),
        "the error names the missing topic: {error}"
    );
    assert_eq!(
        record.state,
        servicelog_api::wire::InstanceState::Ok,
        "the config itself applied"
    );
    let logged = fs::read_to_string(&sidecar.log).unwrap_or_default();
    assert!(
        logged.contains("does not exist"),
        "the sidecar logs it too\n{}",
        sidecar.log_tail()
    );

    let admin = client(&kafka.bootstrap()).await;
    create_topic(&admin, &topic, 1).await;
    wait_instance(
        &zk_client,
        &p.instance,
        "the sink error cleared once the topic exists",
        &sidecar,
        |r| r.sink_errors.is_empty(),
    )
    .await;
    let records = read_topic(&admin, &topic, 1).await;
    let counts = seq_counts_of(records[&0].iter().map(|(_, v)| v));
    assert_eq!(
        counts.keys().copied().collect::<Vec<_>>(),
        (0..100).collect::<Vec<_>>(),
        "the events that waited are all delivered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_sasl_credentials_when_the_broker_refuses_them_then_the_instance_record_says_so_and_right_ones_deliver()
 {
    let kafka = shared();
    let admin = client(&kafka.bootstrap()).await;
    let topic = unique_name("auth");
    create_topic(&admin, &topic, 1).await;
    let zk = TestZk::start("kafka-sasl");
    let zk_client = zk_client(&zk.connect_string()).await;
    let s = Scratch::new();
    let logs = s.logs();
    let creds = s.path("credentials");
    for (sink, password) in [("wrong", "not-the-password"), ("right", SASL_PASSWORD)] {
        let dir = creds.join(sink);
        fs::create_dir_all(&dir).expect("mkdir");
        fs::write(dir.join("username"), format!("{SASL_USER}\n")).expect("write");
        fs::write(dir.join("password"), password).expect("write");
        fs::write(dir.join("mechanism"), "PLAIN").expect("write");
    }
    let p = paths();
    let spec = format!(
        "{src}sinks:\n\
         \x20 - name: wrong\n    kafka: {{brokers: [\"{b}\"], topic: {topic}}}\n    credentialsSecretRef: {{name: wrong}}\n\
         \x20 - name: right\n    kafka: {{brokers: [\"{b}\"], topic: {topic}}}\n    credentialsSecretRef: {{name: right}}\n\
         rules:\n  - name: odd\n    when: {{fields: [{{name: user, equals: user-1}}]}}\n    to: [wrong]\n\
         defaultTo: [right]\n",
        src = source(&logs),
        b = kafka.sasl_bootstrap(),
    );
    publish(&zk_client, &p.config, &envelope(1, &spec)).await;
    let sidecar = Sidecar::start(
        &s,
        &[],
        &[
            ("SERVICELOG_ZK_CONNECT", &zk.connect_string()),
            ("SERVICELOG_CONFIG_ZNODE", &p.config),
            ("POD_NAME", POD),
            ("POD_NAMESPACE", "shop"),
            ("SERVICELOG_CREDENTIALS_DIR", creds.to_str().expect("UTF-8")),
        ],
    );
    // seq 1, 38, 75 have user-1 and go to `wrong`; the other 97 to `right`.
    append(
        &logs.join("app.log"),
        &(0..100).map(keyed_line).collect::<Vec<_>>(),
    );
    let record = wait_instance(
        &zk_client,
        &p.instance,
        "a sink error for the refused credentials",
        &sidecar,
        |r| r.sink_errors.contains_key("wrong"),
    )
    .await;
    let error = &record.sink_errors["wrong"];
    println!("instance record: sinkErrors.wrong = {error}");
    assert!(
        error.starts_with("kafka sink wrong:") && error.contains("Sasl handshake failed"),
        "the error says the SASL handshake failed for sink wrong: {error}"
    );
    assert!(
        !error.contains("not-the-password"),
        "the error does not carry the password: {error}"
    );
    assert!(
        !record.sink_errors.contains_key("right"),
        "the sink with the right credentials has no error: {:?}",
        record.sink_errors
    );
    let want: Vec<u64> = (0..100).filter(|s| s % 37 != 1).collect();
    let mut got = Vec::new();
    let start = Instant::now();
    while got != want {
        assert!(
            start.elapsed() < WAIT,
            "the right credentials delivered {} of {} events\n{}",
            got.len(),
            want.len(),
            sidecar.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        let records = read_topic(&admin, &topic, 1).await;
        got = records[&0].iter().map(|(_, v)| seq_of(v)).collect();
    }
    let errors = sidecar
        .metric(r#"servicelog_sink_write_errors_total{sink="wrong"}"#)
        .unwrap_or(0.0);
    assert!(errors >= 1.0, "refused attempts are counted, got {errors}");
}
