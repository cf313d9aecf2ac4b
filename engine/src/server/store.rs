//! The daemon's job table: beanstalkd's semantics as a single-threaded
//! state machine. The reactor feeds it parsed commands and the time; it
//! writes replies, logs changes, and queues replies for *other*
//! connections (a waiting `reserve` served by someone's `put`).
//!
//! How a job moves (beanstalkd 1.12's rules):
//!
//! 1. `put` makes it `ready` (in its tube's heap ordered by priority, then
//!    id) or `delayed` (in the global timer set by due time).
//! 2. `reserve` takes the most urgent ready job of the connection's watched,
//!    unpaused tubes, or parks the connection in every watched tube's
//!    waiting list. A lease (TTR) starts; it belongs to that connection.
//! 3. `delete`, `release`, `bury`, `touch`, `fail` by the lease holder end
//!    or extend it; anyone may `delete` a job that is not reserved.
//! 4. A lease ends without the holder when TTR passes (the job counts a
//!    timeout and is ready again) or when the connection closes.
//! 5. When a job becomes ready in a tube with waiting connections, the
//!    first waiter is served at once ([`Store::process_queue`]).
//!
//! Every change a restart must see is logged before the reply is written
//! (see `persist.rs`); with `-f0` the reactor also waits for the sync.

use std::collections::{BTreeSet, HashMap};
use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use spindle_wal::{Appender, Wal, WalError};

use super::persist::{self, Counts, DRec, ST_BURIED, ST_DELAYED, ST_READY};
use super::proto::Cmd;
use super::stamp::Stamp;
use crate::idhash::{IdBuild, SeqBuild};

/// A connection, as the store knows it.
pub(crate) type ConnId = usize;

/// beanstalkd's `URGENT_THRESHOLD`: ready jobs below it count as urgent.
const URGENT: u32 = 1024;
/// beanstalkd's `SAFETY_MARGIN`: a reservation this close to its deadline
/// makes `reserve` answer `DEADLINE_SOON`.
const SAFETY_MARGIN: Duration = Duration::from_secs(1);

/// Limits and identity, fixed at start.
#[derive(Debug, Clone)]
pub(crate) struct StoreConfig {
    /// `-z`: the largest body.
    pub max_job_size: u32,
    /// Most live jobs; a put beyond gets `OUT_OF_MEMORY`.
    pub max_jobs: u64,
    /// Most live body bytes; a put beyond gets `OUT_OF_MEMORY`.
    pub max_bytes: u64,
    /// `-s` as reported in stats.
    pub segment_size: u64,
    /// `desired-workers` latency target.
    pub latency_target: Duration,
    /// Version string for `stats`.
    pub version: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    Ready,
    Delayed(Instant),
    Reserved { by: ConnId, deadline: Instant },
    Buried(u64),
}

/// A job. The table holds millions, so it is kept to 128 bytes, one of
/// mimalloc's size classes (it was 200, in the 224-byte class): its id is
/// the table's key, times are 8-byte [`Stamp`]s, and what few jobs have
/// (a unique key, an error text) is boxed in [`Extra`]. Under `put-batch`
/// the kernel zeroing fresh pages for the growing table was ~11% of the
/// daemon's CPU; a test holds the size.
#[derive(Debug)]
pub(crate) struct Job {
    pub tube: Arc<str>,
    pub body: Box<[u8]>,
    pub state: State,
    pub created: Stamp,
    /// When it entered its current state: became ready (for the wait
    /// histogram) or was reserved (for service time).
    pub since: Stamp,
    /// LSN of this job's latest `Put` record (0 without a log).
    pub lsn: u64,
    pub extra: Option<Box<Extra>>,
    pub pri: u32,
    pub delay_s: u32,
    pub ttr_s: u32,
    /// Bytes that record takes in the log (payload plus frame header).
    pub rec_len: u32,
    pub counts: Counts,
}

/// The rarely set part of a job.
#[derive(Debug, Default)]
pub(crate) struct Extra {
    pub unique: Option<Box<str>>,
    pub last_error: Option<String>,
}

impl Job {
    pub(crate) fn unique(&self) -> Option<&str> {
        self.extra.as_ref().and_then(|x| x.unique.as_deref())
    }

    pub(crate) fn last_error(&self) -> Option<&str> {
        self.extra.as_ref().and_then(|x| x.last_error.as_deref())
    }

    /// Sets (or clears) the last error; the box goes when it is empty.
    pub(crate) fn set_last_error(&mut self, e: Option<String>) {
        match (&mut self.extra, e) {
            (Some(x), e) => {
                x.last_error = e;
                if x.unique.is_none() && x.last_error.is_none() {
                    self.extra = None;
                }
            }
            (None, Some(e)) => {
                self.extra = Some(Box::new(Extra { unique: None, last_error: Some(e) }));
            }
            (None, None) => {}
        }
    }
}

/// Retry policy for `fail`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Policy {
    pub max_attempts: u32,
    pub backoff_ms: u64,
    pub backoff_max_ms: u64,
    /// Set by `tube-config`: TTR timeouts then count towards max attempts
    /// (poison pills are buried); without it beanstalkd's rules hold.
    pub configured: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Policy { max_attempts: 25, backoff_ms: 1000, backoff_max_ms: 3_600_000, configured: false }
    }
}

#[derive(Debug)]
pub(crate) struct Tube {
    pub name: Arc<str>,
    pub ready: BTreeSet<(u32, u64)>,
    pub delayed: BTreeSet<(Instant, u64)>,
    pub buried: BTreeSet<(u64, u64)>,
    pub urgent: u64,
    pub reserved: u64,
    /// Live jobs of this tube in any state (they keep the tube alive).
    pub jobs: u64,
    pub total_jobs: u64,
    pub cmd_delete: u64,
    pub cmd_pause: u64,
    pub pause: Duration,
    pub unpause_at: Option<Instant>,
    pub using: u64,
    pub watching: u64,
    pub waiting_ct: u64,
    /// Waiting connections, kept exactly as beanstalkd's `Ms` set: append
    /// on wait, swap-remove on leaving, and `take` with a rotating cursor
    /// (`waiting_last`), which fixes the order waiters are served in.
    pub waiting: Vec<ConnId>,
    pub waiting_last: usize,
    pub policy: Policy,
    pub uniques: HashMap<Box<str>, u64>,
    /// Microseconds from ready to reserved (None only if hdrhistogram
    /// rejected the fixed bounds, which it does not).
    pub wait_us: Option<Histogram<u64>>,
    /// Little's-law inputs, smoothed per second.
    pub done_window: u64,
    pub service_ns_window: u128,
    pub rate: f64,
    pub service_s: f64,
}

impl Tube {
    /// The tube's side of job `id` becoming ready: its ready set and urgent
    /// count. Returns whether the job is urgent and whether connections
    /// wait on this tube (the store's counters follow from these).
    fn add_ready(&mut self, pri: u32, id: u64) -> (bool, bool) {
        self.ready.insert((pri, id));
        let urgent = pri < URGENT;
        if urgent {
            self.urgent += 1;
        }
        (urgent, self.waiting_ct > 0)
    }

    fn new(name: Arc<str>) -> Tube {
        Tube {
            name,
            ready: BTreeSet::new(),
            delayed: BTreeSet::new(),
            buried: BTreeSet::new(),
            urgent: 0,
            reserved: 0,
            jobs: 0,
            total_jobs: 0,
            cmd_delete: 0,
            cmd_pause: 0,
            pause: Duration::ZERO,
            unpause_at: None,
            using: 0,
            watching: 0,
            waiting_ct: 0,
            waiting: Vec::new(),
            waiting_last: 0,
            policy: Policy::default(),
            uniques: HashMap::new(),
            // Created at the first reservation: ~27 KB each, and clients
            // may create many tubes they never reserve from.
            wait_us: None,
            done_window: 0,
            service_ns_window: 0,
            rate: 0.0,
            service_s: 0.0,
        }
    }

    fn paused(&self, now: Instant) -> bool {
        self.unpause_at.is_some_and(|t| t > now)
    }

    fn unused(&self) -> bool {
        self.jobs == 0 && self.using == 0 && self.watching == 0 && self.waiting_ct == 0
    }
}

/// A waiting `reserve`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Wait {
    pub seq: u64,
    /// Its entry in the store's wake-up set.
    pub wake: Option<Instant>,
    /// `reserve-batch`: how many jobs at most (1 for plain reserve).
    pub batch: u32,
}

#[derive(Debug)]
pub(crate) struct Conn {
    pub use_tube: Arc<str>,
    pub watch: Vec<Arc<str>>,
    pub reserved: Vec<u64>,
    pub wait: Option<Wait>,
    pub producer: bool,
    pub worker: bool,
}

/// Global command counters, in `stats` order.
#[derive(Debug, Default, Clone)]
pub(crate) struct Counters {
    pub put: u64,
    pub peek: u64,
    pub peek_ready: u64,
    pub peek_delayed: u64,
    pub peek_buried: u64,
    pub reserve: u64,
    pub reserve_timeout: u64,
    pub delete: u64,
    pub release: u64,
    pub use_: u64,
    pub watch: u64,
    pub ignore: u64,
    pub bury: u64,
    pub kick: u64,
    pub touch: u64,
    pub stats: u64,
    pub stats_job: u64,
    pub stats_tube: u64,
    pub list_tubes: u64,
    pub list_tube_used: u64,
    pub list_tubes_watched: u64,
    pub pause_tube: u64,
    pub job_timeouts: u64,
    pub total_jobs: u64,
    pub total_connections: u64,
    pub records_written: u64,
    pub records_migrated: u64,
}

/// What the connection does after a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    /// Reply written; read the next command.
    Go,
    /// Parked in `reserve`: read nothing more until served.
    Wait,
    /// Close after flushing (`quit`).
    Close,
}

/// The write-ahead log, when the daemon has a data directory.
pub(crate) struct Log {
    pub wal: Arc<Wal>,
    /// Deletes released segments off the loop thread: `release_below`
    /// unmaps and unlinks whole segment files, which took 100-200 ms per
    /// compaction on this machine's ext4 (measured with 10 MiB segments),
    /// a stall every connection would see.
    releaser: Option<std::sync::mpsc::Sender<u64>>,
    app: Appender,
    buf: rkyv::util::AlignedVec,
    /// Every job's latest `Put` as (LSN, id), in LSN order (appends come
    /// in LSN order, so an insert is a push). Entries of jobs deleted or
    /// logged again since are dropped lazily, when compaction reaches them
    /// (a job's entry is current while `job.lsn` equals it): a per-put
    /// `BTreeMap` insert and per-delete remove cost ~10% of a `put-batch`.
    /// Compaction pops every entry below its cut, so the stale ones are
    /// bounded by the records in the log's unreleased segments.
    by_lsn: std::collections::VecDeque<(u64, u64)>,
    /// Sum of the live jobs' `rec_len`.
    live_bytes: u64,
    /// Compaction in progress: live jobs logged below this LSN are being
    /// rewritten at the tail, a batch per tick.
    pending_cut: Option<u64>,
    pending_release: Option<(u64, u64)>,
    /// Highest LSN appended, for `-f0` waits.
    pub last_lsn: Option<u64>,
    /// A failed append: every later change is refused.
    pub failed: Option<String>,
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log").field("last_lsn", &self.last_lsn).finish_non_exhaustive()
    }
}

impl Log {
    pub(crate) fn new(wal: Wal) -> Log {
        let app = wal.appender();
        let wal = Arc::new(wal);
        let (tx, rx) = std::sync::mpsc::channel::<u64>();
        let w = wal.clone();
        let releaser = std::thread::Builder::new()
            .name("spindled-release".into())
            .spawn(move || {
                // Ends when the Log (the sender) is dropped.
                while let Ok(below) = rx.recv() {
                    if let Err(e) = w.release_below(below) {
                        tracing::warn!("releasing old log segments failed: {e}");
                    }
                }
            })
            .ok()
            .map(|_| tx);
        Log {
            wal,
            releaser,
            app,
            buf: rkyv::util::AlignedVec::new(),
            by_lsn: Default::default(),
            live_bytes: 0,
            pending_cut: None,
            pending_release: None,
            last_lsn: None,
            failed: None,
        }
    }

    /// Appends a record; returns its LSN and the bytes it takes in the log
    /// (payload plus the WAL's frame header, rounded to its alignment).
    /// A log that releases segments on the calling thread (tests that
    /// count segments right after a compaction).
    #[cfg(test)]
    pub(crate) fn inline(wal: Wal) -> Log {
        let mut l = Log::new(wal);
        l.releaser = None;
        l
    }

    fn append(&mut self, rec: &DRec) -> Result<(u64, u32), WalError> {
        let app = &mut self.app;
        let r = persist::encode_with(&mut self.buf, rec, |kind, b| {
            app.append(kind, b).map(|lsn| (lsn, b.len()))
        })
        .map_err(|e| WalError::Failed(format!("cannot encode a record: {e}")))?;
        match r {
            Ok((lsn, len)) => {
                self.last_lsn = Some(lsn);
                let framed = (len as u64 + FRAME_OVERHEAD).div_ceil(16) * 16;
                Ok((lsn, u32::try_from(framed).unwrap_or(u32::MAX)))
            }
            // Too large for one record: this command fails, the log is fine
            // (bind() keeps `-z` below the limit; this is the backstop).
            Err(e @ WalError::RecordTooLarge { .. }) => Err(e),
            Err(e) => {
                self.failed = Some(e.to_string());
                Err(e)
            }
        }
    }
}

/// A WAL frame's header and trailer, at most (`docs/wal-format.md`);
/// frames are 16-byte aligned. An estimate is enough: it only sizes the
/// compaction trigger.
const FRAME_OVERHEAD: u64 = 32;

/// The most of a `fail` error text a job keeps (its last bytes).
pub(crate) const MAX_ERROR_TEXT: usize = 4096;

/// `reserve-batch` stops adding jobs once its reply is this large (it
/// always returns at least one), bounding one connection's output.
const BATCH_REPLY_MAX: usize = 4 << 20;

/// Live jobs rewritten per tick during compaction, so one tick never holds
/// the loop for long (a rewrite costs about a microsecond).
const COMPACT_BATCH: usize = 4096;

/// Where a batch's jobs were logged: the record's LSN and each job's share
/// of its bytes.
type Logged = (u64, u32);

/// What the jobs of one `PutBatch` record have in common.
#[derive(Debug, Clone, PartialEq, Eq)]
struct BatchHead {
    tube: String,
    pri: u32,
    delay_s: u32,
    ttr_s: u32,
    created_ms: u64,
}

