//! The last-known-good config: the last config this sidecar applied, as its znode JSON, in
//! the state directory. It is what the sidecar routes with when ZooKeeper cannot give it a
//! config at start. Written here and only here, after a config from ZooKeeper or a config
//! file was swapped in (never the one read back from here).

use std::{
    io,
    path::{Path, PathBuf},
};

use servicelog_api::wire::{Envelope, WireError};

use crate::state::{self, StateError};

/// Its file name in the state directory.
pub const FILE: &str = "last-good-config.json";

#[derive(Debug, thiserror::Error)]
pub enum LastGoodError {
    #[error(transparent)]
    Write(#[from] StateError),
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path}: {source}")]
    Wire { path: PathBuf, source: WireError },
}

/// The last-known-good config of one state directory.
#[derive(Clone, Debug)]
pub struct LastGood {
    path: PathBuf,
}

impl LastGood {
    pub fn new(state_dir: &Path) -> Self {
        Self {
            path: state_dir.join(FILE),
        }
    }

    /// Replaces it with `config`. A failure is logged: the config in force stays in force,
    /// only a later start without ZooKeeper would miss it.
    pub fn save(&self, config: &Envelope) {
        if let Err(e) = self.write(config) {
            tracing::warn!(error = %e, "writing the last-known-good config");
        }
    }

    fn write(&self, config: &Envelope) -> Result<(), LastGoodError> {
        let data = config.to_bytes().map_err(|source| LastGoodError::Wire {
            path: self.path.clone(),
            source,
        })?;
        Ok(state::write_atomic(&self.path, &data)?)
    }

    /// The last-known-good config, `None` when there is none.
    pub fn load(&self) -> Result<Option<Envelope>, LastGoodError> {
        let path = &self.path;
        let data = match std::fs::read(path) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(LastGoodError::Read {
                    path: path.clone(),
                    source,
                });
            }
        };
        Envelope::from_slice(&data)
            .map(Some)
            .map_err(|source| LastGoodError::Wire {
                path: path.clone(),
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use servicelog_api::ServiceLogSpec;

    use super::*;

    #[test]
    fn a_saved_config_loads_back_and_none_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let last_good = LastGood::new(dir.path());
        assert!(last_good.load().unwrap().is_none(), "nothing saved yet");
        let spec: ServiceLogSpec = serde_yaml::from_str(
            "sources: [{name: app, file: {paths: [/x/*.log]}}]\nsinks: [{name: out, stdout: {}}]\ndefaultTo: [out]\n",
        )
        .unwrap();
        let config = Envelope::new("uid-1", 3, spec).unwrap();
        last_good.save(&config);
        assert_eq!(last_good.load().unwrap(), Some(config));
        assert!(dir.path().join(FILE).is_file());
    }
}
