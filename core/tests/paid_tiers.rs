//! Schedules, limits, expiry and cancellation in the table, one behaviour
//! per test (`model.rs` checks them against the reference model too).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use spindle_core::{
    By, Cancelled, Config, JobError, Limits, Missed, OnExpiry, Put, PutError, PutSpec, QueueId,
    Rate, Records, Reserved, ScheduleError, ScheduleSpec, State, Table, Time, When, WhenError,
};

const T0: Time = Time::from_secs(1_796_601_600); // 2026-12-07 00:00:00 UTC

fn table() -> (Table, Records) {
    (Table::new(Config::default()), Records::new())
}

fn put(t: &mut Table, log: &mut Records, now: Time, q: QueueId, spec: &PutSpec<'_>) -> u64 {
    let id = t.next_id();
    assert_eq!(t.put(now, id, q, spec, b"x", log).unwrap(), Put::Created(id));
    id
}

fn ttr() -> PutSpec<'static> {
    PutSpec { ttr_s: 10, ..PutSpec::default() }
}

/// Replays `log` into a fresh table and finishes recovery at `now`.
fn recover(log: &Records, now: Time) -> (Table, Records) {
    let mut t = Table::new(Config::default());
    t.replay(log.bytes()).unwrap();
    let mut out = Records::new();
    t.finish_replay(now, &mut out);
    (t, out)
}

// ------------------------------------------------------------ concurrency

#[test]
fn a_queue_at_its_concurrency_limit_hands_out_nothing_until_one_ends() {
    let (mut t, mut log) = table();
    let q = t.queue("q").unwrap();
    t.set_limits(q, Limits { concurrency: 2, ..Limits::default() }, &mut log).unwrap();
    for _ in 0..3 {
        put(&mut t, &mut log, T0, q, &ttr());
    }
    let a = t.reserve(T0, q, 0, &mut log).unwrap();
    t.reserve(T0, q, 1, &mut log).unwrap();
    assert!(t.reserve(T0, q, 2, &mut log).is_none());
    t.complete(a.id, By::holder(0), &mut log).unwrap();
    assert!(t.reserve(T0, q, 2, &mut log).is_some());
}

#[test]
fn a_waiter_on_a_full_queue_is_served_when_a_slot_frees_and_others_go_on() {
    let (mut t, mut log) = table();
    let limited = t.queue("limited").unwrap();
    let other = t.queue("other").unwrap();
    t.set_limits(limited, Limits { concurrency: 1, ..Limits::default() }, &mut log).unwrap();
    let a = put(&mut t, &mut log, T0, limited, &ttr());
    let b = put(&mut t, &mut log, T0, limited, &ttr());
    assert_eq!(t.reserve(T0, limited, 0, &mut log).unwrap().id, a);
    // Holder 1 waits on both queues: the limited one is full, so it takes
    // the other queue's job.
    let c = put(&mut t, &mut log, T0, other, &ttr());
    match t.reserve_wait(T0, 1, &[limited, other], None, 1, &mut log) {
        Reserved::Now(l) => assert_eq!(l[0].id, c),
        r => panic!("{r:?}"),
    }
    // Holder 2 waits on the limited queue alone: served once `a` ends.
    assert_eq!(t.reserve_wait(T0, 2, &[limited], None, 1, &mut log), Reserved::Waiting);
    t.complete(a, By::holder(0), &mut log).unwrap();
    t.serve_waiters(T0, &mut log);
    let g = t.take_grants();
    assert_eq!(g.len(), 1);
    assert_eq!((g[0].holder, g[0].leases[0].id), (2, b));
}

// ------------------------------------------------------------------- rate

