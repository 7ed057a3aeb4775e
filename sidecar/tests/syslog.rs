//! Syslog sources against the real binary: senders on loopback over UDP and TCP, RFC 5424
//! and RFC 3164, octet-counted and newline-framed, routed by the level of the priority to
//! file sinks; malformed frames; many connections; ports that change or cannot be bound;
//! hostile senders (loopback by default, stalled frames, the connection cap, long lines).

mod common;

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream, UdpSocket},
    path::Path,
    thread,
    time::{Duration, Instant},
};

use common::*;

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free UDP port")
        .port()
}

fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free TCP port")
        .port()
}

/// Two syslog sources; warn and above to `alerts` (json), debug dropped, the rest to `rest`
/// (raw).
fn spec(udp: u16, tcp: u16, alerts: &Path, rest: &Path) -> String {
    spec_with(udp, tcp, alerts, rest, "", "")
}

/// [`spec`] with `syslog` (e.g. `, address: 0.0.0.0`) added to each source's syslog
/// fields and `source` (e.g. `\n    maxLineBytes: 1024`) to each source.
fn spec_with(udp: u16, tcp: u16, alerts: &Path, rest: &Path, syslog: &str, source: &str) -> String {
    format!(
        "sources:\n  - name: legacy-udp\n    syslog: {{port: {udp}, protocol: udp{syslog}}}{source}\n\
         \x20 - name: legacy-tcp\n    syslog: {{port: {tcp}, protocol: tcp{syslog}}}{source}\n\
         sinks:\n  - name: alerts\n    file: {{path: \"{alerts}\", encoding: json}}\n\
         \x20 - name: rest\n    file: {{path: \"{rest}\"}}\n\
         rules:\n  - name: drop-debug\n    when: {{level: {{below: info}}}}\n    action: drop\n\
         \x20 - name: alerts\n    when: {{level: {{atLeast: warn}}}}\n    to: [alerts]\n\
         defaultTo: [rest]\n",
        alerts = alerts.display(),
        rest = rest.display(),
    )
}

struct Env {
    s: Scratch,
    sidecar: Sidecar,
    udp: u16,
    tcp: u16,
}

impl Env {
    fn start() -> Self {
        Self::start_with("", "")
    }

    /// With [`spec_with`]'s additions.
    fn start_with(syslog: &str, source: &str) -> Self {
        let s = Scratch::new();
        let (udp, tcp) = (free_udp_port(), free_tcp_port());
        let config = s.path("servicelog.yaml");
        let (alerts, rest) = (s.path("alerts.log"), s.path("rest.log"));
        write_config(
            &config,
            &manifest(&spec_with(udp, tcp, &alerts, &rest, syslog, source)),
        );
        let sidecar = Sidecar::start(
            &s,
            &["--config-file", config.to_str().expect("a UTF-8 path")],
            &[],
        );
        let env = Self {
            s,
            sidecar,
            udp,
            tcp,
        };
        wait_until(
            "the sidecar to be ready",
            Duration::from_secs(15),
            || env.sidecar.http_get("/readyz").is_some_and(|r| r.0 == 200),
            || env.sidecar.log_tail(),
        );
        env
    }

    fn alerts(&self) -> Vec<serde_json::Value> {
        read_lines(&self.s.path("alerts.log"))
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    fn rest(&self) -> Vec<String> {
        read_lines(&self.s.path("rest.log"))
    }

    fn tcp(&self) -> TcpStream {
        let s = TcpStream::connect(("127.0.0.1", self.tcp)).expect("connecting over TCP");
        s.set_nodelay(true).expect("TCP_NODELAY");
        s
    }

    fn metric(&self, sample: &str) -> Option<f64> {
        self.sidecar.metric(sample)
    }

    fn metrics_text(&self) -> String {
        self.sidecar
            .http_get("/metrics")
            .map(|r| r.1)
            .unwrap_or_default()
    }
}

/// Waits until the peer closes `conn` (a read returns 0 or fails); how long that took.
fn wait_closed(conn: &mut TcpStream, within: Duration, what: &str) -> Duration {
    let start = Instant::now();
    conn.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("read timeout");
    let mut buf = [0u8; 64];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => return start.elapsed(),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return start.elapsed(),
        }
        assert!(
            start.elapsed() < within,
            "timed out after {within:?} waiting for the sidecar to close {what}"
        );
    }
}

