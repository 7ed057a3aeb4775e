//! `http` sinks: batches of events POSTed to a receiver — any JSON-lines endpoint, Loki's
//! push API or Elasticsearch's `_bulk` (see [`body`] for the formats).
//!
//! The sink thread takes entries from its [`buffer`](super::buffer) and holds them until
//! they add up to `batch.maxBytes` (uncompressed) or the first is `batch.timeout` old, then
//! sends them as requests of at most `maxBytes` each (cut at line boundaries; a longer
//! single line goes alone), gzipped if asked. Only once every request of a batch is
//! settled are its entries done, in order — which is what lets the file reader checkpoint
//! behind them (memory buffers), or frees them from the disk buffer.
//!
//! A request is settled when the receiver took it (2xx; for `_bulk`, every document taken
//! or refused for good), or refused it for good: any 4xx but 408 and 429 (and 401/403 when
//! the mounted credentials did not change), counted in
//! `servicelog_sink_dropped_total{reason="rejected"}` and logged once with the status and
//! the start of the response. Connection errors, timeouts, 408, 429 and 5xx are retried
//! with exponential backoff and jitter (100 ms doubling to 30 s; `Retry-After` in seconds
//! is honoured), each retry counted in `servicelog_sink_retries_total`, until the request
//! goes through or the buffer says to stop (shutdown deadline, or a disk buffer whose
//! records stay on disk). Entries not done then are delivered again — after a restart, or
//! by the next build of the sink — so delivery is at least once, with repeats limited to
//! the batch in flight.
//!
//! **Responses are read only as far as the decision needs**, so a broken or hostile
//! receiver costs bounded memory and time: the status decides, and of the body at most
//! [`MAX_RESPONSE`] (64 KiB, enough for Loki's and Elasticsearch's error messages) is read
//! for the log, within [`RESPONSE_BODY_TIMEOUT`] of the headers (and `requestTimeout` for
//! the whole exchange); a body that is longer, slower or never ends is cut off and the
//! connection dropped, the status's verdict unchanged. A 2xx `_bulk` response is the one
//! whose body decides, and a request of many documents has a long one (~150 bytes a
//! document taken, more for a refused one): it is parsed as it streams, stopping at
//! `"errors":false` (Elasticsearch writes it before the items), else keeping only each
//! item's status and the first refusal — so memory stays small whatever its length — and
//! read up to [`MAX_RESPONSE`] plus [`BULK_RESPONSE_PER_DOC`] per document. One that
//! breaks off or times out is retried (what was indexed is unknown: repeats, not loss);
//! one longer than that bound or not a `_bulk` response is taken as delivered, with a
//! warning, as before.
//!
//! One blocking [`ureq`] agent per sink, keeping its connection alive; `https://` verifies
//! against the system roots (`/etc/ssl/certs`, or `SSL_CERT_FILE`/`SSL_CERT_DIR`) or
//! `tls.caFile`, with rustls on ring.

pub mod body;
pub mod credentials;