/// The job table.
#[derive(Debug)]
pub(crate) struct Store {
    pub cfg: StoreConfig,
    pub jobs: HashMap<u64, Box<Job>, SeqBuild>,
    pub tubes: HashMap<Arc<str>, Tube>,
    /// `list-tubes` order: creation order with beanstalkd's swap-remove.
    pub tube_order: Vec<Arc<str>>,
    pub conns: HashMap<ConnId, Conn>,
    delayed: BTreeSet<(Instant, u64)>,
    ttr: BTreeSet<(Instant, u64)>,
    waits: BTreeSet<(Instant, ConnId, u64)>,
    /// A job became ready or a connection started waiting: run
    /// `process_queue`.
    dirty: bool,
    /// Tubes with at least one waiting connection.
    waiting_tubes: std::collections::HashSet<Arc<str>>,
    /// Pause ends, so timers never scan every tube.
    pauses: BTreeSet<(Instant, Arc<str>)>,
    pub next_id: u64,
    bury_seq: u64,
    wait_seq: u64,
    pub ct: Counters,
    pub bytes: u64,
    pub ready_ct: u64,
    pub urgent_ct: u64,
    pub reserved_ct: u64,
    pub delayed_ct: u64,
    pub buried_ct: u64,
    pub draining: bool,
    pub log: Option<Log>,
    /// Replies for connections other than the one whose command is being
    /// handled (served waiters, timeouts).
    pub out: Vec<(ConnId, Vec<u8>)>,
    pub started: Instant,
    pub instance_id: String,
    last_window: Instant,
    rng: u64,
}

impl Store {
    pub(crate) fn new(cfg: StoreConfig, log: Option<Log>, now: Instant) -> Store {
        let seed = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
            as u64
            ^ u64::from(std::process::id()).rotate_left(32);
        let mut s = Store {
            cfg,
            jobs: HashMap::default(),
            tubes: HashMap::new(),
            tube_order: Vec::new(),
            conns: HashMap::new(),
            delayed: BTreeSet::new(),
            ttr: BTreeSet::new(),
            waits: BTreeSet::new(),
            dirty: false,
            waiting_tubes: Default::default(),
            pauses: BTreeSet::new(),
            next_id: 1,
            bury_seq: 0,
            wait_seq: 0,
            ct: Counters::default(),
            bytes: 0,
            ready_ct: 0,
            urgent_ct: 0,
            reserved_ct: 0,
            delayed_ct: 0,
            buried_ct: 0,
            draining: false,
            log,
            out: Vec::new(),
            started: now,
            instance_id: String::new(),
            last_window: now,
            rng: seed | 1,
        };
        s.instance_id = format!("{:016x}", s.random());
        s
    }

