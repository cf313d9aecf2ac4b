//! A latency-critical three-stage pipeline inside one process:
//! `parse` → `enrich` → `store`.
//!
//! Each stage is a queue with a handler; a handler hands its result to the
//! next stage by submitting a job through a clone of the [`Engine`] it
//! captured. `Memory` durability: nothing touches the disk (a pure pipeline
//! that can recompute its input after a crash).
//!
//! Two runs, each on a fresh engine:
//!
//! 1. **burst**: 200,000 items submitted in batches as fast as possible:
//!    throughput, and latency that is mostly queueing behind the burst.
//! 2. **paced**: 20,000 items submitted one at a time on a fixed schedule of
//!    10,000 items/s (open loop: an item's clock starts at its scheduled
//!    time, so a late submit counts): the latency a steady stream sees.
//!
//! Pipeline latency is measured per item from its scheduled (or, in the
//! burst, actual) submit time to the start of its `store` handler; the
//! engine's own per-job end-to-end figures (submit → handler done, each
//! stage a job) are printed next to it.
//!
//! ```text
//! cargo run --release --example pipeline
//! ```

use hdrhistogram::Histogram;
use spindle::{Durability, Engine, Job, JobRef, Outcome, SubmitError};
use std::error::Error;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BURST_ITEMS: u64 = 200_000;
const BURST_BATCH: u64 = 256;
const PACED_ITEMS: u64 = 20_000;
const PACED_RATE: f64 = 10_000.0;

/// What the `store` stage keeps: a per-item latency slot and a checksum.
struct Sink {
    epoch: Instant,
    latency_ns: Vec<AtomicU64>,
    sum: AtomicU64,
    stored: AtomicU64,
    done: Mutex<Option<mpsc::SyncSender<Instant>>>,
}

impl Sink {
    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// `parse`: text `"<item>,<origin ns>,<value>"` → 24 binary bytes.
fn parse(text: &[u8]) -> Option<[u64; 3]> {
    let text = std::str::from_utf8(text).ok()?;
    let mut it = text.split(',').map(|f| f.parse::<u64>().ok());
    Some([it.next()??, it.next()??, it.next()??])
}

fn words<const N: usize>(bytes: &[u8]) -> Option<[u64; N]> {
    let mut out = [0u64; N];
    for (k, w) in out.iter_mut().enumerate() {
        *w = u64::from_le_bytes(bytes.get(k * 8..k * 8 + 8)?.try_into().ok()?);
    }
    Some(out)
}

fn bytes(ws: &[u64]) -> Vec<u8> {
    ws.iter().flat_map(|w| w.to_le_bytes()).collect()
}

/// A failed hand-off to the next stage: retry this job later (the engine
/// backs off), unless the engine is going away.
fn handoff(r: Result<spindle::JobId, SubmitError>) -> Outcome {
    match r {
        Ok(_) => Outcome::Done,
        Err(e) => Outcome::Retry(format!("next stage refused the item: {e}")),
    }
}

/// A wired pipeline: the engine, the store's sink, and the channel on which
/// the store announces the last item.
type Wired = (Engine, Arc<Sink>, mpsc::Receiver<Instant>);

/// Builds the engine and wires the three stages.
fn pipeline(items: u64) -> Result<Wired, Box<dyn Error>> {
    let engine = Engine::builder().durability(Durability::Memory).build()?;
    let (tx, rx) = mpsc::sync_channel(1);
    let sink = Arc::new(Sink {
        epoch: Instant::now(),
        latency_ns: (0..items).map(|_| AtomicU64::new(0)).collect(),
        sum: AtomicU64::new(0),
        stored: AtomicU64::new(0),
        done: Mutex::new(Some(tx)),
    });

    let next = engine.clone();
    engine.register("parse", move |job: &JobRef<'_>| match parse(job.payload()) {
        Some(fields) => handoff(next.submit(Job::new("enrich", bytes(&fields)))),
        None => Outcome::Bury(format!("unparseable input {:?}", job.payload())),
    })?;

    let next = engine.clone();
    engine.register("enrich", move |job: &JobRef<'_>| match words::<3>(job.payload()) {
        Some([item, origin, value]) => {
            // The "enrichment": a category and a scaled value.
            let category = item % 16;
            let scaled = value.wrapping_mul(3).wrapping_add(category);
            handoff(next.submit(Job::new("store", bytes(&[item, origin, scaled, category]))))
        }
        None => Outcome::Bury("enrich: malformed record".into()),
    })?;

    let s = sink.clone();
    engine.register("store", move |job: &JobRef<'_>| {
        let now = s.now_ns();
        let Some([item, origin, scaled, _category]) = words::<4>(job.payload()) else {
            return Outcome::Bury("store: malformed record".into());
        };
        if let Some(slot) = s.latency_ns.get(item as usize) {
            slot.store(now.saturating_sub(origin).max(1), Ordering::Relaxed);
        }
        s.sum.fetch_add(scaled, Ordering::Relaxed);
        if s.stored.fetch_add(1, Ordering::Relaxed) + 1 == s.latency_ns.len() as u64 {
            if let Some(tx) = s.done.lock().unwrap_or_else(|p| p.into_inner()).take() {
                let _ = tx.send(Instant::now());
            }
        }
        Outcome::Done
    })?;
    Ok((engine, sink, rx))
}

