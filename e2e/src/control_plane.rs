//! A real Kubernetes control plane without nodes: etcd and kube-apiserver on free
//! loopback ports, with generated certificates and an admin kubeconfig — what envtest and
//! the Kubernetes integration tests run. Pods are admitted (webhooks included) but never
//! scheduled.
//!
//! For a cluster with a node ([`crate::node`]) the same two processes run inside the node's
//! network namespace instead, so the API server reaches pods (webhooks, `kubectl logs` and
//! `exec` through the kubelet) and pods reach it through the `kubernetes` Service; host
//! clients use a loopback forward, and the admin kubeconfig names that.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};

use crate::{
    EnvError,
    node::{Forward, Netns},
    procs::{EnvDir, Proc, free_port, wait_for},
    run::http_get,
    tools::Tools,
};

const ETCD_TIMEOUT: Duration = Duration::from_secs(30);
const APISERVER_TIMEOUT: Duration = Duration::from_secs(90);

/// Running etcd + kube-apiserver.
#[derive(Debug)]
pub struct ControlPlane {
    // Field order is drop order: the API server goes before its storage, the forward to it
    // last.
    apiserver: Proc,
    etcd: Proc,
    _forward: Option<Forward>,
    server: String,
    kubeconfig: PathBuf,
    ca_pem: String,
    pki_dir: PathBuf,
}

/// The API server's port inside a node's network namespace, where nothing else binds.
pub const NETNS_APISERVER_PORT: u16 = 6443;
const NETNS_ETCD_PORT: u16 = 2379;
const NETNS_ETCD_PEER_PORT: u16 = 2380;

impl ControlPlane {
    /// Starts etcd and kube-apiserver and waits for `/readyz`. A port taken between
    /// choosing and binding is retried with new ports, twice.
    pub fn start(env: &EnvDir, tools: &Tools) -> Result<Self, EnvError> {
        Self::start_placed(env, tools, None)
    }

    /// Starts etcd and kube-apiserver inside `netns` (see the module comment) and waits for
    /// `/readyz` through the host's forward. The API server's certificate also names the
    /// node's IP and the `kubernetes` Service IP; ServiceAccount admission and the endpoint
    /// reconciler are on, as in a real cluster.
    pub fn start_in_netns(env: &EnvDir, tools: &Tools, netns: &Netns) -> Result<Self, EnvError> {
        Self::start_placed(env, tools, Some(netns))
    }

