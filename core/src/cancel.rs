//! Cancelling a job by id, in any state.
//!
//! 1. A ready, delayed or buried job is deleted at once (a `Delete`
//!    record) and counted in its queue's `cancelled` counter.
//! 2. A reserved job is marked cancelled (a `Cancel` record): it keeps its
//!    lease, but its holder's next touch, complete, release, fail or bury
//!    is refused with [`crate::JobError::Cancelled`], and every one of
//!    them but touch deletes the job. A lease that ends without an outcome
//!    (time-out, holder gone) deletes it too, rather than retrying it.
//! 3. A front-end tells a running handler through its own channel (the
//!    engine's job handle, the daemon's reply to the holder's next
//!    command); the table only holds the mark. A cancelled job that was
//!    running at a crash is deleted on recovery.

use crate::error::JobError;
use crate::job::State;
use crate::outcome::By;
use crate::record::{kind, Records};
use crate::table::Table;

/// What a cancel did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cancelled {
    /// The job was not running: it is gone.
    Removed,
    /// The job is reserved: its holder is told at its next command, and
    /// the job goes then (step 2).
    Running {
        /// The holder.
        holder: u32,
    },
}

impl Table {
    /// Cancels job `id` (step 1 and 2).
    pub fn cancel(&mut self, id: u64, out: &mut Records) -> Result<Cancelled, JobError> {
        let s = self.slot(id).ok_or(JobError::NotFound(id))?;
        let (state, q, holder) = {
            let j = self.slab.get(s);
            (j.state, j.queue, j.holder)
        };
        if state == State::Reserved {
            let j = self.slab.get_mut(s);
            // A job counts as cancelled once, however often it is asked.
            if !j.cancelled() {
                j.set_cancelled();
                out.cancel(id);
                if let Some(x) = self.q_mut(q) {
                    x.counters.cancelled += 1;
                }
            }
            return Ok(Cancelled::Running { holder });
        }
        if let Some(x) = self.q_mut(q) {
            x.counters.cancelled += 1;
        }
        self.destroy(s);
        if let Some(x) = self.q_mut(q) {
            x.counters.deletes -= 1;
        }
        out.id_only(kind::DELETE, id);
        Ok(Cancelled::Removed)
    }

    /// Whether job `id` is reserved and cancelled.
    pub fn is_cancelled(&self, id: u64) -> bool {
        self.slot(id).is_some_and(|s| self.slab.get(s).cancelled())
    }

    /// As `held_by`, and a cancelled job's holder gets
    /// [`JobError::Cancelled`] and the job is deleted (step 2).
    #[inline]
    pub(crate) fn hold(&mut self, id: u64, by: By, out: &mut Records) -> Result<u32, JobError> {
        let s = self.held_by(id, by)?;
        if self.slab.get(s).cancelled() {
            self.drop_cancelled(s, out);
            return Err(JobError::Cancelled(id));
        }
        Ok(s)
    }

    /// Deletes a cancelled job whose run ended.
    #[cold]
    pub(crate) fn drop_cancelled(&mut self, s: u32, out: &mut Records) {
        let (id, q) = {
            let j = self.slab.get(s);
            (j.id, j.queue)
        };
        self.destroy(s);
        if let Some(x) = self.q_mut(q) {
            x.counters.deletes -= 1;
        }
        out.id_only(kind::DELETE, id);
    }
}
