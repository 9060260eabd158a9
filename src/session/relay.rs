//! The h2 client towards the build client, and the relay of every call buildbroker does not
//! answer itself: headers, body frames, trailers and status pass through unchanged, streaming
//! in both directions (hyper moves frames; nothing is buffered whole).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;

/// Any error a body can carry on its way through the broker.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The one body type on both h2 halves of a session: relayed frames or local answers.
pub type RelayBody = UnsyncBoxBody<Bytes, BoxError>;

/// The session's HTTP/2 connection to the build client (which is the h2 server there).
/// Cheap to clone; all clones share the connection.
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
        let req = req.map(|b| b.map_err(BoxError::from).boxed_unsync());
        let mut send = self.send.clone();
        let result = match send.ready().await {
            Ok(()) => send.send_request(req).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(resp) => resp.map(|b| b.map_err(BoxError::from).boxed_unsync()),
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
