//! # spindle-core
//!
//! The job table: every rule of a job's life, once, for both of Spindle's
//! front-ends (the library's shards and the `spindled` daemon). It is a
//! single-threaded, deterministic state machine:
//!
//! - it does no I/O, starts no thread and reads no clock: time is an
//!   argument ([`Time`]);
//! - each change appends the log records it implies to a [`Records`]
//!   buffer the caller owns, for the caller to write to its log in
//!   batches; replaying those records ([`Table::replay`],
//!   [`Table::finish_replay`]) rebuilds the same table, with running jobs
//!   back to ready.
//!
//! What it holds: queues with priorities (FIFO within a priority), delays
//! and timers, reservations with TTR, touch and fencing tokens,
//! release/fail with retry and backoff ([`RetryPolicy`]), bury/kick and
//! poison pills, unique keys, pause and clear, waiting reservers, limits
//! ("full" errors), per-queue counters and wait histograms.
//!
//! ```
//! use spindle_core::{By, Config, PutSpec, Records, Table, Time};
//! let mut t = Table::new(Config::default());
//! let mut log = Records::new();
//! let now = Time::from_secs(1_700_000_000);
//! let q = t.queue("emails").unwrap();
//! let id = t.next_id();
//! t.put(now, id, q, &PutSpec { pri: 10, ..PutSpec::default() }, b"hi", &mut log).unwrap();
//! let lease = t.reserve(now, q, 0, &mut log).unwrap();
//! t.complete(lease.id, By::holder(0), &mut log).unwrap();
//! assert_eq!(log.len(), 3); // put, reserve, delete
//! ```
//!
//! `docs/architecture.md` places it among the crates; `docs/record-format.md`
//! gives its records byte by byte.

#![deny(unsafe_code)]

mod cancel;
mod check;
pub mod compact;
mod error;
mod expiry;
mod fifos;
pub mod headroom;
mod histogram;
mod idmap;
mod job;
mod leases;
mod limit;
mod outcome;
mod prefetch;
mod queue;
pub mod record;
mod replay;
mod reserve;
mod retry;
mod schedule;
pub mod staffing;
mod table;
mod time;
mod timers;
mod view;
mod when;

pub(crate) use idmap::IdMap;

pub use cancel::Cancelled;
pub use error::{
    validate_queue_name, JobError, NameError, PutError, MAX_QUEUE_NAME, MAX_UNIQUE_KEY,
};
pub use expiry::EXPIRED_TEXT;
pub use histogram::LogHistogram;
pub use job::{Counts, Payload, State, INLINE};
pub use limit::{LimitError, Limits, OnExpiry, Rate};
pub use outcome::{By, Failed, MAX_ERROR_TEXT};
pub use queue::{QueueCounters, QueueId, URGENT};
pub use record::Records;
pub use replay::Recovered;
pub use reserve::{Grant, Lease, Reserved, WaitEnd, SAFETY_MARGIN};
pub use retry::{RetryPolicy, Rng, DEFAULT_MAX_ATTEMPTS};
pub use schedule::{Missed, ScheduleError, ScheduleSpec, ScheduleView};
pub use table::{Config, Put, PutSpec, Table};
pub use time::{Clock, Time};
pub use view::{JobView, QueueView, Totals};
pub use when::{When, WhenError};
