//! Job semantics on a real nats-server: retries with backoff, burial after
//! the last attempt (failed, or its lease expired), unique keys, delayed
//! jobs (a server-side `@at` schedule on 2.12+, held by the node before),
//! touch, lag, and features the server lacks refused with a clear error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use spindle_jetstream::{Error, Failed, Node, Put, QueueConfig, Receipt};
use std::time::{Duration, Instant};
use support::{nats, wait_until};

const LIMIT: Duration = Duration::from_secs(30);

fn fast_retries() -> QueueConfig {
    QueueConfig::default()
        .ttr(Duration::from_secs(30))
        .max_attempts(3)
        .backoff(Duration::from_millis(50), Duration::from_millis(200))
}

#[test]
fn failures_retry_with_backoff_then_bury() {
    let Some(srv) = nats("retries") else { return };
    let node = Node::connect(srv.options()).unwrap();
    node.declare("flaky", fast_retries()).unwrap();
    let Receipt::Queued { seq, .. } = node.put(Put::new("flaky", b"x".to_vec())).unwrap() else {
        panic!("not queued")
    };
    let mut w = node.worker("flaky", 1).unwrap();
    let mut attempts = Vec::new();
    loop {
        let lease = w.reserve(LIMIT).unwrap().expect("a delivery");
        assert_eq!(lease.id(), seq);
        attempts.push(lease.attempt());
        match lease.fail("boom").unwrap() {
            Failed::Retrying(d) => {
                // The backoff doubles: base 50 ms (0.5-1x jitter), cap 200.
                let n = attempts.len() as u32;
                let full =
                    Duration::from_millis(50 * (1 << (n - 1))).min(Duration::from_millis(200));
                assert!(d <= full && d >= full / 2, "attempt {n}: backoff {d:?}");
            }
            Failed::Buried => break,
        }
    }
    assert_eq!(attempts, [1, 2, 3]);
    wait_until(LIMIT, "the dead letter", || node.buried("flaky").unwrap() == 1);
    wait_until(LIMIT, "the queue to drain", || node.lag("flaky").unwrap().backlog() == 0);
    node.shutdown();
}

#[test]
fn a_lease_expiring_on_the_last_attempt_is_buried_not_lost() {
    let Some(srv) = nats("expiry_bury") else { return };
    let node = Node::connect(srv.options()).unwrap();
    let cfg = QueueConfig::default().ttr(Duration::from_millis(300)).max_attempts(1);
    node.declare("stuck", cfg).unwrap();
    node.put(Put::new("stuck", b"x".to_vec())).unwrap();
    let mut w = node.worker("stuck", 1).unwrap();
    let lease = w.reserve(LIMIT).unwrap().expect("a delivery");
    assert_eq!(lease.attempt(), 1);
    // As if the worker died: nothing settles or releases it (a dropped
    // lease would be released at once); it expires after its TTR.
    std::mem::forget(lease);
    // The node's dead-letter step buries the extra delivery (MaxDeliver is
    // attempts + 1); JetStream alone would keep the message for good.
    wait_until(LIMIT, "the expired job to be buried", || node.buried("stuck").unwrap() == 1);
    wait_until(LIMIT, "the queue to drain", || node.lag("stuck").unwrap().backlog() == 0);
    assert!(w.reserve(Duration::from_millis(50)).unwrap().is_none());
    node.shutdown();
}

#[test]
fn touch_keeps_a_lease_past_its_ttr() {
    let Some(srv) = nats("touch") else { return };
    let node = Node::connect(srv.options()).unwrap();
    node.declare("long", QueueConfig::default().ttr(Duration::from_millis(1500))).unwrap();
    node.put(Put::new("long", b"x".to_vec())).unwrap();
    let mut w = node.worker("long", 1).unwrap();
    let lease = w.reserve(LIMIT).unwrap().expect("a delivery");
    // Touch for three TTRs; the job is never redelivered meanwhile (the
    // pump would hand a redelivery to this worker: nothing else leases).
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(1500) {
        lease.touch().unwrap();
        assert!(
            w.reserve(Duration::from_millis(150)).unwrap().is_none(),
            "redelivered while touched"
        );
    }
    lease.complete_confirmed().unwrap();
    wait_until(LIMIT, "the queue to drain", || node.lag("long").unwrap().backlog() == 0);
    node.shutdown();
}

