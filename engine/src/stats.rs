//! Statistics: what `Engine::stats()` returns, and the per-shard collector.
//!
//! Each shard counts in plain fields on its own thread (no atomics on the hot
//! path) and publishes a snapshot into a mutex at most every
//! [`PUBLISH_EVERY`] or when `stats()` asks; `stats()` merges the snapshots.

use std::collections::BTreeMap;
use std::time::Duration;

/// How often a busy shard publishes its counters without being asked.
pub(crate) const PUBLISH_EVERY: Duration = Duration::from_millis(100);

/// Per-queue counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Jobs ready to run.
    pub ready: u64,
    /// Jobs waiting for their time (delay or retry backoff).
    pub delayed: u64,
    /// Jobs running now.
    pub running: u64,
    /// Jobs in the dead-letter state.
    pub buried: u64,
    /// Jobs completed since start.
    pub completed: u64,
    /// Failed attempts since start (retried or buried).
    pub failed: u64,
    /// Workers this queue needs to keep up (Little's law plus a backlog
    /// drain term; `docs/controller.md`), for external autoscalers of
    /// remote workers. 0 for an idle queue.
    pub desired_workers: u64,
}

impl QueueStats {
    fn add(&mut self, o: &QueueStats) {
        self.ready += o.ready;
        self.delayed += o.delayed;
        self.running += o.running;
        self.buried += o.buried;
        self.completed += o.completed;
        self.failed += o.failed;
        self.desired_workers += o.desired_workers;
    }
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Latency {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Largest sample.
    pub max_us: f64,
}

/// One shard's identity and counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardStats {
    /// The core it is pinned to, if pinning succeeded.
    pub pinned_core: Option<usize>,
    /// Jobs this shard's thread ran (its own and stolen).
    pub jobs_run: u64,
    /// Of those, jobs stolen from other shards.
    pub jobs_stolen: u64,
    /// Live jobs owned by this shard.
    pub jobs_owned: u64,
}

/// What the lag controller saw at its last tick (`docs/controller.md`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ControllerInputs {
    /// Jobs arriving per second (smoothed).
    pub arrival_rate: f64,
    /// Jobs finishing per second (smoothed).
    pub completion_rate: f64,
    /// Mean handler run time, microseconds (smoothed).
    pub mean_run_us: f64,
    /// Ready jobs of core (non-blocking) queues, all shards.
    pub ready: u64,
    /// Age of the oldest ready job, microseconds (estimate, see docs).
    pub oldest_ready_us: f64,
    /// The sizing law's recommendation this tick, before damping.
    pub recommended: usize,
}

/// A handler the controller found running far past its queue's usual run
/// time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StallReport {
    /// The shard whose worker runs it.
    pub shard: usize,
    /// The job.
    pub job: crate::JobId,
    /// Its queue.
    pub queue: String,
    /// How long it had run when reported, milliseconds.
    pub running_ms: u64,
}

/// The core worker pool and the controller's state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WorkerStats {
    /// `"lag"` or `"static"`.
    pub policy: &'static str,
    /// Core workers in the active set (may run handlers).
    pub active: usize,
    /// Core workers outside the active set (parked by the controller).
    pub parked: usize,
    /// Core workers running a handler now.
    pub busy: usize,
    /// Handlers reported stalled since start.
    pub stalls: u64,
    /// The latest stall reported.
    pub last_stall: Option<StallReport>,
    /// Changes of the active count since start.
    pub changes: u64,
    /// Blocking-pool threads running now, all shards.
    pub blocking_threads: usize,
    /// Blocking-pool threads the controller wants, all shards.
    pub blocking_target: usize,
    /// The controller's last inputs.
    pub inputs: ControllerInputs,
}

/// A snapshot of the engine.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Per queue, by name.
    pub queues: BTreeMap<String, QueueStats>,
    /// Per shard.
    pub shards: Vec<ShardStats>,
    /// Ready → handler start, for jobs run in this process.
    pub dispatch: Latency,
    /// Handler run time.
    pub run_time: Latency,
    /// Submit → completion (last attempt).
    pub end_to_end: Latency,
    /// Live jobs held (all states).
    pub jobs: u64,
    /// Payload bytes held.
    pub bytes: u64,
    /// Core workers and the lag controller.
    pub workers: WorkerStats,
}

impl Stats {
    /// Totals over all queues.
    pub fn total(&self) -> QueueStats {
        let mut t = QueueStats::default();
        for q in self.queues.values() {
            t.add(q);
        }
        t
    }
}

/// The shards' latency histograms (dispatch, run time, end to end) in
/// nanoseconds: `spindle_core`'s log-linear histogram with 128 sub-buckets
/// per power of two, so a percentile is at most 0.8% above the true value
/// (the HdrHistogram it replaced kept 2 significant figures, ~1%, and its
/// general record, three times per lane job, cost ~5% of a no-op job).
pub(crate) type Hist = spindle_core::LogHistogram<7>;

/// An empty latency histogram.
pub(crate) fn histogram() -> Hist {
    Hist::new()
}

/// Per-queue counters kept for the controller's `desired_workers`.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct QueueCounts {
    /// Jobs that became ready, since start. On the shard: those admitted
    /// to the lane that did not go into the table since; `publish.rs` adds
    /// the table's `readied` (new, due, retried, kicked, taken back).
    pub(crate) arrived: u64,
    /// Handler runs on this shard's thread or pool, and their total time.
    pub(crate) runs: u64,
    pub(crate) run_ns: u64,
}

/// What one shard publishes.
#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    pub(crate) queues: BTreeMap<String, QueueStats>,
    pub(crate) counts: BTreeMap<String, QueueCounts>,
    /// Limits of this shard's limited queues (they cap `desired_workers`).
    pub(crate) limits: BTreeMap<String, spindle_core::Limits>,
    pub(crate) shard: ShardStats,
    pub(crate) dispatch: Hist,
    pub(crate) run_time: Hist,
    pub(crate) end_to_end: Hist,
}

impl Default for Snapshot {
    fn default() -> Self {
        Snapshot {
            queues: BTreeMap::new(),
            counts: BTreeMap::new(),
            limits: BTreeMap::new(),
            shard: ShardStats::default(),
            dispatch: histogram(),
            run_time: histogram(),
            end_to_end: histogram(),
        }
    }
}

fn latency(h: &Hist) -> Latency {
    let us = |ns: u64| ns as f64 / 1000.0;
    Latency {
        count: h.len(),
        p50_us: us(h.value_at_quantile(0.5)),
        p99_us: us(h.value_at_quantile(0.99)),
        p999_us: us(h.value_at_quantile(0.999)),
        max_us: us(h.max()),
    }
}

/// Merges shard snapshots into engine stats.
pub(crate) fn merge(snaps: &[Snapshot], jobs: u64, bytes: u64) -> Stats {
    let mut out = Stats { jobs, bytes, ..Stats::default() };
    let (mut d, mut r, mut e) = (histogram(), histogram(), histogram());
    for s in snaps {
        for (name, q) in &s.queues {
            out.queues.entry(name.clone()).or_default().add(q);
        }
        out.shards.push(s.shard.clone());
        d.add(&s.dispatch);
        r.add(&s.run_time);
        e.add(&s.end_to_end);
    }
    out.dispatch = latency(&d);
    out.run_time = latency(&r);
    out.end_to_end = latency(&e);
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn histogram_bounds_are_valid() {
        let mut h = super::histogram();
        h.record(1500);
        assert_eq!(super::latency(&h).count, 1);
    }
}
