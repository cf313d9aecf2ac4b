//! The `burst` scenario: one reproducible bursty trace of CPU-bound jobs
//! replayed against four worker policies on the same cores.
//!
//! 1. Calibrate the CPU work loop (`burst_trace.rs`; `--iters-per-us` skips
//!    it to replay another run's exact work). Capacity is
//!    `workers / mean work`; the base and burst rates are fractions of it.
//! 2. For each seed, build one Markov-modulated Poisson trace (OFF at the
//!    base rate, ON at the burst rate, exponential sojourns).
//! 3. For each policy (`static-monolithic`, `static-sharded`, `always-max`,
//!    `lag`), build it fresh, replay the trace (`burst_replay.rs`), wait for
//!    the last job, shut it down, and compute from the per-job latencies and
//!    the samples:
//!    - queue latency percentiles (handler start − *scheduled* arrival);
//!    - CPU seconds (`getrusage` over the replay, harness threads included
//!      and also reported apart);
//!    - worker-seconds (active core workers plus blocking threads,
//!      integrated over `--stats-ms` samples; a fixed pool counts all its
//!      threads);
//!    - the largest backlog (submitted − started);
//!    - drain time after each burst: from the end of an ON period until the
//!      backlog is back at or below its level when that ON period began
//!      (1 ms samples), median over bursts;
//!    - reversals per minute: direction changes of the worker count;
//!    - a 100 ms time series (offered rate, backlog, workers, p99 of the
//!      jobs started in the window) for the plot.
//! 4. Unless `--no-max-rate`: a staircase of steady Poisson loads at rising
//!    fractions of capacity, `--max-rate-seconds` each, on one freshly built
//!    instance of the policy; the highest step whose jobs' p99 stays under
//!    the target is its `max_rate`; the search stops at the first failure.
//! 5. Report the median of each figure over the seeds; `--plot` draws the
//!    first seed's time series (`burst_plot.rs`).

use crate::args::Args;
use crate::burst_plot;
use crate::burst_replay::{
    replay, Policy, PolicyConfig, Recorder, ReplayCtx, Replayed, Work, WorkerSample,
};
use crate::burst_trace::{self, BurstSpec, CpuWork, Trace, WorkDist};
use crate::latency::Latency;
use crate::report::{format_number, json_number, Report};
use crate::system::Busy;
use crate::BoxResult;
use serde_json::{Map, Value};
use std::path::PathBuf;
use std::time::Duration;

