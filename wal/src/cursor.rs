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
//! 2. **Write.** The winner copies its frame into its range: no other thread
//!    writes there, and no reader looks there yet.
//! 3. **Publish.** The winner waits until `published` equals the start of its
//!    claim (every earlier claim is complete), then stores the end of its
//!    claim into `published` with release ordering.
//! 4. **Read.** The flusher and readers load `published` with acquire
//!    ordering: every byte below it is a complete frame.
//!
//! The wait in step 3 is at most one memcpy long unless an earlier appender
//! was preempted; the `backoff` in `sync.rs` yields in that case.

use crate::sync::{backoff, AtomicU64, Ordering};

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

/// The two positions the protocol moves forward.
#[derive(Debug)]
pub(crate) struct Cursor {
    tail: AtomicU64,
    published: AtomicU64,
}

impl Cursor {
    pub(crate) fn new(at: u64) -> Self {
        Cursor { tail: AtomicU64::new(at), published: AtomicU64::new(at) }
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

    /// Step 3: waits for every earlier claim, then publishes this one.
    pub(crate) fn publish(&self, claim: &Claim) {
        let mut step = 0;
        while self.published.load(Ordering::Acquire) != claim.start {
            backoff(&mut step);
        }
        self.published.store(claim.end, Ordering::Release);
    }

    /// Step 4: everything below the returned LSN is complete.
    #[inline]
    pub(crate) fn published(&self) -> u64 {
        self.published.load(Ordering::Acquire)
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
        let c = Cursor::new(1000);
        let a = c.claim(&GEO, 32, |_| Ok::<_, ()>(())).unwrap();
        assert_eq!(a, Claim { start: 1000, frame: 1000, end: 1032 });
        c.publish(&a);
        assert_eq!(c.published(), 1032);
    }

    #[test]
    fn a_frame_that_does_not_fit_moves_to_the_next_segment() {
        let c = Cursor::new(1048);
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
    fn failed_ensure_claims_nothing() {
        let c = Cursor::new(1048);
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
    // SAFETY (test only): cells are written only inside a claimed range and
    // read only below `published`; loom reports any violation as a data race.
    unsafe impl Sync for Log {}
    // SAFETY: as above.
    unsafe impl Send for Log {}

    fn append(log: &Log, geo: &Geometry, len: u64, val: u8) {
        let claim = log.cursor.claim(geo, len, |_| Ok::<_, ()>(())).unwrap();
        for lsn in claim.start..claim.end {
            let v = if lsn >= claim.frame { val } else { 0xEE };
            // SAFETY: the byte is inside our claim; loom checks exclusivity.
            log.bytes[lsn as usize].with_mut(|p| unsafe { *p = v });
        }
        log.cursor.publish(&claim);
    }

    #[test]
    fn published_prefix_is_always_written() {
        loom::model(|| {
            let geo = Geometry { run_base: 0, data_cap: 3 };
            let log = Arc::new(Log {
                cursor: Cursor::new(0),
                bytes: (0..6).map(|_| UnsafeCell::new(0u8)).collect(),
            });
            let writers: Vec<_> = [1u8, 2u8]
                .into_iter()
                .map(|v| {
                    let log = log.clone();
                    loom::thread::spawn(move || append(&log, &geo, 2, v))
                })
                .collect();
            let upto = log.cursor.published();
            for i in 0..upto {
                // SAFETY: below `published`; loom flags a race if not.
                let b = log.bytes[i as usize].with(|p| unsafe { *p });
                assert_ne!(b, 0, "published byte {i} was not written");
            }
            for w in writers {
                w.join().unwrap();
            }
            // Two 2-byte frames in 3-byte segments: the second goes to the
            // next segment, after one byte of padding.
            assert_eq!(log.cursor.published(), 5);
        });
    }
}
