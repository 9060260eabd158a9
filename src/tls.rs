//! TLS for buildbroker's tcp listeners and tcp upstreams, with rustls (the ring provider).
//!
//! A tcp listener is the Docker API (or the BuildKit API) to anyone who can reach the port, so
//! it speaks only mutual TLS: [`TlsAcceptor`] requires a client certificate and verifies it
//! against `[server.tls] client_ca` (webpki's `WebPkiClientVerifier`), bounds the handshake by
//! [`HANDSHAKE_TIMEOUT`] so a client that stalls cannot hold a task, and names the client by
//! its verified certificate ([`identity_of`]: the first SAN DNS name, else the subject CN).
//! Its certificates are re-read on SIGHUP ([`TlsAcceptor::reload`]); new connections use the
//! new ones, and a file that does not load leaves the old ones in force. [`TlsConnector`] is
//! the client side, for a tcp upstream (`[upstream_tls]`, `[buildkit_upstream_tls]`).
//!
//! This module never accepts a connection whose certificate did not verify, never derives an
//! identity from an unverified certificate, and never logs or returns private key bytes (the
//! key file's content goes straight to rustls).

use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::config::{TlsClientFiles, TlsServerFiles};

/// How long a client gets to complete the TLS handshake after its tcp connection is accepted.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A TLS file that cannot be used; the message names the file and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Missing, unreadable, or not PEM of the expected kind.
    #[error("{what} {path}: {message}")]
    File {
        what: &'static str,
        path: String,
        message: String,
    },
    /// The files load but rustls refuses them together (a key that does not match the
    /// certificate, a CA file with no usable certificate).
    #[error("{context}: {message}")]
    Config {
        context: &'static str,
        message: String,
    },
}

/// Why an accepted tcp connection did not become a TLS client with an identity.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    /// The client sent nothing (or not enough) within [`HANDSHAKE_TIMEOUT`].
    #[error("the TLS handshake did not complete within {0:?}")]
    Timeout(Duration),
    /// Not TLS, a certificate that did not verify (unknown CA, expired, wrong usage), or none.
    #[error("TLS handshake failed: {0}")]
    Handshake(std::io::Error),
    /// A verified certificate without a name buildbroker can use as an identity.
    #[error("{0}")]
    Identity(#[from] IdentityError),
}

/// A verified client certificate that names no usable identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error(
        "the client certificate has neither a subjectAltName DNS name nor a subject CN to use as its identity"
    )]
    NoName,
    /// `uid:N` names unix peers in policy lists; a certificate must not pass as one.
    #[error(
        "the client certificate's identity {0:?} starts with \"uid:\", which names unix peers in the policy; issue it with another name"
    )]
    Reserved(String),
    #[error("the client certificate could not be read: {0}")]
    Malformed(String),
}

/// The server side of mutual TLS for tcp listeners; cheap to share, reloadable.
pub struct TlsAcceptor {
    config: RwLock<Arc<ServerConfig>>,
    /// ALPN protocols offered (empty for the Docker API, which Go's client speaks without ALPN;
    /// `h2` for a gRPC listener).
    alpn: Vec<Vec<u8>>,
}

impl TlsAcceptor {
    /// Loads `[server.tls]`: the server certificate chain, its key, and the CA that client
    /// certificates must chain to.
    pub fn load(files: &TlsServerFiles, alpn: Vec<Vec<u8>>) -> Result<TlsAcceptor, TlsError> {
        let config = server_config(files, &alpn)?;
        Ok(TlsAcceptor {
            config: RwLock::new(config),
            alpn,
        })
    }

    /// Reads the files again; on success new connections use them, on failure the old ones
    /// stay in force and the error says why.
    pub fn reload(&self, files: &TlsServerFiles) -> Result<(), TlsError> {
        let next = server_config(files, &self.alpn)?;
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = next;
        Ok(())
    }

