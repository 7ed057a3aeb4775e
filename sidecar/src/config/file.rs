//! `--config-file`: the config read from a file and re-read when it changes.
//!
//! The file is polled (size, mtime, inode every 500 ms) rather than watched with inotify:
//! it works the same on every volume type, including ConfigMap mounts that swap a symlink.
//! A change is applied once the file has looked the same for two polls in a row, so a
//! file being written is not read half-way.

use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::Duration,
};

use super::last_good::LastGood;
use crate::topology::Topology;

pub const POLL: Duration = Duration::from_millis(500);

/// What tells a changed file from an unchanged one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Signature {
    len: u64,
    mtime_ns: i128,
    ino: u64,
}

pub fn signature(path: &Path) -> Option<Signature> {
    let m = std::fs::metadata(path).ok()?;
    Some(Signature {
        len: m.len(),
        mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        ino: m.ino(),
    })
}

/// Polls `path` forever, applying each settled change. A config that does not load or
/// validate is logged and counted; the rules in force stay.
pub async fn watch(
    path: PathBuf,
    topology: Topology,
    last_good: LastGood,
    mut applied: Option<Signature>,
) {
    let mut pending: Option<Signature> = None;
    loop {
        tokio::time::sleep(POLL).await;
        let now = signature(&path);
        if now == applied {
            pending = None;
            continue;
        }
        if now.is_none() {
            if pending.is_none() {
                tracing::warn!(path = %path.display(), "config file is gone; the rules in force stay");
            }
            pending = now;
            applied = None;
            continue;
        }
        if pending != now {
            pending = now;
            continue;
        }
        applied = now;
        pending = None;
        match super::load_file(&path) {
            Ok(config) => {
                let _ = super::apply(&topology, &last_good, &config);
            }
            Err(e) => {
                tracing::error!(error = %e, "config file not applied; the rules in force stay");
                topology.metrics().config_result(false);
            }
        }
    }
}
