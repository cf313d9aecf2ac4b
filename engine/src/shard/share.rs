//! Sharing work between shards: offering the table's backlog to thieves,
//! stealing from other shards' deques and lanes, and rescuing the inbox of
//! a shard stuck in a handler (steps 4 and 5 of the loop, `mod.rs`).

use super::{Msg, NewJob, Shard, ShardShared};
use crate::append::Publish;
use crate::engine::Handler;
use crate::job::Outcome;
use crate::shard::call_handler;
use crate::steal::Task;
use crossbeam_deque::Steal;
use spindle_core::{QueueId, Records, Time};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Messages of a stuck shard's inbox a rescuer looks at for new jobs.
const RESCUE_LOOK: usize = 64;

/// A queue's handler here and its id in this shard's table.
type Runner = (Arc<dyn Handler>, QueueId);

impl Shard {
    /// Moves every ready job of the core queues into the steal deque (the
    /// most urgent first) and wakes one parked active shard. The whole
    /// backlog, so a handler that blocks this shard strands none of it.
    pub(super) fn offer(&mut self) -> bool {
        let now = self.now_t();
        self.offer_at(now)
    }

    /// [`Shard::offer`] at the time `now`.
    pub(super) fn offer_at(&mut self, now: Time) -> bool {
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
        while let Some(o) = self.take_from(false, now) {
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

    /// Runs jobs waiting in the inbox of a shard stuck in one handler for
    /// longer than [`STALLED`](crate::engine::STALLED) (they would otherwise
    /// wait for the handler to return):
    ///
    /// 1. Enter the stuck shard's submit epoch, so its compaction cannot
    ///    release the jobs' `Put` records while they are in our hands.
    /// 2. Pop one message. Anything but new jobs that are due now, of a queue
    ///    we have a handler for, goes back to the end of its inbox.
    /// 3. Run the jobs here ([`Shard::run_for`]): those that succeed are
    ///    done here (their `Delete`s go to the stuck shard's log from this
    ///    thread); the others go back with their outcomes (`Msg::Rescued`)
    ///    for the owner to record and log when its handler returns. A crash
    ///    before that reruns them, as for any job whose outcome was not
    ///    logged.
    pub(super) fn rescue(&mut self) -> bool {
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
            let runnable = |j: &NewJob| {
                j.due.is_none_or(|d| d <= now_t)
                    && !j.homed
                    && j.deadline == 0
                    && self.handler_of(&j.queue).is_some_and(|h| !h.1)
            };
            // Messages it cannot run here (outcomes sent back to the stuck
            // shard, registrations, ...) go to the back of its inbox; look
            // past a bounded number of them for new jobs, rather than give
            // up at the first (that gave up for a whole park each time).
            for _ in 0..RESCUE_LOOK {
                let Some(msg) = o.inbox.pop() else { break };
                let jobs = match msg {
                    Msg::Jobs(jobs) if jobs.iter().all(runnable) => jobs,
                    Msg::Job(j) if runnable(&j) => vec![j],
                    other => {
                        o.send(other);
                        continue;
                    }
                };
                self.run_for(o, jobs, false);
                return true;
            }
        }
        false
    }

    /// Runs new jobs taken from shard `o` (its inbox or its lane; the caller
    /// is in `o`'s submit epoch). Each job's queue has a core handler here.
    ///
    /// 1. Look each job's handler up once per run of jobs of one queue (by
    ///    the name's pointer: a batch shares one).
    /// 2. Run it (the run marker names it, for recovery).
    /// 3. A success is finished here: its `Delete` goes to `o`'s log from
    ///    this thread (one frame for the batch), and it is counted as this
    ///    shard's completion. The owner never hears of it: nothing of it is
    ///    in its table, and a message per batch would wake it.
    /// 4. Every other outcome (and a success whose `Delete` the log
    ///    refused) goes back to `o` (`Msg::Rescued`), which puts the job
    ///    into its table and applies the outcome there.
    /// 5. Only then are the lane's lent jobs given back (`o`'s shutdown
    ///    waits for them, so it closes its log after step 3).
    pub(super) fn run_for(&mut self, o: &ShardShared, jobs: Vec<NewJob>, from_lane: bool) {
        self.drop_spin_slot();
        let n = jobs.len();
        let mut done: Vec<(NewJob, QueueId)> = Vec::with_capacity(n);
        let mut back = Vec::new();
        let mut last: Option<(crate::name::Name, Option<Runner>)> = None;
        for j in jobs {
            // Step 1.
            let fresh = !last.as_ref().is_some_and(|(name, _)| name.same(&j.queue));
            if fresh {
                let h = match (self.handler_of(&j.queue), self.qid(&j.queue)) {
                    (Some((h, _)), Some(q)) => Some((h, q)),
                    _ => None,
                };
                last = Some((j.queue.clone(), h));
            }
            let found = last.as_ref().and_then(|(_, h)| h.clone());
            // Step 2.
            let outcome = match &found {
                Some((h, _)) => {
                    let job = j.job_ref(Some(&self.sh.cancels));
                    // This shard's marker names the owner's job: recovery
                    // counts a crash during the run against it wherever it
                    // is logged (ids are engine-wide).
                    if let Some(m) = &self.sh.marker {
                        m.set(j.id);
                    }
                    let outcome = call_handler(h.as_ref(), &job);
                    if let Some(m) = &self.sh.marker {
                        m.set(0);
                    }
                    outcome
                }
                // Registrations reach every shard before jobs exist; keep
                // the job regardless (a retry, not a loss).
                None => Outcome::Retry("no handler on the shard that took the job".into()),
            };
            self.jobs_run += 1;
            self.jobs_stolen += 1;
            match (outcome, found) {
                (Outcome::Done, Some((_, q))) => done.push((j, q)),
                (outcome, _) => back.push((j, outcome)),
            }
        }
        // Step 3.
        let logged = match &o.wal {
            Some(wal) if !done.is_empty() => {
                let mut recs = Records::new();
                for (j, _) in &done {
                    recs.push_delete(j.id);
                }
                o.append(wal, &recs, o.outcome_keep.load(Ordering::Relaxed), Publish::Wait).is_ok()
            }
            _ => true,
        };
        if logged {
            for (j, q) in done {
                self.done_counts(q, j.payload.len() as u64);
            }
        } else {
            back.extend(done.into_iter().map(|(j, _)| (j, Outcome::Done)));
        }
        // Steps 4 and 5.
        let kept = n - back.len();
        if !back.is_empty() {
            o.send(Msg::Rescued(back, from_lane));
        }
        if from_lane && kept > 0 {
            o.lane.returned(kept);
        }
    }

    /// Step 5, lanes: takes up to half of another shard's lane (`lane.rs`
    /// step 4), runs the jobs and sends them back with their outcomes.
    pub(super) fn steal_lane(&mut self) -> bool {
        let all = self.all.clone();
        let n = all.len();
        let start = (self.now_ns() as usize ^ self.sh.idx.wrapping_mul(0x9E37)) % n;
        for k in 0..n {
            let o = &all[(start + k) % n];
            // All of it (up to the limit) while the owner is inside a
            // handler, which may block for long; half of it otherwise.
            let whole = o.handler_since.load(Ordering::Relaxed) != 0;
            if o.idx == self.sh.idx || o.lane.len() < if whole { 1 } else { 2 } {
                continue;
            }
            let _inflight = o.enter();
            let jobs = o.lane.steal(whole, |q| self.handler_of(q).is_some_and(|h| !h.1));
            if jobs.is_empty() {
                continue;
            }
            if o.lane.len() >= 2 {
                self.wake_one_idle();
            }
            self.run_for(o, jobs, true);
            return true;
        }
        false
    }

    /// Wakes at most one parked active shard so it can steal.
    pub(super) fn wake_one_idle(&self) {
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
    pub(super) fn steal(&mut self) -> Option<Task> {
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
}
