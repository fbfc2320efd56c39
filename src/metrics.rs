//! Latency histograms: fixed buckets of counters, cheap to record from any
//! thread (each recording thread keeps its own, added up when read), read
//! as cumulative counts (Prometheus style) or as quantile estimates.
//!
//! ```
//! use std::time::Duration;
//! use switchyard::metrics::LatencyHistogram;
//!
//! let h = LatencyHistogram::default();
//! for ms in [3, 4, 8, 40, 900] {
//!     h.record(Duration::from_millis(ms));
//! }
//! let s = h.snapshot();
//! assert_eq!(s.count, 5);
//! assert_eq!(s.quantile(0.5), Some(Duration::from_millis(10))); // a bucket's bound
//! assert_eq!(s.quantile(0.99), Some(Duration::from_millis(1000)));
//! // Interpolated within the bucket, as Prometheus does.
//! assert_eq!(s.quantile_interpolated(0.5), Some(Duration::from_micros(7_500)));
//! ```

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::per_thread::Counters;

/// Upper bounds of the buckets, in microseconds (the last bucket, beyond
/// them, is unbounded).
pub const BUCKETS_MICROS: [u64; 16] = [
    1_000,
    2_500,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    30_000_000,
    60_000_000,
    120_000_000,
];

/// The index of `status`'s class among 1xx to 5xx (0 to 4), as the
/// counters by status class keep them; a status outside 100–599, which
/// `http` allows up to 999, counts with the nearest class.
pub(crate) fn class_index(status: http::StatusCode) -> usize {
    usize::from(status.as_u16() / 100).clamp(1, 5) - 1
}

/// Where a [`LatencyHistogram`] keeps its sum: after the buckets.
const SUM: usize = BUCKETS_MICROS.len() + 1;

/// A latency histogram with fixed buckets from 1 ms to 120 s.
///
/// Recording costs a few plain stores: each thread that records keeps its
/// own counts (a hot path of two serving threads would otherwise move the
/// counters' cache line between the cores at nearly every record), and a
/// [`snapshot`](Self::snapshot) adds every thread's up.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    /// The buckets' counts, then the sum in microseconds.
    counts: Counters<{ SUM + 1 }>,
}

impl LatencyHistogram {
    /// Records one observation.
    pub fn record(&self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let i = BUCKETS_MICROS.partition_point(|&bound| bound < micros);
        self.counts.add_each([(i, 1), (SUM, micros)]);
    }

    /// A reading of the counters.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let buckets: Vec<u64> = (0..SUM).map(|i| self.counts.get(i)).collect();
        HistogramSnapshot {
            count: buckets.iter().sum(),
            sum_micros: self.counts.get(SUM),
            buckets,
        }
    }
}

/// A reading of a [`LatencyHistogram`]. Readings only grow; subtract two
/// with [`HistogramSnapshot::since`] for a window.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct HistogramSnapshot {
    /// Observations per bucket (not cumulative); the bucket `i` holds
    /// latencies up to `BUCKETS_MICROS[i]`, the last one the rest.
    pub buckets: Vec<u64>,
    /// Observations in all.
    pub count: u64,
    /// Their sum, in microseconds.
    pub sum_micros: u64,
}

impl HistogramSnapshot {
    /// Adds `other`'s observations to these (two replicas' readings, say),
    /// bucket by bucket.
    pub fn merge(&mut self, other: &HistogramSnapshot) {
        if self.buckets.len() < other.buckets.len() {
            self.buckets.resize(other.buckets.len(), 0);
        }
        for (mine, theirs) in self.buckets.iter_mut().zip(&other.buckets) {
            *mine = mine.saturating_add(*theirs);
        }
        self.count = self.count.saturating_add(other.count);
        self.sum_micros = self.sum_micros.saturating_add(other.sum_micros);
    }

    /// The observations made after `earlier` was read.
    pub fn since(&self, earlier: &HistogramSnapshot) -> HistogramSnapshot {
        let buckets: Vec<u64> = self
            .buckets
            .iter()
            .enumerate()
            .map(|(i, &n)| n.saturating_sub(earlier.buckets.get(i).copied().unwrap_or(0)))
            .collect();
        HistogramSnapshot {
            count: buckets.iter().sum(),
            sum_micros: self.sum_micros.saturating_sub(earlier.sum_micros),
            buckets,
        }
    }

    /// An upper estimate of quantile `q` (0 to 1): the bound of the bucket
    /// that holds it. `None` without observations; observations beyond the
    /// last bound read as `Duration::MAX`.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        if self.count == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(
                    BUCKETS_MICROS
                        .get(i)
                        .map_or(Duration::MAX, |&us| Duration::from_micros(us)),
                );
            }
        }
        Some(Duration::MAX)
    }

    /// An estimate of quantile `q` (0 to 1) that interpolates linearly
    /// within the bucket that holds it, as Prometheus's
    /// `histogram_quantile` does: finer than [`quantile`](Self::quantile),
    /// which answers with bucket bounds. Observations beyond the last
    /// bound read as the last bound.
    pub fn quantile_interpolated(&self, q: f64) -> Option<Duration> {
        if self.count == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * self.count as f64;
        let mut below = 0u64;
        for (i, &n) in self.buckets.iter().enumerate() {
            if n > 0 && (below + n) as f64 >= rank {
                let Some(&upper) = BUCKETS_MICROS.get(i) else {
                    return Some(Duration::from_micros(
                        BUCKETS_MICROS[BUCKETS_MICROS.len() - 1],
                    ));
                };
                let lower = if i == 0 { 0 } else { BUCKETS_MICROS[i - 1] };
                let within = ((rank - below as f64) / n as f64).clamp(0.0, 1.0);
                let micros = lower as f64 + within * (upper - lower) as f64;
                return Some(Duration::from_micros(micros.round() as u64));
            }
            below += n;
        }
        Some(Duration::from_micros(
            BUCKETS_MICROS[BUCKETS_MICROS.len() - 1],
        ))
    }

    /// Cumulative counts per bucket bound, in seconds, ending with `+Inf`:
    /// the `le` series of a Prometheus histogram.
    pub fn cumulative(&self) -> impl Iterator<Item = (Option<f64>, u64)> + '_ {
        let mut total = 0;
        self.buckets.iter().enumerate().map(move |(i, &n)| {
            total += n;
            (BUCKETS_MICROS.get(i).map(|&us| us as f64 / 1e6), total)
        })
    }
}
