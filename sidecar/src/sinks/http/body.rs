//! Request bodies of the three encodings, built from the sink's entries: an http sink asks
//! the pipeline for `encoding: json` (see `pipeline::encode`), so each line is one event
//! as a JSON object whose last member is `"_servicelog":{"source","pod","namespace"}`.
//!
//! - `json_lines`: the lines as they are (`application/x-ndjson`).
//! - `loki`: a push request (`application/json`),
//!   `{"streams":[{"stream":{labels},"values":[["<unix ns>","<line>"],…]}]}`, one stream per
//!   distinct label set: `namespace`, `pod` and `source` from `_servicelog`, plus the
//!   configured fields (dots and other characters Loki refuses become `_`; an event
//!   without the field has no such label). The line is the event's JSON without
//!   `_servicelog` (that is in the labels), its bytes otherwise as they came. The
//!   timestamp is when the sink encoded the event, strictly increasing across the sink so
//!   no stream ever goes out of order; a retried request is resent byte for byte, so Loki
//!   takes the repeat as a duplicate.
//! - `elasticsearch`: a `_bulk` request (`application/x-ndjson`), a
//!   `{"create":{"_index":"<index>"}}` action line before each event (`create` works for
//!   data streams and plain indices); an event without a top-level `@timestamp` gets one,
//!   the time the sink encoded it.

use std::{
    collections::{BTreeMap, HashMap},
    ops::Range,
    time::{SystemTime, UNIX_EPOCH},
};

use serde::Deserialize;
use servicelog_api::v1alpha1::HttpEncoding;

use crate::json::json_string;

const META_KEY: &[u8] = b"\"_servicelog\":";

pub fn content_type(encoding: HttpEncoding) -> &'static str {
    match encoding {
        HttpEncoding::JsonLines | HttpEncoding::Elasticsearch => "application/x-ndjson",
        HttpEncoding::Loki => "application/json",
    }
}

/// How a sink turns lines into a body; state kept across requests (the Loki clock).
#[derive(Debug)]
pub struct Encoder {
    encoding: HttpEncoding,
    /// Loki: (label name, field path) for each configured field.
    labels: Vec<(String, String)>,
    /// Elasticsearch: the action line, newline included.
    action: Vec<u8>,
    /// Loki: the last timestamp given, in ns since the epoch.
    last_ns: u64,
}

/// One request's body being built.
#[derive(Debug, Default)]
pub struct Body {
    pub data: Vec<u8>,
    /// Events in `data`.
    pub events: u64,
    /// Elasticsearch: each event's action and document in `data`, in order.
    pub docs: Vec<Range<usize>>,
    /// Loki: lines by stream (rendered label set → rendered values).
    streams: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Uncompressed bytes taken in, what `batch.maxBytes` bounds.
    pub raw_bytes: usize,
}

impl Body {
    pub fn clear(&mut self) {
        self.data.clear();
        self.events = 0;
        self.docs.clear();
        self.streams.clear();
        self.raw_bytes = 0;
    }
}

impl Encoder {
    pub fn new(encoding: HttpEncoding, labels: &[String], index: Option<&str>) -> Self {
        let mut action = b"{\"create\":{\"_index\":".to_vec();
        json_string(&mut action, index.unwrap_or("servicelog").as_bytes());
        action.extend_from_slice(b"}}\n");
        Self {
            encoding,
            labels: labels
                .iter()
                .map(|f| {
                    // The pod's labels are named as in Kubernetes, not `_servicelog_labels_…`.
                    let short = f
                        .strip_prefix("_servicelog.labels.")
                        .or_else(|| f.strip_prefix("_servicelog."))
                        .unwrap_or(f);
                    (label_name(short), f.clone())
                })
                .collect(),
            action,
            last_ns: 0,
        }
    }

