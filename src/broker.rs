//! The shared state of a running daemon: the current policy (swapped whole on SIGHUP), the
//! audit log, and the facts about the host that policy defaults were computed from.

use std::sync::{Arc, RwLock};

use crate::audit::AuditLog;
use crate::config::{HostEnv, LoadError, Policy};
use crate::source::SourceRuntime;

pub struct Broker {
    policy: RwLock<Arc<Policy>>,
    /// Shared source state (clients, backend choices) made from the policy in force.
    sources: RwLock<Arc<SourceRuntime>>,
    audit: RwLock<Arc<AuditLog>>,
    /// The environment defaults were computed from; reloads use the same one.
    env: HostEnv,
}

impl Broker {
    /// Opens the policy's audit log and wraps the policy for sharing.
    pub fn new(policy: Policy, env: HostEnv) -> std::io::Result<Broker> {
        let audit = open_audit(&policy)?;
        Ok(Broker {
            sources: RwLock::new(Arc::new(SourceRuntime::new(policy.sources.clone()))),
            policy: RwLock::new(Arc::new(policy)),
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

    /// The source state that goes with [`Broker::policy`].
    pub fn sources(&self) -> Arc<SourceRuntime> {
        self.sources
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
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
        let audit = open_audit(&next).map_err(ReloadError::Audit)?;
        let sources = Arc::new(SourceRuntime::new(next.sources.clone()));
        let next = Arc::new(next);
        *self.sources.write().unwrap_or_else(|p| p.into_inner()) = sources;
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
