//! The Kafka sink's definition: each problem at its field path, from inline YAML.

use servicelog_api::{v1alpha1::ServiceLogSpec, validate, validate::parse_spec};

fn errors(sinks: &str) -> Vec<String> {
    let yaml = format!(
        "sources:\n  - name: app\n    file: {{paths: [\"/var/log/app/*.log\"], format: json}}\n\
         sinks:\n{sinks}defaultTo: [k]\n"
    );
    let spec: ServiceLogSpec = serde_yaml::from_str(&yaml).expect("fixture is valid YAML");
    match validate(&spec) {
        Ok(()) => Vec::new(),
        Err(e) => e.iter().map(ToString::to_string).collect(),
    }
}

fn assert_errors(sinks: &str, want: &[&str]) {
    let got = errors(sinks);
    assert!(
        got == want,
        "\nexpected errors:\n{}\ngot:\n{}\n",
        want.join("\n"),
        got.join("\n")
    );
}

#[test]
fn given_a_complete_kafka_sink_then_it_is_valid() {
    assert_errors(
        "  - name: k\n    kafka:\n      brokers: [\"kafka-0.kafka:9092\", \"10.0.0.7:9093\", \"[::1]:9092\"]\n      \
         topic: app.logs_v1-x\n      key: request.id\n      encoding: json\n      compression: lz4\n      \
         acks: all\n      batch: {maxBytes: 65536, timeout: 50ms}\n      tls: {caFile: /etc/kafka/ca.pem}\n    \
         credentialsSecretRef: {name: kafka-sasl}\n",
        &[],
    );
}

#[test]
fn given_bad_kafka_fields_then_each_is_reported_at_its_path() {
    assert_errors(
        "  - name: k\n    kafka:\n      brokers: [\"kafka:0\", \"kafka://b:9092\", \"nohost\", \":9092\", \"::1:9092\", \"a b:1\"]\n      \
         topic: \"bad/topic\"\n      key: \"a..b\"\n      batch: {maxBytes: 2097152, timeout: soon}\n      \
         tls: {caFile: ca.pem}\n",
        &[
            r#"spec.sinks[0].kafka.brokers[0]: "kafka:0" is not host:port (the port is a number from 1 to 65535)"#,
            r#"spec.sinks[0].kafka.brokers[1]: "kafka://b:9092" is not host:port (no scheme: Kafka brokers are given as host:port)"#,
            r#"spec.sinks[0].kafka.brokers[2]: "nohost" is not host:port (no port)"#,
            r#"spec.sinks[0].kafka.brokers[3]: ":9092" is not host:port (a DNS name or an IP address before the colon)"#,
            r#"spec.sinks[0].kafka.brokers[4]: "::1:9092" is not host:port (a DNS name or an IP address before the colon)"#,
            r#"spec.sinks[0].kafka.brokers[5]: "a b:1" is not host:port (a DNS name or an IP address before the colon)"#,
            r#"spec.sinks[0].kafka.topic: "bad/topic" contains '/': Kafka topic names use letters, digits, '.', '_' and '-'"#,
            r#"spec.sinks[0].kafka.key: "a..b" has an empty segment (dots separate nested field names)"#,
            "spec.sinks[0].kafka.batch.maxBytes: must be between 1024 and 1048576 (1 MiB, the broker's default message.max.bytes)",
            "spec.sinks[0].kafka.batch.timeout: \"soon\" is not a duration like 500ms, 2s or 1m: expected number at 0",
            r#"spec.sinks[0].kafka.tls.caFile: "ca.pem" must be an absolute path"#,
        ],
    );
}

#[test]
fn given_an_empty_topic_or_no_brokers_then_both_are_reported() {
    assert_errors(
        "  - name: k\n    kafka: {brokers: [], topic: \"\"}\n",
        &[
            "spec.sinks[0].kafka.brokers: names at least one broker (host:port)",
            "spec.sinks[0].kafka.topic: must not be empty",
        ],
    );
    let long = "t".repeat(250);
    assert_errors(
        &format!("  - name: k\n    kafka: {{brokers: [\"k:9092\"], topic: {long}}}\n"),
        &["spec.sinks[0].kafka.topic: is 250 characters long; Kafka allows 249"],
    );
    assert_errors(
        "  - name: k\n    kafka: {brokers: [\"k:9092\"], topic: \"..\"}\n",
        &[r#"spec.sinks[0].kafka.topic: ".." is not a valid Kafka topic name"#],
    );
}

#[test]
fn given_kafka_and_another_kind_then_the_sink_is_refused() {
    assert_errors(
        "  - name: k\n    stdout: {}\n    kafka: {brokers: [\"k:9092\"], topic: t}\n",
        &[
            "spec.sinks[0]: a sink sets exactly one of stdout, file, http, otlp or kafka, not several",
        ],
    );
}

/// Codecs the sidecar is not built with, and acks other than `all`, are refused by the
/// schema, with the field's path.
#[test]
fn given_zstd_or_acks_1_then_parsing_names_the_field() {
    for (field, value) in [("compression", "\"zstd\""), ("acks", "\"1\"")] {
        let json = format!(
            r#"{{"sources": [{{"name": "app", "file": {{"paths": ["/var/log/app/*.log"]}}}}],
                "sinks": [{{"name": "k", "kafka": {{"brokers": ["k:9092"], "topic": "t", "{field}": {value}}}}}],
                "defaultTo": ["k"]}}"#
        );
        let value: serde_json::Value = serde_json::from_str(&json).expect("fixture is JSON");
        let errors = parse_spec(&value).expect_err("an unknown variant is refused");
        assert_eq!(errors.0.len(), 1, "{errors:?}");
        assert_eq!(errors.0[0].path, format!("spec.sinks[0].kafka.{field}"));
    }
}
