//! `kafka` sinks: one record per event, produced to a topic with `acks=all`.
//!
//! The sink thread takes entries from its [`buffer`](super::buffer) and holds them until
//! they add up to `batch.maxBytes` or the first is `batch.timeout` old, then cuts them
//! into records (one per line: the value is the line as the sink's encoding wrote it),
//! picks each record's partition, and produces one request per partition at a time —
//! all partitions at once, each at most `maxBytes` of values. Only when every partition
//! answered are the entries done, in order, so the file reader checkpoints behind what
//! the brokers acknowledged.
//!
//! **Partitions.** A record with a key (the `key` field of the event, read from the
//! value: a JSON object's field, so a `json` source or `encoding: json`) goes to
//! `murmur2(key) % partitions`, Java's default partitioner, so the same key lands where
//! Java producers put it. Records without one go to one partition per delivery, the next
//! one each time (sticky per batch, as Java's producer does). The topic's partitions are
//! read at start and again every [`METADATA_REFRESH`] and after a failure.
//!
//! **Failures.** Nothing is dropped while the sink is in the config: an unreachable
//! broker, a topic that does not exist, refused credentials or any other error leaves
//! the batch unacked and is retried with backoff (100 ms doubling to 30 s, jitter), each
//! failed attempt counted in `servicelog_sink_write_errors`, logged (a warning the first
//! time, and again when the reason changes) and set as the sink's error in the instance
//! record until a delivery goes through. A request the broker refuses as too large
//! (`MessageTooLarge`, `RecordListTooLarge`: over its `message.max.bytes`) is split in
//! halves until it fits; only a single record it refuses so is given up, counted in
//! `servicelog_sink_dropped_total{reason="rejected"}`, since no retry can deliver it.
//! Partitions already written are not written again when another one fails, but a
//! produce whose answer was lost is: delivery is at least once (`rskafka` has no
//! idempotent producer, docs/architecture.md "Kafka client").
//!
//! The thread runs its own current-thread tokio runtime for `rskafka`; memory while the
//! brokers are away is the buffer's bound plus one batch.

use std::{
    cell::Cell,
    collections::BTreeMap,
    fmt, fs, io,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use prometheus_client::metrics::{counter::Counter, histogram::Histogram};
use rskafka::{
    BackoffConfig,
    client::{
        ClientBuilder, Credentials as SaslCredentials, SaslConfig,
        error::{Error as ClientError, ProtocolError},
        partition::{Compression, PartitionClient, UnknownTopicHandling},
    },
    record::Record,
};
use servicelog_api::{
    v1alpha1::{KafkaCompression, KafkaSink, Sink},
    validate::parse_duration,
};

use super::{
    SinkErrors,
    buffer::{BufferRx, Entry, RecvTimeout},
    http::{backoff, seed, sleep_unless_stopped},
};
use crate::metrics::Metrics;

pub const DEFAULT_MAX_BYTES: u64 = 512 << 10;
pub const DEFAULT_BATCH_TIMEOUT: Duration = Duration::from_millis(100);
/// How often the topic's partitions are read again while all goes well.
pub const METADATA_REFRESH: Duration = Duration::from_secs(300);
/// How long connecting (bootstrap, metadata, partition leaders) may take, retries inside
/// `rskafka` included, before the sink counts it failed, reports it and backs off itself.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `rskafka` retries a request (connect, SASL, metadata, produce) itself before
/// it returns the error: shorter than the timeouts around it, so the reason (refused
/// credentials, connection refused) is what the sink reports, not the timeout.
const CLIENT_RETRY_DEADLINE: Duration = Duration::from_secs(4);
/// Likewise for producing one batch to every partition. A produce cut off by it may
/// have been written: it is sent again (at least once).
const PRODUCE_TIMEOUT: Duration = Duration::from_secs(15);
static BUILDS: AtomicU64 = AtomicU64::new(0);

/// Problems with a kafka sink's definition or its mounted files.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    #[error("batch.timeout: {0}")]
    Duration(String),
    #[error("tls.caFile {path}: {message}")]
    CaFile { path: String, message: String },
    #[error("no system CA certificates could be loaded ({0}); set tls.caFile")]
    SystemRoots(String),
    #[error("credentialsSecretRef: {0}")]
    Credentials(#[from] SaslError),
    #[error("starting its runtime: {0}")]
    Runtime(io::Error),
}

/// A kafka sink's SASL settings, from the Secret the webhook mounts at
/// `<credentials dir>/<sink>/`. Values are never logged nor put in an error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SaslError {
    #[error(
        "credentials directory {dir} does not exist: the Secret named by credentialsSecretRef is \
         mounted there by the webhook when the pod is created, so a pod created before the \
         Secret was named needs a restart"
    )]
    Missing { dir: String },
    #[error(
        "{dir}: a kafka sink's Secret holds username and password (and optionally mechanism); {missing} is missing"
    )]
    Incomplete { dir: String, missing: &'static str },
    #[error("reading {path}: {message}")]
    Read { path: String, message: String },
    #[error("{path}: mechanism {value:?} is not PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512")]
    Mechanism { path: String, value: String },
}

