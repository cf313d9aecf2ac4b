//! Recovery through the public API: what a rebuilt engine finds in the data
//! directory a previous engine left behind, after a clean shutdown and after
//! damage to a shard's last log segment.
//!
//! Every test runs with 2 shards and with 4 (more shards than this machine's
//! 2 cores). Synchronisation is by channels and by the engine's own stats;
//! `WAIT` only guards against hangs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::wait_stats;
use spindle_engine::wal::{scan_segment_bytes, WalError};
use spindle_engine::{BuildError, Durability, Engine, Job, JobId, JobRef, Outcome, SubmitError};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver};
use std::time::Duration;

/// Upper bound on waiting for an event that must happen; a guard against
/// hanging, never a synchronisation device.
const WAIT: Duration = Duration::from_secs(20);
/// Small segments, so a shard's log spans several files.
const SEGMENT: u64 = 64 << 10;

fn builder(dir: &Path, d: Durability, shards: usize) -> spindle_engine::EngineBuilder {
    Engine::builder()
        .data_dir(dir)
        .durability(d)
        .shards(shards)
        // Every shard active from the start, so every shard's log holds jobs.
        .workers(spindle_engine::Workers::Static(shards))
        .segment_size(SEGMENT)
        .retry_backoff(Duration::from_millis(1), Duration::from_millis(5))
}

fn build(dir: &Path, d: Durability, shards: usize) -> Engine {
    builder(dir, d, shards).build().unwrap()
}

/// What a handler saw of one run.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Ran {
    id: JobId,
    queue: String,
    payload: Vec<u8>,
    priority: u32,
    attempt: u32,
}

/// What a job was submitted with: (queue, payload, priority).
type Spec = (String, Vec<u8>, u32);

/// Registers a handler on each of `queues` that reports every run and
/// completes the job.
fn collect(engine: &Engine, queues: &[&str]) -> Receiver<Ran> {
    let (tx, rx) = mpsc::channel();
    for q in queues {
        let tx = tx.clone();
        engine
            .register(q, move |job: &JobRef<'_>| {
                let _ = tx.send(Ran {
                    id: job.id(),
                    queue: job.queue().to_string(),
                    payload: job.payload().to_vec(),
                    priority: job.priority(),
                    attempt: job.attempt(),
                });
                Outcome::Done
            })
            .unwrap();
    }
    rx
}

/// Receives exactly the runs of `expected`'s ids (each once, as a first
/// attempt), checking each run's queue, payload and priority, then waits
/// until the engine holds only `left` jobs and checks that nothing else ran.
fn expect_runs(
    engine: &Engine,
    rx: &Receiver<Ran>,
    expected: &BTreeMap<JobId, Spec>,
    left: u64,
    ctx: &str,
) {
    let mut seen = BTreeSet::new();
    while seen.len() < expected.len() {
        let r = rx.recv_timeout(WAIT).unwrap_or_else(|_| {
            let missing: Vec<_> = expected.keys().filter(|id| !seen.contains(*id)).collect();
            panic!("{ctx}: jobs never ran after restart: {missing:?}")
        });
        let Some((queue, payload, priority)) = expected.get(&r.id) else {
            panic!("{ctx}: job {} ran but was not expected back: {r:?}", r.id)
        };
        assert!(seen.insert(r.id), "{ctx}: job {} ran twice", r.id);
        assert_eq!(
            (&r.queue, &r.payload, r.priority, r.attempt),
            (queue, payload, *priority, 1),
            "{ctx}: job {} came back changed",
            r.id
        );
    }
    wait_stats(engine, WAIT, "the expected jobs to complete", |s| s.jobs == left);
    assert!(rx.try_recv().is_err(), "{ctx}: an unexpected job ran");
}

/// A distinctive payload: `job:NNNNN:` then `len` filler bytes.
fn payload(i: usize, len: usize) -> Vec<u8> {
    let mut p = format!("job:{i:05}:").into_bytes();
    p.extend((0..len).map(|j| b'a' + ((i * 7 + j) % 26) as u8));
    p
}

