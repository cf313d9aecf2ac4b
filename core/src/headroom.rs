//! Head-room on a full disk: how much log room a front-end keeps free of
//! new jobs, so that the records which finish jobs (and so let the log
//! shrink) can always be written.
//!
//! A front-end appends a put's records only if the log can still hold
//! [`for_puts`] more bytes after them (`spindle_wal::Appender::
//! append_keeping`); everything else (reserve, release, bury, kick,
//! delete, timeouts) is appended without a condition and uses that room.
//! Compaction keeps [`for_compaction`], so it can use the fixed part but
//! never what the live jobs' completions need, and its last step (the id
//! mark, after which segments are released) always fits. On a full disk that means:
//!
//! - every live job can be reserved and deleted (or reserved and buried
//!   or released) once: [`COMPLETION_BYTES`] each;
//! - one segment more covers the rest (releases and retries beyond that,
//!   kicks, lease timeouts, compaction's rewrites of the last jobs and
//!   its id mark);
//! - once the jobs are gone, compaction writes its few records and the
//!   segments below its cut are released: new jobs fit again.
//!
//! What the fixed part cannot promise: a client that releases and
//! reserves the same jobs over and over on a full disk uses it up; then
//! those records are not logged (the front-end says so) until space is
//! freed.

use crate::view::Totals;

/// Log bytes kept per live job: a `Reserve` frame and a `Delete` frame as
/// the daemon writes them (16-byte frame header and a 13-byte record,
/// padded to 16: 32 bytes each). A shard of the library batches several
/// records per frame, so this covers its reserve and outcome too.
pub const COMPLETION_BYTES: u64 = 64;

/// Bytes compaction keeps besides the live jobs' completions until its
/// last step: that step's records (queue policies and the id mark) must
/// still fit once every job is gone.
pub const COMPACTION_SLACK: u64 = 4096;

/// Room a put must leave in the log after its records: one segment's
/// worth (`segment_bytes`) plus the completions of every live job.
pub fn for_puts(totals: &Totals, segment_bytes: u64) -> u64 {
    segment_bytes.saturating_add(for_completions(totals)).saturating_add(COMPACTION_SLACK)
}

/// Room compaction must leave: the completions of every live job, and
/// [`COMPACTION_SLACK`] for the pass's last step (`finishing`: the one
/// that writes the id mark), which may use it.
pub fn for_compaction(totals: &Totals, finishing: bool) -> u64 {
    let slack = if finishing { 0 } else { COMPACTION_SLACK };
    for_completions(totals).saturating_add(slack)
}

/// The completions of every live job.
pub fn for_completions(totals: &Totals) -> u64 {
    totals.jobs.saturating_mul(COMPLETION_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn puts_keep_a_segment_and_every_jobs_completion_more_than_compaction() {
        let t = Totals { jobs: 10, ..Totals::default() };
        assert_eq!(for_compaction(&t, true), 640);
        assert_eq!(for_compaction(&t, false), 640 + COMPACTION_SLACK);
        assert_eq!(for_puts(&t, 65536), 65536 + 640 + COMPACTION_SLACK);
        assert_eq!(for_puts(&Totals { jobs: u64::MAX, ..t }, 1), u64::MAX);
    }
}
