//! The `peer beanstalkd` scenario: `spindled` against Debian's `beanstalkd`,
//! driven by one load generator, in one run.
//!
//! The generator below speaks the raw beanstalkd protocol over Unix sockets
//! (no client library): it only knows `use`, `watch`, `ignore`, `put`,
//! `reserve`, `delete` and the `put-batch` extension. Each server is started
//! with the same flags (`-l unix:PATH`, plus `-b DIR -f MS` when durable) on
//! a private socket, polled until it accepts a connection, measured, and
//! killed. Modes run in order durable then memory; within a mode spindled
//! then beanstalkd, each through every phase before the other starts
//! (`--repeat K` runs K rounds per mode, odd rounds beanstalkd first, and
//! reports medians of rates and merged latency histograms). In
//! durable mode the disk is left to settle (no writes for 100 ms, at most
//! 3 s) before each server starts and before its latency phase, so one
//! phase's writeback does not land in the next one's fsyncs.
//!
//! 1. **Throughput.** A *cycle* is the put, the reserve and the delete of one
//!    job; it counts when its `DELETED` reply has been read. `C` connections,
//!    each on its own tube (so a reserve always finds the connection's own
//!    job and never blocks), repeat rounds of one write holding the deletes
//!    of the previous round's jobs, `W` puts and `W` reserves, then read all
//!    replies: up to `3W` commands in flight per connection, one round trip
//!    per `W` cycles. After the fixed duration each connection deletes what
//!    it holds; cycles/s = cycles / (start → last connection done).
//! 2. **Latency**, open loop at a fixed rate (default 5,000 jobs/s): one
//!    producer connection writes job `i` at `t0 + i / rate` (never waiting
//!    for replies; a thread of its own reads the `INSERTED`s), the job's body
//!    carrying `i`, hence its scheduled time; one consumer connection keeps
//!    a `reserve` waiting and answers each `RESERVED` with
//!    `delete <id>\r\nreserve\r\n`. Cycle latency = scheduled put time →
//!    arrival of that job's `DELETED` reply. A late producer sends late
//!    jobs at once and the lateness counts (no coordinated omission), as in
//!    the `latency` scenario (`open_loop.rs`). A server that falls behind
//!    gets until `max(S, 10 s)` after the schedule's end; jobs unfinished
//!    then are recorded at their age at that cutoff (a lower bound) and
//!    counted as `unfinished`.
//! 3. **Puts on one connection** (durable only), each on a fresh, empty
//!    server instance: `put-batch` of `N` jobs per command, one command in
//!    flight, for spindled (null when it answers `UNKNOWN_COMMAND`); and, as
//!    the reference, `N` pipelined single `put`s per round trip for both
//!    servers. Jobs pile up during these phases (nothing is reserved), so
//!    the figure covers a server growing from 0 to rate × S jobs.
//!
//! Generator and servers share the machine's cores, as a client on the same
//! host would; each phase records the server's CPU time (`/proc/PID/stat`)
//! and the generator's, per cycle.

use crate::args::Args;
use crate::dir::BenchDir;
use crate::engine_env;
use crate::io_counters::IoCounters;
use crate::latency::{Latency, Percentiles};
use crate::report::{format_number, json_number, Report};
use crate::system::Busy;
use crate::BoxResult;
use serde_json::{json, Map, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// Usage text of the scenario.
pub const USAGE: &str = "\
spindle-bench peer beanstalkd [options]
  spindled against Debian's beanstalkd, same raw-protocol load generator,
  Unix sockets, both durable (-b DIR -f 50) then both in memory.
  --seconds S        throughput and latency phase length, per server per
                     mode (default 5)
  --connections C    throughput connections (default 4)
  --window W         puts (then reserves) pipelined per connection per
                     round trip (default 64, at most 1024)
  --rate R           latency phase: jobs/s put on schedule (default 5000)
  --put-seconds S    one-connection put phases, durable only (default 2)
  --batch N          jobs per put-batch command, and per round trip of
                     pipelined puts (default 1000, at most 10000)
  --mode M           durable, memory or both (default both)
  --repeat K         rounds per mode, alternating which server goes first;
                     cycles/s and put rates are medians over rounds,
                     latency histograms are merged (default 1)
  --fsync-ms MS      -f for both servers when durable (default 50)
  --spindled PATH    default: the spindled next to this executable
                     (`cargo build --release --bin spindled`);
                     --spindled /usr/bin/beanstalkd checks the harness
                     (both sides beanstalkd: ratio ~1)
  --io-loops N       spindled's --io-loops (event loops; default 1)
  --beanstalkd PATH  default: beanstalkd on PATH, else /usr/bin/beanstalkd
  --dir PATH         parent of the durable data directories (default:
                     ./target, else /var/tmp, else /tmp; tmpfs skipped)
  --json             print one JSON object instead of tables";

/// What a cycle is, printed with the figures.
const CYCLE: &str =
    "1 cycle = put + reserve + delete of one job, counted when its DELETED reply is read";
/// What the latency is, printed with the figures.
const LATENCY: &str = "cycle latency = scheduled put time -> that job's DELETED reply (open loop, no coordinated omission)";
/// Body of every throughput and put-phase job (printable, 16 bytes).
const BODY: &[u8; 16] = b"spindle-bench-16";
/// Priority, delay and TTR of every put.
const PUT_ARGS: &str = "1024 0 60";
/// How long a server may take to accept its first connection.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// A reply slower than this is a hung server.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Durable (`-b DIR -f MS`) or in memory (no `-b`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Durable,
    Memory,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Durable => "durable",
            Mode::Memory => "memory",
        }
    }
}

/// Parsed options.
#[derive(Debug, Clone)]
pub struct PeerOpts {
    seconds: f64,
    connections: usize,
    window: usize,
    rate: f64,
    put_seconds: f64,
    batch: usize,
    repeat: usize,
    modes: Vec<Mode>,
    fsync_ms: u64,
    spindled: Option<PathBuf>,
    io_loops: usize,
    beanstalkd: Option<PathBuf>,
    dir: Option<PathBuf>,
    /// Print JSON.
    pub json: bool,
}

