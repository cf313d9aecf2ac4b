//! Durability of the daemon's data directory under `kill -9`.
//!
//! `spindled -b DIR` takes a stream of puts (ready, and delayed by an
//! hour; single, and `put-batch` of up to 8 jobs, which spindled logs as
//! one shared record), reservations by id followed by `bury`, and deletes, on one
//! connection, one command at a time. At a seeded random point the process
//! is SIGKILLed (the client is usually in the middle of a command then),
//! restarted on the same directory, and every job is checked with
//! `stats-job` and `peek`:
//!
//! * every id that got `INSERTED` is there with its body, in the state its
//!   last acknowledged command left it in (`ready`, `delayed`, `buried`);
//!   a reservation does not survive a restart, so a reserved job is
//!   `ready`;
//! * a job whose `DELETED` was received stays gone;
//! * for the one command that was in flight when the process died, either
//!   outcome is allowed;
//! * nothing else appears (the job counts add up), and ids are never
//!   reused: the next `INSERTED` id is above every id seen.
//!
//! Then a second workload runs on the recovered server and the cycle
//! repeats, so recovery of a recovered log is covered too. Three trials
//! with fixed seeds use the three sync settings: default (`-f` 50 ms),
//! `-F` (never fsync: a `kill -9` loses nothing that was acknowledged,
//! since the kernel still has the data) and `-f 0`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Conn, Kind, Rng, Server};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::mpsc;
use std::thread;

/// The states a job may be found in after the restart (`gone` = absent).
#[derive(Clone, Debug)]
struct Expect {
    allowed: Vec<&'static str>,
    body: Vec<u8>,
}

/// What the workload knows when the server dies.
#[derive(Default)]
struct Book {
    jobs: BTreeMap<u64, Expect>,
    /// A put (or a `put-batch` of this many jobs) was sent but its reply
    /// never came: that many unknown jobs may exist.
    put_in_flight: u64,
}

impl Book {
    fn present(&self) -> impl Iterator<Item = (&u64, &Expect)> {
        self.jobs.iter().filter(|(_, e)| e.allowed != ["gone"])
    }
    fn ids_in(&self, state: &str) -> Vec<u64> {
        self.jobs.iter().filter(|(_, e)| e.allowed == [state]).map(|(id, _)| *id).collect()
    }
}

fn body_for(rng: &mut Rng) -> Vec<u8> {
    let len = rng.below(3000) as usize;
    (0..len).map(|_| (rng.next() >> 32) as u8).collect()
}

/// Runs commands until the connection fails (the server was killed);
/// reports the number of completed commands on `progress` after each.
/// `batches`: the server knows `put-batch` (beanstalkd does not).
fn workload(
    c: &mut Conn,
    book: &mut Book,
    seed: u64,
    progress: &mpsc::Sender<usize>,
    batches: bool,
) {
    let mut rng = Rng::new(seed);
    for done in 0.. {
        let _ = progress.send(done);
        let pick = rng.below(20);
        let ready = book.ids_in("ready");
        if pick < 3 && !ready.is_empty() {
            // reserve-job + bury
            let id = ready[rng.below(ready.len() as u64) as usize];
            if c.try_send(format!("reserve-job {id}\r\n").as_bytes()).is_err() {
                return;
            }
            let Ok(r) = c.try_reply() else { return };
            let body = &book.jobs[&id].body;
            let mut want = format!("RESERVED {id} {}\r\n", body.len()).into_bytes();
            want.extend_from_slice(body);
            want.extend_from_slice(b"\r\n");
            assert_eq!(r, want, "reserve-job {id}");
            let e = book.jobs.get_mut(&id).expect("job");
            e.allowed = vec!["ready", "buried"];
            if c.try_send(format!("bury {id} {}\r\n", rng.below(5000)).as_bytes()).is_err() {
                return;
            }
            let Ok(r) = c.try_reply() else { return };
            assert_eq!(r, b"BURIED\r\n", "bury {id}");
            book.jobs.get_mut(&id).expect("job").allowed = vec!["buried"];
        } else if pick == 3 && !book.jobs.is_empty() {
            let ids: Vec<u64> = book.present().map(|(id, _)| *id).collect();
            if ids.is_empty() {
                continue;
            }
            let id = ids[rng.below(ids.len() as u64) as usize];
            book.jobs.get_mut(&id).expect("job").allowed.push("gone");
            if c.try_send(format!("delete {id}\r\n").as_bytes()).is_err() {
                return;
            }
            let Ok(r) = c.try_reply() else { return };
            assert_eq!(r, b"DELETED\r\n", "delete {id}");
            book.jobs.get_mut(&id).expect("job").allowed = vec!["gone"];
        } else if (4..=5).contains(&pick) && batches {
            let delayed = pick == 5;
            let delay = if delayed { 3600 } else { 0 };
            let bodies: Vec<Vec<u8>> = (0..1 + rng.below(8)).map(|_| body_for(&mut rng)).collect();
            let mut cmd = format!("put-batch {} {delay} 60 {}\r\n", rng.below(3000), bodies.len())
                .into_bytes();
            for b in &bodies {
                cmd.extend_from_slice(format!("{}\r\n", b.len()).as_bytes());
                cmd.extend_from_slice(b);
                cmd.extend_from_slice(b"\r\n");
            }
            book.put_in_flight = bodies.len() as u64;
            if c.try_send(&cmd).is_err() {
                return;
            }
            let Ok(r) = c.try_reply() else { return };
            let text = String::from_utf8_lossy(&r).into_owned();
            let first: u64 = text
                .strip_prefix("INSERTED-BATCH ")
                .and_then(|s| s.split(' ').next())
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("put-batch: {text:?}"));
            assert_eq!(text, format!("INSERTED-BATCH {first} {}\r\n", bodies.len()));
            book.put_in_flight = 0;
            let state = if delayed { "delayed" } else { "ready" };
            for (id, body) in (first..).zip(bodies) {
                let old = book.jobs.insert(id, Expect { allowed: vec![state], body });
                assert!(old.is_none(), "id {id} given out twice");
            }
        } else {
            let delayed = pick >= 16;
            let body = body_for(&mut rng);
            let delay = if delayed { 3600 } else { 0 };
            let mut cmd =
                format!("put {} {delay} 60 {}\r\n", rng.below(3000), body.len()).into_bytes();
            cmd.extend_from_slice(&body);
            cmd.extend_from_slice(b"\r\n");
            book.put_in_flight = 1;
            if c.try_send(&cmd).is_err() {
                return;
            }
            let Ok(r) = c.try_reply() else { return };
            let text = String::from_utf8_lossy(&r).into_owned();
            let id: u64 = text
                .strip_prefix("INSERTED ")
                .and_then(|s| s.trim_end().parse().ok())
                .unwrap_or_else(|| panic!("put: {text:?}"));
            book.put_in_flight = 0;
            let state = if delayed { "delayed" } else { "ready" };
            let old = book.jobs.insert(id, Expect { allowed: vec![state], body });
            assert!(old.is_none(), "id {id} given out twice");
        }
    }
}

