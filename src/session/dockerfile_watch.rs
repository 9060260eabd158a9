//! Watches the Dockerfile go by: the FileSync `DiffCopy` call whose metadata says
//! `dir-name: dockerfile` (design.md §7) is relayed like any other, but its response body
//! passes through a [`DockerfileTee`] that hands each DATA frame's bytes to a
//! [`FileSyncDecoder`] before passing the frame on, and records each Dockerfile it completes in
//! the session's [`SessionDockerfiles`], where the secret and ssh services look before they
//! answer.
//!
//! It must never delay, hold back, reorder or change a frame, and never buffer the stream: the
//! decoder keeps at most one partial message and the Dockerfile itself (both bounded). Every
//! other FileSync stream (the build context: `dir-name: context`) keeps the plain relay.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Request;
use http_body::{Body, Frame, SizeHint};

use crate::channel::{BoxError, RelayBody};
use crate::dockerfile::filesync::FileSyncDecoder;
use crate::dockerfile::{IgnoreFiles, SessionDockerfiles};

/// The FileSync method the daemon fetches local directories with.
pub const DIFF_COPY: &str = "/moby.filesync.v1.FileSync/DiffCopy";
/// The gRPC metadata key naming which local directory a sync is for (buildkit
/// session/filesync/filesync.go `keyDirName`).
pub const KEY_DIR_NAME: &str = "dir-name";
/// The directory name the Dockerfile frontend syncs its Dockerfile under (buildkit
/// frontend/dockerui `DefaultLocalNameDockerfile`).
pub const DOCKERFILE_DIR: &str = "dockerfile";

/// Whether a call inside a session is the daemon fetching the build's Dockerfile.
pub fn is_dockerfile_sync<B>(req: &Request<B>) -> bool {
    req.uri().path() == DIFF_COPY
        && req
            .headers()
            .get_all(KEY_DIR_NAME)
            .iter()
            .any(|v| v.as_bytes() == DOCKERFILE_DIR.as_bytes())
}

/// The gRPC metadata key listing the files a sync should follow (filesync.go `keyFollowPaths`).
pub const KEY_FOLLOW_PATHS: &str = "followpaths";

/// The follow paths of a sync request, which tell the Dockerfile from its ignore file.
pub fn followpaths<B>(req: &Request<B>) -> Vec<String> {
    req.headers()
        .get_all(KEY_FOLLOW_PATHS)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::to_string)
        .collect()
}

/// The response body of a Dockerfile sync, read as it passes.
pub struct DockerfileTee {
    inner: RelayBody,
    decoder: FileSyncDecoder,
    ignore: IgnoreFiles,
    seen: Arc<SessionDockerfiles>,
    /// For the log lines only.
    session: Arc<str>,
    finished: bool,
}

impl DockerfileTee {
    pub fn new(
        inner: RelayBody,
        followpaths: &[String],
        seen: Arc<SessionDockerfiles>,
        session: Arc<str>,
    ) -> Self {
        DockerfileTee {
            inner,
            decoder: FileSyncDecoder::new(),
            ignore: IgnoreFiles::from_followpaths(followpaths),
            seen,
            session,
            finished: false,
        }
    }

    fn finish(&mut self) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        let unrequested = self.decoder.unrequested();
        if let Some(why) = self.decoder.failure() {
            tracing::warn!(session = %self.session, reason = why, "cannot read the Dockerfile sync");
            self.seen.sync_unreadable(why);
        } else if !unrequested.is_empty() {
            tracing::debug!(session = %self.session, files = ?unrequested, "the daemon already held these Dockerfile sync files");
            self.seen.sync_unrequested(&unrequested, &self.ignore);
        }
        self.seen
            .sync_oversized(&self.decoder.oversized(), &self.ignore);
    }
}

impl Body for DockerfileTee {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    for file in this.decoder.feed(data) {
                        tracing::debug!(session = %this.session, path = %file.path, bytes = file.data.len(), "Dockerfile sync: file received");
                        this.seen.record(&file.path, &file.data, &this.ignore);
                    }
                } else {
                    this.finish();
                }
            }
            Poll::Ready(_) => this.finish(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for DockerfileTee {
    fn drop(&mut self) {
        self.finish();
    }
}