impl PeerOpts {
    /// Reads the scenario's options; the bare word `beanstalkd` (the peer)
    /// is required.
    pub fn parse(mut a: Args) -> BoxResult<PeerOpts> {
        let mode: String = a.value_or("--mode", "both".to_string())?;
        let o = PeerOpts {
            seconds: a.value_or("--seconds", 5.0)?,
            connections: a.value_or("--connections", 4)?,
            window: a.value_or("--window", 64)?,
            rate: a.value_or("--rate", 5000.0)?,
            put_seconds: a.value_or("--put-seconds", 2.0)?,
            batch: a.value_or("--batch", 1000)?,
            repeat: a.value_or("--repeat", 1)?,
            modes: match mode.as_str() {
                "both" => vec![Mode::Durable, Mode::Memory],
                "durable" => vec![Mode::Durable],
                "memory" => vec![Mode::Memory],
                other => return Err(format!("--mode {other:?}: durable, memory or both").into()),
            },
            fsync_ms: a.value_or("--fsync-ms", 50)?,
            spindled: a.value("--spindled")?,
            io_loops: a.value_or("--io-loops", 1)?,
            beanstalkd: a.value("--beanstalkd")?,
            dir: a.value("--dir")?,
            json: a.flag("--json"),
        };
        if !a.flag("beanstalkd") {
            return Err("name the peer: `spindle-bench peer beanstalkd [options]` \
                        (beanstalkd is the only one)"
                .into());
        }
        a.finish()?;
        let pos = |v: f64| v > 0.0 && v.is_finite();
        if !(pos(o.seconds) && pos(o.rate) && pos(o.put_seconds)) {
            return Err("--seconds, --rate and --put-seconds must be positive numbers".into());
        }
        if o.rate * o.seconds < 1.0 || o.rate * o.seconds > 10_000_000.0 {
            return Err("--rate × --seconds must be between 1 and 10,000,000 jobs".into());
        }
        if !(1..=256).contains(&o.connections) {
            return Err("--connections must be 1..=256".into());
        }
        // Bounded so that one round's requests and replies fit in the Unix
        // socket buffers: the generator writes a whole round before reading.
        if !(1..=1024).contains(&o.window) {
            return Err("--window must be 1..=1024".into());
        }
        if !(1..=10_000).contains(&o.batch) {
            return Err("--batch must be 1..=10000".into());
        }
        if !(1..=256).contains(&o.io_loops) {
            return Err("--io-loops must be 1..=256".into());
        }
        if !(1..=50).contains(&o.repeat) {
            return Err("--repeat must be 1..=50".into());
        }
        Ok(o)
    }
}

// ---------------------------------------------------------------------------
// Servers

/// A server process on a private Unix socket, killed on drop.
pub(crate) struct Server {
    label: &'static str,
    child: Child,
    socket: PathBuf,
}

impl Server {
    /// Starts `exe` with beanstalkd's flags and waits until it accepts.
    pub(crate) fn start(
        label: &'static str,
        exe: &Path,
        socket: PathBuf,
        data: Option<&Path>,
        fsync_ms: u64,
        io_loops: usize,
        log: &Path,
    ) -> BoxResult<Server> {
        let mut cmd = Command::new(exe);
        cmd.arg("-l").arg(format!("unix:{}", socket.display()));
        if io_loops > 1 {
            cmd.arg("--io-loops").arg(io_loops.to_string());
        }
        if let Some(d) = data {
            cmd.arg("-b").arg(d).arg("-f").arg(fsync_ms.to_string());
        }
        let out = std::fs::File::create(log)?;
        cmd.stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out);
        die_with_parent(&mut cmd);
        let child =
            cmd.spawn().map_err(|e| format!("{label}: cannot start {}: {e}", exe.display()))?;
        let mut s = Server { label, child, socket };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = s.child.try_wait()? {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                return Err(format!(
                    "{label} ({}) exited at start with {status}; its output:\n{}",
                    exe.display(),
                    text.trim_end()
                )
                .into());
            }
            if UnixStream::connect(&s.socket).is_ok() {
                return Ok(s);
            }
            if Instant::now() >= deadline {
                s.stop();
                return Err(format!(
                    "{label} did not accept connections on {} within {} s",
                    s.socket.display(),
                    START_TIMEOUT.as_secs()
                )
                .into());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn connect(&self) -> BoxResult<Conn> {
        Conn::open(&self.socket, self.label)
    }

    /// The server's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The Unix socket it listens on.
    pub(crate) fn socket(&self) -> &Path {
        &self.socket
    }

    /// Asks the server to exit (SIGTERM) and waits for it.
    pub(crate) fn terminate(&mut self) -> BoxResult<()> {
        let st = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status()?;
        if !st.success() {
            return Err(format!("{}: kill -TERM failed", self.label).into());
        }
        self.child.wait()?;
        Ok(())
    }

    /// User + system CPU seconds of the server process, all threads.
    fn cpu_seconds(&self) -> Option<f64> {
        proc_cpu_seconds(&format!("/proc/{}/stat", self.child.id()))
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Makes the child get SIGKILL when this process dies, so an interrupted
/// run leaves no server behind.
#[allow(unsafe_code)]
fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the child between fork and exec; it only
    // calls prctl(PR_SET_PDEATHSIG), which is async-signal-safe, and touches
    // no memory.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

/// utime + stime of a `/proc/.../stat` file, in seconds (USER_HZ = 100).
fn proc_cpu_seconds(path: &str) -> Option<f64> {
    let s = std::fs::read_to_string(path).ok()?;
    // Fields after the command name, which is in parentheses: state is
    // field 3, utime 14, stime 15.
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

fn self_cpu_seconds() -> Option<f64> {
    proc_cpu_seconds("/proc/self/stat")
}

/// The first line `exe -v` prints, or `unknown` (killed after 2 s).
fn version_of(exe: &Path) -> String {
    let Ok(mut child) = Command::new(exe)
        .arg("-v")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
    else {
        return "unknown".into();
    };
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return "unknown".into();
            }
        }
    }
    let mut out = String::new();
    if let Some(mut so) = child.stdout.take() {
        let _ = so.read_to_string(&mut out);
    }
    out.lines().next().map(str::trim).filter(|l| !l.is_empty()).unwrap_or("unknown").to_string()
}

pub(crate) fn locate_beanstalkd(given: Option<&Path>) -> BoxResult<PathBuf> {
    if let Some(p) = given {
        return if p.is_file() {
            Ok(p.to_path_buf())
        } else {
            Err(format!("--beanstalkd {}: no such file", p.display()).into())
        };
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("beanstalkd")).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain([PathBuf::from("/usr/bin/beanstalkd"), PathBuf::from("/usr/sbin/beanstalkd")])
        .find(|p| p.is_file())
        .ok_or_else(|| {
            "beanstalkd is not installed (not on PATH, not /usr/bin/beanstalkd). Install \
             Debian's package with `apt-get install -y beanstalkd` (as root), or pass \
             --beanstalkd PATH"
                .into()
        })
}

pub(crate) fn locate_spindled(given: Option<&Path>) -> BoxResult<PathBuf> {
    if let Some(p) = given {
        return if p.is_file() {
            Ok(p.to_path_buf())
        } else {
            Err(format!("--spindled {}: no such file", p.display()).into())
        };
    }
    let exe = std::env::current_exe()?;
    let dir = exe.parent().ok_or("current executable has no directory")?;
    let p = dir.join("spindled");
    if p.is_file() {
        Ok(p)
    } else {
        Err(format!(
            "spindled not found next to this executable ({}): build it with \
             `cargo build --release --bin spindled`, or pass --spindled PATH",
            p.display()
        )
        .into())
    }
}

// ---------------------------------------------------------------------------
// The raw protocol

/// One connection: a writer and a buffered reader on the same socket.
struct Conn {
    w: UnixStream,
    r: BufReader<UnixStream>,
    line: Vec<u8>,
    label: &'static str,
}

impl Conn {
    fn open(socket: &Path, label: &'static str) -> BoxResult<Conn> {
        let w = UnixStream::connect(socket)
            .map_err(|e| format!("{label}: connect {}: {e}", socket.display()))?;
        w.set_read_timeout(Some(READ_TIMEOUT))?;
        w.set_write_timeout(Some(READ_TIMEOUT))?;
        let r = BufReader::with_capacity(64 * 1024, w.try_clone()?);
        Ok(Conn { w, r, line: Vec::with_capacity(128), label })
    }

