//! Syslog sources: messages received on a UDP or TCP port, RFC 5424 or RFC 3164 (BSD),
//! each handed to the router as one JSON object.
//!
//! ```text
//! Topology::apply ──binds──▶ Listener (in the Pipeline) ◀──follows── syslog-io thread
//!                                                                   (tokio, one task per
//!   senders ──UDP datagram / TCP frame──▶ listener & connection tasks  socket and connection)
//!                                            │ bounded channel of frames
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
//! - **Batching and backpressure.** The router thread takes what arrived (waiting up to
//!   [`BATCH_WAIT`] after the first message for more, at most [`BATCH_MAX`]) and routes it
//!   in one run per source. Syslog has no acknowledgement to give, so batches' acks are
//!   not waited for; but a full sink queue blocks the router thread, the frame channel
//!   fills and TCP connections stop being read — the senders feel the backpressure. UDP
//!   datagrams then queue in the kernel and are dropped by it when that is full.
//!
//! The event handed to the router (and written by `encoding: json` sinks, with
//! `_servicelog`) uses the field names of Vector's syslog source: `level` (from the
//! severity: emerg/alert/crit → fatal, err → error, warning → warn, notice/info → info,
//! debug → debug), `facility`, `severity`, `version` (RFC 5424), `timestamp` (RFC 3339; an
//! RFC 3164 time gets the current year and is taken as UTC; the time of receipt when the
//! message has none), `hostname`, `appname`, `procid`, `msgid`, `structured_data`
//! (`{sd-id: {param: value}}`), `source_ip`, `message`. Absent (nil) parts are left out.
//! `encoding: raw` sinks write the message as received, without its framing.

