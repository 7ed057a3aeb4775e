//! Properties of the router over generated specs and lines: determinism, the statistics of
//! `sample` and `rateLimit`, agreement with serde_json on what a JSON line says, and that
//! nothing — no line, no spec — makes parsing, validation or routing panic.

use std::time::{Duration, Instant};

use proptest::prelude::*;
use serde_json::{Value, json};
use servicelog_api::{
    rules::{Decision, DropReason, Router},
    v1alpha1::{
        Action, FieldCondition, FileSource, Format, Level, LevelCondition, MessageCondition,
        RateLimit, Rule, ServiceLogSpec, Sink, Source, StdoutSink, SyslogSource, When,
    },
    validate,
};

fn compile(yaml: &str) -> Router {
    let spec: ServiceLogSpec = serde_yaml::from_str(yaml).expect("fixture is valid YAML");
    Router::compile(&spec).unwrap_or_else(|e| panic!("fixture should compile, got:\n{e}"))
}

const SPEC: &str = r#"
sources:
  - name: app
    file: {paths: ["/var/log/app/*.log"], format: json}
  - name: lf
    file: {paths: ["/var/log/lf/*.log"], format: logfmt}
  - name: txt
    file: {paths: ["/var/log/txt/*.log"], format: text}
sinks:
  - {name: console, stdout: {}}
  - {name: alerts, stdout: {}}
  - {name: loki, stdout: {}}
  - {name: audit, stdout: {}}
rules:
  - name: tap
    when: {fields: [{name: audit, exists: true}]}
    to: [audit]
    sample: 0.5
    continue: true
  - name: drop-debug
    when: {level: {below: info}}
    action: drop
  - name: alerts
    when: {level: {atLeast: error}}
    to: [alerts, loki]
    rateLimit: {perSecond: 20}
  - name: slow
    when: {fields: [{name: latency_ms, greaterThan: 1000}]}
    to: [loki]
    sample: 0.3
  - name: server-errors
    when: {fields: [{name: http.status, in: [500, 502, 503]}]}
    to: [loki]
  - name: timeouts
    when: {message: {regex: "timeout"}}
    to: [alerts]
    rateLimit: {perSecond: 5}
    sample: 0.7
defaultTo: [console]
"#;

/// A JSON log line with a random selection of the fields SPEC's rules look at.
fn json_line() -> impl Strategy<Value = Value> {
    let level = prop::sample::select(vec![
        "trace", "debug", "info", "INFO", "warn", "warning", "error", "ERR", "fatal", "bogus",
    ]);
    let scalar = prop_oneof![
        any::<i32>().prop_map(|i| json!(i)),
        (-5000.0f64..5000.0).prop_map(|f| json!(f)),
        "[a-z0-9 \"\\\\/\t]{0,8}".prop_map(|s| json!(s)),
        any::<bool>().prop_map(|b| json!(b)),
        Just(Value::Null),
        (0u32..3000).prop_map(|n| json!(n.to_string())),
    ];
    (
        prop::option::of(level),
        prop::option::of(prop_oneof![
            "[a-z ]{0,12}",
            Just("read timeout".to_string())
        ]),
        prop::option::of(scalar.clone()),
        prop::option::of(prop::sample::select(vec![200, 404, 500, 502, 503])),
        prop::option::of(scalar.clone()),
        prop::option::of(scalar),
    )
        .prop_map(|(level, msg, latency, status, audit, extra)| {
            let mut m = serde_json::Map::new();
            m.insert("ts".into(), json!("2026-11-24T10:00:00Z"));
            if let Some(l) = level {
                m.insert("level".into(), json!(l));
            }
            if let Some(x) = msg {
                m.insert("msg".into(), json!(x));
            }
            if let Some(x) = latency {
                m.insert("latency_ms".into(), x);
            }
            if let Some(s) = status {
                m.insert("http".into(), json!({"method": "GET", "status": s}));
            }
            if let Some(x) = audit {
                m.insert("audit".into(), x);
            }
            if let Some(x) = extra {
                m.insert("extra".into(), json!({"nested": [x, {"level": "fatal"}]}));
            }
            Value::Object(m)
        })
}

