//! Minimal Prometheus text exposition: lock-free counters, gauges and fixed-bucket histograms
//! that hot paths update with one atomic add, and writers that render them.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Monotonic counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
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

/// Up/down gauge.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
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

/// Latency buckets in seconds (upper bounds), suited to request handling on one host.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Fixed-bucket histogram of seconds.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, seconds: f64) {
        for (bound, bucket) in LATENCY_BUCKETS.iter().zip(&self.buckets) {
            if seconds <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

fn labels(out: &mut String, labels: &[(&str, &str)]) {
    if labels.is_empty() {
        return;
    }
    out.push('{');
    for (i, (k, v)) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let v = v
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n");
        let _ = write!(out, "{k}=\"{v}\"");
    }
    out.push('}');
}

/// `# HELP` and `# TYPE` lines; write once per metric family.
pub fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// One sample line.
pub fn sample(out: &mut String, name: &str, label_pairs: &[(&str, &str)], value: f64) {
    out.push_str(name);
    labels(out, label_pairs);
    let _ = writeln!(out, " {value}");
}

/// A histogram's bucket, sum and count lines (after its [`header`]).
pub fn histogram(out: &mut String, name: &str, label_pairs: &[(&str, &str)], h: &Histogram) {
    let le_strings: Vec<String> = LATENCY_BUCKETS.iter().map(|b| b.to_string()).collect();
    for (le, bucket) in le_strings.iter().zip(&h.buckets) {
        let mut l = label_pairs.to_vec();
        l.push(("le", le));
        sample(
            out,
            &format!("{name}_bucket"),
            &l,
            bucket.load(Ordering::Relaxed) as f64,
        );
    }
    let mut l = label_pairs.to_vec();
    l.push(("le", "+Inf"));
    sample(out, &format!("{name}_bucket"), &l, h.count() as f64);
    sample(
        out,
        &format!("{name}_sum"),
        label_pairs,
        h.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
    );
    sample(out, &format!("{name}_count"), label_pairs, h.count() as f64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let h = Histogram::default();
        h.observe(0.002);
        h.observe(3.0);
        let mut out = String::new();
        header(&mut out, "x_seconds", "histogram", "test");
        histogram(&mut out, "x_seconds", &[("route", "/a\"b")], &h);
        assert!(
            out.contains("x_seconds_bucket{route=\"/a\\\"b\",le=\"0.0025\"} 1"),
            "{out}"
        );
        assert!(
            out.contains("x_seconds_bucket{route=\"/a\\\"b\",le=\"+Inf\"} 2"),
            "{out}"
        );
        assert!(
            out.contains("x_seconds_count{route=\"/a\\\"b\"} 2"),
            "{out}"
        );
        let c = Counter::default();
        c.add(3);
        let mut out = String::new();
        sample(&mut out, "c_total", &[], c.get() as f64);
        assert_eq!(out, "c_total 3\n");
    }
}
