//! A shard: one thread that owns a set of jobs, their queues, timers and log.
//!
//! The loop, in order, every iteration:
//!
//! 1. **Inbox.** Drain up to [`INBOX_BATCH`] messages from the lock-free
//!    inbox: new jobs (already logged by their producer), unique-key jobs
//!    (checked and logged here), handler registrations, outcomes of jobs
//!    other shards stole from us or our blocking pool ran, stats requests,
//!    shutdown.
//! 2. **Timers.** Move delayed jobs whose time has come to ready.
//! 3. **Blocking pool.** Hand ready jobs of blocking queues to the shard's
//!    pool, up to the controller's target (`blocking.rs`).
//! 4. **Run** (active shards only, `control.rs`). Take the most urgent
//!    ready job (priority, then FIFO) and run its handler on this thread.
//!    Before that, if more jobs wait behind it, offer all of them to the
//!    shard's work-stealing deque, so a long handler strands none
//!    (`steal.rs`). A shard outside the active set only offers its ready
//!    jobs and wakes an active one.
//! 5. **Steal.** With nothing of its own to run, and a search slot (at most
//!    half the active workers search at once), take a batch from another
//!    shard's deque, run them, and send each outcome back to the owner,
//!    which logs it: a job's records always stay in its owner's log.
//! 6. **Idle.** An active shard spins for `idle_spin` (default 30 µs), then
//!    parks until a message, a timer, or stealable work with a free search
//!    slot; an inactive one parks at once (`park.rs`).

use crate::backoff::{retry_delay, Rng};
use crate::blocking::{self, BlockingDone, PoolGauges};
use crate::builder::Durability;
use crate::control::{self, Gauges};
use crate::engine::{Config, Counters, Handler};
use crate::idhash::IdBuild;
use crate::job::{JobId, JobRef, Outcome};
use crate::park::Parker;
use crate::record::{self, Rec, KIND_REC};
use crate::stats::{self, QueueCounts, QueueStats, Snapshot};
use crate::steal::{Task, TaskOutcome};
use crossbeam_deque::{Steal, Stealer, Worker};
use crossbeam_queue::{ArrayQueue, SegQueue};
use hdrhistogram::Histogram;
use spindle_wal::{Appender, Wal};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Messages handled per loop iteration before running a job, so a flood of
/// submissions cannot starve dispatch.
const INBOX_BATCH: usize = 256;
/// Longest a shutting-down shard waits for the outcomes of its jobs that
/// other shards stole and still run (beyond it they rerun after restart).
const SHUTDOWN_WAIT_MAX: Duration = Duration::from_secs(30);
/// Completed jobs whose `Done` records are written as one `Dones` record:
/// one append instead of 64. They are also written before the shard parks
/// and when it stops; a crash before that runs them again (at least once,
/// as for any job whose outcome was not logged).
const DONE_BATCH: usize = 64;
/// Longest park without a timer: a safety net, not a correctness need.
const MAX_PARK: Duration = Duration::from_millis(100);

/// Decrements a gauge without ever wrapping (a miscount must not kill a
/// shard).
fn dec(gauge: &mut u64) {
    *gauge = gauge.saturating_sub(1);
}

/// Runs a handler; a panic is a failed attempt carrying the panic message.
pub(crate) fn call_handler(h: &dyn Handler, job: &JobRef<'_>) -> Outcome {
    match std::panic::catch_unwind(AssertUnwindSafe(|| h.handle(job))) {
        Ok(o) => o,
        Err(p) => {
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "handler panicked".into());
            Outcome::Retry(format!("panic: {msg}"))
        }
    }
}

/// Wall-clock milliseconds since the Unix epoch (for run_at, which must
/// survive restarts).
pub(crate) fn wall_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The wall-clock millisecond at or after which a job delayed by `delay`
/// from now may run. `wall_ms` truncates, so one millisecond is added and the
/// delay is rounded up: a job never runs early.
pub(crate) fn run_at_after(delay: Duration) -> u64 {
    let ms = delay.as_nanos().div_ceil(1_000_000) as u64;
    wall_ms() + ms + 1
}

/// Estimated bytes of a job's `Put` record in the log (frame header, rkyv
/// overhead and fields), for compaction's live-size estimate.
fn record_size(e: &Entry) -> u64 {
    (e.payload.len() + e.queue.len() + e.unique_key.as_ref().map_or(0, |k| k.len()) + 96) as u64
}

/// A job handed to a shard by a producer.
#[derive(Debug)]
pub(crate) struct NewJob {
    pub(crate) id: u64,
    pub(crate) queue: Arc<str>,
    pub(crate) priority: u32,
    pub(crate) payload: Arc<[u8]>,
    pub(crate) run_at_ms: u64,
    pub(crate) max_attempts: u32,
    pub(crate) unique_key: Option<Box<str>>,
    /// LSN of its `Put` record (0 in Memory mode).
    pub(crate) lsn: u64,
    /// Engine clock, nanoseconds.
    pub(crate) submitted_ns: u64,
}

/// Reply to a unique-key submission: the id and the LSN to wait on.
pub(crate) type UniqueReply = crossbeam_queue::ArrayQueue<Result<(JobId, u64), crate::SubmitError>>;

/// A message to a shard.
pub(crate) enum Msg {
    /// One job (a single `submit`: no `Vec` to allocate).
    Job(NewJob),
    Jobs(Vec<NewJob>),
    Unique(NewJob, Arc<UniqueReply>, std::thread::Thread),
    Register(Arc<str>, Arc<dyn Handler>, bool),
    Outcome(TaskOutcome),
    Return(Task),
    /// Jobs another shard took from this shard's inbox while this shard was
    /// stuck in a handler, ran, and hands back with their outcomes.
    Rescued(Vec<(NewJob, Outcome)>),
    /// A job this shard's blocking pool ran.
    Blocking(BlockingDone),
    Shutdown,
}

