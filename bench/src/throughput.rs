//! The `throughput` scenario: no-op jobs per second through the engine, per
//! durability mode, next to the same run's handoff floor (`floor`).
//!
//! 1. Measure the floor: the best of a few crossbeam handoff runs.
//! 2. Build an engine (`--durability`, `--shards`) whose one queue has a
//!    no-op handler that counts; the handler completing the last job sends
//!    the time over a channel (no polling).
//! 3. Submit `--jobs` jobs with empty payloads: from the main thread in
//!    batches of `--batch` (`submit_batch`), or with `--producers N` from N
//!    threads each submitting single jobs (`submit`), so that under `Sync`
//!    concurrent submits share syncs (group commit).
//! 4. Jobs per second = jobs / (first submit → last handler completion).

use crate::args::Args;
use crate::engine_env::{self, BenchEngine, Completion, QUEUE};
use crate::floor::FloorBench;
use crate::handoff_floor;
use crate::io_counters::IoCounters;
use crate::report::Report;
use crate::system::Busy;
use crate::BoxResult;
use serde_json::json;
use spindle_engine::{Durability, Engine, Job, JobRef, Outcome};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Usage text of the scenario.
pub const USAGE: &str = "\
spindle-bench throughput [options]
  --durability MODE  memory, process or sync (default process)
  --shards N         engine shards (default: one per core)
  --static-workers N keep N core workers active (Workers::Static) instead
                     of the lag controller (default: lag)
  --jobs N           no-op jobs (default 2000000; 200000 with --durability sync)
  --batch N          jobs per submit_batch from the main thread (default 1000)
  --producers N      instead: N threads each submitting single jobs (default 0)
  --floor-items N    items per floor run (default 5000000, best of 3)
  --dir PATH         parent directory for the logs (default: ./target, else
                     /var/tmp, else /tmp; sync refuses tmpfs)
  --json             print one JSON object instead of tables";

/// Timed syncs of the fdatasync floor measured before a Sync run.
const SYNC_FLOOR_SYNCS: u64 = 200;

/// Parsed options.
#[derive(Debug, Clone)]
pub struct ThroughputOpts {
    durability: Durability,
    shards: Option<usize>,
    static_workers: Option<usize>,
    jobs: u64,
    batch: usize,
    producers: usize,
    floor_items: u64,
    dir: Option<PathBuf>,
    /// Print JSON.
    pub json: bool,
}

impl ThroughputOpts {
    /// Reads the scenario's options.
    pub fn parse(mut a: Args) -> BoxResult<ThroughputOpts> {
        let d: String = a.value_or("--durability", "process".to_string())?;
        let durability = engine_env::parse_durability(&d)?;
        let default_jobs = if durability == Durability::Sync { 200_000 } else { 2_000_000 };
        let o = ThroughputOpts {
            durability,
            shards: a.value("--shards")?,
            static_workers: a.value("--static-workers")?,
            jobs: a.value_or("--jobs", default_jobs)?,
            batch: a.value_or("--batch", 1000)?,
            producers: a.value_or("--producers", 0)?,
            floor_items: a.value_or("--floor-items", 5_000_000)?,
            dir: a.value("--dir")?,
            json: a.flag("--json"),
        };
        a.finish()?;
        if o.jobs == 0 || o.batch == 0 || o.floor_items == 0 || o.shards == Some(0) {
            return Err("--jobs, --batch, --floor-items and --shards must be at least 1".into());
        }
        Ok(o)
    }
}

/// Submits `jobs` no-op jobs in batches from this thread.
fn submit_batches(engine: &Engine, jobs: u64, batch: usize) -> BoxResult<()> {
    let mut left = jobs;
    while left > 0 {
        let n = left.min(batch as u64);
        let b: Vec<Job> = (0..n).map(|_| Job::new(QUEUE, Vec::new())).collect();
        engine.submit_batch(b)?;
        left -= n;
    }
    Ok(())
}

