//! Byte sizes in a spec as integers or Kubernetes quantities: the same bytes, the same
//! config hash, and a clear error with the field path for anything else.

use servicelog_api::{parse_spec, validate, wire::spec_hash};

fn parse(yaml: &str) -> Result<servicelog_api::ServiceLogSpec, String> {
    let value: serde_json::Value = serde_yaml::from_str(yaml).expect("fixture is valid YAML");
    parse_spec(&value).map_err(|e| e.to_string())
}

fn spec(sizes: [&str; 4]) -> String {
    let [line, buffer, rotate, batch] = sizes;
    format!(
        r#"
sources:
  - {{name: app, file: {{paths: ["/var/log/app/*.log"]}}, maxLineBytes: {line}}}
sinks:
  - {{name: out, file: {{path: /var/log/servicelog/out.log, maxBytes: {rotate}}}, buffer: {{maxBytes: {buffer}}}}}
  - {{name: loki, http: {{url: "http://loki:3100/loki/api/v1/push", encoding: loki, batch: {{maxBytes: {batch}}}}}}}
defaultTo: [out, loki]
"#
    )
}

#[test]
fn given_quantities_or_integers_then_the_spec_is_the_same_and_hashes_the_same() {
    let quantities = parse(&spec(["64Ki", "8Mi", "100Mi", "1Mi"])).expect("quantities parse");
    let integers =
        parse(&spec(["65536", "8388608", "104857600", "1048576"])).expect("integers parse");
    assert_eq!(quantities, integers);
    validate(&quantities).expect("valid");
    assert_eq!(
        spec_hash(&quantities).expect("hash"),
        spec_hash(&integers).expect("hash")
    );
    let published = serde_json::to_value(&quantities).expect("serialises");
    assert_eq!(published["sinks"][0]["buffer"]["maxBytes"], 8_388_608);
}

#[test]
fn given_a_size_that_is_no_quantity_then_the_error_names_the_field_and_the_value() {
    let err = parse(&spec(["64Ki", "\"8 megs\"", "100Mi", "1Mi"])).expect_err("refused");
    assert!(
        err.contains("sinks[0].buffer.maxBytes") && err.contains("\"8 megs\" is not a byte size"),
        "{err}"
    );
}

#[test]
fn given_quantities_out_of_range_then_validation_says_the_range_at_the_field() {
    let spec = parse(&spec(["32Mi", "8Gi", "100Mi", "128Mi"])).expect("parses");
    let errors: Vec<String> = validate(&spec)
        .expect_err("out of range")
        .iter()
        .map(ToString::to_string)
        .collect();
    for want in [
        "spec.sources[0].maxLineBytes: must be between 1024 (1Ki) and 16777216 (16Mi)",
        "spec.sinks[0].buffer.maxBytes: must be at most",
        "spec.sinks[1].http.batch.maxBytes: must be between 1024 and 67108864",
    ] {
        assert!(
            errors.iter().any(|e| e.starts_with(want)),
            "no {want:?} in {errors:#?}"
        );
    }
}
