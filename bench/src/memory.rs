//! The `memory` scenario: resident memory per idle connection, per
//! half-written put and per queued 100-byte job, for `spindled` next to
//! Debian's `beanstalkd`, and per queued job for the library (issue 14,
//! item 3; the goals are in `DESIGN.md`, "Figures we aim for").
//!
//! Daemons (each started fresh for each step, on a private Unix socket;
//! the figure is the growth of the server's resident anonymous memory,
//! `RssAnon` of /proc/PID/status, divided by the count):
//!
//! 1. **Idle connections.** `N` connections each send `use default` and
//!    read the reply, then stay open; then all close (the figure after
//!    close is what stays resident).
//! 2. **Half-written puts.** `N` connections each send `put 0 0 60 60000`
//!    and the first 30,000 bytes of the body, and stop.
//! 3. **Queued jobs.** `M` pipelined 100-byte puts (`-b DIR`); the figure
//!    is per job less the 100 body bytes. The server is stopped with
//!    SIGTERM and started again on the same directory: the recovered figure
//!    is measured against a server started on an empty directory.
//!
//! Library (in this process, glibc's malloc): `M` jobs of 100 bytes
//! submitted while the engine's one shard is inside a first job (so they
//! wait where a busy shard keeps them: its lane), in `Memory` and
//! `Process` mode; and `M` jobs of a queue without a handler (they wait in
//! the table), in `Process` mode, before and after a restart. The figure
//! is this process's `RssAnon` growth per job less the 100 body bytes.

use crate::args::Args;
use crate::peer::{locate_beanstalkd, locate_spindled, Server};
use crate::report::Report;
use crate::BoxResult;
use spindle_engine::{Durability, Engine, Job, JobRef, Outcome};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

/// Usage text of the scenario.
pub const USAGE: &str = "\
spindle-bench memory [options]

Resident memory per idle connection, per half-written put and per queued
100-byte job (overhead beyond the body, before and after a restart) for
spindled next to beanstalkd, and per queued job for the library.

options:
  --connections N   idle connections and half-written puts (default 2000)
  --jobs M          queued jobs (default 200000)
  --no-library      skip the library figures
  --spindled PATH   spindled binary (default: next to this executable)
  --beanstalkd PATH beanstalkd binary (default: PATH, /usr/bin)
  --json            print JSON";

/// Parsed options.
#[derive(Debug, Clone)]
pub struct MemoryOpts {
    connections: usize,
    jobs: usize,
    library: bool,
    /// Internal: measure one library case in this process and print it.
    case: Option<String>,
    /// Internal: the data directory of a `--case`.
    dir: Option<PathBuf>,
    spindled: Option<PathBuf>,
    beanstalkd: Option<PathBuf>,
    /// Print JSON.
    pub json: bool,
}

impl MemoryOpts {
    /// Reads the scenario's options.
    pub fn parse(mut a: Args) -> BoxResult<MemoryOpts> {
        let o = MemoryOpts {
            connections: a.value_or("--connections", 2000)?,
            jobs: a.value_or("--jobs", 200_000)?,
            library: !a.flag("--no-library"),
            case: a.value("--case")?,
            dir: a.value("--dir")?,
            spindled: a.value("--spindled")?,
            beanstalkd: a.value("--beanstalkd")?,
            json: a.flag("--json"),
        };
        a.finish()?;
        if !(1..=50_000).contains(&o.connections) {
            return Err("--connections must be 1..=50000".into());
        }
        if !(1000..=10_000_000).contains(&o.jobs) {
            return Err("--jobs must be 1000..=10000000".into());
        }
        Ok(o)
    }
}

/// Resident anonymous memory of process `pid` ("self" for this one).
fn rss_anon(pid: &str) -> BoxResult<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = s
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or("no RssAnon in /proc/PID/status")?;
    Ok(kib * 1024.0)
}

fn server_rss(s: &Server) -> BoxResult<f64> {
    rss_anon(&s.pid().to_string())
}

/// Reads one `\r\n`-terminated reply line.
fn line(r: &mut BufReader<UnixStream>) -> BoxResult<String> {
    let mut l = String::new();
    r.read_line(&mut l)?;
    Ok(l)
}

