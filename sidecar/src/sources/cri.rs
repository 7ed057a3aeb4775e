//! Container output as the kubelet writes it: the lines of a `containerLogs` source.
//!
//! The runtime writes what a container prints to
//! `/var/log/pods/<namespace>_<pod>_<uid>/<container>/<restart>.log`, one record a line:
//!
//! ```text
//! 2026-12-07T17:27:32.123456789Z stdout F {"level":"info","msg":"ready"}
//! 2026-12-07T17:27:32.123457000Z stderr P the first 16 KiB of a longer line…
//! 2026-12-07T17:27:32.123457100Z stderr F …and its end
//! ```
//!
//! `F` ends a line the application printed; `P` is a part of one the runtime split, ended
//! by the next `F` of the same stream (stdout and stderr interleave, so each has its own
//! line in progress). A docker `json-file` record, `{"log":"…\n","stream":"stdout",
//! "time":"…"}`, is read too: a `log` without its newline is a part.
//!
//! The file reader ([`super::file`]) follows the files (rotation by rename, restarts'
//! new files, checkpoints) and hands each file line to this file's [`Decoder`], which
//! gives back the application's lines. A line in progress holds the file's checkpoint at
//! its first part ([`Decoder::held_from`]), so a restart reads it again whole; the
//! checkpoint then also says how far each stream is delivered ([`Decoder::streams`]), and
//! the restarted decoder skips the other stream's records up to there
//! ([`Decoder::resuming`]), so they are not sent twice. A record
//! that is neither format is not the application's output: it is not routed, and the
//! caller counts and reports the [`MalformedLine`] (file, line, what is wrong).

use std::{
    borrow::Cow,
    path::{Path, PathBuf},
};

use servicelog_api::v1alpha1::{ContainerLogsSource, ContainerStream};

use super::checkpoint::Streams;
use crate::{metrics::Metrics, pipeline::Run};

/// What is wrong with a record.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CriError {
    #[error("no timestamp, stream and tag before the message")]
    Fields,
    #[error("{0:?} is not an RFC 3339 timestamp")]
    Time(String),
    #[error("{0:?} is not a stream (stdout or stderr)")]
    Stream(String),
    #[error("{0:?} is not a tag (P or F)")]
    Tag(String),
    #[error("a docker json-file record that does not parse: {0}")]
    Docker(String),
}

/// A record that is not one the runtime writes, where it is.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{path}: line {line} (byte {offset}): {error}")]
pub struct MalformedLine {
    pub path: String,
    /// Counted from where the file was first read: its beginning unless a checkpoint
    /// resumed it (then the byte offset is the exact place).
    pub line: u64,
    pub offset: u64,
    pub error: CriError,
}

/// One record.
#[derive(Debug, PartialEq, Eq)]
pub struct Record<'a> {
    pub stream: ContainerStream,
    /// A part of a longer line (`P`, or a docker `log` without its newline).
    pub partial: bool,
    pub message: Cow<'a, [u8]>,
}

/// Parses one record (without its newline): CRI, or a docker `json-file` record when it
/// starts with `{`.
pub fn parse(line: &[u8]) -> Result<Record<'_>, CriError> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.first() == Some(&b'{') {
        return parse_docker(line);
    }
    let mut parts = line.splitn(4, |&b| b == b' ');
    let (Some(time), Some(stream), Some(tag)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(CriError::Fields);
    };
    // An empty `F` record (the application printed an empty line) may end at the tag.
    let message = parts.next().unwrap_or_default();
    check_time(time)?;
    let stream = parse_stream(stream)?;
    let partial = match tag {
        b"F" => false,
        b"P" => true,
        // A tag list (`F:x`) is allowed by the CRI spec: its first entry decides.
        other if other.starts_with(b"F:") => false,
        other if other.starts_with(b"P:") => true,
        other => return Err(CriError::Tag(lossy(other))),
    };
    Ok(Record {
        stream,
        partial,
        message: Cow::Borrowed(message),
    })
}

