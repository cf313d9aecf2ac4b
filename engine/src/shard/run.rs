//! Running jobs on the shard's thread (step 4 of the loop, `mod.rs`): a
//! task from the table or the steal deque, a job from the lane, the
//! handler call with its gauges and latencies, and applying the outcome.

use super::{
    call_handler, Msg, NewJob, Records, Shard, FLUSH_BYTES, HOLDER, LANE_BURST, LANE_TAKE,
    RELEASE_BATCH, SHORT_RUN_NS,
};
use crate::job::{JobId, JobRef, Outcome};
use crate::steal::{Task, TaskOutcome};
use spindle_core::{By, Failed, JobError, QueueId};
use std::sync::atomic::Ordering;
use std::sync::Arc;

impl Shard {
    /// Runs a task; `start`: the engine-clock nanoseconds now, if known.
    pub(super) fn run_task(&mut self, t: Task, start: Option<u64>) {
        let own = t.owner == self.sh.idx;
        // The queue in this shard's table: the task's id if we own it,
        // else by name (only a stolen task looks its queue up by name).
        let mut q = if own { Some(t.qid) } else { self.qids.get(&*t.queue).copied() };
        let has_handler = |s: &Self, q: Option<QueueId>| {
            q.and_then(|q| s.qs.get(q.0 as usize)).is_some_and(|x| x.handler.is_some())
        };
        if !has_handler(self, q) {
            // Only a stolen task can lack a handler: the registration was
            // sent to every shard before the job existed, so it is in our
            // inbox. Take the inbox in and look again.
            while let Some(m) = self.sh.inbox.pop() {
                self.handle(m);
            }
            q = if own { Some(t.qid) } else { self.qids.get(&*t.queue).copied() };
        }
        let Some(q) = q.filter(|&q| has_handler(self, Some(q))) else {
            if own {
                self.untake(&t);
            } else {
                self.all[t.owner].send(Msg::Return(t));
            }
            return;
        };
        let qi = q.0 as usize;
        // Re-registered as blocking after the job was queued: to the pool.
        if self.qs[qi].blocking && own && self.blocking.is_some() {
            self.table.log_start(t.id, &mut self.recs);
            self.flush();
            self.blocking_out += 1;
            if let (Some(pool), Some(h)) = (&self.blocking, self.qs[qi].handler.clone()) {
                pool.submit(&self.sh, t, h);
            }
            return;
        }
        // Log the start in the owner's log (a thief appends there too), so a
        // crash during the run counts as an interruption on recovery.
        if own {
            self.table.log_start(t.id, &mut self.recs);
            self.flush();
        } else {
            self.all[t.owner].log_start(t.id);
        }
        let start = match start {
            Some(ns) => ns,
            None => self.now_ns(),
        };
        let job = JobRef {
            id: JobId(t.id),
            queue: &t.queue,
            payload: t.payload.bytes(),
            attempt: t.attempt,
            priority: t.priority,
            cancels: None,
        };
        let outcome = self.call(qi, &job, t.ready_ns, t.submitted_ns, start);
        if own {
            self.finish(t.id, q, outcome);
        } else {
            self.jobs_stolen += 1;
            self.all[t.owner].send(Msg::Outcome(TaskOutcome { id: t.id, outcome }));
        }
    }

    /// After a lane job, runs more lane jobs straight away, up to
    /// [`LANE_BURST`], while nothing else asks for the loop: no message in
    /// the inbox, no stats request, no timer due, no offered task as urgent,
    /// still active. Each is still chosen against the table's best (step 4
    /// of the loop); only the loop's bookkeeping is skipped between them.
    /// Returns how many ran.
    ///
    /// 1. The table's next due time and best ready job are read once, and
    ///    again only after a job went into the table (a lane job that
    ///    succeeds does not touch it).
    /// 2. While runs are short ([`SHORT_RUN_NS`]), up to [`LANE_TAKE`] jobs
    ///    that all come before the table's best are taken at once (one
    ///    lock) into the shard's hand; otherwise one.
    /// 3. Jobs in hand that do not run (the burst ends, or a failed job
    ///    entered the table ahead of them) go back to the lane's front.
    pub(super) fn lane_burst(&mut self) -> u32 {
        let mut ran = 0;
        let mut due = self.table.next_due();
        let mut best: Option<Option<(u32, u64)>> = None;
        let mut hand = std::mem::take(&mut self.hand);
        let mut hand_q = None;
        // Each run's end from the counter, anchored at the real reading
        // that ended the run before the burst (taken a moment ago: the
        // first lane job runs from the loop, on the real clock).
        self.anchor = match (&self.cfg.tsc, self.clock_hint) {
            (Some(tsc), Some(now)) => tsc.anchor(now),
            _ => None,
        };
        while ran < LANE_BURST {
            let Some(now) = self.clock_hint else { break };
            if !self.sh.inbox.is_empty()
                || self.shutting_down
                || self.sh.snapshot_req.load(Ordering::Relaxed) > self.served
                || !self.sh.active.load(Ordering::Relaxed)
                || due.is_some_and(|d| d <= now)
                || (!self.worker.is_empty() && self.offered_best <= self.sh.lane.pri())
            {
                break;
            }
            if hand.is_empty() {
                let before = match best {
                    Some(b) => b,
                    None => {
                        let b = self.table.peek_from(now, &self.core_qs).map(|j| (j.pri, j.id));
                        best = Some(b);
                        b
                    }
                };
                let take = if self.last_run_ns <= SHORT_RUN_NS {
                    LANE_TAKE.min((LANE_BURST - ran) as usize)
                } else {
                    1
                };
                hand_q = self.sh.lane.pop_many_before(before, take, &mut hand);
                if hand_q.is_none() {
                    break;
                }
            }
            let (Some(q), Some(j)) = (hand_q, hand.pop_front()) else { break };
            let start = self.ns_of(now);
            if self.run_lane(j, q, start) {
                due = self.table.next_due();
                best = None;
                self.unpop(q, &mut hand);
            }
            ran += 1;
        }
        if let Some(q) = hand_q {
            self.unpop(q, &mut hand);
        }
        self.hand = hand;
        self.anchor = None;
        ran
    }

