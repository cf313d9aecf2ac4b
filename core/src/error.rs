//! Errors, one enum per operation family.

/// Why a put was refused. Nothing changed in the table.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PutError {
    /// The table holds its most jobs or bytes.
    #[error("full: {what} limit of {limit} reached; complete or delete jobs, or raise the limit")]
    Full {
        /// Which limit: "jobs" or "bytes".
        what: &'static str,
        /// Its value.
        limit: u64,
    },
    /// The payload is over the configured maximum.
    #[error("payload of {len} bytes is over the {max}-byte limit")]
    TooBig {
        /// Its length.
        len: usize,
        /// The limit.
        max: u32,
    },
    /// The id was handed out before (ids are never reused).
    #[error("job id {id} was already used")]
    IdUsed {
        /// The id.
        id: u64,
    },
    /// The unique key is over [`MAX_UNIQUE_KEY`] bytes.
    #[error("unique key of {len} bytes is over the {max}-byte limit")]
    KeyTooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// No such queue (its id is stale).
    #[error("no queue with id {0}")]
    NoQueue(u32),
    /// The deadline is not after the time of the put.
    #[error("deadline {deadline_ms} ms since the epoch has already passed (now is {now_ms}); give a later deadline or none")]
    DeadlinePassed {
        /// The deadline, ms since the epoch.
        deadline_ms: u64,
        /// The time of the put.
        now_ms: u64,
    },
}

/// Why an operation on a job was refused. Nothing changed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    /// No live job has this id.
    #[error("job {0} not found (completed, deleted, or never put)")]
    NotFound(u64),
    /// The job is reserved by someone else, or not reserved at all.
    #[error("job {0} is not reserved by this holder")]
    NotHolder(u64),
    /// The holder's lease was taken over: its token is no longer current.
    #[error("job {id}: lease {token} is stale (the current lease is {current})")]
    StaleLease {
        /// The job.
        id: u64,
        /// The token given.
        token: u32,
        /// The job's current token.
        current: u32,
    },
    /// The job was cancelled while reserved: the holder's outcome is
    /// discarded and the job is gone.
    #[error("job {0} was cancelled; its result is discarded")]
    Cancelled(u64),
    /// The job is not in a state this operation applies to.
    #[error("job {id} is {state:?}, not {wanted}")]
    WrongState {
        /// The job.
        id: u64,
        /// Its state.
        state: crate::State,
        /// What the operation needs.
        wanted: &'static str,
    },
}

/// Why a queue name was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Empty, too long, or with a character outside the allowed set.
    #[error("invalid queue name {name:?}: {reason}")]
    Invalid {
        /// The name.
        name: String,
        /// What is wrong.
        reason: &'static str,
    },
}

/// Longest unique key, in bytes (a record keeps up to 65,535).
pub const MAX_UNIQUE_KEY: usize = 4096;

/// Longest queue name (beanstalkd's tube name limit).
pub const MAX_QUEUE_NAME: usize = 200;

/// Checks a queue name: 1-200 bytes of `A-Za-z0-9-+/;.$_()`, not starting
/// with `-` (beanstalkd's rules).
pub fn validate_queue_name(name: &str) -> Result<(), NameError> {
    let bad = |reason: &'static str| NameError::Invalid { name: name.to_string(), reason };
    if name.is_empty() {
        return Err(bad("empty"));
    }
    if name.len() > MAX_QUEUE_NAME {
        return Err(bad("longer than 200 bytes"));
    }
    if name.starts_with('-') {
        return Err(bad("starts with '-'"));
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-+/;.$_()".contains(&b)) {
        return Err(bad("only A-Z a-z 0-9 and - + / ; . $ _ ( ) are allowed"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names_follow_the_beanstalkd_rules() {
        assert!(validate_queue_name("emails").is_ok());
        assert!(validate_queue_name("a-b+c/d;e.f$g_h(i)").is_ok());
        assert!(validate_queue_name("").is_err());
        assert!(validate_queue_name("-x").is_err());
        assert!(validate_queue_name("has space").is_err());
        assert!(validate_queue_name(&"q".repeat(200)).is_ok());
        assert!(validate_queue_name(&"q".repeat(201)).is_err());
    }
}
