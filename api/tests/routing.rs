//! Routing behaviour, table by table: every matcher, every action, every format.
//!
//! Given a spec (inline YAML), when a line of a source is parsed and routed, then the
//! decision is the expected one. Each table row names its case so a failure says which.

use std::time::{Duration, Instant};

use servicelog_api::{
    rules::{Decision, DropReason, Router, SinkSet},
    v1alpha1::{Level, ServiceLogSpec},
};

fn compile(yaml: &str) -> Router {
    let spec: ServiceLogSpec = serde_yaml::from_str(yaml).expect("fixture is valid YAML");
    Router::compile(&spec).unwrap_or_else(|e| panic!("fixture should compile, got:\n{e}"))
}

const SOURCES: &str = r#"
sources:
  - name: app
    file: {paths: ["/var/log/app/*.log"], format: json}
  - name: lf
    file: {paths: ["/var/log/lf/*.log"], format: logfmt}
  - name: txt
    file: {paths: ["/var/log/txt/*.log"], format: text}
  - name: custom
    file: {paths: ["/var/log/custom/*.log"], format: json}
    levelField: sev
    messageField: text
  - name: ecs
    file: {paths: ["/var/log/ecs/*.log"], format: json}
    levelField: log.level
  - name: sys
    syslog: {port: 5514}
"#;

/// One rule `r` routing what `when` matches to `hit`; everything else goes to `miss`.
fn when_router(when: &str) -> Router {
    compile(&format!(
        "{SOURCES}
sinks:
  - {{name: hit, stdout: {{}}}}
  - {{name: miss, stdout: {{}}}}
rules:
  - name: r
    when: {when}
    to: [hit]
defaultTo: [miss]
"
    ))
}

fn route(r: &Router, source: &str, line: &[u8]) -> Decision {
    let idx = r.source_index(source).expect("source is declared");
    r.route(&r.parse(idx, line), Instant::now())
}

/// Rows of (source, line, should match).
fn check(when: &str, rows: &[(&str, &str, bool)]) {
    let r = when_router(when);
    let hit = r.sink_index("hit").expect("sink hit is declared");
    for (source, line, want) in rows {
        let d = route(&r, source, line.as_bytes());
        assert_eq!(
            d.sinks.contains(hit),
            *want,
            "when {when}: {source} line {line} should {}match (decision {d:?})",
            if *want { "" } else { "not " }
        );
    }
}

