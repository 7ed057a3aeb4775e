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
//!   connections. Sockets listen on `[::]` (IPv4 too), or `0.0.0.0` where IPv6 is off.
//! - **Framing.** UDP: one message per datagram. TCP: per frame, octet counting
//!   (`<len> <msg>`, RFC 6587) when it starts with a digit, else up to the next newline
//!   (`\r\n` too). A frame longer than [`MAX_FRAME`] is skipped (an octet-counted one by
//!   its length, a newline-framed one up to its newline). A bad octet count skips to the
//!   next newline. At the end of a connection an unterminated last frame is a message.
//! - **Malformed frames** — a bad octet count, an oversized frame, a message without a
//!   `<PRI>` — are counted in `servicelog_syslog_malformed_total{source}`, logged at most
//!   every [`LOG_EVERY`] per source, and skipped; the connection stays open.
//! - **Limits.** At most [`MAX_CONNECTIONS`] TCP connections per port (further ones wait in
//!   the kernel's backlog); a connection idle for [`IDLE_TIMEOUT`] is closed (senders
//!   reconnect); an idle connection holds no read buffer beyond a few KiB. Each connection
//!   is its own task, so a slow sender holding half a frame delays nobody else.
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
    net::{IpAddr, Ipv6Addr, SocketAddr},
    sync::Arc,
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime},
};

use arc_swap::ArcSwapOption;
use servicelog_api::v1alpha1::SyslogProtocol;
use tokio::{
    io::AsyncReadExt,
    sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch},
    task::JoinSet,
};

use self::frame::{Framer, Next, trim_frame};
pub use self::parse::{Malformed, Message, SdElement, parse, to_json};
use crate::{
    metrics::Metrics,
    pipeline::{Batcher, Feed},
};

/// Longest message accepted, in bytes.
pub const MAX_FRAME: usize = 64 * 1024;
/// TCP connections served at once per port.
pub const MAX_CONNECTIONS: usize = 256;
/// A TCP connection that sent nothing for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(600);
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
}

/// A port that could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("source {source_name}: binding {protocol} port {port}: {error}")]
pub struct BindError {
    pub source_name: String,
    pub port: u16,
    pub protocol: &'static str,
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
    socket: Socket,
}