    /// Adds `lines` (whole, newline-terminated lines; `events` of them if known) to `body`.
    pub fn push(&mut self, body: &mut Body, lines: &[u8], events: Option<u64>) {
        body.raw_bytes += lines.len();
        match self.encoding {
            HttpEncoding::JsonLines => {
                body.data.extend_from_slice(lines);
                body.events +=
                    events.unwrap_or_else(|| memchr::memchr_iter(b'\n', lines).count() as u64);
            }
            HttpEncoding::Elasticsearch => {
                let stamp = rfc3339_now();
                for line in split_lines(lines) {
                    let start = body.data.len();
                    body.data.extend_from_slice(&self.action);
                    push_with_timestamp(&mut body.data, line, &stamp);
                    body.data.push(b'\n');
                    body.docs.push(start..body.data.len());
                    body.events += 1;
                }
            }
            HttpEncoding::Loki => {
                let mut key = Vec::with_capacity(128);
                for line in split_lines(lines) {
                    let (event, meta) = strip_meta(line);
                    key.clear();
                    self.stream_key(&mut key, &event, meta);
                    let ns = self.next_ns();
                    if !body.streams.contains_key(&key) {
                        body.streams.insert(key.clone(), Vec::new());
                    }
                    let Some(values) = body.streams.get_mut(&key) else {
                        continue;
                    };
                    if !values.is_empty() {
                        values.push(b',');
                    }
                    values.extend_from_slice(b"[\"");
                    values.extend_from_slice(ns.to_string().as_bytes());
                    values.extend_from_slice(b"\",");
                    json_string(values, &event);
                    values.push(b']');
                    body.events += 1;
                }
            }
        }
    }

    /// Makes `body.data` the request to send (Loki assembles its streams here).
    pub fn finish(&self, body: &mut Body) {
        if self.encoding != HttpEncoding::Loki {
            return;
        }
        body.data.clear();
        body.data.extend_from_slice(b"{\"streams\":[");
        for (i, (labels, values)) in body.streams.iter().enumerate() {
            if i > 0 {
                body.data.push(b',');
            }
            body.data.extend_from_slice(b"{\"stream\":{");
            body.data.extend_from_slice(labels);
            body.data.extend_from_slice(b"},\"values\":[");
            body.data.extend_from_slice(values);
            body.data.extend_from_slice(b"]}");
        }
        body.data.extend_from_slice(b"]}");
    }

    /// Renders the stream's labels, sorted by name: `"name":"value",…`.
    fn stream_key(&self, out: &mut Vec<u8>, event: &[u8], meta: Option<Meta>) {
        let mut labels: Vec<(&str, String)> = Vec::with_capacity(3 + self.labels.len());
        // `_servicelog.labels.<key>` and `_servicelog.container`: the pod's metadata.
        let mut pod_labels = Vec::new();
        for (name, path) in &self.labels {
            let Some(m) = meta.as_ref() else { break };
            let value = match path.strip_prefix("_servicelog.") {
                Some("container") => m.container.clone(),
                Some(rest) => rest
                    .strip_prefix("labels.")
                    .and_then(|key| m.labels.get(key).cloned()),
                None => None,
            };
            if let Some(v) = value {
                pod_labels.push((name.as_str(), v));
            }
        }
        if let Some(m) = meta {
            labels.push(("namespace", m.namespace));
            labels.push(("pod", m.pod));
            labels.push(("source", m.source));
        }
        for (name, v) in pod_labels {
            labels.retain(|(n, _)| *n != name);
            labels.push((name, v));
        }
        if !self.labels.is_empty()
            && let Ok(value) = serde_json::from_slice::<serde_json::Value>(event)
        {
            for (name, path) in &self.labels {
                if path.starts_with("_servicelog.") {
                    continue;
                }
                if let Some(v) = field(&value, path).and_then(label_value) {
                    labels.retain(|(n, _)| n != name);
                    labels.push((name, v));
                }
            }
        }
        labels.sort_by(|a, b| a.0.cmp(b.0));
        for (i, (name, value)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            json_string(out, name.as_bytes());
            out.push(b':');
            json_string(out, value.as_bytes());
        }
    }

    fn next_ns(&mut self) -> u64 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        self.last_ns = now.max(self.last_ns + 1);
        self.last_ns
    }
}

