//! The shared state of a running daemon: the policy in force with everything made from it (the
//! sources' shared state, the secret cache, the ssh agents and their held keys), swapped whole
//! on SIGHUP; the audit log; the live connections ([`LivePeers`]), which a reload checks
//! again so a peer it no longer allows loses its connections and sessions; and the facts about
//! the host that policy defaults were computed from.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::access::check_peer;
use crate::audit::{AuditLog, RevokeEvent};
use crate::cache::SecretCache;
use crate::config::{HostEnv, LoadError, Policy, PolicyOrigin};
use crate::daemon_files::{PathError, check_policy_file};
use crate::peers::LivePeers;
use crate::source::SourceRuntime;
use crate::ssh::SshAgents;

/// One policy and everything made from it. A reload makes a new generation; requests hold the
/// one they started with, so a reload never changes the rules halfway through an answer. The
/// old generation's cached values and held ssh keys are zeroized when its last request ends.
pub struct Generation {
    pub policy: Arc<Policy>,
    /// Shared source state (clients, backend choices).
    pub sources: Arc<SourceRuntime>,
    /// Values kept for ids with `cache_ttl`.
    pub cache: SecretCache,
    /// The ssh ids of the policy and the keys loaded for them.
    pub ssh: Arc<SshAgents>,
    /// TLS towards a tcp `[server] upstream` with `[upstream_tls]`, loaded with the policy;
    /// an error here fails each upstream dial with its message (never falls back to plain).
    pub upstream_tls: Option<Result<Arc<crate::tls::TlsConnector>, String>>,
    /// The same for a tcp `buildkit_upstream` with `[buildkit_upstream_tls]`: ALPN h2 towards
    /// a buildkitd (gRPC), none towards an engine's `/grpc` (an HTTP/1.1 upgrade first).
    pub buildkit_upstream_tls: Option<Result<Arc<crate::tls::TlsConnector>, String>>,
}

impl Generation {
    pub fn new(policy: Policy) -> Generation {
        let policy = Arc::new(policy);
        let sources = Arc::new(SourceRuntime::new(policy.sources.clone()));
        let upstream_tls = crate::tls::upstream_connector(
            &policy.server.upstream,
            policy.server.upstream_tls.as_ref(),
            Vec::new(),
        )
        .map(|r| r.map(Arc::new).map_err(|e| format!("[upstream_tls]: {e}")));
        let buildkit_upstream_tls = policy.server.buildkit_upstream.as_ref().and_then(|up| {
            let alpn = match up {
                crate::config::BuildkitUpstream::Buildkitd(_) => vec![b"h2".to_vec()],
                crate::config::BuildkitUpstream::DockerGrpc(_) => Vec::new(),
            };
            crate::tls::upstream_connector(
                up.endpoint(),
                policy.server.buildkit_upstream_tls.as_ref(),
                alpn,
            )
            .map(|r| {
                r.map(Arc::new)
                    .map_err(|e| format!("[buildkit_upstream_tls]: {e}"))
            })
        });
        Generation {
            upstream_tls,
            buildkit_upstream_tls,
            ssh: Arc::new(SshAgents::new(policy.clone(), sources.clone())),
            sources,
            cache: SecretCache::default(),
            policy,
        }
    }
}

pub struct Broker {
    current: RwLock<Arc<Generation>>,
    audit: RwLock<Arc<AuditLog>>,
    /// The environment defaults were computed from; reloads use the same one.
    env: HostEnv,
    /// Every open connection and session, for `[limits]` and revocation.
    peers: LivePeers,
}

impl Broker {
    /// Checks who can write the policy file (see [`check_policy_file`]), opens the policy's
    /// audit log and wraps the policy for sharing.
    pub fn new(policy: Policy, env: HostEnv) -> Result<Broker, ReloadError> {
        trusted_origin(&policy.origin, &env)?;
        let audit = open_audit(&policy, env.euid)?;
        Ok(Broker {
            current: RwLock::new(Arc::new(Generation::new(policy))),
            audit: RwLock::new(Arc::new(audit)),
            env,
            peers: LivePeers::default(),
        })
    }

    /// The live connections and sessions.
    pub fn peers(&self) -> &LivePeers {
        &self.peers
    }

