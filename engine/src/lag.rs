//! The lag controller: how many workers should be active, from queue lag.
//!
//! This module is the decision logic only: it takes [`Sample`]s and returns
//! [`Decision`]s, with no clock, thread or atomic of its own, so tests can
//! feed it synthetic load. `control.rs` samples the shards every tick and
//! applies the decisions.
//!
//! Every tick, in order:
//!
//! 1. **Measure.** From the cumulative counters, the arrival rate `λ` and
//!    the completion rate (exponentially smoothed, time constant [`TAU`]),
//!    the mean run time `S` (busy time over completions, smoothed) and the
//!    ready count `q` (smoothed too: a Poisson stream leaves a few jobs
//!    waiting at random moments, and with `D` = 0.5 ms and 50 µs jobs each
//!    of them would otherwise add a tenth of a worker and, through `ceil`,
//!    hold a second worker for the whole scale-down window; a real backlog
//!    shows within a few ticks, and step 3 reacts to its age at once).
//! 2. **Size.** `N = ceil(λ·S + β·√(λ·S) + q·S/D)` (`λ·S + q·S/D` is
//!    `spindle_core::staffing::little`, the law every `desired_workers`
//!    uses; step 1 is its `Rates`): Little's law gives the
//!    busy workers the arrivals need (`λ·S`, the offered load), square-root
//!    safety staffing covers its randomness (the Halfin-Whitt regime: for
//!    Poisson arrivals a margin of `β·√(λ·S)` keeps the probability of
//!    waiting fixed as load grows; `β` = 1), and `q·S/D` adds the workers
//!    that drain the `q` jobs already waiting within the target wait `D`.
//! 3. **Panic button.** If the oldest ready job has waited more than `2·D`,
//!    at least double the active count: the estimates lag behind a burst,
//!    the age does not.
//! 4. **Floor.** Never fewer than the workers inside one handler for longer
//!    than `D` plus those stalled in one (a stalled worker serves nobody),
//!    and never outside `[min, max]`. The scale-down window (step 6)
//!    remembers this value, without step 3.
//! 5. **Up** at once when `N` exceeds the active count, by at most
//!    `max(2·active, active + 4)` per tick (so a bad estimate cannot jump
//!    to the maximum in one step on a large machine).
//! 6. **Down** only after the stabilisation rules: the target is the
//!    highest recommendation over the last [`Settings::window`]; nothing
//!    within `window` of a scale-up (dwell); changes under 10% are ignored;
//!    at most 10% of the active count (at least one) per
//!    [`Settings::step_every`]. Growing fast and shrinking slowly is what
//!    keeps steady load from flapping.
//!
//! The law comes from the issue (#4) that specified this controller, where
//! it was tuned in simulation; the damping constants follow Kubernetes'
//! horizontal pod autoscaler (5 min down-scale window, 10% tolerance),
//! scaled to a job engine's time scale.

use spindle_core::staffing::{little, weight, Counted, Rates};
use std::collections::VecDeque;
use std::time::Duration;

/// Time constant of the rate and run-time smoothing: 50 ms, five ticks. A
/// burst shows in `λ` within a few ticks; a single slow tick does not.
pub(crate) const TAU: Duration = Duration::from_millis(50);
/// `β` of the safety-staffing term.
const BETA: f64 = 1.0;
/// Relative changes smaller than this are not worth a scale-down.
const TOLERANCE: f64 = 0.10;
/// Largest fraction of the active workers removed per step.
const STEP_FRACTION: f64 = 0.10;

/// Bounds and damping.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    pub(crate) min: usize,
    pub(crate) max: usize,
    /// Target wait `D` (half the latency target).
    pub(crate) target_wait: Duration,
    /// Scale-down window and dwell after a scale-up (3 s).
    pub(crate) window: Duration,
    /// Time between scale-down steps (0.5 s).
    pub(crate) step_every: Duration,
}

impl Settings {
    /// Settings for a latency target (p99 of the wait before a job starts).
    pub(crate) fn new(min: usize, max: usize, latency_target: Duration) -> Settings {
        let max = max.max(1);
        Settings {
            min: min.clamp(1, max),
            max,
            target_wait: latency_target / 2,
            window: Duration::from_secs(3),
            step_every: Duration::from_millis(500),
        }
    }
}

