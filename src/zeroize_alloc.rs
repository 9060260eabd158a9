//! A global allocator that zeroes every heap block before it goes back to the system
//! allocator, so bytes a dependency copied a secret into (h2's connection read buffer, the AWS
//! SDK's response body, a `Vec` that grew and left its old buffer behind) do not survive in
//! freed memory, where a core image or a later heap read would find them.
//!
//! Why an allocator and not fixes at each origin: the core-image test
//! (`tests/e2e/no_leaks.rs`) finds copies in buffers buildbroker never sees: the raw HTTP/2
//! frame of a relayed `client` value inside h2's `FramedRead` buffer, the JSON response body
//! inside the AWS SDK, old `Vec` buffers left by reallocation while a held ssh key is built.
//! Those types are private to their crates; only the allocator sees every one of them freed.
//! The cost (measured in docs/benchmarks.md) is one `memset` per freed byte.
//!
//! What it does not cover: memory that is still live (a buffer a connection keeps and reuses
//! until the connection closes), the stack, and copies outside this process (kernel socket
//! buffers, the page cache). It must never read, log or keep the bytes it clears.
//!
//! One of the two modules with unsafe code (the other is `secret::pages`): implementing
//! `GlobalAlloc` is `unsafe` by definition. Every block is handed straight to [`System`] with the layout it was made with.

#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, Ordering};

/// The system allocator, clearing each block on free. The daemon's binary installs it with
/// `#[global_allocator]`.
pub struct ZeroizeOnFree;

/// Cleared only by [`ZeroizeOnFree::disable_for_benchmark`]: the benchmarks measure the cost
/// of clearing by running the same binary both ways. The daemon never calls it.
static ENABLED: AtomicBool = AtomicBool::new(true);

impl ZeroizeOnFree {
    /// Turns clearing off for the rest of the process. For benchmarks only (they compare the
    /// cost); nothing in the daemon calls it.
    #[doc(hidden)]
    pub fn disable_for_benchmark() {
        ENABLED.store(false, Ordering::Relaxed);
    }

    /// Zeroes `len` bytes at `ptr` in a way the optimizer may not drop: a store into memory
    /// that is about to be freed is a dead store an optimizer may remove, so the pointer is
    /// passed through `black_box`, which the compiler must assume reads it.
    ///
    /// # Safety
    /// `ptr` must be valid for writes of `len` bytes.
    unsafe fn clear(ptr: *mut u8, len: usize) {
        if len == 0 || !ENABLED.load(Ordering::Relaxed) {
            return;
        }
        // SAFETY: the caller guarantees `ptr..ptr+len` is one live block we may write.
        unsafe { std::ptr::write_bytes(ptr, 0, len) };
        std::hint::black_box(ptr);
    }
}

// SAFETY: every method forwards to `System` with the caller's layout; the only additions are
// writes of zeroes inside a block the caller is giving up (dealloc) or has handed to us for
// moving (realloc), which the `GlobalAlloc` contract allows.
unsafe impl GlobalAlloc for ZeroizeOnFree {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` is a live block of `layout.size()` bytes until the call below.
        unsafe {
            Self::clear(ptr, layout.size());
            System.dealloc(ptr, layout);
        }
    }

    /// Never the system's `realloc`: it may move the block and free the old one uncleared.
    /// A new block is made, the bytes copied, and the old block cleared and freed.
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees `new_size`, rounded to `layout.align()`, does not
        // overflow (GlobalAlloc::realloc's contract), so this layout is valid.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: `new_layout` has a non-zero size (realloc's contract).
        let new_ptr = unsafe { System.alloc(new_layout) };
        if !new_ptr.is_null() {
            // SAFETY: both blocks are live, distinct, and at least this long.
            unsafe {
                std::ptr::copy_nonoverlapping(ptr, new_ptr, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
        }
        new_ptr
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freed_and_moved_blocks_are_cleared_and_contents_kept() {
        let a = ZeroizeOnFree;
        let layout = Layout::from_size_align(64, 8).unwrap();
        // SAFETY: a fresh block of 64 bytes, written, grown, read and freed once.
        unsafe {
            let p = a.alloc(layout);
            assert!(!p.is_null());
            std::ptr::write_bytes(p, 0xAB, 64);
            let q = a.realloc(p, layout, 4096);
            assert!(!q.is_null());
            let moved = std::slice::from_raw_parts(q, 64);
            assert!(moved.iter().all(|&b| b == 0xAB), "contents survive a move");
            a.dealloc(q, Layout::from_size_align(4096, 8).unwrap());
        }
    }
}