/// A built kafka sink, ready to run on its thread.
pub struct KafkaTask {
    name: String,
    def: KafkaSink,
    key: Option<Vec<String>>,
    compression: Compression,
    max_bytes: usize,
    batch_timeout: Duration,
    tls: Option<Arc<rustls::ClientConfig>>,
    sasl: Option<SaslConfig>,
    metrics: Metrics,
    delivered: Counter,
    request_duration: Histogram,
    errors: SinkErrors,
    /// This build's identity in [`SinkErrors`]: a replaced build's last words do not
    /// clear the error its successor reported.
    build: u64,
    runtime: tokio::runtime::Runtime,
    rng: u64,
}

impl fmt::Debug for KafkaTask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaTask")
            .field("name", &self.name)
            .field("brokers", &self.def.brokers)
            .field("topic", &self.def.topic)
            .finish_non_exhaustive()
    }
}

/// The connection and what it knows of the topic.
struct Conn {
    partitions: Vec<PartitionClient>,
    read_at: Instant,
}

/// Why an attempt failed.
#[derive(Debug)]
struct Failure {
    why: String,
}

impl KafkaTask {
    /// Checks the definition and reads the mounted files (CA, credentials); nothing is
    /// connected yet, so an unreachable broker does not refuse the config.
    pub fn build(
        def: &Sink,
        kafka: &KafkaSink,
        credentials_dir: &Path,
        metrics: &Metrics,
        errors: SinkErrors,
    ) -> Result<Self, KafkaError> {
        let name = def.name.clone();
        let batch = kafka.batch.clone().unwrap_or_default();
        let batch_timeout = match &batch.timeout {
            Some(t) => parse_duration(t).map_err(KafkaError::Duration)?,
            None => DEFAULT_BATCH_TIMEOUT,
        };
        let sasl = match &def.credentials_secret_ref {
            Some(_) => Some(read_sasl(&credentials_dir.join(&name))?),
            None => None,
        };
        let tls = kafka
            .tls
            .as_ref()
            .map(|t| tls_config(t.ca_file.as_deref()))
            .transpose()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(KafkaError::Runtime)?;
        Ok(Self {
            key: kafka
                .key
                .as_ref()
                .map(|k| k.split('.').map(str::to_owned).collect()),
            compression: match kafka.compression {
                KafkaCompression::None => Compression::NoCompression,
                KafkaCompression::Gzip => Compression::Gzip,
                KafkaCompression::Snappy => Compression::Snappy,
                KafkaCompression::Lz4 => Compression::Lz4,
            },
            max_bytes: usize::try_from(batch.max_bytes.unwrap_or(DEFAULT_MAX_BYTES))
                .unwrap_or(usize::MAX),
            batch_timeout,
            tls,
            sasl,
            delivered: metrics.sink_counter(&name),
            request_duration: metrics.request_duration(&name),
            metrics: metrics.clone(),
            errors,
            build: BUILDS.fetch_add(1, Ordering::Relaxed),
            runtime,
            rng: seed(),
            def: kafka.clone(),
            name,
        })
    }

