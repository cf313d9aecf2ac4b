//! The library's builder option for distributed queues
//! (`spindle::distributed`) against a real nats-server (found as
//! `jetstream/tests/support/mod.rs` says; skipped, saying so, when none is
//! configured): queues marked distributed are shared by two engines
//! through the server, a job submitted on one runs once on the other with
//! the same handler type as a local queue, and local queues stay local.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../jetstream/tests/support/mod.rs"]
mod support;

use spindle::distributed::{EngineBuilderExt, Error, Spindle, Submitted};
use spindle::jetstream::{QueueConfig, Receipt};
use spindle::{Durability, Engine, Job, JobRef, Outcome};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(30);

fn node(srv: &support::Nats) -> Spindle {
    Engine::builder()
        .durability(Durability::Memory)
        .shards(1)
        .jetstream(srv.options())
        .distributed("shared", QueueConfig::default().priority_bands(&[1024]).max_attempts(3))
        .threads_per_queue(2)
        .build()
        .unwrap()
}

type Seen = Arc<Mutex<HashMap<String, (u32, u32)>>>;

/// A handler (the engine's `Handler`) counting runs per payload and
/// keeping the priority it saw.
fn counting(seen: &Seen) -> impl Fn(&JobRef<'_>) -> Outcome + Send + Sync + 'static {
    let seen = seen.clone();
    move |job: &JobRef<'_>| {
        let key = String::from_utf8(job.payload().to_vec()).unwrap();
        let mut s = seen.lock().unwrap();
        let e = s.entry(key).or_insert((0, job.priority()));
        e.0 += 1;
        Outcome::Done
    }
}

#[test]
fn distributed_queues_are_shared_through_the_server_and_local_ones_stay_local() {
    let Some(srv) = support::nats("builder") else { return };
    let a = node(&srv);
    let b = node(&srv);
    assert!(a.is_distributed("shared") && !a.is_distributed("local"));

    // Only B runs the shared queue; A submits to it.
    let on_b: Seen = Arc::default();
    b.register("shared", counting(&on_b)).unwrap();
    for i in 0..20u32 {
        let job = Job::new("shared", format!("s{i}")).priority(if i % 2 == 0 { 5 } else { 5000 });
        match a.submit(job).unwrap() {
            Submitted::Distributed(Receipt::Queued { .. }) => {}
            other => panic!("not queued on the server: {other:?}"),
        }
    }
    // A unique key is a duplicate across nodes.
    let first = a.submit(Job::new("shared", "u").unique_key("k")).unwrap();
    let again = b.submit(Job::new("shared", "u2").unique_key("k")).unwrap();
    let (Submitted::Distributed(Receipt::Queued { seq, .. }), Submitted::Distributed(dup)) =
        (&first, &again)
    else {
        panic!("{first:?} {again:?}")
    };
    assert_eq!(dup, &Receipt::Duplicate { seq: *seq, msg_id: dup.msg_id().to_owned() });

    // A local queue on A: the engine runs it, the server never sees it.
    let on_a: Seen = Arc::default();
    a.register("local", counting(&on_a)).unwrap();
    match a.submit(Job::new("local", "l0")).unwrap() {
        Submitted::Local(_) => {}
        other => panic!("not local: {other:?}"),
    }

    support::wait_until(LIMIT, "21 shared jobs on B", || on_b.lock().unwrap().len() == 21);
    support::wait_until(LIMIT, "the local job on A", || on_a.lock().unwrap().len() == 1);
    support::wait_until(LIMIT, "the shared queue to drain", || {
        a.node().lag("shared").unwrap().backlog() == 0
    });
    let on_b = on_b.lock().unwrap();
    for i in 0..20u32 {
        let want = if i % 2 == 0 { 5 } else { 5000 };
        assert_eq!(on_b.get(&format!("s{i}")), Some(&(1, want)), "job s{i}");
    }
    assert!(!on_b.contains_key("l0"));
    drop(on_b);

    // A job asking for attempts other than the queue's is refused, not
    // run with other attempts; the queue's own number is fine.
    match a.submit(Job::new("shared", "x").max_attempts(9)) {
        Err(Error::Unsupported { queue, .. }) => assert_eq!(queue, "shared"),
        other => panic!("expected Unsupported, got {other:?}"),
    }
    assert!(a.submit(Job::new("shared", "y").max_attempts(3)).is_ok());
    support::wait_until(LIMIT, "the last job", || drained(&b, "shared"));
    a.shutdown().unwrap();
    b.shutdown().unwrap();
}

/// Whether the queue drained (the last job ran).
fn drained(s: &Spindle, queue: &str) -> bool {
    s.node().lag(queue).unwrap().backlog() == 0
}
