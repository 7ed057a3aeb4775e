//! File offsets that the sinks have taken, kept in `<state>/checkpoints.json`.
//!
//! A file is known by its device and inode (so a rename, as in log rotation, keeps its
//! offset) and checked against a fingerprint of its first bytes (so an inode reused by a new
//! file is not mistaken for the old one). The offset is always at a line boundary: the
//! reader only records offsets of batches every sink has written and flushed, so a restart
//! re-reads at most the batches that were in flight — at least once, never a gap.

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

/// `(device, inode)`.
pub type FileId = (u64, u64);

/// FNV-1a over the first bytes of a file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    pub len: u32,
    pub hash: u64,
}

impl Fingerprint {
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
    pub fingerprint: Fingerprint,
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
        }
    }

    pub fn get(&self, id: FileId) -> Option<&Entry> {
        self.entries.get(&id)
    }

    pub fn set(&mut self, id: FileId, path: &str, offset: u64, fingerprint: Fingerprint) {
        let entry = Entry {
            dev: id.0,
            ino: id.1,
            path: path.to_owned(),
            offset,
            fingerprint,
        };
        if self.entries.get(&id) != Some(&entry) {
            self.entries.insert(id, entry);
            self.dirty = true;
        }
    }

    /// Moves a file's offset forward (a late ack of a file no longer tracked).
    pub fn advance(&mut self, id: FileId, offset: u64) {
        if let Some(e) = self.entries.get_mut(&id)
            && e.offset < offset
        {
            e.offset = offset;
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
    /// least [`WRITE_EVERY`] old.
    pub fn flush(&mut self, force: bool) -> Result<(), StateError> {
        if !self.dirty || (!force && self.written.elapsed() < WRITE_EVERY) {
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
        c.set((1, 2), "/x/a.log", 42, Fingerprint::of(b"{\"a\":1}\n"));
        c.flush(true).unwrap();
        let c2 = Checkpoints::load(dir.path());
        let e = c2.get((1, 2)).unwrap();
        assert_eq!((e.offset, e.path.as_str()), (42, "/x/a.log"));
        assert_eq!(e.fingerprint, Fingerprint::of(b"{\"a\":1}\n"));
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
