//! `format: regex` on real nginx and apache access-log lines: captures become fields that
//! conditions, levels and transforms see; a line the pattern does not match is a text
//! event; the source's fields are validated with their paths.

use std::time::Instant;

use serde_json::{Value, json};
use servicelog_api::{
    Router,
    rules::{FieldValue, Fields},
    v1alpha1::ServiceLogSpec,
    validate,
};

/// nginx's `combined` log format (and apache's `%h %l %u %t "%r" %>s %b "%{Referer}i"
/// "%{User-agent}i"`): the request may be `-` or garbage for a 400, bytes `-` in apache.
const COMBINED: &str = r#"^(?P<remote_addr>\S+) (?P<ident>\S+) (?P<remote_user>\S+) \[(?P<time_local>[^\]]+)\] "(?:(?P<method>[A-Z]+) (?P<path>\S+) (?P<protocol>HTTP/[0-9.]+)|[^"]*)" (?P<status>\d{3}) (?P<body_bytes_sent>\d+|-) "(?P<http_referer>[^"]*)" "(?P<http_user_agent>[^"]*)""#;

fn spec(yaml: &str) -> ServiceLogSpec {
    serde_yaml::from_str(yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"))
}

fn router() -> Router {
    let yaml = format!(
        r#"
sources:
  - name: access
    file:
      paths: [/var/log/nginx/access.log]
      format: regex
      regex: '{COMBINED}'
sinks: [{{name: errors, stdout: {{}}}}, {{name: rest, stdout: {{}}}}]
rules:
  - name: server-errors
    when: {{fields: [{{name: status, greaterThan: 499}}]}}
    to: [errors]
  - name: bots
    when: {{fields: [{{name: http_user_agent, regex: "(?i)bot"}}]}}
    action: drop
defaultTo: [rest]
"#
    );
    Router::compile(&spec(&yaml)).unwrap_or_else(|e| panic!("{e}"))
}

fn to_json(fields: &Fields<'_>) -> Value {
    let mut map = serde_json::Map::new();
    for (k, v) in fields.members() {
        let v = match v {
            FieldValue::Json(raw) => serde_json::from_slice(raw).expect("member is JSON"),
            FieldValue::Text(t) => Value::String(t.to_string()),
            FieldValue::Tree(v) => v.clone(),
        };
        map.insert(k.to_string(), v);
    }
    Value::Object(map)
}

const NGINX: [&str; 4] = [
    r#"203.0.113.9 - - [07/Dec/2026:14:02:11 +0000] "GET /api/cart?id=42 HTTP/1.1" 200 512 "https://shop.example.com/" "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0""#,
    r#"198.51.100.23 - alice [07/Dec/2026:14:02:12 +0000] "POST /api/checkout HTTP/2.0" 502 157 "-" "curl/8.5.0""#,
    r#"192.0.2.77 - - [07/Dec/2026:14:02:13 +0000] "GET /robots.txt HTTP/1.1" 404 153 "-" "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)""#,
    r#"203.0.113.5 - - [07/Dec/2026:14:02:14 +0000] "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" 400 157 "-" "-""#,
];

#[test]
fn given_nginx_combined_lines_when_parsed_then_captures_are_fields_that_rules_route_on() {
    let r = router();
    let route = |line: &str| {
        let e = r.parse(0, line.as_bytes());
        assert!(!e.is_text(), "the pattern matches {line}");
        r.route(&e, Instant::now())
    };
    let errors = r.sink_index("errors").unwrap();
    let rest = r.sink_index("rest").unwrap();
    assert_eq!(route(NGINX[0]).sinks.iter().collect::<Vec<_>>(), [rest]);
    assert_eq!(route(NGINX[1]).sinks.iter().collect::<Vec<_>>(), [errors]);
    assert!(
        route(NGINX[2]).is_dropped(),
        "the Googlebot line is dropped"
    );
    assert_eq!(route(NGINX[3]).sinks.iter().collect::<Vec<_>>(), [rest]);

    let e = r.parse(0, NGINX[1].as_bytes());
    assert_eq!(
        to_json(&r.fields(&e)),
        json!({"remote_addr":"198.51.100.23","ident":"-","remote_user":"alice",
               "time_local":"07/Dec/2026:14:02:12 +0000","method":"POST",
               "path":"/api/checkout","protocol":"HTTP/2.0","status":"502",
               "body_bytes_sent":"157","http_referer":"-","http_user_agent":"curl/8.5.0"})
    );
    let e = r.parse(0, NGINX[3].as_bytes());
    let v = to_json(&r.fields(&e));
    assert!(
        v.get("method").is_none() && v["status"] == "400",
        "a capture that took no part is absent: {v}"
    );
}

#[test]
fn given_apache_combined_lines_when_parsed_then_the_same_pattern_reads_them() {
    let r = router();
    let line = r#"127.0.0.1 - frank [10/Oct/2000:13:55:36 -0700] "GET /apache_pb.gif HTTP/1.0" 200 2326 "http://www.example.com/start.html" "Mozilla/4.08 [en] (Win98; I ;Nav)""#;
    let v = to_json(&r.fields(&r.parse(0, line.as_bytes())));
    assert_eq!(v["remote_user"], "frank");
    assert_eq!(v["body_bytes_sent"], "2326");
    assert_eq!(v["http_user_agent"], "Mozilla/4.08 [en] (Win98; I ;Nav)");
    let no_body = r#"10.1.2.3 - - [10/Oct/2000:13:55:37 -0700] "HEAD / HTTP/1.1" 304 - "-" "check_http/v2.3.3""#;
    let v = to_json(&r.fields(&r.parse(0, no_body.as_bytes())));
    assert_eq!(v["body_bytes_sent"], "-");
    assert_eq!(v["method"], "HEAD");
}

#[test]
fn given_a_line_the_pattern_does_not_match_then_it_is_a_text_event() {
    let r = router();
    let line = "2026/12/07 14:02:15 [error] 31#31: *1 connect() failed (111: Connection refused)";
    let e = r.parse(0, line.as_bytes());
    assert!(e.is_text());
    assert_eq!(to_json(&r.fields(&e)), json!({ "message": line }));
    assert_eq!(
        r.route(&e, Instant::now()).sinks.iter().collect::<Vec<_>>(),
        [r.sink_index("rest").unwrap()]
    );
}

#[test]
fn given_a_capture_named_level_then_it_is_the_events_level() {
    let r = Router::compile(&spec(
        r#"
sources:
  - name: app
    file: {paths: [/var/log/app/*.log], format: regex, regex: '^(?P<ts>\S+) (?P<level>\w+) (?P<msg>.*)$'}
sinks: [{name: out, stdout: {}}]
rules: [{name: warn, when: {level: {atLeast: warn}}, to: [out]}]
"#,
    ))
    .unwrap();
    let e = r.parse(0, b"2026-12-07T14:02:15Z WARN disk 91% full");
    assert_eq!(e.level(), Some(servicelog_api::v1alpha1::Level::Warn));
    assert_eq!(e.message().as_deref(), Some("disk 91% full"));
    assert!(!r.route(&e, Instant::now()).is_dropped());
}

fn errors(yaml: &str) -> Vec<String> {
    match validate(&spec(yaml)) {
        Ok(()) => Vec::new(),
        Err(e) => e.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn given_bad_regex_sources_then_each_error_names_its_field_path() {
    let got = errors(
        r#"
sources:
  - {name: a, file: {paths: [/var/log/a/*.log], format: regex}}
  - {name: b, file: {paths: [/var/log/b/*.log], format: json, regex: '(?P<x>.)'}}
  - {name: c, file: {paths: [/var/log/c/*.log], format: regex, regex: '(\d+) (\w+)'}}
  - {name: d, file: {paths: [/var/log/d/*.log], format: regex, regex: '(?P<x>'}}
sinks: [{name: out, stdout: {}}]
"#,
    );
    let want = [
        r"spec.sources[0].file.regex: format: regex needs a regex with named captures, e.g. (?P<status>\d{3})",
        "spec.sources[1].file.regex: applies to format: regex only",
        r"spec.sources[2].file.regex: has no named capture: name the parts that become fields, e.g. (?P<status>\d{3})",
        "spec.sources[3].file.regex: regex parse error: unclosed group at offset 0",
    ];
    assert_eq!(got, want, "\ngot:\n{}", got.join("\n"));
}

#[test]
fn given_the_nginx_example_then_it_validates_and_routes_a_5xx_with_its_transforms() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/nginx-access.yaml"
    ))
    .expect("examples/nginx-access.yaml");
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).expect("the example is YAML");
    let spec: ServiceLogSpec =
        serde_yaml::from_value(doc["spec"].clone()).expect("the example's spec");
    let r = Router::compile(&spec).unwrap_or_else(|e| panic!("the example is valid: {e}"));
    let e = r.parse(0, NGINX[1].as_bytes());
    let mut t = Vec::new();
    let d = r.route_transformed(&e, Instant::now(), Some(&mut t));
    assert_eq!(
        d.sinks.iter().collect::<Vec<_>>(),
        [r.sink_index("loki").unwrap()]
    );
    let mut fields = r.fields(&e);
    r.transform(t[0].0, 0, &mut fields);
    let v = to_json(&fields);
    assert_eq!(v["route"], "POST /api/checkout");
    assert!(v.get("remote_addr").is_none(), "{v}");
}