#[test]
fn a_unique_key_is_refused_as_a_duplicate_with_the_existing_id() {
    let Some(srv) = nats("unique") else { return };
    let a = Node::connect(srv.options()).unwrap();
    let b = Node::connect(srv.options()).unwrap();
    a.declare("mail", QueueConfig::default()).unwrap();
    b.declare("mail", QueueConfig::default()).unwrap();
    let first = a.put(Put::new("mail", b"1".to_vec()).unique_key("user-7")).unwrap();
    let Receipt::Queued { seq, msg_id } = first else { panic!("{first:?}") };
    // The same key from another node is a duplicate, with the first id.
    let again = b.put(Put::new("mail", b"2".to_vec()).unique_key("user-7")).unwrap();
    assert_eq!(again, Receipt::Duplicate { seq, msg_id: msg_id.clone() });
    // Keys are per queue, and a batch reports each job.
    b.declare("sms", QueueConfig::default()).unwrap();
    let batch = b
        .put_batch(vec![
            Put::new("sms", b"3".to_vec()).unique_key("user-7"),
            Put::new("mail", b"4".to_vec()).unique_key("user-7"),
        ])
        .unwrap();
    assert!(matches!(batch[0], Ok(Receipt::Queued { .. })), "{batch:?}");
    assert!(matches!(batch[1], Ok(Receipt::Duplicate { seq: s, .. }) if s == seq), "{batch:?}");
    assert_eq!(a.lag("mail").unwrap().pending, 1);
    // A producer-only node puts without declaring (it need not know TTR).
    let c = Node::connect(srv.options()).unwrap();
    let dup = c.put(Put::new("mail", b"5".to_vec()).unique_key("user-7")).unwrap();
    assert!(matches!(dup, Receipt::Duplicate { seq: s, .. } if s == seq), "{dup:?}");
    assert!(matches!(c.put(Put::new("-bad", b"".to_vec())), Err(Error::InvalidName { .. })));
    let bad_key = c.put(Put::new("mail", b"".to_vec()).unique_key("a\r\nb"));
    assert!(matches!(bad_key, Err(Error::InvalidName { what: "unique key", .. })), "{bad_key:?}");
    c.shutdown();
    a.shutdown();
    b.shutdown();
}

#[test]
fn a_delayed_job_runs_once_when_due_on_any_server() {
    let Some(srv) = nats("delayed") else { return };
    let node = Node::connect(srv.options()).unwrap();
    node.declare("later", QueueConfig::default()).unwrap();
    let delay = Duration::from_millis(1200);
    let put_at = Instant::now();
    let r = node.put(Put::new("later", b"due".to_vec()).delay(delay)).unwrap();
    if node.features().schedule_at {
        assert!(matches!(r, Receipt::Scheduled { .. }), "{r:?} on {}", node.server_version());
    } else {
        assert!(matches!(r, Receipt::Held { .. }), "{r:?} on {}", node.server_version());
        assert_eq!(node.held(), 1);
    }
    let mut w = node.worker("later", 1).unwrap();
    let lease = w.reserve(LIMIT).unwrap().expect("the delayed job");
    assert!(put_at.elapsed() >= delay, "ran before it was due");
    assert_eq!(lease.payload(), b"due");
    assert_eq!(lease.msg_id(), Some(r.msg_id()));
    lease.complete_confirmed().unwrap();
    assert!(w.reserve(Duration::from_millis(100)).unwrap().is_none(), "ran twice");
    assert_eq!(node.held(), 0);
    node.shutdown();
}

