//! Compaction of a shard's log (`docs/architecture.md`, Compaction).

use super::{Shard, COMPACT_BATCH, COMPACT_RETRY};
use crate::append::frame_max;
use spindle_core::compact::{self, Pass};
use spindle_wal::{frame_len, WalError};
use std::sync::atomic::Ordering;
use std::time::Instant;

impl Shard {
    /// Keeps the log bounded (`docs/architecture.md`, Compaction):
    ///
    /// 1. When the log is larger than `compact_after_segments` segments and
    ///    more than twice the live jobs' estimated records, pick the cut
    ///    `C`: the end of the newest segment the log has finished, and flip
    ///    the submit epoch.
    /// 2. Wait until no producer of the old epoch is between appending a
    ///    `Put` and handing the job to this shard (`ShardShared::enter`),
    ///    then drain the inbox: every job logged below `C` is now in the
    ///    table.
    /// 3. Rewrite every live job of the table at the tail, its complete
    ///    state, [`COMPACT_BATCH`] per call, walking ids upwards (jobs put
    ///    later have their records above `C`).
    /// 4. Log the id mark after them and ask for a sync without waiting.
    /// 5. Once the mark is durable (so are the rewrites), release below `C`.
    pub(super) fn compact(&mut self) {
        let Some(wal) = self.sh.wal.clone() else { return };
        if let Some((below, mark)) = self.pending_release {
            if wal.stats().durable_lsn > mark {
                if wal.release_below(below).unwrap_or(0) > 0 {
                    // Appenders cache the segment they last wrote; drop idle
                    // ones so a released segment's file space is freed now.
                    while self.sh.appenders.pop().is_some() {}
                    self.appender = Some(wal.appender());
                }
                self.pending_release = None;
            } else {
                wal.request_sync();
            }
            return;
        }
        let mut pass = match self.pass {
            Some(p) => p,
            None => {
                let (cut, epoch) = match self.pending_cut {
                    Some(p) => p,
                    None => {
                        let segs = wal.segments();
                        let published = wal.stats().published_lsn;
                        let min = self.cfg.compact_after_segments;
                        let Some(cut) = compact::cut_for(&self.table, &segs, published, min) else {
                            return;
                        };
                        let old = self.sh.flip_epoch();
                        self.pending_cut = Some((cut, old));
                        self.pass_written = 0;
                        (cut, old)
                    }
                };
                if !self.sh.epoch_quiet(epoch) {
                    return;
                }
                while let Some(m) = self.sh.inbox.pop() {
                    self.handle(m);
                }
                // Jobs in the lane are live: the pass rewrites them from
                // the table.
                self.spill_lane();
                self.pending_cut = None;
                // The engine-wide counter may be ahead of this shard's ids:
                // the pass's id mark covers every id handed out.
                let next = self.counters.next_id.load(Ordering::Relaxed);
                if next > self.table.next_id() {
                    self.table.skip_ids(next - self.table.next_id());
                }
                Pass::new(&self.table, cut)
            }
        };
        if self.compact_retry_at.is_some_and(|at| Instant::now() < at) {
            self.pass = Some(pass);
            return;
        }
        // Pending outcomes first, with no condition: only the pass's own
        // records may be refused for space.
        self.flush();
        let before = pass;
        let (_, done) = pass.step(&self.table, COMPACT_BATCH, &mut self.recs);
        let bytes: u64 = self.recs.frames(frame_max(&wal)).map(|c| frame_len(c.len() as u64)).sum();
        // The room it needs is kept by puts and outcomes; `1`: a batch goes
        // in whole or not at all (the room for all its frames is checked
        // first), so a batch a full disk refuses wastes nothing.
        let lsn = match self.flush_keeping(1) {
            Ok(Some(lsn)) => {
                self.pass_written = self.pass_written.saturating_add(bytes);
                lsn
            }
            Err(WalError::NoSpace { .. }) => {
                // A full disk: this batch again a little later (the jobs
                // before it are rewritten already); outcomes shrink what is
                // left to rewrite.
                self.pass = Some(before);
                self.compact_retry_at = Some(Instant::now() + COMPACT_RETRY);
                return;
            }
            Ok(None) | Err(_) => {
                self.pass = None;
                return;
            }
        };
        self.compact_retry_at = None;
        if done {
            self.pass = None;
            self.pending_release = Some((pass.cut, lsn));
            wal.request_sync();
        } else {
            self.pass = Some(pass);
        }
    }
}
