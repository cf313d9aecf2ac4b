//! The daemon's side of the `crash` campaign (`crash.rs`): `spindled` on a
//! trial directory, three client connections driving a mixed load, a kill
//! -9, a restart on the same directory and the books checked.
//!
//! The load, per connection, one command at a time: `put` (ready, delayed
//! by a second, delayed by an hour), `put-batch` of 1–8 jobs, `reserve`
//! (with timeout 0), and of a job it holds `delete`, `release` (now or
//! delayed) or `bury`, and `kick-job` of a job it buried. (Only the
//! connection that holds or buried a job changes its state, so the books
//! know which states each job may be in.) Every body is unique (it names its connection,
//! round and sequence number) and carries filler of random length.
//!
//! The books, after the restart, in `process`, `process-nofsync` and `sync`
//! (a kill -9 of the process must lose nothing acknowledged in any of
//! them, DESIGN.md):
//!
//! * every acknowledged put (`INSERTED`, `INSERTED-BATCH`) whose delete was
//!   not sent is there, with its body, exactly once: every id up to past
//!   the highest one seen is peeked, and no body appears under two ids;
//! * no job whose `DELETED` was received is there;
//! * a put or delete whose reply was lost in the kill may count either way,
//!   and a job nobody acknowledged is allowed only as such a put's body;
//! * each job is in a state its last acknowledged command allows
//!   (`stats-job`): `buried` after `bury`, `ready` after `kick-job`, a
//!   reservation, a release or a put without delay, `delayed` after an hour's
//!   delay, either after a second's; a command whose reply was lost allows
//!   the states before and after it;
//! * the jobs found by id add up to the counts of `stats`;
//! * ids are never reused: a put after the restart gets an id above every
//!   id seen.
//!
//! During the load, a reserved job's body must be the one put, and a job
//! whose delete was acknowledged must never be reserved.
//!
//! In `memory` mode the restarted daemon must hold no job.

use crate::burst_trace::Rng;
use crate::crash::{below, CrashOpts, Mode, RoundBooks, Trigger};
use crate::BoxResult;
use spindle_client::{Client, ClientError};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub(crate) use crate::peer::locate_spindled;

/// Client connections driving the load.
const CONNECTIONS: usize = 3;
/// Longest wait for a (re)started daemon to accept a connection, and for
/// any reply.
const DEADLINE: Duration = Duration::from_secs(30);
/// The time-to-run of every job: far longer than a round.
const TTR: Duration = Duration::from_secs(600);

/// A delete's progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Del {
    /// Not sent.
    No,
    /// Sent, reply not (yet) received.
    InFlight,
    /// `DELETED` received: the job must never come back.
    Acked,
}

/// States a job may be found in after a restart, as bits: a reserved job
/// comes back `ready`, a job delayed by a second may have become ready.
const READY: u8 = 1;
const DELAYED: u8 = 2;
const BURIED: u8 = 4;

/// What the clients know about one id.
#[derive(Clone, Debug)]
struct Entry {
    /// The body, from the put or from a reservation.
    body: Vec<u8>,
    /// The put's reply was received (or a restart found the job).
    put_acked: bool,
    del: Del,
    /// The states (bits) a restart may find it in.
    allowed: u8,
    /// Bumped by every change of `allowed` from a reply, so a reply handled
    /// late does not overwrite what a later command on the job (by
    /// another connection, once this one's took effect) set.
    changes: u64,
}

/// The states a job delayed by `delay` may be found in.
fn after_delay(delay: Duration) -> u8 {
    if delay.is_zero() {
        READY
    } else if delay <= Duration::from_secs(1) {
        DELAYED | READY
    } else {
        DELAYED
    }
}

fn state_names(bits: u8) -> Vec<&'static str> {
    [(READY, "ready"), (DELAYED, "delayed"), (BURIED, "buried")]
        .into_iter()
        .filter(|(b, _)| bits & b != 0)
        .map(|(_, n)| n)
        .collect()
}

/// The books of one trial, shared by the connections.
#[derive(Default)]
struct Book {
    jobs: BTreeMap<u64, Entry>,
    /// Bodies of puts sent whose reply has not been received.
    pending_puts: HashSet<Vec<u8>>,
    /// Violations seen during the load.
    violations: Vec<String>,
    acked_puts: u64,
    acked_deletes: u64,
}