#[test]
fn periodic_jobs_need_a_server_with_schedules_and_say_so() {
    let Some(srv) = nats("periodic") else { return };
    let node = Node::connect(srv.options()).unwrap();
    node.declare("tick", QueueConfig::default()).unwrap();
    let r = node.schedule_every("tick", "heartbeat", Duration::from_secs(1), b"t".to_vec());
    if node.features().schedule_every {
        r.unwrap();
        let mut w = node.worker("tick", 4).unwrap();
        for _ in 0..2 {
            w.reserve(LIMIT).unwrap().expect("a tick").complete().unwrap();
        }
    } else {
        let e = r.unwrap_err();
        assert!(matches!(e, Error::Unsupported { needs: "2.14", .. }), "{e:?}");
        let msg = e.to_string();
        assert!(msg.contains("needs nats-server 2.14"), "{msg}");
        assert!(msg.contains(&node.server_version().to_string()), "{msg}");
    }
    node.shutdown();
}

#[test]
fn cron_jobs_in_a_time_zone_run_on_current_servers_and_are_refused_on_old_ones() {
    let Some(srv) = nats("cron") else { return };
    let node = Node::connect(srv.options()).unwrap();
    node.declare("cron", QueueConfig::default()).unwrap();
    // Checked here, before any server sees it.
    let e = node.schedule_cron("cron", "bad", "61 * * * *", "UTC", b"x".to_vec()).unwrap_err();
    assert!(
        matches!(e, Error::InvalidName { what: "cron schedule", .. } | Error::Unsupported { .. }),
        "{e:?}"
    );
    let r =
        node.schedule_cron("cron", "each-second", "* * * * * *", "Europe/Stockholm", b"c".to_vec());
    if node.features().schedule_every {
        r.unwrap();
        let e =
            node.schedule_cron("cron", "z", "* * * * *", "Mars/Base", b"x".to_vec()).unwrap_err();
        assert!(e.to_string().contains("time zone"), "{e}");
        let mut w = node.worker("cron", 4).unwrap();
        for _ in 0..2 {
            let lease = w.reserve(LIMIT).unwrap().expect("a cron tick");
            assert_eq!(lease.payload(), b"c");
            lease.complete().unwrap();
        }
    } else {
        let e = r.unwrap_err();
        assert!(matches!(e, Error::Unsupported { needs: "2.14", .. }), "{e:?}");
    }
    node.shutdown();
}

#[test]
fn a_queue_declared_with_other_settings_is_refused_after_read_back() {
    let Some(srv) = nats("readback") else { return };
    let a = Node::connect(srv.options()).unwrap();
    a.declare("q", QueueConfig::default().ttr(Duration::from_secs(10))).unwrap();
    let b = Node::connect(srv.options()).unwrap();
    let e = b.declare("q", QueueConfig::default().ttr(Duration::from_secs(20))).unwrap_err();
    assert!(matches!(e, Error::SettingMismatch { setting: "ack_wait (TTR)", .. }), "{e:?}");
    assert!(matches!(b.worker("q", 1).unwrap_err(), Error::Undeclared(_)));
    a.shutdown();
    b.shutdown();
}

#[test]
fn an_unreachable_server_is_a_clear_error() {
    // A port nothing listens on (bound, then released).
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let opts = spindle_jetstream::NodeOptions::new(format!("nats://127.0.0.1:{port}"))
        .connect_timeout(Duration::from_millis(500));
    let e = Node::connect(opts).unwrap_err();
    assert!(matches!(e, Error::Connect { .. }), "{e:?}");
}

