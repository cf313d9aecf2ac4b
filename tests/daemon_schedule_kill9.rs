//! Schedules under `kill -9`: no tick lost, none doubled.
//!
//! spindled runs a schedule that ticks every 25 ms and is SIGKILLed 20
//! times, each after a seeded random run of 40-240 ms, then restarted on the
//! same data directory. Afterwards the log is read back offline and every
//! `Fire` record (a tick and the job it put, one record) is checked:
//!
//! * ticks strictly increase, each on the schedule's 25 ms grid: no tick
//!   was fired twice, by any number of restarts;
//! * every tick of the grid between the first and the last fired one was
//!   fired, except ticks missed across a kill, which the default `run-once`
//!   policy folds into one job at the first fire after the restart: no
//!   gap between two fired ticks without a kill between them;
//! * each fired tick's job is in the record, with a unique id, and the
//!   tube holds exactly those jobs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{Addr, Kind, Server};
use spindle::table::record::{decode, Record, WAL_KIND};
use spindle::wal::{RecoveryMode, SyncPolicy, Wal, WalOptions};
use spindle_client::{Client, NewSchedule, ScheduleRule};

const EVERY_MS: u64 = 25;
const TRIALS: usize = 20;

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64
}

fn client(s: &Server) -> Client {
    match s.addr() {
        Addr::Unix(p) => Client::connect_unix(p).unwrap(),
        Addr::Tcp(_) => unreachable!(),
    }
}

#[test]
fn schedules_lose_no_tick_and_double_none_across_kill_9() {
    let dir = common::tempdir();
    let data = dir.path().to_str().unwrap().to_string();
    let mut server = Server::start(Kind::Spindled, &["-b", &data]);
    client(&server)
        .schedule_add(&NewSchedule {
            tube: "cron".into(),
            name: "tick".into(),
            rule: ScheduleRule::Every(Duration::from_millis(EVERY_MS)),
            pri: 0,
            ttr: Duration::from_secs(60),
            skip_missed: false,
            no_overlap: false,
            payload: b"t".to_vec(),
        })
        .unwrap();
    // (kill, listening again), wall-clock nanoseconds.
    let mut down: Vec<(u64, u64)> = Vec::with_capacity(TRIALS);
    let mut seed: u64 = 0x5eed_0001;
    for _ in 0..TRIALS {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        // The server runs (and fires) for a while before the kill; this is
        // the workload's length, not a synchronisation.
        std::thread::sleep(Duration::from_millis(40 + (seed >> 33) % 200));
        let killed = now_ns();
        server.kill9();
        server = Server::start(Kind::Spindled, &["-b", &data]);
        down.push((killed, now_ns()));
    }
    let ready = client(&server).stats_tube("cron").unwrap().get_u64("current-jobs-ready").unwrap();
    server.kill9();

    // Read the log back: the `Fire` records in log order.
    let opts = WalOptions {
        shard: 0,
        segment_size: 1 << 20,
        sync: SyncPolicy::Never,
        recovery: RecoveryMode::Truncate,
        ..WalOptions::default()
    };
    let (wal, _) = Wal::open(dir.path(), opts).unwrap();
    let mut fires: Vec<(u64, u64, bool)> = Vec::new();
    wal.replay(|r| {
        if r.kind != WAL_KIND {
            return;
        }
        for rec in decode(r.payload) {
            if let Ok(Record::Fire { tick, job, put, .. }) = rec {
                fires.push((tick.0, job, put.is_some_and(|p| p.id == job)));
            }
        }
    })
    .unwrap();
    assert!(fires.len() > TRIALS, "only {} ticks fired", fires.len());

    let every = EVERY_MS * 1_000_000;
    let phase = fires[0].0 % every;
    let mut ids = std::collections::HashSet::new();
    for w in fires.windows(2) {
        let (a, b) = (w[0].0, w[1].0);
        assert!(b > a, "tick {b} fired after tick {a}: a tick fired twice or went back");
        // Grid points skipped between two fired ticks must have been folded
        // into the first fire after a restart: a kill came after `a` fired,
        // and `b`, the latest tick due at that fire, was due no earlier than
        // one interval before the kill (it may have been due, not yet fired,
        // when the kill came).
        if b - a > every {
            let folded = down.iter().any(|&(k, _)| a < k && b + every > k);
            assert!(folded, "ticks between {a} and {b} were due while the server ran, never fired");
        }
    }
    for &(tick, job, has_put) in &fires {
        assert_eq!(tick % every, phase, "tick {tick} is off the schedule's grid");
        assert!(job != 0 && has_put, "tick {tick} fired without its job in the same record");
        assert!(ids.insert(job), "job {job} fired twice");
    }
    // The tube holds exactly the fired jobs (none consumed).
    assert_eq!(ready, fires.len() as u64);
}
