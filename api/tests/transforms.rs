//! Transforms: each kind on json, logfmt and text events, the built-in redact patterns on
//! real-looking lines, which sinks get which copy, and validation with field paths.

use std::time::Instant;

use serde_json::{Value, json};
use servicelog_api::{
    Router,
    rules::{FieldValue, Fields},
    v1alpha1::ServiceLogSpec,
    validate,
};

fn spec(yaml: &str) -> ServiceLogSpec {
    serde_yaml::from_str(yaml).expect("fixture is valid YAML")
}

/// A router with one source of `format` and one rule `r` with `transform`, to sink `out`.
fn router(format: &str, transform: &str) -> Router {
    let yaml = format!(
        "sources: [{{name: app, file: {{paths: [/var/log/app/*.log], format: {format}}}}}]\n\
         sinks: [{{name: out, stdout: {{}}}}]\n\
         rules:\n  - name: r\n    to: [out]\n    transform: {transform}\n"
    );
    Router::compile(&spec(&yaml)).unwrap_or_else(|e| panic!("{e}\n{yaml}"))
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

/// The event `line` of source `app` after rule `r`'s transforms.
fn transformed(router: &Router, line: &str) -> Value {
    let event = router.parse(0, line.as_bytes());
    let mut t = Vec::new();
    let decision = router.route_transformed(&event, Instant::now(), Some(&mut t));
    assert!(!decision.is_dropped());
    assert_eq!(t.len(), 1, "rule r transforms the event");
    let mut fields = router.fields(&event);
    router.transform(t[0].0, 0, &mut fields);
    to_json(&fields)
}

#[test]
fn given_set_with_a_constant_and_a_template_when_applied_then_fields_are_set() {
    let r = router(
        "json",
        r#"[{set: {field: env, value: prod}}, {set: {field: n, value: 3}},
            {set: {field: route, value: "${http.method} ${http.path} $$5 ${missing}."}},
            {set: {field: a.b.c, value: true}}]"#,
    );
    let got = transformed(
        &r,
        r#"{"msg":"hi","http":{"method":"GET","path":"/x"},"a":1}"#,
    );
    assert_eq!(
        got,
        json!({"msg":"hi","http":{"method":"GET","path":"/x"},"env":"prod","n":3,
               "route":"GET /x $5 .","a":{"b":{"c":true}}})
    );
}

#[test]
fn given_set_on_a_present_field_then_it_keeps_its_place_and_duplicates_go() {
    let r = router(
        "json",
        "[{set: {field: user, value: x}}, {set: {field: new, value: 1}}]",
    );
    let event = r.parse(0, br#"{"user":"a","b":1,"user":"c"}"#);
    let mut t = Vec::new();
    r.route_transformed(&event, Instant::now(), Some(&mut t));
    let mut fields = r.fields(&event);
    r.transform(t[0].0, 0, &mut fields);
    let keys: Vec<&str> = fields.members().map(|(k, _)| k).collect();
    assert_eq!(keys, ["b", "user", "new"]);
    assert_eq!(to_json(&fields), json!({"b":1,"user":"x","new":1}));
}

#[test]
fn given_remove_and_rename_when_applied_then_fields_move_and_go() {
    let r = router(
        "json",
        r#"[{remove: password}, {rename: {from: usr, to: user.name}}, {remove: http.headers},
            {rename: {from: absent, to: x}}, {remove: "log.level"}]"#,
    );
    let got = transformed(
        &r,
        r#"{"usr":"ann","password":"s3cret","password":"again","http":{"headers":{"a":1},"s":2},"log.level":"info"}"#,
    );
    assert_eq!(got, json!({"http":{"s":2},"user":{"name":"ann"}}));
}

