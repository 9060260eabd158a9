//! The memory behind every [`SecretBytes`](super::SecretBytes): whole pages of their own,
//! never shared with other data, marked so that the kernel leaves them out of core files
//! (`MADV_DONTDUMP`) and out of forked children (`MADV_WIPEONFORK`), and locked into RAM
//! (`mlock`) so that they are never written to swap.
//!
//! A value of up to one page (nearly every token, password or netrc) takes one page from a pool
//! that is refilled [`SLAB_PAGES`] at a time, so the steady state of a GetSecret answer costs no
//! system call. Larger values (up to the 500 KiB buildx allows) get a mapping of their own that
//! is unmapped when they are dropped. Every page is zeroed before it goes back to the pool or to
//! the kernel; pool pages stay mapped and locked for the life of the process, so the locked
//! memory is bounded by the most values ever held at once.
//!
//! `mlock` can fail where `RLIMIT_MEMLOCK` is low (8 MiB is the kernel's default, some
//! containers set 64 KiB): the value is then kept anyway, unlocked, and one warning says so
//! (values may then reach swap; core files still exclude them). `MADV_DONTDUMP` has no limit.
//!
//! It must never read, log or keep the bytes it holds beyond what its owner asks for. This is
//! one of the two modules with unsafe code (the other is the zeroizing allocator): raw page
//! mappings have no safe interface.

#![allow(unsafe_code)]

use std::ffi::c_void;
use std::ptr::NonNull;
use std::sync::Mutex;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use rustix::mm::{self, Advice, MapFlags, ProtFlags};
use zeroize::Zeroize;

/// Pages mapped at once when the one-page pool runs dry (64 KiB with 4 KiB pages).
const SLAB_PAGES: usize = 16;

/// Free one-page blocks, as addresses (raw pointers are not `Send`). Each is zeroed.
static POOL: Mutex<Vec<usize>> = Mutex::new(Vec::new());

/// Pages currently mapped for secrets, and how many of them `mlock` refused.
static MAPPED_PAGES: AtomicUsize = AtomicUsize::new(0);
static UNLOCKED_PAGES: AtomicUsize = AtomicUsize::new(0);
/// Set once the first `mlock` failure has been reported.
static WARNED: AtomicBool = AtomicBool::new(false);

fn page_size() -> usize {
    static SIZE: OnceLock<usize> = OnceLock::new();
    *SIZE.get_or_init(rustix::param::page_size)
}

/// What the secret pages look like now, for `/metrics` and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageStats {
    /// Pages mapped for secret values (pool and large values).
    pub mapped: usize,
    /// Of those, pages `mlock` refused (they may reach swap).
    pub unlocked: usize,
}

pub fn stats() -> PageStats {
    PageStats {
        mapped: MAPPED_PAGES.load(Ordering::Relaxed),
        unlocked: UNLOCKED_PAGES.load(Ordering::Relaxed),
    }
}

/// Maps `pages` zeroed pages, excluded from core dumps and forks, locked if the limit allows.
/// An allocation failure aborts like any other out-of-memory.
fn map(pages: usize) -> NonNull<u8> {
    let len = pages * page_size();
    // SAFETY: a fresh private anonymous mapping; no existing memory is touched.
    let ptr = unsafe {
        mm::mmap_anonymous(
            std::ptr::null_mut(),
            len,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::PRIVATE,
        )
    };
    let Ok(ptr) = ptr else {
        std::alloc::handle_alloc_error(
            std::alloc::Layout::from_size_align(len, page_size()).expect("page layout"),
        );
    };
    // SAFETY: `ptr..ptr+len` is the mapping just made, owned by no one else yet. Advice and
    // locking change how the kernel treats the pages, not their contents.
    unsafe {
        // Both advices exist since Linux 3.4 / 4.14; on an older kernel the pages are only
        // kept out of other data's way, which the zeroing on drop already relies on.
        let _ = mm::madvise(ptr, len, Advice::LinuxDontDump);
        let _ = mm::madvise(ptr, len, Advice::LinuxWipeOnFork);
        if let Err(e) = mm::mlock(ptr, len) {
            UNLOCKED_PAGES.fetch_add(pages, Ordering::Relaxed);
            if !WARNED.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    error = %e,
                    "cannot lock secret pages in memory (RLIMIT_MEMLOCK too low?): values are \
                     still kept out of core files, but may be written to swap; raise the limit \
                     (systemd: LimitMEMLOCK=, docker: --ulimit memlock=) to keep them in RAM"
                );
            }
        }
    }
    MAPPED_PAGES.fetch_add(pages, Ordering::Relaxed);
    NonNull::new(ptr.cast::<u8>()).expect("mmap never returns null on success")
}

