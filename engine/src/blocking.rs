//! Each shard's elastic pool of threads for blocking handlers.
//!
//! A queue registered with `Engine::register_blocking` never runs on a core
//! worker: its handlers may sleep, wait on I/O or call other services, and a
//! core worker stuck in one would leave its core idle and its queue waiting.
//! The protocol:
//!
//! 1. The shard keeps the queue's ready jobs in their own heap and hands at
//!    most `target` of them at a time to its pool (`target` comes from the
//!    lag controller, which sizes the pool with the same law as the core
//!    workers, capped by `max_blocking`). The shard logs each job's `Start`
//!    as for any run.
//! 2. A hand-off pushes the job into the pool's channel; if more jobs wait
//!    in it than threads are idle, and fewer than `target` threads exist,
//!    the shard spawns one.
//! 3. A pool thread runs the handler and sends the outcome to the shard's
//!    inbox (`Msg::Blocking`); the shard applies and logs it like its own.
//! 4. A thread idle for [`KEEP_ALIVE`] while the pool has more threads than
//!    its target leaves. It first gives up its place (`threads - 1`), then
//!    looks at the channel once more and takes its place back if a job came
//!    in meanwhile: with step 2 (push, then read `idle` and `threads`), a job
//!    is always either seen by that look or followed by a spawn.
//! 5. At shutdown the shard takes back the jobs no thread has received (they
//!    stay in the log, or run again in Memory mode) and waits for the
//!    running ones. It hands out no more from the moment submits start
//!    failing (`ShardShared::stopping`), before its shutdown message
//!    arrives: a handler that returns when submits fail would otherwise
//!    let the whole backlog run through in that gap. When it exits it drops the channel's sender; idle
//!    threads see the disconnect and leave.

use crate::engine::Handler;
use crate::job::Outcome;
use crate::shard::{Msg, ShardShared};
use crate::steal::Task;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long an idle pool thread above the target lingers: long enough that
/// a pool sized for a burst survives the gaps inside it, short enough that
/// threads do not pile up after it.
const KEEP_ALIVE: Duration = Duration::from_secs(2);

/// A job run by a pool thread, on its way back to its shard.
#[derive(Debug)]
pub(crate) struct BlockingDone {
    pub(crate) task: Task,
    pub(crate) outcome: Outcome,
    /// Engine-clock nanoseconds at the handler's start and end.
    pub(crate) start_ns: u64,
    pub(crate) end_ns: u64,
}

/// Counts other threads read (stats, the controller).
#[derive(Debug, Default)]
pub(crate) struct PoolGauges {
    /// Threads alive.
    pub(crate) threads: AtomicUsize,
    /// Threads waiting for a job.
    pub(crate) idle: AtomicUsize,
    /// Most jobs in the pool's hands at once (set by the controller).
    pub(crate) target: AtomicUsize,
}

/// The shard's handle on its pool.
pub(crate) struct Pool {
    tx: Sender<(Task, Arc<dyn Handler>)>,
    rx: Receiver<(Task, Arc<dyn Handler>)>,
    max: usize,
    epoch: Instant,
}

impl Pool {
    pub(crate) fn new(max: usize, epoch: Instant) -> Pool {
        let (tx, rx) = crossbeam_channel::unbounded();
        Pool { tx, rx, max: max.max(1), epoch }
    }

    /// How many jobs the shard may have in the pool's hands now.
    pub(crate) fn target(&self, sh: &ShardShared) -> usize {
        sh.pool.target.load(Ordering::Relaxed).clamp(1, self.max)
    }

    /// Step 2: hands a job to the pool, spawning a thread if none is idle.
    pub(crate) fn submit(&self, sh: &Arc<ShardShared>, task: Task, h: Arc<dyn Handler>) {
        if let Err(e) = self.tx.send((task, h)) {
            // The receiver lives in `self`: cannot happen; run it here
            // rather than lose it.
            let (task, h) = e.into_inner();
            run(sh, &self.epoch, task, h);
            return;
        }
        let g = &sh.pool;
        // More jobs waiting in the channel than idle threads to take them
        // (an idle thread counts as idle until it has received one, so
        // several hand-offs in a row must not all count on the same one).
        if self.rx.len() > g.idle.load(Ordering::SeqCst)
            && g.threads.load(Ordering::SeqCst) < self.target(sh)
        {
            g.threads.fetch_add(1, Ordering::SeqCst);
            let (rx, sh2, epoch) = (self.rx.clone(), sh.clone(), self.epoch);
            let spawned = std::thread::Builder::new()
                .name(format!("spindle-blocking-{}", sh.idx))
                .spawn(move || thread_body(&sh2, &rx, &epoch));
            if let Err(e) = spawned {
                g.threads.fetch_sub(1, Ordering::SeqCst);
                tracing::error!(shard = sh.idx, error = %e, "cannot spawn a blocking-pool thread");
                // Existing threads still drain the channel; with none at all
                // the job would wait forever, so run it here.
                if g.threads.load(Ordering::SeqCst) == 0 {
                    if let Ok((task, h)) = self.rx.try_recv() {
                        run(sh, &self.epoch, task, h);
                    }
                }
            }
        }
    }
}

impl Pool {
    /// Takes back the jobs no thread has received yet (at shutdown).
    pub(crate) fn drain(&self) -> Vec<Task> {
        self.rx.try_iter().map(|(t, _)| t).collect()
    }
}

fn run(sh: &ShardShared, epoch: &Instant, task: Task, h: Arc<dyn Handler>) {
    let start_ns = epoch.elapsed().as_nanos() as u64;
    let job = crate::job::JobRef {
        id: crate::job::JobId(task.id),
        queue: &task.queue,
        payload: task.payload.bytes(),
        attempt: task.attempt,
        priority: task.priority,
        cancels: Some(&sh.cancels),
    };
    let outcome = crate::shard::call_handler(h.as_ref(), &job);
    let end_ns = epoch.elapsed().as_nanos() as u64;
    sh.send(Msg::Blocking(BlockingDone { task, outcome, start_ns, end_ns }));
}

/// Steps 3-5.
fn thread_body(sh: &ShardShared, rx: &Receiver<(Task, Arc<dyn Handler>)>, epoch: &Instant) {
    let g = &sh.pool;
    loop {
        g.idle.fetch_add(1, Ordering::SeqCst);
        let got = rx.recv_timeout(KEEP_ALIVE);
        g.idle.fetch_sub(1, Ordering::SeqCst);
        match got {
            Ok((task, h)) => run(sh, epoch, task, h),
            Err(RecvTimeoutError::Timeout) => {
                let target = g.target.load(Ordering::Relaxed).max(1);
                let left = g
                    .threads
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |t| {
                        (t > target).then(|| t - 1)
                    })
                    .is_ok();
                if left {
                    if rx.is_empty() {
                        return;
                    }
                    // A job arrived while leaving: stay.
                    g.threads.fetch_add(1, Ordering::SeqCst);
                }
            }
            Err(RecvTimeoutError::Disconnected) => {
                g.threads.fetch_sub(1, Ordering::SeqCst);
                return;
            }
        }
    }
}
