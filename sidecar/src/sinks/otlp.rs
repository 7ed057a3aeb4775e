//! `otlp` sinks: events as OpenTelemetry LogRecords, POSTed as OTLP/HTTP protobuf
//! (`application/x-protobuf`) to `<endpoint>/v1/logs`.
//!
//! Like every http sink the sink asks the pipeline for `encoding: json`, so each line is
//! one event as a JSON object ending in `"_servicelog":{"source","pod","namespace"}`; here
//! each becomes a LogRecord (see [`log_record`] for the mapping), grouped into one
//! ResourceLogs per pod (`k8s.namespace.name`, `k8s.pod.name`, then the sink's
//! `resource.attributes`) under the scope `servicelog`.
//!
//! Batching, TLS, credentials and the client are the http sink's (see [`super::http`]):
//! entries are held until they add up to `batch.maxBytes` of events (uncompressed JSON) or
//! the first is `batch.timeout` old, then sent as requests each cut once its events reach
//! `maxBytes`, gzipped if asked; a batch's entries are done, in order, once every request
//! of it is settled. Retries follow the OTLP/HTTP spec: connection errors, timeouts, 429, 502,
//! 503 and 504 are retried with exponential backoff and jitter (100 ms doubling to 30 s;
//! `Retry-After` in seconds honoured), each counted in `servicelog_sink_retries_total`,
//! until the request goes through or the buffer says to stop (the entries are then
//! delivered again, after a restart or by the sink's next build). Any other status is a
//! refusal for good — the collector will never take that request — so, as the http sink
//! does, its events are counted in `servicelog_sink_dropped_total{reason="rejected"}` and
//! logged with the status and the collector's `google.rpc.Status` message, not retried
//! forever behind everything else; 401/403 first re-read the mounted credentials and try
//! again if they changed. A 2xx with a `partial_success` counts its rejected records the
//! same way and logs the collector's message.
//!
//! Why the sink is not delivering also goes in the instance record's `sinkErrors` (see
//! [`SinkErrors`]): while it retries (the collector down or answering 503), and after a
//! refusal for good, until a request goes through again.

use std::{
    collections::BTreeMap,
    fmt,
    io::Read,
    path::Path,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use opentelemetry_proto::tonic::{
    collector::logs::v1::{ExportLogsServiceRequest, ExportLogsServiceResponse},
    common::v1::{AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList, any_value},
    logs::v1::{LogRecord, ResourceLogs, ScopeLogs},
    resource::v1::Resource,
};
use prometheus_client::metrics::{counter::Counter, histogram::Histogram};
use prost::Message;
use serde_json::{Map, Value};
use servicelog_api::{
    rules::parse_level,
    v1alpha1::{Compression, Level, OtlpSink, Sink},
    validate::parse_duration,
};
use ureq::{
    Agent,
    http::{HeaderName, HeaderValue, Uri},
};

use super::{
    SinkErrors,
    buffer::{BufferRx, Entry, RecvTimeout},
    http::{
        self, DEFAULT_BATCH_TIMEOUT, DEFAULT_MAX_BYTES, HttpError, MAX_RESPONSE,
        credentials::Credentials,
    },
};
use crate::metrics::Metrics;

/// The OTLP exporters' default timeout.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const CONTENT_TYPE: &str = "application/x-protobuf";
/// The instrumentation scope of every record.
pub const SCOPE: &str = "servicelog";
/// The record attribute naming the source an event was read from.
pub const SOURCE_ATTRIBUTE: &str = "servicelog.source";
/// Fields an event's level is read from, in order (the sources' defaults).
const LEVEL_FIELDS: [&str; 3] = ["level", "severity", "lvl"];
/// Fields its message is read from, in order.
const MESSAGE_FIELDS: [&str; 2] = ["msg", "message"];
/// Fields its time is read from, in order, when they hold an RFC 3339 time.
const TIME_FIELDS: [&str; 3] = ["time", "timestamp", "ts"];

/// Problems with an otlp sink's definition or its mounted files.
#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    #[error("endpoint {endpoint:?}: {reason}")]
    Endpoint { endpoint: String, reason: String },
    #[error(transparent)]
    Transport(#[from] HttpError),
}

/// `<endpoint>/v1/logs`, or the endpoint itself when it already ends with `/v1/logs` (the
/// OTLP exporter spec's base URL and per-signal URL).
pub fn logs_url(endpoint: &str) -> String {
    let base = endpoint.trim_end_matches('/');
    if base.ends_with("/v1/logs") {
        base.to_owned()
    } else {
        format!("{base}/v1/logs")
    }
}

/// The OTLP severity number of a level (the first of each range).
pub fn severity_number(level: Level) -> i32 {
    match level {
        Level::Trace => 1,
        Level::Debug => 5,
        Level::Info => 9,
        Level::Warn => 13,
        Level::Error => 17,
        Level::Fatal => 21,
    }
}

/// Whose event it is, from its `_servicelog` member.
#[derive(Debug, Default, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Origin {
    pub namespace: String,
    pub pod: String,
}

