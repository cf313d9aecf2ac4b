//! Periodic jobs: schedules that put a job on their queue at each tick of
//! a cron expression or interval ([`When`]).
//!
//! 1. [`Table::add_schedule`] checks the rule, name and payload, computes
//!    the first tick after `now`, and logs the schedule (a `Schedule`
//!    record: its rule, job and state).
//! 2. [`Table::next_due`] includes the earliest tick; at or after it the
//!    front-end calls [`Table::fire_schedules`], which for each schedule
//!    due takes the *last* tick at or before `now` (ticks that a slow loop
//!    ran past are coalesced into it), then:
//!    - if the schedule says "no overlap" and the job of its previous tick
//!      is still live, skips the tick;
//!    - else puts the job, with an id from the caller.
//!
//!    Either way it logs one `Fire` record holding the tick *and* the job's
//!    complete `Put`: the tick and its job reach the log together or not at
//!    all, so a crash can neither lose a tick whose job was acknowledged
//!    nor enqueue one tick twice.
//! 3. After a restart ([`Table::finish_replay`]) each schedule's next tick
//!    is the first after its last logged tick. Ticks that passed while the
//!    process was down are *missed*: with [`Missed::RunOnce`] (the default)
//!    the first fire after recovery puts one job for all of them; with
//!    [`Missed::Skip`] it logs the latest as skipped and puts nothing.
//! 4. A paused schedule does not tick; on resume its next tick is the first
//!    after the time of the resume (the ticks in between are not missed
//!    ones: they are skipped, and the latest of them is logged as the last
//!    tick, so a restart does not run them).

use crate::queue::QueueId;
use crate::record::{Records, ScheduleRec, WhenRec};
use crate::table::{Put, PutSpec, Table};
use crate::time::Time;
use crate::when::{Rule, When, WhenError};
use std::collections::{BTreeMap, BTreeSet};

/// What a schedule's first tick after a restart does with the ticks that
/// passed while the process was down.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Missed {
    /// Put one job for all of them (the default).
    #[default]
    RunOnce,
    /// Put nothing for them.
    Skip,
}

/// A schedule to add.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScheduleSpec {
    /// Its name, unique in its queue: 1-200 bytes of the characters a
    /// queue name may have.
    pub name: String,
    /// When it ticks.
    pub when: When,
    /// The job's priority.
    pub pri: u32,
    /// The job's lease length in seconds (0: none).
    pub ttr_s: u32,
    /// The job's attempt limit (0: its queue's policy).
    pub max_attempts: u32,
    /// The job's payload.
    pub payload: Vec<u8>,
    /// Ticks missed while down.
    pub missed: Missed,
    /// Skip a tick while the job of the previous one is still live.
    pub no_overlap: bool,
}

impl ScheduleSpec {
    /// A schedule named `name` that puts `payload` at each tick of `when`,
    /// with priority 0, no TTR, and the defaults otherwise.
    pub fn new(name: &str, when: When, payload: &[u8]) -> ScheduleSpec {
        ScheduleSpec {
            name: name.to_string(),
            when,
            pri: 0,
            ttr_s: 0,
            max_attempts: 0,
            payload: payload.to_vec(),
            missed: Missed::RunOnce,
            no_overlap: false,
        }
    }
}

/// Why a schedule operation was refused. Nothing changed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// The rule is bad.
    #[error(transparent)]
    When(#[from] WhenError),
    /// The queue has a schedule of this name.
    #[error("queue {queue:?} already has a schedule named {name:?}; remove it first")]
    Exists {
        /// The queue.
        queue: String,
        /// The name.
        name: String,
    },
    /// No schedule of this name.
    #[error("queue {queue:?} has no schedule named {name:?}")]
    NotFound {
        /// The queue.
        queue: String,
        /// The name.
        name: String,
    },
    /// The name is empty, too long or has a character not allowed.
    #[error("invalid schedule name {0:?}: 1-200 bytes of A-Z a-z 0-9 - + / ; . $ _ ( )")]
    BadName(String),
    /// The payload is over the table's limit.
    #[error("payload of {len} bytes is over the {max}-byte limit")]
    TooBig {
        /// Its length.
        len: usize,
        /// The limit.
        max: u32,
    },
    /// No such queue.
    #[error("no queue with id {0}")]
    NoQueue(u32),
}