    fn random(&mut self) -> u64 {
        // xorshift64*: jitter and the instance id; not for security.
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    // ---------------------------------------------------------------- tubes

    fn tube_ref(&mut self, name: &str) -> Arc<str> {
        if let Some((k, _)) = self.tubes.get_key_value(name) {
            return k.clone();
        }
        let k: Arc<str> = Arc::from(name);
        self.tubes.insert(k.clone(), Tube::new(k.clone()));
        self.tube_order.push(k.clone());
        k
    }

    fn maybe_drop_tube(&mut self, name: &Arc<str>) {
        // beanstalkd holds `default` for the life of the server.
        if &**name == "default" {
            return;
        }
        if self.tubes.get(name).is_some_and(|t| t.unused() && !t.policy.configured) {
            self.tubes.remove(name);
            if let Some(i) = self.tube_order.iter().position(|t| t == name) {
                self.tube_order.swap_remove(i);
            }
        }
    }

    fn tube_mut(&mut self, name: &Arc<str>) -> Option<&mut Tube> {
        self.tubes.get_mut(name)
    }

    // ---------------------------------------------------------- connections

    pub(crate) fn connect(&mut self, c: ConnId) {
        let d = self.tube_ref("default");
        if let Some(t) = self.tube_mut(&d) {
            t.using += 1;
            t.watching += 1;
        }
        self.ct.total_connections += 1;
        self.conns.insert(
            c,
            Conn {
                use_tube: d.clone(),
                watch: vec![d],
                reserved: Vec::new(),
                wait: None,
                producer: false,
                worker: false,
            },
        );
    }

    /// The connection is gone: its reservations return to ready.
    pub(crate) fn disconnect(&mut self, c: ConnId, now: Instant) {
        self.stop_waiting(c);
        let Some(conn) = self.conns.remove(&c) else { return };
        for id in conn.reserved {
            self.unreserve_to_ready(id, now);
        }
        if let Some(t) = self.tube_mut(&conn.use_tube) {
            t.using -= 1;
        }
        self.maybe_drop_tube(&conn.use_tube);
        for w in &conn.watch {
            if let Some(t) = self.tube_mut(w) {
                t.watching -= 1;
            }
            self.maybe_drop_tube(w);
        }
        self.process_queue(now);
    }

    /// A lease ends because its connection closed. With a configured
    /// retry policy (`tube-config`), a job whose holders keep dying is a
    /// poison pill once its attempts are used up: it is buried instead.
    fn unreserve_to_ready(&mut self, id: u64, now: Instant) {
        let Some(j) = self.jobs.get(&id) else { return };
        if let State::Reserved { .. } = j.state {
            let attempts = j.counts.reserves;
            let p = self.tubes.get(&j.tube).map(|t| t.policy).unwrap_or_default();
            self.remove_from_state(id);
            if p.configured && attempts >= p.max_attempts {
                if let Some(j) = self.jobs.get_mut(&id) {
                    j.set_last_error(Some(format!(
                        "poison pill: {attempts} attempts ended without an outcome"
                    )));
                    j.counts.buries += 1;
                }
                self.make_buried(id);
                self.log_move(id, now);
            } else {
                self.make_ready(id, now);
                // A job reserved with reserve-job from buried or delayed
                // must not come back in that state after a restart.
                self.log_move(id, now);
            }
        }
    }

    // ------------------------------------------------------ state plumbing

    /// Takes a job out of its current state's structures (counters too).
    fn remove_from_state(&mut self, id: u64) {
        let Some(j) = self.jobs.get(&id) else { return };
        let (tube, pri, state) = (j.tube.clone(), j.pri, j.state);
        let Some(t) = self.tubes.get_mut(&tube) else { return };
        match state {
            State::Ready => {
                t.ready.remove(&(pri, id));
                self.ready_ct -= 1;
                if pri < URGENT {
                    t.urgent -= 1;
                    self.urgent_ct -= 1;
                }
            }
            State::Delayed(at) => {
                t.delayed.remove(&(at, id));
                self.delayed.remove(&(at, id));
                self.delayed_ct -= 1;
            }
            State::Reserved { by, deadline } => {
                self.ttr.remove(&(deadline, id));
                t.reserved -= 1;
                self.reserved_ct -= 1;
                if let Some(c) = self.conns.get_mut(&by) {
                    if let Some(i) = c.reserved.iter().position(|&x| x == id) {
                        c.reserved.swap_remove(i);
                    }
                }
            }
            State::Buried(seq) => {
                t.buried.remove(&(seq, id));
                self.buried_ct -= 1;
            }
        }
    }

    fn make_ready(&mut self, id: u64, now: Instant) {
        let Some(j) = self.jobs.get_mut(&id) else { return };
        j.state = State::Ready;
        j.since = Stamp::of(now);
        let (tube, pri) = (j.tube.clone(), j.pri);
        self.ready_ct += 1;
        if let Some(t) = self.tubes.get_mut(&tube) {
            let (urgent, waiters) = t.add_ready(pri, id);
            self.urgent_ct += u64::from(urgent);
            self.dirty |= waiters;
        }
    }

    fn make_delayed(&mut self, id: u64, at: Instant) {
        let Some(j) = self.jobs.get_mut(&id) else { return };
        j.state = State::Delayed(at);
        let tube = j.tube.clone();
        self.delayed_ct += 1;
        self.delayed.insert((at, id));
        if let Some(t) = self.tubes.get_mut(&tube) {
            t.delayed.insert((at, id));
        }
    }

    fn make_buried(&mut self, id: u64) {
        self.bury_seq += 1;
        let seq = self.bury_seq;
        self.make_buried_at(id, seq);
    }

    /// Buries with a given position in the buried list (recovery).
    fn make_buried_at(&mut self, id: u64, seq: u64) {
        self.bury_seq = self.bury_seq.max(seq);
        let Some(j) = self.jobs.get_mut(&id) else { return };
        j.state = State::Buried(seq);
        let tube = j.tube.clone();
        self.buried_ct += 1;
        if let Some(t) = self.tubes.get_mut(&tube) {
            t.buried.insert((seq, id));
        }
    }

    fn make_reserved(&mut self, id: u64, c: ConnId, now: Instant) {
        let Some(j) = self.jobs.get_mut(&id) else { return };
        let deadline = now + Duration::from_secs(u64::from(j.ttr_s));
        j.state = State::Reserved { by: c, deadline };
        j.counts.reserves += 1;
        let waited = j.since.elapsed_at(now);
        j.since = Stamp::of(now);
        let tube = j.tube.clone();
        self.ttr.insert((deadline, id));
        self.reserved_ct += 1;
        if let Some(t) = self.tubes.get_mut(&tube) {
            t.reserved += 1;
            let us = u64::try_from(waited.as_micros()).unwrap_or(u64::MAX).clamp(1, 3_600_000_000);
            if t.wait_us.is_none() {
                // 1 µs .. 1 hour, 2 significant digits.
                t.wait_us = Histogram::new_with_bounds(1, 3_600_000_000, 2).ok();
            }
            if let Some(h) = &mut t.wait_us {
                let _ = h.record(us);
            }
        }
        if let Some(conn) = self.conns.get_mut(&c) {
            conn.reserved.push(id);
        }
        self.log_rec(&DRec::Reserve { id });
    }

    /// Removes a job entirely (delete, clear).
    fn destroy(&mut self, id: u64) {
        self.remove_from_state(id);
        let Some(j) = self.jobs.remove(&id) else { return };
        self.bytes -= j.body.len() as u64;
        if let Some(t) = self.tubes.get_mut(&j.tube) {
            t.jobs -= 1;
            if let Some(k) = j.unique() {
                t.uniques.remove(k);
            }
        }
        if let Some(log) = &mut self.log {
            log.live_bytes = log.live_bytes.saturating_sub(u64::from(j.rec_len));
        }
        self.log_rec(&DRec::Delete { id });
        self.maybe_drop_tube(&j.tube);
    }

    fn service_done(&mut self, id: u64, now: Instant) {
        if let Some(j) = self.jobs.get(&id) {
            if let State::Reserved { .. } = j.state {
                let ns = j.since.elapsed_at(now).as_nanos();
                let tube = j.tube.clone();
                if let Some(t) = self.tubes.get_mut(&tube) {
                    t.done_window += 1;
                    t.service_ns_window += ns;
                }
            }
        }
    }

    // ------------------------------------------------------------- logging

    fn log_rec(&mut self, rec: &DRec) {
        if let Some(log) = &mut self.log {
            if log.failed.is_none() && log.append(rec).is_ok() {
                self.ct.records_written += 1;
            }
        }
    }

    fn log_failed(&self) -> bool {
        self.log.as_ref().is_some_and(|l| l.failed.is_some())
    }

    /// The `Put` record of `j`, carrying `body` (the job's body).
    fn put_record(id: u64, j: &Job, body: Vec<u8>, now: Instant) -> DRec {
        let (state, run_at_ms) = logged_state(j.state, now);
        let bury_seq = bury_seq_of(j.state);
        let created_ms = match j.state {
            // Still delayed by exactly its delay since it was put: the
            // creation time follows from the due time, so the record says
            // `run_at_ms == created_ms + delay_s` seconds exactly and is
            // logged as a new job's (`persist::is_new_put`). Rounding each
            // to milliseconds on its own made them differ by 1 ms.
            State::Delayed(at)
                if Stamp::of(at) == j.created.after(Duration::from_secs(u64::from(j.delay_s))) =>
            {
                run_at_ms.saturating_sub(u64::from(j.delay_s) * 1000)
            }
            _ => wall_ms(now, now).saturating_sub(
                u64::try_from(j.created.elapsed_at(now).as_millis()).unwrap_or(u64::MAX),
            ),
        };
        DRec::Put {
            id,
            tube: j.tube.to_string(),
            pri: j.pri,
            delay_s: j.delay_s,
            ttr_s: j.ttr_s,
            body,
            state,
            run_at_ms,
            bury_seq,
            created_ms,
            counts: j.counts,
            unique: j.unique().map(str::to_string),
            last_error: j.last_error().map(str::to_string),
        }
    }

    fn log_put(&mut self, id: u64, now: Instant) -> Result<(), ()> {
        if self.log.is_none() {
            return Ok(());
        }
        let Some(j) = self.jobs.get_mut(&id) else { return Ok(()) };
        // The record borrows the body for the append (moved out and back,
        // both free: a boxed slice and a Vec of equal length and capacity)
        // instead of copying it.
        let body = std::mem::take(&mut j.body).into_vec();
        let mut rec = Self::put_record(id, j, body, now);
        let Some(log) = &mut self.log else { return Ok(()) };
        let appended = log.append(&rec);
        if let (Some(j), DRec::Put { body, .. }) = (self.jobs.get_mut(&id), &mut rec) {
            j.body = std::mem::take(body).into_boxed_slice();
        }
        match appended {
            Ok((lsn, len)) => {
                self.ct.records_written += 1;
                self.logged_at(id, lsn, len);
                Ok(())
            }
            Err(_) => Err(()),
        }
    }

    /// Job `id`'s latest `Put` is now at `lsn` and takes `len` bytes of the
    /// log (its share, in a `PutBatch`): what compaction goes by.
    fn logged_at(&mut self, id: u64, lsn: u64, len: u32) {
        if let (Some(j), Some(log)) = (self.jobs.get_mut(&id), self.log.as_mut()) {
            j.lsn = lsn;
            j.rec_len = len;
            log.by_lsn.push_back((lsn, id));
            log.live_bytes += u64::from(len);
        }
    }

    fn log_move(&mut self, id: u64, now: Instant) {
        if self.log.is_none() {
            return;
        }
        let Some(j) = self.jobs.get(&id) else { return };
        let (state, run_at_ms) = logged_state(j.state, now);
        let rec = DRec::Move {
            id,
            pri: j.pri,
            delay_s: j.delay_s,
            state,
            run_at_ms,
            bury_seq: bury_seq_of(j.state),
            counts: j.counts,
            last_error: j.last_error().map(str::to_string),
        };
        self.log_rec(&rec);
    }

    // ------------------------------------------------------------ commands

    /// Runs one command for connection `c`, writing its reply to `w`.
    /// `body` is the data for put-like commands (without its `\r\n`).
    pub(crate) fn handle(
        &mut self,
        c: ConnId,
        cmd: Cmd,
        body: Vec<u8>,
        now: Instant,
        w: &mut Vec<u8>,
    ) -> Flow {
        let flow = self.dispatch(c, cmd, body, now, w);
        self.process_queue(now);
        flow
    }

    fn dispatch(
        &mut self,
        c: ConnId,
        cmd: Cmd,
        body: Vec<u8>,
        now: Instant,
        w: &mut Vec<u8>,
    ) -> Flow {
        if self.log_failed() && writes_log(&cmd) {
            // Nothing more can be made durable: refuse every change rather
            // than acknowledge one a restart would not see.
            w.extend_from_slice(b"INTERNAL_ERROR\r\n");
            return Flow::Go;
        }
        match cmd {
            Cmd::Put { pri, delay, ttr, .. } => {
                // (`cmd-put` was counted when the line parsed: conn.rs.)
                let tube = self.conn_use(c);
                match self.put(c, &tube, pri, delay, ttr, body, None, now) {
                    Ok(PutOk::Inserted(id)) => reply_fmt(w, format_args!("INSERTED {id}\r\n")),
                    Ok(PutOk::Duplicate(id)) => reply_fmt(w, format_args!("DUPLICATE {id}\r\n")),
                    Err(e) => w.extend_from_slice(e),
                }
            }
            Cmd::PutUnique { key, pri, delay, ttr, .. } => {
                self.ct.put += 1;
                let tube = self.conn_use(c);
                match self.put(c, &tube, pri, delay, ttr, body, Some(key), now) {
                    Ok(PutOk::Inserted(id)) => reply_fmt(w, format_args!("INSERTED {id}\r\n")),
                    Ok(PutOk::Duplicate(id)) => reply_fmt(w, format_args!("DUPLICATE {id}\r\n")),
                    Err(e) => w.extend_from_slice(e),
                }
            }
            Cmd::PutBatch { .. } => {
                // The connection assembles batches and calls `put_batch`.
                w.extend_from_slice(b"INTERNAL_ERROR\r\n");
            }
            Cmd::Use(name) => {
                self.ct.use_ += 1;
                let t = self.tube_ref(&name);
                if let Some(tt) = self.tube_mut(&t) {
                    tt.using += 1;
                }
                let old = match self.conns.get_mut(&c) {
                    Some(conn) => std::mem::replace(&mut conn.use_tube, t.clone()),
                    None => t.clone(),
                };
                if let Some(tt) = self.tube_mut(&old) {
                    tt.using -= 1;
                }
                self.maybe_drop_tube(&old);
                reply_fmt(w, format_args!("USING {t}\r\n"));
            }
            Cmd::Reserve => {
                self.ct.reserve += 1;
                return self.reserve(c, None, 1, now, w);
            }
            Cmd::ReserveTimeout(s) => {
                self.ct.reserve_timeout += 1;
                // Negative waits forever (beanstalkd passes it on as the
                // "no timeout" value); huge values are capped at a century.
                let at = u64::try_from(s)
                    .ok()
                    .map(|s| now + Duration::from_secs(s.min(100 * 365 * 86_400)));
                return self.reserve(c, at, 1, now, w);
            }
            Cmd::ReserveBatch { max, timeout } => {
                self.ct.reserve_timeout += 1;
                let at = Some(now + Duration::from_secs(u64::from(timeout)));
                return self.reserve(c, at, max, now, w);
            }
            Cmd::ReserveJob(id) => {
                let ok = matches!(
                    self.jobs.get(&id).map(|j| j.state),
                    Some(State::Ready | State::Buried(_) | State::Delayed(_))
                );
                if !ok {
                    w.extend_from_slice(b"NOT_FOUND\r\n");
                } else {
                    self.remove_from_state(id);
                    if let Some(conn) = self.conns.get_mut(&c) {
                        conn.worker = true;
                    }
                    self.make_reserved(id, c, now);
                    self.write_job(w, b"RESERVED", id);
                }
            }
            Cmd::Delete(id) => {
                self.ct.delete += 1;
                match self.jobs.get(&id).map(|j| j.state) {
                    Some(State::Reserved { by, .. }) if by != c => {
                        w.extend_from_slice(b"NOT_FOUND\r\n")
                    }
                    Some(_) => {
                        self.service_done(id, now);
                        let tube = self.jobs.get(&id).map(|j| j.tube.clone());
                        if let Some(t) = tube.as_ref().and_then(|t| self.tubes.get_mut(t)) {
                            t.cmd_delete += 1;
                        }
                        self.destroy(id);
                        if self.log_failed() {
                            w.extend_from_slice(b"INTERNAL_ERROR\r\n");
                        } else {
                            w.extend_from_slice(b"DELETED\r\n");
                        }
                    }
                    None => w.extend_from_slice(b"NOT_FOUND\r\n"),
                }
            }
            Cmd::Release { id, pri, delay } => {
                self.ct.release += 1;
                if !self.end_hold(c, id, now) {
                    w.extend_from_slice(b"NOT_FOUND\r\n");
                } else {
                    if let Some(j) = self.jobs.get_mut(&id) {
                        j.pri = pri;
                        j.delay_s = delay;
                        j.counts.releases += 1;
                    }
                    if delay > 0 {
                        self.make_delayed(id, now + Duration::from_secs(u64::from(delay)));
                    } else {
                        self.make_ready(id, now);
                    }
                    self.log_move(id, now);
                    w.extend_from_slice(b"RELEASED\r\n");
                }
            }
            Cmd::Bury { id, pri } => {
                self.ct.bury += 1;
                if !self.end_hold(c, id, now) {
                    w.extend_from_slice(b"NOT_FOUND\r\n");
                } else {
                    if let Some(j) = self.jobs.get_mut(&id) {
                        j.pri = pri;
                        j.counts.buries += 1;
                    }
                    self.make_buried(id);
                    self.log_move(id, now);
                    w.extend_from_slice(b"BURIED\r\n");
                }
            }
            Cmd::Touch(id) => {
                self.ct.touch += 1;
                if !self.holds(c, id) {
                    w.extend_from_slice(b"NOT_FOUND\r\n");
                } else {
                    if let Some(j) = self.jobs.get_mut(&id) {
                        if let State::Reserved { by, deadline } = j.state {
                            let nd = now + Duration::from_secs(u64::from(j.ttr_s));
                            j.state = State::Reserved { by, deadline: nd };
                            self.ttr.remove(&(deadline, id));
                            self.ttr.insert((nd, id));
                        }
                    }
                    w.extend_from_slice(b"TOUCHED\r\n");
                }
            }
            Cmd::Watch(name) => {
                self.ct.watch += 1;
                let t = self.tube_ref(&name);
                let add = self.conns.get(&c).is_some_and(|conn| !conn.watch.contains(&t));
                if add {
                    if let Some(conn) = self.conns.get_mut(&c) {
                        conn.watch.push(t.clone());
                    }
                    if let Some(tt) = self.tube_mut(&t) {
                        tt.watching += 1;
                    }
                }
                let n = self.conns.get(&c).map_or(0, |conn| conn.watch.len());
                reply_fmt(w, format_args!("WATCHING {n}\r\n"));
            }
            Cmd::Ignore(name) => {
                self.ct.ignore += 1;
                let Some(conn) = self.conns.get_mut(&c) else { return Flow::Go };
                let pos = conn.watch.iter().position(|t| **t == *name);
                match pos {
                    Some(_) if conn.watch.len() < 2 => {
                        w.extend_from_slice(b"NOT_IGNORED\r\n");
                    }
                    Some(i) => {
                        let t = conn.watch.swap_remove(i);
                        let n = conn.watch.len();
                        if let Some(tt) = self.tube_mut(&t) {
                            tt.watching -= 1;
                        }
                        self.maybe_drop_tube(&t);
                        reply_fmt(w, format_args!("WATCHING {n}\r\n"));
                    }
                    None => {
                        let n = conn.watch.len();
                        reply_fmt(w, format_args!("WATCHING {n}\r\n"));
                    }
                }
            }
            Cmd::Peek(id) => {
                self.ct.peek += 1;
                if self.jobs.contains_key(&id) {
                    self.write_job(w, b"FOUND", id);
                } else {
                    w.extend_from_slice(b"NOT_FOUND\r\n");
                }
            }
            Cmd::PeekReady => {
                self.ct.peek_ready += 1;
                let t = self.conn_use(c);
                let id = self.tubes.get(&t).and_then(|t| t.ready.first().map(|&(_, id)| id));
                self.peek_reply(w, id);
            }
            Cmd::PeekDelayed => {
                self.ct.peek_delayed += 1;
                let t = self.conn_use(c);
                let id = self.tubes.get(&t).and_then(|t| t.delayed.first().map(|&(_, id)| id));
                self.peek_reply(w, id);
            }
            Cmd::PeekBuried => {
                self.ct.peek_buried += 1;
                let t = self.conn_use(c);
                let id = self.tubes.get(&t).and_then(|t| t.buried.first().map(|&(_, id)| id));
                self.peek_reply(w, id);
            }
            Cmd::Kick(bound) => {
                self.ct.kick += 1;
                let t = self.conn_use(c);
                let n = self.kick(&t, bound, now);
                reply_fmt(w, format_args!("KICKED {n}\r\n"));
            }
            Cmd::KickJob(id) => match self.jobs.get(&id).map(|j| j.state) {
                Some(State::Buried(_) | State::Delayed(_)) => {
                    self.kick_one(id, now);
                    w.extend_from_slice(b"KICKED\r\n");
                }
                _ => w.extend_from_slice(b"NOT_FOUND\r\n"),
            },
            Cmd::StatsJob(id) => {
                self.ct.stats_job += 1;
                match self.jobs.get(&id) {
                    Some(j) => yaml_reply(w, &super::report::job_yaml(id, j, now, false)),
                    None => w.extend_from_slice(b"NOT_FOUND\r\n"),
                }
            }
            Cmd::StatsJobExt(id) => match self.jobs.get(&id) {
                Some(j) => yaml_reply(w, &super::report::job_yaml(id, j, now, true)),
                None => w.extend_from_slice(b"NOT_FOUND\r\n"),
            },
            Cmd::StatsTube(name) => {
                self.ct.stats_tube += 1;
                match self.tubes.get(name.as_str()) {
                    Some(t) => yaml_reply(w, &super::report::tube_yaml(self, t, now, false)),
                    None => w.extend_from_slice(b"NOT_FOUND\r\n"),
                }
            }
            Cmd::StatsTubeExt(name) => match self.tubes.get(name.as_str()) {
                Some(t) => yaml_reply(w, &super::report::tube_yaml(self, t, now, true)),
                None => w.extend_from_slice(b"NOT_FOUND\r\n"),
            },
            Cmd::Stats => {
                self.ct.stats += 1;
                yaml_reply(w, &super::report::stats_yaml(self, now));
            }
            Cmd::Metrics => yaml_reply(w, &super::report::prometheus(self, now)),
            Cmd::ListTubes => {
                self.ct.list_tubes += 1;
                let mut s = String::from("---\n");
                for t in &self.tube_order {
                    s.push_str("- ");
                    s.push_str(t);
                    s.push('\n');
                }
                yaml_reply(w, &s);
            }
            Cmd::ListTubeUsed => {
                self.ct.list_tube_used += 1;
                let t = self.conn_use(c);
                reply_fmt(w, format_args!("USING {t}\r\n"));
            }
            Cmd::ListTubesWatched => {
                self.ct.list_tubes_watched += 1;
                let mut s = String::from("---\n");
                if let Some(conn) = self.conns.get(&c) {
                    for t in &conn.watch {
                        s.push_str("- ");
                        s.push_str(t);
                        s.push('\n');
                    }
                }
                yaml_reply(w, &s);
            }
            Cmd::PauseTube { tube, delay } => {
                self.ct.pause_tube += 1;
                if !super::proto::valid_tube(tube.as_bytes()) {
                    // Counted, then rejected, as in beanstalkd.
                    w.extend_from_slice(b"BAD_FORMAT\r\n");
                    return Flow::Go;
                }
                match self.tubes.get_mut(tube.as_str()) {
                    None => w.extend_from_slice(b"NOT_FOUND\r\n"),
                    Some(t) => {
                        // beanstalkd pauses for at least 1 ns so waiters
                        // wake when the pause ends.
                        let d = if delay == 0 {
                            Duration::from_nanos(1)
                        } else {
                            Duration::from_secs(u64::from(delay))
                        };
                        t.pause = d;
                        if let Some(old) = t.unpause_at.replace(now + d) {
                            self.pauses.remove(&(old, t.name.clone()));
                        }
                        self.pauses.insert((now + d, t.name.clone()));
                        t.cmd_pause += 1;
                        w.extend_from_slice(b"PAUSED\r\n");
                    }
                }
            }
            Cmd::Quit => return Flow::Close,
            Cmd::Lease(id) => {
                let token = self.jobs.get(&id).map(|j| j.counts.reserves);
                match token {
                    Some(t) if self.holds(c, id) => {
                        reply_fmt(w, format_args!("LEASED {id} {t}\r\n"))
                    }
                    _ => w.extend_from_slice(b"NOT_FOUND\r\n"),
                }
            }
            Cmd::Fenced { token, inner } => {
                let id = match *inner {
                    Cmd::Delete(id)
                    | Cmd::Touch(id)
                    | Cmd::Release { id, .. }
                    | Cmd::Bury { id, .. }
                    | Cmd::Fail { id, .. } => id,
                    _ => 0,
                };
                let holder = self.jobs.get(&id).map(|j| match j.state {
                    State::Reserved { by, .. } if u64::from(j.counts.reserves) == token => Some(by),
                    _ => None,
                });
                match holder {
                    None => w.extend_from_slice(b"NOT_FOUND\r\n"),
                    Some(None) => w.extend_from_slice(b"STALE_LEASE\r\n"),
                    // The holder's own command, whoever sends it; the
                    // lease stays the holder's.
                    Some(Some(by)) => return self.dispatch(by, *inner, body, now, w),
                }
            }
            Cmd::Fail { id, .. } => {
                if !self.holds(c, id) {
                    w.extend_from_slice(b"NOT_FOUND\r\n");
                } else {
                    self.fail(id, body, now, w);
                }
            }
            Cmd::TubeConfig { tube, max_attempts, backoff_ms, backoff_max_ms } => {
                let t = self.tube_ref(&tube);
                let backoff_max_ms = backoff_max_ms.max(backoff_ms);
                if let Some(tt) = self.tube_mut(&t) {
                    tt.policy =
                        Policy { max_attempts, backoff_ms, backoff_max_ms, configured: true };
                }
                self.log_rec(&DRec::TubeConfig {
                    tube: t.to_string(),
                    max_attempts,
                    backoff_ms,
                    backoff_max_ms,
                });
                w.extend_from_slice(b"CONFIGURED\r\n");
            }
            Cmd::ClearTube { tube, ready, delayed, buried } => {
                let mut ids = Vec::new();
                if let Some(t) = self.tubes.get(tube.as_str()) {
                    if ready {
                        ids.extend(t.ready.iter().map(|&(_, id)| id));
                    }
                    if delayed {
                        ids.extend(t.delayed.iter().map(|&(_, id)| id));
                    }
                    if buried {
                        ids.extend(t.buried.iter().map(|&(_, id)| id));
                    }
                }
                let n = ids.len();
                for id in ids {
                    self.destroy(id);
                }
                reply_fmt(w, format_args!("CLEARED {n}\r\n"));
            }
        }
        Flow::Go
    }

    fn conn_use(&self, c: ConnId) -> Arc<str> {
        self.conns.get(&c).map_or_else(|| Arc::from("default"), |conn| conn.use_tube.clone())
    }

    /// `release` and `bury`: ends `c`'s reservation of `id` and takes the
    /// job out of its state; false (nothing done) if `c` does not hold it.
    fn end_hold(&mut self, c: ConnId, id: u64, now: Instant) -> bool {
        if !self.holds(c, id) {
            return false;
        }
        self.service_done(id, now);
        self.remove_from_state(id);
        true
    }

    fn holds(&self, c: ConnId, id: u64) -> bool {
        matches!(self.jobs.get(&id).map(|j| j.state), Some(State::Reserved { by, .. }) if by == c)
    }

    fn peek_reply(&self, w: &mut Vec<u8>, id: Option<u64>) {
        match id {
            Some(id) => self.write_job(w, b"FOUND", id),
            None => w.extend_from_slice(b"NOT_FOUND\r\n"),
        }
    }

    fn write_job(&self, w: &mut Vec<u8>, word: &[u8], id: u64) {
        let Some(j) = self.jobs.get(&id) else {
            w.extend_from_slice(b"NOT_FOUND\r\n");
            return;
        };
        w.extend_from_slice(word);
        reply_fmt(w, format_args!(" {} {}\r\n", id, j.body.len()));
        w.extend_from_slice(&j.body);
        w.extend_from_slice(b"\r\n");
    }

    /// A put (plain or unique). Errors are the reply line.
    #[allow(clippy::too_many_arguments)]
    fn put(
        &mut self,
        c: ConnId,
        tube: &Arc<str>,
        pri: u32,
        delay: u32,
        ttr: u32,
        body: Vec<u8>,
        unique: Option<String>,
        now: Instant,
    ) -> Result<PutOk, &'static [u8]> {
        if let Some(conn) = self.conns.get_mut(&c) {
            conn.producer = true;
        }
        if let Some(k) = &unique {
            if let Some(&id) = self.tubes.get(tube).and_then(|t| t.uniques.get(k.as_str())) {
                return Ok(PutOk::Duplicate(id));
            }
        }
        // beanstalkd gives the job its id before these checks, so a
        // refused put still uses one.
        let id = self.next_id;
        self.next_id += 1;
        if self.draining {
            return Err(b"DRAINING\r\n");
        }
        if self.jobs.len() as u64 >= self.cfg.max_jobs
            || self.bytes + body.len() as u64 > self.cfg.max_bytes
            || self.log_failed()
        {
            return Err(b"OUT_OF_MEMORY\r\n");
        }
        self.insert_job(id, tube, pri, delay, ttr, body, unique, now);
        if self.log_put(id, now).is_err() {
            // Not durable: undo, tell the client.
            self.destroy_quiet(id);
            return Err(b"INTERNAL_ERROR\r\n");
        }
        Ok(PutOk::Inserted(id))
    }

