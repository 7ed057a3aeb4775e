//! The rule language: a `ServiceLog` spec compiled into an immutable [`Router`] that the
//! sidecar runs on every line.
//!
//! ```text
//! spec ──Router::compile──▶ Router ──parse(source, line)──▶ Event ──route(event, now)──▶ Decision
//! ```
//!
//! Compilation does all the work that does not depend on a line: names become indices,
//! regexes are compiled once, and each source gets a plan of exactly the keys its lines are
//! searched for. Per line, [`Router::parse`] walks the line once without building a tree
//! or allocating, and [`Router::route`] runs the rules over the borrowed [`Event`]. A new
//! config is compiled aside and swapped in whole (behind an `Arc`), so a router never
//! changes while it routes.
//!
//! # Semantics
//!
//! - Rules are evaluated in order. The first rule that matches decides, unless it says
//!   `continue: true`: then its sinks are added and evaluation goes on as if it had not
//!   matched — later rules, and `defaultTo` when no later rule decides, still apply. A
//!   continue rule is a tap; it never keeps an event from the default sinks.
//! - `action: drop` stops evaluation, with or without `continue`. Sinks added by earlier
//!   continue rules keep the event.
//! - A routing rule may thin its events: `sample: p` keeps each with probability `p`, then
//!   `rateLimit: {perSecond: r}` admits at most `r` per second (a token bucket with burst
//!   `max(1, r)`). Only events the sample kept consume tokens. An event a deciding rule
//!   matched but did not keep is *decided* by that rule — it is dropped with reason
//!   `sampled` or `rate_limited` and does not fall through to later rules or `defaultTo`
//!   (a rule that samples its matches must not push the other 90% to the default sink).
//!   A continue rule that does not keep an event just does not add its sinks.
//! - Sampling is deterministic: the n-th event a rule sees gets the same draw in every
//!   router compiled from the same spec (see `limit.rs`). The rate limit depends only on
//!   the `now` values passed to [`Router::route`].
//! - Events no deciding rule took go to `defaultTo`; if that (with any continue sinks) is
//!   empty they are dropped with reason `no_route`.
//!
//! Field and level semantics are in [`Router::parse`] and `matcher.rs`.

mod compile;
mod event;
mod json;
mod keys;
mod limit;
mod logfmt;
mod matcher;
mod regex_format;
mod transform;

use std::{
    borrow::Cow,
    sync::atomic::{AtomicU64, Ordering},
    time::Instant,
};

pub use compile::{
    DEFAULT_DISK_BUFFER_BYTES, MAX_ANY_DEPTH, MAX_ANY_WIDTH, MAX_CONDITIONS, MAX_DISK_BUFFER_BYTES,
    MAX_MEMORY_BUFFER_BYTES, MAX_REGEX_BYTES, MAX_REGEXES, MAX_SINKS, REGEX_CACHE_CHARGE,
    REGEX_CACHE_LIMIT, regex_builder,
};
pub use event::{Event, MAX_FIELDS, parse_level};
pub use json::{
    MAX_DEPTH as MAX_JSON_DEPTH, MAX_PATH as MAX_FIELD_SEGMENTS, is_strict as is_strict_json,
};
pub use transform::{
    DEFAULT_REPLACEMENT, FieldValue, Fields, MAX_TEMPLATE_FIELDS, MAX_TRANSFORMS, Spare,
};

use self::{
    compile::{CompiledRule, RuleAction, SourcePlan},
    event::{Esc, Slot, level_of, unescape},
    keys::KeyTable,
    matcher::all,
};
use crate::{
    v1alpha1::{Format, Level, ServiceLogSpec},
    validate::ValidationErrors,
};

