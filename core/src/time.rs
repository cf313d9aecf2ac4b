//! The table's one notion of time, and the one clock that front-ends read.
//!
//! The table never reads a clock: every operation takes `now` as a
//! [`Time`], so the same calls give the same table (tests, replay, the
//! model test). A `Time` is nanoseconds since the Unix epoch, so a delayed
//! job keeps its due time across a restart; [`Clock`] gives front-ends a
//! wall-anchored time that never goes backwards within a process.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Nanoseconds since the Unix epoch (until the year 2554).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time(pub u64);

impl Time {
    /// The epoch itself; also "never" where a time is optional.
    pub const ZERO: Time = Time(0);

    /// `ms` milliseconds since the epoch.
    pub const fn from_millis(ms: u64) -> Time {
        Time(ms.saturating_mul(1_000_000))
    }

    /// `s` seconds since the epoch.
    pub const fn from_secs(s: u64) -> Time {
        Time(s.saturating_mul(1_000_000_000))
    }

    /// Milliseconds since the epoch, rounded down.
    pub const fn as_millis(self) -> u64 {
        self.0 / 1_000_000
    }

    /// This time plus `d`, saturating.
    pub fn plus(self, d: Duration) -> Time {
        Time(self.0.saturating_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)))
    }

    /// This time plus `ms` milliseconds, saturating.
    pub const fn plus_millis(self, ms: u64) -> Time {
        Time(self.0.saturating_add(ms.saturating_mul(1_000_000)))
    }

    /// This time plus `s` seconds, saturating.
    pub const fn plus_secs(self, s: u64) -> Time {
        Time(self.0.saturating_add(s.saturating_mul(1_000_000_000)))
    }

    /// How long after `earlier` this is (zero if it is not after).
    pub const fn since(self, earlier: Time) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

/// The clock front-ends read: the wall time at creation, advanced by the
/// monotonic clock. Within a process it never goes backwards (a wall-clock
/// step does not fire or stall timers); across restarts it is the wall
/// clock, which is what due times in the log mean.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    wall: Time,
    mono: Instant,
}

impl Clock {
    /// A clock anchored at the current wall time.
    pub fn new() -> Clock {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        Clock { wall: Time(wall), mono: Instant::now() }
    }

    /// A clock whose reading at `at` (an instant of this process, now or
    /// earlier) is the wall time then.
    pub fn starting_at(at: Instant) -> Clock {
        let c = Clock::new();
        let back = c.mono.saturating_duration_since(at);
        Clock { wall: Time(c.wall.0.saturating_sub(back.as_nanos() as u64)), mono: at }
    }

    /// Now.
    pub fn now(&self) -> Time {
        self.wall.plus(self.mono.elapsed())
    }

    /// The time `at` (an instant of this process) stands for.
    pub fn at(&self, at: Instant) -> Time {
        self.wall.plus(at.saturating_duration_since(self.mono))
    }

    /// The instant of this process that `t` stands for (clamped to the
    /// clock's anchor: a time before it maps to the anchor).
    pub fn instant(&self, t: Time) -> Instant {
        self.mono + t.since(self.wall)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates_and_converts() {
        let t = Time::from_millis(1500);
        assert_eq!(t.as_millis(), 1500);
        assert_eq!(t.plus_secs(2), Time::from_millis(3500));
        assert_eq!(t.plus(Duration::from_micros(1)).0, 1_500_001_000);
        assert_eq!(Time(u64::MAX).plus_millis(5), Time(u64::MAX));
        assert_eq!(Time::from_secs(1).since(Time::from_secs(2)), Duration::ZERO);
        assert_eq!(Time::from_secs(3).since(Time::from_secs(1)), Duration::from_secs(2));
    }

    #[test]
    fn a_clock_can_start_at_an_earlier_instant() {
        let at = Instant::now();
        let c = Clock::starting_at(at);
        let later = at + Duration::from_secs(2);
        assert_eq!(c.at(later).since(c.at(at)), Duration::from_secs(2));
    }

    #[test]
    fn the_clock_maps_instants_both_ways() {
        let c = Clock::new();
        let later = Instant::now() + Duration::from_secs(5);
        let t = c.at(later);
        assert!(t >= c.now());
        assert_eq!(c.instant(t), later);
    }
}
