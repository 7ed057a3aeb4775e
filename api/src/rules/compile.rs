//! Spec → [`Router`]: one pass that checks every part of a spec and builds the program.
//!
//! This is also the whole of [`crate::validate`]: each check sits where the compiled form
//! relies on it (a sink index exists, a regex compiled, at most [`MAX_FIELDS`] field
//! slots), and the walk goes on after a problem so that every error is reported at once.
//! A part that failed yields nothing, and the router is only built when there were no
//! errors.

use std::{
    collections::{BTreeMap, HashMap},
    sync::atomic::{AtomicU64, Ordering},
};

use regex::bytes::RegexBuilder;
use regex_automata::meta::Regex;

use super::{
    Router, SinkSet,
    event::MAX_FIELDS,
    json::MAX_PATH,
    keys::{KeyTable, LEVEL_CANDIDATES, MESSAGE_CANDIDATES, Target},
    limit::{RateLimiter, Sampler, splitmix64},
    matcher::{Cond, FieldTest, Scalar},
    regex_format::RegexPlan,
    transform::{self, FieldPath, Step},
};
use crate::{
    v1alpha1::{
        Action, BufferSync, BufferType, ContainerLogsSource, FieldCondition, Format, HttpBatch,
        HttpEncoding, HttpSink, HttpTls, LabelSelector, Level, OtlpSink, ServiceLogSpec, Sink,
        Source, SyslogProtocol, When,
    },
    validate::{
        Errors, ValidationErrors, check_header_name, check_name, check_sink_path,
        check_source_path, check_syslog_address, check_url, is_credential_header, parse_duration,
    },
};

/// Most sinks a spec may declare: a decision carries its sinks as a 64-bit set.
pub const MAX_SINKS: usize = 64;

/// Deepest nesting of `any` inside `any`.
pub const MAX_ANY_DEPTH: usize = 8;

/// Compiled size limit of one regex, so one spec cannot make the webhook or a sidecar
/// allocate without bound.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

// The whole-spec budget. A sidecar's memory limit is 64 MiB by default; the budget keeps
// what a spec's program can hold, at worst, to half of that, leaving the rest to buffers,
// batches and the process itself. Every caller — `validate`, the webhook, the operator's
// reconcile (`Envelope::publishable`) and the sidecar — compiles through here, so no
// accepted spec is refused later for its size.

/// Most regexes one spec may hold (conditions and multi-line start patterns).
pub const MAX_REGEXES: usize = 48;

/// Lazy-DFA cache of one regex, per search direction and per searching thread (the
/// regex crate's `dfa_size_limit`; its default is 2 MiB). Small enough that the caches of
/// [`MAX_REGEXES`] regexes fit the budget; a pattern that needs more states falls back to
/// slower engines rather than to more memory. 64 KiB was too small for a pattern as
/// ordinary as `\w+@\w+\.com` (Unicode classes: 80× slower, measured); 128 KiB holds it.
pub const REGEX_CACHE_LIMIT: usize = 128 << 10;

/// Threads of a sidecar that search with the router's regexes, each with its own caches:
/// the file reader and the syslog router.
const SEARCH_THREADS: usize = 2;

/// What one regex is charged beyond its compiled size: the forward and reverse lazy-DFA
/// caches of each searching thread at their limit.
pub const REGEX_CACHE_CHARGE: usize = SEARCH_THREADS * 2 * REGEX_CACHE_LIMIT;

/// Most bytes the regexes of one spec may hold together: compiled programs (as the regex
/// engine reports them) plus [`REGEX_CACHE_CHARGE`] each.
pub const MAX_REGEX_BYTES: usize = 32 << 20;

/// Most conditions in one spec, counting every `level`, `source`, `message`, field
/// condition and `any` alternative, nested ones included: each costs routing time per event.
pub const MAX_CONDITIONS: usize = 1024;

/// Most alternatives of one `any`.
pub const MAX_ANY_WIDTH: usize = 64;

/// Ceiling of one disk buffer's `maxBytes`, and of all disk buffers of a spec together:
/// they share the sidecar's state directory, an emptyDir whose `sizeLimit` matches.
pub const MAX_DISK_BUFFER_BYTES: u64 = 1 << 30;

/// What a disk buffer without `maxBytes` may hold (the sidecar's default), counted
/// towards [`MAX_DISK_BUFFER_BYTES`].
pub const DEFAULT_DISK_BUFFER_BYTES: u64 = 256 << 20;

/// Ceiling of one memory buffer's `maxBytes`: the sidecar's default memory limit; a
/// larger buffer could never fill without the sidecar being killed.
pub const MAX_MEMORY_BUFFER_BYTES: u64 = 64 << 20;

const DEFAULT_LEVEL_FIELDS: [&str; LEVEL_CANDIDATES] = ["level", "severity", "lvl"];
const DEFAULT_MESSAGE_FIELDS: [&str; MESSAGE_CANDIDATES] = ["msg", "message"];

/// How one source's lines become events.
#[derive(Debug)]
pub(crate) struct SourcePlan {
    pub(crate) format: Format,
    /// Keys to read: nested for `json`, flat for `logfmt` and `regex`.
    pub(crate) keys: KeyTable,
    /// `format: regex`: the pattern and where its captures go.
    pub(crate) regex: Option<RegexPlan>,
    /// Where the message is read from, in order: what `redact` without a field changes.
    pub(crate) message: Vec<FieldPath>,
}

#[derive(Debug)]
pub(crate) enum RuleAction {
    To(SinkSet),
    Drop,
}

