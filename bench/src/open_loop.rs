//! The `latency` scenario: dispatch and end-to-end latency at a fixed
//! offered rate, open loop, without coordinated omission.
//!
//! 1. A producer thread owns a schedule: job `i` is due at
//!    `t0 + i / rate`. It waits for each due time without sleeping past it
//!    (it sleeps only while more than 200 µs remain, then spins, yielding
//!    the CPU between checks), and submits the job with `submit`. A
//!    producer that falls behind does not slow the schedule down: it submits
//!    late jobs at once, and their lateness counts (that is what avoids
//!    coordinated omission).
//! 2. Each job's payload carries its index and its *intended* send time
//!    (nanoseconds since the scenario's epoch, one monotonic clock).
//! 3. The handler takes the time at its start and stores `start − intended`
//!    in the job's slot (no lock, no shared histogram); the slots become an
//!    HDR histogram afterwards: **e2e**, what a caller of a system with this
//!    arrival schedule would see up to the handler's start.
//! 4. **Dispatch** (ready → handler start) is the engine's own histogram,
//!    `Stats::dispatch`, as DESIGN.md defines it.
//! 5. **Floors** (`latency_floors.rs`): before the engine run, the same
//!    producer feeds a bare crossbeam consumer parked on another core,
//!    spinning on another core, and parked on the producer's own core; the
//!    best floor's p50 and p99 are the reference for submit→start.
//! 6. **Cores used**: the process's CPU time over the schedule (first due
//!    time → last handler start), less the producer thread's own, divided by
//!    that wall time.

