//! The `peers` scenario: the in-process alternatives a Rust user would pick
//! instead of Spindle's library, and Spindle, in one run.
//!
//! Every system runs the same no-op job (it counts a completion) from the
//! same producer loop: the main thread submits `--jobs` jobs in batches of
//! `--batch` (Spindle: one `submit_batch` per batch; the others: one call
//! per job, as their APIs offer). Jobs per second = jobs / (first submit →
//! last completion), where the job completing last reads the clock
//! (`engine_env::Completion`, no polling).
//!
//! 1. Measure the crossbeam handoff floor (`floor`), best of 3.
//! 2. For each of `--repeat` rounds, run every system once, in the same
//!    order; the rounds interleave, so a slow phase of this VM hits every
//!    system alike.
//! 3. Report each system's median over the rounds.
//!
//! Systems (one worker per core for each):
//! - `tokio`: a multi-thread runtime, `Handle::spawn` of an `async` block
//!   from the (outside) main thread;
//! - `crossbeam`: a `bounded(4096)` channel of boxed closures, each worker
//!   blocked in `recv`;
//! - `rayon`: a thread pool, `ThreadPool::spawn`;
//! - `spindle_memory`, `spindle_process`: the engine with one queue whose
//!   handler is the no-op, one shard per core, the lag controller on.
//!
//! With `--rate R`, instead: submit→start latency at R jobs/s, open loop
//! (the producer of `spindle-bench latency`, `latency_floors.rs`), for the
//! latency variants: tokio and a crossbeam channel with parked workers, a
//! crossbeam consumer spinning, and Spindle in Memory and Process mode;
//! medians over the rounds of each percentile.

use crate::args::Args;
use crate::burst_replay::cpu_seconds;
use crate::engine_env::{self, BenchEngine, Completion, QUEUE};
use crate::handoff_floor;
use crate::latency::Percentiles;
use crate::latency_floors::{self, Place};
use crate::open_loop::{self, LatencyOpts};
use crate::report::Report;
use crate::system::Busy;
use crate::BoxResult;
use serde_json::json;
use spindle_engine::{Durability, Job, JobRef, Outcome};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Usage text of the scenario.
pub const USAGE: &str = "\
spindle-bench peers [options]
  --jobs N           no-op jobs per system and round (default 2000000)
  --batch N          jobs per producer batch (default 1000)
  --repeat N         interleaved rounds; medians are reported (default 3)
  --only LIST        comma-separated systems to run (default all):
                     tokio, crossbeam, rayon, spindle_memory, spindle_process
  --floor-items N    items per floor run (default 5000000, best of 3)
  --rate R           instead of throughput: submit→start latency at R jobs/s
                     (open loop) of tokio and crossbeam with parked workers,
                     a spinning crossbeam consumer, and Spindle
  --seconds S        with --rate: seconds per system and round (default 3)
  --dir PATH         parent directory for Process mode's log (default:
                     ./target, else /var/tmp, else /tmp)
  --json             print one JSON object instead of tables";

/// Every latency variant (`--rate`), in the order each round runs them.
const LATENCY_SYSTEMS: [&str; 5] =
    ["tokio", "crossbeam", "crossbeam_spinning", "spindle_memory", "spindle_process"];

/// Every system, in the order each round runs them.
const SYSTEMS: [&str; 5] = ["tokio", "crossbeam", "rayon", "spindle_memory", "spindle_process"];
/// Capacity of the crossbeam peer's channel.
const CHANNEL: usize = 4096;
/// Guard against a hung system (not a synchronisation device).
const LIMIT: Duration = Duration::from_secs(600);

/// Parsed options.
#[derive(Debug, Clone)]
pub struct PeersOpts {
    jobs: u64,
    batch: usize,
    repeat: usize,
    only: Vec<String>,
    floor_items: u64,
    rate: Option<f64>,
    seconds: f64,
    dir: Option<PathBuf>,
    /// Print JSON.
    pub json: bool,
}

