//! A job as the table keeps it, and the slab that holds them.
//!
//! Jobs live in one `Vec` of slots, found through [`crate::idmap`]; a freed
//! slot is reused by the next put, so a steady load allocates nothing for
//! the table itself. A payload of up to [`INLINE`] bytes is stored in the
//! slot; a larger one takes one allocation. `prev`/`next` link a job into
//! its queue's ready FIFO or buried list (a job is in at most one).

use crate::time::Time;

/// Payloads up to this many bytes live inside the job's slot.
pub const INLINE: usize = 22;
pub(crate) const NIL: u32 = u32::MAX;

/// A job's payload: inline when small (no allocation), else on the heap.
/// Also what a runtime hands between threads (the engine's `Task`).
#[derive(Clone, Debug)]
pub enum Payload {
    /// Up to [`INLINE`] bytes: the length and the bytes.
    Inline(u8, [u8; INLINE]),
    /// Longer.
    Heap(Box<[u8]>),
}

impl Payload {
    /// A copy of `bytes`.
    #[inline]
    pub fn new(bytes: &[u8]) -> Payload {
        if bytes.len() <= INLINE {
            Payload::Inline(bytes.len() as u8, inline_copy(bytes))
        } else {
            Payload::Heap(bytes.into())
        }
    }

    pub(crate) fn from_vec(bytes: Vec<u8>) -> Payload {
        if bytes.len() <= INLINE {
            Payload::new(&bytes)
        } else {
            Payload::Heap(bytes.into_boxed_slice())
        }
    }

    /// The bytes.
    #[inline]
    pub fn bytes(&self) -> &[u8] {
        match self {
            Payload::Inline(n, b) => &b[..usize::from(*n)],
            Payload::Heap(b) => b,
        }
    }
}

/// `bytes` (at most [`INLINE`] of them) in an inline buffer, copied with
/// two fixed-size, overlapping moves (a `copy_from_slice` of a variable
/// length is a call to `memcpy`, ~25 instructions per put).
#[inline]
fn inline_copy(bytes: &[u8]) -> [u8; INLINE] {
    let mut b = [0u8; INLINE];
    let n = bytes.len().min(INLINE);
    if n >= 16 {
        b[..16].copy_from_slice(&bytes[..16]);
        b[n - 16..n].copy_from_slice(&bytes[n - 16..n]);
    } else if n >= 8 {
        b[..8].copy_from_slice(&bytes[..8]);
        b[n - 8..n].copy_from_slice(&bytes[n - 8..n]);
    } else {
        for (d, s) in b.iter_mut().zip(bytes) {
            *d = *s;
        }
    }
    b
}

/// Where a job is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Waiting to be reserved.
    Ready,
    /// Waiting for its due time (a delay or a retry's backoff).
    Delayed,
    /// Leased to a holder.
    Reserved,
    /// Dead letter: waits for a kick.
    Buried,
}

impl State {
    pub(crate) fn code(self) -> u8 {
        match self {
            State::Ready => 0,
            State::Delayed => 1,
            State::Buried => 2,
            State::Reserved => 3,
        }
    }

    pub(crate) fn from_code(c: u8) -> Option<State> {
        Some(match c {
            0 => State::Ready,
            1 => State::Delayed,
            2 => State::Buried,
            3 => State::Reserved,
            _ => return None,
        })
    }
}

/// A job's counters (beanstalkd's `stats-job` fields, plus the runs in a
/// row that ended without an outcome).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Reservations: the attempts so far.
    pub reserves: u32,
    /// Leases that expired.
    pub timeouts: u32,
    /// Releases, including retries after `fail`.
    pub releases: u32,
    /// Burials.
    pub buries: u32,
    /// Kicks.
    pub kicks: u32,
    /// Runs in a row that ended without an outcome (timeout, holder gone,
    /// crash); an outcome resets it.
    pub interrupted: u32,
}

/// The counters every run touches, kept in the slot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Hot {
    /// [`Counts::reserves`] (also the lease token).
    pub reserves: u32,
    /// [`Counts::interrupted`].
    pub interrupted: u32,
}

