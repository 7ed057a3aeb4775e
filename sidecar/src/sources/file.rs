//! File sources: follow the files a config's globs match, route their lines, checkpoint.
//!
//! One thread reads every file, a chunk (256 KiB) at a time, round-robin. A chunk's
//! complete lines are routed under one pipeline (taken fresh per chunk, so a config swap
//! falls between chunks), encoded per sink into one buffer each, and sent as one batch per
//! sink. The chunk's end offset becomes the file's checkpoint once every sink it went to has
//! written it; batches complete in order per file because they are committed in the order
//! they were sent.
//!
//! Files are known by `(device, inode)`:
//! - a new file is found by a glob scan: at once when inotify reports a file created or
//!   renamed in a watched directory (checked every round), otherwise every second. It is
//!   read from its beginning, or from its checkpoint when the checkpoint fits it (its first
//!   bytes and the bytes before the offset are the recorded ones);
//! - rotation by rename keeps the inode: the renamed file is read to its end, then dropped
//!   once it has been idle for [`TailerOptions::rotate_grace`], no glob matches it, and
//!   every batch read from it is acknowledged — however long a sink is down — while the new
//!   file at the path is read from its beginning. After a restart, a checkpointed file
//!   rotated out of its glob is looked for by inode in its directory and finished;
//! - rotation by copytruncate shows as a file shorter than our offset: it is read again from
//!   the start (lines written between the copy and the truncation are lost to any reader —
//!   that is copytruncate's nature);
//! - a file deleted while open is read to its end, then dropped.
//!
//! A file is read only if it really is in the directory its glob names
//! ([`servicelog_api::validate::glob_dir`], where the webhook mounts the source's
//! volume): a symlink there pointing elsewhere (`app.log -> /etc/shadow`, or to a Secret
//! mounted in the sidecar) is not followed. It is checked on the resolved path before the
//! open and on the opened descriptor after it (`/proc/self/fd`), so swapping the link in
//! between does not help. Each such file is logged and counted
//! (`servicelog_files_refused_total{reason="outside_directory"}`) once while it stays.
//!
//! A line is only routed once its newline is there. A partial last line is held; it is
//! routed as a line only when its file is dropped (deleted or rotated away and idle) or
//! truncated. At shutdown it is not routed: the checkpoint stays before it and the next
//! start reads it whole. A line longer than its source's `maxLineBytes` is routed cut to
//! that size and the rest of it skipped (counted in `servicelog_lines_truncated_total`),
//! so memory stays bounded whatever a file holds.
//!
//! Batches are acknowledged per file, in the order they were sent: a sink that is stuck
//! holds back the checkpoints of the files whose lines went to it, not the others. A batch
//! a sink gave up unwritten (the sink was replaced by a config change) makes its file read
//! again from its last checkpoint, into the sinks now in force.
//!
//! # Waiting for data
//!
//! With nothing to read, the reader sleeps until a file in a watched directory is written,
//! created or renamed into it ([`Waker`]: a thread waiting for the reader's inotify
//! descriptor to be readable, only while the reader sleeps, so a busy reader's files cost
//! it nothing), a config swap or a stop request wakes it, or [`TailerOptions::idle_poll`]
//! (1 s, at most the rescan's period) passes — for directories that do not exist yet and
//! writes inotify cannot report (a network filesystem written from another host). It
//! sleeps [`TailerOptions::poll`] (100 ms) at most, as it always did, while batches wait for
//! their acks, a sink is full or a multi-line event waits for its timeout (acks do not wake
//! it), while a file it reads is not in a watched directory (rotated into another one,
//! deleted while open, reached through a link into a subdirectory), when inotify is
//! unavailable, and after a wake-up that found nothing to read (a write to a file no glob
//! matches, in a watched directory: such writes then wake it no more often than the poll
//! did). So an idle sidecar's reader wakes once a second, not ten times, and a line
//! written to a quiet file is read at once rather than at the next poll.
//!
//! # Read rate
//!
//! With [`TailerOptions::rate`] (the node agent's `--pod-rate-limit`, one reader per pod)
//! the lines read are paced by a token bucket: before a chunk's lines are routed the reader
//! waits for as many tokens (a burst at once, then the rate), so lines go out a chunk at a
//! time at the rate on average. It waits, it never drops: what is not read yet stays in the
//! files, the checkpoints stay exact, and acks keep being committed while it waits. Asked
//! to stop while it waits, it does not route that chunk: the checkpoint stays before it and
//! the next start reads it. The wait holds back only this reader's files, so one pod
//! printing faster than its rate cannot delay another pod's lines.
//!
//! # Container logs
//!
//! A `containerLogs` source (in the node agent) is a file source over the kubelet's files
//! of the pod's containers ([`cri::PodLogs::patterns`]) whose lines are container runtime
//! records: [`cri`] turns them into the application's lines, and a line whose last part
//! has not come yet holds the checkpoint at its first part, like a multi-line event. The
//! checkpoint then records how far each stream is delivered, so the other stream's lines
//! routed meanwhile are skipped, not sent again, when a restart reads from that part.
//!
//! # Multi-line events
//!
//! A source with `multiline` joins lines into events before routing: a line matching
//! `startPattern` starts an event, the lines after it that do not match are appended
//! (joined with `\n`), and the event is complete when the next start line comes, when it
//! has `maxLines` lines (or [`MAX_EVENT`] bytes), when its file gave no new line for
//! `timeout`, or when its file is dropped or truncated. A line that does not match with
//! no event open starts one (a trace whose head was cut by `maxLines` stays together).
//! The event in progress is held like a partial line: a chunk's checkpoint offset is the
//! start of that event, never past it, so a restart reads it again whole — at least once,
//! no gap — and shutdown does not route it.
//!
//! What sinks get: `encoding: raw` writes the joined lines (embedded newlines) and a
//! newline; `encoding: json` writes one JSON line. A `text` source's event is
//! `{"message": "line1\nline2"}`. For `json` and `logfmt` sources the event is read as a
//! whole first — a pretty-printed JSON object spanning lines is that object (written on one
//! line) — and otherwise its first line decides the routing (its level and fields: a JSON
//! log line followed by a plain-text stack trace routes by that line's level), while the
//! sinks get the whole text as `{"message": ...}`, so no line is lost or rewritten.

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    fs::{self, File},
    io::{self, Read, Seek, SeekFrom},
    num::NonZeroU32,
    os::{
        fd::{AsRawFd, OwnedFd},
        unix::fs::{MetadataExt, OpenOptionsExt},
    },
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc::{Receiver, RecvTimeoutError, Sender},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use arc_swap::ArcSwapOption;
use governor::{DefaultDirectRateLimiter, Quota, clock::Clock};
use servicelog_api::{
    rules::regex_builder,
    v1alpha1::{ContainerLogsSource, FileSource, Format, Multiline},
    validate::{glob_dir, parse_duration},
};

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};

use super::{
    checkpoint::{Checkpoints, Entry, FINGERPRINT_BYTES, FileId, Fingerprint, Streams, read_at},
    cri::{self, CriSpec, Decoder, PodLogs},
};
use crate::pipeline::{Ack, Batcher, Feed, Parked, Run};

/// Bytes read from a file at a time.
pub const CHUNK: usize = 256 * 1024;

/// A multi-line event is complete at this size, whatever its line count.
pub const MAX_EVENT: usize = 1024 * 1024;

/// The file sources of the config in force and the pipeline that routes their lines,
/// taken together for each chunk.
pub type FileSources = Feed<FileSourceSpec>;

