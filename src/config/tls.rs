//! The policy's TLS and client-identity settings: `[server.tls]` (mutual TLS on tcp
//! listeners), `[upstream_tls]` and `[buildkit_upstream_tls]` (TLS towards a tcp upstream),
//! `[server] insecure_tcp`, and the `clients` lists of `[access]`, `[secrets.<id>]` and
//! `[ssh.<id>]`.
//!
//! Like the rest of `config`, nothing here reads a certificate or key file: `crate::tls` loads
//! them when the daemon starts and on SIGHUP. Paths are checked to be absolute (after `~/`).

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::{Collector, Endpoint, HostEnv};
use crate::access::ClientMatch;

/// `[server.tls]`: the files of a tcp listener's mutual TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsServerFiles {
    /// The server certificate chain (PEM), leaf first.
    pub cert: PathBuf,
    /// Its private key (PEM: PKCS#8, RSA or EC).
    pub key: PathBuf,
    /// The CA (PEM) every client certificate must chain to; clients without one are refused.
    pub client_ca: PathBuf,
}

/// `[upstream_tls]` / `[buildkit_upstream_tls]`: TLS towards a tcp upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsClientFiles {
    /// The CA the upstream's certificate must chain to (`ca.pem` of a DOCKER_CERT_PATH).
    pub ca: PathBuf,
    /// The client certificate to present (`cert.pem`), with `key`; both or neither.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// The name checked in the upstream's certificate; else the host of the upstream URL.
    pub server_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServerTls {
    cert: Option<Spanned<String>>,
    key: Option<Spanned<String>>,
    client_ca: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawClientTls {
    ca: Option<Spanned<String>>,
    cert: Option<Spanned<String>>,
    key: Option<Spanned<String>>,
    server_name: Option<Spanned<String>>,
}

fn path(
    value: &Spanned<String>,
    table: &str,
    key: &str,
    env: &HostEnv,
    c: &mut Collector<'_>,
) -> Option<PathBuf> {
    let p = crate::source::expand_home(value.get_ref(), env.home.as_deref());
    if p.is_absolute() {
        Some(p)
    } else {
        c.push(
            value.span(),
            format!(
                "{table} {key}: expected an absolute path (or one starting with ~/); got {:?}",
                value.get_ref()
            ),
        );
        None
    }
}

/// Checks `[server.tls]`; `at` locates errors about the table as a whole.
pub(super) fn check_server(
    raw: &Spanned<RawServerTls>,
    env: &HostEnv,
    c: &mut Collector<'_>,
) -> Option<TlsServerFiles> {
    let table = "[server.tls]";
    let need = |value: &Option<Spanned<String>>, key: &str, c: &mut Collector<'_>| match value {
        Some(v) => path(v, table, key, env, c),
        None => {
            c.push(
                raw.span(),
                format!("{table}: expected {key} = \"/path/to/file.pem\" (cert, key and client_ca are all required: client certificates are always verified)"),
            );
            None
        }
    };
    let r = raw.get_ref();
    let cert = need(&r.cert, "cert", c);
    let key = need(&r.key, "key", c);
    let client_ca = need(&r.client_ca, "client_ca", c);
    Some(TlsServerFiles {
        cert: cert?,
        key: key?,
        client_ca: client_ca?,
    })
}

/// Checks `[upstream_tls]` or `[buildkit_upstream_tls]` (named `table`).
pub(super) fn check_client(
    raw: &Spanned<RawClientTls>,
    table: &str,
    env: &HostEnv,
    c: &mut Collector<'_>,
) -> Option<TlsClientFiles> {
    let r = raw.get_ref();
    let ca = match &r.ca {
        Some(v) => path(v, table, "ca", env, c),
        None => {
            c.push(
                raw.span(),
                format!("{table}: expected ca = \"/path/to/ca.pem\", the CA the upstream's certificate must chain to"),
            );
            None
        }
    };
    let cert = r.cert.as_ref().and_then(|v| path(v, table, "cert", env, c));
    let key = r.key.as_ref().and_then(|v| path(v, table, "key", env, c));
    match (&r.cert, &r.key) {
        (Some(v), None) => c.push(
            v.span(),
            format!("{table}: cert needs key (the client certificate's private key)"),
        ),
        (None, Some(v)) => c.push(
            v.span(),
            format!("{table}: key needs cert (the client certificate)"),
        ),
        _ => {}
    }
    let server_name = r.server_name.as_ref().and_then(|v| {
        match rustls::pki_types::ServerName::try_from(v.get_ref().as_str()) {
            Ok(_) => Some(v.get_ref().clone()),
            Err(_) => {
                c.push(
                    v.span(),
                    format!(
                        "{table} server_name: expected a DNS name or IP address; got {:?}",
                        v.get_ref()
                    ),
                );
                None
            }
        }
    });
    Some(TlsClientFiles {
        ca: ca?,
        cert,
        key,
        server_name,
    })
}

