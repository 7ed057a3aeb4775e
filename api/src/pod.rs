//! The pod contract between the operator's webhook and the sidecar: the annotations, the
//! injected container's name, the env it reads, the directories and the metrics port.
//! Both binaries take these names from here, so a rename is one edit the compiler checks
//! everywhere. The znode paths are [`crate::wire::Layout`]'s.

/// Annotation a pod uses to ask for the sidecar: the ServiceLog's name.
pub const INJECT_ANNOTATION: &str = "servicelog.io/inject";
/// Annotation set on injection; a pod carrying it is left alone.
pub const INJECTED_ANNOTATION: &str = "servicelog.io/injected";
/// Label set on injection (the ServiceLog's name, cut to a label value's 63 characters):
/// what NetworkPolicies and monitors select injected pods by.
pub const INJECTED_LABEL: &str = "servicelog.io/injected";
/// `container` asks for a plain container instead of a native sidecar.
pub const SIDECAR_MODE_ANNOTATION: &str = "servicelog.io/sidecar-mode";
/// Name of the injected container.
pub const SIDECAR_CONTAINER: &str = "servicelog-sidecar";

/// Where the sidecar keeps checkpoints, buffers and the last-known-good config.
pub const STATE_DIR: &str = "/var/lib/servicelog";
/// Where a sink's `credentialsSecretRef` is mounted, one directory per sink
/// (`<dir>/<sink>/username`, …).
pub const CREDENTIALS_DIR: &str = "/var/run/servicelog/credentials";
/// The Secret the operator writes in each namespace with that namespace's ZooKeeper
/// identity ([`crate::zkauth`]), its key, and where the webhook mounts it in the sidecar.
pub const ZK_AUTH_SECRET: &str = "servicelog-zk-auth";
pub const ZK_AUTH_KEY: &str = "auth";
pub const ZK_AUTH_DIR: &str = "/var/run/servicelog/zookeeper";
/// Where the webhook mounts the ZooKeeper TLS Secret in the sidecar (`ca.crt`, and
/// `tls.crt`/`tls.key` for mutual TLS: the keys of a cert-manager or `kubernetes.io/tls`
/// Secret).
pub const ZK_TLS_DIR: &str = "/var/run/servicelog/zookeeper-tls";
pub const ZK_TLS_CA_KEY: &str = "ca.crt";
pub const ZK_TLS_CERT_KEY: &str = "tls.crt";
pub const ZK_TLS_KEY_KEY: &str = "tls.key";
/// Where the webhook mounts the pod's downward-API files in the sidecar: `labels`, the
/// pod's labels (`key="value"` lines), which the kubelet rewrites when they change.
pub const PODINFO_DIR: &str = "/var/run/servicelog/podinfo";
pub const PODINFO_LABELS: &str = "labels";
/// The sidecar's `/metrics`, `/healthz` and `/readyz` port.
pub const METRICS_PORT: u16 = 9779;
/// The sidecar's default metrics address.
pub const METRICS_ADDR: &str = "0.0.0.0:9779";

/// The environment the webhook gives the sidecar, and the sidecar reads.
pub mod env {
    /// ZooKeeper connect string (`zk-0:2181,zk-1:2181`).
    pub const ZK_CONNECT: &str = "SERVICELOG_ZK_CONNECT";
    /// The pod's ServiceLog's config znode.
    pub const CONFIG_ZNODE: &str = "SERVICELOG_CONFIG_ZNODE";
    /// The pod's name and namespace (downward API).
    pub const POD_NAME: &str = "POD_NAME";
    pub const POD_NAMESPACE: &str = "POD_NAMESPACE";
    /// Overrides [`super::STATE_DIR`].
    pub const STATE_DIR: &str = "SERVICELOG_STATE_DIR";
    /// Overrides [`super::CREDENTIALS_DIR`].
    pub const CREDENTIALS_DIR: &str = "SERVICELOG_CREDENTIALS_DIR";
    /// A file holding one `digest:user:password` line: the ZooKeeper identity to
    /// authenticate as (the operator's own, or a sidecar's namespace identity).
    pub const ZK_AUTH_FILE: &str = "SERVICELOG_ZK_AUTH_FILE";
    /// The operator's previous identity while it is rotated (`--zk-auth-previous-file`).
    pub const ZK_AUTH_PREVIOUS_FILE: &str = "SERVICELOG_ZK_AUTH_PREVIOUS_FILE";
    /// TLS to ZooKeeper ([`crate::zktls`]): the PEM CA that verifies the servers (TLS is
    /// on when it is set), and for mutual TLS the client's PEM certificate and key.
    pub const ZK_TLS_CA_FILE: &str = "SERVICELOG_ZK_TLS_CA_FILE";
    pub const ZK_TLS_CERT_FILE: &str = "SERVICELOG_ZK_TLS_CERT_FILE";
    pub const ZK_TLS_KEY_FILE: &str = "SERVICELOG_ZK_TLS_KEY_FILE";
    /// Overrides [`super::METRICS_ADDR`].
    pub const METRICS_ADDR: &str = "SERVICELOG_METRICS_ADDR";
    /// The pod's labels file ([`super::PODINFO_DIR`]/[`super::PODINFO_LABELS`]), for the
    /// `labels` of `_servicelog`.
    pub const POD_LABELS_FILE: &str = "SERVICELOG_POD_LABELS_FILE";
    /// The app containers the sidecar was injected for, comma-separated; with one, it is
    /// the `container` of `_servicelog`.
    pub const CONTAINERS: &str = "SERVICELOG_CONTAINERS";
}

/// The directory a sink's credentials are mounted at.
pub fn credentials_dir(base: &str, sink: &str) -> String {
    format!("{}/{sink}", base.trim_end_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_metrics_address_uses_the_metrics_port() {
        assert!(METRICS_ADDR.ends_with(&format!(":{METRICS_PORT}")));
        assert_eq!(
            credentials_dir(CREDENTIALS_DIR, "loki"),
            "/var/run/servicelog/credentials/loki"
        );
        assert_eq!(credentials_dir("/x/", "loki"), "/x/loki");
    }
}
