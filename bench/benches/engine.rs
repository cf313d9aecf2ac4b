//! Criterion micro-benchmarks of the job engine, through its public API:
//!
//! - `submit_run/round_trip/{memory,process}`: submit one job to a one-shard
//!   engine and spin until its handler has run (the next submit follows at
//!   once).
//! - `submit_run/batch_1000/{memory,process}`: `submit_batch` of 1,000
//!   no-op jobs, then block until the last has run.
//! - `steal/drain_2000x5us/{1,2}_shards`: one `submit_batch` of 2,000 jobs
//!   whose handler spins 5 µs lands on one shard; time until all have run.
//!   With two shards the idle one steals, so draining should take about half
//!   as long as with one.
//!
//! Record encode/decode is internal to the engine and benchmarked with the
//! WAL's frames in `benches/wal.rs`.
//!
//! Logs (`process`) live on the real filesystem under Cargo's `target/tmp`
//! (or `$SPINDLE_BENCH_DIR`).
//!
//! ```text
//! cargo bench -p spindle-bench --bench engine
//! ```

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use spindle_engine::{Durability, Engine, Job, JobRef, Outcome};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tempfile::TempDir;

const QUEUE: &str = "bench";
const BATCH: u64 = 1000;
const STEAL_JOBS: u64 = 2000;
const STEAL_SPIN: Duration = Duration::from_micros(5);

/// A scratch directory on the real filesystem.
fn scratch() -> TempDir {
    let parent = std::env::var_os("SPINDLE_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
    let _ = std::fs::create_dir_all(&parent);
    match tempfile::Builder::new().prefix("spindle-engine-bench-").tempdir_in(&parent) {
        Ok(d) => d,
        Err(e) => panic!("cannot create a scratch directory in {}: {e}", parent.display()),
    }
}

/// An engine with `shards` shards; the data dir (Process) is returned so it
/// outlives the engine.
fn engine(durability: Durability, shards: usize) -> (Engine, Option<TempDir>) {
    let mut b = Engine::builder().shards(shards).durability(durability);
    let dir = (durability != Durability::Memory).then(scratch);
    if let Some(d) = &dir {
        b = b.data_dir(d.path());
    }
    match b.build() {
        Ok(e) => (e, dir),
        Err(e) => panic!("cannot build engine: {e}"),
    }
}

fn ok<T, E: std::fmt::Display>(r: Result<T, E>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{e}"),
    }
}

fn close(e: Engine) {
    ok(e.shutdown());
}

const MODES: [(&str, Durability); 2] =
    [("memory", Durability::Memory), ("process", Durability::Process)];

fn submit_run(c: &mut Criterion) {
    let mut g = c.benchmark_group("submit_run");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));

    // One job at a time: submit, then spin until the handler has counted it.
    for (name, mode) in MODES {
        let (e, _dir) = engine(mode, 1);
        let ran = Arc::new(AtomicU64::new(0));
        let r = ran.clone();
        ok(e.register(QUEUE, move |_: &JobRef<'_>| {
            r.fetch_add(1, Ordering::Release);
            Outcome::Done
        }));
        g.throughput(Throughput::Elements(1));
        g.bench_function(BenchmarkId::new("round_trip", name), |b| {
            b.iter_custom(|iters| {
                let mut target = ran.load(Ordering::Acquire);
                let start = Instant::now();
                for _ in 0..iters {
                    ok(e.submit(Job::new(QUEUE, Vec::new())));
                    target += 1;
                    while ran.load(Ordering::Acquire) < target {
                        std::hint::spin_loop();
                    }
                }
                start.elapsed()
            });
        });
        close(e);
    }

    // A batch of no-op jobs, then block until the last one has run.
    for (name, mode) in MODES {
        let (e, _dir) = engine(mode, 2);
        let (tx, rx) = mpsc::channel::<()>();
        let tx = Mutex::new(tx);
        let ran = AtomicU64::new(0);
        ok(e.register(QUEUE, move |_: &JobRef<'_>| {
            if (ran.fetch_add(1, Ordering::Relaxed) + 1) % BATCH == 0 {
                let _ = tx.lock().map(|t| t.send(()));
            }
            Outcome::Done
        }));
        g.throughput(Throughput::Elements(BATCH));
        g.bench_function(BenchmarkId::new("batch_1000", name), |b| {
            b.iter(|| {
                let jobs: Vec<Job> = (0..BATCH).map(|_| Job::new(QUEUE, Vec::new())).collect();
                ok(e.submit_batch(jobs));
                ok(rx.recv_timeout(Duration::from_secs(30)));
            });
        });
        close(e);
    }
    g.finish();
}

fn steal(c: &mut Criterion) {
    let mut g = c.benchmark_group("steal");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    for shards in [1usize, 2] {
        let (e, _dir) = engine(Durability::Memory, shards);
        let (tx, rx) = mpsc::channel::<()>();
        let tx = Mutex::new(tx);
        let ran = AtomicU64::new(0);
        ok(e.register(QUEUE, move |_: &JobRef<'_>| {
            let t = Instant::now();
            while t.elapsed() < STEAL_SPIN {
                std::hint::spin_loop();
            }
            if (ran.fetch_add(1, Ordering::Relaxed) + 1) % STEAL_JOBS == 0 {
                let _ = tx.lock().map(|t| t.send(()));
            }
            Outcome::Done
        }));
        g.throughput(Throughput::Elements(STEAL_JOBS));
        g.bench_function(BenchmarkId::new("drain_2000x5us", format!("{shards}_shards")), |b| {
            b.iter(|| {
                let jobs: Vec<Job> = (0..STEAL_JOBS).map(|_| Job::new(QUEUE, Vec::new())).collect();
                ok(e.submit_batch(jobs));
                ok(rx.recv_timeout(Duration::from_secs(30)));
            });
        });
        close(e);
    }
    g.finish();
}

criterion_group!(benches, submit_run, steal);
criterion_main!(benches);