/// Checks one `tcp://` listen address: an IP address and port (a host name would be resolved
/// once at start and could bind somewhere else than meant), served with `[server.tls]`, or
/// plain only when `insecure_tcp = true` and the address is loopback.
pub(super) fn check_tcp_listen(
    value: &Spanned<String>,
    hostport: &str,
    key: &str,
    has_tls: bool,
    insecure_tcp: bool,
    c: &mut Collector<'_>,
) -> bool {
    let Ok(addr) = hostport.parse::<SocketAddr>() else {
        c.push(
            value.span(),
            format!("[server] {key}: expected tcp://IP:PORT with an IP address, such as tcp://0.0.0.0:2376 or tcp://[::1]:2376; got {:?}", value.get_ref()),
        );
        return false;
    };
    if has_tls {
        return true;
    }
    if !insecure_tcp {
        c.push(
            value.span(),
            format!("[server] {key}: {} needs mutual TLS: add [server.tls] with cert, key and client_ca (the Docker and BuildKit APIs are root-equivalent; anyone who reaches the port would own the engine). For a loopback-only test setup, [server] insecure_tcp = true serves it without TLS", value.get_ref()),
        );
        return false;
    }
    if !addr.ip().is_loopback() {
        c.push(
            value.span(),
            format!("[server] {key}: insecure_tcp = true serves plain tcp only on a loopback address (127.0.0.1 or ::1); {addr} is not one. Add [server.tls] to serve it with mutual TLS"),
        );
        return false;
    }
    true
}

/// A `clients` list of `[secrets.<id>]` or `[ssh.<id>]` (`table`): TLS identities or `uid:N`.
pub(super) fn check_clients(
    raw: &Spanned<Vec<Spanned<String>>>,
    table: &str,
    c: &mut Collector<'_>,
) -> Vec<ClientMatch> {
    if raw.get_ref().is_empty() {
        c.push(
            raw.span(),
            format!("{table} clients: an empty list would refuse this id to everyone; list TLS identities or \"uid:N\", or remove the key to serve every allowed caller"),
        );
    }
    raw.get_ref()
        .iter()
        .filter_map(|entry| match ClientMatch::parse(entry.get_ref()) {
            Ok(m) => Some(m),
            Err(m) => {
                c.push(entry.span(), format!("{table} clients: {m}"));
                None
            }
        })
        .collect()
}

/// `[access] clients`: TLS identities only (unix peers are `[access] uids`/`gids`).
pub(super) fn check_access_clients(
    raw: &Spanned<Vec<Spanned<String>>>,
    c: &mut Collector<'_>,
) -> Vec<String> {
    raw.get_ref()
        .iter()
        .filter_map(|entry| match ClientMatch::parse(entry.get_ref()) {
            Ok(ClientMatch::Tls(name)) => Some(name),
            Ok(ClientMatch::Uid(_)) => {
                c.push(
                    entry.span(),
                    format!("[access] clients: {:?} names a unix peer; [access] clients lists TLS client identities, unix peers go in [access] uids", entry.get_ref()),
                );
                None
            }
            Err(m) => {
                c.push(entry.span(), format!("[access] clients: {m}"));
                None
            }
        })
        .collect()
}

/// The upstream's TLS settings must go with a tcp:// upstream.
pub(super) fn check_upstream_pair(
    upstream: Option<&Endpoint>,
    raw: Option<&Spanned<RawClientTls>>,
    table: &str,
    key: &str,
    c: &mut Collector<'_>,
) {
    if let (Some(raw), Some(Endpoint::Unix(_))) = (raw, upstream) {
        c.push(
            raw.span(),
            format!("{table}: [server] {key} is a unix socket, so TLS settings do not apply; remove {table} or use a tcp:// {key}"),
        );
    }
}
