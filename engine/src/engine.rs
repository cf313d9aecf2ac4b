//! [`Engine`]: building, submitting, registering handlers, stats, shutdown.
//!
//! Submitting a job (`submit`), in order:
//!
//! 1. Validate the queue name and payload size; reserve room in the global
//!    job and byte limits (a failed reservation is `SubmitError::Full` and
//!    changes nothing).
//! 2. Take the next id from the engine-wide counter and pick a shard: round
//!    robin, or a hash of (queue, unique key) so one shard decides
//!    uniqueness for a key.
//! 3. Without a unique key: append the `Put` record to the shard's log from
//!    this thread (lock-free multi-producer append), wait for the sync under
//!    `Sync`, then push the job to the shard's inbox and wake the shard.
//!    With a unique key: send the job to the shard, which checks the key,
//!    logs it and replies (one round trip).
//! 4. Return the id: the job is as durable as the mode promises.

use crate::append::Publish;
use crate::builder::{Durability, EngineBuilder};
use crate::control;
use crate::error::{BuildError, ShutdownError, SubmitError};
use crate::job::{validate_queue, Job, JobId, JobRef, Outcome};
use crate::name::Name;
use crate::record::{self, Rec, KIND_REC};
use crate::shard::{Msg, NewJob, Shard, ShardShared, UniqueReply};
use crate::stats::{self, Stats};
use crossbeam_deque::Worker;
use crossbeam_queue::{ArrayQueue, SegQueue};
use spindle_core::record::{MoveRec, PutRec, Record};
use spindle_core::{Counts, RetryPolicy, State as JobState, Table, Time};
use spindle_park::Parker;
use spindle_wal::{SyncPolicy, Wal, WalOptions};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Longest `stats()` waits for a shard to answer: far above a shard's loop
/// period (microseconds), so only a shard inside a long handler misses it.
const STATS_WAIT: Duration = Duration::from_millis(500);

/// A shard that has been running one handler this long gets no new
/// round-robin submissions: 10 ms is two orders of magnitude above the
/// per-job cost, so only a handler that blocks trips it.
pub(crate) const STALLED: Duration = Duration::from_millis(10);

/// Queue names a producer thread keeps (see `Engine::queue_name`).
const QUEUE_CACHE: usize = 1024;

thread_local! {
    static QUEUE_NAMES: std::cell::RefCell<HashMap<Box<str>, Arc<str>>> =
        std::cell::RefCell::new(HashMap::new());
}

/// Smallest log record: a 16-byte frame header plus a payload padded to
/// 16 bytes (`docs/wal-format.md`).
const MIN_RECORD_BYTES: u64 = 32;

/// A job handler: a closure `Fn(&JobRef) -> Outcome` or your own type.
pub trait Handler: Send + Sync + 'static {
    /// Runs one job. Panics are caught and count as a failed attempt.
    fn handle(&self, job: &JobRef<'_>) -> Outcome;
}

impl<F> Handler for F
where
    F: Fn(&JobRef<'_>) -> Outcome + Send + Sync + 'static,
{
    fn handle(&self, job: &JobRef<'_>) -> Outcome {
        self(job)
    }
}

/// Settings every shard reads.
#[derive(Debug)]
pub(crate) struct Config {
    pub(crate) durability: Durability,
    pub(crate) compact_after_segments: usize,
    pub(crate) stealing: bool,
    /// New ready jobs may skip the table (`lane.rs`).
    pub(crate) lane: bool,
    pub(crate) idle_spin: Duration,
    pub(crate) stall_factor: u32,
    pub(crate) stall_min: Duration,
    pub(crate) max_blocking: usize,
    pub(crate) epoch: Instant,
    /// The table's clock, and its reading at `epoch`.
    pub(crate) clock: spindle_core::Clock,
    pub(crate) clock_epoch: Time,
    /// The time-stamp counter's rate, where it may stand in for the clock
    /// inside lane bursts (`tsc.rs`).
    pub(crate) tsc: Option<crate::tsc::Tsc>,
    /// The retry policy of every queue (jobs carry their own attempts).
    pub(crate) policy: RetryPolicy,
    pub(crate) close_errors: Mutex<Option<(usize, String)>>,
}

/// Engine-wide counters: ids and the capacity limits.
#[derive(Debug)]
pub(crate) struct Counters {
    pub(crate) next_id: AtomicU64,
    jobs: AtomicU64,
    bytes: AtomicU64,
    max_jobs: u64,
    max_bytes: u64,
}

impl Counters {
    fn reserve(&self, jobs: u64, bytes: u64) -> Result<(), SubmitError> {
        if self.jobs.fetch_add(jobs, Ordering::AcqRel) + jobs > self.max_jobs {
            self.jobs.fetch_sub(jobs, Ordering::AcqRel);
            return Err(SubmitError::Full { what: "jobs", limit: self.max_jobs });
        }
        if self.bytes.fetch_add(bytes, Ordering::AcqRel) + bytes > self.max_bytes {
            self.bytes.fetch_sub(bytes, Ordering::AcqRel);
            self.jobs.fetch_sub(jobs, Ordering::AcqRel);
            return Err(SubmitError::Full { what: "bytes", limit: self.max_bytes });
        }
        Ok(())
    }

    /// Counts jobs the engine made itself (a schedule's ticks), past the
    /// limits: a tick is never refused for them.
    pub(crate) fn add(&self, jobs: u64, bytes: u64) {
        self.jobs.fetch_add(jobs, Ordering::AcqRel);
        self.bytes.fetch_add(bytes, Ordering::AcqRel);
    }

    pub(crate) fn release(&self, jobs: u64, bytes: u64) {
        self.jobs.fetch_sub(jobs, Ordering::AcqRel);
        self.bytes.fetch_sub(bytes, Ordering::AcqRel);
    }
}

pub(crate) struct Inner {
    ctl: Arc<control::Pool>,
    controller: Mutex<Option<JoinHandle<()>>>,
    pub(crate) shards: Arc<[Arc<ShardShared>]>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    cfg: Arc<Config>,
    counters: Arc<Counters>,
    max_payload: usize,
    rr: AtomicUsize,
    accepting: AtomicBool,
    /// Queues that live on one shard (`paid.rs` step 1).
    pub(crate) homes: crate::paid::Homes,
}

/// A running engine. Cheap to clone: clones share the same shards, so other
/// threads and handlers can submit follow-up jobs.
#[derive(Clone)]
pub struct Engine {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("shards", &self.inner.shards.len()).finish()
    }
}

