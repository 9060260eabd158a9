//! Who may connect: unix peer credentials (SO_PEERCRED), or the identity of a verified TLS
//! client certificate, checked against `[access]`; and who a caller is ([`ClientId`]) for the
//! per-id `clients` lists of `[secrets.<id>]` and `[ssh.<id>]`.
//!
//! The Docker API is root-equivalent, so this is the broker's front door. Root and the uid the
//! daemon runs as are always allowed (they can reach the engine socket anyway). `[access] gids`
//! match the peer's primary gid and its supplementary groups, as the kernel holds them for the
//! connecting process (see [`supplementary_groups`]). Nothing here ever allows a peer whose
//! groups cannot be read through a group it might have: unreadable groups count as none.
//! A TLS client is never taken for a unix peer or the other way round: identities are typed
//! ([`ClientId`], [`ClientMatch`]), never compared as strings across kinds.

use crate::config::Access;

/// Who a caller is: a unix peer by uid, a TLS client by its certificate's identity, or a
/// client of a plain tcp listener (`insecure_tcp`), who has no identity at all.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ClientId {
    Uid(u32),
    /// The first SAN DNS name of the verified client certificate, else its subject CN
    /// (`crate::tls::identity_of`; never starts with `uid:`).
    Tls(std::sync::Arc<str>),
    InsecureTcp,
}

impl std::fmt::Display for ClientId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientId::Uid(uid) => write!(f, "uid:{uid}"),
            ClientId::Tls(name) => f.write_str(name),
            ClientId::InsecureTcp => f.write_str("tcp:insecure"),
        }
    }
}

/// One entry of a `clients` list: `uid:N` for a unix peer, anything else a TLS identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMatch {
    Uid(u32),
    Tls(String),
}

impl ClientMatch {
    pub fn parse(text: &str) -> Result<ClientMatch, String> {
        if let Some(n) = text.strip_prefix("uid:") {
            return n.parse().map(ClientMatch::Uid).map_err(|_| {
                format!("expected uid:N with a numeric uid, such as \"uid:1000\"; got {text:?}")
            });
        }
        if text.is_empty() || text.trim() != text {
            return Err(format!(
                "expected a TLS client identity (the certificate's SAN DNS name or subject CN) or \"uid:N\"; got {text:?}"
            ));
        }
        Ok(ClientMatch::Tls(text.to_string()))
    }

    fn matches(&self, client: &ClientId) -> bool {
        match (self, client) {
            (ClientMatch::Uid(a), ClientId::Uid(b)) => a == b,
            (ClientMatch::Tls(a), ClientId::Tls(b)) => a.as_str() == &**b,
            _ => false,
        }
    }
}

/// Whether `client` may have an id whose rule has `clients` (`None`: every caller may).
pub fn client_listed(clients: Option<&[ClientMatch]>, client: &ClientId) -> bool {
    clients.is_none_or(|list| list.iter().any(|m| m.matches(client)))
}

/// The uid recorded for callers that are not unix peers (TLS and plain tcp clients): the
/// kernel's "no uid" `(uid_t)-1`, which no process has, so no `[access] uids` entry or
/// `uid:N` can match it. Their `[limits]` per-uid counts are shared under it.
pub const NO_UID: u32 = u32::MAX;

/// The credentials of a connected peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// The unix peer's uid, or [`NO_UID`] for a tcp client.
    pub uid: u32,
    pub gid: u32,
    /// The unix peer's pid; `None` for a tcp client.
    pub pid: Option<i32>,
    /// Who the caller is, for `[access] clients`, per-id `clients` and the audit.
    pub client: ClientId,
}

impl PeerInfo {
    pub fn of(stream: &tokio::net::UnixStream) -> std::io::Result<PeerInfo> {
        let cred = stream.peer_cred()?;
        Ok(PeerInfo {
            uid: cred.uid(),
            gid: cred.gid(),
            pid: cred.pid(),
            client: ClientId::Uid(cred.uid()),
        })
    }

    /// A tcp client: `identity` from its verified certificate, or `None` on a plain
    /// (`insecure_tcp`) listener.
    pub fn tcp(identity: Option<&str>) -> PeerInfo {
        PeerInfo {
            uid: NO_UID,
            gid: NO_UID,
            pid: None,
            client: identity.map_or(ClientId::InsecureTcp, |i| ClientId::Tls(i.into())),
        }
    }
}

