//! Offline checking of ServiceLog manifests: `servicelog-operator validate FILE…`.
//!
//! Runs the same validation the webhook, the operator and the sidecars run, plus what only
//! a file can show: YAML syntax (with its line), fields of the wrong type (with their path)
//! and unknown fields, which the API server would silently prune. Documents of other kinds
//! are skipped, so a whole GitOps directory can be checked.

use std::fmt;

use serde::Deserialize;
use serde_json::Value;
use servicelog_api::{
    read_spec,
    wire::{API_VERSION, Envelope, KIND, Manifest},
};

/// One thing wrong in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// `namespace/name` of the ServiceLog, or `document N` when it has none yet.
    pub object: String,
    /// Field path (`spec.rules[1].to[0]`), empty for a whole-document problem.
    pub path: String,
    pub message: String,
    /// 1-based line, when the YAML parser knows it.
    pub line: Option<usize>,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        write!(f, "{}: ", self.object)?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

/// What checking one file found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// ServiceLog documents checked.
    pub checked: usize,
    /// Documents of other kinds, passed over.
    pub skipped: usize,
    pub problems: Vec<Problem>,
}

/// Checks every document of a multi-document YAML text.
pub fn check_yaml(text: &str) -> Report {
    let mut report = Report::default();
    for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let label = format!("document {}", index + 1);
        let value = match serde_yaml::Value::deserialize(document) {
            Ok(value) => value,
            Err(e) => {
                report.problems.push(Problem {
                    object: label,
                    path: String::new(),
                    line: e.location().map(|l| l.line()),
                    message: format!("not valid YAML: {e}"),
                });
                // The parser cannot resynchronise after a syntax error.
                break;
            }
        };
        if value.is_null() {
            continue;
        }
        let json = match serde_json::to_value(&value) {
            Ok(json) => json,
            Err(e) => {
                report.problems.push(Problem {
                    object: label,
                    path: String::new(),
                    line: None,
                    message: format!("not representable as JSON: {e}"),
                });
                continue;
            }
        };
        check_document(&json, label, &mut report);
    }
    report
}

fn check_document(json: &Value, label: String, report: &mut Report) {
    let kind = json.get("kind").and_then(Value::as_str).unwrap_or_default();
    let api_version = json
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if kind != KIND || !api_version.starts_with("servicelog.io/") {
        report.skipped += 1;
        return;
    }
    report.checked += 1;
    let object = object_label(json).unwrap_or(label);
    let mut problem = |path: String, message: String| {
        report.problems.push(Problem {
            object: object.clone(),
            path,
            message,
            line: None,
        })
    };
    if api_version != API_VERSION {
        problem(
            "apiVersion".into(),
            format!("{api_version:?} is not served; use {API_VERSION:?}"),
        );
        return;
    }
    let manifest: Manifest = match serde_path_to_error::deserialize(json) {
        Ok(manifest) => manifest,
        Err(e) => {
            problem(e.path().to_string(), e.inner().to_string());
            return;
        }
    };
    if manifest.metadata.name.is_empty() {
        problem("metadata.name".into(), "is required".into());
    }
    let spec = match read_spec(&manifest.spec) {
        Ok(read) => {
            for e in read.unknown {
                problem(
                    e.path,
                    format!("{} (the API server would drop it)", e.message),
                );
            }
            read.spec
        }
        Err(errors) => {
            for e in errors {
                problem(e.path, e.message);
            }
            return;
        }
    };
    if let Err(errors) = Envelope::publishable("", 0, spec) {
        for e in errors {
            problem(e.path, e.message);
        }
    }
}

fn object_label(json: &Value) -> Option<String> {
    let metadata = json.get("metadata")?;
    let name = metadata.get("name")?.as_str()?;
    let namespace = metadata
        .get("namespace")
        .and_then(Value::as_str)
        .unwrap_or("default");
    Some(format!("{namespace}/{name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
apiVersion: servicelog.io/v1alpha1
kind: ServiceLog
metadata: {name: checkout, namespace: shop}
spec:
  sources:
    - name: app
      file: {paths: ["/var/log/app/*.log"], format: json}
  sinks:
    - name: console
      stdout: {}
  rules:
    - name: drop-debug
      when: {level: {below: info}}
      action: drop
  defaultTo: [console]
"#;

    #[test]
    fn a_good_manifest_has_no_problems_and_other_kinds_are_skipped() {
        let text =
            format!("{GOOD}---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: x}}\n---\n");
        let report = check_yaml(&text);
        assert_eq!(report.problems, vec![], "expected no problems");
        assert_eq!((report.checked, report.skipped), (1, 1));
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let text = GOOD
            .replace(
                "defaultTo: [console]",
                "defaultTo: [nowhere]\n  defautTo: [console]",
            )
            .replace("action: drop", "action: drop\n      to: [console]");
        let report = check_yaml(&text);
        let rendered: Vec<String> = report.problems.iter().map(ToString::to_string).collect();
        let all = rendered.join("\n");
        assert!(
            all.contains("shop/checkout: spec.defautTo: unknown field"),
            "{all}"
        );
        assert!(all.contains("spec.defaultTo[0]"), "{all}");
        assert!(all.contains("spec.rules[0]"), "{all}");
        assert!(report.problems.len() >= 3, "{all}");
    }

    #[test]
    fn type_errors_name_the_field() {
        let report = check_yaml(&GOOD.replace("action: drop", "action: dorp"));
        assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
        assert_eq!(report.problems[0].path, "spec.rules[0].action");
        assert!(report.problems[0].message.contains("dorp"));
    }

    #[test]
    fn yaml_syntax_errors_carry_the_line() {
        let report = check_yaml("apiVersion: servicelog.io/v1alpha1\nkind: [unclosed\n");
        assert_eq!(report.problems.len(), 1);
        assert!(
            report.problems[0].line.is_some(),
            "{:?}",
            report.problems[0]
        );
    }

    #[test]
    fn unserved_version_is_refused() {
        let report = check_yaml(&GOOD.replace("v1alpha1", "v1"));
        assert_eq!(report.problems[0].path, "apiVersion");
    }
}
