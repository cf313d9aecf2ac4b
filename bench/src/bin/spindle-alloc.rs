//! `spindle-alloc`: heap allocations per job through the engine.
//!
//! A counting global allocator (this binary only, so the other benchmarks
//! run on the plain system allocator) counts every allocation made by any
//! thread while N no-op jobs are submitted and run; the table divides by N.
//! Warm-up jobs run first so one-time growth (maps, histograms, segments)
//! is not charged to the measured jobs.
//!
//! ```text
//! cargo run --release -p spindle-bench --bin spindle-alloc [-- --jobs N]
//! ```

#![deny(unsafe_code)]

use spindle_engine::{Durability, Engine, Job, JobRef, Outcome, Workers};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

/// Counts allocations and allocated bytes, then defers to [`System`].
struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

#[allow(unsafe_code)]
// SAFETY: every method forwards to `System` with the caller's arguments
// unchanged, so `System`'s guarantees hold; the counters are plain atomics
// that never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: same contract as ours; the caller upholds it.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` through `alloc`/`realloc` above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
        // SAFETY: same contract as ours; the caller upholds it.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

type BoxResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Runs `jobs` no-op jobs (after as many warm-up jobs) and prints the
/// allocations and bytes per job.
fn measure(durability: Durability, batch: bool, jobs: u64) -> BoxResult<()> {
    let dir = tempfile::tempdir()?;
    let mut b = Engine::builder().durability(durability).workers(Workers::Static(2)).shards(2);
    if durability != Durability::Memory {
        b = b.data_dir(dir.path());
    }
    let engine = b.build()?;
    let (tx, rx) = mpsc::sync_channel::<()>(1024);
    engine.register("q", move |_: &JobRef<'_>| {
        let _ = tx.send(());
        Outcome::Done
    })?;
    let payload = [7u8; 64];
    let submit = |n: u64| -> Result<(), String> {
        if batch {
            let mut left = n;
            while left > 0 {
                let k = left.min(1000);
                let jobs: Vec<Job> = (0..k).map(|_| Job::new("q", payload.to_vec())).collect();
                engine.submit_batch(jobs).map_err(|e| e.to_string())?;
                left -= k;
            }
        } else {
            for _ in 0..n {
                engine.submit(Job::new("q", payload.to_vec())).map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    };
    // The handlers fill a bounded channel that this thread drains, so the
    // producer runs on its own thread.
    let run = |n: u64| -> BoxResult<()> {
        std::thread::scope(|s| -> BoxResult<()> {
            let producer = s.spawn(|| submit(n));
            for _ in 0..n {
                rx.recv()?;
            }
            producer.join().map_err(|_| "producer panicked")??;
            Ok(())
        })
    };
    run(jobs)?;
    let (a0, b0) = (ALLOCS.load(Ordering::Relaxed), BYTES.load(Ordering::Relaxed));
    run(jobs)?;
    let (a1, b1) = (ALLOCS.load(Ordering::Relaxed), BYTES.load(Ordering::Relaxed));
    let per = |x: u64| x as f64 / jobs as f64;
    println!(
        "| {:<8} | {:<12} | {:>10.2} | {:>10.0} |",
        format!("{durability:?}"),
        if batch { "submit_batch" } else { "submit" },
        per(a1 - a0),
        per(b1 - b0)
    );
    engine.shutdown()?;
    Ok(())
}

fn main() {
    let mut jobs = 200_000u64;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match (a.as_str(), args.next().and_then(|v| v.parse().ok())) {
            ("--jobs", Some(n)) => jobs = n,
            _ => {
                eprintln!("usage: spindle-alloc [--jobs N]   (default 200000)");
                std::process::exit(2);
            }
        }
    }
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!("allocations per no-op job (64-byte payload), {jobs} jobs after {jobs} warm-up, 2 shards on {cores} cores\n");
    println!("| mode     | call         | allocs/job | bytes/job  |");
    println!("|----------|--------------|------------|------------|");
    for d in [Durability::Memory, Durability::Process] {
        for batch in [false, true] {
            if let Err(e) = measure(d, batch, jobs) {
                eprintln!("spindle-alloc: {e}");
                std::process::exit(1);
            }
        }
    }
}