use std::{
    borrow::Cow,
    collections::HashMap,
    io,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    ops::Range,
    sync::Arc,
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use arc_swap::ArcSwapOption;
use servicelog_api::v1alpha1::SyslogProtocol;
use tokio::{
    io::AsyncReadExt,
    sync::{Semaphore, mpsc, watch},
    task::JoinSet,
};

use super::Batcher;
use crate::{
    metrics::Metrics,
    pipeline::Pipeline,
    sinks::{SinkShared, encode::json_string},
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
/// Frames queued between the sockets and the router thread.
const QUEUE: usize = 128;
/// Malformed frames are logged at most this often per source.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

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

/// A bound syslog socket, owned by the pipelines that listen on it.
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
}

/// How the syslog threads reach the rest of the process.
pub struct SyslogLinks {
    pub current: Arc<ArcSwapOption<Pipeline>>,
    pub changes: watch::Receiver<u64>,
    pub shared: Arc<SinkShared>,
    pub metrics: Metrics,
    pub pod: String,
    pub namespace: String,
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
    current: Arc<ArcSwapOption<Pipeline>>,
    mut changes: watch::Receiver<u64>,
    mut stop: watch::Receiver<bool>,
    tx: mpsc::Sender<Received>,
) {
    // Keyed by the listener's address: a carried-over listener is the same allocation.
    let mut serving: HashMap<usize, (Arc<Listener>, tokio::task::JoinHandle<()>)> = HashMap::new();
    loop {
        changes.mark_unchanged();
        let pipeline = current.load_full();
        let wanted: Vec<Arc<Listener>> = pipeline
            .as_ref()
            .map(|p| p.syslog.iter().map(|s| s.listener.clone()).collect())
            .unwrap_or_default();
        drop(pipeline);
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
/// pipelines keep theirs).
fn serve(
    listener: &Listener,
    tx: mpsc::Sender<Received>,
) -> io::Result<tokio::task::JoinHandle<()>> {
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

async fn serve_udp(
    socket: tokio::net::UdpSocket,
    from: (u16, SyslogProtocol),
    tx: mpsc::Sender<Received>,
) {
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
        let received = Received {
            from,
            peer: peer.ip(),
            frame: Ok(frame.to_vec()),
        };
        if tx.send(received).await.is_err() {
            return;
        }
    }
}

async fn serve_tcp(
    listener: tokio::net::TcpListener,
    from: (u16, SyslogProtocol),
    tx: mpsc::Sender<Received>,
) {
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
    tx: mpsc::Sender<Received>,
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
            if tx.send(Received { from, peer, frame }).await.is_err() {
                return;
            }
        }
        if eof {
            return;
        }
        framer.compact();
    }
}

/// Splits a TCP byte stream into frames (RFC 6587): octet-counted or newline-terminated,
/// decided per frame.
#[derive(Debug, Default)]
struct Framer {
    buf: Vec<u8>,
    /// Start of the unread part of `buf`.
    pos: usize,
    /// Bytes of an oversized octet-counted frame still to be skipped.
    skip: usize,
    /// Skipping up to the next newline.
    discard: bool,
}

#[derive(Debug, PartialEq, Eq)]
enum Next {
    Frame(Range<usize>),
    Malformed(&'static str),
    /// Nothing more until more bytes arrive.
    More,
}

impl Framer {
    /// The next frame of what was received. `eof`: nothing more will come, so an
    /// unterminated newline-framed message is complete.
    fn next(&mut self, eof: bool) -> Next {
        loop {
            let data = &self.buf[self.pos..];
            if self.skip > 0 {
                let n = self.skip.min(data.len());
                self.pos += n;
                self.skip -= n;
                if self.skip > 0 {
                    return Next::More;
                }
                continue;
            }
            if self.discard {
                match memchr::memchr(b'\n', data) {
                    Some(i) => {
                        self.pos += i + 1;
                        self.discard = false;
                        continue;
                    }
                    None => {
                        self.pos = self.buf.len();
                        return Next::More;
                    }
                }
            }
            let Some(&first) = data.first() else {
                return Next::More;
            };
            // Separators some senders put between frames.
            if matches!(first, b'\n' | b'\r' | b'\0' | b' ') {
                self.pos += 1;
                continue;
            }
            if first.is_ascii_digit() {
                return self.octet_counted(eof);
            }
            let start = self.pos;
            return match memchr::memchr(b'\n', data) {
                Some(i) if i > MAX_FRAME => {
                    self.pos += i + 1;
                    Next::Malformed("message longer than the maximum")
                }
                Some(i) => {
                    self.pos += i + 1;
                    Next::Frame(start..start + trim_frame(&data[..i]).len())
                }
                None if data.len() > MAX_FRAME => {
                    self.discard = true;
                    self.pos = self.buf.len();
                    Next::Malformed("message longer than the maximum")
                }
                None if eof => {
                    self.pos = self.buf.len();
                    Next::Frame(start..start + trim_frame(data).len())
                }
                None => Next::More,
            };
        }
    }

    fn octet_counted(&mut self, eof: bool) -> Next {
        let data = &self.buf[self.pos..];
        let digits = data.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits > 9 {
            self.discard = true;
            return Next::Malformed("bad octet count");
        }
        let Some(&after) = data.get(digits) else {
            if eof {
                self.pos = self.buf.len();
                return Next::Malformed("bad octet count");
            }
            return Next::More;
        };
        if after != b' ' {
            self.discard = true;
            return Next::Malformed("bad octet count");
        }
        let len: usize = std::str::from_utf8(&data[..digits])
            .ok()
            .and_then(|d| d.parse().ok())
            .unwrap_or(0);
        let body = self.pos + digits + 1;
        if len == 0 {
            self.pos = body;
            return Next::Malformed("octet count of zero");
        }
        if len > MAX_FRAME {
            self.pos = body;
            self.skip = len;
            return Next::Malformed("message longer than the maximum");
        }
        if self.buf.len() - body < len {
            if eof {
                self.pos = self.buf.len();
                return Next::Malformed("connection closed inside an octet-counted frame");
            }
            return Next::More;
        }
        self.pos = body + len;
        let frame = &self.buf[body..body + len];
        Next::Frame(body..body + trim_frame(frame).len())
    }

    /// Drops what was read, keeping an incomplete frame; an empty buffer gives back its
    /// memory beyond a few KiB, so idle connections stay cheap.
    fn compact(&mut self) {
        if self.pos >= self.buf.len() {
            self.buf.clear();
            self.pos = 0;
            self.buf.shrink_to(16 * 1024);
        } else if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
    }
}

/// A message without the line ending or NULs that senders append.
fn trim_frame(frame: &[u8]) -> &[u8] {
    let mut end = frame.len();
    while end > 0 && matches!(frame[end - 1], b'\n' | b'\r' | b'\0') {
        end -= 1;
    }
    &frame[..end]
}

// ---------------------------------------------------------------------------------------
// Parsing

/// Why a frame is not a syslog message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("the message does not start with <PRI>")]
    NoPriority,
    #[error("the priority is not a number from 0 to 191")]
    BadPriority,
}

impl Malformed {
    pub fn as_str(self) -> &'static str {
        match self {
            Malformed::NoPriority => "the message does not start with <PRI>",
            Malformed::BadPriority => "the priority is not a number from 0 to 191",
        }
    }
}

