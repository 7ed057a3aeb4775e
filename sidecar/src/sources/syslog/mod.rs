//! Syslog sources: messages received on a UDP or TCP port, RFC 5424 or RFC 3164 (BSD),
//! each handed to the router as one JSON object.
//!
//! ```text
//! Topology::apply ──binds──▶ Listener (in SyslogSources) ◀──follows── syslog-io thread
//!                                                                   (tokio, one task per
//!   senders ──UDP datagram / TCP frame──▶ listener & connection tasks  socket and connection)
//!                                            │ bounded queue of frames
//!                                            ▼
//!                          syslog-router thread: parse, Batcher (a run per source) ──▶ sinks
//! ```
//!
//! - **Binding.** Sockets are bound when a config is built ([`Listener::bind`]), like sink
//!   files are opened: a port that cannot be bound (in use, not permitted) rejects the
//!   config. The rules in force stay, the error is logged, counted
//!   (`servicelog_config_applied_total{result="error"}`) and written to the instance znode,
//!   so `kubectl get slog` shows the pod as not applied — rather than a config that claims
//!   to be in force while one of its sources silently receives nothing. A socket whose
//!   port and protocol are unchanged is carried into the next pipeline, open; a new one is
//!   bound aside before the swap; one the new config no longer has is closed, with its
//!   connections. Sockets listen on the source's `address`: loopback (`127.0.0.1`) unless
//!   the spec says otherwise, since the application shares the pod's network namespace and
//!   nothing outside the pod should be able to feed its log routing. `::` falls back to
//!   `0.0.0.0` where IPv6 is off. A socket is carried over only if its address is
//!   unchanged too; moving a port to another address while it is open fails to bind
//!   (the old socket still holds the port), so that config is rejected — change the port.
//! - **Framing.** UDP: one message per datagram. TCP: per frame, octet counting
//!   (`<len> <msg>`, RFC 6587) when it starts with a digit, else up to the next newline
//!   (`\r\n` too). A bad octet count skips to the next newline. At the end of a
//!   connection an unterminated last frame is a message.
//! - **Long messages.** A message longer than the source's `maxLineBytes` is cut to that
//!   many bytes and the rest of its frame skipped as it arrives (never buffered), counted
//!   in `servicelog_lines_truncated_total{source}` and logged at most every
//!   [`TRUNCATED_LOG_EVERY`] per source.
//! - **Malformed frames** — a bad octet count, a message without a `<PRI>` — are counted in
//!   `servicelog_syslog_malformed_total{source}`, logged at most every [`LOG_EVERY`] per
//!   source, and skipped; the connection stays open.
//! - **Hostile or stuck TCP senders.** A frame must arrive whole within [`FRAME_TIMEOUT`]
//!   of its first byte, so a sender that starts one and stalls (or trickles it) is
//!   disconnected; between frames a connection may stay silent for [`IDLE_TIMEOUT`]. At
//!   most [`MAX_CONNECTIONS`] connections per port: at the cap a new connection evicts the
//!   one idle longest rather than waiting, so connections left open (or opened on purpose)
//!   cannot lock new senders out. Each closure is counted in
//!   `servicelog_syslog_connections_closed_total{source,reason}` (`frame_timeout`,
//!   `idle_timeout`, `evicted`). A connection holds at most one frame of `maxLineBytes`
//!   and one read; an idle one no read buffer beyond a few KiB. The connections of a port
//!   hold at most [`PARTIAL_BUDGET`] of frames in progress beyond [`SMALL_FRAME`] each:
//!   past it, a connection with a larger one cuts it where it stands (counted and logged
//!   as truncated) — so many senders of long frames at once cannot exhaust memory, while
//!   ordinary messages are never cut. Each connection is its own task, so a slow sender
//!   holding half a frame delays nobody else.
//! - **Batching and backpressure.** Frames wait for the router thread in a queue of at
//!   most [`QUEUE`] frames and [`QUEUE_BYTES`] bytes. The router thread takes what arrived
//!   (waiting up to [`BATCH_WAIT`] after the first message for more, at most
//!   [`BATCH_MAX`]) and routes it in one run per source. Syslog has no acknowledgement to
//!   give, so batches' acks are not waited for; but a full sink queue blocks the router
//!   thread, the frame queue fills and TCP connections stop being read — the senders feel
//!   the backpressure. UDP datagrams then queue in the kernel's socket buffer (its default
//!   size; not raised here) and are dropped by the kernel when that is full, as with any
//!   UDP syslog receiver: senders that must not lose messages use TCP.
//!
//! The event handed to the router (and written by `encoding: json` sinks, with
//! `_servicelog`) uses the field names of Vector's syslog source: `level` (from the
//! severity: emerg/alert/crit → fatal, err → error, warning → warn, notice/info → info,
//! debug → debug), `facility`, `severity`, `version` (RFC 5424), `timestamp` (RFC 3339; an
//! RFC 3164 time gets the current year and is taken as UTC; the time of receipt when the
//! message has none), `hostname`, `appname`, `procid`, `msgid`, `structured_data`
//! (`{sd-id: {param: value}}`), `source_ip`, `message`. Absent (nil) parts are left out.
//! `encoding: raw` sinks write the message as received, without its framing.