#[test]
fn a_job_past_its_deadline_is_never_handed_out() {
    let Some(srv) = nats("expiry") else { return };
    let node = Node::connect(srv.options()).unwrap();
    node.declare("fresh", QueueConfig::default()).unwrap();
    let life = Duration::from_millis(300);
    let put_at = std::time::SystemTime::now();
    node.put(Put::new("fresh", b"stale".to_vec()).expires_in(life)).unwrap();
    node.put(Put::new("fresh", b"kept".to_vec()).expires_in(Duration::from_secs(600))).unwrap();
    // No worker until the first job's deadline has passed (waiting for the
    // clock, not for another thread).
    wait_until(LIMIT, "the deadline to pass", || {
        put_at.elapsed().is_ok_and(|e| e > life + Duration::from_millis(50))
    });
    let mut w = node.worker("fresh", 4).unwrap();
    let lease = w.reserve(LIMIT).unwrap().expect("the job with time left");
    assert_eq!(lease.payload(), b"kept");
    lease.complete_confirmed().unwrap();
    // The expired one is gone: dropped by the node at delivery (2.9.10) or
    // removed by the server's Nats-TTL (2.11+); either way never handed out.
    wait_until(LIMIT, "the queue to drain", || node.lag("fresh").unwrap().backlog() == 0);
    assert!(
        w.reserve(Duration::from_millis(100)).unwrap().is_none(),
        "an expired job was handed out"
    );
    assert_eq!(node.buried("fresh").unwrap(), 0);
    node.shutdown();
}

#[test]
fn workers_and_leases_say_closed_after_the_node_shuts_down() {
    let Some(srv) = nats("closed") else { return };
    let node = Node::connect(srv.options()).unwrap();
    node.declare("q", QueueConfig::default()).unwrap();
    node.put(Put::new("q", b"x".to_vec())).unwrap();
    let mut w = node.worker("q", 1).unwrap();
    let lease = w.reserve(LIMIT).unwrap().expect("a delivery");
    node.shutdown();
    assert!(matches!(lease.touch(), Err(Error::Closed)));
    assert!(matches!(lease.complete_confirmed(), Err(Error::Closed)));
    assert!(matches!(w.reserve(Duration::from_millis(10)), Err(Error::Closed)));
}

#[test]
fn an_elastic_pool_grows_on_a_backlog_publishes_desired_workers_and_shrinks_back() {
    use spindle_jetstream::ElasticOptions;
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};
    let Some(srv) = nats("elastic") else { return };
    let node = Node::connect(srv.options()).unwrap();
    node.declare("batch", QueueConfig::default()).unwrap();
    // Watch the desired_workers reports (core NATS, not stored).
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut sub = rt.block_on(async {
        let c = async_nats::connect(srv.url.as_str()).await.unwrap();
        let sub = c.subscribe(format!("spindle.{}.desired.batch", srv.ns)).await.unwrap();
        c.flush().await.unwrap();
        (c, sub)
    });
    let jobs = (0..60).map(|i| Put::new("batch", vec![i as u8])).collect();
    node.put_batch(jobs).unwrap();
    let runs: Arc<Mutex<BTreeMap<u64, u32>>> = Arc::default();
    let r2 = runs.clone();
    let opts = ElasticOptions::default()
        .threads(1, 4)
        .tick(Duration::from_millis(20))
        .drain_within(Duration::from_millis(200))
        .stabilise(3);
    let pool = node
        .work_elastic("batch", opts, move |job| {
            // 20 ms of "work" per job: one thread needs 1.2 s for all 60.
            std::thread::sleep(Duration::from_millis(20));
            *r2.lock().unwrap().entry(job.id()).or_default() += 1;
            spindle_engine::Outcome::Done
        })
        .unwrap();
    wait_until(LIMIT, "the pool to grow past one thread", || pool.active() > 1);
    wait_until(LIMIT, "all 60 jobs to run", || runs.lock().unwrap().len() == 60);
    wait_until(LIMIT, "the pool to shrink back to one thread", || pool.active() == 1);
    let report = rt.block_on(async {
        use futures_util::StreamExt;
        tokio::time::timeout(LIMIT, sub.1.next()).await.unwrap().unwrap()
    });
    let v: serde_json::Value = serde_json::from_slice(&report.payload).unwrap();
    assert_eq!(v["queue"], "batch", "{v}");
    assert!(v["desired_workers"].is_u64(), "{v}");
    pool.stop();
    let runs = runs.lock().unwrap();
    assert!(runs.values().all(|&n| n == 1), "a job ran twice: {runs:?}");
    node.shutdown();
}