    /// Runs the handshake on `stream` (bounded by [`HANDSHAKE_TIMEOUT`]) and returns the TLS
    /// stream with the client's identity.
    pub async fn accept<S>(
        &self,
        stream: S,
    ) -> Result<(tokio_rustls::server::TlsStream<S>, String), AcceptError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        self.accept_within(stream, HANDSHAKE_TIMEOUT).await
    }

    /// [`Self::accept`] with another bound (for tests and benchmarks).
    pub async fn accept_within<S>(
        &self,
        stream: S,
        limit: Duration,
    ) -> Result<(tokio_rustls::server::TlsStream<S>, String), AcceptError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let (tls, identity) = self.handshake(stream, limit).await?;
        Ok((tls, identity?))
    }

    /// The handshake alone: a client whose verified certificate names no usable identity still
    /// gets its TLS stream back (with the reason), so the endpoint can tell it why in its own
    /// protocol (the Docker API's 403 JSON) instead of dropping the connection.
    pub async fn handshake<S>(
        &self,
        stream: S,
        limit: Duration,
    ) -> Result<
        (
            tokio_rustls::server::TlsStream<S>,
            Result<String, IdentityError>,
        ),
        AcceptError,
    >
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let config = self
            .config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let tls = match tokio::time::timeout(limit, acceptor.accept(stream)).await {
            Err(_) => return Err(AcceptError::Timeout(limit)),
            Ok(Err(e)) => return Err(AcceptError::Handshake(e)),
            Ok(Ok(tls)) => tls,
        };
        // The verifier requires a certificate, so a completed handshake always has one; an
        // absent chain is still refused rather than assumed.
        let identity = match tls.get_ref().1.peer_certificates() {
            Some([leaf, ..]) => identity_of(leaf),
            _ => Err(IdentityError::NoName),
        };
        Ok((tls, identity))
    }
}

/// The client side of TLS towards a tcp upstream (an engine on 2376, a buildkitd).
#[derive(Clone)]
pub struct TlsConnector {
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
}

impl std::fmt::Debug for TlsConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConnector")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl TlsConnector {
    /// Loads the CA that the upstream's certificate must chain to and, if given, the client
    /// certificate and key to present. The name checked in the server's certificate is
    /// `server_name` if set, else `host` (an IP address is checked as one).
    pub fn load(
        files: &TlsClientFiles,
        host: &str,
        alpn: Vec<Vec<u8>>,
    ) -> Result<TlsConnector, TlsError> {
        let roots = root_store(&files.ca, "CA file")?;
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| config_error("TLS client settings", e))?
            .with_root_certificates(roots);
        let mut config = match (&files.cert, &files.key) {
            (Some(cert), Some(key)) => builder
                .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
                .map_err(|e| config_error("client certificate and key", e))?,
            _ => builder.with_no_client_auth(),
        };
        config.alpn_protocols = alpn;
        let name = files.server_name.as_deref().unwrap_or(host);
        let name = name.trim_start_matches('[').trim_end_matches(']');
        let server_name = ServerName::try_from(name.to_string()).map_err(|e| TlsError::Config {
            context: "server_name",
            message: format!("{name:?} is not a DNS name or IP address: {e}"),
        })?;
        Ok(TlsConnector {
            config: Arc::new(config),
            server_name,
        })
    }

    /// Runs the client handshake on `stream`, bounded by [`HANDSHAKE_TIMEOUT`].
    pub async fn connect<S>(&self, stream: S) -> std::io::Result<tokio_rustls::client::TlsStream<S>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let connector = tokio_rustls::TlsConnector::from(self.config.clone());
        match tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            connector.connect(self.server_name.clone(), stream),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("the TLS handshake did not complete within {HANDSHAKE_TIMEOUT:?}"),
            )),
        }
    }
}

