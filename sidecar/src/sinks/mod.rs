//! Sinks: where routed events are written.
//!
//! Each sink is a thread fed by its [`buffer`] of [`Batch`]es: the pipeline encodes a run's
//! events per sink into one buffer and sends it whole, so a sink does one big write per
//! batch, and the buffer's byte bound is the backpressure (a slow sink stalls the reader
//! instead of growing memory; `whenFull: dropNewest` drops instead). After a batch is
//! written and flushed the sink counts it and acks it, which is what lets the file reader
//! checkpoint the file offset behind it (a disk buffer acks once the batch is on disk).
//!
//! A sink is config + build ([`build`]): a running sink keeps its definition, so a config
//! swap reuses every sink whose definition did not change, with its open file. A sink that
//! is no longer in any pipeline sees its channel close, drains what is queued, flushes and
//! ends.
//!
//! A write that fails (ENOSPC, EIO) is retried with backoff and counted in
//! `servicelog_sink_write_errors`; the batch stays unacked meanwhile, so nothing is dropped
//! while the sink is in the config. A sink the topology retired (a config change left it
//! out) stops retrying after [`buffer::RETIRE_DEADLINE`] and fails what it did not write
//! ([`BatchAck::fail`]), for the file reader to read it again into the sinks in force.

pub mod buffer;
pub mod file;
pub mod http;
pub mod kafka;
pub mod otlp;
pub mod stdout;

use std::{
    collections::BTreeMap,
    io,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use backon::{BackoffBuilder, ExponentialBuilder};
use prometheus_client::metrics::counter::Counter;
use servicelog_api::v1alpha1::{LineEncoding, Sink};

use self::buffer::{BufferError, BufferRx, BufferTx};
use crate::metrics::Metrics;

/// Problems building a sink from its definition.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("sink {name}: opening {path}: {source}")]
    Open {
        name: String,
        path: String,
        source: io::Error,
    },
    #[error("sink {name}: the definition sets none of stdout, file or http")]
    Empty { name: String },
    #[error("sink {name}: starting its thread: {source}")]
    Thread { name: String, source: io::Error },
    #[error("sink {name}: {source}")]
    Buffer { name: String, source: BufferError },
    #[error("sink {name}: {source}")]
    Http {
        name: String,
        source: http::HttpError,
    },
    #[error("sink {name}: {source}")]
    Otlp {
        name: String,
        source: otlp::OtlpError,
    },
    #[error("sink {name}: {source}")]
    Kafka {
        name: String,
        source: kafka::KafkaError,
    },
}

/// Counts the sinks a batch went to; the batch's offset may be checkpointed once every one
/// of them has written it.
#[derive(Debug)]
pub struct BatchAck {
    remaining: AtomicUsize,
    failed: AtomicBool,
    rereadable: bool,
}

impl BatchAck {
    /// The ack of a batch whose source can read it again if a sink fails it (a file).
    pub fn new(sinks: usize) -> Self {
        Self {
            remaining: AtomicUsize::new(sinks),
            failed: AtomicBool::new(false),
            rereadable: true,
        }
    }

    /// The ack of a batch nobody can read again (syslog): a sink that fails it counts
    /// its events dropped.
    pub fn once(sinks: usize) -> Self {
        Self {
            rereadable: false,
            ..Self::new(sinks)
        }
    }

    /// Whether a failed batch is read again (see [`BatchAck::new`], [`BatchAck::once`]).
    pub fn rereadable(&self) -> bool {
        self.rereadable
    }

    /// One sink has written the batch.
    pub fn done(&self) {
        self.remaining.fetch_sub(1, Ordering::AcqRel);
    }

    /// One sink gave the batch up without writing it (it was replaced or removed by a
    /// config change while the batch could not be written): the batch is complete but
    /// failed, and a reader that can read its events again (a file) does so.
    pub fn fail(&self) {
        self.failed.store(true, Ordering::Release);
        self.remaining.fetch_sub(1, Ordering::AcqRel);
    }

    pub fn is_complete(&self) -> bool {
        self.remaining.load(Ordering::Acquire) == 0
    }

    /// Complete, and some sink gave it up (see [`BatchAck::fail`]).
    pub fn is_failed(&self) -> bool {
        self.is_complete() && self.failed.load(Ordering::Acquire)
    }
}

