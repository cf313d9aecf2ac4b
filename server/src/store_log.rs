//! The store's log: each command's records written with the head-room
//! rules of `spindle_core::headroom` (`log.rs` claims and writes them once
//! per loop round), compaction, and recovery at start, including the two
//! older formats (`persist.rs`).

use std::time::Instant;

use spindle_core::compact::{self, Pass};
use spindle_core::headroom;
use spindle_core::record::{self, MoveRec, PutRec, QueueRec, Record};
use spindle_core::{Counts, QueueId, State, Table, Time};

use super::{daemon_policy, Logged, Store};
use crate::persist::{self, DRec, ST_BURIED, ST_DELAYED};

/// Live jobs rewritten per tick during compaction, so one tick never holds
/// the loop for long.
const COMPACT_BATCH: usize = 4096;

impl Store {
    /// Writes this command's records to the log, leaving the room
    /// compaction needs (`spindle_core::headroom`). False if they could
    /// not be (the command must not be acknowledged).
    pub(super) fn flush_log(&mut self) -> bool {
        let keep = match &self.log {
            Some(log) => headroom::for_completions(&self.table.totals(), log.pass_written),
            None => 0,
        };
        let n = self.recs.len();
        match self.flush_log_keeping(keep) {
            Ok(()) => true,
            Err(Logged::NoSpace) => {
                // The completions' head-room is used up (releases and
                // reserves of the same jobs over and over on a full
                // disk): the change stands in memory, but a restart will
                // not see it. Compaction frees space, and then it works
                // again.
                tracing::warn!(records = n, "disk full: job state changes could not be logged");
                false
            }
            Err(Logged::Failed) => false,
        }
    }

    /// Writes the records with no condition: at start (recovery's moves,
    /// the id mark), and deletes undoing a batch whose first frames are in
    /// the log already.
    pub(super) fn flush_log_now(&mut self) -> bool {
        self.flush_log_keeping(0).is_ok()
    }

    /// Writes this command's records to the log if it can still hold
    /// `keep` bytes past them (`log.rs`); a put keeps the head-room of
    /// `spindle_core::headroom` for the records that complete jobs.
    pub(super) fn flush_log_keeping(&mut self, keep: u64) -> Result<(), Logged> {
        if self.recs.is_empty() {
            return Ok(());
        }
        let res = match &mut self.log {
            Some(log) if log.failed.is_none() => log.append(&self.recs, keep),
            Some(_) => Err(Logged::Failed),
            None => Ok(0),
        };
        if res.is_ok() {
            self.ct.records_written += self.recs.len() as u64;
        }
        self.recs.clear();
        res.map(drop)
    }

    /// Writes the records appended since the last call (`log.rs`: a
    /// command's room is checked when it runs, and the round's records are
    /// claimed and written here, once per loop round). Called before any reply that acknowledges them
    /// is sent; false if the log failed, and then no reply since the last
    /// call may be sent.
    pub(crate) fn write_log(&mut self) -> bool {
        self.log.as_mut().is_none_or(|log| {
            log.flush();
            // A flush elsewhere (compaction's, a release's) may have failed
            // since the last call, losing records staged before it.
            !log.take_lost()
        })
    }

    /// Whether the log can take puts now: its head-room fits on the disk.
    pub(crate) fn check_headroom(&self) -> Result<(), spindle_wal::WalError> {
        match &self.log {
            Some(log) => log.wal.ensure_room(self.put_headroom()),
            None => Ok(()),
        }
    }

    /// The room a put must leave in the log (`spindle_core::headroom`).
    pub(super) fn put_headroom(&self) -> u64 {
        match &self.log {
            Some(log) => headroom::for_puts(&self.table.totals(), log.wal.segment_size()),
            None => 0,
        }
    }

    pub(crate) fn log_failed(&self) -> bool {
        self.log.as_ref().is_some_and(|l| l.failed.is_some())
    }

    /// Logs the id mark now (after skipping the ids a cut log tail may have
    /// held, so the skip survives the next start too).
    pub(crate) fn mark_ids(&mut self) -> bool {
        self.table.mark_ids(&mut self.recs);
        self.flush_log_now() && self.write_log()
    }

    // ---------------------------------------------------------- compaction

