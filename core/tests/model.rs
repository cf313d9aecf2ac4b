//! The table against a reference model, over random operation sequences,
//! times and crashes.
//!
//! The model is a plain `BTreeMap` of jobs (state, queue, priority,
//! payload, counters, due time, holder...) and a few queue fields; each
//! operation's expected result is computed from it by scanning (the most
//! urgent ready job is the minimum (priority, id) over the ready jobs of
//! the queue, and so on), never by the table's own structures. After
//! every operation the test compares every job, the live ids, `totals()`,
//! every queue's gauges, counters, pause, policy and limits, the peeks,
//! each holder's leases, every schedule, and runs `Table::check`.
//!
//! The rules of issue 21 (per-queue concurrency and rate limits, deadlines
//! and expiry, cancellation, schedules) are in `model/tiers.rs`; the
//! operations and their generators in `model/ops.rs`; fixed sequences and
//! the regressions the model found in `model/fixed.rs`. Each time the test
//! moves the clock it ticks the table, then fires its schedules.
//!
//! A crash keeps every record written so far (the log), builds a fresh
//! table from it (`replay` + `finish_replay`, then a `tick`, as a
//! front-end starting up does, possibly some seconds later) and carries on
//! with that table; the model turns reserved jobs back to ready with the
//! interruption counted (or buries them as poison pills per their policy)
//! and forgets what is not durable: pauses, the expired-lease total, the
//! queue counters (a recovered queue counts the puts of its log; the
//! rest start at zero), the rate limits' GCRA state and the schedules'
//! counts; a cancelled running job is gone, and each schedule goes on from
//! its last logged tick (ticks before the restart are missed ones). A compaction replaces the log with the table's
//! `snapshot`, so later crashes replay full-state records too.
//!
//! Not modelled: holders that actually wait (`reserve_wait` is only called
//! with a timeout that has passed, so it answers at once), and operations
//! between a due time and the tick that handles it (the test ticks each
//! time it moves the clock).
//!
//! The fixed sequences (`model/fixed.rs`) push the ready heap, the lease
//! heap and the per-priority FIFOs past their compaction thresholds, which
//! random runs this small rarely reach; the regression tests after them pin
//! the bugs this test found (those in the rules of issue 21 are pinned in
//! `paid_tiers.rs`).
//!
//! `PROPTEST_CASES` raises the number of cases for longer runs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;
use spindle_core::{
    By, Config, Counts, Failed, JobError, Lease, Limits, Put, PutError, PutSpec, QueueCounters,
    QueueId, Records, Recovered, Reserved, RetryPolicy, State, Table, Time, Totals, WaitEnd,
    MAX_ERROR_TEXT, SAFETY_MARGIN, URGENT,
};

#[path = "model/fixed.rs"]
mod fixed;
#[path = "model/tiers.rs"]
mod tiers;

use tiers::MSched;

const T0: Time = Time::from_secs(1_700_000_000);
/// The queues. The front-end holds the first `HELD`; "c" and "d" are not
/// held, so with `drop_unused_queues` they come and go (and take each
/// other's ids).
const QUEUES: [&str; 4] = ["a", "b", "c", "d"];
const HELD: usize = 2;
/// Priorities, with both sides of the urgent threshold; `pri_of(i)` beyond
/// these gives more distinct ones (a queue keeps up to 16 empty
/// per-priority FIFOs before it drops them).
const PRIS: [u32; 5] = [0, 7, URGENT - 1, URGENT, 5000];

fn pri_of(i: usize) -> u32 {
    PRIS.get(i).copied().unwrap_or(100 + i as u32)
}
const KEYS: [&str; 2] = ["k1", "k2"];
const HOLDERS: u32 = 3;
const MAX_JOBS: u64 = 14;
const MAX_BYTES: u64 = 320;
const MAX_PAYLOAD: u32 = 40;
const BATCH_BYTES: usize = 48;

fn config(drop_unused_queues: bool) -> Config {
    Config {
        max_jobs: MAX_JOBS,
        max_bytes: MAX_BYTES,
        max_payload: MAX_PAYLOAD,
        policy: RetryPolicy {
            max_attempts: 3,
            backoff_base: Duration::ZERO,
            backoff_cap: Duration::from_secs(4),
            poison_after: 0,
            interruptions_use_attempts: false,
        },
        seed: 0x5eed,
        batch_bytes: BATCH_BYTES,
        drop_unused_queues,
    }
}

/// The policies `set_policy` chooses from (whole milliseconds: the record
/// keeps milliseconds).
fn policy(i: usize) -> RetryPolicy {
    let p = |max_attempts, base_ms, cap_ms, poison_after, interruptions_use_attempts| RetryPolicy {
        max_attempts,
        backoff_base: Duration::from_millis(base_ms),
        backoff_cap: Duration::from_millis(cap_ms),
        poison_after,
        interruptions_use_attempts,
    };
    match i % 4 {
        0 => p(1, 0, 4000, 0, false),
        1 => p(2, 500, 2000, 2, false),
        2 => p(3, 1000, 3000, 0, true),
        _ => p(0, 200, 5000, 3, false),
    }
}

#[path = "model/ops.rs"]
mod ops;

use ops::{error_text, op, reason_text, Op, Target, Tok, Who};

// ---------------------------------------------------------------- model

#[derive(Clone, Debug)]
struct MJob {
    q: usize,
    pri: u32,
    state: State,
    payload: Vec<u8>,
    created: Time,
    /// Delayed: when it is due. Reserved: its lease's deadline (none
    /// without a TTR).
    due: Option<Time>,
    ttr_s: u32,
    delay_s: u32,
    max_attempts: u32,
    counts: Counts,
    key: Option<usize>,
    error: Option<String>,
    holder: u32,
    /// Reserved: when, in model steps (a holder's jobs in reservation
    /// order).
    held_seq: u64,
    /// Buried: when, in model steps (the kick order).
    bury_seq: u64,
    /// Not handed out at or after this.
    deadline: Option<Time>,
    /// The table's deadline set still holds it (it leaves at the first
    /// check at or after the deadline, whatever the job's state then).
    pending: bool,
    /// Reserved and cancelled.
    cancelled: bool,
}