    /// The sink thread: batches entries and produces them until the buffer closes or says
    /// to stop.
    pub fn run(mut self, rx: BufferRx) {
        tracing::debug!(sink = %self.name, brokers = ?self.def.brokers, topic = %self.def.topic, "kafka sink started");
        let mut conn: Option<Conn> = None;
        let mut pending: Vec<Entry> = Vec::new();
        let mut pending_bytes = 0usize;
        let mut first: Option<Instant> = None;
        let mut next_partition = 0usize;
        let mut closed = false;
        loop {
            let due = first.is_some_and(|t| t.elapsed() >= self.batch_timeout);
            if !pending.is_empty() && (pending_bytes >= self.max_bytes || due || closed) {
                if !self.deliver(&mut conn, &pending, &mut next_partition, &rx) {
                    return self.give_up(&pending);
                }
                for entry in pending.drain(..) {
                    rx.done(entry);
                }
                pending_bytes = 0;
                first = None;
                continue;
            }
            if closed {
                break;
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
                Err(RecvTimeout::Closed) => closed = true,
            }
        }
        self.errors.clear(&self.name, self.build);
        tracing::debug!(sink = %self.name, "kafka sink drained and closed");
    }

    fn give_up(&self, pending: &[Entry]) {
        self.errors.clear(&self.name, self.build);
        let events: u64 = pending.iter().map(|e| e.events).sum();
        tracing::warn!(
            sink = %self.name,
            events,
            "stopping with a batch not produced; it is delivered again at the next start \
             (or by the sink's next build)"
        );
    }

    /// Produces every line of `entries` until all partitions acknowledged them; false if
    /// told to stop first.
    fn deliver(
        &mut self,
        conn: &mut Option<Conn>,
        entries: &[Entry],
        next_partition: &mut usize,
        rx: &BufferRx,
    ) -> bool {
        let mut attempt = 0u32;
        let mut last_why: Option<String> = None;
        // Cut once the partition count is known; a partition's lines leave it as they
        // are acknowledged.
        let mut cut: Option<Cut> = None;
        loop {
            let result = self.attempt(conn, entries, next_partition, &mut cut);
            match result {
                Ok(()) => {
                    self.delivered
                        .inc_by(cut.as_ref().map_or(0, |c| c.events - c.rejected));
                    if last_why.is_some() {
                        tracing::info!(sink = %self.name, topic = %self.def.topic, "producing again");
                        self.errors.clear(&self.name, self.build);
                    }
                    return true;
                }
                Err(Failure { why }) => {
                    self.metrics.sink_write_error(&self.name);
                    // Read the topic again next time: its leaders or partitions may
                    // have changed, and a reconnect starts from the bootstrap brokers.
                    *conn = None;
                    let wait = backoff(attempt, self.random());
                    attempt = attempt.saturating_add(1);
                    let message = format!(
                        "kafka sink {}: producing to topic {:?} on {}: {why}",
                        self.name,
                        self.def.topic,
                        self.def.brokers.join(",")
                    );
                    if last_why.as_deref() != Some(why.as_str()) {
                        tracing::warn!(sink = %self.name, topic = %self.def.topic, error = %why, retry_in = ?wait, "produce failed; retrying with backoff");
                        self.errors.set(&self.name, self.build, &message);
                        last_why = Some(why);
                    } else {
                        tracing::debug!(sink = %self.name, error = %why, retry_in = ?wait, "produce failed again");
                    }
                    if !sleep_unless_stopped(wait, rx) {
                        return false;
                    }
                }
            }
        }
    }

