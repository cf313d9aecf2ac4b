//! The job lifecycle through the public API.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use spindle_engine::{Durability, Engine, Job, JobId, JobRef, Outcome, SubmitError};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Upper bound on waiting for an event that must happen; a guard against
/// hanging, never a synchronisation device.
const WAIT: Duration = Duration::from_secs(20);

fn mem(shards: usize) -> Engine {
    Engine::builder()
        .shards(shards)
        .retry_backoff(Duration::from_millis(1), Duration::from_millis(5))
        .build()
        .unwrap()
}

#[test]
fn a_job_runs_once_and_completes() {
    let engine = mem(2);
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    engine
        .register("emails", move |job: &JobRef<'_>| {
            tx.lock().unwrap().send((job.id(), job.payload().to_vec(), job.attempt())).unwrap();
            Outcome::Done
        })
        .unwrap();
    let id = engine.submit(Job::new("emails", b"hi".to_vec())).unwrap();
    let (got, payload, attempt) = rx.recv_timeout(WAIT).unwrap();
    assert_eq!((got, payload.as_slice(), attempt), (id, &b"hi"[..], 1));
    engine.shutdown().unwrap();
    assert!(rx.try_recv().is_err(), "ran exactly once");
    let stats = engine.stats();
    assert_eq!(stats.queues["emails"].completed, 1);
    assert_eq!(stats.jobs, 0);
}

#[test]
fn priorities_then_fifo_within_a_shard() {
    let engine = mem(1);
    let jobs = [(5, "a"), (1, "b"), (5, "c"), (0, "d"), (1, "e")];
    for (p, name) in jobs {
        engine.submit(Job::new("q", name.as_bytes().to_vec()).priority(p)).unwrap();
    }
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    engine
        .register("q", move |job: &JobRef<'_>| {
            tx.lock().unwrap().send(String::from_utf8(job.payload().to_vec()).unwrap()).unwrap();
            Outcome::Done
        })
        .unwrap();
    let order: Vec<String> = (0..5).map(|_| rx.recv_timeout(WAIT).unwrap()).collect();
    assert_eq!(order, ["d", "b", "e", "a", "c"]);
    engine.shutdown().unwrap();
}

#[test]
fn a_queue_without_handler_keeps_its_jobs_ready() {
    let engine = mem(2);
    for i in 0..10u8 {
        engine.submit(Job::new("later", vec![i])).unwrap();
    }
    let stats = engine.stats();
    assert_eq!(stats.queues["later"].ready, 10);
    assert_eq!(stats.queues["later"].completed, 0);
    engine.shutdown().unwrap();
}

#[test]
fn delayed_jobs_wait_at_least_their_delay() {
    let engine = mem(1);
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    engine
        .register("d", move |_: &JobRef<'_>| {
            tx.lock().unwrap().send(Instant::now()).unwrap();
            Outcome::Done
        })
        .unwrap();
    let submitted = Instant::now();
    engine.submit(Job::new("d", vec![]).delay(Duration::from_millis(50))).unwrap();
    let s = engine.stats();
    assert_eq!(s.queues["d"].delayed + s.queues["d"].completed, 1);
    let ran = rx.recv_timeout(WAIT).unwrap();
    // A lower bound on correctness (never early), not a timing measurement.
    assert!(ran.duration_since(submitted) >= Duration::from_millis(50));
    engine.shutdown().unwrap();
}

#[test]
fn retries_then_bury_with_attempts_counted() {
    let engine = mem(2);
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    engine
        .register("flaky", move |job: &JobRef<'_>| {
            tx.lock().unwrap().send(job.attempt()).unwrap();
            Outcome::Retry("downstream unavailable".into())
        })
        .unwrap();
    engine.submit(Job::new("flaky", vec![]).max_attempts(3)).unwrap();
    let attempts: Vec<u32> = (0..3).map(|_| rx.recv_timeout(WAIT).unwrap()).collect();
    assert_eq!(attempts, [1, 2, 3]);
    // Buried after the third: wait until the stats say so.
    let deadline = Instant::now() + WAIT;
    while engine.stats().queues["flaky"].buried != 1 {
        assert!(Instant::now() < deadline, "job never buried");
    }
    let q = &engine.stats().queues["flaky"];
    assert_eq!((q.failed, q.buried, q.ready, q.delayed), (3, 1, 0, 0));
    assert!(rx.try_recv().is_err(), "no fourth attempt");
    engine.shutdown().unwrap();
}