#[test]
fn a_rate_limit_spaces_starts_and_the_table_says_when_to_come_back() {
    let (mut t, mut log) = table();
    let q = t.queue("q").unwrap();
    let rate = Rate { starts: 10, per: Duration::from_secs(1), burst: 2 };
    t.set_limits(q, Limits { rate: Some(rate), ..Limits::default() }, &mut log).unwrap();
    for _ in 0..4 {
        put(&mut t, &mut log, T0, q, &PutSpec::default());
    }
    // The burst of 2 at once, then one per 100 ms.
    assert!(t.reserve(T0, q, 0, &mut log).is_some());
    assert!(t.reserve(T0, q, 0, &mut log).is_some());
    assert!(t.reserve(T0, q, 0, &mut log).is_none());
    assert_eq!(t.next_due(), Some(T0.plus_millis(100)));
    assert!(t.reserve(T0.plus_millis(99), q, 0, &mut log).is_none());
    assert!(t.reserve(T0.plus_millis(100), q, 0, &mut log).is_some());
}

#[test]
fn a_waiter_on_a_rate_limited_queue_is_served_at_the_tick_that_reopens_it() {
    let (mut t, mut log) = table();
    let q = t.queue("q").unwrap();
    let rate = Rate::new(1, Duration::from_secs(1));
    t.set_limits(q, Limits { rate: Some(rate), ..Limits::default() }, &mut log).unwrap();
    put(&mut t, &mut log, T0, q, &PutSpec::default());
    let second = put(&mut t, &mut log, T0, q, &PutSpec::default());
    assert!(t.reserve(T0, q, 0, &mut log).is_some());
    assert_eq!(t.reserve_wait(T0, 7, &[q], None, 1, &mut log), Reserved::Waiting);
    let due = t.next_due().unwrap();
    assert_eq!(due, T0.plus_secs(1));
    t.tick(due, &mut log);
    let g = t.take_grants();
    assert_eq!((g[0].holder, g[0].leases[0].id), (7, second));
}

#[test]
fn bad_limits_are_refused_and_change_nothing() {
    let (mut t, mut log) = table();
    let q = t.queue("q").unwrap();
    let bad = Limits { rate: Some(Rate::new(0, Duration::from_secs(1))), ..Limits::default() };
    assert!(t.set_limits(q, bad, &mut log).is_err());
    assert_eq!(t.limits(q), Some(Limits::default()));
    assert!(log.is_empty());
}

#[test]
fn limits_survive_a_restart() {
    let (mut t, mut log) = table();
    let q = t.queue("q").unwrap();
    let l = Limits {
        concurrency: 3,
        rate: Some(Rate { starts: 5, per: Duration::from_secs(2), burst: 4 }),
        on_expiry: OnExpiry::Bury,
    };
    t.set_limits(q, l, &mut log).unwrap();
    let (r, _) = recover(&log, T0);
    assert_eq!(r.limits(r.find_queue("q").unwrap()), Some(l));
    // And a snapshot (compaction) keeps them.
    let mut snap = Records::new();
    r.snapshot(&mut snap);
    let (r2, _) = recover(&snap, T0);
    assert_eq!(r2.limits(r2.find_queue("q").unwrap()), Some(l));
}

// ----------------------------------------------------------------- expiry

#[test]
fn a_job_past_its_deadline_is_never_handed_out_and_is_counted() {
    let (mut t, mut log) = table();
    let q = t.queue("q").unwrap();
    let spec = PutSpec { deadline: Some(T0.plus_secs(5)), ..PutSpec::default() };
    let id = put(&mut t, &mut log, T0, q, &spec);
    assert!(t.reserve(T0.plus_secs(5), q, 0, &mut log).is_none());
    assert!(t.job(id).is_none());
    assert_eq!(t.queue_view(q).unwrap().counters.expired, 1);
}

/// A waiting reserve whose only job expires as it begins still waits on
/// its queue, even one nothing else holds and that would be dropped when
/// unused: the next put there serves it.
#[test]
fn a_reserve_that_expires_the_only_job_still_waits_on_its_queue() {
    let mut t = Table::new(Config { drop_unused_queues: true, ..Config::default() });
    let mut log = Records::new();
    let q = t.queue("q").unwrap();
    let spec = PutSpec { deadline: Some(T0.plus_secs(5)), ..PutSpec::default() };
    put(&mut t, &mut log, T0, q, &spec);
    let at = T0.plus_secs(6);
    let waited = t.reserve_wait(at, 7, &[q], Some(T0.plus_secs(60)), 1, &mut log);
    assert!(matches!(waited, Reserved::Waiting), "{waited:?}");
    assert_eq!(t.find_queue("q"), Some(q), "the queue stays while someone waits on it");
    let id = put(&mut t, &mut log, at, q, &PutSpec::default());
    t.serve_waiters(at, &mut log);
    let grants = t.take_grants();
    assert_eq!(grants.len(), 1);
    assert_eq!((grants[0].holder, grants[0].leases[0].id), (7, id));
}

