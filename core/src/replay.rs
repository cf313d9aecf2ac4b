//! Rebuilding a table from its records.
//!
//! 1. Start from an empty table and call [`Table::replay`] with each
//!    frame's records in log order. Records only set fields: `Put`
//!    creates or replaces a job with its complete state, `Move` sets its
//!    state and counters, `Reserve` counts an attempt and marks the job as
//!    running, `Delete`/`Deletes` remove it, `IdMark` raises the id
//!    counter, `Queue` sets a policy, `Limits` a queue's limits, `Cancel`
//!    marks a running job cancelled, `Schedule`/`Unschedule` add, change
//!    or remove a schedule, and `Fire` records a schedule's tick and
//!    applies the `Put` it holds.
//! 2. [`Table::finish_replay`] then places every job, in id order: ready
//!    jobs in their priority FIFOs, delayed ones on the timer set, buried
//!    ones in their logged order. A job whose last record is a `Reserve`
//!    was running at the crash: that run counts as interrupted, and the
//!    job is ready again, or buried as a poison pill when its policy says
//!    so; either way its new state is logged. A cancelled job is deleted
//!    instead. Each schedule's next tick is the first after its last
//!    logged one (`schedule.rs` step 3).
//!
//! The table that results is the one the records were written from, with
//! reserved jobs back to ready and completed ones gone (the model test in
//! `tests/model.rs` checks this after random operations and crashes).

use crate::job::{Extra, Hot, Job, Payload, Place, Rare, State, NIL};
use crate::record::{decode, DecodeError, MoveRec, PutRec, Record, Records};
use crate::table::Table;
use crate::time::Time;

/// What recovery found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Records applied.
    pub records: u64,
    /// Live jobs.
    pub jobs: u64,
    /// Jobs that were running at the crash and are ready again.
    pub interrupted: u64,
    /// Of those, jobs buried as poison pills.
    pub poisoned: u64,
}

impl Table {
    /// Applies the records of one frame (step 1). Returns how many.
    pub fn replay(&mut self, frame: &[u8]) -> Result<u64, DecodeError> {
        let mut n = 0;
        for rec in decode(frame) {
            self.apply(rec?);
            n += 1;
        }
        Ok(n)
    }

    /// Applies one record (step 1).
    pub fn apply(&mut self, rec: Record<'_>) {
        self.replayed += 1;
        match rec {
            Record::Put(p) => self.replay_put(&p),
            Record::Reserve { id } => {
                if let Some(s) = self.slot(id) {
                    let j = self.slab.get_mut(s);
                    j.counts.reserves = j.counts.reserves.saturating_add(1);
                    j.counts.interrupted = j.counts.interrupted.saturating_add(1);
                    j.state = State::Reserved;
                }
            }
            Record::Move(m) => self.replay_move(&m),
            Record::Delete { id } => self.replay_delete(id),
            Record::Deletes(_) => {
                for id in rec.deleted_ids() {
                    self.replay_delete(id);
                }
            }
            Record::IdMark { next_id } => self.next_id = self.next_id.max(next_id),
            Record::Queue(qr) => {
                if let Ok(q) = self.queue(qr.name) {
                    if let Some(x) = self.q_mut(q.0) {
                        x.policy = qr.policy;
                        x.configured = true;
                    }
                }
            }
            Record::Limits { queue, limits } => {
                if let Ok(q) = self.queue(queue) {
                    if let Some(x) = self.q_mut(q.0) {
                        x.gate.limits = limits;
                        x.configured = true;
                    }
                }
            }
            Record::Cancel { id } => {
                if let Some(s) = self.slot(id) {
                    self.slab.get_mut(s).set_cancelled();
                }
            }
            Record::Schedule(r) => self.replay_schedule(&r),
            Record::Unschedule { queue, name } => self.replay_unschedule(queue, name),
            Record::Fire { queue, name, tick, job, put } => {
                if let Some(p) = put {
                    self.replay_put(&p);
                }
                self.replay_tick(queue, name, tick, job);
            }
        }
    }

    /// Ids up to `n` past the highest seen are never handed out (a log
    /// whose damaged tail was cut may have held them).
    pub fn skip_ids(&mut self, n: u64) {
        self.next_id = self.next_id.saturating_add(n);
    }

