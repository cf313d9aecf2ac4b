//! [`EngineBuilder`]: every setting, with its default and why.

use crate::engine::Engine;
use crate::error::BuildError;
use spindle_wal::{FileAccess, RecoveryMode};
use std::path::PathBuf;
use std::time::Duration;

/// How far a submitted job is persisted before `submit` returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// No disk. A crash loses queued jobs. For pure pipelines.
    Memory,
    /// `submit` returns once the job is in the memory-mapped log: it survives
    /// `kill -9`; a power loss can lose the last flush interval (50 ms).
    Process,
    /// `submit` returns once the job is on stable storage; concurrent
    /// submits share one sync (group commit).
    Sync,
}

/// Settings for an [`Engine`]. Start from [`Engine::builder`].
#[derive(Debug, Clone)]
pub struct EngineBuilder {
    pub(crate) shards: Option<usize>,
    pub(crate) data_dir: Option<PathBuf>,
    pub(crate) data_access: FileAccess,
    pub(crate) durability: Option<Durability>,
    pub(crate) max_jobs: u64,
    pub(crate) max_bytes: u64,
    pub(crate) max_payload: usize,
    pub(crate) segment_size: u64,
    pub(crate) flush_interval: Duration,
    pub(crate) retry_base: Duration,
    pub(crate) retry_cap: Duration,
    pub(crate) recovery: RecoveryMode,
    pub(crate) pin: bool,
    pub(crate) compact_after_segments: usize,
    pub(crate) poison_after: u32,
    pub(crate) workers: Workers,
    pub(crate) latency_target: Duration,
    pub(crate) min_workers: usize,
    pub(crate) max_workers: Option<usize>,
    pub(crate) tick: Duration,
    pub(crate) stealing: bool,
    pub(crate) lane: bool,
    pub(crate) idle_spin: Duration,
    pub(crate) stall_factor: u32,
    pub(crate) stall_min: Duration,
    pub(crate) max_blocking: usize,
}

/// How many core workers (shard threads that run handlers) are active.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workers {
    /// The lag controller sizes the active set from queue depth, job age,
    /// arrival rate and run time (`docs/controller.md`). The default.
    Lag,
    /// Exactly this many (clamped to 1..=shards), for comparison runs.
    /// With `work_stealing(false)` every shard is active regardless.
    Static(usize),
}

impl Default for EngineBuilder {
    fn default() -> Self {
        EngineBuilder {
            shards: None,
            data_dir: None,
            // Job payloads are in the logs: private to this user (0700
            // directories, 0600 files), like spindled's socket.
            data_access: FileAccess::Private,
            durability: None,
            // 10 M jobs / 1 GiB of payload: room for bursts on a small
            // machine while staying far below its memory.
            max_jobs: 10_000_000,
            max_bytes: 1 << 30,
            // DESIGN.md: default max payload 64 KiB.
            max_payload: 64 << 10,
            segment_size: spindle_wal::WalOptions::default().segment_size,
            // DESIGN.md / beanstalkd's default -f: 50 ms.
            flush_interval: Duration::from_millis(50),
            // First retry after 0.5-1 s, doubling, at most 1 h.
            retry_base: Duration::from_secs(1),
            retry_cap: Duration::from_secs(3600),
            recovery: RecoveryMode::Truncate,
            pin: true,
            // Compact once a shard's log spans more than 4 segments: the log
            // then stays within ~4 segments plus the live jobs' records.
            compact_after_segments: 4,
            // A job that was running at 3 crashes in a row is buried rather
            // than allowed to take the process down a fourth time.
            poison_after: 3,
            workers: Workers::Lag,
            // A queueing delay target of 1 ms at p99: an order of magnitude
            // above a parked worker's wake-up (up to 130 µs p99 here), so
            // the controller does not chase scheduler noise, and low enough
            // for the latency-critical pipelines Spindle is linked into.
            latency_target: Duration::from_millis(1),
            min_workers: 1,
            max_workers: None,
            // 10 ms: long enough that a tick sees tens of arrivals at the
            // rates where sizing matters (a rate estimate needs them), short
            // against the latency target, and cheap (a few µs per tick).
            tick: Duration::from_millis(10),
            stealing: true,
            lane: true,
            // 30 µs: parked wake-ups cost 7-20 µs p50 and up to 130 µs p99
            // on this VM (DESIGN.md), so spinning a little longer than a
            // typical wake-up covers the gap between jobs of a busy stream.
            idle_spin: Duration::from_micros(30),
            // A handler is stalled past 10x its queue's mean run time and at
            // least 100 ms (short jobs jitter by more than 10x).
            stall_factor: 10,
            stall_min: Duration::from_millis(100),
            // Blocking handlers per shard at most: I/O waits cost a thread,
            // not a core; 64 bounds threads and memory.
            max_blocking: 64,
        }
    }
}

impl EngineBuilder {
    /// Number of shards (default: one per available core). More shards than
    /// cores works; they then run unpinned.
    pub fn shards(mut self, n: usize) -> Self {
        self.shards = Some(n);
        self
    }

