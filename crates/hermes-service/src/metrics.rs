//! Prometheus metrics: prometheus-client's registry and OpenMetrics text encoder over
//! Hermes's own lock-free cells, so a hot path updates a metric with one atomic add and takes
//! no lock (prometheus-client's own `Histogram` and `Family` lock on every update).
//!
//! A service registers each metric once, with its name and help text, in a [`Registry`] it
//! builds at start ([`Registry::register`]), and serves [`render`] on `/metrics`. Counters
//! are registered without their `_total` suffix: the encoder adds it. [`Labeled`] holds one
//! preallocated metric per label set, indexed, for label values known in advance.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};
pub use prometheus_client::registry::Registry;

/// The `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The registry in the OpenMetrics text format (ending with `# EOF`).
pub fn render(registry: &Registry) -> String {
    let mut out = String::with_capacity(4096);
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}

/// Monotonic counter. Clones share the value (register a clone, keep the original).
#[derive(Debug, Default, Clone)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    /// A new counter registered under `name` (without `_total`: the encoder adds it).
    pub fn registered(registry: &mut Registry, name: &str, help: &str) -> Self {
        let counter = Self::default();
        registry.register(name, help, counter.clone());
        counter
    }
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl TypedMetric for Counter {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for Counter {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.encode_counter::<NoLabelSet, _, u64>(&self.get(), None)
    }
    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// Up/down gauge. Clones share the value.
#[derive(Debug, Default, Clone)]
pub struct Gauge(Arc<AtomicI64>);

impl Gauge {
    /// A new gauge registered under `name`.
    pub fn registered(registry: &mut Registry, name: &str, help: &str) -> Self {
        let gauge = Self::default();
        registry.register(name, help, gauge.clone());
        gauge
    }
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl TypedMetric for Gauge {
    const TYPE: MetricType = MetricType::Gauge;
}

impl EncodeMetric for Gauge {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.encode_gauge(&self.get())
    }
    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// Latency buckets in seconds (upper bounds), suited to request handling on one host.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];
const CELLS: usize = LATENCY_BUCKETS.len() + 1;

#[derive(Debug, Default)]
struct HistogramCells {
    /// Observations per bucket, not cumulative; the last cell counts those above every bound.
    buckets: [AtomicU64; CELLS],
    sum_micros: AtomicU64,
}

/// Fixed-bucket histogram of seconds over [`LATENCY_BUCKETS`]. An observation adds to one
/// bucket; the count and the `+Inf` bucket are the sum of the buckets read for the same
/// exposition, so they can never disagree with them. Clones share the cells.
#[derive(Debug, Default, Clone)]
pub struct Histogram(Arc<HistogramCells>);

/// One reading of a histogram.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// `(upper bound, observations in this bucket only)`, the last bound `+Inf`.
    pub buckets: [(f64, u64); CELLS],
    pub count: u64,
    pub sum: f64,
}

impl Histogram {
    pub fn observe(&self, seconds: f64) {
        let cell = LATENCY_BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.0.buckets[cell].fetch_add(1, Ordering::Relaxed);
        self.0
            .sum_micros
            .fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.0
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .sum()
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut buckets = [(f64::INFINITY, 0); CELLS];
        let mut count = 0;
        for (i, cell) in self.0.buckets.iter().enumerate() {
            let n = cell.load(Ordering::Relaxed);
            buckets[i] = (LATENCY_BUCKETS.get(i).copied().unwrap_or(f64::INFINITY), n);
            count += n;
        }
        HistogramSnapshot {
            buckets,
            count,
            sum: self.0.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }
}

impl TypedMetric for Histogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        let s = self.snapshot();
        encoder.encode_histogram::<NoLabelSet>(s.sum, s.count, &s.buckets, None)
    }
    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// A metric that can say it was never touched, so [`Labeled`] can leave it out.
pub trait Unused {
    fn is_unused(&self) -> bool;
}

impl Unused for Counter {
    fn is_unused(&self) -> bool {
        self.get() == 0
    }
}

impl Unused for Gauge {
    fn is_unused(&self) -> bool {
        false
    }
}

impl Unused for Histogram {
    fn is_unused(&self) -> bool {
        self.count() == 0
    }
}

/// Label pairs of one member of a [`Labeled`] family.
pub type Labels = Vec<(&'static str, &'static str)>;

/// One metric per label set, all created up front and read by index, so recording takes no
/// lock and no lookup (prometheus-client's `Family` locks a map on every access). Clones
/// share the metrics.
#[derive(Debug, Clone)]
pub struct Labeled<M> {
    members: Arc<[(Labels, M)]>,
    hide_unused: bool,
}

impl<M: Default> Labeled<M> {
    /// One member per label set, in this order; every member is exposed.
    pub fn new(label_sets: impl IntoIterator<Item = Labels>) -> Self {
        Self {
            members: label_sets.into_iter().map(|l| (l, M::default())).collect(),
            hide_unused: false,
        }
    }

    /// Like [`Labeled::new`], but members never touched are left out of the exposition (for
    /// large label products such as route × status).
    pub fn hiding_unused(label_sets: impl IntoIterator<Item = Labels>) -> Self {
        Self {
            hide_unused: true,
            ..Self::new(label_sets)
        }
    }
}

impl<M> Labeled<M> {
    /// The member at `index` (label sets in creation order). Panics when out of range: indexes
    /// come from the service's own fixed label tables, never from input.
    pub fn get(&self, index: usize) -> &M {
        &self.members[index].1
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }
}

impl<M: EncodeMetric + TypedMetric + Unused> EncodeMetric for Labeled<M> {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        for (labels, metric) in self.members.iter() {
            if self.hide_unused && metric.is_unused() {
                continue;
            }
            metric.encode(encoder.encode_family(labels)?)?;
        }
        Ok(())
    }
    fn metric_type(&self) -> MetricType {
        M::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_openmetrics_text() {
        let h: Labeled<Histogram> =
            Labeled::hiding_unused([vec![("route", "/a\"b")], vec![("route", "/unused")]]);
        h.get(0).observe(0.002);
        h.get(0).observe(3.0);
        let c = Counter::default();
        c.add(3);
        let mut registry = Registry::default();
        registry.register("x_seconds", "Test latency", h.clone());
        registry.register("c", "Test count", c.clone());
        let out = render(&registry);
        for line in [
            "# HELP x_seconds Test latency.",
            "# TYPE x_seconds histogram",
            "x_seconds_bucket{le=\"0.001\",route=\"/a\\\"b\"} 0",
            "x_seconds_bucket{le=\"0.0025\",route=\"/a\\\"b\"} 1",
            "x_seconds_bucket{le=\"2.5\",route=\"/a\\\"b\"} 1",
            "x_seconds_bucket{le=\"+Inf\",route=\"/a\\\"b\"} 2",
            "x_seconds_count{route=\"/a\\\"b\"} 2",
            "x_seconds_sum{route=\"/a\\\"b\"} 3.002",
            "# TYPE c counter",
            "c_total 3",
            "# EOF",
        ] {
            assert!(out.lines().any(|l| l == line), "no {line:?} in\n{out}");
        }
        assert!(!out.contains("/unused"), "{out}");
    }

    #[test]
    fn histogram_count_is_the_sum_of_its_buckets() {
        let h = Histogram::default();
        for s in [0.0001, 0.0005, 0.0006, 0.3, 2.5, 2.6, 1e9] {
            h.observe(s);
        }
        let snap = h.snapshot();
        assert_eq!(snap.count, 7);
        assert_eq!(snap.buckets.iter().map(|b| b.1).sum::<u64>(), snap.count);
        assert_eq!(snap.buckets[0], (0.0005, 2), "le is inclusive");
        assert_eq!(snap.buckets[1], (0.001, 1));
        assert_eq!(snap.buckets[9], (0.5, 1));
        assert_eq!(snap.buckets[11], (2.5, 1));
        assert_eq!(snap.buckets[12], (f64::INFINITY, 2));
    }
}