fn shard_dir(dir: &std::path::Path, i: usize) -> PathBuf {
    dir.join(format!("shard-{i:03}"))
}

/// A shard's job table, with its retry policy and no limits of its own
/// (the engine-wide counters hold the limits).
fn new_table(cfg: &Config, shard: usize) -> Table {
    Table::new(spindle_core::Config {
        max_jobs: u64::MAX,
        max_bytes: u64::MAX,
        max_payload: u32::MAX,
        policy: cfg.policy,
        seed: 0x9E37_79B9_7F4A_7C15 ^ (shard as u64 + 1),
        batch_bytes: 4 << 20,
        drop_unused_queues: false,
    })
}

/// Replays one shard's log into its job table; returns the table and the
/// highest id seen (ids never go backwards). Reads the table's records
/// (WAL kind 16) and the engine's older format (kind 1, `record.rs`).
///
/// `running`: jobs the run markers name (running when the last run
/// stopped); one of this shard's that is still live counts an interruption,
/// as if its `Reserve` had been logged.
fn replay(
    wal: &Wal,
    shard: usize,
    cfg: &Config,
    running: &[u64],
) -> Result<(Table, u64), BuildError> {
    let mut table = new_table(cfg, shard);
    let mut bad: Option<BuildError> = None;
    // Old-format records name no priority on `Retry`/`Bury`: keep each job's.
    let mut pri: HashMap<u64, u32> = HashMap::new();
    wal.replay(|r| {
        if bad.is_some() {
            return;
        }
        if r.kind == spindle_core::record::WAL_KIND {
            if let Err(e) = table.replay(r.payload) {
                bad = Some(BuildError::BadRecord { shard, lsn: r.lsn, reason: e.to_string() });
            }
            return;
        }
        if r.kind != KIND_REC {
            return;
        }
        match record::decode(r.payload) {
            Ok(rec) => apply_old(&mut table, &mut pri, rec),
            Err(e) => {
                bad = Some(BuildError::BadRecord { shard, lsn: r.lsn, reason: e.to_string() })
            }
        }
    })
    .map_err(|source| BuildError::Wal { shard, source })?;
    if let Some(e) = bad {
        return Err(e);
    }
    for &id in running {
        if table.job(id).is_some_and(|j| j.state == JobState::Ready) {
            table.apply(Record::Reserve { id });
        }
    }
    let now = cfg.clock.now();
    // What recovery decides (a job interrupted once more, or buried as a
    // poison pill) is logged, so the next start sees it as decided.
    let mut out = spindle_core::Records::new();
    let rec = table.finish_replay(now, &mut out);
    if !out.is_empty() {
        append_now(wal, &out).map_err(|source| BuildError::Wal { shard, source })?;
    }
    if rec.poisoned > 0 {
        tracing::warn!(
            shard,
            jobs = rec.poisoned,
            "jobs interrupted by crashes too often (or on their last attempt): buried as poison pills"
        );
    }
    let next = table.next_id();
    Ok((table, next))
}

/// Sets a flag the controller or a shard clears (`demand`, `local_feed`):
/// a load first, so producers store to the shared line only when it was
/// clear, once per tick or idle period rather than once per job.
fn mark(flag: &AtomicBool) {
    if !flag.load(Ordering::Relaxed) {
        flag.store(true, Ordering::Relaxed);
    }
}

/// Appends records to a shard's log before its shard runs.
fn append_now(wal: &Wal, recs: &spindle_core::Records) -> Result<(), spindle_wal::WalError> {
    crate::append::append_frames(&mut wal.appender(), wal, recs, 0, Publish::Wait).map(drop)
}

/// One record of the engine's older log format, applied as the table's.
fn apply_old(table: &mut Table, pri: &mut HashMap<u64, u32>, rec: Rec) {
    let due = |run_at_ms: u64| Time::from_millis(run_at_ms).0;
    let attempts = |a: u32| Counts { reserves: a, ..Counts::default() };
    match rec {
        Rec::Put {
            id,
            queue,
            priority,
            payload,
            run_at_ms,
            attempts: a,
            max_attempts,
            unique_key,
            buried,
        } => {
            pri.insert(id, priority);
            let state = if buried {
                JobState::Buried
            } else if run_at_ms > 0 {
                JobState::Delayed
            } else {
                JobState::Ready
            };
            table.apply(Record::Put(PutRec {
                id,
                queue: &queue,
                pri: priority,
                ttr_s: 0,
                delay_s: 0,
                max_attempts,
                state,
                at: if state == JobState::Delayed { due(run_at_ms) } else { 0 },
                created: Time::from_millis(run_at_ms),
                counts: attempts(a),
                unique: unique_key.as_deref(),
                error: None,
                deadline: None,
                payload: &payload,
            }));
        }
        Rec::Start { id } => table.apply(Record::Reserve { id }),
        Rec::Retry { id, attempts: a, run_at_ms } => table.apply(Record::Move(MoveRec {
            id,
            at: if run_at_ms > 0 { due(run_at_ms) } else { 0 },
            pri: pri.get(&id).copied().unwrap_or(0),
            delay_s: 0,
            state: if run_at_ms > 0 { JobState::Delayed } else { JobState::Ready },
            counts: attempts(a),
            error: None,
        })),
        Rec::Bury { id, attempts: a, reason } => table.apply(Record::Move(MoveRec {
            id,
            at: 0,
            pri: pri.get(&id).copied().unwrap_or(0),
            delay_s: 0,
            state: JobState::Buried,
            counts: attempts(a),
            error: Some(&reason),
        })),
        Rec::Done { id } => {
            pri.remove(&id);
            table.apply(Record::Delete { id });
        }
        Rec::Dones { ids } => {
            for id in ids {
                pri.remove(&id);
                table.apply(Record::Delete { id });
            }
        }
        Rec::IdMark { next_id } => table.apply(Record::IdMark { next_id }),
    }
}