/// The part of a shard other threads touch.
pub(crate) struct ShardShared {
    pub(crate) idx: usize,
    pub(crate) inbox: SegQueue<Msg>,
    pub(crate) parker: OnceLock<Parker>,
    pub(crate) stealer: Stealer<Task>,
    pub(crate) wal: Option<Arc<Wal>>,
    /// Appenders lent to producer threads (lock-free pool).
    pub(crate) appenders: ArrayQueue<Appender>,
    pub(crate) snapshot: Mutex<(u64, Snapshot)>,
    pub(crate) snapshot_cv: Condvar,
    /// Snapshot requests made by `Engine::stats` (a counter); the mutex
    /// holds the number of the last request served with its snapshot.
    pub(crate) snapshot_req: AtomicU64,
    /// Set when the shard thread has stopped reading its inbox.
    pub(crate) exited: AtomicBool,
    /// Submit epoch (compaction step 1-2): producers count themselves in
    /// `inflight[epoch % 2]` from before their append until their job is in
    /// the inbox.
    pub(crate) epoch: AtomicUsize,
    pub(crate) inflight: [AtomicUsize; 2],
    /// Engine-clock nanoseconds at which the running handler started (0:
    /// none). Producers route around a shard stuck in one handler.
    pub(crate) handler_since: AtomicU64,
    /// In the controller's active set: may run handlers (`control.rs`).
    pub(crate) active: AtomicBool,
    /// Counters the controller samples.
    pub(crate) gauges: Gauges,
    /// The blocking pool's thread counts and target.
    pub(crate) pool: PoolGauges,
}

/// A producer's presence in a submit epoch; leaving drops the count.
pub(crate) struct InFlight<'a> {
    counter: &'a AtomicUsize,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.counter.fetch_sub(1, Ordering::SeqCst);
    }
}

