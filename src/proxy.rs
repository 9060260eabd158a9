//! The Docker Engine API endpoint: accept a unix connection, check the peer, and relay every
//! request to the upstream engine — plain, streaming and chunked bodies, and any HTTP upgrade
//! (attach, exec, `/grpc`) spliced as raw bytes. Two requests are handed on instead:
//! `POST /session` to [`crate::session`], and the start of a `buildctl dial-stdio` exec (the
//! docker-container driver's path to BuildKit) to [`crate::exec`], which runs the Control API
//! relay over it. For the latter, exec create and start bodies (small JSON) are read to decide,
//! and relayed byte for byte.
//!
//! Each downstream connection gets its own upstream connection (HTTP/1.1 is sequential, so
//! the two pair up naturally); upgrades take a fresh one, since an upgrade consumes it.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_TYPE, UPGRADE};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::access::PeerInfo;
use crate::broker::Broker;
use crate::channel::{BoxError, SessionInfo};
use crate::config::Endpoint;
use crate::exec::{self, DialStdioExecs, ExecKind};
use crate::listen::{Admitted, ClientIo, Incoming as Accepted, Refusal, admit};
use crate::peers::ConnectionSlot;
use crate::session;
use crate::source::{AcceptedAt, ClientProcess};

/// Responses to the downstream client: relayed bodies or buildbroker's own short answers.
type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// A byte stream to the upstream engine, unix or TCP.
trait UpstreamIo: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> UpstreamIo for T {}

/// How long a client may take to send a request's headers before it is disconnected.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves one accepted connection until it closes or `shutdown` asks it to drain.
pub async fn serve_connection(
    incoming: Accepted,
    broker: Arc<Broker>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
) {
    let accepted = AcceptedAt::now();
    let Admitted {
        io,
        peer,
        remote: _,
        slot,
    } = match admit(incoming, &broker, &shutdown, "Docker endpoint").await {
        Ok(admitted) => admitted,
        Err(Refusal::Forbidden(io, message)) => {
            return refuse(io, StatusCode::FORBIDDEN, message).await;
        }
        Err(Refusal::Busy(io, message)) => {
            return refuse(io, StatusCode::TOO_MANY_REQUESTS, message).await;
        }
        Err(Refusal::Gone) => return,
    };
    let client = peer.client.to_string();

    // Everything this connection starts (upgrades, sessions) holds its slot and ends when the
    // peer is revoked: an upgraded stream outlives this function but stays counted and
    // revocable. A SIGTERM drain does not end them: the build using them runs on until it ends
    // or the drain timeout.
    let slot = Arc::new(slot);
    let conn = Arc::new(Connection {
        broker,
        peer: peer.clone(),
        accepted,
        upstream: Mutex::new(None),
        tasks,
        revoked: slot.revoked.clone(),
        slot: slot.clone(),
    });
    let service = hyper::service::service_fn(move |req| {
        let conn = conn.clone();
        async move { Ok::<_, std::convert::Infallible>(conn.handle(req).await) }
    });
    let http = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(http);
    let result = tokio::select! {
        r = &mut http => r,
        _ = slot.token.cancelled() => {
            if !shutdown.is_cancelled() {
                // Revoked by a reload: no grace, not even for a request in flight.
                tracing::warn!(%client, uid = peer.uid, pid = ?peer.pid, "closing a connection: [access] no longer allows this peer");
                return;
            }
            http.as_mut().graceful_shutdown();
            http.await
        }
    };
    if let Err(e) = result {
        // Malformed requests are answered with 400 by hyper before this; log for operators.
        tracing::debug!(%client, uid = peer.uid, error = %e, "connection ended with an error");
    }
}