#[test]
fn bury_outcome_is_immediate_and_panics_count_as_failures() {
    let engine = mem(1);
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    engine
        .register("p", move |job: &JobRef<'_>| {
            tx.lock().unwrap().send((job.payload()[0], job.attempt())).unwrap();
            match job.payload()[0] {
                0 => Outcome::Bury("bad input".into()),
                _ if job.attempt() == 1 => panic!("handler bug"),
                _ => Outcome::Done,
            }
        })
        .unwrap();
    engine.submit(Job::new("p", vec![0]).max_attempts(5)).unwrap();
    engine.submit(Job::new("p", vec![1]).max_attempts(5)).unwrap();
    let mut seen: Vec<(u8, u32)> = (0..3).map(|_| rx.recv_timeout(WAIT).unwrap()).collect();
    seen.sort();
    assert_eq!(seen, [(0, 1), (1, 1), (1, 2)], "panicking job retried once, buried one ran once");
    let deadline = Instant::now() + WAIT;
    loop {
        let q = engine.stats().queues["p"].clone();
        if q.completed == 1 && q.buried == 1 {
            assert_eq!(q.failed, 2);
            break;
        }
        assert!(Instant::now() < deadline);
    }
    engine.shutdown().unwrap();
}

#[test]
fn unique_keys_deduplicate_live_jobs() {
    let engine = mem(2);
    let a = engine.submit(Job::new("u", vec![1]).unique_key("user-42")).unwrap();
    match engine.submit(Job::new("u", vec![2]).unique_key("user-42")) {
        Err(SubmitError::Duplicate { existing }) => assert_eq!(existing, a),
        other => panic!("expected duplicate, got {other:?}"),
    }
    // Other queue, other key: separate jobs.
    let b = engine.submit(Job::new("v", vec![1]).unique_key("user-42")).unwrap();
    let c = engine.submit(Job::new("u", vec![1]).unique_key("user-43")).unwrap();
    assert!(a != b && b != c);
    // Once the job is done the key is free again.
    let (tx, rx) = mpsc::channel::<JobId>();
    let tx = std::sync::Mutex::new(tx);
    engine
        .register("u", move |job: &JobRef<'_>| {
            tx.lock().unwrap().send(job.id()).unwrap();
            Outcome::Done
        })
        .unwrap();
    let mut done = vec![rx.recv_timeout(WAIT).unwrap(), rx.recv_timeout(WAIT).unwrap()];
    done.sort();
    assert_eq!(done, [a, c]);
    let deadline = Instant::now() + WAIT;
    let d = loop {
        match engine.submit(Job::new("u", vec![3]).unique_key("user-42")) {
            Ok(d) => break d,
            Err(SubmitError::Duplicate { .. }) => assert!(Instant::now() < deadline),
            Err(e) => panic!("{e}"),
        }
    };
    assert!(d > c);
    engine.shutdown().unwrap();
}

#[test]
fn limits_push_back_and_drop_nothing() {
    let engine = Engine::builder().shards(1).max_jobs(3).max_payload(8).build().unwrap();
    for i in 0..3u8 {
        engine.submit(Job::new("full", vec![i])).unwrap();
    }
    assert!(matches!(
        engine.submit(Job::new("full", vec![9])),
        Err(SubmitError::Full { what: "jobs", limit: 3 })
    ));
    assert!(matches!(
        engine.submit(Job::new("full", vec![0; 9])),
        Err(SubmitError::PayloadTooLarge { len: 9, max: 8 })
    ));
    assert!(matches!(
        engine.submit(Job::new("bad name", vec![])),
        Err(SubmitError::InvalidQueueName { .. })
    ));
    assert_eq!(engine.stats().queues["full"].ready, 3);
    engine.shutdown().unwrap();
    assert!(matches!(engine.submit(Job::new("full", vec![])), Err(SubmitError::ShuttingDown)));
}

