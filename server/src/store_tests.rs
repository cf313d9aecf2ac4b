//! The daemon front-end's own behaviour over the job table: replies,
//! fencing, waiters, limits, the log (frames, compaction, recovery of this
//! version's records and of both older formats). The table's rules have
//! their own tests in `core/`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use crate::persist::{self, Counts as OldCounts, DRec, V1Rec, ST_BURIED, ST_READY};
use crate::proto::parse;
use spindle_core::compact::Pass;
use spindle_wal::{Wal, WalOptions};

pub(super) fn cfg() -> StoreConfig {
    StoreConfig {
        max_job_size: 65535,
        max_jobs: 1000,
        max_bytes: 1 << 20,
        segment_size: 64 << 10,
        latency_target: Duration::from_millis(100),
        version: "test".into(),
    }
}

fn big_cfg() -> StoreConfig {
    StoreConfig { max_jobs: 100_000, max_bytes: 64 << 20, max_job_size: 1 << 20, ..cfg() }
}

/// Runs one command line (with an optional body) and returns the reply.
pub(super) fn run(s: &mut Store, c: ConnId, line: &str, body: &[u8], now: Instant) -> String {
    let cmd = parse(line.as_bytes()).expect("command parses");
    let mut w = Vec::new();
    s.handle(c, cmd, body.to_vec(), now, &mut w);
    // The reactor writes the iteration's records before any reply goes.
    s.write_log();
    String::from_utf8_lossy(&w).into_owned()
}

fn state(s: &Store, id: u64) -> Option<State> {
    s.table.job(id).map(|j| j.state)
}

pub(super) fn open_log(dir: &std::path::Path) -> Log {
    let opts = WalOptions {
        shard: 0,
        segment_size: 64 << 10,
        sync: spindle_wal::SyncPolicy::Never,
        recovery: spindle_wal::RecoveryMode::Truncate,
        prepare_ahead: 1,
        ..WalOptions::default()
    };
    let (wal, _) = Wal::open(dir, opts).unwrap();
    Log::inline(wal)
}

fn reopen_with(s: &mut Store, dir: &std::path::Path, c: StoreConfig) -> Store {
    assert!(s.write_log());
    let l = s.log.take().unwrap();
    l.wal.shutdown().unwrap();
    drop(l);
    let t = Instant::now();
    let mut r = Store::new(c, Some(open_log(dir)), t);
    r.recover(t).unwrap();
    r.check();
    r
}

fn reopen(s: &mut Store, dir: &std::path::Path) -> Store {
    reopen_with(s, dir, cfg())
}

/// Runs a whole compaction pass now, whatever its trigger says: the cut
/// is the start of the newest segment.
fn compact_now(s: &mut Store) {
    let log = s.log.as_mut().unwrap();
    let cut = log.wal.segments().last().unwrap().0;
    log.pass = Some(Pass::new(&s.table, cut));
    while s.log.as_ref().unwrap().pass.is_some() {
        s.compact();
    }
}

#[test]
fn fail_backs_off_then_buries_with_the_error() {
    let t0 = Instant::now();
    let mut s = Store::new(cfg(), None, t0);
    s.connect(1);
    assert_eq!(run(&mut s, 1, "tube-config default 2 100 1000", b"", t0), "CONFIGURED\r\n");
    assert_eq!(run(&mut s, 1, "put 0 0 60 1", b"x", t0), "INSERTED 1\r\n");
    assert!(run(&mut s, 1, "reserve-with-timeout 0", b"", t0).starts_with("RESERVED 1 1"));
    let r = run(&mut s, 1, "fail 1 4", b"boom", t0);
    let parts: Vec<&str> = r.trim_end().split(' ').collect();
    assert_eq!(parts[0..2], ["FAILED", "1"]);
    let delay: u64 = parts[2].parse().unwrap();
    assert!((50..=100).contains(&delay), "100 ms with equal jitter, got {delay}");
    assert_eq!(run(&mut s, 1, "reserve-with-timeout 0", b"", t0), "TIMED_OUT\r\n");
    let t1 = t0 + Duration::from_millis(delay);
    s.tick(t1);
    assert!(run(&mut s, 1, "reserve-with-timeout 0", b"", t1).starts_with("RESERVED 1 1"));
    assert_eq!(run(&mut s, 1, "fail 1 5", b"boom2", t1), "FAILED-BURIED 2\r\n");
    let y = run(&mut s, 1, "stats-job-ext 1", b"", t1);
    assert!(y.contains("state: buried") && y.contains("last-error: \"boom2\""), "{y}");
    assert_eq!(run(&mut s, 1, "fail 1 1", b"x", t1), "NOT_FOUND\r\n");
}