    fn start_placed(env: &EnvDir, tools: &Tools, netns: Option<&Netns>) -> Result<Self, EnvError> {
        let pki = Pki::write(env, netns.map(Netns::node_ip))?;
        let mut last = None;
        for attempt in 0..3 {
            match Self::try_start(env, tools, &pki, attempt, netns) {
                Ok(cp) => return Ok(cp),
                Err(e) if e.is_port_clash() => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(EnvError::Failed {
            what: "control plane".into(),
            detail: "could not start".into(),
        }))
    }

    fn try_start(
        env: &EnvDir,
        tools: &Tools,
        pki: &Pki,
        attempt: usize,
        netns: Option<&Netns>,
    ) -> Result<Self, EnvError> {
        let (etcd_port, peer_port) = match netns {
            Some(_) => (NETNS_ETCD_PORT, NETNS_ETCD_PEER_PORT),
            None => (free_port()?, free_port()?),
        };
        let command = |program: PathBuf| match netns {
            Some(ns) => ns.command(program),
            None => Command::new(program),
        };
        let etcd_data = env.join(format!("etcd-try{attempt}"));
        let mut cmd = command(tools.path("etcd"));
        cmd.arg("--name=testenv")
            .arg(format!("--data-dir={}", etcd_data.display()))
            .arg(format!("--listen-client-urls=http://127.0.0.1:{etcd_port}"))
            .arg(format!(
                "--advertise-client-urls=http://127.0.0.1:{etcd_port}"
            ))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"))
            .arg(format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"
            ))
            .arg(format!(
                "--initial-cluster=testenv=http://127.0.0.1:{peer_port}"
            ))
            // Test data need not survive a power cut; fsync dominates etcd's latency.
            .arg("--unsafe-no-fsync")
            .arg("--quota-backend-bytes=4294967296")
            .arg("--log-level=warn");
        let mut etcd = Proc::spawn("etcd", cmd, env)?;
        // Inside a namespace the host cannot reach etcd; the API server's /readyz covers it.
        if netns.is_none() {
            let what = format!("etcd to report healthy on 127.0.0.1:{etcd_port}");
            wait_for(&what, ETCD_TIMEOUT, Duration::from_millis(50), || {
                if let Some(how) = etcd.exited() {
                    return Err(how);
                }
                Ok(http_get(etcd_port, "/health")
                    .is_ok_and(|body| body.contains("\"health\":\"true\"")))
            })
            .map_err(|e| e.with_log("etcd", &etcd.log_tail(30)))?;
        }

        let port = free_port()?;
        let server = format!("https://127.0.0.1:{port}");
        let mut cmd = command(tools.path("kube-apiserver"));
        cmd.arg(format!("--etcd-servers=http://127.0.0.1:{etcd_port}"));
        let forward = match netns {
            Some(ns) => {
                let ip = ns.node_ip().to_string();
                cmd.arg("--bind-address=0.0.0.0")
                    .arg(format!("--advertise-address={ip}"))
                    .arg(format!("--secure-port={NETNS_APISERVER_PORT}"))
                    // The kubelet's address is the node's InternalIP; its serving
                    // certificate is self-signed, which the API server does not check
                    // unless told to.
                    .arg("--kubelet-preferred-address-types=InternalIP,Hostname")
                    .arg(format!(
                        "--kubelet-client-certificate={}",
                        pki.client_cert.display()
                    ))
                    .arg(format!("--kubelet-client-key={}", pki.client_key.display()))
                    // Webhooks are called on endpoint IPs, so they work before and without
                    // kube-proxy's rules.
                    .arg("--enable-aggregator-routing=true");
                Some(ns.forward(env, "apiserver", port, (ip.as_str(), NETNS_APISERVER_PORT))?)
            }
            None => {
                cmd.arg("--bind-address=127.0.0.1")
                    .arg("--advertise-address=127.0.0.1")
                    .arg(format!("--secure-port={port}"))
                    // No controller-manager creates the `default` ServiceAccount in new
                    // namespaces, so the ServiceAccount admission plugin would refuse every
                    // pod.
                    .arg("--disable-admission-plugins=ServiceAccount")
                    .arg("--endpoint-reconciler-type=none");
                None
            }
        };
        cmd.arg(format!("--cert-dir={}", env.join("pki").display()))
            .arg(format!("--tls-cert-file={}", pki.serving_cert.display()))
            .arg(format!(
                "--tls-private-key-file={}",
                pki.serving_key.display()
            ))
            .arg(format!("--client-ca-file={}", pki.ca_cert.display()))
            .arg(format!(
                "--service-account-key-file={}",
                pki.sa_pub.display()
            ))
            .arg(format!(
                "--service-account-signing-key-file={}",
                pki.sa_key.display()
            ))
            .arg("--service-account-issuer=https://kubernetes.default.svc.cluster.local")
            .arg("--service-cluster-ip-range=10.96.0.0/16")
            .arg("--authorization-mode=RBAC")
            .arg("--allow-privileged=true")
            .arg("--enable-admission-plugins=MutatingAdmissionWebhook,ValidatingAdmissionWebhook")
            .arg("--enable-priority-and-fairness=false")
            .arg("--profiling=false")
            .arg("--v=1");
        let mut apiserver = Proc::spawn("kube-apiserver", cmd, env)?;

        let kubeconfig = env.join("kubeconfig");
        write_kubeconfig(&kubeconfig, &server, pki)?;
        let kubectl = tools.path("kubectl");
        let what = format!("kube-apiserver /readyz on {server}");
        wait_for(&what, APISERVER_TIMEOUT, Duration::from_millis(250), || {
            if let Some(how) = apiserver.exited() {
                return Err(how);
            }
            let out = Command::new(&kubectl)
                .arg(format!("--kubeconfig={}", kubeconfig.display()))
                .args(["get", "--raw", "/readyz", "--request-timeout=2s"])
                .output();
            Ok(out.is_ok_and(|o| o.status.success() && o.stdout.starts_with(b"ok")))
        })
        .map_err(|e| {
            e.with_log("kube-apiserver", &apiserver.log_tail(30))
                .with_log("etcd", &etcd.log_tail(10))
        })?;
        Ok(Self {
            apiserver,
            etcd,
            _forward: forward,
            server,
            kubeconfig,
            ca_pem: pki.ca_pem.clone(),
            pki_dir: env.join("pki"),
        })
    }

    /// `https://127.0.0.1:PORT`.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// An admin (system:masters) kubeconfig.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The CA that signed the API server's certificate.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The directory of `ca.crt`, `sa.key` (the ServiceAccount signing key, which the
    /// controller-manager needs too) and the admin client's `admin.crt`/`admin.key`.
    pub fn pki_dir(&self) -> &Path {
        &self.pki_dir
    }

    /// An admin kubeconfig for `server` (e.g. the API server as the node's processes
    /// reach it inside its namespace).
    pub fn write_kubeconfig_for(&self, path: &Path, server: &str) -> Result<(), EnvError> {
        let read = |name: &str| {
            let file = self.pki_dir.join(name);
            fs::read_to_string(&file)
                .map_err(|e| EnvError::io(format!("reading {}", file.display()), e))
        };
        write_kubeconfig_pems(
            path,
            server,
            &self.ca_pem,
            &read("admin.crt")?,
            &read("admin.key")?,
        )
    }

    pub fn apiserver_log_tail(&self, lines: usize) -> String {
        self.apiserver.log_tail(lines)
    }

