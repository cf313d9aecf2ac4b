//! The model's rules for limits, expiry, cancellation and schedules (issue
//! 21), their operations, and their checks. Each rule is written from the
//! documented behaviour, by scanning the model's jobs, never from the
//! table's structures:
//!
//! - limits: a hand-out from a queue needs fewer than `concurrency` of its
//!   jobs reserved, and GCRA's `now >= tat - (burst - 1) * T`; each start
//!   moves `tat` to `max(tat, now) + T` (`reserve_id` ignores the gate but
//!   counts its start); `tat` is not logged, so a crash resets it;
//! - expiry: a job is never handed out at or after its deadline. At each
//!   check (every hand-out, and each tick, after the tick's other work) the
//!   deadlines that came due are taken in (deadline, id) order and their
//!   ready or delayed jobs expire; then the jobs that became ready past
//!   their deadline since the last check, in that order. An expired job is
//!   deleted or buried with `EXPIRED_TEXT`, per its queue, and loses its
//!   deadline when buried;
//! - cancellation: a job not running goes at once; a running one is marked,
//!   its holder's next outcome is refused and the job goes (a touch is
//!   refused and changes nothing), and a lease that ends without an outcome
//!   or a crash deletes it too. A job counts as cancelled once;
//! - schedules: each due schedule fires at the last tick at or before now,
//!   skips it if the previous tick's job is live (no overlap) or, first
//!   after a restart with `Missed::Skip`, if the tick came before the
//!   restart; a resume skips the ticks of the pause (they become the last
//!   tick), and a restart goes on from the last logged tick.

use std::time::Duration;

use proptest::prelude::*;
use spindle_core::{
    Cancelled, JobError, LimitError, Limits, Missed, OnExpiry, Put, QueueId, Rate, Records,
    ScheduleError, ScheduleSpec, State, Table, Time, When, EXPIRED_TEXT,
};

use super::ops::{pri_index, queue, Op};
use super::{pri_of, Model, MAX_PAYLOAD, QUEUES};

/// Schedule names (two per queue).
const NAMES: [&str; 2] = ["s0", "s1"];

/// A schedule's rule, in a form the model computes ticks of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MWhen {
    /// `When::Every`, in milliseconds.
    EveryMs(u64),
    /// The cron rule `*/N * * * * *` (N divides 60: every unix second
    /// divisible by N).
    CronSecs(u64),
}

impl MWhen {
    fn when(self) -> When {
        match self {
            MWhen::EveryMs(ms) => When::Every(Duration::from_millis(ms)),
            MWhen::CronSecs(n) => When::cron(&format!("*/{n} * * * * *")),
        }
    }

    /// The first tick strictly after `t`.
    fn next_after(self, anchor: Time, t: Time) -> Time {
        match self {
            MWhen::EveryMs(ms) => {
                let e = ms * 1_000_000;
                if t < anchor {
                    return anchor;
                }
                Time(anchor.0 + ((t.0 - anchor.0) / e + 1) * e)
            }
            MWhen::CronSecs(n) => Time::from_secs((t.0 / 1_000_000_000 / n + 1) * n),
        }
    }

    /// The last tick at or before `t`.
    fn last_at_or_before(self, anchor: Time, t: Time) -> Option<Time> {
        match self {
            MWhen::EveryMs(ms) => {
                let e = ms * 1_000_000;
                (t >= anchor).then(|| Time(anchor.0 + (t.0 - anchor.0) / e * e))
            }
            MWhen::CronSecs(n) => Some(Time::from_secs(t.0 / 1_000_000_000 / n * n)),
        }
    }
}

/// A schedule in the model.
#[derive(Clone, Debug)]
pub struct MSched {
    spec: ScheduleSpec,
    when: MWhen,
    anchor: Time,
    paused: bool,
    last_tick: Option<Time>,
    last_job: u64,
    pub next: Option<Time>,
    /// Recovered and not fired since.
    recovered: bool,
    fired: u64,
    skipped: u64,
}

/// A schedule operation.
#[derive(Clone, Debug)]
pub enum SchedOp {
    Add {
        q: usize,
        name: usize,
        when: MWhen,
        pri: usize,
        ttr_s: u32,
        max_attempts: u32,
        payload: Vec<u8>,
        skip_missed: bool,
        no_overlap: bool,
    },
    Pause {
        q: usize,
        name: usize,
        paused: bool,
    },
    Remove {
        q: usize,
        name: usize,
    },
}