/// Usage text of the scenario.
pub const USAGE: &str = "\
spindle-bench burst [options]
  One seeded bursty trace (Poisson base load with on/off bursts) of jobs
  doing real CPU work, replayed against four policies on the same cores:
  static-monolithic (one locked queue + condvar, fixed threads),
  static-sharded (engine, all workers, no stealing), always-max (engine,
  all workers busy-polling) and lag (engine, lag controller).

  --workers N           worker threads / shards (default: available cores)
  --seconds S           length of the trace (default 30)
  --seeds K             traces to run every policy on; figures are medians
                        (default 3)
  --seed X              first seed; seed k is X + k (default 1)
  --work-us U           mean work per job, µs (default 50)
  --iters-per-us R      skip the calibration of the CPU work loop and use
                        this rate (a previous run's iters_per_us, to offer
                        exactly the same work; default: calibrate)
  --heavy-tail          draw work from a bounded Pareto (alpha 1.5, max/min
                        1000) with the same mean (default: every job U µs)
  --io                  jobs sleep for their work instead of computing; lag
                        registers the queue as blocking (default off)
  --base-load F         OFF-state rate as a fraction of capacity, capacity =
                        workers / mean work (default 0.1)
  --burst-load F        ON-state rate as a fraction of capacity (default 0.6)
  --off-s S             mean OFF period, seconds (default 4)
  --on-s S              mean ON period, seconds (default 1)
  --target-ms T         p99 queue latency target: lag's latency_target and
                        the max-rate pass mark (default 1, the
                        engine's default latency_target)
  --policies LIST       comma-separated subset of static-monolithic,
                        static-sharded, always-max, lag (default: all four)
  --no-max-rate         skip the max sustainable rate search
  --max-rate-seconds S  length of each max-rate step (default 2)
  --spin-us U           the generator sleeps until U µs before a due time,
                        then spins (default 10)
  --stats-ms M          sample the engine's worker counts
                        (Engine::workers(), no shard wake-up) every M ms
                        (default 10)
  --plot FILE.svg       draw offered rate, backlog, workers and rolling p99
                        over time (first seed) as SVG
  --quiet               no progress line on stderr
  --json                print one JSON object instead of the table";

/// Fractions of capacity the max-rate staircase climbs.
const MAX_RATE_STEPS: [f64; 10] = [0.3, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0];

/// Width of a time-series window.
const WINDOW_NS: u64 = 100_000_000;

/// Parsed options.
#[derive(Debug, Clone)]
pub struct BurstOpts {
    workers: usize,
    seconds: f64,
    seeds: u64,
    seed: u64,
    work_us: f64,
    iters_per_us: Option<f64>,
    heavy_tail: bool,
    io: bool,
    base_load: f64,
    burst_load: f64,
    off_s: f64,
    on_s: f64,
    target_ms: f64,
    policies: Vec<Policy>,
    max_rate: bool,
    max_rate_seconds: f64,
    spin_us: f64,
    stats_ms: u32,
    plot: Option<PathBuf>,
    quiet: bool,
    /// Print JSON.
    pub json: bool,
}

impl BurstOpts {
    /// Reads the scenario's options.
    pub fn parse(mut a: Args) -> BoxResult<BurstOpts> {
        let cores = crate::engine_env::cores();
        let policies: Option<String> = a.value("--policies")?;
        let policies = match policies {
            None => Policy::ALL.to_vec(),
            Some(list) => {
                list.split(',').map(|s| Policy::parse(s.trim())).collect::<Result<_, _>>()?
            }
        };
        let o = BurstOpts {
            workers: a.value_or("--workers", cores)?,
            seconds: a.value_or("--seconds", 30.0)?,
            seeds: a.value_or("--seeds", 3)?,
            seed: a.value_or("--seed", 1)?,
            work_us: a.value_or("--work-us", 50.0)?,
            iters_per_us: a.value("--iters-per-us")?,
            heavy_tail: a.flag("--heavy-tail"),
            io: a.flag("--io"),
            base_load: a.value_or("--base-load", 0.1)?,
            burst_load: a.value_or("--burst-load", 0.6)?,
            off_s: a.value_or("--off-s", 4.0)?,
            on_s: a.value_or("--on-s", 1.0)?,
            target_ms: a.value_or("--target-ms", 1.0)?,
            policies,
            max_rate: !a.flag("--no-max-rate"),
            max_rate_seconds: a.value_or("--max-rate-seconds", 2.0)?,
            spin_us: a.value_or("--spin-us", 10.0)?,
            stats_ms: a.value_or("--stats-ms", 10)?,
            plot: a.value("--plot")?,
            quiet: a.flag("--quiet"),
            json: a.flag("--json"),
        };
        a.finish()?;
        let positive = |v: f64| v > 0.0 && v.is_finite();
        if o.workers == 0 || o.workers > 1024 {
            return Err("--workers must be between 1 and 1024".into());
        }
        if o.seeds == 0 || o.seeds > 1000 {
            return Err("--seeds must be between 1 and 1000".into());
        }
        if !(positive(o.seconds) && o.seconds <= 3600.0) {
            return Err("--seconds must be positive and at most 3600".into());
        }
        if !(positive(o.work_us) && o.work_us <= 1e6) {
            return Err("--work-us must be positive and at most 1000000".into());
        }
        if !(o.base_load >= 0.0 && o.base_load <= 10.0 && positive(o.burst_load))
            || o.burst_load > 10.0
        {
            return Err("--base-load must be in [0, 10], --burst-load in (0, 10]".into());
        }
        if o.iters_per_us.is_some_and(|r| !(positive(r) && r < 1e6)) {
            return Err("--iters-per-us must be positive".into());
        }
        if !(positive(o.off_s) && positive(o.on_s) && positive(o.target_ms)) {
            return Err("--off-s, --on-s and --target-ms must be positive".into());
        }
        if !(positive(o.max_rate_seconds) && o.max_rate_seconds <= 600.0) {
            return Err("--max-rate-seconds must be positive and at most 600".into());
        }
        if !(o.spin_us >= 0.0 && o.spin_us <= 1e6) {
            return Err("--spin-us must be in [0, 1000000]".into());
        }
        if o.stats_ms == 0 || o.stats_ms > 60_000 {
            return Err("--stats-ms must be between 1 and 60000".into());
        }
        if o.policies.is_empty() {
            return Err("--policies names no policy".into());
        }
        let jobs = o.burst_load.max(o.base_load) * o.workers as f64 / (o.work_us * 1e-6)
            * o.seconds.max(o.max_rate_seconds * MAX_RATE_STEPS.len() as f64);
        if jobs > 200_000_000.0 {
            return Err("the load would need more than 200,000,000 jobs per run".into());
        }
        Ok(o)
    }

    fn capacity(&self) -> f64 {
        self.workers as f64 / (self.work_us * 1e-6)
    }

    fn work_dist(&self) -> WorkDist {
        WorkDist::new(Duration::from_secs_f64(self.work_us * 1e-6), self.heavy_tail)
    }

    fn policy_config(&self) -> PolicyConfig {
        PolicyConfig {
            workers: self.workers,
            latency_target: Duration::from_secs_f64(self.target_ms * 1e-3),
            io: self.io,
        }
    }
}

/// A policy's time series, one point per 100 ms window.
#[derive(Debug, Clone, Default)]
pub struct Series {
    /// Window start, seconds after the trace's start.
    pub t_s: Vec<f64>,
    /// Scheduled arrivals in the window, jobs/s.
    pub offered: Vec<f64>,
    /// Largest backlog (submitted − started) sampled in the window (NaN if
    /// the sampler did not run in it).
    pub backlog: Vec<f64>,
    /// Mean worker count sampled in the window.
    pub workers: Vec<f64>,
    /// p99 queue latency of the jobs that started in the window, ms (NaN
    /// if none started).
    pub p99_ms: Vec<f64>,
}

/// The figures of one replay (or their medians over seeds).
#[derive(Debug, Clone, Copy, Default)]
struct Figures {
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
    cpu_seconds: f64,
    harness_cpu_seconds: f64,
    worker_seconds: f64,
    max_backlog: f64,
    drain_ms: f64,
    reversals_per_min: f64,
    max_rate: f64,
    generator_late_p99_ms: f64,
    foreign_cpu_seconds: f64,
    jobs: f64,
}

/// The figures in report order: JSON key, table header, accessor. The
/// first [`MAIN_COLUMNS`] make the main table, the rest the harness table.
type Column = (&'static str, &'static str, fn(&Figures) -> f64);
const MAIN_COLUMNS: usize = 10;
const COLUMNS: [Column; 14] = [
    ("p50_ms", "p50 ms", |f| f.p50_ms),
    ("p99_ms", "p99 ms", |f| f.p99_ms),
    ("p999_ms", "p99.9 ms", |f| f.p999_ms),
    ("max_ms", "max ms", |f| f.max_ms),
    ("cpu_seconds", "CPU s", |f| f.cpu_seconds),
    ("worker_seconds", "worker s", |f| f.worker_seconds),
    ("max_backlog", "max backlog", |f| f.max_backlog),
    ("drain_ms", "drain ms", |f| f.drain_ms),
    ("reversals_per_min", "reversals/min", |f| f.reversals_per_min),
    ("max_rate", "max rate jobs/s", |f| f.max_rate),
    ("harness_cpu_seconds", "harness CPU s", |f| f.harness_cpu_seconds),
    ("generator_late_p99_ms", "gen late p99 ms", |f| f.generator_late_p99_ms),
    ("foreign_cpu_seconds", "other procs CPU s", |f| f.foreign_cpu_seconds),
    ("jobs", "jobs", |f| f.jobs),
];

/// Runs the scenario.
pub fn run(o: &BurstOpts) -> BoxResult<Report> {
    let busy_start = Busy::now();
    let cores = crate::engine_env::cores();
    let cpu = o.iters_per_us.map_or_else(CpuWork::calibrate, CpuWork::with_rate);
    let work = if o.io { Work::Sleep } else { Work::Cpu(cpu) };
    let capacity = o.capacity();
    let spec = BurstSpec {
        seconds: o.seconds,
        base_rate: o.base_load * capacity,
        burst_rate: o.burst_load * capacity,
        mean_off_s: o.off_s,
        mean_on_s: o.on_s,
        work: o.work_dist(),
    };
    let cfg = o.policy_config();
    let mut per_policy: Vec<Vec<Figures>> = vec![Vec::new(); o.policies.len()];
    let mut series: Vec<Series> = vec![Series::default(); o.policies.len()];
    let mut first_bursts = Vec::new();
    for k in 0..o.seeds {
        let seed = o.seed.wrapping_add(k);
        let trace = burst_trace::bursty(&spec, seed);
        if k == 0 {
            first_bursts.clone_from(&trace.bursts);
        }
        for (pi, &policy) in o.policies.iter().enumerate() {
            let label = format!("{} seed {}/{}", policy.name(), k + 1, o.seeds);
            let (mut fig, s) = burst_run(o, policy, &cfg, work, &trace, &label)?;
            if o.max_rate {
                let (rate, foreign) = max_rate(o, policy, &cfg, work, seed, &label)?;
                fig.max_rate = rate;
                fig.foreign_cpu_seconds += foreign;
            }
            if k == 0 {
                series[pi] = s;
            }
            per_policy[pi].push(fig);
        }
    }
    let medians: Vec<Figures> = per_policy.iter().map(|v| median_figures(v)).collect();
    let foreign_max = per_policy
        .iter()
        .flatten()
        .map(|f| f.foreign_cpu_seconds)
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max);
    if let Some(path) = &o.plot {
        let lines: Vec<(&str, &Series)> =
            o.policies.iter().map(|p| p.name()).zip(series.iter()).collect();
        burst_plot::draw(path, &lines, &first_bursts, o.target_ms, capacity)?;
    }
    let machine = (busy_start, Busy::now(), foreign_max);
    Ok(report(o, cores, capacity, &spec, cpu, &medians, machine))
}

