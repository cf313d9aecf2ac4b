//! The controller thread: samples the shards every tick and applies the lag
//! controller's decisions (`lag.rs` holds the law itself).
//!
//! Every tick (default 10 ms, or sooner when the lag alarm rings: a worker
//! that starts a job which waited longer than the target wait `D` while the
//! pool may still grow unparks this thread, at most once per millisecond),
//! in order:
//!
//! 1. **Sample.** Read each shard's [`Gauges`] (plain counters the shard
//!    thread stores with relaxed writes: no lock, no read-modify-write on
//!    the hot path) and sum them: arrivals, completions, busy time, ready
//!    depth, the oldest ready job's age, handlers running now.
//! 2. **Stalls.** A handler past its stall deadline (`stall_factor` times
//!    its queue's mean run time, at least `stall_min`) is reported once, with
//!    its job id and queue, as a `tracing` warning and in `stats()`. Its
//!    shard already offered every ready job it owns to thieves before
//!    running the handler (`steal.rs`), and producers route around it.
//! 3. **Core workers.** Feed the sample to the lag controller (or hold the
//!    static count) and choose which shards form the active set of that size
//!    ([`choose`]): shards whose core a producer submitted a single job from
//!    since the last tick (`ShardShared::demand`) come first, so that the
//!    job is handed over on the producer's own core, a same-core wake-up
//!    instead of a cross-core one; among equals the shards active now stay,
//!    then the lowest indices. A shard leaving the active set finishes the handler it is in, offers its ready jobs to the
//!    active shards and parks; it wakes only for messages addressed to it
//!    (stolen jobs' outcomes, unique-key submits, stats) and its timers, and
//!    runs no handler. Producers send new jobs to active shards only, so
//!    they never wake a parked one: the controller does, by setting its flag
//!    and unparking it. Without work stealing every shard stays active (only
//!    stealing moves a parked shard's jobs).
//! 4. **Blocking pools.** Size each shard's blocking pool with the same law
//!    from its own gauges (`blocking.rs`).
//! 5. **Publish.** Store the decision and inputs for `stats()`, and emit a
//!    `tracing` debug event when the active count changes. Every tenth tick
//!    recompute each queue's `desired_workers` from the shards' published
//!    per-queue counters, capped for a limited queue by its concurrency
//!    limit and its rate times its run time (`Limits::worker_cap`).

use crate::builder::Workers;
use crate::lag::{Lag, Sample, Settings};
use crate::shard::ShardShared;
use crate::stats::{ControllerInputs, WorkerStats};
use spindle_core::staffing::{self, Counted, Rates};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Shortest time between two ticks when the lag alarm rings: at most a
/// thousand ticks a second (a few µs each), whatever the load.
const MIN_GAP: Duration = Duration::from_millis(1);

/// One shard's counters for the controller, written only by the shard
/// thread (relaxed stores of its own running totals). Aligned to its own
/// cache lines so the controller's reads do not disturb the neighbours.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct Gauges {
    /// Core jobs that became ready, since start.
    pub(crate) arrivals: AtomicU64,
    /// Core handler runs finished by this thread, since start.
    pub(crate) completions: AtomicU64,
    /// Their total run time, nanoseconds.
    pub(crate) busy_ns: AtomicU64,
    /// Core jobs ready here: the private heap plus the steal deque.
    pub(crate) ready: AtomicU64,
    /// Engine-clock ns when the oldest ready job here became ready (an
    /// estimate: set when the shard's queue goes from empty to non-empty,
    /// then to the ready time of each job the shard starts, as in CoDel's
    /// sojourn measurement at dequeue).
    pub(crate) head_ready_ns: AtomicU64,
    /// The same four for blocking queues.
    pub(crate) b_arrivals: AtomicU64,
    pub(crate) b_completions: AtomicU64,
    pub(crate) b_busy_ns: AtomicU64,
    pub(crate) b_ready: AtomicU64,
    pub(crate) b_head_ready_ns: AtomicU64,
    /// Engine-clock ns past which the running handler counts as stalled
    /// (0: no handler running), and its job id.
    pub(crate) stall_at: AtomicU64,
    pub(crate) job: AtomicU64,
}

