//! The lag controller, blocking pools and stall detection, end to end.
//!
//! No test sleeps to synchronise: each waits for a condition (a channel, a
//! barrier, or polling `stats()` until it holds) with a generous deadline
//! that only a broken engine reaches.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::wait_stats;
use spindle_engine::{Durability, Engine, Job, JobRef, Outcome, Workers};
use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Barrier};
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(60);

/// An in-memory engine with one shard and one core worker.
fn one_worker() -> Engine {
    Engine::builder()
        .durability(Durability::Memory)
        .shards(1)
        .workers(Workers::Static(1))
        .build()
        .unwrap()
}

/// Real CPU work of about `iters` rounds.
fn spin(iters: u64) -> u64 {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for i in 0..iters {
        x = std::hint::black_box(x.rotate_left(5) ^ i).wrapping_mul(0x100_0000_01B3);
    }
    x
}

#[test]
fn a_burst_unparks_workers_every_job_completes_and_the_pool_shrinks_after() {
    // More shards than cores (unpinned): the controller starts with one
    // active worker and must grow for the burst.
    let engine = Engine::builder()
        .durability(Durability::Memory)
        .shards(4)
        .workers(Workers::Lag)
        .latency_target(Duration::from_millis(1))
        .build()
        .unwrap();
    let s =
        wait_stats(&engine, DEADLINE, "the first controller tick", |s| s.workers.policy == "lag");
    assert_eq!(s.workers.active, 1, "idle engine starts at min_workers");
    assert_eq!(s.workers.parked, 3);

    let (tx, rx) = mpsc::channel();
    engine
        .register("burst", move |job: &JobRef<'_>| {
            spin(20_000);
            tx.send(job.id()).unwrap();
            Outcome::Done
        })
        .unwrap();
    let n = 20_000;
    let ids: HashSet<_> =
        (0..n).map(|i| engine.submit(Job::new("burst", vec![i as u8])).unwrap()).collect();
    let grown = wait_stats(&engine, DEADLINE, "the pool to grow", |s| s.workers.active > 1);
    assert!(grown.workers.changes >= 1);
    let mut done = HashSet::new();
    while done.len() < n {
        let id = rx.recv_timeout(DEADLINE).expect("a job never completed");
        assert!(done.insert(id), "job {id} ran twice");
    }
    assert_eq!(done, ids);
    // Load gone: back to one worker after the stabilisation window.
    let s = wait_stats(&engine, DEADLINE, "the pool to shrink", |s| s.workers.active == 1);
    assert!(s.workers.changes >= 2, "{:?}", s.workers);
    assert_eq!(s.total().completed, n as u64);
    engine.shutdown().unwrap();
}

#[test]
fn shards_outside_the_active_set_run_no_handlers() {
    let engine = Engine::builder()
        .durability(Durability::Memory)
        .shards(3)
        .workers(Workers::Static(1))
        .build()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    // Handlers running at once: one active worker runs one at a time
    // (which shard it is may change between ticks: the active set follows
    // the producer's core, `docs/controller.md`).
    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let (r, m) = (running.clone(), most.clone());
    engine
        .register("q", move |_: &JobRef<'_>| {
            let now = r.fetch_add(1, Ordering::SeqCst) + 1;
            m.fetch_max(now, Ordering::SeqCst);
            spin(2_000);
            r.fetch_sub(1, Ordering::SeqCst);
            tx.send(()).unwrap();
            Outcome::Done
        })
        .unwrap();
    // Unique keys hash over every shard, parked ones included: their jobs
    // must still run, on the active worker.
    for i in 0..300 {
        let mut job = Job::new("q", vec![1]);
        if i % 3 == 0 {
            job = job.unique_key(format!("k{i}"));
        }
        engine.submit(job).unwrap();
    }
    for _ in 0..300 {
        rx.recv_timeout(DEADLINE).expect("a job never ran");
    }
    let s = engine.stats();
    assert_eq!((s.workers.active, s.workers.parked), (1, 2));
    assert_eq!(most.load(Ordering::SeqCst), 1, "two handlers ran at once");
    assert_eq!(s.shards.iter().map(|x| x.jobs_run).sum::<u64>(), 300, "{:?}", s.shards);
    engine.shutdown().unwrap();
}

