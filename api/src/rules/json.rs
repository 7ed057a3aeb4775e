//! A single-pass JSON scanner that reads only the keys a source's plan asks for.
//!
//! A `json` line must be a JSON object, otherwise it is a text event; so the whole line is
//! walked and checked for structure even when every wanted key has been seen — a truncated
//! line must not be routed as if it were complete. Values nobody asked for are skipped
//! (string ends found eight bytes at a time, then with `memchr`), and the scanner descends
//! into a nested object only when a dotted name needs it.
//!
//! Objects a plan descends into are read by recursion, bounded by [`MAX_PATH`] (the plan's
//! depth, not the line's). Everything else is skipped by an iterative walk with a bit
//! stack, so hostile nesting cannot overflow the thread's stack; nesting deeper than
//! [`MAX_DEPTH`] (serde_json's own limit) is malformed. The checks are structural: strings
//! must end and their escapes be valid, numbers and literals well formed, brackets
//! balanced, nothing after the object. Raw control characters inside strings are
//! tolerated, as many loggers emit them and the line is still unambiguous.

use std::borrow::Cow;

use memchr::memchr2;

use super::{
    event::{Esc, Kind, Slot, unescape},
    keys::{Entry, Found, KeyTable, key_word, key_word_at},
};

/// Deepest nesting of objects and arrays a JSON line may have.
pub const MAX_DEPTH: usize = 128;

/// Most segments a dotted field name may have.
pub const MAX_PATH: usize = 8;

/// The line is not a JSON object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Malformed;

type Result<T> = std::result::Result<T, Malformed>;

struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
    /// An escaped UTF-16 surrogate (`\uD...`) was read: the text is not strict JSON (see
    /// [`is_strict`]) unless the surrogates pair up.
    surrogate: bool,
}

