//! TLS for the admission webhooks, without cert-manager: the operator keeps its own CA
//! and serving certificate in a Secret (shared by replicas), serves whatever the Secret
//! holds, renews the serving certificate once two thirds of its life have passed, and
//! keeps the webhook configurations' `caBundle` current — all without a restart. With
//! `--webhook-cert-dir` it serves a mounted certificate (cert-manager) instead, reloading
//! it when the files change.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{Arc, RwLock},
    time::Duration,
};

use k8s_openapi::{ByteString, api::core::v1::Secret, jiff::Timestamp};
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::{
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};

/// Default name of the Secret holding the CA and the serving certificate.
pub const SECRET: &str = "servicelog-webhook-tls";

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("generating certificates: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("certificate material in {0} is unreadable: {1}")]
    Parse(String, String),
    #[error("Secret {namespace}/{secret}: {source}")]
    Kube {
        namespace: String,
        secret: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// PEM material of one generation of certificates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Material {
    pub ca_pem: String,
    pub ca_key_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    /// Seconds since the epoch when the serving certificate was issued and expires.
    pub not_before: i64,
    pub not_after: i64,
}

impl Material {
    /// Whether the serving certificate has passed two thirds of its life.
    pub fn needs_renewal(&self, now: i64) -> bool {
        let life = (self.not_after - self.not_before).max(1);
        now >= self.not_before + life * 2 / 3
    }

    fn to_secret_data(&self) -> BTreeMap<String, ByteString> {
        let mut data = BTreeMap::new();
        data.insert(
            "ca.crt".into(),
            ByteString(self.ca_pem.clone().into_bytes()),
        );
        data.insert(
            "ca.key".into(),
            ByteString(self.ca_key_pem.clone().into_bytes()),
        );
        data.insert(
            "tls.crt".into(),
            ByteString(self.cert_pem.clone().into_bytes()),
        );
        data.insert(
            "tls.key".into(),
            ByteString(self.key_pem.clone().into_bytes()),
        );
        data.insert(
            "not-before".into(),
            ByteString(self.not_before.to_string().into_bytes()),
        );
        data.insert(
            "not-after".into(),
            ByteString(self.not_after.to_string().into_bytes()),
        );
        data
    }

    fn from_secret(secret: &Secret) -> Option<Self> {
        let data = secret.data.as_ref()?;
        let text = |k: &str| {
            data.get(k)
                .and_then(|b| String::from_utf8(b.0.clone()).ok())
        };
        Some(Self {
            ca_pem: text("ca.crt")?,
            ca_key_pem: text("ca.key")?,
            cert_pem: text("tls.crt")?,
            key_pem: text("tls.key")?,
            not_before: text("not-before")?.parse().ok()?,
            not_after: text("not-after")?.parse().ok()?,
        })
    }
}

/// Issues a serving certificate for `hosts` (DNS names or IP addresses) valid for
/// `validity`, signed by the CA in `ca` or by a new CA when `ca` is `None`.
pub fn issue(
    hosts: &[String],
    validity: Duration,
    ca: Option<(&str, &str)>,
) -> Result<Material, CertError> {
    let now = Timestamp::now().as_second();
    let validity_secs = i64::try_from(validity.as_secs())
        .unwrap_or(i64::MAX / 4)
        .max(1);
    let (ca_pem, ca_key_pem, issuer) = match ca {
        Some((ca_pem, ca_key_pem)) => {
            let key = KeyPair::from_pem(ca_key_pem)?;
            let issuer = Issuer::from_ca_cert_pem(ca_pem, key)?;
            (ca_pem.to_owned(), ca_key_pem.to_owned(), issuer)
        }
        None => {
            let mut params = CertificateParams::new(Vec::<String>::new())?;
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CommonName, "servicelog-webhook-ca");
            params.distinguished_name = dn;
            params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            // The CA outlives several serving certificates.
            params.not_before = rcgen::date_time_ymd(2000, 1, 1);
            params.not_after = time_from_unix(now + validity_secs.saturating_mul(10));
            let key = KeyPair::generate()?;
            let key_pem = key.serialize_pem();
            let ca = CertifiedIssuer::self_signed(params, key)?;
            let pem = ca.pem();
            let issuer = Issuer::from_ca_cert_pem(&pem, KeyPair::from_pem(&key_pem)?)?;
            (pem, key_pem, issuer)
        }
    };
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    for host in hosts {
        match host.parse::<std::net::IpAddr>() {
            Ok(ip) => params.subject_alt_names.push(SanType::IpAddress(ip)),
            Err(_) => params
                .subject_alt_names
                .push(SanType::DnsName(host.clone().try_into()?)),
        }
    }
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        hosts
            .first()
            .cloned()
            .unwrap_or_else(|| "servicelog-webhook".into()),
    );
    params.distinguished_name = dn;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let not_before = now - 60;
    let not_after = now + validity_secs;
    params.not_before = time_from_unix(not_before);
    params.not_after = time_from_unix(not_after);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok(Material {
        ca_pem,
        ca_key_pem,
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        not_before,
        not_after,
    })
}

