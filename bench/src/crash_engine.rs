//! The library's side of the `crash` campaign (`crash.rs`): the engine runs
//! in a child process (`spindle-bench crash-child`, hidden), which submits
//! jobs from two producer threads and completes them in its handler; the
//! parent reads what it reports over a pipe, kills it with SIGKILL, then
//! rebuilds the engine on the same directory in its own process and checks
//! the books.
//!
//! The child's load: single submits with priorities, `submit_batch` of 4,
//! submits with a unique key, with a short delay, and to a queue it has no
//! handler for (those wait for the parent's recovered engine); one job in
//! five fails its first attempt and is retried after a backoff. It prints
//! `ACK <id> <seq>` after `submit` (or `submit_batch`) returned the id, and
//! its handler prints `DONE <id>` before it returns `Outcome::Done`.
//!
//! The books, after the rebuild, in `Process` and `Sync` (a kill -9 must
//! lose nothing acknowledged in either, DESIGN.md):
//!
//! * every acknowledged job that had not printed `DONE` runs exactly once
//!   in the recovered engine, with its own payload;
//! * a job that printed `DONE` may run once more (the engine acknowledges
//!   no completion: delivery is at-least-once, and the completion's record
//!   may not have been written), never twice;
//! * a job that was never acknowledged may run (its `submit` was in flight)
//!   only with a payload the child wrote, once;
//! * the recovered engine's job count is what ran, and drains to zero;
//! * a job printed `DONE` at most once before the kill;
//! * ids are never reused: a submit after recovery gets an id above every
//!   id seen.
//!
//! In `Memory` mode the directory must stay empty and a rebuilt engine
//! holds no job.

use crate::args::Args;
use crate::burst_trace::Rng;
use crate::crash::{below, CrashOpts, Mode, RoundBooks, Trigger};
use crate::BoxResult;
use spindle_engine::{Durability, Engine, EngineBuilder, Job, JobRef, Outcome};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// The queue the child's handler completes.
const QUEUE: &str = "crash";
/// A queue without a handler in the child.
const PARKED: &str = "crash-parked";
/// Producer threads in the child.
const PRODUCERS: usize = 2;
/// A guard against hanging on an event that must come; not a
/// synchronisation device.
const WAIT: Duration = Duration::from_secs(60);
/// The engine's default `compact_after_segments`: a shard with more
/// segments than this compacts.
const COMPACT_AFTER: usize = 4;
/// Safety cap on a child's submissions, should its parent vanish.
const CHILD_CAP: u64 = 5_000_000;

fn durability(mode: Mode) -> Durability {
    match mode {
        Mode::Memory => Durability::Memory,
        Mode::Process | Mode::ProcessNoFsync => Durability::Process,
        Mode::Sync => Durability::Sync,
    }
}

fn builder(dir: &Path, mode: Mode, segment: u64, shards: usize) -> EngineBuilder {
    Engine::builder()
        .data_dir(dir)
        .durability(durability(mode))
        .shards(shards)
        .segment_size(segment)
        .pin_threads(false)
        .retry_backoff(Duration::from_millis(1), Duration::from_millis(4))
}

/// The payload of the `seq`-th job: self-describing, with a flag (`r`:
/// fail the first attempt) and filler of varying length.
fn payload(seq: u64) -> Vec<u8> {
    let flag = if seq % 5 == 3 { 'r' } else { '-' };
    let mut p = format!("crash {seq} {flag} ").into_bytes();
    p.extend((0..(seq * 37) % 300).map(|j| b'a' + ((seq + j) % 26) as u8));
    p
}

fn fails_first(p: &[u8]) -> bool {
    p.split(|&b| b == b' ').nth(2) == Some(b"r".as_slice())
}

/// The `seq` of a payload made by [`payload`], if it is exactly that.
fn parse_payload(p: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(p).ok()?;
    let seq: u64 = text.strip_prefix("crash ")?.split(' ').next()?.parse().ok()?;
    (payload(seq) == p).then_some(seq)
}

