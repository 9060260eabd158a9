//! A read-ahead buffer under a session's HTTP/2 connection, so one `read(2)` drains what the
//! kernel has queued instead of the 8–32 KiB h2's own frame reader asks for at a time.
//!
//! It only buffers bytes already received (at most its fixed capacity per connection); it
//! never holds bytes back from the reader, never delays a write, and never looks at what it
//! carries.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use hyper::rt::{Read, ReadBuf, ReadBufCursor, Write};

/// A connection with a fixed-size read-ahead buffer; writes pass straight through.
pub struct ReadAhead<T> {
    inner: T,
    buf: Box<[u8]>,
    /// `buf[start..end]` holds received bytes the reader has not taken yet.
    start: usize,
    end: usize,
    /// EXPERIMENT: write coalescing; `wcap` 0 = writes pass through.
    wbuf: Vec<u8>,
    wcap: usize,
    deferred: bool,
}

impl<T> ReadAhead<T> {
    pub fn new(inner: T, capacity: usize) -> Self {
        Self::with_write(inner, capacity, 0)
    }

    pub fn with_write(inner: T, capacity: usize, wcap: usize) -> Self {
        ReadAhead {
            inner,
            buf: vec![0; capacity].into_boxed_slice(),
            start: 0,
            end: 0,
            wbuf: Vec::with_capacity(wcap),
            wcap,
            deferred: false,
        }
    }
}

impl<T: Write + Unpin> ReadAhead<T> {
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while !self.wbuf.is_empty() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.wbuf))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.wbuf.drain(..n);
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: Read + Unpin> Read for ReadAhead<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut out: ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.start == this.end {
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

impl<T: Write + Unpin> Write for ReadAhead<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if this.wcap == 0 {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        }
        if this.wbuf.len() + buf.len() > this.wcap {
            ready!(this.drain(cx))?;
        }
        if buf.len() >= this.wcap {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        }
        this.wbuf.extend_from_slice(buf);
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
        if this.wbuf.len() + total > this.wcap {
            ready!(this.drain(cx))?;
        }
        if total >= this.wcap {
            return Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        }
        for b in bufs {
            this.wbuf.extend_from_slice(b);
        }
        this.deferred = false;
        Poll::Ready(Ok(total))
    }

    fn is_write_vectored(&self) -> bool {
        self.wcap > 0 || self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.wcap > 0
            && !this.wbuf.is_empty()
            && !this.deferred
            && this.wbuf.len() < this.wcap / 2
        {
            // Let the writer queue more before the syscall: it polls again right away.
            this.deferred = true;
            cx.waker().wake_by_ref();
            return Poll::Ready(Ok(()));
        }
        ready!(this.drain(cx))?;
        this.deferred = false;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        ready!(this.drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}
