//! Transforms: what a rule changes in the events it routes (`set`, `remove`, `rename`,
//! `redact`), compiled once per config with the rest of the spec.
//!
//! Routing reads a borrowed [`Event`](super::Event) and never builds a tree. A transform
//! needs the whole event, so an event a transforming rule routes is first made into
//! [`Fields`]: its top-level members in the order written, each value still the bytes of
//! the line (the JSON text of a `json` member, the text of a logfmt pair or a regex
//! capture) until a transform touches it. A nested object is parsed only when a dotted
//! path reaches into an existing one (a new one is written as JSON text). In the
//! pipeline ([`Router::fields_for`](super::Router::fields_for)) the members come from the
//! routing scan, which marks those some transform names ([`Touched`]); the others stay
//! runs of the line, copied whole. That keeps a rule that sets, renames and redacts a few
//! fields close to the cost of routing alone.
//!
//! # Semantics
//!
//! - Each routing rule's transforms apply, in order, to the copy of the event that goes to
//!   that rule's sinks. Rules never see each other's changes: conditions are evaluated on
//!   the event as read, a `continue: true` rule's transforms do not reach later rules, and
//!   `defaultTo` sinks get the event as read. A sink named by several rules that all take
//!   the event gets it once, from the first of them.
//! - Paths are dotted like condition fields: in a `json` or text event `a.b` is the
//!   top-level key `a.b` if there is one, else `b` inside the object `a`; in `logfmt` and
//!   `regex` events (flat by nature) it is the literal key. `set` creates the objects on its
//!   way, replacing a non-object there; `remove` and `rename` of an absent field do
//!   nothing. Duplicate keys of a line all go: `remove` and `redact` treat every
//!   occurrence, `set` leaves one.
//! - `redact` applies to strings and numbers (a redacted number becomes a string), and to
//!   every string and number inside an object or array it names. Without `field` it
//!   applies to the event's message: the first present of `msg`, `message` (or the
//!   source's `messageField`); a text event's `message`. Empty matches are not replaced.
//! - A `${field}` template renders strings as their text, numbers and booleans as written,
//!   objects and arrays as JSON, and an absent or null field as nothing.

use std::borrow::Cow;

use regex_automata::meta::Regex;

use super::{
    compile::{RegexBudget, check_field_name},
    event::{Esc, unescape},
};
use crate::{
    v1alpha1::{Format, Redact, RedactPattern, Transform},
    validate::Errors,
};

/// Most transforms one rule may have: each costs time on every event the rule routes.
pub const MAX_TRANSFORMS: usize = 16;

/// Most `${field}` references in one `set` template.
pub const MAX_TEMPLATE_FIELDS: usize = 16;

/// What `redact` writes where `replacement` is not given.
pub const DEFAULT_REPLACEMENT: &str = "[REDACTED]";

/// Addresses a user at a domain with a dotted name: ASCII only, as addresses in logs are.
const EMAIL: &str = r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}";
/// `Bearer <token>` (RFC 6750's token68 characters); only the token is replaced.
const BEARER: &str = r"(?i:bearer)[ \t]+[A-Za-z0-9\-._~+/]+=*";
/// 13 to 19 digits, each group optionally separated by a space or a dash, not part of a
/// longer run of digits or letters; [`luhn`] then keeps only card numbers.
const CARD: &str = r"(?-u:\b)[0-9](?:[ \-]?[0-9]){12,18}(?-u:\b)";

/// A field path, split once.
#[derive(Debug)]
pub(crate) struct FieldPath {
    full: Box<str>,
    segments: Vec<Box<str>>,
    /// `{"b":{"c":` for `a.b.c`: the JSON a new object made for the path starts with.
    nested: Box<[u8]>,
}

impl FieldPath {
    pub(crate) fn new(name: &str) -> FieldPath {
        let segments: Vec<Box<str>> = name.split('.').map(Box::from).collect();
        let mut nested = Vec::new();
        for seg in segments.iter().skip(1) {
            nested.push(b'{');
            // Writing a string to a Vec cannot fail.
            let _ = serde_json::to_writer(&mut nested, &**seg);
            nested.push(b':');
        }
        FieldPath {
            full: name.into(),
            segments,
            nested: nested.into(),
        }
    }
}

#[derive(Debug)]
pub(crate) enum Piece {
    Text(Box<str>),
    Field(FieldPath),
}