/// A compiled spec. Immutable apart from the sample and rate-limit counters (atomics), so
/// it is `Send + Sync` and meant to be shared behind an `Arc`.
#[derive(Debug)]
pub struct Router {
    /// Unique per compilation; events remember it (see [`Router::route`]).
    id: u64,
    sources: Vec<SourcePlan>,
    source_names: Vec<String>,
    sink_names: Vec<String>,
    rule_names: Vec<String>,
    rules: Vec<CompiledRule>,
    default_to: SinkSet,
    /// Field ids named `message`: the one field a text event has.
    message_fields: u32,
    /// Some rule has transforms.
    transforms: bool,
}

/// The top-level members of the `json` line [`Router::parse_keeping`] read last, so that
/// [`Router::fields_for`] does not scan it a second time. Reused from line to line.
#[derive(Debug)]
pub struct Members {
    /// Unique per `Members` of the process.
    id: u64,
    /// How many lines it was given; the event of the last one carries this number.
    parses: u64,
    /// The list is of the event with `kept == Some((id, parses))` (when its line parsed).
    valid: bool,
    /// What the scan told of the line.
    scanned: json::Scanned,
    /// The members some rule's transforms touch, in order (see [`json::scan`]).
    list: Vec<json::Member>,
}

static NEXT_MEMBERS: AtomicU64 = AtomicU64::new(1);

impl Default for Members {
    fn default() -> Members {
        Members {
            id: NEXT_MEMBERS.fetch_add(1, Ordering::Relaxed),
            parses: 0,
            valid: false,
            scanned: json::Scanned::default(),
            list: Vec::new(),
        }
    }
}

impl Members {
    /// The members of `event`'s line, if `event` is the one this kept them for. An event
    /// from [`Router::parse`], from another `Members` or from an earlier line never is,
    /// whatever address its line has.
    fn of(&self, event: &Event<'_>) -> Option<&Members> {
        (self.valid && event.kept == Some((self.id, self.parses))).then_some(self)
    }
}

impl Router {
    /// Checks and compiles `spec`.
    ///
    /// Notable errors: every problem of the spec at once, each with its field path (this
    /// is [`crate::validate::validate`]).
    pub fn compile(spec: &ServiceLogSpec) -> Result<Router, ValidationErrors> {
        compile::compile(spec)
    }

    /// Sink names in declaration order; [`SinkSet`] indices refer to them.
    pub fn sink_names(&self) -> &[String] {
        &self.sink_names
    }

    /// Source names in declaration order; the `source` of [`Router::parse`] indexes them.
    pub fn source_names(&self) -> &[String] {
        &self.source_names
    }

    /// Rule names in order; [`Decision::rule`] indexes them.
    pub fn rule_names(&self) -> &[String] {
        &self.rule_names
    }

    pub fn source_index(&self, name: &str) -> Option<usize> {
        self.source_names.iter().position(|n| n == name)
    }

    pub fn sink_index(&self, name: &str) -> Option<usize> {
        self.sink_names.iter().position(|n| n == name)
    }

    /// The format a source's lines are parsed in (`text` for syslog sources).
    pub fn source_format(&self, source: usize) -> Option<Format> {
        self.sources.get(source).map(|s| s.format)
    }

    /// The sinks of `defaultTo`.
    pub fn default_sinks(&self) -> SinkSet {
        self.default_to
    }

