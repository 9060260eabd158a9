//! The BuildKit endpoint (`[server] buildkit_listen`): buildx's remote driver, buildctl and a
//! Kubernetes sidecar speak the BuildKit Control API to it, and it relays that API to `[server]
//! buildkit_upstream` through the one Control API relay ([`crate::control`]), whose
//! `Control/Session` goes to the one session core. This module only accepts connections,
//! checks who is calling and dials the upstream: a buildkitd socket (prior-knowledge h2c), or
//! the engine's own BuildKit behind `POST /grpc` upgraded to h2c (design.md §4).
//!
//! It never relays a byte before the caller passed `[access]`, never looks inside the Control
//! API, and answers every failure it owns (refused caller, unreachable upstream) as a gRPC
//! status on the caller's own connection, so buildx prints why and the daemon keeps serving.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_LENGTH, HOST, UPGRADE};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::access::PeerInfo;
use crate::broker::Broker;
use crate::channel::RelayBody;
use crate::config::{BuildkitUpstream, Endpoint};
use crate::control;
use crate::listen::{Admitted, Incoming as Accepted, Refusal, admit};
use crate::source::{AcceptedAt, ClientProcess};
use crate::tls::TlsConnector;

/// How long reaching the upstream may take in all (connect, and for `docker+` the `/grpc`
/// upgrade), so a black-holed tcp upstream fails the caller instead of hanging it.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a refused or failed caller's connection stays open to be told why: long enough for
/// buildx to send its calls and read the status, bounded so a silent peer cannot hold it.
const ANSWER_LINGER: Duration = Duration::from_secs(30);
/// How much of the engine's answer to a refused `/grpc` upgrade is kept for the error.
const MAX_REFUSAL_BODY: usize = 4096;

/// A byte stream in either direction: the caller's connection (unix today; a TLS stream with
/// a certificate identity next) or the upstream's.
pub trait ByteStream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> ByteStream for T {}

/// Why the upstream BuildKit could not be reached; the message names the address.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// Nothing listens there, the socket's permissions refuse us, or the host is unreachable.
    #[error("cannot connect to {endpoint}: {source}")]
    Connect {
        endpoint: Endpoint,
        #[source]
        source: std::io::Error,
    },
    /// A tcp upstream that never answers, or an engine that never completes the upgrade.
    #[error("{endpoint} did not answer within {} s", DIAL_TIMEOUT.as_secs())]
    Timeout { endpoint: Endpoint },
    /// The socket is not a Docker Engine (or one too old for `/grpc`), or it refused the call.
    #[error(
        "the engine at {endpoint} answered POST /grpc with {status} instead of switching to h2c: {body}"
    )]
    NotUpgraded {
        endpoint: Endpoint,
        status: StatusCode,
        body: String,
    },
    /// The engine broke HTTP/1.1 during the upgrade.
    #[error("the /grpc upgrade with the engine at {endpoint} failed: {source}")]
    Upgrade {
        endpoint: Endpoint,
        #[source]
        source: hyper::Error,
    },
}

/// Accepts one connection (unix, or tcp with mutual TLS: [`crate::listen`]): checks the caller
/// against `[access]` (as the Docker endpoint does), counts it against `connections_per_uid`,
/// then relays it.
pub async fn serve_incoming(incoming: Accepted, broker: Arc<Broker>, shutdown: CancellationToken) {
    let accepted = AcceptedAt::now();
    let Admitted { io, peer, slot, .. } =
        match admit(incoming, &broker, &shutdown, "BuildKit endpoint").await {
            Ok(admitted) => admitted,
            Err(Refusal::Forbidden(io, message)) => {
                let status = Status::permission_denied(message);
                return answer_every_call(io, status, &shutdown).await;
            }
            Err(Refusal::Busy(io, message)) => {
                let status = Status::resource_exhausted(message);
                return answer_every_call(io, status, &shutdown).await;
            }
            Err(Refusal::Gone) => return,
        };
    let process = Arc::new(ClientProcess::pin(&peer, accepted));
    // A reload that revokes the caller ends the relay at once; a SIGTERM drain lets the build
    // on it run on until it ends or the drain timeout.
    serve_connection(io, peer, process, broker, slot.revoked.clone()).await;
}

/// Relays one admitted caller's Control API connection to the upstream BuildKit until either
/// side closes it or `shutdown` fires. Generic over the caller's stream so that any transport
/// that has established who is calling (a unix peer, a TLS client) can hand over here.
pub async fn serve_connection<S: ByteStream>(
    client: S,
    peer: PeerInfo,
    process: Arc<ClientProcess>,
    broker: Arc<Broker>,
    shutdown: CancellationToken,
) {
    let Some(upstream) = broker.policy().server.buildkit_upstream.clone() else {
        // A reload that removed buildkit_listen leaves this listener bound until restart.
        answer_every_call(
            client,
            Status::unavailable("buildbroker: this policy has no [server] buildkit_upstream"),
            &shutdown,
        )
        .await;
        return;
    };
    let tls = broker.current().buildkit_upstream_tls.clone();
    let daemon = match dial_with(&upstream, tls).await {
        Ok(io) => io,
        Err(e) => {
            tracing::error!(upstream = %upstream, error = %e, "cannot reach the upstream BuildKit");
            crate::metrics::error_seen("buildkit_upstream");
            answer_every_call(
                client,
                Status::unavailable(format!(
                    "buildbroker: cannot reach BuildKit at {upstream}: {e}"
                )),
                &shutdown,
            )
            .await;
            return;
        }
    };
    let result = control::serve(
        TokioIo::new(client),
        TokioIo::new(daemon),
        broker,
        peer.clone(),
        process,
        shutdown,
    )
    .await;
    match result {
        Ok(()) => tracing::debug!(uid = peer.uid, "BuildKit endpoint connection ended"),
        Err(e) => {
            tracing::warn!(uid = peer.uid, upstream = %upstream, "BuildKit endpoint connection: {e}")
        }
    }
}