impl Engine {
    /// Starts configuring an engine.
    pub fn builder() -> EngineBuilder {
        EngineBuilder::default()
    }

    pub(crate) fn start(b: EngineBuilder) -> Result<Engine, BuildError> {
        let durability = b.durability.unwrap_or(if b.data_dir.is_some() {
            Durability::Process
        } else {
            Durability::Memory
        });
        if durability != Durability::Memory && b.data_dir.is_none() {
            return Err(BuildError::Config(format!(
                "{durability:?} durability needs a data_dir; use Durability::Memory to run without disk"
            )));
        }
        let cores = crate::pin::allowed_cores();
        let mut n = b.shards.unwrap_or_else(|| cores.len().max(1));
        if n == 0 || n > 4096 {
            return Err(BuildError::Config(format!("shards must be 1..=4096, not {n}")));
        }
        // Never strand a shard directory written by a run with more shards.
        let dir = if durability == Durability::Memory { None } else { b.data_dir.clone() };
        if let Some(dir) = &dir {
            b.data_access
                .prepare_dir(dir)
                .map_err(|source| BuildError::DataDir { dir: dir.clone(), source })?;
            while shard_dir(dir, n).join("LOCK").exists() || has_segments(&shard_dir(dir, n)) {
                tracing::warn!(
                    shard = n,
                    "data dir has more shards than configured; running them too"
                );
                n += 1;
            }
        }
        let policy = match durability {
            Durability::Sync => SyncPolicy::Always,
            _ => SyncPolicy::Interval(b.flush_interval),
        };
        let epoch = Instant::now();
        let clock = spindle_core::Clock::starting_at(epoch);
        let cfg = Arc::new(Config {
            durability,
            compact_after_segments: b.compact_after_segments.max(2),
            stealing: b.stealing,
            lane: b.lane,
            idle_spin: b.idle_spin,
            stall_factor: b.stall_factor,
            stall_min: b.stall_min,
            max_blocking: b.max_blocking,
            epoch,
            clock,
            clock_epoch: clock.at(epoch),
            tsc: crate::tsc::Tsc::calibrate(),
            policy: RetryPolicy {
                max_attempts: crate::job::DEFAULT_MAX_ATTEMPTS,
                backoff_base: b.retry_base,
                backoff_cap: b.retry_cap,
                poison_after: b.poison_after,
                interruptions_use_attempts: true,
            },
            close_errors: Mutex::new(None),
        });

        let mut wals = Vec::with_capacity(n);
        let mut markers = Vec::with_capacity(n);
        let mut recovered = Vec::with_capacity(n);
        let mut next_id = 1u64;
        let mut id_gap = 0u64;
        let (mut live, mut bytes) = (0u64, 0u64);
        // Each shard's run marker names the job it was running when the
        // last run stopped (lane.rs step 3): possibly another shard's job,
        // which it had stolen. All are read before any log is replayed.
        let mut running: Vec<u64> = Vec::new();
        if let Some(dir) = &dir {
            for i in 0..n {
                let sd = shard_dir(dir, i);
                b.data_access
                    .prepare_dir(&sd)
                    .map_err(|source| BuildError::Wal { shard: i, source })?;
                let (m, was) = spindle_wal::RunMarker::open(&sd, b.data_access)
                    .map_err(|source| BuildError::Wal { shard: i, source })?;
                if was != 0 {
                    running.push(was);
                }
                markers.push(Some(m));
            }
        }
        for i in 0..n {
            match &dir {
                Some(dir) => {
                    let opts = WalOptions {
                        shard: i as u32,
                        segment_size: b.segment_size,
                        sync: policy,
                        recovery: b.recovery,
                        access: b.data_access,
                        ..WalOptions::default()
                    };
                    let (wal, report) = Wal::open(shard_dir(dir, i), opts)
                        .map_err(|source| BuildError::Wal { shard: i, source })?;
                    // The log opens on a full disk (its records can be
                    // read), but a shard that cannot write its first
                    // segment could log nothing: refuse to start.
                    wal.ensure_room(0).map_err(|source| BuildError::Wal { shard: i, source })?;
                    if let Some(t) = &report.truncated {
                        tracing::warn!(shard = i, segment = t.segment, offset = t.offset,
                            bytes_dropped = t.bytes_dropped, reason = %t.reason, "shard log was cut at damage");
                        // The cut records may hold the highest ids handed
                        // out: skip past every id they could hold (a record
                        // takes at least 32 bytes), so none is reused.
                        id_gap += t.bytes_dropped / MIN_RECORD_BYTES + 1;
                    }
                    let (table, hi) = replay(&wal, i, &cfg, &running)?;
                    next_id = next_id.max(hi);
                    let tot = table.totals();
                    live += tot.jobs;
                    bytes += tot.bytes;
                    wals.push(Some(Arc::new(wal)));
                    recovered.push(table);
                }
                None => {
                    wals.push(None);
                    markers.push(None);
                    recovered.push(new_table(&cfg, i));
                }
            }
        }
        // The recovery decisions (interruptions included) are in the logs:
        // the markers have been read for good.
        for m in markers.iter().flatten() {
            m.set(0);
        }
        let next_id = next_id.saturating_add(id_gap);
        if id_gap > 0 {
            // Ids a cut tail may have held are skipped; the mark makes the
            // skip survive the next start too.
            for (i, (table, wal)) in recovered.iter_mut().zip(&wals).enumerate() {
                let Some(wal) = wal else { continue };
                table.skip_ids(next_id.saturating_sub(table.next_id()));
                let mut out = spindle_core::Records::new();
                table.mark_ids(&mut out);
                append_now(wal, &out).map_err(|source| BuildError::Wal { shard: i, source })?;
            }
        }
        let counters = Arc::new(Counters {
            next_id: AtomicU64::new(next_id),
            jobs: AtomicU64::new(live),
            bytes: AtomicU64::new(bytes),
            max_jobs: b.max_jobs,
            max_bytes: b.max_bytes,
        });

        let cancels = Arc::new(crate::cancel::Cancels::default());
        // Queues the logs give limits or schedules live on that shard.
        let homes = crate::paid::Homes::default();
        for (i, table) in recovered.iter().enumerate() {
            for (q, name) in table.queues() {
                if table.is_limited(q) {
                    homes.set(name, i);
                }
            }
            for s in table.schedules() {
                homes.set(&s.queue_name, i);
            }
        }
        let mut workers = Vec::with_capacity(n);
        let mut shared = Vec::with_capacity(n);
        for (i, (wal, marker)) in wals.into_iter().zip(markers).enumerate() {
            let worker = Worker::new_fifo();
            shared.push(Arc::new(ShardShared {
                idx: i,
                inbox: SegQueue::new(),
                parker: OnceLock::new(),
                stealer: worker.stealer(),
                wal,
                appenders: ArrayQueue::new(64),
                snapshot: Mutex::new((0, stats::Snapshot::default())),
                snapshot_cv: Condvar::new(),
                snapshot_req: AtomicU64::new(0),
                exited: AtomicBool::new(false),
                stopping: AtomicBool::new(false),
                epoch: AtomicUsize::new(0),
                inflight: [AtomicUsize::new(0), AtomicUsize::new(0)],
                handler_since: AtomicU64::new(0),
                lane: crate::lane::Lane::new(),
                marker,
                core: AtomicUsize::new(usize::MAX),
                demand: AtomicBool::new(false),
                local_feed: AtomicBool::new(false),
                spinning: AtomicBool::new(false),
                active: AtomicBool::new(true),
                gauges: Default::default(),
                pool: Default::default(),
                put_keep: AtomicU64::new(0),
                outcome_keep: AtomicU64::new(0),
                cancels: cancels.clone(),
            }));
            workers.push(worker);
        }
        let all: Arc<[Arc<ShardShared>]> = shared.into();
        let max_workers = b.max_workers.unwrap_or(n).clamp(1, n);
        let settings = crate::lag::Settings::new(b.min_workers, max_workers, b.latency_target);
        let initial = match b.workers {
            crate::Workers::Lag => settings.min,
            crate::Workers::Static(k) => k.clamp(1, n),
        };
        let initial = if b.stealing { initial } else { n };
        for (i, s) in all.iter().enumerate() {
            s.active.store(i < initial, Ordering::SeqCst);
        }
        let max_active = if b.stealing {
            match b.workers {
                crate::Workers::Lag => max_workers,
                crate::Workers::Static(_) => initial,
            }
        } else {
            n
        };
        let ctl = Arc::new(control::Pool::new(n, initial, max_active, settings.target_wait));
        let pin = b.pin && n <= cores.len();
        if b.pin && !pin {
            tracing::info!(
                shards = n,
                cores = cores.len(),
                "more shards than cores: running unpinned"
            );
        }
        let mut threads = Vec::with_capacity(n);
        for (i, (worker, table)) in workers.into_iter().zip(recovered).enumerate() {
            let shard = Shard::new(
                all[i].clone(),
                all.clone(),
                cfg.clone(),
                counters.clone(),
                worker,
                table,
                ctl.clone(),
            );
            let core = if pin { cores.get(i).copied() } else { None };
            let handle = std::thread::Builder::new()
                .name(format!("spindle-shard-{i}"))
                .spawn(move || shard.run(core))
                .map_err(BuildError::Thread)?;
            let _ = all[i].parker.set(Parker::new(handle.thread().clone()));
            // The shard may have parked before its parker existed; wake it.
            all[i].notify();
            threads.push(handle);
        }
        let controller = control::Controller {
            shards: all.clone(),
            pool: ctl.clone(),
            policy: b.workers,
            settings,
            stealing: b.stealing,
            tick: b.tick,
            max_blocking: b.max_blocking,
            epoch: cfg.epoch,
        };
        let controller = std::thread::Builder::new()
            .name("spindle-controller".into())
            .spawn(move || controller.run())
            .map_err(BuildError::Thread)?;
        let _ = ctl.thread.set(controller.thread().clone());
        let engine = Engine {
            inner: Arc::new(Inner {
                ctl,
                controller: Mutex::new(Some(controller)),
                shards: all,
                threads: Mutex::new(threads),
                cfg,
                counters,
                max_payload: b.max_payload,
                rr: AtomicUsize::new(0),
                homes,
                accepting: AtomicBool::new(true),
            }),
        };
        Ok(engine)
    }

