//! Transforms and `format: regex` against the real binary: events routed by rules with
//! transforms reach file sinks changed as each rule says, and only there.

mod common;

use std::{path::Path, time::Duration};

use common::*;
use serde_json::{Value, json};

fn json_lines(path: &Path) -> Vec<Value> {
    read_lines(path)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect()
}

const NGINX: &str = r#"^(?P<remote_addr>\S+) \S+ (?P<remote_user>\S+) \[(?P<time_local>[^\]]+)\] "(?:(?P<method>[A-Z]+) (?P<path>\S+) (?P<protocol>HTTP/[0-9.]+)|[^"]*)" (?P<status>\d{3}) (?P<body_bytes_sent>\d+) "(?P<http_referer>[^"]*)" "(?P<http_user_agent>[^"]*)""#;

#[test]
fn given_rules_with_transforms_when_events_are_routed_then_each_sink_gets_its_rules_copy() {
    let s = Scratch::new();
    let logs = s.logs();
    let out = |name: &str| s.path(&format!("out/{name}.log"));
    let config = s.path("servicelog.yaml");
    let spec = format!(
        r#"
sources:
  - name: app
    file: {{paths: ["{logs}/app/*.log"], format: json}}
  - name: access
    file:
      paths: ["{logs}/nginx/*.log"]
      format: regex
      regex: '{NGINX}'
sinks:
  - {{name: tap, file: {{path: "{tap}"}}}}
  - {{name: errors, file: {{path: "{errors}", encoding: json}}}}
  - {{name: access, file: {{path: "{access}", encoding: json}}}}
  - {{name: rest, file: {{path: "{rest}"}}}}
rules:
  - name: tap
    continue: true
    when: {{source: app}}
    to: [tap]
    transform:
      - {{set: {{field: env, value: prod}}}}
      - {{redact: {{pattern: email}}}}
  - name: errors
    when: {{level: {{atLeast: error}}}}
    to: [errors]
    transform:
      - {{remove: password}}
      - {{rename: {{from: msg, to: message}}}}
      - {{redact: {{field: card, pattern: creditCard}}}}
  - name: access
    when: {{source: access, fields: [{{name: status, greaterThan: 499}}]}}
    to: [access]
    transform:
      - {{set: {{field: route, value: "${{method}} ${{path}}"}}}}
defaultTo: [rest]
"#,
        logs = logs.display(),
        tap = out("tap").display(),
        errors = out("errors").display(),
        access = out("access").display(),
        rest = out("rest").display(),
    );
    write_config(&config, &manifest(&spec));
    let sidecar = Sidecar::start(
        &s,
        &["--config-file", config.to_str().expect("a UTF-8 path")],
        &[],
    );

    let app = [
        r#"{"level":"info","msg":"welcome ann@example.com","user":"ann"}"#,
        r#"{"level":"error","msg":"payment failed for bob@example.org","password":"hunter2","card":"4111-1111-1111-1111"}"#,
    ];
    let nginx = [
        r#"203.0.113.9 - - [07/Dec/2026:14:02:11 +0000] "GET /api/cart HTTP/1.1" 200 512 "-" "curl/8.5.0""#,
        r#"198.51.100.23 - alice [07/Dec/2026:14:02:12 +0000] "POST /api/checkout HTTP/2.0" 502 157 "-" "curl/8.5.0""#,
        "not an access log line",
    ];
    std::fs::create_dir_all(logs.join("app")).expect("app log dir");
    std::fs::create_dir_all(logs.join("nginx")).expect("nginx log dir");
    append(&logs.join("app/app.log"), &app.map(String::from));
    append(&logs.join("nginx/access.log"), &nginx.map(String::from));
    wait_until(
        "2 tap lines, 1 error, 1 access, 3 rest lines",
        Duration::from_secs(20),
        || {
            count_lines(&out("tap")) == 2
                && count_lines(&out("errors")) == 1
                && count_lines(&out("access")) == 1
                && count_lines(&out("rest")) == 3
        },
        || sidecar.log_tail(),
    );

    // The tap's raw sink: each json event as one JSON line, with the tap's changes only.
    let tap = json_lines(&out("tap"));
    assert_eq!(
        tap,
        [
            json!({"level":"info","msg":"welcome [REDACTED]","user":"ann","env":"prod"}),
            json!({"level":"error","msg":"payment failed for [REDACTED]","password":"hunter2",
                   "card":"4111-1111-1111-1111","env":"prod"}),
        ]
    );
    let errors = json_lines(&out("errors"));
    assert_eq!(errors.len(), 1);
    let mut e = errors[0].clone();
    let meta = e
        .as_object_mut()
        .and_then(|o| o.remove("_servicelog"))
        .expect("a json sink's line has _servicelog");
    assert_eq!(meta["source"], "app");
    assert_eq!(
        e,
        json!({"level":"error","message":"payment failed for bob@example.org","card":"[REDACTED]"}),
        "the errors rule's changes, not the tap's"
    );
    let access = json_lines(&out("access"));
    assert_eq!(access[0]["route"], "POST /api/checkout");
    assert_eq!(access[0]["status"], "502");
    assert_eq!(access[0]["remote_user"], "alice");
    assert_eq!(access[0]["_servicelog"]["source"], "access");
    // defaultTo gets the lines as read: the info line (the tap is a continue rule), the
    // 200 and the line the pattern does not match.
    assert_eq!(
        sidecar.metric(r#"servicelog_lines_unparsed_total{source="access"}"#),
        Some(1.0),
        "the line the pattern does not match is counted"
    );
    let mut rest = read_lines(&out("rest"));
    rest.sort();
    let mut want = vec![
        app[0].to_string(),
        nginx[0].to_string(),
        nginx[2].to_string(),
    ];
    want.sort();
    assert_eq!(rest, want);
}