    /// Keeps the log within about twice the live jobs' records plus a few
    /// segments, without tracking where each job's record is:
    ///
    /// 1. When the log holds more than 4 segments and more than twice the
    ///    live jobs' estimated bytes, start a pass: the cut is the end of
    ///    the newest finished segment, and every job put before now will be
    ///    rewritten.
    /// 2. Each tick, write the complete state of up to [`COMPACT_BATCH`]
    ///    of those jobs at the tail (`Table::rewrite`), walking ids upwards.
    /// 3. When none is left, log the tube configurations and an `IdMark`
    ///    (`Table::snapshot` of no jobs), and ask for a sync.
    /// 4. Once the mark is durable, release the segments below the cut.
    ///    Replay then finds, for every live job, a complete record after
    ///    the cut (records of it before its rewrite refer to no job and are
    ///    skipped).
    pub(super) fn compact(&mut self) {
        let Some(log) = &mut self.log else { return };
        if log.failed.is_some() {
            return;
        }
        if let Some((below, mark)) = log.pending_release {
            let st = log.wal.stats();
            if st.durable_lsn > mark {
                tracing::debug!(below, "compaction: releasing old log segments");
                log.release(below);
                log.pending_release = None;
            } else {
                log.wal.request_sync();
            }
            return;
        }
        let mut pass = match log.pass {
            Some(p) => p,
            None => {
                let segs = log.wal.segments();
                let published = log.wal.stats().published_lsn;
                let Some(cut) = compact::cut_for(&self.table, &segs, published, 4) else {
                    return;
                };
                log.pass_written = 0;
                tracing::debug!(cut, jobs = self.table.totals().jobs, "compaction: pass begins");
                Pass::new(&self.table, cut)
            }
        };
        let before = pass;
        let (jobs, done) = pass.step(&self.table, COMPACT_BATCH, &mut self.recs);
        let n = self.recs.len() as u64;
        let Some(log) = &mut self.log else { return };
        // The room it needs is kept by puts and completions; `1`: a batch
        // goes in whole or not at all (the room for all its frames is
        // checked first), so a batch a full disk refuses wastes nothing.
        let appended = log.append(&self.recs, 1);
        self.recs.clear();
        // Written at once: its mark and release wait for it to be durable.
        let appended = appended.and_then(|b| if log.flush() { Ok(b) } else { Err(Logged::Failed) });
        match appended {
            Ok(bytes) => {
                log.pass_stalled = false;
                log.pass_written = log.pass_written.saturating_add(bytes);
            }
            Err(Logged::NoSpace) => {
                // A full disk: this batch again later (the jobs before it
                // are rewritten already), on the regular ticks. Deletes
                // shrink what is left to rewrite.
                log.pass = Some(before);
                log.pass_stalled = true;
                tracing::debug!("compaction: the disk is full; the batch waits");
                return;
            }
            Err(Logged::Failed) => {
                log.pass = None;
                return;
            }
        }
        self.ct.records_migrated += jobs as u64;
        self.ct.records_written += n;
        if done {
            self.ct.compactions += 1;
            log.pass = None;
            if let Some(mark) = log.last_lsn {
                log.pending_release = Some((pass.cut, mark));
                log.wal.request_sync();
            }
        } else {
            log.pass = Some(pass);
        }
    }

    /// At shutdown: finishes a compaction pass in progress, if the disk
    /// lets it, and releases the segments below its cut, so that a restart
    /// does not find the live jobs twice in the log (on a full disk it
    /// might have no room to compact them again).
    pub(crate) fn finish_compaction(&mut self) {
        if !self.write_log() {
            return;
        }
        loop {
            let Some(log) = &mut self.log else { return };
            if log.failed.is_some() || log.pass_stalled {
                return;
            }
            if let Some((below, mark)) = log.pending_release.take() {
                if log.wal.wait_durable(mark).is_ok() {
                    if let Err(e) = log.wal.release_below(below) {
                        tracing::warn!("releasing old log segments failed: {e}");
                    }
                }
                return;
            }
            if log.pass.is_none() {
                return;
            }
            self.compact();
        }
    }

    // ------------------------------------------------------------ recovery

