//! File offsets that the sinks have taken, kept in `<state>/checkpoints.json`.
//!
//! A file is known by its device and inode (so a rename, as in log rotation, keeps its
//! offset) and checked against fingerprints of its first bytes and of the bytes just before
//! the offset (so an inode reused by a new file is not mistaken for the old one, even when
//! the new file starts with the same banner). The offset is always at a line boundary: the
//! reader only records offsets of batches every sink has written and flushed, so a restart
//! re-reads at most the batches that were in flight and what was committed since the last
//! write of this file — at most [`WRITE_EVERY`] or [`WRITE_BYTES`], whichever comes first —
//! at least once, never a gap.

use std::{
    collections::HashMap,
    io,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use crate::state::{self, StateError};

pub const FILE: &str = "checkpoints.json";

/// Bytes of a file's beginning that identify it.
pub const FINGERPRINT_BYTES: usize = 64;

/// How often, at most, the checkpoint file is rewritten while events flow.
pub const WRITE_EVERY: Duration = Duration::from_millis(100);

/// Committed bytes after which the checkpoint file is rewritten without waiting for
/// [`WRITE_EVERY`]: a reader draining a backlog commits hundreds of megabytes a second,
/// and a kill between two timed writes would otherwise repeat all of it.
pub const WRITE_BYTES: u64 = 1 << 20;

/// `(device, inode)`.
pub type FileId = (u64, u64);

/// FNV-1a over at most [`FINGERPRINT_BYTES`] of a file. The default is the fingerprint of
/// no bytes, which every file matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    pub len: u32,
    pub hash: u64,
}

impl Default for Fingerprint {
    fn default() -> Self {
        Self::of(&[])
    }
}

impl Fingerprint {
    /// Of the first [`FINGERPRINT_BYTES`] of `head`.
    pub fn of(head: &[u8]) -> Self {
        let head = &head[..head.len().min(FINGERPRINT_BYTES)];
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for &b in head {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        Self {
            len: head.len() as u32,
            hash,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub dev: u64,
    pub ino: u64,
    pub path: String,
    pub offset: u64,
    /// Of the file's first bytes.
    pub fingerprint: Fingerprint,
    /// Of the (up to [`FINGERPRINT_BYTES`]) bytes just before `offset`; absent in
    /// checkpoints written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<Fingerprint>,
    /// The source that read it, so a file rotated out of its glob while a restart was due
    /// can be found and finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Of a container log file whose `offset` is held at a line of one stream still in
    /// progress: how far each stream's records are delivered, so a restart does not send
    /// the other stream's lines after `offset` again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub streams: Option<Streams>,
}

/// File offsets up to which each stream's records of a container log file are delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Streams {
    pub stdout: u64,
    pub stderr: u64,
}

impl Entry {
    /// Whether `file` (of `len` bytes) is the file this entry was written for: its head
    /// and the bytes before the offset are the ones recorded, and it is long enough.
    pub fn fits(&self, file: &std::fs::File, len: u64) -> bool {
        if len < self.offset {
            return false;
        }
        let head = read_at(file, 0, self.fingerprint.len as usize);
        if Fingerprint::of(&head) != self.fingerprint {
            return false;
        }
        self.before
            .is_none_or(|before| before == Fingerprint::before(file, self.offset))
    }
}

impl Fingerprint {
    /// Of the (up to [`FINGERPRINT_BYTES`]) bytes of `file` just before `offset`.
    pub fn before(file: &std::fs::File, offset: u64) -> Self {
        let start = offset.saturating_sub(FINGERPRINT_BYTES as u64);
        Self::of(&read_at(file, start, (offset - start) as usize))
    }
}

/// Up to `len` bytes of `file` from `offset` (fewer at its end or on an error).
pub fn read_at(file: &std::fs::File, offset: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; len];
    let mut got = 0;
    while got < len {
        match file.read_at(&mut buf[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    buf.truncate(got);
    buf
}

#[derive(Serialize, Deserialize)]
struct OnDisk {
    version: u32,
    files: Vec<Entry>,
}

#[derive(Debug)]
pub struct Checkpoints {
    path: PathBuf,
    entries: HashMap<FileId, Entry>,
    dirty: bool,
    written: Instant,
    /// Bytes committed since the last write.
    unwritten: u64,
}

impl Checkpoints {
    /// Reads the checkpoints; an unreadable file is reported and treated as empty (files
    /// are then read from their beginning: duplicates, not losses).
    pub fn load(dir: &Path) -> Self {
        let path = dir.join(FILE);
        let entries = match std::fs::read(&path) {
            Ok(data) => match serde_json::from_slice::<OnDisk>(&data) {
                Ok(d) => d.files.into_iter().map(|e| ((e.dev, e.ino), e)).collect(),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "ignoring unreadable checkpoints");
                    HashMap::new()
                }
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => HashMap::new(),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "ignoring unreadable checkpoints");
                HashMap::new()
            }
        };
        Self {
            path,
            entries,
            dirty: false,
            written: Instant::now(),
            unwritten: 0,
        }
    }

    pub fn get(&self, id: FileId) -> Option<&Entry> {
        self.entries.get(&id)
    }

    /// Records `entry` for `(entry.dev, entry.ino)`.
    pub fn set(&mut self, entry: Entry) {
        let id = (entry.dev, entry.ino);
        let old = self.entries.get(&id);
        if old == Some(&entry) {
            return;
        }
        let from = old.map_or(0, |e| e.offset);
        self.unwritten += entry.offset.saturating_sub(from);
        self.entries.insert(id, entry);
        self.dirty = true;
    }

    /// Moves a file's offset forward (a late ack of a file no longer tracked).
    pub fn advance(&mut self, id: FileId, offset: u64) {
        if let Some(e) = self.entries.get_mut(&id)
            && e.offset < offset
        {
            self.unwritten += offset - e.offset;
            e.offset = offset;
            e.before = None;
            self.dirty = true;
        }
    }

    pub fn retain(&mut self, mut keep: impl FnMut(FileId, &Entry) -> bool) {
        let before = self.entries.len();
        self.entries.retain(|id, e| keep(*id, e));
        self.dirty |= self.entries.len() != before;
    }

    pub fn ids(&self) -> Vec<FileId> {
        self.entries.keys().copied().collect()
    }

    /// Writes the file if something changed and (unless `force`) the last write is at
    /// least [`WRITE_EVERY`] old or [`WRITE_BYTES`] were committed since.
    pub fn flush(&mut self, force: bool) -> Result<(), StateError> {
        let due = force || self.unwritten >= WRITE_BYTES || self.written.elapsed() >= WRITE_EVERY;
        if !self.dirty || !due {
            return Ok(());
        }
        let mut files: Vec<Entry> = self.entries.values().cloned().collect();
        files.sort_by(|a, b| a.path.cmp(&b.path).then(a.ino.cmp(&b.ino)));
        let data = serde_json::to_vec_pretty(&OnDisk { version: 1, files }).map_err(|e| {
            StateError::Write {
                path: self.path.clone(),
                source: io::Error::other(e),
            }
        })?;
        state::write_atomic(&self.path, &data)?;
        self.dirty = false;
        self.written = Instant::now();
        self.unwritten = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_the_state_dir() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Checkpoints::load(dir.path());
        assert!(c.get((1, 2)).is_none());
        c.set(Entry {
            dev: 1,
            ino: 2,
            path: "/x/a.log".into(),
            offset: 42,
            fingerprint: Fingerprint::of(b"{\"a\":1}\n"),
            before: None,
            source: None,
            streams: None,
        });
        c.flush(true).unwrap();
        let c2 = Checkpoints::load(dir.path());
        let e = c2.get((1, 2)).unwrap();
        assert_eq!((e.offset, e.path.as_str()), (42, "/x/a.log"));
        assert_eq!(e.fingerprint, Fingerprint::of(b"{\"a\":1}\n"));
    }

    fn entry(offset: u64, fingerprint: Fingerprint) -> Entry {
        Entry {
            dev: 1,
            ino: 2,
            path: "/x/a.log".into(),
            offset,
            fingerprint,
            before: None,
            source: None,
            streams: None,
        }
    }

    #[test]
    fn given_a_write_just_now_when_a_megabyte_is_committed_then_it_is_written_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Checkpoints::load(dir.path());
        c.set(entry(10, Fingerprint::default()));
        c.flush(true).unwrap();
        c.set(entry(1000, Fingerprint::default()));
        c.flush(false).unwrap();
        let on_disk = || Checkpoints::load(dir.path()).get((1, 2)).unwrap().offset;
        assert_eq!(on_disk(), 10, "a small commit waits for the timer");
        c.set(entry(10 + WRITE_BYTES, Fingerprint::default()));
        c.flush(false).unwrap();
        assert_eq!(
            on_disk(),
            10 + WRITE_BYTES,
            "a megabyte committed is written at once"
        );
    }