/// (source index, line, milliseconds since the previous event)
fn workload() -> impl Strategy<Value = Vec<(usize, Vec<u8>, u64)>> {
    let event = prop_oneof![
        4 => json_line().prop_map(|v| (0usize, serde_json::to_vec(&v).expect("a Value serialises"))),
        1 => "(level=(info|error|debug) )?(latency_ms=[0-9]{1,4} )?msg=\"[a-z ]{0,10}\"".prop_map(|s| (1usize, s.into_bytes())),
        1 => "[ -~]{0,40}".prop_map(|s| (2usize, s.into_bytes())),
        1 => prop::collection::vec(any::<u8>(), 0..60).prop_map(|b| (0usize, b)),
    ];
    prop::collection::vec((event, 0u64..200), 1..300)
        .prop_map(|v| v.into_iter().map(|((s, l), dt)| (s, l, dt)).collect())
}

fn run(router: &Router, t0: Instant, events: &[(usize, Vec<u8>, u64)]) -> Vec<Decision> {
    let mut now = t0;
    events
        .iter()
        .map(|(source, line, dt)| {
            now += Duration::from_millis(*dt);
            router.route(&router.parse(*source, line), now)
        })
        .collect()
}

/// What SPEC decides for a JSON line, computed from serde_json's reading of it, apart
/// from the draws of sample and rateLimit (the rules with those are told by `drawn`).
fn reference_rule(v: &Value) -> Option<&'static str> {
    let level = v.get("level").and_then(Value::as_str).and_then(|l| {
        Some(match l.to_ascii_lowercase().as_str() {
            "trace" => Level::Trace,
            "debug" => Level::Debug,
            "info" => Level::Info,
            "warn" | "warning" => Level::Warn,
            "error" | "err" => Level::Error,
            "fatal" => Level::Fatal,
            _ => return None,
        })
    });
    let number = |x: Option<&Value>| match x {
        Some(Value::Number(n)) => n.as_f64(),
        // Numeric strings compare too, when they are exactly one JSON number.
        Some(Value::String(s)) if s.trim() == s => serde_json::from_str::<f64>(s).ok(),
        _ => None,
    };
    if level.is_some_and(|l| l < Level::Info) {
        return Some("drop-debug");
    }
    if level.is_some_and(|l| l >= Level::Error) {
        return Some("alerts");
    }
    if number(v.get("latency_ms")).is_some_and(|n| n > 1000.0) {
        return Some("slow");
    }
    let status = v.pointer("/http/status").and_then(Value::as_i64);
    if status.is_some_and(|s| [500, 502, 503].contains(&s)) {
        return Some("server-errors");
    }
    if v.get("msg")
        .and_then(Value::as_str)
        .is_some_and(|m| m.contains("timeout"))
    {
        return Some("timeouts");
    }
    None
}