/// Zeroes the first `dirty` bytes of `pages` pages at `ptr` (the rest are still zero) and
/// returns them (one page to the pool, more to the kernel).
///
/// # Safety
/// `ptr` must come from [`take`] with the same `pages`, not be used afterwards, and hold only
/// zeroes past `dirty`.
unsafe fn give_back(ptr: NonNull<u8>, pages: usize, dirty: usize) {
    let len = pages * page_size();
    // SAFETY: the caller gives up the whole block, which is ours to write.
    unsafe { std::slice::from_raw_parts_mut(ptr.as_ptr(), dirty.min(len)) }.zeroize();
    if pages == 1 {
        POOL.lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(ptr.as_ptr() as usize);
        return;
    }
    // SAFETY: a mapping of its own, made by `map(pages)`; nothing refers to it any more.
    unsafe {
        let addr = ptr.as_ptr().cast::<c_void>();
        if mm::munlock(addr, len).is_err() {
            UNLOCKED_PAGES.fetch_sub(pages, Ordering::Relaxed);
        }
        let _ = mm::munmap(addr, len);
    }
    MAPPED_PAGES.fetch_sub(pages, Ordering::Relaxed);
}

/// A zeroed block of `pages` pages.
fn take(pages: usize) -> NonNull<u8> {
    if pages > 1 {
        return map(pages);
    }
    let mut pool = POOL.lock().unwrap_or_else(|p| p.into_inner());
    if pool.is_empty() {
        let slab = map(SLAB_PAGES).as_ptr() as usize;
        pool.extend((1..SLAB_PAGES).rev().map(|i| slab + i * page_size()));
        return NonNull::new(slab as *mut u8).expect("slab address is not null");
    }
    let addr = pool.pop().expect("pool is not empty");
    NonNull::new(addr as *mut u8).expect("pooled address is not null")
}

/// A growable byte buffer in secret pages. Growing moves the bytes to a larger block and
/// zeroes the old one; nothing is ever left behind in ordinary heap memory.
pub struct SecretBuf {
    /// Dangling when `pages == 0`.
    ptr: NonNull<u8>,
    pages: usize,
    len: usize,
    /// Every byte past this is zero (pages come zeroed): what drop has to clear. It covers
    /// what was ever written, including the spare area handed out for in-place reads.
    dirty: usize,
}

// SAFETY: `SecretBuf` owns its pages exclusively, like a `Vec<u8>`; it has no interior
// mutability, so sharing `&SecretBuf` across threads only allows reads.
unsafe impl Send for SecretBuf {}
// SAFETY: as above.
unsafe impl Sync for SecretBuf {}

impl SecretBuf {
    /// An empty buffer; no page is taken until a byte is written.
    pub const fn new() -> Self {
        SecretBuf {
            ptr: NonNull::dangling(),
            pages: 0,
            len: 0,
            dirty: 0,
        }
    }

