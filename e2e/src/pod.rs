//! Running a container of an admitted pod as a local process, the way a kubelet would:
//! the test control plane has no nodes, so the e2e suite plays the kubelet for the
//! injected sidecar.
//!
//! Each `emptyDir` becomes a local directory, and so does each `secret` volume, filled by
//! [`materialize_secrets`] from the Secret in the API server as a kubelet would; each
//! volume mount is a bind mount in a
//! private mount namespace (`unshare -m`), so the process sees exactly the paths of the
//! pod spec (`/var/log/app`, `/var/lib/servicelog`, …) while many "pods" share the machine.
//! Env comes from the container spec, with the downward API's `metadata.name` and
//! `metadata.namespace` resolved. One thing differs from a pod: processes share the host
//! network, so each gets its own metrics port through `SERVICELOG_METRICS_ADDR`.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
};

use k8s_openapi::api::core::v1::{Container, Pod};

use crate::{
    EnvError,
    procs::{EnvDir, Proc, free_port},
};

/// A pod's volumes on the local disk.
#[derive(Debug, Clone)]
pub struct PodDirs {
    root: PathBuf,
}

impl PodDirs {
    /// `<env>/pods/<namespace>/<name>`.
    pub fn new(env: &EnvDir, pod: &Pod) -> Result<Self, EnvError> {
        let ns = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let name = pod.metadata.name.clone().unwrap_or_else(|| "pod".into());
        let root = env.join("pods").join(ns).join(name);
        std::fs::create_dir_all(root.join("volumes"))
            .map_err(|e| EnvError::io("creating pod dirs", e))?;
        Ok(Self { root })
    }

    /// The local directory backing volume `name`.
    pub fn volume(&self, name: &str) -> PathBuf {
        self.root.join("volumes").join(name)
    }

    /// The local directory a container sees at `mount_path`.
    pub fn path_in(&self, container: &Container, mount_path: &str) -> Option<PathBuf> {
        let mounts = container.volume_mounts.as_ref()?;
        let m = mounts
            .iter()
            .find(|m| m.mount_path.trim_end_matches('/') == mount_path.trim_end_matches('/'))?;
        Some(self.volume(&m.name))
    }
}

/// Writes the keys of the Secrets the pod's `secret` volumes name into those volumes'
/// local directories, one file per key, as a kubelet mounts them. A Secret that does not
/// exist leaves an empty directory when the volume is `optional`, and is an error
/// otherwise.
pub async fn materialize_secrets(
    client: &kube::Client,
    env: &EnvDir,
    pod: &Pod,
) -> Result<(), EnvError> {
    use k8s_openapi::api::core::v1::Secret;
    let dirs = PodDirs::new(env, pod)?;
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let secrets: kube::Api<Secret> = kube::Api::namespaced(client.clone(), ns);
    for volume in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        let Some(source) = &volume.secret else {
            continue;
        };
        let name = source.secret_name.clone().unwrap_or_default();
        let dir = dirs.volume(&volume.name);
        std::fs::create_dir_all(&dir).map_err(|e| EnvError::io("creating a secret volume", e))?;
        let secret = secrets.get_opt(&name).await.map_err(|e| EnvError::Failed {
            what: format!("reading Secret {ns}/{name} for volume {}", volume.name),
            detail: e.to_string(),
        })?;
        let Some(secret) = secret else {
            if source.optional == Some(true) {
                continue;
            }
            return Err(EnvError::Failed {
                what: format!("volume {}", volume.name),
                detail: format!("Secret {ns}/{name} does not exist"),
            });
        };
        for (key, value) in secret.data.iter().flatten() {
            std::fs::write(dir.join(key), &value.0)
                .map_err(|e| EnvError::io("writing a secret key", e))?;
        }
    }
    Ok(())
}

/// The container named `name` among the pod's containers and init containers.
pub fn container<'a>(pod: &'a Pod, name: &str) -> Option<&'a Container> {
    let spec = pod.spec.as_ref()?;
    spec.init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .find(|c| c.name == name)
}

/// A running container process.
#[derive(Debug)]
pub struct Running {
    pub proc: Proc,
    pub metrics_port: u16,
    pub dirs: PodDirs,
}

/// Starts `container` of `pod` from `binary` with the spec's env and mounts.
pub fn run(
    env: &EnvDir,
    pod: &Pod,
    container: &Container,
    binary: &Path,
) -> Result<Running, EnvError> {
    let dirs = PodDirs::new(env, pod)?;
    let mut script = String::from("set -e\n");
    for m in container.volume_mounts.iter().flatten() {
        let host = dirs.volume(&m.name);
        std::fs::create_dir_all(&host).map_err(|e| EnvError::io("creating a volume dir", e))?;
        let target = shell_quote(&m.mount_path);
        script.push_str(&format!(
            "mkdir -p {target}\nmount --bind {} {target}\n",
            shell_quote(&host.to_string_lossy())
        ));
        if m.read_only == Some(true) {
            script.push_str(&format!("mount -o remount,bind,ro {target}\n"));
        }
    }
    script.push_str("exec \"$0\" \"$@\"\n");
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .arg(binary)
        .args(container.args.iter().flatten());
    cmd.env_clear();
    if let Some(path) = std::env::var_os("PATH") {
        cmd.env("PATH", path);
    }
    let pod_name = pod.metadata.name.clone().unwrap_or_default();
    let pod_ns = pod.metadata.namespace.clone().unwrap_or_default();
    let mut env_vars = BTreeMap::new();
    for e in container.env.iter().flatten() {
        let value = match (&e.value, &e.value_from) {
            (Some(v), _) => v.clone(),
            (None, Some(from)) => match from.field_ref.as_ref().map(|f| f.field_path.as_str()) {
                Some("metadata.name") => pod_name.clone(),
                Some("metadata.namespace") => pod_ns.clone(),
                other => {
                    return Err(EnvError::Failed {
                        what: format!("env {} of container {}", e.name, container.name),
                        detail: format!("unsupported valueFrom {other:?}"),
                    });
                }
            },
            (None, None) => String::new(),
        };
        env_vars.insert(e.name.clone(), value);
    }
    let metrics_port = free_port()?;
    env_vars.insert(
        "SERVICELOG_METRICS_ADDR".into(),
        format!("127.0.0.1:{metrics_port}"),
    );
    env_vars
        .entry("RUST_LOG".into())
        .or_insert_with(|| std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()));
    cmd.envs(&env_vars);
    let proc = Proc::spawn_split(&format!("{pod_ns}-{pod_name}-{}", container.name), cmd, env)?;
    Ok(Running {
        proc,
        metrics_port,
        dirs,
    })
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}
