//! The small HTTP server both binaries run for `GET /metrics`, `/healthz` and `/readyz`
//! (feature `serve`). One server, so its limits — how long a client may take to send its
//! request, how many connections it may hold — are set and tested in one place.
//!
//! Each connection serves one request (no keep-alive: scrapers and probes reconnect), and
//! must send its request head within [`HEADER_TIMEOUT`]; at most [`MAX_CONNECTIONS`] are
//! open at once, the oldest ones beyond that are not accepted until one closes, so a
//! client that opens connections and sends nothing cannot hold the server.

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode, body::Bytes, server::conn::http1, service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::Semaphore};

/// How long a client may take to send its request head.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one connection may last in all.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 64;

/// What the endpoints report.
pub trait Probe: Send + Sync + 'static {
    /// `/metrics`: OpenMetrics text.
    fn metrics(&self) -> String;
    /// `/readyz`: `Ok` when ready, else what it is waiting for (one short line).
    fn ready(&self) -> Result<(), &'static str>;
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("binding the metrics address {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
}

/// Binds `addr` (port 0 picks a free one; the bound address is returned). Done before
/// anything else starts, so a taken port fails the start.
pub async fn bind(addr: &str) -> Result<(TcpListener, SocketAddr), ServeError> {
    let bind_error = |source| ServeError::Bind {
        addr: addr.to_owned(),
        source,
    };
    let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
    let local = listener.local_addr().map_err(bind_error)?;
    Ok((listener, local))
}

/// Serves until the task is dropped.
pub async fn serve(listener: TcpListener, probe: Arc<dyn Probe>) {
    tracing::info!(addr = ?listener.local_addr().ok(), "serving /metrics, /healthz, /readyz");
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, _) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a metrics connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let probe = probe.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let probe = probe.clone();
                async move { Ok::<_, Infallible>(answer(&req, probe.as_ref())) }
            });
            let connection = http1::Builder::new()
                .keep_alive(false)
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(CONNECTION_TIMEOUT, connection).await {
                Ok(Err(e)) => tracing::debug!(error = %e, "metrics connection ended with an error"),
                Err(_) => tracing::debug!("metrics connection closed after {CONNECTION_TIMEOUT:?}"),
                Ok(Ok(())) => {}
            }
            drop(slot);
        });
    }
}

/// The response to one request.
pub fn answer<B>(req: &Request<B>, probe: &dyn Probe) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into());
    }
    match req.uri().path() {
        "/metrics" => {
            let mut resp = Response::new(Full::new(Bytes::from(probe.metrics())));
            resp.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            resp
        }
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => match probe.ready() {
            Ok(()) => text(StatusCode::OK, "ok\n".into()),
            Err(waiting) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{waiting}\n")),
        },
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    struct Fixed(AtomicBool);

    impl Probe for Fixed {
        fn metrics(&self) -> String {
            "# EOF\n".into()
        }
        fn ready(&self) -> Result<(), &'static str> {
            if self.0.load(Ordering::Relaxed) {
                Ok(())
            } else {
                Err("no config in force")
            }
        }
    }

    #[test]
    fn each_endpoint_answers_as_documented() {
        let probe = Fixed(AtomicBool::new(false));
        let get = |path: &str| Request::get(path).body(()).expect("request");
        assert_eq!(answer(&get("/healthz"), &probe).status(), StatusCode::OK);
        assert_eq!(
            answer(&get("/readyz"), &probe).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        probe.0.store(true, Ordering::Relaxed);
        assert_eq!(answer(&get("/readyz"), &probe).status(), StatusCode::OK);
        let metrics = answer(&get("/metrics"), &probe);
        assert_eq!(
            metrics.headers()[hyper::header::CONTENT_TYPE],
            "application/openmetrics-text; version=1.0.0; charset=utf-8"
        );
        assert_eq!(answer(&get("/x"), &probe).status(), StatusCode::NOT_FOUND);
        let post = Request::post("/metrics").body(()).expect("request");
        assert_eq!(
            answer(&post, &probe).status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
    }

    /// Given more idle connections than the server serves at once, when a prober connects,
    /// then it is answered once the idle ones time out — never refused for good.
    #[tokio::test]
    async fn idle_connections_cannot_hold_the_server() {
        let (listener, addr) = bind("127.0.0.1:0").await.expect("bind");
        let server = tokio::spawn(serve(listener, Arc::new(Fixed(AtomicBool::new(true)))));
        let mut idle = Vec::new();
        for _ in 0..MAX_CONNECTIONS + 8 {
            idle.push(tokio::net::TcpStream::connect(addr).await.expect("connect"));
        }
        let started = std::time::Instant::now();
        let mut probe = tokio::net::TcpStream::connect(addr).await.expect("connect");
        probe
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .expect("write");
        let mut reply = String::new();
        tokio::time::timeout(HEADER_TIMEOUT * 4, probe.read_to_string(&mut reply))
            .await
            .expect("the prober was answered within four header timeouts")
            .expect("read");
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        assert!(started.elapsed() < HEADER_TIMEOUT * 4);
        // And the idle connections were closed, not left open.
        let mut first = idle.swap_remove(0);
        let mut buf = Vec::new();
        let read = tokio::time::timeout(HEADER_TIMEOUT * 2, first.read_to_end(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(_)) | Ok(Err(_))),
            "an idle connection was still open after two header timeouts"
        );
        server.abort();
    }
}
