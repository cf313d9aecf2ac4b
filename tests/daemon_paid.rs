//! Schedules, limits, expiry and cancellation through spindled's protocol
//! extensions and the Rust client (`docs/protocol.md`, "Schedules, limits,
//! expiry, cancellation"). The rules themselves are tested in the table
//! (`core/tests/paid_tiers.rs`); these check the doors: replies, errors,
//! and that each survives `kill -9`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Addr, Kind, Server};
use spindle_client::{
    CancelOutcome, Client, ClientError, Deadline, NewSchedule, ScheduleRule, TubeLimits,
};

fn client(s: &Server) -> Client {
    match s.addr() {
        Addr::Unix(p) => Client::connect_unix(p).unwrap(),
        Addr::Tcp(_) => unreachable!(),
    }
}

fn every(tube: &str, name: &str, ms: u64) -> NewSchedule {
    NewSchedule {
        tube: tube.into(),
        name: name.into(),
        rule: ScheduleRule::Every(Duration::from_millis(ms)),
        pri: 7,
        ttr: Duration::from_secs(30),
        skip_missed: false,
        no_overlap: false,
        payload: b"tick".to_vec(),
    }
}

const WAIT: Duration = Duration::from_secs(20);

#[test]
fn a_schedule_puts_jobs_lists_pauses_and_survives_kill_9() {
    let dir = common::tempdir();
    let data = dir.path().to_str().unwrap();
    let mut server = Server::start(Kind::Spindled, &["-b", data]);
    let mut c = client(&server);
    c.schedule_add(&every("ticks", "fast", 50)).unwrap();
    c.watch("ticks").unwrap();
    c.ignore("default").unwrap();
    let job = c.reserve_with_timeout(WAIT).unwrap().expect("a scheduled job");
    assert_eq!(job.body, b"tick");
    assert_eq!(c.stats_job(job.id).unwrap().get_u64("pri"), Some(7));
    c.delete(job.id).unwrap();
    let list = c.schedule_list().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].get("name"), Some("fast"));
    assert!(list[0].get_u64("fired").unwrap() >= 1);
    // The same name again is refused, with the reason.
    let e = c.schedule_add(&every("ticks", "fast", 50)).unwrap_err();
    assert!(matches!(e, ClientError::Rejected { .. }), "{e}");
    c.schedule_pause("ticks", "fast", true).unwrap();
    assert_eq!(c.schedule_list().unwrap()[0].get("paused"), Some("true"));

    // kill -9: the schedule and its pause come back.
    server.kill9();
    let server = Server::start(Kind::Spindled, &["-b", data]);
    let mut c = client(&server);
    let list = c.schedule_list().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].get("paused"), Some("true"));
    c.schedule_pause("ticks", "fast", false).unwrap();
    c.watch("ticks").unwrap();
    assert!(c.reserve_with_timeout(WAIT).unwrap().is_some());
    c.schedule_rm("ticks", "fast").unwrap();
    assert!(c.schedule_list().unwrap().is_empty());
    assert!(matches!(c.schedule_rm("ticks", "fast"), Err(ClientError::NotFound(_))));
}

#[test]
fn bad_schedules_get_the_servers_reason() {
    let server = Server::spindled(&[]);
    let mut c = client(&server);
    let bad_cron = NewSchedule {
        rule: ScheduleRule::Cron { tz: "UTC".into(), expr: "61 * * * *".into() },
        ..every("q", "c", 1000)
    };
    match c.schedule_add(&bad_cron) {
        Err(ClientError::Rejected { reason, .. }) => assert!(reason.contains("cron"), "{reason}"),
        r => panic!("{r:?}"),
    }
    let bad_tz = NewSchedule {
        rule: ScheduleRule::Cron { tz: "Nowhere/Land".into(), expr: "* * * * *".into() },
        ..every("q", "c", 1000)
    };
    match c.schedule_add(&bad_tz) {
        Err(ClientError::Rejected { reason, .. }) => {
            assert!(reason.contains("time zone"), "{reason}")
        }
        r => panic!("{r:?}"),
    }
    // The connection is still in step.
    assert!(c.schedule_list().unwrap().is_empty());
}