    /// Registers the handler for `queue` (replacing any earlier one). May be
    /// called at any time; jobs already waiting in the queue start running.
    pub fn register(&self, queue: &str, handler: impl Handler) -> Result<(), SubmitError> {
        self.register_as(queue, Arc::new(handler), false)
    }

    /// Registers a handler that blocks (I/O, sleeps, calls to other
    /// services): its jobs run on each shard's elastic blocking pool, sized
    /// by the lag controller up to `max_blocking` threads per shard, so they
    /// never occupy a core worker.
    pub fn register_blocking(&self, queue: &str, handler: impl Handler) -> Result<(), SubmitError> {
        self.register_as(queue, Arc::new(handler), true)
    }

    fn register_as(
        &self,
        queue: &str,
        h: Arc<dyn Handler>,
        blocking: bool,
    ) -> Result<(), SubmitError> {
        validate_queue(queue)?;
        let q = self.queue_name(queue);
        for s in self.inner.shards.iter() {
            s.send(Msg::Register(q.clone(), h.clone(), blocking));
        }
        Ok(())
    }

    fn queue_name(&self, queue: &str) -> Arc<str> {
        // Each producer thread keeps the names it used (no lock, no shared
        // map): a submit to a known queue allocates no name. The cache is
        // cleared when it grows past QUEUE_CACHE names (a producer cycling
        // through unbounded names then pays one allocation per submit).
        QUEUE_NAMES.with(|cell| {
            let Ok(mut names) = cell.try_borrow_mut() else { return Arc::from(queue) };
            if let Some(q) = names.get(queue) {
                return q.clone();
            }
            if names.len() >= QUEUE_CACHE {
                names.clear();
            }
            let q: Arc<str> = Arc::from(queue);
            names.insert(Box::from(queue), q.clone());
            q
        })
    }

