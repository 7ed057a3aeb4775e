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
        category = "servicelog",
        namespaced,
        status = "ServiceLogStatus",
        cel,
        doc = "ServiceLog says where one service's logs go: sources, sinks and the rules between them. The operator publishes it to ZooKeeper; the injected sidecars apply it live.",
        printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status","description":"Valid, published, and applied by every injected pod"}"#,
        printcolumn = r#"{"name":"Valid","type":"string","jsonPath":".status.conditions[?(@.type==\"Valid\")].status"}"#,
        printcolumn = r#"{"name":"Published","type":"string","jsonPath":".status.conditions[?(@.type==\"Published\")].status"}"#,
        printcolumn = r#"{"name":"Applied","type":"string","jsonPath":".status.pods.summary","description":"Pods that applied the current config / pods injected"}"#,
        printcolumn = r#"{"name":"Rollout","type":"string","jsonPath":".status.rollout.summary","description":"Staged rollout: phase, step/steps, canaries that run the candidate / canaries"}"#,
        printcolumn = r#"{"name":"Matched","type":"integer","jsonPath":".status.pods.matched","priority":1,"description":"Pods the selector matches"}"#,
        printcolumn = r#"{"name":"Injected","type":"integer","jsonPath":".status.pods.injected","priority":1,"description":"Pods carrying the sidecar"}"#,
        printcolumn = r#"{"name":"Hash","type":"string","jsonPath":".status.configHash","priority":1,"description":"Hash of the published config"}"#,
        printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
    )
)]
// No spec-level CEL rule checks that `to` names declared sinks: CEL runs before the
// validating webhook, and within the API server's cost budget its message cannot name the
// rule and sink (docs/architecture.md, "Refusals name the field"); the webhook refuses it as
// `spec.rules[i].to[j]: unknown sink "…"`, and without the webhook the operator reports it
// in status and never publishes.
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
    /// How a change of this spec reaches the pods: in steps, each a share of the pods,
    /// with automatic rollback. Absent: every pod at once. Not part of the published
    /// config (docs/architecture.md, "Staged rollout").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<Rollout>,
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

#[cfg(feature = "kube")]
impl LabelSelector {
    /// kube's selector for this one, which does the matching (`metav1.LabelSelector`
    /// semantics: every requirement holds; an empty selector matches everything).
    ///
    /// Notable errors: an operator other than `In`, `NotIn`, `Exists`, `DoesNotExist`, or
    /// `In`/`NotIn` without values.
    pub fn to_selector(&self) -> Result<kube::core::Selector, kube::core::ParseExpressionError> {
        use kube::core::{Expression, ParseExpressionError, Selector};
        let mut selector: Selector = self
            .match_labels
            .iter()
            .map(|(k, v)| Expression::Equal(k.clone(), v.clone()))
            .collect();
        for r in &self.match_expressions {
            let key = r.key.clone();
            let values = || r.values.iter().cloned().collect();
            let expression = match r.operator.as_str() {
                "In" if !r.values.is_empty() => Expression::In(key, values()),
                "NotIn" if !r.values.is_empty() => Expression::NotIn(key, values()),
                "Exists" => Expression::Exists(key),
                "DoesNotExist" => Expression::DoesNotExist(key),
                other => {
                    return Err(ParseExpressionError(format!(
                        "matchExpressions operator {other:?} on {:?} is not In, NotIn (with values), Exists or DoesNotExist",
                        r.key
                    )));
                }
            };
            selector.extend([expression]);
        }
        Ok(selector)
    }

    /// Whether the selector matches a pod's labels; one that does not parse matches nothing.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        use kube::core::SelectorExt;
        self.to_selector().is_ok_and(|s| s.matches(labels))
    }
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