/// Proof that a peer passed the access check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permit {
    pub peer: PeerInfo,
}

/// Why a peer was refused; the message is what the peer is told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error(
        "buildbroker: uid {uid} (gid {gid}) is not allowed to use this socket; add it to [access] uids or gids in the policy"
    )]
    Unix { uid: u32, gid: u32 },
    #[error(
        "buildbroker: client certificate identity {identity:?} is not in [access] clients of the policy; add it there, or connect with a certificate issued for a listed identity"
    )]
    Client { identity: String },
}

/// Whether `peer` (with its supplementary `groups`) may connect under `access`. A TLS client
/// (its certificate already verified against `[server.tls] client_ca`) is checked against
/// `[access] clients` when the policy sets it, else allowed; a plain tcp client exists only
/// on a loopback `insecure_tcp` listener the policy asked for, and is allowed.
pub fn check_peer(
    access: &Access,
    daemon_uid: u32,
    peer: &PeerInfo,
    groups: &[u32],
) -> Result<Permit, Refused> {
    match &peer.client {
        ClientId::Tls(identity) => {
            return match &access.clients {
                Some(list) if !list.iter().any(|c| c.as_str() == &**identity) => {
                    Err(Refused::Client {
                        identity: identity.to_string(),
                    })
                }
                _ => Ok(Permit { peer: peer.clone() }),
            };
        }
        ClientId::InsecureTcp => return Ok(Permit { peer: peer.clone() }),
        ClientId::Uid(_) => {}
    }
    let allowed = peer.uid == 0
        || peer.uid == daemon_uid
        || access.uids.contains(&peer.uid)
        || access.gids.contains(&peer.gid)
        || groups.iter().any(|g| access.gids.contains(g));
    if allowed {
        Ok(Permit { peer: peer.clone() })
    } else {
        Err(Refused::Unix {
            uid: peer.uid,
            gid: peer.gid,
        })
    }
}

/// The supplementary groups of a connected peer, from the `Groups:` line of
/// `/proc/<pid>/status` of the pid `SO_PEERCRED` reported.
///
/// Why /proc rather than getgrouplist(3) for the peer's user name: /proc is what the kernel
/// actually holds for the connecting process. A user added to `docker` who has not logged in
/// again, or a process that dropped its groups (`setpriv --clear-groups`, a sandbox), has no
/// such group and must not pass as if it had; getgrouplist would also need NSS inside the
/// daemon. The pid is checked against the peer's uid (the `Uid:` line's effective uid), so a
/// pid reused by another user's process yields no groups. (`SO_PEERGROUPS` would be exact, but
/// rustix does not offer it and this crate has no unsafe code.) No pid (a peer in another pid
/// namespace) or an unreadable file: no supplementary groups, only the primary gid counts.
pub fn supplementary_groups(peer: &PeerInfo) -> Vec<u32> {
    let Some(pid) = peer.pid.filter(|p| *p > 0) else {
        return Vec::new();
    };
    match std::fs::read_to_string(format!("/proc/{pid}/status")) {
        Ok(text) => groups_from_status(&text, peer.uid).unwrap_or_default(),
        Err(_) => Vec::new(),
    }
}

