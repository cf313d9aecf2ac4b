//! Reserving jobs: [`Worker`], [`Lease`], and the pull pump behind them.
//!
//! 1. [`Node::worker`] starts a pump on the runtime thread: it pulls from
//!    the queue's shared durable consumer through the client's `messages()`
//!    stream (one standing pull, renewed as it drains: no per-fetch
//!    subscription) and sends each delivery into a bounded channel.
//! 2. A delivery past the queue's attempts (its last lease expired: the
//!    worker crashed or timed out) is buried by the pump without running:
//!    the consumer's MaxDeliver is attempts + 1 for this step.
//!    A delivery past its deadline (`Spindle-Expires`) is dropped (Term)
//!    without running: a job not started by its deadline is never handed
//!    out.
//! 3. [`Worker::reserve`] takes the next lease. The lease is the
//!    consumer's AckWait (= TTR), from when the server delivered it.
//! 4. [`Lease::complete`] acks, [`Lease::touch`] sends an in-progress ack,
//!    [`Lease::fail`] Naks with the backoff delay, or on the last attempt
//!    buries: republish to the dead subject (its `Nats-Msg-Id`, `d:<seq>`,
//!    makes a repeat harmless), then Term. Dropping a lease unsettled
//!    releases it at once (a Nak); a node that dies leaves its leases to
//!    expire after their TTR and be redelivered, to any node.

use crate::error::Error;
use crate::node::{Inner, Node};
use crate::put::{EXPIRES_HEADER, ID_HEADER, PRIORITY_HEADER};
use crate::queue::QueueConfig;
use async_nats::jetstream::message::{AckKind, Acker};
use async_nats::jetstream::{consumer, Context};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures_util::StreamExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// A leased job from a distributed queue. Settle it with one of the
/// consuming methods; dropped unsettled, it is released at once (a Nak, to
/// any node); if its node dies, it is redelivered after its TTR.
pub struct Lease {
    queue: Arc<str>,
    seq: u64,
    attempt: u32,
    payload: Bytes,
    msg_id: Option<String>,
    priority: u32,
    /// `None` once settled. Shared so that an in-progress ack can be sent
    /// from the runtime thread without waiting (`evented.rs`).
    pub(crate) acker: Option<Arc<Acker>>,
    pub(crate) cfg: Arc<QueueConfig>,
    pub(crate) dead: Arc<Dead>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("queue", &self.queue)
            .field("seq", &self.seq)
            .field("attempt", &self.attempt)
            .field("msg_id", &self.msg_id)
            .field("priority", &self.priority)
            .finish_non_exhaustive()
    }
}

/// What [`Lease::fail`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failed {
    /// Redelivered (to any node) after this backoff.
    Retrying(Duration),
    /// Out of attempts: moved to the dead-letter stream.
    Buried,
}

/// Where and how to bury: enough to republish without the node (one per
/// worker, shared by its leases).
pub(crate) struct Dead {
    js: Context,
    subject: String,
    pub(crate) rt: tokio::runtime::Handle,
    pub(crate) stopped: Arc<AtomicBool>,
}

impl Dead {
    /// Runs `fut` on the node's runtime, or `Error::Closed` once it stops.
    fn run<F: std::future::Future>(&self, fut: F) -> Result<F::Output, Error> {
        if self.stopped.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        Ok(self.rt.block_on(fut))
    }
}

impl Lease {
    /// The job's id: its stream sequence (the same on every node).
    pub fn id(&self) -> u64 {
        self.seq
    }

    /// The queue.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// Which delivery this is, from 1.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The priority it was put with ([`crate::Put::priority`]), or
    /// [`crate::DEFAULT_PRIORITY`] when none was given (or the job was a
    /// delayed one held by a node, on servers before 2.12).
    pub fn priority(&self) -> u32 {
        self.priority
    }

    /// The payload.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// The `Nats-Msg-Id` it was put with (or `Spindle-Id` for a scheduled
    /// job), if any.
    pub fn msg_id(&self) -> Option<&str> {
        self.msg_id.as_deref()
    }

    /// Done: a plain ack. If the ack is lost the job runs once more
    /// (at-least-once).
    pub fn complete(mut self) -> Result<(), Error> {
        let acker = self.settle()?;
        self.dead.run(acker.ack())?.map_err(|e| Error::api("ack", e))
    }

    /// Done, confirmed: waits for the server to record the ack (a round
    /// trip and a subscription per call; for queues that need it).
    pub fn complete_confirmed(mut self) -> Result<(), Error> {
        let acker = self.settle()?;
        self.dead.run(acker.double_ack())?.map_err(|e| Error::api("confirmed ack", e))
    }

    /// Extends the lease by another TTR (in-progress ack).
    pub fn touch(&self) -> Result<(), Error> {
        let acker = self.acker.as_ref().ok_or(Error::Closed)?;
        self.dead
            .run(acker.ack_with(AckKind::Progress))?
            .map_err(|e| Error::api("in-progress ack", e))
    }

