//! Jobs as users see them: what is submitted ([`Job`]), what a handler gets
//! ([`JobRef`]) and what it answers ([`Outcome`]).

use crate::error::SubmitError;
use std::fmt;
use std::time::Duration;

/// A job's id: unique within a data directory and never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId(pub(crate) u64);

impl JobId {
    /// The id as a number (what `Display` prints).
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Default attempts before a failing job is buried (Faktory and BullMQ
/// default to a handful of retries; Sidekiq's 25 keeps poison jobs alive for
/// three weeks, which we consider too long for a default).
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;

/// A job to submit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// Borrowed for a name that lives as long as the program (a literal:
    /// no allocation per job), owned otherwise.
    pub(crate) queue: std::borrow::Cow<'static, str>,
    pub(crate) payload: Vec<u8>,
    pub(crate) priority: u32,
    pub(crate) delay: Duration,
    pub(crate) max_attempts: u32,
    pub(crate) unique_key: Option<String>,
    pub(crate) deadline: Option<spindle_core::Time>,
}

impl Job {
    /// A job for `queue` carrying `payload`, priority 0 (most urgent), no
    /// delay, [`DEFAULT_MAX_ATTEMPTS`] attempts.
    ///
    /// `queue` is a `&'static str` (a literal: the job borrows it, no
    /// allocation), a `String` or a `Cow<'static, str>`; a name borrowed for
    /// less than that is passed owned (`name.to_owned()`).
    pub fn new(
        queue: impl Into<std::borrow::Cow<'static, str>>,
        payload: impl Into<Vec<u8>>,
    ) -> Self {
        Job {
            queue: queue.into(),
            payload: payload.into(),
            priority: 0,
            delay: Duration::ZERO,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            unique_key: None,
            deadline: None,
        }
    }

    /// Priority: 0 is the most urgent.
    pub fn priority(mut self, priority: u32) -> Self {
        self.priority = priority;
        self
    }

    /// Run no earlier than `delay` from now.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Attempts before the job is buried (at least 1).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// Never run the job after `at` (it is deleted, or buried if its
    /// queue's limits say so: [`crate::Engine::set_limits`]). A deadline
    /// not after the submit is refused ([`SubmitError::DeadlinePassed`]).
    pub fn deadline(mut self, at: std::time::SystemTime) -> Self {
        let ns = at.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        self.deadline = Some(spindle_core::Time(u64::try_from(ns).unwrap_or(u64::MAX)));
        self
    }

    /// Never run the job later than `ttl` after it is submitted.
    pub fn expires_in(self, ttl: Duration) -> Self {
        let at = std::time::SystemTime::now() + ttl;
        self.deadline(at)
    }

    /// While a live job of the same queue holds this key, submitting another
    /// one with it creates nothing and reports [`SubmitError::Duplicate`].
    pub fn unique_key(mut self, key: impl Into<String>) -> Self {
        self.unique_key = Some(key.into());
        self
    }
}

/// A [`Job`] taken apart, for a front-end that carries it to another
/// backend (the facade's distributed queues, `spindle::distributed`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobParts {
    /// The queue.
    pub queue: String,
    /// The payload.
    pub payload: Vec<u8>,
    /// The priority (0 is the most urgent).
    pub priority: u32,
    /// How long it waits before it may run.
    pub delay: Duration,
    /// Attempts before it is buried.
    pub max_attempts: u32,
    /// Its unique key, if any.
    pub unique_key: Option<String>,
    /// Its deadline, if any.
    pub deadline: Option<std::time::SystemTime>,
}

impl Job {
    /// The queue it is for.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// The job's settings, as given.
    pub fn into_parts(self) -> JobParts {
        JobParts {
            queue: self.queue.into_owned(),
            payload: self.payload,
            priority: self.priority,
            delay: self.delay,
            max_attempts: self.max_attempts,
            unique_key: self.unique_key,
            deadline: self.deadline.map(|t| std::time::UNIX_EPOCH + Duration::from_nanos(t.0)),
        }
    }
}

