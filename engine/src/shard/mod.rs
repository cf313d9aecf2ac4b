//! A shard: one thread that owns a set of jobs, their queues, timers and log.
//!
//! The loop, in order, every iteration:
//!
//! 1. **Inbox.** Drain up to [`INBOX_BATCH`] messages from the lock-free
//!    inbox: new jobs (already logged by their producer; ready batches of
//!    one queue and priority enter the lane, `lane.rs`, the others the
//!    table), unique-key jobs (checked and logged here), handler
//!    registrations, outcomes of jobs other shards stole from us or our
//!    blocking pool ran, stats requests, shutdown.
//! 2. **Timers.** Move delayed jobs whose time has come to ready.
//! 3. **Blocking pool.** Hand ready jobs of blocking queues to the shard's
//!    pool, up to the controller's target (`blocking.rs`).
//! 4. **Run** (active shards only, `control.rs`). Take the most urgent
//!    ready job (priority, then id) of the lane's front and the table, and
//!    run its handler on this thread. Before running one from the table,
//!    if more jobs wait behind it there, offer all of them to the shard's
//!    work-stealing deque, so a long handler strands none (`steal.rs`;
//!    the lane is open to thieves itself). A shard outside the active set
//!    only moves its lane into the table, offers its ready jobs and wakes
//!    an active one (`share.rs`).
//! 5. **Steal.** With nothing of its own to run, and a search slot (at most
//!    half the active workers search at once), take a batch from another
//!    shard's deque or lane, run them, and send each outcome back to the
//!    owner, which logs it: a job's records always stay in its owner's log.
//! 6. **Idle.** An active shard spins for `idle_spin` (default 30 µs), then
//!    parks until a message, a timer, or stealable work with a free search
//!    slot; an inactive one parks at once (`park.rs`).
//!
//! Compaction (`compact.rs`) and the stats snapshot (`publish.rs`) run
//! between iterations.

mod compact;
pub(crate) mod ctl;
mod publish;
mod run;
mod share;

use crate::append::{append_frames, submit_error, Publish};
use crate::blocking::{self, BlockingDone, PoolGauges};
use crate::builder::Durability;
use crate::control::{self, Gauges};
use crate::engine::{Config, Counters, Handler};
use crate::job::{JobId, JobRef, Outcome};
use crate::stats::Hist;
use crate::stats::{self, QueueCounts, Snapshot};
use crate::steal::{Task, TaskOutcome};
use crossbeam_deque::{Stealer, Worker};
use crossbeam_queue::{ArrayQueue, SegQueue};
use spindle_core::compact::Pass;
use spindle_core::record::PutRec;
use spindle_core::{headroom, Totals};
use spindle_core::{By, Put, PutSpec, QueueId, Records, State as JobState, Table, Time};
use spindle_park::Parker;
use spindle_wal::{Appender, Wal, WalError};
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Messages handled per loop iteration before running a job, so a flood of
/// submissions cannot starve dispatch.
const INBOX_BATCH: usize = 256;
/// Longest a shutting-down shard waits for the outcomes of its jobs that
/// other shards stole and still run (beyond it they rerun after restart).
const SHUTDOWN_WAIT_MAX: Duration = Duration::from_secs(30);
/// Longest park without a timer: a safety net, not a correctness need.
const MAX_PARK: Duration = Duration::from_millis(100);
/// Live jobs rewritten per compaction step.
const COMPACT_BATCH: usize = 1024;
/// Pending record bytes past which a shard writes them out between runs
/// (otherwise before parking, offering, or running from the table).
const FLUSH_BYTES: usize = 16 << 10;
/// Lane jobs run back to back after one, while nothing else asks for the
/// loop (`Shard::lane_burst`).
const LANE_BURST: u32 = 32;
/// A shard fed by a producer on its own core spins only while jobs arrive
/// this many times closer together than `idle_spin` (a saturating
/// producer); otherwise it parks, and the producer's next wait lets the
/// wake-up run on that core (`docs/controller.md`, "Which shards").
const LOCAL_SPIN_DIV: u64 = 8;
/// Lane jobs taken at once (one lock) in a burst while runs are short.
const LANE_TAKE: usize = 8;
/// A run at most this long is short: the next burst takes [`LANE_TAKE`]
/// jobs at once. Longer, it takes one at a time, so jobs wait in the lane
/// (where thieves can take them) rather than behind a long handler.
const SHORT_RUN_NS: u64 = 5_000;
/// Completed jobs whose engine-wide counts a shard gives back at once.
const RELEASE_BATCH: u64 = 64;
/// How long a compaction pass waits after a full disk refused a batch.
const COMPACT_RETRY: Duration = Duration::from_millis(50);
/// The shard itself, as the table's holder of every job it runs, offers,
/// lends to its blocking pool or sees stolen: the outcome always comes back
/// to it.
const HOLDER: u32 = 0;

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

/// A job handed to a shard by a producer.
#[derive(Debug)]
pub(crate) struct NewJob {
    pub(crate) id: u64,
    pub(crate) queue: crate::name::Name,
    pub(crate) priority: u32,
    pub(crate) payload: Vec<u8>,
    /// When it was submitted (the table's time).
    pub(crate) created: Time,
    /// When it may run, if delayed.
    pub(crate) due: Option<Time>,
    pub(crate) max_attempts: u32,
    pub(crate) unique_key: Option<Box<str>>,
    /// Never handed out after this table time (`spindle_core`'s
    /// `expiry.rs`); 0: no deadline (8 bytes, not an `Option`'s 16: a
    /// `NewJob` is moved through the lane per job).
    pub(crate) deadline: u64,
    /// Its queue lives on one shard (limits or schedules): it never enters
    /// the lane nor leaves its shard's table to be rescued.
    pub(crate) homed: bool,
}