/// The connector for a tcp upstream with TLS settings (`[upstream_tls]`, and for the BuildKit
/// endpoint's dial `[buildkit_upstream_tls]` with `alpn = [b"h2"]`): `None` when the upstream
/// is not tcp or has no TLS settings (plain).
pub fn upstream_connector(
    upstream: &crate::config::Endpoint,
    files: Option<&TlsClientFiles>,
    alpn: Vec<Vec<u8>>,
) -> Option<Result<TlsConnector, TlsError>> {
    let (crate::config::Endpoint::Tcp(hostport), Some(files)) = (upstream, files) else {
        return None;
    };
    let host = hostport
        .rsplit_once(':')
        .map_or(hostport.as_str(), |(h, _)| h);
    Some(TlsConnector::load(files, host, alpn))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn config_error(context: &'static str, e: impl std::fmt::Display) -> TlsError {
    TlsError::Config {
        context,
        message: e.to_string(),
    }
}

fn server_config(files: &TlsServerFiles, alpn: &[Vec<u8>]) -> Result<Arc<ServerConfig>, TlsError> {
    let roots = root_store(&files.client_ca, "[server.tls] client_ca")?;
    // No CA names in the CertificateRequest: Go's client (docker, buildx) sends a certificate
    // only when its issuer is among the names given, so with hints a certificate from another
    // CA would never be sent and the client could only say "certificate required"; without
    // them it sends it, and learns "unknown certificate authority".
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .clear_root_hint_subjects()
        .build()
        .map_err(|e| config_error("[server.tls] client_ca", e))?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| config_error("TLS server settings", e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(load_certs(&files.cert)?, load_key(&files.key)?)
        .map_err(|e| config_error("[server.tls] cert and key", e))?;
    config.alpn_protocols = alpn.to_vec();
    Ok(Arc::new(config))
}

fn root_store(path: &Path, what: &'static str) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs_as(path, what)? {
        roots.add(cert).map_err(|e| TlsError::File {
            what,
            path: path.display().to_string(),
            message: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(roots)
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    load_certs_as(path, "certificate file")
}

fn load_certs_as(
    path: &Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let fail = |message: String| TlsError::File {
        what,
        path: path.display().to_string(),
        message,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| fail(pem_message(e)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(pem_message(e)))?;
    if certs.is_empty() {
        return Err(fail(
            "no PEM certificate (-----BEGIN CERTIFICATE-----) in it".into(),
        ));
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    // The error says only what kind of problem the file has, never its content.
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::File {
        what: "key file",
        path: path.display().to_string(),
        message: match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                "no PEM private key (PKCS#8, RSA or EC) in it".into()
            }
            other => pem_message(other),
        },
    })
}

fn pem_message(e: rustls::pki_types::pem::Error) -> String {
    match e {
        rustls::pki_types::pem::Error::Io(io) => io.to_string(),
        other => format!("not valid PEM: {other:?}"),
    }
}

/// The identity of a verified client certificate: its first subjectAltName DNS name, else its
/// subject's common name. Names starting with `uid:` are refused (they name unix peers).
pub fn identity_of(cert: &CertificateDer<'_>) -> Result<String, IdentityError> {
    let parsed = webpki::EndEntityCert::try_from(cert)
        .map_err(|e| IdentityError::Malformed(e.to_string()))?;
    let name = match parsed.valid_dns_names().next() {
        Some(dns) => dns.to_string(),
        None => common_name(parsed.subject()).ok_or(IdentityError::NoName)?,
    };
    if name.starts_with("uid:") {
        return Err(IdentityError::Reserved(name));
    }
    Ok(name)
}

/// The first `commonName` (2.5.4.3) of a DER `Name`'s content (RFC 5280 §4.1.2.6: a SEQUENCE
/// OF RelativeDistinguishedName, each a SET OF AttributeTypeAndValue), if it is a UTF8String,
/// PrintableString or IA5String.
fn common_name(name: &[u8]) -> Option<String> {
    const CN: &[u8] = &[0x55, 0x04, 0x03];
    let mut rdns = name;
    while !rdns.is_empty() {
        let (tag, set, rest) = der_tlv(rdns)?;
        rdns = rest;
        if tag != 0x31 {
            return None;
        }
        let mut atvs = set;
        while !atvs.is_empty() {
            let (tag, atv, rest) = der_tlv(atvs)?;
            atvs = rest;
            if tag != 0x30 {
                return None;
            }
            let (oid_tag, oid, value) = der_tlv(atv)?;
            if oid_tag != 0x06 || oid != CN {
                continue;
            }
            let (value_tag, value, _) = der_tlv(value)?;
            return match value_tag {
                0x0c | 0x13 | 0x16 => std::str::from_utf8(value).ok().map(str::to_string),
                _ => None,
            };
        }
    }
    None
}

/// One DER tag-length-value: (tag, value, the bytes after it). Only definite lengths (DER).
fn der_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | *b as usize);
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

#[cfg(test)]
mod tests;
