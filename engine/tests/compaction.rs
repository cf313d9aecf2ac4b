//! The log stays bounded (DESIGN.md, "Compaction"): with tiny segments, a
//! shard that runs a long stream of short jobs while it also holds a job
//! delayed by an hour and a job in an endless retry loop (the classic
//! beanstalkd binlog growth) keeps its log within a few segments, and a
//! restart still finds the two long-lived jobs and none of the completed ones.
//!
//! Synchronisation is by a channel the handler signals at the end of each
//! batch; `WAIT` only guards against hangs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::wait_stats;
use spindle_engine::{Durability, Engine, Job, JobRef, Outcome};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

/// Upper bound on waiting for an event that must happen; a guard against
/// hanging, never a synchronisation device.
const WAIT: Duration = Duration::from_secs(30);
/// Tiny segments: the stream below writes thousands of them' worth of records.
const SEGMENT: u64 = 64 << 10;
/// Jobs per batch. A batch's records fill about two segments, so the live
/// jobs' records never exceed that.
const BATCH: u64 = 500;
/// The bound on the shard's log, in segments. DESIGN.md allows "a small
/// multiple of the live jobs' bytes plus one segment per shard"; here the
/// live jobs' records (one batch at most, plus the two long-lived jobs) fit
/// in two segments, the engine compacts beyond 4, the log prepares one
/// spare, and a release waits for the flusher's sync (up to the 50 ms flush
/// interval) while the stream goes on. An engine whose compaction works
/// peaks at 7-9 segments here; one that releases nothing reaches hundreds.
/// On top of that the log keeps its full-disk head-room allocated ahead
/// of the tail (`docs/full-disk.md`): a segment, 64 bytes per live job and
/// a compaction pass over them, with up to two batches live about four
/// segments more than the one spare it prepared before; peaks of 15 were
/// seen.
const MAX_SEGMENTS: u64 = 17;

/// A scratch directory where a sync costs nothing (`/dev/shm`, a tmpfs,
/// when there is one): a release waits for the sync after its pass, and on
/// a disk shared with other work one sync took up to 288 ms here (p50 3
/// ms), during which the stream wrote 20 segments more. The bound checked
/// is compaction's, not the disk's latency times the write rate
/// (`docs/architecture.md`, Compaction).
fn sync_free_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    match shm.is_dir().then(|| tempfile::tempdir_in(shm)) {
        Some(Ok(d)) => d,
        _ => tempfile::tempdir().unwrap(),
    }
}
fn engine(dir: &Path) -> Engine {
    Engine::builder()
        .data_dir(dir)
        .durability(Durability::Process)
        .shards(1)
        .segment_size(SEGMENT)
        .retry_backoff(Duration::from_millis(1), Duration::from_millis(2))
        .build()
        .unwrap()
}