/// The job index in a payload made by [`payload`], found inside an encoded
/// log record.
fn job_in(record: &[u8]) -> Option<usize> {
    let at = record.windows(4).position(|w| w == b"job:")?;
    std::str::from_utf8(record.get(at + 4..at + 9)?).ok()?.parse().ok()
}

fn shard_dir(dir: &Path, shard: usize) -> PathBuf {
    dir.join(format!("shard-{shard:03}"))
}

/// The shard's segment files in log order.
fn segments(shard_dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(shard_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    v.sort();
    v
}

/// Jobs submitted and not run survive a clean shutdown with everything they
/// carry; completed jobs stay gone; buried and delayed jobs keep their
/// state; unique keys still deduplicate; ids keep growing.
fn jobs_survive_shutdown(durability: Durability, shards: usize) {
    let ctx = format!("{durability:?}, {shards} shards");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut expected: BTreeMap<JobId, Spec> = BTreeMap::new();
    let mut all_ids = Vec::new();
    let (key_id, buried_id, delayed_id);
    {
        let engine = build(dir, durability, shards);
        // Jobs that complete before the shutdown.
        let done_rx = collect(&engine, &["done"]);
        let mut done = BTreeSet::new();
        for i in 0..40u8 {
            done.insert(engine.submit(Job::new("done", vec![i])).unwrap());
        }
        let batch = (40..80u8).map(|i| Job::new("done", vec![i])).collect();
        done.extend(engine.submit_batch(batch).unwrap());
        all_ids.extend(done.iter().copied());
        while !done.is_empty() {
            assert!(done.remove(&done_rx.recv_timeout(WAIT).unwrap().id));
        }
        wait_stats(&engine, WAIT, "80 completions", |s| s.queues["done"].completed == 80);

        // Jobs of queues without a handler: they wait, and must come back.
        for i in 0..60usize {
            let q = if i % 2 == 0 { "a" } else { "b/x.y" };
            let p = payload(i, i * 3);
            let prio = (i % 7) as u32 * 100;
            let id = engine.submit(Job::new(q, p.clone()).priority(prio)).unwrap();
            expected.insert(id, (q.to_string(), p, prio));
        }
        let batch: Vec<(Job, Spec)> = (60..120usize)
            .map(|i| {
                let (p, prio) = (payload(i, 500 - i), u32::MAX - i as u32);
                (Job::new("a", p.clone()).priority(prio), ("a".to_string(), p, prio))
            })
            .collect();
        let (jobs, specs): (Vec<Job>, Vec<Spec>) = batch.into_iter().unzip();
        let ids = engine.submit_batch(jobs).unwrap();
        expected.extend(ids.into_iter().zip(specs));
        // An empty payload survives too.
        let id = engine.submit(Job::new("b/x.y", Vec::new()).priority(3)).unwrap();
        expected.insert(id, ("b/x.y".to_string(), Vec::new(), 3));
        // A job holding a unique key.
        key_id = engine.submit(Job::new("u", b"keyed".to_vec()).unique_key("user-7")).unwrap();
        expected.insert(key_id, ("u".to_string(), b"keyed".to_vec(), 0));

        // A buried job.
        let (btx, brx) = mpsc::channel();
        engine
            .register("bury", move |job: &JobRef<'_>| {
                let _ = btx.send(job.id());
                Outcome::Bury("bad input".into())
            })
            .unwrap();
        buried_id = engine.submit(Job::new("bury", b"dead".to_vec())).unwrap();
        assert_eq!(brx.recv_timeout(WAIT).unwrap(), buried_id);
        wait_stats(&engine, WAIT, "the job to be buried", |s| s.queues["bury"].buried == 1);

        // A delayed job.
        delayed_id = engine
            .submit(Job::new("later", b"tomorrow".to_vec()).delay(Duration::from_secs(3600)))
            .unwrap();

        all_ids.extend(expected.keys().copied());
        all_ids.extend([buried_id, delayed_id]);
        engine.shutdown().unwrap();
    }
    let old_max = all_ids.iter().copied().max().unwrap();

    let engine = build(dir, durability, shards);
    assert_eq!(engine.shards(), shards, "{ctx}");
    let s = engine.stats();
    assert_eq!(s.jobs, expected.len() as u64 + 2, "{ctx}: live jobs after restart: {s:#?}");
    let q = |name: &str| s.queues.get(name).cloned().unwrap_or_default();
    assert_eq!(q("a").ready, 90, "{ctx}");
    assert_eq!(q("b/x.y").ready, 31, "{ctx}");
    assert_eq!(q("u").ready, 1, "{ctx}");
    assert_eq!((q("done").ready, q("done").delayed, q("done").buried), (0, 0, 0), "{ctx}");
    assert_eq!((q("bury").buried, q("bury").ready, q("bury").delayed), (1, 0, 0), "{ctx}");
    assert_eq!((q("later").delayed, q("later").ready), (1, 0), "{ctx}");

    // Unique keys still deduplicate; the key is per queue.
    match engine.submit(Job::new("u", b"again".to_vec()).unique_key("user-7")) {
        Err(SubmitError::Duplicate { existing }) => assert_eq!(existing, key_id, "{ctx}"),
        other => panic!("{ctx}: expected a duplicate after restart, got {other:?}"),
    }
    let other_queue = engine.submit(Job::new("v", b"other".to_vec()).unique_key("user-7")).unwrap();
    expected.insert(other_queue, ("v".to_string(), b"other".to_vec(), 0));

    // Ids are never reused: everything new is above everything old.
    assert!(
        other_queue.get() > old_max.get(),
        "{ctx}: id {other_queue} reused (old max {old_max})"
    );
    let fresh = engine.submit(Job::new("v", b"fresh".to_vec()).priority(9)).unwrap();
    assert!(fresh > old_max, "{ctx}: id {fresh} reused (old max {old_max})");
    expected.insert(fresh, ("v".to_string(), b"fresh".to_vec(), 9));
    let batch =
        engine.submit_batch(vec![Job::new("v", b"b1".to_vec()), Job::new("v", b"b2".to_vec())]);
    for (id, p) in batch.unwrap().into_iter().zip([b"b1", b"b2"]) {
        assert!(id > old_max, "{ctx}: id {id} reused (old max {old_max})");
        expected.insert(id, ("v".to_string(), p.to_vec(), 0));
    }

    // Everything comes back exactly once; completed jobs do not. The buried
    // and the delayed job stay where they are.
    let rx = collect(&engine, &["a", "b/x.y", "u", "v", "done", "bury", "later"]);
    expect_runs(&engine, &rx, &expected, 2, &ctx);
    let s = engine.stats();
    assert_eq!(s.queues["bury"].buried, 1, "{ctx}");
    assert_eq!(s.queues["later"].delayed, 1, "{ctx}");
    assert!(rx.try_recv().is_err(), "{ctx}: a completed, buried or delayed job ran");
    // The key is free once its job completed.
    engine.submit(Job::new("u", b"third".to_vec()).unique_key("user-7")).unwrap();
    engine.shutdown().unwrap();
}

