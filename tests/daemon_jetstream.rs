//! spindled's distributed tubes (`--jetstream URL --jetstream-tube T`)
//! against a real nats-server (found as `jetstream/tests/support/mod.rs`
//! says; skipped, saying so, when none is configured): beanstalkd clients
//! of several daemons share one queue, and local tubes stay local
//! (`docs/jetstream.md`, "spindled").

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "../jetstream/tests/support/mod.rs"]
mod support;

use std::time::Duration;

use common::{Addr, Kind, Server};
use spindle_client::{Client, ClientError, FailOutcome, PutUnique};

/// Distributed job ids are the stream sequence plus 2^52.
const ID_BASE: u64 = 1 << 52;
/// A guard against hanging, never a synchronisation device.
const WAIT: Duration = Duration::from_secs(20);

fn daemon(nats: &support::Nats, extra: &[&str]) -> Server {
    let mut args = vec![
        "--jetstream",
        &nats.url,
        "--jetstream-namespace",
        &nats.ns,
        "--jetstream-tube",
        "shared",
    ];
    args.extend_from_slice(extra);
    Server::start(Kind::Spindled, &args)
}

fn client(s: &Server) -> Client {
    match s.addr() {
        Addr::Unix(p) => Client::connect_unix(p).unwrap(),
        Addr::Tcp(_) => unreachable!(),
    }
}

/// A client that uses and watches only `shared`.
fn on_shared(s: &Server) -> Client {
    let mut c = client(s);
    c.use_tube("shared").unwrap();
    c.watch("shared").unwrap();
    c.ignore("default").unwrap();
    c
}

fn put(c: &mut Client, body: &[u8]) -> u64 {
    c.put(0, Duration::ZERO, Duration::from_secs(60), body).unwrap()
}

#[test]
fn jobs_put_on_one_daemon_run_once_on_the_others() {
    let Some(nats) = support::nats("daemon_share") else { return };
    let (a, b, c3) = (daemon(&nats, &[]), daemon(&nats, &[]), daemon(&nats, &[]));
    let mut pa = on_shared(&a);
    let mut ids = Vec::new();
    for i in 0..6 {
        let id = put(&mut pa, format!("job {i}").as_bytes());
        assert!(id > ID_BASE, "a distributed id: {id}");
        ids.push(id);
    }
    // Two other daemons' workers take them, each job once.
    let (mut wb, mut wc) = (on_shared(&b), on_shared(&c3));
    let mut seen = Vec::new();
    for i in 0..6 {
        let w = if i % 2 == 0 { &mut wb } else { &mut wc };
        let job = w.reserve_with_timeout(WAIT).unwrap().expect("a job put on another daemon");
        assert_eq!(job.body, format!("job {}", job.id - ids[0]).as_bytes());
        w.delete(job.id).unwrap();
        seen.push(job.id);
    }
    seen.sort_unstable();
    assert_eq!(seen, ids);
    // Nothing is left for anyone, on any daemon.
    for w in [&mut pa, &mut wb, &mut wc] {
        assert!(w.reserve_with_timeout(Duration::ZERO).unwrap().is_none());
    }
}

#[test]
fn a_waiting_reserve_is_served_by_a_put_on_another_daemon() {
    let Some(nats) = support::nats("daemon_wait") else { return };
    let (a, b) = (daemon(&nats, &[]), daemon(&nats, &[]));
    let mut worker = on_shared(&b);
    let waiter = std::thread::spawn(move || {
        let job = worker.reserve_with_timeout(WAIT).unwrap().expect("served by the put");
        worker.delete(job.id).unwrap();
        job.body
    });
    let mut producer = on_shared(&a);
    put(&mut producer, b"wake up");
    assert_eq!(waiter.join().unwrap(), b"wake up");
}

#[test]
fn released_and_abandoned_jobs_come_back_and_local_tubes_stay_local() {
    let Some(nats) = support::nats("daemon_release") else { return };
    let (a, b) = (daemon(&nats, &[]), daemon(&nats, &[]));
    let mut wa = on_shared(&a);
    let id = put(&mut wa, b"again");

    // Released on B: A gets the same job.
    let mut wb = on_shared(&b);
    let job = wb.reserve_with_timeout(WAIT).unwrap().unwrap();
    assert_eq!(job.id, id);
    wb.touch(id).unwrap();
    wb.release(id, 0, Duration::ZERO).unwrap();
    let job = wa.reserve_with_timeout(WAIT).unwrap().unwrap();
    assert_eq!((job.id, job.body.as_slice()), (id, &b"again"[..]));

    // A's connection closes holding it: B gets it back.
    drop(wa);
    let job = wb.reserve_with_timeout(WAIT).unwrap().unwrap();
    assert_eq!(job.id, id);
    // Another connection cannot settle it; its holder can.
    let mut other = on_shared(&b);
    assert!(matches!(other.delete(id), Err(ClientError::NotFound(_))));
    wb.delete(id).unwrap();
    assert!(matches!(wb.delete(id), Err(ClientError::NotFound(_))));

    // A job on a local tube is seen only by its own daemon.
    let mut la = client(&a);
    let local = la.put(0, Duration::ZERO, Duration::from_secs(60), b"mine").unwrap();
    assert!(local < ID_BASE);
    let mut lb = client(&b);
    assert!(lb.reserve_with_timeout(Duration::ZERO).unwrap().is_none());
    assert_eq!(la.reserve_with_timeout(WAIT).unwrap().unwrap().id, local);
}