#[test]
fn level_at_least_with_aliases_case_and_candidates() {
    check(
        "{level: {atLeast: warn}}",
        &[
            ("app", r#"{"level":"warn"}"#, true),
            ("app", r#"{"level":"WARNING"}"#, true),
            ("app", r#"{"level":"Error"}"#, true),
            ("app", r#"{"level":"info"}"#, false),
            ("app", r#"{"level":"notice"}"#, false),
            ("app", r#"{"severity":"crit"}"#, true),
            ("app", r#"{"lvl":"ERR"}"#, true),
            ("app", r#"{"lvl":"emerg"}"#, true),
            ("app", r#"{"level":"panic"}"#, true),
            ("app", r#"{"level":"alert"}"#, true),
            ("app", r#"{"level":"critical"}"#, true),
            // The first present candidate is the level, even when it is not recognised.
            ("app", r#"{"level":"info","severity":"error"}"#, false),
            ("app", r#"{"level":"verbose","severity":"error"}"#, false),
            ("app", r#"{"severity":"error","lvl":"debug"}"#, true),
            // No level, or not a string: matches no level condition.
            ("app", r#"{"msg":"x"}"#, false),
            ("app", r#"{"level":50}"#, false),
            ("app", r#"{"level":null}"#, false),
            ("app", r#"{"level":{"name":"error"}}"#, false),
            ("app", r#"{"level":"\u0065rror"}"#, true),
            ("lf", "level=error msg=x", true),
            ("lf", r#"level="WARN" msg=x"#, true),
            ("lf", "level=info msg=x", false),
            ("txt", "ERROR something broke", false),
            ("sys", "<11>error", false),
        ],
    );
}

#[test]
fn level_below_in_and_ranges() {
    check(
        "{level: {below: info}}",
        &[
            ("app", r#"{"level":"debug"}"#, true),
            ("app", r#"{"level":"TRACE"}"#, true),
            ("app", r#"{"level":"info"}"#, false),
            ("app", r#"{"level":"error"}"#, false),
            ("app", r#"{"msg":"no level"}"#, false),
        ],
    );
    check(
        "{level: {in: [info, error]}}",
        &[
            ("app", r#"{"level":"notice"}"#, true),
            ("app", r#"{"level":"informational"}"#, true),
            ("app", r#"{"level":"err"}"#, true),
            ("app", r#"{"level":"warn"}"#, false),
            ("app", r#"{"level":"fatal"}"#, false),
        ],
    );
    check(
        "{level: {atLeast: debug, below: warn}}",
        &[
            ("app", r#"{"level":"trace"}"#, false),
            ("app", r#"{"level":"debug"}"#, true),
            ("app", r#"{"level":"info"}"#, true),
            ("app", r#"{"level":"warn"}"#, false),
        ],
    );
}

#[test]
fn level_field_overrides_the_candidates() {
    check(
        "{level: {atLeast: error}}",
        &[
            ("custom", r#"{"sev":"error","level":"info"}"#, true),
            ("custom", r#"{"level":"error"}"#, false),
            ("ecs", r#"{"log":{"level":"error"}}"#, true),
            ("ecs", r#"{"log.level":"error"}"#, true),
            ("ecs", r#"{"level":"error"}"#, false),
        ],
    );
}

#[test]
fn syslog_events_take_an_explicit_level() {
    let r = when_router("{level: {atLeast: error}, source: sys}");
    let sys = r.source_index("sys").unwrap();
    let hit = r.sink_index("hit").unwrap();
    let now = Instant::now();
    let ev = r.event_with_level(sys, b"<11>disk failed", Some(Level::Error));
    assert!(ev.is_text());
    assert_eq!(ev.level(), Some(Level::Error));
    assert!(r.route(&ev, now).sinks.contains(hit));
    let ev = r.event_with_level(sys, b"<14>all good", Some(Level::Info));
    assert!(!r.route(&ev, now).sinks.contains(hit));
    let ev = r.event_with_message(sys, b"<11>1 - host app - - - boom", b"boom", None);
    assert_eq!(ev.message().as_deref(), Some("boom"));
    assert!(!r.route(&ev, now).sinks.contains(hit));
}

#[test]
fn source_condition() {
    check(
        "{source: lf}",
        &[
            ("lf", "a=1", true),
            // A line that is not logfmt still comes from the source.
            ("lf", "not logfmt at all", true),
            ("app", r#"{"a":1}"#, false),
            ("txt", "a=1", false),
        ],
    );
}

#[test]
fn message_regex() {
    check(
        r#"{message: {regex: "timeout|refused"}}"#,
        &[
            ("app", r#"{"msg":"connection refused"}"#, true),
            ("app", r#"{"message":"read timeout"}"#, true),
            ("app", r#"{"msg":"ok","message":"timeout"}"#, false),
            ("app", r#"{"msg":"ok"}"#, false),
            ("app", r#"{"text":"timeout"}"#, false),
            ("app", r#"{"msg":"tim\u0065out"}"#, true),
            ("custom", r#"{"text":"timeout","msg":"ok"}"#, true),
            ("custom", r#"{"msg":"timeout"}"#, false),
            ("lf", r#"msg="dial timeout" a=1"#, true),
            ("lf", "msg=ok a=1", false),
            ("txt", "upstream timeout after 3s", true),
            ("txt", "fine", false),
            // Not JSON after all: the whole line is the message.
            ("app", r#"{"msg":"ok" timeout"#, true),
        ],
    );
    check(
        r#"{message: {regex: "(?i)^conn\\b"}}"#,
        &[
            ("app", r#"{"msg":"CONN reset"}"#, true),
            ("app", r#"{"msg":"reconn reset"}"#, false),
        ],
    );
    // A regex sees the unescaped text: a tab escape matches \t.
    check(
        r#"{message: {regex: "a\tb"}}"#,
        &[
            ("app", r#"{"msg":"a\tb"}"#, true),
            ("app", r#"{"msg":"a b"}"#, false),
        ],
    );
}

#[test]
fn field_equals_is_type_aware() {
    check(
        "{fields: [{name: service, equals: checkout}]}",
        &[
            ("app", r#"{"service":"checkout"}"#, true),
            ("app", r#"{"service":"cart"}"#, false),
            ("app", r#"{"service":null}"#, false),
            ("app", r#"{"other":"checkout"}"#, false),
            ("lf", "service=checkout", true),
            ("lf", r#"service="checkout""#, true),
        ],
    );
    check(
        "{fields: [{name: status, equals: 500}]}",
        &[
            ("app", r#"{"status":500}"#, true),
            ("app", r#"{"status":500.0}"#, true),
            ("app", r#"{"status":5e2}"#, true),
            ("app", r#"{"status":"500"}"#, false),
            ("app", r#"{"status":501}"#, false),
            ("lf", "status=500", true),
            ("lf", "status=500x", false),
        ],
    );
    check(
        r#"{fields: [{name: status, equals: "500"}]}"#,
        &[
            ("app", r#"{"status":"500"}"#, true),
            ("app", r#"{"status":500}"#, false),
            ("lf", "status=500", true),
        ],
    );
    check(
        "{fields: [{name: ok, equals: true}]}",
        &[
            ("app", r#"{"ok":true}"#, true),
            ("app", r#"{"ok":false}"#, false),
            ("app", r#"{"ok":"true"}"#, false),
            ("lf", "ok=true", true),
            ("lf", "ok a=1", true),
            ("lf", "ok=false", false),
        ],
    );
}

#[test]
fn field_in() {
    check(
        r#"{fields: [{name: status, in: [500, 503, "bad", false]}]}"#,
        &[
            ("app", r#"{"status":503}"#, true),
            ("app", r#"{"status":"bad"}"#, true),
            ("app", r#"{"status":false}"#, true),
            ("app", r#"{"status":404}"#, false),
            ("app", r#"{"status":"503"}"#, false),
            ("app", r#"{}"#, false),
        ],
    );
}

#[test]
fn field_regex() {
    check(
        r#"{fields: [{name: path, regex: "^/api/"}]}"#,
        &[
            ("app", r#"{"path":"/api/v1/cart"}"#, true),
            ("app", r#"{"path":"/web"}"#, false),
            ("app", r#"{"path":null}"#, false),
            ("app", r#"{"path":["/api/"]}"#, false),
            ("app", r#"{"path":"\/api\/x"}"#, true),
            ("lf", "path=/api/x", true),
        ],
    );
    check(
        r#"{fields: [{name: status, regex: "^5\\d\\d$"}]}"#,
        &[
            ("app", r#"{"status":503}"#, true),
            ("app", r#"{"status":"503"}"#, true),
            ("app", r#"{"status":403}"#, false),
        ],
    );
}

#[test]
fn field_exists() {
    check(
        "{fields: [{name: trace_id, exists: true}]}",
        &[
            ("app", r#"{"trace_id":"abc"}"#, true),
            ("app", r#"{"trace_id":null}"#, true),
            ("app", r#"{"trace_id":{}}"#, true),
            ("app", r#"{"span_id":"abc"}"#, false),
            ("lf", "trace_id=abc", true),
            ("lf", "trace_id a=1", true),
            ("txt", "trace_id=abc", false),
        ],
    );
    check(
        "{fields: [{name: trace_id, exists: false}]}",
        &[
            ("app", r#"{"trace_id":"abc"}"#, false),
            ("app", r#"{"span_id":"abc"}"#, true),
            ("txt", "anything", true),
        ],
    );
}

#[test]
fn field_greater_and_less_than() {
    check(
        "{fields: [{name: latency_ms, greaterThan: 1000}]}",
        &[
            ("app", r#"{"latency_ms":1500}"#, true),
            ("app", r#"{"latency_ms":1000}"#, false),
            ("app", r#"{"latency_ms":1000.5}"#, true),
            ("app", r#"{"latency_ms":1e4}"#, true),
            ("app", r#"{"latency_ms":"1500"}"#, true),
            ("app", r#"{"latency_ms":"1500ms"}"#, false),
            ("app", r#"{"latency_ms":true}"#, false),
            ("app", r#"{"latency_ms":null}"#, false),
            ("app", r#"{}"#, false),
            ("lf", "latency_ms=1500", true),
            ("lf", "latency_ms=900", false),
        ],
    );
    check(
        "{fields: [{name: free, lessThan: -0.5}]}",
        &[
            ("app", r#"{"free":-1}"#, true),
            ("app", r#"{"free":-0.5}"#, false),
            ("app", r#"{"free":0}"#, false),
        ],
    );
}

#[test]
fn dotted_field_names() {
    check(
        "{fields: [{name: http.status, equals: 500}]}",
        &[
            ("app", r#"{"http":{"method":"GET","status":500}}"#, true),
            ("app", r#"{"http.status":500}"#, true),
            ("app", r#"{"http":{"status":"500"}}"#, false),
            ("app", r#"{"status":500}"#, false),
            ("app", r#"{"http":500}"#, false),
            ("app", r#"{"http":[{"status":500}]}"#, false),
            ("app", r#"{"x":{"http":{"status":500}}}"#, false),
            ("lf", "http.status=500", true),
        ],
    );
    check(
        "{fields: [{name: a.b.c, exists: true}, {name: a.b, exists: true}]}",
        &[
            ("app", r#"{"a":{"b":{"c":1}}}"#, true),
            ("app", r#"{"a":{"b":{"d":1}}}"#, false),
            ("app", r#"{"a":{"x":[1,{"b":2}],"b":{"c":null}}}"#, true),
        ],
    );
}

#[test]
fn text_events_only_have_a_message() {
    check(
        r#"{fields: [{name: message, regex: "^hello"}]}"#,
        &[
            ("txt", "hello world", true),
            ("txt", "say hello", false),
            ("app", "hello, not json", true),
            ("app", r#"{"message":"hello"}"#, true),
            ("app", r#"{"msg":"hello"}"#, false),
        ],
    );
    check(
        r#"{fields: [{name: msg, exists: true}]}"#,
        &[("txt", "hello", false), ("app", r#"{"msg":"x"}"#, true)],
    );
}

#[test]
fn any_is_or_and_fields_are_and() {
    let any = "{any: [{level: {atLeast: error}}, {fields: [{name: status, greaterThan: 499}]}]}";
    check(
        any,
        &[
            ("app", r#"{"level":"error","status":200}"#, true),
            ("app", r#"{"level":"info","status":503}"#, true),
            ("app", r#"{"level":"info","status":200}"#, false),
            ("app", r#"{}"#, false),
        ],
    );
    let and = "{level: {atLeast: warn}, source: app, message: {regex: db}, fields: [{name: service, equals: checkout}, {name: retry, exists: false}]}";
    check(
        and,
        &[
            (
                "app",
                r#"{"level":"warn","msg":"db down","service":"checkout"}"#,
                true,
            ),
            (
                "app",
                r#"{"level":"info","msg":"db down","service":"checkout"}"#,
                false,
            ),
            (
                "app",
                r#"{"level":"warn","msg":"cache","service":"checkout"}"#,
                false,
            ),
            (
                "app",
                r#"{"level":"warn","msg":"db down","service":"cart"}"#,
                false,
            ),
            (
                "app",
                r#"{"level":"warn","msg":"db down","service":"checkout","retry":1}"#,
                false,
            ),
            (
                "custom",
                r#"{"sev":"warn","text":"db down","service":"checkout"}"#,
                false,
            ),
        ],
    );
    let nested = "{source: app, any: [{any: [{fields: [{name: a, equals: 1}]}, {fields: [{name: b, equals: 1}]}]}, {level: {in: [fatal]}}]}";
    check(
        nested,
        &[
            ("app", r#"{"a":1}"#, true),
            ("app", r#"{"b":1}"#, true),
            ("app", r#"{"level":"fatal"}"#, true),
            ("app", r#"{"a":2,"b":2,"level":"error"}"#, false),
            ("lf", "a=1", false),
        ],
    );
    check("{}", &[("app", "{}", true), ("txt", "anything", true)]);
}

const ACTIONS: &str = r#"
sources:
  - name: app
    file: {paths: ["/var/log/app/*.log"], format: json}
sinks:
  - {name: console, stdout: {}}
  - {name: audit, file: {path: /var/log/servicelog/audit.log}}
  - {name: loki, http: {url: "http://loki:3100/loki/api/v1/push", encoding: loki}}
"#;

fn decide(r: &Router, line: &str, now: Instant) -> Decision {
    r.route(&r.parse(0, line.as_bytes()), now)
}

fn sinks(r: &Router, names: &[&str]) -> SinkSet {
    names
        .iter()
        .map(|n| r.sink_index(n).expect("sink is declared"))
        .collect()
}

#[test]
fn drop_to_and_default() {
    let r = compile(&format!(
        "{ACTIONS}
rules:
  - name: drop-debug
    when: {{level: {{below: info}}}}
    action: drop
  - name: errors
    when: {{level: {{atLeast: error}}}}
    to: [loki, audit]
defaultTo: [console]
"
    ));
    let now = Instant::now();
    assert_eq!(
        decide(&r, r#"{"level":"debug"}"#, now),
        Decision {
            sinks: SinkSet::EMPTY,
            rule: Some(0),
            drop: Some(DropReason::Rule)
        }
    );
    assert_eq!(
        decide(&r, r#"{"level":"error"}"#, now),
        Decision {
            sinks: sinks(&r, &["loki", "audit"]),
            rule: Some(1),
            drop: None
        }
    );
    assert_eq!(
        decide(&r, r#"{"level":"info"}"#, now),
        Decision {
            sinks: sinks(&r, &["console"]),
            rule: None,
            drop: None
        }
    );
    assert_eq!(r.rule_names(), ["drop-debug", "errors"]);
}

#[test]
fn empty_default_drops_with_no_route() {
    let r = compile(&format!(
        "{ACTIONS}
rules:
  - name: errors
    when: {{level: {{atLeast: error}}}}
    to: [loki]
"
    ));
    let d = decide(&r, r#"{"level":"info"}"#, Instant::now());
    assert_eq!(
        d,
        Decision {
            sinks: SinkSet::EMPTY,
            rule: None,
            drop: Some(DropReason::NoRoute)
        }
    );
    assert!(d.is_dropped());
    assert_eq!(d.drop.map(DropReason::as_str), Some("no_route"));
}

#[test]
fn continue_adds_sinks_and_keeps_evaluating() {
    let r = compile(&format!(
        "{ACTIONS}
rules:
  - name: tap
    when: {{fields: [{{name: audit, equals: true}}]}}
    to: [audit]
    continue: true
  - name: drop-debug
    when: {{level: {{below: info}}}}
    action: drop
  - name: errors
    when: {{level: {{atLeast: error}}}}
    to: [loki]
defaultTo: [console]
"
    ));
    let now = Instant::now();
    // Tap + deciding rule.
    assert_eq!(
        decide(&r, r#"{"audit":true,"level":"error"}"#, now),
        Decision {
            sinks: sinks(&r, &["audit", "loki"]),
            rule: Some(2),
            drop: None
        }
    );
    // Tap + default: a continue rule does not keep an event from defaultTo.
    assert_eq!(
        decide(&r, r#"{"audit":true,"level":"info"}"#, now),
        Decision {
            sinks: sinks(&r, &["audit", "console"]),
            rule: None,
            drop: None
        }
    );
    // Tap + drop: the tap's copy still goes out, so nothing is dropped.
    assert_eq!(
        decide(&r, r#"{"audit":true,"level":"debug"}"#, now),
        Decision {
            sinks: sinks(&r, &["audit"]),
            rule: Some(1),
            drop: None
        }
    );
    assert_eq!(
        decide(&r, r#"{"level":"debug"}"#, now),
        Decision {
            sinks: SinkSet::EMPTY,
            rule: Some(1),
            drop: Some(DropReason::Rule)
        }
    );
}

#[test]
fn drop_with_continue_is_final() {
    let r = compile(&format!(
        "{ACTIONS}
rules:
  - name: drop-all
    action: drop
    continue: true
  - name: all
    to: [loki]
defaultTo: [console]
"
    ));
    assert_eq!(
        decide(&r, r#"{"level":"error"}"#, Instant::now()),
        Decision {
            sinks: SinkSet::EMPTY,
            rule: Some(0),
            drop: Some(DropReason::Rule)
        }
    );
}

#[test]
fn sample_zero_and_one() {
    let r = compile(&format!(
        "{ACTIONS}
rules:
  - name: never
    when: {{fields: [{{name: k, equals: never}}]}}
    to: [loki]
    sample: 0
  - name: always
    when: {{fields: [{{name: k, equals: always}}]}}
    to: [loki]
    sample: 1
  - name: never-tap
    when: {{fields: [{{name: k, equals: tap}}]}}
    to: [audit]
    sample: 0
    continue: true
defaultTo: [console]
"
    ));
    let now = Instant::now();
    for _ in 0..100 {
        // Losing the draw: decided by the rule, dropped, no fall-through to defaultTo.
        assert_eq!(
            decide(&r, r#"{"k":"never"}"#, now),
            Decision {
                sinks: SinkSet::EMPTY,
                rule: Some(0),
                drop: Some(DropReason::Sampled)
            }
        );
        assert_eq!(
            decide(&r, r#"{"k":"always"}"#, now),
            Decision {
                sinks: sinks(&r, &["loki"]),
                rule: Some(1),
                drop: None
            }
        );
        // A continue rule that loses the draw just does not copy.
        assert_eq!(
            decide(&r, r#"{"k":"tap"}"#, now),
            Decision {
                sinks: sinks(&r, &["console"]),
                rule: None,
                drop: None
            }
        );
    }
    assert_eq!(DropReason::Sampled.as_str(), "sampled");
}

#[test]
fn rate_limit_follows_the_clock() {
    let r = compile(&format!(
        "{ACTIONS}
rules:
  - name: limited
    to: [loki]
    rateLimit: {{perSecond: 2}}
defaultTo: [console]
"
    ));
    let t0 = Instant::now();
    let line = r#"{"level":"info"}"#;
    let limited = Decision {
        sinks: SinkSet::EMPTY,
        rule: Some(0),
        drop: Some(DropReason::RateLimited),
    };
    let routed = Decision {
        sinks: sinks(&r, &["loki"]),
        rule: Some(0),
        drop: None,
    };
    // Burst of 2, then limited.
    assert_eq!(decide(&r, line, t0), routed);
    assert_eq!(decide(&r, line, t0), routed);
    assert_eq!(decide(&r, line, t0), limited);
    // Half a second later one token has come back.
    let t1 = t0 + Duration::from_millis(500);
    assert_eq!(decide(&r, line, t1), routed);
    assert_eq!(decide(&r, line, t1), limited);
    // After a long pause the bucket is full again, not fuller.
    let t2 = t0 + Duration::from_secs(60);
    assert_eq!(decide(&r, line, t2), routed);
    assert_eq!(decide(&r, line, t2), routed);
    assert_eq!(decide(&r, line, t2), limited);
    assert_eq!(DropReason::RateLimited.as_str(), "rate_limited");
}

#[test]
fn sample_runs_before_rate_limit() {
    let r = compile(&format!(
        "{ACTIONS}
rules:
  - name: both
    to: [loki]
    sample: 0
    rateLimit: {{perSecond: 1}}
"
    ));
    let d = decide(&r, "{}", Instant::now());
    assert_eq!(d.drop, Some(DropReason::Sampled));
}

#[test]
fn formats_and_malformed_lines() {
    let r = when_router("{}");
    let app = r.source_index("app").unwrap();
    let lf = r.source_index("lf").unwrap();
    let txt = r.source_index("txt").unwrap();

    let ev = r.parse(app, br#"{"level":"WARN","msg":"disk \"/\" full","n":1}"#);
    assert!(!ev.is_text());
    assert_eq!(ev.level(), Some(Level::Warn));
    assert_eq!(ev.message().as_deref(), Some(r#"disk "/" full"#));
    assert_eq!(ev.source(), app);

    let ev = r.parse(lf, br#"ts=1 level=error msg="a \"b\"""#);
    assert!(!ev.is_text());
    assert_eq!(ev.level(), Some(Level::Error));
    assert_eq!(ev.message().as_deref(), Some(r#"a "b""#));

    let ev = r.parse(txt, br#"{"level":"error","msg":"json in a text source"}"#);
    assert!(ev.is_text());
    assert_eq!(ev.level(), None);
    assert_eq!(
        ev.message().as_deref(),
        Some(r#"{"level":"error","msg":"json in a text source"}"#)
    );

    let malformed: &[(usize, &[u8])] = &[
        (app, br#"{"level":"error","msg":"truncated"#),
        (app, br#"["level","error"]"#),
        (app, b"\"error\""),
        (app, b"plain text"),
        (app, b""),
        (app, b"{\"level\":\"error\",\"msg\":\"\xff\xfe\"}"),
        (app, br#"{"level":"error"} trailing"#),
        (lf, b"no pairs here"),
        (lf, br#"level="error msg=unterminated"#),
        (lf, b"level=error msg=\xff"),
    ];
    for (source, line) in malformed {
        let ev = r.parse(*source, line);
        assert!(
            ev.is_text(),
            "{:?} should be a text event",
            String::from_utf8_lossy(line)
        );
        assert_eq!(ev.level(), None, "a text event has no level");
        assert_eq!(ev.line(), *line);
        assert_eq!(
            ev.message().map(|m| m.into_owned()),
            Some(String::from_utf8_lossy(line).into_owned())
        );
    }

    // A source index the router does not have: a text event, routed by default rules.
    let ev = r.parse(99, b"{}");
    assert!(ev.is_text());
    assert_eq!(r.route(&ev, Instant::now()).rule, Some(0));
}

#[test]
fn message_accessor_variants() {
    let r = when_router("{}");
    let app = r.source_index("app").unwrap();
    let custom = r.source_index("custom").unwrap();
    let cases: &[(usize, &str, Option<&str>)] = &[
        (app, r#"{"msg":"a"}"#, Some("a")),
        (app, r#"{"message":"b"}"#, Some("b")),
        (app, r#"{"message":"b","msg":"a"}"#, Some("a")),
        (app, r#"{"msg":42}"#, Some("42")),
        (app, r#"{"msg":null}"#, None),
        (app, r#"{"msg":{"x":1}}"#, None),
        (app, r#"{"x":1}"#, None),
        (app, r#"{"msg":"\ud83d\ude00 \u00e9"}"#, Some("😀 é")),
        (custom, r#"{"text":"c","msg":"a"}"#, Some("c")),
    ];
    for (source, line, want) in cases {
        let ev = r.parse(*source, line.as_bytes());
        assert_eq!(ev.message().as_deref(), *want, "message of {line}");
    }
}

#[test]
fn events_from_an_older_router_are_reread() {
    // Given a router whose field slots differ from the next one's.
    let old = when_router("{fields: [{name: a, equals: 1}, {name: b, equals: 2}]}");
    let new = when_router("{fields: [{name: b, equals: 2}]}");
    let app = old.source_index("app").unwrap();
    let line = br#"{"a":0,"b":2}"#;
    // When an event parsed by the old one is routed by the new one,
    let ev = old.parse(app, line);
    let hit = new.sink_index("hit").unwrap();
    // then the new router reads it with its own plan.
    assert!(new.route(&ev, Instant::now()).sinks.contains(hit));
    assert!(!old.route(&ev, Instant::now()).sinks.contains(hit));

    let sys = old.source_index("sys").unwrap();
    let ev = old.event_with_level(sys, b"x", Some(Level::Fatal));
    let lvl = when_router("{level: {in: [fatal]}}");
    assert!(lvl.route(&ev, Instant::now()).sinks.contains(hit));
}

/// The example of DESIGN.md, with the workload lines a user would try first.
#[test]
fn design_example_routes_its_workload() {
    let r = compile(
        r#"
selector: {matchLabels: {app: checkout}}
sources:
  - name: app
    file: {paths: ["/var/log/app/*.log"], format: json}
  - name: legacy
    syslog: {port: 5514, protocol: udp}
sinks:
  - name: console
    stdout: {}
  - name: alerts
    file: {path: /var/log/servicelog/alerts.log}
  - name: loki
    http: {url: "http://loki.monitoring:3100/loki/api/v1/push", encoding: loki}
rules:
  - name: drop-debug
    when: {level: {below: info}}
    action: drop
  - name: alerts
    when: {level: {atLeast: warn}}
    to: [alerts, loki]
  - name: slow
    when:
      fields: [{name: latency_ms, greaterThan: 1000}]
    to: [loki]
    sample: 0.1
defaultTo: [console]
"#,
    );
    assert_eq!(r.sink_names(), ["console", "alerts", "loki"]);
    assert_eq!(r.source_names(), ["app", "legacy"]);
    let now = Instant::now();
    let app = r.source_index("app").unwrap();
    let d = |line: &str| r.route(&r.parse(app, line.as_bytes()), now);

    let debug = d(r#"{"level":"debug","msg":"cache hit","latency_ms":3}"#);
    assert_eq!((debug.rule, debug.drop), (Some(0), Some(DropReason::Rule)));

    let warn = d(r#"{"level":"warn","msg":"retrying payment","latency_ms":1200}"#);
    assert_eq!(warn.sinks, sinks(&r, &["alerts", "loki"]));
    assert_eq!(warn.rule, Some(1));

    let fast = d(r#"{"level":"info","msg":"request served","latency_ms":37}"#);
    assert_eq!(fast.sinks, sinks(&r, &["console"]));
    assert_eq!(fast.rule, None);

    // Slow info requests: about 10% to loki, the rest dropped as sampled.
    let mut to_loki = 0;
    for _ in 0..10_000 {
        let slow = d(r#"{"level":"info","msg":"request served","latency_ms":1500}"#);
        assert_eq!(slow.rule, Some(2));
        match slow.drop {
            None => {
                assert_eq!(slow.sinks, sinks(&r, &["loki"]));
                to_loki += 1;
            }
            Some(reason) => assert_eq!(reason, DropReason::Sampled),
        }
    }
    assert!(
        (800..1200).contains(&to_loki),
        "{to_loki} of 10000 slow lines sampled"
    );

    // A line that is not JSON is a text event: no level, so it goes to console.
    let text = d("panic: runtime error: index out of range");
    assert_eq!(text.sinks, sinks(&r, &["console"]));

    // Syslog events with a level from the priority.
    let legacy = r.source_index("legacy").unwrap();
    let err = r.event_with_level(legacy, b"<11>disk failed", Some(Level::Error));
    assert_eq!(r.route(&err, now).sinks, sinks(&r, &["alerts", "loki"]));
}