use std::{
    fmt, fs,
    io::{Read, Write},
    path::Path,
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

use flate2::{Compression as Level, write::GzEncoder};
use prometheus_client::metrics::{counter::Counter, histogram::Histogram};
use servicelog_api::{
    v1alpha1::{Compression, HttpSink, Sink},
    validate::parse_duration,
};
use ureq::{
    Agent,
    http::{HeaderName, HeaderValue, Uri},
    tls::{Certificate, PemItem, RootCerts, TlsConfig},
};

use self::{
    body::{Body, BulkError, Encoder},
    credentials::{Credentials, CredentialsError},
};
use super::buffer::{BufferRx, Entry, RecvTimeout};
use crate::metrics::Metrics;

pub const DEFAULT_MAX_BYTES: u64 = 1 << 20;
pub const DEFAULT_BATCH_TIMEOUT: Duration = Duration::from_secs(1);
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// The longest `Retry-After` obeyed as given.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);
/// Most of a response body read, but for a 2xx `_bulk` response's items.
pub const MAX_RESPONSE: u64 = 64 << 10;
/// What a 2xx `_bulk` response may add per document of the request, read as it streams.
pub const BULK_RESPONSE_PER_DOC: u64 = 4 << 10;
/// The longest wait for a response body once its headers are in (or `requestTimeout`,
/// if shorter).
pub const RESPONSE_BODY_TIMEOUT: Duration = Duration::from_secs(5);
/// How much of a refusing response goes in the log.
const SNIPPET: usize = 300;

/// Problems with an http sink's definition or its mounted files.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("url {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("{field}: {message}")]
    Duration {
        field: &'static str,
        message: String,
    },
    #[error("headers: {name:?} is not a valid header name or its value is not a valid value")]
    Header { name: String },
    #[error("tls.caFile {path}: {message}")]
    CaFile { path: String, message: String },
    #[error("no system CA certificates could be loaded ({message}); set tls.caFile")]
    SystemRoots { message: String },
    #[error("credentialsSecretRef: {0}")]
    Credentials(#[from] CredentialsError),
}

/// A built http sink, ready to run on its thread.
pub struct HttpTask {
    name: String,
    url: String,
    agent: Agent,
    encoder: Encoder,
    content_type: &'static str,
    gzip: bool,
    max_bytes: usize,
    batch_timeout: Duration,
    headers: Vec<(HeaderName, HeaderValue)>,
    credentials: Option<Credentials>,
    metrics: Metrics,
    delivered: Counter,
    request_duration: Histogram,
    /// The request being built or sent, and its gzipped form, reused.
    body: Body,
    gz: Vec<u8>,
    rng: u64,
}

impl fmt::Debug for HttpTask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpTask")
            .field("name", &self.name)
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// What one attempt at a request came to.
#[derive(Debug, PartialEq, Eq)]
enum Attempt {
    Delivered,
    /// Refused for good: count and move on.
    Rejected(String),
    /// Some documents of a `_bulk` request were taken, some refused for good; those left
    /// in the body are to be sent again.
    Partial {
        rejected: u64,
        why: Option<String>,
    },
    Retry {
        after: Option<Duration>,
        why: String,
    },
    /// 401/403 after which the mounted credentials changed: try again at once.
    CredentialsChanged,
}

/// How a response status is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Success,
    Retry,
    /// 401, 403: retried only if the credentials changed.
    Auth,
    Reject,
}

pub fn classify(status: u16) -> Class {
    match status {
        200..=299 => Class::Success,
        408 | 429 | 500..=599 => Class::Retry,
        401 | 403 => Class::Auth,
        _ => Class::Reject,
    }
}

/// `Retry-After` in seconds (the HTTP-date form is left to the backoff).
pub fn retry_after(value: &str) -> Option<Duration> {
    let secs: u64 = value.trim().parse().ok()?;
    Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER))
}

/// The wait before retry number `attempt` (0-based): a random point in the upper half of
/// the doubling backoff, so sidecars that failed together do not retry together.
pub fn backoff(attempt: u32, random: u64) -> Duration {
    let cap = FIRST_BACKOFF
        .saturating_mul(1 << attempt.min(16))
        .min(MAX_BACKOFF);
    let half = cap / 2;
    let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX).max(1);
    half + Duration::from_nanos(random % nanos)
}