/// Step 3: one policy on one trace.
fn burst_run(
    o: &BurstOpts,
    policy: Policy,
    cfg: &PolicyConfig,
    work: Work,
    trace: &Trace,
    label: &str,
) -> BoxResult<(Figures, Series)> {
    let rec = Recorder::new(trace.arrivals.len(), work);
    let target = policy.build(cfg, &rec)?;
    // Let registration reach every shard and the workers settle.
    std::thread::sleep(Duration::from_millis(100));
    let ctx = ReplayCtx {
        target: &target,
        rec: &rec,
        first_idx: 0,
        spin_ns: (o.spin_us * 1000.0) as u64,
        progress: (!o.quiet).then(|| label.to_string()),
        stats_every: o.stats_ms,
    };
    let r = replay(&ctx, trace);
    target.shutdown()?;
    let r = r?;
    std::thread::sleep(Duration::from_millis(200));
    measure(&rec, trace, &r, o.workers)
}

/// Step 4: the highest steady rate with p99 under the target, and the CPU
/// seconds other processes used during the search.
fn max_rate(
    o: &BurstOpts,
    policy: Policy,
    cfg: &PolicyConfig,
    work: Work,
    seed: u64,
    label: &str,
) -> BoxResult<(f64, f64)> {
    let dist = o.work_dist();
    let steps: Vec<(f64, Trace)> = MAX_RATE_STEPS
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let rate = f * o.capacity();
            let s = seed.wrapping_mul(1_000_003).wrapping_add(i as u64 + 1);
            (rate, burst_trace::steady(rate, o.max_rate_seconds, &dist, s))
        })
        .collect();
    let total: usize = steps.iter().map(|(_, t)| t.arrivals.len()).sum();
    let rec = Recorder::new(total, work);
    let target = policy.build(cfg, &rec)?;
    std::thread::sleep(Duration::from_millis(100));
    let target_ns = o.target_ms * 1e6;
    let mut best = 0.0;
    let mut foreign = 0.0;
    let mut first_idx = 0;
    let mut result = Ok(());
    for ((rate, trace), f) in steps.iter().zip(MAX_RATE_STEPS) {
        let ctx = ReplayCtx {
            target: &target,
            rec: &rec,
            first_idx,
            spin_ns: (o.spin_us * 1000.0) as u64,
            progress: (!o.quiet).then(|| format!("{label} max-rate {:.0}%", f * 100.0)),
            stats_every: o.stats_ms,
        };
        match replay(&ctx, trace) {
            Ok(r) => foreign += r.foreign_cpu_seconds,
            Err(e) => {
                result = Err(e);
                break;
            }
        }
        let mut lat: Vec<u64> = (first_idx..first_idx + trace.arrivals.len())
            .map(|i| rec.latency_ns(i).unwrap_or(u64::MAX))
            .collect();
        first_idx += trace.arrivals.len();
        if quantile(&mut lat, 0.99).is_some_and(|p99| p99 as f64 <= target_ns) {
            best = *rate;
        } else {
            break;
        }
    }
    target.shutdown()?;
    std::thread::sleep(Duration::from_millis(200));
    result.map(|()| (best, foreign))
}

