//! Destination constraints: which hosts a key may authenticate to, decided from the
//! `session-bind@openssh.com` bindings of one agent connection.
//!
//! An OpenSSH client (8.9+) that uses an agent first sends it `session-bind@openssh.com`: the
//! server's host key, the session identifier of the key exchange and the host's signature over
//! it (OpenSSH PROTOCOL.agent §1). The agent verifies the signature and records the binding for
//! the life of the connection; a later sign request must then be a user-authentication request
//! for that very session. This module mirrors what OpenSSH's own agent does with it
//! (ssh-agent.c: `process_ext_session_bind`, `identity_permitted`, `process_sign_request2`),
//! with one simplification: the policy's `hosts` is a plain set of allowed hosts, and every hop
//! of a forwarding chain must be in it (OpenSSH's constraints name from→to pairs instead).
//!
//! Everything here is pure: no I/O, table-tested in `ssh/tests.rs`.

use ssh_agent_lib::proto::extension::SessionBind;
use ssh_agent_lib::ssh_encoding::{Decode, Reader};
use ssh_key::public::KeyData;
use ssh_key::{Algorithm, HashAlg};

use super::hosts::AllowedHosts;

/// At most this many bindings per connection (`AGENT_MAX_SESSION_IDS` in ssh-agent.c).
pub const MAX_BINDINGS: usize = 16;
/// Longest session identifier accepted (`AGENT_MAX_SID_LEN` in ssh-agent.c).
pub const MAX_SESSION_ID_LEN: usize = 128;

/// `SSH2_MSG_USERAUTH_REQUEST` (RFC 4252 §5).
const MSG_USERAUTH_REQUEST: u8 = 50;

/// One verified `session-bind@openssh.com`.
#[derive(Debug, Clone)]
struct Binding {
    host_key: KeyData,
    session_id: Vec<u8>,
    /// Bound for agent forwarding (a hop) rather than for authentication (the destination).
    forwarding: bool,
}

/// The bindings of one agent connection.
#[derive(Debug, Default)]
pub struct Bindings {
    hops: Vec<Binding>,
    /// A bind was attempted: if none succeeded, constrained keys are refused outright.
    attempted: bool,
}

/// Why a `session-bind@openssh.com` was refused (the reply is `SSH_AGENT_EXTENSION_FAILURE`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BindRefused {
    /// Malformed or oversized session identifier.
    #[error("session identifier longer than {MAX_SESSION_ID_LEN} bytes")]
    SessionIdTooLong,
    /// The host key's signature over the session identifier does not verify: not a real
    /// key exchange with that host.
    #[error("the host key's signature over the session identifier does not verify")]
    BadSignature,
    /// OpenSSH never binds again after binding a connection for authentication.
    #[error("the connection is already bound for authentication")]
    AfterAuthentication,
    /// The same session identifier was bound to a different host key.
    #[error("session identifier already bound to a different host key")]
    SessionIdReused,
    #[error("more than {MAX_BINDINGS} bindings on one connection")]
    TooMany,
}

impl Bindings {
    /// Verifies and records one binding, as OpenSSH's `process_ext_session_bind`.
    pub fn bind(&mut self, bind: &SessionBind) -> Result<(), BindRefused> {
        self.attempted = true;
        if bind.session_id.len() > MAX_SESSION_ID_LEN {
            return Err(BindRefused::SessionIdTooLong);
        }
        bind.verify_signature()
            .map_err(|_| BindRefused::BadSignature)?;
        for hop in &self.hops {
            if !hop.forwarding {
                return Err(BindRefused::AfterAuthentication);
            }
            if hop.session_id == bind.session_id {
                return if hop.host_key == bind.host_key {
                    Ok(())
                } else {
                    Err(BindRefused::SessionIdReused)
                };
            }
        }
        if self.hops.len() >= MAX_BINDINGS {
            return Err(BindRefused::TooMany);
        }
        self.hops.push(Binding {
            host_key: bind.host_key.clone(),
            session_id: bind.session_id.clone(),
            forwarding: bind.is_forwarding,
        });
        Ok(())
    }

    /// The host this connection was last bound to (the destination, for audit records).
    pub fn last_host(&self) -> Option<&KeyData> {
        self.hops.last().map(|h| &h.host_key)
    }
}

/// Why a constrained key may not sign (or be listed) on this connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignRefused {
    /// No `session-bind@openssh.com` on this connection: the agent cannot know where the
    /// signature goes. OpenSSH's agent refuses constrained keys here too.
    #[error("the connection is not bound to a host (no session-bind@openssh.com)")]
    Unbound,
    #[error("the connection's session-bind@openssh.com failed")]
    BindFailed,
    /// The data is not an SSH user-authentication request for this key.
    #[error("the data to sign is not a user-authentication request for this key")]
    NotUserauth,
    #[error("the connection is bound for agent forwarding, not for authentication")]
    SignOnForwardingHop,
    #[error("an earlier hop was bound for authentication, not forwarding")]
    ForwardThroughAuthBind,
    /// A bound host (destination or forwarding hop) is not in the policy's `hosts`.
    #[error("host key {0} is not in this ssh id's hosts")]
    HostNotAllowed(String),
    /// The request's session identifier is not the one bound last: a replayed or foreign
    /// request.
    #[error("the request's session identifier is not the connection's bound session")]
    SessionMismatch,
    #[error("the request names no host key but the connection went through a forwarding hop")]
    NoHostkeyForwarded,
    #[error("the host key in the request is not the bound host's")]
    HostkeyMismatch,
}

