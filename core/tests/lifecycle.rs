//! The table's rules, one behaviour per test. `model.rs` checks the same
//! rules against a reference model over random sequences and crashes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use spindle_core::{
    By, Config, Failed, JobError, Put, PutError, PutSpec, QueueId, Records, Reserved, RetryPolicy,
    State, Table, Time, WaitEnd,
};

const T0: Time = Time::from_secs(1_700_000_000);

fn table() -> (Table, Records) {
    (Table::new(Config::default()), Records::new())
}

fn put(t: &mut Table, log: &mut Records, q: QueueId, pri: u32, body: &[u8]) -> u64 {
    let id = t.next_id();
    let spec = PutSpec { pri, ttr_s: 10, ..PutSpec::default() };
    assert_eq!(t.put(T0, id, q, &spec, body, log).unwrap(), Put::Created(id));
    id
}

#[test]
fn reserve_takes_the_most_urgent_then_the_oldest() {
    let (mut t, mut log) = table();
    let q = t.queue("q").unwrap();
    let a = put(&mut t, &mut log, q, 5, b"a");
    let b = put(&mut t, &mut log, q, 1, b"b");
    let c = put(&mut t, &mut log, q, 5, b"c");
    let d = put(&mut t, &mut log, q, 1, b"d");
    // A released job keeps its place by id, as in beanstalkd.
    let got: Vec<u64> = (0..4).map(|_| t.reserve(T0, q, 0, &mut log).unwrap().id).collect();
    assert_eq!(got, vec![b, d, a, c]);
    t.release(T0, d, By::holder(0), 1, Duration::ZERO, &mut log).unwrap();
    t.release(T0, b, By::holder(0), 1, Duration::ZERO, &mut log).unwrap();
    assert_eq!(t.reserve(T0, q, 0, &mut log).unwrap().id, b);
    assert_eq!(t.reserve(T0, q, 0, &mut log).unwrap().id, d);
    assert!(t.reserve(T0, q, 0, &mut log).is_none());
}

#[test]
fn delayed_jobs_become_ready_when_due() {
    let (mut t, mut log) = table();
    let q = t.queue("q").unwrap();
    let spec = PutSpec { delay: Duration::from_secs(5), ..PutSpec::default() };
    t.put(T0, 1, q, &spec, b"x", &mut log).unwrap();
    assert_eq!(t.job(1).unwrap().state, State::Delayed);
    assert_eq!(t.tick(T0, &mut log), Some(T0.plus_secs(5)));
    assert!(t.reserve(T0, q, 0, &mut log).is_none());
    t.tick(T0.plus_secs(5), &mut log);
    assert_eq!(t.reserve(T0.plus_secs(5), q, 0, &mut log).unwrap().id, 1);
}

#[test]
fn only_the_current_lease_may_act_and_an_expired_one_is_stale() {
    let (mut t, mut log) = table();
    let q = t.queue("q").unwrap();
    let id = put(&mut t, &mut log, q, 0, b"x");
    let first = t.reserve(T0, q, 7, &mut log).unwrap();
    assert_eq!(t.complete(id, By::holder(8), &mut log), Err(JobError::NotHolder(id)));
    // TTR 10 s passes: the job is ready again and someone else takes it.
    t.tick(T0.plus_secs(10), &mut log);
    assert_eq!(t.job(id).unwrap().counts.timeouts, 1);
    let second = t.reserve(T0.plus_secs(10), q, 7, &mut log).unwrap();
    assert_eq!(second.token, first.token + 1);
    let stale = By { holder: 7, token: Some(first.token) };
    assert_eq!(
        t.complete(id, stale, &mut log),
        Err(JobError::StaleLease { id, token: first.token, current: second.token })
    );
    // Touch restarts the lease.
    t.touch(T0.plus_secs(19), id, By::holder(7)).unwrap();
    t.tick(T0.plus_secs(21), &mut log);
    assert_eq!(t.job(id).unwrap().state, State::Reserved);
    t.complete(id, By { holder: 7, token: Some(second.token) }, &mut log).unwrap();
    assert!(t.job(id).is_none());
}

