//! Harness shared by the daemon integration tests (`mod common;`): start
//! `beanstalkd` or `spindled` on a private socket, talk the beanstalkd
//! protocol to it byte for byte, and compare two servers' replies.
//!
//! * [`Server`] starts a binary on a Unix socket in its own temporary
//!   directory (`-l unix:PATH`), or on a free TCP port of 127.0.0.1, waits
//!   until it accepts connections (polling with a deadline), and kills it on
//!   drop.
//! * [`Conn`] is one raw client connection that knows the shapes of
//!   beanstalkd's replies (a line, or `OK <n>` / `RESERVED <id> <n>` /
//!   `FOUND <id> <n>` followed by `n` bytes and CRLF), so it reads exactly
//!   one reply; every read has a timeout, so a server that answers wrongly
//!   or not at all fails the test instead of hanging it.
//! * [`diff`] runs one script against beanstalkd 1.12 and then against the
//!   server under test and fails at the first reply that differs after
//!   [`normalise`], with the whole exchange so far in the message.
//!
//! The server under test is `spindled`; with `SPINDLE_DIFF_SELF=1` it is
//! beanstalkd itself, which checks the harness and the scripts (every
//! script must then pass: a failure in that mode is a harness bug or a
//! nondeterministic script). With `SPINDLE_DIFF_SHOW=1` (and
//! `--nocapture`) every script prints beanstalkd's normalised replies.
//! With `SPINDLE_TEST_IO_LOOPS=N` every spindled runs with `--io-loops N`
//! (connections spread over event loops; `.ci/run` uses 3).

#![allow(dead_code)]

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where Debian's package installs beanstalkd 1.12, the reference server.
pub const BEANSTALKD: &str = "/usr/bin/beanstalkd";

/// How long a reply may take. Generous for a debug build on a busy 2-core
/// machine; it bounds a failure, it is never waited out by a passing test
/// (except where a test waits for a reply that must never come, which no
/// test here does).
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a server may take to accept its first connection.
const START_DEADLINE: Duration = Duration::from_secs(30);

/// Which binary a [`Server`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Debian's beanstalkd 1.12, the reference.
    Beanstalkd,
    /// This repository's daemon.
    Spindled,
}

impl Kind {
    /// The server the tests judge: spindled, or beanstalkd itself when
    /// `SPINDLE_DIFF_SELF=1` (a self-check of the harness and scripts).
    pub fn under_test() -> Kind {
        if self_mode() {
            Kind::Beanstalkd
        } else {
            Kind::Spindled
        }
    }

    /// A short name for messages.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Beanstalkd => "beanstalkd",
            Kind::Spindled => "spindled",
        }
    }

    /// The executable; fails the test with an install hint if it is missing.
    pub fn binary(self) -> PathBuf {
        match self {
            Kind::Beanstalkd => {
                let p = PathBuf::from(BEANSTALKD);
                assert!(
                    p.exists(),
                    "beanstalkd 1.12 (the reference server) is not installed at {BEANSTALKD}: \
                     run `apt-get install -y beanstalkd` (Debian's package; CI must install it too)"
                );
                p
            }
            Kind::Spindled => match option_env!("CARGO_BIN_EXE_spindled") {
                Some(p) => PathBuf::from(p),
                None => panic!(
                    "cargo built no `spindled` binary for these tests (src/bin/spindled.rs is \
                     missing); set SPINDLE_DIFF_SELF=1 to run the scripts against beanstalkd only"
                ),
            },
        }
    }
}

/// True when `SPINDLE_DIFF_SELF=1`: the server under test is beanstalkd.
pub fn self_mode() -> bool {
    std::env::var_os("SPINDLE_DIFF_SELF").is_some_and(|v| v == "1")
}

/// Where a server listens.
#[derive(Clone, Debug)]
pub enum Addr {
    /// A Unix socket path.
    Unix(PathBuf),
    /// A TCP port on 127.0.0.1.
    Tcp(u16),
}

/// A running server process, killed (SIGKILL) and reaped on drop.
pub struct Server {
    kind: Kind,
    child: Option<Child>,
    addr: Addr,
    args: Vec<String>,
    // Holds the socket and the process's stdout/stderr files.
    dir: tempfile::TempDir,
}

impl Server {
    /// beanstalkd on a private Unix socket with extra `args` (e.g. `-z 10`).
    pub fn beanstalkd(args: &[&str]) -> Server {
        Server::start(Kind::Beanstalkd, args)
    }

    /// spindled on a private Unix socket with extra `args`.
    pub fn spindled(args: &[&str]) -> Server {
        Server::start(Kind::Spindled, args)
    }

