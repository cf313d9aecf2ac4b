//! Priority bands on a real nats-server: strict band order when every band
//! has jobs, aging that lets a less urgent band through under sustained
//! load from a more urgent one, a producer that never declared the queue
//! finding its bands on the server, and the bands read back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use spindle_jetstream::{Error, Node, Put, QueueConfig, Worker};
use std::time::Duration;
use support::nats;

const LIMIT: Duration = Duration::from_secs(30);

/// Three bands: 0-1023, 1024-65535, 65536 and up.
fn three_bands() -> QueueConfig {
    QueueConfig::default().priority_bands(&[1024, 65_536])
}

fn band(pri: u32) -> usize {
    match pri {
        0..=1023 => 0,
        1024..=65_535 => 1,
        _ => 2,
    }
}

/// Reserves and completes `n` jobs one at a time: their (band, payload).
fn drain(w: &mut Worker, n: usize) -> Vec<(usize, String)> {
    (0..n)
        .map(|_| {
            let l = w.reserve(LIMIT).unwrap().expect("a job within the limit");
            let got = (band(l.priority()), String::from_utf8(l.payload().to_vec()).unwrap());
            l.complete().unwrap();
            got
        })
        .collect()
}

#[test]
fn every_band_has_jobs_so_they_run_strictly_by_band_in_put_order() {
    let Some(srv) = nats("prio_strict") else { return };
    let node = Node::connect(srv.options()).unwrap();
    node.declare("jobs", three_bands().aging(0)).unwrap();
    // Interleaved: the least urgent first, so stream order is not band order.
    let mut puts = Vec::new();
    for i in 0..10 {
        for pri in [1 << 20, 5000, 7] {
            puts.push(Put::new("jobs", format!("{}-{i}", band(pri))).priority(pri));
        }
    }
    for r in node.put_batch(puts).unwrap() {
        r.unwrap();
    }
    let mut w = node.worker("jobs", 1).unwrap();
    let got = drain(&mut w, 30);
    let want: Vec<(usize, String)> =
        (0..3).flat_map(|b| (0..10).map(move |i| (b, format!("{b}-{i}")))).collect();
    assert_eq!(got, want);
    assert_eq!(node.lag("jobs").unwrap().backlog(), 0);
    node.shutdown();
}

#[test]
fn aging_lets_a_less_urgent_band_through_under_sustained_urgent_load() {
    let Some(srv) = nats("prio_aging") else { return };
    let node = Node::connect(srv.options()).unwrap();
    let cfg = QueueConfig::default().priority_bands(&[1024]).aging(4);
    node.declare("jobs", cfg).unwrap();
    let mut puts: Vec<Put> =
        (0..3).map(|i| Put::new("jobs", format!("low-{i}")).priority(100_000)).collect();
    puts.extend((0..40).map(|i| Put::new("jobs", format!("high-{i}")).priority(0)));
    for r in node.put_batch(puts).unwrap() {
        r.unwrap();
    }
    let mut w = node.worker("jobs", 1).unwrap();
    let first = drain(&mut w, 15);
    // After every 4 urgent leases the waiting band's next job goes first,
    // while 25 urgent jobs are still queued.
    let low: Vec<usize> =
        first.iter().enumerate().filter(|(_, (b, _))| *b > 0).map(|(i, _)| i).collect();
    assert_eq!(low, [4, 9, 14], "leases: {first:?}");
    let rest = drain(&mut w, 28);
    assert!(rest.iter().all(|(b, _)| *b == 0));
    // With strict bands (aging 0) on another queue the less urgent band waits.
    node.declare("strict", QueueConfig::default().priority_bands(&[1024]).aging(0)).unwrap();
    let mut puts: Vec<Put> =
        (0..3).map(|i| Put::new("strict", format!("low-{i}")).priority(100_000)).collect();
    puts.extend((0..20).map(|i| Put::new("strict", format!("high-{i}")).priority(0)));
    for r in node.put_batch(puts).unwrap() {
        r.unwrap();
    }
    let mut w = node.worker("strict", 1).unwrap();
    let got = drain(&mut w, 23);
    assert!(got[..20].iter().all(|(b, _)| *b == 0), "leases: {got:?}");
    node.shutdown();
}

#[test]
fn a_producer_finds_the_bands_on_the_server_and_an_idle_worker_wakes_by_band() {
    let Some(srv) = nats("prio_remote") else { return };
    let worker_node = Node::connect(srv.options()).unwrap();
    let producer = Node::connect(srv.options()).unwrap();
    // No node declared it yet: a priority cannot choose a band.
    match producer.put(Put::new("later", b"x".to_vec()).priority(5)) {
        Err(Error::NoBands(q)) => assert_eq!(q, "later"),
        other => panic!("expected NoBands, got {other:?}"),
    }
    worker_node.declare("jobs", three_bands()).unwrap();
    let mut w = worker_node.worker("jobs", 1).unwrap();
    // The worker is idle on empty bands; jobs put on another node (which
    // never declared the queue) wake it, each from its own band.
    producer.put(Put::new("jobs", b"mid".to_vec())).unwrap(); // default 1024: band 1
    let l = w.reserve(LIMIT).unwrap().expect("the default-priority job");
    assert_eq!((l.payload(), l.priority()), (&b"mid"[..], 1024));
    l.complete().unwrap();
    producer.put(Put::new("jobs", b"low".to_vec()).priority(u32::MAX)).unwrap();
    let l = w.reserve(LIMIT).unwrap().expect("the least urgent job");
    assert_eq!((l.payload(), l.priority()), (&b"low"[..], u32::MAX));
    l.complete().unwrap();
    // Another node declaring other bands for the queue is refused after
    // reading the consumer back.
    match producer.declare("jobs", QueueConfig::default().priority_bands(&[10])) {
        Err(Error::SettingMismatch { setting, .. }) => {
            assert_eq!(setting, "description (priority bands)")
        }
        other => panic!("expected SettingMismatch, got {other:?}"),
    }
    // And bounds that are not ascending never reach the server.
    match producer.declare("other", QueueConfig::default().priority_bands(&[9, 3])) {
        Err(Error::InvalidConfig { setting, .. }) => assert_eq!(setting, "priority_bands"),
        other => panic!("expected InvalidConfig, got {other:?}"),
    }
    worker_node.shutdown();
    producer.shutdown();
}

