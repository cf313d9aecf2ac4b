//! `spindled`'s server: the beanstalkd protocol, byte for byte, plus
//! extensions (`docs/protocol.md`), on a mio event loop over Unix and TCP
//! sockets, with jobs kept in a write-ahead log when a data directory is
//! given.
//!
//! The `spindled` binary is a thin command line over this module; a
//! service can embed the same server:
//!
//! ```no_run
//! use spindle_server::{Listen, Server, ServerConfig};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut cfg = ServerConfig::default();
//! cfg.listen = vec![Listen::Unix("/tmp/my.sock".into())];
//! let server = Server::bind(cfg)?;
//! let handle = server.handle();
//! std::thread::spawn(move || server.run());
//! // ... later:
//! handle.stop();
//! # Ok(()) }
//! ```
//!
//! How one loop iteration goes (`reactor.rs`):
//!
//! 1. Wait for socket events, a stop/drain request, or the next timer
//!    (a delayed job coming due, a lease or a `reserve` timing out, a pause
//!    ending).
//! 2. Accept new connections; read and process each readable connection's
//!    commands in order against the job table (`store.rs`), appending
//!    replies to its output buffer. Nothing is written yet.
//! 3. Fire due timers; serve connections waiting in `reserve` that a put,
//!    release or timer made ready.
//! 4. Write the records of every change of this iteration to the log as
//!    one frame in one write (each command's room was checked as it ran,
//!    so a full disk still refuses that command alone: `log.rs`). With `-f0`
//!    (sync on every change), then wait once for the log to be on stable
//!    storage: every change of this iteration, from every connection,
//!    shares that one sync (group commit).
//! 5. Write every connection's output; resume connections that were held
//!    back by a full output buffer.
//!
//! One thread owns the job table and runs every connection's commands, as
//! in beanstalkd, so no lock is taken anywhere on the path of a command.
//! With [`ServerConfig::io_loops`] > 1, the sockets of some connections are
//! served by I/O loops (`ioloop.rs`) that only move bytes to and from the
//! owner over lock-free channels (`remote.rs`). See `docs/architecture.md`
//! ("The daemon") for why.

mod budget;
pub use budget::DEFAULT_MAX_PARTIAL_BYTES;
mod conn;
mod dist;
mod idhash;
mod ioloop;
mod log;
mod metrics;
mod persist;
pub mod proto;
mod reactor;
mod remote;
mod report;
mod store;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub use reactor::Server;

/// The `version` that `stats` reports: the beanstalkd release whose
/// protocol spindled speaks, as semver, so clients that compare it with
/// beanstalkd versions (`>= 1.8.0`) accept it. Spindle's own version is
/// `spindle-version` ([`ServerConfig::version`]).
pub const BEANSTALKD_VERSION: &str = "1.12.0";

/// Where to listen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// A Unix socket path (created with [`ServerConfig::socket_mode`]).
    Unix(PathBuf),
    /// A TCP address.
    Tcp(std::net::SocketAddr),
}

/// When the log reaches stable storage (beanstalkd's `-f`/`-F`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    /// `-F`: never fsync. Records are in the mmap'd log, so they survive
    /// `kill -9` of the daemon; a power loss can lose them.
    Never,
    /// `-f MS` (default 50 ms): a power loss loses at most the interval.
    Interval(Duration),
    /// `-f0`: every reply that changed state is sent after an fsync
    /// (one fsync shared by everything in one loop iteration).
    Always,
}

/// What to do with a damaged log tail at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Recovery {
    /// Cut it off with a warning naming segment and offset.
    #[default]
    Truncate,
    /// Refuse to start.
    Strict,
}

