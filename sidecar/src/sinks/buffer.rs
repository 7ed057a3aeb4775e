//! The queue in front of each sink: bounded in bytes, in memory or on disk.
//!
//! The reader (or the syslog source) sends [`Batch`]es through a [`BufferTx`]; the sink's
//! thread takes them as [`Entry`]s from the [`BufferRx`] and hands each back with
//! [`BufferRx::done`] once the receiver took it. What a full buffer does is the sink's
//! `buffer.whenFull`:
//! - `block` (the default): `send` waits, so the reader stops reading — backpressure all
//!   the way to the files, nothing grows;
//! - `dropNewest`: the batch is dropped, counted in
//!   `servicelog_sink_dropped{reason="buffer_full"}`, and acked, so the file's
//!   checkpoint moves past events the user chose to lose.
//!
//! A batch larger than the whole buffer is still taken when the buffer is empty, so a
//! small `maxBytes` slows a sink down but never wedges it.
//!
//! **Memory** buffers ack a batch to its source only when the sink delivered it: the file
//! checkpoint stays behind everything queued, and a restart reads it again.
//!
//! **Disk** buffers ack a batch as soon as it is written to the buffer's segment files in
//! `<state dir>/buffers/<sink>/` (and, with `sync: batch`, flushed to the device), and
//! survive restarts: a sidecar killed while its sink is down delivers the buffered events
//! when it comes back. A segment that cannot be written (ENOSPC, EIO) is retried with
//! backoff, each failure counted in `servicelog_sink_write_errors`, and the batch stays
//! unacked meanwhile (a `dropNewest` buffer drops it instead, counted with
//! `reason="write_error"`). The record format is in `docs/architecture.md` ("Disk buffer
//! format"): each record carries a CRC-32 of its data and one of its header, so a
//! corrupt record is skipped and counted (`servicelog_buffer_records_corrupt`) and the
//! records after it are still found; segments of the first format (no checksums) are
//! still read. A `cursor` file (replaced atomically) records the first record not yet
//! delivered, and segments wholly behind it are deleted.
//!
//! A disk buffer is shared by every build of its sink (a config change that edits the
//! sink's URL starts a new sink on the same buffer): the newest receiver reads it, and an
//! older one stops at its next [`BufferRx::recv`] without acking anything, so what it had
//! in flight is delivered again by the new one (at least once). The newest build's
//! `maxBytes`, `whenFull` and `sync` are the ones in force.
//!
//! **A sink left out of the config** ([`BufferTx::retire`]) keeps delivering, but stops
//! retrying [`RETIRE_DEADLINE`] after it left: the batches it holds unwritten (and any
//! sent to it after that) are failed ([`BatchAck::fail`]), so the file reader reads them
//! again into the sinks in force; batches no reader can read again (syslog) are counted
//! in `servicelog_sink_dropped{reason="sink_retired"}`. At shutdown
//! ([`SinkShared::abandon`]) nothing is failed: unwritten batches stay unacked and are
//! read again at the next start.