/// A file source of the config in force.
#[derive(Clone, Debug)]
pub struct FileSourceSpec {
    pub name: String,
    /// Its index among the router's sources.
    pub index: usize,
    pub paths: Vec<String>,
    pub multiline: Option<Arc<MultilineSpec>>,
    /// `maxLineBytes`: longer lines are cut to this.
    pub max_line: usize,
    /// A `containerLogs` source: the files are the kubelet's, each line a record of the
    /// container runtime ([`cri`]).
    pub cri: Option<CriSpec>,
}

impl FileSourceSpec {
    /// The source `name` (router source `index`) as `def` describes it, its lines cut at
    /// `max_line` bytes.
    pub fn new(
        name: &str,
        index: usize,
        def: &FileSource,
        max_line: usize,
    ) -> Result<Self, MultilineError> {
        let multiline = match &def.multiline {
            Some(m) => Some(Arc::new(MultilineSpec::compile(name, m)?)),
            None => None,
        };
        Ok(Self {
            name: name.to_owned(),
            index,
            paths: def.paths.clone(),
            multiline,
            max_line,
            cri: None,
        })
    }
}

impl FileSourceSpec {
    /// The `containerLogs` source `name` (router source `index`): the kubelet's files of
    /// its containers in `logs`.
    pub fn container_logs(
        name: &str,
        index: usize,
        def: &ContainerLogsSource,
        logs: &PodLogs,
        max_line: usize,
    ) -> Self {
        Self {
            name: name.to_owned(),
            index,
            paths: logs.patterns(def),
            multiline: None,
            max_line,
            cri: Some(CriSpec::new(def)),
        }
    }
}

/// `multiline` of a file source, compiled.
#[derive(Debug)]
pub struct MultilineSpec {
    pub start: regex::bytes::Regex,
    pub max_lines: u32,
    pub timeout: Duration,
}

/// A `multiline` that does not compile.
#[derive(Debug, thiserror::Error)]
#[error("source {name}: multiline: {message}")]
pub struct MultilineError {
    pub name: String,
    pub message: String,
}

impl MultilineSpec {
    pub const DEFAULT_MAX_LINES: u32 = 500;
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

    fn compile(source: &str, m: &Multiline) -> Result<Self, MultilineError> {
        let invalid = |message: String| MultilineError {
            name: source.to_owned(),
            message,
        };
        // The limits validation compiled it with, so it holds what the spec's budget counted.
        let start = regex_builder(&m.start_pattern)
            .build()
            .map_err(|e| invalid(format!("startPattern: {e}")))?;
        let timeout = match &m.timeout {
            Some(t) => parse_duration(t).map_err(|e| invalid(format!("timeout: {e}")))?,
            None => Self::DEFAULT_TIMEOUT,
        };
        Ok(Self {
            start,
            max_lines: m.max_lines.unwrap_or(Self::DEFAULT_MAX_LINES).max(1),
            timeout,
        })
    }
}

#[derive(Clone, Debug)]
pub struct TailerOptions {
    pub state_dir: PathBuf,
    /// Longest sleep when no file had new data while batches wait for acks, a sink is
    /// full or a multi-line event waits for its timeout (acks do not wake the reader), and
    /// whenever inotify cannot tell the reader that a file was written.
    pub poll: Duration,
    /// Longest sleep otherwise: writes, new files, config swaps and stop requests wake the
    /// reader before it (see the module docs, "Waiting for data").
    pub idle_poll: Duration,
    /// Glob re-scan period.
    pub rescan: Duration,
    /// How long a deleted or rotated-away file must be idle before it is dropped.
    pub rotate_grace: Duration,
    /// At shutdown, how long to wait for the sinks to ack what was sent.
    pub drain_timeout: Duration,
    /// Tell `eof` once every file has been read to its end and acked (for benchmarks).
    pub exit_on_eof: bool,
    /// Lines read per second at most (see the module docs, "Read rate"); `None` reads as
    /// fast as the sinks take.
    pub rate: Option<ReadRate>,
}

/// A read rate: `per_second` lines a second, up to `burst` at once after a quiet time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadRate {
    pub per_second: NonZeroU32,
    pub burst: NonZeroU32,
}

impl TailerOptions {
    pub fn new(state_dir: PathBuf) -> Self {
        Self {
            state_dir,
            poll: Duration::from_millis(100),
            idle_poll: Duration::from_secs(1),
            rescan: Duration::from_secs(1),
            rotate_grace: Duration::from_secs(2),
            drain_timeout: Duration::from_secs(8),
            exit_on_eof: false,
            rate: None,
        }
    }
}

/// How the rest of the process talks to the reader thread.
pub struct TailerLinks {
    pub current: Arc<ArcSwapOption<FileSources>>,
    pub stop: Arc<AtomicBool>,
    /// Config swaps and stop requests wake the reader early.
    pub wake: Receiver<()>,
    /// A sender of `wake`'s channel, for the reader's own [`Waker`].
    pub waker: Sender<()>,
    /// Told once everything is read and acked (with `exit_on_eof`).
    pub eof: Option<tokio::sync::mpsc::UnboundedSender<()>>,
    /// Set when what the files hold is to be read out before they go (the node agent
    /// draining a deleted pod): the read rate (`TailerOptions::rate`) no longer applies.
    pub unthrottled: Arc<AtomicBool>,
}

struct Tracked {
    path: PathBuf,
    /// The directory the opened file really is in (links resolved), if known: writes to
    /// the file wake the reader only when it is watched.
    dir: Option<PathBuf>,
    path_text: String,
    source: String,
    /// Where `source` is in the [`FileSources`] of the pipeline with the id beside it.
    spec: (u64, Option<usize>),
    file: File,
    /// Bytes read from the file so far.
    pos: u64,
    /// Read but not yet routed: the start of an unfinished line.
    partial: Vec<u8>,
    fingerprint: Fingerprint,
    /// Bumped on truncation and on a re-read so acks of batches from before it are not
    /// recorded.
    epoch: u64,
    reachable: bool,
    deleted: bool,
    /// At end of file since then.
    idle_since: Option<Instant>,
    /// The multi-line event in progress.
    pending: Option<Pending>,
    /// In a line longer than `maxLineBytes` whose head was routed: the rest of it is
    /// skipped up to its newline.
    skipping: bool,
    /// Where that cut line starts: checkpoints stay there while its tail is skipped.
    cut_at: u64,
    /// When a truncated line was last logged (once a minute per file).
    truncated_logged: Option<Instant>,
    /// Of a `containerLogs` source: the lines in progress.
    cri: Option<Decoder>,
    /// Read from a checkpoint held at a line in progress: how far each stream was
    /// delivered, for the decoder made at the first chunk.
    resume: Option<Streams>,
    /// Done with (deleted or rotated away, idle): its held line was routed; it is dropped
    /// once its batches are acknowledged.
    finishing: bool,
}

/// A multi-line event not complete yet.
#[derive(Debug)]
struct Pending {
    /// Its lines, joined with `\n`.
    text: Vec<u8>,
    lines: u32,
    /// File offset of its first line.
    start: u64,
    /// When its last line was read.
    last: Instant,
}

impl Tracked {
    /// Offset of the first byte not yet routed.
    fn routed_to(&self) -> u64 {
        self.pos - self.partial.len() as u64
    }

    /// Its source's spec in `files`, found by name once per pipeline, then by index.
    fn spec<'f>(&mut self, files: &'f FileSources) -> Option<&'f FileSourceSpec> {
        if self.spec.0 != files.pipeline.id {
            let at = files.sources.iter().position(|s| s.name == self.source);
            self.spec = (files.pipeline.id, at);
        }
        files.sources.get(self.spec.1?)
    }
}