/// A schedule as the table keeps it.
#[derive(Clone, Debug)]
pub(crate) struct Schedule {
    pub queue: u32,
    pub spec: ScheduleSpec,
    pub rule: Option<Rule>,
    /// When an interval counts from (the time it was added).
    pub anchor: Time,
    pub paused: bool,
    /// The last tick fired or skipped.
    pub last_tick: Option<Time>,
    /// The job of the last tick that made one.
    pub last_job: u64,
    /// The next tick, while not paused.
    pub next: Option<Time>,
    /// Recovered from the log and not fired since (step 3).
    pub recovered: bool,
    pub fired: u64,
    pub skipped: u64,
}

/// The table's schedules.
#[derive(Debug, Default)]
pub(crate) struct Schedules {
    /// By (queue, name).
    pub all: BTreeMap<(u32, Box<str>), Schedule>,
    /// (next tick, queue, name).
    pub due: BTreeSet<(Time, u32, Box<str>)>,
    /// Scratch buffer for the `Put` a `Fire` record holds.
    scratch: Records,
    /// When recovery finished: ticks before it were missed (step 3).
    recovered_at: Time,
}

/// A schedule, as [`Table::schedules`] shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScheduleView {
    /// Its queue.
    pub queue: QueueId,
    /// Its queue's name.
    pub queue_name: String,
    /// What it puts, and when.
    pub spec: ScheduleSpec,
    /// Paused.
    pub paused: bool,
    /// Its next tick (none while paused).
    pub next: Option<Time>,
    /// Its last tick, fired or skipped.
    pub last_tick: Option<Time>,
    /// The job of its last fired tick (0: none yet).
    pub last_job: u64,
    /// Ticks that put a job since the process started.
    pub fired: u64,
    /// Ticks skipped (overlap, missed, a full table) since it started.
    pub skipped: u64,
}

impl Schedule {
    fn rec<'a>(&'a self, queue: &'a str) -> ScheduleRec<'a> {
        ScheduleRec {
            queue,
            name: &self.spec.name,
            when: WhenRec::of(&self.spec.when),
            anchor: self.anchor,
            pri: self.spec.pri,
            ttr_s: self.spec.ttr_s,
            max_attempts: self.spec.max_attempts,
            missed: self.spec.missed,
            no_overlap: self.spec.no_overlap,
            paused: self.paused,
            last_tick: self.last_tick,
            last_job: self.last_job,
            payload: &self.spec.payload,
        }
    }
}

impl Table {
    /// Adds a schedule to queue `q` (step 1).
    pub fn add_schedule(
        &mut self,
        now: Time,
        q: QueueId,
        spec: ScheduleSpec,
        out: &mut Records,
    ) -> Result<(), ScheduleError> {
        if crate::validate_queue_name(&spec.name).is_err() {
            return Err(ScheduleError::BadName(spec.name));
        }
        if spec.payload.len() > self.cfg.max_payload as usize {
            return Err(ScheduleError::TooBig {
                len: spec.payload.len(),
                max: self.cfg.max_payload,
            });
        }
        let queue = self.q(q.0).ok_or(ScheduleError::NoQueue(q.0))?.name.to_string();
        let key = (q.0, Box::<str>::from(spec.name.as_str()));
        if self.schedules.all.contains_key(&key) {
            return Err(ScheduleError::Exists { queue, name: spec.name });
        }
        let rule = Rule::new(&spec.when, now)?;
        let next = rule.next_after(now);
        let sc = Schedule {
            queue: q.0,
            spec,
            rule: Some(rule),
            anchor: now,
            paused: false,
            last_tick: None,
            last_job: 0,
            next,
            recovered: false,
            fired: 0,
            skipped: 0,
        };
        out.schedule(&sc.rec(&queue));
        self.hold_queue(q);
        if let Some(t) = next {
            self.schedules.due.insert((t, q.0, key.1.clone()));
        }
        self.schedules.all.insert(key, sc);
        Ok(())
    }

    /// Removes queue `q`'s schedule `name`.
    pub fn remove_schedule(
        &mut self,
        q: QueueId,
        name: &str,
        out: &mut Records,
    ) -> Result<(), ScheduleError> {
        let key = (q.0, Box::<str>::from(name));
        let Some(sc) = self.schedules.all.remove(&key) else {
            return Err(self.not_found(q, name));
        };
        if let Some(t) = sc.next {
            self.schedules.due.remove(&(t, q.0, key.1.clone()));
        }
        let queue = self.q(q.0).map_or_else(String::new, |x| x.name.to_string());
        out.unschedule(&queue, name);
        self.unhold_queue(q);
        Ok(())
    }