#[test]
fn banded_jobs_put_on_one_node_run_exactly_once_across_two_pools() {
    use spindle_engine::Outcome;
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};
    let Some(srv) = nats("prio_pools") else { return };
    let producer = Node::connect(srv.options()).unwrap();
    let a = Node::connect(srv.options().prefetch(8)).unwrap();
    let b = Node::connect(srv.options().prefetch(8)).unwrap();
    for n in [&a, &b] {
        n.declare("jobs", three_bands()).unwrap();
    }
    let runs: Arc<Mutex<HashMap<u64, u32>>> = Arc::default();
    let pools: Vec<_> = [&a, &b]
        .into_iter()
        .map(|n| {
            let runs = runs.clone();
            n.work("jobs", 2, move |l| {
                *runs.lock().unwrap().entry(l.id()).or_default() += 1;
                Outcome::Done
            })
            .unwrap()
        })
        .collect();
    let puts: Vec<Put> = (0..150u32)
        .map(|i| Put::new("jobs", i.to_string()).priority(i.wrapping_mul(2_654_435_761) >> 8))
        .collect();
    let ids: Vec<u64> = producer
        .put_batch(puts)
        .unwrap()
        .into_iter()
        .map(|r| match r.unwrap() {
            spindle_jetstream::Receipt::Queued { seq, .. } => seq,
            other => panic!("not queued: {other:?}"),
        })
        .collect();
    support::wait_until(LIMIT, "every job to run", || runs.lock().unwrap().len() == ids.len());
    support::wait_until(LIMIT, "the bands to drain", || a.lag("jobs").unwrap().backlog() == 0);
    for p in pools {
        p.stop();
    }
    let runs = runs.lock().unwrap();
    for id in &ids {
        assert_eq!(runs.get(id), Some(&1), "job {id} ran {:?} times", runs.get(id));
    }
    for n in [a, b, producer] {
        n.shutdown();
    }
}

#[test]
fn an_idle_banded_worker_works_on_after_a_server_restart() {
    let Some(mut srv) = support::own_nats("prio_restart") else { return };
    let node = Node::connect(srv.options()).unwrap();
    node.declare("jobs", three_bands()).unwrap();
    let mut w = node.worker("jobs", 1).unwrap();
    // Idle: standing pulls on every band, which the restart forgets.
    assert!(w.reserve(Duration::from_millis(200)).unwrap().is_none());
    srv.server().kill();
    srv.server().launch();
    support::wait_until(LIMIT, "a put to succeed after the restart", || {
        node.put(Put::new("jobs", b"after".to_vec()).priority(70_000).unique_key("a")).is_ok()
    });
    node.put(Put::new("jobs", b"urgent".to_vec()).priority(1)).unwrap();
    let got = drain(&mut w, 2);
    let bands: Vec<usize> = got.iter().map(|(b, _)| *b).collect();
    // Both run; the order depends on when the pump's pulls were made again.
    assert!(bands.contains(&0) && bands.contains(&2), "{got:?}");
    node.shutdown();
}

#[test]
fn a_stopped_banded_worker_releases_the_deliveries_it_holds_at_once() {
    let Some(srv) = nats("prio_release") else { return };
    let node = Node::connect(srv.options()).unwrap();
    // A TTR far past the test's limit: only a release brings jobs back.
    node.declare("jobs", three_bands().ttr(Duration::from_secs(600))).unwrap();
    let w = node.worker("jobs", 1).unwrap();
    support::wait_until(LIMIT, "a standing pull on every band", || {
        node.lag("jobs").unwrap().waiting >= 1
    });
    // One job per band: each standing pull delivers one; the worker's
    // channel takes one lease, the pump holds the other two.
    for pri in [1, 5000, 1 << 20] {
        node.put(Put::new("jobs", pri.to_string()).priority(pri)).unwrap();
    }
    support::wait_until(LIMIT, "all three delivered to the node", || {
        node.lag("jobs").unwrap().leased == 3
    });
    drop(w);
    // Released (Nak'd) at once: the next worker gets all three, in band
    // order, long before their TTR.
    let mut w = node.worker("jobs", 1).unwrap();
    let got: Vec<usize> = drain(&mut w, 3).into_iter().map(|(b, _)| b).collect();
    assert_eq!(got, [0, 1, 2]);
    node.shutdown();
}
