//! The library's door to schedules, limits, expiry and cancellation
//! (`docs/schedules-and-limits.md`). The rules are the job table's
//! (`spindle_core`); this file routes each request to the shard that must
//! apply it and waits for its answer.
//!
//! 1. **Home shards.** A queue with limits or schedules lives on one
//!    shard, its *home* (a hash of its name over the shards), so its limit
//!    holds across all workers: [`Engine::set_limits`] and
//!    [`Engine::add_schedule`] register the home, and from then on every
//!    submit to the queue goes there, never enters the lane and is never
//!    rescued by another shard (other shards may still *steal* its jobs,
//!    but only after the home's table has reserved them, within the
//!    limits). Recovery registers the homes the logs hold. A submit checks
//!    one atomic flag while no queue has a home.
//! 2. **Control messages.** Each request is a message to a shard (to the
//!    home, or to every shard for `cancel` and `schedules`), answered
//!    through a one-slot queue once its records are in the log. A shard
//!    answers between jobs.
//! 3. **Cancel** adds the id to the engine's set of cancelled jobs first,
//!    so a running handler sees [`crate::JobRef::is_cancelled`] at once,
//!    then asks every shard (`cancel.rs`).

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crossbeam_queue::ArrayQueue;
use spindle_core::{Cancelled, LimitError, Limits, ScheduleError, ScheduleSpec, ScheduleView};

use crate::engine::Engine;
use crate::job::{validate_queue, JobId};
use crate::shard::ctl::{CtlMsg, CtlOp, CtlReply};

/// Queues that live on one shard. Producers look a queue up on every
/// submit, so the map is read without a lock: each thread keeps the last
/// version it saw (`CACHED`) and takes the lock only when `version` moved,
/// which happens once per queue that gets a home.
#[derive(Debug)]
pub(crate) struct Homes {
    /// Unique per `Homes` in the process (not its address, which a later
    /// engine may reuse).
    id: u64,
    any: AtomicBool,
    version: AtomicU64,
    map: RwLock<Arc<HashMap<Box<str>, usize>>>,
}

/// A thread's copy of one engine's homes: (the `Homes` it belongs to, its
/// version, the map).
type Cached = Option<(u64, u64, Arc<HashMap<Box<str>, usize>>)>;

impl Default for Homes {
    fn default() -> Homes {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Homes {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            any: AtomicBool::new(false),
            version: AtomicU64::new(0),
            map: RwLock::default(),
        }
    }
}

thread_local! {
    static CACHED: RefCell<Cached> = const { RefCell::new(None) };
}

impl Homes {
    /// The home of `queue`, if it has one.
    #[inline]
    pub(crate) fn get(&self, queue: &str) -> Option<usize> {
        if !self.any.load(Ordering::Acquire) {
            return None;
        }
        self.lookup(queue)
    }

    fn lookup(&self, queue: &str) -> Option<usize> {
        let me = self.id;
        let version = self.version.load(Ordering::Acquire);
        let fresh = || {
            let map = self.map.read().unwrap_or_else(|p| p.into_inner()).clone();
            (me, version, map)
        };
        CACHED
            .try_with(|cell| {
                let Ok(mut c) = cell.try_borrow_mut() else {
                    return fresh().2.get(queue).copied();
                };
                if !c.as_ref().is_some_and(|(m, v, _)| *m == me && *v == version) {
                    *c = Some(fresh());
                }
                c.as_ref().and_then(|(_, _, map)| map.get(queue).copied())
            })
            .unwrap_or_else(|_| fresh().2.get(queue).copied())
    }

    pub(crate) fn set(&self, queue: &str, shard: usize) {
        let mut m = self.map.write().unwrap_or_else(|p| p.into_inner());
        if m.contains_key(queue) {
            return;
        }
        Arc::make_mut(&mut m).insert(queue.into(), shard);
        self.version.fetch_add(1, Ordering::AcqRel);
        self.any.store(true, Ordering::Release);
    }
}

/// The home a queue gets: its name's hash over the shards.
pub(crate) fn home_of(queue: &str, shards: usize) -> usize {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    queue.hash(&mut h);
    (h.finish() % shards.max(1) as u64) as usize
}