#[derive(Clone, Debug)]
struct MQueue {
    exists: bool,
    counters: QueueCounters,
    paused_until: Option<Time>,
    pause_s: u64,
    policy: RetryPolicy,
    configured: bool,
    /// A record names the queue (a put or a policy): replay makes it.
    in_log: bool,
    /// Put records of the queue in the log.
    puts_logged: u64,
    limits: Limits,
    /// GCRA's theoretical arrival time (not logged).
    tat: Time,
}

/// What a failure should do.
#[derive(Debug)]
enum FailWant {
    Buried {
        attempts: u32,
    },
    /// Retried after a delay in [nominal/2, nominal] (the jitter is the
    /// table's).
    Retry {
        attempts: u32,
        nominal: Duration,
    },
}

struct Model {
    cfg: Config,
    now: Time,
    jobs: BTreeMap<u64, MJob>,
    queues: Vec<MQueue>,
    next_id: u64,
    seq: u64,
    timeouts: u64,
    gone: Vec<u64>,
    /// Jobs that became ready past their deadline, in that order (expired
    /// at the next check).
    found: Vec<u64>,
    /// By (queue, name).
    schedules: BTreeMap<(usize, String), MSched>,
    /// When the table last recovered.
    recovered_at: Time,
}

fn may_retry(p: &RetryPolicy, attempts: u32) -> bool {
    p.max_attempts == 0 || attempts < p.max_attempts
}

fn poison(p: &RetryPolicy, interrupted: u32, attempts: u32) -> bool {
    (p.poison_after > 0 && interrupted >= p.poison_after)
        || (p.interruptions_use_attempts && !may_retry(p, attempts))
}

fn nominal(p: &RetryPolicy, attempt: u32) -> Duration {
    let exp = attempt.saturating_sub(1).min(31);
    p.backoff_base.saturating_mul(1u32 << exp).min(p.backoff_cap)
}

fn poison_text(attempts: u32, interrupted: u32) -> String {
    format!("poison pill: {attempts} attempts, the last {interrupted} ended without an outcome")
}

/// The end of `s` that fits `MAX_ERROR_TEXT` bytes, cut at a character.
fn tail_str(s: &str) -> &str {
    let mut i = s.len().saturating_sub(MAX_ERROR_TEXT);
    while !s.is_char_boundary(i) {
        i += 1;
    }
    &s[i..]
}