#[derive(Debug)]
pub(crate) enum SetValue {
    /// A constant, as JSON text rendered once, and the member it makes of a top-level
    /// field (`"env":"prod"`), copied whole into JSON output.
    Const {
        json: Box<[u8]>,
        member: Box<[u8]>,
    },
    Template(Vec<Piece>),
}

#[derive(Debug)]
pub(crate) enum Finder {
    Regex,
    Bearer,
    CreditCard,
}

#[derive(Debug)]
pub(crate) struct Redactor {
    re: Regex,
    finder: Finder,
    /// A byte every match holds (`@` for `email`): text without it is not searched.
    needle: Option<u8>,
    replacement: Box<[u8]>,
}

#[derive(Debug)]
pub(crate) enum Step {
    Set(FieldPath, SetValue),
    Remove(FieldPath),
    Rename(FieldPath, FieldPath),
    /// `None`: the message.
    Redact(Option<FieldPath>, Redactor),
}

/// The top-level keys a rule's transforms may read or change. Every other member of an
/// event stays as the line holds it, so [`Router::fields_for`](super::Router::fields_for)
/// keeps runs of them as one piece of the line instead of one member each.
#[derive(Debug, Default)]
pub(crate) struct Touched {
    keys: Vec<Box<str>>,
    /// Bit `n` set: some key is `n` bytes long (64 and longer share bit 63). Most members
    /// of a line are ruled out by their length alone.
    lengths: u64,
    /// Bit `b` set: some key starts with byte `b` (non-ASCII bytes share bit 127).
    firsts: u128,
    /// Some `redact` without `field`: the sources' message fields are read too.
    message: bool,
}

impl Touched {
    pub(crate) fn of(steps: &[Step]) -> Touched {
        let mut touched = Touched::default();
        for step in steps {
            match step {
                Step::Set(path, SetValue::Const { .. }) | Step::Remove(path) => touched.add(path),
                Step::Set(path, SetValue::Template(pieces)) => {
                    touched.add(path);
                    for piece in pieces {
                        if let Piece::Field(f) = piece {
                            touched.add(f);
                        }
                    }
                }
                Step::Rename(from, to) => {
                    touched.add(from);
                    touched.add(to);
                }
                Step::Redact(Some(path), _) => touched.add(path),
                Step::Redact(None, _) => touched.message = true,
            }
        }
        touched
    }

    /// Adds the message fields of the sources (every source's: a key touched in vain
    /// only stays a member of its own) if some `redact` reads the message.
    pub(crate) fn add_messages<'p>(&mut self, paths: impl Iterator<Item = &'p FieldPath>) {
        if self.message {
            paths.for_each(|p| self.add(p));
        }
    }

    /// A path reaches the member named as a whole (`a.b`, a top-level key with a dot) or
    /// the one its first segment names (`a`).
    fn add(&mut self, path: &FieldPath) {
        let first = path.segments.first().map_or(&*path.full, |s| &**s);
        for key in [&*path.full, first] {
            if !self.keys.iter().any(|k| **k == *key) {
                self.lengths |= length_bit(key.len());
                self.firsts |= first_bit(key.as_bytes());
                self.keys.push(key.into());
            }
        }
    }

    /// The keys, each a whole top-level key.
    pub(crate) fn keys(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|k| &**k)
    }

    /// Whether a member with the key `key` (unescaped) may be read or changed.
    pub(crate) fn has(&self, key: &[u8]) -> bool {
        self.lengths & length_bit(key.len()) != 0
            && self.firsts & first_bit(key) != 0
            && self.keys.iter().any(|k| k.as_bytes() == key)
    }
}

/// `a == b`, deciding most unequal keys by their length and first byte, without a call.
#[inline]
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.as_bytes().first() == b.as_bytes().first() && a == b
}

fn length_bit(len: usize) -> u64 {
    1 << len.min(63)
}

fn first_bit(key: &[u8]) -> u128 {
    key.first().map_or(0, |b| 1 << b.min(&127))
}

