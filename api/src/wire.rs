//! The ZooKeeper contract between the operator and the sidecars, in one place.
//!
//! ```text
//! <root>/namespaces/<ns>/<name>/config            persistent: an [`Envelope`]
//! <root>/namespaces/<ns>/<name>/candidate         persistent, during a staged rollout: a
//!                                                 [`Candidate`]
//! <root>/namespaces/<ns>/<name>/instances/<pod>   ephemeral: an [`Instance`]
//! ```
//!
//! Anything that writes a valid config znode drives the sidecars, so the envelope is plain
//! JSON and its hash is reproducible by any tool: SHA-256 over the spec serialised as
//! canonical JSON (RFC 8785).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::v1alpha1::ServiceLogSpec;

/// The envelope version this build writes and reads.
pub const SCHEMA_VERSION: u32 = 1;

/// Default znode root.
pub const DEFAULT_ROOT: &str = "/servicelog";

/// Largest config payload we publish: ZooKeeper refuses znodes over `jute.maxbuffer`
/// (1 MiB by default), and the request framing needs some of that.
pub const MAX_PAYLOAD_BYTES: usize = 1024 * 1024 - 4 * 1024;

/// Problems with znode data or paths.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("config payload is {size} bytes, over the {limit}-byte ZooKeeper limit")]
    TooLarge { size: usize, limit: usize },
    #[error("znode data is not a valid {what}: {message}")]
    Malformed { what: &'static str, message: String },
    #[error("config envelope has schema {found}; this build understands schema {SCHEMA_VERSION}")]
    UnsupportedSchema { found: u32 },
    #[error(
        "config hash {declared} does not match its spec (computed {computed} over the spec's RFC 8785 canonical JSON)"
    )]
    HashMismatch { declared: String, computed: String },
    #[error("config spec: {}", one_line(.0))]
    InvalidSpec(crate::validate::ValidationErrors),
    #[error("{what} {value:?} cannot be a znode path segment: {why}")]
    BadSegment {
        what: &'static str,
        value: String,
        why: &'static str,
    },
    #[error("znode root {0:?} must start with '/' and not end with '/'")]
    BadRoot(String),
}

/// RFC 8785 canonical JSON of any serialisable value.
pub fn canonical_json<T: Serialize>(value: &T) -> Result<Vec<u8>, WireError> {
    serde_json_canonicalizer::to_vec(value).map_err(|e| WireError::Malformed {
        what: "JSON value",
        message: e.to_string(),
    })
}

/// `sha256:<hex>` of the spec's canonical JSON: the identity of a config, what status
/// reports and what sidecars ack. For a spec this build writes; a spec read from a znode
/// is hashed as written ([`Envelope::from_slice`]).
pub fn spec_hash(spec: &ServiceLogSpec) -> Result<String, WireError> {
    let canonical = canonical_json(spec)?;
    Ok(hash_bytes(&canonical))
}

fn hash_bytes(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for b in digest {
        out.push(char::from_digit(u32::from(b >> 4), 16).unwrap_or('0'));
        out.push(char::from_digit(u32::from(b & 0xf), 16).unwrap_or('0'));
    }
    out
}

/// The data of a `config` znode:
/// `{"generation":3,"hash":"sha256:…","schema":1,"spec":{…},"uid":"…"}`.
///
/// The spec is kept twice: as its canonical JSON, exactly what the writer wrote
/// (canonicalised) and what the hash covers, and parsed, for validation and routing. A
/// writer's omitted defaults are therefore not part of the hash, and a field this build
/// does not know is reported by name rather than dropped (docs/architecture.md, "The config
/// znode").
#[derive(Clone, Debug, PartialEq)]
pub struct Envelope {
    pub schema: u32,
    /// UID of the ServiceLog resource (empty when written by another tool).
    pub uid: String,
    pub generation: i64,
    /// `sha256:<hex>` of the spec's canonical JSON.
    pub hash: String,
    /// The spec, parsed.
    pub spec: ServiceLogSpec,
    /// The spec's canonical JSON (RFC 8785).
    canonical_spec: Box<str>,
}

/// The envelope as it is on the wire; the spec stays text until it is canonicalised.
#[derive(Deserialize)]
struct WireEnvelope {
    schema: u32,
    #[serde(default)]
    uid: String,
    #[serde(default)]
    generation: i64,
    hash: String,
    spec: serde_json::Value,
}

impl Envelope {
    /// Wraps a spec this build wrote, computing its hash.
    pub fn new(
        uid: impl Into<String>,
        generation: i64,
        spec: ServiceLogSpec,
    ) -> Result<Self, WireError> {
        let canonical = canonical_json(&spec)?;
        Ok(Self {
            schema: SCHEMA_VERSION,
            uid: uid.into(),
            generation,
            hash: hash_bytes(&canonical),
            spec,
            canonical_spec: canonical_text(canonical)?,
        })
    }