#[test]
fn an_expired_job_is_buried_when_its_queue_says_so_and_can_still_be_kicked() {
    let (mut t, mut log) = table();
    let q = t.queue("q").unwrap();
    t.set_limits(q, Limits { on_expiry: OnExpiry::Bury, ..Limits::default() }, &mut log).unwrap();
    let spec = PutSpec { deadline: Some(T0.plus_secs(5)), ..PutSpec::default() };
    let id = put(&mut t, &mut log, T0, q, &spec);
    t.tick(T0.plus_secs(6), &mut log);
    let j = t.job(id).unwrap();
    assert_eq!(j.state, State::Buried);
    assert_eq!(j.error, Some(spindle_core::EXPIRED_TEXT));
    t.kick_job(T0.plus_secs(7), id, &mut log).unwrap();
    assert_eq!(t.reserve(T0.plus_secs(7), q, 0, &mut log).unwrap().id, id);
}

#[test]
fn the_deadline_holds_for_a_retry_too() {
    let (mut t, mut log) = table();
    let q = t.queue("q").unwrap();
    let spec = PutSpec { ttr_s: 10, deadline: Some(T0.plus_secs(5)), ..PutSpec::default() };
    let id = put(&mut t, &mut log, T0, q, &spec);
    assert_eq!(t.reserve(T0, q, 0, &mut log).unwrap().id, id);
    // Released after the deadline: it is not handed out again.
    t.release(T0.plus_secs(6), id, By::holder(0), 0, Duration::ZERO, &mut log).unwrap();
    assert!(t.reserve(T0.plus_secs(6), q, 0, &mut log).is_none());
    assert!(t.job(id).is_none());
}

#[test]
fn a_deadline_already_past_is_refused() {
    let (mut t, mut log) = table();
    let q = t.queue("q").unwrap();
    let spec = PutSpec { deadline: Some(T0), ..PutSpec::default() };
    let e = t.put(T0, 1, q, &spec, b"x", &mut log).unwrap_err();
    assert!(matches!(e, PutError::DeadlinePassed { .. }), "{e}");
    assert!(e.to_string().contains("already passed"));
}

#[test]
fn a_deadline_that_passes_while_down_expires_the_job_after_recovery() {
    let (mut t, mut log) = table();
    let q = t.queue("q").unwrap();
    let spec = PutSpec { deadline: Some(T0.plus_secs(5)), ..PutSpec::default() };
    let id = put(&mut t, &mut log, T0, q, &spec);
    let (mut r, mut out) = recover(&log, T0.plus_secs(60));
    assert!(r.job(id).is_some());
    let q = r.find_queue("q").unwrap();
    assert!(r.reserve(T0.plus_secs(60), q, 0, &mut out).is_none());
    assert!(r.job(id).is_none());
}

// ----------------------------------------------------------- cancellation

#[test]
fn cancelling_a_job_that_is_not_running_removes_it() {
    let (mut t, mut log) = table();
    let q = t.queue("q").unwrap();
    let a = put(&mut t, &mut log, T0, q, &PutSpec::default());
    let b = put(
        &mut t,
        &mut log,
        T0,
        q,
        &PutSpec { delay: Duration::from_secs(9), ..PutSpec::default() },
    );
    assert_eq!(t.cancel(a, &mut log), Ok(Cancelled::Removed));
    assert_eq!(t.cancel(b, &mut log), Ok(Cancelled::Removed));
    assert_eq!(t.cancel(a, &mut log), Err(JobError::NotFound(a)));
    assert_eq!(t.queue_view(q).unwrap().counters.cancelled, 2);
    assert_eq!(t.totals().jobs, 0);
}