fn parse_docker(line: &[u8]) -> Result<Record<'_>, CriError> {
    #[derive(serde::Deserialize)]
    struct Docker<'a> {
        #[serde(borrow)]
        log: Cow<'a, str>,
        #[serde(borrow)]
        stream: Cow<'a, str>,
        #[serde(borrow)]
        time: Cow<'a, str>,
    }
    let d: Docker<'_> =
        serde_json::from_slice(line).map_err(|e| CriError::Docker(e.to_string()))?;
    check_time(d.time.as_bytes())?;
    let stream = parse_stream(d.stream.as_bytes())?;
    let (partial, message) = match d.log {
        Cow::Borrowed(s) => match s.strip_suffix('\n') {
            Some(m) => (false, Cow::Borrowed(m.as_bytes())),
            None => (true, Cow::Borrowed(s.as_bytes())),
        },
        Cow::Owned(mut s) => {
            let complete = s.ends_with('\n');
            if complete {
                s.pop();
            }
            (!complete, Cow::Owned(s.into_bytes()))
        }
    };
    Ok(Record {
        stream,
        partial,
        message,
    })
}

/// The shape of RFC 3339 (`2026-12-07T17:27:32.123456789Z`, an offset instead of `Z`),
/// not the calendar: the time is not used, only told apart from a message.
fn check_time(time: &[u8]) -> Result<(), CriError> {
    let digits = |r: std::ops::Range<usize>| time[r].iter().all(u8::is_ascii_digit);
    let ok = time.len() >= 20
        && digits(0..4)
        && time[4] == b'-'
        && digits(5..7)
        && time[7] == b'-'
        && digits(8..10)
        && matches!(time[10], b'T' | b't')
        && digits(11..13)
        && time[13] == b':'
        && digits(14..16)
        && time[16] == b':'
        && digits(17..19);
    if ok {
        Ok(())
    } else {
        Err(CriError::Time(lossy(time)))
    }
}

fn parse_stream(stream: &[u8]) -> Result<ContainerStream, CriError> {
    match stream {
        b"stdout" => Ok(ContainerStream::Stdout),
        b"stderr" => Ok(ContainerStream::Stderr),
        other => Err(CriError::Stream(lossy(other))),
    }
}

/// At most 64 bytes of `b`, for an error message.
fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(&b[..b.len().min(64)]).into_owned()
}

/// Which records of a file are read: the `containerLogs` source's streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CriSpec {
    pub stdout: bool,
    pub stderr: bool,
}

impl CriSpec {
    pub fn new(def: &ContainerLogsSource) -> Self {
        Self {
            stdout: def.reads(ContainerStream::Stdout),
            stderr: def.reads(ContainerStream::Stderr),
        }
    }

    fn reads(&self, stream: ContainerStream) -> bool {
        match stream {
            ContainerStream::Stdout => self.stdout,
            ContainerStream::Stderr => self.stderr,
        }
    }
}

/// Where one pod's container logs are (the node agent's view of a pod).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodLogs {
    /// `/var/log/pods/<namespace>_<pod>_<uid>`.
    pub dir: PathBuf,
    /// The pod's app containers: what a source without `containers` reads.
    pub containers: Vec<String>,
    /// File sinks reached by container logs are served rather than refused: only for
    /// benchmarks and tests outside a cluster (the agent's `--allow-file-sinks`).
    pub allow_file_sinks: bool,
}

impl PodLogs {
    /// The kubelet's directory of pod `namespace/pod` (`uid`) under `root`
    /// (`/var/log/pods`).
    pub fn dir(root: &Path, namespace: &str, pod: &str, uid: &str) -> PathBuf {
        root.join(format!("{namespace}_{pod}_{uid}"))
    }

