//! Lock-free histograms for the node's hot path.
//!
//! The owning thread tallies observations in a plain [`LocalHistogram`] and flushes it into the
//! shared atomic [`Histogram`] once per batch, so the cost per entry is an array increment and
//! the atomic traffic is per batch. Scrapers read [`Histogram::snapshot`] at any time.

use std::sync::atomic::{AtomicU64, Ordering};

/// Bucket upper bounds for durations, in nanoseconds (50 us .. 2.5 s).
pub static DURATION_BOUNDS_NANOS: &[u64] = &[
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
];

/// Bucket upper bounds for sizes in entries (1 .. 65536, powers of 4).
pub static COUNT_BOUNDS: &[u64] = &[1, 4, 16, 64, 256, 1024, 4096, 16_384, 65_536];

/// A histogram with fixed bucket bounds, updated with relaxed atomics.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [u64],
    /// One count per bound, plus the overflow bucket.
    buckets: Box<[AtomicU64]>,
    sum: AtomicU64,
}

/// A consistent-enough copy of a histogram for exposition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistogramSnapshot {
    pub bounds: &'static [u64],
    /// Cumulative counts per bound (`le`), Prometheus style.
    pub cumulative: Vec<u64>,
    pub count: u64,
    pub sum: u64,
}

impl Histogram {
    pub fn new(bounds: &'static [u64]) -> Self {
        Self {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
        }
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut running = 0;
        let mut cumulative = Vec::with_capacity(self.bounds.len());
        for bucket in &self.buckets[..self.bounds.len()] {
            running += bucket.load(Ordering::Relaxed);
            cumulative.push(running);
        }
        let count = running + self.buckets[self.bounds.len()].load(Ordering::Relaxed);
        HistogramSnapshot {
            bounds: self.bounds,
            cumulative,
            count,
            sum: self.sum.load(Ordering::Relaxed),
        }
    }

    /// Records one value directly (for paths that are not per entry).
    pub fn observe(&self, value: u64) {
        let slot = bucket_of(self.bounds, value);
        self.buckets[slot].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(value, Ordering::Relaxed);
    }
}

fn bucket_of(bounds: &[u64], value: u64) -> usize {
    bounds
        .iter()
        .position(|&b| value <= b)
        .unwrap_or(bounds.len())
}

/// A thread-local tally, flushed into a [`Histogram`] in one go.
#[derive(Debug)]
pub struct LocalHistogram {
    bounds: &'static [u64],
    buckets: Vec<u64>,
    sum: u64,
}

impl LocalHistogram {
    pub fn new(bounds: &'static [u64]) -> Self {
        Self {
            bounds,
            buckets: vec![0; bounds.len() + 1],
            sum: 0,
        }
    }

    pub fn record(&mut self, value: u64) {
        self.record_n(value, 1);
    }

    /// Records `count` observations of the same value at the cost of one.
    pub fn record_n(&mut self, value: u64, count: u64) {
        self.buckets[bucket_of(self.bounds, value)] += count;
        self.sum = self.sum.wrapping_add(value.wrapping_mul(count));
    }

    /// Adds the tally to `into` and clears it.
    pub fn flush(&mut self, into: &Histogram) {
        debug_assert_eq!(self.bounds, into.bounds, "same buckets");
        for (local, shared) in self.buckets.iter_mut().zip(into.buckets.iter()) {
            if *local > 0 {
                shared.fetch_add(*local, Ordering::Relaxed);
                *local = 0;
            }
        }
        if self.sum > 0 {
            into.sum.fetch_add(self.sum, Ordering::Relaxed);
            self.sum = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_are_cumulative() {
        let h = Histogram::new(COUNT_BOUNDS);
        let mut local = LocalHistogram::new(COUNT_BOUNDS);
        for v in [1, 3, 3, 100, 1_000_000] {
            local.record(v);
        }
        local.flush(&h);
        let s = h.snapshot();
        assert_eq!(s.cumulative[0], 1, "le 1");
        assert_eq!(s.cumulative[1], 3, "le 4");
        assert_eq!(s.cumulative[4], 4, "le 256");
        assert_eq!(s.count, 5, "the overflow counts too");
        assert_eq!(s.sum, 1_000_107);
    }
}