#[test]
fn jobs_survive_shutdown_process_2_shards() {
    jobs_survive_shutdown(Durability::Process, 2);
}

#[test]
fn jobs_survive_shutdown_process_4_shards() {
    jobs_survive_shutdown(Durability::Process, 4);
}

#[test]
fn jobs_survive_shutdown_sync_2_shards() {
    jobs_survive_shutdown(Durability::Sync, 2);
}

#[test]
fn jobs_survive_shutdown_sync_4_shards() {
    jobs_survive_shutdown(Durability::Sync, 4);
}

/// Restarting twice in a row (with nothing happening in between) changes
/// nothing, and a restart with fewer shards configured still finds every
/// shard's jobs.
#[test]
fn restarts_are_idempotent_and_keep_every_shard() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut expected = BTreeMap::new();
    {
        let engine = build(dir, Durability::Process, 4);
        for i in 0..40usize {
            let p = payload(i, 10);
            let id = engine.submit(Job::new("r", p.clone()).priority(i as u32)).unwrap();
            expected.insert(id, ("r".to_string(), p, i as u32));
        }
        engine.shutdown().unwrap();
    }
    for _ in 0..2 {
        let engine = build(dir, Durability::Process, 4);
        assert_eq!(engine.stats().queues["r"].ready, 40);
        engine.shutdown().unwrap();
    }
    // Fewer shards configured than the data dir holds: all of them run.
    let engine = build(dir, Durability::Process, 2);
    assert_eq!(engine.shards(), 4);
    let rx = collect(&engine, &["r"]);
    expect_runs(&engine, &rx, &expected, 0, "restart with 2 of 4 shards");
    engine.shutdown().unwrap();
}