use std::{
    collections::{HashMap, VecDeque},
    fs::{self, File, OpenOptions},
    io::{self, IoSlice, Write},
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    sync::{
        Arc, Condvar, Mutex, MutexGuard, OnceLock, Weak,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use prometheus_client::metrics::{counter::Counter, gauge::Gauge};
use servicelog_api::v1alpha1::{Buffer, BufferSync, BufferType, WhenFull};

use super::{Batch, BatchAck, SinkShared};
use crate::{metrics::Metrics, state};

/// Default `maxBytes` of a memory buffer: about eight of the reader's chunks.
pub const DEFAULT_MEMORY_BYTES: u64 = 2 << 20;
/// Default `maxBytes` of a disk buffer.
pub const DEFAULT_DISK_BYTES: u64 = 256 << 20;
/// How long a sink left out of the config keeps retrying before it gives its unwritten
/// batches up (see the module comment).
pub const RETIRE_DEADLINE: Duration = Duration::from_secs(5);
/// A segment file is closed for writing past this size.
const SEGMENT_BYTES: u64 = 8 << 20;
/// Records written now: `[magic][len u32][events u64][crc data u32][crc header u32][data]`,
/// little-endian; the header CRC covers the 20 bytes before it, so a length is trusted
/// only when it matches.
const MAGIC: u32 = 0x534c_4232; // "SLB2"
const HEADER: usize = 24;
/// Records of the first format, still read: `[magic][len u32][events u64][data]`.
const MAGIC_V1: u32 = 0x534c_4231; // "SLB1"
const HEADER_V1: usize = 16;
/// Longest record written or read; a longer length is corruption, never an allocation.
const MAX_RECORD: u32 = 256 << 20;
/// What a resync scan for the next header reads at a time.
const SCAN_CHUNK: usize = 64 << 10;

#[derive(Debug, thiserror::Error)]
pub enum BufferError {
    #[error("disk buffer {dir}: {source}")]
    Disk { dir: PathBuf, source: io::Error },
}

/// One batch as the sink thread sees it.
#[derive(Debug)]
pub struct Entry {
    /// Encoded events, each newline-terminated.
    pub data: Vec<u8>,
    pub events: u64,
    /// Memory buffers: the batch's ack, taken by [`BufferRx::done`]. An entry dropped
    /// with its ack still here was not written (the sink thread gave up): see
    /// [`Life::unwritten`].
    ack: Option<Arc<BatchAck>>,
    life: Option<Arc<Life>>,
    /// Disk buffers: where the record after this one starts.
    next: Option<Cursor>,
    generation: u64,
}

impl Drop for Entry {
    fn drop(&mut self) {
        if let (Some(ack), Some(life)) = (self.ack.take(), &self.life) {
            life.unwritten(&ack, self.events);
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Cursor {
    segment: u64,
    offset: u64,
}

/// Why [`BufferRx::recv_timeout`] returned without an entry.
#[derive(Debug, PartialEq, Eq)]
pub enum RecvTimeout {
    Timeout,
    /// Every sender is gone and nothing is queued, or this receiver was superseded: the
    /// sink thread should deliver what it holds and end.
    Closed,
}

/// Creates the buffer `def` describes for sink `sink`, in force at once.
pub fn new(
    sink: &str,
    def: Option<&Buffer>,
    state_dir: &Path,
    metrics: &Metrics,
    shared: &Arc<SinkShared>,
) -> Result<(BufferTx, BufferRx), BufferError> {
    let (tx, rx) = new_pending(sink, def, state_dir, metrics, shared)?;
    tx.activate();
    Ok((tx, rx))
}

/// Creates the buffer `def` describes for sink `sink`, to be put in force by
/// [`BufferTx::activate`] when its config is swapped in. Until then a disk buffer shared
/// with the sink's build in force is still read by that build, and if the build is
/// dropped unactivated (its config rejected) its receiver ends without reading.
pub fn new_pending(
    sink: &str,
    def: Option<&Buffer>,
    state_dir: &Path,
    metrics: &Metrics,
    shared: &Arc<SinkShared>,
) -> Result<(BufferTx, BufferRx), BufferError> {
    let def = def.cloned().unwrap_or_default();
    let gauge = metrics.buffer_gauge(sink);
    let common = Common {
        sink: sink.to_owned(),
        metrics: metrics.clone(),
        shared: shared.clone(),
        sent: metrics.sent_bytes_counter(sink),
    };
    let policy = Policy {
        max_bytes: def.max_bytes.unwrap_or(match def.kind {
            BufferType::Memory => DEFAULT_MEMORY_BYTES,
            BufferType::Disk => DEFAULT_DISK_BYTES,
        }),
        when_full: def.when_full,
        sync: def.sync,
    };
    metrics.set_buffer_capacity(sink, policy.max_bytes);
    let inner = match def.kind {
        BufferType::Memory => Arc::new(Inner {
            common,
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            disk: None,
            gauge,
            generation: AtomicU64::new(0),
            allocated: AtomicU64::new(0),
        }),
        BufferType::Disk => {
            let dir = state_dir.join("buffers").join(sink);
            let mut registry = shared
                .disk_buffers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let existing = registry.get(sink).and_then(Weak::upgrade);
            let inner = match existing {
                Some(inner) => inner,
                None => {
                    let disk = Disk::open(&dir).map_err(|source| BufferError::Disk {
                        dir: dir.clone(),
                        source,
                    })?;
                    let state = State {
                        bytes: disk.pending_bytes(),
                        ..State::default()
                    };
                    Arc::new(Inner {
                        common,
                        state: Mutex::new(state),
                        changed: Condvar::new(),
                        disk: Some(Mutex::new(disk)),
                        gauge,
                        generation: AtomicU64::new(0),
                        allocated: AtomicU64::new(0),
                    })
                }
            };
            registry.retain(|_, w| w.strong_count() > 0);
            registry.insert(sink.to_owned(), Arc::downgrade(&inner));
            inner
        }
    };
    // A disk buffer's new build reads it only once activated (`BufferTx::activate`, when
    // its config is swapped in): a config rejected after this sink was built must leave
    // the build in force reading, with its policy.
    let generation = inner.allocated.fetch_add(1, Ordering::AcqRel) + 1;
    {
        let mut st = inner.lock();
        if inner.disk.is_none() {
            st.policy = policy;
        }
        st.senders += 1;
        st.receivers += 1;
        inner.gauge.set(st.bytes as i64);
    }
    inner.changed.notify_all();
    let life = Arc::new(Life {
        sink: sink.to_owned(),
        retired: OnceLock::new(),
        metrics: metrics.clone(),
        shared: shared.clone(),
        generation,
        policy,
        activated: AtomicBool::new(false),
        cancelled: AtomicBool::new(false),
    });
    Ok((
        BufferTx {
            inner: inner.clone(),
            life: life.clone(),
        },
        BufferRx {
            inner,
            life,
            generation,
            closed: AtomicBool::new(false),
        },
    ))
}

#[derive(Debug)]
struct Common {
    sink: String,
    metrics: Metrics,
    shared: Arc<SinkShared>,
    /// `servicelog_sink_sent_bytes_total`: counted as entries are done (delivered).
    sent: Counter,
}

/// What the buffer's definition decides; a disk buffer takes its newest build's.
#[derive(Clone, Copy, Debug, Default)]
struct Policy {
    max_bytes: u64,
    when_full: WhenFull,
    sync: BufferSync,
}

/// What the two halves of one build of a sink share: whether the topology took the sink
/// out of the config, and when.
#[derive(Debug)]
struct Life {
    sink: String,
    retired: OnceLock<Instant>,
    metrics: Metrics,
    shared: Arc<SinkShared>,
    /// This build's generation (disk buffers: current once activated).
    generation: u64,
    /// This build's definition's policy, put in force at activation (disk buffers).
    policy: Policy,
    activated: AtomicBool,
    /// The build was dropped without being activated (its config was rejected).
    cancelled: AtomicBool,
}

impl Life {
    /// Retired more than [`RETIRE_DEADLINE`] ago: stop retrying.
    fn expired(&self) -> bool {
        self.retired
            .get()
            .is_some_and(|at| at.elapsed() >= RETIRE_DEADLINE)
    }

    /// Time left before the retirement deadline; `None` while the sink is in the config.
    fn left(&self) -> Option<Duration> {
        self.retired
            .get()
            .map(|at| RETIRE_DEADLINE.saturating_sub(at.elapsed()))
    }

    /// A batch of this build is given up unwritten. Once the sink is retired it is failed:
    /// the file reader reads it again into the sinks in force, and what cannot be read
    /// again is counted dropped. Otherwise (shutdown, or a sink thread that ended) it stays
    /// unacked, and the file reader reads it again at the next start.
    fn unwritten(&self, ack: &BatchAck, events: u64) {
        if self.retired.get().is_none() || self.shared.abandon.load(Ordering::Relaxed) {
            return;
        }
        ack.fail();
        if !ack.rereadable() {
            self.metrics
                .sink_dropped(&self.sink, "sink_retired", events);
        }
    }
}

#[derive(Debug)]
pub(crate) struct Inner {
    common: Common,
    state: Mutex<State>,
    /// Signalled on every send, done, retirement, and sender/receiver change.
    changed: Condvar,
    disk: Option<Mutex<Disk>>,
    gauge: Gauge,
    /// The generation of the build that reads a disk buffer; older ones stop, newer ones
    /// wait to be activated.
    generation: AtomicU64,
    /// The last generation handed to a build.
    allocated: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    policy: Policy,
    /// Memory buffers: the queued entries.
    queue: VecDeque<Entry>,
    /// Bytes queued (memory) or written and not yet delivered (disk).
    bytes: u64,
    senders: usize,
    receivers: usize,
    /// Disk buffers: the next record the newest receiver reads.
    read: Option<Cursor>,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn disk(&self) -> Option<MutexGuard<'_, Disk>> {
        self.disk
            .as_ref()
            .map(|d| d.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    fn wait<'a>(&'a self, st: MutexGuard<'a, State>, timeout: Duration) -> MutexGuard<'a, State> {
        self.changed
            .wait_timeout(st, timeout)
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .0
    }

    /// Drops a batch the sink will never see, counted for `reason`, and acks it: the
    /// user chose to lose it rather than wait.
    fn drop_batch(&self, batch: Batch, reason: &str) {
        self.common
            .metrics
            .sink_dropped(&self.common.sink, reason, batch.events);
        batch.ack.done();
        self.common.shared.pool.give(batch.data);
    }
}

/// The sending half, held by the sink's [`super::SinkHandle`].
#[derive(Debug)]
pub struct BufferTx {
    inner: Arc<Inner>,
    life: Arc<Life>,
}

/// A batch [`BufferTx::try_send`] could not queue, handed back unacked.
#[derive(Debug)]
pub enum Unsent {
    /// No sink thread reads the buffer any more (it gave up at shutdown).
    Closed(Batch),
    /// A blocking buffer is full (or its disk cannot be written) now: try again later.
    Full(Batch),
}

impl BufferTx {
    /// Queues `batch` as the buffer's `whenFull` says; a disk buffer retries a segment it
    /// cannot write with backoff. Fails, handing the batch back unacked, only when no sink
    /// thread reads the buffer any more (it gave up at shutdown). Once the sink is retired
    /// and past its deadline, a batch it cannot take is failed instead (see the module
    /// comment).
    pub fn send(&self, batch: Batch) -> Result<(), Batch> {
        match self.send_as(batch, true) {
            Ok(()) => Ok(()),
            Err(Unsent::Closed(batch) | Unsent::Full(batch)) => Err(batch),
        }
    }

    /// Like [`BufferTx::send`], but a batch a blocking buffer cannot take now (full, or a
    /// disk buffer that cannot be written) is handed back as [`Unsent::Full`] instead of
    /// waited for, so the file reader can go on with the files that do not route here.
    pub fn try_send(&self, batch: Batch) -> Result<(), Unsent> {
        self.send_as(batch, false)
    }

    fn send_as(&self, batch: Batch, block: bool) -> Result<(), Unsent> {
        let inner = &*self.inner;
        let len = batch.data.len() as u64;
        let mut st = inner.lock();
        loop {
            if inner.common.shared.abandon.load(Ordering::Relaxed) {
                return Err(Unsent::Closed(batch));
            }
            if st.receivers == 0 {
                if self.life.retired.get().is_none() {
                    return Err(Unsent::Closed(batch));
                }
                drop(st);
                self.give_up(batch);
                return Ok(());
            }
            if st.bytes == 0 || st.bytes + len <= st.policy.max_bytes {
                break;
            }
            match st.policy.when_full {
                WhenFull::DropNewest => {
                    drop(st);
                    inner.drop_batch(batch, "buffer_full");
                    return Ok(());
                }
                WhenFull::Block if self.life.expired() => {
                    drop(st);
                    self.give_up(batch);
                    return Ok(());
                }
                WhenFull::Block if !block => return Err(Unsent::Full(batch)),
                WhenFull::Block => {
                    let wait = self.life.left().map_or(Duration::from_millis(100), |l| {
                        l.min(Duration::from_millis(100))
                    });
                    st = inner.wait(st, wait);
                }
            }
        }
        if inner.disk.is_none() {
            st.bytes += len;
            st.queue.push_back(Entry {
                data: batch.data,
                events: batch.events,
                ack: Some(batch.ack),
                life: Some(self.life.clone()),
                next: None,
                generation: 0,
            });
        } else {
            let mut backoff = super::backoff();
            let mut failing = false;
            loop {
                let sync = st.policy.sync;
                let written = inner
                    .disk()
                    .map_or(Ok(()), |mut d| d.append(&batch.data, batch.events, sync));
                let e = match written {
                    Ok(()) => break,
                    Err(e) => e,
                };
                if e.kind() == io::ErrorKind::InvalidInput {
                    // Longer than any record: it can never be written.
                    tracing::error!(sink = %inner.common.sink, bytes = len, "a batch longer than a disk buffer record; dropped");
                    drop(st);
                    inner.drop_batch(batch, "too_large");
                    return Ok(());
                }
                inner.common.metrics.sink_write_error(&inner.common.sink);
                if inner.common.shared.abandon.load(Ordering::Relaxed) {
                    return Err(Unsent::Closed(batch));
                }
                if self.life.expired() {
                    drop(st);
                    self.give_up(batch);
                    return Ok(());
                }
                if st.policy.when_full == WhenFull::DropNewest {
                    tracing::warn!(sink = %inner.common.sink, error = %e, "writing the disk buffer; the batch is dropped (whenFull: dropNewest)");
                    drop(st);
                    inner.drop_batch(batch, "write_error");
                    return Ok(());
                }
                if !block {
                    tracing::warn!(sink = %inner.common.sink, error = %e, "writing the disk buffer failed; the batch stays unacked and is retried");
                    return Err(Unsent::Full(batch));
                }
                let wait = backoff.next().unwrap_or(super::MAX_BACKOFF);
                let wait = self.life.left().map_or(wait, |l| wait.min(l));
                if failing {
                    tracing::debug!(sink = %inner.common.sink, error = %e, retry_in = ?wait, "writing the disk buffer failed again");
                } else {
                    tracing::warn!(sink = %inner.common.sink, error = %e, retry_in = ?wait, "writing the disk buffer failed; the batch stays unacked and is retried");
                    failing = true;
                }
                st = inner.wait(st, wait);
            }
            if failing {
                tracing::info!(sink = %inner.common.sink, "writing the disk buffer again");
            }
            st.bytes += len + HEADER as u64;
            // On disk (and synced, if asked) is as good as delivered for the source.
            batch.ack.done();
            inner.common.shared.pool.give(batch.data);
        }
        inner.gauge.set(st.bytes as i64);
        drop(st);
        inner.changed.notify_all();
        Ok(())
    }

    fn give_up(&self, batch: Batch) {
        self.life.unwritten(&batch.ack, batch.events);
        self.inner.common.shared.pool.give(batch.data);
    }

    /// The topology took this build of the sink out of the config: it stops retrying
    /// [`RETIRE_DEADLINE`] from now and fails what it has not written.
    pub fn retire(&self) {
        if self.life.retired.set(Instant::now()).is_ok() {
            tracing::debug!(sink = %self.life.sink, "sink left the config");
        }
        self.inner.changed.notify_all();
    }

    /// This build's config is swapped in: a disk buffer's reading passes to this build
    /// (from the first record not yet delivered), under its definition's policy. Memory
    /// buffers are this build's own from the start.
    pub fn activate(&self) {
        if self.life.activated.swap(true, Ordering::AcqRel) {
            return;
        }
        let Some(disk) = &self.inner.disk else {
            return;
        };
        let mut st = self.inner.lock();
        st.policy = self.life.policy;
        st.read = Some(
            disk.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .acked,
        );
        self.inner
            .generation
            .fetch_max(self.life.generation, Ordering::AcqRel);
        drop(st);
        self.inner.changed.notify_all();
    }
}

impl Drop for BufferTx {
    fn drop(&mut self) {
        if !self.life.activated.load(Ordering::Acquire) {
            self.life.cancelled.store(true, Ordering::Release);
        }
        self.inner.lock().senders -= 1;
        self.inner.changed.notify_all();
    }
}

/// The receiving half, owned by the sink's thread.
#[derive(Debug)]
pub struct BufferRx {
    inner: Arc<Inner>,
    life: Arc<Life>,
    generation: u64,
    closed: AtomicBool,
}

impl BufferRx {
    /// Name of the sink this buffer feeds.
    pub fn sink(&self) -> &str {
        &self.inner.common.sink
    }

    /// The next entry, waiting for one; `None` once the buffer is closed (see
    /// [`RecvTimeout::Closed`]).
    pub fn recv(&self) -> Option<Entry> {
        loop {
            match self.recv_timeout(Duration::from_secs(3600)) {
                Ok(e) => return Some(e),
                Err(RecvTimeout::Closed) => return None,
                Err(RecvTimeout::Timeout) => {}
            }
        }
    }

    /// The next entry within `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Entry, RecvTimeout> {
        let deadline = Instant::now() + timeout;
        let inner = &*self.inner;
        let mut st = inner.lock();
        loop {
            if self.superseded() || self.life.cancelled.load(Ordering::Acquire) {
                self.closed.store(true, Ordering::Relaxed);
                return Err(RecvTimeout::Closed);
            }
            if self.pending() {
                // Not activated yet: the build in force reads.
            } else if inner.disk.is_none() {
                if let Some(entry) = st.queue.pop_front() {
                    return Ok(entry);
                }
            } else if let Some(entry) = self.read_disk(&mut st) {
                return Ok(entry);
            }
            // Disk buffers close with their records still on disk: they are delivered by
            // the next build of the sink, or after the restart.
            if st.senders == 0 && st.queue.is_empty() {
                self.closed.store(true, Ordering::Relaxed);
                return Err(RecvTimeout::Closed);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(RecvTimeout::Timeout);
            }
            st = inner.wait(st, deadline - now);
        }
    }

    fn read_disk(&self, st: &mut State) -> Option<Entry> {
        let inner = &*self.inner;
        let mut disk = inner.disk()?;
        loop {
            let at = st.read?;
            let mut data = inner.common.shared.pool.take(0);
            match disk.read(at, &mut data) {
                Ok(Found::Record { events, next }) => {
                    st.read = Some(next);
                    return Some(Entry {
                        data,
                        events,
                        ack: None,
                        life: None,
                        next: Some(next),
                        generation: self.generation,
                    });
                }
                Ok(Found::Nothing) => {
                    inner.common.shared.pool.give(data);
                    return None;
                }
                Ok(Found::Corrupt { at, next, why }) => {
                    inner.common.shared.pool.give(data);
                    inner
                        .common
                        .metrics
                        .buffer_record_corrupt(&inner.common.sink);
                    tracing::warn!(
                        sink = %inner.common.sink,
                        segment = at.segment,
                        offset = at.offset,
                        skipped = if next.segment == at.segment { next.offset - at.offset } else { 0 },
                        why,
                        "skipping a corrupt disk buffer record"
                    );
                    st.read = Some(next);
                    // Nothing before it is in flight: record it as passed, so a restart
                    // does not count it again.
                    if disk.acked == at {
                        let before = disk.pending_bytes();
                        if let Err(e) = disk.ack(next) {
                            tracing::warn!(sink = %inner.common.sink, error = %e, "recording a skipped record in the disk buffer");
                        }
                        st.bytes = st.bytes.saturating_sub(before - disk.pending_bytes());
                    }
                }
                Err(e)
                    if e.raw_os_error() != Some(libc::EIO)
                        && e.kind() != std::io::ErrorKind::InvalidData =>
                {
                    // Out of descriptors or memory, say: nothing is wrong with the records.
                    // Read again at the next wake-up (a send, a done, or the sink's wait).
                    tracing::warn!(sink = %inner.common.sink, segment = at.segment, offset = at.offset, error = %e, "reading the disk buffer; will retry");
                    inner.common.shared.pool.give(data);
                    return None;
                }
                Err(e) => {
                    // Unreadable (EIO): what is left of the segment cannot be delivered.
                    tracing::error!(sink = %inner.common.sink, segment = at.segment, offset = at.offset, error = %e, "reading the disk buffer; skipping the rest of the segment, counted as corrupt");
                    inner
                        .common
                        .metrics
                        .buffer_record_corrupt(&inner.common.sink);
                    inner.common.shared.pool.give(data);
                    st.read = Some(disk.skip_segment(at));
                    return None;
                }
            }
        }
    }

    /// True when a newer build of the sink reads this disk buffer, the process gave up
    /// on delivery at shutdown, or the sink left the config more than
    /// [`RETIRE_DEADLINE`] ago: the sink thread should stop retrying and end. A disk
    /// buffer whose senders are gone (the sink left the config, or shutdown) stops too:
    /// what it holds is safe on disk.
    pub fn stopped(&self) -> bool {
        let st = self.inner.lock();
        self.stopped_in(&st)
    }

    fn stopped_in(&self, st: &State) -> bool {
        self.superseded()
            || self.life.cancelled.load(Ordering::Acquire)
            || self.inner.common.shared.abandon.load(Ordering::Relaxed)
            || self.life.expired()
            || (self.inner.disk.is_some() && st.senders == 0)
    }

    /// Waits `wait` before a retry, less if the sink's retirement deadline comes first;
    /// false if the sink should stop instead (see [`BufferRx::stopped`]).
    pub fn pause(&self, wait: Duration) -> bool {
        let until = Instant::now() + wait;
        let mut st = self.inner.lock();
        loop {
            if self.stopped_in(&st) {
                return false;
            }
            let now = Instant::now();
            if now >= until {
                return true;
            }
            let left = until - now;
            let left = self.life.left().map_or(left, |l| left.min(l));
            st = self.inner.wait(st, left.max(Duration::from_millis(1)));
        }
    }

    /// A newer build of the sink reads this disk buffer.
    fn superseded(&self) -> bool {
        self.inner.disk.is_some() && self.inner.generation.load(Ordering::Acquire) > self.generation
    }

    /// A disk buffer's build not activated yet (see [`BufferTx::activate`]).
    fn pending(&self) -> bool {
        self.inner.disk.is_some() && self.inner.generation.load(Ordering::Acquire) < self.generation
    }

    /// `entry` was delivered, or given up on for good (a permanent rejection, already
    /// counted by the sink): its space is freed and its source may checkpoint past it.
    /// Entries must be done in the order they were received.
    pub fn done(&self, mut entry: Entry) {
        let inner = &*self.inner;
        let ack = entry.ack.take();
        inner.common.sent.inc_by(entry.data.len() as u64);
        let mut st = inner.lock();
        match (entry.next, inner.disk()) {
            (Some(next), Some(mut disk)) => {
                if entry.generation == inner.generation.load(Ordering::Acquire) {
                    let before = disk.pending_bytes();
                    if let Err(e) = disk.ack(next) {
                        tracing::warn!(sink = %inner.common.sink, error = %e, "recording delivery in the disk buffer; those events may be sent again after a restart");
                    }
                    st.bytes = st.bytes.saturating_sub(before - disk.pending_bytes());
                }
            }
            _ => {
                st.bytes = st.bytes.saturating_sub(entry.data.len() as u64);
                if let Some(ack) = &ack {
                    ack.done();
                }
            }
        }
        inner.gauge.set(st.bytes as i64);
        drop(st);
        inner.changed.notify_all();
        inner
            .common
            .shared
            .pool
            .give(std::mem::take(&mut entry.data));
    }
}

impl Drop for BufferRx {
    fn drop(&mut self) {
        let mut st = self.inner.lock();
        st.receivers -= 1;
        // A memory buffer nobody reads any more: its batches are given up (failed if the
        // sink was retired, else read again at the next start), and senders stop waiting.
        let queued = if self.inner.disk.is_none() && st.receivers == 0 {
            std::mem::take(&mut st.queue)
        } else {
            VecDeque::new()
        };
        drop(st);
        drop(queued);
        self.inner.changed.notify_all();
    }
}

/// What [`Disk::read`] found at a cursor.
#[derive(Debug, PartialEq, Eq)]
enum Found {
    /// A whole record, now in the caller's buffer.
    Record { events: u64, next: Cursor },
    /// Bytes at `at` that are not a valid record, skipped up to `next`: the next valid
    /// header, or the end of the segment.
    Corrupt {
        at: Cursor,
        next: Cursor,
        why: &'static str,
    },
    /// Nothing written there yet.
    Nothing,
}

/// A record header, of either format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Header {
    size: u64,
    len: u32,
    events: u64,
    /// CRC-32 of the data; `None` in the first format.
    crc: Option<u32>,
}

impl Header {
    fn record_len(&self) -> u64 {
        self.size + u64::from(self.len)
    }
}

/// The segment being read, kept open between records.
#[derive(Debug)]
struct Reader {
    id: u64,
    file: File,
    /// Its length, once it is no longer written to.
    sealed: Option<u64>,
}

/// Segment files of one disk buffer.
#[derive(Debug)]
struct Disk {
    dir: PathBuf,
    /// Segment ids present, oldest first.
    segments: VecDeque<u64>,
    /// The segment being appended to and its length.
    writer: File,
    write: Cursor,
    /// First record not yet delivered.
    acked: Cursor,
    reader: Option<Reader>,
    /// Appends that fail before writing, to test the retries.
    #[cfg(test)]
    fail_appends: usize,
}

impl Disk {
    fn open(dir: &Path) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let mut segments: Vec<u64> = fs::read_dir(dir)?
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_suffix(".seg")?.parse().ok()
            })
            .collect();
        segments.sort_unstable();
        let acked = read_cursor(dir).unwrap_or(Cursor {
            segment: segments.first().copied().unwrap_or(1),
            offset: 0,
        });
        // Segments wholly delivered before a crash.
        for id in segments.iter().filter(|id| **id < acked.segment) {
            let _ = fs::remove_file(segment_path(dir, *id));
        }
        segments.retain(|id| *id >= acked.segment);
        let last = segments.last().copied().unwrap_or(acked.segment);
        if segments.is_empty() {
            segments.push(last);
        }
        let path = segment_path(dir, last);
        let writer = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)?;
        let valid = valid_len(&writer)?;
        if valid < writer.metadata()?.len() {
            tracing::warn!(path = %path.display(), valid, "cutting a torn record off the disk buffer");
            writer.set_len(valid)?;
        }
        let acked = if acked.segment == last {
            Cursor {
                segment: last,
                offset: acked.offset.min(valid),
            }
        } else {
            acked
        };
        Ok(Self {
            dir: dir.to_owned(),
            segments: segments.into(),
            writer,
            write: Cursor {
                segment: last,
                offset: valid,
            },
            acked,
            reader: None,
            #[cfg(test)]
            fail_appends: 0,
        })
    }

    /// Bytes written and not yet delivered.
    fn pending_bytes(&self) -> u64 {
        let mut total = 0;
        for id in &self.segments {
            let len = if *id == self.write.segment {
                self.write.offset
            } else {
                fs::metadata(segment_path(&self.dir, *id)).map_or(0, |m| m.len())
            };
            total += if *id == self.acked.segment {
                len.saturating_sub(self.acked.offset)
            } else {
                len
            };
        }
        total
    }

    /// Appends one record; with `sync: batch`, flushes it to the device before returning.
    /// A failed append leaves the segment as it was. `InvalidInput`: `data` is longer than
    /// a record may be.
    fn append(&mut self, data: &[u8], events: u64, sync: BufferSync) -> io::Result<()> {
        let len = u32::try_from(data.len())
            .ok()
            .filter(|l| *l <= MAX_RECORD)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "batch too large for the disk buffer",
                )
            })?;
        #[cfg(test)]
        if self.fail_appends > 0 {
            self.fail_appends -= 1;
            return Err(io::ErrorKind::StorageFull.into());
        }
        if self.write.offset >= SEGMENT_BYTES {
            let next = self.write.segment + 1;
            self.writer = OpenOptions::new()
                .create(true)
                .read(true)
                .append(true)
                .open(segment_path(&self.dir, next))?;
            if sync == BufferSync::Batch {
                // The new file's name must survive a machine crash too.
                File::open(&self.dir)?.sync_all()?;
            }
            self.segments.push_back(next);
            self.write = Cursor {
                segment: next,
                offset: 0,
            };
        }
        let header = encode_header(len, events, data);
        let written = write_record(&mut self.writer, &header, data).and_then(|()| {
            if sync == BufferSync::Batch {
                self.writer.sync_data()
            } else {
                Ok(())
            }
        });
        if let Err(e) = written {
            // Cut a partial record off so the segment stays readable.
            let _ = self.writer.set_len(self.write.offset);
            return Err(e);
        }
        self.write.offset += (HEADER + data.len()) as u64;
        Ok(())
    }

    /// Reads the record at `at` into `data` (see [`Found`]). Allocates at most the length
    /// of the segment: a length is trusted only from a valid header whose record fits.
    fn read(&mut self, mut at: Cursor, data: &mut Vec<u8>) -> io::Result<Found> {
        loop {
            if self.reader.as_ref().is_none_or(|r| r.id != at.segment) {
                self.reader = None;
                match File::open(segment_path(&self.dir, at.segment)) {
                    Ok(file) => {
                        self.reader = Some(Reader {
                            id: at.segment,
                            file,
                            sealed: None,
                        });
                    }
                    Err(e)
                        if e.kind() == io::ErrorKind::NotFound
                            && at.segment < self.write.segment =>
                    {
                        at = self.skip_segment(at);
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            let Some(reader) = self.reader.as_mut() else {
                return Ok(Found::Nothing);
            };
            let end = if at.segment == self.write.segment {
                self.write.offset
            } else {
                match reader.sealed {
                    Some(len) => len,
                    None => *reader.sealed.insert(reader.file.metadata()?.len()),
                }
            };
            if at.offset >= end {
                if at.segment < self.write.segment {
                    at = self.skip_segment(at);
                    continue;
                }
                return Ok(Found::Nothing);
            }
            let file = &reader.file;
            let Some(header) = header_at(file, at.offset, end)? else {
                let next = scan(file, at.offset + 1, end)?.unwrap_or(end);
                return Ok(Found::Corrupt {
                    at,
                    next: Cursor {
                        segment: at.segment,
                        offset: next,
                    },
                    why: "no valid record header",
                });
            };
            let next = Cursor {
                segment: at.segment,
                offset: at.offset + header.record_len(),
            };
            data.clear();
            data.resize(header.len as usize, 0);
            file.read_exact_at(data, at.offset + header.size)?;
            if header.crc.is_some_and(|crc| crc != crc32fast::hash(data)) {
                return Ok(Found::Corrupt {
                    at,
                    next,
                    why: "data checksum mismatch",
                });
            }
            return Ok(Found::Record {
                events: header.events,
                next,
            });
        }
    }

    fn skip_segment(&self, at: Cursor) -> Cursor {
        let next = self
            .segments
            .iter()
            .copied()
            .find(|id| *id > at.segment)
            .unwrap_or(self.write.segment);
        Cursor {
            segment: next,
            offset: if next == at.segment { at.offset } else { 0 },
        }
    }

    /// Everything before `next` is delivered: persist the cursor, delete spent segments.
    fn ack(&mut self, next: Cursor) -> io::Result<()> {
        if next <= self.acked {
            return Ok(());
        }
        self.acked = next;
        // Spent segments go first: on a full volume that frees the room the cursor needs,
        // and a cursor naming a deleted segment reads on from the next one.
        while let Some(&id) = self.segments.front() {
            if id >= next.segment || id == self.write.segment {
                break;
            }
            self.segments.pop_front();
            fs::remove_file(segment_path(&self.dir, id))?;
        }
        let data = format!("{} {}\n", next.segment, next.offset);
        state::write_atomic(&self.dir.join("cursor"), data.as_bytes()).map_err(io::Error::other)
    }
}

/// Writes a record's header and data, in one system call when the kernel takes it all.
fn write_record(file: &mut File, header: &[u8], data: &[u8]) -> io::Result<()> {
    let n = file.write_vectored(&[IoSlice::new(header), IoSlice::new(data)])?;
    if n < header.len() {
        file.write_all(&header[n..])?;
        file.write_all(data)
    } else {
        file.write_all(&data[n - header.len()..])
    }
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:016}.seg"))
}

fn encode_header(len: u32, events: u64, data: &[u8]) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    h[4..8].copy_from_slice(&len.to_le_bytes());
    h[8..16].copy_from_slice(&events.to_le_bytes());
    h[16..20].copy_from_slice(&crc32fast::hash(data).to_le_bytes());
    let crc = crc32fast::hash(&h[..20]);
    h[20..24].copy_from_slice(&crc.to_le_bytes());
    h
}

