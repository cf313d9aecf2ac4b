//! The event-loop door: puts and settlements that never wait.
//!
//! [`Node::put`] and the [`Lease`] methods block their caller until the
//! runtime thread has done the work, which suits a worker thread. An event
//! loop (spindled's reactor) must not wait on the network, so here:
//!
//! 1. The caller hands the work to the runtime thread with a callback
//!    ([`Node::put_then`], [`Lease::settle_then`]) and returns at once.
//! 2. The runtime thread does the round trips and calls the callback there
//!    with the outcome. The callback must be quick: it typically sends the
//!    outcome into a channel and wakes the loop.
//! 3. If the node has stopped, the callback runs at once on the caller's
//!    thread with [`Error::Closed`].
//!
//! [`Lease::touch_nowait`] sends its in-progress ack the same way, without
//! an answer: a lost touch means the lease may expire, as a late one would.

use crate::error::Error;
use crate::lease::{self, Failed, Lease};
use crate::node::Node;
use crate::put::{Put, Receipt};
use async_nats::jetstream::message::AckKind;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// How to settle a lease with [`Lease::settle_then`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settle {
    /// Done: a plain ack.
    Complete,
    /// Back to the queue, for any node, after this delay (a Nak with
    /// delay; zero is at once). The delivery counts as an attempt.
    Release(Duration),
    /// Failed: as [`Lease::fail`] (backoff, or buried on the last attempt).
    Fail(String),
    /// Failed for good: as [`Lease::bury`].
    Bury(String),
}

/// What [`Lease::settle_then`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// Acked.
    Completed,
    /// Released (Nak).
    Released,
    /// Failed: retrying after a backoff, or buried.
    Failed(Failed),
    /// Buried.
    Buried,
}

impl Node {
    /// Puts one job without waiting: `done` gets its receipt on the
    /// runtime thread (step 2 above).
    pub fn put_then<F>(&self, job: Put, done: F)
    where
        F: FnOnce(Result<Receipt, Error>) + Send + 'static,
    {
        if self.inner.stopped.load(Ordering::Acquire) {
            done(Err(Error::Closed));
            return;
        }
        let inner = self.inner.clone();
        drop(self.inner.rt.spawn(async move {
            let r = match crate::names::check_queue(&job.queue) {
                Err(e) => Err(e),
                Ok(()) => match crate::setup::ensure_streams(&inner).await {
                    Err(e) => Err(e),
                    Ok(()) => crate::put::put_one(&inner, job).await,
                },
            };
            done(r);
        }));
    }
}

impl Node {
    /// The queue's lag without waiting: `done` gets it on the runtime
    /// thread.
    pub fn lag_then<F>(&self, queue: &str, done: F)
    where
        F: FnOnce(Result<crate::Lag, Error>) + Send + 'static,
    {
        if self.inner.stopped.load(Ordering::Acquire) {
            done(Err(Error::Closed));
            return;
        }
        let inner = self.inner.clone();
        let queue = queue.to_owned();
        drop(self.inner.rt.spawn(async move { done(crate::work::lag(&inner, &queue).await) }));
    }
}

impl Lease {
    /// Settles the lease without waiting: `done` gets the outcome on the
    /// runtime thread (step 2 above).
    pub fn settle_then<F>(mut self, how: Settle, done: F)
    where
        F: FnOnce(Result<Settled, Error>) + Send + 'static,
    {
        if self.dead.stopped.load(Ordering::Acquire) {
            done(Err(Error::Closed));
            return;
        }
        let rt = self.dead.rt.clone();
        drop(rt.spawn(async move {
            let r = match how {
                Settle::Bury(why) => lease::bury(self, &why).await.map(|()| Settled::Buried),
                Settle::Fail(why) if self.attempt() >= self.cfg.max_attempts => {
                    lease::bury(self, &why).await.map(|()| Settled::Failed(Failed::Buried))
                }
                Settle::Fail(_) => {
                    let delay = self.cfg.backoff_for(self.attempt(), self.id());
                    nak(&mut self, Some(delay))
                        .await
                        .map(|()| Settled::Failed(Failed::Retrying(delay)))
                }
                Settle::Release(d) => {
                    nak(&mut self, (!d.is_zero()).then_some(d)).await.map(|()| Settled::Released)
                }
                Settle::Complete => match self.settle() {
                    Ok(acker) => acker
                        .ack()
                        .await
                        .map(|()| Settled::Completed)
                        .map_err(|e| Error::api("ack", e)),
                    Err(e) => Err(e),
                },
            };
            done(r);
        }));
    }

    /// Extends the lease by another TTR without waiting (an in-progress
    /// ack sent from the runtime thread).
    pub fn touch_nowait(&self) -> Result<(), Error> {
        let acker = self.acker.clone().ok_or(Error::Closed)?;
        if self.dead.stopped.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        drop(self.dead.rt.spawn(async move {
            if let Err(e) = acker.ack_with(AckKind::Progress).await {
                tracing::debug!(error = %e, "in-progress ack failed");
            }
        }));
        Ok(())
    }
}

async fn nak(lease: &mut Lease, delay: Option<Duration>) -> Result<(), Error> {
    let acker = lease.settle()?;
    acker.ack_with(AckKind::Nak(delay)).await.map_err(|e| Error::api("nak", e))
}
