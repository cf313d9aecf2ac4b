//! The `burst` scenario's load: a seeded PRNG, the bursty arrival trace
//! (a two-state Markov-modulated Poisson process), job sizes, and real CPU
//! work of a calibrated length.
//!
//! 1. [`Rng`] is splitmix64: tiny, fast, and the same stream for the same
//!    seed on every machine, so a seed names one trace.
//! 2. [`bursty`] alternates an OFF state (Poisson arrivals at the base rate)
//!    and an ON state (Poisson arrivals at the burst rate); each sojourn is
//!    exponentially distributed with its state's mean. The trace starts OFF.
//!    Arrivals are generated per sojourn (the exponential gaps are
//!    memoryless, so restarting them at a state change is exact).
//! 3. [`WorkDist`] draws each job's work: the mean exactly, or with
//!    `--heavy-tail` a bounded Pareto (α = 1.5, largest/smallest = 1000)
//!    scaled to the same mean.
//! 4. [`CpuWork`] turns nanoseconds of work into iterations of a loop the
//!    compiler cannot shorten (a multiply-xorshift chain behind
//!    `black_box`), calibrated once at start on the fastest of several
//!    timed runs, so a job's work is fixed in CPU terms: a descheduled
//!    handler takes longer in wall time, not less work.

use std::hint::black_box;
use std::time::{Duration, Instant};

/// splitmix64 (Steele, Lea, Flood 2014).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1]: never 0, so `ln` is finite.
    pub fn unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    /// Exponentially distributed with mean `mean`.
    pub fn exp(&mut self, mean: f64) -> f64 {
        -mean * self.unit().ln()
    }
}

/// How a job's work (in nanoseconds) is drawn.
#[derive(Debug, Clone, Copy)]
pub struct WorkDist {
    mean_ns: f64,
    /// Bounded Pareto `(low, high, alpha)`, or `None`: every job is `mean_ns`.
    pareto: Option<(f64, f64, f64)>,
}

/// Shape of the heavy tail: α = 1.5 (infinite variance when unbounded).
const PARETO_ALPHA: f64 = 1.5;
/// Largest over smallest job of the heavy tail.
const PARETO_SPAN: f64 = 1000.0;

impl WorkDist {
    /// Every job does `mean` of work, or with `heavy_tail` a bounded Pareto
    /// draw with the same mean.
    pub fn new(mean: Duration, heavy_tail: bool) -> WorkDist {
        let mean_ns = mean.as_nanos() as f64;
        let pareto = heavy_tail.then(|| {
            // Mean of a bounded Pareto on [L, r·L]:
            //   L · α/(α−1) · (1 − r^(1−α)) / (1 − r^(−α)),
            // linear in L, so L follows from the wanted mean directly.
            let a = PARETO_ALPHA;
            let r = PARETO_SPAN;
            let factor = a / (a - 1.0) * (1.0 - r.powf(1.0 - a)) / (1.0 - r.powf(-a));
            let low = mean_ns / factor;
            (low, low * r, a)
        });
        WorkDist { mean_ns, pareto }
    }

    /// The mean, in nanoseconds.
    pub fn mean_ns(&self) -> f64 {
        self.mean_ns
    }

    /// The largest job this distribution can draw, in nanoseconds.
    pub fn max_ns(&self) -> f64 {
        self.pareto.map_or(self.mean_ns, |(_, h, _)| h)
    }

    /// One job's work in nanoseconds (at least 1).
    pub fn sample(&self, rng: &mut Rng) -> u64 {
        let ns = match self.pareto {
            None => self.mean_ns,
            Some((l, h, a)) => {
                // Inverse CDF of the bounded Pareto.
                let u = rng.unit();
                let tail = 1.0 - (l / h).powf(a);
                l * (1.0 - u * tail).powf(-1.0 / a)
            }
        };
        (ns.round() as u64).max(1)
    }
}