#[test]
fn a_cancelled_running_job_refuses_its_holder_and_goes() {
    let (mut t, mut log) = table();
    let q = t.queue("q").unwrap();
    let id = put(&mut t, &mut log, T0, q, &ttr());
    t.reserve(T0, q, 3, &mut log).unwrap();
    assert_eq!(t.cancel(id, &mut log), Ok(Cancelled::Running { holder: 3 }));
    assert!(t.is_cancelled(id));
    assert_eq!(t.touch(T0, id, By::holder(3)), Err(JobError::Cancelled(id)));
    assert_eq!(t.complete(id, By::holder(3), &mut log), Err(JobError::Cancelled(id)));
    assert!(t.job(id).is_none());
}

#[test]
fn a_cancelled_job_whose_lease_expires_is_not_retried() {
    let (mut t, mut log) = table();
    let q = t.queue("q").unwrap();
    let id = put(&mut t, &mut log, T0, q, &ttr());
    t.reserve(T0, q, 3, &mut log).unwrap();
    t.cancel(id, &mut log).unwrap();
    t.tick(T0.plus_secs(11), &mut log);
    assert!(t.job(id).is_none());
}

#[test]
fn a_cancelled_job_running_at_a_crash_is_gone_after_recovery() {
    let (mut t, mut log) = table();
    let q = t.queue("q").unwrap();
    let id = put(&mut t, &mut log, T0, q, &ttr());
    let keep = put(&mut t, &mut log, T0, q, &ttr());
    t.reserve(T0, q, 3, &mut log).unwrap();
    t.cancel(id, &mut log).unwrap();
    let (r, _) = recover(&log, T0);
    assert!(r.job(id).is_none());
    assert!(r.job(keep).is_some());
    // Through a snapshot as well.
    let mut snap = Records::new();
    t.snapshot(&mut snap);
    let (r2, _) = recover(&snap, T0);
    assert!(r2.job(id).is_none());
}

// -------------------------------------------------------------- schedules

fn every(name: &str, ms: u64) -> ScheduleSpec {
    ScheduleSpec::new(name, When::Every(Duration::from_millis(ms)), b"tick")
}

fn fire(t: &mut Table, now: Time, log: &mut Records) -> u64 {
    let mut next = t.next_id();
    t.fire_schedules(
        now,
        &mut || {
            next += 1;
            next - 1
        },
        log,
    )
}

#[test]
fn a_schedule_puts_a_job_at_each_tick() {
    let (mut t, mut log) = table();
    let q = t.queue("q").unwrap();
    t.add_schedule(T0, q, every("s", 1000), &mut log).unwrap();
    assert_eq!(t.next_due(), Some(T0.plus_secs(1)));
    assert_eq!(fire(&mut t, T0.plus_millis(999), &mut log), 0);
    assert_eq!(fire(&mut t, T0.plus_secs(1), &mut log), 1);
    assert_eq!(fire(&mut t, T0.plus_secs(2), &mut log), 1);
    assert_eq!(t.totals().jobs, 2);
    let l = t.reserve(T0.plus_secs(2), q, 0, &mut log).unwrap();
    assert_eq!(t.job(l.id).unwrap().payload, b"tick");
    let v = t.schedule(q, "s").unwrap();
    assert_eq!((v.fired, v.last_tick, v.next), (2, Some(T0.plus_secs(2)), Some(T0.plus_secs(3))));
}

#[test]
fn a_cron_schedule_ticks_on_its_expression() {
    let (mut t, mut log) = table();
    let q = t.queue("q").unwrap();
    let spec = ScheduleSpec::new("c", When::cron("*/10 * * * * *"), b"");
    t.add_schedule(T0.plus_secs(3), q, spec, &mut log).unwrap();
    assert_eq!(t.schedule(q, "c").unwrap().next, Some(T0.plus_secs(10)));
}