#[test]
fn fail_backs_off_then_buries_with_the_error() {
    let (mut t, mut log) = table();
    let q = t.queue("q").unwrap();
    let policy = RetryPolicy {
        max_attempts: 2,
        backoff_base: Duration::from_secs(2),
        ..RetryPolicy::default()
    };
    t.set_policy(q, policy, &mut log);
    let id = put(&mut t, &mut log, q, 0, b"x");
    t.reserve(T0, q, 0, &mut log).unwrap();
    let Failed::Retry { attempts: 1, delay } =
        t.fail(T0, id, By::holder(0), b"boom", &mut log).unwrap()
    else {
        panic!("first failure retries")
    };
    assert!(delay >= Duration::from_secs(1) && delay <= Duration::from_secs(2));
    t.tick(T0.plus(delay), &mut log);
    t.reserve(T0.plus(delay), q, 0, &mut log).unwrap();
    assert_eq!(
        t.fail(T0.plus(delay), id, By::holder(0), b"boom again", &mut log).unwrap(),
        Failed::Buried { attempts: 2 }
    );
    let j = t.job(id).unwrap();
    assert_eq!((j.state, j.error), (State::Buried, Some("boom again")));
    assert_eq!(t.kick(T0, q, 10, &mut log), 1);
    assert_eq!(t.job(id).unwrap().state, State::Ready);
}

#[test]
fn runs_that_keep_ending_without_an_outcome_bury_a_poison_pill() {
    let (mut t, mut log) = table();
    let q = t.queue("q").unwrap();
    let policy = RetryPolicy { poison_after: 2, ..RetryPolicy::default() };
    t.set_policy(q, policy, &mut log);
    let id = put(&mut t, &mut log, q, 0, b"x");
    t.reserve(T0, q, 3, &mut log).unwrap();
    t.drop_holder(T0, 3, &mut log);
    assert_eq!(t.job(id).unwrap().state, State::Ready);
    t.reserve(T0, q, 3, &mut log).unwrap();
    t.tick(T0.plus_secs(10), &mut log);
    let j = t.job(id).unwrap();
    assert_eq!(j.state, State::Buried);
    assert!(j.error.unwrap().starts_with("poison pill"));
}

#[test]
fn a_unique_key_makes_one_job_while_it_lives() {
    let (mut t, mut log) = table();
    let q = t.queue("q").unwrap();
    let spec = PutSpec { unique: Some("k"), ..PutSpec::default() };
    assert_eq!(t.put(T0, 1, q, &spec, b"a", &mut log).unwrap(), Put::Created(1));
    assert_eq!(t.put(T0, 2, q, &spec, b"b", &mut log).unwrap(), Put::Duplicate(1));
    t.delete(1, None, &mut log).unwrap();
    assert_eq!(t.put(T0, 3, q, &spec, b"c", &mut log).unwrap(), Put::Created(3));
}

#[test]
fn limits_refuse_puts_and_keep_what_was_accepted() {
    let mut t = Table::new(Config { max_jobs: 2, max_bytes: 5, ..Config::default() });
    let mut log = Records::new();
    let q = t.queue("q").unwrap();
    let s = PutSpec::default();
    t.put(T0, 1, q, &s, b"abc", &mut log).unwrap();
    assert!(matches!(t.put(T0, 2, q, &s, b"abc", &mut log), Err(PutError::Full { .. })));
    t.put(T0, 2, q, &s, b"ab", &mut log).unwrap();
    assert!(matches!(t.put(T0, 3, q, &s, b"", &mut log), Err(PutError::Full { .. })));
    assert_eq!(t.totals().jobs, 2);
    assert!(matches!(t.put(T0, 1, q, &s, b"", &mut log), Err(PutError::Full { .. })));
    let mut big = Table::new(Config { max_payload: 4, ..Config::default() });
    let q = big.queue("q").unwrap();
    assert!(matches!(big.put(T0, 1, q, &s, b"12345", &mut log), Err(PutError::TooBig { .. })));
}

