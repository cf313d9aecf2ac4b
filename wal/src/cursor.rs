//! The multi-producer claim and in-order publication protocol.
//!
//! Appenders on any thread write into the same log without a lock, in the
//! style of Aeron's log buffers, but publish in log order (as the LMAX
//! Disruptor's multi-producer sequencer does) so the published prefix has no
//! holes, even after `kill -9`:
//!
//! 1. **Claim.** Read `tail`; the frame goes at `tail` if it fits in that
//!    segment, else at the start of the next segment (the claimer will fill
//!    the rest of the old segment with a padding frame). Make sure the target
//!    segment exists, then `compare_exchange(tail, frame + len)`. Exactly one
//!    appender wins each range; losers retry from the tail they observed.
//! 2. **Write.** The winner writes its frame into its range (one `pwritev`,
//!    or a copy through a writable mapping, `WriteMethod`): no other thread
//!    writes there, and no reader looks there yet.
//! 3. **Publish.** The winner waits until `published` equals the start of its
//!    claim (every earlier claim is complete), then stores the end of its
//!    claim into `published` with release ordering.
//! 4. **Read.** The flusher and readers load `published` with acquire
//!    ordering: every byte below it is a complete frame.
//!
//! The wait in step 3 is at most one write long unless an earlier appender
//! was preempted or blocked in the kernel inside its write (a page fault
//! behind the flusher's writeback, when writing through the mapping); the
//! `backoff` in `sync.rs` yields in that case.
//!
//! An appender that is going to wait for its record to be durable anyway
//! (a `Sync` submit) need not wait in step 3: with many appenders on few
//! cores, an earlier one is often preempted, and every later one then
//! spins through `sched_yield` until it runs again (half the CPU time of
//! 64 producers on 2 cores went there). [`Cursor::publish_or_defer`] lets
//! it hand its claim over instead:
//!
//! 3a. **Deposit.** If `published` is not yet the start of its claim, the
//!     appender takes the claim's slot in a small ring (indexed by the
//!     claim's start; a slot in use sends it back to step 3), stores the
//!     claim's end in it and then its start, and issues a `SeqCst` fence.
//!     It then reads `published` again: if that is now its start, it
//!     sweeps (3b) itself, else it returns without waiting.
//! 3b. **Sweep.** Whoever stores `published = p` (step 3, or a sweep)
//!     issues a `SeqCst` fence and then reads the slot of `p`: if it holds
//!     a deposit starting at `p`, it takes the deposit with a
//!     compare-exchange (so exactly one sweeper moves `published` past it),
//!     stores its end into `published` and goes on from there.
//!
//! Each claim is published exactly once: by its owner (steps 3 and 3a
//! exclude each other) or by the one sweeper whose compare-exchange took
//! its deposit. No deposit is stranded: the store of `published = start`
//! and the deposit's store are each followed by a `SeqCst` fence and then
//! a load of the other, so at least one of the two sides sees the other
//! and sweeps. A deferred appender's record is not yet published when it
//! returns, so it must not be acknowledged before it is durable (the
//! flusher syncs only the published prefix).

use crate::sync::{backoff, fence, AtomicU64, Ordering};

/// Slots in the deposit ring (a power of two). A deposit needs the slot of
/// its start free; the ring covers `SLOTS * FRAME_ALIGN` bytes of claims
/// waiting on one preempted appender before deposits fall back to waiting.
#[cfg(not(loom))]
const SLOTS: usize = 1024;
#[cfg(loom)]
const SLOTS: usize = 4;
/// A slot being filled (its end is being stored).
const FILLING: u64 = u64::MAX;
/// An empty slot.
const EMPTY: u64 = 0;

/// How log positions map onto this run's fixed-size segments.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Geometry {
    /// LSN of the first byte of this run's first segment.
    pub(crate) run_base: u64,
    /// Data bytes per segment (segment size minus header).
    pub(crate) data_cap: u64,
}

impl Geometry {
    /// Index (within this run) of the segment holding `lsn`.
    #[inline]
    pub(crate) fn index(&self, lsn: u64) -> u64 {
        (lsn - self.run_base) / self.data_cap
    }

    /// First LSN of segment `idx`.
    #[inline]
    pub(crate) fn base(&self, idx: u64) -> u64 {
        self.run_base + idx * self.data_cap
    }
}

/// A claimed range of the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Claim {
    /// Where the claim starts: the padding, if any, else the frame.
    pub(crate) start: u64,
    /// Where the frame starts.
    pub(crate) frame: u64,
    /// One past the frame's last byte.
    pub(crate) end: u64,
}

/// A claim handed over for a sweeper to publish (step 3a).
#[derive(Debug)]
struct Deposit {
    /// `EMPTY`, `FILLING`, or the claim's start plus one.
    start: AtomicU64,
    /// The claim's end; valid once `start` holds the claim.
    end: AtomicU64,
}