impl SchedOp {
    pub fn q(&self) -> usize {
        match *self {
            SchedOp::Add { q, .. } | SchedOp::Pause { q, .. } | SchedOp::Remove { q, .. } => q,
        }
    }

    fn spec(&self) -> Option<(ScheduleSpec, MWhen)> {
        let SchedOp::Add {
            name,
            when,
            pri,
            ttr_s,
            max_attempts,
            payload,
            skip_missed,
            no_overlap,
            ..
        } = self
        else {
            return None;
        };
        let spec = ScheduleSpec {
            name: NAMES[*name].to_string(),
            when: when.when(),
            pri: pri_of(*pri),
            ttr_s: *ttr_s,
            max_attempts: *max_attempts,
            payload: payload.clone(),
            missed: if *skip_missed { Missed::Skip } else { Missed::RunOnce },
            no_overlap: *no_overlap,
        };
        Some((spec, *when))
    }
}

pub fn sched_op() -> impl Strategy<Value = SchedOp> {
    let when = prop_oneof![
        3 => proptest::sample::select(vec![700u64, 1000, 2500]).prop_map(MWhen::EveryMs),
        1 => proptest::sample::select(vec![2u64, 5]).prop_map(MWhen::CronSecs),
    ];
    let add = (
        queue(),
        0..NAMES.len(),
        when,
        pri_index(),
        0u32..=3,
        0u32..=2,
        prop_oneof![
            6 => proptest::collection::vec(any::<u8>(), 0..=8),
            1 => proptest::collection::vec(any::<u8>(), 39..=42),
        ],
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(q, name, when, pri, ttr_s, max_attempts, payload, skip_missed, no_overlap)| {
                SchedOp::Add {
                    q,
                    name,
                    when,
                    pri,
                    ttr_s,
                    max_attempts,
                    payload,
                    skip_missed,
                    no_overlap,
                }
            },
        );
    prop_oneof![
        3 => add,
        2 => (queue(), 0..NAMES.len(), any::<bool>())
            .prop_map(|(q, name, paused)| SchedOp::Pause { q, name, paused }),
        1 => (queue(), 0..NAMES.len()).prop_map(|(q, name)| SchedOp::Remove { q, name }),
    ]
}

pub fn set_limits_op() -> impl Strategy<Value = Op> {
    let small = || prop_oneof![1 => Just(0u32), 8 => 1u32..=3];
    let rate = proptest::option::weighted(
        0.6,
        (small(), prop_oneof![Just(1000u64), 200u64..4000], small()),
    );
    (queue(), 0u32..=3, rate, any::<bool>())
        .prop_map(|(q, concurrency, rate, bury)| Op::SetLimits { q, concurrency, rate, bury })
}

/// The limits an `Op::SetLimits` sets.
pub fn limits(concurrency: u32, rate: Option<(u32, u64, u32)>, bury: bool) -> Limits {
    Limits {
        concurrency,
        rate: rate.map(|(starts, ms, burst)| Rate {
            starts,
            per: Duration::from_millis(ms),
            burst,
        }),
        on_expiry: if bury { OnExpiry::Bury } else { OnExpiry::Delete },
    }
}

/// Runs a schedule operation on the table.
pub fn apply(
    t: &mut Table,
    now: Time,
    q: QueueId,
    op: &SchedOp,
    out: &mut Records,
) -> Result<(), ScheduleError> {
    match op {
        SchedOp::Add { .. } => t.add_schedule(now, q, op.spec().unwrap().0, out),
        SchedOp::Pause { name, paused, .. } => t.pause_schedule(now, q, NAMES[*name], *paused, out),
        SchedOp::Remove { name, .. } => t.remove_schedule(q, NAMES[*name], out),
    }
}

fn interval_ns(r: &Rate) -> u64 {
    (u64::try_from(r.per.as_nanos()).unwrap() / u64::from(r.starts)).max(1)
}

impl Model {
    pub(super) fn has_schedule(&self, q: usize) -> bool {
        self.schedules.keys().any(|k| k.0 == q)
    }

    /// Queue `q`'s limits allow a start now.
    pub(super) fn gate_open(&self, q: usize) -> bool {
        let x = &self.queues[q];
        let l = x.limits;
        let reserved =
            self.jobs.values().filter(|j| j.q == q && j.state == State::Reserved).count() as u64;
        if l.concurrency > 0 && reserved >= u64::from(l.concurrency) {
            return false;
        }
        if let Some(r) = l.rate {
            let t = interval_ns(&r);
            let allow_at = x.tat.0.saturating_sub(t * u64::from(r.burst - 1));
            if self.now.0 < allow_at {
                return false;
            }
        }
        true
    }