#[test]
fn a_concurrency_limit_holds_the_second_job_until_the_first_ends() {
    let dir = common::tempdir();
    let data = dir.path().to_str().unwrap();
    let mut server = Server::start(Kind::Spindled, &["-b", data]);
    let mut c = client(&server);
    c.tube_limit("one", TubeLimits { concurrency: 1, ..TubeLimits::default() }).unwrap();
    c.use_tube("one").unwrap();
    c.watch("one").unwrap();
    let a = c.put(0, Duration::ZERO, Duration::from_secs(60), b"a").unwrap();
    let b = c.put(0, Duration::ZERO, Duration::from_secs(60), b"b").unwrap();
    assert_eq!(c.reserve().unwrap().id, a);
    let mut other = client(&server);
    other.watch("one").unwrap();
    assert!(other.reserve_with_timeout(Duration::ZERO).unwrap().is_none());
    let ext = c.stats_tube_ext("one").unwrap();
    assert_eq!(ext.get("limit-concurrency"), Some("1"));
    c.delete(a).unwrap();
    assert_eq!(other.reserve_with_timeout(WAIT).unwrap().unwrap().id, b);
    // A zero rate is refused with the table's reason.
    let zero = TubeLimits { rate: Some((0, Duration::from_secs(1), 1)), ..TubeLimits::default() };
    match c.tube_limit("one", zero) {
        Err(ClientError::Rejected { reason, .. }) => assert!(reason.contains("at least 1")),
        r => panic!("{r:?}"),
    }
    // The limit survives kill -9.
    server.kill9();
    let server = Server::start(Kind::Spindled, &["-b", data]);
    let mut c = client(&server);
    assert_eq!(c.stats_tube_ext("one").unwrap().get("limit-concurrency"), Some("1"));
}

#[test]
fn a_job_past_its_deadline_is_never_handed_out() {
    let server = Server::spindled(&[]);
    let mut c = client(&server);
    c.use_tube("exp").unwrap();
    c.watch("exp").unwrap();
    c.ignore("default").unwrap();
    // Due in 1 s, expiring in 100 ms: it never becomes ready.
    let id = c
        .put_deadline(
            Deadline::In(Duration::from_millis(100)),
            0,
            Duration::from_secs(1),
            Duration::from_secs(60),
            b"late",
        )
        .unwrap();
    assert!(c.reserve_with_timeout(Duration::from_secs(3)).unwrap().is_none());
    assert!(matches!(c.stats_job(id), Err(ClientError::NotFound(_))));
    assert_eq!(c.stats_tube_ext("exp").unwrap().get_u64("expired"), Some(1));
    let past = Deadline::At(std::time::UNIX_EPOCH + Duration::from_secs(1));
    let e = c.put_deadline(past, 0, Duration::ZERO, Duration::from_secs(1), b"x").unwrap_err();
    assert!(matches!(e, ClientError::Rejected { .. }), "{e}");
}

#[test]
fn cancelling_a_reserved_job_tells_its_holder() {
    let server = Server::spindled(&[]);
    let mut c = client(&server);
    let queued = c.put(0, Duration::ZERO, Duration::from_secs(60), b"q").unwrap();
    let running = c.put(1, Duration::ZERO, Duration::from_secs(60), b"r").unwrap();
    let mut admin = client(&server);
    assert_eq!(admin.cancel(queued).unwrap(), CancelOutcome::Removed);
    assert_eq!(c.reserve().unwrap().id, running);
    assert_eq!(admin.cancel(running).unwrap(), CancelOutcome::Running);
    assert!(matches!(c.touch(running), Err(ClientError::Cancelled(_))));
    assert!(matches!(c.delete(running), Err(ClientError::Cancelled(_))));
    assert!(matches!(admin.cancel(running), Err(ClientError::NotFound(_))));
    assert_eq!(c.stats_tube_ext("default").unwrap().get_u64("cancelled"), Some(2));
}

#[test]
fn a_deadline_and_a_running_jobs_cancellation_survive_kill_9() {
    let dir = common::tempdir();
    let data = dir.path().to_str().unwrap();
    let mut server = Server::start(Kind::Spindled, &["-b", data]);
    let mut c = client(&server);
    c.use_tube("k").unwrap();
    c.watch("k").unwrap();
    c.ignore("default").unwrap();
    // Reserved, then cancelled: after the crash it must not come back.
    let running = c.put(0, Duration::ZERO, Duration::from_secs(60), b"run").unwrap();
    assert_eq!(c.reserve().unwrap().id, running);
    let mut admin = client(&server);
    assert_eq!(admin.cancel(running).unwrap(), CancelOutcome::Running);
    // Delayed past its deadline: after the crash it must never be handed out.
    let expiring = c
        .put_deadline(
            Deadline::In(Duration::from_millis(200)),
            0,
            Duration::from_secs(1),
            Duration::from_secs(60),
            b"late",
        )
        .unwrap();
    server.kill9();
    let server = Server::start(Kind::Spindled, &["-b", data]);
    let mut c = client(&server);
    assert!(matches!(c.stats_job(running), Err(ClientError::NotFound(_))), "cancelled job back");
    c.watch("k").unwrap();
    c.ignore("default").unwrap();
    // The delay ends after the deadline: nothing is ever ready.
    assert!(c.reserve_with_timeout(Duration::from_secs(3)).unwrap().is_none());
    assert!(matches!(c.stats_job(expiring), Err(ClientError::NotFound(_))));
}
