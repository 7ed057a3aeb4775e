//! Validation from inline YAML fixtures: each problem reported at its field path, and all
//! of them at once.

use servicelog_api::{
    FieldError, ValidationErrors, rules::Router, v1alpha1::ServiceLogSpec, validate,
};

fn spec(yaml: &str) -> ServiceLogSpec {
    serde_yaml::from_str(yaml).expect("fixture is valid YAML")
}

fn errors(yaml: &str) -> Vec<String> {
    match validate(&spec(yaml)) {
        Ok(()) => Vec::new(),
        Err(e) => e.iter().map(ToString::to_string).collect(),
    }
}

/// Given a spec, then validation reports exactly `want`, in order.
fn assert_errors(yaml: &str, want: &[&str]) {
    let got = errors(yaml);
    assert!(
        got == want,
        "\nexpected errors:\n{}\ngot:\n{}\n",
        want.join("\n"),
        got.join("\n")
    );
}

const BASE: &str = r#"
sources:
  - name: app
    file: {paths: ["/var/log/app/*.log"], format: json}
sinks:
  - {name: console, stdout: {}}
  - {name: alerts, file: {path: /var/log/alerts.log}}
"#;

fn with_rules(rules: &str) -> String {
    format!("{BASE}rules:\n{rules}")
}

#[test]
fn a_valid_spec_has_no_errors() {
    assert_errors(
        &with_rules(
            r#"
  - name: drop-debug
    when: {level: {below: info}}
    action: drop
  - name: alerts
    when:
      level: {atLeast: warn}
      source: app
      message: {regex: "fail(ed|ure)"}
      fields:
        - {name: http.status, in: [500, 503, "x", true]}
        - {name: user, exists: true}
        - {name: latency_ms, greaterThan: 10}
        - {name: free, lessThan: 1.5}
        - {name: path, regex: "^/api"}
        - {name: ok, equals: false}
      any:
        - {fields: [{name: a, equals: 1}]}
        - {any: [{level: {in: [fatal]}}]}
    to: [alerts]
    sample: 0.5
    rateLimit: {perSecond: 0.5}
    continue: true
"#,
        ),
        &[],
    );
}

