//! What the server answers: jobs, job states, stats and replies.

use std::fmt;
use std::str::FromStr;

use std::time::Duration;

use crate::error::{ClientError, Result};

/// A job as returned by reserve and peek commands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// The job's id.
    pub id: u64,
    /// The body, exactly as put.
    pub body: Vec<u8>,
}

/// The states a job can be in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobState {
    /// Waiting to be reserved.
    Ready,
    /// Waiting for its delay (or retry backoff) to pass.
    Delayed,
    /// Leased to a worker.
    Reserved,
    /// Dead-lettered; only a kick brings it back.
    Buried,
}

impl JobState {
    /// The protocol's name for the state.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Ready => "ready",
            JobState::Delayed => "delayed",
            JobState::Reserved => "reserved",
            JobState::Buried => "buried",
        }
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobState {
    type Err = ClientError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "ready" => Ok(JobState::Ready),
            "delayed" => Ok(JobState::Delayed),
            "reserved" => Ok(JobState::Reserved),
            "buried" => Ok(JobState::Buried),
            _ => Err(ClientError::InvalidArgument(format!(
                "unknown job state {s:?} (expected ready, delayed, reserved or buried)"
            ))),
        }
    }
}

/// What [`Client::put_unique`](crate::Client::put_unique) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutUnique {
    /// A new job was created.
    Inserted(u64),
    /// A live job of the tube already holds the key; nothing was created.
    Duplicate(u64),
}

impl PutUnique {
    /// The new or existing job's id.
    pub fn id(self) -> u64 {
        match self {
            PutUnique::Inserted(id) | PutUnique::Duplicate(id) => id,
        }
    }
}

/// What [`Client::fail`](crate::Client::fail) did with the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailOutcome {
    /// The job will be retried after `delay` (it is `delayed` until then).
    Retrying {
        /// Attempts so far, this one included.
        attempts: u32,
        /// Backoff before the next attempt.
        delay: Duration,
    },
    /// Attempts are exhausted; the job is buried with the error kept.
    Buried {
        /// Attempts made.
        attempts: u32,
    },
}

/// A stats reply: the YAML dictionary's `key: value` pairs in the server's
/// order, quotes removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatsMap {
    entries: Vec<(String, String)>,
}

impl StatsMap {
    /// Parses the simple YAML dictionaries beanstalkd sends (`---` then one
    /// `key: value` per line). Lines without a colon are skipped.
    pub fn parse(yaml: &str) -> StatsMap {
        let entries = yaml
            .lines()
            .filter(|l| *l != "---")
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_owned(), unquote(v.trim()).to_owned()))
            .collect();
        StatsMap { entries }
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// The value of `key` as an unsigned number.
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(|v| v.parse().ok())
    }

    /// The pairs, in the server's order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl IntoIterator for StatsMap {
    type Item = (String, String);
    type IntoIter = std::vec::IntoIter<(String, String)>;
    fn into_iter(self) -> Self::IntoIter {
        self.entries.into_iter()
    }
}

pub(crate) fn unquote(v: &str) -> &str {
    if v.len() >= 2 && v.starts_with('"') && v.ends_with('"') {
        &v[1..v.len() - 1]
    } else {
        v
    }
}

/// Parses a YAML list (`---` then one `- item` per line).
pub(crate) fn parse_list(yaml: &str) -> Vec<String> {
    yaml.lines()
        .filter_map(|l| l.strip_prefix("- "))
        .map(|s| unquote(s.trim()).to_owned())
        .collect()
}

/// The reply to one pipelined command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `put`: the new job's id.
    Inserted(u64),
    /// `delete` succeeded.
    Deleted,
    /// `use`: the tube now used.
    Using(String),
    /// `watch`/`ignore`: how many tubes are watched now.
    Watching(u32),
    /// `release` succeeded.
    Released,
    /// `bury` succeeded.
    Buried,
    /// `touch` succeeded.
    Touched,
    /// `kick`: jobs kicked (`kick-job`: always 1).
    Kicked(u64),
}
