//! The table's log records: what each change writes, byte by byte, and
//! the decoder that replay uses. `docs/record-format.md` is the reference;
//! golden-byte tests below pin it.
//!
//! The table writes records into a [`Records`] buffer that the caller owns
//! and drains, typically once per loop iteration, as the payload of one
//! WAL frame of kind [`WAL_KIND`] (split at record boundaries with
//! [`Records::chunks`] when it exceeds a frame). Each record is
//!
//! ```text
//! kind: u8 | len: u32 LE | body: len bytes
//! ```
//!
//! and every integer in a body is little-endian. Encoding is plain byte
//! appends into the caller's buffer: no allocation once it has grown, no
//! per-record frame or checksum (the WAL frame's CRC covers the batch).

use crate::job::{Counts, State};
use crate::limit::{Limits, OnExpiry, Rate};
use crate::retry::RetryPolicy;
use crate::schedule::Missed;
use crate::time::Time;
use crate::when::When;
use std::time::Duration;

/// The WAL frame kind whose payload is a sequence of table records.
pub const WAL_KIND: u8 = 16;

/// The largest frame of records a front-end writes ([`Records::frames`]);
/// a single larger record is a frame of its own.
pub const FRAME_BYTES: usize = 256 << 10;

/// Record kinds.
pub mod kind {
    /// A job with its complete state.
    pub const PUT: u8 = 1;
    /// One more reservation (an attempt that a crash may interrupt).
    pub const RESERVE: u8 = 2;
    /// A job's new state, priority, due time and counters.
    pub const MOVE: u8 = 3;
    /// A job is gone.
    pub const DELETE: u8 = 4;
    /// Ids below this were handed out.
    pub const ID_MARK: u8 = 5;
    /// A queue's retry policy.
    pub const QUEUE: u8 = 6;
    /// Several jobs are gone.
    pub const DELETES: u8 = 7;
    /// A queue's limits.
    pub const LIMITS: u8 = 8;
    /// A reserved job was cancelled.
    pub const CANCEL: u8 = 9;
    /// A schedule with its state.
    pub const SCHEDULE: u8 = 10;
    /// A schedule is gone.
    pub const UNSCHEDULE: u8 = 11;
    /// A schedule's tick, with the job it put.
    pub const FIRE: u8 = 12;
}

const HEADER: usize = 5;
const F_COUNTS: u8 = 1;
const F_UNIQUE: u8 = 2;
const F_ERROR: u8 = 4;
const F_DEADLINE: u8 = 8;
const L_RATE: u8 = 1;
const L_BURY_EXPIRED: u8 = 2;
const S_PAUSED: u8 = 1;
const S_SKIP_MISSED: u8 = 2;
const S_NO_OVERLAP: u8 = 4;
const S_TICKED: u8 = 8;
const Q_INTERRUPTIONS_USE_ATTEMPTS: u8 = 1;

/// A buffer of encoded records, owned by the caller.
#[derive(Debug, Default)]
pub struct Records {
    buf: Vec<u8>,
    count: usize,
    off: bool,
}

impl Records {
    /// An empty buffer that records changes.
    pub fn new() -> Records {
        Records::default()
    }

    /// A buffer that records nothing (a table without a log: encoding is
    /// skipped altogether).
    pub fn disabled() -> Records {
        Records { off: true, ..Records::default() }
    }

    /// Whether changes are recorded.
    pub fn enabled(&self) -> bool {
        !self.off
    }

    /// The encoded records.
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// How many records.
    pub fn len(&self) -> usize {
        self.count
    }

    /// No records.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Appends `other`'s records after these.
    pub fn append(&mut self, other: &Records) {
        self.buf.extend_from_slice(&other.buf);
        self.count += other.count;
    }

    /// Forgets the records (keeps the capacity).
    pub fn clear(&mut self) {
        self.buf.clear();
        self.count = 0;
    }

