//! The lane (`engine/src/lane.rs`): jobs that run without entering the job
//! table keep the table's order, retries and durability. Each test runs
//! with the lane on and off and expects the same behaviour.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use spindle_engine::{Durability, Engine, Job, JobRef, Outcome};
use std::sync::{mpsc, Mutex};
use std::time::Duration;

/// Upper bound on waiting for an event that must happen; a guard against
/// hanging, never a synchronisation device.
const WAIT: Duration = Duration::from_secs(20);

fn one_shard(lane: bool) -> Engine {
    Engine::builder()
        .shards(1)
        .lane(lane)
        .retry_backoff(Duration::from_millis(1), Duration::from_millis(2))
        .build()
        .unwrap()
}

/// With the shard held by a first job, batches that enter the lane and
/// jobs that cannot (another priority, a mixed batch) queue up; once
/// released they run by priority, then by id, as through the table alone.
fn order(lane: bool) {
    let engine = one_shard(lane);
    let (started_tx, started_rx) = mpsc::channel::<()>();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let (ran_tx, ran_rx) = mpsc::channel::<Vec<u8>>();
    let (started_tx, release_rx, ran_tx) =
        (Mutex::new(started_tx), Mutex::new(release_rx), Mutex::new(ran_tx));
    engine
        .register("o", move |job: &JobRef<'_>| {
            if job.payload() == b"hold" {
                started_tx.lock().unwrap().send(()).unwrap();
                release_rx.lock().unwrap().recv_timeout(WAIT).unwrap();
            } else {
                ran_tx.lock().unwrap().send(job.payload().to_vec()).unwrap();
            }
            Outcome::Done
        })
        .unwrap();
    engine.submit(Job::new("o", b"hold".to_vec())).unwrap();
    started_rx.recv_timeout(WAIT).unwrap();
    let job = |p: &str, pri: u32| Job::new("o", p.as_bytes().to_vec()).priority(pri);
    engine.submit_batch(vec![job("a1", 5), job("a2", 5), job("a3", 5)]).unwrap();
    engine.submit(job("u", 1)).unwrap();
    engine.submit_batch(vec![job("b1", 5), job("b2", 5)]).unwrap();
    engine.submit_batch(vec![job("late", 9), job("z", 0)]).unwrap();
    engine.submit(job("c", 5)).unwrap();
    release_tx.send(()).unwrap();
    let ran: Vec<String> =
        (0..9).map(|_| String::from_utf8(ran_rx.recv_timeout(WAIT).unwrap()).unwrap()).collect();
    assert_eq!(ran, ["z", "u", "a1", "a2", "a3", "b1", "b2", "c", "late"], "lane {lane}");
    engine.shutdown().unwrap();
    assert_eq!(engine.stats().queues["o"].completed, 10);
}

#[test]
fn jobs_run_by_priority_then_id_with_the_lane() {
    order(true);
}

#[test]
fn jobs_run_by_priority_then_id_without_the_lane() {
    order(false);
}

/// A job that fails from the lane is retried through the table: the same
/// attempt numbers, failure counts and final state as without the lane.
fn retry(lane: bool) {
    let engine = one_shard(lane);
    let (tx, rx) = mpsc::channel::<(Vec<u8>, u32)>();
    let tx = Mutex::new(tx);
    engine
        .register("r", move |job: &JobRef<'_>| {
            tx.lock().unwrap().send((job.payload().to_vec(), job.attempt())).unwrap();
            match (job.payload(), job.attempt()) {
                (b"flaky", 1) => Outcome::Retry("first time".into()),
                (b"poison", _) => Outcome::Bury("never".into()),
                _ => Outcome::Done,
            }
        })
        .unwrap();
    engine
        .submit_batch(vec![Job::new("r", b"flaky".to_vec()), Job::new("r", b"poison".to_vec())])
        .unwrap();
    let mut seen: Vec<(Vec<u8>, u32)> = (0..3).map(|_| rx.recv_timeout(WAIT).unwrap()).collect();
    seen.sort();
    assert_eq!(
        seen,
        [(b"flaky".to_vec(), 1), (b"flaky".to_vec(), 2), (b"poison".to_vec(), 1)],
        "lane {lane}"
    );
    engine.shutdown().unwrap();
    let q = &engine.stats().queues["r"];
    assert_eq!((q.completed, q.failed, q.buried, q.ready), (1, 2, 1, 0), "lane {lane}");
}

#[test]
fn a_failed_job_is_retried_through_the_table_with_the_lane() {
    retry(true);
}

#[test]
fn a_failed_job_is_retried_through_the_table_without_the_lane() {
    retry(false);
}

/// Jobs waiting in the lane at shutdown stay in the log (Process mode) and
/// run once after a restart; those that completed do not come back.
#[test]
fn jobs_left_in_the_lane_at_shutdown_run_after_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let build = || {
        Engine::builder()
            .shards(1)
            .data_dir(tmp.path())
            .durability(Durability::Process)
            .build()
            .unwrap()
    };
    let engine = build();
    let (started_tx, started_rx) = mpsc::channel::<()>();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let (started_tx, release_rx) = (Mutex::new(started_tx), Mutex::new(release_rx));
    engine
        .register("s", move |job: &JobRef<'_>| {
            if job.payload() == b"hold" {
                started_tx.lock().unwrap().send(()).unwrap();
                release_rx.lock().unwrap().recv_timeout(WAIT).unwrap();
            }
            Outcome::Done
        })
        .unwrap();
    engine.submit(Job::new("s", b"hold".to_vec())).unwrap();
    started_rx.recv_timeout(WAIT).unwrap();
    let waiting: Vec<Job> = (0..100u32).map(|i| Job::new("s", i.to_le_bytes().to_vec())).collect();
    engine.submit_batch(waiting).unwrap();
    std::thread::scope(|s| {
        let stopping = s.spawn(|| engine.shutdown());
        release_tx.send(()).unwrap();
        stopping.join().unwrap().unwrap();
    });
    let left = engine.stats().jobs;
    drop(engine);

    let engine = build();
    assert_eq!(engine.stats().jobs, left, "jobs waiting at shutdown are all back, no more");
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    let tx = Mutex::new(tx);
    engine
        .register("s", move |job: &JobRef<'_>| {
            tx.lock().unwrap().send(job.payload().to_vec()).unwrap();
            Outcome::Done
        })
        .unwrap();
    let mut back: Vec<Vec<u8>> = (0..left).map(|_| rx.recv_timeout(WAIT).unwrap()).collect();
    engine.shutdown().unwrap();
    assert!(rx.try_recv().is_err(), "a job ran twice after the restart");
    back.sort();
    back.dedup();
    assert_eq!(back.len() as u64, left);
    assert!(!back.contains(&b"hold".to_vec()), "the completed job came back");
}