/// The header in `h` (up to [`HEADER`] bytes read at a record's start), if it is one: a
/// known magic, a length within [`MAX_RECORD`] and, in the current format, a matching
/// header CRC.
fn parse_header(h: &[u8]) -> Option<Header> {
    let u32_at =
        |i: usize| -> Option<u32> { Some(u32::from_le_bytes(h.get(i..i + 4)?.try_into().ok()?)) };
    let u64_at =
        |i: usize| -> Option<u64> { Some(u64::from_le_bytes(h.get(i..i + 8)?.try_into().ok()?)) };
    let (size, crc) = match u32_at(0)? {
        MAGIC => {
            let header_crc = u32_at(20)?;
            if crc32fast::hash(&h[..20]) != header_crc {
                return None;
            }
            (HEADER, Some(u32_at(16)?))
        }
        MAGIC_V1 => (HEADER_V1, None),
        _ => return None,
    };
    let len = u32_at(4)?;
    (len <= MAX_RECORD).then_some(Header {
        size: size as u64,
        len,
        events: u64_at(8)?,
        crc,
    })
}

/// The header at `offset` of `file` if it is a valid one whose record ends by `end`.
fn header_at(file: &File, offset: u64, end: u64) -> io::Result<Option<Header>> {
    let avail = end.saturating_sub(offset);
    let n = usize::try_from(avail).map_or(HEADER, |a| a.min(HEADER));
    let mut h = [0u8; HEADER];
    match file.read_exact_at(&mut h[..n], offset) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    Ok(parse_header(&h[..n]).filter(|h| offset + h.record_len() <= end))
}