#[test]
fn a_paused_queue_hands_out_nothing_until_the_pause_ends() {
    let (mut t, mut log) = table();
    let q = t.queue("q").unwrap();
    put(&mut t, &mut log, q, 0, b"x");
    t.pause(T0, q, Duration::from_secs(3));
    assert!(t.reserve(T0, q, 0, &mut log).is_none());
    assert_eq!(t.tick(T0, &mut log), Some(T0.plus_secs(3)));
    t.tick(T0.plus_secs(3), &mut log);
    assert!(t.reserve(T0.plus_secs(3), q, 0, &mut log).is_some());
}

#[test]
fn a_waiting_holder_is_served_by_a_later_put_and_a_wait_times_out() {
    let (mut t, mut log) = table();
    let a = t.queue("a").unwrap();
    let b = t.queue("b").unwrap();
    t.hold_queue(a);
    t.hold_queue(b);
    assert_eq!(t.reserve_wait(T0, 1, &[a, b], None, 1, &mut log), Reserved::Waiting);
    let timeout = T0.plus_secs(2);
    assert_eq!(t.reserve_wait(T0, 2, &[b], Some(timeout), 1, &mut log), Reserved::Waiting);
    let id = put(&mut t, &mut log, b, 0, b"x");
    t.serve_waiters(T0, &mut log);
    let grants = t.take_grants();
    assert_eq!(grants.len(), 1);
    assert_eq!((grants[0].holder, grants[0].leases[0].id), (1, id));
    t.tick(timeout, &mut log);
    assert_eq!(t.take_wait_ends(), vec![(2, WaitEnd::TimedOut)]);
    assert!(!t.is_waiting(2));
}

#[test]
fn replay_rebuilds_the_table_with_running_jobs_ready_again() {
    let (mut t, mut log) = table();
    let q = t.queue("q").unwrap();
    let done = put(&mut t, &mut log, q, 0, b"done");
    let running = put(&mut t, &mut log, q, 1, &[9; 100]);
    let buried = put(&mut t, &mut log, q, 2, b"buried");
    let spec = PutSpec { delay: Duration::from_secs(60), unique: Some("u"), ..PutSpec::default() };
    let delayed = t.next_id();
    t.put(T0, delayed, q, &spec, b"later", &mut log).unwrap();
    t.reserve(T0, q, 0, &mut log).unwrap();
    t.complete(done, By::holder(0), &mut log).unwrap();
    t.reserve(T0, q, 0, &mut log).unwrap();
    t.reserve(T0, q, 0, &mut log).unwrap();
    t.bury(buried, By::holder(0), 2, Some("why"), &mut log).unwrap();

    let mut r = Table::new(Config::default());
    r.replay(log.bytes()).unwrap();
    let mut after = Records::new();
    let rec = r.finish_replay(T0.plus_secs(1), &mut after);
    assert_eq!((rec.jobs, rec.interrupted, rec.poisoned), (3, 1, 0));
    assert!(r.job(done).is_none());
    let j = r.job(running).unwrap();
    assert_eq!((j.state, j.payload.len(), j.counts.reserves), (State::Ready, 100, 1));
    assert_eq!(j.counts.interrupted, 1);
    assert_eq!(r.job(buried).unwrap().error, Some("why"));
    assert_eq!(r.job(delayed).unwrap().due, Some(T0.plus_secs(60)));
    assert_eq!(r.next_id(), t.next_id());
    // The unique key came back with its job.
    let q = r.find_queue("q").unwrap();
    assert_eq!(r.put(T0, 99, q, &spec, b"", &mut after).unwrap(), Put::Duplicate(delayed));
    // A snapshot rebuilds the same jobs on its own.
    let mut snap = Records::new();
    r.snapshot(&mut snap);
    let mut s = Table::new(Config::default());
    s.replay(snap.bytes()).unwrap();
    s.finish_replay(T0.plus_secs(1), &mut Records::disabled());
    assert_eq!(s.job_ids().collect::<Vec<_>>(), r.job_ids().collect::<Vec<_>>());
    assert_eq!(s.totals(), r.totals());
}