/// Checks and compiles a rule's `transform` list, reporting under `path`
/// (`spec.rules[2].transform`).
pub(crate) fn compile(
    errors: &mut Errors,
    regexes: &mut RegexBudget,
    transforms: &[Transform],
    path: &str,
) -> Vec<Step> {
    if transforms.len() > MAX_TRANSFORMS {
        errors.push(
            path,
            format!(
                "a rule may have at most {MAX_TRANSFORMS} transforms, got {}",
                transforms.len()
            ),
        );
        return Vec::new();
    }
    let mut steps = Vec::with_capacity(transforms.len());
    for (i, t) in transforms.iter().enumerate() {
        let path = format!("{path}[{i}]");
        let set: Vec<&str> = [
            ("set", t.set.is_some()),
            ("remove", t.remove.is_some()),
            ("rename", t.rename.is_some()),
            ("redact", t.redact.is_some()),
        ]
        .into_iter()
        .filter_map(|(n, on)| on.then_some(n))
        .collect();
        if set.len() != 1 {
            let found = if set.is_empty() {
                "none".to_string()
            } else {
                set.join(", ")
            };
            errors.push(
                &path,
                format!(
                    "a transform sets exactly one of set, remove, rename, redact (found {found})"
                ),
            );
            continue;
        }
        let step = if let Some(s) = &t.set {
            let field = field(errors, &format!("{path}.set.field"), &s.field);
            let value = set_value(errors, &format!("{path}.set.value"), &s.value);
            field.zip(value).map(|(f, v)| {
                let v = match v {
                    SetValue::Const { json, .. } => {
                        let mut member = serde_json::to_vec(&*f.full).unwrap_or_default();
                        member.push(b':');
                        member.extend_from_slice(&json);
                        SetValue::Const {
                            json,
                            member: member.into(),
                        }
                    }
                    v => v,
                };
                Step::Set(f, v)
            })
        } else if let Some(name) = &t.remove {
            field(errors, &format!("{path}.remove"), name).map(Step::Remove)
        } else if let Some(r) = &t.rename {
            let from = field(errors, &format!("{path}.rename.from"), &r.from);
            let to = field(errors, &format!("{path}.rename.to"), &r.to);
            from.zip(to).map(|(f, t)| Step::Rename(f, t))
        } else if let Some(r) = &t.redact {
            redact(errors, regexes, &format!("{path}.redact"), r)
        } else {
            None
        };
        steps.extend(step);
    }
    steps
}

fn field(errors: &mut Errors, path: &str, name: &str) -> Option<FieldPath> {
    if let Err(e) = check_field_name(name) {
        errors.push(path, e);
        return None;
    }
    if name == "_servicelog" || name.starts_with("_servicelog.") {
        errors.push(
            path,
            "_servicelog is written by the sidecar (source, pod, namespace, labels) and cannot be changed by a transform",
        );
        return None;
    }
    Some(FieldPath::new(name))
}

fn set_value(errors: &mut Errors, path: &str, value: &serde_json::Value) -> Option<SetValue> {
    let Some(text) = value.as_str().filter(|s| s.contains('$')) else {
        return serde_json::to_vec(value).ok().map(constant);
    };
    match template(text) {
        Ok(pieces) if pieces.iter().any(|p| matches!(p, Piece::Field(_))) => {
            Some(SetValue::Template(pieces))
        }
        Ok(pieces) => {
            let text: String = pieces
                .iter()
                .map(|p| match p {
                    Piece::Text(t) => &**t,
                    Piece::Field(_) => "",
                })
                .collect();
            serde_json::to_vec(&text).ok().map(constant)
        }
        Err(e) => {
            errors.push(path, e);
            None
        }
    }
}

/// A constant's JSON text; its member text is made with the field (see `compile`).
fn constant(json: Vec<u8>) -> SetValue {
    SetValue::Const {
        json: json.into(),
        member: Box::default(),
    }
}

/// `text` split into literal text and `${field}` references; `$$` is a literal `$`, and a
/// `$` before anything else stays as it is.
fn template(text: &str) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut literal = String::new();
    let mut fields = 0;
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        literal.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(r) = after.strip_prefix('$') {
            literal.push('$');
            rest = r;
        } else if let Some(r) = after.strip_prefix('{') {
            let offset = text.len() - rest.len() + at;
            let Some(end) = r.find('}') else {
                return Err(format!(
                    "unclosed ${{ at offset {offset} (a template names a field as ${{name}}; $$ is a literal $)"
                ));
            };
            let name = &r[..end];
            check_field_name(name).map_err(|e| format!("${{…}} at offset {offset}: {e}"))?;
            fields += 1;
            if fields > MAX_TEMPLATE_FIELDS {
                return Err(format!(
                    "a template may name at most {MAX_TEMPLATE_FIELDS} fields"
                ));
            }
            if !literal.is_empty() {
                pieces.push(Piece::Text(std::mem::take(&mut literal).into()));
            }
            pieces.push(Piece::Field(FieldPath::new(name)));
            rest = &r[end + 1..];
        } else {
            literal.push('$');
            rest = after;
        }
    }
    literal.push_str(rest);
    if !literal.is_empty() {
        pieces.push(Piece::Text(literal.into()));
    }
    Ok(pieces)
}

