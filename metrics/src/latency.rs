//! Latency distributions: an [HdrHistogram](https://hdrhistogram.github.io/HdrHistogram/) per
//! measured path, exported to Prometheus as a histogram and read back as quantiles.
//!
//! A [`LatencyHistogram`] records every value (in microseconds) into an `hdrhistogram` with three
//! significant digits, so any quantile read from it is within 0.1 % of the true one, whatever the
//! distribution, and its memory grows only with the largest value seen (it resizes itself). The
//! exact sum of the values is kept beside it.
//!
//! **Prometheus sees a histogram, not a summary.** `prometheus-client` has no summary type, and a
//! summary's quantiles cannot be aggregated across instances or re-computed over another time
//! range, while `histogram_quantile(0.99, rate(…_bucket[5m]))` can. At each scrape the recorded
//! values are counted into fixed `le` buckets (the bounds each measured path gives, see
//! [`HTTP_BUCKETS`], [`EVENT_TO_RANKING_BUCKETS`], [`EVENT_TO_FEATURE_BUCKETS`],
//! [`ARRIVAL_TO_VISIBLE_BUCKETS`], [`CHECKPOINT_BUCKETS`]), with `_sum` and
//! `_count`; a value within 0.1 % of a bound may be counted on either side of it (the
//! histogram's resolution). The precise quantiles (p50, p90, p99, p99.9) are read from the
//! HdrHistogram itself ([`LatencyHistogram::summary`]), and `/v1/status` shows them. The EMF
//! lines (see [`crate::emf`]) report the quantiles of each interval alone, from the difference
//! of two [`LatencySnapshot`]s.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hdrhistogram::Histogram;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// Significant digits kept by every histogram: quantiles within 0.1 %.
const SIGNIFICANT_DIGITS: u8 = 3;

/// Bucket bounds (seconds) of the HTTP request latency: 0.5 ms to 10 s.
pub const HTTP_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Bucket bounds (seconds) of the event-to-ranking latency: 100 ms to an hour.
pub const EVENT_TO_RANKING_BUCKETS: &[f64] = &[
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];

/// Bucket bounds (seconds) of the event-to-feature latency: 100 ms to two hours (a session is
/// emitted a session gap, 30 minutes by default, after its last event).
pub const EVENT_TO_FEATURE_BUCKETS: &[f64] = &[
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 2400.0, 3600.0,
    7200.0,
];

/// Bucket bounds (seconds) of the arrival-to-visible latency: 1 ms to a minute.
pub const ARRIVAL_TO_VISIBLE_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Bucket bounds (seconds) of the checkpoint duration and pause: 10 ms to 5 minutes.
pub const CHECKPOINT_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// One latency distribution. Clones share it (the registry holds one, the recorder another).
#[derive(Clone, Debug)]
pub struct LatencyHistogram {
    recorded: Arc<Mutex<Recorded>>,
    /// The `le` bounds of the Prometheus buckets, in seconds, ascending.
    buckets: &'static [f64],
}

/// The values recorded so far.
#[derive(Debug)]
struct Recorded {
    /// Every value, in microseconds.
    histogram: Histogram<u64>,
    /// Their exact sum, in seconds.
    sum_s: f64,
}

/// A distribution at a glance: how many values, their sum and quantiles (seconds). The quantiles
/// are `None` while nothing was recorded.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LatencySummary {
    /// Values recorded.
    pub count: u64,
    /// Their sum, seconds.
    pub sum_s: f64,
    /// The median, seconds.
    pub p50_s: Option<f64>,
    /// The 90th percentile, seconds.
    pub p90_s: Option<f64>,
    /// The 99th percentile, seconds.
    pub p99_s: Option<f64>,
    /// The 99.9th percentile, seconds.
    pub p999_s: Option<f64>,
}

impl LatencyHistogram {
    /// An empty distribution exported with the bucket bounds `buckets` (seconds, ascending).
    pub fn new(buckets: &'static [f64]) -> Self {
        LatencyHistogram {
            recorded: Arc::new(Mutex::new(Recorded {
                histogram: empty_histogram(),
                sum_s: 0.0,
            })),
            buckets,
        }
    }