/// Starts the server on `dir`, runs the workload from another thread and
/// SIGKILLs the server once `kill_at` commands have completed.
fn run_and_kill(
    kind: Kind,
    dir: &Path,
    flags: &[&str],
    book: Book,
    seed: u64,
    kill_at: usize,
) -> Book {
    let mut args = vec!["-b", dir.to_str().expect("utf-8 path")];
    args.extend_from_slice(flags);
    let mut server = Server::start(kind, &args);
    let mut c = server.connect();
    let (tx, rx) = mpsc::channel();
    let batches = matches!(kind, Kind::Spindled);
    let worker = thread::spawn(move || {
        let mut book = book;
        workload(&mut c, &mut book, seed, &tx, batches);
        book
    });
    loop {
        match rx.recv() {
            Ok(n) if n >= kill_at => break,
            Ok(_) => {}
            Err(_) => {
                // The workload ended early: report its panic, if any.
                let tail = server.log_tail();
                if let Err(e) = worker.join() {
                    std::panic::resume_unwind(e);
                }
                panic!("the workload stopped before the kill{tail}");
            }
        }
    }
    server.kill9();
    worker.join().expect("workload thread")
}

/// Restarts on `dir` and checks every job against `book`; collapses the
/// book to what was found. Returns the server for the next round.
fn restart_and_check(
    kind: Kind,
    dir: &Path,
    flags: &[&str],
    book: &mut Book,
    trial: &str,
) -> Server {
    let mut args = vec!["-b", dir.to_str().expect("utf-8 path")];
    args.extend_from_slice(flags);
    let server = Server::start(kind, &args);
    let mut c = server.connect();
    let mut present = 0u64;
    for (id, e) in book.jobs.iter_mut() {
        let r = c.cmd(format!("stats-job {id}\r\n").as_bytes());
        let state = if r == b"NOT_FOUND\r\n" {
            "gone"
        } else {
            match common::yaml_value(&r, "state").as_deref() {
                Some("ready") => "ready",
                Some("delayed") => "delayed",
                Some("buried") => "buried",
                Some("reserved") => "reserved",
                _ => panic!("{trial}: stats-job {id}: {}", common::esc(&r)),
            }
        };
        assert!(
            e.allowed.contains(&state),
            "{trial}: job {id} is {state} after kill -9 and restart, expected one of {:?}{}",
            e.allowed,
            server.log_tail()
        );
        if state != "gone" {
            present += 1;
            let r = c.cmd(format!("peek {id}\r\n").as_bytes());
            let mut want = format!("FOUND {id} {}\r\n", e.body.len()).into_bytes();
            want.extend_from_slice(&e.body);
            want.extend_from_slice(b"\r\n");
            assert!(r == want, "{trial}: job {id}'s body changed: {}", common::esc(&r));
        }
        e.allowed = vec![state];
    }
    let stats = c.cmd(b"stats\r\n");
    let count = |k: &str| -> u64 {
        common::yaml_value(&stats, k).and_then(|v| v.parse().ok()).expect("stats value")
    };
    let total = count("current-jobs-ready")
        + count("current-jobs-reserved")
        + count("current-jobs-delayed")
        + count("current-jobs-buried");
    let extra = book.put_in_flight;
    assert!(
        (present..=present + extra).contains(&total),
        "{trial}: {total} jobs after restart, {present} expected (+ up to {extra} in flight)"
    );
    if total > present {
        // The in-flight put made it: find its jobs so the next round knows
        // them (an id may have been skipped before them).
        let max = book.jobs.keys().max().copied().unwrap_or(0);
        for id in max + 1..max + extra + 2 {
            let r = c.cmd(format!("peek {id}\r\n").as_bytes());
            if r.starts_with(b"FOUND ") {
                let body = r[r.iter().position(|&b| b == b'\n').unwrap() + 1..r.len() - 2].to_vec();
                let s = c.cmd(format!("stats-job {id}\r\n").as_bytes());
                let st = common::yaml_value(&s, "state").unwrap_or_default();
                let st: &'static str = if st == "delayed" { "delayed" } else { "ready" };
                book.jobs.insert(id, Expect { allowed: vec![st], body });
            }
        }
    }
    book.put_in_flight = 0;
    // Ids are never reused.
    let max = book.jobs.keys().max().copied().unwrap_or(0);
    let r = c.cmd(b"put 0 0 60 5\r\nfresh\r\n");
    let text = String::from_utf8_lossy(&r).into_owned();
    let id: u64 = text
        .strip_prefix("INSERTED ")
        .and_then(|s| s.trim_end().parse().ok())
        .unwrap_or_else(|| panic!("{trial}: put after restart: {text:?}"));
    assert!(id > max, "{trial}: id {id} after restart reuses an old id (max seen {max})");
    book.jobs.insert(id, Expect { allowed: vec!["ready"], body: b"fresh".to_vec() });
    let mut by_state = BTreeMap::new();
    for e in book.jobs.values() {
        *by_state.entry(e.allowed[0]).or_insert(0) += 1;
    }
    println!("{trial}: recovered {by_state:?}");
    c.send(b"quit\r\n");
    assert!(c.read_to_eof().is_empty());
    server
}