    fn check(&self, job: &Job) -> Result<(), SubmitError> {
        if !self.inner.accepting.load(Ordering::Acquire) {
            return Err(SubmitError::ShuttingDown);
        }
        validate_queue(&job.queue)?;
        if job.deadline.is_some_and(|d| d <= self.inner.cfg.clock.now()) {
            return Err(SubmitError::DeadlinePassed);
        }
        if job.payload.len() > self.inner.max_payload {
            return Err(SubmitError::PayloadTooLarge {
                len: job.payload.len(),
                max: self.inner.max_payload,
            });
        }
        Ok(())
    }

    fn new_job(&self, job: Job, id: u64) -> NewJob {
        let created = self.inner.cfg.clock.now();
        let queue = self.name_of(&job);
        Self::new_job_at(job, id, created, queue)
    }

    /// The name `job`'s queue travels as (`name.rs`): borrowed if it lives
    /// as long as the program, else shared from this thread's names.
    fn name_of(&self, job: &Job) -> Name {
        match &job.queue {
            std::borrow::Cow::Borrowed(s) => Name::Static(s),
            std::borrow::Cow::Owned(s) => Name::Shared(self.queue_name(s)),
        }
    }

    /// A job submitted at `created` to the queue named `queue`.
    fn new_job_at(job: Job, id: u64, created: Time, queue: Name) -> NewJob {
        NewJob {
            id,
            queue,
            priority: job.priority,
            payload: job.payload,
            created,
            due: (!job.delay.is_zero()).then(|| created.plus(job.delay)),
            max_attempts: job.max_attempts,
            unique_key: job.unique_key.map(Into::into),
            deadline: job.deadline.map_or(0, |t| t.0),
            homed: false,
        }
    }

    fn pick_shard(&self, job: &Job) -> usize {
        let n = self.inner.shards.len();
        if let Some(home) = self.inner.homes.get(&job.queue) {
            return home;
        }
        match &job.unique_key {
            Some(k) => {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                (&job.queue, k).hash(&mut h);
                (h.finish() % n as u64) as usize
            }
            None => self
                .local_shard()
                .or_else(|| self.spinning_shard())
                .unwrap_or_else(|| self.next_active_shard()),
        }
    }

    /// An active shard spinning idle: it takes a single job without a
    /// wake-up, on its own core.
    fn spinning_shard(&self) -> Option<usize> {
        let shards = &self.inner.shards;
        if shards.len() < 2 {
            return None;
        }
        shards
            .iter()
            .find(|s| {
                s.spinning.load(Ordering::Relaxed)
                    && s.active.load(Ordering::Relaxed)
                    && s.handler_since.load(Ordering::Relaxed) == 0
            })
            .map(|s| s.idx)
    }

    /// The active shard pinned to the core the caller runs on, unless it is
    /// inside one handler for longer than [`STALLED`]: a single job handed
    /// over on one core skips a cross-core wake-up (`docs/architecture.md`,
    /// "Same-core submit"); its shard's idle peers can still steal it.
    /// Marks the shard's `demand` (active or not) and, when it is chosen,
    /// its `local_feed` (`control.rs` step 3).
    fn local_shard(&self) -> Option<usize> {
        let shards = &self.inner.shards;
        if shards.len() < 2 {
            return None;
        }
        let cpu = crate::pin::current_cpu()?;
        let s = shards.iter().find(|s| s.core.load(Ordering::Relaxed) == cpu)?;
        mark(&s.demand);
        if !s.active.load(Ordering::Relaxed) {
            return None;
        }
        let since = s.handler_since.load(Ordering::Relaxed);
        let now = self.inner.cfg.epoch.elapsed().as_nanos() as u64;
        if since != 0 && now.saturating_sub(since) >= STALLED.as_nanos() as u64 {
            return None;
        }
        mark(&s.local_feed);
        Some(s.idx)
    }

