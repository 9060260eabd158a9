//! `Control/Session` as a byte stream: BuildKit's grpchijack (session/grpchijack) carries the
//! session's own HTTP/2 connection as the `data` of `BytesMessage { bytes data = 1; }` messages,
//! one stream each way. [`MessageStream`] turns one such pair of gRPC bodies back into an
//! `AsyncRead + AsyncWrite`, so the session core runs on it unchanged.
//!
//! Bounded: a message longer than [`MAX_MESSAGE`] (BuildKit's own default receive limit) is
//! refused as soon as its 5-byte prefix arrives, never buffered. A stream that ends inside a
//! message is an error, not a short read. Either failure is recorded in the shared
//! [`Outcome`], which becomes the status the build client gets for its `Control/Session` call.
//! This module never logs message contents.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http_body::Body;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use prost::encoding::{decode_varint, encode_varint, encoded_len_varint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio_util::sync::PollSender;
use tonic::Status;

use crate::channel::{BoxError, RelayBody};

/// The largest `BytesMessage` accepted in either direction: BuildKit's and buildx's gRPC
/// message limit (buildkit util/grpcerrors, `defaults.DefaultMaxRecvMsgSize`, 16 MiB).
pub const MAX_MESSAGE: usize = 16 * 1024 * 1024;
/// gRPC's length prefix: one compression flag byte, then the length as u32 big-endian.
const PREFIX: usize = 5;
/// The most written bytes staged for one outgoing message; far below [`MAX_MESSAGE`].
const MAX_OUT: usize = 1024 * 1024;
/// Room at the front of a staged message for its prefix and header (the `data` key and a
/// length varint of at most 5 bytes), written in when the message is sent.
const HEADER_ROOM: usize = PREFIX + 1 + 5;
/// A message of at least this much data is a bulk transfer's (a full 16 KiB DATA frame): it is
/// handed on in the buffer it was staged in, not copied.
const BULK_MESSAGE: usize = 16 * 1024;
/// Staging room for a bulk message: what the flush deferral lets one gather, plus a frame.
const BULK_CAPACITY: usize = HEADER_ROOM + crate::session::WRITE_COALESCE / 2 + 17 * 1024;
/// Outgoing messages buffered before the writer waits: backpressure, not memory growth.
const CHANNEL_DEPTH: usize = 16;

/// One outgoing gRPC body: frames (messages, then trailers) or an error that resets the stream.
pub type FrameSender = mpsc::Sender<Result<Frame<Bytes>, BoxError>>;

/// A body fed by a channel; it ends when every sender is dropped.
pub fn channel() -> (FrameSender, RelayBody) {
    let (tx, mut rx) = mpsc::channel(CHANNEL_DEPTH);
    let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    (tx, StreamBody::new(stream).boxed_unsync())
}

/// Which end of `Control/Session` a stream faces, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// buildx (the session's owner).
    Client,
    /// BuildKit.
    Daemon,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Client => "the build client",
            Side::Daemon => "BuildKit",
        }
    }
}

/// The first failure either direction of one `Control/Session` saw; it becomes the final
/// status of the call towards the build client.
#[derive(Default)]
pub struct Outcome(Mutex<Option<Status>>);