    /// The server under test (see [`Kind::under_test`]).
    pub fn under_test(args: &[&str]) -> Server {
        Server::start(Kind::under_test(), args)
    }

    /// `kind` on a Unix socket in a fresh temporary directory.
    pub fn start(kind: Kind, args: &[&str]) -> Server {
        let dir = tempdir();
        let sock = dir.path().join("server.sock");
        let mut full: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        full.push("-l".into());
        full.push(format!("unix:{}", sock.display()));
        Server::spawn(kind, full, Addr::Unix(sock), dir)
    }

    /// `kind` on TCP 127.0.0.1 and a port that was free a moment ago
    /// (`-l 127.0.0.1 -p PORT`). Another process could take the port
    /// between our probe and the server's bind; then the start is retried
    /// with a new port.
    pub fn start_tcp(kind: Kind, args: &[&str]) -> Server {
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            let mut full: Vec<String> = args.iter().map(|s| s.to_string()).collect();
            full.extend(["-l".into(), "127.0.0.1".into(), "-p".into(), port.to_string()]);
            match Server::try_spawn(kind, full, Addr::Tcp(port), tempdir()) {
                Ok(s) => return s,
                Err(e) => last = e,
            }
        }
        panic!("{} did not start on TCP after 5 tries: {last}", kind.name());
    }

    fn spawn(kind: Kind, args: Vec<String>, addr: Addr, dir: tempfile::TempDir) -> Server {
        match Server::try_spawn(kind, args, addr, dir) {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        }
    }

    fn try_spawn(
        kind: Kind,
        args: Vec<String>,
        addr: Addr,
        dir: tempfile::TempDir,
    ) -> Result<Server, String> {
        let bin = kind.binary();
        let mut args = args;
        if let (Kind::Spindled, Ok(n)) = (kind, std::env::var("SPINDLE_TEST_IO_LOOPS")) {
            // Run the same tests with connections spread over I/O loops.
            if !args.iter().any(|a| a == "--io-loops") {
                args.extend(["--io-loops".into(), n]);
            }
        }
        let out = std::fs::File::create(dir.path().join("stdout")).expect("create stdout file");
        let err = std::fs::File::create(dir.path().join("stderr")).expect("create stderr file");
        let child = Command::new(&bin)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
        let mut server = Server { kind, child: Some(child), addr, args, dir };
        server.wait_ready()?;
        Ok(server)
    }

    /// Polls until the server accepts a connection, then makes that probe
    /// connection leave deterministically: it sends `quit` and waits for the
    /// server to close it, so the server's connection counters
    /// (`total-connections` 1, `current-connections` 0) are the same for
    /// every server when a test starts.
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Some(status) = self.child_mut().try_wait().expect("try_wait") {
                self.child = None;
                return Err(format!(
                    "{} {:?} exited before accepting connections ({status}){}",
                    self.kind.name(),
                    self.args,
                    self.log_tail()
                ));
            }
            if let Ok(stream) = self.raw_connect() {
                let mut probe = Conn::new(stream, "probe".into());
                probe.send(b"quit\r\n");
                let rest = probe.read_to_eof();
                assert!(
                    rest.is_empty(),
                    "{}: `quit` on a fresh connection got a reply {}",
                    self.kind.name(),
                    esc(&rest)
                );
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{} {:?} accepted no connection within {START_DEADLINE:?}{}",
                    self.kind.name(),
                    self.args,
                    self.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn child_mut(&mut self) -> &mut Child {
        self.child.as_mut().expect("server process already reaped")
    }

    fn raw_connect(&self) -> io::Result<Stream> {
        Ok(match &self.addr {
            Addr::Unix(p) => Stream::Unix(UnixStream::connect(p)?),
            Addr::Tcp(port) => {
                let s = TcpStream::connect(("127.0.0.1", *port))?;
                s.set_nodelay(true)?;
                Stream::Tcp(s)
            }
        })
    }

    /// A new client connection (with the reply timeout set).
    pub fn connect(&self) -> Conn {
        let s = self
            .raw_connect()
            .unwrap_or_else(|e| panic!("connect to {}: {e}{}", self.kind.name(), self.log_tail()));
        Conn::new(s, self.kind.name().into())
    }

    /// A plain blocking Unix stream to the server (no timeouts set), for
    /// tests that need to write and read from different threads.
    pub fn unix_stream(&self) -> UnixStream {
        match &self.addr {
            Addr::Unix(p) => UnixStream::connect(p).expect("connect"),
            Addr::Tcp(_) => panic!("not a Unix-socket server"),
        }
    }

    /// Which binary this is.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Where it listens.
    pub fn addr(&self) -> &Addr {
        &self.addr
    }

    /// The TCP port (panics for a Unix-socket server).
    pub fn port(&self) -> u16 {
        match self.addr {
            Addr::Tcp(p) => p,
            Addr::Unix(_) => panic!("not a TCP server"),
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server process already reaped").id()
    }

    /// Fails the test if the process has exited.
    pub fn assert_alive(&mut self) {
        if let Some(status) = self.child_mut().try_wait().expect("try_wait") {
            self.child = None;
            panic!("{} exited unexpectedly ({status}){}", self.kind.name(), self.log_tail());
        }
    }

    /// Waits (polling, with [`START_DEADLINE`] as the limit) for the
    /// process to exit, e.g. after SIGTERM, and returns its status.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Some(st) = self.child_mut().try_wait().expect("try_wait") {
                self.child = None;
                return st;
            }
            assert!(Instant::now() < deadline, "{} did not exit", self.kind.name());
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// SIGKILL and reap; returns once the process is gone.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends a signal by name (`USR1`, `TERM`, ...) with kill(1).
    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .args(["-s", sig, &self.pid().to_string()])
            .status()
            .expect("run kill(1)");
        assert!(st.success(), "kill -s {sig} {} failed", self.pid());
    }

    /// Resident and peak resident memory in KiB (`VmRSS`, `VmHWM` of
    /// /proc/PID/status).
    pub fn mem_kib(&self) -> (u64, u64) {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc/PID/status");
        let field = |name: &str| -> u64 {
            s.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no {name} in /proc/PID/status"))
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// User plus system CPU time the process has used, in clock ticks
    /// (fields 14 and 15 of /proc/PID/stat).
    pub fn cpu_ticks(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))
            .expect("read /proc/PID/stat");
        let after = &s[s.rfind(')').expect("stat has (comm)") + 2..];
        let f: Vec<&str> = after.split_whitespace().collect();
        // `after` starts at field 3 (state): utime is field 14, stime 15.
        f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime")
    }

    /// The last lines the process wrote to stdout/stderr, for messages.
    pub fn log_tail(&self) -> String {
        let mut out = String::new();
        for name in ["stdout", "stderr"] {
            let text = std::fs::read(self.dir.path().join(name)).unwrap_or_default();
            let text = String::from_utf8_lossy(&text);
            let lines: Vec<&str> = text.lines().collect();
            if !lines.is_empty() {
                let from = lines.len().saturating_sub(20);
                out.push_str(&format!("\n--- {} {name} (last lines) ---\n", self.kind.name()));
                out.push_str(&lines[from..].join("\n"));
            }
        }
        out
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A fresh temporary directory.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("spindle-daemon-test").tempdir().expect("tempdir")
}

