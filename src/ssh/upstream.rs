//! The filtered upstream agent: a connection to an existing agent (a developer's
//! `ssh-agent`, `$SSH_AUTH_SOCK`), spoken to with ssh-agent-lib's client.
//!
//! Each agent connection from a build gets its own upstream connection, so per-connection
//! state in the upstream agent (OpenSSH's session bindings) stays per connection. Which of the
//! upstream's keys an id exposes is [`exposes`], a pure function.

use std::path::PathBuf;

use ssh_agent_lib::agent::Session;
use ssh_agent_lib::client::Client;
use ssh_agent_lib::proto::extension::SessionBind;
use ssh_agent_lib::proto::{Extension, Identity, SignRequest};
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

/// Whether an id whose `keys` are `allow` exposes the upstream key `key`, whose comment is
/// `comment` when known (a sign request carries no comment).
pub fn exposes(allow: &[KeyMatch], key: &KeyData, comment: Option<&str>) -> bool {
    let fingerprint = key.fingerprint(HashAlg::Sha256);
    allow.iter().any(|m| match m {
        KeyMatch::Fingerprint(fp) => *fp == fingerprint,
        KeyMatch::Comment(c) => Some(c.as_str()) == comment,
    })
}

/// Whether any entry of `allow` needs the key's comment (so a sign request must be checked
/// against a listing).
pub fn needs_comments(allow: &[KeyMatch]) -> bool {
    allow.iter().any(|m| matches!(m, KeyMatch::Comment(_)))
}