/// How a claim was published by [`Cursor::publish_or_defer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Published {
    /// By its owner, and `published` did not move past it.
    Own,
    /// `published` moved past claims deposited by other appenders too (or
    /// past this one, deposited): they may be waiting for a sync.
    Swept,
    /// Deposited: a sweeper publishes it later.
    Deferred,
}

/// The two positions the protocol moves forward, and the deposit ring.
#[derive(Debug)]
pub(crate) struct Cursor {
    tail: AtomicU64,
    published: AtomicU64,
    /// Empty when deposits are off: step 3 then costs no fence and no sweep.
    deposits: Box<[Deposit]>,
}

impl Cursor {
    /// A cursor at `at`, with or without deposits (steps 3a and 3b; without
    /// them [`Cursor::publish_or_defer`] waits as [`Cursor::publish`] does).
    pub(crate) fn new(at: u64, deposits: bool) -> Self {
        Cursor {
            tail: AtomicU64::new(at),
            published: AtomicU64::new(at),
            deposits: (0..if deposits { SLOTS } else { 0 })
                .map(|_| Deposit { start: AtomicU64::new(EMPTY), end: AtomicU64::new(0) })
                .collect(),
        }
    }

    fn slot(&self, start: u64) -> &Deposit {
        let i = (start / crate::record::FRAME_ALIGN) as usize % SLOTS;
        &self.deposits[i]
    }

    /// Step 1. `len` must not exceed `geo.data_cap`. `ensure(idx)` is called
    /// before a claim may land in segment `idx` and must return only once that
    /// segment is mapped (or fail, in which case nothing is claimed).
    pub(crate) fn claim<E>(
        &self,
        geo: &Geometry,
        len: u64,
        mut ensure: impl FnMut(u64) -> Result<(), E>,
    ) -> Result<Claim, E> {
        let mut pos = self.tail.load(Ordering::Relaxed);
        loop {
            let seg_end = geo.base(geo.index(pos) + 1);
            let frame = if pos + len <= seg_end { pos } else { seg_end };
            ensure(geo.index(frame))?;
            // Relaxed is enough: the claim only hands out a range; the data
            // written into it is ordered by `published` (steps 3 and 4).
            match self.tail.compare_exchange_weak(
                pos,
                frame + len,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(Claim { start: pos, frame, end: frame + len }),
                Err(now) => pos = now,
            }
        }
    }

    /// Step 3: waits for every earlier claim, then publishes this one (and
    /// any deposits after it). Returns `true` if it swept deposits.
    pub(crate) fn publish(&self, claim: &Claim) -> bool {
        let mut step = 0;
        while self.published.load(Ordering::Acquire) != claim.start {
            backoff(&mut step);
        }
        if self.deposits.is_empty() {
            self.published.store(claim.end, Ordering::Release);
            return false;
        }
        self.set_published(claim.end);
        self.sweep(claim.end)
    }

    /// Stores `published`, then a `SeqCst` fence: the store is ordered
    /// before the sweep's (and the flusher kick's) loads that follow
    /// (`log.rs`). A fence rather than `SeqCst` accesses, as loom models it.
    fn set_published(&self, at: u64) {
        self.published.store(at, Ordering::Release);
        fence(Ordering::SeqCst);
    }

    /// Steps 3 and 3a: publishes the claim now if every earlier claim is
    /// published, else deposits it for a sweeper (waiting as in step 3 only
    /// when its slot is in use).
    pub(crate) fn publish_or_defer(&self, claim: &Claim) -> Published {
        let own = |swept: bool| if swept { Published::Swept } else { Published::Own };
        if self.deposits.is_empty() {
            return own(self.publish(claim));
        }
        if self.published.load(Ordering::Acquire) == claim.start {
            self.set_published(claim.end);
            return own(self.sweep(claim.end));
        }
        let slot = self.slot(claim.start);
        if slot
            .start
            .compare_exchange(EMPTY, FILLING, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return own(self.publish(claim));
        }
        slot.end.store(claim.end, Ordering::Relaxed);
        slot.start.store(claim.start + 1, Ordering::Release);
        // Against `set_published`: this fence or that one comes first, and
        // the load after the later one sees the other side's store.
        fence(Ordering::SeqCst);
        if self.published.load(Ordering::Acquire) == claim.start && self.sweep(claim.start) {
            return Published::Swept;
        }
        Published::Deferred
    }

