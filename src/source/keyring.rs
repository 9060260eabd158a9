//! `keyring:SERVICE/ACCOUNT` — the OS keyring: the freedesktop Secret Service (GNOME Keyring,
//! KWallet) or the Linux kernel keyring (keyutils), which is what headless CI hosts have.
//!
//! Entries are addressed the way the `keyring` crate family addresses them, so values stored by
//! keyring-rs applications, `secret-tool store service S username A` or `buildbroker keyring
//! set` are all found: Secret Service items by the attributes `service` and `username`, kernel
//! keys by the description `keyring:ACCOUNT@SERVICE`.
//!
//! The backend is the policy's `[keyring] backend`: `secret-service`, `kernel`, or `auto`
//! (Secret Service when a session bus answers, else the kernel keyring). We talk to the two
//! backends through the crates keyring-rs itself uses (`secret-service`, `linux-keyutils`)
//! rather than through keyring-rs's blocking `Entry` API, because that API asks the Secret
//! Service to *unlock* locked items — a prompt that never completes on a headless daemon. Here
//! a locked collection is a clear error, never a prompt, and every call is bounded by
//! `[keyring] timeout` — the whole call, including the wait for the shared connection.
//!
//! One Secret Service connection is shared by all requests, and D-Bus calls on it run
//! concurrently: the lock guards only taking (or opening) the connection, never a call, so a
//! hung keyring daemon makes each request wait for its own timeout, not for everyone queued
//! before it.

mod kernel;
mod secret_service;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::Mutex;

use super::{Lookup, SourceError, SourceSettings};
use crate::secret::SecretBytes;

/// `SERVICE/ACCOUNT`: the service holds no `/`; the account is everything after the first one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyringSpec {
    pub service: String,
    pub account: String,
}

impl KeyringSpec {
    pub fn parse(rest: &str) -> Result<KeyringSpec, String> {
        match rest.split_once('/') {
            Some((service, account)) if !service.is_empty() && !account.is_empty() => {
                Ok(KeyringSpec {
                    service: service.to_string(),
                    account: account.to_string(),
                })
            }
            _ => Err(format!(
                "expected keyring:SERVICE/ACCOUNT, as in keyring:buildbroker/pypi_token; got \"keyring:{rest}\""
            )),
        }
    }

    /// The kernel key description keyring-rs uses: `keyring:ACCOUNT@SERVICE`.
    pub fn kernel_description(&self) -> String {
        format!("keyring:{}@{}", self.account, self.service)
    }
}

impl fmt::Display for KeyringSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.service, self.account)
    }
}

/// Which keyring `keyring:` sources read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyringBackend {
    /// The Secret Service when a session bus answers, else the kernel keyring.
    Auto,
    SecretService,
    Kernel,
}

impl fmt::Display for KeyringBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyringBackend::Auto => "auto",
            KeyringBackend::SecretService => "Secret Service",
            KeyringBackend::Kernel => "kernel keyring",
        })
    }
}

/// What `buildbroker keyring get-info` shows about an entry: where it lives, and the value,
/// which the command turns into a length and a keyed fingerprint and never prints.
pub struct EntryInfo {
    pub backend: KeyringBackend,
    /// Where it lives: the kernel keyring that holds it, or the Secret Service item's label and
    /// attributes.
    pub location: String,
    pub value: SecretBytes,
}

/// The keyring state shared by requests: one Secret Service connection, kept while it works.
#[derive(Default)]
pub struct KeyringRuntime {
    /// Held only to take a clone of the connection or to open one (so concurrent first
    /// requests open one connection, not many); never across a call on it.
    secret_service: Mutex<Option<Arc<secret_service::Connection>>>,
}

impl KeyringRuntime {
    pub async fn lookup(
        &self,
        spec: &KeyringSpec,
        settings: &SourceSettings,
    ) -> Result<Lookup, SourceError> {
        match self.backend_for(settings).await? {
            KeyringBackend::Kernel => kernel::lookup(spec),
            _ => {
                self.with_secret_service(settings, async |conn| {
                    secret_service::lookup(conn, spec).await
                })
                .await
            }
        }
    }

    /// Stores `value` where `lookup` finds it.
    pub async fn store(
        &self,
        spec: &KeyringSpec,
        value: &SecretBytes,
        settings: &SourceSettings,
    ) -> Result<KeyringBackend, SourceError> {
        match self.backend_for(settings).await? {
            KeyringBackend::Kernel => kernel::store(spec, value).map(|()| KeyringBackend::Kernel),
            _ => self
                .with_secret_service(settings, async |conn| {
                    secret_service::store(conn, spec, value).await
                })
                .await
                .map(|()| KeyringBackend::SecretService),
        }
    }

