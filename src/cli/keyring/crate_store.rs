//! `keyring set|get-info|delete` on the Secret Service through the `keyring` crate family
//! (`keyring-core` with its zbus Secret Service store, the store the `keyring` crate uses on
//! Linux), because at this CLI an interactive unlock prompt is the right behaviour: the store
//! unlocks a locked collection or item through the desktop's prompt. The daemon's own reader
//! (`crate::source::keyring::secret_service`) never prompts.
//!
//! Items are addressed by the attributes `service` and `username` and nothing else (no
//! `target` modifier), which are exactly the attributes the daemon's reader searches for, so an
//! item written here is the item a `keyring:SERVICE/ACCOUNT` source finds.
//!
//! The kernel keyring is not served through this family: its keyutils store keeps keys in the
//! session keyring with keyutils' default permissions, where a daemon started later by systemd or
//! a CI step (another session) cannot read them; `crate::source::keyring::kernel` writes where the
//! daemon reads instead (its module comment says why).
//!
//! The crate's calls are blocking: they run on a blocking thread, bounded by the caller.

use std::collections::HashMap;
use std::sync::Arc;

use keyring_core::{CredentialStore, Entry, Error};
use zeroize::Zeroize;

use crate::secret::SecretBytes;
use crate::source::keyring::EntryInfo;
use crate::source::{KeyringBackend, KeyringSpec};

/// A Secret Service store on the session bus.
pub struct Store {
    store: Arc<CredentialStore>,
}

impl Store {
    pub fn open() -> Result<Store, String> {
        let store = zbus_secret_service_keyring_store::Store::new()
            .map_err(|e| format!("cannot reach the Secret Service: {}", describe(e)))?;
        Ok(Store { store })
    }

    fn entry(&self, spec: &KeyringSpec) -> Result<Entry, String> {
        let label = format!("buildbroker: keyring:{spec}");
        let modifiers = HashMap::from([("label", label.as_str())]);
        Entry::new_in_store_with_modifiers(&self.store, &spec.service, &spec.account, &modifiers)
            .map_err(|e| format!("cannot address keyring:{spec}: {}", describe(e)))
    }

    /// Stores `value`, replacing the value of the one matching item if there is one.
    pub fn set(&self, spec: &KeyringSpec, value: &SecretBytes) -> Result<(), String> {
        let entry = self.entry(spec)?;
        match entry.set_secret(value.expose()) {
            Ok(()) => Ok(()),
            Err(Error::Ambiguous(found)) => Err(format!(
                "{} Secret Service items match service={} username={}; remove them with `buildbroker keyring delete {spec}` and store again",
                found.len(),
                spec.service,
                spec.account
            )),
            Err(e) => Err(describe(e)),
        }
    }

    /// The value and where it lives, or `None` when no item matches. With several matches the
    /// first is reported (the daemon's reader also takes the first the service returns).
    pub fn info(&self, spec: &KeyringSpec) -> Result<Option<EntryInfo>, String> {
        let entry = match self.entry(spec)?.get_credential() {
            Ok(entry) => entry,
            Err(Error::NoEntry) => return Ok(None),
            Err(Error::Ambiguous(mut found)) => found.swap_remove(0),
            Err(e) => return Err(describe(e)),
        };
        let mut raw = match entry.get_secret() {
            Ok(raw) => raw,
            Err(Error::NoEntry) => return Ok(None),
            Err(e) => return Err(describe(e)),
        };
        let mut value = SecretBytes::with_capacity(raw.len());
        value.buffer_mut().extend_from_slice(&raw);
        raw.zeroize();
        let mut attributes: Vec<String> = entry
            .get_attributes()
            .map_err(describe)?
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        attributes.sort();
        Ok(Some(EntryInfo {
            backend: KeyringBackend::SecretService,
            location: format!("item with {}", attributes.join(", ")),
            value,
        }))
    }

    /// Removes every matching item; returns how many.
    pub fn delete(&self, spec: &KeyringSpec) -> Result<usize, String> {
        let entry = self.entry(spec)?;
        match entry.delete_credential() {
            Ok(()) => Ok(1),
            Err(Error::NoEntry) => Ok(0),
            Err(Error::Ambiguous(found)) => {
                let n = found.len();
                for one in found {
                    one.delete_credential().map_err(describe)?;
                }
                Ok(n)
            }
            Err(e) => Err(describe(e)),
        }
    }
}

/// The error's own text, except for the variants that carry secret bytes: those are zeroized
/// and replaced by a fixed message.
fn describe(e: Error) -> String {
    match e {
        Error::BadEncoding(mut bytes) => {
            bytes.zeroize();
            "the stored value is not in the expected encoding".into()
        }
        Error::BadDataFormat(mut bytes, _) => {
            bytes.zeroize();
            "the stored value is not in the format the store expects".into()
        }
        Error::NoStorageAccess(inner) => format!(
            "the Secret Service refused access (a locked collection whose unlock prompt was dismissed or could not be shown?): {inner}"
        ),
        other => other.to_string(),
    }
}
