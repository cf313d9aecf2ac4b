//! Replays the replay fuzz target's seed corpus (`core/fuzz/seeds/`) and
//! logs made by real operations, mutated, through the same check as the
//! cargo-fuzz target (`core/fuzz/fuzz_one.rs`), on stable, on every
//! `cargo test`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

include!("../fuzz/fuzz_one.rs");

use std::path::Path;
use std::time::Duration;

use spindle_core::{
    By, Config, Limits, Missed, OnExpiry, PutSpec, Rate, Records, RetryPolicy, ScheduleSpec, Table,
    Time, When,
};

/// A log written by a table going through every kind of change.
fn real_log() -> Vec<u8> {
    let now = Time::from_secs(1_700_000_000);
    let mut t = Table::new(Config::default());
    let mut log = Records::new();
    let a = t.queue("a").unwrap();
    let b = t.queue("b").unwrap();
    t.set_policy(
        b,
        RetryPolicy { max_attempts: 2, poison_after: 2, ..RetryPolicy::default() },
        &mut log,
    );
    for i in 0..12u32 {
        let q = if i % 2 == 0 { a } else { b };
        let key = format!("k{}", i % 5);
        let spec = PutSpec {
            pri: i % 3,
            ttr_s: 5,
            delay: Duration::from_secs(u64::from(i % 4)),
            unique: (i % 3 == 0).then_some(key.as_str()),
            deadline: None,
            ..PutSpec::default()
        };
        let id = t.next_id();
        t.put(now, id, q, &spec, &vec![i as u8; (i as usize) * 7], &mut log).unwrap();
    }
    t.tick(now.plus_secs(3), &mut log);
    let mut held = Vec::new();
    for h in 0..6 {
        if let Some(l) = t.reserve(now, if h % 2 == 0 { a } else { b }, h, &mut log) {
            held.push((h, l.id));
        }
    }
    for (n, (h, id)) in held.into_iter().enumerate() {
        let by = By::holder(h);
        let _ = match n % 5 {
            0 => t.complete(id, by, &mut log).map(|_| ()),
            1 => t.release(now, id, by, 9, Duration::from_secs(2), &mut log),
            2 => t.fail(now, id, by, b"boom", &mut log).map(|_| ()),
            3 => t.bury(id, by, 1, Some("why"), &mut log),
            _ => Ok(()),
        };
    }
    t.kick(now, b, 1, &mut log);
    t.mark_ids(&mut log);
    log.bytes().to_vec()
}

/// A log written by a table using limits, deadlines, cancellation and
/// schedules: every record kind from 8 on (`Limits`, `Cancel`,
/// `Schedule`, `Unschedule`, `Fire` with a job and skipped) and `Put`s
/// with a deadline, among the others; then the table's snapshot.
fn tiers_log() -> (Vec<u8>, Vec<u8>) {
    let now = Time::from_secs(1_700_000_000);
    let mut t = Table::new(Config::default());
    let mut log = Records::new();
    let a = t.queue("a").unwrap();
    let b = t.queue("b").unwrap();
    let limited = Limits {
        concurrency: 2,
        rate: Some(Rate { starts: 3, per: Duration::from_secs(1), burst: 2 }),
        on_expiry: OnExpiry::Bury,
    };
    t.set_limits(a, limited, &mut log).unwrap();
    t.set_limits(b, Limits { concurrency: 1, ..Limits::default() }, &mut log).unwrap();
    for i in 0..8u32 {
        let q = if i % 2 == 0 { a } else { b };
        let spec = PutSpec {
            pri: i % 3,
            ttr_s: 60,
            deadline: (i % 3 != 2).then(|| now.plus_secs(u64::from(2 + i))),
            ..PutSpec::default()
        };
        let id = t.next_id();
        t.put(now, id, q, &spec, &[i as u8; 5], &mut log).unwrap();
    }
    let every = ScheduleSpec {
        no_overlap: true,
        ..ScheduleSpec::new("every", When::Every(Duration::from_millis(1500)), b"tick")
    };
    t.add_schedule(now, a, every, &mut log).unwrap();
    let cron = ScheduleSpec {
        missed: Missed::Skip,
        pri: 4,
        ttr_s: 9,
        ..ScheduleSpec::new("cron", When::cron("*/2 * * * * *"), b"cron")
    };
    t.add_schedule(now, b, cron, &mut log).unwrap();
    t.add_schedule(now, b, ScheduleSpec::new("gone", When::cron("* * * * *"), b""), &mut log)
        .unwrap();
    let mut held = Vec::new();
    for h in 0..4 {
        if let Some(l) = t.reserve(now, if h % 2 == 0 { a } else { b }, h, &mut log) {
            held.push(l.id);
        }
    }
    // Cancel a running job and one that is not.
    t.cancel(held[0], &mut log).unwrap();
    let waiting = t.job_ids().find(|id| !held.contains(id)).unwrap();
    t.cancel(waiting, &mut log).unwrap();
    t.pause_schedule(now.plus_secs(1), b, "cron", true, &mut log).unwrap();
    t.remove_schedule(b, "gone", &mut log).unwrap();
    let mut next = 1000;
    let mut ids = || {
        next += 1;
        next - 1
    };
    for s in 1..=6 {
        let at = now.plus_secs(s);
        t.tick(at, &mut log);
        t.fire_schedules(at, &mut ids, &mut log);
    }
    t.pause_schedule(now.plus_millis(6500), b, "cron", false, &mut log).unwrap();
    t.fire_schedules(now.plus_secs(8), &mut ids, &mut log);
    t.mark_ids(&mut log);
    let mut snap = Records::new();
    t.snapshot(&mut snap);
    (log.bytes().to_vec(), snap.bytes().to_vec())
}

