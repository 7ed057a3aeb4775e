//! The borrowed view of one log line that the router evaluates.
//!
//! Routing must be cheap enough to run on every line, so an [`Event`] is not a JSON tree:
//! parsing walks the line once and remembers, as byte ranges into it, only the values the
//! compiled program can ask for (the level, the message and the fields named in
//! conditions). Strings stay escaped until a condition actually needs their text, and then
//! are unescaped into a `Cow` that borrows whenever the string had no escapes.

use std::borrow::Cow;

use super::keys::Found;
use crate::v1alpha1::Level;

/// Most distinct field names the conditions of one spec may use. Bounds the per-event
/// storage, which lives inline in [`Event`] so that parsing never allocates.
pub const MAX_FIELDS: usize = 32;

/// How a string's bytes are escaped in the line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Esc {
    #[default]
    None,
    Json,
    Logfmt,
}

/// The kind of value a slot refers to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Kind {
    #[default]
    Absent,
    /// A JSON string (or a text event's message): compares equal to strings only.
    Str(Esc),
    /// A logfmt value: untyped text, which compares equal to a string, a number or a
    /// boolean it spells.
    Untyped(Esc),
    Num,
    Bool(bool),
    Null,
    /// An object or array: only `exists` can see it.
    Composite,
}

/// Where a value is in the line. Offsets rather than slices keep [`Event`] small: it holds
/// [`MAX_FIELDS`] of these inline.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Slot {
    pub(crate) start: u32,
    pub(crate) end: u32,
    pub(crate) kind: Kind,
}

impl Slot {
    pub(crate) const ABSENT: Slot = Slot {
        start: 0,
        end: 0,
        kind: Kind::Absent,
    };

    pub(crate) fn new(kind: Kind, start: usize, end: usize) -> Slot {
        // Lines longer than u32::MAX never reach here: they are text events.
        Slot {
            start: start as u32,
            end: end as u32,
            kind,
        }
    }

    pub(crate) fn is_present(&self) -> bool {
        self.kind != Kind::Absent
    }
}

/// A value read from an event, borrowing the line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Value<'a> {
    Absent,
    Str(&'a [u8], Esc),
    Untyped(&'a [u8], Esc),
    Num(&'a [u8]),
    Bool(bool),
    Null,
    Composite,
}

impl<'a> Value<'a> {
    /// The text a regex or a string comparison sees: strings unescaped, numbers and
    /// booleans as written; `None` for null, objects, arrays and absent values.
    pub(crate) fn text(self) -> Option<Cow<'a, [u8]>> {
        match self {
            Value::Str(raw, esc) | Value::Untyped(raw, esc) => Some(unescape(raw, esc)),
            Value::Num(raw) => Some(Cow::Borrowed(raw)),
            Value::Bool(true) => Some(Cow::Borrowed(b"true")),
            Value::Bool(false) => Some(Cow::Borrowed(b"false")),
            Value::Absent | Value::Null | Value::Composite => None,
        }
    }
}

/// Where the event came from and what was read from it. Built by
/// [`crate::rules::Router::parse`] (or `event_with_level` / `event_with_message` for
/// sources whose parser lives in the sidecar, like syslog), routed by
/// [`crate::rules::Router::route`].
#[derive(Clone, Debug)]
pub struct Event<'a> {
    pub(crate) line: &'a [u8],
    pub(crate) source: usize,
    /// The router that parsed the event: field slots are numbered per router, so an event
    /// handed to another router (across a config swap) is re-parsed by it.
    pub(crate) program: u64,
    pub(crate) text: bool,
    /// The level was given by the caller, not read from the line.
    pub(crate) explicit: bool,
    pub(crate) level: Option<Level>,
    /// The message of a text event.
    pub(crate) text_message: &'a [u8],
    /// The message of a structured event.
    pub(crate) message: Slot,
    /// The values read from a structured event; parsing writes them in place.
    pub(crate) found: Found,
    /// Fields named `message`, which a text event has (its message) and nothing else.
    pub(crate) message_fields: u32,
    /// Set by [`crate::rules::Router::parse_keeping`]: which [`crate::rules::Members`] kept
    /// this line's members, and at which of its parses (see `Members::of`).
    pub(crate) kept: Option<(u64, u64)>,
}

