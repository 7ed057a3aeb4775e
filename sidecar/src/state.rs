//! The state directory (`SERVICELOG_STATE_DIR`): the last-known-good config and the file
//! checkpoints. Every file here is replaced atomically (write a temporary file, rename it
//! over), so a crash leaves either the old or the new content, never a torn one.

use std::{
    fs,
    io::{self, Write},
    path::{Path, PathBuf},
};

use servicelog_api::wire::{Envelope, WireError};

/// The last config this sidecar applied, as its znode JSON.
pub const LAST_GOOD: &str = "last-good-config.json";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("writing {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path}: {source}")]
    Wire { path: PathBuf, source: WireError },
}

/// Replaces `path` with `data`: a temporary file in the same directory, renamed over.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<(), StateError> {
    let err = |source| StateError::Write {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(err)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let mut f = fs::File::create(&tmp).map_err(err)?;
    f.write_all(data).map_err(err)?;
    drop(f);
    fs::rename(&tmp, path).map_err(err)
}

pub fn save_last_good(dir: &Path, config: &Envelope) -> Result<(), StateError> {
    let path = dir.join(LAST_GOOD);
    let data = config.to_bytes().map_err(|source| StateError::Wire {
        path: path.clone(),
        source,
    })?;
    write_atomic(&path, &data)
}

/// The last-known-good config, `None` when there is none.
pub fn load_last_good(dir: &Path) -> Result<Option<Envelope>, StateError> {
    let path = dir.join(LAST_GOOD);
    let data = match fs::read(&path) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(StateError::Read { path, source }),
    };
    Envelope::from_slice(&data)
        .map(Some)
        .map_err(|source| StateError::Wire { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a/b.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::read_dir(dir.path().join("a")).unwrap().count(), 1);
        assert!(load_last_good(dir.path()).unwrap().is_none());
    }
}