    /// Records one value.
    pub fn record(&self, value: Duration) {
        let micros = u64::try_from(value.as_micros()).unwrap_or(u64::MAX);
        let mut recorded = self.lock();
        // `record` grows the histogram to fit; only a value beyond its largest possible range
        // (centuries) fails, and is then counted at that range's top.
        if recorded.histogram.record(micros).is_err() {
            recorded.histogram.saturating_record(micros);
        }
        recorded.sum_s += value.as_secs_f64();
    }

    /// Values recorded so far.
    pub fn count(&self) -> u64 {
        self.lock().histogram.len()
    }

    /// The value at `quantile` (0 to 1), or `None` while nothing was recorded.
    pub fn quantile(&self, quantile: f64) -> Option<Duration> {
        let recorded = self.lock();
        (!recorded.histogram.is_empty())
            .then(|| Duration::from_micros(recorded.histogram.value_at_quantile(quantile)))
    }

    /// Count, sum, p50, p90, p99 and p99.9.
    pub fn summary(&self) -> LatencySummary {
        let recorded = self.lock();
        summarize(&recorded.histogram, recorded.sum_s)
    }

    /// Everything recorded so far, to compare with a later snapshot
    /// ([`LatencySnapshot::summary_since`]).
    pub fn snapshot(&self) -> LatencySnapshot {
        let recorded = self.lock();
        LatencySnapshot {
            histogram: recorded.histogram.clone(),
            sum_s: recorded.sum_s,
        }
    }