#[test]
fn fenced_commands_need_the_current_lease() {
    let t0 = Instant::now();
    let sec = |x: f64| t0 + Duration::from_secs_f64(x);
    let mut s = Store::new(cfg(), None, t0);
    s.connect(1);
    s.connect(2);
    assert_eq!(run(&mut s, 1, "put 0 0 1 1", b"x", t0), "INSERTED 1\r\n");
    assert!(run(&mut s, 1, "reserve-with-timeout 0", b"", t0).starts_with("RESERVED 1 1"));
    assert_eq!(run(&mut s, 2, "lease 1", b"", t0), "NOT_FOUND\r\n");
    assert_eq!(run(&mut s, 1, "lease 1", b"", t0), "LEASED 1 1\r\n");
    // Another connection extends the lease with the token...
    assert_eq!(run(&mut s, 2, "touch-lease 1 1", b"", sec(0.9)), "TOUCHED\r\n");
    s.tick(sec(1.5));
    assert!(run(&mut s, 2, "stats-job 1", b"", sec(1.5)).contains("state: reserved"));
    // ...which then passes: the job is reserved again, by connection 2.
    s.tick(sec(2.0));
    assert!(run(&mut s, 2, "reserve-with-timeout 0", b"", sec(2.0)).starts_with("RESERVED 1"));
    assert_eq!(run(&mut s, 2, "lease 1", b"", sec(2.0)), "LEASED 1 2\r\n");
    // The first holder's token is stale for every fenced command.
    for cmd in ["delete-lease 1 1", "touch-lease 1 1", "bury-lease 1 1 0"] {
        assert_eq!(run(&mut s, 1, cmd, b"", sec(2.0)), "STALE_LEASE\r\n", "{cmd}");
    }
    assert_eq!(run(&mut s, 1, "fail-lease 1 1 1", b"e", sec(2.0)), "STALE_LEASE\r\n");
    // The current token works from any connection, for the holder.
    assert_eq!(run(&mut s, 1, "release-lease 1 2 7 0", b"", sec(2.0)), "RELEASED\r\n");
    let y = run(&mut s, 1, "stats-job 1", b"", sec(2.0));
    assert!(y.contains("state: ready") && y.contains("pri: 7"), "{y}");
    assert_eq!(run(&mut s, 1, "delete-lease 1 2", b"", sec(2.0)), "STALE_LEASE\r\n");
    assert!(run(&mut s, 2, "reserve-with-timeout 0", b"", sec(2.0)).starts_with("RESERVED 1"));
    let r = run(&mut s, 1, "fail-lease 1 3 4", b"boom", sec(2.0));
    assert!(r.starts_with("FAILED 3 "), "{r}");
    s.tick(sec(9.0));
    assert!(run(&mut s, 2, "reserve-with-timeout 0", b"", sec(9.0)).starts_with("RESERVED 1"));
    // A closed holder's lease is gone with it.
    s.disconnect(2, sec(9.0));
    assert_eq!(run(&mut s, 1, "delete-lease 1 4", b"", sec(9.0)), "STALE_LEASE\r\n");
    assert_eq!(run(&mut s, 1, "delete-lease 9 1", b"", sec(9.0)), "NOT_FOUND\r\n");
    assert!(run(&mut s, 1, "reserve-with-timeout 0", b"", sec(9.0)).starts_with("RESERVED 1"));
    assert_eq!(run(&mut s, 1, "lease 1", b"", sec(9.0)), "LEASED 1 5\r\n");
    assert_eq!(run(&mut s, 1, "delete-lease 1 5", b"", sec(9.0)), "DELETED\r\n");
    s.check();
}

#[test]
fn unique_keys_batches_and_clearing() {
    let t0 = Instant::now();
    let mut s = Store::new(cfg(), None, t0);
    s.connect(1);
    assert_eq!(run(&mut s, 1, "put-unique k1 0 0 60 1", b"a", t0), "INSERTED 1\r\n");
    assert_eq!(run(&mut s, 1, "put-unique k1 0 0 60 1", b"b", t0), "DUPLICATE 1\r\n");
    let mut w = Vec::new();
    s.put_batch(1, 0, 0, 60, vec![b"x".to_vec(), b"y".to_vec(), b"z".to_vec()], t0, &mut w);
    assert_eq!(String::from_utf8_lossy(&w), "INSERTED-BATCH 2 3\r\n");
    let r = run(&mut s, 1, "reserve-batch 10 0", b"", t0);
    assert_eq!(r, "RESERVED-BATCH 4\r\n1 1\r\na\r\n2 1\r\nx\r\n3 1\r\ny\r\n4 1\r\nz\r\n");
    for id in 1..=4 {
        assert_eq!(run(&mut s, 1, &format!("release {id} 0 0"), b"", t0), "RELEASED\r\n");
    }
    assert_eq!(run(&mut s, 1, "clear-tube default ready", b"", t0), "CLEARED 4\r\n");
    // The key is free again once its job is gone.
    assert_eq!(run(&mut s, 1, "put-unique k1 0 0 60 1", b"c", t0), "INSERTED 5\r\n");
    assert_eq!(s.table.totals().jobs, 1);
}

