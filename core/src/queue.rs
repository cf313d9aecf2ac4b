//! A queue: its ready jobs by priority, its delayed and buried jobs, its
//! unique keys, pause, retry policy, waiting holders and counters.
//!
//! Ready jobs are ordered by (priority, id), as beanstalkd orders them.
//! Fresh puts arrive in id order, so each priority keeps a FIFO of them
//! (linked through the job slots: O(1), no allocation). A job that becomes
//! ready again (released, kicked, due, lease expired) has an older id than
//! the FIFO's tail, so it goes to a small heap instead; the most urgent job
//! is the better of the first non-empty FIFO's head and the heap's top.
//! Heap entries are removed lazily: an entry is current while the job's
//! `epoch` matches it.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap};

use crate::histogram::Histogram;

use crate::job::{List, Place, Slab, State, NIL};
use crate::retry::RetryPolicy;
use crate::time::Time;

/// beanstalkd's `URGENT_THRESHOLD`: ready jobs below it count as urgent.
pub const URGENT: u32 = 1024;

/// A queue's interned id: an index into the table's queues, stable while
/// the queue exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueId(pub u32);

/// The ready jobs of one queue.
#[derive(Debug, Default)]
pub(crate) struct Ready {
    fifos: crate::fifos::Fifos,
    heap: BinaryHeap<Reverse<(u32, u64, u32, u32)>>,
    heap_live: usize,
    pub n: u64,
    pub urgent: u64,
}

impl Ready {
    /// Queues a job: `fresh` (its id is above every id queued before) goes
    /// to its priority's FIFO, any other to the heap.
    #[inline]
    pub(crate) fn push(&mut self, slab: &mut Slab, s: u32, fresh: bool) {
        let (pri, id) = {
            let j = slab.get(s);
            (j.pri, j.id)
        };
        if fresh {
            self.fifos.entry(pri).push_back(slab, s);
            slab.get_mut(s).place = Place::Fifo;
        } else {
            let j = slab.get_mut(s);
            j.epoch = j.epoch.wrapping_add(1);
            j.place = Place::Heap;
            self.heap.push(Reverse((pri, id, s, j.epoch)));
            self.heap_live += 1;
        }
        self.n += 1;
        self.urgent += u64::from(pri < URGENT);
    }

    /// Takes a job out (it is leaving the ready state).
    #[inline]
    pub(crate) fn remove(&mut self, slab: &mut Slab, s: u32) {
        let (pri, place) = {
            let j = slab.get(s);
            (j.pri, j.place)
        };
        match place {
            Place::Fifo => {
                if let Some(l) = self.fifos.get_mut(pri) {
                    l.unlink(slab, s);
                    if l.len == 0 {
                        self.fifos.drop_empty(pri);
                    }
                }
            }
            Place::Heap => {
                self.heap_live -= 1;
                if self.heap.len() > 64 && self.heap.len() > 2 * self.heap_live {
                    self.heap.retain(|Reverse(e)| current(slab, *e, s));
                }
            }
            Place::None => return,
        }
        slab.get_mut(s).place = Place::None;
        self.n -= 1;
        self.urgent -= u64::from(pri < URGENT);
    }

    /// The most urgent ready job: (priority, id, slot).
    #[inline]
    pub(crate) fn best(&mut self, slab: &Slab) -> Option<(u32, u64, u32)> {
        if self.heap_live == 0 {
            // Every heap entry is stale: only the FIFOs hold jobs.
            self.heap.clear();
            let (p, l) = self.fifos.first()?;
            return Some((p, slab.get(l.head).id, l.head));
        }
        while let Some(Reverse(e)) = self.heap.peek() {
            if current(slab, *e, NIL) {
                break;
            }
            self.heap.pop();
        }
        let h = self.heap.peek().map(|Reverse((p, id, s, _))| (*p, *id, *s));
        let f = self.fifos.first().map(|(p, l)| (p, slab.get(l.head).id, l.head));
        match (h, f) {
            (Some(a), Some(b)) => Some(if (a.0, a.1) < (b.0, b.1) { a } else { b }),
            (a, b) => a.or(b),
        }
    }
}

