//! A blocking, pipelining client for `spindled` and any beanstalkd.
//!
//! One [`Client`] is one connection. Every method sends one command and
//! waits for its reply, except [`Client::execute`] (and [`Client::put_many`]
//! built on it), which sends many commands in one write and then reads the
//! replies in order: the cheap way to put or delete thousands of jobs.
//!
//! # A tour
//!
//! 1. Connect. [`Client::connect_default`] uses the socket `spindled` listens
//!    on by default ([`default_socket`]); [`Client::connect`] takes
//!    `unix:PATH`, a path containing `/`, or `HOST:PORT`. A Unix socket
//!    must belong to this process's user or root, in a directory not every
//!    user may write to, or the client refuses it before sending anything
//!    (another user may have bound it first);
//!    [`ConnectOptions::allow_foreign_socket`] trusts it anyway.
//! 2. Produce: [`Client::use_tube`] picks the tube (queue) that puts go to,
//!    then [`Client::put`] returns the new job's id.
//! 3. Consume: [`Client::watch`] adds a tube to the set reserves take jobs
//!    from; [`Client::reserve`] blocks until a job is leased to this
//!    connection for its time-to-run; [`Client::delete`] completes it,
//!    [`Client::release`] gives it back, [`Client::bury`] dead-letters it and
//!    [`Client::touch`] extends the lease.
//! 4. Inspect: `peek*`, `stats*`, `list_*`.
//!
//! ```no_run
//! use spindle_client::Client;
//! use std::time::Duration;
//! # fn main() -> Result<(), spindle_client::ClientError> {
//! let mut client = Client::connect_default()?;
//! client.use_tube("emails")?;
//! let id = client.put(0, Duration::ZERO, Duration::from_secs(60), b"hello")?;
//! println!("queued job {id}");
//!
//! client.watch("emails")?;
//! if let Some(job) = client.reserve_with_timeout(Duration::from_secs(5))? {
//!     println!("got job {}: {:?}", job.id, job.body);
//!     client.delete(job.id)?;
//! }
//! # Ok(()) }
//! ```
//!
//! # Pipelining
//!
//! A [`Pipeline`] records commands without sending anything;
//! [`Client::execute`] writes them (in windows of [`PIPELINE_WINDOW`]
//! commands, so neither side's socket buffer can fill up and deadlock) and
//! returns one result per command, in order. A failed command does not stop
//! the others.
//!
//! ```no_run
//! use spindle_client::{Client, Pipeline};
//! use std::time::Duration;
//! # fn main() -> Result<(), spindle_client::ClientError> {
//! let mut client = Client::connect("unix:/run/spindled.sock")?;
//! let bodies: Vec<Vec<u8>> = (0..10_000).map(|i| format!("job {i}").into_bytes()).collect();
//! let ids = client.put_many(0, Duration::ZERO, Duration::from_secs(60), &bodies)?;
//! assert_eq!(ids.len(), 10_000);
//!
//! let mut pipeline = Pipeline::new();
//! for id in ids.into_iter().flatten() {
//!     pipeline.delete(id);
//! }
//! for reply in client.execute(&pipeline)? {
//!     reply?;
//! }
//! # Ok(()) }
//! ```
//!
//! # Extensions
//!
//! `spindled` adds commands that plain beanstalkd does not know
//! (`docs/protocol.md`): [`Client::put_batch`], [`Client::reserve_batch`],
//! [`Client::put_unique`], [`Client::fail`], [`Client::tube_config`],
//! [`Client::clear_tube`], [`Client::stats_tube_ext`],
//! [`Client::stats_job_ext`] and [`Client::metrics`]. Against a server
//! without them they return [`ClientError::Unsupported`] and the connection
//! stays usable. Commands that carry a body (`put-batch`, `put-unique`,
//! `fail`) are only sent once [`Client::supports_extensions`] has asked the
//! server (one bodyless probe per connection): beanstalkd would read such a
//! body as further commands (a body `delete 7` would delete job 7).
//!
//! # Errors and the state of the connection
//!
//! Replies such as `NOT_FOUND` or `TIMED_OUT` are ordinary errors and the
//! connection carries on. After an I/O error, a reply the client cannot
//! parse, or a `BAD_FORMAT`/`UNKNOWN_COMMAND` answer to a command that
//! carried a body, the client can no longer tell which reply belongs to
//! which command: every later call returns [`ClientError::Broken`]; open a
//! new connection.
//!
//! Durations are sent as whole seconds (milliseconds for the retry policy),
//! rounded up, so a delay is never shorter than asked.

use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::ops::Range;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

mod error;
mod paid;
mod reply;
mod trust;
pub use error::{ClientError, Result};
pub use paid::{CancelOutcome, Deadline, NewSchedule, ScheduleRule, TubeLimits};
use reply::parse_list;
pub use reply::{FailOutcome, Job, JobState, PutUnique, Reply, StatsMap};
pub use trust::ConnectOptions;

/// The most commands [`Client::execute`] has in flight before it reads
/// their replies. Replies to pipelined commands are at most a few dozen
/// bytes, so a window's replies fit in the socket buffers and neither side
/// blocks writing while the other is not reading.
pub const PIPELINE_WINDOW: usize = 1024;

/// The longest tube name the protocol accepts, in bytes.
pub const MAX_TUBE_NAME: usize = 200;

/// The longest `put-unique` key, in bytes.
pub const MAX_UNIQUE_KEY: usize = 200;

/// The most jobs one `put-batch` may carry.
pub const MAX_PUT_BATCH: usize = 100_000;

/// The most body bytes one `put-batch` may carry.
pub const MAX_PUT_BATCH_BYTES: usize = 16 << 20;

/// The most jobs one `reserve-batch` may ask for.
pub const MAX_RESERVE_BATCH: u32 = 1000;

/// TCP port beanstalkd (and `spindled --listen` without a port) uses.
pub const DEFAULT_PORT: u16 = 11300;

/// Longest reply line read before giving up (real ones are < 250 bytes).
const MAX_LINE: u64 = 4096;

/// Largest data chunk accepted in a reply (guards against a corrupt length).
const MAX_BODY: usize = 1 << 30;