/// The search slots: at most half the active workers (at least one) look
/// for work to steal at once (tokio's rule: more searchers only contend on
/// the same victims and burn CPU). Loom-checked below.
#[derive(Debug)]
pub(crate) struct Search {
    /// Core workers in the active set.
    pub(crate) active: crate::sync::AtomicUsize,
    /// Active workers looking for work to steal now.
    pub(crate) searching: crate::sync::AtomicUsize,
}

impl Search {
    pub(crate) fn new(active: usize) -> Search {
        Search {
            active: crate::sync::AtomicUsize::new(active),
            searching: crate::sync::AtomicUsize::new(0),
        }
    }

    /// Takes a slot if fewer than half the active workers hold one.
    pub(crate) fn try_search(&self) -> bool {
        let active = self.active.load(Ordering::Relaxed).max(1);
        let mut s = self.searching.load(Ordering::Acquire);
        while 2 * s < active {
            match self.searching.compare_exchange_weak(
                s,
                s + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(now) => s = now,
            }
        }
        false
    }

    /// Gives a slot back.
    pub(crate) fn end_search(&self) {
        let mut s = self.searching.load(Ordering::Acquire);
        while s > 0 {
            match self.searching.compare_exchange_weak(
                s,
                s - 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return,
                Err(now) => s = now,
            }
        }
    }
}

/// The worker pool's shared state.
#[derive(Debug)]
pub(crate) struct Pool {
    pub(crate) search: Search,
    /// Lag alarm: a worker that starts a job which waited longer than
    /// `alarm_ns` while the pool could still grow sets it and unparks the
    /// controller, which ticks at once instead of at its next tick.
    pub(crate) alarm: AtomicBool,
    pub(crate) alarm_ns: u64,
    /// Most active workers the controller may choose.
    pub(crate) max_active: usize,
    pub(crate) thread: std::sync::OnceLock<std::thread::Thread>,
    pub(crate) stop: AtomicBool,
    pub(crate) stats: Mutex<WorkerStats>,
    pub(crate) desired: Mutex<HashMap<String, u64>>,
    /// The queue of the handler each shard runs (written when it changes).
    pub(crate) running_queue: Vec<Mutex<Arc<str>>>,
    /// Idle workers spinning now, and how many may: one core fewer than
    /// the machine has, so spinning workers never take every core from
    /// the threads that submit (2 cores: one spinner).
    pub(crate) spinners: crate::sync::AtomicUsize,
    pub(crate) max_spinners: usize,
}

impl Pool {
    /// Called by a worker as it starts a job that became ready at
    /// `ready_ns`: rings the lag alarm if the job waited too long and the
    /// pool may still grow (one relaxed load when all is well).
    pub(crate) fn check_lag(&self, ready_ns: u64, start_ns: u64) {
        if start_ns.saturating_sub(ready_ns) > self.alarm_ns
            && self.search.active.load(Ordering::Relaxed) < self.max_active
            && !self.alarm.swap(true, Ordering::AcqRel)
        {
            if let Some(t) = self.thread.get() {
                t.unpark();
            }
        }
    }
}

impl Pool {
    pub(crate) fn new(
        shards: usize,
        initial_active: usize,
        max_active: usize,
        alarm_after: Duration,
    ) -> Pool {
        Pool {
            search: Search::new(initial_active),
            alarm: AtomicBool::new(false),
            alarm_ns: alarm_after.as_nanos() as u64,
            max_active,
            thread: std::sync::OnceLock::new(),
            stop: AtomicBool::new(false),
            // Valid before the controller's first tick publishes.
            stats: Mutex::new(WorkerStats {
                active: initial_active,
                parked: shards.saturating_sub(initial_active),
                ..WorkerStats::default()
            }),
            desired: Mutex::new(HashMap::new()),
            running_queue: (0..shards).map(|_| Mutex::new(Arc::from(""))).collect(),
            spinners: crate::sync::AtomicUsize::new(0),
            max_spinners: crate::pin::allowed_cores().len().saturating_sub(1),
        }
    }