fn input(item: u64, origin_ns: u64) -> Job {
    Job::new("parse", format!("{item},{origin_ns},{}", item * 7).into_bytes())
}

/// Runs one pipeline; `pace`: items per second, or `None` for a burst.
fn run(name: &str, items: u64, pace: Option<f64>) -> Result<(), Box<dyn Error>> {
    let (engine, sink, done) = pipeline(items)?;
    let start_ns = sink.now_ns() + 10_000_000; // let the shards settle
    while sink.now_ns() < start_ns {
        std::thread::yield_now();
    }
    let started = Instant::now();
    match pace {
        None => {
            let mut item = 0;
            while item < items {
                let n = BURST_BATCH.min(items - item);
                let origin = sink.now_ns();
                engine.submit_batch((item..item + n).map(|i| input(i, origin)).collect())?;
                item += n;
            }
        }
        Some(rate) => {
            for item in 0..items {
                let due = start_ns + (item as f64 * 1e9 / rate) as u64;
                loop {
                    let now = sink.now_ns();
                    if now >= due {
                        break;
                    }
                    if due - now > 200_000 {
                        std::thread::sleep(Duration::from_nanos(due - now - 100_000));
                    } else {
                        std::thread::yield_now();
                    }
                }
                engine.submit(input(item, due))?;
            }
        }
    }
    let finished = done.recv_timeout(Duration::from_secs(120)).map_err(|_| {
        format!("{name}: only {} of {items} items stored", sink.stored.load(Ordering::Relaxed))
    })?;
    let secs = finished.duration_since(started).as_secs_f64();

    // Per-queue counts reach the stats a moment after the last handler.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut stats = engine.stats();
    while stats.total().completed < 3 * items && Instant::now() < deadline {
        stats = engine.stats();
    }
    engine.shutdown()?;

    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    for slot in &sink.latency_ns {
        h.saturating_record(slot.load(Ordering::Relaxed).max(1));
    }
    let us = |q: f64| h.value_at_quantile(q) as f64 / 1e3;
    let expected: u64 = (0..items).map(|i| (i * 7 * 3).wrapping_add(i % 16)).sum();

    println!("{name}: {items} items through parse → enrich → store, {} shards", stats.shards.len());
    match pace {
        None => println!(
            "  submitted in batches of {BURST_BATCH}; {:.0} ms, {:.0} items/s ({:.0} jobs/s over the 3 stages)",
            secs * 1e3,
            items as f64 / secs,
            3.0 * items as f64 / secs
        ),
        Some(rate) => println!(
            "  offered {rate:.0} items/s one at a time; achieved {:.0} items/s",
            items as f64 / secs
        ),
    }
    println!(
        "  pipeline latency   p50 {:.1} µs, p99 {:.1} µs, p99.9 {:.1} µs, max {:.1} µs (submit → store starts)",
        us(0.5),
        us(0.99),
        us(0.999),
        h.max() as f64 / 1e3
    );
    let (e, d) = (stats.end_to_end, stats.dispatch);
    println!(
        "  engine, per job    end to end p50 {:.1} µs, p99 {:.1} µs; dispatch p50 {:.1} µs, p99 {:.1} µs",
        e.p50_us, e.p99_us, d.p50_us, d.p99_us
    );
    let counts: Vec<String> = ["parse", "enrich", "store"]
        .iter()
        .map(|q| format!("{q} {}", stats.queues.get(*q).map_or(0, |s| s.completed)))
        .collect();
    println!("  completed          {}", counts.join(", "));
    if sink.sum.load(Ordering::Relaxed) != expected {
        return Err(format!("{name}: checksum mismatch: the store saw wrong values").into());
    }
    if stats.total().completed != 3 * items {
        return Err(format!("{name}: engine counted {} jobs", stats.total().completed).into());
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn Error>> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("spindle pipeline — Memory durability, default shards, {cores} cores\n");
    run("burst", BURST_ITEMS, None)?;
    println!();
    run("paced", PACED_ITEMS, Some(PACED_RATE))?;
    Ok(())
}