/// A syslog message's parts, borrowed from the frame. Absent parts (or RFC 5424's `-`)
/// are `None`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message<'a> {
    pub facility: u8,
    pub severity: u8,
    /// 1 for RFC 5424; `None` for RFC 3164.
    pub version: Option<u16>,
    pub timestamp: Option<Cow<'a, str>>,
    pub hostname: Option<&'a [u8]>,
    pub appname: Option<&'a [u8]>,
    pub procid: Option<&'a [u8]>,
    pub msgid: Option<&'a [u8]>,
    pub structured_data: Vec<SdElement<'a>>,
    pub message: &'a [u8],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdElement<'a> {
    pub id: &'a [u8],
    pub params: Vec<(&'a [u8], Cow<'a, [u8]>)>,
}

const FACILITIES: [&str; 24] = [
    "kern",
    "user",
    "mail",
    "daemon",
    "auth",
    "syslog",
    "lpr",
    "news",
    "uucp",
    "cron",
    "authpriv",
    "ftp",
    "ntp",
    "security",
    "console",
    "solaris-cron",
    "local0",
    "local1",
    "local2",
    "local3",
    "local4",
    "local5",
    "local6",
    "local7",
];
const SEVERITIES: [&str; 8] = [
    "emerg", "alert", "crit", "err", "warning", "notice", "info", "debug",
];
/// DESIGN.md's level for each severity.
const LEVELS: [&str; 8] = [
    "fatal", "fatal", "fatal", "error", "warn", "info", "info", "debug",
];
const MONTHS: [&[u8; 3]; 12] = [
    b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
];

impl Message<'_> {
    pub fn facility_name(&self) -> &'static str {
        FACILITIES
            .get(usize::from(self.facility))
            .copied()
            .unwrap_or("unknown")
    }

    pub fn severity_name(&self) -> &'static str {
        SEVERITIES[usize::from(self.severity & 7)]
    }

    pub fn level(&self) -> &'static str {
        LEVELS[usize::from(self.severity & 7)]
    }
}

/// Reads an RFC 5424 message, else (leniently, as rsyslog and syslog-ng do) an RFC 3164
/// one. `now` gives an RFC 3164 timestamp its year. Only a missing or bad `<PRI>` makes a
/// frame malformed: everything after a good one is at worst the message.
pub fn parse(frame: &[u8], now: SystemTime) -> Result<Message<'_>, Malformed> {
    let (pri, rest) = priority(frame)?;
    let (facility, severity) = (pri / 8, pri % 8);
    if let Some(m) = rfc5424(rest, facility, severity) {
        return Ok(m);
    }
    Ok(rfc3164(rest, facility, severity, now))
}

fn priority(frame: &[u8]) -> Result<(u8, &[u8]), Malformed> {
    let Some(rest) = frame.strip_prefix(b"<") else {
        return Err(Malformed::NoPriority);
    };
    let digits = rest
        .iter()
        .take(4)
        .take_while(|b| b.is_ascii_digit())
        .count();
    if digits == 0 || rest.get(digits) != Some(&b'>') {
        return Err(Malformed::NoPriority);
    }
    let mut pri: u16 = 0;
    for &d in &rest[..digits] {
        pri = pri * 10 + u16::from(d - b'0');
    }
    if digits > 3 || pri > 191 {
        return Err(Malformed::BadPriority);
    }
    Ok((pri as u8, &rest[digits + 1..]))
}