    /// Takes a spinner's slot if one is free.
    pub(crate) fn try_spin(&self) -> bool {
        let mut n = self.spinners.load(Ordering::Relaxed);
        while n < self.max_spinners {
            match self.spinners.compare_exchange_weak(n, n + 1, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(now) => n = now,
            }
        }
        false
    }

    /// Gives a spinner's slot back.
    pub(crate) fn end_spin(&self) {
        self.spinners.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What the controller thread needs.
pub(crate) struct Controller {
    pub(crate) shards: Arc<[Arc<ShardShared>]>,
    pub(crate) pool: Arc<Pool>,
    pub(crate) policy: Workers,
    pub(crate) settings: Settings,
    pub(crate) stealing: bool,
    pub(crate) tick: Duration,
    pub(crate) max_blocking: usize,
    pub(crate) epoch: Instant,
}

/// Step 3's choice of the active set: `k` shards, given which are active
/// now and which had local demand since the last tick. A shard with demand
/// ranks before one without; then an active shard before a parked one;
/// then the lower index.
pub(crate) fn choose(k: usize, current: &[bool], demand: &[bool]) -> Vec<bool> {
    let n = current.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| (!demand.get(i).copied().unwrap_or(false), !current[i], i));
    let mut set = vec![false; n];
    for &i in order.iter().take(k) {
        set[i] = true;
    }
    set
}

/// Step 1 for one kind of work (core or blocking) over some shards.
/// `long_ns`: a handler running longer than this counts as `running` (the
/// target wait; blocking pools count every busy thread).
fn sample<'a>(
    now_ns: u64,
    shards: impl Iterator<Item = &'a ShardShared>,
    blocking: bool,
    long_ns: u64,
) -> Sample {
    let mut x = Sample { now: Duration::from_nanos(now_ns), ..Sample::default() };
    let mut busy = 0u64;
    for s in shards {
        let g = &s.gauges;
        let (a, c, b, r, h) = if blocking {
            (&g.b_arrivals, &g.b_completions, &g.b_busy_ns, &g.b_ready, &g.b_head_ready_ns)
        } else {
            (&g.arrivals, &g.completions, &g.busy_ns, &g.ready, &g.head_ready_ns)
        };
        x.arrivals += a.load(Ordering::Relaxed);
        x.completions += c.load(Ordering::Relaxed);
        busy += b.load(Ordering::Relaxed);
        let ready = r.load(Ordering::Relaxed);
        x.ready += ready;
        if ready > 0 {
            let head = h.load(Ordering::Relaxed);
            if head > 0 {
                x.oldest = x.oldest.max(Duration::from_nanos(now_ns.saturating_sub(head)));
            }
        }
        if blocking {
            let p = &s.pool;
            let idle = p.idle.load(Ordering::Relaxed);
            x.running += p.threads.load(Ordering::Relaxed).saturating_sub(idle);
        } else {
            let since = s.handler_since.load(Ordering::Relaxed);
            if since != 0 && now_ns.saturating_sub(since) > long_ns {
                x.running += 1;
            }
        }
    }
    x.busy = Duration::from_nanos(busy);
    x
}

impl Controller {
    /// Makes the shards of `set` the active ones (all of them without
    /// stealing: only stealing moves a parked shard's jobs).
    fn apply(&self, set: &[bool]) {
        let count = if self.stealing { set.iter().filter(|&&a| a).count() } else { set.len() };
        self.pool.search.active.store(count, Ordering::Relaxed);
        for (s, &want) in self.shards.iter().zip(set) {
            let want = want || !self.stealing;
            if s.active.swap(want, Ordering::SeqCst) != want && want {
                s.notify();
            }
        }
    }

