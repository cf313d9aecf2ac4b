//! # spindle-jetstream
//!
//! Spindle's scale-out backend: distributed queues that any number of
//! Spindle nodes (processes, on any machines) share through NATS
//! JetStream, rather than a home-made cluster. A job put on any node runs
//! on one node, at least once; a node that dies holding leases loses
//! nothing acknowledged: its jobs are redelivered elsewhere after their TTR.
//!
//! ```no_run
//! use spindle_jetstream::{Node, NodeOptions, Put, QueueConfig, Receipt};
//! use spindle_engine::Outcome;
//! use std::time::Duration;
//! # fn main() -> Result<(), spindle_jetstream::Error> {
//! let node = Node::connect(NodeOptions::new("nats://127.0.0.1:4222").namespace("app"))?;
//! node.declare("emails", QueueConfig::default().ttr(Duration::from_secs(30)).max_attempts(5))?;
//! if let Receipt::Duplicate { seq, .. } = node.put(Put::new("emails", "hi").unique_key("user-7"))? {
//!     println!("already queued as {seq}");
//! }
//! let pool = node.work("emails", 2, |job| {
//!     println!("sending {} ({} bytes)", job.id(), job.payload().len());
//!     Outcome::Done
//! })?;
//! pool.stop();
//! node.shutdown();
//! # Ok(()) }
//! ```
//!
//! The door in: [`Node::connect`], [`Node::declare`], then [`Node::put`] /
//! [`Node::put_batch`] ([`Put`] with unique key, delay, deadline and a
//! priority, which picks one of the queue's
//! [`QueueConfig::priority_bands`], pulled strictly by band with aging), and
//! either [`Node::work`] (fixed threads), [`Node::work_elastic`] (threads
//! sized from the queue's lag, publishing `desired_workers`) or
//! [`Node::worker`] and [`Lease`] by hand. [`Node::schedule_every`] adds a
//! server-side periodic job (2.14+).
//!
//! Each feature is used only where the server's version (read from its
//! INFO) has it, and every created stream and consumer is read back and
//! checked. `docs/jetstream.md` in the repository has the mapping from
//! Spindle's semantics to JetStream per server version, and what does not
//! map.

mod band;
mod elastic;
mod error;
mod evented;
mod hold;
mod lease;
mod names;
mod node;
mod pull;
mod put;
mod queue;
mod setup;
mod version;
mod work;

pub use elastic::{ElasticOptions, ElasticPool};
pub use error::Error;
pub use evented::{Settle, Settled};
pub use lease::{Failed, Lease, Worker};
pub use node::{Node, NodeOptions};
pub use pull::Puller;
pub use put::{Put, Receipt};
pub use queue::{QueueConfig, DEFAULT_PRIORITY};
pub use version::{Features, ServerVersion};
pub use work::{Lag, WorkPool};
