//! The `otlp` sink's definition: what it accepts and each problem at its field path.

use servicelog_api::{
    v1alpha1::{Compression, OtlpProtocol, ServiceLogSpec},
    validate,
};

fn errors(yaml: &str) -> Vec<String> {
    let spec: ServiceLogSpec = serde_yaml::from_str(yaml).expect("fixture is valid YAML");
    match validate(&spec) {
        Ok(()) => Vec::new(),
        Err(e) => e.iter().map(ToString::to_string).collect(),
    }
}

const SOURCES: &str = r#"
sources:
  - name: app
    file: {paths: ["/var/log/app/*.log"], format: json}
"#;

#[test]
fn given_a_full_otlp_sink_when_validated_then_it_is_accepted_with_its_fields() {
    let yaml = format!(
        r#"{SOURCES}
sinks:
  - name: otel
    otlp:
      endpoint: https://otel-collector.monitoring:4318
      protocol: http/protobuf
      compression: gzip
      headers: {{X-Scope-OrgID: shop}}
      resource: {{attributes: {{service.name: checkout, deployment.environment: prod}}}}
      batch: {{maxBytes: 65536, timeout: 500ms}}
      requestTimeout: 5s
      tls: {{caFile: /etc/otel/ca.pem}}
    credentialsSecretRef: {{name: otel-token}}
defaultTo: [otel]
"#
    );
    assert_eq!(errors(&yaml), Vec::<String>::new());
    let spec: ServiceLogSpec = serde_yaml::from_str(&yaml).unwrap();
    let otlp = spec.sinks[0].otlp.as_ref().unwrap();
    assert_eq!(otlp.protocol, OtlpProtocol::HttpProtobuf);
    assert_eq!(otlp.compression, Compression::Gzip);
    assert_eq!(
        otlp.resource.as_ref().unwrap().attributes["service.name"],
        "checkout"
    );
    let json = serde_json::to_value(&spec.sinks[0]).unwrap();
    assert_eq!(json["otlp"]["protocol"], "http/protobuf");
}

#[test]
fn given_an_otlp_sink_with_bad_fields_when_validated_then_each_is_reported_at_its_path() {
    let yaml = format!(
        r#"{SOURCES}
sinks:
  - name: otel
    otlp:
      endpoint: otel-collector:4318
      headers: {{Authorization: Bearer x, "bad header": y}}
      resource: {{attributes: {{"": x}}}}
      batch: {{maxBytes: 10, timeout: soon}}
      requestTimeout: 2h
      tls: {{caFile: ca.pem}}
defaultTo: [otel]
"#
    );
    assert_eq!(
        errors(&yaml),
        [
            "spec.sinks[0].otlp.endpoint: \"otel-collector:4318\" must start with http:// or https://",
            "spec.sinks[0].otlp.resource.attributes: an attribute name must not be empty",
            "spec.sinks[0].otlp.batch.maxBytes: must be between 1024 and 67108864 (64 MiB)",
            "spec.sinks[0].otlp.batch.timeout: \"soon\" is not a duration like 500ms, 2s or 1m: expected number at 0",
            "spec.sinks[0].otlp.requestTimeout: \"2h\" is longer than an hour",
            "spec.sinks[0].otlp.headers[Authorization]: \"Authorization\" carries a credential, and headers are published in plain text: put it in the Secret named by credentialsSecretRef (key header.Authorization, or username/password, token)",
            "spec.sinks[0].otlp.headers[bad header]: \"bad header\" is not a valid HTTP header name",
            "spec.sinks[0].otlp.tls.caFile: \"ca.pem\" must be an absolute path",
        ]
    );
}

#[test]
fn given_an_unknown_otlp_protocol_when_parsed_then_it_is_refused() {
    let yaml = format!(
        "{SOURCES}\nsinks: [{{name: o, otlp: {{endpoint: \"http://a\", protocol: grpc}}}}]\n"
    );
    let err = serde_yaml::from_str::<ServiceLogSpec>(&yaml).unwrap_err();
    assert!(err.to_string().contains("http/protobuf"), "{err}");
}
