//! Expiry: a job put with a deadline ([`crate::PutSpec::deadline`]) is
//! never handed out after it.
//!
//! 1. A put with a deadline that is not after `now` is refused
//!    ([`crate::PutError::DeadlinePassed`]); any other deadline goes into a
//!    set ordered by time.
//! 2. Every way of handing a job out, and [`Table::tick`], first expires
//!    the jobs whose deadline is due: a ready or delayed one is deleted, or
//!    buried with the error "expired" if its queue's
//!    [`crate::Limits::on_expiry`] says so, and counted in the queue's
//!    `expired` counter. A job that is reserved or buried then is left as
//!    it is.
//! 3. Such a job (or any job past its deadline) that becomes ready again
//!    later (released, kicked, its lease expired), or is delayed again
//!    (released with a delay, retried after a backoff), is expired at the
//!    next check: the deadline holds for every attempt, not only the
//!    first. `reserve_id` also expires a buried job past its deadline
//!    rather than hand it out.
//!    A job buried by expiry loses its deadline, so an operator can still
//!    kick it and run it.
//!
//! The deadline is in the job's `Put` record (a job buried by expiry is
//! logged with a new `Put` without it); the set is rebuilt on replay,
//! so a deadline that passes while the process is down expires the job at
//! the first hand-out after recovery. The check on the hot path is one
//! comparison with the set's first entry.

use std::collections::BTreeSet;

use crate::job::{Bump, State};
use crate::record::{kind, Records};
use crate::table::Table;
use crate::time::Time;

/// The error an expired job is buried with.
pub const EXPIRED_TEXT: &str = "expired: not handed out before its deadline";

/// Deadlines of live jobs, and jobs found past theirs.
#[derive(Debug)]
pub(crate) struct Expiry {
    /// (deadline, id); entries of jobs gone are removed with the job.
    by_time: BTreeSet<(Time, u64)>,
    /// The earliest deadline (`u64::MAX`: none), kept beside the set so the
    /// hot path's check is one comparison, not a walk down the tree.
    first: u64,
    /// Jobs that became ready after their deadline.
    pub found: Vec<u64>,
}

impl Default for Expiry {
    fn default() -> Self {
        Expiry { by_time: BTreeSet::new(), first: u64::MAX, found: Vec::new() }
    }
}

impl Expiry {
    pub(crate) fn insert(&mut self, at: Time, id: u64) {
        self.by_time.insert((at, id));
        self.first = self.first.min(at.0);
    }

    pub(crate) fn remove(&mut self, at: Time, id: u64) {
        if self.by_time.remove(&(at, id)) && at.0 == self.first {
            self.first = self.by_time.first().map_or(u64::MAX, |x| x.0 .0);
        }
    }

    /// The earliest deadline.
    pub(crate) fn next(&self) -> Option<Time> {
        (self.first != u64::MAX).then_some(Time(self.first))
    }
}

impl Table {
    /// Expires the jobs due at `now` (step 2 and 3). Cheap when none is.
    #[inline]
    pub(crate) fn expire_due(&mut self, now: Time, out: &mut Records) {
        if self.expiry_pending(now) {
            self.expire_slow(now, out);
        }
    }

    /// Whether [`Table::expire_due`] has anything to do at `now`.
    #[inline]
    pub(crate) fn expiry_pending(&self, now: Time) -> bool {
        !self.expiry.found.is_empty() || self.expiry.first <= now.0
    }

    fn expire_slow(&mut self, now: Time, out: &mut Records) {
        while let Some(&(at, id)) = self.expiry.by_time.first() {
            if at > now {
                break;
            }
            self.expiry.remove(at, id);
            if let Some(s) = self.slot(id) {
                if matches!(self.slab.get(s).state, State::Ready | State::Delayed) {
                    self.expire(s, out);
                }
            }
        }
        for id in std::mem::take(&mut self.expiry.found) {
            if let Some(s) = self.slot(id) {
                let j = self.slab.get(s);
                if matches!(j.state, State::Ready | State::Delayed)
                    && j.deadline().is_some_and(|d| d <= now)
                {
                    self.expire(s, out);
                }
            }
        }
    }

    /// Expires the job in slot `s`: deleted or buried, as its queue says.
    pub(crate) fn expire(&mut self, s: u32, out: &mut Records) {
        let (id, q) = {
            let j = self.slab.get(s);
            (j.id, j.queue)
        };
        let bury = self.q(q).is_some_and(|x| x.gate.limits.on_expiry == crate::OnExpiry::Bury);
        if bury {
            self.unplace(s);
            if let Some(d) = self.slab.get(s).deadline() {
                self.expiry.remove(d, id);
            }
            let j = self.slab.get_mut(s);
            j.set_deadline(None);
            j.set_error(Some(EXPIRED_TEXT.into()));
            j.bump(Bump::Bury);
            self.make_buried(s, None);
            if let Some(x) = self.q_mut(q) {
                x.counters.expired += 1;
                x.counters.buries += 1;
            }
            // Its complete state, not a move: the deadline it lost is in
            // its `Put`, and a move would leave it there for replay.
            self.log_full(s, out);
        } else {
            self.destroy(s);
            if let Some(x) = self.q_mut(q) {
                x.counters.expired += 1;
                x.counters.deletes -= 1;
            }
            out.id_only(kind::DELETE, id);
        }
    }

    /// Whether jobs are due to expire at `now` ([`Table::tick`] expires
    /// them; a runtime that reserves with its log switched off ticks first).
    #[inline]
    pub fn expiry_due(&self, now: Time) -> bool {
        !self.expiry.found.is_empty() || self.expiry.first <= now.0
    }

    /// A job in slot `s` became ready (or was delayed again) at `now`: if
    /// it is past its deadline, it is expired at the next check (step 3).
    #[inline]
    pub(crate) fn check_deadline(&mut self, s: u32, now: Time) {
        let j = self.slab.get(s);
        if j.extra.is_some() && j.deadline().is_some_and(|d| d <= now) {
            self.expiry.found.push(j.id);
        }
    }
}