/// A TCP port on 127.0.0.1 that was free when this returned.
pub fn free_port() -> u16 {
    let l = TcpListener::bind(("127.0.0.1", 0)).expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

/// A Unix or TCP stream.
pub enum Stream {
    /// Unix socket.
    Unix(UnixStream),
    /// TCP socket.
    Tcp(TcpStream),
}

impl Stream {
    fn set_read_timeout(&self, d: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_read_timeout(d),
            Stream::Tcp(s) => s.set_read_timeout(d),
        }
    }
    fn set_nonblocking(&self, b: bool) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_nonblocking(b),
            Stream::Tcp(s) => s.set_nonblocking(b),
        }
    }
    fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.shutdown(how),
            Stream::Tcp(s) => s.shutdown(how),
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

/// One client connection speaking raw protocol bytes.
pub struct Conn {
    stream: Stream,
    /// Bytes read but not yet returned as a reply.
    pending: Vec<u8>,
    label: String,
    /// The last bytes sent, for messages.
    last_sent: Vec<u8>,
}

/// Longest reply line accepted before the reader gives up (beanstalkd's
/// longest line is `USING <200-byte name>\r\n`).
const MAX_REPLY_LINE: usize = 4096;

impl Conn {
    fn new(stream: Stream, label: String) -> Conn {
        stream.set_read_timeout(Some(REPLY_TIMEOUT)).expect("set_read_timeout");
        Conn { stream, pending: Vec::new(), label, last_sent: Vec::new() }
    }

    /// Wraps a Unix stream (e.g. the reading half of a stream whose clone
    /// another thread writes to).
    pub fn from_unix(stream: UnixStream, label: &str) -> Conn {
        Conn::new(Stream::Unix(stream), label.into())
    }

    /// Writes all of `bytes`; panics on error.
    pub fn send(&mut self, bytes: &[u8]) {
        if let Err(e) = self.try_send(bytes) {
            panic!("{}: write of {} failed: {e}", self.label, esc(bytes));
        }
    }

