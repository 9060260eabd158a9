//! `moby.sshforward.v1.SSH`: `CheckAgent` and `ForwardAgent` inside a session (design.md §6).
//!
//! The ssh id comes in `CheckAgentRequest.ID` and in the `buildkit.ssh.id` metadata of
//! `ForwardAgent` (empty means `default`). Ids the policy lists get buildbroker's own agent
//! ([`crate::ssh`]); the others go to the build client's own `--ssh` provider
//! (`unknown_ssh = "client"`) or do not exist (`"deny"`: NotFound, which BuildKit turns into a
//! skipped optional mount or a failed required one). This is the one place where ssh outcomes
//! become gRPC status codes.
//!
//! BuildKit opens one `ForwardAgent` stream per connection a RUN step makes to its agent
//! socket and copies raw agent bytes in chunks with arbitrary boundaries; each stream is one
//! [`AgentConnection`], so several streams (and several ids) run side by side.

use std::pin::Pin;
use std::sync::Arc;

use bytes::BytesMut;
use futures_util::Stream;
use tokio_util::codec::Decoder;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status, Streaming};

use crate::broker::Broker;
use crate::channel::{ClientChannel, SessionInfo};
use crate::dockerfile::{MountKind, SessionDockerfiles};
use crate::proto::sshforward::ssh_client::SshClient;
use crate::proto::sshforward::ssh_server::Ssh;
use crate::proto::sshforward::{BytesMessage, CheckAgentRequest, CheckAgentResponse};
use crate::ssh::{AgentConnection, Origin, Route, wire};

/// The gRPC metadata key carrying the ssh id (buildkit session/sshforward/ssh.go `KeySSHID`).
pub const KEY_SSH_ID: &str = "buildkit.ssh.id";

pub struct SshService {
    broker: Arc<Broker>,
    session: Arc<SessionInfo>,
    /// The build client's own SSH service, for ids under `unknown_ssh = "client"`.
    client: SshClient<ClientChannel>,
    /// The Dockerfiles the session showed, for the mount rules.
    dockerfiles: Arc<SessionDockerfiles>,
}

impl SshService {
    pub fn new(
        broker: Arc<Broker>,
        session: Arc<SessionInfo>,
        channel: ClientChannel,
        dockerfiles: Arc<SessionDockerfiles>,
    ) -> Self {
        // The origin only fills `:scheme`/`:authority`; buildx's session server ignores both.
        let origin = http::Uri::from_static("http://buildbroker");
        SshService {
            broker,
            session,
            client: SshClient::with_origin(channel, origin),
            dockerfiles,
        }
    }
}

fn normalize(id: &str) -> &str {
    if id.is_empty() { "default" } else { id }
}

fn not_in_policy(id: &str) -> Status {
    Status::not_found(format!(
        "buildbroker: ssh id {id:?} is not in the policy (unknown_ssh = \"deny\")"
    ))
}

/// An id whose `clients` does not list the caller: NotFound, as if the policy had no such id.
fn not_for_client(id: &str, client: &crate::access::ClientId) -> Status {
    Status::not_found(format!(
        "buildbroker: ssh id {id:?} is not available to client \"{client}\" (not in [ssh.{id}] clients)"
    ))
}

type AgentStream = Pin<Box<dyn Stream<Item = Result<BytesMessage, Status>> + Send>>;

impl SshService {
    /// Whether this session's caller may use `managed` (`[ssh.<id>] clients`); a refusal is
    /// audited as denied.
    fn may_use(&self, managed: &crate::ssh::ManagedId, id: &str) -> bool {
        let client = &self.session.peer.client;
        if crate::access::client_listed(managed.rule().clients.as_deref(), client) {
            return true;
        }
        let client = client.to_string();
        // A refusal: nothing is handed out, so a failed write is only logged.
        let _ = self.broker.audit().ssh(&crate::audit::SshEvent {
            via: "session",
            session: Some(&self.session.uuid),
            client: &client,
            peer_uid: self.session.peer.uid,
            peer_pid: self.session.peer.pid,
            id,
            key: "",
            host: None,
            decision: "denied",
            reason: Some("the client is not in this ssh id's clients"),
        });
        false
    }
}