    fn replay_put(&mut self, p: &PutRec<'_>) {
        self.replay_delete(p.id);
        let Ok(q) = self.queue(p.queue) else { return };
        // A key another live job holds (only in a damaged log) stays with
        // that job.
        let unique = p.unique.filter(|k| self.q(q.0).is_some_and(|x| !x.uniques.contains_key(*k)));
        let c = p.counts;
        let rare =
            Rare { timeouts: c.timeouts, releases: c.releases, buries: c.buries, kicks: c.kicks };
        let extra = Extra::boxed(unique.map(Into::into), p.error.map(Into::into), rare, p.deadline);
        if let Some(d) = p.deadline {
            self.expiry.insert(d, p.id);
        }
        if let Some(x) = self.q_mut(q.0) {
            x.jobs += 1;
            x.counters.puts += 1;
            if let Some(k) = unique {
                x.uniques.insert(k.into(), p.id);
            }
        }
        let s = self.slab.insert(Job {
            id: p.id,
            created: p.created,
            since: p.created,
            at: p.at,
            payload: Payload::new(p.payload),
            extra,
            prev: NIL,
            next: NIL,
            queue: q.0,
            pri: p.pri,
            ttr_s: p.ttr_s,
            delay_s: p.delay_s,
            holder: 0,
            max_attempts: p.max_attempts,
            epoch: 0,
            counts: Hot { reserves: c.reserves, interrupted: c.interrupted },
            state: p.state,
            place: Place::None,
            live: true,
            logged: false,
        });
        self.ids.insert(p.id, s);
        self.bytes += p.payload.len() as u64;
        self.next_id = self.next_id.max(p.id.saturating_add(1));
    }

    fn replay_move(&mut self, m: &MoveRec<'_>) {
        let Some(s) = self.slot(m.id) else { return };
        let j = self.slab.get_mut(s);
        j.at = m.at;
        j.pri = m.pri;
        j.delay_s = m.delay_s;
        j.state = m.state;
        j.set_counts(m.counts);
        j.set_error(m.error.map(Into::into));
    }

    fn replay_delete(&mut self, id: u64) {
        let Some(s) = self.ids.remove(id) else { return };
        let q = self.slab.get(s).queue;
        let (payload, extra) = self.slab.remove(s);
        self.bytes -= payload.bytes().len() as u64;
        if let Some(d) = extra.as_ref().and_then(|e| e.deadline) {
            self.expiry.remove(d, id);
        }
        if let Some(x) = self.q_mut(q) {
            x.jobs -= 1;
            if let Some(k) = extra.as_ref().and_then(|e| e.unique.as_deref()) {
                x.uniques.remove(k);
            }
        }
    }

    /// Places every replayed job (step 2); logs the new state of jobs that
    /// were running at the crash.
    pub fn finish_replay(&mut self, now: Time, out: &mut Records) -> Recovered {
        let mut r = Recovered {
            records: self.replayed,
            jobs: self.ids.len() as u64,
            ..Recovered::default()
        };
        // A cancelled job that was running at the crash is gone (`cancel.rs`
        // step 3).
        let cancelled: Vec<u64> = self
            .ids
            .iter()
            .filter(|&(_, s)| self.slab.get(s).cancelled())
            .map(|(id, _)| id)
            .collect();
        for &id in &cancelled {
            self.replay_delete(id);
            out.id_only(crate::record::kind::DELETE, id);
        }
        r.jobs -= cancelled.len() as u64;
        self.finish_schedules(now);
        let all: Vec<(u64, u32)> = self.ids.iter().collect();
        let mut buried: Vec<(u64, u32)> = Vec::new();
        let mut running: Vec<u32> = Vec::new();
        for (_, s) in all {
            let (state, at) = {
                let j = self.slab.get(s);
                (j.state, j.at)
            };
            match state {
                State::Ready => self.make_ready(s, now, true),
                State::Delayed => self.make_delayed(s, Time(at)),
                State::Buried => buried.push((at, s)),
                State::Reserved => running.push(s),
            }
        }
        buried.sort_unstable();
        for (seq, s) in buried {
            self.make_buried(s, Some(seq));
        }
        for s in running {
            r.interrupted += 1;
            let policy = self.policy_of(s);
            let (interrupted, attempts) = {
                let j = self.slab.get(s);
                (j.counts.interrupted, j.counts.reserves)
            };
            if policy.buries_interrupted(interrupted, attempts) {
                r.poisoned += 1;
                let j = self.slab.get_mut(s);
                j.set_error(Some(poison_text(attempts, interrupted).into()));
                j.bump(crate::job::Bump::Bury);
                self.make_buried(s, None);
            } else {
                self.make_ready(s, now, false);
            }
            self.log_move(s, out);
        }
        // Counters start again: a queue's puts are the jobs that came back
        // (beanstalkd's `total-jobs` after a restart), not its log's records.
        for x in self.queues.iter_mut().flatten() {
            x.counters = crate::QueueCounters { puts: x.jobs, ..Default::default() };
        }
        let queues: Vec<u32> = self.names.values().copied().collect();
        for q in queues {
            self.maybe_drop_queue(q);
        }
        r
    }
}

/// The error a poison pill is buried with.
pub(crate) fn poison_text(attempts: u32, interrupted: u32) -> String {
    format!("poison pill: {attempts} attempts, the last {interrupted} ended without an outcome")
}