#[test]
fn a_watcher_of_a_local_and_a_distributed_tube_gets_both() {
    let Some(nats) = support::nats("daemon_mixed") else { return };
    let a = daemon(&nats, &[]);
    let mut c = client(&a);
    c.watch("shared").unwrap();
    let local = put(&mut c, b"local");
    c.use_tube("shared").unwrap();
    let remote = put(&mut c, b"remote");
    // A ready local job first, then the distributed one.
    let first = c.reserve_with_timeout(WAIT).unwrap().unwrap();
    assert_eq!(first.id, local);
    let second = c.reserve_with_timeout(WAIT).unwrap().unwrap();
    assert_eq!((second.id, second.body.as_slice()), (remote, &b"remote"[..]));
    c.delete(local).unwrap();
    c.delete(remote).unwrap();
    // `stats-tube` of a distributed tube counts the stream's jobs (read
    // once a second) and this daemon's connections.
    let st = c.stats_tube("shared").unwrap();
    assert_eq!(st.get_u64("current-watching"), Some(1));
    assert_eq!(st.get_u64("current-using"), Some(1));
}

#[test]
fn unique_keys_fail_bury_and_batches_on_a_distributed_tube() {
    let Some(nats) = support::nats("daemon_unique") else { return };
    // Every daemon declares the queue alike (its consumer is shared).
    let two = ["--jetstream-attempts", "2"];
    let (a, b) = (daemon(&nats, &two), daemon(&nats, &two));
    let (mut ca, mut cb) = (on_shared(&a), on_shared(&b));
    let ttr = Duration::from_secs(60);
    let first = ca.put_unique("order-7", 0, Duration::ZERO, ttr, b"x").unwrap();
    let PutUnique::Inserted(id) = first else { panic!("{first:?}") };
    // The same key through another daemon: a duplicate of the same job.
    let again = cb.put_unique("order-7", 0, Duration::ZERO, ttr, b"y").unwrap();
    assert_eq!(again, PutUnique::Duplicate(id));

    // Failed on the first of two attempts: retried after a backoff.
    let job = ca.reserve_with_timeout(WAIT).unwrap().unwrap();
    assert_eq!(job.id, id);
    match ca.fail(id, b"boom").unwrap() {
        FailOutcome::Retrying { attempts, .. } => assert_eq!(attempts, 1),
        other => panic!("{other:?}"),
    }
    // The second attempt's failure buries it.
    let job = ca.reserve_with_timeout(WAIT).unwrap().unwrap();
    assert_eq!(job.id, id);
    match ca.fail(id, b"boom again").unwrap() {
        FailOutcome::Buried { attempts } => assert_eq!(attempts, 2),
        other => panic!("{other:?}"),
    }
    assert!(ca.reserve_with_timeout(Duration::ZERO).unwrap().is_none());

    // `bury` by the holder.
    let id = put(&mut ca, b"to bury");
    let job = cb.reserve_with_timeout(WAIT).unwrap().unwrap();
    assert_eq!(job.id, id);
    cb.bury(id, 0).unwrap();
    assert!(cb.reserve_with_timeout(Duration::ZERO).unwrap().is_none());
    let node = spindle_jetstream::Node::connect(nats.options()).unwrap();
    assert_eq!(node.buried("shared").unwrap(), 2);
    node.shutdown();

    // A batch's ids are not consecutive on a shared stream: refused.
    let e = ca.put_batch(0, Duration::ZERO, ttr, &[b"a".as_slice(), b"b"]).unwrap_err();
    assert!(format!("{e}").contains("NOT_SUPPORTED"), "{e}");
}

