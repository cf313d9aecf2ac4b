//! Loom shim for Spindle's lock-free protocols: the parker here and the
//! engine's search slots go through it, so loom can model them.

#[cfg(loom)]
pub use loom::sync::atomic::{fence, AtomicU8, AtomicUsize, Ordering};
#[cfg(not(loom))]
pub use std::sync::atomic::{fence, AtomicU8, AtomicUsize, Ordering};

#[cfg(loom)]
pub use loom::thread::park;

/// Parks the current thread for at most `timeout` (loom has no timed park,
/// so under loom it parks until unparked; the model's sleepers always are).
#[cfg(not(loom))]
pub fn park_timeout(timeout: std::time::Duration) {
    std::thread::park_timeout(timeout);
}
/// Under loom: parks until unparked (loom has no timed park).
#[cfg(loom)]
pub fn park_timeout(_timeout: std::time::Duration) {
    park();
}