/// What the controller reads each tick (cumulative counters and gauges).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Sample {
    /// Time of the sample since the engine started.
    pub(crate) now: Duration,
    /// Jobs that became ready, since start.
    pub(crate) arrivals: u64,
    /// Handler runs that ended, since start.
    pub(crate) completions: u64,
    /// Total handler run time, since start.
    pub(crate) busy: Duration,
    /// Jobs ready and waiting now.
    pub(crate) ready: u64,
    /// Age of the oldest ready job now (an estimate).
    pub(crate) oldest: Duration,
    /// Workers inside one handler for longer than the target wait now (a
    /// worker in a short handler is soon free again, and counting those
    /// would let random overlaps of short jobs hold the pool up).
    pub(crate) running: usize,
    /// Of those, workers stalled in one handler (they count twice: a stalled
    /// worker serves nobody, so another one takes its place).
    pub(crate) stalled: usize,
}

/// The outcome of one tick.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Decision {
    /// Workers to have active from now on.
    pub(crate) active: usize,
    /// The law's recommendation this tick (after the panic button and the
    /// floor), before damping.
    pub(crate) recommended: usize,
    pub(crate) arrival_rate: f64,
    pub(crate) completion_rate: f64,
    pub(crate) mean_run: Duration,
}

/// The controller's state between ticks.
#[derive(Debug)]
pub(crate) struct Lag {
    s: Settings,
    active: usize,
    last: Option<Sample>,
    /// `λ` and `S` (`spindle_core::staffing`, with [`TAU`]).
    rates: Rates,
    mu: f64,
    /// Smoothed ready count.
    queued: f64,
    /// Recommendations of the last `window`: (time, value).
    history: VecDeque<(Duration, usize)>,
    last_up: Option<Duration>,
    last_down: Option<Duration>,
    /// +1 after growing, -1 after shrinking, 0 before either.
    direction: i8,
    /// Active-count changes, and of those, reversals of direction.
    pub(crate) changes: u64,
    pub(crate) reversals: u64,
}

impl Lag {
    /// A controller starting with `s.min` workers active.
    pub(crate) fn new(s: Settings) -> Lag {
        Lag {
            active: s.min,
            s,
            last: None,
            rates: Rates::default(),
            mu: 0.0,
            queued: 0.0,
            history: VecDeque::new(),
            last_up: None,
            last_down: None,
            direction: 0,
            changes: 0,
            reversals: 0,
        }
    }

    /// The active count now.
    pub(crate) fn active(&self) -> usize {
        self.active
    }

    /// Step 1: smoothed rates and run time.
    fn measure(&mut self, x: &Sample) {
        let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let counted = Counted { arrived: x.arrivals, runs: x.completions, run_ns: ns(x.busy) };
        self.rates.observe(ns(x.now), counted, TAU);
        let Some(prev) = self.last else { return };
        let dt = x.now.saturating_sub(prev.now).as_secs_f64();
        if dt <= 0.0 {
            return;
        }
        let alpha = weight(dt, TAU);
        self.queued += alpha * (x.ready as f64 - self.queued);
        let done = x.completions.saturating_sub(prev.completions);
        self.mu += alpha * (done as f64 / dt - self.mu);
    }

    /// Steps 2-4: the recommendation.
    /// Returns the law's value (steps 2 and 4), which the scale-down window
    /// remembers, and the value with the panic button (step 3), which
    /// scale-up follows: a moment of old age (a preempted worker, one slow
    /// job) grows the pool at once but does not hold it for the window.
    fn recommend(&self, x: &Sample) -> (usize, usize) {
        let (lambda, run) = (self.rates.rate(), self.rates.run_s());
        let load = lambda * run;
        let raw = little(lambda, run, self.queued, self.s.target_wait) + BETA * load.sqrt();
        let n = if raw.is_finite() { raw.ceil().min(1e9) as usize } else { self.s.max };
        let law = n.max(x.running + x.stalled).clamp(self.s.min, self.s.max);
        let mut up = law;
        if x.oldest > self.s.target_wait * 2 {
            up = up.max(self.active.saturating_mul(2)).clamp(self.s.min, self.s.max);
        }
        (law, up)
    }