/// How to damage the last segment of the victim shard.
#[derive(Debug, Clone, Copy)]
enum Damage {
    /// Flip bytes in the middle of the last record's payload.
    FlipLast,
    /// Zero everything from the middle of the last record to the end of the
    /// file (a torn write: the tail never reached the file).
    ZeroTail,
    /// Flip a byte in a record in the middle of the last segment: it and
    /// every later record are cut.
    FlipMiddle,
}

/// One record of a shard's log, as found on disk.
struct OnDisk {
    file: PathBuf,
    lsn: u64,
    /// Offset of the payload in the file, and its length.
    at: usize,
    len: usize,
    job: Option<usize>,
}

fn scan(shard_dir: &Path) -> Vec<OnDisk> {
    let mut out = Vec::new();
    for file in segments(shard_dir) {
        let bytes = std::fs::read(&file).unwrap();
        for r in scan_segment_bytes(&bytes) {
            out.push(OnDisk {
                file: file.clone(),
                lsn: r.lsn,
                at: r.payload.as_ptr() as usize - bytes.as_ptr() as usize,
                len: r.payload.len(),
                job: job_in(r.payload),
            });
        }
    }
    out.sort_by_key(|r| r.lsn);
    out
}

fn damage_last_segment(shards: usize, damage: Damage) {
    let ctx = format!("{damage:?}, {shards} shards");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let n = 200 * shards;
    let mut specs: BTreeMap<usize, (JobId, Spec)> = BTreeMap::new();
    {
        let engine = build(dir, Durability::Process, shards);
        for i in 0..n {
            let p = payload(i, 200 + (i * 13) % 200);
            let prio = (i % 5) as u32;
            let id = engine.submit(Job::new("c", p.clone()).priority(prio)).unwrap();
            specs.insert(i, (id, ("c".to_string(), p, prio)));
        }
        engine.shutdown().unwrap();
    }

    // Find the records of the shard holding the most jobs (single submits
    // go to the shard of the producer's core when it is active, else a
    // spinning or the next active one: `docs/architecture.md`) and pick
    // the one to damage.
    let victim_shard = (0..shards)
        .max_by_key(|&k| scan(&shard_dir(dir, k)).iter().filter(|r| r.job.is_some()).count())
        .unwrap();
    let victim_dir = shard_dir(dir, victim_shard);
    let records = scan(&victim_dir);
    let in_victim: BTreeSet<usize> = records.iter().filter_map(|r| r.job).collect();
    assert!(in_victim.len() >= 100, "{ctx}: shard {victim_shard} holds {} jobs", in_victim.len());
    let files: BTreeSet<&PathBuf> = records.iter().map(|r| &r.file).collect();
    assert!(files.len() >= 2, "{ctx}: the victim shard's log should span several segments");
    let victim = match damage {
        Damage::FlipLast | Damage::ZeroTail => records.len() - 1,
        Damage::FlipMiddle => {
            // The middle record of the last segment that holds at least
            // three (where the rollover falls depends on how submits were
            // spread over shards; a damaged earlier segment also cuts every
            // later one: `docs/wal-format.md`, "Recovery").
            let ks: Vec<usize> = (0..records.len()).collect();
            let in_seg = ks
                .chunk_by(|&a, &b| records[a].file == records[b].file)
                .rev()
                .find(|seg| seg.len() >= 3)
                .unwrap_or_else(|| panic!("{ctx}: no segment holds three records"));
            in_seg[in_seg.len() / 2]
        }
    };
    let v = &records[victim];
    let mut bytes = std::fs::read(&v.file).unwrap();
    let mid = v.at + v.len / 2;
    match damage {
        Damage::FlipLast | Damage::FlipMiddle => {
            for b in &mut bytes[mid..mid + 3] {
                *b ^= 0x5A;
            }
        }
        Damage::ZeroTail => bytes[mid..].fill(0),
    }
    std::fs::write(&v.file, &bytes).unwrap();
    let kept_lsn = v.lsn;

    // Jobs expected back: everything of the other shards, and the victim's jobs
    // whose record lies before the damage.
    let before: BTreeSet<usize> =
        records.iter().filter(|r| r.lsn < kept_lsn).filter_map(|r| r.job).collect();
    let lost: BTreeSet<usize> = in_victim.difference(&before).copied().collect();
    assert!(!lost.is_empty(), "{ctx}");
    let expected: BTreeMap<JobId, Spec> = specs
        .iter()
        .filter(|(i, _)| !lost.contains(i))
        .map(|(_, (id, s))| (*id, s.clone()))
        .collect();

    // Strict recovery refuses to start, names the shard, and changes nothing.
    let snapshot = |d: &Path| -> Vec<(PathBuf, Vec<u8>)> {
        segments(d).into_iter().map(|p| (p.clone(), std::fs::read(&p).unwrap())).collect()
    };
    let before_files = snapshot(&victim_dir);
    match builder(dir, Durability::Process, shards).strict_recovery(true).build() {
        Err(BuildError::Wal { shard, source: WalError::Corrupt { dropped, .. } })
            if shard == victim_shard =>
        {
            assert!(dropped > 0, "{ctx}");
        }
        Err(e) => panic!("{ctx}: strict recovery failed with the wrong error: {e:?}"),
        Ok(_) => panic!("{ctx}: strict recovery accepted a damaged log"),
    }
    assert!(before_files == snapshot(&victim_dir), "{ctx}: strict recovery changed the log");

    // The default mode cuts the damage and keeps everything before it.
    let engine = build(dir, Durability::Process, shards);
    let s = engine.stats();
    assert_eq!(
        s.jobs,
        expected.len() as u64,
        "{ctx}: lost {} jobs, expected {}",
        n as u64 - s.jobs,
        lost.len()
    );
    let rx = collect(&engine, &["c"]);
    expect_runs(&engine, &rx, &expected, 0, &ctx);
    // The recovered log is usable and the cut is permanent: a job submitted
    // now comes back after another restart, even in strict mode.
    let mut after = BTreeMap::new();
    for i in 0..2 * shards {
        let p = payload(n + i, 30);
        let id = engine.submit(Job::new("d", p.clone())).unwrap();
        assert!(specs.values().all(|(old, _)| *old < id), "{ctx}: id {id} reused");
        after.insert(id, ("d".to_string(), p, 0));
    }
    engine.shutdown().unwrap();
    drop(engine);
    let engine = builder(dir, Durability::Process, shards).strict_recovery(true).build().unwrap();
    assert_eq!(engine.stats().jobs, after.len() as u64, "{ctx}");
    let rx = collect(&engine, &["c", "d"]);
    expect_runs(&engine, &rx, &after, 0, &ctx);
    engine.shutdown().unwrap();
}