impl<'a> Event<'a> {
    pub(crate) fn text(
        program: u64,
        source: usize,
        line: &'a [u8],
        message: &'a [u8],
        message_fields: u32,
    ) -> Event<'a> {
        Event {
            line,
            source,
            program,
            text: true,
            explicit: false,
            level: None,
            text_message: message,
            message: Slot::ABSENT,
            found: Found::new(),
            message_fields,
            kept: None,
        }
    }

    /// The raw line, as read.
    pub fn line(&self) -> &'a [u8] {
        self.line
    }

    /// Index of the source in the spec's `sources`.
    pub fn source(&self) -> usize {
        self.source
    }

    /// True when the line is a text event: a `text` source, a line that did not parse in
    /// its source's format, or a line handed over with an explicit level. Its only field
    /// is `message`.
    pub fn is_text(&self) -> bool {
        self.text
    }

    /// The recognised level, if the event has one.
    pub fn level(&self) -> Option<Level> {
        self.level
    }

    /// The message: `msg`, else `message` (or the source's `messageField`); the whole line
    /// for a text event. Lossy for bytes that are not UTF-8.
    pub fn message(&self) -> Option<Cow<'a, str>> {
        let bytes = if self.text {
            Cow::Borrowed(self.text_message)
        } else {
            self.slot_value(self.message).text()?
        };
        Some(match bytes {
            Cow::Borrowed(b) => String::from_utf8_lossy(b),
            Cow::Owned(v) => Cow::Owned(match String::from_utf8(v) {
                Ok(s) => s,
                Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
            }),
        })
    }

    pub(crate) fn message_value(&self) -> Value<'a> {
        if self.text {
            Value::Str(self.text_message, Esc::None)
        } else {
            self.slot_value(self.message)
        }
    }

    pub(crate) fn field(&self, id: usize) -> Value<'a> {
        if self.text {
            if id < 32 && self.message_fields & (1 << id) != 0 {
                return Value::Str(self.text_message, Esc::None);
            }
            return Value::Absent;
        }
        match self.found.fields.get(id) {
            Some(slot) => self.slot_value(*slot),
            None => Value::Absent,
        }
    }

    pub(crate) fn slot_value(&self, slot: Slot) -> Value<'a> {
        let Some(raw) = self.line.get(slot.start as usize..slot.end as usize) else {
            return Value::Absent;
        };
        match slot.kind {
            Kind::Absent => Value::Absent,
            Kind::Str(esc) => Value::Str(raw, esc),
            Kind::Untyped(esc) => Value::Untyped(raw, esc),
            Kind::Num => Value::Num(raw),
            Kind::Bool(b) => Value::Bool(b),
            Kind::Null => Value::Null,
            Kind::Composite => Value::Composite,
        }
    }
}

/// Reads a level from its text: case-insensitive, surrounding whitespace ignored (log4j
/// pads `INFO `), with the syslog and common-logger aliases of DESIGN.md. Never allocates.
pub fn parse_level(text: &[u8]) -> Option<Level> {
    let text = text.trim_ascii();
    let is = |word: &[u8]| text.eq_ignore_ascii_case(word);
    let level = match text.len() {
        3 if is(b"err") => Level::Error,
        4 if is(b"info") => Level::Info,
        4 if is(b"warn") => Level::Warn,
        4 if is(b"crit") => Level::Fatal,
        5 if is(b"trace") => Level::Trace,
        5 if is(b"debug") => Level::Debug,
        5 if is(b"error") => Level::Error,
        5 if is(b"fatal") || is(b"alert") || is(b"emerg") || is(b"panic") => Level::Fatal,
        6 if is(b"notice") => Level::Info,
        7 if is(b"warning") => Level::Warn,
        8 if is(b"critical") => Level::Fatal,
        13 if is(b"informational") => Level::Info,
        _ => return None,
    };
    Some(level)
}

pub(crate) fn level_of(value: Value<'_>) -> Option<Level> {
    match value {
        Value::Str(raw, Esc::None) | Value::Untyped(raw, Esc::None) => parse_level(raw),
        Value::Str(..) | Value::Untyped(..) => parse_level(&value.text()?),
        _ => None,
    }
}