    /// Round robin over the active shards (`control.rs`: producers never
    /// wake a shard the controller parked), skipping one that has been
    /// inside a single handler for longer than [`STALLED`] (its inbox would
    /// not be read until the handler returns), unless every active one is.
    fn next_active_shard(&self) -> usize {
        let n = self.inner.shards.len();
        let first = self.inner.rr.fetch_add(1, Ordering::Relaxed);
        if n == 1 {
            return 0;
        }
        let now = self.inner.cfg.epoch.elapsed().as_nanos() as u64;
        let mut fallback = None;
        for k in 0..n {
            let i = (first + k) % n;
            let s = &self.inner.shards[i];
            if !s.active.load(Ordering::Relaxed) {
                continue;
            }
            let since = s.handler_since.load(Ordering::Relaxed);
            if since == 0 || now.saturating_sub(since) < STALLED.as_nanos() as u64 {
                return i;
            }
            fallback.get_or_insert(i);
        }
        fallback.unwrap_or(first % n)
    }

    /// Submits one job; returns once it is as durable as the engine's
    /// [`Durability`] promises.
    pub fn submit(&self, job: Job) -> Result<JobId, SubmitError> {
        self.check(&job)?;
        let len = job.payload.len() as u64;
        self.inner.counters.reserve(1, len)?;
        let home = self.inner.homes.get(&job.queue);
        let shard = &self.inner.shards[home.unwrap_or_else(|| self.pick_shard(&job))];
        let id = self.inner.counters.next_id.fetch_add(1, Ordering::AcqRel);
        let unique = job.unique_key.is_some();
        let mut nj = self.new_job(job, id);
        nj.homed = home.is_some();
        if unique {
            let reply: Arc<UniqueReply> = Arc::new(ArrayQueue::new(1));
            shard.send(Msg::Unique(nj, reply.clone(), std::thread::current()));
            let (id, lsn) = loop {
                match reply.pop() {
                    Some(r) => break r?,
                    // The shard stopped before reading the message.
                    None if shard.exited.load(Ordering::Acquire) => match reply.pop() {
                        Some(r) => break r?,
                        None => return Err(SubmitError::ShuttingDown),
                    },
                    // Woken by the shard's unpark; the timeout only guards
                    // against a shard that exits between the checks.
                    None => std::thread::park_timeout(Duration::from_millis(10)),
                }
            };
            self.wait_durable(shard, lsn)?;
            return Ok(id);
        }
        // Held from before the append until the job is in the inbox, so
        // compaction never releases a record the shard has not seen yet.
        let _inflight = shard.enter();
        if let Some(wal) = &shard.wal {
            let lsn = match shard.log_puts(wal, std::slice::from_ref(&nj), self.put_publish()) {
                Ok(lsn) => lsn,
                Err(e) => {
                    self.inner.counters.release(1, len);
                    return Err(e);
                }
            };
            if let Err(e) = self.wait_durable(shard, lsn) {
                // The record is in the log and the job will run; report the
                // sync failure (the log is failed from now on).
                shard.send(Msg::Job(nj));
                return Err(e);
            }
        }
        shard.send(Msg::Job(nj));
        Ok(JobId(id))
    }

    /// How a producer's `Put`s wait for earlier appenders: not at all under
    /// `Sync`, where the producer waits for them to be durable anyway.
    fn put_publish(&self) -> Publish {
        match self.inner.cfg.durability {
            Durability::Sync => Publish::Defer,
            _ => Publish::Wait,
        }
    }

    fn wait_durable(&self, shard: &ShardShared, lsn: u64) -> Result<(), SubmitError> {
        if self.inner.cfg.durability == Durability::Sync {
            if let Some(wal) = &shard.wal {
                wal.wait_durable(lsn)?;
            }
        }
        Ok(())
    }

    /// Submits many jobs with one log pass and one sync. Jobs without a
    /// unique key go to one shard together (stealing spreads them); jobs with
    /// one are submitted one by one. Stops at the first error: the ids
    /// returned so far are accepted, the rest are not.
    pub fn submit_batch(&self, jobs: Vec<Job>) -> Result<Vec<JobId>, SubmitError> {
        let mut ids = Vec::with_capacity(jobs.len());
        // Jobs with a unique key, or of a queue with a home shard
        // (`paid.rs`), go one by one to the shard they belong on.
        let homes = &self.inner.homes;
        let single = |j: &Job| j.unique_key.is_some() || homes.get(&j.queue).is_some();
        let (plain, unique): (Vec<Job>, Vec<Job>) = if !jobs.iter().any(single) {
            (jobs, Vec::new())
        } else {
            jobs.into_iter().partition(|j| !single(j))
        };
        // Checked once per run of jobs to the same queue; `runs` holds where
        // each run begins (one name comparison per job, here only).
        let mut checked: Option<&str> = None;
        let mut runs: Vec<usize> = Vec::new();
        for (k, j) in plain.iter().enumerate() {
            if checked != Some(&*j.queue) {
                self.check(j)?;
                checked = Some(&*j.queue);
                runs.push(k);
            } else if j.payload.len() > self.inner.max_payload {
                return Err(SubmitError::PayloadTooLarge {
                    len: j.payload.len(),
                    max: self.inner.max_payload,
                });
            }
        }
        if !plain.is_empty() {
            let bytes: u64 = plain.iter().map(|j| j.payload.len() as u64).sum();
            let n = plain.len() as u64;
            self.inner.counters.reserve(n, bytes)?;
            let shard = &self.inner.shards[self.next_active_shard()];
            let first = self.inner.counters.next_id.fetch_add(n, Ordering::AcqRel);
            let _inflight = shard.enter();
            // One clock reading and one name lookup per run of a queue.
            let created = self.inner.cfg.clock.now();
            let mut name: Option<Name> = None;
            let mut next_run = runs.iter().copied().peekable();
            let batch: Vec<NewJob> = plain
                .into_iter()
                .enumerate()
                .map(|(k, job)| {
                    let q = match &name {
                        Some(n) if next_run.peek() != Some(&k) => n.clone(),
                        _ => {
                            next_run.next();
                            name.insert(self.name_of(&job)).clone()
                        }
                    };
                    Self::new_job_at(job, first + k as u64, created, q)
                })
                .collect();
            let mut last_lsn = 0;
            if let Some(wal) = &shard.wal {
                match shard.log_puts(wal, &batch, self.put_publish()) {
                    Ok(lsn) => last_lsn = lsn,
                    Err(e) => {
                        // Frames of the batch may be in the log: those jobs
                        // would come back after a restart; the engine does
                        // not take any of them now (at-least-once).
                        self.inner.counters.release(n, bytes);
                        return Err(e);
                    }
                }
            }
            ids.extend(batch.iter().map(|j| JobId(j.id)));
            let synced = self.wait_durable(shard, last_lsn);
            shard.send(Msg::Jobs(batch));
            synced?;
        }
        for j in unique {
            ids.push(self.submit(j)?);
        }
        Ok(ids)
    }