/// One input of the sidecar (or, for `containerLogs`, of the node agent). Exactly one of
/// `file`, `syslog` or `containerLogs`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[cfg_attr(feature = "kube", derive(kube::KubeSchema))]
#[cfg_attr(
    feature = "kube",
    x_kube(validation = kube::core::Rule::new("[has(self.file), has(self.syslog), has(self.containerLogs)].filter(x, x).size() == 1").message(kube::core::Message::Expression("'source \"' + self.name + '\" sets ' + (has(self.file) || has(self.syslog) || has(self.containerLogs) ? (has(self.file) ? 'file ' : '') + (has(self.syslog) ? 'syslog ' : '') + (has(self.containerLogs) ? 'containerLogs ' : '') : 'none of them ') + '- a source sets exactly one of file, syslog or containerLogs'".into())))
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_logs: Option<ContainerLogsSource>,
    /// Field that holds the level, instead of `level`, `severity`, `lvl`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level_field: Option<String>,
    /// Field that holds the message, instead of `msg`, `message`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_field: Option<String>,
    /// Longest line (or syslog message) kept whole, in bytes (default 1 MiB, at least
    /// 1 KiB, at most 16 MiB; an integer or a quantity such as `64Ki`). A longer one is
    /// truncated to this size, counted in `servicelog_lines_truncated_total{source}` and
    /// logged; the rest of it is skipped.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::quantity::deserialize_opt_bytes"
    )]
    #[cfg_attr(
        feature = "kube",
        schemars(schema_with = "crate::quantity::bytes_schema")
    )]
    pub max_line_bytes: Option<u64>,
}

impl Source {
    /// `maxLineBytes`, or its default.
    pub fn max_line_bytes(&self) -> usize {
        self.max_line_bytes.map_or(DEFAULT_MAX_LINE_BYTES, |n| {
            n.clamp(1024, MAX_LINE_BYTES as u64) as usize
        })
    }
}

/// A line longer than this (unless `maxLineBytes` says otherwise) is truncated.
pub const DEFAULT_MAX_LINE_BYTES: usize = 1 << 20;
/// The largest `maxLineBytes`.
pub const MAX_LINE_BYTES: usize = 16 << 20;

/// Files on a volume shared with the application.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct FileSource {
    /// Absolute, normalised glob patterns, e.g. `/var/log/app/*.log`. The directory before
    /// the first glob character gets a volume shared with the app, so it is not `/`, not at
    /// or under `/etc`, `/usr`, `/bin`, `/sbin`, `/lib*`, `/boot`, `/root`, and not `/var`,
    /// `/var/lib`, `/run`, `/opt`, `/home` themselves; a pattern never reaches `/proc`,
    /// `/sys`, `/dev`, mounted secrets or the sidecar's own directories. Symlinks out of
    /// the directory are not followed.
    #[cfg_attr(feature = "kube", schemars(length(min = 1, max = 16)))]
    pub paths: Vec<String>,
    #[serde(default)]
    pub format: Format,
    /// Joins the lines of one event (a stack trace) into one event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multiline: Option<Multiline>,
    /// With `format: regex`: the pattern (Rust `regex` syntax) whose named captures
    /// (`(?P<status>\d+)`) become the event's fields, as strings. A line it does not match
    /// is a text event, `{"message": <line>}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "kube", schemars(length(min = 1, max = 4096)))]
    pub regex: Option<String>,
}

/// Multi-line events: a line matching `startPattern` starts an event; the lines after it
/// that do not match belong to it, joined with `\n`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct Multiline {
    /// Regular expression matching the first line of an event, e.g. `^\d{4}-\d{2}-\d{2}` or
    /// `^\S` (continuation lines of stack traces start with whitespace).
    #[cfg_attr(feature = "kube", schemars(length(min = 1, max = 1024)))]
    pub start_pattern: String,
    /// Most lines in one event (default 500); the next line starts a new event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "kube", schemars(range(min = 1, max = 100000)))]
    pub max_lines: Option<u32>,
    /// An event is complete when no line followed it for this long (default `1s`), e.g.
    /// `500ms`, `2s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
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
    /// The named captures of the source's `regex` (nginx, apache and other fixed layouts).
    Regex,
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
    /// The IP address to listen on (default `127.0.0.1`). The sidecar shares the pod's
    /// network namespace, so the application reaches loopback; anything else on the
    /// network does not, and cannot feed the pod's log routing. `0.0.0.0` (IPv4) or `::`
    /// (IPv6 and IPv4) accepts senders from outside the pod. Applications should send to
    /// `127.0.0.1`, not `localhost`, which may resolve to `::1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}