/// Why a limits, schedule or cancel request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// The limits are invalid.
    #[error(transparent)]
    Limit(#[from] LimitError),
    /// The schedule is invalid, exists, or was not found.
    #[error(transparent)]
    Schedule(#[from] ScheduleError),
    /// No shard holds this job (it completed, was deleted, or never was).
    #[error("job {0} not found (completed, deleted, or never submitted)")]
    NotFound(JobId),
    /// The queue name is invalid.
    #[error(transparent)]
    Queue(#[from] crate::SubmitError),
    /// The shard stopped before it answered.
    #[error("the engine is shutting down")]
    ShuttingDown,
}

impl Engine {
    /// Asks shard `i`; waits for its answer (a shard answers between jobs).
    fn ask(&self, i: usize, op: CtlOp) -> Result<CtlReply, ControlError> {
        let shard = &self.inner.shards[i];
        let reply: Arc<ArrayQueue<CtlReply>> = Arc::new(ArrayQueue::new(1));
        shard.send(crate::shard::Msg::Ctl(CtlMsg {
            op,
            reply: reply.clone(),
            waiter: std::thread::current(),
        }));
        loop {
            if let Some(r) = reply.pop() {
                return Ok(r);
            }
            if shard.exited.load(Ordering::Acquire) {
                return reply.pop().ok_or(ControlError::ShuttingDown);
            }
            // Woken by the shard's unpark; the timeout only guards against
            // a shard that exits between the checks.
            std::thread::park_timeout(Duration::from_millis(10));
        }
    }

    /// The home shard of `queue`, registered if new.
    fn home(&self, queue: &str) -> usize {
        if let Some(i) = self.inner.homes.get(queue) {
            return i;
        }
        let i = home_of(queue, self.inner.shards.len());
        self.inner.homes.set(queue, i);
        self.inner.homes.get(queue).unwrap_or(i)
    }

    /// Sets `queue`'s limits: at most `concurrency` jobs running at once
    /// over all workers, at most a rate of starts, and whether expired jobs
    /// are buried. Logged: they survive a restart. From now on the queue's
    /// jobs live on one shard (module docs, step 1).
    pub fn set_limits(&self, queue: &str, limits: Limits) -> Result<(), ControlError> {
        validate_queue(queue)?;
        limits.check()?;
        let i = self.home(queue);
        match self.ask(i, CtlOp::Limits(Arc::from(queue), limits))? {
            CtlReply::Limits(r) => Ok(r?),
            _ => Err(ControlError::ShuttingDown),
        }
    }

    /// Adds a periodic job to `queue` (its jobs run on the queue's
    /// handler). Logged: a restart, even after `kill -9`, loses no
    /// schedule and fires no tick twice.
    pub fn add_schedule(&self, queue: &str, spec: ScheduleSpec) -> Result<(), ControlError> {
        validate_queue(queue)?;
        let i = self.home(queue);
        match self.ask(i, CtlOp::AddSchedule(Arc::from(queue), spec))? {
            CtlReply::Schedule(r) => Ok(r?),
            _ => Err(ControlError::ShuttingDown),
        }
    }

    /// Pauses (`true`) or resumes `queue`'s schedule `name`.
    pub fn pause_schedule(
        &self,
        queue: &str,
        name: &str,
        paused: bool,
    ) -> Result<(), ControlError> {
        let op = CtlOp::PauseSchedule(Arc::from(queue), name.to_string(), paused);
        match self.ask(self.home(queue), op)? {
            CtlReply::Schedule(r) => Ok(r?),
            _ => Err(ControlError::ShuttingDown),
        }
    }

    /// Removes `queue`'s schedule `name`.
    pub fn remove_schedule(&self, queue: &str, name: &str) -> Result<(), ControlError> {
        let op = CtlOp::RemoveSchedule(Arc::from(queue), name.to_string());
        match self.ask(self.home(queue), op)? {
            CtlReply::Schedule(r) => Ok(r?),
            _ => Err(ControlError::ShuttingDown),
        }
    }

    /// Every schedule, over all shards.
    pub fn schedules(&self) -> Result<Vec<ScheduleView>, ControlError> {
        let mut all = Vec::new();
        for i in 0..self.inner.shards.len() {
            if let CtlReply::List(v) = self.ask(i, CtlOp::ListSchedules)? {
                all.extend(v);
            }
        }
        all.sort_by(|a, b| (&a.queue_name, &a.spec.name).cmp(&(&b.queue_name, &b.spec.name)));
        Ok(all)
    }

    /// Cancels job `id`: a job waiting (ready, delayed, buried) is deleted
    /// ([`Cancelled::Removed`]); a running one is marked
    /// ([`Cancelled::Running`]): its handler sees
    /// [`crate::JobRef::is_cancelled`], and whatever it returns the job is
    /// deleted, never retried. Returns once every shard has answered (a
    /// shard answers between jobs, so a handler that runs long on the
    /// job's own shard delays the answer until it returns).
    pub fn cancel(&self, id: JobId) -> Result<Cancelled, ControlError> {
        let cancels = &self.inner.shards[0].cancels;
        cancels.add(id.0);
        let mut found = None;
        for i in 0..self.inner.shards.len() {
            match self.ask(i, CtlOp::Cancel(id.0)) {
                Ok(CtlReply::Cancel(Ok(c))) => found = Some(c),
                // Not on this shard (or another answer): ask the next.
                Ok(_) => {}
                Err(e) => {
                    cancels.remove(id.0);
                    return Err(e);
                }
            }
        }
        match found {
            Some(c) => Ok(c),
            None => {
                cancels.remove(id.0);
                Err(ControlError::NotFound(id))
            }
        }
    }
}
