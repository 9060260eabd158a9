//! Who may connect: unix peer credentials (SO_PEERCRED) checked against `[access]`.
//!
//! The Docker API is root-equivalent, so this is the broker's front door. Root and the uid the
//! daemon runs as are always allowed (they can reach the engine socket anyway). `[access] gids`
//! match the peer's primary gid and its supplementary groups, as the kernel holds them for the
//! connecting process (see [`supplementary_groups`]). Nothing here ever allows a peer whose
//! groups cannot be read through a group it might have: unreadable groups count as none.

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

/// Whether `peer` (with its supplementary `groups`) may connect under `access`.
pub fn check_peer(
    access: &Access,
    daemon_uid: u32,
    peer: PeerInfo,
    groups: &[u32],
) -> Result<Permit, Refused> {
    let allowed = peer.uid == 0
        || peer.uid == daemon_uid
        || access.uids.contains(&peer.uid)
        || access.gids.contains(&peer.gid)
        || groups.iter().any(|g| access.gids.contains(g));
    if allowed {
        Ok(Permit { peer })
    } else {
        Err(Refused {
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
            let got = check_peer(&access, daemon, peer(uid, gid), &[]);
            assert_eq!(got.is_ok(), allowed, "daemon {daemon} peer {uid}:{gid}");
        }
    }

    #[test]
    fn refusal_names_the_uid_and_the_fix() {
        let e = check_peer(&Access::default(), 0, peer(65534, 65534), &[]).unwrap_err();
        let m = e.to_string();
        assert!(m.contains("uid 65534"), "{m}");
        assert!(m.contains("[access]"), "{m}");
    }

    #[test]
    fn a_supplementary_group_counts_like_the_primary_one() {
        let access = Access {
            uids: vec![],
            gids: vec![999],
        };
        assert!(check_peer(&access, 0, peer(1001, 1001), &[]).is_err());
        assert!(check_peer(&access, 0, peer(1001, 1001), &[27, 999]).is_ok());
        assert!(check_peer(&access, 0, peer(1001, 1001), &[27, 998]).is_err());
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
        };
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        assert_eq!(
            supplementary_groups(&me),
            groups_from_status(&status, me.uid).unwrap()
        );
    }
}