struct InFlight {
    ack: Ack,
    epoch: u64,
    offset: u64,
    /// With a container's line in progress: how far each stream is delivered.
    streams: Option<Streams>,
}

/// inotify on the sources' directories: files created or renamed into them trigger a scan,
/// and (through [`Waker`]) any event, writes to their files too, wakes a sleeping reader.
struct Watch {
    inotify: Option<Inotify>,
    dirs: HashMap<PathBuf, WatchDescriptor>,
    buf: Vec<u8>,
    /// `None` with `inotify`, or when its thread could not start.
    waker: Option<Waker>,
}

impl Watch {
    fn new(wake: Sender<()>) -> Self {
        let inotify = Inotify::init()
            .inspect_err(|e| tracing::warn!(error = %e, "inotify unavailable; new files are found by the periodic rescan"))
            .ok();
        let waker = inotify.as_ref().and_then(|i| {
            rustix::io::dup(i)
                .map_err(io::Error::from)
                .and_then(|fd| Waker::start(fd, wake))
                .inspect_err(|e| tracing::warn!(error = %e, "cannot wait for writes with inotify; the file reader polls"))
                .ok()
        });
        Self {
            inotify,
            dirs: HashMap::new(),
            buf: vec![0; 4096],
            waker,
        }
    }

    /// Watches exactly `dirs` (adding a watch again is harmless: a directory deleted and
    /// made again is watched anew).
    fn set(&mut self, dirs: HashSet<PathBuf>) {
        let Some(inotify) = &mut self.inotify else {
            return;
        };
        let mut watches = inotify.watches();
        for (dir, wd) in self.dirs.extract_if(|dir, _| !dirs.contains(dir)) {
            // Fails when the directory is gone, which removed the watch already.
            let _ = watches.remove(wd);
            tracing::debug!(dir = %dir.display(), "no longer watching");
        }
        // Writes only wake the reader: `changed` looks for creates and renames.
        let mask = WatchMask::CREATE | WatchMask::MOVED_TO | WatchMask::MODIFY;
        for dir in dirs {
            match watches.add(&dir, mask) {
                Ok(wd) => {
                    self.dirs.insert(dir, wd);
                }
                Err(e) => {
                    if self.dirs.remove(&dir).is_some() {
                        tracing::debug!(dir = %dir.display(), error = %e, "cannot watch");
                    }
                }
            }
        }
    }

    /// Whether `dir` is watched.
    fn watches(&self, dir: &Path) -> bool {
        self.dirs.contains_key(dir)
    }

    /// Whether a write to a file of a watched directory wakes the reader: the longer
    /// [`TailerOptions::idle_poll`] may be slept while every file read is in one.
    fn wakes_on_writes(&self) -> bool {
        self.waker.as_ref().is_some_and(Waker::alive)
    }

    /// Before the reader sleeps: from now on a write wakes it.
    fn arm(&self) {
        if let Some(waker) = &self.waker {
            waker.arm();
        }
    }

    /// Whether the waker woke the reader since the last call.
    fn fired(&self) -> bool {
        self.waker.as_ref().is_some_and(Waker::fired)
    }

    /// Whether a file was created or renamed in a watched directory since the last call
    /// (or the kernel's queue overflowed). Reads every event queued, writes too, so the
    /// [`Waker`] sees the descriptor readable only for what came after.
    fn changed(&mut self) -> bool {
        let Some(inotify) = &mut self.inotify else {
            return false;
        };
        let mut changed = false;
        loop {
            match inotify.read_events(&mut self.buf) {
                Ok(events) => {
                    let mut any = false;
                    for event in events {
                        any = true;
                        // A write only woke the reader; anything else (a create, a rename,
                        // a watched directory gone, the queue overflowing) may be a file.
                        changed |= event.mask != EventMask::MODIFY;
                    }
                    if !any {
                        return changed;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return changed,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::warn!(error = %e, "reading inotify events; new files are found by the periodic rescan");
                    self.inotify = None;
                    self.waker = None;
                    return true;
                }
            }
        }
    }
}

/// Wakes a sleeping reader when its inotify instance has an event (a file in a watched
/// directory written, created or renamed into it): a thread that waits for the instance's
/// descriptor to be readable, only while the reader is armed — from going to sleep until
/// the thread has woken it — so the writes to a busy reader's files do not wake the thread
/// one by one. The reader alone reads the events, every round; an event queued between its
/// last read and going to sleep makes the descriptor readable, which wakes it at once.
struct Waker {
    shared: Arc<WakerShared>,
    thread: Option<JoinHandle<()>>,
}

struct WakerShared {
    armed: AtomicBool,
    stop: AtomicBool,
    /// The thread ended (poll(2) failed): the reader polls.
    ended: AtomicBool,
    /// Set with each wake-up the thread sends.
    fired: AtomicBool,
    /// Written at stop, so the thread's poll(2) returns.
    stop_fd: OwnedFd,
}

impl Waker {
    /// `inotify`: a duplicate of the reader's instance's descriptor.
    fn start(inotify: OwnedFd, wake: Sender<()>) -> io::Result<Self> {
        let stop_fd = rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
        )?;
        let shared = Arc::new(WakerShared {
            armed: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            ended: AtomicBool::new(false),
            fired: AtomicBool::new(false),
            stop_fd,
        });
        let thread = std::thread::Builder::new()
            .name("file-waker".into())
            .spawn({
                let shared = shared.clone();
                move || {
                    Self::run(&inotify, &shared, &wake);
                    shared.ended.store(true, Ordering::Release);
                    // The reader may be asleep for its long poll.
                    let _ = wake.send(());
                }
            })?;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    fn run(inotify: &OwnedFd, shared: &WakerShared, wake: &Sender<()>) {
        use rustix::event::{PollFd, PollFlags, poll};
        loop {
            if shared.stop.load(Ordering::Acquire) {
                return;
            }
            if !shared.armed.load(Ordering::Acquire) {
                std::thread::park();
                continue;
            }
            let mut fds = [
                PollFd::new(inotify, PollFlags::IN),
                PollFd::new(&shared.stop_fd, PollFlags::IN),
            ];
            match poll(&mut fds, None) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "waiting for inotify events; the file reader polls");
                    return;
                }
            }
            if shared.stop.load(Ordering::Acquire) {
                return;
            }
            // Until the reader has read the events and sleeps again, the descriptor stays
            // readable: wait to be armed again rather than wake it over and over.
            shared.armed.store(false, Ordering::Release);
            shared.fired.store(true, Ordering::Release);
            if wake.send(()).is_err() {
                return;
            }
        }
    }

    fn alive(&self) -> bool {
        !self.shared.ended.load(Ordering::Acquire)
    }

    /// Whether the thread sent a wake-up since the last call.
    fn fired(&self) -> bool {
        self.shared.fired.swap(false, Ordering::AcqRel)
    }

    fn arm(&self) {
        if !self.shared.armed.swap(true, Ordering::AcqRel)
            && let Some(thread) = &self.thread
        {
            thread.thread().unpark();
        }
    }
}

