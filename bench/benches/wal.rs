//! Criterion micro-benchmarks of the WAL: append (64 B / 256 B / 4 KiB),
//! durable commit batches (1 / 64 / 1024 records, then `wait_durable` under
//! `SyncPolicy::Always`) and record encode/decode.
//!
//! Logs live on the real filesystem under Cargo's `target/tmp` (or
//! `$SPINDLE_BENCH_DIR`), never on tmpfs, so commits measure real syncs.
//!
//! ```text
//! cargo bench -p spindle-bench --bench wal
//! ```

use criterion::{
    criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use spindle_wal::{decode, encode_into, frame_len, Decoded, SyncPolicy, Wal, WalOptions};
use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tempfile::TempDir;

const KIND: u8 = 1;
const APPEND_SIZES: [usize; 3] = [64, 256, 4096];
const COMMIT_BATCHES: [u64; 3] = [1, 64, 1024];
const COMMIT_PAYLOAD: usize = 256;

/// A scratch directory on the real filesystem.
fn scratch() -> TempDir {
    let parent = std::env::var_os("SPINDLE_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
    let _ = std::fs::create_dir_all(&parent);
    match tempfile::Builder::new().prefix("spindle-wal-bench-").tempdir_in(&parent) {
        Ok(d) => d,
        Err(e) => panic!("cannot create a scratch directory in {}: {e}", parent.display()),
    }
}

/// Opens a fresh log and waits until the preparer has its next segment
/// ready, so segment creation does not land in the first samples.
fn open(dir: &TempDir, sync: SyncPolicy) -> Wal {
    let opts = WalOptions { sync, ..WalOptions::default() };
    let ahead = opts.prepare_ahead;
    let wal = match Wal::open(dir.path(), opts) {
        Ok((wal, _)) => wal,
        Err(e) => panic!("cannot open WAL in {}: {e}", dir.path().display()),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while wal.stats().segments_created < 1 + ahead && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    wal
}

fn check<T>(r: Result<T, spindle_wal::WalError>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("WAL error: {e}"),
    }
}

fn append(c: &mut Criterion) {
    let mut g = c.benchmark_group("wal_append");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for size in APPEND_SIZES {
        let dir = scratch();
        let wal = open(&dir, SyncPolicy::Never);
        let mut app = wal.appender();
        let payload = vec![0x5Au8; size];
        g.throughput(Throughput::ElementsAndBytes { elements: 1, bytes: size as u64 });
        g.bench_function(BenchmarkId::from_parameter(size), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                let mut last = 0;
                for _ in 0..iters {
                    last = check(app.append(KIND, black_box(&payload)));
                }
                let took = start.elapsed();
                // Untimed: drop whole segments behind us to bound disk use.
                check(wal.release_below(last));
                took
            });
        });
        check(wal.close());
    }
    g.finish();
}

fn commit(c: &mut Criterion) {
    let mut g = c.benchmark_group("wal_commit");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .sampling_mode(SamplingMode::Flat);
    let dir = scratch();
    let wal = open(&dir, SyncPolicy::Always);
    let mut app = wal.appender();
    let payload = vec![0xC3u8; COMMIT_PAYLOAD];
    for batch in COMMIT_BATCHES {
        g.throughput(Throughput::ElementsAndBytes {
            elements: batch,
            bytes: batch * COMMIT_PAYLOAD as u64,
        });
        g.bench_function(BenchmarkId::new("batch", batch), |b| {
            b.iter(|| {
                let mut last = 0;
                for _ in 0..batch {
                    last = check(app.append(KIND, &payload));
                }
                check(wal.wait_durable(last));
                last
            });
        });
    }
    check(wal.close());
    g.finish();
}

fn record(c: &mut Criterion) {
    let mut g = c.benchmark_group("record");
    g.sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    for size in APPEND_SIZES {
        let payload: Vec<u8> = (0..size).map(|i| i as u8).collect();
        let mut frame = vec![0u8; frame_len(size as u64) as usize];
        g.throughput(Throughput::ElementsAndBytes { elements: 1, bytes: size as u64 });
        g.bench_function(BenchmarkId::new("encode", size), |b| {
            b.iter(|| {
                encode_into(black_box(&mut frame), black_box(4096), KIND, black_box(&payload))
            });
        });
        encode_into(&mut frame, 4096, KIND, &payload);
        g.bench_function(BenchmarkId::new("decode", size), |b| {
            b.iter(|| match decode(black_box(&frame), black_box(4096)) {
                Decoded::Record { record, len } => (record.payload.len(), len),
                other => panic!("frame did not decode: {other:?}"),
            });
        });
    }
    g.finish();
}

criterion_group!(benches, record, append, commit);
criterion_main!(benches);
