//! Work stealing between shards.
//!
//! Each shard owns a Chase-Lev work-stealing deque (crossbeam-deque, after
//! Chase and Lev, "Dynamic Circular Work-Stealing Deque", SPAA 2005) and the
//! other shards hold its `Stealer`. The protocol:
//!
//! 1. Before a shard runs a job with more ready jobs queued behind it, and
//!    its deque is empty, it moves all of them (the most urgent first) into
//!    its deque as [`Task`]s and wakes at most one parked active shard. The
//!    jobs are now *running* as far as the owner's bookkeeping goes.
//!    Offering the whole backlog (not half) is what keeps a handler that
//!    blocks its shard from stranding the jobs behind it. A shard the lag
//!    controller parked does the same without running anything itself.
//! 2. The owner takes work from its deque first, so when nobody steals, the
//!    order is unchanged (priority, then FIFO), except that a job more urgent
//!    than the most urgent offered one runs before the offered ones.
//! 3. An idle shard calls `steal_batch_and_pop` on a victim's deque (it
//!    takes about half), runs the tasks, and sends each [`TaskOutcome`] back
//!    to the owner's inbox.
//! 4. The owner applies the outcome exactly as for its own runs and logs it
//!    in its own log. A job's records therefore never leave its owner's log,
//!    and recovery needs no merging across shards. If the process dies while
//!    a stolen job runs, the job is still `Put` (not `Done`) in its owner's
//!    log and comes back as ready: at-least-once, like any crash.
//!
//! Priority across shards is approximate: a job offered for stealing can run
//! on another shard after the less urgent jobs already in that shard's
//! deque, and within a shard a newly arrived job whose priority lies
//! between those of offered jobs waits behind the offered ones.
//!
//! A shard stuck in one handler for over 10 ms also gets help for jobs not
//! yet in its deque: producers route new jobs elsewhere (`engine.rs`), and
//! idle shards rescue the new jobs waiting in its inbox (`Shard::rescue`),
//! and the controller reports the stall (`control.rs`). What still waits
//! for the handler to return: jobs of the stuck shard whose delay expires
//! meanwhile (its timers fire on its own thread).

use crate::job::Outcome;
use spindle_core::Payload;
use std::sync::Arc;

/// A job offered to thieves (or run by its owner).
#[derive(Debug)]
pub(crate) struct Task {
    pub(crate) id: u64,
    pub(crate) owner: usize,
    /// The queue's id in the owner's table.
    pub(crate) qid: spindle_core::QueueId,
    pub(crate) queue: Arc<str>,
    /// Inline when small (no allocation per job).
    pub(crate) payload: Payload,
    pub(crate) attempt: u32,
    pub(crate) priority: u32,
    pub(crate) ready_ns: u64,
    pub(crate) submitted_ns: u64,
}

/// The outcome of a stolen task, on its way back to the owner.
#[derive(Debug)]
pub(crate) struct TaskOutcome {
    pub(crate) id: u64,
    pub(crate) outcome: Outcome,
}
