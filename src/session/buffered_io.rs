//! The buffer under each h2 half of a session: one `read(2)` drains what the kernel has
//! queued, and the DATA frames h2 writes between two flushes leave in one `write(2)`.
//!
//! Why (issue 14, docs/benchmarks.md): h2 reads into an 8 KiB buffer and writes each 16 KiB
//! DATA frame with its own `writev` and flush, so relaying a build context cost ~280 syscalls
//! per MiB; through this buffer it costs ~60, about what a plain byte splice costs.
//!
//! It never holds bytes back: reads hand over what arrived, and a flush that it defers wakes
//! the writer at once, whose next poll writes everything out if nothing more was queued. It
//! holds at most its two fixed capacities per connection and never looks at what it carries.
//! Two kinds of flush are deferred once: a bulk transfer's (a full DATA frame queued), to
//! gather the frames other tasks are about to add; and, inside the session's own poll
//! (`calls::in_rounds`), a small one, for one more round of that poll: a GetSecret answer's
//! HEADERS and DATA then leave with its trailers, which the call adds as soon as h2 has taken
//! the DATA, in one write instead of two.
//!
//! It does carry secrets (a GetSecret answer on its way to the daemon, a `client` value on its
//! way from the build client), so it keeps no copy of what it passed on: bytes the reader has
//! taken are zeroed before the buffer is refilled, bytes the kernel has taken are zeroed once
//! the write buffer is empty. A plain `memset` of what was used: no CPU difference the 1 GiB
//! A/B could resolve (docs/benchmarks.md).

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use hyper::rt::{Read, ReadBuf, ReadBufCursor, Write};

/// A flush is deferred only once this much is queued: one full 16 KiB DATA frame (grpc-go's
/// frame size) means a bulk transfer, where coalescing saves syscalls; anything smaller is a
/// request or an answer someone is waiting for.
const DEFER_FROM: usize = 16 * 1024;

/// Whether a flush with `queued` bytes waiting should be deferred once (`deferred`: it already
/// was, and nothing was written since) so the writer queues the frames it has ready first.
/// Only a bulk transfer is deferred, and only while under half of `capacity`.
pub(crate) fn defer_flush(queued: usize, deferred: bool, capacity: usize) -> bool {
    queued >= DEFER_FROM && !deferred && queued < capacity / 2
}

/// Whether a small flush (`queued` bytes, less than a full DATA frame) should wait one more
/// round of the session's own poll (`calls::in_rounds`), for the frames the call that queued
/// it adds next: a GetSecret answer's HEADERS and DATA then leave with its trailers, in one
/// write (or one `Control/Session` message) instead of two. `held`: it already waited, and
/// the next flush writes whatever is queued. Asks for that round through `cx`'s waker.
pub(crate) fn hold_small_flush(
    cx: &Context<'_>,
    queued: usize,
    deferred: bool,
    held: bool,
) -> bool {
    let hold = queued > 0 && queued < DEFER_FROM && !deferred && !held && super::calls::in_rounds();
    if hold {
        cx.waker().wake_by_ref();
    }
    hold
}

/// A connection with a fixed-size read-ahead buffer and a write buffer drained on flush.
pub struct BufferedIo<T> {
    inner: T,
    buf: Box<[u8]>,
    /// `buf[start..end]` holds received bytes the reader has not taken yet.
    start: usize,
    end: usize,
    /// Bytes written but not yet handed to the kernel (`wbuf[wsent..wend]`), at most `wcap`;
    /// `wcap` 0 = writes pass straight through. `wbuf` grows only under a transfer, and every
    /// byte of it is zero whenever nothing is queued.
    wbuf: Vec<u8>,
    wsent: usize,
    wend: usize,
    wcap: usize,
    /// The last flush was deferred and nothing was written since: the next one writes.
    deferred: bool,
    /// A small flush was held for one more round of the session's poll: the next writes,
    /// whatever was queued meanwhile.
    held_small: bool,
}

impl<T> BufferedIo<T> {
    /// `read_capacity` 0 reads straight through; `write_capacity` 0 writes straight through.
    pub fn new(inner: T, read_capacity: usize, write_capacity: usize) -> Self {
        BufferedIo {
            inner,
            // Zeroed pages are mapped lazily: an idle session touches only the first of them.
            buf: vec![0; read_capacity].into_boxed_slice(),
            start: 0,
            end: 0,
            wbuf: Vec::new(),
            wsent: 0,
            wend: 0,
            wcap: write_capacity,
            deferred: false,
            held_small: false,
        }
    }
}