#[test]
fn flipped_bytes_in_the_last_record_cut_only_that_record_2_shards() {
    damage_last_segment(2, Damage::FlipLast);
}

#[test]
fn flipped_bytes_in_the_last_record_cut_only_that_record_4_shards() {
    damage_last_segment(4, Damage::FlipLast);
}

#[test]
fn a_zeroed_tail_cuts_only_the_torn_record_2_shards() {
    damage_last_segment(2, Damage::ZeroTail);
}

#[test]
fn a_zeroed_tail_cuts_only_the_torn_record_4_shards() {
    damage_last_segment(4, Damage::ZeroTail);
}

#[test]
fn damage_mid_segment_keeps_everything_before_it_2_shards() {
    damage_last_segment(2, Damage::FlipMiddle);
}

#[test]
fn damage_mid_segment_keeps_everything_before_it_4_shards() {
    damage_last_segment(4, Damage::FlipMiddle);
}

/// Whether the shard's log directory is unlocked, i.e. the shard thread has
/// closed its log (an exclusive `flock` on `LOCK` is free again).
fn log_closed(shard_dir: &Path) -> bool {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(shard_dir.join("LOCK")).unwrap();
    #[allow(unsafe_code)]
    // SAFETY: flock on a descriptor we own; closing it releases the lock.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    rc == 0
}