#[test]
fn given_redact_without_field_when_applied_then_the_message_is_redacted() {
    let r = router("json", "[{redact: {regex: 'pw=\\S+'}}]");
    let got = transformed(&r, r#"{"msg":"login pw=hunter2 ok","pw":"x"}"#);
    assert_eq!(got, json!({"msg":"login [REDACTED] ok","pw":"x"}));

    let r = router("text", "[{redact: {regex: 'pw=\\S+', replacement: '***'}}]");
    let got = transformed(&r, "login pw=hunter2 ok");
    assert_eq!(got, json!({"message":"login *** ok"}));
}

#[test]
fn given_logfmt_events_when_transformed_then_dotted_names_are_literal_keys() {
    let r = router(
        "logfmt",
        r#"[{set: {field: k8s.app, value: "${service}"}}, {redact: {field: token, pattern: bearerToken}}]"#,
    );
    let got = transformed(
        &r,
        r#"level=info service=checkout token="Bearer abc.def-ghi" flag"#,
    );
    assert_eq!(
        got,
        json!({"level":"info","service":"checkout","token":"Bearer [REDACTED]","flag":true,
               "k8s.app":"checkout"})
    );
}

#[test]
fn given_real_looking_lines_when_redacting_with_built_in_patterns_then_only_secrets_go() {
    let r = router(
        "text",
        "[{redact: {pattern: email}}, {redact: {pattern: bearerToken}}, \
          {redact: {pattern: creditCard, replacement: '<card>'}}]",
    );
    let cases = [
        (
            "user ann.lee+shop@mail.example.co.uk signed in from 10.0.0.7",
            "user [REDACTED] signed in from 10.0.0.7",
        ),
        (
            r#"GET /api/v1/cart Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk status=200"#,
            "GET /api/v1/cart Authorization: Bearer [REDACTED] status=200",
        ),
        (
            "charge ok card=4111 1111 1111 1111 amount=12.00",
            "charge ok card=<card> amount=12.00",
        ),
        (
            "charge ok card=5500-0000-0000-0004 order=4111111111111112",
            "charge ok card=<card> order=4111111111111112",
        ),
        (
            "order 20231207153012345678 shipped, tracking 1234567890123",
            "order 20231207153012345678 shipped, tracking 1234567890123",
        ),
        ("amex 378282246310005.", "amex <card>."),
        ("no secrets here", "no secrets here"),
    ];
    for (line, want) in cases {
        assert_eq!(
            transformed(&r, line),
            json!({ "message": want }),
            "redacting {line:?}"
        );
    }
}

#[test]
fn given_a_card_number_as_a_json_number_when_redacted_then_it_becomes_a_string() {
    let r = router(
        "json",
        "[{redact: {field: card, pattern: creditCard}}, {redact: {field: req, pattern: email}}]",
    );
    let got = transformed(
        &r,
        r#"{"card":4111111111111111,"req":{"to":["a@b.io",3],"from":"c@d.org"}}"#,
    );
    assert_eq!(
        got,
        json!({"card":"[REDACTED]","req":{"to":["[REDACTED]",3],"from":"[REDACTED]"}})
    );
}

#[test]
fn given_a_continue_rule_with_transforms_when_routed_then_no_transform_leaks_to_other_sinks() {
    let r = Router::compile(&spec(
        r#"
sources: [{name: app, file: {paths: [/var/log/app/*.log], format: json}}]
sinks: [{name: a, stdout: {}}, {name: b, stdout: {}}, {name: c, stdout: {}}, {name: d, stdout: {}}]
rules:
  - {name: tap, to: [a, b], continue: true, transform: [{set: {field: tapped, value: true}}]}
  - {name: main, to: [b, c], transform: [{remove: msg}]}
defaultTo: [d]
"#,
    ))
    .unwrap();
    let event = r.parse(0, br#"{"msg":"x"}"#);
    let mut t = Vec::new();
    let d = r.route_transformed(&event, Instant::now(), Some(&mut t));
    assert_eq!(d.sinks.iter().collect::<Vec<_>>(), vec![0, 1, 2]);
    assert_eq!(
        t.iter()
            .map(|(rule, s)| (*rule, s.iter().collect::<Vec<_>>()))
            .collect::<Vec<_>>(),
        vec![(0, vec![0, 1]), (1, vec![2])],
        "b gets the tap's copy (first rule to route there), c the main rule's"
    );
    let mut tap = r.fields(&event);
    r.transform(0, 0, &mut tap);
    assert_eq!(to_json(&tap), json!({"msg":"x","tapped":true}));
    let mut main = r.fields(&event);
    r.transform(1, 0, &mut main);
    assert_eq!(to_json(&main), json!({}), "main does not see the tap's set");
}

#[test]
fn given_no_transforms_then_routing_reports_none() {
    let r = router("json", "[]");
    assert!(!r.has_transforms());
    let event = r.parse(0, br#"{"msg":"x"}"#);
    let mut t = vec![(9, Default::default())];
    r.route_transformed(&event, Instant::now(), Some(&mut t));
    assert!(t.is_empty());
}

fn errors(yaml: &str) -> Vec<String> {
    match validate(&spec(yaml)) {
        Ok(()) => Vec::new(),
        Err(e) => e.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn given_bad_transforms_then_each_error_names_its_field_path() {
    let got = errors(
        r#"
sources: [{name: app, file: {paths: [/var/log/app/*.log], format: json}}]
sinks: [{name: out, stdout: {}}]
rules:
  - name: ok
    to: [out]
    transform:
      - {set: {field: a, value: 1}}
  - name: d
    action: drop
    transform: [{remove: x}]
  - name: bad
    to: [out]
    transform:
      - {}
      - {remove: x, set: {field: y, value: 1}}
      - {set: {field: "a..b", value: 1}}
      - {set: {field: y, value: "${unclosed"}}
      - {rename: {from: _servicelog.pod, to: pod}}
      - {redact: {regex: "("}}
      - {redact: {}}
      - {redact: {regex: a, pattern: email}}
      - {set: {field: y, value: "${}"}}
"#,
    );
    let want = [
        "spec.rules[1].transform: transform applies to routing rules, not to action: drop",
        "spec.rules[2].transform[0]: a transform sets exactly one of set, remove, rename, redact (found none)",
        "spec.rules[2].transform[1]: a transform sets exactly one of set, remove, rename, redact (found set, remove)",
        "spec.rules[2].transform[2].set.field: \"a..b\" has an empty segment (dots separate nested field names)",
        "spec.rules[2].transform[3].set.value: unclosed ${ at offset 0 (a template names a field as ${name}; $$ is a literal $)",
        "spec.rules[2].transform[4].rename.from: _servicelog is written by the sidecar (source, pod, namespace, labels) and cannot be changed by a transform",
        "spec.rules[2].transform[5].redact.regex: regex parse error: unclosed group at offset 0",
        "spec.rules[2].transform[6].redact: a redact sets regex or pattern (email, bearerToken, creditCard)",
        "spec.rules[2].transform[7].redact: a redact sets either regex or pattern, not both",
        "spec.rules[2].transform[8].set.value: ${…} at offset 0: must not be empty",
    ];
    assert_eq!(got, want, "\ngot:\n{}", got.join("\n"));
}

#[test]
fn given_too_many_transforms_then_the_rule_is_refused() {
    let many = (0..17)
        .map(|i| format!("{{remove: f{i}}}"))
        .collect::<Vec<_>>()
        .join(", ");
    let got = errors(&format!(
        "sources: [{{name: app, file: {{paths: [/var/log/app/*.log]}}}}]\n\
         sinks: [{{name: out, stdout: {{}}}}]\n\
         rules: [{{name: r, to: [out], transform: [{many}]}}]\n"
    ));
    assert_eq!(
        got,
        ["spec.rules[0].transform: a rule may have at most 16 transforms, got 17"]
    );
}

#[test]
fn given_redact_regexes_then_they_count_against_the_spec_regex_budget() {
    let rules = (0..49)
        .map(|i| format!("{{name: r{i}, to: [out], transform: [{{redact: {{regex: x{i}}}}}]}}"))
        .collect::<Vec<_>>()
        .join(", ");
    let got = errors(&format!(
        "sources: [{{name: app, file: {{paths: [/var/log/app/*.log]}}}}]\n\
         sinks: [{{name: out, stdout: {{}}}}]\n\
         rules: [{rules}]\n"
    ));
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        got[0].starts_with(
            "spec.rules[48].transform[0].redact.regex: a spec may hold at most 48 regexes"
        ),
        "{got:?}"
    );
}
