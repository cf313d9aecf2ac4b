//! Replays saved fuzz inputs and hand-made nasty segment files through the
//! same checks as the cargo-fuzz target (`wal/fuzz/fuzz_one.rs`), on stable,
//! as part of the normal test suite.
//!
//! - `wal/tests/fuzz_cases/*`: minimised crashers of bugs that are fixed (and
//!   any other interesting input); each must pass. See `fuzz_cases/README.md`.
//!   A new crasher lands here with its fix: the suite keeps no ignored cases.
#![allow(clippy::unwrap_used, clippy::expect_used)]

include!("../fuzz/fuzz_one.rs");

use fuzz_one::{collect, opts, padding_frame, record_frame, run_with, segment_header};
use spindle_wal::{scan_segment_bytes, RecoveryMode, SimStorage, Wal};
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn cases_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.is_file() && !p.file_name().is_some_and(|n| n.to_string_lossy().ends_with(".md"))
        })
        .collect();
    files.sort();
    files
}

fn cases_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("fuzz_cases")
}

fn run_named(name: &str, input: &[u8]) {
    run_named_with(name, input, fuzz_one::AVOID_OPEN_BUGS);
}

fn run_named_with(name: &str, input: &[u8], avoid_open_bugs: bool) {
    if let Err(e) = std::panic::catch_unwind(|| run_with(input, avoid_open_bugs)) {
        let msg = e
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        panic!("fuzz case {name} failed: {msg}");
    }
}

/// `[0x00] ++ file`: one segment file, verbatim, named by its header's base.
fn one_file(img: &[u8]) -> Vec<u8> {
    let mut v = vec![0x00];
    v.extend_from_slice(img);
    v
}

/// Two segment files, verbatim, each named by its header's base.
fn two_files(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut v = vec![0x01];
    v.extend_from_slice(&u16::try_from(a.len()).unwrap().to_le_bytes());
    v.extend_from_slice(a);
    v.extend_from_slice(b);
    v
}

/// A segment file: valid header, then `frames` back to back, then zeros.
fn segment(base: u64, len: usize, frames: &[Vec<u8>]) -> Vec<u8> {
    let mut img = vec![0u8; len];
    img[..64].copy_from_slice(&segment_header(0, base, len as u64));
    let mut off = 64;
    for f in frames {
        let n = f.len().min(len - off);
        img[off..off + n].copy_from_slice(&f[..n]);
        off += n;
    }
    img
}

#[test]
fn saved_fuzz_cases() {
    let files = cases_in(&cases_dir());
    for path in &files {
        run_named(&path.display().to_string(), &std::fs::read(path).unwrap());
    }
}

#[test]
fn tiny_and_empty_inputs() {
    for input in [
        &[][..],
        &[0x00],
        &[0x01],
        &[0x80],
        &[0xFF],
        &[0x07, 0xFF, 0xFF],
        &[0x00, 0, 0, 0, 1],
        &[0x00, 0, 0, 0, 0xFF, 1, 2, 3],
    ] {
        run_named(&format!("{input:?}"), input);
    }
    run_named("64 zero bytes", &one_file(&[0u8; 64]));
    run_named("8192 zero bytes", &one_file(&[0u8; 8192]));
    run_named("8192 0xFF bytes", &one_file(&[0xFFu8; 8192]));
}

#[test]
fn damaged_and_odd_headers() {
    // Exactly a header: shorter than a segment can be.
    run_named("header only", &one_file(&segment_header(0, 0, 64)));
    // Valid header, empty data area.
    run_named("empty segment", &one_file(&segment(0, 8192, &[])));
    // The header's length disagrees with the file's.
    let mut img = segment(0, 8192, &[record_frame(0, 1, b"x")]);
    img[..64].copy_from_slice(&segment_header(0, 0, 4096));
    run_named("length mismatch", &one_file(&img));
    // Another shard's segment.
    let mut img = segment(0, 8192, &[record_frame(0, 1, b"x")]);
    img[..64].copy_from_slice(&segment_header(1, 0, 8192));
    run_named("wrong shard", &one_file(&img));
    // Every single bit of a header flipped in turn.
    let good = segment(0, 4096, &[record_frame(0, 1, b"abc"), record_frame(32, 2, b"")]);
    for bit in 0..64 * 8 {
        let mut img = good.clone();
        img[bit / 8] ^= 1 << (bit % 8);
        run_named(&format!("header bit {bit}"), &one_file(&img));
    }
}

