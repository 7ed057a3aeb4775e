//! Building the injected pod: the sidecar container, its volumes, env and the marker
//! annotation. A pure function over values — the webhook turns the difference into a JSON
//! patch — so every pod shape is unit-tested from fixtures.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{
        Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource,
        HTTPGetAction, ObjectFieldSelector, Pod, Probe, ResourceRequirements, SeccompProfile,
        SecretVolumeSource, SecurityContext, Volume, VolumeMount,
    },
    apimachinery::pkg::{api::resource::Quantity, util::intstr::IntOrString},
};
use servicelog_api::{
    pod::{
        self, CREDENTIALS_DIR, INJECT_ANNOTATION, INJECTED_ANNOTATION, INJECTED_LABEL,
        METRICS_PORT, SIDECAR_CONTAINER, SIDECAR_MODE_ANNOTATION, STATE_DIR, ZK_AUTH_DIR,
        ZK_AUTH_KEY, ZK_AUTH_SECRET, ZK_TLS_CA_KEY, ZK_TLS_CERT_KEY, ZK_TLS_DIR, ZK_TLS_KEY_KEY,
    },
    rules::MAX_DISK_BUFFER_BYTES,
    v1alpha1::{ServiceLogSpec, SidecarOverride},
    validate::{PARENT_ONLY_DIRS, SYSTEM_DIRS, glob_dir, sink_dir},
    wire::Layout,
};

const STATE_VOLUME: &str = "servicelog-state";
/// Where the kubelet mounts the pod's ServiceAccount token into every container,
/// init containers included (the ServiceAccount admission plugin adds the mount).
const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// An empty volume mounted over [`SERVICE_ACCOUNT_DIR`] in the sidecar alone.
const NO_TOKEN_VOLUME: &str = "servicelog-no-token";
/// The pod's labels as a downward-API file, for `_servicelog.labels`.
const PODINFO_VOLUME: &str = "servicelog-podinfo";
/// Mode of the Secret files mounted into the sidecar. The kubelet writes them owned by
/// root, with the pod's fsGroup as their group only when the pod has one; the sidecar runs
/// as 65532, so 0440 left a pod without fsGroup unable to read its ZooKeeper identity
/// (seen on the node: `Permission denied`, never applied). Readable by all is safe here:
/// only the sidecar mounts these volumes.
const SECRET_MODE: i32 = 0o444;
/// The non-root user the sidecar runs as (distroless `nonroot`).
const RUN_AS_USER: i64 = 65532;

/// Operator-wide injection settings (chart values / flags).
#[derive(Clone, Debug)]
pub struct InjectConfig {
    pub image: String,
    pub zk_connect: String,
    pub layout: Layout,
    pub requests: BTreeMap<String, String>,
    pub limits: BTreeMap<String, String>,
    /// ZooKeeper ACLs are on: mount the namespace's identity ([`ZK_AUTH_SECRET`]).
    pub zk_auth: bool,
    /// `sizeLimit` of the emptyDirs for the sources' and file sinks' directories.
    pub volume_size_limit: String,
    /// TLS to ZooKeeper: the Secret to mount into the sidecar.
    pub zk_tls: Option<SidecarTls>,
    /// The sidecar's `SERVICELOG_LOG_FORMAT` and `SERVICELOG_LOG_LEVEL`, when set.
    pub log_format: Option<String>,
    pub log_level: Option<String>,
}

/// The sidecar's TLS to ZooKeeper: a Secret in the pod's namespace holding the CA
/// ([`ZK_TLS_CA_KEY`]) and, for mutual TLS, the client's certificate and key
/// ([`ZK_TLS_CERT_KEY`], [`ZK_TLS_KEY_KEY`]), the keys of a `kubernetes.io/tls` Secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SidecarTls {
    pub secret: String,
    /// Present the Secret's client certificate (mutual TLS).
    pub client_cert: bool,
}

/// Why a pod was admitted unchanged, for the review's warning.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Skip {
    #[error("annotation {INJECT_ANNOTATION} is {0:?}, not the name of a ServiceLog")]
    MalformedAnnotation(String),
    #[error(
        "{INJECT_ANNOTATION} names ServiceLog {namespace}/{name}, which does not exist; the pod runs without the servicelog sidecar"
    )]
    MissingServiceLog { namespace: String, name: String },
    #[error("the pod already has a container named {SIDECAR_CONTAINER}")]
    NameTaken,
    #[error(
        "source directory {dir} of ServiceLog {name} cannot be mounted into container {container}: {why}; the pod runs without the servicelog sidecar (give the logs a directory of their own, like /var/log/app)"
    )]
    Shadows {
        name: String,
        dir: String,
        container: String,
        why: String,
    },
    /// The sidecar image does not run on any node yet (see `prepull`).
    #[error("{0}")]
    ImageNotPulled(String),
    #[error("{0}")]
    Internal(String),
}

/// What the pod asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// No annotation, or already injected: nothing to do.
    None,
    /// Inject the named ServiceLog.
    Inject(String),
}

/// Reads the pod's annotations.
pub fn request(pod: &Pod) -> Result<Request, Skip> {
    let annotations = pod.metadata.annotations.as_ref();
    let Some(name) = annotations.and_then(|a| a.get(INJECT_ANNOTATION)) else {
        return Ok(Request::None);
    };
    if annotations.is_some_and(|a| a.contains_key(INJECTED_ANNOTATION)) {
        return Ok(Request::None);
    }
    let valid = !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if !valid {
        return Err(Skip::MalformedAnnotation(name.clone()));
    }
    Ok(Request::Inject(name.clone()))
}

/// Whether pods of `spec` get the sidecar: not when every source is `containerLogs`, which
/// the node agent reads from the kubelet's files on the pod's node.
pub fn needs_sidecar(spec: &ServiceLogSpec) -> bool {
    spec.sources.iter().any(|s| s.container_logs.is_none())
}

