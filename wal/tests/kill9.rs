//! Real-process crash test: a child process appends to a log on real files
//! from two threads and acknowledges each LSN on stdout once `append` (and,
//! under `SyncPolicy::Always`, `wait_durable`; or `append_deferred` and then
//! `wait_durable`) has returned. The parent reads
//! a random number of acknowledgements, `kill -9`s the child and reopens the
//! log: every acknowledged record must be there with its payload, and every
//! recovered record must be one the child really wrote (nothing invented,
//! nothing out of order, no gaps in a thread's sequence).
//!
//! The child is this test binary re-executed with `--exact child_entry` and
//! [`CHILD_DIR_ENV`] set; without that variable `child_entry` does nothing.
//! Synchronisation is by reading the pipe only: no sleeps.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use spindle_wal::{SyncPolicy, Wal, WalOptions};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::ops::Range;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};

/// Set (to the log directory) only in the child process.
const CHILD_DIR_ENV: &str = "SPINDLE_WAL_KILL9_CHILD_DIR";
/// `never` or `always`, for the child.
const CHILD_POLICY_ENV: &str = "SPINDLE_WAL_KILL9_CHILD_POLICY";
/// Overrides the parent's RNG seed to reproduce a failure.
const SEED_ENV: &str = "SPINDLE_WAL_KILL9_SEED";
/// Appender threads in the child.
const THREADS: u8 = 2;
/// Small segments so that the log rolls over many times per trial.
const SEGMENT_SIZE: u64 = 64 << 10;
/// Safety cap per child thread, so a child whose parent vanished without
/// closing the pipe cannot fill the disk. Far above any threshold: the pipe
/// keeps the child at most a pipe buffer ahead of the parent.
const CHILD_CAP: u64 = 2_000_000;

fn opts(sync: SyncPolicy) -> WalOptions {
    WalOptions { segment_size: SEGMENT_SIZE, sync, ..WalOptions::default() }
}

fn kind(thread: u8) -> u8 {
    1 + thread
}

/// The payload thread `thread` appends as its `seq`-th record: thread id,
/// sequence number, then deterministic bytes; lengths vary from 9 to 308 so
/// frames of many sizes meet the segment ends (padding).
fn payload(thread: u8, seq: u64) -> Vec<u8> {
    let len = 9 + ((seq * 37 + u64::from(thread) * 13) % 300) as usize;
    let mut p = Vec::with_capacity(len);
    p.push(thread);
    p.extend_from_slice(&seq.to_le_bytes());
    p.extend((9..len).map(|j| (seq as usize).wrapping_mul(31).wrapping_add(j * 7 + 1) as u8));
    p
}

/// `(thread, seq)` if `p` is exactly what [`payload`] produces for them.
fn parse(p: &[u8]) -> Option<(u8, u64)> {
    let thread = *p.first()?;
    let seq = u64::from_le_bytes(p.get(1..9)?.try_into().ok()?);
    (thread < THREADS && p == payload(thread, seq).as_slice()).then_some((thread, seq))
}

/// The child: runs only when re-executed by [`run_and_kill`].
#[test]
fn child_entry() {
    let Some(dir) = std::env::var_os(CHILD_DIR_ENV) else { return };
    let policy = std::env::var(CHILD_POLICY_ENV).unwrap_or_default();
    let sync = match policy.as_str() {
        "always" | "deferred" => SyncPolicy::Always,
        _ => SyncPolicy::Never,
    };
    let deferred = policy == "deferred";
    let (wal, _) = Wal::open(&dir, opts(sync)).expect("child: open");
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let wal = &wal;
            s.spawn(move || {
                let mut app = wal.appender();
                let stdout = std::io::stdout();
                for seq in 0..CHILD_CAP {
                    let lsn = if deferred {
                        app.append_deferred(kind(t), &payload(t, seq))
                    } else {
                        app.append(kind(t), &payload(t, seq))
                    }
                    .expect("child: append");
                    if sync == SyncPolicy::Always {
                        wal.wait_durable(lsn).expect("child: wait_durable");
                    }
                    // Written straight to fd 1 (not captured by the harness),
                    // one whole line under the lock, only after the append.
                    let mut out = stdout.lock();
                    if writeln!(out, "ACK {t} {seq} {lsn}").and_then(|()| out.flush()).is_err() {
                        return; // The parent is gone.
                    }
                }
            });
        }
    });
}