/// Waits until the server has accepted `n` connections besides `c`'s own.
fn wait_connections(c: &mut UnixStream, n: usize) -> BoxResult<()> {
    wait_stat(c, &format!("current-connections: {}", n + 1))
}

/// Polls `stats` on `c` until a line reads `want`.
fn wait_stat(c: &mut UnixStream, want: &str) -> BoxResult<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut r = BufReader::new(c.try_clone()?);
    loop {
        c.write_all(b"stats\r\n")?;
        let head = line(&mut r)?;
        let len: usize = head
            .trim_end()
            .strip_prefix("OK ")
            .and_then(|v| v.parse().ok())
            .ok_or(format!("stats: unexpected reply {head:?}"))?;
        let mut body = vec![0u8; len + 2];
        std::io::Read::read_exact(&mut r, &mut body)?;
        if String::from_utf8_lossy(&body).lines().any(|l| l == want) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("the server did not reach {want}").into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The figures of one daemon.
struct DaemonFigures {
    idle: f64,
    closed: f64,
    half_put: f64,
    job: f64,
    recovered: f64,
}

fn start(label: &'static str, exe: &Path, dir: &Path, data: Option<&Path>) -> BoxResult<Server> {
    let sock = dir.join(format!("{label}.sock"));
    let _ = std::fs::remove_file(&sock);
    Server::start(label, exe, sock, data, 50, 1, &dir.join(format!("{label}.log")))
}

fn daemon(label: &'static str, exe: &Path, o: &MemoryOpts) -> BoxResult<DaemonFigures> {
    let tmp = tempfile::tempdir()?;
    let n = o.connections;
    // 1. Idle connections.
    let s = start(label, exe, tmp.path(), None)?;
    let mut probe = UnixStream::connect(s.socket())?;
    wait_connections(&mut probe, 0)?;
    let before = server_rss(&s)?;
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        let mut c = UnixStream::connect(s.socket())?;
        c.write_all(b"use default\r\n")?;
        conns.push(c);
    }
    for c in &conns {
        let mut r = BufReader::new(c.try_clone()?);
        line(&mut r)?;
    }
    wait_connections(&mut probe, n)?;
    let idle = (server_rss(&s)? - before) / n as f64;
    drop(conns);
    wait_connections(&mut probe, 0)?;
    let closed = (server_rss(&s)? - before) / n as f64;
    drop((probe, s));
    // 2. Half-written puts.
    let s = start(label, exe, tmp.path(), None)?;
    let mut probe = UnixStream::connect(s.socket())?;
    wait_connections(&mut probe, 0)?;
    let before = server_rss(&s)?;
    let half = vec![b'x'; 30_000];
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        let mut c = UnixStream::connect(s.socket())?;
        c.write_all(b"put 0 0 60 60000\r\n")?;
        c.write_all(&half)?;
        conns.push(c);
    }
    wait_connections(&mut probe, n)?;
    // A command after the halves: the server has read what it could.
    probe.write_all(b"use sync\r\n")?;
    line(&mut BufReader::new(probe.try_clone()?))?;
    let half_put = (server_rss(&s)? - before) / n as f64;
    drop((conns, probe, s));
    // 3. Queued jobs, then recovered.
    let data = tmp.path().join("data");
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&data)?;
    std::fs::create_dir_all(&empty)?;
    let mut s = start(label, exe, tmp.path(), Some(&data))?;
    let mut c = UnixStream::connect(s.socket())?;
    wait_connections(&mut c, 0)?;
    let before = server_rss(&s)?;
    let one = format!("put 0 0 60 100\r\n{}\r\n", "y".repeat(100));
    let round = 1000;
    let batch = one.repeat(round);
    let mut r = BufReader::new(c.try_clone()?);
    for _ in 0..o.jobs / round {
        c.write_all(batch.as_bytes())?;
        for _ in 0..round {
            let l = line(&mut r)?;
            if !l.starts_with("INSERTED ") {
                return Err(format!("{label}: put got {l:?}").into());
            }
        }
    }
    let jobs = (o.jobs / round * round) as f64;
    let job = (server_rss(&s)? - before) / jobs - 100.0;
    drop((r, c));
    s.terminate()?;
    let e = start(label, exe, tmp.path(), Some(&empty))?;
    let base = server_rss(&e)?;
    drop(e);
    let s = start(label, exe, tmp.path(), Some(&data))?;
    let mut c = UnixStream::connect(s.socket())?;
    wait_stat(&mut c, &format!("current-jobs-ready: {jobs}"))?;
    let recovered = (server_rss(&s)? - base) / jobs - 100.0;
    Ok(DaemonFigures { idle, closed, half_put, job, recovered })
}

