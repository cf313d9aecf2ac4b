//! Retry delays: exponential backoff with jitter, capped.

use std::time::Duration;

/// How long to wait before retry number `attempt` (1 = first retry): a
/// uniformly random point in the upper half of `min(cap, base * 2^(attempt-1))`
/// ("equal jitter" from the AWS Architecture Blog's "Exponential Backoff And
/// Jitter"), so retries of many jobs failing together spread out but never
/// come sooner than half the nominal delay.
pub(crate) fn retry_delay(base: Duration, cap: Duration, attempt: u32, random: u64) -> Duration {
    let exp = attempt.saturating_sub(1).min(40);
    let nominal = base.saturating_mul(1u32 << exp.min(31)).min(cap);
    let half = nominal / 2;
    let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
    half + Duration::from_nanos(if nanos == 0 { 0 } else { random % (nanos + 1) })
}

/// A small, fast PRNG (xorshift64*) for jitter; one per shard thread.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
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
        let base = Duration::from_millis(100);
        let cap = Duration::from_secs(10);
        let mut rng = Rng::new(7);
        for attempt in 1..20 {
            let nominal = (base * 2u32.pow((attempt - 1).min(20))).min(cap);
            let d = retry_delay(base, cap, attempt, rng.next_u64());
            assert!(d >= nominal / 2 && d <= nominal, "attempt {attempt}: {d:?}");
        }
        assert!(retry_delay(base, cap, 1000, u64::MAX) <= cap);
    }
}