    /// One tick: measure, size, and apply the up/down rules.
    pub(crate) fn tick(&mut self, x: Sample) -> Decision {
        self.measure(&x);
        self.last = Some(x);
        let (law, rec) = self.recommend(&x);
        self.history.push_back((x.now, law));
        while self.history.front().is_some_and(|&(t, _)| x.now.saturating_sub(t) > self.s.window) {
            self.history.pop_front();
        }
        let before = self.active;
        if rec > self.active {
            // Step 5.
            let cap = (self.active * 2).max(self.active + 4);
            self.active = rec.min(cap);
            self.last_up = Some(x.now);
        } else if rec < self.active {
            // Step 6.
            let target = self.history.iter().map(|&(_, r)| r).max().unwrap_or(rec);
            let dwelling = self.last_up.is_some_and(|t| x.now.saturating_sub(t) < self.s.window);
            let stepped =
                self.last_down.is_some_and(|t| x.now.saturating_sub(t) < self.s.step_every);
            let small =
                ((self.active - target.min(self.active)) as f64) < TOLERANCE * self.active as f64;
            if target < self.active && !dwelling && !stepped && !small {
                let step = ((self.active as f64 * STEP_FRACTION) as usize).max(1);
                self.active = target.max(self.active - step).max(self.s.min);
                self.last_down = Some(x.now);
            }
        }
        if self.active != before {
            self.changes += 1;
            let dir = if self.active > before { 1 } else { -1 };
            if self.direction != 0 && dir != self.direction {
                self.reversals += 1;
            }
            self.direction = dir;
        }
        Decision {
            active: self.active,
            recommended: rec,
            arrival_rate: self.rates.rate(),
            completion_rate: self.mu,
            mean_run: self.rates.run_time(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICK: Duration = Duration::from_millis(10);

    /// Drives a controller with a steady synthetic load.
    struct Load {
        lag: Lag,
        x: Sample,
    }

    impl Load {
        fn new(min: usize, max: usize) -> Load {
            let s = Settings::new(min, max, Duration::from_millis(10));
            Load { lag: Lag::new(s), x: Sample::default() }
        }

        /// One tick in which `rate` jobs/s of `run` each arrive and finish,
        /// with `ready` waiting, the oldest for `oldest`.
        fn tick(&mut self, rate: f64, run: Duration, ready: u64, oldest: Duration) -> Decision {
            let n = (rate * TICK.as_secs_f64()).round() as u64;
            self.x.now += TICK;
            self.x.arrivals += n;
            self.x.completions += n;
            self.x.busy += run * n as u32;
            self.x.ready = ready;
            self.x.oldest = oldest;
            self.lag.tick(self.x)
        }

        fn steady(&mut self, ticks: usize, rate: f64, run: Duration) -> Decision {
            let mut d = None;
            for _ in 0..ticks {
                d = Some(self.tick(rate, run, 0, Duration::ZERO));
            }
            d.unwrap_or_else(|| self.tick(rate, run, 0, Duration::ZERO))
        }
    }

    const RUN: Duration = Duration::from_micros(100);

    #[test]
    fn starts_at_min_and_stays_there_idle() {
        let mut l = Load::new(1, 16);
        assert_eq!(l.lag.active(), 1);
        let d = l.steady(500, 0.0, RUN);
        assert_eq!(d.active, 1);
        assert_eq!(l.lag.changes, 0);
    }

    #[test]
    fn sizes_by_littles_law_with_safety_margin() {
        let mut l = Load::new(1, 64);
        // 40k jobs/s of 100 µs: offered load 4 workers, margin 2.
        let d = l.steady(400, 40_000.0, RUN);
        assert!((d.arrival_rate - 40_000.0).abs() < 400.0, "{d:?}");
        assert!((d.mean_run.as_secs_f64() - 100e-6).abs() < 1e-6, "{d:?}");
        assert_eq!(d.recommended, 6, "ceil(4 + sqrt(4)) = 6");
        assert_eq!(d.active, 6);
    }

    #[test]
    fn backlog_scales_up_immediately_but_capped_per_tick() {
        let mut l = Load::new(1, 64);
        l.steady(100, 1_000.0, RUN);
        assert_eq!(l.lag.active(), 1);
        // 1000 jobs waiting, 100 µs each, target wait 5 ms: 20 more
        // workers. The first tick already grows; each tick grows by at most
        // max(2·active, active + 4); the pool gets there as the smoothed
        // backlog catches up (time constant 50 ms).
        let mut prev = 1;
        for tick in 0..20 {
            let d = l.tick(1_000.0, RUN, 1_000, Duration::from_millis(1));
            assert!(d.active <= (2 * prev).max(prev + 4), "tick {tick}: {prev} -> {d:?}");
            if tick == 0 {
                assert!(d.active > 1, "no growth on the first tick: {d:?}");
            }
            prev = d.active;
        }
        assert!(prev >= 20, "{prev}");
    }

    #[test]
    fn a_few_jobs_waiting_now_and_then_do_not_hold_extra_workers() {
        // A Poisson stream at 30% of one worker leaves 2-3 jobs waiting at
        // random ticks; that alone must not keep a second worker.
        let mut l = Load::new(1, 8);
        l.steady(10, 3_000.0, RUN);
        for i in 0..2000 {
            let ready = if i % 37 == 0 { 3 } else { 0 };
            let d = l.tick(3_000.0, RUN, ready, Duration::from_micros(200));
            assert_eq!(d.active, 1, "tick {i}: {d:?}");
        }
    }

    #[test]
    fn old_jobs_double_even_without_estimates() {
        // No completion yet: run time unknown, the law says 0. The age of
        // the oldest job still doubles the active count every tick.
        let mut l = Load::new(1, 8);
        for want in [2, 4, 8, 8] {
            l.x.now += TICK;
            l.x.arrivals += 100;
            l.x.ready = 100;
            l.x.oldest = Duration::from_millis(11);
            assert_eq!(l.lag.tick(l.x).active, want);
        }
    }

    #[test]
    fn holds_through_the_window_then_steps_down_gradually() {
        let mut l = Load::new(1, 64);
        l.steady(300, 100_000.0, RUN); // load 10: 10 + sqrt(10) -> 14
        let high = l.lag.active();
        assert_eq!(high, 14);
        // Load stops. Nothing changes for the window (3 s = 300 ticks).
        for i in 0..290 {
            let d = l.tick(0.0, RUN, 0, Duration::ZERO);
            assert_eq!(d.active, high, "tick {i}: shrank inside the window");
        }
        // Then at most 10% (at least one) per 0.5 s.
        let mut prev = high;
        let mut steps = Vec::new();
        for _ in 0..2000 {
            let d = l.tick(0.0, RUN, 0, Duration::ZERO);
            if d.active != prev {
                assert!(d.active < prev);
                assert!(prev - d.active <= (prev / 10).max(1), "{prev} -> {}", d.active);
                steps.push((l.x.now, d.active));
                prev = d.active;
            }
        }
        assert_eq!(prev, 1, "ends at min");
        for w in steps.windows(2) {
            assert!(w[1].0 - w[0].0 >= Duration::from_millis(500), "steps too close: {steps:?}");
        }
        assert_eq!(l.lag.reversals, 1, "one reversal: from growing to shrinking");
    }

    #[test]
    fn ignores_small_decreases() {
        let mut l = Load::new(1, 64);
        // Load 36: 36 + 6 = 42 workers.
        l.steady(300, 360_000.0, RUN);
        assert_eq!(l.lag.active(), 42);
        // Load 34.8: 34.8 + 5.9 -> 41, a 2% change: held.
        let d = l.steady(1000, 348_000.0, RUN);
        assert_eq!(d.recommended, 41);
        assert_eq!(d.active, 42);
    }

    #[test]
    fn never_below_running_and_stalled_workers() {
        let mut l = Load::new(1, 8);
        l.x.running = 3;
        l.x.stalled = 2;
        let d = l.steady(10, 0.0, RUN);
        assert_eq!(d.recommended, 5);
        assert_eq!(d.active, 5);
    }

    #[test]
    fn respects_bounds() {
        let mut l = Load::new(2, 4);
        assert_eq!(l.lag.active(), 2);
        let d = l.steady(300, 10_000_000.0, RUN);
        assert_eq!(d.active, 4);
        let d = l.steady(2000, 0.0, RUN);
        assert_eq!(d.active, 2);
        // min above max is clamped to max.
        let s = Settings::new(9, 3, Duration::from_millis(10));
        assert_eq!((s.min, s.max), (3, 3));
    }

    #[test]
    fn steady_noisy_load_does_not_flap() {
        // Poisson-like noise around a load of 3 workers for 60 s.
        let mut l = Load::new(1, 16);
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        for _ in 0..6000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let noise = (seed % 2001) as f64 / 1000.0 - 1.0; // -1..1
            let rate = 30_000.0 * (1.0 + 0.3 * noise);
            l.tick(rate, RUN, seed % 3, Duration::from_micros(seed % 500));
        }
        assert!(l.lag.reversals <= 2, "{} reversals in a minute", l.lag.reversals);
    }
}
