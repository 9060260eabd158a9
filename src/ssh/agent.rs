//! One agent connection from a build, speaking the agent protocol for one ssh id.
//!
//! [`AgentConnection`] implements ssh-agent-lib's `Session` and overrides only what buildbroker
//! serves: listing keys, signing, and the `session-bind@openssh.com` extension. Every other
//! request (add, remove, remove-all, lock, unlock, smartcard keys, other extensions) keeps the
//! library's "unsupported" answer, which becomes `SSH_AGENT_FAILURE` on the wire.
//!
//! Each request reads the broker's current ssh registry, so a policy reload applies to the very
//! next request, and an id the new policy no longer lists stops answering.

use std::sync::Arc;

use bytes::Bytes;
use ssh_agent_lib::agent::Session;
use ssh_agent_lib::error::AgentError;
use ssh_agent_lib::proto::extension::{MessageExtension, SessionBind};
use ssh_agent_lib::proto::{Extension, Identity, PublicCredential, Response, SignRequest};
use ssh_key::{HashAlg, Signature};

use super::destination::{self, Bindings, SignRefused};
use super::held::{HeldKeys, HeldSignError};
use super::upstream::{self, UpstreamAgent, UpstreamError};
use super::{ManagedId, Unavailable, wire};
use crate::access::PeerInfo;
use crate::audit::SshEvent;
use crate::broker::Broker;
use crate::config::{AgentSocket, KeyMatch, SshKeys};

/// How a build reached the agent, for the audit log.
#[derive(Debug, Clone)]
pub enum Origin {
    /// An `SSH/ForwardAgent` stream inside the session with this UUID.
    Session { uuid: String, peer: PeerInfo },
    /// A connection to a standalone agent socket.
    Socket { peer: PeerInfo },
}

