//! The shared state of a running daemon: the current policy (swapped whole on SIGHUP), its ssh
//! agents (whose held keys are dropped — zeroized — with the policy they came from), the
//! audit log, and the facts about the host that policy defaults were computed from.

use std::sync::{Arc, RwLock};

use crate::audit::AuditLog;
use crate::config::{HostEnv, LoadError, Policy};
use crate::ssh::SshAgents;

pub struct Broker {
    policy: RwLock<Arc<Policy>>,
    /// The ssh ids of the current policy and the keys loaded for them; replaced with the
    /// policy, so a reload drops the old keys once the requests using them end.
    ssh: RwLock<Arc<SshAgents>>,
    audit: RwLock<Arc<AuditLog>>,
    /// The environment defaults were computed from; reloads use the same one.
    env: HostEnv,
}

impl Broker {
    /// Opens the policy's audit log and wraps the policy for sharing.
    pub fn new(policy: Policy, env: HostEnv) -> std::io::Result<Broker> {
        let audit = open_audit(&policy)?;
        let policy = Arc::new(policy);
        Ok(Broker {
            ssh: RwLock::new(Arc::new(SshAgents::new(policy.clone()))),
            policy: RwLock::new(policy),
            audit: RwLock::new(Arc::new(audit)),
            env,
        })
    }

    /// The policy in force now. Each request reads it once, so a reload never changes the
    /// rules halfway through an answer.
    pub fn policy(&self) -> Arc<Policy> {
        self.policy
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The ssh agents of the policy in force now.
    pub fn ssh(&self) -> Arc<SshAgents> {
        self.ssh.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn audit(&self) -> Arc<AuditLog> {
        self.audit.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The uid the daemon runs as: always allowed to connect.
    pub fn daemon_uid(&self) -> u32 {
        self.env.euid
    }

    /// Reads the policy again from where it came from. On any error the old policy stays.
    pub fn reload(&self) -> Result<Arc<Policy>, ReloadError> {
        let current = self.policy();
        let next = Policy::reload(&current.origin, &self.env)?;
        if next.server.listen != current.server.listen {
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
        if sockets(&next) != sockets(&current) {
            tracing::warn!(
                "[ssh.*] socket changed; agent sockets are bound at start and change at the next restart"
            );
        }
        let audit = open_audit(&next).map_err(ReloadError::Audit)?;
        let next = Arc::new(next);
        *self.ssh.write().unwrap_or_else(|p| p.into_inner()) =
            Arc::new(SshAgents::new(next.clone()));
        *self.policy.write().unwrap_or_else(|p| p.into_inner()) = next.clone();
        *self.audit.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(audit);
        Ok(next)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("cannot open the audit log: {0}")]
    Audit(std::io::Error),
}

fn open_audit(policy: &Policy) -> std::io::Result<AuditLog> {
    match &policy.server.audit_log {
        Some(path) => AuditLog::open(path).map_err(|e| {
            std::io::Error::new(e.kind(), format!("audit log {}: {e}", path.display()))
        }),
        None => Ok(AuditLog::tracing_only()),
    }
}
