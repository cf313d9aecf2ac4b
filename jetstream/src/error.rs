//! [`Error`]: everything the JetStream backend can refuse or fail with.

use crate::version::ServerVersion;

/// Why a JetStream operation failed. Each message says what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The node's runtime thread could not be started.
    #[error("could not start the JetStream runtime thread: {0}")]
    Runtime(#[source] std::io::Error),
    /// The first connection to the server failed.
    #[error("cannot connect to NATS at {url}: {reason} (is nats-server running with -js?)")]
    Connect {
        /// The URL given.
        url: String,
        /// The client's reason.
        reason: String,
    },
    /// The server does not run JetStream.
    #[error(
        "the NATS server at {url} (version {version}) has JetStream disabled: start it with -js"
    )]
    NoJetStream {
        /// The URL given.
        url: String,
        /// The server's version.
        version: ServerVersion,
    },
    /// The server's INFO carried a version this crate cannot read.
    #[error("cannot read the NATS server's version {0:?} from its INFO")]
    Version(String),
    /// A feature this call needs is missing on the server: nothing was
    /// changed, rather than silently meaning something else.
    #[error("{feature} needs nats-server {needs} or newer; this server is {server}")]
    Unsupported {
        /// What was asked for.
        feature: &'static str,
        /// The oldest server version that has it.
        needs: &'static str,
        /// The server's version.
        server: ServerVersion,
    },
    /// A stream or consumer read back from the server differs from what was
    /// asked (old servers silently drop settings they do not know, and an
    /// existing stream or consumer may have been made with other settings).
    #[error(
        "{what} {name:?} on nats-server {server}: {setting} is {got}, wanted {wanted} \
         (an old server dropped it, or it was created with other settings: delete it or use another namespace)"
    )]
    SettingMismatch {
        /// "stream" or "consumer".
        what: &'static str,
        /// Its name.
        name: String,
        /// The setting.
        setting: &'static str,
        /// What was asked.
        wanted: String,
        /// What the server has.
        got: String,
        /// The server's version.
        server: ServerVersion,
    },
    /// A name cannot be used (queue names follow DESIGN.md's rules).
    #[error("invalid {what} {name:?}: {reason}")]
    InvalidName {
        /// "queue", "namespace", "schedule", "cron schedule" or "unique key".
        what: &'static str,
        /// The name given.
        name: String,
        /// Why.
        reason: &'static str,
    },
    /// A queue setting cannot be used.
    #[error("invalid queue setting {setting}: {reason}")]
    InvalidConfig {
        /// The [`crate::QueueConfig`] method.
        setting: &'static str,
        /// Why, with the value given.
        reason: String,
    },
    /// A job with a priority was put on a queue whose priority bands no
    /// node has declared yet: its band cannot be chosen.
    #[error(
        "queue {0:?} has no priority bands on the server yet: declare it (Node::declare, \
         or `spindle work`) before putting jobs with a priority"
    )]
    NoBands(String),
    /// The queue was not declared on this node with [`crate::Node::declare`].
    #[error("queue {0:?} is not declared on this node: call Node::declare first")]
    Undeclared(String),
    /// The payload is larger than the node's limit.
    #[error("payload of {size} bytes is over the {max}-byte limit")]
    TooLarge {
        /// The payload's size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// A JetStream API call (stream, consumer, publish, ack) failed.
    #[error("JetStream {op} failed: {reason}")]
    Api {
        /// The operation.
        op: &'static str,
        /// The client's or server's reason.
        reason: String,
    },
    /// The hold log (delayed jobs held by the node, `NodeOptions::hold_dir`)
    /// could not be read or written.
    #[error("hold log {path}: {reason} (check the directory given to NodeOptions::hold_dir)")]
    HoldLog {
        /// The file or directory.
        path: std::path::PathBuf,
        /// The system's reason.
        reason: String,
    },
    /// The node was shut down.
    #[error("the JetStream node is shut down")]
    Closed,
}

impl Error {
    pub(crate) fn api(op: &'static str, e: impl std::fmt::Display) -> Self {
        Error::Api { op, reason: e.to_string() }
    }
}