/// The `Groups:` of a `/proc/<pid>/status` text whose effective uid is `uid`.
fn groups_from_status(status: &str, uid: u32) -> Option<Vec<u32>> {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
    };
    let euid: u32 = field("Uid:")?.split_whitespace().nth(1)?.parse().ok()?;
    if euid != uid {
        return None;
    }
    field("Groups:")?
        .split_whitespace()
        .map(|g| g.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(uid: u32, gid: u32) -> PeerInfo {
        PeerInfo {
            uid,
            gid,
            pid: Some(42),
            client: ClientId::Uid(uid),
        }
    }

    #[test]
    fn access_table() {
        let access = Access {
            uids: vec![1000],
            gids: vec![999],
            clients: None,
        };
        // (daemon uid, peer uid, peer gid, allowed)
        let table = [
            (0, 0, 0, true),          // root always
            (0, 1000, 1000, true),    // listed uid
            (0, 1001, 999, true),     // listed gid
            (0, 65534, 65534, false), // nobody
            (1001, 1001, 1001, true), // the daemon's own user
            (1001, 1002, 1002, false),
        ];
        for (daemon, uid, gid, allowed) in table {
            let got = check_peer(&access, daemon, &peer(uid, gid), &[]);
            assert_eq!(got.is_ok(), allowed, "daemon {daemon} peer {uid}:{gid}");
        }
    }

    #[test]
    fn refusal_names_the_uid_and_the_fix() {
        let e = check_peer(&Access::default(), 0, &peer(65534, 65534), &[]).unwrap_err();
        let m = e.to_string();
        assert!(m.contains("uid 65534"), "{m}");
        assert!(m.contains("[access]"), "{m}");
    }

    #[test]
    fn a_supplementary_group_counts_like_the_primary_one() {
        let access = Access {
            uids: vec![],
            gids: vec![999],
            clients: None,
        };
        assert!(check_peer(&access, 0, &peer(1001, 1001), &[]).is_err());
        assert!(check_peer(&access, 0, &peer(1001, 1001), &[27, 999]).is_ok());
        assert!(check_peer(&access, 0, &peer(1001, 1001), &[27, 998]).is_err());
    }

    #[test]
    fn tls_clients_are_checked_against_access_clients() {
        let tls = |name: &str| PeerInfo::tcp(Some(name));
        let open = Access::default();
        assert!(
            check_peer(&open, 0, &tls("ci-a"), &[]).is_ok(),
            "no list: any verified certificate"
        );
        let listed = Access {
            clients: Some(vec!["ci-a".into()]),
            ..Access::default()
        };
        assert!(check_peer(&listed, 0, &tls("ci-a"), &[]).is_ok());
        let e = check_peer(&listed, 0, &tls("ci-b"), &[]).unwrap_err();
        assert!(
            e.to_string()
                .contains("\"ci-b\" is not in [access] clients"),
            "{e}"
        );
        // A tcp client never passes as root or the daemon's uid through NO_UID.
        assert!(check_peer(&listed, NO_UID, &tls("ci-b"), &[]).is_err());
    }

    #[test]
    fn client_lists_match_by_kind() {
        let list = [
            ClientMatch::parse("ci-a").unwrap(),
            ClientMatch::parse("uid:1000").unwrap(),
        ];
        let tls = |n: &str| ClientId::Tls(n.into());
        assert!(client_listed(Some(&list), &tls("ci-a")));
        assert!(!client_listed(Some(&list), &tls("ci-b")));
        assert!(client_listed(Some(&list), &ClientId::Uid(1000)));
        assert!(!client_listed(Some(&list), &ClientId::Uid(0)));
        assert!(!client_listed(Some(&list), &ClientId::InsecureTcp));
        assert!(client_listed(None, &ClientId::InsecureTcp));
        // A certificate named "uid:1000" (refused by tls::identity_of anyway) is still a TLS
        // identity, not the unix uid.
        assert!(!client_listed(Some(&list), &tls("uid:1000")));
        assert!(ClientMatch::parse("uid:x").is_err());
        assert!(ClientMatch::parse("").is_err());
        assert!(ClientMatch::parse(" ci-a").is_err());
        assert_eq!(ClientId::Uid(7).to_string(), "uid:7");
    }

    #[test]
    fn groups_come_from_the_status_of_the_same_user() {
        let status = "Name:\tdocker\nUid:\t1000\t1000\t1000\t1000\nGid:\t1000\t1000\t1000\t1000\nGroups:\t4 27 999 \n";
        assert_eq!(groups_from_status(status, 1000), Some(vec![4, 27, 999]));
        // A pid now used by another user's process: its groups are not the peer's.
        assert_eq!(groups_from_status(status, 1001), None);
        let none = "Uid:\t5\t5\t5\t5\nGroups:\t\n";
        assert_eq!(groups_from_status(none, 5), Some(vec![]));
        assert_eq!(
            groups_from_status("Uid:\t5\t5\t5\t5\nGroups:\tx\n", 5),
            None
        );
    }

    #[test]
    fn this_process_has_its_groups_read() {
        let me = PeerInfo {
            uid: rustix::process::geteuid().as_raw(),
            gid: rustix::process::getegid().as_raw(),
            pid: Some(std::process::id() as i32),
            client: ClientId::Uid(rustix::process::geteuid().as_raw()),
        };
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        assert_eq!(
            supplementary_groups(&me),
            groups_from_status(&status, me.uid).unwrap()
        );
    }
}