    /// Failed, may succeed later: redelivered after the queue's backoff, or
    /// buried if this was the last attempt.
    pub fn fail(mut self, error: &str) -> Result<Failed, Error> {
        if self.attempt >= self.cfg.max_attempts {
            self.bury(error)?;
            return Ok(Failed::Buried);
        }
        let delay = self.cfg.backoff_for(self.attempt, self.seq);
        let acker = self.settle()?;
        self.dead
            .run(acker.ack_with(AckKind::Nak(Some(delay))))?
            .map_err(|e| Error::api("nak", e))?;
        Ok(Failed::Retrying(delay))
    }

    /// Takes the acker: the lease is settled from here on (no Nak on drop).
    pub(crate) fn settle(&mut self) -> Result<Arc<Acker>, Error> {
        self.acker.take().ok_or(Error::Closed)
    }

    /// Failed for good: buried now.
    pub fn bury(self, error: &str) -> Result<(), Error> {
        let dead = self.dead.clone();
        let error = error.to_owned();
        dead.run(bury(self, &error))?
    }
}

/// Republishes to the dead subject, then Terms. If the republish fails the
/// lease is dropped unsettled (released, see `Drop`), and the job comes back.
pub(crate) async fn bury(mut lease: Lease, error: &str) -> Result<(), Error> {
    let mut h = HeaderMap::new();
    h.insert("Nats-Msg-Id", format!("d:{}", lease.seq).as_str());
    h.insert("Spindle-Queue", &*lease.queue);
    h.insert("Spindle-Seq", lease.seq.to_string().as_str());
    h.insert("Spindle-Attempts", lease.attempt.to_string().as_str());
    // Header values are one line.
    h.insert("Spindle-Error", error.replace(['\r', '\n'], " ").as_str());
    if let Some(id) = &lease.msg_id {
        h.insert(ID_HEADER, id.as_str());
    }
    let fut = lease
        .dead
        .js
        .publish_with_headers(lease.dead.subject.clone(), h, lease.payload.clone())
        .await
        .map_err(|e| Error::api("dead-letter publish", e))?;
    fut.await.map_err(|e| Error::api("dead-letter ack", e))?;
    let acker = lease.settle()?;
    acker.ack_with(AckKind::Term).await.map_err(|e| Error::api("term", e))
}

impl Drop for Lease {
    /// A lease dropped unsettled (a handler that returned without settling,
    /// a worker stopping with leases prefetched) is released at once: a Nak
    /// without delay, so any node gets it now rather than after its TTR.
    /// The delivery counts as an attempt, as an expiry would.
    fn drop(&mut self) {
        if let Some(acker) = self.acker.take() {
            if !self.dead.stopped.load(Ordering::Acquire) {
                // Detached: the task runs on the node's runtime by itself.
                drop(self.dead.rt.spawn(async move {
                    let _ = acker.ack_with(AckKind::Nak(None)).await;
                }));
            }
        }
    }
}

/// A worker's handle on one distributed queue: leases arrive here from the
/// pump on the runtime thread. One per worker thread; dropping it stops its
/// pump (leases waiting in it are released at once; a delivery already on
/// its way from the server when the pull stops waits for its TTR).
pub struct Worker {
    rx: mpsc::Receiver<Lease>,
    dead: Arc<Dead>,
    pump: tokio::task::AbortHandle,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker").finish_non_exhaustive()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.pump.abort();
    }
}

impl Worker {
    /// Stops pulling: no new leases come; those already here are still
    /// returned by [`Worker::reserve`], which then answers `Error::Closed`.
    pub fn stop_pulling(&mut self) {
        self.pump.abort();
    }

    /// The next lease, waiting up to `timeout`; `None` if none came.
    pub fn reserve(&mut self, timeout: Duration) -> Result<Option<Lease>, Error> {
        match self.rx.try_recv() {
            Ok(l) => return Ok(Some(l)),
            Err(mpsc::error::TryRecvError::Disconnected) => return Err(Error::Closed),
            Err(mpsc::error::TryRecvError::Empty) => {}
        }
        let rx = &mut self.rx;
        match self.dead.run(async { tokio::time::timeout(timeout, rx.recv()).await })? {
            Ok(Some(l)) => Ok(Some(l)),
            Ok(None) => Err(Error::Closed),
            Err(_) => Ok(None),
        }
    }
}

