//! Real-process crash test for the engine: a child process runs an engine
//! with `Process` durability on real files, submits jobs forever and prints
//! `ACK <id> <seq>` once each `submit` (or `submit_batch`) has returned; its
//! handler prints `DONE <id>` when it completes a job. The parent kills the
//! child with SIGKILL after a random number of acknowledgements, rebuilds the
//! engine in-process on the same data dir and checks that every acknowledged
//! job ran at least once: before the crash (it printed `DONE`) or after
//! recovery. Delivery is at-least-once: a job whose `DONE` was printed may
//! run again, because its completion record may not have reached the log.
//!
//! The child is this test binary re-executed with `--exact child_entry` and
//! [`CHILD_DIR_ENV`] set; without that variable `child_entry` does nothing.
//! Synchronisation is by reading the pipe and by channels only: no sleeps.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use spindle_engine::{Durability, Engine, EngineBuilder, Job, JobId, JobRef, Outcome};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::ops::Range;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Set (to the data dir) only in the child process.
const CHILD_DIR_ENV: &str = "SPINDLE_ENGINE_KILL9_CHILD_DIR";
/// Shards, for the child.
const CHILD_SHARDS_ENV: &str = "SPINDLE_ENGINE_KILL9_CHILD_SHARDS";
/// `stream` (submit forever) or `hang` (one job whose handler never returns).
const CHILD_MODE_ENV: &str = "SPINDLE_ENGINE_KILL9_CHILD_MODE";
/// Overrides the parent's RNG seed to reproduce a failure.
const SEED_ENV: &str = "SPINDLE_ENGINE_KILL9_SEED";
/// The queue the child's jobs go to.
const QUEUE: &str = "k9";
/// A queue the child registers no handler for: its jobs wait until the
/// parent's recovered engine runs them.
const PARKED: &str = "k9-parked";
/// Small segments, so the logs roll over (and compact) during a trial.
const SEGMENT: u64 = 64 << 10;
/// Safety cap on the child's submissions, so a child whose parent vanished
/// without closing the pipe stops. Far above any threshold: the pipe keeps
/// the child at most a pipe buffer ahead of the parent.
const CHILD_CAP: u64 = 2_000_000;
/// Upper bound on waiting for an event that must happen; a guard against
/// hanging, never a synchronisation device.
const WAIT: Duration = Duration::from_secs(30);

fn builder(dir: &Path, shards: usize) -> EngineBuilder {
    Engine::builder()
        .data_dir(dir)
        .durability(Durability::Process)
        .shards(shards)
        .segment_size(SEGMENT)
        .retry_backoff(Duration::from_millis(1), Duration::from_millis(4))
}

/// The payload of the child's `seq`-th job: self-describing, with a flag
/// (`r`: fail the first attempt) and filler of varying length.
fn payload(seq: u64) -> Vec<u8> {
    let flag = if seq % 5 == 3 { 'r' } else { '-' };
    let mut p = format!("kill9 {seq} {flag} ").into_bytes();
    p.extend((0..(seq * 37) % 200).map(|j| b'a' + ((seq + j) % 26) as u8));
    p
}

/// Whether the job of payload `p` fails its first attempt (flag `r`).
fn fails_first(p: &[u8]) -> bool {
    p.split(|&b| b == b' ').nth(2) == Some(b"r".as_slice())
}

/// The `seq` of a payload made by [`payload`], if it is exactly that.
fn parse_payload(p: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(p).ok()?;
    let seq: u64 = text.strip_prefix("kill9 ")?.split(' ').next()?.parse().ok()?;
    (payload(seq) == p).then_some(seq)
}

/// Prints one whole line to fd 1 (not captured by the harness under
/// `--nocapture`); false once the parent is gone.
fn say(line: std::fmt::Arguments<'_>) -> bool {
    let mut out = std::io::stdout().lock();
    out.write_fmt(line).and_then(|()| out.write_all(b"\n")).and_then(|()| out.flush()).is_ok()
}

