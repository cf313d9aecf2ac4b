//! Putting jobs: [`Put`], [`Receipt`], pipelined batches, delayed jobs.
//!
//! 1. Every job is published with a `Nats-Msg-Id`: `k:<queue>:<key>` for a
//!    unique key, else one this node makes up. The stream's duplicate window
//!    turns a second publish of the same id into a "duplicate" PubAck that
//!    carries the first one's sequence: the caller is told, and gets the
//!    existing id. The same id makes a publish retried after a reconnect or
//!    a crash harmless.
//! 2. A batch publishes every job first and then awaits the PubAcks, so the
//!    round trips overlap (the client bounds the acks in flight).
//! 3. A delayed job, on a server with `@at` schedules (2.12+), is a schedule
//!    message on its own subject under `spindle.<ns>.sched.`, which the
//!    server publishes to the queue's subject when due. On an older server
//!    the node holds it on its runtime thread until due and then publishes
//!    it with its Msg-Id. With `NodeOptions::hold_dir` the hold is synced
//!    to the node's hold log first (`hold.rs`), and a node restarted on it
//!    publishes what a crashed one held; without, a node that dies
//!    meanwhile loses it.

use crate::error::Error;
use crate::hold::Held;
use crate::names;
use crate::node::{Inner, Node};
use async_nats::HeaderMap;
use bytes::Bytes;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Header naming the job's Spindle id on scheduled and buried copies.
pub(crate) const ID_HEADER: &str = "Spindle-Id";
/// Header carrying a job's priority, when it was given one.
pub(crate) const PRIORITY_HEADER: &str = "Spindle-Pri";
/// Header carrying a job's deadline (Unix milliseconds).
pub(crate) const EXPIRES_HEADER: &str = "Spindle-Expires";

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A job to put on a distributed queue.
#[derive(Debug, Clone)]
pub struct Put {
    pub(crate) queue: String,
    pub(crate) payload: Bytes,
    pub(crate) unique_key: Option<String>,
    pub(crate) delay: Duration,
    pub(crate) expires_in: Option<Duration>,
    pub(crate) priority: Option<u32>,
}

impl Put {
    /// A job for `queue`, ready at once.
    pub fn new(queue: impl Into<String>, payload: impl Into<Bytes>) -> Self {
        Put {
            queue: queue.into(),
            payload: payload.into(),
            unique_key: None,
            delay: Duration::ZERO,
            expires_in: None,
            priority: None,
        }
    }

    /// The job's priority (lower is more urgent; default
    /// [`crate::DEFAULT_PRIORITY`], 1024): it chooses the queue's priority
    /// band ([`crate::QueueConfig::priority_bands`]). On a queue that no
    /// node has declared yet the band is unknown and the put is refused
    /// ([`Error::NoBands`]). Carried to the lease ([`crate::Lease::priority`]).
    pub fn priority(mut self, pri: u32) -> Self {
        self.priority = Some(pri);
        self
    }

    /// Never handed out once `d` has passed since the put (counted from the
    /// put, delay included). Every node checks the deadline (header
    /// `Spindle-Expires`) at delivery and drops an expired job (Term); on
    /// 2.11+ a job put without delay also carries `Nats-TTL` (whole
    /// seconds, rounded up), so the server removes it by itself.
    pub fn expires_in(mut self, d: Duration) -> Self {
        self.expires_in = Some(d);
        self
    }

    /// A unique key: a second put with it (within the stream's duplicate
    /// window) is refused as [`Receipt::Duplicate`].
    pub fn unique_key(mut self, key: impl Into<String>) -> Self {
        self.unique_key = Some(key.into());
        self
    }

    /// Runs no earlier than `delay` from now.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

/// What became of a put.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Receipt {
    /// In the queue's stream at this sequence (the job's id).
    Queued {
        /// Stream sequence.
        seq: u64,
        /// The job's `Nats-Msg-Id`.
        msg_id: String,
    },
    /// A job with the same unique key is already there: nothing was added.
    Duplicate {
        /// The existing message's stream sequence.
        seq: u64,
        /// The `Nats-Msg-Id` both share.
        msg_id: String,
    },
    /// Delayed: a server-side `@at` schedule publishes it when due.
    Scheduled {
        /// When it is due.
        due: SystemTime,
        /// The job's id (header `Spindle-Id` on the published job).
        msg_id: String,
    },
    /// Delayed, on a server without schedules: this node holds it until due.
    Held {
        /// When it is due.
        due: SystemTime,
        /// The `Nats-Msg-Id` it will be published with.
        msg_id: String,
    },
}

