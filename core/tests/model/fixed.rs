//! Fixed sequences through the model, and the regressions it found.

use super::*;

fn put_op(q: usize, pri: usize, ttr_s: u32) -> Op {
    Op::Put {
        q,
        pri,
        delay_ms: 0,
        ttr_s,
        max_attempts: 0,
        key: None,
        payload: vec![pri as u8; 3],
        owned: false,
        deadline_ms: None,
    }
}

fn release_op(pri: usize) -> Op {
    Op::Release { job: Target::Reserved(0), who: Who::Owner, tok: Tok::Current, pri, delay_ms: 0 }
}

#[test]
fn a_ready_heap_of_mostly_stale_entries_is_compacted_and_keeps_its_order() {
    // Ten jobs released into the re-ready heap, then the one at its bottom
    // taken out and put back 80 times: each leaves a stale entry behind,
    // past the 64 entries at which the heap is compacted.
    let mut ops: Vec<Op> = (0..10).map(|_| put_op(0, 1, 0)).collect();
    ops.extend((0..10).map(|_| Op::Reserve { q: 0, holder: 0 }));
    ops.extend((0..10).map(|_| release_op(1)));
    for _ in 0..80 {
        ops.push(Op::ReserveId { job: Target::Any(9), holder: 1 });
        ops.push(release_op(1));
    }
    ops.extend((0..10).map(|_| Op::Reserve { q: 0, holder: 2 }));
    run(false, &ops);
}

#[test]
fn a_lease_touched_a_thousand_times_expires_once_and_its_stale_entries_go() {
    // Over 1,024 lease entries for one job (the lease heap is compacted
    // when a reservation ends), then a second job's lease expires on time.
    let mut ops = vec![put_op(0, 0, 3), put_op(0, 0, 2), Op::Reserve { q: 0, holder: 0 }];
    for _ in 0..1100 {
        ops.push(Op::Advance { ms: 1 });
        ops.push(Op::Touch { job: Target::Reserved(0), who: Who::Owner, tok: Tok::Current });
    }
    ops.push(Op::Complete { job: Target::Reserved(0), who: Who::Owner, tok: Tok::None });
    ops.push(Op::Reserve { q: 0, holder: 1 });
    ops.push(Op::Advance { ms: 2500 });
    run(false, &ops);
}

#[test]
fn many_priorities_come_and_go_in_order() {
    // More than 16 priorities in one queue (empty per-priority FIFOs are
    // then dropped), interleaved with older ones coming back.
    let mut ops = Vec::new();
    for round in 0..3 {
        ops.extend((0..12).map(|i| put_op(0, 5 + (i * 7 + round * 3) % 30, 0)));
        ops.extend((0..6).map(|_| Op::Reserve { q: 0, holder: 0 }));
        ops.extend((0..3).map(|i| release_op(5 + (i + round) % 30)));
        ops.extend((0..10).map(|_| Op::Reserve { q: 0, holder: 1 }));
        ops.push(Op::CompleteMany { holder: 0, extra: None });
        ops.push(Op::CompleteMany { holder: 1, extra: None });
    }
    run(false, &ops);
}

// ----------------------------------------------- regressions the model found

#[test]
fn recovery_reports_the_records_it_replayed() {
    let now = T0;
    let mut t = Table::new(Config::default());
    let mut log = Records::new();
    let q = t.queue("q").unwrap();
    t.put(now, 1, q, &PutSpec::default(), b"x", &mut log).unwrap();
    t.reserve(now, q, 0, &mut log).unwrap();
    let mut r = Table::new(Config::default());
    assert_eq!(r.replay(log.bytes()).unwrap(), 2);
    let got = r.finish_replay(now, &mut Records::new());
    assert_eq!(got, Recovered { records: 2, jobs: 1, interrupted: 1, poisoned: 0 });
}

#[test]
fn a_long_burial_reason_is_cut_at_a_character() {
    // 4,098 bytes of 3-byte characters: the last 4,096 bytes start inside
    // one. The job keeps the longest end that fits, whole characters only.
    let mut t = Table::new(Config::default());
    let mut log = Records::new();
    let q = t.queue("q").unwrap();
    t.put(T0, 1, q, &PutSpec::default(), b"x", &mut log).unwrap();
    t.reserve(T0, q, 0, &mut log).unwrap();
    let reason = "€".repeat(1366);
    t.bury(1, By::holder(0), 0, Some(&reason), &mut log).unwrap();
    assert_eq!(t.job(1).unwrap().error, Some("€".repeat(1365).as_str()));
}

#[test]
fn a_snapshot_of_a_running_job_replays_its_reservations_once() {
    let mut t = Table::new(Config::default());
    let mut log = Records::new();
    let q = t.queue("q").unwrap();
    t.put(T0, 1, q, &PutSpec::default(), b"x", &mut log).unwrap();
    t.reserve(T0, q, 0, &mut log).unwrap();
    t.release(T0, 1, By::holder(0), 0, Duration::ZERO, &mut log).unwrap();
    t.reserve(T0, q, 0, &mut log).unwrap();
    let mut snap = Records::new();
    t.snapshot(&mut snap);
    let mut r = Table::new(Config::default());
    r.replay(snap.bytes()).unwrap();
    r.finish_replay(T0, &mut Records::new());
    let j = r.job(1).unwrap();
    assert_eq!(j.state, State::Ready);
    assert_eq!((j.counts.reserves, j.counts.releases, j.counts.interrupted), (2, 1, 1));
}

#[test]
fn a_duplicate_put_returns_its_job_even_when_the_table_is_full() {
    let mut t = Table::new(Config { max_jobs: 1, ..Config::default() });
    let mut log = Records::new();
    let q = t.queue("q").unwrap();
    let spec = PutSpec { unique: Some("k"), ..PutSpec::default() };
    assert_eq!(t.put(T0, 1, q, &spec, b"x", &mut log), Ok(Put::Created(1)));
    assert_eq!(t.put(T0, 2, q, &spec, b"x", &mut log), Ok(Put::Duplicate(1)));
    assert_eq!(
        t.put(T0, 3, q, &PutSpec::default(), b"x", &mut log),
        Err(PutError::Full { what: "jobs", limit: 1 })
    );
}