    /// The records as WAL frame payloads: pieces of at most
    /// [`FRAME_BYTES`], and at most `max_payload` (the log's own limit).
    pub fn frames(&self, max_payload: u64) -> Chunks<'_> {
        self.chunks(FRAME_BYTES.min(usize::try_from(max_payload).unwrap_or(usize::MAX)))
    }

    /// The records in pieces of at most `max` bytes, split between records
    /// (a single record larger than `max` is a piece of its own).
    pub fn chunks(&self, max: usize) -> Chunks<'_> {
        Chunks { rest: &self.buf, max }
    }

    fn begin(&mut self, kind: u8) -> usize {
        self.buf.push(kind);
        self.buf.extend_from_slice(&[0; 4]);
        self.buf.len()
    }

    fn end(&mut self, start: usize) {
        let len = (self.buf.len() - start) as u32;
        self.buf[start - 4..start].copy_from_slice(&len.to_le_bytes());
        self.count += 1;
    }

    fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    fn counts(&mut self, c: &Counts) {
        for v in [c.reserves, c.timeouts, c.releases, c.buries, c.kicks, c.interrupted] {
            self.u32(v);
        }
    }
    fn text16(&mut self, s: &str) {
        let b = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
        self.buf.extend_from_slice(&(b.len() as u16).to_le_bytes());
        self.buf.extend_from_slice(b);
    }

    /// Appends a `Put` record (a runtime whose producers log new jobs
    /// themselves, before the table sees them).
    pub fn push_put(&mut self, p: &PutRec<'_>) {
        self.put(p);
    }

    /// Appends a `Reserve` record (a runtime that logs a reservation when
    /// its run starts rather than when the job was taken).
    pub fn push_reserve(&mut self, id: u64) {
        self.id_only(kind::RESERVE, id);
    }

    /// Appends a `Delete` record (a runtime that completes a job the table
    /// never held: its `Put` and `Reserve` are in the log).
    pub fn push_delete(&mut self, id: u64) {
        self.id_only(kind::DELETE, id);
    }

    pub(crate) fn put(&mut self, p: &PutRec<'_>) {
        if self.off {
            return;
        }
        let counts = p.counts != Counts::default();
        let flags = (if counts { F_COUNTS } else { 0 })
            | (if p.unique.is_some() { F_UNIQUE } else { 0 })
            | (if p.error.is_some() { F_ERROR } else { 0 })
            | (if p.deadline.is_some() { F_DEADLINE } else { 0 });
        let q = &p.queue.as_bytes()[..p.queue.len().min(255)];
        let t16 = |s: Option<&str>| s.map_or(0, |s| 2 + s.len().min(u16::MAX as usize));
        let body = 43
            + q.len()
            + if counts { 24 } else { 0 }
            + t16(p.unique)
            + t16(p.error)
            + if p.deadline.is_some() { 8 } else { 0 }
            + p.payload.len();
        let mut h = [0u8; HEADER + 43];
        h[0] = kind::PUT;
        h[1..5].copy_from_slice(&(body as u32).to_le_bytes());
        h[5..13].copy_from_slice(&p.id.to_le_bytes());
        h[13..21].copy_from_slice(&p.created.0.to_le_bytes());
        h[21..29].copy_from_slice(&p.at.to_le_bytes());
        h[29..33].copy_from_slice(&p.pri.to_le_bytes());
        h[33..37].copy_from_slice(&p.ttr_s.to_le_bytes());
        h[37..41].copy_from_slice(&p.delay_s.to_le_bytes());
        h[41..45].copy_from_slice(&p.max_attempts.to_le_bytes());
        h[45] = p.state.code();
        h[46] = flags;
        h[47] = q.len() as u8;
        self.buf.reserve(HEADER + body);
        self.buf.extend_from_slice(&h);
        self.buf.extend_from_slice(q);
        if counts {
            self.counts(&p.counts);
        }
        if let Some(u) = p.unique {
            self.text16(u);
        }
        if let Some(e) = p.error {
            self.text16(e);
        }
        if let Some(d) = p.deadline {
            self.u64(d.0);
        }
        self.buf.extend_from_slice(p.payload);
        self.count += 1;
    }

    /// Appends a `Cancel` record.
    pub(crate) fn cancel(&mut self, id: u64) {
        self.id_only(kind::CANCEL, id);
    }

    fn text8(&mut self, s: &str) {
        let b = &s.as_bytes()[..s.len().min(255)];
        self.u8(b.len() as u8);
        self.buf.extend_from_slice(b);
    }

    pub(crate) fn limits(&mut self, queue: &str, l: &Limits) {
        if self.off {
            return;
        }
        let start = self.begin(kind::LIMITS);
        let flags = (if l.rate.is_some() { L_RATE } else { 0 })
            | (if l.on_expiry == OnExpiry::Bury { L_BURY_EXPIRED } else { 0 });
        self.u8(flags);
        self.u32(l.concurrency);
        let r = l.rate.unwrap_or(Rate { starts: 0, per: Duration::ZERO, burst: 0 });
        self.u32(r.starts);
        self.u64(u64::try_from(r.per.as_nanos()).unwrap_or(u64::MAX));
        self.u32(r.burst);
        self.text8(queue);
        self.end(start);
    }

    pub(crate) fn schedule(&mut self, r: &ScheduleRec<'_>) {
        if self.off {
            return;
        }
        let start = self.begin(kind::SCHEDULE);
        self.text8(r.queue);
        self.text8(r.name);
        match r.when {
            WhenRec::Cron { expr, tz } => {
                self.u8(0);
                self.text16(expr);
                self.text8(tz);
            }
            WhenRec::Every(d) => {
                self.u8(1);
                self.u64(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
            }
        }
        self.u64(r.anchor.0);
        self.u32(r.pri);
        self.u32(r.ttr_s);
        self.u32(r.max_attempts);
        let flags = (if r.paused { S_PAUSED } else { 0 })
            | (if r.missed == Missed::Skip { S_SKIP_MISSED } else { 0 })
            | (if r.no_overlap { S_NO_OVERLAP } else { 0 })
            | (if r.last_tick.is_some() { S_TICKED } else { 0 });
        self.u8(flags);
        self.u64(r.last_tick.map_or(0, |t| t.0));
        self.u64(r.last_job);
        self.buf.extend_from_slice(r.payload);
        self.end(start);
    }

    pub(crate) fn unschedule(&mut self, queue: &str, name: &str) {
        if self.off {
            return;
        }
        let start = self.begin(kind::UNSCHEDULE);
        self.text8(queue);
        self.text8(name);
        self.end(start);
    }

    /// A `Fire` record: the tick, and the job's `Put` record (`put`, one
    /// encoded record, empty for a skipped tick) inside it.
    pub(crate) fn fire(&mut self, queue: &str, name: &str, tick: Time, job: u64, put: &[u8]) {
        if self.off {
            return;
        }
        let start = self.begin(kind::FIRE);
        self.text8(queue);
        self.text8(name);
        self.u64(tick.0);
        self.u64(job);
        self.buf.extend_from_slice(put);
        self.end(start);
    }

    pub(crate) fn id_only(&mut self, k: u8, id: u64) {
        if self.off {
            return;
        }
        let mut h = [0u8; HEADER + 8];
        h[0] = k;
        h[1..5].copy_from_slice(&8u32.to_le_bytes());
        h[5..].copy_from_slice(&id.to_le_bytes());
        self.buf.extend_from_slice(&h);
        self.count += 1;
    }

    pub(crate) fn moved(&mut self, m: &MoveRec<'_>) {
        if self.off {
            return;
        }
        let start = self.begin(kind::MOVE);
        self.u64(m.id);
        self.u64(m.at);
        self.u32(m.pri);
        self.u32(m.delay_s);
        self.u8(m.state.code());
        self.u8(if m.error.is_some() { F_ERROR } else { 0 });
        self.counts(&m.counts);
        if let Some(e) = m.error {
            self.text16(e);
        }
        self.end(start);
    }

    pub(crate) fn queue(&mut self, name: &str, p: &RetryPolicy) {
        if self.off {
            return;
        }
        let start = self.begin(kind::QUEUE);
        self.u32(p.max_attempts);
        self.u64(u64::try_from(p.backoff_base.as_millis()).unwrap_or(u64::MAX));
        self.u64(u64::try_from(p.backoff_cap.as_millis()).unwrap_or(u64::MAX));
        self.u32(p.poison_after);
        self.u8(if p.interruptions_use_attempts { Q_INTERRUPTIONS_USE_ATTEMPTS } else { 0 });
        let q = &name.as_bytes()[..name.len().min(255)];
        self.u8(q.len() as u8);
        self.buf.extend_from_slice(q);
        self.end(start);
    }

    pub(crate) fn deletes(&mut self, ids: &[u64]) {
        if self.off || ids.is_empty() {
            return;
        }
        let start = self.begin(kind::DELETES);
        for &id in ids {
            self.u64(id);
        }
        self.end(start);
    }
}

