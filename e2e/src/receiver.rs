//! A recording HTTP receiver on 127.0.0.1 — the "real HTTP server" the http sink is tested
//! against, by the sidecar's integration tests and the end-to-end suite alike.
//!
//! It keeps every request (gzip bodies decoded) and answers as its [`ReceiverState`] says:
//! accept, fail with a status, 429 with `Retry-After`, delay, or refuse chosen documents of
//! an Elasticsearch `_bulk`; it can go down (stop listening, drop its connections) and come
//! back on the same port, and serve TLS with a [`TestCa`]'s certificate.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use crate::procs;

/// The receiver; dropping it stops it.
pub struct Receiver {
    pub port: u16,
    pub state: std::sync::Arc<std::sync::Mutex<ReceiverState>>,
    rt: Option<tokio::runtime::Runtime>,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

#[derive(Debug, Default)]
pub struct ReceiverState {
    pub requests: Vec<Received>,
    /// Answer every request with this status instead of taking it.
    pub fail_with: Option<u16>,
    /// Sent as `Retry-After` with a `fail_with` answer.
    pub retry_after: Option<u64>,
    /// Wait this long before answering.
    pub delay: Duration,
    /// `_bulk`: documents whose `seq` is here are refused (400) for good.
    pub es_reject_seqs: std::collections::HashSet<u64>,
    /// `_bulk`: documents whose `seq` is here are refused (429) the first time they come.
    pub es_busy_once: std::collections::HashSet<u64>,
    /// `_bulk`: every document taken, in order.
    pub es_taken: Vec<serde_json::Value>,
    /// TLS handshakes that failed (e.g. the client did not trust the certificate).
    pub handshakes_failed: u64,
}

#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    /// Lower-case names.
    pub headers: BTreeMap<String, String>,
    /// Decoded if it came gzipped.
    pub body: Vec<u8>,
    /// Bytes on the wire.
    pub wire_len: usize,
    /// What the receiver answered.
    pub status: u16,
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

impl Receiver {
    pub fn start() -> Self {
        let port = procs::free_port().expect("a free port");
        let mut r = Self {
            port,
            state: Default::default(),
            rt: None,
            tls: None,
        };
        r.up();
        r
    }

    /// The same over TLS, with a certificate for 127.0.0.1 signed by `ca`.
    pub fn start_tls(ca: &TestCa) -> Self {
        let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(vec![ca.cert_der.clone()], ca.key_der.clone_key())
        .expect("a TLS server config");
        let port = procs::free_port().expect("a free port");
        let mut r = Self {
            port,
            state: Default::default(),
            rt: None,
            tls: Some(tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config))),
        };
        r.up();
        r
    }

    pub fn url(&self, path: &str) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}{path}", self.port)
    }

    /// Listens again on the same port.
    pub fn up(&mut self) {
        if self.rt.is_some() {
            return;
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a tokio runtime for the receiver");
        let listener = {
            let _guard = rt.enter();
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.port));
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match std::net::TcpListener::bind(addr) {
                    Ok(l) => {
                        l.set_nonblocking(true).expect("a nonblocking listener");
                        break tokio::net::TcpListener::from_std(l).expect("a tokio listener");
                    }
                    Err(e) if Instant::now() > deadline => {
                        panic!("binding the receiver to {addr}: {e}")
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        };
        rt.spawn(serve(listener, self.state.clone(), self.tls.clone()));
        self.rt = Some(rt);
    }

    /// Stops listening and drops every connection.
    pub fn down(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }

    pub fn with<T>(&self, f: impl FnOnce(&mut ReceiverState) -> T) -> T {
        f(&mut self.state.lock().expect("the receiver state"))
    }

    pub fn requests(&self) -> Vec<Received> {
        self.with(|s| s.requests.clone())
    }

    /// How often each `seq` came in the JSON lines of the requests the receiver took.
    pub fn taken_seqs(&self) -> BTreeMap<u64, usize> {
        let mut counts = BTreeMap::new();
        for r in self.requests() {
            if !(200..300).contains(&r.status) {
                continue;
            }
            for line in r.body.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                let v: serde_json::Value = serde_json::from_slice(line)
                    .unwrap_or_else(|e| panic!("a body line is not JSON ({e}): {line:?}"));
                if let Some(seq) = v["seq"].as_u64() {
                    *counts.entry(seq).or_insert(0) += 1;
                }
            }
        }
        counts
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.down();
    }
}