impl PeersOpts {
    /// Reads the scenario's options.
    pub fn parse(mut a: Args) -> BoxResult<PeersOpts> {
        let only: Option<String> = a.value("--only")?;
        let o = PeersOpts {
            jobs: a.value_or("--jobs", 2_000_000)?,
            batch: a.value_or("--batch", 1000)?,
            repeat: a.value_or("--repeat", 3)?,
            only: match only {
                Some(s) => s.split(',').map(|x| x.trim().to_string()).collect(),
                None => SYSTEMS.iter().map(|s| s.to_string()).collect(),
            },
            floor_items: a.value_or("--floor-items", 5_000_000)?,
            rate: a.value("--rate")?,
            seconds: a.value_or("--seconds", 3.0)?,
            dir: a.value("--dir")?,
            json: a.flag("--json"),
        };
        a.finish()?;
        if o.jobs == 0 || o.batch == 0 || o.repeat == 0 || o.floor_items == 0 {
            return Err("--jobs, --batch, --repeat and --floor-items must be at least 1".into());
        }
        let positive = |v: f64| v > 0.0 && v.is_finite();
        if o.rate.is_some_and(|r| !positive(r)) || !positive(o.seconds) {
            return Err("--rate and --seconds must be positive".into());
        }
        let known = |s: &str| SYSTEMS.contains(&s) || LATENCY_SYSTEMS.contains(&s);
        if let Some(bad) = o.only.iter().find(|s| !known(s)) {
            return Err(format!("unknown system {bad:?}; one of {}", SYSTEMS.join(", ")).into());
        }
        Ok(o)
    }
}

/// Jobs per second of one run of `system`.
fn run_one(system: &str, o: &PeersOpts, workers: usize) -> BoxResult<f64> {
    let (done, rx) = Completion::new(o.jobs);
    let done = Arc::new(done);
    let start;
    match system {
        "tokio" => {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(workers).build()?;
            let h = rt.handle().clone();
            start = Instant::now();
            // One call per job: these APIs take no batch.
            for _ in 0..o.jobs {
                let d = done.clone();
                h.spawn(async move { d.one() });
            }
            let end = engine_env::wait_done(&rx, &done, LIMIT)?;
            rt.shutdown_timeout(Duration::from_secs(5));
            return Ok(o.jobs as f64 / end.duration_since(start).as_secs_f64());
        }
        "crossbeam" => {
            type Task = Box<dyn FnOnce() + Send>;
            let (tx, jobs_rx) = crossbeam_channel::bounded::<Task>(CHANNEL);
            let threads: Vec<_> = (0..workers)
                .map(|_| {
                    let r = jobs_rx.clone();
                    std::thread::spawn(move || {
                        for t in r.iter() {
                            t();
                        }
                    })
                })
                .collect();
            start = Instant::now();
            // One call per job: these APIs take no batch.
            for _ in 0..o.jobs {
                let d = done.clone();
                tx.send(Box::new(move || d.one())).map_err(|_| "crossbeam workers gone")?;
            }
            let end = engine_env::wait_done(&rx, &done, LIMIT)?;
            drop(tx);
            for t in threads {
                t.join().map_err(|_| "crossbeam worker panicked")?;
            }
            return Ok(o.jobs as f64 / end.duration_since(start).as_secs_f64());
        }
        "rayon" => {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(workers).build()?;
            start = Instant::now();
            // One call per job: these APIs take no batch.
            for _ in 0..o.jobs {
                let d = done.clone();
                pool.spawn(move || d.one());
            }
            let end = engine_env::wait_done(&rx, &done, LIMIT)?;
            return Ok(o.jobs as f64 / end.duration_since(start).as_secs_f64());
        }
        _ => {}
    }
    let durability =
        if system == "spindle_memory" { Durability::Memory } else { Durability::Process };
    let be = BenchEngine::build(durability, None, None, o.dir.as_deref())?;
    let counter = done.clone();
    be.engine.register(QUEUE, move |_: &JobRef<'_>| {
        counter.one();
        Outcome::Done
    })?;
    start = Instant::now();
    let mut left = o.jobs;
    while left > 0 {
        let n = left.min(o.batch as u64);
        let b: Vec<Job> = (0..n).map(|_| Job::new(QUEUE, Vec::new())).collect();
        be.engine.submit_batch(b)?;
        left -= n;
    }
    let end = engine_env::wait_done(&rx, &done, LIMIT)?;
    be.shutdown()?;
    Ok(o.jobs as f64 / end.duration_since(start).as_secs_f64())
}

