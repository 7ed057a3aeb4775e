//! TLS to ZooKeeper, the same for both binaries: which servers of a connect string are
//! reached over TLS, the PEM files that verify the server (and, for mutual TLS, identify
//! the client), and what went wrong when a handshake fails.
//!
//! TLS is on when a CA file is given: every server of the connect string is then reached
//! over TLS (ZooKeeper's `secureClientPort`), except one written `tcp://host:port`. A server
//! written `tcp+tls://host:port` asks for TLS and needs the CA file: the server is always
//! verified (certificate chain and host name), never trusted blindly.
//!
//! zookeeper-client reports a failed handshake only as a connect that timed out, so after a
//! failed connect [`ZkTls::diagnose`] makes one handshake itself to say what failed — an
//! unknown issuer (the wrong CA file), a name the certificate does not carry, a plain-text
//! port, a client certificate the server refuses.

use std::{
    io::{Read, Write},
    net::{TcpStream, ToSocketAddrs},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};
use zookeeper_client::{Client, Connector, TlsOptions};

use crate::pod::env;

/// ZooKeeper's default client port, for a server written without one.
const DEFAULT_PORT: u16 = 2181;

/// A TLS setting that cannot work, naming the setting or the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    #[error(
        "the ZooKeeper connect string asks for TLS (tcp+tls://) but no CA file is given to verify the server with ({})",
        env::ZK_TLS_CA_FILE
    )]
    NoCa,
    #[error(
        "a ZooKeeper TLS client certificate ({}) and its key ({}) go together: only the {given} is given",
        env::ZK_TLS_CERT_FILE,
        env::ZK_TLS_KEY_FILE
    )]
    HalfIdentity { given: &'static str },
    #[error(
        "a ZooKeeper TLS client certificate needs a CA file to verify the server with ({})",
        env::ZK_TLS_CA_FILE
    )]
    IdentityWithoutCa,
    #[error("reading the ZooKeeper TLS {what} {}: {reason}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("the ZooKeeper TLS {what} {}: {reason}", path.display())]
    Invalid {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
}

/// The TLS files of a ZooKeeper client. They are read by [`ZkTls::options`], at every
/// connect, so a rotated certificate (a Secret the kubelet updates) is used by the next
/// session without a restart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZkTls {
    ca: PathBuf,
    identity: Option<(PathBuf, PathBuf)>,
}