#[test]
fn a_slow_loop_gets_one_job_for_the_ticks_it_ran_past() {
    let (mut t, mut log) = table();
    let q = t.queue("q").unwrap();
    t.add_schedule(T0, q, every("s", 1000), &mut log).unwrap();
    assert_eq!(fire(&mut t, T0.plus_millis(5500), &mut log), 1);
    let v = t.schedule(q, "s").unwrap();
    assert_eq!((v.last_tick, v.next), (Some(T0.plus_secs(5)), Some(T0.plus_secs(6))));
}

#[test]
fn no_overlap_skips_a_tick_while_the_previous_job_lives() {
    let (mut t, mut log) = table();
    let q = t.queue("q").unwrap();
    let spec = ScheduleSpec { no_overlap: true, ..every("s", 1000) };
    t.add_schedule(T0, q, spec, &mut log).unwrap();
    assert_eq!(fire(&mut t, T0.plus_secs(1), &mut log), 1);
    assert_eq!(fire(&mut t, T0.plus_secs(2), &mut log), 0);
    let l = t.reserve(T0.plus_secs(2), q, 0, &mut log).unwrap();
    t.complete(l.id, By::holder(0), &mut log).unwrap();
    assert_eq!(fire(&mut t, T0.plus_secs(3), &mut log), 1);
    assert_eq!(t.schedule(q, "s").unwrap().skipped, 1);
}

#[test]
fn after_a_restart_no_tick_is_lost_or_doubled() {
    let (mut t, mut log) = table();
    let q = t.queue("q").unwrap();
    t.add_schedule(T0, q, every("s", 1000), &mut log).unwrap();
    fire(&mut t, T0.plus_secs(1), &mut log);
    fire(&mut t, T0.plus_secs(2), &mut log);
    // Restarted at 2.5 s: the tick at 2 s is not fired again; 3 s is next.
    let (mut r, mut out) = recover(&log, T0.plus_millis(2500));
    let q = r.find_queue("q").unwrap();
    assert_eq!(r.totals().jobs, 2);
    assert_eq!(r.schedule(q, "s").unwrap().next, Some(T0.plus_secs(3)));
    assert_eq!(fire(&mut r, T0.plus_millis(2500), &mut out), 0);
    assert_eq!(fire(&mut r, T0.plus_secs(3), &mut out), 1);
}

#[test]
fn ticks_missed_while_down_run_once_or_are_skipped() {
    for (missed, want) in [(Missed::RunOnce, 1), (Missed::Skip, 0)] {
        let (mut t, mut log) = table();
        let q = t.queue("q").unwrap();
        t.add_schedule(T0, q, ScheduleSpec { missed, ..every("s", 1000) }, &mut log).unwrap();
        let (mut r, mut out) = recover(&log, T0.plus_millis(10_500));
        assert_eq!(fire(&mut r, T0.plus_millis(10_500), &mut out), want, "{missed:?}");
        let q = r.find_queue("q").unwrap();
        let v = r.schedule(q, "s").unwrap();
        assert_eq!((v.last_tick, v.next), (Some(T0.plus_secs(10)), Some(T0.plus_secs(11))));
        // The next tick fires normally.
        assert_eq!(fire(&mut r, T0.plus_secs(11), &mut out), 1);
    }
}

#[test]
fn a_paused_schedule_does_not_tick_and_resumes_from_the_resume() {
    let (mut t, mut log) = table();
    let q = t.queue("q").unwrap();
    t.add_schedule(T0, q, every("s", 1000), &mut log).unwrap();
    t.pause_schedule(T0, q, "s", true, &mut log).unwrap();
    assert_eq!(fire(&mut t, T0.plus_secs(5), &mut log), 0);
    assert_eq!(t.next_due(), None);
    t.pause_schedule(T0.plus_millis(5500), q, "s", false, &mut log).unwrap();
    assert_eq!(t.schedule(q, "s").unwrap().next, Some(T0.plus_secs(6)));
    // Pause survives a restart.
    t.pause_schedule(T0.plus_secs(6), q, "s", true, &mut log).unwrap();
    let (r, _) = recover(&log, T0.plus_secs(100));
    let v = r.schedule(r.find_queue("q").unwrap(), "s").unwrap();
    assert!(v.paused);
    assert_eq!(v.next, None);
}