impl ShardShared {
    /// Enters the current submit epoch (before appending a `Put`); hold the
    /// guard until the job is in the inbox.
    pub(crate) fn enter(&self) -> InFlight<'_> {
        loop {
            let e = self.epoch.load(Ordering::SeqCst);
            let counter = &self.inflight[e % 2];
            counter.fetch_add(1, Ordering::SeqCst);
            // The epoch may have flipped between the load and the add: then
            // compaction may already be waiting on the old counter, so leave
            // it and join the new epoch.
            if self.epoch.load(Ordering::SeqCst) == e {
                return InFlight { counter };
            }
            counter.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Starts a new epoch; returns the old one.
    fn flip_epoch(&self) -> usize {
        self.epoch.fetch_add(1, Ordering::SeqCst)
    }

    /// Whether every producer of `epoch` has left.
    fn epoch_quiet(&self, epoch: usize) -> bool {
        self.inflight[epoch % 2].load(Ordering::SeqCst) == 0
    }

    /// Pushes a message and wakes the shard if it sleeps.
    pub(crate) fn send(&self, msg: Msg) {
        self.inbox.push(msg);
        self.notify();
    }

    pub(crate) fn notify(&self) {
        if let Some(p) = self.parker.get() {
            p.notify();
        }
    }

    /// Appends a record through a pooled appender.
    pub(crate) fn append(&self, wal: &Wal, rec: &Rec) -> Result<u64, crate::SubmitError> {
        let mut app = self.appenders.pop().unwrap_or_else(|| wal.appender());
        let res = record::encode_with(rec, |bytes| app.append(KIND_REC, bytes));
        let _ = self.appenders.push(app);
        let res = res.map_err(|e| {
            crate::SubmitError::Io(spindle_wal::WalError::Config(format!("encode: {e}")))
        })?;
        res.map_err(|e| match e {
            spindle_wal::WalError::Closed => crate::SubmitError::ShuttingDown,
            e => crate::SubmitError::Io(e),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Ready,
    Delayed,
    Running,
    Buried,
}

#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) queue: Arc<str>,
    pub(crate) priority: u32,
    pub(crate) payload: Arc<[u8]>,
    pub(crate) attempts: u32,
    pub(crate) max_attempts: u32,
    pub(crate) unique_key: Option<Box<str>>,
    state: State,
    pub(crate) run_at_ms: u64,
    lsn: u64,
    submitted_ns: u64,
    ready_ns: u64,
}

impl Entry {
    /// The state of a job just submitted (not yet run).
    fn from_new(j: NewJob) -> Entry {
        Entry {
            queue: j.queue,
            priority: j.priority,
            payload: j.payload,
            attempts: 0,
            max_attempts: j.max_attempts,
            unique_key: j.unique_key,
            state: State::Ready,
            run_at_ms: j.run_at_ms,
            lsn: j.lsn,
            submitted_ns: j.submitted_ns,
            ready_ns: 0,
        }
    }
}

/// A job recovered from the log, before the shard starts.
#[derive(Debug)]
pub(crate) struct Recovered {
    pub(crate) id: u64,
    pub(crate) entry: Entry,
    pub(crate) buried: bool,
    /// Runs started and not finished before a crash, in a row.
    pub(crate) interruptions: u32,
}

impl Recovered {
    pub(crate) fn from_put(rec: Rec, lsn: u64) -> Option<Recovered> {
        let Rec::Put {
            id,
            queue,
            priority,
            payload,
            run_at_ms,
            attempts,
            max_attempts,
            unique_key,
            buried,
        } = rec
        else {
            return None;
        };
        Some(Recovered {
            id,
            buried,
            interruptions: 0,
            entry: Entry {
                queue: queue.into(),
                priority,
                payload: payload.into(),
                attempts,
                max_attempts,
                unique_key: unique_key.map(Into::into),
                state: State::Ready,
                run_at_ms,
                lsn,
                submitted_ns: 0,
                ready_ns: 0,
            },
        })
    }
}

/// The shard thread's own state.
pub(crate) struct Shard {
    sh: Arc<ShardShared>,
    all: Arc<[Arc<ShardShared>]>,
    cfg: Arc<Config>,
    counters: Arc<Counters>,
    jobs: HashMap<u64, Entry, IdBuild>,
    /// Runnable jobs: (priority, FIFO sequence, id), most urgent first.
    ready: BinaryHeap<Reverse<(u32, u64, u64)>>,
    /// Ready jobs of queues with no handler here yet.
    waiting: HashMap<Arc<str>, Vec<(u32, u64, u64)>>,
    delayed: BinaryHeap<Reverse<(u64, u64)>>,
    /// Handlers, and whether they block (run on the pool).
    handlers: HashMap<Arc<str>, (Arc<dyn Handler>, bool)>,
    /// Ready jobs of blocking queues, for the pool (`blocking.rs`).
    ready_blocking: BinaryHeap<Reverse<(u32, u64, u64)>>,
    blocking: Option<blocking::Pool>,
    /// Jobs in the blocking pool's hands.
    blocking_out: u64,
    ctl: Arc<control::Pool>,
    /// Running totals stored into `sh.gauges` (core, then blocking).
    g_arrivals: u64,
    g_completions: u64,
    g_busy_ns: u64,
    gb_arrivals: u64,
    gb_completions: u64,
    gb_busy_ns: u64,
    /// The queue last stored in `ctl.running_queue`.
    running_queue: Arc<str>,
    unique: HashMap<(Arc<str>, Box<str>), u64>,
    /// Live jobs by the LSN of their latest `Put` (compaction's index).
    by_lsn: BTreeMap<u64, u64>,
    worker: Worker<Task>,
    appender: Option<Appender>,
    seq: u64,
    rng: Rng,
    queues: HashMap<Arc<str>, (QueueStats, QueueCounts)>,
    dispatch: Histogram<u64>,
    run_time: Histogram<u64>,
    end_to_end: Histogram<u64>,
    jobs_run: u64,
    jobs_stolen: u64,
    pinned_core: Option<usize>,
    published_at: Instant,
    shutting_down: bool,
    /// Compaction step 2-3 in progress: (cut, epoch to wait for).
    pending_cut: Option<(u64, usize)>,
    /// Estimated log bytes of the live jobs' records.
    live_log_bytes: u64,
    shutdown_at: Option<Instant>,
    /// The last snapshot request served.
    served: u64,
    /// Own tasks offered in the deque and not yet back (run here, outcome
    /// received from a thief, or returned).
    out: u64,
    /// A release waiting for its mark to be durable: (below, mark lsn).
    pending_release: Option<(u64, u64)>,
    /// Priority of the most urgent job in the latest offer to thieves.
    offered_best: u32,
    /// Holds one of the pool's search slots (`control::Pool::try_search`).
    searching: bool,
    /// Completed jobs whose `Done` is not logged yet ([`DONE_BATCH`]).
    pending_done: Vec<u64>,
}

impl Shard {
    pub(crate) fn new(
        sh: Arc<ShardShared>,
        all: Arc<[Arc<ShardShared>]>,
        cfg: Arc<Config>,
        counters: Arc<Counters>,
        worker: Worker<Task>,
        recovered: Vec<Recovered>,
        ctl: Arc<control::Pool>,
    ) -> Shard {
        let appender = sh.wal.as_ref().map(|w| w.appender());
        let mut shard = Shard {
            rng: Rng::new(0x9E37_79B9_7F4A_7C15 ^ (sh.idx as u64 + 1)),
            sh,
            all,
            cfg,
            counters,
            jobs: HashMap::default(),
            ready: BinaryHeap::new(),
            waiting: HashMap::new(),
            delayed: BinaryHeap::new(),
            handlers: HashMap::new(),
            ready_blocking: BinaryHeap::new(),
            blocking: None,
            blocking_out: 0,
            ctl,
            g_arrivals: 0,
            g_completions: 0,
            g_busy_ns: 0,
            gb_arrivals: 0,
            gb_completions: 0,
            gb_busy_ns: 0,
            running_queue: Arc::from(""),
            unique: HashMap::new(),
            by_lsn: BTreeMap::new(),
            worker,
            appender,
            seq: 0,
            queues: HashMap::new(),
            dispatch: stats::histogram(),
            run_time: stats::histogram(),
            end_to_end: stats::histogram(),
            jobs_run: 0,
            jobs_stolen: 0,
            pinned_core: None,
            published_at: Instant::now(),
            shutting_down: false,
            pending_cut: None,
            shutdown_at: None,
            served: 0,
            live_log_bytes: 0,
            out: 0,
            pending_release: None,
            offered_best: u32::MAX,
            searching: false,
            pending_done: Vec::new(),
        };
        let now = shard.now_ns();
        for r in recovered {
            let mut e = r.entry;
            e.submitted_ns = now;
            let id = r.id;
            let (buried, run_at) = (r.buried, e.run_at_ms);
            let q = e.queue.clone();
            shard.admit(id, e);
            if buried {
                shard.set_state(id, State::Buried);
                shard.stat(&q).buried += 1;
            } else {
                shard.schedule(id, run_at, now);
            }
        }
        shard
    }

    fn now_ns(&self) -> u64 {
        self.cfg.epoch.elapsed().as_nanos() as u64
    }

    fn stat(&mut self, q: &Arc<str>) -> &mut QueueStats {
        &mut self.queues.entry(q.clone()).or_default().0
    }

    fn counts(&mut self, q: &Arc<str>) -> &mut QueueCounts {
        &mut self.queues.entry(q.clone()).or_default().1
    }

    fn set_state(&mut self, id: u64, s: State) {
        if let Some(e) = self.jobs.get_mut(&id) {
            e.state = s;
        }
    }

    /// Makes a job ready now or delays it until `run_at_ms` (gauges updated).
    fn schedule(&mut self, id: u64, run_at_ms: u64, now_ns: u64) {
        let Some(e) = self.jobs.get_mut(&id) else { return };
        let q = e.queue.clone();
        if run_at_ms > 0 && run_at_ms > wall_ms() {
            e.state = State::Delayed;
            e.run_at_ms = run_at_ms;
            self.delayed.push(Reverse((run_at_ms, id)));
            self.stat(&q).delayed += 1;
        } else {
            e.state = State::Ready;
            e.run_at_ms = 0;
            e.ready_ns = now_ns;
            let prio = e.priority;
            self.seq += 1;
            let key = (prio, self.seq, id);
            self.push_ready(&q, key, now_ns);
            let s = self.queues.entry(q).or_default();
            s.0.ready += 1;
            s.1.arrived += 1;
        }
    }

    /// Queues a ready job where its handler kind runs it, counting the
    /// arrival for the controller.
    fn push_ready(&mut self, q: &Arc<str>, key: (u32, u64, u64), now_ns: u64) {
        match self.handlers.get(q) {
            Some((_, false)) => {
                if self.ready.is_empty() && self.worker.is_empty() {
                    self.sh.gauges.head_ready_ns.store(now_ns.max(1), Ordering::Relaxed);
                }
                self.ready.push(Reverse(key));
                self.g_arrivals += 1;
                self.sh.gauges.arrivals.store(self.g_arrivals, Ordering::Relaxed);
            }
            Some((_, true)) => {
                if self.ready_blocking.is_empty() {
                    self.sh.gauges.b_head_ready_ns.store(now_ns.max(1), Ordering::Relaxed);
                }
                self.ready_blocking.push(Reverse(key));
                self.gb_arrivals += 1;
                self.sh.gauges.b_arrivals.store(self.gb_arrivals, Ordering::Relaxed);
            }
            None => self.waiting.entry(q.clone()).or_default().push(key),
        }
    }

    fn log(&mut self, rec: &Rec) -> Option<u64> {
        let app = self.appender.as_mut()?;
        let appended = match record::encode_with(rec, |bytes| app.append(KIND_REC, bytes)) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(shard = self.sh.idx, error = %e, "cannot encode log record");
                return None;
            }
        };
        match appended {
            Ok(lsn) => Some(lsn),
            Err(e) => {
                // The job's state changes in memory regardless; if the log is
                // failed the process must restart, and recovery replays what
                // was durable (at-least-once: the job may run again).
                tracing::error!(shard = self.sh.idx, error = %e, "cannot log job state change");
                None
            }
        }
    }

    fn put_record(&self, id: u64, e: &Entry) -> Rec {
        Rec::Put {
            id,
            queue: e.queue.to_string(),
            priority: e.priority,
            payload: e.payload.to_vec(),
            run_at_ms: e.run_at_ms,
            attempts: e.attempts,
            max_attempts: e.max_attempts,
            unique_key: e.unique_key.as_ref().map(|k| k.to_string()),
            buried: e.state == State::Buried,
        }
    }

    /// Takes ownership of a job: indexes its unique key and log position,
    /// counts its record size, and stores it (not yet scheduled).
    fn admit(&mut self, id: u64, e: Entry) {
        if let Some(k) = &e.unique_key {
            self.unique.insert((e.queue.clone(), k.clone()), id);
        }
        if self.sh.wal.is_some() {
            self.by_lsn.insert(e.lsn, id);
        }
        self.live_log_bytes += record_size(&e);
        self.jobs.insert(id, e);
    }

    fn insert_new(&mut self, j: NewJob) {
        let (id, run_at) = (j.id, j.run_at_ms);
        self.admit(id, Entry::from_new(j));
        let now = self.now_ns();
        self.schedule(id, run_at, now);
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Job(j) => self.insert_new(j),
            Msg::Jobs(jobs) => {
                for j in jobs {
                    self.insert_new(j);
                }
            }
            Msg::Unique(j, reply, waiter) => {
                let key = j.unique_key.clone().map(|k| (j.queue.clone(), k));
                let res = match key.as_ref().and_then(|k| self.unique.get(k)) {
                    Some(&existing) => {
                        self.counters.release(1, j.payload.len() as u64);
                        Err(crate::SubmitError::Duplicate { existing: JobId(existing) })
                    }
                    None => {
                        let (id, run_at, len) = (j.id, j.run_at_ms, j.payload.len() as u64);
                        let mut e = Entry::from_new(j);
                        let logged = if self.sh.wal.is_some() {
                            let rec = self.put_record(id, &e);
                            self.log(&rec).ok_or_else(|| {
                                crate::SubmitError::Io(spindle_wal::WalError::Failed(
                                    "the shard could not log the job".into(),
                                ))
                            })
                        } else {
                            Ok(0)
                        };
                        match logged {
                            Ok(lsn) => {
                                e.lsn = lsn;
                                self.admit(id, e);
                                let now = self.now_ns();
                                self.schedule(id, run_at, now);
                                Ok((JobId(id), lsn))
                            }
                            Err(err) => {
                                self.counters.release(1, len);
                                Err(err)
                            }
                        }
                    }
                };
                let _ = reply.push(res);
                waiter.unpark();
            }
            Msg::Register(q, h, blocking) => {
                self.handlers.insert(q.clone(), (h, blocking));
                if blocking && self.blocking.is_none() {
                    self.blocking =
                        Some(blocking::Pool::new(self.cfg.max_blocking, self.cfg.epoch));
                }
                if let Some(keys) = self.waiting.remove(&q) {
                    let now = self.now_ns();
                    for key in keys {
                        self.push_ready(&q, key, now);
                    }
                }
            }
            Msg::Blocking(d) => {
                self.blocking_out = self.blocking_out.saturating_sub(1);
                let run = d.end_ns.saturating_sub(d.start_ns);
                self.gb_completions += 1;
                self.gb_busy_ns += run;
                let g = &self.sh.gauges;
                g.b_completions.store(self.gb_completions, Ordering::Relaxed);
                g.b_busy_ns.store(self.gb_busy_ns, Ordering::Relaxed);
                let _ = self.dispatch.record(d.start_ns.saturating_sub(d.task.ready_ns).max(1));
                let _ = self.run_time.record(run.max(1));
                if d.outcome == Outcome::Done {
                    let _ =
                        self.end_to_end.record(d.end_ns.saturating_sub(d.task.submitted_ns).max(1));
                }
                self.jobs_run += 1;
                let c = self.counts(&d.task.queue);
                c.runs += 1;
                c.run_ns += run;
                self.finish(d.task.id, d.outcome);
            }
            Msg::Outcome(o) => {
                self.out = self.out.saturating_sub(1);
                self.finish(o.id, o.outcome);
            }
            Msg::Return(t) => {
                self.out = self.out.saturating_sub(1);
                self.untake(&t);
            }
            Msg::Rescued(done) => {
                for (j, outcome) in done {
                    let id = j.id;
                    self.insert_new(j);
                    if self.take(id).is_some() {
                        self.finish(id, outcome);
                    }
                }
            }
            Msg::Shutdown => {
                self.shutting_down = true;
                self.shutdown_at = Some(Instant::now());
                // Jobs handed to the pool that no thread has taken yet come
                // back (logged as not run), so shutdown waits only for the
                // handlers already running.
                let queued: Vec<Task> = match &self.blocking {
                    Some(pool) => pool.drain(),
                    None => Vec::new(),
                };
                for t in queued {
                    self.blocking_out = self.blocking_out.saturating_sub(1);
                    self.untake(&t);
                }
                // Take back what is still offered: own jobs become ready
                // again (logged as they were), others go home to their owner.
                while let Some(t) = self.worker.pop() {
                    if t.owner == self.sh.idx {
                        self.out = self.out.saturating_sub(1);
                        self.untake(&t);
                    } else {
                        self.all[t.owner].send(Msg::Return(t));
                    }
                }
            }
        }
    }