impl NewJob {
    /// Its deadline, if it has one.
    pub(crate) fn deadline_at(&self) -> Option<Time> {
        (self.deadline != 0).then_some(Time(self.deadline))
    }

    /// What a handler sees of this job on its first attempt.
    pub(crate) fn job_ref<'a>(&'a self, cancels: Option<&'a crate::cancel::Cancels>) -> JobRef<'a> {
        JobRef {
            id: JobId(self.id),
            queue: &self.queue,
            payload: &self.payload,
            attempt: 1,
            priority: self.priority,
            cancels,
        }
    }

    /// The `Put` record of this job as submitted.
    pub(crate) fn put_rec(&self) -> PutRec<'_> {
        let delay = self.due.map_or(Duration::ZERO, |d| d.since(self.created));
        PutRec {
            id: self.id,
            queue: &self.queue,
            pri: self.priority,
            ttr_s: 0,
            delay_s: u32::try_from(delay.as_secs()).unwrap_or(u32::MAX),
            max_attempts: self.max_attempts,
            state: if self.due.is_some() { JobState::Delayed } else { JobState::Ready },
            at: self.due.map_or(0, |d| d.0),
            created: self.created,
            counts: Default::default(),
            unique: self.unique_key.as_deref(),
            error: None,
            deadline: self.deadline_at(),
            payload: &self.payload,
        }
    }
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
    /// stuck in a handler (false), or from its lane (true), ran, and hands
    /// back with their outcomes.
    Rescued(Vec<(NewJob, Outcome)>, bool),
    /// A job this shard's blocking pool ran.
    Blocking(BlockingDone),
    /// Limits, schedules, cancellation (`ctl.rs`).
    Ctl(ctl::CtlMsg),
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
    /// The engine is shutting down: set before submits start failing, so
    /// a handler that waits for that (and the outcome it sends) comes
    /// after it. The shard hands no more waiting jobs to its blocking
    /// pool from then on, though its `Msg::Shutdown` may still be on
    /// the way.
    pub(crate) stopping: AtomicBool,
    /// Submit epoch (compaction step 1-2): producers count themselves in
    /// `inflight[epoch % 2]` from before their append until their job is in
    /// the inbox.
    pub(crate) epoch: AtomicUsize,
    pub(crate) inflight: [AtomicUsize; 2],
    /// Engine-clock nanoseconds at which the running handler started (0:
    /// none). Producers route around a shard stuck in one handler.
    pub(crate) handler_since: AtomicU64,
    /// Spinning idle, holding a spinner slot: a job sent here starts
    /// without a wake-up (producers prefer such a shard).
    pub(crate) spinning: AtomicBool,
    /// The core this shard's thread is pinned to (`usize::MAX`: none).
    pub(crate) core: AtomicUsize,
    /// A producer on this shard's core submitted a single job since the
    /// controller's last tick (`control.rs` step 3 reads and clears it).
    pub(crate) demand: AtomicBool,
    /// A producer on this shard's core handed it a single job since it
    /// last went idle: it parks rather than spins when idle (a spinner
    /// would only take turns with that producer on one core; a parked
    /// shard's wake-up runs as soon as the producer waits).
    pub(crate) local_feed: AtomicBool,
    /// New jobs that run without entering the table (`lane.rs`).
    pub(crate) lane: crate::lane::Lane,
    /// The job this shard's thread runs now, where a crash cannot lose it
    /// (durable modes; `lane.rs` step 3).
    pub(crate) marker: Option<spindle_wal::RunMarker>,
    /// In the controller's active set: may run handlers (`control.rs`).
    pub(crate) active: AtomicBool,
    /// Counters the controller samples.
    pub(crate) gauges: Gauges,
    /// The blocking pool's thread counts and target.
    pub(crate) pool: PoolGauges,
    /// The head-room (`spindle_core::headroom`) a put must leave in this
    /// shard's log for the jobs in its table, and the room a start or an
    /// outcome must leave, as of the shard's last log write.
    pub(crate) put_keep: AtomicU64,
    pub(crate) outcome_keep: AtomicU64,
    /// Jobs being cancelled, shared by every shard (`cancel.rs`).
    pub(crate) cancels: Arc<crate::cancel::Cancels>,
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

