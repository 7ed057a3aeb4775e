//! Every problem of a `ServiceLog` spec at once, each with its field path.
//!
//! The webhook, the operator's `validate` subcommand and the sidecar all run this before a
//! spec goes anywhere, so a user sees the full list from one `kubectl apply` instead of
//! fixing problems one round trip at a time.
//!
//! "Validates" and "compiles" are the same thing: [`validate`] is
//! [`crate::rules::Router::compile`] with the result thrown away. A spec the webhook
//! accepted can therefore never be rejected by a sidecar (built from the same version), and
//! the checks live next to the code whose assumptions they protect. This module holds the
//! error types and the small syntactic checks (names, globs, URLs) the compiler calls.

use std::fmt;

use crate::{rules::Router, v1alpha1::ServiceLogSpec};

/// One problem, at one place in the spec.
///
/// `path` uses the user's field names (`spec.rules[2].when.message.regex`), so it points
/// into the YAML they wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

impl FieldError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// All problems of a spec, in the order they appear in it. Never empty when returned as an
/// error.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ValidationErrors(pub Vec<FieldError>);

impl ValidationErrors {
    pub fn iter(&self) -> std::slice::Iter<'_, FieldError> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl<'a> IntoIterator for &'a ValidationErrors {
    type Item = &'a FieldError;
    type IntoIter = std::slice::Iter<'a, FieldError>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl IntoIterator for ValidationErrors {
    type Item = FieldError;
    type IntoIter = std::vec::IntoIter<FieldError>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

/// Checks `spec` in full and returns every problem found.
///
/// Notable behaviors: never panics, whatever the input; the ZooKeeper payload size limit
/// is not checked here but by [`crate::wire`], which knows the envelope.
pub fn validate(spec: &ServiceLogSpec) -> Result<(), ValidationErrors> {
    Router::compile(spec).map(|_| ())
}

/// Reads a spec from JSON exactly as written: a field this build does not know is an error
/// naming it (`spec.sinks[0].kafak: unknown field …`), as is a value of the wrong type.
///
/// Anything that writes a spec — a user's manifest, a config znode from a script, a CRD
/// newer than this build — may carry fields a typed parse would silently drop; dropping
/// one can turn a filtering condition into match-all, so they are refused instead.
///
/// Notable behaviors: reports every unknown field met before the first type error (serde
/// stops there); never panics.
pub fn parse_spec(value: &serde_json::Value) -> Result<ServiceLogSpec, ValidationErrors> {
    let read = read_spec(value)?;
    if read.unknown.is_empty() {
        Ok(read.spec)
    } else {
        Err(ValidationErrors(read.unknown))
    }
}

/// A spec read with its unknown fields listed beside it, for a caller that reports them
/// together with the rest of [`validate`]'s findings (`servicelog-operator validate`).
#[derive(Clone, Debug, PartialEq)]
pub struct ReadSpec {
    pub spec: ServiceLogSpec,
    /// One error per unknown field, by path.
    pub unknown: Vec<FieldError>,
}

/// [`parse_spec`] without refusing unknown fields: only a value of the wrong type is an
/// error (with the unknown fields met before it).
pub fn read_spec(value: &serde_json::Value) -> Result<ReadSpec, ValidationErrors> {
    let mut unknown = Vec::new();
    let mut note = |path: serde_ignored::Path<'_>| {
        unknown.push(FieldError::new(
            ignored_path(&path),
            "unknown field: not part of the ServiceLog spec this build knows",
        ));
    };
    let ignored = serde_ignored::Deserializer::new(value, &mut note);
    let parsed: Result<ServiceLogSpec, _> = serde_path_to_error::deserialize(ignored);
    match parsed {
        Ok(spec) => Ok(ReadSpec { spec, unknown }),
        Err(e) => {
            let path = typed_path(e.path());
            unknown.push(FieldError::new(path, e.into_inner().to_string()));
            Err(ValidationErrors(unknown))
        }
    }
}