    /// Writes all of `bytes`.
    pub fn try_send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.last_sent = bytes[..bytes.len().min(300)].to_vec();
        self.stream.write_all(bytes)
    }

    /// Writes as much of `bytes` as the socket takes without blocking;
    /// returns how many bytes went out (the socket stays nonblocking).
    pub fn send_nonblocking(&mut self, bytes: &[u8]) -> usize {
        self.stream.set_nonblocking(true).expect("set_nonblocking");
        let mut sent = 0;
        while sent < bytes.len() {
            match self.stream.write(&bytes[sent..]) {
                Ok(0) => break,
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => panic!("{}: nonblocking write failed: {e}", self.label),
            }
        }
        sent
    }

    /// Reads exactly one reply; panics (with what was read so far) if it
    /// does not arrive within [`REPLY_TIMEOUT`].
    pub fn reply(&mut self) -> Vec<u8> {
        match self.try_reply() {
            Ok(r) => r,
            Err(e) => panic!(
                "{}: no complete reply (last sent {}): {e}; unparsed bytes {}",
                self.label,
                esc(&self.last_sent),
                esc(&self.pending)
            ),
        }
    }

    /// Reads exactly one reply: a line, plus `n` bytes and CRLF when the
    /// line is `OK <n>`, `RESERVED <id> <n>` or `FOUND <id> <n>`.
    pub fn try_reply(&mut self) -> io::Result<Vec<u8>> {
        let line_end = loop {
            if let Some(i) = find_crlf(&self.pending) {
                break i + 2;
            }
            if self.pending.len() > MAX_REPLY_LINE {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "reply line too long"));
            }
            self.fill()?;
        };
        let total = match body_len(&self.pending[..line_end]) {
            Some(n) => line_end + n + 2,
            None => line_end,
        };
        while self.pending.len() < total {
            self.fill()?;
        }
        if total > line_end && &self.pending[total - 2..total] != b"\r\n" {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "data block not followed by CRLF (wrong <bytes> count?)",
            ));
        }
        Ok(self.pending.drain(..total).collect())
    }

    fn fill(&mut self) -> io::Result<()> {
        let mut buf = [0u8; 65536];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "server closed the connection",
                    ))
                }
                Ok(n) => {
                    self.pending.extend_from_slice(&buf[..n]);
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::TimedOut =>
                {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("nothing more within {REPLY_TIMEOUT:?}"),
                    ))
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends `bytes` and reads one reply.
    pub fn cmd(&mut self, bytes: &[u8]) -> Vec<u8> {
        self.send(bytes);
        self.reply()
    }

    /// [`Conn::cmd`] for text, returning text (lossy).
    pub fn cmd_str(&mut self, s: &str) -> String {
        String::from_utf8_lossy(&self.cmd(s.as_bytes())).into_owned()
    }

    /// Half-closes: no more bytes from us (the server reads EOF).
    pub fn shutdown_write(&self) {
        self.stream.shutdown(Shutdown::Write).expect("shutdown(Write)");
    }

    /// Reads until the server closes the connection and returns every byte
    /// not yet returned; panics if it stays open past [`REPLY_TIMEOUT`].
    pub fn read_to_eof(&mut self) -> Vec<u8> {
        loop {
            match self.fill() {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
                // A reset after the server closed with our bytes unread.
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break,
                Err(e) => panic!(
                    "{}: connection not closed by the server (last sent {}): {e}; got {}",
                    self.label,
                    esc(&self.last_sent),
                    esc(&self.pending)
                ),
            }
        }
        std::mem::take(&mut self.pending)
    }

    /// Changes the read timeout.
    pub fn set_read_timeout(&self, d: Duration) {
        self.stream.set_read_timeout(Some(d)).expect("set_read_timeout");
    }
}

fn find_crlf(b: &[u8]) -> Option<usize> {
    b.windows(2).position(|w| w == b"\r\n")
}

/// The length of the data block that follows reply line `line`, if any.
pub fn body_len(line: &[u8]) -> Option<usize> {
    let line = line.strip_suffix(b"\r\n").unwrap_or(line);
    let text = std::str::from_utf8(line).ok()?;
    let t: Vec<&str> = text.split(' ').collect();
    let n = match (t.as_slice(), t.len()) {
        (["OK", n], 2) => n,
        (["RESERVED", _, n], 3) | (["FOUND", _, n], 3) => n,
        _ => return None,
    };
    n.parse::<usize>().ok().filter(|&n| n < 1 << 30)
}

/// Splits a byte stream of replies into replies; a tail that is not a
/// complete reply comes back as the last element.
pub fn split_replies(mut b: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let Some(i) = find_crlf(b) else {
            out.push(b.to_vec());
            break;
        };
        let mut end = i + 2;
        if let Some(n) = body_len(&b[..end]) {
            end = (end + n + 2).min(b.len());
        }
        out.push(b[..end].to_vec());
        b = &b[end..];
    }
    out
}

