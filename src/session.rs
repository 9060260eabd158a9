//! Session interception: the heart of buildbroker.
//!
//! A build client opens a BuildKit session with `POST /session` (Upgrade: h2c). Whoever opens a
//! session is the HTTP/2 *server* inside it; the daemon is the gRPC client (design.md §3). So
//! once both sides have switched protocols, buildbroker is an h2 server towards the daemon and
//! an h2 client towards the build client, with a [`router`] between them: the calls buildbroker
//! answers go to local services, every other call is relayed unchanged by
//! [`crate::channel::ClientChannel`].
//!
//! This is the one session core for every transport: `POST /session` on the Docker endpoint,
//! and `Control/Session` of the BuildKit Control API ([`crate::control`], carried by the exec
//! stream of the docker-container driver, [`crate::exec`]). Transports hand [`run`] two byte
//! streams; they never route calls themselves.
//!
//! This module never looks inside relayed calls and never logs bodies.

mod buffered_io;
mod calls;
mod dockerfile_watch;
mod router;

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderValue};
use hyper::rt::{Read, Write};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio_util::sync::CancellationToken;

pub use router::{Route, SessionRouter};

use crate::broker::Broker;
use crate::channel::{ClientChannel, SessionInfo};

/// Header naming the session's UUID (buildkit session/manager.go, `headerSessionID`).
pub const HEADER_UUID: &str = "x-docker-expose-session-uuid";
/// Header announcing one gRPC method the session's owner serves; repeated once per method.
pub const HEADER_METHOD: &str = "x-docker-expose-session-grpc-method";

/// The methods buildbroker answers itself, so the daemon must know the session serves them
/// even when the client did not announce them.
pub const SERVED_METHODS: &[&str] = &[
    "/moby.buildkit.secrets.v1.Secrets/GetSecret",
    "/moby.sshforward.v1.SSH/CheckAgent",
    "/moby.sshforward.v1.SSH/ForwardAgent",
];

/// HTTP/2 flow-control windows on both halves of a session. Large, fixed windows rather than
/// hyper's adaptive ones: h2 counts small buffered DATA frames against a budget of half the
/// connection window and sends GOAWAY(ENHANCE_YOUR_CALM) when it runs out, and BuildKit's file
/// sync (the local exporter, `COPY`) sends many small frames in bursts. Measured on the real
/// stack: with adaptive windows `-o type=local` failed with "too_many_data_frames".
pub(crate) const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
pub(crate) const STREAM_WINDOW: u32 = 4 * 1024 * 1024;

/// Read-ahead and write buffers under each h2 half (see [`buffered_io`]): 256 KiB is what a
/// busy unix socket holds queued; 64 KiB measured 2x the syscalls per MiB (docs/benchmarks.md).
const READ_AHEAD: usize = 256 * 1024;
pub(crate) const WRITE_COALESCE: usize = 256 * 1024;

pub(crate) use buffered_io::{BufferedIo, defer_flush, hold_small_flush};
#[cfg(test)]
pub(crate) use calls::InRounds;
pub(crate) use calls::wake_after_others;

/// What carries the two halves of a session, which decides the buffering under h2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Halves {
    /// Connections to the kernel (an upgraded `/session`): read-ahead and write coalescing
    /// save a system call per h2 frame.
    Sockets,
    /// In-memory message streams (`Control/Session`, [`crate::control::message_stream`]):
    /// they coalesce writes into one message themselves and a read costs no system call, so a
    /// buffer here would only add a copy of every byte.
    Messages,
}

/// How long a closing side may take to finish its streams before it is dropped.
const TEARDOWN_GRACE: Duration = Duration::from_secs(5);

/// Whether an Engine API path opens a session, judged on the path as the engine routes it.
///
/// The engine's router (moby `api/server`: gorilla/mux with the routes `/session` and
/// `/v{version:[0-9.]+}/session`, no `UseEncodedPath`) matches Go's *decoded* `URL.Path`, so
/// `/%73ession`, `/v1.45/%73ession` and `/v1.45%2Fsession` open sessions there and must be
/// intercepted here; checked against the test bed's dockerd 26.1. A path the router would not
/// route is left to the engine's own answer: `/session/` (404, no strict-slash), `//session`
/// and `/./session` (301 to the clean path, which a client does not follow for an upgrade),
/// malformed escapes (400). The query is not part of the path: `/session?x` is a session.
pub fn is_session_path(raw_path: &str) -> bool {
    let Some(path) = percent_decode(raw_path) else {
        return false;
    };
    if path == b"/session" {
        return true;
    }
    match path
        .strip_prefix(b"/v")
        .and_then(|rest| rest.strip_suffix(b"/session"))
    {
        Some(version) => {
            !version.is_empty() && version.iter().all(|b| b.is_ascii_digit() || *b == b'.')
        }
        None => false,
    }
}

