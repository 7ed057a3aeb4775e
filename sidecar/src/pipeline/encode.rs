//! `encoding: json`, done by the pipeline for the sinks that ask for it (file and stdout
//! sinks that say so, every http sink): the event's fields plus
//! `_servicelog: {source, pod, namespace}`, one object per line.
//!
//! A `json` line that parsed is already an object: the `_servicelog` member is spliced in
//! before its closing brace, so the fields are written as the application wrote them,
//! without a parse-and-reserialise round trip — except what strict parsers refuse and the
//! router's lenient scanner lets through (raw control characters in strings, a lone
//! escaped surrogate), which is repaired on the way (see [`push_json_text`]). A `logfmt`
//! line becomes an object of its pairs (values are strings, a bare key is `true`). Every
//! other line — a `text` source's, or one that did not parse in its format — is
//! `{"message": <line>}`.
//!
//! Whatever the bytes, the output is valid JSON: bytes that are not UTF-8 (such a line is
//! never parsed as json or logfmt) become U+FFFD, control characters are escaped.
//!
//! An event a rule transformed, and a `regex` source's event, is written from its
//! [`Fields`] instead ([`encode_fields_json`], [`encode_fields_raw`]).

use servicelog_api::{
    rules::{Event, FieldValue, Fields},
    v1alpha1::Format,
};

use crate::json::{json_str, json_string, push_json_text};

/// The `"_servicelog":{...}` member for one source, rendered once per pipeline (and again
/// when the pod's labels change): `container` when known, `labels` when the pod has any.
pub fn meta_member(
    source: &str,
    pod: &str,
    namespace: &str,
    container: Option<&str>,
    labels: &std::collections::BTreeMap<String, String>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + source.len() + pod.len() + namespace.len());
    out.extend_from_slice(b"\"_servicelog\":{\"source\":");
    json_string(&mut out, source.as_bytes());
    out.extend_from_slice(b",\"pod\":");
    json_string(&mut out, pod.as_bytes());
    out.extend_from_slice(b",\"namespace\":");
    json_string(&mut out, namespace.as_bytes());
    if let Some(container) = container {
        out.extend_from_slice(b",\"container\":");
        json_string(&mut out, container.as_bytes());
    }
    if !labels.is_empty() {
        out.extend_from_slice(b",\"labels\":{");
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            json_string(&mut out, k.as_bytes());
            out.push(b':');
            json_string(&mut out, v.as_bytes());
        }
        out.push(b'}');
    }
    out.push(b'}');
    out
}

/// Appends the JSON line for `event` (read in `format`), newline-terminated.
pub fn encode_json(out: &mut Vec<u8>, event: &Event<'_>, format: Format, meta: &[u8]) {
    let line = event.line();
    if !event.is_text() {
        match format {
            Format::Json => {
                if let Some(close) = memchr::memrchr(b'}', line) {
                    let body = &line[..close];
                    push_json_text(out, body);
                    if body.trim_ascii_end() != b"{" && !body.trim_ascii().is_empty() {
                        out.push(b',');
                    }
                    out.extend_from_slice(meta);
                    out.extend_from_slice(b"}\n");
                    return;
                }
            }
            Format::Logfmt => {
                out.push(b'{');
                for (key, value) in logfmt_pairs(line) {
                    json_string(out, key);
                    out.push(b':');
                    match value {
                        Some(v) => json_string(out, &unescape_logfmt(v)),
                        None => out.extend_from_slice(b"true"),
                    }
                    out.push(b',');
                }
                out.extend_from_slice(meta);
                out.extend_from_slice(b"}\n");
                return;
            }
            // A `regex` event is written from its fields (see [`encode_fields_json`]).
            Format::Text | Format::Regex => {}
        }
    }
    out.extend_from_slice(b"{\"message\":");
    json_string(out, line);
    out.push(b',');
    out.extend_from_slice(meta);
    out.extend_from_slice(b"}\n");
}

/// Appends `fields` as one JSON object line, `meta` (the `_servicelog` member) last.
pub fn encode_fields_json(out: &mut Vec<u8>, fields: &Fields<'_>, meta: &[u8]) {
    out.push(b'{');
    push_members(out, fields);
    if fields.members().next().is_some() {
        out.push(b',');
    }
    out.extend_from_slice(meta);
    out.extend_from_slice(b"}\n");
}

