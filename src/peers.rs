//! Who is connected right now: every live connection (Engine API and agent sockets) with its
//! peer credentials and a token that ends it, and every open session, counted per peer uid.
//!
//! This is what enforces `[limits] connections_per_uid` and `sessions_per_uid` (one uid cannot
//! exhaust the daemon's descriptors or the engine's sessions for everyone), and what makes a
//! SIGHUP that removes a uid from `[access]` take effect on connections already open: after a
//! reload every live peer is checked again and the refused ones are cancelled. It never keeps
//! a connection alive: a [`ConnectionSlot`] or [`SessionSlot`] is released when dropped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use crate::access::PeerInfo;

/// A uid already holds as many connections or sessions as `[limits]` allows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "buildbroker: uid {uid} already has {limit} open {what}, the most [limits] {key} allows; close some or raise the limit in the policy"
)]
pub struct LimitReached {
    pub uid: u32,
    pub limit: usize,
    pub what: &'static str,
    pub key: &'static str,
}

/// The live connections and sessions of the daemon. Cheap to clone; clones share the table.
#[derive(Clone, Default)]
pub struct LivePeers {
    inner: Arc<Mutex<Table>>,
}

#[derive(Default)]
struct Table {
    next_id: u64,
    connections: HashMap<u64, LiveConnection>,
    connections_per_uid: HashMap<u32, usize>,
    sessions_per_uid: HashMap<u32, usize>,
}

struct LiveConnection {
    peer: PeerInfo,
    groups: Arc<[u32]>,
    /// Cancelled when the peer loses its access; ends the connection and what it opened.
    revoke: CancellationToken,
    /// The slot's [`ConnectionSlot::revoked`], cancelled with `revoke`.
    revoke_streams: CancellationToken,
}

/// A registered connection; dropping it releases the uid's count.
pub struct ConnectionSlot {
    peers: LivePeers,
    id: u64,
    uid: u32,
    /// Cancelled when the peer is revoked (or, being a child of it, when the daemon stops):
    /// ends the connection's request loop (gracefully when the daemon stops).
    pub token: CancellationToken,
    /// Cancelled only when the peer is revoked, never when the daemon stops: what a build is
    /// using (upgraded streams, sessions, Control relays) ends at once when its peer loses
    /// access, but runs on through a SIGTERM drain until it ends or the drain timeout.
    pub revoked: CancellationToken,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut t = self.peers.lock();
        t.connections.remove(&self.id);
        release(&mut t.connections_per_uid, self.uid);
    }
}

/// An open session counted against its uid; dropping it releases the count.
pub struct SessionSlot {
    peers: LivePeers,
    uid: u32,
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        release(&mut self.peers.lock().sessions_per_uid, self.uid);
    }
}

fn release(counts: &mut HashMap<u32, usize>, uid: u32) {
    if let Some(n) = counts.get_mut(&uid) {
        *n -= 1;
        if *n == 0 {
            counts.remove(&uid);
        }
    }
}

/// One peer cut off by [`LivePeers::revoke_refused`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revoked {
    pub peer: PeerInfo,
}

impl LivePeers {
    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a connection of `peer` unless its uid already holds `limit`. The slot's token
    /// is a child of `parent` (the daemon's shutdown).
    pub fn admit(
        &self,
        peer: PeerInfo,
        groups: Vec<u32>,
        limit: usize,
        parent: &CancellationToken,
    ) -> Result<ConnectionSlot, LimitReached> {
        let uid = peer.uid;
        let mut t = self.lock();
        let count = t.connections_per_uid.entry(uid).or_insert(0);
        if *count >= limit {
            return Err(LimitReached {
                uid: peer.uid,
                limit,
                what: "connections",
                key: "connections_per_uid",
            });
        }
        *count += 1;
        let id = t.next_id;
        t.next_id += 1;
        let token = parent.child_token();
        let revoked = CancellationToken::new();
        t.connections.insert(
            id,
            LiveConnection {
                peer,
                groups: groups.into(),
                revoke: token.clone(),
                revoke_streams: revoked.clone(),
            },
        );
        Ok(ConnectionSlot {
            peers: self.clone(),
            id,
            uid,
            token,
            revoked,
        })
    }