    /// Step 3 of [`Shard::lane_burst`]: the jobs still in `hand` go back
    /// to the lane's front; the hand is emptied.
    fn unpop(&mut self, q: QueueId, hand: &mut std::collections::VecDeque<NewJob>) {
        if !hand.is_empty() {
            let name = self.q(q).name.clone();
            self.sh.lane.unpop(q, &name, hand);
        }
    }

    /// Runs a job from the lane (`lane.rs` step 3). Returns whether the job
    /// went into the table (any outcome but success).
    pub(super) fn run_lane(&mut self, j: NewJob, q: QueueId, start: u64) -> bool {
        let qi = q.0 as usize;
        if self.qs.get(qi).is_none_or(|x| x.handler.is_none() || x.blocking) {
            // No longer runnable here: through the table, with the rest.
            self.insert_in(j, q, true, start, false);
            self.spill_lane();
            return true;
        }
        // Mark the start, so a crash during the run counts as an
        // interruption on recovery (as a logged `Reserve` does for a run
        // from the table), without a log append per job.
        if let Some(m) = &self.sh.marker {
            m.set(j.id);
        }
        let ready_ns = self.ns_of(j.created);
        let job = j.job_ref(None);
        let outcome = self.call(qi, &job, ready_ns, ready_ns, start);
        if let Some(m) = &self.sh.marker {
            m.set(0);
        }
        let outcome = if self.sh.cancels.contains(j.id) {
            // Cancelled while it ran: it goes, whatever it said.
            self.sh.cancels.remove(j.id);
            Outcome::Done
        } else {
            outcome
        };
        match outcome {
            Outcome::Done => {
                // Logged with the next frame (a crash before it reruns the
                // job, as at-least-once allows).
                self.recs.push_delete(j.id);
                self.done_counts(q, j.payload.len() as u64);
                if self.recs.len() >= FLUSH_BYTES {
                    self.flush();
                }
                false
            }
            outcome => {
                // Into the table, reserved by this shard (its `Reserve`
                // logged now, for the attempt count); the table applies the
                // outcome.
                let id = j.id;
                self.recs.push_reserve(id);
                let now = self.now_t();
                let ns = self.ns_of(now);
                self.insert_in(j, q, true, ns, false);
                if self.table.reserve_id(now, id, HOLDER, &mut Records::disabled()).is_some() {
                    // Marks the reservation as logged (the record went out
                    // above; this copy is dropped).
                    let mut logged = Records::new();
                    self.table.log_start(id, &mut logged);
                    self.finish(id, q, outcome);
                }
                true
            }
        }
    }

