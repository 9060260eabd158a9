//! The operations endpoint on `[server] metrics_listen`: `/healthz` (the process answers),
//! `/readyz` (every listener is bound, the daemon is not draining, and the upstream engine
//! answers `_ping`) and `/metrics` ([`crate::metrics`]), over plain HTTP/1.1.
//!
//! It must never serve anything but these three read-only answers: no Docker API, no value,
//! no policy text. It is plain HTTP because probes and scrapers speak it; bind it to loopback
//! or a pod-internal address, not a public one (the metric labels name policy ids).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream, UnixStream};

use crate::broker::Broker;
use crate::config::Endpoint;

/// How long `/readyz` waits for the upstream engine's `_ping`; a probe's own timeout is
/// usually 1 s or more, so answer "not ready" before the prober gives up on us.
pub const PING_TIMEOUT: Duration = Duration::from_millis(800);

/// How long a scraper may take to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// What `/readyz` looks at.
pub struct Health {
    /// Set once every listener is bound; cleared when the daemon starts draining.
    serving: AtomicBool,
    /// For the upstream engine of the policy in force.
    broker: Arc<Broker>,
}

impl Health {
    pub fn new(broker: Arc<Broker>) -> Health {
        Health {
            serving: AtomicBool::new(false),
            broker,
        }
    }

    /// Every listener is bound: readiness now depends on the upstream engine.
    pub fn set_serving(&self, serving: bool) {
        self.serving.store(serving, Ordering::SeqCst);
    }

    /// `Ok` when ready, else why not (a sentence for the probe's log).
    pub async fn ready(&self) -> Result<(), String> {
        if !self.serving.load(Ordering::SeqCst) {
            return Err("not serving: listeners not bound yet, or draining".into());
        }
        let upstream = self.broker.policy().server.upstream.clone();
        match tokio::time::timeout(PING_TIMEOUT, ping(&upstream)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!(
                "the upstream engine at {upstream} does not answer _ping: {e}"
            )),
            Err(_) => Err(format!(
                "the upstream engine at {upstream} did not answer _ping within {PING_TIMEOUT:?}"
            )),
        }
    }
}

trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// `GET /_ping` on the engine: the call `docker` itself makes first; 200 means it serves.
async fn ping(endpoint: &Endpoint) -> Result<(), String> {
    let io: Box<dyn Io> = match endpoint {
        Endpoint::Unix(path) => {
            Box::new(UnixStream::connect(path).await.map_err(|e| e.to_string())?)
        }
        Endpoint::Tcp(addr) => Box::new(TcpStream::connect(addr).await.map_err(|e| e.to_string())?),
    };
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| e.to_string())?;
    let driver = tokio::spawn(conn);
    let req = Request::get("/_ping")
        // Go's HTTP server refuses an HTTP/1.1 request without a Host header.
        .header(HOST, "docker")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let result = send.send_request(req).await.map_err(|e| e.to_string());
    driver.abort();
    match result?.status() {
        StatusCode::OK => Ok(()),
        other => Err(format!("HTTP {other}")),
    }
}

/// Serves the endpoint until the process exits: it is not stopped with the Docker API, so
/// `/readyz` answers "not ready" (rather than refusing connections) while the API drains.
pub async fn run(listener: TcpListener, health: Arc<Health>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "metrics endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let health = health.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let health = health.clone();
                async move { Ok::<_, Infallible>(answer(&health, &req).await) }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                tracing::debug!(error = %e, "metrics endpoint: connection ended");
            }
        });
    }
}

async fn answer(health: &Health, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n".into());
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => match health.ready().await {
            Ok(()) => text(StatusCode::OK, "ready\n".into()),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
            ),
        },
        "/metrics" => {
            let mut resp = Response::new(Full::new(Bytes::from(crate::metrics::render())));
            resp.headers_mut().insert(
                CONTENT_TYPE,
                http::HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
            );
            resp
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: /healthz, /readyz, /metrics\n".into(),
        ),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