#[test]
fn nasty_frames() {
    // Head word says 16 MiB of payload; the file is 8 KiB.
    let mut huge = record_frame(0, 1, b"");
    huge[0..3].copy_from_slice(&[0xFF, 0xFF, 0xFF]);
    run_named("huge length", &one_file(&segment(0, 8192, &[huge])));
    // A CRC-valid frame that runs past the end of the file.
    let long = record_frame(0, 1, &[9u8; 200]);
    run_named("frame past the end", &one_file(&segment(0, 160, &[long])));
    // CRC-valid frames with reserved kinds or a stale LSN.
    for (name, f) in [
        ("kind 0", record_frame(0, 0, b"zero kind")),
        ("kind 255 with payload", record_frame(0, 255, b"padding?")),
        ("stale lsn", record_frame(4096, 1, b"stale")),
    ] {
        run_named(name, &one_file(&segment(0, 8192, &[record_frame(0, 1, b"ok"), f.clone()])));
        run_named(name, &one_file(&segment(0, 8192, &[f])));
    }
    // Garbage after a padding frame is not data and is not a reason to cut.
    let mut img =
        segment(0, 8192, &[record_frame(0, 3, b"one"), padding_frame(32, 8192 - 64 - 48)]);
    img[2000..2100].fill(0xAB);
    run_named("garbage after padding", &one_file(&img));
    // A hole (unfinished append) followed by a valid record.
    let mut img = segment(0, 8192, &[record_frame(0, 3, b"one")]);
    img[64 + 64..64 + 96].copy_from_slice(&record_frame(64, 4, b"later"));
    run_named("hole then record", &one_file(&img));
    // A file whose length is not a multiple of 16, with a stray byte at the end.
    let mut img = segment(0, 64 + 35, &[record_frame(0, 1, b"")]);
    *img.last_mut().unwrap() = 1;
    run_named("odd length", &one_file(&img));
}

#[test]
fn nasty_segment_chains() {
    let a = segment(0, 8192, &[record_frame(0, 1, b"first"), padding_frame(32, 8128 - 48)]);
    // Continues after the padding: fine.
    let b = segment(8128, 8192, &[record_frame(8128, 2, b"second")]);
    run_named("padded chain", &two_files(&a, &b));
    // Leaves a gap: the second segment is cut.
    let b = segment(9000 * 16, 8192, &[record_frame(9000 * 16, 2, b"second")]);
    run_named("gap in chain", &two_files(&a, &b));
    // Starts inside the first one's data.
    let b = segment(16, 8192, &[record_frame(16, 2, b"overlap")]);
    run_named("overlapping chain", &two_files(&a, &b));
    // A later run's segment starting where an unpadded one's data ended.
    let a = segment(0, 8192, &[record_frame(0, 1, b"first")]);
    let b = segment(32, 8192, &[record_frame(32, 2, b"second run")]);
    run_named("unpadded chain", &two_files(&a, &b));
    // Same, with an empty second segment (prepared but never written).
    run_named("empty next segment", &two_files(&a, &segment(32, 8192, &[])));
}

/// Regression (found by fuzzing, fixed in 3efc257): a padding frame at the
/// first data byte of the last segment (crafted or corrupted file) made
/// recovery report `end_lsn` = that segment's *end* and then delete the
/// segment as empty, so the next run wrote past a hole and the open after
/// that cut everything that run wrote.
#[test]
fn padding_at_first_byte_of_last_segment() {
    let a = segment(0, 8192, &[record_frame(0, 1, b"first")]);
    let b = segment(32, 8192, &[padding_frame(32, 8128 - 16)]);
    // Spelled out: records appended after recovery are lost on the next open.
    let storage = SimStorage::new();
    storage.insert_raw(0, &a);
    storage.insert_raw(32, &b);
    let (wal, report) =
        Wal::open_with(Arc::new(storage.clone()), opts(RecoveryMode::Truncate)).unwrap();
    assert_eq!(collect(&wal).len(), 1);
    let lsn = wal.appender().append(2, b"written after recovery").unwrap();
    wal.close().unwrap();
    let (wal, _) = Wal::open_with(Arc::new(storage.clone()), opts(RecoveryMode::Truncate)).unwrap();
    let got: Vec<u64> = collect(&wal).iter().map(|r| r.0).collect();
    assert_eq!(got, vec![0, lsn], "end_lsn was {}, the record went to {lsn}", report.end_lsn);
    drop(wal);
    // And through the fuzz checks.
    run_named("padding first in last segment", &two_files(&a, &b));
}

/// Regression (fixed in 3efc257): segment headers whose base is near
/// `u64::MAX` (crafted or corrupted files) overflowed LSN arithmetic, a panic
/// with overflow checks on (debug builds, fuzzing).
#[test]
fn lsn_overflow_near_u64_max() {
    let base = u64::MAX - 40;
    let img =
        segment(base, 8192, &[record_frame(base, 1, b"0123"), record_frame(base + 32, 1, b"")]);
    // `scan_segment_bytes` promises never to panic.
    let r = std::panic::catch_unwind(|| scan_segment_bytes(&img).len());
    assert!(r.is_ok(), "scan_segment_bytes panicked");
    // Recovery of an empty segment near the top, then of one with records.
    fuzz_one::check_images(&[(u64::MAX - 100, segment(u64::MAX - 100, 8192, &[]))]);
    fuzz_one::check_images(&[(base, img)]);
}