    /// The file patterns of `def`, two per container: `*.log` (`0.log`, and `1.log`
    /// after a restart) and the rotated `*.log.<time>` (`0.log.20261207-173000`, which
    /// ends in a digit) — never its compressed `….gz`. With the rotated ones matched, a
    /// file renamed before the reader first looked (an agent that starts or restarts
    /// after a rotation) is read too, and is finished when the kubelet compresses it.
    pub fn patterns(&self, def: &ContainerLogsSource) -> Vec<String> {
        let containers = if def.containers.is_empty() {
            &self.containers
        } else {
            &def.containers
        };
        containers
            .iter()
            .flat_map(|c| {
                let dir = self.dir.join(c);
                [
                    dir.join("*.log").display().to_string(),
                    dir.join("*.log.*[0-9]").display().to_string(),
                ]
            })
            .collect()
    }
}

/// A line in progress: the parts so far.
#[derive(Debug, Default)]
struct Partial {
    text: Vec<u8>,
    /// File offset of its first part's record.
    start: u64,
    /// Cut at the line limit: later parts are skipped until its end.
    cut: bool,
}

/// An application line, complete.
#[derive(Debug, PartialEq, Eq)]
pub struct Line<'a> {
    pub stream: ContainerStream,
    pub text: &'a [u8],
    /// Cut at the line limit (the rest of it skipped).
    pub truncated: bool,
}

/// Turns one file's records into the application's lines: parts joined per stream up to
/// `max_line` bytes, streams the source does not read skipped.
#[derive(Debug)]
pub struct Decoder {
    max_line: usize,
    /// In progress, per stream: stdout, stderr.
    partial: [Option<Partial>; 2],
    /// Records fed since the file was opened.
    lines: u64,
    /// A joined line handed out by the last [`Decoder::feed`].
    joined: Vec<u8>,
    /// A malformed record of this file was logged.
    reported: bool,
    /// Resumed from a checkpoint held at a line in progress: each stream's records before
    /// its offset here were delivered already.
    resume: Option<Streams>,
}

fn slot(stream: ContainerStream) -> usize {
    match stream {
        ContainerStream::Stdout => 0,
        ContainerStream::Stderr => 1,
    }
}

impl Decoder {
    pub fn new(max_line: usize) -> Self {
        Self::resuming(max_line, None)
    }

    /// A decoder of a file read again from a checkpoint that recorded `delivered`
    /// ([`Decoder::streams`]): a stream's records before its offset are skipped.
    pub fn resuming(max_line: usize, delivered: Option<Streams>) -> Self {
        Self {
            max_line,
            partial: [None, None],
            lines: 0,
            joined: Vec::new(),
            reported: false,
            resume: delivered,
        }
    }

