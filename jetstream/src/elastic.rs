//! [`ElasticPool`]: a node's handler threads for one distributed queue,
//! sized from the queue's consumer lag, and `desired_workers` published for
//! an external autoscaler.
//!
//! Every `tick` the controller:
//! 1. reads the shared consumer's lag (`num_pending + num_ack_pending`,
//!    `num_waiting`) and this node's handler runs and busy time since the
//!    last tick;
//! 2. estimates the mean run time `S` (moving average over ticks with runs)
//!    and the arrival rate `λ` (backlog change + jobs done, per second);
//! 3. computes the queue's `desired_workers` by Little's law, with the
//!    backlog to be worked off within `drain_within`:
//!    `ceil((λ + backlog / drain_within) × S)`, at least 1 while there is a
//!    backlog;
//! 4. grows this node by one thread when the desire is above its active
//!    threads, jobs are pending and no pull anywhere waits idle
//!    (`num_waiting == 0`); shrinks it by one only after the desire has
//!    stayed below for `stabilise` ticks (no flapping). Always within
//!    `min..=max`.
//! 5. publishes `{"queue", "desired_workers", "active", "pending", "leased",
//!    "waiting", "run_time_us"}` on core NATS subject
//!    `spindle.<ns>.desired.<queue>` (not stored), for an autoscaler to
//!    follow. (KEDA's JetStream scaler can read the same consumer's lag
//!    directly.)
//!
//! `desired_workers` is for the whole queue (all nodes); each node sizes
//! itself toward it within its own `max`, so several nodes together may
//! run more threads than desired until the idle ones see `num_waiting > 0`
//! and stop growing.

use crate::error::Error;
use crate::node::Node;
use crate::work::{run_worker, Handler, Meter};
use spindle_engine::Outcome;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Settings of an [`ElasticPool`].
#[derive(Debug, Clone)]
pub struct ElasticOptions {
    min: usize,
    max: usize,
    tick: Duration,
    drain_within: Duration,
    stabilise: u32,
    prefetch: usize,
}

impl Default for ElasticOptions {
    fn default() -> Self {
        ElasticOptions {
            min: 1,
            max: 8,
            tick: Duration::from_millis(250),
            drain_within: Duration::from_secs(1),
            stabilise: 8,
            prefetch: 1,
        }
    }
}

impl ElasticOptions {
    /// Fewest and most handler threads on this node (default 1 and 8).
    pub fn threads(mut self, min: usize, max: usize) -> Self {
        self.min = min.max(1);
        self.max = max.max(self.min);
        self
    }

    /// How often the controller samples the lag (default 250 ms; at least
    /// 10 ms: each sample is a consumer-info request to the server).
    pub fn tick(mut self, d: Duration) -> Self {
        self.tick = d.max(Duration::from_millis(10));
        self
    }

    /// How soon a backlog should be worked off (default 1 s).
    pub fn drain_within(mut self, d: Duration) -> Self {
        self.drain_within = d.max(Duration::from_millis(1));
        self
    }

    /// Leases each thread keeps ready (default 1: jobs left in the queue
    /// are what another thread, here or on another node, can take, and
    /// what the lag shows).
    pub fn prefetch(mut self, n: usize) -> Self {
        self.prefetch = n.max(1);
        self
    }

    /// Ticks the desire must stay below the active threads before one is
    /// stopped (default 8).
    pub fn stabilise(mut self, ticks: u32) -> Self {
        self.stabilise = ticks.max(1);
        self
    }
}

struct Thread {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<()>,
}

struct Shared {
    stop: AtomicBool,
    active: AtomicUsize,
    desired: AtomicUsize,
}

/// Handler threads for one queue, sized from its lag; stop with
/// [`ElasticPool::stop`] (or drop).
pub struct ElasticPool {
    shared: Arc<Shared>,
    controller: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for ElasticPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ElasticPool")
            .field("active", &self.active())
            .field("desired", &self.desired_workers())
            .finish()
    }
}

impl ElasticPool {
    /// Handler threads running on this node now.
    pub fn active(&self) -> usize {
        self.shared.active.load(Ordering::Relaxed)
    }

    /// The queue's desired workers (all nodes) at the last tick.
    pub fn desired_workers(&self) -> usize {
        self.shared.desired.load(Ordering::Relaxed)
    }

    /// Stops the controller and every thread (prefetched leases are run
    /// first, running handlers finish).
    pub fn stop(mut self) {
        self.join();
    }

    fn join(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(c) = self.controller.take() {
            let _ = c.join();
        }
    }
}

impl Drop for ElasticPool {
    fn drop(&mut self) {
        self.join();
    }
}

/// `ceil((λ + backlog / drain) × S)`, at least 1 while there is a backlog
/// (`spindle_core::staffing::little`, the law of every `desired_workers`,
/// with the backlog drained within `drain`).
pub(crate) fn little(arrivals_per_s: f64, backlog: u64, drain: Duration, run_s: f64) -> usize {
    let need = spindle_core::staffing::little(arrivals_per_s, run_s, backlog as f64, drain);
    let n = need.ceil().min(1e6) as usize;
    if backlog > 0 {
        n.max(1)
    } else {
        n
    }
}

