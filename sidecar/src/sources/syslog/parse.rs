//! RFC 5424 and RFC 3164 messages, read leniently, and the JSON object the router gets
//! for one (field names as Vector's syslog source has them).

use std::{
    borrow::Cow,
    net::IpAddr,
    ops::Range,
    time::{SystemTime, UNIX_EPOCH},
};

use crate::json::json_string;

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

#[cfg(test)]
mod tests {
    use std::{net::Ipv6Addr, time::Duration};

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

    }
}