    /// A job of queue `q` started now.
    pub(super) fn started(&mut self, q: usize) {
        let now = self.now;
        let x = &mut self.queues[q];
        if let Some(r) = x.limits.rate {
            x.tat = Time(x.tat.0.max(now.0) + interval_ns(&r));
        }
    }

    /// The expiry check.
    pub(super) fn expire_due(&mut self) {
        let now = self.now;
        let mut due: Vec<(Time, u64)> = self
            .jobs
            .iter()
            .filter(|(_, j)| j.pending && j.deadline.is_some_and(|d| d <= now))
            .map(|(&id, j)| (j.deadline.unwrap(), id))
            .collect();
        due.sort_unstable();
        for (_, id) in due {
            let j = self.job(id);
            j.pending = false;
            if matches!(j.state, State::Ready | State::Delayed) {
                self.expire(id);
            }
        }
        for id in std::mem::take(&mut self.found) {
            let Some(j) = self.jobs.get(&id) else { continue };
            if matches!(j.state, State::Ready | State::Delayed)
                && j.deadline.is_some_and(|d| d <= now)
            {
                self.expire(id);
            }
        }
    }

    /// Job `id` expires: deleted, or buried if its queue says so.
    pub(super) fn expire(&mut self, id: u64) {
        let q = self.jobs[&id].q;
        self.queues[q].counters.expired += 1;
        if self.queues[q].limits.on_expiry == OnExpiry::Bury {
            let j = self.job(id);
            j.deadline = None;
            j.pending = false;
            j.error = Some(EXPIRED_TEXT.to_string());
            j.counts.buries += 1;
            self.queues[q].counters.buries += 1;
            self.make_buried(id);
        } else {
            self.remove(id);
        }
    }

    pub(super) fn cancel(&mut self, id: u64) -> Result<Cancelled, JobError> {
        let j = self.jobs.get_mut(&id).ok_or(JobError::NotFound(id))?;
        let q = j.q;
        if j.state == State::Reserved {
            let holder = j.holder;
            if !j.cancelled {
                j.cancelled = true;
                self.queues[q].counters.cancelled += 1;
            }
            return Ok(Cancelled::Running { holder });
        }
        self.queues[q].counters.cancelled += 1;
        self.remove(id);
        Ok(Cancelled::Removed)
    }

    pub(super) fn set_limits(&mut self, q: usize, l: Limits) -> Result<(), LimitError> {
        if let Some(r) = l.rate {
            if r.starts == 0 {
                return Err(LimitError::ZeroRate);
            }
            if r.per.is_zero() {
                return Err(LimitError::ZeroPeriod);
            }
            if r.burst == 0 {
                return Err(LimitError::ZeroBurst);
            }
        }
        let x = &mut self.queues[q];
        x.limits = l;
        if l.rate.is_none() {
            x.tat = Time::ZERO;
        }
        x.configured = true;
        x.in_log = true;
        Ok(())
    }

    pub(super) fn schedule_op(&mut self, op: &SchedOp) -> Result<(), ScheduleError> {
        let now = self.now;
        let q = op.q();
        let not_found = |name: usize| ScheduleError::NotFound {
            queue: QUEUES[q].to_string(),
            name: NAMES[name].to_string(),
        };
        match *op {
            SchedOp::Add { name, .. } => {
                let (spec, when) = op.spec().unwrap();
                if spec.payload.len() > MAX_PAYLOAD as usize {
                    return Err(ScheduleError::TooBig {
                        len: spec.payload.len(),
                        max: MAX_PAYLOAD,
                    });
                }
                let key = (q, NAMES[name].to_string());
                if self.schedules.contains_key(&key) {
                    return Err(ScheduleError::Exists {
                        queue: QUEUES[q].to_string(),
                        name: key.1,
                    });
                }
                let sc = MSched {
                    spec,
                    when,
                    anchor: now,
                    paused: false,
                    last_tick: None,
                    last_job: 0,
                    next: Some(when.next_after(now, now)),
                    recovered: false,
                    fired: 0,
                    skipped: 0,
                };
                self.schedules.insert(key, sc);
                self.queues[q].in_log = true;
            }
            SchedOp::Pause { name, paused, .. } => {
                let key = (q, NAMES[name].to_string());
                let sc = self.schedules.get_mut(&key).ok_or_else(|| not_found(name))?;
                sc.next = None;
                sc.paused = paused;
                sc.recovered = false;
                if !paused {
                    // The ticks of the pause are skipped: the last of them
                    // is the last tick (a restart goes on after it).
                    let after = sc.last_tick.unwrap_or(sc.anchor);
                    if let Some(l) = sc.when.last_at_or_before(sc.anchor, now) {
                        if l > after {
                            sc.last_tick = Some(l);
                        }
                    }
                    sc.next = Some(sc.when.next_after(sc.anchor, now));
                }
            }
            SchedOp::Remove { name, .. } => {
                let key = (q, NAMES[name].to_string());
                self.schedules.remove(&key).ok_or_else(|| not_found(name))?;
                self.maybe_drop(q);
            }
        }
        Ok(())
    }

