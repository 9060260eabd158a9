//! The daemon's life: bind the listeners, accept connections, drain on shutdown.
//!
//! [`run`] takes already-bound listeners and a shutdown token (as mini-redis does), so tests
//! can run the real server in-process on temporary sockets.

use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::broker::Broker;
use crate::config::Endpoint;
use crate::proxy;

/// How long open connections and sessions get to finish after SIGTERM/SIGINT.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// A bound unix listener; its socket file is removed when it is dropped.
pub struct BoundListener {
    pub path: PathBuf,
    pub(crate) listener: UnixListener,
}

impl Drop for BoundListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("cannot create {dir}: {source}")]
    Dir { dir: PathBuf, source: io::Error },
    #[error("{path} is already served by another process (is buildbroker already running?)")]
    InUse { path: PathBuf },
    #[error("cannot listen on {path}: {source}")]
    Bind { path: PathBuf, source: io::Error },
}

/// Binds every `unix://` endpoint: parent directory created 0750 if missing, socket 0660,
/// a stale socket file (nobody answering) replaced, a live one refused.
pub fn bind(endpoints: &[Endpoint]) -> Result<Vec<BoundListener>, BindError> {
    let mut out = Vec::new();
    for endpoint in endpoints {
        let Endpoint::Unix(path) = endpoint else {
            unreachable!("config only accepts unix:// listen addresses");
        };
        out.push(bind_unix(path, 0o660)?);
    }
    Ok(out)
}

/// Binds one unix socket with permissions `mode` (parent directory created 0750 if missing;
/// a stale socket file replaced, a live one refused).
pub(crate) fn bind_unix(path: &Path, mode: u32) -> Result<BoundListener, BindError> {
    if let Some(dir) = path.parent()
        && !dir.exists()
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(dir)
            .map_err(|source| BindError::Dir {
                dir: dir.to_path_buf(),
                source,
            })?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(BindError::InUse {
                path: path.to_path_buf(),
            });
        }
        let _ = std::fs::remove_file(path);
    }
    let listener = UnixListener::bind(path).map_err(|source| BindError::Bind {
        path: path.to_path_buf(),
        source,
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|source| {
        BindError::Bind {
            path: path.to_path_buf(),
            source,
        }
    })?;
    Ok(BoundListener {
        path: path.to_path_buf(),
        listener,
    })
}

/// Serves until `shutdown` is cancelled, then stops accepting and gives open connections and
/// sessions up to [`DRAIN_TIMEOUT`] to finish.
pub async fn run(listeners: Vec<BoundListener>, broker: Arc<Broker>, shutdown: CancellationToken) {
    let tasks = TaskTracker::new();
    let mut accept_loops = Vec::new();
    for bound in listeners {
        let broker = broker.clone();
        let tasks2 = tasks.clone();
        let shutdown = shutdown.clone();
        accept_loops.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    accepted = bound.listener.accept() => match accepted {
                        Ok((stream, _)) => {
                            let conn_tasks = tasks2.clone();
                            tasks2.spawn(proxy::serve_connection(stream, broker.clone(), conn_tasks, shutdown.clone()));
                        }
                        Err(e) => {
                            // EMFILE and friends: back off instead of spinning.
                            tracing::warn!(error = %e, path = %bound.path.display(), "accept failed");
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