#[derive(Debug)]
pub(crate) struct CompiledRule {
    /// ANDed, cheapest first; empty matches every event.
    pub(crate) when: Vec<Cond>,
    pub(crate) action: RuleAction,
    pub(crate) sample: Option<Sampler>,
    pub(crate) rate: Option<RateLimiter>,
    pub(crate) continue_: bool,
    /// Applied to the copy of each event this rule routes (see `transform.rs`).
    pub(crate) transforms: Vec<Step>,
    /// The top-level keys `transforms` may read or change.
    pub(crate) touched: transform::Touched,
}

/// Distinct field names used by conditions, each with its event slot.
#[derive(Default)]
struct FieldIds {
    names: Vec<String>,
    index: HashMap<String, usize>,
}

struct Ctx<'s> {
    errors: Errors,
    regexes: RegexBudget,
    /// Conditions compiled so far, against [`MAX_CONDITIONS`].
    conditions: usize,
    sinks: HashMap<&'s str, usize>,
    sink_list: String,
    sources: HashMap<&'s str, usize>,
    source_list: String,
    fields: FieldIds,
}

static NEXT_PROGRAM: AtomicU64 = AtomicU64::new(1);

pub(crate) fn compile(spec: &ServiceLogSpec) -> Result<Router, ValidationErrors> {
    let mut errors = Errors::default();

    if let Some(selector) = &spec.selector {
        check_selector(&mut errors, selector);
    }
    if spec.sources.is_empty() {
        errors.push("spec.sources", "at least one source is required");
    }
    let mut regexes = RegexBudget::default();
    let mut sources = Names::new("spec.sources", "source");
    let mut source_regexes = Vec::with_capacity(spec.sources.len());
    for (i, source) in spec.sources.iter().enumerate() {
        sources.check(&mut errors, i, &source.name);
        source_regexes.push(check_source(
            &mut errors,
            &mut regexes,
            &spec.sources[..i],
            source,
            i,
        ));
    }

    if spec.sinks.len() > MAX_SINKS {
        errors.push(
            "spec.sinks",
            format!(
                "at most {MAX_SINKS} sinks are supported, got {}",
                spec.sinks.len()
            ),
        );
    }
    let mut sinks = Names::new("spec.sinks", "sink");
    let mut disk_bytes = 0u64;
    for (i, sink) in spec.sinks.iter().enumerate() {
        sinks.check(&mut errors, i, &sink.name);
        let path = format!("spec.sinks[{i}]");
        check_sink(&mut errors, sink, &path);
        if let Some(buffer) = sink.buffer.as_ref().filter(|b| b.kind == BufferType::Disk) {
            let before = disk_bytes;
            disk_bytes =
                disk_bytes.saturating_add(buffer.max_bytes.unwrap_or(DEFAULT_DISK_BUFFER_BYTES));
            if before <= MAX_DISK_BUFFER_BYTES && disk_bytes > MAX_DISK_BUFFER_BYTES {
                errors.push(
                    format!("{path}.buffer"),
                    format!(
                        "the disk buffers of this spec together would hold more than {MAX_DISK_BUFFER_BYTES} bytes (1 GiB, the size of the sidecar's state volume); counting {DEFAULT_DISK_BUFFER_BYTES} for a disk buffer without maxBytes"
                    ),
                );
            }
        }
    }

    if spec.rules.len() > usize::from(u16::MAX) {
        errors.push(
            "spec.rules",
            format!("at most {} rules are supported", u16::MAX),
        );
    }

    let mut cx = Ctx {
        errors,
        regexes,
        conditions: 0,
        sink_list: sinks.declared(),
        sinks: sinks.index,
        source_list: sources.declared(),
        sources: sources.index,
        fields: FieldIds::default(),
    };

    let mut rule_names = Names::new("spec.rules", "rule");
    let mut rules = Vec::with_capacity(spec.rules.len());
    for (i, rule) in spec.rules.iter().enumerate() {
        let path = format!("spec.rules[{i}]");
        rule_names.check(&mut cx.errors, i, &rule.name);
        let when = match &rule.when {
            Some(w) => cx.when(w, &format!("{path}.when"), 0),
            None => Vec::new(),
        };
        let action = match (&rule.to, rule.action) {
            (Some(to), None) => {
                if to.is_empty() {
                    cx.errors
                        .push(format!("{path}.to"), "must name at least one sink");
                }
                RuleAction::To(cx.sink_set(to, &format!("{path}.to")))
            }
            (None, Some(Action::Drop)) => RuleAction::Drop,
            (Some(_), Some(_)) => {
                cx.errors
                    .push(&path, "a rule sets either to or action: drop, not both");
                RuleAction::Drop
            }
            (None, None) => {
                cx.errors
                    .push(&path, "a rule sets either to or action: drop");
                RuleAction::Drop
            }
        };
        let drops = rule.action.is_some();
        let sample = rule.sample.and_then(|p| {
            if drops {
                cx.errors.push(
                    format!("{path}.sample"),
                    "sample applies to routing rules, not to action: drop",
                );
            }
            if !(p.is_finite() && (0.0..=1.0).contains(&p)) {
                cx.errors.push(
                    format!("{path}.sample"),
                    format!("must be a number between 0 and 1, got {p}"),
                );
                return None;
            }
            Some(Sampler::new(p, splitmix64(i as u64)))
        });
        let rate = rule.rate_limit.as_ref().and_then(|r| {
            if drops {
                cx.errors.push(
                    format!("{path}.rateLimit"),
                    "rateLimit applies to routing rules, not to action: drop",
                );
            }
            if !(r.per_second.is_finite() && r.per_second > 0.0) {
                cx.errors.push(
                    format!("{path}.rateLimit.perSecond"),
                    format!("must be a positive number, got {}", r.per_second),
                );
                return None;
            }
            Some(RateLimiter::new(r.per_second))
        });
        if drops && !rule.transform.is_empty() {
            cx.errors.push(
                format!("{path}.transform"),
                "transform applies to routing rules, not to action: drop",
            );
        }
        let transforms = transform::compile(
            &mut cx.errors,
            &mut cx.regexes,
            &rule.transform,
            &format!("{path}.transform"),
        );
        rules.push(CompiledRule {
            when,
            action,
            sample,
            rate,
            continue_: rule.continue_,
            touched: transform::Touched::of(&transforms),
            transforms,
        });
    }

    let default_to = cx.sink_set(&spec.default_to, "spec.defaultTo");

    let Ctx { errors, fields, .. } = cx;
    errors.into_result()?;

    let message_fields = fields
        .names
        .iter()
        .enumerate()
        .filter(|(_, n)| *n == "message")
        .fold(0u32, |m, (i, _)| m | (1 << i));

    let mut sources: Vec<SourcePlan> = spec
        .sources
        .iter()
        .zip(source_regexes)
        .map(|(s, re)| plan(s, &fields.names, re))
        .collect();
    for rule in &mut rules {
        rule.touched
            .add_messages(sources.iter().flat_map(|s| &s.message));
    }
    // The JSON scan marks the members transforms look at as it routes (`Target::touched`).
    for source in sources.iter_mut().filter(|s| s.format == Format::Json) {
        for key in rules.iter().flat_map(|r| r.touched.keys()) {
            source.keys.insert(
                &[key],
                Target {
                    touched: true,
                    ..Target::default()
                },
            );
        }
    }

    Ok(Router {
        id: NEXT_PROGRAM.fetch_add(1, Ordering::Relaxed),
        sources,
        source_names: spec.sources.iter().map(|s| s.name.clone()).collect(),
        sink_names: spec.sinks.iter().map(|s| s.name.clone()).collect(),
        rule_names: spec.rules.iter().map(|r| r.name.clone()).collect(),
        transforms: rules.iter().any(|r| !r.transforms.is_empty()),
        rules,
        default_to,
        message_fields,
    })
}