    /// Reads one line of source `source` (an index into this router's
    /// [`Router::source_names`]; after a config swap look it up again by name, as sources
    /// may have moved) in that source's format.
    ///
    /// Notable behaviors:
    /// - A line that does not parse in the format — invalid UTF-8, JSON that is not one
    ///   complete object, text with no `key=value` pair for logfmt — is a text event:
    ///   `{"message": <line>}`, no level. So is every line of a `text` source, and every
    ///   line of a source index this router does not have. Never panics.
    /// - The level is the first present of `level`, `severity`, `lvl` (or the source's
    ///   `levelField`); if that value is not a recognised level (see [`parse_level`]) the
    ///   event has no level — later candidates are not consulted.
    /// - The message is the first present of `msg`, `message` (or `messageField`).
    /// - Dotted names reach into nested JSON objects, and also match a literal dotted key
    ///   of the top-level object (flattened loggers); in logfmt they are literal keys.
    /// - Duplicate keys: the last occurrence wins.
    pub fn parse<'a>(&self, source: usize, line: &'a [u8]) -> Event<'a> {
        self.parse_with(source, line, None)
    }

    /// Like [`Router::parse`], keeping a `json` line's top-level members in `members`
    /// for [`Router::fields_for`], which then does not scan the line again.
    pub fn parse_keeping<'a>(
        &self,
        source: usize,
        line: &'a [u8],
        members: &mut Members,
    ) -> Event<'a> {
        self.parse_with(source, line, Some(members))
    }

    fn parse_with<'a>(
        &self,
        source: usize,
        line: &'a [u8],
        mut members: Option<&mut Members>,
    ) -> Event<'a> {
        if let Some(m) = members.as_deref_mut() {
            m.parses += 1;
            m.valid = false;
            m.list.clear();
        }
        // One event, filled in place and returned from every path: it is a few hundred
        // bytes, and copying it would cost more than the rest of the setup.
        let mut event = Event::text(self.id, source, line, line, self.message_fields);
        let Some(plan) = self.sources.get(source) else {
            return event;
        };
        if plan.format == Format::Text
            || u32::try_from(line.len()).is_err()
            || !(line.is_ascii() || std::str::from_utf8(line).is_ok())
        {
            return event;
        }
        let parsed = match plan.format {
            Format::Json => {
                let list = members.as_deref_mut().map(|m| &mut m.list);
                let scanned = json::scan(line, &plan.keys, &mut event.found, list);
                if let (Some(m), Ok(scanned)) = (members, scanned) {
                    m.valid = true;
                    m.scanned = scanned;
                    event.kept = Some((m.id, m.parses));
                }
                scanned.is_ok()
            }
            Format::Logfmt => logfmt::scan(line, &plan.keys, &mut event.found).is_ok(),
            Format::Regex => plan
                .regex
                .as_ref()
                .is_some_and(|re| re.scan(line, &mut event.found)),
            Format::Text => false,
        };
        if parsed {
            event.text = false;
            event.message = first_present(&event.found.message);
            event.level = level_of(event.slot_value(first_present(&event.found.level)));
        }
        event
    }

    /// A text event with a level the caller read itself (syslog takes it from the
    /// priority). Its message is the whole line.
    pub fn event_with_level<'a>(
        &self,
        source: usize,
        line: &'a [u8],
        level: Option<Level>,
    ) -> Event<'a> {
        self.event_with_message(source, line, line, level)
    }

    /// A text event whose message is `message` (e.g. a syslog MSG part) rather than the
    /// whole line; [`Event::line`] is still `line`.
    pub fn event_with_message<'a>(
        &self,
        source: usize,
        line: &'a [u8],
        message: &'a [u8],
        level: Option<Level>,
    ) -> Event<'a> {
        Event {
            explicit: true,
            level,
            ..Event::text(self.id, source, line, message, self.message_fields)
        }
    }

    /// Decides where `event` goes. `now` drives the rate limits (and only them), so tests
    /// can simulate time.
    ///
    /// An event made by another router (one compiled from an older config) is re-read by
    /// this one first, as its field slots are numbered differently; that costs a parse,
    /// nothing else.
    pub fn route(&self, event: &Event<'_>, now: Instant) -> Decision {
        self.route_transformed(event, now, None)
    }

    /// True when some rule has transforms: then route with [`Router::route_transformed`].
    pub fn has_transforms(&self) -> bool {
        self.transforms
    }

    /// Like [`Router::route`]; with `transformed`, also fills it (cleared first) with the
    /// rules whose transforms apply and the sinks that get each one's copy (see
    /// [`Router::transform`]). Sinks of the decision in none of them get the event as
    /// read. A sink is in at most one entry: the first rule that routed the event to it
    /// decides what it gets.
    pub fn route_transformed(
        &self,
        event: &Event<'_>,
        now: Instant,
        mut transformed: Option<&mut Vec<(u16, SinkSet)>>,
    ) -> Decision {
        if let Some(t) = transformed.as_deref_mut() {
            t.clear();
        }
        if event.program == self.id {
            return self.decide(event, now, transformed);
        }
        let own = if event.explicit {
            self.event_with_message(event.source, event.line, event.text_message, event.level)
        } else {
            self.parse(event.source, event.line)
        };
        self.decide(&own, now, transformed)
    }

    /// The whole event, for the transforms (see [`Fields`]). `event` must come from this
    /// router's [`Router::parse`] or `event_with_*` (a run never mixes routers).
    pub fn fields<'a>(&'a self, event: &Event<'a>) -> Fields<'a> {
        self.build_fields(event, None, &mut Spare::default(), None)
    }

    /// The event as rule `rule`'s transforms need it, in the allocation of a [`Fields`]
    /// written before: like [`Router::fields`], except that in a strict JSON line the
    /// members the rule's transforms never look at stay runs of the line (see
    /// [`Fields::members`]), written back as they are. `members`, when they were kept for
    /// `event` itself (by this router's [`Router::parse_keeping`]), spare a second scan of
    /// its line; for any other event they are not used.
    pub fn fields_for<'a>(
        &'a self,
        rule: u16,
        event: &Event<'a>,
        spare: &mut Spare,
        members: &Members,
    ) -> Fields<'a> {
        let touched = self.rules.get(usize::from(rule)).map(|r| &r.touched);
        // The marks are this router's: a list kept by another would mislead.
        let kept = members.of(event).filter(|_| event.program == self.id);
        self.build_fields(event, touched, spare, kept)
    }

    fn build_fields<'a>(
        &'a self,
        event: &Event<'a>,
        touched: Option<&transform::Touched>,
        spare: &mut Spare,
        members: Option<&Members>,
    ) -> Fields<'a> {
        let plan = self.sources.get(event.source);
        if event.text || plan.is_none() {
            return Fields::text(event.text_message);
        }
        let line = event.line;
        let format = plan.map_or(Format::Text, |p| p.format);
        let parsed = match format {
            Format::Json => {
                let mut fields = Fields::new_in(Format::Json, spare);
                // The scan that kept the members saw every escape: only control
                // characters are left to look for.
                fields.strict = match members {
                    Some(kept) => !kept.scanned.surrogate && !json::has_control(line),
                    None => json::is_strict(line),
                };
                let group = touched.filter(|_| fields.strict);
                // A kept list has only touched members, the others being the text
                // between them: of use only when those may stay runs.
                let members = members.filter(|_| group.is_some());
                let mut b = JsonMembers {
                    line,
                    names: plan.map(|p| &p.keys),
                    group,
                    // Members the routing scan kept come marked (`json::Member::touched`).
                    kept: members.is_some(),
                    fields,
                    run: None,
                };
                let scanned = match members {
                    Some(kept) => {
                        let (start, end) = kept.scanned.body;
                        let mut from = start as usize;
                        for &m in &kept.list {
                            b.between(from, m.whole().start);
                            from = m.whole().end;
                            b.member(m);
                        }
                        b.between(from, end as usize);
                        Ok(())
                    }
                    None => json::members(line, |m| b.member(m)),
                };
                scanned.ok().map(|()| b.finish())
            }
            Format::Logfmt => {
                let mut fields = Fields::new_in(Format::Logfmt, spare);
                logfmt::pairs(line, |key, slot| {
                    let key = String::from_utf8_lossy(key);
                    let value = match event.slot_value(slot) {
                        event::Value::Bool(_) => FieldValue::Json(Cow::Borrowed(b"true")),
                        v => FieldValue::Text(v.text().map_or(Cow::Borrowed(""), transform_key)),
                    };
                    fields.push(key, value);
                })
                .ok()
                .map(|()| fields)
            }
            Format::Regex => plan
                .and_then(|p| p.regex.as_ref())
                .and_then(|re| re.fields(line)),
            Format::Text => None,
        };
        parsed.unwrap_or_else(|| Fields::text(event.text_message))
    }

    /// Applies rule `rule`'s transforms (an index of [`Router::rule_names`], as
    /// [`Router::route_transformed`] gives them) to `fields`, an event of source `source`.
    pub fn transform<'a>(&'a self, rule: u16, source: usize, fields: &mut Fields<'a>) {
        let Some(r) = self.rules.get(usize::from(rule)) else {
            return;
        };
        let message = self.sources.get(source).map_or(&[][..], |p| &p.message);
        transform::apply(&r.transforms, message, fields);
    }

    fn decide(
        &self,
        event: &Event<'_>,
        now: Instant,
        mut transformed: Option<&mut Vec<(u16, SinkSet)>>,
    ) -> Decision {
        let mut copies = SinkSet::EMPTY;
        for (i, rule) in self.rules.iter().enumerate() {
            if !all(&rule.when, event) {
                continue;
            }
            // Rule counts are bounded by validation.
            let index = Some(i as u16);
            let sinks = match rule.action {
                RuleAction::Drop => return Decision::dropped(copies, index, DropReason::Rule),
                RuleAction::To(sinks) => sinks,
            };
            let refused = if rule.sample.as_ref().is_some_and(|s| !s.keep()) {
                Some(DropReason::Sampled)
            } else if rule.rate.as_ref().is_some_and(|r| !r.admit(now)) {
                Some(DropReason::RateLimited)
            } else {
                None
            };
            if refused.is_none()
                && !rule.transforms.is_empty()
                && let Some(t) = transformed.as_deref_mut()
            {
                let own = sinks.minus(copies);
                if !own.is_empty() {
                    t.push((i as u16, own));
                }
            }
            match (refused, rule.continue_) {
                (None, true) => copies = copies.union(sinks),
                (Some(_), true) => {}
                (None, false) => {
                    return Decision {
                        sinks: copies.union(sinks),
                        rule: index,
                        drop: None,
                    };
                }
                (Some(reason), false) => return Decision::dropped(copies, index, reason),
            }
        }
        let sinks = copies.union(self.default_to);
        Decision {
            sinks,
            rule: None,
            drop: sinks.is_empty().then_some(DropReason::NoRoute),
        }
    }
}