/// Bytes as a readable Rust-like string literal (CR, LF, NUL and other
/// control bytes escaped), cut in the middle when long.
pub fn esc(b: &[u8]) -> String {
    const MAX: usize = 1500;
    let mut s = String::from("\"");
    let body = |s: &mut String, part: &[u8]| {
        for &c in part {
            match c {
                b'\r' => s.push_str("\\r"),
                b'\n' => s.push_str("\\n"),
                b'"' => s.push_str("\\\""),
                b'\\' => s.push_str("\\\\"),
                0x20..=0x7e => s.push(c as char),
                _ => s.push_str(&format!("\\x{c:02x}")),
            }
        }
    };
    if b.len() <= MAX {
        body(&mut s, b);
    } else {
        body(&mut s, &b[..MAX / 2]);
        s.push_str(&format!("\" ...({} bytes)... \"", b.len() - MAX));
        body(&mut s, &b[b.len() - MAX / 2..]);
    }
    s.push('"');
    s
}

// ---------------------------------------------------------------------
// Normalisation
// ---------------------------------------------------------------------

/// Keys whose string values beanstalkd 1.13 prints in double quotes and
/// 1.12 prints bare (beanstalkd PRs #592 and #611, both after the 1.12
/// tag): `hostname`, `os`, `platform` in `stats`, `name` in `stats-tube`,
/// `tube` in `stats-job`. `version` is quoted by both (not listed: 1.12's
/// output already has the quotes). `id`, `state`, `draining` stay bare in
/// 1.13.
pub const QUOTED_IN_1_13: [&str; 5] = ["hostname", "os", "platform", "name", "tube"];

/// Rewrites one reply (or a concatenation of replies) so that two servers
/// that agree on everything that must agree produce the same bytes.
///
/// `from` is the server that produced `reply`. For beanstalkd (1.12) the
/// YAML of `stats`, `stats-tube` and `stats-job` is first requoted the way
/// 1.13 prints it (see [`QUOTED_IN_1_13`]); the issue asks for 1.12's bytes
/// with 1.13's quoting, so spindled's output is expected to already look
/// like that and is not requoted.
///
/// Then, in `stats` only, the values that must differ between two
/// processes are replaced by placeholders, each only when it has the
/// expected shape (so a malformed value still shows up as a difference):
///
/// | key | why it differs | shape required |
/// |---|---|---|
/// | `pid` | another process | decimal |
/// | `version` | another program | `"..."` (quoted, as 1.12 and 1.13 print it) |
/// | `rusage-utime`, `rusage-stime` | CPU used so far | `<s>.<6 digits>` |
/// | `uptime` | the two servers started at different moments | decimal |
/// | `id` | random per process | 16 lowercase hex digits |
/// | `cmd-stats` | only after [`Session::wait_stat`] polled `stats` a varying number of times | decimal |
///
/// spindled's `spindle-version` line (quoted), the last of its `stats`,
/// is dropped: beanstalkd has no such key.
///
/// Nothing else is normalised: hostname, os and platform come from the
/// same uname; `max-job-size` and the `binlog-*` values are the same
/// because both servers get the same flags and no `-b`;
/// `current-connections` and `total-connections` are the same because
/// every script closes connections at synchronisation points (a `quit`
/// whose EOF was read, a half-close whose EOF was read) and the harness's
/// readiness probe quits the same way; time-dependent values (`age`,
/// `time-left`, `pause-time-left`) are compared exactly because every
/// script that shows them runs in well under a second (beanstalkd
/// truncates: a ttr-100 job just reserved shows `time-left: 99`).
///
/// The `OK <n>` header is recomputed after any rewrite.
pub fn normalise(from: Kind, reply: &[u8], polled: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for r in split_replies(reply) {
        out.extend(normalise_one(from, &r, polled));
    }
    out
}