    /// Counts a session of `uid` unless it already holds `limit`.
    pub fn open_session(&self, uid: u32, limit: usize) -> Result<SessionSlot, LimitReached> {
        let mut t = self.lock();
        let count = t.sessions_per_uid.entry(uid).or_insert(0);
        if *count >= limit {
            return Err(LimitReached {
                uid,
                limit,
                what: "sessions",
                key: "sessions_per_uid",
            });
        }
        *count += 1;
        Ok(SessionSlot {
            peers: self.clone(),
            uid,
        })
    }

    /// Cancels every live connection whose peer `allowed` now refuses, and returns them.
    pub fn revoke_refused(&self, allowed: impl Fn(&PeerInfo, &[u32]) -> bool) -> Vec<Revoked> {
        let t = self.lock();
        let mut out = Vec::new();
        for conn in t.connections.values() {
            if !conn.revoke_streams.is_cancelled() && !allowed(&conn.peer, &conn.groups) {
                conn.revoke.cancel();
                conn.revoke_streams.cancel();
                out.push(Revoked {
                    peer: conn.peer.clone(),
                });
            }
        }
        out
    }

    /// Open connections of `uid` (for logs and tests).
    pub fn connections_of(&self, uid: u32) -> usize {
        self.lock()
            .connections_per_uid
            .get(&uid)
            .copied()
            .unwrap_or(0)
    }

    /// Open sessions of `uid` (for logs and tests).
    pub fn sessions_of(&self, uid: u32) -> usize {
        self.lock().sessions_per_uid.get(&uid).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(uid: u32) -> PeerInfo {
        PeerInfo {
            uid,
            gid: uid,
            pid: Some(1),
            client: crate::access::ClientId::Uid(uid),
        }
    }

    #[test]
    fn the_cap_counts_per_uid_and_frees_on_drop() {
        let peers = LivePeers::default();
        let root = CancellationToken::new();
        let a1 = peers.admit(peer(1000), vec![], 2, &root).unwrap();
        let _a2 = peers.admit(peer(1000), vec![], 2, &root).unwrap();
        let refused = peers.admit(peer(1000), vec![], 2, &root).err().unwrap();
        assert_eq!(refused.uid, 1000);
        assert!(
            refused.to_string().contains("connections_per_uid"),
            "{refused}"
        );
        // Another uid is not affected.
        let _b = peers.admit(peer(1001), vec![], 2, &root).unwrap();
        assert_eq!(peers.connections_of(1000), 2);
        drop(a1);
        assert_eq!(peers.connections_of(1000), 1);
        let _a3 = peers.admit(peer(1000), vec![], 2, &root).unwrap();
    }

    #[test]
    fn sessions_are_capped_separately() {
        let peers = LivePeers::default();
        let s1 = peers.open_session(7, 1).unwrap();
        let e = peers.open_session(7, 1).err().unwrap();
        assert!(e.to_string().contains("sessions_per_uid"), "{e}");
        assert!(peers.open_session(8, 1).is_ok());
        drop(s1);
        assert_eq!(peers.sessions_of(7), 0);
        assert!(peers.open_session(7, 1).is_ok());
    }

    #[test]
    fn revocation_cancels_only_the_refused_peers() {
        let peers = LivePeers::default();
        let root = CancellationToken::new();
        let keep = peers.admit(peer(1000), vec![27], 10, &root).unwrap();
        let lose = peers.admit(peer(1001), vec![], 10, &root).unwrap();
        let revoked = peers.revoke_refused(|p, groups| p.uid == 1000 || groups.contains(&27));
        assert_eq!(revoked, vec![Revoked { peer: peer(1001) }]);
        assert!(lose.token.is_cancelled());
        assert!(!keep.token.is_cancelled());
        assert!(!root.is_cancelled(), "revocation never stops the daemon");
        // Shutdown still reaches every connection.
        root.cancel();
        assert!(keep.token.is_cancelled());
    }
}