/// Splits off the token before the next space; `None` if there is no space.
fn token(data: &[u8]) -> Option<(&[u8], &[u8])> {
    let i = memchr::memchr(b' ', data)?;
    Some((&data[..i], &data[i + 1..]))
}

fn nil(t: &[u8]) -> Option<&[u8]> {
    (t != b"-" && !t.is_empty()).then_some(t)
}

fn rfc5424(data: &[u8], facility: u8, severity: u8) -> Option<Message<'_>> {
    let (version, rest) = token(data)?;
    if version.is_empty() || version.len() > 3 || !version.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let version: u16 = std::str::from_utf8(version).ok()?.parse().ok()?;
    if version == 0 {
        return None;
    }
    let (timestamp, rest) = token(rest)?;
    let timestamp = match timestamp {
        b"-" => None,
        t if looks_like_rfc3339(t) => Some(Cow::Borrowed(std::str::from_utf8(t).ok()?)),
        _ => return None,
    };
    let (hostname, rest) = token(rest)?;
    let (appname, rest) = token(rest)?;
    let (procid, rest) = token(rest)?;
    let (msgid, rest) = token(rest)?;
    let (structured_data, rest) = structured_data(rest)?;
    let message = match rest {
        [] => &[][..],
        [b' ', msg @ ..] => msg.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(msg),
        _ => return None,
    };
    Some(Message {
        facility,
        severity,
        version: Some(version),
        timestamp,
        hostname: nil(hostname),
        appname: nil(appname),
        procid: nil(procid),
        msgid: nil(msgid),
        structured_data,
        message,
    })
}

fn looks_like_rfc3339(t: &[u8]) -> bool {
    t.len() >= 19
        && t[..4].iter().all(u8::is_ascii_digit)
        && t[4] == b'-'
        && t[7] == b'-'
        && matches!(t[10], b'T' | b't')
        && t[13] == b':'
}

/// `-`, or `[id param="value" ...]...`, then the rest.
fn structured_data(data: &[u8]) -> Option<(Vec<SdElement<'_>>, &[u8])> {
    if let Some(rest) = data.strip_prefix(b"-") {
        return Some((Vec::new(), rest));
    }
    let mut elements = Vec::new();
    let mut rest = data;
    while let Some(after) = rest.strip_prefix(b"[") {
        let id_len = after.iter().position(|&b| b == b' ' || b == b']')?;
        let id = &after[..id_len];
        if id.is_empty() {
            return None;
        }
        let mut p = &after[id_len..];
        let mut params = Vec::new();
        loop {
            match p {
                [b']', tail @ ..] => {
                    rest = tail;
                    break;
                }
                [b' ', tail @ ..] => {
                    let eq = tail.iter().position(|&b| b == b'=')?;
                    let name = &tail[..eq];
                    if name.is_empty() || name.iter().any(|&b| b == b' ' || b == b']') {
                        return None;
                    }
                    let value = tail[eq + 1..].strip_prefix(b"\"")?;
                    let (value, tail) = sd_value(value)?;
                    params.push((name, value));
                    p = tail;
                }
                _ => return None,
            }
        }
        elements.push(SdElement { id, params });
    }
    if elements.is_empty() {
        return None;
    }
    Some((elements, rest))
}

/// A PARAM-VALUE up to its closing quote (unescaping `\"`, `\\`, `\]`), then the rest.
fn sd_value(data: &[u8]) -> Option<(Cow<'_, [u8]>, &[u8])> {
    let mut i = 0;
    let mut owned: Option<Vec<u8>> = None;
    while i < data.len() {
        match data[i] {
            b'"' => {
                let value = match owned {
                    Some(v) => Cow::Owned(v),
                    None => Cow::Borrowed(&data[..i]),
                };
                return Some((value, &data[i + 1..]));
            }
            b'\\' if matches!(data.get(i + 1), Some(b'"' | b'\\' | b']')) => {
                let v = owned.get_or_insert_with(|| data[..i].to_vec());
                v.push(data[i + 1]);
                i += 2;
            }
            b => {
                if let Some(v) = owned.as_mut() {
                    v.push(b);
                }
                i += 1;
            }
        }
    }
    None
}