/// What the pod's containers print to stdout and stderr, as the kubelet writes it to
/// `/var/log/pods/<namespace>_<pod>_<uid>/<container>/<restart>.log`, read by the
/// servicelog node agent on the pod's node (no sidecar, no volume in the pod).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct ContainerLogsSource {
    /// The containers whose output is read (default: every app container of the pod;
    /// init containers and the servicelog sidecar only when named).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "kube", schemars(length(max = 64)))]
    pub containers: Vec<String>,
    /// `stdout`, `stderr` (default: both).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "kube", schemars(length(max = 2)))]
    pub streams: Vec<ContainerStream>,
    /// How each printed line becomes an event: `json`, `logfmt` or `text` (the default).
    #[serde(default)]
    pub format: Format,
}

impl ContainerLogsSource {
    /// Whether `stream` is read: listed, or no stream is listed.
    pub fn reads(&self, stream: ContainerStream) -> bool {
        self.streams.is_empty() || self.streams.contains(&stream)
    }
}

/// A container's output stream, as the kubelet's log files name it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum ContainerStream {
    Stdout,
    Stderr,
}

/// Where a syslog source listens unless its `address` says otherwise: loopback only.
pub const DEFAULT_SYSLOG_ADDRESS: std::net::IpAddr =
    std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

impl SyslogSource {
    /// `address`, or [`DEFAULT_SYSLOG_ADDRESS`]; an error for text that is not an IP
    /// address (which validation refuses).
    pub fn address(&self) -> Result<std::net::IpAddr, std::net::AddrParseError> {
        self.address
            .as_deref()
            .map_or(Ok(DEFAULT_SYSLOG_ADDRESS), str::parse)
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum SyslogProtocol {
    #[default]
    Udp,
    Tcp,
}

/// One output of the sidecar. Exactly one of `stdout`, `file`, `http`, `otlp` or `kafka`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[cfg_attr(feature = "kube", derive(kube::KubeSchema))]
#[cfg_attr(
    feature = "kube",
    x_kube(
        validation = kube::core::Rule::new("[has(self.stdout), has(self.file), has(self.http), has(self.otlp), has(self.kafka)].filter(x, x).size() == 1").message(kube::core::Message::Expression("'sink \"' + self.name + '\" sets ' + (has(self.stdout) || has(self.file) || has(self.http) || has(self.otlp) || has(self.kafka) ? (has(self.stdout) ? 'stdout ' : '') + (has(self.file) ? 'file ' : '') + (has(self.http) ? 'http ' : '') + (has(self.otlp) ? 'otlp ' : '') + (has(self.kafka) ? 'kafka ' : '') : 'none of them ') + '- a sink sets exactly one of stdout, file, http, otlp or kafka'".into())),
        validation = kube::core::Rule::new("!has(self.credentialsSecretRef) || has(self.http) || has(self.otlp) || has(self.kafka)").message(kube::core::Message::Expression("'sink \"' + self.name + '\": credentialsSecretRef applies to http, otlp and kafka sinks only'".into())).field_path(".credentialsSecretRef"),
    )
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otlp: Option<OtlpSink>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka: Option<KafkaSink>,
    /// The queue in front of the sink; default in memory, 2 MiB, `whenFull: block`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buffer: Option<Buffer>,
    /// A Secret in the pod's namespace holding credentials for an `http` or `otlp` sink: keys
    /// `username` and `password` (basic auth), `token` (bearer), `header.<Name>` (any
    /// header); for a `kafka` sink, SASL: `username`, `password` and `mechanism` (`PLAIN`,
    /// the default, `SCRAM-SHA-256` or `SCRAM-SHA-512`). The webhook mounts it into the
    /// sidecar; only its name is published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretRef>,
}

/// The queue in front of a sink.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct Buffer {
    #[serde(default, rename = "type")]
    pub kind: BufferType,
    /// Most bytes queued (default 2 MiB in memory, 256 MiB on disk); at most 64 MiB in
    /// memory, 1 GiB on disk, and 1 GiB for all disk buffers of a ServiceLog together; an
    /// integer or a quantity such as `256Mi`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::quantity::deserialize_opt_bytes"
    )]
    #[cfg_attr(
        feature = "kube",
        schemars(schema_with = "crate::quantity::bytes_schema")
    )]
    pub max_bytes: Option<u64>,
    #[serde(default)]
    pub when_full: WhenFull,
    /// Disk buffers: when a batch counts as taken. `none` (the default): once written
    /// to the segment file, so the buffer survives the sidecar dying but not the machine;
    /// `batch`: once the segment is also flushed to the device (fdatasync), for
    /// machine-crash durability at the cost of one sync per batch.
    #[serde(default, skip_serializing_if = "BufferSync::is_none")]
    pub sync: BufferSync,
}