    /// Fires the due schedules in the table's order: (next tick, queue id,
    /// name), with `order` each queue's id. Returns the jobs put.
    pub(super) fn fire_schedules(&mut self, order: &[u32; QUEUES.len()]) -> u64 {
        let now = self.now;
        let mut counter = self.next_id;
        let mut made = 0;
        loop {
            let key = self
                .schedules
                .iter()
                .filter(|(_, s)| s.next.is_some_and(|n| n <= now))
                .min_by_key(|((q, name), s)| (s.next, order[*q], name.clone()))
                .map(|(k, _)| k.clone());
            let Some(key) = key else { break };
            let q = key.0;
            let recovered_at = self.recovered_at;
            let sc = self.schedules.get_mut(&key).unwrap();
            let from = sc.next.unwrap();
            let tick =
                sc.when.last_at_or_before(sc.anchor, now).filter(|&l| l >= from).unwrap_or(from);
            let missed_skip = sc.recovered && sc.spec.missed == Missed::Skip && tick < recovered_at;
            let last_job = sc.last_job;
            sc.recovered = false;
            sc.last_tick = Some(tick);
            sc.next = Some(sc.when.next_after(sc.anchor, tick.max(now)));
            let spec = sc.spec.clone();
            let overlap = spec.no_overlap && last_job != 0 && self.jobs.contains_key(&last_job);
            let mut job = 0;
            if !missed_skip && !overlap {
                let id = counter;
                counter += 1;
                let put = self.put(
                    id,
                    q,
                    spec.pri,
                    Duration::ZERO,
                    spec.ttr_s,
                    spec.max_attempts,
                    None,
                    &spec.payload,
                    None,
                );
                if let Ok(Put::Created(id)) = put {
                    job = id;
                }
            }
            let sc = self.schedules.get_mut(&key).unwrap();
            if job != 0 {
                sc.last_job = job;
                sc.fired += 1;
                self.queues[q].counters.fired += 1;
                made += 1;
            } else {
                sc.skipped += 1;
            }
        }
        made
    }

    /// What a crash does to this module's state (after jobs and queues).
    pub(super) fn crash_tiers(&mut self) {
        self.found.clear();
        for j in self.jobs.values_mut() {
            j.pending = j.deadline.is_some();
        }
        self.recovered_at = self.now;
        for sc in self.schedules.values_mut() {
            sc.fired = 0;
            sc.skipped = 0;
            sc.recovered = true;
            sc.next = (!sc.paused)
                .then(|| sc.when.next_after(sc.anchor, sc.last_tick.unwrap_or(sc.anchor)));
        }
    }
}

/// The table's schedules are the model's.
pub fn check(t: &Table, m: &Model) {
    assert_eq!(t.schedules().len(), m.schedules.len(), "schedules");
    for ((q, name), s) in &m.schedules {
        let qid = t.find_queue(QUEUES[*q]).expect("a queue with a schedule exists");
        let v =
            t.schedule(qid, name).unwrap_or_else(|| panic!("schedule {name} of {}", QUEUES[*q]));
        assert_eq!(
            (v.queue_name.as_str(), &v.spec, v.paused, v.next, v.last_tick, v.last_job),
            (QUEUES[*q], &s.spec, s.paused, s.next, s.last_tick, s.last_job),
            "schedule {name} of {}",
            QUEUES[*q]
        );
        assert_eq!((v.fired, v.skipped), (s.fired, s.skipped), "schedule {name} counts");
    }
}
