//! Batched appends: claim a record's room now, write and publish it later,
//! for an appender whose owner acknowledges nothing before it flushes (the
//! daemon's loop: one write per loop iteration instead of one per command).
//!
//! 1. [`Appender::append_batched`] claims the record's range exactly as
//!    [`Appender::append_keeping`] does (the same checks, the same
//!    `NoSpace` with nothing claimed) and encodes its frame into the
//!    appender's buffer. Nothing is written and the claim is not
//!    published: the record is invisible to readers, no sync covers it,
//!    and every later claim, of any appender, waits behind it to publish
//!    (`cursor.rs`, step 3).
//! 2. [`Appender::flush_batch`] writes the buffered frames, one write per
//!    run of frames that lie back to back in one segment (a frame that
//!    moved to the next segment writes its padding, then starts a new
//!    run), then publishes the claims in order.
//! 3. A write that fails publishes the claims anyway (later appenders must
//!    not be stuck), marks the hole at the first claim not written, and
//!    fails the log, as a failed [`Appender::append`] does: recovery stops
//!    at the hole, and nothing from it on is acknowledged.
//!
//! A plain append by the same appender flushes its batch first (a claim
//! after unpublished claims of its own would wait for itself), and so does
//! dropping the appender.

use super::{Appender, WalError};
use crate::cursor::Claim;
use crate::record;
use crate::segment::Segment;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// The most buffer a flushed batch keeps for the next one.
const KEEP_CAPACITY: usize = 1 << 20;

/// Records claimed and encoded, not yet written.
#[derive(Debug, Default)]
pub(super) struct Batch {
    /// The encoded frames, back to back.
    bytes: Vec<u8>,
    staged: Vec<Staged>,
}

#[derive(Debug)]
struct Staged {
    claim: Claim,
    /// The segment holding `claim.frame`.
    seg: Arc<Segment>,
    /// One past this frame's last byte in `Batch::bytes`.
    to: usize,
}

impl Batch {
    pub(super) fn is_empty(&self) -> bool {
        self.staged.is_empty()
    }
}

impl Appender {
    /// Claims room for one record of `kind` and keeps its frame in this
    /// appender's batch, to be written by [`Appender::flush_batch`]; returns
    /// its LSN. `keep`: as [`Appender::append_keeping`] (0: no condition).
    ///
    /// Until the flush the record is neither readable nor safe from
    /// `kill -9`, and every other appender's records wait behind it: only
    /// an appender whose owner flushes before it acknowledges anything, and
    /// soon, may batch (the module docs have the protocol). A
    /// [`Wal::wait_durable`](super::Wal::wait_durable) for its LSN before
    /// the flush never returns.
    pub fn append_batched(&mut self, kind: u8, payload: &[u8], keep: u64) -> Result<u64, WalError> {
        let sh = &*self.shared;
        let len = sh.admit(kind, payload)?;
        if keep > 0 {
            sh.ensure_room(len.saturating_add(keep))?;
        }
        let cache = &mut self.cache;
        let claim = sh.cursor.claim(&sh.geo, len, |idx| sh.ensure(cache, idx))?;
        let seg = match &self.cache {
            Some((i, seg)) if *i == sh.geo.index(claim.frame) => seg.clone(),
            // Cannot happen: the last `ensure` before the winning CAS cached
            // this segment.
            _ => return Err(self.lost_segment(claim)),
        };
        let b = &mut self.batch;
        let from = b.bytes.len();
        b.bytes.resize(from + len as usize, 0);
        record::encode_into(&mut b.bytes[from..], claim.frame, kind, payload);
        b.staged.push(Staged { claim, seg, to: b.bytes.len() });
        Ok(claim.frame)
    }