/// State shared by the load's threads and the killer.
struct Shared {
    book: Mutex<Book>,
    /// Acknowledged commands, all connections.
    ops: AtomicU64,
    /// Set just before the SIGKILL: an I/O error after it is the kill.
    killed: AtomicBool,
}

impl Shared {
    fn book(&self) -> MutexGuard<'_, Book> {
        // A worker that panicked leaves the books as they were.
        self.book.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running `spindled`, killed (SIGKILL) and reaped on drop.
struct Daemon {
    child: Option<Child>,
    socket: PathBuf,
    log: PathBuf,
}

/// How the daemon writes its log (`--log-write`, `--no-log-prefault`).
#[derive(Clone, Copy, Debug)]
enum LogWrite {
    /// `pwritev` per loop iteration (the default).
    Pwrite,
    /// Stores through the mapping, new segments faulted in ahead.
    Mmap,
    /// Stores through the mapping, appends taking the page faults.
    MmapNoPrefault,
}

impl LogWrite {
    fn args(self) -> &'static [&'static str] {
        match self {
            LogWrite::Pwrite => &[],
            LogWrite::Mmap => &["--log-write", "mmap"],
            LogWrite::MmapNoPrefault => &["--log-write", "mmap", "--no-log-prefault"],
        }
    }
}

