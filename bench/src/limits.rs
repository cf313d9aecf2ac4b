//! The `limits` scenario: what schedules, rate limits and the rest cost,
//! measured on the job table (`spindle-core`) on one thread, as both
//! front-ends run it.
//!
//! 1. **Schedules** (`schedules_cpu_pct`): 10,000 interval schedules that
//!    each tick every second, their anchors spread over the second. Time
//!    is simulated: the loop jumps to each [`Table::next_due`], fires the
//!    due schedules (each tick puts a job and logs a `Fire` record holding
//!    its `Put`), and a consumer completes the jobs (not timed). The CPU
//!    time of the `fire_schedules` calls over `--seconds` simulated
//!    seconds, as a percentage of one core over those seconds, is what
//!    firing costs a real loop (a real loop also pays its wake-ups).
//! 2. **Rate** (`rate_error_pct`, `start_jitter_p99_us`): a queue limited
//!    to 1,000 starts/s (the default burst, 10) with a backlog, and 4 greedy holders,
//!    for `--rate-seconds` of *real* time: one thread owns the table,
//!    ticks the table, lets every holder reserve (and complete at once)
//!    until the gate shuts, and sleeps until the table's next due time. The starts counted against 1,000/s ×
//!    seconds give the error; each start's lateness behind the time its
//!    gate reopened gives the jitter (this machine's sleep and wake-up
//!    accuracy, which a front-end's loop also has).
//! 3. **Unused features** (`unlimited_ratio`): put → reserve → complete
//!    cycles on a queue without limits, in a table whose *other* queues
//!    have limits and 1,000 schedules and whose 10,000 other jobs have
//!    deadlines, divided by the same cycles in a table with the same 10,000
//!    jobs and none of the features.
//!    Interleaved, `--repeat` times, medians. (The A/B against the commit
//!    before these features is in `docs/benchmarks.md`.)

use std::time::{Duration, Instant};

use serde_json::json;
use spindle_core::{
    By, Config, Limits, PutSpec, QueueId, Rate, Records, ScheduleSpec, Table, Time, When,
};

use crate::args::Args;
use crate::report::Report;
use crate::BoxResult;

/// Usage text of the scenario.
pub const USAGE: &str = "\
spindle-bench limits [options]
  --schedules N     schedules ticking every second (default 10000)
  --seconds S       simulated seconds of schedule ticks (default 10)
  --rate-seconds S  real seconds of the rate-limited queue (default 10)
  --repeat N        unused-features measurement runs, median (default 3)
  --json            print one JSON object";

/// Options.
#[derive(Debug)]
pub struct LimitsOpts {
    schedules: u64,
    seconds: u64,
    rate_seconds: u64,
    repeat: usize,
    /// Print JSON.
    pub json: bool,
}

impl LimitsOpts {
    /// Parses the scenario's options.
    pub fn parse(mut a: Args) -> BoxResult<LimitsOpts> {
        let o = LimitsOpts {
            schedules: a.value_or("--schedules", 10_000)?,
            seconds: a.value_or("--seconds", 10)?,
            rate_seconds: a.value_or("--rate-seconds", 10)?,
            repeat: a.value_or("--repeat", 3)?,
            json: a.flag("--json"),
        };
        a.finish()?;
        Ok(o)
    }
}

const T0: Time = Time::from_secs(1_800_000_000);