/// Whether serde_json reads `line` as one JSON object; `None` where the scanner is
/// deliberately more tolerant (raw control characters in strings, numbers beyond f64,
/// nesting at the depth limit), so the two need not agree.
fn serde_json_verdict(line: &[u8]) -> Option<bool> {
    match serde_json::from_slice::<Value>(line) {
        Ok(v) => Some(v.is_object()),
        Err(e) => {
            let e = e.to_string();
            let tolerated = [
                "control character",
                "number out of range",
                "recursion limit",
            ];
            (!tolerated.iter().any(|t| e.contains(t))).then_some(false)
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Given two routers compiled from the same spec, when they route the same events at
    /// the same times, then they decide identically.
    #[test]
    fn routing_is_deterministic(events in workload()) {
        let a = compile(SPEC);
        let b = compile(SPEC);
        let t0 = Instant::now();
        prop_assert_eq!(run(&a, t0, &events), run(&b, t0, &events));
    }

    /// Given a JSON line, the router reads what serde_json reads: the deciding rule is the
    /// one a reference evaluation over serde_json's Value picks.
    #[test]
    fn json_lines_route_as_serde_json_reads_them(v in json_line()) {
        let r = compile(SPEC);
        let line = serde_json::to_vec(&v).expect("a Value serialises");
        let ev = r.parse(0, &line);
        prop_assert!(!ev.is_text(), "a serde_json object must not be a text event");
        prop_assert_eq!(ev.message().map(|m| m.into_owned()), v.get("msg").and_then(Value::as_str).map(str::to_string));
        let d = r.route(&ev, Instant::now());
        let rule = d.rule.map(|i| r.rule_names()[usize::from(i)].as_str());
        prop_assert_eq!(rule, reference_rule(&v), "line {}", String::from_utf8_lossy(&line));
    }

    /// Given arbitrary bytes, parsing in every format and routing never panics, and a line
    /// is a structured JSON event only when serde_json reads it as an object.
    #[test]
    fn arbitrary_lines_never_panic(line in prop::collection::vec(any::<u8>(), 0..200)) {
        let r = compile(SPEC);
        for source in 0..4 {
            let ev = r.parse(source, &line);
            let _ = (ev.level(), ev.message(), ev.is_text());
            let _ = r.route(&ev, Instant::now());
        }
        let ours = !r.parse(0, &line).is_text();
        if let Some(theirs) = serde_json_verdict(&line) {
            prop_assert_eq!(ours, theirs, "scanner vs serde_json on {:?}", String::from_utf8_lossy(&line));
        }
    }

    /// Same, with lines that are nearly JSON: a valid object cut or damaged at one place.
    #[test]
    fn damaged_json_lines_agree_with_serde_json(v in json_line(), cut in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let r = compile(SPEC);
        let mut line = serde_json::to_vec(&v).expect("a Value serialises");
        let at = cut.index(line.len());
        let variants = [line[..at].to_vec(), { line[at] = byte; line.clone() }];
        for line in variants {
            let ours = !r.parse(0, &line).is_text();
            if let Some(theirs) = serde_json_verdict(&line) {
                prop_assert_eq!(ours, theirs, "scanner vs serde_json on {:?}", String::from_utf8_lossy(&line));
            }
        }
    }

    /// Given arbitrary bytes as a spec, deserialising and validating never panics.
    #[test]
    fn arbitrary_spec_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(spec) = serde_json::from_slice::<ServiceLogSpec>(&bytes) {
            let _ = validate(&spec);
        }
    }

    /// Given a generated spec (valid or not), validation never panics, agrees with
    /// compilation, and a router that compiled routes arbitrary lines without panicking.
    #[test]
    fn generated_specs_validate_and_route_without_panics(
        spec in spec(),
        lines in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..80), 0..8),
        json_lines in prop::collection::vec(json_line(), 0..8),
    ) {
        let validated = validate(&spec);
        let compiled = Router::compile(&spec);
        prop_assert_eq!(validated.is_ok(), compiled.is_ok());
        if let Err(e) = &validated {
            prop_assert!(!e.is_empty());
            for err in e {
                prop_assert!(err.path.starts_with("spec."), "path {}", err.path);
            }
        }
        if let Ok(r) = compiled {
            let now = Instant::now();
            for source in 0..spec.sources.len() + 1 {
                for line in lines.iter().cloned().chain(json_lines.iter().map(|v| serde_json::to_vec(v).expect("a Value serialises"))) {
                    let d = r.route(&r.parse(source, &line), now);
                    prop_assert_eq!(d.drop.is_some(), d.sinks.is_empty());
                    prop_assert!(d.sinks.iter().all(|s| s < r.sink_names().len()));
                }
            }
        }
    }

    /// Given a generated valid spec, it validates, and two routers compiled from it route
    /// generated lines identically, with decisions that keep their invariants.
    #[test]
    fn generated_valid_specs_compile_and_route(
        spec in valid_spec(),
        events in workload(),
    ) {
        let a = Router::compile(&spec);
        prop_assert!(a.is_ok(), "valid spec rejected: {}", a.as_ref().err().map(ToString::to_string).unwrap_or_default());
        let a = a.unwrap();
        let b = Router::compile(&spec).unwrap();
        let t0 = Instant::now();
        let da = run(&a, t0, &events);
        prop_assert_eq!(&da, &run(&b, t0, &events));
        for d in da {
            prop_assert_eq!(d.drop.is_some(), d.sinks.is_empty());
            prop_assert!(d.sinks.iter().all(|s| s < spec.sinks.len()));
            prop_assert!(d.rule.is_none_or(|r| usize::from(r) < spec.rules.len()));
        }
    }

    /// Given arbitrary JSON values shaped like a spec, deserialising and validating never
    /// panics.
    #[test]
    fn arbitrary_spec_values_never_panic(v in spec_like_json()) {
        if let Ok(spec) = serde_json::from_value::<ServiceLogSpec>(v) {
            let _ = validate(&spec);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// Given `sample: p`, then about p of N matching events are routed (N = 20000, within
    /// 3 percentage points) and the others are dropped as sampled.
    #[test]
    fn sample_keeps_about_p(p in 0.0f64..=1.0) {
        let r = compile(&format!(
            "sources: [{{name: app, file: {{paths: [\"/var/log/x\"], format: json}}}}]
sinks: [{{name: out, stdout: {{}}}}]
rules: [{{name: s, to: [out], sample: {p}}}]
"
        ));
        let n = 20_000;
        let now = Instant::now();
        let ev = r.parse(0, br#"{"level":"info"}"#);
        let mut kept = 0;
        for _ in 0..n {
            let d = r.route(&ev, now);
            match d.drop {
                None => kept += 1,
                Some(reason) => prop_assert_eq!(reason, DropReason::Sampled),
            }
        }
        let got = f64::from(kept) / f64::from(n);
        prop_assert!((got - p).abs() <= 0.03, "sample {} kept {}", p, got);
    }

    /// Given `rateLimit: {perSecond: r}`, when events arrive far faster than r for T
    /// simulated seconds, then about r*T events plus the burst are routed.
    #[test]
    fn rate_limit_routes_about_r_per_second(rate in 0.5f64..200.0, seconds in 1u64..30, step_us in 500u64..5000) {
        let r = compile(&format!(
            "sources: [{{name: app, file: {{paths: [\"/var/log/x\"], format: json}}}}]
sinks: [{{name: out, stdout: {{}}}}]
rules: [{{name: s, to: [out], rateLimit: {{perSecond: {rate}}}}}]
"
        ));
        let ev = r.parse(0, b"{}");
        let t0 = Instant::now();
        let end = Duration::from_secs(seconds);
        // Arrivals at least four times faster than the rate, so the limit is what counts.
        let step = Duration::from_micros(step_us.min((250_000.0 / rate) as u64).max(1));
        let (mut routed, mut limited) = (0u64, 0u64);
        let mut t = Duration::ZERO;
        while t < end {
            match r.route(&ev, t0 + t).drop {
                None => routed += 1,
                Some(DropReason::RateLimited) => limited += 1,
                Some(other) => prop_assert!(false, "unexpected drop {:?}", other),
            }
            t += step;
        }
        let burst = rate.max(1.0);
        let expected = rate * seconds as f64 + burst;
        let slack = 2.0 + rate * step.as_secs_f64();
        prop_assert!(
            (routed as f64 - expected).abs() <= slack,
            "rate {} for {}s: routed {}, expected about {} (limited {})", rate, seconds, routed, expected, limited
        );
    }
}

// Generators for specs: small alphabets so names collide, references resolve or not, and
// every branch of validation is reached.

fn gen_name() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => "[a-c]{1,2}",
        1 => Just(String::new()),
        1 => "[A-Z_.-]{1,3}",
    ]
}