impl ZkTls {
    /// The TLS settings for `connect`: `None` for plain TCP (no CA file, no `tcp+tls://`).
    ///
    /// Notable errors: [`TlsError::NoCa`] for `tcp+tls://` without a CA file; a certificate
    /// without its key or the other way round.
    pub fn from_settings(
        connect: &str,
        ca: Option<PathBuf>,
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
    ) -> Result<Option<Self>, TlsError> {
        let identity = match (cert, key) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (Some(_), None) => {
                return Err(TlsError::HalfIdentity {
                    given: "certificate",
                });
            }
            (None, Some(_)) => return Err(TlsError::HalfIdentity { given: "key" }),
            (None, None) => None,
        };
        match ca {
            Some(ca) => Ok(Some(Self { ca, identity })),
            None if identity.is_some() => Err(TlsError::IdentityWithoutCa),
            None if asks_for_tls(connect) => Err(TlsError::NoCa),
            None => Ok(None),
        }
    }

    pub fn ca_file(&self) -> &Path {
        &self.ca
    }

    /// zookeeper-client's options, from the files as they are now.
    ///
    /// Notable errors: [`TlsError::Read`] for a file that cannot be read,
    /// [`TlsError::Invalid`] for one without a PEM certificate (or key), each naming the
    /// file.
    pub fn options(&self) -> Result<TlsOptions, TlsError> {
        install_crypto_provider();
        let ca = read("CA file", &self.ca)?;
        certificates("CA file", &self.ca, &ca)?;
        let mut options = TlsOptions::new()
            .with_pem_ca(&ca)
            .map_err(|e| TlsError::Invalid {
                what: "CA file",
                path: self.ca.clone(),
                reason: e.to_string(),
            })?;
        if let Some((cert_path, key_path)) = &self.identity {
            let cert = read("client certificate", cert_path)?;
            certificates("client certificate", cert_path, &cert)?;
            let key = read("client key", key_path)?;
            private_key(key_path, &key)?;
            options = options
                .with_pem_identity(&cert, &key)
                .map_err(|e| TlsError::Invalid {
                    what: "client key",
                    path: key_path.clone(),
                    reason: e.to_string(),
                })?;
        }
        Ok(options)
    }

    /// Why a TLS session with the first TLS server of `connect` cannot be set up, or `None`
    /// when it can (or there is none to try). Blocking, for at most about `timeout` twice:
    /// run it off the async workers.
    pub fn diagnose(&self, connect: &str, timeout: Duration) -> Option<String> {
        let (host, port) = servers(connect, true)
            .into_iter()
            .find_map(|(host, port, tls)| tls.then_some((host, port)))?;
        let about = format!(
            "TLS to ZooKeeper at {host}:{port}, the server verified with the CA file {}",
            self.ca.display()
        );
        match self.handshake(&host, port, timeout) {
            Ok(()) => None,
            Err(why) => Some(format!("{about}: {why}")),
        }
    }

    fn handshake(&self, host: &str, port: u16, timeout: Duration) -> Result<(), String> {
        let config = self.client_config()?;
        let name = ServerName::try_from(host.to_owned())
            .map_err(|e| format!("{host:?} is not a host name: {e}"))?;
        let mut conn = rustls::ClientConnection::new(Arc::new(config), name)
            .map_err(|e| format!("cannot start a handshake: {e}"))?;
        let addr = (host, port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {host}: {e}"))?
            .next()
            .ok_or_else(|| format!("{host} resolves to no address"))?;
        let mut tcp = TcpStream::connect_timeout(&addr, timeout)
            .map_err(|e| format!("cannot connect: {e}"))?;
        tcp.set_read_timeout(Some(timeout))
            .and_then(|()| tcp.set_write_timeout(Some(timeout)))
            .map_err(|e| format!("cannot connect: {e}"))?;
        while conn.is_handshaking() {
            conn.complete_io(&mut tcp)
                .map_err(|e| handshake_error(&e))?;
        }
        // With TLS 1.3 a server refuses a client certificate after the client's side of
        // the handshake is done: an alert then arrives before ZooKeeper's first answer
        // (it answers only once the client speaks, so silence is success).
        tcp.set_read_timeout(Some(Duration::from_millis(300)))
            .map_err(|e| format!("cannot connect: {e}"))?;
        let mut stream = rustls::Stream::new(&mut conn, &mut tcp);
        stream.flush().map_err(|e| handshake_error(&e))?;
        match stream.read(&mut [0u8; 1]) {
            Err(e)
                if !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Err(handshake_error(&e))
            }
            Ok(0) => Err("the server closed the connection after the handshake \
                          (a client certificate it does not accept, or none where it needs one)"
                .into()),
            _ => Ok(()),
        }
    }

    fn client_config(&self) -> Result<rustls::ClientConfig, String> {
        let ca = read("CA file", &self.ca).map_err(|e| e.to_string())?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in certificates("CA file", &self.ca, &ca).map_err(|e| e.to_string())? {
            roots
                .add(cert)
                .map_err(|e| format!("CA file {}: {e}", self.ca.display()))?;
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
        match &self.identity {
            None => Ok(builder.with_no_client_auth()),
            Some((cert_path, key_path)) => {
                let cert = read("client certificate", cert_path).map_err(|e| e.to_string())?;
                let certs = certificates("client certificate", cert_path, &cert)
                    .map_err(|e| e.to_string())?;
                let key = read("client key", key_path).map_err(|e| e.to_string())?;
                let key = private_key(key_path, &key).map_err(|e| e.to_string())?;
                builder
                    .with_client_auth_cert(certs, key)
                    .map_err(|e| format!("client key {}: {e}", key_path.display()))
            }
        }
    }
}

/// Connects with `tls` (a server without a scheme then uses TLS) or without.
pub async fn connect(
    connector: Connector,
    connect: &str,
    tls: Option<TlsOptions>,
) -> Result<Client, zookeeper_client::Error> {
    match tls {
        Some(options) => connector.with_tls(options).secure_connect(connect).await,
        None => connector.connect(connect).await,
    }
}

/// Makes ring the process's TLS provider. zookeeper-client's TLS builds its rustls
/// configuration with the process default, which rustls cannot pick by itself when both
/// ring and aws-lc-rs are compiled in (zookeeper-client's TLS brings the latter); kube's
/// client does the same. A second call (or a provider installed earlier) changes nothing.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Whether a server of `connect` is written `tcp+tls://`.
fn asks_for_tls(connect: &str) -> bool {
    servers(connect, false).iter().any(|(_, _, tls)| *tls)
}

