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

use crate::{pod, rules::Router, v1alpha1::ServiceLogSpec};

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

/// Checks `spec` in full and returns every problem found: the compiler's, then those of
/// `spec.rollout`, which the operator reads and no sidecar runs.
///
/// Notable behaviors: never panics, whatever the input; the ZooKeeper payload size limit
/// is not checked here but by [`crate::wire`], which knows the envelope.
pub fn validate(spec: &ServiceLogSpec) -> Result<(), ValidationErrors> {
    let mut problems = match Router::compile(spec) {
        Ok(_) => Vec::new(),
        Err(errors) => errors.0,
    };
    if let Some(rollout) = &spec.rollout {
        problems.extend(crate::rollout::check(rollout));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ValidationErrors(problems))
    }
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

/// Directories a source never reads and a sink never writes, with why. Checked on what a
/// pattern could match, not only on its literal prefix: `/var/**/*.log` reaches
/// `/var/run/secrets`.
pub const FORBIDDEN_DIRS: &[(&str, &str)] = &[
    ("/proc", "the kernel's view of the container's processes"),
    ("/sys", "the kernel's view of the node's devices"),
    ("/dev", "device files"),
    (
        "/var/run/secrets",
        "mounted Secrets and the pod's ServiceAccount token",
    ),
    (
        "/run/secrets",
        "mounted Secrets and the pod's ServiceAccount token",
    ),
    (
        pod::STATE_DIR,
        "the sidecar's own state (checkpoints, disk buffers, last good config)",
    ),
    (pod::CREDENTIALS_DIR, "the sinks' mounted credentials"),
    (pod::ZK_AUTH_DIR, "the sidecar's ZooKeeper identity"),
    (pod::PODINFO_DIR, "the pod's labels, from the downward API"),
];

/// Directories of container images a source or sink directory may be neither at nor under:
/// the webhook mounts an emptyDir at each source's directory in the app containers (and at
/// each file sink's directory in the sidecar), which would hide the image's binaries,
/// libraries or configuration there — `/etc/app` hides the app's own config, `/etc/ssl`
/// the sidecar's CA certificates.
pub const SYSTEM_DIRS: &[&str] = &[
    "/etc", "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/boot", "/root",
];

/// Directories logs often live below but that images fill themselves: a source or sink
/// directory may be under one (`/var/log/app`, `/opt/app/logs`), never the directory
/// itself, which would hide all of it (`/var` holds `/var/lib`, `/opt` the application).
pub const PARENT_ONLY_DIRS: &[&str] = &[
    "/var", "/var/lib", "/var/run", "/run", "/home", "/opt", "/srv", "/mnt",
];

/// The directory a glob's files live under, where the webhook mounts the source's volume:
/// the longest prefix without glob characters. `/var/log/app/*.log` → `/var/log/app`;
/// `/var/log/*/x.log` → `/var/log`; `/x.log` → `/`.
pub fn glob_dir(pattern: &str) -> String {
    let mut dir = String::new();
    let parts: Vec<&str> = pattern.split('/').collect();
    for part in &parts[..parts.len().saturating_sub(1)] {
        if part.contains(['*', '?', '[', '{']) {
            break;
        }
        if !part.is_empty() {
            dir.push('/');
            dir.push_str(part);
        }
    }
    if dir.is_empty() { "/".into() } else { dir }
}

/// The directory a file sink's file is in, where the webhook mounts the sink's volume.
pub fn sink_dir(path: &str) -> String {
    match path.rsplit_once('/') {
        Some(("", _)) | None => "/".into(),
        Some((dir, _)) => dir.to_owned(),
    }
}

/// `path` is `dir` or below it.
fn within(path: &str, dir: &str) -> bool {
    path == dir
        || path
            .strip_prefix(dir)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// Absolute, and every segment a name: no `//`, `.`, `..` or trailing `/`, so what the
/// user wrote is the path the kernel resolves and prefix checks mean what they say.
fn check_normalised(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("{path:?} must be an absolute path"));
    }
    if path == "/" {
        return Err("\"/\" is not a log file or directory".into());
    }
    for segment in path[1..].split('/') {
        let bad = match segment {
            "" => Some("an empty segment (// or a trailing /)"),
            "." => Some("a \".\" segment"),
            ".." => Some("a \"..\" segment"),
            _ => None,
        };
        if let Some(bad) = bad {
            return Err(format!(
                "{path:?} is not a normalised path: it has {bad}; write the path as the kernel would resolve it"
            ));
        }
    }
    Ok(())
}