/// The median of `v` (sorted here).
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// One latency run of `system` at `rate`: submit→start percentiles, and the
/// cores Spindle used (producer excluded; None for the others).
fn latency_one(
    system: &str,
    o: &PeersOpts,
    rate: f64,
    workers: usize,
) -> BoxResult<(Percentiles, Option<f64>)> {
    let n = (rate * o.seconds).round().max(1.0) as u64;
    let p = match system {
        "tokio" => latency_floors::measure_tokio(rate, n, workers, true)?,
        "crossbeam" => latency_floors::measure(Place::Parked, rate, n, true)?,
        "crossbeam_spinning" => latency_floors::measure(Place::Spinning, rate, n, true)?,
        _ => {
            let d =
                if system == "spindle_memory" { Durability::Memory } else { Durability::Process };
            let run =
                open_loop::measure_engine(&LatencyOpts::new(rate, o.seconds, d, o.dir.clone()))?;
            return Ok((run.e2e, Some(run.cores_used)));
        }
    };
    Ok((p, None))
}

/// `--rate`: the latency table.
fn run_latency(o: &PeersOpts, rate: f64) -> BoxResult<Report> {
    let busy_start = Busy::now();
    let cores = engine_env::cores();
    let systems: Vec<&str> = LATENCY_SYSTEMS
        .iter()
        .copied()
        .filter(|s| o.only.iter().any(|x| x == s || x == &s.replace("_spinning", "")))
        .collect();
    let mut runs: Vec<Vec<(Percentiles, Option<f64>)>> = vec![Vec::new(); systems.len()];
    for round in 0..o.repeat {
        for (i, s) in systems.iter().enumerate() {
            if !o.json {
                eprintln!("… round {} of {}: {s} at {rate} jobs/s", round + 1, o.repeat);
            }
            runs[i].push(latency_one(s, o, rate, cores)?);
        }
    }
    let busy_end = Busy::now();
    let mut r = Report::new(format!(
        "spindle-bench peers --rate {rate} — submit→start (intended send time → start of the job), \
         open loop, {} s per system and round, {} interleaved rounds (medians), {cores} cores\n\
         machine at start: {}; at end: {}",
        o.seconds,
        o.repeat,
        busy_start.describe(),
        busy_end.describe(),
    ));
    let mut rows = Vec::new();
    let mut best: Option<(&str, f64)> = None;
    for (s, v) in systems.iter().zip(runs.iter()) {
        let mut p50: Vec<f64> = v.iter().map(|x| x.0.p50_us).collect();
        let mut p99: Vec<f64> = v.iter().map(|x| x.0.p99_us).collect();
        let mut p999: Vec<f64> = v.iter().map(|x| x.0.p999_us).collect();
        let mut used: Vec<f64> = v.iter().filter_map(|x| x.1).collect();
        let (p50, p99, p999) = (median(&mut p50), median(&mut p99), median(&mut p999));
        let used = (!used.is_empty()).then(|| median(&mut used));
        rows.push(vec![
            s.to_string(),
            format!("{p50:.1}"),
            format!("{p99:.1}"),
            format!("{p999:.1}"),
            used.map_or_else(|| "-".into(), |u| format!("{u:.2}")),
        ]);
        r.set(&format!("{s}_p50_us"), p50);
        r.set(&format!("{s}_p99_us"), p99);
        r.set(&format!("{s}_p999_us"), p999);
        if let Some(u) = used {
            r.set(&format!("{s}_cpu_cores_used"), u);
        }
        if (*s == "tokio" || *s == "crossbeam") && best.is_none_or(|b| p99 < b.1) {
            best = Some((s, p99));
        }
    }
    r.table(
        "submit→start latency (µs, medians of the rounds)",
        &["system", "p50", "p99", "p99.9", "cores used"],
        rows,
    );
    if let Some((name, p99)) = best {
        r.set("best_parked_peer", name);
        r.set("best_parked_peer_p99_us", p99);
    }
    r.note("cores used: Spindle's process CPU over the schedule less its producer thread's, per second");
    r.set("rate", rate);
    r.set("cores", cores as u64);
    r.set("repeat", o.repeat as u64);
    Ok(r)
}