/// The lines of `data` without their newlines.
fn split_lines(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    data.split(|&b| b == b'\n').filter(|l| !l.is_empty())
}

#[derive(Debug, Deserialize)]
struct Meta {
    #[serde(default)]
    source: String,
    #[serde(default)]
    pod: String,
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    container: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

/// The event without its trailing `_servicelog` member, and that member.
fn strip_meta(line: &[u8]) -> (std::borrow::Cow<'_, [u8]>, Option<Meta>) {
    let Some(at) = memchr::memmem::rfind(line, META_KEY) else {
        return (line.into(), None);
    };
    let inner = line[at + META_KEY.len()..].trim_ascii_end();
    let Some(obj) = inner.strip_suffix(b"}") else {
        return (line.into(), None);
    };
    let Ok(meta) = serde_json::from_slice::<Meta>(obj) else {
        return (line.into(), None);
    };
    let before = line[..at].trim_ascii_end();
    let before = before.strip_suffix(b",").unwrap_or(before);
    let mut event = Vec::with_capacity(before.len() + 1);
    event.extend_from_slice(before);
    event.push(b'}');
    (event.into(), Some(meta))
}

/// A Loki label name for a field path: `[a-zA-Z_][a-zA-Z0-9_]*`.
fn label_name(field: &str) -> String {
    let mut name: String = field
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if name.starts_with(|c: char| c.is_ascii_digit()) || name.is_empty() {
        name.insert(0, '_');
    }
    name
}

/// The value at a dotted path: a top-level key with the dots in it first, else nested.
fn field<'a>(value: &'a serde_json::Value, path: &str) -> Option<&'a serde_json::Value> {
    if let Some(v) = value.get(path) {
        return Some(v);
    }
    path.split('.').try_fold(value, |v, key| v.get(key))
}

fn label_value(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn rfc3339_now() -> Vec<u8> {
    humantime::format_rfc3339_millis(SystemTime::now())
        .to_string()
        .into_bytes()
}

/// Appends the document `line`, with `"@timestamp":"<stamp>"` first if it has none at the
/// top level.
fn push_with_timestamp(out: &mut Vec<u8>, line: &[u8], stamp: &[u8]) {
    let has = memchr::memmem::find(line, b"\"@timestamp\"").is_some()
        && serde_json::from_slice::<HashMap<String, serde::de::IgnoredAny>>(line)
            .is_ok_and(|m| m.contains_key("@timestamp"));
    let (Some(b'{'), false) = (line.first(), has) else {
        out.extend_from_slice(line);
        return;
    };
    out.extend_from_slice(b"{\"@timestamp\":\"");
    out.extend_from_slice(stamp);
    out.push(b'"');
    let rest = &line[1..];
    if rest.trim_ascii_start().first() != Some(&b'}') {
        out.push(b',');
    }
    out.extend_from_slice(rest);
}

/// What a `_bulk` response says about the documents of the request.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct BulkOutcome {
    /// Documents refused for now (429, 5xx): send them again.
    pub retry: Vec<usize>,
    /// Documents refused for good (any other status ≥ 400).
    pub rejected: u64,
    /// The first refusal's status and reason, for the log.
    pub first_error: Option<String>,
}

/// Why a 2xx `_bulk` response could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BulkError {
    /// It broke off or timed out: what was indexed is unknown.
    #[error("reading the _bulk response: {0}")]
    Read(String),
    /// It is not what Elasticsearch sends (or longer than was read of it).
    #[error("the _bulk response is not what Elasticsearch sends: {0}")]
    Malformed(String),
}

