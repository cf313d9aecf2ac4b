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
    /// Priority bands' upper bounds (exclusive), ascending; empty: one band.
    pub(crate) bands: Vec<u32>,
    /// Leases from more urgent bands after which a waiting band is served.
    pub(crate) aging: u32,
}

/// The priority a job has when none is given (beanstalkd's and the CLI's
/// default; DESIGN.md: lower is more urgent).
pub const DEFAULT_PRIORITY: u32 = 1024;

/// Most priority bands a queue may have.
pub(crate) const MAX_BANDS: usize = 8;

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            // beanstalkd's and the engine's default TTR.
            ttr: Duration::from_secs(60),
            max_attempts: spindle_engine::DEFAULT_MAX_ATTEMPTS,
            backoff_base: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(3600),
            max_ack_pending: 10_000,
            bands: Vec::new(),
            aging: 16,
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

    /// Priority bands: `bounds` are ascending upper bounds (exclusive) that
    /// split the job priority (a `u32`, lower is more urgent) into
    /// `bounds.len() + 1` bands, at most 8. `&[1024]` makes two bands:
    /// 0-1023 (beanstalkd's "urgent") and 1024 and up; `&[]` (the default)
    /// is one band, a plain FIFO queue. Each band is a subject and a durable
    /// consumer of its own; a worker pulls strictly from the most urgent
    /// band that has jobs, but see [`QueueConfig::aging`]. Every node
    /// declaring the queue must give the same bounds (they are kept in the
    /// consumers' descriptions and read back); a producer that has not
    /// declared the queue reads them from the server.
    pub fn priority_bands(mut self, bounds: &[u32]) -> Self {
        self.bands = bounds.to_vec();
        self
    }

    /// Aging, so that a less urgent band does not starve: once `n` leases in
    /// a row went to more urgent bands while a band had (or may have had)
    /// jobs, its next job comes first. `0` turns aging off (strict bands).
    /// Default 16. Per node (each worker counts its own leases), so nodes
    /// need not agree.
    pub fn aging(mut self, n: u32) -> Self {
        self.aging = n;
        self
    }

    /// Checks the bands: ascending, at most [`MAX_BANDS`].
    pub(crate) fn check(&self) -> Result<(), crate::Error> {
        check_bands(&self.bands)
    }

    /// Deliveries before a job is buried ([`QueueConfig::max_attempts`]).
    pub fn attempts(&self) -> u32 {
        self.max_attempts
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

/// The band of priority `pri` under ascending upper bounds `bounds`.
pub(crate) fn band_of(bounds: &[u32], pri: u32) -> usize {
    bounds.iter().take_while(|&&b| b <= pri).count()
}

/// Refuses bounds that are not strictly ascending or make too many bands.
pub(crate) fn check_bands(bounds: &[u32]) -> Result<(), crate::Error> {
    if bounds.len() >= MAX_BANDS {
        return Err(crate::Error::InvalidConfig {
            setting: "priority_bands",
            reason: format!("{} bounds make more than {MAX_BANDS} bands", bounds.len()),
        });
    }
    if bounds.windows(2).any(|w| w[0] >= w[1]) || bounds.first() == Some(&0) {
        return Err(crate::Error::InvalidConfig {
            setting: "priority_bands",
            reason: format!("bounds {bounds:?} must be above 0 and strictly ascending"),
        });
    }
    Ok(())
}

/// The bands as kept in a band consumer's description, so that a node
/// that did not declare the queue finds them: `spindle-bands:1024,65536`.
pub(crate) fn bands_description(bounds: &[u32]) -> Option<String> {
    if bounds.is_empty() {
        return None;
    }
    let list: Vec<String> = bounds.iter().map(u32::to_string).collect();
    Some(format!("spindle-bands:{}", list.join(",")))
}

/// Reads [`bands_description`] back; `None` when it is not one.
pub(crate) fn parse_bands_description(d: &str) -> Option<Vec<u32>> {
    let list = d.strip_prefix("spindle-bands:")?;
    list.split(',').map(|n| n.parse().ok()).collect()
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

    #[test]
    fn priorities_map_to_bands_by_bounds() {
        let c = QueueConfig::default().priority_bands(&[1024, 65_536]);
        assert_eq!(band_of(&c.bands, 0), 0);
        assert_eq!(band_of(&c.bands, 1023), 0);
        assert_eq!(band_of(&c.bands, DEFAULT_PRIORITY), 1);
        assert_eq!(band_of(&c.bands, 65_535), 1);
        assert_eq!(band_of(&c.bands, u32::MAX), 2);
        assert_eq!(band_of(&[], 7), 0);
        assert!(c.check().is_ok());
        assert!(QueueConfig::default().priority_bands(&[5, 5]).check().is_err());
        assert!(QueueConfig::default().priority_bands(&[0]).check().is_err());
        assert!(QueueConfig::default().priority_bands(&[1, 2, 3, 4, 5, 6, 7, 8]).check().is_err());
        let d = bands_description(&[1024, 65_536]);
        assert_eq!(d.as_deref(), Some("spindle-bands:1024,65536"));
        assert_eq!(parse_bands_description(d.as_deref().unwrap_or("")), Some(vec![1024, 65_536]));
        assert_eq!(bands_description(&[]), None);
        assert_eq!(parse_bands_description("other"), None);
    }
}
