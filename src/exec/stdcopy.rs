//! The Docker Engine's stdcopy framing of a non-tty exec stream (moby pkg/stdcopy): from the
//! container, every chunk is `[stream, 0, 0, 0, length u32 big-endian]` then `length` bytes,
//! stream 1 for stdout and 2 for stderr; towards the container, stdin is raw bytes.
//!
//! [`demux`] splits the container's side: stdout payloads become a byte stream
//! ([`ChannelReader`]), every other frame goes on to the client exactly as it came.
//! [`FrameWriter`] frames bytes as stdout again and [`mux`] writes every frame to the client in
//! order. Frames are bounded ([`MAX_FRAME`]); nothing here looks at payloads.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{
    AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter, ReadBuf,
};
use tokio::sync::mpsc;
use tokio_util::sync::PollSender;

/// The frame header's length.
pub const HEADER: usize = 8;
/// Stream number of stdout frames.
pub const STDOUT: u8 = 1;
/// Stream number of stderr frames.
pub const STDERR: u8 = 2;
/// The largest frame payload accepted from the engine. Its stdcopy writer frames each write of
/// the process (32 KiB from `buildctl dial-stdio`); anything near this bound is not one.
pub const MAX_FRAME: usize = 16 * 1024 * 1024;
/// The largest payload one outgoing stdout frame carries.
const MAX_OUT: usize = 1024 * 1024;
/// Read and write buffers on the two hijacked connections.
const IO_BUFFER: usize = 64 * 1024;

/// One frame: header and payload.
pub fn frame(stream: u8, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(HEADER + payload.len());
    out.put_slice(&[stream, 0, 0, 0]);
    out.put_u32(payload.len() as u32);
    out.put_slice(payload);
    out.freeze()
}

/// Why the container's side of an exec stream could not be demultiplexed.
#[derive(Debug, thiserror::Error)]
pub enum DemuxError {
    #[error("the engine sent a {0}-byte exec stream frame; the limit is {MAX_FRAME} bytes")]
    Oversized(usize),
    #[error("the exec stream ended inside a frame")]
    Truncated,
    #[error("reading the exec stream: {0}")]
    Io(#[from] io::Error),
}

/// Reads frames from the container's side until it ends: stdout payloads to `stdout`, any
/// other frame (stderr) verbatim to `passthrough`. Ends quietly when either receiver is gone.
pub async fn demux<R: AsyncRead + Unpin>(
    from: R,
    stdout: mpsc::Sender<Bytes>,
    passthrough: mpsc::Sender<Bytes>,
) -> Result<(), DemuxError> {
    let mut from = BufReader::with_capacity(IO_BUFFER, from);
    loop {
        let mut header = [0u8; HEADER];
        let first = from.read(&mut header).await?;
        if first == 0 {
            return Ok(());
        }
        if let Err(e) = from.read_exact(&mut header[first..]).await {
            return Err(match e.kind() {
                io::ErrorKind::UnexpectedEof => DemuxError::Truncated,
                _ => DemuxError::Io(e),
            });
        }
        let len = u32::from_be_bytes([header[4], header[5], header[6], header[7]]) as usize;
        if len > MAX_FRAME {
            return Err(DemuxError::Oversized(len));
        }
        let stream = header[0];
        let mut payload = BytesMut::zeroed(if stream == STDOUT { len } else { HEADER + len });
        let body = if stream == STDOUT {
            &mut payload[..]
        } else {
            payload[..HEADER].copy_from_slice(&header);
            &mut payload[HEADER..]
        };
        if let Err(e) = from.read_exact(body).await {
            return Err(match e.kind() {
                io::ErrorKind::UnexpectedEof => DemuxError::Truncated,
                _ => DemuxError::Io(e),
            });
        }
        let to = if stream == STDOUT {
            &stdout
        } else {
            &passthrough
        };
        if to.send(payload.freeze()).await.is_err() {
            return Ok(());
        }
    }
}

/// Writes every frame it receives to the client, in order, then shuts the client's side down.
pub async fn mux<W: AsyncWrite + Unpin>(
    mut frames: mpsc::Receiver<Bytes>,
    to: W,
) -> io::Result<()> {
    let mut to = BufWriter::with_capacity(IO_BUFFER, to);
    while let Some(frame) = frames.recv().await {
        to.write_all(&frame).await?;
        // Whatever else is already queued goes out in the same flush.
        while let Ok(frame) = frames.try_recv() {
            to.write_all(&frame).await?;
        }
        to.flush().await?;
    }
    to.shutdown().await
}

/// The stdout payloads of the container's side as a byte stream.
pub struct ChannelReader {
    chunks: mpsc::Receiver<Bytes>,
    pending: Bytes,
}

impl ChannelReader {
    pub fn new(chunks: mpsc::Receiver<Bytes>) -> Self {
        ChannelReader {
            chunks,
            pending: Bytes::new(),
        }
    }
}

impl AsyncRead for ChannelReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        while this.pending.is_empty() {
            match ready!(this.chunks.poll_recv(cx)) {
                Some(chunk) => this.pending = chunk,
                None => return Poll::Ready(Ok(())),
            }
        }
        let n = this.pending.len().min(out.remaining());
        out.put_slice(&this.pending.split_to(n));
        Poll::Ready(Ok(()))
    }
}

/// Frames every write as stdout, for [`mux`].
pub struct FrameWriter {
    frames: PollSender<Bytes>,
}

impl FrameWriter {
    pub fn new(frames: mpsc::Sender<Bytes>) -> Self {
        FrameWriter {
            frames: PollSender::new(frames),
        }
    }
}

impl AsyncWrite for FrameWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if ready!(this.frames.poll_reserve(cx)).is_err() {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let n = buf.len().min(MAX_OUT);
        if this.frames.send_item(frame(STDOUT, &buf[..n])).is_err() {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().frames.close();
        Poll::Ready(Ok(()))
    }
}
