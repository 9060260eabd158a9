//! The filtered upstream agent: a connection to an existing agent (a developer's
//! `ssh-agent`, `$SSH_AUTH_SOCK`), spoken to with ssh-agent-lib's client.
//!
//! Each agent connection from a build gets its own upstream connection, so per-connection
//! state in the upstream agent (OpenSSH's session bindings) stays per connection. Which of the
//! upstream's keys an id exposes is [`exposes`], a pure function: a certificate only when the
//! policy lists it as a certificate (`cert:SHA256:…`), never because its bare key is listed.
//! Whether a signature request asks for SHA-1 is [`asks_for_sha1`], refused for every ssh id
//! unless its policy says `allow_sha1 = true`.

use std::path::PathBuf;

use ssh_agent_lib::agent::Session;
use ssh_agent_lib::client::Client;
use ssh_agent_lib::proto::extension::SessionBind;
use ssh_agent_lib::proto::signature::{RSA_SHA2_256, RSA_SHA2_512};
use ssh_agent_lib::proto::{Extension, Identity, PublicCredential, SignRequest};
use ssh_key::public::KeyData;
use ssh_key::{HashAlg, Signature};
use tokio::net::UnixStream;

use crate::config::{AgentSocket, KeyMatch};

/// Why the upstream agent could not answer. Messages name the id's socket, never key data.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// `agent = "env:NAME"` and the daemon was started without NAME.
    #[error("agent = \"env:{name}\", but {name} is not set in buildbroker's environment")]
    EnvUnset { name: String },
    /// No agent listens there (a stale `SSH_AUTH_SOCK`, an agent that was stopped).
    #[error("cannot connect to the upstream agent at {path}: {source}")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The agent answered with a failure or something unexpected.
    #[error("the upstream agent at {path} refused or failed: {message}")]
    Failed { path: PathBuf, message: String },
}

/// Where the agent listens now (an `env:` socket is read from the daemon's environment at
/// each connection, as a shell would).
pub fn socket_path(socket: &AgentSocket) -> Result<PathBuf, UpstreamError> {
    match socket {
        AgentSocket::Path(p) => Ok(p.clone()),
        AgentSocket::Env(name) => std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .ok_or_else(|| UpstreamError::EnvUnset { name: name.clone() }),
    }
}

/// One connection to the upstream agent.
pub struct UpstreamAgent {
    client: Client<UnixStream>,
    path: PathBuf,
}

impl UpstreamAgent {
    pub async fn connect(socket: &AgentSocket) -> Result<UpstreamAgent, UpstreamError> {
        let path = socket_path(socket)?;
        let stream = UnixStream::connect(&path)
            .await
            .map_err(|source| UpstreamError::Connect {
                path: path.clone(),
                source,
            })?;
        Ok(UpstreamAgent {
            client: Client::new(stream),
            path,
        })
    }

    pub fn path(&self) -> &PathBuf {
        &self.path
    }

    fn failed(&self, e: impl std::fmt::Display) -> UpstreamError {
        UpstreamError::Failed {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }

    /// Every key of the upstream agent, unfiltered.
    pub async fn identities(&mut self) -> Result<Vec<Identity>, UpstreamError> {
        let result = self.client.request_identities().await;
        result.map_err(|e| self.failed(e))
    }

    pub async fn sign(&mut self, request: SignRequest) -> Result<Signature, UpstreamError> {
        let result = self.client.sign(request).await;
        result.map_err(|e| self.failed(e))
    }

    /// Passes a verified session binding on, so the upstream agent's own destination
    /// constraints (keys added with `ssh-add -h`) see where its keys are used.
    pub async fn bind(&mut self, bind: &SessionBind) -> Result<(), UpstreamError> {
        let extension = Extension::new_message(bind.clone()).map_err(|e| self.failed(e))?;
        let result = self.client.extension(extension).await;
        result.map(|_| ()).map_err(|e| self.failed(e))
    }
}

/// Whether an id whose `keys` are `allow` exposes the upstream identity `credential`, whose
/// comment is `comment` when known (a sign request carries no comment). A plain key matches a
/// fingerprint or a comment; a certificate matches only `cert:` with its key's fingerprint.
pub fn exposes(allow: &[KeyMatch], credential: &PublicCredential, comment: Option<&str>) -> bool {
    let fingerprint = credential.key_data().fingerprint(HashAlg::Sha256);
    let is_certificate = matches!(credential, PublicCredential::Cert(_));
    allow.iter().any(|m| match m {
        KeyMatch::Fingerprint(fp) => !is_certificate && *fp == fingerprint,
        KeyMatch::Comment(c) => !is_certificate && Some(c.as_str()) == comment,
        KeyMatch::Certificate(fp) => is_certificate && *fp == fingerprint,
    })
}

/// Whether a sign request asks an RSA key for an `ssh-rsa` (SHA-1) signature: neither the
/// rsa-sha2-256 nor the rsa-sha2-512 flag (draft-miller-ssh-agent §3.6.1). Other key types
/// have one algorithm each, whatever the flags say.
pub fn asks_for_sha1(key: &KeyData, flags: u32) -> bool {
    matches!(key, KeyData::Rsa(_)) && flags & (RSA_SHA2_256 | RSA_SHA2_512) == 0
}

/// Passes one already-authorized request frame (without its length prefix) to the upstream
/// agent on a connection of its own and returns the answer frame as it is: for `ssh-rsa`
/// signatures, which ssh-agent-lib's client cannot decode. The upstream agent's own session
/// bindings are not on this connection; its destination-constrained keys refuse such a request.
pub async fn sign_raw(socket: &AgentSocket, frame: &[u8]) -> Result<bytes::Bytes, UpstreamError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let path = socket_path(socket)?;
    let failed = |e: std::io::Error| UpstreamError::Failed {
        path: path.clone(),
        message: e.to_string(),
    };
    let mut stream = UnixStream::connect(&path)
        .await
        .map_err(|source| UpstreamError::Connect {
            path: path.clone(),
            source,
        })?;
    let mut out = Vec::with_capacity(frame.len() + 4);
    out.extend_from_slice(&(frame.len() as u32).to_be_bytes());
    out.extend_from_slice(frame);
    stream.write_all(&out).await.map_err(failed)?;
    let len = stream.read_u32().await.map_err(failed)? as usize;
    if len == 0 || len > super::wire::MAX_MESSAGE_LEN {
        return Err(UpstreamError::Failed {
            path: path.clone(),
            message: format!("answer of {len} bytes"),
        });
    }
    let mut answer = vec![0u8; len];
    stream.read_exact(&mut answer).await.map_err(failed)?;
    Ok(bytes::Bytes::from(answer))
}

/// Whether any entry of `allow` needs the key's comment (so a sign request must be checked
/// against a listing).
pub fn needs_comments(allow: &[KeyMatch]) -> bool {
    allow.iter().any(|m| matches!(m, KeyMatch::Comment(_)))
}