/// An acknowledged record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ack {
    thread: u8,
    seq: u64,
    lsn: u64,
}

/// Parses `ACK <thread> <seq> <lsn>` at the end of a line: the harness may
/// have printed `test child_entry ... ` (no newline) before the first one.
fn parse_ack(line: &str) -> Option<Ack> {
    let at = line.find("ACK ")?;
    let mut it = line[at + 4..].split(' ');
    let ack = Ack {
        thread: it.next()?.parse().ok()?,
        seq: it.next()?.parse().ok()?,
        lsn: it.next()?.parse().ok()?,
    };
    it.next().is_none().then_some(ack)
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

/// Starts a child appending into `dir`, reads acknowledgements until at
/// least `threshold` have arrived, kills it with SIGKILL and returns every
/// acknowledgement it printed in full (those still in the pipe included).
fn run_and_kill(dir: &Path, policy: &str, threshold: usize, ctx: &str) -> Vec<Ack> {
    let exe = std::env::current_exe().expect("current_exe");
    let child = Command::new(exe)
        .args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
        .env(CHILD_DIR_ENV, dir)
        .env(CHILD_POLICY_ENV, policy)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn child");
    let mut child = KillOnDrop(child);
    let mut out = BufReader::new(child.0.stdout.take().expect("child stdout"));
    let mut acks = Vec::new();
    let mut other = Vec::new();
    let mut line = Vec::new();
    let mut alive = true;
    while acks.len() < threshold {
        if !read_line(&mut out, &mut line) {
            alive = false;
            break;
        }
        let text = String::from_utf8_lossy(&line);
        match parse_ack(&text) {
            Some(a) => acks.push(a),
            None => other.push(text.into_owned()),
        }
    }
    if !alive {
        let status = child.0.wait().expect("wait child");
        panic!(
            "{ctx}: child stopped after {} of {threshold} acks ({status}); its other output: \
             {other:#?}",
            acks.len()
        );
    }
    child.0.kill().expect("kill -9 child");
    let status = child.0.wait().expect("wait child");
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{ctx}: child must die by SIGKILL: {status}");
    // Lines already in the pipe were printed after their append returned:
    // they are acknowledgements too.
    while read_line(&mut out, &mut line) {
        if let Some(a) = parse_ack(&String::from_utf8_lossy(&line)) {
            acks.push(a);
        }
    }
    acks
}

/// Reopens the log in `dir` and checks it against the acknowledgements.
fn verify(dir: &Path, sync: SyncPolicy, acks: &[Ack], ctx: &str) {
    // Each thread acknowledges its records in order, starting at 0.
    let mut acked_per_thread = [0u64; THREADS as usize];
    for a in acks {
        assert!(a.thread < THREADS, "{ctx}: bad ack {a:?}");
        assert_eq!(a.seq, acked_per_thread[a.thread as usize], "{ctx}: ack out of order {a:?}");
        acked_per_thread[a.thread as usize] += 1;
    }

    let (wal, report) = Wal::open(dir, opts(sync)).expect("reopen after kill -9");
    let mut records = Vec::new();
    wal.replay(|r| records.push((r.lsn, r.kind, r.payload.to_vec()))).unwrap();
    assert_eq!(report.records, records.len() as u64, "{ctx}: report vs replay");
    assert!(report.segments >= 2, "{ctx}: the log must have rolled over: {report:?}");

    let mut found: HashMap<u64, (u8, u64)> = HashMap::new();
    let mut next_seq = [0u64; THREADS as usize];
    let mut prev_lsn = None;
    for (lsn, k, p) in &records {
        assert!(prev_lsn < Some(*lsn), "{ctx}: LSNs must increase ({prev_lsn:?} then {lsn})");
        prev_lsn = Some(*lsn);
        let Some((t, seq)) = parse(p) else {
            panic!("{ctx}: record at {lsn} (kind {k}, {} bytes) was invented", p.len())
        };
        assert_eq!(*k, kind(t), "{ctx}: record at {lsn} has the wrong kind");
        // A thread's seq+1 is claimed after its seq was published, and
        // recovery keeps a prefix of the log: no gaps, no repeats.
        assert_eq!(seq, next_seq[t as usize], "{ctx}: thread {t} gap or repeat at {lsn}");
        next_seq[t as usize] += 1;
        found.insert(*lsn, (t, seq));
    }
    for a in acks {
        assert_eq!(
            found.get(&a.lsn),
            Some(&(a.thread, a.seq)),
            "{ctx}: acknowledged record {a:?} lost after kill -9 (report {report:?})"
        );
    }

    // The recovered log is usable and the cut is permanent: one more record
    // lands after the recovered end and everything survives another reopen.
    let lsn = wal.appender().append(200, b"after the crash").unwrap();
    assert!(lsn >= report.end_lsn, "{ctx}: new record at {lsn} overlaps the old log");
    wal.close().unwrap();
    let (wal, report2) = Wal::open(dir, opts(sync)).expect("second reopen");
    assert!(report2.truncated.is_none(), "{ctx}: second reopen cut again: {report2:?}");
    let mut again = Vec::new();
    wal.replay(|r| again.push((r.lsn, r.kind, r.payload.to_vec()))).unwrap();
    assert_eq!(again.last(), Some(&(lsn, 200, b"after the crash".to_vec())), "{ctx}");
    again.pop();
    assert_eq!(again, records, "{ctx}: the second reopen must see the same records");
    wal.close().unwrap();
    eprintln!(
        "{ctx}: {} acks, {} records recovered in {} segments, truncated: {:?}",
        acks.len(),
        records.len(),
        report.segments,
        report.truncated.map(|t| t.bytes_dropped)
    );
}

fn crash_trials(name: &str, policy: &str, sync: SyncPolicy, trials: usize, acks: Range<usize>) {
    let seed = std::env::var(SEED_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5EED_0000 + name.len() as u64);
    let mut rng = StdRng::seed_from_u64(seed);
    for trial in 0..trials {
        let threshold = rng.random_range(acks.clone());
        let ctx = format!("{name} trial {trial} ({SEED_ENV}={seed}, threshold {threshold})");
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("wal");
        let acked = run_and_kill(&log, policy, threshold, &ctx);
        assert!(acked.len() >= threshold, "{ctx}");
        verify(&log, sync, &acked, &ctx);
    }
}

#[test]
fn kill_9_keeps_every_acknowledged_record_sync_never() {
    crash_trials("sync-never", "never", SyncPolicy::Never, 5, 1_500..8_000);
}

#[test]
fn kill_9_keeps_every_acknowledged_record_sync_always() {
    crash_trials("sync-always", "always", SyncPolicy::Always, 3, 600..2_000);
}

/// `append_deferred` (`cursor.rs`, step 3a) and then `wait_durable`, as
/// `Sync` submits do: a record acknowledged after both returned survives.
#[test]
fn kill_9_keeps_every_acknowledged_deferred_record() {
    crash_trials("deferred", "deferred", SyncPolicy::Always, 3, 600..2_000);
}

#[test]
fn payloads_are_self_checking() {
    for t in 0..THREADS {
        for seq in [0, 1, 299, 300, 1 << 40] {
            assert_eq!(parse(&payload(t, seq)), Some((t, seq)));
            let mut p = payload(t, seq);
            *p.last_mut().unwrap() ^= 1;
            assert_eq!(parse(&p), None);
        }
    }
    assert_eq!(parse(&payload(THREADS, 0)), None);
    assert_eq!(parse(b"short"), None);
}