#[derive(Deserialize)]
struct BulkItem {
    status: u16,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

/// Reads a 2xx `_bulk` response to a request of `docs` documents from `reader`, as it
/// streams: it stops at `"errors":false`, and otherwise keeps only what the outcome needs,
/// so memory does not grow with the response.
pub fn read_bulk_outcome(
    reader: impl std::io::Read,
    docs: usize,
) -> Result<BulkOutcome, BulkError> {
    let mut state = BulkState {
        docs,
        out: BulkOutcome::default(),
        errors: None,
        items: 0,
    };
    let mut de = serde_json::Deserializer::from_reader(std::io::BufReader::new(reader));
    let parsed = serde::de::DeserializeSeed::deserialize(&mut state, &mut de);
    if state.errors == Some(false) {
        // Read no further (the error is the stop this parse was told to make).
        return Ok(BulkOutcome::default());
    }
    match parsed {
        Ok(()) => {}
        Err(e) if e.is_io() => return Err(BulkError::Read(e.to_string())),
        Err(e) => return Err(BulkError::Malformed(e.to_string())),
    }
    if state.errors != Some(true) {
        return Ok(BulkOutcome::default());
    }
    if state.items != docs {
        return Err(BulkError::Malformed(format!(
            "{} items for {docs} documents",
            state.items
        )));
    }
    Ok(state.out)
}

/// What has been read of a `_bulk` response.
struct BulkState {
    docs: usize,
    out: BulkOutcome,
    errors: Option<bool>,
    /// Items seen.
    items: usize,
}

impl BulkState {
    fn item(&mut self, item: &BulkItem) {
        let i = self.items;
        self.items += 1;
        if item.status < 400 || i >= self.docs {
            return;
        }
        if self.out.first_error.is_none() {
            let reason = item
                .error
                .as_ref()
                .map(|e| {
                    let kind = e.get("type").and_then(|t| t.as_str()).unwrap_or("");
                    let why = e.get("reason").and_then(|t| t.as_str()).unwrap_or("");
                    format!("{kind}: {}", why.chars().take(200).collect::<String>())
                })
                .unwrap_or_default();
            self.out.first_error = Some(format!("status {} {reason}", item.status));
        }
        if item.status == 429 || item.status >= 500 {
            self.out.retry.push(i);
        } else {
            self.out.rejected += 1;
        }
    }
}

const STOP: &str = "errors is false: nothing more to read";

impl<'de> serde::de::DeserializeSeed<'de> for &mut BulkState {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for &mut BulkState {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a _bulk response object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        use serde::de::Error;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match key.as_ref() {
                "errors" => {
                    let errors: bool = map.next_value()?;
                    self.errors = Some(errors);
                    if !errors {
                        return Err(A::Error::custom(STOP));
                    }
                }
                "items" => map.next_value_seed(Items(&mut *self))?,
                _ => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

/// The `items` array, each item taken and dropped as it is read.
struct Items<'a>(&'a mut BulkState);

impl<'de> serde::de::DeserializeSeed<'de> for Items<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Items<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an array of _bulk items")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        // Each item is `{"<action>": {"status": …, "error": …}}`.
        while let Some(item) = seq.next_element::<HashMap<String, BulkItem>>()? {
            if let Some(item) = item.values().next() {
                self.0.item(item);
            } else {
                self.0.items += 1;
            }
        }
        Ok(())
    }
}

/// Keeps only the documents `keep` (indices into `body.docs`, ascending) in `body`.
pub fn keep_docs(body: &mut Body, keep: &[usize]) {
    let mut data = Vec::with_capacity(keep.iter().map(|&i| body.docs[i].len()).sum());
    let mut docs = Vec::with_capacity(keep.len());
    for &i in keep {
        let start = data.len();
        data.extend_from_slice(&body.data[body.docs[i].clone()]);
        docs.push(start..data.len());
    }
    body.data = data;
    body.docs = docs;
    body.events = keep.len() as u64;
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    const META: &str = r#""_servicelog":{"source":"app","pod":"checkout-1","namespace":"shop"}"#;

    fn ev(fields: &str) -> String {
        format!("{{{fields},{META}}}\n")
    }

    fn build(enc: &mut Encoder, lines: &[String]) -> Body {
        let mut body = Body::default();
        for l in lines {
            enc.push(&mut body, l.as_bytes(), None);
        }
        enc.finish(&mut body);
        body
    }

    #[test]
    fn json_lines_are_sent_as_they_came() {
        let mut enc = Encoder::new(HttpEncoding::JsonLines, &[], None);
        let lines = vec![ev(r#""a":1"#), ev(r#""b":2"#)];
        let body = build(&mut enc, &lines);
        assert_eq!(body.data, lines.concat().as_bytes());
        assert_eq!(body.events, 2);
    }

    #[test]
    fn given_loki_labels_from_the_pods_metadata_then_streams_carry_them() {
        let mut enc = Encoder::new(
            HttpEncoding::Loki,
            &[
                "_servicelog.labels.app.kubernetes.io/name".to_owned(),
                "_servicelog.container".to_owned(),
                "_servicelog.labels.absent".to_owned(),
            ],
            None,
        );
        let line = "{\"msg\":\"a\",\"_servicelog\":{\"source\":\"app\",\"pod\":\"web-1\",\"namespace\":\"shop\",\"container\":\"web\",\"labels\":{\"app.kubernetes.io/name\":\"shop\",\"tier\":\"front\"}}}\n";
        let body = build(&mut enc, &[line.to_owned()]);
        let v: Value = serde_json::from_slice(&body.data).expect("the body is JSON");
        assert_eq!(
            v["streams"][0]["stream"],
            json!({"namespace":"shop","pod":"web-1","source":"app",
                   "app_kubernetes_io_name":"shop","container":"web"})
        );
        assert_eq!(v["streams"][0]["values"][0][1], r#"{"msg":"a"}"#);
    }

    #[test]
    fn loki_groups_by_labels_and_strips_servicelog_from_the_line() {
        let mut enc = Encoder::new(
            HttpEncoding::Loki,
            &["level".to_owned(), "http.method".to_owned()],
            None,
        );
        let lines = vec![
            ev(r#""level":"info","msg":"a""#),
            ev(r#""level":"warn","msg":"b","http":{"method":"GET"}"#),
            ev(r#""level":"info","msg":"c""#),
            "{\"message\":\"text line\",\"_servicelog\":{\"source\":\"legacy\",\"pod\":\"checkout-1\",\"namespace\":\"shop\"}}\n".to_owned(),
        ];
        let body = build(&mut enc, &lines);
        assert_eq!(body.events, 4);
        let v: Value = serde_json::from_slice(&body.data).expect("the body is JSON");
        let streams = v["streams"].as_array().expect("streams");
        let find = |labels: Value| {
            streams
                .iter()
                .find(|s| s["stream"] == labels)
                .unwrap_or_else(|| panic!("no stream {labels} in {v}"))
        };
        let info =
            find(json!({"namespace":"shop","pod":"checkout-1","source":"app","level":"info"}));
        let values = info["values"].as_array().expect("values");
        assert_eq!(values.len(), 2);
        assert_eq!(values[0][1], r#"{"level":"info","msg":"a"}"#);
        assert_eq!(values[1][1], r#"{"level":"info","msg":"c"}"#);
        let t0: u64 = values[0][0]
            .as_str()
            .and_then(|s| s.parse().ok())
            .expect("ns");
        let t1: u64 = values[1][0]
            .as_str()
            .and_then(|s| s.parse().ok())
            .expect("ns");
        assert!(t1 > t0, "timestamps strictly increase within a stream");
        find(
            json!({"namespace":"shop","pod":"checkout-1","source":"app","level":"warn","http_method":"GET"}),
        );
        let text = find(json!({"namespace":"shop","pod":"checkout-1","source":"legacy"}));
        assert_eq!(text["values"][0][1], r#"{"message":"text line"}"#);
        assert_eq!(streams.len(), 3);
    }

    #[test]
    fn loki_timestamps_increase_across_requests() {
        let mut enc = Encoder::new(HttpEncoding::Loki, &[], None);
        let a = enc.next_ns();
        let b = enc.next_ns();
        assert!(b > a);
    }

    #[test]
    fn elasticsearch_puts_an_action_before_each_doc_and_adds_a_missing_timestamp() {
        let mut enc = Encoder::new(HttpEncoding::Elasticsearch, &[], Some("logs-app"));
        let lines = vec![
            ev(r#""msg":"a""#),
            ev(r#""@timestamp":"2026-11-24T10:00:00Z","msg":"b""#),
            ev(r#""nested":{"@timestamp":"x"}"#),
        ];
        let body = build(&mut enc, &lines);
        let text = String::from_utf8(body.data.clone()).expect("UTF-8");
        let rows: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("each line is JSON"))
            .collect();
        assert_eq!(rows.len(), 6);
        for i in [0, 2, 4] {
            assert_eq!(rows[i], json!({"create": {"_index": "logs-app"}}));
        }
        assert!(
            rows[1]["@timestamp"]
                .as_str()
                .is_some_and(|t| t.ends_with('Z'))
        );
        assert_eq!(rows[1]["msg"], "a");
        assert_eq!(rows[1]["_servicelog"]["pod"], "checkout-1");
        assert_eq!(rows[3]["@timestamp"], "2026-11-24T10:00:00Z");
        assert!(
            rows[5]["@timestamp"].is_string(),
            "a nested @timestamp is not the doc's"
        );
        assert_eq!(body.docs.len(), 3);
        let second: Vec<&str> = text.lines().skip(2).take(2).collect();
        assert_eq!(
            &body.data[body.docs[1].clone()],
            format!("{}\n{}\n", second[0], second[1]).as_bytes()
        );
    }

    #[test]
    fn bulk_response_items_are_retried_rejected_or_taken() {
        let ok = br#"{"took":3,"errors":false,"items":[{"create":{"status":201}}]}"#;
        assert_eq!(read_bulk_outcome(&ok[..], 1), Ok(BulkOutcome::default()));
        let mixed = br#"{"took":3,"errors":true,"items":[
            {"create":{"status":201}},
            {"create":{"status":400,"error":{"type":"document_parsing_exception","reason":"failed to parse field [seq]"}}},
            {"create":{"status":429,"error":{"type":"es_rejected_execution_exception","reason":"queue full"}}},
            {"create":{"status":503}},
            {"create":{"status":409,"error":{"type":"version_conflict_engine_exception","reason":"exists"}}}]}"#;
        let out = read_bulk_outcome(&mixed[..], 5).expect("parses");
        assert_eq!(out.retry, vec![2, 3]);
        assert_eq!(out.rejected, 2);
        assert_eq!(
            out.first_error.as_deref(),
            Some("status 400 document_parsing_exception: failed to parse field [seq]")
        );
        assert!(matches!(
            read_bulk_outcome(&b"<html>"[..], 1),
            Err(BulkError::Malformed(_))
        ));
        assert!(read_bulk_outcome(&br#"{"errors":true,"items":[]}"#[..], 2).is_err());
    }

    #[test]
    fn given_a_bulk_response_without_errors_then_it_is_read_no_further_than_errors() {
        // An endless response: only its start is ever read.
        let endless = br#"{"took":3,"errors":false,"items":["#
            .iter()
            .copied()
            .chain(std::iter::repeat(b'x'));
        let mut read = 0usize;
        let reader = ReadIter(endless.inspect(|_| read += 1));
        assert_eq!(read_bulk_outcome(reader, 1000), Ok(BulkOutcome::default()));
        assert!(read < 64 * 1024, "{read} bytes read");
        // Cut short: the items are unknown.
        let cut = br#"{"took":3,"errors":true,"items":[{"create":{"status":201}},"#;
        assert!(matches!(
            read_bulk_outcome(&cut[..], 2),
            Err(BulkError::Malformed(_))
        ));
    }

    /// An `io::Read` over bytes from an iterator.
    struct ReadIter<I>(I);

    impl<I: Iterator<Item = u8>> std::io::Read for ReadIter<I> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let mut n = 0;
            for slot in buf.iter_mut() {
                match self.0.next() {
                    Some(b) => *slot = b,
                    None => break,
                }
                n += 1;
            }
            Ok(n)
        }
    }

    #[test]
    fn keep_docs_rebuilds_the_body_from_the_kept_documents() {
        let mut enc = Encoder::new(HttpEncoding::Elasticsearch, &[], None);
        let lines = vec![ev(r#""n":0"#), ev(r#""n":1"#), ev(r#""n":2"#)];
        let mut body = build(&mut enc, &lines);
        let second = body.data[body.docs[1].clone()].to_vec();
        let third = body.data[body.docs[2].clone()].to_vec();
        keep_docs(&mut body, &[1, 2]);
        assert_eq!(body.data, [second, third].concat());
        assert_eq!(body.events, 2);
        assert_eq!(body.docs.len(), 2);
    }

    mod any_bytes {
        use proptest::prelude::*;
        use servicelog_api::{Router, ServiceLogSpec, v1alpha1::Format};

        use super::*;
        use crate::pipeline::encode::{encode_json, meta_member};

        fn router(format: &str) -> Router {
            let yaml = format!(
                "sources: [{{name: app, file: {{paths: [/x/*.log], format: {format}}}}}]\n\
                 sinks: [{{name: out, stdout: {{}}}}]\ndefaultTo: [out]\n"
            );
            let spec: ServiceLogSpec = serde_yaml::from_str(&yaml).expect("a spec");
            Router::compile(&spec).expect("compiles")
        }

        /// Bytes, or bytes inside a JSON object's string (with the escapes that trip strict
        /// parsers), so the json path that keeps the line's own text is exercised too.
        fn line() -> impl Strategy<Value = Vec<u8>> {
            let piece = prop_oneof![
                any::<u8>().prop_map(|b| vec![b]),
                Just(br"\ud800".to_vec()),
                Just(br"\udfff".to_vec()),
                Just(br"\ud83d\ude00".to_vec()),
                Just(br"\\".to_vec()),
                Just(b"\"".to_vec()),
            ];
            prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..96),
                proptest::collection::vec(piece, 0..32).prop_map(|pieces| {
                    let mut l = br#"{"msg":""#.to_vec();
                    l.extend(pieces.concat());
                    l.extend_from_slice(br#"","n":1}"#);
                    l
                }),
            ]
        }

        fn assert_json(what: &str, bytes: &[u8]) -> Result<(), TestCaseError> {
            let parsed = serde_json::from_slice::<serde_json::Value>(bytes);
            prop_assert!(
                parsed.is_ok(),
                "{what} is not JSON ({:?}): {:?}",
                parsed.err(),
                String::from_utf8_lossy(bytes)
            );
            Ok(())
        }

        proptest! {
            #[test]
            fn given_any_bytes_as_a_line_then_every_json_encoding_is_valid_json(line in line()) {
                for (name, format) in [("json", Format::Json), ("logfmt", Format::Logfmt), ("text", Format::Text)] {
                    let r = router(name);
                    let event = r.parse(0, &line);
                    let mut encoded = Vec::new();
                    encode_json(&mut encoded, &event, format, &meta_member("app", "pod-1", "shop", None, &Default::default()));
                    prop_assert_eq!(encoded.iter().filter(|&&b| b == b'\n').count(), 1, "one line");
                    assert_json(&format!("{name}: encoding: json"), &encoded)?;
                    for encoding in [HttpEncoding::JsonLines, HttpEncoding::Loki, HttpEncoding::Elasticsearch] {
                        let mut enc = Encoder::new(encoding, &["msg".to_owned()], None);
                        let mut body = Body::default();
                        enc.push(&mut body, &encoded, None);
                        enc.finish(&mut body);
                        if encoding == HttpEncoding::Loki {
                            assert_json(&format!("{name}: {encoding:?} body"), &body.data)?;
                        } else {
                            for l in body.data.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                                assert_json(&format!("{name}: {encoding:?} line"), l)?;
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn label_names_are_what_loki_accepts() {
        assert_eq!(label_name("http.method"), "http_method");
        assert_eq!(label_name("k8s-app"), "k8s_app");
        assert_eq!(label_name("1x"), "_1x");
    }
}
