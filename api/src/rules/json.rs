//! A single-pass JSON scanner that reads only the keys a source's plan asks for.
//!
//! A `json` line must be a JSON object, otherwise it is a text event; so the whole line is
//! walked and checked for structure even when every wanted key has been seen — a truncated
//! line must not be routed as if it were complete. Values nobody asked for are skipped
//! (string ends found with `memchr`), and the scanner descends into a nested object only
//! when a dotted name needs it.
//!
//! The walk is iterative with an explicit bit stack, so hostile nesting cannot overflow
//! the thread's stack; nesting deeper than [`MAX_DEPTH`] (serde_json's own limit) is
//! malformed. The checks are structural: strings must end and their escapes be valid,
//! numbers and literals well formed, brackets balanced, nothing after the object. Raw
//! control characters inside strings are tolerated, as many loggers emit them and the
//! line is still unambiguous.

use std::borrow::Cow;

use memchr::memchr2;

use super::{
    event::{Esc, Kind, Slot, unescape},
    keys::{Found, KeyTable},
};

/// Deepest nesting of objects and arrays a JSON line may have.
pub const MAX_DEPTH: usize = 128;

/// Most segments a dotted field name may have.
pub const MAX_PATH: usize = 8;

/// The line is not a JSON object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Malformed;

type Result<T> = std::result::Result<T, Malformed>;

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    /// Just after `{`: a key or `}`.
    ObjectStart,
    /// After `,` in an object: a key.
    ObjectKey,
    /// Just after `[`: a value or `]`.
    ArrayStart,
    /// After `,` in an array: a value.
    ArrayValue,
    /// After a value: `,` or the container's closing bracket.
    AfterValue,
}

struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