pub(crate) fn unescape(raw: &[u8], esc: Esc) -> Cow<'_, [u8]> {
    match esc {
        Esc::None => Cow::Borrowed(raw),
        Esc::Json | Esc::Logfmt => Cow::Owned(unescape_backslashes(raw)),
    }
}

/// Decodes JSON escapes (`\n`, `\"`, `\uXXXX` with surrogate pairs). logfmt quoting as
/// written by Go's logfmt libraries uses the same escapes, so one decoder serves both.
/// Invalid escapes are kept as written and lone surrogates become U+FFFD: by the time a
/// value is unescaped its line is already an event, and a best-effort text is more useful
/// than none.
fn unescape_backslashes(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if b != b'\\' || i + 1 >= raw.len() {
            out.push(b);
            i += 1;
            continue;
        }
        let e = raw[i + 1];
        i += 2;
        let simple = match e {
            b'"' => Some(b'"'),
            b'\\' => Some(b'\\'),
            b'/' => Some(b'/'),
            b'b' => Some(0x08),
            b'f' => Some(0x0c),
            b'n' => Some(b'\n'),
            b'r' => Some(b'\r'),
            b't' => Some(b'\t'),
            _ => None,
        };
        if let Some(c) = simple {
            out.push(c);
            continue;
        }
        if e == b'u'
            && let Some(hi) = hex4(raw.get(i..i + 4))
        {
            i += 4;
            let mut code = u32::from(hi);
            if (0xD800..0xDC00).contains(&hi) {
                let lo = if raw.get(i..i + 2) == Some(b"\\u") {
                    hex4(raw.get(i + 2..i + 6))
                } else {
                    None
                };
                match lo {
                    Some(lo) if (0xDC00..0xE000).contains(&lo) => {
                        i += 6;
                        code =
                            0x10000 + ((u32::from(hi) - 0xD800) << 10) + (u32::from(lo) - 0xDC00);
                    }
                    _ => code = 0xFFFD,
                }
            }
            let c = char::from_u32(code).unwrap_or('\u{FFFD}');
            let mut buf = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            continue;
        }
        out.push(b'\\');
        out.push(e);
    }
    out
}

fn hex4(b: Option<&[u8]>) -> Option<u16> {
    let b = b?;
    let mut v: u16 = 0;
    for &c in b {
        let d = (c as char).to_digit(16)?;
        v = (v << 4) | d as u16;
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_and_aliases_parse_case_insensitively() {
        let cases: &[(&str, Option<Level>)] = &[
            ("trace", Some(Level::Trace)),
            ("DEBUG", Some(Level::Debug)),
            ("Info", Some(Level::Info)),
            ("notice", Some(Level::Info)),
            ("INFORMATIONAL", Some(Level::Info)),
            ("warn", Some(Level::Warn)),
            ("Warning", Some(Level::Warn)),
            ("err", Some(Level::Error)),
            ("ERROR", Some(Level::Error)),
            ("fatal", Some(Level::Fatal)),
            ("crit", Some(Level::Fatal)),
            ("critical", Some(Level::Fatal)),
            ("alert", Some(Level::Fatal)),
            ("emerg", Some(Level::Fatal)),
            ("PANIC", Some(Level::Fatal)),
            ("INFO ", Some(Level::Info)),
            ("verbose", None),
            ("", None),
            ("informationally", None),
            ("inf", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_level(text.as_bytes()), *want, "level of {text:?}");
        }
    }

    #[test]
    fn unescape_handles_json_escapes() {
        let cases: &[(&str, &str)] = &[
            (r#"a\"b"#, "a\"b"),
            (r"a\\b", "a\\b"),
            (r"a\nb\tc", "a\nb\tc"),
            (r"\u00e9", "é"),
            (r"\ud83d\ude00", "😀"),
            (r"\ud83d", "\u{FFFD}"),
            (r"\ud83dx", "\u{FFFD}x"),
            (r"\q", "\\q"),
            (r"\u12", "\\u12"),
            ("end\\", "end\\"),
        ];
        for (raw, want) in cases {
            assert_eq!(
                unescape(raw.as_bytes(), Esc::Json).as_ref(),
                want.as_bytes(),
                "unescape {raw:?}"
            );
        }
    }
}
