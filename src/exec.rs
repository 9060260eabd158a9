//! The exec transport of buildx's docker-container driver (design.md §4): buildx runs
//! `buildctl dial-stdio` in the BuildKit container with `POST /containers/{name}/exec` and
//! speaks the BuildKit Control API over the hijacked stream of `POST /exec/{id}/start`.
//!
//! [`crate::proxy`] asks this module whether an exec create is a dial-stdio one, remembers the
//! id the engine gives it ([`DialStdioExecs`]), and on its start hands both hijacked halves to
//! [`run`]: client → container bytes are raw (the Control API's HTTP/2 from buildx), container
//! → client bytes are stdcopy frames ([`stdcopy`]), demultiplexed for the Control API relay
//! ([`crate::control`]) and re-multiplexed exactly (stderr passed through).
//!
//! Every other exec (`buildctl debug workers`, `docker exec -i`), attach and upgrade stays a
//! raw splice, and so does a dial-stdio exec with a tty (no stdcopy framing there). This module
//! never looks at payloads.

pub mod stdcopy;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::access::PeerInfo;
use crate::broker::Broker;
use crate::control::{self, ControlError};
use crate::session::BufferedIo;
use crate::source::ClientProcess;

/// The command buildx's docker-container driver runs to reach BuildKit
/// (buildx driver/docker-container/driver.go, `Dial`).
pub const DIAL_STDIO: [&str; 2] = ["buildctl", "dial-stdio"];
/// Exec create and start bodies are a few hundred bytes of JSON; anything bigger is relayed
/// without being inspected (and so is never a dial-stdio exec).
pub const MAX_INSPECTED_BODY: usize = 64 * 1024;
/// How long a created dial-stdio exec waits for its start (buildx starts it at once).
const EXEC_TTL: Duration = Duration::from_secs(60);
/// Most dial-stdio execs remembered at once; the oldest goes first.
const MAX_EXECS: usize = 1024;
/// Frames queued between the two halves before a side waits.
const CHANNEL_DEPTH: usize = 32;

/// The Engine API route of `path` without its optional `/vN.N` version prefix.
fn unversioned(path: &str) -> &str {
    if let Some(rest) = path.strip_prefix("/v")
        && let Some((version, _)) = rest.split_once('/')
        && let Some((major, minor)) = version.split_once('.')
        && !major.is_empty()
        && !minor.is_empty()
        && major.bytes().all(|b| b.is_ascii_digit())
        && minor.bytes().all(|b| b.is_ascii_digit())
    {
        return &rest[version.len()..];
    }
    path
}

/// Whether `path` creates an exec instance: `/containers/{name}/exec`, with or without `/vN.N`.
pub fn is_exec_create(path: &str) -> bool {
    unversioned(path)
        .strip_prefix("/containers/")
        .and_then(|rest| rest.strip_suffix("/exec"))
        .is_some_and(|name| !name.is_empty() && !name.contains('/'))
}

/// The exec id of `/exec/{id}/start`, with or without `/vN.N`.
pub fn exec_start_id(path: &str) -> Option<&str> {
    unversioned(path)
        .strip_prefix("/exec/")
        .and_then(|rest| rest.strip_suffix("/start"))
        .filter(|id| !id.is_empty() && !id.contains('/'))
}

/// A JSON object's field, matched without regard to case as the engine's Go decoder does.
fn field<'a>(object: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    object
        .as_object()?
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

fn tty(object: &serde_json::Value) -> bool {
    field(object, "Tty").and_then(|v| v.as_bool()) == Some(true)
}

/// What an exec create body asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecKind {
    /// `buildctl dial-stdio` without a tty: the Control API runs over it.
    DialStdio,
    /// `buildctl dial-stdio` with a tty: no stdcopy framing, so it stays a raw splice.
    DialStdioTty,
    /// Anything else.
    Other,
}

/// Classifies an exec create body (`{"Cmd": [...], "Tty": …}`).
pub fn classify_create(body: &[u8]) -> ExecKind {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return ExecKind::Other;
    };
    let is_dial_stdio = field(&value, "Cmd")
        .and_then(|c| c.as_array())
        .is_some_and(|cmd| {
            cmd.len() == DIAL_STDIO.len()
                && cmd
                    .iter()
                    .zip(DIAL_STDIO)
                    .all(|(a, b)| a.as_str() == Some(b))
        });
    match (is_dial_stdio, tty(&value)) {
        (true, false) => ExecKind::DialStdio,
        (true, true) => ExecKind::DialStdioTty,
        (false, _) => ExecKind::Other,
    }
}

/// The id in an exec create response (`{"Id": "…"}`): the engine's 64 hex digits, or at least
/// a short token of letters and digits.
pub fn created_id(body: &[u8]) -> Option<String> {
    let value = serde_json::from_slice::<serde_json::Value>(body).ok()?;
    let id = field(&value, "Id")?.as_str()?;
    (!id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_alphanumeric()))
        .then(|| id.to_owned())
}

/// Whether an exec start body (`{"Detach": false, "Tty": false}`) asks for a tty: the engine
/// frames output with stdcopy only without one.
pub fn start_wants_tty(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(body).is_ok_and(|v| tty(&v))
}