    /// Writes and publishes every record of the batch (step 2); each is
    /// then as an [`Appender::append`]ed one: readable, and safe from
    /// `kill -9`. An error means the log failed (step 3).
    pub fn flush_batch(&mut self) -> Result<(), WalError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let mut batch = std::mem::take(&mut self.batch);
        let sh = &*self.shared;
        let staged = &batch.staged;
        let mut failed: Option<(u64, String)> = None;
        let (mut i, mut from) = (0, 0);
        while let Some(first) = staged.get(i) {
            // The run: staged[i..j], back to back in `first.seg`.
            let mut j = i + 1;
            // (A frame can start a segment with no padding before it,
            // when the one before ended exactly at its segment's end.)
            while staged.get(j).is_some_and(|s| {
                Arc::ptr_eq(&s.seg, &first.seg)
                    && s.claim.start == s.claim.frame
                    && s.claim.frame == staged[j - 1].claim.end
            }) {
                j += 1;
            }
            let to = staged[j - 1].to;
            if failed.is_none() {
                if let Err(why) = write_run(sh, first, &batch.bytes[from..to]) {
                    failed = Some((first.claim.start, why));
                }
            }
            (i, from) = (j, to);
        }
        if let Some((hole, why)) = &failed {
            sh.hole.fetch_min(*hole, Ordering::AcqRel);
            let mut st = sh.lock();
            sh.fail(&mut st, why.clone());
        }
        let mut swept = false;
        for s in staged {
            swept |= sh.cursor.publish(&s.claim);
        }
        if swept {
            sh.kick_flusher();
        }
        let last = staged.last().map_or(0, |s| s.claim.start);
        batch.bytes.clear();
        batch.staged.clear();
        if batch.bytes.capacity() > KEEP_CAPACITY {
            // A burst of large records: do not hold its copy for good.
            batch.bytes = Vec::new();
            batch.staged = Vec::new();
        }
        self.batch = batch;
        if let Some((_, why)) = failed {
            return Err(WalError::Failed(why));
        }
        // An earlier claim (another appender's) whose write failed: these
        // records come after its hole and must not be acknowledged.
        if last >= sh.hole.load(Ordering::Acquire) {
            return Err(sh.failure(&sh.lock()));
        }
        Ok(())
    }

    /// Gives up a claim whose segment it cannot write: the batch before it
    /// is flushed, the claim is published as a hole and the log fails, so
    /// no claim is left unpublished behind.
    fn lost_segment(&mut self, claim: Claim) -> WalError {
        self.flush_batch().ok();
        self.shared.abandon(&claim, "appender lost track of its segment".to_string())
    }
}

/// Writes one run: the padding before its first frame, if that frame moved
/// to a new segment, then the run's frames in one write.
fn write_run(sh: &super::Shared, first: &Staged, bytes: &[u8]) -> Result<(), String> {
    let failed = |seg: &Segment, e: std::io::Error| {
        format!("write to {} failed: {e}", sh.storage.describe(seg.base).display())
    };
    if first.claim.start != first.claim.frame {
        let seg = sh
            .segment(sh.geo.index(first.claim.start))
            .ok_or_else(|| "segment to pad vanished (released while in use)".to_string())?;
        #[allow(unsafe_code)]
        // SAFETY: the claim gives us claim.start..claim.end and is not
        // published; the padding covers claim.start..end of its segment.
        unsafe { seg.write_padding(first.claim.start) }.map_err(|e| failed(&seg, e))?;
    }
    #[allow(unsafe_code)]
    // SAFETY: `bytes` are the encoded frames of this run's claims, which lie
    // back to back from first.claim.frame in `first.seg` and are ours alone
    // until published.
    unsafe { first.seg.write_encoded(first.claim.frame, bytes) }.map_err(|e| failed(&first.seg, e))
}

impl Drop for Appender {
    fn drop(&mut self) {
        // Unpublished claims would hold every later appender back for good.
        if !self.batch.is_empty() {
            if let Err(e) = self.flush_batch() {
                tracing::error!(error = %e, "a batch of log records failed to write at drop");
            }
        }
    }
}