#[test]
fn a_long_handler_does_not_strand_jobs_behind_it() {
    // 2 shards; one job blocks its shard until every other job has run.
    let engine = mem(2);
    let (tx, rx) = mpsc::channel::<u8>();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let release_rx = std::sync::Mutex::new(release_rx);
    let tx = std::sync::Mutex::new(tx);
    engine
        .register("s", move |job: &JobRef<'_>| {
            if job.payload()[0] == 0 {
                release_rx.lock().unwrap().recv_timeout(WAIT).unwrap();
            }
            tx.lock().unwrap().send(job.payload()[0]).unwrap();
            Outcome::Done
        })
        .unwrap();
    // One batch lands on one shard: the blocker first, 1000 jobs behind it.
    let mut jobs = vec![Job::new("s", vec![0])];
    jobs.extend((1..=1000u32).map(|i| Job::new("s", vec![1 + (i % 200) as u8])));
    engine.submit_batch(jobs).unwrap();
    let others: Vec<u8> = (0..1000).map(|_| rx.recv_timeout(WAIT).expect("stranded")).collect();
    assert!(others.iter().all(|&b| b != 0), "the blocker is still blocked");
    release_tx.send(()).unwrap();
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), 0);
    assert!(engine.stats().shards.iter().map(|s| s.jobs_stolen).sum::<u64>() >= 1);
    engine.shutdown().unwrap();
}

#[test]
fn more_shards_than_cores_work_unpinned() {
    let engine = mem(8);
    assert_eq!(engine.shards(), 8);
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    engine
        .register("o", move |_: &JobRef<'_>| {
            tx.lock().unwrap().send(()).unwrap();
            Outcome::Done
        })
        .unwrap();
    for _ in 0..1000 {
        engine.submit(Job::new("o", vec![])).unwrap();
    }
    for _ in 0..1000 {
        rx.recv_timeout(WAIT).unwrap();
    }
    engine.shutdown().unwrap();
    assert_eq!(engine.stats().total().completed, 1000);
    assert_eq!(engine.durability(), Durability::Memory);
}

/// A 2-shard engine whose queue `queue` has a handler that blocks on a job
/// with payload `block` (submitted here, and running when this returns)
/// until `release` is sent, and reports every other job on `ran`.
fn stuck_shard(queue: &str) -> (Engine, mpsc::Receiver<()>, mpsc::Sender<()>) {
    let engine = mem(2);
    let (started_tx, started_rx) = mpsc::channel::<()>();
    let (ran_tx, ran_rx) = mpsc::channel::<()>();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let started_tx = std::sync::Mutex::new(started_tx);
    let ran_tx = std::sync::Mutex::new(ran_tx);
    let release_rx = std::sync::Mutex::new(release_rx);
    engine
        .register(queue, move |job: &JobRef<'_>| {
            if job.payload() == b"block" {
                started_tx.lock().unwrap().send(()).unwrap();
                release_rx.lock().unwrap().recv_timeout(WAIT).unwrap();
            } else {
                ran_tx.lock().unwrap().send(()).unwrap();
            }
            Outcome::Done
        })
        .unwrap();
    engine.submit(Job::new(queue.to_owned(), b"block".to_vec())).unwrap();
    started_rx.recv_timeout(WAIT).unwrap();
    (engine, ran_rx, release_tx)
}

#[test]
fn new_submissions_avoid_a_shard_stuck_in_a_handler() {
    let (engine, ran_rx, release_tx) = stuck_shard("b");
    // Keep submitting single jobs: once the stuck shard is recognised as
    // stalled, new jobs go to the other shard and run while it stays stuck.
    let mut ran = 0;
    let mut submitted = 0u32;
    while ran < 200 {
        assert!(submitted < 2_000_000, "jobs kept going to the stuck shard");
        engine.submit(Job::new("b", vec![1])).unwrap();
        submitted += 1;
        while ran_rx.try_recv().is_ok() {
            ran += 1;
        }
    }
    release_tx.send(()).unwrap();
    engine.shutdown().unwrap();
}

#[test]
fn jobs_already_queued_at_a_stuck_shard_are_rescued() {
    let (engine, ran_rx, release_tx) = stuck_shard("r");
    // Submitted at once, round robin: about half land in the stuck shard's
    // inbox before it counts as stalled. All must run while it stays stuck.
    for _ in 0..10 {
        engine.submit_batch((0..10u8).map(|i| Job::new("r", vec![i])).collect()).unwrap();
    }
    for n in 0..100 {
        ran_rx
            .recv_timeout(WAIT)
            .unwrap_or_else(|_| panic!("job {n} stranded behind the stuck shard"));
    }
    release_tx.send(()).unwrap();
    engine.shutdown().unwrap();
    let q = &engine.stats().queues["r"];
    assert_eq!((q.completed, q.ready, q.running), (101, 0, 0));
}