/// Builds a `json` event's [`Fields`] member by member (see [`Router::fields_for`]):
/// members no transform of the rule looks at are gathered into runs of the line.
struct JsonMembers<'a, 't> {
    line: &'a [u8],
    /// The source's top-level keys: a kept touched member's key is named there.
    names: Option<&'a KeyTable>,
    /// The rule's touched keys, when untouched members may stay runs (a strict line).
    group: Option<&'t transform::Touched>,
    /// The members come from the routing scan, marked.
    kept: bool,
    fields: Fields<'a>,
    /// The span of untouched members not pushed yet.
    run: Option<(usize, usize)>,
}

impl<'a> JsonMembers<'a, '_> {
    #[inline]
    fn member(&mut self, m: json::Member) {
        let line = self.line;
        let raw = &line[m.key()];
        let whole = m.whole();
        let key_bytes = || {
            if m.escaped {
                unescape(raw, Esc::Json)
            } else {
                Cow::Borrowed(raw)
            }
        };
        let untouched = match self.group {
            None => false,
            Some(_) if self.kept => m.touched.is_none(),
            Some(t) => !t.has(&key_bytes()),
        };
        if untouched {
            self.extend_run(whole.start, whole.end);
            return;
        }
        if let Some((start, end)) = self.run.take() {
            self.fields.push_run(line, &line[start..end]);
        }
        // A touched member the scan kept is named by its key table, as the line's text
        // would be once unescaped.
        let named = m.touched.zip(self.names);
        let key = match named.and_then(|(i, names)| names.name(i)) {
            Some(name) => Cow::Borrowed(name),
            None => transform_key(key_bytes()),
        };
        self.fields.push_member(
            line,
            key,
            FieldValue::Json(Cow::Borrowed(&line[m.value()])),
            &line[whole],
        );
    }

    /// The text of `line[from..to]`, members no transform touches, between two that some
    /// do (a kept list has only those; see [`json::scan`]).
    fn between(&mut self, from: usize, to: usize) {
        let run = json::trim_members(self.line, from, to);
        if !run.is_empty() {
            self.extend_run(run.start, run.end);
        }
    }

    fn extend_run(&mut self, start: usize, end: usize) {
        self.run = Some(match self.run {
            Some((first, _)) => (first, end),
            None => (start, end),
        });
    }

    fn finish(mut self) -> Fields<'a> {
        if let Some((start, end)) = self.run {
            self.fields.push_run(self.line, &self.line[start..end]);
        }
        self.fields
    }
}