#[test]
fn given_no_address_then_syslog_listens_on_loopback_only_and_address_0_0_0_0_opens_it() {
    // 127.0.0.2 is loopback too, but not the address 127.0.0.1: a socket bound to
    // 127.0.0.1 refuses it, one bound to every address takes it — a stand-in for "another
    // host" that needs no network.
    let env = Env::start();
    assert!(
        TcpStream::connect(("127.0.0.2", env.tcp)).is_err(),
        "by default the TCP port takes no connection to another address than 127.0.0.1"
    );
    let sender = UdpSocket::bind("127.0.0.1:0").expect("binding the sender");
    sender
        .send_to(
            b"<12>1 - h app - - - to another address",
            ("127.0.0.2", env.udp),
        )
        .expect("sending");
    let mut conn = env.tcp();
    conn.write_all(b"<12>1 - h app - - - over loopback\n")
        .expect("writing");
    wait_until(
        "the message sent to 127.0.0.1",
        Duration::from_secs(10),
        || env.alerts().len() == 1,
        || env.sidecar.log_tail(),
    );
    thread::sleep(Duration::from_millis(500));
    let alerts = env.alerts();
    assert_eq!(alerts.len(), 1, "nothing came in on 127.0.0.2: {alerts:?}");
    assert_eq!(alerts[0]["message"], "over loopback");

    let open = Env::start_with(", address: 0.0.0.0", "");
    let mut conn = TcpStream::connect(("127.0.0.2", open.tcp))
        .expect("address 0.0.0.0 takes connections to any address");
    conn.write_all(b"<12>1 - h app - - - from afar\n")
        .expect("writing");
    wait_until(
        "the message sent to 127.0.0.2",
        Duration::from_secs(10),
        || open.alerts().len() == 1,
        || open.sidecar.log_tail(),
    );
}

#[test]
fn given_a_tcp_sender_that_stalls_inside_a_frame_then_it_is_disconnected_within_the_frame_deadline_while_an_idle_one_stays()
 {
    let env = Env::start();
    let mut idle = env.tcp();
    idle.write_all(b"<14>1 - h app - - - then silence\n")
        .expect("writing a whole frame");
    let mut stalled = env.tcp();
    stalled
        .write_all(b"<14>1 - h app - - - half a fra")
        .expect("writing half a frame");
    let mut counted = env.tcp();
    counted.write_all(b"200 <14>1 - h").expect("an octet count");
    let took = wait_closed(
        &mut stalled,
        Duration::from_secs(20),
        "the stalled connection",
    );
    assert!(
        took >= Duration::from_secs(8),
        "closed after {took:?}, before its frame deadline"
    );
    wait_closed(
        &mut counted,
        Duration::from_secs(5),
        "the stalled octet-counted frame",
    );
    wait_until(
        "2 frame timeouts counted",
        Duration::from_secs(5),
        || {
            env.metric(
                r#"servicelog_syslog_connections_closed_total{source="legacy-tcp",reason="frame_timeout"}"#,
            ) == Some(2.0)
        },
        || env.metrics_text(),
    );
    // The connection idle between frames for as long is still served.
    idle.write_all(b"<14>1 - h app - - - after the silence\n")
        .expect("writing after the silence");
    wait_until(
        "both messages of the idle connection",
        Duration::from_secs(10),
        || env.rest().len() == 2,
        || env.sidecar.log_tail(),
    );
    assert!(env.rest()[1].ends_with("after the silence"));
}