    /// Where the shards' logs live (`DIR/shard-NNN/`). Needed for `Process`
    /// and `Sync` durability.
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// Who may read the data directory, the shard directories and the
    /// log files in them (default [`FileAccess::Private`]: 0700 directories,
    /// 0600 files; [`FileAccess::Group`]: 0750 and 0640, given to the
    /// group). Modes are exact whatever the umask; an existing directory is
    /// set to them when it belongs to this user and is not shared (sticky,
    /// like `/tmp`), else left as it is with a warning, and log files
    /// written before are tightened when their log is opened.
    pub fn data_access(mut self, access: FileAccess) -> Self {
        self.data_access = access;
        self
    }

    /// Durability (default: `Process` with a data dir, `Memory` without).
    pub fn durability(mut self, d: Durability) -> Self {
        self.durability = Some(d);
        self
    }

    /// Most live jobs the engine holds; a submit beyond fails with `Full`.
    pub fn max_jobs(mut self, n: u64) -> Self {
        self.max_jobs = n;
        self
    }

    /// Most payload bytes the engine holds; a submit beyond fails with `Full`.
    pub fn max_bytes(mut self, n: u64) -> Self {
        self.max_bytes = n;
        self
    }

    /// Largest payload accepted (default 64 KiB).
    pub fn max_payload(mut self, n: usize) -> Self {
        self.max_payload = n;
        self
    }

    /// Log segment size (default 64 MiB; small values are for tests).
    pub fn segment_size(mut self, bytes: u64) -> Self {
        self.segment_size = bytes;
        self
    }

    /// Retry backoff: first retry after `base` (with jitter, 0.5-1x),
    /// doubling per attempt, never more than `cap`.
    pub fn retry_backoff(mut self, base: Duration, cap: Duration) -> Self {
        self.retry_base = base;
        self.retry_cap = cap.max(base);
        self
    }

    /// Refuse to start on a damaged log instead of cutting its tail.
    pub fn strict_recovery(mut self, strict: bool) -> Self {
        self.recovery = if strict { RecoveryMode::Strict } else { RecoveryMode::Truncate };
        self
    }

    /// Pin shard threads to cores (default true; ignored when there are
    /// more shards than cores).
    pub fn pin_threads(mut self, pin: bool) -> Self {
        self.pin = pin;
        self
    }

    /// Bury a job as a poison pill when a crash interrupted it this many
    /// times in a row (default 3; at least 1).
    pub fn poison_after(mut self, crashes: u32) -> Self {
        self.poison_after = crashes.max(1);
        self
    }

    /// How many core workers run handlers (default [`Workers::Lag`]).
    pub fn workers(mut self, w: Workers) -> Self {
        self.workers = w;
        self
    }

    /// The queueing delay (ready → handler start) the lag controller aims
    /// to keep p99 under (default 1 ms, at least 100 µs). Its target wait
    /// `D` is half of it; a job that waited longer than `D` wakes the
    /// controller at once.
    pub fn latency_target(mut self, d: Duration) -> Self {
        self.latency_target = d.max(Duration::from_micros(100));
        self
    }

    /// Fewest active core workers under [`Workers::Lag`] (default 1).
    pub fn min_workers(mut self, n: usize) -> Self {
        self.min_workers = n.max(1);
        self
    }

    /// Most active core workers under [`Workers::Lag`] (default and upper
    /// bound: the shard count; `min_workers` above it is lowered to it).
    pub fn max_workers(mut self, n: usize) -> Self {
        self.max_workers = Some(n.max(1));
        self
    }

    /// The lag controller's sampling period (default 10 ms, at least 1 ms).
    pub fn controller_tick(mut self, d: Duration) -> Self {
        self.tick = d.max(Duration::from_millis(1));
        self
    }

    /// Whether idle shards steal ready jobs from busy ones (default true).
    /// Off, every job runs on the shard it was submitted to, and so every
    /// shard stays active whatever [`Workers`] says (only stealing moves a
    /// parked shard's jobs to an active one).
    pub fn work_stealing(mut self, on: bool) -> Self {
        self.stealing = on;
        self
    }

    /// Whether new ready jobs may run straight from their batch without
    /// entering the shard's job table (default true; `docs/architecture.md`,
    /// "The lane"). Order, retries, durability and recovery are the same
    /// either way; off, every job goes through the table (for comparison).
    pub fn lane(mut self, on: bool) -> Self {
        self.lane = on;
        self
    }

    /// How long an idle active worker spins looking for work before it
    /// parks (default 30 µs). `Duration::MAX` never parks: lowest latency,
    /// a full core per worker.
    pub fn idle_spin(mut self, d: Duration) -> Self {
        self.idle_spin = d;
        self
    }

    /// A handler is reported stalled once it has run `factor` times its
    /// queue's mean run time and at least `min` (default 10x, 100 ms).
    pub fn stall_threshold(mut self, factor: u32, min: Duration) -> Self {
        self.stall_factor = factor.max(1);
        self.stall_min = min;
        self
    }

    /// Most threads each shard's blocking pool runs (default 64).
    pub fn max_blocking(mut self, n: usize) -> Self {
        self.max_blocking = n.max(1);
        self
    }

    /// Replays the logs and starts the shards.
    pub fn build(self) -> Result<Engine, BuildError> {
        Engine::start(self)
    }
}