/// `spec.sinks[0].kafak` from serde_ignored's path.
fn ignored_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => "spec".to_owned(),
        Path::Seq { parent, index } => format!("{}[{index}]", ignored_path(parent)),
        Path::Map { parent, key } => format!("{}.{key}", ignored_path(parent)),
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => ignored_path(parent),
    }
}

/// `spec.sinks[0].file.path` from serde_path_to_error's path.
fn typed_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = "spec".to_owned();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } => {
                out.push('.');
                out.push_str(key);
            }
            Segment::Enum { .. } | Segment::Unknown => {}
        }
    }
    out
}

/// Collects errors during one pass over a spec.
#[derive(Default)]
pub(crate) struct Errors(Vec<FieldError>);

impl Errors {
    pub(crate) fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError::new(path, message));
    }

    pub(crate) fn into_result(self) -> Result<(), ValidationErrors> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ValidationErrors(self.0))
        }
    }
}

/// Names are used as metric labels, znode-adjacent identifiers and in `to` lists, so they
/// follow the Kubernetes DNS label rule (RFC 1123) that users already know.
pub(crate) fn check_name(errors: &mut Errors, path: &str, name: &str) -> bool {
    if name.is_empty() {
        errors.push(path, "must not be empty");
        return false;
    }
    let bytes = name.as_bytes();
    let charset_ok = bytes
        .iter()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-');
    let ends_ok =
        bytes[0].is_ascii_alphanumeric() && bytes[bytes.len() - 1].is_ascii_alphanumeric();
    if !charset_ok || !ends_ok || bytes.len() > 63 {
        errors.push(
            path,
            format!(
                "{name:?} is not a valid name: use at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit"
            ),
        );
        return false;
    }
    true
}

/// A file source path: absolute, and a glob the sidecar's matcher understands (`*`, `?`,
/// `[...]` classes, `**` as a whole path component).
pub(crate) fn check_glob(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("must not be empty".into());
    }
    if !path.starts_with('/') {
        return Err(format!("{path:?} must be an absolute path"));
    }
    if path.contains('\0') {
        return Err(format!("{path:?} contains a NUL byte"));
    }
    for component in path.split('/') {
        if component.contains("**") && component != "**" {
            return Err(format!(
                "{path:?}: `**` must be a whole path component (like /var/log/**/app.log)"
            ));
        }
    }
    let chars: Vec<char> = path.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '[' {
            // A class: `[abc]`, `[a-z]`, `[!abc]`; a `]` right after the opening (or after
            // `!`) is a literal member, as in shell globs.
            let start = i;
            i += 1;
            if i < chars.len() && chars[i] == '!' {
                i += 1;
            }
            if i < chars.len() && chars[i] == ']' {
                i += 1;
            }
            let mut members = Vec::new();
            while i < chars.len() && chars[i] != ']' {
                if chars[i] == '/' {
                    return Err(format!("{path:?}: character class at {start} contains '/'"));
                }
                members.push(chars[i]);
                i += 1;
            }
            if i >= chars.len() {
                return Err(format!(
                    "{path:?}: character class opened at {start} is not closed"
                ));
            }
            for w in members.windows(3) {
                if w[1] == '-' && w[0] > w[2] {
                    return Err(format!(
                        "{path:?}: range {}-{} in the character class at {start} is reversed",
                        w[0], w[2]
                    ));
                }
            }
        }
        i += 1;
    }
    Ok(())
}

/// A duration as users write them in specs (`500ms`, `2s`, `1m`): positive and at most
/// an hour.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(text.trim())
        .map_err(|e| format!("{text:?} is not a duration like 500ms, 2s or 1m: {e}"))?;
    if d.is_zero() {
        return Err(format!("{text:?} must be longer than zero"));
    }
    if d > std::time::Duration::from_secs(3600) {
        return Err(format!("{text:?} is longer than an hour"));
    }
    Ok(d)
}

/// An HTTP header name (an RFC 9110 token).
pub(crate) fn check_header_name(name: &str) -> Result<(), String> {
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() || !name.bytes().all(token) {
        return Err(format!("{name:?} is not a valid HTTP header name"));
    }
    Ok(())
}