/// Whether a pattern could match `dir` or a path below it, component by component (`**`
/// matches any number of components, others one, by glob rules).
fn reaches(pattern: &str, dir: &str) -> bool {
    let p: Vec<&str> = pattern.split('/').skip(1).collect();
    let d: Vec<&str> = dir.split('/').skip(1).collect();
    let component = |pat: &str, name: &str| {
        // A component the glob crate cannot read counts as matching: refusing too much is
        // the safe side (check_glob has already refused malformed ones).
        glob::Pattern::new(pat).map_or(true, |g| g.matches(name))
    };
    // r[i][j]: p[i..] matches a path that starts with d[j..]. A table, not recursion, so
    // a pattern of many `**` costs len(p) × len(d) steps.
    let (n, m) = (p.len(), d.len());
    let mut r = vec![vec![false; m + 1]; n + 1];
    for i in (0..=n).rev() {
        for j in (0..=m).rev() {
            r[i][j] = if j == m {
                true
            } else if i == n {
                false
            } else if p[i] == "**" {
                r[i + 1][j] || r[i][j + 1]
            } else {
                component(p[i], d[j]) && r[i + 1][j + 1]
            };
        }
    }
    r[0][0]
}

/// The directory the webhook mounts a volume at must not hide an image's own directory.
fn check_mount_dir(path: &str, dir: &str, what: &str) -> Result<(), String> {
    if dir == "/" {
        return Err(format!(
            "{path:?} has no directory of its own (its {what} directory would be /, where a volume would be mounted): use one like /var/log/app"
        ));
    }
    if let Some(sys) = SYSTEM_DIRS.iter().find(|s| within(dir, s)) {
        return Err(format!(
            "{path:?}: its {what} directory {dir} would get a volume mounted over the image's {sys} files; use a log directory like /var/log/app"
        ));
    }
    if PARENT_ONLY_DIRS.contains(&dir) {
        return Err(format!(
            "{path:?}: its {what} directory {dir} would get a volume mounted over all of the image's {dir}; use a directory below it, like {}",
            if dir == "/var" {
                "/var/log/app".to_owned()
            } else {
                format!("{dir}/app/logs")
            }
        ));
    }
    Ok(())
}

/// A file source's path: a well-formed glob ([`check_glob`]), normalised, that can match
/// nothing under [`FORBIDDEN_DIRS`], in a directory of its own that hides no system
/// directory ([`SYSTEM_DIRS`], [`PARENT_ONLY_DIRS`]).
pub(crate) fn check_source_path(pattern: &str) -> Result<(), String> {
    check_glob(pattern)?;
    check_normalised(pattern)?;
    let dir = glob_dir(pattern);
    if dir != "/"
        && let Some((forbidden, why)) = FORBIDDEN_DIRS.iter().find(|(d, _)| reaches(pattern, d))
    {
        return Err(format!(
            "{pattern:?} could match files under {forbidden} ({why}), which sources never read"
        ));
    }
    check_mount_dir(pattern, &dir, "source")
}

/// A file sink's path: normalised, not under [`FORBIDDEN_DIRS`], in a directory that hides
/// no system directory.
pub(crate) fn check_sink_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("must not be empty".into());
    }
    if path.contains('\0') {
        return Err(format!("{path:?} contains a NUL byte"));
    }
    check_normalised(path)?;
    if let Some((dir, why)) = FORBIDDEN_DIRS.iter().find(|(d, _)| within(path, d)) {
        return Err(format!(
            "{path:?} is under {dir} ({why}), which sinks never write"
        ));
    }
    check_mount_dir(path, &sink_dir(path), "sink")
}

