//! The control plane's binaries, built by `e2e/tools/build.sh` from their official Go
//! modules into `~/.cache/servicelog/tools/<TOOLS_ID>/bin`.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use crate::{
    EnvError,
    procs::{log_tail, wait_for},
    workspace_dir,
};

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

/// Builds the tool set `set` with `e2e/tools/build.sh set` into `bin` (its log in the cache's
/// `tools/<set>-build.log`), waiting at most `timeout`; `what` says what is built, for the
/// errors. Fails unless every binary of `want` is then in `bin`.
///
/// Notable errors: [`EnvError::Missing`] without Go, or when build.sh left a binary out.
pub fn build_set(
    set: &str,
    what: &str,
    want: &[&str],
    bin: &Path,
    timeout: Duration,
) -> Result<(), EnvError> {
    if Command::new("go").arg("version").output().is_err() {
        return Err(EnvError::Missing {
            what: format!("go, which builds {what}"),
            hint: "apt-get install golang (or run `make deps`)".into(),
        });
    }
    let script = workspace_dir().join("e2e/tools/build.sh");
    let log_dir = cache_dir().join("tools");
    fs::create_dir_all(&log_dir).map_err(|e| EnvError::io("creating the tools dir", e))?;
    let log_path = log_dir.join(format!("{set}-build.log"));
    let log = fs::File::create(&log_path)
        .map_err(|e| EnvError::io(format!("creating {}", log_path.display()), e))?;
    let mut child = Command::new("bash")
        .arg(&script)
        .arg(set)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| EnvError::io(format!("running {}", script.display()), e))?;
    let waited = wait_for(
        &format!("e2e/tools/build.sh to build {what}"),
        timeout,
        Duration::from_millis(200),
        || match child.try_wait() {
            Ok(None) => Ok(false),
            Ok(Some(status)) if status.success() => Ok(true),
            Ok(Some(status)) => Err(format!("it exited with {status}")),
            Err(e) => Err(format!("it cannot be waited for: {e}")),
        },
    );
    if waited.is_err() {
        let _ = child.kill();
        let _ = child.wait();
    }
    waited.map_err(|e| e.with_log(&format!("build.sh {set}"), &log_tail(&log_path, 20)))?;
    for name in want {
        if !bin.join(name).is_file() {
            return Err(EnvError::Missing {
                what: format!("{name} in {}", bin.display()),
                hint: format!(
                    "build.sh {set} did not complete; see {}",
                    log_path.display()
                ),
            });
        }
    }
    Ok(())
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