thread_local! {
    /// Each producer thread's reusable record buffer.
    static RECORDS: std::cell::RefCell<Records> = std::cell::RefCell::new(Records::new());
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

    /// Appends records (table format) through a pooled appender, as frames
    /// (`Records::frames`), each only if the log can still hold `keep`
    /// bytes past the records (0: no condition); returns the last frame's
    /// LSN.
    pub(crate) fn append(
        &self,
        wal: &Wal,
        recs: &Records,
        keep: u64,
        publish: Publish,
    ) -> Result<u64, crate::SubmitError> {
        let mut app = self.appenders.pop().unwrap_or_else(|| wal.appender());
        let res = append_frames(&mut app, wal, recs, keep, publish);
        let _ = self.appenders.push(app);
        res.map_err(submit_error)
    }

    /// The room a producer's `Put`s of `jobs` must leave in the log: the
    /// shard's, and the completion and rewrite of these jobs.
    fn put_headroom(&self, jobs: &[NewJob]) -> u64 {
        let own = Totals {
            jobs: jobs.len() as u64,
            bytes: jobs.iter().map(|j| j.payload.len() as u64).sum(),
            ..Totals::default()
        };
        let own = headroom::for_puts(&own, 0).saturating_sub(headroom::COMPACTION_SLACK);
        self.put_keep.load(Ordering::Relaxed).saturating_add(own)
    }

    /// Logs the `Put`s of `jobs` from the calling (producer) thread, if
    /// the log keeps its head-room after them (else `SubmitError::DiskFull`).
    /// With [`Publish::Defer`] the caller must wait for the returned LSN to
    /// be durable before acknowledging the jobs.
    pub(crate) fn log_puts(
        &self,
        wal: &Wal,
        jobs: &[NewJob],
        publish: Publish,
    ) -> Result<u64, crate::SubmitError> {
        RECORDS.with(|cell| {
            let mut fresh = Records::new();
            let mut held = cell.try_borrow_mut();
            let recs = match held.as_deref_mut() {
                Ok(r) => r,
                Err(_) => &mut fresh,
            };
            recs.clear();
            for j in jobs {
                recs.push_put(&j.put_rec());
            }
            self.append(wal, recs, self.put_headroom(jobs), publish)
        })
    }

    /// Logs that job `id` (owned by this shard) starts a run on another
    /// thread: a crash during the run then counts as an interruption.
    fn log_start(&self, id: u64) {
        let Some(wal) = &self.wal else { return };
        let mut recs = Records::new();
        recs.push_reserve(id);
        let keep = self.outcome_keep.load(Ordering::Relaxed);
        if let Err(e) = self.append(wal, &recs, keep, Publish::Wait) {
            tracing::error!(shard = self.idx, error = %e, "cannot log job start");
        }
    }
}

/// What a shard keeps per queue of its table.
struct QState {
    /// This shard's own copy of the name (no reference count shared with
    /// other threads).
    name: Arc<str>,
    handler: Option<Arc<dyn Handler>>,
    /// The handler blocks: its jobs run on the blocking pool.
    blocking: bool,
    completed: u64,
    failed: u64,
    counts: QueueCounts,
}

impl QState {
    fn new(name: Arc<str>) -> QState {
        QState {
            name,
            handler: None,
            blocking: false,
            completed: 0,
            failed: 0,
            counts: QueueCounts::default(),
        }
    }
}

/// Jobs offered to the lane: a single submit's job (no `Vec`) or a batch.
enum Admit {
    One(NewJob),
    Many(Vec<NewJob>),
}

/// The next job a shard runs.
enum Next {
    /// From the steal deque or just taken from the table.
    Task(Task),
    /// From the lane, with its queue.
    Lane(NewJob, QueueId),
}

/// The shard thread's own state.
pub(crate) struct Shard {
    sh: Arc<ShardShared>,
    all: Arc<[Arc<ShardShared>]>,
    cfg: Arc<Config>,
    counters: Arc<Counters>,
    /// The job table: every job this shard owns.
    table: Table,
    /// This shard's records, written to its log before a handler runs,
    /// before parking and at shutdown (disabled in Memory mode).
    recs: Records,
    /// Queue name -> id in the table.
    qids: HashMap<Arc<str>, QueueId>,
    /// Per queue, indexed by its id in the table: name, handler, counters.
    qs: Vec<QState>,
    /// Queues with a core (non-blocking) handler, and with a blocking one.
    core_qs: Vec<QueueId>,
    blocking_qs: Vec<QueueId>,
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
    worker: Worker<Task>,
    appender: Option<Appender>,
    dispatch: Hist,
    run_time: Hist,
    end_to_end: Hist,
    jobs_run: u64,
    jobs_stolen: u64,
    pinned_core: Option<usize>,
    published_at: Instant,
    shutting_down: bool,
    /// Compaction: (cut, epoch to wait for) before the pass, then the pass.
    pending_cut: Option<(u64, usize)>,
    pass: Option<Pass>,
    /// A full disk refused the pass's last batch: not again before this.
    compact_retry_at: Option<Instant>,
    /// Log bytes the last compaction pass has written: outcomes leave
    /// room for the rest of it. Reset when the next pass begins.
    pass_written: u64,
    shutdown_at: Option<Instant>,
    /// The last snapshot request served.
    served: u64,
    /// Own tasks offered in the deque and not yet back (run here, outcome
    /// received from a thief, or returned).
    out: u64,
    /// The end of the last handler run, while no message came in since: the
    /// time the next iteration starts at.
    clock_hint: Option<Time>,
    /// How long the last handler run took (ns).
    last_run_ns: u64,
    /// Inside a lane burst: where readings of the time-stamp counter start
    /// from (`tsc.rs`); `None` reads the real clock.
    anchor: Option<crate::tsc::Anchor>,
    /// Lane jobs taken at once and not yet run (`lane_burst`); empty
    /// between bursts.
    hand: std::collections::VecDeque<NewJob>,
    /// When messages last came in, and the moving average (weight 1/8) of
    /// the gaps between such arrivals, in engine-clock nanoseconds.
    last_arrival_ns: u64,
    arrival_gap_ns: u64,
    /// `ShardShared::local_feed` as read when this idle period began.
    local_feed: bool,
    /// Completed jobs and their bytes not yet given back to `counters`.
    released: (u64, u64),
    /// A release waiting for its mark to be durable: (below, mark lsn).
    pending_release: Option<(u64, u64)>,
    /// Priority of the most urgent job in the latest offer to thieves.
    offered_best: u32,
    /// Holds one of the pool's search slots (`control::Pool::try_search`).
    searching: bool,
    /// Holds one of the pool's spinner slots (`control::Pool::try_spin`).
    spin_slot: bool,
    /// Idle spin iterations (every 16th yields the core).
    spins: u32,
}