use crate::args::Args;
use crate::burst_replay::cpu_seconds;
use crate::engine_env::{self, BenchEngine, Completion, QUEUE};
use crate::latency::{Latency, Percentiles};
use crate::latency_floors::{self, elapsed_ns, wait_until, Place};
use crate::report::Report;
use crate::system::Busy;
use crate::BoxResult;
use serde_json::json;
use spindle_engine::{Durability, Engine, Job, JobRef, Outcome};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Usage text of the scenario.
pub const USAGE: &str = "\
spindle-bench latency [options]
  --rate R           offered jobs per second (default 100000)
  --seconds S        duration of the schedule (default 5)
  --durability MODE  memory, process or sync (default process)
  --shards N         engine shards (default: one per core)
  --static-workers N keep N core workers active (Workers::Static) instead
                     of the lag controller (default: lag)
  --wait spin|yield  how the producer waits for a due time under 200 µs
                     away: pure spin or spin + sched_yield (default yield)
  --idle-spin US|max how long an idle worker spins before parking, in µs
                     (`Builder::idle_spin`; default: the engine's, 30)
  --floor-seconds S  duration of each of the three floor runs (default 2;
                     0 skips the floors)
  --dir PATH         parent directory for the logs (default: ./target, else
                     /var/tmp, else /tmp; sync refuses tmpfs)
  --json             print one JSON object instead of tables";

/// Parsed options.
#[derive(Debug, Clone)]
pub struct LatencyOpts {
    rate: f64,
    seconds: f64,
    durability: Durability,
    shards: Option<usize>,
    static_workers: Option<usize>,
    idle_spin: Option<Duration>,
    yield_wait: bool,
    floor_seconds: f64,
    dir: Option<PathBuf>,
    /// Print JSON.
    pub json: bool,
}

impl LatencyOpts {
    /// Options for another scenario's engine run (`peers --rate`): the
    /// lag controller, one shard per core, the producer yielding.
    pub fn new(rate: f64, seconds: f64, durability: Durability, dir: Option<PathBuf>) -> Self {
        LatencyOpts {
            rate,
            seconds,
            durability,
            shards: None,
            static_workers: None,
            idle_spin: None,
            yield_wait: true,
            floor_seconds: 0.0,
            dir,
            json: true,
        }
    }

    /// Reads the scenario's options.
    pub fn parse(mut a: Args) -> BoxResult<LatencyOpts> {
        let d: String = a.value_or("--durability", "process".to_string())?;
        let wait: String = a.value_or("--wait", "yield".to_string())?;
        let idle_spin = match a.value::<String>("--idle-spin")? {
            None => None,
            Some(v) if v == "max" => Some(Duration::MAX),
            Some(v) => Some(Duration::from_micros(
                v.parse().map_err(|_| format!("--idle-spin {v:?}: microseconds or max"))?,
            )),
        };
        let o = LatencyOpts {
            rate: a.value_or("--rate", 100_000.0)?,
            seconds: a.value_or("--seconds", 5.0)?,
            durability: engine_env::parse_durability(&d)?,
            shards: a.value("--shards")?,
            static_workers: a.value("--static-workers")?,
            idle_spin,
            yield_wait: match wait.as_str() {
                "yield" => true,
                "spin" => false,
                other => return Err(format!("--wait {other:?}: spin or yield").into()),
            },
            floor_seconds: a.value_or("--floor-seconds", 2.0)?,
            dir: a.value("--dir")?,
            json: a.flag("--json"),
        };
        a.finish()?;
        if !(o.rate > 0.0 && o.rate.is_finite() && o.seconds > 0.0 && o.seconds.is_finite()) {
            return Err("--rate and --seconds must be positive numbers".into());
        }
        if o.rate * o.seconds > 100_000_000.0 || o.rate * o.seconds < 1.0 {
            return Err("--rate × --seconds must be between 1 and 100,000,000 jobs".into());
        }
        if o.shards == Some(0) {
            return Err("--shards must be at least 1".into());
        }
        Ok(o)
    }
}

/// What the producer saw.
struct ProducerResult {
    /// Due time → submit call start (how late the producer was).
    late: Latency,
    /// Duration of the `submit` call.
    submit: Latency,
    /// Epoch → return of the last submit.
    last_submit_ns: u64,
    /// CPU seconds of the producer thread.
    cpu_s: f64,
}

/// Step 1: submits `n` jobs on schedule.
fn produce(
    engine: &Engine,
    epoch: Instant,
    t0_ns: u64,
    n: u64,
    rate: f64,
    yield_wait: bool,
) -> BoxResult<ProducerResult> {
    let mut late = Latency::new()?;
    let mut submit = Latency::new()?;
    let period = 1e9 / rate;
    let mut last = 0;
    for i in 0..n {
        let due = t0_ns + (i as f64 * period) as u64;
        wait_until(epoch, due, yield_wait);
        let before = elapsed_ns(epoch);
        let mut payload = Vec::with_capacity(16);
        payload.extend_from_slice(&i.to_le_bytes());
        payload.extend_from_slice(&due.to_le_bytes());
        engine.submit(Job::new(QUEUE, payload))?;
        last = elapsed_ns(epoch);
        late.record(Duration::from_nanos(before - due));
        submit.record(Duration::from_nanos(last - before));
    }
    let cpu_s = cpu_seconds(libc::RUSAGE_THREAD)?;
    Ok(ProducerResult { late, submit, last_submit_ns: last, cpu_s })
}

/// One engine run of the schedule (steps 1-4 and 6).
pub struct EngineRun {
    /// Intended send time → handler start.
    pub e2e: Percentiles,
    late: Percentiles,
    submit: Percentiles,
    /// Jobs per second submitted and completed over the schedule.
    pub achieved: f64,
    pub completed_rate: f64,
    /// Cores used, the producer thread excluded.
    pub cores_used: f64,
    stats: spindle_engine::Stats,
    shards: usize,
    fs_type: String,
}

/// Runs the engine part of the scenario with `o`'s settings.
pub fn measure_engine(o: &LatencyOpts) -> BoxResult<EngineRun> {
    let n = (o.rate * o.seconds).round() as u64;
    let be = BenchEngine::build_tuned(
        o.durability,
        o.shards,
        o.static_workers,
        o.dir.as_deref(),
        o.idle_spin,
    )?;
    let engine = be.engine.clone();
    let epoch = Instant::now();
    // Step 3's slots: handler start − intended send time, per job.
    let slots: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
    let (done, done_rx) = Completion::new(n);
    let done = Arc::new(done);
    {
        let (slots, done) = (slots.clone(), done.clone());
        engine.register(QUEUE, move |job: &JobRef<'_>| {
            let now = elapsed_ns(epoch);
            let p = job.payload();
            if let (Some(i), Some(due)) = (word(p, 0), word(p, 1)) {
                if let Some(slot) = slots.get(i as usize) {
                    slot.store(now.saturating_sub(due).max(1), Ordering::Relaxed);
                }
            }
            done.one();
            Outcome::Done
        })?;
    }
    // Start the schedule a little later so registration has reached every
    // shard and the shards have gone idle.
    let t0_ns = elapsed_ns(epoch) + 20_000_000;
    let rate = o.rate;
    let yield_wait = o.yield_wait;
    let producer = {
        let engine = engine.clone();
        std::thread::Builder::new()
            .name("bench-producer".into())
            .spawn(move || produce(&engine, epoch, t0_ns, n, rate, yield_wait))?
    };
    let cpu0 = cpu_seconds(libc::RUSAGE_SELF)?;
    let prod = producer.join().map_err(|_| "producer panicked")??;
    let finished = engine_env::wait_done(&done_rx, &done, Duration::from_secs(600))?;
    let cpu1 = cpu_seconds(libc::RUSAGE_SELF)?;
    let last_done_ns = u64::try_from(finished.duration_since(epoch).as_nanos()).unwrap_or(0);
    let stats = engine_env::stats_when_completed(&engine, n);
    let shards = engine.shards();
    let fs_type = be.fs_type();
    drop(engine);
    be.shutdown()?;

    let mut e2e = Latency::new()?;
    let mut missing = 0u64;
    for s in slots.iter() {
        match s.load(Ordering::Relaxed) {
            0 => missing += 1,
            ns => e2e.record(Duration::from_nanos(ns)),
        }
    }
    if missing > 0 {
        return Err(format!("{missing} jobs never recorded their start").into());
    }
    let e2e = e2e.percentiles();
    let late = prod.late.percentiles();
    let submit = prod.submit.percentiles();
    let achieved = n as f64 / ((prod.last_submit_ns.saturating_sub(t0_ns)) as f64 / 1e9);
    let completed_rate = n as f64 / ((last_done_ns.saturating_sub(t0_ns)) as f64 / 1e9);
    // Step 6 (the 20 ms before the schedule starts are idle and counted).
    let wall_s = last_done_ns.saturating_sub(t0_ns.saturating_sub(20_000_000)) as f64 / 1e9;
    let cores_used = ((cpu1 - cpu0 - prod.cpu_s) / wall_s).max(0.0);
    Ok(EngineRun {
        e2e,
        late,
        submit,
        achieved,
        completed_rate,
        cores_used,
        stats,
        shards,
        fs_type,
    })
}