/// What a handler sees of a running job.
#[derive(Debug, Clone, Copy)]
pub struct JobRef<'a> {
    pub(crate) id: JobId,
    pub(crate) queue: &'a str,
    pub(crate) payload: &'a [u8],
    pub(crate) attempt: u32,
    pub(crate) priority: u32,
    pub(crate) cancels: Option<&'a crate::cancel::Cancels>,
}

impl<'a> JobRef<'a> {
    /// A job run from another backend (a distributed queue: the facade's
    /// `spindle::distributed`), so one [`crate::Handler`] serves local and
    /// distributed queues alike. `id` is that backend's (a JetStream stream
    /// sequence), not this engine's; [`JobRef::is_cancelled`] is false.
    pub fn foreign(
        id: u64,
        queue: &'a str,
        payload: &'a [u8],
        attempt: u32,
        priority: u32,
    ) -> Self {
        JobRef { id: JobId(id), queue, payload, attempt, priority, cancels: None }
    }

    /// Whether [`crate::Engine::cancel`] was called for this job while it
    /// runs: a long handler may check it and return early; whatever it
    /// returns then, the job is deleted, never retried.
    pub fn is_cancelled(&self) -> bool {
        self.cancels.is_some_and(|c| c.contains(self.id.0))
    }
    /// The job's id.
    pub fn id(&self) -> JobId {
        self.id
    }
    /// The queue it was submitted to.
    pub fn queue(&self) -> &'a str {
        self.queue
    }
    /// Its payload.
    pub fn payload(&self) -> &'a [u8] {
        self.payload
    }
    /// Which attempt this is: 1 for the first run.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }
    /// Its priority.
    pub fn priority(&self) -> u32 {
        self.priority
    }
}

/// A handler's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Finished: the job is gone.
    Done,
    /// Failed, may succeed later: retried after an exponential backoff with
    /// jitter, buried once its attempts are used up.
    Retry(String),
    /// Failed for good: buried (dead letter) now.
    Bury(String),
}

/// Longest queue name (beanstalkd's tube name limit).
pub const MAX_QUEUE_NAME: usize = spindle_core::MAX_QUEUE_NAME;

/// Checks a queue name against DESIGN.md's rules (the table's rule:
/// [`spindle_core::validate_queue_name`]).
pub(crate) fn validate_queue(name: &str) -> Result<(), SubmitError> {
    spindle_core::validate_queue_name(name).map_err(|e| match e {
        spindle_core::NameError::Invalid { name, reason } => {
            SubmitError::InvalidQueueName { name, reason }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names_follow_the_beanstalkd_rules() {
        assert!(validate_queue("emails").is_ok());
        assert!(validate_queue("a-b+c/d;e.f$g_h(i)").is_ok());
        assert!(validate_queue("").is_err());
        assert!(validate_queue("-x").is_err());
        assert!(validate_queue("has space").is_err());
        assert!(validate_queue(&"q".repeat(200)).is_ok());
        assert!(validate_queue(&"q".repeat(201)).is_err());
    }

    #[test]
    fn a_job_comes_apart_as_given() {
        let at = std::time::UNIX_EPOCH + Duration::from_secs(2_000_000_000);
        let p = Job::new("q", b"x".to_vec()).priority(7).unique_key("k").deadline(at).into_parts();
        assert_eq!((p.queue.as_str(), p.priority, p.deadline), ("q", 7, Some(at)));
        assert_eq!((p.max_attempts, p.unique_key.as_deref()), (DEFAULT_MAX_ATTEMPTS, Some("k")));
        let r = JobRef::foreign(9, "q", b"x", 2, 7);
        assert_eq!((r.id().get(), r.attempt(), r.is_cancelled()), (9, 2, false));
    }

    #[test]
    fn job_id_displays_as_decimal() {
        assert_eq!(JobId(42).to_string(), "42");
    }
}