/// Appends what `encoding: raw` writes of a transformed event, newline-terminated: the
/// line it would have been, as far as its format can say it — a text event's `message`,
/// a logfmt event's pairs, a `json` (or `regex`) event's object as one JSON line.
pub fn encode_fields_raw(out: &mut Vec<u8>, fields: &Fields<'_>) {
    match fields.format() {
        Format::Text => {
            let mut members = fields.members();
            match (members.next(), members.next()) {
                (Some(("message", FieldValue::Text(t))), None) => {
                    out.extend_from_slice(t.as_bytes())
                }
                (None, _) => {}
                _ => json_object(out, fields),
            }
        }
        Format::Logfmt => {
            for (i, (key, value)) in fields.members().enumerate() {
                if i > 0 {
                    out.push(b' ');
                }
                out.extend_from_slice(key.as_bytes());
                out.push(b'=');
                match value {
                    FieldValue::Text(t) => logfmt_value(out, t.as_bytes()),
                    FieldValue::Json(raw) => match serde_json::from_slice(raw) {
                        Ok(serde_json::Value::String(s)) => logfmt_value(out, s.as_bytes()),
                        _ => logfmt_value(out, raw),
                    },
                    FieldValue::Tree(serde_json::Value::String(s)) => {
                        logfmt_value(out, s.as_bytes());
                    }
                    FieldValue::Tree(v) => logfmt_value(out, v.to_string().as_bytes()),
                }
            }
        }
        Format::Json | Format::Regex => json_object(out, fields),
    }
    out.push(b'\n');
}

fn json_object(out: &mut Vec<u8>, fields: &Fields<'_>) {
    out.push(b'{');
    push_members(out, fields);
    out.push(b'}');
}

fn push_members(out: &mut Vec<u8>, fields: &Fields<'_>) {
    // Members as the line holds them are copied whole, unless the line needs repairs.
    let copy = fields.strict();
    for (i, (key, value, written)) in fields.written_members().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        if let Some(text) = written.filter(|_| copy) {
            out.extend_from_slice(text);
            continue;
        }
        json_str(out, key);
        out.push(b':');
        match value {
            // JSON text of a strict line, or made strict by the transforms: no repairs.
            FieldValue::Json(raw) if copy => out.extend_from_slice(raw),
            FieldValue::Json(raw) => push_json_text(out, raw),
            FieldValue::Text(t) => json_str(out, t),
            FieldValue::Tree(v) => {
                // Writing a Value to a Vec cannot fail.
                let _ = serde_json::to_writer(&mut *out, v);
            }
        }
    }
}

/// A logfmt value, quoted (Go's `%q` escapes) when it must be.
fn logfmt_value(out: &mut Vec<u8>, v: &[u8]) {
    let plain = !v.is_empty()
        && !v
            .iter()
            .any(|&b| b <= b' ' || b == b'"' || b == b'=' || b == b'\\' || b == 0x7f);
    if plain {
        out.extend_from_slice(v);
    } else {
        json_string(out, v);
    }
}

/// `key=value` pairs of a logfmt line; a value is `None` for a bare key, and a quoted
/// value is returned without its quotes (still escaped).
fn logfmt_pairs(line: &[u8]) -> Vec<(&[u8], Option<&[u8]>)> {
    let mut pairs = Vec::new();
    let mut i = 0;
    let n = line.len();
    while i < n {
        while i < n && line[i].is_ascii_whitespace() {
            i += 1;
        }
        let key_start = i;
        while i < n && !line[i].is_ascii_whitespace() && line[i] != b'=' {
            i += 1;
        }
        let key = &line[key_start..i];
        if i < n && line[i] == b'=' {
            i += 1;
            if i < n && line[i] == b'"' {
                i += 1;
                let start = i;
                while i < n && line[i] != b'"' {
                    i += if line[i] == b'\\' { 2 } else { 1 };
                }
                let end = i.min(n);
                pairs.push((key, Some(&line[start..end])));
                i = end + 1;
            } else {
                let start = i;
                while i < n && !line[i].is_ascii_whitespace() {
                    i += 1;
                }
                pairs.push((key, Some(&line[start..i])));
            }
        } else if !key.is_empty() {
            pairs.push((key, None));
        }
    }
    pairs
}