/// Step 3's figures and series from one replay.
fn measure(
    rec: &Recorder,
    trace: &Trace,
    r: &Replayed,
    workers: usize,
) -> BoxResult<(Figures, Series)> {
    let n = trace.arrivals.len();
    let end = r.end_ns as i64;
    let mut hist = Latency::new()?;
    let mut lat = Vec::with_capacity(n);
    for i in 0..n {
        let ns = rec
            .latency_ns(r.first_idx + i)
            .ok_or_else(|| format!("job {i} completed without recording its start"))?;
        hist.record(Duration::from_nanos(ns));
        lat.push(ns);
    }
    let p = hist.percentiles();

    // Worker counts: the engine's samples, or the fixed pool.
    let fixed = [(0i64, WorkerSample { active: workers, blocking: 0 })];
    let wsamples: &[(i64, WorkerSample)] = if r.workers.is_empty() { &fixed } else { &r.workers };
    let count = |w: &WorkerSample| (w.active + w.blocking) as f64;
    let mut worker_ns = 0.0;
    for (k, (t, w)) in wsamples.iter().enumerate() {
        let from = if k == 0 { 0 } else { (*t).clamp(0, end) };
        let to = wsamples.get(k + 1).map_or(end, |x| x.0).clamp(0, end);
        worker_ns += count(w) * (to - from).max(0) as f64;
    }
    let mut reversals = 0u64;
    let mut last_dir = 0i64;
    for pair in wsamples.windows(2) {
        let d = (count(&pair[1].1) - count(&pair[0].1)).signum() as i64;
        if d != 0 {
            if last_dir != 0 && d != last_dir {
                reversals += 1;
            }
            last_dir = d;
        }
    }
    let minutes = r.end_ns as f64 / 60e9;

    let max_backlog =
        r.backlog.iter().map(|&(_, b)| b).max().unwrap_or(0).max(r.max_backlog_at_submit);
    let mut drains: Vec<f64> = trace
        .bursts
        .iter()
        .filter_map(|&(on, off)| drain_ns(&r.backlog, on as i64, off as i64))
        .map(|ns| ns as f64 / 1e6)
        .collect();

    let series = series(trace, r, &lat, wsamples, workers);
    let fig = Figures {
        p50_ms: p.p50_us / 1e3,
        p99_ms: p.p99_us / 1e3,
        p999_ms: p.p999_us / 1e3,
        max_ms: p.max_us / 1e3,
        cpu_seconds: r.cpu_seconds,
        harness_cpu_seconds: r.harness_cpu_seconds,
        worker_seconds: worker_ns / 1e9,
        max_backlog: max_backlog as f64,
        drain_ms: median(&mut drains),
        reversals_per_min: if minutes > 0.0 { reversals as f64 / minutes } else { 0.0 },
        max_rate: f64::NAN,
        generator_late_p99_ms: r.generator_late.percentiles().p99_us / 1e3,
        foreign_cpu_seconds: r.foreign_cpu_seconds,
        jobs: n as f64,
    };
    Ok((fig, series))
}

