//! The `static-monolithic` policy of the `burst` scenario: the classic
//! worker pool that Spindle is compared against.
//!
//! 1. One shared `Mutex<VecDeque>` holds every queued payload.
//! 2. `submit` pushes at the back under the lock and signals the condvar
//!    once (`notify_one`).
//! 3. A fixed number of worker threads loop: take the lock, wait on the
//!    condvar while the queue is empty, pop the front, drop the lock, run
//!    the handler. An idle worker blocks in the kernel; it never spins.
//! 4. `shutdown` sets a flag under the lock, wakes everyone, and joins the
//!    threads once they have emptied the queue.

use crate::BoxResult;
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// What the lock protects.
#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Vec<u8>>,
    closed: bool,
}

/// The queue and its condvar.
#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    ready: Condvar,
}

/// A fixed pool of threads serving one locked queue.
#[derive(Debug)]
pub struct MonoPool {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl MonoPool {
    /// Step 3: starts `workers` threads running `handler` on each payload.
    pub fn start<F>(workers: usize, handler: F) -> BoxResult<MonoPool>
    where
        F: Fn(&[u8]) + Send + Sync + 'static,
    {
        let shared = Arc::new(Shared::default());
        let handler = Arc::new(handler);
        let mut threads = Vec::with_capacity(workers);
        for i in 0..workers {
            let (shared, handler) = (shared.clone(), handler.clone());
            let t = std::thread::Builder::new()
                .name(format!("mono-worker-{i}"))
                .spawn(move || worker(&shared, &*handler))?;
            threads.push(t);
        }
        Ok(MonoPool { shared, threads })
    }

    /// Step 2: queues one payload.
    pub fn submit(&self, payload: Vec<u8>) -> BoxResult<()> {
        let mut g = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
        if g.closed {
            return Err("static-monolithic pool is shut down".into());
        }
        g.queue.push_back(payload);
        drop(g);
        self.shared.ready.notify_one();
        Ok(())
    }

    /// Step 4: runs what is queued, then stops the threads.
    pub fn shutdown(self) -> BoxResult<()> {
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner()).closed = true;
        self.shared.ready.notify_all();
        let mut panicked = 0;
        for t in self.threads {
            if t.join().is_err() {
                panicked += 1;
            }
        }
        if panicked > 0 {
            return Err(format!("{panicked} static-monolithic workers panicked").into());
        }
        Ok(())
    }
}

/// The body of one worker thread.
fn worker(shared: &Shared, handler: &(dyn Fn(&[u8]) + Send + Sync)) {
    loop {
        let mut g = shared.state.lock().unwrap_or_else(|p| p.into_inner());
        let payload = loop {
            if let Some(p) = g.queue.pop_front() {
                break p;
            }
            if g.closed {
                return;
            }
            g = shared.ready.wait(g).unwrap_or_else(|p| p.into_inner());
        };
        drop(g);
        handler(&payload);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[test]
    fn runs_everything_before_shutdown_returns() {
        let sum = Arc::new(AtomicU64::new(0));
        let s = sum.clone();
        let pool = MonoPool::start(3, move |p: &[u8]| {
            s.fetch_add(u64::from(p[0]), Ordering::Relaxed);
        })
        .unwrap();
        for i in 0..1000u32 {
            pool.submit(vec![(i % 7) as u8]).unwrap();
        }
        pool.shutdown().unwrap();
        let want: u64 = (0..1000u64).map(|i| i % 7).sum();
        assert_eq!(sum.load(Ordering::Relaxed), want);
    }
}