/// Pieces of a [`Records`] buffer, split between records.
#[derive(Debug)]
pub struct Chunks<'a> {
    rest: &'a [u8],
    max: usize,
}

impl<'a> Iterator for Chunks<'a> {
    type Item = &'a [u8];
    fn next(&mut self) -> Option<&'a [u8]> {
        if self.rest.is_empty() {
            return None;
        }
        if self.rest.len() <= self.max {
            // All of it fits (a command's few records, the usual case):
            // no need to walk the records (the buffer is `Records`' own,
            // so well formed).
            return Some(std::mem::take(&mut self.rest));
        }
        let mut end = 0;
        while end + HEADER <= self.rest.len() {
            let len = u32::from_le_bytes([
                self.rest[end + 1],
                self.rest[end + 2],
                self.rest[end + 3],
                self.rest[end + 4],
            ]) as usize;
            let next = end + HEADER + len;
            if end > 0 && next > self.max {
                break;
            }
            end = next.min(self.rest.len());
        }
        let (piece, rest) = self.rest.split_at(end.max(1).min(self.rest.len()));
        self.rest = rest;
        Some(piece)
    }
}

/// A job's complete state (kind 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PutRec<'a> {
    /// Job id.
    pub id: u64,
    /// Queue name.
    pub queue: &'a str,
    /// Priority (0 most urgent).
    pub pri: u32,
    /// Lease length in seconds (0: no deadline).
    pub ttr_s: u32,
    /// The delay it was put or last released with, in seconds.
    pub delay_s: u32,
    /// Per-job attempt limit (0: the queue's policy).
    pub max_attempts: u32,
    /// Ready, delayed or buried (a reserved job is logged as ready).
    pub state: State,
    /// Delayed: due time (ns since the epoch). Buried: position in the
    /// queue's buried order. Otherwise 0.
    pub at: u64,
    /// When it was put.
    pub created: Time,
    /// Its counters.
    pub counts: Counts,
    /// Its unique key.
    pub unique: Option<&'a str>,
    /// Its last error.
    pub error: Option<&'a str>,
    /// Not handed out after this.
    pub deadline: Option<Time>,
    /// Its payload.
    pub payload: &'a [u8],
}