/// An engine whose one shard is inside a first job until `release`.
fn held(d: Durability, dir: &Path) -> BoxResult<(Engine, mpsc::Sender<()>)> {
    let mut b = Engine::builder().shards(1).work_stealing(false).durability(d);
    if d != Durability::Memory {
        b = b.data_dir(dir);
    }
    let engine = b.build()?;
    let (started_tx, started_rx) = mpsc::channel::<()>();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let (started_tx, release_rx) = (Mutex::new(started_tx), Mutex::new(release_rx));
    engine.register("q", move |job: &JobRef<'_>| {
        if job.payload() == b"hold" {
            if let Ok(t) = started_tx.lock() {
                let _ = t.send(());
            }
            if let Ok(r) = release_rx.lock() {
                let _ = r.recv_timeout(Duration::from_secs(600));
            }
        }
        Outcome::Done
    })?;
    engine.submit(Job::new("q", b"hold".to_vec()))?;
    started_rx.recv_timeout(Duration::from_secs(30))?;
    Ok((engine, release_tx))
}

fn submit_all(engine: &Engine, queue: &str, m: usize) -> BoxResult<f64> {
    let round = 1000;
    for _ in 0..m / round {
        let jobs = (0..round).map(|_| Job::new(queue.to_owned(), vec![b'x'; 100])).collect();
        engine.submit_batch(jobs)?;
    }
    Ok((m / round * round) as f64)
}

