//! A shard's lane: new jobs that run straight from their batch, without
//! entering the shard's job table.
//!
//! Most jobs are submitted ready, run once and succeed. For those the table
//! (put, reserve, complete: three index updates and a slot) is pure cost:
//! the job is only ever in the table between its arrival and its run. The
//! lane holds such jobs in the order they arrived, and the shard runs them
//! from there; only a job whose run fails (retry or bury) enters the table,
//! with its reservation, and from then on follows every rule of the table.
//!
//! The protocol, step by step:
//!
//! 1. **Admission** (the owner shard, taking a message from its inbox). A
//!    batch enters the lane when all of its jobs are ready now (no delay,
//!    no unique key), go to one queue whose handler runs on the shard
//!    (`register`, not `register_blocking`), and have one priority; and when
//!    the lane is empty, or holds jobs of that queue and priority whose ids
//!    are all below the batch's. So the lane is always in (priority, id)
//!    order, the table's ready order. Any other batch goes to the table.
//! 2. **Choice** (the owner, before each run). The next job is the more
//!    urgent of the lane's front and the table's best ready job, by
//!    (priority, id): [`Lane::pop_before`] pops the front only if it comes
//!    first. While runs are short, a burst takes up to 8 such jobs under
//!    one lock ([`Lane::pop_many_before`]) and puts back at the front those
//!    it does not run ([`Lane::unpop`]). Jobs the shard offered to thieves
//!    from its table keep their place as before (`shard.rs`).
//! 3. **Run**. The owner stores the job's id in its run marker (durable
//!    modes, `spindle_wal::RunMarker`: a crash during the run counts an
//!    interruption on recovery, as a logged `Reserve` would, for a store
//!    instead of a log append), runs the handler, clears the marker, and on
//!    success logs the job's `Delete` with its next frame. A failed run puts
//!    the job into the table as reserved (logging its `Reserve`) and
//!    applies the outcome there (retry with backoff, bury).
//! 4. **Stealing**. Another shard with nothing to run takes the newest
//!    half of the lane ([`Lane::steal`]), or all of it while the owner is
//!    inside a handler, so a handler that blocks the owner strands nothing
//!    behind it. The thief first enters the
//!    owner's submit epoch and runs the jobs. It finishes those that
//!    succeed itself: their `Delete`s go to the owner's log from the
//!    thief's thread, in one frame, and they count as the thief's
//!    completions. The others go back with their outcomes (`Msg::Rescued`)
//!    for the owner to apply through its table. Compaction cannot release
//!    their `Put`s meanwhile (the epoch).
//! 5. **Spill**. Before a compaction pass (which rewrites the live jobs of
//!    the table), and when the lane's queue stops being runnable here (its
//!    handler became blocking), the owner moves the lane into the table, in
//!    order.
//!
//! The lane is a mutex around a queue of batches: the owner takes it once
//! per job (once per 8 while runs are short), uncontended unless a thief is
//! taking half. `len` and `pri` are
//! hints for readers that do not take the lock (the controller's gauges,
//! idle shards deciding whether to steal).

use crate::shard::NewJob;
use crate::sync::{AtomicUsize, Ordering};
use spindle_core::QueueId;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, AtomicU64};
use std::sync::{Arc, Mutex, MutexGuard};

/// Most jobs one steal takes.
pub(crate) const STEAL_MAX: usize = 256;

/// The lane of one shard.
#[derive(Default)]
pub(crate) struct Lane {
    inner: Mutex<Inner>,
    /// Jobs in the lane (a hint outside the lock).
    len: AtomicUsize,
    /// The lane's priority, `u32::MAX` when empty (a hint outside the lock).
    pri: AtomicU32,
    /// Jobs thieves took and whose outcomes the owner has not received.
    lent: AtomicUsize,
    /// Payload bytes of the jobs in the lane (a hint outside the lock).
    bytes: AtomicU64,
}

#[derive(Default)]
struct Inner {
    /// The queue, in the owner's table, and its name.
    queue: Option<(QueueId, Arc<str>)>,
    pri: u32,
    /// Id of the newest job admitted.
    last: u64,
    /// Batches in arrival order, each in id order: the lane's front job is
    /// the front of the front batch.
    batches: VecDeque<VecDeque<NewJob>>,
    len: usize,
    bytes: u64,
    /// An emptied batch kept for single jobs (no allocation per job).
    spare: Option<VecDeque<NewJob>>,
}