#[test]
fn the_seed_corpus_passes() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz").join("seeds");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "bin") {
            fuzz_one::run(&std::fs::read(&p).unwrap());
            n += 1;
        }
    }
    assert!(n >= 2, "seeds in {}", dir.display());
}

#[test]
fn the_seed_of_a_real_log_is_current() {
    // The corpus keeps a real log as its main seed; it must match what the
    // table writes today (a format change updates the seed and the docs).
    let want = real_log();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/real-log.bin");
    if std::env::var_os("SPINDLE_BLESS").is_some() {
        std::fs::write(&path, &want).unwrap();
    }
    assert_eq!(std::fs::read(&path).unwrap(), want, "run with SPINDLE_BLESS=1 to rewrite");
}

#[test]
fn the_seeds_of_limits_expiry_cancellation_and_schedules_are_current() {
    let (log, snap) = tiers_log();
    let kinds = |b: &[u8]| -> std::collections::BTreeSet<u8> {
        let mut k = std::collections::BTreeSet::new();
        for rec in spindle_core::record::decode(b) {
            k.insert(match rec.unwrap() {
                spindle_core::record::Record::Put(p) if p.deadline.is_some() => 100,
                spindle_core::record::Record::Fire { job: 0, .. } => 112,
                r => kind_of(&r),
            });
        }
        k
    };
    // Every new kind, a deadline and a skipped tick are in the log.
    let got = kinds(&log);
    for k in [8, 9, 10, 11, 12, 100, 112] {
        assert!(got.contains(&k), "kind {k} missing from the log: {got:?}");
    }
    let got = kinds(&snap);
    for k in [8, 9, 10] {
        assert!(got.contains(&k), "kind {k} missing from the snapshot: {got:?}");
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    for (name, want) in [("tiers-log.bin", &log), ("tiers-snapshot.bin", &snap)] {
        let path = dir.join(name);
        if std::env::var_os("SPINDLE_BLESS").is_some() {
            std::fs::write(&path, want).unwrap();
        }
        assert_eq!(&std::fs::read(&path).unwrap(), want, "run with SPINDLE_BLESS=1 to rewrite");
    }
}

fn kind_of(r: &spindle_core::record::Record<'_>) -> u8 {
    use spindle_core::record::Record;
    match r {
        Record::Put(_) => 1,
        Record::Reserve { .. } => 2,
        Record::Move(_) => 3,
        Record::Delete { .. } => 4,
        Record::IdMark { .. } => 5,
        Record::Queue(_) => 6,
        Record::Deletes(_) => 7,
        Record::Limits { .. } => 8,
        Record::Cancel { .. } => 9,
        Record::Schedule(_) => 10,
        Record::Unschedule { .. } => 11,
        Record::Fire { .. } => 12,
    }
}

#[test]
fn every_truncation_and_byte_flip_of_a_real_log_replays_safely() {
    let log = real_log();
    for cut in (0..log.len()).step_by(3) {
        fuzz_one::run(&log[..cut]);
    }
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..600 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let mut b = log.clone();
        let i = (x % b.len() as u64) as usize;
        b[i] = (x >> 32) as u8;
        fuzz_one::run(&b);
    }
}

#[test]
fn every_truncation_and_byte_flip_of_a_log_with_schedules_replays_safely() {
    let (log, _) = tiers_log();
    for cut in (0..log.len()).step_by(29) {
        fuzz_one::run(&log[..cut]);
    }
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..50 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let mut b = log.clone();
        let i = (x % b.len() as u64) as usize;
        b[i] = (x >> 32) as u8;
        fuzz_one::run(&b);
    }
}