/// The names of one list (sources, sinks or rules): each checked, duplicates reported on
/// the later occurrence, and the index of each name's first occurrence kept.
struct Names<'s> {
    list: &'static str,
    kind: &'static str,
    index: HashMap<&'s str, usize>,
    order: Vec<&'s str>,
}

impl<'s> Names<'s> {
    fn new(list: &'static str, kind: &'static str) -> Self {
        Names {
            list,
            kind,
            index: HashMap::new(),
            order: Vec::new(),
        }
    }

    fn check(&mut self, errors: &mut Errors, i: usize, name: &'s str) {
        let path = format!("{}[{i}].name", self.list);
        if !check_name(errors, &path, name) {
            return;
        }
        match self.index.get(name) {
            Some(first) => errors.push(
                path,
                format!(
                    "duplicate {} name {name:?} (first at {}[{first}])",
                    self.kind, self.list
                ),
            ),
            None => {
                self.index.insert(name, i);
                self.order.push(name);
            }
        }
    }

    /// For "unknown sink" messages: the valid names a reference could have used.
    fn declared(&self) -> String {
        if self.order.is_empty() {
            format!("no {}s are declared", self.kind)
        } else {
            format!("declared: {}", self.order.join(", "))
        }
    }
}

/// The selector is this crate's own type, not `metav1.LabelSelector`, so the API server
/// does not check it; do what it would.
fn check_selector(errors: &mut Errors, selector: &LabelSelector) {
    for (k, req) in selector.match_expressions.iter().enumerate() {
        let path = format!("spec.selector.matchExpressions[{k}]");
        if req.key.is_empty() {
            errors.push(format!("{path}.key"), "must not be empty");
        }
        match req.operator.as_str() {
            "In" | "NotIn" if req.values.is_empty() => errors.push(
                format!("{path}.values"),
                format!("must not be empty for operator {}", req.operator),
            ),
            "Exists" | "DoesNotExist" if !req.values.is_empty() => errors.push(
                format!("{path}.values"),
                format!("must be empty for operator {}", req.operator),
            ),
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => errors.push(
                format!("{path}.operator"),
                format!("{other:?} is not one of In, NotIn, Exists, DoesNotExist"),
            ),
        }
    }
}

