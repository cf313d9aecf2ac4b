//! Nodes sharing a queue through a real nats-server: a job put on one node
//! runs once on another; a node kill -9ed while holding leases loses
//! nothing; a server restart loses nothing acknowledged. See
//! `support/mod.rs` for how the server is found (the tests skip, saying
//! so, only when none is configured).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use spindle_engine::Outcome;
use spindle_jetstream::{Node, Put, QueueConfig, Receipt};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::{nats, own_nats, wait_until};

const LIMIT: Duration = Duration::from_secs(30);

fn queued(r: Receipt) -> u64 {
    match r {
        Receipt::Queued { seq, .. } => seq,
        other => panic!("expected Queued, got {other:?}"),
    }
}

#[test]
fn a_job_put_on_one_node_runs_once_on_the_others() {
    let Some(srv) = nats("shared_once") else { return };
    let cfg = QueueConfig::default().ttr(Duration::from_secs(30));
    let a = Node::connect(srv.options().name("node-a")).unwrap();
    let b = Node::connect(srv.options().name("node-b")).unwrap();
    let c = Node::connect(srv.options().name("node-c")).unwrap();
    for n in [&a, &b, &c] {
        n.declare("emails.out", cfg.clone()).unwrap();
    }
    let jobs: Vec<Put> =
        (0..200).map(|i| Put::new("emails.out", format!("job {i}").into_bytes())).collect();
    let put: BTreeSet<u64> =
        a.put_batch(jobs).unwrap().into_iter().map(|r| queued(r.unwrap())).collect();
    assert_eq!(put.len(), 200);

    let runs: Arc<Mutex<BTreeMap<u64, (u32, &'static str)>>> = Arc::default();
    let pools: Vec<_> = [(&b, "b"), (&c, "c")]
        .into_iter()
        .map(|(node, name)| {
            let runs = runs.clone();
            node.work("emails.out", 2, move |job| {
                let mut r = runs.lock().unwrap();
                r.entry(job.id()).or_insert((0, name)).0 += 1;
                Outcome::Done
            })
            .unwrap()
        })
        .collect();
    wait_until(LIMIT, "all 200 jobs to run", || runs.lock().unwrap().len() == 200);
    wait_until(LIMIT, "the consumer to drain", || b.lag("emails.out").unwrap().backlog() == 0);
    for p in pools {
        p.stop();
    }
    let runs = runs.lock().unwrap();
    assert_eq!(runs.keys().copied().collect::<BTreeSet<_>>(), put);
    assert!(runs.values().all(|(n, _)| *n == 1), "a job ran twice: {runs:?}");
    for n in [a, b, c] {
        n.shutdown();
    }
}

/// Run as a child process by `a_node_killed_holding_leases_loses_nothing`:
/// a node that leases jobs, says which on stdout, and waits to be killed.
#[test]
fn child_node_holding_leases() {
    let (Ok(url), Ok(ns)) =
        (std::env::var("SPINDLE_JS_CHILD_URL"), std::env::var("SPINDLE_JS_CHILD_NS"))
    else {
        return; // Not a child: nothing to do.
    };
    let node = Node::connect(spindle_jetstream::NodeOptions::new(url).namespace(ns)).unwrap();
    node.declare("work", kill_cfg()).unwrap();
    let mut w = node.worker("work", 8).unwrap();
    let mut held = Vec::new();
    while held.len() < 10 {
        if let Some(l) = w.reserve(Duration::from_secs(1)).unwrap() {
            println!("LEASED {}", l.id());
            held.push(l);
        }
    }
    println!("HOLDING");
    loop {
        std::thread::park();
    }
}

fn kill_cfg() -> QueueConfig {
    QueueConfig::default().ttr(Duration::from_secs(1)).max_attempts(5)
}

#[test]
fn a_node_killed_holding_leases_loses_nothing() {
    let Some(srv) = nats("kill9") else { return };
    let a = Node::connect(srv.options().name("producer")).unwrap();
    a.declare("work", kill_cfg()).unwrap();
    let jobs = (0..30).map(|i| Put::new("work", vec![i as u8])).collect();
    let acked: BTreeSet<u64> =
        a.put_batch(jobs).unwrap().into_iter().map(|r| queued(r.unwrap())).collect();

    // Node 1, its own process, leases 10 jobs and is killed -9.
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_node_holding_leases", "--nocapture", "--test-threads=1"])
        .env("SPINDLE_JS_CHILD_URL", &srv.url)
        .env("SPINDLE_JS_CHILD_NS", &srv.ns)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut held = BTreeSet::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        // libtest's "test NAME ... " may start the first line.
        if let Some(at) = line.find("LEASED ") {
            held.insert(line[at + 7..].trim().parse::<u64>().unwrap());
        }
        if line.ends_with("HOLDING") {
            break;
        }
    }
    assert_eq!(held.len(), 10, "the child node leased {held:?}");
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    // Node 2 runs everything, the killed node's leases after their TTR.
    let b = Node::connect(srv.options().name("survivor")).unwrap();
    b.declare("work", kill_cfg()).unwrap();
    let runs: Arc<Mutex<BTreeMap<u64, u32>>> = Arc::default();
    let r2 = runs.clone();
    let pool = b
        .work("work", 2, move |job| {
            r2.lock().unwrap().insert(job.id(), job.attempt());
            Outcome::Done
        })
        .unwrap();
    wait_until(LIMIT, "every acknowledged job to run", || runs.lock().unwrap().len() == 30);
    pool.stop();
    let runs = runs.lock().unwrap();
    assert_eq!(runs.keys().copied().collect::<BTreeSet<_>>(), acked);
    for id in &held {
        assert!(runs[id] >= 2, "job {id} held by the killed node ran as attempt {}", runs[id]);
    }
    assert_eq!(b.buried("work").unwrap(), 0);
    a.shutdown();
    b.shutdown();
}