/// BSD syslog: `[TIMESTAMP SP HOSTNAME SP] [TAG[PID]: ]MSG`, each part optional.
fn rfc3164(data: &[u8], facility: u8, severity: u8, now: SystemTime) -> Message<'_> {
    let mut rest = data;
    let mut timestamp = None;
    if let Some((ts, tail)) = bsd_timestamp(rest, now) {
        timestamp = Some(Cow::Owned(ts));
        rest = tail;
    } else if let Some((t, tail)) = token(rest)
        && looks_like_rfc3339(t)
        && let Ok(t) = std::str::from_utf8(t)
    {
        timestamp = Some(Cow::Borrowed(t));
        rest = tail;
    }
    let mut hostname = None;
    if timestamp.is_some()
        && let Some((host, tail)) = token(rest)
        && !host.is_empty()
        && !host.ends_with(b":")
        && !host.contains(&b'[')
    {
        hostname = Some(host);
        rest = tail;
    }
    let (appname, procid, message) = tag(rest);
    Message {
        facility,
        severity,
        version: None,
        timestamp,
        hostname,
        appname,
        procid,
        msgid: None,
        structured_data: Vec::new(),
        message,
    }
}

/// `TAG[PID]: MSG` or `TAG: MSG`; anything else is all message.
fn tag(data: &[u8]) -> (Option<&[u8]>, Option<&[u8]>, &[u8]) {
    let end = data
        .iter()
        .take(49)
        .position(|&b| matches!(b, b'[' | b':' | b' '))
        .unwrap_or(data.len());
    let (name, mut rest) = data.split_at(end);
    if name.is_empty() {
        return (None, None, data);
    }
    let mut procid = None;
    if let Some(after) = rest.strip_prefix(b"[") {
        let Some(close) = after.iter().take(129).position(|&b| b == b']') else {
            return (None, None, data);
        };
        procid = Some(&after[..close]);
        rest = &after[close + 1..];
    }
    match rest.strip_prefix(b":") {
        Some(msg) => (
            Some(name),
            procid.filter(|p| !p.is_empty()),
            msg.strip_prefix(b" ").unwrap_or(msg),
        ),
        None => (None, None, data),
    }
}

/// `Mmm dd hh:mm:ss ` (day space-padded), as RFC 3339 in UTC with the year that puts it
/// closest before `now` (a date up to a day ahead counts as this year: clocks differ).
fn bsd_timestamp(data: &[u8], now: SystemTime) -> Option<(String, &[u8])> {
    if data.len() < 16 || data[15] != b' ' || data[3] != b' ' || data[6] != b' ' {
        return None;
    }
    let month = MONTHS.iter().position(|m| &data[..3] == *m)? as u32 + 1;
    let day_text = std::str::from_utf8(&data[4..6]).ok()?.trim_start();
    let day: u32 = day_text.parse().ok()?;
    let time = &data[7..15];
    let num = |r: Range<usize>| -> Option<u32> {
        let t = time.get(r)?;
        if !t.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(t).ok()?.parse().ok()
    };
    let (h, m, s) = (num(0..2)?, num(3..5)?, num(6..8)?);
    if time[2] != b':' || time[5] != b':' || !(1..=31).contains(&day) || h > 23 || m > 59 || s > 60
    {
        return None;
    }
    let now_secs = now.duration_since(UNIX_EPOCH).ok()?.as_secs() as i64;
    let (year, _, _) = civil_from_days(now_secs.div_euclid(86_400));
    let at = |y: i64| days_from_civil(y, month, day) * 86_400 + i64::from(h * 3600 + m * 60 + s);
    let year = if at(year) > now_secs + 86_400 {
        year - 1
    } else {
        year
    };
    Some((
        format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}Z"),
        &data[16..],
    ))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Appends the JSON object the router reads for `m` (no newline).
