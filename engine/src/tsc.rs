//! A cheaper clock between real readings: the CPU's time-stamp counter.
//!
//! A shard reads the clock once per handler run (its end is the next run's
//! start). On the development VM a `clock_gettime` costs ~45 ns and an
//! `rdtsc` ~18 ns, a tenth of a no-op job's whole cost. So inside a lane
//! burst (`shard/run.rs`) the shard reads the real clock once, when the
//! burst begins, and derives each run's end from the counter:
//!
//! 1. At engine start, [`Tsc::calibrate`] measures the counter's rate
//!    against the monotonic clock over 2 ms. It is used only where the
//!    kernel itself keeps time with the counter (clocksource `tsc`: an
//!    invariant counter, synchronised across CPUs) on x86_64; elsewhere it
//!    returns `None` and every reading is a real one.
//! 2. A burst takes an [`Anchor`]: a real reading and the counter.
//! 3. A reading inside the burst is the anchor plus the counter's ticks
//!    since, at the calibrated rate, never before the previous reading.
//!    A burst lasts at most 32 runs, so a rate off by the calibration's
//!    ~5e-5 moves a reading by nanoseconds, and nothing accumulates across
//!    bursts.

use spindle_core::Time;

/// The counter's rate, measured at start.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tsc {
    /// Nanoseconds per tick, in 32.32 fixed point.
    ns_per_tick: u64,
}

/// A real reading and the counter at that moment.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Anchor {
    at: Time,
    ticks: u64,
    last: Time,
}

impl Tsc {
    /// Step 1: the counter's rate, or `None` where it is not to be used.
    pub(crate) fn calibrate() -> Option<Tsc> {
        if !usable() {
            return None;
        }
        let (t0, c0) = pair()?;
        while t0.elapsed() < std::time::Duration::from_millis(2) {}
        let (t1, c1) = pair()?;
        let ns = t1.duration_since(t0).as_nanos() as u64;
        let dt = c1.checked_sub(c0).filter(|&d| d > 0)?;
        let ns_per_tick = ((u128::from(ns) << 32) / u128::from(dt)) as u64;
        // 0.05 to 20 ns per tick (a 50 MHz to 20 GHz counter), else a
        // reading went wrong: do without.
        ((1u64 << 32) / 20..=20u64 << 32).contains(&ns_per_tick).then_some(Tsc { ns_per_tick })
    }

    /// Step 2: anchors readings at the real time `now`.
    pub(crate) fn anchor(&self, now: Time) -> Option<Anchor> {
        Some(Anchor { at: now, ticks: ticks()?, last: now })
    }

    /// Step 3: the time now, from `a`.
    pub(crate) fn now(&self, a: &mut Anchor) -> Option<Time> {
        let dt = ticks()?.saturating_sub(a.ticks);
        let ns = ((u128::from(dt) * u128::from(self.ns_per_tick)) >> 32) as u64;
        let t = Time(a.at.0.saturating_add(ns)).max(a.last);
        a.last = t;
        Some(t)
    }
}

/// A monotonic reading and the counter at the same moment: the counter is
/// read on both sides of the clock and the closest of 16 tries kept (a
/// thread preempted in between would skew the rate).
fn pair() -> Option<(std::time::Instant, u64)> {
    let mut best: Option<(u64, std::time::Instant, u64)> = None;
    for _ in 0..16 {
        let a = ticks()?;
        let t = std::time::Instant::now();
        let b = ticks()?;
        let gap = b.saturating_sub(a);
        if best.is_none_or(|(g, _, _)| gap < g) {
            best = Some((gap, t, a + gap / 2));
        }
    }
    best.map(|(_, t, c)| (t, c))
}

/// Whether the kernel keeps time with the counter (so it is invariant and
/// synchronised across CPUs).
fn usable() -> bool {
    cfg!(target_arch = "x86_64")
        && std::fs::read_to_string(
            "/sys/devices/system/clocksource/clocksource0/current_clocksource",
        )
        .is_ok_and(|s| s.trim() == "tsc")
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
fn ticks() -> Option<u64> {
    // SAFETY: `rdtsc` reads a register; it touches no memory and exists on
    // every x86_64 CPU.
    Some(unsafe { core::arch::x86_64::_rdtsc() })
}

#[cfg(not(target_arch = "x86_64"))]
fn ticks() -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_follow_the_real_clock_and_never_go_back() {
        let Some(tsc) = Tsc::calibrate() else { return };
        let clock = spindle_core::Clock::new();
        let start = clock.now();
        let Some(mut a) = tsc.anchor(start) else { return };
        let mut last = start;
        for _ in 0..1000 {
            let t = tsc.now(&mut a).unwrap_or(last);
            assert!(t >= last, "a reading went back");
            last = t;
        }
        // A derived reading lies between real readings taken around it,
        // give or take a tenth of the time since the anchor (the rate's
        // calibration is far closer than that).
        let spin = std::time::Instant::now();
        while spin.elapsed() < std::time::Duration::from_millis(2) {}
        let before = clock.now();
        let derived = tsc.now(&mut a).unwrap_or(before);
        let after = clock.now();
        let slack = after.0.saturating_sub(start.0) / 10;
        assert!(derived.0 + slack >= before.0, "{} ns early", before.0 - derived.0);
        assert!(derived.0 <= after.0 + slack, "{} ns late", derived.0 - after.0);
    }
}