mod frame;
mod parse;

use std::{
    collections::HashMap,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime},
};

use arc_swap::ArcSwapOption;
use servicelog_api::v1alpha1::{DEFAULT_MAX_LINE_BYTES, SyslogProtocol, SyslogSource};
use tokio::{
    io::AsyncReadExt,
    sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch},
    task::{AbortHandle, JoinSet},
};

use self::frame::{Framer, Next, trim_frame};
pub use self::parse::{Malformed, Message, SdElement, parse, to_json};
use crate::{
    metrics::Metrics,
    pipeline::{Batcher, Feed},
};

/// Largest UDP datagram (the protocol's limit).
const MAX_DATAGRAM: usize = 64 * 1024;
/// TCP connections served at once per port; one more evicts the longest idle.
pub const MAX_CONNECTIONS: usize = 256;
/// A TCP connection that sent nothing between frames for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// A TCP frame not complete this long after its first byte closes its connection.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(10);
/// Frames in progress up to this size are always kept whole (up to `maxLineBytes`) …
pub const SMALL_FRAME: usize = 64 * 1024;
/// … larger ones share this much buffer per port; past it, one is cut where it stands.
pub const PARTIAL_BUDGET: usize = 16 * 1024 * 1024;
/// After the first message of a batch, how long to wait for more.
pub const BATCH_WAIT: Duration = Duration::from_millis(2);
/// Most messages routed in one batch.
pub const BATCH_MAX: usize = 512;
/// Frames queued between the sockets and the router thread: many, so a burst of small
/// UDP datagrams is taken off the kernel's buffer before it overflows …
pub const QUEUE: usize = 4096;
/// … but at most this many bytes of them, so big frames cannot pile up.
pub const QUEUE_BYTES: usize = 2 * 1024 * 1024;
/// Malformed frames are logged at most this often per source.
pub const LOG_EVERY: Duration = Duration::from_secs(10);
/// Truncated messages are logged at most this often per source.
pub const TRUNCATED_LOG_EVERY: Duration = Duration::from_secs(60);

/// The syslog sources of the config in force and the pipeline that routes their
/// messages, taken together for each batch.
pub type SyslogSources = Feed<SyslogSourceSpec>;

/// A syslog source of the config in force and its bound socket.
#[derive(Clone, Debug)]
pub struct SyslogSourceSpec {
    pub name: String,
    /// Its index among the router's sources.
    pub index: usize,
    pub listener: Arc<Listener>,
    /// The source's `maxLineBytes`.
    pub max_line: usize,
}

