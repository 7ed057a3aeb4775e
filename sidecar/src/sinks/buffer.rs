//! The queue in front of each sink: bounded in bytes, in memory or on disk.
//!
//! The reader (or the syslog source) sends [`Batch`]es through a [`BufferTx`]; the sink's
//! thread takes them as [`Entry`]s from the [`BufferRx`] and hands each back with
//! [`BufferRx::done`] once the receiver took it. What a full buffer does is the sink's
//! `buffer.whenFull`:
//! - `block` (the default): `send` waits, so the reader stops reading — backpressure all
//!   the way to the files, nothing grows;
//! - `dropNewest`: the batch is dropped, counted in
//!   `servicelog_sink_dropped_total{reason="buffer_full"}`, and acked, so the file's
//!   checkpoint moves past events the user chose to lose.
//!
//! A batch larger than the whole buffer is still taken when the buffer is empty, so a
//! small `maxBytes` slows a sink down but never wedges it.
//!
//! **Memory** buffers ack a batch to its source only when the sink delivered it: the file
//! checkpoint stays behind everything queued, and a restart reads it again.
//!
//! **Disk** buffers ack a batch as soon as it is written to the buffer's segment files in
//! `<state dir>/buffers/<sink>/`, and survive restarts: a sidecar killed while its sink is
//! down delivers the buffered events when it comes back. Records are
//! `[magic u32][len u32][events u64][data]`, appended to 8 MiB segments; a `cursor` file
//! (replaced atomically) records the first record not yet delivered, and segments wholly
//! behind it are deleted. A torn last record (the process killed mid-write) is cut off at
//! the next open. Data is written, not fsynced: the buffer survives the process dying, not
//! the machine (an `emptyDir` does not outlive its pod either).
//!
//! A disk buffer is shared by every build of its sink (a config change that edits the
//! sink's URL starts a new sink on the same buffer): the newest receiver reads it, and an
//! older one stops at its next [`BufferRx::recv`] without acking anything, so what it had
//! in flight is delivered again by the new one (at least once).

use std::{
    collections::{HashMap, VecDeque},
    fs::{self, File, OpenOptions},
    io::{self, Read, Seek, SeekFrom, Write},
    path::{Path, PathBuf},
    sync::{
        Arc, Condvar, Mutex, MutexGuard, Weak,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use prometheus_client::metrics::gauge::Gauge;
use servicelog_api::v1alpha1::{Buffer, BufferType, WhenFull};

use super::{Batch, BatchAck, SinkShared};
use crate::{metrics::Metrics, state};

/// Default `maxBytes` of a memory buffer: about eight of the reader's chunks.
pub const DEFAULT_MEMORY_BYTES: u64 = 2 << 20;
/// Default `maxBytes` of a disk buffer.
pub const DEFAULT_DISK_BYTES: u64 = 256 << 20;
/// A segment file is closed for writing past this size.
const SEGMENT_BYTES: u64 = 8 << 20;
const MAGIC: u32 = 0x534c_4231; // "SLB1"
const HEADER: usize = 16;
/// Longest record accepted when reading a segment back; anything longer is corruption.
const MAX_RECORD: u32 = 256 << 20;

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
    ack: Option<Arc<BatchAck>>,
    /// Disk buffers: where the record after this one starts.
    next: Option<Cursor>,
    generation: u64,
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

/// Creates the buffer `def` describes for sink `sink`.
pub fn new(
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
        when_full: def.when_full,
        metrics: metrics.clone(),
        shared: shared.clone(),
    };
    let inner = match def.kind {
        BufferType::Memory => Arc::new(Inner {
            common,
            max_bytes: def.max_bytes.unwrap_or(DEFAULT_MEMORY_BYTES),
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            disk: None,
            gauge,
            generation: AtomicU64::new(0),
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
                        max_bytes: def.max_bytes.unwrap_or(DEFAULT_DISK_BYTES),
                        state: Mutex::new(state),
                        changed: Condvar::new(),
                        disk: Some(Mutex::new(disk)),
                        gauge,
                        generation: AtomicU64::new(0),
                    })
                }
            };
            registry.retain(|_, w| w.strong_count() > 0);
            registry.insert(sink.to_owned(), Arc::downgrade(&inner));
            inner
        }
    };
    let generation = inner.generation.fetch_add(1, Ordering::AcqRel) + 1;
    {
        let mut st = inner.lock();
        st.senders += 1;
        st.receivers += 1;
        if let Some(disk) = &inner.disk {
            // A new receiver reads from the first record not yet delivered.
            let disk = disk
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            st.read = Some(disk.acked);
        }
        inner.gauge.set(st.bytes as i64);
    }
    inner.changed.notify_all();
    Ok((
        BufferTx {
            inner: inner.clone(),
        },
        BufferRx {
            inner,
            generation,
            closed: AtomicBool::new(false),
        },
    ))
}