#[test]
fn a_server_restart_loses_nothing_acknowledged() {
    let Some(mut srv) = own_nats("restart") else { return };
    let cfg = QueueConfig::default().ttr(Duration::from_secs(30));
    let a = Node::connect(srv.options().name("a")).unwrap();
    a.declare("q", cfg.clone()).unwrap();
    let before = (0..50).map(|i| Put::new("q", vec![i as u8])).collect();
    let mut acked: BTreeSet<u64> =
        a.put_batch(before).unwrap().into_iter().map(|r| queued(r.unwrap())).collect();

    srv.server().kill();
    srv.server().launch();

    // The node reconnects by itself; puts succeed again once it has.
    let mut after = None;
    wait_until(LIMIT, "a put to succeed after the restart", || {
        match a.put(Put::new("q", b"after".to_vec()).unique_key("after-restart")) {
            Ok(r) => {
                after = Some(r);
                true
            }
            Err(_) => false,
        }
    });
    match after.unwrap() {
        Receipt::Queued { seq, .. } | Receipt::Duplicate { seq, .. } => acked.insert(seq),
        other => panic!("{other:?}"),
    };
    let b = Node::connect(srv.options().name("b")).unwrap();
    b.declare("q", cfg).unwrap();
    let runs: Arc<Mutex<BTreeSet<u64>>> = Arc::default();
    let r2 = runs.clone();
    let pool = b
        .work("q", 1, move |job| {
            r2.lock().unwrap().insert(job.id());
            Outcome::Done
        })
        .unwrap();
    wait_until(LIMIT, "every acknowledged job to run", || {
        runs.lock().unwrap().len() >= acked.len()
    });
    pool.stop();
    assert_eq!(*runs.lock().unwrap(), acked);
    a.shutdown();
    b.shutdown();
}

/// Run as a child process by `a_delayed_job_survives_the_node_that_put_it`:
/// puts one delayed job, says how it was placed, waits to be killed.
#[test]
fn child_node_putting_a_delayed_job() {
    let (Ok(url), Ok(ns), Ok(dir)) = (
        std::env::var("SPINDLE_JS_HOLD_URL"),
        std::env::var("SPINDLE_JS_HOLD_NS"),
        std::env::var("SPINDLE_JS_HOLD_DIR"),
    ) else {
        return; // Not a child: nothing to do.
    };
    let opts = spindle_jetstream::NodeOptions::new(url).namespace(ns).hold_dir(dir);
    let node = Node::connect(opts).unwrap();
    let r =
        node.put(Put::new("later", b"survivor".to_vec()).delay(Duration::from_secs(2))).unwrap();
    let how = match r {
        Receipt::Held { .. } => "HELD",
        Receipt::Scheduled { .. } => "SCHEDULED",
        other => panic!("{other:?}"),
    };
    println!("PUT {how}");
    loop {
        std::thread::park();
    }
}

#[test]
fn a_delayed_job_survives_the_node_that_put_it_being_killed() {
    let Some(srv) = nats("delayed_kill9") else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_node_putting_a_delayed_job", "--nocapture", "--test-threads=1"])
        .env("SPINDLE_JS_HOLD_URL", &srv.url)
        .env("SPINDLE_JS_HOLD_NS", &srv.ns)
        .env("SPINDLE_JS_HOLD_DIR", dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut how = String::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some(at) = line.find("PUT ") {
            how = line[at + 4..].trim().to_owned();
            break;
        }
    }
    child.kill().unwrap(); // SIGKILL, before the job is due
    child.wait().unwrap();

    // On 2.12+ the server holds the schedule; before, the node restarted
    // on the same hold directory publishes what the dead one held.
    let node = Node::connect(srv.options().hold_dir(dir.path())).unwrap();
    let expect = if node.features().schedule_at { "SCHEDULED" } else { "HELD" };
    assert_eq!(how, expect, "on {}", node.server_version());
    node.declare("later", QueueConfig::default()).unwrap();
    let mut w = node.worker("later", 1).unwrap();
    let lease = w.reserve(LIMIT).unwrap().expect("the delayed job after the kill");
    assert_eq!(lease.payload(), b"survivor");
    lease.complete_confirmed().unwrap();
    assert!(w.reserve(Duration::from_millis(200)).unwrap().is_none(), "ran twice");
    assert_eq!(node.held(), 0);
    node.shutdown();
}
