//! [`WorkPool`]: handler threads on a distributed queue, the same
//! [`Outcome`] contract as the engine's local queues; and the queue's lag.

use crate::error::Error;
use crate::lease::{Lease, Worker};
use crate::node::Node;
use spindle_engine::Outcome;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A distributed queue's backlog, from its shared consumer: what the lag
/// controller and an external autoscaler (KEDA's JetStream scaler reads the
/// same consumer) size workers from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lag {
    /// Jobs not yet delivered (`num_pending`).
    pub pending: u64,
    /// Jobs leased and not yet settled, across all nodes (`num_ack_pending`).
    pub leased: u64,
    /// Pull requests waiting for jobs (`num_waiting`): idle workers. With
    /// priority bands, the least over the bands' consumers (an idle worker
    /// has a standing pull on every band).
    pub waiting: u64,
}

impl Lag {
    /// `pending + leased`: the jobs not yet done.
    pub fn backlog(&self) -> u64 {
        self.pending + self.leased
    }
}

/// A handler on a distributed queue.
pub(crate) type Handler = dyn Fn(&Lease) -> Outcome + Send + Sync;

/// Counts what handlers did, for the elastic pool's controller.
#[derive(Debug, Default)]
pub(crate) struct Meter {
    pub(crate) runs: AtomicU64,
    pub(crate) busy_ns: AtomicU64,
}

/// One worker thread's loop: reserve, run, settle, until `stop`; then stop
/// pulling and run the leases already prefetched (rather than leave them to
/// expire and wait a TTR).
pub(crate) fn run_worker(
    mut worker: Worker,
    stop: &AtomicBool,
    handler: &Handler,
    queue: &str,
    meter: Option<&Meter>,
) {
    let mut stopping = false;
    loop {
        if !stopping && stop.load(Ordering::Relaxed) {
            stopping = true;
            worker.stop_pulling();
        }
        let lease = match worker.reserve(Duration::from_millis(100)) {
            Ok(Some(l)) => l,
            Ok(None) => continue,
            Err(Error::Closed) if stopping => return,
            Err(e) => {
                tracing::warn!(%queue, error = %e, "worker stopped");
                return;
            }
        };
        let started = Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(|| handler(&lease)))
            .unwrap_or_else(|_| Outcome::Retry("handler panicked".to_owned()));
        if let Some(m) = meter {
            let ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
            m.busy_ns.fetch_add(ns, Ordering::Relaxed);
            m.runs.fetch_add(1, Ordering::Relaxed);
        }
        let settled = match outcome {
            Outcome::Done => lease.complete(),
            Outcome::Retry(e) => lease.fail(&e).map(|_| ()),
            Outcome::Bury(e) => lease.bury(&e),
        };
        if let Err(e) = settled {
            // The lease expires and the job is redelivered.
            tracing::warn!(%queue, error = %e, "settling a job failed");
        }
    }
}

/// Handler threads running one distributed queue; stop with
/// [`WorkPool::stop`] (or drop).
#[derive(Debug)]
pub struct WorkPool {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl WorkPool {
    /// Stops pulling jobs, runs those already prefetched, lets running
    /// handlers finish, joins the threads.
    pub fn stop(mut self) {
        self.join();
    }

    fn join(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for WorkPool {
    fn drop(&mut self) {
        self.join();
    }
}

impl Node {
    /// Runs `handler` on `threads` threads for `queue`: [`Outcome::Done`]
    /// completes, [`Outcome::Retry`] fails with backoff (buried when out of
    /// attempts), [`Outcome::Bury`] buries; a panic counts as a retry.
    /// Each thread keeps [`crate::NodeOptions::prefetch`] leases ready.
    pub fn work<F>(&self, queue: &str, threads: usize, handler: F) -> Result<WorkPool, Error>
    where
        F: Fn(&Lease) -> Outcome + Send + Sync + 'static,
    {
        let handler: Arc<Handler> = Arc::new(handler);
        let stop = Arc::new(AtomicBool::new(false));
        let mut pool = WorkPool { stop: stop.clone(), threads: Vec::new() };
        for i in 0..threads.max(1) {
            let worker = self.worker(queue, self.inner.prefetch)?;
            let (handler, stop, queue) = (handler.clone(), stop.clone(), queue.to_owned());
            let t = std::thread::Builder::new()
                .name(format!("spindle-js-work-{i}"))
                .spawn(move || run_worker(worker, &stop, &*handler, &queue, None))
                .map_err(Error::Runtime)?;
            pool.threads.push(t);
        }
        Ok(pool)
    }

    /// The queue's backlog from its shared consumer (summed over the
    /// consumers of its priority bands).
    pub fn lag(&self, queue: &str) -> Result<Lag, Error> {
        self.inner.queue(queue)?;
        self.inner.block_on(lag(&self.inner, queue))
    }

    /// How many buried jobs of `queue` the dead-letter stream holds.
    pub fn buried(&self, queue: &str) -> Result<u64, Error> {
        let inner = &self.inner;
        let subject = inner.names.dead_subject(queue);
        inner.block_on(async {
            let stream = inner
                .js
                .get_stream_no_info(inner.names.dead_stream())
                .await
                .map_err(|e| Error::api("stream lookup", e))?;
            let mut subjects = stream
                .info_with_subjects(subject.as_str())
                .await
                .map_err(|e| Error::api("stream info", e))?;
            use futures_util::StreamExt;
            let mut n = 0;
            while let Some(s) = subjects.next().await {
                let (_, count) = s.map_err(|e| Error::api("stream info", e))?;
                n += count as u64;
            }
            Ok(n)
        })
    }
}

/// The queue's lag, read from its consumers' info (one per priority band).
pub(crate) async fn lag(inner: &crate::node::Inner, queue: &str) -> Result<Lag, Error> {
    let cfg = inner.queue(queue)?;
    let stream = inner
        .js
        .get_stream_no_info(inner.names.stream())
        .await
        .map_err(|e| Error::api("stream lookup", e))?;
    let mut lag = Lag { pending: 0, leased: 0, waiting: u64::MAX };
    for band in 0..=cfg.bands.len() {
        let info = stream
            .consumer_info(inner.names.band_consumer(queue, band))
            .await
            .map_err(|e| Error::api("consumer info", e))?;
        lag.pending += info.num_pending;
        lag.leased += info.num_ack_pending as u64;
        // An idle worker waits on every band; a busy one only on the
        // empty bands: the least is the idle workers.
        lag.waiting = lag.waiting.min(info.num_waiting as u64);
    }
    Ok(lag)
}
