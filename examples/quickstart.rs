//! Quickstart: an embedded engine running one million no-op jobs.
//!
//! Builds an engine in a temporary data directory (`Process` durability:
//! every job is in the memory-mapped write-ahead log before `submit_batch`
//! returns, so it survives `kill -9`), registers a no-op handler, submits
//! 1,000,000 jobs in batches of 1,000 from this thread, waits until the last
//! one has run, and prints the rate and the dispatch latency (job ready →
//! handler start) the engine measured.
//!
//! ```text
//! cargo run --release --example quickstart
//! ```

use spindle::{Durability, Engine, Job, JobRef, Outcome};
use std::error::Error;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

const JOBS: u64 = 1_000_000;
const BATCH: u64 = 1_000;
const QUEUE: &str = "noop";

fn main() -> Result<(), Box<dyn Error>> {
    let dir =
        tempfile::Builder::new().prefix("spindle-quickstart").tempdir_in(std::env::temp_dir())?;
    let engine = Engine::builder().data_dir(dir.path()).durability(Durability::Process).build()?;

    // The handler counts; the one that runs the last job says so, with the
    // time it finished.
    let ran = Arc::new(AtomicU64::new(0));
    let (done_tx, done_rx) = mpsc::sync_channel::<Instant>(1);
    let counter = ran.clone();
    engine.register(QUEUE, move |_job: &JobRef<'_>| {
        if counter.fetch_add(1, Ordering::Relaxed) + 1 == JOBS {
            let _ = done_tx.send(Instant::now());
        }
        Outcome::Done
    })?;

    let started = Instant::now();
    for _ in 0..JOBS / BATCH {
        let batch: Vec<Job> = (0..BATCH).map(|_| Job::new(QUEUE, Vec::new())).collect();
        engine.submit_batch(batch)?;
    }
    let submitted = started.elapsed();
    // A guard against hanging forever, not a synchronisation device.
    let finished = done_rx
        .recv_timeout(Duration::from_secs(120))
        .map_err(|_| format!("only {} of {JOBS} jobs ran in 120 s", ran.load(Ordering::Relaxed)))?;
    let elapsed = finished.duration_since(started);

    // The counters of a job stolen by another shard reach its owner a moment
    // after the handler returns; `stats()` waits for fresh snapshots, so a
    // few calls are enough.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut stats = engine.stats();
    while stats.total().completed < JOBS && Instant::now() < deadline {
        stats = engine.stats();
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pinned: Vec<String> = stats
        .shards
        .iter()
        .map(|s| s.pinned_core.map_or_else(|| "unpinned".to_string(), |c| format!("core {c}")))
        .collect();
    let stolen: u64 = stats.shards.iter().map(|s| s.jobs_stolen).sum();
    let d = stats.dispatch;

    println!("spindle quickstart — {JOBS} no-op jobs, embedded engine");
    println!(
        "  engine        {} shards ({}) on {cores} cores, {:?} durability",
        engine.shards(),
        pinned.join(", "),
        engine.durability()
    );
    println!(
        "  submitted     in batches of {BATCH} in {:.0} ms ({:.2} M jobs/s)",
        submitted.as_secs_f64() * 1e3,
        JOBS as f64 / submitted.as_secs_f64() / 1e6
    );
    println!(
        "  ran           all {JOBS} in {:.0} ms: {:.2} M jobs/s (first submit → last completion)",
        elapsed.as_secs_f64() * 1e3,
        JOBS as f64 / elapsed.as_secs_f64() / 1e6
    );
    println!(
        "  dispatch      p50 {:.1} µs, p99 {:.1} µs, p99.9 {:.1} µs (ready → handler start, {} samples)",
        d.p50_us, d.p99_us, d.p999_us, d.count
    );
    println!(
        "                (jobs are submitted faster than they run, so this is mostly time spent"
    );
    println!("                queued; `spindle-bench latency --rate R` measures dispatch at a fixed rate)");
    println!("  stolen        {stolen} jobs ran on a shard other than their owner");

    let completed = stats.total().completed;
    engine.shutdown()?;
    if completed != JOBS {
        return Err(format!("stats report {completed} completed jobs, expected {JOBS}").into());
    }
    println!("  completed     {completed} (engine stats agree); shut down cleanly");
    Ok(())
}