    /// Wraps a spec as someone wrote it (a manifest's `spec`), hashing it as written.
    ///
    /// Notable errors: [`WireError::InvalidSpec`] naming each unknown field or the value
    /// of the wrong type.
    pub fn from_written_spec(
        uid: impl Into<String>,
        generation: i64,
        spec: &serde_json::Value,
    ) -> Result<Self, WireError> {
        let parsed = crate::validate::parse_spec(spec).map_err(WireError::InvalidSpec)?;
        let canonical = canonical_json(spec)?;
        Ok(Self {
            schema: SCHEMA_VERSION,
            uid: uid.into(),
            generation,
            hash: hash_bytes(&canonical),
            spec: parsed,
            canonical_spec: canonical_text(canonical)?,
        })
    }

    /// The envelope of a spec that may be published: valid (every sidecar of this build
    /// can run it) and small enough for a znode. What the operator's reconcile, the
    /// validating webhook and `servicelog-operator validate` all ask.
    ///
    /// `spec.rollout` is checked but not published: it says how the operator rolls a
    /// change out, not what a sidecar runs, so changing only it changes no config hash.
    ///
    /// Notable errors: every validation problem with its field path, and the size as a
    /// problem at `spec`.
    pub fn publishable(
        uid: impl Into<String>,
        generation: i64,
        mut spec: ServiceLogSpec,
    ) -> Result<Self, crate::validate::ValidationErrors> {
        let mut problems = match crate::validate::validate(&spec) {
            Ok(()) => Vec::new(),
            Err(errors) => errors.0,
        };
        spec.rollout = None;
        match Self::new(uid, generation, spec).and_then(|e| e.to_bytes().map(|_| e)) {
            Ok(envelope) if problems.is_empty() => return Ok(envelope),
            Ok(_) => {}
            Err(e) => problems.push(crate::validate::FieldError::new("spec", e.to_string())),
        }
        Err(crate::validate::ValidationErrors(problems))
    }

    /// The spec's canonical JSON, which [`Envelope::hash`] covers.
    pub fn canonical_spec(&self) -> &str {
        &self.canonical_spec
    }

    /// The znode payload: canonical JSON, so equal envelopes are equal bytes.
    ///
    /// Notable errors: [`WireError::TooLarge`] past [`MAX_PAYLOAD_BYTES`].
    pub fn to_bytes(&self) -> Result<Vec<u8>, WireError> {
        // The keys in RFC 8785 order, around the spec's canonical text.
        let mut bytes = Vec::with_capacity(self.canonical_spec.len() + self.uid.len() + 128);
        bytes.extend_from_slice(b"{\"generation\":");
        bytes.extend_from_slice(&canonical_json(&self.generation)?);
        bytes.extend_from_slice(b",\"hash\":");
        bytes.extend_from_slice(&canonical_json(&self.hash)?);
        bytes.extend_from_slice(b",\"schema\":");
        bytes.extend_from_slice(&canonical_json(&self.schema)?);
        bytes.extend_from_slice(b",\"spec\":");
        bytes.extend_from_slice(self.canonical_spec.as_bytes());
        bytes.extend_from_slice(b",\"uid\":");
        bytes.extend_from_slice(&canonical_json(&self.uid)?);
        bytes.push(b'}');
        if bytes.len() > MAX_PAYLOAD_BYTES {
            return Err(WireError::TooLarge {
                size: bytes.len(),
                limit: MAX_PAYLOAD_BYTES,
            });
        }
        Ok(bytes)
    }

    /// Reads znode data, checking the schema version, that the hash matches the spec as
    /// written (a hand-edited spec with a stale hash is refused rather than acked under a
    /// lie), and that every field of the spec is known to this build.
    ///
    /// Notable errors: [`WireError::HashMismatch`], [`WireError::UnsupportedSchema`],
    /// [`WireError::InvalidSpec`] (unknown fields by path).
    pub fn from_slice(data: &[u8]) -> Result<Self, WireError> {
        let wire: WireEnvelope =
            serde_json::from_slice(data).map_err(|e| WireError::Malformed {
                what: "config envelope",
                message: e.to_string(),
            })?;
        if wire.schema != SCHEMA_VERSION {
            return Err(WireError::UnsupportedSchema { found: wire.schema });
        }
        let canonical = canonical_json(&wire.spec)?;
        let computed = hash_bytes(&canonical);
        if computed != wire.hash {
            return Err(WireError::HashMismatch {
                declared: wire.hash,
                computed,
            });
        }
        let spec = crate::validate::parse_spec(&wire.spec).map_err(WireError::InvalidSpec)?;
        Ok(Self {
            schema: wire.schema,
            uid: wire.uid,
            generation: wire.generation,
            hash: wire.hash,
            spec,
            canonical_spec: canonical_text(canonical)?,
        })
    }
}

fn one_line(errors: &crate::validate::ValidationErrors) -> String {
    let parts: Vec<String> = errors.iter().map(ToString::to_string).collect();
    parts.join("; ")
}