pub fn to_json(out: &mut Vec<u8>, m: &Message<'_>, peer: Option<IpAddr>, now: SystemTime) {
    out.extend_from_slice(b"{\"level\":\"");
    out.extend_from_slice(m.level().as_bytes());
    out.extend_from_slice(b"\",\"facility\":\"");
    out.extend_from_slice(m.facility_name().as_bytes());
    out.extend_from_slice(b"\",\"severity\":\"");
    out.extend_from_slice(m.severity_name().as_bytes());
    out.push(b'"');
    if let Some(v) = m.version {
        out.extend_from_slice(format!(",\"version\":{v}").as_bytes());
    }
    out.extend_from_slice(b",\"timestamp\":");
    match &m.timestamp {
        Some(t) => json_string(out, t.as_bytes()),
        None => json_string(
            out,
            humantime::format_rfc3339_millis(now).to_string().as_bytes(),
        ),
    }
    for (name, value) in [
        ("hostname", m.hostname),
        ("appname", m.appname),
        ("procid", m.procid),
        ("msgid", m.msgid),
    ] {
        if let Some(v) = value {
            out.extend_from_slice(b",\"");
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b"\":");
            json_string(out, v);
        }
    }
    if !m.structured_data.is_empty() {
        out.extend_from_slice(b",\"structured_data\":{");
        for (i, e) in m.structured_data.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            json_string(out, e.id);
            out.extend_from_slice(b":{");
            for (j, (k, v)) in e.params.iter().enumerate() {
                if j > 0 {
                    out.push(b',');
                }
                json_string(out, k);
                out.push(b':');
                json_string(out, v);
            }
            out.push(b'}');
        }
        out.push(b'}');
    }
    if let Some(peer) = peer {
        out.extend_from_slice(b",\"source_ip\":\"");
        out.extend_from_slice(peer.to_canonical().to_string().as_bytes());
        out.push(b'"');
    }
    out.extend_from_slice(b",\"message\":");
    json_string(out, m.message);
    out.push(b'}');
}

// ---------------------------------------------------------------------------------------
// Routing