fn normalise_one(from: Kind, reply: &[u8], polled: bool) -> Vec<u8> {
    let Some(line_end) = find_crlf(reply).map(|i| i + 2) else { return reply.to_vec() };
    if !reply.starts_with(b"OK ") || body_len(&reply[..line_end]).is_none() {
        return reply.to_vec();
    }
    let Some(body) = reply.get(line_end..reply.len().saturating_sub(2)) else {
        return reply.to_vec();
    };
    let Ok(text) = std::str::from_utf8(body) else { return reply.to_vec() };
    if !text.starts_with("---\n") || text.lines().nth(1).is_some_and(|l| l.starts_with("- ")) {
        return reply.to_vec(); // not a dictionary (list-tubes) or not YAML
    }
    let is_stats = text.contains("\nuptime: ");
    let mut new = String::new();
    for line in text.split_inclusive('\n') {
        let (content, nl) = match line.strip_suffix('\n') {
            Some(c) => (c, "\n"),
            None => (line, ""),
        };
        let Some((key, value)) = content.split_once(": ") else {
            new.push_str(line);
            continue;
        };
        let mut value = value.to_string();
        if is_stats && from == Kind::Spindled && key == "spindle-version" && value.starts_with('"')
        {
            continue; // spindled's own version: a key beanstalkd has not
        }
        if from == Kind::Beanstalkd && QUOTED_IN_1_13.contains(&key) && !value.starts_with('"') {
            value = format!("\"{value}\"");
        }
        if is_stats {
            value = placeholder(key, &value, polled).unwrap_or(value);
        }
        new.push_str(&format!("{key}: {value}{nl}"));
    }
    let mut out = format!("OK {}\r\n", new.len()).into_bytes();
    out.extend_from_slice(new.as_bytes());
    out.extend_from_slice(b"\r\n");
    out
}

fn placeholder(key: &str, value: &str, polled: bool) -> Option<String> {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let p = match key {
        "pid" if digits(value) => "<pid>",
        "uptime" if digits(value) => "<uptime>",
        "cmd-stats" if polled && digits(value) => "<polled>",
        "version" if value.len() >= 2 && value.starts_with('"') && value.ends_with('"') => {
            "\"<version>\""
        }
        "rusage-utime" | "rusage-stime" => {
            let (s, us) = value.split_once('.')?;
            if digits(s) && us.len() == 6 && digits(us) {
                "<rusage>"
            } else {
                return None;
            }
        }
        "id" if value.len() == 16 && value.bytes().all(|b| b.is_ascii_hexdigit()) => "<id>",
        _ => return None,
    };
    Some(p.to_string())
}

/// The keys of a YAML dictionary reply (`OK <n>` + `---` + `key: value`
/// lines), in order; `None` for any other reply.
pub fn yaml_keys(reply: &[u8]) -> Option<Vec<String>> {
    let text = std::str::from_utf8(reply).ok()?;
    let (head, body) = text.split_once("\r\n")?;
    if !head.starts_with("OK ") || !body.starts_with("---\n") {
        return None;
    }
    let keys: Vec<String> = body
        .lines()
        .skip(1)
        .filter(|l| !l.is_empty() && !l.starts_with("- "))
        .filter_map(|l| l.split_once(": ").map(|(k, _)| k.to_string()))
        .collect();
    if keys.is_empty() {
        None
    } else {
        Some(keys)
    }
}

/// The value of `key` in a YAML dictionary reply, quotes removed.
pub fn yaml_value(reply: &[u8], key: &str) -> Option<String> {
    let text = std::str::from_utf8(reply).ok()?;
    text.lines().find_map(|l| {
        l.strip_prefix(key)
            .and_then(|r| r.strip_prefix(": "))
            .map(|v| v.trim_matches('"').to_string())
    })
}

// ---------------------------------------------------------------------
// Differential sessions
// ---------------------------------------------------------------------

/// One observed reply in a script run.
#[derive(Clone, Debug)]
pub struct Entry {
    /// What was done to get it, e.g. `c1> "stats-job 3\r\n"`.
    pub what: String,
    /// The reply, normalised.
    pub reply: Vec<u8>,
}

/// A script's view of one server: numbered connections and a log of the
/// replies seen. When `reference` is set (the beanstalkd run of the same
/// script), every reply is compared as soon as it arrives.
pub struct Session<'a> {
    server: &'a Server,
    conns: Vec<Option<Conn>>,
    log: Vec<Entry>,
    reference: Option<&'a [Entry]>,
    history: Vec<String>,
    watcher: Option<Conn>,
    polled: bool,
}

