//! Prometheus metrics of one replica: lock-free counters the session and hub update with one
//! atomic add each, rendered as text on `/metrics`.

use hermes_service::metrics::{Counter, Gauge, header, sample};

#[derive(Debug, Default)]
pub struct Metrics {
    /// Open WebSocket connections (joined or not).
    pub connections: Gauge,
    /// Calls with at least one participant on this replica.
    pub calls: Gauge,
    pub joins: Counter,
    pub resumes: Counter,
    /// Joins refused: call full, ended, bad token.
    pub refused: Counter,
    /// Messages relayed (stored and published) from this replica's clients.
    pub relayed: Counter,
    /// Messages delivered to this replica's clients (live or replayed).
    pub delivered: Counter,
    /// Messages replayed from inboxes on resume or resync.
    pub replayed: Counter,
    /// Error messages sent to clients.
    pub errors: Counter,
    /// Connections closed for abuse (1008).
    pub abuse_closes: Counter,
    /// Redis commands that failed.
    pub redis_errors: Counter,
}

impl Metrics {
    pub fn render(&self, out: &mut String) {
        let gauges: [(&str, &str, &Gauge); 2] = [
            (
                "hermes_signal_connections",
                "Open WebSocket connections",
                &self.connections,
            ),
            (
                "hermes_signal_calls",
                "Calls with a participant on this replica",
                &self.calls,
            ),
        ];
        for (name, help, g) in gauges {
            header(out, name, "gauge", help);
            sample(out, name, &[], g.get() as f64);
        }
        let counters: [(&str, &str, &Counter); 9] = [
            ("hermes_signal_joins_total", "Admitted joins", &self.joins),
            (
                "hermes_signal_resumes_total",
                "Joins that resumed a seat",
                &self.resumes,
            ),
            (
                "hermes_signal_refused_total",
                "Refused joins",
                &self.refused,
            ),
            (
                "hermes_signal_messages_relayed_total",
                "Messages relayed from clients",
                &self.relayed,
            ),
            (
                "hermes_signal_messages_delivered_total",
                "Messages delivered to clients",
                &self.delivered,
            ),
            (
                "hermes_signal_messages_replayed_total",
                "Messages replayed from inboxes",
                &self.replayed,
            ),
            (
                "hermes_signal_errors_total",
                "Error messages sent to clients",
                &self.errors,
            ),
            (
                "hermes_signal_abuse_closes_total",
                "Connections closed with 1008",
                &self.abuse_closes,
            ),
            (
                "hermes_signal_redis_errors_total",
                "Failed Redis operations",
                &self.redis_errors,
            ),
        ];
        for (name, help, c) in counters {
            header(out, name, "counter", help);
            sample(out, name, &[], c.get() as f64);
        }
    }
}