impl Drop for Waker {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        let _ = rustix::io::write(&self.shared.stop_fd, &1u64.to_ne_bytes());
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

/// Reusable per-chunk buffers.
struct Scratch {
    buf: Vec<u8>,
    batcher: Batcher,
}

pub struct Tailer {
    opts: TailerOptions,
    links: TailerLinks,
    files: BTreeMap<FileId, Tracked>,
    checkpoints: Checkpoints,
    /// Per file, the batches sent and not yet acknowledged, in sending order.
    inflight: BTreeMap<FileId, VecDeque<InFlight>>,
    /// Per file, batches a full sink could not take yet: the file is not read further
    /// until they are taken, while files that do not route there go on.
    parked: BTreeMap<FileId, Vec<Parked>>,
    scratch: Scratch,
    scanned_pipeline: u64,
    /// The sources' names and globs at the last scan: a new config whose sources are the
    /// same (most changes are to the rules) needs no scan of its own.
    scanned_sources: Vec<(String, Vec<String>)>,
    scanned_at: Option<Instant>,
    eof_told: bool,
    /// Paths refused at the last scan, so each is logged and counted once while it stays.
    refused: HashSet<PathBuf>,
    watch: Watch,
    /// Whether the checkpoints of files rotated out of their globs were looked for (once,
    /// at the first scan).
    recovered: bool,
    /// Paces the lines read, with [`TailerOptions::rate`].
    limiter: Option<DefaultDirectRateLimiter>,
    /// When waiting for the rate limit was last logged (once a minute).
    throttled_logged: Option<Instant>,
}

enum Progress {
    Data,
    Eof,
}

impl Tailer {
    pub fn new(opts: TailerOptions, links: TailerLinks) -> Self {
        let checkpoints = Checkpoints::load(&opts.state_dir);
        let watch = Watch::new(links.waker.clone());
        let limiter = opts.rate.map(|r| {
            DefaultDirectRateLimiter::direct(Quota::per_second(r.per_second).allow_burst(r.burst))
        });
        Self {
            opts,
            links,
            files: BTreeMap::new(),
            checkpoints,
            inflight: BTreeMap::new(),
            parked: BTreeMap::new(),
            scratch: Scratch {
                buf: Vec::new(),
                batcher: Batcher::default(),
            },
            scanned_pipeline: 0,
            scanned_sources: Vec::new(),
            scanned_at: None,
            eof_told: false,
            refused: HashSet::new(),
            watch,
            recovered: false,
            limiter,
            throttled_logged: None,
        }
    }

    /// Waits until `lines` more lines may be routed under the read rate, committing acks
    /// meanwhile (a commit may make a file be read again: the caller checks its epoch).
    /// False when the reader is asked to stop meanwhile: the lines are then not routed.
    fn throttle(&mut self, mut lines: usize) -> bool {
        let Some(burst) = self.opts.rate.map(|r| r.burst.get()) else {
            return true;
        };
        while lines > 0 {
            if self.links.unthrottled.load(Ordering::Relaxed) {
                return true;
            }
            let n = lines.min(burst as usize) as u32;
            let wait = match &self.limiter {
                Some(limiter) => match NonZeroU32::new(n).map(|n| limiter.check_n(n)) {
                    Some(Ok(Err(not_until))) => {
                        Some(not_until.wait_time_from(limiter.clock().now()))
                    }
                    // Allowed (or more than the burst, which `n` never is).
                    _ => None,
                },
                None => None,
            };
            let Some(wait) = wait else {
                lines -= n as usize;
                continue;
            };
            if self.links.stop.load(Ordering::Relaxed) {
                return false;
            }
            if self
                .throttled_logged
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(60))
            {
                self.throttled_logged = Some(Instant::now());
                tracing::info!(
                    lines_per_second = self.opts.rate.map_or(0, |r| r.per_second.get()),
                    "reading at the rate limit: the rest waits in the files (logged once a minute)"
                );
            }
            std::thread::sleep(wait.min(Duration::from_millis(50)));
            self.unpark_all();
            self.commit();
            self.flush_checkpoints(false);
        }
        true
    }

    /// How long to sleep with nothing to read (see the module docs, "Waiting for data").
    fn sleep(&self) -> Duration {
        let waiting = self.batches_in_flight() > 0
            || !self.parked.is_empty()
            || self.files.values().any(|t| t.pending.is_some());
        let unseen = self.files.values().any(|t| {
            !t.reachable || t.deleted || !t.dir.as_ref().is_some_and(|d| self.watch.watches(d))
        });
        if waiting || unseen || !self.watch.wakes_on_writes() {
            self.opts.poll
        } else {
            self.idle_sleep()
        }
    }

    /// The sleep when a write would wake the reader: at most the rescan's period.
    fn idle_sleep(&self) -> Duration {
        self.opts
            .idle_poll
            .min(self.opts.rescan)
            .max(self.opts.poll)
    }

    fn batches_in_flight(&self) -> usize {
        self.inflight.values().map(VecDeque::len).sum()
    }

    /// Sends the parked batches again; a file's entry goes once none of its batches is
    /// left waiting.
    fn unpark_all(&mut self) {
        self.parked.retain(|_, waiting| {
            let left: Vec<Parked> = std::mem::take(waiting)
                .into_iter()
                .filter_map(Parked::retry)
                .collect();
            *waiting = left;
            !waiting.is_empty()
        });
    }

