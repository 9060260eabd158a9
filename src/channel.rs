//! The types a session's two halves and the services between them share: who the session
//! belongs to ([`SessionInfo`]), the one body type ([`RelayBody`]), and the h2 channel back to
//! the build client ([`ClientChannel`]) with its relay of every call buildbroker does not
//! answer itself.
//!
//! This module sits below both the session core ([`crate::session`]) and the services
//! ([`crate::service`]) and the `client` source, so the import graph runs one way: transports →
//! session core → services → decisions → sources → these types. It must never import any of
//! those layers, and never look inside a relayed body (headers, frames, trailers and status
//! pass through unchanged, streaming both ways; nothing is buffered whole).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;

use crate::access::PeerInfo;

/// Any error a body can carry on its way through the broker.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The one body type on every h2 half the broker drives: relayed frames or local answers.
pub type RelayBody = UnsyncBoxBody<Bytes, BoxError>;

/// Who a session belongs to: for policy decisions, the audit log, and the sources that read
/// the build client itself (`client-env:`).
#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub uuid: String,
    pub peer: PeerInfo,
    /// The build client's process, pinned when its connection was accepted.
    pub client: std::sync::Arc<crate::source::ClientProcess>,
}

/// Relays one call on an h2 connection: the request's headers, frames and trailers go out as
/// they come; the response comes back the same way. The error is the connection's.
pub async fn relay_call(
    send: &SendRequest<RelayBody>,
    req: Request<Incoming>,
) -> Result<Response<RelayBody>, hyper::Error> {
    let req = req.map(|b| b.map_err(BoxError::from).boxed_unsync());
    let mut send = send.clone();
    send.ready().await?;
    let resp = send.send_request(req).await?;
    Ok(resp.map(|b| b.map_err(BoxError::from).boxed_unsync()))
}

/// The session's HTTP/2 connection to the build client (which is the h2 server there).
/// Cheap to clone; all clones share the connection. A `client` value asked over it belongs to
/// this one session.
#[derive(Clone)]
pub struct ClientChannel {
    send: SendRequest<RelayBody>,
}

impl ClientChannel {
    pub fn new(send: SendRequest<RelayBody>) -> Self {
        ClientChannel { send }
    }

    /// Relays one call from the daemon to the build client and its response back.
    pub async fn relay(&self, req: Request<Incoming>) -> Response<RelayBody> {
        let path = req.uri().path().to_owned();
        match relay_call(&self.send, req).await {
            Ok(resp) => resp,
            Err(e) => {
                tracing::debug!(%path, error = %e, "relay to the build client failed");
                tonic::Status::unavailable(format!(
                    "buildbroker: the build client's session is gone: {e}"
                ))
                .into_http()
            }
        }
    }
}

/// Lets tonic's generated clients call the build client over this connection.
impl tower_service::Service<Request<tonic::body::Body>> for ClientChannel {
    type Response = Response<Incoming>;
    type Error = hyper::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.send.poll_ready(cx)
    }

    fn call(&mut self, req: Request<tonic::body::Body>) -> Self::Future {
        let req = req.map(|b| b.map_err(BoxError::from).boxed_unsync());
        Box::pin(self.send.send_request(req))
    }
}