    /// One try: connect if needed, cut the records if not yet, produce what is left.
    fn attempt(
        &self,
        conn: &mut Option<Conn>,
        entries: &[Entry],
        next_partition: &mut usize,
        cut: &mut Option<Cut>,
    ) -> Result<(), Failure> {
        if conn
            .as_ref()
            .is_some_and(|c| c.read_at.elapsed() >= METADATA_REFRESH)
        {
            *conn = None;
        }
        if conn.is_none() {
            let connecting = async { tokio::time::timeout(CONNECT_TIMEOUT, self.connect()).await };
            *conn = Some(self.runtime.block_on(connecting).map_err(|_| Failure {
                why: format!(
                    "no connection to the brokers and the topic's partition leaders within {CONNECT_TIMEOUT:?}"
                ),
            })??);
        }
        let Some(c) = conn.as_ref() else {
            return Err(Failure {
                why: "not connected".into(),
            });
        };
        let partitions = c.partitions.len();
        let cut = cut.get_or_insert_with(|| self.cut(entries, partitions, next_partition));
        let timestamp = cut.timestamp;
        let mut groups = std::mem::take(&mut cut.partitions);
        // A partition that went away since the records were cut (the topic was
        // recreated smaller): its records go to the others rather than wait forever.
        let lost: Vec<usize> = groups
            .keys()
            .copied()
            .filter(|p| *p >= partitions)
            .collect();
        for p in lost {
            if let Some(records) = groups.remove(&p) {
                groups.entry(p % partitions).or_default().extend(records);
            }
        }
        let rejected = Cell::new(0u64);
        let request = Request {
            entries,
            timestamp,
            compression: self.compression,
            max_bytes: self.max_bytes,
            rejected: &rejected,
            duration: &self.request_duration,
        };
        let producing = futures::future::join_all(
            groups
                .iter_mut()
                .map(|(p, lines)| request.produce_all(&c.partitions[*p], lines)),
        );
        let produced = self
            .runtime
            .block_on(async { tokio::time::timeout(PRODUCE_TIMEOUT, producing).await });
        groups.retain(|_, records| !records.is_empty());
        cut.partitions = groups;
        if rejected.get() > 0 {
            self.metrics
                .sink_dropped(&self.name, "rejected", rejected.get());
            cut.rejected += rejected.get();
        }
        match produced {
            Err(_) => Err(Failure {
                why: format!("the brokers did not acknowledge within {PRODUCE_TIMEOUT:?}"),
            }),
            Ok(results) => match results.into_iter().find_map(Result::err) {
                None => Ok(()),
                Some(e) => Err(failure(&e)),
            },
        }
    }