/// A job's new state (kind 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MoveRec<'a> {
    /// Job id.
    pub id: u64,
    /// As in [`PutRec::at`].
    pub at: u64,
    /// Priority.
    pub pri: u32,
    /// Last delay, seconds.
    pub delay_s: u32,
    /// Ready, delayed or buried.
    pub state: State,
    /// Counters, absolute.
    pub counts: Counts,
    /// Last error.
    pub error: Option<&'a str>,
}

/// A queue's retry policy (kind 6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueRec<'a> {
    /// Queue name.
    pub name: &'a str,
    /// The policy (backoff times in whole milliseconds).
    pub policy: RetryPolicy,
}

/// A schedule's rule, as a record holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhenRec<'a> {
    /// A cron expression in a time zone.
    Cron {
        /// The expression.
        expr: &'a str,
        /// The IANA time zone.
        tz: &'a str,
    },
    /// A fixed interval.
    Every(Duration),
}

impl<'a> WhenRec<'a> {
    /// The record form of `w`.
    pub fn of(w: &'a When) -> WhenRec<'a> {
        match w {
            When::Cron { expr, tz } => WhenRec::Cron { expr, tz },
            When::Every(d) => WhenRec::Every(*d),
        }
    }

    /// The rule.
    pub fn to_when(&self) -> When {
        match *self {
            WhenRec::Cron { expr, tz } => When::Cron { expr: expr.into(), tz: tz.into() },
            WhenRec::Every(d) => When::Every(d),
        }
    }
}

/// A schedule with its state (kind 10).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScheduleRec<'a> {
    /// Its queue's name.
    pub queue: &'a str,
    /// Its name.
    pub name: &'a str,
    /// When it ticks.
    pub when: WhenRec<'a>,
    /// When an interval counts from.
    pub anchor: Time,
    /// The job's priority.
    pub pri: u32,
    /// The job's TTR, seconds.
    pub ttr_s: u32,
    /// The job's attempt limit.
    pub max_attempts: u32,
    /// Missed ticks' policy.
    pub missed: Missed,
    /// Skip a tick while the previous tick's job is live.
    pub no_overlap: bool,
    /// Paused.
    pub paused: bool,
    /// Its last tick.
    pub last_tick: Option<Time>,
    /// The job of its last fired tick (0: none).
    pub last_job: u64,
    /// The job's payload.
    pub payload: &'a [u8],
}