/// When a disk buffer's writes are flushed to the device.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub enum BufferSync {
    /// Left to the kernel's writeback.
    #[default]
    None,
    /// fdatasync before each batch is acked.
    Batch,
}

impl BufferSync {
    /// The default, left out of the serialized form so existing configs hash the same.
    pub fn is_none(&self) -> bool {
        *self == Self::None
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub enum BufferType {
    /// Lost when the sidecar stops; the file sources' checkpoints stay behind it, so its
    /// events are read again after a restart.
    #[default]
    Memory,
    /// In the state directory; survives restarts. Events count as taken once on disk.
    Disk,
}

/// What a full buffer does with more events.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub enum WhenFull {
    /// Wait: the sources stop reading until the sink catches up.
    #[default]
    Block,
    /// Drop the new events (counted in `servicelog_events_dropped_total`).
    DropNewest,
}

/// A Secret in the pod's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    #[cfg_attr(feature = "kube", schemars(length(min = 1, max = 253)))]
    pub name: String,
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
    /// Absolute, normalised path of the file, in a directory of its own (not `/`, not a
    /// system directory) and never under `/proc`, `/sys`, `/dev`, mounted secrets or the
    /// sidecar's own directories.
    #[cfg_attr(feature = "kube", schemars(length(min = 1)))]
    pub path: String,
    #[serde(default)]
    pub encoding: LineEncoding,
    /// Rotate when the file would grow past this many bytes (an integer or a quantity such
    /// as `100Mi`); absent means never.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::quantity::deserialize_opt_bytes"
    )]
    #[cfg_attr(
        feature = "kube",
        schemars(schema_with = "crate::quantity::bytes_schema")
    )]
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

/// A Kafka topic: one record per event, produced with `acks=all`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct KafkaSink {
    /// Bootstrap brokers, `host:port`; the others are found from their metadata.
    #[cfg_attr(feature = "kube", schemars(length(min = 1, max = 16)))]
    pub brokers: Vec<String>,
    /// The topic written to; it must exist (the sink does not create it).
    #[cfg_attr(feature = "kube", schemars(length(min = 1, max = 249)))]
    pub topic: String,
    /// Event field whose value is the record key (dotted names reach into nested JSON):
    /// records with the same key go to the same partition (murmur2, as Java clients
    /// do). Absent, or absent from an event: no key, and each batch goes to the next
    /// partition in turn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The record value: the original line (`raw`, the default) or the event as JSON.
    #[serde(default)]
    pub encoding: LineEncoding,
    #[serde(default)]
    pub compression: KafkaCompression,
    /// Only `all`: the sink always waits for every in-sync replica, since the file's
    /// checkpoint moves on that answer; `1` and `0` are refused.
    #[serde(default)]
    pub acks: KafkaAcks,
    /// A produce request holds at most `maxBytes` of record values per partition (default
    /// 512 KiB, at most 1 MiB, the broker's default `message.max.bytes`); events wait at
    /// most `timeout` (default `100ms`) for more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<HttpBatch>,
    /// TLS to the brokers (the system roots unless `caFile` names a mounted CA bundle);
    /// absent: plaintext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<KafkaTls>,
}