async fn serve(
    listener: tokio::net::TcpListener,
    state: std::sync::Arc<std::sync::Mutex<ReceiverState>>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let s = state.clone();
            let service = hyper::service::service_fn(move |req| receive(req, s.clone()));
            let http = hyper::server::conn::http1::Builder::new();
            match tls {
                None => {
                    let _ = http
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                }
                Some(acceptor) => match acceptor.accept(stream).await {
                    Ok(stream) => {
                        let _ = http
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                            .await;
                    }
                    Err(_) => {
                        state.lock().expect("the receiver state").handshakes_failed += 1;
                    }
                },
            }
        });
    }
}

/// A test CA and a server certificate it signed for 127.0.0.1 and localhost.
pub struct TestCa {
    pub ca_pem: String,
    pub cert_der: rustls::pki_types::CertificateDer<'static>,
    pub key_der: rustls::pki_types::PrivateKeyDer<'static>,
}

impl TestCa {
    pub fn new() -> Self {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "servicelog test CA");
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("a CA key"))
            .expect("a CA certificate");
        let key = KeyPair::generate().expect("a server key");
        let cert = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .expect("server params")
            .signed_by(&key, &ca)
            .expect("a server certificate");
        Self {
            ca_pem: ca.pem(),
            cert_der: cert.der().clone(),
            key_der: rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        }
    }
}

async fn receive(
    req: hyper::Request<hyper::body::Incoming>,
    state: std::sync::Arc<std::sync::Mutex<ReceiverState>>,
) -> Result<hyper::Response<http_body_util::Full<hyper::body::Bytes>>, std::convert::Infallible> {
    use http_body_util::BodyExt;
    use std::io::Read;
    let path = req.uri().path().to_owned();
    let headers: BTreeMap<String, String> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("?").to_owned()))
        .collect();
    let wire = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes().to_vec())
        .unwrap_or_default();
    let body = if headers.get("content-encoding").map(String::as_str) == Some("gzip") {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&wire[..])
            .read_to_end(&mut out)
            .expect("a gzip body that decodes");
        out
    } else {
        wire.clone()
    };
    let delay = state.lock().expect("the receiver state").delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let mut st = state.lock().expect("the receiver state");
    let (status, answer, retry_after) = match st.fail_with {
        Some(code) => (
            code,
            format!("{{\"error\":\"told to fail with {code}\"}}"),
            st.retry_after,
        ),
        None if path.ends_with("/_bulk") => (200, bulk_answer(&mut st, &body), None),
        None => (204, String::new(), None),
    };
    st.requests.push(Received {
        path,
        headers,
        body,
        wire_len: wire.len(),
        status,
    });
    drop(st);
    let mut resp = hyper::Response::builder()
        .status(status)
        .header("content-type", "application/json");
    if let Some(s) = retry_after {
        resp = resp.header("retry-after", s.to_string());
    }
    Ok(resp
        .body(http_body_util::Full::new(hyper::body::Bytes::from(answer)))
        .expect("a response"))
}

/// An Elasticsearch `_bulk` answer to `body`, taking or refusing each document as the
/// state says.
fn bulk_answer(st: &mut ReceiverState, body: &[u8]) -> String {
    let lines: Vec<&[u8]> = body
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    let mut items = Vec::new();
    let mut errors = false;
    for pair in lines.chunks(2) {
        let doc: serde_json::Value = pair
            .get(1)
            .and_then(|d| serde_json::from_slice(d).ok())
            .unwrap_or(serde_json::Value::Null);
        let seq = doc["seq"].as_u64().unwrap_or(u64::MAX);
        let status = if st.es_reject_seqs.contains(&seq) {
            400
        } else if st.es_busy_once.remove(&seq) {
            429
        } else {
            st.es_taken.push(doc);
            201
        };
        errors |= status >= 400;
        items.push(if status < 400 {
            serde_json::json!({"create": {"_index": "servicelog", "status": status, "result": "created"}})
        } else {
            serde_json::json!({"create": {"_index": "servicelog", "status": status,
                "error": {"type": if status == 429 {"es_rejected_execution_exception"} else {"document_parsing_exception"},
                          "reason": format!("test refused seq {seq}")}}})
        });
    }
    serde_json::json!({"took": 1, "errors": errors, "items": items}).to_string()
}
