//! Errors, one enum per operation family.

use crate::job::JobId;
use spindle_wal::WalError;

/// Why a job was not accepted. Nothing already accepted is affected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SubmitError {
    /// The engine holds as many jobs or bytes as configured; retry later or
    /// raise the limit. Nothing was dropped.
    #[error("engine is full: {what} limit of {limit} reached; retry later or raise the limit")]
    Full {
        /// `"jobs"` or `"bytes"`.
        what: &'static str,
        /// The configured limit.
        limit: u64,
    },
    /// The queue name breaks the naming rules.
    #[error("invalid queue name {name:?}: {reason}")]
    InvalidQueueName {
        /// The name given.
        name: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// The payload is larger than the configured maximum.
    #[error("payload of {len} bytes exceeds the maximum of {max} bytes")]
    PayloadTooLarge {
        /// Payload length.
        len: usize,
        /// Configured maximum.
        max: usize,
    },
    /// A live job of the same queue already holds this unique key.
    #[error("duplicate: job {existing} already holds this unique key")]
    Duplicate {
        /// The job holding the key.
        existing: JobId,
    },
    /// The job's deadline is not after the time of the submit.
    #[error("the job's deadline has already passed; give a later one or none")]
    DeadlinePassed,
    /// `shutdown()` has begun.
    #[error("the engine is shutting down")]
    ShuttingDown,
    /// The disk holding the data directory is full: the job was not
    /// logged and not taken (a batch: none of it). Nothing accepted is
    /// affected, and accepted jobs still run and finish: their outcomes use
    /// room the log keeps for them (`docs/architecture.md`, "A full
    /// disk"). Submit again once space is freed, by other files or by
    /// jobs finishing (compaction then releases log segments); no restart
    /// is needed.
    #[error(
        "disk full, the job was not accepted: {0}; free disk space or let queued jobs finish \
         (the log then releases segments), and submit again"
    )]
    DiskFull(#[source] WalError),
    /// The write-ahead log refused the record (failed sync, I/O error...).
    #[error("cannot log the job: {0}")]
    Io(#[from] WalError),
}

/// Why an engine could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The settings cannot work together.
    #[error("invalid engine configuration: {0}")]
    Config(String),
    /// The data directory could not be created or given its access
    /// ([`crate::EngineBuilder::data_access`]).
    #[error("data directory {dir}: {source}")]
    DataDir {
        /// The directory.
        dir: std::path::PathBuf,
        /// The error.
        #[source]
        source: WalError,
    },
    /// A shard's log could not be opened or recovered.
    #[error("shard {shard}: {source}")]
    Wal {
        /// Which shard.
        shard: usize,
        /// The log's error.
        #[source]
        source: WalError,
    },
    /// A log record could not be decoded (written by an incompatible version).
    #[error("shard {shard}: record at lsn {lsn} cannot be decoded: {reason}")]
    BadRecord {
        /// Which shard.
        shard: usize,
        /// Where.
        lsn: u64,
        /// What the decoder said.
        reason: String,
    },
    /// A shard thread could not be started.
    #[error("cannot start shard thread: {0}")]
    Thread(std::io::Error),
}

/// Why shutdown did not complete cleanly.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShutdownError {
    /// A shard's log failed to sync or close: jobs since the last good sync
    /// may be lost on power failure (not on process exit).
    #[error("shard {shard}: closing its log failed: {source}")]
    Wal {
        /// Which shard.
        shard: usize,
        /// The error.
        #[source]
        source: WalError,
    },
    /// A shard thread panicked (a bug: handler panics are caught).
    #[error("shard {0} thread panicked")]
    ShardPanicked(usize),
}
