//! A counting global allocator for memory tests (shared by path, like
//! `wal/tests/support/tmpfs.rs`): `LIVE` is the bytes of the live blocks as
//! glibc's malloc would size them (8 bytes of header, rounded up to 16, at
//! least 32); `ONE` serialises measurements across a binary's test threads.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;

/// Bytes of the live blocks, as malloc would size them.
pub static LIVE: AtomicI64 = AtomicI64::new(0);
/// One measurement at a time: tests run on threads of one process.
pub static ONE: Mutex<()> = Mutex::new(());

fn block(size: usize) -> i64 {
    (size.saturating_add(8).div_ceil(16) * 16).max(32) as i64
}

struct Counting;

// SAFETY: every call is passed on unchanged to `System`; the counter is
// only arithmetic on the sizes the caller gives.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(block(layout.size()), Ordering::Relaxed);
        // SAFETY: the caller's contract for `alloc` is `System.alloc`'s.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(block(layout.size()), Ordering::Relaxed);
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(block(layout.size()), Ordering::Relaxed);
        // SAFETY: `ptr` came from `System` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(block(new_size) - block(layout.size()), Ordering::Relaxed);
        // SAFETY: `ptr` came from `System` with this layout.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static A: Counting = Counting;
