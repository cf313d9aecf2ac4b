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

use crate::append::{append_frames, frame_max, submit_error};
use crate::blocking::{self, BlockingDone, PoolGauges};
use crate::builder::Durability;
use crate::control::{self, Gauges};
use crate::engine::{Config, Counters, Handler};
use crate::job::{JobId, JobRef, Outcome};
use crate::stats::{self, QueueCounts, QueueStats, Snapshot};
use crate::steal::{Task, TaskOutcome};
use crossbeam_deque::{Steal, Stealer, Worker};
use crossbeam_queue::{ArrayQueue, SegQueue};
use hdrhistogram::Histogram;
use spindle_core::compact::{self, Pass};
use spindle_core::record::PutRec;
use spindle_core::{headroom, Totals};
use spindle_core::{By, Failed, Put, PutSpec, QueueId, Records, State as JobState, Table, Time};
use spindle_park::Parker;
use spindle_wal::{frame_len, Appender, Wal, WalError};
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
    pub(crate) queue: Arc<str>,
    pub(crate) priority: u32,
    pub(crate) payload: Vec<u8>,
    /// When it was submitted (the table's time).
    pub(crate) created: Time,
    /// When it may run, if delayed.
    pub(crate) due: Option<Time>,
    pub(crate) max_attempts: u32,
    pub(crate) unique_key: Option<Box<str>>,
}