/// One job of a trace.
#[derive(Debug, Clone, Copy)]
pub struct Arrival {
    /// Scheduled arrival, nanoseconds after the trace's start.
    pub at_ns: u64,
    /// Work the job does, nanoseconds (CPU time, or sleep with `--io`).
    pub work_ns: u64,
}

/// A reproducible schedule of jobs.
#[derive(Debug, Clone, Default)]
pub struct Trace {
    /// Jobs in arrival order.
    pub arrivals: Vec<Arrival>,
    /// ON periods `(start_ns, end_ns)`, ending within the trace.
    pub bursts: Vec<(u64, u64)>,
    /// Length of the trace, nanoseconds.
    pub len_ns: u64,
}

/// The bursty process's parameters.
#[derive(Debug, Clone, Copy)]
pub struct BurstSpec {
    /// Length of the trace.
    pub seconds: f64,
    /// Arrivals per second in the OFF state.
    pub base_rate: f64,
    /// Arrivals per second in the ON state.
    pub burst_rate: f64,
    /// Mean OFF sojourn, seconds.
    pub mean_off_s: f64,
    /// Mean ON sojourn, seconds.
    pub mean_on_s: f64,
    /// Job sizes.
    pub work: WorkDist,
}

/// Step 2: the Markov-modulated Poisson trace for `seed`.
pub fn bursty(spec: &BurstSpec, seed: u64) -> Trace {
    let mut rng = Rng::new(seed);
    let len_ns = (spec.seconds * 1e9) as u64;
    let mut t = 0u64;
    let mut on = false;
    let mut trace = Trace { len_ns, ..Trace::default() };
    while t < len_ns {
        let (mean_s, rate) =
            if on { (spec.mean_on_s, spec.burst_rate) } else { (spec.mean_off_s, spec.base_rate) };
        let end = t.saturating_add((rng.exp(mean_s) * 1e9) as u64).min(len_ns);
        poisson(&mut trace.arrivals, &mut rng, t, end, rate, &spec.work);
        if on && end < len_ns {
            trace.bursts.push((t, end));
        }
        t = end;
        on = !on;
    }
    trace
}

/// A steady Poisson trace at `rate` for `seconds` (the max-rate search).
pub fn steady(rate: f64, seconds: f64, work: &WorkDist, seed: u64) -> Trace {
    let mut rng = Rng::new(seed);
    let len_ns = (seconds * 1e9) as u64;
    let mut trace = Trace { len_ns, ..Trace::default() };
    poisson(&mut trace.arrivals, &mut rng, 0, len_ns, rate, work);
    trace
}

/// Appends Poisson arrivals at `rate` in `[from, to)`.
fn poisson(out: &mut Vec<Arrival>, rng: &mut Rng, from: u64, to: u64, rate: f64, w: &WorkDist) {
    if rate <= 0.0 {
        return;
    }
    let mean_gap_ns = 1e9 / rate;
    let mut t = from as f64;
    loop {
        t += rng.exp(mean_gap_ns);
        if t >= to as f64 {
            break;
        }
        out.push(Arrival { at_ns: t as u64, work_ns: w.sample(rng) });
    }
}

/// Step 4: CPU work of a given length, calibrated on this machine.
#[derive(Debug, Clone, Copy)]
pub struct CpuWork {
    iters_per_us: f64,
}

impl CpuWork {
    /// Times the loop: the fastest of 15 runs of ~2 ms each (the fastest is
    /// the one that was not interrupted).
    pub fn calibrate() -> CpuWork {
        // Warm up and find a batch that takes roughly 2 ms.
        let mut iters = 10_000u64;
        loop {
            let t = Instant::now();
            spin(iters);
            let e = t.elapsed();
            if e >= Duration::from_millis(2) || iters >= 1 << 34 {
                break;
            }
            iters *= 2;
        }
        let mut best = f64::MAX;
        for _ in 0..15 {
            let t = Instant::now();
            spin(iters);
            best = best.min(t.elapsed().as_nanos() as f64);
        }
        CpuWork { iters_per_us: iters as f64 * 1000.0 / best.max(1.0) }
    }