/// `earlier` are the sources declared before this one, `i` its index. Returns the
/// compiled pattern of a `format: regex` source.
fn check_source(
    errors: &mut Errors,
    regexes: &mut RegexBudget,
    earlier: &[Source],
    source: &Source,
    i: usize,
) -> Option<Regex> {
    let path = format!("spec.sources[{i}]");
    let kinds = [
        source.file.is_some().then_some("file"),
        source.syslog.is_some().then_some("syslog"),
        source.container_logs.is_some().then_some("containerLogs"),
    ];
    let kinds: Vec<&str> = kinds.into_iter().flatten().collect();
    match kinds.as_slice() {
        [_] => {}
        [] => errors.push(
            &path,
            "a source sets exactly one of file, syslog or containerLogs",
        ),
        several => errors.push(
            &path,
            format!(
                "a source sets exactly one of file, syslog or containerLogs, not {}",
                several.join(" and ")
            ),
        ),
    }
    if let Some(n) = source.max_line_bytes
        && !(1024..=crate::v1alpha1::MAX_LINE_BYTES as u64).contains(&n)
    {
        errors.push(
            format!("{path}.maxLineBytes"),
            "must be between 1024 (1Ki) and 16777216 (16Mi)",
        );
    }
    if let Some(file) = &source.file {
        if file.paths.is_empty() {
            errors.push(format!("{path}.file.paths"), "must list at least one path");
        }
        for (j, p) in file.paths.iter().enumerate() {
            if let Err(e) = check_source_path(p) {
                errors.push(format!("{path}.file.paths[{j}]"), e);
            }
        }
        if let Some(m) = &file.multiline {
            let mpath = format!("{path}.file.multiline");
            regexes.compile(errors, &format!("{mpath}.startPattern"), &m.start_pattern);
            if m.max_lines == Some(0) {
                errors.push(format!("{mpath}.maxLines"), "must be at least 1");
            }
            if let Some(t) = &m.timeout
                && let Err(e) = parse_duration(t)
            {
                errors.push(format!("{mpath}.timeout"), e);
            }
        }
    }
    let pattern = source
        .file
        .as_ref()
        .and_then(|f| check_regex_format(errors, regexes, f, &path));
    if let Some(syslog) = &source.syslog {
        if let Some(address) = &syslog.address
            && let Err(e) = check_syslog_address(address)
        {
            errors.push(format!("{path}.syslog.address"), e);
        }
        // Two listeners cannot bind the same port and protocol.
        let first = earlier.iter().position(|s| {
            s.syslog
                .as_ref()
                .is_some_and(|o| o.port == syslog.port && o.protocol == syslog.protocol)
        });
        if syslog.port == 0 {
            errors.push(format!("{path}.syslog.port"), "must be between 1 and 65535");
        } else if let Some(first) = first {
            let protocol = match syslog.protocol {
                SyslogProtocol::Udp => "udp",
                SyslogProtocol::Tcp => "tcp",
            };
            errors.push(
                format!("{path}.syslog.port"),
                format!(
                    "port {}/{protocol} is already used by spec.sources[{first}]",
                    syslog.port
                ),
            );
        }
    }
    if let Some(logs) = &source.container_logs {
        check_container_logs(errors, logs, &path);
    }
    for (field, value) in [
        ("levelField", &source.level_field),
        ("messageField", &source.message_field),
    ] {
        if let Some(name) = value
            && let Err(e) = check_field_name(name)
        {
            errors.push(format!("{path}.{field}"), e);
        }
    }
    pattern
}

/// A `containerLogs` source: container names as Kubernetes allows them (DNS labels),
/// each once; each stream once; no `format: regex` (it has no `regex` to go with it).
fn check_container_logs(errors: &mut Errors, logs: &ContainerLogsSource, path: &str) {
    for (j, name) in logs.containers.iter().enumerate() {
        let valid = !name.is_empty()
            && name.len() <= 63
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !name.starts_with('-')
            && !name.ends_with('-');
        if !valid {
            errors.push(
                format!("{path}.containerLogs.containers[{j}]"),
                format!(
                    "{name:?} is not a container name (lowercase letters, digits and '-', at most 63)"
                ),
            );
        } else if let Some(first) = logs.containers[..j].iter().position(|c| c == name) {
            errors.push(
                format!("{path}.containerLogs.containers[{j}]"),
                format!("{name:?} is listed already at containers[{first}]"),
            );
        }
    }
    for (j, stream) in logs.streams.iter().enumerate() {
        if let Some(first) = logs.streams[..j].iter().position(|s| s == stream) {
            errors.push(
                format!("{path}.containerLogs.streams[{j}]"),
                format!("listed already at streams[{first}]"),
            );
        }
    }
    if logs.format == Format::Regex {
        errors.push(
            format!("{path}.containerLogs.format"),
            "format: regex is offered for file sources only; use json, logfmt or text",
        );
    }
}

/// `format: regex` and its `regex`: one needs the other, and the pattern must name what
/// it captures.
fn check_regex_format(
    errors: &mut Errors,
    regexes: &mut RegexBudget,
    file: &crate::v1alpha1::FileSource,
    path: &str,
) -> Option<Regex> {
    match (&file.regex, file.format) {
        (None, Format::Regex) => {
            errors.push(
                format!("{path}.file.regex"),
                "format: regex needs a regex with named captures, e.g. (?P<status>\\d{3})",
            );
            None
        }
        (Some(_), format) if format != Format::Regex => {
            errors.push(
                format!("{path}.file.regex"),
                "applies to format: regex only",
            );
            None
        }
        (Some(pattern), _) => {
            let rpath = format!("{path}.file.regex");
            let re = regexes.compile(errors, &rpath, pattern)?;
            if re
                .group_info()
                .pattern_names(regex_automata::PatternID::ZERO)
                .all(|n| n.is_none())
            {
                errors.push(
                    rpath,
                    "has no named capture: name the parts that become fields, e.g. (?P<status>\\d{3})",
                );
                return None;
            }
            Some(re)
        }
        (None, _) => None,
    }
}