impl<T: Write + Unpin> BufferedIo<T> {
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while self.wsent < self.wend {
            let n = ready!(
                Pin::new(&mut self.inner).poll_write(cx, &self.wbuf[self.wsent..self.wend])
            )?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.wsent += n;
        }
        // Everything was handed over: no copy stays behind (the module's comment).
        self.wbuf[..self.wend].fill(0);
        self.wsent = 0;
        self.wend = 0;
        Poll::Ready(Ok(()))
    }

    /// Bytes queued and not yet handed to the kernel.
    fn queued(&self) -> usize {
        self.wend - self.wsent
    }

    /// Appends to the queue (the caller checked the capacity).
    fn queue(&mut self, bytes: &[u8]) {
        let end = self.wend + bytes.len();
        if self.wbuf.len() < end {
            self.wbuf.resize(end, 0);
        }
        self.wbuf[self.wend..end].copy_from_slice(bytes);
        self.wend = end;
    }
}

impl<T: Read + Unpin> Read for BufferedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut out: ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.start == this.end {
            // All taken: no copy stays behind (the module's comment).
            if this.end > 0 {
                this.buf[..this.end].fill(0);
                this.start = 0;
                this.end = 0;
            }
            // A reader asking for at least our capacity gains nothing from a second copy.
            if out.remaining() >= this.buf.len() {
                return Pin::new(&mut this.inner).poll_read(cx, out);
            }
            let mut fill = ReadBuf::new(&mut this.buf);
            ready!(Pin::new(&mut this.inner).poll_read(cx, fill.unfilled()))?;
            this.start = 0;
            this.end = fill.filled().len();
        }
        let n = out.remaining().min(this.end - this.start);
        out.put_slice(&this.buf[this.start..this.start + n]);
        this.start += n;
        Poll::Ready(Ok(()))
    }
}

