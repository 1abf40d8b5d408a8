//! Latencies in fixed buckets, counted with atomics: recording is one
//! `log2` and one `fetch_add`, with no lock and no allocation, so it can
//! sit on every request's path.
//!
//! Bucket `i` (below the last) holds values up to 2^((i − 16) / 4) ms:
//! four buckets per doubling, from 1/16 ms to 65,536 ms, so a quantile read
//! from them is within 19 % of the true value. The last bucket holds
//! everything longer.

use std::sync::atomic::{AtomicU64, Ordering};

/// How many buckets a histogram has.
pub const BUCKETS: usize = 82;
/// Buckets per doubling.
const PER_DOUBLING: f64 = 4.0;
/// The bucket whose upper bound is 1 ms.
const ONE_MS: usize = 16;

/// The upper bound of bucket `i` in ms (infinite for the last).
fn upper(i: usize) -> f64 {
    if i >= BUCKETS - 1 {
        return f64::INFINITY;
    }
    ((i as f64 - ONE_MS as f64) / PER_DOUBLING).exp2()
}

/// The bucket a value in ms falls into.
fn bucket(ms: f64) -> usize {
    if ms.is_nan() || ms <= upper(0) {
        return 0;
    }
    let i = (ms.log2() * PER_DOUBLING).ceil() + ONE_MS as f64;
    if i >= (BUCKETS - 1) as f64 {
        return BUCKETS - 1;
    }
    // A value just over a bound can round onto it; the next bucket holds it.
    let i = i as usize;
    if ms > upper(i) { i + 1 } else { i }
}

/// Cumulative counts per bucket, shared by whoever records.
#[derive(Debug)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS],
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram { counts: std::array::from_fn(|_| AtomicU64::new(0)) }
    }
}

impl Histogram {
    /// Counts one value, in milliseconds.
    pub fn record(&self, ms: f64) {
        self.counts[bucket(ms)].fetch_add(1, Ordering::Relaxed);
    }

    /// The counts so far.
    pub fn snapshot(&self) -> Counts {
        Counts(std::array::from_fn(|i| self.counts[i].load(Ordering::Relaxed)))
    }
}

/// Counts per bucket: a snapshot, or the difference of two.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts(pub [u64; BUCKETS]);

impl Default for Counts {
    fn default() -> Self {
        Counts([0; BUCKETS])
    }
}

impl Counts {
    /// What was counted after `earlier` (a snapshot of the same histogram).
    pub fn since(&self, earlier: &Counts) -> Counts {
        Counts(std::array::from_fn(|i| self.0[i].saturating_sub(earlier.0[i])))
    }

    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// The value below which a fraction `q` (0 to 1) of the values fall,
    /// interpolated within its bucket; `None` when nothing was counted.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.total();
        if total == 0 {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * total as f64).max(1.0);
        let mut below = 0u64;
        for (i, &count) in self.0.iter().enumerate() {
            if count == 0 || ((below + count) as f64) < rank {
                below += count;
                continue;
            }
            let lower = if i == 0 { 0.0 } else { upper(i - 1) };
            if i == BUCKETS - 1 {
                return Some(lower);
            }
            let within = (rank - below as f64) / count as f64;
            return Some(lower + (upper(i) - lower) * within);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_value_falls_in_the_bucket_whose_bounds_hold_it() {
        for ms in [0.0, 0.01, 0.0625, 0.07, 0.5, 1.0, 1.0001, 3.7, 100.0, 999.9, 65_536.0] {
            let i = bucket(ms);
            assert!(ms <= upper(i), "{ms} over bucket {i}'s bound {}", upper(i));
            if i > 0 {
                assert!(ms > upper(i - 1), "{ms} belongs below bucket {i}");
            }
        }
        assert_eq!(bucket(1.0e9), BUCKETS - 1);
        assert_eq!(bucket(f64::NAN), 0);
    }

    #[test]
    fn quantiles_are_within_a_bucket_of_the_truth() {
        let histogram = Histogram::default();
        for ms in 1..=1000 {
            histogram.record(f64::from(ms));
        }
        let counts = histogram.snapshot();
        let p50 = counts.quantile(0.5).expect("a median");
        let p99 = counts.quantile(0.99).expect("a p99");
        assert!((500.0 / 1.19..=500.0 * 1.19).contains(&p50), "p50 {p50}");
        assert!((990.0 / 1.19..=990.0 * 1.19).contains(&p99), "p99 {p99}");
        assert_eq!(Counts::default().quantile(0.5), None);
    }

    #[test]
    fn the_difference_of_two_snapshots_is_what_came_between() {
        let histogram = Histogram::default();
        histogram.record(1.0);
        let before = histogram.snapshot();
        histogram.record(200.0);
        histogram.record(200.0);
        let between = histogram.snapshot().since(&before);
        assert_eq!(between.total(), 2);
        let p50 = between.quantile(0.5).expect("a median");
        assert!((168.0..=200.0).contains(&p50), "{p50}");
    }
}