/// The Unix socket `spindled` listens on, and the CLI connects to, when none
/// is given: `$SPINDLE_SOCKET` if set, else `$XDG_RUNTIME_DIR/spindled.sock`
/// if that is set, else `/tmp/spindled-$UID.sock`.
pub fn default_socket() -> PathBuf {
    if let Some(path) = std::env::var_os("SPINDLE_SOCKET").filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("spindled.sock");
    }
    #[allow(unsafe_code)]
    // SAFETY: getuid takes no arguments, cannot fail and touches no memory
    // of ours.
    let uid = unsafe { libc::getuid() };
    PathBuf::from(format!("/tmp/spindled-{uid}.sock"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Put,
    Delete,
    Use,
    Watch,
    Ignore,
    Release,
    Bury,
    Touch,
    Kick,
    KickJob,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    kind: Kind,
    /// Start of the command line in `Pipeline::buf`.
    start: usize,
    /// End of the command line (before `\r\n`).
    line_end: usize,
    /// End of the whole command (body included).
    end: usize,
}

/// Commands recorded for one write; see [`Client::execute`].
///
/// Arguments are checked as they are recorded; an invalid one makes
/// [`Client::execute`] fail before anything is sent. A pipeline can be
/// executed more than once.
#[derive(Debug, Default, Clone)]
pub struct Pipeline {
    buf: Vec<u8>,
    slots: Vec<Slot>,
    invalid: Option<String>,
}

impl Pipeline {
    /// An empty pipeline.
    pub fn new() -> Pipeline {
        Pipeline::default()
    }

    /// Number of commands recorded.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether nothing is recorded.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Forgets every command.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.slots.clear();
        self.invalid = None;
    }

    fn push(&mut self, kind: Kind, line: fmt::Arguments<'_>, body: Option<&[u8]>) -> &mut Self {
        let start = self.buf.len();
        // Writing into a Vec cannot fail.
        let _ = self.buf.write_fmt(line);
        let line_end = self.buf.len();
        self.buf.extend_from_slice(b"\r\n");
        if let Some(body) = body {
            self.buf.extend_from_slice(body);
            self.buf.extend_from_slice(b"\r\n");
        }
        self.slots.push(Slot { kind, start, line_end, end: self.buf.len() });
        self
    }

    fn invalid(&mut self, e: ClientError) -> &mut Self {
        if self.invalid.is_none() {
            self.invalid = Some(match e {
                ClientError::InvalidArgument(s) => s,
                other => other.to_string(),
            });
        }
        self
    }

    /// Records `put` into the used tube; replies [`Reply::Inserted`].
    pub fn put(&mut self, pri: u32, delay: Duration, ttr: Duration, body: &[u8]) -> &mut Self {
        match (secs("delay", delay), secs("ttr", ttr)) {
            (Ok(d), Ok(t)) => {
                self.push(Kind::Put, format_args!("put {pri} {d} {t} {}", body.len()), Some(body))
            }
            (Err(e), _) | (_, Err(e)) => self.invalid(e),
        }
    }

    /// Records `delete`; replies [`Reply::Deleted`].
    pub fn delete(&mut self, id: u64) -> &mut Self {
        self.push(Kind::Delete, format_args!("delete {id}"), None)
    }

    /// Records `use`; replies [`Reply::Using`].
    pub fn use_tube(&mut self, tube: &str) -> &mut Self {
        match check_tube(tube) {
            Ok(()) => self.push(Kind::Use, format_args!("use {tube}"), None),
            Err(e) => self.invalid(e),
        }
    }

    /// Records `watch`; replies [`Reply::Watching`].
    pub fn watch(&mut self, tube: &str) -> &mut Self {
        match check_tube(tube) {
            Ok(()) => self.push(Kind::Watch, format_args!("watch {tube}"), None),
            Err(e) => self.invalid(e),
        }
    }

    /// Records `ignore`; replies [`Reply::Watching`].
    pub fn ignore(&mut self, tube: &str) -> &mut Self {
        match check_tube(tube) {
            Ok(()) => self.push(Kind::Ignore, format_args!("ignore {tube}"), None),
            Err(e) => self.invalid(e),
        }
    }

    /// Records `release`; replies [`Reply::Released`].
    pub fn release(&mut self, id: u64, pri: u32, delay: Duration) -> &mut Self {
        match secs("delay", delay) {
            Ok(d) => self.push(Kind::Release, format_args!("release {id} {pri} {d}"), None),
            Err(e) => self.invalid(e),
        }
    }

    /// Records `bury`; replies [`Reply::Buried`].
    pub fn bury(&mut self, id: u64, pri: u32) -> &mut Self {
        self.push(Kind::Bury, format_args!("bury {id} {pri}"), None)
    }

    /// Records `touch`; replies [`Reply::Touched`].
    pub fn touch(&mut self, id: u64) -> &mut Self {
        self.push(Kind::Touch, format_args!("touch {id}"), None)
    }

    /// Records `kick`; replies [`Reply::Kicked`].
    pub fn kick(&mut self, bound: u64) -> &mut Self {
        self.push(Kind::Kick, format_args!("kick {bound}"), None)
    }

    /// Records `kick-job`; replies [`Reply::Kicked`]`(1)`.
    pub fn kick_job(&mut self, id: u64) -> &mut Self {
        self.push(Kind::KickJob, format_args!("kick-job {id}"), None)
    }

    fn line(&self, slot: &Slot) -> String {
        String::from_utf8_lossy(&self.buf[slot.start..slot.line_end]).into_owned()
    }
}

enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    fn set_timeouts(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Unix(s) => {
                s.set_read_timeout(t)?;
                s.set_write_timeout(t)
            }
            Stream::Tcp(s) => {
                s.set_read_timeout(t)?;
                s.set_write_timeout(t)
            }
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Tcp(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A parsed reply: its words, and the data that came with it.
pub(crate) struct Response {
    line: String,
    body: Vec<u8>,
    jobs: Vec<Job>,
}

impl Response {
    fn word(&self) -> &str {
        self.line.split(' ').next().unwrap_or("")
    }
    fn arg(&self, i: usize) -> Option<&str> {
        self.line.split(' ').nth(i + 1)
    }
}

/// Whether `word` is one of the protocol's error replies (as opposed to a
/// success reply that belongs to some other command).
fn is_error_word(word: &str) -> bool {
    matches!(
        word,
        "OUT_OF_MEMORY"
            | "INTERNAL_ERROR"
            | "BAD_FORMAT"
            | "UNKNOWN_COMMAND"
            | "NOT_FOUND"
            | "JOB_TOO_BIG"
            | "DRAINING"
            | "DEADLINE_SOON"
            | "TIMED_OUT"
            | "EXPECTED_CRLF"
            | "NOT_IGNORED"
            | "CANCELLED"
    )
}

/// A connection to `spindled` or beanstalkd. See the [module docs](self).
pub struct Client {
    conn: BufReader<Stream>,
    out: Vec<u8>,
    addr: String,
    broken: Option<String>,
    extensions: Option<bool>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("addr", &self.addr)
            .field("broken", &self.broken)
            .field("extensions", &self.extensions)
            .finish_non_exhaustive()
    }
}

enum Addr {
    Unix(PathBuf),
    Tcp(String),
}

fn parse_addr(addr: &str) -> Addr {
    if let Some(path) = addr.strip_prefix("unix:") {
        return Addr::Unix(PathBuf::from(path));
    }
    if let Some(hostport) = addr.strip_prefix("tcp:") {
        return Addr::Tcp(with_port(hostport));
    }
    if addr.contains('/') {
        return Addr::Unix(PathBuf::from(addr));
    }
    match addr.rsplit_once(':') {
        Some((_, port)) if port.parse::<u16>().is_ok() => Addr::Tcp(addr.to_owned()),
        _ => Addr::Unix(PathBuf::from(addr)),
    }
}

fn with_port(hostport: &str) -> String {
    match hostport.rsplit_once(':') {
        Some((_, port)) if port.parse::<u16>().is_ok() => hostport.to_owned(),
        _ => format!("{hostport}:{DEFAULT_PORT}"),
    }
}

impl Client {
    /// Connects to `addr`: `unix:PATH` or a path containing `/` for a Unix
    /// socket; `HOST:PORT` (or `tcp:HOST[:PORT]`) for TCP. Anything else is
    /// taken as a socket path.
    ///
    /// A Unix socket must belong to this process's user or to root, in a
    /// directory not every user may write to; anything else is refused
    /// ([`ClientError::ForeignSocket`], [`ClientError::OpenSocketDir`])
    /// unless [`Client::connect_with`] allows it.
    pub fn connect(addr: &str) -> Result<Client> {
        Client::connect_with(addr, ConnectOptions::default())
    }

    /// [`Client::connect`] with options.
    pub fn connect_with(addr: &str, opts: ConnectOptions) -> Result<Client> {
        match parse_addr(addr) {
            Addr::Unix(path) => Client::connect_unix_with(path, opts),
            Addr::Tcp(hostport) => match TcpStream::connect(&hostport) {
                Ok(s) => {
                    // Small commands must not wait for Nagle's timer.
                    let _ = s.set_nodelay(true);
                    Ok(Client::from_stream(Stream::Tcp(s), hostport))
                }
                Err(source) => Err(ClientError::Connect {
                    hint: format!(
                        "is spindled running? start it with `spindled --listen {hostport}`"
                    ),
                    addr: hostport,
                    source,
                }),
            },
        }
    }

    /// Connects to the Unix socket at `path`, which must belong to this
    /// process's user or root (see [`Client::connect`]).
    pub fn connect_unix(path: impl AsRef<Path>) -> Result<Client> {
        Client::connect_unix_with(path, ConnectOptions::default())
    }

    /// [`Client::connect_unix`] with options; with
    /// [`ConnectOptions::allow_foreign_socket`] the socket's owner and
    /// directory are not checked.
    pub fn connect_unix_with(path: impl AsRef<Path>, opts: ConnectOptions) -> Result<Client> {
        let path = path.as_ref();
        trust::check(path, opts)?;
        let addr = format!("socket {}", path.display());
        match UnixStream::connect(path) {
            Ok(s) => Ok(Client::from_stream(Stream::Unix(s), addr)),
            Err(source) => {
                let hint = match source.kind() {
                    io::ErrorKind::PermissionDenied => format!(
                        "the socket belongs to another user; run as that user or start spindled \
                         with `--socket-mode` / `--allow-uid` (socket {})",
                        path.display()
                    ),
                    _ => format!(
                        "is spindled running? start it with `spindled --socket {}`, or point \
                         --socket / $SPINDLE_SOCKET at the server",
                        path.display()
                    ),
                };
                Err(ClientError::Connect { addr, hint, source })
            }
        }
    }

    /// Connects to [`default_socket`].
    pub fn connect_default() -> Result<Client> {
        Client::connect_unix(default_socket())
    }

    fn from_stream(stream: Stream, addr: String) -> Client {
        Client {
            conn: BufReader::with_capacity(64 * 1024, stream),
            out: Vec::with_capacity(4096),
            addr,
            broken: None,
            extensions: None,
        }
    }

    /// The server's address, as shown in error messages.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Whether an earlier error left the connection unusable.
    pub fn is_broken(&self) -> bool {
        self.broken.is_some()
    }

    /// Limits how long one read or write may block (`None`: forever, the
    /// default). Blocking reserves wait on the server, so keep the limit
    /// above their timeouts. A timeout breaks the connection.
    pub fn set_io_timeout(&mut self, timeout: Option<Duration>) -> Result<()> {
        let r = self.conn.get_ref().set_timeouts(timeout);
        r.map_err(|source| ClientError::Io { addr: self.addr.clone(), source })
    }

    // ----- plumbing -----

    fn check(&self) -> Result<()> {
        match &self.broken {
            Some(reason) => {
                Err(ClientError::Broken { addr: self.addr.clone(), reason: reason.clone() })
            }
            None => Ok(()),
        }
    }

    fn io_err(&mut self, source: io::Error) -> ClientError {
        let e = ClientError::Io { addr: self.addr.clone(), source };
        self.broken = Some(e.to_string());
        e
    }

    fn protocol_err(&mut self, command: &str, detail: String) -> ClientError {
        let e = ClientError::Protocol { command: command.to_owned(), detail };
        self.broken = Some(e.to_string());
        e
    }

    fn write_raw(&mut self, bytes: &[u8]) -> Result<()> {
        match self.conn.get_mut().write_all(bytes) {
            Ok(()) => Ok(()),
            Err(e) => Err(self.io_err(e)),
        }
    }

    /// Sends `line` and whatever `payload` appends, then reads the reply.
    pub(crate) fn call(
        &mut self,
        line: &str,
        payload: impl FnOnce(&mut Vec<u8>),
    ) -> Result<Response> {
        self.check()?;
        let mut out = std::mem::take(&mut self.out);
        out.clear();
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(b"\r\n");
        payload(&mut out);
        let sent = self.write_raw(&out);
        if out.capacity() <= 1 << 20 {
            self.out = out;
        }
        sent?;
        self.read_response(line)
    }

    /// Sends a command without a body and reads the reply.
    pub(crate) fn simple(&mut self, line: &str) -> Result<Response> {
        self.call(line, |_| {})
    }

    fn read_line(&mut self, command: &str) -> Result<String> {
        let mut buf = Vec::with_capacity(64);
        let read = (&mut self.conn).take(MAX_LINE).read_until(b'\n', &mut buf);
        match read {
            Err(e) => return Err(self.io_err(e)),
            Ok(0) => {
                let e = io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the server closed the connection",
                );
                return Err(self.io_err(e));
            }
            Ok(_) => {}
        }
        if !buf.ends_with(b"\r\n") {
            let detail = if !buf.ends_with(b"\n") && (buf.len() as u64) < MAX_LINE {
                let e = io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the server closed the connection in the middle of a reply",
                );
                return Err(self.io_err(e));
            } else if buf.ends_with(b"\n") {
                "reply line ends in \\n, not \\r\\n".to_owned()
            } else {
                format!("reply line longer than {MAX_LINE} bytes")
            };
            return Err(self.protocol_err(command, detail));
        }
        buf.truncate(buf.len() - 2);
        match String::from_utf8(buf) {
            Ok(s) => Ok(s),
            Err(_) => Err(self.protocol_err(command, "reply line is not UTF-8".to_owned())),
        }
    }

    fn read_data(&mut self, command: &str, len: usize) -> Result<Vec<u8>> {
        if len > MAX_BODY {
            return Err(self.protocol_err(command, format!("data chunk of {len} bytes announced")));
        }
        let mut data = Vec::with_capacity(len.min(1 << 20) + 2);
        let read = (&mut self.conn).take(len as u64 + 2).read_to_end(&mut data);
        if let Err(e) = read {
            return Err(self.io_err(e));
        }
        if data.len() < len + 2 {
            let e = io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the connection in the middle of a reply",
            );
            return Err(self.io_err(e));
        }
        if !data.ends_with(b"\r\n") {
            return Err(self.protocol_err(command, "data chunk not followed by \\r\\n".to_owned()));
        }
        data.truncate(len);
        Ok(data)
    }

    fn parse_num<T: FromStr>(&mut self, command: &str, line: &str, s: Option<&str>) -> Result<T> {
        match s.and_then(|s| s.parse().ok()) {
            Some(n) => Ok(n),
            None => Err(self.protocol_err(command, format!("malformed reply {line:?}"))),
        }
    }

    /// Reads one reply, with its data chunk(s) when its first word says
    /// there are some. Any failure here breaks the connection.
    fn read_response(&mut self, command: &str) -> Result<Response> {
        let line = self.read_line(command)?;
        let mut words = line.split(' ');
        let word = words.next().unwrap_or("");
        let a1 = words.next();
        let a2 = words.next();
        let mut resp = Response { line: String::new(), body: Vec::new(), jobs: Vec::new() };
        match word {
            "OK" => {
                let len = self.parse_num(command, &line, a1)?;
                resp.body = self.read_data(command, len)?;
            }
            "FOUND" | "RESERVED" => {
                let _id: u64 = self.parse_num(command, &line, a1)?;
                let len = self.parse_num(command, &line, a2)?;
                resp.body = self.read_data(command, len)?;
            }
            "RESERVED-BATCH" => {
                let n: usize = self.parse_num(command, &line, a1)?;
                if n > MAX_RESERVE_BATCH as usize {
                    return Err(self.protocol_err(command, format!("{n} jobs in one batch")));
                }
                for _ in 0..n {
                    let frame = self.read_line(command)?;
                    let mut w = frame.split(' ');
                    let id = self.parse_num(command, &frame, w.next())?;
                    let len = self.parse_num(command, &frame, w.next())?;
                    let body = self.read_data(command, len)?;
                    resp.jobs.push(Job { id, body });
                }
            }
            "INSERTED" | "BURIED" | "USING" | "WATCHING" | "DELETED" | "RELEASED" | "TOUCHED"
            | "KICKED" | "PAUSED" | "INSERTED-BATCH" | "DUPLICATE" | "FAILED" | "FAILED-BURIED"
            | "CONFIGURED" | "CLEARED" | "LEASED" | "STALE_LEASE" => {}
            // Schedules, limits, expiry, cancellation (`paid.rs`).
            "CANCELLED" | "CANCELLING" | "LIMITED" | "BAD_LIMIT" | "SCHEDULED" | "EXISTS"
            | "BAD_SCHEDULE" | "RESUMED" | "REMOVED" | "DEADLINE_PASSED" => {}
            w if is_error_word(w) => {}
            _ => return Err(self.protocol_err(command, format!("unknown reply {line:?}"))),
        }
        resp.line = line;
        Ok(resp)
    }

    /// Turns a reply the command did not expect into an error. `body`: the
    /// command carried data, which the server may have read as commands.
    pub(crate) fn unexpected(&mut self, command: &str, r: &Response, body: bool) -> ClientError {
        let word = r.word();
        if !is_error_word(word) {
            return self.protocol_err(command, format!("unexpected reply {:?}", r.line));
        }
        let desync =
            word == "EXPECTED_CRLF" || (body && matches!(word, "BAD_FORMAT" | "UNKNOWN_COMMAND"));
        let e = match word {
            "NOT_FOUND" => ClientError::NotFound(format!("`{command}`: no such job or tube")),
            "JOB_TOO_BIG" => ClientError::JobTooBig,
            "DRAINING" => ClientError::Draining,
            "DEADLINE_SOON" => ClientError::DeadlineSoon,
            "TIMED_OUT" => ClientError::TimedOut,
            "EXPECTED_CRLF" => ClientError::ExpectedCrlf,
            "CANCELLED" => ClientError::Cancelled(command.to_owned()),
            _ => ClientError::Server { command: command.to_owned(), reply: r.line.clone() },
        };
        if desync {
            self.broken = Some(e.to_string());
        }
        e
    }

    /// Maps the answer of a server without the extension to
    /// [`ClientError::Unsupported`], anything else as `unexpected`.
    /// beanstalkd answers `UNKNOWN_COMMAND` to most extensions, but it
    /// matches command names by prefix, so `stats-job-ext`,
    /// `stats-tube-ext` and `reserve-batch` (prefixed by `stats` and
    /// `reserve`) get `BAD_FORMAT`: that asks [`Client::supports_extensions`].
    pub(crate) fn unexpected_ext(
        &mut self,
        name: &'static str,
        command: &str,
        r: &Response,
    ) -> ClientError {
        let unsupported = match r.word() {
            "UNKNOWN_COMMAND" => true,
            "BAD_FORMAT" => match self.supports_extensions() {
                Ok(known) => !known,
                Err(e) => return e,
            },
            _ => false,
        };
        if unsupported {
            return ClientError::Unsupported { command: name };
        }
        self.unexpected(command, r, false)
    }

    pub(crate) fn num_arg<T: FromStr>(
        &mut self,
        command: &str,
        r: &Response,
        i: usize,
    ) -> Result<T> {
        let a = r.arg(i);
        let line = r.line.clone();
        self.parse_num(command, &line, a)
    }

    /// Interprets the reply to a pipelinable command.
    fn interpret(&mut self, kind: Kind, command: &str, r: Response) -> Result<Reply> {
        let reply = match (kind, r.word()) {
            (Kind::Put, "INSERTED") => Reply::Inserted(self.num_arg(command, &r, 0)?),
            (Kind::Put, "BURIED") => {
                return Err(ClientError::Buried { id: self.num_arg(command, &r, 0)? })
            }
            (Kind::Delete, "DELETED") => Reply::Deleted,
            (Kind::Use, "USING") => Reply::Using(r.arg(0).unwrap_or("").to_owned()),
            (Kind::Watch | Kind::Ignore, "WATCHING") => {
                Reply::Watching(self.num_arg(command, &r, 0)?)
            }
            (Kind::Ignore, "NOT_IGNORED") => {
                let tube = command.strip_prefix("ignore ").unwrap_or(command);
                return Err(ClientError::NotIgnored(tube.to_owned()));
            }
            (Kind::Release, "RELEASED") => Reply::Released,
            (Kind::Release, "BURIED") => {
                let id = command.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
                return Err(ClientError::Buried { id });
            }
            (Kind::Bury, "BURIED") => Reply::Buried,
            (Kind::Touch, "TOUCHED") => Reply::Touched,
            (Kind::Kick, "KICKED") => Reply::Kicked(self.num_arg(command, &r, 0)?),
            (Kind::KickJob, "KICKED") => Reply::Kicked(1),
            (_, "NOT_FOUND") => {
                let what = match kind {
                    Kind::Delete => "the job does not exist or another connection reserved it",
                    Kind::Release | Kind::Bury | Kind::Touch => {
                        "the job does not exist or is not reserved by this connection"
                    }
                    Kind::KickJob => "the job does not exist or is not buried or delayed",
                    _ => "no such job or tube",
                };
                return Err(ClientError::NotFound(format!("`{command}`: {what}")));
            }
            _ => return Err(self.unexpected(command, &r, kind == Kind::Put)),
        };
        Ok(reply)
    }

    fn one(&mut self, kind: Kind, line: &str, body: Option<&[u8]>) -> Result<Reply> {
        let r = self.call(line, |out| {
            if let Some(body) = body {
                out.extend_from_slice(body);
                out.extend_from_slice(b"\r\n");
            }
        })?;
        self.interpret(kind, line, r)
    }

    fn job_reply(&mut self, command: &str, r: Response, word: &str) -> Result<Job> {
        if r.word() == word {
            let id = self.num_arg(command, &r, 0)?;
            return Ok(Job { id, body: r.body });
        }
        Err(self.unexpected(command, &r, false))
    }

    pub(crate) fn ok_body(&mut self, command: &str, r: Response) -> Result<String> {
        if r.word() == "OK" {
            return match String::from_utf8(r.body) {
                Ok(s) => Ok(s),
                Err(_) => Err(ClientError::Protocol {
                    command: command.to_owned(),
                    detail: "data is not UTF-8".to_owned(),
                }),
            };
        }
        Err(self.unexpected(command, &r, false))
    }

    // ----- producer commands -----

    /// `put`: adds a job to the used tube and returns its id. `pri`: 0 is
    /// most urgent; `delay`: how long the job waits in `delayed` first;
    /// `ttr`: how long a worker may hold it before it is released again
    /// (0 means 1 second).
    pub fn put(&mut self, pri: u32, delay: Duration, ttr: Duration, body: &[u8]) -> Result<u64> {
        let line =
            format!("put {pri} {} {} {}", secs("delay", delay)?, secs("ttr", ttr)?, body.len());
        match self.one(Kind::Put, &line, Some(body))? {
            Reply::Inserted(id) => Ok(id),
            _ => Err(self.protocol_err(&line, "mismatched reply".to_owned())),
        }
    }

    /// `use`: later puts go to `tube`.
    pub fn use_tube(&mut self, tube: &str) -> Result<()> {
        check_tube(tube)?;
        self.one(Kind::Use, &format!("use {tube}"), None).map(drop)
    }

    /// `list-tube-used`: the tube puts go to.
    pub fn list_tube_used(&mut self) -> Result<String> {
        let r = self.simple("list-tube-used")?;
        match (r.word(), r.arg(0)) {
            ("USING", Some(tube)) => Ok(tube.to_owned()),
            _ => Err(self.unexpected("list-tube-used", &r, false)),
        }
    }

    // ----- worker commands -----

    /// `reserve`: waits as long as it takes for a job from a watched tube.
    /// [`ClientError::DeadlineSoon`] if a job this connection holds is
    /// about to time out.
    pub fn reserve(&mut self) -> Result<Job> {
        let r = self.simple("reserve")?;
        self.job_reply("reserve", r, "RESERVED")
    }

    /// `reserve-with-timeout`: like [`Client::reserve`], but `None` when no
    /// job came within `timeout` (zero: answer at once).
    pub fn reserve_with_timeout(&mut self, timeout: Duration) -> Result<Option<Job>> {
        let line = format!("reserve-with-timeout {}", secs("timeout", timeout)?);
        let r = self.simple(&line)?;
        if r.word() == "TIMED_OUT" {
            return Ok(None);
        }
        self.job_reply(&line, r, "RESERVED").map(Some)
    }

    /// `reserve-job`: reserves the job `id` (ready, delayed or buried).
    pub fn reserve_job(&mut self, id: u64) -> Result<Job> {
        let line = format!("reserve-job {id}");
        let r = self.simple(&line)?;
        if r.word() == "NOT_FOUND" {
            return Err(ClientError::NotFound(format!(
                "job {id} does not exist or is already reserved"
            )));
        }
        self.job_reply(&line, r, "RESERVED")
    }

    /// `delete`: completes a job this connection reserved, or removes a
    /// ready, delayed or buried one.
    pub fn delete(&mut self, id: u64) -> Result<()> {
        self.one(Kind::Delete, &format!("delete {id}"), None).map(drop)
    }

    /// `release`: gives a reserved job back, with a new priority, after
    /// `delay`.
    pub fn release(&mut self, id: u64, pri: u32, delay: Duration) -> Result<()> {
        let line = format!("release {id} {pri} {}", secs("delay", delay)?);
        self.one(Kind::Release, &line, None).map(drop)
    }

    /// `bury`: dead-letters a reserved job until it is kicked.
    pub fn bury(&mut self, id: u64, pri: u32) -> Result<()> {
        self.one(Kind::Bury, &format!("bury {id} {pri}"), None).map(drop)
    }

    /// `touch`: restarts the time-to-run of a job this connection holds.
    pub fn touch(&mut self, id: u64) -> Result<()> {
        self.one(Kind::Touch, &format!("touch {id}"), None).map(drop)
    }

    /// `watch`: reserves also take jobs from `tube`. Returns how many tubes
    /// are watched.
    pub fn watch(&mut self, tube: &str) -> Result<u32> {
        check_tube(tube)?;
        match self.one(Kind::Watch, &format!("watch {tube}"), None)? {
            Reply::Watching(n) => Ok(n),
            _ => Err(self.protocol_err("watch", "mismatched reply".to_owned())),
        }
    }

    /// `ignore`: stops watching `tube` ([`ClientError::NotIgnored`] if it is
    /// the last one). Returns how many tubes are watched.
    pub fn ignore(&mut self, tube: &str) -> Result<u32> {
        check_tube(tube)?;
        match self.one(Kind::Ignore, &format!("ignore {tube}"), None)? {
            Reply::Watching(n) => Ok(n),
            _ => Err(self.protocol_err("ignore", "mismatched reply".to_owned())),
        }
    }

    /// `list-tubes-watched`.
    pub fn list_tubes_watched(&mut self) -> Result<Vec<String>> {
        let r = self.simple("list-tubes-watched")?;
        self.ok_body("list-tubes-watched", r).map(|s| parse_list(&s))
    }

    // ----- other commands -----

    fn peek_cmd(&mut self, line: &str) -> Result<Option<Job>> {
        let r = self.simple(line)?;
        if r.word() == "NOT_FOUND" {
            return Ok(None);
        }
        self.job_reply(line, r, "FOUND").map(Some)
    }

    /// `peek <id>`: the job, in any state, or `None`.
    pub fn peek(&mut self, id: u64) -> Result<Option<Job>> {
        self.peek_cmd(&format!("peek {id}"))
    }

    /// `peek-ready`: the next job to be reserved from the used tube.
    pub fn peek_ready(&mut self) -> Result<Option<Job>> {
        self.peek_cmd("peek-ready")
    }

    /// `peek-delayed`: the used tube's delayed job with the least delay left.
    pub fn peek_delayed(&mut self) -> Result<Option<Job>> {
        self.peek_cmd("peek-delayed")
    }

    /// `peek-buried`: the used tube's next buried job.
    pub fn peek_buried(&mut self) -> Result<Option<Job>> {
        self.peek_cmd("peek-buried")
    }

    /// `kick`: moves up to `bound` jobs of the used tube to ready: buried
    /// ones if there are any, else delayed ones. Returns how many moved.
    pub fn kick(&mut self, bound: u64) -> Result<u64> {
        match self.one(Kind::Kick, &format!("kick {bound}"), None)? {
            Reply::Kicked(n) => Ok(n),
            _ => Err(self.protocol_err("kick", "mismatched reply".to_owned())),
        }
    }

    /// `kick-job`: moves one buried or delayed job to ready.
    pub fn kick_job(&mut self, id: u64) -> Result<()> {
        self.one(Kind::KickJob, &format!("kick-job {id}"), None).map(drop)
    }

    /// `stats`: the server's counters.
    pub fn stats(&mut self) -> Result<StatsMap> {
        let r = self.simple("stats")?;
        self.ok_body("stats", r).map(|s| StatsMap::parse(&s))
    }

    /// `stats-tube`: one tube's counters; [`ClientError::NotFound`] if the
    /// tube does not exist.
    pub fn stats_tube(&mut self, tube: &str) -> Result<StatsMap> {
        check_tube(tube)?;
        self.stats_named(&format!("stats-tube {tube}"), || format!("tube {tube:?} does not exist"))
    }

    /// `stats-job`: one job's counters; [`ClientError::NotFound`] if the job
    /// does not exist.
    pub fn stats_job(&mut self, id: u64) -> Result<StatsMap> {
        self.stats_named(&format!("stats-job {id}"), || format!("job {id} does not exist"))
    }

    fn stats_named(&mut self, line: &str, missing: impl FnOnce() -> String) -> Result<StatsMap> {
        let r = self.simple(line)?;
        if r.word() == "NOT_FOUND" {
            return Err(ClientError::NotFound(missing()));
        }
        self.ok_body(line, r).map(|s| StatsMap::parse(&s))
    }

    /// `list-tubes`: every existing tube.
    pub fn list_tubes(&mut self) -> Result<Vec<String>> {
        let r = self.simple("list-tubes")?;
        self.ok_body("list-tubes", r).map(|s| parse_list(&s))
    }

    /// `pause-tube`: no job of `tube` is reserved for `delay`.
    pub fn pause_tube(&mut self, tube: &str, delay: Duration) -> Result<()> {
        check_tube(tube)?;
        let line = format!("pause-tube {tube} {}", secs("delay", delay)?);
        let r = self.simple(&line)?;
        match r.word() {
            "PAUSED" => Ok(()),
            "NOT_FOUND" => Err(ClientError::NotFound(format!("tube {tube:?} does not exist"))),
            _ => Err(self.unexpected(&line, &r, false)),
        }
    }

    /// `quit`: closes the connection.
    pub fn quit(mut self) -> Result<()> {
        self.check()?;
        self.write_raw(b"quit\r\n")
    }

    // ----- pipelining -----

    /// Sends the pipeline's commands and returns one result per command,
    /// in order. `Err` only when nothing was sent (an invalid argument, or
    /// the connection was already broken). Should the connection fail
    /// midway, the command whose reply was lost gets the error, the rest
    /// [`ClientError::Broken`]; commands after the last reply read may or
    /// may not have been carried out.
    pub fn execute(&mut self, pipeline: &Pipeline) -> Result<Vec<Result<Reply>>> {
        if let Some(reason) = &pipeline.invalid {
            return Err(ClientError::InvalidArgument(reason.clone()));
        }
        self.check()?;
        let slots = &pipeline.slots;
        let mut results = Vec::with_capacity(slots.len());
        let mut from = 0usize;
        for window in slots.chunks(PIPELINE_WINDOW) {
            let to = window.last().map_or(from, |s| s.end);
            let mut skip = 0;
            if self.broken.is_none() {
                if let Err(e) = self.write_raw(&pipeline.buf[from..to]) {
                    results.push(Err(e));
                    skip = 1;
                }
            }
            from = to;
            for slot in &window[skip..] {
                if let Some(reason) = &self.broken {
                    let addr = self.addr.clone();
                    results.push(Err(ClientError::Broken { addr, reason: reason.clone() }));
                    continue;
                }
                let line = pipeline.line(slot);
                let result =
                    self.read_response(&line).and_then(|r| self.interpret(slot.kind, &line, r));
                results.push(result);
            }
        }
        Ok(results)
    }

    /// Puts every body into the used tube in one pipelined write; one
    /// result per body, in order. See [`Client::execute`] for errors.
    pub fn put_many<B: AsRef<[u8]>>(
        &mut self,
        pri: u32,
        delay: Duration,
        ttr: Duration,
        bodies: &[B],
    ) -> Result<Vec<Result<u64>>> {
        let mut p = Pipeline::new();
        for body in bodies {
            p.put(pri, delay, ttr, body.as_ref());
        }
        Ok(self.execute(&p)?.into_iter().map(|r| r.map(|reply| reply_id(&reply))).collect())
    }

    /// Deletes every job in one pipelined write; one result per id.
    pub fn delete_many(&mut self, ids: &[u64]) -> Result<Vec<Result<()>>> {
        let mut p = Pipeline::new();
        for &id in ids {
            p.delete(id);
        }
        Ok(self.execute(&p)?.into_iter().map(|r| r.map(drop)).collect())
    }

    // ----- extensions -----

    /// Whether the server knows spindled's extension commands. Asked once
    /// per connection with `metrics`, which has no body and which plain
    /// beanstalkd answers with `UNKNOWN_COMMAND`.
    pub fn supports_extensions(&mut self) -> Result<bool> {
        if let Some(known) = self.extensions {
            return Ok(known);
        }
        let r = self.simple("metrics")?;
        let known = match r.word() {
            "OK" => true,
            "UNKNOWN_COMMAND" => false,
            _ => return Err(self.unexpected("metrics", &r, false)),
        };
        self.extensions = Some(known);
        Ok(known)
    }

    pub(crate) fn require_extensions(&mut self, command: &'static str) -> Result<()> {
        if self.supports_extensions()? {
            Ok(())
        } else {
            Err(ClientError::Unsupported { command })
        }
    }

    /// `put-batch` (extension): puts all bodies into the used tube as one
    /// all-or-nothing command; returns the new ids, which are consecutive.
    pub fn put_batch<B: AsRef<[u8]>>(
        &mut self,
        pri: u32,
        delay: Duration,
        ttr: Duration,
        bodies: &[B],
    ) -> Result<Range<u64>> {
        if bodies.is_empty() {
            return Ok(0..0);
        }
        if bodies.len() > MAX_PUT_BATCH {
            return Err(ClientError::InvalidArgument(format!(
                "put-batch takes at most {MAX_PUT_BATCH} jobs, got {}",
                bodies.len()
            )));
        }
        let bytes: usize = bodies.iter().map(|b| b.as_ref().len()).sum();
        if bytes > MAX_PUT_BATCH_BYTES {
            return Err(ClientError::InvalidArgument(format!(
                "put-batch carries at most {MAX_PUT_BATCH_BYTES} bytes, got {bytes}; split it"
            )));
        }
        let line = format!(
            "put-batch {pri} {} {} {}",
            secs("delay", delay)?,
            secs("ttr", ttr)?,
            bodies.len()
        );
        self.require_extensions("put-batch")?;
        let r = self.call(&line, |out| {
            for body in bodies {
                let body = body.as_ref();
                let _ = write!(out, "{}\r\n", body.len());
                out.extend_from_slice(body);
                out.extend_from_slice(b"\r\n");
            }
        })?;
        if r.word() != "INSERTED-BATCH" {
            return Err(self.unexpected(&line, &r, true));
        }
        let first: u64 = self.num_arg(&line, &r, 0)?;
        let count: u64 = self.num_arg(&line, &r, 1)?;
        if count != bodies.len() as u64 {
            return Err(
                self.protocol_err(&line, format!("{count} jobs inserted, not {}", bodies.len()))
            );
        }
        Ok(first..first + count)
    }

    /// `reserve-batch` (extension): up to `max` jobs at once, waiting up to
    /// `timeout` for the first; empty when none came.
    pub fn reserve_batch(&mut self, max: u32, timeout: Duration) -> Result<Vec<Job>> {
        if !(1..=MAX_RESERVE_BATCH).contains(&max) {
            return Err(ClientError::InvalidArgument(format!(
                "reserve-batch takes 1 to {MAX_RESERVE_BATCH} jobs, got {max}"
            )));
        }
        let line = format!("reserve-batch {max} {}", secs("timeout", timeout)?);
        let r = self.simple(&line)?;
        match r.word() {
            "RESERVED-BATCH" => Ok(r.jobs),
            "TIMED_OUT" => Ok(Vec::new()),
            _ => Err(self.unexpected_ext("reserve-batch", &line, &r)),
        }
    }

    /// `put-unique` (extension): a put that does nothing when a live job of
    /// the used tube already holds `key` (1–200 bytes, no spaces or control
    /// characters).
    pub fn put_unique(
        &mut self,
        key: &str,
        pri: u32,
        delay: Duration,
        ttr: Duration,
        body: &[u8],
    ) -> Result<PutUnique> {
        if key.is_empty()
            || key.len() > MAX_UNIQUE_KEY
            || key.bytes().any(|b| b == b' ' || b.is_ascii_control())
        {
            return Err(ClientError::InvalidArgument(format!(
                "unique key {key:?} must be 1 to {MAX_UNIQUE_KEY} bytes without spaces or \
                 control characters"
            )));
        }
        let line = format!(
            "put-unique {key} {pri} {} {} {}",
            secs("delay", delay)?,
            secs("ttr", ttr)?,
            body.len()
        );
        self.require_extensions("put-unique")?;
        let r = self.call(&line, |out| {
            out.extend_from_slice(body);
            out.extend_from_slice(b"\r\n");
        })?;
        match r.word() {
            "INSERTED" => Ok(PutUnique::Inserted(self.num_arg(&line, &r, 0)?)),
            "DUPLICATE" => Ok(PutUnique::Duplicate(self.num_arg(&line, &r, 0)?)),
            "BURIED" => Err(ClientError::Buried { id: self.num_arg(&line, &r, 0)? }),
            _ => Err(self.unexpected(&line, &r, true)),
        }
    }

    /// `fail` (extension): reports that running a job this connection holds
    /// failed with `error`. The server retries it after a backoff or, once
    /// its attempts are used up, buries it with the error kept.
    pub fn fail(&mut self, id: u64, error: &[u8]) -> Result<FailOutcome> {
        let line = format!("fail {id} {}", error.len());
        self.fail_command("fail", &line, id, error)
    }

    /// `fail` or `fail-lease`: sends `line` and the error text, reads the
    /// outcome.
    fn fail_command(
        &mut self,
        name: &'static str,
        line: &str,
        id: u64,
        error: &[u8],
    ) -> Result<FailOutcome> {
        self.require_extensions(name)?;
        let r = self.call(line, |out| {
            out.extend_from_slice(error);
            out.extend_from_slice(b"\r\n");
        })?;
        match r.word() {
            "FAILED" => {
                let attempts = self.num_arg(line, &r, 0)?;
                let ms: u64 = self.num_arg(line, &r, 1)?;
                Ok(FailOutcome::Retrying { attempts, delay: Duration::from_millis(ms) })
            }
            "FAILED-BURIED" => Ok(FailOutcome::Buried { attempts: self.num_arg(line, &r, 0)? }),
            "STALE_LEASE" => Err(ClientError::StaleLease { id }),
            "NOT_FOUND" if name == "fail" => Err(ClientError::NotFound(format!(
                "job {id} does not exist or is not reserved by this connection"
            ))),
            "NOT_FOUND" => Err(ClientError::NotFound(format!("job {id} does not exist"))),
            _ => Err(self.unexpected(line, &r, true)),
        }
    }

    /// `lease` (extension): the fencing token of a job this connection
    /// reserved. Any connection may then complete, release, bury, touch or
    /// fail the job with it ([`delete_lease`](Client::delete_lease) and the
    /// others) for as long as this reservation lasts; once it ends they get
    /// [`ClientError::StaleLease`]. The lease still ends when this
    /// connection closes.
    pub fn lease(&mut self, id: u64) -> Result<u64> {
        let line = format!("lease {id}");
        let r = self.simple(&line)?;
        match r.word() {
            "LEASED" => self.num_arg(&line, &r, 1),
            "NOT_FOUND" => Err(ClientError::NotFound(format!(
                "job {id} does not exist or is not reserved by this connection"
            ))),
            _ => Err(self.unexpected_ext("lease", &line, &r)),
        }
    }

    /// `delete-lease` (extension): completes job `id` if `token` is its
    /// current lease.
    pub fn delete_lease(&mut self, id: u64, token: u64) -> Result<()> {
        self.fenced("delete-lease", &format!("delete-lease {id} {token}"), id, "DELETED")
    }

    /// `touch-lease` (extension): restarts job `id`'s time-to-run if
    /// `token` is its current lease.
    pub fn touch_lease(&mut self, id: u64, token: u64) -> Result<()> {
        self.fenced("touch-lease", &format!("touch-lease {id} {token}"), id, "TOUCHED")
    }

    /// `release-lease` (extension): `release` under the lease `token`.
    pub fn release_lease(&mut self, id: u64, token: u64, pri: u32, delay: Duration) -> Result<()> {
        let line = format!("release-lease {id} {token} {pri} {}", secs("delay", delay)?);
        self.fenced("release-lease", &line, id, "RELEASED")
    }

    /// `fail-lease` (extension): [`fail`](Client::fail) under the lease
    /// `token`.
    pub fn fail_lease(&mut self, id: u64, token: u64, error: &[u8]) -> Result<FailOutcome> {
        let line = format!("fail-lease {id} {token} {}", error.len());
        self.fail_command("fail-lease", &line, id, error)
    }

    fn fenced(&mut self, name: &'static str, line: &str, id: u64, ok: &str) -> Result<()> {
        let r = self.simple(line)?;
        match r.word() {
            w if w == ok => Ok(()),
            "STALE_LEASE" => Err(ClientError::StaleLease { id }),
            "NOT_FOUND" => Err(ClientError::NotFound(format!("job {id} does not exist"))),
            _ => Err(self.unexpected_ext(name, line, &r)),
        }
    }

    /// `tube-config` (extension): a tube's retry policy: attempts before a
    /// failing job is buried, and the exponential backoff's first and
    /// largest delay.
    pub fn tube_config(
        &mut self,
        tube: &str,
        max_attempts: u32,
        backoff: Duration,
        backoff_max: Duration,
    ) -> Result<()> {
        check_tube(tube)?;
        let line = format!(
            "tube-config {tube} {max_attempts} {} {}",
            millis(backoff),
            millis(backoff_max)
        );
        let r = self.simple(&line)?;
        match r.word() {
            "CONFIGURED" => Ok(()),
            _ => Err(self.unexpected_ext("tube-config", &line, &r)),
        }
    }

    /// `clear-tube` (extension): deletes the tube's jobs in the given
    /// states (reserved jobs are never cleared); returns how many.
    pub fn clear_tube(&mut self, tube: &str, states: &[JobState]) -> Result<u64> {
        check_tube(tube)?;
        if states.is_empty() || states.contains(&JobState::Reserved) {
            return Err(ClientError::InvalidArgument(
                "clear-tube takes one or more of ready, delayed and buried (reserved jobs are \
                 never cleared)"
                    .to_owned(),
            ));
        }
        let list: Vec<&str> = states.iter().map(|s| s.as_str()).collect();
        let line = format!("clear-tube {tube} {}", list.join(","));
        let r = self.simple(&line)?;
        match r.word() {
            "CLEARED" => self.num_arg(&line, &r, 0),
            _ => Err(self.unexpected_ext("clear-tube", &line, &r)),
        }
    }

    /// `stats-tube-ext` (extension): `stats-tube` plus retry policy, wait
    /// percentiles and worker counts.
    pub fn stats_tube_ext(&mut self, tube: &str) -> Result<StatsMap> {
        check_tube(tube)?;
        let line = format!("stats-tube-ext {tube}");
        let r = self.simple(&line)?;
        match r.word() {
            "OK" => self.ok_body(&line, r).map(|s| StatsMap::parse(&s)),
            "NOT_FOUND" => Err(ClientError::NotFound(format!("tube {tube:?} does not exist"))),
            _ => Err(self.unexpected_ext("stats-tube-ext", &line, &r)),
        }
    }

    /// `stats-job-ext` (extension): `stats-job` plus `attempts` and
    /// `last-error`.
    pub fn stats_job_ext(&mut self, id: u64) -> Result<StatsMap> {
        let line = format!("stats-job-ext {id}");
        let r = self.simple(&line)?;
        match r.word() {
            "OK" => self.ok_body(&line, r).map(|s| StatsMap::parse(&s)),
            "NOT_FOUND" => Err(ClientError::NotFound(format!("job {id} does not exist"))),
            _ => Err(self.unexpected_ext("stats-job-ext", &line, &r)),
        }
    }

    /// `metrics` (extension): Prometheus text exposition.
    pub fn metrics(&mut self) -> Result<String> {
        let r = self.simple("metrics")?;
        match r.word() {
            "OK" => self.ok_body("metrics", r),
            _ => Err(self.unexpected_ext("metrics", "metrics", &r)),
        }
    }
}