/// Runs the scenario.
pub fn run(o: &PeersOpts) -> BoxResult<Report> {
    if let Some(rate) = o.rate {
        return run_latency(o, rate);
    }
    let busy_start = Busy::now();
    let cores = engine_env::cores();
    if !o.json {
        eprintln!("… floor");
    }
    let (floor, pinned) = handoff_floor::best_throughput(o.floor_items, 3, 1024, true)?;
    let systems: Vec<&str> =
        SYSTEMS.iter().copied().filter(|s| o.only.iter().any(|x| x == s)).collect();
    let mut runs: Vec<Vec<f64>> = vec![Vec::new(); systems.len()];
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); systems.len()];
    for round in 0..o.repeat {
        for (i, s) in systems.iter().enumerate() {
            if !o.json {
                eprintln!("… round {} of {}: {s}", round + 1, o.repeat);
            }
            let cpu0 = cpu_seconds(libc::RUSAGE_SELF)?;
            runs[i].push(run_one(s, o, cores)?);
            let cpu1 = cpu_seconds(libc::RUSAGE_SELF)?;
            cpu[i].push((cpu1 - cpu0) * 1e6 / o.jobs as f64);
        }
    }
    let busy_end = Busy::now();

    let mut r = Report::new(format!(
        "spindle-bench peers — {} no-op jobs per run, batches of {}, {} interleaved rounds, \
         one worker per core on {cores} cores\nmachine at start: {}; at end: {}",
        o.jobs,
        o.batch,
        o.repeat,
        busy_start.describe(),
        busy_end.describe(),
    ));
    let mut rows = Vec::new();
    let mut medians = Vec::new();
    for ((s, v), c) in systems.iter().zip(runs.iter_mut()).zip(cpu.iter_mut()) {
        let all: Vec<String> = v.iter().map(|x| format!("{:.3}", x / 1e6)).collect();
        let m = median(v);
        let c = median(c);
        medians.push((*s, m));
        rows.push(vec![
            s.to_string(),
            format!("{:.3}", m / 1e6),
            all.join(" "),
            format!("{c:.3}"),
            format!("{:.4}", m / floor),
        ]);
        r.set(&format!("{s}_jobs_per_sec"), m.round());
        r.set(&format!("{s}_cpu_us_per_job"), (c * 1000.0).round() / 1000.0);
    }
    r.table(
        "no-op jobs per second (median of the rounds)",
        &["system", "M jobs/s", "each round (M/s)", "CPU µs/job", "÷ floor"],
        rows,
    );
    r.note("CPU µs/job: user + system time of the whole process (producer, workers, idle spinning) over the run, per job");
    let best = medians
        .iter()
        .filter(|(s, _)| !s.starts_with("spindle"))
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .copied();
    if let Some((name, rate)) = best {
        r.set("best_peer", name);
        r.set("best_peer_jobs_per_sec", rate.round());
        for (s, m) in medians.iter().filter(|(s, _)| s.starts_with("spindle")) {
            r.set(&format!("{s}_vs_best_peer"), (m / rate * 1000.0).round() / 1000.0);
        }
    }
    handoff_floor::report_floor(&mut r, floor, pinned);
    r.set("cores", cores as u64);
    r.set("jobs", o.jobs);
    r.set("batch", o.batch as u64);
    r.set("repeat", o.repeat as u64);
    r.set(
        "rounds",
        json!(systems
            .iter()
            .zip(runs.iter())
            .map(|(s, v)| json!({"system": s, "jobs_per_sec": v}))
            .collect::<Vec<_>>()),
    );
    r.set("machine_at_start", busy_start.to_json());
    r.set("machine_at_end", busy_end.to_json());
    Ok(r)
}