/// The offset of the first valid header of the current format in `from..end`: where
/// reading resumes after bytes that are no record. First-format records have no
/// checksum to tell a real header from data that looks like one, so the scan does not
/// stop at them: the rest of such a segment is skipped.
fn scan(file: &File, from: u64, end: u64) -> io::Result<Option<u64>> {
    let magic = MAGIC.to_le_bytes();
    let finder = memchr::memmem::Finder::new(&magic);
    let mut buf = vec![0u8; SCAN_CHUNK];
    let mut at = from;
    while at + magic.len() as u64 <= end {
        let n = usize::try_from(end - at).map_or(SCAN_CHUNK, |l| l.min(SCAN_CHUNK));
        file.read_exact_at(&mut buf[..n], at)?;
        for i in finder.find_iter(&buf[..n]) {
            let offset = at + i as u64;
            if header_at(file, offset, end)?.is_some_and(|h| h.crc.is_some()) {
                return Ok(Some(offset));
            }
        }
        if n < SCAN_CHUNK {
            break;
        }
        // Overlap, so a magic split between two reads is found.
        at += (n - (magic.len() - 1)) as u64;
    }
    Ok(None)
}

fn read_cursor(dir: &Path) -> Option<Cursor> {
    let text = fs::read_to_string(dir.join("cursor")).ok()?;
    let mut parts = text.split_whitespace();
    let segment = parts.next()?.parse().ok()?;
    let offset = parts.next()?.parse().ok()?;
    Some(Cursor { segment, offset })
}

