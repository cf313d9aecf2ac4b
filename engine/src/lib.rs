//! # spindle-engine
//!
//! The job engine: pinned shards that own their jobs, queues, timers and
//! write-ahead log; lock-free submission; retries with backoff; dead
//! letters; unique keys; delays; priorities; work stealing; recovery.
//!
//! ```no_run
//! use spindle_engine::{Durability, Engine, Job, Outcome};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let engine = Engine::builder()
//!     .data_dir("/var/lib/myapp/spindle")
//!     .durability(Durability::Process)
//!     .build()?;
//! engine.register("emails", |job: &spindle_engine::JobRef<'_>| {
//!     println!("sending {} ({} bytes)", job.id(), job.payload().len());
//!     Outcome::Done
//! })?;
//! let id = engine.submit(Job::new("emails", b"hello".to_vec()).priority(10))?;
//! println!("queued {id}");
//! engine.shutdown()?;
//! # Ok(()) }
//! ```
//!
//! `docs/architecture.md` in the repository explains the design; each
//! module's docs give its protocol as numbered steps.

#![deny(unsafe_code)]

mod append;
mod blocking;
mod builder;
mod cancel;
mod control;
mod engine;
mod error;
mod job;
mod lag;
mod lane;
mod name;
mod paid;
mod pin;
mod record;
mod shard;
mod stats;
mod steal;
mod tsc;
mod sync {
    //! The loom shim (`spindle-park`), for the engine's atomics.
    pub(crate) use spindle_park::sync::*;
}

pub use builder::{Durability, EngineBuilder, Workers};
pub use engine::{Engine, Handler};
pub use error::{BuildError, ShutdownError, SubmitError};
pub use job::{Job, JobId, JobParts, JobRef, Outcome, DEFAULT_MAX_ATTEMPTS, MAX_QUEUE_NAME};
pub use paid::ControlError;
pub use spindle_core::{
    Cancelled, LimitError, Limits, Missed, OnExpiry, Rate, ScheduleError, ScheduleSpec,
    ScheduleView, When,
};
pub use spindle_wal as wal;
pub use spindle_wal::FileAccess;
pub use stats::{
    ControllerInputs, Latency, QueueStats, ShardStats, StallReport, Stats, WorkerStats,
};
