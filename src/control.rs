//! The BuildKit Control API relay, for transports that carry the Control API itself rather than
//! `POST /session`: the exec stream of buildx's docker-container driver ([`crate::exec`]), and
//! the BuildKit endpoint of the remote driver ([`crate::buildkit_endpoint`]).
//!
//! buildx is the HTTP/2 client of the Control API and BuildKit its server, so the relay is an
//! h2 server towards the build client and an h2 client towards BuildKit. Every call is relayed
//! unchanged (headers, streaming frames both ways, trailers, grpc-status) except
//! `moby.buildkit.v1.Control/Session`: its metadata carries the session headers (lowercase
//! `x-docker-expose-session-*`), to which buildbroker adds the methods it serves, and its two
//! `BytesMessage` streams carry the session's own HTTP/2 connection, which
//! [`message_stream::MessageStream`] turns back into bytes for the one session core
//! ([`crate::session::run`]). Inside that session BuildKit is the h2 client (design.md §3).
//!
//! This module never looks inside relayed calls and never logs bodies.

pub mod message_stream;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper::rt::{Read, Write};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use self::message_stream::{MessageStream, Outcome, Side};
use crate::access::PeerInfo;
use crate::broker::Broker;
use crate::channel::{BoxError, RelayBody, SessionInfo, relay_call};
use crate::session::{self, CONNECTION_WINDOW, STREAM_WINDOW};
use crate::source::ClientProcess;

/// The Control API method that carries a session (buildkit api/services/control).
pub const SESSION_METHOD: &str = "/moby.buildkit.v1.Control/Session";
/// Header block limit on both halves: gRPC metadata, and BuildKit's error trailers, whose
/// `grpc-status-details-bin` carries stack traces; generous, yet bounded (hyper's default is
/// 16 KiB, grpc-go's 16 MiB).
const MAX_HEADER_LIST: u32 = 1024 * 1024;
/// How long the build client's side may take to finish its calls once BuildKit is gone.
const TEARDOWN_GRACE: Duration = Duration::from_secs(5);

/// Why a Control API connection ended badly.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The client sent something other than HTTP/2 (garbage after an exec start, a client
    /// that is not buildx) or broke the protocol.
    #[error("the build client did not speak the BuildKit Control API (HTTP/2): {0}")]
    Client(#[source] hyper::Error),
    /// BuildKit's side ended or broke the protocol.
    #[error("BuildKit's side of the Control API failed: {0}")]
    Daemon(#[source] hyper::Error),
}

/// Relays one Control API connection until either side closes it or the daemon shuts down.
/// `client_io` faces the build client (buildx, the h2 client), `daemon_io` faces BuildKit.
pub async fn serve<C, D>(
    client_io: C,
    daemon_io: D,
    broker: Arc<Broker>,
    peer: PeerInfo,
    process: Arc<ClientProcess>,
    shutdown: CancellationToken,
) -> Result<(), ControlError>
where
    C: Read + Write + Unpin + Send + 'static,
    D: Read + Write + Unpin + Send + 'static,
{
    let (daemon, daemon_conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .initial_connection_window_size(CONNECTION_WINDOW)
        .initial_stream_window_size(STREAM_WINDOW)
        .max_header_list_size(MAX_HEADER_LIST)
        .handshake(daemon_io)
        .await
        .map_err(ControlError::Daemon)?;
    let relay = Arc::new(ControlRelay {
        daemon,
        broker,
        peer,
        process,
        shutdown: shutdown.clone(),
    });
    let service = hyper::service::service_fn(move |req| {
        let relay = relay.clone();
        async move { Ok::<_, Infallible>(relay.route(req).await) }
    });
    let client_conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .initial_connection_window_size(CONNECTION_WINDOW)
        .initial_stream_window_size(STREAM_WINDOW)
        .max_header_list_size(MAX_HEADER_LIST)
        .serve_connection(client_io, service);
    tokio::pin!(client_conn);
    tokio::pin!(daemon_conn);
    tokio::select! {
        // The build client closed (buildx is done) or broke the protocol; dropping the
        // BuildKit half below closes it too.
        r = &mut client_conn => match r {
            Err(e) if !is_hangup(&e) => Err(ControlError::Client(e)),
            _ => Ok(()),
        },
        r = &mut daemon_conn => {
            client_conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(TEARDOWN_GRACE, &mut client_conn).await;
            r.map_err(ControlError::Daemon)
        }
        _ = shutdown.cancelled() => {
            client_conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(TEARDOWN_GRACE, &mut client_conn).await;
            Ok(())
        }
    }
}

/// Whether a connection error is the peer going away (buildx resets the exec stream when it is
/// done with it, even during `buildx create --bootstrap`) rather than a protocol error.
fn is_hangup(e: &hyper::Error) -> bool {
    use std::error::Error;
    let mut source = e.source();
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::ConnectionAborted
            );
        }
        source = s.source();
    }
    false
}