    /// Feeds the record `record` (without its newline) read at file offset `at` of `path`;
    /// returns the application line it completes, if any.
    ///
    /// Notable errors: a record that is neither CRI nor docker `json-file` is
    /// [`MalformedLine`]; the lines in progress are kept (a corrupt record between two
    /// parts does not end the line).
    pub fn feed<'a>(
        &'a mut self,
        spec: CriSpec,
        record: &'a [u8],
        at: u64,
        path: &str,
    ) -> Result<Option<Line<'a>>, MalformedLine> {
        self.lines += 1;
        let r = parse(record).map_err(|error| MalformedLine {
            path: path.to_owned(),
            line: self.lines,
            offset: at,
            error,
        })?;
        if !spec.reads(r.stream) {
            return Ok(None);
        }
        if let Some(delivered) = self.resume {
            let to = match r.stream {
                ContainerStream::Stdout => delivered.stdout,
                ContainerStream::Stderr => delivered.stderr,
            };
            if at < to {
                return Ok(None);
            }
        }
        let max = self.max_line;
        let held = &mut self.partial[slot(r.stream)];
        if held.is_none() && !r.partial {
            let text: &'a [u8] = match r.message {
                Cow::Borrowed(m) => m,
                Cow::Owned(m) => {
                    self.joined = m;
                    &self.joined
                }
            };
            let truncated = text.len() > max;
            return Ok(Some(Line {
                stream: r.stream,
                text: &text[..text.len().min(max)],
                truncated,
            }));
        }
        let p = held.get_or_insert_with(|| Partial {
            start: at,
            ..Partial::default()
        });
        let room = max.saturating_sub(p.text.len());
        if r.message.len() > room {
            p.cut = true;
        }
        p.text
            .extend_from_slice(&r.message[..r.message.len().min(room)]);
        if r.partial {
            return Ok(None);
        }
        let Some(done) = held.take() else {
            return Ok(None);
        };
        self.joined = done.text;
        Ok(Some(Line {
            stream: r.stream,
            text: &self.joined,
            truncated: done.cut,
        }))
    }

    /// The file offset the file is routed to at most: the first part of a line in
    /// progress (a restart reads it again whole), or `None` when no line is in progress.
    pub fn held_from(&self) -> Option<u64> {
        self.partial.iter().flatten().map(|p| p.start).min()
    }

    /// With a line in progress, how far each stream is delivered once the records up to
    /// `routed_to` are: a stream with a line in progress to its first part, the other to
    /// `routed_to` — or further, to where the checkpoint this decoder resumed from said it
    /// was (a restart reads again from the held part, and a second restart must not send
    /// what the first run delivered). `None` when no line is in progress (`routed_to`
    /// says it all).
    pub fn streams(&self, routed_to: u64) -> Option<Streams> {
        let [stdout, stderr] = &self.partial;
        if stdout.is_none() && stderr.is_none() {
            return None;
        }
        let to = |p: &Option<Partial>, resumed: u64| {
            let here = p.as_ref().map_or(routed_to, |p| p.start.min(routed_to));
            here.max(resumed)
        };
        let resumed = self.resume.unwrap_or(Streams {
            stdout: 0,
            stderr: 0,
        });
        Some(Streams {
            stdout: to(stdout, resumed.stdout),
            stderr: to(stderr, resumed.stderr),
        })
    }

    /// The lines in progress, as they are (the file ends without their last part: the
    /// container died mid-line, or the file is dropped), stdout's first.
    pub fn finish(&mut self) -> Vec<Line<'_>> {
        let [stdout, stderr] = &mut self.partial;
        let mut out = Vec::new();
        for (stream, p) in [
            (ContainerStream::Stdout, stdout.take()),
            (ContainerStream::Stderr, stderr.take()),
        ] {
            if let Some(p) = p {
                out.push((stream, p));
            }
        }
        self.joined.clear();
        let mut lines = Vec::new();
        // Two lines at most: keep both texts in `joined`, one after the other.
        let mut bounds = Vec::new();
        for (stream, p) in out {
            let from = self.joined.len();
            self.joined.extend_from_slice(&p.text);
            bounds.push((stream, from, self.joined.len(), p.cut));
        }
        for (stream, from, to, cut) in bounds {
            lines.push(Line {
                stream,
                text: &self.joined[from..to],
                truncated: cut,
            });
        }
        lines
    }

    /// Forgets the lines in progress (the file is read again from its checkpoint).
    pub fn reset(&mut self) {
        self.partial = [None, None];
    }
}

/// Routes the application lines of the records in `data` (whole records, each ending in
/// a newline, the first at file offset `base` of `path`) into `run`; returns how many
/// were cut at the line limit. Malformed records are counted in
/// `servicelog_lines_unparsed_total{source}` and the first of each file is logged.
pub fn route(
    run: &mut Run<'_>,
    decoder: &mut Decoder,
    spec: CriSpec,
    data: &[u8],
    base: u64,
    path: &str,
    (source, metrics): (&str, &Metrics),
) -> usize {
    let mut truncated = 0;
    let mut malformed = 0;
    let mut raw = Vec::new();
    let mut start = 0;
    for nl in memchr::memchr_iter(b'\n', data) {
        match decoder.feed(spec, &data[start..nl], base + start as u64, path) {
            Ok(Some(line)) => {
                truncated += usize::from(line.truncated);
                push(run, &mut raw, line.text);
            }
            Ok(None) => {}
            Err(e) => {
                malformed += 1;
                if !decoder.reported {
                    decoder.reported = true;
                    tracing::warn!(source, error = %e, "not a container runtime log record: not routed (counted in servicelog_lines_unparsed_total; logged once per file)");
                }
            }
        }
        start = nl + 1;
    }
    if malformed > 0 {
        metrics.unparsed_counter(source).inc_by(malformed);
    }
    truncated
}