    async fn connect(&self) -> Result<Conn, Failure> {
        let mut builder = ClientBuilder::new(self.def.brokers.clone())
            .client_id(format!("servicelog-sidecar/{}", self.name))
            .backoff_config(BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(2),
                base: 2.0,
                deadline: Some(CLIENT_RETRY_DEADLINE),
            });
        if let Some(tls) = &self.tls {
            builder = builder.tls_config(tls.clone());
        }
        if let Some(sasl) = &self.sasl {
            builder = builder.sasl_config(sasl.clone());
        }
        let client = builder.build().await.map_err(|e| failure(&e))?;
        let topics = client.list_topics().await.map_err(|e| failure(&e))?;
        let Some(topic) = topics.into_iter().find(|t| t.name == self.def.topic) else {
            return Err(Failure {
                why: format!(
                    "topic {:?} does not exist (the sink does not create topics)",
                    self.def.topic
                ),
            });
        };
        // Partitions are numbered 0..n; the murmur2 partitioner counts on it.
        let count = topic.partitions.len();
        if topic.partitions.iter().copied().ne(0..count as i32) || count == 0 {
            return Err(Failure {
                why: format!(
                    "topic {:?} has partitions {:?}, not 0..n",
                    self.def.topic, topic.partitions
                ),
            });
        }
        let mut partitions = Vec::with_capacity(count);
        for p in 0..count as i32 {
            let pc = client
                .partition_client(self.def.topic.clone(), p, UnknownTopicHandling::Error)
                .await
                .map_err(|e| failure(&e))?;
            partitions.push(pc);
        }
        tracing::debug!(sink = %self.name, topic = %self.def.topic, partitions = count, "connected");
        Ok(Conn {
            partitions,
            read_at: Instant::now(),
        })
    }

    /// The lines of `entries` by partition.
    fn cut(&self, entries: &[Entry], partitions: usize, next_partition: &mut usize) -> Cut {
        let sticky = *next_partition % partitions;
        *next_partition = next_partition.wrapping_add(1);
        let mut cut = Cut {
            partitions: BTreeMap::new(),
            events: 0,
            rejected: 0,
            timestamp: chrono::Utc::now(),
        };
        for (entry, e) in entries.iter().enumerate() {
            let mut start = 0;
            for line in e.data.split_inclusive(|b| *b == b'\n') {
                let value = line.strip_suffix(b"\n").unwrap_or(line);
                let key = self.key.as_deref().and_then(|path| key_of(value, path));
                let partition = key
                    .as_deref()
                    .map_or(sticky, |k| partition_for(k, partitions));
                cut.partitions.entry(partition).or_default().push(Line {
                    entry,
                    start,
                    end: start + value.len(),
                    key,
                });
                start += line.len();
                cut.events += 1;
            }
        }
        cut
    }

    fn random(&mut self) -> u64 {
        // xorshift64*: jitter only.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// A batch's lines by partition, kept until every partition acknowledged its own.
struct Cut {
    partitions: BTreeMap<usize, Vec<Line>>,
    events: u64,
    /// Records the broker refused for their size, dropped.
    rejected: u64,
    timestamp: chrono::DateTime<chrono::Utc>,
}

/// One record to produce: where its value is in the batch's entries, and its key. The
/// value is copied out only into the request, so a batch is held once.
struct Line {
    entry: usize,
    start: usize,
    end: usize,
    key: Option<Vec<u8>>,
}

/// What every partition's requests of one attempt share.
struct Request<'a> {
    entries: &'a [Entry],
    timestamp: chrono::DateTime<chrono::Utc>,
    compression: Compression,
    max_bytes: usize,
    /// Records the broker refused for their size, counted across partitions.
    rejected: &'a Cell<u64>,
    /// `servicelog_sink_request_duration_seconds`: each produce request.
    duration: &'a Histogram,
}

