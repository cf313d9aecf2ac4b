//! Reserving jobs, and holders that wait for one.
//!
//! A reservation leases a job to a holder (a connection, a worker, a
//! shard) until its TTR passes; the lease's fencing token is the job's
//! reservation count, so a holder whose lease expired and was given to
//! someone else is told its token is stale.
//!
//! Waiting follows beanstalkd 1.12 exactly (the daemon's differential
//! tests hold it to that):
//!
//! 1. [`Table::reserve_wait`] adds the holder to every watched queue's
//!    waiting list (append), then serves waiters;
//! 2. serving ([`Table::serve_waiters`]) repeatedly takes the most urgent
//!    ready job among unpaused queues that have waiters, and gives it to
//!    the next waiter of *that* queue, picked by a rotating cursor;
//! 3. a served or timed-out holder leaves every list (swap-remove);
//! 4. jobs handed to waiters other than the caller come out as
//!    [`Grant`]s, for the front-end to deliver.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::limit::Shut;
use crate::queue::QueueId;
use crate::record::{kind, Records};
use crate::table::Table;
use crate::time::Time;

/// beanstalkd's `SAFETY_MARGIN`: a holder whose lease ends within this is
/// told `DEADLINE_SOON` instead of waiting.
pub const SAFETY_MARGIN: Duration = Duration::from_secs(1);

/// A reservation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The job.
    pub id: u64,
    /// Its fencing token (the job's reservation count).
    pub token: u32,
}

/// A holder's waiting reservation.
#[derive(Clone, Debug)]
pub(crate) struct Wait {
    seq: u64,
    wake: Option<Time>,
    batch: u32,
    queues: Vec<u32>,
}

/// The table's waiting reservations.
#[derive(Debug, Default)]
pub(crate) struct Waits {
    seq: u64,
    /// Queues with waiters.
    queues: BTreeSet<u32>,
    /// (wake-up, holder, seq).
    timers: BTreeSet<(Time, u32, u64)>,
    /// A job became ready where holders wait, or a pause ended.
    pub dirty: bool,
    grants: Vec<Grant>,
    ended: Vec<(u32, WaitEnd)>,
    /// `serve_waiters`' copy of `queues`, kept for its capacity.
    scratch: Vec<u32>,
}

/// Jobs handed to a waiting holder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// The holder.
    pub holder: u32,
    /// How many jobs its wait asked for (a front-end may answer a batch
    /// request differently even when one job was ready).
    pub batch: u32,
    /// Its new leases, most urgent first (one unless it asked for a batch).
    pub leases: Vec<Lease>,
}

/// How a wait ended without a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitEnd {
    /// Its timeout passed.
    TimedOut,
    /// One of its leases is within [`SAFETY_MARGIN`] of its end.
    DeadlineSoon,
}

/// What a reservation that may wait did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reserved {
    /// Jobs, at once.
    Now(Vec<Lease>),
    /// Nothing now: the holder waits (a [`Grant`] or a [`WaitEnd`] will
    /// come).
    Waiting,
    /// Ended at once.
    Ended(WaitEnd),
}

impl Table {
    /// Reserves the most urgent ready job of queue `q` for `holder`, if
    /// the queue is not paused. The hot path: no waiting list is touched.
    pub fn reserve(
        &mut self,
        now: Time,
        q: QueueId,
        holder: u32,
        out: &mut Records,
    ) -> Option<Lease> {
        // `reserve_from` for one queue, without the loop over queues.
        self.expire_due(now, out);
        let x = self.queues.get_mut(q.0 as usize)?.as_mut()?;
        if x.paused(now) {
            return None;
        }
        let (_, _, s) = x.ready.best(&self.slab)?;
        if x.gate.limited() {
            match x.gate.check(now, x.reserved) {
                Ok(()) => {}
                Err(Shut::Until(at)) => {
                    self.gate_shut_until(q.0, at);
                    return None;
                }
                Err(Shut::Busy) => return None,
            }
        }
        Some(self.take(s, holder, now, out))
    }