fn check_sink(errors: &mut Errors, sink: &Sink, path: &str) {
    let kinds = [
        sink.stdout.is_some(),
        sink.file.is_some(),
        sink.http.is_some(),
        sink.otlp.is_some(),
        sink.kafka.is_some(),
    ];
    match kinds.iter().filter(|k| **k).count() {
        1 => {}
        0 => errors.push(
            path,
            "a sink sets exactly one of stdout, file, http, otlp or kafka",
        ),
        _ => errors.push(
            path,
            "a sink sets exactly one of stdout, file, http, otlp or kafka, not several",
        ),
    }
    if let Some(file) = &sink.file
        && let Err(e) = check_sink_path(&file.path)
    {
        errors.push(format!("{path}.file.path"), e);
    }
    if let Some(http) = &sink.http {
        check_http(errors, http, &format!("{path}.http"));
    }
    if let Some(otlp) = &sink.otlp {
        check_otlp(errors, otlp, &format!("{path}.otlp"));
    }
    if let Some(kafka) = &sink.kafka {
        check_kafka(errors, kafka, &format!("{path}.kafka"));
    }
    if let Some(buffer) = &sink.buffer
        && buffer.kind == BufferType::Memory
        && buffer.sync != BufferSync::None
    {
        errors.push(
            format!("{path}.buffer.sync"),
            "applies to disk buffers only (a memory buffer has nothing to flush to a device)",
        );
    }
    if let Some(buffer) = &sink.buffer
        && let Some(max) = buffer.max_bytes
    {
        let ceiling = match buffer.kind {
            BufferType::Memory => (
                MAX_MEMORY_BUFFER_BYTES,
                "64 MiB, the sidecar's memory limit",
            ),
            BufferType::Disk => (MAX_DISK_BUFFER_BYTES, "1 GiB, the sidecar's state volume"),
        };
        if max < 64 * 1024 {
            errors.push(
                format!("{path}.buffer.maxBytes"),
                "must be at least 65536 (64 KiB)",
            );
        } else if max > ceiling.0 {
            errors.push(
                format!("{path}.buffer.maxBytes"),
                format!(
                    "must be at most {} ({}) for this buffer type",
                    ceiling.0, ceiling.1
                ),
            );
        }
    }
    if let Some(secret) = &sink.credentials_secret_ref {
        if sink.http.is_none() && sink.otlp.is_none() && sink.kafka.is_none() {
            errors.push(
                format!("{path}.credentialsSecretRef"),
                "applies to http, otlp and kafka sinks only",
            );
        }
        check_subdomain(
            errors,
            &format!("{path}.credentialsSecretRef.name"),
            &secret.name,
        );
    }
}

fn check_http(errors: &mut Errors, http: &HttpSink, path: &str) {
    if let Err(e) = check_url(&http.url) {
        errors.push(format!("{path}.url"), e);
    }
    if !http.labels.is_empty() && http.encoding != HttpEncoding::Loki {
        errors.push(format!("{path}.labels"), "applies to encoding: loki only");
    }
    for (i, label) in http.labels.iter().enumerate() {
        if let Err(e) = check_field_name(label) {
            errors.push(format!("{path}.labels[{i}]"), e);
        }
    }
    if let Some(index) = &http.index {
        if http.encoding != HttpEncoding::Elasticsearch {
            errors.push(
                format!("{path}.index"),
                "applies to encoding: elasticsearch only",
            );
        }
        // Elasticsearch's own rules for index names.
        let bad = index.is_empty()
            || index.len() > 255
            || index.starts_with(['-', '_', '+'])
            || index == "."
            || index == ".."
            || index
                .chars()
                .any(|c| c.is_ascii_uppercase() || "\\/*?\"<>| ,#:".contains(c));
        if bad {
            errors.push(
                format!("{path}.index"),
                format!("{index:?} is not a valid Elasticsearch index name (lowercase, no spaces or \\/*?\"<>|,#:, not starting with -, _ or +)"),
            );
        }
    }
    check_transport(
        errors,
        path,
        http.batch.as_ref(),
        http.request_timeout.as_deref(),
        &http.headers,
        http.tls.as_ref(),
    );
}

fn check_otlp(errors: &mut Errors, otlp: &OtlpSink, path: &str) {
    if let Err(e) = check_url(&otlp.endpoint) {
        errors.push(format!("{path}.endpoint"), e);
    }
    if let Some(resource) = &otlp.resource {
        for name in resource.attributes.keys() {
            if name.is_empty() {
                errors.push(
                    format!("{path}.resource.attributes"),
                    "an attribute name must not be empty",
                );
            }
        }
    }
    check_transport(
        errors,
        path,
        otlp.batch.as_ref(),
        otlp.request_timeout.as_deref(),
        &otlp.headers,
        otlp.tls.as_ref(),
    );
}

/// What `http` and `otlp` sinks share: batching, timeout, headers, TLS.
fn check_transport(
    errors: &mut Errors,
    path: &str,
    batch: Option<&HttpBatch>,
    request_timeout: Option<&str>,
    headers: &BTreeMap<String, String>,
    tls: Option<&HttpTls>,
) {
    if let Some(batch) = batch {
        if batch
            .max_bytes
            .is_some_and(|b| !(1024..=64 << 20).contains(&b))
        {
            errors.push(
                format!("{path}.batch.maxBytes"),
                "must be between 1024 and 67108864 (64 MiB)",
            );
        }
        if let Some(t) = &batch.timeout
            && let Err(e) = parse_duration(t)
        {
            errors.push(format!("{path}.batch.timeout"), e);
        }
    }
    if let Some(t) = request_timeout
        && let Err(e) = parse_duration(t)
    {
        errors.push(format!("{path}.requestTimeout"), e);
    }
    for (name, value) in headers {
        if let Err(e) = check_header_name(name) {
            errors.push(format!("{path}.headers[{name}]"), e);
        } else if is_credential_header(name) {
            errors.push(
                format!("{path}.headers[{name}]"),
                format!(
                    "{name:?} carries a credential, and headers are published in plain text: put it in the Secret named by credentialsSecretRef (key header.{name}, or username/password, token)"
                ),
            );
        }
        if value.chars().any(|c| c.is_control() && c != '\t') {
            errors.push(
                format!("{path}.headers[{name}]"),
                "contains control characters",
            );
        }
    }
    if let Some(ca) = tls.and_then(|t| t.ca_file.as_ref())
        && !ca.starts_with('/')
    {
        errors.push(
            format!("{path}.tls.caFile"),
            format!("{ca:?} must be an absolute path"),
        );
    }
}