fn gen_level() -> impl Strategy<Value = Level> {
    prop::sample::select(Level::ALL.to_vec())
}

fn gen_regex() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("timeout".to_string()),
        Just("^a|b$".to_string()),
        Just("(".to_string()),
        Just("[z-a]".to_string()),
        Just("(?i)x{2,5}".to_string()),
        Just("\\p{Greek}+".to_string()),
        "[a-z().*+?\\[\\]{}|^$\\\\]{0,8}",
    ]
}

fn gen_scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(|i| json!(i)),
        any::<u64>().prop_map(|u| json!(u)),
        (-1e6f64..1e6).prop_map(|f| json!(f)),
        "[a-z0-9]{0,3}".prop_map(|s| json!(s)),
        any::<bool>().prop_map(|b| json!(b)),
        Just(Value::Null),
        Just(json!([1])),
        Just(json!({"a": 1})),
    ]
}

fn gen_f64() -> impl Strategy<Value = f64> {
    prop_oneof![
        -2.0f64..2.0,
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(0.0),
        Just(1.0),
        any::<f64>(),
    ]
}

fn gen_field() -> impl Strategy<Value = FieldCondition> {
    (
        prop_oneof![
            6 => "[a-c]{1,2}(\\.[a-c]{1,2}){0,2}",
            1 => Just("message".to_string()),
            1 => Just(String::new()),
            1 => Just("a..b".to_string()),
            1 => Just("a.b.c.d.e.f.g.h.i".to_string()),
        ],
        0usize..7,
        prop::option::of(0usize..7),
        gen_scalar(),
        prop::collection::vec(gen_scalar(), 0..3),
        gen_regex(),
        any::<bool>(),
        gen_f64(),
    )
        .prop_map(|(name, a, b, scalar, list, regex, exists, x)| {
            let mut fc = FieldCondition {
                name,
                ..FieldCondition::default()
            };
            for which in [Some(a), b].into_iter().flatten() {
                match which {
                    0 => fc.equals = Some(scalar.clone()),
                    1 => fc.r#in = Some(list.clone()),
                    2 => fc.regex = Some(regex.clone()),
                    3 => fc.exists = Some(exists),
                    4 => fc.greater_than = Some(x),
                    5 => fc.less_than = Some(x),
                    _ => {}
                }
            }
            fc
        })
}

