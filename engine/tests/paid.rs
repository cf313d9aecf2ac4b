//! Limits, schedules, expiry and cancellation through the library's door
//! (`engine/src/paid.rs`), with more shards than this machine has cores.
//! The rules are the table's (`core/tests/paid_tiers.rs`); these check the
//! routing: one home shard for a limited or scheduled queue, no lane or
//! rescue around its limit, cancellation reaching a running handler, and
//! recovery.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use spindle_engine::{
    Cancelled, ControlError, Durability, Engine, Job, JobRef, Limits, Outcome, ScheduleSpec,
    SubmitError, When,
};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// Upper bound on waiting for an event that must happen; a guard against
/// hanging, never a synchronisation device.
const WAIT: Duration = Duration::from_secs(20);

fn engine(shards: usize) -> Engine {
    Engine::builder()
        .shards(shards)
        .retry_backoff(Duration::from_millis(1), Duration::from_millis(2))
        .build()
        .unwrap()
}

#[test]
fn a_concurrency_limit_holds_across_shards() {
    let e = engine(4);
    e.set_limits("one", Limits { concurrency: 2, ..Limits::default() }).unwrap();
    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = mpsc::channel::<()>();
    let tx = Mutex::new(tx);
    let (r, m) = (running.clone(), most.clone());
    e.register_blocking("one", move |_: &JobRef<'_>| {
        let now = r.fetch_add(1, Ordering::SeqCst) + 1;
        m.fetch_max(now, Ordering::SeqCst);
        // Work long enough for runs to overlap if the limit let them.
        std::thread::sleep(Duration::from_millis(5));
        r.fetch_sub(1, Ordering::SeqCst);
        tx.lock().unwrap().send(()).unwrap();
        Outcome::Done
    })
    .unwrap();
    let jobs: Vec<Job> = (0..20).map(|i| Job::new("one", vec![i])).collect();
    e.submit_batch(jobs).unwrap();
    for _ in 0..20 {
        rx.recv_timeout(WAIT).unwrap();
    }
    assert!(most.load(Ordering::SeqCst) <= 2, "{} ran at once", most.load(Ordering::SeqCst));
    assert!(most.load(Ordering::SeqCst) >= 1);
    e.shutdown().unwrap();
}

#[test]
fn a_schedule_runs_its_job_on_the_queue_handler() {
    let e = engine(3);
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    let tx = Mutex::new(tx);
    e.register("ticks", move |j: &JobRef<'_>| {
        tx.lock().unwrap().send(j.payload().to_vec()).unwrap();
        Outcome::Done
    })
    .unwrap();
    let spec = ScheduleSpec::new("fast", When::Every(Duration::from_millis(20)), b"tick");
    e.add_schedule("ticks", spec.clone()).unwrap();
    for _ in 0..3 {
        assert_eq!(rx.recv_timeout(WAIT).unwrap(), b"tick");
    }
    let list = e.schedules().unwrap();
    assert_eq!(list.len(), 1);
    assert!(list[0].fired >= 3);
    assert!(matches!(e.add_schedule("ticks", spec), Err(ControlError::Schedule(_))));
    e.remove_schedule("ticks", "fast").unwrap();
    assert!(e.schedules().unwrap().is_empty());
    e.shutdown().unwrap();
}

#[test]
fn a_job_past_its_deadline_never_runs() {
    let e = engine(2);
    let ran = Arc::new(AtomicUsize::new(0));
    let r = ran.clone();
    e.register("exp", move |_: &JobRef<'_>| {
        r.fetch_add(1, Ordering::SeqCst);
        Outcome::Done
    })
    .unwrap();
    let job = Job::new("exp", b"late".to_vec())
        .delay(Duration::from_millis(300))
        .expires_in(Duration::from_millis(50));
    e.submit(job).unwrap();
    // Wait until the engine holds no job (it expired) or the guard passes.
    let start = Instant::now();
    while e.stats().jobs > 0 {
        assert!(start.elapsed() < WAIT, "the job neither ran nor expired");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(ran.load(Ordering::SeqCst), 0);
    let past = Job::new("exp", b"x".to_vec()).deadline(std::time::UNIX_EPOCH);
    assert!(matches!(e.submit(past), Err(SubmitError::DeadlinePassed)));
    e.shutdown().unwrap();
}

#[test]
fn cancel_removes_a_waiting_job_and_reaches_a_running_handler() {
    let e = engine(3);
    let calls = Arc::new(AtomicUsize::new(0));
    let (started_tx, started_rx) = mpsc::channel::<()>();
    let (saw_tx, saw_rx) = mpsc::channel::<()>();
    let (started_tx, saw_tx) = (Mutex::new(started_tx), Mutex::new(saw_tx));
    let c = calls.clone();
    e.register_blocking("c", move |j: &JobRef<'_>| {
        c.fetch_add(1, Ordering::SeqCst);
        started_tx.lock().unwrap().send(()).unwrap();
        let start = Instant::now();
        while !j.is_cancelled() {
            assert!(start.elapsed() < WAIT, "cancellation never reached the handler");
            std::thread::sleep(Duration::from_millis(1));
        }
        saw_tx.lock().unwrap().send(()).unwrap();
        // Asks for a retry: a cancelled job must not get one.
        Outcome::Retry("stopped".into())
    })
    .unwrap();
    let waiting = e.submit(Job::new("c", b"w".to_vec()).delay(Duration::from_secs(3600))).unwrap();
    assert_eq!(e.cancel(waiting).unwrap(), Cancelled::Removed);
    assert!(matches!(e.cancel(waiting), Err(ControlError::NotFound(_))));

    let running = e.submit(Job::new("c", b"r".to_vec())).unwrap();
    started_rx.recv_timeout(WAIT).unwrap();
    assert!(matches!(e.cancel(running).unwrap(), Cancelled::Running { .. }));
    saw_rx.recv_timeout(WAIT).unwrap();
    let start = Instant::now();
    while e.stats().jobs > 0 {
        assert!(start.elapsed() < WAIT, "the cancelled job stayed");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "a cancelled job ran again");
    e.shutdown().unwrap();
}

#[test]
fn limits_and_schedules_survive_a_restart_on_their_home_shard() {
    let dir = tempfile::tempdir().unwrap();
    let open = || {
        Engine::builder()
            .shards(3)
            .data_dir(dir.path())
            .segment_size(1 << 20)
            .durability(Durability::Process)
            .build()
            .unwrap()
    };
    let e = open();
    e.set_limits("lim", Limits { concurrency: 1, ..Limits::default() }).unwrap();
    let spec = ScheduleSpec::new("hourly", When::cron("0 0 * * * *"), b"h");
    e.add_schedule("sched", spec).unwrap();
    e.shutdown().unwrap();
    drop(e);
    let e = open();
    let list = e.schedules().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!((list[0].queue_name.as_str(), list[0].spec.name.as_str()), ("sched", "hourly"));
    // Removing it reaches the shard that recovered it.
    e.remove_schedule("sched", "hourly").unwrap();
    assert!(e.schedules().unwrap().is_empty());
    e.shutdown().unwrap();
}