/// A port that could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("source {source_name}: binding {protocol} port {port} on {address}: {error}")]
pub struct BindError {
    pub source_name: String,
    pub port: u16,
    pub protocol: &'static str,
    pub address: String,
    pub error: io::Error,
}

fn protocol_name(p: SyslogProtocol) -> &'static str {
    match p {
        SyslogProtocol::Udp => "udp",
        SyslogProtocol::Tcp => "tcp",
    }
}

#[derive(Debug)]
enum Socket {
    Udp(std::net::UdpSocket),
    Tcp(std::net::TcpListener),
}

/// A bound syslog socket, owned by the configs that listen on it.
#[derive(Debug)]
pub struct Listener {
    pub port: u16,
    pub protocol: SyslogProtocol,
    /// The address it is bound to, as the spec asked (`::` even where it fell back to
    /// `0.0.0.0`), so an unchanged source is carried over.
    pub address: IpAddr,
    socket: Socket,
    /// The source on this socket and its `maxLineBytes` under the config in force (a
    /// carried-over socket can change both), set by the syslog-io thread on each swap.
    source: Mutex<String>,
    limit: AtomicUsize,
}

impl Listener {
    /// Binds the source's port on its address (`::`: IPv6 and IPv4, or IPv4 alone where
    /// IPv6 is off).
    pub fn bind(source: &str, def: &SyslogSource) -> Result<Self, BindError> {
        let (port, protocol) = (def.port, def.protocol);
        let error = |address: String, error: io::Error| BindError {
            source_name: source.to_owned(),
            port,
            protocol: protocol_name(protocol),
            address,
            error,
        };
        let address = def.address().map_err(|e| {
            let text = def.address.clone().unwrap_or_default();
            error(text, io::Error::new(io::ErrorKind::InvalidInput, e))
        })?;
        let bind = |ip: IpAddr| -> io::Result<Socket> {
            let addr = SocketAddr::new(ip, port);
            Ok(match protocol {
                SyslogProtocol::Udp => Socket::Udp(std::net::UdpSocket::bind(addr)?),
                SyslogProtocol::Tcp => Socket::Tcp(std::net::TcpListener::bind(addr)?),
            })
        };
        let socket = match bind(address) {
            Err(e)
                if address == IpAddr::V6(Ipv6Addr::UNSPECIFIED)
                    && e.kind() != io::ErrorKind::AddrInUse =>
            {
                bind(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
            }
            other => other,
        }
        .map_err(|e| error(address.to_string(), e))?;
        tracing::info!(
            source,
            port,
            %address,
            protocol = protocol_name(protocol),
            "listening for syslog"
        );
        Ok(Self {
            port,
            protocol,
            address,
            socket,
            source: Mutex::new(source.to_owned()),
            limit: AtomicUsize::new(DEFAULT_MAX_LINE_BYTES),
        })
    }

    /// True if `def` would bind this very socket.
    pub fn is_for(&self, def: &SyslogSource) -> bool {
        self.port == def.port && self.protocol == def.protocol && def.address() == Ok(self.address)
    }

    fn key(&self) -> (u16, SyslogProtocol) {
        (self.port, self.protocol)
    }

    /// Takes the name and limit of the source that owns it under the config in force.
    fn follow(&self, spec: &SyslogSourceSpec) {
        self.limit.store(spec.max_line, Ordering::Relaxed);
        if let Ok(mut name) = self.source.lock()
            && *name != spec.name
        {
            name.clone_from(&spec.name);
        }
    }

    fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    fn source_name(&self) -> String {
        self.source.lock().map(|n| n.clone()).unwrap_or_default()
    }
}

/// What the sockets hand the router thread.
struct Received {
    from: (u16, SyslogProtocol),
    peer: IpAddr,
    /// The frame, or why it is not one.
    frame: Result<Vec<u8>, &'static str>,
    /// The frame was cut to the source's `maxLineBytes`.
    truncated: bool,
    /// Its share of [`QUEUE_BYTES`], given back once it is routed.
    _bytes: OwnedSemaphorePermit,
}

/// The sockets' end of the queue to the router thread.
#[derive(Clone)]
struct Queue {
    tx: mpsc::Sender<Received>,
    bytes: Arc<Semaphore>,
}

impl Queue {
    /// Waits for room (backpressure); false once the router thread is gone.
    async fn send(
        &self,
        from: (u16, SyslogProtocol),
        peer: IpAddr,
        frame: Result<Vec<u8>, &'static str>,
        truncated: bool,
    ) -> bool {
        let len = frame.as_ref().map_or(1, Vec::len).clamp(1, QUEUE_BYTES);
        let Ok(bytes) = self.bytes.clone().acquire_many_owned(len as u32).await else {
            return false;
        };
        let received = Received {
            from,
            peer,
            frame,
            truncated,
            _bytes: bytes,
        };
        self.tx.send(received).await.is_ok()
    }
}

/// How the syslog threads reach the rest of the process.
pub struct SyslogLinks {
    pub current: Arc<ArcSwapOption<SyslogSources>>,
    /// The id of the pipeline in force (0: none), changed whenever another is.
    pub changes: watch::Receiver<u64>,
    pub metrics: Metrics,
}

/// The running syslog threads.
pub struct Syslog {
    stop: watch::Sender<bool>,
    io: JoinHandle<()>,
    router: JoinHandle<()>,
}

impl Syslog {
    /// Starts the socket thread and the router thread; they follow the pipeline in force.
    pub fn start(links: SyslogLinks) -> io::Result<Self> {
        let (stop, stop_rx) = watch::channel(false);
        let (tx, rx) = mpsc::channel(QUEUE);
        let tx = Queue {
            tx,
            bytes: Arc::new(Semaphore::new(QUEUE_BYTES)),
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()?;
        let current = links.current.clone();
        let changes = links.changes.clone();
        let metrics = links.metrics.clone();
        let io = std::thread::Builder::new()
            .name("syslog-io".into())
            .stack_size(512 * 1024)
            .spawn(move || runtime.block_on(supervise(current, changes, stop_rx, tx, metrics)))?;
        let router = std::thread::Builder::new()
            .name("syslog-router".into())
            .stack_size(512 * 1024)
            .spawn(move || Router::new(links).run(rx))?;
        Ok(Self { stop, io, router })
    }

    /// Closes every socket (and connection); the router thread routes what was received
    /// and ends. Returns the threads to join.
    pub fn stop(self) -> [JoinHandle<()>; 2] {
        self.stop.send_replace(true);
        [self.io, self.router]
    }
}

/// Serves the listeners of the pipeline in force, following swaps, until `stop`.
async fn supervise(
    current: Arc<ArcSwapOption<SyslogSources>>,
    mut changes: watch::Receiver<u64>,
    mut stop: watch::Receiver<bool>,
    tx: Queue,
    metrics: Metrics,
) {
    // Keyed by the listener's address: a carried-over listener is the same allocation.
    let mut serving: HashMap<usize, (Arc<Listener>, tokio::task::JoinHandle<()>)> = HashMap::new();
    loop {
        changes.mark_unchanged();
        let syslog = current.load_full();
        let wanted: Vec<Arc<Listener>> = syslog
            .as_ref()
            .map(|c| {
                c.sources
                    .iter()
                    .map(|s| {
                        s.listener.follow(s);
                        s.listener.clone()
                    })
                    .collect()
            })
            .unwrap_or_default();
        drop(syslog);
        serving.retain(|key, (listener, task)| {
            let keep = wanted.iter().any(|l| Arc::as_ptr(l) as usize == *key);
            if !keep {
                tracing::info!(
                    port = listener.port,
                    protocol = protocol_name(listener.protocol),
                    "syslog source removed; closing its socket"
                );
                task.abort();
            }
            keep
        });
        for listener in wanted {
            let key = Arc::as_ptr(&listener) as usize;
            if serving.contains_key(&key) {
                continue;
            }
            match serve(&listener, tx.clone(), metrics.clone()) {
                Ok(task) => {
                    serving.insert(key, (listener, task));
                }
                Err(e) => tracing::error!(
                    port = listener.port,
                    protocol = protocol_name(listener.protocol),
                    error = %e,
                    "cannot serve the syslog socket"
                ),
            }
        }
        tokio::select! {
            r = changes.changed() => if r.is_err() { break },
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    for (_, (_, task)) in serving {
        task.abort();
    }
}

/// Starts the task that serves `listener` (on its own duplicate of the socket, so the
/// configs keep theirs).
fn serve(
    listener: &Arc<Listener>,
    tx: Queue,
    metrics: Metrics,
) -> io::Result<tokio::task::JoinHandle<()>> {
    Ok(match &listener.socket {
        Socket::Udp(s) => {
            let s = s.try_clone()?;
            s.set_nonblocking(true)?;
            let socket = tokio::net::UdpSocket::from_std(s)?;
            tokio::spawn(serve_udp(socket, listener.clone(), tx))
        }
        Socket::Tcp(s) => {
            let s = s.try_clone()?;
            s.set_nonblocking(true)?;
            let socket = tokio::net::TcpListener::from_std(s)?;
            tokio::spawn(serve_tcp(socket, listener.clone(), tx, metrics))
        }
    })
}

async fn serve_udp(socket: tokio::net::UdpSocket, owner: Arc<Listener>, tx: Queue) {
    let from = owner.key();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let (n, peer) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "syslog udp receive");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let limit = owner.limit();
        let (frame, truncated) = if n > limit {
            (&buf[..limit], true)
        } else {
            (trim_frame(&buf[..n]), false)
        };
        if frame.is_empty() {
            continue;
        }
        if !tx
            .send(from, peer.ip(), Ok(frame.to_vec()), truncated)
            .await
        {
            return;
        }
    }
}

/// An open TCP connection, as the accept loop sees it.
struct Open {
    task: AbortHandle,
    /// When it last received anything, in ms since the accept loop started.
    active: Arc<AtomicU64>,
}

async fn serve_tcp(
    listener: tokio::net::TcpListener,
    owner: Arc<Listener>,
    tx: Queue,
    metrics: Metrics,
) {
    let epoch = Instant::now();
    let held = Arc::new(AtomicUsize::new(0));
    // Dropped with this task when the source goes: that ends every connection.
    let mut connections = JoinSet::new();
    let mut open: HashMap<tokio::task::Id, Open> = HashMap::new();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // E.g. out of file descriptors: do not spin.
                tracing::warn!(port = owner.port, error = %e, "syslog accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        while let Some(ended) = connections.try_join_next_with_id() {
            open.remove(&ended.map_or_else(|e| e.id(), |(id, ())| id));
        }
        if open.len() >= MAX_CONNECTIONS {
            let idlest = open
                .iter()
                .min_by_key(|(_, o)| o.active.load(Ordering::Relaxed))
                .map(|(id, _)| *id);
            if let Some(conn) = idlest.and_then(|id| open.remove(&id)) {
                conn.task.abort();
                metrics.syslog_connection_closed(&owner.source_name(), "evicted");
                tracing::debug!(port = owner.port, %peer, "syslog connection cap reached; closed the longest idle connection");
            }
        }
        let active = Arc::new(AtomicU64::new(millis_since(epoch)));
        let conn = Connection {
            owner: owner.clone(),
            peer: peer.ip(),
            tx: tx.clone(),
            metrics: metrics.clone(),
            active: active.clone(),
            epoch,
            held: Held {
                port: held.clone(),
                mine: 0,
            },
        };
        let task = connections.spawn(conn.serve(stream));
        open.insert(task.id(), Open { task, active });
    }
}

fn millis_since(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// One TCP connection's task.
struct Connection {
    owner: Arc<Listener>,
    peer: IpAddr,
    tx: Queue,
    metrics: Metrics,
    /// Where the accept loop sees when this connection last received anything.
    active: Arc<AtomicU64>,
    epoch: Instant,
    held: Held,
}

/// A connection's share of the buffer its port's connections hold; given back when the
/// connection ends, however it ends.
struct Held {
    port: Arc<AtomicUsize>,
    mine: usize,
}

impl Held {
    /// Records that the connection now holds `bytes`; returns what the port holds.
    fn set(&mut self, bytes: usize) -> usize {
        let total = if bytes >= self.mine {
            self.port.fetch_add(bytes - self.mine, Ordering::Relaxed) + (bytes - self.mine)
        } else {
            self.port.fetch_sub(self.mine - bytes, Ordering::Relaxed) - (self.mine - bytes)
        };
        self.mine = bytes;
        total
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.port.fetch_sub(self.mine, Ordering::Relaxed);
    }
}

impl Connection {
    async fn serve(mut self, mut stream: tokio::net::TcpStream) {
        let (from, peer) = (self.owner.key(), self.peer);
        let mut framer = Framer::default();
        // When the frame now in progress began.
        let mut frame_since: Option<Instant> = None;
        loop {
            framer.buf.reserve(8 * 1024);
            let (wait, reason) = match frame_since {
                Some(t) => (FRAME_TIMEOUT.saturating_sub(t.elapsed()), "frame_timeout"),
                None => (IDLE_TIMEOUT, "idle_timeout"),
            };
            let eof = match tokio::time::timeout(wait, stream.read_buf(&mut framer.buf)).await {
                Err(_) => {
                    tracing::debug!(%peer, reason, "closing a syslog connection");
                    self.metrics
                        .syslog_connection_closed(&self.owner.source_name(), reason);
                    return;
                }
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "syslog connection");
                    return;
                }
                Ok(Ok(n)) => n == 0,
            };
            self.active
                .store(millis_since(self.epoch), Ordering::Relaxed);
            let limit = self.owner.limit();
            let mut ended = false;
            loop {
                let (frame, truncated) = match framer.next(eof, limit) {
                    Next::More => break,
                    Next::Frame(range) => (Ok(framer.buf[range].to_vec()), false),
                    Next::Truncated(range) => (Ok(framer.buf[range].to_vec()), true),
                    Next::Malformed(why) => (Err(why), false),
                };
                ended = true;
                if !self.tx.send(from, peer, frame, truncated).await {
                    return;
                }
            }
            if eof {
                return;
            }
            framer.compact();
            let large = framer.buf.len() > SMALL_FRAME;
            if self.held.set(if large { framer.buf.capacity() } else { 0 }) > PARTIAL_BUDGET
                && large
                && let Some(range) = framer.cut()
            {
                let frame = Ok(framer.buf[range].to_vec());
                if !self.tx.send(from, peer, frame, true).await {
                    return;
                }
                framer.compact();
                self.held.set(0);
            }
            frame_since = match frame_since {
                _ if !framer.in_frame() => None,
                Some(t) if !ended => Some(t),
                _ => Some(Instant::now()),
            };
        }
    }
}