/// The child: runs only when re-executed by [`run_and_kill`].
#[test]
fn child_entry() {
    let Some(dir) = std::env::var_os(CHILD_DIR_ENV) else { return };
    let shards: usize = std::env::var(CHILD_SHARDS_ENV).unwrap().parse().unwrap();
    let engine = builder(Path::new(&dir), shards).build().expect("child: build");
    if std::env::var(CHILD_MODE_ENV).as_deref() == Ok("hang") {
        engine
            .register(QUEUE, |job: &JobRef<'_>| {
                say(format_args!("RUNNING {} {}", job.id(), job.attempt()));
                loop {
                    std::thread::park(); // until the kill
                }
            })
            .unwrap();
        let id = engine.submit(Job::new(QUEUE, payload(0))).unwrap();
        say(format_args!("ACK {id} 0"));
        loop {
            std::thread::park(); // until the kill
        }
    }
    engine
        .register(QUEUE, |job: &JobRef<'_>| {
            if fails_first(job.payload()) && job.attempt() == 1 {
                return Outcome::Retry("first attempts of 'r' jobs fail".into());
            }
            say(format_args!("DONE {}", job.id()));
            Outcome::Done
        })
        .unwrap();
    let mut seq = 0u64;
    let mut op = 0u64;
    while seq < CHILD_CAP {
        op += 1;
        let acked: Vec<(JobId, u64)> = match op % 10 {
            // A batch: one log pass for all of them.
            0 => {
                let seqs: Vec<u64> = (seq..seq + 4).collect();
                let jobs = seqs.iter().map(|&s| Job::new(QUEUE, payload(s))).collect();
                let ids = engine.submit_batch(jobs).expect("child: submit_batch");
                ids.into_iter().zip(seqs).collect()
            }
            // A unique key: logged by the owning shard's thread.
            1 => {
                let job = Job::new(QUEUE, payload(seq)).unique_key(format!("key-{seq}"));
                vec![(engine.submit(job).expect("child: submit unique"), seq)]
            }
            // A short delay.
            2 => {
                let job = Job::new(QUEUE, payload(seq)).delay(Duration::from_millis(1 + seq % 50));
                vec![(engine.submit(job).expect("child: submit delayed"), seq)]
            }
            // A job that waits for the recovered engine.
            5 => {
                let job = Job::new(PARKED, payload(seq)).priority(7);
                vec![(engine.submit(job).expect("child: submit parked"), seq)]
            }
            _ => {
                let job = Job::new(QUEUE, payload(seq)).priority((seq % 4) as u32);
                vec![(engine.submit(job).expect("child: submit"), seq)]
            }
        };
        seq += acked.len() as u64;
        for (id, s) in acked {
            if !say(format_args!("ACK {id} {s}")) {
                std::process::exit(0); // The parent is gone.
            }
        }
    }
}

/// A line from the child. The harness may have printed `test child_entry
/// ... ` (no newline) before the first one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Line {
    Ack { id: u64, seq: u64 },
    Done { id: u64 },
    Running { id: u64, attempt: u32 },
}

fn parse_line(line: &str) -> Option<Line> {
    let words = |tag: &str| -> Option<Vec<u64>> {
        let at = line.find(tag)?;
        line[at + tag.len()..].split(' ').map(|w| w.parse().ok()).collect()
    };
    if let Some(w) = words("ACK ") {
        return (w.len() == 2).then(|| Line::Ack { id: w[0], seq: w[1] });
    }
    if let Some(w) = words("DONE ") {
        return (w.len() == 1).then(|| Line::Done { id: w[0] });
    }
    let w = words("RUNNING ")?;
    (w.len() == 2).then(|| Line::Running { id: w[0], attempt: w[1] as u32 })
}

/// Kills (SIGKILL) and reaps the child if the parent fails before doing so.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reads complete lines; a last line cut short by the kill is dropped.
/// Returns false at end of file.
fn read_line(r: &mut BufReader<ChildStdout>, line: &mut Vec<u8>) -> bool {
    line.clear();
    let n = r.read_until(b'\n', line).expect("read child stdout");
    if n == 0 || line.last() != Some(&b'\n') {
        return false;
    }
    line.pop();
    true
}

