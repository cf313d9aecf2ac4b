//! The one retry policy: how many attempts a job gets, how long it waits
//! between them, and when a job whose runs keep ending without an outcome
//! is buried as a poison pill.
//!
//! Backoff is exponential with "equal jitter" (AWS Architecture Blog,
//! "Exponential Backoff And Jitter"): retry `n` waits a uniformly random
//! time in the upper half of `min(cap, base * 2^(n-1))`, so jobs failing
//! together spread out but never come back sooner than half the nominal
//! delay. The randomness comes from the table's own seeded [`Rng`], so a
//! table is deterministic.

use std::time::Duration;

/// Retries, backoff and poison pills for one queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts (reservations) before a failing job is buried; 0 means no
    /// limit.
    pub max_attempts: u32,
    /// Delay before the first retry.
    pub backoff_base: Duration,
    /// Longest delay between retries.
    pub backoff_cap: Duration,
    /// Runs in a row that end without an outcome (lease expired, holder
    /// gone, crash) after which the job is buried as a poison pill; 0 means
    /// never.
    pub poison_after: u32,
    /// Whether a run that ends without an outcome uses up an attempt: with
    /// it, a job interrupted on its last attempt is buried. Without it
    /// (beanstalkd's rules), only `fail` counts against `max_attempts`.
    pub interruptions_use_attempts: bool,
}

/// Attempts before a failing job is buried, when nothing else is set:
/// Sidekiq's and Faktory's 25, which with the default backoff spans about
/// 17 hours of retries.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 25;

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            backoff_base: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(3600),
            poison_after: 0,
            interruptions_use_attempts: false,
        }
    }
}

impl RetryPolicy {
    /// The delay before retry number `attempt` (1 = the first retry), with
    /// `random` as the jitter source.
    pub fn delay(&self, attempt: u32, random: u64) -> Duration {
        let exp = attempt.saturating_sub(1).min(31);
        let nominal = self.backoff_base.saturating_mul(1u32 << exp).min(self.backoff_cap);
        let half = nominal / 2;
        let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
        let jitter = if nanos == 0 { 0 } else { random % nanos.saturating_add(1) };
        half + Duration::from_nanos(jitter)
    }

    /// Whether a job that has been reserved `attempts` times may run again
    /// after a failure.
    pub fn may_retry(&self, attempts: u32) -> bool {
        self.max_attempts == 0 || attempts < self.max_attempts
    }

    /// Whether a job whose run just ended without an outcome is buried:
    /// `interrupted` such runs in a row, `attempts` reservations in all.
    pub fn buries_interrupted(&self, interrupted: u32, attempts: u32) -> bool {
        (self.poison_after > 0 && interrupted >= self.poison_after)
            || (self.interruptions_use_attempts && !self.may_retry(attempts))
    }
}

/// A small, fast PRNG (xorshift64*) for jitter, seeded per table.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (any value; 0 is fine).
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_exponentially_within_jitter_and_cap() {
        let p = RetryPolicy {
            backoff_base: Duration::from_millis(100),
            backoff_cap: Duration::from_secs(10),
            ..RetryPolicy::default()
        };
        let mut rng = Rng::new(7);
        for attempt in 1..40 {
            let nominal = (p.backoff_base * 2u32.pow((attempt - 1).min(20))).min(p.backoff_cap);
            let d = p.delay(attempt, rng.next_u64());
            assert!(d >= nominal / 2 && d <= nominal, "attempt {attempt}: {d:?}");
        }
        assert!(p.delay(1000, u64::MAX) <= p.backoff_cap);
        let zero = RetryPolicy { backoff_base: Duration::ZERO, ..p };
        assert_eq!(zero.delay(3, 12345), Duration::ZERO);
    }

    #[test]
    fn attempts_and_poison_pills() {
        let beanstalkd = RetryPolicy::default();
        assert!(beanstalkd.may_retry(24));
        assert!(!beanstalkd.may_retry(25));
        assert!(!beanstalkd.buries_interrupted(100, 100));
        let unlimited = RetryPolicy { max_attempts: 0, ..beanstalkd };
        assert!(unlimited.may_retry(u32::MAX));
        let strict = RetryPolicy {
            max_attempts: 5,
            poison_after: 3,
            interruptions_use_attempts: true,
            ..beanstalkd
        };
        assert!(!strict.buries_interrupted(2, 2));
        assert!(strict.buries_interrupted(3, 3));
        assert!(strict.buries_interrupted(1, 5));
    }
}