impl<'a> Session<'a> {
    /// A session on `server`, checked against `reference` if given.
    pub fn new(server: &'a Server, reference: Option<&'a [Entry]>) -> Session<'a> {
        Session {
            server,
            conns: Vec::new(),
            log: Vec::new(),
            reference,
            history: Vec::new(),
            watcher: None,
            polled: false,
        }
    }

    /// The server.
    pub fn server(&self) -> &Server {
        self.server
    }

    /// Opens a connection; returns its number.
    pub fn open(&mut self) -> usize {
        let label = format!("{} c{}", self.server.kind().name(), self.conns.len());
        let mut c = self.server.connect();
        c.label = label;
        self.conns.push(Some(c));
        self.history.push(format!("c{} opened", self.conns.len() - 1));
        self.conns.len() - 1
    }

    fn conn(&mut self, c: usize) -> &mut Conn {
        self.conns[c].as_mut().expect("connection already closed")
    }

    /// Sends bytes on connection `c` without reading.
    pub fn send(&mut self, c: usize, bytes: &[u8]) {
        self.history.push(format!("c{c}> {}", esc(bytes)));
        self.conn(c).send(bytes);
    }

    /// Reads one reply on `c`, logs and checks it; returns it raw.
    pub fn reply(&mut self, c: usize) -> Vec<u8> {
        let step = self.log.len();
        let got = self.conn(c).try_reply();
        let raw = match got {
            Ok(r) => r,
            Err(e) => self.fail(step, &format!("c{c} reply"), None, &format!("no reply: {e}")),
        };
        self.record(format!("c{c} reply"), &raw);
        raw
    }

    /// Sends `bytes` on `c` and reads one reply.
    pub fn cmd(&mut self, c: usize, bytes: &[u8]) -> Vec<u8> {
        self.send(c, bytes);
        self.reply(c)
    }

    /// [`Session::cmd`] for text.
    pub fn c(&mut self, c: usize, text: &str) -> Vec<u8> {
        self.cmd(c, text.as_bytes())
    }

    /// [`Session::transcript`] for text.
    pub fn t(&mut self, text: &str) -> Vec<u8> {
        self.transcript(text.as_bytes())
    }

    /// Sends `bytes` on a new connection, half-closes it and records
    /// everything the server sends until it closes the connection. The
    /// reads are synchronous with the server's close, so the connection is
    /// gone from the server's counters afterwards.
    pub fn transcript(&mut self, bytes: &[u8]) -> Vec<u8> {
        let c = self.open();
        self.transcript_on(c, bytes, bytes.len().max(1))
    }

    /// Like [`Session::transcript`] but writes `chunk` bytes per write.
    pub fn transcript_split(&mut self, bytes: &[u8], chunk: usize) -> Vec<u8> {
        let c = self.open();
        self.transcript_on(c, bytes, chunk)
    }

    fn transcript_on(&mut self, c: usize, bytes: &[u8], chunk: usize) -> Vec<u8> {
        self.history.push(format!("c{c}> {} (in {chunk}-byte writes) + shutdown", esc(bytes)));
        for part in bytes.chunks(chunk) {
            self.conn(c).send(part);
        }
        self.conn(c).shutdown_write();
        let raw = self.read_eof(c);
        self.conns[c] = None;
        self.record(format!("c{c} transcript of {}", esc(bytes)), &raw);
        raw
    }

    fn read_eof(&mut self, c: usize) -> Vec<u8> {
        let step = self.log.len();
        let conn = self.conn(c);
        conn.set_read_timeout(REPLY_TIMEOUT);
        let mut out = Vec::new();
        loop {
            match conn.fill() {
                Ok(()) => {}
                Err(e)
                    if e.kind() == io::ErrorKind::UnexpectedEof
                        || e.kind() == io::ErrorKind::ConnectionReset =>
                {
                    out.append(&mut conn.pending);
                    return out;
                }
                Err(e) => {
                    let so_far = std::mem::take(&mut conn.pending);
                    self.fail(
                        step,
                        &format!("c{c} until EOF"),
                        Some(&so_far),
                        &format!("connection not closed: {e}"),
                    )
                }
            }
        }
    }

    /// Reads on `c` until the server closes it; logs what came.
    pub fn eof(&mut self, c: usize) -> Vec<u8> {
        self.history.push(format!("c{c} read until EOF"));
        let raw = self.read_eof(c);
        self.conns[c] = None;
        self.record(format!("c{c} until EOF"), &raw);
        raw
    }

    /// Sends `quit` on `c` and waits for the server to close it.
    pub fn quit(&mut self, c: usize) {
        self.send(c, b"quit\r\n");
        self.eof(c);
    }

    /// Half-closes `c` (shutdown(Write)).
    pub fn shutdown(&mut self, c: usize) {
        self.history.push(format!("c{c} shutdown(Write)"));
        self.conn(c).shutdown_write();
    }

    /// Drops `c` without `quit` (the server learns of it asynchronously).
    pub fn drop_conn(&mut self, c: usize) {
        self.history.push(format!("c{c} dropped"));
        self.conns[c] = None;
    }

    /// Polls `stats` on a private, unlogged connection until `key` has
    /// `value` (a synchronisation point for blocked `reserve`s, whose
    /// state is otherwise invisible). The number of polls varies, so after
    /// this `cmd-stats` is normalised. Fails after [`REPLY_TIMEOUT`].
    pub fn wait_stat(&mut self, key: &str, value: &str) {
        self.history.push(format!("(waited for stats {key}: {value})"));
        self.polled = true;
        if self.watcher.is_none() {
            let mut w = self.server.connect();
            w.label = format!("{} watcher", self.server.kind().name());
            self.watcher = Some(w);
        }
        let deadline = Instant::now() + REPLY_TIMEOUT;
        let mut last = Vec::new();
        while Instant::now() < deadline {
            let w = self.watcher.as_mut().expect("watcher");
            last = w.cmd(b"stats\r\n");
            if yaml_value(&last, key).as_deref() == Some(value) {
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let step = self.log.len();
        self.fail(
            step,
            &format!("wait for stats {key}: {value}"),
            Some(&last),
            "the stat never reached that value",
        );
    }

    fn record(&mut self, what: String, raw: &[u8]) {
        let reply = normalise(self.server.kind(), raw, self.polled);
        let step = self.log.len();
        if let Some(reference) = self.reference {
            match reference.get(step) {
                None => self.fail(step, &what, Some(raw), "the reference run had no such step"),
                Some(want) if want.reply != reply => {
                    let mut why = String::from("replies differ");
                    if let (Some(a), Some(b)) = (yaml_keys(&want.reply), yaml_keys(&reply)) {
                        if a != b {
                            why = format!(
                                "YAML keys differ:\n    beanstalkd: {}\n    {}: {}",
                                a.join(" "),
                                self.server.kind().name(),
                                b.join(" ")
                            );
                        }
                    }
                    self.fail(step, &what, Some(raw), &why)
                }
                Some(_) => {}
            }
        }
        self.history.push(format!("   < {}", esc(&reply)));
        self.log.push(Entry { what, reply });
    }

    fn fail(&self, step: usize, what: &str, got: Option<&[u8]>, why: &str) -> ! {
        let kind = self.server.kind().name();
        let mut msg =
            format!("{kind} disagrees with beanstalkd 1.12 at step {step} ({what}): {why}\n");
        if let Some(want) = self.reference.and_then(|r| r.get(step)) {
            msg.push_str(&format!("  beanstalkd (normalised): {}\n", esc(&want.reply)));
        }
        if let Some(got) = got {
            let norm = normalise(self.server.kind(), got, self.polled);
            msg.push_str(&format!(
                "  {kind} (normalised):     {}\n  {kind} (raw):            {}\n",
                esc(&norm),
                esc(got)
            ));
            if let Some(want) = self.reference.and_then(|r| r.get(step)) {
                let at = want.reply.iter().zip(&norm).take_while(|(a, b)| a == b).count();
                let from = at.saturating_sub(60);
                let window = |b: &[u8]| esc(&b[from.min(b.len())..(at + 60).min(b.len())]);
                msg.push_str(&format!(
                    "  first difference at byte {at}:\n    beanstalkd: ...{}...\n    {kind}: ...{}...\n",
                    window(&want.reply),
                    window(&norm)
                ));
            }
        }
        msg.push_str("exchange so far:\n");
        for h in &self.history {
            msg.push_str(&format!("  {h}\n"));
        }
        msg.push_str(&self.server.log_tail());
        panic!("{msg}");
    }

    /// The log of replies so far.
    pub fn log(&self) -> &[Entry] {
        &self.log
    }
}

/// Runs `script` against beanstalkd 1.12 and then against the server under
/// test, each started with `args` on a private socket, and fails at the
/// first reply of the latter that differs from the former after
/// [`normalise`]. Returns the reference log (for extra assertions).
pub fn diff(args: &[&str], script: impl Fn(&mut Session<'_>)) -> Vec<Entry> {
    let reference = {
        let server = Server::beanstalkd(args);
        let mut s = Session::new(&server, None);
        script(&mut s);
        if std::env::var_os("SPINDLE_DIFF_SHOW").is_some() {
            println!("beanstalkd 1.12 (normalised):");
            for e in &s.log {
                println!("  {}\n    < {}", e.what, esc(&e.reply));
            }
        }
        s.log
    };
    let server = Server::under_test(args);
    let mut s = Session::new(&server, Some(&reference));
    script(&mut s);
    if s.log.len() != reference.len() {
        let step = s.log.len();
        s.fail(step, "end of script", None, "the reference run has more steps");
    }
    reference
}

/// A small deterministic PRNG (xorshift64*, Marsaglia 2003; Vigna's
/// multiplier), seeded per trial: scripts are reproducible from the seed.
pub struct Rng(u64);

impl Rng {
    /// Spreads `seed` (Fibonacci hashing) and makes it non-zero.
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.below(xs.len() as u64) as usize]
    }
}