impl Shard {
    pub(crate) fn new(
        sh: Arc<ShardShared>,
        all: Arc<[Arc<ShardShared>]>,
        cfg: Arc<Config>,
        counters: Arc<Counters>,
        worker: Worker<Task>,
        table: Table,
        ctl: Arc<control::Pool>,
    ) -> Shard {
        let appender = sh.wal.as_ref().map(|w| w.appender());
        let recs = if sh.wal.is_some() { Records::new() } else { Records::disabled() };
        let mut shard = Shard {
            sh,
            all,
            cfg,
            counters,
            table,
            recs,
            qids: HashMap::new(),
            qs: Vec::new(),
            core_qs: Vec::new(),
            blocking_qs: Vec::new(),
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
            worker,
            appender,
            dispatch: stats::histogram(),
            run_time: stats::histogram(),
            end_to_end: stats::histogram(),
            jobs_run: 0,
            jobs_stolen: 0,
            pinned_core: None,
            published_at: Instant::now(),
            shutting_down: false,
            pending_cut: None,
            pass: None,
            compact_retry_at: None,
            pass_written: 0,
            shutdown_at: None,
            served: 0,
            out: 0,
            clock_hint: None,
            last_run_ns: u64::MAX,
            anchor: None,
            hand: std::collections::VecDeque::new(),
            last_arrival_ns: 0,
            arrival_gap_ns: 0,
            local_feed: false,
            released: (0, 0),
            pending_release: None,
            offered_best: u32::MAX,
            searching: false,
            spin_slot: false,
            spins: 0,
        };
        shard.publish_headroom();
        // Queues the log brought back.
        let names: Vec<(QueueId, Arc<str>)> =
            shard.table.queues().map(|(q, n)| (q, Arc::from(n))).collect();
        for (q, n) in names {
            shard.name_queue(q, n);
        }
        shard
    }

    fn now_ns(&self) -> u64 {
        self.cfg.epoch.elapsed().as_nanos() as u64
    }

    /// The table's time now.
    fn now_t(&self) -> Time {
        self.cfg.clock.now()
    }

    /// Engine-clock nanoseconds of a table time.
    fn ns_of(&self, t: Time) -> u64 {
        t.0.saturating_sub(self.cfg.clock_epoch.0)
    }

    fn name_queue(&mut self, q: QueueId, name: Arc<str>) {
        let i = q.0 as usize;
        while self.qs.len() <= i {
            self.qs.push(QState::new(Arc::from("")));
        }
        let name: Arc<str> = Arc::from(&*name);
        self.qs[i].name = name.clone();
        self.qids.insert(name, q);
    }

    /// The state of queue `q` (a table id this shard named).
    fn q(&mut self, q: QueueId) -> &mut QState {
        let i = q.0 as usize;
        while self.qs.len() <= i {
            self.qs.push(QState::new(Arc::from("")));
        }
        &mut self.qs[i]
    }

    /// The handler of the queue named `name`, and whether it blocks.
    fn handler_of(&self, name: &str) -> Option<(Arc<dyn Handler>, bool)> {
        let q = self.qids.get(name)?;
        let x = self.qs.get(q.0 as usize)?;
        Some((x.handler.clone()?, x.blocking))
    }

    /// The table's id of queue `name` (made if new).
    fn qid(&mut self, name: &str) -> Option<QueueId> {
        if let Some(&q) = self.qids.get(name) {
            return Some(q);
        }
        let q = self.table.queue(name).ok()?;
        self.name_queue(q, Arc::from(name));
        Some(q)
    }

    /// Counts a job becoming ready in the table for the controller's
    /// arrival gauges (the queue's own count is the table's `readied`,
    /// added when the shard publishes: `publish.rs`).
    fn arrived(&mut self, q: QueueId, now_ns: u64) {
        let blocking = {
            let x = self.q(q);
            x.handler.is_some() && x.blocking
        };
        if blocking {
            self.gb_arrivals += 1;
            self.sh.gauges.b_arrivals.store(self.gb_arrivals, Ordering::Relaxed);
        } else {
            if self.worker.is_empty() && self.table.ready_in(q) == 1 && self.core_ready() == 1 {
                self.sh.gauges.head_ready_ns.store(now_ns.max(1), Ordering::Relaxed);
            }
            self.g_arrivals += 1;
            self.sh.gauges.arrivals.store(self.g_arrivals, Ordering::Relaxed);
        }
    }

    /// A job counted at its admission to the lane went into the table,
    /// whose `readied` counts it from now on.
    fn lane_left(&mut self, q: QueueId) {
        let c = &mut self.q(q).counts.arrived;
        *c = c.saturating_sub(1);
    }

    /// Ready jobs of queues with a core handler.
    fn core_ready(&self) -> u64 {
        self.core_qs.iter().map(|&q| self.table.ready_in(q)).sum()
    }

    fn blocking_ready(&self) -> u64 {
        self.blocking_qs.iter().map(|&q| self.table.ready_in(q)).sum()
    }

