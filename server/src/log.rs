//! The daemon's write-ahead log handle ([`Log`]): appending a command's
//! records (room checked per command, the round's records claimed and
//! written as one frame per loop round), and what a full disk does to
//! that.
//!
//! - A put's records are appended only if the log keeps the head-room of
//!   `spindle_core::headroom::for_puts` after them; otherwise nothing is
//!   appended and the put is refused with `OUT_OF_MEMORY`.
//! - Records that complete work (reserve, release, bury, kick, delete,
//!   timeouts) keep only the room compaction needs
//!   (`headroom::for_completions`), and compaction keeps none: it frees
//!   space.
//! - A full disk ([`WalError::NoSpace`]) never fails the log: once space
//!   is freed (compaction releasing segments, or another file removed)
//!   appends succeed again. Any other append error fails it for good, and
//!   every later change is refused (`INTERNAL_ERROR`).

use std::sync::Arc;

use spindle_core::record;
use spindle_core::Records;
use spindle_wal::{frame_len, Appender, Wal, WalError, SEGMENT_HEADER};

use spindle_core::compact::Pass;

/// The largest frame payload to write: at most a sixteenth of a segment,
/// so that the padding a frame leaves at a segment's end (frames do not
/// cross segments) wastes little of the head-room (`spindle_core::
/// headroom::PADDING_SHARE`).
pub(crate) fn frame_max(wal: &Wal) -> u64 {
    wal.max_payload().min(wal.segment_size() / 16)
}

/// How an append ended, when it did not succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Logged {
    /// The disk cannot hold the records (and the room asked for): nothing
    /// of them was appended unless they took several frames. The log
    /// stays usable.
    NoSpace,
    /// The log failed (or a record was over its limit): not appended.
    Failed,
}

/// The write-ahead log, when the daemon has a data directory.
pub(crate) struct Log {
    pub wal: Arc<Wal>,
    /// Deletes released segments off the loop thread: `release_below`
    /// unmaps and unlinks whole segment files, which took 100-200 ms per
    /// compaction on this machine's ext4 (measured with 10 MiB segments),
    /// a stall every connection would see.
    releaser: Option<std::sync::mpsc::Sender<u64>>,
    pub app: Appender,
    pub pass: Option<Pass>,
    /// Compaction could not append its last batch for lack of space: it
    /// retries on the next regular tick rather than every 10 ms.
    pub pass_stalled: bool,
    /// Log bytes the last pass has written (completions leave room for
    /// the rest of it). Reset when the next pass begins, not at the
    /// release: the release thread frees the space a moment later.
    pub pass_written: u64,
    /// (segments below this, once this LSN is durable).
    pub pending_release: Option<(u64, u64)>,
    /// Highest LSN appended, for `-f0` waits.
    pub last_lsn: Option<u64>,
    /// A failed append: every later change is refused.
    pub failed: Option<String>,
    /// A flush failed since [`Log::take_lost`] last looked: the records
    /// staged before it are not in the log.
    lost: bool,
    /// This round's records, not yet claimed ([`Log::append`], step 1).
    round: Records,
    /// Their frames' bytes.
    round_bytes: u64,
    /// The last [`Log::append`] that failed had claimed some of its frames
    /// (step 2, several frames: a batch refused half way).
    pub partial: bool,
}

impl Drop for Log {
    fn drop(&mut self) {
        // Before the release thread (which may hold the last reference to
        // the WAL, and shut it down) goes with `releaser`.
        self.flush();
    }
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log").field("last_lsn", &self.last_lsn).finish_non_exhaustive()
    }
}

impl Log {
    pub(crate) fn new(wal: Wal) -> Log {
        let app = wal.appender();
        let wal = Arc::new(wal);
        let (tx, rx) = std::sync::mpsc::channel::<u64>();
        let w = wal.clone();
        let releaser = std::thread::Builder::new()
            .name("spindled-release".into())
            .spawn(move || {
                // Ends when the Log (the sender) is dropped.
                while let Ok(below) = rx.recv() {
                    if let Err(e) = w.release_below(below) {
                        tracing::warn!("releasing old log segments failed: {e}");
                    }
                }
            })
            .ok()
            .map(|_| tx);
        Log {
            wal,
            releaser,
            app,
            pass: None,
            pass_stalled: false,
            pass_written: 0,
            pending_release: None,
            last_lsn: None,
            failed: None,
            lost: false,
            round: Records::new(),
            round_bytes: 0,
            partial: false,
        }
    }

    /// A log that releases segments on the calling thread (tests that
    /// count segments right after a compaction).
    #[cfg(test)]
    pub(crate) fn inline(wal: Wal) -> Log {
        let mut l = Log::new(wal);
        l.releaser = None;
        l
    }

    /// Writes the records appended since the last flush. False if that
    /// failed: the log has failed, and nothing appended since the last
    /// flush may be acknowledged.
    pub(crate) fn flush(&mut self) -> bool {
        if self.claim_round().is_err() {
            self.app.flush_batch().ok();
            return false;
        }
        match self.app.flush_batch() {
            Ok(()) => true,
            Err(e) => {
                self.fail(e.to_string());
                self.lost = true;
                false
            }
        }
    }