impl Outcome {
    fn record(&self, status: Status) {
        let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(status);
        }
    }

    pub fn take(&self) -> Option<Status> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// Why a `Control/Session` stream cannot go on.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("{side} sent a {len}-byte Control/Session message; the limit is {MAX_MESSAGE} bytes")]
    Oversized { side: &'static str, len: usize },
    #[error("{side} ended Control/Session in the middle of a message ({have} of {want} bytes)")]
    Truncated {
        side: &'static str,
        have: usize,
        want: usize,
    },
    #[error("{side} sent a compressed Control/Session message; none was negotiated")]
    Compressed { side: &'static str },
    #[error("{side} sent a malformed BytesMessage")]
    Malformed { side: &'static str },
}

impl FrameError {
    fn status(&self) -> Status {
        let message = format!("buildbroker: {self}");
        match self {
            FrameError::Oversized { .. } => Status::resource_exhausted(message),
            _ => Status::invalid_argument(message),
        }
    }
}

/// The message length a gRPC prefix announces (the 4 bytes after the compression flag), once
/// the prefix is all there.
fn announced_len(buf: &[u8]) -> Option<usize> {
    let prefix: [u8; 4] = buf.get(1..PREFIX)?.try_into().ok()?;
    Some(u32::from_be_bytes(prefix) as usize)
}

/// Takes one whole gRPC message off the front of `buf`, if it holds one, and returns its
/// `BytesMessage.data` (a view into the buffer, no copy).
pub fn decode_message(buf: &mut BytesMut, side: Side) -> Result<Option<Bytes>, FrameError> {
    let Some(len) = announced_len(buf) else {
        return Ok(None);
    };
    if buf[0] != 0 {
        return Err(FrameError::Compressed { side: side.name() });
    }
    if len > MAX_MESSAGE {
        return Err(FrameError::Oversized {
            side: side.name(),
            len,
        });
    }
    if buf.len() < PREFIX + len {
        // Room for the rest now, so the body's frames append without reallocating each time.
        buf.reserve(PREFIX + len - buf.len());
        return Ok(None);
    }
    let mut message = buf.split_to(PREFIX + len).freeze();
    message.advance(PREFIX);
    bytes_message_data(message)
        .map(Some)
        .ok_or(FrameError::Malformed { side: side.name() })
}

/// The prefix and header of a message, if it is a plain
/// `BytesMessage` (its one field is `data`, nothing after it): what grpc-go sends. Returns the
/// header's length (prefix, key, length varint) and the data's; the data can then be passed on
/// as it arrives instead of being gathered first. Anything else (unknown fields, `data`
/// repeated, where the last one wins) is gathered whole by [`decode_message`].
fn stream_header(buf: &[u8]) -> Option<(usize, usize)> {
    if buf.len() < PREFIX + 2 || buf[0] != 0 || buf[PREFIX] != 0x0a {
        return None;
    }
    let len = announced_len(buf)?;
    if len > MAX_MESSAGE {
        return None;
    }
    let mut varint = &buf[PREFIX + 1..buf.len().min(PREFIX + 1 + 10)];
    let before = varint.len();
    let data_len = usize::try_from(decode_varint(&mut varint).ok()?).ok()?;
    let header = PREFIX + 1 + (before - varint.len());
    (header - PREFIX + data_len == len).then_some((header, data_len))
}

/// The `data` field of an encoded `BytesMessage` (field 1, length-delimited; proto3 keeps the
/// last occurrence; unknown fields are skipped).
fn bytes_message_data(mut message: Bytes) -> Option<Bytes> {
    let mut data = Bytes::new();
    while message.has_remaining() {
        let key = decode_varint(&mut message).ok()?;
        match key & 7 {
            0 => {
                decode_varint(&mut message).ok()?;
            }
            1 | 5 => {
                let n = if key & 7 == 1 { 8 } else { 4 };
                if message.remaining() < n {
                    return None;
                }
                message.advance(n);
            }
            2 => {
                let len = usize::try_from(decode_varint(&mut message).ok()?).ok()?;
                if message.remaining() < len {
                    return None;
                }
                let value = message.split_to(len);
                if key >> 3 == 1 {
                    data = value;
                }
            }
            _ => return None,
        }
    }
    Some(data)
}

/// One gRPC message: `BytesMessage { data }` with its 5-byte prefix.
pub fn encode_message(data: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(header_len(data.len()) + data.len());
    put_header(&mut out, data.len());
    out.put_slice(data);
    out.freeze()
}

/// The length of the prefix and header [`put_header`] writes.
fn header_len(data_len: usize) -> usize {
    PREFIX + 1 + encoded_len_varint(data_len as u64)
}

/// A message's prefix and header, for `data_len` bytes of data that follow.
fn put_header(out: &mut impl BufMut, data_len: usize) {
    let field = 1 + encoded_len_varint(data_len as u64) + data_len;
    out.put_u8(0);
    out.put_u32(field as u32);
    out.put_u8(0x0a); // field 1, wire type 2
    encode_varint(data_len as u64, out);
}

/// One direction pair of `Control/Session` as bytes: reads the `data` of the messages arriving
/// on `inbound`; what is written between two flushes goes to `outbound` as one message.
pub struct MessageStream<B = Incoming> {
    inbound: B,
    side: Side,
    /// Bytes of the inbound body not yet decoded into a message.
    undecoded: BytesMut,
    /// The decoded data not yet read.
    pending: Bytes,
    /// Data bytes of the message being streamed that have not arrived yet, and that message's
    /// whole length (prefix included), for the error if the body ends first.
    streaming: usize,
    streaming_len: usize,
    inbound_done: bool,
    /// Written since the last flush, after [`HEADER_ROOM`]; sent as one message on flush.
    /// A small message (a GetSecret answer, say) is copied out and the staging zeroed; a bulk
    /// one is handed on in this buffer, which the allocator clears when h2 lets it go.
    staged: BytesMut,
    /// The last flush was deferred and nothing was written since: the next one sends.
    deferred: bool,
    /// A small flush was held for one more round of the session's poll: the next one sends,
    /// whatever was staged meanwhile.
    held_small: bool,
    outbound: PollSender<Result<Frame<Bytes>, BoxError>>,
    outcome: Arc<Outcome>,
}

impl<B> MessageStream<B> {
    pub fn new(inbound: B, side: Side, outbound: FrameSender, outcome: Arc<Outcome>) -> Self {
        MessageStream {
            inbound,
            side,
            undecoded: BytesMut::new(),
            pending: Bytes::new(),
            streaming: 0,
            streaming_len: 0,
            inbound_done: false,
            staged: BytesMut::new(),
            deferred: false,
            held_small: false,
            outbound: PollSender::new(outbound),
            outcome,
        }
    }

    fn fail(&self, error: FrameError) -> io::Error {
        self.outcome.record(error.status());
        io::Error::new(io::ErrorKind::InvalidData, error)
    }
}

impl<B> AsyncRead for MessageStream<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.pending.is_empty() {
                let n = this.pending.len().min(out.remaining());
                out.put_slice(&this.pending.split_to(n));
                return Poll::Ready(Ok(()));
            }
            if this.streaming > 0 {
                if !this.undecoded.is_empty() {
                    let n = this.streaming.min(this.undecoded.len());
                    this.pending = this.undecoded.split_to(n).freeze();
                    this.streaming -= n;
                    continue;
                }
            } else {
                // Not whole yet: a plain BytesMessage is passed on as its data arrives (before
                // `decode_message`, which would reserve room for all of it).
                if let Some((header, data_len)) = stream_header(&this.undecoded)
                    && this.undecoded.len() < header + data_len
                {
                    this.streaming_len = header + data_len;
                    this.undecoded.advance(header);
                    this.streaming = data_len;
                    continue;
                }
                match decode_message(&mut this.undecoded, this.side) {
                    Ok(Some(data)) => {
                        this.pending = data;
                        continue;
                    }
                    Ok(None) => {}
                    Err(e) => return Poll::Ready(Err(this.fail(e))),
                }
            }
            if this.inbound_done {
                if this.streaming > 0 {
                    let error = FrameError::Truncated {
                        side: this.side.name(),
                        have: this.streaming_len - this.streaming,
                        want: this.streaming_len,
                    };
                    return Poll::Ready(Err(this.fail(error)));
                }
                if this.undecoded.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                let want = PREFIX + announced_len(&this.undecoded).unwrap_or(0);
                let error = FrameError::Truncated {
                    side: this.side.name(),
                    have: this.undecoded.len(),
                    want,
                };
                return Poll::Ready(Err(this.fail(error)));
            }
            match ready!(Pin::new(&mut this.inbound).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(mut data) if this.streaming > 0 && this.undecoded.is_empty() => {
                        // The common case: the frame carries the message's data; no copy.
                        let n = this.streaming.min(data.len());
                        this.pending = data.split_to(n);
                        this.streaming -= n;
                        this.undecoded.extend_from_slice(&data);
                    }
                    Ok(data) => this.undecoded.extend_from_slice(&data),
                    Err(frame) => {
                        // Trailers: the peer's final status. A failure is passed on.
                        if let Some(status) = frame
                            .trailers_ref()
                            .and_then(Status::from_header_map)
                            .filter(|s| s.code() != tonic::Code::Ok)
                        {
                            this.outcome.record(status);
                        }
                    }
                },
                Some(Err(e)) => {
                    let e: BoxError = e.into();
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::BrokenPipe, e)));
                }
                None => this.inbound_done = true,
            }
        }
    }
}