#[test]
fn every_error_is_reported_at_once() {
    let yaml = r#"
sources:
  - name: app
    file: {paths: ["var/log/app.log", "/a/[x.log"], format: json}
    levelField: ""
  - name: app
    syslog: {port: 0}
  - name: Bad_Name
  - name: both
    file: {paths: []}
    syslog: {port: 514}
  - name: sys2
    syslog: {port: 514}
    messageField: "a..b"
sinks:
  - {name: console, stdout: {}}
  - {name: loki, http: {url: "loki:3100"}}
  - {name: rel, file: {path: "relative.log"}}
  - {name: loki, stdout: {}}
  - {name: none}
  - {name: two, stdout: {}, http: {url: "http://x"}}
rules:
  - name: r0
    when:
      level: {}
      source: nope
      message: {regex: "("}
      fields:
        - {name: "", equals: 1}
        - {name: x}
        - {name: y, equals: 1, regex: a}
        - {name: z, equals: null}
        - {name: w, in: []}
        - {name: v, in: [1, [2], {a: 3}]}
        - {name: u, regex: "[z-a]"}
        - {name: "a.", exists: true}
        - {name: t, greaterThan: .inf}
        - {name: s, lessThan: .nan}
      any:
        - {level: {atLeast: error, below: warn}}
        - {fields: [{name: q, regex: "a{1000000}"}]}
    to: [lokii, console, alerts]
  - name: r0
    action: drop
    to: [console]
    sample: 2
    rateLimit: {perSecond: 0}
  - name: r2
  - name: r3
    to: []
    sample: .nan
defaultTo: [console, missing]
"#;
    assert_errors(
        yaml,
        &[
            r#"spec.sources[0].file.paths[0]: "var/log/app.log" must be an absolute path"#,
            r#"spec.sources[0].file.paths[1]: "/a/[x.log": character class opened at 3 is not closed"#,
            "spec.sources[0].levelField: must not be empty",
            r#"spec.sources[1].name: duplicate source name "app" (first at spec.sources[0])"#,
            "spec.sources[1].syslog.port: must be between 1 and 65535",
            r#"spec.sources[2].name: "Bad_Name" is not a valid name: use at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit"#,
            "spec.sources[2]: a source sets exactly one of file, syslog or containerLogs",
            "spec.sources[3]: a source sets exactly one of file, syslog or containerLogs, not file and syslog",
            "spec.sources[3].file.paths: must list at least one path",
            "spec.sources[4].syslog.port: port 514/udp is already used by spec.sources[3]",
            r#"spec.sources[4].messageField: "a..b" has an empty segment (dots separate nested field names)"#,
            r#"spec.sinks[1].http.url: "loki:3100" must start with http:// or https://"#,
            r#"spec.sinks[2].file.path: "relative.log" must be an absolute path"#,
            r#"spec.sinks[3].name: duplicate sink name "loki" (first at spec.sinks[1])"#,
            "spec.sinks[4]: a sink sets exactly one of stdout, file, http, otlp or kafka",
            "spec.sinks[5]: a sink sets exactly one of stdout, file, http, otlp or kafka, not several",
            "spec.rules[0].when.level: set at least one of atLeast, below or in",
            r#"spec.rules[0].when.source: unknown source "nope" (declared: app, both, sys2)"#,
            "spec.rules[0].when.message.regex: regex parse error: unclosed group at offset 0",
            "spec.rules[0].when.fields[0].name: must not be empty",
            "spec.rules[0].when.fields[1]: a field condition sets exactly one of equals, in, regex, exists, greaterThan, lessThan (found none)",
            "spec.rules[0].when.fields[2]: a field condition sets exactly one of equals, in, regex, exists, greaterThan, lessThan (found equals, regex)",
            "spec.rules[0].when.fields[3]: a field condition sets exactly one of equals, in, regex, exists, greaterThan, lessThan (found none)",
            "spec.rules[0].when.fields[4].in: must list at least one value",
            "spec.rules[0].when.fields[5].in[1]: must be a string, number or boolean, got [2]",
            r#"spec.rules[0].when.fields[5].in[2]: must be a string, number or boolean, got {"a":3}"#,
            "spec.rules[0].when.fields[6].regex: regex parse error: invalid character class range, the start must be <= the end at offset 1",
            r#"spec.rules[0].when.fields[7].name: "a." has an empty segment (dots separate nested field names)"#,
            "spec.rules[0].when.fields[8].greaterThan: must be a finite number, got inf",
            "spec.rules[0].when.fields[9].lessThan: must be a finite number, got NaN",
            "spec.rules[0].when.any[0].level: matches no level (the conditions contradict each other)",
            "spec.rules[0].when.any[1].fields[0].regex: regex is too large: it compiles to more than 1048576 bytes",
            r#"spec.rules[0].to[0]: unknown sink "lokii" (declared: console, loki, rel, none, two)"#,
            r#"spec.rules[0].to[2]: unknown sink "alerts" (declared: console, loki, rel, none, two)"#,
            r#"spec.rules[1].name: duplicate rule name "r0" (first at spec.rules[0])"#,
            "spec.rules[1]: a rule sets either to or action: drop, not both",
            "spec.rules[1].sample: sample applies to routing rules, not to action: drop",
            "spec.rules[1].sample: must be a number between 0 and 1, got 2",
            "spec.rules[1].rateLimit: rateLimit applies to routing rules, not to action: drop",
            "spec.rules[1].rateLimit.perSecond: must be a positive number, got 0",
            "spec.rules[2]: a rule sets either to or action: drop",
            "spec.rules[3].to: must name at least one sink",
            "spec.rules[3].sample: must be a number between 0 and 1, got NaN",
            r#"spec.defaultTo[1]: unknown sink "missing" (declared: console, loki, rel, none, two)"#,
        ],
    );
}