/// A Kubernetes object name (RFC 1123 subdomain).
fn check_subdomain(errors: &mut Errors, path: &str, name: &str) {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if !ok {
        errors.push(
            path,
            format!("{name:?} is not a valid Secret name (lowercase letters, digits, '-' and '.')"),
        );
    }
}

/// A field name: dot-separated non-empty segments, at most [`MAX_PATH`] of them.
pub(crate) fn check_field_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.split('.').any(str::is_empty) {
        return Err(format!(
            "{name:?} has an empty segment (dots separate nested field names)"
        ));
    }
    if name.split('.').count() > MAX_PATH {
        return Err(format!("{name:?} has more than {MAX_PATH} dotted segments"));
    }
    Ok(())
}

/// A Kafka sink: brokers as `host:port`, a topic name Kafka accepts, the key a field
/// name, a batch the broker takes (its `message.max.bytes` is 1 MiB by default).
fn check_kafka(errors: &mut Errors, kafka: &crate::v1alpha1::KafkaSink, path: &str) {
    if kafka.brokers.is_empty() {
        errors.push(
            format!("{path}.brokers"),
            "names at least one broker (host:port)",
        );
    }
    for (i, broker) in kafka.brokers.iter().enumerate() {
        if let Err(e) = check_host_port(broker) {
            errors.push(format!("{path}.brokers[{i}]"), e);
        }
    }
    if let Err(e) = check_topic(&kafka.topic) {
        errors.push(format!("{path}.topic"), e);
    }
    if let Some(key) = &kafka.key
        && let Err(e) = check_field_name(key)
    {
        errors.push(format!("{path}.key"), e);
    }
    if let Some(batch) = &kafka.batch {
        if batch
            .max_bytes
            .is_some_and(|b| !(1024..=MAX_KAFKA_BATCH_BYTES).contains(&b))
        {
            errors.push(
                format!("{path}.batch.maxBytes"),
                "must be between 1024 and 1048576 (1 MiB, the broker's default message.max.bytes)",
            );
        }
        if let Some(t) = &batch.timeout
            && let Err(e) = parse_duration(t)
        {
            errors.push(format!("{path}.batch.timeout"), e);
        }
    }
    if let Some(ca) = kafka.tls.as_ref().and_then(|t| t.ca_file.as_ref())
        && !ca.starts_with('/')
    {
        errors.push(
            format!("{path}.tls.caFile"),
            format!("{ca:?} must be an absolute path"),
        );
    }
}

/// The largest `kafka.batch.maxBytes`.
pub const MAX_KAFKA_BATCH_BYTES: u64 = 1 << 20;

/// `host:port` (`[v6]:port` for IPv6 addresses), as Kafka clients take bootstrap brokers.
fn check_host_port(broker: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("{broker:?} is not host:port ({why})"));
    if broker.contains("://") {
        return bad("no scheme: Kafka brokers are given as host:port");
    }
    let Some((host, port)) = broker.rsplit_once(':') else {
        return bad("no port");
    };
    if !port.parse::<u16>().is_ok_and(|p| p != 0) {
        return bad("the port is a number from 1 to 65535");
    }
    let host = match host.strip_prefix('[') {
        Some(v6) => match v6.strip_suffix(']') {
            Some(v6) if v6.parse::<std::net::Ipv6Addr>().is_ok() => return Ok(()),
            _ => return bad("an IPv6 address goes in brackets, [::1]:9092"),
        },
        None => host,
    };
    let ok = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
    if ok {
        Ok(())
    } else {
        bad("a DNS name or an IP address before the colon")
    }
}

/// Kafka's own rule for topic names.
fn check_topic(topic: &str) -> Result<(), String> {
    if topic.is_empty() {
        return Err("must not be empty".into());
    }
    if topic == "." || topic == ".." {
        return Err(format!("{topic:?} is not a valid Kafka topic name"));
    }
    if topic.len() > 249 {
        return Err(format!(
            "is {} characters long; Kafka allows 249",
            topic.len()
        ));
    }
    if let Some(c) = topic
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "{topic:?} contains {c:?}: Kafka topic names use letters, digits, '.', '_' and '-'"
        ));
    }
    Ok(())
}

/// The regex builder every compiled pattern of a spec goes through, the sidecar's
/// multi-line start patterns included, so the limits the budget assumes are the ones in
/// force.
pub fn regex_builder(pattern: &str) -> RegexBuilder {
    let mut builder = RegexBuilder::new(pattern);
    builder
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_CACHE_LIMIT);
    builder
}

/// The regexes of one spec against [`MAX_REGEXES`] and [`MAX_REGEX_BYTES`]. Once either is
/// spent the later patterns are not compiled at all, so a spec far over the budget costs
/// no more time or memory than one just over it.
#[derive(Default)]
pub(crate) struct RegexBudget {
    count: usize,
    bytes: usize,
    spent: bool,
}

impl RegexBudget {
    /// Compiles `pattern`, or reports at `path` why it does not compile or does not fit.
    pub(crate) fn compile(
        &mut self,
        errors: &mut Errors,
        path: &str,
        pattern: &str,
    ) -> Option<Regex> {
        if self.spent {
            return None;
        }
        if self.count >= MAX_REGEXES {
            self.spent = true;
            errors.push(
                path,
                format!(
                    "a spec may hold at most {MAX_REGEXES} regexes and this is one more (later regexes are not checked)"
                ),
            );
            return None;
        }
        let re = match compile_regex(pattern) {
            Ok(re) => re,
            Err(e) => {
                errors.push(path, e);
                return None;
            }
        };
        self.count += 1;
        let cost = re.memory_usage() + REGEX_CACHE_CHARGE;
        self.bytes += cost;
        if self.bytes > MAX_REGEX_BYTES {
            self.spent = true;
            errors.push(
                path,
                format!(
                    "the spec's regexes would hold more than {MAX_REGEX_BYTES} bytes together (32 MiB; this one {cost}, with {REGEX_CACHE_CHARGE} of match caches); use fewer or simpler regexes (later regexes are not checked)"
                ),
            );
            return None;
        }
        Some(re)
    }
}