/// One decoded record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Record<'a> {
    /// Kind 1.
    Put(PutRec<'a>),
    /// Kind 2.
    Reserve {
        /// Job id.
        id: u64,
    },
    /// Kind 3.
    Move(MoveRec<'a>),
    /// Kind 4.
    Delete {
        /// Job id.
        id: u64,
    },
    /// Kind 5.
    IdMark {
        /// Ids below this were handed out.
        next_id: u64,
    },
    /// Kind 6.
    Queue(QueueRec<'a>),
    /// Kind 7: the ids, 8 bytes each.
    Deletes(&'a [u8]),
    /// Kind 8.
    Limits {
        /// Queue name.
        queue: &'a str,
        /// The limits.
        limits: Limits,
    },
    /// Kind 9.
    Cancel {
        /// Job id.
        id: u64,
    },
    /// Kind 10.
    Schedule(ScheduleRec<'a>),
    /// Kind 11.
    Unschedule {
        /// Queue name.
        queue: &'a str,
        /// Schedule name.
        name: &'a str,
    },
    /// Kind 12.
    Fire {
        /// Queue name.
        queue: &'a str,
        /// Schedule name.
        name: &'a str,
        /// The tick.
        tick: Time,
        /// The job it put (0: skipped).
        job: u64,
        /// That job's `Put`.
        put: Option<PutRec<'a>>,
    },
}

impl Record<'_> {
    /// The ids of a `Deletes` record (empty for other kinds).
    pub fn deleted_ids(&self) -> impl Iterator<Item = u64> + '_ {
        let b: &[u8] = match self {
            Record::Deletes(b) => b,
            _ => &[],
        };
        b.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
    }
}

/// Why a record could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The buffer ends inside a record.
    #[error("record at byte {at} is cut short ({need} bytes needed, {have} left)")]
    Short {
        /// Offset of the record in the frame.
        at: usize,
        /// Bytes it needs.
        need: usize,
        /// Bytes there are.
        have: usize,
    },
    /// An unknown record kind (a newer version wrote it).
    #[error("record at byte {at} has unknown kind {kind}: written by a newer version?")]
    Kind {
        /// Offset.
        at: usize,
        /// The kind byte.
        kind: u8,
    },
    /// A field holds an impossible value.
    #[error("record at byte {at} is malformed: {what}")]
    Malformed {
        /// Offset.
        at: usize,
        /// What is wrong.
        what: &'static str,
    },
}

/// Decodes the records of one frame payload, in order.
pub fn decode(frame: &[u8]) -> Decoder<'_> {
    Decoder { buf: frame, pos: 0 }
}

/// Iterator over a frame's records; stops after the first error.
#[derive(Debug)]
pub struct Decoder<'a> {
    buf: &'a [u8],
    pos: usize,
}

struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.b.len() < n {
            return Err(DecodeError::Malformed { at: self.at, what });
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        let b = self.take(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        let b = self.take(8, what)?;
        let mut a = [0; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn text(&mut self, n: usize, what: &'static str) -> Result<&'a str, DecodeError> {
        let b = self.take(n, what)?;
        std::str::from_utf8(b).map_err(|_| DecodeError::Malformed { at: self.at, what })
    }
    fn text8(&mut self, what: &'static str) -> Result<&'a str, DecodeError> {
        let n = usize::from(self.u8(what)?);
        self.text(n, what)
    }
    fn counts(&mut self) -> Result<Counts, DecodeError> {
        Ok(Counts {
            reserves: self.u32("counts")?,
            timeouts: self.u32("counts")?,
            releases: self.u32("counts")?,
            buries: self.u32("counts")?,
            kicks: self.u32("counts")?,
            interrupted: self.u32("counts")?,
        })
    }
    fn state(&mut self) -> Result<State, DecodeError> {
        match State::from_code(self.u8("state")?) {
            Some(State::Reserved) | None => {
                Err(DecodeError::Malformed { at: self.at, what: "state" })
            }
            Some(s) => Ok(s),
        }
    }
    fn done(&self) -> Result<(), DecodeError> {
        if self.b.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Malformed { at: self.at, what: "trailing bytes" })
        }
    }
}

fn decode_one(k: u8, body: &[u8], at: usize) -> Result<Record<'_>, DecodeError> {
    let mut c = Cursor { b: body, at };
    let rec = match k {
        kind::PUT => {
            let id = c.u64("id")?;
            let created = Time(c.u64("created")?);
            let at_v = c.u64("at")?;
            let pri = c.u32("pri")?;
            let ttr_s = c.u32("ttr")?;
            let delay_s = c.u32("delay")?;
            let max_attempts = c.u32("max attempts")?;
            let state = c.state()?;
            let flags = c.u8("flags")?;
            if flags & !(F_COUNTS | F_UNIQUE | F_ERROR | F_DEADLINE) != 0 {
                return Err(DecodeError::Malformed { at, what: "flags" });
            }
            let qlen = usize::from(c.u8("queue length")?);
            let queue = c.text(qlen, "queue name")?;
            let counts = if flags & F_COUNTS != 0 { c.counts()? } else { Counts::default() };
            let unique = if flags & F_UNIQUE != 0 {
                let n = usize::from(c.u16("unique key")?);
                Some(c.text(n, "unique key")?)
            } else {
                None
            };
            let error = if flags & F_ERROR != 0 {
                let n = usize::from(c.u16("error")?);
                Some(c.text(n, "error")?)
            } else {
                None
            };
            let deadline =
                if flags & F_DEADLINE != 0 { Some(Time(c.u64("deadline")?)) } else { None };
            Record::Put(PutRec {
                id,
                queue,
                pri,
                ttr_s,
                delay_s,
                max_attempts,
                state,
                at: at_v,
                created,
                counts,
                unique,
                error,
                deadline,
                payload: c.b,
            })
        }
        kind::CANCEL => {
            let id = c.u64("id")?;
            c.done()?;
            Record::Cancel { id }
        }
        kind::LIMITS => {
            let flags = c.u8("flags")?;
            if flags & !(L_RATE | L_BURY_EXPIRED) != 0 {
                return Err(DecodeError::Malformed { at, what: "flags" });
            }
            let concurrency = c.u32("concurrency")?;
            let starts = c.u32("rate starts")?;
            let per = Duration::from_nanos(c.u64("rate period")?);
            let burst = c.u32("rate burst")?;
            let queue = c.text8("queue name")?;
            c.done()?;
            let limits = Limits {
                concurrency,
                rate: (flags & L_RATE != 0).then_some(Rate { starts, per, burst }),
                on_expiry: if flags & L_BURY_EXPIRED != 0 {
                    OnExpiry::Bury
                } else {
                    OnExpiry::Delete
                },
            };
            if limits.check().is_err() {
                return Err(DecodeError::Malformed { at, what: "rate" });
            }
            Record::Limits { queue, limits }
        }
        kind::SCHEDULE => {
            let queue = c.text8("queue name")?;
            let name = c.text8("schedule name")?;
            let when = match c.u8("rule kind")? {
                0 => {
                    let n = usize::from(c.u16("cron")?);
                    let expr = c.text(n, "cron")?;
                    let tz = c.text8("time zone")?;
                    WhenRec::Cron { expr, tz }
                }
                1 => WhenRec::Every(Duration::from_nanos(c.u64("interval")?)),
                _ => return Err(DecodeError::Malformed { at, what: "rule kind" }),
            };
            let anchor = Time(c.u64("anchor")?);
            let pri = c.u32("pri")?;
            let ttr_s = c.u32("ttr")?;
            let max_attempts = c.u32("max attempts")?;
            let flags = c.u8("flags")?;
            if flags & !(S_PAUSED | S_SKIP_MISSED | S_NO_OVERLAP | S_TICKED) != 0 {
                return Err(DecodeError::Malformed { at, what: "flags" });
            }
            let last_tick = Time(c.u64("last tick")?);
            let last_job = c.u64("last job")?;
            Record::Schedule(ScheduleRec {
                queue,
                name,
                when,
                anchor,
                pri,
                ttr_s,
                max_attempts,
                missed: if flags & S_SKIP_MISSED != 0 { Missed::Skip } else { Missed::RunOnce },
                no_overlap: flags & S_NO_OVERLAP != 0,
                paused: flags & S_PAUSED != 0,
                last_tick: (flags & S_TICKED != 0).then_some(last_tick),
                last_job,
                payload: c.b,
            })
        }
        kind::UNSCHEDULE => {
            let queue = c.text8("queue name")?;
            let name = c.text8("schedule name")?;
            c.done()?;
            Record::Unschedule { queue, name }
        }
        kind::FIRE => {
            let queue = c.text8("queue name")?;
            let name = c.text8("schedule name")?;
            let tick = Time(c.u64("tick")?);
            let job = c.u64("job")?;
            let put = if job == 0 {
                c.done()?;
                None
            } else {
                let inner = c.b;
                if inner.len() < HEADER || inner[0] != kind::PUT {
                    return Err(DecodeError::Malformed { at, what: "fired job" });
                }
                let len = u32::from_le_bytes([inner[1], inner[2], inner[3], inner[4]]) as usize;
                if inner.len() != HEADER + len {
                    return Err(DecodeError::Malformed { at, what: "fired job" });
                }
                match decode_one(kind::PUT, &inner[HEADER..], at)? {
                    Record::Put(p) if p.id == job => Some(p),
                    _ => return Err(DecodeError::Malformed { at, what: "fired job" }),
                }
            };
            Record::Fire { queue, name, tick, job, put }
        }
        kind::RESERVE | kind::DELETE | kind::ID_MARK => {
            let v = c.u64("id")?;
            c.done()?;
            match k {
                kind::RESERVE => Record::Reserve { id: v },
                kind::DELETE => Record::Delete { id: v },
                _ => Record::IdMark { next_id: v },
            }
        }
        kind::MOVE => {
            let id = c.u64("id")?;
            let at_v = c.u64("at")?;
            let pri = c.u32("pri")?;
            let delay_s = c.u32("delay")?;
            let state = c.state()?;
            let flags = c.u8("flags")?;
            if flags & !F_ERROR != 0 {
                return Err(DecodeError::Malformed { at, what: "flags" });
            }
            let counts = c.counts()?;
            let error = if flags & F_ERROR != 0 {
                let n = usize::from(c.u16("error")?);
                Some(c.text(n, "error")?)
            } else {
                None
            };
            c.done()?;
            Record::Move(MoveRec { id, at: at_v, pri, delay_s, state, counts, error })
        }
        kind::QUEUE => {
            let max_attempts = c.u32("max attempts")?;
            let base = c.u64("backoff base")?;
            let cap = c.u64("backoff cap")?;
            let poison_after = c.u32("poison after")?;
            let flags = c.u8("flags")?;
            if flags & !Q_INTERRUPTIONS_USE_ATTEMPTS != 0 {
                return Err(DecodeError::Malformed { at, what: "flags" });
            }
            let n = usize::from(c.u8("queue length")?);
            let name = c.text(n, "queue name")?;
            c.done()?;
            Record::Queue(QueueRec {
                name,
                policy: RetryPolicy {
                    max_attempts,
                    backoff_base: Duration::from_millis(base),
                    backoff_cap: Duration::from_millis(cap),
                    poison_after,
                    interruptions_use_attempts: flags & Q_INTERRUPTIONS_USE_ATTEMPTS != 0,
                },
            })
        }
        kind::DELETES => {
            if body.len() % 8 != 0 {
                return Err(DecodeError::Malformed { at, what: "ids" });
            }
            Record::Deletes(body)
        }
        other => return Err(DecodeError::Kind { at, kind: other }),
    };
    Ok(rec)
}

impl<'a> Iterator for Decoder<'a> {
    type Item = Result<Record<'a>, DecodeError>;
    fn next(&mut self) -> Option<Self::Item> {
        let rest = &self.buf[self.pos..];
        if rest.is_empty() {
            return None;
        }
        let at = self.pos;
        if rest.len() < HEADER {
            self.pos = self.buf.len();
            return Some(Err(DecodeError::Short { at, need: HEADER, have: rest.len() }));
        }
        let len = u32::from_le_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        if rest.len() - HEADER < len {
            self.pos = self.buf.len();
            return Some(Err(DecodeError::Short { at, need: HEADER + len, have: rest.len() }));
        }
        let r = decode_one(rest[0], &rest[HEADER..HEADER + len], at);
        self.pos = if r.is_ok() { at + HEADER + len } else { self.buf.len() };
        Some(r)
    }
}

#[cfg(test)]
mod tests;
