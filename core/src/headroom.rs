//! Head-room on a full disk: how much log room a front-end keeps free of
//! new jobs, so that the records which finish jobs, and the compaction
//! that lets the log shrink, can always be written.
//!
//! The room past the log's tail is spent in layers. Each kind of record
//! is appended only if the log can still hold its layer's `keep` bytes
//! past it (`spindle_wal::Appender::append_keeping`), so a full disk
//! refuses them in this order:
//!
//! 1. **Puts** keep [`for_puts`]: everything below. A put the log cannot
//!    hold with that room is refused (the daemon answers `OUT_OF_MEMORY`,
//!    the library `SubmitError::DiskFull`).
//! 2. **Completions** (reserve, release, bury, kick, delete, lease
//!    timeouts; the library's starts and outcomes) keep
//!    [`for_completions`]: they may use one segment plus
//!    [`COMPLETION_BYTES`] per live job (enough to reserve and finish
//!    every live job once) and not what compaction needs.
//! 3. **Compaction** keeps nothing: its pass rewrites the live jobs
//!    ([`for_compaction`] estimates that, as `compact::cut_for` does),
//!    then the segments below its cut are released and the disk has room
//!    again. A pass starts once the records written are twice the live
//!    jobs' (`compact::cut_for`; the room allocated ahead does not
//!    count): on a full disk, deleting jobs gets the log there, and the
//!    pass then finds the room it needs kept.
//!
//! So the log can always compact, and a queue on a full disk can always
//! be worked off. What the completions' layer cannot promise: a client
//! that releases and reserves the same jobs over and over uses it up, and
//! then records beyond it are not logged until compaction or the
//! operator frees space (the front-ends say so in their logs; a job
//! whose delete was not logged runs again after a restart).
//!
//! The price: with puts refused only when the disk cannot hold the live
//! jobs' records twice plus a segment, a full log holds about half the
//! disk in live jobs.

use crate::compact::JOB_LOG_BYTES;
use crate::view::Totals;

/// Log bytes kept per live job for its completion: a `Reserve` frame and
/// a `Delete` frame as the daemon writes them (16-byte frame header and a
/// 13-byte record, padded to 16: 32 bytes each). A shard of the library
/// batches several records per frame, so this covers its start and
/// outcome too.
pub const COMPLETION_BYTES: u64 = 64;

/// Bytes of a compaction pass besides its jobs: its last records (queue
/// policies and the id mark), and jobs whose records are larger than
/// estimated (long unique keys, error texts).
pub const COMPACTION_SLACK: u64 = 16 << 10;

/// Frames do not cross segments: a frame that does not fit in what is
/// left of one leaves padding there. Front-ends write frames of at most a
/// sixteenth of a segment, so padding takes at most that share of a
/// segment; a compaction pass is counted an eighth larger.
pub const PADDING_SHARE: u64 = 8;

/// Room a put must leave past its records: one segment's worth
/// (`segment_bytes`), every live job's completion, and a compaction pass.
pub fn for_puts(totals: &Totals, segment_bytes: u64) -> u64 {
    segment_bytes
        .saturating_add(totals.jobs.saturating_mul(COMPLETION_BYTES))
        .saturating_add(for_compaction(totals))
}

/// Room a completion must leave past its records: what the compaction
/// pass still has to write. `pass_written`: bytes the pass in progress
/// has written so far (0 when none is).
pub fn for_completions(totals: &Totals, pass_written: u64) -> u64 {
    for_compaction(totals).saturating_sub(pass_written)
}

/// What a compaction pass over the live jobs writes, at most (estimated):
/// their payloads, [`JOB_LOG_BYTES`] each, their queues' policies, and
/// [`COMPACTION_SLACK`].
pub fn for_compaction(totals: &Totals) -> u64 {
    let records = totals
        .bytes
        .saturating_add(totals.jobs.saturating_mul(JOB_LOG_BYTES))
        .saturating_add(totals.queues.saturating_mul(128));
    records.saturating_add(records / PADDING_SHARE).saturating_add(COMPACTION_SLACK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn puts_keep_more_than_completions_and_completions_leave_compaction_its_room() {
        let t = Totals { jobs: 10, bytes: 1000, queues: 1, ..Totals::default() };
        let pass = 1928 + 1928 / 8 + COMPACTION_SLACK;
        assert_eq!(for_compaction(&t), pass);
        assert_eq!(for_completions(&t, 0), pass);
        assert_eq!(for_completions(&t, 500), pass - 500);
        assert_eq!(for_completions(&t, u64::MAX), 0);
        assert_eq!(for_puts(&t, 65536), 65536 + 640 + pass);
        assert_eq!(for_puts(&Totals { jobs: u64::MAX, ..t }, 1), u64::MAX);
    }
}