pub(crate) fn check_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    match rest {
        None => Err(format!("{url:?} must start with http:// or https://")),
        Some(rest) => {
            let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
            if host.is_empty() {
                Err(format!("{url:?} has no host"))
            } else if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
                Err(format!("{url:?} contains whitespace or control characters"))
            } else {
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_dns_label_rule() {
        for ok in ["a", "loki", "drop-debug", "a1", "1a", &"x".repeat(63)] {
            let mut e = Errors::default();
            assert!(check_name(&mut e, "p", ok), "{ok:?} should be a valid name");
        }
        for bad in ["", "Loki", "-a", "a-", "a_b", "a.b", "é", &"x".repeat(64)] {
            let mut e = Errors::default();
            assert!(!check_name(&mut e, "p", bad), "{bad:?} should be rejected");
            assert_eq!(e.0.len(), 1);
        }
    }

    #[test]
    fn globs_are_absolute_and_well_formed() {
        for ok in [
            "/var/log/app/*.log",
            "/var/log/app.log",
            "/var/log/**/x.log",
            "/a/[abc].log",
            "/a/[!a-c]?.log",
            "/a/[]].log",
        ] {
            assert_eq!(check_glob(ok), Ok(()), "{ok:?}");
        }
        for bad in [
            "",
            "var/log/*.log",
            "/a/[abc.log",
            "/a/x**.log",
            "/a/[z-a].log",
            "/a/[a/b].log",
        ] {
            assert!(check_glob(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn urls_need_a_scheme_and_host() {
        assert_eq!(check_url("http://loki:3100/x"), Ok(()));
        assert_eq!(check_url("https://es.example"), Ok(()));
        assert!(check_url("loki:3100").is_err());
        assert!(check_url("http://").is_err());
        assert!(check_url("ftp://x").is_err());
        assert!(check_url("http://a b").is_err());
    }

    #[test]
    fn parse_spec_names_unknown_fields_and_type_errors_by_path() {
        let ok = serde_json::json!({
            "sources": [{"name": "app", "file": {"paths": ["/a/*.log"]}}],
            "sinks": [{"name": "out", "stdout": {}}],
            "rules": [{"name": "r", "when": {"any": [{"level": {"in": ["warn"]}}]}, "to": ["out"]}],
        });
        let spec = parse_spec(&ok).expect("a known spec parses");
        assert_eq!(spec.sinks[0].name, "out");

        let unknown = serde_json::json!({
            "sources": [{"name": "app", "file": {"paths": ["/a/*.log"]}}],
            "sinks": [{"name": "out", "kafak": {"topic": "x"}, "stdout": {}}],
            "rules": [{"name": "r", "when": {"any": [{"levell": {"in": ["warn"]}}]}, "to": ["out"]}],
            "defautTo": ["out"],
        });
        let mut paths: Vec<String> = parse_spec(&unknown)
            .expect_err("unknown fields are refused")
            .iter()
            .map(|e| e.path.clone())
            .collect();
        paths.sort();
        assert_eq!(
            paths,
            [
                "spec.defautTo",
                "spec.rules[0].when.any[0].levell",
                "spec.sinks[0].kafak",
            ]
        );

        let wrong = serde_json::json!({
            "sources": [],
            "sinks": [{"name": "out", "file": {"path": 7}}],
        });
        let errors = parse_spec(&wrong).expect_err("a number is not a path");
        assert_eq!(errors.0[0].path, "spec.sinks[0].file.path");
        assert!(errors.0[0].message.contains("invalid type"), "{errors}");
    }

    #[test]
    fn display_lists_one_error_per_line() {
        let e = ValidationErrors(vec![
            FieldError::new("spec.a", "bad"),
            FieldError::new("spec.b", "worse"),
        ]);
        assert_eq!(e.to_string(), "spec.a: bad\nspec.b: worse");
        assert_eq!(e.len(), 2);
        assert!(!e.is_empty());
        assert_eq!(e.iter().count(), 2);
    }
}
