//! How long the threads of a pool case waited for a connection: a
//! histogram every worker records into without a lock (a relaxed add on
//! one of a few hundred counters costs nothing beside a round trip).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Buckets per doubling: a quantile is known within 2^(1/8), about 9 %.
const PER_DOUBLING: f64 = 8.0;
/// Up to 2^24 µs (about 17 s); longer waits count in the last bucket.
const BUCKETS: usize = 24 * 8 + 1;

/// Waits for a connection, over every round of one case.
pub struct Waits {
    buckets: Vec<AtomicU64>,
    longest_us: AtomicU64,
}

impl Waits {
    pub fn new() -> Waits {
        Waits {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            longest_us: AtomicU64::new(0),
        }
    }

    pub fn record(&self, wait: Duration) {
        let us = u64::try_from(wait.as_micros()).unwrap_or(u64::MAX);
        self.buckets[bucket(us)].fetch_add(1, Ordering::Relaxed);
        self.longest_us.fetch_max(us, Ordering::Relaxed);
    }

    /// The wait that a share `q` of checkouts did not exceed (the upper
    /// bound of its bucket); `None` before any was recorded.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        // The rank of the q-quantile, 1-based, rounded up.
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        let index = counts.iter().position(|&n| {
            seen += n;
            seen >= rank
        })?;
        let bound_us = 2f64.powf(index as f64 / PER_DOUBLING).floor();
        Some(Duration::from_micros(bound_us as u64).min(self.longest()))
    }

    pub fn longest(&self) -> Duration {
        Duration::from_micros(self.longest_us.load(Ordering::Relaxed))
    }
}

/// The smallest bucket whose bound, 2^(index/8) µs rounded down, is at
/// least `us`.
fn bucket(us: u64) -> usize {
    if us <= 1 {
        return 0;
    }
    let mut index = ((us as f64).log2() * PER_DOUBLING).ceil() as usize;
    // Float rounding at a bucket's edge: settle on the smallest that fits.
    while index > 0 && 2f64.powf((index - 1) as f64 / PER_DOUBLING).floor() >= us as f64 {
        index -= 1;
    }
    index.min(BUCKETS - 1)
}