/// `pattern` compiled exactly as [`regex_builder`] would (the settings of
/// `regex::bytes::RegexBuilder::build`), keeping the engine itself, which reports its size.
fn compile_regex(pattern: &str) -> Result<Regex, String> {
    use regex_automata::{MatchKind, meta, util::syntax};
    meta::Builder::new()
        .configure(
            meta::Config::new()
                .match_kind(MatchKind::LeftmostFirst)
                .nfa_size_limit(Some(REGEX_SIZE_LIMIT))
                .hybrid_cache_capacity(REGEX_CACHE_LIMIT)
                .utf8_empty(false),
        )
        .syntax(syntax::Config::new().utf8(false))
        .build(pattern)
        .map_err(|e| {
            if let Some(limit) = e.size_limit() {
                format!("regex is too large: it compiles to more than {limit} bytes")
            } else if e.syntax_error().is_some() {
                format!(
                    "regex parse error: {}",
                    syntax_error(pattern, &e.to_string())
                )
            } else {
                format!("regex error: {e}")
            }
        })
}

/// The regex crate renders syntax errors over several lines with a caret under the
/// pattern; an error list wants one line, so re-parse for the kind and position.
fn syntax_error(pattern: &str, fallback: &str) -> String {
    let parsed = regex_syntax::ParserBuilder::new()
        .utf8(false)
        .build()
        .parse(pattern);
    match parsed {
        Err(regex_syntax::Error::Parse(e)) => {
            format!("{} at offset {}", e.kind(), e.span().start.offset)
        }
        Err(regex_syntax::Error::Translate(e)) => {
            format!("{} at offset {}", e.kind(), e.span().start.offset)
        }
        _ => fallback
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(" "),
    }
}

impl<'s> Ctx<'s> {
    fn sink_set(&mut self, names: &[String], path: &str) -> SinkSet {
        let mut set = SinkSet::EMPTY;
        for (j, name) in names.iter().enumerate() {
            match self.sinks.get(name.as_str()) {
                Some(&idx) => set.insert(idx),
                None => self.errors.push(
                    format!("{path}[{j}]"),
                    format!("unknown sink {name:?} ({})", self.sink_list),
                ),
            }
        }
        set
    }

    fn when(&mut self, when: &When, path: &str, depth: usize) -> Vec<Cond> {
        let mut conds = Vec::new();
        let count = usize::from(when.level.is_some())
            + usize::from(when.source.is_some())
            + usize::from(when.message.is_some())
            + when.fields.len()
            + when.any.len();
        if self.conditions > MAX_CONDITIONS {
            return conds;
        }
        self.conditions += count;
        if self.conditions > MAX_CONDITIONS {
            self.errors.push(
                path,
                format!(
                    "the spec's conditions number more than {MAX_CONDITIONS} (every level, source, message, field condition and any alternative counts, nested ones too); later conditions are not checked"
                ),
            );
            return conds;
        }
        if let Some(level) = &when.level {
            let lpath = format!("{path}.level");
            if level.at_least.is_none() && level.below.is_none() && level.r#in.is_empty() {
                self.errors
                    .push(lpath, "set at least one of atLeast, below or in");
            } else {
                let mut mask = 0u8;
                for l in Level::ALL {
                    let ok = level.at_least.is_none_or(|a| l >= a)
                        && level.below.is_none_or(|b| l < b)
                        && (level.r#in.is_empty() || level.r#in.contains(&l));
                    if ok {
                        mask |= 1 << l as u8;
                    }
                }
                if mask == 0 {
                    self.errors.push(
                        lpath,
                        "matches no level (the conditions contradict each other)",
                    );
                } else {
                    conds.push(Cond::Level(mask));
                }
            }
        }
        if let Some(source) = &when.source {
            match self.sources.get(source.as_str()) {
                Some(&idx) => conds.push(Cond::Source(idx)),
                None => self.errors.push(
                    format!("{path}.source"),
                    format!("unknown source {source:?} ({})", self.source_list),
                ),
            }
        }
        if let Some(message) = &when.message
            && let Some(re) = self.regexes.compile(
                &mut self.errors,
                &format!("{path}.message.regex"),
                &message.regex,
            )
        {
            conds.push(Cond::Message(re));
        }
        for (k, field) in when.fields.iter().enumerate() {
            if let Some(c) = self.field(field, &format!("{path}.fields[{k}]")) {
                conds.push(c);
            }
        }
        if !when.any.is_empty() {
            if when.any.len() > MAX_ANY_WIDTH {
                self.errors.push(
                    format!("{path}.any"),
                    format!(
                        "any lists {} alternatives; at most {MAX_ANY_WIDTH} are allowed",
                        when.any.len()
                    ),
                );
            } else if depth >= MAX_ANY_DEPTH {
                self.errors.push(
                    format!("{path}.any"),
                    format!("any is nested more than {MAX_ANY_DEPTH} levels deep"),
                );
            } else {
                let alts = when
                    .any
                    .iter()
                    .enumerate()
                    .map(|(k, w)| self.when(w, &format!("{path}.any[{k}]"), depth + 1))
                    .collect();
                conds.push(Cond::Any(alts));
            }
        }
        conds.sort_by_key(Cond::cost);
        conds
    }