/// Compression of a Kafka sink's record batches (the codecs the sidecar is built with).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum KafkaCompression {
    #[default]
    None,
    Gzip,
    Snappy,
    Lz4,
}

/// The acknowledgement a Kafka sink waits for.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum KafkaAcks {
    /// Every in-sync replica has the records.
    #[default]
    All,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct KafkaTls {
    /// PEM file of the CAs to trust instead of the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
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
    /// Loki: event fields whose values become stream labels (dots become `_`), besides
    /// `namespace`, `pod` and `source`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "kube", schemars(length(max = 16)))]
    pub labels: Vec<String>,
    /// Elasticsearch: the index or data stream written to (default `servicelog`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<String>,
    #[serde(default)]
    pub compression: Compression,
    /// A request is sent when it holds this many bytes (default 1 MiB) or its first event
    /// is `timeout` old (default `1s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<HttpBatch>,
    /// Non-secret headers sent with every request. Credential headers are refused
    /// (`Authorization`, `Proxy-Authorization`, `Cookie`, `Set-Cookie`, and names with a
    /// word starting with `auth` or being `token`, `secret`, `password`, `apikey`,
    /// `session`, … or `api-key`): they go in `credentialsSecretRef`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// How long one request may take (default `30s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<HttpTls>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    None,
    Gzip,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct HttpBatch {
    /// A request's most bytes, 1 KiB to 64 MiB; an integer or a quantity such as `1Mi`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::quantity::deserialize_opt_bytes"
    )]
    #[cfg_attr(
        feature = "kube",
        schemars(schema_with = "crate::quantity::bytes_schema")
    )]
    pub max_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
}

/// TLS for `https://` URLs: the system roots unless `caFile` names a mounted CA bundle.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct HttpTls {
    /// PEM file of the CAs to trust instead of the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// Skip certificate verification (testing only).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_skip_verify: bool,
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

/// OTLP logs over HTTP: events become LogRecords, POSTed as protobuf to
/// `<endpoint>/v1/logs` (the endpoint as given if it already ends with `/v1/logs`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct OtlpSink {
    /// `http://` or `https://` base URL of the collector, e.g. `http://otel-collector:4318`.
    #[cfg_attr(feature = "kube", schemars(length(min = 1)))]
    pub endpoint: String,
    #[serde(default)]
    pub protocol: OtlpProtocol,
    #[serde(default)]
    pub compression: Compression,
    /// Non-secret headers sent with every request; credential headers are refused as for
    /// `http.headers` (they go in `credentialsSecretRef`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Resource attributes sent with every batch besides the pod's (`k8s.namespace.name`,
    /// `k8s.pod.name`); these win on a clash. Set `service.name` here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<OtlpResource>,
    /// A request is sent when it holds this many bytes of events (default 1 MiB) or its
    /// first event is `timeout` old (default `1s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<HttpBatch>,
    /// How long one request may take (default `10s`, the OTLP exporters' default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<HttpTls>,
}