fn trial(seed: u64, flags: &[&str]) {
    let kind = Kind::under_test();
    let dir = common::tempdir();
    let mut rng = Rng::new(seed ^ 0xdead_beef);
    let mut book = Book::default();
    for round in 0..2 {
        let kill_at = 100 + rng.below(400) as usize;
        let name = format!("seed {seed} {flags:?} round {round} (killed after {kill_at} commands)");
        book = run_and_kill(kind, dir.path(), flags, book, seed * 10 + round, kill_at);
        let server = restart_and_check(kind, dir.path(), flags, &mut book, &name);
        drop(server);
    }
}

#[test]
fn kill9_default_sync() {
    trial(1, &[]);
}

#[test]
fn kill9_never_fsync() {
    trial(2, &["-F"]);
}

#[test]
fn kill9_always_fsync() {
    trial(3, &["-f", "0"]);
}

/// A damaged log tail is cut at restart; ids in the cut may have been
/// acknowledged, so they must never be handed out again, however few
/// bytes each took (a job in a `put-batch` record takes 8 bytes plus its
/// body).
#[test]
fn ids_in_a_damaged_tail_are_never_given_out_again() {
    if matches!(Kind::under_test(), Kind::Beanstalkd) {
        return; // put-batch is spindled's
    }
    let dir = common::tempdir();
    let data = dir.path().to_str().expect("utf-8 path");
    let mut server = Server::start(Kind::Spindled, &["-b", data, "-F"]);
    let mut c = server.connect();
    assert_eq!(c.cmd(b"put 0 0 60 1\r\na\r\n"), b"INSERTED 1\r\n");
    let mut batch = b"put-batch 0 0 60 1000\r\n".to_vec();
    for _ in 0..1000 {
        batch.extend_from_slice(b"0\r\n\r\n");
    }
    assert_eq!(c.cmd(&batch), b"INSERTED-BATCH 2 1000\r\n");
    server.kill9();
    // Flip a byte inside the batch's frame, a few hundred bytes into the
    // first segment (past its 64-byte header and the first put's frame of
    // under 128): the frame's CRC fails and the tail is cut.
    let seg = std::fs::read_dir(dir.path())
        .expect("data dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .min()
        .expect("a segment");
    let mut bytes = std::fs::read(&seg).expect("segment");
    bytes[64 + 128 + 400] ^= 0x55;
    std::fs::write(&seg, &bytes).expect("write segment");
    let server = Server::start(Kind::Spindled, &["-b", data, "-F"]);
    let mut c = server.connect();
    assert_eq!(c.cmd(b"peek 2\r\n"), b"NOT_FOUND\r\n", "the damaged record was not cut");
    let r = String::from_utf8_lossy(&c.cmd(b"put 0 0 60 1\r\nb\r\n")).into_owned();
    let id: u64 = r
        .strip_prefix("INSERTED ")
        .and_then(|s| s.trim_end().parse().ok())
        .unwrap_or_else(|| panic!("put after restart: {r:?}"));
    assert!(id > 1001, "id {id} after the cut: ids 2..=1001 were acknowledged");
}