    /// Undoes `take` for a task that did not run.
    fn untake(&mut self, t: &Task) {
        if let Some(e) = self.jobs.get_mut(&t.id) {
            if e.state != State::Running {
                return;
            }
            e.attempts = e.attempts.saturating_sub(1);
            let attempts = e.attempts;
            let q = e.queue.clone();
            dec(&mut self.stat(&q).running);
            // Cancel the logged Start: the run never happened.
            self.log(&Rec::Retry { id: t.id, attempts, run_at_ms: 0 });
            let now = self.now_ns();
            self.schedule(t.id, 0, now);
        }
    }

    fn fire_timers(&mut self) -> bool {
        let Some(Reverse((first, _))) = self.delayed.peek() else { return false };
        let now_ms = wall_ms();
        if *first > now_ms {
            return false;
        }
        let now = self.now_ns();
        let mut fired = false;
        while let Some(Reverse((at, id))) = self.delayed.peek().copied() {
            if at > now_ms {
                break;
            }
            self.delayed.pop();
            let Some(e) = self.jobs.get(&id) else { continue };
            if e.state != State::Delayed || e.run_at_ms != at {
                continue; // stale timer
            }
            let q = e.queue.clone();
            dec(&mut self.stat(&q).delayed);
            self.schedule(id, 0, now);
            fired = true;
        }
        fired
    }

