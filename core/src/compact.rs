//! Compaction: keeping a table's log bounded, without tracking where each
//! job's record lies.
//!
//! 1. [`cut_for`] decides whether a log needs compacting: it holds more
//!    than `min_segments` segments and more than twice the live jobs'
//!    estimated records. The cut is then the end of the newest finished
//!    segment.
//! 2. A [`Pass`] begins; each [`Pass::step`] writes the complete state of
//!    a batch of live jobs put before the pass began (`Table::rewrite`),
//!    walking ids upwards; its last step writes the queue policies and the
//!    id mark (`Table::snapshot_meta`).
//! 3. Once those records are durable, the caller releases the segments
//!    below the cut. Replay then finds a complete record of every live job
//!    after the cut; records of a job before its rewrite refer to no job
//!    yet and are skipped.
//!
//! Long-lived jobs are rewritten once per pass; a pass begins only when the
//! log is at least twice the live records, so the rewriting stays a small
//! multiple of the writing that made the log grow.

use crate::record::Records;
use crate::table::Table;

/// What a live job is counted as in the log besides its payload (its
/// `Put` record's fixed part and queue name, roughly).
pub const JOB_LOG_BYTES: u64 = 80;

/// The cut to compact below, if the log needs compacting: `segments` are
/// the log's (start, end) LSNs, `published` the end of what is written
/// (bytes past it do not count).
pub fn cut_for(
    table: &Table,
    segments: &[(u64, u64)],
    published: u64,
    min_segments: usize,
) -> Option<u64> {
    // Only bytes written count: segments allocated ahead of the tail (the
    // head-room, `crate::headroom`) hold no records yet.
    let log_bytes: u64 =
        segments.iter().filter(|s| s.0 < published).map(|s| s.1.min(published) - s.0).sum();
    let tot = table.totals();
    let live = tot.bytes + JOB_LOG_BYTES * tot.jobs + 128 * tot.queues;
    if segments.len() <= min_segments || log_bytes <= 2 * live {
        return None;
    }
    segments.iter().map(|s| s.1).filter(|&e| e <= published).max()
}

/// A compaction pass in progress.
#[derive(Clone, Copy, Debug)]
pub struct Pass {
    /// Segments below this go once the pass's records are durable.
    pub cut: u64,
    /// Jobs with ids below this were put before the pass began.
    end_id: u64,
    /// The next id to rewrite.
    cursor: u64,
}

impl Pass {
    /// A pass over every job of `table` now, releasing below `cut`.
    pub fn new(table: &Table, cut: u64) -> Pass {
        Pass { cut, end_id: table.next_id(), cursor: 0 }
    }

    /// Rewrites up to `max` jobs into `out`; returns how many, and whether
    /// the pass is over (then the policies and id mark are written too).
    pub fn step(&mut self, table: &Table, max: usize, out: &mut Records) -> (usize, bool) {
        let end = self.end_id;
        let mut n = 0;
        let mut last = None;
        for id in table.job_ids_from(self.cursor).take_while(|&id| id < end).take(max) {
            table.rewrite(id, out);
            last = Some(id);
            n += 1;
        }
        self.cursor = last.map_or(end, |id| id + 1);
        let done = n < max;
        if done {
            table.snapshot_meta(out);
        }
        (n, done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Config, PutSpec, Time};

    #[test]
    fn a_pass_rewrites_every_job_put_before_it_and_then_the_mark() {
        let mut t = Table::new(Config::default());
        let mut log = Records::new();
        let q = t.queue("q").unwrap_or(crate::QueueId(0));
        for id in 1..=10 {
            let _ = t.put(Time(1), id, q, &PutSpec::default(), b"x", &mut log);
        }
        let mut pass = Pass::new(&t, 99);
        let _ = t.put(Time(1), 11, q, &PutSpec::default(), b"later", &mut log);
        let mut out = Records::new();
        assert_eq!(pass.step(&t, 4, &mut out), (4, false));
        assert_eq!(pass.step(&t, 4, &mut out), (4, false));
        assert_eq!(pass.step(&t, 4, &mut out), (2, true));
        // Ten puts and the id mark; job 11 (put after the pass began) not.
        assert_eq!(out.len(), 11);
        let mut r = Table::new(Config::default());
        assert_eq!(r.replay(out.bytes()), Ok(11));
        assert_eq!(r.job_ids().collect::<Vec<_>>(), (1..=10).collect::<Vec<_>>());
    }

    #[test]
    fn only_a_log_twice_the_live_records_and_over_the_segments_is_cut() {
        let t = Table::new(Config::default());
        let segs = [(0, 100), (100, 200), (200, 300)];
        assert_eq!(cut_for(&t, &segs, 250, 2), Some(200));
        assert_eq!(cut_for(&t, &segs, 250, 3), None);
        assert_eq!(cut_for(&t, &segs, 50, 2), None);
        // Bytes allocated ahead hold nothing: 1,200 written with 808 live
        // (600 + 80 + 128) is not twice, though the segments hold 3,000.
        let mut t = Table::new(Config::default());
        let q = t.queue("q").unwrap_or(crate::QueueId(0));
        let _ = t.put(Time(1), 1, q, &PutSpec::default(), &[0; 600], &mut Records::new());
        let segs = [(0, 1000), (1000, 2000), (2000, 3000)];
        assert_eq!(cut_for(&t, &segs, 1200, 2), None);
        assert_eq!(cut_for(&t, &segs, 2500, 2), Some(2000));
    }
}

#[cfg(test)]
mod unlogged_tests {
    use super::*;
    use crate::{Config, PutSpec, Time};

    /// The library reserves jobs it only offers to thieves (or queues for
    /// its blocking pool) without logging a `Reserve` (`Shard::take_from`),
    /// so that a crash does not count them as interrupted. A compaction
    /// pass rewrites such a job with a `Reserve` after its `Put`
    /// (`log_full`), so after a crash it counts an attempt and an
    /// interruption it never had.
    #[test]
    fn a_pass_logs_no_reserve_for_a_reservation_not_logged_yet() {
        let mut t = Table::new(Config::default());
        let q = t.queue("q").unwrap_or(crate::QueueId(0));
        let mut log = Records::new();
        let _ = t.put(Time(1), 1, q, &PutSpec::default(), b"x", &mut log);
        // Offered, not run: reserved without a record.
        assert!(t.reserve_id(Time(2), 1, 0, &mut Records::disabled()).is_some());
        let mut pass = Pass::new(&t, 99);
        let mut out = Records::new();
        let _ = pass.step(&t, 16, &mut out);
        let mut r = Table::new(Config::default());
        r.replay(out.bytes()).unwrap();
        let rec = r.finish_replay(Time(3), &mut Records::disabled());
        assert_eq!(rec.interrupted, 0, "a job that never ran came back interrupted");
    }
}