#[test]
fn a_waiting_reserve_is_served_by_a_put_and_leases_expire() {
    let t0 = Instant::now();
    let mut s = Store::new(cfg(), None, t0);
    s.connect(1);
    s.connect(2);
    let mut w = Vec::new();
    let cmd = parse(b"reserve").unwrap();
    assert_eq!(s.handle(1, cmd, Vec::new(), t0, &mut w), Flow::Wait);
    assert!(w.is_empty());
    assert_eq!(run(&mut s, 2, "put 0 0 2 2", b"hi", t0), "INSERTED 1\r\n");
    assert_eq!(s.out, vec![(1, b"RESERVED 1 2\r\nhi\r\n".to_vec())]);
    s.out.clear();
    // Someone else cannot delete it; after TTR it is ready again.
    assert_eq!(run(&mut s, 2, "delete 1", b"", t0), "NOT_FOUND\r\n");
    s.tick(t0 + Duration::from_secs(2));
    assert_eq!(state(&s, 1), Some(State::Ready));
    assert_eq!(s.table.job(1).unwrap().counts.timeouts, 1);
    assert_eq!(run(&mut s, 1, "touch 1", b"", t0), "NOT_FOUND\r\n");
    // Closing a connection returns its reservations.
    let t1 = t0 + Duration::from_secs(3);
    assert!(run(&mut s, 2, "reserve", b"", t1).starts_with("RESERVED 1"));
    s.disconnect(2, t1);
    assert_eq!(state(&s, 1), Some(State::Ready));
}

#[test]
fn a_batch_waiter_gets_a_batch_reply_even_for_one_job() {
    let t0 = Instant::now();
    let mut s = Store::new(cfg(), None, t0);
    s.connect(1);
    s.connect(2);
    let mut w = Vec::new();
    let cmd = parse(b"reserve-batch 5 10").unwrap();
    assert_eq!(s.handle(1, cmd, Vec::new(), t0, &mut w), Flow::Wait);
    assert_eq!(run(&mut s, 2, "put 0 0 2 2", b"hi", t0), "INSERTED 1\r\n");
    assert_eq!(s.out, vec![(1, b"RESERVED-BATCH 1\r\n1 2\r\nhi\r\n".to_vec())]);
}

#[test]
fn limits_answer_out_of_memory_and_keep_what_was_accepted() {
    let t0 = Instant::now();
    let mut c = cfg();
    c.max_jobs = 2;
    let mut s = Store::new(c, None, t0);
    s.connect(1);
    assert_eq!(run(&mut s, 1, "put 0 0 1 1", b"a", t0), "INSERTED 1\r\n");
    assert_eq!(run(&mut s, 1, "put 0 0 1 1", b"b", t0), "INSERTED 2\r\n");
    assert_eq!(run(&mut s, 1, "put 0 0 1 1", b"c", t0), "OUT_OF_MEMORY\r\n");
    assert_eq!(s.table.totals().jobs, 2);
    s.draining = true;
    assert_eq!(run(&mut s, 1, "put 0 0 1 1", b"d", t0), "DRAINING\r\n");
    // Refused puts used their ids, as in beanstalkd.
    s.draining = false;
    assert_eq!(run(&mut s, 1, "delete 1", b"", t0), "DELETED\r\n");
    assert_eq!(run(&mut s, 1, "put 0 0 1 1", b"e", t0), "INSERTED 5\r\n");
}

#[test]
fn poison_pills_are_buried_only_with_a_configured_policy() {
    let t0 = Instant::now();
    let mut s = Store::new(cfg(), None, t0);
    s.connect(1);
    assert_eq!(run(&mut s, 1, "put 0 0 1 1", b"p", t0), "INSERTED 1\r\n");
    // beanstalkd rules: timeouts and dead holders never bury.
    let mut now = t0;
    for _ in 0..3 {
        assert!(run(&mut s, 1, "reserve", b"", now).starts_with("RESERVED 1"));
        now += Duration::from_secs(1);
        s.tick(now);
    }
    assert_eq!(state(&s, 1), Some(State::Ready));
    assert_eq!(run(&mut s, 1, "tube-config default 4 0 0", b"", now), "CONFIGURED\r\n");
    assert!(run(&mut s, 1, "reserve", b"", now).starts_with("RESERVED 1"));
    s.disconnect(1, now);
    assert_eq!(state(&s, 1), Some(State::Buried));
    assert!(s.table.job(1).unwrap().error.unwrap_or("").contains("poison pill"));
}

