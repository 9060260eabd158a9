//! The freedesktop Secret Service over D-Bus (GNOME Keyring, KWallet), via the `secret-service`
//! crate on tokio. Items are found by the attributes `service` and `username`, as keyring-rs
//! and `secret-tool` use them. Locked items are reported, never unlocked: unlocking prompts.

use std::collections::HashMap;

use secret_service::{EncryptionType, SecretService};

use super::{EntryInfo, KeyringBackend, KeyringSpec};
use crate::secret::SecretBytes;
use crate::source::{Lookup, SourceError};

/// An open session with the Secret Service (DH-encrypted transfer of values).
pub struct Connection {
    service: SecretService<'static>,
}

/// Whether a session bus address can be found (zbus looks in the same two places).
pub fn session_bus_configured() -> bool {
    std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_some_and(|v| !v.is_empty())
        || std::env::var_os("XDG_RUNTIME_DIR")
            .is_some_and(|d| std::path::Path::new(&d).join("bus").exists())
}

impl Connection {
    pub async fn open() -> Result<Connection, SourceError> {
        match SecretService::connect(EncryptionType::Dh).await {
            Ok(service) => Ok(Connection { service }),
            Err(e) => Err(SourceError::transient(format!(
                "cannot reach the Secret Service on the session bus ({e}); start gnome-keyring-daemon (or KWallet) in this session, or set [keyring] backend = \"kernel\""
            ))),
        }
    }
}

fn attributes(spec: &KeyringSpec) -> HashMap<&str, &str> {
    HashMap::from([
        ("service", spec.service.as_str()),
        ("username", spec.account.as_str()),
    ])
}

fn failed(action: &str, e: secret_service::Error) -> SourceError {
    match e {
        secret_service::Error::Locked => locked(),
        secret_service::Error::NoResult => {
            SourceError::permanent(format!("{action}: the Secret Service has no such item"))
        }
        other => SourceError::transient(format!("{action}: {other}")),
    }
}

fn locked() -> SourceError {
    SourceError::permanent(
        "the Secret Service collection holding it is locked; unlock it (log in to the desktop session, or run `gnome-keyring-daemon --unlock` in a headless one) — buildbroker never prompts",
    )
}

pub async fn lookup(conn: &Connection, spec: &KeyringSpec) -> Result<Lookup, SourceError> {
    let found = conn
        .service
        .search_items(attributes(spec))
        .await
        .map_err(|e| failed("searching the Secret Service", e))?;
    if let Some(item) = found.unlocked.first() {
        let value = item
            .get_secret()
            .await
            .map_err(|e| failed("reading the Secret Service item", e))?;
        return Ok(Lookup::Found(SecretBytes::new(value)));
    }
    if !found.locked.is_empty() {
        return Err(locked());
    }
    Ok(Lookup::Missing(format!(
        "no Secret Service item with service={:?} username={:?}",
        spec.service, spec.account
    )))
}

pub async fn store(
    conn: &Connection,
    spec: &KeyringSpec,
    value: &SecretBytes,
) -> Result<(), SourceError> {
    let collection = conn
        .service
        .get_default_collection()
        .await
        .map_err(|e| failed("opening the default Secret Service collection", e))?;
    if collection
        .is_locked()
        .await
        .map_err(|e| failed("checking the collection", e))?
    {
        return Err(locked());
    }
    let content_type = if std::str::from_utf8(value.expose()).is_ok() {
        "text/plain"
    } else {
        "application/octet-stream"
    };
    collection
        .create_item(
            &format!("buildbroker: {spec}"),
            attributes(spec),
            value.expose(),
            true,
            content_type,
        )
        .await
        .map_err(|e| failed("storing the item", e))?;
    Ok(())
}

pub async fn info(conn: &Connection, spec: &KeyringSpec) -> Result<Option<EntryInfo>, SourceError> {
    let found = conn
        .service
        .search_items(attributes(spec))
        .await
        .map_err(|e| failed("searching the Secret Service", e))?;
    let Some(item) = found.unlocked.first() else {
        return if found.locked.is_empty() {
            Ok(None)
        } else {
            Err(locked())
        };
    };
    let value = SecretBytes::new(
        item.get_secret()
            .await
            .map_err(|e| failed("reading the item", e))?,
    );
    let label = item
        .get_label()
        .await
        .map_err(|e| failed("reading the label", e))?;
    let mut attrs: Vec<(String, String)> = item
        .get_attributes()
        .await
        .map_err(|e| failed("reading the attributes", e))?
        .into_iter()
        .collect();
    attrs.sort();
    let attrs = attrs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ");
    Ok(Some(EntryInfo {
        backend: KeyringBackend::SecretService,
        location: format!("item {label:?} ({attrs})"),
        value,
    }))
}

pub async fn delete(conn: &Connection, spec: &KeyringSpec) -> Result<usize, SourceError> {
    let found = conn
        .service
        .search_items(attributes(spec))
        .await
        .map_err(|e| failed("searching the Secret Service", e))?;
    if !found.locked.is_empty() {
        return Err(locked());
    }
    for item in &found.unlocked {
        item.delete()
            .await
            .map_err(|e| failed("deleting the item", e))?;
    }
    Ok(found.unlocked.len())
}