    /// Runs `job`'s handler (of queue index `qi`, which has one) on this
    /// thread: the controller's gauges around it, then the run's counts and
    /// latencies. `ready_ns`, `submitted_ns`, `start`: engine-clock
    /// nanoseconds.
    pub(super) fn call(
        &mut self,
        qi: usize,
        job: &JobRef<'_>,
        ready_ns: u64,
        submitted_ns: u64,
        start: u64,
    ) -> Outcome {
        // No longer idle: producers must not read this shard as spinning
        // while its handler runs (it may block).
        self.drop_spin_slot();
        // Stall deadline (`control.rs` step 2) and what the controller
        // reports; the queue's name is stored only when it changes.
        let limit = {
            let c = &self.qs[qi].counts;
            let mean = c.run_ns.checked_div(c.runs).unwrap_or(0);
            (mean.saturating_mul(u64::from(self.cfg.stall_factor)))
                .max(self.cfg.stall_min.as_nanos() as u64)
        };
        self.ctl.check_lag(ready_ns, start);
        let g = &self.sh.gauges;
        g.head_ready_ns.store(ready_ns.max(1), Ordering::Relaxed);
        g.job.store(job.id.0, Ordering::Relaxed);
        g.stall_at.store(start.saturating_add(limit).max(1), Ordering::Relaxed);
        if !Arc::ptr_eq(&self.running_queue, &self.qs[qi].name) {
            self.running_queue = self.qs[qi].name.clone();
            if let Some(m) = self.ctl.running_queue.get(self.sh.idx) {
                *m.lock().unwrap_or_else(|p| p.into_inner()) = self.running_queue.clone();
            }
        }
        self.sh.handler_since.store(start.max(1), Ordering::Relaxed);
        // The handler sees cancellation through the engine's set.
        let job = &JobRef { cancels: Some(&self.sh.cancels), ..*job };
        let outcome = match self.qs[qi].handler.as_deref() {
            Some(h) => call_handler(h, job),
            None => Outcome::Retry("no handler".into()),
        };
        let end_t = match (&self.cfg.tsc, &mut self.anchor) {
            (Some(tsc), Some(a)) => tsc.now(a).unwrap_or_else(|| self.cfg.clock.now()),
            _ => self.now_t(),
        };
        let end = self.ns_of(end_t);
        // The next iteration starts now, unless it has messages to take in
        // first (one clock reading per job on a busy shard).
        self.clock_hint = Some(end_t);
        self.sh.handler_since.store(0, Ordering::Relaxed);
        self.sh.gauges.stall_at.store(0, Ordering::Relaxed);
        let run = end.saturating_sub(start);
        self.last_run_ns = run;
        self.g_completions += 1;
        self.g_busy_ns += run;
        self.sh.gauges.completions.store(self.g_completions, Ordering::Relaxed);
        self.sh.gauges.busy_ns.store(self.g_busy_ns, Ordering::Relaxed);
        let c = &mut self.qs[qi].counts;
        c.runs += 1;
        c.run_ns += run;
        self.dispatch.record(start.saturating_sub(ready_ns).max(1));
        self.run_time.record(run.max(1));
        self.jobs_run += 1;
        if outcome == Outcome::Done {
            self.end_to_end.record(end.saturating_sub(submitted_ns).max(1));
        }
        outcome
    }

    /// Applies a handler's outcome to a job this shard owns (of queue `q`).
    pub(super) fn finish(&mut self, id: u64, q: QueueId, outcome: Outcome) {
        let by = By::holder(HOLDER);
        let len = self.table.job(id).map_or(0, |j| j.payload.len() as u64);
        if self.sh.cancels.contains(id) {
            // Cancelled while it ran (`cancel.rs`): whatever the handler
            // said, the job goes; the table logs its deletion.
            let _ = self.table.cancel(id, &mut self.recs);
            if self.table.complete(id, by, &mut self.recs) == Err(JobError::Cancelled(id))
                || self.table.job(id).is_none()
            {
                self.gone(id, len);
            }
            return;
        }
        match outcome {
            Outcome::Done => {
                if self.table.complete(id, by, &mut self.recs).is_ok() {
                    self.done_counts(q, len);
                }
            }
            Outcome::Retry(reason) => {
                self.q(q).failed += 1;
                let now = self.now_t();
                match self.table.fail(now, id, by, reason.as_bytes(), &mut self.recs) {
                    Ok(Failed::Retry { attempts, delay }) => {
                        tracing::debug!(job = id, attempt = attempts, ?delay, %reason, "job failed; retrying");
                        if delay.is_zero() {
                            let ns = self.ns_of(now);
                            self.arrived(q, ns);
                        }
                    }
                    Ok(Failed::Buried { attempts }) => {
                        tracing::info!(job = id, attempt = attempts, %reason, "job buried");
                    }
                    Err(_) => {}
                }
            }
            Outcome::Bury(reason) => {
                self.q(q).failed += 1;
                let pri = self.table.job(id).map_or(0, |j| j.pri);
                if self.table.bury(id, by, pri, Some(&reason), &mut self.recs).is_ok() {
                    tracing::info!(job = id, %reason, "job buried");
                }
            }
        }
    }

    /// Counts a completed job of queue `q` holding `len` payload bytes.
    pub(super) fn done_counts(&mut self, q: QueueId, len: u64) {
        self.released.0 += 1;
        self.released.1 += len;
        if self.released.0 >= RELEASE_BATCH {
            self.release_counts();
        }
        self.q(q).completed += 1;
    }

    /// Gives the engine-wide job and byte counts of completed jobs back
    /// (batched: two shared atomics per [`RELEASE_BATCH`] jobs, not per job).
    pub(super) fn release_counts(&mut self) {
        let (jobs, bytes) = std::mem::take(&mut self.released);
        if jobs > 0 {
            self.counters.release(jobs, bytes);
        }
    }
}
