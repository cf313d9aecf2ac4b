//! Threads waiting for their records to be durable, each woken when its own
//! record is: not all of them after every sync.
//!
//! With a condition variable and `notify_all`, every sync wakes every
//! waiter, and those whose records the sync did not cover go back to sleep:
//! with 64 producers on 2 cores that is the scheduler's work doubled, and
//! each woken thread queues for the log's mutex. Here:
//!
//! 1. A waiter registers (its LSN and a token holding its thread) under the
//!    list's mutex.
//! 2. It then re-checks whether its record is durable (or the log stopped):
//!    the flusher may have stored the durable LSN and drained the list just
//!    before the registration. If so it removes its own entry; if the entry
//!    is gone, the flusher took it and will set its token.
//! 3. Otherwise it parks until its token is set (`park` may return
//!    spuriously; the loop re-checks).
//! 4. The flusher, after storing a new durable LSN, drains the entries it
//!    covers under the mutex. It sets the tokens of the first
//!    [`DIRECT`] and unparks their threads; the rest go onto the relay
//!    stack (under the same mutex). On failure or shutdown it sets and
//!    unparks every entry and every relayed token itself.
//! 5. A waiter that leaves because its token is set first pops up to
//!    [`RELAY`] tokens off the relay stack, sets them and unparks their
//!    threads. Waking is thus a tree over the woken threads: the flusher
//!    makes a few wake-ups per sync, not one per waiter, and goes back to
//!    syncing (waking 64 threads one by one took it longer than the sync).
//!    A relayed waiter whose record it sees durable still waits for its
//!    token: the set token is what lets it leave.
//!
//! Every unpark is consumed by its waiter's loop (the waiter only leaves
//! once its token is set or its entry is removed by itself), so no stray
//! wake-up reaches the caller's thread afterwards. Every relayed token is
//! set: each thread woken pops [`RELAY`] more while any are left, and the
//! flusher wakes at least one thread each time it relays.

use crate::sync::{thread, Arc, AtomicBool, Mutex, Ordering};

/// One waiter's token.
#[derive(Debug)]
struct Token {
    done: AtomicBool,
    thread: thread::Thread,
}

/// Waiters the flusher wakes itself per sync (step 4).
#[cfg(not(loom))]
const DIRECT: usize = 2;
#[cfg(loom)]
const DIRECT: usize = 1;
/// Relayed waiters each woken waiter wakes (step 5).
const RELAY: usize = 2;

/// The lists under the mutex.
#[derive(Debug, Default)]
struct Lists {
    /// Registered waiters and their LSNs (steps 1-3).
    waiting: Vec<(u64, Arc<Token>)>,
    /// Drained by the flusher, not yet set and unparked (step 5).
    relay: Vec<Arc<Token>>,
}

/// The waiters of one log.
#[derive(Debug, Default)]
pub(crate) struct Waiters {
    lists: Mutex<Lists>,
}

impl Waiters {
    fn lock(&self) -> crate::sync::MutexGuard<'_, Lists> {
        // Only pushes, removals and drains happen under the lock: a poisoned
        // list is still consistent.
        self.lists.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Step 5, by a waiter leaving with its token set.
    fn relay(&self) {
        let mut popped: [Option<Arc<Token>>; RELAY] = Default::default();
        {
            let mut lists = self.lock();
            for p in &mut popped {
                *p = lists.relay.pop();
            }
        }
        for t in popped.into_iter().flatten() {
            set(&t);
        }
    }

