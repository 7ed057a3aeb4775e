//! Compiled `when` conditions and how they test an [`Event`].
//!
//! Comparison semantics (the contract users see):
//! - `equals` / `in` are type-aware on JSON: the string `"200"` does not equal the number
//!   `200`; numbers compare by value (`200` equals `200.0`, integers exactly). logfmt
//!   values are untyped and equal any scalar they spell (`status=200` equals `200` and
//!   `"200"`; `ok=true` equals `true`). A text event's message is a string.
//! - `greaterThan` / `lessThan` compare numbers, and also strings that are exactly one JSON
//!   number (`"1500"`): many loggers stringify numbers, and an ordering test on a string
//!   has no other useful meaning. Anything else never matches.
//! - `regex` searches the text of strings (unescaped), and of numbers and booleans as
//!   written in the line; null, objects and arrays never match.
//! - `exists: true` is presence, whatever the value (`null` included).

use std::cmp::Ordering;

// The engine inside `regex::bytes::Regex`, built with the same settings by the compiler,
// which can then tell how much memory each regex holds (the spec's regex budget).
use regex_automata::meta::Regex;

use super::{
    event::{Event, Value},
    json::is_number,
};

/// One condition of a conjunction.
#[derive(Debug)]
pub(crate) enum Cond {
    Source(usize),
    /// Bit `l as u8` set for each accepted level.
    Level(u8),
    Message(Regex),
    Field(usize, FieldTest),
    /// OR of conjunctions.
    Any(Vec<Vec<Cond>>),
}

impl Cond {
    /// Rough cost, so that cheap tests run first and can short-circuit the rest of a
    /// conjunction. The order of ANDed tests has no visible effect.
    pub(crate) fn cost(&self) -> u8 {
        match self {
            Cond::Source(_) | Cond::Level(_) => 0,
            Cond::Field(_, FieldTest::Exists(_)) => 1,
            Cond::Field(_, FieldTest::Regex(_)) | Cond::Message(_) => 3,
            Cond::Field(..) => 2,
            Cond::Any(_) => 4,
        }
    }

    #[inline]
    pub(crate) fn test(&self, ev: &Event<'_>) -> bool {
        match self {
            Cond::Source(s) => ev.source == *s,
            Cond::Level(mask) => ev.level.is_some_and(|l| mask & (1 << l as u8) != 0),
            Cond::Message(re) => ev.message_value().text().is_some_and(|t| re.is_match(&t)),
            Cond::Field(id, test) => test.test(ev.field(*id)),
            Cond::Any(alts) => alts.iter().any(|conj| all(conj, ev)),
        }
    }
}

#[inline]
pub(crate) fn all(conds: &[Cond], ev: &Event<'_>) -> bool {
    conds.iter().all(|c| c.test(ev))
}

#[derive(Debug)]
pub(crate) enum FieldTest {
    Equals(Scalar),
    In(Vec<Scalar>),
    Regex(Regex),
    Exists(bool),
    GreaterThan(f64),
    LessThan(f64),
}

impl FieldTest {
    fn test(&self, v: Value<'_>) -> bool {
        match self {
            FieldTest::Exists(want) => (v != Value::Absent) == *want,
            FieldTest::Equals(s) => equals_any(std::slice::from_ref(s), v),
            FieldTest::In(list) => equals_any(list, v),
            FieldTest::Regex(re) => v.text().is_some_and(|t| re.is_match(&t)),
            FieldTest::GreaterThan(x) => {
                number_of(v).is_some_and(|n| n.partial_cmp(x) == Some(Ordering::Greater))
            }
            FieldTest::LessThan(x) => {
                number_of(v).is_some_and(|n| n.partial_cmp(x) == Some(Ordering::Less))
            }
        }
    }
}

/// A scalar from the spec (`equals` / `in`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Scalar {
    Str(Box<[u8]>),
    Num(Number),
    Bool(bool),
}

/// A number kept exactly when it is an integer, so large ids compare without f64
/// rounding.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Number {
    Int(i128),
    Float(f64),
}

impl Number {
    /// Parses a JSON number's text.
    #[inline]
    pub(crate) fn parse(text: &[u8]) -> Option<Number> {
        // Most numbers in logs are small integers (statuses, latencies, ids).
        let (negative, digits) = match text.split_first() {
            Some((b'-', rest)) => (true, rest),
            _ => (false, text),
        };
        if !digits.is_empty() && digits.len() <= 18 && digits.iter().all(u8::is_ascii_digit) {
            let v = digits
                .iter()
                .fold(0i64, |v, d| v * 10 + i64::from(d - b'0'));
            return Some(Number::Int(i128::from(if negative { -v } else { v })));
        }
        let s = std::str::from_utf8(text).ok()?;
        if !text.iter().any(|b| matches!(b, b'.' | b'e' | b'E'))
            && let Ok(i) = s.parse::<i128>()
        {
            return Some(Number::Int(i));
        }
        s.parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .map(Number::Float)
    }

    fn as_f64(self) -> f64 {
        match self {
            Number::Int(i) => i as f64,
            Number::Float(f) => f,
        }
    }

    fn same(self, other: Number) -> bool {
        match (self, other) {
            (Number::Int(a), Number::Int(b)) => a == b,
            (a, b) => a.as_f64() == b.as_f64(),
        }
    }
}