/// Where appending goes on in the last segment: after its last whole record. Bytes that
/// are no record are passed over to the next valid header (the reader skips and counts
/// them); with no valid header after them, they are a torn write, cut off.
fn valid_len(file: &File) -> io::Result<u64> {
    let len = file.metadata()?.len();
    let mut at = 0u64;
    while at < len {
        match header_at(file, at, len)? {
            Some(h) => at += h.record_len(),
            None => match scan(file, at + 1, len)? {
                Some(next) => at = next,
                None => return Ok(at),
            },
        }
    }
    Ok(at)
}

/// The process-wide registry of open disk buffers, by sink name.
pub(crate) type DiskRegistry = Mutex<HashMap<String, Weak<Inner>>>;

#[cfg(test)]
mod tests {
    use std::thread;

    use super::*;

    fn batch(text: &str, ack: &Arc<BatchAck>) -> Batch {
        Batch {
            data: text.as_bytes().to_vec(),
            events: text.lines().count() as u64,
            ack: ack.clone(),
        }
    }

    fn buffer(def: Buffer, dir: &Path, shared: &Arc<SinkShared>) -> (BufferTx, BufferRx) {
        new("out", Some(&def), dir, &Metrics::new(), shared).unwrap()
    }

    #[test]
    fn memory_acks_only_when_done() {
        let dir = tempfile::tempdir().unwrap();
        let shared = Arc::new(SinkShared::default());
        let (tx, rx) = buffer(Buffer::default(), dir.path(), &shared);
        let ack = Arc::new(BatchAck::new(1));
        tx.send(batch("a\nb\n", &ack)).unwrap();
        let e = rx.recv_timeout(Duration::from_secs(1)).unwrap();
        assert_eq!(e.data, b"a\nb\n");
        assert_eq!(e.events, 2);
        assert!(!ack.is_complete());
        rx.done(e);
        assert!(ack.is_complete());
        drop(tx);
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(1)).unwrap_err(),
            RecvTimeout::Closed
        );
    }

    #[test]
    fn block_waits_for_room_and_drop_newest_counts() {
        let dir = tempfile::tempdir().unwrap();
        let shared = Arc::new(SinkShared::default());
        let def = Buffer {
            max_bytes: Some(4),
            ..Buffer::default()
        };
        let (tx, rx) = buffer(def, dir.path(), &shared);
        let ack = Arc::new(BatchAck::new(3));
        tx.send(batch("aaa\n", &ack)).unwrap();
        let sender = thread::spawn({
            let ack = ack.clone();
            move || {
                tx.send(batch("bbb\n", &ack)).unwrap();
                tx
            }
        });
        thread::sleep(Duration::from_millis(150));
        assert!(
            !sender.is_finished(),
            "a full blocking buffer must make send wait"
        );
        let first = rx.recv().unwrap();
        rx.done(first);
        let tx = sender.join().unwrap();
        assert_eq!(rx.recv().unwrap().data, b"bbb\n");

        let metrics = Metrics::new();
        let def = Buffer {
            max_bytes: Some(4),
            when_full: WhenFull::DropNewest,
            ..Buffer::default()
        };
        let (tx2, _rx2) = new("lossy", Some(&def), dir.path(), &metrics, &shared).unwrap();
        let ack2 = Arc::new(BatchAck::new(2));
        tx2.send(batch("aaa\n", &ack2)).unwrap();
        tx2.send(batch("x\ny\n", &ack2)).unwrap();
        assert!(
            metrics
                .render()
                .contains(r#"servicelog_sink_dropped_total{sink="lossy",reason="buffer_full"} 2"#)
        );
        drop(tx);
    }

    #[test]
    fn disk_survives_reopen_and_resumes_after_the_last_done() {
        let dir = tempfile::tempdir().unwrap();
        let def = Buffer {
            kind: BufferType::Disk,
            ..Buffer::default()
        };
        {
            let shared = Arc::new(SinkShared::default());
            let (tx, rx) = buffer(def.clone(), dir.path(), &shared);
            for i in 0..5 {
                let ack = Arc::new(BatchAck::new(1));
                tx.send(batch(&format!("line {i}\n"), &ack)).unwrap();
                assert!(ack.is_complete(), "on disk counts as taken");
            }
            let e = rx.recv().unwrap();
            assert_eq!(e.data, b"line 0\n");
            rx.done(e);
            // Read but not done: delivered again after the restart.
            assert_eq!(rx.recv().unwrap().data, b"line 1\n");
        }
        // A torn record at the end, as from a kill mid-write.
        let seg = segment_path(&dir.path().join("buffers/out"), 1);
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&MAGIC.to_le_bytes()).unwrap();
        f.write_all(&100u32.to_le_bytes()).unwrap();
        drop(f);
        let shared = Arc::new(SinkShared::default());
        let (tx, rx) = buffer(def, dir.path(), &shared);
        let mut got = Vec::new();
        while let Ok(e) = rx.recv_timeout(Duration::from_millis(50)) {
            got.push(String::from_utf8(e.data.clone()).unwrap());
            rx.done(e);
        }
        assert_eq!(got, ["line 1\n", "line 2\n", "line 3\n", "line 4\n"]);
        let ack = Arc::new(BatchAck::new(1));
        tx.send(batch("line 5\n", &ack)).unwrap();
        assert_eq!(rx.recv().unwrap().data, b"line 5\n");
    }

    #[test]
    fn disk_rolls_segments_and_deletes_delivered_ones() {
        let dir = tempfile::tempdir().unwrap();
        let def = Buffer {
            kind: BufferType::Disk,
            max_bytes: Some(64 << 20),
            ..Buffer::default()
        };
        let shared = Arc::new(SinkShared::default());
        let (tx, rx) = buffer(def, dir.path(), &shared);
        let chunk = "x".repeat(1 << 20) + "\n";
        for _ in 0..20 {
            tx.send(batch(&chunk, &Arc::new(BatchAck::new(1)))).unwrap();
        }
        let segs = || {
            fs::read_dir(dir.path().join("buffers/out"))
                .unwrap()
                .filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .path()
                        .extension()
                        .is_some_and(|x| x == "seg")
                })
                .count()
        };
        assert!(segs() >= 2, "20 MiB must span segments");
        for _ in 0..20 {
            let e = rx.recv().unwrap();
            assert_eq!(e.data.len(), chunk.len());
            rx.done(e);
        }
        assert_eq!(segs(), 1, "delivered segments are deleted");
    }

    #[test]
    fn a_new_build_of_a_disk_sink_takes_over_the_buffer() {
        let dir = tempfile::tempdir().unwrap();
        let def = Buffer {
            kind: BufferType::Disk,
            ..Buffer::default()
        };
        let shared = Arc::new(SinkShared::default());
        let (tx1, rx1) = buffer(def.clone(), dir.path(), &shared);
        tx1.send(batch("a\n", &Arc::new(BatchAck::new(1)))).unwrap();
        let in_flight = rx1.recv().unwrap();
        let (tx2, rx2) = buffer(def, dir.path(), &shared);
        drop(tx1);
        assert_eq!(
            rx1.recv_timeout(Duration::from_secs(1)).unwrap_err(),
            RecvTimeout::Closed
        );
        assert!(rx1.stopped());
        rx1.done(in_flight); // stale: ignored
        assert_eq!(
            rx2.recv().unwrap().data,
            b"a\n",
            "redelivered by the new build"
        );
        drop(tx2);
    }

    fn disk_def() -> Buffer {
        Buffer {
            kind: BufferType::Disk,
            ..Buffer::default()
        }
    }

    /// Everything the buffer delivers until it has nothing more for 100 ms, each done.
    fn drain(rx: &BufferRx) -> Vec<String> {
        let mut got = Vec::new();
        while let Ok(e) = rx.recv_timeout(Duration::from_millis(100)) {
            got.push(String::from_utf8(e.data.clone()).unwrap());
            rx.done(e);
        }
        got
    }

    fn corrupt_count(metrics: &Metrics) -> String {
        let text = metrics.render();
        text.lines()
            .find(|l| l.starts_with("servicelog_buffer_records_corrupt_total{sink=\"out\"}"))
            .unwrap_or("servicelog_buffer_records_corrupt_total{sink=\"out\"} (absent)")
            .to_owned()
    }

    /// Writes `data` as one record of the first format (no checksums).
    fn v1_record(data: &[u8], events: u64) -> Vec<u8> {
        let mut r = MAGIC_V1.to_le_bytes().to_vec();
        r.extend_from_slice(&(data.len() as u32).to_le_bytes());
        r.extend_from_slice(&events.to_le_bytes());
        r.extend_from_slice(data);
        r
    }

    /// Three records `one`, `two`, `three` in segment 1 of a disk buffer at `dir`; returns
    /// where `two` starts.
    fn three_records(dir: &Path) -> u64 {
        let shared = Arc::new(SinkShared::default());
        let (tx, _rx) = buffer(disk_def(), dir, &shared);
        for text in ["one\n", "two\n", "three\n"] {
            tx.send(batch(text, &Arc::new(BatchAck::new(1)))).unwrap();
        }
        (HEADER + 4) as u64
    }

    fn flip(path: &Path, offset: u64) {
        let mut bytes = fs::read(path).unwrap();
        bytes[offset as usize] ^= 0x5a;
        fs::write(path, bytes).unwrap();
    }

    #[test]
    fn given_a_record_whose_data_is_corrupt_when_read_then_the_records_around_it_are_delivered_and_it_is_counted()
     {
        let dir = tempfile::tempdir().unwrap();
        let two = three_records(dir.path());
        let seg = segment_path(&dir.path().join("buffers/out"), 1);
        flip(&seg, two + HEADER as u64 + 1);
        let metrics = Metrics::new();
        let shared = Arc::new(SinkShared::default());
        let (_tx, rx) = new("out", Some(&disk_def()), dir.path(), &metrics, &shared).unwrap();
        assert_eq!(drain(&rx), ["one\n", "three\n"]);
        assert_eq!(
            corrupt_count(&metrics),
            "servicelog_buffer_records_corrupt_total{sink=\"out\"} 1"
        );
    }

    #[test]
    fn given_a_record_whose_length_is_corrupt_when_read_then_reading_resumes_at_the_next_header() {
        let dir = tempfile::tempdir().unwrap();
        let two = three_records(dir.path());
        let metrics = Metrics::new();
        let shared = Arc::new(SinkShared::default());
        let (_tx, rx) = new("out", Some(&disk_def()), dir.path(), &metrics, &shared).unwrap();
        // Corrupted while the buffer is open (the reader reads the file), in the length
        // field: the header's CRC no longer matches and the length is not trusted.
        let seg = segment_path(&dir.path().join("buffers/out"), 1);
        flip(&seg, two + 5);
        assert_eq!(drain(&rx), ["one\n", "three\n"]);
        assert_eq!(
            corrupt_count(&metrics),
            "servicelog_buffer_records_corrupt_total{sink=\"out\"} 1"
        );
    }

    #[test]
    fn given_a_corrupt_header_mid_segment_when_the_buffer_reopens_then_the_records_after_it_are_kept()
     {
        let dir = tempfile::tempdir().unwrap();
        let two = three_records(dir.path());
        let seg = segment_path(&dir.path().join("buffers/out"), 1);
        let before = fs::metadata(&seg).unwrap().len();
        flip(&seg, two);
        let metrics = Metrics::new();
        let shared = Arc::new(SinkShared::default());
        let (tx, rx) = new("out", Some(&disk_def()), dir.path(), &metrics, &shared).unwrap();
        assert_eq!(
            fs::metadata(&seg).unwrap().len(),
            before,
            "a corrupt record followed by valid ones is no torn tail: nothing is cut"
        );
        tx.send(batch("four\n", &Arc::new(BatchAck::new(1))))
            .unwrap();
        assert_eq!(drain(&rx), ["one\n", "three\n", "four\n"]);
        assert_eq!(
            corrupt_count(&metrics),
            "servicelog_buffer_records_corrupt_total{sink=\"out\"} 1"
        );
    }

    #[test]
    fn given_segments_of_the_first_format_when_the_buffer_opens_then_they_are_delivered_and_appended_to()
     {
        let dir = tempfile::tempdir().unwrap();
        let bufdir = dir.path().join("buffers/out");
        fs::create_dir_all(&bufdir).unwrap();
        let mut old = v1_record(b"old 1\n", 1);
        old.extend(v1_record(b"old 2\nold 3\n", 2));
        fs::write(segment_path(&bufdir, 1), &old).unwrap();
        fs::write(segment_path(&bufdir, 2), v1_record(b"old 4\n", 1)).unwrap();
        {
            let shared = Arc::new(SinkShared::default());
            let (tx, rx) = buffer(disk_def(), dir.path(), &shared);
            let first = rx.recv().unwrap();
            assert_eq!(first.data, b"old 1\n");
            rx.done(first);
            tx.send(batch("new 5\n", &Arc::new(BatchAck::new(1))))
                .unwrap();
            // Not done: read again after the restart.
            assert_eq!(rx.recv().unwrap().events, 2);
        }
        let shared = Arc::new(SinkShared::default());
        let (_tx, rx) = buffer(disk_def(), dir.path(), &shared);
        assert_eq!(drain(&rx), ["old 2\nold 3\n", "old 4\n", "new 5\n"]);
    }

    #[test]
    fn given_a_length_beyond_the_segment_when_read_then_it_is_corruption_and_the_next_segment_is_read()
     {
        let dir = tempfile::tempdir().unwrap();
        let bufdir = dir.path().join("buffers/out");
        fs::create_dir_all(&bufdir).unwrap();
        // First format, so no checksum vouches against it: 200 MiB claimed in a 40-byte file.
        let mut bad = v1_record(b"whole\n", 1);
        bad.extend_from_slice(&MAGIC_V1.to_le_bytes());
        bad.extend_from_slice(&(200u32 << 20).to_le_bytes());
        bad.extend_from_slice(&1u64.to_le_bytes());
        bad.extend_from_slice(b"short\n");
        fs::write(segment_path(&bufdir, 1), &bad).unwrap();
        fs::write(segment_path(&bufdir, 2), v1_record(b"next\n", 1)).unwrap();
        let metrics = Metrics::new();
        let shared = Arc::new(SinkShared::default());
        let (_tx, rx) = new("out", Some(&disk_def()), dir.path(), &metrics, &shared).unwrap();
        let mut capacity = 0;
        let mut got = Vec::new();
        while let Ok(e) = rx.recv_timeout(Duration::from_millis(100)) {
            capacity = capacity.max(e.data.capacity());
            got.push(String::from_utf8(e.data.clone()).unwrap());
            rx.done(e);
        }
        assert_eq!(got, ["whole\n", "next\n"]);
        assert!(capacity < 1 << 20, "read buffers grew to {capacity} bytes");
        assert_eq!(
            corrupt_count(&metrics),
            "servicelog_buffer_records_corrupt_total{sink=\"out\"} 1"
        );
    }

    #[test]
    fn given_a_disk_buffer_that_cannot_be_written_when_sent_to_then_it_retries_counts_and_acks_once_written()
     {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Metrics::new();
        let shared = Arc::new(SinkShared::default());
        let (tx, rx) = new("out", Some(&disk_def()), dir.path(), &metrics, &shared).unwrap();
        tx.inner.disk().unwrap().fail_appends = 3;
        let ack = Arc::new(BatchAck::new(1));
        tx.send(batch("kept\n", &ack))
            .expect("a disk write error is retried, not handed back");
        assert!(ack.is_complete() && !ack.is_failed());
        assert_eq!(rx.recv().unwrap().data, b"kept\n");
        assert!(
            metrics
                .render()
                .contains("servicelog_sink_write_errors_total{sink=\"out\"} 3"),
            "{}",
            metrics.render()
        );
    }

    #[test]
    fn given_a_retired_sink_that_cannot_write_when_its_deadline_passes_then_its_unwritten_batches_fail()
     {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Metrics::new();
        let shared = Arc::new(SinkShared::default());
        // Room for "held" and "syslog", not "blocked" as well.
        let def = Buffer {
            max_bytes: Some(12),
            ..Buffer::default()
        };
        let (tx, rx) = new("out", Some(&def), dir.path(), &metrics, &shared).unwrap();
        let written = Arc::new(BatchAck::new(1));
        let held = Arc::new(BatchAck::new(1));
        let syslog = Arc::new(BatchAck::once(1));
        let blocked = Arc::new(BatchAck::new(1));
        tx.send(batch("written\n", &written)).unwrap();
        rx.done(rx.recv().unwrap());
        tx.send(batch("held\n", &held)).unwrap();
        let in_hand = rx.recv().unwrap();
        tx.send(batch("syslog\n", &syslog)).unwrap();
        let started = Instant::now();
        tx.retire();
        assert!(
            !rx.stopped(),
            "a retired sink keeps trying until its deadline"
        );
        // The buffer is full: this send waits, then fails the batch at the deadline.
        tx.send(batch("blocked\n", &blocked)).unwrap();
        assert!(
            blocked.is_failed(),
            "a batch a retired sink cannot take fails"
        );
        assert!(started.elapsed() >= RETIRE_DEADLINE - Duration::from_millis(50));
        assert!(
            !rx.pause(Duration::from_secs(60)),
            "past its deadline the sink stops"
        );
        drop(in_hand);
        drop(rx);
        assert!(held.is_failed(), "the batch the sink held unwritten fails");
        assert!(syslog.is_failed(), "so does the one still queued");
        assert!(written.is_complete() && !written.is_failed());
        assert!(
            metrics
                .render()
                .contains("servicelog_sink_dropped_total{sink=\"out\",reason=\"sink_retired\"} 1"),
            "a failed batch no reader can read again is counted dropped:\n{}",
            metrics.render()
        );
        let late = Arc::new(BatchAck::new(1));
        tx.send(batch("late\n", &late)).unwrap();
        assert!(
            late.is_failed(),
            "sent after the sink ended: failed at once"
        );
    }

    #[test]
    fn given_a_sink_in_the_config_when_its_thread_ends_then_nothing_is_failed() {
        let dir = tempfile::tempdir().unwrap();
        let shared = Arc::new(SinkShared::default());
        let (tx, rx) = buffer(Buffer::default(), dir.path(), &shared);
        let ack = Arc::new(BatchAck::new(1));
        tx.send(batch("a\n", &ack)).unwrap();
        drop(rx.recv().unwrap());
        drop(rx);
        assert!(
            !ack.is_complete(),
            "unwritten at shutdown: left for the next start"
        );
        assert!(tx.send(batch("b\n", &ack)).is_err());
    }
}