    /// Runs until `stop`: then stops reading, waits (bounded) for the sinks to ack what was
    /// sent, and writes the final checkpoint.
    pub fn run(mut self) {
        // The last sleep was ended by the waker (a write, a create, a rename).
        let mut by_event = false;
        // Until then writes do not wake the reader: it polls.
        let mut unarmed_until: Option<Instant> = None;
        while !self.links.stop.load(Ordering::Relaxed) {
            let progressed = self.round();
            self.commit();
            self.flush_checkpoints(false);
            if progressed {
                by_event = false;
                continue;
            }
            self.maybe_tell_eof();
            // Woken by an event with nothing to read (writes to a file no glob matches in
            // a watched directory, or events of writes read already): poll unarmed for a
            // while, so that such writes wake the reader no more often than the poll did.
            if std::mem::take(&mut by_event) {
                unarmed_until = Some(Instant::now() + self.idle_sleep());
            }
            let sleep = if unarmed_until.is_some_and(|t| Instant::now() < t) {
                self.opts.poll
            } else {
                self.watch.arm();
                self.sleep()
            };
            match self.links.wake.recv_timeout(sleep) {
                Ok(()) => {
                    while self.links.wake.try_recv().is_ok() {}
                    by_event = self.watch.fired();
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => std::thread::sleep(sleep),
            }
        }
        let deadline = Instant::now() + self.opts.drain_timeout;
        loop {
            self.unpark_all();
            self.commit();
            if self.inflight.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                tracing::warn!(
                    batches = self.batches_in_flight(),
                    "sinks did not ack every batch in time; those lines are read again at the next start"
                );
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.flush_checkpoints(true);
        tracing::info!("file reader stopped");
    }

    /// One pass: re-scan when due, then one chunk from every file. True if any file had
    /// new data.
    fn round(&mut self) -> bool {
        let Some(files) = self.links.current.load_full() else {
            return false;
        };
        // The watch is read every round so its queue cannot fill.
        let created = self.watch.changed();
        if self.scanned_pipeline != files.pipeline.id && self.same_sources(&files) {
            self.scanned_pipeline = files.pipeline.id;
        }
        let due = created
            || self.scanned_pipeline != files.pipeline.id
            || self
                .scanned_at
                .is_none_or(|t| t.elapsed() >= self.opts.rescan);
        if due {
            self.scan(&files);
        }
        drop(files);
        self.unpark_all();
        let ids: Vec<FileId> = self.files.keys().copied().collect();
        let mut progressed = false;
        for id in ids {
            if self.links.stop.load(Ordering::Relaxed) {
                break;
            }
            // A file whose last batches a full sink could not take yet waits for them.
            if self.parked.contains_key(&id) {
                continue;
            }
            // Each chunk takes the pipeline in force when it starts.
            let Some(files) = self.links.current.load_full() else {
                break;
            };
            match self.read_chunk(id, &files) {
                Ok(Progress::Data) => progressed = true,
                Ok(Progress::Eof) => {}
                Err(e) => {
                    if let Some(t) = self.files.get(&id) {
                        tracing::warn!(path = %t.path.display(), error = %e, "reading; will retry");
                    }
                }
            }
            self.commit();
            // Per file, not per round: with many files a round commits a chunk of each,
            // and the byte bound (`WRITE_BYTES`) must hold across them.
            self.flush_checkpoints(false);
        }
        if let Some(files) = self.links.current.load_full() {
            self.flush_timed_out(&files);
        }
        self.drop_finished();
        progressed
    }

    /// Whether `files` has the sources of the last scan, by name and globs.
    fn same_sources(&self, files: &FileSources) -> bool {
        self.scanned_at.is_some()
            && files.sources.len() == self.scanned_sources.len()
            && files
                .sources
                .iter()
                .zip(&self.scanned_sources)
                .all(|(s, (name, paths))| s.name == *name && s.paths == *paths)
    }

    fn scan(&mut self, files: &FileSources) {
        self.scanned_pipeline = files.pipeline.id;
        self.scanned_sources = files
            .sources
            .iter()
            .map(|s| (s.name.clone(), s.paths.clone()))
            .collect();
        self.scanned_at = Some(Instant::now());
        let mut seen = HashSet::new();
        let mut refused = HashSet::new();
        let mut watched = HashSet::new();
        let mut roots = Vec::new();
        for source in &files.sources {
            for pattern in &source.paths {
                // Not there yet (the app has not created it): nothing can match.
                let Ok(root) = fs::canonicalize(glob_dir(pattern)) else {
                    continue;
                };
                watch_dirs(pattern, &root, &mut watched);
                roots.push((root.clone(), source.name.clone()));
                let paths = match glob::glob(pattern) {
                    Ok(paths) => paths,
                    Err(e) => {
                        tracing::warn!(source = %source.name, pattern, error = %e, "bad glob");
                        continue;
                    }
                };
                for path in paths.flatten() {
                    let Ok(real) = fs::canonicalize(&path) else {
                        continue;
                    };
                    if !real.starts_with(&root) {
                        if !self.refused.contains(&path) {
                            refuse(files, &source.name, &path, &real, &root);
                        }
                        refused.insert(path);
                        continue;
                    }
                    let Ok(meta) = fs::metadata(&path) else {
                        continue;
                    };
                    if !meta.is_file() {
                        continue;
                    }
                    let id = (meta.dev(), meta.ino());
                    if !seen.insert(id) {
                        continue;
                    }
                    match self.files.get_mut(&id) {
                        Some(t) => {
                            if t.path != path {
                                tracing::info!(from = %t.path.display(), to = %path.display(), "file renamed; following it");
                                t.path_text = path.display().to_string();
                                t.path = path;
                            }
                            if t.source != source.name {
                                t.source = source.name.clone();
                                t.spec = (0, None);
                            }
                        }
                        None => {
                            if let Some(outside) = self.open(id, &path, &source.name, &root, true) {
                                if !self.refused.contains(&path) {
                                    refuse(files, &source.name, &path, &outside, &root);
                                }
                                refused.insert(path);
                            }
                        }
                    }
                }
            }
        }
        self.refused = refused;
        self.watch.set(watched);
        if !self.recovered {
            self.recovered = true;
            self.recover_rotated(&roots);
        }
        for (id, t) in &mut self.files {
            let was = t.reachable;
            t.reachable = seen.contains(id);
            if was && !t.reachable {
                tracing::info!(path = %t.path.display(), "file no longer matched (rotated or deleted); reading it to its end");
            }
        }
        // Files whose source left the config are not read any more; their checkpoints
        // stay, should the source come back.
        let sources: HashSet<&str> = files.sources.iter().map(|s| s.name.as_str()).collect();
        // A file being finished (no glob matches it any more) whose source was renamed or
        // replaced goes on under the source whose directory holds it, so its rest is read.
        for t in self.files.values_mut() {
            if t.reachable || sources.contains(t.source.as_str()) {
                continue;
            }
            let dir = t.path.parent().and_then(|d| fs::canonicalize(d).ok());
            if let Some((_, name)) =
                dir.and_then(|dir| roots.iter().find(|(root, _)| dir.starts_with(root)))
            {
                t.source = name.clone();
                t.spec = (0, None);
            }
        }
        self.files
            .retain(|_, t| sources.contains(t.source.as_str()));
        // Checkpoints of files that are gone from their path.
        let files = &self.files;
        self.checkpoints.retain(|id, e| {
            files.contains_key(&id) || fs::metadata(&e.path).is_ok_and(|m| (m.dev(), m.ino()) == id)
        });
    }

    /// Checkpointed files that are no longer at their path (rotated out of the glob while
    /// the sidecar was down) with lines not yet acknowledged: found by inode in their
    /// directory, if that is under a source's directory, and read to their end.
    fn recover_rotated(&mut self, roots: &[(PathBuf, String)]) {
        for id in self.checkpoints.ids() {
            if self.files.contains_key(&id) {
                continue;
            }
            let Some(entry) = self.checkpoints.get(id).cloned() else {
                continue;
            };
            if fs::metadata(&entry.path).is_ok_and(|m| (m.dev(), m.ino()) == id) {
                continue; // still at its path; the glob decides
            }
            let Some(dir) = Path::new(&entry.path)
                .parent()
                .and_then(|d| fs::canonicalize(d).ok())
            else {
                continue;
            };
            let Some((root, source)) = roots
                .iter()
                .filter(|(root, _)| dir.starts_with(root))
                .find(|(_, name)| entry.source.as_deref().is_none_or(|s| s == name))
                .or_else(|| roots.iter().find(|(root, _)| dir.starts_with(root)))
            else {
                continue;
            };
            let Ok(listing) = fs::read_dir(&dir) else {
                continue;
            };
            let found = listing.flatten().map(|e| e.path()).find(|p| {
                fs::symlink_metadata(p).is_ok_and(|m| m.is_file() && (m.dev(), m.ino()) == id)
            });
            if let Some(path) = found {
                tracing::info!(was = %entry.path, now = %path.display(), offset = entry.offset, "a checkpointed file was rotated away while stopped; finishing it");
                let (root, source) = (root.clone(), source.clone());
                self.open(id, &path, &source, &root, false);
            }
        }
    }

    /// Follows the file at `path`, which the scan found under `root` as file `id` (and a
    /// glob matches it, if `reachable`). Returns where the opened file really is when that
    /// is outside `root` (a symlink swapped in since the scan): such a file is closed
    /// unread.
    fn open(
        &mut self,
        id: FileId,
        path: &Path,
        source: &str,
        root: &Path,
        reachable: bool,
    ) -> Option<PathBuf> {
        // Non-blocking, so a FIFO swapped in since the scan cannot hang the reader in
        // `open` (reads of regular files ignore the flag); it is then not a file, or not
        // the file the scan saw.
        let opened = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path);
        let mut file = match opened {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "opening");
                return None;
            }
        };
        let opened = opened_path(&file);
        if let Some(opened) = &opened
            && !opened.starts_with(root)
        {
            return Some(opened.clone());
        }
        let dir = opened.as_deref().and_then(Path::parent).map(Path::to_owned);
        let Ok(meta) = file.metadata() else {
            return None;
        };
        if !meta.is_file() || (meta.dev(), meta.ino()) != id {
            return None; // replaced between the scan and the open: the next scan sees the new one
        }
        let mut start = 0;
        let mut before = None;
        let mut resume = None;
        // What the file starts with now: a checkpoint written before its first read still
        // fits it after a restart.
        let mut fingerprint = Fingerprint::of(&read_at(&file, 0, FINGERPRINT_BYTES));
        if let Some(cp) = self.checkpoints.get(id) {
            if cp.fits(&file, meta.len()) {
                start = cp.offset;
                fingerprint = cp.fingerprint;
                before = cp.before;
                resume = cp.streams;
            } else if !reachable {
                return None;
            } else {
                tracing::info!(path = %path.display(), "checkpoint does not fit this file (new file or truncated); reading it from the beginning");
            }
        } else if !reachable {
            return None;
        }
        if start > 0
            && let Err(e) = file.seek(SeekFrom::Start(start))
        {
            tracing::warn!(path = %path.display(), error = %e, "seeking to the checkpoint");
            return None;
        }
        tracing::info!(path = %path.display(), source, offset = start, "following file");
        let path_text = path.display().to_string();
        self.checkpoints.set(Entry {
            dev: id.0,
            ino: id.1,
            path: path_text.clone(),
            offset: start,
            fingerprint,
            before,
            source: Some(source.to_owned()),
            streams: resume,
        });
        self.files.insert(
            id,
            Tracked {
                path: path.to_owned(),
                dir,
                path_text,
                source: source.to_owned(),
                spec: (0, None),
                file,
                pos: start,
                partial: Vec::new(),
                fingerprint,
                epoch: 0,
                reachable,
                deleted: false,
                idle_since: None,
                pending: None,
                skipping: false,
                cut_at: 0,
                truncated_logged: None,
                cri: None,
                resume,
                finishing: false,
            },
        );
        None
    }

    fn read_chunk(&mut self, id: FileId, files: &FileSources) -> io::Result<Progress> {
        // Checked before every read, not only at the end of the file: a copytruncated file
        // that the application refills past our offset before we look would otherwise be
        // read from the middle.
        if self.truncated(id, files)? {
            return Ok(Progress::Data);
        }
        let Some(t) = self.files.get_mut(&id) else {
            return Ok(Progress::Eof);
        };
        // A source that left the config between the scan and this chunk: nothing is read,
        // so nothing is skipped (the scan stops following the file).
        let Some(spec) = t.spec(files) else {
            return Ok(Progress::Eof);
        };
        let (max_line, source) = (spec.max_line, spec.name.as_str());
        let buf = &mut self.scratch.buf;
        let mut base = t.routed_to();
        let held = t.partial.len();
        if buf.len() < held + CHUNK {
            buf.resize(held + CHUNK, 0);
        }
        buf[..held].copy_from_slice(&t.partial);
        let n = loop {
            match t.file.read(&mut buf[held..held + CHUNK]) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        };
        if n == 0 {
            return self.at_eof(id);
        }
        t.idle_since = None;
        t.finishing = false;
        t.pos += n as u64;
        if t.fingerprint.len < FINGERPRINT_BYTES as u32 && t.pos > u64::from(t.fingerprint.len) {
            t.fingerprint = Fingerprint::of(&read_at(&t.file, 0, FINGERPRINT_BYTES));
        }
        let mut data_len = held + n;
        if t.skipping {
            // The tail of a line cut at `maxLineBytes` (nothing is held meanwhile).
            let Some(nl) = memchr::memchr(b'\n', &buf[..data_len]) else {
                return Ok(Progress::Data);
            };
            t.skipping = false;
            buf.copy_within(nl + 1..data_len, 0);
            data_len -= nl + 1;
            base += (nl + 1) as u64;
        }
        let complete = match memchr::memrchr(b'\n', &buf[..data_len]) {
            Some(i) => i + 1,
            None if data_len > max_line => {
                // No newline within `maxLineBytes`: route its head, skip the rest. The
                // batch's offset stays at the line's start, so a restart cuts it again.
                truncated(files, source, &t.path, &mut t.truncated_logged, data_len);
                if buf.len() == max_line {
                    buf.push(b'\n');
                } else {
                    buf[max_line] = b'\n';
                }
                t.partial.clear();
                t.skipping = true;
                t.cut_at = base;
                let epoch = t.epoch;
                self.route(id, files, max_line + 1, base, base, epoch);
                return Ok(Progress::Data);
            }
            None => 0,
        };
        t.partial.clear();
        if complete < data_len {
            t.partial.extend_from_slice(&buf[complete..data_len]);
        }
        if complete == 0 {
            return Ok(Progress::Data);
        }
        let offset = t.routed_to();
        let epoch = t.epoch;
        if self.limiter.is_some() {
            let lines = memchr::memchr_iter(b'\n', &self.scratch.buf[..complete]).count();
            // Stopping (read again at the next start, from the checkpoint before it), or
            // read again from its checkpoint meanwhile.
            if !self.throttle(lines) || self.files.get(&id).is_none_or(|t| t.epoch != epoch) {
                return Ok(Progress::Data);
            }
        }
        self.route(id, files, complete, base, offset, epoch);
        Ok(Progress::Data)
    }

    /// A file shorter than our offset was truncated (copytruncate): route what we held
    /// and read it again from the start.
    fn truncated(&mut self, id: FileId, files: &FileSources) -> io::Result<bool> {
        let Some(t) = self.files.get_mut(&id) else {
            return Ok(false);
        };
        let len = t.file.metadata()?.len();
        if len >= t.pos {
            return Ok(false);
        }
        tracing::info!(path = %t.path.display(), size = len, offset = t.pos, "file truncated (copytruncate?); reading it from the start");
        self.emit_partial(id, files);
        self.flush_pending(id, files);
        self.flush_cri(id, files);
        let Some(t) = self.files.get_mut(&id) else {
            return Ok(true);
        };
        t.file.seek(SeekFrom::Start(0))?;
        t.pos = 0;
        t.epoch += 1;
        // A new decoder: the old one's lines in progress were flushed, and the offsets it
        // resumed from (`Decoder::resuming`) are of the file before its truncation.
        t.cri = None;
        t.fingerprint = Fingerprint::default();
        t.idle_since = None;
        t.skipping = false;
        self.checkpoints.set(Entry {
            dev: id.0,
            ino: id.1,
            path: t.path_text.clone(),
            offset: 0,
            fingerprint: Fingerprint::default(),
            before: None,
            source: Some(t.source.clone()),
            streams: None,
        });
        t.resume = None;
        Ok(true)
    }

    /// End of file for now: notice deletion.
    fn at_eof(&mut self, id: FileId) -> io::Result<Progress> {
        let Some(t) = self.files.get_mut(&id) else {
            return Ok(Progress::Eof);
        };
        if t.file.metadata()?.nlink() == 0 && !t.deleted {
            tracing::info!(path = %t.path.display(), "file deleted; reading it to its end");
            t.deleted = true;
        }
        if t.reachable {
            // Caught up with the writer: if our path now names another file, it was just
            // rotated; look for the new one now rather than at the next periodic scan.
            let moved = fs::metadata(&t.path).map_or(true, |m| (m.dev(), m.ino()) != id);
            if moved {
                self.scanned_at = None;
            }
        }
        t.idle_since.get_or_insert_with(Instant::now);
        Ok(Progress::Eof)
    }

    /// Routes a held partial line as a whole line (its file will not complete it).
    fn emit_partial(&mut self, id: FileId, files: &FileSources) {
        let Some(t) = self.files.get_mut(&id) else {
            return;
        };
        if t.partial.is_empty() {
            return;
        }
        let buf = &mut self.scratch.buf;
        buf.clear();
        buf.extend_from_slice(&t.partial);
        buf.push(b'\n');
        let len = buf.len();
        let base = t.routed_to();
        t.partial.clear();
        let offset = t.pos;
        let epoch = t.epoch;
        self.route(id, files, len, base, offset, epoch);
    }

    /// Routes the multi-line event `id` holds as complete (timeout, or its file is done).
    fn flush_pending(&mut self, id: FileId, files: &FileSources) {
        let Some(t) = self.files.get_mut(&id) else {
            return;
        };
        // The spec first: without it nothing is taken, so nothing is lost.
        let Some(spec) = t.spec(files) else {
            return;
        };
        let Some(mut pending) = t.pending.take() else {
            return;
        };
        let mut run = self
            .scratch
            .batcher
            .run(&files.pipeline, spec.index, pending.text.len() + 1);
        emit_event(&mut run, &mut pending);
        let ack = run.finish_parking(self.parked.entry(id).or_default());
        // Every complete line is routed now: the file is routed to its held partial line
        // (or, in the tail of a cut line, to that line's start, never into its middle).
        let offset = if t.skipping { t.cut_at } else { t.routed_to() };
        self.inflight.entry(id).or_default().push_back(InFlight {
            ack,
            epoch: t.epoch,
            offset,
            streams: None,
        });
    }

    /// Routes the container lines `id` holds in progress as they are (its file will not
    /// complete them).
    fn flush_cri(&mut self, id: FileId, files: &FileSources) {
        let Some(t) = self.files.get_mut(&id) else {
            return;
        };
        let Some(spec) = t.spec(files) else {
            return;
        };
        let Some(decoder) = t.cri.as_mut().filter(|d| d.held_from().is_some()) else {
            return;
        };
        let mut run = self
            .scratch
            .batcher
            .run(&files.pipeline, spec.index, 64 << 10);
        for _ in 0..cri::route_unfinished(&mut run, decoder) {
            files.pipeline.metrics().line_truncated(&spec.name);
        }
        let ack = run.finish_parking(self.parked.entry(id).or_default());
        let offset = if t.skipping { t.cut_at } else { t.routed_to() };
        self.inflight.entry(id).or_default().push_back(InFlight {
            ack,
            epoch: t.epoch,
            offset,
            streams: None,
        });
    }

    /// Completes the multi-line events whose file gave no new line for their timeout.
    fn flush_timed_out(&mut self, files: &FileSources) {
        let mut due = Vec::new();
        for (id, t) in &mut self.files {
            let Some(last) = t.pending.as_ref().map(|p| p.last) else {
                continue;
            };
            // A source no longer in the config holds its event (read again if it returns).
            let Some(spec) = t.spec(files) else {
                continue;
            };
            let timeout = spec
                .multiline
                .as_deref()
                .map_or(Duration::ZERO, |m| m.timeout);
            if last.elapsed() >= timeout {
                due.push(*id);
            }
        }
        for id in due {
            self.flush_pending(id, files);
        }
    }

    /// Routes the complete lines in `scratch.buf[..len]` (read from file offset `base`)
    /// and sends one batch per sink; `offset` is where the file is routed to once they are
    /// written — or, with multi-line events, the start of the event still open.
    fn route(
        &mut self,
        id: FileId,
        files: &FileSources,
        len: usize,
        base: u64,
        offset: u64,
        epoch: u64,
    ) {
        let Some(t) = self.files.get_mut(&id) else {
            return;
        };
        let Some(spec) = t.spec(files) else {
            // The source left the config between the scan and this chunk: nothing is
            // routed and the checkpoint stays, so the lines are read again if it returns.
            return;
        };
        let data = &self.scratch.buf[..len];
        let max_line = spec.max_line;
        let mut cut = 0;
        let mut run = self
            .scratch
            .batcher
            .run(&files.pipeline, spec.index, CHUNK + CHUNK / 4);
        match (spec.cri, spec.multiline.as_deref()) {
            (Some(records), _) => {
                let decoder = t
                    .cri
                    .get_or_insert_with(|| Decoder::resuming(max_line, t.resume.take()));
                let metrics = (spec.name.as_str(), files.pipeline.metrics());
                cut = cri::route(
                    &mut run,
                    decoder,
                    records,
                    data,
                    base,
                    &t.path_text,
                    metrics,
                );
            }
            (None, None) => {
                // The source's multiline went away with a config swap.
                if let Some(mut pending) = t.pending.take() {
                    emit_event(&mut run, &mut pending);
                }
                let mut start = 0;
                for nl in memchr::memchr_iter(b'\n', data) {
                    if nl - start > max_line {
                        // A line that came whole but longer than `maxLineBytes`.
                        cut += 1;
                        let mut raw = data[start..start + max_line].to_vec();
                        raw.push(b'\n');
                        run.push_line(&raw[..max_line], &raw);
                    } else {
                        run.push_line(&data[start..nl], &data[start..=nl]);
                    }
                    start = nl + 1;
                }
            }
            (None, Some(ml)) => {
                let now = Instant::now();
                let mut start = 0;
                for nl in memchr::memchr_iter(b'\n', data) {
                    let at = base + start as u64;
                    let line = &data[start..nl.min(start + max_line)];
                    cut += usize::from(line.len() < nl - start);
                    assemble(&mut run, &mut t.pending, ml, line, at, now);
                    start = nl + 1;
                }
            }
        }
        // Counted before the batch leaves: a reader that sees a line delivered sees it
        // counted.
        if cut > 0 {
            truncated(files, &spec.name, &t.path, &mut t.truncated_logged, 0);
            for _ in 1..cut {
                files.pipeline.metrics().line_truncated(&spec.name);
            }
        }
        let ack = run.finish_parking(self.parked.entry(id).or_default());
        let offset = t.pending.as_ref().map_or(offset, |p| p.start);
        // Nor past a container's line whose last part is still to come: the other
        // stream's progress is kept beside it.
        let streams = t.cri.as_ref().and_then(|d| d.streams(offset));
        let offset = t
            .cri
            .as_ref()
            .and_then(Decoder::held_from)
            .map_or(offset, |held| held.min(offset));
        self.inflight.entry(id).or_default().push_back(InFlight {
            ack,
            epoch,
            offset,
            streams,
        });
    }

    /// Records, per file, the offsets of the batches every sink has acked, in sending
    /// order; a batch a sink gave up unwritten makes its file read again from there.
    fn commit(&mut self) {
        let mut failed = Vec::new();
        for (&id, queue) in &mut self.inflight {
            let mut last = None;
            while let Some(front) = queue.front() {
                if !front.ack.is_complete() {
                    break;
                }
                if front.ack.is_failed() {
                    match self.files.get(&id) {
                        // Everything after it is read again too; their acks no longer
                        // matter.
                        Some(t) if t.epoch == front.epoch => failed.push((id, front.epoch)),
                        // From before a truncation or re-read: nothing to record.
                        Some(_) => {
                            queue.pop_front();
                            continue;
                        }
                        // No longer followed: the checkpoint stays before it, for the next
                        // start.
                        None => {}
                    }
                    queue.clear();
                    break;
                }
                last = queue.pop_front();
            }
            let Some(InFlight {
                epoch,
                offset,
                streams,
                ..
            }) = last
            else {
                continue;
            };
            match self.files.get(&id) {
                Some(t) if t.epoch == epoch => self.checkpoints.set(Entry {
                    dev: id.0,
                    ino: id.1,
                    path: t.path_text.clone(),
                    offset,
                    fingerprint: t.fingerprint,
                    before: Some(Fingerprint::before(&t.file, offset)),
                    source: Some(t.source.clone()),
                    streams,
                }),
                Some(_) => {}
                None => self.checkpoints.advance(id, offset),
            }
        }
        self.inflight.retain(|_, queue| !queue.is_empty());
        for (id, epoch) in failed {
            self.reread(id, epoch);
        }
    }

    /// Reads file `id` again from its checkpoint: a sink gave up a batch from it unwritten
    /// (`epoch` is the batch's). A file no longer followed keeps its checkpoint, so the
    /// next start reads those lines again.
    fn reread(&mut self, id: FileId, epoch: u64) {
        let Some(t) = self.files.get_mut(&id) else {
            return;
        };
        if t.epoch != epoch {
            return; // truncated or re-read since
        }
        let (offset, resume) = self
            .checkpoints
            .get(id)
            .map_or((0, None), |e| (e.offset, e.streams));
        // What waits to be sent is read again too.
        self.parked.remove(&id);
        t.epoch += 1;
        t.partial.clear();
        t.pending = None;
        t.cri = None;
        t.resume = resume;
        t.skipping = false;
        t.finishing = false;
        t.idle_since = None;
        match t.file.seek(SeekFrom::Start(offset)) {
            Ok(_) => t.pos = offset,
            Err(e) => {
                tracing::warn!(path = %t.path.display(), error = %e, "seeking back to the checkpoint");
                return;
            }
        }
        tracing::warn!(path = %t.path.display(), offset, "a sink gave up lines of this file unwritten (it left the config); reading them again into the sinks in force");
    }

    fn flush_checkpoints(&mut self, force: bool) {
        if let Err(e) = self.checkpoints.flush(force) {
            tracing::warn!(error = %e, "writing checkpoints");
        }
    }

    /// Drops files that are deleted or rotated away and have been idle for the grace
    /// period, routing a partial last line they may hold.
    fn drop_finished(&mut self) {
        let grace = self.opts.rotate_grace;
        let done: Vec<FileId> = self
            .files
            .iter()
            .filter(|(_, t)| {
                (t.deleted || !t.reachable) && t.idle_since.is_some_and(|s| s.elapsed() >= grace)
            })
            .map(|(id, _)| *id)
            .collect();
        if done.is_empty() {
            return;
        }
        let files = self.links.current.load_full();
        for id in done {
            let Some(t) = self.files.get_mut(&id) else {
                continue;
            };
            if !t.finishing {
                t.finishing = true;
                if let Some(f) = &files {
                    self.emit_partial(id, f);
                    self.flush_pending(id, f);
                    self.flush_cri(id, f);
                }
            }
            // Kept open until the sinks have everything read from it, so a restart in the
            // meantime finds its checkpoint (and the file, by inode) again.
            if self.inflight.contains_key(&id) {
                continue;
            }
            if let Some(t) = self.files.remove(&id) {
                tracing::info!(path = %t.path.display(), "finished with file");
            }
        }
    }

    fn maybe_tell_eof(&mut self) {
        if !self.opts.exit_on_eof || self.eof_told || self.scanned_at.is_none() {
            return;
        }
        let all_idle = self
            .files
            .values()
            .all(|t| t.idle_since.is_some() && t.pending.is_none());
        if all_idle && self.inflight.is_empty() {
            self.eof_told = true;
            self.flush_checkpoints(true);
            if let Some(eof) = &self.links.eof {
                let _ = eof.send(());
            }
        }
    }
}