impl NewJob {
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
    /// The head-room (`spindle_core::headroom`) a put must leave in this
    /// shard's log for the jobs in its table, and the room a start or an
    /// outcome must leave, as of the shard's last log write.
    pub(crate) put_keep: AtomicU64,
    pub(crate) outcome_keep: AtomicU64,
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
    ) -> Result<u64, crate::SubmitError> {
        let mut app = self.appenders.pop().unwrap_or_else(|| wal.appender());
        let res = append_frames(&mut app, wal, recs, keep);
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
    pub(crate) fn log_puts(&self, wal: &Wal, jobs: &[NewJob]) -> Result<u64, crate::SubmitError> {
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
            self.append(wal, recs, self.put_headroom(jobs))
        })
    }

    /// Logs that job `id` (owned by this shard) starts a run on another
    /// thread: a crash during the run then counts as an interruption.
    fn log_start(&self, id: u64) {
        let Some(wal) = &self.wal else { return };
        let mut recs = Records::new();
        recs.push_reserve(id);
        if let Err(e) = self.append(wal, &recs, self.outcome_keep.load(Ordering::Relaxed)) {
            tracing::error!(shard = self.idx, error = %e, "cannot log job start");
        }
    }
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
    /// Queue name -> id in the table, and back.
    qids: HashMap<Arc<str>, QueueId>,
    qnames: Vec<Arc<str>>,
    /// Handlers, and whether they block (run on the pool).
    handlers: HashMap<Arc<str>, (Arc<dyn Handler>, bool)>,
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
    /// Completed and failed runs per queue, and run times.
    queues: HashMap<Arc<str>, (u64, u64, QueueCounts)>,
    dispatch: Histogram<u64>,
    run_time: Histogram<u64>,
    end_to_end: Histogram<u64>,
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
    /// A release waiting for its mark to be durable: (below, mark lsn).
    pending_release: Option<(u64, u64)>,
    /// Priority of the most urgent job in the latest offer to thieves.
    offered_best: u32,
    /// Holds one of the pool's search slots (`control::Pool::try_search`).
    searching: bool,
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
            qnames: Vec::new(),
            handlers: HashMap::new(),
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
            pass: None,
            compact_retry_at: None,
            pass_written: 0,
            shutdown_at: None,
            served: 0,
            out: 0,
            pending_release: None,
            offered_best: u32::MAX,
            searching: false,
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
        if self.qnames.len() <= i {
            self.qnames.resize(i + 1, Arc::from(""));
        }
        self.qnames[i] = name.clone();
        self.qids.insert(name, q);
    }

    /// The table's id of queue `name` (made if new).
    fn qid(&mut self, name: &Arc<str>) -> Option<QueueId> {
        if let Some(&q) = self.qids.get(name) {
            return Some(q);
        }
        let q = self.table.queue(name).ok()?;
        self.name_queue(q, name.clone());
        Some(q)
    }

    fn counts(&mut self, q: &Arc<str>) -> &mut QueueCounts {
        &mut self.queues.entry(q.clone()).or_default().2
    }

    /// Counts a job becoming ready for the controller's arrival rate.
    fn arrived(&mut self, q: QueueId, now_ns: u64) {
        let name = self.qnames.get(q.0 as usize).cloned().unwrap_or_else(|| Arc::from(""));
        match self.handlers.get(&name) {
            Some((_, true)) => {
                self.gb_arrivals += 1;
                self.sh.gauges.b_arrivals.store(self.gb_arrivals, Ordering::Relaxed);
            }
            _ => {
                if self.core_ready() == 1 && self.worker.is_empty() {
                    self.sh.gauges.head_ready_ns.store(now_ns.max(1), Ordering::Relaxed);
                }
                self.g_arrivals += 1;
                self.sh.gauges.arrivals.store(self.g_arrivals, Ordering::Relaxed);
            }
        }
        self.counts(&name).arrived += 1;
    }

    /// Ready jobs of queues with a core handler.
    fn core_ready(&self) -> u64 {
        self.core_qs.iter().filter_map(|&q| self.table.queue_view(q)).map(|v| v.ready).sum()
    }

    fn blocking_ready(&self) -> u64 {
        self.blocking_qs.iter().filter_map(|&q| self.table.queue_view(q)).map(|v| v.ready).sum()
    }

    /// Puts a job into the table. `logged`: its `Put` is in the log already
    /// (its producer wrote it); otherwise the shard logs it.
    fn insert(&mut self, j: NewJob, logged: bool) -> Option<Put> {
        let q = self.qid(&j.queue)?;
        let spec = PutSpec {
            pri: j.priority,
            delay: j.due.map_or(Duration::ZERO, |d| d.since(j.created)),
            ttr_s: 0,
            max_attempts: j.max_attempts,
            unique: j.unique_key.as_deref(),
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
            if j.due.is_none() {
                let now = self.now_ns();
                self.arrived(q, now);
            }
        }
        Some(put)
    }

    /// Writes this shard's pending records to its log; the last LSN.
    /// Records of outcomes and starts leave only the room compaction needs
    /// (`spindle_core::headroom`): on a full disk they use the head-room
    /// producers leave.
    fn flush(&mut self) -> Option<u64> {
        let keep = headroom::for_completions(&self.table.totals(), self.pass_written);
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
        let t = self.table.totals();
        let put = headroom::for_puts(&t, wal.segment_size());
        self.sh.put_keep.store(put, Ordering::Relaxed);
        let outcome = headroom::for_completions(&t, self.pass_written);
        self.sh.outcome_keep.store(outcome, Ordering::Relaxed);
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
        let res = append_frames(app, wal, &self.recs, keep);
        self.recs.clear();
        res.map(Some)
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Job(j) => {
                self.insert(j, true);
            }
            Msg::Jobs(jobs) => {
                for j in jobs {
                    self.insert(j, true);
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
                self.handlers.insert(q.clone(), (h, blocking));
                if blocking && self.blocking.is_none() {
                    self.blocking =
                        Some(blocking::Pool::new(self.cfg.max_blocking, self.cfg.epoch));
                }
                if let Some(id) = self.qid(&q) {
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
                self.finish(d.task.id, &d.task.queue, d.outcome);
            }
            Msg::Outcome(o) => {
                self.out = self.out.saturating_sub(1);
                let q = self.queue_of(o.id);
                self.finish(o.id, &q, o.outcome);
            }
            Msg::Return(t) => {
                self.out = self.out.saturating_sub(1);
                self.untake(&t);
            }
            Msg::Rescued(done) => {
                for (j, outcome) in done {
                    let (id, q) = (j.id, j.queue.clone());
                    self.insert(j, true);
                    let t = self.now_t();
                    if self.table.reserve_id(t, id, HOLDER, &mut Records::disabled()).is_some() {
                        self.table.log_start(id, &mut self.recs);
                        self.finish(id, &q, outcome);
                    }
                }
            }
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

    fn queue_of(&self, id: u64) -> Arc<str> {
        self.table
            .job(id)
            .and_then(|j| self.qnames.get(j.queue.0 as usize).cloned())
            .unwrap_or_else(|| Arc::from(""))
    }

    /// Removes a job without logging (its `Put` never reached the log).
    fn forget(&mut self, id: u64) {
        let _ = self.table.delete(id, Some(By::holder(HOLDER)), &mut Records::disabled());
    }

    /// Undoes `take` for a task that did not run.
    fn untake(&mut self, t: &Task) {
        let now = self.now_t();
        if self.table.unreserve(now, t.id, HOLDER).is_ok() {
            if let Some(q) = self.qids.get(&t.queue).copied() {
                let ns = self.now_ns();
                self.arrived(q, ns);
            }
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
        self.table.tick(now, &mut self.recs);
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
    fn take_from(&mut self, blocking: bool) -> Option<Task> {
        let now = self.now_t();
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
            queue: self.qnames.get(j.queue.0 as usize).cloned().unwrap_or_else(|| Arc::from("")),
            payload: Arc::from(j.payload),
            attempt: lease.token,
            priority: j.pri,
            ready_ns: self.ns_of(ready),
            // The table's creation time is the submission (the producer's
            // clock reading, passed as the put's time).
            submitted_ns: self.ns_of(j.created),
        })
    }

    /// Step 4: the next local task; offers the backlog to thieves first.
    fn next_local(&mut self) -> Option<Task> {
        // A job more urgent than everything offered arrived since the offer:
        // run it first (strict priority for local work).
        let now = self.now_t();
        let best = self.table.peek_from(now, &self.core_qs).map(|j| j.pri);
        let heap_first = best.is_some_and(|p| p < self.offered_best);
        if !heap_first {
            if let Some(t) = self.worker.pop() {
                if t.owner == self.sh.idx {
                    self.out = self.out.saturating_sub(1);
                }
                return Some(t);
            }
        }
        let t = self.take_from(false)?;
        self.offer();
        Some(t)
    }

    /// Moves every ready job of the core queues into the steal deque (the
    /// most urgent first) and wakes one parked active shard. The whole
    /// backlog, so a handler that blocks this shard strands none of it.
    fn offer(&mut self) -> bool {
        if self.all.len() < 2 || !self.cfg.stealing || self.shutting_down {
            return false;
        }
        // Outcomes not yet logged go first: a thief logs its run's `Reserve`
        // in this shard's log directly, which must not come before them.
        self.flush();
        // Jobs still offered from before stay ahead of these; the most
        // urgent offered priority covers both.
        let earlier = if self.worker.is_empty() { u32::MAX } else { self.offered_best };
        let mut best = u32::MAX;
        let mut oldest = u64::MAX;
        let mut moved = 0u64;
        while let Some(o) = self.take_from(false) {
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

    /// Step 3: hands ready jobs of blocking queues to the pool, up to its
    /// target.
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
            let Some(t) = self.take_from(true) else { break };
            let Some((h, _)) = self.handlers.get(&t.queue).cloned() else {
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
        let now_t = self.now_t();
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
                j.due.is_none_or(|d| d <= now_t)
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

    /// Step 5: steal a batch from the busiest-looking other shard.
    fn steal(&mut self) -> Option<Task> {
        if self.shutting_down || self.all.len() < 2 || !self.cfg.stealing {
            return None;
        }
        let n = self.all.len();
        let start = (self.now_ns() as usize ^ self.sh.idx.wrapping_mul(0x9E37)) % n;
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
            } else {
                self.untake(&t);
            }
            return;
        };
        // Re-registered as blocking after the job was queued: to the pool.
        if blocks && t.owner == self.sh.idx && self.blocking.is_some() {
            self.table.log_start(t.id, &mut self.recs);
            self.flush();
            self.blocking_out += 1;
            if let Some(pool) = &self.blocking {
                pool.submit(&self.sh, t, h);
            }
            return;
        }
        // Log the start in the owner's log (a thief appends there too), so a
        // crash during the run counts as an interruption on recovery.
        if t.owner == self.sh.idx {
            self.table.log_start(t.id, &mut self.recs);
            self.flush();
        } else {
            self.all[t.owner].log_start(t.id);
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
        if outcome == Outcome::Done {
            let _ = self.end_to_end.record(end.saturating_sub(t.submitted_ns).max(1));
        }
        if t.owner == self.sh.idx {
            self.finish(t.id, &t.queue, outcome);
        } else {
            self.jobs_stolen += 1;
            self.all[t.owner].send(Msg::Outcome(TaskOutcome { id: t.id, outcome }));
        }
    }

    /// Applies a handler's outcome to a job this shard owns.
    fn finish(&mut self, id: u64, q: &Arc<str>, outcome: Outcome) {
        let by = By::holder(HOLDER);
        let now = self.now_t();
        let len = self.table.job(id).map_or(0, |j| j.payload.len() as u64);
        match outcome {
            Outcome::Done => {
                if self.table.complete(id, by, &mut self.recs).is_ok() {
                    self.counters.release(1, len);
                    self.queues.entry(q.clone()).or_default().0 += 1;
                }
            }
            Outcome::Retry(reason) => {
                self.queues.entry(q.clone()).or_default().1 += 1;
                match self.table.fail(now, id, by, reason.as_bytes(), &mut self.recs) {
                    Ok(Failed::Retry { attempts, delay }) => {
                        tracing::debug!(job = id, attempt = attempts, ?delay, %reason, "job failed; retrying");
                        if delay.is_zero() {
                            if let Some(qid) = self.qids.get(q).copied() {
                                let ns = self.now_ns();
                                self.arrived(qid, ns);
                            }
                        }
                    }
                    Ok(Failed::Buried { attempts }) => {
                        tracing::info!(job = id, attempt = attempts, %reason, "job buried");
                    }
                    Err(_) => {}
                }
            }
            Outcome::Bury(reason) => {
                self.queues.entry(q.clone()).or_default().1 += 1;
                let pri = self.table.job(id).map_or(0, |j| j.pri);
                if self.table.bury(id, by, pri, Some(&reason), &mut self.recs).is_ok() {
                    tracing::info!(job = id, %reason, "job buried");
                }
            }
        }
    }

    /// Keeps the log bounded (`docs/architecture.md`, Compaction):
    ///
    /// 1. When the log is larger than `compact_after_segments` segments and
    ///    more than twice the live jobs' estimated records, pick the cut
    ///    `C`: the end of the newest segment the log has finished, and flip
    ///    the submit epoch.
    /// 2. Wait until no producer of the old epoch is between appending a
    ///    `Put` and handing the job to this shard (`ShardShared::enter`),
    ///    then drain the inbox: every job logged below `C` is now in the
    ///    table.
    /// 3. Rewrite every live job of the table at the tail, its complete
    ///    state, [`COMPACT_BATCH`] per call, walking ids upwards (jobs put
    ///    later have their records above `C`).
    /// 4. Log the id mark after them and ask for a sync without waiting.
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
        let mut pass = match self.pass {
            Some(p) => p,
            None => {
                let (cut, epoch) = match self.pending_cut {
                    Some(p) => p,
                    None => {
                        let segs = wal.segments();
                        let published = wal.stats().published_lsn;
                        let min = self.cfg.compact_after_segments;
                        let Some(cut) = compact::cut_for(&self.table, &segs, published, min) else {
                            return;
                        };
                        let old = self.sh.flip_epoch();
                        self.pending_cut = Some((cut, old));
                        self.pass_written = 0;
                        (cut, old)
                    }
                };
                if !self.sh.epoch_quiet(epoch) {
                    return;
                }
                while let Some(m) = self.sh.inbox.pop() {
                    self.handle(m);
                }
                self.pending_cut = None;
                // The engine-wide counter may be ahead of this shard's ids:
                // the pass's id mark covers every id handed out.
                let next = self.counters.next_id.load(Ordering::Relaxed);
                if next > self.table.next_id() {
                    self.table.skip_ids(next - self.table.next_id());
                }
                Pass::new(&self.table, cut)
            }
        };
        if self.compact_retry_at.is_some_and(|at| Instant::now() < at) {
            self.pass = Some(pass);
            return;
        }
        // Pending outcomes first, with no condition: only the pass's own
        // records may be refused for space.
        self.flush();
        let before = pass;
        let (_, done) = pass.step(&self.table, COMPACT_BATCH, &mut self.recs);
        let bytes: u64 = self.recs.frames(frame_max(&wal)).map(|c| frame_len(c.len() as u64)).sum();
        // The room it needs is kept by puts and outcomes; `1`: a batch goes
        // in whole or not at all (the room for all its frames is checked
        // first), so a batch a full disk refuses wastes nothing.
        let lsn = match self.flush_keeping(1) {
            Ok(Some(lsn)) => {
                self.pass_written = self.pass_written.saturating_add(bytes);
                lsn
            }
            Err(WalError::NoSpace { .. }) => {
                // A full disk: this batch again a little later (the jobs
                // before it are rewritten already); outcomes shrink what is
                // left to rewrite.
                self.pass = Some(before);
                self.compact_retry_at = Some(Instant::now() + COMPACT_RETRY);
                return;
            }
            Ok(None) | Err(_) => {
                self.pass = None;
                return;
            }
        };
        self.compact_retry_at = None;
        if done {
            self.pass = None;
            self.pending_release = Some((pass.cut, lsn));
            wal.request_sync();
        } else {
            self.pass = Some(pass);
        }
    }

    fn publish(&mut self) {
        let mut queues = std::collections::BTreeMap::new();
        let mut counts = std::collections::BTreeMap::new();
        for (name, &q) in &self.qids {
            let v = self.table.queue_view(q).unwrap_or_default();
            let (completed, failed, c) = self.queues.get(name).cloned().unwrap_or_default();
            queues.insert(
                name.to_string(),
                QueueStats {
                    ready: v.ready,
                    delayed: v.delayed,
                    running: v.reserved,
                    buried: v.buried,
                    completed,
                    failed,
                    desired_workers: 0,
                },
            );
            counts.insert(name.to_string(), c);
        }
        let snap = Snapshot {
            queues,
            counts,
            shard: crate::stats::ShardStats {
                pinned_core: self.pinned_core,
                jobs_run: self.jobs_run,
                jobs_stolen: self.jobs_stolen,
                jobs_owned: self.table.totals().jobs,
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
        if (self.out > 0 || self.blocking_out > 0) && waited_enough {
            tracing::warn!(
                shard = self.sh.idx,
                outstanding = self.out,
                "shutting down with stolen jobs unreported; they will run again after restart"
            );
        }
        (self.out == 0 && self.blocking_out == 0 || waited_enough)
            && (self.cfg.durability != Durability::Memory
                || (self.core_ready() == 0 && self.worker.is_empty() && self.blocking_ready() == 0))
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
            let ready = self.core_ready() + self.worker.len() as u64;
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
            self.flush();
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