    /// Steps 1-3: blocks until `settled()` (the record at `lsn` is durable,
    /// or the log stopped) and the flusher is done with this waiter.
    pub(crate) fn wait(&self, lsn: u64, settled: impl Fn() -> bool) {
        let token = Arc::new(Token { done: AtomicBool::new(false), thread: thread::current() });
        self.lock().waiting.push((lsn, token.clone()));
        loop {
            if token.done.load(Ordering::Acquire) {
                self.relay();
                return;
            }
            if settled() {
                let mut lists = self.lock();
                if let Some(at) = lists.waiting.iter().position(|(_, t)| Arc::ptr_eq(t, &token)) {
                    lists.waiting.swap_remove(at);
                    return;
                }
                drop(lists);
                // The flusher took the entry: its token is set, or is set
                // next (by the flusher or a relaying waiter) and then its
                // thread unparked. (Checked again here: the unpark may have
                // come while this thread waited for the lock.)
                if token.done.load(Ordering::Acquire) {
                    self.relay();
                    return;
                }
            }
            thread::park();
        }
    }

    /// Step 4: wakes every waiter whose record is below `durable`, the
    /// first [`DIRECT`] itself and the rest through the relay (step 5).
    pub(crate) fn wake_below(&self, durable: u64) {
        let mut now: Vec<Arc<Token>> = Vec::new();
        {
            let mut lists = self.lock();
            if lists.waiting.is_empty() {
                return;
            }
            let Lists { waiting, relay } = &mut *lists;
            waiting.retain(|(lsn, t)| {
                let keep = *lsn >= durable;
                if !keep {
                    if now.len() < DIRECT {
                        now.push(t.clone());
                    } else {
                        relay.push(t.clone());
                    }
                }
                keep
            });
        }
        for t in &now {
            set(t);
        }
    }

    /// Step 4 on failure or shutdown: wakes every waiter, relayed or not.
    pub(crate) fn wake_all(&self) {
        let woken: Vec<Arc<Token>> = {
            let mut lists = self.lock();
            let Lists { waiting, relay } = &mut *lists;
            relay.drain(..).chain(waiting.drain(..).map(|(_, t)| t)).collect()
        };
        for t in &woken {
            set(t);
        }
    }
}