/// Time from the end of an ON period (`off`) until the backlog is back at
/// or below its level at the period's start (`on`).
fn drain_ns(backlog: &[(i64, u64)], on: i64, off: i64) -> Option<i64> {
    let before = backlog.partition_point(|&(t, _)| t < on);
    let level = before.checked_sub(1).map_or(0, |i| backlog[i].1);
    let after = backlog.partition_point(|&(t, _)| t < off);
    backlog[after..].iter().find(|&&(_, b)| b <= level).map(|&(t, _)| t - off)
}

/// The 100 ms time series.
fn series(
    trace: &Trace,
    r: &Replayed,
    lat: &[u64],
    wsamples: &[(i64, WorkerSample)],
    workers: usize,
) -> Series {
    let len = r.end_ns.max(trace.len_ns);
    let windows = len.div_ceil(WINDOW_NS).max(1) as usize;
    let win = |t: i64| (t.max(0) as u64 / WINDOW_NS) as usize;
    let per_sec = 1e9 / WINDOW_NS as f64;
    let mut s = Series {
        t_s: (0..windows).map(|w| w as f64 * WINDOW_NS as f64 / 1e9).collect(),
        offered: vec![0.0; windows],
        backlog: vec![f64::NAN; windows],
        workers: vec![f64::NAN; windows],
        p99_ms: vec![f64::NAN; windows],
    };
    let mut started: Vec<Vec<u64>> = vec![Vec::new(); windows];
    for (a, &l) in trace.arrivals.iter().zip(lat) {
        if let Some(o) = s.offered.get_mut(win(a.at_ns as i64)) {
            *o += per_sec;
        }
        if let Some(v) = started.get_mut(win((a.at_ns + l) as i64)) {
            v.push(l);
        }
    }
    for (v, p) in started.iter_mut().zip(s.p99_ms.iter_mut()) {
        if let Some(q) = quantile(v, 0.99) {
            *p = q as f64 / 1e6;
        }
    }
    for &(t, b) in &r.backlog {
        if let Some(x) = s.backlog.get_mut(win(t)) {
            *x = if x.is_nan() { b as f64 } else { x.max(b as f64) };
        }
    }
    let mut sums = vec![(0.0, 0u32); windows];
    for (t, w) in wsamples {
        if let Some(x) = sums.get_mut(win(*t)) {
            x.0 += (w.active + w.blocking) as f64;
            x.1 += 1;
        }
    }
    let mut last = wsamples.first().map_or(workers as f64, |(_, w)| (w.active + w.blocking) as f64);
    for (x, (sum, k)) in s.workers.iter_mut().zip(sums) {
        if k > 0 {
            last = sum / f64::from(k);
        }
        *x = last;
    }
    s
}

