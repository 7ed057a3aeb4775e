//! The `ServiceLog` resource, `servicelog.io/v1alpha1`.
//!
//! These types are the spec users write, the payload the operator publishes to ZooKeeper
//! and the input the sidecar compiles into a [`crate::rules::Router`]. With the `kube`
//! feature they also derive the CustomResource and its schema: CEL rules carry the checks a
//! plain OpenAPI schema cannot say, so `kubectl apply` fails early; the full validation
//! (regexes, references) is [`crate::validate`], run by the webhook, the operator and the
//! sidecar alike.
//!
//! Variants are modelled the Kubernetes way — one optional field per kind (`file`,
//! `syslog`, …) with "exactly one" checked by CEL and by `validate` — rather than as Rust
//! enums, because structural CRD schemas cannot express `oneOf` over properties.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What a `ServiceLog` asks for: where a service's logs come from, where they go and the
/// rules that decide which goes where.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[cfg_attr(feature = "kube", derive(kube::CustomResource, kube::KubeSchema))]
#[cfg_attr(
    feature = "kube",
    kube(
        group = "servicelog.io",
        version = "v1alpha1",
        kind = "ServiceLog",
        plural = "servicelogs",
        shortname = "slog",
        namespaced,
        status = "ServiceLogStatus",
        cel,
        doc = "ServiceLog says where one service's logs go: sources, sinks and the rules between them. The operator publishes it to ZooKeeper; the injected sidecars apply it live.",
        printcolumn = r#"{"name":"Valid","type":"string","jsonPath":".status.conditions[?(@.type==\"Valid\")].status"}"#,
        printcolumn = r#"{"name":"Published","type":"string","jsonPath":".status.conditions[?(@.type==\"Published\")].status"}"#,
        printcolumn = r#"{"name":"Applied","type":"string","jsonPath":".status.pods.summary"}"#,
        printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
    )
)]
#[cfg_attr(
    feature = "kube",
    x_kube(validation = kube::core::Rule::new("!has(self.rules) || self.rules.all(r, !has(r.to) || r.to.all(t, self.sinks.exists(s, s.name == t)))").message("every sink named in a rule's to must be declared in sinks"))
)]
#[serde(rename_all = "camelCase")]
pub struct ServiceLogSpec {
    /// Pods this ServiceLog is meant for; counted in `status.pods`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    /// Where events are read. Names are unique (a list map keyed by name).
    #[cfg_attr(feature = "kube", schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"])))]
    #[cfg_attr(feature = "kube", schemars(length(min = 1, max = 32)))]
    pub sources: Vec<Source>,
    /// Where events may go; rules refer to sinks by name.
    #[cfg_attr(feature = "kube", schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"])))]
    #[cfg_attr(feature = "kube", schemars(length(max = 32)))]
    pub sinks: Vec<Sink>,
    /// Evaluated in order; the first rule that matches decides, unless it says
    /// `continue: true`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "kube", schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"])))]
    #[cfg_attr(feature = "kube", schemars(length(max = 256)))]
    pub rules: Vec<crate::v1alpha1::Rule>,
    /// Sinks for events no rule took; empty (the default) drops them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub default_to: Vec<String>,
    /// Per-resource override of the injected sidecar's image and resources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sidecar: Option<SidecarOverride>,
}

/// A label selector, `metav1.LabelSelector` without the dependency on Kubernetes types, so
/// the sidecar can read a spec without linking them.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct LabelSelectorRequirement {
    pub key: String,
    /// `In`, `NotIn`, `Exists` or `DoesNotExist`.
    pub operator: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

/// One input of the sidecar. Exactly one of `file` or `syslog`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[cfg_attr(feature = "kube", derive(kube::KubeSchema))]
#[cfg_attr(
    feature = "kube",
    x_kube(validation = kube::core::Rule::new("[has(self.file), has(self.syslog)].filter(x, x).size() == 1").message("a source sets exactly one of file or syslog"))
)]
#[serde(rename_all = "camelCase")]
pub struct Source {
    /// Unique among the sources; rules match on it with `when.source`.
    #[cfg_attr(feature = "kube", schemars(length(min = 1, max = 63)))]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<FileSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub syslog: Option<SyslogSource>,
    /// Field that holds the level, instead of `level`, `severity`, `lvl`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level_field: Option<String>,
    /// Field that holds the message, instead of `msg`, `message`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_field: Option<String>,
}