/// The OTLP transport; only `http/protobuf` for now.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
pub enum OtlpProtocol {
    #[default]
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct OtlpResource {
    /// String attributes of the resource, e.g. `deployment.environment: prod`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, String>,
}

/// One routing rule: a condition and what to do with the events that meet it.
/// Either `to` (route) or `action: drop`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[cfg_attr(feature = "kube", derive(kube::KubeSchema))]
#[cfg_attr(
    feature = "kube",
    x_kube(
        validation = kube::core::Rule::new("has(self.to) != has(self.action)").message(kube::core::Message::Expression("'rule \"' + self.name + '\" has ' + (has(self.to) ? 'both to and action: drop' : 'neither to nor action') + ': a rule has either to or action: drop'".into())),
        validation = kube::core::Rule::new("!has(self.action) || (!has(self.sample) && !has(self.rateLimit))").message(kube::core::Message::Expression("'rule \"' + self.name + '\" drops but sets ' + (has(self.sample) ? 'sample' : 'rateLimit') + ': sample and rateLimit apply to routing rules, not to action: drop'".into())),
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
    /// Changes made, in order, to the events this rule routes, on their way to this
    /// rule's sinks only; other rules and `defaultTo` see the event as read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "kube", schemars(length(max = 16)))]
    pub transform: Vec<Transform>,
}

/// One change to an event. Exactly one of `set`, `remove`, `rename`, `redact`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[cfg_attr(feature = "kube", derive(kube::KubeSchema))]
#[cfg_attr(
    feature = "kube",
    x_kube(validation = kube::core::Rule::new("[has(self.set), has(self.remove), has(self.rename), has(self.redact)].filter(x, x).size() == 1").message(kube::core::Message::Expression("'a transform sets exactly one of set, remove, rename, redact'".into())))
)]
#[serde(rename_all = "camelCase")]
pub struct Transform {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set: Option<SetField>,
    /// The field to remove (dots reach into nested objects).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remove: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rename: Option<RenameField>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redact: Option<Redact>,
}

/// Sets `field` to `value`: a JSON constant, or a string with `${field}` templates
/// (`"${http.method} ${http.path}"`; `$$` is a literal `$`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct SetField {
    #[cfg_attr(feature = "kube", schemars(length(min = 1)))]
    pub field: String,
    #[cfg_attr(feature = "kube", schemars(schema_with = "any_value"))]
    pub value: serde_json::Value,
}

#[cfg(feature = "kube")]
fn any_value(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"x-kubernetes-preserve-unknown-fields": true})
}

/// Moves the value of `from` to `to`; nothing happens when `from` is absent.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct RenameField {
    #[cfg_attr(feature = "kube", schemars(length(min = 1)))]
    pub from: String,
    #[cfg_attr(feature = "kube", schemars(length(min = 1)))]
    pub to: String,
}

/// Replaces what `regex` (or a built-in `pattern`) matches in `field` — the event's
/// message when absent — with `replacement`. Exactly one of `regex` or `pattern`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct Redact {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "kube", schemars(length(min = 1, max = 1024)))]
    pub regex: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<RedactPattern>,
    /// Default `[REDACTED]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replacement: Option<String>,
}

/// Built-in `redact` patterns.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub enum RedactPattern {
    /// `user@example.com`.
    Email,
    /// `Bearer <token>` (the token is replaced, `Bearer ` kept).
    BearerToken,
    /// 13–19 digits, optionally grouped by spaces or dashes, that pass the Luhn check.
    CreditCard,
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
    x_kube(validation = kube::core::Rule::new("[has(self.regex), has(self.exists), has(self.greaterThan), has(self.lessThan)].filter(x, x).size() <= 1").message(kube::core::Message::Expression("'the condition on field \"' + self.name + '\" sets more than one test: a field condition sets exactly one of equals, in, regex, exists, greaterThan, lessThan'".into())))
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
    /// The sidecars' own log level while this config is in force (default: the operator's
    /// `--sidecar-log-level`, else `info`); changed live, without a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_level: Option<LogLevel>,
}

/// Levels of the sidecar's own logs.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Error => "error",
            Self::Warn => "warn",
            Self::Info => "info",
            Self::Debug => "debug",
            Self::Trace => "trace",
        }
    }
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
    /// The staged rollout in progress or last finished; absent without `spec.rollout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutStatus>,
    /// One per type (a list-map keyed by `type`, as server-side apply expects).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "kube", schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"])))]
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

