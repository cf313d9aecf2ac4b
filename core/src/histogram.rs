//! A log-linear histogram ([`LogHistogram`]): `2^B` sub-buckets per power
//! of two, so a reported percentile is within `1/2^B` above the true
//! value. Recording is a leading-zero count, two shifts and an add.
//!
//! Two users, one implementation: the table's wait histogram of
//! microseconds per queue (`B` = 4, within 6.25%; an HdrHistogram record
//! cost ~100 instructions there, 6% of a put/reserve/complete cycle), and
//! the library's shard latencies in nanoseconds (`B` = 7, within 0.8%;
//! `spindle-engine`).

/// The table's wait histogram: 16 sub-buckets per power of two (8 KiB,
/// made at a queue's first reservation).
pub(crate) type Histogram = LogHistogram<4>;

/// A log-linear histogram of `u64` values with `2^B` sub-buckets per power
/// of two (`(65 − B) · 2^B` counters).
#[derive(Clone)]
pub struct LogHistogram<const B: u32> {
    counts: Box<[u64]>,
    total: u64,
    max: u64,
}

impl<const B: u32> std::fmt::Debug for LogHistogram<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogHistogram")
            .field("total", &self.total)
            .field("max", &self.max)
            .finish_non_exhaustive()
    }
}

impl<const B: u32> Default for LogHistogram<B> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const B: u32> LogHistogram<B> {
    const SUB: usize = 1 << B;
    const BUCKETS: usize = (64 - B as usize + 1) * Self::SUB;

    /// An empty histogram.
    pub fn new() -> Self {
        LogHistogram { counts: vec![0; Self::BUCKETS].into_boxed_slice(), total: 0, max: 0 }
    }

    /// The bucket of `v`: values below `2^B` have a bucket each; above,
    /// the power of two and the next `B` bits.
    #[inline]
    fn index(v: u64) -> usize {
        if v < Self::SUB as u64 {
            return v as usize;
        }
        let e = 63 - v.leading_zeros(); // >= B
        let sub = (v >> (e - B)) as usize & (Self::SUB - 1);
        ((e - B + 1) as usize) * Self::SUB + sub
    }

    /// The largest value of bucket `i`.
    fn upper(i: usize) -> u64 {
        if i < Self::SUB {
            return i as u64;
        }
        let e = (i / Self::SUB) as u32 + B - 1;
        let sub = (i % Self::SUB) as u64;
        let base = (1u64 << e) | (sub << (e - B));
        base.saturating_add((1u64 << (e - B)) - 1)
    }

    /// Counts one value.
    #[inline]
    pub fn record(&mut self, v: u64) {
        if let Some(c) = self.counts.get_mut(Self::index(v)) {
            *c += 1;
        }
        self.total += 1;
        self.max = self.max.max(v);
    }

    /// Adds `other`'s counts.
    pub fn add(&mut self, other: &Self) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }

    /// Values recorded.
    pub fn len(&self) -> u64 {
        self.total
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// The largest value recorded (0 if none).
    pub fn max(&self) -> u64 {
        self.max
    }

    /// Recorded values whose bucket ends at or below `v`: a cumulative
    /// count for a Prometheus `le` bucket, short by at most the values in
    /// the one bucket that straddles `v`.
    pub fn count_at_most(&self, v: u64) -> u64 {
        self.counts
            .iter()
            .enumerate()
            .take_while(|&(i, _)| Self::upper(i) <= v)
            .map(|(_, &c)| c)
            .sum()
    }

    /// An estimate of the sum of the recorded values: each bucket's count
    /// times its midpoint.
    pub fn approx_sum(&self) -> f64 {
        let mut sum = 0.0;
        let mut lower = 0u64;
        for (i, &c) in self.counts.iter().enumerate() {
            let up = Self::upper(i);
            if c > 0 {
                sum += c as f64 * (lower as f64 + up as f64) / 2.0;
            }
            lower = up.saturating_add(1);
        }
        sum
    }

    /// The value at quantile `q` (0..=1): the upper end of the bucket that
    /// holds it, never above the largest value recorded.
    pub fn value_at_quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Self::upper(i).min(self.max);
            }
        }
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buckets_cover_every_value_in_order<const B: u32>() {
        let mut last = 0;
        for v in (0..300_000u64).chain([1 << 40, u64::MAX / 3, u64::MAX]) {
            let i = LogHistogram::<B>::index(v);
            assert!(i >= last || v >= 300_000, "index goes backwards at {v}");
            last = i;
            let up = LogHistogram::<B>::upper(i);
            assert!(up >= v, "{v} above its bucket's end {up}");
            assert!(up - v <= (v >> B) + 1, "{v}: bucket end {up} too far");
        }
        assert!(LogHistogram::<B>::index(u64::MAX) < LogHistogram::<B>::BUCKETS);
    }

    #[test]
    fn buckets_cover_every_value_in_order_within_their_width() {
        buckets_cover_every_value_in_order::<4>();
        buckets_cover_every_value_in_order::<7>();
    }

    #[test]
    fn quantiles_come_from_the_recorded_values() {
        let mut h = Histogram::new();
        assert_eq!(h.value_at_quantile(0.5), 0);
        for v in 1..=1000u64 {
            h.record(v);
        }
        assert_eq!(h.len(), 1000);
        let p50 = h.value_at_quantile(0.5);
        let p99 = h.value_at_quantile(0.99);
        assert!((500..=532).contains(&p50), "{p50}");
        assert!((990..=1000).contains(&p99), "{p99}");
        assert_eq!(h.value_at_quantile(1.0), 1000);
    }

    #[test]
    fn cumulative_counts_and_the_sum_follow_the_recorded_values() {
        let mut h = Histogram::new();
        for v in 1..=1000u64 {
            h.record(v);
        }
        assert_eq!(h.count_at_most(0), 0);
        assert_eq!(h.count_at_most(15), 15);
        let c = h.count_at_most(500);
        assert!((470..=500).contains(&c), "{c}");
        assert_eq!(h.count_at_most(u64::MAX), 1000);
        let sum = h.approx_sum();
        assert!((sum - 500_500.0).abs() < 500_500.0 * 0.04, "{sum}");
    }

    #[test]
    fn merged_histograms_count_both_and_keep_the_largest() {
        let (mut a, mut b) = (LogHistogram::<7>::new(), LogHistogram::<7>::new());
        for v in 1..=1000u64 {
            a.record(v * 1000);
        }
        b.record(5_000_000);
        a.add(&b);
        assert_eq!((a.len(), a.max()), (1001, 5_000_000));
        let p50 = a.value_at_quantile(0.5);
        assert!((500_000..=504_000).contains(&p50), "{p50}");
        assert_eq!(a.value_at_quantile(1.0), 5_000_000);
    }
}