    /// An empty buffer with room for `capacity` bytes without moving.
    pub fn with_capacity(capacity: usize) -> Self {
        let mut buf = Self::new();
        buf.reserve(capacity);
        buf
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn capacity(&self) -> usize {
        self.pages * page_size()
    }

    pub fn as_slice(&self) -> &[u8] {
        if self.pages == 0 {
            return &[];
        }
        // SAFETY: `ptr` holds `capacity() >= len` bytes that are ours and initialised (pages
        // come zeroed).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// All `capacity()` bytes (initialised: pages come zeroed), for writing in place.
    fn whole_mut(&mut self) -> &mut [u8] {
        if self.pages == 0 {
            return &mut [];
        }
        // SAFETY: as in `as_slice`, for the whole block, borrowed mutably through `self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.capacity()) }
    }

    /// Makes room for `additional` more bytes, moving to a larger block if needed.
    pub fn reserve(&mut self, additional: usize) {
        let needed = self
            .len
            .checked_add(additional)
            .expect("secret length overflows usize");
        if needed <= self.capacity() {
            return;
        }
        let target = needed.max(self.capacity() * 2);
        let pages = target.div_ceil(page_size());
        let mut grown = SecretBuf {
            ptr: take(pages),
            pages,
            len: self.len,
            dirty: self.len,
        };
        grown.whole_mut()[..self.len].copy_from_slice(self.as_slice());
        // The old block is zeroed and given back when `grown`'s old value drops here.
        std::mem::swap(self, &mut grown);
    }

    pub fn extend_from_slice(&mut self, bytes: &[u8]) {
        self.reserve(bytes.len());
        let at = self.len;
        self.whole_mut()[at..at + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
        self.dirty = self.dirty.max(self.len);
    }

    pub fn push(&mut self, byte: u8) {
        self.extend_from_slice(&[byte]);
    }

    /// Sets the length; new bytes are `fill`, removed ones are zeroed at once.
    pub fn resize(&mut self, len: usize, fill: u8) {
        if len > self.len {
            self.reserve(len - self.len);
            let at = self.len;
            self.whole_mut()[at..len].fill(fill);
            self.dirty = self.dirty.max(len);
        }
        self.truncate(len);
        self.len = len;
    }

    /// Shortens to `len` bytes, zeroing the rest.
    pub fn truncate(&mut self, len: usize) {
        if len < self.len {
            let old = self.len;
            self.whole_mut()[len..old].zeroize();
            self.len = len;
        }
    }

    pub fn last(&self) -> Option<&u8> {
        self.as_slice().last()
    }

    pub fn pop(&mut self) -> Option<u8> {
        let last = *self.last()?;
        self.truncate(self.len - 1);
        Some(last)
    }

    /// The unwritten part of the block, for a read to fill in place (see `advance`). All of it
    /// is cleared on drop, whatever the read wrote.
    pub fn spare_mut(&mut self) -> &mut [u8] {
        let at = self.len;
        self.dirty = self.capacity();
        &mut self.whole_mut()[at..]
    }

    /// Records that `n` bytes were written at the start of [`SecretBuf::spare_mut`].
    pub fn advance(&mut self, n: usize) {
        assert!(
            self.len + n <= self.capacity(),
            "advance past the secret buffer"
        );
        self.len += n;
    }
}

impl Default for SecretBuf {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for SecretBuf {
    fn drop(&mut self) {
        if self.pages > 0 {
            // SAFETY: the block came from `take(self.pages)` and `self` is going away.
            unsafe { give_back(self.ptr, self.pages, self.dirty) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `VmFlags` line of the `/proc/self/smaps` entry holding `addr`.
    fn vm_flags(addr: usize) -> String {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut inside = false;
        for line in smaps.lines() {
            if let Some((range, _)) = line.split_once(' ')
                && let Some((lo, hi)) = range.split_once('-')
                && let (Ok(lo), Ok(hi)) =
                    (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
            {
                inside = (lo..hi).contains(&addr);
            } else if inside && line.starts_with("VmFlags:") {
                return line.to_string();
            }
        }
        panic!("no mapping holds {addr:#x}");
    }

    #[test]
    fn pages_are_excluded_from_dumps_and_forks() {
        for size in [1, 5000] {
            let mut buf = SecretBuf::new();
            buf.extend_from_slice(&vec![7u8; size]);
            let flags = vm_flags(buf.as_slice().as_ptr() as usize);
            assert!(
                flags.contains(" dd"),
                "size {size}: not MADV_DONTDUMP: {flags}"
            );
            assert!(
                flags.contains(" wf"),
                "size {size}: not MADV_WIPEONFORK: {flags}"
            );
        }
    }

    #[test]
    fn growing_keeps_the_bytes_and_zeroes_the_old_block() {
        let mut buf = SecretBuf::with_capacity(3);
        buf.extend_from_slice(b"abc");
        let old = buf.as_slice().as_ptr();
        buf.extend_from_slice(&vec![b'x'; 2 * page_size()]);
        assert_eq!(&buf.as_slice()[..4], b"abcx");
        assert_eq!(buf.len(), 3 + 2 * page_size());
        assert_ne!(buf.as_slice().as_ptr(), old, "it moved to a larger block");
        // The old page went back to the pool zeroed: the next one-page buffer may be it, and
        // every block starts out zero.
        let mut again = SecretBuf::with_capacity(1);
        assert!(again.spare_mut().iter().all(|b| *b == 0));
    }

    #[test]
    fn editing_in_place() {
        let mut buf = SecretBuf::new();
        assert!(buf.is_empty() && buf.as_slice().is_empty() && buf.last().is_none());
        buf.extend_from_slice(b"value\r\n");
        assert_eq!(buf.pop(), Some(b'\n'));
        assert_eq!(buf.last(), Some(&b'\r'));
        buf.truncate(2);
        assert_eq!(buf.as_slice(), b"va");
        buf.resize(4, b'-');
        assert_eq!(buf.as_slice(), b"va--");
        buf.push(b'!');
        let spare = buf.spare_mut();
        assert!(spare.iter().all(|b| *b == 0), "truncated bytes were zeroed");
        spare[..2].copy_from_slice(b"ok");
        buf.advance(2);
        assert_eq!(buf.as_slice(), b"va--!ok");
    }

    #[test]
    fn stats_count_large_mappings() {
        // Other tests map and unmap at the same time, so only lower bounds hold.
        let big = SecretBuf::with_capacity(3 * page_size());
        assert!(stats().mapped >= 3);
        drop(big);
        let now = stats();
        assert!(now.unlocked <= now.mapped, "{now:?}");
    }
}