/// One `encoding: json` line as a LogRecord:
/// - `severity_text` is the level field's text as written (`level`, else `severity`, else
///   `lvl`, when a string), `severity_number` its level (trace 1, debug 5, info 9, warn 13,
///   error 17, fatal 21; 0 when the text is no known level);
/// - `body` is the message (`msg`, else `message`; the whole line for a text event);
/// - `time_unix_nano` is from `time`, else `timestamp`, else `ts`, the first that holds an
///   RFC 3339 time (`2026-12-07T14:00:00.123Z`, any offset, up to nanoseconds); none: 0;
/// - `observed_time_unix_nano` is `observed_ns` (when the sink encoded it);
/// - every other field is an attribute, its JSON type kept (strings, int64 or double,
///   bools, arrays, nested objects as key-value lists, null as an empty value), plus
///   `servicelog.source`.
///
/// The fields taken as level, message and time are not repeated as attributes. A line
/// that is not a JSON object (never from the pipeline) becomes a record with the line as
/// its body.
pub fn log_record(line: &[u8], observed_ns: u64) -> (Origin, LogRecord) {
    let mut record = LogRecord {
        observed_time_unix_nano: observed_ns,
        ..LogRecord::default()
    };
    let mut fields = match serde_json::from_slice::<Map<String, Value>>(line) {
        Ok(fields) => fields,
        Err(_) => {
            record.body = Some(string_value(String::from_utf8_lossy(line).into_owned()));
            return (Origin::default(), record);
        }
    };
    let mut origin = Origin::default();
    let mut source = None;
    if let Some(Value::Object(meta)) = fields.remove("_servicelog") {
        let text = |k: &str| match meta.get(k) {
            Some(Value::String(s)) => s.clone(),
            _ => String::new(),
        };
        origin = Origin {
            namespace: text("namespace"),
            pod: text("pod"),
        };
        source = Some(text("source"));
    }
    if let Some(key) = LEVEL_FIELDS
        .iter()
        .find(|k| matches!(fields.get(**k), Some(Value::String(_))))
        && let Some(Value::String(text)) = fields.remove(*key)
    {
        record.severity_number = parse_level(text.as_bytes()).map_or(0, severity_number);
        record.severity_text = text;
    }
    if let Some(key) = MESSAGE_FIELDS.iter().find(|k| fields.contains_key(**k))
        && let Some(message) = fields.remove(*key)
    {
        record.body = Some(any_value(message));
    }
    if let Some((key, ns)) = TIME_FIELDS.iter().find_map(|k| match fields.get(*k) {
        Some(Value::String(s)) => rfc3339_ns(s).map(|ns| (*k, ns)),
        _ => None,
    }) {
        fields.remove(key);
        record.time_unix_nano = ns;
    }
    record.attributes = fields
        .into_iter()
        .map(|(key, value)| KeyValue {
            key,
            value: Some(any_value(value)),
            ..KeyValue::default()
        })
        .collect();
    if let Some(source) = source {
        record.attributes.retain(|kv| kv.key != SOURCE_ATTRIBUTE);
        record.attributes.push(KeyValue {
            key: SOURCE_ATTRIBUTE.to_owned(),
            value: Some(string_value(source)),
            ..KeyValue::default()
        });
    }
    (origin, record)
}

