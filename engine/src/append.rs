//! Appending a shard's records to its log: frames of at most a sixteenth
//! of a segment, each appended only if the log keeps the head-room asked
//! for (`spindle_core::headroom`, `docs/full-disk.md`), and the log's
//! errors as a submitter sees them.

use spindle_core::record as core_record;
use spindle_core::Records;
use spindle_wal::{frame_len, Appender, Wal, WalError};

/// The largest frame payload to write: at most a sixteenth of a segment,
/// so that the padding a frame leaves at a segment's end (frames do not
/// cross segments) wastes little of the head-room.
pub(crate) fn frame_max(wal: &Wal) -> u64 {
    wal.max_payload().min(wal.segment_size() / 16)
}

/// A log error as a submitter sees it.
pub(crate) fn submit_error(e: WalError) -> crate::SubmitError {
    match e {
        WalError::Closed => crate::SubmitError::ShuttingDown,
        e @ WalError::NoSpace { .. } => crate::SubmitError::DiskFull(e),
        e => crate::SubmitError::Io(e),
    }
}

/// How a record's appender waits for the appenders before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Publish {
    /// Until its records are published (in the page cache, safe from
    /// `kill -9`): [`Appender::append`].
    Wait,
    /// Not at all: the caller waits for the records to be durable before
    /// acknowledging them ([`Appender::append_deferred`]; `Sync` submits).
    Defer,
}

/// Appends `recs` as frames of table records, each only if the log can
/// still hold `keep` bytes past the records (0: no condition). Several
/// frames (a large batch) are refused at the first if they would not all
/// leave `keep`.
pub(crate) fn append_frames(
    app: &mut Appender,
    wal: &Wal,
    recs: &Records,
    keep: u64,
    publish: Publish,
) -> Result<u64, WalError> {
    let max = frame_max(wal);
    let mut after: u64 = recs.frames(max).map(|c| frame_len(c.len() as u64)).sum();
    let mut last = 0;
    for chunk in recs.frames(max) {
        after = after.saturating_sub(frame_len(chunk.len() as u64));
        let keep_after = keep.saturating_add(after);
        last = match (keep == 0, publish) {
            (true, Publish::Wait) => app.append(core_record::WAL_KIND, chunk)?,
            (true, Publish::Defer) => app.append_deferred(core_record::WAL_KIND, chunk)?,
            (false, Publish::Wait) => {
                app.append_keeping(core_record::WAL_KIND, chunk, keep_after)?
            }
            (false, Publish::Defer) => {
                app.append_keeping_deferred(core_record::WAL_KIND, chunk, keep_after)?
            }
        };
    }
    Ok(last)
}