/// The pod with the sidecar for ServiceLog `name` in `namespace` injected — or, when it
/// needs none ([`needs_sidecar`]), only marked injected (the status's `injected` count):
/// no container, volume or ZooKeeper label, so it runs under any Pod Security level.
pub fn inject(
    pod: &Pod,
    namespace: &str,
    name: &str,
    spec: &ServiceLogSpec,
    config: &InjectConfig,
) -> Result<Pod, Skip> {
    let mut pod = pod.clone();
    if !needs_sidecar(spec) {
        pod.metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(INJECTED_ANNOTATION.into(), name.into());
        return Ok(pod);
    }
    let pod_spec = pod
        .spec
        .as_mut()
        .ok_or_else(|| Skip::Internal("the pod has no spec".into()))?;
    let taken = pod_spec
        .containers
        .iter()
        .any(|c| c.name == SIDECAR_CONTAINER)
        || pod_spec
            .init_containers
            .iter()
            .flatten()
            .any(|c| c.name == SIDECAR_CONTAINER);
    if taken {
        return Err(Skip::NameTaken);
    }
    let znode = config
        .layout
        .config(namespace, name)
        .map_err(|e| Skip::Internal(e.to_string()))?;

    let volumes = pod_spec.volumes.get_or_insert_with(Vec::new);
    let mut sidecar_mounts = Vec::new();
    let mut app_mounts = Vec::new();

    let source_dirs = outermost(unique(
        spec.sources
            .iter()
            .filter_map(|s| s.file.as_ref())
            .flat_map(|f| f.paths.iter().map(|p| glob_dir(p))),
    ));
    if let Some(skip) = shadowed(&pod_spec.containers, &source_dirs, name) {
        return Err(skip);
    }
    for (i, dir) in source_dirs.iter().enumerate() {
        let volume = unique_volume_name(volumes, &format!("servicelog-src-{i}"));
        volumes.push(empty_dir(&volume, &config.volume_size_limit));
        sidecar_mounts.push(mount(&volume, dir, true));
        app_mounts.push((volume, dir.clone()));
    }
    let sink_dirs = unique(
        spec.sinks
            .iter()
            .filter_map(|s| s.file.as_ref())
            .map(|f| sink_dir(&f.path))
            .filter(|d| !source_dirs.contains(d)),
    );
    for (i, dir) in sink_dirs.iter().enumerate() {
        let volume = unique_volume_name(volumes, &format!("servicelog-out-{i}"));
        volumes.push(empty_dir(&volume, &config.volume_size_limit));
        sidecar_mounts.push(mount(&volume, dir, false));
    }
    // Secrets by reference only: the Secret is mounted read-only into the sidecar and never
    // read by the operator. `optional` so a missing Secret does not hold the pod in
    // ContainerCreating (servicelog never blocks a deploy); the sidecar reports it instead.
    for (i, sink) in spec.sinks.iter().enumerate() {
        let Some(secret) = &sink.credentials_secret_ref else {
            continue;
        };
        let volume = unique_volume_name(volumes, &format!("servicelog-cred-{i}"));
        volumes.push(Volume {
            name: volume.clone(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.name.clone()),
                optional: Some(true),
                default_mode: Some(SECRET_MODE),
                ..Default::default()
            }),
            ..Default::default()
        });
        sidecar_mounts.push(mount(
            &volume,
            &pod::credentials_dir(CREDENTIALS_DIR, &sink.name),
            true,
        ));
    }
    // The namespace's ZooKeeper identity, which the operator writes into this Secret; as
    // with credentials, `optional` so a missing Secret never holds the pod.
    if config.zk_auth {
        let volume = unique_volume_name(volumes, "servicelog-zk-auth");
        volumes.push(Volume {
            name: volume.clone(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(ZK_AUTH_SECRET.into()),
                optional: Some(true),
                default_mode: Some(SECRET_MODE),
                ..Default::default()
            }),
            ..Default::default()
        });
        sidecar_mounts.push(mount(&volume, ZK_AUTH_DIR, true));
    }
    // The CA (and client certificate) the sidecar reaches ZooKeeper over TLS with;
    // `optional` likewise: the sidecar names the missing file and retries until it exists.
    if let Some(tls) = &config.zk_tls {
        let volume = unique_volume_name(volumes, "servicelog-zk-tls");
        volumes.push(Volume {
            name: volume.clone(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(tls.secret.clone()),
                optional: Some(true),
                default_mode: Some(SECRET_MODE),
                ..Default::default()
            }),
            ..Default::default()
        });
        sidecar_mounts.push(mount(&volume, ZK_TLS_DIR, true));
    }
    let state = unique_volume_name(volumes, STATE_VOLUME);
    volumes.push(empty_dir(&state, &state_volume_limit()));
    sidecar_mounts.push(mount(&state, STATE_DIR, false));
    // The sidecar never holds the pod's ServiceAccount token (it needs no Kubernetes
    // access, and the app's identity is not its to carry): an empty directory is mounted
    // where the token would be, and the ServiceAccount admission plugin leaves a
    // container that already mounts that path alone. The app keeps its token.
    let no_token = unique_volume_name(volumes, NO_TOKEN_VOLUME);
    volumes.push(empty_dir(&no_token, "1Mi"));
    sidecar_mounts.push(mount(&no_token, SERVICE_ACCOUNT_DIR, true));
    // The pod's labels as a file the kubelet keeps current: env vars are fixed at start and
    // cannot hold every label.
    let podinfo = unique_volume_name(volumes, PODINFO_VOLUME);
    volumes.push(Volume {
        name: podinfo.clone(),
        downward_api: Some(k8s_openapi::api::core::v1::DownwardAPIVolumeSource {
            items: Some(vec![k8s_openapi::api::core::v1::DownwardAPIVolumeFile {
                path: pod::PODINFO_LABELS.into(),
                field_ref: Some(ObjectFieldSelector {
                    field_path: "metadata.labels".into(),
                    api_version: None,
                }),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    });
    sidecar_mounts.push(mount(&podinfo, pod::PODINFO_DIR, true));
    let app_containers: Vec<String> = pod_spec.containers.iter().map(|c| c.name.clone()).collect();

    // Every app container gets the source directories (none of them mounts one: see
    // `shadowed`).
    for container in pod_spec.containers.iter_mut() {
        for (volume, dir) in &app_mounts {
            container
                .volume_mounts
                .get_or_insert_with(Vec::new)
                .push(mount(volume, dir, false));
        }
    }

    let overrides = spec.sidecar.clone().unwrap_or_default();
    let native = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(SIDECAR_MODE_ANNOTATION))
        .is_none_or(|m| m != "container");
    let mut sidecar = container(config, &overrides, &znode, sidecar_mounts, native);
    sidecar.env.get_or_insert_with(Vec::new).extend([
        EnvVar {
            name: pod::env::POD_LABELS_FILE.into(),
            value: Some(format!("{}/{}", pod::PODINFO_DIR, pod::PODINFO_LABELS)),
            value_from: None,
        },
        EnvVar {
            name: pod::env::CONTAINERS.into(),
            value: Some(app_containers.join(",")),
            value_from: None,
        },
    ]);
    let pod_spec = pod
        .spec
        .as_mut()
        .ok_or_else(|| Skip::Internal("the pod has no spec".into()))?;
    if native {
        // First among init containers, so it starts before the others and can read their
        // logs too; restartPolicy Always makes it a native sidecar.
        pod_spec
            .init_containers
            .get_or_insert_with(Vec::new)
            .insert(0, sidecar);
    } else {
        pod_spec.containers.push(sidecar);
    }
    pod.metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(INJECTED_ANNOTATION.into(), name.into());
    pod.metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(INJECTED_LABEL.into(), label_value(name));
    Ok(pod)
}

fn container(
    config: &InjectConfig,
    overrides: &SidecarOverride,
    znode: &str,
    mounts: Vec<VolumeMount>,
    native: bool,
) -> Container {
    let quantities = |m: &BTreeMap<String, String>| -> Option<BTreeMap<String, Quantity>> {
        (!m.is_empty()).then(|| {
            m.iter()
                .map(|(k, v)| (k.clone(), Quantity(v.clone())))
                .collect()
        })
    };
    let (requests, limits) = match &overrides.resources {
        Some(r) => (quantities(&r.requests), quantities(&r.limits)),
        None => (quantities(&config.requests), quantities(&config.limits)),
    };
    let env = |name: &str, value: &str| EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    };
    let field = |name: &str, path: &str| EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                api_version: None,
            }),
            ..Default::default()
        }),
    };
    let probe = |path: &str| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("slog-metrics".into()),
            ..Default::default()
        }),
        period_seconds: Some(10),
        ..Default::default()
    };
    Container {
        name: SIDECAR_CONTAINER.into(),
        image: Some(
            overrides
                .image
                .clone()
                .unwrap_or_else(|| config.image.clone()),
        ),
        restart_policy: native.then(|| "Always".to_string()),
        env: Some(
            [
                env(pod::env::ZK_CONNECT, &config.zk_connect),
                env(pod::env::CONFIG_ZNODE, znode),
                field(pod::env::POD_NAME, "metadata.name"),
                field(pod::env::POD_NAMESPACE, "metadata.namespace"),
                env(pod::env::STATE_DIR, STATE_DIR),
            ]
            .into_iter()
            .chain(
                config
                    .log_format
                    .as_deref()
                    .map(|f| env(servicelog_api::logging::FORMAT_ENV, f)),
            )
            .chain(
                config
                    .log_level
                    .as_deref()
                    .map(|l| env(servicelog_api::logging::LEVEL_ENV, l)),
            )
            .chain(config.zk_auth.then(|| {
                env(
                    pod::env::ZK_AUTH_FILE,
                    &format!("{ZK_AUTH_DIR}/{ZK_AUTH_KEY}"),
                )
            }))
            .chain(config.zk_tls.iter().flat_map(|tls| {
                let file = |key: &str| format!("{ZK_TLS_DIR}/{key}");
                [env(pod::env::ZK_TLS_CA_FILE, &file(ZK_TLS_CA_KEY))]
                    .into_iter()
                    .chain(
                        tls.client_cert
                            .then(|| {
                                [
                                    env(pod::env::ZK_TLS_CERT_FILE, &file(ZK_TLS_CERT_KEY)),
                                    env(pod::env::ZK_TLS_KEY_FILE, &file(ZK_TLS_KEY_KEY)),
                                ]
                            })
                            .into_iter()
                            .flatten(),
                    )
            }))
            .collect(),
        ),
        ports: Some(vec![ContainerPort {
            name: Some("slog-metrics".into()),
            container_port: i32::from(METRICS_PORT),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        // No readiness probe: a native sidecar's readiness counts towards the pod's, and
        // /readyz is false until a config is in force — with ZooKeeper down at the pod's
        // start the app would get no traffic. servicelog never blocks a deploy; whether
        // the sidecar applied its config is the ServiceLog's status (APPLIED) to show.
        liveness_probe: Some(probe("/healthz")),
        resources: Some(ResourceRequirements {
            requests,
            limits,
            ..Default::default()
        }),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(RUN_AS_USER),
            run_as_group: Some(RUN_AS_USER),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                localhost_profile: None,
            }),
            ..Default::default()
        }),
        volume_mounts: Some(mounts),
        ..Default::default()
    }
}