impl Cursor<'_> {
    #[inline]
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.b.get(self.i) {
            self.i += 1;
        }
    }

    #[inline]
    fn peek(&self) -> Result<u8> {
        self.b.get(self.i).copied().ok_or(Malformed)
    }

    /// With the cursor just after an opening quote: moves past the closing quote and
    /// returns where the content ends and whether it has escapes.
    #[inline]
    fn string(&mut self) -> Result<(usize, bool)> {
        let mut escaped = false;
        loop {
            let j = self.i + find_quote_or_backslash(self.b.get(self.i..).ok_or(Malformed)?)?;
            if self.b.get(j) == Some(&b'"') {
                self.i = j + 1;
                return Ok((j, escaped));
            }
            escaped = true;
            match self.b.get(j + 1) {
                Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => self.i = j + 2,
                Some(b'u') => {
                    let hex = self.b.get(j + 2..j + 6).ok_or(Malformed)?;
                    if !hex.iter().all(u8::is_ascii_hexdigit) {
                        return Err(Malformed);
                    }
                    self.i = j + 6;
                }
                _ => return Err(Malformed),
            }
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.i;
        while let Some(b'0'..=b'9') = self.b.get(self.i) {
            self.i += 1;
        }
        self.i - start
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`
    fn number(&mut self) -> Result<()> {
        if self.b.get(self.i) == Some(&b'-') {
            self.i += 1;
        }
        match self.b.get(self.i) {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(Malformed),
        }
        if self.b.get(self.i) == Some(&b'.') {
            self.i += 1;
            if self.digits() == 0 {
                return Err(Malformed);
            }
        }
        if let Some(b'e' | b'E') = self.b.get(self.i) {
            self.i += 1;
            if let Some(b'+' | b'-') = self.b.get(self.i) {
                self.i += 1;
            }
            if self.digits() == 0 {
                return Err(Malformed);
            }
        }
        Ok(())
    }

    fn literal(&mut self, word: &[u8]) -> Result<()> {
        if self.b.get(self.i..self.i + word.len()) == Some(word) {
            self.i += word.len();
            Ok(())
        } else {
            Err(Malformed)
        }
    }
}

/// Keys and most values in log lines are a few bytes long, where a plain loop beats the
/// setup of a vectorised search; long strings (messages, stack traces) go to `memchr`.
#[inline]
fn find_quote_or_backslash(s: &[u8]) -> Result<usize> {
    const SHORT: usize = 16;
    let head = s.get(..SHORT).unwrap_or(s);
    if let Some(k) = head.iter().position(|&c| c == b'"' || c == b'\\') {
        return Ok(k);
    }
    let tail = s.get(SHORT..).ok_or(Malformed)?;
    memchr2(b'"', b'\\', tail).map(|k| SHORT + k).ok_or(Malformed)
}

/// True when `text` is exactly one JSON number.
pub(crate) fn is_number(text: &[u8]) -> bool {
    let mut c = Cursor { b: text, i: 0 };
    c.number().is_ok() && c.i == text.len()
}

/// Walks `line` as a JSON object, storing the values `root` asks for into `found`.
pub(crate) fn scan(line: &[u8], root: &KeyTable, found: &mut Found) -> Result<()> {
    let mut c = Cursor { b: line, i: 0 };
    c.ws();
    if c.peek()? != b'{' {
        return Err(Malformed);
    }
    c.i += 1;

    // tables[d - 1] is the plan for the object at depth d (the line itself is depth 1);
    // only depths 1..=table_depth have one, and keys are looked up only at table_depth.
    let mut tables: [&KeyTable; MAX_PATH] = [root; MAX_PATH];
    let mut table_depth = 1usize;
    let mut depth = 1usize;
    // Bit d - 1 is set when the container at depth d is an object.
    let mut objects: u128 = 1;
    let mut state = State::ObjectStart;

    loop {
        c.ws();
        let ch = c.peek()?;
        let mut wanted = None;
        match state {
            State::ObjectStart | State::ObjectKey => {
                c.i += 1;
                if ch == b'}' && state == State::ObjectStart {
                    if close(&mut c, &mut depth, &mut table_depth)? {
                        return Ok(());
                    }
                    state = State::AfterValue;
                    continue;
                }
                if ch != b'"' {
                    return Err(Malformed);
                }
                let start = c.i;
                let (end, escaped) = c.string()?;
                c.ws();
                if c.peek()? != b':' {
                    return Err(Malformed);
                }
                c.i += 1;
                c.ws();
                if depth == table_depth {
                    let key = &line[start..end];
                    let table = tables.get(depth - 1).copied().unwrap_or(root);
                    wanted = if escaped {
                        let key: Cow<'_, [u8]> = unescape(key, Esc::Json);
                        table.lookup(&key)
                    } else {
                        table.lookup(key)
                    };
                }
            }
            State::ArrayStart | State::ArrayValue => {
                if ch == b']' && state == State::ArrayStart {
                    c.i += 1;
                    if close(&mut c, &mut depth, &mut table_depth)? {
                        return Ok(());
                    }
                    state = State::AfterValue;
                    continue;
                }
            }
            State::AfterValue => {
                c.i += 1;
                let in_object = objects & (1 << (depth - 1)) != 0;
                match (ch, in_object) {
                    (b',', true) => state = State::ObjectKey,
                    (b',', false) => state = State::ArrayValue,
                    (b'}', true) | (b']', false) => {
                        if close(&mut c, &mut depth, &mut table_depth)? {
                            return Ok(());
                        }
                    }
                    _ => return Err(Malformed),
                }
                continue;
            }
        }

        // A value, at c.i.
        let ch = c.peek()?;
        let start = c.i;
        let kind = match ch {
            b'{' | b'[' => {
                c.i += 1;
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(Malformed);
                }
                let bit = 1u128 << (depth - 1);
                if ch == b'{' {
                    objects |= bit;
                    state = State::ObjectStart;
                    if let Some(child) = wanted.and_then(|e| e.child.as_deref()) {
                        if let Some(t) = tables.get_mut(depth - 1) {
                            *t = child;
                            table_depth = depth;
                        }
                    }
                } else {
                    objects &= !bit;
                    state = State::ArrayStart;
                }
                if let Some(e) = wanted {
                    found.store(e.target, Slot::new(Kind::Composite, start, start));
                }
                continue;
            }
            b'"' => {
                c.i += 1;
                let (end, escaped) = c.string()?;
                if let Some(e) = wanted {
                    let esc = if escaped { Esc::Json } else { Esc::None };
                    found.store(e.target, Slot::new(Kind::Str(esc), start + 1, end));
                }
                state = State::AfterValue;
                continue;
            }
            b't' => {
                c.literal(b"true")?;
                Kind::Bool(true)
            }
            b'f' => {
                c.literal(b"false")?;
                Kind::Bool(false)
            }
            b'n' => {
                c.literal(b"null")?;
                Kind::Null
            }
            b'-' | b'0'..=b'9' => {
                c.number()?;
                Kind::Num
            }
            _ => return Err(Malformed),
        };
        if let Some(e) = wanted {
            found.store(e.target, Slot::new(kind, start, c.i));
        }
        state = State::AfterValue;
    }
}

/// Leaves the current container; true when it was the line's object and the line ends
/// there.
#[inline]
fn close(c: &mut Cursor<'_>, depth: &mut usize, table_depth: &mut usize) -> Result<bool> {
    *depth -= 1;
    if *depth == 0 {
        c.ws();
        return if c.i == c.b.len() {
            Ok(true)
        } else {
            Err(Malformed)
        };
    }
    *table_depth = (*table_depth).min(*depth);
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::keys::Target;

    fn table(paths: &[&str]) -> KeyTable {
        let mut t = KeyTable::default();
        for (i, p) in paths.iter().enumerate() {
            let segs: Vec<&str> = p.split('.').collect();
            t.insert(
                &segs,
                Target {
                    field: Some(i as u8),
                    ..Target::default()
                },
            );
        }
        t
    }

    fn values(line: &str, paths: &[&str]) -> Option<Vec<Option<String>>> {
        let t = table(paths);
        let mut f = Found::new();
        scan(line.as_bytes(), &t, &mut f).ok()?;
        Some(
            (0..paths.len())
                .map(|i| {
                    let s = f.fields[i];
                    match s.kind {
                        Kind::Absent => None,
                        Kind::Composite => Some("<composite>".to_string()),
                        _ => Some(line[s.start as usize..s.end as usize].to_string()),
                    }
                })
                .collect(),
        )
    }

    #[test]
    fn reads_wanted_keys_and_skips_the_rest() {
        let line = r#"{"ts":"2026","level":"info","n":{"a":[1,{"level":"x"}]},"msg":"a \"q\"","x":-1.5e3,"b":true,"z":null}"#;
        let got = values(line, &["level", "msg", "x", "b", "z", "n", "missing"]).unwrap();
        assert_eq!(
            got,
            vec![
                Some("info".into()),
                Some(r#"a \"q\""#.into()),
                Some("-1.5e3".into()),
                Some("true".into()),
                Some("null".into()),
                Some("<composite>".into()),
                None,
            ]
        );
    }

    #[test]
    fn dotted_paths_descend_only_where_asked() {
        let line = r#"{"http":{"status":500,"req":{"path":"/x"}},"status":200,"other":{"status":1}}"#;
        let got = values(line, &["http.status", "status", "http.req.path", "http"]).unwrap();
        assert_eq!(
            got,
            vec![
                Some("500".into()),
                Some("200".into()),
                Some("/x".into()),
                Some("<composite>".into()),
            ]
        );
        // Through a non-object the path is absent.
        let got = values(r#"{"http":"500"}"#, &["http.status"]).unwrap();
        assert_eq!(got, vec![None]);
        let got = values(r#"{"http":[{"status":1}]}"#, &["http.status"]).unwrap();
        assert_eq!(got, vec![None]);
    }

    #[test]
    fn escaped_keys_are_matched_by_their_text() {
        let got = values(r#"{"le\u0076el":"warn"}"#, &["level"]).unwrap();
        assert_eq!(got, vec![Some("warn".into())]);
    }

    #[test]
    fn duplicate_keys_last_wins() {
        let got = values(r#"{"a":1,"a":2}"#, &["a"]).unwrap();
        assert_eq!(got, vec![Some("2".into())]);
    }

    #[test]
    fn malformed_lines_are_rejected() {
        for bad in [
            "",
            "   ",
            "[1,2]",
            "\"str\"",
            "42",
            "{",
            "{\"a\"",
            "{\"a\":",
            "{\"a\":1",
            "{\"a\":1,}",
            "{\"a\" 1}",
            "{a:1}",
            "{\"a\":01}",
            "{\"a\":1.}",
            "{\"a\":-}",
            "{\"a\":1e}",
            "{\"a\":tru}",
            "{\"a\":\"x}",
            "{\"a\":\"\\x\"}",
            "{\"a\":\"\\u12g4\"}",
            "{\"a\":[1,]}",
            "{\"a\":[1 2]}",
            "{\"a\":{\"b\":1]}",
            "{\"a\":[1}",
            "{\"a\":1}}",
            "{\"a\":1} x",
            "{} {}",
            "{,}",
            "{\"a\":1,,\"b\":2}",
        ] {
            let t = table(&["a"]);
            let mut f = Found::new();
            assert_eq!(
                scan(bad.as_bytes(), &t, &mut f),
                Err(Malformed),
                "{bad:?} should be malformed"
            );
        }
    }

    #[test]
    fn well_formed_edge_cases_are_accepted() {
        for ok in [
            "{}",
            " { } \r\n",
            "{\"a\":[]}",
            "{\"a\":[[],{}]}",
            "{\"a\":\"\"}",
            "{\"\":1}",
            "{\"a\":0,\"b\":-0.0e+1,\"c\":1E-2}",
            "{\"a\":\"\\\\\"}",
            "{\"a\":\"\\\"\"}",
        ] {
            let t = table(&["a"]);
            let mut f = Found::new();
            assert_eq!(scan(ok.as_bytes(), &t, &mut f), Ok(()), "{ok:?} should parse");
        }
    }

    #[test]
    fn nesting_is_bounded() {
        let deep_ok = format!("{{\"a\":{}{}}}", "[".repeat(126), "]".repeat(126));
        let t = table(&["a"]);
        assert_eq!(scan(deep_ok.as_bytes(), &t, &mut Found::new()), Ok(()));
        let too_deep = format!("{{\"a\":{}{}}}", "[".repeat(128), "]".repeat(128));
        assert_eq!(scan(too_deep.as_bytes(), &t, &mut Found::new()), Err(Malformed));
        let huge = format!("{{\"a\":{}", "[".repeat(100_000));
        assert_eq!(scan(huge.as_bytes(), &t, &mut Found::new()), Err(Malformed));
    }

    #[test]
    fn agrees_with_serde_json_on_objects() {
        for line in [
            r#"{"a":1}"#,
            r#"{"a":[1,2,{"b":null}],"c":"\ud83d\ude00"}"#,
            r#"{"a":1,"b":{"c":{"d":[true,false]}}}"#,
        ] {
            assert!(serde_json::from_str::<serde_json::Value>(line).is_ok());
            assert_eq!(scan(line.as_bytes(), &table(&["a"]), &mut Found::new()), Ok(()));
        }
    }

    #[test]
    fn numbers_are_recognised() {
        for ok in ["0", "-0", "12", "1.5", "1e9", "-1.25E-3"] {
            assert!(is_number(ok.as_bytes()), "{ok}");
        }
        for bad in ["", "-", "01", "1.", ".5", "1e", "inf", "NaN", "0x10", "1 ", "+1"] {
            assert!(!is_number(bad.as_bytes()), "{bad}");
        }
    }
}
