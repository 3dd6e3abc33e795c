//! A lock-free latency histogram with fixed buckets: one `AtomicU64` per bucket and one for the
//! sum, so an observation is two relaxed adds and never waits (prometheus-client's `Histogram`
//! takes a `Mutex`).
//!
//! Buckets ([`BUCKETS_SECONDS`]): 0.5 ms, 1 ms, 2.5 ms, 5 ms, 10 ms, 25 ms, 50 ms, 100 ms,
//! 250 ms, 500 ms, 1 s, 2.5 s, 5 s, 10 s, 30 s, then `+Inf`. A proxy's own overhead sits in the
//! lowest buckets, typical upstream answers in the middle, and 30 s covers slow backends up to
//! the usual timeouts; a 1-2.5-5 progression keeps quantile estimates within a factor of ~2.5.
//! A bucket's bound is inclusive (`le`): exactly 1 ms counts in `le="0.001"`.
//!
//! The sum is kept in whole microseconds (each observation truncated): a `u64` of nanoseconds
//! wraps after 584 years of *cumulative* latency, which a route carrying 1000 s of latency per
//! second (50 000 req/s at 20 ms) reaches in 7 months; microseconds last 1000 times longer and
//! are far finer than any bucket. The count is not stored: it is the total of the
//! buckets, so `_count` always equals the `+Inf` bucket. A scrape reads the atomics one by one,
//! so an observation racing with it may show in the buckets and not yet in `_sum` (or the
//! reverse) until the next scrape, as with every Prometheus client.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the finite buckets, in seconds (the `le` values).
pub const BUCKETS_SECONDS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The same bounds in nanoseconds, compared against each observation.
const BUCKETS_NANOS: [u64; 15] = [
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
    5_000_000_000,
    10_000_000_000,
    30_000_000_000,
];

/// Finite buckets plus `+Inf`.
const SLOTS: usize = BUCKETS_NANOS.len() + 1;

pub(super) struct Histogram {
    /// Per-bucket (not cumulative) counts; the last slot is `+Inf`.
    counts: [AtomicU64; SLOTS],
    sum_micros: AtomicU64,
}

/// One scrape's reading.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct HistogramSnapshot {
    /// `(upper bound in seconds, count in that bucket alone)`, `+Inf` last: what
    /// prometheus-client's encoder expects (it accumulates them itself).
    pub(super) buckets: Vec<(f64, u64)>,
    pub(super) count: u64,
    pub(super) sum_seconds: f64,
}

impl Histogram {
    pub(super) fn new() -> Self {
        Histogram {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_micros: AtomicU64::new(0),
        }
    }

    #[inline]
    pub(super) fn observe(&self, d: Duration) {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        // The first bound >= the value; past the last finite bound it is the `+Inf` slot.
        let slot = BUCKETS_NANOS.partition_point(|&bound| bound < nanos);
        if let Some(count) = self.counts.get(slot) {
            count.fetch_add(1, Ordering::Relaxed);
        }
        self.sum_micros.fetch_add(nanos / 1_000, Ordering::Relaxed);
    }

    pub(super) fn snapshot(&self) -> HistogramSnapshot {
        let bounds = BUCKETS_SECONDS.iter().copied().chain([f64::INFINITY]);
        let buckets: Vec<(f64, u64)> = bounds
            .zip(&self.counts)
            .map(|(bound, count)| (bound, count.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|&(_, n)| n).sum();
        // Exact for any sum below 2^53 µs (285 years).
        let sum_seconds = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        HistogramSnapshot {
            buckets,
            count,
            sum_seconds,
        }
    }
}

#[cfg(test)]
pub(super) fn bucket_nanos() -> &'static [u64] {
    &BUCKETS_NANOS
}