    /// The generation in force now.
    pub fn current(&self) -> Arc<Generation> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The policy in force now.
    pub fn policy(&self) -> Arc<Policy> {
        self.current().policy.clone()
    }

    /// The ssh agents of the policy in force now.
    pub fn ssh(&self) -> Arc<SshAgents> {
        self.current().ssh.clone()
    }

    pub fn audit(&self) -> Arc<AuditLog> {
        self.audit.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The uid the daemon runs as: always allowed to connect.
    pub fn daemon_uid(&self) -> u32 {
        self.env.euid
    }

    /// Reads the policy again from where it came from. On any error the old policy stays. On
    /// success, every live connection whose peer the new `[access]` refuses is closed, with
    /// the sessions and upgraded streams it opened.
    pub fn reload(&self) -> Result<Arc<Generation>, ReloadError> {
        let current = self.current();
        trusted_origin(&current.policy.origin, &self.env)?;
        let next = Policy::reload(&current.policy.origin, &self.env)?;
        if next.server.listen != current.policy.server.listen {
            tracing::warn!(
                "[server] listen changed; the new addresses take effect at the next restart"
            );
        }
        let sockets = |p: &Policy| {
            p.ssh
                .iter()
                .map(|(id, r)| (id.clone(), r.socket.clone()))
                .filter(|(_, s)| s.is_some())
                .collect::<Vec<_>>()
        };
        if sockets(&next) != sockets(&current.policy) {
            tracing::warn!(
                "[ssh.*] socket changed; agent sockets are bound at start and change at the next restart"
            );
        }
        if next.server.worker_threads != current.policy.server.worker_threads {
            tracing::warn!(
                "[server] worker_threads changed; the connection threads stay as they are until the next restart"
            );
        }
        if next.server.socket_group != current.policy.server.socket_group {
            tracing::warn!(
                "[server] socket_group changed; the sockets keep their group until the next restart"
            );
        }
        let audit = Arc::new(open_audit(&next, self.env.euid)?);
        let next = Arc::new(Generation::new(next));
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = next.clone();
        *self.audit.write().unwrap_or_else(|p| p.into_inner()) = audit.clone();
        self.revoke_refused(&next.policy, &audit);
        Ok(next)
    }

    /// Closes the connections of every peer `policy` no longer allows.
    fn revoke_refused(&self, policy: &Policy, audit: &AuditLog) {
        let euid = self.env.euid;
        let revoked = self
            .peers
            .revoke_refused(|peer, groups| check_peer(&policy.access, euid, peer, groups).is_ok());
        for r in &revoked {
            audit.revoke(&RevokeEvent {
                client: r.peer.client.to_string(),
                peer_uid: r.peer.uid,
                peer_gid: r.peer.gid,
                peer_pid: r.peer.pid,
                decision: "revoked",
            });
        }
        if !revoked.is_empty() {
            tracing::warn!(
                connections = revoked.len(),
                "closed the connections of peers the reloaded [access] no longer allows"
            );
        }
    }

    /// Drops expired cache entries (zeroizing them) every `every` until the daemon stops.
    pub async fn sweep_cache(self: Arc<Self>, every: Duration) {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            self.current().cache.sweep(tokio::time::Instant::now());
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("cannot open the audit log: {0}")]
    Audit(PathError),
    /// A root daemon's policy file that someone other than root could change.
    #[error(
        "refusing the policy file: {0}. A root daemon runs the policy's exec: programs as root, so only root may be able to change the file and its directories"
    )]
    Untrusted(PathError),
}

fn trusted_origin(origin: &PolicyOrigin, env: &HostEnv) -> Result<(), ReloadError> {
    match origin {
        PolicyOrigin::File(path) => {
            check_policy_file(path, env.euid).map_err(ReloadError::Untrusted)
        }
        PolicyOrigin::Embedded => Ok(()),
    }
}

fn open_audit(policy: &Policy, euid: u32) -> Result<AuditLog, ReloadError> {
    match &policy.server.audit_log {
        Some(path) => AuditLog::open(path, euid).map_err(ReloadError::Audit),
        None => Ok(AuditLog::tracing_only()),
    }
}