impl Node {
    /// A worker for `queue` (declared first with [`Node::declare`]) that
    /// keeps up to `prefetch` leases ready. Prefetched leases' TTRs run
    /// while they wait, so keep `prefetch` small against TTR ÷ run time.
    pub fn worker(&self, queue: &str, prefetch: usize) -> Result<Worker, Error> {
        let cfg = self.inner.queue(queue)?;
        let prefetch = prefetch.max(1);
        let inner: &Inner = &self.inner;
        let stream = inner
            .block_on(inner.js.get_stream_no_info(inner.names.stream()))
            .map_err(|e| Error::api("stream lookup", e))?;
        let name = inner.names.consumer(queue);
        let consumer: consumer::PullConsumer = inner
            .block_on(stream.get_consumer(&name))
            .map_err(|e| Error::api("consumer lookup", e))?;
        let (tx, rx) = mpsc::channel(prefetch);
        let dead = dead_for(inner, queue);
        let queue_name = queue;
        let queue: Arc<str> = Arc::from(queue);
        let task = if cfg.bands.is_empty() {
            inner.rt.spawn(pump(consumer, tx, prefetch, queue, cfg, dead.clone()))
        } else {
            let bands = crate::band::Bands::new(inner, queue_name, &cfg);
            inner.rt.spawn(crate::band::pump(bands, tx, queue, cfg, dead.clone()))
        };
        Ok(Worker { rx, dead, pump: task.abort_handle() })
    }
}

/// Where `queue`'s leases are buried.
pub(crate) fn dead_for(inner: &Inner, queue: &str) -> Arc<Dead> {
    Arc::new(Dead {
        js: inner.js.clone(),
        subject: inner.names.dead_subject(queue),
        rt: inner.rt.clone(),
        stopped: inner.stopped.clone(),
    })
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

async fn pump(
    consumer: consumer::PullConsumer,
    tx: mpsc::Sender<Lease>,
    batch: usize,
    queue: Arc<str>,
    cfg: Arc<QueueConfig>,
    dead: Arc<Dead>,
) {
    loop {
        let built = consumer
            .stream()
            .max_messages_per_batch(batch)
            .expires(Duration::from_secs(5))
            .heartbeat(Duration::from_secs(2))
            .messages()
            .await;
        let mut messages = match built {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(%queue, error = %e, "starting a pull failed; retrying");
                if tx.is_closed() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            }
        };
        while let Some(next) = messages.next().await {
            let msg = match next {
                Ok(m) => m,
                Err(e) => {
                    // Missed heartbeats (a server restart) and the like: the
                    // stream re-issues its pull; leases are the server's.
                    tracing::debug!(%queue, error = %e, "pull stream error");
                    if tx.is_closed() {
                        return;
                    }
                    continue;
                }
            };
            let Some(lease) = admit(msg, &queue, &cfg, &dead).await else {
                continue;
            };
            if tx.send(lease).await.is_err() {
                return;
            }
        }
    }
}

/// Turns a delivery into a lease, or settles it without running: a job
/// past its deadline is dropped (Term); a delivery past the queue's
/// attempts (its last lease expired) is buried. Shared by the standing
/// pull (`pump`), the banded pulls (`band.rs`) and the pulls on demand
/// (`pull.rs`).
pub(crate) async fn admit(
    msg: async_nats::jetstream::Message,
    queue: &Arc<str>,
    cfg: &Arc<QueueConfig>,
    dead: &Arc<Dead>,
) -> Option<Lease> {
    let (seq, delivered) = match msg.info() {
        Ok(i) => (i.stream_sequence, i.delivered),
        Err(e) => {
            tracing::warn!(%queue, error = %e, "delivery without JetStream metadata");
            return None;
        }
    };
    let header = |name: &str| msg.headers.as_ref().and_then(|h| h.get(name));
    let expires = header(EXPIRES_HEADER).and_then(|v| v.as_str().parse::<u64>().ok());
    if expires.is_some_and(|ms| ms <= now_ms()) {
        // Past its deadline: never handed out (dropped for good).
        if let Err(e) = msg.ack_with(AckKind::Term).await {
            tracing::warn!(%queue, seq, error = %e, "dropping an expired job failed; it is redelivered");
        }
        return None;
    }
    let priority = header(PRIORITY_HEADER)
        .and_then(|v| v.as_str().parse::<u32>().ok())
        .unwrap_or(crate::queue::DEFAULT_PRIORITY);
    let msg_id = header("Nats-Msg-Id").or_else(|| header(ID_HEADER)).map(|v| v.as_str().to_owned());
    let (m, acker) = msg.split();
    let lease = Lease {
        queue: queue.clone(),
        seq,
        attempt: u32::try_from(delivered).unwrap_or(u32::MAX),
        payload: m.payload,
        msg_id,
        priority,
        acker: Some(Arc::new(acker)),
        cfg: cfg.clone(),
        dead: dead.clone(),
    };
    if lease.attempt > cfg.max_attempts {
        let why = "lease expired on its last attempt (worker crashed or timed out)";
        if let Err(e) = bury(lease, why).await {
            tracing::warn!(%queue, seq, error = %e, "burying failed; it is redelivered");
        }
        return None;
    }
    Some(lease)
}