    /// Step 3b, by whoever stored `published = from`: publishes the chain of
    /// deposits starting there. Returns `true` if it published any.
    fn sweep(&self, from: u64) -> bool {
        let mut at = from;
        loop {
            let slot = self.slot(at);
            if slot.start.load(Ordering::Acquire) != at + 1 {
                return at != from;
            }
            // The load above acquired the depositor's stores.
            let end = slot.end.load(Ordering::Relaxed);
            if slot
                .start
                .compare_exchange(at + 1, EMPTY, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
            {
                // Another sweeper took it and moves `published` on.
                return at != from;
            }
            self.set_published(end);
            at = end;
        }
    }

    /// Step 4: everything below the returned LSN is complete.
    #[inline]
    pub(crate) fn published(&self) -> u64 {
        // SeqCst: the flusher's load takes part in the hand-over of
        // deposits (`log.rs`, `kick_flusher`).
        self.published.load(Ordering::SeqCst)
    }

    /// The next LSN to be claimed (a hint; it moves concurrently).
    #[inline]
    pub(crate) fn tail(&self) -> u64 {
        self.tail.load(Ordering::Relaxed)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    const GEO: Geometry = Geometry { run_base: 1000, data_cap: 64 };

    #[test]
    fn frames_that_fit_are_contiguous() {
        let c = Cursor::new(1000, true);
        let a = c.claim(&GEO, 32, |_| Ok::<_, ()>(())).unwrap();
        assert_eq!(a, Claim { start: 1000, frame: 1000, end: 1032 });
        c.publish(&a);
        assert_eq!(c.published(), 1032);
    }

    #[test]
    fn a_frame_that_does_not_fit_moves_to_the_next_segment() {
        let c = Cursor::new(1048, true);
        let mut asked = Vec::new();
        let a = c
            .claim(&GEO, 32, |idx| {
                asked.push(idx);
                Ok::<_, ()>(())
            })
            .unwrap();
        assert_eq!(a, Claim { start: 1048, frame: 1064, end: 1096 });
        assert_eq!(asked, vec![1]);
    }

    #[test]
    fn a_deferred_claim_is_published_by_the_claim_before_it() {
        let c = Cursor::new(1000, true);
        let a = c.claim(&GEO, 16, |_| Ok::<_, ()>(())).unwrap();
        let b = c.claim(&GEO, 16, |_| Ok::<_, ()>(())).unwrap();
        let d = c.claim(&GEO, 16, |_| Ok::<_, ()>(())).unwrap();
        assert_eq!(c.publish_or_defer(&d), Published::Deferred);
        assert_eq!(c.publish_or_defer(&b), Published::Deferred);
        assert_eq!(c.published(), 1000, "nothing is published past a's gap");
        assert!(c.publish(&a), "a sweeps b and d");
        assert_eq!(c.published(), d.end);
        assert!(c.deposits.iter().all(|s| s.start.load(Ordering::Relaxed) == EMPTY));
    }

    #[test]
    fn without_deposits_a_claim_waits_for_its_turn() {
        let c = Cursor::new(1000, false);
        let a = c.claim(&GEO, 16, |_| Ok::<_, ()>(())).unwrap();
        let b = c.claim(&GEO, 16, |_| Ok::<_, ()>(())).unwrap();
        std::thread::scope(|s| {
            let waiter = s.spawn(|| c.publish_or_defer(&b));
            assert!(!c.publish(&a));
            assert_eq!(waiter.join().unwrap(), Published::Own);
        });
        assert_eq!(c.published(), b.end);
    }

    #[test]
    fn a_claim_whose_turn_it_is_publishes_at_once() {
        let c = Cursor::new(1000, true);
        let a = c.claim(&GEO, 16, |_| Ok::<_, ()>(())).unwrap();
        assert_eq!(c.publish_or_defer(&a), Published::Own);
        assert_eq!(c.published(), a.end);
    }

    #[test]
    fn a_deposit_slot_in_use_falls_back_to_waiting() {
        let c = Cursor::new(0, true);
        let geo = Geometry { run_base: 0, data_cap: 1 << 30 };
        let first = c.claim(&geo, 16, |_| Ok::<_, ()>(())).unwrap();
        // A claim whose start maps to the same slot as `late` below.
        let span = SLOTS as u64 * crate::record::FRAME_ALIGN;
        let filler = c.claim(&geo, span - 16, |_| Ok::<_, ()>(())).unwrap();
        let early = c.claim(&geo, 16, |_| Ok::<_, ()>(())).unwrap();
        let late = c.claim(&geo, 16, |_| Ok::<_, ()>(())).unwrap();
        assert_eq!(late.start - filler.start, span);
        assert_eq!(c.publish_or_defer(&filler), Published::Deferred);
        assert_eq!(c.publish_or_defer(&early), Published::Deferred);
        std::thread::scope(|s| {
            // `late`'s slot holds `filler`: it waits in step 3 until
            // `first` is published, then publishes itself.
            let waiter = s.spawn(|| c.publish_or_defer(&late));
            assert!(c.publish(&first));
            assert_eq!(waiter.join().unwrap(), Published::Own);
        });
        assert_eq!(c.published(), late.end);
    }

    #[test]
    fn failed_ensure_claims_nothing() {
        let c = Cursor::new(1048, true);
        assert_eq!(c.claim(&GEO, 32, |_| Err("full")), Err("full"));
        assert_eq!(c.tail(), 1048);
    }
}

#[cfg(all(test, loom))]
#[allow(unsafe_code)]
mod loom_tests {
    //! Model checks of steps 1-4 with two appenders and a reader: the reader
    //! never observes `published` covering a byte that is not yet written.
    use super::*;
    use loom::cell::UnsafeCell;
    use loom::sync::Arc;

    struct Log {
        cursor: Cursor,
        bytes: Vec<UnsafeCell<u8>>,
    }
    // SAFETY: (test only) cells are written only inside a claimed range and
    // read only below `published`; loom reports any violation as a data race.
    unsafe impl Sync for Log {}
    // SAFETY: as above.
    unsafe impl Send for Log {}

    impl Log {
        fn new(len: usize) -> Arc<Log> {
            Arc::new(Log {
                cursor: Cursor::new(0, true),
                bytes: (0..len).map(|_| UnsafeCell::new(0u8)).collect(),
            })
        }

        /// Writes `val` into a claim's frame (padding before it as 0xEE).
        fn fill(&self, claim: &Claim, val: u8) {
            for lsn in claim.start..claim.end {
                let v = if lsn >= claim.frame { val } else { 0xEE };
                // SAFETY: the byte is inside our claim; loom checks exclusivity.
                self.bytes[lsn as usize].with_mut(|p| unsafe { *p = v });
            }
        }

        /// Every byte below `upto` has been written.
        fn assert_written(&self, upto: u64) {
            for i in 0..upto {
                // SAFETY: below `published`; loom flags a race if not.
                let b = self.bytes[i as usize].with(|p| unsafe { *p });
                assert_ne!(b, 0, "published byte {i} was not written");
            }
        }
    }

    /// Steps 1-3 (or 3a with `defer`) for one frame of `len` bytes.
    #[allow(clippy::unwrap_used)] // a test helper: a failure is the test failing
    fn append(log: &Log, geo: &Geometry, len: u64, val: u8, defer: bool) {
        let claim = log.cursor.claim(geo, len, |_| Ok::<_, ()>(())).unwrap();
        log.fill(&claim, val);
        if defer {
            log.cursor.publish_or_defer(&claim);
        } else {
            log.cursor.publish(&claim);
        }
    }

    /// Two appenders writing `len`-byte frames, and a reader checking the
    /// published prefix while they run; returns `published` once both are
    /// done.
    #[allow(clippy::unwrap_used)] // a test helper: a failure is the test failing
    fn race(data_cap: u64, bytes: usize, len: u64, defer: bool) -> u64 {
        let geo = Geometry { run_base: 0, data_cap };
        let log = Log::new(bytes);
        let writers: Vec<_> = [1u8, 2u8]
            .into_iter()
            .map(|v| {
                let log = log.clone();
                loom::thread::spawn(move || append(&log, &geo, len, v, defer))
            })
            .collect();
        log.assert_written(log.cursor.published());
        for w in writers {
            w.join().unwrap();
        }
        log.cursor.published()
    }

    /// Steps 3a and 3b: two appenders that may defer and a reader. The
    /// reader never sees an unwritten byte below `published`, and once both
    /// appenders returned everything is published: no deposit is stranded.
    #[test]
    fn deferred_claims_are_all_published() {
        loom::model(|| assert_eq!(race(64, 64, 16, true), 32));
    }

    /// A waiting appender (step 3) before a deferring one: the deposit is
    /// swept by the waiting one, or published by its owner.
    #[test]
    fn a_waiting_appender_sweeps_a_deposit() {
        loom::model(|| {
            let geo = Geometry { run_base: 0, data_cap: 64 };
            let log = Log::new(64);
            let first = log.cursor.claim(&geo, 16, |_| Ok::<_, ()>(())).unwrap();
            let deferring = {
                let log = log.clone();
                loom::thread::spawn(move || append(&log, &geo, 16, 2, true))
            };
            log.fill(&first, 1);
            log.cursor.publish(&first);
            deferring.join().unwrap();
            assert_eq!(log.cursor.published(), 32);
            log.assert_written(32);
        });
    }

    #[test]
    fn published_prefix_is_always_written() {
        // Two 2-byte frames in 3-byte segments: the second goes to the next
        // segment, after one byte of padding.
        loom::model(|| assert_eq!(race(3, 6, 2, false), 5));
    }
}
