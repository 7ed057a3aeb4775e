//! A file the sidecar appends to, optionally rotated by size (`maxBytes`, `maxFiles`).
//!
//! Rotation renames `path` → `path.1` → … → `path.N` and starts a new `path`; it happens
//! between lines, so every file holds whole lines and stays at or under `maxBytes` (a single
//! line longer than that gets a file of its own). If someone else moves or deletes the file,
//! the sink notices within a second and reopens `path`.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Read, Seek, SeekFrom, Write},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use servicelog_api::v1alpha1::FileSink;

use super::SinkError;

/// Rotated files kept when `maxBytes` is set and `maxFiles` is not.
pub const DEFAULT_MAX_FILES: u32 = 5;

pub(crate) const RECHECK: Duration = Duration::from_secs(1);

pub struct FileWriter {
    path: PathBuf,
    file: File,
    ino: u64,
    size: u64,
    max_bytes: Option<u64>,
    max_files: u32,
    checked: Instant,
}

impl FileWriter {
    pub fn open(name: &str, spec: &FileSink) -> Result<Self, SinkError> {
        let err = |source| SinkError::Open {
            name: name.to_owned(),
            path: spec.path.clone(),
            source,
        };
        let path = PathBuf::from(&spec.path);
        let (file, ino, size) = open_append(&path).map_err(err)?;
        Ok(Self {
            path,
            file,
            ino,
            size,
            max_bytes: spec.max_bytes.filter(|b| *b > 0),
            max_files: spec.max_files.unwrap_or(DEFAULT_MAX_FILES),
            checked: Instant::now(),
        })
    }

    fn reopen(&mut self) -> io::Result<()> {
        let (file, ino, size) = open_append(&self.path)?;
        self.file = file;
        self.ino = ino;
        self.size = size;
        Ok(())
    }

    /// Reopens `path` if it no longer names the file we hold (moved or deleted by someone).
    fn recheck(&mut self) -> io::Result<()> {
        if self.checked.elapsed() < RECHECK {
            return Ok(());
        }
        self.checked = Instant::now();
        match fs::metadata(&self.path) {
            Ok(m) if m.ino() == self.ino => Ok(()),
            _ => self.reopen(),
        }
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.file.flush()?;
        let numbered = |i: u32| {
            let mut p = self.path.clone().into_os_string();
            p.push(format!(".{i}"));
            PathBuf::from(p)
        };
        if self.max_files == 0 {
            fs::remove_file(&self.path).or_else(ignore_missing)?;
        } else {
            fs::remove_file(numbered(self.max_files)).or_else(ignore_missing)?;
            for i in (1..self.max_files).rev() {
                fs::rename(numbered(i), numbered(i + 1)).or_else(ignore_missing)?;
            }
            fs::rename(&self.path, numbered(1)).or_else(ignore_missing)?;
        }
        self.reopen()
    }
}

fn ignore_missing(e: io::Error) -> io::Result<()> {
    if e.kind() == io::ErrorKind::NotFound {
        Ok(())
    } else {
        Err(e)
    }
}

/// Opens for appending, creating the file and its directory. A file that a crash left
/// ending in a torn line gets a newline first, so the next line is not glued to it.
fn open_append(path: &Path) -> io::Result<(File, u64, u64)> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .open(path)?;
    let mut size = file.metadata()?.len();
    if size > 0 {
        let mut last = [0u8; 1];
        file.seek(SeekFrom::Start(size - 1))?;
        file.read_exact(&mut last)?;
        if last[0] != b'\n' {
            file.write_all(b"\n")?;
            size += 1;
        }
    }
    let ino = file.metadata()?.ino();
    Ok((file, ino, size))
}

impl super::Writer for FileWriter {
    fn write_some(&mut self, data: &[u8]) -> io::Result<usize> {
        self.recheck()?;
        let mut take = data.len();
        if let Some(max) = self.max_bytes {
            let room = max.saturating_sub(self.size);
            if (data.len() as u64) > room {
                // Whole lines that fit; if none does, rotate (unless the file is already
                // empty, where an oversized line gets the file to itself).
                let fit = usize::try_from(room).unwrap_or(usize::MAX).min(data.len());
                match memchr::memrchr(b'\n', &data[..fit]) {
                    Some(i) => take = i + 1,
                    None if self.size > 0 => {
                        self.rotate()?;
                        return Ok(0);
                    }
                    None => take = memchr::memchr(b'\n', data).map_or(data.len(), |i| i + 1),
                }
            }
        }
        let n = self.file.write(&data[..take])?;
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }

    fn recover(&mut self) {
        if let Err(e) = self.reopen() {
            tracing::warn!(path = %self.path.display(), error = %e, "reopening the sink file");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sinks::Writer;

    fn write_all(w: &mut FileWriter, mut data: &[u8]) {
        while !data.is_empty() {
            let n = w.write_some(data).unwrap();
            data = &data[n..];
        }
        w.flush().unwrap();
    }

    #[test]
    fn rotates_between_lines_and_keeps_max_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.log");
        let spec = FileSink {
            path: path.display().to_string(),
            max_bytes: Some(20),
            max_files: Some(2),
            ..Default::default()
        };
        let mut w = FileWriter::open("s", &spec).unwrap();
        for i in 0..10 {
            write_all(&mut w, format!("line-{i:04}\n").as_bytes());
        }
        let read = |p: &str| fs::read_to_string(dir.path().join(p)).unwrap_or_default();
        // 10 bytes a line, 2 lines a file: 0-1 2-3 4-5 6-7 8-9, the oldest two removed.
        assert_eq!(read("out.log"), "line-0008\nline-0009\n");
        assert_eq!(read("out.log.1"), "line-0006\nline-0007\n");
        assert_eq!(read("out.log.2"), "line-0004\nline-0005\n");
        assert!(!dir.path().join("out.log.3").exists());
        // A batch larger than maxBytes is split between lines.
        write_all(&mut w, b"aaaa\nbbbb\ncccc\ndddd\neeee\n");
        assert!(fs::metadata(&path).unwrap().len() <= 20);
    }

    #[test]
    fn a_torn_last_line_is_terminated_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/out.log");
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, "whole\ntorn").unwrap();
        let spec = FileSink {
            path: path.display().to_string(),
            ..Default::default()
        };
        let mut w = FileWriter::open("s", &spec).unwrap();
        write_all(&mut w, b"next\n");
        assert_eq!(fs::read_to_string(&path).unwrap(), "whole\ntorn\nnext\n");
    }

    #[test]
    fn reopens_a_file_moved_away() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.log");
        let spec = FileSink {
            path: path.display().to_string(),
            ..Default::default()
        };
        let mut w = FileWriter::open("s", &spec).unwrap();
        write_all(&mut w, b"a\n");
        fs::rename(&path, dir.path().join("moved.log")).unwrap();
        w.checked = Instant::now() - RECHECK;
        write_all(&mut w, b"b\n");
        assert_eq!(fs::read_to_string(&path).unwrap(), "b\n");
    }
}