#[test]
fn schedules_survive_a_snapshot_and_removal_is_logged() {
    let (mut t, mut log) = table();
    let q = t.queue("q").unwrap();
    t.add_schedule(T0, q, every("a", 1000), &mut log).unwrap();
    t.add_schedule(T0, q, every("b", 1000), &mut log).unwrap();
    fire(&mut t, T0.plus_secs(1), &mut log);
    t.remove_schedule(q, "a", &mut log).unwrap();
    let (r, _) = recover(&log, T0.plus_millis(1500));
    let names: Vec<String> = r.schedules().into_iter().map(|v| v.spec.name).collect();
    assert_eq!(names, vec!["b".to_string()]);
    let mut snap = Records::new();
    t.snapshot(&mut snap);
    let (r2, _) = recover(&snap, T0.plus_millis(1500));
    let v = r2.schedule(r2.find_queue("q").unwrap(), "b").unwrap();
    assert_eq!((v.last_tick, v.next), (Some(T0.plus_secs(1)), Some(T0.plus_secs(2))));
}

#[test]
fn bad_schedules_are_refused_with_a_reason() {
    let (mut t, mut log) = table();
    let q = t.queue("q").unwrap();
    let bad_cron = ScheduleSpec::new("c", When::cron("not cron"), b"");
    assert!(matches!(
        t.add_schedule(T0, q, bad_cron, &mut log),
        Err(ScheduleError::When(WhenError::BadCron { .. }))
    ));
    let bad_tz = ScheduleSpec::new(
        "c",
        When::Cron { expr: "* * * * *".into(), tz: "Nowhere/Land".into() },
        b"",
    );
    assert!(matches!(
        t.add_schedule(T0, q, bad_tz, &mut log),
        Err(ScheduleError::When(WhenError::BadTimeZone(_)))
    ));
    assert!(matches!(
        t.add_schedule(T0, q, every("", 1000), &mut log),
        Err(ScheduleError::BadName(_))
    ));
    t.add_schedule(T0, q, every("s", 1000), &mut log).unwrap();
    assert!(matches!(
        t.add_schedule(T0, q, every("s", 1000), &mut log),
        Err(ScheduleError::Exists { .. })
    ));
    let e = t.remove_schedule(q, "nope", &mut log).unwrap_err();
    assert!(e.to_string().contains("no schedule named \"nope\""), "{e}");
}

// ------------------------------------- regressions the model test found

#[test]
fn a_lease_that_ends_past_the_deadline_expires_its_job_in_the_same_tick() {
    // The tick checked deadlines before leases: the job came back ready past
    // its deadline and stayed so until the next hand-out.
    let (mut t, mut log) = table();
    let q = t.queue("q").unwrap();
    let spec = PutSpec { ttr_s: 10, deadline: Some(T0.plus_secs(5)), ..PutSpec::default() };
    let id = put(&mut t, &mut log, T0, q, &spec);
    t.reserve(T0, q, 0, &mut log).unwrap();
    t.tick(T0.plus_secs(10), &mut log);
    assert!(t.job(id).is_none());
    assert_eq!(t.queue_view(q).unwrap().counters.expired, 1);
}

#[test]
fn a_job_buried_by_expiry_keeps_no_deadline_after_a_restart() {
    // Its burial was logged as a move, which left the deadline in its `Put`:
    // after a restart a kick expired it again instead of running it.
    let (mut t, mut log) = table();
    let q = t.queue("q").unwrap();
    t.set_limits(q, Limits { on_expiry: OnExpiry::Bury, ..Limits::default() }, &mut log).unwrap();
    let spec = PutSpec { deadline: Some(T0.plus_secs(5)), ..PutSpec::default() };
    let id = put(&mut t, &mut log, T0, q, &spec);
    t.tick(T0.plus_secs(6), &mut log);
    let (mut r, mut out) = recover(&log, T0.plus_secs(7));
    let q = r.find_queue("q").unwrap();
    r.tick(T0.plus_secs(7), &mut out);
    r.kick_job(T0.plus_secs(7), id, &mut out).unwrap();
    assert_eq!(r.reserve(T0.plus_secs(7), q, 0, &mut out).map(|l| l.id), Some(id));
    assert_eq!(r.queue_view(q).unwrap().counters.expired, 0);
}