/// The syslog-router thread: routes what the sockets received under the pipeline in force.
struct Router {
    links: SyslogLinks,
    batcher: Batcher,
    json: Vec<u8>,
    raw: Vec<u8>,
    /// When a malformed frame was last logged, and how many since, per source.
    complaints: HashMap<String, (Instant, u64)>,
    /// The same for truncated messages.
    truncations: HashMap<String, (Instant, u64)>,
}

impl Router {
    fn new(links: SyslogLinks) -> Self {
        Self {
            links,
            batcher: Batcher::default(),
            json: Vec::new(),
            raw: Vec::new(),
            complaints: HashMap::new(),
            truncations: HashMap::new(),
        }
    }

    fn run(mut self, mut rx: mpsc::Receiver<Received>) {
        let mut batch = Vec::with_capacity(BATCH_MAX);
        while let Some(first) = rx.blocking_recv() {
            batch.push(first);
            let mut waited = false;
            while batch.len() < BATCH_MAX {
                match rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(mpsc::error::TryRecvError::Empty) if !waited => {
                        waited = true;
                        std::thread::sleep(BATCH_WAIT);
                    }
                    Err(_) => break,
                }
            }
            self.route(&mut batch);
            if batch.capacity() > BATCH_MAX {
                batch.shrink_to(BATCH_MAX);
            }
        }
        tracing::info!("syslog stopped");
    }

    /// Routes `batch` (emptying it) in runs of consecutive messages of one source.
    fn route(&mut self, batch: &mut Vec<Received>) {
        let Some(syslog) = self.links.current.load_full() else {
            batch.clear();
            return;
        };
        let now = SystemTime::now();
        let mut items = batch.drain(..).peekable();
        while let Some(first) = items.next() {
            let Some(spec) = syslog
                .sources
                .iter()
                .find(|s| s.listener.key() == first.from)
            else {
                // The source left the config while its message was on its way.
                continue;
            };
            let name = spec.name.as_str();
            let source = spec.index;
            let mut run = self.batcher.run(&syslog.pipeline, source, 16 * 1024);
            let mut malformed = 0u64;
            let mut item = Some(first);
            while let Some(r) = item.take() {
                if r.truncated {
                    self.links.metrics.line_truncated(name);
                    let limit = r.frame.as_ref().map_or(0, Vec::len);
                    rate_limited(
                        &mut self.truncations,
                        TRUNCATED_LOG_EVERY,
                        name,
                        |suppressed| tracing::warn!(source = name, peer = %r.peer, max_line_bytes = limit, suppressed, "syslog message longer than maxLineBytes truncated"),
                    );
                }
                let parsed = r
                    .frame
                    .as_deref()
                    .map_err(|why| *why)
                    .and_then(|f| parse(f, now).map_err(Malformed::as_str));
                match parsed {
                    Ok(m) => {
                        self.json.clear();
                        to_json(&mut self.json, &m, Some(r.peer), now);
                        self.raw.clear();
                        if let Ok(f) = &r.frame {
                            self.raw.extend_from_slice(f);
                        }
                        self.raw.push(b'\n');
                        let event = run.router().parse(source, &self.json);
                        run.push(&event, &event, &self.raw, false);
                    }
                    Err(why) => {
                        malformed += 1;
                        rate_limited(&mut self.complaints, LOG_EVERY, name, |suppressed| {
                            tracing::warn!(source = name, peer = %r.peer, reason = why, suppressed, "malformed syslog frame skipped");
                        });
                    }
                }
                if items.peek().is_some_and(|n| n.from == spec.listener.key()) {
                    item = items.next();
                }
            }
            run.finish();
            if malformed > 0 {
                self.links.metrics.syslog_malformed(name, malformed);
            }
        }
    }
}

/// Calls `log` (with how many were not logged since) at most every `every` per source.
fn rate_limited(
    last: &mut HashMap<String, (Instant, u64)>,
    every: Duration,
    source: &str,
    log: impl FnOnce(u64),
) {
    match last.get_mut(source) {
        Some((at, suppressed)) if at.elapsed() < every => *suppressed += 1,
        Some((at, suppressed)) => {
            log(*suppressed);
            *at = Instant::now();
            *suppressed = 0;
        }
        None => {
            log(0);
            last.insert(source.to_owned(), (Instant::now(), 0));
        }
    }
}