/// The dial-stdio exec instances created through this broker and not yet started. Exec ids
/// are engine-wide and a client creates and starts an exec on different connections (the
/// start hijacks a fresh one), so this lives for the process, not a connection.
pub struct DialStdioExecs {
    created: Mutex<HashMap<String, Instant>>,
}

impl DialStdioExecs {
    pub fn new() -> Self {
        DialStdioExecs {
            created: Mutex::new(HashMap::new()),
        }
    }

    /// The process's registry.
    pub fn global() -> &'static DialStdioExecs {
        static EXECS: OnceLock<DialStdioExecs> = OnceLock::new();
        EXECS.get_or_init(DialStdioExecs::new)
    }

    pub fn remember(&self, id: String) {
        self.remember_at(id, Instant::now());
    }

    fn remember_at(&self, id: String, now: Instant) {
        let mut created = self.created.lock().unwrap_or_else(|e| e.into_inner());
        created.retain(|_, at| now.saturating_duration_since(*at) < EXEC_TTL);
        if created.len() >= MAX_EXECS
            && let Some(oldest) = created
                .iter()
                .min_by_key(|(_, at)| **at)
                .map(|(id, _)| id.clone())
        {
            created.remove(&oldest);
        }
        created.insert(id, now);
    }

    /// Whether `id` is a dial-stdio exec created here (and forgets it: an exec starts once).
    pub fn take(&self, id: &str) -> bool {
        self.take_at(id, Instant::now())
    }

    fn take_at(&self, id: &str, now: Instant) -> bool {
        let mut created = self.created.lock().unwrap_or_else(|e| e.into_inner());
        created
            .remove(id)
            .is_some_and(|at| now.saturating_duration_since(at) < EXEC_TTL)
    }
}

impl Default for DialStdioExecs {
    fn default() -> Self {
        Self::new()
    }
}

/// Read-ahead on the build client's half of the exec stream (the session's own buffer size).
const CLIENT_READ_AHEAD: usize = 256 * 1024;
/// Write coalescing towards the container, likewise.
const CONTAINER_WRITE: usize = 256 * 1024;

/// Runs the Control API relay over one started dial-stdio exec until either side closes it.
/// `container` is the engine's hijacked connection, `client` the build client's.
pub async fn run(
    container: Upgraded,
    client: Upgraded,
    broker: Arc<Broker>,
    peer: PeerInfo,
    process: Arc<ClientProcess>,
    shutdown: CancellationToken,
) {
    let (container_read, container_write) = tokio::io::split(TokioIo::new(container));
    let (client_read, client_write) = tokio::io::split(TokioIo::new(client));
    let (to_client, to_client_frames) = mpsc::channel::<Bytes>(CHANNEL_DEPTH);
    let (stdout, stdout_chunks) = mpsc::channel::<Bytes>(CHANNEL_DEPTH);
    let mux = tokio::spawn(stdcopy::mux(to_client_frames, client_write));
    let demux = tokio::spawn(stdcopy::demux(container_read, stdout, to_client.clone()));

    // The build context arrives on this side: h2 reads 8 KiB at a time, so without read-ahead
    // every 8 KiB cost a recvfrom (~150 per MiB); one read now drains what the socket holds.
    // The session's own buffer (`session::BufferedIo`), which keeps no copy of what it passed
    // on: a `client` value from buildx crosses it.
    let client_io = tokio::io::join(client_read, stdcopy::FrameWriter::new(to_client.clone()));
    let client_io = BufferedIo::new(TokioIo::new(client_io), CLIENT_READ_AHEAD, 0);
    // At most one write per h2 flush towards the container: the exec's stdin is a pipe whose
    // reader (dial-stdio) forwards each read on its own, so split writes become split packets
    // there. GetSecret answers cross this buffer too, and are zeroed once written.
    let container_io = tokio::io::join(stdcopy::ChannelReader::new(stdout_chunks), container_write);
    let container_io = BufferedIo::new(TokioIo::new(container_io), 0, CONTAINER_WRITE);
    let result = control::serve(
        client_io,
        container_io,
        broker,
        peer.clone(),
        process,
        shutdown,
    )
    .await;
    match &result {
        Ok(()) => tracing::debug!(uid = peer.uid, "dial-stdio exec stream ended"),
        Err(e @ ControlError::Client(_)) => {
            tracing::warn!(uid = peer.uid, detail = ?e, "dial-stdio exec stream: {e}");
            // The client reads stderr frames as the exec's own error output.
            let message = format!("buildbroker: {e}\n");
            let _ = to_client
                .send(stdcopy::frame(stdcopy::STDERR, message.as_bytes()))
                .await;
        }
        Err(e) => tracing::warn!(uid = peer.uid, "dial-stdio exec stream: {e}"),
    }
    // The container's side closes when the demultiplexer lets go of it; the client's once
    // every queued frame is written.
    demux.abort();
    if let Ok(Err(e)) = demux.await {
        tracing::warn!(
            uid = peer.uid,
            "dial-stdio exec stream from the container: {e}"
        );
    }
    drop(to_client);
    if let Ok(Err(e)) = mux.await {
        tracing::debug!(error = %e, "writing the exec stream to the client");
    }
}

#[cfg(test)]
mod tests;