fn gen_when() -> impl Strategy<Value = When> {
    let leaf = (
        prop::option::of((
            prop::option::of(gen_level()),
            prop::option::of(gen_level()),
            prop::collection::vec(gen_level(), 0..3),
        )),
        prop::option::of(gen_name()),
        prop::option::of(gen_regex()),
        prop::collection::vec(gen_field(), 0..3),
    )
        .prop_map(|(level, source, regex, fields)| When {
            level: level.map(|(at_least, below, r#in)| LevelCondition {
                at_least,
                below,
                r#in,
            }),
            source,
            message: regex.map(|regex| MessageCondition { regex }),
            fields,
            any: Vec::new(),
        });
    leaf.prop_recursive(10, 40, 3, |inner| {
        (inner.clone(), prop::collection::vec(inner, 0..3)).prop_map(|(mut w, any)| {
            w.any = any;
            w
        })
    })
}

fn gen_rule() -> impl Strategy<Value = Rule> {
    (
        gen_name(),
        prop::option::of(gen_when()),
        prop::option::of(prop::collection::vec(gen_name(), 0..3)),
        any::<bool>(),
        prop::option::of(gen_f64()),
        prop::option::of(gen_f64()),
        any::<bool>(),
    )
        .prop_map(|(name, when, to, drop, sample, rate, continue_)| Rule {
            name,
            when,
            to,
            action: drop.then_some(Action::Drop),
            sample,
            rate_limit: rate.map(|per_second| RateLimit { per_second }),
            continue_,
            transform: Vec::new(),
        })
}