/// Segment files and their total size in a shard directory. The engine
/// creates and deletes segments meanwhile: a file gone before its size is
/// read does not count.
fn wal_usage(shard_dir: &Path) -> (u64, u64) {
    let mut files = 0;
    let mut bytes = 0;
    for e in std::fs::read_dir(shard_dir).unwrap() {
        let e = e.unwrap();
        if !e.file_name().to_string_lossy().ends_with(".wal") {
            continue;
        }
        match e.metadata() {
            Ok(m) => {
                files += 1;
                bytes += m.len();
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => panic!("{}: {err}", e.path().display()),
        }
    }
    (files, bytes)
}

/// What a run of [`stream`] saw.
struct Run {
    /// (segment files, their bytes) after each batch, after an idle spell,
    /// and after shutdown.
    samples: Vec<(u64, u64)>,
}

/// Submits a job delayed by an hour and a job that always asks to be
/// retried, then runs `batches` batches of no-op jobs through to completion,
/// sampling the shard's log after each; shuts down, restarts, and checks that
/// the two long-lived jobs (and nothing else) came back intact.
fn stream(batches: u64) -> Run {
    let tmp = sync_free_dir();
    let dir = tmp.path();
    let shard_dir = dir.join("shard-000");
    let loop_runs = Arc::new(AtomicU64::new(0));
    let delayed_payload = b"in an hour".to_vec();
    let loop_payload = b"never succeeds".to_vec();
    let (delayed, looping);
    let mut samples = Vec::new();
    {
        let engine = engine(dir);
        delayed = engine
            .submit(Job::new("later", delayed_payload.clone()).delay(Duration::from_secs(3600)))
            .unwrap();
        let (loop_tx, loop_rx) = mpsc::channel();
        let runs = loop_runs.clone();
        engine
            .register("loop", move |job: &JobRef<'_>| {
                runs.fetch_add(1, Ordering::SeqCst);
                let _ = loop_tx.send(job.attempt());
                Outcome::Retry("downstream unavailable".into())
            })
            .unwrap();
        looping =
            engine.submit(Job::new("loop", loop_payload.clone()).max_attempts(u32::MAX)).unwrap();
        // The loop is running before the stream starts.
        assert_eq!(loop_rx.recv_timeout(WAIT).unwrap(), 1);
        assert_eq!(loop_rx.recv_timeout(WAIT).unwrap(), 2);

        let done = Arc::new(AtomicU64::new(0));
        let (tx, rx) = mpsc::channel();
        let counter = done.clone();
        engine
            .register("work", move |_: &JobRef<'_>| {
                let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                if n % BATCH == 0 {
                    let _ = tx.send(n);
                }
                Outcome::Done
            })
            .unwrap();
        for b in 1..=batches {
            let jobs = (0..BATCH).map(|i| Job::new("work", i.to_le_bytes().to_vec())).collect();
            engine.submit_batch(jobs).unwrap();
            assert_eq!(rx.recv_timeout(WAIT).expect("batch never completed"), b * BATCH);
            samples.push(wal_usage(&shard_dir));
        }
        assert_eq!(done.load(Ordering::SeqCst), BATCH * batches);
        wait_stats(&engine, WAIT, "every stream job to complete", |s| {
            s.queues["work"].completed == BATCH * batches && s.jobs == 2
        });
        // Idle for a while: compaction also runs when the shard has nothing
        // to do. Wait for 50 more retries of the loop, then sample again.
        let before = loop_runs.load(Ordering::SeqCst);
        while loop_runs.load(Ordering::SeqCst) < before + 50 {
            loop_rx.recv_timeout(WAIT).expect("the retry loop stopped");
        }
        samples.push(wal_usage(&shard_dir));
        engine.shutdown().unwrap();
    }
    samples.push(wal_usage(&shard_dir));
    let files: Vec<u64> = samples.iter().map(|s| s.0).collect();
    eprintln!("{} jobs: segment files after each batch of {BATCH}: {files:?}", batches * BATCH);

    // After a restart the two long-lived jobs are still there, nothing else.
    let runs_before = loop_runs.load(Ordering::SeqCst);
    let engine = engine(dir);
    let s = engine.stats();
    assert_eq!(s.jobs, 2, "{s:#?}");
    assert_eq!(s.bytes, (delayed_payload.len() + loop_payload.len()) as u64);
    assert_eq!(s.queues["later"].delayed, 1, "{s:#?}");
    assert_eq!(s.queues["loop"].ready + s.queues["loop"].delayed, 1, "{s:#?}");
    let work = s.queues.get("work").cloned().unwrap_or_default();
    assert_eq!((work.ready, work.delayed, work.buried), (0, 0, 0), "{s:#?}");

    // The loop job kept its payload and attempt count through compaction.
    let (tx, rx) = mpsc::channel();
    engine
        .register("loop", move |job: &JobRef<'_>| {
            let _ = tx.send((job.id(), job.payload().to_vec(), job.attempt()));
            Outcome::Done
        })
        .unwrap();
    let (id, payload, attempt) = rx.recv_timeout(WAIT).unwrap();
    assert_eq!((id, payload), (looping, loop_payload));
    assert_eq!(u64::from(attempt), runs_before + 1, "attempts lost across compaction");
    wait_stats(&engine, WAIT, "the loop job to complete", |s| s.jobs == 1);
    let s = engine.stats();
    assert_eq!(s.queues["later"].delayed, 1);
    // New ids stay above the old ones, also once the segments holding the
    // stream's records are gone.
    let fresh = engine.submit(Job::new("later", b"x".to_vec()).delay(Duration::from_secs(3600)));
    assert!(fresh.unwrap().get() > delayed.get() + BATCH * batches);
    engine.shutdown().unwrap();
    Run { samples }
}

/// A shorter stream (10 000 jobs, about 30 segments of records): whatever
/// compaction does or does not release, nothing live is lost and nothing
/// completed comes back.
#[test]
fn long_lived_jobs_survive_compaction_and_restart() {
    stream(20);
}

/// 1 000 000 jobs, about 3 000 segments of records: the log stays within
/// [`MAX_SEGMENTS`] after every batch and at the end.
#[test]
fn the_log_stays_bounded_with_a_long_delay_and_a_retry_loop() {
    let run = stream(2_000);
    let peak = run.samples.iter().map(|s| s.1).max().unwrap();
    let files: Vec<u64> = run.samples.iter().map(|s| s.0).collect();
    assert!(
        peak <= MAX_SEGMENTS * SEGMENT,
        "the log grew to {peak} bytes ({} segments of {SEGMENT}); segment files after each \
         batch of {BATCH}, then idle, then after shutdown: {files:?}",
        peak.div_ceil(SEGMENT)
    );
    let at_end = run.samples.last().unwrap();
    // How far the last compaction got before shutdown depends on timing;
    // the bound does not.
    assert!(at_end.0 <= MAX_SEGMENTS, "{} segment files left after shutdown: {files:?}", at_end.0);
}