/// Runs the scenario.
pub fn run(o: &LimitsOpts) -> BoxResult<Report> {
    let (cpu_pct, fired) = schedules(o.schedules, o.seconds)?;
    let (starts, error_pct, jitter_p99_us) = rate(o.rate_seconds)?;
    let mut ratios = Vec::new();
    let mut plain = Vec::new();
    let mut busy = Vec::new();
    for _ in 0..o.repeat.max(1) {
        let a = cycles(false)?;
        let b = cycles(true)?;
        plain.push(a);
        busy.push(b);
        ratios.push(b / a);
    }
    let ratio = median(&mut ratios);
    let mut r = Report::new("limits: schedules, rate limits and unused features, on the table");
    r.section("schedules");
    r.metric("schedules", "schedules, each ticking every second", o.schedules as f64, "");
    r.metric("fired", "jobs fired", fired as f64, "");
    r.metric("schedules_cpu_pct", "CPU to fire them (goal <= 5)", cpu_pct, "% of a core");
    r.section("rate limit: 1,000 starts/s, 4 greedy holders, real time");
    r.metric("rate_starts", "starts", starts as f64, "");
    r.metric("rate_expected", "expected", 1000.0 * o.rate_seconds as f64, "");
    r.metric("rate_error_pct", "error (goal <= 1)", error_pct, "%");
    r.metric("start_jitter_p99_us", "start lateness p99", jitter_p99_us, "µs");
    r.section("unused features");
    r.metric("plain_cycles_per_sec", "cycles/s, no feature in use", median(&mut plain), "/s");
    r.metric("busy_cycles_per_sec", "cycles/s, features used elsewhere", median(&mut busy), "/s");
    r.metric("unlimited_ratio", "ratio (goal >= 0.97)", ratio, "");
    r.set("ratios", json!(ratios));
    r.note("one thread; measured on this machine's cores (see docs/benchmarks.md)");
    Ok(r)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Step 1: (CPU %, jobs fired).
fn schedules(n: u64, seconds: u64) -> BoxResult<(f64, u64)> {
    let mut t = Table::new(Config::default());
    let mut log = Records::new();
    let q = t.queue("ticks")?;
    let spread = 1_000_000_000 / n.max(1);
    for i in 0..n {
        let spec =
            ScheduleSpec::new(&format!("s{i}"), When::Every(Duration::from_secs(1)), b"tick");
        t.add_schedule(Time(T0.0 + i * spread), q, spec, &mut log)?;
    }
    log.clear();
    let end = T0.plus_secs(1 + seconds);
    let mut now = T0.plus_secs(1);
    let mut next = t.next_id();
    let mut spent = Duration::ZERO;
    let mut fired = 0;
    while now < end {
        let started = Instant::now();
        fired += t.fire_schedules(
            now,
            &mut || {
                next += 1;
                next - 1
            },
            &mut log,
        );
        spent += started.elapsed();
        log.clear();
        while let Some(l) = t.reserve(now, q, 0, &mut log) {
            let _ = t.complete(l.id, By::holder(0), &mut log);
        }
        log.clear();
        now = match t.next_due() {
            Some(d) if d > now => d,
            _ => Time(now.0 + 1),
        };
    }
    let pct = 100.0 * spent.as_secs_f64() / seconds.max(1) as f64;
    Ok((pct, fired))
}

/// Step 2: (starts, error %, lateness p99 µs).
fn rate(seconds: u64) -> BoxResult<(u64, f64, f64)> {
    let mut t = Table::new(Config::default());
    let mut log = Records::new();
    let q = t.queue("limited")?;
    let limits =
        Limits { rate: Some(Rate::new(1000, Duration::from_secs(1))), ..Limits::default() };
    t.set_limits(q, limits, &mut log)?;
    let clock = spindle_core::Clock::new();
    let start = clock.now();
    let spec = PutSpec { ttr_s: 60, ..PutSpec::default() };
    let backlog = 1000 * seconds + 10_000;
    for _ in 0..backlog {
        let id = t.next_id();
        t.put(start, id, q, &spec, b"x", &mut log)?;
    }
    log.clear();
    let end = start.plus_secs(seconds);
    let mut starts = 0u64;
    let mut late = hdrhistogram::Histogram::<u64>::new(3)?;
    // The time the loop slept toward (the gate's reopening).
    let mut due = start;
    loop {
        let now = clock.now();
        if now >= end {
            break;
        }
        t.tick(now, &mut log);
        // Each greedy holder reserves until the gate shuts.
        let mut any = true;
        while any {
            any = false;
            for holder in 0..4u32 {
                if let Some(l) = t.reserve(now, q, holder, &mut log) {
                    starts += 1;
                    any = true;
                    let _ = late.record(now.since(due).as_micros() as u64);
                    let _ = t.complete(l.id, By::holder(holder), &mut log);
                }
            }
        }
        log.clear();
        due = t.next_due().unwrap_or(now).min(end);
        let wait = due.since(clock.now());
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }
    let expected = 1000 * seconds;
    let error = 100.0 * (starts as f64 - expected as f64).abs() / expected as f64;
    Ok((starts, error, late.value_at_quantile(0.99) as f64))
}

/// Step 3: cycles/s on an unlimited queue; `busy`: other queues use every
/// feature.
fn cycles(busy: bool) -> BoxResult<f64> {
    let mut t = Table::new(Config::default());
    let mut log = Records::new();
    let q: QueueId = t.queue("plain")?;
    // Both tables hold 10,000 other jobs: only their deadlines differ.
    let other = t.queue("other")?;
    let deadline = busy.then_some(T0.plus_secs(3600));
    let spec = PutSpec { deadline, ..PutSpec::default() };
    for _ in 0..10_000 {
        let id = t.next_id();
        t.put(T0, id, other, &spec, b"d", &mut log)?;
    }
    if busy {
        let l = Limits {
            concurrency: 4,
            rate: Some(Rate::new(10, Duration::from_secs(1))),
            ..Limits::default()
        };
        t.set_limits(other, l, &mut log)?;
        for i in 0..1000 {
            let spec =
                ScheduleSpec::new(&format!("s{i}"), When::Every(Duration::from_secs(3600)), b"");
            t.add_schedule(T0, other, spec, &mut log)?;
        }
    }
    log.clear();
    let spec = PutSpec { ttr_s: 60, ..PutSpec::default() };
    let n = 2_000_000u64;
    let mut now = T0;
    let started = Instant::now();
    for i in 0..n {
        let id = t.next_id();
        t.put(now, id, q, &spec, b"0123456789abcdef", &mut log)?;
        if let Some(l) = t.reserve(now, q, 0, &mut log) {
            let _ = t.complete(l.id, By::holder(0), &mut log);
        }
        if i % 256 == 255 {
            log.clear();
            now = Time(now.0 + 25_600);
        }
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}
