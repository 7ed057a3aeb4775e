//! Where the config comes from: a ZooKeeper znode ([`zk`]) or a file ([`file`]), with the
//! last-known-good copy in the state directory ([`last_good`]) as the fallback when
//! ZooKeeper is unreachable at start. Each hands the configs it reads to the
//! [`Topology`] and saves the ones it swapped in as last-known-good.

pub mod file;
pub mod health;
pub mod last_good;
pub mod zk;
pub mod zk_thread;

use std::path::{Path, PathBuf};

use servicelog_api::wire::{self, Envelope, Manifest, WireError};

use self::last_good::LastGood;
use crate::topology::{ApplyError, Topology};

/// Problems reading a config file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a ServiceLog manifest nor a config znode's JSON: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {source}")]
    Wire { path: PathBuf, source: WireError },
    #[error("{path}: expected apiVersion {want_api} and kind {want_kind}, found {api} {kind}", want_api = wire::API_VERSION, want_kind = wire::KIND)]
    Kind {
        path: PathBuf,
        api: String,
        kind: String,
    },
}

/// Applies `config` (a config file's) and, when it was swapped in, saves it as the
/// last-known-good config.
pub fn apply(
    topology: &Topology,
    last_good: &LastGood,
    config: &Envelope,
) -> Result<(), ApplyError> {
    if topology.apply(config)? {
        last_good.save(config);
    }
    Ok(())
}

/// Reads a ServiceLog YAML manifest, or the JSON of a config znode (whose hash is checked).
pub fn load_file(path: &Path) -> Result<Envelope, ConfigError> {
    let data = std::fs::read(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(path, &data)
}

pub fn parse(path: &Path, data: &[u8]) -> Result<Envelope, ConfigError> {
    let is_envelope = data.trim_ascii_start().starts_with(b"{")
        && serde_json::from_slice::<serde_json::Value>(data)
            .is_ok_and(|v| v.get("schema").is_some() && v.get("spec").is_some());
    if is_envelope {
        return Envelope::from_slice(data).map_err(|source| ConfigError::Wire {
            path: path.to_owned(),
            source,
        });
    }
    let manifest: Manifest = serde_yaml::from_slice(data).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    if manifest.api_version != wire::API_VERSION || manifest.kind != wire::KIND {
        return Err(ConfigError::Kind {
            path: path.to_owned(),
            api: manifest.api_version,
            kind: manifest.kind,
        });
    }
    let uid = manifest.metadata.uid.unwrap_or_default();
    let generation = manifest.metadata.generation.unwrap_or(0);
    Envelope::from_written_spec(uid, generation, &manifest.spec).map_err(|source| {
        ConfigError::Wire {
            path: path.to_owned(),
            source,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = "apiVersion: servicelog.io/v1alpha1\nkind: ServiceLog\nmetadata: {name: x, generation: 4}\nspec:\n  sources: [{name: app, file: {paths: [/x/*.log]}}]\n  sinks: [{name: out, stdout: {}}]\n  defaultTo: [out]\n";

    #[test]
    fn reads_a_manifest_and_the_equivalent_envelope() {
        let from_yaml = parse(Path::new("a.yaml"), YAML.as_bytes()).unwrap();
        assert_eq!(from_yaml.generation, 4);
        let json = from_yaml.to_bytes().unwrap();
        let from_json = parse(Path::new("a.json"), &json).unwrap();
        assert_eq!(from_json, from_yaml);
    }

    #[test]
    fn refuses_other_kinds_and_stale_hashes() {
        let other = YAML.replace("kind: ServiceLog", "kind: Pod");
        assert!(matches!(
            parse(Path::new("a"), other.as_bytes()),
            Err(ConfigError::Kind { .. })
        ));
        let env = parse(Path::new("a"), YAML.as_bytes()).unwrap();
        let mut v: serde_json::Value = serde_json::from_slice(&env.to_bytes().unwrap()).unwrap();
        v["spec"]["defaultTo"] = serde_json::json!([]);
        let err = parse(Path::new("a"), &serde_json::to_vec(&v).unwrap()).unwrap_err();
        assert!(matches!(err, ConfigError::Wire { .. }), "{err}");
        assert!(matches!(
            parse(Path::new("a"), b"- [unbalanced"),
            Err(ConfigError::Parse { .. })
        ));
    }
}