fn gen_source() -> impl Strategy<Value = Source> {
    (
        gen_name(),
        prop::option::of((
            prop::collection::vec(
                prop_oneof![
                    Just("/var/log/*.log".to_string()),
                    Just("rel/*.log".to_string()),
                    "/[a-z*?\\[\\]!-]{0,6}",
                ],
                0..2,
            ),
            prop::sample::select(vec![Format::Json, Format::Logfmt, Format::Text]),
        )),
        prop::option::of(0u16..3),
        prop::option::of(prop_oneof![
            Just("sev".to_string()),
            Just("log.level".to_string()),
            Just(String::new())
        ]),
        prop::option::of(prop_oneof![
            Just("text".to_string()),
            Just("a..b".to_string())
        ]),
    )
        .prop_map(|(name, file, port, level_field, message_field)| Source {
            name,
            file: file.map(|(paths, format)| FileSource {
                paths,
                format,
                multiline: None,
                regex: None,
            }),
            syslog: port.map(|port| SyslogSource {
                port,
                ..SyslogSource::default()
            }),
            container_logs: None,
            level_field,
            max_line_bytes: None,
            message_field,
        })
}

fn spec() -> impl Strategy<Value = ServiceLogSpec> {
    (
        prop::collection::vec(gen_source(), 0..4),
        prop::collection::vec(gen_name(), 0..5),
        prop::collection::vec(gen_rule(), 0..6),
        prop::collection::vec(gen_name(), 0..3),
    )
        .prop_map(|(sources, sinks, rules, default_to)| ServiceLogSpec {
            sources,
            sinks: sinks
                .into_iter()
                .map(|name| Sink {
                    name,
                    stdout: Some(StdoutSink::default()),
                    ..Sink::default()
                })
                .collect(),
            rules,
            default_to,
            ..ServiceLogSpec::default()
        })
}