/// Starts a child on `dir`, reads its lines until `enough` says so, kills it
/// with SIGKILL and returns every line it printed in full (those still in
/// the pipe included).
fn run_and_kill(
    dir: &Path,
    shards: usize,
    mode: &str,
    mut enough: impl FnMut(&Line) -> bool,
    ctx: &str,
) -> Vec<Line> {
    let exe = std::env::current_exe().expect("current_exe");
    let child = Command::new(exe)
        .args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
        .env(CHILD_DIR_ENV, dir)
        .env(CHILD_SHARDS_ENV, shards.to_string())
        .env(CHILD_MODE_ENV, mode)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn child");
    let mut child = KillOnDrop(child);
    let mut out = BufReader::new(child.0.stdout.take().expect("child stdout"));
    let mut lines = Vec::new();
    let mut other = Vec::new();
    let mut buf = Vec::new();
    loop {
        if !read_line(&mut out, &mut buf) {
            let status = child.0.wait().expect("wait child");
            panic!(
                "{ctx}: child stopped after {} lines ({status}); its other output: {other:#?}",
                lines.len()
            );
        }
        let text = String::from_utf8_lossy(&buf);
        match parse_line(&text) {
            Some(l) => {
                lines.push(l);
                if enough(&l) {
                    break;
                }
            }
            None => other.push(text.into_owned()),
        }
    }
    child.0.kill().expect("kill -9 child");
    let status = child.0.wait().expect("wait child");
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{ctx}: child must die by SIGKILL: {status}");
    // Lines already in the pipe were printed after what they report
    // happened: they count too.
    while read_line(&mut out, &mut buf) {
        if let Some(l) = parse_line(&String::from_utf8_lossy(&buf)) {
            lines.push(l);
        }
    }
    lines
}

/// One post-recovery run.
struct Ran {
    id: JobId,
    payload: Vec<u8>,
}

/// Rebuilds the engine on `dir` and checks the child's acknowledged jobs.
fn verify(dir: &Path, shards: usize, lines: &[Line], ctx: &str) {
    let mut acked: BTreeMap<u64, u64> = BTreeMap::new();
    let mut done_before: BTreeSet<u64> = BTreeSet::new();
    for l in lines {
        match *l {
            Line::Ack { id, seq } => {
                assert!(acked.insert(id, seq).is_none(), "{ctx}: id {id} acknowledged twice");
            }
            Line::Done { id } => {
                assert!(done_before.insert(id), "{ctx}: job {id} completed twice before the crash");
            }
            Line::Running { .. } => {}
        }
    }
    let mut seqs: Vec<u64> = acked.values().copied().collect();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), acked.len(), "{ctx}: two ids acknowledged for one job");

    let engine = builder(dir, shards).build().expect("rebuild after kill -9");
    assert_eq!(engine.shards(), shards, "{ctx}");
    let recovered = engine.stats().jobs;
    let (tx, rx) = mpsc::channel();
    for q in [QUEUE, PARKED] {
        let tx = tx.clone();
        engine
            .register(q, move |job: &JobRef<'_>| {
                let _ = tx.send(Ran { id: job.id(), payload: job.payload().to_vec() });
                Outcome::Done
            })
            .unwrap();
    }

    // Every acknowledged job that had not completed runs now.
    let mut missing: BTreeSet<u64> =
        acked.keys().filter(|id| !done_before.contains(id)).copied().collect();
    let expected_runs = missing.len();
    let mut ran_after: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    let record = |r: Ran, ran_after: &mut BTreeMap<u64, Vec<u8>>| {
        let id = r.id.get();
        assert!(
            ran_after.insert(id, r.payload).is_none(),
            "{ctx}: job {id} ran twice after recovery"
        );
    };
    while !missing.is_empty() {
        let r = rx.recv_timeout(WAIT).unwrap_or_else(|_| {
            panic!(
                "{ctx}: {} acknowledged jobs never ran, neither before the crash nor after \
                 recovery: {:?}",
                missing.len(),
                missing.iter().take(20).collect::<Vec<_>>()
            )
        });
        missing.remove(&r.id.get());
        record(r, &mut ran_after);
    }
    // Then the engine drains: every recovered job runs once.
    let deadline = Instant::now() + WAIT;
    while engine.stats().jobs != 0 {
        assert!(Instant::now() < deadline, "{ctx}: recovered jobs never finished");
    }
    while let Ok(r) = rx.try_recv() {
        record(r, &mut ran_after);
    }
    assert_eq!(ran_after.len() as u64, recovered, "{ctx}: recovered vs run after recovery");

    // Nothing invented, nothing mixed up.
    for (id, p) in &ran_after {
        let Some(seq) = parse_payload(p) else {
            panic!("{ctx}: job {id} came back with a payload the child never wrote: {p:?}")
        };
        if let Some(&s) = acked.get(id) {
            assert_eq!(seq, s, "{ctx}: job {id} came back with another job's payload");
        }
    }
    // Ids are never reused.
    let old_max = acked.keys().chain(ran_after.keys()).chain(&done_before).max().copied();
    let fresh = engine.submit(Job::new("after", b"x".to_vec())).unwrap();
    assert!(Some(fresh.get()) > old_max, "{ctx}: id {fresh} reused (old max {old_max:?})");
    engine.shutdown().unwrap();

    let again = ran_after.keys().filter(|id| done_before.contains(id)).count();
    eprintln!(
        "{ctx}: {} acks, {} done before the kill, {} recovered, {expected_runs} acknowledged \
         jobs ran after recovery, {again} completed jobs ran again",
        acked.len(),
        done_before.len(),
        recovered
    );
}