#[test]
fn the_active_worker_moves_to_the_producers_core() {
    // One shard per core, pinned, and one active worker (a static count,
    // so only a move can bring jobs to another shard); the controller
    // starts with shard 0 active. This thread runs on the last shard's
    // core, so once the controller has seen its demand the jobs run there
    // (same-core hand-off) instead of on shard 0.
    let engine = Engine::builder()
        .durability(Durability::Memory)
        .workers(Workers::Static(1))
        .idle_spin(Duration::ZERO)
        .build()
        .unwrap();
    let s = wait_stats(&engine, DEADLINE, "the shards to pin themselves", |s| {
        s.workers.policy == "static" && s.shards.iter().all(|x| x.pinned_core.is_some())
    });
    let last = s.shards.len() - 1;
    if last == 0 {
        eprintln!("one core: no other core for the active worker to move to");
        engine.shutdown().unwrap();
        return;
    }
    assert_eq!(s.workers.active, 1, "{:?}", s.workers);
    let core = s.shards[last].pinned_core.unwrap();
    assert!(core_affinity::set_for_current(core_affinity::CoreId { id: core }));
    let (tx, rx) = mpsc::channel();
    engine
        .register("q", move |_: &JobRef<'_>| {
            tx.send(std::thread::current().name().map(str::to_owned)).unwrap();
            Outcome::Done
        })
        .unwrap();
    let want = format!("spindle-shard-{last}");
    let start = std::time::Instant::now();
    let mut elsewhere = 0u64;
    loop {
        engine.submit(Job::new("q", vec![1])).unwrap();
        let ran = rx.recv_timeout(DEADLINE).expect("a job never ran");
        if ran.as_deref() == Some(want.as_str()) {
            break;
        }
        elsewhere += 1;
        assert!(
            start.elapsed() < DEADLINE,
            "after {elapsed:?} and {elsewhere} jobs, jobs still run on {ran:?}, not on the \
             producer's core's {want}",
            elapsed = start.elapsed()
        );
    }
    assert_eq!(engine.stats().workers.active, 1);
    engine.shutdown().unwrap();
}

#[test]
fn blocking_jobs_run_on_the_pool_not_on_the_core_worker() {
    // One shard, one core worker. Eight blocking jobs wait on a barrier
    // together with this thread; a CPU job submitted after them must still
    // run while they block, and the barrier only opens if all eight run at
    // once (so the pool grew to at least eight threads).
    let engine = one_worker();
    let barrier = Arc::new(Barrier::new(9));
    let (io_tx, io_rx) = mpsc::channel();
    let b = barrier.clone();
    engine
        .register_blocking("io", move |job: &JobRef<'_>| {
            b.wait();
            io_tx.send(job.id()).unwrap();
            Outcome::Done
        })
        .unwrap();
    let (cpu_tx, cpu_rx) = mpsc::channel();
    engine
        .register("cpu", move |job: &JobRef<'_>| {
            cpu_tx.send(job.id()).unwrap();
            Outcome::Done
        })
        .unwrap();
    for _ in 0..8 {
        engine.submit(Job::new("io", vec![])).unwrap();
    }
    let cpu = engine.submit(Job::new("cpu", vec![])).unwrap();
    assert_eq!(cpu_rx.recv_timeout(DEADLINE).unwrap(), cpu, "the core worker was blocked");
    barrier.wait();
    for _ in 0..8 {
        io_rx.recv_timeout(DEADLINE).expect("a blocking job never finished");
    }
    let s =
        wait_stats(&engine, DEADLINE, "completions to be counted", |s| s.total().completed == 9);
    assert_eq!(s.queues["io"].completed, 8);
    // (The barrier opening is the proof that eight pool threads ran at
    // once; `stats().workers.blocking_threads` is sampled per tick and may
    // lag behind.)
    assert_eq!(s.shards[0].jobs_run, 9);
    engine.shutdown().unwrap();
}