#[test]
fn the_hot_cycle_allocates_nothing_after_warm_up() {
    // Not a timing test: counts the log bytes the hot cycle writes, which
    // stay proportional to the cycles (no hidden growth).
    let (mut t, mut log) = table();
    let q = t.queue("q").unwrap();
    for _ in 0..3 {
        log.clear();
        for _ in 0..1000 {
            let id = put(&mut t, &mut log, q, 0, &[1; 16]);
            let l = t.reserve(T0, q, 0, &mut log).unwrap();
            assert_eq!(l.id, id);
            t.complete(id, By::holder(0), &mut log).unwrap();
        }
        assert_eq!(log.len(), 3000);
    }
    assert_eq!(t.totals().jobs, 0);
}

#[test]
fn unused_queues_go_only_when_asked_and_held_ones_stay() {
    let (mut t, mut log) = table();
    let q = t.queue("q").unwrap();
    let id = put(&mut t, &mut log, q, 0, b"x");
    t.delete(id, None, &mut log).unwrap();
    assert_eq!(t.find_queue("q"), Some(q), "ids stay valid by default");

    let mut t = Table::new(Config { drop_unused_queues: true, ..Config::default() });
    let q = t.queue("q").unwrap();
    t.hold_queue(q);
    let id = put(&mut t, &mut log, q, 0, b"x");
    t.delete(id, None, &mut log).unwrap();
    assert_eq!(t.find_queue("q"), Some(q), "a held queue stays");
    t.unhold_queue(q);
    assert_eq!(t.find_queue("q"), None, "beanstalkd drops an unused tube");
    assert_eq!(t.queues().count(), 0);
}

#[test]
fn a_unique_key_over_the_limit_is_refused() {
    let (mut t, mut log) = table();
    let q = t.queue("q").unwrap();
    let key = "k".repeat(spindle_core::MAX_UNIQUE_KEY + 1);
    let spec = PutSpec { unique: Some(&key), ..PutSpec::default() };
    assert!(matches!(t.put(T0, 1, q, &spec, b"", &mut log), Err(PutError::KeyTooLong { .. })));
    assert_eq!(t.totals().jobs, 0);
}

#[test]
fn ids_from_a_point_and_dropped_queue_names() {
    let mut t = Table::new(Config { drop_unused_queues: true, ..Config::default() });
    let mut log = Records::new();
    let q = t.queue("q").unwrap();
    for id in [1u64, 5, 2000, 5000] {
        t.put(T0, id, q, &PutSpec::default(), b"", &mut log).unwrap();
    }
    assert_eq!(t.job_ids_from(2).collect::<Vec<_>>(), vec![5, 2000, 5000]);
    assert_eq!(t.job_ids_from(2001).collect::<Vec<_>>(), vec![5000]);
    assert_eq!(t.job_ids_from(0).count(), 4);
    assert!(t.take_dropped_queues().is_empty());
    t.clear(q, &[State::Ready], &mut log);
    assert_eq!(t.take_dropped_queues(), vec![Box::<str>::from("q")]);
}

#[test]
fn reserve_from_takes_the_most_urgent_of_several_queues_and_unreserve_undoes_it() {
    let (mut t, mut log) = table();
    let a = t.queue("a").unwrap();
    let b = t.queue("b").unwrap();
    let c = t.queue("c").unwrap();
    put(&mut t, &mut log, a, 5, b"a");
    let urgent = put(&mut t, &mut log, b, 1, b"b");
    put(&mut t, &mut log, c, 0, b"c");
    let l = t.reserve_from(T0, &[a, b], 4, &mut log).unwrap();
    assert_eq!(l.id, urgent, "queue c is not asked");
    assert_eq!(t.job(urgent).unwrap().counts.reserves, 1);
    assert_eq!(t.unreserve(T0, urgent, 5), Err(JobError::NotHolder(urgent)));
    t.unreserve(T0, urgent, 4).unwrap();
    let j = t.job(urgent).unwrap();
    assert_eq!((j.state, j.counts.reserves), (State::Ready, 0));
    assert_eq!(t.reserve_from(T0, &[a, b], 4, &mut log).unwrap().id, urgent);
    t.check().unwrap();
}