    /// Reserves job `id` (beanstalkd's `reserve-job`): from any state but
    /// reserved, limits or not; a job past its deadline is expired
    /// instead.
    pub fn reserve_id(
        &mut self,
        now: Time,
        id: u64,
        holder: u32,
        out: &mut Records,
    ) -> Option<Lease> {
        self.expire_due(now, out);
        let s = self.slot(id)?;
        let j = self.slab.get(s);
        if j.state == crate::State::Reserved {
            return None;
        }
        // A buried job (or one delayed again) past its deadline is not in
        // the checks above, but is never handed out either (`expiry.rs`).
        if j.deadline().is_some_and(|d| d <= now) {
            self.expire(s, out);
            return None;
        }
        Some(self.take(s, holder, now, out))
    }

    /// Reserves the most urgent ready job among the unpaused queues of
    /// `queues` for `holder`, without waiting (a runtime that pulls work).
    pub fn reserve_from(
        &mut self,
        now: Time,
        queues: &[QueueId],
        holder: u32,
        out: &mut Records,
    ) -> Option<Lease> {
        self.expire_due(now, out);
        let s = self.best_slot(now, queues)?;
        Some(self.take(s, holder, now, out))
    }

    /// The job [`Table::reserve_from`] would take now, without taking it.
    pub fn peek_from(&mut self, now: Time, queues: &[QueueId]) -> Option<crate::JobView<'_>> {
        let s = self.best_slot(now, queues)?;
        let id = self.slab.get(s).id;
        self.job(id)
    }

    #[inline]
    fn best_slot(&mut self, now: Time, queues: &[QueueId]) -> Option<u32> {
        self.best_in(now, queues.iter().map(|q| q.0))
    }

    /// The slot of the most urgent ready job among the unpaused `queues`.
    #[inline]
    fn best_in(&mut self, now: Time, queues: impl Iterator<Item = u32>) -> Option<u32> {
        let mut best: Option<(u32, u64, u32)> = None;
        let mut shut: Option<(u32, Time)> = None;
        for q in queues {
            let Some(x) = self.queues.get_mut(q as usize).and_then(|x| x.as_mut()) else {
                continue;
            };
            if x.paused(now) {
                continue;
            }
            if let Some(c) = x.ready.best(&self.slab) {
                if best.is_none_or(|b| (c.0, c.1) < (b.0, b.1)) {
                    if !x.gate.limited() {
                        best = Some(c);
                    } else {
                        match x.gate.check(now, x.reserved) {
                            Ok(()) => best = Some(c),
                            Err(Shut::Until(at)) => shut = Some((q, at)),
                            Err(Shut::Busy) => {}
                        }
                    }
                }
            }
        }
        if let Some((q, at)) = shut {
            self.gate_shut_until(q, at);
        }
        best.map(|b| b.2)
    }

    /// Undoes a reservation whose run never started (the job was handed
    /// back unrun): it is ready again and the reservation is not counted.
    pub fn unreserve(&mut self, now: Time, id: u64, holder: u32) -> Result<(), crate::JobError> {
        let s = self.slot(id).ok_or(crate::JobError::NotFound(id))?;
        {
            let j = self.slab.get(s);
            if j.state != crate::State::Reserved || j.holder != holder {
                return Err(crate::JobError::NotHolder(id));
            }
        }
        self.unplace(s);
        let j = self.slab.get_mut(s);
        j.counts.reserves = j.counts.reserves.saturating_sub(1);
        self.make_ready(s, now, false);
        Ok(())
    }

    /// The most urgent ready job among the unpaused queues of `queues`.
    fn best_of(&mut self, now: Time, queues: &[u32]) -> Option<u32> {
        self.best_in(now, queues.iter().copied())
    }

    /// Leases the job in slot `s` to `holder` and logs the reservation.
    #[inline]
    fn take(&mut self, s: u32, holder: u32, now: Time, out: &mut Records) -> Lease {
        self.unplace(s);
        let (id, token) = self.make_reserved(s, holder, now);
        out.id_only(kind::RESERVE, id);
        self.slab.get_mut(s).logged = out.enabled();
        Lease { id, token }
    }

    /// Logs the `Reserve` of job `id`'s current reservation, taken earlier
    /// without it (a runtime that logs a run when it starts: a job it only
    /// offered and handed back never counts as interrupted).
    pub fn log_start(&mut self, id: u64, out: &mut Records) {
        let Some(s) = self.slot(id) else { return };
        let j = self.slab.get_mut(s);
        if j.state == crate::State::Reserved && !j.logged {
            out.id_only(kind::RESERVE, id);
            j.logged = out.enabled();
        }
    }

    /// Reserves for `holder` from `queues`, waiting if nothing is ready:
    /// beanstalkd's `reserve` and `reserve-with-timeout` (`timeout_at`),
    /// with `batch` > 1 for up to that many jobs at once.
    pub fn reserve_wait(
        &mut self,
        now: Time,
        holder: u32,
        queues: &[QueueId],
        timeout_at: Option<Time>,
        batch: u32,
        out: &mut Records,
    ) -> Reserved {
        let qs: Vec<u32> = queues.iter().map(|q| q.0).collect();
        // `deadline_soon` walks the holder's leases: asked only when no
        // watched queue has a ready job.
        if !self.any_ready(&qs) && self.deadline_soon(holder, now) {
            return Reserved::Ended(WaitEnd::DeadlineSoon);
        }
        if let Some(leases) = self.reserve_alone(now, holder, &qs, batch, out) {
            return Reserved::Now(leases);
        }
        self.stop_waiting(holder);
        self.waits.seq += 1;
        let seq = self.waits.seq;
        for &q in &qs {
            if let Some(x) = self.q_mut(q) {
                x.waiting.push(holder);
                self.waits.queues.insert(q);
            }
        }
        // The wake-up timer is set below, once the holder is known to
        // wait: one served at once never needs it (nothing between here
        // and there reads the timers or changes this holder's leases).
        self.holder_mut(holder).wait =
            Some(Wait { seq, wake: None, batch: batch.max(1), queues: qs });
        self.waits.dirty = true;
        self.serve_waiters(now, out);
        let waits = self.holders.get(holder as usize).and_then(|h| h.wait.as_ref());
        if waits.is_some_and(|w| w.seq == seq) {
            let soon = self.soonest_deadline(holder).map(|d| Time(d.0.saturating_sub(margin_ns())));
            let wake = match (timeout_at, soon) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if let Some(w) = self.holders.get_mut(holder as usize).and_then(|h| h.wait.as_mut()) {
                w.wake = wake;
            }
            if let Some(at) = wake {
                self.waits.timers.insert((at, holder, seq));
            }
        }
        if let Some(i) = self.waits.grants.iter().position(|g| g.holder == holder) {
            let g = self.waits.grants.remove(i);
            return Reserved::Now(g.leases);
        }
        if timeout_at.is_some_and(|t| t <= now) {
            let soon = self.deadline_soon(holder, now);
            self.stop_waiting(holder);
            return Reserved::Ended(if soon { WaitEnd::DeadlineSoon } else { WaitEnd::TimedOut });
        }
        Reserved::Waiting
    }

    /// [`Table::reserve_wait`] for a holder that nobody else competes
    /// with: no holder waits anywhere and nothing is left to serve. Then
    /// the waiting path would make it the only waiter of its queues and
    /// [`Table::serve_waiters`] would serve it at once from the best ready
    /// job of those queues; this does the same without joining and leaving
    /// the waiting lists: the served queue's cursor moves past its only
    /// waiter, as it would, and a batch is filled the same way. `None`,
    /// with nothing changed, when no watched queue has a job it may hand
    /// out, or others wait, or it would expire jobs or touch a limited
    /// queue (below).
    ///
    /// It leaves to the waiting path a reserve that would expire jobs
    /// first (the waiting path expires them with the holder already a
    /// waiter, so an unheld queue is not dropped under it) and one over a
    /// limited queue (whose gate timers `serve_waiters` arms for every
    /// queue it finds shut, `best_of` for the last only).
    fn reserve_alone(
        &mut self,
        now: Time,
        holder: u32,
        qs: &[u32],
        batch: u32,
        out: &mut Records,
    ) -> Option<Vec<Lease>> {
        if self.waits.dirty
            || !self.waits.queues.is_empty()
            || self.is_waiting(holder)
            || self.expiry_pending(now)
            || qs.iter().any(|&q| self.q(q).is_some_and(|x| x.gate.limited()))
        {
            return None;
        }
        let s = self.best_of(now, qs)?;
        let q = self.slab.get(s).queue;
        if let Some(x) = self.q_mut(q) {
            x.waiting_last = 1;
        }
        self.waits.seq += 1;
        let leases = self.lease_batch(now, s, holder, qs, batch.max(1), out);
        for &q in qs {
            self.maybe_drop_queue(q);
        }
        Some(leases)
    }

    /// Leases the job in slot `s` to `holder`, then, for a batch of up to
    /// `batch` jobs, the best of `queues` in turn while the batch's
    /// payloads stay under the configured bytes.
    fn lease_batch(
        &mut self,
        now: Time,
        s: u32,
        holder: u32,
        queues: &[u32],
        batch: u32,
        out: &mut Records,
    ) -> Vec<Lease> {
        let first = self.take(s, holder, now, out);
        let mut bytes = self.slab.get(s).payload.bytes().len();
        let mut leases = vec![first];
        while leases.len() < batch as usize && bytes < self.cfg.batch_bytes {
            let Some(more) = self.best_of(now, queues) else { break };
            bytes += self.slab.get(more).payload.bytes().len();
            leases.push(self.take(more, holder, now, out));
        }
        leases
    }

    /// Whether `holder` waits.
    pub fn is_waiting(&self, holder: u32) -> bool {
        self.holders.get(holder as usize).is_some_and(|h| h.wait.is_some())
    }

    /// Ends `holder`'s wait (it hung up, say): `None` if it was not
    /// waiting, else how beanstalkd would answer it.
    pub fn cancel_wait(&mut self, now: Time, holder: u32) -> Option<WaitEnd> {
        if !self.is_waiting(holder) {
            return None;
        }
        let soon = self.deadline_soon(holder, now);
        self.stop_waiting(holder);
        Some(if soon { WaitEnd::DeadlineSoon } else { WaitEnd::TimedOut })
    }

    /// Ends `holder`'s wait without an answer: it was served elsewhere
    /// (spindled's distributed tubes hand out leases beside the table).
    pub fn end_wait(&mut self, holder: u32) {
        self.stop_waiting(holder);
    }

    pub(crate) fn stop_waiting(&mut self, holder: u32) {
        let Some(w) = self.holders.get_mut(holder as usize).and_then(|h| h.wait.take()) else {
            return;
        };
        for &q in &w.queues {
            if let Some(x) = self.queues.get_mut(q as usize).and_then(|x| x.as_mut()) {
                if let Some(i) = x.waiting.iter().position(|&h| h == holder) {
                    x.waiting.swap_remove(i);
                    if x.waiting.is_empty() {
                        self.waits.queues.remove(&q);
                    }
                }
            }
            self.maybe_drop_queue(q);
        }
        if let Some(at) = w.wake {
            self.waits.timers.remove(&(at, holder, w.seq));
        }
    }

    /// Serves waiting holders from ready jobs (step 2 above). Grants to
    /// holders are queued for [`Table::take_grants`].
    pub fn serve_waiters(&mut self, now: Time, out: &mut Records) {
        if !std::mem::take(&mut self.waits.dirty) {
            return;
        }
        self.expire_due(now, out);
        let mut shut: Vec<(u32, Time)> = Vec::new();
        // The queues with waiters, copied into a buffer kept between calls
        // (serving changes the set).
        let mut candidates = std::mem::take(&mut self.waits.scratch);
        loop {
            let mut best: Option<(u32, u64, u32, u32)> = None;
            candidates.clear();
            candidates.extend(self.waits.queues.iter().copied());
            for &q in &candidates {
                let Some(x) = self.queues.get_mut(q as usize).and_then(|x| x.as_mut()) else {
                    continue;
                };
                if x.waiting.is_empty() || x.paused(now) {
                    continue;
                }
                if let Some((pri, id, s)) = x.ready.best(&self.slab) {
                    if best.is_none_or(|(bp, bi, _, _)| (pri, id) < (bp, bi)) {
                        match x.gate.check(now, x.reserved) {
                            Ok(()) => best = Some((pri, id, s, q)),
                            Err(Shut::Until(at)) => shut.push((q, at)),
                            Err(Shut::Busy) => {}
                        }
                    }
                }
            }
            for (q, at) in shut.drain(..) {
                self.gate_shut_until(q, at);
            }
            let Some((_, _, s, q)) = best else { break };
            let Some(x) = self.q_mut(q) else { break };
            let n = x.waiting.len();
            let at = x.waiting_last % n;
            let holder = x.waiting[at];
            x.waiting_last = at + 1;
            // The watched queues are needed again only to fill a batch.
            let (batch, queues) =
                match self.holders.get(holder as usize).and_then(|h| h.wait.as_ref()) {
                    Some(w) if w.batch > 1 => (w.batch, w.queues.clone()),
                    Some(w) => (w.batch, Vec::new()),
                    None => (1, Vec::new()),
                };
            self.stop_waiting(holder);
            let leases = self.lease_batch(now, s, holder, &queues, batch, out);
            self.waits.grants.push(Grant { holder, batch, leases });
        }
        self.waits.scratch = candidates;
    }

    /// Jobs handed to waiting holders since the last call.
    pub fn take_grants(&mut self) -> Vec<Grant> {
        std::mem::take(&mut self.waits.grants)
    }

    /// Waits that ended (timed out, deadline soon) since the last call.
    pub fn take_wait_ends(&mut self) -> Vec<(u32, WaitEnd)> {
        std::mem::take(&mut self.waits.ended)
    }

    /// Ends the waits due at `now` (called by `tick`).
    pub(crate) fn expire_waits(&mut self, now: Time) {
        while let Some(&(at, holder, seq)) = self.waits.timers.first() {
            if at > now {
                break;
            }
            self.waits.timers.remove(&(at, holder, seq));
            let current = self
                .holders
                .get(holder as usize)
                .and_then(|h| h.wait.as_ref())
                .is_some_and(|w| w.seq == seq);
            if !current {
                continue;
            }
            let soon = self.deadline_soon(holder, now);
            self.stop_waiting(holder);
            let end = if soon { WaitEnd::DeadlineSoon } else { WaitEnd::TimedOut };
            self.waits.ended.push((holder, end));
        }
    }

    /// The next wait timer.
    pub(crate) fn next_wait_timer(&self) -> Option<Time> {
        self.waits.timers.first().map(|x| x.0)
    }

    /// The earliest lease deadline among `holder`'s jobs.
    pub fn soonest_deadline(&self, holder: u32) -> Option<Time> {
        let h = self.holders.get(holder as usize)?;
        let mut s = h.reserved.head;
        let mut best: Option<Time> = None;
        while s != crate::job::NIL {
            let j = self.slab.get(s);
            if j.at != 0 {
                best = Some(best.map_or(Time(j.at), |b| b.min(Time(j.at))));
            }
            s = j.next;
        }
        best
    }

    /// Whether one of `holder`'s leases ends within the safety margin.
    pub fn deadline_soon(&self, holder: u32, now: Time) -> bool {
        self.soonest_deadline(holder).is_some_and(|d| d.0 <= now.0.saturating_add(margin_ns()))
    }

    /// Any of `queues` has ready jobs (paused or not, as beanstalkd).
    fn any_ready(&self, queues: &[u32]) -> bool {
        queues.iter().any(|&q| self.q(q).is_some_and(|x| x.ready.n > 0))
    }

    /// The jobs `holder` has reserved, in reservation order.
    pub fn held(&self, holder: u32) -> Vec<u64> {
        let mut v = Vec::new();
        if let Some(h) = self.holders.get(holder as usize) {
            let mut s = h.reserved.head;
            while s != crate::job::NIL {
                let j = self.slab.get(s);
                v.push(j.id);
                s = j.next;
            }
        }
        v
    }

    /// `holder` is gone (its connection closed): its wait ends and its
    /// jobs go back to ready (an interrupted run: a poison pill may be
    /// buried).
    pub fn drop_holder(&mut self, now: Time, holder: u32, out: &mut Records) {
        self.stop_waiting(holder);
        for id in self.held(holder) {
            if let Some(s) = self.slot(id) {
                self.interrupt(s, now, false, out);
            }
        }
    }
}

fn margin_ns() -> u64 {
    SAFETY_MARGIN.as_nanos() as u64
}