/// The servers of a connect string (`host:port,tcp+tls://host:port/chroot`) and whether
/// each is reached over TLS; one without a scheme is as `tls_default` says. Malformed
/// entries are skipped: zookeeper-client refuses the string with its own error.
fn servers(connect: &str, tls_default: bool) -> Vec<(String, u16, bool)> {
    connect
        .split(',')
        .filter_map(|server| {
            let (rest, tls) = if let Some(rest) = server.strip_prefix("tcp+tls://") {
                (rest, true)
            } else if let Some(rest) = server.strip_prefix("tcp://") {
                (rest, false)
            } else {
                (server, tls_default)
            };
            let address = rest.split('/').next().unwrap_or_default().trim();
            let (host, port) = match address.strip_prefix('[') {
                Some(bracketed) => {
                    let (host, after) = bracketed.split_once(']')?;
                    (host, after.strip_prefix(':'))
                }
                None => match address.rsplit_once(':') {
                    Some((host, port)) => (host, Some(port)),
                    None => (address, None),
                },
            };
            let port = match port {
                Some(p) => p.parse().ok()?,
                None => DEFAULT_PORT,
            };
            (!host.is_empty()).then(|| (host.to_owned(), port, tls))
        })
        .collect()
}

fn read(what: &'static str, path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|e| TlsError::Read {
        what,
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

fn certificates(
    what: &'static str,
    path: &Path,
    pem: &str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let invalid = |reason: String| TlsError::Invalid {
        what,
        path: path.to_owned(),
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(e.to_string()))?;
    if certs.is_empty() {
        return Err(invalid("no PEM `CERTIFICATE` block in it".into()));
    }
    Ok(certs)
}

fn private_key(path: &Path, pem: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| TlsError::Invalid {
        what: "client key",
        path: path.to_owned(),
        reason: format!("no PEM private key in it ({e})"),
    })
}

