//! # spindle-wal
//!
//! A segmented, memory-mapped write-ahead log: the durability layer under
//! each Spindle shard. It knows nothing about jobs; it stores opaque records
//! of a caller-chosen kind and gives them back after a crash.
//!
//! ```no_run
//! use spindle_wal::{SyncPolicy, Wal, WalOptions};
//! # fn main() -> Result<(), spindle_wal::WalError> {
//! let opts = WalOptions { sync: SyncPolicy::Always, ..WalOptions::default() };
//! let (wal, report) = Wal::open("/tmp/spindle-demo/shard-0", opts)?;
//! println!("recovered {} records", report.records);
//! wal.replay(|rec| println!("{} kind {} {} bytes", rec.lsn, rec.kind, rec.payload.len()))?;
//!
//! let mut appender = wal.appender();            // one per thread
//! let lsn = appender.append(1, b"hello")?;       // a CAS, a pwritev, a release store
//! wal.wait_durable(lsn)?;                        // group-committed fdatasync/msync
//! wal.release_below(lsn)?;                       // drop whole segments below lsn
//! wal.close()?;
//! # Ok(()) }
//! ```
//!
//! ## How it works
//! - The log is a sequence of fixed-size segment files (`segment.rs`), each
//!   preallocated and mapped before it is needed (`log.rs`'s preparer).
//! - Records are framed with a masked CRC32C and their own LSN (`record.rs`);
//!   an LSN is the record's byte position in the log.
//! - Any thread appends without a lock: claim a range with a CAS on the tail,
//!   write the frame (by default with `pwritev`, the mapping being only
//!   read; see [`WriteMethod`]), publish in log order (`cursor.rs`, model-checked with
//!   loom).
//! - A flusher thread per log makes the published prefix durable according to
//!   the [`SyncPolicy`]; concurrent waiters share one sync (group commit).
//! - Opening a log scans it and cuts a torn tail (`recovery.rs`).
//! - Storage sits behind the [`Storage`] trait so tests can crash the log at
//!   any sync and inject I/O errors ([`SimStorage`]).
//!
//! `docs/wal-format.md` in the repository specifies the format byte by byte.

#![deny(unsafe_code)]

mod access;
mod cursor;
mod error;
mod log;
mod marker;
mod record;
mod recovery;
#[allow(unsafe_code)]
mod segment;
#[allow(unsafe_code)]
pub mod storage;
mod sync;
mod waiters;

pub use access::FileAccess;
pub use error::WalError;
pub use log::{Appender, SyncPolicy, Wal, WalOptions, WalStats, SYNC_BUCKETS_US};
pub use marker::{RunMarker, MARKER_FILE};
pub use record::{
    decode, encode_into, frame_len, Decoded, Invalid, Record, FRAME_ALIGN, MAX_PAYLOAD,
};
pub use recovery::{RecoveryMode, RecoveryReport, Truncation};
pub use segment::SEGMENT_HEADER;
pub use storage::{FsStorage, SimFault, SimStorage, Storage, SyncMethod, WriteMethod};

/// Scans a raw segment file image the way recovery does and returns the
/// records it would keep; for fuzzing and tools. Never panics.
pub fn scan_segment_bytes(bytes: &[u8]) -> Vec<Record<'_>> {
    let base = segment::Header::decode(bytes).map(|h| h.base).unwrap_or(0);
    let mut out = Vec::new();
    let _ = recovery::scan_segment(bytes, base, |r| out.push(r));
    out
}
