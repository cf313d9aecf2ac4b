//! The three floors of the `latency` scenario: the same open-loop producer
//! as the engine run, feeding a bare crossbeam consumer instead of Spindle.
//!
//! 1. **Parked**: the consumer blocks in `recv` on another core; each job
//!    pays a cross-core wake-up.
//! 2. **Spinning**: the consumer polls `try_recv` on another core; no wake,
//!    a full core burnt.
//! 3. **Same core**: producer and consumer pinned to one core, the consumer
//!    in `recv`; the wake-up stays on the core (the producer's wait yields
//!    it the CPU).
//!
//! Each records `consumer start − intended send time` per job, as the
//! engine run's submit→start does, and the best of the three is the
//! figure the engine is held against.

use crate::engine_env::{self, Completion};
use crate::latency::{Latency, Percentiles};
use crate::BoxResult;
use crossbeam_channel::{unbounded, TryRecvError};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where the floor's consumer runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    Parked,
    Spinning,
    SameCore,
}

impl Place {
    /// Every placement, in report order.
    pub const ALL: [Place; 3] = [Place::Parked, Place::Spinning, Place::SameCore];

    /// The key used in reports.
    pub fn key(self) -> &'static str {
        match self {
            Place::Parked => "floor_parked",
            Place::Spinning => "floor_spinning",
            Place::SameCore => "floor_same_core",
        }
    }

    /// A line for humans.
    pub fn label(self) -> &'static str {
        match self {
            Place::Parked => "crossbeam consumer parked in recv, other core",
            Place::Spinning => "crossbeam consumer spinning on try_recv, other core",
            Place::SameCore => "crossbeam consumer in recv on the producer's core",
        }
    }
}

/// Nanoseconds since `epoch`.
pub fn elapsed_ns(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Waits until `due` (ns since `epoch`): sleeps while more than 200 µs
/// remain, then yields (or spins, `yield_wait` false) until it is due.
pub fn wait_until(epoch: Instant, due: u64, yield_wait: bool) {
    loop {
        let now = elapsed_ns(epoch);
        if now >= due {
            return;
        }
        let left = due - now;
        if left > 200_000 {
            std::thread::sleep(Duration::from_nanos(left - 100_000));
        } else if yield_wait {
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
    }
}

fn pin(core: Option<core_affinity::CoreId>) {
    if let Some(c) = core {
        core_affinity::set_for_current(c);
    }
}

/// One floor: `n` items at `rate` per second through a channel to a
/// consumer placed at `place`; the consumer's start − intended send time.
pub fn measure(place: Place, rate: f64, n: u64, yield_wait: bool) -> BoxResult<Percentiles> {
    let ids = core_affinity::get_core_ids().unwrap_or_default();
    let (p_core, c_core) = match (ids.first(), ids.get(1)) {
        (Some(a), _) if place == Place::SameCore => (Some(*a), Some(*a)),
        (Some(a), Some(b)) => (Some(*a), Some(*b)),
        _ => (None, None),
    };
    let (tx, rx) = unbounded::<u64>();
    let epoch = Instant::now();
    std::thread::scope(|s| -> BoxResult<Percentiles> {
        let consumer = s.spawn(move || -> BoxResult<Latency> {
            pin(c_core);
            let mut lat = Latency::new()?;
            loop {
                let due = if place == Place::Spinning {
                    match rx.try_recv() {
                        Ok(d) => d,
                        Err(TryRecvError::Empty) => {
                            std::hint::spin_loop();
                            continue;
                        }
                        Err(TryRecvError::Disconnected) => break,
                    }
                } else {
                    match rx.recv() {
                        Ok(d) => d,
                        Err(_) => break,
                    }
                };
                lat.record(Duration::from_nanos(elapsed_ns(epoch).saturating_sub(due).max(1)));
            }
            Ok(lat)
        });
        let producer = s.spawn(move || -> BoxResult<()> {
            pin(p_core);
            let period = 1e9 / rate;
            let t0 = elapsed_ns(epoch) + 20_000_000;
            for i in 0..n {
                let due = t0 + (i as f64 * period) as u64;
                wait_until(epoch, due, yield_wait);
                tx.send(due).map_err(|_| "floor consumer gone")?;
            }
            Ok(())
        });
        producer.join().map_err(|_| "floor producer panicked")??;
        let lat = consumer.join().map_err(|_| "floor consumer panicked")??;
        Ok(lat.percentiles())
    })
}

/// The same schedule through `tokio::runtime::Handle::spawn` onto a
/// multi-thread runtime with `workers` workers (parked when idle): each task
/// records its start − intended send time.
pub fn measure_tokio(
    rate: f64,
    n: u64,
    workers: usize,
    yield_wait: bool,
) -> BoxResult<Percentiles> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(workers).build()?;
    let h = rt.handle().clone();
    let slots: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
    let (done, done_rx) = Completion::new(n);
    let done = Arc::new(done);
    let epoch = Instant::now();
    let period = 1e9 / rate;
    let t0 = elapsed_ns(epoch) + 20_000_000;
    for i in 0..n {
        let due = t0 + (i as f64 * period) as u64;
        wait_until(epoch, due, yield_wait);
        let (slots, done) = (slots.clone(), done.clone());
        h.spawn(async move {
            if let Some(s) = slots.get(i as usize) {
                s.store(elapsed_ns(epoch).saturating_sub(due).max(1), Ordering::Relaxed);
            }
            done.one();
        });
    }
    engine_env::wait_done(&done_rx, &done, Duration::from_secs(600))?;
    rt.shutdown_timeout(Duration::from_secs(5));
    let mut lat = Latency::new()?;
    for s in slots.iter() {
        match s.load(Ordering::Relaxed) {
            0 => return Err("a tokio task never ran".into()),
            ns => lat.record(Duration::from_nanos(ns)),
        }
    }
    Ok(lat.percentiles())
}