    fn field(&mut self, fc: &FieldCondition, path: &str) -> Option<Cond> {
        let id = match check_field_name(&fc.name) {
            Err(e) => {
                self.errors.push(format!("{path}.name"), e);
                None
            }
            Ok(()) => self.field_id(&fc.name, path),
        };

        let present: Vec<&str> = [
            ("equals", fc.equals.is_some()),
            ("in", fc.r#in.is_some()),
            ("regex", fc.regex.is_some()),
            ("exists", fc.exists.is_some()),
            ("greaterThan", fc.greater_than.is_some()),
            ("lessThan", fc.less_than.is_some()),
        ]
        .into_iter()
        .filter_map(|(n, set)| set.then_some(n))
        .collect();
        if present.len() != 1 {
            let found = if present.is_empty() {
                "none".to_string()
            } else {
                present.join(", ")
            };
            self.errors.push(
                path,
                format!(
                    "a field condition sets exactly one of equals, in, regex, exists, greaterThan, lessThan (found {found})"
                ),
            );
            return None;
        }

        let test = if let Some(v) = &fc.equals {
            match Scalar::from_json(v) {
                Some(s) => FieldTest::Equals(s),
                None => {
                    self.errors.push(
                        format!("{path}.equals"),
                        format!("must be a string, number or boolean, got {v}"),
                    );
                    return None;
                }
            }
        } else if let Some(list) = &fc.r#in {
            if list.is_empty() {
                self.errors
                    .push(format!("{path}.in"), "must list at least one value");
                return None;
            }
            let mut scalars = Vec::with_capacity(list.len());
            for (j, v) in list.iter().enumerate() {
                match Scalar::from_json(v) {
                    Some(s) => scalars.push(s),
                    None => self.errors.push(
                        format!("{path}.in[{j}]"),
                        format!("must be a string, number or boolean, got {v}"),
                    ),
                }
            }
            if scalars.len() != list.len() {
                return None;
            }
            FieldTest::In(scalars)
        } else if let Some(pattern) = &fc.regex {
            FieldTest::Regex(self.regexes.compile(
                &mut self.errors,
                &format!("{path}.regex"),
                pattern,
            )?)
        } else if let Some(e) = fc.exists {
            FieldTest::Exists(e)
        } else if let Some(x) = fc.greater_than {
            self.finite(x, &format!("{path}.greaterThan"))?;
            FieldTest::GreaterThan(x)
        } else if let Some(x) = fc.less_than {
            self.finite(x, &format!("{path}.lessThan"))?;
            FieldTest::LessThan(x)
        } else {
            return None;
        };
        Some(Cond::Field(id?, test))
    }

    fn finite(&mut self, x: f64, path: &str) -> Option<()> {
        if x.is_finite() {
            Some(())
        } else {
            self.errors
                .push(path, format!("must be a finite number, got {x}"));
            None
        }
    }

    fn field_id(&mut self, name: &str, path: &str) -> Option<usize> {
        if let Some(&id) = self.fields.index.get(name) {
            return Some(id);
        }
        if self.fields.names.len() >= MAX_FIELDS {
            self.errors.push(
                format!("{path}.name"),
                format!(
                    "conditions may use at most {MAX_FIELDS} distinct field names; {name:?} would be one more"
                ),
            );
            return None;
        }
        let id = self.fields.names.len();
        self.fields.names.push(name.to_string());
        self.fields.index.insert(name.to_string(), id);
        Some(id)
    }
}

/// The keys a source's lines are searched for: the fields of all conditions (any rule may
/// see any source's events), and the source's level and message candidates.
fn plan(source: &Source, fields: &[String], regex: Option<Regex>) -> SourcePlan {
    // A syslog source hands the router each message as a JSON object (see the sidecar's
    // syslog source), so its events have fields like any JSON line.
    let format = match (&source.file, &source.syslog, &source.container_logs) {
        (Some(f), _, _) => f.format,
        (None, Some(_), _) => Format::Json,
        (None, None, Some(c)) => c.format,
        (None, None, None) => Format::Text,
    };
    let mut keys = KeyTable::default();
    let message = match &source.message_field {
        Some(f) => vec![FieldPath::new(f)],
        None => DEFAULT_MESSAGE_FIELDS.map(FieldPath::new).into(),
    };
    if format == Format::Text {
        return SourcePlan {
            format,
            keys,
            regex: None,
            message,
        };
    }
    let mut add = |name: &str, target: Target| {
        let segments: Vec<&str> = name.split('.').collect();
        // A dotted name also matches a literal dotted key at the top level, as flattened
        // loggers write them (`"log.level": "info"` in ECS); in logfmt it only does that.
        keys.insert(&[name], target);
        if format == Format::Json && segments.len() > 1 {
            keys.insert(&segments, target);
        }
    };
    for (i, name) in fields.iter().enumerate() {
        add(
            name,
            Target {
                field: Some(i as u8),
                ..Target::default()
            },
        );
    }
    let level_fields = match &source.level_field {
        Some(f) => vec![f.as_str()],
        None => DEFAULT_LEVEL_FIELDS.to_vec(),
    };
    for (k, name) in level_fields.into_iter().enumerate() {
        add(
            name,
            Target {
                level: Some(k as u8),
                ..Target::default()
            },
        );
    }
    let message_fields = match &source.message_field {
        Some(f) => vec![f.as_str()],
        None => DEFAULT_MESSAGE_FIELDS.to_vec(),
    };
    for (k, name) in message_fields.into_iter().enumerate() {
        add(
            name,
            Target {
                message: Some(k as u8),
                ..Target::default()
            },
        );
    }
    let regex = regex.and_then(|re| RegexPlan::new(re, &keys));
    SourcePlan {
        format,
        keys,
        regex,
        message,
    }
}
