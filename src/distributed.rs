//! The library's door to distributed queues: a builder option that marks
//! chosen queues distributed (shared with other nodes through NATS
//! JetStream, `docs/jetstream.md`) while the rest stay the engine's own.
//!
//! ```no_run
//! use spindle::distributed::EngineBuilderExt;
//! use spindle::jetstream::{NodeOptions, QueueConfig};
//! use spindle::{Durability, Engine, Job, JobRef, Outcome};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let spindle = Engine::builder()
//!     .durability(Durability::Memory)
//!     .jetstream(NodeOptions::new("nats://10.0.0.5:4222").namespace("app"))
//!     .distributed("emails", QueueConfig::default().max_attempts(5))
//!     .build()?;
//! // One handler type for both kinds of queue.
//! spindle.register("emails", |job: &JobRef<'_>| {
//!     println!("sending {} on some node", job.id());
//!     Outcome::Done
//! })?;
//! spindle.register("thumbnails", |_: &JobRef<'_>| Outcome::Done)?; // local
//! spindle.submit(Job::new("emails", b"hi".to_vec()))?; // any node runs it
//! spindle.shutdown()?;
//! # Ok(()) }
//! ```
//!
//! Layering: `spindle-jetstream` depends on `spindle-engine` (the
//! [`crate::Outcome`] contract), so the engine cannot know JetStream; this facade
//! (which depends on both) joins them. [`Spindle`] routes by queue name:
//! [`Spindle::register`] and [`Spindle::submit`] go to the node for a
//! distributed queue and to the engine otherwise.

use crate::jetstream::{self, Node, NodeOptions, Put, QueueConfig, Receipt, WorkPool};
use spindle_engine::{
    BuildError, Engine, EngineBuilder, Handler, Job, JobId, JobRef, ShutdownError, SubmitError,
    DEFAULT_MAX_ATTEMPTS,
};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

/// Adds [`EngineBuilderExt::jetstream`] to [`EngineBuilder`].
pub trait EngineBuilderExt {
    /// Connects this process, as a node, to the JetStream server in `node`
    /// when built; queues marked with [`DistributedBuilder::distributed`]
    /// live there.
    fn jetstream(self, node: NodeOptions) -> DistributedBuilder;
}

impl EngineBuilderExt for EngineBuilder {
    fn jetstream(self, node: NodeOptions) -> DistributedBuilder {
        DistributedBuilder { engine: self, node, queues: BTreeMap::new(), threads: 1 }
    }
}

/// An [`EngineBuilder`] with a JetStream node and the queues shared there.
#[derive(Debug, Clone)]
pub struct DistributedBuilder {
    engine: EngineBuilder,
    node: NodeOptions,
    queues: BTreeMap<String, QueueConfig>,
    threads: usize,
}

impl DistributedBuilder {
    /// Marks `queue` distributed, with its lease, attempts, backoff and
    /// priority bands; every node using it must give the same `cfg`.
    pub fn distributed(mut self, queue: impl Into<String>, cfg: QueueConfig) -> Self {
        self.queues.insert(queue.into(), cfg);
        self
    }

    /// Handler threads this node runs per distributed queue (default 1;
    /// the engine's own controller does not size them).
    pub fn threads_per_queue(mut self, n: usize) -> Self {
        self.threads = n.max(1);
        self
    }

    /// Builds the engine, connects the node and declares every distributed
    /// queue (each read back and checked, `docs/jetstream.md`).
    pub fn build(self) -> Result<Spindle, Error> {
        let node = Node::connect(self.node)?;
        for (q, cfg) in &self.queues {
            node.declare(q, cfg.clone())?;
        }
        let engine = self.engine.build()?;
        Ok(Spindle {
            engine,
            node,
            queues: self.queues,
            threads: self.threads,
            pools: Mutex::new(Vec::new()),
        })
    }
}

/// An engine and a JetStream node, routing by queue name.
#[derive(Debug)]
pub struct Spindle {
    engine: Engine,
    node: Node,
    queues: BTreeMap<String, QueueConfig>,
    threads: usize,
    pools: Mutex<Vec<WorkPool>>,
}

