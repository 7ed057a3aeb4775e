//! The extraction plan of one source: which keys of a line the compiled program reads and
//! where each value goes.
//!
//! Built once per source at compile time; the JSON scanner and the logfmt parser consult
//! it for every key of every line, so lookups are a length filter and a short linear scan
//! — the tables hold a handful of keys, where hashing would cost more than it saves.

use super::event::{MAX_FIELDS, Slot};

/// Level candidates, in priority order (`level`, `severity`, `lvl`, or one `levelField`).
pub(crate) const LEVEL_CANDIDATES: usize = 3;
/// Message candidates, in priority order (`msg`, `message`, or one `messageField`).
pub(crate) const MESSAGE_CANDIDATES: usize = 2;

/// What a key's value is used for. A key may serve several purposes (a condition on
/// `level` reads the same value the level comes from).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Target {
    pub(crate) field: Option<u8>,
    pub(crate) level: Option<u8>,
    pub(crate) message: Option<u8>,
    /// A top-level key some rule's transforms read or change: the scan marks its member
    /// (see [`super::json::Member`]), so building the event for the transforms need not
    /// compare keys again.
    pub(crate) touched: bool,
}

impl Target {
    fn merge(&mut self, other: Target) {
        self.field = self.field.or(other.field);
        self.level = self.level.or(other.level);
        self.message = self.message.or(other.message);
        self.touched |= other.touched;
    }
}

/// The values found in one line, before the level and message are resolved.
#[derive(Clone, Debug)]
pub(crate) struct Found {
    pub(crate) fields: [Slot; MAX_FIELDS],
    pub(crate) level: [Slot; LEVEL_CANDIDATES],
    pub(crate) message: [Slot; MESSAGE_CANDIDATES],
}

impl Found {
    pub(crate) fn new() -> Found {
        Found {
            fields: [Slot::ABSENT; MAX_FIELDS],
            level: [Slot::ABSENT; LEVEL_CANDIDATES],
            message: [Slot::ABSENT; MESSAGE_CANDIDATES],
        }
    }

    /// Duplicate keys: the last occurrence wins, as with serde_json.
    #[inline]
    pub(crate) fn store(&mut self, target: Target, slot: Slot) {
        if let Some(s) = target.field.and_then(|i| self.fields.get_mut(i as usize)) {
            *s = slot;
        }
        if let Some(s) = target.level.and_then(|i| self.level.get_mut(i as usize)) {
            *s = slot;
        }
        if let Some(s) = target
            .message
            .and_then(|i| self.message.get_mut(i as usize))
        {
            *s = slot;
        }
    }
}

/// Keys of this length or longer share the last length bucket.
const LONG_KEY: usize = 30;

/// The keys wanted at one level of an object.
#[derive(Debug, Default)]
pub(crate) struct KeyTable {
    /// Sorted by key length.
    entries: Vec<Entry>,
    /// `entries[buckets[n]..buckets[n + 1]]` are the keys of length `n`: most keys of a
    /// line are not wanted, and a line's key is compared only with wanted keys of its
    /// length — usually none or one.
    buckets: [u16; LONG_KEY + 2],
}

#[derive(Debug)]
pub(crate) struct Entry {
    key: Box<[u8]>,
    /// `key` as inserted: the name a touched member's key is given by (see [`KeyTable::name`]).
    name: Box<str>,
    /// Where the entry is in its table's `entries`.
    pub(crate) index: u16,
    /// The first eight bytes of `key` as [`key_word`] reads them: most keys are that
    /// short, and one integer comparison replaces a call to `memcmp`.
    word: u64,
    pub(crate) target: Target,
    /// Set when a dotted name reaches through this key into a nested object.
    pub(crate) child: Option<Box<KeyTable>>,
}

impl KeyTable {
    /// Adds a path of keys; the last one gets `target`.
    pub(crate) fn insert(&mut self, path: &[&str], target: Target) {
        let Some((first, rest)) = path.split_first() else {
            return;
        };
        let entry = self.entry(first);
        if rest.is_empty() {
            entry.target.merge(target);
        } else {
            entry
                .child
                .get_or_insert_with(Default::default)
                .insert(rest, target);
        }
    }

    fn entry(&mut self, name: &str) -> &mut Entry {
        let key = name.as_bytes();
        let pos = match self.entries.iter().position(|e| &*e.key == key) {
            Some(pos) => pos,
            None => {
                self.entries.push(Entry {
                    key: key.into(),
                    name: name.into(),
                    index: 0,
                    word: key_word(key),
                    target: Target::default(),
                    child: None,
                });
                self.entries.sort_by_key(|e| e.key.len().min(LONG_KEY));
                for (i, e) in self.entries.iter_mut().enumerate() {
                    e.index = u16::try_from(i).unwrap_or(u16::MAX);
                }
                for n in 0..=LONG_KEY + 1 {
                    let below = self
                        .entries
                        .partition_point(|e| e.key.len().min(LONG_KEY) < n);
                    self.buckets[n] = u16::try_from(below).unwrap_or(u16::MAX);
                }
                self.entries
                    .iter()
                    .position(|e| &*e.key == key)
                    .unwrap_or_default()
            }
        };
        &mut self.entries[pos]
    }

    /// The key of entry `index` (see [`Entry::index`]).
    pub(crate) fn name(&self, index: u16) -> Option<&str> {
        self.entries.get(usize::from(index)).map(|e| &*e.name)
    }

    /// The entry for `key`, whose [`key_word`] is `word`.
    #[inline]
    pub(crate) fn lookup(&self, key: &[u8], word: u64) -> Option<&Entry> {
        let n = key.len().min(LONG_KEY);
        let start = usize::from(*self.buckets.get(n)?);
        let end = usize::from(*self.buckets.get(n + 1)?);
        self.entries
            .get(start..end)?
            .iter()
            .find(|e| e.word == word && (key.len() <= 8 || *e.key == *key))
    }
}

/// The first (up to) eight bytes of a key as a little-endian integer, zero-padded.
#[inline]
pub(crate) fn key_word(key: &[u8]) -> u64 {
    let mut buf = [0u8; 8];
    for (d, s) in buf.iter_mut().zip(key) {
        *d = *s;
    }
    u64::from_le_bytes(buf)
}

/// [`key_word`] of `line[start..start + len]`, with one unaligned load when the line has
/// eight bytes from `start` (a key is followed by at least `":` and a value).
#[inline]
pub(crate) fn key_word_at(line: &[u8], start: usize, len: usize) -> u64 {
    match line
        .get(start..start + 8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
    {
        Some(bytes) => {
            let w = u64::from_le_bytes(bytes);
            if len >= 8 {
                w
            } else {
                w & ((1u64 << (len * 8)) - 1)
            }
        }
        None => key_word(line.get(start..start + len).unwrap_or_default()),
    }
}