#[test]
fn given_the_connection_cap_filled_with_idle_connections_then_a_new_sender_gets_in_by_evicting_the_longest_idle()
 {
    const CAP: usize = 256;
    let env = Env::start();
    let mut hogs: Vec<TcpStream> = Vec::with_capacity(CAP);
    for i in 0..CAP {
        let mut c = env.tcp();
        c.write_all(format!("<14>1 - h app - - - hog {i}\n").as_bytes())
            .expect("writing");
        hogs.push(c);
        // Each last active at its own millisecond, so "longest idle" is one connection.
        thread::sleep(Duration::from_millis(5));
    }
    wait_until(
        "a message from every hog",
        Duration::from_secs(20),
        || env.rest().len() == CAP,
        || format!("{} arrived\n{}", env.rest().len(), env.sidecar.log_tail()),
    );
    // The first hog is the longest idle; touch it so the second one is.
    thread::sleep(Duration::from_millis(50));
    hogs[0]
        .write_all(b"<14>1 - h app - - - hog 0 again\n")
        .expect("writing");
    wait_until(
        "hog 0's second message",
        Duration::from_secs(10),
        || env.rest().len() == CAP + 1,
        || env.sidecar.log_tail(),
    );
    let mut newcomer = env.tcp();
    newcomer
        .write_all(b"<14>1 - h app - - - a new sender\n")
        .expect("writing");
    wait_until(
        "the new sender's message, with the cap full",
        Duration::from_secs(10),
        || env.rest().iter().any(|l| l.ends_with("a new sender")),
        || env.sidecar.log_tail(),
    );
    wait_closed(
        &mut hogs[1],
        Duration::from_secs(5),
        "the longest idle connection",
    );
    assert_eq!(
        env.metric(
            r#"servicelog_syslog_connections_closed_total{source="legacy-tcp",reason="evicted"}"#
        ),
        Some(1.0),
        "{}",
        env.metrics_text()
    );
    hogs[0]
        .write_all(b"<14>1 - h app - - - hog 0 still served\n")
        .expect("writing");
    wait_until(
        "hog 0, recently active, still served",
        Duration::from_secs(10),
        || env.rest().iter().any(|l| l.ends_with("hog 0 still served")),
        || env.sidecar.log_tail(),
    );
}