    /// Whether a flush failed since the last call (whoever flushed).
    pub(crate) fn take_lost(&mut self) -> bool {
        std::mem::take(&mut self.lost)
    }

    /// Deletes the segments below `below` (on the release thread if there
    /// is one), and takes a fresh appender so the files can go.
    pub(crate) fn release(&mut self, below: u64) {
        self.flush();
        let sent = self.releaser.as_ref().is_some_and(|tx| tx.send(below).is_ok());
        if !sent {
            // No release thread (it could not be started): do it here.
            let _ = self.wal.release_below(below);
        }
        // The appender caches its segment: a fresh one lets the released
        // files go.
        self.app = self.wal.appender();
    }

    /// Appends `recs` (one command's records), only if the log can still
    /// hold `keep` bytes past them (0: no condition); returns their bytes.
    /// Nothing is written before the next [`Log::flush`], which must come
    /// before anything they change is acknowledged.
    ///
    /// 1. Usually the records join the round's (`round`): the room for the
    ///    round so far, these records, `keep` and any padding their frames
    ///    could need is checked (the segments for it made) now, and the
    ///    flush claims and writes the whole round as one frame.
    /// 2. Where that room is not there (a nearly full disk), or a record is
    ///    over the frame limit, the round so far is claimed at once, then
    ///    these records frame by frame, each only if the log keeps `keep`
    ///    past all of them (`Appender::append_batched`), as exactly as a
    ///    frame per command always did: a full disk or a record over the
    ///    log's limit fails this command alone and leaves the log usable;
    ///    any other error fails the log.
    pub(crate) fn append(&mut self, recs: &Records, keep: u64) -> Result<u64, Logged> {
        let max = frame_max(&self.wal);
        // One command's records usually fit one frame: no walk over them.
        let len = recs.bytes().len() as u64;
        let one = len <= max.min(record::FRAME_BYTES as u64);
        let total: u64 = if one {
            frame_len(len)
        } else {
            recs.frames(max).map(|c| frame_len(c.len() as u64)).sum()
        };
        let bytes = self.round_bytes.saturating_add(total);
        // Each frame may leave a segment's end as padding (less than a
        // frame: `max` and a header): one per segment the round reaches,
        // counting only what a segment holds besides such a padding, and
        // two more; and `frames` may align each frame up by 15 bytes.
        let frame = max + 16;
        let per_segment = self.wal.segment_size().saturating_sub(SEGMENT_HEADER + frame).max(1);
        let pad = frame.saturating_mul(2 + bytes / per_segment);
        let need = bytes.saturating_add(pad).saturating_add(keep);
        self.partial = false;
        let fits = (one || recs.frames(max).all(|c| c.len() as u64 <= max))
            && self.wal.ensure_room(need).is_ok();
        if fits {
            self.round.append(recs);
            self.round_bytes = bytes;
            return Ok(total);
        }
        self.claim_round()?;
        // The frames after each one, so the first is refused when the
        // whole of them would not leave `keep` (several frames: a batch).
        let mut after = total;
        for chunk in recs.frames(max) {
            after = after.saturating_sub(frame_len(chunk.len() as u64));
            let keep = if keep == 0 { 0 } else { keep.saturating_add(after) };
            self.claim(chunk, keep)?;
            self.partial = true;
        }
        Ok(total)
    }

    /// Claims the round's records (their room was checked as they came).
    fn claim_round(&mut self) -> Result<(), Logged> {
        if self.round.is_empty() {
            return Ok(());
        }
        let round = std::mem::take(&mut self.round);
        let max = frame_max(&self.wal);
        let mut res = Ok(());
        for chunk in round.frames(max) {
            res = self.claim(chunk, 0);
            if res.is_err() {
                break;
            }
        }
        self.round = round;
        if self.round_bytes > 1 << 20 {
            // A round of large records: do not hold its copy for good.
            self.round = Records::new();
        }
        self.round.clear();
        self.round_bytes = 0;
        if res.is_err() {
            // Commands answered as logged are not: the loop must be told,
            // and whatever the cause (room was checked for all of them),
            // the log has failed.
            self.lost = true;
            self.fail("the log could not take a round of records it had room for".into());
        }
        res.map_err(|_| Logged::Failed)
    }

    /// Claims one frame (`keep` as [`Log::append`]).
    fn claim(&mut self, chunk: &[u8], keep: u64) -> Result<(), Logged> {
        match self.app.append_batched(record::WAL_KIND, chunk, keep) {
            Ok(lsn) => {
                self.last_lsn = Some(lsn);
                Ok(())
            }
            Err(WalError::NoSpace { .. }) => Err(Logged::NoSpace),
            Err(WalError::RecordTooLarge { .. }) => Err(Logged::Failed),
            Err(e) => {
                self.fail(e.to_string());
                Err(Logged::Failed)
            }
        }
    }

    /// Fails the log for good (the first reason is kept): every later
    /// change is refused.
    fn fail(&mut self, why: String) {
        if self.failed.is_none() {
            tracing::error!("the log failed: {why}; every change is refused until a restart");
            self.failed = Some(why);
        }
    }
}