impl Cursor<'_> {
    fn new(b: &[u8]) -> Cursor<'_> {
        Cursor {
            b,
            i: 0,
            surrogate: false,
        }
    }

    #[inline(always)]
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.b.get(self.i) {
            self.i += 1;
        }
    }

    #[inline(always)]
    fn peek(&self) -> Result<u8> {
        self.b.get(self.i).copied().ok_or(Malformed)
    }

    #[inline(always)]
    fn next(&mut self) -> Result<u8> {
        let c = self.peek()?;
        self.i += 1;
        Ok(c)
    }

    /// With the cursor just after an opening quote: moves past the closing quote and
    /// returns where the content ends and whether it has escapes.
    #[inline(always)]
    fn string(&mut self) -> Result<(usize, bool)> {
        let mut escaped = false;
        loop {
            let j = self.i + find_quote_or_backslash(self.b.get(self.i..).ok_or(Malformed)?)?;
            if self.b.get(j) == Some(&b'"') {
                self.i = j + 1;
                return Ok((j, escaped));
            }
            escaped = true;
            self.escape(j)?;
        }
    }

    /// Checks the escape at `j` (a backslash) and moves past it.
    #[cold]
    fn escape(&mut self, j: usize) -> Result<()> {
        match self.b.get(j + 1) {
            Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => self.i = j + 2,
            Some(b'u') => {
                let hex = self.b.get(j + 2..j + 6).ok_or(Malformed)?;
                if !hex.iter().all(u8::is_ascii_hexdigit) {
                    return Err(Malformed);
                }
                self.surrogate |= matches!(hex[0], b'd' | b'D');
                self.i = j + 6;
            }
            _ => return Err(Malformed),
        }
        Ok(())
    }

    #[inline(always)]
    fn digits(&mut self) -> usize {
        let start = self.i;
        while let Some(b'0'..=b'9') = self.b.get(self.i) {
            self.i += 1;
        }
        self.i - start
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`
    #[inline]
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

    /// With the cursor just after the `{` of an object at `depth` that `table` describes:
    /// reads its members, storing the wanted values (and, given `members`, every member's
    /// ranges), and moves past its `}`.
    fn object(
        &mut self,
        table: &KeyTable,
        found: &mut Found,
        depth: usize,
        mut members: Option<&mut Vec<Member>>,
    ) -> Result<()> {
        self.ws();
        if self.peek()? == b'}' {
            self.i += 1;
            return Ok(());
        }
        loop {
            if self.next()? != b'"' {
                return Err(Malformed);
            }
            let start = self.i;
            let (end, escaped) = self.string()?;
            self.ws();
            if self.next()? != b':' {
                return Err(Malformed);
            }
            self.ws();
            let key = self.b.get(start..end).ok_or(Malformed)?;
            let wanted = if escaped {
                let key: Cow<'_, [u8]> = unescape(key, Esc::Json);
                table.lookup(&key, key_word(&key))
            } else {
                table.lookup(key, key_word_at(self.b, start, key.len()))
            };
            let value = self.i;
            self.value(wanted, found, depth)?;
            if let Some(m) = members.as_deref_mut() {
                // Only touched members: the others are the text between them.
                if let Some(e) = wanted.filter(|e| e.target.touched) {
                    let touched = Some(e.index);
                    m.push(Member::new((start, end), escaped, (value, self.i), touched));
                }
            }
            self.ws();
            match self.next()? {
                b',' => self.ws(),
                b'}' => return Ok(()),
                _ => return Err(Malformed),
            }
        }
    }

    /// Reads one member's value; `wanted` says where it goes, if anywhere.
    #[inline(always)]
    fn value(&mut self, wanted: Option<&Entry>, found: &mut Found, depth: usize) -> Result<()> {
        let start = self.i;
        let kind = match self.peek()? {
            b'"' => {
                self.i += 1;
                let (end, escaped) = self.string()?;
                if let Some(e) = wanted {
                    let esc = if escaped { Esc::Json } else { Esc::None };
                    found.store(e.target, Slot::new(Kind::Str(esc), start + 1, end));
                }
                return Ok(());
            }
            open @ (b'{' | b'[') => {
                self.i += 1;
                if let Some(e) = wanted {
                    found.store(e.target, Slot::new(Kind::Composite, start, start));
                }
                return match wanted.and_then(|e| e.child.as_deref()) {
                    Some(child) if open == b'{' => self.object(child, found, depth + 1, None),
                    _ => self.skip_container(open == b'{', depth + 1),
                };
            }
            b't' => {
                self.literal(b"true")?;
                Kind::Bool(true)
            }
            b'f' => {
                self.literal(b"false")?;
                Kind::Bool(false)
            }
            b'n' => {
                self.literal(b"null")?;
                Kind::Null
            }
            b'-' | b'0'..=b'9' => {
                self.number()?;
                Kind::Num
            }
            _ => return Err(Malformed),
        };
        if let Some(e) = wanted {
            found.store(e.target, Slot::new(kind, start, self.i));
        }
        Ok(())
    }

    /// With the cursor just after the opening bracket of a container at `depth`: checks
    /// and skips everything up to and including its closing bracket, without recursion.
    fn skip_container(&mut self, object: bool, depth: usize) -> Result<()> {
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
        if depth > MAX_DEPTH {
            return Err(Malformed);
        }
        // Bit n is set when the container n levels inside the skipped one is an object.
        let mut objects = u128::from(object);
        let mut level = 0usize;
        let mut in_object = object;
        let mut state = if object {
            State::ObjectStart
        } else {
            State::ArrayStart
        };
        loop {
            self.ws();
            let ch = self.peek()?;
            let mut value = false;
            let mut close = false;
            match state {
                State::ObjectStart | State::ObjectKey => {
                    self.i += 1;
                    if ch == b'}' && state == State::ObjectStart {
                        close = true;
                    } else if ch == b'"' {
                        self.string()?;
                        self.ws();
                        if self.next()? != b':' {
                            return Err(Malformed);
                        }
                        self.ws();
                        value = true;
                    } else {
                        return Err(Malformed);
                    }
                }
                State::ArrayStart | State::ArrayValue => {
                    if ch == b']' && state == State::ArrayStart {
                        self.i += 1;
                        close = true;
                    } else {
                        value = true;
                    }
                }
                State::AfterValue => {
                    self.i += 1;
                    match (ch, in_object) {
                        (b',', true) => state = State::ObjectKey,
                        (b',', false) => state = State::ArrayValue,
                        (b'}', true) | (b']', false) => close = true,
                        _ => return Err(Malformed),
                    }
                }
            }
            if value {
                match self.skip_scalar_or_open()? {
                    Some(open) => {
                        level += 1;
                        if depth + level > MAX_DEPTH {
                            return Err(Malformed);
                        }
                        objects = (objects & !(1 << level)) | (u128::from(open) << level);
                        in_object = open;
                        state = if open {
                            State::ObjectStart
                        } else {
                            State::ArrayStart
                        };
                    }
                    None => state = State::AfterValue,
                }
            } else if close {
                if level == 0 {
                    return Ok(());
                }
                level -= 1;
                in_object = objects & (1 << level) != 0;
                state = State::AfterValue;
            }
        }
    }

    /// Skips a scalar, or moves past an opening bracket and says which (true: object).
    #[inline(always)]
    fn skip_scalar_or_open(&mut self) -> Result<Option<bool>> {
        match self.peek()? {
            b'"' => {
                self.i += 1;
                self.string()?;
            }
            b'{' => {
                self.i += 1;
                return Ok(Some(true));
            }
            b'[' => {
                self.i += 1;
                return Ok(Some(false));
            }
            b't' => self.literal(b"true")?,
            b'f' => self.literal(b"false")?,
            b'n' => self.literal(b"null")?,
            b'-' | b'0'..=b'9' => self.number()?,
            _ => return Err(Malformed),
        }
        Ok(None)
    }
}

/// Where the next `"` or `\\` is. Eight bytes at a time (SWAR) for the first few words —
/// keys and most values in log lines are short, where `memchr`'s setup costs more than
/// it saves — then `memchr` for long strings (messages, stack traces).
#[inline(always)]
fn find_quote_or_backslash(s: &[u8]) -> Result<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    // Exact for the lowest zero byte of x, which is all that is used.
    let zero_bytes = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
    let mut i = 0;
    while i < 64 {
        let Some(bytes) = s.get(i..i + 8).and_then(|b| <[u8; 8]>::try_from(b).ok()) else {
            break;
        };
        let w = u64::from_le_bytes(bytes);
        let hits =
            zero_bytes(w ^ (ONES * u64::from(b'"'))) | zero_bytes(w ^ (ONES * u64::from(b'\\')));
        if hits != 0 {
            return Ok(i + (hits.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    let rest = s.get(i..).ok_or(Malformed)?;
    memchr2(b'"', b'\\', rest).map(|k| i + k).ok_or(Malformed)
}

/// True when `text` is exactly one JSON number.
pub(crate) fn is_number(text: &[u8]) -> bool {
    let mut c = Cursor::new(text);
    c.number().is_ok() && c.i == text.len()
}

/// True when `text` (JSON this scanner accepted) is strict JSON as well: no raw control
/// character, no escaped UTF-16 surrogate. Such text can be copied to any JSON output as
/// it is; other text needs repairs (the sidecar's `push_json_text`).
pub fn is_strict(text: &[u8]) -> bool {
    !has_control(text)
        && !memchr::memchr_iter(b'\\', text)
            .any(|i| text.get(i + 1) == Some(&b'u') && matches!(text.get(i + 2), Some(b'd' | b'D')))
}

/// True when `text` holds a raw control character (below U+0020), which strict JSON
/// strings may not.
pub(crate) fn has_control(text: &[u8]) -> bool {
    // In chunks without early exit, so the compiler vectorises the scan.
    text.chunks(32)
        .any(|c| c.iter().fold(false, |any, &b| any | (b < 0x20)))
}

/// What [`scan`] tells of a line besides the values it stores.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Scanned {
    /// The line escapes a UTF-16 surrogate (`\uD...`): without one, it is strict JSON
    /// exactly when it has no raw control character (see [`is_strict`]).
    pub(crate) surrogate: bool,
    /// The top-level object's text between its braces.
    pub(crate) body: (u32, u32),
}

/// Walks `line` as a JSON object, storing the values `root` asks for into `found`, and,
/// given `members`, the ranges of the top-level members some rule's transforms touch
/// ([`super::keys::Target::touched`]), in order: the text between them is members no
/// transform looks at.
pub(crate) fn scan(
    line: &[u8],
    root: &KeyTable,
    found: &mut Found,
    members: Option<&mut Vec<Member>>,
) -> Result<Scanned> {
    let mut c = Cursor::new(line);
    c.ws();
    if c.next()? != b'{' {
        return Err(Malformed);
    }
    let start = c.i;
    c.object(root, found, 1, members)?;
    // Offsets fit in `u32`: see `Member::new`.
    let body = (start as u32, c.i.saturating_sub(1) as u32);
    c.ws();
    if c.i == line.len() {
        Ok(Scanned {
            surrogate: c.surrogate,
            body,
        })
    } else {
        Err(Malformed)
    }
}

/// `line[from..to]` (members of an object as the line holds them, between two others)
/// without the separators and whitespace around them: the range of `"a":1,"b":2`, empty
/// when there are none.
pub(crate) fn trim_members(line: &[u8], from: usize, to: usize) -> std::ops::Range<usize> {
    let skip = |b: &u8| matches!(b, b',' | b' ' | b'\t' | b'\n' | b'\r');
    let text = line.get(from..to).unwrap_or_default();
    let start = text.iter().position(|b| !skip(b)).unwrap_or(text.len());
    let end = text.iter().rposition(|b| !skip(b)).map_or(start, |e| e + 1);
    from + start..from + end
}

/// One member of a top-level object, as ranges into the line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Member {
    /// The key's text (without its quotes).
    key: (u32, u32),
    /// The key has escapes.
    pub(crate) escaped: bool,
    /// Recorded by the routing scan ([`scan`]): some rule's transforms read or change this
    /// key (see [`super::keys::Target::touched`]); the index of its entry in the source's
    /// top-level [`KeyTable`], whose name is the key's text. [`members`] leaves it `None`.
    pub(crate) touched: Option<u16>,
    /// The value's JSON text (a string with its quotes).
    value: (u32, u32),
}

impl Member {
    /// Offsets fit in `u32`: [`Router::parse`](super::Router::parse) reads no longer line
    /// as JSON (and the sidecar's line limit is far below). Kept small, as a line's members
    /// are recorded while it is routed.
    fn new(
        key: (usize, usize),
        escaped: bool,
        value: (usize, usize),
        touched: Option<u16>,
    ) -> Member {
        Member {
            key: (key.0 as u32, key.1 as u32),
            escaped,
            touched,
            value: (value.0 as u32, value.1 as u32),
        }
    }

    pub(crate) fn key(&self) -> std::ops::Range<usize> {
        self.key.0 as usize..self.key.1 as usize
    }

    pub(crate) fn value(&self) -> std::ops::Range<usize> {
        self.value.0 as usize..self.value.1 as usize
    }

    /// The member's `"key":value` text.
    pub(crate) fn whole(&self) -> std::ops::Range<usize> {
        self.key.0 as usize - 1..self.value.1 as usize
    }
}

/// Walks `line` as a JSON object like [`scan`], handing each top-level member to `each`:
/// what the transforms need to rebuild an event, at the scanner's speed.
pub(crate) fn members(line: &[u8], mut each: impl FnMut(Member)) -> Result<()> {
    let mut c = Cursor::new(line);
    let mut found = Found::new();
    c.ws();
    if c.next()? != b'{' {
        return Err(Malformed);
    }
    c.ws();
    if c.peek()? == b'}' {
        c.i += 1;
    } else {
        loop {
            if c.next()? != b'"' {
                return Err(Malformed);
            }
            let start = c.i;
            let (end, escaped) = c.string()?;
            c.ws();
            if c.next()? != b':' {
                return Err(Malformed);
            }
            c.ws();
            let value = c.i;
            c.value(None, &mut found, 1)?;
            each(Member::new((start, end), escaped, (value, c.i), None));
            c.ws();
            match c.next()? {
                b',' => c.ws(),
                b'}' => break,
                _ => return Err(Malformed),
            }
        }
    }
    c.ws();
    if c.i == line.len() {
        Ok(())
    } else {
        Err(Malformed)
    }
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
        scan(line.as_bytes(), &t, &mut f, None).ok()?;
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
        let line =
            r#"{"http":{"status":500,"req":{"path":"/x"}},"status":200,"other":{"status":1}}"#;
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
                scan(bad.as_bytes(), &t, &mut f, None),
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
            assert_eq!(
                scan(ok.as_bytes(), &t, &mut f, None).map(|s| s.surrogate),
                Ok(false),
                "{ok:?} should parse"
            );
        }
    }

    #[test]
    fn nesting_is_bounded() {
        let deep_ok = format!("{{\"a\":{}{}}}", "[".repeat(126), "]".repeat(126));
        let t = table(&["a"]);
        assert_eq!(
            scan(deep_ok.as_bytes(), &t, &mut Found::new(), None).map(|s| s.surrogate),
            Ok(false)
        );
        let too_deep = format!("{{\"a\":{}{}}}", "[".repeat(128), "]".repeat(128));
        assert_eq!(
            scan(too_deep.as_bytes(), &t, &mut Found::new(), None),
            Err(Malformed)
        );
        let huge = format!("{{\"a\":{}", "[".repeat(100_000));
        assert_eq!(
            scan(huge.as_bytes(), &t, &mut Found::new(), None),
            Err(Malformed)
        );
    }

    #[test]
    fn agrees_with_serde_json_on_objects() {
        for line in [
            r#"{"a":1}"#,
            r#"{"a":[1,2,{"b":null}],"c":"\ud83d\ude00"}"#,
            r#"{"a":1,"b":{"c":{"d":[true,false]}}}"#,
        ] {
            assert!(serde_json::from_str::<serde_json::Value>(line).is_ok());
            assert!(scan(line.as_bytes(), &table(&["a"]), &mut Found::new(), None).is_ok());
        }
    }

    /// What the scan says of a line's escapes, with [`has_control`], is whether the line is
    /// strict JSON (the pipeline relies on it to skip [`is_strict`] on a line it scanned):
    /// the same answer as `is_strict`, except that it is not misled by an escaped
    /// backslash before `ud800`, which `is_strict` takes for a surrogate.
    #[test]
    fn given_a_scanned_line_then_its_surrogate_flag_and_control_check_say_it_is_strict() {
        for (line, strict) in [
            (r#"{"a":1}"#, true),
            (r#"{"a":"\u00e9","b":"\/"}"#, true),
            (r#"{"a":[1,2,{"b":"\ud83d\ude00"}]}"#, false),
            (r#"{"a":{"skipped":"\uDC00"}}"#, false),
            ("{\"a\":\"tab\there\"}", false),
            (r#"{"a":"\\ud800"}"#, true),
        ] {
            let scanned = scan(line.as_bytes(), &table(&["a"]), &mut Found::new(), None);
            let said = scanned.map(|s| !s.surrogate && !has_control(line.as_bytes()));
            assert_eq!(said, Ok(strict), "{line:?}");
            if !line.contains(r"\\") {
                assert_eq!(is_strict(line.as_bytes()), strict, "{line:?}");
            }
        }
    }

    #[test]
    fn numbers_are_recognised() {
        for ok in ["0", "-0", "12", "1.5", "1e9", "-1.25E-3"] {
            assert!(is_number(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "", "-", "01", "1.", ".5", "1e", "inf", "NaN", "0x10", "1 ", "+1",
        ] {
            assert!(!is_number(bad.as_bytes()), "{bad}");
        }
    }
}