fn redact(errors: &mut Errors, regexes: &mut RegexBudget, path: &str, r: &Redact) -> Option<Step> {
    let field = match &r.field {
        Some(name) => Some(field(errors, &format!("{path}.field"), name)?),
        None => None,
    };
    let (re, finder) = match (&r.regex, r.pattern) {
        (Some(re), None) => (
            regexes.compile(errors, &format!("{path}.regex"), re)?,
            Finder::Regex,
        ),
        (None, Some(p)) => {
            let (pattern, finder) = match p {
                RedactPattern::Email => (EMAIL, Finder::Regex),
                RedactPattern::BearerToken => (BEARER, Finder::Bearer),
                RedactPattern::CreditCard => (CARD, Finder::CreditCard),
            };
            (
                regexes.compile(errors, &format!("{path}.pattern"), pattern)?,
                finder,
            )
        }
        (Some(_), Some(_)) => {
            errors.push(path, "a redact sets either regex or pattern, not both");
            return None;
        }
        (None, None) => {
            errors.push(
                path,
                "a redact sets regex or pattern (email, bearerToken, creditCard)",
            );
            return None;
        }
    };
    let replacement = r
        .replacement
        .as_deref()
        .unwrap_or(DEFAULT_REPLACEMENT)
        .as_bytes()
        .into();
    Some(Step::Redact(
        field,
        Redactor {
            re,
            finder,
            needle: (r.regex.is_none() && r.pattern == Some(RedactPattern::Email)).then_some(b'@'),
            replacement,
        },
    ))
}

impl Redactor {
    /// `text` with the matches replaced; `None` when nothing matched.
    fn apply(&self, text: &[u8]) -> Option<String> {
        if self
            .needle
            .is_some_and(|b| memchr::memchr(b, text).is_none())
        {
            return None;
        }
        let mut out: Option<Vec<u8>> = None;
        let mut last = 0;
        for m in self.re.find_iter(text) {
            let found = &text[m.range()];
            let start = match self.finder {
                Finder::Regex => m.start(),
                Finder::Bearer => {
                    m.start()
                        + found
                            .iter()
                            .position(|b| *b == b' ' || *b == b'\t')
                            .map_or(0, |sp| {
                                sp + found[sp..]
                                    .iter()
                                    .take_while(|b| **b == b' ' || **b == b'\t')
                                    .count()
                            })
                }
                Finder::CreditCard if !luhn(found) => continue,
                Finder::CreditCard => m.start(),
            };
            if start >= m.end() {
                continue;
            }
            let o = out.get_or_insert_with(|| Vec::with_capacity(text.len()));
            o.extend_from_slice(&text[last..start]);
            o.extend_from_slice(&self.replacement);
            last = m.end();
        }
        let mut o = out?;
        o.extend_from_slice(&text[last..]);
        Some(match String::from_utf8(o) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        })
    }
}