    /// Pauses (`paused`) or resumes queue `q`'s schedule `name` (step 4).
    pub fn pause_schedule(
        &mut self,
        now: Time,
        q: QueueId,
        name: &str,
        paused: bool,
        out: &mut Records,
    ) -> Result<(), ScheduleError> {
        let key = (q.0, Box::<str>::from(name));
        let queue = self.q(q.0).map_or_else(String::new, |x| x.name.to_string());
        let Some(sc) = self.schedules.all.get_mut(&key) else {
            return Err(self.not_found(q, name));
        };
        if let Some(t) = sc.next.take() {
            self.schedules.due.remove(&(t, q.0, key.1.clone()));
        }
        sc.paused = paused;
        sc.recovered = false;
        if !paused {
            // The ticks since the last one are skipped, and the latest of
            // them becomes the last tick: the `Schedule` record below
            // carries it, so a restart does not take them for missed ones.
            let after = sc.last_tick.unwrap_or(sc.anchor);
            if let Some(t) = sc.rule.as_ref().and_then(|r| r.last_at_or_before(now, after)) {
                if t > after {
                    sc.last_tick = Some(t);
                }
            }
            sc.next = sc.rule.as_ref().and_then(|r| r.next_after(now));
            if let Some(t) = sc.next {
                self.schedules.due.insert((t, q.0, key.1.clone()));
            }
        }
        out.schedule(&sc.rec(&queue));
        Ok(())
    }

    fn not_found(&self, q: QueueId, name: &str) -> ScheduleError {
        ScheduleError::NotFound {
            queue: self.q(q.0).map_or_else(|| format!("#{}", q.0), |x| x.name.to_string()),
            name: name.to_string(),
        }
    }

    /// Every schedule, by queue and name.
    pub fn schedules(&self) -> Vec<ScheduleView> {
        self.schedules.all.values().map(|sc| self.schedule_view(sc)).collect()
    }

    /// Queue `q`'s schedule `name`.
    pub fn schedule(&self, q: QueueId, name: &str) -> Option<ScheduleView> {
        self.schedules.all.get(&(q.0, Box::<str>::from(name))).map(|sc| self.schedule_view(sc))
    }

    fn schedule_view(&self, sc: &Schedule) -> ScheduleView {
        ScheduleView {
            queue: QueueId(sc.queue),
            queue_name: self.q(sc.queue).map_or_else(String::new, |x| x.name.to_string()),
            spec: sc.spec.clone(),
            paused: sc.paused,
            next: sc.next,
            last_tick: sc.last_tick,
            last_job: sc.last_job,
            fired: sc.fired,
            skipped: sc.skipped,
        }
    }

    /// The earliest tick of any schedule.
    pub(crate) fn next_tick(&self) -> Option<Time> {
        self.schedules.due.first().map(|x| x.0)
    }

    /// Fires the schedules due at `now` (step 2), taking job ids from
    /// `next_id` (a front-end that numbers jobs itself passes its
    /// counter; one that lets the table number them, [`Table::next_id`]).
    /// Returns how many jobs it put.
    pub fn fire_schedules(
        &mut self,
        now: Time,
        next_id: &mut dyn FnMut() -> u64,
        out: &mut Records,
    ) -> u64 {
        let mut made = 0;
        while let Some((at, q, name)) = self.schedules.due.first().cloned() {
            if at > now {
                break;
            }
            self.schedules.due.remove(&(at, q, name.clone()));
            if self.fire_one(now, q, name, next_id, out) {
                made += 1;
            }
        }
        made
    }