fn crash_trials(shards: usize, trials: usize, acks: Range<usize>) {
    let seed = std::env::var(SEED_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5EED_E000 + shards as u64);
    let mut rng = StdRng::seed_from_u64(seed);
    for trial in 0..trials {
        let threshold = rng.random_range(acks.clone());
        let ctx =
            format!("{shards} shards, trial {trial} ({SEED_ENV}={seed}, threshold {threshold})");
        let tmp = tempfile::tempdir().unwrap();
        let mut n = 0;
        let lines = run_and_kill(
            tmp.path(),
            shards,
            "stream",
            |l| {
                n += usize::from(matches!(l, Line::Ack { .. }));
                n >= threshold
            },
            &ctx,
        );
        verify(tmp.path(), shards, &lines, &ctx);
    }
}

#[test]
fn kill_9_loses_no_acknowledged_job_2_shards() {
    crash_trials(2, 3, 300..4_000);
}

#[test]
fn kill_9_loses_no_acknowledged_job_4_shards() {
    crash_trials(4, 3, 300..4_000);
}

/// DESIGN.md, "Recovery": "reserved jobs return to ready, counting the
/// interruption". A job whose handler was running when the process died
/// comes back, and the interrupted run counts as an attempt (the basis of
/// poison-pill detection: a job that crashes its worker K times in a row).
#[test]
fn a_job_interrupted_by_kill_9_comes_back_counting_the_interruption() {
    let tmp = tempfile::tempdir().unwrap();
    let mut acked = None;
    let mut running = None;
    let lines = run_and_kill(
        tmp.path(),
        2,
        "hang",
        |l| {
            match *l {
                Line::Ack { id, .. } => acked = Some(id),
                Line::Running { id, attempt } => running = Some((id, attempt)),
                Line::Done { .. } => {}
            }
            acked.is_some() && running.is_some()
        },
        "hang",
    );
    let (id, attempt) = running.unwrap();
    assert_eq!((Some(id), attempt), (acked, 1), "{lines:?}");

    let engine = builder(tmp.path(), 2).build().unwrap();
    let (tx, rx) = mpsc::channel();
    engine
        .register(QUEUE, move |job: &JobRef<'_>| {
            let _ = tx.send((job.id().get(), job.attempt()));
            Outcome::Done
        })
        .unwrap();
    let (got, attempt) = rx.recv_timeout(WAIT).expect("the interrupted job never came back");
    assert_eq!(got, id);
    assert_eq!(attempt, 2, "the interrupted first attempt was not counted");
    engine.shutdown().unwrap();
}

#[test]
fn payloads_and_lines_parse() {
    for seq in [0, 1, 3, 8, 199, 1 << 40] {
        assert_eq!(parse_payload(&payload(seq)), Some(seq));
        assert_eq!(fails_first(&payload(seq)), seq % 5 == 3);
        let mut p = payload(seq);
        p.push(b'x');
        assert_eq!(parse_payload(&p), None);
    }
    assert_eq!(parse_payload(b"kill9 x"), None);
    assert_eq!(parse_line("test child_entry ... ACK 7 3"), Some(Line::Ack { id: 7, seq: 3 }));
    assert_eq!(parse_line("DONE 12"), Some(Line::Done { id: 12 }));
    assert_eq!(parse_line("RUNNING 5 1"), Some(Line::Running { id: 5, attempt: 1 }));
    assert_eq!(parse_line("ACK 7"), None);
    assert_eq!(parse_line("running 1 test"), None);
}