/// The Luhn checksum of the digits of `text` (separators skipped): card numbers pass,
/// nine in ten other digit runs of the same length do not.
fn luhn(text: &[u8]) -> bool {
    let mut sum = 0u32;
    let mut double = false;
    for d in text.iter().rev().filter(|b| b.is_ascii_digit()) {
        let mut v = u32::from(d - b'0');
        if double {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
        double = !double;
    }
    sum.is_multiple_of(10)
}

/// A value of [`Fields`].
#[derive(Clone, Debug, PartialEq)]
pub enum FieldValue<'a> {
    /// JSON text as the line holds it: what the router's scanner accepts, which is not
    /// always strict JSON (raw control characters in strings), so it is written through a
    /// repairing writer.
    Json(Cow<'a, [u8]>),
    /// Text: a logfmt value, a regex capture, a text event's message, or what a template
    /// or a redaction made.
    Text(Cow<'a, str>),
    /// A value a transform parsed or built.
    Tree(serde_json::Value),
}

impl FieldValue<'_> {
    /// What a template shows of the value.
    fn text(&self) -> Option<Cow<'_, str>> {
        match self {
            FieldValue::Json(raw) => match raw.first()? {
                b'"' => Some(lossy(json_text(raw.get(1..raw.len().saturating_sub(1))?))),
                b'n' => None,
                _ => Some(String::from_utf8_lossy(raw)),
            },
            FieldValue::Text(s) => Some(Cow::Borrowed(s)),
            FieldValue::Tree(serde_json::Value::String(s)) => Some(Cow::Borrowed(s)),
            FieldValue::Tree(serde_json::Value::Null) => None,
            FieldValue::Tree(v) => Some(Cow::Owned(v.to_string())),
        }
    }

    fn into_tree(self) -> serde_json::Value {
        match self {
            FieldValue::Json(raw) => serde_json::from_slice(&raw)
                .unwrap_or_else(|_| serde_json::Value::String(lossy(Cow::Borrowed(&raw)).into())),
            FieldValue::Text(s) => serde_json::Value::String(s.into_owned()),
            FieldValue::Tree(v) => v,
        }
    }

    /// Redacts in place; false when nothing changed (values redact does not apply to, null
    /// and booleans, stay).
    fn redact(&mut self, r: &Redactor) -> bool {
        let redacted = match self {
            FieldValue::Json(raw) => match raw.first() {
                Some(b'"') => raw
                    .get(1..raw.len() - 1)
                    .and_then(|inner| r.apply(&json_text(inner))),
                Some(b'-' | b'0'..=b'9') => r.apply(raw),
                Some(b'{' | b'[') => {
                    let Ok(mut tree) = serde_json::from_slice::<serde_json::Value>(raw) else {
                        return false;
                    };
                    redact_tree(&mut tree, r);
                    *self = FieldValue::Tree(tree);
                    return true;
                }
                _ => None,
            },
            FieldValue::Text(s) => r.apply(s.as_bytes()),
            FieldValue::Tree(t) => {
                redact_tree(t, r);
                return true;
            }
        };
        match redacted {
            Some(s) => {
                *self = FieldValue::Text(Cow::Owned(s));
                true
            }
            None => false,
        }
    }
}

/// The text of a JSON string's contents (without quotes); borrowed when it has no escapes.
fn json_text(inner: &[u8]) -> Cow<'_, [u8]> {
    if memchr::memchr(b'\\', inner).is_none() {
        Cow::Borrowed(inner)
    } else {
        unescape(inner, Esc::Json)
    }
}

fn redact_tree(v: &mut serde_json::Value, r: &Redactor) {
    use serde_json::Value;
    match v {
        Value::String(s) => {
            if let Some(out) = r.apply(s.as_bytes()) {
                *s = out;
            }
        }
        Value::Number(n) => {
            if let Some(out) = r.apply(n.to_string().as_bytes()) {
                *v = Value::String(out);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|i| redact_tree(i, r)),
        Value::Object(map) => map.values_mut().for_each(|i| redact_tree(i, r)),
        Value::Null | Value::Bool(_) => {}
    }
}

fn lossy(bytes: Cow<'_, [u8]>) -> Cow<'_, str> {
    match bytes {
        Cow::Borrowed(b) => String::from_utf8_lossy(b),
        Cow::Owned(v) => Cow::Owned(match String::from_utf8(v) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        }),
    }
}

/// Key, value, and the member's `"key":value` text while it is as the line holds it.
pub(crate) type Member<'a> = (Cow<'a, str>, FieldValue<'a>, Option<&'a [u8]>);

/// A whole event, for the transforms and for writing it afterwards (see the module docs).
#[derive(Clone, Debug, PartialEq)]
pub struct Fields<'a> {
    /// Key, value, and for a member as the line holds it (untouched), its `"key":value`
    /// text: writing copies that rather than encoding key and value again.
    pub(crate) members: Vec<Member<'a>>,
    /// How the event was read: `text` for a text event.
    pub(crate) format: Format,
    /// The line a `json` event's members are in.
    pub(crate) line: Option<&'a [u8]>,
    /// The line is strict JSON (see [`is_strict`](super::json::is_strict)): members as
    /// it holds them can be copied to JSON output without repairs.
    pub(crate) strict: bool,
    /// Byte buffers of earlier events' values, for the values transforms make.
    bufs: Buffers,
}