/// Answers every request on `stream` with `status` and `message` (the Engine API's error
/// shape), then closes it.
async fn refuse(stream: ClientIo, status: StatusCode, message: String) {
    let service = hyper::service::service_fn(move |_req: Request<Incoming>| {
        let message = message.clone();
        async move { Ok::<_, std::convert::Infallible>(error_response(status, &message)) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .keep_alive(false)
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// One downstream connection and its paired upstream connection.
struct Connection {
    broker: Arc<Broker>,
    peer: PeerInfo,
    /// When the peer's connection was accepted: a session's build client process must have
    /// started before it (`client-env:`; src/source/client_env.rs).
    accepted: AcceptedAt,
    /// Reused for plain requests; replaced when the engine closes it.
    upstream: Mutex<Option<SendRequest<ProxyBody>>>,
    /// Upgraded connections (sessions, attach) outlive the request; the daemon drains them.
    tasks: TaskTracker,
    /// Cancelled when the peer's access is revoked (not when the daemon drains): ends the
    /// upgraded streams and sessions this connection started.
    revoked: CancellationToken,
    /// This connection's place in the live-peer table, held by every task it starts.
    slot: Arc<ConnectionSlot>,
}

impl Connection {
    async fn handle(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        if req.method() == Method::POST {
            let path = req.uri().path();
            if session::is_session_path(path) {
                return self.intercept_session(req).await;
            }
            if exec::is_exec_create(path) {
                return self.create_exec(req).await;
            }
            if is_upgrade(req.headers())
                && let Some(id) = exec::exec_start_id(path)
                && DialStdioExecs::global().take(id)
            {
                return self.start_dial_stdio(req).await;
            }
        }
        if is_upgrade(req.headers()) {
            return self.forward_upgrade(boxed(req)).await;
        }
        self.forward(boxed(req)).await
    }

    /// `POST /containers/{name}/exec`: relayed unchanged; when it creates a `buildctl
    /// dial-stdio` exec, the id in the engine's answer is remembered for its start.
    async fn create_exec(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        let (req, body) = match read_small_body(req).await {
            Ok(read) => read,
            Err(resp) => return resp,
        };
        let kind = body
            .as_deref()
            .map_or(ExecKind::Other, exec::classify_create);
        if kind == ExecKind::DialStdioTty {
            tracing::info!(
                uid = self.peer.uid,
                "buildctl dial-stdio exec with a tty: relayed raw, not intercepted"
            );
        }
        let resp = self.forward(req).await;
        if kind != ExecKind::DialStdio || resp.status() != StatusCode::CREATED {
            return resp;
        }
        let (parts, body) = resp.into_parts();
        let body = match collect_bounded(body, exec::MAX_INSPECTED_BODY).await {
            Ok(bytes) => bytes,
            Err(e) => {
                return self.upstream_failed(&format!("reading the exec create answer: {e}"));
            }
        };
        match exec::created_id(&body) {
            Some(id) => {
                tracing::debug!(uid = self.peer.uid, exec = %id, "buildctl dial-stdio exec created");
                DialStdioExecs::global().remember(id);
            }
            None => tracing::warn!(
                uid = self.peer.uid,
                "buildctl dial-stdio exec created, but the engine's answer has no id; it will not be intercepted"
            ),
        }
        Response::from_parts(parts, full(body))
    }

    /// `POST /exec/{id}/start` of a dial-stdio exec: once both sides have switched protocols,
    /// the Control API relay runs over the hijacked stream (unless a tty was asked for, which
    /// drops the stdcopy framing: then it is spliced raw like any other exec).
    async fn start_dial_stdio(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        let (req, body) = match read_small_body(req).await {
            Ok(read) => read,
            Err(resp) => return resp,
        };
        if body.as_deref().is_none_or(exec::start_wants_tty) {
            tracing::info!(
                uid = self.peer.uid,
                "buildctl dial-stdio exec started with a tty (or an unread body): relayed raw, not intercepted"
            );
            return self.forward_upgrade(req).await;
        }
        let (resp, pair) = match self.relay_upgrade(req).await {
            Ok(switched) => switched,
            Err(resp) => return resp,
        };
        tracing::info!(uid = self.peer.uid, pid = ?self.peer.pid, "buildctl dial-stdio exec started: relaying the BuildKit Control API");
        let broker = self.broker.clone();
        let peer = self.peer.clone();
        let process = Arc::new(ClientProcess::pin(&self.peer, self.accepted));
        let revoked = self.revoked.clone();
        let slot = self.slot.clone();
        self.tasks.spawn(async move {
            let _slot = slot;
            match pair.complete().await {
                Ok((container, client)) => {
                    exec::run(container, client, broker, peer, process, revoked).await
                }
                Err(e) => tracing::warn!(error = %e, "dial-stdio exec upgrade did not complete"),
            }
        });
        resp
    }

    /// A plain request: relay it on the paired upstream connection.
    async fn forward(&self, req: Request<ProxyBody>) -> Response<ProxyBody> {
        let mut slot = self.upstream.lock().await;
        let reusable = match slot.as_mut() {
            Some(send) => send.ready().await.is_ok(),
            None => false,
        };
        if !reusable {
            match self.connect_upstream(false).await {
                Ok(send) => *slot = Some(send),
                Err(resp) => return resp,
            }
        }
        let send = slot.as_mut().expect("an upstream connection was just set");
        match send.send_request(req).await {
            Ok(resp) => resp.map(|b| b.map_err(BoxError::from).boxed_unsync()),
            Err(e) => {
                *slot = None;
                self.upstream_failed(&e.to_string())
            }
        }
    }

    /// Relays an upgrade request on a fresh upstream connection (an upgrade consumes it). When
    /// the engine switches protocols, returns its 101 for the client and both halves to be;
    /// otherwise the engine's (or our) answer, to pass on as it is.
    async fn relay_upgrade(
        &self,
        mut req: Request<ProxyBody>,
    ) -> Result<(Response<ProxyBody>, UpgradePair), Response<ProxyBody>> {
        let path = req.uri().path().to_owned();
        let downstream = hyper::upgrade::on(&mut req);
        let mut send = self.connect_upstream(true).await?;
        let mut resp = send
            .send_request(req)
            .await
            .map_err(|e| self.upstream_failed(&e.to_string()))?;
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            tracing::debug!(%path, status = %resp.status(), "the engine did not switch protocols");
            return Err(resp.map(|b| b.map_err(BoxError::from).boxed_unsync()));
        }
        let upstream = hyper::upgrade::on(&mut resp);
        Ok((
            resp.map(|b| b.map_err(BoxError::from).boxed_unsync()),
            UpgradePair {
                upstream,
                downstream,
            },
        ))
    }

    /// Attach, exec, `/grpc` and any other upgrade: once both sides have switched protocols,
    /// splice the raw bytes.
    async fn forward_upgrade(&self, req: Request<ProxyBody>) -> Response<ProxyBody> {
        let (resp, pair) = match self.relay_upgrade(req).await {
            Ok(switched) => switched,
            Err(resp) => return resp,
        };
        let revoked = self.revoked.clone();
        let slot = self.slot.clone();
        self.tasks.spawn(async move {
            let _slot = slot;
            let (up, down) = match pair.complete().await {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::debug!(error = %e, "upgrade did not complete");
                    return;
                }
            };
            // hyper hands over any bytes it had already read past the 101 inside `Upgraded`.
            let mut up = TokioIo::new(up);
            let mut down = TokioIo::new(down);
            tokio::select! {
                r = tokio::io::copy_bidirectional(&mut down, &mut up) => {
                    if let Err(e) = r { tracing::debug!(error = %e, "upgraded stream ended"); }
                }
                _ = revoked.cancelled() => {}
            }
        });
        resp
    }

    /// `POST /session`: open the upstream session with our methods added, then run the
    /// session router between the two upgraded connections.
    async fn intercept_session(&self, mut req: Request<Incoming>) -> Response<ProxyBody> {
        let (uuid, headers) = match session::upstream_session_headers(req.headers()) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(uid = self.peer.uid, "{e}");
                return error_response(StatusCode::BAD_REQUEST, &e.to_string());
            }
        };
        *req.headers_mut() = headers;
        let limit = self.broker.policy().limits.sessions_per_uid;
        let session_slot = match self.broker.peers().open_session(self.peer.uid, limit) {
            Ok(slot) => slot,
            Err(full) => {
                tracing::warn!(session = %uuid, uid = self.peer.uid, "refused session: {full}");
                return error_response(StatusCode::TOO_MANY_REQUESTS, &full.to_string());
            }
        };
        let (resp, pair) = match self.relay_upgrade(boxed(req)).await {
            Ok(switched) => switched,
            Err(resp) => {
                tracing::warn!(session = %uuid, status = %resp.status(), "the engine did not open the session");
                return resp;
            }
        };
        tracing::info!(session = %uuid, uid = self.peer.uid, pid = ?self.peer.pid, "session opened");
        let broker = self.broker.clone();
        let info = SessionInfo {
            uuid,
            peer: self.peer.clone(),
            client: Arc::new(ClientProcess::pin(&self.peer, self.accepted)),
        };
        let revoked = self.revoked.clone();
        let slot = self.slot.clone();
        self.tasks.spawn(async move {
            let _slots = (slot, session_slot);
            match pair.complete().await {
                Ok((daemon_side, client_side)) => {
                    session::run(
                        daemon_side,
                        client_side,
                        session::Halves::Sockets,
                        broker,
                        info,
                        revoked,
                    )
                    .await
                }
                Err(e) => tracing::warn!(session = %info.uuid, error = %e, "session upgrade did not complete"),
            }
        });
        resp
    }

    /// Opens a new HTTP/1.1 connection to the engine; its driver runs as a task.
    async fn connect_upstream(
        &self,
        upgrades: bool,
    ) -> Result<SendRequest<ProxyBody>, Response<ProxyBody>> {
        let generation = self.broker.current();
        let endpoint = generation.policy.server.upstream.clone();
        let io: Box<dyn UpstreamIo> = match &endpoint {
            Endpoint::Unix(path) => match UnixStream::connect(path).await {
                Ok(s) => Box::new(s),
                Err(e) => return Err(self.unreachable(&endpoint, &e.to_string())),
            },
            Endpoint::Tcp(addr) => {
                let tcp = match TcpStream::connect(addr).await {
                    Ok(s) => {
                        let _ = s.set_nodelay(true);
                        s
                    }
                    Err(e) => return Err(self.unreachable(&endpoint, &e.to_string())),
                };
                match &generation.upstream_tls {
                    None => Box::new(tcp),
                    Some(Err(e)) => return Err(self.unreachable(&endpoint, e)),
                    Some(Ok(connector)) => match connector.connect(tcp).await {
                        Ok(tls) => Box::new(tls),
                        Err(e) => {
                            return Err(self.unreachable(&endpoint, &format!("TLS handshake: {e}")));
                        }
                    },
                }
            }
        };
        let (send, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(io)).await {
            Ok(pair) => pair,
            Err(e) => return Err(self.unreachable(&endpoint, &e.to_string())),
        };
        if upgrades {
            tokio::spawn(async move {
                if let Err(e) = conn.with_upgrades().await {
                    tracing::debug!(error = %e, "upstream connection ended");
                }
            });
        } else {
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "upstream connection ended");
                }
            });
        }
        Ok(send)
    }

    fn unreachable(&self, endpoint: &Endpoint, error: &str) -> Response<ProxyBody> {
        tracing::error!(upstream = %endpoint, %error, "cannot reach the upstream engine");
        error_response(
            StatusCode::BAD_GATEWAY,
            &format!("buildbroker: cannot reach the upstream engine at {endpoint}: {error}"),
        )
    }

    fn upstream_failed(&self, error: &str) -> Response<ProxyBody> {
        tracing::warn!(%error, "upstream request failed");
        error_response(
            StatusCode::BAD_GATEWAY,
            &format!("buildbroker: the upstream engine failed this request: {error}"),
        )
    }
}

