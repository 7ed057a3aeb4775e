//! `http` sinks against a real HTTP receiver on loopback (tests/common's [`Receiver`]),
//! with the real sidecar binary and `--config-file`: the three encodings, gzip,
//! credentials from a mounted directory, retries and refusals, a receiver down under load,
//! bounded memory, and a disk buffer that outlives a SIGKILL.

mod common;

use std::{
    collections::BTreeMap,
    fs,
    path::Path,
    thread,
    time::{Duration, Instant},
};

use common::*;
use serde_json::{Value, json};

/// One json source routed to the sinks in `sinks_yaml` (a YAML list, indented 2).
fn spec(logs: &Path, sinks_yaml: &str, to: &str) -> String {
    format!(
        "sources:\n  - name: app\n    file: {{paths: [\"{logs}/*.log\"], format: json}}\n\
         sinks:\n{sinks_yaml}defaultTo: [{to}]\n",
        logs = logs.display(),
    )
}

fn start(s: &Scratch, spec_yaml: &str, envs: &[(&str, &str)]) -> Sidecar {
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

fn lines(range: std::ops::Range<u64>, level: &str) -> Vec<String> {
    range.map(|i| line(i, level)).collect()
}

fn metrics_text(sidecar: &Sidecar) -> String {
    sidecar
        .http_get("/metrics")
        .map(|r| r.1)
        .unwrap_or_default()
}

/// Every seq of `0..n` taken at least once; returns the duplicates.
fn assert_all_taken(counts: &BTreeMap<u64, usize>, n: u64) -> Vec<(u64, usize)> {
    let missing: Vec<u64> = (0..n).filter(|s| !counts.contains_key(s)).collect();
    assert!(
        missing.is_empty(),
        "{} of {n} lines never reached the receiver (first {:?})",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    counts
        .iter()
        .filter(|(_, c)| **c > 1)
        .map(|(s, c)| (*s, *c))
        .collect()
}

#[test]
fn given_json_lines_with_gzip_and_mounted_credentials_then_the_receiver_gets_every_line_with_its_headers()
 {
    let s = Scratch::new();
    let logs = s.logs();
    let rx = Receiver::start();
    let creds = s.path("credentials");
    fs::create_dir_all(creds.join("basic")).expect("mkdir");
    fs::create_dir_all(creds.join("bearer")).expect("mkdir");
    fs::write(creds.join("basic/username"), "loki\n").expect("write");
    fs::write(creds.join("basic/password"), "s3cret\n").expect("write");
    fs::write(creds.join("basic/header.X-Scope-OrgID"), "tenant-1").expect("write");
    fs::write(creds.join("bearer/token"), "tok-123\n").expect("write");
    let sinks = format!(
        "  - name: basic\n    http:\n      url: \"{}\"\n      compression: gzip\n      \
         headers: {{X-Static: one}}\n      batch: {{timeout: 200ms}}\n    \
         credentialsSecretRef: {{name: loki-basic}}\n\
         \x20 - name: bearer\n    http: {{url: \"{}\", batch: {{timeout: 200ms}}}}\n    \
         credentialsSecretRef: {{name: loki-token}}\n",
        rx.url("/basic"),
        rx.url("/bearer"),
    );
    let sidecar = start(
        &s,
        &spec(&logs, &sinks, "basic, bearer"),
        &[("SERVICELOG_CREDENTIALS_DIR", creds.to_str().expect("UTF-8"))],
    );
    append(&logs.join("app.log"), &lines(0..100, "info"));
    wait_until(
        "100 lines at each path",
        Duration::from_secs(20),
        || {
            let r = rx.requests();
            let count = |p: &str| {
                r.iter()
                    .filter(|q| q.path == p && q.status == 204)
                    .map(|q| q.body.iter().filter(|&&b| b == b'\n').count())
                    .sum::<usize>()
            };
            count("/basic") == 100 && count("/bearer") == 100
        },
        || sidecar.log_tail(),
    );
    let counts = rx.taken_seqs();
    assert!(
        (0..100).all(|i| counts.get(&i) == Some(&2)),
        "each line once per sink: {counts:?}"
    );
    for r in rx.requests() {
        let h = &r.headers;
        assert_eq!(h["content-type"], "application/x-ndjson");
        if r.path == "/basic" {
            assert_eq!(h["content-encoding"], "gzip");
            assert!(r.wire_len < r.body.len(), "gzip makes the body smaller");
            // base64("loki:s3cret")
            assert_eq!(h["authorization"], "Basic bG9raTpzM2NyZXQ=");
            assert_eq!(h["x-scope-orgid"], "tenant-1");
            assert_eq!(h["x-static"], "one");
        } else {
            assert!(!h.contains_key("content-encoding"));
            assert_eq!(h["authorization"], "Bearer tok-123");
        }
        let first: Value =
            serde_json::from_slice(r.body.split(|&b| b == b'\n').next().expect("a first line"))
                .expect("JSON lines");
        assert_eq!(
            first["_servicelog"],
            json!({"source": "app", "pod": "checkout-1", "namespace": "shop"})
        );
    }
    assert_eq!(
        sidecar.metric(r#"servicelog_events_out_total{sink="basic"}"#),
        Some(100.0)
    );

    // The kubelet updates the mounted Secret: the next requests carry the new token.
    fs::write(creds.join("bearer/token"), "tok-456").expect("write");
    thread::sleep(Duration::from_secs(11));
    append(&logs.join("app.log"), &lines(100..101, "info"));
    wait_until(
        "a request with the rotated token",
        Duration::from_secs(10),
        || {
            rx.requests().iter().any(|r| {
                r.headers.get("authorization").map(String::as_str) == Some("Bearer tok-456")
            })
        },
        || sidecar.log_tail(),
    );
    assert!(
        !fs::read_to_string(&sidecar.log)
            .unwrap_or_default()
            .contains("s3cret"),
        "no secret in the log"
    );
}

#[test]
fn given_a_credentials_ref_without_its_mounted_secret_then_the_config_is_rejected_naming_the_path()
{
    let s = Scratch::new();
    let logs = s.logs();
    let creds = s.path("credentials");
    let sinks = "  - name: loki\n    http: {url: \"http://127.0.0.1:9/\"}\n    \
                 credentialsSecretRef: {name: loki}\n";
    let sidecar = start(
        &s,
        &spec(&logs, sinks, "loki"),
        &[("SERVICELOG_CREDENTIALS_DIR", creds.to_str().expect("UTF-8"))],
    );
    let want = creds.join("loki").display().to_string();
    let log = || fs::read_to_string(&sidecar.log).unwrap_or_default();
    wait_until(
        "the config rejected",
        Duration::from_secs(15),
        || log().contains("config rejected"),
        || sidecar.log_tail(),
    );
    let log = log();
    assert!(
        log.contains(&want) && log.contains("restart"),
        "the log names {want} and says a restart may be needed:\n{}",
        sidecar.log_tail()
    );
}

#[test]
fn given_loki_encoding_then_streams_are_grouped_by_labels_in_lokis_push_format() {
    let s = Scratch::new();
    let logs = s.logs();
    let rx = Receiver::start();
    let sinks = format!(
        "  - name: loki\n    http: {{url: \"{}\", encoding: loki, labels: [level], \
         batch: {{timeout: 300ms}}}}\n",
        rx.url("/loki/api/v1/push")
    );
    let sidecar = start(&s, &spec(&logs, &sinks, "loki"), &[]);
    let mut input = lines(0..6, "info");
    input.extend(lines(6..10, "warn"));
    append(&logs.join("app.log"), &input);
    wait_until(
        "10 events pushed",
        Duration::from_secs(20),
        || sidecar.metric(r#"servicelog_events_out_total{sink="loki"}"#) == Some(10.0),
        || sidecar.log_tail(),
    );
    let mut by_labels: BTreeMap<String, Vec<(u64, String)>> = BTreeMap::new();
    for r in rx.requests() {
        assert_eq!(r.headers["content-type"], "application/json");
        let push: Value = serde_json::from_slice(&r.body).expect("a JSON push body");
        for stream in push["streams"].as_array().expect("streams") {
            let labels = stream["stream"].to_string();
            for v in stream["values"].as_array().expect("values") {
                let ts: u64 = v[0]
                    .as_str()
                    .and_then(|t| t.parse().ok())
                    .expect("a timestamp in ns as a string");
                let line = v[1].as_str().expect("a line").to_owned();
                by_labels
                    .entry(labels.clone())
                    .or_default()
                    .push((ts, line));
            }
        }
    }
    let info = json!({"level": "info", "namespace": "shop", "pod": "checkout-1", "source": "app"})
        .to_string();
    let warn = json!({"level": "warn", "namespace": "shop", "pod": "checkout-1", "source": "app"})
        .to_string();
    assert_eq!(
        by_labels.keys().cloned().collect::<Vec<_>>(),
        {
            let mut k = vec![info.clone(), warn.clone()];
            k.sort();
            k
        },
        "one stream per level"
    );
    let info_lines: Vec<&str> = by_labels[&info].iter().map(|(_, l)| l.as_str()).collect();
    assert_eq!(
        info_lines,
        input[..6].iter().map(String::as_str).collect::<Vec<_>>(),
        "a line is the event's JSON as written, without _servicelog"
    );
    for values in by_labels.values() {
        assert!(
            values.windows(2).all(|w| w[1].0 > w[0].0),
            "timestamps strictly increase within a stream"
        );
    }
    let now_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_nanos() as u64;
    let ts = by_labels[&warn][0].0;
    assert!(
        now_ns - ts < 60_000_000_000,
        "timestamps are recent unix ns"
    );
}

#[test]
fn given_elasticsearch_refusing_one_document_then_it_is_counted_and_the_rest_are_indexed_once() {
    let s = Scratch::new();
    let logs = s.logs();
    let rx = Receiver::start();
    rx.with(|st| {
        st.es_reject_seqs.insert(3);
        st.es_busy_once.insert(5);
        st.es_busy_once.insert(7);
    });
    let sinks = format!(
        "  - name: es\n    http: {{url: \"{}\", encoding: elasticsearch, index: logs-app, \
         batch: {{timeout: 200ms}}}}\n",
        rx.url("/_bulk")
    );
    let sidecar = start(&s, &spec(&logs, &sinks, "es"), &[]);
    let mut input = lines(0..9, "info");
    input.push(
        r#"{"@timestamp":"2026-11-24T10:00:00.000Z","level":"info","seq":9,"msg":"own time"}"#
            .to_owned(),
    );
    append(&logs.join("app.log"), &input);
    wait_until(
        "9 documents indexed and 1 refused",
        Duration::from_secs(20),
        || {
            sidecar.metric(r#"servicelog_events_out_total{sink="es"}"#) == Some(9.0)
                && sidecar.metric(r#"servicelog_sink_dropped_total{sink="es",reason="rejected"}"#)
                    == Some(1.0)
        },
        || format!("{}\n{}", metrics_text(&sidecar), sidecar.log_tail()),
    );
    let taken = rx.with(|st| st.es_taken.clone());
    let mut seqs: Vec<u64> = taken.iter().filter_map(|d| d["seq"].as_u64()).collect();
    seqs.sort_unstable();
    assert_eq!(
        seqs,
        vec![0, 1, 2, 4, 5, 6, 7, 8, 9],
        "all but the refused one, each once (5 and 7 after a retry)"
    );
    for doc in &taken {
        assert!(
            doc["@timestamp"].is_string(),
            "every doc has @timestamp: {doc}"
        );
        assert_eq!(doc["_servicelog"]["pod"], "checkout-1");
    }
    let own = taken.iter().find(|d| d["seq"] == 9).expect("seq 9");
    assert_eq!(
        own["@timestamp"], "2026-11-24T10:00:00.000Z",
        "a doc's own time is kept"
    );
    let requests = rx.requests();
    let first = &requests[0];
    assert_eq!(first.headers["content-type"], "application/x-ndjson");
    let action: Value = serde_json::from_slice(
        first
            .body
            .split(|&b| b == b'\n')
            .next()
            .expect("an action line"),
    )
    .expect("JSON");
    assert_eq!(action, json!({"create": {"_index": "logs-app"}}));
    let retry = requests.last().expect("a retry request");
    assert_eq!(
        retry.body.iter().filter(|&&b| b == b'\n').count(),
        4,
        "the retry resends only the two busy documents: {}",
        String::from_utf8_lossy(&retry.body)
    );
    assert!(sidecar.metric(r#"servicelog_sink_retries_total{sink="es"}"#) >= Some(1.0));
}

#[test]
fn given_a_400_then_the_batch_is_counted_rejected_not_retried_and_later_batches_flow() {
    let s = Scratch::new();
    let logs = s.logs();
    let rx = Receiver::start();
    rx.with(|st| st.fail_with = Some(400));
    let sinks = format!(
        "  - name: out\n    http: {{url: \"{}\", batch: {{timeout: 200ms}}}}\n",
        rx.url("/ingest")
    );
    let sidecar = start(&s, &spec(&logs, &sinks, "out"), &[]);
    let app = logs.join("app.log");
    append(&app, &lines(0..5, "info"));
    wait_until(
        "5 events rejected",
        Duration::from_secs(20),
        || {
            sidecar.metric(r#"servicelog_sink_dropped_total{sink="out",reason="rejected"}"#)
                == Some(5.0)
        },
        || format!("{}\n{}", metrics_text(&sidecar), sidecar.log_tail()),
    );
    thread::sleep(Duration::from_millis(1500));
    assert_eq!(rx.requests().len(), 1, "a 400 is not retried");
    let log = fs::read_to_string(&sidecar.log).unwrap_or_default();
    assert!(
        log.contains("status 400") && log.contains("told to fail with 400"),
        "the log says the status and the start of the response:\n{}",
        sidecar.log_tail()
    );
    rx.with(|st| st.fail_with = None);
    append(&app, &lines(5..10, "info"));
    wait_until(
        "the next 5 delivered",
        Duration::from_secs(20),
        || sidecar.metric(r#"servicelog_events_out_total{sink="out"}"#) == Some(5.0),
        || sidecar.log_tail(),
    );
    let counts = rx.taken_seqs();
    assert_eq!(
        counts.keys().copied().collect::<Vec<_>>(),
        (5..10).collect::<Vec<_>>()
    );
}

#[test]
fn given_429_with_retry_after_and_then_500s_then_the_batch_is_retried_until_taken_once() {
    let s = Scratch::new();
    let logs = s.logs();
    let rx = Receiver::start();
    rx.with(|st| {
        st.fail_with = Some(429);
        st.retry_after = Some(1);
    });
    let sinks = format!(
        "  - name: out\n    http: {{url: \"{}\", batch: {{timeout: 100ms}}}}\n",
        rx.url("/ingest")
    );
    let sidecar = start(&s, &spec(&logs, &sinks, "out"), &[]);
    append(&logs.join("app.log"), &lines(0..20, "info"));
    wait_until(
        "two 429s",
        Duration::from_secs(20),
        || rx.requests().len() >= 2,
        || sidecar.log_tail(),
    );
    rx.with(|st| {
        st.fail_with = Some(503);
        st.retry_after = None;
        st.delay = Duration::from_millis(300);
    });
    wait_until(
        "two 503s",
        Duration::from_secs(20),
        || rx.requests().iter().filter(|r| r.status == 503).count() >= 2,
        || sidecar.log_tail(),
    );
    rx.with(|st| {
        st.fail_with = None;
        st.delay = Duration::ZERO;
    });
    wait_until(
        "the batch taken",
        Duration::from_secs(20),
        || sidecar.metric(r#"servicelog_events_out_total{sink="out"}"#) == Some(20.0),
        || sidecar.log_tail(),
    );
    let counts = rx.taken_seqs();
    assert!(
        (0..20).all(|i| counts.get(&i) == Some(&1)),
        "each line taken exactly once: {counts:?}"
    );
    let times = rx.requests();
    assert!(times.len() >= 5);
    assert!(sidecar.metric(r#"servicelog_sink_retries_total{sink="out"}"#) >= Some(4.0));
}

#[test]
fn given_429_retry_after_then_the_sidecar_waits_that_long() {
    let s = Scratch::new();
    let logs = s.logs();
    let rx = Receiver::start();
    rx.with(|st| {
        st.fail_with = Some(429);
        st.retry_after = Some(2);
    });
    let sinks = format!(
        "  - name: out\n    http: {{url: \"{}\", batch: {{timeout: 100ms}}}}\n",
        rx.url("/ingest")
    );
    let sidecar = start(&s, &spec(&logs, &sinks, "out"), &[]);
    append(&logs.join("app.log"), &lines(0..3, "info"));
    wait_until(
        "a first 429",
        Duration::from_secs(20),
        || !rx.requests().is_empty(),
        || sidecar.log_tail(),
    );
    let first = Instant::now();
    wait_until(
        "the retry",
        Duration::from_secs(10),
        || rx.requests().len() >= 2,
        || sidecar.log_tail(),
    );
    let gap = first.elapsed();
    assert!(
        gap >= Duration::from_millis(1800),
        "Retry-After: 2 honoured, retried after {gap:?}"
    );
}

#[test]
fn given_the_receiver_down_for_30s_under_load_then_every_line_arrives_memory_stays_bounded_and_few_repeat()
 {
    const RATE: u64 = 2_000; // lines per second, steady
    const BURST: u64 = 100_000; // written at once while the receiver is down
    let s = Scratch::new();
    let logs = s.logs();
    let mut rx = Receiver::start();
    let sinks = format!(
        "  - name: out\n    http: {{url: \"{}\", compression: gzip, batch: {{timeout: 200ms}}}}\n",
        rx.url("/ingest")
    );
    let sidecar = start(&s, &spec(&logs, &sinks, "out"), &[]);
    let app = logs.join("app.log");
    let mut seq = 0u64;
    let write_for = |d: Duration, seq: &mut u64| {
        let until = Instant::now() + d;
        while Instant::now() < until {
            append(&app, &lines(*seq..*seq + RATE / 10, "info"));
            *seq += RATE / 10;
            thread::sleep(Duration::from_millis(100));
        }
    };
    write_for(Duration::from_secs(5), &mut seq);
    rx.down();
    let down_at = Instant::now();
    let mut max_rss = 0u64;
    let mut burst_done = false;
    while down_at.elapsed() < Duration::from_secs(30) {
        write_for(Duration::from_secs(1), &mut seq);
        if !burst_done && down_at.elapsed() > Duration::from_secs(5) {
            append(&app, &lines(seq..seq + BURST, "info"));
            seq += BURST;
            burst_done = true;
        }
        if let Some(rss) = rss_kib(sidecar.pid()) {
            max_rss = max_rss.max(rss);
        }
    }
    let written_while_down = seq;
    rx.up();
    write_for(Duration::from_secs(5), &mut seq);
    let n = seq;
    wait_until(
        &format!("all {n} lines taken"),
        Duration::from_secs(120),
        || rx.taken_seqs().len() as u64 >= n,
        || format!("{} of {n}\n{}", rx.taken_seqs().len(), sidecar.log_tail()),
    );
    let dups = assert_all_taken(&rx.taken_seqs(), n);
    // A request the receiver recorded as it went down may be sent again; nothing else.
    let biggest = rx
        .requests()
        .iter()
        .map(|r| r.body.iter().filter(|&&b| b == b'\n').count())
        .max()
        .unwrap_or(0);
    assert!(
        dups.len() <= biggest,
        "{} lines repeated, more than one request's worth ({biggest}): first {:?}",
        dups.len(),
        &dups[..dups.len().min(10)]
    );
    eprintln!(
        "{n} lines ({written_while_down} written before the receiver came back), \
         {} repeated, peak RSS while down {} KiB",
        dups.len(),
        max_rss
    );
    assert!(max_rss > 0, "RSS was sampled");
    assert!(
        max_rss < 32 * 1024,
        "RSS while the receiver was down and {BURST} lines waited: {max_rss} KiB, over 32 MiB"
    );
    assert!(sidecar.metric(r#"servicelog_sink_retries_total{sink="out"}"#) >= Some(5.0));
}

#[test]
fn given_a_disk_buffer_and_the_receiver_down_when_the_sidecar_is_killed_then_the_restart_delivers_everything()
 {
    const N: u64 = 20_000;
    let s = Scratch::new();
    let logs = s.logs();
    let mut rx = Receiver::start();
    rx.down();
    let sinks = format!(
        "  - name: out\n    http: {{url: \"{}\", batch: {{timeout: 200ms}}}}\n    \
         buffer: {{type: disk}}\n",
        rx.url("/ingest")
    );
    let spec_yaml = spec(&logs, &sinks, "out");
    let mut sidecar = start(&s, &spec_yaml, &[]);
    append(&logs.join("app.log"), &lines(0..N, "info"));
    let buffers = s.state().join("buffers/out");
    let on_disk = || -> u64 {
        fs::read_dir(&buffers)
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter_map(|e| e.metadata().ok())
                    .filter(|m| m.is_file())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    };
    let input_bytes = fs::metadata(logs.join("app.log"))
        .map(|m| m.len())
        .unwrap_or(0);
    wait_until(
        "the lines in the disk buffer",
        Duration::from_secs(30),
        // The JSON encoding adds `_servicelog` to each line.
        || on_disk() > input_bytes,
        || format!("{} bytes on disk\n{}", on_disk(), sidecar.log_tail()),
    );
    thread::sleep(Duration::from_secs(2));
    sidecar.kill();
    assert!(rx.requests().is_empty());

    let sidecar = start(&s, &spec_yaml, &[]);
    rx.up();
    wait_until(
        &format!("all {N} lines after the restart"),
        Duration::from_secs(60),
        || rx.taken_seqs().len() as u64 >= N,
        || format!("{} of {N}\n{}", rx.taken_seqs().len(), sidecar.log_tail()),
    );
    let dups = assert_all_taken(&rx.taken_seqs(), N);
    assert!(
        dups.is_empty(),
        "nothing was delivered before the kill, so nothing should repeat: {:?}",
        &dups[..dups.len().min(10)]
    );
}

#[test]
fn given_an_https_receiver_then_a_mounted_ca_is_trusted_the_system_roots_are_not_and_skip_verify_works()
 {
    let s = Scratch::new();
    let logs = s.logs();
    let ca = TestCa::new();
    let ca_file = s.path("ca.pem");
    fs::write(&ca_file, &ca.ca_pem).expect("writing the CA");
    let trusted = Receiver::start_tls(&ca);
    let untrusted = Receiver::start_tls(&ca);
    let skipping = Receiver::start_tls(&ca);
    let sinks = format!(
        "  - name: trusted\n    http: {{url: \"{}\", batch: {{timeout: 100ms}}, \
         tls: {{caFile: \"{}\"}}}}\n\
         \x20 - name: untrusted\n    http: {{url: \"{}\", batch: {{timeout: 100ms}}}}\n\
         \x20 - name: skipping\n    http: {{url: \"{}\", batch: {{timeout: 100ms}}, \
         tls: {{insecureSkipVerify: true}}}}\n",
        trusted.url("/in"),
        ca_file.display(),
        untrusted.url("/in"),
        skipping.url("/in"),
    );
    let sidecar = start(
        &s,
        &spec(&logs, &sinks, "trusted, untrusted, skipping"),
        &[],
    );
    append(&logs.join("app.log"), &lines(0..10, "info"));
    wait_until(
        "10 lines over TLS with the mounted CA and with verification skipped",
        Duration::from_secs(20),
        || trusted.taken_seqs().len() == 10 && skipping.taken_seqs().len() == 10,
        || sidecar.log_tail(),
    );
    wait_until(
        "the untrusted sink's handshakes failing and being retried",
        Duration::from_secs(20),
        || {
            untrusted.with(|st| st.handshakes_failed) >= 2
                && sidecar.metric(r#"servicelog_sink_retries_total{sink="untrusted"}"#) >= Some(2.0)
        },
        || sidecar.log_tail(),
    );
    assert!(untrusted.requests().is_empty());
    assert_eq!(
        sidecar.metric(r#"servicelog_events_out_total{sink="untrusted"}"#),
        Some(0.0)
    );
}

#[test]
fn given_the_receiver_down_when_the_sidecar_is_stopped_then_it_exits_by_its_deadline_and_the_next_start_delivers_everything()
 {
    const N: u64 = 5_000;
    let s = Scratch::new();
    let logs = s.logs();
    let mut rx = Receiver::start();
    rx.down();
    let sinks = format!(
        "  - name: out\n    http: {{url: \"{}\", batch: {{timeout: 100ms}}}}\n",
        rx.url("/ingest")
    );
    let spec_yaml = spec(&logs, &sinks, "out");
    let config = s.path("servicelog.yaml");
    write_config(&config, &manifest(&spec_yaml));
    let args = [
        "--config-file",
        config.to_str().expect("UTF-8"),
        "--shutdown-timeout",
        "2s",
    ];
    let mut sidecar = Sidecar::start(&s, &args, &[]);
    append(&logs.join("app.log"), &lines(0..N, "info"));
    wait_until(
        "the sink retrying",
        Duration::from_secs(20),
        || sidecar.metric(r#"servicelog_sink_retries_total{sink="out"}"#) >= Some(2.0),
        || sidecar.log_tail(),
    );
    let (took, status) = sidecar.terminate(Duration::from_secs(15));
    assert!(status.success(), "exit status {status}");
    assert!(
        took < Duration::from_secs(5),
        "a 2 s shutdown timeout, exited after {took:?}"
    );

    rx.up();
    let sidecar = Sidecar::start(&s, &args, &[]);
    wait_until(
        &format!("all {N} lines after the restart"),
        Duration::from_secs(30),
        || rx.taken_seqs().len() as u64 >= N,
        || format!("{} of {N}\n{}", rx.taken_seqs().len(), sidecar.log_tail()),
    );
    let dups = assert_all_taken(&rx.taken_seqs(), N);
    assert!(
        dups.is_empty(),
        "nothing was taken before the stop: {dups:?}"
    );
}

/// How [`Hostile`] answers every request.
#[derive(Clone)]
enum Answer {
    /// `status`, then `head` and `fill` repeated for as long as the sidecar reads.
    Endless {
        status: u16,
        head: Vec<u8>,
        fill: Vec<u8>,
    },
    /// `status`, then one byte of body every 100 ms.
    Trickle { status: u16 },
}

/// A receiver that reads each request whole, then answers it with a body that never ends;
/// one request per connection. Counts requests and the most body bytes one response got
/// out before the sidecar closed the connection.
struct Hostile {
    port: u16,
    requests: std::sync::Arc<std::sync::atomic::AtomicU64>,
    most_written: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Hostile {
    fn start(answer: Answer) -> Self {
        use std::{
            io::{BufRead, BufReader, Read, Write},
            sync::{
                Arc,
                atomic::{AtomicU64, Ordering},
            },
        };
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding");
        let port = listener.local_addr().expect("an address").port();
        let requests = Arc::new(AtomicU64::new(0));
        let most_written = Arc::new(AtomicU64::new(0));
        let (req, most) = (requests.clone(), most_written.clone());
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let (answer, req, most) = (answer.clone(), req.clone(), most.clone());
                thread::spawn(move || {
                    let mut reader = BufReader::new(conn.try_clone().expect("a clone"));
                    let mut length = 0usize;
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        if let Some((k, v)) = line.split_once(':')
                            && k.eq_ignore_ascii_case("content-length")
                        {
                            length = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0; length];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    req.fetch_add(1, Ordering::Relaxed);
                    let mut conn = conn;
                    let status = match &answer {
                        Answer::Endless { status, .. } | Answer::Trickle { status } => *status,
                    };
                    let head = format!(
                        "HTTP/1.1 {status} Whatever\r\ncontent-type: application/json\r\n\
                         content-length: 1000000000000\r\n\r\n"
                    );
                    if conn.write_all(head.as_bytes()).is_err() {
                        return;
                    }
                    let mut written = 0u64;
                    let started = Instant::now();
                    let ok = |r: std::io::Result<()>| r.is_ok();
                    match answer {
                        Answer::Endless { head, fill, .. } => {
                            if ok(conn.write_all(&head)) {
                                written += head.len() as u64;
                                let chunk = fill.repeat((64 * 1024 / fill.len()).max(1));
                                while started.elapsed() < Duration::from_secs(120)
                                    && ok(conn.write_all(&chunk))
                                {
                                    written += chunk.len() as u64;
                                    most.fetch_max(written, Ordering::Relaxed);
                                }
                            }
                        }
                        Answer::Trickle { .. } => {
                            while started.elapsed() < Duration::from_secs(120)
                                && ok(conn.write_all(b"x"))
                            {
                                written += 1;
                                most.fetch_max(written, Ordering::Relaxed);
                                thread::sleep(Duration::from_millis(100));
                            }
                        }
                    }
                });
            }
        });
        Self {
            port,
            requests,
            most_written,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn requests(&self) -> u64 {
        self.requests.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn most_written(&self) -> u64 {
        self.most_written.load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[test]
fn given_a_receiver_that_refuses_with_an_endless_body_then_the_batch_is_rejected_at_once_having_read_little_of_it()
 {
    let s = Scratch::new();
    let logs = s.logs();
    let rx = Hostile::start(Answer::Endless {
        status: 400,
        head: b"{\"error\":\"told to refuse\",\"detail\":\"".to_vec(),
        fill: b"x".to_vec(),
    });
    let sinks = format!(
        "  - name: out\n    http: {{url: \"{}\", batch: {{timeout: 200ms}}, requestTimeout: 60s}}\n",
        rx.url("/ingest")
    );
    let sidecar = start(&s, &spec(&logs, &sinks, "out"), &[]);
    append(&logs.join("app.log"), &lines(0..5, "info"));
    wait_until(
        "5 events rejected",
        Duration::from_secs(15),
        || {
            sidecar.metric(r#"servicelog_sink_dropped_total{sink="out",reason="rejected"}"#)
                == Some(5.0)
        },
        || format!("{}\n{}", metrics_text(&sidecar), sidecar.log_tail()),
    );
    thread::sleep(Duration::from_secs(1));
    assert_eq!(
        rx.requests(),
        1,
        "a 400 is not retried, however long its body"
    );
    // What the sidecar did not read sits in socket buffers until it closes the connection.
    let written = rx.most_written();
    eprintln!("the receiver got {written} bytes of its endless body out");
    assert!(
        written < 16 << 20,
        "the receiver got {written} bytes of its body out; the sidecar reads at most 64 KiB"
    );
    let log = fs::read_to_string(&sidecar.log).unwrap_or_default();
    assert!(
        log.contains("status 400") && log.contains("told to refuse"),
        "the log has the status and the start of the body:\n{}",
        sidecar.log_tail()
    );
}

#[test]
fn given_a_receiver_that_trickles_its_response_body_then_the_status_decides_within_the_body_deadline()
 {
    let s = Scratch::new();
    let logs = s.logs();
    let rx = Hostile::start(Answer::Trickle { status: 200 });
    let sinks = format!(
        "  - name: out\n    http: {{url: \"{}\", batch: {{timeout: 200ms}}, requestTimeout: 60s}}\n",
        rx.url("/ingest")
    );
    let sidecar = start(&s, &spec(&logs, &sinks, "out"), &[]);
    let sent = Instant::now();
    append(&logs.join("app.log"), &lines(0..5, "info"));
    wait_until(
        "5 events delivered, well before the 60 s request timeout",
        Duration::from_secs(15),
        || sidecar.metric(r#"servicelog_events_out_total{sink="out"}"#) == Some(5.0),
        || format!("{}\n{}", metrics_text(&sidecar), sidecar.log_tail()),
    );
    let took = sent.elapsed();
    assert_eq!(rx.requests(), 1, "a 2xx is not retried");
    assert!(
        took < Duration::from_secs(12),
        "delivered after {took:?}: a trickled body is cut off after 5 s"
    );
    assert_eq!(
        sidecar.metric(r#"servicelog_sink_retries_total{sink="out"}"#),
        None,
        "no retry"
    );
}

#[test]
fn given_elasticsearch_answering_errors_false_with_an_endless_item_list_then_the_batch_is_delivered_without_reading_the_items()
 {
    let s = Scratch::new();
    let logs = s.logs();
    let rx = Hostile::start(Answer::Endless {
        status: 200,
        head: br#"{"took":1,"errors":false,"items":["#.to_vec(),
        fill: br#"{"create":{"status":201}},"#.to_vec(),
    });
    let sinks = format!(
        "  - name: es\n    http: {{url: \"{}\", encoding: elasticsearch, \
         batch: {{timeout: 200ms}}, requestTimeout: 60s}}\n",
        rx.url("/_bulk")
    );
    let sidecar = start(&s, &spec(&logs, &sinks, "es"), &[]);
    append(&logs.join("app.log"), &lines(0..5, "info"));
    wait_until(
        "5 documents delivered",
        Duration::from_secs(15),
        || sidecar.metric(r#"servicelog_events_out_total{sink="es"}"#) == Some(5.0),
        || format!("{}\n{}", metrics_text(&sidecar), sidecar.log_tail()),
    );
    thread::sleep(Duration::from_secs(1));
    assert_eq!(rx.requests(), 1, "taken the first time");
    let written = rx.most_written();
    assert!(written < 16 << 20, "the receiver got {written} bytes out");
}