fn transform_key(bytes: Cow<'_, [u8]>) -> Cow<'_, str> {
    match bytes {
        // `from_utf8` first: much faster than the lossy decoder on valid (short) text.
        Cow::Borrowed(b) => match std::str::from_utf8(b) {
            Ok(s) => Cow::Borrowed(s),
            Err(_) => String::from_utf8_lossy(b),
        },
        Cow::Owned(v) => Cow::Owned(match String::from_utf8(v) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        }),
    }
}

fn first_present(slots: &[Slot]) -> Slot {
    slots
        .iter()
        .copied()
        .find(Slot::is_present)
        .unwrap_or(Slot::ABSENT)
}

/// Where one event goes, and for metrics, what decided it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Decision {
    /// The sinks that get the event; empty when it is dropped.
    pub sinks: SinkSet,
    /// Index (into [`Router::rule_names`]) of the rule that decided: the first matching
    /// rule without `continue`. `None` when the event fell through to `defaultTo`.
    pub rule: Option<u16>,
    /// Why the event goes nowhere; `Some` exactly when `sinks` is empty.
    pub drop: Option<DropReason>,
}

impl Decision {
    /// A deciding rule took the event without routing it; sinks of earlier continue rules
    /// still get it, in which case it is not dropped.
    fn dropped(copies: SinkSet, rule: Option<u16>, reason: DropReason) -> Decision {
        Decision {
            sinks: copies,
            rule,
            drop: copies.is_empty().then_some(reason),
        }
    }