    /// Puts a job into the table. `logged`: its `Put` is in the log already
    /// (its producer wrote it); otherwise the shard logs it.
    fn insert(&mut self, j: NewJob, logged: bool) -> Option<Put> {
        let q = self.qid(&j.queue)?;
        let now = self.now_ns();
        self.insert_in(j, q, logged, now, true)
    }

    /// [`Shard::insert`] into queue `q` (the job's), `now_ns` being now;
    /// `arrival`: count it as an arrival (not when it came from the lane,
    /// which counted it).
    fn insert_in(
        &mut self,
        j: NewJob,
        q: QueueId,
        logged: bool,
        now_ns: u64,
        arrival: bool,
    ) -> Option<Put> {
        let spec = PutSpec {
            pri: j.priority,
            delay: j.due.map_or(Duration::ZERO, |d| d.since(j.created)),
            ttr_s: 0,
            max_attempts: j.max_attempts,
            unique: j.unique_key.as_deref(),
            deadline: j.deadline_at(),
        };
        let mut off = Records::disabled();
        let out = if logged { &mut off } else { &mut self.recs };
        let put = match self.table.put_owned(j.created, j.id, q, &spec, j.payload, out) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(shard = self.sh.idx, job = j.id, error = %e, "job not taken");
                return None;
            }
        };
        if let Put::Created(_) = put {
            if j.due.is_none() && arrival {
                self.arrived(q, now_ns);
            } else if !arrival {
                // A lane job, counted at its admission: the table's
                // `readied` counts it now.
                self.lane_left(q);
            }
        }
        Some(put)
    }

    /// The queue of `jobs` if they may enter the lane (`lane.rs` step 1):
    /// ready, without unique keys, one queue with a core handler here, one
    /// priority.
    fn lane_queue(&mut self, jobs: &[NewJob]) -> Option<QueueId> {
        let first = jobs.first()?;
        if !self.cfg.lane {
            return None;
        }
        let plain = |j: &NewJob| {
            j.due.is_none()
                && j.unique_key.is_none()
                && j.deadline == 0
                && !j.homed
                && j.priority == first.priority
                && j.queue == first.queue
        };
        if !jobs.iter().all(plain) {
            return None;
        }
        let q = self.qid(&first.queue)?;
        if self.table.is_limited(q) {
            return None;
        }
        let x = self.qs.get(q.0 as usize)?;
        (x.handler.is_some() && !x.blocking).then_some(q)
    }

    /// Puts `jobs` (of queue `q`) into the lane, counting their arrival;
    /// gives them back if the lane's order does not allow it.
    fn admit(&mut self, q: QueueId, jobs: Admit) -> Result<(), Admit> {
        let name = self.q(q).name.clone();
        let was_empty = self.sh.lane.len() == 0;
        let n = match jobs {
            Admit::One(j) => {
                self.sh.lane.admit_one(q, &name, j).map_err(Admit::One)?;
                1
            }
            Admit::Many(jobs) => {
                let n = jobs.len() as u64;
                self.sh.lane.admit(q, &name, jobs).map_err(Admit::Many)?;
                n
            }
        };
        self.q(q).counts.arrived += n;
        self.g_arrivals += n;
        self.sh.gauges.arrivals.store(self.g_arrivals, Ordering::Relaxed);
        let table_ready = self.core_ready() + self.worker.len() as u64;
        if was_empty && table_ready == 0 {
            let ns = self.now_ns();
            self.sh.gauges.head_ready_ns.store(ns.max(1), Ordering::Relaxed);
        }
        // Now, not after the next run: that run may block for long, and the
        // controller must see the jobs waiting behind it.
        let ready = table_ready + self.sh.lane.len() as u64;
        self.sh.gauges.ready.store(ready, Ordering::Relaxed);
        // A backlog: let an idle worker take half of it.
        if self.sh.lane.len() >= 2 && self.cfg.stealing && self.all.len() > 1 {
            self.wake_one_idle();
        }
        Ok(())
    }

    /// Moves the lane into the table, in order (`lane.rs` step 5).
    fn spill_lane(&mut self) {
        if let Some((q, jobs)) = self.sh.lane.drain() {
            let now = self.now_ns();
            for j in jobs {
                self.insert_in(j, q, true, now, false);
            }
        }
    }

    /// Writes this shard's pending records to its log; the last LSN.
    /// Records of outcomes and starts leave only the room compaction needs
    /// (`spindle_core::headroom`): on a full disk they use the head-room
    /// producers leave.
    fn flush(&mut self) -> Option<u64> {
        let keep = headroom::for_completions(&self.live(), self.pass_written);
        match self.flush_keeping(keep) {
            Ok(lsn) => lsn,
            Err(e) => {
                // The table changed in memory regardless; if the log is
                // failed the process must restart, and recovery replays what
                // was durable (at-least-once: the job may run again).
                tracing::error!(shard = self.sh.idx, error = %e, "cannot log job state change");
                None
            }
        }
    }

    /// Tells producers and thieves the head-room this shard's table needs.
    fn publish_headroom(&self) {
        let Some(wal) = &self.sh.wal else { return };
        let t = self.live();
        let put = headroom::for_puts(&t, wal.segment_size());
        self.sh.put_keep.store(put, Ordering::Relaxed);
        let outcome = headroom::for_completions(&t, self.pass_written);
        self.sh.outcome_keep.store(outcome, Ordering::Relaxed);
    }

    /// The table's totals, with the lane's jobs counted as live (they need
    /// completion records and, once spilled, rewrites like any other).
    fn live(&self) -> Totals {
        let mut t = self.table.totals();
        t.jobs += self.sh.lane.len() as u64;
        t.bytes += self.sh.lane.bytes();
        t
    }

    /// Writes the pending records if the log can still hold `keep` bytes
    /// past them; `Ok(None)` when there is nothing to write or no log.
    /// The records are gone either way.
    fn flush_keeping(&mut self, keep: u64) -> Result<Option<u64>, WalError> {
        self.publish_headroom();
        if self.recs.is_empty() {
            return Ok(None);
        }
        let (Some(app), Some(wal)) = (self.appender.as_mut(), self.sh.wal.as_ref()) else {
            self.recs.clear();
            return Ok(None);
        };
        let res = append_frames(app, wal, &self.recs, keep, Publish::Wait);
        self.recs.clear();
        res.map(Some)
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Job(j) => {
                let j = match self.lane_queue(std::slice::from_ref(&j)) {
                    Some(q) => match self.admit(q, Admit::One(j)) {
                        Ok(()) => return,
                        Err(Admit::One(j)) => j,
                        Err(Admit::Many(_)) => return,
                    },
                    None => j,
                };
                self.insert(j, true);
            }
            Msg::Jobs(jobs) => {
                let jobs = match self.lane_queue(&jobs) {
                    Some(q) => match self.admit(q, Admit::Many(jobs)) {
                        Ok(()) => return,
                        Err(Admit::Many(back)) => back,
                        Err(Admit::One(j)) => vec![j],
                    },
                    None => jobs,
                };
                // One clock reading and one queue lookup per batch (its jobs
                // share the producer's name).
                let now = self.now_ns();
                let mut last: Option<(crate::name::Name, QueueId)> = None;
                for j in jobs {
                    let q = match &last {
                        Some((n, q)) if n.same(&j.queue) => *q,
                        _ => match self.qid(&j.queue) {
                            Some(q) => last.insert((j.queue.clone(), q)).1,
                            None => continue,
                        },
                    };
                    self.insert_in(j, q, true, now, true);
                }
            }
            Msg::Unique(j, reply, waiter) => {
                let len = j.payload.len() as u64;
                // Records pending from before are written with no
                // condition: only the put may be refused for space.
                self.flush();
                let res = match self.insert(j, false) {
                    Some(Put::Duplicate(existing)) => {
                        self.counters.release(1, len);
                        Err(crate::SubmitError::Duplicate { existing: JobId(existing) })
                    }
                    Some(Put::Created(id)) => {
                        let logged = self.sh.wal.is_none() || !self.recs.enabled();
                        let keep = self.sh.put_headroom(&[]);
                        match self.flush_keeping(keep) {
                            Ok(Some(lsn)) => Ok((JobId(id), lsn)),
                            Ok(None) if logged => Ok((JobId(id), 0)),
                            res => {
                                // Not logged: the job must not run either.
                                self.forget(id);
                                self.counters.release(1, len);
                                Err(match res {
                                    Err(e) => submit_error(e),
                                    Ok(_) => crate::SubmitError::Io(WalError::Failed(
                                        "the shard could not log the job".into(),
                                    )),
                                })
                            }
                        }
                    }
                    None => {
                        self.counters.release(1, len);
                        Err(crate::SubmitError::Io(WalError::Failed(
                            "the shard could not take the job".into(),
                        )))
                    }
                };
                let _ = reply.push(res);
                waiter.unpark();
            }
            Msg::Register(q, h, blocking) => {
                if blocking && self.blocking.is_none() {
                    self.blocking =
                        Some(blocking::Pool::new(self.cfg.max_blocking, self.cfg.epoch));
                }
                if let Some(id) = self.qid(&q) {
                    let x = self.q(id);
                    x.handler = Some(h);
                    x.blocking = blocking;
                    if blocking && self.sh.lane.count().is_some_and(|(lq, _)| lq == id) {
                        self.spill_lane();
                    }
                    self.table.hold_queue(id);
                    self.core_qs.retain(|&x| x != id);
                    self.blocking_qs.retain(|&x| x != id);
                    if blocking {
                        self.blocking_qs.push(id);
                    } else {
                        self.core_qs.push(id);
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
                self.dispatch.record(d.start_ns.saturating_sub(d.task.ready_ns).max(1));
                self.run_time.record(run.max(1));
                if d.outcome == Outcome::Done {
                    self.end_to_end.record(d.end_ns.saturating_sub(d.task.submitted_ns).max(1));
                }
                self.jobs_run += 1;
                let c = &mut self.q(d.task.qid).counts;
                c.runs += 1;
                c.run_ns += run;
                self.finish(d.task.id, d.task.qid, d.outcome);
            }
            Msg::Outcome(o) => {
                self.out = self.out.saturating_sub(1);
                if let Some(q) = self.table.job(o.id).map(|j| j.queue) {
                    self.finish(o.id, q, o.outcome);
                }
            }
            Msg::Return(t) => {
                self.out = self.out.saturating_sub(1);
                self.untake(&t);
            }
            Msg::Rescued(done, from_lane) => {
                if from_lane {
                    self.sh.lane.returned(done.len());
                }
                for (j, outcome) in done {
                    let id = j.id;
                    if outcome == Outcome::Done {
                        // Done elsewhere: the records of a run, nothing
                        // more (the table never held it).
                        if let Some(q) = self.qid(&j.queue) {
                            self.recs.push_reserve(id);
                            self.recs.push_delete(id);
                            self.done_counts(q, j.payload.len() as u64);
                            continue;
                        }
                    }
                    let lane_q = if from_lane { self.qid(&j.queue) } else { None };
                    let put = self.insert(j, true);
                    if let (Some(Put::Created(_)), Some(q)) = (put, lane_q) {
                        self.lane_left(q);
                    }
                    let t = self.now_t();
                    if self.table.reserve_id(t, id, HOLDER, &mut Records::disabled()).is_some() {
                        self.table.log_start(id, &mut self.recs);
                        if let Some(q) = self.table.job(id).map(|j| j.queue) {
                            self.finish(id, q, outcome);
                        }
                    }
                }
            }
            Msg::Ctl(m) => self.control(m),
            Msg::Shutdown => {
                self.shutting_down = true;
                self.shutdown_at = Some(Instant::now());
                // Jobs handed to the pool that no thread has taken yet come
                // back unrun, so shutdown waits only for the handlers already
                // running.
                let queued: Vec<Task> = match &self.blocking {
                    Some(pool) => pool.drain(),
                    None => Vec::new(),
                };
                for t in queued {
                    self.blocking_out = self.blocking_out.saturating_sub(1);
                    self.untake(&t);
                }
                // Take back what is still offered: own jobs become ready
                // again, others go home to their owner.
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

    /// Removes a job without logging (its `Put` never reached the log).
    fn forget(&mut self, id: u64) {
        let _ = self.table.delete(id, Some(By::holder(HOLDER)), &mut Records::disabled());
    }

    /// Undoes `take` for a task that did not run.
    fn untake(&mut self, t: &Task) {
        let now = self.now_t();
        if self.table.unreserve(now, t.id, HOLDER).is_ok() {
            let ns = self.ns_of(now);
            self.arrived(t.qid, ns);
        }
    }

    /// Step 2: due delayed jobs become ready.
    fn fire_timers(&mut self) -> bool {
        let Some(due) = self.table.next_due() else { return false };
        let now = self.now_t();
        if due > now {
            return false;
        }
        let before = self.table.totals().ready;
        self.tick_table(now);
        let after = self.table.totals().ready;
        if after > before {
            self.g_arrivals += after - before;
            self.sh.gauges.arrivals.store(self.g_arrivals, Ordering::Relaxed);
            if before == 0 {
                let ns = self.now_ns();
                self.sh.gauges.head_ready_ns.store(ns.max(1), Ordering::Relaxed);
            }
        }
        after > before
    }

    /// Reserves the most urgent ready job of the core (or blocking) queues
    /// as a task. The reservation is logged when its run starts, so a job
    /// offered to thieves and never run does not count as interrupted.
    fn take_from(&mut self, blocking: bool, now: Time) -> Option<Task> {
        if self.table.expiry_due(now) {
            // Expired jobs go through the timer step (logged, counted),
            // not as a side effect of the reservation below.
            self.tick_table(now);
        }
        let qs = if blocking { &self.blocking_qs } else { &self.core_qs };
        let (id, ready) = {
            let j = self.table.peek_from(now, qs)?;
            (j.id, j.since)
        };
        let lease = self.table.reserve_id(now, id, HOLDER, &mut Records::disabled())?;
        let j = self.table.job(id)?;
        Some(Task {
            id,
            owner: self.sh.idx,
            qid: j.queue,
            queue: self
                .qs
                .get(j.queue.0 as usize)
                .map_or_else(|| Arc::from(""), |x| x.name.clone()),
            payload: spindle_core::Payload::new(j.payload),
            attempt: lease.token,
            priority: j.pri,
            ready_ns: self.ns_of(ready),
            // The table's creation time is the submission (the producer's
            // clock reading, passed as the put's time).
            submitted_ns: self.ns_of(j.created),
        })
    }

    /// Step 4: the next local job: an offered task, the lane's front or
    /// the table's best (`lane.rs` step 2); a task from the table offers
    /// the table's backlog to thieves first.
    fn next_local(&mut self, now: Time) -> Option<Next> {
        // A job more urgent than everything offered arrived since the offer:
        // run it first (strict priority for local work).
        let best = self.table.peek_from(now, &self.core_qs).map(|j| (j.pri, j.id));
        let urgent = best.map_or(u32::MAX, |b| b.0).min(self.sh.lane.pri());
        if urgent >= self.offered_best {
            if let Some(t) = self.worker.pop() {
                if t.owner == self.sh.idx {
                    self.out = self.out.saturating_sub(1);
                }
                return Some(Next::Task(t));
            }
        }
        if let Some((j, q)) = self.sh.lane.pop_before(best) {
            return Some(Next::Lane(j, q));
        }
        let t = self.take_from(false, now)?;
        self.offer_at(now);
        Some(Next::Task(t))
    }

    /// Step 3: hands ready jobs of blocking queues to the pool, up to its
    /// target.
    fn dispatch_blocking(&mut self) -> bool {
        // Shutting down with a log: waiting jobs stay in it for the next
        // start (only Memory mode runs them now).
        let stopping = self.shutting_down || self.sh.stopping.load(Ordering::Acquire);
        if stopping && self.cfg.durability != Durability::Memory {
            return false;
        }
        let Some(pool) = self.blocking.take() else { return false };
        let target = pool.target(&self.sh) as u64;
        let mut any = false;
        let now = self.now_t();
        while self.blocking_out < target {
            let Some(t) = self.take_from(true, now) else { break };
            let Some(h) = self.qs.get(t.qid.0 as usize).and_then(|x| x.handler.clone()) else {
                self.untake(&t);
                break;
            };
            self.table.log_start(t.id, &mut self.recs);
            self.flush();
            self.blocking_out += 1;
            self.sh.gauges.b_head_ready_ns.store(t.ready_ns.max(1), Ordering::Relaxed);
            pool.submit(&self.sh, t, h);
            any = true;
        }
        self.blocking = Some(pool);
        any
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
                && all
                    .iter()
                    .any(|o| o.idx != sh.idx && (!o.stealer.is_empty() || o.lane.len() > 0)))
    }

    fn park_timeout(&self) -> Duration {
        match self.table.next_due() {
            Some(at) => at.since(self.now_t()).min(MAX_PARK),
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
        if (self.out > 0 || self.blocking_out > 0 || self.sh.lane.lent() > 0) && waited_enough {
            tracing::warn!(
                shard = self.sh.idx,
                outstanding = self.out,
                "shutting down with stolen jobs unreported; they will run again after restart"
            );
        }
        let lent = self.sh.lane.lent();
        (self.out == 0 && self.blocking_out == 0 && lent == 0 || waited_enough)
            && (self.cfg.durability != Durability::Memory
                || (self.core_ready() == 0
                    && self.worker.is_empty()
                    && self.sh.lane.len() == 0
                    && self.blocking_ready() == 0))
    }

    /// Holds one of the pool's spinner slots (taking it if free), and says
    /// so to producers (`ShardShared::spinning`).
    fn hold_spin_slot(&mut self) -> bool {
        if !self.spin_slot && self.ctl.try_spin() {
            self.spin_slot = true;
            self.sh.spinning.store(true, Ordering::Relaxed);
        }
        self.spin_slot
    }

    pub(super) fn drop_spin_slot(&mut self) {
        if self.spin_slot {
            self.spin_slot = false;
            self.sh.spinning.store(false, Ordering::Relaxed);
            self.ctl.end_spin();
        }
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
                self.sh.core.store(c, Ordering::Relaxed);
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
            if progress {
                // Messages came in: the next job starts after them; and the
                // gap between arrivals decides whether idling spins.
                let now = self.now_t();
                self.clock_hint = Some(now);
                let ns = self.ns_of(now);
                let gap = ns.saturating_sub(self.last_arrival_ns);
                self.last_arrival_ns = ns;
                self.arrival_gap_ns = self.arrival_gap_ns - self.arrival_gap_ns / 8 + gap / 8;
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
                // Not running handlers: the lane's jobs are offered too.
                self.spill_lane();
                progress |= self.offer();
            } else if let Some((next, now)) = {
                let now = match self.clock_hint.take() {
                    Some(t) => t,
                    None => self.now_t(),
                };
                self.next_local(now).map(|t| (t, now))
            } {
                self.stop_searching();
                let start = self.ns_of(now);
                match next {
                    Next::Task(t) => self.run_task(t, Some(start)),
                    Next::Lane(j, q) => {
                        self.run_lane(j, q, start);
                        since_compact += self.lane_burst();
                    }
                }
                progress = true;
            } else if self.searching || self.start_searching() {
                if let Some(t) = self.steal() {
                    self.stop_searching();
                    self.run_task(t, None);
                    progress = true;
                } else if self.steal_lane() || self.rescue() {
                    self.stop_searching();
                    progress = true;
                }
            }
            let ready = self.core_ready() + self.worker.len() as u64 + self.sh.lane.len() as u64;
            self.sh.gauges.ready.store(ready, Ordering::Relaxed);
            self.sh.gauges.b_ready.store(self.blocking_ready(), Ordering::Relaxed);
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
                self.drop_spin_slot();
                continue;
            }
            // Nothing ran: the end of the last run is no longer now (a job
            // found after spinning or parking must not start in the past:
            // producers would read the shard as stuck in its handler).
            self.clock_hint = None;
            // Idle: an active worker spins for `idle_spin` first, if the
            // next job is likely to come within it (jobs arrived at gaps
            // shorter than the spin, on average); otherwise a spin only
            // burns a core, and it parks at once.
            if idle_since.is_none() {
                self.local_feed = sh.local_feed.swap(false, Ordering::Relaxed);
            }
            let since = *idle_since.get_or_insert_with(Instant::now);
            // At most one core fewer than the machine has spins at once
            // (`control::Pool::try_spin`), so submitting threads keep a core.
            let spin_ns = self.cfg.idle_spin.as_nanos() as u64;
            let soon = self.arrival_gap_ns < spin_ns
                && (!self.local_feed || self.arrival_gap_ns < spin_ns / LOCAL_SPIN_DIV);
            let spin = self.cfg.idle_spin == Duration::MAX
                || (soon && since.elapsed() < self.cfg.idle_spin && self.hold_spin_slot());
            if active && spin {
                // Polite spinning: a thread runnable on this core (a
                // producer, most likely) gets it at once rather than after
                // a scheduler tick.
                self.spins = self.spins.wrapping_add(1);
                if self.spins % 16 == 0 {
                    std::thread::yield_now();
                } else {
                    std::hint::spin_loop();
                }
                continue;
            }
            self.drop_spin_slot();
            idle_since = None;
            self.flush();
            self.release_counts();
            // A searcher giving up its slot while work is on offer wakes one
            // parked active worker to take over the search.
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
            let blocking_waiting = self.blocking_ready() > 0 && self.blocking.is_some();
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
        self.drop_spin_slot();
        self.flush();
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