#[test]
fn a_stalled_handler_is_reported_once_and_strands_nothing() {
    let engine = Engine::builder()
        .durability(Durability::Memory)
        .shards(2)
        .workers(Workers::Static(2))
        .stall_threshold(2, Duration::from_millis(20))
        .build()
        .unwrap();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let release_rx = std::sync::Mutex::new(release_rx);
    let (started_tx, started_rx) = mpsc::channel();
    engine
        .register("slow", move |_: &JobRef<'_>| {
            started_tx.send(()).unwrap();
            release_rx.lock().unwrap().recv().unwrap();
            Outcome::Done
        })
        .unwrap();
    let (tx, rx) = mpsc::channel();
    engine
        .register("fast", move |_: &JobRef<'_>| {
            tx.send(()).unwrap();
            Outcome::Done
        })
        .unwrap();
    let slow = engine.submit(Job::new("slow", vec![])).unwrap();
    started_rx.recv_timeout(DEADLINE).unwrap();
    let s = wait_stats(&engine, DEADLINE, "the stall report", |s| s.workers.stalls == 1);
    assert_eq!(s.workers.busy, 1);
    let report = s.workers.last_stall.expect("the report");
    assert_eq!((report.job, report.queue.as_str()), (slow, "slow"));
    assert!(report.running_ms >= 20, "{report:?}");
    // Jobs submitted while one worker is stuck all run on the other.
    for _ in 0..2_000 {
        engine.submit(Job::new("fast", vec![])).unwrap();
    }
    for _ in 0..2_000 {
        rx.recv_timeout(DEADLINE).expect("a job was stranded behind the stalled handler");
    }
    release_tx.send(()).unwrap();
    let s = wait_stats(&engine, DEADLINE, "the slow job", |s| s.queues["slow"].completed == 1);
    assert_eq!(s.workers.stalls, 1, "reported once");
    assert_eq!(s.total().completed, 2_001);
    engine.shutdown().unwrap();
}

#[test]
fn desired_workers_is_published_for_a_queue_without_handler() {
    let engine = Engine::builder().durability(Durability::Memory).shards(2).build().unwrap();
    for _ in 0..100 {
        engine.submit(Job::new("remote", vec![0; 16])).unwrap();
    }
    let s = wait_stats(&engine, DEADLINE, "desired_workers", |s| {
        s.queues.get("remote").is_some_and(|q| q.desired_workers >= 1)
    });
    assert_eq!(s.queues["remote"].ready, 100);
    engine.shutdown().unwrap();
}

#[test]
fn the_blocking_pool_grows_past_its_idle_threads() {
    // Two jobs leave two idle pool threads behind; six jobs that can only
    // finish together must then get six threads at once (a pool that
    // counted on its idle threads for every hand-off would stop at two).
    let engine = one_worker();
    let barrier = Arc::new(Barrier::new(7));
    let (tx, rx) = mpsc::channel();
    let b = barrier.clone();
    engine
        .register_blocking("io", move |job: &JobRef<'_>| {
            if job.payload() == b"wait" {
                b.wait();
            }
            tx.send(job.id()).unwrap();
            Outcome::Done
        })
        .unwrap();
    for _ in 0..2 {
        engine.submit(Job::new("io", b"now".to_vec())).unwrap();
    }
    for _ in 0..2 {
        rx.recv_timeout(DEADLINE).unwrap();
    }
    for _ in 0..6 {
        engine.submit(Job::new("io", b"wait".to_vec())).unwrap();
    }
    barrier.wait();
    for _ in 0..6 {
        rx.recv_timeout(DEADLINE).expect("a blocking job never finished");
    }
    engine.shutdown().unwrap();
}

#[test]
fn shutdown_leaves_waiting_blocking_jobs_in_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let build = || {
        Engine::builder()
            .data_dir(dir.path())
            .durability(Durability::Process)
            .shards(1)
            .workers(Workers::Static(1))
            .max_blocking(2)
            .build()
            .unwrap()
    };
    let engine = build();
    let runs = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (started_tx, started_rx) = mpsc::channel();
    let (r, e2) = (runs.clone(), engine.clone());
    engine
        .register_blocking("io", move |_: &JobRef<'_>| {
            r.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = started_tx.send(());
            // Hold the thread until the engine stops taking jobs.
            while e2.submit(Job::new("probe", vec![])).is_ok() {
                std::thread::park_timeout(Duration::from_millis(1));
            }
            Outcome::Done
        })
        .unwrap();
    for _ in 0..20 {
        engine.submit(Job::new("io", vec![])).unwrap();
    }
    started_rx.recv_timeout(DEADLINE).unwrap();
    engine.shutdown().unwrap();
    let ran = runs.load(std::sync::atomic::Ordering::SeqCst);
    assert!(ran < 20, "shutdown ran the whole blocking backlog ({ran} jobs)");
    drop(engine);
    // Every job that did not run is still there (the probe jobs too).
    let engine = build();
    let s = engine.stats();
    assert_eq!(s.queues["io"].ready, 20 - ran, "{:?}", s.queues);
    engine.shutdown().unwrap();
}
