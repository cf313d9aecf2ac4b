//! [`ClientError`]: everything that can go wrong talking to the server,
//! with messages that say what to do.

use std::io;
use std::path::PathBuf;

use crate::trust;

/// Everything that can go wrong talking to the server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// No connection could be made.
    #[error("cannot connect to {addr}: {source}; {hint}")]
    Connect {
        /// The address tried.
        addr: String,
        /// What to do about it.
        hint: String,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// The Unix socket belongs to a user who is neither this process's
    /// user nor root: any user can bind a socket where spindled's should be
    /// (under `/tmp` for one), and a job sent there goes to that user's
    /// server. Nothing was sent. Connect with
    /// [`ConnectOptions::allow_foreign_socket`](crate::ConnectOptions::allow_foreign_socket) to trust it.
    #[error(
        "refusing to connect to {path}: the socket belongs to {}, not to {}, so the server \
         behind it may be another user's; if you trust it, connect anyway with \
         `spindle --allow-foreign-socket` (Rust client: ConnectOptions::allow_foreign_socket)",
        trust::describe_user(.owner, .owner_name),
        trust::describe_trusted(.caller)
    )]
    ForeignSocket {
        /// The socket path.
        path: PathBuf,
        /// The uid that owns the socket file (or a symbolic link to it).
        owner: u32,
        /// That user's login name, when known.
        owner_name: Option<String>,
        /// This process's effective uid.
        caller: u32,
    },
    /// The Unix socket lies in a directory any user may write to (without
    /// the sticky bit), so anyone could have put it there or may swap it.
    /// Nothing was sent. Connect with
    /// [`ConnectOptions::allow_foreign_socket`](crate::ConnectOptions::allow_foreign_socket) to trust it.
    #[error(
        "refusing to connect to {path}: its directory {dir} may be written by any user (mode \
         {mode:04o}, no sticky bit), so anyone could have put the socket there; move the socket \
         to a private directory, or connect anyway with `spindle --allow-foreign-socket` (Rust \
         client: ConnectOptions::allow_foreign_socket)"
    )]
    OpenSocketDir {
        /// The socket path.
        path: PathBuf,
        /// Its directory.
        dir: PathBuf,
        /// The directory's mode.
        mode: u32,
    },
    /// Reading or writing the connection failed, or the server closed it.
    /// The connection is unusable afterwards.
    #[error("connection to {addr} failed: {source}")]
    Io {
        /// The server's address.
        addr: String,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// `NOT_FOUND`: the job or tube does not exist, or is not in a state
    /// that allows the command (for example reserved by another connection).
    #[error("not found: {0}")]
    NotFound(String),
    /// `JOB_TOO_BIG`: the body exceeds the server's maximum job size.
    #[error(
        "job too big: the body exceeds the server's max-job-size (shown by `spindle stats`; \
         raise it with `spindled -z BYTES`)"
    )]
    JobTooBig,
    /// `DRAINING`: the server is in drain mode and takes no new jobs.
    #[error("the server is draining and accepts no new jobs; try again later or another server")]
    Draining,
    /// `DEADLINE_SOON`: a job this connection holds is within a second of
    /// its time-to-run; delete, release or touch it.
    #[error("a job reserved by this connection is about to time out: delete, release or touch it")]
    DeadlineSoon,
    /// `TIMED_OUT` where no timeout was asked for (the connection is
    /// half-closed). Reserves with a timeout return `None` instead.
    #[error("the reserve timed out")]
    TimedOut,
    /// `EXPECTED_CRLF`: the server did not find `\r\n` after a body. The
    /// connection is unusable afterwards.
    #[error(
        "the server expected \\r\\n after the job body (client and server disagree on framing)"
    )]
    ExpectedCrlf,
    /// `NOT_IGNORED`: a connection must watch at least one tube.
    #[error("cannot ignore tube {0:?}: it is the only tube this connection watches")]
    NotIgnored(String),
    /// `BURIED <id>` to a put, or `BURIED` to a release: the server ran out
    /// of memory growing a queue and buried the job instead.
    #[error("the server is short of memory and buried job {id}; kick it later")]
    Buried {
        /// The job.
        id: u64,
    },
    /// A fenced command (`*-lease`) named a lease that has ended: the job
    /// was released, timed out, or reserved again since.
    #[error(
        "the lease on job {id} has ended (TTR passed, its holder closed, or it was reserved \
         again); another worker may be running it: drop this result"
    )]
    StaleLease {
        /// The job.
        id: u64,
    },
    /// The server does not know this extension command (plain beanstalkd).
    #[error(
        "the server does not support `{command}`: it is a spindled extension, unknown to this \
         server (plain beanstalkd?)"
    )]
    Unsupported {
        /// The command.
        command: &'static str,
    },
    /// An error reply with no variant of its own (`BAD_FORMAT`,
    /// `OUT_OF_MEMORY`, `INTERNAL_ERROR`, `UNKNOWN_COMMAND`).
    #[error("the server answered {reply} to `{command}`")]
    Server {
        /// The command line sent (without any body).
        command: String,
        /// The reply line.
        reply: String,
    },
    /// A reply that does not fit the protocol. The connection is unusable
    /// afterwards.
    #[error("protocol error after `{command}`: {detail}")]
    Protocol {
        /// The command line sent.
        command: String,
        /// What was wrong.
        detail: String,
    },
    /// The job was cancelled while this connection held it (`cancel`).
    #[error("`{0}`: the job was cancelled; its result is discarded and the job is gone")]
    Cancelled(String),
    /// The server refused an extension's arguments, and said why.
    #[error("`{command}` refused: {reason}")]
    Rejected {
        /// The command.
        command: &'static str,
        /// The server's reason.
        reason: String,
    },
    /// An argument the server would reject; nothing was sent.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// An earlier error left the connection out of step with the server.
    #[error("the connection to {addr} is unusable after an earlier error ({reason}); reconnect")]
    Broken {
        /// The server's address.
        addr: String,
        /// The earlier error.
        reason: String,
    },
}

/// Result of client calls.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;