/// `spec.rollout`: a changed spec is published as a candidate beside the stable config
/// and reaches a growing share of the pods, step by step; the last step promotes it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct Rollout {
    /// In order, each with a larger `percent`; after the last one the candidate becomes
    /// the stable config for every pod.
    #[cfg_attr(feature = "kube", schemars(length(min = 1, max = 10)))]
    pub steps: Vec<RolloutStep>,
    /// Health gates on the canary pods, beyond a rejected config (which always rolls
    /// back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_on: Option<RollbackOn>,
    /// Run the candidate in shadow on every pod's live events, writing nowhere, and
    /// report per-rule match counts before any pod switches.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub preview: bool,
    /// How long a step's canaries have to run the candidate (`5m`, at most `24h`;
    /// default `10m`); past it the candidate is rolled back, naming the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_deadline: Option<String>,
}

/// One step of a rollout.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct RolloutStep {
    /// Share of the pods that run the candidate in this step, 1 to 100.
    #[cfg_attr(feature = "kube", schemars(range(min = 1, max = 100)))]
    pub percent: u32,
    /// How long the step holds once its pods acked, before the next (`30s`, `5m`,
    /// at most `24h`); absent: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause: Option<String>,
}

/// Health gates: a canary pod past one of them rolls the candidate back. Each ratio is
/// over the events the pod handled since it applied the candidate, judged once it has
/// handled `minEvents`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct RollbackOn {
    /// Share of the events given to sinks that the sinks rejected, 0 to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "kube", schemars(range(min = 0.0, max = 1.0)))]
    pub rejected_ratio: Option<f64>,
    /// Share of the events read that the rules dropped (`action: drop`, or no route), 0
    /// to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "kube", schemars(range(min = 0.0, max = 1.0)))]
    pub dropped_ratio: Option<f64>,
    /// Events a canary pod must have handled before its ratios count (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_events: Option<u64>,
    /// Roll back when a sink that received events under the stable config receives none
    /// under the candidate once the canaries handled `minEvents` (a new rule that
    /// swallows what another used to route).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub quiet_sinks: bool,
    /// Roll back when a rule that decided events under the stable config decides none
    /// under the candidate once the canaries handled `minEvents` (a new `drop` that
    /// swallows everything before it). Rules are matched by name; one the candidate
    /// removed or renamed is not judged.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub quiet_rules: bool,
}

/// Where a rollout is.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
pub enum RolloutPhase {
    Progressing,
    Paused,
    Complete,
    RolledBack,
}

/// `status.rollout`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    pub phase: RolloutPhase,
    /// The step in force, 1-based (0: the candidate is published, no step started).
    pub step: u32,
    /// The config every non-canary pod runs.
    pub stable_hash: String,
    /// The config being rolled out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate_hash: Option<String>,
    pub canary: CanaryCounts,
    /// Why the rollout is in this phase (the rejection, the gate that tripped).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// `phase step/steps applied/total`, for the printer column.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub summary: String,
    /// During a preview: events each rule decided, summed over the pods' shadows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview: Option<PreviewCounts>,
}

/// A preview's per-rule counts over the pods (`(default)`: events no rule decided).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct PreviewCounts {
    /// Pods whose counts are summed.
    pub pods: u32,
    /// By rule of the config in force: events since each pod's shadow started.
    pub stable: BTreeMap<String, u64>,
    /// By rule of the candidate.
    pub candidate: BTreeMap<String, u64>,
    /// By rule of the config in force: events per second over the pods (each pod's count
    /// over the time its shadow ran, summed), to 2 decimals.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub stable_per_second: BTreeMap<String, f64>,
    /// By rule of the candidate, likewise.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub candidate_per_second: BTreeMap<String, f64>,
}

/// The pods of the step in force.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct CanaryCounts {
    /// Canary pods that ack the candidate.
    pub applied: u32,
    /// Pods the step's percent selects.
    pub total: u32,
}
