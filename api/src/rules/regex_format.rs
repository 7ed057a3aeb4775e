//! `format: regex`: a file source whose lines have a fixed layout (nginx, apache) names
//! its fields with the named captures of one pattern.
//!
//! Captures are read into the same slots the JSON and logfmt scanners fill, as untyped
//! text (like logfmt values: `status` equals `500` and is greater than 499), so conditions,
//! the level and the message work as for any structured line. A capture that did not take
//! part in the match is absent. A line the pattern does not match is a text event.

use regex_automata::{Input, meta::Regex, util::captures::Captures};

use super::{
    event::{Esc, Kind, Slot},
    keys::{Found, KeyTable, Target, key_word},
    transform::{FieldValue, Fields},
};
use crate::v1alpha1::Format;

/// A source's pattern, with where each named capture goes.
#[derive(Debug)]
pub(crate) struct RegexPlan {
    re: Regex,
    /// (capture group index, its name, where routing wants it), for every named group.
    groups: Vec<(usize, Box<str>, Option<Target>)>,
}

impl RegexPlan {
    /// `None` when the pattern has no named capture (validation refuses it).
    pub(crate) fn new(re: Regex, keys: &KeyTable) -> Option<RegexPlan> {
        let groups: Vec<_> = re
            .group_info()
            .pattern_names(regex_automata::PatternID::ZERO)
            .enumerate()
            .filter_map(|(i, name)| {
                let name = name?;
                let target = keys
                    .lookup(name.as_bytes(), key_word(name.as_bytes()))
                    .map(|e| e.target);
                Some((i, name.into(), target))
            })
            .collect();
        (!groups.is_empty()).then_some(RegexPlan { re, groups })
    }

    fn captures(&self, line: &[u8]) -> Option<Captures> {
        let mut caps = self.re.create_captures();
        self.re.search_captures(&Input::new(line), &mut caps);
        caps.is_match().then_some(caps)
    }

    /// Stores the wanted captures of `line` in `found`; false when it does not match.
    pub(crate) fn scan(&self, line: &[u8], found: &mut Found) -> bool {
        let Some(caps) = self.captures(line) else {
            return false;
        };
        for (group, _, target) in &self.groups {
            if let (Some(target), Some(span)) = (target, caps.get_group(*group)) {
                found.store(
                    *target,
                    Slot::new(Kind::Untyped(Esc::None), span.start, span.end),
                );
            }
        }
        true
    }

    /// Every named capture of `line` as a field; `None` when it does not match.
    pub(crate) fn fields<'a>(&self, line: &'a [u8]) -> Option<Fields<'a>> {
        let caps = self.captures(line)?;
        let mut fields = Fields::new(Format::Regex);
        for (group, name, _) in &self.groups {
            if let Some(span) = caps.get_group(*group) {
                fields.push(
                    name.to_string().into(),
                    FieldValue::Text(String::from_utf8_lossy(&line[span.range()])),
                );
            }
        }
        Some(fields)
    }
}