/// Files on a volume shared with the application.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct FileSource {
    /// Absolute glob patterns, e.g. `/var/log/app/*.log`.
    #[cfg_attr(feature = "kube", schemars(length(min = 1, max = 16)))]
    pub paths: Vec<String>,
    #[serde(default)]
    pub format: Format,
}

/// How a line becomes an event.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// The line is a JSON object; any other line becomes a text event.
    Json,
    /// The line is `key=value` pairs.
    Logfmt,
    /// The line is the message.
    #[default]
    Text,
}

/// Syslog messages received on a port (RFC 5424 and RFC 3164).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct SyslogSource {
    #[cfg_attr(feature = "kube", schemars(range(min = 1, max = 65535)))]
    pub port: u16,
    #[serde(default)]
    pub protocol: SyslogProtocol,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum SyslogProtocol {
    #[default]
    Udp,
    Tcp,
}

/// One output of the sidecar. Exactly one of `stdout`, `file` or `http`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[cfg_attr(feature = "kube", derive(kube::KubeSchema))]
#[cfg_attr(
    feature = "kube",
    x_kube(validation = kube::core::Rule::new("[has(self.stdout), has(self.file), has(self.http)].filter(x, x).size() == 1").message("a sink sets exactly one of stdout, file or http"))
)]
#[serde(rename_all = "camelCase")]
pub struct Sink {
    /// Unique among the sinks; rules send to it with `to`.
    #[cfg_attr(feature = "kube", schemars(length(min = 1, max = 63)))]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout: Option<StdoutSink>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<FileSink>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpSink>,
}

/// The sidecar's standard output.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct StdoutSink {
    #[serde(default)]
    pub encoding: LineEncoding,
}

/// A file the sidecar appends to.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct FileSink {
    /// Absolute path of the file.
    #[cfg_attr(feature = "kube", schemars(length(min = 1)))]
    pub path: String,
    #[serde(default)]
    pub encoding: LineEncoding,
    /// Rotate when the file would grow past this many bytes; absent means never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
    /// Rotated files kept (`path.1` … `path.N`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_files: Option<u32>,
}

/// How file and stdout sinks write an event.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum LineEncoding {
    /// The original line, unchanged.
    #[default]
    Raw,
    /// The event's fields plus `_servicelog: {source, pod, namespace}`.
    Json,
}

/// An HTTP endpoint (Loki, Elasticsearch or any JSON-lines receiver).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct HttpSink {
    /// `http://` or `https://` URL the batches are sent to.
    #[cfg_attr(feature = "kube", schemars(length(min = 1)))]
    pub url: String,
    #[serde(default)]
    pub encoding: HttpEncoding,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum HttpEncoding {
    #[default]
    JsonLines,
    Loki,
    Elasticsearch,
}

/// One routing rule: a condition and what to do with the events that meet it.
/// Either `to` (route) or `action: drop`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[cfg_attr(feature = "kube", derive(kube::KubeSchema))]
#[cfg_attr(
    feature = "kube",
    x_kube(
        validation = kube::core::Rule::new("has(self.to) != has(self.action)").message("a rule has either to or action: drop"),
        validation = kube::core::Rule::new("!has(self.action) || (!has(self.sample) && !has(self.rateLimit))").message("sample and rateLimit apply to routing rules, not to action: drop"),
    )
)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    /// Unique among the rules; used in metrics and errors.
    #[cfg_attr(feature = "kube", schemars(length(min = 1, max = 63)))]
    pub name: String,
    /// All conditions must hold; absent matches every event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<When>,
    /// Sinks the matching events go to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "kube", schemars(length(min = 1, max = 32)))]
    pub to: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<Action>,
    /// Fraction of the matching events kept, 0..1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "kube", schemars(range(min = 0.0, max = 1.0)))]
    pub sample: Option<f64>,
    /// At most this many matching events per second are routed; the rest are dropped
    /// (counted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// Go on evaluating the next rules after this one matched.
    #[serde(
        default,
        rename = "continue",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub continue_: bool,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Drop,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    #[cfg_attr(feature = "kube", schemars(range(min = 0.0)))]
    pub per_second: f64,
}