/// Nanoseconds since the epoch of an RFC 3339 time; `None` if it is not one or is before
/// 1970.
pub fn rfc3339_ns(text: &str) -> Option<u64> {
    let t =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    u64::try_from(t.unix_timestamp_nanos()).ok()
}

fn string_value(s: String) -> AnyValue {
    AnyValue {
        value: Some(any_value::Value::StringValue(s)),
    }
}

/// A JSON value as an OTLP value: integers that fit int64 stay integers, other numbers
/// are doubles; null is the empty value.
pub fn any_value(value: Value) -> AnyValue {
    use any_value::Value as V;
    let value = match value {
        Value::Null => None,
        Value::Bool(b) => Some(V::BoolValue(b)),
        Value::Number(n) => Some(match n.as_i64() {
            Some(i) => V::IntValue(i),
            None => V::DoubleValue(n.as_f64().unwrap_or(f64::NAN)),
        }),
        Value::String(s) => Some(V::StringValue(s)),
        Value::Array(items) => Some(V::ArrayValue(ArrayValue {
            values: items.into_iter().map(any_value).collect(),
        })),
        Value::Object(fields) => Some(V::KvlistValue(KeyValueList {
            values: fields
                .into_iter()
                .map(|(key, v)| KeyValue {
                    key,
                    value: Some(any_value(v)),
                    ..KeyValue::default()
                })
                .collect(),
        })),
    };
    AnyValue { value }
}

/// The request for `records`: one ResourceLogs per pod, its attributes the pod's and then
/// `extra` (which win on a clash).
pub fn export_request(
    records: BTreeMap<Origin, Vec<LogRecord>>,
    extra: &[KeyValue],
) -> ExportLogsServiceRequest {
    let scope = InstrumentationScope {
        name: SCOPE.to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        ..InstrumentationScope::default()
    };
    let resource_logs = records
        .into_iter()
        .map(|(origin, log_records)| {
            let mut attributes = Vec::with_capacity(2 + extra.len());
            for (key, value) in [
                ("k8s.namespace.name", origin.namespace),
                ("k8s.pod.name", origin.pod),
            ] {
                if !value.is_empty() && !extra.iter().any(|kv| kv.key == key) {
                    attributes.push(KeyValue {
                        key: key.to_owned(),
                        value: Some(string_value(value)),
                        ..KeyValue::default()
                    });
                }
            }
            attributes.extend_from_slice(extra);
            ResourceLogs {
                resource: Some(Resource {
                    attributes,
                    ..Resource::default()
                }),
                scope_logs: vec![ScopeLogs {
                    scope: Some(scope.clone()),
                    log_records,
                    ..ScopeLogs::default()
                }],
                ..ResourceLogs::default()
            }
        })
        .collect();
    ExportLogsServiceRequest { resource_logs }
}

/// `google.rpc.Status`, the body of an OTLP/HTTP error response (its `details` skipped).
#[derive(Clone, PartialEq, Message)]
struct Status {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

/// How a response status is handled, per the OTLP/HTTP spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Success,
    /// 429, 502, 503, 504: the spec's retryable codes.
    Retry,
    /// 401, 403: retried only if the mounted credentials changed.
    Auth,
    Reject,
}

pub fn classify(status: u16) -> Class {
    match status {
        200..=299 => Class::Success,
        429 | 502..=504 => Class::Retry,
        401 | 403 => Class::Auth,
        _ => Class::Reject,
    }
}

/// What one attempt at a request came to.
#[derive(Debug, PartialEq, Eq)]
enum Attempt {
    /// Taken; `rejected` of its records refused by a partial success.
    Delivered { rejected: u64, why: String },
    /// Refused for good: count and move on.
    Rejected(String),
    Retry {
        after: Option<Duration>,
        why: String,
    },
    /// 401/403 after which the mounted credentials changed: try again at once.
    CredentialsChanged,
}