/// Routes the lines `decoder` has in progress as they are: their file ends without the
/// rest (the container died mid-line, or the file was rotated away or truncated).
pub fn route_unfinished(run: &mut Run<'_>, decoder: &mut Decoder) -> usize {
    let mut raw = Vec::new();
    let mut truncated = 0;
    for line in decoder.finish() {
        truncated += usize::from(line.truncated);
        push(run, &mut raw, line.text);
    }
    truncated
}

/// `encoding: raw` sinks get the application's line and a newline, not the record.
fn push(run: &mut Run<'_>, raw: &mut Vec<u8>, text: &[u8]) {
    raw.clear();
    raw.extend_from_slice(text);
    raw.push(b'\n');
    run.push_line(text, raw);
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOTH: CriSpec = CriSpec {
        stdout: true,
        stderr: true,
    };

    /// Feeds `records` (with offsets as if one a line, newline-terminated) and collects
    /// the lines, `stream:text`, truncated ones marked `~`.
    fn decode(spec: CriSpec, max: usize, records: &[&str]) -> (Vec<String>, Vec<MalformedLine>) {
        let mut d = Decoder::new(max);
        let mut at = 0;
        let (mut lines, mut errors) = (Vec::new(), Vec::new());
        for r in records {
            match d.feed(spec, r.as_bytes(), at, "/var/log/pods/x/app/0.log") {
                Ok(Some(l)) => lines.push(show(&l)),
                Ok(None) => {}
                Err(e) => errors.push(e),
            }
            at += r.len() as u64 + 1;
        }
        (lines, errors)
    }

    fn show(l: &Line<'_>) -> String {
        let stream = match l.stream {
            ContainerStream::Stdout => "out",
            ContainerStream::Stderr => "err",
        };
        let mark = if l.truncated { "~" } else { "" };
        format!("{stream}:{}{mark}", String::from_utf8_lossy(l.text))
    }

    const T: &str = "2026-12-07T17:27:32.123456789Z";

    #[test]
    fn given_cri_records_then_the_message_is_what_follows_the_tag_unchanged() {
        let (lines, errors) = decode(
            BOTH,
            1024,
            &[
                &format!("{T} stdout F {{\"level\":\"info\",\"msg\":\"a b  c\"}}"),
                &format!("{T} stderr F  leading space kept"),
                &format!("{T} stdout F"),
                &format!("{T} stdout F "),
                "2026-12-07T17:27:32.1+01:00 stdout F:x tagged",
            ],
        );
        assert_eq!(errors, []);
        assert_eq!(
            lines,
            [
                "out:{\"level\":\"info\",\"msg\":\"a b  c\"}",
                "err: leading space kept",
                "out:",
                "out:",
                "out:tagged"
            ]
        );
    }

    #[test]
    fn given_partial_records_of_two_streams_interleaved_then_each_line_is_joined_on_its_own() {
        let (lines, errors) = decode(
            BOTH,
            1024,
            &[
                &format!("{T} stdout P {{\"msg\":\"lo"),
                &format!("{T} stderr P warn"),
                &format!("{T} stdout P ng"),
                &format!("{T} stderr F ing"),
                &format!("{T} stdout F \"}}"),
            ],
        );
        assert_eq!(errors, []);
        assert_eq!(lines, ["err:warning", "out:{\"msg\":\"long\"}"]);
    }

    #[test]
    fn given_a_line_in_progress_then_the_file_is_held_at_its_first_part() {
        let mut d = Decoder::new(1024);
        let first = format!("{T} stdout F done");
        let part = format!("{T} stdout P par");
        let end = format!("{T} stdout F t");
        assert!(d.feed(BOTH, first.as_bytes(), 0, "f").is_ok());
        assert_eq!(d.held_from(), None);
        let at = first.len() as u64 + 1;
        assert_eq!(
            d.feed(BOTH, part.as_bytes(), at, "f").map(|l| l.is_none()),
            Ok(true)
        );
        assert_eq!(d.held_from(), Some(at), "held at the part's record");
        let line = d
            .feed(BOTH, end.as_bytes(), at + part.len() as u64 + 1, "f")
            .expect("parses")
            .map(|l| show(&l));
        assert_eq!(line.as_deref(), Some("out:part"));
        assert_eq!(d.held_from(), None, "released once the line is complete");
    }

    #[test]
    fn given_a_line_longer_than_the_limit_then_it_is_cut_and_the_rest_of_its_parts_skipped() {
        let (lines, _) = decode(
            BOTH,
            8,
            &[
                &format!("{T} stdout P 12345"),
                &format!("{T} stdout P 67890"),
                &format!("{T} stdout P abc"),
                &format!("{T} stdout F def"),
                &format!("{T} stdout F 0123456789"),
                &format!("{T} stdout F next"),
            ],
        );
        assert_eq!(lines, ["out:12345678~", "out:01234567~", "out:next"]);
    }

    #[test]
    fn given_one_stream_read_then_the_other_streams_records_are_skipped_even_partial_ones() {
        let stderr_only = CriSpec {
            stdout: false,
            stderr: true,
        };
        let (lines, errors) = decode(
            stderr_only,
            1024,
            &[
                &format!("{T} stdout P not"),
                &format!("{T} stderr F boom"),
                &format!("{T} stdout F read"),
            ],
        );
        assert_eq!(errors, []);
        assert_eq!(lines, ["err:boom"]);
    }

    #[test]
    fn given_docker_json_file_records_then_log_is_the_message_and_no_newline_means_partial() {
        let (lines, errors) = decode(
            BOTH,
            1024,
            &[
                r#"{"log":"plain\n","stream":"stdout","time":"2026-12-07T17:27:32.1Z"}"#,
                r#"{"log":"tab\tand \"quote\"\n","stream":"stderr","time":"2026-12-07T17:27:32.1Z"}"#,
                r#"{"log":"first half, ","stream":"stdout","time":"2026-12-07T17:27:32.1Z"}"#,
                r#"{"log":"second\n","stream":"stdout","time":"2026-12-07T17:27:32.2Z"}"#,
            ],
        );
        assert_eq!(errors, []);
        assert_eq!(
            lines,
            [
                "out:plain",
                "err:tab\tand \"quote\"",
                "out:first half, second"
            ]
        );
    }

    #[test]
    fn given_malformed_records_then_each_is_an_error_naming_file_line_and_cause_and_reading_goes_on()
     {
        let (lines, errors) = decode(
            BOTH,
            1024,
            &[
                &format!("{T} stdout P begun "),
                "two words",
                &format!("{T} stdin F x"),
                &format!("{T} stdout X x"),
                "yesterday stdout F x",
                r#"{"log":"x"#,
                r#"{"log":"x\n","stream":"stdout","time":"now"}"#,
                "just some text",
                &format!("{T} stdout F and ended"),
            ],
        );
        assert_eq!(
            lines,
            ["out:begun and ended"],
            "the line in progress survives"
        );
        let got: Vec<(u64, CriError)> = errors.iter().map(|e| (e.line, e.error.clone())).collect();
        assert_eq!(
            got,
            [
                (2, CriError::Fields),
                (3, CriError::Stream("stdin".into())),
                (4, CriError::Tag("X".into())),
                (5, CriError::Time("yesterday".into())),
                (
                    6,
                    CriError::Docker("EOF while parsing a string at line 1 column 9".into())
                ),
                (7, CriError::Time("now".into())),
                (8, CriError::Time("just".into())),
            ]
        );
        let text = errors[0].to_string();
        assert_eq!(
            text,
            format!(
                "/var/log/pods/x/app/0.log: line 2 (byte {}): no timestamp, stream and tag before the message",
                format!("{T} stdout P begun ").len() + 1
            )
        );
    }

    #[test]
    fn given_lines_in_progress_when_the_file_ends_then_finish_hands_them_out_as_they_are() {
        let mut d = Decoder::new(1024);
        for r in [format!("{T} stderr P half"), format!("{T} stdout P out")] {
            assert!(d.feed(BOTH, r.as_bytes(), 0, "f").is_ok());
        }
        let lines: Vec<String> = d.finish().iter().map(show).collect();
        assert_eq!(lines, ["out:out", "err:half"]);
        assert_eq!(d.held_from(), None);
    }

    /// The file offset of each record, one record a line.
    fn offsets(records: &[String]) -> Vec<u64> {
        records
            .iter()
            .scan(0, |pos, r| {
                let here = *pos;
                *pos += r.len() as u64 + 1;
                Some(here)
            })
            .collect()
    }

    #[test]
    fn given_a_stdout_line_in_progress_when_resumed_from_its_checkpoint_then_stderr_lines_already_delivered_are_skipped()
     {
        let records = [
            format!("{T} stdout P hea"),
            format!("{T} stderr F err 1"),
            format!("{T} stderr F err 2"),
            format!("{T} stdout F d"),
            format!("{T} stderr F err 3"),
        ];
        let at = offsets(&records);
        let mut d = Decoder::new(1024);
        for i in 0..3 {
            assert!(d.feed(BOTH, records[i].as_bytes(), at[i], "f").is_ok());
        }
        let delivered = d.streams(at[3]);
        assert_eq!(
            delivered,
            Some(Streams {
                stdout: at[0],
                stderr: at[3]
            }),
            "stdout held at its part, stderr delivered through its two lines"
        );
        // Restarted: read again from the held part.
        let mut again = Decoder::resuming(1024, delivered);
        let lines: Vec<String> = (0..5)
            .filter_map(|i| {
                again
                    .feed(BOTH, records[i].as_bytes(), at[i], "f")
                    .expect("parses")
                    .map(|l| show(&l))
            })
            .collect();
        assert_eq!(lines, ["out:head", "err:err 3"]);
        assert_eq!(Decoder::new(8).streams(at[3]), None, "nothing in progress");
    }

    /// Two restarts while a line is in progress: the second run, stopped after fewer
    /// records than the first delivered, must not move the other stream's mark back.
    #[test]
    fn given_a_line_in_progress_when_restarted_twice_then_no_line_of_the_other_stream_comes_twice()
    {
        let mut records = vec![format!("{T} stdout P hea")];
        records.extend((0..10).map(|i| format!("{T} stderr F err {i}")));
        let at = offsets(&records);
        let end = at[10] + records[10].len() as u64 + 1;
        let mut first = Decoder::new(1024);
        let mut sent = Vec::new();
        for (r, &a) in records.iter().zip(&at) {
            if let Some(l) = first.feed(BOTH, r.as_bytes(), a, "f").expect("parses") {
                sent.push(show(&l));
            }
        }
        let delivered = first.streams(end);
        // Restarted, it reads one chunk of 5 records and is stopped again.
        let mut second = Decoder::resuming(1024, delivered);
        for (r, &a) in records.iter().zip(&at).take(5) {
            if let Some(l) = second.feed(BOTH, r.as_bytes(), a, "f").expect("parses") {
                sent.push(show(&l));
            }
        }
        let delivered = second.streams(at[5]);
        assert_eq!(
            delivered.map(|d| d.stderr),
            Some(end),
            "stderr was delivered to the end"
        );
        let mut third = Decoder::resuming(1024, delivered);
        for (r, &a) in records.iter().zip(&at) {
            if let Some(l) = third.feed(BOTH, r.as_bytes(), a, "f").expect("parses") {
                sent.push(show(&l));
            }
        }
        let expected: Vec<String> = (0..10).map(|i| format!("err:err {i}")).collect();
        assert_eq!(
            sent, expected,
            "every stderr line once, stdout still in progress"
        );
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_parse_to_a_record_or_an_error_never_a_panic(
            line in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80)
        ) {
            let mut d = Decoder::new(16);
            let _ = d.feed(BOTH, &line, 0, "f");
        }
    }
}