/// Writes one whole line to stdout; false once the parent is gone.
fn say(line: std::fmt::Arguments<'_>) -> bool {
    let mut out = std::io::stdout().lock();
    out.write_fmt(line).and_then(|()| out.write_all(b"\n")).and_then(|()| out.flush()).is_ok()
}

/// `spindle-bench crash-child --dir D --mode M --segment B --shards N`: the
/// child.
/// Runs until killed (or its parent goes away).
pub(crate) fn child(mut a: Args) -> BoxResult<()> {
    let dir: String = a.value("--dir")?.ok_or("crash-child needs --dir")?;
    let mode = match a.value_or("--mode", "process".to_string())?.as_str() {
        "memory" => Mode::Memory,
        "process" => Mode::Process,
        "sync" => Mode::Sync,
        m => return Err(format!("crash-child: unknown mode {m:?}").into()),
    };
    let segment: u64 = a.value_or("--segment", 64 << 10)?;
    let shards: usize = a.value_or("--shards", 2)?;
    a.finish()?;
    let engine = Arc::new(builder(Path::new(&dir), mode, segment, shards).build()?);
    engine.register(QUEUE, |job: &JobRef<'_>| {
        if fails_first(job.payload()) && job.attempt() == 1 {
            return Outcome::Retry("first attempts of 'r' jobs fail".into());
        }
        say(format_args!("DONE {}", job.id()));
        Outcome::Done
    })?;
    let next = Arc::new(AtomicU64::new(0));
    let mut producers = Vec::new();
    for _ in 0..PRODUCERS {
        let engine = Arc::clone(&engine);
        let next = Arc::clone(&next);
        producers.push(std::thread::spawn(move || produce(&engine, &next)));
    }
    for p in producers {
        match p.join() {
            Ok(r) => r?,
            Err(_) => return Err("a producer panicked".into()),
        }
    }
    Ok(())
}

/// Submits until the parent goes away (or the cap).
fn produce(engine: &Engine, next: &AtomicU64) -> BoxResult<()> {
    loop {
        let seq = next.fetch_add(4, Ordering::Relaxed);
        if seq >= CHILD_CAP {
            return Ok(());
        }
        let acked: Vec<(u64, u64)> = match (seq / 4) % 10 {
            0 => {
                let jobs = (seq..seq + 4).map(|s| Job::new(QUEUE, payload(s))).collect();
                let ids = engine.submit_batch(jobs)?;
                ids.into_iter().map(|id| id.get()).zip(seq..).collect()
            }
            1 => {
                let job = Job::new(QUEUE, payload(seq)).unique_key(format!("key-{seq}"));
                vec![(engine.submit(job)?.get(), seq)]
            }
            2 => {
                let job = Job::new(QUEUE, payload(seq)).delay(Duration::from_millis(1 + seq % 50));
                vec![(engine.submit(job)?.get(), seq)]
            }
            5 => vec![(engine.submit(Job::new(PARKED, payload(seq)).priority(7))?.get(), seq)],
            _ => {
                let job = Job::new(QUEUE, payload(seq)).priority((seq % 4) as u32);
                vec![(engine.submit(job)?.get(), seq)]
            }
        };
        for (id, s) in acked {
            if !say(format_args!("ACK {id} {s}")) {
                return Ok(()); // the parent is gone
            }
        }
    }
}

/// A line from the child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Line {
    Ack { id: u64, seq: u64 },
    Done { id: u64 },
}

fn parse_line(line: &str) -> Option<Line> {
    let mut w = line.split(' ');
    let tag = w.next()?;
    let nums: Vec<u64> = w.map(|x| x.parse().ok()).collect::<Option<_>>()?;
    match (tag, nums.as_slice()) {
        ("ACK", &[id, seq]) => Some(Line::Ack { id, seq }),
        ("DONE", &[id]) => Some(Line::Done { id }),
        _ => None,
    }
}