/// The classic beanstalkd binlog growth: a long-delayed job, a buried
/// job and a release loop must not keep old segments alive.
#[test]
fn compaction_bounds_the_log_and_recovery_rebuilds_the_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    let mut s = Store::new(cfg(), Some(open_log(dir.path())), t0);
    s.connect(1);
    assert_eq!(run(&mut s, 1, "put 0 3600 60 5", b"later", t0), "INSERTED 1\r\n");
    assert_eq!(run(&mut s, 1, "put 7 0 60 4", b"dead", t0), "INSERTED 2\r\n");
    assert!(run(&mut s, 1, "reserve", b"", t0).starts_with("RESERVED 2"));
    assert_eq!(run(&mut s, 1, "bury 2 9", b"", t0), "BURIED\r\n");
    assert_eq!(run(&mut s, 1, "put 5 0 60 4", b"loop", t0), "INSERTED 3\r\n");
    let body = vec![b'p'; 200];
    let mut max_segments = 0;
    for i in 0..20_000u32 {
        let now = t0 + Duration::from_millis(u64::from(i));
        let r = run(&mut s, 1, "put 1 0 60 200", &body, now);
        assert!(r.starts_with("INSERTED"), "{r}");
        let id: u64 = r.trim_end()[9..].parse().unwrap();
        assert!(run(&mut s, 1, "reserve", b"", now).starts_with(&format!("RESERVED {id} ")));
        assert_eq!(run(&mut s, 1, &format!("delete {id}"), b"", now), "DELETED\r\n");
        if i % 100 == 0 {
            // The release loop on job 3.
            assert!(run(&mut s, 1, "reserve-job 3", b"", now).starts_with("RESERVED 3"));
            assert_eq!(run(&mut s, 1, "release 3 5 0", b"", now), "RELEASED\r\n");
            s.log.as_ref().unwrap().wal.sync().unwrap();
            s.tick(now);
            max_segments = max_segments.max(s.log.as_ref().unwrap().wal.segments().len());
        }
    }
    // 20 000 x ~250 B = ~5 MB written: ~80 segments of 64 KiB without
    // compaction.
    assert!(max_segments <= 8, "log grew to {max_segments} segments");
    assert!(s.ct.records_migrated > 0, "compaction rewrote live jobs");
    let next = s.next_id();
    let mut r = reopen(&mut s, dir.path());
    assert_eq!(r.table.totals().jobs, 3);
    assert_eq!(state(&r, 1), Some(State::Delayed));
    assert_eq!(state(&r, 2), Some(State::Buried));
    assert_eq!(r.table.job(2).unwrap().pri, 9);
    assert_eq!(state(&r, 3), Some(State::Ready));
    assert_eq!(r.table.job(3).unwrap().counts.releases, 200);
    assert!(r.next_id() >= next, "ids never go back: {} < {next}", r.next_id());
    r.connect(1);
    assert_eq!(run(&mut r, 1, "peek 1", b"", Instant::now()), "FOUND 1 5\r\nlater\r\n");
}

#[test]
fn a_record_too_large_fails_one_command_not_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    let mut s = Store::new(big_cfg(), Some(open_log(dir.path())), t0);
    s.connect(1);
    let big = vec![b'x'; 100 << 10]; // over a 64 KiB segment's record limit
    assert_eq!(run(&mut s, 1, "put 0 0 60 102400", &big, t0), "INTERNAL_ERROR\r\n");
    assert_eq!(run(&mut s, 1, "put 0 0 60 1", b"y", t0), "INSERTED 2\r\n");
    assert_eq!(run(&mut s, 1, "delete 2", b"", t0), "DELETED\r\n");
    assert!(!s.log_failed());
    assert_eq!(s.table.totals().jobs, 0);
}

#[test]
fn recovery_rebuilds_config_bury_order_returned_reservations_and_totals() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    let mut s = Store::new(cfg(), Some(open_log(dir.path())), t0);
    s.connect(1);
    assert_eq!(run(&mut s, 1, "tube-config default 5 1000 10", b"", t0), "CONFIGURED\r\n");
    for i in 1..=4 {
        assert_eq!(run(&mut s, 1, "put 0 0 60 1", b"j", t0), format!("INSERTED {i}\r\n"));
    }
    // Bury 2 then 1: peek-buried and kick must keep that order.
    assert!(run(&mut s, 1, "reserve-job 2", b"", t0).starts_with("RESERVED 2"));
    assert_eq!(run(&mut s, 1, "bury 2 0", b"", t0), "BURIED\r\n");
    assert!(run(&mut s, 1, "reserve-job 1", b"", t0).starts_with("RESERVED 1"));
    assert_eq!(run(&mut s, 1, "bury 1 0", b"", t0), "BURIED\r\n");
    // Job 3 goes buried -> reserved (reserve-job) -> ready (holder gone).
    assert!(run(&mut s, 1, "reserve-job 3", b"", t0).starts_with("RESERVED 3"));
    assert_eq!(run(&mut s, 1, "bury 3 0", b"", t0), "BURIED\r\n");
    s.connect(2);
    assert!(run(&mut s, 2, "reserve-job 3", b"", t0).starts_with("RESERVED 3"));
    s.disconnect(2, t0);
    assert_eq!(state(&s, 3), Some(State::Ready));
    // Compaction rewrites by id, which differs from the bury order.
    compact_now(&mut s);

    let mut r = reopen(&mut s, dir.path());
    r.connect(1);
    let t1 = Instant::now();
    let y = run(&mut r, 1, "stats-tube-ext default", b"", t1);
    assert!(y.contains("backoff-ms: 1000\nbackoff-max-ms: 1000\n"), "{y}");
    assert!(y.contains("total-jobs: 4\n"), "{y}");
    assert_eq!(state(&r, 3), Some(State::Ready));
    assert!(run(&mut r, 1, "peek-buried", b"", t1).starts_with("FOUND 2 "));
    assert_eq!(run(&mut r, 1, "kick 1", b"", t1), "KICKED 1\r\n");
    assert!(run(&mut r, 1, "peek-buried", b"", t1).starts_with("FOUND 1 "));
}