    /// `put-batch`: all or nothing. Replies `INSERTED-BATCH <first> <n>`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn put_batch(
        &mut self,
        c: ConnId,
        pri: u32,
        delay: u32,
        ttr: u32,
        bodies: Vec<Vec<u8>>,
        now: Instant,
        w: &mut Vec<u8>,
    ) {
        self.ct.put += bodies.len() as u64;
        if let Some(conn) = self.conns.get_mut(&c) {
            conn.producer = true;
        }
        let total: u64 = bodies.iter().map(|b| b.len() as u64).sum();
        if self.draining {
            w.extend_from_slice(b"DRAINING\r\n");
            return;
        }
        if self.jobs.len() as u64 + bodies.len() as u64 > self.cfg.max_jobs
            || self.bytes + total > self.cfg.max_bytes
            || self.log_failed()
        {
            w.extend_from_slice(b"OUT_OF_MEMORY\r\n");
            return;
        }
        let tube = self.conn_use(c);
        let first = self.next_id;
        let n = bodies.len() as u64;
        // Ids are taken even if logging fails half way: an id that may be
        // in the log is never handed out again.
        self.next_id += n;
        let head = BatchHead {
            tube: tube.to_string(),
            pri,
            delay_s: delay,
            ttr_s: ttr,
            created_ms: wall_ms(now, now),
        };
        let limit = self.batch_limit();
        let mut bodies = bodies.into_iter().peekable();
        let mut id = first;
        while bodies.peek().is_some() {
            // Jobs in one record: at least one, then up to `limit`.
            let mut chunk = Vec::new();
            let mut size = 0;
            while let Some(b) = bodies
                .next_if(|b| chunk.is_empty() || size + b.len() + persist::BATCH_JOB_BYTES <= limit)
            {
                size += b.len() + persist::BATCH_JOB_BYTES;
                chunk.push(b);
            }
            let (chunk, logged) = self.log_batch(id, Vec::new(), &head, chunk);
            let Ok(logged) = logged else {
                // Jobs of earlier records are in the log: delete them there
                // too (unless the log itself failed), so the batch that
                // failed does not come back after a restart.
                for undo in first..id {
                    self.destroy(undo);
                }
                w.extend_from_slice(b"INTERNAL_ERROR\r\n");
                return;
            };
            for body in chunk {
                self.insert_job(id, &tube, pri, delay, ttr, body, None, now);
                if let Some((lsn, share)) = logged {
                    self.logged_at(id, lsn, share);
                }
                id += 1;
            }
        }
        reply_fmt(w, format_args!("INSERTED-BATCH {first} {n}\r\n"));
        self.process_queue(now);
    }

    /// Bytes of one `PutBatch` record, at most (see `persist.rs`).
    fn batch_limit(&self) -> usize {
        persist::BATCH_BYTES.min(usize::try_from(self.cfg.segment_size / 4).unwrap_or(usize::MAX))
    }

    /// Logs new jobs (one per body, ids `ids` or, with `ids` empty,
    /// `first..`) as one `PutBatch` record. Gives the bodies back with the
    /// record's LSN and each job's share of its bytes (`None` without a
    /// log), or `Err` if the append failed.
    fn log_batch(
        &mut self,
        first: u64,
        ids: Vec<u64>,
        head: &BatchHead,
        bodies: Vec<Vec<u8>>,
    ) -> (Vec<Vec<u8>>, Result<Option<Logged>, ()>) {
        let Some(log) = &mut self.log else { return (bodies, Ok(None)) };
        let k = u32::try_from(bodies.len()).unwrap_or(u32::MAX).max(1);
        // The bodies move into the record and back out: no copy.
        let rec = DRec::PutBatch {
            first_id: first,
            ids,
            tube: head.tube.clone(),
            pri: head.pri,
            delay_s: head.delay_s,
            ttr_s: head.ttr_s,
            created_ms: head.created_ms,
            bodies,
        };
        let appended = log.append(&rec);
        let DRec::PutBatch { bodies, .. } = rec else { return (Vec::new(), Err(())) };
        match appended {
            Ok((lsn, len)) => {
                self.ct.records_written += 1;
                (bodies, Ok(Some((lsn, len.div_ceil(k)))))
            }
            Err(_) => (bodies, Err(())),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn insert_job(
        &mut self,
        id: u64,
        tube: &Arc<str>,
        pri: u32,
        delay: u32,
        ttr: u32,
        body: Vec<u8>,
        unique: Option<String>,
        now: Instant,
    ) {
        let ttr = ttr.max(1);
        let stamp = Stamp::of(now);
        self.bytes += body.len() as u64;
        self.ct.total_jobs += 1;
        let ready = delay == 0;
        if ready {
            self.ready_ct += 1;
        }
        if let Some(t) = self.tubes.get_mut(tube) {
            t.jobs += 1;
            t.total_jobs += 1;
            if let Some(k) = &unique {
                t.uniques.insert(k.clone().into_boxed_str(), id);
            }
            if ready {
                // `make_ready` with the tube looked up once (a string hash
                // per lookup; this is the put-batch path).
                let (urgent, waiters) = t.add_ready(pri, id);
                self.urgent_ct += u64::from(urgent);
                self.dirty |= waiters;
            }
        }
        // Boxed: a resize of a table of millions of jobs then moves 16-byte
        // entries, not whole jobs (it stalled the loop for ~0.6 s at 460 k
        // jobs before).
        let job = Box::new(Job {
            tube: tube.clone(),
            body: body.into_boxed_slice(),
            state: State::Ready,
            created: stamp,
            since: stamp,
            lsn: 0,
            extra: unique
                .map(|u| Box::new(Extra { unique: Some(u.into_boxed_str()), last_error: None })),
            pri,
            delay_s: delay,
            ttr_s: ttr,
            rec_len: 0,
            counts: Counts::default(),
        });
        self.jobs.insert(id, job);
        if !ready {
            self.make_delayed(id, now + Duration::from_secs(u64::from(delay)));
        }
    }

    /// Removes a job without logging (a put whose record failed).
    fn destroy_quiet(&mut self, id: u64) {
        let log = self.log.take();
        self.destroy(id);
        self.log = log;
    }

    fn reserve(
        &mut self,
        c: ConnId,
        timeout_at: Option<Instant>,
        batch: u32,
        now: Instant,
        w: &mut Vec<u8>,
    ) -> Flow {
        if let Some(conn) = self.conns.get_mut(&c) {
            conn.worker = true;
        }
        if self.deadline_soon(c, now) && !self.conn_ready(c) {
            w.extend_from_slice(b"DEADLINE_SOON\r\n");
            return Flow::Go;
        }
        // beanstalkd's wait_for_job: join every watched tube's waiters,
        // then let process_queue serve whoever is due (possibly this
        // connection, at once).
        self.wait_seq += 1;
        let seq = self.wait_seq;
        let soon = self.soonest_deadline(c).map(|d| d.checked_sub(SAFETY_MARGIN).unwrap_or(now));
        let wake = match (timeout_at, soon) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let Some(conn) = self.conns.get_mut(&c) else { return Flow::Go };
        conn.wait = Some(Wait { seq, wake, batch });
        for t in &conn.watch {
            if let Some(tt) = self.tubes.get_mut(t) {
                tt.waiting_ct += 1;
                tt.waiting.push(c);
                if tt.waiting.len() == 1 {
                    self.waiting_tubes.insert(t.clone());
                }
            }
        }
        if let Some(at) = wake {
            self.waits.insert((at, c, seq));
        }
        self.dirty = true;
        self.process_queue(now);
        // Served now? Its reply is in `out`: move it to this reply.
        if let Some(i) = self.out.iter().position(|(cc, _)| *cc == c) {
            let (_, reply) = self.out.remove(i);
            w.extend_from_slice(&reply);
            return Flow::Go;
        }
        if timeout_at.is_some_and(|t| t <= now) {
            // beanstalkd's conn_timeout: a reservation in the safety margin
            // wins over the timeout.
            let soon = self.deadline_soon(c, now);
            self.stop_waiting(c);
            w.extend_from_slice(if soon { b"DEADLINE_SOON\r\n" } else { b"TIMED_OUT\r\n" });
            return Flow::Go;
        }
        Flow::Wait
    }

    /// Ends a connection's wait (served, timed out, closed).
    fn stop_waiting(&mut self, c: ConnId) {
        let Some(conn) = self.conns.get_mut(&c) else { return };
        let Some(wait) = conn.wait.take() else { return };
        for t in &conn.watch {
            if let Some(tt) = self.tubes.get_mut(t) {
                if let Some(i) = tt.waiting.iter().position(|&x| x == c) {
                    tt.waiting.swap_remove(i);
                    tt.waiting_ct -= 1;
                    if tt.waiting.is_empty() {
                        self.waiting_tubes.remove(t);
                    }
                }
            }
        }
        if let Some(at) = wait.wake {
            self.waits.remove(&(at, c, wait.seq));
        }
    }

    /// A waiting connection's peer half-closed: beanstalkd ends the wait at
    /// once, with `TIMED_OUT`, unless its timer tick (which runs first)
    /// finds a reservation in the safety margin: then `DEADLINE_SOON`.
    /// Returns the reply, or `None` if it was not waiting.
    pub(crate) fn hangup_wait(&mut self, c: ConnId, now: Instant) -> Option<&'static [u8]> {
        let waiting = self.conns.get(&c).is_some_and(|x| x.wait.is_some());
        if !waiting {
            return None;
        }
        let soon = self.deadline_soon(c, now);
        self.stop_waiting(c);
        Some(if soon { b"DEADLINE_SOON\r\n" } else { b"TIMED_OUT\r\n" })
    }

    fn soonest_deadline(&self, c: ConnId) -> Option<Instant> {
        let conn = self.conns.get(&c)?;
        conn.reserved
            .iter()
            .filter_map(|id| match self.jobs.get(id)?.state {
                State::Reserved { deadline, .. } => Some(deadline),
                _ => None,
            })
            .min()
    }

    fn deadline_soon(&self, c: ConnId, now: Instant) -> bool {
        self.soonest_deadline(c).is_some_and(|d| d <= now + SAFETY_MARGIN)
    }

    /// Any watched tube has ready jobs (paused or not, like beanstalkd).
    fn conn_ready(&self, c: ConnId) -> bool {
        self.conns.get(&c).is_some_and(|conn| {
            conn.watch.iter().any(|t| self.tubes.get(t).is_some_and(|t| !t.ready.is_empty()))
        })
    }

    /// The most urgent ready job in the connection's unpaused watched tubes.
    fn best_job(&self, c: ConnId, now: Instant) -> Option<u64> {
        let conn = self.conns.get(&c)?;
        conn.watch
            .iter()
            .filter_map(|t| self.tubes.get(t))
            .filter(|t| !t.paused(now))
            .filter_map(|t| t.ready.first())
            .min()
            .map(|&(_, id)| id)
    }

    /// Serves waiting connections, exactly as beanstalkd's
    /// `process_queue`: repeatedly take the most urgent ready job among the
    /// unpaused tubes that have waiters (tubes scanned in `list-tubes`
    /// order, ties to the first), give it to the next waiter of *that*
    /// tube (`ms_take`), until no tube has both.
    pub(crate) fn process_queue(&mut self, now: Instant) {
        if !std::mem::take(&mut self.dirty) {
            return;
        }
        loop {
            // Ids are unique, so the most urgent (pri, id) is unique and the
            // scan order does not matter: only tubes with waiters count.
            let mut best: Option<(u32, u64, &Arc<str>)> = None;
            for name in &self.waiting_tubes {
                let Some(t) = self.tubes.get(name) else { continue };
                if t.waiting.is_empty() || t.paused(now) {
                    continue;
                }
                if let Some(&(pri, id)) = t.ready.first() {
                    if best.is_none_or(|(bp, bi, _)| (pri, id) < (bp, bi)) {
                        best = Some((pri, id, name));
                    }
                }
            }
            let Some((_, id, name)) = best else { return };
            let name = name.clone();
            let Some(t) = self.tubes.get_mut(&name) else { return };
            let n = t.waiting.len();
            let at = t.waiting_last % n;
            let c = t.waiting[at];
            t.waiting_last = at + 1;
            let batch = self.conns.get(&c).and_then(|x| x.wait).map_or(1, |w| w.batch);
            self.stop_waiting(c);
            self.remove_from_state(id);
            self.make_reserved(id, c, now);
            let mut reply = Vec::new();
            if batch <= 1 {
                self.write_job(&mut reply, b"RESERVED", id);
            } else {
                let mut ids = vec![id];
                let mut bytes = self.jobs.get(&id).map_or(0, |j| j.body.len());
                while ids.len() < batch as usize && bytes < BATCH_REPLY_MAX {
                    let Some(more) = self.best_job(c, now) else { break };
                    bytes += self.jobs.get(&more).map_or(0, |j| j.body.len());
                    self.remove_from_state(more);
                    self.make_reserved(more, c, now);
                    ids.push(more);
                }
                reply_fmt(&mut reply, format_args!("RESERVED-BATCH {}\r\n", ids.len()));
                for id in ids {
                    if let Some(j) = self.jobs.get(&id) {
                        reply_fmt(&mut reply, format_args!("{} {}\r\n", id, j.body.len()));
                        reply.extend_from_slice(&j.body);
                        reply.extend_from_slice(b"\r\n");
                    }
                }
            }
            self.out.push((c, reply));
        }
    }

    fn kick(&mut self, tube: &Arc<str>, bound: u64, now: Instant) -> u64 {
        let Some(t) = self.tubes.get(tube) else { return 0 };
        let ids: Vec<u64> = if !t.buried.is_empty() {
            t.buried.iter().take(clamp_usize(bound)).map(|&(_, id)| id).collect()
        } else {
            t.delayed.iter().take(clamp_usize(bound)).map(|&(_, id)| id).collect()
        };
        let n = ids.len() as u64;
        for id in ids {
            self.kick_one(id, now);
        }
        n
    }

    fn kick_one(&mut self, id: u64, now: Instant) {
        self.remove_from_state(id);
        if let Some(j) = self.jobs.get_mut(&id) {
            j.counts.kicks += 1;
        }
        self.make_ready(id, now);
        self.log_move(id, now);
    }

    fn fail(&mut self, id: u64, error: Vec<u8>, now: Instant, w: &mut Vec<u8>) {
        self.service_done(id, now);
        self.remove_from_state(id);
        let Some(j) = self.jobs.get_mut(&id) else { return };
        // Keep the end of long error texts (where the cause usually is),
        // bounded so a job plus its error always fit one log record.
        let tail = &error[error.len().saturating_sub(MAX_ERROR_TEXT)..];
        j.set_last_error(Some(String::from_utf8_lossy(tail).into_owned()));
        let attempts = j.counts.reserves;
        let tube = j.tube.clone();
        let policy = self.tubes.get(&tube).map(|t| t.policy).unwrap_or_default();
        if attempts >= policy.max_attempts {
            if let Some(j) = self.jobs.get_mut(&id) {
                j.counts.buries += 1;
            }
            self.make_buried(id);
            self.log_move(id, now);
            reply_fmt(w, format_args!("FAILED-BURIED {attempts}\r\n"));
            return;
        }
        let delay_ms = self.backoff(policy, attempts);
        if let Some(j) = self.jobs.get_mut(&id) {
            j.counts.releases += 1;
            j.delay_s = u32::try_from(delay_ms.div_ceil(1000)).unwrap_or(u32::MAX);
        }
        if delay_ms == 0 {
            self.make_ready(id, now);
        } else {
            self.make_delayed(id, now + Duration::from_millis(delay_ms));
        }
        self.log_move(id, now);
        reply_fmt(w, format_args!("FAILED {attempts} {delay_ms}\r\n"));
    }

    /// Exponential backoff with ±25% jitter, capped:
    /// `min(base * 2^(attempts-1), max)`.
    fn backoff(&mut self, p: Policy, attempts: u32) -> u64 {
        let exp = attempts.saturating_sub(1).min(40);
        let raw = p.backoff_ms.saturating_mul(1u64 << exp).min(p.backoff_max_ms);
        if raw == 0 {
            return 0;
        }
        let quarter = raw / 4;
        let jitter = if quarter == 0 { 0 } else { self.random() % (2 * quarter + 1) };
        (raw - quarter + jitter).min(p.backoff_max_ms.max(1))
    }

    // -------------------------------------------------------------- timers

    /// Fires everything due at `now`: delayed jobs become ready, leases
    /// expire, waits time out, pauses end. Returns the next due time.
    pub(crate) fn tick(&mut self, now: Instant) -> Option<Instant> {
        // Delayed -> ready.
        while let Some(&(at, id)) = self.delayed.first() {
            if at > now {
                break;
            }
            self.remove_from_state(id);
            self.make_ready(id, now);
        }
        // Waits first, as beanstalkd's conn_timeout decides DEADLINE_SOON
        // before it expires leases: a late tick must not turn a waiting
        // reserve's DEADLINE_SOON into TIMED_OUT.
        // Waits: DEADLINE_SOON or TIMED_OUT.
        while let Some(&(at, c, seq)) = self.waits.first() {
            if at > now {
                break;
            }
            self.waits.remove(&(at, c, seq));
            let valid = self.conns.get(&c).and_then(|x| x.wait).is_some_and(|w| w.seq == seq);
            if !valid {
                continue;
            }
            let soon = self.deadline_soon(c, now);
            self.stop_waiting(c);
            let msg: &[u8] = if soon { b"DEADLINE_SOON\r\n" } else { b"TIMED_OUT\r\n" };
            self.out.push((c, msg.to_vec()));
        }
        // Leases past TTR.
        while let Some(&(at, id)) = self.ttr.first() {
            if at > now {
                break;
            }
            self.remove_from_state(id);
            let Some(j) = self.jobs.get_mut(&id) else { continue };
            j.counts.timeouts += 1;
            let (attempts, tube) = (j.counts.reserves, j.tube.clone());
            self.ct.job_timeouts += 1;
            let p = self.tubes.get(&tube).map(|t| t.policy).unwrap_or_default();
            if p.configured && attempts >= p.max_attempts {
                if let Some(j) = self.jobs.get_mut(&id) {
                    j.set_last_error(Some(format!(
                        "poison pill: {attempts} attempts ended without an outcome"
                    )));
                    j.counts.buries += 1;
                }
                self.make_buried(id);
            } else {
                self.make_ready(id, now);
            }
            self.log_move(id, now);
        }
        // Pauses that ended.
        while let Some((at, name)) = self.pauses.first().cloned() {
            if at > now {
                break;
            }
            self.pauses.remove(&(at, name.clone()));
            if let Some(t) = self.tubes.get_mut(&name) {
                if t.unpause_at == Some(at) {
                    t.unpause_at = None;
                    t.pause = Duration::ZERO;
                    self.dirty = true;
                }
            }
        }
        self.process_queue(now);
        // Little's-law windows, once a second.
        if now.saturating_duration_since(self.last_window) >= Duration::from_secs(1) {
            let secs = now.saturating_duration_since(self.last_window).as_secs_f64();
            self.last_window = now;
            for t in self.tubes.values_mut() {
                let rate = t.done_window as f64 / secs;
                t.rate = 0.5 * t.rate + 0.5 * rate;
                if t.done_window > 0 {
                    let s = t.service_ns_window as f64 / t.done_window as f64 / 1e9;
                    t.service_s = if t.service_s == 0.0 { s } else { 0.5 * t.service_s + 0.5 * s };
                }
                t.done_window = 0;
                t.service_ns_window = 0;
            }
        }
        self.compact(now);
        self.next_due()
    }

    pub(crate) fn next_due(&self) -> Option<Instant> {
        let mut due = [
            self.delayed.first().map(|x| x.0),
            self.ttr.first().map(|x| x.0),
            self.waits.first().map(|x| x.0),
            self.pauses.first().map(|x| x.0),
            Some(self.last_window + Duration::from_secs(1)),
        ]
        .into_iter()
        .flatten()
        .min();
        if self.log.as_ref().is_some_and(|l| l.pending_release.is_some() || l.pending_cut.is_some())
        {
            // Compaction in progress: a batch every 10 ms.
            let soon = Instant::now() + Duration::from_millis(10);
            due = Some(due.map_or(soon, |d| d.min(soon)));
        }
        due
    }

    // ---------------------------------------------------------- compaction

    /// What job `id` would share with others in a `PutBatch`, if it is
    /// still as it was put (see `persist::is_new_put`).
    fn batch_head(&self, id: u64, now: Instant) -> Option<BatchHead> {
        let rec = Self::put_record(id, self.jobs.get(&id)?, Vec::new(), now);
        if !persist::is_new_put(&rec) {
            return None;
        }
        match rec {
            DRec::Put { tube, pri, delay_s, ttr_s, created_ms, .. } => {
                Some(BatchHead { tube, pri, delay_s, ttr_s, created_ms })
            }
            _ => None,
        }
    }

    /// Compaction: logs job `id` again as a `Put`. False if the log failed.
    fn rewrite_one(&mut self, id: u64, now: Instant) -> bool {
        let Some(j) = self.jobs.get(&id) else { return true };
        let old_len = j.rec_len;
        if let Some(log) = &mut self.log {
            log.live_bytes = log.live_bytes.saturating_sub(u64::from(old_len));
        }
        if self.log_put(id, now).is_err() {
            return false;
        }
        self.ct.records_migrated += 1;
        true
    }

    /// Compaction: logs jobs `ids` (alike: `head`) again as one
    /// `PutBatch`. False if the log failed.
    fn rewrite_batch(&mut self, ids: &[u64], head: &BatchHead) -> bool {
        let ids: Vec<u64> = ids.iter().copied().filter(|id| self.jobs.contains_key(id)).collect();
        let Some(&first) = ids.first() else { return true };
        let mut bodies = Vec::with_capacity(ids.len());
        for id in &ids {
            let Some(j) = self.jobs.get_mut(id) else { continue };
            if let Some(log) = &mut self.log {
                log.live_bytes = log.live_bytes.saturating_sub(u64::from(j.rec_len));
            }
            // Moved into the record and back: no copy.
            bodies.push(std::mem::take(&mut j.body).into_vec());
        }
        let consecutive = ids.windows(2).all(|w| w[1] == w[0] + 1);
        let listed = if consecutive { Vec::new() } else { ids.to_vec() };
        let (bodies, logged) = self.log_batch(first, listed, head, bodies);
        for (id, body) in ids.iter().zip(bodies) {
            if let Some(j) = self.jobs.get_mut(id) {
                j.body = body.into_boxed_slice();
            }
        }
        let Ok(Some((lsn, share))) = logged else { return logged.is_ok() };
        for &id in &ids {
            self.logged_at(id, lsn, share);
        }
        self.ct.records_migrated += ids.len() as u64;
        true
    }

    /// Keeps the log within about twice the live jobs' records plus a few
    /// segments:
    ///
    /// 1. When the log holds more than 4 segments and more than twice the
    ///    live records' bytes, choose the cut: the end of the newest finished
    ///    segment.
    /// 2. Each tick, rewrite up to [`COMPACT_BATCH`] live jobs whose latest
    ///    `Put` lies below the cut at the tail: as fresh `Put`s, or runs of
    ///    jobs still as they were put and alike as one `PutBatch` each.
    /// 3. When none is left, log the tube configurations and an `IdMark`,
    ///    and ask for a sync.
    /// 4. Once the mark is durable, release the segments below the cut.
    fn compact(&mut self, now: Instant) {
        let Some(log) = &mut self.log else { return };
        if log.failed.is_some() {
            return;
        }
        if let Some((below, mark)) = log.pending_release {
            let st = log.wal.stats();
            if st.durable_lsn > mark {
                let sent = log.releaser.as_ref().is_some_and(|tx| tx.send(below).is_ok());
                if !sent {
                    // No release thread (it could not be started): do it here.
                    let _ = log.wal.release_below(below);
                }
                // The appender caches its segment: a fresh one lets the
                // released files go.
                log.app = log.wal.appender();
                log.pending_release = None;
            } else {
                log.wal.request_sync();
            }
            return;
        }
        let cut = match log.pending_cut {
            Some(c) => c,
            None => {
                let segs = log.wal.segments();
                let log_bytes: u64 = segs.iter().map(|s| s.1 - s.0).sum();
                // Tube configurations are rewritten too: count them as live.
                let configs: u64 = self
                    .tubes
                    .values()
                    .filter(|t| t.policy.configured)
                    .map(|t| t.name.len() as u64 + 96)
                    .sum();
                if segs.len() <= 4 || log_bytes <= 2 * (log.live_bytes + configs) {
                    return;
                }
                let published = log.wal.stats().published_lsn;
                let Some(cut) = segs.iter().map(|s| s.1).filter(|&e| e <= published).max() else {
                    return;
                };
                log.pending_cut = Some(cut);
                cut
            }
        };
        let mut batch = Vec::new();
        while batch.len() < COMPACT_BATCH {
            match log.by_lsn.front() {
                Some(&(lsn, id)) if lsn < cut => {
                    log.by_lsn.pop_front();
                    // Current only if the job still has this Put.
                    if self.jobs.get(&id).is_some_and(|j| j.lsn == lsn) {
                        batch.push(id);
                    }
                }
                _ => break,
            }
        }
        let more = batch.len() == COMPACT_BATCH;
        // Runs of jobs that are still as they were put and alike but for
        // their bodies (typically from one `put-batch`) are rewritten as
        // one `PutBatch`, the others one `Put` each: rewriting a batched
        // job alone would take ~4x its share of the old record.
        let limit = self.batch_limit();
        let cost = |s: &Store, id: u64| {
            s.jobs.get(&id).map_or(0, |j| j.body.len()) + persist::BATCH_JOB_BYTES
        };
        let mut i = 0;
        while i < batch.len() {
            let head = self.batch_head(batch[i], now);
            let mut end = i + 1;
            if let Some(h) = &head {
                let mut size = cost(self, batch[i]);
                while end < batch.len()
                    && size + cost(self, batch[end]) <= limit
                    && self.batch_head(batch[end], now).as_ref() == Some(h)
                {
                    size += cost(self, batch[end]);
                    end += 1;
                }
            }
            let ok = match head {
                Some(h) if end - i > 1 => self.rewrite_batch(&batch[i..end], &h),
                _ => self.rewrite_one(batch[i], now),
            };
            if !ok {
                return;
            }
            i = end;
        }
        if more {
            return;
        }
        let configs: Vec<DRec> = self
            .tubes
            .values()
            .filter(|t| t.policy.configured)
            .map(|t| DRec::TubeConfig {
                tube: t.name.to_string(),
                max_attempts: t.policy.max_attempts,
                backoff_ms: t.policy.backoff_ms,
                backoff_max_ms: t.policy.backoff_max_ms,
            })
            .collect();
        for r in configs {
            self.log_rec(&r);
        }
        let next_id = self.next_id;
        let Some(log) = &mut self.log else { return };
        log.pending_cut = None;
        if let Ok((mark, _)) = log.append(&DRec::IdMark { next_id }) {
            self.ct.records_written += 1;
            log.pending_release = Some((cut, mark));
            log.wal.request_sync();
        }
    }

    /// Panics if the counters disagree with the structures (fuzzing).
    #[doc(hidden)]
    #[allow(clippy::panic)]
    pub(crate) fn check(&self) {
        let (mut ready, mut delayed, mut buried, mut reserved, mut urgent) = (0, 0, 0, 0, 0);
        for t in self.tubes.values() {
            ready += t.ready.len() as u64;
            delayed += t.delayed.len() as u64;
            buried += t.buried.len() as u64;
            reserved += t.reserved;
            urgent += t.urgent;
            let live = self.jobs.values().filter(|j| j.tube == t.name).count() as u64;
            assert_eq!(live, t.jobs, "tube {} job count", t.name);
        }
        assert_eq!(ready, self.ready_ct, "ready");
        for t in self.tubes.values() {
            assert_eq!(
                self.waiting_tubes.contains(&t.name),
                !t.waiting.is_empty(),
                "waiting_tubes for {}",
                t.name
            );
        }
        assert_eq!(delayed, self.delayed_ct, "delayed");
        assert_eq!(buried, self.buried_ct, "buried");
        assert_eq!(reserved, self.reserved_ct, "reserved");
        assert_eq!(urgent, self.urgent_ct, "urgent");
        assert_eq!(self.delayed.len() as u64, self.delayed_ct, "timer set");
        assert_eq!(self.ttr.len() as u64, self.reserved_ct, "ttr set");
        let bytes: u64 = self.jobs.values().map(|j| j.body.len() as u64).sum();
        assert_eq!(bytes, self.bytes, "bytes");
        for (id, j) in &self.jobs {
            if !self.tubes.contains_key(&j.tube) {
                panic!("job {id} in a dropped tube {}", j.tube);
            }
            if let State::Reserved { by, .. } = j.state {
                let held = self.conns.get(&by).is_some_and(|c| c.reserved.contains(id));
                assert!(held, "job {id} reserved by a connection that does not hold it");
            }
        }
        for c in self.conns.values() {
            assert!(self.tubes.contains_key(&c.use_tube), "used tube dropped");
            for w in &c.watch {
                assert!(self.tubes.contains_key(w), "watched tube dropped");
            }
        }
    }

    // ------------------------------------------------------------ recovery

    /// Rebuilds the table from the log (at start, before any connection).
    pub(crate) fn recover(&mut self, now: Instant) -> Result<RecoverReport, String> {
        let Some(log) = self.log.take() else { return Ok(RecoverReport::default()) };
        // (LSN, framed length, record)
        let mut recs: Vec<(u64, u32, DRec)> = Vec::new();
        let mut bad = None;
        log.wal
            .replay(|r| {
                if bad.is_some() {
                    return;
                }
                let framed = (r.payload.len() as u64 + FRAME_OVERHEAD).div_ceil(16) * 16;
                let framed = u32::try_from(framed).unwrap_or(u32::MAX);
                match persist::decode(r.kind, r.payload) {
                    Ok(DRec::PutBatch {
                        first_id,
                        ids,
                        tube,
                        pri,
                        delay_s,
                        ttr_s,
                        created_ms,
                        bodies,
                    }) => {
                        // One `Put` per job, each with its share of the frame.
                        let share =
                            framed.div_ceil(u32::try_from(bodies.len()).unwrap_or(1).max(1));
                        let ids = if ids.is_empty() {
                            (first_id..).take(bodies.len()).collect()
                        } else {
                            ids
                        };
                        for (id, body) in ids.into_iter().zip(bodies) {
                            let put = DRec::new_put(
                                id,
                                tube.clone(),
                                pri,
                                delay_s,
                                ttr_s,
                                body,
                                created_ms,
                            );
                            recs.push((r.lsn, share, put));
                        }
                    }
                    Ok(d) => recs.push((r.lsn, framed, d)),
                    Err(e) => bad = Some(format!("record at lsn {}: {e}", r.lsn)),
                }
            })
            .map_err(|e| e.to_string())?;
        if let Some(b) = bad {
            return Err(b);
        }
        let wall_now = now_ms();
        let mut report = RecoverReport::default();
        let mut lsns: HashMap<u64, (u64, u32), IdBuild> = HashMap::default();
        for (lsn, len, rec) in recs {
            match rec {
                DRec::Put {
                    id,
                    tube,
                    pri,
                    delay_s,
                    ttr_s,
                    body,
                    state,
                    run_at_ms,
                    bury_seq,
                    created_ms,
                    counts,
                    unique,
                    last_error,
                } => {
                    if self.jobs.contains_key(&id) {
                        self.destroy(id);
                    }
                    let t = self.tube_ref(&tube);
                    self.insert_job(id, &t, pri, 0, ttr_s, body, unique, now);
                    if let Some(j) = self.jobs.get_mut(&id) {
                        j.delay_s = delay_s;
                        j.counts = counts;
                        j.set_last_error(last_error);
                        j.created = Stamp::before(
                            now,
                            Duration::from_millis(wall_now.saturating_sub(created_ms)),
                        );
                    }
                    self.apply_state(id, state, run_at_ms, bury_seq, wall_now, now);
                    lsns.insert(id, (lsn, len));
                    self.next_id = self.next_id.max(id + 1);
                }
                // Expanded into `Put`s as the log was read (above).
                DRec::PutBatch { .. } => {}
                DRec::Move { id, pri, delay_s, state, run_at_ms, bury_seq, counts, last_error } => {
                    if self.jobs.contains_key(&id) {
                        self.remove_from_state(id);
                        if let Some(j) = self.jobs.get_mut(&id) {
                            j.pri = pri;
                            j.delay_s = delay_s;
                            j.counts = counts;
                            j.set_last_error(last_error);
                        }
                        self.make_ready(id, now);
                        self.apply_state(id, state, run_at_ms, bury_seq, wall_now, now);
                    }
                }
                DRec::Reserve { id } => {
                    if let Some(j) = self.jobs.get_mut(&id) {
                        j.counts.reserves += 1;
                    }
                }
                DRec::Delete { id } => {
                    self.destroy(id);
                    lsns.remove(&id);
                }
                DRec::IdMark { next_id } => self.next_id = self.next_id.max(next_id),
                DRec::TubeConfig { tube, max_attempts, backoff_ms, backoff_max_ms } => {
                    let t = self.tube_ref(&tube);
                    if let Some(tt) = self.tube_mut(&t) {
                        tt.policy =
                            Policy { max_attempts, backoff_ms, backoff_max_ms, configured: true };
                    }
                }
            }
        }
        // Jobs are counted as created now for stats; restore per-tube
        // totals as beanstalkd does (total-jobs counts recovered jobs).
        // Replay is done (it must log nothing): the log is back for the
        // live jobs' positions, in LSN order.
        self.log = Some(log);
        let mut lsns: Vec<(u64, u32, u64)> =
            lsns.into_iter().map(|(id, (lsn, len))| (lsn, len, id)).collect();
        lsns.sort_unstable();
        for (lsn, len, id) in lsns {
            self.logged_at(id, lsn, len);
        }
        report.jobs = self.jobs.len();
        // Replayed puts (compaction rewrites included) were counted as they
        // went; after a restart the totals are the jobs that came back.
        self.ct.total_jobs = self.jobs.len() as u64;
        for t in self.tubes.values_mut() {
            t.total_jobs = t.jobs;
        }
        // Drop tubes that only existed in the log.
        let names: Vec<Arc<str>> = self.tube_order.clone();
        for n in names {
            self.maybe_drop_tube(&n);
        }
        Ok(report)
    }

    fn apply_state(
        &mut self,
        id: u64,
        state: u8,
        run_at_ms: u64,
        bury_seq: u64,
        wall_now: u64,
        now: Instant,
    ) {
        match state {
            ST_DELAYED => {
                self.remove_from_state(id);
                let at = now + Duration::from_millis(run_at_ms.saturating_sub(wall_now));
                self.make_delayed(id, at);
            }
            ST_BURIED => {
                self.remove_from_state(id);
                if bury_seq == 0 {
                    self.make_buried(id);
                } else {
                    self.make_buried_at(id, bury_seq);
                }
            }
            ST_READY => {}
            _ => {}
        }
    }
}