/// Waits until `queue` has `n` ready jobs.
fn wait_ready(engine: &Engine, queue: &str, n: u64) -> BoxResult<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while engine.stats().queues.get(queue).is_none_or(|q| q.ready != n) {
        if Instant::now() > deadline {
            return Err(format!("{queue}: {n} ready jobs did not appear").into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// The library cases, each measured in a fresh process (`--case`): a
/// process that already allocated and freed reuses that memory, which
/// would hide the growth.
const CASES: [(&str, &str); 3] = [
    ("memory-lane", "Memory, lane"),
    ("process-lane", "Process, lane"),
    ("process-table", "Process, table"),
];

/// Measures one library case in this process: the bytes of overhead per
/// job, or for `fill`, `empty` and `recover` (on `dir`) a raw figure.
fn library_case(case: &str, m: usize, dir: Option<&Path>) -> BoxResult<f64> {
    let tmp = tempfile::tempdir()?;
    let build =
        |p: &Path| Engine::builder().shards(1).durability(Durability::Process).data_dir(p).build();
    let dir = dir.unwrap_or(tmp.path());
    match case {
        "memory-lane" | "process-lane" => {
            let d = if case == "memory-lane" { Durability::Memory } else { Durability::Process };
            let (engine, release) = held(d, dir)?;
            let before = rss_anon("self")?;
            let n = submit_all(&engine, "q", m)?;
            let per = (rss_anon("self")? - before) / n - 100.0;
            let _ = release.send(());
            engine.shutdown()?;
            Ok(per)
        }
        "process-table" | "fill" => {
            let engine = build(dir)?;
            let before = rss_anon("self")?;
            let n = submit_all(&engine, "t", m)?;
            wait_ready(&engine, "t", n as u64)?;
            let per = (rss_anon("self")? - before) / n - 100.0;
            engine.shutdown()?;
            Ok(per)
        }
        // The growth of building an engine on `dir` (empty, or with the
        // jobs `fill` left), until its jobs are ready.
        "empty" | "recover" => {
            let before = rss_anon("self")?;
            let engine = build(dir)?;
            if case == "recover" {
                wait_ready(&engine, "t", (m / 1000 * 1000) as u64)?;
            } else {
                engine.stats();
            }
            let grown = rss_anon("self")? - before;
            engine.shutdown()?;
            Ok(grown)
        }
        other => Err(format!("--case {other:?}: unknown").into()),
    }
}

/// Runs `case` in a child process and reads its figure.
fn child(case: &str, m: usize, dir: Option<&Path>) -> BoxResult<f64> {
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.args(["memory", "--case", case, "--jobs", &m.to_string()]);
    if let Some(d) = dir {
        cmd.arg("--dir").arg(d);
    }
    let run = cmd.output()?;
    let text = String::from_utf8_lossy(&run.stdout);
    text.trim().parse().map_err(|_| {
        format!(
            "library case {case}: {}{}",
            text.trim(),
            String::from_utf8_lossy(&run.stderr).trim()
        )
        .into()
    })
}

/// Library figures: (label, bytes of overhead per job), each case in a
/// child process; the recovered figure is a restart's growth less an
/// empty engine's, each in a process of its own.
fn library(o: &MemoryOpts) -> BoxResult<Vec<(&'static str, f64)>> {
    let mut out = Vec::new();
    for (case, label) in CASES {
        out.push((label, child(case, o.jobs, None)?));
    }
    let data = tempfile::tempdir()?;
    let empty = tempfile::tempdir()?;
    child("fill", o.jobs, Some(data.path()))?;
    let fixed = child("empty", o.jobs, Some(empty.path()))?;
    let grown = child("recover", o.jobs, Some(data.path()))?;
    let n = (o.jobs / 1000 * 1000) as f64;
    out.push(("Process, recovered", (grown - fixed) / n - 100.0));
    Ok(out)
}

/// Runs the scenario.
pub fn run(o: &MemoryOpts) -> BoxResult<Report> {
    if let Some(case) = &o.case {
        println!("{:.0}", library_case(case, o.jobs, o.dir.as_deref())?);
        std::process::exit(0);
    }
    let spindled = locate_spindled(o.spindled.as_deref())?;
    let beanstalkd = locate_beanstalkd(o.beanstalkd.as_deref())?;
    let mut rep = Report::new("memory: resident bytes per connection and per job");
    rep.note(format!(
        "{} connections, {} jobs of 100 bytes; RssAnon growth per object (jobs: less the body)",
        o.connections, o.jobs
    ));
    let mut rows = Vec::new();
    for (label, exe) in [("spindled", &spindled), ("beanstalkd", &beanstalkd)] {
        let f = daemon(label, exe, o)?;
        let key = |k: &str| format!("{label}_{k}");
        rep.set(&key("idle_connection_bytes"), f.idle.round());
        rep.set(&key("closed_connection_bytes"), f.closed.round());
        rep.set(&key("half_put_bytes"), f.half_put.round());
        rep.set(&key("job_overhead_bytes"), f.job.round());
        rep.set(&key("recovered_job_overhead_bytes"), f.recovered.round());
        rows.push(vec![
            label.to_string(),
            format!("{:.0}", f.idle),
            format!("{:.0}", f.closed),
            format!("{:.0}", f.half_put),
            format!("{:.0}", f.job),
            format!("{:.0}", f.recovered),
        ]);
    }
    rep.table(
        "daemons (bytes; goal: idle connection <= 8192, job overhead <= 150)",
        &["server", "idle conn", "after close", "half put", "job", "recovered job"],
        rows,
    );
    if o.library {
        let lib = library(o)?;
        let rows =
            lib.iter().map(|(l, v)| vec![l.to_string(), format!("{v:.0}")]).collect::<Vec<_>>();
        for (l, v) in &lib {
            let key = format!("library_{}_job_overhead_bytes", l.replace(", ", "_").to_lowercase());
            rep.set(&key, v.round());
        }
        rep.table(
            "library, glibc malloc (bytes of overhead per 100-byte job; goal <= 150)",
            &["where the jobs wait", "job"],
            rows,
        );
    }
    Ok(rep)
}