    /// Turns a ready job into a task (state Running).
    fn take(&mut self, id: u64) -> Option<Task> {
        let e = self.jobs.get_mut(&id)?;
        if e.state != State::Ready {
            return None;
        }
        e.state = State::Running;
        e.attempts += 1;
        let t = Task {
            id,
            owner: self.sh.idx,
            queue: e.queue.clone(),
            payload: e.payload.clone(),
            attempt: e.attempts,
            priority: e.priority,
            ready_ns: e.ready_ns,
            submitted_ns: e.submitted_ns,
        };
        let q = e.queue.clone();
        let s = self.stat(&q);
        dec(&mut s.ready);
        s.running += 1;
        Some(t)
    }

    fn pop_ready(&mut self) -> Option<Task> {
        while let Some(Reverse((_, _, id))) = self.ready.pop() {
            if let Some(t) = self.take(id) {
                return Some(t);
            }
        }
        None
    }

    /// Step 3: the next local task; offers the backlog to thieves first.
    fn next_local(&mut self) -> Option<Task> {
        // A job more urgent than everything offered arrived since the offer:
        // run it first (strict priority for local work).
        let heap_first = self.ready.peek().is_some_and(|Reverse((p, _, _))| *p < self.offered_best);
        if !heap_first {
            if let Some(t) = self.worker.pop() {
                if t.owner == self.sh.idx {
                    self.out = self.out.saturating_sub(1);
                }
                return Some(t);
            }
        }
        let t = self.pop_ready()?;
        self.offer();
        Some(t)
    }

    /// Moves every ready job of the private heap into the steal deque (the
    /// most urgent first) and wakes one parked active shard. The whole
    /// backlog, so a handler that blocks this shard strands none of it.
    /// Costs one deque push and pop per job: tens of ns against ~1.5 µs.
    fn offer(&mut self) -> bool {
        if self.ready.is_empty() || self.all.len() < 2 || !self.cfg.stealing || self.shutting_down {
            return false;
        }
        // Jobs still offered from before stay ahead of these; the most
        // urgent offered priority covers both.
        let earlier = if self.worker.is_empty() { u32::MAX } else { self.offered_best };
        let mut best = u32::MAX;
        let mut oldest = u64::MAX;
        let mut moved = 0u64;
        while let Some(o) = self.pop_ready() {
            best = best.min(o.priority);
            oldest = oldest.min(o.ready_ns);
            self.worker.push(o);
            moved += 1;
        }
        if moved == 0 {
            return false;
        }
        self.out += moved;
        self.offered_best = earlier.min(best);
        // The controller's age estimate: the oldest job now waiting here.
        if earlier == u32::MAX {
            self.sh.gauges.head_ready_ns.store(oldest.max(1), Ordering::Relaxed);
        }
        self.wake_one_idle();
        true
    }

    /// Hands ready jobs of blocking queues to the pool, up to its target.
    fn dispatch_blocking(&mut self) -> bool {
        // Shutting down with a log: waiting jobs stay in it for the next
        // start (only Memory mode runs them now).
        if self.shutting_down && self.cfg.durability != Durability::Memory {
            return false;
        }
        let Some(pool) = self.blocking.take() else { return false };
        let target = pool.target(&self.sh) as u64;
        let mut any = false;
        while self.blocking_out < target {
            let Some(Reverse((_, _, id))) = self.ready_blocking.pop() else { break };
            let Some(t) = self.take(id) else { continue };
            let Some((h, _)) = self.handlers.get(&t.queue).cloned() else { continue };
            self.log(&Rec::Start { id });
            self.blocking_out += 1;
            self.sh.gauges.b_head_ready_ns.store(t.ready_ns.max(1), Ordering::Relaxed);
            pool.submit(&self.sh, t, h);
            any = true;
        }
        self.blocking = Some(pool);
        any
    }

    /// Runs jobs waiting in the inbox of a shard stuck in one handler for
    /// longer than [`STALLED`](crate::engine::STALLED) (they would otherwise
    /// wait for the handler to return):
    ///
    /// 1. Enter the stuck shard's submit epoch, so its compaction cannot
    ///    release the jobs' `Put` records while they are in our hands.
    /// 2. Pop one message. Anything but new jobs that are due now, of a queue
    ///    we have a handler for, goes back to the end of its inbox.
    /// 3. Run the jobs here and send them back with their outcomes
    ///    (`Msg::Rescued`); the owner records them and logs the outcomes
    ///    when its handler returns. A crash before that reruns them, as for
    ///    any job whose outcome was not logged.
    fn rescue(&mut self) -> bool {
        if self.shutting_down || self.all.len() < 2 || !self.cfg.stealing {
            return false;
        }
        let now = self.now_ns();
        let all = self.all.clone();
        for o in all.iter() {
            let since = o.handler_since.load(Ordering::Relaxed);
            if o.idx == self.sh.idx
                || since == 0
                || now.saturating_sub(since) < crate::engine::STALLED.as_nanos() as u64
                || o.inbox.is_empty()
            {
                continue;
            }
            let _inflight = o.enter();
            let Some(msg) = o.inbox.pop() else { continue };
            let runnable = |j: &NewJob| {
                (j.run_at_ms == 0 || j.run_at_ms <= wall_ms())
                    && self.handlers.get(&j.queue).is_some_and(|h| !h.1)
            };
            let jobs = match msg {
                Msg::Jobs(jobs) if jobs.iter().all(runnable) => jobs,
                Msg::Job(j) if runnable(&j) => vec![j],
                other => {
                    o.send(other);
                    continue;
                }
            };
            let mut done = Vec::with_capacity(jobs.len());
            for j in jobs {
                let Some((h, _)) = self.handlers.get(&j.queue).cloned() else { continue };
                let job = JobRef {
                    id: JobId(j.id),
                    queue: &j.queue,
                    payload: &j.payload,
                    attempt: 1,
                    priority: j.priority,
                };
                let outcome = call_handler(h.as_ref(), &job);
                self.jobs_run += 1;
                self.jobs_stolen += 1;
                done.push((j, outcome));
            }
            o.send(Msg::Rescued(done));
            return true;
        }
        false
    }

