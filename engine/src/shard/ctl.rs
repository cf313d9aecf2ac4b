//! A shard's side of limits, schedules and cancellation: control messages
//! from [`crate::Engine`]'s methods (`engine/src/paid.rs`), answered through
//! a one-slot reply queue, and the schedule firing and deadline accounting
//! of the shard's timer step. The rules are the table's.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crossbeam_queue::ArrayQueue;
use spindle_core::{
    Cancelled, JobError, LimitError, Limits, QueueId, ScheduleError, ScheduleSpec, ScheduleView,
    Totals,
};

use super::Shard;

/// What a control message asks.
#[derive(Debug)]
pub(crate) enum CtlOp {
    Cancel(u64),
    Limits(Arc<str>, Limits),
    AddSchedule(Arc<str>, ScheduleSpec),
    PauseSchedule(Arc<str>, String, bool),
    RemoveSchedule(Arc<str>, String),
    ListSchedules,
}

/// A shard's answer.
#[derive(Debug)]
pub(crate) enum CtlReply {
    Cancel(Result<Cancelled, JobError>),
    Limits(Result<(), LimitError>),
    Schedule(Result<(), ScheduleError>),
    List(Vec<ScheduleView>),
}

/// A control message: the question, where to answer, whom to wake.
#[derive(Debug)]
pub(crate) struct CtlMsg {
    pub(crate) op: CtlOp,
    pub(crate) reply: Arc<ArrayQueue<CtlReply>>,
    pub(crate) waiter: std::thread::Thread,
}

impl Shard {
    /// Answers a control message; its records are written before the
    /// answer.
    pub(super) fn control(&mut self, m: CtlMsg) {
        let now = self.now_t();
        let reply = match m.op {
            CtlOp::Cancel(id) => {
                // A job waiting in the lane is not in the table yet.
                if self.sh.lane.len() > 0 {
                    self.spill_lane();
                }
                let len = self.table.job(id).map_or(0, |j| j.payload.len() as u64);
                let r = self.table.cancel(id, &mut self.recs);
                if r == Ok(Cancelled::Removed) {
                    self.gone(id, len);
                }
                CtlReply::Cancel(r)
            }
            CtlOp::Limits(q, limits) => match self.qid(&q) {
                Some(qid) => {
                    let r = self.table.set_limits(qid, limits, &mut self.recs);
                    if r.is_ok() && self.sh.lane.count().is_some_and(|(lq, _)| lq == qid) {
                        self.spill_lane();
                    }
                    CtlReply::Limits(r)
                }
                None => CtlReply::Limits(Err(LimitError::NoQueue(0))),
            },
            CtlOp::AddSchedule(q, spec) => match self.qid(&q) {
                Some(qid) => {
                    CtlReply::Schedule(self.table.add_schedule(now, qid, spec, &mut self.recs))
                }
                None => CtlReply::Schedule(Err(ScheduleError::NoQueue(0))),
            },
            CtlOp::PauseSchedule(q, name, paused) => {
                let qid = self.qids.get(&q).copied().unwrap_or(QueueId(u32::MAX));
                CtlReply::Schedule(self.table.pause_schedule(
                    now,
                    qid,
                    &name,
                    paused,
                    &mut self.recs,
                ))
            }
            CtlOp::RemoveSchedule(q, name) => {
                let qid = self.qids.get(&q).copied().unwrap_or(QueueId(u32::MAX));
                CtlReply::Schedule(self.table.remove_schedule(qid, &name, &mut self.recs))
            }
            CtlOp::ListSchedules => CtlReply::List(self.table.schedules()),
        };
        self.flush();
        let _ = m.reply.push(reply);
        m.waiter.unpark();
    }

    /// A job of `len` payload bytes left the table without completing
    /// (cancelled, expired): its engine-wide counts are given back.
    pub(super) fn gone(&mut self, id: u64, len: u64) {
        self.sh.cancels.remove(id);
        self.released.0 += 1;
        self.released.1 += len;
        self.release_counts();
    }

    /// Fires the schedules due at `now` (their jobs take ids from the
    /// engine's counter and count as live jobs), then the table's timers;
    /// jobs the timers deleted (expired, cancelled runs that timed out)
    /// give their counts back.
    pub(super) fn tick_table(&mut self, now: spindle_core::Time) {
        let before = self.table.totals();
        let counters = self.counters.clone();
        let made = self.table.fire_schedules(
            now,
            &mut || counters.next_id.fetch_add(1, Ordering::AcqRel),
            &mut self.recs,
        );
        let fired = self.table.totals();
        if made > 0 {
            self.counters.add(fired.jobs - before.jobs, fired.bytes - before.bytes);
        }
        self.table.tick(now, &mut self.recs);
        let after = self.table.totals();
        self.give_back(&fired, &after);
    }

    /// Gives back the counts of jobs the table deleted between two totals.
    pub(super) fn give_back(&mut self, before: &Totals, after: &Totals) {
        if after.jobs < before.jobs {
            self.released.0 += before.jobs - after.jobs;
            self.released.1 += before.bytes.saturating_sub(after.bytes);
            self.release_counts();
        }
    }
}
