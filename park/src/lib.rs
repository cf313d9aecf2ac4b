//! Parking an idle shard thread without losing a wake-up.
//!
//! The protocol (the same shape as tokio's and crossbeam's parkers):
//!
//! 1. The shard finds no work, stores `PARKED` (SeqCst) and then re-checks
//!    its inbox and timers. If it finds work it stores `RUNNING` and goes on.
//! 2. Otherwise it parks the thread (with a timeout: its next timer).
//! 3. A producer first pushes its message, then swaps the state to
//!    `NOTIFIED`; if the old state was `PARKED` it unparks the thread.
//! 4. On waking the shard stores `RUNNING` and looks for work.
//!
//! Either the producer's swap happens before step 1's store, and the
//! re-check in step 1 sees the message, or it happens after and sees
//! `PARKED`, so it unparks (and an unpark before park makes park return at
//! once). The loom test at the bottom checks this. Producers swap only when
//! the state is not already `RUNNING`-and-known-awake, so a busy shard costs
//! a producer one load.

pub mod sync;

use crate::sync::{fence, AtomicU8, Ordering};
use std::time::Duration;

const RUNNING: u8 = 0;
const PARKED: u8 = 1;
const NOTIFIED: u8 = 2;

/// Something that can wake a parked thread (std's or loom's `Thread`).
pub trait Unpark {
    /// Wakes the thread.
    fn unpark(&self);
}

impl Unpark for std::thread::Thread {
    fn unpark(&self) {
        std::thread::Thread::unpark(self)
    }
}

#[cfg(loom)]
impl Unpark for loom::thread::Thread {
    fn unpark(&self) {
        loom::thread::Thread::unpark(self)
    }
}

/// One shard's parking spot.
#[derive(Debug)]
pub struct Parker<T: Unpark = std::thread::Thread> {
    state: AtomicU8,
    thread: T,
}

impl<T: Unpark> Parker<T> {
    /// A parker whose `notify` wakes `thread`.
    pub fn new(thread: T) -> Self {
        Parker { state: AtomicU8::new(RUNNING), thread }
    }

    /// Steps 1-2 and 4: `has_work` is the re-check. Returns once woken,
    /// timed out, or work was found on re-check.
    pub fn park(&self, timeout: Duration, has_work: impl Fn() -> bool) {
        self.prepare();
        if !has_work() {
            crate::sync::park_timeout(timeout);
        }
        self.awake();
    }

    /// Step 1's store, for a thread that sleeps somewhere else than
    /// `park` (an event loop blocking in `epoll_wait`, woken through a
    /// `mio::Waker`): call, re-check for work, sleep, then [`awake`].
    ///
    /// [`awake`]: Parker::awake
    pub fn prepare(&self) {
        self.state.store(PARKED, Ordering::SeqCst);
        // Orders the store before the re-check's loads (Dekker pattern with
        // the fence in `notify`).
        fence(Ordering::SeqCst);
    }

    /// Step 4.
    pub fn awake(&self) {
        self.state.store(RUNNING, Ordering::SeqCst);
    }

    /// Step 3, after the producer's message is visible. Returns whether the
    /// thread was parked (and so was unparked).
    pub fn notify(&self) -> bool {
        // Orders the producer's push before this load.
        fence(Ordering::SeqCst);
        if self.state.load(Ordering::SeqCst) == RUNNING {
            // Awake: it will see the message before it next parks, because
            // parking re-checks after storing PARKED (SeqCst orders the two).
            return false;
        }
        if self.state.swap(NOTIFIED, Ordering::SeqCst) == PARKED {
            self.thread.unpark();
            return true;
        }
        false
    }

    /// Whether the thread is parked now (a hint, for choosing whom to wake).
    pub fn is_parked(&self) -> bool {
        self.state.load(Ordering::Relaxed) == PARKED
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::atomic::AtomicBool;
    use loom::sync::Arc;

    /// A message pushed by a producer is always either seen by the shard's
    /// re-check or followed by an unpark: the shard never sleeps on it.
    #[test]
    fn no_lost_wakeup() {
        loom::model(|| {
            let msg = Arc::new(AtomicBool::new(false));
            let parker = Arc::new(Parker::new(loom::thread::current()));
            let producer = {
                let (msg, parker) = (msg.clone(), parker.clone());
                loom::thread::spawn(move || {
                    msg.store(true, Ordering::SeqCst);
                    parker.notify();
                })
            };
            // The shard: park until the message is there (loom reports a
            // deadlock if a wake-up is lost).
            while !msg.load(Ordering::SeqCst) {
                let m = msg.clone();
                parker.park(Duration::from_secs(1), move || m.load(Ordering::SeqCst));
            }
            producer.join().unwrap();
        });
    }
}
