//! How many workers a queue needs: one law for every front-end.
//!
//! The library's lag controller (`spindle-engine`'s `lag.rs`) and its
//! per-queue `desired_workers`, the daemon's `desired-workers`
//! (`stats-tube-ext`, `/metrics`, the web page) and a JetStream node's
//! published desire all size from this module, so that one queue's figure
//! means the same whichever front-end serves it.
//!
//! 1. **Measure** ([`Rates::observe`]). From cumulative counters read at
//!    any interval (jobs that became ready, runs that ended with an
//!    outcome, and those runs' total time), the arrival rate `λ` and the
//!    mean run time `S`, each smoothed exponentially with a time constant
//!    `τ`. The weight of a reading is `1 - e^(-dt/τ)`, so a steady load
//!    gives the same estimate read every 10 ms or every second.
//! 2. **Size** ([`little`]). `λ·S + q·S/D`: by Little's law `λ·S` workers
//!    are busy with the arrivals, and `q·S/D` more drain the `q` jobs
//!    already waiting within the target wait `D`.
//! 3. **Desire** ([`desired_workers`]). That, rounded up; at least 1 while
//!    a job waits or runs (before a run time is measured, step 2 gives 0);
//!    capped by the
//!    queue's limits ([`crate::Limits::worker_cap`]: a limited queue keeps
//!    only so many workers busy).
//!
//! The lag controller sizes its own threads with step 2 plus square-root
//! safety staffing (`β·√(λ·S)`, `docs/controller.md`); `desired_workers`
//! has no such margin: it is read by autoscalers of whole worker
//! processes, which add their own.

use std::time::Duration;

/// The smoothing time constant of the desired-workers estimate.
pub const TAU: Duration = Duration::from_millis(500);

/// Cumulative counters of one queue, read at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counted {
    /// Jobs that became ready, ever (puts, retries, releases, kicks,
    /// delays that came due).
    pub arrived: u64,
    /// Runs that ended with an outcome, ever.
    pub runs: u64,
    /// Those runs' total time, nanoseconds.
    pub run_ns: u64,
}

/// The smoothed arrival rate and mean run time of one queue.
#[derive(Clone, Copy, Debug, Default)]
pub struct Rates {
    /// The last reading: when (ns on the caller's clock) and what.
    last: Option<(u64, Counted)>,
    /// `λ`, jobs per second.
    rate: f64,
    /// `S`, seconds (0 until a run has ended).
    run_s: f64,
}

impl Rates {
    /// Step 1: takes the counters read at `now_ns`. The first reading only
    /// sets the baseline; a reading no later than the previous one is
    /// ignored (it has no interval to measure).
    pub fn observe(&mut self, now_ns: u64, c: Counted, tau: Duration) {
        let Some((t0, c0)) = self.last else {
            self.last = Some((now_ns, c));
            return;
        };
        if now_ns <= t0 {
            return;
        }
        self.last = Some((now_ns, c));
        let dt = (now_ns - t0) as f64 / 1e9;
        let alpha = weight(dt, tau);
        let arrived = c.arrived.saturating_sub(c0.arrived) as f64;
        self.rate += alpha * (arrived / dt - self.rate);
        let runs = c.runs.saturating_sub(c0.runs);
        if runs > 0 {
            let per = c.run_ns.saturating_sub(c0.run_ns) as f64 / 1e9 / runs as f64;
            // The first measurement replaces the unknown (0) outright.
            self.run_s =
                if self.run_s == 0.0 { per } else { self.run_s + alpha * (per - self.run_s) };
        }
    }

    /// `λ`: smoothed arrivals per second.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// `S`: smoothed mean run time in seconds (0 before the first run).
    pub fn run_s(&self) -> f64 {
        self.run_s
    }

    /// `S` as a duration.
    pub fn run_time(&self) -> Duration {
        Duration::from_secs_f64(self.run_s.clamp(0.0, 1e9))
    }
}

/// The weight of a reading `dt_s` seconds after the last, for
/// exponential smoothing with time constant `tau`: `1 - e^(-dt/τ)`.
pub fn weight(dt_s: f64, tau: Duration) -> f64 {
    1.0 - (-dt_s / tau.as_secs_f64().max(1e-9)).exp()
}