/// One chunk's events for one sink, already encoded, newline-terminated.
#[derive(Debug)]
pub struct Batch {
    pub data: Vec<u8>,
    pub events: u64,
    pub ack: Arc<BatchAck>,
}

/// Buffers handed back by sinks for the reader to fill again, so the hot path does not
/// allocate (and fault in) a fresh quarter-megabyte per batch.
#[derive(Debug, Default)]
pub struct BufferPool {
    free: Mutex<Vec<Vec<u8>>>,
}

impl BufferPool {
    const KEEP: usize = 16;

    pub fn take(&self, capacity: usize) -> Vec<u8> {
        let reused = self.free.lock().ok().and_then(|mut free| free.pop());
        match reused {
            Some(buf) => buf,
            None => Vec::with_capacity(capacity),
        }
    }

    pub fn give(&self, mut buf: Vec<u8>) {
        buf.clear();
        if let Ok(mut free) = self.free.lock()
            && free.len() < Self::KEEP
        {
            free.push(buf);
        }
    }
}

/// Shared by every sink thread: the process gives up on unwritable batches once its
/// shutdown deadline has passed.
#[derive(Debug, Default)]
pub struct SinkShared {
    pub abandon: AtomicBool,
    pub pool: BufferPool,
    /// Where disk buffers live (`<state dir>/buffers/<sink>`).
    pub state_dir: PathBuf,
    /// Where the webhook mounts http sinks' credentials Secrets (`<dir>/<sink>/`).
    pub credentials_dir: PathBuf,
    threads: Mutex<Vec<(String, JoinHandle<()>)>>,
    disk_buffers: buffer::DiskRegistry,
    /// Why sinks are not delivering now, for the instance record.
    pub errors: SinkErrors,
}

/// Why each failing sink is not delivering, as its thread last said: the instance
/// record's `sinkErrors`, so an unknown topic or refused credentials show where the
/// operator looks, not only in the sidecar's log. A sink clears its entry once it
/// delivers again or ends; `build` tells a replaced build from its successor.
#[derive(Debug, Clone, Default)]
pub struct SinkErrors(Arc<Mutex<SinkErrorsInner>>);

#[derive(Debug, Default)]
struct SinkErrorsInner {
    version: u64,
    by_sink: BTreeMap<String, (u64, String)>,
}

impl SinkErrors {
    pub fn set(&self, sink: &str, build: u64, message: &str) {
        let entry = (build, message.to_owned());
        if let Ok(mut inner) = self.0.lock()
            && inner.by_sink.get(sink) != Some(&entry)
        {
            inner.by_sink.insert(sink.to_owned(), entry);
            inner.version += 1;
        }
    }

    pub fn clear(&self, sink: &str, build: u64) {
        if let Ok(mut inner) = self.0.lock()
            && inner.by_sink.get(sink).is_some_and(|(b, _)| *b == build)
        {
            inner.by_sink.remove(sink);
            inner.version += 1;
        }
    }

    /// A version that changes with every change, and the messages by sink.
    pub fn snapshot(&self) -> (u64, BTreeMap<String, String>) {
        self.0.lock().map_or_else(
            |_| (0, BTreeMap::new()),
            |inner| {
                let errors = inner
                    .by_sink
                    .iter()
                    .map(|(k, (_, m))| (k.clone(), m.clone()))
                    .collect();
                (inner.version, errors)
            },
        )
    }
}

impl SinkShared {
    pub fn new(state_dir: PathBuf, credentials_dir: PathBuf) -> Self {
        Self {
            state_dir,
            credentials_dir,
            ..Self::default()
        }
    }

    /// Sink threads still running, pruning the finished ones.
    pub fn running(&self) -> Vec<String> {
        let Ok(mut threads) = self.threads.lock() else {
            return Vec::new();
        };
        threads.retain(|(_, t)| !t.is_finished());
        threads.iter().map(|(n, _)| n.clone()).collect()
    }
}

/// What writes one sink's bytes.
pub trait Writer: Send {
    /// Writes a prefix of `data` (at least one byte unless it fails) and returns its
    /// length. A batch is only acked after all of it went through here and [`Writer::flush`].
    fn write_some(&mut self, data: &[u8]) -> io::Result<usize>;
    fn flush(&mut self) -> io::Result<()>;
    /// Called after a failed write, before retrying: e.g. reopen the file.
    fn recover(&mut self) {}
}