impl Model {
    fn new(cfg: Config) -> Model {
        let q = MQueue {
            exists: false,
            counters: QueueCounters::default(),
            paused_until: None,
            pause_s: 0,
            policy: cfg.policy,
            configured: false,
            in_log: false,
            puts_logged: 0,
            limits: Limits::default(),
            tat: Time::ZERO,
        };
        Model {
            now: T0,
            jobs: BTreeMap::new(),
            queues: vec![q; QUEUES.len()],
            next_id: 1,
            seq: 0,
            timeouts: 0,
            gone: Vec::new(),
            found: Vec::new(),
            schedules: BTreeMap::new(),
            recovered_at: T0,
            cfg,
        }
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    fn job(&mut self, id: u64) -> &mut MJob {
        self.jobs.get_mut(&id).unwrap()
    }

    /// The queue exists (`Table::queue` makes it).
    fn ensure(&mut self, q: usize) {
        let policy = self.cfg.policy;
        let x = &mut self.queues[q];
        if !x.exists {
            *x = MQueue {
                exists: true,
                counters: QueueCounters::default(),
                paused_until: None,
                pause_s: 0,
                policy,
                configured: false,
                in_log: x.in_log,
                puts_logged: x.puts_logged,
                limits: Limits::default(),
                tat: Time::ZERO,
            };
        }
    }

    fn has_jobs(&self, q: usize) -> bool {
        self.jobs.values().any(|j| j.q == q)
    }

    /// With `drop_unused_queues`, an unheld queue without jobs or a policy
    /// goes.
    fn maybe_drop(&mut self, q: usize) {
        if self.cfg.drop_unused_queues
            && q >= HELD
            && !self.queues[q].configured
            && !self.has_jobs(q)
            && !self.has_schedule(q)
        {
            self.queues[q].exists = false;
        }
    }

    fn paused(&self, q: usize) -> bool {
        self.queues[q].paused_until.is_some_and(|t| t > self.now)
    }

    fn ids_where(&self, f: impl Fn(&MJob) -> bool) -> Vec<u64> {
        self.jobs.iter().filter(|(_, j)| f(j)).map(|(&id, _)| id).collect()
    }

    /// The most urgent ready job of `qs`: least (priority, id). A hand-out
    /// (`gated`) skips paused queues and those whose limits say no.
    fn best_ready(&self, qs: &[usize], gated: bool) -> Option<u64> {
        self.jobs
            .iter()
            .filter(|(_, j)| {
                j.state == State::Ready
                    && qs.contains(&j.q)
                    && !(gated && (self.paused(j.q) || !self.gate_open(j.q)))
            })
            .min_by_key(|(&id, j)| (j.pri, id))
            .map(|(&id, _)| id)
    }

    fn held(&self, holder: u32) -> Vec<u64> {
        let mut v: Vec<(u64, u64)> = self
            .jobs
            .iter()
            .filter(|(_, j)| j.state == State::Reserved && j.holder == holder)
            .map(|(&id, j)| (j.held_seq, id))
            .collect();
        v.sort_unstable();
        v.into_iter().map(|x| x.1).collect()
    }

    fn soonest_deadline(&self, holder: u32) -> Option<Time> {
        self.jobs
            .values()
            .filter(|j| j.state == State::Reserved && j.holder == holder)
            .filter_map(|j| j.due)
            .min()
    }

    fn deadline_soon(&self, holder: u32) -> bool {
        self.soonest_deadline(holder).is_some_and(|d| d <= self.now.plus(SAFETY_MARGIN))
    }

    fn resolve(&self, t: Target) -> u64 {
        let pick = |ids: Vec<u64>, i: u16| ids[usize::from(i) % ids.len()];
        let live = self.ids_where(|_| true);
        let (ids, i) = match t {
            Target::Any(i) => (live, i),
            Target::Reserved(i) => (self.ids_where(|j| j.state == State::Reserved), i),
            Target::Parked(i) => {
                (self.ids_where(|j| matches!(j.state, State::Buried | State::Delayed)), i)
            }
            Target::Gone(i) => {
                if i % 2 == 0 && !self.gone.is_empty() {
                    return pick(self.gone.clone(), i / 2);
                }
                return self.next_id + 1000 + u64::from(i);
            }
        };
        if !ids.is_empty() {
            pick(ids, i)
        } else if !self.jobs.is_empty() {
            pick(self.ids_where(|_| true), i)
        } else {
            self.next_id + 1000 + u64::from(i)
        }
    }

    fn by(&self, id: u64, who: Who, tok: Tok) -> By {
        let j = self.jobs.get(&id);
        let holder = match who {
            Who::Owner => j.filter(|j| j.state == State::Reserved).map_or(0, |j| j.holder),
            Who::Holder(h) => h,
        };
        let reserves = j.map_or(0, |j| j.counts.reserves);
        let token = match tok {
            Tok::None => None,
            Tok::Current => Some(reserves),
            Tok::Stale => Some(reserves.wrapping_sub(1)),
        };
        By { holder, token }
    }

    fn policy_of(&self, id: u64) -> RetryPolicy {
        let j = &self.jobs[&id];
        let mut p = self.queues[j.q].policy;
        if j.max_attempts != 0 {
            p.max_attempts = j.max_attempts;
        }
        p
    }

    fn held_by(&self, id: u64, by: By) -> Result<(), JobError> {
        let j = self.jobs.get(&id).ok_or(JobError::NotFound(id))?;
        if j.state != State::Reserved || j.holder != by.holder {
            return Err(JobError::NotHolder(id));
        }
        match by.token {
            Some(t) if t != j.counts.reserves => {
                Err(JobError::StaleLease { id, token: t, current: j.counts.reserves })
            }
            _ => Ok(()),
        }
    }

    // ------------------------------------------------------- transitions

    fn take(&mut self, id: u64, holder: u32) -> Lease {
        let seq = self.next_seq();
        let now = self.now;
        let j = self.job(id);
        j.state = State::Reserved;
        j.counts.reserves += 1;
        j.holder = holder;
        j.held_seq = seq;
        j.due = (j.ttr_s > 0).then(|| now.plus_secs(u64::from(j.ttr_s)));
        let (q, token) = (j.q, j.counts.reserves);
        self.queues[q].counters.reserves += 1;
        self.started(q);
        Lease { id, token }
    }

    /// Makes a job ready again (not a put): past its deadline, it is
    /// expired at the next check.
    fn make_ready(&mut self, id: u64) {
        let now = self.now;
        let j = self.job(id);
        j.state = State::Ready;
        j.due = None;
        let q = j.q;
        if j.deadline.is_some_and(|d| d <= now) {
            self.found.push(id);
        }
        self.queues[q].counters.readied += 1;
    }

    fn make_buried(&mut self, id: u64) {
        let seq = self.next_seq();
        let j = self.job(id);
        j.state = State::Buried;
        j.due = None;
        j.bury_seq = seq;
    }

    fn destroy(&mut self, id: u64) {
        let q = self.remove(id);
        self.queues[q].counters.deletes += 1;
    }

    /// The job goes, not counted as a delete (cancelled, expired).
    fn remove(&mut self, id: u64) -> usize {
        let j = self.jobs.remove(&id).unwrap();
        self.gone.push(id);
        self.maybe_drop(j.q);
        j.q
    }

    /// `held_by`, and a cancelled job's holder is refused and the job goes.
    fn hold(&mut self, id: u64, by: By) -> Result<(), JobError> {
        self.held_by(id, by)?;
        if self.jobs[&id].cancelled {
            self.remove(id);
            return Err(JobError::Cancelled(id));
        }
        Ok(())
    }

    /// A run ended without an outcome (lease expired, holder gone); a
    /// cancelled job goes instead.
    fn interrupt(&mut self, id: u64, timed_out: bool) {
        if self.jobs[&id].cancelled {
            self.remove(id);
            return;
        }
        let p = self.policy_of(id);
        let j = self.job(id);
        j.counts.interrupted += 1;
        if timed_out {
            j.counts.timeouts += 1;
        }
        let (q, interrupted, attempts) = (j.q, j.counts.interrupted, j.counts.reserves);
        if timed_out {
            self.timeouts += 1;
            self.queues[q].counters.timeouts += 1;
        }
        if poison(&p, interrupted, attempts) {
            let j = self.job(id);
            j.error = Some(poison_text(attempts, interrupted));
            j.counts.buries += 1;
            self.queues[q].counters.buries += 1;
            self.make_buried(id);
        } else {
            self.make_ready(id);
        }
    }

    // -------------------------------------------------------- operations

    #[allow(clippy::too_many_arguments)]
    fn put(
        &mut self,
        id: u64,
        q: usize,
        pri: u32,
        delay: Duration,
        ttr_s: u32,
        max_attempts: u32,
        key: Option<usize>,
        payload: &[u8],
        deadline: Option<Time>,
    ) -> Result<Put, PutError> {
        self.ensure(q);
        let len = payload.len();
        if len > MAX_PAYLOAD as usize {
            return Err(PutError::TooBig { len, max: MAX_PAYLOAD });
        }
        if let Some(d) = deadline.filter(|&d| d <= self.now) {
            return Err(PutError::DeadlinePassed {
                deadline_ms: d.as_millis(),
                now_ms: self.now.as_millis(),
            });
        }
        // A live job of the queue with the key: nothing is made, so no
        // limit applies.
        if let Some(k) = key {
            if let Some((&id, _)) = self.jobs.iter().find(|(_, j)| j.q == q && j.key == Some(k)) {
                return Ok(Put::Duplicate(id));
            }
        }
        if self.jobs.len() as u64 >= MAX_JOBS {
            return Err(PutError::Full { what: "jobs", limit: MAX_JOBS });
        }
        let bytes: u64 = self.jobs.values().map(|j| j.payload.len() as u64).sum();
        if bytes + len as u64 > MAX_BYTES {
            return Err(PutError::Full { what: "bytes", limit: MAX_BYTES });
        }
        self.next_id = self.next_id.max(id + 1);
        let delayed = !delay.is_zero();
        self.jobs.insert(
            id,
            MJob {
                q,
                pri,
                state: if delayed { State::Delayed } else { State::Ready },
                payload: payload.to_vec(),
                created: self.now,
                due: delayed.then(|| self.now.plus(delay)),
                ttr_s,
                delay_s: delay.as_secs() as u32,
                max_attempts,
                counts: Counts::default(),
                key,
                error: None,
                holder: 0,
                held_seq: 0,
                bury_seq: 0,
                deadline,
                pending: deadline.is_some(),
                cancelled: false,
            },
        );
        let x = &mut self.queues[q];
        x.counters.puts += 1;
        x.counters.readied += u64::from(!delayed);
        x.in_log = true;
        x.puts_logged += 1;
        Ok(Put::Created(id))
    }

    fn reserve(&mut self, q: usize, holder: u32) -> Option<Lease> {
        self.ensure(q);
        self.expire_due();
        if self.paused(q) {
            return None;
        }
        let id = self.best_ready(&[q], true)?;
        Some(self.take(id, holder))
    }

    /// `reserve_wait` with a timeout that has passed: jobs now or an end.
    fn reserve_wait(&mut self, qs: &[usize], holder: u32, batch: u32) -> Reserved {
        for &q in qs {
            self.ensure(q);
        }
        let soon = self.deadline_soon(holder);
        let any_ready = self.jobs.values().any(|j| j.state == State::Ready && qs.contains(&j.q));
        if soon && !any_ready {
            // beanstalkd answers DEADLINE_SOON at once (the holder never
            // waits, so no queue is left unused by it).
            return Reserved::Ended(WaitEnd::DeadlineSoon);
        }
        self.expire_due();
        let mut leases = Vec::new();
        if let Some(first) = self.best_ready(qs, true) {
            let mut bytes = self.jobs[&first].payload.len();
            leases.push(self.take(first, holder));
            while leases.len() < batch as usize && bytes < BATCH_BYTES {
                let Some(id) = self.best_ready(qs, true) else { break };
                bytes += self.jobs[&id].payload.len();
                leases.push(self.take(id, holder));
            }
        }
        for &q in qs {
            self.maybe_drop(q);
        }
        if leases.is_empty() {
            Reserved::Ended(if soon { WaitEnd::DeadlineSoon } else { WaitEnd::TimedOut })
        } else {
            Reserved::Now(leases)
        }
    }

    /// Any job but a reserved one, limits or not; one past its deadline is
    /// expired instead.
    fn reserve_id(&mut self, id: u64, holder: u32) -> Option<Lease> {
        self.expire_due();
        let j = self.jobs.get(&id)?;
        if j.state == State::Reserved {
            return None;
        }
        if j.deadline.is_some_and(|d| d <= self.now) {
            self.expire(id);
            return None;
        }
        Some(self.take(id, holder))
    }

    fn complete(&mut self, id: u64, by: By) -> Result<(), JobError> {
        self.hold(id, by)?;
        self.destroy(id);
        Ok(())
    }

    fn complete_many(&mut self, ids: &[u64], holder: u32) -> usize {
        let mut gone = 0;
        for &id in ids {
            if self.hold(id, By::holder(holder)).is_ok() {
                self.destroy(id);
                gone += 1;
            }
        }
        gone
    }

    fn delete(&mut self, id: u64, by: Option<By>) -> Result<(), JobError> {
        let j = self.jobs.get(&id).ok_or(JobError::NotFound(id))?;
        if j.state == State::Reserved {
            self.hold(id, by.ok_or(JobError::NotHolder(id))?)?;
        }
        self.destroy(id);
        Ok(())
    }

    fn release(&mut self, id: u64, by: By, pri: u32, delay: Duration) -> Result<(), JobError> {
        self.hold(id, by)?;
        let now = self.now;
        let j = self.job(id);
        j.pri = pri;
        j.counts.releases += 1;
        j.counts.interrupted = 0;
        j.delay_s = delay.as_secs() as u32;
        if delay.is_zero() {
            self.make_ready(id);
        } else {
            j.state = State::Delayed;
            j.due = Some(now.plus(delay));
            if j.deadline.is_some_and(|d| d <= now) {
                self.found.push(id);
            }
        }
        Ok(())
    }

    fn fail(&mut self, id: u64, by: By, error: &[u8]) -> Result<FailWant, JobError> {
        self.hold(id, by)?;
        let p = self.policy_of(id);
        let j = self.job(id);
        j.error = Some(
            String::from_utf8_lossy(&error[error.len().saturating_sub(MAX_ERROR_TEXT)..])
                .into_owned(),
        );
        j.counts.interrupted = 0;
        let (q, attempts) = (j.q, j.counts.reserves);
        if !may_retry(&p, attempts) {
            self.job(id).counts.buries += 1;
            self.queues[q].counters.buries += 1;
            self.make_buried(id);
            return Ok(FailWant::Buried { attempts });
        }
        self.job(id).counts.releases += 1;
        self.queues[q].counters.retries += 1;
        Ok(FailWant::Retry { attempts, nominal: nominal(&p, attempts) })
    }

    /// The rest of a retry, with the delay the table chose.
    fn retry_after(&mut self, id: u64, delay: Duration) {
        let now = self.now;
        let j = self.job(id);
        j.delay_s = u32::try_from(delay.as_millis().div_ceil(1000)).unwrap();
        if delay.is_zero() {
            self.make_ready(id);
        } else {
            j.state = State::Delayed;
            j.due = Some(now.plus(delay));
            if j.deadline.is_some_and(|d| d <= now) {
                self.found.push(id);
            }
        }
    }

    fn bury(&mut self, id: u64, by: By, pri: u32, reason: Option<&str>) -> Result<(), JobError> {
        self.hold(id, by)?;
        let j = self.job(id);
        j.pri = pri;
        j.counts.buries += 1;
        j.counts.interrupted = 0;
        if let Some(r) = reason {
            j.error = Some(tail_str(r).to_string());
        }
        let q = j.q;
        self.queues[q].counters.buries += 1;
        self.make_buried(id);
        Ok(())
    }

    fn touch(&mut self, id: u64, by: By) -> Result<(), JobError> {
        self.held_by(id, by)?;
        if self.jobs[&id].cancelled {
            return Err(JobError::Cancelled(id));
        }
        let now = self.now;
        let j = self.job(id);
        if j.ttr_s > 0 {
            j.due = Some(now.plus_secs(u64::from(j.ttr_s)));
        }
        Ok(())
    }

    fn kick_one(&mut self, id: u64) {
        self.job(id).counts.kicks += 1;
        self.make_ready(id);
    }

    /// Buried jobs first (oldest burial first), else delayed ones (soonest
    /// first), as beanstalkd.
    fn kick(&mut self, q: usize, bound: u64) -> u64 {
        self.ensure(q);
        let mut buried: Vec<(u64, u64)> = self
            .jobs
            .iter()
            .filter(|(_, j)| j.q == q && j.state == State::Buried)
            .map(|(&id, j)| (j.bury_seq, id))
            .collect();
        let mut delayed: Vec<(Time, u64)> = self
            .jobs
            .iter()
            .filter(|(_, j)| j.q == q && j.state == State::Delayed)
            .map(|(&id, j)| (j.due.unwrap(), id))
            .collect();
        buried.sort_unstable();
        delayed.sort_unstable();
        let ids: Vec<u64> = if buried.is_empty() {
            delayed.into_iter().map(|x| x.1).collect()
        } else {
            buried.into_iter().map(|x| x.1).collect()
        };
        let ids: Vec<u64> = ids.into_iter().take(bound as usize).collect();
        for &id in &ids {
            self.kick_one(id);
        }
        ids.len() as u64
    }

    fn kick_job(&mut self, id: u64) -> Result<(), JobError> {
        let j = self.jobs.get(&id).ok_or(JobError::NotFound(id))?;
        if !matches!(j.state, State::Buried | State::Delayed) {
            return Err(JobError::WrongState { id, state: j.state, wanted: "buried or delayed" });
        }
        self.kick_one(id);
        Ok(())
    }

    fn clear(&mut self, q: usize, states: &[State]) -> u64 {
        self.ensure(q);
        let ids = self.ids_where(|j| j.q == q && states.contains(&j.state));
        for &id in &ids {
            self.destroy(id);
        }
        ids.len() as u64
    }

    fn pause(&mut self, q: usize, d: Duration) {
        self.ensure(q);
        let now = self.now;
        let x = &mut self.queues[q];
        x.counters.pauses += 1;
        x.pause_s = d.as_secs();
        x.paused_until = (!d.is_zero()).then(|| now.plus(d));
    }

    fn set_policy(&mut self, q: usize, p: RetryPolicy) {
        self.ensure(q);
        let x = &mut self.queues[q];
        x.policy = p;
        x.configured = true;
        x.in_log = true;
    }

    /// Time passes to `now`, and the table ticks.
    /// (Schedules fire after it, in `fire_schedules`.)
    fn advance(&mut self, now: Time) {
        self.now = now;
        let mut due: Vec<(Time, u64)> = self
            .jobs
            .iter()
            .filter(|(_, j)| j.state == State::Delayed && j.due.unwrap() <= now)
            .map(|(&id, j)| (j.due.unwrap(), id))
            .collect();
        due.sort_unstable();
        for (_, id) in due {
            self.make_ready(id);
        }
        let mut expired: Vec<(Time, u64)> = self
            .jobs
            .iter()
            .filter(|(_, j)| j.state == State::Reserved && j.due.is_some_and(|d| d <= now))
            .map(|(&id, j)| (j.due.unwrap(), id))
            .collect();
        expired.sort_unstable();
        for (_, id) in expired {
            self.interrupt(id, true);
        }
        for q in 0..self.queues.len() {
            let x = &mut self.queues[q];
            if x.exists && x.paused_until.is_some_and(|t| t <= now) {
                x.paused_until = None;
                x.pause_s = 0;
                self.maybe_drop(q);
            }
        }
        // Deadlines last: a job that became ready in this tick past its
        // deadline goes in it.
        self.expire_due();
    }

    fn drop_holder(&mut self, holder: u32) {
        for id in self.held(holder) {
            self.interrupt(id, false);
        }
    }

    /// The log is now a snapshot: a record for each configured queue and
    /// live job.
    fn compact(&mut self) {
        for q in 0..self.queues.len() {
            let jobs = self.jobs.values().filter(|j| j.q == q).count() as u64;
            let scheduled = self.has_schedule(q);
            let x = &mut self.queues[q];
            x.in_log = x.configured || jobs > 0 || scheduled;
            x.puts_logged = jobs;
        }
    }

    /// A crash and recovery: returns (interrupted, poisoned).
    fn crash(&mut self, now: Time) -> (u64, u64) {
        self.now = now;
        let (mut interrupted, mut poisoned) = (0, 0);
        // A cancelled job that was running is gone.
        for id in self.ids_where(|j| j.cancelled) {
            self.jobs.remove(&id);
            self.gone.push(id);
        }
        for id in self.ids_where(|j| j.state == State::Reserved) {
            interrupted += 1;
            let p = self.policy_of(id);
            let j = self.job(id);
            j.counts.interrupted += 1;
            let (i, attempts) = (j.counts.interrupted, j.counts.reserves);
            if poison(&p, i, attempts) {
                poisoned += 1;
                let j = self.job(id);
                j.error = Some(poison_text(attempts, i));
                j.counts.buries += 1;
                self.make_buried(id);
            } else {
                self.make_ready(id);
            }
        }
        // Not durable: the expired-lease total, pauses, queue counters.
        self.timeouts = 0;
        for q in 0..self.queues.len() {
            let live = self.jobs.values().filter(|j| j.q == q).count() as u64;
            let survives = self.queues[q].in_log
                && (!self.cfg.drop_unused_queues
                    || self.has_jobs(q)
                    || self.queues[q].configured
                    || self.has_schedule(q));
            let x = &mut self.queues[q];
            x.exists = survives;
            x.paused_until = None;
            x.pause_s = 0;
            x.counters = QueueCounters { puts: live, ..QueueCounters::default() };
            x.tat = Time::ZERO;
            if !survives {
                x.policy = self.cfg.policy;
                x.configured = false;
                x.limits = Limits::default();
            }
        }
        self.crash_tiers();
        (interrupted, poisoned)
    }
}

// -------------------------------------------------------------- harness

struct Run {
    t: Table,
    m: Model,
    /// Every record written so far.
    log: Vec<u8>,
    records: u64,
}

fn states(mask: u8) -> Vec<State> {
    [State::Ready, State::Delayed, State::Reserved, State::Buried]
        .into_iter()
        .enumerate()
        .filter(|(i, _)| mask & (1 << i) != 0)
        .map(|(_, s)| s)
        .collect()
}

impl Run {
    fn new(drop_unused_queues: bool) -> Run {
        let cfg = config(drop_unused_queues);
        let mut r =
            Run { t: Table::new(cfg.clone()), m: Model::new(cfg), log: Vec::new(), records: 0 };
        r.hold_queues();
        r
    }