impl HttpTask {
    /// Checks the definition and reads the mounted files (CA, credentials); nothing is
    /// sent yet.
    pub fn build(
        def: &Sink,
        http: &HttpSink,
        credentials_dir: &Path,
        metrics: &Metrics,
    ) -> Result<Self, HttpError> {
        let name = def.name.clone();
        let uri: Uri = http.url.parse().map_err(|e| HttpError::Url {
            url: http.url.clone(),
            reason: format!("{e}"),
        })?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => {
                return Err(HttpError::Url {
                    url: http.url.clone(),
                    reason: "not an http:// or https:// URL".to_owned(),
                });
            }
        };
        let batch = http.batch.clone().unwrap_or_default();
        let batch_timeout = match &batch.timeout {
            Some(t) => parse_duration(t).map_err(|message| HttpError::Duration {
                field: "batch.timeout",
                message,
            })?,
            None => DEFAULT_BATCH_TIMEOUT,
        };
        let request_timeout = match &http.request_timeout {
            Some(t) => parse_duration(t).map_err(|message| HttpError::Duration {
                field: "requestTimeout",
                message,
            })?,
            None => DEFAULT_REQUEST_TIMEOUT,
        };
        let headers = parse_headers(&http.headers)?;
        let credentials = match &def.credentials_secret_ref {
            Some(_) => Some(Credentials::load(&credentials_dir.join(&name))?),
            None => None,
        };
        let agent = agent(request_timeout, https, http.tls.as_ref())?;

