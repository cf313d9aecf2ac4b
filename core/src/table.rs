//! The table: jobs, queues, timers and holders, and the plumbing that
//! moves a job between states. The operations are spread by concept:
//! `put` here, reservations and waiting in `reserve.rs`, a holder's
//! outcomes and the operator's commands in `outcome.rs`, time in
//! `timers.rs`, rebuilding from records in `replay.rs`, read-only views in
//! `view.rs`.
//!
//! Every change appends the records it implies to the caller's
//! [`Records`]; nothing here reads a clock, touches a file or starts a
//! thread.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use crate::error::{NameError, PutError};
use crate::job::{Counts, Extra, List, New, Payload, Slab, State};
use crate::queue::{Queue, QueueId};
use crate::record::{kind, MoveRec, PutRec, Records};
use crate::retry::{RetryPolicy, Rng};
use crate::time::Time;
use crate::IdMap;

/// Limits and defaults, fixed when the table is made.
#[derive(Clone, Debug)]
pub struct Config {
    /// Most live jobs; a put beyond is [`PutError::Full`].
    pub max_jobs: u64,
    /// Most live payload bytes.
    pub max_bytes: u64,
    /// Largest payload.
    pub max_payload: u32,
    /// The retry policy of queues that set none.
    pub policy: RetryPolicy,
    /// Seed of the jitter generator.
    pub seed: u64,
    /// Most payload bytes one batch grant hands out (a grant holds at least
    /// one job).
    pub batch_bytes: usize,
    /// Drop a queue once nothing refers to it (no jobs, waiters, policy or
    /// [`Table::hold_queue`] references), as beanstalkd drops unused tubes;
    /// its [`QueueId`] may then be reused, so a front-end that sets this
    /// holds the queues it keeps ids of. Off by default: ids stay valid.
    pub drop_unused_queues: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_jobs: u64::MAX,
            max_bytes: u64::MAX,
            max_payload: 64 << 10,
            policy: RetryPolicy::default(),
            seed: 0x5eed,
            batch_bytes: 4 << 20,
            drop_unused_queues: false,
        }
    }
}

/// What a put asks for, besides queue and payload.
#[derive(Clone, Copy, Debug, Default)]
pub struct PutSpec<'a> {
    /// Priority: 0 is the most urgent.
    pub pri: u32,
    /// Run no earlier than this long after `now`.
    pub delay: Duration,
    /// Lease length in seconds (0: a lease never expires).
    pub ttr_s: u32,
    /// Attempts before a failing job is buried (0: the queue's policy).
    pub max_attempts: u32,
    /// While a live job of the queue holds this key, a put with it makes
    /// nothing and returns that job's id.
    pub unique: Option<&'a str>,
    /// Never handed out after this time (`expiry.rs`); must be after `now`.
    pub deadline: Option<Time>,
}

/// What a put did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Put {
    /// A new job.
    Created(u64),
    /// A live job of the queue holds the unique key: nothing was made.
    Duplicate(u64),
}

/// A holder: whoever reserves jobs (a connection, a worker, a shard).
#[derive(Debug, Default)]
pub(crate) struct Holder {
    /// Its reserved jobs, linked through their slots.
    pub reserved: List,
    pub wait: Option<crate::reserve::Wait>,
}