/// The `q` quantile of `v` (reorders it); `None` if empty.
fn quantile(v: &mut [u64], q: f64) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
    Some(*v.select_nth_unstable(rank).1)
}

/// Median of the finite values (NaN if there are none).
fn median(v: &mut Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// Field-wise medians over seeds.
fn median_figures(v: &[Figures]) -> Figures {
    let m = |f: fn(&Figures) -> f64| median(&mut v.iter().map(f).collect());
    Figures {
        p50_ms: m(|f| f.p50_ms),
        p99_ms: m(|f| f.p99_ms),
        p999_ms: m(|f| f.p999_ms),
        max_ms: m(|f| f.max_ms),
        cpu_seconds: m(|f| f.cpu_seconds),
        harness_cpu_seconds: m(|f| f.harness_cpu_seconds),
        worker_seconds: m(|f| f.worker_seconds),
        max_backlog: m(|f| f.max_backlog),
        drain_ms: m(|f| f.drain_ms),
        reversals_per_min: m(|f| f.reversals_per_min),
        max_rate: m(|f| f.max_rate),
        generator_late_p99_ms: m(|f| f.generator_late_p99_ms),
        foreign_cpu_seconds: m(|f| f.foreign_cpu_seconds),
        jobs: m(|f| f.jobs),
    }
}

/// Step 5: the table and the JSON object.
fn report(
    o: &BurstOpts,
    cores: usize,
    capacity: f64,
    spec: &BurstSpec,
    cpu: CpuWork,
    medians: &[Figures],
    (busy_start, busy_end, foreign_max): (Busy, Busy, f64),
) -> Report {
    let kind = match (o.io, o.heavy_tail) {
        (false, false) => "CPU",
        (false, true) => "heavy-tailed CPU",
        (true, false) => "sleeping (I/O)",
        (true, true) => "heavy-tailed sleeping (I/O)",
    };
    let mut r = Report::new(format!(
        "spindle-bench burst — {} workers on {cores} cores, {} s bursty trace, {} µs {kind} jobs, \
         medians over {} seed(s)\n\
         capacity {} jobs/s; OFF {} jobs/s (mean {} s), ON {} jobs/s (mean {} s); p99 target {} ms\n\
         machine at start: {}; at end: {}",
        o.workers,
        o.seconds,
        o.work_us,
        o.seeds,
        format_number(capacity),
        format_number(spec.base_rate),
        o.off_s,
        format_number(spec.burst_rate),
        o.on_s,
        o.target_ms,
        busy_start.describe(),
        busy_end.describe(),
    ));
    let table = |cols: &[Column]| {
        let mut header = vec!["policy"];
        header.extend(cols.iter().map(|c| c.1));
        let rows = o
            .policies
            .iter()
            .zip(medians)
            .map(|(p, f)| {
                let mut row = vec![p.name().to_string()];
                row.extend(cols.iter().map(|c| format_number(c.2(f))));
                row
            })
            .collect();
        (header, rows)
    };
    let (header, rows) = table(&COLUMNS[..MAIN_COLUMNS]);
    r.table("policies (queue latency = handler start − scheduled arrival)", &header, rows);
    let (header, rows) = table(&COLUMNS[MAIN_COLUMNS..]);
    r.table("harness and noise", &header, rows);
    r.note(
        "CPU s: getrusage of the whole process over each replay, harness threads included \
         (harness CPU s: the generator and the sampler)",
    );
    r.note(format!(
        "worker s: active core workers plus blocking threads (sampled every {} ms), or the \
         fixed pool; reversals: direction changes of that count",
        o.stats_ms
    ));
    r.note(
        "drain: end of a burst until the backlog is back at its pre-burst level, median over \
         bursts",
    );
    r.note(format!(
        "max rate: highest of {}% of capacity, steady Poisson for {} s each, with p99 ≤ {} ms{}",
        MAX_RATE_STEPS.map(|f| format!("{:.0}", f * 100.0)).join("/"),
        o.max_rate_seconds,
        o.target_ms,
        if o.max_rate { "" } else { " (skipped: --no-max-rate)" },
    ));
    r.note(
        "other procs CPU s: machine-wide busy CPU (/proc/stat) minus this process's, over the \
         burst replay and the max-rate search; gen late: due time → submit call",
    );
    r.note(format!(
        "work loop {} at {:.1} iterations/µs; trace seeds {}..={}",
        if o.iters_per_us.is_some() { "set by --iters-per-us" } else { "calibrated" },
        cpu.iters_per_us(),
        o.seed,
        o.seed.wrapping_add(o.seeds - 1)
    ));
    if o.heavy_tail {
        r.note(format!(
            "heavy tail: bounded Pareto, alpha 1.5, mean {:.1} µs, largest job {:.0} µs",
            spec.work.mean_ns() / 1e3,
            spec.work.max_ns() / 1e3
        ));
    }
    if foreign_max > 0.5 {
        r.note(format!(
            "warning: other processes used up to {foreign_max:.1} CPU-seconds while one \
             policy ran (burst replay plus max-rate search); the figures are disturbed"
        ));
    }
    if let Some(p) = &o.plot {
        r.note(format!("plot: {}", p.display()));
    }
    let policies: Vec<Value> = o
        .policies
        .iter()
        .zip(medians)
        .map(|(p, f)| {
            let mut m = Map::new();
            m.insert("name".into(), Value::from(p.name()));
            for (key, _, get) in COLUMNS {
                m.insert(key.into(), json_number(get(f)));
            }
            Value::Object(m)
        })
        .collect();
    r.set("workers", o.workers as u64);
    r.set("cores", cores as u64);
    r.set("seconds", json_number(o.seconds));
    r.set("seeds", o.seeds);
    r.set("policies", policies);
    r.set("seed", o.seed);
    r.set("work_us", json_number(o.work_us));
    r.set("heavy_tail", o.heavy_tail);
    r.set("io", o.io);
    r.set("capacity", json_number(capacity));
    r.set("base_rate", json_number(spec.base_rate));
    r.set("burst_rate", json_number(spec.burst_rate));
    r.set("mean_off_s", json_number(o.off_s));
    r.set("mean_on_s", json_number(o.on_s));
    r.set("target_ms", json_number(o.target_ms));
    r.set("iters_per_us", json_number(cpu.iters_per_us()));
    r.set("machine_at_start", busy_start.to_json());
    r.set("machine_at_end", busy_end.to_json());
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_and_medians() {
        let mut v: Vec<u64> = (1..=100).collect();
        assert_eq!(quantile(&mut v, 0.99), Some(99));
        assert_eq!(quantile(&mut v, 0.5), Some(50));
        assert_eq!(quantile(&mut [], 0.5), None);
        assert_eq!(median(&mut vec![3.0, f64::NAN, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut vec![4.0, 1.0]), 2.5);
        assert!(median(&mut vec![f64::NAN]).is_nan());
    }

    #[test]
    fn drain_is_measured_from_the_end_of_the_burst() {
        // Backlog 1 before the burst, grows during it (t 10..20), back to 1
        // at t = 27.
        let b: Vec<(i64, u64)> = (0..40)
            .map(|t| {
                let v = match t {
                    10..=19 => (t - 8) as u64,
                    20..=26 => (30 - t) as u64,
                    _ => 1,
                };
                (t, v)
            })
            .collect();
        assert_eq!(drain_ns(&b, 10, 20), Some(7));
        // A burst that left nothing behind drains at once.
        assert_eq!(drain_ns(&b, 30, 35), Some(0));
    }

    #[test]
    fn options_parse_with_defaults() {
        let o = BurstOpts::parse(Args::new(vec!["--policies".into(), "lag,always-max".into()]))
            .unwrap();
        assert_eq!(o.policies, vec![Policy::Lag, Policy::AlwaysMax]);
        assert_eq!(o.seeds, 3);
        assert!(o.max_rate);
        assert!(BurstOpts::parse(Args::new(vec!["--bogus".into()])).is_err());
        assert!(BurstOpts::parse(Args::new(vec!["--workers".into(), "0".into()])).is_err());
    }
}
