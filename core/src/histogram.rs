//! A log-linear histogram of waits in microseconds: 16 sub-buckets per
//! power of two, so a reported percentile is within 6.25% above the true
//! value. Recording is a leading-zero count, two shifts and an add (the
//! table records one wait per reservation; an HdrHistogram record cost
//! ~100 instructions there, 6% of a put/reserve/complete cycle).

/// Sub-bucket bits per power of two.
const SUB_BITS: u32 = 4;
const SUB: usize = 1 << SUB_BITS;
const BUCKETS: usize = (64 - SUB_BITS as usize + 1) * SUB;

/// The histogram (8 KiB, made at a queue's first reservation).
#[derive(Clone)]
pub(crate) struct Histogram {
    counts: Box<[u64; BUCKETS]>,
    total: u64,
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Histogram").field("total", &self.total).finish_non_exhaustive()
    }
}

/// The bucket of `v`: values below 16 have a bucket each; above, the
/// power of two and the next 4 bits.
fn index(v: u64) -> usize {
    if v < SUB as u64 {
        return v as usize;
    }
    let e = 63 - v.leading_zeros(); // >= SUB_BITS
    let sub = (v >> (e - SUB_BITS)) as usize & (SUB - 1);
    ((e - SUB_BITS + 1) as usize) * SUB + sub
}

/// The largest value of bucket `i`.
fn upper(i: usize) -> u64 {
    if i < SUB {
        return i as u64;
    }
    let e = (i / SUB) as u32 + SUB_BITS - 1;
    let sub = (i % SUB) as u64;
    let base = (1u64 << e) | (sub << (e - SUB_BITS));
    base.saturating_add((1u64 << (e - SUB_BITS)) - 1)
}

impl Histogram {
    pub(crate) fn new() -> Histogram {
        let counts: Box<[u64]> = vec![0; BUCKETS].into_boxed_slice();
        let counts = match counts.try_into() {
            Ok(c) => c,
            Err(_) => Box::new([0; BUCKETS]),
        };
        Histogram { counts, total: 0 }
    }

    #[inline]
    pub(crate) fn record(&mut self, v: u64) {
        self.counts[index(v)] += 1;
        self.total += 1;
    }

    pub(crate) fn len(&self) -> u64 {
        self.total
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Recorded values whose bucket ends at or below `v`: a cumulative
    /// count for a Prometheus `le` bucket, short by at most the values in
    /// the one bucket that straddles `v` (6.25% of `v` wide).
    pub(crate) fn count_at_most(&self, v: u64) -> u64 {
        self.counts.iter().enumerate().take_while(|&(i, _)| upper(i) <= v).map(|(_, &c)| c).sum()
    }

    /// An estimate of the sum of the recorded values: each bucket's count
    /// times its midpoint.
    pub(crate) fn approx_sum(&self) -> f64 {
        let mut sum = 0.0;
        let mut lower = 0u64;
        for (i, &c) in self.counts.iter().enumerate() {
            let up = upper(i);
            if c > 0 {
                sum += c as f64 * (lower as f64 + up as f64) / 2.0;
            }
            lower = up.saturating_add(1);
        }
        sum
    }

    /// The value at quantile `q` (0..=1): the upper end of the bucket that
    /// holds it.
    pub(crate) fn value_at_quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return upper(i);
            }
        }
        upper(BUCKETS - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_every_value_in_order_within_a_sixteenth() {
        let mut last = 0;
        for v in (0..100_000u64).chain([1 << 40, u64::MAX / 3, u64::MAX]) {
            let i = index(v);
            assert!(i >= last || v > 100_000, "index goes backwards at {v}");
            last = i;
            assert!(upper(i) >= v, "{v} above its bucket's end {}", upper(i));
            assert!(upper(i) - v <= v / 16 + 1, "{v}: bucket end {} too far", upper(i));
        }
        assert!(index(u64::MAX) < BUCKETS);
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
        assert!((990..=1055).contains(&p99), "{p99}");
        assert!(h.value_at_quantile(1.0) >= 1000);
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
}
