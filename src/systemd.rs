//! The service manager's side of the daemon's life: socket activation (`sd_listen_fds(3)`:
//! `LISTEN_PID`, `LISTEN_FDS`, `LISTEN_FDNAMES`, fds from 3) and readiness notification
//! (`sd_notify(3)`: `READY=1`, `RELOADING=1` with `MONOTONIC_USEC`, `STOPPING=1`).
//!
//! Both are no-ops outside systemd (no `LISTEN_PID`/`NOTIFY_SOCKET` in the environment).
//! A socket systemd passed is systemd's: its owner, group and mode come from the `.socket`
//! unit, so this module never chmods, chowns, unlinks or re-checks it as if the daemon had
//! made it. Its peers are still checked against `[access]` like every other connection's.
//! The fds are taken through `sd-notify` (which checks `LISTEN_PID`) and `listenfd` (which
//! checks each fd's socket type), so no unsafe code is needed here.

use std::net::TcpListener;
use std::os::unix::net::UnixListener;

use sd_notify::NotifyState;

/// `FileDescriptorName=` of the Docker Engine API socket in the `.socket` unit.
pub const DOCKER_FD_NAME: &str = "docker";
/// `FileDescriptorName=` of a BuildKit API socket (replaces `[server] buildkit_listen`).
pub const BUILDKIT_FD_NAME: &str = "buildkit";
/// `FileDescriptorName=` of an (optional) TCP socket for the metrics endpoint.
pub const METRICS_FD_NAME: &str = "metrics";

/// The sockets systemd passed, sorted by what they serve.
#[derive(Default)]
pub struct Activated {
    /// Docker Engine API listeners (replace `[server] listen`), with their names.
    pub docker: Vec<(String, UnixListener)>,
    /// BuildKit API listeners (replace `[server] buildkit_listen`), with their names.
    pub buildkit: Vec<(String, UnixListener)>,
    /// The metrics endpoint's listener (replaces `[server] metrics_listen`).
    pub metrics: Option<TcpListener>,
}

#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    #[error("socket activation: {0}")]
    Environment(std::io::Error),
    #[error(
        "socket activation: fd {fd} ({name:?}) is not a {expected}: {source}. Give the Docker Engine API socket ListenStream=/path FileDescriptorName=docker, a BuildKit API socket FileDescriptorName=buildkit, and a metrics socket ListenStream=ADDR:PORT FileDescriptorName=metrics"
    )]
    WrongKind {
        fd: i32,
        name: String,
        expected: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "socket activation: fd {fd} is named {name:?}; buildbroker serves FileDescriptorName=docker (Docker Engine API, unix), FileDescriptorName=buildkit (BuildKit API, unix) and FileDescriptorName=metrics (tcp)"
    )]
    UnknownName { fd: i32, name: String },
}

/// Takes the sockets systemd passed, if any. Call it once, before any thread starts: the
/// crate that takes the fds removes `LISTEN_PID`/`LISTEN_FDS` from the environment so that
/// programs the daemon runs (`exec:` sources) do not inherit them.
pub fn take_activated() -> Result<Activated, ActivationError> {
    let named: Vec<(i32, String)> = sd_notify::listen_fds_with_names()
        .map_err(ActivationError::Environment)?
        .collect();
    let mut activated = Activated::default();
    if named.is_empty() {
        return Ok(activated);
    }
    let mut fds = listenfd::ListenFd::from_env();
    for (index, (fd, name)) in named.into_iter().enumerate() {
        let wrong = |expected, source| ActivationError::WrongKind {
            fd,
            name: name.clone(),
            expected,
            source,
        };
        // systemd's default name is the socket unit's name; systemd-socket-activate's is
        // "unknown" when no --fdname is given. Both mean "the Docker Engine API".
        if name == METRICS_FD_NAME {
            let listener = fds
                .take_tcp_listener(index)
                .map_err(|e| wrong("TCP listening socket", e))?
                .ok_or_else(|| wrong("TCP listening socket", missing()))?;
            activated.metrics = Some(listener);
        } else if name == BUILDKIT_FD_NAME {
            let listener = fds
                .take_unix_listener(index)
                .map_err(|e| wrong("unix stream listening socket", e))?
                .ok_or_else(|| wrong("unix stream listening socket", missing()))?;
            activated.buildkit.push((name, listener));
        } else if name == DOCKER_FD_NAME || name == "unknown" || name.ends_with(".socket") {
            let listener = fds
                .take_unix_listener(index)
                .map_err(|e| wrong("unix stream listening socket", e))?
                .ok_or_else(|| wrong("unix stream listening socket", missing()))?;
            activated.docker.push((name, listener));
        } else {
            return Err(ActivationError::UnknownName { fd, name });
        }
    }
    Ok(activated)
}

fn missing() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::NotFound,
        "LISTEN_FDS names it but it is gone",
    )
}

/// Tells the service manager every listener is bound (`Type=notify`).
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Tells the service manager a reload started (`Type=notify-reload` needs `MONOTONIC_USEC`
/// with it, systemd ≥ 253); follow it with [`ready`] when the reload is over.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read CLOCK_MONOTONIC for MONOTONIC_USEC");
            send(&[NotifyState::Reloading]);
        }
    }
}

/// Tells the service manager the daemon is draining.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("draining")]);
}

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify the service manager (NOTIFY_SOCKET)");
    }
}