/// The two halves of a connection that switched protocols, once hyper has handed them over.
struct UpgradePair {
    upstream: hyper::upgrade::OnUpgrade,
    downstream: hyper::upgrade::OnUpgrade,
}

impl UpgradePair {
    async fn complete(self) -> hyper::Result<(hyper::upgrade::Upgraded, hyper::upgrade::Upgraded)> {
        tokio::try_join!(self.upstream, self.downstream)
    }
}

fn boxed(req: Request<Incoming>) -> Request<ProxyBody> {
    req.map(|b| b.map_err(BoxError::from).boxed_unsync())
}

fn full(bytes: Bytes) -> ProxyBody {
    Full::new(bytes).map_err(BoxError::from).boxed_unsync()
}

/// Reads a request body that should be small JSON (exec create and start), to look at it and
/// relay it byte for byte. A body announced as bigger than [`exec::MAX_INSPECTED_BODY`] is not
/// read: the request goes on as it came, with `None`. A chunked body that outgrows the bound
/// is refused (413), since part of it has been read.
async fn read_small_body(
    req: Request<Incoming>,
) -> Result<(Request<ProxyBody>, Option<Bytes>), Response<ProxyBody>> {
    let announced = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > exec::MAX_INSPECTED_BODY as u64) {
        return Ok((boxed(req), None));
    }
    let (parts, body) = req.into_parts();
    match http_body_util::Limited::new(body, exec::MAX_INSPECTED_BODY)
        .collect()
        .await
    {
        Ok(collected) => {
            let bytes = collected.to_bytes();
            Ok((Request::from_parts(parts, full(bytes.clone())), Some(bytes)))
        }
        Err(e) => Err(error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!(
                "buildbroker: an exec request body could not be read within {} bytes: {e}",
                exec::MAX_INSPECTED_BODY
            ),
        )),
    }
}

/// Collects a body of at most `limit` bytes.
async fn collect_bounded(mut body: ProxyBody, limit: usize) -> Result<Bytes, BoxError> {
    let mut out = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            if out.len() + data.len() > limit {
                return Err(format!("longer than {limit} bytes").into());
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out.freeze())
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(UPGRADE)
        && headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// An error in the Engine API's own shape (`{"message": …}`), which the docker CLI prints as
/// "Error response from daemon: …".
fn error_response(status: StatusCode, message: &str) -> Response<ProxyBody> {
    let body = serde_json::json!({ "message": message }).to_string();
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "application/json")
        .body(
            Full::new(Bytes::from(body))
                .map_err(BoxError::from)
                .boxed_unsync(),
        )
        .expect("a static response is valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upgrade_detection() {
        let mut h = HeaderMap::new();
        assert!(!is_upgrade(&h));
        h.insert(UPGRADE, "h2c".parse().unwrap());
        assert!(
            !is_upgrade(&h),
            "Upgrade without Connection: Upgrade is not an upgrade"
        );
        h.insert(CONNECTION, "keep-alive, Upgrade".parse().unwrap());
        assert!(is_upgrade(&h));
    }
}