fn time_from_unix(seconds: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(seconds).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// The certificate the TLS server presents, swappable while serving.
#[derive(Debug, Default)]
pub struct Resolver {
    current: RwLock<Option<Arc<CertifiedKey>>>,
}

impl Resolver {
    /// Loads PEM material; the next handshake uses it.
    pub fn load(&self, cert_pem: &str, key_pem: &str, origin: &str) -> Result<(), CertError> {
        let parse = |e: String| CertError::Parse(origin.to_owned(), e);
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| parse(e.to_string()))?;
        if certs.is_empty() {
            return Err(parse("no certificate".into()));
        }
        let key =
            PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| parse(e.to_string()))?;
        let signer = rustls::crypto::ring::sign::any_supported_type(&key)
            .map_err(|e| parse(e.to_string()))?;
        let certified = Arc::new(CertifiedKey::new(certs, signer));
        if let Ok(mut slot) = self.current.write() {
            *slot = Some(certified);
        }
        Ok(())
    }

    pub fn is_loaded(&self) -> bool {
        self.current.read().is_ok_and(|c| c.is_some())
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().and_then(|c| c.clone())
    }
}

/// Where the serving certificate comes from.
#[derive(Clone, Debug)]
pub enum Source {
    /// Self-managed in a Secret of `namespace`.
    Managed {
        namespace: String,
        secret: String,
        hosts: Vec<String>,
        validity: Duration,
    },
    /// Mounted files (`tls.crt`, `tls.key`), e.g. from cert-manager.
    Dir(PathBuf),
}

/// Ensures a valid certificate is loaded; returns the CA bundle to publish (self-managed
/// only). Called at start and periodically: renewal is this same call finding the
/// certificate old.
pub async fn refresh(
    client: &Client,
    source: &Source,
    resolver: &Resolver,
) -> Result<Option<String>, CertError> {
    match source {
        Source::Dir(dir) => {
            let read = |name: &str| {
                let path = dir.join(name);
                std::fs::read_to_string(&path).map_err(|e| CertError::Io {
                    path: path.display().to_string(),
                    source: e,
                })
            };
            resolver.load(
                &read("tls.crt")?,
                &read("tls.key")?,
                &dir.display().to_string(),
            )?;
            Ok(None)
        }
        Source::Managed {
            namespace,
            secret,
            hosts,
            validity,
        } => {
            let material = ensure_secret(client, namespace, secret, hosts, *validity).await?;
            resolver.load(
                &material.cert_pem,
                &material.key_pem,
                &format!("Secret {namespace}/{secret}"),
            )?;
            Ok(Some(material.ca_pem))
        }
    }
}

/// Reads the Secret, renewing (or creating) its certificates when needed. Replicas race
/// with optimistic concurrency: the loser re-reads the winner's material.
async fn ensure_secret(
    client: &Client,
    namespace: &str,
    name: &str,
    hosts: &[String],
    validity: Duration,
) -> Result<Material, CertError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let kube_err = |e: kube::Error| CertError::Kube {
        namespace: namespace.to_owned(),
        secret: name.to_owned(),
        source: Box::new(e),
    };
    for _ in 0..3 {
        let existing = api.get_opt(name).await.map_err(kube_err)?;
        let current = existing.as_ref().and_then(Material::from_secret);
        let now = Timestamp::now().as_second();
        if let Some(m) = &current
            && !m.needs_renewal(now)
        {
            return Ok(m.clone());
        }
        let ca = current
            .as_ref()
            .map(|m| (m.ca_pem.as_str(), m.ca_key_pem.as_str()));
        let material = issue(hosts, validity, ca).or_else(|_| issue(hosts, validity, None))?;
        let result = match existing {
            Some(mut secret) => {
                secret.data = Some(material.to_secret_data());
                api.replace(name, &PostParams::default(), &secret)
                    .await
                    .map(|_| ())
            }
            None => {
                let secret = Secret {
                    metadata: ObjectMeta {
                        name: Some(name.into()),
                        labels: Some(
                            [(
                                "app.kubernetes.io/name".to_string(),
                                "servicelog".to_string(),
                            )]
                            .into(),
                        ),
                        ..Default::default()
                    },
                    type_: Some("kubernetes.io/tls".into()),
                    data: Some(material.to_secret_data()),
                    ..Default::default()
                };
                api.create(&PostParams::default(), &secret)
                    .await
                    .map(|_| ())
            }
        };
        match result {
            Ok(()) => {
                tracing::info!(
                    namespace,
                    secret = name,
                    not_after = material.not_after,
                    "issued the webhook serving certificate"
                );
                return Ok(material);
            }
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(e) => return Err(kube_err(e)),
        }
    }
    let secret = api.get(name).await.map_err(kube_err)?;
    Material::from_secret(&secret)
        .ok_or_else(|| CertError::Parse(format!("Secret {namespace}/{name}"), "incomplete".into()))
}