/// Step 2: `λ·S + q·S/D`, the workers that keep up with `rate` arrivals per
/// second of `run_s` seconds each and drain `ready` waiting jobs within
/// `wait`.
pub fn little(rate: f64, run_s: f64, ready: f64, wait: Duration) -> f64 {
    rate.max(0.0) * run_s + ready.max(0.0) * run_s / wait.as_secs_f64().max(1e-6)
}

/// Step 3: the workers a queue needs, from its rates, its `ready` jobs, whether
/// any job of it is running (`busy`), the target wait `wait` and the cap of
/// its limits (`Limits::worker_cap`, given the mean run time).
pub fn desired_workers(r: &Rates, ready: u64, busy: bool, wait: Duration, cap: Option<u64>) -> u64 {
    let want = little(r.rate, r.run_s, ready as f64, wait).ceil();
    let mut n = if want.is_finite() { want.min(1e9) as u64 } else { 0 };
    if ready > 0 || busy {
        n = n.max(1); // work waits or runs (say, before a run was measured)
    }
    match cap {
        Some(c) => n.min(c.max(1)),
        None => n,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    /// `rate` jobs/s of `run` seconds each, read every `every_ms` for `secs`.
    fn steady(rate: u64, run_s: f64, every_ms: u64, secs: u64) -> Rates {
        let mut r = Rates::default();
        let mut c = Counted::default();
        for i in 0..=(secs * 1000 / every_ms) {
            r.observe(i * every_ms * MS, c, TAU);
            let n = rate * every_ms / 1000;
            c.arrived += n;
            c.runs += n;
            c.run_ns += (n as f64 * run_s * 1e9) as u64;
        }
        r
    }

    #[test]
    fn a_steady_load_is_measured_the_same_at_any_reading_interval() {
        for every in [10, 100, 1000] {
            let r = steady(2_000, 0.005, every, 10);
            assert!((r.rate() - 2_000.0).abs() < 1.0, "every {every} ms: {}", r.rate());
            assert!((r.run_s() - 0.005).abs() < 1e-6, "every {every} ms: {}", r.run_s());
        }
    }

    #[test]
    fn the_first_reading_is_a_baseline_and_a_stale_one_is_ignored() {
        let mut r = Rates::default();
        r.observe(5 * MS, Counted { arrived: 1_000, runs: 1_000, run_ns: 1_000 * MS }, TAU);
        assert_eq!((r.rate(), r.run_s()), (0.0, 0.0));
        r.observe(5 * MS, Counted { arrived: 2_000, runs: 2_000, run_ns: 2_000 * MS }, TAU);
        assert_eq!((r.rate(), r.run_s()), (0.0, 0.0));
        r.observe(1_005 * MS, Counted { arrived: 1_100, runs: 1_010, run_ns: 1_030 * MS }, TAU);
        assert!(r.rate() > 0.0 && r.rate() < 100.0, "{}", r.rate());
        assert!((r.run_s() - 0.003).abs() < 1e-9, "the first run time is taken whole");
    }

    #[test]
    fn littles_law_keeps_up_and_drains_the_backlog_within_the_wait() {
        let w = Duration::from_millis(500);
        assert_eq!(little(100.0, 0.05, 0.0, w), 5.0);
        assert_eq!(little(100.0, 0.05, 10.0, w), 6.0);
        assert_eq!(little(0.0, 0.0, 10.0, w), 0.0);
    }

    #[test]
    fn desire_rounds_up_starts_at_one_and_respects_the_cap() {
        let w = Duration::from_millis(500);
        let r = steady(100, 0.041, 100, 5);
        assert_eq!(desired_workers(&r, 0, true, w, None), 5, "4.1 busy rounds up");
        assert_eq!(desired_workers(&r, 0, true, w, Some(3)), 3);
        assert_eq!(desired_workers(&r, 0, true, w, Some(0)), 1, "a cap never asks for none");
        let fresh = Rates::default();
        assert_eq!(desired_workers(&fresh, 0, false, w, None), 0, "idle");
        assert_eq!(desired_workers(&fresh, 3, false, w, None), 1, "waiting, nothing measured");
        assert_eq!(desired_workers(&fresh, 0, true, w, None), 1, "running, nothing measured");
    }
}