impl Inner {
    /// Whether a job of queue `q` (named `name`), priority `pri`, with ids
    /// from `first_id`, keeps the lane in order; prepares an empty lane for
    /// it.
    fn fits(&mut self, q: QueueId, name: &Arc<str>, pri: u32, first_id: u64) -> bool {
        if self.len == 0 {
            self.queue = Some((q, name.clone()));
            self.pri = pri;
            return true;
        }
        matches!(&self.queue, Some((lq, _)) if *lq == q) && self.pri == pri && self.last < first_id
    }

    /// Drops the emptied front batch, keeping one for single jobs.
    fn retire_front(&mut self) {
        if let Some(mut b) = self.batches.pop_front() {
            if self.spare.is_none() && b.capacity() <= 1024 {
                b.clear();
                self.spare = Some(b);
            }
        }
    }
}

impl Lane {
    pub(crate) fn new() -> Lane {
        Lane { pri: AtomicU32::new(u32::MAX), ..Lane::default() }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Jobs in the lane (may be stale by the time it is read).
    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// The lane's priority, or `u32::MAX` when it is empty (a hint).
    pub(crate) fn pri(&self) -> u32 {
        self.pri.load(Ordering::Relaxed)
    }

    /// Jobs in thieves' hands (the owner keeps its log open for them).
    pub(crate) fn lent(&self) -> usize {
        self.lent.load(Ordering::Acquire)
    }

    /// The owner received the outcomes of `n` stolen jobs.
    pub(crate) fn returned(&self, n: usize) {
        self.lent.fetch_sub(n, Ordering::AcqRel);
    }

    /// Payload bytes in the lane (may be stale by the time it is read).
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    fn publish(&self, g: &Inner) {
        self.len.store(g.len, Ordering::Relaxed);
        self.bytes.store(g.bytes, Ordering::Relaxed);
        let pri = if g.len == 0 { u32::MAX } else { g.pri };
        self.pri.store(pri, Ordering::Relaxed);
    }

    /// Step 1: admits `jobs` (all of queue `q` named `name`, ready, of one
    /// priority, ids increasing) if the lane's order allows; gives them back
    /// otherwise.
    pub(crate) fn admit(
        &self,
        q: QueueId,
        name: &Arc<str>,
        jobs: Vec<NewJob>,
    ) -> Result<(), Vec<NewJob>> {
        let (Some(first), Some(last)) = (jobs.first(), jobs.last()) else { return Ok(()) };
        let (pri, first_id, last_id) = (first.priority, first.id, last.id);
        let mut g = self.lock();
        if !g.fits(q, name, pri, first_id) {
            return Err(jobs);
        }
        g.last = last_id;
        g.len += jobs.len();
        g.bytes += jobs.iter().map(|j| j.payload.len() as u64).sum::<u64>();
        g.batches.push_back(VecDeque::from(jobs));
        self.publish(&g);
        Ok(())
    }

    /// [`Lane::admit`] for a single job: appended to the newest batch, or
    /// to a kept empty one (no allocation).
    pub(crate) fn admit_one(&self, q: QueueId, name: &Arc<str>, job: NewJob) -> Result<(), NewJob> {
        let mut g = self.lock();
        if !g.fits(q, name, job.priority, job.id) {
            return Err(job);
        }
        g.last = job.id;
        g.len += 1;
        g.bytes += job.payload.len() as u64;
        match g.batches.back_mut() {
            Some(b) => b.push_back(job),
            None => {
                let mut b = g.spare.take().unwrap_or_default();
                b.push_back(job);
                g.batches.push_back(b);
            }
        }
        self.publish(&g);
        Ok(())
    }

    /// Step 2: pops the front job if `(priority, id)` of it comes before
    /// `other` (the table's best ready job; None: nothing there).
    pub(crate) fn pop_before(&self, other: Option<(u32, u64)>) -> Option<(NewJob, QueueId)> {
        if self.len() == 0 {
            return None;
        }
        let mut g = self.lock();
        let q = g.queue.as_ref()?.0;
        let pri = g.pri;
        let front = g.batches.front_mut()?;
        let id = front.front()?.id;
        if other.is_some_and(|o| o <= (pri, id)) {
            return None;
        }
        let job = front.pop_front()?;
        if front.is_empty() {
            g.retire_front();
        }
        g.len -= 1;
        g.bytes = g.bytes.saturating_sub(job.payload.len() as u64);
        if g.len == 0 {
            g.queue = None;
        }
        self.publish(&g);
        Some((job, q))
    }

    /// Step 2 for several jobs at once: pops up to `max` front jobs that
    /// come before `other`, appending them to `out` in order (one lock for
    /// all). Returns their queue if any were popped.
    pub(crate) fn pop_many_before(
        &self,
        other: Option<(u32, u64)>,
        max: usize,
        out: &mut VecDeque<NewJob>,
    ) -> Option<QueueId> {
        if self.len() == 0 {
            return None;
        }
        let mut g = self.lock();
        let q = g.queue.as_ref()?.0;
        let pri = g.pri;
        let mut n = 0;
        let mut bytes = 0;
        while n < max {
            let Some(front) = g.batches.front_mut() else { break };
            let Some(id) = front.front().map(|j| j.id) else {
                g.retire_front();
                continue;
            };
            if other.is_some_and(|o| o <= (pri, id)) {
                break;
            }
            let Some(job) = front.pop_front() else { break };
            if front.is_empty() {
                g.retire_front();
            }
            bytes += job.payload.len() as u64;
            out.push_back(job);
            n += 1;
        }
        if n == 0 {
            return None;
        }
        g.len -= n;
        g.bytes = g.bytes.saturating_sub(bytes);
        if g.len == 0 {
            g.queue = None;
        }
        self.publish(&g);
        Some(q)
    }

    /// Puts jobs popped by [`Lane::pop_many_before`] and not run back at
    /// the front, in order (of queue `q`, named `name`), emptying `jobs`
    /// (its buffer stays with the caller).
    pub(crate) fn unpop(&self, q: QueueId, name: &Arc<str>, jobs: &mut VecDeque<NewJob>) {
        let (Some(first), Some(last)) = (jobs.front(), jobs.back()) else { return };
        let (pri, last_id) = (first.priority, last.id);
        let n = jobs.len();
        let bytes: u64 = jobs.iter().map(|j| j.payload.len() as u64).sum();
        let mut g = self.lock();
        if g.len == 0 {
            g.queue = Some((q, name.clone()));
            g.pri = pri;
            g.last = last_id;
        }
        g.len += n;
        g.bytes += bytes;
        match g.batches.front_mut() {
            Some(front) => {
                while let Some(j) = jobs.pop_back() {
                    front.push_front(j);
                }
            }
            None => {
                let mut b = g.spare.take().unwrap_or_default();
                b.extend(jobs.drain(..));
                g.batches.push_front(b);
            }
        }
        self.publish(&g);
    }

    /// Step 4: the newest half of the lane (`whole`: all of it), at most
    /// [`STEAL_MAX`] jobs, oldest first, if its queue is `runnable` (by
    /// name) for the thief.
    pub(crate) fn steal(&self, whole: bool, runnable: impl Fn(&str) -> bool) -> Vec<NewJob> {
        if self.len() < if whole { 1 } else { 2 } {
            return Vec::new();
        }
        let mut g = self.lock();
        let Some((_, name)) = &g.queue else { return Vec::new() };
        if !runnable(name) {
            return Vec::new();
        }
        let mut want = if whole { g.len } else { g.len / 2 }.min(STEAL_MAX);
        let mut out = Vec::with_capacity(want);
        let g = &mut *g;
        while want > 0 {
            let Some(back) = g.batches.back_mut() else { break };
            // Newest first: from the back of the back batch.
            let take = want.min(back.len());
            let from = out.len();
            out.extend(back.drain(back.len() - take..).rev());
            if back.is_empty() {
                g.batches.pop_back();
            }
            let gone: u64 = out[from..].iter().map(|j| j.payload.len() as u64).sum();
            g.bytes = g.bytes.saturating_sub(gone);
            want -= take;
            g.len -= take;
        }
        if g.len == 0 {
            g.queue = None;
        }
        // Under the lock: the owner never sees the jobs in neither place.
        self.lent.fetch_add(out.len(), Ordering::AcqRel);
        self.publish(g);
        out.reverse();
        out
    }

    /// Step 5: every job, oldest first, with the lane's queue.
    pub(crate) fn drain(&self) -> Option<(QueueId, Vec<NewJob>)> {
        let mut g = self.lock();
        let (q, _) = g.queue.take()?;
        let mut out = Vec::with_capacity(g.len);
        for b in g.batches.drain(..) {
            out.extend(b);
        }
        g.len = 0;
        g.bytes = 0;
        self.publish(&g);
        Some((q, out))
    }

    /// The lane's queue (in the owner's table) and its number of jobs.
    pub(crate) fn count(&self) -> Option<(QueueId, usize)> {
        let g = self.lock();
        g.queue.as_ref().map(|(q, _)| (*q, g.len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spindle_core::Time;

    fn job(id: u64, pri: u32) -> NewJob {
        NewJob {
            id,
            queue: Arc::<str>::from("q").into(),
            priority: pri,
            payload: vec![id as u8],
            created: Time(1),
            due: None,
            max_attempts: 5,
            unique_key: None,
            deadline: 0,
            homed: false,
        }
    }

    fn name() -> Arc<str> {
        Arc::from("q")
    }

    #[test]
    fn jobs_leave_in_priority_then_id_order_against_the_table() {
        let lane = Lane::new();
        lane.admit(QueueId(0), &name(), vec![job(1, 5), job(2, 5)]).unwrap();
        lane.admit(QueueId(0), &name(), vec![job(3, 5)]).unwrap();
        assert_eq!((lane.len(), lane.pri()), (3, 5));
        // A more urgent table job goes first; an older one of the same
        // priority too; a newer one does not.
        assert!(lane.pop_before(Some((4, 100))).is_none());
        assert!(lane.pop_before(Some((5, 0))).is_none());
        let ids: Vec<u64> =
            std::iter::from_fn(|| lane.pop_before(Some((5, 10))).map(|(j, _)| j.id)).collect();
        assert_eq!(ids, vec![1, 2, 3]);
        assert_eq!((lane.len(), lane.pri()), (0, u32::MAX));
    }

    #[test]
    fn several_jobs_leave_at_once_and_those_put_back_lead_again() {
        let lane = Lane::new();
        lane.admit(QueueId(0), &name(), vec![job(1, 5), job(2, 5)]).unwrap();
        lane.admit(QueueId(0), &name(), vec![job(3, 5), job(4, 5), job(5, 5)]).unwrap();
        let mut hand = VecDeque::new();
        // Across batches, up to the limit, and only those before the table's
        // best (here id 4).
        assert_eq!(lane.pop_many_before(Some((5, 4)), 8, &mut hand), Some(QueueId(0)));
        let ids: Vec<u64> = hand.iter().map(|j| j.id).collect();
        assert_eq!(ids, vec![1, 2, 3]);
        assert_eq!(lane.len(), 2);
        // Job 1 ran; 2 and 3 go back, ahead of 4 and 5.
        hand.pop_front();
        lane.unpop(QueueId(0), &name(), &mut hand);
        assert!(hand.is_empty());
        assert_eq!(lane.len(), 4);
        let ids: Vec<u64> =
            std::iter::from_fn(|| lane.pop_before(None).map(|(j, _)| j.id)).collect();
        assert_eq!(ids, vec![2, 3, 4, 5]);
        // Into an empty lane: it takes the queue and priority back, and a
        // new batch must still come after them.
        lane.admit(QueueId(0), &name(), vec![job(6, 5), job(7, 5)]).unwrap();
        assert_eq!(lane.pop_many_before(None, 2, &mut hand), Some(QueueId(0)));
        assert_eq!(lane.len(), 0);
        lane.unpop(QueueId(0), &name(), &mut hand);
        assert_eq!((lane.len(), lane.pri()), (2, 5));
        assert!(lane.admit(QueueId(0), &name(), vec![job(7, 5)]).is_err());
        assert!(lane.admit(QueueId(0), &name(), vec![job(8, 5)]).is_ok());
    }

    #[test]
    fn a_batch_out_of_order_is_refused() {
        let lane = Lane::new();
        lane.admit(QueueId(0), &name(), vec![job(10, 5)]).unwrap();
        // Older id, other priority, other queue: each would break the order.
        assert!(lane.admit(QueueId(0), &name(), vec![job(9, 5)]).is_err());
        assert!(lane.admit(QueueId(0), &name(), vec![job(11, 4)]).is_err());
        assert!(lane.admit(QueueId(1), &name(), vec![job(11, 5)]).is_err());
        assert!(lane.admit(QueueId(0), &name(), vec![job(11, 5)]).is_ok());
        // Once empty, any batch starts a new lane.
        lane.drain().unwrap();
        assert!(lane.admit(QueueId(1), &name(), vec![job(3, 9)]).is_ok());
        assert_eq!(lane.count(), Some((QueueId(1), 1)));
    }

    #[test]
    fn thieves_take_half_from_the_back_and_the_owner_keeps_the_front() {
        let lane = Lane::new();
        lane.admit(QueueId(0), &name(), (1..=4).map(|i| job(i, 0)).collect()).unwrap();
        lane.admit(QueueId(0), &name(), (5..=7).map(|i| job(i, 0)).collect()).unwrap();
        assert!(lane.steal(false, |_| false).is_empty(), "no handler there: nothing taken");
        let stolen: Vec<u64> = lane.steal(false, |n| n == "q").iter().map(|j| j.id).collect();
        // Half of 7, across the two batches, oldest of them first.
        assert_eq!(stolen, vec![5, 6, 7]);
        assert_eq!(lane.bytes(), 4, "one payload byte per job left");
        assert_eq!(lane.lent(), 3);
        lane.returned(3);
        assert_eq!(lane.lent(), 0);
        let left: Vec<u64> =
            std::iter::from_fn(|| lane.pop_before(None).map(|(j, _)| j.id)).collect();
        assert_eq!(left, vec![1, 2, 3, 4]);
        // A single job is left to its owner, unless the owner is busy.
        lane.admit(QueueId(0), &name(), vec![job(8, 0)]).unwrap();
        assert!(lane.steal(false, |_| true).is_empty());
        assert_eq!(lane.steal(true, |_| true).len(), 1);
    }

    #[test]
    fn single_jobs_join_the_newest_batch_in_order() {
        let lane = Lane::new();
        lane.admit_one(QueueId(0), &name(), job(1, 3)).unwrap();
        lane.admit(QueueId(0), &name(), vec![job(2, 3), job(3, 3)]).unwrap();
        lane.admit_one(QueueId(0), &name(), job(4, 3)).unwrap();
        assert!(lane.admit_one(QueueId(0), &name(), job(4, 3)).is_err(), "not above the last");
        assert!(lane.admit_one(QueueId(0), &name(), job(5, 2)).is_err(), "another priority");
        let ids: Vec<u64> =
            std::iter::from_fn(|| lane.pop_before(None).map(|(j, _)| j.id)).collect();
        assert_eq!(ids, vec![1, 2, 3, 4]);
        // Emptied, the lane takes single jobs of any queue and priority again.
        lane.admit_one(QueueId(7), &name(), job(9, 0)).unwrap();
        assert_eq!(lane.count(), Some((QueueId(7), 1)));
        assert_eq!(lane.pri(), 0);
    }

    #[test]
    fn drain_returns_every_job_in_order() {
        let lane = Lane::new();
        lane.admit(QueueId(2), &name(), vec![job(1, 0), job(2, 0)]).unwrap();
        lane.admit(QueueId(2), &name(), vec![job(3, 0)]).unwrap();
        let (q, jobs) = lane.drain().unwrap();
        assert_eq!(q, QueueId(2));
        assert_eq!(jobs.iter().map(|j| j.id).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert!(lane.drain().is_none());
        assert_eq!(lane.len(), 0);
    }
}
