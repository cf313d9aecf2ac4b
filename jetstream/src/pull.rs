//! Pulls on demand: [`Puller`], for an event loop that hands leases only to
//! callers that asked (spindled's waiting `reserve`s).
//!
//! A standing pull ([`crate::Worker`]) keeps `prefetch` deliveries on hand
//! whether or not anyone wants them, and each delivery that nobody takes
//! before its TTR costs the job an attempt. A puller asks the server only
//! for what its owner wants:
//!
//! 1. The owner says how many leases it wants on hand ([`Puller::want`],
//!    e.g. the number of waiting reserves) and wakes the pull task.
//! 2. The pull task issues pull requests (batches that expire after 2 s)
//!    for `wanted − on hand − requested`, several at once if need be, so a
//!    new waiter never waits for an older request to expire.
//! 3. Each delivery is admitted as a worker's is (past its deadline:
//!    dropped; past its attempts: buried; `lease.rs`), put on hand, and the
//!    owner's `wake` is called (on the runtime thread).
//! 4. The owner takes leases with [`Puller::take`]. A request that ends
//!    gives back what it did not deliver, and step 2 runs again.
//!
//! A request already made cannot be taken back: if the owner's want drops
//! meanwhile (a waiter left), a lease may arrive that nobody wants. It
//! stays on hand for the owner to hand out or release.

use crate::error::Error;
use crate::lease::{admit, Dead, Lease};
use crate::node::{Inner, Node};
use crate::queue::QueueConfig;
use async_nats::jetstream::consumer;
use futures_util::StreamExt;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::Notify;

/// How long one pull request waits on the server for jobs.
const REQUEST_EXPIRES: Duration = Duration::from_secs(2);

struct State {
    wanted: usize,
    requested: usize,
    ready: VecDeque<Lease>,
    stopped: bool,
}

struct Shared {
    state: Mutex<State>,
    kick: Notify,
    wake: Box<dyn Fn() + Send + Sync>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Leases of one distributed queue, pulled only as wanted (see the module
/// docs). Dropping it stops pulling; leases on hand are released at once.
pub struct Puller {
    shared: Arc<Shared>,
    task: tokio::task::AbortHandle,
}

impl std::fmt::Debug for Puller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Puller").finish_non_exhaustive()
    }
}

impl Drop for Puller {
    fn drop(&mut self) {
        self.task.abort();
        let ready = {
            let mut st = self.shared.lock();
            st.stopped = true;
            std::mem::take(&mut st.ready)
        };
        // Released (Nak) by their drop, outside the lock.
        drop(ready);
    }
}

impl Puller {
    /// Step 1: keep `n` leases on hand (or requested).
    pub fn want(&self, n: usize) {
        let kick = {
            let mut st = self.shared.lock();
            let more = n > st.wanted;
            st.wanted = n;
            more
        };
        if kick {
            self.shared.kick.notify_one();
        }
    }

    /// Step 4: a lease on hand, oldest first.
    pub fn take(&self) -> Option<Lease> {
        self.shared.lock().ready.pop_front()
    }

    /// The priority of the lease [`Puller::take`] would return next.
    pub fn front_priority(&self) -> Option<u32> {
        self.shared.lock().ready.front().map(Lease::priority)
    }

    /// Leases on hand.
    pub fn on_hand(&self) -> usize {
        self.shared.lock().ready.len()
    }
}

impl Node {
    /// A puller for `queue` (declared first with [`Node::declare`]); `wake`
    /// is called on the runtime thread whenever a lease arrives.
    pub fn puller<W>(&self, queue: &str, wake: W) -> Result<Puller, Error>
    where
        W: Fn() + Send + Sync + 'static,
    {
        let cfg = self.inner.queue(queue)?;
        let inner: &Inner = &self.inner;
        let stream = inner
            .block_on(inner.js.get_stream_no_info(inner.names.stream()))
            .map_err(|e| Error::api("stream lookup", e))?;
        let consumer: consumer::PullConsumer = inner
            .block_on(stream.get_consumer(&inner.names.consumer(queue)))
            .map_err(|e| Error::api("consumer lookup", e))?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                wanted: 0,
                requested: 0,
                ready: VecDeque::new(),
                stopped: false,
            }),
            kick: Notify::new(),
            wake: Box::new(wake),
        });
        let dead = crate::lease::dead_for(inner, queue);
        let queue: Arc<str> = Arc::from(queue);
        let task = inner.rt.spawn(run(consumer, shared.clone(), queue, cfg, dead));
        Ok(Puller { shared, task: task.abort_handle() })
    }
}

/// Step 2: requests what is wanted and not yet on hand or asked for.
async fn run(
    consumer: consumer::PullConsumer,
    shared: Arc<Shared>,
    queue: Arc<str>,
    cfg: Arc<QueueConfig>,
    dead: Arc<Dead>,
) {
    loop {
        let n = {
            let mut st = shared.lock();
            let n = st.wanted.saturating_sub(st.ready.len() + st.requested);
            st.requested += n;
            n
        };
        if n == 0 {
            // `notify_one` keeps a permit: a kick between the check and
            // here is not lost.
            shared.kick.notified().await;
            continue;
        }
        let c = consumer.clone();
        let (s, q, cf, d) = (shared.clone(), queue.clone(), cfg.clone(), dead.clone());
        drop(tokio::spawn(request(c, n, s, q, cf, d)));
    }
}

/// One pull request for `n` jobs (steps 2-4).
async fn request(
    consumer: consumer::PullConsumer,
    n: usize,
    shared: Arc<Shared>,
    queue: Arc<str>,
    cfg: Arc<QueueConfig>,
    dead: Arc<Dead>,
) {
    let mut left = n;
    match consumer.batch().max_messages(n).expires(REQUEST_EXPIRES).messages().await {
        Ok(mut batch) => {
            while left > 0 {
                let Some(next) = batch.next().await else { break };
                let msg = match next {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::debug!(%queue, error = %e, "pull request ended");
                        break;
                    }
                };
                left -= 1;
                shared.lock().requested -= 1;
                let Some(lease) = admit(msg, &queue, &cfg, &dead).await else { continue };
                let kept = {
                    let mut st = shared.lock();
                    if st.stopped {
                        Some(lease)
                    } else {
                        st.ready.push_back(lease);
                        None
                    }
                };
                match kept {
                    // Stopped meanwhile: released (Nak) by its drop.
                    Some(l) => drop(l),
                    None => (shared.wake)(),
                }
            }
        }
        Err(e) => {
            tracing::warn!(%queue, error = %e, "a pull request failed; retrying");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    shared.lock().requested -= left;
    shared.kick.notify_one();
}
