//! The sidecar's hot path: parse + route of realistic JSON log lines through a realistic
//! rule set, per line, against a naive serde_json baseline.
//!
//! Run with `cargo bench -p servicelog-api --bench route`.

use std::{hint::black_box, time::Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use servicelog_api::{rules::Router, v1alpha1::ServiceLogSpec};

/// Ten rules in the spirit of DESIGN.md: level drops and routing, a sampled slow-request
/// rule, a message regex, equality and set tests on `status`, a dotted field, a tap.
const SPEC: &str = r#"
sources:
  - name: app
    file: {paths: ["/var/log/app/*.log"], format: json}
  - name: lf
    file: {paths: ["/var/log/lf/*.log"], format: logfmt}
sinks:
  - {name: console, stdout: {}}
  - {name: alerts, file: {path: /var/log/servicelog/alerts.log}}
  - {name: loki, http: {url: "http://loki.monitoring:3100/loki/api/v1/push", encoding: loki}}
  - {name: audit, file: {path: /var/log/servicelog/audit.log}}
rules:
  - name: admin-tap
    when: {fields: [{name: path, regex: "^/api/v1/admin"}]}
    to: [audit]
    continue: true
  - name: drop-debug
    when: {level: {below: info}}
    action: drop
  - name: alerts
    when: {level: {atLeast: error}}
    to: [alerts, loki]
  - name: checkout-warnings
    when: {level: {in: [warn]}, fields: [{name: service, equals: checkout}]}
    to: [alerts]
  - name: slow
    when:
      fields: [{name: latency_ms, greaterThan: 1000}]
    to: [loki]
    sample: 0.1
  - name: timeouts
    when: {message: {regex: "timeout|deadline exceeded"}}
    to: [alerts]
  - name: server-errors
    when: {fields: [{name: status, in: [500, 502, 503, 504]}]}
    to: [loki]
  - name: throttled
    when: {fields: [{name: status, equals: 429}]}
    to: [loki]
    rateLimit: {perSecond: 100}
  - name: deletes
    when: {fields: [{name: http.method, equals: DELETE}]}
    to: [audit]
  - name: money
    when:
      any:
        - {fields: [{name: service, in: [payments, billing]}]}
        - {fields: [{name: amount_cents, exists: true}]}
    to: [loki]
defaultTo: [console]
"#;

/// ~200-byte lines like the brief's, with varied levels, services, latencies, statuses and
/// the occasional nested object.
fn lines() -> Vec<Vec<u8>> {
    let levels = [
        "info", "info", "info", "INFO", "debug", "warn", "error", "info", "trace", "info",
    ];
    let services = ["checkout", "cart", "payments", "search", "checkout"];
    let msgs = [
        "request served",
        "cache miss",
        "upstream timeout",
        "request served",
        "db query",
    ];
    let paths = [
        "/api/v1/cart",
        "/api/v1/admin/users",
        "/api/v1/search",
        "/healthz",
    ];
    let statuses = [200, 200, 200, 404, 500, 200, 429, 201];
    (0..64)
        .map(|i| {
            let mut line = format!(
                r#"{{"ts":"2026-11-24T10:00:{:02}.123456Z","level":"{}","service":"{}","msg":"{}","user_id":{},"latency_ms":{},"path":"{}","status":{}"#,
                i % 60,
                levels[i % levels.len()],
                services[i % services.len()],
                msgs[i % msgs.len()],
                48213 + i * 7,
                if i % 9 == 0 { 1500 } else { 37 + i },
                paths[i % paths.len()],
                statuses[i % statuses.len()],
            );
            if i % 4 == 0 {
                line.push_str(r#","http":{"method":"GET","proto":"HTTP/1.1"}"#);
            }
            line.push('}');
            line.into_bytes()
        })
        .collect()
}

fn logfmt_lines() -> Vec<Vec<u8>> {
    lines()
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_slice(l).expect("bench line is JSON");
            let mut out = String::new();
            for (k, v) in v.as_object().expect("object") {
                match v {
                    serde_json::Value::String(s) if s.contains(' ') => {
                        out.push_str(&format!("{k}={s:?} "))
                    }
                    serde_json::Value::String(s) => out.push_str(&format!("{k}={s} ")),
                    serde_json::Value::Object(_) => {}
                    other => out.push_str(&format!("{k}={other} ")),
                }
            }
            out.into_bytes()
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let spec: ServiceLogSpec = serde_yaml::from_str(SPEC).expect("bench spec is YAML");
    let router = Router::compile(&spec).expect("bench spec compiles");
    let lines = lines();
    let logfmt = logfmt_lines();
    let avg = lines.iter().map(Vec::len).sum::<usize>() / lines.len();
    eprintln!("{} JSON lines, {avg} bytes on average", lines.len());
    let now = Instant::now();

    let mut group = c.benchmark_group("route");
    group.throughput(Throughput::Elements(lines.len() as u64));

    group.bench_function("json parse+route (10 rules)", |b| {
        b.iter(|| {
            for line in &lines {
                black_box(router.route(&router.parse(0, black_box(line)), now));
            }
        })
    });
    group.bench_function("json parse only", |b| {
        b.iter(|| {
            for line in &lines {
                black_box(router.parse(0, black_box(line)).level());
            }
        })
    });
    group.bench_function("logfmt parse+route (10 rules)", |b| {
        b.iter(|| {
            for line in &logfmt {
                black_box(router.route(&router.parse(1, black_box(line)), now));
            }
        })
    });
    group.bench_function("baseline serde_json Value + level check", |b| {
        b.iter(|| {
            for line in &lines {
                let v: Option<serde_json::Value> = serde_json::from_slice(black_box(line)).ok();
                let warn = v
                    .as_ref()
                    .and_then(|v| v.get("level"))
                    .and_then(serde_json::Value::as_str)
                    .is_some_and(|l| {
                        l.eq_ignore_ascii_case("warn") || l.eq_ignore_ascii_case("error")
                    });
                black_box(warn);
            }
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