    /// Wakes at most one parked active shard so it can steal.
    fn wake_one_idle(&self) {
        // Orders the deque push before the reads of the parkers' states (the
        // other half of the Dekker pair is the fence in `Parker::park`);
        // without it a shard could park on a deque that looks empty while
        // we read it as running.
        crate::sync::fence(Ordering::SeqCst);
        for s in self.all.iter() {
            if s.idx != self.sh.idx
                && s.active.load(Ordering::Relaxed)
                && s.parker.get().is_some_and(|p| p.is_parked())
            {
                s.notify();
                return;
            }
        }
    }

    /// Step 4: steal a batch from the busiest-looking other shard.
    fn steal(&mut self) -> Option<Task> {
        if self.shutting_down || self.all.len() < 2 || !self.cfg.stealing {
            return None;
        }
        let n = self.all.len();
        let start = (self.rng.next_u64() as usize) % n;
        for k in 0..n {
            let victim = &self.all[(start + k) % n];
            if victim.idx == self.sh.idx {
                continue;
            }
            loop {
                match victim.stealer.steal_batch_and_pop(&self.worker) {
                    Steal::Success(t) => {
                        // Our own offered job, back from another deque.
                        if t.owner == self.sh.idx {
                            self.out = self.out.saturating_sub(1);
                        }
                        // More left there: let one more worker help (at
                        // most one wake per steal).
                        if !victim.stealer.is_empty() {
                            self.wake_one_idle();
                        }
                        return Some(t);
                    }
                    Steal::Empty => break,
                    Steal::Retry => continue,
                }
            }
        }
        None
    }

    fn run_task(&mut self, t: Task) {
        let start = self.now_ns();
        let mut handler = self.handlers.get(&t.queue).cloned();
        if handler.is_none() {
            // Only a stolen task can lack a handler: the registration was
            // sent to every shard before the job existed, so it is in our
            // inbox. Take the inbox in and look again.
            while let Some(m) = self.sh.inbox.pop() {
                self.handle(m);
            }
            handler = self.handlers.get(&t.queue).cloned();
        }
        let Some((h, blocks)) = handler else {
            if t.owner != self.sh.idx {
                self.all[t.owner].send(Msg::Return(t));
            }
            return;
        };
        // Re-registered as blocking after the job was queued: to the pool.
        if blocks && t.owner == self.sh.idx && self.blocking.is_some() {
            self.log(&Rec::Start { id: t.id });
            self.blocking_out += 1;
            if let Some(pool) = &self.blocking {
                pool.submit(&self.sh, t, h);
            }
            return;
        }
        // Log the start in the owner's log (a thief appends there too), so a
        // crash during the run counts as an interruption on recovery.
        if t.owner == self.sh.idx {
            self.log(&Rec::Start { id: t.id });
        } else if let Some(wal) = &self.all[t.owner].wal {
            if let Err(e) = self.all[t.owner].append(wal, &Rec::Start { id: t.id }) {
                tracing::error!(shard = self.sh.idx, error = %e, "cannot log job start");
            }
        }
        // Stall deadline (`control.rs` step 2) and what the controller
        // reports; the queue's name is stored only when it changes.
        let mean = {
            let c = self.counts(&t.queue);
            c.run_ns.checked_div(c.runs).unwrap_or(0)
        };
        let limit = (mean.saturating_mul(u64::from(self.cfg.stall_factor)))
            .max(self.cfg.stall_min.as_nanos() as u64);
        self.ctl.check_lag(t.ready_ns, start);
        let g = &self.sh.gauges;
        g.head_ready_ns.store(t.ready_ns.max(1), Ordering::Relaxed);
        g.job.store(t.id, Ordering::Relaxed);
        g.stall_at.store(start.saturating_add(limit).max(1), Ordering::Relaxed);
        if *self.running_queue != *t.queue {
            self.running_queue = t.queue.clone();
            if let Some(m) = self.ctl.running_queue.get(self.sh.idx) {
                *m.lock().unwrap_or_else(|p| p.into_inner()) = t.queue.clone();
            }
        }
        self.sh.handler_since.store(start.max(1), Ordering::Relaxed);
        let job = JobRef {
            id: JobId(t.id),
            queue: &t.queue,
            payload: &t.payload,
            attempt: t.attempt,
            priority: t.priority,
        };
        let outcome = call_handler(h.as_ref(), &job);
        let end = self.now_ns();
        self.sh.handler_since.store(0, Ordering::Relaxed);
        self.sh.gauges.stall_at.store(0, Ordering::Relaxed);
        let run = end.saturating_sub(start);
        self.g_completions += 1;
        self.g_busy_ns += run;
        self.sh.gauges.completions.store(self.g_completions, Ordering::Relaxed);
        self.sh.gauges.busy_ns.store(self.g_busy_ns, Ordering::Relaxed);
        let c = self.counts(&t.queue);
        c.runs += 1;
        c.run_ns += run;
        let _ = self.dispatch.record(start.saturating_sub(t.ready_ns).max(1));
        let _ = self.run_time.record(run.max(1));
        self.jobs_run += 1;
        if t.owner == self.sh.idx {
            if outcome == Outcome::Done {
                let _ = self.end_to_end.record(end.saturating_sub(t.submitted_ns).max(1));
            }
            self.finish(t.id, outcome);
        } else {
            self.jobs_stolen += 1;
            if outcome == Outcome::Done {
                let _ = self.end_to_end.record(end.saturating_sub(t.submitted_ns).max(1));
            }
            self.all[t.owner].send(Msg::Outcome(TaskOutcome { id: t.id, outcome }));
        }
    }

