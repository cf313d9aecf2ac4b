//! Loom shim: the atomics, locks, thread parking and the spin hint the
//! lock-free and waiting protocols use come
//! from loom under `--cfg loom` and from std otherwise, so the same code is
//! model-checked and shipped.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
#[cfg(loom)]
pub(crate) use loom::sync::{Arc, Mutex, MutexGuard};
#[cfg(loom)]
pub(crate) use loom::thread;
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
#[cfg(not(loom))]
pub(crate) use std::sync::{Arc, Mutex, MutexGuard};
#[cfg(not(loom))]
pub(crate) use std::thread;

/// Spins this many times before yielding the CPU while waiting for an earlier
/// appender to publish. An append's critical section is one write: a memcpy
/// (tens of nanoseconds) with `WriteMethod::Mmap`, one `pwritev` (about a
/// microsecond; ext4 serialises writers of one file on its inode lock) by
/// default. 64 pause instructions (~1-3 µs) cover it unless the other thread
/// was preempted or blocked, in which case yielding lets it run (2-core
/// machine).
#[cfg(not(loom))]
const SPINS_BEFORE_YIELD: u32 = 64;

/// One step of a bounded spin-then-yield wait.
#[inline]
pub(crate) fn backoff(step: &mut u32) {
    #[cfg(loom)]
    {
        let _ = step;
        loom::thread::yield_now();
    }
    #[cfg(not(loom))]
    {
        if *step < SPINS_BEFORE_YIELD {
            *step += 1;
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
}
