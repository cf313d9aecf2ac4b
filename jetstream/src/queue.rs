//! [`QueueConfig`]: a distributed queue's lease, attempts and backoff.

use std::time::Duration;

/// How a distributed queue hands out and retries jobs. Every node declaring
/// the queue must use the same settings (they live in the shared consumer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueConfig {
    pub(crate) ttr: Duration,
    pub(crate) max_attempts: u32,
    pub(crate) backoff_base: Duration,
    pub(crate) backoff_cap: Duration,
    pub(crate) max_ack_pending: i64,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            // beanstalkd's and the engine's default TTR.
            ttr: Duration::from_secs(60),
            max_attempts: spindle_engine::DEFAULT_MAX_ATTEMPTS,
            backoff_base: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(3600),
            max_ack_pending: 10_000,
        }
    }
}

impl QueueConfig {
    /// The lease (time to run): the consumer's AckWait. A job not completed,
    /// failed or touched within it is redelivered, to any node.
    pub fn ttr(mut self, d: Duration) -> Self {
        self.ttr = d.max(Duration::from_millis(100));
        self
    }

    /// Deliveries before a job is buried (at least 1). The consumer's
    /// MaxDeliver is one more: the extra delivery is the node's dead-letter
    /// step for a job whose last lease expired (JetStream itself keeps such
    /// a message in the stream for good).
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n.max(1);
        self
    }

    /// Retry backoff after a failure: `base` (0.5-1x with jitter), doubling
    /// per attempt, at most `cap`. Carried out as a Nak with delay.
    pub fn backoff(mut self, base: Duration, cap: Duration) -> Self {
        self.backoff_base = base;
        self.backoff_cap = cap.max(base);
        self
    }

    /// Most jobs leased at once across all nodes (the consumer's
    /// MaxAckPending; default 10,000).
    pub fn max_in_flight(mut self, n: u32) -> Self {
        self.max_ack_pending = i64::from(n.max(1));
        self
    }

    /// The delay before retry `attempt` (1-based: the one after the first
    /// failure is 1), with `salt` choosing the jitter.
    pub(crate) fn backoff_for(&self, attempt: u32, salt: u64) -> Duration {
        let shift = attempt.saturating_sub(1).min(30);
        let full = self.backoff_base.saturating_mul(1u32 << shift).min(self.backoff_cap);
        // Jitter 0.5-1x from a mixed salt (no RNG needed for spreading).
        let mixed = salt.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 54; // 0..1023
        full.mul_f64(0.5 + (mixed as f64) / 2046.0)
    }

    /// The consumer's MaxDeliver: attempts plus the dead-letter delivery.
    pub(crate) fn max_deliver(&self) -> i64 {
        i64::from(self.max_attempts) + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_within_jitter_and_caps() {
        let c = QueueConfig::default().backoff(Duration::from_millis(100), Duration::from_secs(1));
        for salt in [0u64, 1, 7, u64::MAX] {
            let d1 = c.backoff_for(1, salt);
            assert!(d1 >= Duration::from_millis(50) && d1 <= Duration::from_millis(100));
            let d3 = c.backoff_for(3, salt);
            assert!(d3 >= Duration::from_millis(200) && d3 <= Duration::from_millis(400));
            assert!(c.backoff_for(30, salt) <= Duration::from_secs(1));
        }
        assert_eq!(QueueConfig::default().max_attempts(3).max_deliver(), 4);
    }
}
