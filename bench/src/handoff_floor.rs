//! The `floor` scenario: the machine's raw cross-thread handoff, the
//! physical reference for the engine's throughput and dispatch latency.
//!
//! Two threads, pinned to the first two allowed cores when there are two
//! (`core_affinity`), hand items over a bounded crossbeam channel:
//!
//! - **Throughput**: the producer sends a stream of `u64`s as fast as it
//!   can, the consumer receives them (blocking `recv`); items per second from
//!   the first send to the last receive. Best of `--runs` runs, since a floor
//!   is the most the machine can do and other load only ever lowers it.
//! - **Latency, busy-poll** (`handoff_p50_us`, ...): *one-way* latency, one
//!   item in flight. The producer takes `Instant::now()`, sends it, and waits
//!   (spinning) for the consumer's acknowledgement before the next sample;
//!   the consumer spins on `try_recv` and records `now - sent`. No queueing,
//!   so this is the cost of moving one cache line between two cores.
//! - **Latency, parked wake**: the same with a blocking `recv` and a pause
//!   between samples, so the consumer is asleep in the kernel when the item
//!   arrives: what waking an idle worker costs.

use crate::args::Args;
use crate::latency::{Latency, Percentiles};
use crate::report::Report;
use crate::system::Busy;
use crate::BoxResult;
use crossbeam_channel::{bounded, TryRecvError};
use serde_json::json;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Usage text of the scenario.
pub const USAGE: &str = "\
spindle-bench floor [options]
  --items N          items per throughput run (default 20000000)
  --runs N           throughput runs; the best counts (default 3)
  --capacity N       channel capacity (default 1024)
  --samples N        busy-poll latency samples (default 200000)
  --wake-samples N   parked-wake latency samples (default 2000)
  --no-pin           do not pin the two threads
  --json             print one JSON object instead of tables";

/// Parsed options.
#[derive(Debug, Clone)]
pub struct FloorOpts {
    /// Items per throughput run.
    pub items: u64,
    /// Throughput runs.
    pub runs: u32,
    /// Channel capacity.
    pub capacity: usize,
    samples: u64,
    wake_samples: u64,
    /// Pin the two threads.
    pub pin: bool,
    /// Print JSON.
    pub json: bool,
}

impl FloorOpts {
    /// Reads the scenario's options.
    pub fn parse(mut a: Args) -> BoxResult<FloorOpts> {
        let o = FloorOpts {
            items: a.value_or("--items", 20_000_000)?,
            runs: a.value_or("--runs", 3)?,
            capacity: a.value_or("--capacity", 1024)?,
            samples: a.value_or("--samples", 200_000)?,
            wake_samples: a.value_or("--wake-samples", 2000)?,
            pin: !a.flag("--no-pin"),
            json: a.flag("--json"),
        };
        a.finish()?;
        if o.items == 0 || o.runs == 0 || o.capacity == 0 || o.samples == 0 {
            return Err("--items, --runs, --capacity and --samples must be at least 1".into());
        }
        Ok(o)
    }
}

/// The two cores to pin producer and consumer to, if pinning is possible.
pub fn two_cores(pin: bool) -> Option<(core_affinity::CoreId, core_affinity::CoreId)> {
    if !pin {
        return None;
    }
    let ids = core_affinity::get_core_ids()?;
    match ids.as_slice() {
        [a, b, ..] => Some((*a, *b)),
        _ => None,
    }
}

fn pin(core: Option<core_affinity::CoreId>) -> bool {
    core.is_some_and(core_affinity::set_for_current)
}

/// One throughput run: `items` through a bounded channel of `capacity`.
/// Returns items per second and whether both threads were pinned.
pub fn throughput_run(items: u64, capacity: usize, pin_to: bool) -> BoxResult<(f64, bool)> {
    let cores = two_cores(pin_to);
    let (tx, rx) = bounded::<u64>(capacity);
    std::thread::scope(|s| -> BoxResult<(f64, bool)> {
        let consumer = s.spawn(move || -> (u64, bool, Instant) {
            let pinned = pin(cores.map(|c| c.1));
            let mut sum = 0u64;
            for v in rx.iter() {
                sum = sum.wrapping_add(v);
            }
            (sum, pinned, Instant::now())
        });
        let producer = s.spawn(move || -> BoxResult<(bool, Instant)> {
            let pinned = pin(cores.map(|c| c.0));
            let start = Instant::now();
            for i in 0..items {
                tx.send(i).map_err(|_| "consumer gone")?;
            }
            Ok((pinned, start))
        });
        let (p_pinned, start) = producer.join().map_err(|_| "producer panicked")??;
        let (sum, c_pinned, end) = consumer.join().map_err(|_| "consumer panicked")?;
        std::hint::black_box(sum);
        let secs = end.duration_since(start).as_secs_f64();
        Ok((items as f64 / secs, p_pinned && c_pinned))
    })
}

/// Best of `runs` throughput runs.
pub fn best_throughput(
    items: u64,
    runs: u32,
    capacity: usize,
    pin: bool,
) -> BoxResult<(f64, bool)> {
    let mut best = (0.0f64, true);
    for _ in 0..runs {
        let (r, pinned) = throughput_run(items, capacity, pin)?;
        best = (best.0.max(r), best.1 && pinned);
    }
    Ok(best)
}