    pub fn is_dropped(&self) -> bool {
        self.sinks.is_empty()
    }
}

/// Why an event was dropped: the `reason` label of `servicelog_events_dropped_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// A rule with `action: drop` matched.
    Rule,
    /// A rule matched but its `sample` did not keep the event.
    Sampled,
    /// A rule matched but its `rateLimit` had no token left.
    RateLimited,
    /// No rule took the event and `defaultTo` is empty.
    NoRoute,
}

impl DropReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Rule => "rule",
            DropReason::Sampled => "sampled",
            DropReason::RateLimited => "rate_limited",
            DropReason::NoRoute => "no_route",
        }
    }
}

impl std::fmt::Display for DropReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of sink indices (into [`Router::sink_names`]); at most [`MAX_SINKS`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SinkSet(u64);

impl SinkSet {
    pub const EMPTY: SinkSet = SinkSet(0);

    /// Indices of [`MAX_SINKS`] or more are ignored.
    pub fn insert(&mut self, sink: usize) {
        if sink < MAX_SINKS {
            self.0 |= 1 << sink;
        }
    }

    pub fn contains(&self, sink: usize) -> bool {
        sink < MAX_SINKS && self.0 & (1 << sink) != 0
    }

    pub fn union(self, other: SinkSet) -> SinkSet {
        SinkSet(self.0 | other.0)
    }

    /// The sinks of `self` not in `other`.
    pub fn minus(self, other: SinkSet) -> SinkSet {
        SinkSet(self.0 & !other.0)
    }

    pub fn is_empty(&self) -> bool {
        self.0 == 0
    }

    pub fn len(&self) -> usize {
        self.0.count_ones() as usize
    }

    pub fn bits(&self) -> u64 {
        self.0
    }

    /// Indices in increasing order.
    pub fn iter(&self) -> SinkIter {
        SinkIter(self.0)
    }
}

impl FromIterator<usize> for SinkSet {
    fn from_iter<I: IntoIterator<Item = usize>>(iter: I) -> Self {
        let mut set = SinkSet::EMPTY;
        for i in iter {
            set.insert(i);
        }
        set
    }
}

impl IntoIterator for SinkSet {
    type Item = usize;
    type IntoIter = SinkIter;

    fn into_iter(self) -> SinkIter {
        SinkIter(self.0)
    }
}

/// Iterator over the indices of a [`SinkSet`].
#[derive(Clone, Debug)]
pub struct SinkIter(u64);

impl Iterator for SinkIter {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        if self.0 == 0 {
            return None;
        }
        let i = self.0.trailing_zeros() as usize;
        self.0 &= self.0 - 1;
        Some(i)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.0.count_ones() as usize;
        (n, Some(n))
    }
}