/// An emptyDir of at most `size_limit`: the kubelet evicts the pod past it, rather than
/// let one pod's logs or buffers fill the node's disk.
fn empty_dir(name: &str, size_limit: &str) -> Volume {
    Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource {
            size_limit: Some(Quantity(size_limit.to_owned())),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The state volume holds the disk buffers (at most [`MAX_DISK_BUFFER_BYTES`] per spec,
/// which validation enforces), checkpoints and the last-known-good config.
fn state_volume_limit() -> String {
    format!("{}Mi", (MAX_DISK_BUFFER_BYTES >> 20) + 64)
}

fn mount(volume: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: volume.into(),
        mount_path: path.into(),
        read_only: read_only.then_some(true),
        ..Default::default()
    }
}

/// `name`, or `name-2`, `name-3`… if the pod already has a volume of that name.
fn unique_volume_name(volumes: &[Volume], name: &str) -> String {
    let taken = |n: &str| volumes.iter().any(|v| v.name == n);
    if !taken(name) {
        return name.to_owned();
    }
    (2..)
        .map(|i| format!("{name}-{i}"))
        .find(|n| !taken(n))
        .unwrap_or_else(|| name.to_owned())
}

/// Why the sources' emptyDirs cannot be mounted into the app containers, if they cannot:
/// a directory at, above or below one of a container's own mounts (the emptyDir would hide
/// what that volume holds there, or the app would write the logs into its own volume,
/// where the sidecar never sees them), or an image's system directory ([`SYSTEM_DIRS`],
/// [`PARENT_ONLY_DIRS`]; validation refuses those, but a ServiceLog stored before it did
/// may still name one). The pod is then admitted without the sidecar rather than
/// injected into a pod that breaks or ships nothing.
fn shadowed(containers: &[Container], source_dirs: &[String], name: &str) -> Option<Skip> {
    let within = |d: &str, parent: &str| parent == "/" || d.starts_with(&format!("{parent}/"));
    let skip = |dir: &str, container: &str, why: String| Skip::Shadows {
        name: name.to_owned(),
        dir: dir.to_owned(),
        container: container.to_owned(),
        why,
    };
    for dir in source_dirs {
        let system = SYSTEM_DIRS
            .iter()
            .find(|s| within(dir, s) || dir == *s)
            .or_else(|| PARENT_ONLY_DIRS.iter().find(|s| dir == *s))
            .copied()
            .or((dir == "/").then_some("/"));
        if let Some(system) = system {
            let container = containers.first().map_or("", |c| c.name.as_str());
            return Some(skip(
                dir,
                container,
                format!("an empty volume there would hide the image's {system}"),
            ));
        }
        for container in containers {
            for m in container.volume_mounts.iter().flatten() {
                let at = match m.mount_path.trim_end_matches('/') {
                    "" => "/",
                    at => at,
                };
                let why = if at == dir {
                    format!(
                        "the container mounts its own volume {} there, which the sidecar would not see",
                        m.name
                    )
                } else if within(dir, at) {
                    format!(
                        "an empty volume there would hide what the container's volume {} mounted at {at} holds at {dir}",
                        m.name
                    )
                } else if within(at, dir) {
                    format!(
                        "the container mounts its own volume {} at {at}, below it, where the app's logs would not reach the sidecar",
                        m.name
                    )
                } else {
                    continue;
                };
                return Some(skip(dir, &container.name, why));
            }
        }
    }
    None
}

/// A ServiceLog's name as a label value: at most 63 characters, ending alphanumeric (a
/// name is a DNS subdomain, up to 253).
fn label_value(name: &str) -> String {
    let cut = &name[..name.len().min(63)];
    cut.trim_end_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_owned()
}

/// Drops directories nested in another of the list: one volume serves both.
fn outermost(dirs: Vec<String>) -> Vec<String> {
    let within = |d: &str, parent: &str| parent == "/" || d.starts_with(&format!("{parent}/"));
    dirs.iter()
        .filter(|d| !dirs.iter().any(|p| p != *d && within(d, p)))
        .cloned()
        .collect()
}

fn unique(items: impl Iterator<Item = String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for item in items {
        if !out.contains(&item) {
            out.push(item);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> InjectConfig {
        InjectConfig {
            image: "servicelog-sidecar:test".into(),
            zk_connect: "zk:2181".into(),
            layout: Layout::default(),
            requests: [
                ("cpu".to_string(), "10m".to_string()),
                ("memory".to_string(), "16Mi".to_string()),
            ]
            .into(),
            limits: [("memory".to_string(), "64Mi".to_string())].into(),
            zk_auth: false,
            volume_size_limit: "1Gi".into(),
            log_format: None,
            log_level: None,
            zk_tls: None,
        }
    }

    fn spec() -> ServiceLogSpec {
        serde_yaml::from_str(
            r#"
sources:
  - {name: app, file: {paths: ["/var/log/app/*.log", "/var/log/app/extra/*.log"], format: json}}
  - {name: legacy, syslog: {port: 5514}}
sinks:
  - {name: console, stdout: {}}
  - {name: alerts, file: {path: /var/log/servicelog/alerts.log}}
defaultTo: [console]
"#,
        )
        .unwrap()
    }

    fn pod(yaml: &str) -> Pod {
        serde_yaml::from_str(yaml).unwrap()
    }

    const PLAIN: &str = r#"
metadata: {name: web, annotations: {servicelog.io/inject: checkout}}
spec:
  containers: [{name: app, image: busybox}]
"#;

    fn golden(name: &str, value: &Pod) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/golden")
            .join(name);
        let got = serde_json::to_string_pretty(value).unwrap() + "\n";
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &got).unwrap();
        }
        let want = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            got == want,
            "{} differs from the injected pod; rerun with UPDATE_GOLDEN=1 after checking:\n{got}",
            path.display()
        );
    }

    #[test]
    fn given_a_service_log_of_container_logs_only_then_the_pod_is_only_marked_and_gets_no_sidecar()
    {
        let agent_only: ServiceLogSpec = serde_yaml::from_str(
            "sources: [{name: out, containerLogs: {}}, {name: err, containerLogs: {streams: [stderr]}}]\n\
             sinks: [{name: console, stdout: {}}]\ndefaultTo: [console]\n",
        )
        .unwrap();
        assert!(!needs_sidecar(&agent_only));
        let before = pod(PLAIN);
        let after = inject(&before, "shop", "checkout", &agent_only, &config()).unwrap();
        let mut expected = before.clone();
        expected
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(INJECTED_ANNOTATION.into(), "checkout".into());
        assert_eq!(after, expected, "only the injected annotation is added");

        let mut mixed = spec();
        mixed.sources.extend(agent_only.sources);
        assert!(
            needs_sidecar(&mixed),
            "a file or syslog source needs the sidecar"
        );
        let after = inject(&before, "shop", "checkout", &mixed, &config()).unwrap();
        let init = after.spec.unwrap().init_containers.unwrap_or_default();
        assert_eq!(init[0].name, SIDECAR_CONTAINER);
    }

    #[test]
    fn the_sidecars_secrets_are_readable_by_its_user_in_a_pod_without_fs_group() {
        let spec: ServiceLogSpec = serde_yaml::from_str(
            r#"
sources: [{name: app, file: {paths: ["/var/log/app/*.log"]}}]
sinks: [{name: loki, http: {url: "http://loki:3100"}, credentialsSecretRef: {name: loki}}]
defaultTo: [loki]
"#,
        )
        .unwrap();
        let config = InjectConfig {
            zk_auth: true,
            ..config()
        };
        let out = inject(&pod(PLAIN), "shop", "checkout", &spec, &config).unwrap();
        let ps = out.spec.as_ref().unwrap();
        assert!(ps.security_context.is_none(), "the fixture has no fsGroup");
        let modes: Vec<(String, i32)> = ps
            .volumes
            .iter()
            .flatten()
            .filter_map(|v| Some((v.name.clone(), v.secret.as_ref()?.default_mode?)))
            .collect();
        assert_eq!(
            modes.len(),
            2,
            "a credentials and an identity Secret: {modes:?}"
        );
        for (name, mode) in modes {
            assert_eq!(
                mode & 0o004,
                0o004,
                "{name}: mode {mode:o} is not readable by others"
            );
            assert_eq!(mode & 0o222, 0, "{name}: mode {mode:o} is writable");
        }
    }

    #[test]
    fn the_sidecar_has_no_readiness_probe_so_its_config_never_gates_the_apps_traffic() {
        let container_mode = PLAIN.replace(
            "servicelog.io/inject: checkout}",
            "servicelog.io/inject: checkout, servicelog.io/sidecar-mode: container}",
        );
        for manifest in [PLAIN, container_mode.as_str()] {
            let out = inject(&pod(manifest), "shop", "checkout", &spec(), &config()).unwrap();
            let ps = out.spec.as_ref().unwrap();
            let sidecar = ps
                .init_containers
                .iter()
                .flatten()
                .chain(ps.containers.iter())
                .find(|c| c.name == SIDECAR_CONTAINER)
                .unwrap();
            assert!(
                sidecar.readiness_probe.is_none(),
                "{:?}",
                sidecar.readiness_probe
            );
            let liveness = sidecar
                .liveness_probe
                .as_ref()
                .and_then(|p| p.http_get.as_ref());
            assert_eq!(liveness.and_then(|h| h.path.as_deref()), Some("/healthz"));
        }
    }

    #[test]
    fn the_sidecar_alone_gets_an_empty_read_only_volume_where_the_token_would_be() {
        let out = inject(&pod(PLAIN), "shop", "checkout", &spec(), &config()).unwrap();
        let ps = out.spec.as_ref().unwrap();
        let sidecar = &ps.init_containers.as_ref().unwrap()[0];
        let over_token = sidecar
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.mount_path == SERVICE_ACCOUNT_DIR)
            .expect("the sidecar mounts something over the token's directory");
        assert_eq!(over_token.read_only, Some(true));
        let volume = ps
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == over_token.name)
            .unwrap();
        assert!(
            volume.empty_dir.is_some() && volume.secret.is_none() && volume.projected.is_none(),
            "not an empty volume: {volume:?}"
        );
        assert!(
            ps.containers[0]
                .volume_mounts
                .iter()
                .flatten()
                .all(|m| m.mount_path != SERVICE_ACCOUNT_DIR),
            "the app's own token must stay"
        );
    }

    #[test]
    fn given_a_pod_when_injected_then_the_sidecar_alone_reads_its_labels_and_knows_its_app_containers()
     {
        let two = r#"
metadata: {name: web, labels: {app: checkout}, annotations: {servicelog.io/inject: checkout}}
spec:
  containers: [{name: app, image: busybox}, {name: proxy, image: envoy}]
"#;
        let out = inject(&pod(two), "shop", "checkout", &spec(), &config()).unwrap();
        let ps = out.spec.as_ref().unwrap();
        let sidecar = &ps.init_containers.as_ref().unwrap()[0];
        let env = |name: &str| {
            sidecar
                .env
                .iter()
                .flatten()
                .find(|e| e.name == name)
                .and_then(|e| e.value.clone())
        };
        assert_eq!(
            env(pod::env::POD_LABELS_FILE).as_deref(),
            Some("/var/run/servicelog/podinfo/labels")
        );
        assert_eq!(env(pod::env::CONTAINERS).as_deref(), Some("app,proxy"));
        let m = sidecar
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.mount_path == pod::PODINFO_DIR)
            .expect("the sidecar mounts the labels");
        assert_eq!(m.read_only, Some(true));
        let volume = ps
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == m.name)
            .unwrap();
        let items = volume
            .downward_api
            .as_ref()
            .and_then(|d| d.items.as_ref())
            .expect("a downward API volume");
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].path, "labels");
        assert_eq!(
            items[0].field_ref.as_ref().map(|f| f.field_path.as_str()),
            Some("metadata.labels")
        );
        for app in &ps.containers {
            assert!(
                app.volume_mounts
                    .iter()
                    .flatten()
                    .all(|m| m.mount_path != pod::PODINFO_DIR),
                "{} does not get the sidecar's podinfo",
                app.name
            );
        }
    }

    #[test]
    fn a_plain_pod_gets_a_native_sidecar_volumes_env_and_the_marker() {
        let out = inject(&pod(PLAIN), "shop", "checkout", &spec(), &config()).unwrap();
        golden("plain-pod.json", &out);
        let ps = out.spec.as_ref().unwrap();
        let sidecar = &ps.init_containers.as_ref().unwrap()[0];
        assert_eq!(sidecar.name, SIDECAR_CONTAINER);
        assert_eq!(sidecar.restart_policy.as_deref(), Some("Always"));
        let sc = sidecar.security_context.as_ref().unwrap();
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        let envs: Vec<&str> = sidecar
            .env
            .iter()
            .flatten()
            .map(|e| e.name.as_str())
            .collect();
        assert_eq!(
            envs,
            [
                "SERVICELOG_ZK_CONNECT",
                "SERVICELOG_CONFIG_ZNODE",
                "POD_NAME",
                "POD_NAMESPACE",
                "SERVICELOG_STATE_DIR",
                "SERVICELOG_POD_LABELS_FILE",
                "SERVICELOG_CONTAINERS"
            ]
        );
        let znode = sidecar
            .env
            .iter()
            .flatten()
            .find(|e| e.name == "SERVICELOG_CONFIG_ZNODE")
            .unwrap();
        assert_eq!(
            znode.value.as_deref(),
            Some("/servicelog/namespaces/shop/checkout/config")
        );
        let app_mounts: Vec<&str> = ps.containers[0]
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| m.mount_path.as_str())
            .collect();
        assert_eq!(
            app_mounts,
            ["/var/log/app"],
            "a nested source directory shares its parent's volume"
        );
        let sidecar_mounts: Vec<&str> = sidecar
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| m.mount_path.as_str())
            .collect();
        assert_eq!(
            sidecar_mounts,
            [
                "/var/log/app",
                "/var/log/servicelog",
                STATE_DIR,
                SERVICE_ACCOUNT_DIR,
                pod::PODINFO_DIR
            ]
        );
        assert_eq!(
            out.metadata
                .annotations
                .unwrap()
                .get(INJECTED_ANNOTATION)
                .map(String::as_str),
            Some("checkout")
        );
    }

    #[test]
    fn container_mode_existing_volumes_mounts_init_containers_and_overrides() {
        let p = pod(r#"
metadata: {name: web, annotations: {servicelog.io/inject: checkout, servicelog.io/sidecar-mode: container}}
spec:
  securityContext: {runAsUser: 1000}
  initContainers: [{name: migrate, image: busybox}]
  volumes: [{name: servicelog-src-0, emptyDir: {}}, {name: logs, emptyDir: {}}]
  containers:
    - name: app
      image: busybox
      env: [{name: A, value: b}]
      volumeMounts: [{name: logs, mountPath: /data/}]
    - {name: other, image: busybox}
"#);
        let mut s = spec();
        s.sidecar = Some(SidecarOverride {
            image: Some("custom:1".into()),
            resources: Some(servicelog_api::v1alpha1::Resources {
                limits: [("memory".to_string(), "128Mi".to_string())].into(),
                requests: BTreeMap::new(),
            }),
            log_level: None,
        });
        let out = inject(&p, "shop", "checkout", &s, &config()).unwrap();
        golden("container-mode-pod.json", &out);
        let ps = out.spec.unwrap();
        assert_eq!(
            ps.init_containers.as_ref().unwrap().len(),
            1,
            "init containers untouched in container mode"
        );
        let sidecar = ps
            .containers
            .iter()
            .find(|c| c.name == SIDECAR_CONTAINER)
            .unwrap();
        assert_eq!(sidecar.restart_policy, None);
        assert_eq!(sidecar.image.as_deref(), Some("custom:1"));
        let app = &ps.containers[0];
        let mounts: Vec<&str> = app
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| m.mount_path.as_str())
            .collect();
        assert_eq!(
            mounts,
            ["/data/", "/var/log/app"],
            "the app's own mount is kept and the source directory's added"
        );
        let names: Vec<&str> = ps
            .volumes
            .iter()
            .flatten()
            .map(|v| v.name.as_str())
            .collect();
        assert!(
            names.contains(&"servicelog-src-0-2"),
            "a clashing volume name is suffixed: {names:?}"
        );
        assert_eq!(app.env.as_ref().unwrap().len(), 1, "app env untouched");
    }

    #[test]
    fn requests_are_read_from_annotations() {
        assert_eq!(request(&pod(PLAIN)), Ok(Request::Inject("checkout".into())));
        assert_eq!(
            request(&pod("metadata: {name: x}\nspec: {containers: []}")),
            Ok(Request::None)
        );
        let injected = PLAIN.replace(
            "servicelog.io/inject: checkout",
            "servicelog.io/inject: checkout, servicelog.io/injected: checkout",
        );
        assert_eq!(
            request(&pod(&injected)),
            Ok(Request::None),
            "an injected pod is left alone"
        );
        let bad = PLAIN.replace(
            "servicelog.io/inject: checkout",
            "servicelog.io/inject: 'Not A Name'",
        );
        assert!(matches!(
            request(&pod(&bad)),
            Err(Skip::MalformedAnnotation(_))
        ));
    }

    #[test]
    fn credentials_secrets_are_mounted_read_only_into_the_sidecar_only() {
        let spec: ServiceLogSpec = serde_yaml::from_str(
            r#"
sources: [{name: app, file: {paths: ["/var/log/app/*.log"]}}]
sinks:
  - {name: loki, http: {url: "http://loki:3100/loki/api/v1/push", encoding: loki}, credentialsSecretRef: {name: loki-creds}}
  - {name: console, stdout: {}}
defaultTo: [loki]
"#,
        )
        .unwrap();
        let out = inject(&pod(PLAIN), "shop", "checkout", &spec, &config()).unwrap();
        golden("credentials-pod.json", &out);
        let ps = out.spec.as_ref().unwrap();
        let volume = ps
            .volumes
            .iter()
            .flatten()
            .find(|v| v.secret.is_some())
            .expect("a secret volume");
        let secret = volume.secret.as_ref().unwrap();
        assert_eq!(secret.secret_name.as_deref(), Some("loki-creds"));
        assert_eq!(
            secret.optional,
            Some(true),
            "a missing Secret must not block the pod"
        );
        let sidecar = &ps.init_containers.as_ref().unwrap()[0];
        let m = sidecar
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.name == volume.name)
            .unwrap();
        assert_eq!(m.mount_path, "/var/run/servicelog/credentials/loki");
        assert_eq!(m.read_only, Some(true));
        let app = &ps.containers[0];
        assert!(
            app.volume_mounts
                .iter()
                .flatten()
                .all(|m| m.name != volume.name),
            "the app container must not see the sink's credentials"
        );
    }

    #[test]
    fn with_zookeeper_acls_the_sidecar_alone_gets_the_namespace_identity() {
        let plain = inject(&pod(PLAIN), "shop", "checkout", &spec(), &config()).unwrap();
        let plain_sidecar = &plain
            .spec
            .as_ref()
            .unwrap()
            .init_containers
            .as_ref()
            .unwrap()[0];
        assert!(
            plain_sidecar
                .env
                .iter()
                .flatten()
                .all(|e| e.name != pod::env::ZK_AUTH_FILE),
            "no identity without ACLs"
        );
        let with_acls = InjectConfig {
            zk_auth: true,
            ..config()
        };
        let out = inject(&pod(PLAIN), "shop", "checkout", &spec(), &with_acls).unwrap();
        let ps = out.spec.as_ref().unwrap();
        let volume = ps
            .volumes
            .iter()
            .flatten()
            .find(|v| {
                v.secret.as_ref().and_then(|s| s.secret_name.as_deref()) == Some(ZK_AUTH_SECRET)
            })
            .expect("the namespace identity's Secret volume");
        assert_eq!(volume.secret.as_ref().unwrap().optional, Some(true));
        let sidecar = &ps.init_containers.as_ref().unwrap()[0];
        let auth_file = sidecar
            .env
            .iter()
            .flatten()
            .find(|e| e.name == pod::env::ZK_AUTH_FILE)
            .and_then(|e| e.value.clone());
        assert_eq!(
            auth_file.as_deref(),
            Some("/var/run/servicelog/zookeeper/auth")
        );
        let m = sidecar
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.name == volume.name)
            .expect("mounted in the sidecar");
        assert_eq!(
            (m.mount_path.as_str(), m.read_only),
            (ZK_AUTH_DIR, Some(true))
        );
        assert!(
            ps.containers
                .iter()
                .flat_map(|c| c.volume_mounts.iter().flatten())
                .all(|m| m.name != volume.name),
            "the app containers must not see the identity"
        );
    }

    #[test]
    fn given_a_source_directory_at_above_or_below_an_app_mount_or_on_a_system_dir_then_the_pod_is_not_injected()
     {
        let with_mount = |at: &str| {
            pod(&format!(
                r#"
metadata: {{name: web, annotations: {{servicelog.io/inject: checkout}}}}
spec:
  volumes: [{{name: data, emptyDir: {{}}}}]
  containers:
    - {{name: side, image: busybox}}
    - {{name: app, image: busybox, volumeMounts: [{{name: data, mountPath: "{at}"}}]}}
"#
            ))
        };
        // spec(): sources under /var/log/app (and /var/log/app/extra, nested in it).
        for (at, reason) in [
            ("/var/log/app", "its own volume data there"),
            ("/var/log/app/", "its own volume data there"),
            (
                "/var/log",
                "volume data mounted at /var/log holds at /var/log/app",
            ),
            ("/", "volume data mounted at / holds at /var/log/app"),
            (
                "/var/log/app/extra",
                "volume data at /var/log/app/extra, below it",
            ),
        ] {
            let skip = inject(&with_mount(at), "shop", "checkout", &spec(), &config())
                .expect_err(&format!("a mount at {at} must stop the injection"));
            let message = skip.to_string();
            assert!(
                matches!(&skip, Skip::Shadows { dir, container, .. } if dir == "/var/log/app" && container == "app"),
                "mount at {at}: {skip:?}"
            );
            assert!(message.contains(reason), "mount at {at}: {message}");
        }
        for at in ["/var/log/application", "/data", "/var/log/ap"] {
            assert!(
                inject(&with_mount(at), "shop", "checkout", &spec(), &config()).is_ok(),
                "a mount at {at} is beside the source directory"
            );
        }
        for (path, system) in [
            ("/etc/app/*.log", "/etc"),
            ("/usr/local/log/*.log", "/usr"),
            ("/var/*.log", "/var"),
        ] {
            let s: ServiceLogSpec = serde_yaml::from_str(&format!(
                "sources: [{{name: app, file: {{paths: [\"{path}\"]}}}}]\nsinks: [{{name: c, stdout: {{}}}}]\ndefaultTo: [c]\n"
            ))
            .unwrap();
            let skip = inject(&pod(PLAIN), "shop", "checkout", &s, &config())
                .expect_err(&format!("{path} must not be mounted over"));
            assert!(
                skip.to_string()
                    .contains(&format!("hide the image's {system}")),
                "{path}: {skip}"
            );
        }
    }

    #[test]
    fn with_zookeeper_tls_the_sidecar_alone_gets_the_ca_and_the_client_certificate_if_asked() {
        let sidecar_of = |tls: Option<SidecarTls>| {
            let config = InjectConfig {
                zk_tls: tls,
                ..config()
            };
            let out = inject(&pod(PLAIN), "shop", "checkout", &spec(), &config).unwrap();
            let ps = out.spec.unwrap();
            let sidecar = ps.init_containers.as_ref().unwrap()[0].clone();
            let env: BTreeMap<String, String> = sidecar
                .env
                .iter()
                .flatten()
                .filter(|e| e.name.starts_with("SERVICELOG_ZK_TLS"))
                .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
                .collect();
            let volume = ps
                .volumes
                .iter()
                .flatten()
                .find(|v| {
                    v.secret.as_ref().and_then(|s| s.secret_name.as_deref()) == Some("zk-tls")
                })
                .cloned();
            (sidecar, env, volume, ps.containers)
        };
        let (_, env, volume, _) = sidecar_of(None);
        assert!(
            env.is_empty() && volume.is_none(),
            "no TLS unless asked: {env:?}"
        );

        let (sidecar, env, volume, apps) = sidecar_of(Some(SidecarTls {
            secret: "zk-tls".into(),
            client_cert: false,
        }));
        let volume = volume.expect("the TLS Secret's volume");
        assert_eq!(volume.secret.as_ref().and_then(|s| s.optional), Some(true));
        assert_eq!(
            env,
            [(
                pod::env::ZK_TLS_CA_FILE.to_owned(),
                format!("{ZK_TLS_DIR}/ca.crt")
            )]
            .into()
        );
        let m = sidecar
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.name == volume.name)
            .expect("mounted in the sidecar");
        assert_eq!(
            (m.mount_path.as_str(), m.read_only),
            (ZK_TLS_DIR, Some(true))
        );
        assert!(
            apps.iter()
                .flat_map(|c| c.volume_mounts.iter().flatten())
                .all(|m| m.name != volume.name),
            "the app containers must not see the TLS Secret"
        );

        let (_, env, _, _) = sidecar_of(Some(SidecarTls {
            secret: "zk-tls".into(),
            client_cert: true,
        }));
        assert_eq!(
            env.keys().map(String::as_str).collect::<Vec<_>>(),
            [
                pod::env::ZK_TLS_CA_FILE,
                pod::env::ZK_TLS_CERT_FILE,
                pod::env::ZK_TLS_KEY_FILE
            ]
        );
        assert_eq!(
            env[pod::env::ZK_TLS_KEY_FILE],
            format!("{ZK_TLS_DIR}/tls.key")
        );
    }

    #[test]
    fn an_injected_pod_carries_the_servicelog_label_cut_to_a_label_value() {
        let labels = |name: &str| {
            inject(&pod(PLAIN), "shop", name, &spec(), &config())
                .unwrap()
                .metadata
                .labels
                .unwrap_or_default()
        };
        assert_eq!(
            labels("checkout").get(INJECTED_LABEL).map(String::as_str),
            Some("checkout")
        );
        let long = format!("{}.{}", "a".repeat(62), "b".repeat(20));
        assert_eq!(labels(&long)[INJECTED_LABEL], "a".repeat(62));
    }

    #[test]
    fn every_injected_empty_dir_has_a_size_limit() {
        let mut s = spec();
        s.sinks
            .push(serde_yaml::from_str("{name: out, file: {path: /var/log/out/x.log}}").unwrap());
        let out = inject(&pod(PLAIN), "shop", "checkout", &s, &config()).unwrap();
        let limits: Vec<(String, Option<String>)> = out
            .spec
            .as_ref()
            .unwrap()
            .volumes
            .iter()
            .flatten()
            .filter_map(|v| {
                let dir = v.empty_dir.as_ref()?;
                Some((v.name.clone(), dir.size_limit.as_ref().map(|q| q.0.clone())))
            })
            .collect();
        assert!(
            limits.len() >= 4,
            "source, sink, state and token volumes: {limits:?}"
        );
        for (name, limit) in &limits {
            assert!(limit.is_some(), "emptyDir {name} has no sizeLimit");
        }
        let state = limits
            .iter()
            .find(|(n, _)| n == STATE_VOLUME)
            .and_then(|(_, l)| l.clone());
        assert_eq!(
            state.as_deref(),
            Some("1088Mi"),
            "1 GiB of disk buffers and 64 MiB more"
        );
    }

    #[test]
    fn a_pod_with_our_container_name_is_not_touched() {
        let p = pod(&PLAIN.replace("name: app", "name: servicelog-sidecar"));
        assert_eq!(
            inject(&p, "shop", "checkout", &spec(), &config()),
            Err(Skip::NameTaken)
        );
    }

    #[test]
    fn glob_dirs() {
        assert_eq!(glob_dir("/var/log/app/*.log"), "/var/log/app");
        assert_eq!(glob_dir("/var/log/*/x.log"), "/var/log");
        assert_eq!(glob_dir("/x.log"), "/");
        assert_eq!(glob_dir("/var/log/app/app.log"), "/var/log/app");
    }
}