/// The job table.
pub struct Table {
    pub(crate) cfg: Config,
    pub(crate) slab: Slab,
    pub(crate) ids: IdMap,
    pub(crate) queues: Vec<Option<Queue>>,
    pub(crate) free_queues: Vec<u32>,
    pub(crate) names: HashMap<Box<str>, u32>,
    pub(crate) holders: Vec<Holder>,
    /// Every id below this was handed out.
    pub(crate) next_id: u64,
    pub(crate) bytes: u64,
    /// Delayed jobs by due time.
    pub(crate) delayed: BTreeSet<(Time, u64)>,
    /// Lease deadlines (deadline, id, token), removed lazily
    /// (`leases.rs`).
    pub(crate) leases: crate::leases::Leases,
    /// Pause ends.
    pub(crate) pauses: BTreeSet<(Time, u32)>,
    pub(crate) bury_seq: u64,
    pub(crate) rng: Rng,
    pub(crate) ready_n: u64,
    pub(crate) urgent_n: u64,
    pub(crate) reserved_n: u64,
    pub(crate) delayed_n: u64,
    pub(crate) buried_n: u64,
    pub(crate) timeouts: u64,
    /// Records applied by [`Table::apply`] (what `finish_replay` reports).
    pub(crate) replayed: u64,
    /// Waiting reservations (see `reserve.rs`).
    pub(crate) waits: crate::reserve::Waits,
    /// Names of queues dropped since [`Table::take_dropped_queues`].
    pub(crate) dropped: Vec<Box<str>>,
    /// When shut rate gates reopen (`limit.rs`).
    pub(crate) gate_timers: BTreeSet<(Time, u32)>,
    /// Deadlines of jobs not started yet, and jobs found past theirs
    /// (`expiry.rs`).
    pub(crate) expiry: crate::expiry::Expiry,
    /// Periodic jobs (`schedule.rs`).
    pub(crate) schedules: crate::schedule::Schedules,
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table")
            .field("jobs", &self.ids.len())
            .field("next_id", &self.next_id)
            .finish_non_exhaustive()
    }
}