    /// A snapshot of queues, shards and latencies. Each shard answers
    /// after taking in every message sent to it before this call, so jobs
    /// submitted (and outcomes reported) before `stats()` are counted. A shard
    /// busy in a handler for longer than 500 ms contributes its last
    /// published counters instead (at most 100 ms old
    /// unless it is stuck).
    pub fn stats(&self) -> Stats {
        let wants: Vec<u64> = self
            .inner
            .shards
            .iter()
            .map(|s| {
                let want = s.snapshot_req.fetch_add(1, Ordering::AcqRel) + 1;
                s.notify();
                want
            })
            .collect();
        let deadline = Instant::now() + STATS_WAIT;
        let mut snaps = Vec::with_capacity(wants.len());
        for (s, want) in self.inner.shards.iter().zip(wants) {
            let mut guard = s.snapshot.lock().unwrap_or_else(|p| p.into_inner());
            while guard.0 < want && !s.exited.load(Ordering::Acquire) {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                guard =
                    s.snapshot_cv.wait_timeout(guard, left).unwrap_or_else(|p| p.into_inner()).0;
            }
            snaps.push(guard.1.clone());
        }
        let c = &self.inner.counters;
        let mut st =
            stats::merge(&snaps, c.jobs.load(Ordering::Acquire), c.bytes.load(Ordering::Acquire));
        st.workers = self.inner.ctl.stats.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let desired = self.inner.ctl.desired.lock().unwrap_or_else(|p| p.into_inner());
        for (name, q) in st.queues.iter_mut() {
            q.desired_workers = desired.get(name).copied().unwrap_or(0);
        }
        st
    }

    /// The core worker pool and the lag controller's last tick, without
    /// asking the shards for anything (cheap enough to poll often; `stats()`
    /// includes the same).
    pub fn workers(&self) -> crate::stats::WorkerStats {
        self.inner.ctl.stats.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.inner.shards.len()
    }

    /// The durability mode in force.
    pub fn durability(&self) -> Durability {
        self.inner.cfg.durability
    }

    /// Stops intake, lets each shard finish the job it is running, and then:
    /// with `Process` or `Sync`, leaves every unfinished job in the log (it
    /// comes back on the next build) and syncs and closes the logs; with
    /// `Memory`, first runs the ready jobs that have a handler, and drops
    /// delayed jobs and jobs of queues without a handler (there is nowhere to
    /// keep them). Further submits fail with `ShuttingDown`.
    pub fn shutdown(&self) -> Result<(), ShutdownError> {
        self.inner.stop_accepting();
        self.inner.stop_controller();
        let threads =
            std::mem::take(&mut *self.inner.threads.lock().unwrap_or_else(|p| p.into_inner()));
        for s in self.inner.shards.iter() {
            s.send(Msg::Shutdown);
        }
        let mut first_err = None;
        for (i, t) in threads.into_iter().enumerate() {
            if t.join().is_err() && first_err.is_none() {
                first_err = Some(ShutdownError::ShardPanicked(i));
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        if let Some((shard, msg)) =
            self.inner.cfg.close_errors.lock().unwrap_or_else(|p| p.into_inner()).take()
        {
            return Err(ShutdownError::Wal { shard, source: spindle_wal::WalError::Failed(msg) });
        }
        Ok(())
    }
}

fn has_segments(dir: &std::path::Path) -> bool {
    std::fs::read_dir(dir)
        .map(|mut it| {
            it.any(|e| e.is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".wal")))
        })
        .unwrap_or(false)
}

impl Inner {
    /// Submits fail from now on; every shard is told first (its
    /// `stopping`), so whatever sees a submit fail sees that too.
    fn stop_accepting(&self) {
        for s in self.shards.iter() {
            s.stopping.store(true, Ordering::Release);
        }
        self.accepting.store(false, Ordering::Release);
    }

