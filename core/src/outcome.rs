//! What ends or changes a reservation (a holder's complete, release, fail,
//! bury, touch; a lease that ends without an outcome), and the commands
//! that move jobs regardless of holders (delete, kick, clear).

use std::time::Duration;

use crate::error::JobError;
use crate::job::{Bump, State};
use crate::queue::QueueId;
use crate::record::{kind, Records};
use crate::table::Table;
use crate::time::Time;

/// The longest error text a job keeps (its end, where the cause usually
/// is): a job and its error always fit one record.
pub const MAX_ERROR_TEXT: usize = 4096;

/// Who acts on a reserved job: its holder, with the lease's token when the
/// front-end has one (fencing).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct By {
    /// The holder.
    pub holder: u32,
    /// The lease's token, if given: it must be the current one.
    pub token: Option<u32>,
}

impl By {
    /// `holder`, without a token.
    pub fn holder(holder: u32) -> By {
        By { holder, token: None }
    }
}

/// What a failure did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failed {
    /// It runs again after `delay`.
    Retry {
        /// Attempts so far.
        attempts: u32,
        /// The backoff.
        delay: Duration,
    },
    /// Attempts are used up: buried with its error.
    Buried {
        /// Attempts so far.
        attempts: u32,
    },
}

impl Table {
    /// Checks that `by` holds job `id`'s current lease.
    #[inline]
    pub(crate) fn held_by(&self, id: u64, by: By) -> Result<u32, JobError> {
        let s = self.slot(id).ok_or(JobError::NotFound(id))?;
        let j = self.slab.get(s);
        if j.state != State::Reserved || j.holder != by.holder {
            return Err(JobError::NotHolder(id));
        }
        if let Some(t) = by.token {
            if t != j.counts.reserves {
                return Err(JobError::StaleLease { id, token: t, current: j.counts.reserves });
            }
        }
        Ok(s)
    }

    /// The holder finished job `id`: it is gone.
    pub fn complete(&mut self, id: u64, by: By, out: &mut Records) -> Result<(), JobError> {
        let s = self.hold(id, by, out)?;
        self.destroy(s);
        out.id_only(kind::DELETE, id);
        Ok(())
    }

    /// The holder finished several jobs; logged as one record. Returns how
    /// many were held and are gone (the others are left as they are).
    pub fn complete_many(&mut self, ids: &[u64], holder: u32, out: &mut Records) -> usize {
        let mut gone = 0;
        for &id in ids {
            if let Ok(s) = self.hold(id, By::holder(holder), out) {
                self.destroy(s);
                gone += 1;
            }
        }
        if gone == ids.len() {
            out.deletes(ids);
        } else {
            for &id in ids {
                if self.slot(id).is_none() {
                    out.id_only(kind::DELETE, id);
                }
            }
        }
        gone
    }

    /// Deletes job `id`: a reserved job only by its holder (`by`), any
    /// other by anyone.
    pub fn delete(&mut self, id: u64, by: Option<By>, out: &mut Records) -> Result<(), JobError> {
        let s = self.slot(id).ok_or(JobError::NotFound(id))?;
        if self.slab.get(s).state == State::Reserved {
            let by = by.ok_or(JobError::NotHolder(id))?;
            self.hold(id, by, out)?;
        }
        self.destroy(s);
        out.id_only(kind::DELETE, id);
        Ok(())
    }

    /// The holder gives job `id` back with priority `pri`, ready again
    /// after `delay`.
    pub fn release(
        &mut self,
        now: Time,
        id: u64,
        by: By,
        pri: u32,
        delay: Duration,
        out: &mut Records,
    ) -> Result<(), JobError> {
        let s = self.hold(id, by, out)?;
        self.unplace(s);
        {
            let j = self.slab.get_mut(s);
            j.pri = pri;
            j.bump(Bump::Release);
            j.counts.interrupted = 0;
            j.delay_s = u32::try_from(delay.as_secs()).unwrap_or(u32::MAX);
        }
        if delay.is_zero() {
            self.make_ready(s, now, false);
        } else {
            self.make_delayed(s, now.plus(delay));
            self.check_deadline(s, now);
        }
        self.log_move(s, out);
        Ok(())
    }

    /// The holder's run of job `id` failed with `error`: retried after a
    /// backoff, or buried once its attempts are used up.
    pub fn fail(
        &mut self,
        now: Time,
        id: u64,
        by: By,
        error: &[u8],
        out: &mut Records,
    ) -> Result<Failed, JobError> {
        let s = self.hold(id, by, out)?;
        let policy = self.policy_of(s);
        self.unplace(s);
        let tail = &error[error.len().saturating_sub(MAX_ERROR_TEXT)..];
        let text: Box<str> = String::from_utf8_lossy(tail).into();
        let attempts = {
            let j = self.slab.get_mut(s);
            j.set_error(Some(text));
            j.counts.interrupted = 0;
            j.counts.reserves
        };
        let q = self.slab.get(s).queue;
        if !policy.may_retry(attempts) {
            self.slab.get_mut(s).bump(Bump::Bury);
            if let Some(x) = self.q_mut(q) {
                x.counters.buries += 1;
            }
            self.make_buried(s, None);
            self.log_move(s, out);
            return Ok(Failed::Buried { attempts });
        }
        let delay = policy.delay(attempts, self.rng.next_u64());
        {
            let j = self.slab.get_mut(s);
            j.bump(Bump::Release);
            j.delay_s = u32::try_from(delay.as_millis().div_ceil(1000)).unwrap_or(u32::MAX);
        }
        if let Some(x) = self.q_mut(q) {
            x.counters.retries += 1;
        }
        if delay.is_zero() {
            self.make_ready(s, now, false);
        } else {
            self.make_delayed(s, now.plus(delay));
            self.check_deadline(s, now);
        }
        self.log_move(s, out);
        Ok(Failed::Retry { attempts, delay })
    }