impl Table {
    /// An empty table.
    pub fn new(cfg: Config) -> Table {
        let rng = Rng::new(cfg.seed);
        Table {
            cfg,
            slab: Slab::new(),
            ids: IdMap::new(),
            queues: Vec::new(),
            free_queues: Vec::new(),
            names: HashMap::new(),
            holders: Vec::new(),
            next_id: 1,
            bytes: 0,
            delayed: BTreeSet::new(),
            leases: crate::leases::Leases::default(),
            pauses: BTreeSet::new(),
            bury_seq: 0,
            rng,
            ready_n: 0,
            urgent_n: 0,
            reserved_n: 0,
            delayed_n: 0,
            buried_n: 0,
            timeouts: 0,
            replayed: 0,
            waits: crate::reserve::Waits::default(),
            dropped: Vec::new(),
            gate_timers: BTreeSet::new(),
            expiry: crate::expiry::Expiry::default(),
            schedules: crate::schedule::Schedules::default(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    // ------------------------------------------------------------- queues

    /// The id of queue `name`, making the queue if it does not exist.
    pub fn queue(&mut self, name: &str) -> Result<QueueId, NameError> {
        if let Some(&q) = self.names.get(name) {
            return Ok(QueueId(q));
        }
        crate::error::validate_queue_name(name)?;
        let q = Queue::new(name.into(), self.cfg.policy);
        let id = match self.free_queues.pop() {
            Some(i) => {
                self.queues[i as usize] = Some(q);
                i
            }
            None => {
                self.queues.push(Some(q));
                (self.queues.len() - 1) as u32
            }
        };
        self.names.insert(name.into(), id);
        Ok(QueueId(id))
    }

    /// The id of an existing queue.
    pub fn find_queue(&self, name: &str) -> Option<QueueId> {
        self.names.get(name).map(|&q| QueueId(q))
    }

    /// A queue's name.
    pub fn queue_name(&self, q: QueueId) -> Option<&str> {
        self.q(q.0).map(|x| &*x.name)
    }

    /// The front-end refers to queue `q` (a connection uses or watches it,
    /// a handler is registered): it stays while referred to.
    pub fn hold_queue(&mut self, q: QueueId) {
        if let Some(x) = self.q_mut(q.0) {
            x.refs += 1;
        }
    }

    /// Drops a reference taken by [`Table::hold_queue`]; an unused queue
    /// (no references, jobs or waiters) goes, and its id may be reused.
    pub fn unhold_queue(&mut self, q: QueueId) {
        if let Some(x) = self.q_mut(q.0) {
            x.refs = x.refs.saturating_sub(1);
        }
        self.maybe_drop_queue(q.0);
    }

    /// Drops queue `q` if nothing uses it.
    #[inline]
    pub(crate) fn maybe_drop_queue(&mut self, q: u32) {
        if self.cfg.drop_unused_queues {
            self.drop_if_unused(q);
        }
    }

    fn drop_if_unused(&mut self, q: u32) {
        let unused =
            self.cfg.drop_unused_queues && self.q(q).is_some_and(|x| x.unused() && !x.configured);
        if unused {
            if let Some(x) = self.queues[q as usize].take() {
                self.names.remove(&x.name);
                self.dropped.push(x.name.clone());
                if let Some(at) = x.paused_until {
                    self.pauses.remove(&(at, q));
                }
                self.free_queues.push(q);
            }
        }
    }

    /// The names of queues dropped (with [`Config::drop_unused_queues`])
    /// since the last call, in the order they went.
    pub fn take_dropped_queues(&mut self) -> Vec<Box<str>> {
        std::mem::take(&mut self.dropped)
    }

    /// Sets a queue's retry policy (logged; a configured queue stays).
    pub fn set_policy(&mut self, q: QueueId, policy: RetryPolicy, out: &mut Records) -> bool {
        let Some(x) = self.q_mut(q.0) else { return false };
        x.policy = policy;
        x.configured = true;
        out.queue(&x.name, &policy);
        true
    }

    /// A queue's retry policy.
    pub fn policy(&self, q: QueueId) -> Option<RetryPolicy> {
        self.q(q.0).map(|x| x.policy)
    }

    /// Pauses a queue: nothing is reserved from it until `now + d` (zero
    /// ends a pause).
    pub fn pause(&mut self, now: Time, q: QueueId, d: Duration) -> bool {
        let Some(x) = self.queues.get_mut(q.0 as usize).and_then(|x| x.as_mut()) else {
            return false;
        };
        if let Some(at) = x.paused_until.take() {
            self.pauses.remove(&(at, q.0));
        }
        x.counters.pauses += 1;
        x.pause_s = d.as_secs();
        if !d.is_zero() {
            let at = now.plus(d);
            x.paused_until = Some(at);
            self.pauses.insert((at, q.0));
        } else {
            self.waits.dirty = true;
        }
        true
    }

    pub(crate) fn q(&self, q: u32) -> Option<&Queue> {
        self.queues.get(q as usize).and_then(|x| x.as_ref())
    }

    pub(crate) fn q_mut(&mut self, q: u32) -> Option<&mut Queue> {
        self.queues.get_mut(q as usize).and_then(|x| x.as_mut())
    }

    // ---------------------------------------------------------------- put

    /// The next unused id (for front-ends that let the table number jobs).
    pub fn next_id(&self) -> u64 {
        self.next_id
    }

    /// Puts a job with id `id` (from [`Table::next_id`] or a counter shared
    /// by several tables; ids must not repeat).
    pub fn put(
        &mut self,
        now: Time,
        id: u64,
        q: QueueId,
        spec: &PutSpec<'_>,
        payload: &[u8],
        out: &mut Records,
    ) -> Result<Put, PutError> {
        self.put_payload(now, id, q, spec, PayloadIn::Borrowed(payload), out)
    }

    /// As [`Table::put`], taking the payload by value (a large one is kept
    /// without a copy).
    pub fn put_owned(
        &mut self,
        now: Time,
        id: u64,
        q: QueueId,
        spec: &PutSpec<'_>,
        payload: Vec<u8>,
        out: &mut Records,
    ) -> Result<Put, PutError> {
        self.put_payload(now, id, q, spec, PayloadIn::Owned(payload), out)
    }

    fn put_payload(
        &mut self,
        now: Time,
        id: u64,
        q: QueueId,
        spec: &PutSpec<'_>,
        payload: PayloadIn,
        out: &mut Records,
    ) -> Result<Put, PutError> {
        let len = payload.len();
        if let Some(k) = spec.unique.filter(|k| k.len() > crate::error::MAX_UNIQUE_KEY) {
            return Err(PutError::KeyTooLong { len: k.len(), max: crate::error::MAX_UNIQUE_KEY });
        }
        if len > self.cfg.max_payload as usize {
            return Err(PutError::TooBig { len, max: self.cfg.max_payload });
        }
        if let Some(d) = spec.deadline.filter(|d| *d <= now) {
            return Err(PutError::DeadlinePassed {
                deadline_ms: d.as_millis(),
                now_ms: now.as_millis(),
            });
        }
        // A duplicate makes nothing, so no limit refuses it (the daemon's
        // `put-unique` answered so before the table).
        let x = self.q(q.0).ok_or(PutError::NoQueue(q.0))?;
        if let Some(&existing) = spec.unique.and_then(|key| x.uniques.get(key)) {
            return Ok(Put::Duplicate(existing));
        }
        if self.ids.len() as u64 >= self.cfg.max_jobs {
            return Err(PutError::Full { what: "jobs", limit: self.cfg.max_jobs });
        }
        if self.bytes.saturating_add(len as u64) > self.cfg.max_bytes {
            return Err(PutError::Full { what: "bytes", limit: self.cfg.max_bytes });
        }
        // Every live id is below `next_id`: only an older id needs a look.
        let fresh = id >= self.next_id;
        if !fresh && self.ids.get(id).is_some() {
            return Err(PutError::IdUsed { id });
        }
        let x = self.q_mut(q.0).ok_or(PutError::NoQueue(q.0))?;
        if let Some(key) = spec.unique {
            x.uniques.insert(key.into(), id);
        }
        x.jobs += 1;
        x.counters.puts += 1;
        let delay_s = u32::try_from(spec.delay.as_secs()).unwrap_or(u32::MAX);
        let delayed = !spec.delay.is_zero();
        let payload = match payload {
            PayloadIn::Borrowed(b) => Payload::new(b),
            PayloadIn::Owned(v) => Payload::from_vec(v),
        };
        let extra = (spec.unique.is_some() || spec.deadline.is_some()).then(|| {
            Box::new(Extra {
                unique: spec.unique.map(Into::into),
                deadline: spec.deadline,
                ..Extra::default()
            })
        });
        let new = New {
            id,
            now,
            queue: q.0,
            pri: spec.pri,
            ttr_s: spec.ttr_s,
            delay_s,
            max_attempts: spec.max_attempts,
        };
        let s = self.slab.alloc();
        self.slab.get_mut(s).fill(&new, payload, extra);
        self.next_id = self.next_id.max(id.saturating_add(1));
        self.bytes += len as u64;
        self.ids.insert(id, s);
        if let Some(d) = spec.deadline {
            self.expiry.insert(d, id);
        }
        if delayed {
            self.make_delayed(s, now.plus(spec.delay));
        } else {
            self.make_ready(s, now, fresh);
        }
        if out.enabled() {
            let j = self.slab.get(s);
            out.put(&PutRec {
                id,
                queue: self.q(q.0).map_or("", |x| &x.name),
                pri: j.pri,
                ttr_s: j.ttr_s,
                delay_s,
                max_attempts: j.max_attempts,
                state: j.state,
                at: j.at,
                created: now,
                counts: Counts::default(),
                unique: spec.unique,
                error: None,
                deadline: spec.deadline,
                payload: j.payload.bytes(),
            });
        }
        Ok(Put::Created(id))
    }

    // ------------------------------------------------------ state plumbing

    /// The slot of live job `id`.
    #[inline]
    pub(crate) fn slot(&self, id: u64) -> Option<u32> {
        self.ids.get(id)
    }

    pub(crate) fn holder_mut(&mut self, h: u32) -> &mut Holder {
        let i = self.holder_index(h);
        &mut self.holders[i]
    }

    /// Holder `h`'s index in `holders`, made if new.
    #[inline]
    fn holder_index(&mut self, h: u32) -> usize {
        let i = h as usize;
        if self.holders.len() <= i {
            self.holders.resize_with(i + 1, Holder::default);
        }
        i
    }

    /// Takes a job out of its state's structures and counters.
    #[inline]
    pub(crate) fn unplace(&mut self, s: u32) {
        match self.slab.get(s).state {
            State::Ready => self.unplace_ready(s),
            State::Reserved => self.unplace_reserved(s),
            State::Delayed => {
                let (q, at, id) = {
                    let j = self.slab.get(s);
                    (j.queue, j.at, j.id)
                };
                self.delayed.remove(&(Time(at), id));
                if let Some(x) = self.q_mut(q) {
                    x.delayed.remove(&(Time(at), id));
                }
                self.delayed_n -= 1;
            }
            State::Buried => {
                let q = self.slab.get(s).queue;
                if let Some(x) = self.queues.get_mut(q as usize).and_then(|x| x.as_mut()) {
                    x.buried.unlink(&mut self.slab, s);
                }
                self.buried_n -= 1;
            }
        }
    }

    /// [`Table::unplace`] of a ready job.
    #[inline]
    fn unplace_ready(&mut self, s: u32) {
        let q = self.slab.get(s).queue;
        if let Some(x) = self.queues.get_mut(q as usize).and_then(|x| x.as_mut()) {
            let urgent = x.ready.urgent;
            x.ready.remove(&mut self.slab, s);
            self.urgent_n -= urgent - x.ready.urgent;
        }
        self.ready_n -= 1;
    }

    /// [`Table::unplace`] of a reserved job.
    #[inline]
    fn unplace_reserved(&mut self, s: u32) {
        let (q, at, id, holder, token) = {
            let j = self.slab.get(s);
            (j.queue, j.at, j.id, j.holder, j.counts.reserves)
        };
        if let Some(h) = self.holders.get_mut(holder as usize) {
            h.reserved.unlink(&mut self.slab, s);
        }
        if let Some(x) = self.queues.get_mut(q as usize).and_then(|x| x.as_mut()) {
            x.reserved -= 1;
            if x.gate.limits.concurrency > 0 && !x.waiting.is_empty() {
                self.waits.dirty = true;
            }
        }
        self.reserved_n -= 1;
        if at != 0 {
            self.leases.forget((Time(at), id, token));
        }
        self.compact_leases();
    }

    /// Drops stale lease entries once they outnumber the live ones.
    fn compact_leases(&mut self) {
        if self.leases.len() > 1024 && self.leases.len() as u64 > 2 * self.reserved_n + 1024 {
            let slab = &self.slab;
            let ids = &self.ids;
            self.leases.retain(|(at, id, tok)| {
                ids.get(*id).is_some_and(|s| {
                    let j = slab.get(s);
                    j.state == State::Reserved && j.at == at.0 && j.counts.reserves == *tok
                })
            });
        }
    }

    /// Makes a job ready (`fresh`: its id is the highest yet, so it can go
    /// to its priority's FIFO).
    #[inline]
    pub(crate) fn make_ready(&mut self, s: u32, now: Time, fresh: bool) {
        let q = {
            let j = self.slab.get_mut(s);
            j.state = State::Ready;
            j.since = now;
            j.at = 0;
            j.queue
        };
        self.ready_n += 1;
        if let Some(x) = self.queues.get_mut(q as usize).and_then(|x| x.as_mut()) {
            let before = x.ready.urgent;
            x.counters.readied += 1;
            x.ready.push(&mut self.slab, s, fresh);
            self.urgent_n += x.ready.urgent - before;
            if !x.waiting.is_empty() {
                self.waits.dirty = true;
            }
        }
        if !fresh {
            self.check_deadline(s, now);
        }
    }

    pub(crate) fn make_delayed(&mut self, s: u32, due: Time) {
        let (q, id) = {
            let j = self.slab.get_mut(s);
            j.state = State::Delayed;
            j.at = due.0;
            (j.queue, j.id)
        };
        self.delayed_n += 1;
        self.delayed.insert((due, id));
        if let Some(x) = self.q_mut(q) {
            x.delayed.insert((due, id));
        }
    }

    pub(crate) fn make_buried(&mut self, s: u32, seq: Option<u64>) {
        let seq = seq.unwrap_or(self.bury_seq.saturating_add(1));
        self.bury_seq = self.bury_seq.max(seq);
        let q = {
            let j = self.slab.get_mut(s);
            j.state = State::Buried;
            j.at = seq;
            j.queue
        };
        self.buried_n += 1;
        if let Some(x) = self.queues.get_mut(q as usize).and_then(|x| x.as_mut()) {
            x.buried.push_back(&mut self.slab, s);
        }
    }

    #[inline]
    pub(crate) fn make_reserved(&mut self, s: u32, holder: u32, now: Time) -> (u64, u32) {
        let (q, id, token, waited_us, deadline) = {
            let j = self.slab.get_mut(s);
            j.state = State::Reserved;
            j.counts.reserves = j.counts.reserves.saturating_add(1);
            j.holder = holder;
            // Whole microseconds, as `now.since(j.since).as_micros()`.
            let waited_us = now.0.saturating_sub(j.since.0) / 1_000;
            j.since = now;
            j.at = if j.ttr_s == 0 { 0 } else { now.plus_secs(u64::from(j.ttr_s)).0 };
            (j.queue, j.id, j.counts.reserves, waited_us, j.at)
        };
        if deadline != 0 {
            self.leases.push((Time(deadline), id, token));
        }
        self.reserved_n += 1;
        if let Some(x) = self.q_mut(q) {
            // A start, for the queue's rate limit (`limit.rs`).
            x.gate.started(now);
            x.reserved += 1;
            x.counters.reserves += 1;
            x.record_wait(waited_us);
        }
        let i = self.holder_index(holder);
        if let Some(h) = self.holders.get_mut(i) {
            h.reserved.push_back(&mut self.slab, s);
        }
        (id, token)
    }

    /// Removes a job entirely (its state, key, bytes and slot).
    #[inline]
    pub(crate) fn destroy(&mut self, s: u32) {
        self.unplace(s);
        let (id, q) = {
            let j = self.slab.get(s);
            (j.id, j.queue)
        };
        let (payload, extra) = self.slab.remove(s);
        self.ids.remove(id);
        self.bytes -= payload.bytes().len() as u64;
        if let Some(d) = extra.as_ref().and_then(|e| e.deadline) {
            self.expiry.remove(d, id);
        }
        if let Some(x) = self.q_mut(q) {
            x.jobs -= 1;
            x.counters.deletes += 1;
            if let Some(k) = extra.as_ref().and_then(|e| e.unique.as_deref()) {
                x.uniques.remove(k);
            }
        }
        self.maybe_drop_queue(q);
    }

    /// Takes back a put whose record never reached the log (the front-end
    /// could not write it): the job goes as if never put, counters too.
    /// Nothing is logged.
    pub fn unput(&mut self, id: u64) -> bool {
        let Some(s) = self.slot(id) else { return false };
        let q = self.slab.get(s).queue;
        self.destroy(s);
        if let Some(x) = self.q_mut(q) {
            x.counters.deletes -= 1;
            x.counters.puts = x.counters.puts.saturating_sub(1);
        }
        true
    }

    /// Logs a job's current state, priority and counters.
    pub(crate) fn log_move(&self, s: u32, out: &mut Records) {
        if !out.enabled() {
            return;
        }
        let j = self.slab.get(s);
        let state = if j.state == State::Reserved { State::Ready } else { j.state };
        let at = if j.state == State::Reserved { 0 } else { j.at };
        out.moved(&MoveRec {
            id: j.id,
            at,
            pri: j.pri,
            delay_s: j.delay_s,
            state,
            counts: j.all_counts(),
            error: j.error(),
        });
    }

    /// Logs a job's complete state (compaction rewrites live jobs so).
    pub(crate) fn log_full(&self, s: u32, out: &mut Records) {
        if !out.enabled() {
            return;
        }
        let j = self.slab.get(s);
        let reserved = j.state == State::Reserved;
        // A running job is written as it was before this reservation: the
        // `Reserve` that follows adds the reservation back on replay.
        let mut counts = j.all_counts();
        if reserved {
            counts.reserves = counts.reserves.saturating_sub(1);
        }
        out.put(&PutRec {
            id: j.id,
            queue: self.q(j.queue).map_or("", |x| &x.name),
            pri: j.pri,
            ttr_s: j.ttr_s,
            delay_s: j.delay_s,
            max_attempts: j.max_attempts,
            state: if reserved { State::Ready } else { j.state },
            at: if reserved { 0 } else { j.at },
            created: j.created,
            counts,
            unique: j.unique(),
            error: j.error(),
            deadline: j.deadline(),
            payload: j.payload.bytes(),
        });
        // Only a logged reservation: one a runtime took without logging
        // (offered, never run yet) must not come back as interrupted.
        if reserved && j.logged {
            out.id_only(kind::RESERVE, j.id);
        }
        if j.cancelled() {
            out.id_only(kind::CANCEL, j.id);
        }
    }

    /// Logs every live job's complete state, queue policies and the id
    /// mark: what a fresh log needs to rebuild this table (compaction
    /// writes this, or the part of it for the jobs of released segments).
    pub fn snapshot(&self, out: &mut Records) {
        for (_, s) in self.ids.iter() {
            self.log_full(s, out);
        }
        self.snapshot_meta(out);
    }

    /// Logs what a snapshot holds besides jobs: each configured queue's
    /// policy and limits, the schedules, and the id mark (a compaction that rewrote the jobs itself
    /// ends with this).
    pub fn snapshot_meta(&self, out: &mut Records) {
        for x in self.queues.iter().flatten() {
            if x.configured {
                out.queue(&x.name, &x.policy);
                if !x.gate.limits.is_none() {
                    out.limits(&x.name, &x.gate.limits);
                }
            }
        }
        self.snapshot_schedules(out);
        out.id_only(kind::ID_MARK, self.next_id);
    }

    /// Logs job `id`'s complete state (compaction: a live job whose latest
    /// full record is in a segment about to go).
    pub fn rewrite(&self, id: u64, out: &mut Records) -> bool {
        match self.slot(id) {
            Some(s) => {
                self.log_full(s, out);
                true
            }
            None => false,
        }
    }

    /// Logs the id mark (ids below [`Table::next_id`] were handed out).
    pub fn mark_ids(&self, out: &mut Records) {
        out.id_only(kind::ID_MARK, self.next_id);
    }

    /// The job's policy: its queue's, with its own attempt limit.
    pub(crate) fn policy_of(&self, s: u32) -> RetryPolicy {
        let j = self.slab.get(s);
        let mut p = self.q(j.queue).map_or(self.cfg.policy, |x| x.policy);
        if j.max_attempts != 0 {
            p.max_attempts = j.max_attempts;
        }
        p
    }
}

enum PayloadIn<'a> {
    Borrowed(&'a [u8]),
    Owned(Vec<u8>),
}

impl PayloadIn<'_> {
    fn len(&self) -> usize {
        match self {
            PayloadIn::Borrowed(b) => b.len(),
            PayloadIn::Owned(v) => v.len(),
        }
    }
}
