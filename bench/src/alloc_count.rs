//! The `spindle-bench` binary's global allocator: the system allocator,
//! counting allocation calls while a scenario asks it to.
//!
//! Counting is off until [`enable`]: then every `alloc`, `alloc_zeroed`
//! and `realloc` (from any thread) adds one to a relaxed atomic. While off,
//! an allocation costs one relaxed load more than the plain system
//! allocator, so the scenarios that do not count (and run many threads)
//! share no written counter.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// [`System`], counting allocations while enabled.
#[derive(Debug)]
pub struct Counting;

static ON: AtomicBool = AtomicBool::new(false);
static ALLOCS: AtomicU64 = AtomicU64::new(0);

/// Starts counting.
pub fn enable() {
    ON.store(true, Ordering::Relaxed);
}

/// Allocation calls counted so far.
pub fn allocations() -> u64 {
    ALLOCS.load(Ordering::Relaxed)
}

#[inline]
fn count() {
    if ON.load(Ordering::Relaxed) {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
    }
}

#[allow(unsafe_code)]
// SAFETY: every method forwards to `System` with the caller's arguments
// unchanged, so `System`'s guarantees hold; the counters are plain atomics
// that never allocate.
unsafe impl GlobalAlloc for Counting {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as ours; the caller upholds it.
        unsafe { System.alloc(layout) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as ours; the caller upholds it.
        unsafe { System.alloc_zeroed(layout) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` through the methods above.
        unsafe { System.dealloc(ptr, layout) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: same contract as ours; the caller upholds it.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}