    /// The Prometheus buckets: `(le, values in (previous le, le])`, the last one `+Inf`; each
    /// recorded value counts in the first bucket whose bound is at least the value (as the
    /// histogram holds it: the lowest value equivalent to it at three significant digits, so a
    /// value exactly at a round bound counts in that bound's bucket).
    fn bucket_counts(&self, histogram: &Histogram<u64>) -> Vec<(f64, u64)> {
        let mut counts: Vec<(f64, u64)> = self
            .buckets
            .iter()
            .map(|bound| (*bound, 0))
            .chain(std::iter::once((f64::INFINITY, 0)))
            .collect();
        for value in histogram.iter_recorded() {
            let seconds = micros_to_seconds(histogram.lowest_equivalent(value.value_iterated_to()));
            let bucket = counts
                .iter()
                .position(|(bound, _)| seconds <= *bound)
                .unwrap_or(counts.len() - 1);
            counts[bucket].1 += value.count_at_value();
        }
        counts
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Recorded> {
        self.recorded.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        let (sum, count, buckets) = {
            let recorded = self.lock();
            (
                recorded.sum_s,
                recorded.histogram.len(),
                self.bucket_counts(&recorded.histogram),
            )
        };
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

impl TypedMetric for LatencyHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

/// A copy of a [`LatencyHistogram`]'s values at one moment. Two snapshots give the distribution
/// of the values recorded between them (the EMF lines report each interval's quantiles).
#[derive(Clone, Debug)]
pub struct LatencySnapshot {
    histogram: Histogram<u64>,
    sum_s: f64,
}

impl Default for LatencySnapshot {
    fn default() -> Self {
        LatencySnapshot {
            histogram: empty_histogram(),
            sum_s: 0.0,
        }
    }
}

impl LatencySnapshot {
    /// The values recorded after `earlier` and up to this snapshot (both of one histogram,
    /// `earlier` taken first): count, sum and quantiles of those alone.
    pub fn summary_since(&self, earlier: &LatencySnapshot) -> LatencySummary {
        let mut between = self.histogram.clone();
        // Counts only grow, so the subtraction cannot go below zero; if `earlier` came from
        // elsewhere and it fails, the whole distribution is the honest answer left.
        if between.subtract(&earlier.histogram).is_err() {
            return summarize(&self.histogram, self.sum_s);
        }
        summarize(&between, (self.sum_s - earlier.sum_s).max(0.0))
    }
}

/// Count, sum and quantiles of `histogram` (microseconds), in seconds.
fn summarize(histogram: &Histogram<u64>, sum_s: f64) -> LatencySummary {
    let at = |quantile: f64| {
        (!histogram.is_empty()).then(|| micros_to_seconds(histogram.value_at_quantile(quantile)))
    };
    LatencySummary {
        count: histogram.len(),
        sum_s,
        p50_s: at(0.5),
        p90_s: at(0.9),
        p99_s: at(0.99),
        p999_s: at(0.999),
    }
}

/// An empty, self-resizing histogram of microseconds.
fn empty_histogram() -> Histogram<u64> {
    Histogram::new(SIGNIFICANT_DIGITS).unwrap_or_else(|error| {
        unreachable!(
            "{SIGNIFICANT_DIGITS} significant digits are within hdrhistogram's 0..=5: {error}"
        )
    })
}

fn micros_to_seconds(micros: u64) -> f64 {
    micros as f64 / 1_000_000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_of_known_values() {
        let histogram = LatencyHistogram::new(HTTP_BUCKETS);
        assert_eq!(histogram.summary(), LatencySummary::default());
        assert_eq!(histogram.quantile(0.5), None);
        // 1 ms, 2 ms, … 1000 ms: the p-th quantile is p × 1000 ms (within 0.1 %).
        for ms in 1..=1000 {
            histogram.record(Duration::from_millis(ms));
        }
        let summary = histogram.summary();
        assert_eq!(summary.count, 1000);
        assert!((summary.sum_s - 500.5).abs() < 1e-9, "{summary:?}");
        for (got, expected) in [
            (summary.p50_s, 0.5),
            (summary.p90_s, 0.9),
            (summary.p99_s, 0.99),
            (summary.p999_s, 0.999),
        ] {
            let got = got.unwrap_or_else(|| panic!("{summary:?}"));
            assert!(
                (got - expected).abs() <= expected * 0.001,
                "{got} vs {expected}: {summary:?}"
            );
        }
        assert_eq!(histogram.count(), 1000);
        let median = histogram.quantile(0.5).unwrap_or_default();
        assert!(median.abs_diff(Duration::from_millis(500)) <= Duration::from_micros(500));
    }

    #[test]
    fn one_slow_value_in_a_thousand_shows_at_p999_only() {
        let histogram = LatencyHistogram::new(CHECKPOINT_BUCKETS);
        for _ in 0..999 {
            histogram.record(Duration::from_millis(10));
        }
        histogram.record(Duration::from_secs(60));
        let summary = histogram.summary();
        let near = |got: Option<f64>, expected: f64| {
            got.is_some_and(|got| (got - expected).abs() <= expected * 0.001)
        };
        assert!(near(summary.p99_s, 0.010), "{summary:?}");
        assert!(near(summary.p999_s, 0.010), "{summary:?}");
        assert!(near(histogram.quantile(1.0).map(|d| d.as_secs_f64()), 60.0));
    }

    #[test]
    fn quantiles_between_two_snapshots_are_those_of_the_values_in_between() {
        let histogram = LatencyHistogram::new(ARRIVAL_TO_VISIBLE_BUCKETS);
        let start = histogram.snapshot();
        for _ in 0..100 {
            histogram.record(Duration::from_secs(10));
        }
        let first = histogram.snapshot();
        let interval = first.summary_since(&start);
        assert_eq!(interval.count, 100);
        assert!((interval.sum_s - 1_000.0).abs() < 1e-6, "{interval:?}");
        // Then a hundred fast values: the second interval sees only them.
        for ms in 1..=100 {
            histogram.record(Duration::from_millis(ms));
        }
        let second = histogram.snapshot();
        let interval = second.summary_since(&first);
        let near = |got: Option<f64>, expected: f64| {
            got.is_some_and(|got| (got - expected).abs() <= expected * 0.001)
        };
        assert_eq!(interval.count, 100);
        assert!(near(interval.p50_s, 0.050), "{interval:?}");
        assert!(near(interval.p99_s, 0.099), "{interval:?}");
        // Since start, half the values are 10 s: the p99 is 10 s.
        assert!(near(histogram.summary().p99_s, 10.0));
        // Nothing in between: no quantiles.
        let empty = histogram.snapshot().summary_since(&second);
        assert_eq!(empty.count, 0);
        assert_eq!(empty.p50_s, None);
    }

    #[test]
    fn buckets_count_each_value_once_at_its_bound() {
        let histogram = LatencyHistogram::new(&[0.001, 0.01, 0.1]);
        for micros in [500, 1_000, 1_500, 10_000, 99_000, 2_000_000] {
            histogram.record(Duration::from_micros(micros));
        }
        let recorded = histogram.lock();
        let buckets = histogram.bucket_counts(&recorded.histogram);
        assert_eq!(
            buckets,
            [(0.001, 2), (0.01, 2), (0.1, 1), (f64::INFINITY, 1)]
        );
    }
}