impl<B> MessageStream<B> {
    /// Sends what was written since the last flush as one message. Coalescing matters: h2
    /// writes a response's HEADERS, DATA and trailers separately, and every message becomes at
    /// least one write on the transport below (an exec stream's stdin, in the end a socket),
    /// where each small write can cost a round trip.
    fn poll_send_staged(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.staged.is_empty() {
            return Poll::Ready(Ok(()));
        }
        if ready!(self.outbound.poll_reserve(cx)).is_err() {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let data_len = self.staged.len() - HEADER_ROOM;
        let message = if data_len >= BULK_MESSAGE {
            let offset = HEADER_ROOM - header_len(data_len);
            put_header(&mut &mut self.staged[offset..HEADER_ROOM], data_len);
            let mut message = std::mem::take(&mut self.staged);
            message.advance(offset);
            message.freeze()
        } else {
            let message = encode_message(&self.staged[HEADER_ROOM..]);
            self.staged.as_mut().fill(0);
            self.staged.clear();
            message
        };
        if self.outbound.send_item(Ok(Frame::data(message))).is_err() {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        Poll::Ready(Ok(()))
    }
}

impl<B: Unpin> AsyncWrite for MessageStream<B> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.staged.len() >= HEADER_ROOM + MAX_OUT {
            ready!(this.poll_send_staged(cx))?;
        }
        if this.staged.is_empty() {
            this.staged.put_bytes(0, HEADER_ROOM);
        }
        let n = buf.len().min(HEADER_ROOM + MAX_OUT - this.staged.len());
        let len = this.staged.len();
        if this.staged.capacity() - len < n && len + n >= HEADER_ROOM + BULK_MESSAGE {
            // Growing into a bulk message: room for all of it at once, not by doubling (each
            // doubling copies what is staged).
            this.staged
                .reserve(n.max(BULK_CAPACITY.saturating_sub(len)));
        }
        this.staged.extend_from_slice(&buf[..n]);
        this.deferred = false;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let staged = this.staged.len().saturating_sub(HEADER_ROOM);
        if crate::session::defer_flush(staged, this.deferred, crate::session::WRITE_COALESCE) {
            // A bulk transfer: h2 flushes after every DATA frame; let it stage the frames it
            // has ready first, so they leave as one message (as the session's socket buffer
            // does, `session::buffered_io`). It is polled again at once.
            this.deferred = true;
            crate::session::wake_after_others(cx);
            return Poll::Ready(Ok(()));
        }
        if crate::session::hold_small_flush(cx, staged, this.deferred, this.held_small) {
            // BuildKit's half inside the session's own poll: a GetSecret answer's HEADERS and
            // DATA wait one round for the trailers its call adds next, and the three leave as
            // one message (as `session::buffered_io` does on a socket).
            this.held_small = true;
            return Poll::Ready(Ok(()));
        }
        ready!(this.poll_send_staged(cx))?;
        this.deferred = false;
        this.held_small = false;
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send_staged(cx))?;
        // Our half of the body ends once the interceptor, which holds the last sender, has
        // added the call's final status.
        this.outbound.close();
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests;