/// Emptied byte buffers for values the transforms build (a new nested object's text), so
/// that an event's transforms allocate nothing once the first events have run. Not part of
/// the event: every two are equal.
#[derive(Clone, Default)]
struct Buffers(Vec<Vec<u8>>);

impl Buffers {
    /// Buffers kept at most: more than one event's transforms make.
    const KEEP: usize = 16;

    fn take(&mut self) -> Vec<u8> {
        self.0.pop().unwrap_or_default()
    }

    fn give(&mut self, mut buf: Vec<u8>) {
        if self.0.len() < Buffers::KEEP && buf.capacity() > 0 {
            buf.clear();
            self.0.push(buf);
        }
    }
}

impl PartialEq for Buffers {
    fn eq(&self, _: &Buffers) -> bool {
        true
    }
}

impl std::fmt::Debug for Buffers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Buffers")
    }
}

/// The member list of a written [`Fields`], kept so that the next event's is built
/// without allocating (see [`Router::fields_reusing`](super::Router::fields_reusing)).
#[derive(Debug, Default)]
pub struct Spare {
    members: Vec<Member<'static>>,
    bufs: Buffers,
}

/// `members` emptied and retyped for another line's lifetime: the same layout, so
/// collecting in place keeps the allocation.
#[expect(
    clippy::unnecessary_filter_map,
    reason = "the iterator yields nothing; it only retypes the empty Vec in place"
)]
fn recycle<'a, 'b>(mut members: Vec<Member<'a>>) -> Vec<Member<'b>> {
    members.clear();
    members.into_iter().filter_map(|_| None).collect()
}

impl<'a> Fields<'a> {
    /// An event of `format` with no fields yet.
    pub(crate) fn new(format: Format) -> Fields<'a> {
        Fields::new_in(format, &mut Spare::default())
    }

    /// Like [`Fields::new`], in `spare`'s allocation.
    pub(crate) fn new_in(format: Format, spare: &mut Spare) -> Fields<'a> {
        let mut members = recycle(std::mem::take(&mut spare.members));
        members.reserve(16);
        Fields {
            members,
            format,
            line: None,
            strict: false,
            bufs: std::mem::take(&mut spare.bufs),
        }
    }

    /// Gives the member list and the buffers of the values made back for the next event's
    /// [`Fields`].
    pub fn into_spare(mut self) -> Spare {
        for (_, value, _) in self.members.drain(..) {
            if let FieldValue::Json(Cow::Owned(buf)) = value {
                self.bufs.give(buf);
            }
        }
        Spare {
            members: recycle(self.members),
            bufs: self.bufs,
        }
    }

    /// A text event: `{"message": <message>}`.
    pub(crate) fn text(message: &'a [u8]) -> Fields<'a> {
        Fields {
            members: vec![(
                Cow::Borrowed("message"),
                FieldValue::Text(String::from_utf8_lossy(message)),
                None,
            )],
            format: Format::Text,
            line: None,
            strict: false,
            bufs: Buffers::default(),
        }
    }

    /// How the event was read (`text` for a text event): what `encoding: raw` writes it as.
    pub fn format(&self) -> Format {
        self.format
    }

    /// The line a `json` event was read from is strict JSON: the members it holds as they
    /// are can be copied to JSON output whole.
    pub fn strict(&self) -> bool {
        self.strict
    }

    /// The top-level members, in order. In [`Fields`] built for a rule
    /// ([`Router::fields_for`](super::Router::fields_for)), members none of its transforms
    /// looks at may come as runs: one member with an empty key whose value is the members'
    /// text as the line holds it (`"a":1,"b":2`), which [`Fields::written_members`] gives
    /// as written text too.
    pub fn members(&self) -> impl Iterator<Item = (&str, &FieldValue<'a>)> {
        self.members.iter().map(|(k, v, _)| (&**k, v))
    }

    /// The top-level members with, for those still as the line holds them, their
    /// `"key":value` text (JSON as the router's scanner accepts it: see [`FieldValue::Json`]).
    pub fn written_members(
        &self,
    ) -> impl Iterator<Item = (&str, &FieldValue<'a>, Option<&'a [u8]>)> {
        self.members.iter().map(|(k, v, raw)| (&**k, v, *raw))
    }

    /// The line a `json` event was read from.
    pub fn line(&self) -> Option<&'a [u8]> {
        self.line
    }

    pub(crate) fn push(&mut self, key: Cow<'a, str>, value: FieldValue<'a>) {
        self.members.push((key, value, None));
    }

    /// A member of `line` (a `json` event's), `whole` its `"key":value` text.
    pub(crate) fn push_member(
        &mut self,
        line: &'a [u8],
        key: Cow<'a, str>,
        value: FieldValue<'a>,
        whole: &'a [u8],
    ) {
        self.line = Some(line);
        self.members.push((key, value, Some(whole)));
    }

    /// Members of `line` that no transform looks at, `text` their `"a":1,"b":2` text
    /// (see [`Fields::members`]).
    pub(crate) fn push_run(&mut self, line: &'a [u8], text: &'a [u8]) {
        self.line = Some(line);
        self.members.push((
            Cow::Borrowed(""),
            FieldValue::Json(Cow::Borrowed(text)),
            Some(text),
        ));
    }

    fn flat(&self) -> bool {
        matches!(self.format, Format::Logfmt | Format::Regex)
    }

    fn position(&self, key: &str) -> Option<usize> {
        self.members.iter().rposition(|(k, _, _)| same(k, key))
    }

    /// The top-level member a dotted path starts in, parsed into a tree.
    fn tree(&mut self, key: &str) -> Option<&mut serde_json::Value> {
        let i = self.position(key)?;
        let (_, v, raw) = &mut self.members[i];
        *raw = None;
        if let FieldValue::Json(raw) = v {
            if !matches!(raw.first(), Some(b'{')) {
                return None;
            }
            *v = FieldValue::Tree(serde_json::from_slice(raw).ok()?);
        }
        match v {
            FieldValue::Tree(t) => Some(t),
            _ => None,
        }
    }

    /// Whether `path` names a top-level member (the literal key) rather than a nested one.
    fn literal(&self, path: &FieldPath) -> bool {
        self.flat() || path.segments.len() == 1 || self.position(&path.full).is_some()
    }

    fn text_at(&mut self, path: &FieldPath) -> Option<Cow<'_, str>> {
        if self.literal(path) {
            let i = self.position(&path.full)?;
            return self.members[i].1.text();
        }
        let (first, rest) = path.segments.split_first()?;
        let mut v = &*self.tree(first)?;
        for seg in rest {
            v = v.get(&**seg)?;
        }
        match v {
            serde_json::Value::String(s) => Some(Cow::Borrowed(s)),
            serde_json::Value::Null => None,
            v => Some(Cow::Owned(v.to_string())),
        }
    }

    fn take(&mut self, path: &FieldPath) -> Option<FieldValue<'a>> {
        if self.literal(path) {
            // Every occurrence goes; the value is the last one's.
            let mut taken = None;
            for i in (0..self.members.len()).rev() {
                if same(&self.members[i].0, &path.full) {
                    let (_, v, _) = self.members.remove(i);
                    taken.get_or_insert(v);
                }
            }
            return taken;
        }
        let (first, rest) = path.segments.split_first()?;
        let (last, mid) = rest.split_last()?;
        let mut v = self.tree(first)?;
        for seg in mid {
            v = v.get_mut(&**seg)?;
        }
        v.as_object_mut()?.remove(&**last).map(FieldValue::Tree)
    }

    fn put(&mut self, path: &'a FieldPath, value: FieldValue<'a>) {
        self.put_written(path, value, &[]);
    }

    /// Like `put`; `member`, unless empty, is the `"key":value` text a top-level member
    /// made of `path` and `value` is written as.
    fn put_written(&mut self, path: &'a FieldPath, value: FieldValue<'a>, member: &'a [u8]) {
        let written = Some(member).filter(|m| !m.is_empty());
        if self.literal(path) {
            // In place of the last occurrence (a new field goes last); earlier duplicates go.
            match self.position(&path.full) {
                Some(last) => {
                    self.members[last].1 = value;
                    self.members[last].2 = written;
                    let mut i = 0;
                    self.members.retain(|(k, _, _)| {
                        i += 1;
                        i - 1 == last || !same(k, &path.full)
                    });
                }
                None => self
                    .members
                    .push((Cow::Borrowed(&path.full), value, written)),
            }
            return;
        }
        let Some((first, rest)) = path.segments.split_first() else {
            return;
        };
        if self.tree(first).is_none_or(|t| !t.is_object()) {
            self.members.retain(|(k, _, _)| !same(k, first));
            // A new object is written as its JSON text, without a tree (`{"id":123}`),
            // unless the value is line text that needs repairs a tree would make.
            let object = if self.strict || !matches!(value, FieldValue::Json(_)) {
                FieldValue::Json(Cow::Owned(nested_json(path, &value, self.bufs.take())))
            } else {
                FieldValue::Tree(serde_json::Value::Object(Default::default()))
            };
            let done = matches!(object, FieldValue::Json(_));
            self.members.push((Cow::Borrowed(first), object, None));
            if done {
                return;
            }
        }
        let Some(mut v) = self.tree(first) else {
            return;
        };
        let Some((last, mid)) = rest.split_last() else {
            return;
        };
        for seg in mid {
            let Some(obj) = v.as_object_mut() else {
                return;
            };
            let next = obj
                .entry(&**seg)
                .or_insert_with(|| serde_json::Value::Object(Default::default()));
            if !next.is_object() {
                *next = serde_json::Value::Object(Default::default());
            }
            v = next;
        }
        if let Some(obj) = v.as_object_mut() {
            obj.insert(last.to_string(), value.into_tree());
        }
    }

    /// Redacts the field; false when it is absent.
    fn redact(&mut self, path: &FieldPath, r: &Redactor) -> bool {
        if self.literal(path) {
            let mut present = false;
            for (k, v, raw) in &mut self.members {
                if same(k, &path.full) {
                    if v.redact(r) {
                        *raw = None;
                    }
                    present = true;
                }
            }
            return present;
        }
        let Some((first, rest)) = path.segments.split_first() else {
            return false;
        };
        let Some(mut v) = self.tree(first) else {
            return false;
        };
        for seg in rest {
            let Some(next) = v.get_mut(&**seg) else {
                return false;
            };
            v = next;
        }
        redact_tree(v, r);
        true
    }
}