/// The counters of rarer events ([`Counts`]' other fields), in [`Extra`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Rare {
    pub timeouts: u32,
    pub releases: u32,
    pub buries: u32,
    pub kicks: u32,
}

/// A rare counter to add one to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Bump {
    Timeout,
    Release,
    Bury,
    Kick,
}

/// Rarely set fields, boxed so most jobs do not pay for them: a job that
/// was never released, buried, kicked or timed out, has no unique key and
/// no error has none.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Extra {
    pub unique: Option<Box<str>>,
    pub error: Option<Box<str>>,
    pub rare: Rare,
    /// Not handed out after this (`expiry.rs`).
    pub deadline: Option<Time>,
    /// Cancelled while reserved (`cancel.rs`).
    pub cancelled: bool,
}

impl Extra {
    /// The box a job with these fields needs, if any.
    pub(crate) fn boxed(
        unique: Option<Box<str>>,
        error: Option<Box<str>>,
        rare: Rare,
        deadline: Option<Time>,
    ) -> Option<Box<Extra>> {
        let x = Extra { unique, error, rare, deadline, cancelled: false };
        (x != Extra::default()).then(|| Box::new(x))
    }
}

/// Where a ready job is queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Place {
    /// Not in a ready structure.
    None,
    /// In its priority's FIFO (fresh puts, in id order).
    Fifo,
    /// In the queue's heap of jobs that became ready again.
    Heap,
}

/// A job's slot.
///
/// `repr(C)` keeps the fields a reservation and a completion touch in
/// its first 64 bytes, beside the links: taking a FIFO's head writes
/// the next job's `prev`, which brings that job's line in before its own
/// reservation reads it (a backlog's jobs are cold by then).
#[derive(Clone, Debug)]
#[repr(C)]
pub(crate) struct Slot {
    pub prev: u32,
    pub next: u32,
    pub id: u64,
    /// Delayed: due time. Reserved: lease deadline (`Time::ZERO` for no
    /// deadline). Buried: position in the queue's buried order.
    pub at: u64,
    /// When it entered its current state (ready: for the wait histogram;
    /// reserved: for the service time).
    pub since: Time,
    pub queue: u32,
    pub pri: u32,
    pub ttr_s: u32,
    /// Who holds the lease while reserved.
    pub holder: u32,
    /// Reservations and interruptions; the other counters are in `extra`
    /// ([`Slot::all_counts`]).
    pub counts: Hot,
    pub state: State,
    pub place: Place,
    /// The slot holds a job (free slots chain through `next`).
    pub live: bool,
    /// Reserved: the reservation's `Reserve` record was written (a runtime
    /// may reserve a job it only offers, and log the run when it starts).
    pub logged: bool,
    /// Bumped each time the job enters the ready heap: heap entries of
    /// earlier visits are stale.
    pub epoch: u32,
    pub extra: Option<Box<Extra>>,
    pub payload: Payload,
    pub created: Time,
    pub delay_s: u32,
    /// Per-job attempt limit (0: the queue's policy).
    pub max_attempts: u32,
}

/// What a new job's slot is filled with ([`Slot::fill`]).
pub(crate) struct New {
    pub id: u64,
    pub now: Time,
    pub queue: u32,
    pub pri: u32,
    pub ttr_s: u32,
    pub delay_s: u32,
    pub max_attempts: u32,
}

impl Slot {
    /// Makes this free slot a new ready job, field by field (a put builds
    /// its job in place instead of building a `Slot` and copying it in).
    #[inline]
    pub(crate) fn fill(&mut self, n: &New, payload: Payload, extra: Option<Box<Extra>>) {
        self.id = n.id;
        self.created = n.now;
        self.since = n.now;
        self.at = 0;
        self.payload = payload;
        self.extra = extra;
        self.prev = NIL;
        self.next = NIL;
        self.queue = n.queue;
        self.pri = n.pri;
        self.ttr_s = n.ttr_s;
        self.delay_s = n.delay_s;
        self.holder = 0;
        self.max_attempts = n.max_attempts;
        self.epoch = 0;
        self.counts = Hot::default();
        self.state = State::Ready;
        self.place = Place::None;
        self.live = true;
        self.logged = false;
    }