    pub async fn info(
        &self,
        spec: &KeyringSpec,
        settings: &SourceSettings,
    ) -> Result<Option<EntryInfo>, SourceError> {
        match self.backend_for(settings).await? {
            KeyringBackend::Kernel => kernel::info(spec),
            _ => {
                self.with_secret_service(settings, async |conn| {
                    secret_service::info(conn, spec).await
                })
                .await
            }
        }
    }

    /// Removes every matching entry; returns how many were removed.
    pub async fn delete(
        &self,
        spec: &KeyringSpec,
        settings: &SourceSettings,
    ) -> Result<usize, SourceError> {
        match self.backend_for(settings).await? {
            KeyringBackend::Kernel => kernel::delete(spec),
            _ => {
                self.with_secret_service(settings, async |conn| {
                    secret_service::delete(conn, spec).await
                })
                .await
            }
        }
    }

    /// Resolves `auto`: the Secret Service if a session bus is configured and the service
    /// answers within the timeout, else the kernel keyring.
    pub async fn backend_for(
        &self,
        settings: &SourceSettings,
    ) -> Result<KeyringBackend, SourceError> {
        match settings.keyring_backend {
            KeyringBackend::Auto => {
                if !secret_service::session_bus_configured() {
                    return Ok(KeyringBackend::Kernel);
                }
                match tokio::time::timeout(settings.keyring_timeout, self.connection()).await {
                    Ok(Ok(_)) => Ok(KeyringBackend::SecretService),
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "no Secret Service on the session bus; using the kernel keyring");
                        Ok(KeyringBackend::Kernel)
                    }
                    Err(_) => {
                        tracing::debug!(
                            "the Secret Service did not answer in time; using the kernel keyring"
                        );
                        Ok(KeyringBackend::Kernel)
                    }
                }
            }
            forced => Ok(forced),
        }
    }

    /// The shared connection, opened on first use. The lock is held while opening, so a
    /// caller waits here for someone else's open: callers bound this with their timeout.
    async fn connection(&self) -> Result<Arc<secret_service::Connection>, SourceError> {
        let mut slot = self.secret_service.lock().await;
        if let Some(conn) = slot.as_ref() {
            return Ok(conn.clone());
        }
        let conn = Arc::new(secret_service::Connection::open().await?);
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// Forgets the connection a failed call used (if it is still the shared one) so the next
    /// request opens afresh. A call that never got one (it timed out opening, or waiting for
    /// someone else's open) has nothing to forget. Never waits: if someone holds the lock, they
    /// are opening a new connection already.
    fn forget(&self, failed: Option<&Arc<secret_service::Connection>>) {
        let Some(failed) = failed else { return };
        if let Ok(mut slot) = self.secret_service.try_lock()
            && slot
                .as_ref()
                .is_some_and(|current| Arc::ptr_eq(current, failed))
        {
            *slot = None;
        }
    }

    /// Runs one Secret Service operation on the shared connection (opened on first use).
    /// The keyring timeout bounds all of it: the wait for the connection, opening it, and the
    /// call. A failed or timed-out operation drops the connection so the next request starts
    /// afresh.
    async fn with_secret_service<T>(
        &self,
        settings: &SourceSettings,
        op: impl AsyncFnOnce(&secret_service::Connection) -> Result<T, SourceError>,
    ) -> Result<T, SourceError> {
        let timeout = settings.keyring_timeout;
        let mut used: Option<Arc<secret_service::Connection>> = None;
        let work = async {
            let conn = self.connection().await?;
            used = Some(conn.clone());
            op(&conn).await
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                if e.transient {
                    self.forget(used.as_ref());
                }
                Err(e)
            }
            Err(_) => {
                self.forget(used.as_ref());
                Err(SourceError::transient(format!(
                    "the Secret Service did not answer within {}; is the keyring daemon hung? (set [keyring] timeout or backend = \"kernel\")",
                    humantime::format_duration(timeout)
                )))
            }
        }
    }
}

/// The default bound on keyring calls.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_parse_and_description() {
        let s = KeyringSpec::parse("buildbroker/pypi_token").unwrap();
        assert_eq!(s.service, "buildbroker");
        assert_eq!(s.account, "pypi_token");
        assert_eq!(s.kernel_description(), "keyring:pypi_token@buildbroker");
        assert_eq!(s.to_string(), "buildbroker/pypi_token");
        let nested = KeyringSpec::parse("ci/team/a").unwrap();
        assert_eq!(
            (nested.service.as_str(), nested.account.as_str()),
            ("ci", "team/a")
        );
        for bad in ["", "svc", "svc/", "/acct"] {
            assert!(KeyringSpec::parse(bad).is_err(), "{bad:?}");
        }
    }
}