impl Receipt {
    /// The job's `Nats-Msg-Id` (or `Spindle-Id`).
    pub fn msg_id(&self) -> &str {
        match self {
            Receipt::Queued { msg_id, .. }
            | Receipt::Duplicate { msg_id, .. }
            | Receipt::Scheduled { msg_id, .. }
            | Receipt::Held { msg_id, .. } => msg_id,
        }
    }
}

/// Makes message ids unique to this node: a per-process prefix (time and
/// pid) and a counter.
pub(crate) struct IdSource {
    prefix: String,
    next: AtomicU64,
}

impl IdSource {
    pub(crate) fn new() -> Self {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        IdSource {
            prefix: format!("{:x}-{:x}", nanos, std::process::id()),
            next: AtomicU64::new(1),
        }
    }

    fn next(&self) -> String {
        format!("{}-{}", self.prefix, self.next.fetch_add(1, Ordering::Relaxed))
    }
}

/// Formats a time as RFC 3339 in UTC with whole seconds, the form `@at`
/// takes (rounded up, so a job never fires early).
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

enum Pending {
    Ack(async_nats::jetstream::context::PublishAckFuture, String),
    Done(Result<Receipt, Error>),
}

impl Pending {
    /// Awaits the PubAck, if there is one to await.
    async fn receipt(self) -> Result<Receipt, Error> {
        match self {
            Pending::Done(r) => r,
            Pending::Ack(fut, msg_id) => match fut.await {
                Ok(ack) if ack.duplicate => Ok(Receipt::Duplicate { seq: ack.sequence, msg_id }),
                Ok(ack) => Ok(Receipt::Queued { seq: ack.sequence, msg_id }),
                Err(e) => Err(Error::api("publish ack", e)),
            },
        }
    }
}

/// One job published and its PubAck awaited (the streams must exist).
pub(crate) async fn put_one(inner: &Inner, job: Put) -> Result<Receipt, Error> {
    publish(inner, job).await.receipt().await
}

impl Node {
    /// Puts one job; see [`Node::put_batch`].
    pub fn put(&self, job: Put) -> Result<Receipt, Error> {
        let mut out = self.put_batch(vec![job])?;
        out.pop().unwrap_or(Err(Error::Closed))
    }

    /// Puts jobs pipelined: all are published, then the PubAcks awaited.
    /// The queue need not be declared on this node (a producer-only node
    /// does not know its TTR); its jobs wait until some node declares it.
    /// The outer error is for the whole batch (an invalid queue name, the
    /// streams not usable); each job has its own result.
    pub fn put_batch(&self, jobs: Vec<Put>) -> Result<Vec<Result<Receipt, Error>>, Error> {
        for j in &jobs {
            names::check_queue(&j.queue)?;
        }
        let inner = &self.inner;
        inner.block_on(crate::setup::ensure_streams(inner))?;
        Ok(inner.block_on(async {
            let mut pending = Vec::with_capacity(jobs.len());
            for job in jobs {
                pending.push(publish(inner, job).await);
            }
            let mut out = Vec::with_capacity(pending.len());
            for p in pending {
                out.push(p.receipt().await);
            }
            out
        }))
    }

    /// Adds a periodic job on a distributed queue: a server-side schedule
    /// (`@every`, 2.14+) named `name`, so no node has to be a leader.
    /// Putting the same name again replaces it. On older servers this is
    /// refused with [`Error::Unsupported`], never emulated. The interval is
    /// rounded up to whole seconds (the server's unit).
    pub fn schedule_every(
        &self,
        queue: &str,
        name: &str,
        every: Duration,
        payload: impl Into<Bytes>,
    ) -> Result<(), Error> {
        names::check_queue(queue)?;
        let inner = &self.inner;
        needs_schedules(
            inner,
            "a periodic job on a distributed queue (server-side @every schedule)",
        )?;
        if name.is_empty() {
            return Err(Error::InvalidName {
                what: "schedule",
                name: name.to_owned(),
                reason: "empty",
            });
        }
        let mut h = HeaderMap::new();
        // The server takes whole seconds (2.15.1 refuses "@every 500ms").
        let secs = every.as_secs() + u64::from(every.subsec_nanos() > 0);
        h.insert("Nats-Schedule", format!("@every {}s", secs.max(1)).as_str());
        let target = inner.block_on(inner.target(queue, None))?;
        h.insert("Nats-Schedule-Target", target.as_str());
        let subject = inner.names.schedule_subject(queue, &format!("every-{name}"));
        publish_schedule(inner, subject, h, payload.into())
    }
}

