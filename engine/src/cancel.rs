//! Cancellation in the library: the ids of jobs cancelled while they may be
//! running, which a handler reads through [`crate::JobRef::is_cancelled`].
//!
//! 1. [`crate::Engine::cancel`] adds the id here first, so a handler that
//!    is running the job (on its owner, a thief or a blocking pool) sees
//!    it at once; then asks every shard to cancel it in its table
//!    (`spindle_core`'s `cancel.rs`).
//! 2. The owner that finds it ready, delayed or buried deletes it and the
//!    id leaves the set. The owner that holds it reserved marks it; when
//!    the run's outcome comes back, whatever it is, the table deletes the
//!    job (never retried) and the id leaves the set.
//! 3. If no shard has the job, the id leaves the set again.
//!
//! A lookup costs one atomic load while nothing is cancelled.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Ids of jobs being cancelled.
#[derive(Debug, Default)]
pub(crate) struct Cancels {
    n: AtomicUsize,
    ids: Mutex<HashSet<u64>>,
}

impl Cancels {
    pub(crate) fn add(&self, id: u64) {
        let mut ids = self.ids.lock().unwrap_or_else(|p| p.into_inner());
        if ids.insert(id) {
            self.n.fetch_add(1, Ordering::Release);
        }
    }

    pub(crate) fn remove(&self, id: u64) {
        if self.n.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut ids = self.ids.lock().unwrap_or_else(|p| p.into_inner());
        if ids.remove(&id) {
            self.n.fetch_sub(1, Ordering::Release);
        }
    }

    pub(crate) fn contains(&self, id: u64) -> bool {
        if self.n.load(Ordering::Acquire) == 0 {
            return false;
        }
        self.ids.lock().unwrap_or_else(|p| p.into_inner()).contains(&id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_come_and_go() {
        let c = Cancels::default();
        assert!(!c.contains(1));
        c.add(1);
        c.add(1);
        assert!(c.contains(1));
        c.remove(1);
        assert!(!c.contains(1));
        c.remove(1);
        assert_eq!(c.n.load(Ordering::Relaxed), 0);
    }
}