impl Request<'_> {
    /// Produces `lines` to one partition in requests of at most `max_bytes` of keys and
    /// values, one at a time (in order); each acknowledged request leaves `lines`. A
    /// request the broker refuses as too large (over its `message.max.bytes`) is split in
    /// halves until it fits; a single record it refuses so is dropped with an error in
    /// the log, since no retry can deliver it.
    async fn produce_all(
        &self,
        partition: &PartitionClient,
        lines: &mut Vec<Line>,
    ) -> Result<(), ClientError> {
        let mut most = usize::MAX;
        while !lines.is_empty() {
            let mut bytes = 0;
            let n = lines
                .iter()
                .take_while(|l| {
                    let size = l.end - l.start + l.key.as_ref().map_or(0, Vec::len);
                    let fits = bytes == 0 || bytes + size <= self.max_bytes;
                    bytes += size;
                    fits
                })
                .count()
                .clamp(1, most);
            let records = lines[..n]
                .iter()
                .map(|l| Record {
                    key: l.key.clone(),
                    value: Some(self.entries[l.entry].data[l.start..l.end].to_vec()),
                    headers: BTreeMap::new(),
                    timestamp: self.timestamp,
                })
                .collect();
            let started = std::time::Instant::now();
            let produced = partition.produce(records, self.compression).await;
            self.duration.observe(started.elapsed().as_secs_f64());
            match produced {
                Ok(_) => {
                    lines.drain(..n);
                    most = usize::MAX;
                }
                Err(e) if too_large(&e) && n > 1 => {
                    tracing::debug!(topic = %partition.topic(), partition = partition.partition(), records = n, "a request over the broker's limit; splitting it");
                    most = n / 2;
                }
                Err(e) if too_large(&e) => {
                    let bytes = lines[0].end - lines[0].start;
                    tracing::error!(topic = %partition.topic(), partition = partition.partition(), bytes, error = %e, "the broker refuses a record this large; dropped");
                    self.rejected.set(self.rejected.get() + 1);
                    lines.drain(..1);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// The broker's answer to a request over its `message.max.bytes`.
fn too_large(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::ServerError {
            protocol_error: ProtocolError::MessageTooLarge | ProtocolError::RecordListTooLarge,
            ..
        }
    )
}

/// What to say about a failed request.
fn failure(e: &ClientError) -> Failure {
    let why = match e {
        ClientError::ServerError {
            protocol_error,
            error_message,
            ..
        } => match error_message {
            Some(m) if !m.is_empty() => format!("the broker answered {protocol_error}: {m}"),
            _ => format!("the broker answered {protocol_error}"),
        },
        other => other.to_string(),
    };
    Failure { why }
}

/// The key at `path` in `value` when it is a JSON object: a string as its text, any other
/// non-null value as its JSON.
fn key_of(value: &[u8], path: &[String]) -> Option<Vec<u8>> {
    let trimmed = value.trim_ascii_start();
    if !trimmed.starts_with(b"{") {
        return None;
    }
    let object: serde_json::Value = serde_json::from_slice(value).ok()?;
    let mut at = &object;
    for segment in path {
        at = at.as_object()?.get(segment)?;
    }
    match at {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(s.as_bytes().to_vec()),
        other => Some(other.to_string().into_bytes()),
    }
}

/// Java's default partitioner for a keyed record: `toPositive(murmur2(key)) % n`.
pub fn partition_for(key: &[u8], partitions: usize) -> usize {
    (murmur2(key) & 0x7fff_ffff) as usize % partitions.max(1)
}

/// Kafka's murmur2 (`org.apache.kafka.common.utils.Utils.murmur2`), seed `0x9747b28c`.
pub fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h: u32 = 0x9747_b28c ^ (data.len() as u32);
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// SASL from the mounted Secret: `username`, `password`, `mechanism` (default `PLAIN`).
fn read_sasl(dir: &Path) -> Result<SaslConfig, SaslError> {
    if !dir.is_dir() {
        return Err(SaslError::Missing {
            dir: dir.display().to_string(),
        });
    }
    let read = |key: &'static str| -> Result<Option<String>, SaslError> {
        let path = dir.join(key);
        match fs::read(&path) {
            Ok(bytes) => {
                let mut text = String::from_utf8(bytes).map_err(|_| SaslError::Read {
                    path: path.display().to_string(),
                    message: "not UTF-8".into(),
                })?;
                // `kubectl create secret --from-file` keeps the file's newline.
                if text.ends_with('\n') {
                    text.pop();
                    if text.ends_with('\r') {
                        text.pop();
                    }
                }
                Ok(Some(text))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(SaslError::Read {
                path: path.display().to_string(),
                message: e.to_string(),
            }),
        }
    };
    let missing = |missing| SaslError::Incomplete {
        dir: dir.display().to_string(),
        missing,
    };
    let username = read("username")?.ok_or_else(|| missing("username"))?;
    let password = read("password")?.ok_or_else(|| missing("password"))?;
    let credentials = SaslCredentials::new(username, password);
    match read("mechanism")?.as_deref().map(str::trim) {
        None | Some("PLAIN") => Ok(SaslConfig::Plain(credentials)),
        Some("SCRAM-SHA-256") => Ok(SaslConfig::ScramSha256(credentials)),
        Some("SCRAM-SHA-512") => Ok(SaslConfig::ScramSha512(credentials)),
        Some(other) => Err(SaslError::Mechanism {
            path: dir.join("mechanism").display().to_string(),
            value: other.to_owned(),
        }),
    }
}

/// TLS to the brokers: `caFile`'s CAs, else the system's; rustls on ring, as everywhere
/// in the sidecar.
fn tls_config(ca_file: Option<&str>) -> Result<Arc<rustls::ClientConfig>, KafkaError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let ca_err = |message: String| KafkaError::CaFile {
                path: path.to_owned(),
                message,
            };
            let pem = fs::read(path).map_err(|e| ca_err(e.to_string()))?;
            use rustls::pki_types::{CertificateDer, pem::PemObject};
            let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
                .filter_map(Result::ok)
                .collect();
            if certs.is_empty() {
                return Err(ca_err("holds no PEM certificate".into()));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| ca_err(e.to_string()))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            if found.certs.is_empty() {
                return Err(KafkaError::SystemRoots(
                    found
                        .errors
                        .first()
                        .map_or_else(|| "none found".to_owned(), ToString::to_string),
                ));
            }
            let (_, _) = roots.add_parsable_certificates(found.certs);
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| KafkaError::CaFile {
        path: ca_file.unwrap_or("(system roots)").to_owned(),
        message: e.to_string(),
    })?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Kafka's own test vectors (`UtilsTest.testMurmur2`), as signed Java ints.
    #[test]
    fn given_kafkas_test_vectors_then_murmur2_matches_java() {
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
        ];
        for (key, want) in cases {
            assert_eq!(
                murmur2(key) as i32,
                want,
                "murmur2({:?})",
                String::from_utf8_lossy(key)
            );
        }
    }

    #[test]
    fn given_a_json_line_then_the_key_is_its_field_and_other_lines_have_none() {
        let path = |p: &str| p.split('.').map(str::to_owned).collect::<Vec<_>>();
        let line = br#"{"user":"ana","req":{"id":42,"n":null}}"#;
        assert_eq!(key_of(line, &path("user")), Some(b"ana".to_vec()));
        assert_eq!(key_of(line, &path("req.id")), Some(b"42".to_vec()));
        assert_eq!(key_of(line, &path("req.n")), None);
        assert_eq!(key_of(line, &path("nope")), None);
        assert_eq!(key_of(b"level=info user=ana", &path("user")), None);
        assert_eq!(key_of(b"{not json", &path("user")), None);
    }

    #[test]
    fn given_mounted_credentials_then_the_mechanism_is_read_and_bad_ones_named() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            read_sasl(&dir.path().join("absent")),
            Err(SaslError::Missing { .. })
        ));
        fs::write(dir.path().join("username"), "svc\n").unwrap();
        assert!(matches!(
            read_sasl(dir.path()),
            Err(SaslError::Incomplete {
                missing: "password",
                ..
            })
        ));
        fs::write(dir.path().join("password"), "pw").unwrap();
        assert!(
            matches!(read_sasl(dir.path()), Ok(SaslConfig::Plain(c)) if c.username == "svc" && c.password == "pw")
        );
        fs::write(dir.path().join("mechanism"), "SCRAM-SHA-512\n").unwrap();
        assert!(matches!(
            read_sasl(dir.path()),
            Ok(SaslConfig::ScramSha512(_))
        ));
        fs::write(dir.path().join("mechanism"), "GSSAPI").unwrap();
        let err = read_sasl(dir.path()).unwrap_err();
        assert!(err.to_string().contains("\"GSSAPI\" is not PLAIN"), "{err}");
        assert!(!err.to_string().contains("pw"));
    }
}
