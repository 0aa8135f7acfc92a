//! Prometheus metrics of hermes-api: requests by route and status, latency per route,
//! rate-limit rejections, Redis errors, limiter degradation.
//!
//! Routes and statuses come from fixed lists, so every counter is a preallocated atomic and
//! recording a request takes no lock and no allocation.

use hermes_service::metrics::{self as prom, Counter, Gauge, Histogram};

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

#[derive(Debug, Default)]
pub struct Metrics {
    requests: [[Counter; STATUSES.len()]; ROUTES.len()],
    latency: [Histogram; ROUTES.len()],
    rate_limited: [Counter; LIMITS.len()],
    pub redis_errors: Counter,
    /// 1 while rate limits run in-process because Redis is unreachable.
    pub limiter_degraded: Gauge,
    /// Decisions taken by the in-process fallback limiter.
    pub limiter_fallback: Counter,
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
        self.requests[route][status_index(status)].inc();
        self.latency[route].observe(seconds);
    }

    pub fn rate_limited(&self, limit: &str) {
        if let Some(i) = LIMITS.iter().position(|l| *l == limit) {
            self.rate_limited[i].inc();
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        prom::header(
            &mut out,
            "hermes_api_requests_total",
            "counter",
            "HTTP requests by route template and status.",
        );
        for (r, route) in ROUTES.iter().enumerate() {
            for (s, status) in STATUS_LABELS.iter().enumerate() {
                let n = self.requests[r][s].get();
                if n > 0 {
                    prom::sample(
                        &mut out,
                        "hermes_api_requests_total",
                        &[("route", route), ("status", status)],
                        n as f64,
                    );
                }
            }
        }
        prom::header(
            &mut out,
            "hermes_api_request_duration_seconds",
            "histogram",
            "Request latency by route template.",
        );
        for (r, route) in ROUTES.iter().enumerate() {
            if self.latency[r].count() > 0 {
                prom::histogram(
                    &mut out,
                    "hermes_api_request_duration_seconds",
                    &[("route", route)],
                    &self.latency[r],
                );
            }
        }
        prom::header(
            &mut out,
            "hermes_api_rate_limited_total",
            "counter",
            "Requests rejected with 429, by limit (req = per IP, resolve = resolve per IP, code = resolve per code).",
        );
        for (i, limit) in LIMITS.iter().enumerate() {
            prom::sample(
                &mut out,
                "hermes_api_rate_limited_total",
                &[("limit", limit)],
                self.rate_limited[i].get() as f64,
            );
        }
        prom::header(
            &mut out,
            "hermes_api_redis_errors_total",
            "counter",
            "Redis commands that failed or timed out.",
        );
        prom::sample(
            &mut out,
            "hermes_api_redis_errors_total",
            &[],
            self.redis_errors.get() as f64,
        );
        prom::header(
            &mut out,
            "hermes_api_ratelimit_degraded",
            "gauge",
            "1 while rate limits are enforced per process because Redis is unreachable.",
        );
        prom::sample(
            &mut out,
            "hermes_api_ratelimit_degraded",
            &[],
            self.limiter_degraded.get() as f64,
        );
        prom::header(
            &mut out,
            "hermes_api_ratelimit_fallback_total",
            "counter",
            "Rate-limit decisions taken in-process while Redis was unreachable.",
        );
        prom::sample(
            &mut out,
            "hermes_api_ratelimit_fallback_total",
            &[],
            self.limiter_fallback.get() as f64,
        );
        out
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
    }
}