/// Server settings. `Default` is an in-memory server on the default
/// socket with beanstalkd's limits.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Sockets to listen on (at least one).
    pub listen: Vec<Listen>,
    /// The write-ahead log's directory (`-b`); `None` keeps jobs in memory.
    pub data_dir: Option<PathBuf>,
    /// Who may read the data directory and its log files (default: only
    /// this user, 0700/0600; `--data-group` gives a group 0750/0640). See
    /// [`FileAccess`](spindle_wal::FileAccess).
    pub data_access: spindle_wal::FileAccess,
    /// When the log is synced.
    pub sync: SyncMode,
    /// Damaged tails.
    pub recovery: Recovery,
    /// Largest job body (`-z`, default 65535, at most 1 GiB).
    pub max_job_size: u32,
    /// Log segment size (`-s`), rounded up to 4 KiB.
    pub segment_size: u64,
    /// Mode of a created Unix socket (default 0o600).
    pub socket_mode: u32,
    /// If not empty, only these peer uids may connect over Unix sockets.
    pub allow_uids: Vec<u32>,
    /// Most open connections; more are accepted and closed at once.
    pub max_connections: usize,
    /// Most live jobs (a put beyond gets `OUT_OF_MEMORY`).
    pub max_jobs: u64,
    /// Most live body bytes (a put beyond gets `OUT_OF_MEMORY`).
    pub max_bytes: u64,
    /// Latency target used for `desired-workers`.
    pub latency_target: Duration,
    /// Spindle's own version, reported by `stats` as `spindle-version`
    /// (`version` is [`BEANSTALKD_VERSION`]).
    pub version: String,
    /// After activity, keep polling without blocking this long before
    /// parking in `epoll_wait` (0 = always block). Trades one core's idle
    /// time for wake-up latency.
    pub idle_spin: Duration,
    /// Event loops (`--io-loops`): the one that owns the job table, plus
    /// `io_loops - 1` loops that only move bytes for the connections they
    /// are given (round-robin at accept). 1 serves everything on one
    /// thread, like beanstalkd.
    pub io_loops: usize,
    /// Fault each new log segment in on the WAL's preparer thread
    /// (`FsStorage::with_prefault`): appends on the loop then take no page
    /// faults. On by default; `--no-log-prefault` turns it off.
    pub log_prefault: bool,
    /// How the log's appends write (`--log-write`): `pwritev` by default,
    /// one per loop iteration (`log.rs`), which measured faster than stores
    /// through the mapping and takes no TLB shoot-downs from syncs
    /// (`docs/benchmarks.md`, "spindled: one log write per loop
    /// iteration").
    pub log_write: spindle_wal::WriteMethod,
    /// Most bytes of half-received job bodies, all connections together
    /// (`--max-partial-bytes`, default [`DEFAULT_MAX_PARTIAL_BYTES`]): a
    /// body beyond is read and dropped, and its command gets
    /// `OUT_OF_MEMORY`.
    pub max_partial_bytes: u64,
    /// Tubes that live in NATS JetStream, shared with every spindled (and
    /// Spindle node) on the same server and namespace (`--jetstream`).
    pub jetstream: Option<JetStreamTubes>,
}

/// `--jetstream`: which tubes are distributed, and where.
#[derive(Debug, Clone)]
pub struct JetStreamTubes {
    /// The NATS server, `nats://HOST:PORT`.
    pub url: String,
    /// The namespace (one stream per namespace).
    pub namespace: String,
    /// The distributed tubes; every other tube stays local.
    pub tubes: Vec<String>,
    /// The lease time (TTR) of every job of these tubes: JetStream's
    /// AckWait is the consumer's, not the job's.
    pub ttr: Duration,
    /// Runs per job before it is buried (releases count, as deliveries).
    pub max_attempts: u32,
}