    /// The active set now.
    fn current(&self) -> Vec<bool> {
        self.shards.iter().map(|s| s.active.load(Ordering::Relaxed)).collect()
    }

    /// The thread body: ticks until the engine shuts down.
    pub(crate) fn run(self) {
        let n = self.shards.len();
        let mut lag = Lag::new(self.settings);
        let mut pools: Vec<Lag> = (0..n)
            .map(|_| Lag::new(Settings { min: 1, max: self.max_blocking, ..self.settings }))
            .collect();
        let initial = match self.policy {
            Workers::Lag => lag.active(),
            Workers::Static(k) => k.clamp(1, n),
        };
        self.apply(&choose(initial, &vec![false; n], &[]));
        let mut reported = vec![0u64; n];
        let mut stalls = 0u64;
        let mut last_stall = None;
        let mut changes = 0u64;
        let mut last_active = initial;
        let mut ticks = 0u64;
        let mut queues = QueueRates::default();
        let policy = match self.policy {
            Workers::Lag => "lag",
            Workers::Static(_) => "static",
        };
        let mut last_tick = Instant::now();
        while !self.pool.stop.load(Ordering::Acquire) {
            // Sleep until the next tick or the lag alarm, but at least
            // MIN_GAP after the last tick (bounds the alarm's cost).
            let next = last_tick + self.tick;
            loop {
                let now = Instant::now();
                if now >= next || self.pool.stop.load(Ordering::Acquire) {
                    break;
                }
                if self.pool.alarm.load(Ordering::Acquire) && now >= last_tick + MIN_GAP {
                    break;
                }
                let wake = if self.pool.alarm.load(Ordering::Acquire) {
                    (last_tick + MIN_GAP).min(next)
                } else {
                    next
                };
                std::thread::park_timeout(wake.saturating_duration_since(now));
            }
            if self.pool.stop.load(Ordering::Acquire) {
                break;
            }
            last_tick = Instant::now();
            ticks += 1;
            let now = self.epoch.elapsed().as_nanos() as u64;
            // Step 2.
            let mut stalled = 0;
            for (i, s) in self.shards.iter().enumerate() {
                let at = s.gauges.stall_at.load(Ordering::Relaxed);
                if at == 0 || now < at {
                    continue;
                }
                stalled += 1;
                let since = s.handler_since.load(Ordering::Relaxed);
                if since != 0 && reported[i] != since {
                    reported[i] = since;
                    stalls += 1;
                    let queue = self.pool.running_queue[i]
                        .lock()
                        .map(|q| q.to_string())
                        .unwrap_or_else(|p| p.into_inner().to_string());
                    let job = s.gauges.job.load(Ordering::Relaxed);
                    let running_ms = now.saturating_sub(since) / 1_000_000;
                    tracing::warn!(
                        shard = i,
                        job,
                        queue = %queue,
                        running_ms,
                        "handler stalled: far past its queue's usual run time; \
                         its shard's ready jobs are left to other workers"
                    );
                    last_stall = Some(crate::stats::StallReport {
                        shard: i,
                        job: crate::JobId(job),
                        queue,
                        running_ms,
                    });
                }
            }
            // Step 3.
            let long = self.settings.target_wait.as_nanos() as u64;
            let mut x = sample(now, self.shards.iter().map(|s| &**s), false, long);
            x.stalled = stalled;
            let d = lag.tick(x);
            let active = match self.policy {
                Workers::Lag => d.active,
                Workers::Static(k) => k.clamp(1, n),
            };
            if active != last_active {
                changes += 1;
                tracing::debug!(
                    from = last_active,
                    to = active,
                    recommended = d.recommended,
                    arrival_rate = d.arrival_rate,
                    mean_run_us = d.mean_run.as_secs_f64() * 1e6,
                    ready = x.ready,
                    oldest_ready_us = x.oldest.as_secs_f64() * 1e6,
                    "lag controller: active core workers changed"
                );
                last_active = active;
            }
            // Which shards: see step 3 and `choose`.
            let demand: Vec<bool> =
                self.shards.iter().map(|s| s.demand.swap(false, Ordering::Relaxed)).collect();
            let current = self.current();
            let set = choose(active, &current, &demand);
            if set != current {
                self.apply(&set);
            }
            self.pool.alarm.store(false, Ordering::Release);
            // Step 4.
            let mut threads = 0;
            let mut target_sum = 0;
            for (s, pl) in self.shards.iter().zip(pools.iter_mut()) {
                let bx = sample(now, std::iter::once(&**s), true, 0);
                let t = pl.tick(bx).active;
                // A raised target lets a shard hand over more of its waiting
                // blocking jobs: wake it (it may be parked).
                if s.pool.target.swap(t, Ordering::SeqCst) < t && bx.ready > 0 {
                    s.notify();
                }
                target_sum += t;
                threads += s.pool.threads.load(Ordering::Relaxed);
            }
            // Step 5.
            if ticks % 10 == 0 {
                let desired = queues.update(now, &self.shards, self.settings.target_wait);
                *self.pool.desired.lock().unwrap_or_else(|p| p.into_inner()) = desired;
            }
            let busy =
                self.shards.iter().filter(|s| s.handler_since.load(Ordering::Relaxed) != 0).count();
            let ws = WorkerStats {
                policy,
                active: self.pool.search.active.load(Ordering::Relaxed),
                parked: n - self.pool.search.active.load(Ordering::Relaxed),
                busy,
                stalls,
                last_stall: last_stall.clone(),
                changes,
                blocking_threads: threads,
                blocking_target: target_sum,
                inputs: ControllerInputs {
                    arrival_rate: d.arrival_rate,
                    completion_rate: d.completion_rate,
                    mean_run_us: d.mean_run.as_secs_f64() * 1e6,
                    ready: x.ready,
                    oldest_ready_us: x.oldest.as_secs_f64() * 1e6,
                    recommended: d.recommended,
                },
            };
            *self.pool.stats.lock().unwrap_or_else(|p| p.into_inner()) = ws;
        }
    }
}