impl Listener {
    /// Binds `port` on every address (IPv6 and IPv4, or IPv4 alone where IPv6 is off).
    pub fn bind(source: &str, port: u16, protocol: SyslogProtocol) -> Result<Self, BindError> {
        let bind = |ip: IpAddr| -> io::Result<Socket> {
            let addr = SocketAddr::new(ip, port);
            Ok(match protocol {
                SyslogProtocol::Udp => Socket::Udp(std::net::UdpSocket::bind(addr)?),
                SyslogProtocol::Tcp => Socket::Tcp(std::net::TcpListener::bind(addr)?),
            })
        };
        let socket = match bind(IpAddr::V6(Ipv6Addr::UNSPECIFIED)) {
            Err(e) if e.kind() != io::ErrorKind::AddrInUse => {
                bind(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
            }
            other => other,
        }
        .map_err(|error| BindError {
            source_name: source.to_owned(),
            port,
            protocol: protocol_name(protocol),
            error,
        })?;
        tracing::info!(
            source,
            port,
            protocol = protocol_name(protocol),
            "listening for syslog"
        );
        Ok(Self {
            port,
            protocol,
            socket,
        })
    }

    fn key(&self) -> (u16, SyslogProtocol) {
        (self.port, self.protocol)
    }
}

/// What the sockets hand the router thread.
struct Received {
    from: (u16, SyslogProtocol),
    peer: IpAddr,
    /// The frame, or why it is not one.
    frame: Result<Vec<u8>, &'static str>,
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
    ) -> bool {
        let len = frame.as_ref().map_or(1, Vec::len).clamp(1, QUEUE_BYTES);
        let Ok(bytes) = self.bytes.clone().acquire_many_owned(len as u32).await else {
            return false;
        };
        let received = Received {
            from,
            peer,
            frame,
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
        let io = std::thread::Builder::new()
            .name("syslog-io".into())
            .stack_size(512 * 1024)
            .spawn(move || runtime.block_on(supervise(current, changes, stop_rx, tx)))?;
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
) {
    // Keyed by the listener's address: a carried-over listener is the same allocation.
    let mut serving: HashMap<usize, (Arc<Listener>, tokio::task::JoinHandle<()>)> = HashMap::new();
    loop {
        changes.mark_unchanged();
        let syslog = current.load_full();
        let wanted: Vec<Arc<Listener>> = syslog
            .as_ref()
            .map(|c| c.sources.iter().map(|s| s.listener.clone()).collect())
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
            match serve(&listener, tx.clone()) {
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
fn serve(listener: &Listener, tx: Queue) -> io::Result<tokio::task::JoinHandle<()>> {
    let from = listener.key();
    Ok(match &listener.socket {
        Socket::Udp(s) => {
            let s = s.try_clone()?;
            s.set_nonblocking(true)?;
            let socket = tokio::net::UdpSocket::from_std(s)?;
            tokio::spawn(serve_udp(socket, from, tx))
        }
        Socket::Tcp(s) => {
            let s = s.try_clone()?;
            s.set_nonblocking(true)?;
            let socket = tokio::net::TcpListener::from_std(s)?;
            tokio::spawn(serve_tcp(socket, from, tx))
        }
    })
}

async fn serve_udp(socket: tokio::net::UdpSocket, from: (u16, SyslogProtocol), tx: Queue) {
    let mut buf = vec![0u8; MAX_FRAME];
    loop {
        let (n, peer) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "syslog udp receive");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let frame = trim_frame(&buf[..n]);
        if frame.is_empty() {
            continue;
        }
        if !tx.send(from, peer.ip(), Ok(frame.to_vec())).await {
            return;
        }
    }
}

async fn serve_tcp(listener: tokio::net::TcpListener, from: (u16, SyslogProtocol), tx: Queue) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    // Dropped with this task when the source goes: that ends every connection.
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // E.g. out of file descriptors: do not spin.
                tracing::warn!(port = from.0, error = %e, "syslog accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let tx = tx.clone();
        connections.spawn(async move {
            serve_connection(stream, peer.ip(), from, tx).await;
            drop(slot);
        });
    }
}

async fn serve_connection(
    mut stream: tokio::net::TcpStream,
    peer: IpAddr,
    from: (u16, SyslogProtocol),
    tx: Queue,
) {
    let mut framer = Framer::default();
    loop {
        framer.buf.reserve(8 * 1024);
        let read = tokio::time::timeout(IDLE_TIMEOUT, stream.read_buf(&mut framer.buf)).await;
        let eof = match read {
            Err(_) => {
                tracing::debug!(%peer, "closing an idle syslog connection");
                return;
            }
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "syslog connection");
                return;
            }
            Ok(Ok(n)) => n == 0,
        };
        loop {
            let frame = match framer.next(eof) {
                Next::More => break,
                Next::Frame(range) => Ok(framer.buf[range].to_vec()),
                Next::Malformed(why) => Err(why),
            };
            if !tx.send(from, peer, frame).await {
                return;
            }
        }
        if eof {
            return;
        }
        framer.compact();
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
}

impl Router {
    fn new(links: SyslogLinks) -> Self {
        Self {
            links,
            batcher: Batcher::default(),
            json: Vec::new(),
            raw: Vec::new(),
            complaints: HashMap::new(),
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
                        complain(&mut self.complaints, name, r.peer, why);
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

/// Logs a malformed frame, at most every [`LOG_EVERY`] per source.
fn complain(
    complaints: &mut HashMap<String, (Instant, u64)>,
    source: &str,
    peer: IpAddr,
    why: &str,
) {
    match complaints.get_mut(source) {
        Some((at, suppressed)) if at.elapsed() < LOG_EVERY => *suppressed += 1,
        Some((at, suppressed)) => {
            tracing::warn!(source, %peer, reason = why, suppressed = *suppressed, "malformed syslog frame skipped");
            *at = Instant::now();
            *suppressed = 0;
        }
        None => {
            tracing::warn!(source, %peer, reason = why, "malformed syslog frame skipped");
            complaints.insert(source.to_owned(), (Instant::now(), 0));
        }
    }
}