impl Node {
    /// Adds a periodic job on a distributed queue from a cron expression
    /// (5 fields, or 6 with seconds first) in an IANA time zone: a
    /// server-side schedule (`Nats-Schedule` with `Nats-Schedule-Time-Zone`,
    /// 2.14+) named `name`; putting the same name again replaces it. The
    /// expression and zone are checked here first, by the same rules as
    /// the job table's schedules (`croner`, `chrono-tz`), so a typo is a
    /// clear [`Error::InvalidName`] rather than a server error. On older
    /// servers this is refused with [`Error::Unsupported`].
    pub fn schedule_cron(
        &self,
        queue: &str,
        name: &str,
        expr: &str,
        tz: &str,
        payload: impl Into<Bytes>,
    ) -> Result<(), Error> {
        names::check_queue(queue)?;
        let inner = &self.inner;
        needs_schedules(inner, "a cron job on a distributed queue (server-side cron schedule)")?;
        if name.is_empty()
            || name.chars().any(|c| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        {
            return Err(Error::InvalidName {
                what: "schedule",
                name: name.to_owned(),
                reason: "use 1 or more of A-Z a-z 0-9 - _",
            });
        }
        let when = spindle_core::When::Cron { expr: expr.to_owned(), tz: tz.to_owned() };
        if let Err(e) = when.check(spindle_core::Clock::new().now()) {
            return Err(Error::InvalidName {
                what: "cron schedule",
                name: format!("{expr} ({tz})"),
                reason: match e {
                    spindle_core::WhenError::BadTimeZone(_) => "unknown IANA time zone",
                    spindle_core::WhenError::Never(_) => "the expression never fires",
                    _ => "not a cron expression of 5 fields, or 6 with seconds first",
                },
            });
        }
        // The server's cron has seconds first: a 5-field expression fires
        // at second 0.
        let expr = if expr.split_whitespace().count() == 5 {
            format!("0 {}", expr.trim())
        } else {
            expr.trim().to_owned()
        };
        let mut h = HeaderMap::new();
        h.insert("Nats-Schedule", expr.as_str());
        h.insert("Nats-Schedule-Time-Zone", tz);
        let target = inner.block_on(inner.target(queue, None))?;
        h.insert("Nats-Schedule-Target", target.as_str());
        let subject = inner.names.schedule_subject(queue, &format!("cron-{name}"));
        publish_schedule(inner, subject, h, payload.into())
    }
}

/// Refuses `feature` on a server without repeating schedules (before 2.14).
fn needs_schedules(inner: &Inner, feature: &'static str) -> Result<(), Error> {
    if inner.features.schedule_every {
        return Ok(());
    }
    Err(Error::Unsupported { feature, needs: "2.14", server: inner.version })
}

/// Publishes a server-side schedule message (its headers say when and
/// where to) and waits for its acknowledgement.
fn publish_schedule(
    inner: &Inner,
    subject: String,
    h: HeaderMap,
    payload: Bytes,
) -> Result<(), Error> {
    inner.block_on(async {
        crate::setup::ensure_streams(inner).await?;
        let ack = inner
            .js
            .publish_with_headers(subject, h, payload)
            .await
            .map_err(|e| Error::api("schedule publish", e))?;
        ack.await.map_err(|e| Error::api("schedule ack", e))?;
        Ok(())
    })
}

async fn publish(inner: &Inner, job: Put) -> Pending {
    if job.payload.len() > inner.max_payload {
        return Pending::Done(Err(Error::TooLarge {
            size: job.payload.len(),
            max: inner.max_payload,
        }));
    }
    let msg_id = match &job.unique_key {
        // A header value is one line of text.
        Some(k) if k.is_empty() || k.chars().any(char::is_control) => {
            return Pending::Done(Err(Error::InvalidName {
                what: "unique key",
                name: k.clone(),
                reason: "use 1 or more characters, none of them control characters",
            }));
        }
        Some(k) => format!("k:{}:{}", job.queue, k),
        None => inner.ids.next(),
    };
    let target = match inner.target(&job.queue, job.priority).await {
        Ok(t) => t,
        Err(e) => return Pending::Done(Err(e)),
    };
    let deadline = job.expires_in.map(|d| unix_ms(SystemTime::now() + d).to_string());
    if job.delay.is_zero() {
        let mut h = HeaderMap::new();
        h.insert("Nats-Msg-Id", msg_id.as_str());
        if let Some(p) = job.priority {
            h.insert(PRIORITY_HEADER, p.to_string().as_str());
        }
        if let (Some(d), Some(ms)) = (job.expires_in, &deadline) {
            h.insert(EXPIRES_HEADER, ms.as_str());
            if inner.features.message_ttl {
                let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
                h.insert("Nats-TTL", format!("{}s", secs.max(1)).as_str());
            }
        }
        return match inner.js.publish_with_headers(target, h, job.payload).await {
            Ok(fut) => Pending::Ack(fut, msg_id),
            Err(e) => Pending::Done(Err(Error::api("publish", e))),
        };
    }
    let due = SystemTime::now() + job.delay;
    if inner.features.schedule_at {
        // The schedule message has its own id (`s:`), so the job the server
        // publishes from it is not taken for a duplicate of it; a second put
        // of the same unique key is a duplicate of the schedule.
        let mut h = HeaderMap::new();
        h.insert("Nats-Msg-Id", format!("s:{msg_id}").as_str());
        h.insert("Nats-Schedule", format!("@at {}", rfc3339(due)).as_str());
        h.insert("Nats-Schedule-Target", target.as_str());
        h.insert(ID_HEADER, msg_id.as_str());
        if let Some(p) = job.priority {
            h.insert(PRIORITY_HEADER, p.to_string().as_str());
        }
        if let Some(ms) = &deadline {
            h.insert(EXPIRES_HEADER, ms.as_str());
        }
        let subject = inner.names.schedule_subject(&job.queue, &msg_id);
        let fut = match inner.js.publish_with_headers(subject, h, job.payload).await {
            Ok(f) => f,
            Err(e) => return Pending::Done(Err(Error::api("schedule publish", e))),
        };
        return Pending::Done(match fut.await {
            Ok(ack) if ack.duplicate => Ok(Receipt::Duplicate { seq: ack.sequence, msg_id }),
            Ok(_) => Ok(Receipt::Scheduled { due, msg_id }),
            Err(e) => Err(Error::api("schedule ack", e)),
        });
    }
    let h = Held {
        msg_id: msg_id.clone(),
        subject: target,
        due,
        payload: job.payload.to_vec(),
        expires_ms: deadline.and_then(|d| d.parse().ok()),
    };
    Pending::Done(hold(inner, h).map(|()| Receipt::Held { due, msg_id }))
}

/// Holds a delayed job on the runtime thread until due, logging it first
/// when the node has a hold log.
fn hold(inner: &Inner, h: Held) -> Result<(), Error> {
    if let Some(log) = &inner.hold_log {
        log.hold(&h)?;
    }
    hold_again(inner, h);
    Ok(())
}

/// Holds an already logged job until due, then publishes it (retrying
/// until the server takes it; the Msg-Id makes a retry harmless) and logs
/// it done.
pub(crate) fn hold_again(inner: &Inner, h: Held) {
    let js = inner.js.clone();
    let held = inner.held.clone();
    let log = inner.hold_log.clone();
    held.fetch_add(1, Ordering::Relaxed);
    inner.rt.spawn(async move {
        let wait = h.due.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO);
        tokio::time::sleep(wait).await;
        let payload = Bytes::from(h.payload);
        loop {
            let mut hdr = HeaderMap::new();
            hdr.insert("Nats-Msg-Id", h.msg_id.as_str());
            if let Some(ms) = h.expires_ms {
                hdr.insert(EXPIRES_HEADER, ms.to_string().as_str());
            }
            let sent = js.publish_with_headers(h.subject.clone(), hdr, payload.clone()).await;
            let acked = match sent {
                Ok(fut) => fut.await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match acked {
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(msg_id = %h.msg_id, error = %e, "publishing a held delayed job failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        if let Some(log) = log {
            log.done(&h.msg_id);
        }
        held.fetch_sub(1, Ordering::Relaxed);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_is_utc_and_rounds_up() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_796_608_800) + Duration::from_millis(1);
        assert_eq!(rfc3339(t), "2026-12-07T02:00:01Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00Z");
    }
}