impl ExactSizeIterator for SinkIter {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn router_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Router>();
        check::<Event<'static>>();
    }

    #[test]
    fn sink_set_iterates_in_order() {
        let s: SinkSet = [5, 0, 63, 64, 5].into_iter().collect();
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![0, 5, 63]);
        assert_eq!(s.len(), 3);
        assert!(s.contains(63) && !s.contains(64) && !s.contains(1));
    }

    /// The members a line's parse kept are used for that event only: not for another
    /// line later read into the same buffer (same address, same length), nor for an event
    /// of `parse`, nor for one another router parsed.
    #[test]
    fn given_members_kept_for_a_line_then_no_other_event_uses_them() {
        let yaml = "sources: [{name: app, file: {paths: [/x/*.log], format: json}}]\n\
                    sinks: [{name: out, stdout: {}}]\n\
                    rules: [{name: r, to: [out], transform: [{remove: aaaa}]}]\n";
        let spec: ServiceLogSpec = serde_yaml::from_str(yaml).unwrap();
        let (r, other) = (
            Router::compile(&spec).unwrap(),
            Router::compile(&spec).unwrap(),
        );
        let mut buf = br#"{"aaaa":"secret-of-A!!!","b":1}"#.to_vec();
        let mut members = Members::default();
        let mut spare = Spare::default();
        let names = |f: &Fields<'_>| f.members().map(|(k, _)| k.to_string()).collect::<Vec<_>>();
        {
            let event = r.parse_keeping(0, &buf, &mut members);
            let mut fields = r.fields_for(0, &event, &mut spare, &members);
            r.transform(0, 0, &mut fields);
            assert_eq!(names(&fields), [""], "b as a run, aaaa removed");
        }
        // Another line, read into the same buffer: the list kept for the first must not
        // be taken for it (its ranges would cut this line at the wrong places).
        let b = br#"{"x":"hello!!!","level":"info"}"#;
        assert_eq!(b.len(), buf.len());
        buf.copy_from_slice(b);
        let fresh = |r: &Router, e: &Event<'_>| {
            let f = r.fields_for(0, e, &mut Spare::default(), &Members::default());
            format!("{f:?}")
        };
        let event = r.parse(0, &buf);
        let fields = r.fields_for(0, &event, &mut spare, &members);
        assert_eq!(format!("{fields:?}"), fresh(&r, &event));
        assert_eq!(names(&fields), [""], "x and level as one run");
        // An event another router parsed and kept: its marks are not this router's.
        let kept = other.parse_keeping(0, &buf, &mut members);
        let fields = r.fields_for(0, &kept, &mut spare, &members);
        assert_eq!(format!("{fields:?}"), fresh(&r, &kept));
    }

    #[test]
    fn decision_is_small_and_copy() {
        fn copy<T: Copy>() {}
        copy::<Decision>();
        assert!(std::mem::size_of::<Decision>() <= 16);
    }
}