#[tonic::async_trait]
impl Ssh for SshService {
    async fn check_agent(
        &self,
        request: Request<CheckAgentRequest>,
    ) -> Result<Response<CheckAgentResponse>, Status> {
        let id = normalize(&request.get_ref().id).to_string();
        crate::service::mounts::enforce(
            &self.broker,
            &self.broker.policy(),
            &self.session,
            &self.dockerfiles,
            MountKind::Ssh,
            &id,
        )?;
        match self.broker.ssh().route(&id) {
            Route::Managed(managed) if !self.may_use(&managed, &id) => {
                Err(not_for_client(&id, &self.session.peer.client))
            }
            Route::Managed(managed) => match managed.check().await {
                Ok(()) => Ok(Response::new(CheckAgentResponse {})),
                Err(e) => {
                    tracing::info!(session = %self.session.uuid, %id, error = %e, "ssh id cannot serve");
                    let level = self.broker.policy().server.build_errors;
                    Err(Status::failed_precondition(
                        crate::policy::ssh_failure_for_build(&id, &e.to_string(), level),
                    ))
                }
            },
            // The client's answer, error or not, is passed on as it is.
            Route::Client => self.client.clone().check_agent(request.into_inner()).await,
            Route::Deny => Err(not_in_policy(&id)),
        }
    }

    type ForwardAgentStream = AgentStream;

    async fn forward_agent(
        &self,
        request: Request<Streaming<BytesMessage>>,
    ) -> Result<Response<Self::ForwardAgentStream>, Status> {
        let raw_id = request
            .metadata()
            .get(KEY_SSH_ID)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let id = normalize(&raw_id).to_string();
        match self.broker.ssh().route(&id) {
            Route::Managed(managed) if !self.may_use(&managed, &id) => {
                Err(not_for_client(&id, &self.session.peer.client))
            }
            Route::Managed(_) => {
                tracing::debug!(session = %self.session.uuid, %id, "agent connection from the build");
                let origin = Origin::Session {
                    uuid: self.session.uuid.clone(),
                    peer: self.session.peer.clone(),
                };
                let connection = AgentConnection::new(self.broker.clone(), &id, origin);
                Ok(Response::new(serve_stream(
                    connection,
                    request.into_inner(),
                )))
            }
            Route::Client => {
                // Chunks pass through as they come; the stream ends with the daemon's.
                let inbound = futures_util::stream::unfold(request.into_inner(), next_chunk);
                let mut relayed = Request::new(inbound);
                if let Ok(v) = MetadataValue::try_from(raw_id.as_str()) {
                    relayed.metadata_mut().insert(KEY_SSH_ID, v);
                }
                let response = self.client.clone().forward_agent(relayed).await?;
                Ok(Response::new(Box::pin(response.into_inner())))
            }
            Route::Deny => Err(not_in_policy(&id)),
        }
    }
}

/// The daemon's next chunk; the relayed stream ends where the daemon's does (or fails).
async fn next_chunk(
    mut inbound: Streaming<BytesMessage>,
) -> Option<(BytesMessage, Streaming<BytesMessage>)> {
    inbound.message().await.ok().flatten().map(|m| (m, inbound))
}

/// Runs one agent connection over a `ForwardAgent` stream: buffer the daemon's chunks, answer
/// each complete request, end when the daemon half-closes (its side of the agent connection
/// closed).
fn serve_stream(connection: AgentConnection, inbound: Streaming<BytesMessage>) -> AgentStream {
    struct State {
        connection: AgentConnection,
        inbound: Streaming<BytesMessage>,
        buffer: BytesMut,
        codec: tokio_util::codec::LengthDelimitedCodec,
        /// Set after an error was sent: the stream ends.
        done: bool,
    }
    let state = State {
        connection,
        inbound,
        buffer: BytesMut::new(),
        codec: wire::codec(),
        done: false,
    };
    Box::pin(futures_util::stream::unfold(state, |mut s| async move {
        if s.done {
            return None;
        }
        loop {
            match s.codec.decode(&mut s.buffer) {
                Ok(Some(frame)) => {
                    let response = s.connection.respond(&frame).await;
                    let message = BytesMessage {
                        data: wire::with_length(response).to_vec(),
                    };
                    return Some((Ok(message), s));
                }
                Ok(None) => {}
                Err(e) => {
                    // An over-long message: OpenSSH's agent closes the connection; so do we.
                    s.done = true;
                    let status = Status::resource_exhausted(format!(
                        "buildbroker: agent message refused: {e}"
                    ));
                    return Some((Err(status), s));
                }
            }
            match s.inbound.message().await {
                Ok(Some(chunk)) => s.buffer.extend_from_slice(&chunk.data),
                Ok(None) | Err(_) => return None,
            }
        }
    }))
}
