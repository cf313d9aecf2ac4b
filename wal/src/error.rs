//! `WalError`: every way a log operation can fail, with a message that says
//! what to do about it.

use std::io;
use std::path::PathBuf;

/// An error from opening, appending to, syncing or reclaiming a log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WalError {
    /// The filesystem has no room for a new segment. Nothing already
    /// appended is affected; appends succeed again once space is freed.
    #[error(
        "no space left for WAL segment {path} ({bytes} bytes): free disk space, \
         release old segments or configure a smaller segment size"
    )]
    NoSpace {
        /// The segment file that could not be allocated.
        path: PathBuf,
        /// Bytes that were asked for.
        bytes: u64,
    },
    /// An I/O error other than a full disk.
    #[error("WAL I/O error during {op} on {path}: {source}")]
    Io {
        /// What the log was doing.
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// Strict recovery found a damaged frame or segment.
    #[error(
        "WAL segment {segment} is corrupt at offset {offset} ({reason}); \
         open with RecoveryMode::Truncate to cut the log there ({dropped} bytes would be dropped)"
    )]
    Corrupt {
        /// The segment's base LSN (its file name).
        segment: u64,
        /// Byte offset inside the segment file.
        offset: u64,
        /// What was wrong.
        reason: String,
        /// Bytes after the damage that truncation would discard.
        dropped: u64,
    },
    /// A segment belongs to another shard's log.
    #[error(
        "WAL segment {segment} belongs to shard {found}, not shard {expected}: \
         the data directory layout is mixed up"
    )]
    WrongShard {
        /// The segment's base LSN.
        segment: u64,
        /// The shard this log was opened for.
        expected: u32,
        /// The shard written in the segment header.
        found: u32,
    },
    /// A record is larger than one frame or one segment can hold.
    #[error("record of {len} bytes exceeds the WAL limit of {max} bytes: split it or raise segment_size")]
    RecordTooLarge {
        /// The payload length.
        len: usize,
        /// The largest payload accepted.
        max: u64,
    },
    /// Record kind 0 and 255 are reserved by the format.
    #[error("record kind {0} is reserved; use 1..=254")]
    ReservedKind(u8),
    /// An earlier sync failed. Like PostgreSQL, the log does not retry: the
    /// kernel may have dropped the dirty pages, so the process must reopen the
    /// log (recovery) to learn what is really on disk.
    #[error("the WAL is failed after an earlier sync error ({0}); reopen it to recover")]
    Failed(String),
    /// Another `Wal` (in this or another process) has the directory open.
    #[error("WAL directory {path} is in use by another process or handle; stop it first")]
    Locked {
        /// The log directory.
        path: PathBuf,
    },
    /// The log was closed.
    #[error("the WAL is closed")]
    Closed,
    /// The options cannot work.
    #[error("invalid WAL configuration: {0}")]
    Config(String),
    /// [`crate::FileAccess::group_named`] found no such group.
    #[error("no group named {name:?}: create it (groupadd) or give a gid")]
    UnknownGroup {
        /// The name looked up.
        name: String,
    },
}

impl WalError {
    /// Builds an `Io` error, or `NoSpace` when the OS said ENOSPC/EDQUOT.
    /// For [`crate::Storage`] implementations outside this crate too.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        let path = path.into();
        match source.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => WalError::NoSpace { path, bytes: 0 },
            _ => WalError::Io { op, path, source },
        }
    }
}