/// Per-queue rates for `desired_workers`, from the shards' published
/// per-queue counters (`spindle_core::staffing`: the daemon's
/// `desired-workers` is the same law on the same estimate).
#[derive(Default)]
struct QueueRates {
    q: BTreeMap<String, Rates>,
}

/// One queue's counters summed over the shards, its ready and running
/// jobs, and its limits.
#[derive(Default)]
struct QueueSum {
    counted: Counted,
    ready: u64,
    running: u64,
    limits: Option<spindle_core::Limits>,
}

impl QueueRates {
    /// `staffing::desired_workers` per queue, with the target wait `d`.
    fn update(
        &mut self,
        now: u64,
        shards: &[Arc<ShardShared>],
        d: Duration,
    ) -> HashMap<String, u64> {
        let mut sums: BTreeMap<String, QueueSum> = BTreeMap::new();
        for s in shards {
            let g = s.snapshot.lock().unwrap_or_else(|p| p.into_inner());
            for (name, l) in &g.1.limits {
                sums.entry(name.clone()).or_default().limits = Some(*l);
            }
            for (name, c) in &g.1.counts {
                let e = &mut sums.entry(name.clone()).or_default().counted;
                e.arrived += c.arrived;
                e.runs += c.runs;
                e.run_ns += c.run_ns;
            }
            for (name, q) in &g.1.queues {
                let e = sums.entry(name.clone()).or_default();
                e.ready += q.ready;
                e.running += q.running;
            }
        }
        self.desired(now, sums, d)
    }