/// One-way latency, one item in flight. `park`: the consumer blocks in
/// `recv` and the producer pauses between samples so it is asleep.
fn latency_run(samples: u64, park: bool, pin_to: bool) -> BoxResult<Percentiles> {
    let cores = two_cores(pin_to);
    let (tx, rx) = bounded::<Instant>(1);
    let acked = AtomicU64::new(0);
    std::thread::scope(|s| -> BoxResult<Percentiles> {
        let acked = &acked;
        let consumer = s.spawn(move || -> BoxResult<Latency> {
            pin(cores.map(|c| c.1));
            let mut lat = Latency::new()?;
            let mut n = 0u64;
            loop {
                let sent = if park {
                    match rx.recv() {
                        Ok(t) => t,
                        Err(_) => break,
                    }
                } else {
                    match rx.try_recv() {
                        Ok(t) => t,
                        Err(TryRecvError::Empty) => {
                            std::hint::spin_loop();
                            continue;
                        }
                        Err(TryRecvError::Disconnected) => break,
                    }
                };
                lat.record(sent.elapsed());
                n += 1;
                acked.store(n, Ordering::Release);
            }
            Ok(lat)
        });
        // The caller is a thread of its own (`on_fresh_thread`): pin it.
        pin(cores.map(|c| c.0));
        for i in 1..=samples {
            if park {
                // Long enough for crossbeam's spin phase to end and the
                // consumer to sleep in the kernel.
                std::thread::sleep(Duration::from_micros(200));
            }
            tx.send(Instant::now()).map_err(|_| "consumer gone")?;
            let deadline = Instant::now() + Duration::from_secs(10);
            while acked.load(Ordering::Acquire) < i {
                std::hint::spin_loop();
                if Instant::now() > deadline {
                    return Err("consumer stopped acknowledging".into());
                }
            }
        }
        drop(tx);
        let lat = consumer.join().map_err(|_| "consumer panicked")??;
        Ok(lat.percentiles())
    })
}

/// Runs a closure on a fresh thread so pinning there leaves the caller's
/// affinity untouched.
fn on_fresh_thread<T: Send>(f: impl FnOnce() -> BoxResult<T> + Send) -> BoxResult<T> {
    std::thread::scope(|s| s.spawn(f).join().map_err(|_| "measurement thread panicked")?)
}

/// The floor's results.
#[derive(Debug, Clone, Copy)]
pub struct FloorResult {
    /// Best items/s.
    pub per_sec: f64,
    /// Busy-poll one-way latency.
    pub busy: Percentiles,
    /// Parked-wake one-way latency.
    pub wake: Option<Percentiles>,
    /// Whether both threads were pinned.
    pub pinned: bool,
}

/// Measures the floor.
pub fn measure(o: &FloorOpts) -> BoxResult<FloorResult> {
    let (per_sec, pinned) = best_throughput(o.items, o.runs, o.capacity, o.pin)?;
    let busy = on_fresh_thread(|| latency_run(o.samples, false, o.pin))?;
    let wake = if o.wake_samples > 0 {
        Some(on_fresh_thread(|| latency_run(o.wake_samples, true, o.pin))?)
    } else {
        None
    };
    Ok(FloorResult { per_sec, busy, wake, pinned })
}

/// Runs the scenario.
pub fn run(o: &FloorOpts) -> BoxResult<Report> {
    let busy_start = Busy::now();
    let cores = crate::engine_env::cores();
    let f = measure(o)?;
    let busy_end = Busy::now();
    let mut r = Report::new(format!(
        "spindle-bench floor — crossbeam channel handoff between two threads, {cores} cores, {}\n\
         machine at start: {}; at end: {}",
        if f.pinned { "pinned to two cores" } else { "unpinned" },
        busy_start.describe(),
        busy_end.describe(),
    ));
    r.section(format!(
        "throughput (bounded({}) channel, {} items, best of {})",
        o.capacity, o.items, o.runs
    ));
    r.metric("handoff_per_sec", "items handed over", f.per_sec, "items/s");
    r.section(format!(
        "one-way latency, busy-poll consumer, one item in flight ({} samples)",
        o.samples
    ));
    r.metric("handoff_p50_us", "p50", f.busy.p50_us, "µs");
    r.metric("handoff_p99_us", "p99", f.busy.p99_us, "µs");
    r.metric("handoff_p999_us", "p99.9", f.busy.p999_us, "µs");
    r.metric("handoff_max_us", "max", f.busy.max_us, "µs");
    if let Some(w) = f.wake {
        r.section(format!(
            "one-way latency, consumer parked in recv ({} samples, 200 µs apart)",
            o.wake_samples
        ));
        r.metric("parked_wake_p50_us", "p50", w.p50_us, "µs");
        r.metric("parked_wake_p99_us", "p99", w.p99_us, "µs");
        r.metric("parked_wake_p999_us", "p99.9", w.p999_us, "µs");
    }
    r.note("latency is one-way (send → receive, timestamps from one monotonic clock), not a round trip");
    r.set("handoff_latency", "one-way");
    r.set("pinned", f.pinned);
    r.set("cores", cores as u64);
    r.set("machine_at_start", busy_start.to_json());
    r.set("machine_at_end", busy_end.to_json());
    r.set(
        "options",
        json!({
            "items": o.items,
            "runs": o.runs,
            "capacity": o.capacity,
            "samples": o.samples,
            "wake_samples": o.wake_samples,
        }),
    );
    Ok(r)
}

/// Adds the floor's throughput to a report's "reference" section.
pub fn report_floor(r: &mut crate::report::Report, floor: f64, pinned: bool) {
    r.section("reference");
    r.metric(
        "floor_per_sec",
        &format!("crossbeam handoff floor ({})", if pinned { "pinned" } else { "unpinned" }),
        floor,
        "items/s",
    );
}
