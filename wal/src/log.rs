//! [`Wal`]: opening, appending, syncing and reclaiming one shard's log.
//!
//! Threads and what they do:
//! - **Appenders** (any thread, each with its own [`Appender`]): claim, write
//!   and publish frames (`cursor.rs`). No syscall and no lock unless a new
//!   segment must be looked up (once per segment per appender).
//! - **Preparer** (one per log): keeps `prepare_ahead` segments created,
//!   allocated and mapped beyond the one being written, so an appender never
//!   waits on file creation unless the disk is slower than the appends.
//! - **Flusher** (one per log): makes the published prefix durable. `Never`:
//!   only when asked. `Interval(d)`: at least every `d`. `Always`: whenever a
//!   waiter asks; every append published before the sync starts is covered by
//!   that one sync, so concurrent committers share it (group commit).
//!
//! A failed sync marks the log failed for good: the kernel may already have
//! dropped the dirty pages, so retrying could report durability that is not
//! there (PostgreSQL's "fsyncgate" lesson). Reopening runs recovery.

use crate::cursor::{Claim, Cursor, Geometry, Published};
use crate::record::{frame_len, Record, FRAME_HEADER, KIND_PADDING, MAX_PAYLOAD};
use crate::recovery::{self, Kept, RecoveryMode, RecoveryReport};
use crate::segment::{Header, Segment, SEGMENT_HEADER};
use crate::storage::{FsStorage, Storage};
use crate::waiters::Waiters;
use crate::{FileAccess, WalError};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

mod batch;

/// When appended records are made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncPolicy {
    /// Records stay in the page cache until [`Wal::sync`] or
    /// [`Wal::wait_durable`]: they survive `kill -9`, not a power loss.
    Never,
    /// A background flusher syncs at least this often; a power loss loses at
    /// most the last interval.
    Interval(Duration),
    /// Syncs happen as soon as someone waits with [`Wal::wait_durable`];
    /// concurrent waiters share one sync.
    Always,
}

impl Default for SyncPolicy {
    /// 50 ms, beanstalkd's default `-f` interval.
    fn default() -> Self {
        SyncPolicy::Interval(Duration::from_millis(50))
    }
}

/// Settings for [`Wal::open`].
#[derive(Debug, Clone)]
pub struct WalOptions {
    /// The shard this log belongs to; written in every segment header and
    /// checked on open.
    pub shard: u32,
    /// Segment file size in bytes: a multiple of 4096, at least 8192.
    pub segment_size: u64,
    /// When records become durable.
    pub sync: SyncPolicy,
    /// What to do with a damaged tail on open.
    pub recovery: RecoveryMode,
    /// Segments kept ready beyond the one being written (at least 1).
    pub prepare_ahead: u64,
    /// Who may read the log's directory and files (default: only the
    /// owner, 0700/0600). Used by [`Wal::open`]; with [`Wal::open_with`]
    /// the [`Storage`] decides (for files, [`FsStorage::with_access`]).
    pub access: FileAccess,
}

/// Default segment size: 64 MiB (large enough that segment switches are rare
/// at millions of records per second, small enough to reclaim promptly).
pub const DEFAULT_SEGMENT_SIZE: u64 = 64 << 20;

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            shard: 0,
            segment_size: DEFAULT_SEGMENT_SIZE,
            sync: SyncPolicy::default(),
            recovery: RecoveryMode::default(),
            prepare_ahead: 1,
            access: FileAccess::Private,
        }
    }
}

/// Counters and positions, for metrics and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WalStats {
    /// Every record below this LSN is complete in memory.
    pub published_lsn: u64,
    /// Every record below this LSN is on stable storage.
    pub durable_lsn: u64,
    /// Syncs the flusher has performed.
    pub syncs: u64,
    /// Segments created in this run.
    pub segments_created: u64,
    /// Segments deleted by [`Wal::release_below`].
    pub segments_released: u64,
    /// Times an appender had to wait for the preparer (should stay 0).
    pub segment_waits: u64,
    /// Segments currently held (old and current run, prepared included).
    pub live_segments: usize,
    /// Successful syncs by how long they took: `sync_buckets[i]` counts
    /// those of at most [`SYNC_BUCKETS_US`]`[i]` microseconds (and above the
    /// one before); the last slot counts the slower ones.
    pub sync_buckets: [u64; SYNC_BUCKETS_US.len() + 1],
    /// The time all successful syncs took, nanoseconds.
    pub sync_ns_total: u64,
}