impl<T: Write + Unpin> Write for BufferedIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if this.wcap == 0 {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        }
        if this.queued() + buf.len() > this.wcap {
            ready!(this.drain(cx))?;
        }
        if buf.len() >= this.wcap {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        }
        this.queue(buf);
        this.deferred = false;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if this.wcap == 0 {
            return Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        }
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if this.queued() + total > this.wcap {
            ready!(this.drain(cx))?;
        }
        if total >= this.wcap {
            return Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        }
        for b in bufs {
            this.queue(b);
        }
        this.deferred = false;
        Poll::Ready(Ok(total))
    }

    fn is_write_vectored(&self) -> bool {
        self.wcap > 0 || self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.wcap > 0 && defer_flush(this.queued(), this.deferred, this.wcap) {
            // h2 flushes after every frame; in a bulk transfer (a full DATA frame is queued)
            // let it queue the frames it has ready first. It is polled again at once, and that
            // flush writes unless more was written meanwhile (then the half-full mark bounds
            // how long this can go on). Less than a full frame (a GetSecret answer, headers,
            // window updates) is written at once: waiting would only delay the answer.
            this.deferred = true;
            super::wake_after_others(cx);
            return Poll::Ready(Ok(()));
        }
        if this.wcap > 0 && hold_small_flush(cx, this.queued(), this.deferred, this.held_small) {
            // A small write inside the session's own poll (a GetSecret answer's HEADERS and
            // DATA): the call that queued it sends its trailers as soon as h2 has taken the
            // DATA, in the next round of the same poll. One more round, and the answer leaves
            // in one write instead of two (and the daemon reads it with one wakeup).
            this.held_small = true;
            return Poll::Ready(Ok(()));
        }
        ready!(this.drain(cx))?;
        this.deferred = false;
        this.held_small = false;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        ready!(this.drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper_util::rt::TokioIo;
    use tokio::io::AsyncReadExt;

    /// What the far end has received so far, without waiting.
    fn received(far: &mut tokio::io::DuplexStream) -> usize {
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0;
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        loop {
            let mut read = tokio::io::ReadBuf::new(&mut buf);
            match tokio::io::AsyncRead::poll_read(Pin::new(far), &mut cx, &mut read) {
                Poll::Ready(Ok(())) if !read.filled().is_empty() => total += read.filled().len(),
                _ => return total,
            }
        }
    }

    async fn write_and_flush_once(io: &mut BufferedIo<TokioIo<tokio::io::DuplexStream>>, n: usize) {
        let data = vec![7u8; n];
        let written = std::future::poll_fn(|cx| Pin::new(&mut *io).poll_write(cx, &data))
            .await
            .unwrap();
        assert_eq!(written, n);
        std::future::poll_fn(|cx| Pin::new(&mut *io).poll_flush(cx))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_small_answer_leaves_on_its_first_flush() {
        let (near, mut far) = tokio::io::duplex(1 << 20);
        let mut io = BufferedIo::new(TokioIo::new(near), 256 * 1024, 256 * 1024);
        write_and_flush_once(&mut io, 1100).await;
        assert_eq!(received(&mut far), 1100, "not held back by the first flush");
    }

    /// Inside the session's own poll, a small answer waits one round for the frames its call
    /// adds next (gRPC trailers), asking for that round through the waker; the next flush
    /// writes it with them in one write, and never holds it again.
    #[tokio::test]
    async fn a_small_answer_inside_the_sessions_poll_waits_one_round_for_its_trailers() {
        struct Count(std::sync::atomic::AtomicUsize);
        impl std::task::Wake for Count {
            fn wake(self: std::sync::Arc<Self>) {
                self.wake_by_ref();
            }
            fn wake_by_ref(self: &std::sync::Arc<Self>) {
                self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        let count = std::sync::Arc::new(Count(Default::default()));
        let wakes = || count.0.load(std::sync::atomic::Ordering::Relaxed);
        let waker = std::task::Waker::from(count.clone());
        let (near, mut far) = tokio::io::duplex(1 << 20);
        let mut io = BufferedIo::new(TokioIo::new(near), 256 * 1024, 256 * 1024);
        let write = |io: &mut BufferedIo<_>, n: usize| {
            let mut cx = Context::from_waker(&waker);
            let data = vec![7u8; n];
            assert!(matches!(
                Pin::new(&mut *io).poll_write(&mut cx, &data),
                Poll::Ready(Ok(w)) if w == n
            ));
            assert!(matches!(
                Pin::new(&mut *io).poll_flush(&mut cx),
                Poll::Ready(Ok(()))
            ));
        };
        {
            let _in_rounds = super::super::calls::InRounds::enter();
            write(&mut io, 1100);
            assert_eq!(received(&mut far), 0, "held for one round");
            assert_eq!(wakes(), 1, "and that round asked for");
            write(&mut io, 10);
            assert_eq!(
                received(&mut far),
                1110,
                "the next flush writes the answer and its trailers in one write"
            );
        }
        // Outside the session's poll (the build client's half), at once, as before.
        write(&mut io, 1100);
        assert_eq!(received(&mut far), 1100);
    }

    #[tokio::test]
    async fn no_copy_stays_behind_once_bytes_are_passed_on() {
        let (near, mut far) = tokio::io::duplex(1 << 20);
        let mut io = BufferedIo::new(TokioIo::new(near), 256 * 1024, 256 * 1024);
        write_and_flush_once(&mut io, 1100).await;
        assert_eq!(received(&mut far), 1100);
        assert!(io.wbuf.len() >= 1100, "the write went through the buffer");
        assert!(io.wbuf.iter().all(|b| *b == 0), "written bytes are cleared");

        // The far end sends 3000 bytes; the reader takes them in two reads, then asks again.
        tokio::io::AsyncWriteExt::write_all(&mut far, &[9u8; 3000])
            .await
            .unwrap();
        let mut got = Vec::new();
        for want in [1000, 2000] {
            let mut out = vec![0u8; want];
            let mut read = ReadBuf::new(&mut out);
            std::future::poll_fn(|cx| Pin::new(&mut io).poll_read(cx, read.unfilled()))
                .await
                .unwrap();
            got.extend_from_slice(read.filled());
        }
        assert_eq!(got, vec![9u8; 3000]);
        assert!(
            io.buf[..3000].contains(&9),
            "held until the reader asks again"
        );
        let mut out = vec![0u8; 10];
        let mut read = ReadBuf::new(&mut out);
        let waker = std::task::Waker::noop();
        let pending = Pin::new(&mut io).poll_read(&mut Context::from_waker(waker), read.unfilled());
        assert!(pending.is_pending(), "nothing more arrived");
        assert!(
            io.buf.iter().all(|b| *b == 0),
            "read bytes are cleared before a refill"
        );
    }

    #[tokio::test]
    async fn bulk_frames_are_coalesced_then_written_by_the_next_flush() {
        let (near, mut far) = tokio::io::duplex(1 << 20);
        let mut io = BufferedIo::new(TokioIo::new(near), 256 * 1024, 256 * 1024);
        write_and_flush_once(&mut io, DEFER_FROM + 9).await;
        assert_eq!(
            received(&mut far),
            0,
            "the first flush of a bulk frame waits"
        );
        write_and_flush_once(&mut io, DEFER_FROM + 9).await;
        assert_eq!(
            received(&mut far),
            0,
            "frames queue until a flush finds nothing new"
        );
        std::future::poll_fn(|cx| Pin::new(&mut io).poll_flush(cx))
            .await
            .unwrap();
        assert_eq!(
            received(&mut far),
            2 * (DEFER_FROM + 9),
            "then both leave in one write"
        );
        let mut rest = [0u8; 1];
        drop(io);
        assert_eq!(far.read(&mut rest).await.unwrap(), 0);
    }
}