/// Whether heap entry `e` is current (`leaving` is a slot on its way out,
/// whose entries are no longer current).
fn current(slab: &Slab, e: (u32, u64, u32, u32), leaving: u32) -> bool {
    let (pri, id, s, epoch) = e;
    if s == leaving {
        return false;
    }
    let j = slab.get(s);
    j.live
        && j.id == id
        && j.state == State::Ready
        && j.place == Place::Heap
        && j.epoch == epoch
        && j.pri == pri
}

/// Per-queue counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueCounters {
    /// Jobs ever put (beanstalkd's `total-jobs`).
    pub puts: u64,
    /// Reservations.
    pub reserves: u64,
    /// Jobs completed or deleted (beanstalkd's `cmd-delete`).
    pub deletes: u64,
    /// Failures retried.
    pub retries: u64,
    /// Burials.
    pub buries: u64,
    /// Leases that expired.
    pub timeouts: u64,
    /// Pauses (beanstalkd's `cmd-pause-tube`).
    pub pauses: u64,
    /// Jobs whose deadline passed before they were handed out.
    pub expired: u64,
    /// Jobs cancelled.
    pub cancelled: u64,
    /// Schedule ticks that made a job.
    pub fired: u64,
    /// Jobs that became ready: puts without a delay, delays that came due,
    /// releases, retries, kicks and leases that ended without an outcome
    /// (the arrivals of `staffing::Rates`).
    pub readied: u64,
}

/// One queue.
#[derive(Debug)]
pub(crate) struct Queue {
    pub name: Box<str>,
    pub ready: Ready,
    /// (due, id), for kick and peek order.
    pub delayed: BTreeSet<(Time, u64)>,
    pub buried: List,
    pub reserved: u64,
    /// Live jobs in any state.
    pub jobs: u64,
    pub uniques: HashMap<Box<str>, u64>,
    pub paused_until: Option<Time>,
    pub pause_s: u64,
    pub policy: RetryPolicy,
    /// The policy was set (and logged) for this queue.
    pub configured: bool,
    pub counters: QueueCounters,
    /// Microseconds from ready to reserved; made at the first reservation
    /// (~27 KB each, and clients may make many queues they never reserve
    /// from).
    pub wait_us: Option<Histogram>,
    /// Front-end references (a connection using or watching it, a
    /// registered handler): a queue with none and no jobs or waiters goes.
    pub refs: u64,
    /// Holders waiting on this queue, as beanstalkd's `Ms` set: append on
    /// wait, swap-remove on leaving, served from a rotating cursor.
    pub waiting: Vec<u32>,
    pub waiting_last: usize,
    /// Limits and their state (`limit.rs`).
    pub gate: crate::limit::Gate,
}

impl Queue {
    pub(crate) fn new(name: Box<str>, policy: RetryPolicy) -> Queue {
        Queue {
            name,
            ready: Ready::default(),
            delayed: BTreeSet::new(),
            buried: List::EMPTY,
            reserved: 0,
            jobs: 0,
            uniques: HashMap::new(),
            paused_until: None,
            pause_s: 0,
            policy,
            configured: false,
            counters: QueueCounters::default(),
            wait_us: None,
            refs: 0,
            waiting: Vec::new(),
            waiting_last: 0,
            gate: crate::limit::Gate::default(),
        }
    }

    pub(crate) fn paused(&self, now: Time) -> bool {
        self.paused_until.is_some_and(|t| t > now)
    }

    pub(crate) fn unused(&self) -> bool {
        self.jobs == 0 && self.refs == 0 && self.waiting.is_empty()
    }

    #[inline]
    pub(crate) fn record_wait(&mut self, waited_us: u64) {
        if self.wait_us.is_none() {
            self.wait_us = Some(Histogram::new());
        }
        if let Some(h) = &mut self.wait_us {
            h.record(waited_us);
        }
    }
}