/// Numbers the builds, so a replaced build cannot clear its successor's error.
static BUILDS: AtomicU64 = AtomicU64::new(0);

/// A built otlp sink, ready to run on its thread.
pub struct OtlpTask {
    name: String,
    url: String,
    agent: Agent,
    gzip: bool,
    max_bytes: usize,
    batch_timeout: Duration,
    headers: Vec<(HeaderName, HeaderValue)>,
    credentials: Option<Credentials>,
    resource: Vec<KeyValue>,
    metrics: Metrics,
    delivered: Counter,
    request_duration: Histogram,
    errors: SinkErrors,
    build: u64,
    /// Whether this build has an error in `errors`.
    erred: bool,
    /// The request being sent (protobuf), its gzipped form, and its record count.
    body: Vec<u8>,
    gz: Vec<u8>,
    records: u64,
    rng: u64,
}

impl fmt::Debug for OtlpTask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtlpTask")
            .field("name", &self.name)
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl OtlpTask {
    /// Checks the definition and reads the mounted files (CA, credentials); nothing is
    /// sent yet.
    pub fn build(
        def: &Sink,
        otlp: &OtlpSink,
        credentials_dir: &Path,
        metrics: &Metrics,
        errors: SinkErrors,
    ) -> Result<Self, OtlpError> {
        let name = def.name.clone();
        let url = logs_url(&otlp.endpoint);
        let endpoint_error = |reason: String| OtlpError::Endpoint {
            endpoint: otlp.endpoint.clone(),
            reason,
        };
        let uri: Uri = url.parse().map_err(|e| endpoint_error(format!("{e}")))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(endpoint_error("not an http:// or https:// URL".to_owned())),
        };
        let duration = |field: &'static str, value: &Option<String>, default: Duration| {
            value.as_deref().map_or(Ok(default), |t| {
                parse_duration(t).map_err(|message| HttpError::Duration { field, message })
            })
        };
        let batch = otlp.batch.clone().unwrap_or_default();
        let batch_timeout = duration("batch.timeout", &batch.timeout, DEFAULT_BATCH_TIMEOUT)?;
        let request_timeout = duration(
            "requestTimeout",
            &otlp.request_timeout,
            DEFAULT_REQUEST_TIMEOUT,
        )?;
        let headers = http::parse_headers(&otlp.headers)?;
        let credentials = match &def.credentials_secret_ref {
            Some(_) => {
                Some(Credentials::load(&credentials_dir.join(&name)).map_err(HttpError::from)?)
            }
            None => None,
        };
        let agent = http::agent(request_timeout, https, otlp.tls.as_ref())?;
        let resource = otlp
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .map(|(key, value)| KeyValue {
                key: key.clone(),
                value: Some(string_value(value.clone())),
                ..KeyValue::default()
            })
            .collect();
        Ok(Self {
            gzip: otlp.compression == Compression::Gzip,
            max_bytes: usize::try_from(batch.max_bytes.unwrap_or(DEFAULT_MAX_BYTES))
                .unwrap_or(usize::MAX),
            batch_timeout,
            headers,
            credentials,
            resource,
            delivered: metrics.sink_counter(&name),
            request_duration: metrics.request_duration(&name),
            metrics: metrics.clone(),
            errors,
            build: BUILDS.fetch_add(1, Ordering::Relaxed),
            erred: false,
            url,
            agent,
            body: Vec::new(),
            gz: Vec::new(),
            records: 0,
            rng: http::seed(),
            name,
        })
    }

    /// The sink thread: batches entries and delivers them until the buffer closes or says
    /// to stop.
    pub fn run(mut self, rx: BufferRx) {
        tracing::debug!(sink = %self.name, url = %self.url, "otlp sink started");
        let mut pending: Vec<Entry> = Vec::new();
        let mut pending_bytes = 0usize;
        let mut first: Option<Instant> = None;
        loop {
            let due = first.is_some_and(|t| t.elapsed() >= self.batch_timeout);
            if !pending.is_empty() && (pending_bytes >= self.max_bytes || due) {
                if !self.deliver(&pending, &rx) {
                    return self.give_up(&pending);
                }
                for entry in pending.drain(..) {
                    rx.done(entry);
                }
                pending_bytes = 0;
                first = None;
                continue;
            }
            let wait = first.map_or(Duration::from_secs(3600), |t| {
                self.batch_timeout.saturating_sub(t.elapsed())
            });
            match rx.recv_timeout(wait) {
                Ok(entry) => {
                    pending_bytes += entry.data.len();
                    first.get_or_insert_with(Instant::now);
                    pending.push(entry);
                }
                Err(RecvTimeout::Timeout) => {}
                Err(RecvTimeout::Closed) => break,
            }
        }
        if !pending.is_empty() {
            if !self.deliver(&pending, &rx) {
                return self.give_up(&pending);
            }
            for entry in pending.drain(..) {
                rx.done(entry);
            }
        }
        self.errors.clear(&self.name, self.build);
        tracing::debug!(sink = %self.name, "otlp sink drained and closed");
    }

    /// Puts why the sink is not delivering in the instance record, or clears it (`None`).
    fn report(&mut self, error: Option<String>) {
        match error {
            Some(message) => {
                self.errors.set(&self.name, self.build, &message);
                self.erred = true;
            }
            None if self.erred => {
                self.errors.clear(&self.name, self.build);
                self.erred = false;
            }
            None => {}
        }
    }

    fn give_up(&self, pending: &[Entry]) {
        self.errors.clear(&self.name, self.build);
        let events: u64 = pending.iter().map(|e| e.events).sum();
        tracing::warn!(
            sink = %self.name,
            events,
            "stopping with a batch not delivered; it is delivered again at the next start \
             (or by the sink's next build)"
        );
    }

    /// Sends the events of `entries` as requests of at most `max_bytes` of them; false if
    /// told to stop first.
    fn deliver(&mut self, entries: &[Entry], rx: &BufferRx) -> bool {
        let observed = now_ns();
        let mut records: BTreeMap<Origin, Vec<LogRecord>> = BTreeMap::new();
        let mut count = 0u64;
        let mut raw = 0usize;
        let lines = entries
            .iter()
            .flat_map(|e| e.data.split(|&b| b == b'\n'))
            .filter(|l| !l.is_empty());
        for line in lines {
            let (origin, record) = log_record(line, observed);
            records.entry(origin).or_default().push(record);
            count += 1;
            raw += line.len() + 1;
            if raw >= self.max_bytes {
                if !self.send(std::mem::take(&mut records), count, rx) {
                    return false;
                }
                (count, raw) = (0, 0);
            }
        }
        count == 0 || self.send(records, count, rx)
    }

    /// Sends `records` until they are settled; false if told to stop first.
    fn send(
        &mut self,
        records: BTreeMap<Origin, Vec<LogRecord>>,
        count: u64,
        rx: &BufferRx,
    ) -> bool {
        self.body.clear();
        // Encoding into a Vec cannot fail.
        let _ = export_request(records, &self.resource).encode(&mut self.body);
        self.records = count;
        if self.gzip {
            http::gzip(&self.body, &mut self.gz);
        }
        let mut retries = 0u32;
        let mut failing_since: Option<Instant> = None;
        loop {
            let started = Instant::now();
            let attempt = self.attempt();
            self.request_duration
                .observe(started.elapsed().as_secs_f64());
            let (after, why) = match attempt {
                Attempt::Delivered { rejected, why } => {
                    let rejected = rejected.min(self.records);
                    self.delivered.inc_by(self.records - rejected);
                    if rejected > 0 {
                        tracing::warn!(sink = %self.name, rejected, reason = %why, "collector refused records of the batch for good (partial success); counted as rejected");
                        self.metrics.sink_dropped(&self.name, "rejected", rejected);
                        self.report(Some(format!(
                            "otlp sink {}: {} refused {rejected} of {} records for good (partial success: {why}); they were dropped",
                            self.name, self.url, self.records
                        )));
                    } else {
                        self.report(None);
                    }
                    if let Some(since) = failing_since {
                        tracing::info!(sink = %self.name, retries, down_for = ?since.elapsed(), "collector took the batch again");
                    }
                    return true;
                }
                Attempt::Rejected(why) => {
                    tracing::warn!(sink = %self.name, events = self.records, reason = %why, "collector refused the batch for good; counted as rejected, not retried");
                    self.metrics
                        .sink_dropped(&self.name, "rejected", self.records);
                    self.report(Some(format!(
                        "otlp sink {}: {} refused a batch of {} events for good ({why}); it was dropped",
                        self.name, self.url, self.records
                    )));
                    return true;
                }
                Attempt::CredentialsChanged => {
                    self.metrics.sink_retry(&self.name);
                    continue;
                }
                Attempt::Retry { after, why } => (after, why),
            };
            if rx.stopped() {
                return false;
            }
            // Never a tight loop, even on `Retry-After: 0`.
            let wait = after.map_or_else(
                || http::backoff(retries, self.random()),
                |a| a.max(FIRST_BACKOFF / 2),
            );
            if failing_since.is_none() {
                tracing::warn!(sink = %self.name, error = %why, retry_in = ?wait, "sending failed; retrying with backoff");
                self.report(Some(format!(
                    "otlp sink {}: sending to {}: {why}; retrying",
                    self.name, self.url
                )));
                failing_since = Some(Instant::now());
            } else {
                tracing::debug!(sink = %self.name, error = %why, retry_in = ?wait, retries, "sending failed again");
            }
            self.metrics.sink_retry(&self.name);
            retries = retries.saturating_add(1);
            if !http::sleep_unless_stopped(wait, rx) {
                return false;
            }
        }
    }

    /// One POST of the current body.
    fn attempt(&mut self) -> Attempt {
        if let Some(c) = &mut self.credentials {
            c.refresh_if_due(&self.name);
        }
        let mut req = self
            .agent
            .post(&self.url)
            .header(ureq::http::header::CONTENT_TYPE, CONTENT_TYPE);
        if self.gzip {
            req = req.header(ureq::http::header::CONTENT_ENCODING, "gzip");
        }
        for (k, v) in &self.headers {
            req = req.header(k, v);
        }
        if let Some(c) = &self.credentials {
            for (k, v) in c.headers() {
                req = req.header(k, v);
            }
        }
        let payload: &[u8] = if self.gzip { &self.gz } else { &self.body };
        let mut resp = match req.send(payload) {
            Ok(resp) => resp,
            Err(e) => {
                return Attempt::Retry {
                    after: None,
                    why: e.to_string(),
                };
            }
        };
        let status = resp.status().as_u16();
        let after = resp
            .headers()
            .get(ureq::http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(http::retry_after);
        let protobuf = resp
            .headers()
            .get(ureq::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| t.starts_with(CONTENT_TYPE));
        let mut text = Vec::new();
        if let Err(e) = resp
            .body_mut()
            .as_reader()
            .take(MAX_RESPONSE)
            .read_to_end(&mut text)
        {
            tracing::debug!(sink = %self.name, status, error = %e, "reading the response");
        }
        let refusal = || format!("status {status}: {}", error_message(&text, protobuf));
        match classify(status) {
            Class::Success => {
                let partial = protobuf
                    .then(|| ExportLogsServiceResponse::decode(text.as_slice()).ok())
                    .flatten()
                    .and_then(|r| r.partial_success);
                match partial {
                    Some(p) => Attempt::Delivered {
                        rejected: u64::try_from(p.rejected_log_records).unwrap_or(0),
                        why: p.error_message,
                    },
                    None => Attempt::Delivered {
                        rejected: 0,
                        why: String::new(),
                    },
                }
            }
            Class::Retry => Attempt::Retry {
                after,
                why: refusal(),
            },
            Class::Auth => {
                if self
                    .credentials
                    .as_mut()
                    .is_some_and(|c| c.reload(&self.name))
                {
                    Attempt::CredentialsChanged
                } else {
                    Attempt::Rejected(refusal())
                }
            }
            Class::Reject => Attempt::Rejected(refusal()),
        }
    }

    fn random(&mut self) -> u64 {
        // xorshift64*: jitter only, no need for a better generator.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// What an error response says: its `google.rpc.Status` message when it is protobuf, else
/// the start of its text.
fn error_message(body: &[u8], protobuf: bool) -> String {
    if protobuf
        && let Ok(status) = Status::decode(body)
        && !status.message.is_empty()
    {
        return http::snippet(status.message.as_bytes());
    }
    http::snippet(body)
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn attr<'a>(record: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
        record
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref())
            .and_then(|v| v.value.as_ref())
    }

    fn string(s: &str) -> any_value::Value {
        any_value::Value::StringValue(s.to_owned())
    }

    #[test]
    fn given_an_endpoint_then_logs_go_to_its_v1_logs_path() {
        assert_eq!(logs_url("http://c:4318"), "http://c:4318/v1/logs");
        assert_eq!(logs_url("http://c:4318/"), "http://c:4318/v1/logs");
        assert_eq!(logs_url("https://c/otlp"), "https://c/otlp/v1/logs");
        assert_eq!(logs_url("http://c:4318/v1/logs"), "http://c:4318/v1/logs");
    }

    #[test]
    fn given_the_otlp_spec_then_only_429_502_503_504_are_retried() {
        for s in [200, 202, 206] {
            assert_eq!(classify(s), Class::Success, "{s}");
        }
        for s in [429, 502, 503, 504] {
            assert_eq!(classify(s), Class::Retry, "{s}");
        }
        for s in [401, 403] {
            assert_eq!(classify(s), Class::Auth, "{s}");
        }
        for s in [301, 400, 404, 408, 413, 500, 501] {
            assert_eq!(classify(s), Class::Reject, "{s}");
        }
    }

    #[test]
    fn given_a_json_event_then_its_record_has_severity_body_time_and_typed_attributes() {
        let line = br#"{"level":"WARNING","msg":"slow","time":"2026-12-07T14:00:00.123456789+01:00","latency_ms":1200,"ratio":0.5,"ok":false,"user":{"id":7,"tags":["a",1]},"none":null,"_servicelog":{"source":"app","pod":"p-1","namespace":"shop"}}"#;
        let (origin, r) = log_record(line, 42);
        assert_eq!(
            origin,
            Origin {
                namespace: "shop".into(),
                pod: "p-1".into()
            }
        );
        assert_eq!(
            (r.severity_number, r.severity_text.as_str()),
            (13, "WARNING")
        );
        assert_eq!(r.body.and_then(|b| b.value), Some(string("slow")));
        assert_eq!(r.time_unix_nano, 1_796_648_400_123_456_789);
        assert_eq!(r.observed_time_unix_nano, 42);
        let a = &r.attributes;
        assert_eq!(
            attr(a, "latency_ms"),
            Some(&any_value::Value::IntValue(1200))
        );
        assert_eq!(attr(a, "ratio"), Some(&any_value::Value::DoubleValue(0.5)));
        assert_eq!(attr(a, "ok"), Some(&any_value::Value::BoolValue(false)));
        assert_eq!(attr(a, SOURCE_ATTRIBUTE), Some(&string("app")));
        let Some(any_value::Value::KvlistValue(user)) = attr(a, "user") else {
            panic!("user is a kvlist: {a:?}");
        };
        assert_eq!(
            attr(&user.values, "id"),
            Some(&any_value::Value::IntValue(7))
        );
        assert_eq!(
            attr(&user.values, "tags"),
            Some(&any_value::Value::ArrayValue(ArrayValue {
                values: vec![
                    AnyValue {
                        value: Some(string("a"))
                    },
                    AnyValue {
                        value: Some(any_value::Value::IntValue(1))
                    }
                ]
            }))
        );
        let none = a.iter().find(|kv| kv.key == "none").expect("null kept");
        assert_eq!(none.value, Some(AnyValue { value: None }));
        for taken in ["level", "msg", "time", "_servicelog"] {
            assert!(
                attr(a, taken).is_none(),
                "{taken} is not repeated as an attribute"
            );
        }
    }

    #[test]
    fn given_each_level_then_its_severity_number_is_the_first_of_its_range() {
        for (text, n) in [
            ("trace", 1),
            ("debug", 5),
            ("info", 9),
            ("notice", 9),
            ("warn", 13),
            ("error", 17),
            ("err", 17),
            ("fatal", 21),
            ("crit", 21),
            ("chatty", 0),
        ] {
            let line = json!({"severity": text, "message": "m"}).to_string();
            let (_, r) = log_record(line.as_bytes(), 0);
            assert_eq!((r.severity_number, r.severity_text.as_str()), (n, text));
        }
    }

    #[test]
    fn given_a_text_event_or_an_unparsed_time_then_the_line_is_the_body_and_the_time_an_attribute()
    {
        let line = br#"{"message":"plain text line","ts":"yesterday","_servicelog":{"source":"legacy","pod":"p","namespace":"n"}}"#;
        let (_, r) = log_record(line, 0);
        assert_eq!(
            r.body.and_then(|b| b.value),
            Some(string("plain text line"))
        );
        assert_eq!((r.severity_number, r.time_unix_nano), (0, 0));
        assert_eq!(attr(&r.attributes, "ts"), Some(&string("yesterday")));
        let big = br#"{"n":18446744073709551615}"#;
        let (_, r) = log_record(big, 0);
        assert_eq!(
            attr(&r.attributes, "n"),
            Some(&any_value::Value::DoubleValue(18_446_744_073_709_551_615.0))
        );
    }

    #[test]
    fn given_records_of_two_pods_then_each_pod_is_a_resource_with_the_sinks_attributes_winning() {
        let mut records = BTreeMap::new();
        for pod in ["a", "b"] {
            records.insert(
                Origin {
                    namespace: "shop".into(),
                    pod: pod.into(),
                },
                vec![LogRecord::default()],
            );
        }
        let extra = vec![
            KeyValue {
                key: "service.name".into(),
                value: Some(string_value("checkout".into())),
                ..KeyValue::default()
            },
            KeyValue {
                key: "k8s.namespace.name".into(),
                value: Some(string_value("override".into())),
                ..KeyValue::default()
            },
        ];
        let req = export_request(records, &extra);
        assert_eq!(req.resource_logs.len(), 2);
        let res = req.resource_logs[1].resource.as_ref().expect("a resource");
        assert_eq!(attr(&res.attributes, "k8s.pod.name"), Some(&string("b")));
        assert_eq!(
            attr(&res.attributes, "service.name"),
            Some(&string("checkout"))
        );
        assert_eq!(
            res.attributes
                .iter()
                .filter(|kv| kv.key == "k8s.namespace.name")
                .count(),
            1
        );
        assert_eq!(
            attr(&res.attributes, "k8s.namespace.name"),
            Some(&string("override"))
        );
        let scope = req.resource_logs[0].scope_logs[0]
            .scope
            .as_ref()
            .expect("scope");
        assert_eq!(scope.name, SCOPE);
        let bytes = req.encode_to_vec();
        assert_eq!(
            ExportLogsServiceRequest::decode(bytes.as_slice()).unwrap(),
            req
        );
    }

    #[test]
    fn given_an_error_response_then_its_status_message_is_read() {
        let body = Status {
            code: 3,
            message: "bad field".into(),
        }
        .encode_to_vec();
        assert_eq!(error_message(&body, true), "bad field");
        assert_eq!(error_message(b"plain\nerror", false), "plain error");
    }
}