#[derive(Debug)]
struct Common {
    sink: String,
    when_full: WhenFull,
    metrics: Metrics,
    shared: Arc<SinkShared>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    common: Common,
    max_bytes: u64,
    state: Mutex<State>,
    /// Signalled on every send, done, and sender/receiver change.
    changed: Condvar,
    disk: Option<Mutex<Disk>>,
    gauge: Gauge,
    /// Bumped for every new receiver of a disk buffer; older ones stop.
    generation: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
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
}

/// The sending half, held by the sink's [`super::SinkHandle`].
#[derive(Debug)]
pub struct BufferTx {
    inner: Arc<Inner>,
}

impl BufferTx {
    /// Queues `batch` as the buffer's `whenFull` says. Fails, handing the batch back
    /// unacked, only when no sink thread reads the buffer any more (it gave up at
    /// shutdown) or the disk cannot be written.
    pub fn send(&self, batch: Batch) -> Result<(), Batch> {
        let inner = &*self.inner;
        let len = batch.data.len() as u64;
        let mut st = inner.lock();
        loop {
            if st.receivers == 0 || inner.common.shared.abandon.load(Ordering::Relaxed) {
                return Err(batch);
            }
            if st.bytes == 0 || st.bytes + len <= inner.max_bytes {
                break;
            }
            match inner.common.when_full {
                WhenFull::DropNewest => {
                    drop(st);
                    inner.common.metrics.sink_dropped(
                        &inner.common.sink,
                        "buffer_full",
                        batch.events,
                    );
                    batch.ack.done();
                    inner.common.shared.pool.give(batch.data);
                    return Ok(());
                }
                WhenFull::Block => {
                    st = inner
                        .changed
                        .wait_timeout(st, Duration::from_millis(100))
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .0;
                }
            }
        }
        match inner.disk() {
            None => {
                st.bytes += len;
                st.queue.push_back(Entry {
                    data: batch.data,
                    events: batch.events,
                    ack: Some(batch.ack),
                    next: None,
                    generation: 0,
                });
            }
            Some(mut disk) => {
                if let Err(e) = disk.append(&batch.data, batch.events) {
                    tracing::error!(sink = %inner.common.sink, error = %e, "writing the disk buffer; the events stay unacked and are read again at the next start");
                    drop(disk);
                    drop(st);
                    return Err(batch);
                }
                drop(disk);
                st.bytes += len + HEADER as u64;
                // On disk is as good as delivered for the source.
                batch.ack.done();
                inner.common.shared.pool.give(batch.data);
            }
        }
        inner.gauge.set(st.bytes as i64);
        drop(st);
        inner.changed.notify_all();
        Ok(())
    }
}

impl Drop for BufferTx {
    fn drop(&mut self) {
        self.inner.lock().senders -= 1;
        self.inner.changed.notify_all();
    }
}

/// The receiving half, owned by the sink's thread.
#[derive(Debug)]
pub struct BufferRx {
    inner: Arc<Inner>,
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
            if self.superseded() {
                self.closed.store(true, Ordering::Relaxed);
                return Err(RecvTimeout::Closed);
            }
            if inner.disk.is_none() {
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
            st = inner
                .changed
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }

    fn read_disk(&self, st: &mut State) -> Option<Entry> {
        let mut disk = self.inner.disk()?;
        let at = st.read?;
        let mut data = self.inner.common.shared.pool.take(0);
        match disk.read(at, &mut data) {
            Ok(Some((events, next))) => {
                st.read = Some(next);
                Some(Entry {
                    data,
                    events,
                    ack: None,
                    next: Some(next),
                    generation: self.generation,
                })
            }
            Ok(None) => None,
            Err(e) => {
                tracing::error!(sink = %self.inner.common.sink, error = %e, "reading the disk buffer; skipping to the next segment");
                st.read = Some(disk.skip_segment(at));
                None
            }
        }
    }

    /// True when a newer build of the sink reads this disk buffer, or the process gave up
    /// on delivery at shutdown: the sink thread should stop retrying and end.
    /// A disk buffer whose senders are gone (the sink left the config, or shutdown) stops
    /// too: what it holds is safe on disk.
    pub fn stopped(&self) -> bool {
        self.superseded()
            || self.inner.common.shared.abandon.load(Ordering::Relaxed)
            || (self.inner.disk.is_some() && self.inner.lock().senders == 0)
    }

    fn superseded(&self) -> bool {
        self.inner.disk.is_some()
            && self.inner.generation.load(Ordering::Acquire) != self.generation
    }

    /// `entry` was delivered, or given up on for good (a permanent rejection, already
    /// counted by the sink): its space is freed and its source may checkpoint past it.
    /// Entries must be done in the order they were received.
    pub fn done(&self, entry: Entry) {
        let inner = &*self.inner;
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
                if let Some(ack) = &entry.ack {
                    ack.done();
                }
            }
        }
        inner.gauge.set(st.bytes as i64);
        drop(st);
        inner.changed.notify_all();
        inner.common.shared.pool.give(entry.data);
    }
}