    /// Steps the rates of the queues in `sums` and sizes each; a queue no
    /// shard publishes any more (its table dropped it) is forgotten, so
    /// short-lived queue names do not pile up here.
    fn desired(
        &mut self,
        now: u64,
        sums: BTreeMap<String, QueueSum>,
        d: Duration,
    ) -> HashMap<String, u64> {
        self.q.retain(|name, _| sums.contains_key(name));
        let mut out = HashMap::new();
        for (name, sum) in sums {
            let r = self.q.entry(name.clone()).or_default();
            r.observe(now, sum.counted, staffing::TAU);
            // A limited queue keeps only so many workers busy: its
            // concurrency, and by Little's law its rate times the run time.
            let cap = sum.limits.and_then(|l| l.worker_cap(r.run_time()));
            out.insert(name, staffing::desired_workers(r, sum.ready, sum.running > 0, d, cap));
        }
        out
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::Arc;

    /// Three idle workers of an active set of two race for search slots:
    /// never more than one holds a slot at once, and all are given back.
    #[test]
    fn at_most_half_the_active_workers_search() {
        loom::model(|| {
            let search = Arc::new(Search::new(2));
            let holders = Arc::new(crate::sync::AtomicUsize::new(0));
            let threads: Vec<_> = (0..3)
                .map(|_| {
                    let (search, holders) = (search.clone(), holders.clone());
                    loom::thread::spawn(move || {
                        if search.try_search() {
                            let now = holders.fetch_add(1, Ordering::SeqCst) + 1;
                            assert!(now <= 1, "{now} searchers with 2 active workers");
                            holders.fetch_sub(1, Ordering::SeqCst);
                            search.end_search();
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            assert_eq!(search.searching.load(Ordering::SeqCst), 0);
        });
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::{choose, QueueRates, QueueSum};
    use spindle_core::staffing::Counted;
    use std::collections::BTreeMap;
    use std::time::Duration;

    fn sum(arrived: u64, ready: u64) -> QueueSum {
        QueueSum {
            counted: Counted { arrived, runs: arrived, run_ns: arrived * 10_000_000 },
            ready,
            ..QueueSum::default()
        }
    }

    #[test]
    fn queues_no_shard_publishes_are_forgotten() {
        let mut r = QueueRates::default();
        let d = Duration::from_millis(50);
        let both = BTreeMap::from([("a".to_string(), sum(0, 0)), ("b".to_string(), sum(0, 0))]);
        r.desired(0, both, d);
        let later = BTreeMap::from([("a".to_string(), sum(100, 5)), ("b".to_string(), sum(50, 0))]);
        let out = r.desired(1_000_000_000, later, d);
        assert!(out["a"] >= 1 && out["b"] >= 1, "{out:?}");
        // `b` went away (its table dropped it): it is no longer sized or kept.
        let out = r.desired(2_000_000_000, BTreeMap::from([("a".to_string(), sum(200, 0))]), d);
        assert_eq!(out.keys().collect::<Vec<_>>(), ["a"]);
        assert_eq!(r.q.keys().collect::<Vec<_>>(), ["a"]);
        // Coming back, it starts from a fresh baseline.
        let out = r.desired(3_000_000_000, BTreeMap::from([("b".to_string(), sum(60, 0))]), d);
        assert_eq!(out["b"], 0, "a queue's first reading only sets its baseline");
    }

    #[test]
    fn without_demand_the_lowest_shards_are_active() {
        assert_eq!(choose(2, &[false; 4], &[false; 4]), [true, true, false, false]);
    }

    #[test]
    fn the_active_set_moves_to_the_producers_core() {
        // One active worker on shard 0; a producer submits from shard 1's core.
        let now = [true, false];
        assert_eq!(choose(1, &now, &[false, true]), [false, true]);
    }

    #[test]
    fn producers_on_several_cores_keep_the_shard_active_now() {
        // Demand on both: the active one stays, no flapping between ticks.
        let now = [false, true, false];
        assert_eq!(choose(1, &now, &[true, true, false]), [false, true, false]);
        assert_eq!(choose(2, &now, &[true, true, false]), [true, true, false]);
    }

    #[test]
    fn growing_keeps_the_active_shards_and_adds_the_lowest_parked_ones() {
        let now = [false, false, true, false];
        assert_eq!(choose(3, &now, &[false; 4]), [true, true, true, false]);
    }
}