fn reply_id(reply: &Reply) -> u64 {
    match reply {
        Reply::Inserted(id) => *id,
        _ => 0,
    }
}

/// Whole seconds, rounded up, as the protocol's 32-bit count.
pub(crate) fn secs(what: &str, d: Duration) -> Result<u32> {
    let s = d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0));
    u32::try_from(s).map_err(|_| {
        ClientError::InvalidArgument(format!(
            "{what} of {s} s exceeds the protocol's {} s",
            u32::MAX
        ))
    })
}

/// Whole milliseconds, rounded up.
pub(crate) fn millis(d: Duration) -> u128 {
    d.as_millis() + u128::from(d.subsec_nanos() % 1_000_000 > 0)
}

/// Checks a tube name against the protocol's rules, so the server never
/// answers `BAD_FORMAT` to it.
pub fn check_tube(name: &str) -> Result<()> {
    let bad = |reason: &str| {
        Err(ClientError::InvalidArgument(format!("invalid tube name {name:?}: {reason}")))
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > MAX_TUBE_NAME {
        return bad("it is longer than 200 bytes");
    }
    if name.starts_with('-') {
        return bad("it starts with '-'");
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-+/;.$_()".contains(&b)) {
        return bad("only letters, digits and - + / ; . $ _ ( ) are allowed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_yaml_is_parsed_in_order_without_quotes() {
        let s = StatsMap::parse("---\nname: foo\nversion: \"1.12\"\nos: #1 SMP x\ncount: 3\n");
        let keys: Vec<&str> = s.iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["name", "version", "os", "count"]);
        assert_eq!(s.get("version"), Some("1.12"));
        assert_eq!(s.get("os"), Some("#1 SMP x"));
        assert_eq!(s.get_u64("count"), Some(3));
        assert_eq!(parse_list("---\n- default\n- a(b)\n"), ["default", "a(b)"]);
    }

    #[test]
    fn addresses_and_durations() {
        assert!(matches!(parse_addr("unix:x.sock"), Addr::Unix(p) if p == Path::new("x.sock")));
        assert!(matches!(parse_addr("/run/s.sock"), Addr::Unix(_)));
        assert!(matches!(parse_addr("x.sock"), Addr::Unix(_)));
        assert!(matches!(parse_addr("127.0.0.1:11300"), Addr::Tcp(a) if a == "127.0.0.1:11300"));
        assert!(matches!(parse_addr("tcp:localhost"), Addr::Tcp(a) if a == "localhost:11300"));
        assert_eq!(secs("d", Duration::from_millis(1500)).ok(), Some(2));
        assert_eq!(secs("d", Duration::ZERO).ok(), Some(0));
        assert!(secs("d", Duration::from_secs(u64::from(u32::MAX) + 1)).is_err());
        assert_eq!(millis(Duration::from_micros(1500)), 2);
        assert!(check_tube("a-b+c/d;e.f$g_h(i)").is_ok());
        assert!(check_tube("-x").is_err());
        assert!(check_tube("a b").is_err());
        assert!(check_tube(&"x".repeat(201)).is_err());
    }
}