fn canonical_text(bytes: Vec<u8>) -> Result<Box<str>, WireError> {
    String::from_utf8(bytes)
        .map(String::into_boxed_str)
        .map_err(|e| WireError::Malformed {
            what: "canonical JSON",
            message: e.to_string(),
        })
}

/// The data of a `candidate` znode, the sibling of `config` during a staged rollout:
/// `{"config":{…an Envelope…},"percent":10,"preview":false,"schema":1,"stableHash":"sha256:…","step":1}`.
///
/// A pod runs `config` when [`crate::rollout::is_member`] says so for `percent`, unless
/// `preview`, and only while the config znode's hash is `stableHash`: a candidate left
/// behind by a stable config edited since (by hand, by a script) is ignored rather than
/// applied over a change it was never compared with. No candidate znode: no rollout.
///
/// The outer fields are read first and the config apart ([`Candidate::config`]), so a
/// canary can say which candidate it rejected even when the config inside is bad.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    /// Hash of the config znode this candidate is a change of.
    pub stable_hash: String,
    /// The step in force, 1-based, for people and logs; membership reads only `percent`.
    pub step: u32,
    /// Share of the pods that run the candidate, 0 to 100.
    pub percent: u32,
    /// Every pod runs the candidate in shadow (writing nowhere) and no pod switches.
    pub preview: bool,
    /// The candidate's hash as its envelope declares it (checked by [`Candidate::config`]).
    pub hash: String,
    /// The candidate's envelope, as written.
    config: serde_json::Value,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireCandidate {
    config: serde_json::Value,
    percent: u32,
    #[serde(default)]
    preview: bool,
    schema: u32,
    stable_hash: String,
    #[serde(default)]
    step: u32,
}

impl Candidate {
    /// The candidate `config` for the pods of a step of `percent`, over the stable config
    /// of hash `stable_hash`.
    pub fn new(
        stable_hash: impl Into<String>,
        step: u32,
        percent: u32,
        preview: bool,
        config: &Envelope,
    ) -> Result<Self, WireError> {
        let config =
            serde_json::from_slice(&config.to_bytes()?).map_err(|e| WireError::Malformed {
                what: "config envelope",
                message: e.to_string(),
            })?;
        Ok(Self {
            stable_hash: stable_hash.into(),
            step,
            percent: percent.min(100),
            preview,
            hash: declared_hash(&config)?,
            config,
        })
    }

    /// The znode payload: canonical JSON.
    ///
    /// Notable errors: [`WireError::TooLarge`] past [`MAX_PAYLOAD_BYTES`].
    pub fn to_bytes(&self) -> Result<Vec<u8>, WireError> {
        let bytes = canonical_json(&WireCandidate {
            config: self.config.clone(),
            percent: self.percent,
            preview: self.preview,
            schema: SCHEMA_VERSION,
            stable_hash: self.stable_hash.clone(),
            step: self.step,
        })?;
        if bytes.len() > MAX_PAYLOAD_BYTES {
            return Err(WireError::TooLarge {
                size: bytes.len(),
                limit: MAX_PAYLOAD_BYTES,
            });
        }
        Ok(bytes)
    }

    /// Reads znode data: the outer fields and the config's declared hash; the config
    /// itself is read by [`Candidate::config`].
    ///
    /// Notable errors: [`WireError::UnsupportedSchema`], [`WireError::Malformed`] (not
    /// JSON, a missing field, a percent over 100, a config without a hash).
    pub fn from_slice(data: &[u8]) -> Result<Self, WireError> {
        let wire: WireCandidate =
            serde_json::from_slice(data).map_err(|e| WireError::Malformed {
                what: "candidate",
                message: e.to_string(),
            })?;
        if wire.schema != SCHEMA_VERSION {
            return Err(WireError::UnsupportedSchema { found: wire.schema });
        }
        if wire.percent > 100 {
            return Err(WireError::Malformed {
                what: "candidate",
                message: format!("percent is {}; at most 100", wire.percent),
            });
        }
        Ok(Self {
            stable_hash: wire.stable_hash,
            step: wire.step,
            percent: wire.percent,
            preview: wire.preview,
            hash: declared_hash(&wire.config)?,
            config: wire.config,
        })
    }

    /// Whether pod `namespace/pod`, whose config znode has hash `stable_hash`, runs this
    /// candidate: a member of the step ([`crate::rollout::is_member`]), not in preview, and
    /// the candidate a change of that stable config.
    pub fn selects(&self, stable_hash: &str, namespace: &str, pod: &str) -> bool {
        !self.preview
            && self.stable_hash == stable_hash
            && crate::rollout::is_member(&self.hash, namespace, pod, self.percent)
    }

    /// The candidate's config, checked as a config znode's is ([`Envelope::from_slice`]).
    pub fn config(&self) -> Result<Envelope, WireError> {
        let bytes = serde_json::to_vec(&self.config).map_err(|e| WireError::Malformed {
            what: "candidate config",
            message: e.to_string(),
        })?;
        Envelope::from_slice(&bytes)
    }
}