/// A running sink, shared by every pipeline that routes to it.
#[derive(Debug)]
pub struct SinkHandle {
    pub name: String,
    pub def: Sink,
    pub encoding: LineEncoding,
    tx: BufferTx,
}

impl SinkHandle {
    /// Queues a batch as the sink's buffer says (waiting while it is full, by default).
    /// Fails only when the sink has ended (it gave up at shutdown); the batch then stays
    /// unacked.
    pub fn send(&self, batch: Batch) -> Result<(), Batch> {
        self.tx.send(batch)
    }

    /// Queues a batch if the sink's buffer can take it now (see [`BufferTx::try_send`]).
    pub fn try_send(&self, batch: Batch) -> Result<(), buffer::Unsent> {
        self.tx.try_send(batch)
    }

    /// Its config was swapped in: the sink's buffer is this build's from now on (see
    /// [`buffer::new_pending`]). Built sinks are inactive until then.
    pub fn activate(&self) {
        self.tx.activate();
    }

    /// This sink is no longer in the config in force: it stops retrying after
    /// [`buffer::RETIRE_DEADLINE`] and fails the batches it could not write, for the file
    /// reader to read them again into the sinks in force.
    pub fn retire(&self) {
        self.tx.retire();
    }
}

/// Longest wait between two attempts at a failing write.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Waits between attempts at a failing write: 50 ms doubling to [`MAX_BACKOFF`], with
/// jitter so sinks failing together do not retry in step.
pub(crate) fn backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(MAX_BACKOFF)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build()
}

/// Starts the sink `def` describes.
pub fn build(
    def: &Sink,
    metrics: &Metrics,
    shared: &Arc<SinkShared>,
) -> Result<Arc<SinkHandle>, SinkError> {
    let name = def.name.clone();
    let (task, encoding): (Task, LineEncoding) = if let Some(s) = &def.stdout {
        (
            Task::Write(Box::new(stdout::StdoutWriter::new())),
            s.encoding,
        )
    } else if let Some(f) = &def.file {
        let w = file::FileWriter::open(&name, f)?;
        (Task::Write(Box::new(w)), f.encoding)
    } else if let Some(h) = &def.http {
        let task =
            http::HttpTask::build(def, h, &shared.credentials_dir, metrics).map_err(|source| {
                SinkError::Http {
                    name: name.clone(),
                    source,
                }
            })?;
        // Every http encoding is built from the events' JSON form.
        (Task::Http(Box::new(task)), LineEncoding::Json)
    } else if let Some(o) = &def.otlp {
        let task = otlp::OtlpTask::build(
            def,
            o,
            &shared.credentials_dir,
            metrics,
            shared.errors.clone(),
        )
        .map_err(|source| SinkError::Otlp {
            name: name.clone(),
            source,
        })?;
        // LogRecords are built from the events' JSON form.
        (Task::Otlp(Box::new(task)), LineEncoding::Json)
    } else if let Some(k) = &def.kafka {
        let task = kafka::KafkaTask::build(
            def,
            k,
            &shared.credentials_dir,
            metrics,
            shared.errors.clone(),
        )
        .map_err(|source| SinkError::Kafka {
            name: name.clone(),
            source,
        })?;
        (Task::Kafka(Box::new(task)), k.encoding)
    } else {
        return Err(SinkError::Empty { name });
    };
    let (tx, rx) = buffer::new_pending(
        &name,
        def.buffer.as_ref(),
        &shared.state_dir,
        metrics,
        shared,
    )
    .map_err(|source| SinkError::Buffer {
        name: name.clone(),
        source,
    })?;
    let counter = metrics.sink_counter(&name);
    let thread_name = name.clone();
    let thread_metrics = metrics.clone();
    let handle = thread::Builder::new()
        .name(format!("sink-{name}"))
        .stack_size(STACK)
        .spawn(move || match task {
            Task::Write(writer) => run(&thread_name, writer, rx, counter, &thread_metrics),
            Task::Http(task) => task.run(rx),
            Task::Otlp(task) => task.run(rx),
            Task::Kafka(task) => task.run(rx),
        })
        .map_err(|source| SinkError::Thread {
            name: name.clone(),
            source,
        })?;
    if let Ok(mut threads) = shared.threads.lock() {
        threads.retain(|(_, t)| !t.is_finished());
        threads.push((name.clone(), handle));
    }
    Ok(Arc::new(SinkHandle {
        name,
        def: def.clone(),
        encoding,
        tx,
    }))
}