    fn fire_one(
        &mut self,
        now: Time,
        q: u32,
        name: Box<str>,
        next_id: &mut dyn FnMut() -> u64,
        out: &mut Records,
    ) -> bool {
        let recovered_at = self.schedules.recovered_at;
        let ids = &self.ids;
        let Some(sc) = self.schedules.all.get_mut(&(q, name)) else { return false };
        let Some(rule) = sc.rule.as_ref() else { return false };
        let from = sc.next.unwrap_or(now);
        let tick = rule.last_at_or_before(now, from).unwrap_or(from);
        let next = rule.next_after(tick.max(now));
        // Missed: the tick passed while the process was down, not merely
        // before this (late) call.
        let missed_skip = sc.recovered && sc.spec.missed == Missed::Skip && tick < recovered_at;
        let overlap = sc.spec.no_overlap && sc.last_job != 0 && ids.get(sc.last_job).is_some();
        sc.recovered = false;
        sc.last_tick = Some(tick);
        sc.next = next;
        let put_spec = PutSpec {
            pri: sc.spec.pri,
            ttr_s: sc.spec.ttr_s,
            max_attempts: sc.spec.max_attempts,
            ..PutSpec::default()
        };
        // Lent to the put below (the schedule keeps it).
        let payload = std::mem::take(&mut sc.spec.payload);
        let name = Box::<str>::from(sc.spec.name.as_str());
        if let Some(t) = next {
            self.schedules.due.insert((t, q, name.clone()));
        }
        let mut made = 0u64;
        let mut scratch = std::mem::take(&mut self.schedules.scratch);
        scratch.clear();
        if !missed_skip && !overlap {
            let id = next_id();
            if let Ok(Put::Created(id)) =
                self.put(now, id, QueueId(q), &put_spec, &payload, &mut scratch)
            {
                made = id;
            }
        }
        let queue = self.q(q).map_or("", |x| &x.name);
        // The tick and its job's `Put` in one record; a skipped tick alone.
        out.fire(queue, &name, tick, made, if made != 0 { scratch.bytes() } else { &[] });
        self.schedules.scratch = scratch;
        if made != 0 {
            if let Some(x) = self.q_mut(q) {
                x.counters.fired += 1;
            }
        }
        let Some(sc) = self.schedules.all.get_mut(&(q, name)) else { return made != 0 };
        sc.spec.payload = payload;
        if made != 0 {
            sc.last_job = made;
            sc.fired += 1;
        } else {
            sc.skipped += 1;
        }
        made != 0
    }

    /// Applies a `Schedule` record (replay).
    pub(crate) fn replay_schedule(&mut self, r: &ScheduleRec<'_>) {
        let Ok(q) = self.queue(r.queue) else { return };
        let key = (q.0, Box::<str>::from(r.name));
        let fresh = !self.schedules.all.contains_key(&key);
        let sc = Schedule {
            queue: q.0,
            spec: ScheduleSpec {
                name: r.name.to_string(),
                when: r.when.to_when(),
                pri: r.pri,
                ttr_s: r.ttr_s,
                max_attempts: r.max_attempts,
                payload: r.payload.to_vec(),
                missed: r.missed,
                no_overlap: r.no_overlap,
            },
            rule: Rule::new(&r.when.to_when(), r.anchor).ok(),
            anchor: r.anchor,
            paused: r.paused,
            last_tick: r.last_tick,
            last_job: r.last_job,
            next: None,
            recovered: true,
            fired: 0,
            skipped: 0,
        };
        self.schedules.all.insert(key, sc);
        if fresh {
            self.hold_queue(q);
        }
    }

    /// Applies an `Unschedule` record (replay).
    pub(crate) fn replay_unschedule(&mut self, queue: &str, name: &str) {
        let Some(q) = self.find_queue(queue) else { return };
        if self.schedules.all.remove(&(q.0, Box::<str>::from(name))).is_some() {
            self.unhold_queue(q);
        }
    }

    /// Applies the tick of a `Fire` record (replay; its `Put` is applied
    /// as any other).
    pub(crate) fn replay_tick(&mut self, queue: &str, name: &str, tick: Time, job: u64) {
        let Some(q) = self.find_queue(queue) else { return };
        if let Some(sc) = self.schedules.all.get_mut(&(q.0, Box::<str>::from(name))) {
            sc.last_tick = Some(sc.last_tick.map_or(tick, |t| t.max(tick)));
            if job != 0 {
                sc.last_job = job;
            }
        }
    }

    /// Computes every schedule's next tick after replay (step 3): the first
    /// after its last tick, or after it was added; recovery ends at `now`.
    pub(crate) fn finish_schedules(&mut self, now: Time) {
        self.schedules.due.clear();
        self.schedules.recovered_at = now;
        for (key, sc) in self.schedules.all.iter_mut() {
            sc.next = None;
            if sc.paused {
                continue;
            }
            let after = sc.last_tick.unwrap_or(sc.anchor);
            sc.next = sc.rule.as_ref().and_then(|r| r.next_after(after));
            if let Some(t) = sc.next {
                self.schedules.due.insert((t, key.0, key.1.clone()));
            }
        }
    }

    /// Logs every schedule with its state (a snapshot's part).
    pub(crate) fn snapshot_schedules(&self, out: &mut Records) {
        for sc in self.schedules.all.values() {
            let queue = self.q(sc.queue).map_or("", |x| &x.name);
            out.schedule(&sc.rec(queue));
        }
    }
}
