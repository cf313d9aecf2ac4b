//! # spindle
//!
//! Facade crate: re-exports the public API of Spindle's crates. See the
//! repository README and `docs/`.
//!
//! ```no_run
//! use spindle::{Engine, Durability, Job, JobId, JobRef, Outcome, SubmitError};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let engine = Engine::builder().durability(Durability::Memory).build()?;
//! engine.register("emails", |job: &JobRef<'_>| {
//!     println!("sending {} ({} bytes)", job.id(), job.payload().len());
//!     Outcome::Done
//! })?;
//! let id: Result<JobId, SubmitError> = engine.submit(Job::new("emails", b"hi".to_vec()));
//! println!("queued {}", id?);
//! engine.shutdown()?;
//! # Ok(()) }
//! ```

#![deny(unsafe_code)]

pub mod distributed;

pub use spindle_client as client;
pub use spindle_core as table;
pub use spindle_engine as engine;
pub use spindle_engine::{
    BuildError, Durability, Engine, EngineBuilder, FileAccess, Handler, Job, JobId, JobRef,
    Latency, Outcome, QueueStats, ShutdownError, Stats, SubmitError, WorkerStats, Workers,
};
/// Distributed queues shared by many nodes through NATS JetStream
/// ([`jetstream::Node`]; `docs/jetstream.md`).
pub use spindle_jetstream as jetstream;
pub use spindle_server as server;
pub use spindle_wal as wal;
pub use spindle_web as web;
