//! Rebuilds the files of one FileSync `DiffCopy` response stream (tonistiigi/fsutil `send.go`)
//! from the bytes of its gRPC DATA frames, as they pass: used on the `dir-name: dockerfile`
//! stream only, to read the Dockerfile the daemon receives (design.md §7).
//!
//! The build client (the gRPC server of `DiffCopy`) sends `STAT` packets, numbered from 0 in the
//! order sent, then an empty `STAT`; the daemon asks `REQ{ID}` for the files it does not hold
//! yet, and the client answers `DATA{ID, chunk}` packets ending with an empty `DATA`.
//!
//! Pure and bounded: no I/O, and it never keeps more than [`MAX_FILE`] bytes per file or
//! [`MAX_MESSAGE`] of one partial gRPC message. Input it cannot follow (compressed or oversized
//! messages, undecodable packets) ends the decoding with a reason, never a panic: the stream
//! itself is relayed untouched whatever this decoder thinks of it.

use std::collections::BTreeMap;

use prost::Message;

use crate::proto::fsutil::{Packet, PacketType};

/// The largest file rebuilt; real Dockerfiles are a few KiB. A bigger one is reported as not
/// read, so the policy's `dockerfile_unseen` decides for it.
pub const MAX_FILE: usize = 2 * 1024 * 1024;
/// The largest gRPC message followed; fsutil's DATA chunks are 32 KiB.
pub const MAX_MESSAGE: usize = 4 * 1024 * 1024;

/// One file whose bytes arrived whole (its empty `DATA` was seen).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncedFile {
    /// The path as the `STAT` named it, relative to the synced directory.
    pub path: String,
    pub data: Vec<u8>,
}

#[derive(Debug, Default)]
struct Entry {
    path: String,
    mode: u32,
    data: Vec<u8>,
    /// Data arrived for it (the daemon requested it).
    requested: bool,
    too_big: bool,
}

/// The decoding state of one response stream.
#[derive(Debug, Default)]
pub struct FileSyncDecoder {
    /// Bytes of a gRPC message not yet complete.
    pending: Vec<u8>,
    entries: BTreeMap<u32, Entry>,
    next_id: u32,
    stats_done: bool,
    failure: Option<String>,
}

impl FileSyncDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Why decoding stopped, if it did.
    pub fn failure(&self) -> Option<&str> {
        self.failure.as_deref()
    }

    /// Feeds the next bytes of the response body; returns the files completed by them.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Vec<SyncedFile> {
        let mut done = Vec::new();
        while self.failure.is_none() && !bytes.is_empty() {
            // Fill the 5-byte gRPC header, then the message it announces.
            let want = match self.message_len() {
                None => 5,
                Some(len) => 5 + len,
            };
            let take = (want - self.pending.len()).min(bytes.len());
            self.pending.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.pending.len() == 5 {
                if self.pending[0] != 0 {
                    self.fail("a compressed gRPC message");
                    break;
                }
                if self.message_len().is_some_and(|l| l > MAX_MESSAGE) {
                    self.fail("a gRPC message over the size this reader follows");
                    break;
                }
            }
            if self.pending.len() >= 5 && Some(self.pending.len() - 5) == self.message_len() {
                let message = std::mem::take(&mut self.pending);
                if let Some(file) = self.packet(&message[5..]) {
                    done.push(file);
                }
            }
        }
        done
    }

    /// The files that arrived over [`MAX_FILE`] bytes, and so were not kept.
    pub fn oversized(&self) -> Vec<&str> {
        self.entries
            .values()
            .filter(|e| e.too_big)
            .map(|e| e.path.as_str())
            .collect()
    }

    /// The STAT paths whose data never arrived: files the daemon already held (its copy from an
    /// earlier sync of the same directory) and so did not ask for.
    pub fn unrequested(&self) -> Vec<&str> {
        self.entries
            .values()
            .filter(|e| !e.requested && is_regular(e.mode))
            .map(|e| e.path.as_str())
            .collect()
    }

    fn message_len(&self) -> Option<usize> {
        let h = self.pending.get(..5)?;
        Some(u32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize)
    }

    fn fail(&mut self, why: &str) {
        self.failure = Some(why.to_string());
        self.pending = Vec::new();
        self.entries.clear();
    }

    fn packet(&mut self, message: &[u8]) -> Option<SyncedFile> {
        let packet = match Packet::decode(message) {
            Ok(p) => p,
            Err(_) => {
                self.fail("an undecodable fsutil packet");
                return None;
            }
        };
        match PacketType::try_from(packet.r#type) {
            Ok(PacketType::PacketStat) => {
                match packet.stat {
                    Some(stat) if !self.stats_done => {
                        self.entries.insert(
                            self.next_id,
                            Entry {
                                path: stat.path,
                                mode: stat.mode,
                                ..Entry::default()
                            },
                        );
                        self.next_id = self.next_id.saturating_add(1);
                    }
                    Some(_) => self.fail("a STAT after the last one"),
                    None => self.stats_done = true,
                }
                None
            }
            Ok(PacketType::PacketData) => {
                let Some(entry) = self.entries.get_mut(&packet.id) else {
                    self.fail("DATA for a file never announced");
                    return None;
                };
                entry.requested = true;
                if packet.data.is_empty() {
                    let entry = self.entries.get_mut(&packet.id)?;
                    if entry.too_big {
                        return None;
                    }
                    return Some(SyncedFile {
                        path: entry.path.clone(),
                        data: std::mem::take(&mut entry.data),
                    });
                }
                if entry.data.len() + packet.data.len() > MAX_FILE {
                    entry.too_big = true;
                    entry.data = Vec::new();
                } else if !entry.too_big {
                    entry.data.extend_from_slice(&packet.data);
                }
                None
            }
            // REQ and FIN travel the other way; ERR ends the sync (the daemon reports it).
            Ok(PacketType::PacketErr) => {
                self.fail("the build client reported an error");
                None
            }
            Ok(PacketType::PacketReq | PacketType::PacketFin) => None,
            Err(_) => {
                self.fail("an unknown fsutil packet type");
                None
            }
        }
    }
}

/// Whether a STAT's mode is a regular file's. fsutil sends Go's `os.FileMode` (type bits at
/// the top: dir 1<<31, symlink 1<<27, device 1<<26, pipe 1<<25, socket 1<<24, char device
/// 1<<21, irregular 1<<19); the Unix `S_IFMT` bits are read too, in case a sender uses them.
fn is_regular(mode: u32) -> bool {
    const GO_TYPE: u32 = 1 << 31 | 1 << 27 | 1 << 26 | 1 << 25 | 1 << 24 | 1 << 21 | 1 << 19;
    const S_IFMT: u32 = 0o170000;
    const S_IFREG: u32 = 0o100000;
    mode & GO_TYPE == 0 && matches!(mode & S_IFMT, 0 | S_IFREG)
}

/// A gRPC frame of one packet, for tests and fuzz seeds.
pub fn frame(packet: &Packet) -> Vec<u8> {
    let body = packet.encode_to_vec();
    let mut out = Vec::with_capacity(5 + body.len());
    out.push(0);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}