    pub(crate) fn unique(&self) -> Option<&str> {
        self.extra.as_ref().and_then(|x| x.unique.as_deref())
    }

    pub(crate) fn error(&self) -> Option<&str> {
        self.extra.as_ref().and_then(|x| x.error.as_deref())
    }

    /// Sets or clears the last error; the box goes when empty.
    pub(crate) fn set_error(&mut self, e: Option<Box<str>>) {
        match (&mut self.extra, e) {
            (Some(x), e) => {
                x.error = e;
                self.prune();
            }
            (None, Some(e)) => {
                self.extra = Some(Box::new(Extra { error: Some(e), ..Extra::default() }))
            }
            (None, None) => {}
        }
    }

    /// Its deadline (`expiry.rs`).
    #[inline]
    pub(crate) fn deadline(&self) -> Option<Time> {
        self.extra.as_ref().and_then(|x| x.deadline)
    }

    /// Sets or clears its deadline.
    pub(crate) fn set_deadline(&mut self, d: Option<Time>) {
        match &mut self.extra {
            Some(x) => {
                x.deadline = d;
                self.prune();
            }
            None if d.is_some() => {
                self.extra = Some(Box::new(Extra { deadline: d, ..Extra::default() }))
            }
            None => {}
        }
    }

    /// Whether it was cancelled while reserved (`cancel.rs`).
    #[inline]
    pub(crate) fn cancelled(&self) -> bool {
        self.extra.as_ref().is_some_and(|x| x.cancelled)
    }

    /// Marks it cancelled.
    pub(crate) fn set_cancelled(&mut self) {
        self.extra.get_or_insert_with(Box::default).cancelled = true;
    }

    /// Drops an `extra` that holds nothing.
    fn prune(&mut self) {
        if self.extra.as_deref().is_some_and(|x| *x == Extra::default()) {
            self.extra = None;
        }
    }

    /// Every counter.
    pub(crate) fn all_counts(&self) -> Counts {
        let r = self.extra.as_ref().map(|x| x.rare).unwrap_or_default();
        Counts {
            reserves: self.counts.reserves,
            timeouts: r.timeouts,
            releases: r.releases,
            buries: r.buries,
            kicks: r.kicks,
            interrupted: self.counts.interrupted,
        }
    }

    /// Sets every counter.
    pub(crate) fn set_counts(&mut self, c: Counts) {
        self.counts = Hot { reserves: c.reserves, interrupted: c.interrupted };
        let rare =
            Rare { timeouts: c.timeouts, releases: c.releases, buries: c.buries, kicks: c.kicks };
        match &mut self.extra {
            Some(x) => {
                x.rare = rare;
                self.prune();
            }
            None if rare != Rare::default() => {
                self.extra = Some(Box::new(Extra { rare, ..Extra::default() }))
            }
            None => {}
        }
    }

    /// Adds one (saturating) to a rare counter.
    pub(crate) fn bump(&mut self, which: Bump) {
        let x = self.extra.get_or_insert_with(Box::default);
        let c = match which {
            Bump::Timeout => &mut x.rare.timeouts,
            Bump::Release => &mut x.rare.releases,
            Bump::Bury => &mut x.rare.buries,
            Bump::Kick => &mut x.rare.kicks,
        };
        *c = c.saturating_add(1);
    }
}

/// Slots per page of the slab.
const PAGE_BITS: u32 = 12;
const PAGE: usize = 1 << PAGE_BITS;

/// The slots, in pages of 4,096: growing the slab allocates a page and
/// never moves the jobs already in it (a `Vec` of a million 128-byte jobs
/// would copy 128 MB when it doubles, a stall every holder would see).
pub(crate) struct Slab {
    /// Fixed-size pages: indexing one by a masked slot needs no bounds
    /// check, so a lookup is one checked index and two loads.
    pages: Vec<Box<[Slot; PAGE]>>,
    /// Slots handed out (the rest of the last page is unused).
    len: u32,
    free: u32,
}