    /// The holder buries job `id` with priority `pri` (and a reason, kept
    /// as its last error).
    pub fn bury(
        &mut self,
        id: u64,
        by: By,
        pri: u32,
        reason: Option<&str>,
        out: &mut Records,
    ) -> Result<(), JobError> {
        let s = self.hold(id, by, out)?;
        self.unplace(s);
        {
            let j = self.slab.get_mut(s);
            j.pri = pri;
            j.bump(Bump::Bury);
            j.counts.interrupted = 0;
            if let Some(r) = reason {
                // The end that fits, cut at a character (slicing a str
                // inside one panics).
                let mut at = r.len().saturating_sub(MAX_ERROR_TEXT);
                while !r.is_char_boundary(at) {
                    at += 1;
                }
                j.set_error(Some(r[at..].into()));
            }
        }
        let q = self.slab.get(s).queue;
        if let Some(x) = self.q_mut(q) {
            x.counters.buries += 1;
        }
        self.make_buried(s, None);
        self.log_move(s, out);
        Ok(())
    }

    /// The holder is still working on job `id`: its lease restarts.
    pub fn touch(&mut self, now: Time, id: u64, by: By) -> Result<(), JobError> {
        let s = self.held_by(id, by)?;
        if self.slab.get(s).cancelled() {
            return Err(JobError::Cancelled(id));
        }
        let j = self.slab.get_mut(s);
        if j.ttr_s != 0 {
            j.at = now.plus_secs(u64::from(j.ttr_s)).0;
            let entry = (Time(j.at), j.id, j.counts.reserves);
            self.leases.push(entry);
        }
        Ok(())
    }

    /// A run of the job in slot `s` ended without an outcome: its lease
    /// expired (`timed_out`) or its holder is gone. It is ready again, or
    /// buried as a poison pill when its policy says so.
    pub(crate) fn interrupt(&mut self, s: u32, now: Time, timed_out: bool, out: &mut Records) {
        if self.slab.get(s).cancelled() {
            self.drop_cancelled(s, out);
            return;
        }
        let policy = self.policy_of(s);
        self.unplace(s);
        let (interrupted, attempts, q) = {
            let j = self.slab.get_mut(s);
            j.counts.interrupted = j.counts.interrupted.saturating_add(1);
            if timed_out {
                j.bump(Bump::Timeout);
            }
            (j.counts.interrupted, j.counts.reserves, j.queue)
        };
        if timed_out {
            self.timeouts += 1;
            if let Some(x) = self.q_mut(q) {
                x.counters.timeouts += 1;
            }
        }
        if policy.buries_interrupted(interrupted, attempts) {
            let j = self.slab.get_mut(s);
            j.set_error(Some(crate::replay::poison_text(attempts, interrupted).into()));
            j.bump(Bump::Bury);
            if let Some(x) = self.q_mut(q) {
                x.counters.buries += 1;
            }
            self.make_buried(s, None);
        } else {
            self.make_ready(s, now, false);
        }
        self.log_move(s, out);
    }

    /// Kicks up to `bound` jobs of queue `q` to ready: its buried jobs if
    /// it has any (oldest burial first), else its delayed ones (soonest
    /// first). Returns how many.
    pub fn kick(&mut self, now: Time, q: QueueId, bound: u64, out: &mut Records) -> u64 {
        let Some(x) = self.q(q.0) else { return 0 };
        let mut slots = Vec::new();
        let limit = usize::try_from(bound).unwrap_or(usize::MAX);
        if x.buried.len > 0 {
            let mut s = x.buried.head;
            while s != crate::job::NIL && slots.len() < limit {
                slots.push(s);
                s = self.slab.get(s).next;
            }
        } else {
            for &(_, id) in x.delayed.iter().take(limit) {
                if let Some(s) = self.slot(id) {
                    slots.push(s);
                }
            }
        }
        for &s in &slots {
            self.kick_slot(s, now, out);
        }
        slots.len() as u64
    }

    /// Kicks job `id` (buried or delayed) to ready.
    pub fn kick_job(&mut self, now: Time, id: u64, out: &mut Records) -> Result<(), JobError> {
        let s = self.slot(id).ok_or(JobError::NotFound(id))?;
        let state = self.slab.get(s).state;
        if !matches!(state, State::Buried | State::Delayed) {
            return Err(JobError::WrongState { id, state, wanted: "buried or delayed" });
        }
        self.kick_slot(s, now, out);
        Ok(())
    }

    fn kick_slot(&mut self, s: u32, now: Time, out: &mut Records) {
        self.unplace(s);
        let j = self.slab.get_mut(s);
        j.bump(Bump::Kick);
        self.make_ready(s, now, false);
        self.log_move(s, out);
    }

    /// Deletes every job of queue `q` in one of `states` (reserved jobs
    /// too, if asked: their holders' next command on them is refused).
    /// Returns how many.
    pub fn clear(&mut self, q: QueueId, states: &[State], out: &mut Records) -> u64 {
        let ids: Vec<u64> = self
            .ids
            .iter()
            .filter(|&(_, s)| {
                let j = self.slab.get(s);
                j.queue == q.0 && states.contains(&j.state)
            })
            .map(|(id, _)| id)
            .collect();
        for &id in &ids {
            if let Some(s) = self.slot(id) {
                self.destroy(s);
            }
        }
        out.deletes(&ids);
        ids.len() as u64
    }
}