#[test]
fn given_max_line_bytes_when_messages_are_longer_then_they_are_cut_to_it_counted_and_logged_and_the_next_ones_arrive_whole()
 {
    let env = Env::start_with("", "\n    maxLineBytes: 1024");
    let long = |tag: &str| format!("<14>1 - h app - - - {tag} {}", "x".repeat(5000));
    let mut conn = env.tcp();
    let framed = long("newline");
    conn.write_all(format!("{framed}\n").as_bytes())
        .expect("writing");
    let counted = long("octet");
    conn.write_all(format!("{} {counted}", counted.len()).as_bytes())
        .expect("writing");
    conn.write_all(b"<14>1 - h app - - - short after\n")
        .expect("writing");
    let sender = UdpSocket::bind("127.0.0.1:0").expect("binding the sender");
    let datagram = long("udp");
    sender
        .send_to(datagram.as_bytes(), ("127.0.0.1", env.udp))
        .expect("sending");
    wait_until(
        "4 messages",
        Duration::from_secs(10),
        || env.rest().len() == 4,
        || env.sidecar.log_tail(),
    );
    let rest = env.rest();
    for want in [&framed, &counted, &datagram] {
        assert!(
            rest.contains(&want[..1024].to_owned()),
            "{} cut to 1024 bytes; got (length, start) {:?}",
            &want[..40],
            rest.iter()
                .map(|l| (l.len(), &l[..l.len().min(40)]))
                .collect::<Vec<_>>()
        );
    }
    assert!(rest.contains(&"<14>1 - h app - - - short after".to_owned()));
    wait_until(
        "3 truncations counted",
        Duration::from_secs(5),
        || {
            env.metric(r#"servicelog_lines_truncated_total{source="legacy-tcp"}"#) == Some(2.0)
                && env.metric(r#"servicelog_lines_truncated_total{source="legacy-udp"}"#)
                    == Some(1.0)
        },
        || env.metrics_text(),
    );
    let log = std::fs::read_to_string(&env.sidecar.log).expect("the sidecar's log");
    assert_eq!(
        log.matches("longer than maxLineBytes truncated").count(),
        2,
        "logged once per source per minute:\n{log}"
    );
}

#[test]
fn given_udp_senders_when_they_send_rfc5424_and_rfc3164_then_each_message_goes_where_its_severity_says()
 {
    let mut env = Env::start();
    let sender = UdpSocket::bind("127.0.0.1:0").expect("binding the sender");
    let messages = [
        // local0.warning, RFC 5424 with structured data
        r#"<132>1 2026-11-25T10:00:00.123Z web-1 checkout 4711 ID47 [req@32473 id="42"] payment slow"#,
        // user.info, RFC 3164
        "<14>Nov 25 10:00:01 web-1 checkout[4711]: order placed",
        // user.debug: dropped
        "<15>Nov 25 10:00:02 web-1 checkout[4711]: cache miss",
        // user.err, RFC 3164 without a hostname, with a trailing newline
        "<11>checkout: payment failed\n",
    ];
    for m in messages {
        sender
            .send_to(m.as_bytes(), ("127.0.0.1", env.udp))
            .expect("sending a datagram");
    }
    wait_until(
        "2 alerts and 1 default message",
        Duration::from_secs(10),
        || env.alerts().len() >= 2 && !env.rest().is_empty(),
        || env.sidecar.log_tail(),
    );
    thread::sleep(Duration::from_millis(300));
    env.sidecar.assert_running();
    let alerts = env.alerts();
    assert_eq!(alerts.len(), 2, "warning and err are alerts: {alerts:?}");
    let warn = &alerts[0];
    for (field, want) in [
        ("level", "warn"),
        ("severity", "warning"),
        ("facility", "local0"),
        ("hostname", "web-1"),
        ("appname", "checkout"),
        ("procid", "4711"),
        ("msgid", "ID47"),
        ("timestamp", "2026-11-25T10:00:00.123Z"),
        ("message", "payment slow"),
        ("source_ip", "127.0.0.1"),
    ] {
        assert_eq!(warn[field], want, "field {field} of {warn}");
    }
    assert_eq!(warn["structured_data"]["req@32473"]["id"], "42");
    assert_eq!(warn["_servicelog"]["source"], "legacy-udp");
    assert_eq!(alerts[1]["level"], "error");
    assert_eq!(alerts[1]["appname"], "checkout");
    assert_eq!(alerts[1]["message"], "payment failed");
    assert_eq!(
        env.rest(),
        vec![messages[1].to_owned()],
        "raw sinks get the message as received"
    );
    assert_eq!(
        env.sidecar
            .metric(r#"servicelog_events_in_total{source="legacy-udp"}"#),
        Some(4.0)
    );
}

#[test]
fn given_one_tcp_connection_when_frames_are_octet_counted_newline_framed_or_malformed_then_the_bad_ones_are_counted_and_skipped_and_the_rest_arrive()
 {
    let mut env = Env::start();
    let mut conn = env.tcp();
    let octet = |m: &str| format!("{} {m}", m.len());
    let warn5424 = "<132>1 2026-11-25T10:00:00Z web-1 app - - - first, octet-counted";
    let info3164 = "<14>Nov 25 10:00:01 web-1 app: second, newline-framed";
    let mut first = String::new();
    first.push_str(&octet(warn5424));
    first.push_str(info3164);
    first.push('\n');
    // A bad octet count, then a message without <PRI>: both malformed.
    first.push_str("12x <13>broken count\n");
    first.push_str("no priority here\n");
    conn.write_all(first.as_bytes()).expect("writing frames");
    wait_until(
        "the first two messages",
        Duration::from_secs(10),
        || env.alerts().len() == 1 && env.rest().len() == 1,
        || env.sidecar.log_tail(),
    );
    wait_until(
        "2 malformed frames counted",
        Duration::from_secs(5),
        || {
            env.sidecar
                .metric(r#"servicelog_syslog_malformed_total{source="legacy-tcp"}"#)
                == Some(2.0)
        },
        || {
            env.sidecar
                .http_get("/metrics")
                .map(|r| r.1)
                .unwrap_or_default()
        },
    );
    // Later messages on the same connection, split across writes.
    let err5424 = "<131>1 2026-11-25T10:00:02Z web-1 app - - - third, after the bad ones";
    let framed = octet(err5424);
    let (a, b) = framed.split_at(10);
    conn.write_all(a.as_bytes()).expect("writing half a frame");
    thread::sleep(Duration::from_millis(200));
    conn.write_all(b.as_bytes())
        .expect("writing its other half");
    conn.write_all(b"<13>Nov 25 10:00:03 web-1 app: fourth\r\n")
        .expect("writing a CRLF frame");
    wait_until(
        "the messages sent after the malformed ones, on the same connection",
        Duration::from_secs(10),
        || env.alerts().len() == 2 && env.rest().len() == 2,
        || env.sidecar.log_tail(),
    );
    env.sidecar.assert_running();
    let alerts = env.alerts();
    assert_eq!(alerts[0]["message"], "first, octet-counted");
    assert_eq!(alerts[0]["_servicelog"]["source"], "legacy-tcp");
    assert_eq!(alerts[1]["message"], "third, after the bad ones");
    assert_eq!(alerts[1]["level"], "error");
    assert_eq!(
        env.rest(),
        vec![
            info3164.to_owned(),
            "<13>Nov 25 10:00:03 web-1 app: fourth".to_owned()
        ]
    );
    assert!(
        env.sidecar
            .log_tail()
            .contains("malformed syslog frame skipped"),
        "the malformed frame is logged"
    );
}

#[test]
fn given_many_concurrent_tcp_connections_when_each_sends_its_messages_then_every_message_arrives_once()
 {
    let env = Env::start();
    const CONNS: usize = 64;
    const PER_CONN: usize = 200;
    let senders: Vec<_> = (0..CONNS)
        .map(|c| {
            let mut conn = env.tcp();
            thread::spawn(move || {
                let mut buf = String::new();
                for n in 0..PER_CONN {
                    let m = format!("<14>1 - host app - - - conn={c} n={n}");
                    if n % 2 == 0 {
                        buf.push_str(&format!("{} {m}", m.len()));
                    } else {
                        buf.push_str(&m);
                        buf.push('\n');
                    }
                    if n % 50 == 49 {
                        conn.write_all(buf.as_bytes()).expect("writing");
                        buf.clear();
                        thread::sleep(Duration::from_millis(5));
                    }
                }
                conn.write_all(buf.as_bytes()).expect("writing");
                conn
            })
        })
        .collect();
    let conns: Vec<TcpStream> = senders
        .into_iter()
        .map(|t| t.join().expect("a sender thread"))
        .collect();
    let want = CONNS * PER_CONN;
    wait_until(
        &format!("{want} messages"),
        Duration::from_secs(30),
        || env.rest().len() >= want,
        || format!("{} arrived\n{}", env.rest().len(), env.sidecar.log_tail()),
    );
    drop(conns);
    let mut seen = std::collections::HashSet::new();
    for line in env.rest() {
        let tail = line
            .rsplit_once(" - ")
            .map(|(_, t)| t.to_owned())
            .unwrap_or_default();
        assert!(seen.insert(tail.clone()), "{tail:?} arrived twice");
    }
    assert_eq!(seen.len(), want);
}

#[test]
fn given_a_running_syslog_source_when_its_port_changes_or_cannot_be_bound_then_sockets_follow_the_config_and_a_taken_port_rejects_it()
 {
    let s = Scratch::new();
    let (udp, tcp) = (free_udp_port(), free_tcp_port());
    let (alerts, rest) = (s.path("alerts.log"), s.path("rest.log"));
    let config = s.path("servicelog.yaml");
    write_config(&config, &manifest(&spec(udp, tcp, &alerts, &rest)));
    let mut sidecar = Sidecar::start(
        &s,
        &["--config-file", config.to_str().expect("a UTF-8 path")],
        &[],
    );
    wait_until(
        "the TCP port to accept",
        Duration::from_secs(15),
        || TcpStream::connect(("127.0.0.1", tcp)).is_ok(),
        || sidecar.log_tail(),
    );
    let send = |port: u16, text: &str| -> bool {
        TcpStream::connect(("127.0.0.1", port))
            .and_then(|mut c| c.write_all(format!("<14>{text}\n").as_bytes()))
            .is_ok()
    };
    let mut kept = TcpStream::connect(("127.0.0.1", tcp)).expect("connecting");

    // Only the UDP source's port changes: the TCP socket and its connections stay.
    let udp2 = free_udp_port();
    write_config(&config, &manifest(&spec(udp2, tcp, &alerts, &rest)));
    wait_until(
        "the second config to be applied",
        Duration::from_secs(10),
        || sidecar.metric(r#"servicelog_config_applied_total{result="ok"}"#) == Some(2.0),
        || sidecar.log_tail(),
    );
    kept.write_all(b"<14>kept connection\n")
        .expect("writing on the connection made before the swap");
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|u| u.send_to(b"<14>new udp port", ("127.0.0.1", udp2)))
        .expect("sending to the new UDP port");
    wait_until(
        "messages on the kept connection and the new UDP port",
        Duration::from_secs(10),
        || read_lines(&rest).len() >= 2,
        || sidecar.log_tail(),
    );
    let mut got = read_lines(&rest);
    got.sort();
    assert_eq!(got, vec!["<14>kept connection", "<14>new udp port"]);

    // The TCP port moves: the old one closes.
    let tcp2 = free_tcp_port();
    write_config(&config, &manifest(&spec(udp2, tcp2, &alerts, &rest)));
    wait_until(
        "the old TCP port to close",
        Duration::from_secs(10),
        || TcpStream::connect(("127.0.0.1", tcp)).is_err(),
        || sidecar.log_tail(),
    );
    assert!(send(tcp2, "moved"), "the new TCP port accepts");
    wait_until(
        "a message on the new TCP port",
        Duration::from_secs(10),
        || read_lines(&rest).len() >= 3,
        || sidecar.log_tail(),
    );

    // A port someone else holds: the config is rejected, the one in force stays.
    let squatter = TcpListener::bind("127.0.0.1:0").expect("binding a port");
    let taken = squatter.local_addr().expect("its address").port();
    write_config(&config, &manifest(&spec(udp2, taken, &alerts, &rest)));
    wait_until(
        "the config with a taken port to be rejected",
        Duration::from_secs(10),
        || sidecar.metric(r#"servicelog_config_applied_total{result="error"}"#) == Some(1.0),
        || sidecar.log_tail(),
    );
    assert!(
        sidecar
            .log_tail()
            .contains(&format!("binding tcp port {taken}")),
        "the log names the port: {}",
        sidecar.log_tail()
    );
    assert!(send(tcp2, "still here"), "the port in force still accepts");
    wait_until(
        "a message on the port in force",
        Duration::from_secs(10),
        || read_lines(&rest).len() >= 4,
        || sidecar.log_tail(),
    );
    sidecar.assert_running();
    let (_, status) = sidecar.terminate(Duration::from_secs(10));
    assert!(status.success(), "exit status {status}");
}

#[test]
fn given_a_first_config_whose_port_is_taken_then_the_sidecar_names_the_port_and_exits() {
    let s = Scratch::new();
    let squatter = UdpSocket::bind("127.0.0.1:0").expect("binding a port");
    let taken = squatter.local_addr().expect("its address").port();
    let config = s.path("servicelog.yaml");
    write_config(
        &config,
        &manifest(&spec(
            taken,
            free_tcp_port(),
            &s.path("alerts.log"),
            &s.path("rest.log"),
        )),
    );
    let mut child = std::process::Command::new(BIN)
        .arg("--config-file")
        .arg(&config)
        .args(["--metrics-addr", "127.0.0.1:0", "--state-dir"])
        .arg(s.state())
        .env_remove("SERVICELOG_ZK_CONNECT")
        .env_remove("SERVICELOG_CONFIG_ZNODE")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starting the sidecar");
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for the sidecar") {
            break status;
        }
        if start.elapsed() > Duration::from_secs(15) {
            let _ = child.kill();
            panic!("the sidecar kept running with a config whose UDP port {taken} is taken");
        }
        thread::sleep(Duration::from_millis(50));
    };
    let mut log = String::new();
    std::io::Read::read_to_string(
        child.stderr.as_mut().expect("the sidecar's stderr"),
        &mut log,
    )
    .expect("reading the sidecar's stderr");
    assert!(!status.success(), "exit status {status}");
    assert!(
        log.contains(&format!("binding udp port {taken}")) && log.contains("legacy-udp"),
        "the error names the source and the port:\n{log}"
    );
}

#[test]
fn given_many_senders_of_long_frames_at_once_then_the_ports_buffer_budget_cuts_some_and_later_messages_arrive_whole()
 {
    // 40 connections each holding 900 KiB of a line (under the 1 MiB maxLineBytes): 36 MiB
    // in progress at once, over the port's 16 MiB budget for frames beyond 64 KiB.
    const SENDERS: usize = 40;
    let env = Env::start();
    let rss_before = rss_kib(env.sidecar.pid()).unwrap_or(0);
    let part = format!("<14>1 - h app - - - long {}", "y".repeat(900 * 1024));
    let mut conns: Vec<TcpStream> = (0..SENDERS).map(|_| env.tcp()).collect();
    for c in &mut conns {
        c.write_all(part.as_bytes())
            .expect("writing 900 KiB of a line");
    }
    wait_until(
        "long frames cut by the port's budget",
        Duration::from_secs(10),
        || {
            env.metric(r#"servicelog_lines_truncated_total{source="legacy-tcp"}"#)
                .is_some_and(|n| n >= (SENDERS - 16) as f64)
        },
        || env.metrics_text(),
    );
    let rss = rss_kib(env.sidecar.pid()).unwrap_or(0);
    eprintln!(
        "sidecar RSS {rss_before} KiB before, {rss} KiB with {SENDERS} long frames in progress"
    );
    for (i, c) in conns.iter_mut().enumerate() {
        c.write_all(format!(" end\n<14>1 - h app - - - whole {i}\n").as_bytes())
            .expect("writing the end of the line and another");
    }
    wait_until(
        "a whole message after each long one",
        Duration::from_secs(20),
        || env.rest().iter().filter(|l| l.contains(" whole ")).count() == SENDERS,
        || env.sidecar.log_tail(),
    );
    let rest = env.rest();
    let long: Vec<usize> = rest
        .iter()
        .filter(|l| l.contains(" long "))
        .map(String::len)
        .collect();
    assert_eq!(
        long.len(),
        SENDERS,
        "each long line is routed once, cut or whole"
    );
    let cut = long.iter().filter(|&&n| n < part.len()).count();
    assert!(cut >= SENDERS - 16, "{cut} of {SENDERS} cut");
    assert!(
        long.iter().all(|&n| n > 64 * 1024),
        "none cut below 64 KiB: {long:?}"
    );
}