    /// A loop rate given by the user (to replay another run's load exactly:
    /// the calibration varies by a few percent from run to run).
    pub fn with_rate(iters_per_us: f64) -> CpuWork {
        CpuWork { iters_per_us }
    }

    /// Loop iterations per microsecond of CPU.
    pub fn iters_per_us(&self) -> f64 {
        self.iters_per_us
    }

    /// Burns `ns` nanoseconds of CPU (as calibrated).
    pub fn run(&self, ns: u64) {
        let iters = (ns as f64 * self.iters_per_us / 1000.0).round() as u64;
        spin(iters);
    }
}

/// The work loop: a dependent multiply-xorshift chain, opaque to the
/// optimiser through `black_box` on its input and output.
#[inline(never)]
fn spin(iters: u64) -> u64 {
    let mut x = black_box(0x2545_F491_4F6C_DD1Du64);
    for _ in 0..black_box(iters) {
        x = x.wrapping_mul(0x5851_F42D_4C95_7F2D).wrapping_add(0x1405_7B7E_F767_814F);
        x ^= x >> 33;
    }
    black_box(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> BurstSpec {
        BurstSpec {
            seconds: 200.0,
            base_rate: 1000.0,
            burst_rate: 10_000.0,
            mean_off_s: 2.0,
            mean_on_s: 0.5,
            work: WorkDist::new(Duration::from_micros(50), false),
        }
    }

    #[test]
    fn same_seed_same_trace() {
        let a = bursty(&spec(), 7);
        let b = bursty(&spec(), 7);
        let c = bursty(&spec(), 8);
        assert_eq!(a.arrivals.len(), b.arrivals.len());
        assert!(a.arrivals.iter().zip(&b.arrivals).all(|(x, y)| x.at_ns == y.at_ns));
        assert_ne!(a.arrivals.len(), c.arrivals.len());
    }

    #[test]
    fn rates_match_the_states() {
        let t = bursty(&spec(), 1);
        assert!(t.arrivals.windows(2).all(|w| w[0].at_ns <= w[1].at_ns));
        let on_ns: u64 = t.bursts.iter().map(|(a, b)| b - a).sum();
        let in_bursts = t
            .arrivals
            .iter()
            .filter(|a| t.bursts.iter().any(|&(s, e)| a.at_ns >= s && a.at_ns < e))
            .count();
        let on_rate = in_bursts as f64 / (on_ns as f64 / 1e9);
        assert!((on_rate - 10_000.0).abs() < 500.0, "{on_rate}");
        // About one fifth of the time is ON (0.5 s of every 2.5 s).
        let frac = on_ns as f64 / t.len_ns as f64;
        assert!(frac > 0.1 && frac < 0.3, "{frac}");
    }

    #[test]
    fn heavy_tail_keeps_the_mean() {
        let w = WorkDist::new(Duration::from_micros(50), true);
        let mut rng = Rng::new(3);
        let n = 400_000;
        let sum: u64 = (0..n).map(|_| w.sample(&mut rng)).sum();
        let mean = sum as f64 / n as f64;
        assert!((mean - 50_000.0).abs() < 2_500.0, "{mean}");
        assert!(w.max_ns() > 10.0 * w.mean_ns());
    }

    #[test]
    fn calibrated_work_takes_about_its_time() {
        let c = CpuWork::calibrate();
        assert!(c.iters_per_us() > 1.0);
        let t = Instant::now();
        c.run(2_000_000);
        // Not optimised away. (Only roughly its length: the calibration may
        // itself have been slowed by tests running in parallel, which makes
        // later work shorter; a descheduled run takes longer.)
        assert!(t.elapsed() >= Duration::from_micros(1_000), "{:?}", t.elapsed());
    }
}