/// What an unused slot holds.
const FREE: Slot = Slot {
    id: 0,
    created: Time(0),
    since: Time(0),
    at: 0,
    payload: Payload::Inline(0, [0; INLINE]),
    extra: None,
    prev: NIL,
    next: NIL,
    queue: 0,
    pri: 0,
    ttr_s: 0,
    delay_s: 0,
    holder: 0,
    max_attempts: 0,
    epoch: 0,
    counts: Hot { reserves: 0, interrupted: 0 },
    state: State::Ready,
    place: Place::None,
    live: false,
    logged: false,
};

impl Slab {
    pub(crate) fn new() -> Slab {
        Slab { pages: Vec::new(), len: 0, free: NIL }
    }

    /// Stores `job`, returning its slot.
    pub(crate) fn insert(&mut self, job: Slot) -> u32 {
        let s = self.alloc();
        *self.get_mut(s) = job;
        s
    }

    /// A slot for a new job, to be filled in place ([`Slot::fill`]): it
    /// holds a freed job (no payload, no `extra`) or [`FREE`].
    #[inline]
    pub(crate) fn alloc(&mut self) -> u32 {
        if self.free != NIL {
            let s = self.free;
            self.free = self.get(s).next;
            return s;
        }
        self.grow()
    }

    fn grow(&mut self) -> u32 {
        if self.len as usize == self.pages.len() * PAGE {
            let page: Box<[Slot]> = vec![FREE; PAGE].into_boxed_slice();
            match page.try_into() {
                Ok(p) => self.pages.push(p),
                Err(_) => unreachable!("a page has PAGE slots"),
            }
        }
        let s = self.len;
        self.len += 1;
        s
    }

    /// Frees a slot, returning its job's payload and extra.
    pub(crate) fn remove(&mut self, s: u32) -> (Payload, Option<Box<Extra>>) {
        let free = self.free;
        let slot = self.get_mut(s);
        slot.live = false;
        slot.next = free;
        slot.prev = NIL;
        let payload = std::mem::replace(&mut slot.payload, Payload::Inline(0, [0; INLINE]));
        let extra = slot.extra.take();
        self.free = s;
        (payload, extra)
    }

    #[inline]
    pub(crate) fn get(&self, s: u32) -> &Slot {
        &self.pages[(s >> PAGE_BITS) as usize][s as usize & (PAGE - 1)]
    }

    #[inline]
    pub(crate) fn get_mut(&mut self, s: u32) -> &mut Slot {
        &mut self.pages[(s >> PAGE_BITS) as usize][s as usize & (PAGE - 1)]
    }
}

/// A FIFO of jobs linked through their slots: each job's `next` is the
/// one after it, and each job's `prev` but the head's the one before it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct List {
    pub head: u32,
    pub tail: u32,
    pub len: u32,
}

impl Default for List {
    fn default() -> Self {
        List::EMPTY
    }
}

impl List {
    pub(crate) const EMPTY: List = List { head: NIL, tail: NIL, len: 0 };

    #[inline]
    pub(crate) fn push_back(&mut self, slab: &mut Slab, s: u32) {
        let tail = self.tail;
        {
            let j = slab.get_mut(s);
            j.prev = tail;
            j.next = NIL;
        }
        if tail == NIL {
            self.head = s;
        } else {
            slab.get_mut(tail).next = s;
        }
        self.tail = s;
        self.len += 1;
    }