/// `%XX` escapes decoded as Go's `url.PathUnescape` does; `None` for a malformed escape, which
/// the engine answers with 400 before routing.
fn percent_decode(path: &str) -> Option<Vec<u8>> {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

/// Why a `/session` request cannot be intercepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SessionError {
    #[error(
        "buildbroker: /session request without the X-Docker-Expose-Session-Uuid header; a BuildKit client (docker buildx) must open sessions"
    )]
    MissingUuid,
}

/// The headers for the upstream `/session` request: the client's own (UUID, shared key, the
/// methods it serves), plus each method buildbroker serves that the client did not announce.
/// Methods stay one header line each; BuildKit does not split comma-joined values.
pub fn upstream_session_headers(client: &HeaderMap) -> Result<(String, HeaderMap), SessionError> {
    let uuid = client
        .get(HEADER_UUID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .ok_or(SessionError::MissingUuid)?
        .to_string();
    let mut headers = client.clone();
    for method in SERVED_METHODS {
        let announced = client
            .get_all(HEADER_METHOD)
            .iter()
            .any(|v| v.as_bytes() == method.as_bytes());
        if !announced {
            headers.append(HEADER_METHOD, HeaderValue::from_static(method));
        }
    }
    Ok((uuid, headers))
}

/// Runs one intercepted session until either side closes it or the daemon shuts down.
/// `daemon_side` and `client_side` are the two upgraded connections (hyper's `Upgraded` in the
/// daemon; in-memory pipes in benchmarks) or the two message streams of `Control/Session`.
pub async fn run<D, C>(
    daemon_side: D,
    client_side: C,
    halves: Halves,
    broker: Arc<Broker>,
    info: SessionInfo,
    shutdown: CancellationToken,
) where
    D: Read + Write + Unpin + Send + 'static,
    C: Read + Write + Unpin + Send + 'static,
{
    let uuid = info.uuid.clone();
    let (read_ahead, write_coalesce) = match halves {
        Halves::Sockets => (READ_AHEAD, WRITE_COALESCE),
        Halves::Messages => (0, 0),
    };
    let daemon_side = buffered_io::BufferedIo::new(daemon_side, read_ahead, write_coalesce);
    let client_side = buffered_io::BufferedIo::new(client_side, read_ahead, write_coalesce);
    let handshake = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .initial_connection_window_size(CONNECTION_WINDOW)
        .initial_stream_window_size(STREAM_WINDOW)
        .handshake(client_side)
        .await;
    let (send, client_conn) = match handshake {
        Ok(pair) => pair,
        Err(e) => {
            tracing::warn!(session = %uuid, error = %e, "cannot start HTTP/2 towards the build client");
            return;
        }
    };
    let router = Arc::new(SessionRouter::new(
        ClientChannel::new(send),
        broker,
        Arc::new(info),
    ));
    let service = hyper::service::service_fn(move |req| router.clone().route(req));
    // The daemon's calls run in this task, beside the connection (see [`calls`]).
    let calls = calls::Calls::default();
    let server_conn = hyper::server::conn::http2::Builder::new(calls.clone())
        .timer(TokioTimer::new())
        .initial_connection_window_size(CONNECTION_WINDOW)
        .initial_stream_window_size(STREAM_WINDOW)
        .serve_connection(daemon_side, service);
    let mut server_conn = calls::Driven::new(server_conn, calls);
    tokio::pin!(client_conn);
    tracing::debug!(session = %uuid, "session started");
    let _open = crate::metrics::session_opened();

    tokio::select! {
        r = &mut server_conn => {
            tracing::debug!(session = %uuid, result = ?r.err(), "daemon closed the session");
            // Dropping the client half (below) closes the build client's side too.
        }
        r = &mut client_conn => {
            tracing::debug!(session = %uuid, result = ?r.err(), "build client closed the session");
            server_conn.conn().graceful_shutdown();
            let _ = tokio::time::timeout(TEARDOWN_GRACE, &mut server_conn).await;
        }
        _ = shutdown.cancelled() => {
            server_conn.conn().graceful_shutdown();
            let _ = tokio::time::timeout(TEARDOWN_GRACE, &mut server_conn).await;
        }
    }
    tracing::debug!(session = %uuid, "session ended");
}

#[cfg(test)]
mod tests;
