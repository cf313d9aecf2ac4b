//! Loom shim for the engine's lock-free protocols (see `park.rs`).

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{fence, AtomicU8, AtomicUsize, Ordering};
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{fence, AtomicU8, AtomicUsize, Ordering};

#[cfg(loom)]
pub(crate) use loom::thread::park;

/// Parks the current thread for at most `timeout` (loom has no timed park,
/// so under loom it parks until unparked; the model's sleepers always are).
#[cfg(not(loom))]
pub(crate) fn park_timeout(timeout: std::time::Duration) {
    std::thread::park_timeout(timeout);
}
#[cfg(loom)]
pub(crate) fn park_timeout(_timeout: std::time::Duration) {
    park();
}