    /// The front-end holds its queues (again, after a restart).
    fn hold_queues(&mut self) {
        for q in 0..HELD {
            let id = self.qid(q);
            self.t.hold_queue(id);
        }
    }

    fn qid(&mut self, q: usize) -> QueueId {
        self.m.ensure(q);
        self.t.queue(QUEUES[q]).unwrap()
    }

    fn logged(&mut self, r: &Records) {
        self.log.extend_from_slice(r.bytes());
        self.records += r.len() as u64;
    }

    fn step(&mut self, op: &Op) {
        let now = self.m.now;
        let mut rec = Records::new();
        match op {
            Op::Put { q, pri, delay_ms, ttr_s, max_attempts, key, payload, owned, deadline_ms } => {
                let qid = self.qid(*q);
                let spec = PutSpec {
                    pri: pri_of(*pri),
                    delay: Duration::from_millis(*delay_ms),
                    ttr_s: *ttr_s,
                    max_attempts: *max_attempts,
                    unique: key.map(|k| KEYS[k]),
                    deadline: deadline_ms.map(|ms| now.plus_millis(ms)),
                };
                let id = self.t.next_id();
                assert_eq!(id, self.m.next_id);
                let got = if *owned {
                    self.t.put_owned(now, id, qid, &spec, payload.clone(), &mut rec)
                } else {
                    self.t.put(now, id, qid, &spec, payload, &mut rec)
                };
                let want = self.m.put(
                    id,
                    *q,
                    spec.pri,
                    spec.delay,
                    *ttr_s,
                    *max_attempts,
                    *key,
                    payload,
                    spec.deadline,
                );
                assert_eq!(got, want);
            }
            Op::Reserve { q, holder } => {
                let qid = self.qid(*q);
                let got = self.t.reserve(now, qid, *holder, &mut rec);
                assert_eq!(got, self.m.reserve(*q, *holder));
            }
            Op::ReserveWait { queues, holder, batch, past } => {
                let qids: Vec<QueueId> = queues.iter().map(|&q| self.qid(q)).collect();
                let timeout = if *past { Time(now.0 - 1_000_000_000) } else { now };
                let got = self.t.reserve_wait(now, *holder, &qids, Some(timeout), *batch, &mut rec);
                assert_eq!(got, self.m.reserve_wait(queues, *holder, *batch));
            }
            Op::ReserveId { job, holder } => {
                let id = self.m.resolve(*job);
                let got = self.t.reserve_id(now, id, *holder, &mut rec);
                assert_eq!(got, self.m.reserve_id(id, *holder));
            }
            Op::Complete { job, who, tok } => {
                let id = self.m.resolve(*job);
                let by = self.m.by(id, *who, *tok);
                let got = self.t.complete(id, by, &mut rec);
                assert_eq!(got, self.m.complete(id, by));
            }
            Op::CompleteMany { holder, extra } => {
                let mut ids = self.m.held(*holder);
                if let Some(x) = extra {
                    ids.push(self.m.resolve(*x));
                }
                let got = self.t.complete_many(&ids, *holder, &mut rec);
                assert_eq!(got, self.m.complete_many(&ids, *holder));
            }
            Op::Delete { job, by } => {
                let id = self.m.resolve(*job);
                let by = by.map(|(who, tok)| self.m.by(id, who, tok));
                let got = self.t.delete(id, by, &mut rec);
                assert_eq!(got, self.m.delete(id, by));
            }
            Op::Release { job, who, tok, pri, delay_ms } => {
                let id = self.m.resolve(*job);
                let by = self.m.by(id, *who, *tok);
                let delay = Duration::from_millis(*delay_ms);
                let got = self.t.release(now, id, by, pri_of(*pri), delay, &mut rec);
                assert_eq!(got, self.m.release(id, by, pri_of(*pri), delay));
            }
            Op::Fail { job, who, tok, error } => {
                let id = self.m.resolve(*job);
                let by = self.m.by(id, *who, *tok);
                let error = error_text(*error);
                let got = self.t.fail(now, id, by, &error, &mut rec);
                match (got, self.m.fail(id, by, &error)) {
                    (Ok(Failed::Buried { attempts }), Ok(FailWant::Buried { attempts: a })) => {
                        assert_eq!(attempts, a);
                    }
                    (
                        Ok(Failed::Retry { attempts, delay }),
                        Ok(FailWant::Retry { attempts: a, nominal }),
                    ) => {
                        assert_eq!(attempts, a);
                        assert!(
                            delay >= nominal / 2 && delay <= nominal,
                            "retry {attempts}: delay {delay:?} outside [{:?}, {nominal:?}]",
                            nominal / 2
                        );
                        self.m.retry_after(id, delay);
                    }
                    (Err(e), Err(w)) => assert_eq!(e, w),
                    (got, want) => panic!("fail: table {got:?}, model {want:?}"),
                }
            }
            Op::Bury { job, who, tok, pri, reason } => {
                let id = self.m.resolve(*job);
                let by = self.m.by(id, *who, *tok);
                let reason = reason_text(*reason);
                let got = self.t.bury(id, by, pri_of(*pri), reason.as_deref(), &mut rec);
                assert_eq!(got, self.m.bury(id, by, pri_of(*pri), reason.as_deref()));
            }
            Op::Touch { job, who, tok } => {
                let id = self.m.resolve(*job);
                let by = self.m.by(id, *who, *tok);
                assert_eq!(self.t.touch(now, id, by), self.m.touch(id, by));
            }
            Op::Kick { q, bound } => {
                let qid = self.qid(*q);
                assert_eq!(self.t.kick(now, qid, *bound, &mut rec), self.m.kick(*q, *bound));
            }
            Op::KickJob { job } => {
                let id = self.m.resolve(*job);
                assert_eq!(self.t.kick_job(now, id, &mut rec), self.m.kick_job(id));
            }
            Op::Clear { q, states: mask } => {
                let qid = self.qid(*q);
                let st = states(*mask);
                assert_eq!(self.t.clear(qid, &st, &mut rec), self.m.clear(*q, &st));
            }
            Op::Pause { q, secs } => {
                let qid = self.qid(*q);
                let d = Duration::from_secs(*secs);
                assert!(self.t.pause(now, qid, d));
                self.m.pause(*q, d);
            }
            Op::SetPolicy { q, policy: i } => {
                let qid = self.qid(*q);
                assert!(self.t.set_policy(qid, policy(*i), &mut rec));
                self.m.set_policy(*q, policy(*i));
            }
            Op::Advance { ms } => {
                let now = now.plus_millis(*ms);
                self.t.tick(now, &mut rec);
                self.m.advance(now);
                self.fire(now, &mut rec);
            }
            Op::Cancel { job } => {
                let id = self.m.resolve(*job);
                assert_eq!(self.t.cancel(id, &mut rec), self.m.cancel(id));
            }
            Op::SetLimits { q, concurrency, rate, bury } => {
                let qid = self.qid(*q);
                let limits = tiers::limits(*concurrency, *rate, *bury);
                assert_eq!(self.t.set_limits(qid, limits, &mut rec), self.m.set_limits(*q, limits));
            }
            Op::Schedule(op) => {
                let qid = self.qid(op.q());
                let got = tiers::apply(&mut self.t, now, qid, op, &mut rec);
                assert_eq!(got, self.m.schedule_op(op));
            }
            Op::DropHolder { holder } => {
                self.t.drop_holder(now, *holder, &mut rec);
                self.m.drop_holder(*holder);
            }
            Op::Compact => {
                let mut snap = Records::new();
                self.t.snapshot(&mut snap);
                self.log.clear();
                self.records = 0;
                self.logged(&snap);
                self.m.compact();
            }
            Op::Crash { later_ms } => {
                let now = now.plus_millis(*later_ms);
                let mut t = Table::new(self.m.cfg.clone());
                let n = t.replay(&self.log).unwrap();
                assert_eq!(n, self.records, "every record replayed");
                let got = t.finish_replay(now, &mut rec);
                let (interrupted, poisoned) = self.m.crash(now);
                let want =
                    Recovered { records: n, jobs: self.m.jobs.len() as u64, interrupted, poisoned };
                assert_eq!(got, want);
                // A front-end holds its queues again (before anything can
                // drop them: an expiry in this tick, say) and ticks at once:
                // jobs that came due while it was down, or since their last
                // record (a due job's move to ready is not logged).
                self.t = t;
                self.hold_queues();
                // The jobs that the model made ready before the crash but
                // the recovered table holds as delayed come ready again in
                // this tick: `readied` counts them once more.
                for (q, name) in QUEUES.iter().enumerate().take(self.m.queues.len()) {
                    let Some(qid) = self.t.find_queue(name) else { continue };
                    let held = self.t.queue_view(qid).map_or(0, |v| v.delayed);
                    let model =
                        self.m.jobs.values().filter(|j| j.q == q && j.state == State::Delayed);
                    let again = held.saturating_sub(model.count() as u64);
                    self.m.queues[q].counters.readied += again;
                }
                self.t.tick(now, &mut rec);
                self.m.advance(now);
                self.fire(now, &mut rec);
            }
        }
        self.logged(&rec);
        self.check();
    }

