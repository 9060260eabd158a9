//! The Linux kernel keyring (keyutils), via `linux-keyutils`.
//!
//! Scope, chosen deliberately: `buildbroker keyring set` adds the key to the user's
//! **persistent keyring** (it outlives login sessions, expiring only after
//! `/proc/sys/kernel/keys/persistent_keyring_expiry` seconds without use — 3 days by default —
//! or at reboot) and links it into the **user keyring** (`@u`, alive while any process of the
//! user runs). Lookups search the persistent keyring, then `@u`, then the session keyring. So a
//! value stored from a login shell is found by the same user's daemon started later by systemd
//! or a CI step, whose session keyring is a different one — and a value a user added by hand
//! with `keyctl add user keyring:ACCOUNT@SERVICE VALUE @u` is found too. Keys are per uid: the
//! daemon sees only its own user's keys.
//!
//! Two kernel details shape this. First, the persistent keyring is linked into our *process*
//! keyring, not the session keyring: asking for it with the session keyring as destination
//! makes a process on the default user-session keyring join a new anonymous session, after
//! which keys in `@u` are no longer "possessed" and their default permissions refuse to be
//! read. Second, outside the session that created it a key is read with its *user*
//! permissions, which `keyctl` leaves at view-only: `keyring set` grants the owner view, read
//! and search (0x3f0b0000), and the error for a hand-made key says how to do the same.

use linux_keyutils::{Key, KeyError, KeyPermissions, KeyRing, KeyRingIdentifier};

use super::{EntryInfo, KeyringBackend, KeyringSpec};
use crate::secret::SecretBytes;
use crate::source::{Lookup, SourceError};

/// Possessor: all; owner (user): view, read, search; group and others: nothing.
const OWNER_READABLE: u32 = 0x3f0b_0000;

/// The keyrings searched, in order, with the names users know them by.
fn keyrings() -> Vec<(&'static str, KeyRing)> {
    let mut out = Vec::new();
    if let Ok(p) = KeyRing::get_persistent(KeyRingIdentifier::Process) {
        out.push(("persistent keyring", p));
    }
    if let Ok(u) = KeyRing::from_special_id(KeyRingIdentifier::User, false) {
        out.push(("user keyring (@u)", u));
    }
    if let Ok(s) = KeyRing::from_special_id(KeyRingIdentifier::Session, false) {
        out.push(("session keyring (@s)", s));
    }
    out
}

fn find(spec: &KeyringSpec) -> Result<Option<(&'static str, Key)>, SourceError> {
    let description = spec.kernel_description();
    for (name, ring) in keyrings() {
        match ring.search(&description) {
            Ok(key) => return Ok(Some((name, key))),
            Err(
                KeyError::KeyDoesNotExist
                | KeyError::KeyExpired
                | KeyError::KeyRevoked
                | KeyError::KeyringDoesNotExist,
            ) => {}
            Err(KeyError::AccessDenied) => {
                return Err(SourceError::permanent(format!(
                    "permission denied reading {description:?} from the {name}: outside the session that made it, a key grants its owner only what its user permissions say (keyctl's default is view-only); from the session that added it run `keyctl setperm ID 0x3f0b0000` (`keyctl show @u` lists the ID), or store it with `buildbroker keyring set`"
                )));
            }
            Err(e) => {
                return Err(SourceError::transient(format!(
                    "searching the {name}: {e:?}"
                )));
            }
        }
    }
    Ok(None)
}

fn read(key: Key) -> Result<SecretBytes, SourceError> {
    key.read_to_vec()
        .map(SecretBytes::new)
        .map_err(|e| SourceError::permanent(format!("reading the key: {e:?}")))
}

pub fn lookup(spec: &KeyringSpec) -> Result<Lookup, SourceError> {
    match find(spec)? {
        Some((_, key)) => Ok(Lookup::Found(read(key)?)),
        None => Ok(Lookup::Missing(format!(
            "no kernel key {:?} in the persistent, user or session keyring",
            spec.kernel_description()
        ))),
    }
}

pub fn store(spec: &KeyringSpec, value: &SecretBytes) -> Result<(), SourceError> {
    let description = spec.kernel_description();
    let user = KeyRing::from_special_id(KeyRingIdentifier::User, true)
        .map_err(|e| SourceError::permanent(format!("cannot open the user keyring: {e:?}")))?;
    let key = match KeyRing::get_persistent(KeyRingIdentifier::Process) {
        Ok(persistent) => {
            let key = persistent
                .add_key(&description, value.expose())
                .map_err(|e| {
                    SourceError::permanent(format!("cannot add to the persistent keyring: {e:?}"))
                })?;
            user.link_key(key).map_err(|e| {
                SourceError::permanent(format!("cannot link into the user keyring: {e:?}"))
            })?;
            key
        }
        // Kernels without CONFIG_PERSISTENT_KEYRINGS: the user keyring alone.
        Err(_) => user.add_key(&description, value.expose()).map_err(|e| {
            SourceError::permanent(format!("cannot add to the user keyring: {e:?}"))
        })?,
    };
    key.set_perms(KeyPermissions::from_u32(OWNER_READABLE))
        .map_err(|e| SourceError::permanent(format!("cannot set the key's permissions: {e:?}")))?;
    Ok(())
}

pub fn info(spec: &KeyringSpec) -> Result<Option<EntryInfo>, SourceError> {
    let Some((name, key)) = find(spec)? else {
        return Ok(None);
    };
    let value = read(key)?;
    Ok(Some(EntryInfo {
        backend: KeyringBackend::Kernel,
        location: format!(
            "key {:?} (id {}) found in the {name}",
            spec.kernel_description(),
            key.get_id().0
        ),
        value,
    }))
}

pub fn delete(spec: &KeyringSpec) -> Result<usize, SourceError> {
    let mut removed = 0;
    // Invalidation removes a key from every keyring at once; repeat for keys of the same
    // description that live in several keyrings independently.
    while let Some((_, key)) = find(spec)? {
        key.invalidate()
            .map_err(|e| SourceError::permanent(format!("cannot remove the key: {e:?}")))?;
        removed += 1;
        if removed > 16 {
            break;
        }
    }
    Ok(removed)
}
