//! Replays the replay fuzz target's seed corpus (`core/fuzz/seeds/`) and
//! logs made by real operations, mutated, through the same check as the
//! cargo-fuzz target (`core/fuzz/fuzz_one.rs`), on stable, on every
//! `cargo test`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

include!("../fuzz/fuzz_one.rs");

use std::path::Path;
use std::time::Duration;

use spindle_core::{By, Config, PutSpec, Records, RetryPolicy, Table, Time};

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