    fn send(&mut self, buf: &[u8]) -> BoxResult<()> {
        self.w.write_all(buf).map_err(|e| format!("{}: write: {e}", self.label).into())
    }

    /// The next reply line without its `\r\n`.
    fn line(&mut self) -> BoxResult<&[u8]> {
        self.line.clear();
        let n = self
            .r
            .read_until(b'\n', &mut self.line)
            .map_err(|e| format!("{}: read: {e}", self.label))?;
        if n == 0 {
            return Err(format!("{}: connection closed by the server", self.label).into());
        }
        let l = self.line.strip_suffix(b"\n").unwrap_or(&self.line);
        Ok(l.strip_suffix(b"\r").unwrap_or(l))
    }

    /// A job body of `n` bytes and its `\r\n`, into `buf`.
    fn body(&mut self, n: usize, buf: &mut Vec<u8>) -> BoxResult<()> {
        buf.resize(n + 2, 0);
        self.r.read_exact(buf).map_err(|e| format!("{}: read body: {e}", self.label))?;
        if !buf.ends_with(b"\r\n") {
            return Err(format!("{}: job body not followed by CRLF", self.label).into());
        }
        buf.truncate(n);
        Ok(())
    }

    /// Reads one line that must start with `prefix`; returns the rest.
    fn expect(&mut self, prefix: &str) -> BoxResult<Vec<u8>> {
        let label = self.label;
        let l = self.line()?;
        match l.strip_prefix(prefix.as_bytes()) {
            Some(rest) => Ok(rest.to_vec()),
            None => Err(unexpected(label, prefix, l)),
        }
    }

    /// `INSERTED <id>`.
    fn inserted(&mut self) -> BoxResult<u64> {
        let label = self.label;
        let l = self.line()?;
        l.strip_prefix(b"INSERTED ")
            .and_then(number)
            .ok_or_else(|| unexpected(label, "INSERTED", l))
    }

    /// `RESERVED <id> <bytes>` and the body (into `buf`); returns the id.
    fn reserved(&mut self, buf: &mut Vec<u8>) -> BoxResult<u64> {
        let label = self.label;
        let l = self.line()?;
        let parsed = l.strip_prefix(b"RESERVED ").and_then(|rest| {
            let sp = rest.iter().position(|&c| c == b' ')?;
            Some((number(&rest[..sp])?, number(&rest[sp + 1..])?))
        });
        let Some((id, n)) = parsed else { return Err(unexpected(label, "RESERVED", l)) };
        self.body(usize::try_from(n)?, buf)?;
        Ok(id)
    }

    fn deleted(&mut self) -> BoxResult<()> {
        let label = self.label;
        let l = self.line()?;
        if l == b"DELETED" {
            Ok(())
        } else {
            Err(unexpected(label, "DELETED", l))
        }
    }