#[test]
fn a_delayed_put_runs_when_due_on_another_daemon() {
    let Some(nats) = support::nats("daemon_delay") else { return };
    let (a, b) = (daemon(&nats, &[]), daemon(&nats, &[]));
    let mut ca = on_shared(&a);
    let id = ca.put(0, Duration::from_secs(1), Duration::from_secs(60), b"later").unwrap();
    assert!(id < ID_BASE, "announced with a local id until due: {id}");
    let mut cb = on_shared(&b);
    let job = cb.reserve_with_timeout(WAIT).unwrap().expect("the delayed job, once due");
    assert_eq!(job.body, b"later");
    cb.delete(job.id).unwrap();
}

#[test]
fn a_daemon_killed_holding_a_job_loses_nothing() {
    let Some(nats) = support::nats("daemon_kill9") else { return };
    let ttr = ["--jetstream-ttr", "1"];
    let (a, mut b) = (daemon(&nats, &ttr), daemon(&nats, &ttr));
    let mut ca = on_shared(&a);
    let id = put(&mut ca, b"survives");
    let mut cb = on_shared(&b);
    assert_eq!(cb.reserve_with_timeout(WAIT).unwrap().unwrap().id, id);
    b.kill9();
    // Its lease runs out after the TTR (1 s): the job comes back to A.
    let job = ca.reserve_with_timeout(WAIT).unwrap().expect("redelivered after the TTR");
    assert_eq!((job.id, job.body.as_slice()), (id, &b"survives"[..]));
    ca.delete(id).unwrap();
}

#[test]
fn bad_settings_are_refused_at_start() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_spindled"))
        .args(["--jetstream-tube", "shared"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--jetstream-tube needs --jetstream"));
    let dir = common::tempdir();
    let sock = dir.path().join("s.sock");
    // Nothing listens on port 1: a clear error, not a daemon without its
    // distributed tubes.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_spindled"))
        .args(["--jetstream", "nats://127.0.0.1:1", "--jetstream-tube", "shared", "-l"])
        .arg(format!("unix:{}", sock.display()))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot set up the distributed tubes on nats://127.0.0.1:1"), "{err}");
}

#[test]
fn a_delayed_job_survives_kill_9_of_the_daemon_that_took_it() {
    // On a server without `@at` schedules (2.9.10) the daemon holds a
    // delayed job until due, logged under its data directory; on a current
    // server the server holds it. Either way a kill -9 loses nothing.
    let Some(nats) = support::nats("daemon_hold") else { return };
    let dir = common::tempdir();
    let data = dir.path().to_str().unwrap();
    let mut a = daemon(&nats, &["-b", data]);
    let mut ca = on_shared(&a);
    ca.put(0, Duration::from_secs(2), Duration::from_secs(60), b"held").unwrap();
    a.kill9();
    let _a = daemon(&nats, &["-b", data]);
    let b = daemon(&nats, &[]);
    let mut cb = on_shared(&b);
    let job = cb.reserve_with_timeout(WAIT).unwrap().expect("the held job, once due");
    assert_eq!(job.body, b"held");
    cb.delete(job.id).unwrap();
    assert!(cb.reserve_with_timeout(Duration::ZERO).unwrap().is_none());
}

#[test]
fn a_daemons_put_reaches_a_library_node_with_its_priority() {
    let Some(nats) = support::nats("daemon_node") else { return };
    let a = daemon(&nats, &[]);
    let mut ca = on_shared(&a);
    let id = ca.put(7, Duration::ZERO, Duration::from_secs(60), b"to a node").unwrap();
    // A library node declares the tube as the daemons do (TTR 120 s, 25
    // attempts: spindled's defaults) and leases the job.
    let node = spindle_jetstream::Node::connect(nats.options()).unwrap();
    let cfg =
        spindle_jetstream::QueueConfig::default().ttr(Duration::from_secs(120)).max_attempts(25);
    node.declare("shared", cfg).unwrap();
    let mut w = node.worker("shared", 1).unwrap();
    let lease = w.reserve(WAIT).unwrap().expect("the daemon's job");
    assert_eq!((lease.id() + ID_BASE, lease.priority()), (id, 7));
    assert_eq!(lease.payload(), b"to a node");
    lease.complete().unwrap();
    drop(w);
    node.shutdown();
}

#[test]
fn a_waiting_reserve_batch_is_served_a_batch() {
    let Some(nats) = support::nats("daemon_batch") else { return };
    let (a, b) = (daemon(&nats, &[]), daemon(&nats, &[]));
    let mut worker = on_shared(&b);
    let waiter = std::thread::spawn(move || {
        let jobs = worker.reserve_batch(5, WAIT).unwrap();
        for j in &jobs {
            worker.delete(j.id).unwrap();
        }
        jobs.into_iter().map(|j| j.body).collect::<Vec<_>>()
    });
    let mut producer = on_shared(&a);
    put(&mut producer, b"one");
    let bodies = waiter.join().unwrap();
    assert_eq!(bodies, vec![b"one".to_vec()]);
}