#[test]
fn logs_of_both_older_formats_recover_and_take_new_records_after_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut l = open_log(dir.path());
    let created_ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis()
            as u64;
    let put = |id: u64, state: u8, bury_seq: u64| V1Rec::Put {
        id,
        tube: "old".into(),
        pri: 7,
        delay_s: 0,
        ttr_s: 30,
        body: format!("job {id}").into_bytes(),
        state,
        run_at_ms: 0,
        bury_seq,
        created_ms,
        counts: OldCounts { reserves: 2, ..OldCounts::default() },
        unique: None,
        last_error: None,
    };
    // Format 1: one rkyv enum per record.
    let v1 = [
        put(1, ST_READY, 0),
        put(2, ST_BURIED, 1),
        put(3, ST_READY, 0),
        V1Rec::Delete { id: 3 },
        V1Rec::Move {
            id: 1,
            pri: 9,
            delay_s: 0,
            state: ST_READY,
            run_at_ms: 0,
            bury_seq: 0,
            counts: OldCounts { reserves: 3, releases: 1, ..OldCounts::default() },
            last_error: Some("boom".into()),
        },
    ];
    for r in &v1 {
        let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(r).unwrap();
        l.app.append(persist::KIND_V1, &bytes).unwrap();
    }
    // Format 2: a struct per kind, and a `PutBatch` of two delayed jobs.
    let batch = DRec::PutBatch {
        first_id: 10,
        ids: Vec::new(),
        tube: "old".into(),
        pri: 1,
        delay_s: 3600,
        ttr_s: 60,
        created_ms,
        bodies: vec![b"b10".to_vec(), b"b11".to_vec()],
    };
    let mut buf = rkyv::util::AlignedVec::new();
    for rec in [batch, DRec::Reserve { id: 2 }, DRec::IdMark { next_id: 20 }] {
        persist::encode_with(&mut buf, &rec, |kind, b| l.app.append(kind, b).map(|_| ()))
            .unwrap()
            .unwrap();
    }
    l.wal.shutdown().unwrap();
    drop(l);

    let t = Instant::now();
    let mut s = Store::new(cfg(), Some(open_log(dir.path())), t);
    s.recover(t).unwrap();
    s.check();
    s.connect(1);
    let y = run(&mut s, 1, "stats-job-ext 1", b"", t);
    assert!(y.contains("pri: 9\n") && y.contains("reserves: 3\n"), "{y}");
    assert!(y.contains("releases: 1\n") && y.contains("last-error: \"boom\""), "{y}");
    // Job 2 was reserved (format 2's `Reserve`) when the log ended: ready.
    let y = run(&mut s, 1, "stats-job 2", b"", t);
    assert!(y.contains("state: ready\n") && y.contains("reserves: 3\n"), "{y}");
    assert_eq!(run(&mut s, 1, "peek 3", b"", t), "NOT_FOUND\r\n");
    let y = run(&mut s, 1, "stats-job 11", b"", t);
    assert!(y.contains("state: delayed\n") && y.contains("delay: 3600\n"), "{y}");
    // New records follow the old ones; all replay.
    assert_eq!(run(&mut s, 1, "use old", b"", t), "USING old\r\n");
    assert_eq!(run(&mut s, 1, "put 0 0 60 3", b"new", t), "INSERTED 20\r\n");
    assert_eq!(run(&mut s, 1, "delete 1", b"", t), "DELETED\r\n");

    let mut r = reopen(&mut s, dir.path());
    r.connect(1);
    let t1 = Instant::now();
    assert_eq!(run(&mut r, 1, "peek 1", b"", t1), "NOT_FOUND\r\n");
    assert_eq!(run(&mut r, 1, "peek 2", b"", t1), "FOUND 2 5\r\njob 2\r\n");
    assert_eq!(run(&mut r, 1, "peek 10", b"", t1), "FOUND 10 3\r\nb10\r\n");
    assert_eq!(run(&mut r, 1, "peek 20", b"", t1), "FOUND 20 3\r\nnew\r\n");
    // Compaction moves everything to the new format; the old segments go.
    compact_now(&mut r);
    let mut r2 = reopen(&mut r, dir.path());
    r2.connect(1);
    assert_eq!(r2.table.job_ids().collect::<Vec<_>>(), vec![2, 10, 11, 20]);
    assert_eq!(run(&mut r2, 1, "put 0 0 60 1", b"x", t1), "INSERTED 21\r\n");
}