fn declared_hash(config: &serde_json::Value) -> Result<String, WireError> {
    config
        .get("hash")
        .and_then(serde_json::Value::as_str)
        .map(ToOwned::to_owned)
        .ok_or_else(|| WireError::Malformed {
            what: "candidate",
            message: "config.hash is missing or not a string".into(),
        })
}

/// Whether a sidecar runs the config it was given.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum InstanceState {
    Ok,
    Error,
}

/// The data of an `instances/<pod>` znode: what one sidecar runs.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    pub pod: String,
    /// Hash of the config the sidecar routes with (the last good one when `state` is
    /// `error`).
    pub hash: String,
    pub state: InstanceState,
    /// Why the newest config was rejected, when `state` is `error`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// RFC 3339 time of this state.
    pub since: String,
    /// Sinks that cannot deliver now (an unreachable broker, a topic that does not
    /// exist, refused credentials), by name, with why; absent when all deliver. Their
    /// events wait in the buffer meanwhile. Changes do not move `since`.
    #[serde(
        default,
        rename = "sinkErrors",
        skip_serializing_if = "std::collections::BTreeMap::is_empty"
    )]
    pub sink_errors: std::collections::BTreeMap<String, String>,
    /// During a staged rollout, on a canary pod: the hash of the candidate it was asked to
    /// run. It runs it when `hash` is the same; `state: error` says it rejected it.
    /// Absent on every other pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate: Option<String>,
    /// On a canary pod during a staged rollout: what the config it runs did since it was
    /// applied, for the operator's health gates. Absent on every other pod. Changes do not
    /// move `since`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
}

/// What a sidecar's config in force did since it was applied (a canary's
/// [`Instance::health`]): a few numbers per sink, kept small as every change is a write
/// that the operator reads.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    /// Events read.
    pub events: u64,
    /// Of those, dropped by the rules: `action: drop`, sampling, rate limits, no route.
    pub dropped: u64,
    /// By sink: events delivered, and rejected for good by the receiver.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub sinks: std::collections::BTreeMap<String, SinkHealth>,
    /// By sink: events delivered under the config in force before this one, for as long as
    /// it ran in this process — what "a sink that goes quiet" is measured against.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub sinks_before: std::collections::BTreeMap<String, u64>,
    /// By rule (`(default)`: events no rule decided): events the config in force decided
    /// since it was applied. Canaries only; the gate `quietRules` compares it with
    /// `rulesBefore`.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub rules: std::collections::BTreeMap<String, u64>,
    /// By rule: events the config in force before this one decided, for as long as it ran
    /// in this process.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub rules_before: std::collections::BTreeMap<String, u64>,
    /// During a preview, on every pod: per rule, events the config in force and the
    /// candidate (run in shadow) decided since the shadow started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview: Option<Preview>,
}

/// A preview's per-rule counts in [`Health`]; events no rule decided count as
/// `(default)`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Preview {
    /// The candidate's hash.
    pub hash: String,
    pub stable: std::collections::BTreeMap<String, u64>,
    pub candidate: std::collections::BTreeMap<String, u64>,
    /// How long the shadow has been counting, in ms: the counts over it are rates.
    #[serde(default)]
    pub elapsed_ms: u64,
}

/// One sink's counts in [`Health`].
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SinkHealth {
    pub delivered: u64,
    pub rejected: u64,
}

impl Instance {
    pub fn to_bytes(&self) -> Result<Vec<u8>, WireError> {
        canonical_json(self)
    }

    pub fn from_slice(data: &[u8]) -> Result<Self, WireError> {
        serde_json::from_slice(data).map_err(|e| WireError::Malformed {
            what: "instance record",
            message: e.to_string(),
        })
    }
}

/// Znode paths under one root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    root: String,
}

impl Layout {
    /// Notable errors: [`WireError::BadRoot`] unless the root is absolute without a
    /// trailing slash.
    pub fn new(root: &str) -> Result<Self, WireError> {
        if !root.starts_with('/') || (root.len() > 1 && root.ends_with('/')) || root.contains("//")
        {
            return Err(WireError::BadRoot(root.to_owned()));
        }
        Ok(Self {
            root: root.trim_end_matches('/').to_owned(),
        })
    }

    pub fn root(&self) -> &str {
        if self.root.is_empty() {
            "/"
        } else {
            &self.root
        }
    }

    /// `<root>/namespaces`, the parent of every resource's subtree.
    pub fn namespaces(&self) -> String {
        format!("{}/namespaces", self.root)
    }

    /// `<root>/namespaces/<ns>/<name>`, removed whole when the resource is deleted.
    pub fn resource(&self, namespace: &str, name: &str) -> Result<String, WireError> {
        segment("namespace", namespace)?;
        segment("name", name)?;
        Ok(format!("{}/namespaces/{namespace}/{name}", self.root))
    }