/// Submits `jobs` single jobs from `producers` threads.
fn submit_producers(engine: &Engine, jobs: u64, producers: usize) -> BoxResult<()> {
    std::thread::scope(|s| -> BoxResult<()> {
        let handles: Vec<_> = (0..producers as u64)
            .map(|p| {
                let mine = jobs / producers as u64 + u64::from(p < jobs % producers as u64);
                s.spawn(move || -> BoxResult<()> {
                    for _ in 0..mine {
                        engine.submit(Job::new(QUEUE, Vec::new()))?;
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join().map_err(|_| "producer panicked")??;
        }
        Ok(())
    })
}

/// Runs the scenario.
pub fn run(o: &ThroughputOpts) -> BoxResult<Report> {
    let busy_start = Busy::now();
    let cores = engine_env::cores();
    progress(o, "floor");
    let (floor, pinned) = handoff_floor::best_throughput(o.floor_items, 3, 1024, true)?;

    progress(o, "engine");
    let be = BenchEngine::build(o.durability, o.shards, o.static_workers, o.dir.as_deref())?;
    // Sync with single-job producers: the group-commit limit of this run is
    // producers ÷ one 4 KiB fdatasync's p50, measured now on the log's
    // filesystem (`floor.rs`), before the engine writes anything.
    let sync_floor = match (&be.dir, o.durability, o.producers) {
        (Some(d), Durability::Sync, p) if p > 0 => {
            progress(o, "fdatasync floor");
            let io = IoCounters::for_dir(d.path())?;
            let mut f = FloorBench::new(d.path(), SYNC_FLOOR_SYNCS)?;
            f.run(SYNC_FLOOR_SYNCS, &io)?;
            Some(f.finish()?.latency)
        }
        _ => None,
    };
    let engine = be.engine.clone();
    let (done, done_rx) = Completion::new(o.jobs);
    let done = Arc::new(done);
    let counter = done.clone();
    engine.register(QUEUE, move |_: &JobRef<'_>| {
        counter.one();
        Outcome::Done
    })?;

    let start = Instant::now();
    if o.producers > 0 {
        submit_producers(&engine, o.jobs, o.producers)?;
    } else {
        submit_batches(&engine, o.jobs, o.batch)?;
    }
    let submitted = start.elapsed().as_secs_f64();
    let finished = engine_env::wait_done(&done_rx, &done, Duration::from_secs(600))?;
    let secs = finished.duration_since(start).as_secs_f64();
    let stats = engine_env::stats_when_completed(&engine, o.jobs);
    let completed = stats.total().completed;
    let shards = engine.shards();
    let fs_type = be.fs_type();
    drop(engine);
    be.shutdown()?;
    let busy_end = Busy::now();
    if completed != o.jobs {
        return Err(format!("engine stats count {completed} completed jobs of {}", o.jobs).into());
    }

    let mode = engine_env::durability_name(o.durability);
    let how = if o.producers > 0 {
        format!("{} producer threads, single submits", o.producers)
    } else {
        format!("main thread, submit_batch of {}", o.batch)
    };
    let per_sec = o.jobs as f64 / secs;
    let mut r = Report::new(format!(
        "spindle-bench throughput — {} no-op jobs, {mode} durability, {shards} shards on {cores} cores, {how}\n\
         logs on {fs_type}; machine at start: {}; at end: {}",
        o.jobs,
        busy_start.describe(),
        busy_end.describe(),
    ));
    r.section("throughput (first submit → last completion)");
    r.metric("jobs", "jobs", o.jobs as f64, "jobs");
    r.metric("seconds", "elapsed", secs, "s");
    r.metric("jobs_per_sec", "jobs per second", per_sec, "jobs/s");
    r.metric("submit_seconds", "submitting alone took", submitted, "s");
    r.metric("submit_per_sec", "submit rate", o.jobs as f64 / submitted, "jobs/s");
    handoff_floor::report_floor(&mut r, floor, pinned);
    if let Some(f) = sync_floor {
        let limit = o.producers as f64 / (f.p50_us / 1e6);
        r.metric(
            "fdatasync_p50_us",
            "4 KiB pwrite + fdatasync p50, same filesystem",
            f.p50_us,
            "µs",
        );
        r.metric("group_commit_limit_per_sec", "producers ÷ fdatasync p50", limit, "jobs/s");
        r.metric("group_commit_share", "jobs/s ÷ that limit", per_sec / limit, "x");
    }
    r.metric("ratio_to_floor", "jobs/s ÷ floor", per_sec / floor, "x");
    // Three decimals (the report's rounding) would print tiny ratios as 0.
    r.set("ratio_to_floor", significant(per_sec / floor, 4));
    r.section("engine stats");
    r.metric("dispatch_p50_us", "dispatch p50 (ready → handler)", stats.dispatch.p50_us, "µs");
    r.metric("dispatch_p99_us", "dispatch p99", stats.dispatch.p99_us, "µs");
    r.metric("dispatch_p999_us", "dispatch p99.9", stats.dispatch.p999_us, "µs");
    r.metric("end_to_end_p50_us", "end to end p50 (submit → done)", stats.end_to_end.p50_us, "µs");
    r.metric("end_to_end_p99_us", "end to end p99", stats.end_to_end.p99_us, "µs");
    r.metric(
        "jobs_stolen",
        "jobs run by a non-owner shard",
        engine_env::stolen(&stats) as f64,
        "jobs",
    );
    r.note("with a backlog (batches submitted faster than they run) dispatch and end-to-end latency measure queueing, not the engine's hand-off cost; see `spindle-bench latency`");
    r.set("shards", shards as u64);
    r.set("cores", cores as u64);
    r.set("durability", mode);
    r.set("producers", o.producers as u64);
    r.set("batch", if o.producers > 0 { 1 } else { o.batch as u64 });
    r.set("floor_pinned", pinned);
    r.set("fs_type", fs_type);
    r.set("pinned_cores", stats.shards.iter().map(|s| json!(s.pinned_core)).collect::<Vec<_>>());
    r.set("machine_at_start", busy_start.to_json());
    r.set("machine_at_end", busy_end.to_json());
    Ok(r)
}

/// `v` rounded to `digits` significant digits.
fn significant(v: f64, digits: i32) -> f64 {
    if v == 0.0 || !v.is_finite() {
        return v;
    }
    let scale = 10f64.powi(digits - 1 - v.abs().log10().floor() as i32);
    (v * scale).round() / scale
}

/// A progress line on stderr (stdout stays one JSON object with `--json`).
fn progress(o: &ThroughputOpts, what: &str) {
    if !o.json {
        eprintln!("… {what}");
    }
}