    /// Uses, watches and only watches `tube`.
    fn own_tube(&mut self, tube: &str) -> BoxResult<()> {
        self.send(format!("use {tube}\r\nwatch {tube}\r\nignore default\r\n").as_bytes())?;
        self.expect("USING ")?;
        self.expect("WATCHING ")?;
        self.expect("WATCHING ")?;
        Ok(())
    }
}

fn unexpected(label: &str, want: &str, got: &[u8]) -> crate::BoxError {
    format!("{label}: expected {want}, got {:?}", String::from_utf8_lossy(got)).into()
}

/// A non-empty run of ASCII digits as a number.
fn number(b: &[u8]) -> Option<u64> {
    if b.is_empty() || b.len() > 19 {
        return None;
    }
    b.iter().try_fold(0u64, |n, &c| c.is_ascii_digit().then(|| n * 10 + u64::from(c - b'0')))
}

fn push_put(out: &mut Vec<u8>, body: &[u8]) {
    let _ = write!(out, "put {PUT_ARGS} {}\r\n", body.len());
    out.extend_from_slice(body);
    out.extend_from_slice(b"\r\n");
}

fn elapsed_ns(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

// ---------------------------------------------------------------------------
// Phase 1: throughput

/// Result of the throughput phase on one server.
#[derive(Debug, Clone, Copy)]
struct Throughput {
    cycles: u64,
    seconds: f64,
    server_cpu: Option<f64>,
    generator_cpu: Option<f64>,
}

impl Throughput {
    fn per_sec(&self) -> f64 {
        self.cycles as f64 / self.seconds
    }
}

fn throughput(s: &Server, o: &PeerOpts) -> BoxResult<Throughput> {
    let mut conns = Vec::with_capacity(o.connections);
    for i in 0..o.connections {
        let mut c = s.connect()?;
        c.own_tube(&format!("tp-{i}"))?;
        conns.push(c);
    }
    let run_for = Duration::from_secs_f64(o.seconds);
    let barrier = Arc::new(Barrier::new(o.connections + 1));
    let window = o.window;
    let mut handles = Vec::with_capacity(o.connections);
    for c in conns {
        let barrier = barrier.clone();
        handles.push(
            std::thread::Builder::new()
                .name("peer-cycles".into())
                .spawn(move || cycle_loop(c, window, run_for, &barrier))?,
        );
    }
    let (cpu0, gen0) = (s.cpu_seconds(), self_cpu_seconds());
    barrier.wait();
    let t0 = Instant::now();
    let mut cycles = 0;
    let mut end = t0;
    let mut first_err = None;
    for h in handles {
        match h.join().map_err(|_| "throughput connection panicked")? {
            Ok((n, done)) => {
                cycles += n;
                end = end.max(done);
            }
            Err(e) => first_err = first_err.or(Some(e)),
        }
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    let (cpu1, gen1) = (s.cpu_seconds(), self_cpu_seconds());
    Ok(Throughput {
        cycles,
        seconds: end.duration_since(t0).as_secs_f64(),
        server_cpu: cpu0.zip(cpu1).map(|(a, b)| b - a),
        generator_cpu: gen0.zip(gen1).map(|(a, b)| b - a),
    })
}

/// One throughput connection: rounds of [deletes of the last round's jobs,
/// `window` puts, `window` reserves] in one write, then all the replies.
fn cycle_loop(
    mut c: Conn,
    window: usize,
    run_for: Duration,
    barrier: &Barrier,
) -> BoxResult<(u64, Instant)> {
    let mut out = Vec::with_capacity(window * 64);
    let mut held: Vec<u64> = Vec::with_capacity(window);
    let mut body = Vec::with_capacity(64);
    let mut cycles = 0u64;
    barrier.wait();
    let deadline = Instant::now() + run_for;
    loop {
        out.clear();
        let deletes = held.len();
        for id in held.drain(..) {
            let _ = write!(out, "delete {id}\r\n");
        }
        let more = Instant::now() < deadline;
        if more {
            for _ in 0..window {
                push_put(&mut out, BODY);
            }
            for _ in 0..window {
                out.extend_from_slice(b"reserve\r\n");
            }
        }
        if out.is_empty() {
            break;
        }
        c.send(&out)?;
        for _ in 0..deletes {
            c.deleted()?;
        }
        cycles += deletes as u64;
        if !more {
            break;
        }
        for _ in 0..window {
            c.inserted()?;
        }
        for _ in 0..window {
            held.push(c.reserved(&mut body)?);
        }
    }
    Ok((cycles, Instant::now()))
}

// ---------------------------------------------------------------------------
// Phase 2: open-loop latency

/// Result of the latency phase on one server.
#[derive(Debug, Clone)]
struct CycleLatency {
    jobs: u64,
    /// Jobs without a `DELETED` by the cutoff (recorded at their age then).
    unfinished: u64,
    cycle: Latency,
    put_ack: Latency,
    late: Latency,
    /// Finished jobs / (schedule start → last DELETED).
    completed_per_sec: f64,
}

/// How long after the schedule's end the latency phase waits for the last
/// replies: `max(seconds, 10 s)`. A server that cannot keep up then costs
/// bounded time; its unfinished jobs count at their age at the cutoff.
fn latency_grace(seconds: f64) -> Duration {
    Duration::from_secs_f64(seconds.max(10.0))
}

fn latency(s: &Server, o: &PeerOpts) -> BoxResult<CycleLatency> {
    let n = (o.rate * o.seconds).round() as u64;
    let period_ns = 1e9 / o.rate;
    let mut producer = s.connect()?;
    producer.send(b"use lat\r\n")?;
    producer.expect("USING ")?;
    let mut consumer = s.connect()?;
    consumer.send(b"watch lat\r\nignore default\r\nreserve\r\n")?;
    consumer.expect("WATCHING ")?;
    consumer.expect("WATCHING ")?;
    let writer = producer.w.try_clone()?;

    let epoch = Instant::now();
    // A little ahead, so the consumer's reserve is waiting on the server.
    let t0 = elapsed_ns(epoch) + 20_000_000;
    let due = move |i: u64| t0 + (i as f64 * period_ns) as u64;
    let cutoff = due(n) + u64::try_from(latency_grace(o.seconds).as_nanos())?;
    let clock = Clock { epoch, cutoff };

    let put_thread = std::thread::Builder::new()
        .name("peer-producer".into())
        .spawn(move || produce(writer, clock, n, due))?;
    let ack_thread = std::thread::Builder::new()
        .name("peer-acks".into())
        .spawn(move || put_acks(producer, clock, n, due))?;
    let consume_thread = std::thread::Builder::new()
        .name("peer-consumer".into())
        .spawn(move || consume(consumer, clock, n, due))?;

    let late = put_thread.join().map_err(|_| "producer panicked")?;
    let acks = ack_thread.join().map_err(|_| "producer reply reader panicked")?;
    let done = consume_thread.join().map_err(|_| "consumer panicked")?;
    let (late, acks, done) = (late?, acks?, done?);
    let finished = n - done.unfinished;
    Ok(CycleLatency {
        jobs: n,
        unfinished: done.unfinished,
        cycle: done.cycle,
        put_ack: acks,
        late,
        completed_per_sec: finished as f64 / (done.last_ns.saturating_sub(t0).max(1) as f64 / 1e9),
    })
}

/// The latency phase's clock: nanoseconds since `epoch`, and the cutoff.
#[derive(Debug, Clone, Copy)]
struct Clock {
    epoch: Instant,
    cutoff: u64,
}

impl Clock {
    fn now(&self) -> u64 {
        elapsed_ns(self.epoch)
    }

    fn past_cutoff(&self) -> bool {
        self.now() >= self.cutoff
    }

    /// Time left until the cutoff plus 10 ms (so that a timeout set to it
    /// fires after the cutoff), or `None` past the cutoff.
    fn left(&self) -> Option<Duration> {
        let now = self.now();
        (now < self.cutoff).then(|| Duration::from_nanos(self.cutoff - now + 10_000_000))
    }

    /// Arms `sock`'s read timeout for the time left; false past the cutoff.
    fn arm(&self, sock: &UnixStream) -> BoxResult<bool> {
        match self.left() {
            Some(d) => {
                sock.set_read_timeout(Some(d))?;
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

/// Writes job `i` at `due(i)`; its body is `i` (16 hex digits). Returns
/// how late each write started.
fn produce(
    mut w: UnixStream,
    clock: Clock,
    n: u64,
    due: impl Fn(u64) -> u64,
) -> BoxResult<Latency> {
    set_timer_slack_1us();
    let mut late = Latency::new()?;
    let mut out = Vec::with_capacity(64);
    for i in 0..n {
        let d = due(i);
        loop {
            let now = clock.now();
            if now >= d {
                break;
            }
            let left = d - now;
            // Sleep until ~25 µs before, then yield-spin: at 5,000 jobs/s a
            // pure spin would take a core from the servers.
            if left > 40_000 {
                std::thread::sleep(Duration::from_nanos(left - 25_000));
            } else {
                std::thread::yield_now();
            }
        }
        late.record(Duration::from_nanos(clock.now() - d));
        out.clear();
        push_put(&mut out, format!("{i:016x}").as_bytes());
        // A server that stops reading blocks the write once the socket
        // buffer is full; give up at the cutoff.
        let Some(left) = clock.left() else { break };
        w.set_write_timeout(Some(left))?;
        match w.write_all(&out) {
            Ok(()) => {}
            Err(_) if clock.past_cutoff() => break,
            Err(e) => return Err(format!("producer write: {e}").into()),
        }
    }
    Ok(late)
}

/// Reads the producer's `INSERTED` replies (in order): scheduled put time
/// → reply.
fn put_acks(mut c: Conn, clock: Clock, n: u64, due: impl Fn(u64) -> u64) -> BoxResult<Latency> {
    let mut acks = Latency::new()?;
    for i in 0..n {
        let ok = clock.arm(&c.w)?
            && match c.inserted() {
                Ok(_) => true,
                Err(_) if clock.past_cutoff() => false,
                Err(e) => return Err(e),
            };
        let now = clock.now();
        if !ok {
            for j in i..n {
                acks.record(Duration::from_nanos(now.saturating_sub(due(j))));
            }
            break;
        }
        acks.record(Duration::from_nanos(now.saturating_sub(due(i))));
    }
    Ok(acks)
}

/// What the consumer saw.
struct Consumed {
    cycle: Latency,
    unfinished: u64,
    last_ns: u64,
}

/// Answers each `RESERVED` with `delete <id>` plus the next `reserve`, and
/// records scheduled put time → `DELETED`. Jobs still unfinished at the
/// cutoff are recorded at their age then.
fn consume(mut c: Conn, clock: Clock, n: u64, due: impl Fn(u64) -> u64) -> BoxResult<Consumed> {
    let mut cycle = Latency::new()?;
    let mut done = vec![false; usize::try_from(n)?];
    let mut body = Vec::with_capacity(32);
    let mut out = Vec::with_capacity(64);
    let mut finished = 0u64;
    let mut last = 0;
    while finished < n {
        if !clock.arm(&c.w)? {
            break;
        }
        let id = match c.reserved(&mut body) {
            Ok(id) => id,
            Err(_) if clock.past_cutoff() => break,
            Err(e) => return Err(e),
        };
        let i = std::str::from_utf8(&body)
            .ok()
            .and_then(|s| u64::from_str_radix(s, 16).ok())
            .filter(|&i| i < n && !done[i as usize])
            .ok_or_else(|| format!("{}: job {id} has a body we did not put", c.label))?;
        out.clear();
        let _ = write!(out, "delete {id}\r\n");
        if finished + 1 < n {
            out.extend_from_slice(b"reserve\r\n");
        }
        c.send(&out)?;
        match c.deleted() {
            Ok(()) => {}
            Err(_) if clock.past_cutoff() => break,
            Err(e) => return Err(e),
        }
        last = clock.now();
        cycle.record(Duration::from_nanos(last.saturating_sub(due(i))));
        done[i as usize] = true;
        finished += 1;
    }
    if finished < n {
        let now = clock.now();
        for (i, _) in done.iter().enumerate().filter(|(_, d)| !**d) {
            cycle.record(Duration::from_nanos(now.saturating_sub(due(i as u64))));
        }
    }
    Ok(Consumed { cycle, unfinished: n - finished, last_ns: last })
}

/// Cuts the calling thread's timer slack to 1 µs so the producer's sleeps
/// end on time (the default 50 µs slack would make every wake-up late).
/// Best effort: failure leaves the default.
#[allow(unsafe_code)]
fn set_timer_slack_1us() {
    // SAFETY: PR_SET_TIMERSLACK takes one integer argument and touches no
    // memory of ours; it only changes this thread's timer slack.
    let _ = unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong) };
}

// ---------------------------------------------------------------------------
// Phase 3: puts on one connection

/// Jobs/s of `batch` pipelined single puts per round trip, one connection.
fn put_pipelined(s: &Server, batch: usize, secs: f64) -> BoxResult<f64> {
    let mut c = s.connect()?;
    c.send(b"use put\r\n")?;
    c.expect("USING ")?;
    let mut out = Vec::with_capacity(batch * 40);
    for _ in 0..batch {
        push_put(&mut out, BODY);
    }
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs_f64(secs);
    let mut jobs = 0u64;
    let mut w = c.w.try_clone()?;
    while Instant::now() < deadline {
        // Written by a second thread while this one reads the replies: a
        // large round does not fit in the socket buffers, and a server that
        // cannot send its replies stops reading.
        std::thread::scope(|sc| -> BoxResult<()> {
            let writer = sc.spawn(|| w.write_all(&out));
            for _ in 0..batch {
                c.inserted()?;
            }
            writer.join().map_err(|_| "put writer panicked")??;
            Ok(())
        })?;
        jobs += batch as u64;
    }
    Ok(jobs as f64 / t0.elapsed().as_secs_f64())
}

fn put_batch_command(count: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(count * (BODY.len() + 8) + 32);
    let _ = write!(out, "put-batch {PUT_ARGS} {count}\r\n");
    for _ in 0..count {
        let _ = write!(out, "{}\r\n", BODY.len());
        out.extend_from_slice(BODY);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// `INSERTED-BATCH <first-id> <count>`: checks the count.
fn inserted_batch(c: &mut Conn, count: usize) -> BoxResult<()> {
    let label = c.label;
    let l = c.line()?;
    let got = l.strip_prefix(b"INSERTED-BATCH ").and_then(|rest| {
        let sp = rest.iter().position(|&b| b == b' ')?;
        number(&rest[..sp])?;
        number(&rest[sp + 1..])
    });
    match got {
        Some(k) if k == count as u64 => Ok(()),
        _ => Err(unexpected(label, &format!("INSERTED-BATCH <id> {count}"), l)),
    }
}

/// Whether the server knows `put-batch`: false on `UNKNOWN_COMMAND`, an
/// error on any other refusal. The probe's connection is dropped (a server
/// without the extension would read the frames as commands).
fn probe_put_batch(s: &Server) -> BoxResult<bool> {
    let mut c = s.connect()?;
    c.send(b"use probe\r\n")?;
    c.expect("USING ")?;
    c.send(&put_batch_command(1))?;
    let l = c.line()?;
    if l == b"UNKNOWN_COMMAND" {
        return Ok(false);
    }
    if l.starts_with(b"INSERTED-BATCH ") {
        return Ok(true);
    }
    Err(unexpected(s.label, "INSERTED-BATCH or UNKNOWN_COMMAND to put-batch", l))
}

/// Jobs/s of `put-batch` commands of `batch` jobs, one in flight.
fn put_batch(s: &Server, batch: usize, secs: f64) -> BoxResult<f64> {
    let mut c = s.connect()?;
    c.send(b"use put-batch\r\n")?;
    c.expect("USING ")?;
    let out = put_batch_command(batch);
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs_f64(secs);
    let mut jobs = 0u64;
    while Instant::now() < deadline {
        c.send(&out)?;
        inserted_batch(&mut c, batch)?;
        jobs += batch as u64;
    }
    Ok(jobs as f64 / t0.elapsed().as_secs_f64())
}

// ---------------------------------------------------------------------------
// The run

/// Everything measured on one server in one mode, one round.
#[derive(Debug, Clone)]
struct ServerRun {
    tp: Throughput,
    lat: CycleLatency,
    put_pipelined: Option<f64>,
    /// spindled, durable: `put-batch` jobs/s, `None` if unknown to it.
    batch_put: Option<Option<f64>>,
}

/// One server's rounds in one mode, summed up.
#[derive(Debug, Clone)]
struct Summary {
    /// Median over rounds.
    cycles_per_sec: f64,
    rounds_cycles_per_sec: Vec<f64>,
    cycles: u64,
    /// Server (resp. generator) CPU over all rounds / cycles of all rounds.
    server_cpu_us_per_cycle: f64,
    generator_cpu_us_per_cycle: f64,
    /// Latency histograms of all rounds merged.
    cycle: Percentiles,
    put_ack: Percentiles,
    late: Percentiles,
    latency_jobs: u64,
    unfinished: u64,
    /// Median over rounds.
    completed_per_sec: f64,
    put_pipelined: Option<f64>,
    batch_put: Option<Option<f64>>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn summarize(runs: &[ServerRun]) -> BoxResult<Summary> {
    let mut cycle = Latency::new()?;
    let mut put_ack = Latency::new()?;
    let mut late = Latency::new()?;
    for r in runs {
        cycle.merge(&r.lat.cycle)?;
        put_ack.merge(&r.lat.put_ack)?;
        late.merge(&r.lat.late)?;
    }
    let cycles: u64 = runs.iter().map(|r| r.tp.cycles).sum();
    let cpu = |f: fn(&Throughput) -> Option<f64>| {
        let total: Option<f64> = runs.iter().map(|r| f(&r.tp)).sum();
        total.map_or(f64::NAN, |c| c * 1e6 / cycles.max(1) as f64)
    };
    let rounds: Vec<f64> = runs.iter().map(|r| r.tp.per_sec()).collect();
    let put: Vec<f64> = runs.iter().filter_map(|r| r.put_pipelined).collect();
    let batch: Vec<Option<f64>> = runs.iter().filter_map(|r| r.batch_put).collect();
    Ok(Summary {
        cycles_per_sec: median(rounds.clone()),
        rounds_cycles_per_sec: rounds,
        cycles,
        server_cpu_us_per_cycle: cpu(|t| t.server_cpu),
        generator_cpu_us_per_cycle: cpu(|t| t.generator_cpu),
        cycle: cycle.percentiles(),
        put_ack: put_ack.percentiles(),
        late: late.percentiles(),
        latency_jobs: runs.iter().map(|r| r.lat.jobs).sum(),
        unfinished: runs.iter().map(|r| r.lat.unfinished).sum(),
        completed_per_sec: median(runs.iter().map(|r| r.lat.completed_per_sec).collect()),
        put_pipelined: (!put.is_empty()).then(|| median(put)),
        batch_put: match batch.iter().flatten().copied().collect::<Vec<f64>>() {
            _ if batch.is_empty() => None,
            v if v.is_empty() => Some(None),
            v => Some(Some(median(v))),
        },
    })
}

/// Everything measured in one mode.
#[derive(Debug, Clone)]
struct ModeRun {
    mode: Mode,
    spindled: Summary,
    beanstalkd: Summary,
    /// Per round: spindled cycles/s / beanstalkd cycles/s.
    rounds_ratio: Vec<f64>,
}

/// Runs every phase of `mode` against one server binary: throughput and
/// latency on one instance, then (durable only) each put phase on a fresh,
/// empty instance, so that neither put phase inherits the other's jobs.
fn measure(
    label: &'static str,
    exe: &Path,
    mode: Mode,
    o: &PeerOpts,
    sock_dir: &Path,
    data: Option<&BenchDir>,
    with_batch: bool,
) -> BoxResult<ServerRun> {
    // Durable phases start on a quiet disk: the previous server's writeback
    // (and the throughput phase's, before the latency phase) must not land
    // in this one's fsyncs. Each instance gets a fresh data directory.
    let io = match data {
        Some(d) if mode == Mode::Durable => Some(IoCounters::for_dir(d.path())?),
        _ => None,
    };
    let settle = || -> BoxResult<()> {
        if let Some(io) = &io {
            io.settle(Duration::from_secs(3))?;
        }
        Ok(())
    };
    let start = |phase: &str| -> BoxResult<Server> {
        let name = format!("{label}-{}-{phase}", mode.name());
        let data_dir = match (mode, data) {
            (Mode::Durable, Some(d)) => Some(d.sub(&name)?),
            _ => None,
        };
        settle()?;
        Server::start(
            label,
            exe,
            sock_dir.join(format!("{name}.sock")),
            data_dir.as_deref(),
            o.fsync_ms,
            if label == "spindled" { o.io_loops } else { 1 },
            &sock_dir.join(format!("{name}.log")),
        )
    };
    let s = start("cycles")?;
    let tp = throughput(&s, o).map_err(|e| format!("{} throughput: {e}", mode.name()))?;
    settle()?;
    let lat = latency(&s, o).map_err(|e| format!("{} latency: {e}", mode.name()))?;
    drop(s);
    let mut put_pipe = None;
    let mut batch_put = None;
    if mode == Mode::Durable {
        let s = start("puts")?;
        put_pipe = Some(put_pipelined(&s, o.batch, o.put_seconds)?);
        drop(s);
        if with_batch {
            let s = start("put-batch")?;
            batch_put = Some(if probe_put_batch(&s)? {
                Some(put_batch(&s, o.batch, o.put_seconds)?)
            } else {
                None
            });
        }
    }
    Ok(ServerRun { tp, lat, put_pipelined: put_pipe, batch_put })
}

/// Runs the scenario.
pub fn run(o: &PeerOpts) -> BoxResult<Report> {
    let beanstalkd = locate_beanstalkd(o.beanstalkd.as_deref())?;
    let spindled = locate_spindled(o.spindled.as_deref())?;
    let same_binary = spindled.canonicalize().ok() == beanstalkd.canonicalize().ok();
    let busy_start = Busy::now();
    let cores = engine_env::cores();
    let spindled_version = version_of(&spindled);
    let beanstalkd_version = version_of(&beanstalkd);
    let data = if o.modes.contains(&Mode::Durable) {
        Some(BenchDir::create(o.dir.as_deref())?)
    } else {
        None
    };
    // Sockets in a short private directory (sun_path holds 108 bytes).
    let sock_dir = tempfile::Builder::new().prefix("spindle-peer-").tempdir()?;

    let mut runs = Vec::new();
    for &mode in &o.modes {
        let (mut sp, mut bs) = (Vec::new(), Vec::new());
        for round in 0..o.repeat {
            let one = |label, exe: &Path| {
                let with_batch = label == "spindled" && mode == Mode::Durable;
                measure(label, exe, mode, o, sock_dir.path(), data.as_ref(), with_batch)
            };
            // Odd rounds run beanstalkd first, so order effects cancel.
            if round % 2 == 0 {
                sp.push(one("spindled", &spindled)?);
                bs.push(one("beanstalkd", &beanstalkd)?);
            } else {
                bs.push(one("beanstalkd", &beanstalkd)?);
                sp.push(one("spindled", &spindled)?);
            }
        }
        let rounds_ratio =
            sp.iter().zip(&bs).map(|(a, b)| a.tp.per_sec() / b.tp.per_sec()).collect();
        runs.push(ModeRun {
            mode,
            spindled: summarize(&sp)?,
            beanstalkd: summarize(&bs)?,
            rounds_ratio,
        });
    }
    let busy_end = Busy::now();
    Ok(report(
        o,
        &runs,
        &Env {
            cores,
            spindled: &spindled,
            spindled_version: &spindled_version,
            beanstalkd: &beanstalkd,
            beanstalkd_version: &beanstalkd_version,
            same_binary,
            data_fs: data.as_ref().map(|d| d.fs_type.clone()),
            busy_start,
            busy_end,
        },
    ))
}

/// Facts about the run printed with the figures.
struct Env<'a> {
    cores: usize,
    spindled: &'a Path,
    spindled_version: &'a str,
    beanstalkd: &'a Path,
    beanstalkd_version: &'a str,
    same_binary: bool,
    data_fs: Option<String>,
    busy_start: Busy,
    busy_end: Busy,
}

fn report(o: &PeerOpts, runs: &[ModeRun], env: &Env<'_>) -> Report {
    let mut r = Report::new(format!(
        "spindle-bench peer beanstalkd — spindled ({}) vs {} over Unix sockets, generator and \
         servers on the same {} cores\n\
         spindled: {}\nbeanstalkd: {}\n\
         machine at start: {}; at end: {}",
        env.spindled_version,
        env.beanstalkd_version,
        env.cores,
        env.spindled.display(),
        env.beanstalkd.display(),
        env.busy_start.describe(),
        env.busy_end.describe(),
    ));
    let n = |v: f64| json_number(v);
    let f = |v: f64| format_number(v);
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
    let mut batch_put = Value::Null;
    for m in runs {
        let (sp, bs) = (&m.spindled, &m.beanstalkd);
        let flags = match m.mode {
            Mode::Durable => format!("-b DIR -f {}", o.fsync_ms),
            Mode::Memory => "no -b".to_string(),
        };
        let row = |what: &str, a: f64, b: f64, unit: &str| {
            vec![
                what.to_string(),
                f(a),
                f(b),
                {
                    let q = ratio(a, b);
                    if q.is_finite() {
                        format!("{q:.2}")
                    } else {
                        "-".into()
                    }
                },
                unit.to_string(),
            ]
        };
        let header = ["figure", "spindled", "beanstalkd", "spindled/beanstalkd", "unit"];
        let rounds = if o.repeat > 1 {
            format!(" × {} rounds (cycles/s: median; latency: all rounds)", o.repeat)
        } else {
            String::new()
        };
        r.table(
            &format!(
                "{} ({flags}): throughput, {} connections × window {}, {} s each{rounds}; {CYCLE}",
                m.mode.name(),
                o.connections,
                o.window,
                o.seconds
            ),
            &header,
            vec![
                row("cycles/s", sp.cycles_per_sec, bs.cycles_per_sec, "cycles/s"),
                row(
                    "server CPU per cycle",
                    sp.server_cpu_us_per_cycle,
                    bs.server_cpu_us_per_cycle,
                    "µs",
                ),
                row(
                    "generator CPU per cycle",
                    sp.generator_cpu_us_per_cycle,
                    bs.generator_cpu_us_per_cycle,
                    "µs",
                ),
            ],
        );
        r.table(
            &format!(
                "{} ({flags}): {LATENCY}, at {} jobs/s for {} s{rounds} ({} jobs)",
                m.mode.name(),
                o.rate,
                o.seconds,
                sp.latency_jobs
            ),
            &header,
            vec![
                row("cycle latency p50", sp.cycle.p50_us, bs.cycle.p50_us, "µs"),
                row("cycle latency p99", sp.cycle.p99_us, bs.cycle.p99_us, "µs"),
                row("cycle latency p99.9", sp.cycle.p999_us, bs.cycle.p999_us, "µs"),
                row("cycle latency max", sp.cycle.max_us, bs.cycle.max_us, "µs"),
                row("put → INSERTED p50", sp.put_ack.p50_us, bs.put_ack.p50_us, "µs"),
                row("put → INSERTED p99", sp.put_ack.p99_us, bs.put_ack.p99_us, "µs"),
                row(
                    "completed (schedule start → last DELETED)",
                    sp.completed_per_sec,
                    bs.completed_per_sec,
                    "jobs/s",
                ),
                row("producer late p99 (counted in latency)", sp.late.p99_us, bs.late.p99_us, "µs"),
                row(
                    "unfinished at the cutoff (counted at their age then)",
                    sp.unfinished as f64,
                    bs.unfinished as f64,
                    "jobs",
                ),
            ],
        );
        let mut obj = Map::new();
        obj.insert("spindled_cycles_per_sec".into(), n(sp.cycles_per_sec));
        obj.insert("beanstalkd_cycles_per_sec".into(), n(bs.cycles_per_sec));
        obj.insert("ratio".into(), n(ratio(sp.cycles_per_sec, bs.cycles_per_sec)));
        obj.insert(
            "ratio_rounds".into(),
            json!(m.rounds_ratio.iter().map(|&v| n(v)).collect::<Vec<_>>()),
        );
        for (name, s) in [("spindled", sp), ("beanstalkd", bs)] {
            obj.insert(format!("{name}_p50_us"), n(s.cycle.p50_us));
            obj.insert(format!("{name}_p99_us"), n(s.cycle.p99_us));
            obj.insert(format!("{name}_p999_us"), n(s.cycle.p999_us));
            obj.insert(format!("{name}_max_us"), n(s.cycle.max_us));
            obj.insert(format!("{name}_put_ack_p50_us"), n(s.put_ack.p50_us));
            obj.insert(format!("{name}_put_ack_p99_us"), n(s.put_ack.p99_us));
            obj.insert(format!("{name}_latency_completed_per_sec"), n(s.completed_per_sec));
            obj.insert(format!("{name}_producer_late_p99_us"), n(s.late.p99_us));
            obj.insert(format!("{name}_latency_unfinished"), json!(s.unfinished));
            obj.insert(format!("{name}_cycles"), json!(s.cycles));
            obj.insert(
                format!("{name}_cycles_per_sec_rounds"),
                json!(s.rounds_cycles_per_sec.iter().map(|&v| n(v)).collect::<Vec<_>>()),
            );
            obj.insert(format!("{name}_server_cpu_us_per_cycle"), n(s.server_cpu_us_per_cycle));
            obj.insert(
                format!("{name}_generator_cpu_us_per_cycle"),
                n(s.generator_cpu_us_per_cycle),
            );
        }
        obj.insert("latency_jobs".into(), json!(sp.latency_jobs));
        obj.insert("server_flags".into(), json!(flags));
        if let (Some(a), Some(b)) = (sp.put_pipelined, bs.put_pipelined) {
            obj.insert("spindled_put_pipelined_jobs_per_sec".into(), n(a));
            obj.insert("beanstalkd_put_pipelined_jobs_per_sec".into(), n(b));
            let batch = sp.batch_put.flatten();
            let mut rows =
                vec![row(&format!("{} pipelined puts per round trip", o.batch), a, b, "jobs/s")];
            match batch {
                Some(v) => {
                    rows.push(vec![
                        format!("put-batch of {} (spindled extension)", o.batch),
                        f(v),
                        "-".into(),
                        format!("{:.2} (vs pipelined puts)", ratio(v, b)),
                        "jobs/s".into(),
                    ]);
                    batch_put = n(v);
                }
                None => {
                    rows.push(vec![
                        "put-batch (spindled extension)".into(),
                        "UNKNOWN_COMMAND".into(),
                        "-".into(),
                        "-".into(),
                        "".into(),
                    ]);
                }
            }
            r.table(
                &format!(
                    "{} ({flags}): puts on one connection, {} s each, one request in flight",
                    m.mode.name(),
                    o.put_seconds
                ),
                &header,
                rows,
            );
        }
        r.set(m.mode.name(), Value::Object(obj));
    }
    r.set("batch_put_jobs_per_sec", batch_put.clone());
    if runs.iter().any(|m| m.spindled.batch_put == Some(None)) {
        r.note("put-batch: spindled answered UNKNOWN_COMMAND, batch_put_jobs_per_sec is null");
    }
    if env.same_binary {
        r.note("harness check: --spindled is beanstalkd itself, so both sides are beanstalkd (ratio should be ~1)");
    }
    r.note(CYCLE);
    r.note(LATENCY);
    r.note(format!(
        "{} cores: the generator (and its threads) runs on the same cores as the server",
        env.cores
    ));
    r.set("cores", env.cores as u64);
    r.set("cycle_definition", CYCLE);
    r.set("latency_definition", LATENCY);
    r.set("latency_rate", n(o.rate));
    r.set("seconds", n(o.seconds));
    r.set("connections", o.connections as u64);
    r.set("window", o.window as u64);
    r.set("batch", o.batch as u64);
    r.set("repeat", o.repeat as u64);
    r.set("put_seconds", n(o.put_seconds));
    r.set("fsync_ms", o.fsync_ms);
    r.set("spindled_io_loops", o.io_loops);
    r.set("body_bytes", BODY.len() as u64);
    r.set("spindled_path", env.spindled.display().to_string());
    r.set("spindled_version", env.spindled_version);
    r.set("beanstalkd_path", env.beanstalkd.display().to_string());
    r.set("beanstalkd_version", env.beanstalkd_version);
    r.set("harness_check_both_beanstalkd", env.same_binary);
    r.set("data_fs_type", env.data_fs.clone().map_or(Value::Null, Value::from));
    r.set("machine_at_start", env.busy_start.to_json());
    r.set("machine_at_end", env.busy_end.to_json());
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_parse_strictly() {
        assert_eq!(number(b"0"), Some(0));
        assert_eq!(number(b"18446744073709551"), Some(18_446_744_073_709_551));
        assert_eq!(number(b""), None);
        assert_eq!(number(b"12a"), None);
        assert_eq!(number(b"-1"), None);
    }

    #[test]
    fn put_batch_frames() {
        let c = put_batch_command(2);
        assert_eq!(
            c,
            b"put-batch 1024 0 60 2\r\n16\r\nspindle-bench-16\r\n16\r\nspindle-bench-16\r\n"
                .to_vec()
        );
    }

    #[test]
    fn medians() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0]), 2.5);
        assert!(median(Vec::new()).is_nan());
    }

    #[test]
    fn proc_stat_of_self() {
        assert!(self_cpu_seconds().is_some_and(|s| s >= 0.0));
    }

    #[test]
    fn the_peer_must_be_named() {
        let args = |v: &[&str]| Args::new(v.iter().map(|s| s.to_string()).collect());
        assert!(PeerOpts::parse(args(&["--json"])).is_err());
        assert!(PeerOpts::parse(args(&["beanstalkd", "--window", "0"])).is_err());
        let o = PeerOpts::parse(args(&["beanstalkd", "--seconds", "1", "--json"]));
        assert!(o.is_ok_and(|o| o.json && o.seconds == 1.0 && o.window == 64));
    }
}