/// A condition on an event; every field given must hold (AND). `any` holds when one of its
/// conditions does (OR).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct When {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<LevelCondition>,
    /// Name of the source the event came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<MessageCondition>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "kube", schemars(length(max = 16)))]
    pub fields: Vec<FieldCondition>,
    /// Nested conditions, any of which may hold. The schema leaves their inner shape open
    /// (CRD schemas cannot recurse); `validate` checks it in full.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "kube", schemars(schema_with = "open_object_list"))]
    pub any: Vec<When>,
}

#[cfg(feature = "kube")]
fn open_object_list(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
    })
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct LevelCondition {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_least: Option<Level>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub below: Option<Level>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub r#in: Vec<Level>,
}

/// Event severity, ordered trace < debug < info < warn < error < fatal.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
    Fatal,
}

impl Level {
    pub const ALL: [Level; 6] = [
        Level::Trace,
        Level::Debug,
        Level::Info,
        Level::Warn,
        Level::Error,
        Level::Fatal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Level::Trace => "trace",
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
            Level::Fatal => "fatal",
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct MessageCondition {
    /// Regular expression (Rust `regex` syntax) searched in the message.
    pub regex: String,
}

/// A condition on one field. Exactly one test besides `name`. (CEL cannot see the
/// untyped `equals`/`in`, so the schema checks the typed tests and `validate` all of them.)
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[cfg_attr(feature = "kube", derive(kube::KubeSchema))]
#[cfg_attr(
    feature = "kube",
    x_kube(validation = kube::core::Rule::new("[has(self.regex), has(self.exists), has(self.greaterThan), has(self.lessThan)].filter(x, x).size() <= 1").message("a field condition sets exactly one of equals, in, regex, exists, greaterThan, lessThan"))
)]
#[serde(rename_all = "camelCase")]
pub struct FieldCondition {
    /// Field name; dots reach into nested JSON objects (`http.status`).
    #[cfg_attr(feature = "kube", schemars(length(min = 1)))]
    pub name: String,
    /// Equal to this JSON scalar (string, number or boolean).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "kube", schemars(schema_with = "any_scalar"))]
    pub equals: Option<serde_json::Value>,
    /// Equal to one of these scalars.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "kube", schemars(schema_with = "any_scalar_list"))]
    pub r#in: Option<Vec<serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    /// `true`: the field is present; `false`: it is absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exists: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub greater_than: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub less_than: Option<f64>,
}

#[cfg(feature = "kube")]
fn any_scalar(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"x-kubernetes-preserve-unknown-fields": true})
}

#[cfg(feature = "kube")]
fn any_scalar_list(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": "array", "items": {"x-kubernetes-preserve-unknown-fields": true}})
}

/// Image and resources of the injected sidecar for this ServiceLog's pods.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct SidecarOverride {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
}

/// `corev1.ResourceRequirements` limits and requests as quantity strings.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub limits: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub requests: BTreeMap<String, String>,
}

/// What the operator reports on the resource.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct ServiceLogStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `sha256:<hex>` of the published spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_hash: Option<String>,
    /// ZooKeeper data version of the config znode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published_version: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<PodCounts>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct PodCounts {
    /// Pods the selector matches.
    pub matched: u32,
    /// Pods carrying the sidecar for this ServiceLog.
    pub injected: u32,
    /// Sidecars whose instance znode acks the current configHash.
    pub applied: u32,
    /// `applied/injected`, for the printer column.
    #[serde(default)]
    pub summary: String,
}

/// A standard `metav1.Condition`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    pub r#type: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// RFC 3339 time of the last status change.
    pub last_transition_time: String,
    pub reason: String,
    pub message: String,
}
