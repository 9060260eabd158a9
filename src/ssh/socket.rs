//! Standalone agent sockets: `socket = PATH` on an ssh id serves the same filtered agent as a
//! plain unix socket, for `docker buildx build --ssh ID=PATH` with any builder (buildx's own
//! provider connects to it) and for people (`SSH_AUTH_SOCK=PATH ssh-add -l`).
//!
//! The socket is created mode 0600, and every connecting peer is checked against `[access]`
//! with its `SO_PEERCRED` credentials, as on the Docker endpoint: a refused peer is
//! disconnected before a single message is read.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::UnixStream;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{AgentConnection, Origin, wire};
use crate::access::{PeerInfo, check_peer, supplementary_groups};
use crate::broker::Broker;
use crate::config::Policy;
use crate::connection_threads::ConnectionThreads;
use crate::daemon_files::SocketSpec;
use crate::server::{BindError, BoundListener, bind_unix};

/// A bound agent socket and the ssh id it serves.
pub struct AgentListener {
    pub id: String,
    bound: BoundListener,
}

impl AgentListener {
    pub fn path(&self) -> &PathBuf {
        &self.bound.path
    }
}

/// Binds the socket of every ssh id that has one, mode 0600 (directory 0750 if made), with
/// the same guards against planted paths as the Docker endpoint.
pub fn bind(policy: &Policy, euid: u32) -> Result<Vec<AgentListener>, BindError> {
    let mut out = Vec::new();
    for (id, rule) in &policy.ssh {
        if let Some(path) = &rule.socket {
            let spec = SocketSpec {
                mode: 0o600,
                group: None,
                dir_mode: 0o750,
            };
            out.push(AgentListener {
                id: id.clone(),
                bound: bind_unix(path, euid, spec)?,
            });
        }
    }
    Ok(out)
}

/// Serves every agent socket until `shutdown`; open agent connections end with it (an agent
/// connection holds no state worth draining).
/// Each connection is served on one of `threads`, as the API endpoints' are: a key load or a
/// signature never runs on the thread that accepts and handles signals.
pub async fn run(
    listeners: Vec<AgentListener>,
    threads: Arc<ConnectionThreads>,
    broker: Arc<Broker>,
    shutdown: CancellationToken,
) {
    let tasks = TaskTracker::new();
    for listener in listeners {
        let broker = broker.clone();
        let shutdown = shutdown.clone();
        let conns = tasks.clone();
        let threads = threads.clone();
        tasks.spawn(async move {
            loop {
                tokio::select! {
                    accepted = listener.bound.listener.accept() => match accepted {
                        Ok((stream, _)) => {
                            let (id, broker, shutdown) = (listener.id.clone(), broker.clone(), shutdown.clone());
                            threads.serve_socket(&conns, stream, move |stream| serve(stream, id, broker, shutdown));
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, path = %listener.path().display(), "agent socket accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    },
                    _ = shutdown.cancelled() => break,
                }
            }
        });
    }
    shutdown.cancelled().await;
    tasks.close();
    tasks.wait().await;
}

async fn serve(stream: UnixStream, id: String, broker: Arc<Broker>, shutdown: CancellationToken) {
    let peer = match PeerInfo::of(&stream) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read an agent socket peer's credentials; closing");
            return;
        }
    };
    let policy = broker.policy();
    let groups = supplementary_groups(&peer);
    if let Err(refused) = check_peer(&policy.access, broker.daemon_uid(), &peer, &groups) {
        tracing::warn!(%id, uid = peer.uid, gid = peer.gid, pid = ?peer.pid, "refused agent socket connection: {refused}");
        return;
    }
    let clients = policy.ssh.get(&id).and_then(|r| r.clients.as_deref());
    if !crate::access::client_listed(clients, &peer.client) {
        tracing::warn!(%id, uid = peer.uid, pid = ?peer.pid, "refused agent socket connection: uid:{} is not in [ssh.{id}] clients", peer.uid);
        return;
    }
    let limit = policy.limits.connections_per_uid;
    // Counted with the uid's Engine API connections; cancelled if a reload revokes the uid.
    let slot = match broker.peers().admit(peer.clone(), groups, limit, &shutdown) {
        Ok(slot) => slot,
        Err(full) => {
            tracing::warn!(%id, uid = peer.uid, pid = ?peer.pid, "refused agent socket connection: {full}");
            return;
        }
    };
    tracing::debug!(%id, uid = peer.uid, pid = ?peer.pid, "agent socket connection");
    let mut connection = AgentConnection::new(broker, &id, Origin::Socket { peer: peer.clone() });
    let mut framed = Framed::new(stream, wire::codec());
    loop {
        let frame = tokio::select! {
            f = framed.next() => f,
            _ = slot.token.cancelled() => {
                if !shutdown.is_cancelled() {
                    tracing::warn!(%id, uid = peer.uid, pid = ?peer.pid, "closing an agent socket connection: [access] no longer allows this peer");
                }
                break;
            }
        };
        match frame {
            Some(Ok(frame)) => {
                let response = connection.respond(&frame).await;
                if framed.send(response).await.is_err() {
                    break;
                }
            }
            Some(Err(e)) => {
                // Over-long message or I/O error: OpenSSH's agent closes the connection too.
                tracing::info!(%id, error = %e, "agent socket connection closed");
                break;
            }
            None => break,
        }
    }
}