/// Runs the scenario.
pub fn run(o: &LatencyOpts) -> BoxResult<Report> {
    let busy_start = Busy::now();
    let cores = engine_env::cores();
    let n = (o.rate * o.seconds).round() as u64;
    // Step 5: the floors, before the engine exists.
    let floor_n = (o.rate * o.floor_seconds).round() as u64;
    let mut floors = Vec::new();
    if floor_n > 0 {
        for place in Place::ALL {
            if !o.json {
                eprintln!("… floor: {}", place.label());
            }
            floors.push((place, latency_floors::measure(place, o.rate, floor_n, o.yield_wait)?));
        }
    }
    let EngineRun {
        e2e,
        late,
        submit,
        achieved,
        completed_rate,
        cores_used,
        stats,
        shards,
        fs_type,
    } = measure_engine(o)?;
    let busy_end = Busy::now();
    let mode = engine_env::durability_name(o.durability);

    let mut r = Report::new(format!(
        "spindle-bench latency — open loop at {} jobs/s for {} s ({n} jobs), {mode} durability, {shards} shards on {cores} cores\n\
         logs on {fs_type}; machine at start: {}; at end: {}",
        o.rate,
        o.seconds,
        busy_start.describe(),
        busy_end.describe(),
    ));
    r.section("rate");
    r.metric("offered_rate", "offered", o.rate, "jobs/s");
    r.metric("achieved_rate", "submitted (schedule start → last submit)", achieved, "jobs/s");
    r.metric(
        "completed_rate",
        "completed (schedule start → last completion)",
        completed_rate,
        "jobs/s",
    );
    let mut rows = vec![vec![
        format!("Spindle, {mode}"),
        format!("{:.1}", e2e.p50_us),
        format!("{:.1}", e2e.p99_us),
        format!("{:.1}", e2e.p999_us),
    ]];
    for (place, p) in &floors {
        rows.push(vec![
            place.label().to_string(),
            format!("{:.1}", p.p50_us),
            format!("{:.1}", p.p99_us),
            format!("{:.1}", p.p999_us),
        ]);
        r.set(&format!("{}_p50_us", place.key()), p.p50_us);
        r.set(&format!("{}_p99_us", place.key()), p.p99_us);
        r.set(&format!("{}_p999_us", place.key()), p.p999_us);
    }
    r.table(
        "submit→start (intended send time → handler start, µs), beside the same producer's floors",
        &["system", "p50", "p99", "p99.9"],
        rows,
    );
    r.section("against the floors");
    r.set("submit_to_start_p50_us", e2e.p50_us);
    r.set("submit_to_start_p99_us", e2e.p99_us);
    r.set("submit_to_start_p999_us", e2e.p999_us);
    if let (Some(b50), Some(b99)) = (
        floors.iter().map(|f| f.1.p50_us).min_by(f64::total_cmp),
        floors.iter().map(|f| f.1.p99_us).min_by(f64::total_cmp),
    ) {
        r.metric("floor_best_p50_us", "best floor p50", b50, "µs");
        r.metric("floor_best_p99_us", "best floor p99", b99, "µs");
        r.metric("p50_vs_best_floor", "Spindle p50 ÷ best floor p50", e2e.p50_us / b50, "x");
        r.metric("p99_vs_best_floor", "Spindle p99 ÷ best floor p99", e2e.p99_us / b99, "x");
    }
    r.metric("cpu_cores_used", "cores used, producer thread excluded", cores_used, "cores");
    r.section("dispatch (engine stats: ready → handler start)");
    r.metric("dispatch_p50_us", "p50", stats.dispatch.p50_us, "µs");
    r.metric("dispatch_p99_us", "p99", stats.dispatch.p99_us, "µs");
    r.metric("dispatch_p999_us", "p99.9", stats.dispatch.p999_us, "µs");
    r.metric("dispatch_max_us", "max", stats.dispatch.max_us, "µs");
    r.section("e2e (intended send time → handler start, no coordinated omission)");
    r.metric("e2e_p50_us", "p50", e2e.p50_us, "µs");
    r.metric("e2e_p99_us", "p99", e2e.p99_us, "µs");
    r.metric("e2e_p999_us", "p99.9", e2e.p999_us, "µs");
    r.metric("e2e_max_us", "max", e2e.max_us, "µs");
    r.section("producer");
    r.metric("submit_p50_us", "submit call p50", submit.p50_us, "µs");
    r.metric("submit_p99_us", "submit call p99", submit.p99_us, "µs");
    r.metric("submit_p999_us", "submit call p99.9", submit.p999_us, "µs");
    r.metric("producer_late_p99_us", "due → submit start p99", late.p99_us, "µs");
    r.metric("producer_late_max_us", "due → submit start max", late.max_us, "µs");
    r.section("engine's own end to end (submit call → handler done)");
    r.metric("engine_end_to_end_p50_us", "p50", stats.end_to_end.p50_us, "µs");
    r.metric("engine_end_to_end_p99_us", "p99", stats.end_to_end.p99_us, "µs");
    r.metric(
        "jobs_stolen",
        "jobs run by a non-owner shard",
        engine_env::stolen(&stats) as f64,
        "jobs",
    );
    r.set("durability", mode);
    r.set("shards", shards as u64);
    r.set("cores", cores as u64);
    r.set("jobs", n);
    r.set("fs_type", fs_type);
    r.set("producer_wait", if o.yield_wait { "yield" } else { "spin" });
    r.set("pinned_cores", stats.shards.iter().map(|s| json!(s.pinned_core)).collect::<Vec<_>>());
    r.set("machine_at_start", busy_start.to_json());
    r.set("machine_at_end", busy_end.to_json());
    Ok(r)
}

/// The `k`-th little-endian u64 of `p`.
fn word(p: &[u8], k: usize) -> Option<u64> {
    let b: [u8; 8] = p.get(k * 8..k * 8 + 8)?.try_into().ok()?;
    Some(u64::from_le_bytes(b))
}