/// Why a sign request was refused; the text goes to the audit record and the log.
#[derive(Debug, thiserror::Error)]
enum SignError {
    #[error("the key is not one this ssh id exposes")]
    NotExposed,
    #[error(
        "an ssh-rsa (SHA-1) signature was asked for; set allow_sha1 = true for this ssh id if an old server needs it"
    )]
    Sha1,
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
    #[error("destination: {0}")]
    Destination(#[from] SignRefused),
    #[error(transparent)]
    Held(#[from] HeldSignError),
}

impl From<UpstreamError> for SignError {
    fn from(e: UpstreamError) -> Self {
        SignError::Unavailable(Unavailable::Upstream(e))
    }
}

/// A request refused because buildbroker does not serve it.
#[derive(Debug, thiserror::Error)]
enum Refused {
    #[error("ssh id {0:?} is no longer in the policy")]
    IdGone(String),
    #[error("extension {0:?} is not served")]
    Extension(String),
}

/// One agent connection: its id, its session bindings, its upstream connection.
pub struct AgentConnection {
    broker: Arc<Broker>,
    id: String,
    origin: Origin,
    bindings: Bindings,
    /// Opened on first use, for upstream ids.
    upstream: Option<UpstreamAgent>,
    /// The upstream's last full listing on this connection, for `comment:` matches.
    listed: Vec<Identity>,
}

impl AgentConnection {
    pub fn new(broker: Arc<Broker>, id: &str, origin: Origin) -> AgentConnection {
        AgentConnection {
            broker,
            id: id.to_string(),
            origin,
            bindings: Bindings::default(),
            upstream: None,
            listed: Vec::new(),
        }
    }

    /// Answers one request frame (a message without its length prefix) with the encoded
    /// response (also without). Refusals are answered, never dropped: the connection stays
    /// usable, as with OpenSSH's agent.
    pub async fn respond(&mut self, frame: &[u8]) -> Bytes {
        let response = match wire::decode_request(frame) {
            Ok(ssh_agent_lib::proto::Request::SignRequest(request))
                if upstream::asks_for_sha1(request.credential.key_data(), request.flags) =>
            {
                return self.sign_sha1(request, frame).await;
            }
            Ok(request) => {
                let name = wire::request_name(&request);
                match self.handle(request).await {
                    Ok(response) => response,
                    Err(AgentError::ExtensionFailure) => Response::ExtensionFailure,
                    Err(e) => {
                        tracing::info!(id = %self.id, request = name, reason = %e, "ssh agent request refused");
                        Response::Failure
                    }
                }
            }
            Err(e) => {
                tracing::info!(id = %self.id, error = %e, "unknown or malformed ssh agent request refused");
                Response::Failure
            }
        };
        wire::encode_response(&response)
    }

    fn managed(&self) -> Result<Arc<ManagedId>, AgentError> {
        self.broker
            .ssh()
            .managed(&self.id)
            .ok_or_else(|| AgentError::other(Refused::IdGone(self.id.clone())))
    }

    async fn upstream(&mut self, agent: &AgentSocket) -> Result<&mut UpstreamAgent, UpstreamError> {
        if self.upstream.is_none() {
            self.upstream = Some(UpstreamAgent::connect(agent).await?);
        }
        Ok(self.upstream.as_mut().expect("connected above"))
    }

    /// Whether the upstream key `key` is one the id exposes; lists the upstream again when a
    /// `comment:` rule needs a comment this connection has not seen.
    async fn upstream_exposes(
        &mut self,
        agent: &AgentSocket,
        allow: &[KeyMatch],
        credential: &PublicCredential,
    ) -> Result<bool, UpstreamError> {
        if upstream::exposes(allow, credential, None) {
            return Ok(true);
        }
        if !upstream::needs_comments(allow) {
            return Ok(false);
        }
        let seen = |listed: &[Identity]| {
            listed
                .iter()
                .find(|i| i.credential == *credential)
                .map(|i| i.comment.clone())
        };
        let comment = match seen(&self.listed) {
            Some(c) => Some(c),
            None => {
                self.listed = self.upstream(agent).await?.identities().await?;
                seen(&self.listed)
            }
        };
        Ok(comment.is_some_and(|c| upstream::exposes(allow, credential, Some(&c))))
    }

    /// Everything that decides whether this id may sign this request: the key is one it
    /// exposes (for held ids, the held keys that will sign), and the destination is allowed.
    /// Returns the held keys (for held ids) and the host the signature is for, if known.
    async fn authorize_sign(
        &mut self,
        managed: &ManagedId,
        request: &SignRequest,
    ) -> Result<(Option<Arc<HeldKeys>>, Option<String>), SignError> {
        let key = request.credential.key_data();
        if upstream::asks_for_sha1(key, request.flags) && !managed.rule().allow_sha1 {
            return Err(SignError::Sha1);
        }
        let mut held: Option<Arc<HeldKeys>> = None;
        match &managed.rule().keys {
            SshKeys::Upstream { agent, allow } => {
                if !self
                    .upstream_exposes(agent, allow, &request.credential)
                    .await?
                {
                    return Err(SignError::NotExposed);
                }
            }
            SshKeys::Held { .. } => {
                let keys = managed.held_keys().await.map_err(Unavailable::from)?;
                if keys.find(key).is_none() {
                    return Err(SignError::NotExposed);
                }
                held = Some(keys);
            }
        }
        let host = match managed.allowed_hosts().await.map_err(Unavailable::from)? {
            Some(hosts) => {
                Some(destination::permit_sign(&hosts, &self.bindings, key, &request.data)?.0)
            }
            None => self
                .bindings
                .last_host()
                .map(|k| k.fingerprint(HashAlg::Sha256).to_string()),
        };
        Ok((held, host))
    }

    async fn sign_checked(
        &mut self,
        managed: &ManagedId,
        request: SignRequest,
    ) -> Result<(Signature, Option<String>), SignError> {
        let (held, host) = self.authorize_sign(managed, &request).await?;
        let signature = match (&managed.rule().keys, held) {
            (_, Some(keys)) => {
                let (data, flags) = (request.data, request.flags);
                keys.sign_with(request.credential.key_data(), move |key| {
                    key.sign(&data, flags)
                })
                .await
                .ok_or(SignError::NotExposed)??
            }
            (SshKeys::Upstream { agent, .. }, None) => {
                self.upstream(agent).await?.sign(request).await?
            }
            (SshKeys::Held { .. }, None) => return Err(SignError::NotExposed),
        };
        Ok((signature, host))
    }

    /// An `ssh-rsa` (SHA-1) sign request. ssh-key 0.6 has no `Signature` for that algorithm,
    /// so the answer is built as raw bytes here rather than through ssh-agent-lib's `Session`:
    /// refused unless the id says `allow_sha1 = true`, then checked like any other request,
    /// then signed by the held key or passed to the upstream agent as the very frame received.
    async fn sign_sha1(&mut self, request: SignRequest, frame: &[u8]) -> Bytes {
        let fingerprint = request
            .credential
            .key_data()
            .fingerprint(HashAlg::Sha256)
            .to_string();
        let signed = match self.managed() {
            Ok(managed) => self.sign_sha1_checked(&managed, &request, frame).await,
            Err(e) => {
                tracing::info!(id = %self.id, request = "sign", reason = %e, "ssh agent request refused");
                return wire::encode_response(&Response::Failure);
            }
        };
        match signed {
            Ok((answer, host)) => {
                // Fail closed: no signature whose record cannot be written.
                if let Err(e) = self.audit(&fingerprint, host.as_deref(), "signed", None) {
                    tracing::warn!(id = %self.id, request = "sign", reason = %e, "ssh agent request refused");
                    return wire::encode_response(&Response::Failure);
                }
                answer
            }
            Err(e) => {
                self.audit_refused(&fingerprint, &e);
                tracing::info!(id = %self.id, request = "sign", reason = %e, "ssh agent request refused");
                wire::encode_response(&Response::Failure)
            }
        }
    }

    async fn sign_sha1_checked(
        &mut self,
        managed: &ManagedId,
        request: &SignRequest,
        frame: &[u8],
    ) -> Result<(Bytes, Option<String>), SignError> {
        let (held, host) = self.authorize_sign(managed, request).await?;
        let answer = match (&managed.rule().keys, held) {
            (_, Some(keys)) => {
                let data = request.data.clone();
                let signature = keys
                    .sign_with(request.credential.key_data(), move |key| {
                        key.sign_rsa_sha1(&data)
                    })
                    .await
                    .ok_or(SignError::NotExposed)??;
                wire::sign_response("ssh-rsa", &signature)
            }
            (SshKeys::Upstream { agent, .. }, None) => upstream::sign_raw(agent, frame).await?,
            (SshKeys::Held { .. }, None) => return Err(SignError::NotExposed),
        };
        Ok((answer, host))
    }

    /// Records a refused sign request against the host the connection is bound to, if any.
    /// A refusal hands nothing out, so a failed write is only logged (by the audit log).
    fn audit_refused(&self, fingerprint: &str, reason: &dyn std::fmt::Display) {
        let host = self
            .bindings
            .last_host()
            .map(|k| k.fingerprint(HashAlg::Sha256).to_string());
        let _ = self.audit(
            fingerprint,
            host.as_deref(),
            "refused",
            Some(&reason.to_string()),
        );
    }

    fn audit(
        &self,
        key: &str,
        host: Option<&str>,
        decision: &'static str,
        reason: Option<&str>,
    ) -> Result<(), crate::audit::AuditError> {
        let (via, session, peer) = match &self.origin {
            Origin::Session { uuid, peer } => ("session", Some(uuid.as_str()), peer),
            Origin::Socket { peer } => ("socket", None, peer),
        };
        let client = peer.client.to_string();
        self.broker.audit().ssh(&SshEvent {
            via,
            session,
            client: &client,
            peer_uid: peer.uid,
            peer_pid: peer.pid,
            id: &self.id,
            key,
            host,
            decision,
            reason,
        })
    }
}

#[ssh_agent_lib::async_trait]
impl Session for AgentConnection {
    async fn request_identities(&mut self) -> Result<Vec<Identity>, AgentError> {
        let managed = self.managed()?;
        let identities = match &managed.rule().keys {
            SshKeys::Upstream { agent, allow } => {
                let all = self
                    .upstream(agent)
                    .await
                    .map_err(AgentError::other)?
                    .identities()
                    .await
                    .map_err(AgentError::other)?;
                let shown = all
                    .iter()
                    .filter(|i| upstream::exposes(allow, &i.credential, Some(&i.comment)))
                    .cloned()
                    .collect();
                self.listed = all;
                shown
            }
            SshKeys::Held { .. } => managed
                .held_keys()
                .await
                .map_err(AgentError::other)?
                .identities(),
        };
        // As OpenSSH's agent: constrained keys are hidden from a connection bound to a host
        // they may not be used at, so ssh does not even offer them.
        if let Some(hosts) = managed.allowed_hosts().await.map_err(AgentError::other)?
            && let Err(reason) = destination::permit_listing(&hosts, &self.bindings)
        {
            tracing::info!(id = %self.id, %reason, "ssh id's keys hidden on this connection");
            return Ok(Vec::new());
        }
        Ok(identities)
    }

    async fn sign(&mut self, request: SignRequest) -> Result<Signature, AgentError> {
        let managed = self.managed()?;
        let fingerprint = request
            .credential
            .key_data()
            .fingerprint(HashAlg::Sha256)
            .to_string();
        match self.sign_checked(&managed, request).await {
            Ok((signature, host)) => {
                // Fail closed: no signature whose record cannot be written.
                self.audit(&fingerprint, host.as_deref(), "signed", None)
                    .map_err(AgentError::other)?;
                Ok(signature)
            }
            Err(e) => {
                self.audit_refused(&fingerprint, &e);
                Err(AgentError::other(e))
            }
        }
    }

    async fn extension(&mut self, extension: Extension) -> Result<Option<Extension>, AgentError> {
        if extension.name != SessionBind::NAME {
            return Err(AgentError::other(Refused::Extension(extension.name)));
        }
        let managed = self.managed()?;
        let Ok(Some(bind)) = extension.parse_message::<SessionBind>() else {
            tracing::info!(id = %self.id, "malformed session-bind@openssh.com refused");
            return Err(AgentError::ExtensionFailure);
        };
        let host = bind.host_key.fingerprint(HashAlg::Sha256);
        if let Err(reason) = self.bindings.bind(&bind) {
            tracing::info!(id = %self.id, %host, %reason, "session-bind@openssh.com refused");
            return Err(AgentError::ExtensionFailure);
        }
        tracing::debug!(id = %self.id, %host, forwarding = bind.is_forwarding, "agent connection bound to a host");
        if let SshKeys::Upstream { agent, .. } = &managed.rule().keys {
            // Best effort: an upstream agent without session-bind support still serves keys;
            // our own record above is what this id's `hosts` are checked against.
            let passed = match self.upstream(agent).await {
                Ok(upstream) => upstream.bind(&bind).await,
                Err(e) => Err(e),
            };
            if let Err(e) = passed {
                tracing::debug!(id = %self.id, error = %e, "upstream agent did not take the session binding");
            }
        }
        Ok(None)
    }
}