/// rustls's error inside an I/O error, in words that point at the likely cause.
fn handshake_error(e: &std::io::Error) -> String {
    let inner = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
    match inner {
        Some(rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)) => {
            "the TLS handshake failed: the server's certificate is not signed by that CA \
             (invalid peer certificate: UnknownIssuer)"
                .into()
        }
        Some(rustls::Error::InvalidCertificate(
            c @ rustls::CertificateError::NotValidForNameContext { .. },
        )) => format!(
            "the TLS handshake failed: the server's certificate is not valid for the host \
             name of the connect string ({c:?})"
        ),
        Some(e @ rustls::Error::InvalidMessage(_)) => {
            format!("the TLS handshake failed (is it a plain-text port?): {e}")
        }
        Some(other) => format!("the TLS handshake failed: {other}"),
        None if e.kind() == std::io::ErrorKind::InvalidData => {
            format!("the TLS handshake failed (is it a plain-text port?): {e}")
        }
        None => format!("the TLS handshake failed: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls(
        connect: &str,
        ca: Option<&str>,
        cert: Option<&str>,
        key: Option<&str>,
    ) -> Result<Option<ZkTls>, TlsError> {
        ZkTls::from_settings(
            connect,
            ca.map(PathBuf::from),
            cert.map(PathBuf::from),
            key.map(PathBuf::from),
        )
    }

    #[test]
    fn given_no_ca_and_no_tls_scheme_then_plain_tcp() {
        assert_eq!(
            tls("zk-0:2181,zk-1:2181/chroot", None, None, None),
            Ok(None)
        );
    }

    #[test]
    fn given_a_ca_file_then_tls_with_it_and_an_optional_client_identity() {
        let only_ca = tls("zk:2281", Some("/ca.pem"), None, None)
            .expect("valid")
            .expect("tls");
        assert_eq!(only_ca.ca_file(), Path::new("/ca.pem"));
        assert_eq!(only_ca.identity, None);
        let mutual = tls("zk:2281", Some("/ca.pem"), Some("/c.pem"), Some("/k.pem"))
            .expect("valid")
            .expect("tls");
        assert_eq!(
            mutual.identity,
            Some((PathBuf::from("/c.pem"), PathBuf::from("/k.pem")))
        );
    }

    #[test]
    fn given_settings_that_cannot_work_then_the_error_names_the_setting() {
        let no_ca = tls("tcp+tls://zk:2281", None, None, None).expect_err("no CA");
        assert_eq!(no_ca, TlsError::NoCa);
        assert!(no_ca.to_string().contains(env::ZK_TLS_CA_FILE), "{no_ca}");
        assert_eq!(
            tls("zk:2281", Some("/ca"), Some("/c"), None),
            Err(TlsError::HalfIdentity {
                given: "certificate"
            })
        );
        assert_eq!(
            tls("zk:2281", Some("/ca"), None, Some("/k")),
            Err(TlsError::HalfIdentity { given: "key" })
        );
        assert_eq!(
            tls("zk:2281", None, Some("/c"), Some("/k")),
            Err(TlsError::IdentityWithoutCa)
        );
    }

    #[test]
    fn given_a_connect_string_then_each_server_and_its_scheme_are_found() {
        assert_eq!(
            servers("a:1,tcp+tls://b:2,tcp://c/chroot", true),
            vec![
                ("a".to_owned(), 1, true),
                ("b".to_owned(), 2, true),
                ("c".to_owned(), DEFAULT_PORT, false)
            ]
        );
        assert_eq!(
            servers("[::1]:2281/x", false),
            vec![("::1".to_owned(), 2281, false)]
        );
        assert!(asks_for_tls("a:1,tcp+tls://b:2"));
        assert!(!asks_for_tls("a:1,tcp://b:2/tcp+tls://"));
    }

    /// A CA file for diagnose tests: the server side never gets that far.
    fn some_ca(dir: &Path) -> ZkTls {
        // A self-signed certificate (openssl req -x509, P-256, valid to 2126).
        const CA: &str = "-----BEGIN CERTIFICATE-----\n\
MIIBkTCCATegAwIBAgIUbvz9l68sCobdL5TRenWJRp6gIrkwCgYIKoZIzj0EAwIw\n\
HTEbMBkGA1UEAwwSc2VydmljZWxvZyB0ZXN0IENBMCAXDTI2MTIwNzEyMjYxOVoY\n\
DzIxMjYxMTEzMTIyNjE5WjAdMRswGQYDVQQDDBJzZXJ2aWNlbG9nIHRlc3QgQ0Ew\n\
WTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAATCfqvOvSfYatNnpm4L8/GAkGfvLGIj\n\
geFDfFJfVT8OH031V2CGuCJGeRBZQyB8SuoJNZLW3sjWHbJdA+YTeJcAo1MwUTAd\n\
BgNVHQ4EFgQUYXKX7LCSSmePrTwgrR2lkwg3JVowHwYDVR0jBBgwFoAUYXKX7LCS\n\
SmePrTwgrR2lkwg3JVowDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNIADBF\n\
AiEAsM+V+eKS27m2/9bAnc/ND00a+Cmeq++sbhkF1u2UG4sCICfXlxo6+WkDbYY6\n\
cDk7hbNXXYkRwlOGA1P1omuhljcz\n\
-----END CERTIFICATE-----\n";
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, CA).expect("write");
        ZkTls { ca, identity: None }
    }

    #[test]
    fn given_a_plain_text_server_or_none_then_diagnose_says_so() {
        let dir = std::env::temp_dir().join(format!("zktls-diag-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let tls = some_ca(&dir);
        assert!(tls.options().is_ok(), "a PEM CA file is accepted");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().expect("accept");
            let _ = conn.read(&mut [0u8; 512]);
            // What a server that does not speak TLS answers.
            let _ = conn.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n");
        });
        let found = tls
            .diagnose(&format!("127.0.0.1:{port}"), Duration::from_secs(5))
            .expect("a plain-text server is a failure");
        assert!(found.contains("plain-text port"), "{found}");
        assert!(found.contains("ca.pem"), "{found}");
        server.join().expect("server");

        let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = closed.local_addr().expect("addr").port();
        drop(closed);
        let found = tls
            .diagnose(&format!("127.0.0.1:{port}"), Duration::from_secs(5))
            .expect("nothing listening is a failure");
        assert!(found.contains("cannot connect"), "{found}");
        assert_eq!(
            tls.diagnose(&format!("tcp://127.0.0.1:{port}"), Duration::from_secs(1)),
            None,
            "no TLS server in the string: nothing to diagnose"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn given_unreadable_or_non_pem_files_then_the_error_names_the_file() {
        let dir = std::env::temp_dir().join(format!("zktls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let missing = ZkTls {
            ca: dir.join("missing.pem"),
            identity: None,
        };
        let e = missing.options().expect_err("a missing file");
        assert!(
            matches!(
                &e,
                TlsError::Read {
                    what: "CA file",
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("missing.pem"), "{e}");
        let garbage = dir.join("garbage.pem");
        std::fs::write(&garbage, "not a certificate\n").expect("write");
        let e = ZkTls {
            ca: garbage.clone(),
            identity: None,
        }
        .options()
        .expect_err("no PEM");
        assert!(
            matches!(
                &e,
                TlsError::Invalid {
                    what: "CA file",
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("garbage.pem"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
