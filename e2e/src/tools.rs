//! The control plane's binaries, built by `e2e/tools/build.sh` from their official Go
//! modules into `~/.cache/servicelog/tools/<TOOLS_ID>/bin`.

use std::path::{Path, PathBuf};

use crate::EnvError;

const VERSIONS: &str = include_str!("../tools/VERSIONS");

/// Where the binaries are.
#[derive(Clone, Debug)]
pub struct Tools {
    bin: PathBuf,
}

impl Tools {
    /// Finds the binaries: `SERVICELOG_TOOLS_BIN` if set, else the cache directory named
    /// after `e2e/tools/VERSIONS`.
    ///
    /// Notable errors: [`EnvError::Missing`] naming the command that builds them.
    pub fn locate() -> Result<Self, EnvError> {
        let bin = match std::env::var_os("SERVICELOG_TOOLS_BIN") {
            Some(dir) => PathBuf::from(dir),
            None => default_bin_dir(),
        };
        let tools = Self { bin };
        for name in ["etcd", "kube-apiserver", "kubectl", "helm"] {
            if !tools.path(name).is_file() {
                return Err(EnvError::Missing {
                    what: format!("{name} in {}", tools.bin.display()),
                    hint: "run `make tools` (builds the test control plane's binaries once, ~20 min cold)".into(),
                });
            }
        }
        Ok(tools)
    }

    pub fn bin_dir(&self) -> &Path {
        &self.bin
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.bin.join(name)
    }
}

/// The value of `KEY=` in `e2e/tools/VERSIONS`.
pub fn version(key: &str) -> Option<&'static str> {
    VERSIONS
        .lines()
        .filter_map(|l| l.split_once('='))
        .find(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim())
}

/// `SERVICELOG_CACHE`, else `~/.cache/servicelog`: where build.sh puts the tool sets.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("SERVICELOG_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/servicelog")))
        .unwrap_or_else(|| PathBuf::from("/tmp/servicelog-cache"))
}

fn default_bin_dir() -> PathBuf {
    cache_dir()
        .join("tools")
        .join(version("TOOLS_ID").unwrap_or("unknown"))
        .join("bin")
}

#[cfg(test)]
mod tests {
    #[test]
    fn versions_file_names_every_tool() {
        for key in [
            "KUBERNETES_VERSION",
            "ETCD_VERSION",
            "HELM_VERSION",
            "TOOLS_ID",
            "COREDNS_VERSION",
            "NODE_TOOLS_ID",
            "KAFKA_VERSION",
            "OTELCOL_VERSION",
            "OTELCOL_TOOLS_ID",
        ] {
            assert!(
                super::version(key).is_some(),
                "e2e/tools/VERSIONS lacks {key}"
            );
        }
    }
}