/// Sink threads' stack: JSON parsing (Loki labels, `_bulk` responses) and TLS handshakes
/// need more than plain writes; untouched pages cost no memory.
const STACK: usize = 512 * 1024;

/// What a sink thread runs.
enum Task {
    Write(Box<dyn Writer>),
    Http(Box<http::HttpTask>),
    Otlp(Box<otlp::OtlpTask>),
    Kafka(Box<kafka::KafkaTask>),
}

fn run(name: &str, mut writer: Box<dyn Writer>, rx: BufferRx, counter: Counter, metrics: &Metrics) {
    tracing::debug!(sink = name, "sink started");
    let duration = metrics.request_duration(name);
    while let Some(entry) = rx.recv() {
        let failed = || metrics.sink_write_error(name);
        let started = std::time::Instant::now();
        let written = write_batch(name, writer.as_mut(), &entry.data, &failed, &|d| {
            rx.pause(d)
        });
        duration.observe(started.elapsed().as_secs_f64());
        if !written {
            // Dropping the entry and the buffer gives up what is unwritten (see
            // `buffer`): failed if the sink left the config, else read again at the next
            // start (or, on disk, delivered by the sink's next build).
            tracing::warn!(
                sink = name,
                "giving up on the unwritten batches: read again into the sinks in force if this sink left the config, else at the next start"
            );
            return;
        }
        counter.inc_by(entry.events);
        rx.done(entry);
    }
    if let Err(e) = writer.flush() {
        tracing::warn!(sink = name, error = %e, "flushing at close");
    }
    tracing::debug!(sink = name, "sink drained and closed");
}