        let encoding = http.encoding;
        Ok(Self {
            encoder: Encoder::new(encoding, &http.labels, http.index.as_deref()),
            content_type: body::content_type(encoding),
            gzip: http.compression == Compression::Gzip,
            max_bytes: usize::try_from(batch.max_bytes.unwrap_or(DEFAULT_MAX_BYTES))
                .unwrap_or(usize::MAX),
            batch_timeout,
            headers,
            credentials,
            delivered: metrics.sink_counter(&name),
            request_duration: metrics.request_duration(&name),
            metrics: metrics.clone(),
            url: http.url.clone(),
            agent,
            body: Body::default(),
            gz: Vec::new(),
            rng: seed(),
            name,
        })
    }

    /// The sink thread: batches entries and delivers them until the buffer closes or says
    /// to stop.
    pub fn run(mut self, rx: BufferRx) {
        tracing::debug!(sink = %self.name, url = %self.url, "http sink started");
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
        tracing::debug!(sink = %self.name, "http sink drained and closed");
    }

    fn give_up(&self, pending: &[Entry]) {
        let events: u64 = pending.iter().map(|e| e.events).sum();
        tracing::warn!(
            sink = %self.name,
            events,
            "stopping with a batch not delivered; it is delivered again at the next start \
             (or by the sink's next build)"
        );
    }

    /// Sends `entries` as requests of at most `max_bytes`; false if told to stop first.
    fn deliver(&mut self, entries: &[Entry], rx: &BufferRx) -> bool {
        let data: Vec<&[u8]> = entries.iter().map(|e| e.data.as_slice()).collect();
        let mut at = (0usize, 0usize);
        loop {
            self.body.clear();
            // A body holds at most `max_bytes` (but a single longer line): no doubling past it.
            self.body.data.reserve(
                self.max_bytes
                    .min(entries.iter().map(|e| e.data.len()).sum()),
            );
            while let Some(run) = next_run(
                &data,
                &mut at,
                self.max_bytes.saturating_sub(self.body.raw_bytes),
                self.body.raw_bytes == 0,
            ) {
                // A whole entry's event count is known; a part's is counted.
                let whole = at.1 == run.len() && run.len() == data[at.0].len();
                let events = whole.then(|| entries[at.0].events);
                self.encoder.push(&mut self.body, run, events);
                if self.body.raw_bytes >= self.max_bytes {
                    break;
                }
            }
            if self.body.raw_bytes == 0 {
                return true;
            }
            self.encoder.finish(&mut self.body);
            if !self.send(rx) {
                return false;
            }
        }
    }

    /// Sends the body until it is settled; false if told to stop first.
    fn send(&mut self, rx: &BufferRx) -> bool {
        let mut retries = 0u32;
        let mut failing_since: Option<Instant> = None;
        let mut compressed = false;
        loop {
            if self.gzip && !compressed {
                gzip(&self.body.data, &mut self.gz);
                compressed = true;
            }
            let started = Instant::now();
            let attempt = self.attempt();
            self.request_duration
                .observe(started.elapsed().as_secs_f64());
            let (after, why) = match attempt {
                Attempt::Delivered => {
                    self.delivered.inc_by(self.body.events);
                    if let Some(since) = failing_since {
                        tracing::info!(sink = %self.name, retries, down_for = ?since.elapsed(), "receiver took the batch again");
                    }
                    return true;
                }
                Attempt::Rejected(why) => {
                    tracing::warn!(sink = %self.name, events = self.body.events, reason = %why, "receiver refused the batch for good; counted as rejected, not retried");
                    self.metrics
                        .sink_dropped(&self.name, "rejected", self.body.events);
                    return true;
                }
                Attempt::Partial { rejected, why } => {
                    if rejected > 0 {
                        tracing::warn!(sink = %self.name, rejected, reason = why.as_deref().unwrap_or(""), "Elasticsearch refused documents for good; counted as rejected");
                        self.metrics.sink_dropped(&self.name, "rejected", rejected);
                    }
                    if self.body.events == 0 {
                        return true;
                    }
                    compressed = false;
                    (
                        None,
                        format!(
                            "{} documents refused for now ({})",
                            self.body.events,
                            why.unwrap_or_default()
                        ),
                    )
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
                || backoff(retries, self.random()),
                |a| a.max(FIRST_BACKOFF / 2),
            );
            if failing_since.is_none() {
                tracing::warn!(sink = %self.name, error = %why, retry_in = ?wait, "sending failed; retrying with backoff");
                failing_since = Some(Instant::now());
            } else {
                tracing::debug!(sink = %self.name, error = %why, retry_in = ?wait, retries, "sending failed again");
            }
            self.metrics.sink_retry(&self.name);
            retries = retries.saturating_add(1);
            if !sleep_unless_stopped(wait, rx) {
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
            .header(ureq::http::header::CONTENT_TYPE, self.content_type);
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
        let payload: &[u8] = if self.gzip { &self.gz } else { &self.body.data };
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
            .and_then(retry_after);
        let class = classify(status);
        if class == Class::Success && !self.body.docs.is_empty() {
            let docs = self.body.docs.len();
            let cap = MAX_RESPONSE + BULK_RESPONSE_PER_DOC * docs as u64;
            let read = body::read_bulk_outcome(resp.body_mut().as_reader().take(cap), docs);
            return match read {
                Ok(outcome) => self.bulk(outcome),
                Err(BulkError::Read(why)) => Attempt::Retry { after, why },
                Err(e @ BulkError::Malformed(_)) => {
                    tracing::warn!(sink = %self.name, error = %e, read_at_most = cap, "taking the batch as delivered");
                    Attempt::Delivered
                }
            };
        }
        // The status has decided; the body is only for the log.
        let mut text = Vec::new();
        if let Err(e) = resp
            .body_mut()
            .as_reader()
            .take(MAX_RESPONSE)
            .read_to_end(&mut text)
        {
            tracing::debug!(sink = %self.name, status, error = %e, "reading the response");
        }
        match class {
            Class::Success => Attempt::Delivered,
            Class::Retry => Attempt::Retry {
                after,
                why: format!("status {status}: {}", snippet(&text)),
            },
            Class::Auth => {
                if self
                    .credentials
                    .as_mut()
                    .is_some_and(|c| c.reload(&self.name))
                {
                    Attempt::CredentialsChanged
                } else {
                    Attempt::Rejected(format!("status {status}: {}", snippet(&text)))
                }
            }
            Class::Reject => Attempt::Rejected(format!("status {status}: {}", snippet(&text))),
        }
    }

    /// What a 2xx `_bulk` response said: counts what was taken and refused, keeps the
    /// documents to retry in the body.
    fn bulk(&mut self, outcome: body::BulkOutcome) -> Attempt {
        if outcome.retry.is_empty() && outcome.rejected == 0 {
            return Attempt::Delivered;
        }
        let taken = self.body.events - outcome.rejected - outcome.retry.len() as u64;
        self.delivered.inc_by(taken);
        body::keep_docs(&mut self.body, &outcome.retry);
        Attempt::Partial {
            rejected: outcome.rejected,
            why: outcome.first_error,
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

/// The next run of whole lines of `data` from `at` (slice, offset): up to `room` bytes,
/// or when `empty` (nothing in the body yet) at least one line however long. A run never
/// spans two slices.
fn next_run<'a>(
    data: &[&'a [u8]],
    at: &mut (usize, usize),
    room: usize,
    empty: bool,
) -> Option<&'a [u8]> {
    let rest = loop {
        let d = data.get(at.0)?;
        if at.1 < d.len() {
            break &d[at.1..];
        }
        *at = (at.0 + 1, 0);
    };
    let len = if rest.len() <= room {
        rest.len()
    } else if let Some(nl) = memchr::memrchr(b'\n', &rest[..room]) {
        nl + 1
    } else if empty {
        memchr::memchr(b'\n', rest).map_or(rest.len(), |nl| nl + 1)
    } else {
        return None;
    };
    at.1 += len;
    Some(&rest[..len])
}

pub(crate) fn gzip(data: &[u8], out: &mut Vec<u8>) {
    out.clear();
    let mut enc = GzEncoder::new(std::mem::take(out), Level::fast());
    // Writing into a Vec cannot fail.
    let _ = enc.write_all(data);
    *out = enc.finish().unwrap_or_default();
}

/// Sleeps `wait`, waking to check `rx.stopped()`; false if it said to stop.
pub(crate) fn sleep_unless_stopped(wait: Duration, rx: &BufferRx) -> bool {
    let until = Instant::now() + wait;
    loop {
        let now = Instant::now();
        if now >= until {
            return true;
        }
        thread::sleep((until - now).min(Duration::from_millis(100)));
        if rx.stopped() {
            return false;
        }
    }
}

pub(crate) fn snippet(text: &[u8]) -> String {
    let s = String::from_utf8_lossy(&text[..text.len().min(SNIPPET)]);
    s.replace(['\n', '\r'], " ")
}

pub(crate) fn seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    (t ^ u64::from(std::process::id()).rotate_left(32)) | 1
}

/// The configured headers, checked as HTTP.
pub(crate) fn parse_headers(
    headers: &std::collections::BTreeMap<String, String>,
) -> Result<Vec<(HeaderName, HeaderValue)>, HttpError> {
    headers
        .iter()
        .map(|(k, v)| {
            match (
                HeaderName::from_bytes(k.as_bytes()),
                HeaderValue::from_str(v),
            ) {
                (Ok(k), Ok(v)) => Ok((k, v)),
                _ => Err(HttpError::Header { name: k.clone() }),
            }
        })
        .collect()
}

/// A sink's blocking client: statuses are answers, not errors; no redirects; the whole
/// exchange bounded by `request_timeout`; at most two idle connections kept.
pub(crate) fn agent(
    request_timeout: Duration,
    https: bool,
    tls: Option<&servicelog_api::v1alpha1::HttpTls>,
) -> Result<Agent, HttpError> {
    let mut config = Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(request_timeout))
        .timeout_recv_body(Some(RESPONSE_BODY_TIMEOUT.min(request_timeout)))
        .user_agent(concat!("servicelog-sidecar/", env!("CARGO_PKG_VERSION")))
        .max_idle_connections(2)
        .max_idle_connections_per_host(2);
    if https {
        config = config.tls_config(tls_config(tls)?);
    }
    Ok(config.build().into())
}

/// The TLS setup of an `https://` sink: `caFile`'s CAs, else the system's.
fn tls_config(tls: Option<&servicelog_api::v1alpha1::HttpTls>) -> Result<TlsConfig, HttpError> {
    let tls = tls.cloned().unwrap_or_default();
    let roots: Vec<Certificate<'static>> = match &tls.ca_file {
        Some(path) => {
            let pem = fs::read(path).map_err(|e| HttpError::CaFile {
                path: path.clone(),
                message: e.to_string(),
            })?;
            let certs: Vec<_> = ureq::tls::parse_pem(&pem)
                .filter_map(|item| match item {
                    Ok(PemItem::Certificate(c)) => Some(c),
                    _ => None,
                })
                .collect();
            if certs.is_empty() {
                return Err(HttpError::CaFile {
                    path: path.clone(),
                    message: "holds no PEM certificate".to_owned(),
                });
            }
            certs
        }
        None if tls.insecure_skip_verify => Vec::new(),
        None => {
            let found = rustls_native_certs::load_native_certs();
            if found.certs.is_empty() {
                return Err(HttpError::SystemRoots {
                    message: found
                        .errors
                        .first()
                        .map_or_else(|| "none found".to_owned(), ToString::to_string),
                });
            }
            found
                .certs
                .iter()
                .map(|c| Certificate::from_der(c.as_ref()).to_owned())
                .collect()
        }
    };
    Ok(TlsConfig::builder()
        .root_certs(RootCerts::Specific(Arc::new(roots)))
        .disable_verification(tls.insecure_skip_verify)
        .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_retried_rejected_or_taken() {
        for s in [200, 201, 204] {
            assert_eq!(classify(s), Class::Success, "{s}");
        }
        for s in [408, 429, 500, 502, 503, 504] {
            assert_eq!(classify(s), Class::Retry, "{s}");
        }
        for s in [401, 403] {
            assert_eq!(classify(s), Class::Auth, "{s}");
        }
        for s in [301, 400, 404, 405, 413, 422] {
            assert_eq!(classify(s), Class::Reject, "{s}");
        }
    }

    #[test]
    fn retry_after_in_seconds_is_honoured_and_capped() {
        assert_eq!(retry_after("2"), Some(Duration::from_secs(2)));
        assert_eq!(retry_after(" 0 "), Some(Duration::ZERO));
        assert_eq!(retry_after("100000"), Some(MAX_RETRY_AFTER));
        assert_eq!(retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap() {
        for attempt in 0..40 {
            let cap = (FIRST_BACKOFF * 2u32.pow(attempt.min(16))).min(MAX_BACKOFF);
            for random in [0, 1, 12_345_678_901, u64::MAX] {
                let d = backoff(attempt, random);
                assert!(
                    d >= cap / 2 && d <= cap,
                    "attempt {attempt}: {d:?} not in [{:?}, {cap:?}]",
                    cap / 2
                );
            }
        }
        assert!(backoff(0, 0) >= Duration::from_millis(50));
        assert!(backoff(30, u64::MAX) <= MAX_BACKOFF);
    }

    #[test]
    fn runs_are_cut_at_line_boundaries_within_the_room() {
        let data: Vec<&[u8]> = vec![b"aaa\nbbb\n", b"cccccccc\nd\n"];
        let mut at = (0, 0);
        assert_eq!(next_run(&data, &mut at, 5, true), Some(&b"aaa\n"[..]));
        assert_eq!(next_run(&data, &mut at, 100, false), Some(&b"bbb\n"[..]));
        assert_eq!(
            next_run(&data, &mut at, 3, false),
            None,
            "a line longer than the room waits for the next body"
        );
        assert_eq!(next_run(&data, &mut at, 0, false), None);
        assert_eq!(
            next_run(&data, &mut at, 3, true),
            Some(&b"cccccccc\n"[..]),
            "and goes alone in it"
        );
        assert_eq!(next_run(&data, &mut at, 100, false), Some(&b"d\n"[..]));
        assert_eq!(next_run(&data, &mut at, 100, false), None);
    }
}