/// Kills (SIGKILL) and reaps the child if the parent fails first.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The `.wal` files under `dir` (one level of shard directories).
fn segments(dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for shard in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        for f in std::fs::read_dir(shard.path()).into_iter().flatten().flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            if name.ends_with(".wal") {
                out.insert(format!("{}/{name}", shard.file_name().to_string_lossy()));
            }
        }
    }
    out
}

/// The most segments one shard holds, of the names [`segments`] gives.
fn most_per_shard(segs: &BTreeSet<String>) -> usize {
    let mut per: BTreeMap<&str, usize> = BTreeMap::new();
    for s in segs {
        *per.entry(s.split('/').next().unwrap_or("")).or_default() += 1;
    }
    per.values().copied().max().unwrap_or(0)
}

/// One trial of `rounds` kill/rebuild rounds on `dir`; returns its setup
/// in words and the rounds' books.
pub(crate) fn trial(
    dir: &Path,
    mode: Mode,
    seed: u64,
    o: &CrashOpts,
) -> BoxResult<(String, Vec<RoundBooks>)> {
    let mut rng = Rng::new(seed);
    // 1 to 3 shards: with more shards than cores, stolen jobs and their
    // logs are crashed too.
    let shards = 1 + below(&mut rng, 3) as usize;
    let mut rounds = Vec::new();
    // Sync submits wait for an fsync each: fewer of them per round.
    let max_ops = if mode == Mode::Sync { (o.max_ops / 3).max(10) } else { o.max_ops };
    for _ in 0..o.rounds {
        let trigger = match mode {
            Mode::Memory => Trigger::Ops(1 + below(&mut rng, max_ops)),
            _ => Trigger::draw(&mut rng, max_ops),
        };
        let mut books = RoundBooks::default();
        let lines = run_and_kill(dir, mode, o.segment, shards, trigger, max_ops, &mut books)?;
        if o.inject_loss {
            crate::crash::lose_log(&dir.join("data"))?;
        }
        if mode == Mode::Memory {
            verify_memory(dir, o.segment, &lines, &mut books)?;
        } else {
            verify(dir, mode, o.segment, shards, &lines, &mut books)?;
        }
        if !books.violations.is_empty() {
            books.context = format!("trigger {trigger:?}, killed at {}", books.kill);
        }
        rounds.push(books);
    }
    Ok((format!("{shards} shard{}", if shards == 1 { "" } else { "s" }), rounds))
}