    /// Schedules fire (the front-end calls this after each tick), with
    /// ids from a counter of the caller's.
    fn fire(&mut self, now: Time, rec: &mut Records) {
        let mut next = self.t.next_id();
        assert_eq!(next, self.m.next_id);
        let got = self.t.fire_schedules(
            now,
            &mut || {
                next += 1;
                next - 1
            },
            rec,
        );
        let order = QUEUES.map(|n| self.t.find_queue(n).map_or(u32::MAX, |q| q.0));
        assert_eq!(got, self.m.fire_schedules(&order));
    }

    /// The table and the model agree.
    fn check(&mut self) {
        let now = self.m.now;
        let t = &mut self.t;
        let m = &self.m;
        if let Err(e) = t.check() {
            panic!("invariant: {e}");
        }
        assert_eq!(t.job_ids().collect::<Vec<_>>(), m.jobs.keys().copied().collect::<Vec<_>>());
        for (&id, mj) in &m.jobs {
            let v = t.job(id).unwrap();
            let want_holder =
                (mj.state == State::Reserved).then_some((mj.holder, mj.counts.reserves));
            assert_eq!(
                (v.state, v.queue_name, v.pri, v.payload, v.created, v.due),
                (mj.state, QUEUES[mj.q], mj.pri, &mj.payload[..], mj.created, mj.due),
                "job {id}"
            );
            assert_eq!(v.counts, mj.counts, "job {id} counts");
            assert_eq!(t.is_cancelled(id), mj.cancelled, "job {id} cancelled");
            assert_eq!(
                (v.ttr_s, v.delay_s, v.max_attempts, v.unique, v.error, v.holder),
                (
                    mj.ttr_s,
                    mj.delay_s,
                    mj.max_attempts,
                    mj.key.map(|k| KEYS[k]),
                    mj.error.as_deref(),
                    want_holder
                ),
                "job {id}"
            );
        }
        let count = |s: State| m.jobs.values().filter(|j| j.state == s).count() as u64;
        let want = Totals {
            jobs: m.jobs.len() as u64,
            bytes: m.jobs.values().map(|j| j.payload.len() as u64).sum(),
            ready: count(State::Ready),
            urgent: m.jobs.values().filter(|j| j.state == State::Ready && j.pri < URGENT).count()
                as u64,
            reserved: count(State::Reserved),
            delayed: count(State::Delayed),
            buried: count(State::Buried),
            timeouts: m.timeouts,
            queues: m.queues.iter().filter(|x| x.exists).count() as u64,
            next_id: m.next_id,
        };
        assert_eq!(t.totals(), want);
        for (q, mq) in m.queues.iter().enumerate() {
            let Some(qid) = t.find_queue(QUEUES[q]) else {
                assert!(!mq.exists, "queue {} is missing", QUEUES[q]);
                continue;
            };
            assert!(mq.exists, "queue {} should be gone", QUEUES[q]);
            let v = t.queue_view(qid).unwrap();
            let n = |s: State| m.jobs.values().filter(|j| j.q == q && j.state == s).count() as u64;
            let urgent = m
                .jobs
                .values()
                .filter(|j| j.q == q && j.state == State::Ready && j.pri < URGENT)
                .count() as u64;
            assert_eq!(
                (v.ready, v.urgent, v.reserved, v.delayed, v.buried, v.waiting),
                (
                    n(State::Ready),
                    urgent,
                    n(State::Reserved),
                    n(State::Delayed),
                    n(State::Buried),
                    0
                ),
                "queue {} gauges",
                QUEUES[q]
            );
            assert_eq!(v.counters, mq.counters, "queue {} counters", QUEUES[q]);
            assert_eq!((v.paused_until, v.pause_s), (mq.paused_until, mq.pause_s));
            assert_eq!(t.policy(qid), Some(mq.policy));
            assert_eq!(t.limits(qid), Some(mq.limits), "queue {} limits", QUEUES[q]);
            let ready = m.best_ready(&[q], false);
            assert_eq!(t.peek_ready(qid).map(|j| j.id), ready, "peek ready {}", QUEUES[q]);
            let delayed = m
                .jobs
                .iter()
                .filter(|(_, j)| j.q == q && j.state == State::Delayed)
                .min_by_key(|(&id, j)| (j.due, id))
                .map(|(&id, _)| id);
            assert_eq!(t.peek_delayed(qid).map(|j| j.id), delayed);
            let buried = m
                .jobs
                .iter()
                .filter(|(_, j)| j.q == q && j.state == State::Buried)
                .min_by_key(|(_, j)| j.bury_seq)
                .map(|(&id, _)| id);
            assert_eq!(t.peek_buried(qid).map(|j| j.id), buried);
        }
        for h in 0..HOLDERS {
            assert_eq!(t.held(h), m.held(h), "holder {h}'s leases");
            assert_eq!(t.soonest_deadline(h), m.soonest_deadline(h));
            assert!(!t.is_waiting(h));
        }
        assert_eq!(t.take_grants(), vec![]);
        assert_eq!(t.take_wait_ends(), vec![]);
        // The next timer: never past; no later than the model's next event
        // (lease entries are dropped lazily, so it may be earlier).
        let next = t.next_due();
        assert!(next.is_none_or(|x| x > now), "next due {next:?} is not after {now:?}");
        let want_next = m
            .jobs
            .values()
            .filter(|j| matches!(j.state, State::Delayed | State::Reserved))
            .filter_map(|j| j.due)
            .chain(m.queues.iter().filter(|x| x.exists).filter_map(|x| x.paused_until))
            .chain(m.jobs.values().filter(|j| j.pending).filter_map(|j| j.deadline))
            .chain(m.schedules.values().filter_map(|s| s.next))
            .min();
        if let Some(w) = want_next {
            assert!(next.is_some_and(|x| x <= w), "next due {next:?}, want by {w:?}");
        }
        tiers::check(t, m);
    }
}

fn run(drop_unused_queues: bool, ops: &[Op]) {
    let mut r = Run::new(drop_unused_queues);
    r.check();
    for op in ops {
        r.step(op);
    }
    r.step(&Op::Crash { later_ms: 0 });
}

/// `cases` unless `PROPTEST_CASES` says otherwise (for longer runs).
fn proptest_config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(cases);
    // No regression files: a failure's minimal case becomes a named test.
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

proptest! {
    #![proptest_config(proptest_config(200))]

    #[test]
    fn the_table_behaves_like_the_model_across_crashes(
        drop_unused_queues in any::<bool>(),
        ops in proptest::collection::vec(op(), 1..150),
    ) {
        run(drop_unused_queues, &ops);
    }
}
