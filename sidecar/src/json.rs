//! JSON text written by hand on the hot paths (the syslog source's events, the pipeline's
//! `encoding: json`, the http sinks' bodies), where building a `serde_json::Value` per
//! event would cost more than the routing itself.

/// A JSON string of `bytes`, invalid UTF-8 replaced by U+FFFD.
pub fn json_string(out: &mut Vec<u8>, bytes: &[u8]) {
    // `from_utf8` first: it is much faster than the lossy decoder on valid (ASCII) text.
    match std::str::from_utf8(bytes) {
        Ok(s) => json_str(out, s),
        Err(_) => json_str(out, &String::from_utf8_lossy(bytes)),
    }
}

/// A JSON string of `text`: [`json_string`] for text already known to be UTF-8.
pub fn json_str(out: &mut Vec<u8>, text: &str) {
    out.push(b'"');
    let mut start = 0;
    let s = text.as_bytes();
    for (i, &b) in s.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => {
                out.extend_from_slice(&s[start..i]);
                out.extend_from_slice(format!("\\u{b:04x}").as_bytes());
                start = i + 1;
                continue;
            }
            _ => continue,
        };
        out.extend_from_slice(&s[start..i]);
        out.extend_from_slice(esc);
        start = i + 1;
    }
    out.extend_from_slice(&s[start..]);
    out.push(b'"');
}

/// Appends `text`, a JSON value the router's scanner accepted, as JSON that any parser
/// accepts. The scanner is lenient where loggers are sloppy but the result is still
/// unambiguous; the output may not be, so:
/// - a raw control character inside a string is escaped (`\u0001`; `\t`, `\n`, `\r` as such);
/// - a line break between tokens becomes a space (one event stays one line);
/// - an escaped UTF-16 surrogate without its pair (`\ud800`) becomes `\ufffd`, which
///   strict parsers (serde_json among them) refuse.
///
/// Text that needs none of this — nearly every line — is copied as it is.
pub fn push_json_text(out: &mut Vec<u8>, text: &[u8]) {
    if is_strict(text) {
        out.extend_from_slice(text);
        return;
    }
    let mut in_string = false;
    let mut i = 0;
    while i < text.len() {
        let b = text[i];
        match b {
            b'"' => in_string = !in_string,
            b'\\' if in_string => {
                let surrogate = text.get(i + 1) == Some(&b'u')
                    && matches!(hex4(text, i + 2), Some(0xd800..=0xdfff));
                if !surrogate {
                    // Any other escape is two bytes (or `\uXXXX`, copied as it comes).
                    out.push(b);
                    if let Some(&next) = text.get(i + 1) {
                        push_string_byte(out, next);
                    }
                    i += 2;
                    continue;
                }
                let high = hex4(text, i + 2).unwrap_or(0);
                let low = (text.get(i + 6..i + 8) == Some(b"\\u"))
                    .then(|| hex4(text, i + 8))
                    .flatten();
                match low {
                    Some(0xdc00..=0xdfff) if (0xd800..0xdc00).contains(&high) => {
                        out.extend_from_slice(&text[i..i + 12]);
                        i += 12;
                    }
                    _ => {
                        out.extend_from_slice(b"\\ufffd");
                        i += 6;
                    }
                }
                continue;
            }
            _ if in_string => {
                push_string_byte(out, b);
                i += 1;
                continue;
            }
            b'\n' | b'\r' => {
                out.push(b' ');
                i += 1;
                continue;
            }
            _ => {}
        }
        out.push(b);
        i += 1;
    }
}

/// True when `text` (JSON the router's scanner accepted) needs none of
/// [`push_json_text`]'s repairs: no control character, no escaped surrogate.
pub use servicelog_api::rules::is_strict_json as is_strict;

/// A byte inside a JSON string, escaped if it is a control character.
fn push_string_byte(out: &mut Vec<u8>, b: u8) {
    match b {
        b'\n' => out.extend_from_slice(b"\\n"),
        b'\r' => out.extend_from_slice(b"\\r"),
        b'\t' => out.extend_from_slice(b"\\t"),
        0..=0x1f => out.extend_from_slice(format!("\\u{b:04x}").as_bytes()),
        _ => out.push(b),
    }
}

/// The four hex digits at `at`, if they are.
fn hex4(text: &[u8], at: usize) -> Option<u32> {
    let digits = text.get(at..at + 4)?;
    if !digits.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    u32::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()
}