/// Opens a Control API byte stream to `upstream`: the transport, then for `docker+` the
/// engine's `/grpc` upgrade. Bounded by [`DIAL_TIMEOUT`].
pub async fn dial(upstream: &BuildkitUpstream) -> Result<Box<dyn ByteStream>, DialError> {
    dial_with(upstream, None).await
}

/// [`dial`] with TLS towards a `tcp://` upstream (`[buildkit_upstream_tls]`, loaded with the
/// policy: `Err` is a file that did not load, which fails the dial rather than going plain).
pub async fn dial_with(
    upstream: &BuildkitUpstream,
    tls: Option<Result<Arc<TlsConnector>, String>>,
) -> Result<Box<dyn ByteStream>, DialError> {
    let endpoint = upstream.endpoint();
    let attempt = async {
        let io = dial_transport(endpoint, tls)
            .await
            .map_err(|source| DialError::Connect {
                endpoint: endpoint.clone(),
                source,
            })?;
        match upstream {
            BuildkitUpstream::Buildkitd(_) => Ok(io),
            BuildkitUpstream::DockerGrpc(_) => upgrade_to_grpc(io, endpoint).await,
        }
    };
    tokio::time::timeout(DIAL_TIMEOUT, attempt)
        .await
        .unwrap_or_else(|_| {
            Err(DialError::Timeout {
                endpoint: endpoint.clone(),
            })
        })
}

/// The one place the upstream's transport is chosen. TLS towards a `tcp://` upstream
/// (`[buildkit_upstream_tls]`, issue 8 part B) wraps the tcp stream here, so the `/grpc`
/// upgrade and the relay above stay as they are.
async fn dial_transport(
    endpoint: &Endpoint,
    tls: Option<Result<Arc<TlsConnector>, String>>,
) -> std::io::Result<Box<dyn ByteStream>> {
    Ok(match endpoint {
        Endpoint::Unix(path) => Box::new(UnixStream::connect(path).await?),
        Endpoint::Tcp(addr) => {
            let s = TcpStream::connect(addr).await?;
            // Small gRPC frames (session health checks, GetSecret) must not wait for Nagle.
            s.set_nodelay(true)?;
            match tls {
                None => Box::new(s),
                Some(Ok(connector)) => Box::new(connector.connect(s).await?),
                Some(Err(e)) => return Err(std::io::Error::other(e)),
            }
        }
    })
}

/// `POST /grpc` with `Connection: Upgrade`, `Upgrade: h2c` (what buildx's docker driver
/// sends, design.md §4); after the engine's 101 the stream is prior-knowledge HTTP/2 with the
/// engine's BuildKit as the server. The h2 preface is only sent after the 101 (it is sent by
/// the relay, later): bytes sent with the request would be swallowed by the engine's HTTP
/// reader. Bytes the engine sent right after its 101 stay inside hyper's `Upgraded`.
async fn upgrade_to_grpc(
    io: Box<dyn ByteStream>,
    endpoint: &Endpoint,
) -> Result<Box<dyn ByteStream>, DialError> {
    let failed = |source| DialError::Upgrade {
        endpoint: endpoint.clone(),
        source,
    };
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(failed)?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "the /grpc upgrade connection ended");
        }
    });
    let req = Request::post("/grpc")
        // The engine's HTTP server needs a Host header; the docker CLI sends an empty one.
        .header(HOST, "")
        .header(CONNECTION, "Upgrade")
        .header(UPGRADE, "h2c")
        .header(CONTENT_LENGTH, "0")
        .body(Empty::<Bytes>::new())
        .expect("a static request is valid");
    let mut resp = send.send_request(req).await.map_err(failed)?;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        let status = resp.status();
        let body = match Limited::new(resp.into_body(), MAX_REFUSAL_BODY)
            .collect()
            .await
        {
            Ok(b) => String::from_utf8_lossy(&b.to_bytes()).trim().to_string(),
            Err(_) => "(no readable body)".to_string(),
        };
        return Err(DialError::NotUpgraded {
            endpoint: endpoint.clone(),
            status,
            body,
        });
    }
    let upgraded = hyper::upgrade::on(&mut resp).await.map_err(failed)?;
    Ok(Box::new(TokioIo::new(upgraded)))
}

/// Serves the caller's HTTP/2 connection by answering every call with `status` (a refusal,
/// an unreachable upstream), so the gRPC client shows the message; ends when the caller
/// hangs up, after [`ANSWER_LINGER`], or at shutdown.
async fn answer_every_call<S: ByteStream>(io: S, status: Status, shutdown: &CancellationToken) {
    let service = hyper::service::service_fn(move |_req: Request<Incoming>| {
        let status = status.clone();
        async move { Ok::<_, Infallible>(status.into_http::<RelayBody>()) }
    });
    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(io), service);
    tokio::select! {
        _ = conn => {}
        _ = tokio::time::sleep(ANSWER_LINGER) => {}
        _ = shutdown.cancelled() => {}
    }
}

#[cfg(test)]
mod tests;