    fn stop_controller(&self) {
        self.ctl.stop.store(true, Ordering::Release);
        let handle = self.controller.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = handle {
            h.thread().unpark();
            let _ = h.join();
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop_controller();
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        if threads.is_empty() {
            return;
        }
        self.stop_accepting();
        for s in self.shards.iter() {
            s.send(Msg::Shutdown);
        }
        for t in threads {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// The per-queue arrivals behind `desired_workers` count every job
    /// that became ready: put ready, and delayed ones when they came due
    /// (the table's `readied`; before, due jobs were left out).
    #[test]
    fn jobs_that_come_due_count_as_arrivals() {
        let engine = Engine::builder().durability(Durability::Memory).shards(3).build().unwrap();
        for i in 0..10u8 {
            let j = Job::new("remote", vec![i]);
            let j = if i % 2 == 1 { j.delay(Duration::from_millis(1)) } else { j };
            engine.submit(j).unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        // Polls the stats (each call refreshes every shard's snapshot)
        // until the delayed jobs have come due.
        while engine.stats().queues.get("remote").map_or(0, |q| q.ready) < 10 {
            assert!(Instant::now() < deadline, "the delayed jobs never came due");
            std::thread::yield_now();
        }
        let arrived: u64 = engine
            .inner
            .shards
            .iter()
            .map(|s| {
                let g = s.snapshot.lock().unwrap();
                g.1.counts.get("remote").map_or(0, |c| c.arrived)
            })
            .sum();
        assert_eq!(arrived, 10);
        engine.shutdown().unwrap();
    }

    /// A job run from the lane counts once, at its admission, also when
    /// its outcome takes it into the table (there its `readied` would
    /// count it a second time).
    #[test]
    fn a_lane_job_counts_as_one_arrival_whatever_its_outcome() {
        let engine = Engine::builder().durability(Durability::Memory).shards(3).build().unwrap();
        engine
            .register("local", |j: &JobRef<'_>| {
                if j.payload()[0] % 2 == 1 {
                    Outcome::Bury("odd".into())
                } else {
                    Outcome::Done
                }
            })
            .unwrap();
        let jobs = (0..100u8).map(|i| Job::new("local", vec![i])).collect();
        engine.submit_batch(jobs).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let arrived = || -> u64 {
            let s = engine.stats();
            let q = &s.queues["local"];
            assert!(Instant::now() < deadline, "the jobs never ran: {q:?}");
            if q.completed + q.buried < 100 {
                return 0;
            }
            engine
                .inner
                .shards
                .iter()
                .map(|s| s.snapshot.lock().unwrap().1.counts.get("local").map_or(0, |c| c.arrived))
                .sum()
        };
        let mut n = arrived();
        while n == 0 {
            std::thread::yield_now();
            n = arrived();
        }
        assert_eq!(n, 100);
        engine.shutdown().unwrap();
    }

    /// A shard log written by the engine before it moved onto the job
    /// table (format 1, WAL kind 1) still opens: its jobs come back with
    /// their attempts, burials and deletions, and new jobs follow them.
    #[test]
    fn a_log_of_the_older_engine_format_recovers() {
        let dir = tempfile::tempdir().unwrap();
        {
            let opts = WalOptions { shard: 0, ..WalOptions::default() };
            let (wal, _) = Wal::open(shard_dir(dir.path(), 0), opts).unwrap();
            let mut app = wal.appender();
            let put = |id: u64, priority: u32, run_at_ms: u64| Rec::Put {
                id,
                queue: "old".into(),
                priority,
                payload: format!("job {id}").into_bytes(),
                run_at_ms,
                attempts: 0,
                max_attempts: 3,
                unique_key: (id == 4).then(|| "key".to_string()),
                buried: false,
            };
            let far = u64::MAX / 2_000_000;
            for rec in [
                put(1, 5, 0),
                put(2, 1, 0),
                put(3, 0, 0),
                put(4, 2, far),
                put(5, 0, 0),
                Rec::Start { id: 1 },
                Rec::Retry { id: 1, attempts: 1, run_at_ms: 0 },
                Rec::Start { id: 2 },
                Rec::Bury { id: 2, attempts: 1, reason: "boom".into() },
                Rec::Dones { ids: vec![3] },
                // Job 5 was running when the process died.
                Rec::Start { id: 5 },
                Rec::IdMark { next_id: 10 },
            ] {
                app.append(KIND_REC, &record::encode(&rec).unwrap()).unwrap();
            }
            wal.shutdown().unwrap();
        }
        let engine = Engine::builder()
            .data_dir(dir.path())
            .durability(Durability::Process)
            .shards(1)
            .build()
            .unwrap();
        let st = engine.stats();
        let q = &st.queues["old"];
        // 1 and 5 ready (5 interrupted once), 2 buried, 4 delayed, 3 gone.
        assert_eq!((q.ready, q.buried, q.delayed), (2, 1, 1), "{q:?}");
        // The unique key came back with job 4.
        let dup = engine.submit(Job::new("old", b"x".to_vec()).unique_key("key"));
        assert!(matches!(dup, Err(SubmitError::Duplicate { existing }) if existing.get() == 4));
        let id = engine.submit(Job::new("old", b"new".to_vec())).unwrap();
        assert!(id.get() >= 10, "ids continue after the old mark: {id}");
        let (tx, rx) = std::sync::mpsc::channel();
        let tx = Mutex::new(tx);
        engine
            .register("old", move |j: &JobRef<'_>| {
                tx.lock().unwrap().send((j.id().get(), j.attempt())).unwrap();
                Outcome::Done
            })
            .unwrap();
        let mut ran: Vec<(u64, u32)> =
            (0..3).map(|_| rx.recv_timeout(Duration::from_secs(10)).unwrap()).collect();
        ran.sort_unstable();
        // Attempts: job 1 retried once (its second run), job 5's interrupted
        // run counted.
        assert_eq!(ran, vec![(1, 2), (5, 2), (id.get(), 1)]);
        engine.shutdown().unwrap();
    }
}
