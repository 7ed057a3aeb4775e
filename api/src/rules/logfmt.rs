//! logfmt lines: `key=value key2="quoted value" flag`.
//!
//! logfmt has no types and no dotted nesting, so every value is untyped text (it equals a
//! string, number or boolean it spells) and a dotted field name is just a literal key. A
//! bare `flag` is present with the value `true`, as Vector reads it.
//!
//! Nearly any text splits into logfmt tokens, so a line counts as logfmt only when it has
//! at least one `key=value` pair and every token is well formed (no quote inside a key, no
//! empty key, quoted values closed and followed by a space or the end). Anything else is a
//! text event.

use memchr::memchr2;

use super::{
    event::{Esc, Kind, Slot},
    keys::{Found, KeyTable, key_word},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Malformed;

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

pub(crate) fn scan(line: &[u8], table: &KeyTable, found: &mut Found) -> Result<(), Malformed> {
    pairs(line, |key, slot| {
        if let Some(entry) = table.lookup(key, key_word(key)) {
            found.store(entry.target, slot);
        }
    })
}

/// Walks `line` as logfmt, handing every pair to `each` (a bare key's slot is
/// `Bool(true)`); the transforms read whole events through it.
#[inline]
pub(crate) fn pairs<'l>(
    line: &'l [u8],
    mut each: impl FnMut(&'l [u8], Slot),
) -> Result<(), Malformed> {
    let mut i = 0;
    let mut pairs = 0usize;
    loop {
        while line.get(i).is_some_and(|b| is_space(*b)) {
            i += 1;
        }
        if i >= line.len() {
            break;
        }
        let key_start = i;
        while let Some(&b) = line.get(i) {
            if is_space(b) || b == b'=' {
                break;
            }
            if b == b'"' || b < 0x20 {
                return Err(Malformed);
            }
            i += 1;
        }
        let key = line.get(key_start..i).ok_or(Malformed)?;
        if key.is_empty() {
            return Err(Malformed);
        }
        let slot = if line.get(i) == Some(&b'=') {
            i += 1;
            pairs += 1;
            if line.get(i) == Some(&b'"') {
                let start = i + 1;
                let mut j = start;
                let mut escaped = false;
                let end = loop {
                    let rest = line.get(j..).ok_or(Malformed)?;
                    let k = j + memchr2(b'"', b'\\', rest).ok_or(Malformed)?;
                    if line.get(k) == Some(&b'"') {
                        break k;
                    }
                    escaped = true;
                    j = k + 2;
                };
                i = end + 1;
                if line.get(i).is_some_and(|b| !is_space(*b)) {
                    return Err(Malformed);
                }
                let esc = if escaped { Esc::Logfmt } else { Esc::None };
                Slot::new(Kind::Untyped(esc), start, end)
            } else {
                let start = i;
                while line.get(i).is_some_and(|b| !is_space(*b)) {
                    i += 1;
                }
                Slot::new(Kind::Untyped(Esc::None), start, i)
            }
        } else {
            Slot::new(Kind::Bool(true), key_start, i)
        };
        each(key, slot);
    }
    if pairs == 0 {
        return Err(Malformed);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::keys::Target;

    fn get(line: &str, keys: &[&str]) -> Option<Vec<Option<(String, Kind)>>> {
        let mut t = KeyTable::default();
        for (i, k) in keys.iter().enumerate() {
            t.insert(
                &[k],
                Target {
                    field: Some(i as u8),
                    ..Target::default()
                },
            );
        }
        let mut f = Found::new();
        scan(line.as_bytes(), &t, &mut f).ok()?;
        Some(
            (0..keys.len())
                .map(|i| {
                    let s = f.fields[i];
                    s.is_present()
                        .then(|| (line[s.start as usize..s.end as usize].to_string(), s.kind))
                })
                .collect(),
        )
    }

    #[test]
    fn pairs_quotes_and_flags() {
        let got = get(
            r#"ts=2026 level=info msg="hello \"world\"" http.status=500 debug empty= q="""#,
            &["level", "msg", "http.status", "debug", "empty", "q", "nope"],
        )
        .unwrap();
        let untyped = Kind::Untyped(Esc::None);
        assert_eq!(
            got,
            vec![
                Some(("info".into(), untyped)),
                Some((r#"hello \"world\""#.into(), Kind::Untyped(Esc::Logfmt))),
                Some(("500".into(), untyped)),
                Some(("debug".into(), Kind::Bool(true))),
                Some(("".into(), untyped)),
                Some(("".into(), untyped)),
                None,
            ]
        );
    }

    #[test]
    fn lines_without_pairs_or_with_broken_tokens_are_not_logfmt() {
        for bad in [
            "",
            "hello world",
            "GET /index.html 200",
            r#"a="unterminated"#,
            r#"a="x"b=1"#,
            r#"say "hi" a=1"#,
            "=1",
            "a=1 =2",
            "a=\"x\\\"",
        ] {
            assert_eq!(get(bad, &["a"]), None, "{bad:?} should not be logfmt");
        }
    }
}
