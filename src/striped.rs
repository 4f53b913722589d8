//! Counters and a histogram that the cores add to without sharing a cache line. Every read
//! of the key counts itself several times (its RPC, its latency, its authorization, its
//! cache hit); with one counter every core writes, each of those writes would first have to
//! take the line from the other core. Here each thread adds to a stripe of its own, and
//! whoever reads (a scrape) adds the stripes up.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use prometheus_client::{
    encoding::{EncodeMetric, MetricEncoder, NoLabelSet},
    metrics::{MetricType, TypedMetric},
};

/// Stripes per metric: more than the threads that serve calls on a small host, and the
/// threads beyond it share stripes in turn (still correct, merely shared).
const STRIPES: usize = 8;

thread_local! {
    /// This thread's stripe, given out in turn.
    static STRIPE: usize = {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        NEXT.fetch_add(1, Ordering::Relaxed) as usize % STRIPES
    };
}

fn stripe() -> usize {
    STRIPE.with(|s| *s)
}

/// A value on a cache line of its own.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Line<T>(T);

/// A monotonic counter. Clones share it.
#[derive(Debug, Default, Clone)]
pub struct StripedCounter(Arc<[Line<AtomicU64>; STRIPES]>);

impl StripedCounter {
    pub fn inc(&self) {
        if let Some(stripe) = self.0.get(stripe()) {
            stripe.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn get(&self) -> u64 {
        self.0.iter().map(|s| s.0.load(Ordering::Relaxed)).sum()
    }
}

impl TypedMetric for StripedCounter {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for StripedCounter {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_counter::<NoLabelSet, _, u64>(&self.get(), None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// Upper bounds of [`DurationHistogram`]'s buckets: 50 µs doubling up to about 1.6 s, then
/// everything above.
const BOUNDS: [f64; 16] = {
    let mut bounds = [0.0; 16];
    let mut i = 0;
    let mut bound = 0.000_05;
    while i < bounds.len() {
        bounds[i] = bound;
        bound *= 2.0;
        i += 1;
    }
    bounds
};

/// One thread's share of a histogram: a count per bucket (the last one for what is above
/// every bound) and the sum of what it observed, in nanoseconds.
#[derive(Debug, Default)]
struct HistogramStripe {
    buckets: [AtomicU64; BOUNDS.len() + 1],
    sum_nanos: AtomicU64,
}

/// A histogram of durations, in seconds as Prometheus has them. Clones share it.
#[derive(Debug, Default, Clone)]
pub struct DurationHistogram(Arc<[Line<HistogramStripe>; STRIPES]>);

impl DurationHistogram {
    pub fn observe(&self, duration: std::time::Duration) {
        let seconds = duration.as_secs_f64();
        let bucket = BOUNDS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(BOUNDS.len());
        if let Some(stripe) = self.0.get(stripe()) {
            if let Some(count) = stripe.0.buckets.get(bucket) {
                count.fetch_add(1, Ordering::Relaxed);
            }
            let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
            stripe.0.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
        }
    }

    /// The count of each bucket (not cumulative), with its upper bound, and the sum in
    /// seconds.
    fn snapshot(&self) -> (Vec<(f64, u64)>, f64) {
        let mut buckets: Vec<(f64, u64)> = BOUNDS
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .map(|bound| (bound, 0))
            .collect();
        let mut sum_nanos: u128 = 0;
        for stripe in self.0.iter() {
            for ((_, total), count) in buckets.iter_mut().zip(&stripe.0.buckets) {
                *total += count.load(Ordering::Relaxed);
            }
            sum_nanos += u128::from(stripe.0.sum_nanos.load(Ordering::Relaxed));
        }
        (buckets, sum_nanos as f64 / 1e9)
    }
}

impl TypedMetric for DurationHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for DurationHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let (buckets, sum) = self.snapshot();
        let count = buckets.iter().map(|(_, count)| count).sum();
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn counts_from_every_thread_add_up() {
        let counter = StripedCounter::default();
        std::thread::scope(|scope| {
            for _ in 0..12 {
                scope.spawn(|| (0..1000).for_each(|_| counter.inc()));
            }
        });
        assert_eq!(counter.get(), 12_000);
    }

    #[test]
    fn durations_land_in_their_buckets() {
        let histogram = DurationHistogram::default();
        histogram.observe(Duration::from_micros(10));
        histogram.observe(Duration::from_micros(50));
        histogram.observe(Duration::from_micros(51));
        histogram.observe(Duration::from_secs(10));
        let (buckets, sum) = histogram.snapshot();
        assert_eq!(buckets.len(), BOUNDS.len() + 1);
        // At or below 50 µs, the first bucket; just above, the second; past the last bound,
        // the last.
        assert_eq!(buckets[0], (0.000_05, 2));
        assert_eq!(buckets[1], (0.000_1, 1));
        assert_eq!(buckets[BOUNDS.len()], (f64::INFINITY, 1));
        assert!((sum - 10.000_111).abs() < 1e-9, "{sum}");
    }
}
