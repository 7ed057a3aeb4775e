//! Step 1, validate: the envelope to publish, or every problem with its field path. The
//! same question the webhook and `servicelog-operator validate` ask
//! ([`Envelope::publishable`]); an invalid spec is never published, and the sidecars keep
//! their last good config.

use servicelog_api::{
    v1alpha1::{ServiceLog, ServiceLogSpec},
    wire::Envelope,
};

use crate::cache::CachedServiceLog;

/// The cached resource with its spec and status parsed, and why the spec did not parse
/// (then the spec is empty, and [`check`] reports the reason). The status has no reasons
/// or messages (see [`CachedServiceLog::status`]).
pub fn expand(obj: &CachedServiceLog) -> (ServiceLog, Option<String>) {
    let (spec, unparsed) = match obj.spec() {
        Ok(spec) => (spec, None),
        Err(errors) => {
            let problems: Vec<String> = errors.iter().map(ToString::to_string).collect();
            (ServiceLogSpec::default(), Some(problems.join("; ")))
        }
    };
    let full = ServiceLog {
        metadata: obj.metadata.clone(),
        spec,
        status: obj.status(),
    };
    (full, unparsed)
}

/// The envelope of a valid resource, or every problem (`path: message`).
pub fn check(obj: &ServiceLog, unparsed: Option<&str>) -> Result<Envelope, Vec<String>> {
    if let Some(problem) = unparsed {
        return Err(vec![problem.to_owned()]);
    }
    let uid = obj.metadata.uid.clone().unwrap_or_default();
    Envelope::publishable(uid, obj.metadata.generation.unwrap_or(0), obj.spec.clone())
        .map_err(|errors| errors.iter().map(ToString::to_string).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cached(yaml: &str) -> CachedServiceLog {
        let value: serde_json::Value = serde_yaml::from_str(yaml).expect("fixture YAML");
        serde_json::from_value(value).expect("a cached ServiceLog")
    }

    const GOOD: &str = r#"
metadata: {name: checkout, namespace: shop, uid: u-1, generation: 4}
spec:
  sources: [{name: app, file: {paths: ["/var/log/app/*.log"], format: json}}]
  sinks: [{name: console, stdout: {}}]
  rules: [{name: all, to: [console]}]
"#;

    #[test]
    fn a_valid_resource_becomes_its_envelope() {
        let (obj, unparsed) = expand(&cached(GOOD));
        let envelope = check(&obj, unparsed.as_deref()).expect("valid");
        assert_eq!((envelope.uid.as_str(), envelope.generation), ("u-1", 4));
        assert!(envelope.hash.starts_with("sha256:"));
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let bad = GOOD
            .replace("to: [console]", "to: [console, loki]")
            .replace("format: json}}", "format: json}, levelField: ''}");
        let (obj, unparsed) = expand(&cached(&bad));
        let problems = check(&obj, unparsed.as_deref()).expect_err("invalid");
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems[0].starts_with("spec.sources[0].levelField:"),
            "{problems:?}"
        );
        assert!(
            problems[1].starts_with("spec.rules[0].to[1]: unknown sink \"loki\""),
            "{problems:?}"
        );
    }

    #[test]
    fn a_spec_that_does_not_parse_is_reported_by_its_field() {
        let bad = GOOD.replace("rules: [{name: all,", "rules: [{nme: all, name: all,");
        let (obj, unparsed) = expand(&cached(&bad));
        let problems = check(&obj, unparsed.as_deref()).expect_err("unknown field");
        assert!(problems[0].contains("spec.rules[0].nme"), "{problems:?}");
    }
}