    /// Rebuilds the table from the log (at start, before any connection):
    /// this version's records (kind 16) and both older formats (kinds
    /// 2-10, `persist.rs`), in log order.
    pub(crate) fn recover(&mut self, now: Instant) -> Result<RecoverReport, String> {
        let Some(log) = self.log.take() else { return Ok(RecoverReport::default()) };
        let mut bad = None;
        let table = &mut self.table;
        let replayed = log.wal.replay(|r| {
            if bad.is_some() {
                return;
            }
            if r.kind == record::WAL_KIND {
                if let Err(e) = table.replay(r.payload) {
                    bad = Some(format!("record at lsn {}: {e}", r.lsn));
                }
                return;
            }
            match persist::decode(r.kind, r.payload) {
                Ok(d) => apply_old(table, d),
                Err(e) => bad = Some(format!("record at lsn {}: {e}", r.lsn)),
            }
        });
        self.log = Some(log);
        replayed.map_err(|e| e.to_string())?;
        if let Some(b) = bad {
            return Err(b);
        }
        let t = self.time(now);
        let rec = self.table.finish_replay(t, &mut self.recs);
        self.flush_log_now();
        if !self.write_log() {
            return Err("the log failed while recording the recovery".into());
        }
        // Tubes in the order the log made them (`default` first).
        self.sync_dropped();
        self.tube_order = self.table.queues().map(|(_, n)| n.into()).collect();
        self.fronts = Vec::new();
        let qs: Vec<QueueId> = self.table.queues().map(|(q, _)| q).collect();
        for q in qs {
            self.front_mut(q);
        }
        // After a restart the totals are the jobs that came back.
        self.ct.total_jobs = rec.jobs;
        Ok(RecoverReport { jobs: rec.jobs as usize })
    }
}

/// What recovery found.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct RecoverReport {
    pub jobs: usize,
}

/// A record of the older daemon formats, applied as this version's.
fn apply_old(table: &mut Table, d: DRec) {
    let state = |s: u8| match s {
        ST_DELAYED => State::Delayed,
        ST_BURIED => State::Buried,
        _ => State::Ready,
    };
    let at = |s: u8, run_at_ms: u64, bury_seq: u64| match s {
        ST_DELAYED => Time::from_millis(run_at_ms).0,
        ST_BURIED => bury_seq,
        _ => 0,
    };
    let counts = |c: persist::Counts| Counts {
        reserves: c.reserves,
        timeouts: c.timeouts,
        releases: c.releases,
        buries: c.buries,
        kicks: c.kicks,
        interrupted: 0,
    };
    match d {
        DRec::Put {
            id,
            tube,
            pri,
            delay_s,
            ttr_s,
            body,
            state: s,
            run_at_ms,
            bury_seq,
            created_ms,
            counts: c,
            unique,
            last_error,
        } => table.apply(Record::Put(PutRec {
            id,
            queue: &tube,
            pri,
            ttr_s,
            delay_s,
            max_attempts: 0,
            state: state(s),
            at: at(s, run_at_ms, bury_seq),
            created: Time::from_millis(created_ms),
            counts: counts(c),
            unique: unique.as_deref(),
            error: last_error.as_deref(),
            deadline: None,
            payload: &body,
        })),
        DRec::PutBatch { first_id, ids, tube, pri, delay_s, ttr_s, created_ms, bodies } => {
            // One `Put` per body, as the format defines it (`DRec::new_put`).
            let ids: Vec<u64> =
                if ids.is_empty() { (first_id..).take(bodies.len()).collect() } else { ids };
            for (id, body) in ids.into_iter().zip(bodies) {
                let put = DRec::new_put(id, tube.clone(), pri, delay_s, ttr_s, body, created_ms);
                apply_old(table, put);
            }
        }
        DRec::Move { id, pri, delay_s, state: s, run_at_ms, bury_seq, counts: c, last_error } => {
            table.apply(Record::Move(MoveRec {
                id,
                at: at(s, run_at_ms, bury_seq),
                pri,
                delay_s,
                state: state(s),
                counts: counts(c),
                error: last_error.as_deref(),
            }))
        }
        DRec::Reserve { id } => table.apply(Record::Reserve { id }),
        DRec::Delete { id } => table.apply(Record::Delete { id }),
        DRec::IdMark { next_id } => table.apply(Record::IdMark { next_id }),
        DRec::TubeConfig { tube, max_attempts, backoff_ms, backoff_max_ms } => {
            table.apply(Record::Queue(QueueRec {
                name: &tube,
                policy: daemon_policy(max_attempts, backoff_ms, backoff_max_ms),
            }))
        }
    }
}
