//! What the engine scenarios (`throughput`, `latency`) share: parsing a
//! durability mode, building an engine on a real filesystem, knowing when the
//! last job has run, and waiting for the engine's counters to catch up.

use crate::dir::BenchDir;
use crate::BoxResult;
use spindle_engine::{Durability, Engine, Stats};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The queue every scenario job goes to.
pub const QUEUE: &str = "bench";

/// Parses `memory`, `process` or `sync`.
pub fn parse_durability(s: &str) -> BoxResult<Durability> {
    match s {
        "memory" => Ok(Durability::Memory),
        "process" => Ok(Durability::Process),
        "sync" => Ok(Durability::Sync),
        other => Err(format!("unknown durability {other:?}; one of memory, process, sync").into()),
    }
}

/// The lower-case name `parse_durability` accepts.
pub fn durability_name(d: Durability) -> &'static str {
    match d {
        Durability::Memory => "memory",
        Durability::Process => "process",
        Durability::Sync => "sync",
    }
}

/// A running engine and, for `Process` and `Sync`, its scratch data dir.
#[derive(Debug)]
pub struct BenchEngine {
    /// The engine.
    pub engine: Engine,
    /// The data dir (dropped, and so deleted, after the engine).
    pub dir: Option<BenchDir>,
}

impl BenchEngine {
    /// Builds an engine with `durability` and `shards` (None: one per core),
    /// and `static_workers` active core workers (None: the lag controller).
    /// Logs go to a scratch directory on a real filesystem under `parent`
    /// (see `dir.rs`); `Sync` refuses tmpfs, where a sync reaches no disk.
    pub fn build(
        durability: Durability,
        shards: Option<usize>,
        static_workers: Option<usize>,
        parent: Option<&Path>,
    ) -> BoxResult<BenchEngine> {
        Self::build_tuned(durability, shards, static_workers, parent, None)
    }

    /// [`BenchEngine::build`] with the workers' idle spin set (None: the
    /// engine's default).
    pub fn build_tuned(
        durability: Durability,
        shards: Option<usize>,
        static_workers: Option<usize>,
        parent: Option<&Path>,
        idle_spin: Option<std::time::Duration>,
    ) -> BoxResult<BenchEngine> {
        let mut b = Engine::builder().durability(durability);
        if let Some(d) = idle_spin {
            b = b.idle_spin(d);
        }
        if let Some(n) = static_workers {
            b = b.workers(spindle_engine::Workers::Static(n));
        }
        if let Some(n) = shards {
            b = b.shards(n);
        }
        let dir = if durability == Durability::Memory {
            None
        } else {
            let dir = BenchDir::create(parent)?;
            if durability == Durability::Sync && dir.is_memory_fs() {
                return Err(format!(
                    "{} is on {}: syncs there reach no disk; pass --dir on a real filesystem",
                    dir.path().display(),
                    dir.fs_type
                )
                .into());
            }
            b = b.data_dir(dir.path());
            Some(dir)
        };
        Ok(BenchEngine { engine: b.build()?, dir })
    }

    /// The filesystem holding the logs, or `none` in Memory mode.
    pub fn fs_type(&self) -> String {
        self.dir.as_ref().map_or_else(|| "none".to_string(), |d| d.fs_type.clone())
    }

    /// Shuts the engine down (the data dir is deleted on drop).
    pub fn shutdown(self) -> BoxResult<()> {
        self.engine.shutdown()?;
        Ok(())
    }
}

/// Counts completions from handlers and reports the instant the `target`-th
/// one finished, without polling: the handler that completes the last job
/// sends the time over a channel.
#[derive(Debug)]
pub struct Completion {
    done: AtomicU64,
    target: u64,
    tx: Mutex<Option<SyncSender<Instant>>>,
}

impl Completion {
    /// A counter for `target` jobs and the receiver of the finish time.
    pub fn new(target: u64) -> (Completion, Receiver<Instant>) {
        let (tx, rx) = sync_channel(1);
        (Completion { done: AtomicU64::new(0), target, tx: Mutex::new(Some(tx)) }, rx)
    }

    /// Called by a handler once per job.
    #[inline]
    pub fn one(&self) {
        if self.done.fetch_add(1, Ordering::Relaxed) + 1 == self.target {
            let now = Instant::now();
            let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(tx) = tx {
                let _ = tx.send(now);
            }
        }
    }

    /// Jobs counted so far.
    pub fn count(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }
}

/// Waits for the finish time (a guard of `limit` against hanging, not a
/// synchronisation device).
pub fn wait_done(rx: &Receiver<Instant>, c: &Completion, limit: Duration) -> BoxResult<Instant> {
    rx.recv_timeout(limit).map_err(|_| {
        format!("only {} of {} jobs ran within {} s", c.count(), c.target, limit.as_secs()).into()
    })
}

/// Engine stats once `completed` jobs are counted. An outcome of a job
/// stolen by another shard reaches its owner shortly after the handler
/// returns; `stats()` waits for fresh snapshots, so a few calls suffice.
pub fn stats_when_completed(engine: &Engine, completed: u64) -> Stats {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut s = engine.stats();
    while s.total().completed < completed && Instant::now() < deadline {
        s = engine.stats();
    }
    s
}

/// Jobs run by a shard other than their owner.
pub fn stolen(s: &Stats) -> u64 {
    s.shards.iter().map(|x| x.jobs_stolen).sum()
}

/// Number of CPUs this process may use.
pub fn cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}