impl Drop for BufferRx {
    fn drop(&mut self) {
        let mut st = self.inner.lock();
        st.receivers -= 1;
        // A memory buffer nobody reads any more: its batches stay unacked (read again at
        // the next start), and senders fail rather than wait forever.
        if self.inner.disk.is_none() && st.receivers == 0 {
            st.queue.clear();
        }
        drop(st);
        self.inner.changed.notify_all();
    }
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
    /// The segment being read, kept open between records.
    reader: Option<(u64, File)>,
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
        let mut writer = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)?;
        let valid = valid_len(&mut writer)?;
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

    fn append(&mut self, data: &[u8], events: u64) -> io::Result<()> {
        if self.write.offset >= SEGMENT_BYTES {
            let next = self.write.segment + 1;
            self.writer = OpenOptions::new()
                .create(true)
                .read(true)
                .append(true)
                .open(segment_path(&self.dir, next))?;
            self.segments.push_back(next);
            self.write = Cursor {
                segment: next,
                offset: 0,
            };
        }
        let len = u32::try_from(data.len())
            .ok()
            .filter(|l| *l <= MAX_RECORD)
            .ok_or_else(|| io::Error::other("batch too large for the disk buffer"))?;
        let mut record = Vec::with_capacity(HEADER + data.len());
        record.extend_from_slice(&MAGIC.to_le_bytes());
        record.extend_from_slice(&len.to_le_bytes());
        record.extend_from_slice(&events.to_le_bytes());
        record.extend_from_slice(data);
        if let Err(e) = self.writer.write_all(&record) {
            // Cut a partial record off so the segment stays readable.
            let _ = self.writer.set_len(self.write.offset);
            return Err(e);
        }
        self.write.offset += record.len() as u64;
        Ok(())
    }

    /// Reads the record at `at` into `data`: its event count and where the next starts;
    /// `None` when nothing was written there yet.
    fn read(&mut self, at: Cursor, data: &mut Vec<u8>) -> io::Result<Option<(u64, Cursor)>> {
        let end = if at.segment == self.write.segment {
            self.write.offset
        } else {
            u64::MAX
        };
        if at.offset >= end {
            return Ok(None);
        }
        if self.reader.as_ref().is_none_or(|(id, _)| *id != at.segment) {
            match File::open(segment_path(&self.dir, at.segment)) {
                Ok(f) => self.reader = Some((at.segment, f)),
                Err(e)
                    if e.kind() == io::ErrorKind::NotFound && at.segment < self.write.segment =>
                {
                    return self.read(self.skip_segment(at), data);
                }
                Err(e) => return Err(e),
            }
        }
        let Some((_, file)) = self.reader.as_mut() else {
            return Ok(None);
        };
        file.seek(SeekFrom::Start(at.offset))?;
        let mut header = [0u8; HEADER];
        match file.read_exact(&mut header) {
            Ok(()) => {}
            // The end of an older segment: go on with the next one.
            Err(e)
                if e.kind() == io::ErrorKind::UnexpectedEof && at.segment < self.write.segment =>
            {
                return self.read(self.skip_segment(at), data);
            }
            Err(e) => return Err(e),
        }
        let (magic, len, events) = parse_header(&header);
        if magic != MAGIC || len > MAX_RECORD {
            return Err(io::Error::other(format!(
                "no record at offset {} of segment {}",
                at.offset, at.segment
            )));
        }
        data.clear();
        data.resize(len as usize, 0);
        file.read_exact(data)?;
        Ok(Some((
            events,
            Cursor {
                segment: at.segment,
                offset: at.offset + HEADER as u64 + u64::from(len),
            },
        )))
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
        let data = format!("{} {}\n", next.segment, next.offset);
        state::write_atomic(&self.dir.join("cursor"), data.as_bytes()).map_err(io::Error::other)?;
        while let Some(&id) = self.segments.front() {
            if id >= next.segment || id == self.write.segment {
                break;
            }
            self.segments.pop_front();
            fs::remove_file(segment_path(&self.dir, id))?;
        }
        Ok(())
    }
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:016}.seg"))
}

fn parse_header(h: &[u8; HEADER]) -> (u32, u32, u64) {
    let u32_at = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    let mut events = [0u8; 8];
    events.copy_from_slice(&h[8..16]);
    (u32_at(0), u32_at(4), u64::from_le_bytes(events))
}

fn read_cursor(dir: &Path) -> Option<Cursor> {
    let text = fs::read_to_string(dir.join("cursor")).ok()?;
    let mut parts = text.split_whitespace();
    let segment = parts.next()?.parse().ok()?;
    let offset = parts.next()?.parse().ok()?;
    Some(Cursor { segment, offset })
}

/// Length of the whole records at the start of `file`.
fn valid_len(file: &mut File) -> io::Result<u64> {
    let len = file.metadata()?.len();
    let mut at = 0u64;
    let mut header = [0u8; HEADER];
    loop {
        if at + HEADER as u64 > len {
            return Ok(at);
        }
        file.seek(SeekFrom::Start(at))?;
        file.read_exact(&mut header)?;
        let (magic, rec, _) = parse_header(&header);
        let next = at + HEADER as u64 + u64::from(rec);
        if magic != MAGIC || rec > MAX_RECORD || next > len {
            return Ok(at);
        }
        at = next;
    }
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
}
