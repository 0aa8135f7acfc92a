//! Prometheus metrics of hermes-api: requests by route and status, latency per route,
//! rate-limit rejections, Redis errors, limiter degradation.
//!
//! Routes and statuses come from fixed lists, so every counter is a preallocated atomic and
//! recording a request takes no lock and no allocation.

use hermes_service::metrics::{self as prom, Counter, Gauge, Histogram, Labeled, Registry};

/// Route templates we label by; anything else is `other`.
pub const ROUTES: [&str; 11] = [
    "/api/call/create",
    "/api/call/code",
    "/api/call/resolve",
    "/api/join",
    "/api/call/{callId}",
    "/api/call/end",
    "/api/openapi.json",
    "/healthz",
    "/readyz",
    "/metrics",
    "other",
];

/// Statuses we count individually; anything else is counted under its class (`2xx`…).
const STATUSES: [u16; 16] = [
    200, 201, 204, 400, 401, 403, 404, 405, 410, 413, 415, 422, 429, 500, 503, 0,
];
const STATUS_LABELS: [&str; 16] = [
    "200", "201", "204", "400", "401", "403", "404", "405", "410", "413", "415", "422", "429",
    "500", "503", "other",
];

/// Rate limits by name, for the rejection counter.
pub const LIMITS: [&str; 4] = ["req", "resolve", "code", "newcode"];

/// The metrics and the registry that exposes them (each registered once, with its help text).
#[derive(Debug)]
pub struct Metrics {
    requests: Labeled<Counter>,
    latency: Labeled<Histogram>,
    rate_limited: Labeled<Counter>,
    pub redis_errors: Counter,
    pub limiter_degraded: Gauge,
    pub limiter_fallback: Counter,
    pub replica_ack_missing: Counter,
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        let requests = Labeled::hiding_unused(ROUTES.iter().flat_map(|route| {
            STATUS_LABELS
                .iter()
                .map(move |status| vec![("route", *route), ("status", *status)])
        }));
        let latency = Labeled::hiding_unused(ROUTES.iter().map(|route| vec![("route", *route)]));
        let rate_limited = Labeled::new(LIMITS.iter().map(|limit| vec![("limit", *limit)]));
        let mut registry = Registry::default();
        registry.register(
            "hermes_api_requests",
            "HTTP requests by route template and status",
            Labeled::clone(&requests),
        );
        registry.register(
            "hermes_api_request_duration_seconds",
            "Request latency by route template",
            Labeled::clone(&latency),
        );
        registry.register(
            "hermes_api_rate_limited",
            "Requests rejected with 429, by limit (req = per IP, resolve = resolve per IP, \
             code = resolve per code, newcode = new codes per call)",
            Labeled::clone(&rate_limited),
        );
        let redis_errors = Counter::registered(
            &mut registry,
            "hermes_api_redis_errors",
            "Redis commands that failed or timed out",
        );
        let limiter_degraded = Gauge::registered(
            &mut registry,
            "hermes_api_ratelimit_degraded",
            "1 while rate limits are enforced per process because Redis is unreachable",
        );
        let limiter_fallback = Counter::registered(
            &mut registry,
            "hermes_api_ratelimit_fallback",
            "Rate-limit decisions taken in-process while Redis was unreachable",
        );
        let replica_ack_missing = Counter::registered(
            &mut registry,
            "hermes_api_replica_ack_missing",
            "Consumed one-time codes no replica acknowledged within REDIS_REPLICA_ACK_TIMEOUT_MS \
             (answered anyway under best-effort, 503 under required)",
        );
        Self {
            requests,
            latency,
            rate_limited,
            redis_errors,
            limiter_degraded,
            limiter_fallback,
            replica_ack_missing,
            registry,
        }
    }
}

pub fn route_index(template: &str) -> usize {
    ROUTES
        .iter()
        .position(|r| *r == template)
        .unwrap_or(ROUTES.len() - 1)
}

fn status_index(status: u16) -> usize {
    STATUSES
        .iter()
        .position(|s| *s == status)
        .unwrap_or(STATUSES.len() - 1)
}

impl Metrics {
    pub fn record(&self, route: usize, status: u16, seconds: f64) {
        let route = route.min(ROUTES.len() - 1);
        self.requests
            .get(route * STATUSES.len() + status_index(status))
            .inc();
        self.latency.get(route).observe(seconds);
    }

    pub fn rate_limited(&self, limit: &str) {
        if let Some(i) = LIMITS.iter().position(|l| *l == limit) {
            self.rate_limited.get(i).inc();
        }
    }

    /// The OpenMetrics text of `/metrics`.
    pub fn render(&self) -> String {
        prom::render(&self.registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_by_route_and_status() {
        let m = Metrics::default();
        m.record(route_index("/api/call/create"), 201, 0.003);
        m.record(route_index("/nope"), 999, 0.001);
        m.rate_limited("code");
        let text = m.render();
        assert!(
            text.contains(r#"hermes_api_requests_total{route="/api/call/create",status="201"} 1"#)
        );
        assert!(text.contains(r#"hermes_api_requests_total{route="other",status="other"} 1"#));
        assert!(text.contains(r#"hermes_api_rate_limited_total{limit="code"} 1"#));
        assert!(text.contains("hermes_api_request_duration_seconds_bucket"));
        assert!(
            !text.contains(r#"route="/healthz""#),
            "unused routes are left out"
        );
    }
}