    /// Applies a handler's outcome to a job this shard owns.
    fn finish(&mut self, id: u64, outcome: Outcome) {
        let Some(e) = self.jobs.get(&id) else { return };
        if e.state != State::Running {
            return;
        }
        let q = e.queue.clone();
        let (attempts, max) = (e.attempts, e.max_attempts);
        dec(&mut self.stat(&q).running);
        match outcome {
            Outcome::Done => {
                if self.sh.wal.is_some() {
                    self.pending_done.push(id);
                    if self.pending_done.len() >= DONE_BATCH {
                        self.flush_done();
                    }
                }
                self.remove(id);
                self.stat(&q).completed += 1;
            }
            Outcome::Retry(reason) if attempts < max => {
                self.stat(&q).failed += 1;
                let delay = retry_delay(
                    self.cfg.retry_base,
                    self.cfg.retry_cap,
                    attempts,
                    self.rng.next_u64(),
                );
                let run_at = run_at_after(delay);
                tracing::debug!(job = id, attempt = attempts, %reason, "job failed; retrying");
                self.log(&Rec::Retry { id, attempts, run_at_ms: run_at });
                let now = self.now_ns();
                self.schedule(id, run_at, now);
            }
            Outcome::Retry(reason) | Outcome::Bury(reason) => {
                self.stat(&q).failed += 1;
                tracing::info!(job = id, attempt = attempts, %reason, "job buried");
                self.log(&Rec::Bury { id, attempts, reason });
                self.set_state(id, State::Buried);
                self.stat(&q).buried += 1;
            }
        }
    }

    /// Logs the pending `Done`s as one record.
    fn flush_done(&mut self) {
        match self.pending_done.len() {
            0 => {}
            1 => {
                let id = self.pending_done[0];
                self.log(&Rec::Done { id });
            }
            _ => {
                let ids = std::mem::take(&mut self.pending_done);
                self.log(&Rec::Dones { ids });
            }
        }
        self.pending_done.clear();
    }

    fn remove(&mut self, id: u64) {
        if let Some(e) = self.jobs.remove(&id) {
            self.live_log_bytes = self.live_log_bytes.saturating_sub(record_size(&e));
            if let Some(k) = e.unique_key {
                self.unique.remove(&(e.queue.clone(), k));
            }
            self.by_lsn.remove(&e.lsn);
            self.counters.release(1, e.payload.len() as u64);
        }
    }

    /// Keeps the log bounded (`docs/architecture.md`, Compaction):
    ///
    /// 1. When the log is larger than `compact_after_segments` segments and
    ///    more than twice the live jobs' records, pick the cut `C`: the end of
    ///    the newest segment the log has finished, and flip the submit epoch.
    /// 2. Wait until no producer of the old epoch is between appending a
    ///    `Put` and handing the job to this shard (`ShardShared::enter`),
    ///    then drain the inbox: every job logged below `C` is now known here.
    /// 3. Rewrite the live jobs logged below `C` at the tail (1024 per call).
    /// 4. Log an `IdMark` after them and ask for a sync without waiting.
    /// 5. Once the mark is durable (so are the rewrites), release below `C`.
    fn compact(&mut self) {
        let Some(wal) = self.sh.wal.clone() else { return };
        if let Some((below, mark)) = self.pending_release {
            if wal.stats().durable_lsn > mark {
                if wal.release_below(below).unwrap_or(0) > 0 {
                    // Appenders cache the segment they last wrote; drop idle
                    // ones so a released segment's file space is freed now.
                    while self.sh.appenders.pop().is_some() {}
                    self.appender = Some(wal.appender());
                }
                self.pending_release = None;
            } else {
                wal.request_sync();
            }
            return;
        }
        let (cut, epoch) = match self.pending_cut {
            Some(p) => p,
            None => {
                let segs = wal.segments();
                let log_bytes: u64 = segs.iter().map(|s| s.1 - s.0).sum();
                if segs.len() <= self.cfg.compact_after_segments
                    || log_bytes <= 2 * self.live_log_bytes
                {
                    return;
                }
                let published = wal.stats().published_lsn;
                let Some(cut) = segs.iter().map(|s| s.1).filter(|&e| e <= published).max() else {
                    return;
                };
                let old = self.sh.flip_epoch();
                self.pending_cut = Some((cut, old));
                (cut, old)
            }
        };
        if !self.sh.epoch_quiet(epoch) {
            return;
        }
        while let Some(m) = self.sh.inbox.pop() {
            self.handle(m);
        }
        let below: Vec<(u64, u64)> =
            self.by_lsn.range(..cut).take(1024).map(|(&l, &i)| (l, i)).collect();
        for (lsn, id) in below {
            let Some(e) = self.jobs.get(&id) else { continue };
            let rec = self.put_record(id, e);
            let Some(new) = self.log(&rec) else { return };
            self.by_lsn.remove(&lsn);
            self.by_lsn.insert(new, id);
            if let Some(e) = self.jobs.get_mut(&id) {
                e.lsn = new;
            }
        }
        if self.by_lsn.range(..cut).next().is_some() {
            return;
        }
        let mark = Rec::IdMark { next_id: self.counters.next_id.load(Ordering::Relaxed) };
        if let Some(lsn) = self.log(&mark) {
            self.pending_cut = None;
            self.pending_release = Some((cut, lsn));
            wal.request_sync();
        }
    }

    fn publish(&mut self) {
        let snap = Snapshot {
            queues: self.queues.iter().map(|(k, v)| (k.to_string(), v.0.clone())).collect(),
            counts: self.queues.iter().map(|(k, v)| (k.to_string(), v.1)).collect(),
            shard: crate::stats::ShardStats {
                pinned_core: self.pinned_core,
                jobs_run: self.jobs_run,
                jobs_stolen: self.jobs_stolen,
                jobs_owned: self.jobs.len() as u64,
            },
            dispatch: self.dispatch.clone(),
            run_time: self.run_time.clone(),
            end_to_end: self.end_to_end.clone(),
        };
        let mut g = self.sh.snapshot.lock().unwrap_or_else(|p| p.into_inner());
        g.0 = self.served;
        g.1 = snap;
        drop(g);
        self.sh.snapshot_cv.notify_all();
        self.published_at = Instant::now();
    }

    /// The re-check before parking: own messages, a stats request, or jobs
    /// another shard offers for stealing.
    /// `was_active`: whether the shard parks as an active worker; a change
    /// of its active flag is work too. An active shard also wakes for jobs
    /// offered elsewhere, if a search slot is free.
    fn has_work(
        sh: &ShardShared,
        all: &[Arc<ShardShared>],
        ctl: &control::Pool,
        stealing: bool,
        served: u64,
        was_active: bool,
    ) -> bool {
        !sh.inbox.is_empty()
            || sh.snapshot_req.load(Ordering::Acquire) > served
            || sh.active.load(Ordering::SeqCst) != was_active
            || (stealing
                && was_active
                && 2 * ctl.search.searching.load(Ordering::SeqCst)
                    < ctl.search.active.load(Ordering::SeqCst)
                && all.iter().any(|o| o.idx != sh.idx && !o.stealer.is_empty()))
    }