/// A job completed during `shutdown()` must not run again after restart,
/// also when another shard stole it: the thief finishes it after the owner
/// has stopped, and the owner is the only one that logs its completion.
#[test]
fn a_stolen_job_completed_during_shutdown_does_not_come_back() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let engine = build(dir, Durability::Process, 2);
    let (ran_tx, ran_rx) = mpsc::channel::<(Vec<u8>, String)>();
    let (release_owner, owner_rx) = mpsc::channel::<()>();
    let (release_thief, thief_rx) = mpsc::channel::<()>();
    let owner_rx = std::sync::Mutex::new(owner_rx);
    let thief_rx = std::sync::Mutex::new(thief_rx);
    engine
        .register("s", move |job: &JobRef<'_>| {
            let shard = std::thread::current().name().unwrap_or_default().to_string();
            ran_tx.send((job.payload().to_vec(), shard)).unwrap();
            let gate = if job.payload() == b"blocker" { &owner_rx } else { &thief_rx };
            gate.lock().unwrap().recv_timeout(WAIT).expect("never released");
            Outcome::Done
        })
        .unwrap();
    // One batch lands on one shard: it runs the blocker, the other shard
    // steals the victim.
    engine
        .submit_batch(vec![Job::new("s", b"blocker".to_vec()), Job::new("s", b"victim".to_vec())])
        .unwrap();
    let mut running: BTreeMap<Vec<u8>, String> = BTreeMap::new();
    for _ in 0..2 {
        let (p, shard) = ran_rx.recv_timeout(WAIT).unwrap();
        running.insert(p, shard);
    }
    let owner = running[&b"blocker".to_vec()].clone();
    assert_ne!(owner, running[&b"victim".to_vec()], "the victim must have been stolen");
    let owner_dir = shard_dir(dir, owner.rsplit('-').next().unwrap().parse().unwrap());

    // Shut down while the thief still runs the victim: the owner finishes
    // the blocker, and must keep its log open until the victim's outcome is
    // back (it is the only one that can log it).
    std::thread::scope(|s| {
        let stopping = s.spawn(|| engine.shutdown());
        release_owner.send(()).unwrap();
        assert!(!log_closed(&owner_dir), "the owner closed its log while its stolen job ran");
        release_thief.send(()).unwrap();
        stopping.join().unwrap().unwrap();
    });
    drop(engine);

    // Both jobs completed before shutdown returned: neither comes back.
    let engine = build(dir, Durability::Process, 2);
    if engine.stats().jobs != 0 {
        let rx = collect(&engine, &["s"]);
        let r = rx.recv_timeout(WAIT).unwrap();
        panic!(
            "job {} ({:?}) completed during shutdown and came back after restart",
            r.id,
            String::from_utf8_lossy(&r.payload)
        );
    }
    engine.shutdown().unwrap();
}