/// The routing of one Control API connection.
struct ControlRelay {
    /// The h2 connection to BuildKit; every call goes out on it.
    daemon: SendRequest<RelayBody>,
    broker: Arc<Broker>,
    /// Who connected, for the sessions opened on this connection.
    peer: PeerInfo,
    /// The connecting process, pinned when it connected (`client-env:`).
    process: Arc<ClientProcess>,
    shutdown: CancellationToken,
}

impl ControlRelay {
    async fn route(&self, req: Request<Incoming>) -> Response<RelayBody> {
        if req.uri().path() == SESSION_METHOD {
            return self.intercept_session(req).await;
        }
        let path = req.uri().path().to_owned();
        match relay_call(&self.daemon, req).await {
            Ok(resp) => resp,
            Err(e) => {
                tracing::debug!(%path, error = %e, "relay to BuildKit failed");
                Status::unavailable(format!("buildbroker: BuildKit is unreachable: {e}"))
                    .into_http()
            }
        }
    }

    /// `Control/Session`: open it upstream with our methods added to its metadata, then run
    /// the session core on the two message streams.
    async fn intercept_session(&self, req: Request<Incoming>) -> Response<RelayBody> {
        let (uuid, headers) = match session::upstream_session_headers(req.headers()) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(uid = self.peer.uid, "Control/Session: {e}");
                return Status::invalid_argument(e.to_string()).into_http();
            }
        };
        // Counted like a `POST /session` on the Docker endpoint, before BuildKit hears of it.
        let limit = self.broker.policy().limits.sessions_per_uid;
        let session_slot = match self.broker.peers().open_session(self.peer.uid, limit) {
            Ok(slot) => slot,
            Err(full) => {
                tracing::warn!(session = %uuid, uid = self.peer.uid, "refused session: {full}");
                return Status::resource_exhausted(full.to_string()).into_http();
            }
        };
        let (mut parts, client_body) = req.into_parts();
        parts.headers = headers;
        let (to_daemon, to_daemon_body) = message_stream::channel();
        let upstream = Request::from_parts(parts, to_daemon_body);
        let mut send = self.daemon.clone();
        let resp = match send.ready().await {
            Ok(()) => send.send_request(upstream).await,
            Err(e) => Err(e),
        };
        let resp = match resp {
            Ok(resp) => resp,
            Err(e) => {
                tracing::warn!(session = %uuid, error = %e, "BuildKit did not open the session");
                return Status::unavailable(format!(
                    "buildbroker: BuildKit did not open the session: {e}"
                ))
                .into_http();
            }
        };
        // A refusal (an HTTP error, or a trailers-only gRPC answer) goes back as it is.
        if resp.status() != StatusCode::OK || resp.headers().contains_key("grpc-status") {
            tracing::warn!(session = %uuid, status = %resp.status(), "BuildKit refused the session");
            return resp.map(|b| b.map_err(BoxError::from).boxed_unsync());
        }
        tracing::info!(session = %uuid, uid = self.peer.uid, pid = ?self.peer.pid, "session opened (Control API)");
        let (resp_parts, daemon_body) = resp.into_parts();
        let (to_client, to_client_body) = message_stream::channel();
        let outcome = Arc::new(Outcome::default());
        let daemon_side = MessageStream::new(
            daemon_body,
            Side::Daemon,
            to_daemon.clone(),
            outcome.clone(),
        );
        let client_side = MessageStream::new(
            client_body,
            Side::Client,
            to_client.clone(),
            outcome.clone(),
        );
        let broker = self.broker.clone();
        let info = SessionInfo {
            uuid: uuid.clone(),
            peer: self.peer.clone(),
            client: self.process.clone(),
        };
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let _session_slot = session_slot;
            session::run(
                TokioIo::new(daemon_side),
                TokioIo::new(client_side),
                session::Halves::Messages,
                broker,
                info,
                shutdown,
            )
            .await;
            // The call's final status towards the build client; after a failure, BuildKit's
            // half is reset rather than ended cleanly, so it does not wait for more.
            let status = match outcome.take() {
                Some(status) => {
                    tracing::warn!(session = %uuid, code = ?status.code(), "session failed: {}", status.message());
                    let _ = to_daemon
                        .send(Err(BoxError::from(status.message().to_owned())))
                        .await;
                    status
                }
                None => Status::ok(""),
            };
            let mut trailers = http::HeaderMap::new();
            if status.add_header(&mut trailers).is_ok() {
                let _ = to_client
                    .send(Ok(hyper::body::Frame::trailers(trailers)))
                    .await;
            }
        });
        Response::from_parts(resp_parts, to_client_body)
    }
}