/// Specs that must validate: every name declared, every test well formed.
fn valid_spec() -> impl Strategy<Value = ServiceLogSpec> {
    let source = (
        prop::sample::select(vec![Format::Json, Format::Logfmt, Format::Text]),
        any::<bool>(),
        prop::option::of(prop::sample::select(vec!["sev", "log.level", "level"])),
        prop::option::of(prop::sample::select(vec!["text", "msg", "a.b"])),
    );
    let sinks = ["a", "b", "c"];
    let field = (
        prop::sample::select(vec![
            "a",
            "b",
            "a.b",
            "message",
            "level",
            "http.status",
            "latency_ms",
        ]),
        0usize..6,
        gen_scalar().prop_filter("scalar", |v| {
            !v.is_null() && !v.is_array() && !v.is_object()
        }),
        prop::sample::select(vec!["^x", "timeout", "(?i)ERR", "\\d+"]),
        any::<bool>(),
        -2000.0f64..2000.0,
    )
        .prop_map(|(name, which, scalar, regex, exists, x)| {
            let mut fc = FieldCondition {
                name: name.to_string(),
                ..FieldCondition::default()
            };
            match which {
                0 => fc.equals = Some(scalar),
                1 => fc.r#in = Some(vec![scalar, json!(500)]),
                2 => fc.regex = Some(regex.to_string()),
                3 => fc.exists = Some(exists),
                4 => fc.greater_than = Some(x),
                _ => fc.less_than = Some(x),
            }
            fc
        });
    let leaf = (
        prop::option::of((
            prop::option::of(gen_level()),
            prop::collection::vec(gen_level(), 1..3),
        )),
        prop::option::of(0usize..3),
        prop::option::of(prop::sample::select(vec![
            "timeout",
            "^GET",
            "(?i)fail(ed|ure)",
        ])),
        prop::collection::vec(field, 0..3),
    )
        .prop_map(|(level, source, regex, fields)| When {
            level: level.map(|(at_least, r#in)| match at_least {
                Some(l) => LevelCondition {
                    at_least: Some(l),
                    ..LevelCondition::default()
                },
                None => LevelCondition {
                    r#in,
                    ..LevelCondition::default()
                },
            }),
            // Sources s0 and s1 always exist.
            source: source.filter(|s| *s < 2).map(|s| format!("s{s}")),
            message: regex.map(|r| MessageCondition {
                regex: r.to_string(),
            }),
            fields,
            any: Vec::new(),
        });
    let when = leaf.prop_recursive(4, 16, 3, |inner| {
        (inner.clone(), prop::collection::vec(inner, 1..3)).prop_map(|(mut w, any)| {
            w.any = any;
            w
        })
    });
    let rule = (
        prop::option::of(when),
        prop::option::of(prop::sample::subsequence(sinks.to_vec(), 1..=3)),
        prop::option::of(0.0f64..=1.0),
        prop::option::of(0.5f64..50.0),
        any::<bool>(),
    );
    (
        prop::collection::vec(source, 2..4),
        prop::collection::vec(rule, 0..8),
        prop::sample::subsequence(sinks.to_vec(), 0..=2),
    )
        .prop_map(move |(sources, rules, default_to)| ServiceLogSpec {
            sources: sources
                .into_iter()
                .enumerate()
                .map(|(i, (format, syslog, level_field, message_field))| Source {
                    name: format!("s{i}"),
                    file: (!syslog).then(|| FileSource {
                        paths: vec![format!("/var/log/s{i}/*.log")],
                        format,
                        multiline: None,
                        regex: None,
                    }),
                    syslog: syslog.then(|| SyslogSource {
                        port: 5000 + i as u16,
                        ..SyslogSource::default()
                    }),
                    container_logs: None,
                    level_field: level_field.map(str::to_string),
                    max_line_bytes: None,
                    message_field: message_field.map(str::to_string),
                })
                .collect(),
            sinks: sinks
                .iter()
                .map(|n| Sink {
                    name: n.to_string(),
                    stdout: Some(StdoutSink::default()),
                    ..Sink::default()
                })
                .collect(),
            rules: rules
                .into_iter()
                .enumerate()
                .map(|(i, (when, to, sample, rate, continue_))| {
                    let routes = to.is_some();
                    Rule {
                        name: format!("r{i}"),
                        when,
                        to: to.map(|t| t.into_iter().map(str::to_string).collect()),
                        action: (!routes).then_some(Action::Drop),
                        sample: sample.filter(|_| routes),
                        rate_limit: rate
                            .filter(|_| routes)
                            .map(|per_second| RateLimit { per_second }),
                        continue_,
                        transform: Vec::new(),
                    }
                })
                .collect(),
            default_to: default_to.into_iter().map(str::to_string).collect(),
            ..ServiceLogSpec::default()
        })
}

fn spec_like_json() -> impl Strategy<Value = Value> {
    let key = prop::sample::select(vec![
        "name",
        "sources",
        "sinks",
        "rules",
        "file",
        "paths",
        "format",
        "syslog",
        "port",
        "stdout",
        "http",
        "url",
        "to",
        "action",
        "when",
        "level",
        "atLeast",
        "below",
        "in",
        "fields",
        "equals",
        "regex",
        "exists",
        "greaterThan",
        "lessThan",
        "any",
        "sample",
        "rateLimit",
        "perSecond",
        "continue",
        "defaultTo",
        "levelField",
        "messageField",
        "source",
        "message",
    ]);
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (-2.0f64..2.0).prop_map(Value::from),
        prop::sample::select(vec![
            "json", "logfmt", "text", "drop", "info", "error", "a", "(", "/x", "http://x", "",
        ])
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(6, 64, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(key.clone(), inner, 0..6).prop_map(|m| {
                Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
            }),
        ]
    })
}