/// Whether a command changes something the log must record.
fn writes_log(cmd: &Cmd) -> bool {
    matches!(
        cmd,
        Cmd::Put { .. }
            | Cmd::PutUnique { .. }
            | Cmd::PutBatch { .. }
            | Cmd::Reserve
            | Cmd::ReserveTimeout(_)
            | Cmd::ReserveBatch { .. }
            | Cmd::ReserveJob(_)
            | Cmd::Delete(_)
            | Cmd::Release { .. }
            | Cmd::Bury { .. }
            | Cmd::Kick(_)
            | Cmd::KickJob(_)
            | Cmd::Fail { .. }
            | Cmd::TubeConfig { .. }
            | Cmd::ClearTube { .. }
    ) || matches!(cmd, Cmd::Fenced { inner, .. } if writes_log(inner))
}

/// What recovery found.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct RecoverReport {
    /// Live jobs rebuilt.
    pub jobs: usize,
}

enum PutOk {
    Inserted(u64),
    Duplicate(u64),
}

fn clamp_usize(v: u64) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

fn bury_seq_of(s: State) -> u64 {
    match s {
        State::Buried(seq) => seq,
        _ => 0,
    }
}

fn logged_state(s: State, now: Instant) -> (u8, u64) {
    match s {
        State::Ready | State::Reserved { .. } => (ST_READY, 0),
        State::Delayed(at) => (ST_DELAYED, wall_ms(at, now)),
        State::Buried(_) => (ST_BURIED, 0),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Wall-clock milliseconds of the monotonic instant `at`.
fn wall_ms(at: Instant, now: Instant) -> u64 {
    // The wall clock of `now`, read once per `now` (every job of a
    // `put-batch` shares one; `SystemTime::now` was ~2% of a batch).
    thread_local! {
        static WALL: std::cell::Cell<Option<(Instant, u64)>> = const { std::cell::Cell::new(None) };
    }
    let n = WALL.with(|w| match w.get() {
        Some((at, ms)) if at == now => ms,
        _ => {
            let ms = now_ms();
            w.set(Some((now, ms)));
            ms
        }
    });
    if at >= now {
        n.saturating_add(u64::try_from((at - now).as_millis()).unwrap_or(u64::MAX))
    } else {
        n.saturating_sub(u64::try_from((now - at).as_millis()).unwrap_or(u64::MAX))
    }
}

fn reply_fmt(w: &mut Vec<u8>, args: std::fmt::Arguments<'_>) {
    // Writing to a Vec cannot fail.
    let _ = w.write_fmt(args);
}

/// `OK <bytes>\r\n<data>\r\n`
fn yaml_reply(w: &mut Vec<u8>, s: &str) {
    reply_fmt(w, format_args!("OK {}\r\n", s.len()));
    w.extend_from_slice(s.as_bytes());
    w.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::server::proto::parse;

    #[test]
    #[cfg(target_pointer_width = "64")]
    fn a_job_fits_the_128_byte_size_class() {
        // See `Job`: one byte more and every job takes mimalloc's 160.
        assert!(std::mem::size_of::<Job>() <= 128, "{}", std::mem::size_of::<Job>());
    }

    #[test]
    fn the_extra_box_goes_when_empty_and_keeps_the_unique_key() {
        let mut j = Job {
            tube: Arc::from("t"),
            body: Box::default(),
            state: State::Ready,
            created: Stamp::of(Instant::now()),
            since: Stamp::of(Instant::now()),
            lsn: 0,
            extra: None,
            pri: 0,
            delay_s: 0,
            ttr_s: 1,
            rec_len: 0,
            counts: Counts::default(),
        };
        j.set_last_error(Some("e".into()));
        assert_eq!(j.last_error(), Some("e"));
        j.set_last_error(None);
        assert!(j.extra.is_none());
        j.extra = Some(Box::new(Extra { unique: Some("k".into()), last_error: None }));
        j.set_last_error(Some("e".into()));
        j.set_last_error(None);
        assert_eq!((j.unique(), j.last_error()), (Some("k"), None));
    }

    pub(super) fn cfg() -> StoreConfig {
        StoreConfig {
            max_job_size: 65535,
            max_jobs: 1000,
            max_bytes: 1 << 20,
            segment_size: 64 << 10,
            latency_target: Duration::from_millis(100),
            version: "test".into(),
        }
    }

    /// Runs one command line (with an optional body) and returns the reply.
    pub(super) fn run(s: &mut Store, c: ConnId, line: &str, body: &[u8], now: Instant) -> String {
        let cmd = parse(line.as_bytes()).expect("command parses");
        let mut w = Vec::new();
        s.handle(c, cmd, body.to_vec(), now, &mut w);
        String::from_utf8_lossy(&w).into_owned()
    }

    #[test]
    fn fail_backs_off_then_buries_with_the_error() {
        let t0 = Instant::now();
        let mut s = Store::new(cfg(), None, t0);
        s.connect(1);
        assert_eq!(run(&mut s, 1, "tube-config default 2 100 1000", b"", t0), "CONFIGURED\r\n");
        assert_eq!(run(&mut s, 1, "put 0 0 60 1", b"x", t0), "INSERTED 1\r\n");
        assert!(run(&mut s, 1, "reserve-with-timeout 0", b"", t0).starts_with("RESERVED 1 1"));
        let r = run(&mut s, 1, "fail 1 4", b"boom", t0);
        let parts: Vec<&str> = r.trim_end().split(' ').collect();
        assert_eq!(parts[0..2], ["FAILED", "1"]);
        let delay: u64 = parts[2].parse().unwrap();
        assert!((75..=125).contains(&delay), "100 ms +-25% jitter, got {delay}");
        assert_eq!(run(&mut s, 1, "reserve-with-timeout 0", b"", t0), "TIMED_OUT\r\n");
        let t1 = t0 + Duration::from_millis(delay);
        s.tick(t1);
        assert!(run(&mut s, 1, "reserve-with-timeout 0", b"", t1).starts_with("RESERVED 1 1"));
        assert_eq!(run(&mut s, 1, "fail 1 5", b"boom2", t1), "FAILED-BURIED 2\r\n");
        let y = run(&mut s, 1, "stats-job-ext 1", b"", t1);
        assert!(y.contains("state: buried") && y.contains("last-error: \"boom2\""), "{y}");
        assert_eq!(run(&mut s, 1, "fail 1 1", b"x", t1), "NOT_FOUND\r\n");
    }

    #[test]
    fn fenced_commands_need_the_current_lease() {
        let t0 = Instant::now();
        let sec = |x: f64| t0 + Duration::from_secs_f64(x);
        let mut s = Store::new(cfg(), None, t0);
        s.connect(1);
        s.connect(2);
        assert_eq!(run(&mut s, 1, "put 0 0 1 1", b"x", t0), "INSERTED 1\r\n");
        assert!(run(&mut s, 1, "reserve-with-timeout 0", b"", t0).starts_with("RESERVED 1 1"));
        assert_eq!(run(&mut s, 2, "lease 1", b"", t0), "NOT_FOUND\r\n");
        assert_eq!(run(&mut s, 1, "lease 1", b"", t0), "LEASED 1 1\r\n");
        // Another connection extends the lease with the token...
        assert_eq!(run(&mut s, 2, "touch-lease 1 1", b"", sec(0.9)), "TOUCHED\r\n");
        s.tick(sec(1.5));
        assert!(run(&mut s, 2, "stats-job 1", b"", sec(1.5)).contains("state: reserved"));
        // ...which then passes: the job is reserved again, by connection 2.
        s.tick(sec(2.0));
        assert!(run(&mut s, 2, "reserve-with-timeout 0", b"", sec(2.0)).starts_with("RESERVED 1"));
        assert_eq!(run(&mut s, 2, "lease 1", b"", sec(2.0)), "LEASED 1 2\r\n");
        // The first holder's token is stale for every fenced command.
        for cmd in ["delete-lease 1 1", "touch-lease 1 1", "bury-lease 1 1 0"] {
            assert_eq!(run(&mut s, 1, cmd, b"", sec(2.0)), "STALE_LEASE\r\n", "{cmd}");
        }
        assert_eq!(run(&mut s, 1, "fail-lease 1 1 1", b"e", sec(2.0)), "STALE_LEASE\r\n");
        // The current token works from any connection, for the holder.
        assert_eq!(run(&mut s, 1, "release-lease 1 2 7 0", b"", sec(2.0)), "RELEASED\r\n");
        let y = run(&mut s, 1, "stats-job 1", b"", sec(2.0));
        assert!(y.contains("state: ready") && y.contains("pri: 7"), "{y}");
        assert_eq!(run(&mut s, 1, "delete-lease 1 2", b"", sec(2.0)), "STALE_LEASE\r\n");
        assert!(run(&mut s, 2, "reserve-with-timeout 0", b"", sec(2.0)).starts_with("RESERVED 1"));
        let r = run(&mut s, 1, "fail-lease 1 3 4", b"boom", sec(2.0));
        assert!(r.starts_with("FAILED 3 "), "{r}");
        s.tick(sec(9.0));
        assert!(run(&mut s, 2, "reserve-with-timeout 0", b"", sec(9.0)).starts_with("RESERVED 1"));
        // A closed holder's lease is gone with it.
        s.disconnect(2, sec(9.0));
        assert_eq!(run(&mut s, 1, "delete-lease 1 4", b"", sec(9.0)), "STALE_LEASE\r\n");
        assert_eq!(run(&mut s, 1, "delete-lease 9 1", b"", sec(9.0)), "NOT_FOUND\r\n");
        assert!(run(&mut s, 1, "reserve-with-timeout 0", b"", sec(9.0)).starts_with("RESERVED 1"));
        assert_eq!(run(&mut s, 1, "lease 1", b"", sec(9.0)), "LEASED 1 5\r\n");
        assert_eq!(run(&mut s, 1, "delete-lease 1 5", b"", sec(9.0)), "DELETED\r\n");
        s.check();
    }

    #[test]
    fn unique_keys_batches_and_clearing() {
        let t0 = Instant::now();
        let mut s = Store::new(cfg(), None, t0);
        s.connect(1);
        assert_eq!(run(&mut s, 1, "put-unique k1 0 0 60 1", b"a", t0), "INSERTED 1\r\n");
        assert_eq!(run(&mut s, 1, "put-unique k1 0 0 60 1", b"b", t0), "DUPLICATE 1\r\n");
        let mut w = Vec::new();
        s.put_batch(1, 0, 0, 60, vec![b"x".to_vec(), b"y".to_vec(), b"z".to_vec()], t0, &mut w);
        assert_eq!(String::from_utf8_lossy(&w), "INSERTED-BATCH 2 3\r\n");
        let r = run(&mut s, 1, "reserve-batch 10 0", b"", t0);
        assert_eq!(r, "RESERVED-BATCH 4\r\n1 1\r\na\r\n2 1\r\nx\r\n3 1\r\ny\r\n4 1\r\nz\r\n");
        for id in 1..=4 {
            assert_eq!(run(&mut s, 1, &format!("release {id} 0 0"), b"", t0), "RELEASED\r\n");
        }
        assert_eq!(run(&mut s, 1, "clear-tube default ready", b"", t0), "CLEARED 4\r\n");
        // The key is free again once its job is gone.
        assert_eq!(run(&mut s, 1, "put-unique k1 0 0 60 1", b"c", t0), "INSERTED 5\r\n");
        assert_eq!(s.jobs.len(), 1);
    }

    #[test]
    fn a_waiting_reserve_is_served_by_a_put_and_leases_expire() {
        let t0 = Instant::now();
        let mut s = Store::new(cfg(), None, t0);
        s.connect(1);
        s.connect(2);
        let mut w = Vec::new();
        let cmd = parse(b"reserve").unwrap();
        assert_eq!(s.handle(1, cmd, Vec::new(), t0, &mut w), Flow::Wait);
        assert!(w.is_empty());
        assert_eq!(run(&mut s, 2, "put 0 0 2 2", b"hi", t0), "INSERTED 1\r\n");
        assert_eq!(s.out, vec![(1, b"RESERVED 1 2\r\nhi\r\n".to_vec())]);
        s.out.clear();
        // Someone else cannot delete it; after TTR it is ready again.
        assert_eq!(run(&mut s, 2, "delete 1", b"", t0), "NOT_FOUND\r\n");
        s.tick(t0 + Duration::from_secs(2));
        assert_eq!(s.jobs[&1].state, State::Ready);
        assert_eq!(s.jobs[&1].counts.timeouts, 1);
        assert_eq!(run(&mut s, 1, "touch 1", b"", t0), "NOT_FOUND\r\n");
        // Closing a connection returns its reservations.
        let t1 = t0 + Duration::from_secs(3);
        assert!(run(&mut s, 2, "reserve", b"", t1).starts_with("RESERVED 1"));
        s.disconnect(2, t1);
        assert_eq!(s.jobs[&1].state, State::Ready);
    }

    #[test]
    fn limits_answer_out_of_memory_and_keep_what_was_accepted() {
        let t0 = Instant::now();
        let mut c = cfg();
        c.max_jobs = 2;
        let mut s = Store::new(c, None, t0);
        s.connect(1);
        assert_eq!(run(&mut s, 1, "put 0 0 1 1", b"a", t0), "INSERTED 1\r\n");
        assert_eq!(run(&mut s, 1, "put 0 0 1 1", b"b", t0), "INSERTED 2\r\n");
        assert_eq!(run(&mut s, 1, "put 0 0 1 1", b"c", t0), "OUT_OF_MEMORY\r\n");
        assert_eq!(s.jobs.len(), 2);
        s.draining = true;
        assert_eq!(run(&mut s, 1, "put 0 0 1 1", b"d", t0), "DRAINING\r\n");
    }

    #[test]
    fn poison_pills_are_buried_only_with_a_configured_policy() {
        let t0 = Instant::now();
        let mut s = Store::new(cfg(), None, t0);
        s.connect(1);
        assert_eq!(run(&mut s, 1, "put 0 0 1 1", b"p", t0), "INSERTED 1\r\n");
        // beanstalkd rules: timeouts and dead holders never bury.
        let mut now = t0;
        for _ in 0..3 {
            assert!(run(&mut s, 1, "reserve", b"", now).starts_with("RESERVED 1"));
            now += Duration::from_secs(1);
            s.tick(now);
        }
        assert_eq!(s.jobs[&1].state, State::Ready);
        assert_eq!(run(&mut s, 1, "tube-config default 4 0 0", b"", now), "CONFIGURED\r\n");
        assert!(run(&mut s, 1, "reserve", b"", now).starts_with("RESERVED 1"));
        s.disconnect(1, now);
        assert!(matches!(s.jobs[&1].state, State::Buried(_)));
        assert!(s.jobs[&1].last_error().unwrap_or("").contains("poison pill"));
    }

    pub(super) fn open_log(dir: &std::path::Path) -> Log {
        let opts = WalOptions {
            shard: 0,
            segment_size: 64 << 10,
            sync: spindle_wal::SyncPolicy::Never,
            recovery: spindle_wal::RecoveryMode::Truncate,
            prepare_ahead: 1,
            access: spindle_wal::FileAccess::Private,
        };
        let (wal, _) = Wal::open(dir, opts).unwrap();
        Log::inline(wal)
    }
    use spindle_wal::WalOptions;

    /// The classic beanstalkd binlog growth: a long-delayed job, a buried
    /// job and a release loop must not keep old segments alive.
    #[test]
    fn compaction_bounds_the_log_and_recovery_rebuilds_the_jobs() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = Instant::now();
        let mut s = Store::new(cfg(), Some(open_log(dir.path())), t0);
        s.connect(1);
        assert_eq!(run(&mut s, 1, "put 0 3600 60 5", b"later", t0), "INSERTED 1\r\n");
        assert_eq!(run(&mut s, 1, "put 7 0 60 4", b"dead", t0), "INSERTED 2\r\n");
        assert!(run(&mut s, 1, "reserve", b"", t0).starts_with("RESERVED 2"));
        assert_eq!(run(&mut s, 1, "bury 2 9", b"", t0), "BURIED\r\n");
        assert_eq!(run(&mut s, 1, "put 5 0 60 4", b"loop", t0), "INSERTED 3\r\n");
        let body = vec![b'p'; 200];
        let mut max_segments = 0;
        for i in 0..20_000u32 {
            let now = t0 + Duration::from_millis(u64::from(i));
            let r = run(&mut s, 1, "put 1 0 60 200", &body, now);
            assert!(r.starts_with("INSERTED"), "{r}");
            let id: u64 = r.trim_end()[9..].parse().unwrap();
            assert!(run(&mut s, 1, "reserve", b"", now).starts_with(&format!("RESERVED {id} ")));
            assert_eq!(run(&mut s, 1, &format!("delete {id}"), b"", now), "DELETED\r\n");
            if i % 100 == 0 {
                // The release loop on job 3.
                assert!(run(&mut s, 1, "reserve-job 3", b"", now).starts_with("RESERVED 3"));
                assert_eq!(run(&mut s, 1, "release 3 5 0", b"", now), "RELEASED\r\n");
                s.log.as_ref().unwrap().wal.sync().unwrap();
                s.tick(now);
                max_segments = max_segments.max(s.log.as_ref().unwrap().wal.segments().len());
            }
        }
        // 20 000 x ~300 B = ~6 MB written: ~90 segments of 64 KiB without
        // compaction.
        assert!(max_segments <= 8, "log grew to {max_segments} segments");
        assert!(s.ct.records_migrated > 0, "compaction rewrote live jobs");
        eprintln!("max segments {max_segments}, migrated {}", s.ct.records_migrated);
        let next = s.next_id;
        let log = s.log.take().unwrap();
        log.wal.shutdown().unwrap();
        drop(log);

        let t1 = Instant::now();
        let mut r = Store::new(cfg(), Some(open_log(dir.path())), t1);
        r.recover(t1).unwrap();
        assert_eq!(r.jobs.len(), 3);
        assert!(matches!(r.jobs[&1].state, State::Delayed(_)));
        assert!(matches!(r.jobs[&2].state, State::Buried(_)));
        assert_eq!(r.jobs[&2].pri, 9);
        assert_eq!(r.jobs[&3].state, State::Ready);
        assert_eq!(r.jobs[&3].counts.releases, 200);
        assert!(r.next_id >= next, "ids never go back: {} < {next}", r.next_id);
    }
}

#[cfg(test)]
mod review_tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::tests::{cfg, open_log as log, run};
    use super::*;
    use crate::server::proto::parse;

    fn reopen(s: &mut Store, dir: &std::path::Path) -> Store {
        let l = s.log.take().unwrap();
        l.wal.shutdown().unwrap();
        drop(l);
        let t = Instant::now();
        let mut r = Store::new(cfg(), Some(log(dir)), t);
        r.recover(t).unwrap();
        r
    }

    #[test]
    fn a_record_too_large_fails_one_command_not_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = Instant::now();
        let mut s = Store::new(cfg(), Some(log(dir.path())), t0);
        s.connect(1);
        let big = vec![b'x'; 100 << 10]; // over a 64 KiB segment's record limit
        assert_eq!(run(&mut s, 1, "put 0 0 60 102400", &big, t0), "INTERNAL_ERROR\r\n");
        assert_eq!(run(&mut s, 1, "put 0 0 60 1", b"y", t0), "INSERTED 2\r\n");
        assert_eq!(run(&mut s, 1, "delete 2", b"", t0), "DELETED\r\n");
        assert!(!s.log_failed());
    }

    #[test]
    fn recovery_rebuilds_config_bury_order_returned_reservations_and_totals() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = Instant::now();
        let mut s = Store::new(cfg(), Some(log(dir.path())), t0);
        s.connect(1);
        assert_eq!(run(&mut s, 1, "tube-config default 5 1000 10", b"", t0), "CONFIGURED\r\n");
        for i in 1..=4 {
            assert_eq!(run(&mut s, 1, "put 0 0 60 1", b"j", t0), format!("INSERTED {i}\r\n"));
        }
        // Bury 2 then 1: peek-buried and kick must keep that order.
        assert!(run(&mut s, 1, "reserve-job 2", b"", t0).starts_with("RESERVED 2"));
        assert_eq!(run(&mut s, 1, "bury 2 0", b"", t0), "BURIED\r\n");
        assert!(run(&mut s, 1, "reserve-job 1", b"", t0).starts_with("RESERVED 1"));
        assert_eq!(run(&mut s, 1, "bury 1 0", b"", t0), "BURIED\r\n");
        // Job 3 goes buried -> reserved (reserve-job) -> ready (holder gone).
        assert!(run(&mut s, 1, "reserve-job 3", b"", t0).starts_with("RESERVED 3"));
        assert_eq!(run(&mut s, 1, "bury 3 0", b"", t0), "BURIED\r\n");
        s.connect(2);
        assert!(run(&mut s, 2, "reserve-job 3", b"", t0).starts_with("RESERVED 3"));
        s.disconnect(2, t0);
        assert_eq!(s.jobs[&3].state, State::Ready);
        // Force compaction's rewrite order (by put) to differ from bury order.
        let l = s.log.as_mut().unwrap();
        l.pending_cut = Some(u64::MAX);
        s.compact(t0);

        let mut r = reopen(&mut s, dir.path());
        r.connect(1);
        let t1 = Instant::now();
        let y = run(&mut r, 1, "stats-tube-ext default", b"", t1);
        assert!(y.contains("backoff-ms: 1000\nbackoff-max-ms: 1000\n"), "{y}");
        assert!(y.contains("total-jobs: 4\n"), "{y}");
        assert_eq!(r.jobs[&3].state, State::Ready);
        assert!(run(&mut r, 1, "peek-buried", b"", t1).starts_with("FOUND 2 "));
        assert_eq!(run(&mut r, 1, "kick 1", b"", t1), "KICKED 1\r\n");
        assert!(run(&mut r, 1, "peek-buried", b"", t1).starts_with("FOUND 1 "));
    }

    #[test]
    fn a_format_1_log_recovers_and_takes_format_2_records_after_it() {
        use super::persist::V1Rec;
        let dir = tempfile::tempdir().unwrap();
        let mut l = log(dir.path());
        let created_ms = now_ms();
        let put = |id: u64, state: u8, bury_seq: u64| V1Rec::Put {
            id,
            tube: "old".into(),
            pri: 7,
            delay_s: 0,
            ttr_s: 30,
            body: format!("job {id}").into_bytes(),
            state,
            run_at_ms: 0,
            bury_seq,
            created_ms,
            counts: Counts { reserves: 2, ..Counts::default() },
            unique: None,
            last_error: None,
        };
        let recs = [
            put(1, ST_READY, 0),
            put(2, ST_BURIED, 1),
            put(3, ST_READY, 0),
            V1Rec::Delete { id: 3 },
            V1Rec::Move {
                id: 1,
                pri: 9,
                delay_s: 0,
                state: ST_READY,
                run_at_ms: 0,
                bury_seq: 0,
                counts: Counts { reserves: 3, releases: 1, ..Counts::default() },
                last_error: Some("boom".into()),
            },
        ];
        for r in &recs {
            let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(r).unwrap();
            l.app.append(persist::KIND_V1, &bytes).unwrap();
        }
        l.wal.shutdown().unwrap();
        drop(l);

        let t = Instant::now();
        let mut s = Store::new(cfg(), Some(log(dir.path())), t);
        s.recover(t).unwrap();
        s.connect(1);
        let y = run(&mut s, 1, "stats-job-ext 1", b"", t);
        assert!(y.contains("pri: 9\n") && y.contains("reserves: 3\n"), "{y}");
        assert!(y.contains("releases: 1\n") && y.contains("last-error: \"boom\""), "{y}");
        assert!(run(&mut s, 1, "stats-job 2", b"", t).contains("state: buried\n"));
        assert_eq!(run(&mut s, 1, "peek 3", b"", t), "NOT_FOUND\r\n");
        // New records (format 2) follow the old ones; both replay.
        assert_eq!(run(&mut s, 1, "use old", b"", t), "USING old\r\n");
        assert_eq!(run(&mut s, 1, "put 0 0 60 3", b"new", t), "INSERTED 4\r\n");
        assert_eq!(run(&mut s, 1, "kick 1", b"", t), "KICKED 1\r\n");
        assert_eq!(run(&mut s, 1, "delete 1", b"", t), "DELETED\r\n");

        let mut r = reopen(&mut s, dir.path());
        r.connect(1);
        let t1 = Instant::now();
        assert_eq!(run(&mut r, 1, "peek 1", b"", t1), "NOT_FOUND\r\n");
        assert_eq!(run(&mut r, 1, "peek 2", b"", t1), "FOUND 2 5\r\njob 2\r\n");
        assert!(run(&mut r, 1, "stats-job 2", b"", t1).contains("state: ready\n"));
        assert_eq!(run(&mut r, 1, "peek 4", b"", t1), "FOUND 4 3\r\nnew\r\n");
    }

    #[test]
    fn a_put_batch_shares_log_records_and_comes_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = Instant::now();
        let mut s = Store::new(cfg(), Some(log(dir.path())), t0);
        s.connect(1);
        assert_eq!(run(&mut s, 1, "put 0 0 60 1", b"a", t0), "INSERTED 1\r\n");
        // 40 jobs of 1000 bytes: 64 KiB segments take 16 KiB of bodies per
        // record, so the batch spans three records.
        let bodies: Vec<Vec<u8>> = (0..40u8).map(|i| vec![b'a' + i % 26; 1000]).collect();
        let before = s.ct.records_written;
        let mut w = Vec::new();
        s.put_batch(1, 5, 0, 30, bodies.clone(), t0, &mut w);
        assert_eq!(w, b"INSERTED-BATCH 2 40\r\n");
        assert_eq!(s.ct.records_written - before, 3);
        let mut w = Vec::new();
        s.put_batch(1, 7, 90, 30, vec![b"later".to_vec()], t0, &mut w);
        assert_eq!(w, b"INSERTED-BATCH 42 1\r\n");
        assert_eq!(run(&mut s, 1, "delete 10", b"", t0), "DELETED\r\n");
        let live = s.log.as_ref().unwrap().live_bytes;

        let mut r = reopen(&mut s, dir.path());
        r.connect(1);
        let t1 = Instant::now();
        assert_eq!(r.jobs.len(), 41);
        for (i, body) in bodies.iter().enumerate() {
            let id = 2 + i as u64;
            match r.jobs.get(&id) {
                None => assert_eq!(id, 10),
                Some(j) => {
                    assert_eq!(
                        (&*j.body, j.pri, j.ttr_s, j.state),
                        (&body[..], 5, 30, State::Ready)
                    );
                }
            }
        }
        let y = run(&mut r, 1, "stats-job 42", b"", t1);
        assert!(y.contains("state: delayed\n") && y.contains("delay: 90\n"), "{y}");
        // Each job carries its share of its record: live bytes match.
        let relive = r.log.as_ref().unwrap().live_bytes;
        assert!(relive.abs_diff(live) <= 3 * 16, "{live} before, {relive} after");
        assert_eq!(run(&mut r, 1, "put 0 0 60 1", b"z", t1), "INSERTED 43\r\n");
    }

    fn big_cfg() -> StoreConfig {
        StoreConfig { max_jobs: 100_000, max_bytes: 64 << 20, ..cfg() }
    }

    #[test]
    fn a_put_batch_of_many_empty_jobs_fits_the_log() {
        // Each job costs 8 bytes of a record besides its body: 10 000 empty
        // bodies must be split so that no record outgrows a 64 KiB segment.
        let dir = tempfile::tempdir().unwrap();
        let t0 = Instant::now();
        let mut s = Store::new(big_cfg(), Some(log(dir.path())), t0);
        s.connect(1);
        let mut w = Vec::new();
        s.put_batch(1, 0, 0, 60, vec![Vec::new(); 10_000], t0, &mut w);
        assert_eq!(w, b"INSERTED-BATCH 1 10000\r\n");
        let r = reopen(&mut s, dir.path());
        assert_eq!(r.jobs.len(), 10_000);
    }

    #[test]
    fn a_put_batch_that_fails_half_way_leaves_nothing_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = Instant::now();
        let mut s = Store::new(big_cfg(), Some(log(dir.path())), t0);
        s.connect(1);
        assert_eq!(run(&mut s, 1, "put 0 0 60 1", b"k", t0), "INSERTED 1\r\n");
        let live = s.log.as_ref().unwrap().live_bytes;
        // Two records of small jobs are logged, then a body too large for
        // any record of a 64 KiB segment fails the batch.
        let mut bodies = vec![vec![b'x'; 1000]; 17];
        bodies.push(vec![b'y'; 100 << 10]);
        let mut w = Vec::new();
        s.put_batch(1, 0, 0, 60, bodies, t0, &mut w);
        assert_eq!(w, b"INTERNAL_ERROR\r\n");
        assert!(!s.log_failed());
        assert_eq!(s.jobs.len(), 1);
        // The records of the failed batch are no longer counted as live.
        assert_eq!(s.log.as_ref().unwrap().live_bytes, live);
        let mut r = reopen(&mut s, dir.path());
        assert_eq!(r.jobs.keys().copied().collect::<Vec<_>>(), [1]);
        r.connect(1);
        // The ids that reached the log (2..=18) are not given out again.
        assert_eq!(run(&mut r, 1, "put 0 0 60 1", b"z", Instant::now()), "INSERTED 19\r\n");
    }

    #[test]
    fn compaction_keeps_batched_jobs_batched() {
        // Ready jobs; delayed jobs compacted 1.5 ms after their put (their
        // due and creation times must not round apart); and the same after
        // a restart, whose replay derives both from the log.
        compact_a_batch(0, Duration::ZERO, false);
        compact_a_batch(100, Duration::from_micros(1500), false);
        compact_a_batch(100, Duration::from_micros(1500), true);
    }

    fn compact_a_batch(delay: u32, later: Duration, restart_first: bool) {
        let dir = tempfile::tempdir().unwrap();
        let t0 = Instant::now();
        let mut s = Store::new(big_cfg(), Some(log(dir.path())), t0);
        s.connect(1);
        let mut w = Vec::new();
        s.put_batch(1, 3, delay, 60, vec![b"spindle-bench-16".to_vec(); 3000], t0, &mut w);
        assert_eq!(w, b"INSERTED-BATCH 1 3000\r\n");
        for id in (1..=3000).step_by(3) {
            assert_eq!(run(&mut s, 1, &format!("delete {id}"), b"", t0), "DELETED\r\n");
        }
        if restart_first {
            s = reopen(&mut s, dir.path());
        }
        let before = s.log.as_ref().unwrap().live_bytes;
        let records = s.ct.records_written;
        let migrated = s.ct.records_migrated;
        let l = s.log.as_mut().unwrap();
        l.pending_cut = Some(u64::MAX);
        let t1 = Instant::now() + later;
        while s.log.as_ref().unwrap().pending_cut.is_some() {
            s.compact(t1);
        }
        // 2000 live jobs rewritten in a few records (ids listed: deletes
        // left gaps), each job taking about what it did before, not the
        // ~96 bytes of a `Put` of its own.
        let case = format!("delay {delay}, {later:?} later, restart first: {restart_first}");
        assert_eq!(s.ct.records_migrated - migrated, 2000, "{case}");
        let written = s.ct.records_written - records;
        assert!(written < 20, "{case}: {written} records");
        let after = s.log.as_ref().unwrap().live_bytes;
        assert!(after <= before * 3 / 2, "{case}: live bytes {before} -> {after}");
        let mut r = reopen(&mut s, dir.path());
        let ids: std::collections::BTreeSet<u64> = r.jobs.keys().copied().collect();
        let want: std::collections::BTreeSet<u64> = (1..=3000).filter(|i| i % 3 != 1).collect();
        assert_eq!(ids, want, "{case}");
        assert!(r.jobs.values().all(|j| &*j.body == b"spindle-bench-16" && j.pri == 3));
        r.check();
        r.connect(1);
        let y = run(&mut r, 1, "stats-job 2", b"", Instant::now());
        let state = if delay == 0 { "ready" } else { "delayed" };
        assert!(y.contains(&format!("state: {state}\n")), "{case}: {y}");
        if delay > 0 {
            assert!(y.contains("time-left: 99\n") || y.contains("time-left: 100\n"), "{case}: {y}");
        }
    }

    #[test]
    fn compaction_rewrites_batched_jobs() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = Instant::now();
        let mut s = Store::new(cfg(), Some(log(dir.path())), t0);
        s.connect(1);
        let bodies: Vec<Vec<u8>> = (0..30).map(|_| vec![b'j'; 900]).collect();
        let mut w = Vec::new();
        s.put_batch(1, 0, 0, 60, bodies, t0, &mut w);
        assert_eq!(w, b"INSERTED-BATCH 1 30\r\n");
        for id in (1..=30).step_by(2) {
            assert_eq!(run(&mut s, 1, &format!("delete {id}"), b"", t0), "DELETED\r\n");
        }
        let l = s.log.as_mut().unwrap();
        l.pending_cut = Some(u64::MAX);
        s.compact(t0);
        let r = reopen(&mut s, dir.path());
        let ids: std::collections::BTreeSet<u64> = r.jobs.keys().copied().collect();
        assert_eq!(ids, (2..=30).step_by(2).collect());
        r.check();
    }

    #[test]
    fn a_late_tick_still_answers_deadline_soon() {
        let t0 = Instant::now();
        let mut s = Store::new(cfg(), None, t0);
        s.connect(1);
        assert_eq!(run(&mut s, 1, "put 0 0 5 1", b"a", t0), "INSERTED 1\r\n");
        assert!(run(&mut s, 1, "reserve", b"", t0).starts_with("RESERVED 1"));
        let mut w = Vec::new();
        assert_eq!(s.handle(1, parse(b"reserve").unwrap(), Vec::new(), t0, &mut w), Flow::Wait);
        // The loop was busy: the first tick comes after the lease expired.
        s.tick(t0 + Duration::from_secs(6));
        assert_eq!(s.out, vec![(1, b"DEADLINE_SOON\r\n".to_vec())]);
    }

    #[test]
    fn idle_tubes_cost_little_and_are_not_scanned() {
        let t0 = Instant::now();
        let mut s = Store::new(cfg(), None, t0);
        s.connect(1);
        for i in 0..2000 {
            assert!(run(&mut s, 1, &format!("watch t{i}"), b"", t0).starts_with("WATCHING"));
        }
        assert!(s.tubes.values().all(|t| t.wait_us.is_none()), "histograms are lazy");
        let mut w = Vec::new();
        assert_eq!(s.handle(1, parse(b"reserve").unwrap(), Vec::new(), t0, &mut w), Flow::Wait);
        assert_eq!(s.waiting_tubes.len(), 2001);
        s.connect(2);
        assert_eq!(run(&mut s, 2, "use t1999", b"", t0), "USING t1999\r\n");
        assert_eq!(run(&mut s, 2, "put 0 0 5 1", b"a", t0), "INSERTED 1\r\n");
        assert_eq!(s.out, vec![(1, b"RESERVED 1 1\r\na\r\n".to_vec())]);
        assert!(s.waiting_tubes.is_empty());
    }
}