    /// Takes job `s` out. The head's `prev` is not kept up to date (a
    /// head is recognised as `self.head`), so taking the head stores
    /// nothing into the next job's slot: it only asks for that slot's
    /// cache line ([`crate::prefetch`]), which the next reserve of this
    /// FIFO reads. A store there would wait for the line in the store
    /// buffer, which fills (tried: `docs/benchmarks.md`).
    #[inline]
    pub(crate) fn unlink(&mut self, slab: &mut Slab, s: u32) {
        let (prev, next) = {
            let j = slab.get_mut(s);
            let pn = (j.prev, j.next);
            j.prev = NIL;
            j.next = NIL;
            pn
        };
        if s == self.head {
            self.head = next;
            if next == NIL {
                self.tail = NIL;
            } else {
                crate::prefetch::prefetch(slab.get(next));
            }
        } else {
            slab.get_mut(prev).next = next;
            if next == NIL {
                self.tail = prev;
            } else {
                slab.get_mut(next).prev = prev;
            }
        }
        self.len -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_slot_stays_small() {
        assert!(std::mem::size_of::<Slot>() <= 112, "{}", std::mem::size_of::<Slot>());
        assert!(std::mem::offset_of!(Slot, epoch) < 64, "the hot fields fit a cache line");
        assert_eq!(std::mem::size_of::<Payload>(), 24);
    }

    #[test]
    fn small_payloads_are_inline_and_large_ones_boxed() {
        let small = Payload::new(&[7; INLINE]);
        assert!(matches!(small, Payload::Inline(22, _)));
        assert_eq!(small.bytes(), &[7; INLINE]);
        let big = Payload::from_vec(vec![1; INLINE + 1]);
        assert!(matches!(big, Payload::Heap(_)));
        assert_eq!(big.bytes().len(), INLINE + 1);
        assert_eq!(Payload::new(b"").bytes(), b"");
        for n in 0..=INLINE {
            let bytes: Vec<u8> = (1..=n as u8).collect();
            assert_eq!(Payload::new(&bytes).bytes(), &bytes[..], "{n} bytes");
        }
    }

    #[test]
    fn rare_counters_live_in_the_box_and_it_goes_when_empty() {
        let mut j = FREE;
        assert!(j.extra.is_none());
        j.bump(Bump::Release);
        j.bump(Bump::Kick);
        let c = j.all_counts();
        assert_eq!((c.releases, c.kicks, c.buries), (1, 1, 0));
        j.set_counts(Counts { reserves: 3, ..Counts::default() });
        assert!(j.extra.is_none());
        assert_eq!(j.all_counts().reserves, 3);
        j.set_error(Some("e".into()));
        j.set_error(None);
        assert!(j.extra.is_none());
    }

    /// The FIFO's order after removals at the head (which leave the new
    /// head's `prev` stale), in the middle and at the tail.
    #[test]
    fn a_list_keeps_its_order_whatever_is_taken_out() {
        fn order(l: &List, slab: &Slab) -> Vec<u32> {
            let mut v = Vec::new();
            let mut s = l.head;
            while s != NIL {
                v.push(s);
                s = slab.get(s).next;
            }
            v
        }
        let mut slab = Slab::new();
        let s: Vec<u32> = (0..6).map(|_| slab.alloc()).collect();
        let mut l = List::EMPTY;
        for &x in &s {
            l.push_back(&mut slab, x);
        }
        l.unlink(&mut slab, s[0]); // the head
        l.unlink(&mut slab, s[2]); // after the new head, whose prev is stale
        l.unlink(&mut slab, s[1]); // the head again
        assert_eq!(order(&l, &slab), [s[3], s[4], s[5]]);
        l.unlink(&mut slab, s[5]); // the tail
        assert_eq!(l.tail, s[4]);
        l.push_back(&mut slab, s[0]);
        l.unlink(&mut slab, s[4]); // the middle, beside the tail
        assert_eq!(order(&l, &slab), [s[3], s[0]]);
        assert_eq!((l.len, l.tail), (2, s[0]));
        l.unlink(&mut slab, s[3]);
        l.unlink(&mut slab, s[0]);
        assert_eq!((l.head, l.tail, l.len), (NIL, NIL, 0));
        l.push_back(&mut slab, s[1]);
        assert_eq!((order(&l, &slab), l.tail), (vec![s[1]], s[1]));
    }

    #[test]
    fn state_codes_round_trip() {
        for s in [State::Ready, State::Delayed, State::Reserved, State::Buried] {
            assert_eq!(State::from_code(s.code()), Some(s));
        }
        assert_eq!(State::from_code(9), None);
    }
}