/// beanstalkd's default `-z`.
pub const DEFAULT_MAX_JOB_SIZE: u32 = 65_535;
/// beanstalkd's hard cap on `-z`.
pub const MAX_JOB_SIZE_LIMIT: u32 = 1 << 30;
/// beanstalkd's default `-s` (10 MiB).
pub const DEFAULT_SEGMENT_SIZE: u64 = 10 << 20;

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: vec![Listen::Unix(spindle_client::default_socket())],
            data_dir: None,
            data_access: spindle_wal::FileAccess::Private,
            sync: SyncMode::Interval(Duration::from_millis(50)),
            recovery: Recovery::Truncate,
            max_job_size: DEFAULT_MAX_JOB_SIZE,
            segment_size: DEFAULT_SEGMENT_SIZE,
            socket_mode: 0o600,
            allow_uids: Vec::new(),
            max_connections: 10_000,
            max_jobs: 10_000_000,
            max_bytes: 4 << 30,
            latency_target: Duration::from_millis(100),
            version: format!("spindled {}", env!("CARGO_PKG_VERSION")),
            idle_spin: Duration::ZERO,
            io_loops: 1,
            log_prefault: true,
            log_write: spindle_wal::WriteMethod::Pwrite,
            max_partial_bytes: DEFAULT_MAX_PARTIAL_BYTES,
            jetstream: None,
        }
    }
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// Another server answers on this socket.
    #[error(
        "{path}: another server is already listening there; stop it or choose another --socket"
    )]
    SocketInUse {
        /// The socket path.
        path: PathBuf,
    },
    /// Something that is not a socket is at the socket path; it is left
    /// untouched.
    #[error(
        "{path} exists and is {what}, not a socket: refusing to replace it; move it away or \
         choose another --socket path"
    )]
    SocketPathTaken {
        /// The socket path.
        path: PathBuf,
        /// What is there ("a regular file", "a directory", ...).
        what: &'static str,
    },
    /// Binding or configuring a listener failed.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The settings cannot work.
    #[error("invalid server configuration: {0}")]
    Config(String),
    /// The distributed tubes could not be set up.
    #[error("cannot set up the distributed tubes on {url}: {source}")]
    JetStream {
        /// The server.
        url: String,
        /// What went wrong.
        #[source]
        source: Box<spindle_jetstream::Error>,
    },
    /// The log could not be opened.
    #[error("cannot open the data directory {dir}: {source}")]
    Wal {
        /// The directory.
        dir: PathBuf,
        /// The log's error.
        #[source]
        source: spindle_wal::WalError,
    },
    /// The log holds something we cannot read.
    #[error("cannot recover {dir}: {reason}")]
    Recover {
        /// The directory.
        dir: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// The event loop failed.
    #[error("event loop: {0}")]
    Io(#[from] std::io::Error),
}

/// Decodes `data` as a daemon log record (first byte: the frame's kind;
/// the rest: its payload). Whatever decodes must encode and decode again
/// to the same record; anything else must be an error, never a panic. For
/// the cargo-fuzz target `records` in `engine/fuzz`; not part of the API.
#[doc(hidden)]
pub fn fuzz_record(data: &[u8]) {
    let Some((&kind, payload)) = data.split_first() else { return };
    persist::round_trip(kind, payload);
}

/// Runs one client session over `data` against a fresh in-memory server,
/// without sockets: `data` is split into reads at each `0xFF` byte, and a
/// `0xFE` byte advances the clock by one second (delays, TTRs, timeouts).
/// Checks the job table's counters after every read and panics on any
/// inconsistency. For the cargo-fuzz target in `engine/fuzz` and the
/// randomized test; not part of the API.
#[doc(hidden)]
pub fn fuzz_session(data: &[u8]) {
    use std::time::Instant;
    let mut now = Instant::now();
    let cfg = store::StoreConfig {
        max_job_size: 1024,
        max_jobs: 1000,
        max_bytes: 1 << 20,
        segment_size: DEFAULT_SEGMENT_SIZE,
        latency_target: Duration::from_millis(100),
        version: "fuzz".into(),
    };
    let mut st = store::Store::new(cfg, None, now);
    let Ok((a, _b)) = mio::net::UnixStream::pair() else { return };
    let mut c = conn::Conn::new(1, conn::Stream::Unix(a));
    st.connect(1);
    st.connect(2);
    for chunk in data.split(|&b| b == 0xFF) {
        for part in chunk.split(|&b| b == 0xFE) {
            c.feed(part, &mut st, now);
            st.out.clear();
            st.check();
            now += Duration::from_secs(1);
            st.tick(now);
            st.out.clear();
            st.check();
        }
        if c.waiting {
            // Let another connection's put serve the waiter sometimes.
            let mut w = Vec::new();
            let put = proto::Cmd::Put { pri: 0, delay: 0, ttr: 1, bytes: 1, garbage: false };
            st.handle(2, put, b"x".to_vec(), now, &mut w);
            c.waiting = false;
            st.out.clear();
        }
    }
    st.disconnect(1, now);
    st.disconnect(2, now);
    st.check();
}

const RUN: u8 = 0;
const DRAIN: u8 = 1;
const STOP: u8 = 2;

/// Stops or drains a running [`Server`] from another thread (signal
/// handlers in `spindled`, tests, an embedding service).
#[derive(Debug, Clone)]
pub struct ServerHandle {
    flag: Arc<AtomicU8>,
    waker: Arc<mio::Waker>,
}

impl ServerHandle {
    /// Enter drain mode (beanstalkd's SIGUSR1): puts get `DRAINING`,
    /// everything else works.
    pub fn drain(&self) {
        let _ = self.flag.compare_exchange(RUN, DRAIN, Ordering::AcqRel, Ordering::Acquire);
        let _ = self.waker.wake();
    }

    /// Stop: close the listeners and connections (reserved jobs return to
    /// ready), sync and close the log, remove the socket files. `run`
    /// returns.
    pub fn stop(&self) {
        self.flag.store(STOP, Ordering::Release);
        let _ = self.waker.wake();
    }
}