    pub fn etcd_log_tail(&self, lines: usize) -> String {
        self.etcd.log_tail(lines)
    }
}

/// Certificates and keys of the control plane, written under `<env>/pki`.
struct Pki {
    ca_cert: PathBuf,
    ca_pem: String,
    serving_cert: PathBuf,
    serving_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    client_cert_pem: String,
    client_key_pem: String,
    sa_key: PathBuf,
    sa_pub: PathBuf,
}

impl Pki {
    /// `node_ip`: the API server's address inside a node's namespace, named in its
    /// certificate.
    fn write(env: &EnvDir, node_ip: Option<std::net::Ipv4Addr>) -> Result<Self, EnvError> {
        let dir = env.join("pki");
        fs::create_dir_all(&dir).map_err(|e| EnvError::io("creating the pki dir", e))?;
        let cert_err = |e: rcgen::Error| EnvError::Cert(e.to_string());

        let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(cert_err)?;
        ca_params.distinguished_name = name("servicelog-testenv-ca", None);
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().map_err(cert_err)?)
            .map_err(cert_err)?;

        let mut serving = CertificateParams::new(vec![
            "localhost".to_string(),
            "kubernetes".to_string(),
            "kubernetes.default".to_string(),
            "kubernetes.default.svc".to_string(),
            "kubernetes.default.svc.cluster.local".to_string(),
        ])
        .map_err(cert_err)?;
        serving
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        serving
            .subject_alt_names
            .push(SanType::IpAddress([10, 96, 0, 1].into()));
        if let Some(ip) = node_ip {
            serving
                .subject_alt_names
                .push(SanType::IpAddress(ip.into()));
        }
        serving.distinguished_name = name("kube-apiserver", None);
        serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let serving_key = KeyPair::generate().map_err(cert_err)?;
        let serving_cert = serving.signed_by(&serving_key, &ca).map_err(cert_err)?;

        let mut client = CertificateParams::new(Vec::<String>::new()).map_err(cert_err)?;
        client.distinguished_name = name("servicelog-testenv-admin", Some("system:masters"));
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client_key = KeyPair::generate().map_err(cert_err)?;
        let client_cert = client.signed_by(&client_key, &ca).map_err(cert_err)?;

        let sa_key = KeyPair::generate().map_err(cert_err)?;

        let pki = Self {
            ca_cert: dir.join("ca.crt"),
            ca_pem: ca.pem(),
            serving_cert: dir.join("apiserver.crt"),
            serving_key: dir.join("apiserver.key"),
            client_cert: dir.join("admin.crt"),
            client_key: dir.join("admin.key"),
            client_cert_pem: client_cert.pem(),
            client_key_pem: client_key.serialize_pem(),
            sa_key: dir.join("sa.key"),
            sa_pub: dir.join("sa.pub"),
        };
        for (path, text) in [
            (&pki.ca_cert, pki.ca_pem.clone()),
            (&pki.serving_cert, serving_cert.pem()),
            (&pki.serving_key, serving_key.serialize_pem()),
            (&pki.client_cert, pki.client_cert_pem.clone()),
            (&pki.client_key, pki.client_key_pem.clone()),
            (&pki.sa_key, sa_key.serialize_pem()),
            (&pki.sa_pub, sa_key.public_key_pem()),
        ] {
            fs::write(path, text)
                .map_err(|e| EnvError::io(format!("writing {}", path.display()), e))?;
        }
        Ok(pki)
    }
}

fn name(common: &str, organization: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common);
    if let Some(o) = organization {
        dn.push(DnType::OrganizationName, o);
    }
    dn
}

fn write_kubeconfig(path: &Path, server: &str, pki: &Pki) -> Result<(), EnvError> {
    write_kubeconfig_pems(
        path,
        server,
        &pki.ca_pem,
        &pki.client_cert_pem,
        &pki.client_key_pem,
    )
}

fn write_kubeconfig_pems(
    path: &Path,
    server: &str,
    ca_pem: &str,
    client_cert_pem: &str,
    client_key_pem: &str,
) -> Result<(), EnvError> {
    let b64 = |s: &str| base64(s.as_bytes());
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "testenv", "cluster": {
            "server": server,
            "certificate-authority-data": b64(ca_pem),
        }}],
        "users": [{"name": "admin", "user": {
            "client-certificate-data": b64(client_cert_pem),
            "client-key-data": b64(client_key_pem),
        }}],
        "contexts": [{"name": "testenv", "context": {"cluster": "testenv", "user": "admin"}}],
        "current-context": "testenv",
    });
    let text = serde_yaml::to_string(&config).map_err(|e| EnvError::Failed {
        what: "kubeconfig".into(),
        detail: e.to_string(),
    })?;
    fs::write(path, text).map_err(|e| EnvError::io(format!("writing {}", path.display()), e))
}

/// Standard base64 with padding (kubeconfig's `*-data` fields).
fn base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