/// Whether an `http.headers` name carries a credential, case-insensitively: `Authorization`,
/// `Proxy-Authorization`, `Cookie`, `Set-Cookie`, or a name one of whose words (split at
/// `-`, `_` and `.`) starts with `auth` or is `token`, `secret`, `password`, `passwd`,
/// `apikey`, `credential(s)`, `session` or `cookie`, or that has the words `api`, `key` in
/// a row (`X-Api-Key`, `X-Auth-Token`, `X-Vault-Token`, `DD-API-KEY`).
///
/// Headers are published to ZooKeeper and shown in the resource: a credential there is
/// readable by anyone who can read either, so it goes in `credentialsSecretRef`.
pub fn is_credential_header(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    if matches!(
        lower.as_str(),
        "authorization" | "proxy-authorization" | "cookie" | "set-cookie"
    ) {
        return true;
    }
    let words: Vec<&str> = lower
        .split(['-', '_', '.'])
        .filter(|w| !w.is_empty())
        .collect();
    words.iter().any(|w| {
        w.starts_with("auth")
            || matches!(
                *w,
                "token"
                    | "secret"
                    | "password"
                    | "passwd"
                    | "apikey"
                    | "credential"
                    | "credentials"
                    | "session"
                    | "cookie"
            )
    }) || words.windows(2).any(|w| w == ["api", "key"])
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

/// A syslog source's `address`: an IP address to bind, no host name (resolving one at
/// bind time would make the config's meaning depend on DNS).
pub(crate) fn check_syslog_address(address: &str) -> Result<(), String> {
    address
        .parse::<std::net::IpAddr>()
        .map(|_| ())
        .map_err(|_| {
            format!("{address:?} is not an IP address (e.g. 127.0.0.1, the default; 0.0.0.0 or ::)")
        })
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
    fn given_a_syslog_address_that_is_not_an_ip_then_validation_names_the_field() {
        let spec = |address: &str| {
            parse_spec(&serde_json::json!({
                "sources": [{"name": "sys", "syslog": {"port": 5514, "address": address}}],
                "sinks": [{"name": "out", "stdout": {}}],
                "defaultTo": ["out"],
            }))
            .expect("parses")
        };
        for ok in ["127.0.0.1", "0.0.0.0", "::", "::1", "10.1.2.3"] {
            assert_eq!(validate(&spec(ok)), Ok(()), "{ok}");
        }
        for bad in ["localhost", "0.0.0.0:514", "", "1.2.3.256"] {
            let errors = validate(&spec(bad)).expect_err(bad);
            assert_eq!(
                errors.iter().map(|e| e.path.as_str()).collect::<Vec<_>>(),
                ["spec.sources[0].syslog.address"],
                "{bad}: {errors}"
            );
        }
        let default = spec("x").sources[0].syslog.clone().expect("syslog");
        let default = crate::v1alpha1::SyslogSource {
            address: None,
            ..default
        };
        assert_eq!(
            default.address(),
            Ok(crate::v1alpha1::DEFAULT_SYSLOG_ADDRESS),
            "loopback unless asked"
        );
    }

    #[test]
    fn given_container_logs_sources_when_validated_then_each_problem_names_its_field() {
        let spec = |source: serde_json::Value| {
            parse_spec(&serde_json::json!({
                "sources": [source],
                "sinks": [{"name": "out", "stdout": {}}],
                "defaultTo": ["out"],
            }))
            .expect("parses")
        };
        let paths = |source: serde_json::Value| match validate(&spec(source)) {
            Ok(()) => Vec::new(),
            Err(errors) => errors.iter().map(|e| e.path.clone()).collect::<Vec<_>>(),
        };
        let defaults = spec(serde_json::json!({"name": "out", "containerLogs": {}}));
        let logs = defaults.sources[0]
            .container_logs
            .clone()
            .expect("containerLogs");
        assert!(
            logs.containers.is_empty()
                && logs.reads(crate::v1alpha1::ContainerStream::Stdout)
                && logs.reads(crate::v1alpha1::ContainerStream::Stderr),
            "every container, both streams by default: {logs:?}"
        );
        assert_eq!(validate(&defaults), Ok(()));
        assert_eq!(
            paths(serde_json::json!({"name": "app", "containerLogs":
                {"containers": ["app", "side-car"], "streams": ["stderr"], "format": "json"}})),
            Vec::<String>::new()
        );
        assert_eq!(
            paths(serde_json::json!({"name": "app", "containerLogs":
                {"containers": ["app", "App", "app", ""], "streams": ["stdout", "stdout"],
                 "format": "regex"}})),
            [
                "spec.sources[0].containerLogs.containers[1]",
                "spec.sources[0].containerLogs.containers[2]",
                "spec.sources[0].containerLogs.containers[3]",
                "spec.sources[0].containerLogs.streams[1]",
                "spec.sources[0].containerLogs.format",
            ]
        );
        let both = validate(&spec(serde_json::json!({"name": "app",
            "file": {"paths": ["/var/log/app/*.log"]}, "containerLogs": {}})))
        .expect_err("file and containerLogs");
        assert_eq!(both.0[0].path, "spec.sources[0]");
        assert!(
            both.0[0].message.contains("not file and containerLogs"),
            "{both}"
        );
        let unknown = parse_spec(&serde_json::json!({
            "sources": [{"name": "app", "containerLogs": {"streams": ["stdin"]}}],
            "sinks": [{"name": "out", "stdout": {}}],
        }))
        .expect_err("stdin is no stream");
        assert_eq!(
            unknown.0[0].path, "spec.sources[0].containerLogs.streams[0]",
            "{unknown}"
        );
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