/// The syslog-router thread: routes what the sockets received under the pipeline in force.
struct Router {
    links: SyslogLinks,
    batcher: Batcher,
    json: Vec<u8>,
    raw: Vec<u8>,
    /// `_servicelog` members by source name.
    metas: HashMap<String, Vec<u8>>,
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
            metas: HashMap::new(),
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
        let Some(pipeline) = self.links.current.load_full() else {
            batch.clear();
            return;
        };
        let now = SystemTime::now();
        let mut items = batch.drain(..).peekable();
        while let Some(first) = items.next() {
            let Some(spec) = pipeline
                .syslog
                .iter()
                .find(|s| s.listener.key() == first.from)
            else {
                // The source left the config while its message was on its way.
                continue;
            };
            let name = spec.name.as_str();
            let Some(source) = pipeline.router.source_index(name) else {
                continue;
            };
            if !self.metas.contains_key(name) {
                let meta =
                    crate::sinks::encode::meta_member(name, &self.links.pod, &self.links.namespace);
                self.metas.insert(name.to_owned(), meta);
            }
            let meta = &self.metas[name];
            let mut run =
                self.batcher
                    .run(&pipeline, source, meta, &self.links.shared.pool, 16 * 1024);
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
            let events_in = self.links.metrics.source_counter(name);
            run.finish(&self.links.metrics, &events_in);
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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// 2026-11-25T12:00:00Z
    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_795_608_000)
    }

    fn json(frame: &str) -> serde_json::Value {
        let m = parse(frame.as_bytes(), now()).unwrap_or_else(|e| panic!("{frame:?}: {e}"));
        let mut out = Vec::new();
        to_json(&mut out, &m, None, now());
        serde_json::from_slice(&out)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out)))
    }

    #[test]
    fn rfc5424_messages_become_objects_with_vectors_field_names() {
        let v = json(
            r#"<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog 12 ID47 [exampleSDID@32473 iut="3" eventSource="Application" eventID="1011"][examplePriority@32473 class="high"] An application event log entry..."#,
        );
        assert_eq!(
            v,
            serde_json::json!({
                "level": "info", "facility": "local4", "severity": "notice", "version": 1,
                "timestamp": "2003-10-11T22:14:15.003Z", "hostname": "mymachine.example.com",
                "appname": "evntslog", "procid": "12", "msgid": "ID47",
                "structured_data": {
                    "exampleSDID@32473": {"iut": "3", "eventSource": "Application", "eventID": "1011"},
                    "examplePriority@32473": {"class": "high"}
                },
                "message": "An application event log entry..."
            })
        );
    }

    #[test]
    fn rfc5424_nil_parts_are_left_out_and_escapes_undone() {
        let v = json("<34>1 - - - - - -");
        assert_eq!(v["level"], "fatal");
        assert_eq!(v["facility"], "auth");
        assert_eq!(v["severity"], "crit");
        assert_eq!(v["message"], "");
        assert!(v.get("hostname").is_none() && v.get("structured_data").is_none());
        assert_eq!(
            v["timestamp"], "2026-11-25T12:00:00.000Z",
            "nil time: time of receipt"
        );
        let v = json(r#"<13>1 2026-01-02T03:04:05+01:00 h a - - [x@1 q="say \"hi\" \\ \]"] msg"#);
        assert_eq!(v["structured_data"]["x@1"]["q"], r#"say "hi" \ ]"#);
        assert_eq!(v["message"], "msg");
        let v = json("<14>1 2026-01-02T03:04:05Z h a - - - \u{feff}with BOM");
        assert_eq!(v["message"], "with BOM");
    }

    #[test]
    fn severities_map_to_the_design_levels() {
        let table = [
            (0, "emerg", "fatal"),
            (1, "alert", "fatal"),
            (2, "crit", "fatal"),
            (3, "err", "error"),
            (4, "warning", "warn"),
            (5, "notice", "info"),
            (6, "info", "info"),
            (7, "debug", "debug"),
        ];
        for (sev, name, level) in table {
            let v = json(&format!("<{}>1 - h a - - - m", 128 + sev));
            assert_eq!(
                (v["severity"].as_str(), v["level"].as_str()),
                (Some(name), Some(level)),
                "severity {sev}"
            );
            assert_eq!(v["facility"], "local0");
        }
    }

    #[test]
    fn rfc3164_messages_in_their_common_shapes() {
        let table: &[(&str, serde_json::Value)] = &[
            (
                "<34>Oct 11 22:14:15 mymachine su: 'su root' failed for lonvick on /dev/pts/8",
                serde_json::json!({"level":"fatal","facility":"auth","severity":"crit",
                    "timestamp":"2026-10-11T22:14:15Z","hostname":"mymachine","appname":"su",
                    "message":"'su root' failed for lonvick on /dev/pts/8"}),
            ),
            (
                "<13>Nov  3 01:02:03 host app[4711]: hello world",
                serde_json::json!({"level":"info","facility":"user","severity":"notice",
                    "timestamp":"2026-11-03T01:02:03Z","hostname":"host","appname":"app",
                    "procid":"4711","message":"hello world"}),
            ),
            (
                // A date more than a day ahead is last year's.
                "<12>Dec 31 23:59:59 host cron: late",
                serde_json::json!({"level":"warn","facility":"user","severity":"warning",
                    "timestamp":"2025-12-31T23:59:59Z","hostname":"host","appname":"cron",
                    "message":"late"}),
            ),
            (
                "<11>app[12]: no time, no host",
                serde_json::json!({"level":"error","facility":"user","severity":"err",
                    "timestamp":"2026-11-25T12:00:00.000Z","appname":"app","procid":"12",
                    "message":"no time, no host"}),
            ),
            (
                "<15>just a message: with a colon",
                serde_json::json!({"level":"debug","facility":"user","severity":"debug",
                    "timestamp":"2026-11-25T12:00:00.000Z","message":"just a message: with a colon"}),
            ),
            (
                "<14>2026-11-25T10:00:00.5Z host app: rsyslog's precise time",
                serde_json::json!({"level":"info","facility":"user","severity":"info",
                    "timestamp":"2026-11-25T10:00:00.5Z","hostname":"host","appname":"app",
                    "message":"rsyslog's precise time"}),
            ),
        ];
        for (frame, want) in table {
            assert_eq!(&json(frame), want, "{frame}");
        }
    }

    #[test]
    fn frames_without_a_priority_are_malformed() {
        for (frame, want) in [
            ("no priority", Malformed::NoPriority),
            ("<>1 - - - - - -", Malformed::NoPriority),
            ("<13 oops", Malformed::NoPriority),
            ("<192>1 - - - - - -", Malformed::BadPriority),
            ("<0013>x", Malformed::BadPriority),
            ("", Malformed::NoPriority),
        ] {
            assert_eq!(parse(frame.as_bytes(), now()), Err(want), "{frame:?}");
        }
    }

    fn frames(input: &[&[u8]], eof: bool) -> Vec<Result<String, &'static str>> {
        let mut f = Framer::default();
        let mut out = Vec::new();
        for (i, chunk) in input.iter().enumerate() {
            f.buf.extend_from_slice(chunk);
            let last = eof && i + 1 == input.len();
            loop {
                match f.next(last) {
                    Next::More => break,
                    Next::Frame(r) => out.push(Ok(String::from_utf8_lossy(&f.buf[r]).into_owned())),
                    Next::Malformed(why) => out.push(Err(why)),
                }
            }
            f.compact();
        }
        out
    }

    #[test]
    fn tcp_framing_octet_counted_and_newline_terminated_mixed() {
        let got = frames(
            &[
                b"12 <13>1 - a b",
                b"c\n<14>two\r\n",
                b"5 <15>x",
                b"<16>y\n\n<17>last",
            ],
            true,
        );
        assert_eq!(
            got,
            vec![
                Ok("<13>1 - a bc".into()),
                Ok("<14>two".into()),
                Ok("<15>x".into()),
                Ok("<16>y".into()),
                Ok("<17>last".into()),
            ]
        );
    }

    #[test]
    fn bad_octet_counts_and_oversized_frames_are_skipped_and_the_stream_resyncs() {
        let big = format!("{} <13>{}", MAX_FRAME + 10, "x".repeat(MAX_FRAME + 6));
        let got = frames(
            &[
                b"12x <13>broken\n<14>after bad count\n",
                big.as_bytes(),
                b"6 <15>ok",
            ],
            true,
        );
        assert_eq!(
            got,
            vec![
                Err("bad octet count"),
                Ok("<14>after bad count".into()),
                Err("message longer than the maximum"),
                Ok("<15>ok".into()),
            ]
        );
        let long_line = "y".repeat(MAX_FRAME + 1);
        let got = frames(&[long_line.as_bytes(), b"\n<13>next\n"], false);
        assert_eq!(
            got,
            vec![
                Err("message longer than the maximum"),
                Ok("<13>next".into())
            ]
        );
    }

    #[test]
    fn days_round_trip() {
        for days in [-719_468, -1, 0, 59, 60, 365, 10_957, 20_517, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
        assert_eq!(civil_from_days(20_417), (2025, 11, 25));
    }

    proptest! {
        #[test]
        fn parsing_never_panics_and_always_gives_json(frame in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(m) = parse(&frame, now()) {
                let mut out = Vec::new();
                to_json(&mut out, &m, Some(IpAddr::V6(Ipv6Addr::LOCALHOST)), now());
                prop_assert!(serde_json::from_slice::<serde_json::Value>(&out).is_ok());
            }
        }

        #[test]
        fn syslog_looking_frames_never_panic(
            pri in 0u16..200,
            rest in "(1 )?[ -~]{0,40}( \\[[a-z@0-9]{0,5}( [a-z]{0,3}=\"[ -~]{0,6}\")*\\]?)?[ -~]{0,20}",
        ) {
            let frame = format!("<{pri}>{rest}");
            let _ = parse(frame.as_bytes(), now());
        }

        #[test]
        fn framing_never_panics_nor_loops(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..8)) {
            let input: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
            let total: usize = chunks.iter().map(Vec::len).sum();
            let got = frames(&input, true);
            prop_assert!(got.len() <= total + 1);
        }
    }
}
