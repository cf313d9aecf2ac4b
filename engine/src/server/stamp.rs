//! [`Stamp`]: a point on the monotonic clock in 8 bytes.
//!
//! A job keeps two times (when it was created, and when it entered its
//! current state) and the job table holds millions of jobs. `Instant` takes
//! 16 bytes on Linux (a `timespec`); a stamp is a signed nanosecond offset
//! from one process-wide epoch (the first instant ever stamped), which
//! reaches ±292 years and orders like the instants it came from.
//! Recovery stamps jobs created before the process started (negative
//! offsets), which is why it is signed.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The instant all stamps count from: the first one stamped.
static EPOCH: OnceLock<Instant> = OnceLock::new();

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Stamp(i64);

impl Stamp {
    /// The stamp of `t`.
    pub(crate) fn of(t: Instant) -> Stamp {
        let epoch = *EPOCH.get_or_init(|| t);
        let ns = |d: Duration| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
        match t.checked_duration_since(epoch) {
            Some(after) => Stamp(ns(after)),
            None => Stamp(-ns(epoch.duration_since(t))),
        }
    }

    /// The stamp `ago` before `now`.
    pub(crate) fn before(now: Instant, ago: Duration) -> Stamp {
        let ago = i64::try_from(ago.as_nanos()).unwrap_or(i64::MAX);
        Stamp(Stamp::of(now).0.saturating_sub(ago))
    }

    /// The stamp `d` after this one.
    pub(crate) fn after(self, d: Duration) -> Stamp {
        Stamp(self.0.saturating_add(i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)))
    }

    /// Time from this stamp to `now`; zero if `now` is not later.
    pub(crate) fn elapsed_at(self, now: Instant) -> Duration {
        let ns = Stamp::of(now).0.saturating_sub(self.0);
        Duration::from_nanos(u64::try_from(ns).unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elapsed_matches_the_instants() {
        let t = Instant::now();
        let a = Stamp::of(t);
        let later = t + Duration::from_micros(1_234_567);
        assert_eq!(a.elapsed_at(later), Duration::from_micros(1_234_567));
        assert_eq!(a.elapsed_at(t), Duration::ZERO);
        assert!(Stamp::of(later) > a);
        assert_eq!(a.after(Duration::from_micros(1_234_567)), Stamp::of(later));
    }

    #[test]
    fn an_earlier_now_is_zero_not_a_wrap() {
        let t = Instant::now() + Duration::from_secs(5);
        assert_eq!(Stamp::of(t).elapsed_at(t - Duration::from_secs(1)), Duration::ZERO);
    }

    #[test]
    fn stamps_before_the_epoch_work() {
        // Recovery stamps a job created long before this process started.
        let now = Instant::now();
        let old = Stamp::before(now, Duration::from_secs(86_400 * 365));
        assert!(old < Stamp::of(now));
        assert_eq!(old.elapsed_at(now), Duration::from_secs(86_400 * 365));
    }
}