    pub fn config(&self, namespace: &str, name: &str) -> Result<String, WireError> {
        Ok(format!("{}/config", self.resource(namespace, name)?))
    }

    pub fn candidate(&self, namespace: &str, name: &str) -> Result<String, WireError> {
        Ok(format!("{}/candidate", self.resource(namespace, name)?))
    }

    pub fn instances(&self, namespace: &str, name: &str) -> Result<String, WireError> {
        Ok(format!("{}/instances", self.resource(namespace, name)?))
    }

    pub fn instance(&self, namespace: &str, name: &str, pod: &str) -> Result<String, WireError> {
        segment("pod", pod)?;
        Ok(format!("{}/{pod}", self.instances(namespace, name)?))
    }

    /// `…/<name>/instances/<pod>` for a config znode `…/<name>/config` under any root: how
    /// a sidecar, given only its config znode, finds where to ack.
    ///
    /// Notable errors: [`WireError::BadSegment`] for a config path that is not absolute or
    /// does not end in `/config`, or a pod name ZooKeeper cannot hold.
    pub fn instance_for_config(config: &str, pod: &str) -> Result<String, WireError> {
        let parent = config_parent(config)?;
        segment("pod", pod)?;
        Ok(format!("{parent}/instances/{pod}"))
    }

    /// `…/<name>/candidate` for a config znode `…/<name>/config`: where a sidecar given
    /// only its config znode looks for a staged rollout's candidate.
    ///
    /// Notable errors: [`WireError::BadSegment`] for a config path that is not absolute or
    /// does not end in `/config`.
    pub fn candidate_for_config(config: &str) -> Result<String, WireError> {
        let parent = config_parent(config)?;
        Ok(format!("{parent}/candidate"))
    }

    /// Reads a path back into `(namespace, name, rest)`, for watch events under the root.
    pub fn parse<'a>(&self, path: &'a str) -> Option<ParsedPath<'a>> {
        let rest = path.strip_prefix(self.root.as_str())?;
        let rest = rest.strip_prefix("/namespaces/")?;
        let mut parts = rest.splitn(4, '/');
        let namespace = parts.next().filter(|s| !s.is_empty())?;
        let name = parts.next().filter(|s| !s.is_empty())?;
        let kind = match (parts.next(), parts.next()) {
            (None, None) => PathKind::Resource,
            (Some("config"), None) => PathKind::Config,
            (Some("instances"), None) => PathKind::Instances,
            (Some("instances"), Some(pod)) if !pod.contains('/') && !pod.is_empty() => {
                PathKind::Instance(pod)
            }
            _ => return None,
        };
        Some(ParsedPath {
            namespace,
            name,
            kind,
        })
    }
}

impl Default for Layout {
    fn default() -> Self {
        Self {
            root: DEFAULT_ROOT.to_owned(),
        }
    }
}

/// A znode path under the root, read back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParsedPath<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub kind: PathKind<'a>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathKind<'a> {
    Resource,
    Config,
    Instances,
    Instance(&'a str),
}

/// `…/<name>` of a config znode `…/<name>/config`.
fn config_parent(config: &str) -> Result<&str, WireError> {
    config
        .strip_suffix("/config")
        .filter(|p| p.starts_with('/') && !p.ends_with('/') && !p.contains("//"))
        .ok_or_else(|| WireError::BadSegment {
            what: "config znode",
            value: config.to_owned(),
            why: "it must be an absolute path ending in /config",
        })
}

fn segment(what: &'static str, value: &str) -> Result<(), WireError> {
    let why = if value.is_empty() {
        "it is empty"
    } else if value.contains('/') {
        "it contains '/'"
    } else if value == "." || value == ".." {
        "ZooKeeper does not allow relative segments"
    } else if value == "zookeeper" {
        "the name is reserved by ZooKeeper"
    } else if value.chars().any(|c| c.is_control()) {
        "it contains control characters"
    } else {
        return Ok(());
    };
    Err(WireError::BadSegment {
        what,
        value: value.to_owned(),
        why,
    })
}

/// A ServiceLog manifest read without Kubernetes client types: what `validate` and the
/// sidecar's `--config-file` accept.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub api_version: String,
    pub kind: String,
    #[serde(default)]
    pub metadata: ManifestMetadata,
    /// The spec as written; [`crate::validate::parse_spec`] reads it, naming unknown
    /// fields.
    pub spec: serde_json::Value,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ManifestMetadata {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub uid: Option<String>,
    #[serde(default)]
    pub generation: Option<i64>,
}