impl Scalar {
    #[cfg(test)]
    fn equals(&self, v: Value<'_>) -> bool {
        equals_any(std::slice::from_ref(self), v)
    }

    pub(crate) fn from_json(v: &serde_json::Value) -> Option<Scalar> {
        Some(match v {
            serde_json::Value::String(s) => Scalar::Str(s.as_bytes().into()),
            serde_json::Value::Bool(b) => Scalar::Bool(*b),
            serde_json::Value::Number(n) => Scalar::Num(if let Some(i) = n.as_i64() {
                Number::Int(i.into())
            } else if let Some(u) = n.as_u64() {
                Number::Int(u.into())
            } else {
                Number::Float(n.as_f64().filter(|f| f.is_finite())?)
            }),
            _ => return None,
        })
    }
}

/// Whether `v` equals one of `list`; the value is read (unescaped, parsed) once, not once
/// per candidate.
fn equals_any(list: &[Scalar], v: Value<'_>) -> bool {
    match v {
        Value::Absent | Value::Null | Value::Composite => false,
        Value::Num(raw) => {
            let Some(n) = Number::parse(raw) else {
                return false;
            };
            list.iter()
                .any(|s| matches!(s, Scalar::Num(m) if m.same(n)))
        }
        Value::Bool(b) => list.contains(&Scalar::Bool(b)),
        Value::Str(..) => {
            let Some(text) = v.text() else {
                return false;
            };
            list.iter()
                .any(|s| matches!(s, Scalar::Str(x) if **x == *text))
        }
        Value::Untyped(..) => {
            let Some(text) = v.text() else {
                return false;
            };
            let number = is_number(&text).then(|| Number::parse(&text)).flatten();
            list.iter().any(|s| match s {
                Scalar::Str(x) => **x == *text,
                Scalar::Num(m) => number.is_some_and(|n| m.same(n)),
                Scalar::Bool(b) => *text == *if *b { &b"true"[..] } else { b"false" },
            })
        }
    }
}

/// The number a value stands for, for `greaterThan` / `lessThan`.
fn number_of(v: Value<'_>) -> Option<f64> {
    let n = match v {
        Value::Num(raw) => Number::parse(raw)?,
        Value::Str(..) | Value::Untyped(..) => {
            let t = v.text()?;
            if !is_number(&t) {
                return None;
            }
            Number::parse(&t)?
        }
        _ => return None,
    };
    Some(n.as_f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::event::Esc;

    fn num(x: i64) -> Scalar {
        Scalar::Num(Number::Int(x.into()))
    }

    #[test]
    fn equals_is_type_aware_on_json_and_loose_on_untyped() {
        let s200 = Scalar::Str((*b"200").into());
        let cases: &[(&Scalar, Value<'_>, bool)] = &[
            (&num(200), Value::Num(b"200"), true),
            (&num(200), Value::Num(b"200.0"), true),
            (&num(200), Value::Num(b"2e2"), true),
            (&num(200), Value::Num(b"201"), false),
            (&num(200), Value::Str(b"200", Esc::None), false),
            (&s200, Value::Num(b"200"), false),
            (&s200, Value::Str(b"200", Esc::None), true),
            (&num(200), Value::Untyped(b"200", Esc::None), true),
            (&s200, Value::Untyped(b"200", Esc::None), true),
            (&num(200), Value::Untyped(b"0x200", Esc::None), false),
            (&Scalar::Bool(true), Value::Bool(true), true),
            (&Scalar::Bool(true), Value::Bool(false), false),
            (&Scalar::Bool(true), Value::Str(b"true", Esc::None), false),
            (
                &Scalar::Bool(true),
                Value::Untyped(b"true", Esc::None),
                true,
            ),
            (
                &Scalar::Bool(false),
                Value::Untyped(b"false", Esc::None),
                true,
            ),
            (&num(1), Value::Null, false),
            (&num(1), Value::Absent, false),
            (
                &Scalar::Str((*b"a\"b").into()),
                Value::Str(br#"a\"b"#, Esc::Json),
                true,
            ),
        ];
        for (i, (s, v, want)) in cases.iter().enumerate() {
            assert_eq!(s.equals(*v), *want, "case {i}: {s:?} equals {v:?}");
        }
    }

    #[test]
    fn big_integers_compare_exactly() {
        let big = Scalar::Num(Number::Int(9_007_199_254_740_993));
        assert!(big.equals(Value::Num(b"9007199254740993")));
        assert!(!big.equals(Value::Num(b"9007199254740992")));
    }

    #[test]
    fn ordering_accepts_numeric_strings() {
        assert_eq!(number_of(Value::Num(b"1500")), Some(1500.0));
        assert_eq!(number_of(Value::Str(b"1500", Esc::None)), Some(1500.0));
        assert_eq!(number_of(Value::Untyped(b"-2.5", Esc::None)), Some(-2.5));
        assert_eq!(number_of(Value::Str(b"1500ms", Esc::None)), None);
        assert_eq!(number_of(Value::Str(b"inf", Esc::None)), None);
        assert_eq!(number_of(Value::Bool(true)), None);
        assert_eq!(number_of(Value::Null), None);
    }
}