/// Where a permitted signature goes, for the audit record: `SHA256:… (policy entry)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination(pub String);

/// Whether a constrained key may be listed on this connection: not after a failed bind, and
/// only when every bound hop is an allowed host. Unbound connections list it (as OpenSSH's
/// agent does for local use) but cannot sign with it.
pub fn permit_listing(hosts: &AllowedHosts, bindings: &Bindings) -> Result<(), SignRefused> {
    walk_hops(hosts, bindings, false).map(|_| ())
}

/// Whether a constrained key may sign `data` on this connection
/// (OpenSSH ssh-agent.c `process_sign_request2` for keys with destination constraints).
pub fn permit_sign(
    hosts: &AllowedHosts,
    bindings: &Bindings,
    key: &KeyData,
    data: &[u8],
) -> Result<Destination, SignRefused> {
    if bindings.hops.is_empty() {
        return Err(if bindings.attempted {
            SignRefused::BindFailed
        } else {
            SignRefused::Unbound
        });
    }
    let request = UserauthRequest::parse(data, key).ok_or(SignRefused::NotUserauth)?;
    let destination = walk_hops(hosts, bindings, true)?.expect("bindings are not empty");
    let last = bindings.hops.last().expect("bindings are not empty");
    // The session identifier is compared in full; both are public values (the exchange hash),
    // so a constant-time comparison is not needed here.
    if request.session_id != last.session_id {
        return Err(SignRefused::SessionMismatch);
    }
    match &request.host_key {
        None if bindings.hops.len() > 1 => return Err(SignRefused::NoHostkeyForwarded),
        Some(k) if *k != last.host_key => return Err(SignRefused::HostkeyMismatch),
        _ => {}
    }
    Ok(destination)
}

/// OpenSSH's `identity_permitted`: every hop but the last must be a forwarding bind, the last
/// (when signing) an authentication bind, and each hop's host must be allowed.
fn walk_hops(
    hosts: &AllowedHosts,
    bindings: &Bindings,
    signing: bool,
) -> Result<Option<Destination>, SignRefused> {
    if bindings.attempted && bindings.hops.is_empty() {
        return Err(SignRefused::BindFailed);
    }
    let mut destination = None;
    for (i, hop) in bindings.hops.iter().enumerate() {
        let last = i + 1 == bindings.hops.len();
        if last && signing && hop.forwarding {
            return Err(SignRefused::SignOnForwardingHop);
        }
        if !last && !hop.forwarding {
            return Err(SignRefused::ForwardThroughAuthBind);
        }
        let fingerprint = hop.host_key.fingerprint(HashAlg::Sha256);
        let Some(label) = hosts.label_for(&hop.host_key) else {
            return Err(SignRefused::HostNotAllowed(fingerprint.to_string()));
        };
        if last {
            destination = Some(Destination(format!("{fingerprint} ({label})")));
        }
    }
    Ok(destination)
}

/// The parts of an SSH user-authentication request (RFC 4252 §7) that the checks need, as
/// OpenSSH's `parse_userauth_request` reads them:
///
/// ```text
/// string session identifier; byte SSH_MSG_USERAUTH_REQUEST; string user; string service;
/// string "publickey" | "publickey-hostbound-v00@openssh.com"; boolean TRUE;
/// string algorithm; string public key; [string host key, for the hostbound method]
/// ```
#[derive(Debug)]
struct UserauthRequest {
    session_id: Vec<u8>,
    host_key: Option<KeyData>,
}

/// The request as it is on the wire, before the checks against the signing key.
struct RawUserauth {
    session_id: Vec<u8>,
    message: u8,
    service: String,
    method: String,
    signature_follows: u8,
    algorithm: String,
    key: KeyData,
    host_key: Option<KeyData>,
}

impl Decode for RawUserauth {
    type Error = ssh_key::Error;

    fn decode(reader: &mut impl Reader) -> Result<Self, Self::Error> {
        let session_id = Vec::<u8>::decode(reader)?;
        let message = u8::decode(reader)?;
        let _user = String::decode(reader)?;
        let service = String::decode(reader)?;
        let method = String::decode(reader)?;
        let signature_follows = u8::decode(reader)?;
        let algorithm = String::decode(reader)?;
        let key = reader.read_prefixed(KeyData::decode)?;
        let host_key = if method == "publickey-hostbound-v00@openssh.com" {
            Some(reader.read_prefixed(KeyData::decode)?)
        } else {
            None
        };
        Ok(RawUserauth {
            session_id,
            message,
            service,
            method,
            signature_follows,
            algorithm,
            key,
            host_key,
        })
    }
}

impl UserauthRequest {
    /// The request if `data` is a well-formed public-key authentication request for `key`.
    fn parse(data: &[u8], key: &KeyData) -> Option<UserauthRequest> {
        let mut reader = data;
        let raw = RawUserauth::decode(&mut reader).ok()?;
        let same_family = Algorithm::new(&raw.algorithm)
            .is_ok_and(|a| std::mem::discriminant(&a) == std::mem::discriminant(&key.algorithm()));
        let well_formed = reader.is_finished()
            && !raw.session_id.is_empty()
            && raw.message == MSG_USERAUTH_REQUEST
            && raw.signature_follows == 1
            && raw.service == "ssh-connection"
            && (raw.method == "publickey" || raw.host_key.is_some())
            && raw.key == *key
            && same_family;
        well_formed.then_some(UserauthRequest {
            session_id: raw.session_id,
            host_key: raw.host_key,
        })
    }
}