#[test]
fn a_put_batch_comes_back_whole_in_one_frame() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    let mut s = Store::new(big_cfg(), Some(open_log(dir.path())), t0);
    s.connect(1);
    assert_eq!(run(&mut s, 1, "put 0 0 60 1", b"a", t0), "INSERTED 1\r\n");
    let bodies: Vec<Vec<u8>> = (0..40u8).map(|i| vec![b'a' + i % 26; 1000]).collect();
    let before = s.log.as_ref().unwrap().last_lsn;
    let mut w = Vec::new();
    s.put_batch(1, 5, 0, 30, bodies.clone(), t0, &mut w);
    assert_eq!(w, b"INSERTED-BATCH 2 40\r\n");
    assert!(s.write_log());
    assert!(s.log.as_ref().unwrap().last_lsn > before);
    let mut w = Vec::new();
    s.put_batch(1, 7, 90, 30, vec![b"later".to_vec()], t0, &mut w);
    assert_eq!(w, b"INSERTED-BATCH 42 1\r\n");
    assert_eq!(run(&mut s, 1, "delete 10", b"", t0), "DELETED\r\n");

    let mut r = reopen_with(&mut s, dir.path(), big_cfg());
    r.connect(1);
    let t1 = Instant::now();
    assert_eq!(r.table.totals().jobs, 41);
    for (i, body) in bodies.iter().enumerate() {
        let id = 2 + i as u64;
        match r.table.job(id) {
            None => assert_eq!(id, 10),
            Some(j) => {
                assert_eq!((j.payload, j.pri, j.ttr_s, j.state), (&body[..], 5, 30, State::Ready))
            }
        }
    }
    let y = run(&mut r, 1, "stats-job 42", b"", t1);
    assert!(y.contains("state: delayed\n") && y.contains("delay: 90\n"), "{y}");
    assert_eq!(run(&mut r, 1, "put 0 0 60 1", b"z", t1), "INSERTED 43\r\n");
}

#[test]
fn a_put_batch_of_many_empty_jobs_fits_the_log() {
    // 10 000 records are split into frames that fit a 64 KiB segment.
    let dir = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    let mut s = Store::new(big_cfg(), Some(open_log(dir.path())), t0);
    s.connect(1);
    let mut w = Vec::new();
    s.put_batch(1, 0, 0, 60, vec![Vec::new(); 10_000], t0, &mut w);
    assert_eq!(w, b"INSERTED-BATCH 1 10000\r\n");
    let r = reopen_with(&mut s, dir.path(), big_cfg());
    assert_eq!(r.table.totals().jobs, 10_000);
}

#[test]
fn a_put_batch_that_fails_leaves_nothing_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    let mut s = Store::new(big_cfg(), Some(open_log(dir.path())), t0);
    s.connect(1);
    assert_eq!(run(&mut s, 1, "put 0 0 60 1", b"k", t0), "INSERTED 1\r\n");
    // A body too large for any frame of a 64 KiB segment fails the batch.
    let mut bodies = vec![vec![b'x'; 1000]; 17];
    bodies.push(vec![b'y'; 100 << 10]);
    let mut w = Vec::new();
    s.put_batch(1, 0, 0, 60, bodies, t0, &mut w);
    assert_eq!(w, b"INTERNAL_ERROR\r\n");
    assert!(!s.log_failed());
    assert_eq!(s.table.totals().jobs, 1);
    let mut r = reopen_with(&mut s, dir.path(), big_cfg());
    assert_eq!(r.table.job_ids().collect::<Vec<_>>(), [1]);
    r.connect(1);
    let reply = run(&mut r, 1, "put 0 0 60 1", b"z", Instant::now());
    assert!(reply.starts_with("INSERTED "), "{reply}");
}

#[test]
fn compaction_keeps_every_live_job_and_their_states() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    let mut s = Store::new(big_cfg(), Some(open_log(dir.path())), t0);
    s.connect(1);
    let mut w = Vec::new();
    s.put_batch(1, 3, 100, 60, vec![b"spindle-bench-16".to_vec(); 3000], t0, &mut w);
    assert_eq!(w, b"INSERTED-BATCH 1 3000\r\n");
    for id in (1..=3000).step_by(3) {
        assert_eq!(run(&mut s, 1, &format!("delete {id}"), b"", t0), "DELETED\r\n");
    }
    let migrated = s.ct.records_migrated;
    compact_now(&mut s);
    assert_eq!(s.ct.records_migrated - migrated, 2000);
    let mut r = reopen_with(&mut s, dir.path(), big_cfg());
    let ids: std::collections::BTreeSet<u64> = r.table.job_ids().collect();
    let want: std::collections::BTreeSet<u64> = (1..=3000).filter(|i| i % 3 != 1).collect();
    assert_eq!(ids, want);
    r.connect(1);
    let y = run(&mut r, 1, "stats-job 2", b"", Instant::now());
    assert!(y.contains("state: delayed\n"), "{y}");
    assert!(y.contains("time-left: 99\n") || y.contains("time-left: 100\n"), "{y}");
}