/// Starts a child on `dir`, kills it when `trigger` fires and returns every
/// line it printed in full (those still in the pipe included).
fn run_and_kill(
    dir: &Path,
    mode: Mode,
    segment: u64,
    shards: usize,
    trigger: Trigger,
    max_ops: u64,
    books: &mut RoundBooks,
) -> BoxResult<Vec<Line>> {
    let exe = std::env::current_exe()?;
    let log = dir.join("child.log");
    let dir = &dir.join("data");
    let err = std::fs::OpenOptions::new().create(true).append(true).open(&log)?;
    let child = Command::new(exe)
        .arg("crash-child")
        .arg("--dir")
        .arg(dir)
        .args(["--mode", mode.name(), "--segment", &segment.to_string()])
        .args(["--shards", &shards.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(err)
        .spawn()?;
    let mut child = KillOnDrop(child);
    let out = child.0.stdout.take().ok_or("no stdout pipe to the child")?;
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        let mut r = BufReader::new(out);
        let mut buf = String::new();
        loop {
            buf.clear();
            match r.read_line(&mut buf) {
                // A last line cut short by the kill is dropped.
                Ok(n) if n > 0 && buf.ends_with('\n') => {
                    if tx.send(buf.trim_end().to_string()).is_err() {
                        return;
                    }
                }
                _ => return,
            }
        }
    });
    let mut lines = Vec::new();
    let mut acks = 0u64;
    let mut base: Option<BTreeSet<String>> = None;
    let mut last_look = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(120);
    let kill = loop {
        if acks >= max_ops {
            break format!("cap {acks}");
        }
        if Instant::now() > deadline {
            break format!("deadline {acks}");
        }
        match rx.recv_timeout(Duration::from_millis(1)) {
            Ok(text) => match parse_line(&text) {
                Some(l) => {
                    acks += u64::from(matches!(l, Line::Ack { .. }));
                    lines.push(l);
                }
                None => books.violations.push(format!("child said {text:?}")),
            },
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = child.0.wait()?;
                let tail = std::fs::read_to_string(&log).unwrap_or_default();
                books.violations.push(format!(
                    "the child stopped on its own after {acks} acks ({status}): {}",
                    tail.lines().rev().take(10).collect::<Vec<_>>().join(" | ")
                ));
                books.kill = "none (child exited)".into();
                return Ok(lines);
            }
        }
        let warm = match trigger {
            Trigger::Ops(n) => {
                if acks >= n {
                    break format!("ops {acks}");
                }
                continue;
            }
            Trigger::Rollover(w) | Trigger::Compaction(w) => w,
        };
        // Look at the directory every 200 µs at most.
        if last_look.elapsed() < Duration::from_micros(200) {
            continue;
        }
        last_look = Instant::now();
        let now = segments(dir);
        match &base {
            Some(b) if acks >= warm => {
                let rolled = now.difference(b).next().is_some();
                // A shard compacts once it holds more than
                // `compact_after_segments` (4) segments, and releases the
                // old ones when its pass is durable: kill in between, or
                // at the release.
                let due = most_per_shard(&now) > COMPACT_AFTER;
                let released = b.difference(&now).next().is_some();
                match trigger {
                    Trigger::Rollover(_) if rolled => break format!("rollover {acks}"),
                    Trigger::Compaction(_) if due || released => {
                        break format!("compaction {acks}")
                    }
                    _ => {}
                }
            }
            _ => {}
        }
        base = Some(now);
    };
    child.0.kill()?;
    let status = child.0.wait()?;
    if status.signal() != Some(libc::SIGKILL) {
        books.violations.push(format!("the child did not die by SIGKILL: {status}"));
    }
    // Lines already in the pipe were printed after what they report
    // happened: they count too.
    let _ = reader.join();
    for text in rx.try_iter() {
        if let Some(l) = parse_line(&text) {
            lines.push(l);
        }
    }
    books.kill = kill;
    Ok(lines)
}

/// `Memory`: nothing on disk, nothing after a rebuild.
fn verify_memory(
    dir: &Path,
    segment: u64,
    lines: &[Line],
    books: &mut RoundBooks,
) -> BoxResult<()> {
    books.acked_puts = lines.iter().filter(|l| matches!(l, Line::Ack { .. })).count() as u64;
    let data = dir.join("data");
    let files = std::fs::read_dir(&data).map(|d| d.count()).unwrap_or(0);
    if files != 0 {
        books.violations.push(format!("memory mode wrote {files} entries into its directory"));
    }
    let engine = builder(&data, Mode::Memory, segment, 1).build()?;
    let jobs = engine.stats().jobs;
    if jobs != 0 {
        books.violations.push(format!("memory mode: {jobs} jobs after a rebuild"));
    }
    engine.shutdown()?;
    Ok(())
}