impl Node {
    /// Runs `handler` for `queue` on between `min` and `max` threads of
    /// this node, sized from the queue's consumer lag, and publishes the
    /// queue's `desired_workers` (module docs of `elastic.rs`).
    pub fn work_elastic<F>(
        &self,
        queue: &str,
        opts: ElasticOptions,
        handler: F,
    ) -> Result<ElasticPool, Error>
    where
        F: Fn(&crate::Lease) -> Outcome + Send + Sync + 'static,
    {
        self.lag(queue)?; // declared, and the consumer answers
        let handler: Arc<Handler> = Arc::new(handler);
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            active: AtomicUsize::new(0),
            desired: AtomicUsize::new(0),
        });
        let meter = Arc::new(Meter::default());
        let threads = Arc::new(Mutex::new(Vec::<Thread>::new()));
        let prefetch = opts.prefetch;
        let spawn = {
            let (node, queue, handler, meter, threads, shared) = (
                self.clone(),
                queue.to_owned(),
                handler.clone(),
                meter.clone(),
                threads.clone(),
                shared.clone(),
            );
            move || -> Result<(), Error> {
                let worker = node.worker(&queue, prefetch)?;
                let stop = Arc::new(AtomicBool::new(false));
                let (s, h, m, q) = (stop.clone(), handler.clone(), meter.clone(), queue.clone());
                let handle = std::thread::Builder::new()
                    .name("spindle-js-elastic".to_owned())
                    .spawn(move || run_worker(worker, &s, &*h, &q, Some(&m)))
                    .map_err(Error::Runtime)?;
                threads
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(Thread { stop, handle });
                shared.active.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
        };
        for _ in 0..opts.min {
            spawn()?;
        }
        let node = self.clone();
        let queue = queue.to_owned();
        let sh = shared.clone();
        let controller = std::thread::Builder::new()
            .name("spindle-js-lag".to_owned())
            .spawn(move || {
                control(&node, &queue, &opts, &sh, &meter, &threads, &spawn);
                for t in threads.lock().unwrap_or_else(PoisonError::into_inner).drain(..) {
                    t.stop.store(true, Ordering::Relaxed);
                    let _ = t.handle.join();
                }
                sh.active.store(0, Ordering::Relaxed);
            })
            .map_err(Error::Runtime)?;
        Ok(ElasticPool { shared, controller: Some(controller) })
    }
}

fn control(
    node: &Node,
    queue: &str,
    opts: &ElasticOptions,
    shared: &Shared,
    meter: &Meter,
    threads: &Mutex<Vec<Thread>>,
    spawn: &dyn Fn() -> Result<(), Error>,
) {
    let subject =
        format!("spindle.{}.desired.{}", node.inner.names.ns(), crate::names::token(queue));
    let mut run_s = 0.0f64;
    let mut last_backlog: Option<u64> = None;
    let mut last = Instant::now();
    let mut below = 0u32;
    while !shared.stop.load(Ordering::Relaxed) {
        std::thread::sleep(opts.tick);
        let Ok(lag) = node.lag(queue) else { continue };
        let elapsed = last.elapsed().as_secs_f64().max(1e-6);
        last = Instant::now();
        let runs = meter.runs.swap(0, Ordering::Relaxed);
        let busy = meter.busy_ns.swap(0, Ordering::Relaxed);
        if runs > 0 {
            let s = busy as f64 / 1e9 / runs as f64;
            run_s = if run_s == 0.0 { s } else { 0.7 * run_s + 0.3 * s };
        }
        let backlog = lag.backlog();
        let arrivals = match last_backlog {
            Some(b) => (backlog as f64 - b as f64 + runs as f64) / elapsed,
            None => 0.0,
        };
        last_backlog = Some(backlog);
        // Before any run, assume a job takes one tick: enough to start
        // growing on a backlog.
        let s = if run_s > 0.0 { run_s } else { opts.tick.as_secs_f64() };
        let desired = little(arrivals, backlog, opts.drain_within, s);
        shared.desired.store(desired, Ordering::Relaxed);
        let active = shared.active.load(Ordering::Relaxed);
        if desired > active && active < opts.max && lag.pending > 0 && lag.waiting == 0 {
            below = 0;
            if let Err(e) = spawn() {
                tracing::warn!(%queue, error = %e, "adding a worker failed");
            }
        } else if desired < active && active > opts.min {
            below += 1;
            if below >= opts.stabilise {
                below = 0;
                let t = threads.lock().unwrap_or_else(PoisonError::into_inner).pop();
                if let Some(t) = t {
                    t.stop.store(true, Ordering::Relaxed);
                    let _ = t.handle.join();
                    shared.active.fetch_sub(1, Ordering::Relaxed);
                }
            }
        } else {
            below = 0;
        }
        let report = serde_json::json!({
            "queue": queue,
            "desired_workers": desired,
            "active": shared.active.load(Ordering::Relaxed),
            "pending": lag.pending,
            "leased": lag.leased,
            "waiting": lag.waiting,
            "run_time_us": (run_s * 1e6).round(),
        });
        let inner = &node.inner;
        if !inner.stopped.load(Ordering::Acquire) {
            let _ =
                inner.block_on(inner.client.publish(subject.clone(), report.to_string().into()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn littles_law_with_a_backlog_to_drain() {
        let s = Duration::from_secs(1);
        // 100 jobs/s of 10 ms: one worker; 50 more queued to drain in 1 s.
        assert_eq!(little(100.0, 0, s, 0.010), 1);
        assert_eq!(little(100.0, 50, s, 0.010), 2);
        assert_eq!(little(0.0, 0, s, 0.010), 0);
        assert_eq!(little(0.0, 1, s, 0.000_001), 1);
        assert_eq!(little(1000.0, 0, s, 0.020), 20);
    }
}