#[test]
fn a_late_tick_still_answers_deadline_soon() {
    let t0 = Instant::now();
    let mut s = Store::new(cfg(), None, t0);
    s.connect(1);
    assert_eq!(run(&mut s, 1, "put 0 0 5 1", b"a", t0), "INSERTED 1\r\n");
    assert!(run(&mut s, 1, "reserve", b"", t0).starts_with("RESERVED 1"));
    let mut w = Vec::new();
    assert_eq!(s.handle(1, parse(b"reserve").unwrap(), Vec::new(), t0, &mut w), Flow::Wait);
    // The loop was busy: the first tick comes after the lease expired.
    s.tick(t0 + Duration::from_secs(6));
    assert_eq!(s.out, vec![(1, b"DEADLINE_SOON\r\n".to_vec())]);
}

#[test]
fn idle_tubes_cost_little_and_serve_waiters() {
    let t0 = Instant::now();
    let mut s = Store::new(cfg(), None, t0);
    s.connect(1);
    for i in 0..2000 {
        assert!(run(&mut s, 1, &format!("watch t{i}"), b"", t0).starts_with("WATCHING"));
    }
    let q = s.table.find_queue("t5").unwrap();
    assert_eq!(s.table.wait_count(q), None, "histograms are lazy");
    let mut w = Vec::new();
    assert_eq!(s.handle(1, parse(b"reserve").unwrap(), Vec::new(), t0, &mut w), Flow::Wait);
    s.connect(2);
    assert_eq!(run(&mut s, 2, "use t1999", b"", t0), "USING t1999\r\n");
    assert_eq!(run(&mut s, 2, "put 0 0 5 1", b"a", t0), "INSERTED 1\r\n");
    assert_eq!(s.out, vec![(1, b"RESERVED 1 1\r\na\r\n".to_vec())]);
    assert!(!s.table.is_waiting(1));
    s.check();
}

/// `cmd-delete` of `stats-tube` counts `delete` commands (old
/// store: `t.cmd_delete += 1` in `Cmd::Delete` only). The table counts every
/// destroyed job, so `clear-tube` and a refused put's undo count too, and a
/// refused put counts in the tube's `total-jobs`.
#[test]
fn stats_tube_counts_only_delete_commands_and_accepted_puts() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    let mut s = Store::new(big_cfg(), Some(open_log(dir.path())), t0);
    s.connect(1);
    for _ in 0..3 {
        assert!(run(&mut s, 1, "put 0 0 60 1", b"a", t0).starts_with("INSERTED"));
    }
    assert_eq!(run(&mut s, 1, "clear-tube default ready", b"", t0), "CLEARED 3\r\n");
    let big = vec![b'x'; 100 << 10];
    assert_eq!(run(&mut s, 1, "put 0 0 60 102400", &big, t0), "INTERNAL_ERROR\r\n");
    let y = run(&mut s, 1, "stats-tube default", b"", t0);
    assert!(y.contains("\ncmd-delete: 0\n"), "{y}");
    assert!(y.contains("\ntotal-jobs: 3\n"), "{y}");
}

#[test]
fn reply_numbers_are_written_as_write_would() {
    for n in [0, 1, 9, 10, 99, 100, 12_345, u64::from(u32::MAX), u64::MAX - 1, u64::MAX] {
        let mut w = b"x".to_vec();
        reply_u64(&mut w, n);
        assert_eq!(w, format!("x{n}").into_bytes(), "{n}");
    }
}