/// Adds one line (at file offset `at`) to the multi-line event in progress, routing the
/// events it completes.
fn assemble(
    run: &mut Run<'_>,
    pending: &mut Option<Pending>,
    ml: &MultilineSpec,
    line: &[u8],
    at: u64,
    now: Instant,
) {
    let starts = ml.start.is_match(line);
    if let Some(p) = pending {
        if !starts && p.lines < ml.max_lines && p.text.len() + 1 + line.len() <= MAX_EVENT {
            p.text.push(b'\n');
            p.text.extend_from_slice(line);
            p.lines += 1;
            p.last = now;
            if p.lines >= ml.max_lines
                && let Some(mut done) = pending.take()
            {
                emit_event(run, &mut done);
            }
            return;
        }
        if let Some(mut done) = pending.take() {
            emit_event(run, &mut done);
        }
    }
    let p = Pending {
        text: line.to_vec(),
        lines: 1,
        start: at,
        last: now,
    };
    if ml.max_lines <= 1 || line.len() >= MAX_EVENT {
        let mut p = p;
        emit_event(run, &mut p);
    } else {
        *pending = Some(p);
    }
}

/// Routes a complete multi-line event (see the module docs for how it is read).
fn emit_event(run: &mut Run<'_>, event: &mut Pending) {
    let router = run.router();
    let source = run.source();
    event.text.push(b'\n');
    let raw = &event.text[..];
    let body = &raw[..raw.len() - 1];
    let first_nl = memchr::memchr(b'\n', body);
    let format = router.source_format(source).unwrap_or(Format::Text);
    let Some(first_nl) = first_nl.filter(|_| format != Format::Text) else {
        run.push_line(body, raw);
        return;
    };
    if format == Format::Json {
        let whole = router.parse(source, body);
        if !whole.is_text() {
            run.push(&whole, &whole, raw, true);
            return;
        }
    }
    let routed = router.parse(source, &body[..first_nl]);
    let written = router.event_with_message(source, body, body, None);
    run.push(&routed, &written, raw, false);
}