    fn park_timeout(&self) -> Duration {
        match self.delayed.peek() {
            Some(Reverse((at, _))) => {
                Duration::from_millis(at.saturating_sub(wall_ms())).min(MAX_PARK)
            }
            None => MAX_PARK,
        }
    }

    /// Whether every job this shard can run before exiting has run: in
    /// Memory mode ready work is drained (it would be lost), otherwise it
    /// stays in the log for the next start.
    fn may_exit(&self) -> bool {
        // Jobs stolen from this shard are still running elsewhere: their
        // outcomes must be logged here before the log closes. A safety net
        // bounds the wait (a lost outcome only means the job runs again).
        let waited_enough = self.shutdown_at.is_some_and(|t| t.elapsed() >= SHUTDOWN_WAIT_MAX);
        if (self.out > 0 || self.blocking_out > 0) && waited_enough {
            tracing::warn!(
                shard = self.sh.idx,
                outstanding = self.out,
                "shutting down with stolen jobs unreported; they will run again after restart"
            );
        }
        (self.out == 0 && self.blocking_out == 0 || waited_enough)
            && (self.cfg.durability != Durability::Memory
                || (self.ready.is_empty()
                    && self.worker.is_empty()
                    && self.ready_blocking.is_empty()))
    }

    fn start_searching(&mut self) -> bool {
        if self.cfg.stealing && self.all.len() > 1 && !self.shutting_down {
            self.searching = self.ctl.search.try_search();
        }
        self.searching
    }

    fn stop_searching(&mut self) {
        if self.searching {
            self.searching = false;
            self.ctl.search.end_search();
        }
    }

    /// The thread body.
    pub(crate) fn run(mut self, core: Option<usize>) {
        if let Some(c) = core {
            if crate::pin::pin_current(c) {
                self.pinned_core = Some(c);
            } else {
                tracing::warn!(
                    shard = self.sh.idx,
                    core = c,
                    "could not pin shard thread; running unpinned"
                );
            }
        }
        let sh = self.sh.clone();
        let mut idle_since: Option<Instant> = None;
        let mut since_compact = 0u32;
        loop {
            let mut progress = false;
            for _ in 0..INBOX_BATCH {
                match sh.inbox.pop() {
                    Some(m) => {
                        self.handle(m);
                        progress = true;
                    }
                    None => break,
                }
            }
            progress |= self.fire_timers();
            progress |= self.dispatch_blocking();
            if self.shutting_down && self.may_exit() {
                break;
            }
            // Outside the active set (`control.rs` step 3) a shard runs no
            // handler: it offers its ready jobs to the active ones. Without
            // stealing, or alone, or shutting down, it is always active.
            let flag = sh.active.load(Ordering::SeqCst);
            let active = flag || self.shutting_down || !self.cfg.stealing || self.all.len() < 2;
            if !active {
                self.stop_searching();
                progress |= self.offer();
            } else if let Some(t) = self.next_local() {
                self.stop_searching();
                self.run_task(t);
                progress = true;
            } else if self.searching || self.start_searching() {
                if let Some(t) = self.steal() {
                    self.stop_searching();
                    self.run_task(t);
                    progress = true;
                } else if self.rescue() {
                    self.stop_searching();
                    progress = true;
                }
            }
            self.sh
                .gauges
                .ready
                .store((self.ready.len() + self.worker.len()) as u64, Ordering::Relaxed);
            self.sh.gauges.b_ready.store(self.ready_blocking.len() as u64, Ordering::Relaxed);
            since_compact += 1;
            if since_compact >= 256 || (!progress && since_compact > 64) {
                since_compact = 0;
                self.compact();
            }
            let req = sh.snapshot_req.load(Ordering::Acquire);
            if req > self.served {
                // Everything submitted before the request is in the inbox:
                // take it in, so the snapshot includes it.
                while let Some(m) = sh.inbox.pop() {
                    self.handle(m);
                }
                self.served = req;
                self.publish();
            } else if (since_compact % 64 == 0 || !progress)
                && self.published_at.elapsed() >= stats::PUBLISH_EVERY
            {
                self.publish();
            }
            if progress {
                idle_since = None;
                continue;
            }
            // Idle: an active worker spins for `idle_spin` first.
            let since = *idle_since.get_or_insert_with(Instant::now);
            if active
                && (self.cfg.idle_spin == Duration::MAX || since.elapsed() < self.cfg.idle_spin)
            {
                std::hint::spin_loop();
                continue;
            }
            idle_since = None;
            self.flush_done();
            // 6: a searcher giving up its slot while work is on offer wakes
            // one parked active worker to take over the search.
            if self.searching {
                self.stop_searching();
                if self.all.iter().any(|o| o.idx != sh.idx && !o.stealer.is_empty()) {
                    self.wake_one_idle();
                }
            }
            let timeout = self.park_timeout();
            let stealing = !self.shutting_down && self.cfg.stealing;
            // The flag as this iteration read it: an activation since then
            // counts as work (the controller's notify may have found us
            // running, so the re-check must see it).
            let was_active = flag;
            // Blocking jobs wait and the controller raised the pool's target
            // since: hand them over rather than sleep.
            let blocking_waiting = !self.ready_blocking.is_empty() && self.blocking.is_some();
            let blocking_out = self.blocking_out;
            if let Some(p) = sh.parker.get() {
                let served = self.served;
                let (all, ctl) = (&self.all, &self.ctl);
                p.park(timeout, || {
                    Self::has_work(&sh, all, ctl, stealing, served, was_active)
                        || (blocking_waiting
                            && (sh.pool.target.load(Ordering::SeqCst).max(1) as u64) > blocking_out)
                });
            }
        }
        self.stop_searching();
        self.flush_done();
        sh.exited.store(true, Ordering::Release);
        self.served = sh.snapshot_req.load(Ordering::Acquire);
        self.publish();
        if let Some(wal) = &sh.wal {
            if let Err(e) = wal.shutdown() {
                tracing::error!(shard = sh.idx, error = %e, "closing the shard log failed");
                *self.cfg.close_errors.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some((sh.idx, e.to_string()));
            }
        }
    }
}