/// `desired-workers` is `spindle_core::staffing`'s law on the tube's rates:
/// 10 jobs a second held 0.5 s each keep 5 workers busy (no square-root
/// margin), and 20 jobs waiting with a 100 ms latency target (a 50 ms
/// target wait) ask for 0.5 × 20 / 0.05 = 200 more.
#[test]
fn desired_workers_follows_the_shared_staffing_law() {
    let t0 = Instant::now();
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    let mut s = Store::new(cfg(), None, t0);
    s.connect(1);
    assert_eq!(run(&mut s, 1, "use w", b"", t0), "USING w\r\n");
    assert_eq!(run(&mut s, 1, "watch w", b"", t0), "WATCHING 2\r\n");
    let q = s.table.find_queue("w").unwrap();
    assert_eq!(crate::report::desired_workers(&s, q), 0, "an idle tube wants no one");
    // Each 100 ms: a job is put and reserved; the one reserved 500 ms
    // earlier is deleted.
    let mut held = std::collections::VecDeque::new();
    for tick in 0..100u64 {
        let now = at(tick * 100);
        assert!(run(&mut s, 1, "put 0 0 60 1", b"x", now).starts_with("INSERTED"));
        let r = run(&mut s, 1, "reserve-with-timeout 0", b"", now);
        let id: u64 = r.split(' ').nth(1).unwrap().parse().unwrap();
        held.push_back(id);
        if held.len() > 5 {
            let id = held.pop_front().unwrap();
            assert_eq!(run(&mut s, 1, &format!("delete {id}"), b"", now), "DELETED\r\n");
        }
        s.tick(now);
    }
    assert_eq!(crate::report::desired_workers(&s, q), 5, "λ·S = 10/s × 0.5 s");
    let now = at(10_000);
    for _ in 0..20 {
        assert!(run(&mut s, 1, "put 0 0 60 1", b"x", now).starts_with("INSERTED"));
    }
    assert_eq!(crate::report::desired_workers(&s, q), 5 + 200, "and the backlog within D");
    let ext = run(&mut s, 1, "stats-tube-ext w", b"", now);
    assert!(ext.contains("desired-workers: 205\n"), "{ext}");
}

/// A log write that fails (EIO) is reported to the loop, whoever flushed
/// (the loop itself, or compaction), so the replies of that round are not
/// sent; later changes are refused and reads still answer; a kill -9
/// keeps what was written before.
#[test]
fn a_failed_log_write_is_reported_and_later_changes_are_refused() {
    use spindle_wal::{SimFault, SimStorage};
    for flusher in ["the loop", "compaction"] {
        let storage = SimStorage::new();
        let opts = WalOptions {
            segment_size: 64 << 10,
            sync: spindle_wal::SyncPolicy::Never,
            ..WalOptions::default()
        };
        let (wal, _) = Wal::open_with(std::sync::Arc::new(storage.clone()), opts.clone()).unwrap();
        let t = Instant::now();
        let mut s = Store::new(cfg(), Some(Log::inline(wal)), t);
        s.recover(t).unwrap();
        s.connect(1);
        assert_eq!(run(&mut s, 1, "put 0 0 60 1", b"a", t), "INSERTED 1\r\n");
        let mut w = Vec::new();
        s.handle(1, parse(b"put 0 0 60 1").unwrap(), b"b".to_vec(), t, &mut w);
        // Composed and claimed, not yet written.
        assert_eq!(w, b"INSERTED 2\r\n");
        storage.inject(SimFault::EioAtWrite(storage.writes() + 1));
        if flusher == "compaction" {
            assert!(!s.log.as_mut().unwrap().flush());
        }
        assert!(!s.write_log(), "{flusher}: the round's replies must not go");
        assert!(s.write_log(), "{flusher}: reported once");
        assert_eq!(run(&mut s, 1, "put 0 0 60 1", b"c", t), "INTERNAL_ERROR\r\n");
        assert_eq!(run(&mut s, 1, "peek 1", b"", t), "FOUND 1 1\r\na\r\n");
        let image = storage.process_crash_image();
        let (wal, _) = Wal::open_with(std::sync::Arc::new(image), opts).unwrap();
        let mut r = Store::new(cfg(), Some(Log::inline(wal)), t);
        r.recover(t).unwrap();
        assert_eq!(r.table.totals().jobs, 1, "{flusher}: only the job written before");
    }
}

/// The records of a round's commands go to the log as one frame, written
/// when the loop writes the round (before any reply goes out), and a
/// restart brings the round's jobs back.
#[test]
fn a_round_of_commands_is_one_log_frame() {
    let dir = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let mut s = Store::new(cfg(), Some(open_log(dir.path())), t);
    s.connect(1);
    let frames = |s: &Store| {
        let mut n = 0;
        s.log.as_ref().unwrap().wal.replay(|_| n += 1).unwrap();
        n
    };
    let before = frames(&s);
    let mut w = Vec::new();
    for _ in 0..10 {
        s.handle(1, parse(b"put 0 0 60 1").unwrap(), b"x".to_vec(), t, &mut w);
    }
    s.handle(1, parse(b"reserve").unwrap(), Vec::new(), t, &mut w);
    s.handle(1, parse(b"delete 1").unwrap(), Vec::new(), t, &mut w);
    assert!(String::from_utf8_lossy(&w).ends_with("DELETED\r\n"));
    assert_eq!(frames(&s), before, "nothing is written before the round ends");
    assert!(s.write_log());
    assert_eq!(frames(&s), before + 1);
    let r = reopen(&mut s, dir.path());
    assert_eq!(r.table.job_ids().collect::<Vec<_>>(), (2..=10).collect::<Vec<u64>>());
}
