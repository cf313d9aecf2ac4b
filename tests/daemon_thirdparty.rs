//! A third-party client against the daemon: the `beanstalkc` crate (1.0,
//! unchanged, as an existing user would have it) runs a whole job
//! lifecycle: put, reserve, touch, release, bury, kick, kick-job, peek in
//! every form, delete, tube commands and the three stats commands.
//!
//! `beanstalkc` only speaks TCP (`Beanstalkc::host/port` and a
//! `TcpStream`), so here the daemon listens on 127.0.0.1 and a port that
//! was free a moment before (`-l 127.0.0.1 -p PORT`, beanstalkd's flags);
//! every other test uses a Unix socket.
//!
//! The client has no read timeout, so the scenario runs on its own thread
//! and the test fails if it does not finish in time (the server is then
//! killed, which unblocks the thread).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use beanstalkc::Beanstalkc;
use common::{Kind, Server};
use std::collections::HashMap;
use std::sync::mpsc;
use std::time::Duration;

const SCENARIO_LIMIT: Duration = Duration::from_secs(60);

fn connect(port: u16) -> Beanstalkc {
    Beanstalkc::new()
        .host("127.0.0.1")
        .port(port)
        .connection_timeout(Some(Duration::from_secs(5)))
        .connect()
        .expect("beanstalkc connect")
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// What the scenario saw of `stats*` through beanstalkc's YAML parser.
struct Seen {
    stats: HashMap<String, String>,
    tube: HashMap<String, String>,
    job: HashMap<String, String>,
}

/// The scenario; panics on any unexpected answer.
fn scenario(port: u16) -> Seen {
    let mut c = connect(port);
    assert_eq!(c.using().unwrap(), "default");
    assert_eq!(c.use_tube("emails").unwrap(), "emails");
    assert_eq!(c.watch("emails").unwrap(), 2);
    assert_eq!(c.ignore("default").unwrap(), 1);
    assert_eq!(c.watching().unwrap(), vec!["emails".to_string()]);
    let mut tubes = c.tubes().unwrap();
    tubes.sort();
    assert_eq!(tubes, vec!["default".to_string(), "emails".to_string()]);

    let first = c.put(b"hello", 10, secs(0), secs(60)).unwrap();
    assert_eq!(first, 1, "job ids start at 1");
    let second = c.put(b"urgent", 0, secs(0), secs(60)).unwrap();
    let delayed = c.put(b"later", 0, secs(3600), secs(60)).unwrap();
    let big = vec![b'z'; 60_000];
    let big_id = c.put(&big, 20, secs(0), secs(60)).unwrap();
    assert_eq!((second, delayed, big_id), (2, 3, 4));

    assert_eq!(c.peek_ready().unwrap().id(), second, "most urgent first");
    assert_eq!(c.peek_delayed().unwrap().id(), delayed);
    assert!(c.peek_buried().is_err(), "nothing buried yet");
    let p = c.peek(big_id).unwrap();
    assert_eq!(p.body(), &big[..], "60 kB body intact");

    {
        let mut j = c.reserve().unwrap();
        assert_eq!((j.id(), j.body()), (second, &b"urgent"[..]));
        j.touch().unwrap();
        j.release(5, secs(0)).unwrap();
    }
    {
        let mut j = c.reserve_with_timeout(secs(1)).unwrap();
        assert_eq!(j.id(), second, "released with priority 5, still before 10");
        j.bury(7).unwrap();
    }
    assert_eq!(c.peek_buried().unwrap().id(), second);
    assert_eq!(c.kick(10).unwrap(), 1, "kick moves the buried job only");
    let delayed_stats = c.stats_job(delayed).unwrap();
    c.kick_job(delayed).unwrap();
    {
        let mut j = c.reserve().unwrap();
        assert_eq!(j.id(), delayed, "kicked delayed job, priority 0");
        j.delete().unwrap();
    }
    let job = c.stats_job(second).unwrap();
    let tube = c.stats_tube("emails").unwrap();
    let stats = c.stats().unwrap();

    for want in [second, first, big_id] {
        let mut j = c.reserve().unwrap();
        assert_eq!(j.id(), want);
        j.delete().unwrap();
    }
    assert!(c.reserve_with_timeout(secs(0)).is_err(), "TIMED_OUT is an error");
    assert!(c.delete(first).is_err(), "NOT_FOUND is an error");
    c.pause_tube("emails", secs(1)).unwrap();
    assert_eq!(delayed_stats.get("state").map(String::as_str), Some("delayed"));
    Seen { stats, tube, job }
}

fn run(kind: Kind) -> Seen {
    let server = Server::start_tcp(kind, &[]);
    let port = server.port();
    let (tx, rx) = mpsc::channel();
    let worker = std::thread::spawn(move || {
        let seen = scenario(port);
        let _ = tx.send(seen);
    });
    match rx.recv_timeout(SCENARIO_LIMIT) {
        Ok(seen) => {
            worker.join().expect("scenario thread");
            seen
        }
        // The scenario panicked: report its panic.
        Err(mpsc::RecvTimeoutError::Disconnected) => match worker.join() {
            Err(e) => std::panic::resume_unwind(e),
            Ok(()) => unreachable!("the scenario sends before it returns"),
        },
        Err(mpsc::RecvTimeoutError::Timeout) => {
            // Killing the server unblocks the client thread (it then fails).
            drop(server);
            let _ = worker.join();
            panic!(
                "the beanstalkc scenario against {} did not finish in {SCENARIO_LIMIT:?}",
                kind.name()
            );
        }
    }
}

/// The kernel version string, the `os` value of `stats` (uname's
/// `version` field).
fn uname_version() -> String {
    std::fs::read_to_string("/proc/sys/kernel/version").expect("read kernel version").trim().into()
}

/// The scenario against the server under test, and what beanstalkc's YAML
/// parser (serde_yaml) makes of its `stats*` replies. With 1.13's quoting
/// the `os` value arrives intact; beanstalkd 1.12 prints it bare, and on
/// Linux it starts with `#`, so YAML reads a comment and the client gets
/// `~` (null) instead (see the reference test below).
#[test]
fn beanstalkc_lifecycle() {
    let seen = run(Kind::under_test());
    let get = |m: &HashMap<String, String>, k: &str| m.get(k).cloned().unwrap_or_default();
    assert_eq!(get(&seen.job, "id"), "2", "{:?}", seen.job);
    assert_eq!(get(&seen.job, "tube"), "emails");
    assert_eq!(get(&seen.job, "state"), "ready");
    assert_eq!(get(&seen.job, "pri"), "7");
    assert_eq!(get(&seen.job, "reserves"), "2");
    assert_eq!(get(&seen.job, "releases"), "1");
    assert_eq!(get(&seen.job, "buries"), "1");
    assert_eq!(get(&seen.job, "kicks"), "1");
    assert_eq!(get(&seen.tube, "name"), "emails", "{:?}", seen.tube);
    assert_eq!(get(&seen.tube, "current-jobs-ready"), "3");
    assert_eq!(get(&seen.tube, "total-jobs"), "4");
    assert_eq!(get(&seen.stats, "total-jobs"), "4", "{:?}", seen.stats);
    assert_eq!(get(&seen.stats, "cmd-put"), "4");
    assert_eq!(get(&seen.stats, "current-connections"), "1");
    assert_eq!(get(&seen.stats, "draining"), "false");
    if !common::self_mode() {
        assert_eq!(get(&seen.stats, "os"), uname_version(), "`os` must be quoted (1.13)");
    }
}

/// The same scenario against beanstalkd 1.12, which checks the scenario
/// itself and shows why 1.13 quotes strings: beanstalkc reads 1.12's `os`
/// as null.
#[test]
fn beanstalkc_reference_beanstalkd() {
    let seen = run(Kind::Beanstalkd);
    assert_eq!(seen.tube.get("name").map(String::as_str), Some("emails"));
    assert_eq!(seen.job.get("tube").map(String::as_str), Some("emails"));
    assert_eq!(seen.stats.get("total-jobs").map(String::as_str), Some("4"));
    if uname_version().starts_with('#') {
        assert_eq!(seen.stats.get("os").map(String::as_str), Some("~"), "1.12's bare `os`");
    }
}
