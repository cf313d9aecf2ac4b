//! The shards' latency histograms (dispatch, run time, end to end): a
//! log-linear histogram of nanoseconds with 128 sub-buckets per power of
//! two, so a reported percentile is at most 0.8% above the true value (the
//! HdrHistogram it replaces kept 2 significant figures, ~1%).
//!
//! A record is a leading-zero count, two shifts and an add. A lane job is
//! recorded three times; HdrHistogram's general record (bounds, resizing,
//! counts of any width) cost ~5% of a no-op job's time there (`perf`,
//! `docs/benchmarks.md`).

/// Sub-bucket bits per power of two.
const SUB_BITS: u32 = 7;
const SUB: usize = 1 << SUB_BITS;
const BUCKETS: usize = (64 - SUB_BITS as usize + 1) * SUB;

/// A histogram of nanoseconds (~58 KiB).
#[derive(Clone)]
pub(crate) struct Hist {
    counts: Box<[u64]>,
    total: u64,
    max: u64,
}

impl std::fmt::Debug for Hist {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hist").field("total", &self.total).field("max", &self.max).finish()
    }
}

/// The bucket of `v`: values below 128 have a bucket each; above, the
/// power of two and the next 7 bits.
#[inline]
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

impl Hist {
    pub(crate) fn new() -> Hist {
        Hist { counts: vec![0; BUCKETS].into_boxed_slice(), total: 0, max: 0 }
    }

    #[inline]
    pub(crate) fn record(&mut self, v: u64) {
        if let Some(c) = self.counts.get_mut(index(v)) {
            *c += 1;
        }
        self.total += 1;
        self.max = self.max.max(v);
    }

    /// Adds `other`'s counts.
    pub(crate) fn add(&mut self, other: &Hist) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }

    pub(crate) fn len(&self) -> u64 {
        self.total
    }

    pub(crate) fn max(&self) -> u64 {
        self.max
    }

    /// The value at quantile `q` (0..=1): the upper end of the bucket that
    /// holds it, never above the largest value recorded.
    pub(crate) fn value_at_quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return upper(i).min(self.max);
            }
        }
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_every_value_in_order_within_128th() {
        let mut last = 0;
        for v in (0..300_000u64).chain([1 << 40, u64::MAX / 3, u64::MAX]) {
            let i = index(v);
            assert!(i >= last || v >= 300_000, "index goes backwards at {v}");
            last = i;
            assert!(upper(i) >= v, "{v} above its bucket's end {}", upper(i));
            assert!(upper(i) - v <= v / 128 + 1, "{v}: bucket end {} too far", upper(i));
        }
        assert!(index(u64::MAX) < BUCKETS);
    }

    #[test]
    fn quantiles_counts_and_merges_follow_the_recorded_values() {
        let (mut a, mut b) = (Hist::new(), Hist::new());
        assert_eq!(a.value_at_quantile(0.5), 0);
        for v in 1..=1000u64 {
            a.record(v * 1000);
        }
        b.record(5_000_000);
        a.add(&b);
        assert_eq!((a.len(), a.max()), (1001, 5_000_000));
        let p50 = a.value_at_quantile(0.5);
        assert!((500_000..=504_000).contains(&p50), "{p50}");
        assert_eq!(a.value_at_quantile(1.0), 5_000_000);
        let p99 = a.value_at_quantile(0.99);
        assert!((990_000..=998_000).contains(&p99), "{p99}");
    }
}