/// A file a glob matched that resolves to `real`, outside the source's directory `root`:
/// logged and counted (the caller does so once while it stays).
fn refuse(files: &FileSources, source: &str, path: &Path, real: &Path, root: &Path) {
    tracing::warn!(
        source,
        path = %path.display(),
        target = %real.display(),
        directory = %root.display(),
        "not reading a file that resolves outside its source's directory (a symlink out of it)"
    );
    files
        .pipeline
        .metrics()
        .file_refused(source, "outside_directory");
}

/// Where an open file really is, from the kernel (Linux's `/proc/self/fd`); `None` where
/// that cannot be read, leaving the check made before the open.
fn opened_path(file: &File) -> Option<PathBuf> {
    fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).ok()
}

/// Counts a line cut at `maxLineBytes` (`len` bytes long so far, 0 when unknown) and logs
/// it, at most once a minute per file.
fn truncated(
    files: &FileSources,
    source: &str,
    path: &Path,
    logged: &mut Option<Instant>,
    len: usize,
) {
    files.pipeline.metrics().line_truncated(source);
    if logged.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
        *logged = Some(Instant::now());
        tracing::warn!(source, path = %path.display(), at_least = len, "a line longer than maxLineBytes: routed cut to that size, the rest skipped (counted in servicelog_lines_truncated_total; logged once a minute)");
    }
}

/// Adds to `dirs` the directories where files matching `pattern` (under `root`, its
/// directory before the first glob character) can appear: `root`, and the directories the
/// pattern's own wildcard directories match.
fn watch_dirs(pattern: &str, root: &Path, dirs: &mut HashSet<PathBuf>) {
    dirs.insert(root.to_owned());
    let mut parent = Path::new(pattern).parent();
    while let Some(dir) = parent {
        let text = dir.to_string_lossy();
        if !text.contains(['*', '?', '[']) {
            break;
        }
        if let Ok(paths) = glob::glob(&text) {
            for p in paths.flatten() {
                if let Ok(real) = fs::canonicalize(&p)
                    && real.is_dir()
                    && real.starts_with(root)
                {
                    dirs.insert(real);
                }
            }
        }
        parent = dir.parent();
    }
}