/// Where [`Spindle::submit`] put a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Submitted {
    /// In this engine's queue.
    Local(JobId),
    /// In a distributed queue (queued, a duplicate of a unique key, or
    /// delayed: see [`Receipt`]).
    Distributed(Receipt),
}

/// Why building, registering, submitting or shutting down failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The engine could not be built.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// The engine refused a local job or handler.
    #[error(transparent)]
    Submit(#[from] SubmitError),
    /// The engine did not shut down cleanly.
    #[error(transparent)]
    Shutdown(#[from] ShutdownError),
    /// The JetStream node failed or refused.
    #[error(transparent)]
    JetStream(#[from] jetstream::Error),
    /// The job asks for something a distributed queue does not do; nothing
    /// was put rather than change its meaning.
    #[error("job for distributed queue {queue:?}: {what}")]
    Unsupported {
        /// The queue.
        queue: String,
        /// What, and what to do instead.
        what: String,
    },
}

impl Spindle {
    /// The engine (local queues: stats, limits, schedules, ...).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The JetStream node (distributed queues: lag, buried, schedules, ...).
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// Whether `queue` was marked distributed.
    pub fn is_distributed(&self, queue: &str) -> bool {
        self.queues.contains_key(queue)
    }

    /// Runs `handler` for `queue`: on this node's handler threads for a
    /// distributed queue (its jobs come from any node; [`JobRef::id`] is
    /// the stream sequence, and cancellation does not reach them), else on
    /// the engine's workers.
    pub fn register(&self, queue: &str, handler: impl Handler) -> Result<(), Error> {
        if !self.is_distributed(queue) {
            return Ok(self.engine.register(queue, handler)?);
        }
        let handler = Arc::new(handler);
        let pool = self.node.work(queue, self.threads, move |lease| {
            let job = JobRef::foreign(
                lease.id(),
                lease.queue(),
                lease.payload(),
                lease.attempt(),
                lease.priority(),
            );
            handler.handle(&job)
        })?;
        self.pools.lock().unwrap_or_else(PoisonError::into_inner).push(pool);
        Ok(())
    }

    /// Submits `job`: to its distributed queue through the node (priority,
    /// delay, unique key and deadline carried over, `docs/jetstream.md`),
    /// else to the engine. A distributed queue's attempts are the queue's
    /// ([`QueueConfig::max_attempts`]): a job asking for other attempts is
    /// refused ([`Error::Unsupported`]).
    pub fn submit(&self, job: Job) -> Result<Submitted, Error> {
        let Some(cfg) = self.queues.get(job.queue()) else {
            return Ok(Submitted::Local(self.engine.submit(job)?));
        };
        let p = job.into_parts();
        let queue_attempts = cfg.attempts();
        if p.max_attempts != DEFAULT_MAX_ATTEMPTS && p.max_attempts != queue_attempts {
            return Err(Error::Unsupported {
                queue: p.queue,
                what: format!(
                    "max_attempts {} per job; a distributed queue's attempts are its \
                     QueueConfig::max_attempts ({queue_attempts})",
                    p.max_attempts
                ),
            });
        }
        let mut put = Put::new(p.queue, p.payload).priority(p.priority).delay(p.delay);
        if let Some(k) = p.unique_key {
            put = put.unique_key(k);
        }
        if let Some(at) = p.deadline {
            match at.duration_since(SystemTime::now()) {
                Ok(left) if !left.is_zero() => put = put.expires_in(left),
                _ => return Err(SubmitError::DeadlinePassed.into()),
            }
        }
        Ok(Submitted::Distributed(self.node.put(put)?))
    }

    /// Stops the distributed queues' handler threads (jobs already leased
    /// run first), then the node and the engine.
    pub fn shutdown(self) -> Result<(), Error> {
        let pools = std::mem::take(&mut *self.pools.lock().unwrap_or_else(PoisonError::into_inner));
        for p in pools {
            p.stop();
        }
        self.node.shutdown();
        Ok(self.engine.shutdown()?)
    }
}
