//! Who may connect: unix peer credentials (SO_PEERCRED) checked against `[access]`.
//!
//! The Docker API is root-equivalent, so this is the broker's front door. Root and the uid the
//! daemon runs as are always allowed (they can reach the engine socket anyway).

use crate::config::Access;

/// The credentials of a connected unix peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerInfo {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
}

impl PeerInfo {
    pub fn of(stream: &tokio::net::UnixStream) -> std::io::Result<PeerInfo> {
        let cred = stream.peer_cred()?;
        Ok(PeerInfo {
            uid: cred.uid(),
            gid: cred.gid(),
            pid: cred.pid(),
        })
    }
}

/// Proof that a peer passed the access check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Permit {
    pub peer: PeerInfo,
}

/// Why a peer was refused; the message is what the peer is told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "buildbroker: uid {uid} (gid {gid}) is not allowed to use this socket; add it to [access] uids or gids in the policy"
)]
pub struct Refused {
    pub uid: u32,
    pub gid: u32,
}

pub fn check_peer(access: &Access, daemon_uid: u32, peer: PeerInfo) -> Result<Permit, Refused> {
    let allowed = peer.uid == 0
        || peer.uid == daemon_uid
        || access.uids.contains(&peer.uid)
        || access.gids.contains(&peer.gid);
    if allowed {
        Ok(Permit { peer })
    } else {
        Err(Refused {
            uid: peer.uid,
            gid: peer.gid,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(uid: u32, gid: u32) -> PeerInfo {
        PeerInfo {
            uid,
            gid,
            pid: Some(42),
        }
    }

    #[test]
    fn access_table() {
        let access = Access {
            uids: vec![1000],
            gids: vec![999],
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
            let got = check_peer(&access, daemon, peer(uid, gid));
            assert_eq!(got.is_ok(), allowed, "daemon {daemon} peer {uid}:{gid}");
        }
    }

    #[test]
    fn refusal_names_the_uid_and_the_fix() {
        let e = check_peer(&Access::default(), 0, peer(65534, 65534)).unwrap_err();
        let m = e.to_string();
        assert!(m.contains("uid 65534"), "{m}");
        assert!(m.contains("[access]"), "{m}");
    }
}