#[test]
fn reserving_a_buried_job_by_id_past_its_deadline_expires_it() {
    let (mut t, mut log) = table();
    let q = t.queue("q").unwrap();
    let spec = PutSpec { deadline: Some(T0.plus_secs(5)), ..PutSpec::default() };
    let id = put(&mut t, &mut log, T0, q, &spec);
    t.reserve(T0, q, 0, &mut log).unwrap();
    t.bury(id, By::holder(0), 0, None, &mut log).unwrap();
    assert_eq!(t.reserve_id(T0.plus_secs(5), id, 0, &mut log), None);
    assert!(t.job(id).is_none());
    assert_eq!(t.queue_view(q).unwrap().counters.expired, 1);
}

#[test]
fn a_running_job_cancelled_twice_counts_once() {
    let (mut t, mut log) = table();
    let q = t.queue("q").unwrap();
    let id = put(&mut t, &mut log, T0, q, &ttr());
    t.reserve(T0, q, 3, &mut log).unwrap();
    assert_eq!(t.cancel(id, &mut log), Ok(Cancelled::Running { holder: 3 }));
    assert_eq!(t.cancel(id, &mut log), Ok(Cancelled::Running { holder: 3 }));
    assert_eq!(t.queue_view(q).unwrap().counters.cancelled, 1);
}

#[test]
fn skip_missed_skips_only_ticks_before_the_restart() {
    // The first tick after a restart was taken for a missed one whenever the
    // fire came after it, as a real timer's always does.
    let (mut t, mut log) = table();
    let q = t.queue("q").unwrap();
    let spec = ScheduleSpec { missed: Missed::Skip, ..every("s", 1000) };
    t.add_schedule(T0, q, spec, &mut log).unwrap();
    let (mut r, mut out) = recover(&log, T0.plus_millis(500));
    assert_eq!(fire(&mut r, T0.plus_millis(1001), &mut out), 1);
}

#[test]
fn the_ticks_of_a_pause_are_not_run_after_a_restart() {
    // A resume did not log the ticks it skipped: after a restart the first
    // fire ran one of them as a missed tick.
    let (mut t, mut log) = table();
    let q = t.queue("q").unwrap();
    t.add_schedule(T0, q, every("s", 1000), &mut log).unwrap();
    t.pause_schedule(T0, q, "s", true, &mut log).unwrap();
    t.pause_schedule(T0.plus_millis(5500), q, "s", false, &mut log).unwrap();
    assert_eq!(t.schedule(q, "s").unwrap().last_tick, Some(T0.plus_secs(5)));
    let (mut r, mut out) = recover(&log, T0.plus_millis(5600));
    let q = r.find_queue("q").unwrap();
    assert_eq!(r.schedule(q, "s").unwrap().next, Some(T0.plus_secs(6)));
    assert_eq!(fire(&mut r, T0.plus_millis(5600), &mut out), 0);
}

#[test]
fn a_job_delayed_again_past_its_deadline_expires_at_the_next_check() {
    // It waited out its delay first (and a restart expired it at once, the
    // live table only when the delay ended).
    let (mut t, mut log) = table();
    let q = t.queue("q").unwrap();
    let spec = PutSpec { ttr_s: 10, deadline: Some(T0.plus_secs(5)), ..PutSpec::default() };
    let id = put(&mut t, &mut log, T0, q, &spec);
    t.reserve(T0, q, 0, &mut log).unwrap();
    // The deadline passes while it runs (the tick's check leaves it be).
    t.tick(T0.plus_secs(5), &mut log);
    t.release(T0.plus_secs(6), id, By::holder(0), 0, Duration::from_secs(60), &mut log).unwrap();
    t.tick(T0.plus_secs(6), &mut log);
    assert!(t.job(id).is_none());
    assert_eq!(t.queue_view(q).unwrap().counters.expired, 1);
}
