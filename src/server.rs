//! The daemon's life: bind the listeners, accept connections, drain on shutdown. Each
//! listener serves one [`Api`]: the Docker Engine API ([`proxy`]) or the BuildKit Control API
//! ([`buildkit_endpoint`]); both kinds share the accept loop, the task tracker and the drain.
//!
//! [`run`] takes already-bound listeners and a shutdown token (as mini-redis does), so tests
//! can run the real server in-process on temporary sockets.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::broker::Broker;
use crate::config::Endpoint;
use crate::connection_threads::ConnectionThreads;
use crate::daemon_files::{self, PathError, SocketFile, SocketSpec};
use crate::listen::Listener;
use crate::{buildkit_endpoint, proxy};

/// How long open connections and sessions get to finish after SIGTERM/SIGINT.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// What a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// The Docker Engine API (`[server] listen`, what `DOCKER_HOST` points at).
    DockerEngine,
    /// The BuildKit Control API (`[server] buildkit_listen`, buildx's remote driver).
    BuildKit,
}

impl std::fmt::Display for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Api::DockerEngine => "the Docker Engine API",
            Api::BuildKit => "the BuildKit API",
        })
    }
}

/// A bound unix listener; its socket file is removed when it is dropped (if it is still ours).
pub struct BoundListener {
    pub path: PathBuf,
    pub(crate) listener: UnixListener,
    /// `None` for a socket the service manager passed: systemd made it and removes it.
    _file: Option<SocketFile>,
}

impl BoundListener {
    /// Serves a listening socket systemd passed (socket activation). Its owner, group and
    /// mode are the `.socket` unit's, so nothing here checks or changes them; each peer is
    /// still checked against `[access]` when it connects. Call it inside the runtime.
    pub fn activated(
        name: &str,
        listener: std::os::unix::net::UnixListener,
    ) -> std::io::Result<BoundListener> {
        let path = listener
            .local_addr()?
            .as_pathname()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from(format!("<socket-activated {name}>")));
        listener.set_nonblocking(true)?;
        Ok(BoundListener {
            path,
            listener: UnixListener::from_std(listener)?,
            _file: None,
        })
    }
}

/// A socket that could not be bound; the inner error names the path, the problem and the fix.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {path}: {source}")]
pub struct BindError {
    pub path: PathBuf,
    #[source]
    pub source: PathError,
}

/// Binds every `unix://` endpoint (tcp ones are skipped) with [`daemon_files::bind_socket`]: socket 0660 with the
/// `[server] socket_group` if set (the daemon's group otherwise), directory created 0750 with
/// the same group if missing, a dead socket of ours replaced, anything else there refused.
pub fn bind(
    endpoints: &[Endpoint],
    euid: u32,
    socket_group: Option<u32>,
) -> Result<Vec<BoundListener>, BindError> {
    let mut out = Vec::new();
    for endpoint in endpoints {
        // tcp endpoints are bound by `listen::TcpEndpoint`, with their TLS acceptor.
        let Endpoint::Unix(path) = endpoint else {
            continue;
        };
        out.push(bind_unix(
            path,
            euid,
            SocketSpec {
                mode: 0o660,
                group: socket_group,
                dir_mode: 0o750,
            },
        )?);
    }
    Ok(out)
}

/// Binds one unix socket as `spec` says (see [`daemon_files::bind_socket`]).
pub(crate) fn bind_unix(
    path: &Path,
    euid: u32,
    spec: SocketSpec,
) -> Result<BoundListener, BindError> {
    let fail = |source| BindError {
        path: path.to_path_buf(),
        source,
    };
    let (listener, file) = daemon_files::bind_socket(path, euid, spec).map_err(fail)?;
    let io = |source| {
        fail(PathError::Io {
            path: path.to_path_buf(),
            source,
        })
    };
    listener.set_nonblocking(true).map_err(io)?;
    let listener = UnixListener::from_std(listener).map_err(io)?;
    Ok(BoundListener {
        path: path.to_path_buf(),
        listener,
        _file: Some(file),
    })
}

/// Serves until `shutdown` is cancelled, then stops accepting and gives open connections and
/// sessions up to [`DRAIN_TIMEOUT`] to finish. Unix and tcp listeners alike: each connection
/// is served on one of `threads`, and its caller is established (peer credentials, or the TLS
/// handshake) there, in its own task.
pub async fn run(
    listeners: Vec<(Api, Listener)>,
    threads: Arc<ConnectionThreads>,
    broker: Arc<Broker>,
    shutdown: CancellationToken,
) {
    let tasks = TaskTracker::new();
    let mut accept_loops = Vec::new();
    for (api, bound) in listeners {
        let broker = broker.clone();
        let tasks2 = tasks.clone();
        let shutdown = shutdown.clone();
        let threads = threads.clone();
        accept_loops.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    accepted = bound.accept() => match accepted {
                        Ok(stream) => {
                            crate::metrics::connection_accepted();
                            let broker = broker.clone();
                            let conn_tasks = tasks2.clone();
                            let shutdown = shutdown.clone();
                            threads.serve_socket(&tasks2, stream, move |stream| async move {
                                match api {
                                    Api::DockerEngine => proxy::serve_connection(stream, broker, conn_tasks, shutdown).await,
                                    Api::BuildKit => buildkit_endpoint::serve_incoming(stream, broker, shutdown).await,
                                }
                            });
                        }
                        Err(e) => {
                            // EMFILE and friends: back off instead of spinning.
                            crate::metrics::error_seen("accept");
                            tracing::warn!(error = %e, listener = %bound.describe(), "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    },
                    _ = shutdown.cancelled() => break,
                }
            }
            drop(bound);
        }));
    }
    shutdown.cancelled().await;
    for l in accept_loops {
        let _ = l.await;
    }
    tasks.close();
    if tokio::time::timeout(DRAIN_TIMEOUT, tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            open = tasks.len(),
            "drain timeout: closing the remaining connections"
        );
    }
}