/// Rebuilds the engine on `dir` and checks the child's books.
fn verify(
    dir: &Path,
    mode: Mode,
    segment: u64,
    shards: usize,
    lines: &[Line],
    books: &mut RoundBooks,
) -> BoxResult<()> {
    let v = &mut books.violations;
    let mut acked: BTreeMap<u64, u64> = BTreeMap::new();
    let mut done_before: BTreeSet<u64> = BTreeSet::new();
    for l in lines {
        match *l {
            Line::Ack { id, seq } => {
                if acked.insert(id, seq).is_some() {
                    v.push(format!("id {id} acknowledged twice"));
                }
            }
            Line::Done { id } => {
                if !done_before.insert(id) {
                    v.push(format!("job {id} completed twice before the kill"));
                }
            }
        }
    }
    books.acked_puts = acked.len() as u64;
    let dir = &dir.join("data");
    let engine = builder(dir, mode, segment, shards).build()?;
    let recovered = engine.stats().jobs;
    let (tx, rx) = mpsc::channel::<(u64, Vec<u8>)>();
    for q in [QUEUE, PARKED] {
        let tx = tx.clone();
        engine.register(q, move |job: &JobRef<'_>| {
            let _ = tx.send((job.id().get(), job.payload().to_vec()));
            Outcome::Done
        })?;
    }
    drop(tx);
    let must_run: BTreeSet<u64> =
        acked.keys().filter(|id| !done_before.contains(id)).copied().collect();
    let mut ran: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    let mut record = |id: u64, p: Vec<u8>, v: &mut Vec<String>| {
        if ran.insert(id, p).is_some() {
            v.push(format!("job {id} ran twice after recovery"));
        }
    };
    // Every recovered job runs once (delays and retry backoffs are short);
    // then the engine holds none.
    let mut runs = 0u64;
    let deadline = Instant::now() + WAIT;
    loop {
        if runs >= recovered && engine.stats().jobs == 0 {
            break;
        }
        if Instant::now() > deadline {
            v.push(format!("{} of {recovered} recovered jobs never finished", engine.stats().jobs));
            break;
        }
        if let Ok((id, p)) = rx.recv_timeout(Duration::from_millis(1)) {
            runs += 1;
            record(id, p, v);
        }
    }
    engine.shutdown()?;
    while let Ok((id, p)) = rx.try_recv() {
        record(id, p, v);
    }
    let missing: Vec<u64> = must_run.iter().filter(|id| !ran.contains_key(id)).copied().collect();
    if !missing.is_empty() {
        v.push(format!(
            "{} acknowledged jobs lost (neither completed before the kill nor run after \
             recovery), e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(20)]
        ));
    }
    if ran.len() as u64 != recovered {
        v.push(format!("{recovered} jobs recovered, {} ran", ran.len()));
    }
    for (id, p) in &ran {
        match (parse_payload(p), acked.get(id)) {
            (None, _) => v.push(format!("job {id} came back with a payload never written")),
            (Some(seq), Some(&s)) if seq != s => {
                v.push(format!("job {id} came back with job seq {seq}'s payload, not {s}'s"))
            }
            (Some(_), Some(_)) => {}
            (Some(_), None) => books.in_flight += 1,
        }
    }
    books.checked_present = (must_run.len() - missing.len()) as u64;
    // Ids are never reused.
    let old_max = acked.keys().chain(ran.keys()).chain(&done_before).max().copied().unwrap_or(0);
    let engine = builder(dir, mode, segment, shards).build()?;
    // The engine above ran every job and shut down cleanly: nothing comes
    // back (its completions were logged before `shutdown` returned).
    let back = engine.stats().jobs;
    if back != 0 {
        v.push(format!("{back} jobs came back after the engine that ran them shut down"));
    }
    let fresh = engine.submit(Job::new("after", b"x".to_vec()))?.get();
    engine.register("after", |_: &JobRef<'_>| Outcome::Done)?;
    let deadline = Instant::now() + WAIT;
    while engine.stats().jobs > back && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    engine.shutdown()?;
    if fresh <= old_max {
        v.push(format!("id {fresh} given out after recovery; ids up to {old_max} were seen"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_and_lines_parse() {
        for seq in [0, 1, 3, 8, 299, 1 << 40] {
            assert_eq!(parse_payload(&payload(seq)), Some(seq));
            assert_eq!(fails_first(&payload(seq)), seq % 5 == 3);
            let mut p = payload(seq);
            p.push(b'x');
            assert_eq!(parse_payload(&p), None);
        }
        assert_eq!(parse_line("ACK 7 3"), Some(Line::Ack { id: 7, seq: 3 }));
        assert_eq!(parse_line("DONE 12"), Some(Line::Done { id: 12 }));
        assert_eq!(parse_line("ACK 7"), None);
        assert_eq!(parse_line("DONE x"), None);
    }
}
