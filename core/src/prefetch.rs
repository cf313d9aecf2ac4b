//! A cache prefetch hint: the one `unsafe` block of this crate.
//!
//! A backlog's jobs are cold when their turn comes (one was put 100,000
//! jobs earlier, megabytes of slots ago), and the reserve that takes one
//! would wait for its line. When a FIFO's head is taken, the table asks
//! for the next head's line ([`crate::job::List::unlink`]), so it is in
//! the cache when that job's reserve comes. A hint changes no value and
//! cannot fault, so a wrong or stale address costs only a wasted load.

/// Asks the CPU to bring the cache line at `p` in; does nothing where the
/// target has no such hint.
#[inline(always)]
pub(crate) fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `prefetcht0` is a hint: it reads no value, writes nothing and
    // never faults, whatever the address (an unmapped one is dropped). SSE,
    // the feature the intrinsic is gated on, is part of every x86_64 target
    // (it is in the baseline ABI), so the instruction exists.
    #[allow(unsafe_code)]
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(p.cast::<i8>())
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}