/// Writes all of `data` and flushes, retrying with backoff; each failure is reported to
/// `failed`, and `pause` waits before the retry, false when the sink should give up.
fn write_batch(
    name: &str,
    writer: &mut dyn Writer,
    data: &[u8],
    failed: &dyn Fn(),
    pause: &dyn Fn(Duration) -> bool,
) -> bool {
    let mut done = 0;
    let mut backoff = backoff();
    let mut failing = false;
    loop {
        let result = if done < data.len() {
            writer.write_some(&data[done..]).map(|n| done += n)
        } else {
            match writer.flush() {
                Ok(()) => {
                    if failing {
                        tracing::info!(sink = name, "writing again");
                    }
                    return true;
                }
                Err(e) => Err(e),
            }
        };
        if let Err(e) = result {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            failed();
            let wait = backoff.next().unwrap_or(MAX_BACKOFF);
            if failing {
                tracing::debug!(sink = name, error = %e, retry_in = ?wait, "write failed again");
            } else {
                tracing::warn!(sink = name, error = %e, retry_in = ?wait, "write failed; retrying with backoff");
                failing = true;
            }
            if !pause(wait) {
                return false;
            }
            writer.recover();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Flaky {
        out: Arc<Mutex<Vec<u8>>>,
        fail_next: usize,
    }

    impl Writer for Flaky {
        fn write_some(&mut self, data: &[u8]) -> io::Result<usize> {
            if self.fail_next > 0 {
                self.fail_next -= 1;
                return Err(io::Error::other("disk on fire"));
            }
            let n = data.len().min(3);
            self.out.lock().unwrap().extend_from_slice(&data[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_failed_write_is_retried_from_where_it_stopped() {
        let out = Arc::new(Mutex::new(Vec::new()));
        let mut w = Flaky {
            out: out.clone(),
            fail_next: 2,
        };
        let failures = std::cell::Cell::new(0);
        assert!(write_batch(
            "t",
            &mut w,
            b"hello\nworld\n",
            &|| failures.set(failures.get() + 1),
            &|_| true
        ));
        assert_eq!(failures.get(), 2, "each failed write is counted");
        assert_eq!(&*out.lock().unwrap(), b"hello\nworld\n");
    }

    #[test]
    fn abandon_stops_retrying() {
        let out = Arc::new(Mutex::new(Vec::new()));
        let mut w = Flaky {
            out,
            fail_next: usize::MAX,
        };
        assert!(!write_batch("t", &mut w, b"x\n", &|| {}, &|_| false));
    }

    /// A file sink named `out` at `path`, with the metrics it counts into.
    fn file_sink(path: &std::path::Path, dir: &std::path::Path) -> (Arc<SinkHandle>, Metrics) {
        let def: Sink = serde_yaml::from_str(&format!(
            "{{name: out, file: {{path: \"{}\"}}}}",
            path.display()
        ))
        .unwrap();
        let metrics = Metrics::new();
        let shared = Arc::new(SinkShared::new(dir.to_owned(), dir.join("credentials")));
        let sink = build(&def, &metrics, &shared).unwrap();
        sink.activate();
        (sink, metrics)
    }

    fn send(sink: &SinkHandle, text: &str) -> Arc<BatchAck> {
        let ack = Arc::new(BatchAck::new(1));
        sink.send(Batch {
            data: text.as_bytes().to_vec(),
            events: text.lines().count() as u64,
            ack: ack.clone(),
        })
        .unwrap();
        ack
    }

    fn wait_for(what: &str, timeout: Duration, done: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + timeout;
        while !done() {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn write_errors(metrics: &Metrics) -> u64 {
        metrics
            .render()
            .lines()
            .find_map(|l| l.strip_prefix("servicelog_sink_write_errors_total{sink=\"out\"} "))
            .map_or(0, |n| n.parse().unwrap())
    }

    /// Points `path` at /dev/full: every write fails with ENOSPC, as on a full disk.
    fn fill(path: &std::path::Path) {
        let _ = std::fs::remove_file(path);
        std::os::unix::fs::symlink("/dev/full", path).unwrap();
    }

    #[test]
    fn given_a_file_sink_on_a_full_disk_when_it_is_fixed_then_it_delivers_and_counted_the_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.log");
        let (sink, metrics) = file_sink(&path, dir.path());
        send(&sink, "before\n");
        wait_for("the first line", Duration::from_secs(10), || {
            std::fs::read_to_string(&path).is_ok_and(|t| t == "before\n")
        });
        fill(&path);
        // The sink notices the path changed within a second; until then writes go to the
        // file it holds, whose name is gone.
        thread::sleep(file::RECHECK + Duration::from_millis(200));
        let ack = send(&sink, "during\n");
        wait_for(
            "failed writes to be counted",
            Duration::from_secs(10),
            || write_errors(&metrics) >= 2,
        );
        assert!(!ack.is_complete(), "an unwritten batch is not acked");
        std::fs::remove_file(&path).unwrap();
        wait_for(
            "the batch to be written once fixed",
            Duration::from_secs(10),
            || ack.is_complete(),
        );
        assert!(!ack.is_failed());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "during\n");
    }

    #[test]
    fn given_a_file_sink_on_a_full_disk_when_it_leaves_the_config_then_its_batches_fail_within_the_deadline()
     {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.log");
        fill(&path);
        let (sink, metrics) = file_sink(&path, dir.path());
        let acks: Vec<_> = (0..3).map(|i| send(&sink, &format!("{i}\n"))).collect();
        wait_for("a failed write", Duration::from_secs(10), || {
            write_errors(&metrics) >= 1
        });
        let retired = std::time::Instant::now();
        sink.retire();
        wait_for(
            "every batch to fail",
            buffer::RETIRE_DEADLINE + Duration::from_secs(2),
            || acks.iter().all(|a| a.is_failed()),
        );
        assert!(retired.elapsed() >= buffer::RETIRE_DEADLINE - Duration::from_millis(100));
        let late = send(&sink, "late\n");
        wait_for(
            "a batch sent after the sink gave up to fail",
            Duration::from_secs(2),
            || late.is_failed(),
        );
    }

    #[test]
    fn ack_completes_when_every_sink_wrote() {
        let ack = BatchAck::new(2);
        assert!(!ack.is_complete());
        ack.done();
        assert!(!ack.is_complete());
        ack.done();
        assert!(ack.is_complete());
        assert!(BatchAck::new(0).is_complete());
    }
}