/// `{"b":{"c":value}}` for the path `a.b.c`: what `put` makes of a path through objects
/// that do not exist yet.
fn nested_json(path: &FieldPath, value: &FieldValue<'_>, mut text: Vec<u8>) -> Vec<u8> {
    let depth = path.segments.len() - 1;
    text.clear();
    text.reserve(path.nested.len() + 16 + depth);
    text.extend_from_slice(&path.nested);
    match value {
        FieldValue::Json(raw) => text.extend_from_slice(raw),
        // Writing a string or a Value to a Vec cannot fail.
        FieldValue::Text(t) => {
            let _ = serde_json::to_writer(&mut text, &**t);
        }
        FieldValue::Tree(v) => {
            let _ = serde_json::to_writer(&mut text, v);
        }
    }
    text.extend(std::iter::repeat_n(b'}', depth));
    text
}

/// Runs `steps` over `fields`; `message` are the paths the message is read from, in
/// order (the source's `msg`, `message` or `messageField`).
pub(crate) fn apply<'a>(steps: &'a [Step], message: &'a [FieldPath], fields: &mut Fields<'a>) {
    for step in steps {
        match step {
            Step::Set(path, SetValue::Const { json, member }) => {
                fields.put_written(path, FieldValue::Json(Cow::Borrowed(json)), member);
            }
            Step::Set(path, SetValue::Template(pieces)) => {
                let mut text = String::new();
                for piece in pieces {
                    match piece {
                        Piece::Text(t) => text.push_str(t),
                        Piece::Field(f) => {
                            if let Some(v) = fields.text_at(f) {
                                text.push_str(&v);
                            }
                        }
                    }
                }
                fields.put(path, FieldValue::Text(Cow::Owned(text)));
            }
            Step::Remove(path) => {
                fields.take(path);
            }
            Step::Rename(from, to) => {
                if let Some(v) = fields.take(from) {
                    fields.put(to, v);
                }
            }
            Step::Redact(Some(path), r) => {
                fields.redact(path, r);
            }
            Step::Redact(None, r) => {
                if fields.format == Format::Text {
                    fields.redact(&TEXT_MESSAGE, r);
                } else {
                    for path in message {
                        if fields.redact(path, r) {
                            break;
                        }
                    }
                }
            }
        }
    }
}

static TEXT_MESSAGE: std::sync::LazyLock<FieldPath> =
    std::sync::LazyLock::new(|| FieldPath::new("message"));