fn unescape_logfmt(v: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    if !v.contains(&b'\\') {
        return std::borrow::Cow::Borrowed(v);
    }
    let mut out = Vec::with_capacity(v.len());
    let mut i = 0;
    while i < v.len() {
        if v[i] == b'\\' && i + 1 < v.len() {
            out.push(match v[i + 1] {
                b'n' => b'\n',
                b't' => b'\t',
                b'r' => b'\r',
                other => other,
            });
            i += 2;
        } else {
            out.push(v[i]);
            i += 1;
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use servicelog_api::{
        Router, ServiceLogSpec,
        rules::{Members, Spare},
    };

    use super::*;

    fn router(format: &str) -> Router {
        let yaml = format!(
            "sources: [{{name: app, file: {{paths: [/x/*.log], format: {format}}}}}]\n\
             sinks: [{{name: out, stdout: {{}}}}]\ndefaultTo: [out]\n"
        );
        let spec: ServiceLogSpec = serde_yaml::from_str(&yaml).unwrap();
        Router::compile(&spec).unwrap()
    }

    fn encode(format: Format, line: &str) -> serde_json::Value {
        let fmt = match format {
            Format::Json => "json",
            Format::Logfmt => "logfmt",
            Format::Text => "text",
            Format::Regex => unreachable!("regex events are written from their fields"),
        };
        let r = router(fmt);
        let event = r.parse(0, line.as_bytes());
        let mut out = Vec::new();
        encode_json(
            &mut out,
            &event,
            format,
            &meta_member("app", "pod-1", "shop", None, &Default::default()),
        );
        assert_eq!(out.last(), Some(&b'\n'));
        assert_eq!(
            out.iter().filter(|&&b| b == b'\n').count(),
            1,
            "one event, one line: {}",
            String::from_utf8_lossy(&out)
        );
        serde_json::from_slice(&out)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out)))
    }

    #[test]
    fn json_lines_keep_their_fields_and_gain_servicelog() {
        let v = encode(Format::Json, r#"{"level":"warn","msg":"x","n":{"a":1}}"#);
        assert_eq!(
            v,
            serde_json::json!({"level":"warn","msg":"x","n":{"a":1},
                "_servicelog":{"source":"app","pod":"pod-1","namespace":"shop"}})
        );
        let v = encode(Format::Json, "{ }");
        assert_eq!(v["_servicelog"]["pod"], "pod-1");
    }

    #[test]
    fn unparsable_and_text_lines_become_messages() {
        let v = encode(Format::Json, "not \"json\"\tat all");
        assert_eq!(v["message"], "not \"json\"\tat all");
        let v = encode(Format::Text, "plain \u{1} text");
        assert_eq!(v["message"], "plain \u{1} text");
    }

    #[test]
    fn given_json_lines_with_raw_control_characters_or_lone_surrogates_then_the_output_is_valid_json()
     {
        let v = encode(Format::Json, "{\"msg\":\"tab\there\u{1}\u{1f}\",\r\"n\":1}");
        assert_eq!(v["msg"], "tab\there\u{1}\u{1f}");
        assert_eq!(v["n"], 1);
        let v = encode(
            Format::Json,
            r#"{"a":"\ud800x","b":"\udc00","c":"\ud83d\ude00"}"#,
        );
        assert_eq!(v["a"], "\u{fffd}x");
        assert_eq!(v["b"], "\u{fffd}");
        assert_eq!(v["c"], "\u{1f600}", "a proper pair is kept");
        let v = encode(Format::Json, "{\n  \"pretty\": [1,\r\n 2]\n}");
        assert_eq!(
            v["pretty"],
            serde_json::json!([1, 2]),
            "a multi-line object on one line"
        );
        let v = encode(Format::Json, r#"{"k\\ud800":"\\"}"#);
        assert_eq!(v["k\\ud800"], "\\", "an escaped backslash is not an escape");
    }

    /// `json` without the whitespace outside its strings.
    fn squeeze(json: &[u8]) -> Vec<u8> {
        let (mut out, mut in_string, mut escaped) = (Vec::new(), false, false);
        for &b in json {
            if in_string {
                in_string = escaped || b != b'"';
                escaped = !escaped && b == b'\\';
            } else if b == b'"' {
                in_string = true;
            } else if b.is_ascii_whitespace() {
                continue;
            }
            out.push(b);
        }
        out
    }

    /// `line` of a source in `format`, transformed by one rule's `transform`, written as
    /// (raw, json).
    fn transformed(format: &str, transform: &str, line: &str) -> (String, serde_json::Value) {
        let yaml = format!(
            "sources: [{{name: app, file: {{paths: [/x/*.log], format: {format}}}}}]\n\
             sinks: [{{name: out, stdout: {{}}}}]\n\
             rules: [{{name: r, to: [out], transform: {transform}}}]\n"
        );
        let r = Router::compile(&serde_yaml::from_str(&yaml).unwrap()).unwrap();
        let meta = meta_member("app", "p", "ns", None, &Default::default());
        let write = |fields: &Fields<'_>| {
            let (mut raw, mut json) = (Vec::new(), Vec::new());
            encode_fields_raw(&mut raw, fields);
            encode_fields_json(&mut json, fields, &meta);
            (raw, json)
        };
        // The whole event, every member its own.
        let event = r.parse(0, line.as_bytes());
        let mut fields = r.fields(&event);
        r.transform(0, 0, &mut fields);
        let (raw, json) = write(&fields);
        // The pipeline's way: members kept by the routing scan, untouched ones as runs,
        // in a reused allocation; and the same without the kept members (a second scan).
        let mut members = Members::default();
        let mut spare = Spare::default();
        for keep in [true, false] {
            let event = if keep {
                r.parse_keeping(0, line.as_bytes(), &mut members)
            } else {
                r.parse(0, line.as_bytes())
            };
            for _ in 0..2 {
                let mut fast = r.fields_for(0, &event, &mut spare, &members);
                r.transform(0, 0, &mut fast);
                // Runs keep the spaces between their members; nothing else differs (the
                // same members, duplicates included, in the same order).
                let same = |a: &[u8], b: &[u8]| squeeze(a) == squeeze(b);
                let (fast_raw, fast_json) = write(&fast);
                assert!(
                    same(&fast_raw, &raw) && same(&fast_json, &json),
                    "kept: {keep}: {} / {}",
                    String::from_utf8_lossy(&fast_raw),
                    String::from_utf8_lossy(&raw)
                );
                assert_eq!(fast_raw.iter().filter(|b| **b == b'\n').count(), 1);
                spare = fast.into_spare();
            }
        }
        assert_eq!(json.last(), Some(&b'\n'));
        (
            String::from_utf8(raw).unwrap(),
            serde_json::from_slice(&json)
                .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&json))),
        )
    }

    #[test]
    fn given_transformed_events_then_raw_writes_them_in_their_own_format() {
        let (raw, json) = transformed(
            "json",
            "[{set: {field: env, value: prod}}]",
            r#"{"a": 1, "msg":"x"}"#,
        );
        assert_eq!(
            raw, "{\"a\": 1,\"msg\":\"x\",\"env\":\"prod\"}\n",
            "untouched members as written"
        );
        assert_eq!(json["env"], "prod");
        assert_eq!(json["_servicelog"]["source"], "app");
        let (raw, _) = transformed(
            "logfmt",
            "[{redact: {regex: 'pw=\\S+'}}]",
            r#"level=info msg="login pw=x ok" flag"#,
        );
        assert_eq!(raw, "level=info msg=\"login [REDACTED] ok\" flag=true\n");
        let (raw, json) = transformed("text", "[{redact: {regex: '\\d+'}}]", "card 1234 used");
        assert_eq!(raw, "card [REDACTED] used\n");
        assert_eq!(json["message"], "card [REDACTED] used");
        let (raw, _) = transformed("text", "[{set: {field: k, value: v}}]", "plain");
        assert_eq!(
            raw, "{\"message\":\"plain\",\"k\":\"v\"}\n",
            "a text event with fields added is an object"
        );
    }

    #[test]
    fn given_lines_transforms_reach_into_in_every_way_then_runs_of_untouched_members_write_the_same()
     {
        let cases = [
            // rename into a new nested object; a constant; the message redacted
            (
                "[{set: {field: env, value: prod}}, {rename: {from: user_id, to: user.id}}, {redact: {pattern: email}}]",
                r#"{"ts":1,"msg":"to a@b.io","user_id":7,"x":[1,{"y":2}],"z":null}"#,
            ),
            // into an object the line has, and a literal dotted key the line has
            (
                "[{set: {field: user.id, value: 1}}, {set: {field: a.b, value: 2}}]",
                r#"{"user":{"name":"n"},"a.b":0,"k":"v"}"#,
            ),
            // duplicates, escaped keys, whitespace between members
            (
                r#"[{remove: d}, {set: {field: "e\u00e9", value: 1}}, {set: {field: t, value: '${d}-${k}'}}]"#,
                r#"{ "d" : 1 , "k":"v", "d":2, "e\u00e9":0,"\u0064":3 }"#,
            ),
            // nothing touched is in the line; every member touched
            ("[{remove: nope}]", r#"{"a":1,"b":2}"#),
            ("[{remove: a}, {remove: b}]", r#"{"a":1,"b":2}"#),
            ("[{set: {field: a, value: 1}}]", "{}"),
            ("[{set: {field: a, value: 1}}]", "{  }"),
            // separators and spaces around the runs between touched members (a strict
            // line: raw newlines and tabs count as control characters, which take the
            // full path)
            (
                "[{remove: m}, {set: {field: z, value: 1}}]",
                r#"{  "a":"x, " ,  "m":1 , "b":[1, 2] , "z" : 0  }"#,
            ),
            (
                "[{remove: m}]",
                "{\n\t\"a\":\"x, \" ,\r\n \"m\":1 ,\n\"b\":[1, 2] \n}",
            ),
            ("[{remove: m}]", "{ \"m\":1 , \"n\":{\"m\":2} }"),
        ];
        for (transform, line) in cases {
            transformed("json", transform, line);
        }
        let (raw, _) = transformed(
            "json",
            "[{rename: {from: user_id, to: user.id}}, {set: {field: env, value: prod}}]",
            r#"{"a":1,"user_id":7,"b":"x"}"#,
        );
        assert_eq!(
            raw,
            "{\"a\":1,\"b\":\"x\",\"user\":{\"id\":7},\"env\":\"prod\"}\n"
        );
    }

    /// The pipeline's way really copies untouched members as runs of a strict line, with
    /// the separators and spaces around them left out.
    #[test]
    fn given_a_strict_line_with_spaces_between_members_then_untouched_ones_are_runs() {
        let yaml = "sources: [{name: app, file: {paths: [/x/*.log], format: json}}]\n\
                    sinks: [{name: out, stdout: {}}]\n\
                    rules: [{name: r, to: [out], transform: [{remove: m}]}]\n";
        let r = Router::compile(&serde_yaml::from_str(yaml).unwrap()).unwrap();
        let line = br#"{ "a":"x, " ,  "m":1 , "b":[1, 2] , "c" : 0  }"#;
        let mut members = Members::default();
        let event = r.parse_keeping(0, line, &mut members);
        let mut fields = r.fields_for(0, &event, &mut Spare::default(), &members);
        let runs: Vec<String> = fields
            .written_members()
            .filter(|(k, _, _)| k.is_empty())
            .map(|(_, _, text)| String::from_utf8_lossy(text.unwrap_or_default()).into_owned())
            .collect();
        assert_eq!(runs, [r#""a":"x, ""#, r#""b":[1, 2] , "c" : 0"#]);
        r.transform(0, 0, &mut fields);
        let mut raw = Vec::new();
        encode_fields_raw(&mut raw, &fields);
        assert_eq!(raw, b"{\"a\":\"x, \",\"b\":[1, 2] , \"c\" : 0}\n");
    }

    #[test]
    fn given_a_transformed_line_with_raw_control_characters_then_the_output_is_repaired_json() {
        let (raw, json) = transformed("json", "[{remove: b}]", "{\"a\":\"tab\there\",\"b\":1}");
        assert_eq!(raw, "{\"a\":\"tab\\there\"}\n");
        assert_eq!(json["a"], "tab\there");
    }

    #[test]
    fn logfmt_pairs_become_string_fields() {
        let v = encode(Format::Logfmt, r#"level=info msg="hello \"you\"" n=3 flag"#);
        assert_eq!(v["level"], "info");
        assert_eq!(v["msg"], "hello \"you\"");
        assert_eq!(v["n"], "3");
        assert_eq!(v["flag"], true);
        assert_eq!(v["_servicelog"]["source"], "app");
    }
}