    #[test]
    fn given_a_new_file_with_the_same_banner_then_the_bytes_before_the_offset_tell_it_apart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let banner =
            "=== checkout v1.4 starting, build 2026-12-07, config /etc/checkout.yaml ===\n";
        assert!(banner.len() > FINGERPRINT_BYTES);
        std::fs::write(
            &path,
            format!("{banner}first life line 1\nfirst life line 2\n"),
        )
        .unwrap();
        let old = std::fs::File::open(&path).unwrap();
        let len = old.metadata().unwrap().len();
        let mut e = entry(len, Fingerprint::of(&read_at(&old, 0, FINGERPRINT_BYTES)));
        e.before = Some(Fingerprint::before(&old, len));
        assert!(e.fits(&old, len));
        drop(old);
        std::fs::write(
            &path,
            format!("{banner}second life, a longer line 1\nmore and more\n"),
        )
        .unwrap();
        let new = std::fs::File::open(&path).unwrap();
        let new_len = new.metadata().unwrap().len();
        assert!(new_len >= e.offset);
        let mut head_only = e.clone();
        head_only.before = None;
        assert!(
            head_only.fits(&new, new_len),
            "the head alone cannot tell them apart"
        );
        assert!(!e.fits(&new, new_len), "the bytes before the offset can");
    }

    #[test]
    fn the_default_fingerprint_is_of_no_bytes_and_fits_every_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        std::fs::write(&path, "anything\n").unwrap();
        let f = std::fs::File::open(&path).unwrap();
        assert_eq!(Fingerprint::default(), Fingerprint::of(b""));
        assert!(entry(0, Fingerprint::default()).fits(&f, 9));
        assert!(
            !entry(10, Fingerprint::default()).fits(&f, 9),
            "shorter than the offset"
        );
    }

    #[test]
    fn a_corrupt_file_is_treated_as_empty() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), b"{torn").unwrap();
        assert!(Checkpoints::load(dir.path()).ids().is_empty());
    }

    #[test]
    fn fingerprint_covers_only_the_head() {
        let long = vec![b'x'; 200];
        assert_eq!(
            Fingerprint::of(&long),
            Fingerprint::of(&long[..FINGERPRINT_BYTES])
        );
        assert_ne!(Fingerprint::of(b"ab"), Fingerprint::of(b"ba"));
    }
}
