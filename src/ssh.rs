//! The SSH broker: for each `[ssh.<id>]` of the policy, an ssh agent that lists exactly the
//! keys the policy allows, signs only where the policy allows, and refuses everything else a
//! build may ask of an agent (add, remove, remove-all, lock, unlock, unknown extensions).
//!
//! Builds reach an id two ways: through the BuildKit session (`SSH/ForwardAgent`, one gRPC
//! stream per agent connection, in `service::ssh`) or through a standalone unix socket
//! ([`socket`]). Either way one [`AgentConnection`] speaks the agent protocol with
//! ssh-agent-lib's types; [`wire`] only cuts the byte stream into messages.
//!
//! [`SshAgents`] is the per-policy registry: it holds, per id, the broker-held keys (loaded on
//! first use, zeroized when the policy is reloaded and the last request using them ends) and
//! the resolved destination hosts. This module never logs or audits key material or the data
//! a key signs: records carry ids and fingerprints.

mod agent;
mod destination;
mod held;
mod hosts;
pub mod socket;
mod upstream;
pub mod wire;

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::OnceCell;

pub use agent::{AgentConnection, Origin};
pub use held::{KeyLoadError, KeyParseError};
pub use hosts::{AllowedHosts, HostsError};
pub use upstream::UpstreamError;

use held::HeldKeys;

use crate::config::{Policy, SshKeys, SshRule};
use crate::policy::{SshDecision, decide_ssh};
use crate::source::SourceRuntime;

/// The ssh ids of one policy, with what has been loaded for them.
pub struct SshAgents {
    policy: Arc<Policy>,
    ids: BTreeMap<String, Arc<ManagedId>>,
}

/// Who answers an ssh id, with the managed id's state when buildbroker does.
pub enum Route {
    Managed(Arc<ManagedId>),
    Client,
    Deny,
}

impl SshAgents {
    pub fn new(policy: Arc<Policy>, sources: Arc<SourceRuntime>) -> SshAgents {
        let ids = policy
            .ssh
            .iter()
            .map(|(id, rule)| {
                let managed = ManagedId {
                    id: id.clone(),
                    rule: rule.clone(),
                    held: OnceCell::new(),
                    sources: sources.clone(),
                    hosts: OnceCell::new(),
                };
                (id.clone(), Arc::new(managed))
            })
            .collect();
        SshAgents { policy, ids }
    }

    /// Who answers `id` (empty means `default`) under this policy.
    pub fn route(&self, id: &str) -> Route {
        match decide_ssh(&self.policy, id) {
            SshDecision::Managed(_) => {
                let id = if id.is_empty() { "default" } else { id };
                match self.ids.get(id) {
                    Some(m) => Route::Managed(m.clone()),
                    None => Route::Deny,
                }
            }
            SshDecision::Client => Route::Client,
            SshDecision::Deny => Route::Deny,
        }
    }

    /// The managed id `id`, if this policy lists it.
    pub fn managed(&self, id: &str) -> Option<Arc<ManagedId>> {
        self.ids.get(id).cloned()
    }
}

/// One ssh id the policy lists, and what has been loaded for it.
pub struct ManagedId {
    id: String,
    rule: SshRule,
    /// Broker-held keys, loaded on first use. A failed load is not cached: the next request
    /// tries the sources again (a keyring that was locked, a file that appeared).
    held: OnceCell<Arc<HeldKeys>>,
    /// `hosts` resolved against known_hosts, on first use (a reload reads the file again).
    hosts: OnceCell<Arc<AllowedHosts>>,
    /// Where `private_keys` and `passphrase` sources are resolved.
    sources: Arc<SourceRuntime>,
}

/// Why a managed id's agent cannot serve (CheckAgent's error, and every request's).
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// The upstream agent holds none of the keys the id may expose.
    #[error("the upstream agent at {path} holds none of the keys this id may expose ({allowed})")]
    NoAllowedKeys { path: String, allowed: String },
    #[error(transparent)]
    Keys(#[from] KeyLoadError),
    #[error(transparent)]
    Hosts(#[from] HostsError),
}

impl ManagedId {
    pub fn rule(&self) -> &SshRule {
        &self.rule
    }

    /// The broker-held keys (loading them on first use). Only for `private_keys` ids.
    pub async fn held_keys(&self) -> Result<Arc<HeldKeys>, KeyLoadError> {
        let SshKeys::Held {
            private_keys,
            passphrase,
        } = &self.rule.keys
        else {
            return Ok(Arc::new(HeldKeys::default()));
        };
        self.held
            .get_or_try_init(|| async {
                let keys =
                    HeldKeys::load(&self.id, private_keys, passphrase.as_ref(), &self.sources)
                        .await;
                // Keys are parsed, and boxed, on threads of their own (`held::build_key`), so
                // `load`'s frames below this one should hold none; scrubbed anyway, once per
                // load, in case a future change moves a key through them.
                crate::secret::scrub_stack();
                keys.map(Arc::new)
            })
            .await
            .cloned()
    }

    /// The hosts this id's keys may sign for, or `None` when the id has no constraints.
    pub async fn allowed_hosts(&self) -> Result<Option<Arc<AllowedHosts>>, HostsError> {
        if self.rule.hosts.is_empty() {
            return Ok(None);
        }
        self.hosts
            .get_or_try_init(|| async {
                hosts::load(&self.rule.hosts, self.rule.known_hosts.as_deref())
                    .await
                    .map(Arc::new)
            })
            .await
            .cloned()
            .map(Some)
    }

    /// `SSH/CheckAgent`: whether this id can serve now — the upstream agent answers and holds
    /// an allowed key, or every held key loads; and `hosts` resolves.
    pub async fn check(&self) -> Result<(), Unavailable> {
        match &self.rule.keys {
            SshKeys::Upstream { agent, allow } => {
                let mut upstream = upstream::UpstreamAgent::connect(agent).await?;
                let listed = upstream.identities().await?;
                if !listed
                    .iter()
                    .any(|i| upstream::exposes(allow, &i.credential, Some(&i.comment)))
                {
                    return Err(Unavailable::NoAllowedKeys {
                        path: upstream.path().display().to_string(),
                        allowed: allow
                            .iter()
                            .map(|m| m.to_string())
                            .collect::<Vec<_>>()
                            .join(", "),
                    });
                }
            }
            SshKeys::Held { .. } => {
                self.held_keys().await?;
            }
        }
        self.allowed_hosts().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