/// Sets a drained waiter's token and unparks its thread.
fn set(t: &Token) {
    t.done.store(true, Ordering::Release);
    t.thread.unpark();
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;
    use std::sync::mpsc::Receiver;
    use std::thread::JoinHandle;

    type Registered =
        (std::sync::Arc<Waiters>, std::sync::Arc<AtomicU64>, Receiver<u64>, Vec<JoinHandle<()>>);

    /// A thread waiting for each LSN (it sends its LSN once it leaves),
    /// returned once all of them are registered.
    #[allow(clippy::unwrap_used)] // a test helper: a failure is the test failing
    fn registered(lsns: impl IntoIterator<Item = u64>) -> Registered {
        let w = std::sync::Arc::new(Waiters::default());
        let durable = std::sync::Arc::new(AtomicU64::new(0));
        let (tx, rx) = std::sync::mpsc::channel();
        let threads: Vec<_> = lsns
            .into_iter()
            .map(|lsn| {
                let (w, durable, tx) = (w.clone(), durable.clone(), tx.clone());
                std::thread::spawn(move || {
                    w.wait(lsn, || durable.load(Ordering::Acquire) > lsn);
                    tx.send(lsn).unwrap();
                })
            })
            .collect();
        while w.lock().waiting.len() < threads.len() {
            std::thread::yield_now();
        }
        (w, durable, rx, threads)
    }

    #[test]
    fn each_waiter_leaves_once_its_own_lsn_is_durable() {
        let (w, durable, rx, threads) = registered([10, 20]);
        durable.store(15, Ordering::Release);
        w.wake_below(15);
        assert_eq!(rx.recv().unwrap(), 10);
        assert_eq!(w.lock().waiting.len(), 1, "the other waiter is still registered");
        durable.store(25, Ordering::Release);
        w.wake_below(25);
        assert_eq!(rx.recv().unwrap(), 20);
        for t in threads {
            t.join().unwrap();
        }
        assert!(w.lock().waiting.is_empty());
    }

    #[test]
    fn one_sync_wakes_many_waiters_through_the_relay() {
        let n = 4 * DIRECT + 3;
        let (w, durable, rx, threads) = registered(0..n as u64);
        durable.store(n as u64, Ordering::Release);
        w.wake_below(n as u64);
        let mut left: Vec<u64> = (0..n).map(|_| rx.recv().unwrap()).collect();
        left.sort_unstable();
        assert_eq!(left, (0..n as u64).collect::<Vec<_>>());
        for t in threads {
            t.join().unwrap();
        }
        let lists = w.lock();
        assert!(lists.waiting.is_empty() && lists.relay.is_empty());
    }

    #[test]
    fn a_waiter_already_settled_leaves_without_the_flusher() {
        let w = Waiters::default();
        w.wait(5, || true);
        assert!(w.lock().waiting.is_empty(), "it removed its own entry");
    }

    #[test]
    fn wake_all_releases_everyone() {
        let w = std::sync::Arc::new(Waiters::default());
        let stopped = std::sync::Arc::new(AtomicBool::new(false));
        let t = {
            let (w, stopped) = (w.clone(), stopped.clone());
            std::thread::spawn(move || w.wait(99, || stopped.load(Ordering::Acquire)))
        };
        while w.lock().waiting.is_empty() {
            std::thread::yield_now();
        }
        stopped.store(true, Ordering::Release);
        w.wake_all();
        t.join().unwrap();
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    //! Model checks of steps 1-4: a flusher making LSNs durable and waking
    //! against one waiter, and against two (LSN 0 and 1) of which the first
    //! sync covers one and the second the other: no waiter sleeps forever,
    //! none leaves before its record is durable.
    use super::*;
    use loom::sync::atomic::AtomicU64;

    #[test]
    fn one_waiter_is_woken() {
        loom::model(|| {
            let w = Arc::new(Waiters::default());
            let durable = Arc::new(AtomicU64::new(0));
            let t = {
                let (w, durable) = (w.clone(), durable.clone());
                loom::thread::spawn(move || {
                    w.wait(0, || durable.load(Ordering::Acquire) > 0);
                })
            };
            durable.store(1, Ordering::Release);
            w.wake_below(1);
            t.join().unwrap();
        });
    }

    /// Waiters for LSNs 0 and 1, each checking that it leaves only once
    /// its record is durable.
    #[allow(clippy::unwrap_used)] // a test helper: a failure is the test failing
    fn two_waiters(
        w: &Arc<Waiters>,
        durable: &Arc<AtomicU64>,
    ) -> Vec<loom::thread::JoinHandle<()>> {
        [0u64, 1]
            .into_iter()
            .map(|lsn| {
                let (w, durable) = (w.clone(), durable.clone());
                loom::thread::spawn(move || {
                    w.wait(lsn, || durable.load(Ordering::Acquire) > lsn);
                    assert!(durable.load(Ordering::Acquire) > lsn, "left before durable");
                })
            })
            .collect()
    }

    /// One sync covers both waiters: the flusher wakes one ([`DIRECT`] is 1
    /// under loom) and that one wakes the other (step 5).
    #[test]
    fn a_relayed_waiter_is_woken() {
        loom::model(|| {
            let w = Arc::new(Waiters::default());
            let durable = Arc::new(AtomicU64::new(0));
            let waiters = two_waiters(&w, &durable);
            durable.store(2, Ordering::Release);
            w.wake_below(2);
            for t in waiters {
                t.join().unwrap();
            }
        });
    }

    #[test]
    fn no_lost_wake_up() {
        loom::model(|| {
            let w = Arc::new(Waiters::default());
            let durable = Arc::new(AtomicU64::new(0));
            let waiters = two_waiters(&w, &durable);
            durable.store(1, Ordering::Release);
            w.wake_below(1);
            durable.store(2, Ordering::Release);
            w.wake_below(2);
            for t in waiters {
                t.join().unwrap();
            }
        });
    }
}