#[test]
fn the_brief_examples_read_as_documented() {
    let yaml = format!(
        "{BASE}  - {{name: loki, stdout: {{}}}}
  - {{name: loki, stdout: {{}}}}
rules:
  - name: a
    to: [console]
  - name: b
    to: [lokii]
  - name: c
    when: {{message: {{regex: \"a)\"}}}}
    to: [console]
"
    );
    assert_errors(
        &yaml,
        &[
            r#"spec.sinks[3].name: duplicate sink name "loki" (first at spec.sinks[2])"#,
            r#"spec.rules[1].to[0]: unknown sink "lokii" (declared: console, alerts, loki)"#,
            "spec.rules[2].when.message.regex: regex parse error: unopened group at offset 1",
        ],
    );
}

#[test]
fn selector_expressions_are_checked() {
    let yaml = format!(
        "{BASE}selector:
  matchLabels: {{app: checkout}}
  matchExpressions:
    - {{key: tier, operator: In, values: [web]}}
    - {{key: tier, operator: In}}
    - {{key: tier, operator: Exists, values: [x]}}
    - {{key: \"\", operator: Equals}}
"
    );
    assert_errors(
        &yaml,
        &[
            "spec.selector.matchExpressions[1].values: must not be empty for operator In",
            "spec.selector.matchExpressions[2].values: must be empty for operator Exists",
            "spec.selector.matchExpressions[3].key: must not be empty",
            r#"spec.selector.matchExpressions[3].operator: "Equals" is not one of In, NotIn, Exists, DoesNotExist"#,
        ],
    );
}

#[test]
fn at_least_one_source() {
    assert_errors(
        "sources: []\nsinks: []\n",
        &["spec.sources: at least one source is required"],
    );
}

#[test]
fn unknown_sink_with_no_sinks_declared() {
    assert_errors(
        r#"
sources: [{name: app, file: {paths: ["/var/log/x.log"]}}]
sinks: []
defaultTo: [console]
"#,
        &[r#"spec.defaultTo[0]: unknown sink "console" (no sinks are declared)"#],
    );
}

#[test]
fn any_nesting_is_bounded() {
    fn nested(depth: usize) -> String {
        let mut when = "{fields: [{name: a, regex: \"(\"}]}".to_string();
        for _ in 0..depth {
            when = format!("{{any: [{when}]}}");
        }
        with_rules(&format!(
            "  - name: deep\n    when: {when}\n    to: [console]\n"
        ))
    }
    // Eight levels of any are fine (the innermost regex error is still found).
    let path8 = format!("spec.rules[0].when{}", ".any[0]".repeat(8));
    assert_errors(
        &nested(8),
        &[&format!(
            "{path8}.fields[0].regex: regex parse error: unclosed group at offset 0"
        )],
    );
    // A ninth is an error at the level that goes too deep, and nothing below is read.
    assert_errors(
        &nested(9),
        &[&format!(
            "{path8}.any: any is nested more than 8 levels deep"
        )],
    );
    // Far deeper nesting (built in JSON to avoid YAML's own limits) is one error too.
    let mut when = serde_json::json!({"level": {"atLeast": "info"}});
    for _ in 0..100 {
        when = serde_json::json!({"any": [when]});
    }
    let spec = serde_json::json!({
        "sources": [{"name": "app", "file": {"paths": ["/var/log/x"]}}],
        "sinks": [{"name": "console", "stdout": {}}],
        "rules": [{"name": "deep", "when": when, "to": ["console"]}],
    });
    let spec: ServiceLogSpec = serde_json::from_value(spec).unwrap();
    let err = validate(&spec).unwrap_err();
    assert_eq!(err.len(), 1, "{err}");
    assert!(err.0[0].message.contains("nested more than 8"));
}

#[test]
fn too_many_fields_and_sinks() {
    let fields: Vec<String> = (0..33)
        .map(|i| format!("{{name: f{i}, exists: true}}"))
        .collect();
    let yaml = with_rules(&format!(
        "  - name: wide\n    when: {{fields: [{}]}}\n    to: [console]\n",
        fields.join(", ")
    ));
    assert_errors(
        &yaml,
        &[
            r#"spec.rules[0].when.fields[32].name: conditions may use at most 32 distinct field names; "f32" would be one more"#,
        ],
    );
    // The same name used many times counts once.
    let same: Vec<String> = (0..40)
        .map(|i| format!("{{name: f, equals: {i}}}"))
        .collect();
    let yaml = with_rules(&format!(
        "  - name: same\n    when: {{any: [{{fields: [{}]}}]}}\n    to: [console]\n",
        same.join(", ")
    ));
    assert_errors(&yaml, &[]);

    let sinks: Vec<String> = (0..65)
        .map(|i| format!("{{name: s{i}, stdout: {{}}}}"))
        .collect();
    let yaml = format!(
        "sources: [{{name: app, file: {{paths: [\"/var/log/x\"]}}}}]\nsinks: [{}]\n",
        sinks.join(", ")
    );
    assert_errors(
        &yaml,
        &["spec.sinks: at most 64 sinks are supported, got 65"],
    );
}

#[test]
fn names_must_be_dns_labels() {
    let yaml = format!(
        "{BASE}rules:\n  - name: \"\"\n    to: [console]\n  - name: {}\n    to: [console]\n  - name: -x\n    to: [console]\n",
        "a".repeat(64)
    );
    let got = errors(&yaml);
    assert_eq!(got.len(), 3, "{got:#?}");
    assert_eq!(got[0], "spec.rules[0].name: must not be empty");
    assert!(got[1].starts_with("spec.rules[1].name: "));
    assert!(got[2].starts_with(r#"spec.rules[2].name: "-x" is not a valid name"#));
}

#[test]
fn validate_and_compile_agree() {
    let good = spec(&with_rules("  - name: a\n    to: [console]\n"));
    assert!(validate(&good).is_ok());
    assert!(Router::compile(&good).is_ok());
    let bad = spec(&with_rules("  - name: a\n    to: [nope]\n"));
    let e1 = validate(&bad).unwrap_err();
    let e2 = Router::compile(&bad).unwrap_err();
    assert_eq!(e1, e2);
    assert_eq!(
        e1,
        ValidationErrors(vec![FieldError {
            path: "spec.rules[0].to[0]".into(),
            message: r#"unknown sink "nope" (declared: console, alerts)"#.into(),
        }])
    );
}

#[test]
fn delivery_fields_are_checked() {
    assert_errors(
        r#"
sources:
  - name: app
    file:
      paths: ["/var/log/app/*.log"]
      multiline: {startPattern: "^\\d{4}-", maxLines: 200, timeout: 500ms}
  - {name: legacy, syslog: {port: 5514, protocol: tcp}}
sinks:
  - name: loki
    http:
      url: https://loki:3100/loki/api/v1/push
      encoding: loki
      labels: [level, kubernetes.app]
      compression: gzip
      batch: {maxBytes: 1048576, timeout: 2s}
      headers: {X-Scope-OrgID: shop}
      requestTimeout: 10s
      tls: {caFile: /etc/ssl/loki/ca.pem}
    buffer: {type: disk, maxBytes: 104857600, whenFull: dropNewest}
    credentialsSecretRef: {name: loki-credentials}
  - name: es
    http: {url: "http://es:9200/_bulk", encoding: elasticsearch, index: logs-app}
defaultTo: [loki, es]
"#,
        &[],
    );
    assert_errors(
        r#"
sources:
  - name: app
    file:
      paths: ["/var/log/app/*.log"]
      multiline: {startPattern: "([", maxLines: 0, timeout: soon}
sinks:
  - name: out
    stdout: {}
    credentialsSecretRef: {name: Bad_Name}
    buffer: {maxBytes: 10, sync: batch}
  - name: es
    http:
      url: http://es:9200
      encoding: elasticsearch
      index: Logs
      labels: [level]
      batch: {maxBytes: 10, timeout: 0s}
      headers: {"bad header": x}
      requestTimeout: 2h
      tls: {caFile: ca.pem}
"#,
        &[
            "spec.sources[0].file.multiline.startPattern: regex parse error: unclosed character class at offset 1",
            "spec.sources[0].file.multiline.maxLines: must be at least 1",
            "spec.sources[0].file.multiline.timeout: \"soon\" is not a duration like 500ms, 2s or 1m: expected number at 0",
            "spec.sinks[0].buffer.sync: applies to disk buffers only (a memory buffer has nothing to flush to a device)",
            "spec.sinks[0].buffer.maxBytes: must be at least 65536 (64 KiB)",
            "spec.sinks[0].credentialsSecretRef: applies to http, otlp and kafka sinks only",
            "spec.sinks[0].credentialsSecretRef.name: \"Bad_Name\" is not a valid Secret name (lowercase letters, digits, '-' and '.')",
            "spec.sinks[1].http.labels: applies to encoding: loki only",
            "spec.sinks[1].http.index: \"Logs\" is not a valid Elasticsearch index name (lowercase, no spaces or \\/*?\"<>|,#:, not starting with -, _ or +)",
            "spec.sinks[1].http.batch.maxBytes: must be between 1024 and 67108864 (64 MiB)",
            "spec.sinks[1].http.batch.timeout: \"0s\" must be longer than zero",
            "spec.sinks[1].http.requestTimeout: \"2h\" is longer than an hour",
            "spec.sinks[1].http.headers[bad header]: \"bad header\" is not a valid HTTP header name",
            "spec.sinks[1].http.tls.caFile: \"ca.pem\" must be an absolute path",
        ],
    );
}

/// Given a spec, then validation reports one error per `(path, fragment)`, in order, each
/// at that path with a message containing that fragment.
fn assert_refusals(yaml: &str, want: &[(&str, &str)]) {
    let got = match validate(&spec(yaml)) {
        Ok(()) => Vec::new(),
        Err(e) => e.0,
    };
    let ok = got.len() == want.len()
        && got
            .iter()
            .zip(want)
            .all(|(g, (path, fragment))| g.path == *path && g.message.contains(fragment));
    assert!(
        ok,
        "\nexpected errors (path: fragment):\n{}\ngot:\n{}\n",
        want.iter()
            .map(|(p, f)| format!("{p}: …{f}…"))
            .collect::<Vec<_>>()
            .join("\n"),
        got.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn source_paths_stay_in_a_log_directory_of_their_own() {
    let good = [
        "/var/log/app/*.log",
        "/var/log/**/x.log",
        "/var/log/*.log",
        "/var/log/app/.hidden.log",
        "/opt/app/logs/*.log",
        "/var/lib/app/log/*.log",
        "/home/app/logs/x.log",
        "/tmp/app.log",
        "/data/logs/[a-c]*.log",
        "/var/run/app/*.log",
    ];
    let yaml = format!(
        "sources: [{{name: app, file: {{paths: [{}]}}}}]\nsinks: []\n",
        good.map(|p| format!("{p:?}")).join(", ")
    );
    assert_refusals(&yaml, &[]);

    let bad: &[(&str, &str)] = &[
        ("var/log/*.log", "must be an absolute path"),
        ("/var/log/../etc/*.log", r#"a ".." segment"#),
        ("/var/log/./app.log", r#"a "." segment"#),
        ("/var//log/app.log", "an empty segment"),
        ("/var/log/app/", "an empty segment"),
        ("/", r#""/" is not a log file or directory"#),
        (
            "/*.log",
            "has no directory of its own (its source directory would be /",
        ),
        ("/*/x", "has no directory of its own"),
        ("/**/x.log", "has no directory of its own"),
        ("/app.log", "has no directory of its own"),
        ("/proc/1/environ", "under /proc"),
        ("/sys/**", "under /sys"),
        ("/dev/stdin", "under /dev"),
        (
            "/var/run/secrets/kubernetes.io/serviceaccount/token",
            "under /var/run/secrets (mounted Secrets and the pod's ServiceAccount token)",
        ),
        ("/run/secrets/*", "under /run/secrets"),
        ("/var/**/*.log", "under /var/run/secrets"),
        ("/var/run/*/token", "under /var/run/secrets"),
        (
            "/var/lib/servicelog/*.json",
            "under /var/lib/servicelog (the sidecar's own state",
        ),
        (
            "/var/run/servicelog/credentials/loki/password",
            "under /var/run/servicelog/credentials (the sinks' mounted credentials)",
        ),
        (
            "/var/run/servicelog/zookeeper/auth",
            "under /var/run/servicelog/zookeeper",
        ),
        ("/etc/app/*.log", "over the image's /etc files"),
        ("/usr/local/app/logs/*.log", "over the image's /usr files"),
        ("/root/*.log", "over the image's /root files"),
        ("/lib64/x.log", "over the image's /lib64 files"),
        (
            "/var/*.log",
            "over all of the image's /var; use a directory below it, like /var/log/app",
        ),
        (
            "/opt/*.log",
            "over all of the image's /opt; use a directory below it, like /opt/app/logs",
        ),
        ("/var/lib/*.log", "over all of the image's /var/lib"),
    ];
    let yaml = format!(
        "sources: [{{name: app, file: {{paths: [{}]}}}}]\nsinks: []\n",
        bad.iter()
            .map(|(p, _)| format!("{p:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let want: Vec<(String, &str)> = bad
        .iter()
        .enumerate()
        .map(|(i, (_, f))| (format!("spec.sources[0].file.paths[{i}]"), *f))
        .collect();
    let want: Vec<(&str, &str)> = want.iter().map(|(p, f)| (p.as_str(), *f)).collect();
    assert_refusals(&yaml, &want);
}

#[test]
fn sink_paths_write_nowhere_the_sidecar_or_the_image_relies_on() {
    let bad: &[(&str, &str)] = &[
        ("out.log", "must be an absolute path"),
        ("", "must not be empty"),
        (
            "/out.log",
            "has no directory of its own (its sink directory would be /",
        ),
        ("/var/log/../out.log", r#"a ".." segment"#),
        (
            "/var/lib/servicelog/checkpoints.json",
            "under /var/lib/servicelog (the sidecar's own state",
        ),
        ("/var/lib/servicelog", "under /var/lib/servicelog"),
        ("/var/run/secrets/x.log", "under /var/run/secrets"),
        (
            "/var/run/servicelog/zookeeper/auth",
            "under /var/run/servicelog/zookeeper",
        ),
        (
            "/dev/null",
            "under /dev (device files), which sinks never write",
        ),
        (
            "/etc/ssl/out.log",
            "its sink directory /etc/ssl would get a volume mounted over the image's /etc files",
        ),
        ("/var/out.log", "over all of the image's /var"),
    ];
    let sinks: Vec<String> = bad
        .iter()
        .enumerate()
        .map(|(i, (p, _))| format!("{{name: s{i}, file: {{path: {p:?}}}}}"))
        .collect();
    let yaml = format!(
        "sources: [{{name: app, file: {{paths: [/var/log/app/*.log]}}}}]\nsinks: [{{name: ok, file: {{path: /var/log/servicelog/out.log}}}}, {}]\n",
        sinks.join(", ")
    );
    let want: Vec<(String, &str)> = bad
        .iter()
        .enumerate()
        .map(|(i, (_, f))| (format!("spec.sinks[{}].file.path", i + 1), *f))
        .collect();
    let want: Vec<(&str, &str)> = want.iter().map(|(p, f)| (p.as_str(), *f)).collect();
    assert_refusals(&yaml, &want);
}

#[test]
fn credential_headers_go_in_the_secret_not_the_spec() {
    let allowed = [
        "X-Scope-OrgID",
        "Content-Type",
        "X-Request-Source",
        "User-Agent",
        "X-Tenant",
    ];
    let refused = [
        "Authorization",
        "proxy-authorization",
        "Cookie",
        "Set-Cookie",
        "X-Api-Key",
        "Api-Key",
        "apikey",
        "DD-API-KEY",
        "X-Auth-Token",
        "X-Authentication",
        "X-Vault-Token",
        "Private-Token",
        "X-Client-Secret",
        "X_Session_Id",
        "X-Password",
    ];
    let headers: Vec<String> = allowed
        .iter()
        .chain(&refused)
        .map(|h| format!("{h}: v"))
        .collect();
    let yaml = format!(
        "sources: [{{name: app, file: {{paths: [/var/log/app/*.log]}}}}]\nsinks: [{{name: out, http: {{url: \"http://x\", headers: {{{}}}}}}}]\n",
        headers.join(", ")
    );
    // Headers are a map, so errors come in the names' sorted order.
    let mut sorted = refused.to_vec();
    sorted.sort();
    let want: Vec<String> = sorted
        .iter()
        .map(|h| format!("spec.sinks[0].http.headers[{h}]"))
        .collect();
    let want: Vec<(&str, &str)> = want
        .iter()
        .map(|p| {
            (
                p.as_str(),
                "put it in the Secret named by credentialsSecretRef",
            )
        })
        .collect();
    assert_refusals(&yaml, &want);
    assert_eq!(
        errors(&yaml)[0],
        r#"spec.sinks[0].http.headers[Api-Key]: "Api-Key" carries a credential, and headers are published in plain text: put it in the Secret named by credentialsSecretRef (key header.Api-Key, or username/password, token)"#
    );
}

#[test]
fn buffers_have_a_ceiling() {
    let yaml = r#"
sources: [{name: app, file: {paths: [/var/log/app/*.log]}}]
sinks:
  - {name: a, stdout: {}, buffer: {type: disk, maxBytes: 1073741824}}
  - {name: b, stdout: {}, buffer: {type: disk, maxBytes: 1073741825}}
  - {name: c, stdout: {}, buffer: {type: memory, maxBytes: 67108864}}
  - {name: d, stdout: {}, buffer: {maxBytes: 67108865}}
"#;
    assert_errors(
        yaml,
        &[
            "spec.sinks[1].buffer.maxBytes: must be at most 1073741824 (1 GiB, the sidecar's state volume) for this buffer type",
            "spec.sinks[1].buffer: the disk buffers of this spec together would hold more than 1073741824 bytes (1 GiB, the size of the sidecar's state volume); counting 268435456 for a disk buffer without maxBytes",
            "spec.sinks[3].buffer.maxBytes: must be at most 67108864 (64 MiB, the sidecar's memory limit) for this buffer type",
        ],
    );
    // Four disk buffers at their default fit; a fifth does not.
    let sinks: Vec<String> = (0..5)
        .map(|i| format!("{{name: s{i}, stdout: {{}}, buffer: {{type: disk}}}}"))
        .collect();
    let yaml = format!(
        "sources: [{{name: app, file: {{paths: [/var/log/app/*.log]}}}}]\nsinks: [{}]\n",
        sinks.join(", ")
    );
    assert_refusals(
        &yaml,
        &[("spec.sinks[4].buffer", "together would hold more than")],
    );
}

#[test]
fn the_spec_has_a_regex_and_condition_budget() {
    // 48 regexes fit; the 49th is refused at its place, and nothing after it is checked.
    let rules: Vec<String> = (0..50)
        .map(|i| {
            format!("  - {{name: r{i}, when: {{message: {{regex: \"a{i}\"}}}}, to: [console]}}")
        })
        .collect();
    let yaml = with_rules(&(rules.join("\n") + "\n"));
    assert_errors(
        &yaml,
        &[
            "spec.rules[48].when.message.regex: a spec may hold at most 48 regexes and this is one more (later regexes are not checked)",
        ],
    );

    // Few regexes, each large: the bytes budget stops them before the count does.
    let rules: Vec<String> = (0..30)
        .map(|i| format!("  - {{name: r{i}, when: {{message: {{regex: \"\\\\w{{20}}{i}\"}}}}, to: [console]}}"))
        .collect();
    let got = errors(&with_rules(&(rules.join("\n") + "\n")));
    assert_eq!(got.len(), 1, "{got:#?}");
    assert!(
        got[0].contains("regexes would hold more than 33554432 bytes together"),
        "{got:#?}"
    );

    // Width of one any.
    let alts: Vec<String> = (0..65)
        .map(|_| "{level: {in: [warn]}}".to_string())
        .collect();
    assert_errors(
        &with_rules(&format!(
            "  - {{name: wide, when: {{any: [{}]}}, to: [console]}}\n",
            alts.join(", ")
        )),
        &["spec.rules[0].when.any: any lists 65 alternatives; at most 64 are allowed"],
    );

    // Conditions across the spec: each rule below has 63 alternatives of one level
    // condition each, 126 conditions; eight rules (1008) fit, the ninth goes past 1024.
    let alts: Vec<String> = (0..63)
        .map(|_| "{level: {in: [warn]}}".to_string())
        .collect();
    let rules: Vec<String> = (0..9)
        .map(|i| {
            format!(
                "  - {{name: r{i}, when: {{any: [{}]}}, to: [console]}}",
                alts.join(", ")
            )
        })
        .collect();
    assert_refusals(
        &with_rules(&(rules.join("\n") + "\n")),
        &[(
            "spec.rules[8].when",
            "the spec's conditions number more than 1024",
        )],
    );
}
