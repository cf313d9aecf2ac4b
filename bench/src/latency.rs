//! Latency recording with an HDR histogram (nanosecond resolution, reported
//! in microseconds).

use crate::BoxResult;
use hdrhistogram::Histogram;
use std::time::Duration;

/// A latency histogram from 1 ns to 60 s with 3 significant digits.
#[derive(Debug, Clone)]
pub struct Latency {
    hist: Histogram<u64>,
}

/// Percentiles of a [`Latency`], in microseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Percentiles {
    /// Median.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Largest sample.
    pub max_us: f64,
}

impl Latency {
    /// An empty histogram.
    pub fn new() -> BoxResult<Latency> {
        Ok(Latency { hist: Histogram::new_with_bounds(1, 60_000_000_000, 3)? })
    }

    /// Records one sample (saturating at the upper bound).
    pub fn record(&mut self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1);
        self.hist.saturating_record(ns);
    }

    /// Adds another histogram's samples.
    pub fn merge(&mut self, other: &Latency) -> BoxResult<()> {
        self.hist.add(&other.hist)?;
        Ok(())
    }

    /// The summary.
    pub fn percentiles(&self) -> Percentiles {
        let us = |ns: u64| ns as f64 / 1000.0;
        Percentiles {
            p50_us: us(self.hist.value_at_quantile(0.50)),
            p99_us: us(self.hist.value_at_quantile(0.99)),
            p999_us: us(self.hist.value_at_quantile(0.999)),
            max_us: us(self.hist.max()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_in_microseconds() {
        let mut l = Latency::new().unwrap();
        for i in 1..=100u64 {
            l.record(Duration::from_micros(i));
        }
        let p = l.percentiles();
        assert!((p.p50_us - 50.0).abs() < 0.1, "{p:?}");
        assert!((p.p99_us - 99.0).abs() < 0.1, "{p:?}");
    }
}