impl Daemon {
    /// Starts `bin` on `dir` and waits (polling, with a deadline) until it
    /// accepts a connection.
    fn start(
        bin: &Path,
        dir: &Path,
        mode: Mode,
        segment: u64,
        loops: u64,
        write: LogWrite,
    ) -> BoxResult<Daemon> {
        let socket = dir.join("sock");
        let data = dir.join("data");
        let log = dir.join("spindled.log");
        let mut cmd = Command::new(bin);
        // Segments hold at least two of the largest job: -z keeps them small.
        cmd.arg("--socket").arg(&socket).args(["-s", &segment.to_string(), "-z", "4096"]);
        cmd.args(["--io-loops", &loops.to_string()]);
        cmd.args(write.args());
        match mode {
            Mode::Memory => {
                cmd.args(["--durability", "memory"]);
            }
            Mode::Process => {
                cmd.arg("-b").arg(&data);
            }
            Mode::ProcessNoFsync => {
                cmd.arg("-b").arg(&data).arg("-F");
            }
            Mode::Sync => {
                cmd.arg("-b").arg(&data).args(["--durability", "sync"]);
            }
        }
        let err = std::fs::OpenOptions::new().create(true).append(true).open(&log)?;
        let child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(err).spawn()?;
        let mut d = Daemon { child: Some(child), socket, log };
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(c) = d.child.as_mut() {
                if let Some(status) = c.try_wait()? {
                    d.child = None;
                    return Err(
                        format!("spindled exited at start ({status}){}", d.log_tail()).into()
                    );
                }
            }
            if d.socket.exists() {
                if let Ok(c) = d.connect() {
                    let _ = c.quit();
                    return Ok(d);
                }
            }
            if Instant::now() > deadline {
                return Err(
                    format!("spindled did not start in {DEADLINE:?}{}", d.log_tail()).into()
                );
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn connect(&self) -> Result<Client, ClientError> {
        let mut c = Client::connect_unix(&self.socket)?;
        c.set_io_timeout(Some(DEADLINE))?;
        Ok(c)
    }

    /// Whether the process has exited on its own.
    fn exited(&mut self) -> Option<String> {
        let c = self.child.as_mut()?;
        match c.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            _ => None,
        }
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The end of the daemon's log, for messages.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(15)..].join("\n    ");
        if tail.is_empty() {
            String::new()
        } else {
            format!("; spindled's log ends:\n    {tail}")
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// One trial of `rounds` kill/restart rounds on `dir`; returns its setup
/// in words and the rounds' books.
pub(crate) fn trial(
    bin: &Path,
    dir: &Path,
    mode: Mode,
    seed: u64,
    o: &CrashOpts,
) -> BoxResult<(String, Vec<RoundBooks>)> {
    let mut rng = Rng::new(seed);
    // One event loop (like beanstalkd), or two: connections on the second
    // reach the job table's owner through the cross-loop path.
    let loops = 1 + below(&mut rng, 2);
    // Appends through the file (the default), or stores through the
    // mapping with new segments faulted in ahead by a helper thread, or
    // not: each writes and rolls over by another path.
    let write =
        [LogWrite::Pwrite, LogWrite::Mmap, LogWrite::MmapNoPrefault][below(&mut rng, 3) as usize];
    let start = || Daemon::start(bin, dir, mode, o.segment, loops, write);
    let mut daemon = start()?;
    let mut carried = Book::default();
    let mut rounds = Vec::new();
    for round in 0..o.rounds {
        let trigger = match mode {
            Mode::Memory => Trigger::Ops(1 + below(&mut rng, o.max_ops)),
            _ => Trigger::draw(&mut rng, o.max_ops),
        };
        let shared = Arc::new(Shared {
            book: Mutex::new(std::mem::take(&mut carried)),
            ops: AtomicU64::new(0),
            killed: AtomicBool::new(false),
        });
        let mut books = RoundBooks::default();
        let load_seed = rng.next_u64();
        load_and_kill(&mut daemon, &shared, trigger, round, load_seed, o.max_ops, &mut books)?;
        if o.inject_loss {
            crate::crash::lose_log(&dir.join("data"))?;
        }
        daemon = start()?;
        let mut book = std::mem::take(&mut *shared.book());
        books.acked_puts = book.acked_puts;
        books.acked_deletes = book.acked_deletes;
        books.violations.append(&mut book.violations);
        books.in_flight = book.pending_puts.len() as u64
            + book.jobs.values().filter(|e| e.del == Del::InFlight).count() as u64;
        if mode == Mode::Memory {
            check_empty(&daemon, &mut books)?;
            carried = Book::default();
        } else {
            check(&daemon, &mut book, &mut books)?;
            carried = book;
        }
        if !books.violations.is_empty() {
            let tail = daemon.log_tail();
            books.context = format!("trigger {trigger:?}{tail}");
        }
        rounds.push(books);
    }
    let setup = format!(
        "{loops} event loop{}{}",
        if loops == 1 { "" } else { "s" },
        match write.args() {
            [] => String::new(),
            a => format!(", {}", a.join(" ")),
        }
    );
    Ok((setup, rounds))
}

/// Runs the load until the trigger fires, then kills the daemon and waits
/// for the connections to end.
fn load_and_kill(
    daemon: &mut Daemon,
    shared: &Arc<Shared>,
    trigger: Trigger,
    round: u32,
    seed: u64,
    max_ops: u64,
    books: &mut RoundBooks,
) -> BoxResult<()> {
    let mut workers = Vec::new();
    for conn in 0..CONNECTIONS {
        let c = daemon.connect()?;
        let sh = Arc::clone(shared);
        let s = seed.wrapping_add(conn as u64 * 0x9E37_79B9);
        workers.push(std::thread::spawn(move || load(c, &sh, conn, round, s)));
    }
    let mut monitor = match trigger {
        Trigger::Ops(_) => None,
        Trigger::Rollover(_) | Trigger::Compaction(_) => Some(daemon.connect()?),
    };
    let mut base: Option<u64> = None;
    let deadline = Instant::now() + Duration::from_secs(120);
    let kill = loop {
        let ops = shared.ops.load(Ordering::Relaxed);
        if ops >= max_ops {
            break format!("cap {ops}");
        }
        if let Some(status) = daemon.exited() {
            shared.book().violations.push(format!(
                "spindled exited on its own during the load ({status}){}",
                daemon.log_tail()
            ));
            break "none (exited)".to_string();
        }
        if workers.iter().all(|w| w.is_finished()) {
            break format!("none (every connection ended after {ops} ops)");
        }
        if Instant::now() > deadline {
            break format!("deadline {ops}");
        }
        let key = match trigger {
            Trigger::Ops(n) => {
                if ops >= n {
                    break format!("ops {ops}");
                }
                std::thread::sleep(Duration::from_micros(200));
                continue;
            }
            Trigger::Rollover(_) => "binlog-current-index",
            Trigger::Compaction(_) => "binlog-records-migrated",
        };
        let warm = match trigger {
            Trigger::Rollover(w) | Trigger::Compaction(w) => w,
            Trigger::Ops(_) => 0,
        };
        // `stats` costs the daemon more than a put: ask every 500 µs.
        std::thread::sleep(Duration::from_micros(500));
        let Some(mon) = monitor.as_mut() else { break "none".to_string() };
        let value = match mon.stats() {
            Ok(s) => s.get_u64(key),
            Err(e) => {
                shared.book().violations.push(format!("stats on the monitor connection: {e}"));
                break "none (monitor failed)".to_string();
            }
        };
        if ops < warm || base.is_none() {
            base = value;
        } else if value != base {
            break match trigger {
                Trigger::Rollover(_) => format!("rollover {ops}"),
                _ => format!("compaction {ops}"),
            };
        }
    };
    shared.killed.store(true, Ordering::SeqCst);
    daemon.kill9();
    for w in workers {
        if w.join().is_err() {
            shared.book().violations.push("a load thread panicked".into());
        }
    }
    books.kill = kill;
    Ok(())
}

/// How a command ended, when it did not end with its expected reply.
enum Stop {
    /// The connection is gone: the command's reply was lost.
    Lost,
}

/// Sorts a client error: I/O after the kill is the kill; anything else is
/// recorded as a violation and ends the connection too.
fn failed(sh: &Shared, what: &str, e: ClientError) -> Stop {
    let io = matches!(
        e,
        ClientError::Io { .. } | ClientError::Broken { .. } | ClientError::Protocol { .. }
    );
    if !(io && sh.killed.load(Ordering::SeqCst)) {
        sh.book().violations.push(format!("{what}: {e}"));
    }
    Stop::Lost
}

/// A unique body: names the connection, round and sequence number.
fn body(rng: &mut Rng, conn: usize, round: u32, seq: u64) -> Vec<u8> {
    let mut b = format!("crash c{conn} r{round} n{seq} ").into_bytes();
    let len = below(rng, 2000) as usize;
    let x = rng.next_u64();
    b.extend((0..len).map(|i| b'a' + ((x >> (i % 60)) as usize + i) as u8 % 26));
    b
}

/// One connection's load, until its connection fails.
fn load(mut c: Client, sh: &Shared, conn: usize, round: u32, seed: u64) {
    let mut rng = Rng::new(seed);
    let batches = c.supports_extensions().unwrap_or(false);
    let mut held: Vec<u64> = Vec::new();
    let mut buried: Vec<u64> = Vec::new();
    let mut seq = 0u64;
    loop {
        let pick = below(&mut rng, 100);
        // Puts bring about 0.38 jobs per command and deletes take 0.28,
        // so the live set stays well below what the log holds and
        // compaction passes run.
        let r = if held.len() > 4 && pick < 50 {
            delete(&mut c, sh, &mut held, &mut rng)
        } else if pick < 20 {
            seq += 1;
            let b = body(&mut rng, conn, round, seq);
            put(&mut c, sh, &mut rng, b)
        } else if pick >= 97 && !buried.is_empty() {
            let id = buried.swap_remove(below(&mut rng, buried.len() as u64) as usize);
            change(sh, id, READY, || c.kick_job(id), "kick-job")
        } else if pick < 24 && batches {
            let n = 1 + below(&mut rng, 8);
            let bodies: Vec<Vec<u8>> = (0..n)
                .map(|_| {
                    seq += 1;
                    body(&mut rng, conn, round, seq)
                })
                .collect();
            put_batch(&mut c, sh, &mut rng, bodies)
        } else if pick < 62 {
            reserve(&mut c, sh, &mut held)
        } else if held.is_empty() {
            continue;
        } else if pick < 90 {
            delete(&mut c, sh, &mut held, &mut rng)
        } else if pick < 95 {
            let id = held.swap_remove(below(&mut rng, held.len() as u64) as usize);
            let delay = Duration::from_secs(below(&mut rng, 2));
            let pri = below(&mut rng, 100) as u32;
            change(sh, id, after_delay(delay), || c.release(id, pri, delay), "release")
        } else {
            let id = held.swap_remove(below(&mut rng, held.len() as u64) as usize);
            let r = change(sh, id, BURIED, || c.bury(id, 1), "bury");
            buried.push(id);
            r
        };
        match r {
            Ok(()) => {
                sh.ops.fetch_add(1, Ordering::Relaxed);
            }
            Err(Stop::Lost) => return,
        }
    }
}

fn delay_for(rng: &mut Rng) -> Duration {
    match below(rng, 20) {
        0..=16 => Duration::ZERO,
        17..=18 => Duration::from_secs(1),
        _ => Duration::from_secs(3600),
    }
}

fn put(c: &mut Client, sh: &Shared, rng: &mut Rng, body: Vec<u8>) -> Result<(), Stop> {
    sh.book().pending_puts.insert(body.clone());
    let delay = delay_for(rng);
    let id = c.put(below(rng, 1000) as u32, delay, TTR, &body).map_err(|e| failed(sh, "put", e))?;
    acked_put(sh, id, body, after_delay(delay));
    Ok(())
}

fn put_batch(c: &mut Client, sh: &Shared, rng: &mut Rng, bodies: Vec<Vec<u8>>) -> Result<(), Stop> {
    sh.book().pending_puts.extend(bodies.iter().cloned());
    let delay = delay_for(rng);
    let ids = c
        .put_batch(below(rng, 1000) as u32, delay, TTR, &bodies)
        .map_err(|e| failed(sh, "put-batch", e))?;
    if ids.end - ids.start != bodies.len() as u64 {
        sh.book().violations.push(format!("put-batch of {} got ids {ids:?}", bodies.len()));
    }
    for (id, b) in ids.zip(bodies) {
        acked_put(sh, id, b, after_delay(delay));
    }
    Ok(())
}

fn acked_put(sh: &Shared, id: u64, body: Vec<u8>, allowed: u8) {
    let mut book = sh.book();
    book.pending_puts.remove(&body);
    book.acked_puts += 1;
    let mut bad = None;
    match book.jobs.get_mut(&id) {
        // Reserved by another connection before this reply was handled.
        Some(e) if !e.put_acked && e.body == body => e.put_acked = true,
        Some(e) => {
            bad = Some(format!(
                "put got id {id}, which is already known (put acknowledged: {})",
                e.put_acked
            ))
        }
        None => {
            book.jobs
                .insert(id, Entry { body, put_acked: true, del: Del::No, allowed, changes: 0 });
        }
    }
    if let Some(v) = bad {
        book.violations.push(v);
    }
}

fn reserve(c: &mut Client, sh: &Shared, held: &mut Vec<u64>) -> Result<(), Stop> {
    let Some(job) = c.reserve_with_timeout(Duration::ZERO).map_err(|e| failed(sh, "reserve", e))?
    else {
        return Ok(());
    };
    reserved(&mut sh.book(), job.id, job.body);
    held.push(job.id);
    Ok(())
}

/// Books a reservation of job `id` with `body`.
fn reserved(book: &mut Book, id: u64, body: Vec<u8>) {
    let mut bad = None;
    match book.jobs.get(&id) {
        Some(e) if e.del == Del::Acked => {
            bad = Some(format!("reserved job {id}, whose delete was acknowledged"))
        }
        Some(e) if e.body != body => {
            bad = Some(format!("reserved job {id} with a body other than its put's"))
        }
        Some(_) => {}
        None => {
            // Its put's reply is still on the way to another connection,
            // whose thread listed the body before sending the put; any
            // other body is one nobody put.
            if !book.pending_puts.contains(&body) {
                bad = Some(format!("reserved job {id} with a body nobody put"));
            }
            let e = Entry { body, put_acked: false, del: Del::No, allowed: READY, changes: 0 };
            book.jobs.insert(id, e);
        }
    }
    if let Some(v) = bad {
        book.violations.push(v);
    }
    // A restart returns a reserved job to ready.
    if let Some(e) = book.jobs.get_mut(&id) {
        e.allowed = READY;
        e.changes += 1;
    }
}

/// Runs `cmd`, a command that moves job `id` to the states `to`: while
/// its reply is outstanding, the states before and after are allowed.
///
/// Once the command took effect, another connection may reserve the job
/// (a release or a kick made it ready) and change it again before this
/// thread handles the reply: then the entry has changed since, and the
/// later state stands (overwriting it with `to` made false violations,
/// "delayed after the restart, expected ready", in about 1 trial in 10).
fn change(
    sh: &Shared,
    id: u64,
    to: u8,
    cmd: impl FnOnce() -> Result<(), ClientError>,
    what: &str,
) -> Result<(), Stop> {
    let seen = sh.book().jobs.get_mut(&id).map(|e| {
        e.allowed |= to;
        e.changes
    });
    cmd().map_err(|e| failed(sh, &format!("{what} {id}"), e))?;
    if let Some(e) = sh.book().jobs.get_mut(&id) {
        if Some(e.changes) == seen {
            e.allowed = to;
            e.changes += 1;
        }
    }
    Ok(())
}

fn delete(c: &mut Client, sh: &Shared, held: &mut Vec<u64>, rng: &mut Rng) -> Result<(), Stop> {
    let id = held.swap_remove(below(rng, held.len() as u64) as usize);
    if let Some(e) = sh.book().jobs.get_mut(&id) {
        e.del = Del::InFlight;
    }
    c.delete(id).map_err(|e| failed(sh, &format!("delete {id}"), e))?;
    let mut book = sh.book();
    if let Some(e) = book.jobs.get_mut(&id) {
        e.del = Del::Acked;
    }
    book.acked_deletes += 1;
    Ok(())
}

/// `memory` mode: the restarted daemon holds nothing.
fn check_empty(d: &Daemon, books: &mut RoundBooks) -> BoxResult<()> {
    let mut c = d.connect()?;
    let held = live_jobs(&mut c)?;
    if held != 0 {
        books.violations.push(format!("memory mode: {held} jobs after a restart"));
    }
    let _ = c.quit();
    Ok(())
}

fn live_jobs(c: &mut Client) -> BoxResult<u64> {
    let s = c.stats()?;
    let mut n = 0;
    for k in [
        "current-jobs-ready",
        "current-jobs-reserved",
        "current-jobs-delayed",
        "current-jobs-buried",
    ] {
        n += s.get_u64(k).ok_or_else(|| format!("stats has no {k}"))?;
    }
    Ok(n)
}

/// Checks the restarted daemon against `book` (the module's rules), then
/// collapses the book to what was found, for the next round.
fn check(d: &Daemon, book: &mut Book, books: &mut RoundBooks) -> BoxResult<()> {
    let mut c = d.connect()?;
    let total = live_jobs(&mut c)?;
    let known_max = book.jobs.keys().next_back().copied().unwrap_or(0);
    // In-flight puts (at most 8 per connection) may hold ids past the
    // highest one seen; scan on while the count of `stats` is not reached.
    let mut found: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    let mut id = 1;
    while id <= known_max + 64 || (found.len() as u64) < total && id <= known_max + 10_000 {
        if let Some(job) = c.peek(id)? {
            found.insert(id, job.body);
        }
        id += 1;
    }
    let v = &mut books.violations;
    if found.len() as u64 != total {
        v.push(format!("stats counts {total} jobs, a scan of ids 1..{id} found {}", found.len()));
    }
    let mut by_body: HashMap<&[u8], u64> = HashMap::new();
    // The state each checked job was found in, for the next round.
    let mut states: BTreeMap<u64, u8> = BTreeMap::new();
    for (&id, body) in &found {
        if let Some(other) = by_body.insert(body.as_slice(), id) {
            v.push(format!("jobs {other} and {id} have one body: a put came back twice"));
        }
        match book.jobs.get(&id) {
            Some(e) if e.body != *body => v.push(format!(
                "job {id}'s body changed ({} bytes, was {})",
                body.len(),
                e.body.len()
            )),
            Some(e) if e.del == Del::Acked => {
                v.push(format!("job {id} came back after its delete was acknowledged"))
            }
            Some(e) if e.put_acked && e.del == Del::No => {
                books.checked_present += 1;
                let st = c.stats_job(id)?;
                let state = st.get("state").unwrap_or("?");
                let bit = match state {
                    "ready" => READY,
                    "delayed" => DELAYED,
                    "buried" => BURIED,
                    _ => 0,
                };
                if e.allowed & bit == 0 {
                    v.push(format!(
                        "job {id} is {state} after the restart, expected {:?}",
                        state_names(e.allowed)
                    ));
                }
                // A job delayed by a second may be ready by the next check.
                let next = if bit == DELAYED { bit | (e.allowed & READY) } else { bit };
                states.insert(id, next);
            }
            // Its put's or its delete's reply was lost: either way.
            Some(_) => {}
            None if book.pending_puts.contains(body) => {}
            None => v.push(format!(
                "job {id} ({} bytes) was never put{}",
                body.len(),
                String::from_utf8_lossy(&body[..body.len().min(24)])
            )),
        }
    }
    for (id, e) in &book.jobs {
        let here = found.contains_key(id);
        match e.del {
            Del::No if e.put_acked && !here => {
                v.push(format!("acknowledged put of job {id} lost ({} bytes)", e.body.len()))
            }
            Del::Acked if !here => books.checked_gone += 1,
            _ => {}
        }
    }
    // Ids are never reused.
    let seen_max = known_max.max(found.keys().next_back().copied().unwrap_or(0));
    let fresh_body = format!("crash fresh after {seen_max}").into_bytes();
    let fresh = c.put(0, Duration::ZERO, TTR, &fresh_body)?;
    if fresh <= seen_max {
        v.push(format!("id {fresh} given out after the restart; ids up to {seen_max} were seen"));
    }
    found.insert(fresh, fresh_body);
    let _ = c.quit();
    // The next round starts from what is there now.
    for (id, e) in book.jobs.iter_mut() {
        if !found.contains_key(id) {
            e.del = Del::Acked;
        }
    }
    for (id, body) in found {
        // Unchecked (in flight) ones: any state but reserved.
        let allowed = states.get(&id).copied().unwrap_or(READY | DELAYED | BURIED);
        book.jobs.insert(id, Entry { body, put_acked: true, del: Del::No, allowed, changes: 0 });
    }
    book.pending_puts.clear();
    book.acked_puts = 0;
    book.acked_deletes = 0;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn shared_with(id: u64, allowed: u8) -> Shared {
        let mut book = Book::default();
        let e = Entry { body: b"x".to_vec(), put_acked: true, del: Del::No, allowed, changes: 0 };
        book.jobs.insert(id, e);
        Shared { book: Mutex::new(book), ops: AtomicU64::new(0), killed: AtomicBool::new(false) }
    }

    /// Connection A kicks job 1; before A handles the reply, connection B
    /// reserves it and releases it with a second's delay. A restart may
    /// find it delayed or ready, not only ready.
    #[test]
    fn a_late_reply_does_not_overwrite_a_later_change() {
        let sh = shared_with(1, BURIED);
        change(
            &sh,
            1,
            READY,
            || {
                // B, while A's reply is on its way.
                if let Some(e) = sh.book().jobs.get_mut(&1) {
                    e.allowed = READY; // B's reserve
                    e.changes += 1;
                }
                let b = change(&sh, 1, after_delay(Duration::from_secs(1)), || Ok(()), "release");
                assert!(b.is_ok());
                Ok(())
            },
            "kick-job",
        )
        .unwrap_or_else(|_| panic!("the command failed"));
        assert_eq!(sh.book().jobs[&1].allowed, DELAYED | READY);
    }

    /// A job reserved before its put's reply reached the putting thread
    /// is booked; one whose body no put sent is a violation.
    #[test]
    fn a_reserved_body_must_come_from_a_put() {
        let mut book = Book::default();
        book.pending_puts.insert(b"sent".to_vec());
        reserved(&mut book, 7, b"sent".to_vec());
        assert!(book.violations.is_empty(), "{:?}", book.violations);
        assert_eq!(book.jobs[&7].allowed, READY);
        reserved(&mut book, 8, b"invented".to_vec());
        assert_eq!(book.violations, ["reserved job 8 with a body nobody put"]);
    }

    #[test]
    fn a_reply_sets_the_state_it_moved_the_job_to() {
        let sh = shared_with(1, READY);
        assert!(change(&sh, 1, BURIED, || Ok(()), "bury").is_ok());
        assert_eq!(sh.book().jobs[&1].allowed, BURIED);
    }
}