/// The API group/version and kind a manifest must carry.
pub const API_VERSION: &str = "servicelog.io/v1alpha1";
pub const KIND: &str = "ServiceLog";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1alpha1::{FileSource, Format, Sink, Source, StdoutSink};

    fn spec() -> ServiceLogSpec {
        ServiceLogSpec {
            sources: vec![Source {
                name: "app".into(),
                file: Some(FileSource {
                    paths: vec!["/var/log/app/*.log".into()],
                    format: Format::Json,
                    multiline: None,
                    regex: None,
                }),
                ..Default::default()
            }],
            sinks: vec![Sink {
                name: "console".into(),
                stdout: Some(StdoutSink::default()),
                ..Default::default()
            }],
            default_to: vec!["console".into()],
            ..Default::default()
        }
    }

    #[test]
    fn canonical_json_sorts_keys_and_drops_whitespace() {
        let v = serde_json::json!({"b": 1, "a": [true, null, "x"], "c": {"z": 1.5, "y": 1e21}});
        let out = String::from_utf8(canonical_json(&v).unwrap()).unwrap();
        assert_eq!(
            out,
            r#"{"a":[true,null,"x"],"b":1,"c":{"y":1e+21,"z":1.5}}"#
        );
    }

    #[test]
    fn hash_is_sha256_of_canonical_spec_and_stable() {
        let h = spec_hash(&spec()).unwrap();
        assert!(h.starts_with("sha256:") && h.len() == 71, "got {h}");
        let canonical = canonical_json(&spec()).unwrap();
        assert_eq!(h, hash_bytes(&canonical));
        assert_eq!(h, spec_hash(&spec()).unwrap());
        let mut other = spec();
        other.default_to.clear();
        assert_ne!(h, spec_hash(&other).unwrap());
    }

    #[test]
    fn envelope_round_trips_and_checks_hash_and_schema() {
        let env = Envelope::new("uid-1", 3, spec()).unwrap();
        let bytes = env.to_bytes().unwrap();
        assert_eq!(Envelope::from_slice(&bytes).unwrap(), env);

        let mut tampered: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        tampered["spec"]["defaultTo"] = serde_json::json!([]);
        let err = Envelope::from_slice(&serde_json::to_vec(&tampered).unwrap()).unwrap_err();
        assert!(matches!(err, WireError::HashMismatch { .. }), "got {err:?}");

        let mut future: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        future["schema"] = serde_json::json!(2);
        let err = Envelope::from_slice(&serde_json::to_vec(&future).unwrap()).unwrap_err();
        assert_eq!(err, WireError::UnsupportedSchema { found: 2 });

        let err = Envelope::from_slice(b"{not json").unwrap_err();
        assert!(matches!(err, WireError::Malformed { .. }));
    }

    /// What a script writes: the spec as it wrote it, defaults left out, hashed over
    /// `json.dumps(spec, sort_keys=True, separators=(",", ":"), ensure_ascii=False)`.
    #[test]
    fn a_minimal_spec_is_hashed_as_written_not_as_this_build_would_write_it() {
        let canonical = r#"{"defaultTo":["out"],"sinks":[{"file":{"path":"/o/a.log"},"name":"out"}],"sources":[{"file":{"paths":["/a/*.log"]},"name":"app"}]}"#;
        let hash = hash_bytes(canonical.as_bytes());
        let data = format!(r#"{{"schema":1,"hash":"{hash}","spec":{canonical}}}"#);
        let env = Envelope::from_slice(data.as_bytes()).expect("a minimal envelope is valid");
        assert_eq!(env.hash, hash);
        assert_eq!(env.canonical_spec(), canonical);
        assert_eq!(
            env.spec.sources[0].file.as_ref().map(|f| f.format),
            Some(Format::Text)
        );
        assert_ne!(
            spec_hash(&env.spec).unwrap(),
            hash,
            "the typed spec adds defaults, so hashing it would refuse this writer"
        );
        // Republished by this build, the envelope keeps the spec (and hash) as written.
        let again = Envelope::from_slice(&env.to_bytes().unwrap()).unwrap();
        assert_eq!(again, env);
    }

    #[test]
    fn an_unknown_field_in_the_spec_is_refused_by_its_path() {
        let spec = serde_json::json!({
            "sinks": [{"name": "out", "pulsar": {"topic": "logs"}}],
            "sources": [{"name": "app", "file": {"paths": ["/a/*.log"]}}],
        });
        let hash = hash_bytes(&canonical_json(&spec).unwrap());
        let data = serde_json::json!({"schema": 1, "hash": hash, "spec": spec}).to_string();
        let err = Envelope::from_slice(data.as_bytes()).unwrap_err();
        let WireError::InvalidSpec(errors) = &err else {
            panic!("expected InvalidSpec, got {err:?}");
        };
        assert_eq!(errors.0[0].path, "spec.sinks[0].pulsar");
        assert!(
            err.to_string()
                .contains("spec.sinks[0].pulsar: unknown field"),
            "{err}"
        );
    }

    #[test]
    fn given_a_spec_with_a_rollout_then_it_is_checked_and_published_without_it() {
        let plain = Envelope::publishable("u", 1, spec()).unwrap();
        let mut with = spec();
        with.rollout = Some(crate::v1alpha1::Rollout {
            steps: vec![crate::v1alpha1::RolloutStep {
                percent: 10,
                pause: Some("1m".into()),
            }],
            ..Default::default()
        });
        let published = Envelope::publishable("u", 1, with.clone()).unwrap();
        assert_eq!(
            published.hash, plain.hash,
            "the rollout is not part of the config"
        );
        assert_eq!(published.spec.rollout, None);
        assert!(!published.canonical_spec().contains("rollout"));

        with.rollout.as_mut().unwrap().steps[0].percent = 0;
        let err = Envelope::publishable("u", 1, with).unwrap_err();
        assert_eq!(err.0[0].path, "spec.rollout.steps[0].percent");
    }

    #[test]
    fn oversized_envelope_is_refused() {
        let mut big = spec();
        big.sources[0].file.as_mut().unwrap().paths =
            (0..20_000).map(|i| format!("/var/log/{i:060}")).collect();
        let err = Envelope::new("u", 1, big).unwrap().to_bytes().unwrap_err();
        assert!(matches!(err, WireError::TooLarge { .. }), "got {err:?}");
    }

    #[test]
    fn layout_paths_and_parse() {
        let l = Layout::default();
        assert_eq!(
            l.config("shop", "checkout").unwrap(),
            "/servicelog/namespaces/shop/checkout/config"
        );
        assert_eq!(
            l.instance("shop", "checkout", "pod-1").unwrap(),
            "/servicelog/namespaces/shop/checkout/instances/pod-1"
        );
        let p = l
            .parse("/servicelog/namespaces/shop/checkout/instances/pod-1")
            .unwrap();
        assert_eq!(
            (p.namespace, p.name, p.kind),
            ("shop", "checkout", PathKind::Instance("pod-1"))
        );
        assert_eq!(
            l.parse("/servicelog/namespaces/shop/checkout/config")
                .unwrap()
                .kind,
            PathKind::Config
        );
        assert_eq!(l.parse("/other/namespaces/shop/checkout/config"), None);
        assert_eq!(
            l.parse("/servicelog/namespaces/shop/checkout/config/x"),
            None
        );
        assert!(l.config("a/b", "c").is_err());
        assert!(l.config("ns", "").is_err());
        assert!(Layout::new("relative").is_err());
        assert!(Layout::new("/trailing/").is_err());
        assert_eq!(
            Layout::new("/x/y").unwrap().config("n", "m").unwrap(),
            "/x/y/namespaces/n/m/config"
        );
    }

    #[test]
    fn the_instance_znode_is_the_config_znodes_sibling() {
        let l = Layout::default();
        let config = l.config("shop", "checkout").unwrap();
        assert_eq!(
            Layout::instance_for_config(&config, "pod-1").unwrap(),
            l.instance("shop", "checkout", "pod-1").unwrap()
        );
        assert_eq!(
            Layout::instance_for_config("/other/x/config", "p").unwrap(),
            "/other/x/instances/p"
        );
        for (config, pod) in [
            ("relative/config", "p"),
            ("/a/b", "p"),
            ("/config", "p"),
            ("/a//config", "p"),
            ("/a/config", "x/y"),
            ("/a/config", ".."),
        ] {
            assert!(
                Layout::instance_for_config(config, pod).is_err(),
                "{config:?} {pod:?} should be refused"
            );
        }
    }

    #[test]
    fn instance_record_round_trips() {
        let i = Instance {
            pod: "p".into(),
            hash: "sha256:00".into(),
            state: InstanceState::Error,
            error: Some("spec.rules[0].to[0]: unknown sink".into()),
            since: "2026-11-25T00:00:00Z".into(),
            sink_errors: [("events".to_owned(), "topic \"x\" does not exist".to_owned())].into(),
            candidate: Some("sha256:11".into()),
            health: Some(Health {
                events: 10,
                dropped: 1,
                sinks: [(
                    "events".to_owned(),
                    SinkHealth {
                        delivered: 8,
                        rejected: 1,
                    },
                )]
                .into(),
                sinks_before: [("events".to_owned(), 90)].into(),
                rules: [("errors".to_owned(), 9)].into(),
                rules_before: [("errors".to_owned(), 80)].into(),
                preview: None,
            }),
        };
        let s = String::from_utf8(i.to_bytes().unwrap()).unwrap();
        assert!(
            s.contains(r#""health":{"dropped":1,"events":10,"rules":{"errors":9},"rulesBefore":{"errors":80},"sinks":{"events":{"delivered":8,"rejected":1}},"sinksBefore":{"events":90}}"#),
            "{s}"
        );
        assert!(s.contains(r#""state":"error""#), "{s}");
        assert!(s.contains(r#""sinkErrors":{"events":"#), "{s}");
        assert!(s.contains(r#""candidate":"sha256:11""#), "{s}");
        assert_eq!(Instance::from_slice(s.as_bytes()).unwrap(), i);
    }

    #[test]
    fn given_a_record_without_candidate_then_it_reads_and_writes_as_before() {
        let old = r#"{"hash":"sha256:00","pod":"p","since":"2026-11-25T00:00:00Z","state":"ok"}"#;
        let i = Instance::from_slice(old.as_bytes()).unwrap();
        assert_eq!(i.candidate, None);
        assert_eq!(i.health, None);
        assert_eq!(String::from_utf8(i.to_bytes().unwrap()).unwrap(), old);
    }

    #[test]
    fn given_a_candidate_when_written_and_read_then_it_round_trips_with_its_config() {
        let stable = Envelope::new("uid-1", 3, spec()).unwrap();
        let mut changed = spec();
        changed.default_to.clear();
        let config = Envelope::new("uid-1", 4, changed).unwrap();
        let candidate = Candidate::new(&stable.hash, 1, 10, false, &config).unwrap();
        let bytes = candidate.to_bytes().unwrap();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(
            text.starts_with(r#"{"config":{"generation":4,"hash":"sha256:"#)
                && text.ends_with(&format!(
                    r#""percent":10,"preview":false,"schema":1,"stableHash":"{}","step":1}}"#,
                    stable.hash
                )),
            "not the documented canonical layout: {text}"
        );
        let read = Candidate::from_slice(&bytes).unwrap();
        assert_eq!(read, candidate);
        assert_eq!(read.hash, config.hash);
        assert_eq!(read.config().unwrap(), config);
    }

    #[test]
    fn given_a_candidate_then_it_selects_its_members_only_over_its_stable_config() {
        let config = Envelope::new("u", 4, spec()).unwrap();
        let pods: Vec<String> = (0..200).map(|i| format!("web-{i}")).collect();
        let at = |percent, preview| {
            let c = Candidate::new("sha256:stable", 1, percent, preview, &config).unwrap();
            pods.iter()
                .filter(|p| c.selects("sha256:stable", "shop", p))
                .count()
        };
        let expected = pods
            .iter()
            .filter(|p| crate::rollout::is_member(&config.hash, "shop", p, 30))
            .count();
        assert_eq!(at(30, false), expected);
        assert!(expected > 0 && expected < 200, "{expected}");
        assert_eq!(at(100, false), 200);
        assert_eq!(at(100, true), 0, "a preview switches no pod");
        let c = Candidate::new("sha256:stable", 1, 100, false, &config).unwrap();
        assert!(
            !c.selects("sha256:edited-since", "shop", "web-0"),
            "a candidate of another stable config is ignored"
        );
    }

    #[test]
    fn given_a_candidate_with_a_bad_config_then_its_hash_is_still_known() {
        let config = Envelope::new("u", 4, spec()).unwrap();
        let mut v: serde_json::Value = serde_json::from_slice(
            &Candidate::new("sha256:00", 1, 50, false, &config)
                .unwrap()
                .to_bytes()
                .unwrap(),
        )
        .unwrap();
        v["config"]["spec"]["defaultTo"] = serde_json::json!([]);
        let read = Candidate::from_slice(&serde_json::to_vec(&v).unwrap()).unwrap();
        assert_eq!(read.hash, config.hash);
        let err = read.config().unwrap_err();
        assert!(matches!(err, WireError::HashMismatch { .. }), "got {err:?}");
    }

    #[test]
    fn given_malformed_candidates_then_each_is_refused_with_why() {
        let config = Envelope::new("u", 4, spec()).unwrap();
        let good: serde_json::Value = serde_json::from_slice(
            &Candidate::new("sha256:00", 1, 50, false, &config)
                .unwrap()
                .to_bytes()
                .unwrap(),
        )
        .unwrap();
        let with = |key: &str, value: serde_json::Value| {
            let mut v = good.clone();
            v[key] = value;
            serde_json::to_vec(&v).unwrap()
        };
        let err = Candidate::from_slice(&with("percent", serde_json::json!(101))).unwrap_err();
        assert!(err.to_string().contains("percent is 101"), "{err}");
        let err = Candidate::from_slice(&with("schema", serde_json::json!(2))).unwrap_err();
        assert_eq!(err, WireError::UnsupportedSchema { found: 2 });
        let err = Candidate::from_slice(&with("config", serde_json::json!({}))).unwrap_err();
        assert!(err.to_string().contains("config.hash"), "{err}");
        let mut no_stable = good.clone();
        no_stable.as_object_mut().unwrap().remove("stableHash");
        let err = Candidate::from_slice(&serde_json::to_vec(&no_stable).unwrap()).unwrap_err();
        assert!(err.to_string().contains("stableHash"), "{err}");
        assert!(Candidate::from_slice(b"").is_err());
    }

    #[test]
    fn the_candidate_znode_is_the_config_znodes_sibling() {
        let l = Layout::default();
        let config = l.config("shop", "checkout").unwrap();
        assert_eq!(
            Layout::candidate_for_config(&config).unwrap(),
            l.candidate("shop", "checkout").unwrap()
        );
        assert_eq!(
            l.candidate("shop", "checkout").unwrap(),
            "/servicelog/namespaces/shop/checkout/candidate"
        );
        assert!(Layout::candidate_for_config("/a/b").is_err());
    }
}