/// Upper bounds (microseconds) of the sync-latency buckets of
/// [`WalStats::sync_buckets`], for metrics.
pub const SYNC_BUCKETS_US: [u64; 8] = [100, 250, 500, 1_000, 2_500, 10_000, 50_000, 250_000];

#[derive(Debug)]
struct State {
    /// Segments from earlier runs, oldest first, with their data end.
    old: Vec<Kept>,
    /// This run's segments by index.
    run: BTreeMap<u64, Arc<Segment>>,
    /// Index the preparer creates next.
    next_prepare: u64,
    /// Highest index an appender is waiting for.
    needed: u64,
    /// Segment creations the preparer has started.
    prep_attempts: u64,
    /// The preparer's last failure: the index and attempt it was for.
    prep_error: Option<(u64, u64, WalError)>,
    /// Why the log failed, once it has.
    failure: Option<String>,
    shutdown: bool,
    /// The flusher has exited: nobody will sync any more.
    flusher_done: bool,
}

#[derive(Debug)]
struct Shared {
    shard: u32,
    policy: SyncPolicy,
    seg_len: u64,
    max_payload: u64,
    prepare_ahead: u64,
    geo: Geometry,
    storage: Arc<dyn Storage>,
    cursor: Cursor,
    durable: AtomicU64,
    requested: AtomicU64,
    /// Set once the log has failed or is closing: appends stop.
    stopped: AtomicBool,
    /// Set once the log has failed: what a waiter for durability checks
    /// without the state's lock (beside `flusher_gone`).
    failed: AtomicBool,
    /// Where the first claim whose write failed starts (`u64::MAX`: none).
    /// It was published as a hole that recovery stops at, so no record
    /// from there on is acknowledged.
    hole: AtomicU64,
    flusher_gone: AtomicBool,
    /// Set (under the state's lock) while the flusher waits on `flush_cv`
    /// with nothing to do: only then does a request need the lock and a
    /// notify. Stored and loaded `SeqCst`, against `requested` and
    /// `published` (`Shared::flusher`, step 2).
    flusher_idle: AtomicBool,
    state: Mutex<State>,
    flush_cv: Condvar,
    /// Threads in [`Wal::wait_durable`], woken by LSN (`waiters.rs`).
    waiters: Waiters,
    prep_cv: Condvar,
    syncs: AtomicU64,
    sync_buckets: [AtomicU64; SYNC_BUCKETS_US.len() + 1],
    sync_ns: AtomicU64,
    created: AtomicU64,
    released: AtomicU64,
    segment_waits: AtomicU64,
    /// `State::next_prepare`, readable without the lock: segments of this
    /// run below this index have been created (some may be released).
    prepared: AtomicU64,
    /// The highest index [`Shared::ensure_room`] has asked the preparer to
    /// reach, so it takes the lock once per new index, not per call.
    asked: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // State is only mutated in small, panic-free sections; a poisoned lock
        // still holds consistent data.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn failure(&self, st: &State) -> WalError {
        WalError::Failed(st.failure.clone().unwrap_or_else(|| "unknown".into()))
    }

    fn fail(&self, st: &mut State, why: String) {
        tracing::error!(shard = self.shard, %why, "WAL failed");
        st.failure.get_or_insert(why);
        self.stopped.store(true, Ordering::Release);
        self.failed.store(true, Ordering::Release);
        self.waiters.wake_all();
        self.prep_cv.notify_all();
    }

    fn create_segment(&self, idx: u64) -> Result<Arc<Segment>, WalError> {
        let base = self.geo.base(idx);
        let header = Header { shard: self.shard, base, len: self.seg_len }.encode();
        let map = self.storage.create(base, self.seg_len, &header)?;
        // The unsafe reads and writes in segment.rs trust the mapping's size
        // and alignment: check them once here.
        if map.len() as u64 != self.seg_len || map.ptr() as usize % 4096 != 0 {
            return Err(WalError::Config(
                "storage returned a segment of the wrong size or alignment".into(),
            ));
        }
        let seg = Segment::new(map, base).ok_or_else(|| {
            WalError::Config("storage returned a segment shorter than asked".into())
        })?;
        self.created.fetch_add(1, Ordering::Relaxed);
        Ok(Arc::new(seg))
    }

    /// Blocks until segment `idx` of this run is mapped; caches it.
    fn ensure(&self, cache: &mut Option<(u64, Arc<Segment>)>, idx: u64) -> Result<(), WalError> {
        if matches!(cache, Some((i, _)) if *i == idx) {
            return Ok(());
        }
        let mut st = self.lock();
        // Attempts numbered up to here started before this call: their
        // errors may predate space freed since, so they are retried.
        let entered = st.prep_attempts;
        let mut waited = false;
        loop {
            if idx < st.next_prepare && !st.run.contains_key(&idx) {
                // Released: the tail this claim started from is stale (a
                // segment is released only once `published` is past it), so
                // the claim's CAS fails and it retries from the new tail.
                return Ok(());
            }
            if let Some(seg) = st.run.get(&idx) {
                *cache = Some((idx, seg.clone()));
                // The tail moved into a new segment: time to prepare the next.
                self.prep_cv.notify_all();
                return Ok(());
            }
            if st.failure.is_some() {
                return Err(self.failure(&st));
            }
            if st.shutdown {
                return Err(WalError::Closed);
            }
            if matches!(st.prep_error, Some((i, _, _)) if i <= idx) {
                if let Some((_, attempt, e)) = st.prep_error.take() {
                    if attempt > entered {
                        return Err(e);
                    }
                }
            }
            if !waited {
                waited = true;
                self.segment_waits.fetch_add(1, Ordering::Relaxed);
            }
            st.needed = st.needed.max(idx);
            self.prep_cv.notify_all();
            st = self.prep_cv.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Gives up a claim that was not written: marks the hole there, fails
    /// the log, and publishes the claim anyway so later appenders are not
    /// blocked (nothing from the hole on is acknowledged: `Appender::put`'s
    /// last check).
    fn abandon(&self, claim: &Claim, why: String) -> WalError {
        self.hole.fetch_min(claim.start, Ordering::AcqRel);
        let mut st = self.lock();
        self.fail(&mut st, why.clone());
        drop(st);
        if self.cursor.publish(claim) {
            self.kick_flusher();
        }
        WalError::Failed(why)
    }

    /// The checks every append makes before it claims: a kind of its own,
    /// a payload within the limit, a log still open. The record's frame
    /// length.
    fn admit(&self, kind: u8, payload: &[u8]) -> Result<u64, WalError> {
        if kind == 0 || kind == KIND_PADDING {
            return Err(WalError::ReservedKind(kind));
        }
        if payload.len() as u64 > self.max_payload {
            return Err(WalError::RecordTooLarge { len: payload.len(), max: self.max_payload });
        }
        if self.stopped.load(Ordering::Acquire) {
            let st = self.lock();
            return Err(if st.failure.is_some() { self.failure(&st) } else { WalError::Closed });
        }
        Ok(frame_len(payload.len() as u64))
    }

    fn segment(&self, idx: u64) -> Option<Arc<Segment>> {
        self.lock().run.get(&idx).cloned()
    }

    /// Makes sure the segments created so far (creating more and waiting
    /// for them if need be) can hold `bytes` more bytes past the tail, and
    /// asks the preparer to stay `prepare_ahead` segments beyond that, so
    /// the next call does not wait. `NoSpace` when the disk cannot hold
    /// the segments needed (an attempt made after this call began).
    fn ensure_room(&self, bytes: u64) -> Result<(), WalError> {
        let idx = self.geo.index(self.cursor.tail().saturating_add(bytes));
        let ahead = idx.saturating_add(self.prepare_ahead);
        if ahead > self.asked.load(Ordering::Relaxed) {
            self.asked.fetch_max(ahead, Ordering::Relaxed);
            let mut st = self.lock();
            st.needed = st.needed.max(ahead);
            self.prep_cv.notify_all();
        }
        if idx < self.prepared.load(Ordering::Acquire) {
            return Ok(());
        }
        self.ensure(&mut None, idx)
    }

    fn preparer(self: &Arc<Self>) {
        let mut st = self.lock();
        while !st.shutdown && st.failure.is_none() {
            let want = (self.geo.index(self.cursor.tail()) + self.prepare_ahead).max(st.needed);
            if st.prep_error.is_none() && st.next_prepare <= want {
                let idx = st.next_prepare;
                st.prep_attempts += 1;
                let attempt = st.prep_attempts;
                drop(st);
                let res = self.create_segment(idx);
                st = self.lock();
                match res {
                    Ok(seg) => {
                        st.run.insert(idx, seg);
                        st.next_prepare += 1;
                        self.prepared.store(st.next_prepare, Ordering::Release);
                    }
                    Err(e) => {
                        tracing::warn!(shard = self.shard, error = %e, "cannot prepare WAL segment");
                        st.prep_error = Some((idx, attempt, e));
                    }
                }
                self.prep_cv.notify_all();
                continue;
            }
            st = self.prep_cv.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Counts one successful sync that took `took` (metrics).
    fn record_sync(&self, took: std::time::Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let i = SYNC_BUCKETS_US.iter().position(|&b| us <= b).unwrap_or(SYNC_BUCKETS_US.len());
        if let Some(b) = self.sync_buckets.get(i) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.sync_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Wakes the flusher if a sync was asked for that it may have found
    /// unpublished: called after publishing records deposited by other
    /// appenders (`cursor.rs`, step 3b), whose owners wait for that sync.
    /// `published` was stored and `requested` is loaded with `SeqCst`, as
    /// the flusher loads them, so a waiter's request is either seen here or
    /// the flusher saw the new `published`.
    fn kick_flusher(&self) {
        if self.flusher_idle.load(Ordering::SeqCst)
            && self.requested.load(Ordering::SeqCst) > self.durable.load(Ordering::Acquire)
        {
            let _st = self.lock();
            self.flush_cv.notify_one();
        }
    }

    /// Asks the flusher to make everything below `upto` durable. The
    /// request is an atomic maximum; the flusher is notified (under the
    /// state's lock) only when it is idle (`flusher_idle`).
    fn request(&self, upto: u64) {
        self.requested.fetch_max(upto, Ordering::SeqCst);
        if self.flusher_idle.load(Ordering::SeqCst) {
            let _st = self.lock();
            self.flush_cv.notify_one();
        }
    }

    fn flusher(self: &Arc<Self>) {
        let mut st = self.lock();
        let mut last = Instant::now();
        loop {
            let durable = self.durable.load(Ordering::Acquire);
            let published = self.cursor.published();
            let asked = self.requested.load(Ordering::SeqCst) > durable;
            let due = match self.policy {
                SyncPolicy::Interval(d) => last.elapsed() >= d,
                _ => false,
            };
            let closing = st.shutdown && self.policy != SyncPolicy::Never;
            if st.failure.is_none() && published > durable && (asked || due || closing) {
                let segs = segments_between(&st, durable, published);
                drop(st);
                let began = Instant::now();
                let res = segs.iter().try_for_each(|s| {
                    s.0.sync(durable.max(s.0.base), s.1).map_err(|e| (s.0.base, e))
                });
                let took = began.elapsed();
                st = self.lock();
                last = Instant::now();
                match res {
                    Ok(()) => {
                        self.durable.store(published, Ordering::Release);
                        self.syncs.fetch_add(1, Ordering::Relaxed);
                        self.record_sync(took);
                        self.waiters.wake_below(published);
                    }
                    Err((base, e)) => {
                        let why = format!(
                            "sync of {} failed: {e}",
                            self.storage.describe(base).display()
                        );
                        self.fail(&mut st, why);
                    }
                }
                continue;
            }
            if st.shutdown || st.failure.is_some() {
                st.flusher_done = true;
                self.flusher_gone.store(true, Ordering::Release);
                self.waiters.wake_all();
                return;
            }
            // Going idle: 1. set `flusher_idle`; 2. look once more for a
            // request (or records published for one) made since the check
            // above. A requester stores its request, then loads the flag
            // (both SeqCst): it sees the flag and notifies under the lock,
            // which it gets only once this thread waits, or this load sees
            // its request.
            self.flusher_idle.store(true, Ordering::SeqCst);
            if st.failure.is_none()
                && self.requested.load(Ordering::SeqCst) > durable
                && self.cursor.published() > durable
            {
                self.flusher_idle.store(false, Ordering::SeqCst);
                continue;
            }
            st = match self.policy {
                SyncPolicy::Interval(d) => {
                    let left = d.saturating_sub(last.elapsed()).max(Duration::from_micros(100));
                    self.flush_cv.wait_timeout(st, left).unwrap_or_else(|p| p.into_inner()).0
                }
                _ => self.flush_cv.wait(st).unwrap_or_else(|p| p.into_inner()),
            };
            self.flusher_idle.store(false, Ordering::SeqCst);
            if matches!(self.policy, SyncPolicy::Interval(_)) && self.cursor.published() == durable
            {
                last = Instant::now();
            }
        }
    }
}

/// Segments (old and current) holding data in `from..to`, each with the
/// end of the range to sync in it.
fn segments_between(st: &State, from: u64, to: u64) -> Vec<(Arc<Segment>, u64)> {
    st.old
        .iter()
        .map(|k| (&k.seg, k.data_end))
        .chain(st.run.values().map(|s| (s, s.end())))
        .filter(|(s, end)| s.base < to && *end > from)
        .map(|(s, end)| (s.clone(), end.min(to)))
        .collect()
}

/// A write-ahead log. Share it by reference or `Arc`; append through
/// [`Appender`]s (one per thread).
#[derive(Debug)]
pub struct Wal {
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Wal {
    /// Opens (or creates) the log in `dir`, recovering what is there.
    pub fn open(
        dir: impl AsRef<Path>,
        opts: WalOptions,
    ) -> Result<(Wal, RecoveryReport), WalError> {
        Self::open_with(Arc::new(FsStorage::with_access(dir, opts.access)?), opts)
    }

    /// Opens the log on any [`Storage`].
    pub fn open_with(
        storage: Arc<dyn Storage>,
        opts: WalOptions,
    ) -> Result<(Wal, RecoveryReport), WalError> {
        if opts.segment_size < 8192 || opts.segment_size % 4096 != 0 {
            return Err(WalError::Config(format!(
                "segment_size {} must be a multiple of 4096 and at least 8192",
                opts.segment_size
            )));
        }
        if opts.prepare_ahead == 0 {
            return Err(WalError::Config("prepare_ahead must be at least 1".into()));
        }
        let (old, report) = recovery::recover(storage.as_ref(), opts.shard, opts.recovery)?;
        // Recovered bytes may so far live only in the page cache (a kill -9
        // under SyncPolicy::Never): make them durable before promising more.
        if opts.sync != SyncPolicy::Never {
            for k in &old {
                k.seg.sync(k.seg.base, k.data_end).map_err(|e| {
                    WalError::io("sync recovered segment", storage.describe(k.seg.base), e)
                })?;
            }
        }
        let data_cap = opts.segment_size - SEGMENT_HEADER;
        let run_base = report.end_lsn;
        let shared = Arc::new(Shared {
            shard: opts.shard,
            policy: opts.sync,
            seg_len: opts.segment_size,
            max_payload: MAX_PAYLOAD.min(data_cap - FRAME_HEADER),
            prepare_ahead: opts.prepare_ahead,
            geo: Geometry { run_base, data_cap },
            storage,
            // Deposits only where appenders wait for syncs anyway: under
            // other policies a deferred append waits to publish.
            cursor: Cursor::new(run_base, opts.sync == SyncPolicy::Always),
            durable: AtomicU64::new(run_base),
            requested: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
            state: Mutex::new(State {
                old,
                run: BTreeMap::new(),
                next_prepare: 0,
                needed: 0,
                prep_attempts: 0,
                prep_error: None,
                failure: None,
                shutdown: false,
                flusher_done: false,
            }),
            failed: AtomicBool::new(false),
            hole: AtomicU64::new(u64::MAX),
            flusher_gone: AtomicBool::new(false),
            flusher_idle: AtomicBool::new(false),
            flush_cv: Condvar::new(),
            waiters: Waiters::default(),
            prep_cv: Condvar::new(),
            syncs: AtomicU64::new(0),
            sync_buckets: Default::default(),
            sync_ns: AtomicU64::new(0),
            created: AtomicU64::new(0),
            released: AtomicU64::new(0),
            segment_waits: AtomicU64::new(0),
            prepared: AtomicU64::new(0),
            asked: AtomicU64::new(0),
        });
        // Create the first segment now so the first append does not wait.
        // On a full disk the log still opens (its records can be read and
        // released); the preparer retries and the first append reports
        // `NoSpace`.
        match shared.create_segment(0) {
            Ok(first) => {
                let mut st = shared.lock();
                st.run.insert(0, first);
                st.next_prepare = 1;
                shared.prepared.store(1, Ordering::Release);
            }
            Err(WalError::NoSpace { .. }) => {}
            Err(e) => return Err(e),
        }

        let mut threads = Vec::new();
        for (name, job) in
            [("prep", Shared::preparer as fn(&Arc<Shared>)), ("flush", Shared::flusher)]
        {
            let sh = shared.clone();
            let handle = std::thread::Builder::new()
                .name(format!("spindle-wal-{name}-{}", opts.shard))
                .spawn(move || job(&sh))
                .map_err(|e| WalError::io("spawn WAL thread", "", e))?;
            threads.push(handle);
        }
        Ok((Wal { shared, threads: Mutex::new(threads) }, report))
    }

    /// A new appender. Appenders are cheap; keep one per thread.
    pub fn appender(&self) -> Appender {
        Appender { shared: self.shared.clone(), cache: None, batch: batch::Batch::default() }
    }

    /// Calls `f` for every record in the log, oldest first: those recovered on
    /// open and those published since.
    pub fn replay(&self, f: impl FnMut(Record<'_>)) -> Result<(), WalError> {
        self.replay_from(0, f)
    }

    /// Like [`Wal::replay`], skipping records below `from`.
    pub fn replay_from(&self, from: u64, mut f: impl FnMut(Record<'_>)) -> Result<(), WalError> {
        let published = self.shared.cursor.published();
        let segs: Vec<(Arc<Segment>, u64)> = {
            let st = self.shared.lock();
            st.old
                .iter()
                .map(|k| (k.seg.clone(), k.data_end))
                .chain(
                    st.run
                        .values()
                        .filter(|s| s.base < published)
                        .map(|s| (s.clone(), published.min(s.end()))),
                )
                .collect()
        };
        for (seg, end) in segs {
            if end <= from {
                continue;
            }
            #[allow(unsafe_code)]
            // SAFETY: bytes below `published` (or in old segments) are
            // complete and never written again.
            let data = unsafe { seg.data(seg.base, end) };
            let mut lsn = seg.base;
            while let Some(rest) = data.get((lsn - seg.base) as usize..) {
                match crate::record::decode(rest, lsn) {
                    crate::record::Decoded::Record { record, len } => {
                        if record.lsn >= from {
                            f(record);
                        }
                        lsn += len;
                    }
                    _ => break,
                }
            }
        }
        Ok(())
    }

    /// Blocks until the record at `lsn` (and everything before it) is on
    /// stable storage, asking the flusher for a sync if needed. Concurrent
    /// callers share syncs.
    pub fn wait_durable(&self, lsn: u64) -> Result<(), WalError> {
        let sh = &*self.shared;
        if sh.durable.load(Ordering::Acquire) > lsn {
            return Ok(());
        }
        if lsn >= sh.cursor.tail() {
            return Err(WalError::Config(format!("lsn {lsn} was never appended")));
        }
        sh.request(lsn.saturating_add(1));
        loop {
            // Woken when this record is durable, not by every sync
            // (`waiters.rs`).
            sh.waiters.wait(lsn, || {
                sh.durable.load(Ordering::Acquire) > lsn
                    || sh.failed.load(Ordering::Acquire)
                    || sh.flusher_gone.load(Ordering::Acquire)
            });
            if sh.durable.load(Ordering::Acquire) > lsn {
                return Ok(());
            }
            let st = sh.lock();
            if st.failure.is_some() {
                return Err(sh.failure(&st));
            }
            if st.flusher_done {
                return Err(WalError::Closed);
            }
        }
    }

    /// Makes sure the log's segments can hold `bytes` more bytes of records
    /// past its tail: creates (and waits for) the segments needed, or
    /// returns `WalError::NoSpace` when the disk cannot hold them. A
    /// caller that logs something the disk must always have room for
    /// (records that complete work, and so let space be freed) keeps that
    /// room with [`Appender::append_keeping`] for the records that can
    /// wait. `ensure_room(0)` checks that the segment being written
    /// exists, which [`Wal::open`] does not insist on (it opens a log on a
    /// full disk so that its records can be read and released).
    ///
    /// Records take their frame length ([`frame_len`]) each, and a
    /// segment's unused tail is padding, so keep some slack.
    pub fn ensure_room(&self, bytes: u64) -> Result<(), WalError> {
        self.shared.ensure_room(bytes)
    }

    /// Makes everything published so far durable.
    pub fn sync(&self) -> Result<(), WalError> {
        let published = self.shared.cursor.published();
        if published > self.shared.durable.load(Ordering::Acquire) {
            self.wait_durable(published - 1)?;
        }
        Ok(())
    }

    /// Says that no record below `lsn` is needed any more: deletes every
    /// whole segment that ends at or below it (and below what is durable, or
    /// published under `SyncPolicy::Never`). Returns how many were deleted.
    pub fn release_below(&self, lsn: u64) -> Result<usize, WalError> {
        let sh = &*self.shared;
        let safe = match sh.policy {
            SyncPolicy::Never => sh.cursor.published(),
            _ => sh.durable.load(Ordering::Acquire),
        };
        let limit = lsn.min(safe);
        let mut doomed = Vec::new();
        {
            let mut st = sh.lock();
            let n_old = st.old.iter().take_while(|k| k.data_end <= limit).count();
            doomed.extend(st.old.drain(..n_old).map(|k| k.seg.base));
            if st.old.is_empty() {
                while let Some((&idx, seg)) = st.run.first_key_value() {
                    if seg.end() > limit || seg.end() > sh.cursor.published() {
                        break;
                    }
                    doomed.push(seg.base);
                    st.run.remove(&idx);
                }
            }
        }
        for base in &doomed {
            sh.storage.remove(*base)?;
            sh.released.fetch_add(1, Ordering::Relaxed);
        }
        Ok(doomed.len())
    }

    /// Current positions and counters.
    pub fn stats(&self) -> WalStats {
        let sh = &*self.shared;
        let live = {
            let st = sh.lock();
            st.old.len() + st.run.len()
        };
        WalStats {
            published_lsn: sh.cursor.published(),
            durable_lsn: sh.durable.load(Ordering::Acquire),
            syncs: sh.syncs.load(Ordering::Relaxed),
            segments_created: sh.created.load(Ordering::Relaxed),
            segments_released: sh.released.load(Ordering::Relaxed),
            segment_waits: sh.segment_waits.load(Ordering::Relaxed),
            live_segments: live,
            sync_buckets: std::array::from_fn(|i| {
                sh.sync_buckets.get(i).map_or(0, |b| b.load(Ordering::Relaxed))
            }),
            sync_ns_total: sh.sync_ns.load(Ordering::Relaxed),
        }
    }

    /// The size of each segment file, in bytes.
    pub fn segment_size(&self) -> u64 {
        self.shared.seg_len
    }

    /// The largest payload one record can carry with these options.
    pub fn max_payload(&self) -> u64 {
        self.shared.max_payload
    }

    /// Base LSNs and end LSNs of the segments held, oldest first; the engine's
    /// compaction uses this to find live records in the oldest segment.
    pub fn segments(&self) -> Vec<(u64, u64)> {
        let st = self.shared.lock();
        st.old
            .iter()
            .map(|k| (k.seg.base, k.data_end))
            .chain(st.run.values().map(|s| (s.base, s.end())))
            .collect()
    }

    /// Syncs (unless the policy is `Never`), stops the background threads and
    /// reports the first error.
    pub fn close(self) -> Result<(), WalError> {
        self.shutdown()
    }

    /// Like [`Wal::close`], for a log shared behind an `Arc`: afterwards
    /// appends fail with `WalError::Closed`. Appenders must have stopped;
    /// records appended concurrently with shutdown may miss the final sync.
    /// Calling it again does nothing.
    pub fn shutdown(&self) -> Result<(), WalError> {
        let threads: Vec<JoinHandle<()>> =
            std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        if threads.is_empty() {
            return Ok(());
        }
        let sh = &*self.shared;
        let synced = if sh.policy == SyncPolicy::Never { Ok(()) } else { self.sync() };
        {
            let mut st = sh.lock();
            st.shutdown = true;
            sh.stopped.store(true, Ordering::Release);
            sh.flush_cv.notify_all();
            sh.prep_cv.notify_all();
        }
        for t in threads {
            let _ = t.join();
        }
        sh.storage.close();
        synced?;
        let st = sh.lock();
        match st.failure {
            Some(_) => Err(sh.failure(&st)),
            None => Ok(()),
        }
    }

    /// Asks the flusher to sync what is published now, without waiting (for
    /// threads that must not block, such as shard threads).
    pub fn request_sync(&self) {
        let sh = &*self.shared;
        let published = sh.cursor.published();
        if published > sh.durable.load(Ordering::Acquire) {
            sh.request(published);
        }
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::error!(shard = self.shared.shard, error = %e, "WAL closed with an error");
        }
    }
}

/// Appends records to a [`Wal`]. One per thread; it caches the segment it is
/// writing so the hot path takes no lock.
#[derive(Debug)]
pub struct Appender {
    shared: Arc<Shared>,
    cache: Option<(u64, Arc<Segment>)>,
    /// Records claimed by [`Appender::append_batched`], not yet written.
    batch: batch::Batch,
}

impl Clone for Appender {
    fn clone(&self) -> Self {
        Appender { shared: self.shared.clone(), cache: None, batch: batch::Batch::default() }
    }
}

impl Appender {
    /// Appends one record of `kind` (1..=254) and returns its LSN once it is
    /// published (visible to readers and the flusher, and in the page cache,
    /// so it survives `kill -9`). Use [`Wal::wait_durable`] for more.
    pub fn append(&mut self, kind: u8, payload: &[u8]) -> Result<u64, WalError> {
        self.put(kind, payload, false)
    }

    /// Like [`Appender::append`], but when an earlier appender has not
    /// published yet it returns without waiting for it and leaves this
    /// record for that appender to publish (`cursor.rs`, step 3a; only
    /// under [`SyncPolicy::Always`], else it waits as `append` does). The
    /// record is then neither visible to readers nor safe from `kill -9`
    /// (an earlier record may still be missing) until [`Wal::wait_durable`]
    /// for the returned LSN succeeds: only a caller that waits for that
    /// before acknowledging anything may use this. With many threads on
    /// few cores it saves each of them spinning while another is preempted.
    pub fn append_deferred(&mut self, kind: u8, payload: &[u8]) -> Result<u64, WalError> {
        self.put(kind, payload, true)
    }

    fn put(&mut self, kind: u8, payload: &[u8], defer: bool) -> Result<u64, WalError> {
        // Its own batch first: this claim would wait for those to publish.
        self.flush_batch()?;
        let sh = &*self.shared;
        let len = sh.admit(kind, payload)?;
        let cache = &mut self.cache;
        let claim = sh.cursor.claim(&sh.geo, len, |idx| sh.ensure(cache, idx))?;
        if let Err(why) = self.write(&claim, kind, payload) {
            return Err(sh.abandon(&claim, why));
        }
        let swept = if defer {
            sh.cursor.publish_or_defer(&claim) == Published::Swept
        } else {
            sh.cursor.publish(&claim)
        };
        if swept {
            sh.kick_flusher();
        }
        // An earlier claim whose write failed was published as a hole that
        // recovery stops at: this record, after it, must not be acknowledged.
        // (That appender set `hole` before publishing, and this one published
        // after it, so the store is seen. A record before the hole is kept
        // by recovery and acknowledged as usual. A deferred record is
        // acknowledged by `wait_durable`, which reports the failure.)
        if !defer && claim.start >= sh.hole.load(Ordering::Acquire) {
            return Err(sh.failure(&sh.lock()));
        }
        Ok(claim.frame)
    }

    /// Writes the claim's padding, if any, and its frame.
    fn write(&self, claim: &Claim, kind: u8, payload: &[u8]) -> Result<(), String> {
        let sh = &*self.shared;
        let failed = |seg: &Segment, e: std::io::Error| {
            format!("write to {} failed: {e}", sh.storage.describe(seg.base).display())
        };
        if claim.start != claim.frame {
            let seg = sh
                .segment(sh.geo.index(claim.start))
                .ok_or_else(|| "segment to pad vanished (released while in use)".to_string())?;
            #[allow(unsafe_code)]
            // SAFETY: the claim gives us claim.start..claim.end; the padding
            // covers claim.start..end of its segment, within it.
            unsafe { seg.write_padding(claim.start) }.map_err(|e| failed(&seg, e))?;
        }
        match &self.cache {
            Some((i, seg)) if *i == sh.geo.index(claim.frame) => {
                #[allow(unsafe_code)]
                // SAFETY: the cached segment is the one holding claim.frame
                // (checked above) and the claim frame..end is ours alone
                // until published.
                unsafe { seg.write_frame(claim.frame, kind, payload) }.map_err(|e| failed(seg, e))
            }
            // Cannot happen: the last `ensure` before the winning CAS cached
            // this segment.
            _ => Err("appender lost track of its segment".to_string()),
        }
    }

    /// Like [`Appender::append`], but only if the log can still hold
    /// `keep` more bytes past this record ([`Wal::ensure_room`]): when the
    /// disk cannot hold the segments for that, nothing is appended and the
    /// error is `WalError::NoSpace`. Records appended without a `keep` can
    /// then still use the room kept.
    pub fn append_keeping(&mut self, kind: u8, payload: &[u8], keep: u64) -> Result<u64, WalError> {
        self.keeping(kind, payload, keep, false)
    }

    /// [`Appender::append_keeping`] as [`Appender::append_deferred`] does
    /// it: wait for the record to be durable before acknowledging it.
    pub fn append_keeping_deferred(
        &mut self,
        kind: u8,
        payload: &[u8],
        keep: u64,
    ) -> Result<u64, WalError> {
        self.keeping(kind, payload, keep, true)
    }

    fn keeping(
        &mut self,
        kind: u8,
        payload: &[u8],
        keep: u64,
        defer: bool,
    ) -> Result<u64, WalError> {
        let sh = &*self.shared;
        if (payload.len() as u64) <= sh.max_payload {
            sh.ensure_room(frame_len(payload.len() as u64).saturating_add(keep))?;
        }
        self.put(kind, payload, defer)
    }

    /// Appends and waits until the record is on stable storage.
    pub fn append_durable(&mut self, wal: &Wal, kind: u8, payload: &[u8]) -> Result<u64, WalError> {
        let lsn = self.append(kind, payload)?;
        wal.wait_durable(lsn)?;
        Ok(lsn)
    }
}
